//! Routing: which gateway relays a message, chosen by the sender's domain.
//!
//! Gateways are tried in configuration order and the first whose `senders`
//! pattern matches wins; a sender no pattern matches (the null sender of a
//! bounce included) goes to the default gateway. Routing never looks at
//! recipients, so no address trick can steer mail anywhere but a configured
//! gateway.

use crate::config::{Config, SenderPattern};

/// Picks a gateway (by index into the configured list) for a sender.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<(usize, Vec<SenderPattern>)>,
    default: usize,
}

impl Router {
    /// `routes` holds each gateway's index and patterns, in configuration order.
    pub fn new(routes: Vec<(usize, Vec<SenderPattern>)>, default: usize) -> Self {
        Router { routes, default }
    }

    /// The router of a configuration: each gateway's `senders`, in order,
    /// and the gateway marked `default` (else the first).
    pub fn from_config(config: &Config) -> Router {
        let default = config
            .gateways
            .iter()
            .position(|gateway| gateway.default)
            .unwrap_or(0);
        Router::new(
            config
                .gateways
                .iter()
                .enumerate()
                .map(|(index, gateway)| (index, gateway.senders.clone()))
                .collect(),
            default,
        )
    }

    /// The gateway for mail from `sender` (`""` is the null sender).
    pub fn route(&self, sender: &str) -> usize {
        self.routes
            .iter()
            .find(|(_, patterns)| SenderPattern::any_matches(patterns, sender))
            .map_or(self.default, |(gateway, _)| *gateway)
    }
}

/// The sender domains whose mail goes through gateway `index`: those of
/// its own `senders` and of the apps' `senders` (addresses count by their
/// domain; `*.` patterns name no single domain and are left out).
pub fn sender_domains(config: &Config, index: usize) -> Vec<String> {
    let router = Router::from_config(config);
    let mut domains: Vec<String> = config
        .gateways
        .iter()
        .flat_map(|gateway| &gateway.senders)
        .chain(config.apps.iter().flat_map(|app| &app.senders))
        .filter_map(|pattern| match pattern {
            SenderPattern::Domain(domain) => Some(domain.clone()),
            SenderPattern::Address(address) => address
                .rsplit_once('@')
                .map(|(_, domain)| domain.to_string()),
            SenderPattern::Subdomains(_) => None,
        })
        .filter(|domain| router.route(&format!("postmaster@{domain}")) == index)
        .collect();
    domains.sort();
    domains.dedup();
    domains
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(
            vec![
                (0, vec!["billing.example.com".parse().unwrap()]),
                (
                    1,
                    vec![
                        "*.example.org".parse().unwrap(),
                        "example.net".parse().unwrap(),
                    ],
                ),
            ],
            2,
        )
    }

    #[test]
    fn sender_domains_per_gateway() {
        let config = Config::parse(
            r#"
            [[gateways]]
            name = "billing"
            address = "127.0.0.1:25"
            senders = ["billing.example.com", "*.invoices.example.com"]
            [[gateways]]
            name = "main"
            address = "127.0.0.1:26"
            default = true
            [[apps]]
            name = "a"
            senders = ["noreply@example.org", "billing.example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(sender_domains(&config, 0), vec!["billing.example.com"]);
        assert_eq!(sender_domains(&config, 1), vec!["example.org"]);
    }

    #[test]
    fn routes_by_sender_domain() {
        let router = router();
        assert_eq!(router.route("invoices@billing.example.com"), 0);
        assert_eq!(router.route("x@BILLING.EXAMPLE.COM"), 0);
        assert_eq!(router.route("x@app.example.org"), 1);
        assert_eq!(router.route("x@example.org"), 2);
        assert_eq!(router.route("x@example.net"), 1);
        assert_eq!(router.route("x@badexample.org"), 2);
        assert_eq!(router.route(""), 2);
        assert_eq!(router.route("\"a@billing.example.com\"@other.test"), 2);
    }
}
