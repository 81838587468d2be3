//! Cluster mode: the sidecars in front of one gateway share its budget in
//! Redis, so scaling an app from 2 to 20 replicas does not multiply what
//! the gateway is sent.
//!
//! This module is the Redis edge and nothing else: one connection per
//! process (the `redis` crate's connection manager, which reconnects by
//! itself), and per gateway a [`GatewayLink`], the Redis implementation of
//! `shaper::store::Store`, that runs the Lua scripts beside this file and
//! reads their replies into `shaper::store` values. What to do with them
//! (take a grant, wait, run on this node's share while Redis is out of
//! reach, rebuild or reconcile when it is back) is the cluster gate's
//! business (`shaper::gate`), driven by the delivery queue
//! (`outbound::queue`). The in-memory store keeps the same contract, and
//! one suite (`tests/it/store.rs`) checks both.
//!
//! The scripts run on the Redis server's clock (`TIME`, microseconds), so
//! nodes never need agreeing clocks for the decision itself. Keys per
//! gateway, all under `smtp-shaper:{<gateway>}` (README "Cluster mode"):
//! `:state` (epoch, GCRA time, penalty, pause, hold, totals), `:nodes`
//! (each node's totals), `:depth` (heartbeats with queue depths),
//! `:txdepth` (each node's transactional messages queued), `:rbusiest`
//! (the busiest windows each node has seen per receiver),
//! `:cap:<seconds>`, `:all:<seconds>`, `:tx:<seconds>` (rolling windows),
//! and per budgeted receiver (by its configured name, so the keys are as
//! few as the receivers) `:r:<name>:all:<seconds>`, `:r:<name>:tx:<seconds>`
//! (its rolling windows) and its totals in `:receivers` (everyone's) and
//! `:nodes` (each node's).
//!
//! Invariants: every call is bounded by `cluster.timeout`; a failed call
//! changes nothing here but the error it returns; readings of what others
//! sent never count backwards, and a new epoch restarts them from the
//! new totals instead of counting the difference.

use crate::poison::LockRecovered;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script, Value};

use crate::config::ClusterConfig;
use crate::shaper::AppClass;
use crate::shaper::shared::{
    Busiest, Elsewhere, Ledger, Proposal, SharedFeedback, SharedLimits, Units,
};
use crate::shaper::store::{HEARTBEAT_LIFETIME, Heartbeat, Reading, Store, Verdict};
use crate::shaper::{ClassCounts, WindowCounts};

const PRELUDE: &str = include_str!("prelude.lua");

/// How often each node sends one.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Why a call to Redis failed (the node then runs on its share).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from a cluster script: {0}")]
    Reply(String),
}

