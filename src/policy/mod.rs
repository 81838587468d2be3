//! Who may send through the proxy, and which gateway their mail goes to.
//!
//! Both decisions are pure functions of configuration and the envelope, so the
//! inbound session can ask them without any I/O.

mod networks;
mod routing;

pub use networks::Network;
pub use routing::{Router, SenderPattern};
