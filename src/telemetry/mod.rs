//! Telemetry: what operators see of the running service, beside the data
//! flow rather than in it.
//!
//! - [`metrics`]: the Prometheus registry, updated where events happen;
//! - [`client`]: the blocking client the `queue` command talks to it with;
//! - [`http`]: the endpoint on `[http] listen`: `/metrics`, `/healthz`,
//!   `/readyz`, `/status` and the queue admin API under `/admin/`;
//! - [`json`]: the small JSON writer `/status` and the admin API answer with;
//! - [`logging`]: text or JSON log lines.
//!
//! The endpoint reads the delivery side through the [`Queues`] trait, which
//! `outbound` implements, so telemetry never reaches into the queues'
//! internals and `outbound` (which updates metrics) is not imported here.

pub mod client;
pub mod http;
pub mod json;
pub mod logging;
pub mod metrics;

pub use metrics::Metrics;

use crate::shaper::GatewayView;

/// One gateway as the endpoint shows it.
#[derive(Debug, Clone)]
pub struct GatewayStatus {
    pub name: String,
    pub address: String,
    pub view: GatewayView,
    /// The app lane names, in the order of `view.lanes`.
    pub lane_names: Vec<String>,
    pub queued_bytes: u64,
    /// An operator holds the queue (`queue hold`).
    pub held: bool,
    pub connections: i64,
    /// The gateway's latest replies that were not 2xx (and failed
    /// connections), oldest first: Unix seconds and the reply.
    pub recent_replies: Vec<(u64, String)>,
    /// Cluster mode: how this node stands with the gateway's shared state.
    pub cluster: Option<crate::cluster::ClusterView>,
}

/// One queued message as the admin API lists it.
#[derive(Debug, Clone)]
pub struct QueuedSummary {
    pub id: String,
    pub gateway: String,
    pub sender: String,
    /// Recipients still to deliver.
    pub recipients: Vec<String>,
    pub size: u64,
    pub received_at: u64,
    pub attempts: u32,
    /// "ready" (waiting for the shaper or a worker) or "retry" (not before
    /// `retry_at`: its own retry time or the end of its gateway's pause).
    pub state: &'static str,
    pub retry_at: Option<u64>,
}

/// One delivery attempt of a message: when, and what the gateway said.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: u64,
    pub reply: String,
}

/// A queued message in full, for `queue show`.
#[derive(Debug, Clone)]
pub struct QueuedDetail {
    pub summary: QueuedSummary,
    pub client_ip: String,
    /// The header section of the message as spooled (our Received: first).
    pub headers: String,
    pub history: Vec<Attempt>,
}

/// Why an admin request could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// No such message, gateway or dead letter (404).
    NotFound(String),
    /// The request cannot be done as asked (409), e.g. a message in delivery.
    Conflict(String),
    /// The spool failed (500).
    Failed(String),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::NotFound(why) | AdminError::Conflict(why) | AdminError::Failed(why) => {
                f.write_str(why)
            }
        }
    }
}

/// What the endpoint reads from, and asks of, the delivery side.
pub trait Queues: Send + Sync + 'static {
    /// Every gateway's shaping and queue state.
    fn statuses(&self) -> Vec<GatewayStatus>;
    /// The queued messages, of one gateway or all, oldest first.
    fn list(&self, gateway: Option<&str>) -> Result<Vec<QueuedSummary>, AdminError>;
    /// One queued message with its headers and attempts.
    fn show(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<QueuedDetail, AdminError>> + Send;
    /// Makes a message waiting for its retry (or all of them) due now;
    /// returns how many.
    fn retry(&self, id: Option<&str>) -> Result<usize, AdminError>;
    /// Holds or releases a gateway's queue.
    fn hold(&self, gateway: &str, held: bool) -> Result<(), AdminError>;
    /// Removes a queued message for good (logged); returns its summary.
    fn delete(&self, id: &str) -> Result<QueuedSummary, AdminError>;
    /// The dead-letter files, newest last.
    fn dead_letters(&self) -> Result<Vec<String>, AdminError>;
    /// Queues a dead-lettered message again for its failed recipients;
    /// returns the new queue id.
    fn requeue(
        &self,
        dead_letter: &str,
    ) -> impl std::future::Future<Output = Result<String, AdminError>> + Send;
}