/// The scripts, each with the prelude in front.
struct Scripts {
    acquire: Script,
    heartbeat: Script,
    throttle: Script,
    pause: Script,
    hold: Script,
    rebuild: Script,
    reconcile: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// The process's connection to Redis.
pub struct Cluster {
    connection: ConnectionManager,
    node: String,
    timeout: Duration,
    expected_nodes: u64,
    scripts: Scripts,
    /// When this process set up its connection (see
    /// [`GatewayLink::rebuild_pending`]).
    started: std::time::Instant,
    /// Weak: a link holds the cluster, and lives while a queue uses it
    /// (a reload's new queues take it over from the old ones).
    links: Mutex<std::collections::HashMap<String, std::sync::Weak<GatewayLink>>>,
}

impl Cluster {
    /// Sets up the connection (lazily: a Redis that is down at start is
    /// not an error, the nodes run on their share until it is up).
    /// Fails on a URL that cannot be used or a password that cannot be
    /// read.
    pub fn open(config: &ClusterConfig) -> std::io::Result<Arc<Cluster>> {
        let invalid = |error: redis::RedisError| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("cluster.redis: {error}"),
            )
        };
        let mut info = config
            .redis
            .as_str()
            .into_connection_info()
            .map_err(invalid)?;
        if let Some(password) = config.password()? {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = match &config.ca_file {
            Some(path) => {
                let root = std::fs::read(path).map_err(|error| {
                    std::io::Error::new(
                        error.kind(),
                        format!("cannot read cluster.ca_file {}: {error}", path.display()),
                    )
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                };
                redis::Client::build_with_tls(info, certificates).map_err(invalid)?
            }
            None => redis::Client::open(info).map_err(invalid)?,
        };
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection =
            ConnectionManager::new_lazy_with_config(client, manager).map_err(invalid)?;
        Ok(Arc::new(Cluster {
            connection,
            node: config.node.clone(),
            timeout: config.timeout,
            expected_nodes: config.expected_nodes,
            started: std::time::Instant::now(),
            links: Mutex::default(),
            scripts: Scripts {
                acquire: script(include_str!("acquire.lua")),
                heartbeat: script(include_str!("heartbeat.lua")),
                throttle: script(include_str!("throttle.lua")),
                pause: script(include_str!("pause.lua")),
                hold: script(include_str!("hold.lua")),
                rebuild: script(include_str!("rebuild.lua")),
                reconcile: script(include_str!("reconcile.lua")),
            },
        }))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The link of one gateway: the same one for every generation (a
    /// reload keeps what it has seen of the epoch and the others' totals,
    /// or it would rebuild and recount them).
    pub fn link(self: &Arc<Cluster>, gateway: &str) -> Arc<GatewayLink> {
        let mut links = self.links.lock_recovered();
        if let Some(link) = links.get(gateway).and_then(std::sync::Weak::upgrade) {
            return link;
        }
        let link = Arc::new(GatewayLink {
            cluster: self.clone(),
            prefix: format!("smtp-shaper:{{{gateway}}}"),
            seen: Mutex::new(Seen::default()),
        });
        links.insert(gateway.to_string(), Arc::downgrade(&link));
        link
    }

    /// Nodes assumed to share a gateway until heartbeats say otherwise.
    pub fn expected_nodes(&self) -> u64 {
        self.expected_nodes
    }
}

/// What a link has seen of the shared state: its epoch, and the others'
/// totals at the latest reading.
#[derive(Default)]
struct Seen {
    epoch: Option<String>,
    elsewhere: Elsewhere,
    /// A new epoch was seen and its rebuild has not got through yet.
    rebuild_pending: bool,
}

/// One gateway's shared state, as one node reaches it.
pub struct GatewayLink {
    cluster: Arc<Cluster>,
    prefix: String,
    seen: Mutex<Seen>,
}

/// How a node stands with the shared state, for `/status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterView {
    pub connected: bool,
    /// Live nodes at the latest heartbeat.
    pub nodes: u64,
    /// The nodes this one divides the gateway by while Redis is out of reach.
    pub share_of: u64,
}

fn integer(value: &Value) -> Result<i64, ClusterError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
            .map(|n| n as i64)
            .ok_or_else(|| ClusterError::Reply(format!("not a number: {value:?}"))),
        other => Err(ClusterError::Reply(format!("not a number: {other:?}"))),
    }
}

fn text(value: &Value) -> Result<String, ClusterError> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Ok(text.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(ClusterError::Reply(format!("not a string: {other:?}"))),
    }
}

fn count(value: &Value) -> Result<u64, ClusterError> {
    Ok(integer(value)?.max(0) as u64)
}

impl GatewayLink {
    async fn run(
        &self,
        script: &Script,
        args: Vec<String>,
        expected: usize,
    ) -> Result<Vec<Value>, ClusterError> {
        let mut invocation = script.key(&self.prefix);
        for arg in args {
            invocation.arg(arg);
        }
        let mut connection = self.cluster.connection.clone();
        let timeout = self.cluster.timeout;
        let reply: Vec<Value> =
            tokio::time::timeout(timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| ClusterError::Timeout(timeout))??;
        if reply.len() < expected {
            return Err(ClusterError::Reply(format!(
                "{} values, expected {expected}",
                reply.len()
            )));
        }
        Ok(reply)
    }

