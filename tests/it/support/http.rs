//! The service's HTTP endpoint (the admin API, /status, /metrics) as the
//! tests ask it.

use std::net::SocketAddr;

use smtp_shaper::telemetry::client::{Answer, request};

/// One request to the HTTP endpoint at `address` (the admin API, /status,
/// /metrics), with the bearer `token` if given.
pub async fn fetch(address: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Answer {
    let (method, path, token) = (
        method.to_string(),
        path.to_string(),
        token.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || {
        request(address, &method, &path, "text/plain", token.as_deref())
    })
    .await
    .unwrap()
    .expect("the endpoint answers")
}

/// The value of the sample `series` (name and labels exactly as exposed)
/// in a /metrics text.
pub fn sample_in(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// The value of `series` in the /metrics of the endpoint at `http`.
pub async fn scrape(http: SocketAddr, series: &str) -> Option<f64> {
    sample_in(&fetch(http, "GET", "/metrics", None).await.body, series)
}

/// `body` read as JSON (an answer of /status, the admin API or
/// Prometheus's API); a test fails on anything else, showing the body.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}
