//! The shipped Grafana dashboard and alert rules against a real Prometheus
//! (Debian's `prometheus`): it scrapes a service that has relayed,
//! deferred and dead-lettered mail, loads `grafana/alerts`, and every
//! dashboard query and alert expression must parse and return series.
//! Also `promtool check rules` / `promtool test rules` on the rule files.
//! Without the tools the tests print SKIPPED (in CI they are required).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use smtp_shaper::telemetry::client::{encode, request};

use crate::support::{self, Harness, eventually, free_address, shaping, skip_without};

const BODY: &[u8] = b"Subject: scraped\r\n\r\nhello\r\n";

fn grafana(path: &str) -> String {
    format!("{}/grafana/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        skip_without(tool, "apt-get install prometheus");
    }
    found
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    if !have("promtool") {
        return;
    }
    let check = Command::new("promtool")
        .args(["check", "rules", &grafana("alerts/smtp-shaper.rules.yml")])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let tests: Vec<String> = std::fs::read_dir(grafana("alerts/tests"))
        .unwrap()
        .map(|entry| entry.unwrap().path().display().to_string())
        .filter(|path| path.ends_with(".test.yml"))
        .collect();
    let rules = std::fs::read_to_string(grafana("alerts/smtp-shaper.rules.yml")).unwrap();
    assert_eq!(
        tests.len(),
        rules.matches("  - name: ").count(),
        "one test file per rule group"
    );
    let run = Command::new("promtool")
        .args(["test", "rules"])
        .args(&tests)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // Every alert in the rules file has a test that expects it to fire.
    let tested: String = tests
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    for alert in rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
    {
        assert!(
            tested.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "{alert} has no firing test"
        );
    }
}

