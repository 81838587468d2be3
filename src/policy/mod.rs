//! Who may send through the proxy, which app they are, and which gateway
//! their mail goes to.
//!
//! Both decisions are pure functions of configuration and the envelope, so the
//! inbound session can ask them without any I/O.

mod apps;
mod networks;
mod routing;

pub use apps::{Apps, OTHER_APP};
pub use networks::Network;
pub use routing::{Router, SenderPattern};
