//! The queue admin API of one generation (what `smtp-shaper queue` and
//! `/admin/` do): list, show, retry, hold, delete, dead letters.

use super::Gateway;
use super::generation::Generation;
use super::queue::{self, Queued};
use crate::spool::StoredMessage;
use crate::telemetry::{AdminError, Attempt, GatewayStatus, QueuedDetail, QueuedSummary};

impl Generation {
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

    pub(super) fn statuses(&self) -> Vec<GatewayStatus> {
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
                    cluster: gateway.queue.cluster_view(),
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

    pub(super) fn list(&self, gateway: Option<&str>) -> Result<Vec<QueuedSummary>, AdminError> {
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

    pub(super) async fn show(&self, id: &str) -> Result<QueuedDetail, AdminError> {
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

    pub(super) fn retry(&self, id: Option<&str>) -> Result<usize, AdminError> {
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

    pub(super) fn hold(&self, gateway: &str, held: bool) -> Result<(), AdminError> {
        self.gateway(gateway)?.queue.hold(held);
        tracing::warn!(%gateway, held, "operator {} the gateway's queue", if held { "held" } else { "released" });
        Ok(())
    }

    pub(super) fn delete(&self, id: &str) -> Result<QueuedSummary, AdminError> {
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

    pub(super) fn dead_letters(&self) -> Result<Vec<String>, AdminError> {
        self.spool
            .dead_letter_names()
            .map_err(|error| AdminError::Failed(format!("cannot list dead letters: {error}")))
    }

    /// Stores dead letter `name` as a new message (and removes the file);
    /// the caller queues it.
    pub(super) async fn restore_dead_letter(
        &self,
        name: &str,
    ) -> Result<StoredMessage, AdminError> {
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
