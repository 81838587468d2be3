//! Delivery to the gateways: per gateway a queue and a pool of workers, each
//! holding one reused upstream connection.
//!
//! Per recipient: 2xx is done; 4xx or a failed connection is retried on the
//! backoff schedule until `max_age`; 5xx, or 4xx past `max_age`, goes to the
//! dead-letter area with the gateway's reply. A message leaves the spool only
//! when every recipient is done or dead-lettered (DESIGN.md invariant 2).
//!
//! Each gateway's queue is shaped (`shaper`): workers take a message only
//! when the gateway's model lets it go, replies that signal throttling cut
//! the ceiling, and the model's state is saved under the spool so a restart
//! keeps the learned baseline and the cap counts.
//!
//! [`Outbound`] is a handle on the current `generation` (the gateways one
//! configuration built); a reload replaces it without losing queued mail.
//! `admin` is what operators may do to the queues.

mod admin;
pub mod client;
pub mod dkim;
mod generation;
mod held;
mod history;
pub mod oauth;
mod observed;
mod queue;
pub mod retry;
mod verify;
mod worker;

use crate::poison::{LockRecovered, RwLockRecovered};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::cluster::Cluster;
use crate::config::{Config, GatewayConfig};
use crate::policy::Policy;
use crate::shaper::{Admission, Deferral, GatewayView, Projection};
use crate::spool::{Recovery, Spool, StoredMessage, unix_seconds};
use crate::telemetry::{
    AdminError, GatewayStatus, Listing, Metrics, Page, QueuedDetail, QueuedSummary, Queues,
    RetryReport,
};
use crate::tls::client::Upstream;
use client::Credentials;
use generation::{Generation, Loaded};
use queue::{DeliveryQueue, Drained};
use retry::Backoff;

/// One gateway at run time, shared by its workers.
struct Gateway {
    config: GatewayConfig,
    queue: DeliveryQueue,
    backoff: Backoff,
    tls: Upstream,
    credentials: Option<Credentials>,
    /// The latest replies that were not 2xx, for /status.
    recent: Mutex<VecDeque<(u64, String)>>,
    /// `mode = "observe"`: what enforcement would have held.
    observing: Option<observed::Observing>,
    /// Why the first connection at start failed (`None`: it worked, or is
    /// under way), for `/readyz`.
    first_contact: Mutex<Option<String>>,
    /// Where its volume history comes from; a learned one found on disk.
    history: history::Kept,
}

/// How many recent non-2xx replies /status shows per gateway.
const RECENT_REPLIES: usize = 10;

impl Gateway {
    /// Keeps `reply` among the gateway's recent replies (for /status).
    fn remember(&self, reply: String) {
        let mut recent = self.recent.lock_recovered();
        if recent.len() == RECENT_REPLIES {
            recent.pop_front();
        }
        recent.push_back((unix_seconds(), reply));
    }
}

/// The delivery side: hands messages to the right gateway's queue. A
/// handle on the current `Generation`, which a configuration reload
/// replaces (see [`Outbound::reload`]).
#[derive(Clone)]
pub struct Outbound {
    current: Arc<RwLock<Generation>>,
    /// One reload (or stop) at a time.
    changing: Arc<tokio::sync::Mutex<()>>,
    /// Cluster mode: the connection to the shared state (kept by reloads:
    /// `[cluster]` is a restart-only setting).
    cluster: Option<Arc<Cluster>>,
    /// How far delay notices have got (kept by reloads, see `held`).
    told: Arc<held::Told>,
}

impl Outbound {
    /// Loads what [`Outbound::start`] loads (each gateway's CA file and
    /// login, the DKIM keys) and says what fails, starting nothing
    /// (`check-config`).
    pub fn check(config: &Config) -> std::io::Result<()> {
        Loaded::load(config).map(drop)
    }

