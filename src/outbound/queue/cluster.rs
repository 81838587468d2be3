//! The delivery queue in cluster mode: the async driver of the cluster
//! gate (`shaper::gate`) on the Redis store. A message the local model
//! lets go is proposed to the gateway's shared state; heartbeats publish
//! this node's depth, hear the others and write what this node did
//! meanwhile (the ledger of sends on its share, an operator's hold, a
//! rebuild of a new epoch); and what a reload carries over. The gate
//! decides every change of standing; this room holds the lock, awaits
//! Redis without it, and logs and wakes the workers. See the parent's notes.

use super::*;
use crate::shaper::gate::Standing;
use crate::shaper::shared::{Busiest, Ledger};

/// This gateway's shared state (cluster mode): the way to it, and how this
/// node stands with it (the gate, `shaper::gate`).
pub(super) struct Shared {
    pub(super) link: Arc<GatewayLink>,
    pub(super) gate: Gate,
    pub(super) decision_seconds: Histogram,
}

/// What a heartbeat publishes of this node.
pub(super) struct Depth {
    /// Messages and units queued per class (retries waiting included).
    pub(super) queued: ClassCounts,
    /// The busiest hour and day this node has seen, of the total and of
    /// each receiver.
    pub(super) busiest: Busiest,
}

impl DeliveryQueue {
    /// Asks the shared state for a send of `proposed`: the message when
    /// granted, `None` when it went back to its lane.
    pub(super) async fn propose(&self, proposed: Proposed<'_>) -> Option<Released> {
        let Proposed {
            in_flight,
            proposal,
            link,
            timer,
        } = proposed;
        let started = std::time::Instant::now();
        let verdict = link.acquire(&proposal).await;
        timer.observe(started.elapsed().as_secs_f64());
        match verdict {
            Ok(verdict) if verdict.granted => {
                let mut state = self.lock();
                if let Some(shared) = state.shared.as_mut() {
                    shared.gate.granted();
                }
                self.absorb(&mut state, &verdict.reading);
                let (waited, lane, receiver, units) = (
                    in_flight.waited,
                    in_flight.lane,
                    in_flight.receiver,
                    in_flight.units,
                );
                let item = in_flight.take();
                Some(self.hand_out(&mut state, item, (lane, receiver), units, waited))
            }
            Ok(verdict) => {
                let receiver = in_flight.receiver;
                drop(in_flight);
                let mut state = self.lock();
                self.absorb(&mut state, &verdict.reading);
                let now = self.now();
                let State {
                    shared, scheduler, ..
                } = &mut *state;
                if let Some(shared) = shared.as_mut()
                    && shared
                        .gate
                        .refused(scheduler, now, (proposal.class, receiver), &verdict)
                        .is_none()
                {
                    // Bulk, or the receiver's mail, waits; the rest goes on.
                    self.wake.notify_one();
                }
                tracing::trace!(gateway = %self.gateway, reason = %verdict.reason, wait = verdict.wait, "the shared state holds the next send");
                None
            }
            Err(error) => {
                drop(in_flight);
                let (failures, lost) = {
                    let mut state = self.lock();
                    let now = self.now();
                    state.shared.as_mut().map_or((0, false), |shared| {
                        let lost = shared.gate.failed(now);
                        (shared.gate.failures(), lost)
                    })
                };
                tracing::debug!(gateway = %self.gateway, %error, failures, "a proposal to the shared state failed");
                if lost {
                    self.lost(&error);
                }
                None
            }
        }
    }

    /// Takes in what a reply of the shared state says: the feedback, what
    /// the others sent, an operator's hold on any node.
    pub(super) fn absorb(&self, state: &mut State, reading: &Reading) {
        let now = self.now();
        state
            .scheduler
            .model_mut()
            .shared_feedback(now, &reading.feedback);
        state
            .scheduler
            .model_mut()
            .sent_elsewhere(now, &reading.elsewhere);
        let pending = state
            .shared
            .as_ref()
            .and_then(|shared| shared.gate.hold_pending());
        if pending.is_none() && state.held != reading.held {
            state.held = reading.held;
            self.wake.notify_waiters();
        }
        self.log_changes(state, Some("shared state"));
    }

    /// Redis could not be reached: run on this node's share (logged once
    /// per change).
    pub(super) fn lost(&self, error: &ClusterError) {
        let mut state = self.lock();
        let now = self.now();
        let State {
            shared, scheduler, ..
        } = &mut *state;
        let Some(shared) = shared.as_mut() else {
            return;
        };
        if shared.gate.lost(scheduler, now) {
            tracing::warn!(
                gateway = %self.gateway,
                %error,
                share_of = shared.gate.share_of(now),
                "cluster state out of reach; this node sends its share of the gateway's limits until it is back"
            );
        }
        self.log_changes(&mut state, None);
        drop(state);
        self.wake.notify_waiters();
    }

    /// One heartbeat (cluster mode; nothing otherwise): publishes this
    /// node's queue depth, hears the live nodes and what they queued; on
    /// a new epoch rebuilds the shared counts from this node's view; adds
    /// what this node sent on its share; and if all that got through,
    /// runs on the shared state again.
    pub async fn heartbeat(&self) {
        let Some((link, depth)) = self.depth() else {
            return;
        };
        let beat = match link.heartbeat(depth.queued, &depth.busiest).await {
            Ok(beat) => beat,
            Err(error) => return self.lost(&error),
        };
        let Some(writes) = self.hear(&link, &beat) else {
            return;
        };
        if let Err(error) = self.write(&link, &writes).await {
            return self.lost(&error);
        }
        self.reached(&link, &writes);
    }