/// Every `"expr"` string of the dashboard JSON, at any depth (panels,
/// rows, template variables).
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    match dashboard {
        Value::Object(fields) => fields
            .iter()
            .flat_map(|(key, value)| match (key.as_str(), value) {
                ("expr", Value::String(query)) => vec![query.clone()],
                _ => dashboard_queries(value),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(dashboard_queries).collect(),
        _ => Vec::new(),
    }
}

/// Grafana's variables as a user with "All" gateways would see them.
fn as_grafana_sends(query: &str) -> String {
    query
        .replace("$gateway", ".*")
        .replace("$__rate_interval", "30s")
}

/// The Prometheus API's answer to an instant query: (success, has series).
fn query(prometheus: SocketAddr, expr: &str) -> (bool, bool, String) {
    let answer = request(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={}", encode(expr)),
        "application/json",
        None,
    )
    .expect("prometheus answers");
    let reply = support::json(&answer.body);
    let ok = answer.status == 200 && reply["status"] == "success";
    let series = ok
        && reply["data"]["result"]
            .as_array()
            .is_some_and(|result| !result.is_empty());
    (ok, series, answer.body)
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &Path, target: SocketAddr, listen: SocketAddr) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: smtp-shaper\n    static_configs:\n      - targets: [\"{target}\"]\n",
            grafana("alerts/smtp-shaper.rules.yml")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus(child)
}

/// A Prometheus scraping `target`, once it answers; with its address.
async fn ready_prometheus(dir: &Path, target: SocketAddr) -> (Prometheus, SocketAddr) {
    let listen = free_address();
    let prometheus = start_prometheus(dir, target, listen);
    let ready =
        || request(listen, "GET", "/-/ready", "text/plain", None).is_ok_and(|a| a.status == 200);
    eventually("prometheus is ready", ready).await;
    (prometheus, listen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_evaluates_every_dashboard_query_and_alert_expression() {
    if !have("prometheus") {
        return;
    }
    // In cluster mode, so the cluster panels and alert have series too.
    let Some(redis) = support::Redis::start(support::free_address().port()) else {
        return;
    };
    let h = Harness::with(|config| {
        config.cluster = Some(smtp_shaper::config::ClusterConfig {
            redis: format!("redis://127.0.0.1:{}/0", redis.port),
            node: "test".into(),
            password_file: None,
            password_env: None,
                ca_file: None,
            expected_nodes: 1,
            timeout: Duration::from_millis(250),
        });
        config.gateways[0].shaping = shaping(
            "initial_rate = \"2/s\"\nmin_rate = [\"2/s\", \"1000/h\", \"10000/day\"]\nmax_rate = \"2/s\"\nheadroom = 1.0\nburst = 2\nmax_queue_delay = \"3s\"",
        );
        config.gateways[0].retry_initial = Duration::from_secs(3600);
    })
    .await;
    h.sink
        .reply_to_rcpt("gone@example.org", "550 5.1.1 no such user");
    let mut client = h.client().await;
    client
        .accepted("app@example.com", &["gone@example.org"], BODY)
        .await;
    let mut deferred = false;
    for _ in 0..40 {
        let reply = client
            .offer("app@example.com", "someone@example.org", BODY)
            .await;
        deferred |= reply.code == 451;
        if deferred {
            break;
        }
    }
    assert!(deferred, "admission deferred some mail");
    assert_eq!(client.command("DATA").await.code, 503);

    let dir = tempfile::tempdir().unwrap();
    let (_prometheus, listen) =
        ready_prometheus(dir.path(), h.service.http_address().unwrap()).await;
    // Enough scrapes for rate() over 30 s windows, after the deliveries.
    eventually("everything was delivered or dead-lettered", || {
        h.sink.count() >= 3
    })
    .await;
    let settled = tokio::task::spawn_blocking(move || {
        for _ in 0..600 {
            let (_, series, _) = query(
                listen,
                "count_over_time(smtp_shaper_dead_letters_total{gateway=\"primary\"}[1m]) >= 8 and smtp_shaper_dead_letters_total > 0",
            );
            if series {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    })
    .await
    .unwrap();
    assert!(
        settled,
        "prometheus scraped the service (see {}/prometheus.log)",
        dir.path().display()
    );

    let dashboard = std::fs::read_to_string(grafana("dashboards/smtp-shaper.json")).unwrap();
    let queries = dashboard_queries(&support::json(&dashboard));
    assert!(queries.len() >= 25, "{} queries", queries.len());
    let rules = std::fs::read_to_string(grafana("alerts/smtp-shaper.rules.yml")).unwrap();
    let alerts: Vec<String> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr: "))
        .map(str::to_string)
        .collect();
    assert_eq!(alerts.len(), 13);
    let failures = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        for expr in &queries {
            let expr = as_grafana_sends(expr);
            let (ok, series, body) = query(listen, &expr);
            if !(ok && series) {
                failures.push(format!("dashboard: {expr}\n  -> {body}"));
            }
        }
        for expr in &alerts {
            // The whole expression must parse; its series part (before the
            // threshold) must return series from the live scrape.
            let (ok, _, body) = query(listen, expr);
            let (series_part, _) = expr
                .rsplit_once([' '])
                .and_then(|(left, _)| left.rsplit_once(' '))
                .expect("<series> <op> <threshold>");
            let (_, series, series_body) = query(listen, series_part);
            if !ok || !series {
                failures.push(format!("alert: {expr}\n  -> {body}\n  -> {series_body}"));
            }
        }
        failures
    })
    .await
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let rules = request(listen, "GET", "/api/v1/rules", "application/json", None).unwrap();
    let healthy = support::json(&rules.body)["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter(|rule| rule["health"] == "ok")
        .count();
    assert_eq!(healthy, 13, "{}", rules.body);
    client.command("QUIT").await;
    h.shutdown().await;
}

/// A burst that admission is deferring still fires the burst alert: demand
/// counts the deferred offers (each envelope once), so the burst ratio a
/// real Prometheus scrapes is far above the alert's threshold, and the
/// alert goes pending (it fires after its `for: 5m`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_burst_makes_a_real_prometheus_raise_the_burst_alert() {
    if !have("prometheus") {
        return;
    }
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(
            "initial_rate = \"6/min\"\nmin_rate = \"6/min\"\nmax_rate = \"6/min\"\nheadroom = 1.0\nburst = 1\nmax_queue_delay = \"30s\"",
        );
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_prometheus, listen) =
        ready_prometheus(dir.path(), h.service.http_address().unwrap()).await;
    // An app offering new mail all along, most of it deferred; Prometheus
    // evaluates the rules every second meanwhile.
    let mut deferred = 0;
    let mut pending = false;
    for round in 0..60 {
        let mut client = h.client().await;
        for index in 0..5 {
            let reply = client
                .offer(
                    "app@example.com",
                    &format!("user{round}-{index}@example.org"),
                    BODY,
                )
                .await;
            deferred += usize::from(reply.code == 451);
        }
        client.command("QUIT").await;
        let alerts = tokio::task::spawn_blocking(move || {
            request(listen, "GET", "/api/v1/alerts", "application/json", None)
        })
        .await
        .unwrap()
        .unwrap();
        let burst_pending = support::json(&alerts.body)["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|alert| {
                alert["labels"]["alertname"] == "SmtpShaperBurstAnomaly"
                    && alert["state"] == "pending"
            });
        if burst_pending {
            pending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(deferred > 10, "the burst was deferred ({deferred})");
    assert!(pending, "SmtpShaperBurstAnomaly never went pending");
    h.shutdown().await;
}
