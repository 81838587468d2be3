//! DMARC alignment (RFC 7489 3.1): does a message's From: domain match a
//! domain that authenticates it, the envelope sender's (what SPF checks)
//! or the one smtp-shaper signs it with (DKIM)? A receiver that finds
//! neither fails DMARC, whatever SPF and DKIM say on their own.
//!
//! Relaxed alignment asks for the same organisational domain, from the
//! Public Suffix List (the `psl` crate, compiled in: no list file to ship
//! or fetch); strict asks for the same domain. The From: domain's DMARC
//! record picks the mode per side (`aspf`, `adkim`; relaxed when absent).
//! Pure: the record is looked up by [`super::dmarc`], and only when it can
//! change the answer ([`Identifiers::needs_record`]), so most messages are
//! judged without DNS. The DKIM side is the domain the delivery will sign
//! as ([`signing_domain`]), chosen here for both.

use crate::smtp::header;

/// How closely two domains must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The same organisational domain (`r`, DMARC's default).
    #[default]
    Relaxed,
    /// The same domain (`s`).
    Strict,
}

/// The alignment modes of a DMARC record: `aspf` and `adkim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modes {
    pub spf: Mode,
    pub dkim: Mode,
}

impl Modes {
    /// The modes of the DMARC record among `records` (the TXT strings at
    /// `_dmarc.<domain>`), or `None` when there is none. Several records
    /// count as none (RFC 7489 6.6.3), and so does one whose first tag is
    /// not `v=DMARC1`; an unknown `aspf`/`adkim` value means relaxed.
    pub fn from_records(records: &[String]) -> Option<Modes> {
        let mut dmarc = records.iter().filter(|record| {
            record
                .split(';')
                .next()
                .and_then(|tag| tag.split_once('='))
                .is_some_and(|(key, value)| key.trim() == "v" && value.trim() == "DMARC1")
        });
        let record = dmarc.next()?;
        if dmarc.next().is_some() {
            return None;
        }
        let mode = |key: &str| match crate::preflight::tag(record, |k| k == key) {
            Some("s") => Mode::Strict,
            _ => Mode::Relaxed,
        };
        Some(Modes {
            spf: mode("aspf"),
            dkim: mode("adkim"),
        })
    }
}

/// The organisational domain of `domain` (RFC 7489 3.2): its public suffix
/// and one label more, in lower case. A public suffix itself, a domain
/// literal or a name the list cannot read is its own.
pub fn organizational_domain(domain: &str) -> String {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.starts_with('[') {
        return domain;
    }
    psl::domain_str(&domain).map_or_else(|| domain.clone(), str::to_string)
}

fn aligned(from: &str, other: &str, mode: Mode) -> bool {
    let (from, other) = (from.trim_end_matches('.'), other.trim_end_matches('.'));
    from.eq_ignore_ascii_case(other)
        || (mode == Mode::Relaxed && organizational_domain(from) == organizational_domain(other))
}

/// The domains DMARC compares for one From: domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identifiers<'a> {
    /// The From: header's domain.
    pub from: &'a str,
    /// The envelope sender's domain; `None` for the null sender `<>`.
    pub spf: Option<&'a str>,
    /// The domain of the signature smtp-shaper adds; `None` when it signs
    /// nothing for this message.
    pub dkim: Option<&'a str>,
}

/// The outcome of [`Identifiers::judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Aligned,
    /// Why not, for the reply and the log: what each side lacks.
    Misaligned(String),
}

