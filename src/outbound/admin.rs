//! The queue admin API of one generation (what `smtp-shaper queue` and
//! `/admin/` do): list, show, retry, hold, delete, dead letters.

use super::Gateway;
use super::generation::Generation;
use super::queue::{self, Attempt, Parked, Slot, Visited};
use crate::poison::LockRecovered;
use crate::shaper::Taken;
use crate::spool::{StoredMessage, dead_letter_order, unix_seconds};
use crate::telemetry::{
    AdminError, GatewayStatus, Listing, Page, PagePicker, QueuedDetail, QueuedSummary, RetryReport,
};

impl Generation {
    fn gateway(&self, name: &str) -> Result<&Gateway, AdminError> {
        self.by_name
            .get(name)
            .map(|index| self.gateways[*index].as_ref())
            .ok_or_else(|| AdminError::NotFound(format!("no gateway named {name}")))
    }

    /// The summary of a queued message: `attempts` made, ready or waiting
    /// for a retry (`place`).
    fn summary(
        gateway: &Gateway,
        message: &StoredMessage,
        attempts: u32,
        place: queue::Place,
    ) -> QueuedSummary {
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
            attempts,
            state,
            retry_at,
        }
    }

    /// A parked message's envelope, read back from the spool.
    fn read_parked(&self, parked: &Parked) -> Result<StoredMessage, AdminError> {
        self.spool
            .read_message_now(parked.segment(), parked.offset())
            .map_err(|error| {
                AdminError::Failed(format!(
                    "cannot read {} from the spool: {error}",
                    parked.id()
                ))
            })
    }

    /// The queued message `id`, its gateway, summary and attempts.
    fn find(&self, id: &str) -> Result<(QueuedSummary, StoredMessage, Vec<Attempt>), AdminError> {
        for gateway in self.gateways.iter() {
            let mut found = None;
            let mut parked = None;
            gateway.queue.visit(|visited, place| match visited {
                Visited::Held(item) if found.is_none() && item.message.id == id => {
                    found = Some((
                        Self::summary(gateway, &item.message, item.attempts, place),
                        item.message.clone(),
                        item.history.clone(),
                    ));
                }
                Visited::Parked(entry) if parked.is_none() && entry.id() == id => {
                    parked = Some((*entry, place));
                }
                _ => {}
            });
            if let Some((entry, place)) = parked {
                let message = self.read_parked(&entry)?;
                found = Some((
                    Self::summary(gateway, &message, 0, place),
                    message,
                    Vec::new(),
                ));
            }
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
                if let Some(observing) = &gateway.observing {
                    observing.catch_up(&gateway.queue);
                }
                let (view, queued_bytes) = gateway.queue.view();
                GatewayStatus {
                    name: name.clone(),
                    address: gateway.config.address.clone(),
                    view,
                    lane_names: lane_names.clone(),
                    queued_bytes,
                    parked: gateway.queue.parked(),
                    held: gateway.queue.is_held(),
                    max_age: gateway.config.max_age,
                    cluster: gateway.queue.cluster_view(),
                    observed_backlog: gateway.observing.as_ref().and_then(|o| o.backlog()),
                    connections: self
                        .metrics
                        .upstream_connections
                        .with_label_values(&[name])
                        .get(),
                    recent_replies: gateway.recent.lock_recovered().iter().cloned().collect(),
                    history: gateway.history.view(unix_seconds() as f64),
                }
            })
            .collect()
    }

    /// A page of the queued messages by queue id (see `Queues::list`):
    /// the page is picked holding at most `page.limit` entries, and only
    /// its parked envelopes are read back from the spool.
    pub(super) fn list(
        &self,
        gateway: Option<&str>,
        page: &Page,
    ) -> Result<Listing<QueuedSummary>, AdminError> {
        let gateways: Vec<&Gateway> = match gateway {
            Some(name) => vec![self.gateway(name)?],
            None => self.gateways.iter().map(AsRef::as_ref).collect(),
        };
        let mut picker = PagePicker::new(page.limit);
        let mut total = 0;
        for (index, gateway) in gateways.iter().enumerate() {
            gateway.queue.visit(|visited, place| {
                total += 1;
                let id = visited.id();
                if page.after.as_deref().is_some_and(|after| *id <= *after) {
                    return;
                }
                let key = id.into_owned();
                picker.offer(key, || match visited {
                    Visited::Held(item) => {
                        Ok(Self::summary(gateway, &item.message, item.attempts, place))
                    }
                    Visited::Parked(parked) => Err((index, *parked, place)),
                });
            });
        }
        let more = picker.more();
        let mut entries = Vec::new();
        for (_, entry) in picker.into_sorted() {
            match entry {
                Ok(summary) => entries.push(summary),
                Err((index, parked, place)) => {
                    match self
                        .spool
                        .read_message_now(parked.segment(), parked.offset())
                    {
                        Ok(message) => {
                            entries.push(Self::summary(gateways[index], &message, 0, place))
                        }
                        // Delivered since, and its segment removed.
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => {
                            return Err(AdminError::Failed(format!(
                                "cannot read {} from the spool: {error}",
                                parked.id()
                            )));
                        }
                    }
                }
            }
        }
        Ok(Listing {
            entries,
            total,
            more,
        })
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
            history: history
                .into_iter()
                .map(|attempt| (attempt.at, attempt.reply))
                .collect(),
        })
    }

    pub(super) fn retry(&self, id: Option<&str>) -> Result<RetryReport, AdminError> {
        let moved: usize = self.gateways.iter().map(|g| g.queue.retry_now(id)).sum();
        let still_paused = self
            .gateways
            .iter()
            .map(|g| (g.config.name.clone(), g.queue.pause_left()))
            // A pause about to end is not worth the operator's while.
            .filter(|(_, left)| *left >= 1.0)
            .collect();
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
                Ok(RetryReport {
                    retried: moved,
                    still_paused,
                })
            }
        }
    }

    pub(super) fn unpause(&self, gateway: &str) -> Result<f64, AdminError> {
        let left = self.gateway(gateway)?.queue.end_pause();
        tracing::warn!(
            %gateway,
            pause_left = %format!("{left:.0}s"),
            "operator ended the gateway's throttling or quota pause; a throttling cut stays and recovers as it would"
        );
        Ok(left)
    }

    pub(super) fn hold(&self, gateway: &str, held: bool) -> Result<(), AdminError> {
        self.gateway(gateway)?.queue.hold(held);
        tracing::warn!(%gateway, held, "operator {} the gateway's queue", if held { "held" } else { "released" });
        Ok(())
    }

    pub(super) fn delete(&self, id: &str) -> Result<QueuedSummary, AdminError> {
        for gateway in self.gateways.iter() {
            if let Some(Taken {
                item: slot,
                lane,
                receiver,
                units,
            }) = gateway.queue.remove(id)
            {
                let (message, attempts) = match slot {
                    Slot::Held(item) => (item.message, item.attempts),
                    Slot::Parked(parked) => match self.read_parked(&parked) {
                        Ok(message) => (message, 0),
                        Err(error) => {
                            // Not deleted: back in its lane (at the end).
                            gateway.queue.push_parked(parked, (lane, receiver), units);
                            return Err(error);
                        }
                    },
                };
                let summary = Self::summary(gateway, &message, attempts, queue::Place::Ready);
                self.spool.message_done(&message);
                tracing::warn!(
                    queue_id = %id,
                    gateway = %gateway.config.name,
                    sender = %message.envelope.sender,
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

    /// A page of the dead-letter files, oldest first, picked holding at
    /// most `page.limit` names.
    pub(super) fn dead_letters(&self, page: &Page) -> Result<Listing<String>, AdminError> {
        let after = page.after.as_deref().map(dead_letter_order);
        let mut picker = PagePicker::new(page.limit);
        let mut total = 0;
        self.spool
            .visit_dead_letters(|name| {
                total += 1;
                let key = dead_letter_order(&name);
                if after.as_ref().is_none_or(|after| key > *after) {
                    picker.offer(key, || ());
                }
            })
            .map_err(|error| AdminError::Failed(format!("cannot list dead letters: {error}")))?;
        let more = picker.more();
        let entries = picker
            .into_sorted()
            .into_iter()
            .map(|((_, name), ())| name)
            .collect();
        Ok(Listing {
            entries,
            total,
            more,
        })
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
