//! The operators' endpoint over real loopback HTTP: /metrics after relayed,
//! deferred, refused and dead-lettered mail (checked by promtool when it is
//! installed), /status, the health probes, and the queue admin API.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    self, Client, Harness, SilentGateway, eventually, fetch, shaping, start, test_config,
};

const BODY: &[u8] = b"Subject: observed\r\n\r\nhello\r\n";

/// GETs `path` until its body satisfies `wanted` (60 s at most); returns it.
async fn poll(address: SocketAddr, path: &str, wanted: impl Fn(&str) -> bool) -> String {
    for _ in 0..600 {
        let answer = fetch(address, "GET", path, None).await;
        if wanted(&answer.body) {
            return answer.body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never became as wanted");
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(metrics: &str, series: &str) -> f64 {
    support::sample_in(metrics, series)
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// The metric families the issue names, each of which must be exposed.
const REQUIRED: &[&str] = &[
    "smtp_shaper_messages_accepted_total",
    "smtp_shaper_deferrals_total",
    "smtp_shaper_rejections_total",
    "smtp_shaper_messages_relayed_total",
    "smtp_shaper_recipients_relayed_total",
    "smtp_shaper_queue_messages",
    "smtp_shaper_queue_bytes",
    "smtp_shaper_queue_oldest_age_seconds",
    "smtp_shaper_queue_delay_seconds",
    "smtp_shaper_baseline_rate",
    "smtp_shaper_ceiling_rate",
    "smtp_shaper_demand_rate",
    "smtp_shaper_send_rate",
    "smtp_shaper_burst_ratio",
    "smtp_shaper_upstream_latency_seconds",
    "smtp_shaper_upstream_replies_total",
    "smtp_shaper_upstream_connections",
    "smtp_shaper_dead_letters_total",
    "smtp_shaper_spool_fsync_seconds",
    "smtp_shaper_inbound_connections",
    "smtp_shaper_build_info",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_describe_relayed_deferred_refused_and_dead_mail() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(
            "initial_rate = \"1/s\"\nmin_rate = \"1/s\"\nmax_rate = \"1/s\"\nheadroom = 1.0\nburst = 2\nmax_queue_delay = \"5s\"",
        );
    })
    .await;
    h.sink
        .reply_to_rcpt("gone@example.org", "550 5.1.1 no such user");
    let http = h.service.http_address().expect("http is on");
    let mut client = h.client().await;
    // One delivered, one dead-lettered.
    client
        .accepted("app@example.com", &["someone@example.org"], BODY)
        .await;
    client
        .accepted("app@example.com", &["gone@example.org"], BODY)
        .await;
    eventually("both attempted", || h.sink.count() == 1).await;
    // Then the queue fills until admission defers.
    let mut deferred = 0;
    for _ in 0..30 {
        let reply = client
            .offer("app@example.com", "later@example.org", BODY)
            .await;
        if reply.code == 451 {
            deferred += 1;
            break;
        }
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    assert_eq!(deferred, 1, "admission deferred new mail");
    assert_eq!(client.command("DATA").await.code, 503, "a refusal");

    let metrics = poll(http, "/metrics", |metrics| {
        metrics.contains("smtp_shaper_dead_letters_total{gateway=\"primary\"} 1")
    })
    .await;
    for name in REQUIRED {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{metrics}"
        );
    }
    let accepted = sample(
        &metrics,
        "smtp_shaper_messages_accepted_total{app=\"other\",gateway=\"primary\"}",
    );
    assert!(accepted >= 3.0, "{accepted}");
    assert_eq!(
        sample(
            &metrics,
            "smtp_shaper_deferrals_total{gateway=\"primary\",reason=\"queue_delay\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "smtp_shaper_rejections_total{reason=\"sequence\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "smtp_shaper_messages_relayed_total{gateway=\"primary\",result=\"delivered\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "smtp_shaper_messages_relayed_total{gateway=\"primary\",result=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "smtp_shaper_upstream_replies_total{class=\"5xx\",gateway=\"primary\"}"
        ),
        1.0
    );
    assert!(sample(&metrics, "smtp_shaper_queue_messages{gateway=\"primary\"}") <= accepted - 2.0);
    assert_eq!(
        sample(&metrics, "smtp_shaper_ceiling_rate{gateway=\"primary\"}"),
        1.0
    );
    assert!(sample(&metrics, "smtp_shaper_spool_fsync_seconds_count") >= accepted);
    assert_eq!(sample(&metrics, "smtp_shaper_spool_dead_letter_files"), 1.0);
    assert_eq!(sample(&metrics, "smtp_shaper_inbound_connections"), 1.0);
    assert!(!metrics.contains("@example"), "no address in a label");
    promtool_accepts(&metrics);

    let status = fetch(http, "GET", "/status", None).await;
    assert_eq!(status.status, 200);
    let gateway = &support::json(&status.body)["gateways"][0];
    assert_eq!(gateway["name"], "primary", "{}", status.body);
    assert_eq!(gateway["ceiling_rate"], 1.0, "{}", status.body);
    assert_eq!(gateway["deferrals"]["queue_delay"], 1, "{}", status.body);
    assert!(
        status.body.contains("550 5.1.1 no such user"),
        "{}",
        status.body
    );
    assert_eq!(fetch(http, "GET", "/healthz", None).await.status, 200);
    let ready = fetch(http, "GET", "/readyz", None).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(fetch(http, "GET", "/nothing", None).await.status, 404);
    assert_eq!(fetch(http, "POST", "/metrics", None).await.status, 405);
    client.command("QUIT").await;
    h.shutdown().await;
}

/// Each receiver a gateway budgets is on /metrics and /status: its rolling
/// hour and day against its floors, its queue, and whether its own budget
/// holds (from the first minute on a gateway with no history; not yet on
/// one whose `initial_rate` vouches for a history nobody split by
/// receiver). `other` has no floors, so no budget and no series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_budgeted_receiver_is_on_metrics_and_status() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping("min_rate = [\"10/min\", \"60/h\", \"300/day\"]");
        let mut seeded = config.gateways[0].clone();
        seeded.name = "seeded".into();
        seeded.default = false;
        seeded.shaping = shaping(
            "initial_rate = [\"60/min\", \"200/h\", \"2000/day\"]\nmin_rate = [\"10/min\", \"60/h\", \"300/day\"]",
        );
        config.gateways.push(seeded);
    })
    .await;
    let http = h.service.http_address().unwrap();
    let metrics = fetch(http, "GET", "/metrics", None).await.body;
    for (gateway, enforced) in [("primary", 1.0), ("seeded", 0.0)] {
        for receiver in ["google", "microsoft", "yahoo", "apple"] {
            let labels = format!("gateway=\"{gateway}\",receiver=\"{receiver}\"");
            for (window, floor) in [("1h", 20.0), ("24h", 100.0)] {
                let labels = format!("{{{labels},window=\"{window}\"}}");
                let sent = format!("smtp_shaper_receiver_volume_sent{labels}");
                assert_eq!(sample(&metrics, &sent), 0.0);
                let allowance = format!("smtp_shaper_receiver_volume_allowance{labels}");
                assert_eq!(sample(&metrics, &allowance), floor);
            }
            let queued = format!("smtp_shaper_receiver_queued_messages{{{labels}}}");
            assert_eq!(sample(&metrics, &queued), 0.0);
            let held = format!("smtp_shaper_receiver_budget_enforced{{{labels}}}");
            assert_eq!(sample(&metrics, &held), enforced, "{held}");
        }
    }
    assert!(!metrics.contains("receiver=\"other\""), "{metrics}");
    promtool_accepts(&metrics);

    let body = fetch(http, "GET", "/status", None).await.body;
    let status = support::json(&body);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let receivers = |gateway: usize| status["gateways"][gateway]["receivers"].clone();
    // Keyed by name, in the order of the gateway's rules.
    let at = |name: &str| body.find(&format!("\"{name}\":{{\"enforced\"")).unwrap();
    assert!(
        at("google") < at("microsoft") && at("yahoo") < at("apple"),
        "{body}"
    );
    assert_eq!(receivers(0).as_object().unwrap().len(), 4, "{body}");
    let google = &receivers(0)["google"];
    assert_eq!(google["enforced"], true, "{status}");
    assert!(google["held_from"].as_u64().unwrap() <= now, "{status}");
    assert_eq!(google["queued"], 0);
    let day = &google["volume_budgets"]["24h"];
    assert_eq!(
        (&day["sent"], &day["allowance"], &day["left"]),
        (&0.into(), &100.into(), &100.into())
    );
    assert_eq!(google["volume_budgets"]["1h"]["allowance"], 20);
    // Held a week after counting per receiver began.
    let seeded = &receivers(1)["google"];
    assert_eq!(seeded["enforced"], false, "{status}");
    let held_from = seeded["held_from"].as_u64().unwrap();
    assert!(
        held_from > now + 6 * 86_400 && held_from <= now + 7 * 86_400 + 60,
        "{status}"
    );
    h.shutdown().await;
}

/// `promtool check metrics` on a real scrape, when promtool is installed.
fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        support::skip_without("promtool", "apt-get install prometheus");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `reason` labels of `smtp_shaper_rejections_total` as the README, the
/// dashboard and operators' queries know them: a contract written out here,
/// so a reason renamed or lost in the code fails this test.
const REJECTION_REASONS: &[&str] = &[
    "client_denied",
    "too_many_connections",
    "syntax",
    "sequence",
    "auth_required",
    "auth_failed",
    "relay_denied",
    "sender_rejected",
    "too_many_recipients",
    "too_big",
    "bad_content",
    "mail_loop",
    "spool_error",
    "timeout",
    "too_many_errors",
    "tls_unavailable",
    "connection_rate",
    "auth_failure_rate",
    "auth_busy",
    "header_sender",
    "alignment",
    "unsubscribe",
    "other",
];

/// The rejections by reason label, as exposed.
fn rejections(metrics: &str) -> std::collections::BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("smtp_shaper_rejections_total{reason=\""))
        .map(|rest| {
            let (reason, value) = rest.split_once("\"} ").expect("one label");
            (reason.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_is_exported_and_refusals_count_under_their_own() {
    let h = Harness::with(|config| {
        config.server.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
        config.server.max_recipients = 1;
    })
    .await;
    let http = h.service.http_address().unwrap();
    let before = rejections(&fetch(http, "GET", "/metrics", None).await.body);
    let mut exported: Vec<&str> = before.keys().map(String::as_str).collect();
    let mut expected = REJECTION_REASONS.to_vec();
    exported.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        exported, expected,
        "the exported reasons are the contract's"
    );
    assert!(before.values().all(|&count| count == 0.0), "{before:?}");
    // The library's own list is the one exported.
    let labels: Vec<&str> = smtp_shaper::inbound::RefusalReason::ALL
        .iter()
        .map(|reason| reason.as_str())
        .collect();
    assert_eq!(labels, REJECTION_REASONS);

    // Refusals decided in the session, and one in the listener.
    let mut client = h.client().await;
    assert_eq!(client.command("DATA").await.code, 503);
    assert_eq!(client.command("FOO").await.code, 500);
    assert_eq!(client.command("STARTTLS").await.code, 454);
    assert_eq!(
        client
            .command("MAIL FROM:<app@example.com> SIZE=999999999999")
            .await
            .code,
        552
    );
    assert_eq!(
        client.command("MAIL FROM:<app@example.com>").await.code,
        250
    );
    assert_eq!(client.command("RCPT TO:<a@example.org>").await.code, 250);
    assert_eq!(client.command("RCPT TO:<b@example.org>").await.code, 452);
    assert_eq!(client.command("QUIT").await.code, 221);
    let (mut denied, greeting) =
        Client::connect_from("127.0.0.2".parse().unwrap(), h.service.smtp_address()).await;
    assert_eq!(greeting.code, 554, "{greeting:?}");
    assert!(denied.is_closed().await);

    let metrics = poll(http, "/metrics", |metrics| {
        rejections(metrics).get("client_denied") == Some(&1.0)
    })
    .await;
    let after = rejections(&metrics);
    for (reason, count) in &after {
        let wanted = match reason.as_str() {
            "sequence"
            | "syntax"
            | "tls_unavailable"
            | "too_big"
            | "too_many_recipients"
            | "client_denied" => 1.0,
            _ => 0.0,
        };
        assert_eq!(*count, wanted, "{reason} in {after:?}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_holds_lists_shows_deletes_retries_and_requeues() {
    let h = Harness::with(|config| {
        config.gateways[0].retry_initial = Duration::from_secs(3600);
        config.gateways[0].retry_max = Duration::from_secs(3600);
    })
    .await;
    let http = h.service.http_address().unwrap();
    let mut client = h.client().await;

    let held = fetch(http, "POST", "/admin/gateways/primary/hold", None).await;
    assert_eq!(
        (held.status, held.body.as_str()),
        (200, "gateway primary held\n")
    );
    let keep = client
        .accepted("app@example.com", &["keep@example.org"], BODY)
        .await;
    let drop = client
        .accepted("app@example.com", &["drop@example.org"], BODY)
        .await;
    let list = fetch(http, "GET", "/admin/queue", None).await;
    assert_eq!(list.body.lines().count(), 2, "{}", list.body);
    assert!(list.body.contains(&keep) && list.body.contains("<drop@example.org>"));
    let shown = fetch(http, "GET", &format!("/admin/queue/{keep}"), None).await;
    assert!(shown.body.contains("Subject: observed"), "{}", shown.body);
    assert!(shown.body.contains("no delivery attempt yet"));
    let deleted = fetch(http, "DELETE", &format!("/admin/queue/{drop}"), None).await;
    assert_eq!(deleted.body, format!("deleted {drop}\n"));
    let gone = fetch(http, "GET", &format!("/admin/queue/{drop}"), None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(
        fetch(http, "POST", "/admin/gateways/nowhere/hold", None)
            .await
            .status,
        404
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.sink.count(), 0, "nothing leaves a held queue");
    fetch(http, "POST", "/admin/gateways/primary/release", None).await;
    eventually("the kept message is delivered", || h.sink.count() == 1).await;
    assert_eq!(h.sink.messages()[0].recipients, ["keep@example.org"]);

    // A transient refusal waits an hour; the operator retries it now.
    h.sink
        .reply_to_rcpt("later@example.org", "451 4.3.0 try later");
    let later = client
        .accepted("app@example.com", &["later@example.org"], BODY)
        .await;
    poll(http, &format!("/admin/queue/{later}"), |shown| {
        shown.contains("451 4.3.0 try later")
    })
    .await;
    h.sink.clear_rcpt_reply("later@example.org");
    let retried = fetch(http, "POST", &format!("/admin/queue/{later}/retry"), None).await;
    assert_eq!(retried.body, "retried 1 message(s)\n");
    eventually("the retried message is delivered", || h.sink.count() == 2).await;

    // A dead letter goes back into the queue once the cause is fixed.
    h.sink
        .reply_to_rcpt("typo@example.org", "550 5.1.1 no such user");
    client
        .accepted("app@example.com", &["typo@example.org"], BODY)
        .await;
    let dead = poll(http, "/admin/dead", |dead| dead.ends_with(".eml\n")).await;
    h.sink.clear_rcpt_reply("typo@example.org");
    let name = dead.trim();
    let requeued = fetch(http, "POST", &format!("/admin/dead/{name}/requeue"), None).await;
    assert_eq!(requeued.status, 200, "{}", requeued.body);
    eventually("the requeued message is delivered", || h.sink.count() == 3).await;
    let message = &h.sink.messages()[2];
    assert_eq!(message.recipients, ["typo@example.org"]);
    assert!(support::without_trace(&message.data).ends_with(b"hello\r\n"));
    let none = fetch(http, "GET", "/admin/dead", None).await;
    assert_eq!(none.body, "no dead letters\n");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_mail_waiting_for_a_retry_under_its_app() {
    let h = Harness::with(|config| {
        config.gateways[0].retry_initial = Duration::from_secs(3600);
        config.gateways[0].retry_max = Duration::from_secs(3600);
    })
    .await;
    h.sink
        .reply_to_rcpt("later@example.org", "451 4.3.0 try later");
    let http = h.service.http_address().unwrap();
    let mut client = h.client().await;
    client
        .accepted("app@example.com", &["later@example.org"], BODY)
        .await;
    let status = poll(http, "/status", |status| {
        status.contains("451 4.3.0 try later")
            && support::json(status)["gateways"][0]["queue"]["messages"] == 1
    })
    .await;
    let by_app = &support::json(&status)["gateways"][0]["queue"]["by_app"];
    assert_eq!(*by_app, serde_json::json!({"other": 1}), "{status}");
    drop(client);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_ends_a_down_gateways_pause_and_the_list_shows_when_mail_goes() {
    let gateway = support::free_address();
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(spool.path(), gateway);
    let primary = &mut config.gateways[0];
    primary.max_connections = 1;
    primary.retry_initial = Duration::from_secs(3600);
    primary.retry_max = Duration::from_secs(3600);
    let service = start(config).await;
    let http = service.http_address().unwrap();
    let mut client = Client::ready(service.smtp_address()).await;
    let tried = client
        .accepted("app@example.com", &["tried@example.org"], BODY)
        .await;
    poll(http, &format!("/admin/queue/{tried}"), |shown| {
        shown.contains("retry_at=")
    })
    .await;
    // Queued behind the paused gateway, never tried yet.
    let waiting = client
        .accepted("app@example.com", &["waiting@example.org"], BODY)
        .await;
    let list = fetch(http, "GET", "/admin/queue", None).await.body;
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.lines().all(|line| line.contains("retry_at=")),
        "the pause is when both go next: {list}"
    );

    // Retrying one message probes the gateway now (still down: the probe
    // fails and the pause starts again).
    let retried = fetch(http, "POST", &format!("/admin/queue/{waiting}/retry"), None).await;
    assert_eq!(
        (retried.status, retried.body.as_str()),
        (200, "retried 1 message(s)\n")
    );
    poll(http, "/admin/queue", |list| {
        list.lines()
            .all(|line| line.contains("attempts=1 retry_at="))
    })
    .await;

    let sink = support::Sink::start_on(gateway).await;
    let retried = fetch(http, "POST", "/admin/queue/retry", None).await;
    assert_eq!(retried.body, "retried 2 message(s)\n");
    eventually("both delivered", || sink.count() == 2).await;
    drop(client);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_age_grows_through_an_outage() {
    let silent = SilentGateway::start().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(spool.path(), silent.address);
    config.gateways[0].max_connections = 1;
    // Each probe waits this long for a greeting while the other message is
    // queued, its retry come due.
    let timeout = Duration::from_secs(2);
    config.gateways[0].command_timeout = timeout;
    let service = start(config).await;
    let http = service.http_address().unwrap();
    let mut client = Client::ready(service.smtp_address()).await;
    let accepting = std::time::Instant::now();
    for _ in 0..2 {
        client
            .accepted("app@example.com", &["a@example.org"], BODY)
            .await;
    }
    // One of the two may be out on a probe (not queued) while sampled: the
    // other arrived this much later, plus a second of their whole-second
    // arrival times.
    let tolerance = 1.0 + accepting.elapsed().as_secs_f64() + 0.1;
    let series = "smtp_shaper_queue_oldest_age_seconds{gateway=\"primary\"}";
    let mut samples: Vec<f64> = Vec::new();
    let mut highest = 0.0f64;
    while silent.connections() < 4 {
        assert!(samples.len() < 2000, "the probes never came: {samples:?}");
        let age = sample(&fetch(http, "GET", "/metrics", None).await.body, series);
        samples.push(age);
        assert!(
            age >= highest - tolerance,
            "the oldest age fell from {highest} to {age}: {samples:?}"
        );
        highest = highest.max(age);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Three probes each waited out their timeout since the mail arrived.
    assert!(highest >= 2.0 * timeout.as_secs_f64(), "{samples:?}");
    let status = fetch(http, "GET", "/status", None).await.body;
    let in_status = support::json(&status)["gateways"][0]["queue"]["oldest_age_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no oldest age in {status}"));
    assert!(in_status >= highest - tolerance, "{in_status} in {status}");
    drop(client);
    service.shutdown().await;
    silent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_file_the_admin_api_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-admin-token-0123\n").unwrap();
    let h = Harness::with(|config| config.http.admin_token_file = Some(token_file)).await;
    let http = h.service.http_address().unwrap();
    let refused = fetch(http, "GET", "/admin/queue", None).await;
    assert_eq!(refused.status, 401);
    let wrong = fetch(http, "GET", "/admin/queue", Some("guess")).await;
    assert_eq!(wrong.status, 401);
    let allowed = fetch(http, "GET", "/admin/queue", Some("s3cret-admin-token-0123")).await;
    assert_eq!(
        (allowed.status, allowed.body.as_str()),
        (200, "queue is empty\n")
    );
    assert_eq!(
        fetch(http, "GET", "/metrics", None).await.status,
        200,
        "metrics need no token"
    );
    h.shutdown().await;
}

/// `smtp-shaper queue ...` against the service's endpoint.
async fn queue_command(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
            .arg("queue")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_command_talks_to_the_admin_api() {
    let h = Harness::start().await;
    let http = h.service.http_address().unwrap().to_string();
    let run = |words: &[&str]| {
        let mut args = vec!["--http".to_string(), http.clone()];
        args.extend(words.iter().map(|w| w.to_string()));
        queue_command(args)
    };
    let held = run(&["hold", "primary"]).await;
    assert!(held.status.success(), "{held:?}");
    assert_eq!(
        String::from_utf8_lossy(&held.stdout),
        "gateway primary held\n"
    );
    let mut client = h.client().await;
    let id = client
        .accepted("app@example.com", &["cli@example.org"], BODY)
        .await;
    let list = run(&["list", "--gateway", "primary"]).await;
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.starts_with(&id) && listed.contains("<cli@example.org>"),
        "{listed}"
    );
    let shown = run(&["show", &id]).await;
    assert!(String::from_utf8_lossy(&shown.stdout).contains("Subject: observed"));
    let missing = run(&["show", "NOSUCHID"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("(HTTP 404)"));
    let deleted = run(&["delete", &id]).await;
    assert_eq!(
        String::from_utf8_lossy(&deleted.stdout),
        format!("deleted {id}\n")
    );
    assert!(run(&["release", "primary"]).await.status.success());
    let empty = run(&["list"]).await;
    assert_eq!(String::from_utf8_lossy(&empty.stdout), "queue is empty\n");
    client.command("QUIT").await;
    h.shutdown().await;

    let down = queue_command(vec!["--http".into(), http, "list".into()]).await;
    assert_eq!(down.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach smtp-shaper's admin API"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_trace_a_message_by_queue_id_and_message_id() {
    let sink = support::Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = support::free_address();
    let path = support::write_config(dir.path(), listen, sink.address);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[server]", "[server]\nlog_format = \"json\"");
    std::fs::write(&path, text).unwrap();
    let log = dir.path().join("json.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut client = loop {
        if let Some(client) = support::Client::try_ready(listen).await {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let body = b"Message-ID: <trace-me@example.com>\r\nSubject: traced\r\n\r\nhi\r\n";
    let id = client
        .accepted("app@example.com", &["someone@example.org"], body)
        .await;
    eventually("delivered", || sink.count() == 1).await;
    client.command("QUIT").await;
    let finished = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("delivery attempt finished the message")
    };
    eventually("the delivery is logged", finished).await;
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        lines
            .iter()
            .all(|line| line.starts_with('{') && line.ends_with('}')),
        "{lines:?}"
    );
    let about: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(&format!("\"queue_id\":\"{id}\"")))
        .collect();
    assert!(
        about[0].contains("\"message\":\"message accepted\"")
            && about[0].contains("\"message_id\":\"<trace-me@example.com>\""),
        "{about:?}"
    );
    assert!(
        about
            .iter()
            .any(|line| line.contains("\"message\":\"delivery attempt finished the message\"")),
        "{about:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let http = h.service.http_address().unwrap();
    let mut slow = tokio::net::TcpStream::connect(http).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The endpoint closes it (header_read_timeout) instead of waiting forever.
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "the connection was closed by the endpoint");
    // Others are served meanwhile and after.
    assert_eq!(fetch(http, "GET", "/healthz", None).await.status, 200);
    h.shutdown().await;
}

/// A gateway that cannot be reached is noticed at start, before any mail
/// needs it: /readyz names it (and stays 200: mail is still accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_gateway_unreachable_at_start_and_stays_ready() {
    let spool = tempfile::tempdir().unwrap();
    let service = start(test_config(spool.path(), support::free_address())).await;
    let http = service.http_address().unwrap();
    let body = poll(http, "/readyz", |body| body.contains("gateway primary")).await;
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(
        body.contains("gateway primary: not reachable at start ("),
        "{body}"
    );
    assert_eq!(fetch(http, "GET", "/readyz", None).await.status, 200);
    service.shutdown().await;
}
