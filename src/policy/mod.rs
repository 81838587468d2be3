//! Who may send through the proxy, which app they are, which gateway
//! their mail goes to, and what the message may say about its sender.
//!
//! The decisions are pure functions of configuration, the envelope and the
//! message, so the inbound session can ask them without any I/O; the one
//! exception is the DMARC record an alignment verdict may need, which
//! [`dmarc`] looks up with a cache and a timeout.

pub mod alignment;
mod apps;
pub mod dmarc;
pub mod message;
mod networks;
mod routing;
pub mod senders;

pub use apps::{Apps, OTHER_APP};
pub use networks::Network;
pub use routing::{Router, SenderPattern};

use std::sync::Arc;

use crate::config::AlignmentMode;

/// The policy decisions a session needs: which gateway, which app, whether
/// the sender exists, and how the message's From: is judged.
#[derive(Debug, Clone)]
pub struct Policy {
    pub router: Router,
    /// Gateway names, by the index the router returns.
    pub gateways: Vec<String>,
    pub apps: Arc<Apps>,
    pub senders: Arc<senders::SenderChecks>,
    /// Each gateway's `alignment`, by the same index.
    pub alignment: Vec<AlignmentMode>,
    /// The domains smtp-shaper has a `[[dkim]]` key for.
    pub dkim_domains: Vec<String>,
    pub dmarc: Arc<dmarc::DmarcRecords>,
}
