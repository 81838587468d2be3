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

pub mod client;
pub mod dkim;
mod queue;
pub mod retry;
mod verify;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::units::format_rate;
use crate::config::{Config, GatewayConfig};
use crate::policy::{Apps, Policy};
use crate::shaper::{Admission, Deferral, GatewayModel, GatewayView, SavedState};
use crate::shutdown::Shutdown;
use crate::spool::{Spool, StoredMessage, unix_seconds};
use crate::telemetry::{
    AdminError, Attempt, GatewayStatus, Metrics, QueuedDetail, QueuedSummary, Queues,
};
use crate::tls::client::Upstream;
use client::Credentials;
use queue::{DeliveryQueue, Queued};
use retry::Backoff;
use worker::{WorkerContext, worker};

/// One gateway at run time, shared by its workers.
struct Gateway {
    config: GatewayConfig,
    queue: DeliveryQueue,
    backoff: Backoff,
    tls: Upstream,
    credentials: Option<Credentials>,
    /// The latest replies that were not 2xx, for /status.
    recent: Mutex<VecDeque<(u64, String)>>,
}

/// How many recent non-2xx replies /status shows per gateway.
const RECENT_REPLIES: usize = 10;

impl Gateway {
    /// Keeps `reply` among the gateway's recent replies (for /status).
    fn remember(&self, reply: String) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_REPLIES {
            recent.pop_front();
        }
        recent.push_back((unix_seconds(), reply));
    }
}

/// How often the shaping state is saved while nothing asks for it sooner.
const SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// The delivery side: hands messages to the right gateway's queue. A
/// handle on the current [`Generation`], which a configuration reload
/// replaces (see [`Outbound::reload`]).
#[derive(Clone)]
pub struct Outbound {
    current: Arc<RwLock<Generation>>,
    /// One reload (or stop) at a time.
    changing: Arc<tokio::sync::Mutex<()>>,
}

/// The delivery side as one configuration built it: its gateways, their
/// queues and workers, the apps' lanes.
#[derive(Clone)]
struct Generation {
    gateways: Arc<Vec<Arc<Gateway>>>,
    by_name: Arc<HashMap<String, usize>>,
    default: usize,
    apps: Arc<Apps>,
    spool: Spool,
    metrics: Arc<Metrics>,
    /// Stops this generation's workers, saver and sender checks.
    stop: Arc<watch::Sender<bool>>,
    /// What it was built from (to start it again after a failed reload).
    config: Arc<Config>,
    policy: Policy,
    tasks: Arc<Mutex<Option<JoinSet<()>>>>,
}

