//! The relay rules on the message header, over loopback with real SMTP
//! peers (Python's smtplib, raw clients) and the in-process sink as the
//! gateway: From:/Sender: held to the app's senders (relay rule 2), DMARC
//! alignment of the From: domain with a DNS responder on loopback UDP
//! (never the internet), one-click unsubscribe on bulk mail; each with the
//! metrics it moves, read from /metrics.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_shaper::config::{AlignmentMode, AppConfig, Config, DkimConfig, UnsubscribeMode};
use smtp_shaper::shaper::AppClass;

use crate::support::{self, Harness, eventually, without_trace};

/// A DNS server on loopback UDP answering TXT questions from a zone (every
/// other name: no such domain), keeping the names asked.
struct Zone {
    address: SocketAddr,
    questions: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Zone {
    fn start(records: &[(&str, &str)]) -> Zone {
        let mut zone: HashMap<String, Vec<String>> = HashMap::new();
        for (name, text) in records {
            zone.entry(name.to_string())
                .or_default()
                .push(text.to_string());
        }
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let questions: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (asked, stopped) = (questions.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while !stopped.load(Ordering::SeqCst) {
                let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                let query = &buffer[..len];
                let (name, question_end) = question(query);
                asked.lock().unwrap().push(name.clone());
                let answers = zone.get(&name).cloned().unwrap_or_default();
                let mut response = query[..question_end].to_vec();
                response[2] = 0x81; // a response, recursion desired
                response[3] = if answers.is_empty() { 0x83 } else { 0x80 };
                response[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
                response[8..12].copy_from_slice(&[0, 0, 0, 0]);
                for text in answers {
                    response.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
                    response.extend_from_slice(&((text.len() + 1) as u16).to_be_bytes());
                    response.push(text.len() as u8);
                    response.extend_from_slice(text.as_bytes());
                }
                let _ = socket.send_to(&response, from);
            }
        });
        Zone {
            address,
            questions,
            stop,
        }
    }

    fn questions(&self) -> Vec<String> {
        self.questions.lock().unwrap().clone()
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The question's name (lower case) and where the question ends.
fn question(query: &[u8]) -> (String, usize) {
    let mut labels = Vec::new();
    let mut at = 12;
    while query[at] != 0 {
        let len = query[at] as usize;
        labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len]).to_ascii_lowercase());
        at += 1 + len;
    }
    (labels.join("."), at + 5)
}

fn app(name: &str, senders: &[&str]) -> AppConfig {
    AppConfig {
        name: name.into(),
        networks: vec!["127.0.0.0/8".parse().unwrap()],
        senders: senders.iter().map(|s| s.parse().unwrap()).collect(),
        priority: 1,
        class: AppClass::Transactional,
        unsubscribe: UnsubscribeMode::Warn,
        dsn: false,
        user: None,
        password_hash: None,
        max_queue_delay: None,
        expire_after: None,
        notify_delay: None,
    }
}

async fn rejections(h: &Harness, reason: &str) -> f64 {
    h.sample(&format!(
        "smtp_shaper_rejections_total{{reason=\"{reason}\"}}"
    ))
    .await
}

async fn alignment_checks(h: &Harness, result: &str) -> f64 {
    h.sample(&format!(
        "smtp_shaper_alignment_checks_total{{gateway=\"primary\",result=\"{result}\"}}"
    ))
    .await
}

