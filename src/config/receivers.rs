//! `[[receivers]]`: the receiving providers (Gmail, Microsoft, ...) whose
//! own view of the gateway is budgeted, the built-in ones and what an
//! operator adds or overrides, and each gateway's receiver rules that
//! follow from them and its `receiver_min_rate`.
//!
//! The matching of a domain to a receiver is `policy::receivers`; this is
//! the table it matches against. An entry with a built-in name overrides
//! that receiver's domains, MX suffixes or floors (what it gives); one
//! with a new name claims its domains before the built-in ones do.
//! `other` (every domain no receiver claims) takes `min_rate` only: it is
//! many receivers, each judging alone, so it is left to the gateway's
//! total unless an operator budgets it.

use super::*;
use crate::shaper::rules::ReceiverRule;

/// The receiver of every domain no receiver claims.
pub const OTHER_RECEIVER: &str = "other";

/// One receiver and how its domains are recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    pub name: String,
    /// Recipient domains it hosts: each matches itself and its subdomains;
    /// `name.*` matches `name` under any ICANN public suffix
    /// (`hotmail.co.uk`).
    pub domains: Vec<String>,
    /// Suffixes of its MX host names (`.google.com`): a domain whose every
    /// MX host ends in one of them is this receiver's.
    pub mx: Vec<String>,
    /// Its own floors per horizon (`min_rate`); `None` takes each
    /// gateway's `receiver_min_rate`.
    pub min_volume: Option<[Option<u64>; 2]>,
}

/// The receivers a configuration budgets, in the order they claim domains,
/// and the floors of `other` if an operator gave it some.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiversConfig {
    pub list: Vec<ReceiverConfig>,
    pub other_min_volume: Option<[Option<u64>; 2]>,
}

impl Default for ReceiversConfig {
    fn default() -> ReceiversConfig {
        ReceiversConfig {
            list: builtin_receivers(),
            other_min_volume: None,
        }
    }
}

/// The large consumer mailbox providers, which judge senders hardest.
/// Where each fact comes from is in the README ("What each receiver sees").
pub fn builtin_receivers() -> Vec<ReceiverConfig> {
    let receiver = |name: &str, domains: &[&str], mx: &[&str]| ReceiverConfig {
        name: name.to_string(),
        domains: domains.iter().map(|domain| domain.to_string()).collect(),
        mx: mx.iter().map(|suffix| suffix.to_string()).collect(),
        min_volume: None,
    };
    vec![
        receiver(
            "google",
            &["gmail.com", "googlemail.com"],
            &[".google.com", ".googlemail.com"],
        ),
        receiver(
            "microsoft",
            &["outlook.com", "hotmail.*", "live.com", "msn.com"],
            &[
                ".mail.protection.outlook.com",
                ".olc.protection.outlook.com",
                ".mx.microsoft",
            ],
        ),
        receiver(
            "yahoo",
            &["yahoo.*", "ymail.com", "aol.com"],
            &[".yahoodns.net"],
        ),
        receiver(
            "apple",
            &["icloud.com", "me.com", "mac.com"],
            &[".mail.icloud.com"],
        ),
    ]
}

impl ReceiversConfig {
    /// The rules of a gateway whose shaping is `shaping`: every receiver
    /// with a floor on a horizon the gateway budgets (a gateway that
    /// budgets no hour or day budgets no receiver either), then `other`
    /// when it has floors.
    pub fn rules(&self, shaping: &ShapingConfig) -> Vec<ReceiverRule> {
        let named = self
            .list
            .iter()
            .map(|receiver| (receiver.name.as_str(), receiver.min_volume));
        named
            .chain([(OTHER_RECEIVER, self.other_min_volume.or(Some([None; 2])))])
            .filter_map(|(name, own)| {
                let floors = own.unwrap_or(shaping.receiver_min_volume);
                let floors: [Option<u64>; 2] =
                    std::array::from_fn(|horizon| shaping.min_volume[horizon].and(floors[horizon]));
                floors.iter().any(Option::is_some).then(|| ReceiverRule {
                    name: name.to_string(),
                    floors,
                })
            })
            .collect()
    }
}

/// What `domains` accepts.
const DOMAIN_FORMS: &str = "a list of domains, e.g. [\"example.com\"] (each matches its subdomains too; \"name.*\" matches name under any public suffix)";
/// What `mx` accepts.
const MX_FORMS: &str = "a list of MX host name suffixes, e.g. [\"mx.example.com\"]";

fn parse_domain_pattern(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = text.strip_suffix(".*").unwrap_or(&text);
    is_hostname(name).then_some(text)
}

fn parse_mx_suffix(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = text.strip_prefix('.').unwrap_or(&text);
    is_hostname(name).then(|| format!(".{name}"))
}

/// One `[[receivers]]` table.
pub(super) fn read_receiver(mut s: Section<'_>) -> (ReceiverConfig, [bool; 2]) {
    let given = [s.has("domains"), s.has("mx")];
    let receiver = ReceiverConfig {
        name: s.required("name", NAME_FORMS, parse_name),
        domains: s.list("domains", &[], DOMAIN_FORMS, parse_domain_pattern),
        mx: s.list("mx", &[], MX_FORMS, parse_mx_suffix),
        min_volume: s
            .has("min_rate")
            .then(|| shaping::volume_rates(&mut s, "min_rate", &[])),
    };
    if receiver.name == OTHER_RECEIVER && (given[0] || given[1]) {
        s.problem(
            "name",
            "\"other\" is every domain no receiver claims: it takes min_rate only (no domains or mx)",
        );
    }
    let builtin = builtin_receivers()
        .iter()
        .any(|known| known.name == receiver.name);
    if !builtin
        && receiver.name != OTHER_RECEIVER
        && receiver.domains.is_empty()
        && receiver.mx.is_empty()
    {
        s.problem(
            "domains",
            "a new receiver needs domains or mx (or both) to claim any mail",
        );
    }
    s.finish();
    (receiver, given)
}

/// The built-in receivers with every `[[receivers]]` entry applied: a new
/// name first (it claims its domains before the built-in ones), a built-in
/// name overriding what it gives.
pub(super) fn merge_receivers(entries: Vec<(ReceiverConfig, [bool; 2])>) -> ReceiversConfig {
    let mut builtin = builtin_receivers();
    let mut added = Vec::new();
    let mut other_min_volume = None;
    for (entry, [domains_given, mx_given]) in entries {
        if entry.name == OTHER_RECEIVER {
            other_min_volume = entry.min_volume;
        } else if let Some(known) = builtin.iter_mut().find(|known| known.name == entry.name) {
            if domains_given {
                known.domains = entry.domains;
            }
            if mx_given {
                known.mx = entry.mx;
            }
            if entry.min_volume.is_some() {
                known.min_volume = entry.min_volume;
            }
        } else {
            added.push(entry);
        }
    }
    added.extend(builtin);
    ReceiversConfig {
        list: added,
        other_min_volume,
    }
}
