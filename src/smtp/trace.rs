//! The `Received:` trace header (RFC 5321 4.4) we prepend to every message.
//!
//! Pure: the caller passes the time, so the header is testable byte for byte.

use std::net::IpAddr;

/// What the trace header records about one accepted message.
pub struct TraceInfo<'a> {
    /// The name the client gave in EHLO/HELO.
    pub helo: &'a str,
    pub client_ip: IpAddr,
    /// Our host name.
    pub hostname: &'a str,
    /// `ESMTP`, `SMTP` or `UTF8SMTP` (RFC 3848 / 6531).
    pub protocol: &'a str,
    pub queue_id: &'a str,
    /// Named in the header only for single-recipient mail, as Postfix does,
    /// so a multi-recipient message does not disclose its other recipients.
    pub single_recipient: Option<&'a str>,
    pub unix_seconds: u64,
}

/// The header, folded onto continuation lines, ending in CRLF.
pub fn received_header(info: &TraceInfo<'_>) -> String {
    let helo: String = info
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '(' && *c != ')')
        .collect();
    let mut header = format!(
        "Received: from {helo} ([{}])\r\n\tby {} (smtp-shaper) with {} id {}",
        info.client_ip, info.hostname, info.protocol, info.queue_id
    );
    if let Some(recipient) = info.single_recipient {
        header.push_str(&format!("\r\n\tfor <{recipient}>"));
    }
    header.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(info.unix_seconds)));
    header
}

/// Most `Received:` headers a message may carry before it is taken for a mail
/// loop (Postfix's `hopcount_limit`).
pub const MAX_HOPS: usize = 50;

/// Counts the `Received:` headers in a message's header section, so a loop
/// (a gateway that routes mail back to us) is stopped instead of spinning.
pub fn received_count(message: &[u8]) -> usize {
    message
        .split(|&b| b == b'\n')
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// `Thu, 26 Nov 2026 19:40:59 +0000`.
pub fn rfc5322_date(unix_seconds: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_seconds / 86_400;
    let seconds = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31); Howard Hinnant's
/// algorithm, exact for the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_722_059),
            "Thu, 26 Nov 2026 19:40:59 +0000"
        );
    }

    #[test]
    fn counts_received_headers_in_the_header_section_only() {
        let message =
            b"Received: a\r\n\tcontinued\r\nRECEIVED: b\r\nSubject: x\r\n\r\nReceived: in body\r\n";
        assert_eq!(received_count(message), 2);
        assert_eq!(received_count(b""), 0);
        assert_eq!(received_count(b"\r\nReceived: x\r\n"), 0);
    }

    #[test]
    fn builds_the_header() {
        let header = received_header(&TraceInfo {
            helo: "app(1).test",
            client_ip: "127.0.0.1".parse().unwrap(),
            hostname: "relay.test",
            protocol: "ESMTP",
            queue_id: "ABC",
            single_recipient: Some("a@b.test"),
            unix_seconds: 0,
        });
        assert_eq!(
            header,
            "Received: from app1.test ([127.0.0.1])\r\n\tby relay.test (smtp-shaper) with ESMTP id ABC\r\n\tfor <a@b.test>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
