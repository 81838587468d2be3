//! SPF evaluation (RFC 7208) of one sending IP for one domain, saying which
//! mechanism decided: enough to tell an operator whether the record names
//! exactly the machines allowed to send. Pure over a [`Resolver`].
//!
//! Supported: `all`, `include`, `a`, `mx`, `ip4`, `ip6`, `exists`,
//! `redirect=`, qualifiers, CIDR lengths, and the limits of RFC 7208 4.6.4,
//! each a PermError that names it: 10 DNS-querying terms, 2 void lookups
//! (a query that finds nothing: no such name, or no record of the type
//! asked, counted per query as pyspf does, so an `mx` host without an
//! address of the sending IP's family counts too), 10 MX records per `mx`.
//! An `ip4:` with an IPv6 network, or the reverse, is a PermError too. Not
//! evaluated: macros (a PermError that says so) and `ptr` (deprecated by
//! RFC 7208 5.5; it never matches here, and the outcome lists each one
//! passed over so the report can say so rather than guess).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Network;
use crate::dns::Resolver;

/// RFC 7208 results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpfResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    /// No SPF record.
    None,
    PermError(String),
    TempError(String),
}

/// The result and what produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    /// The deciding mechanism, with the includes it was reached through,
    /// e.g. `ip4:192.0.2.0/24 (in include:spf.example.net)`.
    pub mechanism: Option<String>,
    /// `ptr` terms met before the result, which were not evaluated, each
    /// with the domain whose record has it, e.g. `ptr at example.com`: a
    /// receiver that does evaluate them may decide otherwise.
    pub unevaluated: Vec<String>,
}

impl SpfOutcome {
    fn error(result: SpfResult) -> SpfOutcome {
        SpfOutcome {
            result,
            mechanism: None,
            unevaluated: Vec::new(),
        }
    }
}

/// The SPF record of `domain`: `Ok(None)` when there is none.
pub fn record(resolver: &dyn Resolver, domain: &str) -> Result<Option<String>, SpfResult> {
    let records = resolver
        .txt(domain)
        .map_err(|error| SpfResult::TempError(error.to_string()))?;
    let mut spf = records.into_iter().filter(|text| {
        let lower = text.to_ascii_lowercase();
        lower == "v=spf1" || lower.starts_with("v=spf1 ")
    });
    match (spf.next(), spf.next()) {
        (None, _) => Ok(None),
        (Some(record), None) => Ok(Some(record)),
        (Some(_), Some(_)) => Err(SpfResult::PermError(format!(
            "{domain} publishes more than one SPF record"
        ))),
    }
}

/// Evaluates `ip` sending for `domain`.
pub fn check_host(resolver: &dyn Resolver, ip: IpAddr, domain: &str) -> SpfOutcome {
    let mut evaluation = Evaluation {
        resolver,
        // An IPv4 sender written as ::ffff:a.b.c.d is judged as the IPv4
        // address it is, the way it connects.
        ip: ip.to_canonical(),
        lookups: 0,
        voids: Vec::new(),
        unevaluated: Vec::new(),
    };
    let mut outcome = evaluation.domain(domain, 0);
    outcome.unevaluated = evaluation.unevaluated;
    outcome
}

struct Evaluation<'a> {
    resolver: &'a dyn Resolver,
    ip: IpAddr,
    lookups: u32,
    /// The void lookups so far, e.g. `mail.example.com (A)`.
    voids: Vec<String>,
    /// The `ptr` terms passed over so far, includes and redirects included.
    unevaluated: Vec<String>,
}

const MAX_LOOKUPS: u32 = 10;
const MAX_VOID_LOOKUPS: usize = 2;
/// The most MX records one `mx` may have (RFC 7208 4.6.4).
const MAX_MX: usize = 10;

