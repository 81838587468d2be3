//! Delivery status notifications to senders, end to end over loopback TCP:
//! the sink refuses recipients with 550, smtp-shaper dead-letters them and
//! (for an app with `dsn = true`) sends the sender one RFC 3464 report from
//! the null sender through the same gateway. The report is read by an
//! independent parser, Python's `email` package, field by field.
//! Without python3 the test says SKIPPED, unless SMTP_SHAPER_REQUIRE_TOOLS=1
//! (CI), where that fails.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use smtp_shaper::config::{AppConfig, UnsubscribeMode};
use smtp_shaper::shaper::AppClass;

use crate::support::{self, Client, Harness, eventually};

const SENDER: &str = "alerts@app.test";
const BODY: &[u8] = b"From: Alerts <alerts@app.test>\r\nTo: ops@x.test\r\nSubject: disk almost full\r\nMessage-ID: <alert-1@app.test>\r\n\r\nThe disk is 95% full.\r\n";
/// Clients from here are the app that wants reports, from the next
/// address the one that does not.
const REPORTED: [u8; 4] = [127, 0, 0, 1];
const UNREPORTED: [u8; 4] = [127, 0, 0, 2];

fn app(name: &str, network: [u8; 4], dsn: bool) -> AppConfig {
    AppConfig {
        name: name.into(),
        networks: vec![format!("{}/32", IpAddr::from(network)).parse().unwrap()],
        senders: Vec::new(),
        priority: 1,
        class: AppClass::Transactional,
        unsubscribe: UnsubscribeMode::Warn,
        dsn,
        user: None,
        password_hash: None,
        max_queue_delay: None,
        expire_after: None,
        notify_delay: None,
    }
}

async fn harness() -> Harness {
    let h = Harness::with(|config| {
        config.apps = vec![
            app("alerts", REPORTED, true),
            app("quiet", UNREPORTED, false),
        ];
    })
    .await;
    h.sink
        .reply_to_rcpt("gone@x.test", "550 5.1.1 <gone@x.test>: Recipient address rejected: User unknown in virtual mailbox table");
    h.sink.reply_to_rcpt("full@y.test", "552 mailbox full");
    h
}

fn python() -> Option<&'static str> {
    support::python_with("email", "python3")
}

async fn dsns(h: &Harness, result: &str) -> f64 {
    h.sample(&format!(
        "smtp_shaper_dsns_total{{gateway=\"primary\",result=\"{result}\"}}"
    ))
    .await
}

fn dead_letter_files(h: &Harness) -> usize {
    support::dead_letters(h.spool.path()).len()
}

fn reports(h: &Harness) -> Vec<support::Received> {
    h.sink
        .messages()
        .into_iter()
        .filter(|message| message.mail_from.split(' ').next() == Some("<>"))
        .collect()
}

