//! Delivery to the gateways: per gateway a queue and a pool of workers, each
//! holding one reused upstream connection.
//!
//! Per recipient: 2xx is done; 4xx or a failed connection is retried on the
//! backoff schedule until `max_age`; 5xx, or 4xx past `max_age`, goes to the
//! dead-letter area with the gateway's reply. A message leaves the spool only
//! when every recipient is done or dead-lettered (DESIGN.md invariant 2).

mod client;
mod queue;
pub mod retry;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinSet;

use crate::config::{Config, GatewayConfig};
use crate::shutdown::Shutdown;
use crate::spool::{Spool, StoredMessage};
use queue::{DeliveryQueue, Queued};
use retry::Backoff;
use worker::{WorkerContext, worker};

/// One gateway at run time, shared by its workers.
struct Gateway {
    config: GatewayConfig,
    queue: DeliveryQueue,
    backoff: Backoff,
}

/// The delivery side: hands messages to the right gateway's queue.
#[derive(Clone)]
pub struct Outbound {
    gateways: Arc<Vec<Arc<Gateway>>>,
    by_name: Arc<HashMap<String, usize>>,
    default: usize,
}

impl Outbound {
    /// Starts the workers of every gateway on `tasks`; they stop when `shutdown` turns true.
    pub fn start(
        config: &Config,
        spool: Spool,
        tasks: &mut JoinSet<()>,
        shutdown: Shutdown,
    ) -> Outbound {
        let gateways: Vec<Arc<Gateway>> = config
            .gateways
            .iter()
            .map(|gateway| {
                Arc::new(Gateway {
                    config: gateway.clone(),
                    queue: DeliveryQueue::default(),
                    backoff: Backoff {
                        initial: gateway.retry_initial,
                        max: gateway.retry_max,
                    },
                })
            })
            .collect();
        let context = WorkerContext {
            spool,
            helo_name: config.server.hostname.clone(),
        };
        for gateway in &gateways {
            for _ in 0..gateway.config.max_connections {
                tasks.spawn(worker(gateway.clone(), context.clone(), shutdown.clone()));
            }
        }
        Outbound {
            by_name: Arc::new(
                gateways
                    .iter()
                    .enumerate()
                    .map(|(index, gateway)| (gateway.config.name.clone(), index))
                    .collect(),
            ),
            default: config.gateways.iter().position(|g| g.default).unwrap_or(0),
            gateways: Arc::new(gateways),
        }
    }

    /// Queues a stored message on its gateway, with its body when the caller
    /// still has it (see `queue`). A message recovered for a gateway that is
    /// no longer configured goes to the default one.
    pub fn enqueue(&self, message: StoredMessage, body: Option<Vec<u8>>) {
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
                body,
            },
            gateway.config.max_connections,
        );
    }

    /// Messages queued on the named gateway.
    pub fn queued(&self, gateway: &str) -> usize {
        self.by_name
            .get(gateway)
            .map_or(0, |index| self.gateways[*index].queue.len())
    }
}
