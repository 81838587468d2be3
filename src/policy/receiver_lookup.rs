//! The receiver of each recipient, as the relay finds it: by the domain's
//! name ([`Receivers::by_domain`]), else by where its mail goes (its MX
//! hosts, from our DNS client through `dns::mx_cache`: cached by TTL, the
//! wait bounded), else `other`. A lookup that fails, or does not answer
//! within the bound, makes the recipient `other` for this message; the
//! lookup goes on, and the domain's later mail finds its answer (a failure
//! is asked again after five minutes).
//!
//! Receivers are named here as the gateway's shaper names them: an index
//! into that gateway's receiver rules (`ShapingConfig::receivers`), `None`
//! for a receiver it does not budget. A gateway that budgets no receiver
//! asks DNS nothing.

use std::sync::Arc;
use std::time::Duration;

use super::receivers::{OTHER, Receivers};
use crate::config::Config;
use crate::dns::Resolver;
use crate::dns::mx_cache::MxResolver;

/// The longest a message waits at the end of DATA for its recipients'
/// domains' MX hosts, all of them together (RCPT uses only what is cached
/// and never waits): DNS answers in tens of milliseconds; a resolver that
/// does not answer must not hold the session long (the domain is `other`
/// until it does).
pub const LOOKUP_WAIT: Duration = Duration::from_millis(500);

/// See the module notes.
pub struct ReceiverLookup {
    receivers: Receivers,
    mx: MxResolver,
    /// Per gateway (configuration order), per receiver (in
    /// [`Receivers::names`] order): its index in the gateway's rules.
    rules: Vec<Vec<Option<usize>>>,
    /// Per gateway, the names of its rules (for logs).
    names: Vec<Vec<String>>,
}

impl std::fmt::Debug for ReceiverLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverLookup")
            .field("receivers", &self.receivers)
            .finish_non_exhaustive()
    }
}

/// The domain of an address (`user@Example.COM` -> `Example.COM`).
fn domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, domain)| domain)
}

impl ReceiverLookup {
    /// The receivers of `config`, looking MX hosts up through `resolver`.
    pub fn new(config: &Config, resolver: Arc<dyn Resolver + Send + Sync>) -> ReceiverLookup {
        let receivers = Receivers::new(&config.receivers);
        let rules = config
            .gateways
            .iter()
            .map(|gateway| {
                receivers
                    .names()
                    .map(|name| {
                        gateway
                            .shaping
                            .receivers
                            .iter()
                            .position(|rule| rule.name == name)
                    })
                    .collect()
            })
            .collect();
        let names = config
            .gateways
            .iter()
            .map(|gateway| {
                gateway
                    .shaping
                    .receivers
                    .iter()
                    .map(|rule| rule.name.clone())
                    .collect()
            })
            .collect();
        ReceiverLookup {
            receivers,
            mx: MxResolver::new(resolver),
            rules,
            names,
        }
    }

    /// The rule index of the receiver called `name` on `gateway`.
    pub fn index_named(&self, gateway: usize, name: &str) -> Option<usize> {
        self.rule(gateway, name)
    }

    fn rule(&self, gateway: usize, name: &str) -> Option<usize> {
        let position = self.receivers.names().position(|known| known == name)?;
        *self.rules.get(gateway)?.get(position)?
    }

    fn budgets_receivers(&self, gateway: usize) -> bool {
        self.rules
            .get(gateway)
            .is_some_and(|rules| rules.iter().any(Option::is_some))
    }

    /// The receiver of `recipient` on `gateway` as known now: by name, or
    /// by MX hosts already cached (no DNS wait).
    pub fn cached(&self, gateway: usize, recipient: &str) -> Option<usize> {
        if !self.budgets_receivers(gateway) {
            return None;
        }
        let domain = domain(recipient);
        // DNS only where the name does not say.
        let hosts = match self.receivers.by_domain(domain) {
            Some(_) => None,
            None => self.mx.cached(domain),
        };
        self.placed(gateway, domain, hosts)
    }

    /// The receiver of `recipient` on `gateway`, asking DNS for its
    /// domain's MX hosts when its name does not say, waiting at most
    /// `wait`.
    pub async fn resolve(&self, gateway: usize, recipient: &str, wait: Duration) -> Option<usize> {
        if !self.budgets_receivers(gateway) {
            return None;
        }
        let domain = domain(recipient);
        let hosts = match self.receivers.by_domain(domain) {
            Some(_) => None,
            None => self.mx.hosts(domain, wait).await,
        };
        self.placed(gateway, domain, hosts)
    }

    /// The rule index on `gateway` of `domain`'s receiver, by its name
    /// else by `hosts` (its MX hosts, when known).
    fn placed(&self, gateway: usize, domain: &str, hosts: Option<Vec<String>>) -> Option<usize> {
        let name = self
            .receivers
            .of(domain, hosts.iter().flatten().map(String::as_str));
        self.rule(gateway, name)
    }

    /// The name of receiver `receiver` of `gateway` (`other` for one not
    /// budgeted), for logs.
    pub fn name(&self, gateway: usize, receiver: Option<usize>) -> &str {
        receiver
            .and_then(|index| self.names.get(gateway)?.get(index))
            .map_or(OTHER, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::SeededResolver;

    fn lookup(shaping: &str, records: &str) -> ReceiverLookup {
        let config = Config::parse(&format!(
            "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[gateways.shaping]\n{shaping}\n\
             [[receivers]]\nname = \"internal\"\ndomains = [\"example.org\"]\n"
        ))
        .unwrap();
        let resolver = SeededResolver::parse(records).unwrap();
        ReceiverLookup::new(&config, Arc::new(resolver))
    }

    #[tokio::test]
    async fn a_recipient_is_its_domain_s_receiver_by_name_then_by_mx_else_unbudgeted() {
        let lookup = lookup(
            "min_rate = [\"10/min\", \"60/h\", \"300/day\"]",
            "example.com MX example-com.mail.protection.outlook.com 300\n",
        );
        // Rules: internal, google, microsoft, yahoo, apple.
        assert_eq!(lookup.cached(0, "a@gmail.com"), Some(1));
        assert_eq!(lookup.cached(0, "a@sub.example.org"), Some(0));
        assert_eq!(lookup.cached(0, "a@example.com"), None, "not looked up yet");
        let wait = Duration::from_secs(5);
        assert_eq!(lookup.resolve(0, "a@example.com", wait).await, Some(2));
        assert_eq!(lookup.cached(0, "b@example.com"), Some(2), "cached since");
        assert_eq!(lookup.name(0, Some(2)), "microsoft");
        // No MX known (the resolver has none): other, not budgeted.
        assert_eq!(lookup.resolve(0, "a@unknown.example", wait).await, None);
        assert_eq!(lookup.name(0, None), "other");
    }

    #[tokio::test]
    async fn a_gateway_that_budgets_no_receiver_asks_nothing() {
        let lookup = lookup(
            "min_rate = \"10/min\"",
            "example.com MX example-com.mail.protection.outlook.com 300\n",
        );
        assert_eq!(lookup.cached(0, "a@gmail.com"), None);
        assert_eq!(
            lookup
                .resolve(0, "a@example.com", Duration::from_secs(5))
                .await,
            None
        );
    }
}
