//! The operators' HTTP endpoint (`[http] listen`, hyper 1, HTTP/1.1):
//!
//! - `GET /metrics`: Prometheus text format;
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness);
//! - `GET /readyz`: 200 when the spool takes a write and the service is not
//!   stopping, else 503 with the reason (readiness: send no mail here now);
//!   a gateway not reachable at start is said there, still 200;
//! - `GET /status`: JSON per gateway (baseline, ceiling, demand, queue,
//!   backoff, recent upstream replies) and the sender checks;
//! - `/admin/...`: the queue admin API (see `admin_route`); answered to
//!   loopback clients only, unless `admin_token_file` is set, in which case
//!   every admin request needs `Authorization: Bearer <token>`.
//!
//! Admin answers are JSON, or plain text lines for `Accept: text/plain`
//! (what the `smtp-shaper queue` command asks for).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::json;
use super::{AdminError, Listing, Metrics, Page, QueuedDetail, QueuedSummary, Queues, RetryReport};
use crate::policy::senders::{SenderChecks, Verdict};
use crate::shutdown::Shutdown;
use crate::spool::Spool;

/// Everything the endpoint reads.
pub struct Endpoint<Q> {
    pub metrics: Arc<Metrics>,
    pub queues: Q,
    pub spool: Spool,
    pub senders: Arc<SenderChecks>,
    /// The bearer token admin requests must carry, when configured.
    pub admin_token: Option<String>,
    pub shutdown: Shutdown,
}

type Reply = Response<Full<Bytes>>;

/// Most HTTP connections served at once; more are closed at once (a
/// scraper, a few probes and an operator need a handful).
const MAX_CONNECTIONS: usize = 64;

/// A client must send a request's headers within this long (also the most
/// an idle kept-alive connection is held), so slow clients cannot pin
/// connections.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP on `listener` until the service stops.
pub async fn serve<Q: Queues>(listener: TcpListener, endpoint: Arc<Endpoint<Q>>) {
    let mut shutdown = endpoint.shutdown.clone();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.stopped() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, limit = MAX_CONNECTIONS, "HTTP connection refused: too many open");
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(route(&endpoint, peer, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(client = %peer, %error, "HTTP connection ended with an error");
            }
        });
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    respond(status, "text/plain; charset=utf-8", body.into())
}

fn json(status: StatusCode, body: String) -> Reply {
    respond(status, "application/json", body)
}

async fn route<Q: Queues>(
    endpoint: &Endpoint<Q>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Reply {
    let path = request.uri().path().to_string();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/metrics") => metrics(endpoint),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readiness(endpoint),
        (&Method::GET, "/status") => json(StatusCode::OK, status(endpoint)),
        (_, admin) if admin.starts_with("/admin/") => {
            if let Some(refusal) = refusal(endpoint, peer, &request) {
                return refusal;
            }
            let plain = request
                .headers()
                .get("accept")
                .and_then(|value| value.to_str().ok())
                .is_some_and(|accept| accept.starts_with("text/plain"));
            let query = request.uri().query().unwrap_or("").to_string();
            let method = request.method().clone();
            // Admin requests carry no body; drain whatever came.
            let _ = request.into_body().collect().await;
            let answer = admin_route(endpoint, &method, &path, &query).await;
            tracing::info!(client = %peer, %method, %path, ok = answer.is_ok(), "admin request");
            match answer {
                Ok(answer) if plain => text(StatusCode::OK, answer.text),
                Ok(answer) => json(StatusCode::OK, answer.json),
                Err(error) => {
                    let status = match error {
                        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
                        AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
                        AdminError::Conflict(_) => StatusCode::CONFLICT,
                        AdminError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    if plain {
                        text(status, format!("{error}\n"))
                    } else {
                        json(status, json::single("error", error.to_string()))
                    }
                }
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/status") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET here\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz, /status or /admin/queue\n",
        ),
    }
}

fn metrics<Q: Queues>(endpoint: &Endpoint<Q>) -> Reply {
    let statuses = endpoint.queues.statuses();
    let checks = endpoint.senders.all();
    let missing = checks
        .iter()
        .filter(|(_, verdict, _)| matches!(verdict, Verdict::Missing(_)))
        .count();
    endpoint.metrics.observe(
        &statuses,
        &[("exists", checks.len() - missing), ("missing", missing)],
        endpoint.spool.free_bytes().ok(),
        endpoint.spool.dead_letter_count().unwrap_or(0),
    );
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        endpoint.metrics.render(),
    )
}

fn readiness<Q: Queues>(endpoint: &Endpoint<Q>) -> Reply {
    if endpoint.shutdown.is_stopping() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
    }
    match endpoint.spool.check_writable() {
        Ok(()) => {
            // Mail for an unreachable gateway is still taken (and queued):
            // said, not a reason to be unready.
            let mut body = "ready\n".to_string();
            for (gateway, failure) in endpoint.queues.unreachable_at_start() {
                body.push_str(&format!(
                    "gateway {gateway}: not reachable at start ({failure}); mail is accepted and queued, deliveries retry\n"
                ));
            }
            text(StatusCode::OK, body)
        }
        Err(error) => {
            tracing::warn!(%error, "not ready: the spool cannot be written");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("spool not writable: {error}\n"),
            )
        }
    }
}

