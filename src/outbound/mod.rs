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

mod client;
pub mod dkim;
mod queue;
pub mod retry;
mod verify;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::units::format_rate;
use crate::config::{Config, GatewayConfig};
use crate::policy::{Apps, Policy};
use crate::shaper::{Admission, Deferral, GatewayModel, GatewayView, SavedState};
use crate::shutdown::Shutdown;
use crate::spool::{Spool, StoredMessage};
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
}

/// How often the shaping state is saved while nothing asks for it sooner.
const SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// The delivery side: hands messages to the right gateway's queue.
#[derive(Clone)]
pub struct Outbound {
    gateways: Arc<Vec<Arc<Gateway>>>,
    by_name: Arc<HashMap<String, usize>>,
    default: usize,
    apps: Arc<Apps>,
    spool: Spool,
}

impl Outbound {
    /// Starts the workers of every gateway on `tasks`; they stop when
    /// `shutdown` turns true. Fails when a gateway's TLS settings cannot be
    /// loaded (its CA file).
    /// `policy` is the sessions' (its apps place messages in lanes; gateways
    /// with `verify_senders` record into its sender checks).
    pub fn start(
        config: &Config,
        spool: Spool,
        tasks: &mut JoinSet<()>,
        shutdown: Shutdown,
        policy: &Policy,
    ) -> std::io::Result<Outbound> {
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
                let model = queue.view().model;
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
        let outbound = Outbound {
            apps: apps.clone(),
            spool: spool.clone(),
            by_name: Arc::new(
                gateways
                    .iter()
                    .enumerate()
                    .map(|(index, gateway)| (gateway.config.name.clone(), index))
                    .collect(),
            ),
            default: config.gateways.iter().position(|g| g.default).unwrap_or(0),
            gateways: Arc::new(gateways),
        };
        tasks.spawn(outbound.clone().save_periodically(save_wanted, shutdown));
        Ok(outbound)
    }

    /// Queues a message just accepted from app `lane`, with its body for a
    /// worker that is free now (see `queue`); it counts as demand.
    pub fn accepted(&self, message: StoredMessage, lane: usize, body: Vec<u8>) {
        self.enqueue(message, lane, Some(body), true);
    }

    /// Queues a message recovered from the spool at start (its app found
    /// again by network or sender). One recovered for a gateway that is no
    /// longer configured goes to the default one.
    pub fn recovered(&self, message: StoredMessage) {
        let lane = self
            .apps
            .lane(message.envelope.client_ip, &message.envelope.sender);
        self.enqueue(message, lane, None, false);
    }

    fn enqueue(&self, message: StoredMessage, lane: usize, body: Option<Vec<u8>>, arrival: bool) {
        let index = match self.by_name.get(&message.gateway) {
            Some(index) => *index,
            None => {
                let fallback = &self.gateways[self.default].config.name;
                tracing::warn!(
                    queue_id = %message.id,
                    gateway = %message.gateway,
                    fallback = %fallback,
                    "gateway no longer configured; delivering through the default gateway"
                );
                self.default
            }
        };
        let gateway = &self.gateways[index];
        gateway.queue.push(
            Queued {
                message,
                attempts: 0,
                lane,
                body,
            },
            arrival,
            gateway.config.max_connections,
        );
    }

    /// The shaping model and queue of the named gateway.
    pub fn view(&self, gateway: &str) -> Option<GatewayView> {
        let index = self.by_name.get(gateway)?;
        Some(self.gateways[*index].queue.view())
    }

    /// Saves every gateway's shaping state. With `reserve`, the cap counts
    /// saved include the units the gateway may send before the next save;
    /// without (at shutdown, once the workers stopped) they are exact.
    pub async fn save_shaping(&self, reserve: bool) {
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
    pub fn queued(&self, gateway: &str) -> usize {
        self.by_name
            .get(gateway)
            .map_or(0, |index| self.gateways[*index].queue.len())
    }
}

impl Admission for Outbound {
    /// Defers new mail whose projected wait on its gateway is too long; logs
    /// each deferral with its reason.
    fn admit(&self, gateway: usize, lane: usize, recipients: usize) -> Result<(), Deferral> {
        let Some(gateway) = self.gateways.get(gateway) else {
            return Ok(());
        };
        gateway
            .queue
            .admit(lane, recipients)
            .inspect_err(|deferral| {
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
