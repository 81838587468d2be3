//! Relay rule 4: the sender domain's SPF, DMARC and DKIM should name exactly
//! the machines allowed to send. `check-dns` explains a domain's set-up for
//! a gateway's sending IP; the service runs the same check at start for the
//! sender domains routed to a gateway whose `sending_ip` is configured.
//! Pure over a [`Resolver`]; the report is plain text for operators.

pub mod spf;

use std::net::IpAddr;

use crate::dns::{Answer, Resolver};
use spf::{SpfOutcome, SpfResult};

/// An IP from the documentation ranges (RFC 5737 / 3849): what the domain's
/// SPF says about "anyone else".
fn stranger(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([203, 0, 113, 77]),
        IpAddr::V6(_) => "2001:db8::77".parse().expect("valid"),
    }
}

/// One finding, good or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub text: String,
}

/// Everything found about one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainReport {
    pub domain: String,
    pub findings: Vec<Finding>,
}

impl DomainReport {
    /// True when every finding is fine.
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|finding| finding.ok)
    }

    /// The report as lines of text.
    pub fn to_text(&self) -> String {
        let mut out = format!("{}:\n", self.domain);
        for finding in &self.findings {
            let mark = if finding.ok {
                "  ok       "
            } else {
                "  PROBLEM  "
            };
            out.push_str(mark);
            out.push_str(&finding.text);
            out.push('\n');
        }
        out
    }
}

fn describe(outcome: &SpfOutcome) -> String {
    let result = match &outcome.result {
        SpfResult::Pass => "pass".to_string(),
        SpfResult::Fail => "fail".to_string(),
        SpfResult::SoftFail => "softfail".to_string(),
        SpfResult::Neutral => "neutral".to_string(),
        SpfResult::None => "none".to_string(),
        SpfResult::PermError(why) => format!("permerror ({why})"),
        SpfResult::TempError(why) => format!("temperror ({why})"),
    };
    match &outcome.mechanism {
        Some(mechanism) => format!("{result} by {mechanism}"),
        None => result,
    }
}

/// The value of the first `key=value` tag of a DMARC or DKIM record whose
/// key `is_wanted` (keys and values trimmed).
pub(crate) fn tag(record: &str, is_wanted: impl Fn(&str) -> bool) -> Option<&str> {
    record
        .split(';')
        .filter_map(|tag| tag.trim().split_once('='))
        .find(|(key, _)| is_wanted(key.trim()))
        .map(|(_, value)| value.trim())
}

/// Checks `domain` for a gateway sending from `gateway_ip`, and the DKIM
/// keys of `selectors`.
pub fn check_domain(
    resolver: &dyn Resolver,
    domain: &str,
    gateway_ip: IpAddr,
    selectors: &[String],
) -> DomainReport {
    let mut findings = Vec::new();
    let mut say = |ok: bool, text: String| findings.push(Finding { ok, text });
    // A domain that does not exist is not one without SPF: what to fix is
    // the domain. Nothing exists below it either (RFC 8020), so its DMARC
    // and DKIM names are not asked. A failed lookup is left to the SPF
    // check, which explains it.
    if resolver.txt_answer(domain) == Ok(Answer::NoSuchName) {
        say(
            false,
            format!(
                "{domain} does not exist in DNS (NXDOMAIN): it has no SPF, DMARC or DKIM \
                 record, and receivers refuse mail from a domain that does not exist; check \
                 the spelling, or create the domain and publish them"
            ),
        );
    } else {
        check_spf(resolver, domain, gateway_ip, &mut say);
        check_dmarc(resolver, domain, &mut say);
        check_dkim(resolver, domain, selectors, &mut say);
    }
    DomainReport {
        domain: domain.to_string(),
        findings,
    }
}

/// What one check found: says it through `say(ok, text)`.
type Say<'a> = dyn FnMut(bool, String) + 'a;