fn status<Q: Queues>(endpoint: &Endpoint<Q>) -> String {
    let statuses = endpoint.queues.statuses();
    let checks = endpoint.senders.all();
    json::to_text(&json::Status {
        version: env!("CARGO_PKG_VERSION"),
        ready: !endpoint.shutdown.is_stopping(),
        gateways: statuses.iter().map(json::Gateway::new).collect(),
        sender_checks: checks
            .iter()
            .map(|(address, verdict, at)| json::SenderCheck::new(address, verdict, *at))
            .collect(),
    })
}

/// The refusal of an admin request: it must come from a loopback client,
/// or carry the bearer token when one is configured.
fn refusal<Q>(
    endpoint: &Endpoint<Q>,
    peer: SocketAddr,
    request: &Request<Incoming>,
) -> Option<Reply> {
    match &endpoint.admin_token {
        Some(token) => {
            let offered = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .unwrap_or("");
            if equal_in_constant_time(offered.as_bytes(), token.as_bytes()) {
                None
            } else {
                tracing::warn!(client = %peer, "admin request without the right bearer token");
                let mut reply = text(
                    StatusCode::UNAUTHORIZED,
                    "admin API: bearer token required\n",
                );
                reply.headers_mut().insert(
                    "www-authenticate",
                    HeaderValue::from_static("Bearer realm=\"smtp-shaper admin\""),
                );
                Some(reply)
            }
        }
        None if peer.ip().is_loopback() => None,
        None => {
            tracing::warn!(client = %peer, "admin request from a non-loopback client refused (no admin_token_file set)");
            Some(text(
                StatusCode::FORBIDDEN,
                "admin API: loopback clients only (set [http] admin_token_file to allow others)\n",
            ))
        }
    }
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// An admin answer in both renderings.
struct Answer {
    json: String,
    text: String,
}

/// The admin API:
/// - `GET /admin/queue[?gateway=G]`: queued messages;
/// - `GET /admin/queue/ID`: one message (envelope, headers, attempts);
/// - `POST /admin/queue/ID/retry`, `POST /admin/queue/retry`: due now;
/// - `DELETE /admin/queue/ID`: remove a message for good;
/// - `POST /admin/gateways/G/hold`, `.../release`: stop or resume delivery;
/// - `POST /admin/gateways/G/unpause`: end a throttling or quota pause;
/// - `GET /admin/dead`: dead-letter files;
/// - `POST /admin/dead/NAME/requeue`: queue a dead letter again.
async fn admin_route<Q: Queues>(
    endpoint: &Endpoint<Q>,
    method: &Method,
    path: &str,
    query: &str,
) -> Result<Answer, AdminError> {
    let queues = &endpoint.queues;
    // Split before decoding: an id holding an encoded `/` stays one part.
    let parts = path
        .trim_start_matches("/admin/")
        .split('/')
        .filter(|part| !part.is_empty())
        .map(decode)
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| AdminError::NotFound(format!("no admin action {method} {path}")))?;
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["queue"]) => {
            let gateway = query_value(query, "gateway")?;
            queue_page(queues, gateway.as_deref(), &page(query)?)
        }
        (&Method::POST, ["queue", "retry"]) => Ok(retried(&queues.retry(None)?)),
        (&Method::GET, ["queue", id]) => {
            let detail = queues.show(id).await?;
            Ok(detail_answer(&detail))
        }
        (&Method::POST, ["queue", id, "retry"]) => Ok(retried(&queues.retry(Some(id))?)),
        (&Method::DELETE, ["queue", id]) => {
            let removed = queues.delete(id)?;
            Ok(Answer {
                json: json::single("deleted", json::Summary::new(&removed)),
                text: format!("deleted {}\n", removed.id),
            })
        }
        (&Method::POST, ["gateways", gateway, "unpause"]) => {
            let left = queues.unpause(gateway)?;
            Ok(Answer {
                json: json::to_text(&json::Unpaused {
                    gateway,
                    pause_left_seconds: left,
                }),
                text: if left > 0.0 {
                    format!("gateway {gateway}: ended its pause ({left:.0}s were left)\n")
                } else {
                    format!("gateway {gateway} was not paused\n")
                },
            })
        }
        (&Method::POST, ["gateways", gateway, action @ ("hold" | "release")]) => {
            queues.hold(gateway, *action == "hold")?;
            let state = if *action == "hold" {
                "held"
            } else {
                "released"
            };
            Ok(Answer {
                json: json::to_text(&json::HoldState { gateway, state }),
                text: format!("gateway {gateway} {state}\n"),
            })
        }
        (&Method::GET, ["dead"]) => dead_page(queues, &page(query)?),
        (&Method::POST, ["dead", name, "requeue"]) => {
            let id = queues.requeue(name).await?;
            Ok(Answer {
                json: json::single("queued_as", &id),
                text: format!("{name} queued again as {id}\n"),
            })
        }
        _ => Err(AdminError::NotFound(format!(
            "no admin action {method} {path}"
        ))),
    }
}

