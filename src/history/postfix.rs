//! Postfix maillog: what the gateway delivered to receivers.
//!
//! Counted: lines of an SMTP client (`<instance>/smtp` or `<instance>/relay`,
//! any instance name such as `postfix-out`) with `status=sent`, except
//! relays on loopback: a content filter (amavis at `127.0.0.1:10024`) gets
//! a copy that is re-injected and counted when it really leaves. A message
//! is a distinct queue id, counted at its first sent line (a message whose
//! recipients leave over several attempts is one message); recipients are
//! the sent `to=` lines. `lmtp`, `local`, `virtual` and `pipe` deliveries
//! stay inside the organisation and are not counted.
//!
//! Each sent line also counts for its receiver (`policy::receivers`): by
//! the `to=` domain, else by the `relay=` host, which is the receiver's MX
//! when the gateway delivers itself (no DNS needed); a message counts once
//! per receiver.
//!
//! Timestamps in both syslog forms: traditional (`Dec  7 09:00:01`, local
//! time, the year found by [`time::syslog_date`]) and RFC 3339.
//! Pure: lines in, counts out; the clock and zone are the caller's.

use std::collections::HashSet;
use std::net::IpAddr;

use super::Counts;
use super::time::{self, Zone};
use crate::policy::receivers::Receivers;

/// A Postfix log being read, over one file or several (rotated logs: a
/// queue id seen in an older file is the same message).
pub struct Postfix<'z> {
    zone: &'z Zone,
    now: f64,
    messages: HashSet<String>,
    /// (queue id, receiver) pairs counted: a message counts once per
    /// receiver.
    by_receiver: HashSet<(String, String)>,
    receivers: Receivers,
}

/// Why a line was not counted (the report's reasons).
pub const UNREADABLE: &str = "no syslog timestamp";
const OTHER_PROGRAM: &str = "not a postfix smtp client line";
const INTERNAL: &str = "lmtp/local/virtual/pipe delivery";
const NO_STATUS: &str = "smtp line without a delivery status";
const DEFERRED: &str = "not sent: deferred";
const BOUNCED: &str = "not sent: bounced";
const OTHER_STATUS: &str = "not sent: other status";
const LOOPBACK: &str = "relay on loopback (content filter)";

impl<'z> Postfix<'z> {
    /// Dates without a year are placed no later than `now` (Unix seconds).
    pub fn new(zone: &'z Zone, now: f64) -> Postfix<'z> {
        Postfix {
            zone,
            now,
            messages: HashSet::new(),
            by_receiver: HashSet::new(),
            receivers: Receivers::builtin(),
        }
    }

    /// Reads one line into `counts`.
    pub fn feed(&mut self, line: &str, counts: &mut Counts) {
        counts.lines += 1;
        match self.delivery(line) {
            Ok((at, queue_id)) => {
                let first = !self.messages.contains(queue_id);
                if first {
                    self.messages.insert(queue_id.to_string());
                }
                counts.count(at, u64::from(first), 1);
                let domain = field(line, "to=<")
                    .and_then(|to| to.trim_end_matches('>').rsplit_once('@'))
                    .map_or("", |(_, domain)| domain);
                let relay = field(line, "relay=")
                    .map(|relay| relay.split(['[', ':']).next().unwrap_or(relay));
                let receiver = self.receivers.of(domain, relay);
                let first = self
                    .by_receiver
                    .insert((queue_id.to_string(), receiver.to_string()));
                counts.count_for(receiver, at, u64::from(first), 1);
            }
            Err(reason) => counts.skip(reason),
        }
    }

    /// The time and queue id of a sent line, or why it is not one.
    fn delivery<'l>(&self, line: &'l str) -> Result<(f64, &'l str), &'static str> {
        let mut words = line.split_whitespace();
        let first = words.next().ok_or(UNREADABLE)?;
        let at = match time::rfc3339(first, 0) {
            Some(at) => at,
            None => {
                let day = words.next().ok_or(UNREADABLE)?;
                let clock = words.next().ok_or(UNREADABLE)?;
                time::syslog_date(first, day, clock, self.zone, self.now).ok_or(UNREADABLE)?
            }
        };
        let _host = words.next().ok_or(OTHER_PROGRAM)?;
        let program = words
            .next()
            .and_then(|word| word.strip_suffix(':'))
            .ok_or(OTHER_PROGRAM)?;
        let program = program.split_once('[').map_or(program, |(name, _)| name);
        let service = program.rsplit_once('/').map(|(_, service)| service);
        let status = field(line, "status=");
        match service {
            Some("smtp" | "relay") => {}
            Some("lmtp" | "local" | "virtual" | "pipe") if status.is_some() => {
                return Err(INTERNAL);
            }
            _ => return Err(OTHER_PROGRAM),
        }
        let queue_id = words
            .next()
            .and_then(|word| word.strip_suffix(':'))
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or(NO_STATUS)?;
        if field(line, "to=<").is_none() {
            return Err(NO_STATUS);
        }
        match status.ok_or(NO_STATUS)? {
            "sent" => {}
            "deferred" => return Err(DEFERRED),
            "bounced" => return Err(BOUNCED),
            _ => return Err(OTHER_STATUS),
        }
        if field(line, "relay=").is_some_and(on_loopback) {
            return Err(LOOPBACK);
        }
        Ok((at, queue_id))
    }
}

/// The value of `name` (`status=`, `relay=`) among a line's `, `-separated
/// fields: up to the next comma or space.
fn field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let mut from = 0;
    while let Some(found) = line[from..].find(name) {
        let start = from + found;
        let boundary = start == 0 || matches!(line.as_bytes()[start - 1], b' ' | b',');
        if boundary {
            let value = &line[start + name.len()..];
            let end = value.find([',', ' ']).unwrap_or(value.len());
            return Some(&value[..end]);
        }
        from = start + name.len();
    }
    None
}