/// Checks `report` with Python's email parser: every header, part and
/// field. Panics with the parser's complaint.
fn check_with_python(python: &str, dir: &std::path::Path, report: &[u8], queue_id: &str) {
    let path = dir.join("report.eml");
    std::fs::write(&path, report).unwrap();
    let script = format!(
        r#"
import email, email.utils, sys
raw = open({path:?}, "rb").read()
msg = email.message_from_bytes(raw)
def check(what, got, expected):
    if got != expected:
        sys.exit(f"{{what}}: got {{got!r}}, expected {{expected!r}}")
def one_line(value):
    return " ".join(str(value).split())
check("defects", [str(d) for part in msg.walk() for d in part.defects], [])
check("content type", msg.get_content_type(), "multipart/report")
check("report-type", msg.get_param("report-type"), "delivery-status")
check("From", email.utils.parseaddr(msg["From"])[1], "MAILER-DAEMON@shaper.test")
check("To", email.utils.parseaddr(msg["To"])[1], {SENDER:?})
check("Auto-Submitted", msg["Auto-Submitted"], "auto-replied")
check("Message-ID domain", msg["Message-ID"].rstrip(">").split("@")[1], "shaper.test")
check("Date parses", email.utils.parsedate_to_datetime(msg["Date"]).utcoffset().total_seconds(), 0)
parts = msg.get_payload()
check("parts", [part.get_content_type() for part in parts],
      ["text/plain", "message/delivery-status", "text/rfc822-headers"])
text = parts[0].get_payload(decode=True).decode("ascii")
for expected in ["gone@x.test", "full@y.test", "550 5.1.1", "552 mailbox full", {queue_id:?}]:
    if expected not in text:
        sys.exit(f"{{expected!r}} not in the text part: {{text!r}}")
blocks = parts[1].get_payload()
check("delivery-status blocks", len(blocks), 3)
per_message = blocks[0]
check("Reporting-MTA", per_message["Reporting-MTA"], "dns; shaper.test")
check("X-Smtp-Shaper-Queue-Id", per_message["X-Smtp-Shaper-Queue-Id"], {queue_id:?})
email.utils.parsedate_to_datetime(per_message["Arrival-Date"])
expected = [
    ("gone@x.test", "5.1.1", "smtp; 550 5.1.1 <gone@x.test>: Recipient address rejected: User unknown in virtual mailbox table"),
    ("full@y.test", "5.0.0", "smtp; 552 mailbox full"),
]
for block, (recipient, status, diagnostic) in zip(blocks[1:], expected):
    check("Final-Recipient", block["Final-Recipient"], "rfc822; " + recipient)
    check("Action", block["Action"], "failed")
    check("Status", block["Status"], status)
    check("Diagnostic-Code", one_line(block["Diagnostic-Code"]), diagnostic)
    email.utils.parsedate_to_datetime(block["Last-Attempt-Date"])
original = email.message_from_string(parts[2].get_payload())
check("original Subject", original["Subject"], "disk almost full")
check("original Message-ID", original["Message-ID"], "<alert-1@app.test>")
check("original From", original["From"], "Alerts <alerts@app.test>")
if "by shaper.test (smtp-shaper)" not in one_line(original["Received"]):
    sys.exit("our Received: is not among the original headers")
if "The disk is" in parts[2].get_payload():
    sys.exit("the original body came back")
print("ok")
"#
    );
    let output = Command::new(python)
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success() && output.stdout == b"ok\n",
        "{}{}\nreport:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipients_are_reported_to_the_sender_in_one_notification() {
    let Some(python) = python() else { return };
    let h = harness().await;
    let mut client = Client::ready_from(IpAddr::from(REPORTED), h.service.smtp_address()).await;
    let queue_id = client
        .accepted(SENDER, &["ops@x.test", "gone@x.test", "full@y.test"], BODY)
        .await;
    eventually("the report arrives", || reports(&h).len() == 1).await;
    let messages = h.sink.messages();
    let delivered: Vec<&support::Received> = messages
        .iter()
        .filter(|message| message.mail_from.starts_with(&format!("<{SENDER}>")))
        .collect();
    assert_eq!(delivered.len(), 1, "the original to the one good recipient");
    assert_eq!(delivered[0].recipients, ["ops@x.test"]);
    let report = &reports(&h)[0];
    assert_eq!(
        report.mail_from.split(' ').next(),
        Some("<>"),
        "from the null sender"
    );
    assert_eq!(report.recipients, [SENDER]);
    check_with_python(python, h.spool.path(), &report.data, &queue_id);
    assert_eq!(dead_letter_files(&h), 1);
    assert_eq!(dsns(&h, "queued").await, 1.0);
    // One report for both failures, and no second one later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reports(&h).len(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_notification_for_the_null_sender_or_an_app_without_dsn() {
    let h = harness().await;
    let mut reported = Client::ready_from(IpAddr::from(REPORTED), h.service.smtp_address()).await;
    // A bounce the app sends itself: reporting on it could loop.
    reported.accepted("", &["gone@x.test"], BODY).await;
    eventually("dead-lettered", || dead_letter_files(&h) == 1).await;
    let mut quiet = Client::ready_from(IpAddr::from(UNREPORTED), h.service.smtp_address()).await;
    quiet.accepted(SENDER, &["gone@x.test"], BODY).await;
    eventually("both dead-lettered", || dead_letter_files(&h) == 2).await;
    assert_eq!(dsns(&h, "null_sender").await, 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(reports(&h).is_empty(), "{:?}", reports(&h));
    assert_eq!(dsns(&h, "queued").await, 0.0);
    assert_eq!(h.sink.count(), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_notification_survives_a_restart_and_is_not_sent_twice() {
    let h = harness().await;
    // The sender's own gateway defers the report for now.
    h.sink.reply_to_rcpt(SENDER, "451 4.3.0 try again later");
    let mut client = Client::ready_from(IpAddr::from(REPORTED), h.service.smtp_address()).await;
    client.accepted(SENDER, &["gone@x.test"], BODY).await;
    eventually("dead-lettered", || dead_letter_files(&h) == 1).await;
    let Harness {
        sink,
        spool,
        service,
    } = h;
    service.shutdown().await;
    let attempts = *sink.data_attempts.lock().unwrap();
    sink.clear_rcpt_reply(SENDER);
    let mut config = support::test_config(spool.path(), sink.address);
    config.apps = vec![app("alerts", REPORTED, true)];
    let service = support::start(config).await;
    let h = Harness {
        sink,
        spool,
        service,
    };
    eventually("the report arrives after the restart", || {
        reports(&h).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reports(&h).len(), 1);
    assert_eq!(
        dead_letter_files(&h),
        1,
        "the refused recipient is not tried again"
    );
    assert_eq!(
        *h.sink.data_attempts.lock().unwrap(),
        attempts + 1,
        "only the report went out after the restart"
    );
    h.shutdown().await;
}
