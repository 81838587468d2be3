//! Apps that log in (AUTH PLAIN and LOGIN over STARTTLS), relay rule 2
//! (each app sends only from its own senders), and the refusals around them.

use smtp_shaper::config::units::parse_allowance;
use smtp_shaper::config::{AppConfig, ServerTlsConfig};

use crate::support::{self, Client, Harness, Talk, TestCertificate, eventually, fetch, quick_hash};

const SENDER: &str = "noreply@portal.example.org";

fn portal() -> AppConfig {
    AppConfig {
        name: "portal".into(),
        networks: Vec::new(),
        senders: vec![SENDER.parse().unwrap()],
        priority: 1,
        class: Default::default(),
        unsubscribe: Default::default(),
        dsn: false,
        user: Some("portal".into()),
        password_hash: Some(quick_hash("s3cret")),
        max_queue_delay: None,
        expire_after: None,
        notify_delay: None,
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64ct::Encoding;
    base64ct::Base64::encode_string(bytes)
}

/// The service with STARTTLS, one app that logs in, and AUTH required.
async fn harness(certificate: &TestCertificate, plaintext_on_loopback: bool) -> Harness {
    let tls = ServerTlsConfig {
        certificate: certificate.certificate.clone(),
        key: certificate.key.clone(),
        listen: None,
    };
    Harness::with(move |config| {
        config.server.tls = Some(tls);
        config.server.require_auth = true;
        config.server.plaintext_auth_on_loopback = plaintext_on_loopback;
        config.apps = vec![portal()];
    })
    .await
}

/// A client over TLS after STARTTLS, having said EHLO; returns its EHLO lines.
async fn tls_client(h: &Harness, certificate: &TestCertificate) -> (Talk, Vec<String>) {
    let mut plain = Client::ready(h.service.smtp_address()).await;
    assert_eq!(plain.command("STARTTLS").await.code, 220);
    let mut client = certificate.talk(Box::new(plain.into_stream())).await;
    let (code, lines) = client.command("EHLO app.test").await;
    assert_eq!(code, 250);
    (client, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_needs_tls_and_mail_needs_auth() {
    let certificate = TestCertificate::new();
    let h = harness(&certificate, false).await;
    let mut client = Client::ready(h.service.smtp_address()).await;
    let ehlo = client.command("EHLO app.test").await;
    assert_eq!(ehlo.code, 250);
    let auth = client
        .command(&format!("AUTH PLAIN {}", base64(b"\0portal\0s3cret")))
        .await;
    assert_eq!((auth.code, &auth.text[..6]), (538, "5.7.11"), "{auth:?}");
    let mail = client.command(&format!("MAIL FROM:<{SENDER}>")).await;
    assert_eq!(
        (mail.code, mail.text.as_str()),
        (530, "5.7.0 Authentication required")
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_logs_in_over_tls_and_may_send_only_as_itself() {
    let certificate = TestCertificate::new();
    let h = harness(&certificate, false).await;
    let (mut client, ehlo) = tls_client(&h, &certificate).await;
    assert!(
        ehlo.iter().any(|line| line == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    let wrong = client
        .command(&format!("AUTH PLAIN {}", base64(b"\0portal\0guess")))
        .await;
    assert_eq!(
        wrong,
        (535, vec!["5.7.8 Authentication credentials invalid".into()])
    );
    let right = client
        .command(&format!("AUTH PLAIN {}", base64(b"\0portal\0s3cret")))
        .await;
    assert_eq!(right.0, 235);
    assert_eq!(client.command("AUTH PLAIN =").await.0, 503, "only once");
    let (code, text) = client.command("MAIL FROM:<ceo@example.com>").await;
    assert_eq!(code, 550);
    assert!(
        text[0].starts_with("5.7.1 Sender <ceo@example.com> is not allowed for app portal")
            && text[0].contains("relay rule 2"),
        "{text:?}"
    );
    assert_eq!(
        client.command(&format!("MAIL FROM:<{SENDER}>")).await.0,
        250
    );
    assert_eq!(client.command("RCPT TO:<user@example.org>").await.0, 250);
    assert_eq!(client.command("DATA").await.0, 354);
    let (code, _) = client.command("Subject: hi\r\n\r\nhello\r\n.").await;
    assert_eq!(code, 250);
    eventually("delivered", || h.sink.count() == 1).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_login_exchange_and_cancel() {
    let certificate = TestCertificate::new();
    let h = harness(&certificate, false).await;
    let (mut client, _) = tls_client(&h, &certificate).await;
    assert_eq!(
        client.command("AUTH LOGIN").await,
        (334, vec!["VXNlcm5hbWU6".into()])
    );
    assert_eq!(client.command("*").await.0, 501, "cancelled");
    assert_eq!(client.command("AUTH CRAM-MD5").await.0, 504);
    assert_eq!(client.command("AUTH LOGIN").await.0, 334);
    assert_eq!(
        client.command(&base64(b"portal")).await,
        (334, vec!["UGFzc3dvcmQ6".into()])
    );
    assert_eq!(client.command(&base64(b"s3cret")).await.0, 235);
    assert_eq!(
        client.command(&format!("MAIL FROM:<{SENDER}>")).await.0,
        250
    );
    drop(client);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_auth_only_on_a_loopback_listener_when_configured() {
    let certificate = TestCertificate::new();
    let h = harness(&certificate, true).await;
    let mut client = Client::ready(h.service.smtp_address()).await;
    let auth = client
        .command(&format!("AUTH PLAIN {}", base64(b"\0portal\0s3cret")))
        .await;
    assert_eq!(auth.code, 235, "{auth:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_3_a_sender_the_gateway_does_not_know_is_refused() {
    use smtp_shaper::policy::senders::Verdict;
    const GHOST: &str = "ghost@portal.example.org";
    // The gateway knows the noreply address, not the ghost.
    let sink = support::Sink::start().await;
    sink.reply_to_rcpt(GHOST, "550 5.1.1 <ghost@portal.example.org>: User unknown");
    let spool = tempfile::tempdir().unwrap();
    let mut config = support::test_config(spool.path(), sink.address);
    config.gateways[0].verify_senders = true;
    config.apps = vec![AppConfig {
        name: "portal".into(),
        networks: vec!["127.0.0.0/8".parse().unwrap()],
        senders: vec![SENDER.parse().unwrap(), GHOST.parse().unwrap()],
        priority: 1,
        class: Default::default(),
        unsubscribe: Default::default(),
        dsn: false,
        user: None,
        password_hash: None,
        max_queue_delay: None,
        expire_after: None,
        notify_delay: None,
    }];
    let service = support::start(config).await;
    eventually("both senders checked", || {
        service.sender_checks().len() == 2
    })
    .await;
    let checks = service.sender_checks();
    assert_eq!(checks[0].0, GHOST);
    assert!(matches!(&checks[0].1, Verdict::Missing(reply) if reply.starts_with("550 5.1.1")));
    assert_eq!(
        (checks[1].0.as_str(), &checks[1].1),
        (SENDER, &Verdict::Exists)
    );

    let mut client = Client::ready(service.smtp_address()).await;
    let refused = client.command(&format!("MAIL FROM:<{GHOST}>")).await;
    assert_eq!(refused.code, 550);
    assert!(
        refused
            .text
            .starts_with("5.1.0 Sender <ghost@portal.example.org> does not exist")
            && refused.text.contains("relay rule 3"),
        "{refused:?}"
    );
    assert_eq!(
        client.command(&format!("MAIL FROM:<{SENDER}>")).await.code,
        250
    );
    assert_eq!(
        *sink.data_attempts.lock().unwrap(),
        0,
        "probes never send a message"
    );
    drop(client);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_up_auth_failures_close_with_421_without_checking_the_password() {
    let h = Harness::with(|config| {
        config.server.plaintext_auth_on_loopback = true;
        config.server.client_auth_failures = parse_allowance("2/h").unwrap();
        config.apps = vec![portal()];
    })
    .await;
    let address = h.service.smtp_address();
    let wrong = format!("AUTH PLAIN {}", base64(b"\0portal\0wrong"));
    let right = format!("AUTH PLAIN {}", base64(b"\0portal\0s3cret"));
    let mut client = Client::ready(address).await;
    for _ in 0..2 {
        assert_eq!(client.command(&wrong).await.code, 535);
    }
    let third = client.command(&wrong).await;
    assert_eq!((third.code, &third.text[..5]), (421, "4.7.0"), "{third:?}");
    assert!(third.text.contains("authentication failures"), "{third:?}");
    assert!(client.is_closed().await);

    // Now even the right password from that address is refused, unchecked.
    let mut again = Client::ready(address).await;
    let refused = again.command(&right).await;
    assert_eq!((refused.code, &refused.text[..5]), (421, "4.7.0"));
    assert!(again.is_closed().await);
    // Another address logs in.
    let mut other = Client::ready_from("127.0.0.2".parse().unwrap(), address).await;
    assert_eq!(other.command(&right).await.code, 235);

    let metrics = fetch(h.service.http_address().unwrap(), "GET", "/metrics", None)
        .await
        .body;
    for expected in [
        // Three wrong passwords checked, the refused right one not.
        "smtp_shaper_auth_attempts_total{result=\"failure\"} 3\n",
        "smtp_shaper_auth_attempts_total{result=\"success\"} 1\n",
        "smtp_shaper_rejections_total{reason=\"auth_failure_rate\"} 2\n",
    ] {
        assert!(metrics.contains(expected), "{expected} in {metrics}");
    }
    h.shutdown().await;
}

/// Logging in protects the app's senders even where no one must log in
/// (`require_auth = false`, the default): its senders need its login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_senders_need_its_login_even_when_auth_is_not_required() {
    let certificate = TestCertificate::new();
    let tls = ServerTlsConfig {
        certificate: certificate.certificate.clone(),
        key: certificate.key.clone(),
        listen: None,
    };
    let h = Harness::with(move |config| {
        config.server.tls = Some(tls);
        config.apps = vec![portal()];
    })
    .await;
    let mut client = Client::ready(h.service.smtp_address()).await;
    let mail = client.command(&format!("MAIL FROM:<{SENDER}>")).await;
    assert_eq!(mail.code, 530, "{mail:?}");
    assert!(
        mail.text
            .starts_with("5.7.0 Authentication required: sender <noreply@portal.example.org> belongs to app portal"),
        "{mail:?}"
    );
    assert_eq!(client.command("RSET").await.code, 250);
    // Another sender is not the app's: relayed as `other`, as before.
    let reply = client
        .offer(
            "alerts@ops.example.net",
            "x@example.org",
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(reply.code, 250, "{reply:?}");
    // Logged in, the app sends as itself.
    let (mut tls_talk, _) = tls_client(&h, &certificate).await;
    let (code, _) = tls_talk
        .command(&format!("AUTH PLAIN {}", base64(b"\0portal\0s3cret")))
        .await;
    assert_eq!(code, 235);
    let (code, lines) = tls_talk.command(&format!("MAIL FROM:<{SENDER}>")).await;
    assert_eq!(code, 250, "{lines:?}");
    h.shutdown().await;
}