/// `relay=name[address]:port` on a loopback address (or `localhost`).
fn on_loopback(relay: &str) -> bool {
    let address = relay
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(address, _)| address);
    match address {
        Some(address) => address
            .trim_start_matches("IPv6:")
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => relay.split(':').next() == Some("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str], now: f64) -> Counts {
        let zone = Zone::Fixed(0);
        let mut postfix = Postfix::new(&zone, now);
        let mut counts = Counts::default();
        for line in lines {
            postfix.feed(line, &mut counts);
        }
        counts
    }

    const NOW: f64 = 1_796_640_000.0; // 2026-12-07T10:40:00Z

    #[test]
    fn each_sent_line_counts_for_its_receiver_by_domain_else_by_relay() {
        let counts = read(
            &[
                "Dec  7 09:00:01 mx postfix/smtp[12]: 1A: to=<a@gmail.com>, relay=gmail-smtp-in.l.google.com[192.0.2.1]:25, status=sent (250 ok)",
                "Dec  7 09:00:01 mx postfix/smtp[12]: 1A: to=<b@gmail.com>, relay=gmail-smtp-in.l.google.com[192.0.2.1]:25, status=sent (250 ok)",
                "Dec  7 09:00:02 mx postfix/smtp[13]: 1A: to=<c@example.com>, relay=example-com.mail.protection.outlook.com[192.0.2.2]:25, status=sent (250 ok)",
                "Dec  7 09:00:03 mx postfix/smtp[14]: 2B: to=<d@partner.example>, relay=mx.partner.example[192.0.2.3]:25, status=sent (250 ok)",
                "Dec  7 09:00:04 mx postfix/smtp[14]: 3C: to=<e@Hotmail.CO.UK>, relay=smarthost.example[192.0.2.4]:25, status=sent (250 ok)",
            ],
            NOW,
        );
        let per = |receiver: &str| -> (u64, u64) {
            counts.receivers[receiver]
                .values()
                .fold((0, 0), |(m, r), minute| {
                    (m + minute.messages, r + minute.recipients)
                })
        };
        // One message to two receivers counts once for each.
        assert_eq!(per("google"), (1, 2));
        assert_eq!(
            per("microsoft"),
            (2, 2),
            "by MX, and by name through a smarthost"
        );
        assert_eq!(per("other"), (1, 1));
        assert_eq!(counts.receivers.len(), 3);
        let total: u64 = counts.minutes.values().map(|minute| minute.messages).sum();
        assert_eq!(total, 3, "the gateway's total counts a message once");
    }

    #[test]
    fn counts_sent_lines_by_queue_id_and_recipient() {
        let counts = read(
            &[
                "Dec  7 09:00:01 mx postfix/smtpd[11]: connect from app[10.0.0.5]",
                "Dec  7 09:00:01 mx postfix/smtp[12]: 4ABC1: to=<a@x.com>, relay=mx.x.com[192.0.2.1]:25, delay=1, dsn=2.0.0, status=sent (250 ok)",
                "Dec  7 09:00:01 mx postfix/smtp[12]: 4ABC1: to=<b@x.com>, relay=mx.x.com[192.0.2.1]:25, delay=1, dsn=2.0.0, status=sent (250 ok)",
                "Dec  7 09:00:02 mx postfix/smtp[13]: 4ABC1: to=<c@y.com>, relay=mx.y.com[192.0.2.2]:25, dsn=4.7.0, status=deferred (451 later)",
                "Dec  7 09:01:30 mx postfix-out/smtp[14]: 4ABC1: to=<c@y.com>, relay=mx.y.com[192.0.2.2]:25, dsn=2.0.0, status=sent (250 ok)",
                "Dec  7 09:01:31 mx postfix/smtp[15]: 5DEF2: to=<d@y.com>, relay=127.0.0.1[127.0.0.1]:10024, dsn=2.0.0, status=sent (250 queued as 6AAA3)",
                "Dec  7 09:01:32 mx postfix/smtp[15]: 6AAA3: to=<d@y.com>, relay=mx.y.com[2001:db8::1]:25, dsn=2.0.0, status=sent (250 ok)",
                "Dec  7 09:01:33 mx postfix/lmtp[16]: 7BBB4: to=<e@corp>, relay=dovecot[private/dovecot-lmtp], status=sent (250 ok)",
                "Dec  7 09:01:34 mx postfix/smtp[17]: 8CCC5: to=<f@z.com>, relay=mx.z.com[192.0.2.3]:25, dsn=5.1.1, status=bounced (550 no)",
                "Dec  7 09:01:35 mx postfix/smtp[17]: connect to mx.q.com[192.0.2.9]:25: Connection refused",
                "garbage \u{1} here",
                "",
            ],
            NOW,
        );
        assert_eq!(counts.lines, 12);
        assert_eq!(counts.counted, 4);
        let minute = (1_796_634_000.0 / 60.0) as i64;
        let got: Vec<_> = counts
            .minutes
            .iter()
            .map(|(m, c)| (*m - minute, c.messages, c.recipients))
            .collect();
        assert_eq!(got, vec![(0, 1, 2), (1, 1, 2)]);
        let skipped: Vec<(&str, u64)> = counts.skipped.iter().map(|(k, v)| (*k, *v)).collect();
        let mut expected = vec![
            (BOUNCED, 1),
            (INTERNAL, 1),
            (UNREADABLE, 2),
            (DEFERRED, 1),
            (OTHER_PROGRAM, 1),
            (LOOPBACK, 1),
            (NO_STATUS, 1),
        ];
        expected.sort();
        assert_eq!(skipped, expected);
    }

    #[test]
    fn reads_rfc_3339_lines_and_loopback_forms() {
        let counts = read(
            &[
                "2026-12-07T09:00:01.123456+00:00 mx postfix/smtp[1]: A1: to=<a@x>, relay=x[192.0.2.1]:25, status=sent (ok)",
                "2026-12-07T10:00:01+0100 mx postfix/smtp[1]: A2: to=<a@x>, relay=x[192.0.2.1]:25, status=sent (ok)",
                "2026-12-07T09:00:03Z mx postfix/smtp[1]: A3: to=<a@x>, relay=localhost[::1]:10025, status=sent (ok)",
                "2026-12-07T09:00:03Z mx postfix/relay[1]: A4: to=<a@x>, orig_to=<status=x>, relay=x[192.0.2.1]:25, status=sent (ok)",
            ],
            NOW,
        );
        assert_eq!(counts.counted, 3);
        assert_eq!(counts.skipped.get(LOOPBACK), Some(&1));
        // The second line, at +01:00, is the same second as the first's.
        assert_eq!(counts.first, Some(1_796_634_001.0));
        let minute = counts.minutes[&(1_796_634_001 / 60)];
        assert_eq!((minute.messages, minute.recipients), (3, 3));
        assert_eq!(counts.last, Some(1_796_634_003.0));
    }

    #[test]
    fn a_traditional_log_across_new_year_gets_both_years() {
        // Read on 2027-01-02 12:00 UTC, at +01:00.
        let now = 1_798_891_200.0;
        let zone = Zone::Fixed(3_600);
        let mut postfix = Postfix::new(&zone, now);
        let mut counts = Counts::default();
        for line in [
            "Dec 31 23:59:30 mx postfix/smtp[1]: A1: to=<a@x>, relay=x[192.0.2.1]:25, status=sent (ok)",
            "Jan  1 00:00:10 mx postfix/smtp[1]: A2: to=<a@x>, relay=x[192.0.2.1]:25, status=sent (ok)",
            "Jan  2 13:30:00 mx postfix/smtp[1]: A3: to=<a@x>, relay=x[192.0.2.1]:25, status=sent (ok)",
        ] {
            postfix.feed(line, &mut counts);
        }
        // Local 2026-12-31 23:59:30, 2027-01-01 00:00:10 and 2027-01-02
        // 13:30 (half an hour ahead of now: this year's, not last year's).
        let minutes: Vec<i64> = counts.minutes.keys().copied().collect();
        assert_eq!(
            minutes,
            vec![1_798_757_970 / 60, 1_798_758_010 / 60, 1_798_893_000 / 60,]
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(on_loopback("127.0.0.1[127.0.0.1]:10024"));
        assert!(on_loopback("amavis[127.0.0.2]:10024"));
        assert!(on_loopback("x[IPv6:::1]:25"));
        assert!(on_loopback("localhost:10024"));
        assert!(!on_loopback("mx.example.com[192.0.2.1]:25"));
        assert!(!on_loopback("none"));
        assert_eq!(field("a, status=sent (x)", "status="), Some("sent"));
        assert_eq!(
            field("a, xstatus=bad, status=sent", "status="),
            Some("sent")
        );
        assert_eq!(field("a", "status="), None);
    }
}
