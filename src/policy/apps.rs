//! Which application sent a message, from `[[apps]]`: the first app whose
//! `networks` contain the client address and whose `senders` match the sender
//! domain (an empty list matches anything) wins. Mail no app claims belongs
//! to a last, implicit app named `other`. The answer picks the message's lane
//! in the fair queue, so it depends only on the envelope and survives a
//! restart without being stored.

use std::net::IpAddr;

use super::{Network, SenderPattern};
use crate::config::AppConfig;

/// The lane of mail no `[[apps]]` entry matches.
pub const OTHER_APP: &str = "other";

/// The configured apps, in order, then `other`.
#[derive(Debug, Clone)]
pub struct Apps {
    apps: Vec<AppConfig>,
}

impl Apps {
    pub fn new(apps: &[AppConfig]) -> Apps {
        Apps {
            apps: apps.to_vec(),
        }
    }

    /// The app (lane index) of mail from `sender` sent by `client`.
    pub fn lane(&self, client: IpAddr, sender: &str) -> usize {
        self.apps
            .iter()
            .position(|app| {
                (app.networks.is_empty() || Network::any_contains(&app.networks, client))
                    && (app.senders.is_empty() || SenderPattern::any_matches(&app.senders, sender))
            })
            .unwrap_or(self.apps.len())
    }

    /// Lane names, `other` last.
    pub fn names(&self) -> Vec<String> {
        self.apps
            .iter()
            .map(|app| app.name.clone())
            .chain([OTHER_APP.to_string()])
            .collect()
    }

    /// Lane weights (each app's `priority`; `other` has 1).
    pub fn weights(&self) -> Vec<u32> {
        self.apps
            .iter()
            .map(|app| app.priority)
            .chain([1])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn first_matching_app_wins_and_the_rest_is_other() {
        let config = Config::parse(
            r#"
            [[gateways]]
            name = "g"
            address = "127.0.0.1:25"
            [[apps]]
            name = "billing"
            networks = ["10.1.0.0/16"]
            senders = ["billing.example.com"]
            [[apps]]
            name = "auth"
            senders = ["*.example.com"]
            priority = 2
            [[apps]]
            name = "batch"
            networks = ["10.0.0.0/8"]
            "#,
        )
        .unwrap();
        let apps = Apps::new(&config.apps);
        let ip = |text: &str| text.parse().unwrap();
        assert_eq!(apps.lane(ip("10.1.2.3"), "x@billing.example.com"), 0);
        assert_eq!(apps.lane(ip("10.2.2.3"), "x@billing.example.com"), 1);
        assert_eq!(apps.lane(ip("10.1.2.3"), "x@other.test"), 2);
        assert_eq!(apps.lane(ip("192.0.2.1"), ""), 3);
        assert_eq!(apps.names(), vec!["billing", "auth", "batch", "other"]);
        assert_eq!(apps.weights(), vec![1, 2, 1, 1]);
    }
}