/// The SPF record: the gateway passes, anyone else hard-fails, and what was
/// not evaluated.
fn check_spf(resolver: &dyn Resolver, domain: &str, gateway_ip: IpAddr, say: &mut Say) {
    match spf::record(resolver, domain) {
        Ok(Some(record)) => {
            say(true, format!("SPF record: {record:?}"));
            let gateway = spf::check_host(resolver, gateway_ip, domain);
            say(
                gateway.result == SpfResult::Pass,
                format!("SPF for the gateway {gateway_ip}: {}", describe(&gateway)),
            );
            let others = spf::check_host(resolver, stranger(gateway_ip), domain);
            let text = format!(
                "SPF for anyone else (tested with {}): {}",
                stranger(gateway_ip),
                describe(&others)
            );
            match others.result {
                SpfResult::Fail => say(true, text + ": hard-fails other senders"),
                _ => say(
                    false,
                    text + ": other senders are not hard-failed (use -all)",
                ),
            }
            let mut unevaluated = gateway.unevaluated;
            for term in others.unevaluated {
                if !unevaluated.contains(&term) {
                    unevaluated.push(term);
                }
            }
            if !unevaluated.is_empty() {
                say(
                    false,
                    format!(
                        "SPF uses the ptr mechanism ({}): deprecated (RFC 7208 5.5), slow, and \
                         ignored by some receivers, so not evaluated here; the results above \
                         treat it as no match. Name the gateway with ip4:, ip6: or a: instead",
                        unevaluated.join(", ")
                    ),
                );
            }
        }
        Ok(None) => say(
            false,
            format!("no SPF record (TXT \"v=spf1 ...\") at {domain}"),
        ),
        Err(result) => say(
            false,
            describe(&SpfOutcome {
                result,
                mechanism: None,
                unevaluated: Vec::new(),
            }),
        ),
    }
}

/// One DMARC record with a policy that acts on forgeries.
fn check_dmarc(resolver: &dyn Resolver, domain: &str, say: &mut Say) {
    let dmarc_name = format!("_dmarc.{domain}");
    match resolver.txt(&dmarc_name) {
        Ok(records) => {
            let dmarc: Vec<&String> = records
                .iter()
                .filter(|text| text.to_ascii_lowercase().starts_with("v=dmarc1"))
                .collect();
            match dmarc.as_slice() {
                [] => say(false, format!("no DMARC record at {dmarc_name}")),
                [record] => {
                    let policy = tag(record, |key| key.eq_ignore_ascii_case("p"))
                        .map(str::to_ascii_lowercase);
                    match policy.as_deref() {
                        Some("reject" | "quarantine") => say(
                            true,
                            format!("DMARC {record:?}: policy {}", policy.unwrap_or_default()),
                        ),
                        Some("none") => say(
                            false,
                            format!(
                                "DMARC {record:?}: policy none only monitors; forgeries are delivered"
                            ),
                        ),
                        _ => say(false, format!("DMARC {record:?}: no valid p= policy")),
                    }
                }
                _ => say(false, format!("more than one DMARC record at {dmarc_name}")),
            }
        }
        Err(error) => say(false, format!("DMARC lookup: {error}")),
    }
}