    /// Starts the workers of every gateway. Fails when a gateway's TLS
    /// settings (its CA file), upstream password or a DKIM key cannot be
    /// loaded. `policy` is the sessions' (its apps place messages in lanes;
    /// gateways with `verify_senders` record into its sender checks).
    pub fn start(
        config: &Config,
        spool: Spool,
        policy: &Policy,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Outbound> {
        let loaded = Loaded::load(config)?;
        let cluster = config.cluster.as_ref().map(Cluster::open).transpose()?;
        if let Some(cluster) = &cluster {
            tracing::info!(node = %cluster.node(), "cluster mode: the gateways' limits are shared through Redis");
        }
        let told = Arc::new(held::Told::default());
        Ok(Outbound {
            current: Arc::new(RwLock::new(Generation::start(
                config,
                loaded,
                spool,
                policy,
                metrics,
                cluster.as_ref(),
                told.clone(),
            ))),
            changing: Arc::default(),
            cluster,
            told,
        })
    }

    fn current(&self) -> Generation {
        self.current.read_recovered().clone()
    }

    /// Runs `change` on the current generation under the read lock: a
    /// reload swaps generations under the write lock and only then moves
    /// what the old one holds, so nothing put into (or held on) the old one
    /// is left behind.
    fn change_current<R>(&self, change: impl FnOnce(&Generation) -> R) -> R {
        let current = self.current.read_recovered();
        change(&current)
    }

    /// Queues a message just accepted from `app`, with its body for a
    /// worker that is free now (see `queue`); it counts as demand.
    pub fn accepted(&self, message: StoredMessage, app: &str, body: Vec<u8>) {
        self.change_current(|current| current.accepted(message, app, body));
    }

    /// Queues what the spool held at start, one message at a time, then
    /// wakes the workers once; returns how many.
    pub fn replay(&self, recovery: Recovery) -> std::io::Result<u64> {
        let current = self.current();
        let count = recovery.replay(|message| current.replayed(message))?;
        current.wake_workers();
        Ok(count)
    }

    /// Queues a dead letter queued again (see `Generation::recovered`).
    pub fn recovered(&self, message: StoredMessage) {
        self.change_current(|current| current.recovered(message));
    }

    /// The shaping model and queue of the named gateway.
    pub fn view(&self, gateway: &str) -> Option<GatewayView> {
        self.current().view(gateway)
    }

    /// Messages queued on the named gateway.
    pub fn queued(&self, gateway: &str) -> usize {
        self.current().queued(gateway)
    }

    /// Stops the workers (each finishes the delivery in hand, waiting up to
    /// `grace`), then saves the shaping state with exact cap counts.
    pub async fn stop(&self, grace: Duration) {
        let _changing = self.changing.lock().await;
        self.current().stop(Some(grace)).await;
    }

    /// Applies a new configuration without losing queued mail: checks what
    /// can fail first (TLS files, passwords, DKIM keys; an error leaves the
    /// old one running), stops the current workers after the deliveries in
    /// hand, saves the shaping state, starts the new gateways from it (a
    /// kept gateway keeps its baseline, penalty and cap counts) and moves
    /// every queued message over (a message for a gateway no longer
    /// configured goes to the default one; retries keep their time).
    pub async fn reload(&self, config: &Config, policy: &Policy) -> std::io::Result<()> {
        let loaded = Loaded::load(config)?;
        let _changing = self.changing.lock().await;
        let old = self.current();
        old.stop(None).await;
        let new = Generation::start(
            config,
            loaded,
            old.spool.clone(),
            policy,
            old.metrics.clone(),
            self.cluster.as_ref(),
            self.told.clone(),
        );
        *self.current.write_recovered() = new.clone();
        let moved = Self::move_queued(&old, &new);
        for gateway in old.gateways.iter() {
            if !new.by_name.contains_key(&gateway.config.name) {
                old.metrics.forget_gateway(&gateway.config.name);
            }
        }
        tracing::info!(
            gateways = new.gateways.len(),
            apps = new.apps.configured(),
            moved,
            "delivery side reloaded"
        );
        Ok(())
    }

    /// Moves every message queued in `old` to `new`, and an operator's hold
    /// of a gateway both have (in cluster mode also what was sent on the
    /// share and not yet reconciled); returns how many messages.
    fn move_queued(old: &Generation, new: &Generation) -> usize {
        let mut moved = 0;
        for gateway in old.gateways.iter() {
            if let Some(index) = new.by_name.get(&gateway.config.name) {
                new.gateways[*index]
                    .queue
                    .carry_standing(gateway.queue.take_standing());
            }
            for drained in gateway.queue.drain() {
                moved += 1;
                match drained {
                    Drained::Held(mut item, due) => {
                        item.lane = new.lane_of(&item.message);
                        new.requeue(*item, due);
                    }
                    // Its envelope stays on disk: it keeps its app by name
                    // (`other` when the app is gone) instead of being
                    // matched again by network and sender.
                    Drained::Parked {
                        parked,
                        lane,
                        receiver,
                        units,
                    } => {
                        let name = &gateway.config.name;
                        let lane = new.apps.lane_named(old.apps.name(lane));
                        let receiver = new.receiver_named(name, old.receiver_name(name, receiver));
                        new.requeue_parked(name, parked, (lane, receiver), units);
                    }
                }
            }
        }
        moved
    }
}

impl Admission for Outbound {
    fn admit(
        &self,
        gateway: &str,
        app: &str,
        receivers: &[Option<usize>],
        fingerprint: u64,
    ) -> Result<Projection, Deferral> {
        self.current().admit(gateway, app, receivers, fingerprint)
    }
}

impl Queues for Outbound {
    fn statuses(&self) -> Vec<GatewayStatus> {
        self.current().statuses()
    }

    fn list(
        &self,
        gateway: Option<&str>,
        page: &Page,
    ) -> Result<Listing<QueuedSummary>, AdminError> {
        self.current().list(gateway, page)
    }

    async fn show(&self, id: &str) -> Result<QueuedDetail, AdminError> {
        self.current().show(id).await
    }

    fn retry(&self, id: Option<&str>) -> Result<RetryReport, AdminError> {
        self.current().retry(id)
    }

    fn unpause(&self, gateway: &str) -> Result<f64, AdminError> {
        self.current().unpause(gateway)
    }

    fn unreachable_at_start(&self) -> Vec<(String, String)> {
        self.current()
            .gateways
            .iter()
            .filter_map(|gateway| {
                let failure = gateway.first_contact.lock_recovered().clone()?;
                Some((gateway.config.name.clone(), failure))
            })
            .collect()
    }

    fn hold(&self, gateway: &str, held: bool) -> Result<(), AdminError> {
        self.change_current(|current| current.hold(gateway, held))
    }

    fn delete(&self, id: &str) -> Result<QueuedSummary, AdminError> {
        self.current().delete(id)
    }

    fn dead_letters(&self, page: &Page) -> Result<Listing<String>, AdminError> {
        self.current().dead_letters(page)
    }

    async fn requeue(&self, dead_letter: &str) -> Result<String, AdminError> {
        let stored = self.current().restore_dead_letter(dead_letter).await?;
        let id = stored.id.clone();
        // Through the handle, so a reload meanwhile does not strand it.
        self.recovered(stored);
        Ok(id)
    }
}
