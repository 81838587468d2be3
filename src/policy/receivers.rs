//! Which receiver (mailbox provider) a recipient domain's mail reaches.
//!
//! Receivers judge a sending IP by what they themselves have seen from it:
//! Gmail by the mail Gmail got, Microsoft's filtering by what reached
//! Microsoft-hosted domains. Grouping recipient domains by provider is how
//! the best MTAs shape per destination (KumoMTA's MX suffix rollups,
//! PowerMTA's `mx-rollup`); this module is that grouping.
//!
//! A domain belongs to the first receiver that names it (the domain or a
//! parent of it; `hotmail.*` names `hotmail` under any ICANN public
//! suffix),
//! else to the receiver every one of its MX hosts falls under (a suffix of
//! the host name, so a company domain hosted at Microsoft 365 is
//! `microsoft`), else to [`OTHER`]. Pure: the MX hosts come from the
//! caller (a DNS lookup at the edge, or `simulate --mx-map`).
//!
//! Where the built-in table's facts come from is in the README ("What each
//! receiver sees").

use crate::config::{OTHER_RECEIVER, ReceiverConfig, ReceiversConfig};

/// The receiver of every domain no receiver claims.
pub const OTHER: &str = OTHER_RECEIVER;

/// The receivers a gateway's mail is judged by, in the order they claim
/// domains (the table is `config::receivers`: the built-in ones with
/// `[[receivers]]` applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receivers {
    list: Vec<ReceiverConfig>,
}

impl Default for Receivers {
    fn default() -> Receivers {
        Receivers::builtin()
    }
}

impl Receivers {
    /// The built-in receivers alone.
    pub fn builtin() -> Receivers {
        Receivers::new(&ReceiversConfig::default())
    }

    /// The receivers of a configuration.
    pub fn new(config: &ReceiversConfig) -> Receivers {
        Receivers {
            list: config.list.clone(),
        }
    }

    /// The receivers, in the order they claim domains ([`OTHER`] is not
    /// one: it is what none claims).
    pub fn all(&self) -> &[ReceiverConfig] {
        &self.list
    }

    /// Every receiver's name, [`OTHER`] last.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list
            .iter()
            .map(|receiver| receiver.name.as_str())
            .chain([OTHER])
    }

    /// The receiver that names `domain`, if one does.
    pub fn by_domain(&self, domain: &str) -> Option<&str> {
        let domain = normal(domain);
        self.list
            .iter()
            .find(|receiver| {
                receiver
                    .domains
                    .iter()
                    .any(|pattern| matches(pattern, &domain))
            })
            .map(|receiver| receiver.name.as_str())
    }

    /// The receiver every one of `hosts` (a domain's MX hosts) falls under,
    /// if there are hosts and one receiver takes them all.
    pub fn by_mx<'h>(&self, hosts: impl IntoIterator<Item = &'h str>) -> Option<&str> {
        let hosts: Vec<String> = hosts.into_iter().map(normal).collect();
        if hosts.is_empty() {
            return None;
        }
        self.list
            .iter()
            .find(|receiver| {
                hosts.iter().all(|host| {
                    receiver
                        .mx
                        .iter()
                        .any(|suffix| under(host, suffix.trim_start_matches('.')))
                })
            })
            .map(|receiver| receiver.name.as_str())
    }

    /// The receiver of `domain`: by its name, else by `mx` (its MX hosts,
    /// when known), else [`OTHER`].
    pub fn of<'h>(&self, domain: &str, mx: impl IntoIterator<Item = &'h str>) -> &str {
        self.by_domain(domain)
            .or_else(|| self.by_mx(mx))
            .unwrap_or(OTHER)
    }
}

/// Lower case, without a trailing dot (`Gmail.COM.` is `gmail.com`).
fn normal(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` is `parent` or under it.
fn under(name: &str, parent: &str) -> bool {
    name == parent
        || name
            .strip_suffix(parent)
            .is_some_and(|head| head.ends_with('.'))
}

/// Whether a receiver's domain `pattern` names `domain`.
fn matches(pattern: &str, domain: &str) -> bool {
    match pattern.strip_suffix(".*") {
        // `hotmail.*`: the registrable domain is `hotmail.<public suffix>`,
        // an ICANN one: not a private suffix (`hotmail.blogspot.com` is a
        // blog) nor a name the list does not know (`hotmail.local`).
        Some(brand) => psl::domain(domain.as_bytes()).is_some_and(|registrable| {
            registrable.suffix().typ() == Some(psl::Type::Icann)
                && registrable.as_bytes().split(|byte| *byte == b'.').next()
                    == Some(brand.as_bytes())
        }),
        None => under(domain, pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_is_its_receiver_s_by_name_then_by_mx_else_other() {
        let receivers = Receivers::builtin();
        let of = |domain: &str, mx: &[&str]| receivers.of(domain, mx.iter().copied()).to_string();
        assert_eq!(of("gmail.com", &[]), "google");
        assert_eq!(of("Gmail.COM.", &[]), "google", "case and a root dot");
        assert_eq!(of("hotmail.co.uk", &[]), "microsoft", "any public suffix");
        assert_eq!(of("mail.hotmail.fr", &[]), "microsoft", "a subdomain");
        assert_eq!(of("yahoo.com.br", &[]), "yahoo");
        assert_eq!(of("me.com", &[]), "apple");
        assert_eq!(of("notgmail.com", &[]), OTHER, "a label is whole");
        assert_eq!(of("hotmail-fans.com", &[]), OTHER);
        assert_eq!(of("hotmail.blogspot.com", &[]), OTHER, "a private suffix");
        assert_eq!(of("yahoo.github.io", &[]), OTHER, "a private suffix");
        assert_eq!(
            of("hotmail.local", &[]),
            OTHER,
            "a suffix the list does not know"
        );
        // A company domain hosted by a provider is that provider's.
        assert_eq!(
            of("example.org", &["example-org.mail.protection.outlook.com"]),
            "microsoft"
        );
        assert_eq!(
            of(
                "example.net",
                &["aspmx.l.google.com", "alt1.aspmx.l.google.com"]
            ),
            "google"
        );
        assert_eq!(
            of("example.com", &["example-com.a1b2c3.mx.microsoft"]),
            "microsoft"
        );
        // Every MX host must fall under the one receiver.
        assert_eq!(
            of("split.example", &["aspmx.l.google.com", "mx.split.example"]),
            OTHER
        );
        assert_eq!(of("example.com", &["google.com.evil.example"]), OTHER);
        assert_eq!(of("example.com", &[]), OTHER, "no MX known");
        // The name wins over the MX.
        assert_eq!(of("gmail.com", &["mx01.mail.icloud.com"]), "google");
    }

    #[test]
    fn the_names_are_the_receivers_then_other() {
        let receivers = Receivers::builtin();
        let names: Vec<&str> = receivers.names().collect();
        assert_eq!(names, ["google", "microsoft", "yahoo", "apple", "other"]);
    }
}