impl Outbound {
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
        Ok(Outbound {
            current: Arc::new(RwLock::new(Generation::start(
                config, spool, policy, metrics,
            )?)),
            changing: Arc::default(),
        })
    }

    fn current(&self) -> Generation {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Queues a message just accepted from `app`, with its body for a
    /// worker that is free now (see `queue`); it counts as demand.
    pub fn accepted(&self, message: StoredMessage, app: &str, body: Vec<u8>) {
        // Under the read lock: a reload swaps generations under the write
        // lock, then moves what the old one holds, this message included.
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current.accepted(message, app, body);
    }

    /// Queues a message recovered from the spool at start (see
    /// [`Generation::recovered`]).
    pub fn recovered(&self, message: StoredMessage) {
        self.current().recovered(message);
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
        Generation::check(config)?;
        let _changing = self.changing.lock().await;
        let old = self.current();
        old.stop(None).await;
        let new = match Generation::start(config, old.spool.clone(), policy, old.metrics.clone()) {
            Ok(new) => new,
            Err(error) => {
                // Checked above, so only a file changed in between gets
                // here: carry on with the old gateways, freshly started.
                tracing::error!(%error, "the new configuration failed to start; restarting the old one");
                let restarted = old.restart()?;
                Self::move_queued(&old, &restarted);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = restarted;
                return Err(error);
            }
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        let moved = Self::move_queued(&old, &new);
        for gateway in old.gateways.iter() {
            if !new.by_name.contains_key(&gateway.config.name) {
                old.metrics.forget_gateway(&gateway.config.name);
            }
        }
        tracing::info!(
            gateways = new.gateways.len(),
            apps = new.apps.names().len() - 1,
            moved,
            "delivery side reloaded"
        );
        Ok(())
    }

    /// Moves every message queued in `old` to `new`; returns how many.
    fn move_queued(old: &Generation, new: &Generation) -> usize {
        let mut moved = 0;
        for gateway in old.gateways.iter() {
            for (mut item, due) in gateway.queue.drain() {
                moved += 1;
                item.lane = new.apps.lane(
                    item.message.envelope.client_ip,
                    &item.message.envelope.sender,
                );
                new.requeue(item, due);
            }
        }
        moved
    }
}

impl Generation {
    /// Loads what starting `config` needs and can fail on, without starting.
    fn check(config: &Config) -> std::io::Result<()> {
        for gateway in &config.gateways {
            Upstream::for_gateway(gateway)?;
            Credentials::load(gateway).map_err(|error| {
                std::io::Error::new(error.kind(), format!("gateway {}: {error}", gateway.name))
            })?;
        }
        dkim::load_all(&config.dkim).map(|_| ())
    }

    /// The same gateways again, after a failed reload.
    fn restart(&self) -> std::io::Result<Generation> {
        let config = self.config.as_ref().clone();
        Generation::start(
            &config,
            self.spool.clone(),
            &self.policy,
            self.metrics.clone(),
        )
    }

    /// Starts the workers of every gateway, the state saver and the sender
    /// checks, all stopped by [`Generation::stop`].
    fn start(
        config: &Config,
        spool: Spool,
        policy: &Policy,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Generation> {
        let (stop, shutdown) = Shutdown::channel();
        let mut tasks = JoinSet::new();
        let upstreams = config
            .gateways
            .iter()
            .map(Upstream::for_gateway)
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut logins = Vec::with_capacity(config.gateways.len());
        for gateway in &config.gateways {
            logins.push(Credentials::load(gateway).map_err(|error| {
                std::io::Error::new(error.kind(), format!("gateway {}: {error}", gateway.name))
            })?);
        }
        let apps = &policy.apps;
        let save_wanted = Arc::new(Notify::new());
        let gateways: Vec<Arc<Gateway>> = config
            .gateways
            .iter()
            .zip(upstreams)
            .zip(logins)
            .map(|((gateway, tls), credentials)| {
                let saved = load_state(&spool, &gateway.name);
                let shaping = &gateway.shaping;
                let queue = DeliveryQueue::new(
                    &gateway.name,
                    |now| match &saved {
                        Some(state) => GatewayModel::restore(shaping, state, now),
                        None => GatewayModel::new(shaping, now),
                    },
                    apps.weights(),
                    save_wanted.clone(),
                );
                let model = queue.view().0.model;
                tracing::info!(
                    gateway = %gateway.name,
                    history = if saved.is_some() { "restored" } else { "none (initial_rate)" },
                    baseline = %format_rate(model.baseline),
                    ceiling = %format_rate(model.ceiling),
                    "shaping model ready"
                );
                Arc::new(Gateway {
                    config: gateway.clone(),
                    tls,
                    credentials,
                    queue,
                    recent: Mutex::new(VecDeque::new()),
                    backoff: Backoff {
                        initial: gateway.retry_initial,
                        max: gateway.retry_max,
                    },
                })
            })
            .collect();
        let signers = dkim::load_all(&config.dkim)?;
        let context = WorkerContext {
            signers: Arc::new(signers),
            spool: spool.clone(),
            helo_name: config.server.hostname.clone(),
            metrics: metrics.clone(),
        };
        for gateway in &gateways {
            for _ in 0..gateway.config.max_connections {
                tasks.spawn(worker(gateway.clone(), context.clone(), shutdown.clone()));
            }
        }
        for (index, gateway) in gateways.iter().enumerate() {
            let addresses: Vec<String> = apps
                .sender_addresses()
                .into_iter()
                .filter(|address| policy.router.route(address) == index)
                .collect();
            if let Some(ip) = gateway.config.sending_ip {
                verify::check_sender_domains(
                    gateway.config.name.clone(),
                    config.sender_domains(index),
                    ip,
                    gateway.config.dkim_selectors.clone(),
                );
            }
            if gateway.config.verify_senders && !addresses.is_empty() {
                tasks.spawn(verify::verify_senders(
                    gateway.clone(),
                    config.server.hostname.clone(),
                    addresses,
                    policy.senders.clone(),
                    shutdown.clone(),
                ));
            }
        }
        let generation = Generation {
            apps: apps.clone(),
            spool: spool.clone(),
            metrics,
            stop: Arc::new(stop),
            config: Arc::new(config.clone()),
            policy: policy.clone(),
            by_name: Arc::new(
                gateways
                    .iter()
                    .enumerate()
                    .map(|(index, gateway)| (gateway.config.name.clone(), index))
                    .collect(),
            ),
            default: config.gateways.iter().position(|g| g.default).unwrap_or(0),
            gateways: Arc::new(gateways),
            tasks: Arc::default(),
        };
        tasks.spawn(generation.clone().save_periodically(save_wanted, shutdown));
        *generation.tasks.lock().unwrap_or_else(|p| p.into_inner()) = Some(tasks);
        Ok(generation)
    }

    /// Stops the workers, letting each finish the delivery in hand (up to
    /// `grace`, then they are cut off and their messages stay in the spool
    /// for the next start), and saves the shaping state with exact counts.
    async fn stop(&self, grace: Option<Duration>) {
        let _ = self.stop.send(true);
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut tasks) = tasks {
            let joined = async { while tasks.join_next().await.is_some() {} };
            match grace {
                Some(grace) => {
                    if tokio::time::timeout(grace, joined).await.is_err() {
                        tracing::warn!(
                            "deliveries still running after shutdown_grace; they stay queued"
                        );
                        tasks.shutdown().await;
                    }
                }
                None => joined.await,
            }
        }
        // Exact cap counts now that nothing sends any more.
        self.save_shaping(false).await;
    }

    /// Queues a message just accepted from `app` (see [`Outbound::accepted`]).
    fn accepted(&self, message: StoredMessage, app: &str, body: Vec<u8>) {
        let lane = self.apps.lane_named(app);
        self.metrics
            .messages_accepted
            .with_label_values(&[message.gateway.as_str(), self.apps.name(lane)])
            .inc();
        self.enqueue(message, lane, Some(body), true);
    }

    /// Queues a message moved from the previous generation: a retry keeps
    /// its time.
    fn requeue(&self, item: Queued, due: Option<Instant>) {
        let gateway = &self.gateways[self.index(&item.message.gateway, &item.message.id)];
        match due {
            Some(due) => gateway.queue.retry_at(item, due),
            None => gateway
                .queue
                .push(item, false, gateway.config.max_connections),
        }
    }

    /// Queues a message recovered from the spool at start (its app found
    /// again by network or sender). One recovered for a gateway that is no
    /// longer configured goes to the default one.
    fn recovered(&self, message: StoredMessage) {
        let lane = self
            .apps
            .lane(message.envelope.client_ip, &message.envelope.sender);
        self.enqueue(message, lane, None, false);
    }

    /// The index of gateway `name`, or of the default gateway (logged) when
    /// it is no longer configured.
    fn index(&self, name: &str, queue_id: &str) -> usize {
        match self.by_name.get(name) {
            Some(index) => *index,
            None => {
                let fallback = &self.gateways[self.default].config.name;
                tracing::warn!(
                    %queue_id,
                    gateway = %name,
                    %fallback,
                    "gateway no longer configured; delivering through the default gateway"
                );
                self.default
            }
        }
    }

    fn enqueue(&self, message: StoredMessage, lane: usize, body: Option<Vec<u8>>, arrival: bool) {
        let gateway = &self.gateways[self.index(&message.gateway, &message.id)];
        gateway.queue.push(
            Queued {
                message,
                attempts: 0,
                lane,
                body,
                history: Vec::new(),
            },
            arrival,
            gateway.config.max_connections,
        );
    }

    /// The shaping model and queue of the named gateway.
    fn view(&self, gateway: &str) -> Option<GatewayView> {
        let index = self.by_name.get(gateway)?;
        Some(self.gateways[*index].queue.view().0)
    }

    fn gateway(&self, name: &str) -> Result<&Gateway, AdminError> {
        self.by_name
            .get(name)
            .map(|index| self.gateways[*index].as_ref())
            .ok_or_else(|| AdminError::NotFound(format!("no gateway named {name}")))
    }

    fn summary(gateway: &Gateway, item: &Queued, place: queue::Place) -> QueuedSummary {
        let message = &item.message;
        let (state, retry_at) = match place {
            queue::Place::Ready => ("ready", None),
            queue::Place::Retry(at) => ("retry", Some(at.max(0.0) as u64)),
        };
        QueuedSummary {
            id: message.id.clone(),
            gateway: gateway.config.name.clone(),
            sender: message.envelope.sender.clone(),
            recipients: message
                .pending
                .iter()
                .filter_map(|index| message.envelope.recipients.get(*index as usize).cloned())
                .collect(),
            size: message.location.body_len,
            received_at: message.envelope.received_at,
            attempts: item.attempts,
            state,
            retry_at,
        }
    }

    /// The queued message `id`, its gateway, summary and attempts.
    fn find(&self, id: &str) -> Result<(QueuedSummary, StoredMessage, Vec<Attempt>), AdminError> {
        for gateway in self.gateways.iter() {
            let mut found = None;
            gateway.queue.visit(|item, place| {
                if found.is_none() && item.message.id == id {
                    found = Some((
                        Self::summary(gateway, item, place),
                        item.message.clone(),
                        item.history.clone(),
                    ));
                }
            });
            if let Some(found) = found {
                return Ok(found);
            }
        }
        Err(AdminError::NotFound(format!(
            "no queued message {id} (delivered, deleted, or being delivered right now)"
        )))
    }

    /// Saves every gateway's shaping state. With `reserve`, the cap counts
    /// saved include the units the gateway may send before the next save;
    /// without (at shutdown, once the workers stopped) they are exact.
    async fn save_shaping(&self, reserve: bool) {
        for gateway in self.gateways.iter() {
            let name = &gateway.config.name;
            let (state, reserve) = gateway.queue.snapshot(reserve);
            match self
                .spool
                .save_shaping_state(name, state.to_text(name))
                .await
            {
                Ok(()) => gateway.queue.saved(reserve),
                Err(error) => {
                    tracing::error!(gateway = %name, %error, "cannot save the shaping state; capped sends wait until it is saved");
                }
            }
        }
    }

    async fn save_periodically(self, save_wanted: Arc<Notify>, mut shutdown: Shutdown) {
        loop {
            self.save_shaping(true).await;
            tokio::select! {
                _ = shutdown.stopped() => break,
                _ = save_wanted.notified() => {}
                _ = tokio::time::sleep(SAVE_INTERVAL) => {}
            }
        }
    }

    /// Messages queued on the named gateway.
    fn queued(&self, gateway: &str) -> usize {
        self.by_name
            .get(gateway)
            .map_or(0, |index| self.gateways[*index].queue.len())
    }
}

impl Admission for Outbound {
    fn admit(&self, gateway: &str, app: &str, recipients: usize) -> Result<(), Deferral> {
        self.current().admit(gateway, app, recipients)
    }
}

impl Admission for Generation {
    /// Defers new mail whose projected wait on its gateway is too long; logs
    /// each deferral with its reason.
    fn admit(&self, gateway: &str, app: &str, recipients: usize) -> Result<(), Deferral> {
        let Some(index) = self.by_name.get(gateway) else {
            return Ok(());
        };
        let gateway = &self.gateways[*index];
        let lane = self.apps.lane_named(app);
        gateway
            .queue
            .admit(lane, recipients)
            .inspect_err(|deferral| {
                self.metrics
                    .deferrals
                    .with_label_values(&[gateway.config.name.as_str(), deferral.reason.as_str()])
                    .inc();
                tracing::warn!(
                    gateway = %gateway.config.name,
                    app = %self.apps.name(lane),
                    reason = deferral.reason.as_str(),
                    projected_wait = %format!("{:.0}s", deferral.projected_wait),
                    retry_after = %format!("{:.0}s", deferral.retry_after),
                    "new mail deferred (451 4.7.1)"
                );
            })
    }
}

impl Queues for Outbound {
    fn statuses(&self) -> Vec<GatewayStatus> {
        self.current().statuses()
    }

    fn list(&self, gateway: Option<&str>) -> Result<Vec<QueuedSummary>, AdminError> {
        self.current().list(gateway)
    }

    async fn show(&self, id: &str) -> Result<QueuedDetail, AdminError> {
        self.current().show(id).await
    }

    fn retry(&self, id: Option<&str>) -> Result<usize, AdminError> {
        self.current().retry(id)
    }

    fn hold(&self, gateway: &str, held: bool) -> Result<(), AdminError> {
        self.current().hold(gateway, held)
    }

    fn delete(&self, id: &str) -> Result<QueuedSummary, AdminError> {
        self.current().delete(id)
    }

    fn dead_letters(&self) -> Result<Vec<String>, AdminError> {
        self.current().dead_letters()
    }

    async fn requeue(&self, dead_letter: &str) -> Result<String, AdminError> {
        let stored = self.current().restore_dead_letter(dead_letter).await?;
        let id = stored.id.clone();
        // Through the handle, so a reload meanwhile does not strand it.
        self.recovered(stored);
        Ok(id)
    }
}

impl Generation {
    fn statuses(&self) -> Vec<GatewayStatus> {
        let lane_names = self.apps.names();
        self.gateways
            .iter()
            .map(|gateway| {
                let name = &gateway.config.name;
                let (view, queued_bytes) = gateway.queue.view();
                GatewayStatus {
                    name: name.clone(),
                    address: gateway.config.address.clone(),
                    view,
                    lane_names: lane_names.clone(),
                    queued_bytes,
                    held: gateway.queue.is_held(),
                    connections: self
                        .metrics
                        .upstream_connections
                        .with_label_values(&[name])
                        .get(),
                    recent_replies: gateway
                        .recent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .cloned()
                        .collect(),
                }
            })
            .collect()
    }

    fn list(&self, gateway: Option<&str>) -> Result<Vec<QueuedSummary>, AdminError> {
        let gateways: Vec<&Gateway> = match gateway {
            Some(name) => vec![self.gateway(name)?],
            None => self.gateways.iter().map(AsRef::as_ref).collect(),
        };
        let mut list = Vec::new();
        for gateway in gateways {
            gateway
                .queue
                .visit(|item, place| list.push(Self::summary(gateway, item, place)));
        }
        list.sort_by(|a, b| a.received_at.cmp(&b.received_at).then(a.id.cmp(&b.id)));
        Ok(list)
    }

    async fn show(&self, id: &str) -> Result<QueuedDetail, AdminError> {
        let (summary, message, history) = self.find(id)?;
        let body = self
            .spool
            .read_body(message.location)
            .await
            .map_err(|error| {
                AdminError::Failed(format!("cannot read {id} from the spool: {error}"))
            })?;
        let (headers, _) = crate::smtp::header::split(&body);
        Ok(QueuedDetail {
            summary,
            client_ip: message.envelope.client_ip.to_string(),
            headers: String::from_utf8_lossy(headers).into_owned(),
            history,
        })
    }

    fn retry(&self, id: Option<&str>) -> Result<usize, AdminError> {
        let moved: usize = self.gateways.iter().map(|g| g.queue.retry_now(id)).sum();
        match id {
            Some(id) if moved == 0 => {
                self.find(id)?;
                Err(AdminError::Conflict(format!(
                    "{id} is not waiting for a retry (it goes as soon as the shaper lets it)"
                )))
            }
            _ => {
                tracing::info!(
                    queue_id = id.unwrap_or("all"),
                    retried = moved,
                    "operator asked for retries now"
                );
                Ok(moved)
            }
        }
    }

    fn hold(&self, gateway: &str, held: bool) -> Result<(), AdminError> {
        self.gateway(gateway)?.queue.hold(held);
        tracing::warn!(%gateway, held, "operator {} the gateway's queue", if held { "held" } else { "released" });
        Ok(())
    }

    fn delete(&self, id: &str) -> Result<QueuedSummary, AdminError> {
        for gateway in self.gateways.iter() {
            if let Some(item) = gateway.queue.remove(id) {
                let summary = Self::summary(gateway, &item, queue::Place::Ready);
                self.spool.message_done(&item.message);
                tracing::warn!(
                    queue_id = %id,
                    gateway = %gateway.config.name,
                    sender = %item.message.envelope.sender,
                    recipients = summary.recipients.len(),
                    "operator deleted a queued message; it will not be delivered"
                );
                return Ok(summary);
            }
        }
        self.find(id)?;
        Err(AdminError::Conflict(format!(
            "{id} is being delivered; try again"
        )))
    }

    fn dead_letters(&self) -> Result<Vec<String>, AdminError> {
        self.spool
            .dead_letter_names()
            .map_err(|error| AdminError::Failed(format!("cannot list dead letters: {error}")))
    }

    /// Stores dead letter `name` as a new message (and removes the file);
    /// the caller queues it.
    async fn restore_dead_letter(&self, name: &str) -> Result<StoredMessage, AdminError> {
        let letter = self.spool.read_dead_letter(name).await.map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                AdminError::NotFound(format!("no dead letter {name}"))
            } else {
                AdminError::Failed(format!("cannot read dead letter {name}: {error}"))
            }
        })?;
        let gateway = match self.by_name.get(&letter.gateway) {
            Some(_) => letter.gateway.clone(),
            None => self.gateways[self.default].config.name.clone(),
        };
        let id = crate::spool::new_queue_id();
        let stored = self
            .spool
            .store(id, &gateway, letter.envelope, &[&letter.body])
            .await
            .map_err(|error| AdminError::Failed(format!("cannot queue {name} again: {error}")))?;
        self.spool.remove_dead_letter(name).map_err(|error| {
            AdminError::Failed(format!(
                "queued as {} but cannot remove {name}: {error}",
                stored.id
            ))
        })?;
        tracing::warn!(
            dead_letter = %name,
            queue_id = %stored.id,
            old_queue_id = %letter.queue_id,
            %gateway,
            recipients = stored.envelope.recipients.len(),
            "operator queued a dead letter again"
        );
        Ok(stored)
    }
}

/// The gateway's saved shaping state; a damaged file is logged and ignored.
fn load_state(spool: &Spool, gateway: &str) -> Option<SavedState> {
    match spool.load_shaping_state(gateway) {
        Ok(Some(text)) => {
            let state = SavedState::parse(&text);
            if state.is_none() {
                tracing::error!(%gateway, "the saved shaping state is damaged; starting from initial_rate and empty caps");
            }
            state
        }
        Ok(None) => None,
        Err(error) => {
            tracing::error!(%gateway, %error, "cannot read the saved shaping state; starting from initial_rate");
            None
        }
    }
}
