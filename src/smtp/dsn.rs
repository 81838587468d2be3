//! Delivery status notifications (RFC 3464) in a multipart/report (RFC
//! 6522): the message smtp-shaper sends to an envelope sender whose mail it
//! could not deliver to some recipients (the gateway refused them with a 5xx,
//! or kept answering 4xx until `max_age`, or it was held past its app's
//! `expire_after`), or, with `notify_delay`, whose mail is still held
//! (`Action: delayed`, like Postfix's `delay_warning_time`).
//!
//! Pure: the caller passes the times, the ids and the original message, so
//! the report is testable byte for byte. The delivery side decides when one
//! is due (never for the null sender, one per settle of a message) and
//! queues it durably; this module only writes it.
//!
//! What the output always holds:
//! - three parts in this order: a human-readable text/plain part, a
//!   message/delivery-status part (per-message fields, then one block per
//!   recipient: Final-Recipient, Action: failed, Status, Diagnostic-Code,
//!   Last-Attempt-Date; or Action: delayed, Status, Diagnostic-Code,
//!   Will-Retry-Until), and the original header section as
//!   text/rfc822-headers;
//! - a boundary that occurs in none of the parts;
//! - CRLF line endings and no line over 998 octets: the gateway's reply is
//!   made printable ASCII and folded (a run of more than
//!   [`MAX_WORD`] non-blank characters is broken, since a fold may only
//!   stand at white space), and the original headers were held to the same
//!   limit when they came in (`smtp::data`).

use super::Reply;
use super::header;
use super::trace::rfc5322_date;

/// Longest run of non-blank characters a folded line keeps whole; longer
/// runs (a reply text without spaces) are cut so the line limit holds.
pub const MAX_WORD: usize = 900;
/// Where folding aims to break (RFC 5322 2.1.1's "should").
const FOLD_AT: usize = 78;

/// One recipient the report says failed.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub recipient: &'a str,
    /// The gateway's reply; for a recipient that expired, the last one.
    pub reply: &'a Reply,
    /// For a recipient given up on at `max_age`: attempts and seconds.
    pub expired: Option<(u32, u64)>,
}

/// What a report tells the sender about its recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up on (`Action: failed`).
    Failed,
    /// Not delivered yet, still held; given up on at `until` (Unix
    /// seconds) if it cannot leave before (`Action: delayed`).
    Delayed { until: u64 },
}

/// What one report says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub action: Action,
    /// Our host name (`server.hostname`): Reporting-MTA, From: and Message-ID.
    pub hostname: &'a str,
    /// The queue id of the message reported on.
    pub queue_id: &'a str,
    /// The queue id of the report itself (its Message-ID).
    pub report_id: &'a str,
    /// The original envelope sender, who gets the report.
    pub sender: &'a str,
    /// Unix seconds the original was accepted.
    pub arrival: u64,
    /// Unix seconds of the last attempt (now).
    pub now: u64,
    /// The original message as queued (our Received: first); only its
    /// header section is used.
    pub original: &'a [u8],
    pub failures: &'a [Failure<'a>],
}

/// The RFC 3463 status of a reply: its enhanced status when it has one of
/// the reply's class, else `5.0.0` or `4.0.0` from the reply code.
pub fn status(reply: &Reply) -> String {
    let class = (reply.code / 100).to_string();
    match reply.enhanced_status() {
        Some(status) if status.starts_with(class.as_str()) => status.to_string(),
        _ => format!("{class}.0.0"),
    }
}