    /// Reads `status()` (the rest of a reply from its first six values:
    /// those, then the others' totals per receiver) with the epoch and its
    /// age, when the reply has them.
    fn reading(
        &self,
        epoch: Option<(&Value, &Value)>,
        status: &[Value],
    ) -> Result<Reading, ClusterError> {
        let feedback = SharedFeedback {
            penalty: text(&status[0])?.parse().unwrap_or(1.0),
            pause_left: integer(&status[1])? as f64 / 1e6,
        };
        let held = integer(&status[2])? == 1;
        let mut totals = Elsewhere {
            messages: count(&status[3])?,
            all: count(&status[4])?,
            transactional: count(&status[5])?,
            receivers: Default::default(),
        };
        let receivers = match status.get(6) {
            Some(value) => count(value)? as usize,
            None => 0,
        };
        let rest = &status[7.min(status.len())..];
        if rest.len() < receivers * 3 {
            return Err(ClusterError::Reply(format!(
                "{} receivers' totals, expected {receivers}",
                rest.len() / 3
            )));
        }
        for entry in rest.chunks_exact(3).take(receivers) {
            let units = Units {
                all: count(&entry[1])?,
                transactional: count(&entry[2])?,
            };
            if units.all > 0 {
                totals.receivers.insert(text(&entry[0])?, units);
            }
        }
        let mut seen = self.seen.lock_recovered();
        if let Some((epoch, age)) = epoch {
            let epoch = text(epoch)?;
            if seen.epoch.as_deref() != Some(epoch.as_str()) {
                // A node that restarted finds its own earlier sends in an
                // epoch older than itself: nothing to rebuild. A Redis that
                // restarted (or is new) has an epoch younger than the node,
                // or another than the one the node knew.
                let age = Duration::from_micros(integer(age)?.max(0) as u64);
                seen.rebuild_pending |=
                    seen.epoch.is_some() || age < self.cluster.started.elapsed();
                seen.epoch = Some(epoch);
                seen.elsewhere = totals.clone();
            }
        }
        let elsewhere = totals.since(&seen.elsewhere);
        seen.elsewhere = seen.elsewhere.max(&totals);
        Ok(Reading {
            feedback,
            held,
            elsewhere,
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.cluster.node
    }

    /// A new epoch has been seen and not yet rebuilt from this node's view.
    pub fn rebuild_pending(&self) -> bool {
        self.seen.lock_recovered().rebuild_pending
    }

    /// The rebuild got through.
    pub fn rebuilt(&self) {
        self.seen.lock_recovered().rebuild_pending = false;
    }

    /// The epoch this node proposes should the state be empty: new every
    /// time, or a Redis that restarted empty could get the epoch it had
    /// before and nobody would rebuild it.
    fn epoch_proposal(&self) -> String {
        format!("{}-{:016x}", self.cluster.node, fastrand::u64(..))
    }

    /// Proposes one send; Redis grants it (and counts it) or says how long
    /// to wait.
    pub async fn acquire(&self, proposal: &Proposal) -> Result<Verdict, ClusterError> {
        let SharedLimits { budgets, caps, .. } = &proposal.limits;
        let (emission, tolerance) = proposal.gcra_micros();
        let mut args = vec![
            self.node().to_string(),
            self.epoch_proposal(),
            proposal.units.to_string(),
            match proposal.class {
                crate::shaper::AppClass::Transactional => "t".into(),
                crate::shaper::AppClass::Bulk => "b".into(),
            },
            emission.to_string(),
            tolerance.to_string(),
            (budgets.len() + caps.len()).to_string(),
        ];
        for cap in caps {
            args.extend([
                "cap".into(),
                cap.window.to_string(),
                cap.limit.to_string(),
                "0".into(),
            ]);
        }
        for budget in budgets {
            args.extend([
                "volume".into(),
                budget.horizon.seconds().to_string(),
                budget.allowance.to_string(),
                budget.bulk_share.to_string(),
            ]);
        }
        match &proposal.receiver {
            Some(receiver) => {
                args.extend([
                    receiver.name.clone(),
                    if receiver.enforced { "1" } else { "0" }.into(),
                    receiver.budgets.len().to_string(),
                ]);
                for budget in &receiver.budgets {
                    args.extend([
                        budget.horizon.seconds().to_string(),
                        budget.allowance.to_string(),
                        budget.bulk_share.to_string(),
                    ]);
                }
            }
            None => args.extend([String::new(), "0".into(), "0".into()]),
        }
        let reply = self.run(&self.cluster.scripts.acquire, args, 11).await?;
        Ok(Verdict {
            granted: integer(&reply[0])? == 1,
            wait: integer(&reply[1])?.max(0) as f64 / 1e6,
            reason: text(&reply[2])?,
            reading: self.reading(Some((&reply[3], &reply[4])), &reply[5..])?,
        })
    }

    /// Says this node is alive with `queued` (messages and units per
    /// class) waiting for the gateway and the `busiest` hour and day it has
    /// seen (of the total and each receiver); hears how many nodes are,
    /// what they have queued and seen.
    pub async fn heartbeat(
        &self,
        queued: ClassCounts,
        busiest: &Busiest,
    ) -> Result<Heartbeat, ClusterError> {
        let transactional = AppClass::Transactional as usize;
        let mut args = vec![
            self.node().to_string(),
            self.epoch_proposal(),
            HEARTBEAT_LIFETIME.as_micros().to_string(),
            queued.total_messages().to_string(),
            queued.units[transactional].to_string(),
            queued.units[AppClass::Bulk as usize].to_string(),
            busiest.total[0].to_string(),
            busiest.total[1].to_string(),
            queued.messages[transactional].to_string(),
            busiest.receivers.len().to_string(),
        ];
        for (name, [hour, day]) in &busiest.receivers {
            args.extend([name.clone(), hour.to_string(), day.to_string()]);
        }
        let reply = self.run(&self.cluster.scripts.heartbeat, args, 16).await?;
        let receivers = count(&reply[9])? as usize;
        let status = 10 + 3 * receivers;
        if reply.len() < status + 6 {
            return Err(ClusterError::Reply(format!(
                "{} values, expected {}",
                reply.len(),
                status + 6
            )));
        }
        let mut busiest_elsewhere = Busiest {
            total: [count(&reply[6])?, count(&reply[7])?],
            receivers: Default::default(),
        };
        for entry in reply[10..status].chunks_exact(3) {
            busiest_elsewhere
                .receivers
                .insert(text(&entry[0])?, [count(&entry[1])?, count(&entry[2])?]);
        }
        let messages = count(&reply[3])? as usize;
        let transactional_messages = (count(&reply[8])? as usize).min(messages);
        let mut queued_elsewhere = ClassCounts {
            messages: [0; 2],
            units: [count(&reply[4])?, count(&reply[5])?],
        };
        queued_elsewhere.messages[transactional] = transactional_messages;
        queued_elsewhere.messages[AppClass::Bulk as usize] = messages - transactional_messages;
        Ok(Heartbeat {
            live: count(&reply[2])?.max(1),
            queued_elsewhere,
            busiest_elsewhere,
            reading: self.reading(Some((&reply[0], &reply[1])), &reply[status..])?,
        })
    }

    /// This node heard throttling: every node pauses and slows down.
    /// `backoff` is (factor, pause seconds, recovery seconds).
    pub async fn throttled(&self, backoff: (f64, f64, f64)) -> Result<Reading, ClusterError> {
        let args = vec![
            self.node().to_string(),
            backoff.0.to_string(),
            ((backoff.1 * 1e6) as u64).to_string(),
            ((backoff.2 * 1e6).max(1.0) as u64).to_string(),
        ];
        let reply = self.run(&self.cluster.scripts.throttle, args, 6).await?;
        self.reading(None, &reply)
    }

    /// The gateway's quota is used up: every node rests for `seconds`.
    pub async fn pause(&self, seconds: f64) -> Result<Reading, ClusterError> {
        let args = vec![
            self.node().to_string(),
            ((seconds * 1e6) as u64).to_string(),
        ];
        let reply = self.run(&self.cluster.scripts.pause, args, 6).await?;
        self.reading(None, &reply)
    }

    /// An operator ends the gateway's pause on every node (`queue
    /// unpause`): the pause ends now; the penalty stays.
    pub async fn end_pause(&self) -> Result<Reading, ClusterError> {
        let args = vec![self.node().to_string(), "0".into(), "end".into()];
        let reply = self.run(&self.cluster.scripts.pause, args, 6).await?;
        self.reading(None, &reply)
    }

    /// An operator holds or releases the gateway on every node.
    pub async fn hold(&self, held: bool) -> Result<Reading, ClusterError> {
        let args = vec![self.node().to_string(), if held { "1" } else { "0" }.into()];
        let reply = self.run(&self.cluster.scripts.hold, args, 6).await?;
        self.reading(None, &reply)
    }

    /// Rebuilds a new epoch's counts from this node's view (the larger
    /// count of each slot wins) and adds its feedback and hold.
    pub async fn rebuild(
        &self,
        counts: &WindowCounts,
        feedback: &SharedFeedback,
        held: bool,
    ) -> Result<Reading, ClusterError> {
        let mut entries = Vec::new();
        for (horizon, minutes) in &counts.budgets {
            let seconds = horizon.seconds().to_string();
            for minute in minutes {
                for (kind, units) in [("all", minute.all), ("tx", minute.transactional)] {
                    if units > 0 {
                        entries.extend([
                            kind.to_string(),
                            seconds.clone(),
                            minute.minute.to_string(),
                            units.to_string(),
                        ]);
                    }
                }
            }
        }
        for (window, slots) in &counts.caps {
            for (slot, units) in slots {
                entries.extend([
                    "cap".to_string(),
                    window.to_string(),
                    slot.to_string(),
                    units.to_string(),
                ]);
            }
        }
        let mut receiver_entries = Vec::new();
        for (name, budgets) in &counts.receivers {
            for (horizon, minutes) in budgets {
                let seconds = horizon.seconds().to_string();
                for minute in minutes {
                    for (kind, units) in [("all", minute.all), ("tx", minute.transactional)] {
                        if units > 0 {
                            receiver_entries.extend([
                                name.clone(),
                                kind.to_string(),
                                seconds.clone(),
                                minute.minute.to_string(),
                                units.to_string(),
                            ]);
                        }
                    }
                }
            }
        }
        let mut args = vec![
            self.node().to_string(),
            feedback.penalty.to_string(),
            ((feedback.pause_left.max(0.0) * 1e6) as i64).to_string(),
            if held { "1" } else { "0" }.into(),
            (entries.len() / 4).to_string(),
        ];
        args.extend(entries);
        args.push((receiver_entries.len() / 5).to_string());
        args.extend(receiver_entries);
        let reply = self.run(&self.cluster.scripts.rebuild, args, 6).await?;
        self.reading(None, &reply)
    }

    /// Adds what this node sent on its share (`ledger`) to every window the
    /// `limits` name and to the totals.
    pub async fn reconcile(
        &self,
        limits: &SharedLimits,
        ledger: &Ledger,
    ) -> Result<Reading, ClusterError> {
        let mut args = vec![
            self.node().to_string(),
            (limits.caps.len() + limits.budgets.len()).to_string(),
        ];
        for cap in &limits.caps {
            args.extend(["cap".to_string(), cap.window.to_string()]);
        }
        for budget in &limits.budgets {
            args.extend(["volume".to_string(), budget.horizon.seconds().to_string()]);
        }
        args.push(ledger.minutes().count().to_string());
        for (minute, counts) in ledger.minutes() {
            args.push(minute.to_string());
            args.extend(counts.iter().map(u64::to_string));
        }
        args.push(ledger.receiver_minutes().count().to_string());
        for (minute, name, units) in ledger.receiver_minutes() {
            args.extend([
                name.to_string(),
                minute.to_string(),
                units.all.to_string(),
                units.transactional.to_string(),
            ]);
        }
        let reply = self.run(&self.cluster.scripts.reconcile, args, 6).await?;
        // What this node sent meanwhile is now in its own totals, which the
        // others' exclude: the reading stays as it was.
        self.reading(None, &reply)
    }
}

/// The Redis store. Redis decides on its own clock: `now` is not used.
impl Store for GatewayLink {
    type Error = ClusterError;

    fn acquire(
        &self,
        _now: f64,
        proposal: &Proposal,
    ) -> impl Future<Output = Result<Verdict, ClusterError>> + Send {
        GatewayLink::acquire(self, proposal)
    }

    fn heartbeat(
        &self,
        _now: f64,
        queued: ClassCounts,
        busiest: &Busiest,
    ) -> impl Future<Output = Result<Heartbeat, ClusterError>> + Send {
        GatewayLink::heartbeat(self, queued, busiest)
    }

    fn rebuild(
        &self,
        _now: f64,
        counts: &WindowCounts,
        feedback: &SharedFeedback,
        held: bool,
    ) -> impl Future<Output = Result<Reading, ClusterError>> + Send {
        GatewayLink::rebuild(self, counts, feedback, held)
    }

    fn reconcile(
        &self,
        _now: f64,
        limits: &SharedLimits,
        ledger: &Ledger,
    ) -> impl Future<Output = Result<Reading, ClusterError>> + Send {
        GatewayLink::reconcile(self, limits, ledger)
    }

    fn hold(
        &self,
        _now: f64,
        held: bool,
    ) -> impl Future<Output = Result<Reading, ClusterError>> + Send {
        GatewayLink::hold(self, held)
    }

    fn throttled(
        &self,
        _now: f64,
        backoff: (f64, f64, f64),
    ) -> impl Future<Output = Result<Reading, ClusterError>> + Send {
        GatewayLink::throttled(self, backoff)
    }

    fn pause(
        &self,
        _now: f64,
        seconds: f64,
    ) -> impl Future<Output = Result<Reading, ClusterError>> + Send {
        GatewayLink::pause(self, seconds)
    }

    fn end_pause(&self, _now: f64) -> impl Future<Output = Result<Reading, ClusterError>> + Send {
        GatewayLink::end_pause(self)
    }
}