    /// What a heartbeat publishes, and the link to publish it on (cluster
    /// mode).
    pub(super) fn depth(&self) -> Option<(Arc<GatewayLink>, Depth)> {
        let mut state = self.lock();
        let now = self.now();
        let busiest = state.scheduler.model_mut().busiest(now);
        let shared = state.shared.as_ref()?;
        let depth = Depth {
            queued: state.scheduler.queued().plus(state.waiting_counts),
            busiest,
        };
        Some((shared.link.clone(), depth))
    }

    /// Takes in a heartbeat's answer, and takes out what the heartbeat is
    /// to write back.
    pub(super) fn hear(&self, link: &GatewayLink, beat: &Heartbeat) -> Option<Writes> {
        let mut state = self.lock();
        self.absorb(&mut state, &beat.reading);
        let now = self.now();
        let held = state.held;
        let State {
            shared, scheduler, ..
        } = &mut *state;
        // A new epoch seen by any reply (a proposal's too) is rebuilt
        // here, until a rebuild gets through.
        let rebuild = link.rebuild_pending();
        let shared = shared.as_mut()?;
        Some(shared.gate.hear(scheduler, now, beat, rebuild, held))
    }

    /// Writes what a heartbeat heard was due, each part only once the one
    /// before got through.
    pub(super) async fn write(
        &self,
        link: &GatewayLink,
        writes: &Writes,
    ) -> Result<(), ClusterError> {
        let mut result = Ok(());
        if let Some((counts, feedback, held)) = &writes.rebuild {
            result = link.rebuild(counts, feedback, *held).await.map(drop);
            if result.is_ok() {
                link.rebuilt();
            }
        }
        let mut reconciled = false;
        if result.is_ok() && !writes.ledger.is_empty() {
            result = link
                .reconcile(&writes.limits, &writes.ledger)
                .await
                .map(drop);
            reconciled = result.is_ok();
        }
        if let (Ok(()), Some(held)) = (&result, writes.hold) {
            result = link.hold(held).await.map(drop);
            if result.is_ok() {
                self.hold_written(held);
            }
        }
        if result.is_err() && !reconciled {
            self.keep_unreconciled(&writes.ledger);
        }
        result
    }

    /// An operator's `held` is in the shared state (see
    /// [`Gate::hold_written`]).
    pub(super) fn hold_written(&self, held: bool) {
        if let Some(shared) = self.lock().shared.as_mut() {
            shared.gate.hold_written(held);
        }
    }

    /// Puts back what a heartbeat could not add to the shared counts, for
    /// the next heartbeat.
    pub(super) fn keep_unreconciled(&self, ledger: &Ledger) {
        if let Some(shared) = self.lock().shared.as_mut() {
            shared.gate.keep_unreconciled(ledger);
        }
    }

    /// A heartbeat got through with all it had to write: runs on the shared
    /// state again (logged once per change).
    pub(super) fn reached(&self, link: &GatewayLink, writes: &Writes) {
        let mut state = self.lock();
        let now = self.now();
        let State {
            shared, scheduler, ..
        } = &mut *state;
        let Some(shared) = shared.as_mut() else {
            return;
        };
        if shared.gate.reached(scheduler, now) {
            tracing::info!(
                gateway = %self.gateway,
                node = %link.node(),
                nodes = shared.gate.live(),
                rebuilt = writes.rebuild.is_some(),
                reconciled_messages = writes.ledger.total().messages,
                "cluster state reached; this node shares the gateway's limits with the others"
            );
            self.log_changes(&mut state, None);
            drop(state);
            self.wake.notify_waiters();
        }
    }

    /// Takes out what a reload carries over to the gateway's next queue
    /// (cluster mode), with the local hold.
    pub fn take_standing(&self) -> (bool, Option<Standing>) {
        let mut state = self.lock();
        let held = state.held;
        let standing = state
            .shared
            .as_mut()
            .map(|shared| shared.gate.take_standing());
        (held, standing)
    }

    /// Carries on from the old queue's standing (see
    /// [`DeliveryQueue::take_standing`]): its hold, as it was (not a new
    /// operator's word for the other nodes), its ledger and live count.
    pub fn carry_standing(&self, (held, standing): (bool, Option<Standing>)) {
        let mut state = self.lock();
        state.held = held;
        if let (Some(shared), Some(standing)) = (state.shared.as_mut(), standing) {
            shared.gate.carry(standing);
        }
        drop(state);
        self.wake.notify_waiters();
    }

    /// Cluster mode: the most nodes seen lately, as saved before a
    /// restart; never fewer are assumed while the shared state is out of
    /// reach.
    pub fn restore_nodes_seen(&self, seen: NodesSeen) {
        if let Some(shared) = self.lock().shared.as_mut() {
            shared.gate.restore_seen(seen);
        }
    }

    /// How this node stands with the shared state (cluster mode).
    pub fn cluster_view(&self) -> Option<ClusterView> {
        let state = self.lock();
        state.shared.as_ref().map(|shared| ClusterView {
            connected: shared.gate.is_connected(),
            nodes: shared.gate.live(),
            share_of: shared.gate.share_of(self.now()),
        })
    }

    /// Cluster mode, while the shared state is reached: `call` tells the
    /// other nodes, in the background (the lock is not held across Redis);
    /// a failure is logged, saying what was not told.
    pub(super) fn tell_other_nodes<F, Fut>(&self, state: &State, what: &'static str, call: F)
    where
        F: FnOnce(Arc<GatewayLink>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Reading, ClusterError>> + Send + 'static,
    {
        let Some(shared) = state
            .shared
            .as_ref()
            .filter(|shared| shared.gate.is_connected())
        else {
            return;
        };
        let link = shared.link.clone();
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            if let Err(error) = call(link).await {
                tracing::warn!(%gateway, %error, "could not tell the other nodes {what}");
            }
        });
    }
}
