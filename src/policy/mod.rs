//! Who may send through the proxy, which app they are, which gateway
//! their mail goes to, and what the message may say about its sender.
//!
//! The decisions are pure functions of configuration, the envelope and the
//! message, so the inbound session can ask them without any I/O; the one
//! exception is the DMARC record an alignment verdict may need, which
//! [`dmarc`] looks up with a cache and a timeout. [`receivers`] says which
//! mailbox provider a recipient domain's mail reaches, by name or by MX
//! hosts, which [`receiver_lookup`] asks DNS for (cached, the wait bounded).

pub mod alignment;
mod apps;
pub mod dmarc;
pub mod message;
pub mod receiver_lookup;
pub mod receivers;
mod routing;
pub mod senders;

pub use apps::{Apps, Holding, OTHER_APP};
pub use routing::{Router, sender_domains};

use std::sync::Arc;

use crate::config::{AlignmentMode, Config};

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
    /// The receiver of each recipient, for the per-receiver budgets.
    pub receivers: Arc<receiver_lookup::ReceiverLookup>,
}

impl Policy {
    /// Routing, app recognition and the message rules of a configuration,
    /// as the sessions use them (a fresh DMARC cache: a reload starts it
    /// anew).
    pub fn from_config(config: &Config) -> Policy {
        let resolver: Arc<dyn crate::dns::Resolver + Send + Sync> = match config.server.dns_resolver
        {
            Some(server) => Arc::new(crate::dns::SystemResolver::at(server)),
            None => Arc::new(crate::dns::SystemResolver::from_resolv_conf()),
        };
        Policy {
            router: Router::from_config(config),
            gateways: config.gateways.iter().map(|g| g.name.clone()).collect(),
            apps: Arc::new(Apps::new(&config.apps)),
            senders: Arc::default(),
            alignment: config.gateways.iter().map(|g| g.alignment).collect(),
            dkim_domains: config.dkim.iter().map(|d| d.domain.clone()).collect(),
            dmarc: Arc::new(dmarc::DmarcRecords::new(resolver.clone())),
            receivers: Arc::new(receiver_lookup::ReceiverLookup::new(config, resolver)),
        }
    }
}
