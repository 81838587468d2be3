//! Who may send through the proxy, which app they are, and which gateway
//! their mail goes to.
//!
//! Both decisions are pure functions of configuration and the envelope, so the
//! inbound session can ask them without any I/O.

mod apps;
mod networks;
mod routing;
pub mod senders;

pub use apps::{Apps, OTHER_APP};
pub use networks::Network;
pub use routing::{Router, SenderPattern};

use std::sync::Arc;

/// The policy decisions a session needs: which gateway, which app, and
/// whether the sender exists.
#[derive(Debug, Clone)]
pub struct Policy {
    pub router: Router,
    /// Gateway names, by the index the router returns.
    pub gateways: Vec<String>,
    pub apps: Arc<Apps>,
    pub senders: Arc<senders::SenderChecks>,
}