/// Sends a message with `headers` from `sender` and returns the reply to
/// the end of DATA.
async fn send(h: &Harness, sender: &str, headers: &str) -> support::ClientReply {
    let body = format!("{headers}\r\nTo: you@example.org\r\nSubject: t\r\n\r\nhello\r\n");
    h.client()
        .await
        .send_message(sender, &["you@example.org"], body.as_bytes())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_cannot_put_a_foreign_from_through_an_apps_gateway() {
    let h = Harness::with(|config| {
        config.apps = vec![app("billing", &["billing.example.com"])];
    })
    .await;
    let address = h.service.smtp_address();
    // smtplib sends MAIL FROM from the envelope it is given; the header is
    // the app's to choose. The foreign ones must come back 550 (or 554 for
    // a malformed header) with the reason, the good one go through.
    let script = format!(
        r#"
import smtplib
def send(headers):
    message = headers + "\r\nTo: you@example.org\r\nSubject: t\r\n\r\nhello\r\n"
    with smtplib.SMTP("{ip}", {port}) as smtp:
        try:
            smtp.sendmail("invoices@billing.example.com", ["you@example.org"], message)
            print("250")
        except smtplib.SMTPDataError as error:
            print(error.smtp_code, error.smtp_error.decode())
send("From: CEO <ceo@corp.example>")
send("From: Invoices <invoices@billing.example.com>\r\nSender: ceo@corp.example")
send("From: a@billing.example.com\r\nFrom: ceo@corp.example")
send("From: a@billing.example.com, b@billing.example.com")
send("From: \"Billing, Inc. (EU)\"\r\n <invoices@Billing.Example.com> (folded, with a comment)")
"#,
        ip = address.ip(),
        port = address.port()
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "550 5.7.1 From: <ceo@corp.example> is not allowed for app billing: each app sends only from its own addresses or domain, in the header as in MAIL FROM (relay rule 2)",
            "550 5.7.1 Sender: <ceo@corp.example> is not allowed for app billing: each app sends only from its own addresses or domain, in the header as in MAIL FROM (relay rule 2)",
            "554 5.6.0 Message refused: 2 From: header fields; a message has exactly one (RFC 5322 3.6)",
            "554 5.6.0 Message refused: From: names 2 mailboxes and there is no Sender: field naming the one that sent it (RFC 5322 3.6.2)",
            "250",
        ]
    );
    eventually("the good message at the sink", || h.sink.count() == 1).await;
    let text = String::from_utf8_lossy(without_trace(&h.sink.messages()[0].data)).into_owned();
    assert!(
        text.starts_with("From: \"Billing, Inc. (EU)\"\r\n <invoices@"),
        "{text}"
    );
    assert_eq!(rejections(&h, "header_sender").await, 2.0);
    assert_eq!(rejections(&h, "bad_content").await, 2.0);
    assert_eq!(rejections(&h, "relay_denied").await, 0.0);
    assert_eq!(
        alignment_checks(&h, "aligned").await,
        1.0,
        "warn by default"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_senders_and_other_mail_may_use_any_from() {
    let h = Harness::with(|config| {
        config.apps = vec![app("legacy", &[])];
        config.gateways[0].alignment = AlignmentMode::Off;
    })
    .await;
    let reply = send(&h, "app@example.net", "From: ceo@corp.example").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let reply = send(&h, "app@example.net", "Subject: no From: at all").await;
    assert_eq!(reply.code, 250, "left to the receivers: {reply:?}");
    assert_eq!(alignment_checks(&h, "misaligned").await, 0.0, "off");
    h.shutdown().await;
}

/// A harness whose gateway enforces alignment, asking `zone` for DMARC.
async fn enforcing(zone: &Zone, tweak: impl FnOnce(&mut Config)) -> Harness {
    let resolver = zone.address;
    Harness::with(move |config| {
        config.server.dns_resolver = Some(resolver);
        config.gateways[0].alignment = AlignmentMode::Enforce;
        tweak(config);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alignment_enforced_relaxed_or_strict_as_the_domains_dmarc_record_says() {
    let zone = Zone::start(&[
        ("_dmarc.example.com", "v=DMARC1; p=reject"),
        ("_dmarc.strict.example", "v=DMARC1; p=reject; aspf=s"),
    ]);
    let h = enforcing(&zone, |_| {}).await;

    // The same domain: aligned, and DNS is not asked.
    let reply = send(&h, "bounces@example.com", "From: News <news@example.com>").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert!(zone.questions().is_empty(), "{:?}", zone.questions());

    // A subdomain: the record decides (relaxed), asked once, then cached.
    for _ in 0..2 {
        let reply = send(&h, "bounces@mail.example.com", "From: news@example.com").await;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    assert_eq!(zone.questions(), ["_dmarc.example.com"]);

    // aspf=s on the organisational domain's record: a subdomain is refused.
    let reply = send(&h, "bounces@mail.strict.example", "From: a@strict.example").await;
    assert_eq!(reply.code, 550);
    assert_eq!(
        reply.text,
        "5.7.1 From: domain strict.example is not DMARC-aligned: envelope sender domain (SPF): mail.strict.example is not exactly it, and its DMARC record asks for strict alignment (aspf=s); DKIM signature: none, no [[dkim]] key for this From: domain; receivers would fail its DMARC check (RFC 7489 3.1)"
    );
    // From a subdomain of the strict one: no record of its own, the
    // organisational domain's applies (RFC 7489 6.6.3).
    let reply = send(&h, "x@strict.example", "From: a@news.strict.example").await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert_eq!(
        &zone.questions()[1..],
        [
            "_dmarc.strict.example",
            "_dmarc.news.strict.example",
            "_dmarc.strict.example"
        ]
    );

    // Another organisation: no record can help, refused without DNS.
    let asked = zone.questions().len();
    let reply = send(&h, "app@example.com", "From: CEO <ceo@corp.example>").await;
    assert_eq!(reply.code, 550);
    assert!(
        reply.text.contains("example.com is not corp.example"),
        "{reply:?}"
    );
    // The null sender has no SPF domain to align with.
    let reply = send(&h, "", "From: news@example.com").await;
    assert_eq!(reply.code, 550);
    assert!(
        reply.text.contains("the envelope sender is <>"),
        "{reply:?}"
    );
    assert_eq!(zone.questions().len(), asked);

    eventually("three relayed", || h.sink.count() == 3).await;
    assert_eq!(alignment_checks(&h, "aligned").await, 3.0);
    assert_eq!(alignment_checks(&h, "misaligned").await, 4.0);
    assert_eq!(rejections(&h, "alignment").await, 4.0);
    assert_eq!(
        h.sample("smtp_shaper_dmarc_lookups_total{result=\"found\"}")
            .await,
        3.0
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dkim_signature_smtp_shaper_adds_aligns_a_foreign_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("news.example.com.pem");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(&key, pair.serialize_pem()).unwrap();
    let zone = Zone::start(&[]);
    let h = enforcing(&zone, move |config| {
        config.dkim = vec![DkimConfig {
            domain: "news.example.com".into(),
            selector: "s1".into(),
            key,
        }];
    })
    .await;
    // The bounce domain of a mailing service aligns with nothing; the
    // signature for the From: domain does.
    let reply = send(&h, "b-123@bounce.esp.test", "From: news@News.Example.com").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    eventually("relayed", || h.sink.count() == 1).await;
    let text = String::from_utf8_lossy(&h.sink.messages()[0].data).into_owned();
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{text}"
    );
    assert!(text.contains("d=news.example.com;"), "{text}");
    // A key for another domain signs nothing here: refused.
    let reply = send(&h, "b-123@bounce.esp.test", "From: shop@example.com").await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(zone.questions().is_empty(), "{:?}", zone.questions());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_accepts_and_counts_a_misaligned_message() {
    let h = Harness::start().await;
    let reply = send(&h, "app@example.net", "From: ceo@corp.example").await;
    assert_eq!(reply.code, 250, "warn is the default: {reply:?}");
    eventually("relayed", || h.sink.count() == 1).await;
    assert_eq!(alignment_checks(&h, "misaligned").await, 1.0);
    assert_eq!(rejections(&h, "alignment").await, 0.0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_that_does_not_answer_never_holds_or_refuses_mail() {
    // A resolver that takes the questions and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = silent.local_addr().unwrap();
    let h = Harness::with(move |config| {
        config.server.dns_resolver = Some(resolver);
        config.gateways[0].alignment = AlignmentMode::Enforce;
    })
    .await;
    // Aligned only if the record does not say strict: judged relaxed.
    let started = Instant::now();
    let reply = send(&h, "bounces@mail.example.com", "From: news@example.com").await;
    let waited = started.elapsed();
    assert_eq!(reply.code, 250, "{reply:?}");
    assert!(waited < Duration::from_secs(4), "held for {waited:?}");
    assert_eq!(
        h.sample("smtp_shaper_dmarc_lookups_total{result=\"timeout\"}")
            .await,
        1.0
    );
    // The lookup goes on, fails, and is remembered: the next message does
    // not wait.
    support::eventually_async("the lookup failed", || async {
        h.sample("smtp_shaper_dmarc_lookups_total{result=\"failed\"}")
            .await
            == 1.0
    })
    .await;
    let started = Instant::now();
    let reply = send(&h, "bounces@mail.example.com", "From: news@example.com").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Another organisation is refused without asking DNS at all.
    let reply = send(&h, "app@example.net", "From: ceo@corp.example").await;
    assert_eq!(reply.code, 550, "{reply:?}");
    drop(silent);
    h.shutdown().await;
}

fn bulk(name: &str, sender: &str, unsubscribe: UnsubscribeMode) -> AppConfig {
    AppConfig {
        class: AppClass::Bulk,
        unsubscribe,
        networks: Vec::new(),
        ..app(name, &[sender])
    }
}

const ONE_CLICK: &str = "List-Unsubscribe: <mailto:stop@news.example.com>,\r\n <https://news.example.com/u?id=42>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_mail_without_one_click_unsubscribe_is_counted_or_refused() {
    let h = Harness::with(|config| {
        config.apps = vec![
            bulk("news", "news.example.com", UnsubscribeMode::Warn),
            bulk("offers", "offers.example.com", UnsubscribeMode::Require),
            app("billing", &["billing.example.com"]),
        ];
        config.apps[2].networks.clear();
    })
    .await;
    let missing = |app: &'static str| {
        let h = &h;
        async move {
            h.sample(&format!(
                "smtp_shaper_unsubscribe_missing_total{{app=\"{app}\"}}"
            ))
            .await
        }
    };
    let reply = send(&h, "n@news.example.com", "From: n@news.example.com").await;
    assert_eq!(reply.code, 250, "warn: {reply:?}");
    assert_eq!(missing("news").await, 1.0);

    let reply = send(&h, "o@offers.example.com", "From: o@offers.example.com").await;
    assert_eq!(reply.code, 550);
    assert_eq!(
        reply.text,
        "5.7.1 Bulk mail from app offers needs one-click unsubscribe (RFC 8058): no List-Unsubscribe header field; add List-Unsubscribe: <https://...> and List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    );
    let reply = send(
        &h,
        "o@offers.example.com",
        "From: o@offers.example.com\r\nList-Unsubscribe: <mailto:stop@offers.example.com>",
    )
    .await;
    assert_eq!(reply.code, 550);
    assert!(
        reply
            .text
            .contains("List-Unsubscribe names no <https://...> URI"),
        "{reply:?}"
    );
    let reply = send(
        &h,
        "o@offers.example.com",
        &format!("From: o@offers.example.com\r\n{ONE_CLICK}"),
    )
    .await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(missing("offers").await, 2.0);
    assert_eq!(rejections(&h, "unsubscribe").await, 2.0);

    // Transactional mail is not asked for it.
    let reply = send(&h, "b@billing.example.com", "From: b@billing.example.com").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(missing("billing").await, 0.0);
    eventually("relayed", || h.sink.count() == 3).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_refusals_count_towards_max_errors() {
    let h = Harness::with(|config| {
        config.apps = vec![app("billing", &["billing.example.com"])];
        config.server.max_errors = 2;
    })
    .await;
    let mut client = h.client().await;
    let body = b"From: ceo@corp.example\r\n\r\nhi\r\n";
    let reply = client
        .send_message("a@billing.example.com", &["you@example.org"], body)
        .await;
    assert_eq!(reply.code, 550, "{reply:?}");
    let reply = client
        .send_message("a@billing.example.com", &["you@example.org"], body)
        .await;
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(client.is_closed().await);
    h.shutdown().await;
}
