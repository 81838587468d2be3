//! The Exchange Online profile (config/exchange-online.toml) against a sink
//! that speaks like Exchange: STARTTLS, AUTH XOAUTH2 with a token from a
//! local HTTPS token endpoint, and its replies, each read the way the
//! profile documents.

use std::path::Path;

use smtp_shaper::Service;
use smtp_shaper::config::{AuthMechanism, Config, HttpsUrl, TokenSource};

use crate::support::{
    Client, Sink, TestCertificate, TokenEndpoint, eventually, start, xoauth2_string,
};

/// The profile with the real service's address, name, CA, token endpoint
/// and secret swapped for the sink's and the local endpoint's, retries and
/// pauses shortened.
async fn profile_against(
    sink: &Sink,
    endpoint: &TokenEndpoint,
    certificate: &TestCertificate,
    dir: &Path,
) -> Service {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "entra-client-secret\n").unwrap();
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/exchange-online.toml");
    let mut config = Config::load(&profile).expect("the profile is valid");
    assert_eq!(config.server.max_recipients, 500);
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    // Two of these run at once: no fixed metrics port.
    config.http.listen = None;
    config.spool.dir = dir.join("spool");
    let gateway = &mut config.gateways[0];
    gateway.address = sink.address.to_string();
    gateway.tls_ca_file = Some(certificate.certificate.clone());
    gateway.tls_server_name = Some("localhost".into());
    let auth = gateway.auth.as_mut().unwrap();
    let AuthMechanism::XOAuth2(TokenSource::ClientCredentials(grant)) = &mut auth.mechanism else {
        panic!("the profile logs in with the client-credentials grant");
    };
    assert_eq!(grant.scope, "https://outlook.office365.com/.default");
    grant.token_url = HttpsUrl::parse(&endpoint.url).unwrap();
    grant.client_secret_file = secret;
    grant.ca_file = Some(certificate.certificate.clone());
    gateway.retry_initial = std::time::Duration::from_millis(100);
    gateway.retry_max = std::time::Duration::from_millis(200);
    gateway.shaping.backoff_pause = std::time::Duration::from_millis(200);
    // Room under the ceiling for a throttling cut (it never goes under
    // min_rate).
    gateway.shaping.initial_rate = 10.0;
    gateway.shaping.min_rate = 1.0;
    gateway.shaping.max_rate = 10.0;
    assert_eq!(gateway.max_connections, 3);
    assert_eq!(gateway.shaping.limits.len(), 2);
    start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_replies_are_read_right() {
    let certificate = TestCertificate::new();
    let endpoint = TokenEndpoint::start(&certificate).await;
    let sink = Sink::start_tls(&certificate, false).await;
    sink.behavior.lock().unwrap().xoauth2 =
        Some(("notifications@example.com".into(), vec!["at-1-Zq8v".into()]));
    // The next attempt's reply at the end of DATA (then 250 again).
    let next_reply = |reply: &str| {
        sink.behavior
            .lock()
            .unwrap()
            .data_replies
            .push_back(reply.to_string())
    };
    let dir = tempfile::tempdir().unwrap();
    let service = profile_against(&sink, &endpoint, &certificate, dir.path()).await;

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
    assert_eq!(
        sink.behavior.lock().unwrap().xoauth2_seen[0],
        xoauth2_string("notifications@example.com", "at-1-Zq8v")
    );
    let request = &endpoint.requests()[0];
    assert_eq!(
        request.form.get("client_secret").map(String::as_str),
        Some("entra-client-secret")
    );

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
    let spool = dir.path().join("spool");
    eventually("dead-lettered", || {
        crate::support::dead_letters(&spool).len() == 1
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
    assert_eq!(crate::support::dead_letters(&spool).len(), 1);
    drop(client);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_external_recipient_limit_holds_mail() {
    let certificate = TestCertificate::new();
    let endpoint = TokenEndpoint::start(&certificate).await;
    let sink = Sink::start_tls(&certificate, false).await;
    sink.behavior.lock().unwrap().xoauth2 =
        Some(("notifications@example.com".into(), vec!["at-1-Zq8v".into()]));
    // Exchange answers the external recipient at RCPT once the tenant's
    // day is used up.
    sink.reply_to_rcpt(
        "far@example.org",
        "550 5.7.233 Your message can't be sent because your tenant has exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit)",
    );
    let dir = tempfile::tempdir().unwrap();
    let service = profile_against(&sink, &endpoint, &certificate, dir.path()).await;
    let mut client = Client::ready(service.smtp_address()).await;
    client
        .accepted(
            "notifications@example.com",
            &["far@example.org"],
            b"Subject: terrl\r\n\r\nx\r\n",
        )
        .await;
    eventually("held for the day window", || {
        service.shaping("exchange-online").unwrap().model.paused_for > 80_000.0
    })
    .await;
    assert_eq!(service.queued("exchange-online"), 1, "held, not bounced");
    let dead = dir.path().join("spool/dead");
    assert_eq!(
        std::fs::read_dir(&dead).map(|d| d.count()).unwrap_or(0),
        0,
        "no dead letter"
    );
    drop(client);
    service.shutdown().await;
}
