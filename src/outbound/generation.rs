//! One generation of the delivery side: the gateways, queues and workers
//! one configuration built. [`Outbound`](super::Outbound) holds the current
//! one; a reload stops it (each delivery in hand finishes), saves its
//! shaping state, starts the next from that state and moves the queued
//! messages over.

use crate::poison::LockRecovered;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::Credentials;
use super::held;
use super::history::Kept;
use super::observed::Observing;
use super::queue::{DeliveryQueue, Parked, Parking, Queued};
use super::retry::Backoff;
use super::worker::{WorkerContext, worker};
use super::{Gateway, dkim, verify};
use crate::cluster::{Cluster, HEARTBEAT_INTERVAL};
use crate::config::{Config, GatewayConfig};
use crate::policy::receiver_lookup::ReceiverLookup;
use crate::policy::{Apps, Policy};
use crate::shaper::Horizon;
use crate::shaper::observe::{self, Observer};
use crate::shaper::{
    Admission, BudgetView, Deferral, GatewayModel, GatewayView, Projection, SavedState,
};
use crate::shutdown::Shutdown;
use crate::spool::{Spool, StoredMessage};
use crate::telemetry::Metrics;
use crate::tls::client::Upstream;

/// How often the shaping state is saved while nothing asks for it sooner.
const SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// The delivery side as one configuration built it: its gateways, their
/// queues and workers, the apps' lanes.
#[derive(Clone)]
pub(super) struct Generation {
    pub(super) gateways: Arc<Vec<Arc<Gateway>>>,
    pub(super) by_name: Arc<HashMap<String, usize>>,
    pub(super) default: usize,
    pub(super) apps: Arc<Apps>,
    /// The receiver of each recipient (a queued message's is its first's).
    pub(super) receivers: Arc<ReceiverLookup>,
    pub(super) spool: Spool,
    pub(super) metrics: Arc<Metrics>,
    /// Stops this generation's workers, saver and sender checks.
    pub(super) stop: Arc<watch::Sender<bool>>,
    pub(super) tasks: Arc<Mutex<Option<JoinSet<()>>>>,
}

/// What starting a configuration reads from files and the environment, and
/// so can fail on: each gateway's TLS settings and login, the DKIM keys.
/// Loaded before anything stops, so a reload that cannot start is refused
/// while the running generation still runs.
pub(super) struct Loaded {
    upstreams: Vec<Upstream>,
    logins: Vec<Option<Credentials>>,
    signers: Vec<dkim::Signer>,
}

impl Loaded {
    pub(super) fn load(config: &Config) -> std::io::Result<Loaded> {
        let mut loaded = Loaded {
            upstreams: Vec::with_capacity(config.gateways.len()),
            logins: Vec::with_capacity(config.gateways.len()),
            signers: dkim::load_all(&config.dkim)?,
        };
        for gateway in &config.gateways {
            loaded.upstreams.push(Upstream::for_gateway(gateway)?);
            loaded
                .logins
                .push(Credentials::load(gateway).map_err(|error| {
                    std::io::Error::new(error.kind(), format!("gateway {}: {error}", gateway.name))
                })?);
        }
        Ok(loaded)
    }
}