impl Identifiers<'_> {
    /// True when the DMARC record's modes can change the verdict: no side
    /// aligns exactly, and some side aligns relaxed.
    pub fn needs_record(&self) -> bool {
        let sides = [self.spf, self.dkim];
        let exact = sides
            .iter()
            .flatten()
            .any(|domain| aligned(self.from, domain, Mode::Strict));
        let relaxed = sides
            .iter()
            .flatten()
            .any(|domain| aligned(self.from, domain, Mode::Relaxed));
        !exact && relaxed
    }

    /// Aligned when either side aligns under its mode of `modes`.
    pub fn judge(&self, modes: Modes) -> Verdict {
        let spf = self.spf.is_some_and(|d| aligned(self.from, d, modes.spf));
        let dkim = self.dkim.is_some_and(|d| aligned(self.from, d, modes.dkim));
        if spf || dkim {
            return Verdict::Aligned;
        }
        let side = |domain: Option<&str>, mode: Mode, tag: &str, none: &str| match domain {
            None => none.to_string(),
            Some(domain) if mode == Mode::Strict && aligned(self.from, domain, Mode::Relaxed) => {
                format!(
                    "{domain} is not exactly it, and its DMARC record asks for strict alignment ({tag}=s)"
                )
            }
            Some(domain) => format!(
                "{domain} is in another organisational domain ({} is not {})",
                organizational_domain(domain),
                organizational_domain(self.from)
            ),
        };
        Verdict::Misaligned(format!(
            "envelope sender domain (SPF): {}; DKIM signature: {}",
            side(
                self.spf,
                modes.spf,
                "aspf",
                "none, the envelope sender is <>"
            ),
            side(
                self.dkim,
                modes.dkim,
                "adkim",
                "none, no [[dkim]] key for this From: domain"
            ),
        ))
    }
}

