//! Sender patterns: one entry of a `senders` list (of a gateway or an
//! app), and whether a sender matches. A value type of the configuration;
//! routing (`policy::Router`) and app recognition (`policy::Apps`) use it.

use std::str::FromStr;

/// One entry of a `senders` list (of a gateway or an app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// `example.com`: exactly this domain.
    Domain(String),
    /// `*.example.com`: any subdomain, not the domain itself.
    Subdomains(String),
    /// `alerts@example.com`: exactly this address (case-insensitively).
    Address(String),
}

impl SenderPattern {
    /// True when any of `patterns` matches the domain of `sender` (`""`, the
    /// null sender, matches none).
    pub fn any_matches(patterns: &[SenderPattern], sender: &str) -> bool {
        sender_domain(sender).is_some_and(|domain| {
            patterns.iter().any(|pattern| match pattern {
                SenderPattern::Address(address) => sender.eq_ignore_ascii_case(address),
                _ => pattern.matches(domain),
            })
        })
    }

    fn matches(&self, domain: &str) -> bool {
        match self {
            SenderPattern::Address(_) => false,
            SenderPattern::Domain(wanted) => domain.eq_ignore_ascii_case(wanted),
            SenderPattern::Subdomains(parent) => {
                domain.len() > parent.len() + 1
                    && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.'
                    && domain[domain.len() - parent.len()..].eq_ignore_ascii_case(parent)
            }
        }
    }
}

impl FromStr for SenderPattern {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let text = text.trim().trim_start_matches('@');
        if let Some((local, domain)) = text.rsplit_once('@') {
            let valid_local = !local.is_empty()
                && local.len() <= 64
                && local
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:@\"".contains(c));
            return match (valid_local, domain.parse::<SenderPattern>()) {
                (true, Ok(SenderPattern::Domain(domain))) => {
                    Ok(SenderPattern::Address(format!("{local}@{domain}")))
                }
                _ => Err(()),
            };
        }
        let (subdomains, domain) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let valid = !domain.is_empty()
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(());
        }
        let domain = domain.to_ascii_lowercase();
        Ok(if subdomains {
            SenderPattern::Subdomains(domain)
        } else {
            SenderPattern::Domain(domain)
        })
    }
}

/// The domain after the last `@`, which is the one DNS would use.
fn sender_domain(sender: &str) -> Option<&str> {
    sender.rsplit_once('@').map(|(_, domain)| domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_patterns_match_one_sender() {
        let patterns: Vec<SenderPattern> = vec!["alerts@Example.com".parse().unwrap()];
        assert!(SenderPattern::any_matches(&patterns, "ALERTS@example.COM"));
        assert!(!SenderPattern::any_matches(&patterns, "other@example.com"));
        assert!(!SenderPattern::any_matches(&patterns, ""));
        assert!("a b@example.com".parse::<SenderPattern>().is_err());
        assert!("x@*.example.com".parse::<SenderPattern>().is_err());
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!("".parse::<SenderPattern>().is_err());
        assert!("a..b".parse::<SenderPattern>().is_err());
        assert!("*".parse::<SenderPattern>().is_err());
        assert!("ex ample.com".parse::<SenderPattern>().is_err());
    }
}