impl Generation {
    /// Starts the workers of every gateway, the state saver and the sender
    /// checks, all stopped by [`Generation::stop`].
    pub(super) fn start(
        config: &Config,
        loaded: Loaded,
        spool: Spool,
        policy: &Policy,
        metrics: Arc<Metrics>,
        cluster: Option<&Arc<Cluster>>,
        told: Arc<held::Told>,
    ) -> Generation {
        let (stop, shutdown) = Shutdown::channel();
        let mut tasks = JoinSet::new();
        let apps = &policy.apps;
        let save_wanted = Arc::new(Notify::new());
        let gateways: Vec<Arc<Gateway>> = config
            .gateways
            .iter()
            .zip(loaded.upstreams)
            .zip(loaded.logins)
            .map(|((gateway, tls), credentials)| {
                let (queue, history, observing) = open_queue(
                    config,
                    gateway,
                    &spool,
                    policy,
                    &save_wanted,
                    &metrics,
                    cluster,
                );
                Arc::new(Gateway {
                    config: gateway.clone(),
                    tls,
                    credentials,
                    queue,
                    recent: Mutex::new(VecDeque::new()),
                    history,
                    observing,
                    first_contact: Mutex::new(None),
                    backoff: Backoff {
                        initial: gateway.retry_initial,
                        max: gateway.retry_max,
                    },
                })
            })
            .collect();
        let context = WorkerContext {
            signers: Arc::new(loaded.signers),
            spool: spool.clone(),
            helo_name: config.server.hostname.clone(),
            metrics: metrics.clone(),
            report_lane: apps.other_lane(),
            holding: Arc::new(apps.holding()),
        };
        for gateway in &gateways {
            for _ in 0..gateway.config.max_connections {
                tasks.spawn(worker(gateway.clone(), context.clone(), shutdown.clone()));
            }
            tasks.spawn(held::sweep(
                gateway.clone(),
                context.clone(),
                told.clone(),
                shutdown.clone(),
            ));
            if cluster.is_some() {
                tasks.spawn(heartbeats(gateway.clone(), shutdown.clone()));
            }
            tasks.spawn(super::worker::first_contact(gateway.clone()));
        }
        check_senders(config, policy, &gateways, &mut tasks, &shutdown);
        let generation = Generation {
            apps: apps.clone(),
            receivers: policy.receivers.clone(),
            spool: spool.clone(),
            metrics,
            stop: Arc::new(stop),
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
        *generation.tasks.lock_recovered() = Some(tasks);
        generation
    }

    /// Stops the workers, letting each finish the delivery in hand (up to
    /// `grace`, then they are cut off and their messages stay in the spool
    /// for the next start), and saves the shaping state with exact counts.
    pub(super) async fn stop(&self, grace: Option<Duration>) {
        let _ = self.stop.send(true);
        let tasks = self.tasks.lock_recovered().take();
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
    pub(super) fn accepted(&self, message: StoredMessage, app: &str, body: Vec<u8>) {
        let lane = self.apps.lane_named(app);
        self.metrics
            .messages_accepted
            .with_label_values(&[message.gateway.as_str(), self.apps.name(lane)])
            .inc();
        self.enqueue(message, lane, Some(body), true);
    }

    /// Queues a message moved from the previous generation: a retry keeps
    /// its time.
    pub(super) fn requeue(&self, mut item: Queued, due: Option<Instant>) {
        let index = self.index(&item.message.gateway, &item.message.id);
        item.receiver = self.receiver_of(index, &item.message);
        let gateway = &self.gateways[index];
        match due {
            Some(due) => gateway.queue.retry_at(item, due),
            None => gateway
                .queue
                .push(item, false, gateway.config.max_connections),
        }
    }

    /// Queues a parked message moved from the previous generation's
    /// queue of `gateway` (see [`Generation::requeue`]).
    pub(super) fn requeue_parked(
        &self,
        gateway: &str,
        parked: Parked,
        (lane, receiver): (usize, Option<usize>),
        units: u64,
    ) {
        let gateway = &self.gateways[self.index(gateway, &parked.id())];
        gateway.queue.push_parked(parked, (lane, receiver), units);
    }

    /// The receiver of `message` on gateway `index`: that of its first
    /// pending recipient (a message is stored one per receiver), by name
    /// or by the MX hosts known now.
    pub(super) fn receiver_of(&self, index: usize, message: &StoredMessage) -> Option<usize> {
        let first = *message.pending.first()?;
        let recipient = message.envelope.recipients.get(first as usize)?;
        self.receivers.cached(index, recipient)
    }

    /// The index on gateway `gateway` of the receiver another generation
    /// named `name` (a reload may add, remove or reorder receivers).
    pub(super) fn receiver_named(&self, gateway: &str, name: &str) -> Option<usize> {
        let index = *self.by_name.get(gateway)?;
        self.receivers.index_named(index, name)
    }

    /// The name of receiver `receiver` of gateway `gateway`.
    pub(super) fn receiver_name(&self, gateway: &str, receiver: Option<usize>) -> &str {
        let index = self.by_name.get(gateway).copied().unwrap_or(usize::MAX);
        self.receivers.name(index, receiver)
    }

    /// Queues a message read back from the spool (a dead letter queued
    /// again), its app found by network or sender. One for a gateway that
    /// is no longer configured goes to the default one.
    pub(super) fn recovered(&self, message: StoredMessage) {
        let lane = self.lane_of(&message);
        self.enqueue(message, lane, None, false);
    }

    /// Queues a message the spool replays at start, as
    /// [`Generation::recovered`] but waking no worker (see
    /// [`Generation::wake_workers`]).
    pub(super) fn replayed(&self, message: StoredMessage) {
        let lane = self.lane_of(&message);
        let index = self.index(&message.gateway, &message.id);
        let receiver = self.receiver_of(index, &message);
        self.gateways[index]
            .queue
            .push_replayed(Queued::new(message, (lane, receiver), None));
    }

    /// Wakes every gateway's workers (after [`Generation::replayed`]).
    pub(super) fn wake_workers(&self) {
        for gateway in self.gateways.iter() {
            gateway.queue.wake_workers();
        }
    }

    /// The lane of a queued message: its app's, found by network or
    /// sender; a notification to a sender always travels in `other`'s
    /// (transactional), whatever app the address it came from would match.
    pub(super) fn lane_of(&self, message: &StoredMessage) -> usize {
        if message.notification {
            return self.apps.other_lane();
        }
        self.apps
            .lane(message.envelope.client_ip, &message.envelope.sender)
    }

    /// The index of gateway `name`, or of the default gateway (logged) when
    /// it is no longer configured.
    pub(super) fn index(&self, name: &str, queue_id: &str) -> usize {
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

    pub(super) fn enqueue(
        &self,
        message: StoredMessage,
        lane: usize,
        body: Option<Vec<u8>>,
        arrival: bool,
    ) {
        let index = self.index(&message.gateway, &message.id);
        let receiver = self.receiver_of(index, &message);
        let gateway = &self.gateways[index];
        if let Some(observing) = gateway.observing.as_ref().filter(|_| arrival) {
            observing.arrived(&gateway.queue, lane, message.pending.len());
        }
        gateway.queue.push(
            Queued::new(message, (lane, receiver), body),
            arrival,
            gateway.config.max_connections,
        );
    }

    /// The shaping model and queue of the named gateway.
    pub(super) fn view(&self, gateway: &str) -> Option<GatewayView> {
        let index = self.by_name.get(gateway)?;
        Some(self.gateways[*index].queue.view().0)
    }

    /// Saves every gateway's shaping state. With `reserve`, the cap counts
    /// saved include the units the gateway may send before the next save;
    /// without (at shutdown, once the workers stopped) they are exact.
    pub(super) async fn save_shaping(&self, reserve: bool) {
        for gateway in self.gateways.iter() {
            let name = &gateway.config.name;
            // Not interleaved with a `learn` replacing the file (see history).
            let lock = {
                let (dir, name) = (self.spool.dir().to_path_buf(), name.clone());
                tokio::task::spawn_blocking(move || crate::spool::lock_shaping_state(&dir, &name))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|locked| locked)
            };
            if let Err(error) = &lock {
                tracing::warn!(gateway = %name, %error, "saving the shaping state without its lock");
            }
            let (state, reserve) = gateway.queue.snapshot(reserve);
            let state = gateway.history.before_save(state, &self.spool, name);
            let saved = match state.to_text(name) {
                Ok(text) => self
                    .spool
                    .save_shaping_state(name, text)
                    .await
                    .map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match saved {
                Ok(()) => {
                    gateway.history.saved(&self.spool, name);
                    drop(lock);
                    gateway.queue.saved(reserve);
                }
                Err(error) => {
                    tracing::error!(gateway = %name, %error, "cannot save the shaping state; capped sends wait until it is saved");
                }
            }
        }
    }

    pub(super) async fn save_periodically(self, save_wanted: Arc<Notify>, mut shutdown: Shutdown) {
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
    pub(super) fn queued(&self, gateway: &str) -> usize {
        self.by_name
            .get(gateway)
            .map_or(0, |index| self.gateways[*index].queue.len())
    }
}

impl Admission for Generation {
    /// Defers new mail whose projected wait on its gateway is too long; logs
    /// each deferral with its reason.
    fn admit(
        &self,
        gateway: &str,
        app: &str,
        receivers: &[Option<usize>],
        fingerprint: u64,
    ) -> Result<Projection, Deferral> {
        let Some(index) = self.by_name.get(gateway) else {
            return Ok(Projection::AT_ONCE);
        };
        let gateway = &self.gateways[*index];
        let lane = self.apps.lane_named(app);
        gateway
            .queue
            .admit(lane, receivers, fingerprint)
            .inspect_err(|deferral| {
                // Logged once, with the reply, where it is sent (inbound).
                self.metrics
                    .deferrals
                    .with_label_values(&[gateway.config.name.as_str(), deferral.reason.as_str()])
                    .inc();
            })
    }
}

/// The gateway's saved shaping state; a damaged file is logged and ignored.
/// Cluster mode: the gateway's heartbeats, the first at once.
async fn heartbeats(gateway: Arc<Gateway>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.stopped() => break,
            _ = gateway.queue.heartbeat() => {}
        }
        tokio::select! {
            _ = shutdown.stopped() => break,
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
    }
}

/// A gateway's delivery queue, its model restored from the saved shaping
/// state when there is one (logged either way), and its observer when its
/// shaping observes.
fn open_queue(
    config: &Config,
    gateway: &GatewayConfig,
    spool: &Spool,
    policy: &Policy,
    save_wanted: &Arc<Notify>,
    metrics: &Metrics,
    cluster: Option<&Arc<Cluster>>,
) -> (DeliveryQueue, Kept, Option<Observing>) {
    let identity = crate::spool::shaping_state_identity(spool.dir(), &gateway.name);
    let saved = load_state(spool, &gateway.name);
    let held = saved.as_ref().is_some_and(|state| state.held);
    let shaping = &gateway.shaping;
    let now = crate::spool::unix_seconds() as f64;
    let history = Kept::at_start(saved.as_ref(), shaping, identity, now);
    let queue = DeliveryQueue::shared(
        &gateway.name,
        gateway.rate_period,
        |now| match &saved {
            Some(state) => GatewayModel::restore(shaping, state, now),
            None => GatewayModel::new(shaping, now),
        },
        policy.apps.lanes(),
        save_wanted.clone(),
        cluster.map(|cluster| {
            (
                cluster.link(&gateway.name),
                cluster.expected_nodes(),
                metrics
                    .cluster_decision_seconds
                    .with_label_values(&[gateway.name.as_str()]),
            )
        }),
        Some(Parking {
            spool: spool.clone(),
            active_limit: config.spool.active_limit,
        }),
    );
    let model = queue.view().0.model;
    tracing::info!(
        gateway = %gateway.name,
        history = %history.describe(shaping, now),
        baseline = %gateway.rate_period.format(model.baseline),
        ceiling = %gateway.rate_period.format(model.ceiling),
        hour_allowance = %allowance(&model.budgets, Horizon::Hour),
        day_allowance = %allowance(&model.budgets, Horizon::Day),
        "shaping model ready"
    );
    if saved.is_none() && shaping.initial_volume.iter().all(Option::is_none) {
        tracing::info!(
            gateway = %gateway.name,
            hour_allowance = %allowance(&model.budgets, Horizon::Hour),
            day_allowance = %allowance(&model.budgets, Horizon::Day),
            "no history for this gateway: it may send its floors in the first hour and day, and mail beyond them is held and released along the warm-up; if the gateway already sends more, learn its history from its log (smtp-shaper learn) or say so with initial_rate = [\"60/min\", \"<busiest hour>/h\", \"<busiest day>/day\"]"
        );
    }
    if let Some(state) = saved.as_ref().filter(|state| state.nodes_seen.most > 0) {
        queue.restore_nodes_seen(state.nodes_seen);
    }
    if held {
        // The operator's word from before the restart, not a new one for
        // the other nodes.
        queue.carry_standing((true, None));
        tracing::warn!(gateway = %gateway.name, "held by an operator (saved with the shaping state): nothing is delivered until `smtp-shaper queue release`");
    }
    let observing = queue.observing().then(|| {
        // The shadow starts from the same history, enforcing.
        let enforcing = observe::enforcing(shaping);
        let now = queue.shaper_time();
        let model = match &saved {
            Some(state) => GatewayModel::restore(&enforcing, state, now),
            None => GatewayModel::new(&enforcing, now),
        };
        tracing::info!(
            gateway = %gateway.name,
            observe_until = %shaping.observe_until.map_or("never (until mode = \"enforce\")".to_string(), |until| format!("{}h of history", until.as_secs() / 3600)),
            "observe mode: mail is relayed at once (hard caps still hold); what enforcement would hold is counted in smtp_shaper_observed_holds_total"
        );
        Observing::new(
            &gateway.name,
            Observer::new(model, policy.apps.lanes(), now),
            metrics,
        )
    });
    (queue, history, observing)
}

/// What the budget of `horizon` lets out in its window now, as the logs
/// say it ("unbudgeted" without one).
fn allowance(budgets: &[BudgetView], horizon: Horizon) -> String {
    budgets
        .iter()
        .find(|budget| budget.horizon == horizon)
        .map_or_else(
            || "unbudgeted".to_string(),
            |budget| budget.allowance.to_string(),
        )
}

/// The sender checks of each gateway: its sender domains' DNS (SPF, DMARC,
/// DKIM) when its `sending_ip` is known, and its apps' sender addresses
/// with `verify_senders` (a task until the generation stops).
fn check_senders(
    config: &Config,
    policy: &Policy,
    gateways: &[Arc<Gateway>],
    tasks: &mut JoinSet<()>,
    shutdown: &Shutdown,
) {
    for (index, gateway) in gateways.iter().enumerate() {
        let addresses: Vec<String> = policy
            .apps
            .sender_addresses()
            .into_iter()
            .filter(|address| policy.router.route(address) == index)
            .collect();
        if let Some(ip) = gateway.config.sending_ip {
            verify::check_sender_domains(
                gateway.config.name.clone(),
                crate::policy::sender_domains(config, index),
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
}

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