/// The domain the delivery signs a message as (the `[[dkim]]` key it
/// looks for): the From: header's address, else `sender`'s. It lives with
/// alignment because the check after DATA must predict the signature the
/// delivery adds later, and both must choose alike.
pub fn signing_domain(message: &[u8], sender: &str) -> Option<String> {
    let (headers, _) = header::split(message);
    let from = header::fields(headers)
        .into_iter()
        .rev()
        .find(|field| header::field_name(field).eq_ignore_ascii_case("from"))
        .and_then(|field| {
            let value = String::from_utf8_lossy(&field[header::field_name(&field).len() + 1..])
                .into_owned();
            let address = match (value.rfind('<'), value.rfind('>')) {
                (Some(open), Some(close)) if open < close => value[open + 1..close].to_string(),
                _ => value.trim().to_string(),
            };
            address
                .rsplit_once('@')
                .map(|(_, domain)| domain.trim().to_ascii_lowercase())
        });
    from.or_else(|| {
        sender
            .rsplit_once('@')
            .map(|(_, domain)| domain.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_organisational_domain_comes_from_the_public_suffix_list() {
        for (domain, organisational) in [
            ("example.com", "example.com"),
            ("News.Mail.Example.COM", "example.com"),
            ("billing.example.co.uk", "example.co.uk"),
            ("example.co.uk", "example.co.uk"),
            ("co.uk", "co.uk"),
            ("a.b.example.com.au", "example.com.au"),
            // A private-section suffix: each project is its own domain.
            ("project.github.io", "project.github.io"),
            ("deep.project.github.io", "project.github.io"),
            // Not on the list: the default rule, one label is the suffix.
            ("app.corp.test", "corp.test"),
            ("example.com.", "example.com"),
            ("[192.0.2.1]", "[192.0.2.1]"),
        ] {
            assert_eq!(organizational_domain(domain), organisational, "{domain}");
        }
    }

    #[test]
    fn reads_the_modes_of_a_dmarc_record() {
        let records = |list: &[&str]| list.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Modes::from_records(&records(&["v=DMARC1; p=reject"])),
            Some(Modes::default())
        );
        assert_eq!(
            Modes::from_records(&records(&[
                "v=spf1 -all",
                "v=DMARC1;p=none; aspf=s ;adkim = r"
            ])),
            Some(Modes {
                spf: Mode::Strict,
                dkim: Mode::Relaxed
            })
        );
        assert_eq!(
            Modes::from_records(&records(&["v=DMARC1; adkim=s; aspf=x"])),
            Some(Modes {
                spf: Mode::Relaxed,
                dkim: Mode::Strict
            })
        );
        assert_eq!(Modes::from_records(&[]), None);
        assert_eq!(
            Modes::from_records(&records(&["p=reject; v=DMARC1"])),
            None,
            "v= must come first"
        );
        assert_eq!(
            Modes::from_records(&records(&["v=DMARC1; p=none", "v=DMARC1; aspf=s"])),
            None,
            "two records are none"
        );
    }

    fn ids<'a>(from: &'a str, spf: Option<&'a str>, dkim: Option<&'a str>) -> Identifiers<'a> {
        Identifiers { from, spf, dkim }
    }

    const STRICT: Modes = Modes {
        spf: Mode::Strict,
        dkim: Mode::Strict,
    };

    #[test]
    fn either_side_aligns_under_its_mode() {
        let relaxed = Modes::default();
        // Exact: aligned whatever the record says, and no record needed.
        let exact = ids("example.com", Some("EXAMPLE.com"), None);
        assert!(!exact.needs_record());
        assert_eq!(exact.judge(STRICT), Verdict::Aligned);
        // Same organisational domain: the record decides.
        let sub = ids("example.com", Some("bounces.example.com"), None);
        assert!(sub.needs_record());
        assert_eq!(sub.judge(relaxed), Verdict::Aligned);
        let Verdict::Misaligned(why) = sub.judge(STRICT) else {
            panic!("strict SPF alignment needs the same domain");
        };
        assert!(
            why.contains("bounces.example.com is not exactly it") && why.contains("aspf=s"),
            "{why}"
        );
        // DKIM aligns when SPF does not.
        let signed = ids(
            "news.example.com",
            Some("bounce.esp.test"),
            Some("news.example.com"),
        );
        assert!(!signed.needs_record());
        assert_eq!(signed.judge(STRICT), Verdict::Aligned);
        let parent = ids("news.example.com", None, Some("example.com"));
        assert_eq!(parent.judge(relaxed), Verdict::Aligned);
        assert!(
            matches!(parent.judge(STRICT), Verdict::Misaligned(why) if why.contains("adkim=s"))
        );
        // Each side under its own mode.
        let mixed = Modes {
            spf: Mode::Strict,
            dkim: Mode::Relaxed,
        };
        assert_eq!(
            ids("example.com", Some("a.example.com"), Some("b.example.com")).judge(mixed),
            Verdict::Aligned
        );
        // Another organisational domain: no record can help.
        let foreign = ids("corp.example", Some("app.example.net"), None);
        assert!(!foreign.needs_record());
        let Verdict::Misaligned(why) = foreign.judge(relaxed) else {
            panic!("another organisation never aligns");
        };
        assert_eq!(
            why,
            "envelope sender domain (SPF): app.example.net is in another organisational domain (example.net is not corp.example); DKIM signature: none, no [[dkim]] key for this From: domain"
        );
        // A public suffix is not an organisation shared by its customers.
        assert!(matches!(
            ids("a.co.uk", Some("b.co.uk"), None).judge(relaxed),
            Verdict::Misaligned(_)
        ));
        let bounce = ids("example.com", None, None);
        assert!(!bounce.needs_record());
        assert!(
            matches!(bounce.judge(relaxed), Verdict::Misaligned(why) if why.contains("the envelope sender is <>"))
        );
    }

    #[test]
    fn the_signing_domain_is_the_from_headers() {
        let message =
            b"Received: x\r\nFrom: Billing <billing@Example.COM>\r\nTo: a@b\r\n\r\nhi\r\n";
        assert_eq!(
            signing_domain(message, "bounce@other.test").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            signing_domain(b"To: a@b\r\n\r\nhi\r\n", "app@other.test").as_deref(),
            Some("other.test")
        );
    }
}
