//! Holding a burst (issue 21): an application that sends a thousand mails at
//! once through the shipped configuration, with Python's smtplib as apps
//! really send (no retry of a 4xx), gets a 250 for every one; the gateway
//! receives no more than the hour's allowance, and what is held survives a
//! SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use smtp_shaper::config::{AppConfig, UnsubscribeMode};
use smtp_shaper::shaper::AppClass;

use super::support::{self, Harness, Sink, eventually, free_address, python_with, scrape, spawn};

/// Messages in the burst: the seed's case.
const BURST: usize = 1_000;
/// The hour floor of the shipped config (`min_rate = [..., "60/h", ...]`).
const HOUR_ALLOWANCE: usize = 60;

/// `config/smtp-shaper.toml` as shipped, with only its addresses and spool
/// moved to the test's.
fn shipped_config(
    dir: &Path,
    listen: SocketAddr,
    http: SocketAddr,
    gateway: SocketAddr,
) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/smtp-shaper.toml"
    ))
    .unwrap();
    let mut toml = shipped;
    for (from, to) in [
        (
            "listen = \"127.0.0.1:2525\"",
            format!("listen = \"{listen}\""),
        ),
        (
            "listen = \"127.0.0.1:9325\"",
            format!("listen = \"{http}\""),
        ),
        (
            "dir = \"smtp-shaper-spool\"",
            format!("dir = \"{}\"", dir.join("spool").display()),
        ),
        (
            "address = \"127.0.0.1:25\"",
            format!("address = \"{gateway}\""),
        ),
    ] {
        assert_eq!(
            toml.matches(from).count(),
            1,
            "{from} in the shipped config"
        );
        toml = toml.replace(from, &to);
    }
    let path = dir.join("smtp-shaper.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Sends `BURST` messages with smtplib's `sendmail`, as an app does: `mode`
/// "connections" (one connection each, in turn), "one" (all on one
/// connection) or "threads" (100 threads, a connection per message).
/// Prints the outcome counts and the last 250 text, one per line.
const SCRIPT: &str = r#"
import smtplib, sys, threading
from concurrent.futures import ThreadPoolExecutor

host, port, mode, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
outcomes = {}
last = [""]
lock = threading.Lock()

class App(smtplib.SMTP):
    def data(self, msg):
        code, text = super().data(msg)
        with lock:
            last[0] = text.decode()
        return code, text

def note(outcome):
    with lock:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

def message(index):
    return "From: app@example.com\r\nTo: user%d@example.org\r\nSubject: burst %d\r\n\r\nhello\r\n" % (index, index)

def send(smtp, index):
    try:
        refused = smtp.sendmail("app@example.com", ["user%d@example.org" % index], message(index))
        note("refused-recipients" if refused else "250")
    except smtplib.SMTPResponseException as error:
        note("%d" % error.smtp_code)
    except smtplib.SMTPRecipientsRefused as error:
        note("%d" % list(error.recipients.values())[0][0])
    except smtplib.SMTPServerDisconnected:
        note("disconnected")

def one_connection(index):
    try:
        with App(host, port) as smtp:
            send(smtp, index)
    except smtplib.SMTPConnectError as error:
        note("connect-%d" % error.smtp_code)
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        note("connect-failed")

if mode == "connections":
    for index in range(count):
        one_connection(index)
elif mode == "one":
    with App(host, port) as smtp:
        for index in range(count):
            send(smtp, index)
elif mode == "threads":
    with ThreadPoolExecutor(max_workers=100) as pool:
        list(pool.map(one_connection, range(count)))
for outcome, n in sorted(outcomes.items()):
    print("%s %d" % (outcome, n))
print("last " + last[0])
"#;

async fn burst_is_held_whole(mode: &str) {
    let Some(python) = python_with("smtplib", "python3") else {
        return;
    };
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, http) = (free_address(), free_address());
    let config = shipped_config(dir.path(), listen, http, sink.address);
    let mut process = spawn(&config, listen).await;

    let mode = mode.to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", SCRIPT])
            .arg(listen.ip().to_string())
            .arg(listen.port().to_string())
            .args([mode, BURST.to_string()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with(&format!("250 {BURST}\nlast ")),
        "every message accepted, nothing refused, no connection turned away: {stdout}"
    );
    // The last of a thousand waits for the daily budget, and is told so.
    let last = stdout.lines().last().unwrap();
    assert!(
        last.contains("leaves in about") && last.contains("volume budget"),
        "{last}"
    );
    // A held burst is still a burst: demand counts what was accepted, and
    // the burst ratio SmtpShaperBurstAnomaly fires on (over 4) shows it.
    let ratio = scrape(http, "smtp_shaper_burst_ratio{gateway=\"primary\"}")
        .await
        .unwrap_or(0.0);
    assert!(ratio > 4.0, "burst ratio {ratio}");

    // The hour's allowance leaves at the ceiling; the rest is held.
    eventually("the hour's allowance sent", || {
        sink.count() >= HOUR_ALLOWANCE
    })
    .await;
    let held = queued(http).await;
    assert_eq!(held + sink.count(), BURST, "queued and sent");
    assert_eq!(sink.count(), HOUR_ALLOWANCE, "no more in the first hour");

    // SIGKILL: what was held is still there after the restart, and the
    // hour's count with it.
    process.kill();
    let _process = spawn(&config, listen).await;
    // The queue is read back a segment at a time: wait for all of it.
    let mut after = 0;
    for _ in 0..600 {
        after = queued(http).await;
        if after + sink.count() >= BURST {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        after + sink.count() >= BURST,
        "{after} queued after the restart"
    );
    assert_eq!(
        sink.count(),
        HOUR_ALLOWANCE,
        "the restart does not reopen the hour"
    );
}

/// The gateway's queue depth, from /metrics (0 until it answers).
async fn queued(http: SocketAddr) -> usize {
    scrape(http, "smtp_shaper_queue_messages{gateway=\"primary\"}")
        .await
        .unwrap_or(0.0) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mails_on_a_connection_each_are_all_accepted_and_held() {
    burst_is_held_whole("connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mails_on_one_connection_are_all_accepted_and_held() {
    burst_is_held_whole("one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mails_from_a_hundred_threads_are_all_accepted_and_held() {
    burst_is_held_whole("threads").await;
}

/// An app recognised by its clients on 127.0.0.1, with no reports, the
/// gateway's lifetime and no delay notices.
fn app_on_loopback(name: &str, class: AppClass) -> AppConfig {
    AppConfig {
        name: name.into(),
        networks: vec!["127.0.0.1/32".parse().unwrap()],
        senders: Vec::new(),
        priority: 1,
        class,
        unsubscribe: UnsubscribeMode::Warn,
        dsn: false,
        user: None,
        password_hash: None,
        max_queue_delay: None,
        expire_after: None,
        notify_delay: None,
    }
}

/// A message held past its app's `expire_after` (here by an operator's
/// hold: the projection at RCPT keeps accepted mail under four fifths of
/// it) is dead-lettered and reported to its sender by the sweep, without
/// waiting for its turn, and nothing else is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_held_past_its_apps_expire_after_is_dead_lettered_and_reported() {
    let h = Harness::with(|config| {
        config.apps = vec![AppConfig {
            dsn: true,
            expire_after: Some(Duration::from_secs(3)),
            ..app_on_loopback("alerts", AppClass::Transactional)
        }];
    })
    .await;
    let http = h.service.http_address().unwrap();
    let held_gateway = smtp_shaper::telemetry::client::request(
        http,
        "POST",
        "/admin/gateways/primary/hold",
        "text/plain",
        None,
    )
    .unwrap();
    assert_eq!(held_gateway.body, "gateway primary held\n");
    let mut client = h.client().await;
    let body = b"From: alerts@app.test\r\nSubject: disk\r\n\r\nfull\r\n";
    let held = client
        .accepted("alerts@app.test", &["dev@x.test"], body)
        .await;

    support::eventually_async("the held message expired", || async {
        h.sample("smtp_shaper_messages_expired_total{gateway=\"primary\"}")
            .await
            == 1.0
    })
    .await;
    // Counted as it is buried: wait for the letter to be whole.
    support::eventually("the dead letter written", || {
        !support::dead_letters(h.spool.path()).is_empty()
    })
    .await;
    let dead: Vec<String> = support::dead_letters(h.spool.path())
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        dead.len() == 1 && dead[0].starts_with(&held),
        "{dead:?} for {held}"
    );
    let letter = std::fs::read_to_string(h.spool.path().join("dead").join(&dead[0])).unwrap();
    assert!(
        letter.contains("4.4.7 held in smtp-shaper's queue longer than its expire_after (3s)"),
        "{letter}"
    );
    assert_eq!(
        h.sample("smtp_shaper_dsns_total{gateway=\"primary\",result=\"queued\"}")
            .await,
        1.0,
        "the sender is told"
    );
    assert_eq!(h.sink.count(), 0, "the expired message was not sent");
    h.shutdown().await;
}

/// An app with `notify_delay` whose mail is held that long gets one
/// `Action: delayed` notice per message, read by Python's `email`; the
/// message itself stays queued and nothing is settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_held_past_notify_delay_is_reported_once_as_delayed() {
    let Some(python) = python_with("email", "python3") else {
        return;
    };
    let configure = |config: &mut smtp_shaper::config::Config, notify_delay: u64| {
        // Ten an hour; bulk mail leaves a tenth of it to transactional
        // mail, where notices travel: nine bulk messages fill its share.
        config.gateways[0].shaping =
            support::shaping("initial_rate = \"10/s\"\nmin_rate = [\"10/s\", \"10/h\"]");
        config.apps = vec![AppConfig {
            unsubscribe: UnsubscribeMode::Off,
            notify_delay: Some(Duration::from_secs(notify_delay)),
            ..app_on_loopback("newsletter", AppClass::Bulk)
        }];
    };
    // First an hour's notice delay, lowered to a second by a reload: the
    // mail held meanwhile is told then (the reload keeps how far the
    // notices have got, it does not start them afresh).
    let h = Harness::with(|config| configure(config, 3_600)).await;
    let mut client = h.client().await;
    let body = |n: usize| {
        format!(
            "From: news@app.test\r\nSubject: issue {n}\r\nMessage-ID: <issue-{n}@app.test>\r\n\r\nnews\r\n"
        )
    };
    let mut replies = Vec::new();
    for n in 0..10 {
        replies.push(
            client
                .send_message(
                    "news@app.test",
                    &[&format!("reader{n}@x.test")],
                    body(n).as_bytes(),
                )
                .await,
        );
    }
    assert!(replies.iter().all(|reply| reply.code == 250), "{replies:?}");
    let held = support::queue_id(&replies[9]);
    eventually("the bulk share sent", || h.sink.count() == 9).await;
    // Let the sweep see it held under the hour's delay first.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut config = support::test_config(h.spool.path(), h.sink.address);
    configure(&mut config, 1);
    h.service.reload(config).await.unwrap();

    support::eventually_async("a delay notice sent", || async {
        h.sample("smtp_shaper_dsns_total{gateway=\"primary\",result=\"delayed\"}")
            .await
            == 1.0
    })
    .await;
    eventually("the notice at the gateway", || h.sink.count() == 10).await;
    let notice = h
        .sink
        .messages()
        .into_iter()
        .find(|message| message.mail_from.starts_with("<>"))
        .expect("the notice, from the null sender");
    assert_eq!(notice.recipients, vec!["news@app.test"]);
    let path = h.spool.path().join("notice.eml");
    std::fs::write(&path, &notice.data).unwrap();
    let script = format!(
        r#"
import email, email.utils, sys
msg = email.message_from_bytes(open({path:?}, "rb").read())
def check(what, got, expected):
    if got != expected:
        sys.exit(f"{{what}}: got {{got!r}}, expected {{expected!r}}")
check("defects", [str(d) for part in msg.walk() for d in part.defects], [])
check("Subject", msg["Subject"], "Delayed Mail (still being retried)")
parts = msg.get_payload()
check("parts", [part.get_content_type() for part in parts],
      ["text/plain", "message/delivery-status", "text/rfc822-headers"])
blocks = parts[1].get_payload()
check("X-Smtp-Shaper-Queue-Id", blocks[0]["X-Smtp-Shaper-Queue-Id"], {held:?})
check("Final-Recipient", blocks[1]["Final-Recipient"], "rfc822; reader9@x.test")
check("Action", blocks[1]["Action"], "delayed")
check("Status", blocks[1]["Status"], "4.7.1")
until = email.utils.parsedate_to_datetime(blocks[1]["Will-Retry-Until"])
arrival = email.utils.parsedate_to_datetime(blocks[0]["Arrival-Date"])
check("kept for max_age", (until - arrival).total_seconds(), 5 * 86400)
check("original Message-ID", email.message_from_string(parts[2].get_payload())["Message-ID"], "<issue-9@app.test>")
print("ok")
"#
    );
    let output = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        output.status.success() && output.stdout == b"ok\n",
        "{}{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&notice.data)
    );
    // Once: later sweeps do not tell again, and the message stays held.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        h.sample("smtp_shaper_dsns_total{gateway=\"primary\",result=\"delayed\"}")
            .await,
        1.0
    );
    assert_eq!(h.service.queued("primary"), 1, "still held");
    h.shutdown().await;
}

/// The embedded default (`smtp-shaper run` with no file) holds too: mail
/// past the first hour's floor (60) is accepted, and told when it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_holds_what_the_first_hour_cannot_send() {
    let sink = Sink::start().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = smtp_shaper::config::Config::embedded_default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.spool.dir = spool.path().to_path_buf();
    config.http.listen = None;
    config.gateways[0].address = sink.address.to_string();
    let service = support::start(config).await;
    let mut client = support::Client::ready(service.smtp_address()).await;
    let mut replies = Vec::new();
    for n in 0..80 {
        replies.push(
            client
                .send_message(
                    "app@example.com",
                    &[&format!("user{n}@example.org")],
                    b"Subject: hi\r\n\r\nhello\r\n",
                )
                .await,
        );
    }
    assert!(replies.iter().all(|reply| reply.code == 250), "{replies:?}");
    let last = &replies[79].text;
    assert!(
        last.contains("leaves in about") && last.contains("(hourly volume budget)"),
        "{last}"
    );
    service.shutdown().await;
}