/// The whole report, ready to be queued as a message (CRLF line endings).
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let (original_headers, _) = header::split(report.original);
    let text = human_text(report);
    let status = delivery_status(report);
    let boundary = boundary(
        report.report_id,
        &[text.as_bytes(), &status, original_headers],
    );
    let eight_bit = |bytes: &[u8]| bytes.iter().any(|b| *b >= 0x80);

    let mut out = Vec::with_capacity(2048 + original_headers.len());
    let mut put = |line: &str| {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    put(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>",
        report.hostname
    ));
    put(&format!("To: <{}>", report.sender));
    put(match report.action {
        Action::Failed => "Subject: Undelivered Mail Returned to Sender",
        Action::Delayed { .. } => "Subject: Delayed Mail (still being retried)",
    });
    put(&format!("Date: {}", rfc5322_date(report.now)));
    put(&format!(
        "Message-ID: <{}.dsn@{}>",
        report.report_id, report.hostname
    ));
    // RFC 3834: marks the report as automatic, so no one auto-replies to it.
    put("Auto-Submitted: auto-replied");
    put("MIME-Version: 1.0");
    if eight_bit(original_headers) {
        // A multipart's encoding must cover its parts' (RFC 2045 6.4).
        put("Content-Transfer-Encoding: 8bit");
    }
    put(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
    ));
    put("");
    put("This is a MIME-encapsulated message.");
    put("");
    put(&format!("--{boundary}"));
    put("Content-Type: text/plain; charset=us-ascii");
    put("Content-Description: Notification");
    put("");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Type: message/delivery-status\r\n");
    out.extend_from_slice(b"Content-Description: Delivery report\r\n\r\n");
    out.extend_from_slice(&status);
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Type: text/rfc822-headers\r\n");
    out.extend_from_slice(match report.action {
        Action::Failed => b"Content-Description: Undelivered message headers\r\n",
        Action::Delayed { .. } => b"Content-Description: Delayed message headers\r\n",
    });
    if eight_bit(original_headers) {
        out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(original_headers);
    if !original_headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The text/plain part, every line ending in CRLF.
fn human_text(report: &Report<'_>) -> String {
    if let Action::Delayed { until } = report.action {
        return delayed_text(report, until);
    }
    let mut text = format!(
        "This is the mail system at host {host}.\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         The gateway it was relayed through refused them, or kept deferring\r\n\
         them until smtp-shaper gave up. The headers of your message are\r\n\
         attached.\r\n\
         \r\n\
         Queue id: {id}\r\n\
         \r\n",
        host = printable(report.hostname),
        id = printable(report.queue_id),
    );
    push_recipients(&mut text, report.failures);
    text
}

/// The text/plain part of a delay notice: the message is held, not lost.
fn delayed_text(report: &Report<'_>, until: u64) -> String {
    let mut text = format!(
        "This is the mail system at host {host}.\r\n\
         \r\n\
         ####################################################################\r\n\
         # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\
         ####################################################################\r\n\
         \r\n\
         Your message has not been delivered yet. smtp-shaper holds it in its\r\n\
         queue and releases mail at the pace the gateway's receivers accept;\r\n\
         it keeps it until {until}. The headers of your message are\r\n\
         attached.\r\n\
         \r\n\
         Queue id: {id}\r\n\
         \r\n",
        host = printable(report.hostname),
        id = printable(report.queue_id),
        until = rfc5322_date(until),
    );
    push_recipients(&mut text, report.failures);
    text
}

/// A line per recipient for the text part: its address and the reply (and
/// how long it was tried, when it expired).
fn push_recipients(text: &mut String, failures: &[Failure<'_>]) {
    for failure in failures {
        let line = format!(
            "<{}>: {}",
            printable(failure.recipient),
            printable(&failure.reply.to_string())
        );
        text.push_str(&fold(&line, "    "));
        text.push_str("\r\n");
        if let Some((attempts, seconds)) = failure.expired {
            text.push_str(&format!(
                "    (given up after {attempts} attempts in {seconds} s)\r\n"
            ));
        }
    }
}

/// The message/delivery-status body: per-message fields, then a block per
/// recipient, blocks separated by a blank line.
fn delivery_status(report: &Report<'_>) -> Vec<u8> {
    let mut fields = vec![
        format!("Reporting-MTA: dns; {}", printable(report.hostname)),
        format!("X-Smtp-Shaper-Queue-Id: {}", printable(report.queue_id)),
        format!("Arrival-Date: {}", rfc5322_date(report.arrival)),
    ];
    for failure in report.failures {
        fields.push(String::new());
        fields.push(format!(
            "Final-Recipient: rfc822; {}",
            printable(failure.recipient)
        ));
        fields.push(match report.action {
            Action::Failed => "Action: failed".into(),
            Action::Delayed { .. } => "Action: delayed".into(),
        });
        fields.push(format!("Status: {}", status(failure.reply)));
        fields.push(fold(
            &format!(
                "Diagnostic-Code: smtp; {}",
                printable(&failure.reply.to_string())
            ),
            " ",
        ));
        fields.push(match report.action {
            Action::Failed => format!("Last-Attempt-Date: {}", rfc5322_date(report.now)),
            Action::Delayed { until } => format!("Will-Retry-Until: {}", rfc5322_date(until)),
        });
    }
    let mut out = Vec::new();
    for field in fields {
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `text` with every character that is not printable ASCII made `?` (a
/// reply is whatever the gateway sent; a report's fields are ASCII).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Folds a printable-ASCII line at spaces near [`FOLD_AT`], continuation
/// lines starting with `indent`; joined with CRLF (no final CRLF).
fn fold(line: &str, indent: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut width = 0;
    for word in line.split(' ').filter(|word| !word.is_empty()) {
        // ASCII only (see `printable`), so byte chunks are characters.
        for piece in word.as_bytes().chunks(MAX_WORD) {
            let piece = std::str::from_utf8(piece).unwrap_or("?");
            if width == 0 {
                out.push_str(piece);
                width = piece.len();
            } else if width + 1 + piece.len() > FOLD_AT {
                out.push_str("\r\n");
                out.push_str(indent);
                out.push_str(piece);
                width = indent.len() + piece.len();
            } else {
                out.push(' ');
                out.push_str(piece);
                width += 1 + piece.len();
            }
        }
    }
    out
}

/// A boundary found in none of `parts` (RFC 2046 5.1.1: the sender must
/// choose one that does not occur in the content).
fn boundary(report_id: &str, parts: &[&[u8]]) -> String {
    let base: String = format!("=_smtp-shaper-dsn-{report_id}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "=_-.".contains(*c))
        .collect();
    let mut candidate = base.clone();
    let mut counter = 0u32;
    while parts.iter().any(|part| {
        part.windows(candidate.len())
            .any(|window| window == candidate.as_bytes())
    }) {
        counter += 1;
        candidate = format!("{base}-{counter}");
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &[u8] = b"Received: from app ([127.0.0.1])\r\n\tby shaper.test (smtp-shaper) with ESMTP id Q1;\r\n\tThu, 26 Nov 2026 19:40:59 +0000\r\nFrom: app@app.test\r\nTo: a@x.test, b@y.test\r\nSubject: hello\r\nMessage-ID: <m1@app.test>\r\n\r\nbody line\r\n";

    fn lines(message: &[u8]) -> Vec<&[u8]> {
        message
            .strip_suffix(b"\r\n")
            .unwrap()
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .collect()
    }

    #[test]
    fn status_comes_from_the_enhanced_code_or_the_reply_class() {
        assert_eq!(status(&Reply::new(550, "5.1.1 unknown user")), "5.1.1");
        assert_eq!(status(&Reply::new(550, "unknown user")), "5.0.0");
        assert_eq!(status(&Reply::new(451, "4.7.500 busy")), "4.7.500");
        assert_eq!(status(&Reply::new(421, "no status")), "4.0.0");
        // An enhanced code of another class than the reply is not trusted.
        assert_eq!(status(&Reply::new(554, "4.2.0 odd")), "5.0.0");
    }

    #[test]
    fn a_report_has_every_part_and_field_with_crlf_and_short_lines() {
        let refused = Reply::new(550, "5.1.1 <a@x.test>: user unknown");
        let long = format!("4.4.2 {} {}", "timeout ".repeat(40), "x".repeat(1500));
        let deferred = Reply::new(451, long.clone());
        let failures = [
            Failure {
                recipient: "a@x.test",
                reply: &refused,
                expired: None,
            },
            Failure {
                recipient: "b@y.test",
                reply: &deferred,
                expired: Some((7, 432_000)),
            },
        ];
        let report = build(&Report {
            action: Action::Failed,
            hostname: "shaper.test",
            queue_id: "Q1",
            report_id: "Q2",
            sender: "app@app.test",
            arrival: 1_795_722_059,
            now: 1_795_722_359,
            original: ORIGINAL,
            failures: &failures,
        });
        assert!(report.ends_with(b"\r\n"));
        for (at, byte) in report.iter().enumerate() {
            match byte {
                b'\r' => assert_eq!(report.get(at + 1), Some(&b'\n'), "bare CR at {at}"),
                b'\n' => assert_eq!(report[at - 1], b'\r', "bare LF at {at}"),
                _ => {}
            }
        }
        for line in lines(&report) {
            assert!(line.len() <= 998, "line of {} octets", line.len());
        }
        let text = String::from_utf8(report.clone()).unwrap();
        let boundary = "=_smtp-shaper-dsn-Q2";
        for expected in [
            "From: Mail Delivery System <MAILER-DAEMON@shaper.test>\r\n",
            "To: <app@app.test>\r\n",
            "Date: Thu, 26 Nov 2026 19:45:59 +0000\r\n",
            "Message-ID: <Q2.dsn@shaper.test>\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"=_smtp-shaper-dsn-Q2\"\r\n",
            "\r\n--=_smtp-shaper-dsn-Q2\r\nContent-Type: text/plain; charset=us-ascii\r\n",
            "<a@x.test>: 550 5.1.1 <a@x.test>: user unknown\r\n",
            "    (given up after 7 attempts in 432000 s)\r\n",
            "\r\n--=_smtp-shaper-dsn-Q2\r\nContent-Type: message/delivery-status\r\n",
            "\r\n\r\nReporting-MTA: dns; shaper.test\r\nX-Smtp-Shaper-Queue-Id: Q1\r\nArrival-Date: Thu, 26 Nov 2026 19:40:59 +0000\r\n\r\n",
            "Final-Recipient: rfc822; a@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <a@x.test>: user unknown\r\nLast-Attempt-Date: Thu, 26 Nov 2026 19:45:59 +0000\r\n\r\n",
            "Final-Recipient: rfc822; b@y.test\r\nAction: failed\r\nStatus: 4.4.2\r\nDiagnostic-Code: smtp; 451 4.4.2 timeout",
            "\r\n--=_smtp-shaper-dsn-Q2\r\nContent-Type: text/rfc822-headers\r\n",
            "Subject: hello\r\nMessage-ID: <m1@app.test>\r\n\r\n--=_smtp-shaper-dsn-Q2--\r\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
        assert!(!text.contains("body line"), "only the headers go back");
        assert_eq!(text.matches(&format!("--{boundary}\r\n")).count(), 3);
        // The folded Diagnostic-Code unfolds to the reply, the long word
        // broken into pieces of at most MAX_WORD.
        let diagnostic = header::values(
            text.split("Final-Recipient: rfc822; b@y.test\r\n")
                .nth(1)
                .unwrap()
                .as_bytes(),
            "Diagnostic-Code",
        );
        let unfolded = diagnostic[0].replace("\t", " ");
        let words: Vec<&str> = unfolded.split_whitespace().collect();
        let expected: Vec<String> = format!("smtp; 451 {long}")
            .split_whitespace()
            .flat_map(|word| {
                word.as_bytes()
                    .chunks(MAX_WORD)
                    .map(|piece| String::from_utf8(piece.to_vec()).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(words, expected);
    }

    #[test]
    fn a_delay_notice_says_delayed_and_until_when_it_is_kept() {
        let held = Reply::new(451, "4.7.1 held in smtp-shaper's queue for 4h0m");
        let failures = [Failure {
            recipient: "a@x.test",
            reply: &held,
            expired: None,
        }];
        let report = build(&Report {
            action: Action::Delayed {
                until: 1_795_722_059 + 432_000,
            },
            hostname: "shaper.test",
            queue_id: "Q1",
            report_id: "Q2",
            sender: "app@app.test",
            arrival: 1_795_722_059,
            now: 1_795_736_459,
            original: ORIGINAL,
            failures: &failures,
        });
        let text = String::from_utf8(report).unwrap();
        for expected in [
            "Subject: Delayed Mail (still being retried)\r\n",
            "THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE.",
            "it keeps it until Tue, 01 Dec 2026 19:40:59 +0000.",
            "Final-Recipient: rfc822; a@x.test\r\nAction: delayed\r\nStatus: 4.7.1\r\n",
            "Will-Retry-Until: Tue, 01 Dec 2026 19:40:59 +0000\r\n",
            "Content-Description: Delayed message headers\r\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
        assert!(!text.contains("Last-Attempt-Date"), "never attempted");
        assert!(!text.contains("could not be delivered"), "{text}");
    }

    #[test]
    fn the_boundary_never_occurs_in_the_content_and_text_is_ascii() {
        let original =
            b"Subject: =_smtp-shaper-dsn-Q2 trap\r\nFrom: \xc3\xa9@app.test\r\n\r\nx\r\n";
        let reply = Reply::new(550, "5.7.1 r\u{e9}fus\u{e9}\tici");
        let failures = [Failure {
            recipient: "a@x.test",
            reply: &reply,
            expired: None,
        }];
        let report = build(&Report {
            action: Action::Failed,
            hostname: "shaper.test",
            queue_id: "Q1",
            report_id: "Q2",
            sender: "app@app.test",
            arrival: 0,
            now: 0,
            original,
            failures: &failures,
        });
        let text = String::from_utf8_lossy(&report);
        assert!(
            text.contains("boundary=\"=_smtp-shaper-dsn-Q2-1\""),
            "{text}"
        );
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.7.1 r?fus??ici\r\n"));
        assert_eq!(
            text.matches("Content-Transfer-Encoding: 8bit\r\n").count(),
            2
        );
    }
}
