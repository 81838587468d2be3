//! SPF evaluation (RFC 7208) of one sending IP for one domain, saying which
//! mechanism decided: enough to tell an operator whether the record names
//! exactly the machines allowed to send. Pure over a [`Resolver`].
//!
//! Supported: `all`, `include`, `a`, `mx`, `ip4`, `ip6`, `exists`,
//! `redirect=`, qualifiers, CIDR lengths, the 10-lookup limit. Not
//! evaluated: macros (a PermError that says so) and `ptr` (deprecated by
//! RFC 7208 5.5; it never matches here, and the outcome lists each one
//! passed over so the report can say so rather than guess).

use std::net::IpAddr;

use crate::dns::Resolver;
use crate::policy::Network;

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
        ip,
        lookups: 0,
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
    /// The `ptr` terms passed over so far, includes and redirects included.
    unevaluated: Vec<String>,
}

const MAX_LOOKUPS: u32 = 10;

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
        let target_and_cidr = |argument: Option<&str>| -> Result<(String, u8, u8), SpfOutcome> {
            let argument = argument.unwrap_or("");
            let (target, cidr) = match argument.strip_prefix(':') {
                Some(rest) => match rest.find('/') {
                    Some(at) => (rest[..at].to_string(), &rest[at..]),
                    None => (rest.to_string(), ""),
                },
                None => (domain.to_string(), argument),
            };
            let (v4, v6) = match cidr.split_once("//") {
                Some((v4, v6)) => (v4, v6),
                None => (cidr, ""),
            };
            let parse = |text: &str, default: u8, max: u8| -> Result<u8, SpfOutcome> {
                match text.trim_start_matches('/') {
                    "" => Ok(default),
                    n => n.parse().ok().filter(|n| *n <= max).ok_or_else(|| {
                        SpfOutcome::error(SpfResult::PermError(format!(
                            "bad CIDR length in {mechanism}"
                        )))
                    }),
                }
            };
            Ok((target, parse(v4, 32, 32)?, parse(v6, 128, 128)?))
        };
        let ip = self.ip;
        let in_prefix = |address: IpAddr, v4: u8, v6: u8| -> bool {
            let len = if address.is_ipv4() { v4 } else { v6 };
            format!("{address}/{len}")
                .parse::<Network>()
                .is_ok_and(|network| network.contains(ip))
        };
        let temp = |error: crate::dns::DnsError| {
            SpfOutcome::error(SpfResult::TempError(error.to_string()))
        };
        match name {
            "all" => Ok(Some(None)),
            "ip4" | "ip6" => {
                let network = argument.and_then(|a| a.strip_prefix(':')).unwrap_or("");
                let network = if network.contains('/') {
                    network.to_string()
                } else {
                    format!("{network}/{}", if name == "ip4" { 32 } else { 128 })
                };
                let parsed: Network = network.parse().map_err(|_| {
                    SpfOutcome::error(SpfResult::PermError(format!("bad address in {mechanism}")))
                })?;
                Ok(parsed.contains(ip).then_some(None))
            }
            "include" => {
                self.count_lookup()?;
                let target = argument.and_then(|a| a.strip_prefix(':')).unwrap_or("");
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
                let (target, v4, v6) = target_and_cidr(argument)?;
                let addresses = self.resolver.addresses(&target).map_err(temp)?;
                Ok(addresses
                    .into_iter()
                    .any(|a| in_prefix(a, v4, v6))
                    .then_some(None))
            }
            "mx" => {
                self.count_lookup()?;
                let (target, v4, v6) = target_and_cidr(argument)?;
                for exchange in self.resolver.mx(&target).map_err(temp)?.iter().take(10) {
                    let addresses = self.resolver.addresses(exchange).map_err(temp)?;
                    if addresses.into_iter().any(|a| in_prefix(a, v4, v6)) {
                        return Ok(Some(None));
                    }
                }
                Ok(None)
            }
            "exists" => {
                self.count_lookup()?;
                let target = argument.and_then(|a| a.strip_prefix(':')).unwrap_or("");
                let addresses = self.resolver.addresses(target).map_err(temp)?;
                Ok(addresses.iter().any(IpAddr::is_ipv4).then_some(None))
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
}