impl Evaluation<'_> {
    fn count_lookup(&mut self) -> Result<(), SpfOutcome> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(SpfOutcome::error(SpfResult::PermError(
                "more than 10 DNS-querying mechanisms (RFC 7208 4.6.4)".into(),
            )));
        }
        Ok(())
    }

    /// Counts a lookup of `name` that found nothing.
    fn count_void(&mut self, name: &str, kind: &str) -> Result<(), SpfOutcome> {
        self.voids.push(format!("{name} ({kind})"));
        if self.voids.len() > MAX_VOID_LOOKUPS {
            return Err(SpfOutcome::error(SpfResult::PermError(format!(
                "more than {MAX_VOID_LOOKUPS} void lookups (RFC 7208 4.6.4): {}",
                self.voids.join(", ")
            ))));
        }
        Ok(())
    }

    /// The addresses of `name` of one family (IPv4 when `ipv4`), a void
    /// lookup when there are none.
    fn addresses(&mut self, name: &str, ipv4: bool) -> Result<Vec<IpAddr>, SpfOutcome> {
        let found: Vec<IpAddr> = self
            .resolver
            .addresses(name)
            .map_err(|error| SpfOutcome::error(SpfResult::TempError(error.to_string())))?
            .into_iter()
            .filter(|address| address.is_ipv4() == ipv4)
            .collect();
        if found.is_empty() {
            self.count_void(name, if ipv4 { "A" } else { "AAAA" })?;
        }
        Ok(found)
    }

    fn domain(&mut self, domain: &str, depth: u32) -> SpfOutcome {
        if depth > MAX_LOOKUPS {
            return SpfOutcome::error(SpfResult::PermError(format!("include loop at {domain}")));
        }
        let record = match record(self.resolver, domain) {
            Ok(Some(record)) => record,
            Ok(None) => return SpfOutcome::error(SpfResult::None),
            Err(result) => return SpfOutcome::error(result),
        };
        let mut redirect = None;
        for term in record.split_whitespace().skip(1) {
            if term.contains("%{") {
                return SpfOutcome::error(SpfResult::PermError(format!(
                    "{term:?} uses macros, which this check does not evaluate"
                )));
            }
            if let Some(target) = term.to_ascii_lowercase().strip_prefix("redirect=") {
                redirect = Some(target.to_string());
                continue;
            }
            if term.contains('=') {
                continue; // exp= and unknown modifiers
            }
            let (qualifier, mechanism) = match term.chars().next() {
                Some(q @ ('+' | '-' | '~' | '?')) => (q, &term[1..]),
                _ => ('+', term),
            };
            match self.matches(mechanism, domain, depth) {
                Ok(Some(via)) => {
                    let result = match qualifier {
                        '-' => SpfResult::Fail,
                        '~' => SpfResult::SoftFail,
                        '?' => SpfResult::Neutral,
                        _ => SpfResult::Pass,
                    };
                    return SpfOutcome {
                        result,
                        mechanism: Some(match via {
                            Some(inner) => format!("{inner} (in {term})"),
                            None => term.to_string(),
                        }),
                        unevaluated: Vec::new(),
                    };
                }
                Ok(None) => {}
                Err(outcome) => return outcome,
            }
        }
        if let Some(target) = redirect {
            if let Err(outcome) = self.count_lookup() {
                return outcome;
            }
            let inner = self.domain(&target, depth + 1);
            return match inner.result {
                SpfResult::None => SpfOutcome::error(SpfResult::PermError(format!(
                    "redirect={target} has no SPF record"
                ))),
                _ => SpfOutcome {
                    mechanism: inner
                        .mechanism
                        .map(|m| format!("{m} (in redirect={target})")),
                    result: inner.result,
                    unevaluated: Vec::new(),
                },
            };
        }
        SpfOutcome::error(SpfResult::Neutral)
    }

    /// `Ok(Some(via))` when `mechanism` matches the IP; `via` is the inner
    /// mechanism for an include.
    fn matches(
        &mut self,
        mechanism: &str,
        domain: &str,
        depth: u32,
    ) -> Result<Option<Option<String>>, SpfOutcome> {
        let lower = mechanism.to_ascii_lowercase();
        let (name, argument) = match lower.find([':', '/']) {
            Some(at) => (&lower[..at], Some(&lower[at..])),
            None => (lower.as_str(), None),
        };
        let target = || argument.and_then(|a| a.strip_prefix(':')).unwrap_or("");
        match name {
            "all" => Ok(Some(None)),
            "ip4" | "ip6" => {
                let network = parse_network(mechanism, target(), name == "ip4")?;
                Ok(network.contains_as_written(self.ip).then_some(None))
            }
            "include" => {
                self.count_lookup()?;
                let target = target();
                let inner = self.domain(target, depth + 1);
                match inner.result {
                    SpfResult::Pass => Ok(Some(inner.mechanism)),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(None),
                    SpfResult::None => Err(SpfOutcome::error(SpfResult::PermError(format!(
                        "include:{target} has no SPF record"
                    )))),
                    _ => Err(inner),
                }
            }
            "a" => {
                self.count_lookup()?;
                let (target, prefix) = target_and_prefix(mechanism, domain, argument)?;
                let addresses = self.addresses(&target, self.ip.is_ipv4())?;
                Ok(addresses
                    .into_iter()
                    .any(|address| prefix.covers(address, self.ip))
                    .then_some(None))
            }
            "mx" => {
                self.count_lookup()?;
                let (target, prefix) = target_and_prefix(mechanism, domain, argument)?;
                Ok(self.mx_matches(mechanism, &target, prefix)?.then_some(None))
            }
            "exists" => {
                self.count_lookup()?;
                // An A query whatever the sender's family (RFC 7208 5.7).
                let addresses = self.addresses(target(), true)?;
                Ok((!addresses.is_empty()).then_some(None))
            }
            "ptr" => {
                self.count_lookup()?;
                self.unevaluated.push(format!("{mechanism} at {domain}"));
                Ok(None)
            }
            _ => Err(SpfOutcome::error(SpfResult::PermError(format!(
                "unknown mechanism {mechanism:?}"
            )))),
        }
    }

    /// `mx`: one of `target`'s exchanges has an address in `prefix` of the
    /// IP; at most [`MAX_MX`] exchanges.
    fn mx_matches(
        &mut self,
        mechanism: &str,
        target: &str,
        prefix: Prefix,
    ) -> Result<bool, SpfOutcome> {
        let exchanges = self
            .resolver
            .mx(target)
            .map_err(|error| SpfOutcome::error(SpfResult::TempError(error.to_string())))?;
        if exchanges.is_empty() {
            self.count_void(target, "MX")?;
        }
        if exchanges.len() > MAX_MX {
            return Err(SpfOutcome::error(SpfResult::PermError(format!(
                "{mechanism}: {target} has {} MX records, more than {MAX_MX} \
                 (RFC 7208 4.6.4)",
                exchanges.len()
            ))));
        }
        for exchange in &exchanges {
            let addresses = self.addresses(exchange, self.ip.is_ipv4())?;
            if addresses
                .into_iter()
                .any(|address| prefix.covers(address, self.ip))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The network of an `ip4:` or `ip6:` mechanism: an address of its own
/// family only (an IPv6 network in ip4: would otherwise never match, and
/// the record's author would never learn it).
fn parse_network(mechanism: &str, network: &str, ipv4: bool) -> Result<Network, SpfOutcome> {
    let (address, length) = match network.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (network, None),
    };
    let bad = |why: &str| SpfOutcome::error(SpfResult::PermError(format!("{mechanism}: {why}")));
    let (address, max) = if ipv4 {
        let address = address
            .parse::<Ipv4Addr>()
            .map_err(|_| bad("not an IPv4 address"))?;
        (IpAddr::V4(address), 32)
    } else {
        let address = address
            .parse::<Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address"))?;
        (IpAddr::V6(address), 128)
    };
    let length = match length {
        None => max,
        Some(length) => length.parse::<u8>().map_err(|_| bad("bad CIDR length"))?,
    };
    Network::new(address, length).ok_or_else(|| bad("bad CIDR length"))
}

/// The dual CIDR lengths of `a` and `mx` (`/24//64`): how much of a found
/// address the IP must share, per family.
#[derive(Clone, Copy)]
struct Prefix {
    v4: u8,
    v6: u8,
}

impl Prefix {
    /// `ip` is within this prefix of `address` (the lengths are within
    /// their families' bits, as [`target_and_prefix`] checks).
    fn covers(self, address: IpAddr, ip: IpAddr) -> bool {
        let length = if address.is_ipv4() { self.v4 } else { self.v6 };
        Network::new(address, length).is_some_and(|network| network.contains_as_written(ip))
    }
}

/// The target domain (`domain` itself when none is given) and the prefix
/// of an `a` or `mx` mechanism's `argument` (`:target/24//64`).
fn target_and_prefix(
    mechanism: &str,
    domain: &str,
    argument: Option<&str>,
) -> Result<(String, Prefix), SpfOutcome> {
    let argument = argument.unwrap_or("");
    let (target, cidr) = match argument.strip_prefix(':') {
        Some(rest) => match rest.find('/') {
            Some(at) => (rest[..at].to_string(), &rest[at..]),
            None => (rest.to_string(), ""),
        },
        None => (domain.to_string(), argument),
    };
    let (v4, v6) = cidr.split_once("//").unwrap_or((cidr, ""));
    let parse = |text: &str, max: u8| -> Result<u8, SpfOutcome> {
        match text.trim_start_matches('/') {
            "" => Ok(max),
            n => n.parse().ok().filter(|n| *n <= max).ok_or_else(|| {
                SpfOutcome::error(SpfResult::PermError(format!(
                    "bad CIDR length in {mechanism}"
                )))
            }),
        }
    };
    Ok((
        target,
        Prefix {
            v4: parse(v4, 32)?,
            v6: parse(v6, 128)?,
        },
    ))
}