/// A page of the queue, oldest first.
fn queue_page<Q: Queues>(
    queues: &Q,
    gateway: Option<&str>,
    page: &Page,
) -> Result<Answer, AdminError> {
    let list = queues.list(gateway, page)?;
    let mut text = String::new();
    for message in &list.entries {
        text.push_str(&summary_line(message));
    }
    if list.total == 0 {
        text.push_str("queue is empty\n");
    }
    let last = list.entries.last().map(|message| message.id.as_str());
    text.push_str(&page_footer(page, &list, last));
    let summaries: Vec<_> = list.entries.iter().map(json::Summary::new).collect();
    Ok(Answer {
        json: json::to_text(&summaries),
        text,
    })
}

/// A page of the dead-letter files' names.
fn dead_page<Q: Queues>(queues: &Q, page: &Page) -> Result<Answer, AdminError> {
    let names = queues.dead_letters(page)?;
    let mut text = String::new();
    for name in &names.entries {
        text.push_str(name);
        text.push('\n');
    }
    if names.total == 0 {
        text.push_str("no dead letters\n");
    }
    let last = names.entries.last().map(String::as_str);
    text.push_str(&page_footer(page, &names, last));
    Ok(Answer {
        json: json::to_text(&names.entries),
        text,
    })
}

/// The decoded value of query parameter `name`, if given.
fn query_value(query: &str, name: &str) -> Result<Option<String>, AdminError> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| {
            decode(value)
                .ok_or_else(|| AdminError::BadRequest(format!("{name}: not a valid encoding")))
        })
        .transpose()
}