/// A published, unrevoked key per DKIM selector.
fn check_dkim(resolver: &dyn Resolver, domain: &str, selectors: &[String], say: &mut Say) {
    for selector in selectors {
        let name = format!("{selector}._domainkey.{domain}");
        match resolver.txt(&name) {
            Ok(records) => {
                let key = records
                    .iter()
                    .find_map(|text| tag(text, |key| key == "p"))
                    .map(str::to_string);
                match key {
                    Some(key) if !key.is_empty() => say(
                        true,
                        format!("DKIM selector {selector}: key published at {name}"),
                    ),
                    Some(_) => say(
                        false,
                        format!(
                            "DKIM selector {selector}: the key at {name} is revoked (empty p=)"
                        ),
                    ),
                    None => say(false, format!("DKIM selector {selector}: no key at {name}")),
                }
            }
            Err(error) => say(false, format!("DKIM lookup: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::SeededResolver;

    fn zone() -> SeededResolver {
        SeededResolver::parse(
            r#"
            # a well set-up domain, with the gateway in an include
            example.com TXT "v=spf1 include:_spf.example.net -all"
            _spf.example.net TXT "v=spf1 ip4:192.0.2.0/24 a:relay.example.net ~all"
            relay.example.net A 198.51.100.25
            _dmarc.example.com TXT "v=DMARC1; p=reject; rua=mailto:d@example.com"
            s1._domainkey.example.com TXT "v=DKIM1; k=rsa; p=MIIBIjANBg"
            # a lax one
            lax.example TXT "v=spf1 mx ~all"
            lax.example MX mail.lax.example
            mail.lax.example A 192.0.2.99
            _dmarc.lax.example TXT "v=DMARC1; p=none"
            old._domainkey.lax.example TXT "v=DKIM1; p="
            two.example TXT "v=spf1 -all"
            two.example TXT "v=spf1 +all"
            loop.example TXT "v=spf1 include:loop.example -all"
            macro.example TXT "v=spf1 exists:%{i}.bl.example -all"
            redir.example TXT "v=spf1 redirect=example.com"
            ptr.example TXT "v=spf1 ptr -all"
            _dmarc.ptr.example TXT "v=DMARC1; p=reject"
            deep.example TXT "v=spf1 include:_spf.deep.example ip4:192.0.2.10 -all"
            _spf.deep.example TXT "v=spf1 ?ptr:deep.example ~all"
            "#,
        )
        .unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn spf_says_which_mechanism_decided() {
        let zone = zone();
        let pass = spf::check_host(&zone, ip("192.0.2.10"), "example.com");
        assert_eq!(pass.result, SpfResult::Pass);
        assert_eq!(
            pass.mechanism.as_deref(),
            Some("ip4:192.0.2.0/24 (in include:_spf.example.net)")
        );
        let by_a = spf::check_host(&zone, ip("198.51.100.25"), "example.com");
        assert_eq!(
            by_a.mechanism.as_deref(),
            Some("a:relay.example.net (in include:_spf.example.net)")
        );
        let other = spf::check_host(&zone, ip("203.0.113.1"), "example.com");
        assert_eq!(
            (other.result, other.mechanism.as_deref()),
            (SpfResult::Fail, Some("-all"))
        );
        let by_mx = spf::check_host(&zone, ip("192.0.2.99"), "lax.example");
        assert_eq!(
            (by_mx.result, by_mx.mechanism.as_deref()),
            (SpfResult::Pass, Some("mx"))
        );
        assert_eq!(
            spf::check_host(&zone, ip("192.0.2.1"), "lax.example").result,
            SpfResult::SoftFail
        );
        let redirected = spf::check_host(&zone, ip("192.0.2.10"), "redir.example");
        assert_eq!(redirected.result, SpfResult::Pass);
        assert!(
            redirected
                .mechanism
                .unwrap()
                .ends_with("(in redirect=example.com)")
        );
        assert_eq!(
            spf::check_host(&zone, ip("192.0.2.1"), "nothing.example").result,
            SpfResult::None
        );
        for (domain, why) in [
            ("two.example", "more than one SPF record"),
            ("loop.example", "10"),
            ("macro.example", "macros"),
        ] {
            let outcome = spf::check_host(&zone, ip("192.0.2.1"), domain);
            assert!(
                matches!(&outcome.result, SpfResult::PermError(text) if text.contains(why)),
                "{domain}: {outcome:?}"
            );
        }
    }

    /// The reason of a PermError, or a panic naming what came instead.
    fn permerror(outcome: SpfOutcome) -> String {
        match outcome.result {
            SpfResult::PermError(why) => why,
            other => panic!("expected a permerror, got {other:?}"),
        }
    }

    #[test]
    fn the_third_void_lookup_is_a_permerror() {
        let mut zone = SeededResolver::parse(
            r#"
            two.example TXT "v=spf1 a:gone1.two.example mx:gone2.two.example ip4:192.0.2.10 -all"
            three.example TXT "v=spf1 a:gone1.three.example mx:gone2.three.example exists:gone3.three.example ip4:192.0.2.10 -all"
            v6only.example AAAA 2001:db8::25
            family.example TXT "v=spf1 a:v6only.example a:v6only.example a:v6only.example ip4:192.0.2.10 ip6:2001:db8::/32 -all"
            spread.example TXT "v=spf1 include:_a.spread.example include:_b.spread.example ip4:192.0.2.10 -all"
            _a.spread.example TXT "v=spf1 a:gone1.spread.example a:gone2.spread.example -all"
            _b.spread.example TXT "v=spf1 exists:gone3.spread.example -all"
            exchanges.example TXT "v=spf1 mx ip4:192.0.2.10 -all"
            exchanges.example MX gone1.exchanges.example
            exchanges.example MX gone2.exchanges.example
            exchanges.example MX gone3.exchanges.example
            "#,
        )
        .unwrap();
        // Two are allowed: the evaluation goes on to the ip4 that passes.
        let two = spf::check_host(&zone, ip("192.0.2.10"), "two.example");
        assert_eq!(two.result, SpfResult::Pass, "{two:?}");
        let why = permerror(spf::check_host(&zone, ip("192.0.2.10"), "three.example"));
        assert_eq!(
            why,
            "more than 2 void lookups (RFC 7208 4.6.4): gone1.three.example (A), \
             gone2.three.example (MX), gone3.three.example (A)"
        );
        // A host with only an IPv6 address has no A record for an IPv4 sender.
        let why = permerror(spf::check_host(&zone, ip("192.0.2.10"), "family.example"));
        assert!(why.contains("v6only.example (A)"), "{why}");
        assert_eq!(
            spf::check_host(&zone, ip("2001:db8::1"), "family.example").result,
            SpfResult::Pass
        );
        // Counted over the whole evaluation, includes too, and per exchange.
        permerror(spf::check_host(&zone, ip("192.0.2.10"), "spread.example"));
        permerror(spf::check_host(
            &zone,
            ip("192.0.2.10"),
            "exchanges.example",
        ));

        // In the report, the gateway's line says why.
        zone.add("_dmarc.three.example", "TXT", "v=DMARC1; p=reject");
        let text = check_domain(&zone, "three.example", ip("192.0.2.10"), &[]).to_text();
        assert!(
            text.contains(
                "PROBLEM  SPF for the gateway 192.0.2.10: permerror (more than 2 void lookups"
            ),
            "{text}"
        );
    }

    #[test]
    fn more_than_ten_mx_records_is_a_permerror() {
        let mut zone = SeededResolver::default();
        for (domain, count) in [("ten.example", 10), ("eleven.example", 11)] {
            zone.add(domain, "TXT", "v=spf1 mx -all");
            for n in 1..=count {
                let exchange = format!("mx{n}.{domain}");
                zone.add(domain, "MX", &exchange);
                zone.add(&exchange, "A", &format!("192.0.2.{n}"));
            }
        }
        // The tenth exchange is still looked at.
        let ten = spf::check_host(&zone, ip("192.0.2.10"), "ten.example");
        assert_eq!(
            (ten.result, ten.mechanism.as_deref()),
            (SpfResult::Pass, Some("mx"))
        );
        // The eleventh is not silently dropped: the record is broken, even
        // for a sender the first ten would have matched.
        let why = permerror(spf::check_host(&zone, ip("192.0.2.1"), "eleven.example"));
        assert_eq!(
            why,
            "mx: eleven.example has 11 MX records, more than 10 (RFC 7208 4.6.4)"
        );
    }

    #[test]
    fn ip4_and_ip6_take_only_their_own_family() {
        let zone = SeededResolver::parse(
            r#"
            v6in4.example TXT "v=spf1 ip4:2001:db8::/32 -all"
            v4in6.example TXT "v=spf1 ip6:192.0.2.0/24 -all"
            badlen.example TXT "v=spf1 ip4:192.0.2.0/33 -all"
            good.example TXT "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ip4:0.0.0.0/0 -all"
            mapped.example TXT "v=spf1 ip6:::ffff:192.0.2.0/120 -all"
            "#,
        )
        .unwrap();
        for (domain, sender, why) in [
            (
                "v6in4.example",
                "2001:db8::1",
                "ip4:2001:db8::/32: not an IPv4 address",
            ),
            (
                "v6in4.example",
                "192.0.2.1",
                "ip4:2001:db8::/32: not an IPv4 address",
            ),
            (
                "v4in6.example",
                "192.0.2.1",
                "ip6:192.0.2.0/24: not an IPv6 address",
            ),
            (
                "badlen.example",
                "192.0.2.1",
                "ip4:192.0.2.0/33: bad CIDR length",
            ),
        ] {
            assert_eq!(
                permerror(spf::check_host(&zone, ip(sender), domain)),
                why,
                "{domain} for {sender}"
            );
        }
        for (sender, mechanism) in [
            ("192.0.2.200", "ip4:192.0.2.0/24"),
            ("2001:db8:ffff::1", "ip6:2001:db8::/32"),
            ("198.51.100.1", "ip4:0.0.0.0/0"),
        ] {
            let outcome = spf::check_host(&zone, ip(sender), "good.example");
            assert_eq!(outcome.mechanism.as_deref(), Some(mechanism), "{sender}");
        }
        assert_eq!(
            spf::check_host(&zone, ip("2001:db9::1"), "good.example").result,
            SpfResult::Fail
        );
        // An IPv4-mapped ip6 network is IPv6: an IPv4 sender is not in it.
        assert_eq!(
            spf::check_host(&zone, ip("192.0.2.1"), "mapped.example").result,
            SpfResult::Fail
        );
    }

    #[test]
    fn a_good_domain_passes_every_check() {
        let report = check_domain(&zone(), "example.com", ip("192.0.2.10"), &["s1".into()]);
        assert!(report.ok(), "{}", report.to_text());
        let text = report.to_text();
        assert!(
            text.contains("SPF for the gateway 192.0.2.10: pass by ip4:192.0.2.0/24"),
            "{text}"
        );
        assert!(text.contains("hard-fails other senders"), "{text}");
        assert!(text.contains("policy reject"), "{text}");
        assert!(text.contains("DKIM selector s1: key published"), "{text}");
    }

    #[test]
    fn a_domain_that_does_not_exist_is_not_one_without_spf() {
        let mut zone = zone();
        let report = check_domain(&zone, "exmaple.com", ip("192.0.2.10"), &["s1".into()]);
        assert!(!report.ok());
        assert_eq!(report.findings.len(), 1, "{}", report.to_text());
        assert!(
            report.findings[0]
                .text
                .starts_with("exmaple.com does not exist in DNS (NXDOMAIN)"),
            "{}",
            report.to_text()
        );
        // A name with a record below it exists (an empty non-terminal).
        zone.add("_dmarc.bare.example", "TXT", "v=DMARC1; p=reject");
        let text = check_domain(&zone, "bare.example", ip("192.0.2.10"), &[]).to_text();
        assert!(
            text.contains("no SPF record (TXT \"v=spf1 ...\") at bare.example"),
            "{text}"
        );
        assert!(!text.contains("NXDOMAIN"), "{text}");
    }

    #[test]
    fn a_lax_domain_is_explained() {
        let report = check_domain(
            &zone(),
            "lax.example",
            ip("198.51.100.7"),
            &["old".into(), "new".into()],
        );
        assert!(!report.ok());
        let problems: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| !f.ok)
            .map(|f| f.text.as_str())
            .collect();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].starts_with("SPF for the gateway 198.51.100.7: softfail by ~all"));
        assert!(problems[1].contains("not hard-failed"));
        assert!(problems[2].contains("policy none only monitors"));
        assert!(problems[3].contains("revoked"));
        assert!(problems[4].contains("DKIM selector new: no key"));
    }

    #[test]
    fn the_ptr_mechanism_is_reported_not_passed_over_silently() {
        let zone = zone();
        let report = check_domain(&zone, "ptr.example", ip("192.0.2.10"), &[]);
        let problems: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| !f.ok)
            .map(|f| f.text.as_str())
            .collect();
        assert_eq!(problems.len(), 2, "{}", report.to_text());
        assert!(
            problems[0].starts_with("SPF for the gateway 192.0.2.10: fail by -all"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("SPF uses the ptr mechanism (ptr at ptr.example): deprecated"),
            "{problems:?}"
        );

        // Inside an include: named with the record it is in, once.
        let outcome = spf::check_host(&zone, ip("192.0.2.10"), "deep.example");
        assert_eq!(outcome.result, SpfResult::Pass);
        assert_eq!(
            outcome.unevaluated,
            ["ptr:deep.example at _spf.deep.example"]
        );
        let text = check_domain(&zone, "deep.example", ip("192.0.2.10"), &[]).to_text();
        assert_eq!(
            text.matches("ptr:deep.example at _spf.deep.example")
                .count(),
            1,
            "{text}"
        );

        // A record without ptr says nothing about it.
        let text = check_domain(&zone, "example.com", ip("192.0.2.10"), &[]).to_text();
        assert!(!text.contains("ptr"), "{text}");
    }
}
