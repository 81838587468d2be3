//! Real third-party SMTP peers: Python's smtplib and swaks as applications,
//! Postfix's smtp-sink as the gateway.
//!
//! python3 is on every supported machine, so its test always runs. swaks and
//! smtp-sink come from Debian packages that `.ci/run` installs: when one is
//! missing its test says so and passes, unless SMTP_SHAPER_REQUIRE_TOOLS=1
//! (set by CI), where a missing tool is a failure.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    self, Client, Harness, eventually, free_address, start, test_config, without_trace,
};

/// Runs a Python script that must succeed.
async fn python(script: &str) {
    let output = run(Command::new("python3").arg("-c").arg(script)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The tool's path, or None (after saying why) when it may be skipped.
fn tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|path| path.exists());
    if found.is_none() {
        support::skip_without(name, "apt-get install swaks postfix");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_sends_through_the_proxy() {
    let h = Harness::start().await;
    let address = h.service.smtp_address();
    let script = format!(
        r#"
import smtplib
from email.message import EmailMessage
msg = EmailMessage()
msg["From"] = "app@example.com"
msg["To"] = "one@example.org, two@example.org"
msg["Subject"] = "smtplib caf\u00e9"
msg.set_content("Hello from smtplib.\n.a line starting with a dot\nna\u00efve 8-bit text\n")
with smtplib.SMTP("{}", {}) as smtp:
    smtp.ehlo("python.test")
    assert smtp.has_extn("pipelining") and smtp.has_extn("8bitmime")
    refused = smtp.send_message(msg)
    assert refused == {{}}, refused
print("sent")
"#,
        address.ip(),
        address.port()
    );
    python(&script).await;
    eventually("smtplib's message at the sink", || h.sink.count() == 1).await;
    let message = &h.sink.messages()[0];
    assert_eq!(
        message.recipients,
        vec!["one@example.org", "two@example.org"]
    );
    let text = String::from_utf8_lossy(without_trace(&message.data)).into_owned();
    assert!(text.contains(".a line starting with a dot\r\n"), "{text}");
    assert!(text.contains("na\u{ef}ve 8-bit text"), "{text}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_sends_through_the_proxy() {
    let Some(swaks) = tool("swaks") else { return };
    let h = Harness::start().await;
    let output = run(Command::new(swaks)
        .args(["--server", &h.service.smtp_address().to_string()])
        .args([
            "--from",
            "app@example.com",
            "--to",
            "ops@example.org,dev@example.org",
        ])
        .args([
            "--header",
            "Subject: swaks test",
            "--body",
            "first line\n.dot line\nlast line",
        ])
        .args(["--pipeline"]))
    .await;
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{transcript}");
    assert!(
        transcript.contains("<~  250 2.0.0 Ok: queued as ")
            || transcript.contains("<-  250 2.0.0 Ok: queued as "),
        "{transcript}"
    );
    eventually("swaks' message at the sink", || h.sink.count() == 1).await;
    let message = &h.sink.messages()[0];
    assert_eq!(
        message.recipients,
        vec!["ops@example.org", "dev@example.org"]
    );
    let text = String::from_utf8_lossy(without_trace(&message.data)).into_owned();
    assert!(text.contains("Subject: swaks test\r\n"), "{text}");
    assert!(text.contains("\r\n.dot line\r\n"), "{text}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_smtp_sink_as_the_gateway() {
    let Some(smtp_sink) = tool("smtp-sink") else {
        return;
    };
    let dumps = tempfile::tempdir().unwrap();
    let gateway = free_address();
    let mut command = Command::new(smtp_sink);
    if running_as_root() {
        // smtp-sink insists on dropping privileges when started as root.
        command.args(["-u", "root"]);
    }
    let _sink = KillOnDrop(
        command
            .arg("-d")
            .arg(format!("{}/%H%M%S.", dumps.path().display()))
            .arg(gateway.to_string())
            .arg("100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink starts"),
    );
    let spool = tempfile::tempdir().unwrap();
    let service = start(test_config(spool.path(), gateway)).await;
    let mut client = Client::ready(service.smtp_address()).await;
    for n in 0..15 {
        let body = format!("Subject: to postfix {n}\r\n\r\n.leading dot {n}\r\n");
        client
            .accepted("app@example.com", &["a@example.org"], body.as_bytes())
            .await;
    }
    // And five from a real application library, end to end.
    let address = service.smtp_address();
    let script = format!(
        r#"
import smtplib
with smtplib.SMTP("{}", {}) as smtp:
    for n in range(15, 20):
        smtp.sendmail("app@example.com", ["a@example.org"],
                      f"Subject: to postfix {{n}}\r\n\r\n.leading dot {{n}}\r\n")
"#,
        address.ip(),
        address.port()
    );
    python(&script).await;
    let count = || {
        std::fs::read_dir(dumps.path())
            .map(|dir| dir.count())
            .unwrap_or(0)
    };
    eventually("20 messages dumped by smtp-sink", || count() == 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut subjects = Vec::new();
    for entry in std::fs::read_dir(dumps.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(text.contains("X-Mail-Args: <app@example.com>"), "{text}");
        assert!(
            text.contains("by shaper.test (smtp-shaper) with ESMTP"),
            "{text}"
        );
        let subject = text
            .lines()
            .find(|line| line.starts_with("Subject: "))
            .unwrap()
            .to_string();
        let n = subject.rsplit(' ').next().unwrap().to_string();
        assert!(
            text.contains(&format!("\n.leading dot {n}")),
            "unstuffed body: {text}"
        );
        subjects.push(subject);
    }
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 20);
    service.shutdown().await;
}

/// A server process that is stopped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a client program off the async workers, so the service keeps running.
async fn run(command: &mut Command) -> std::process::Output {
    let mut command = std::mem::replace(command, Command::new("true"));
    tokio::task::spawn_blocking(move || command.output().expect("the client program runs"))
        .await
        .unwrap()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The service with STARTTLS on a fresh self-signed certificate.
async fn harness_with_starttls() -> (support::TestCertificate, Harness) {
    let certificate = support::TestCertificate::new();
    let tls = smtp_shaper::config::ServerTlsConfig {
        certificate: certificate.certificate.clone(),
        key: certificate.key.clone(),
        listen: None,
    };
    let h = Harness::with(move |config| config.server.tls = Some(tls)).await;
    (certificate, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_uses_starttls_and_verifies_the_certificate() {
    let (certificate, h) = harness_with_starttls().await;
    let script = format!(
        r#"
import smtplib, ssl
context = ssl.create_default_context(cafile="{}")
with smtplib.SMTP("localhost", {}) as smtp:
    smtp.ehlo("python.test")
    assert smtp.has_extn("starttls")
    smtp.starttls(context=context)
    smtp.ehlo("python.test")
    assert not smtp.has_extn("starttls")
    smtp.sendmail("app@example.com", ["x@example.org"], "Subject: tls\r\n\r\nover TLS\r\n")
print(ssl.OPENSSL_VERSION)
"#,
        certificate.certificate.display(),
        h.service.smtp_address().port()
    );
    python(&script).await;
    eventually("the message at the sink", || h.sink.count() == 1).await;
    let text = String::from_utf8_lossy(&h.sink.messages()[0].data).into_owned();
    assert!(text.contains("with ESMTPS id"), "{text}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_uses_starttls() {
    let Some(swaks) = tool("swaks") else { return };
    let tls_module = Command::new("perl").args(["-MNet::SSLeay", "-e1"]).status();
    if !tls_module.is_ok_and(|status| status.success()) {
        support::skip_without(
            "swaks' TLS module Net::SSLeay",
            "apt-get install libnet-ssleay-perl",
        );
        return;
    }
    let (_certificate, h) = harness_with_starttls().await;
    let output = run(Command::new(swaks)
        .args(["--server", &h.service.smtp_address().to_string()])
        .args(["--from", "app@example.com", "--to", "ops@example.org"])
        .args(["--tls"]))
    .await;
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{transcript}");
    assert!(transcript.contains("TLS started"), "{transcript}");
    eventually("swaks' message at the sink", || h.sink.count() == 1).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_logs_in_as_an_app_over_starttls() {
    let certificate = support::TestCertificate::new();
    let tls = smtp_shaper::config::ServerTlsConfig {
        certificate: certificate.certificate.clone(),
        key: certificate.key.clone(),
        listen: None,
    };
    let h = Harness::with(move |config| {
        config.server.tls = Some(tls);
        config.server.require_auth = true;
        config.apps = vec![smtp_shaper::config::AppConfig {
            name: "portal".into(),
            networks: Vec::new(),
            senders: vec!["portal.example.org".parse().unwrap()],
            priority: 1,
            class: Default::default(),
            unsubscribe: Default::default(),
            dsn: false,
            user: Some("portal".into()),
            password_hash: Some(support::quick_hash("s3cret")),
            max_queue_delay: None,
            expire_after: None,
            notify_delay: None,
        }];
    })
    .await;
    let script = format!(
        r#"
import smtplib, ssl
context = ssl.create_default_context(cafile="{}")
with smtplib.SMTP("localhost", {}) as smtp:
    smtp.starttls(context=context)
    try:
        smtp.login("portal", "wrong")
        raise SystemExit("a wrong password was accepted")
    except smtplib.SMTPAuthenticationError as error:
        assert error.smtp_code == 535, error
    smtp.login("portal", "s3cret")
    try:
        smtp.sendmail("ceo@example.com", ["x@example.org"], "Subject: no\r\n\r\nno\r\n")
        raise SystemExit("a foreign sender was accepted")
    except smtplib.SMTPSenderRefused as error:
        assert error.smtp_code == 550, error
    smtp.sendmail("noreply@portal.example.org", ["x@example.org"], "Subject: yes\r\n\r\nyes\r\n")
"#,
        certificate.certificate.display(),
        h.service.smtp_address().port()
    );
    python(&script).await;
    eventually("the app's message at the sink", || h.sink.count() == 1).await;
    h.shutdown().await;
}