/// The page a listing asks for (`limit` 1 to 10,000, default 1,000;
/// `after` an entry of the previous page).
fn page(query: &str) -> Result<Page, AdminError> {
    let limit = match query_value(query, "limit")? {
        None => Page::DEFAULT_LIMIT,
        Some(limit) => limit
            .parse()
            .ok()
            .filter(|limit| (1..=Page::MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                AdminError::BadRequest(format!(
                    "limit: a number from 1 to {}, not {limit:?}",
                    Page::MAX_LIMIT
                ))
            })?,
    };
    Ok(Page {
        after: query_value(query, "after")?,
        limit,
    })
}

/// The text listing's last line when there is more than one page: how
/// many were shown and how to get the next page.
fn page_footer<T>(page: &Page, listing: &Listing<T>, last: Option<&str>) -> String {
    let (shown, total) = (listing.entries.len(), listing.total);
    match last {
        Some(last) if listing.more => {
            format!("-- {shown} shown of {total}; next page: --after {last}\n")
        }
        _ if page.after.is_some() || total > shown => {
            format!("-- {shown} shown of {total}; last page\n")
        }
        _ => String::new(),
    }
}

/// A percent-encoded path segment or query value (what
/// `telemetry::client::encode` makes); `None` for a broken escape or bytes
/// that are not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            // from_str_radix alone would take "%+1".
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            decoded.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// A retry's answer: the count, and each gateway a pause it asked for
/// still holds (what the operator may do about it).
fn retried(report: &RetryReport) -> Answer {
    let mut text = format!("retried {} message(s)\n", report.retried);
    for (gateway, left) in &report.still_paused {
        text.push_str(&format!(
            "gateway {gateway} asked us to wait (throttling or a used-up quota): its mail goes in {left:.0}s, when that pause ends; to end it now: smtp-shaper queue unpause {gateway}\n"
        ));
    }
    Answer {
        json: json::to_text(&json::Retried {
            retried: report.retried,
            still_paused: json::Keyed(
                report
                    .still_paused
                    .iter()
                    .map(|(gateway, left)| (gateway.as_str(), *left))
                    .collect(),
            ),
        }),
        text,
    }
}

fn summary_line(message: &QueuedSummary) -> String {
    format!(
        "{}  {}  {:>8}  {}  <{}> -> {}  attempts={}{}\n",
        message.id,
        message.gateway,
        message.size,
        crate::smtp::trace::rfc5322_date(message.received_at),
        message.sender,
        message
            .recipients
            .iter()
            .map(|r| format!("<{r}>"))
            .collect::<Vec<_>>()
            .join(","),
        message.attempts,
        match message.retry_at {
            Some(at) => format!(" retry_at={}", crate::smtp::trace::rfc5322_date(at)),
            None => String::new(),
        }
    )
}

fn detail_answer(detail: &QueuedDetail) -> Answer {
    let mut text = summary_line(&detail.summary);
    text.push_str(&format!(
        "client: {}\n\n{}\n",
        detail.client_ip, detail.headers
    ));
    for (at, reply) in &detail.history {
        text.push_str(&format!(
            "attempt at {}: {}\n",
            crate::smtp::trace::rfc5322_date(*at),
            reply
        ));
    }
    if detail.history.is_empty() {
        text.push_str("no delivery attempt yet\n");
    }
    Answer {
        json: json::to_text(&json::Detail::new(detail)),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::decode;
    use crate::telemetry::client::encode;

    #[test]
    fn decoding_undoes_the_clients_encoding_and_refuses_broken_escapes() {
        for name in ["3F2A01", "a b/c?d%e&f#", "é.eml", ""] {
            assert_eq!(decode(&encode(name)).as_deref(), Some(name));
        }
        for broken in ["%", "%4", "%+1", "%zz", "%FF"] {
            assert_eq!(decode(broken), None, "{broken}");
        }
    }
}
