//! The Exchange Online profile (config/exchange-online.toml) against a sink
//! that speaks like Exchange: STARTTLS, AUTH, and its replies, each read the
//! way the profile documents.

mod support;

use std::path::Path;

use smtp_shaper::config::{AuthMechanism, Config, SecretSource};
use support::{Client, Sink, TestCertificate, eventually, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_replies_are_read_right() {
    let certificate = TestCertificate::new();
    let sink = Sink::start_tls(&certificate, false).await;
    sink.behavior.lock().unwrap().login = Some(("notifications@example.com".into(), "pa55".into()));
    // The next attempt's reply at the end of DATA (then 250 again).
    let next_reply = |reply: &str| {
        sink.behavior
            .lock()
            .unwrap()
            .data_replies
            .push_back(reply.to_string())
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "pa55\n").unwrap();

    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/exchange-online.toml");
    let mut config = Config::load(&profile).expect("the profile is valid");
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.spool.dir = dir.path().join("spool");
    let gateway = &mut config.gateways[0];
    // The real service's address, name, CA and secret are swapped for the sink's.
    gateway.address = sink.address.to_string();
    gateway.tls_ca_file = Some(certificate.certificate.clone());
    gateway.tls_server_name = Some("localhost".into());
    gateway.auth.as_mut().unwrap().mechanism = AuthMechanism::Password(SecretSource::File(secret));
    gateway.retry_initial = std::time::Duration::from_millis(100);
    gateway.retry_max = std::time::Duration::from_millis(200);
    gateway.shaping.backoff_pause = std::time::Duration::from_millis(200);
    gateway.shaping.min_rate = 10.0;
    gateway.shaping.max_rate = 10.0;
    assert_eq!(gateway.max_connections, 3);
    assert_eq!(gateway.shaping.limits.len(), 2);
    let service = start(config).await;

    let mut client = Client::ready(service.smtp_address()).await;
    // First: throttled (451 4.7.500), retried after the pause, delivered.
    next_reply("451 4.7.500 Server busy. Please try again later from [127.0.0.1]. (AS770)");
    client
        .accepted(
            "notifications@example.com",
            &["a@example.org"],
            b"Subject: 1\r\n\r\n1\r\n",
        )
        .await;
    eventually("throttled", || {
        service.shaping("exchange-online").unwrap().model.penalty < 1.0
    })
    .await;
    eventually("the first delivered after the pause", || sink.count() == 1).await;
    let first = &sink.messages()[0];
    assert!(first.tls, "over STARTTLS");
    assert_eq!(first.login.as_deref(), Some("notifications@example.com"));

    // Second: the IP is blocked (5.7.708): a dead letter, and an operator log.
    next_reply(
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
    );
    client
        .accepted(
            "notifications@example.com",
            &["b@example.org"],
            b"Subject: 2\r\n\r\n2\r\n",
        )
        .await;
    let dead = dir.path().join("spool/dead");
    eventually("dead-lettered", || {
        std::fs::read_dir(&dead).map(|d| d.count()).unwrap_or(0) == 1
    })
    .await;

    // Third: the daily quota is used up (554 5.2.0): held, not bounced.
    next_reply("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException");
    client
        .accepted(
            "notifications@example.com",
            &["c@example.org"],
            b"Subject: 3\r\n\r\n3\r\n",
        )
        .await;
    eventually("held for the quota window", || {
        service.shaping("exchange-online").unwrap().model.paused_for > 80_000.0
    })
    .await;
    assert_eq!(
        service.queued("exchange-online"),
        1,
        "still queued, not bounced"
    );
    assert_eq!(std::fs::read_dir(&dead).unwrap().count(), 1);
    drop(client);
    service.shutdown().await;
}
