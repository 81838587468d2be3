//! The delivery queue in cluster mode: a message the local model lets go
//! is proposed to the gateway's shared state; heartbeats publish this
//! node's depth, hear the others and write what this node did meanwhile
//! (the ledger of sends on its share, an operator's hold, a rebuild of a
//! new epoch); and what a reload carries over. See the parent's notes.

use super::*;

/// This gateway's shared state (cluster mode), as this node stands with it.
pub(super) struct Shared {
    pub(super) link: Arc<GatewayLink>,
    /// The latest heartbeat got through; otherwise this node runs on its
    /// share (of `share_of` nodes).
    pub(super) connected: bool,
    /// The first heartbeat has answered or failed: until then nothing is
    /// released (neither on the shared state nor on a share not yet known).
    pub(super) decided: bool,
    /// Proposals that failed in a row while heartbeats get through: past
    /// [`ACQUIRE_FAILURES`] the node runs on its share (never stuck).
    pub(super) acquire_failures: u32,
    /// An operator's hold or release not yet in the shared state: readings
    /// do not override it until the heartbeat has written it.
    pub(super) hold_pending: Option<bool>,
    /// Redis said to propose nothing before this.
    pub(super) wait_until: Option<Instant>,
    /// Live nodes at the latest heartbeat (the configured expectation until
    /// one gets through).
    pub(super) live: u64,
    pub(super) expected: u64,
    /// The most live nodes seen lately (saved): never fewer are assumed.
    pub(super) seen: NodesSeen,
    /// What the other nodes have queued, per class.
    pub(super) queued_elsewhere: ClassCounts,
    /// What this node sent on its share, for the shared counts.
    pub(super) ledger: Ledger,
    pub(super) decision_seconds: Histogram,
}

/// Failed proposals in a row after which a node stops asking Redis and runs
/// on its share (a heartbeat that gets through brings it back).
pub(super) const ACQUIRE_FAILURES: u32 = 3;

/// How long a node waits after a failed proposal before the next one.
pub(super) const ACQUIRE_RETRY: Duration = Duration::from_secs(1);

/// What a reload carries from a gateway's old queue to its new one in
/// cluster mode: what was sent on the share and not yet reconciled, the
/// live nodes last seen, a hold not yet written.
pub struct SharedStanding {
    pub(super) ledger: Ledger,
    pub(super) live: u64,
    pub(super) seen: NodesSeen,
    pub(super) hold_pending: Option<bool>,
}

impl Shared {
    pub(super) fn share_of(&self, now: f64) -> u64 {
        self.live.max(self.expected).max(self.seen.most_at(now))
    }
}

/// What a heartbeat publishes of this node.
pub(super) struct Depth {
    /// Messages and units queued per class (retries waiting included).
    pub(super) queued: ClassCounts,
    /// The busiest hour and day this node has seen.
    pub(super) busiest: [u64; 2],
}

/// What a heartbeat writes to the shared state once it has heard it.
pub(super) struct Writes {
    /// A new epoch's counts, feedback and hold, from this node's view.
    pub(super) rebuild: Option<(WindowCounts, SharedFeedback, bool)>,
    /// What this node sent on its share since the last heartbeat, to add
    /// to the shared counts under `limits`.
    pub(super) ledger: Ledger,
    pub(super) limits: SharedLimits,
    /// An operator's hold or release not yet in the shared state.
    pub(super) hold: Option<bool>,
}

impl DeliveryQueue {
    /// Asks the shared state for a send of `proposed`: the message when
    /// granted, `None` when it went back to its lane.
    pub(super) async fn propose(&self, proposed: Proposed<'_>) -> Option<(Slot, usize, u64, bool)> {
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
                    shared.acquire_failures = 0;
                }
                self.absorb(&mut state, &verdict.reading);
                let (waited, lane, units) = (in_flight.waited, in_flight.lane, in_flight.units);
                let item = in_flight.take();
                Some(self.hand_out(&mut state, item, lane, units, waited))
            }
            Ok(verdict) => {
                drop(in_flight);
                let mut state = self.lock();
                self.absorb(&mut state, &verdict.reading);
                if proposal.class == AppClass::Bulk {
                    // Bulk waits; the transactional lanes go on.
                    let until = self.now() + verdict.wait;
                    state.scheduler.hold_bulk(until);
                    self.wake.notify_one();
                } else if let Some(shared) = state.shared.as_mut() {
                    shared.wait_until =
                        Some(Instant::now() + Duration::from_secs_f64(verdict.wait));
                }
                if let Some(shared) = state.shared.as_mut() {
                    shared.acquire_failures = 0;
                }
                tracing::trace!(gateway = %self.gateway, reason = %verdict.reason, wait = verdict.wait, "the shared state holds the next send");
                None
            }
            Err(error) => {
                // Redis may have granted it and answered late:
                // proposed again, it is counted twice there, which
                // only holds back more. One slow answer is not an
                // outage; the heartbeats decide that.
                drop(in_flight);
                let failures = {
                    let mut state = self.lock();
                    state.shared.as_mut().map_or(0, |shared| {
                        shared.acquire_failures += 1;
                        shared.wait_until = Some(Instant::now() + ACQUIRE_RETRY);
                        shared.acquire_failures
                    })
                };
                tracing::debug!(gateway = %self.gateway, %error, failures, "a proposal to the shared state failed");
                if failures >= ACQUIRE_FAILURES {
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
        state.scheduler.shared_feedback(now, &reading.feedback);
        state.scheduler.sent_elsewhere(now, &reading.elsewhere);
        let pending = state.shared.as_ref().and_then(|shared| shared.hold_pending);
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
        // Logged once per change: from the shared state, or the first verdict.
        let change = shared.connected || !shared.decided;
        shared.connected = false;
        shared.decided = true;
        shared.wait_until = None;
        scheduler.set_share(now, shared.share_of(now));
        if change {
            tracing::warn!(
                gateway = %self.gateway,
                %error,
                share_of = shared.share_of(now),
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
        let beat = match link.heartbeat(depth.queued, depth.busiest).await {
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
        let busiest = state.scheduler.busiest(now).map(|units| units.unwrap_or(0));
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
        state.scheduler.learn_busiest(now, beat.busiest_elsewhere);
        let held = state.held;
        // A new epoch seen by any reply (a proposal's too) is rebuilt
        // here, until a rebuild gets through.
        let rebuild = link.rebuild_pending().then(|| {
            let view = state.scheduler.view(now).model;
            let feedback = SharedFeedback {
                penalty: view.penalty,
                pause_left: view.paused_for,
            };
            (state.scheduler.window_counts(now), feedback, held)
        });
        let limits = state.scheduler.shared_limits(now);
        let shared = state.shared.as_mut()?;
        shared.live = beat.live;
        shared.seen.observe(beat.live, now);
        shared.queued_elsewhere = beat.queued_elsewhere;
        shared.ledger.forget_before(now);
        Some(Writes {
            rebuild,
            ledger: std::mem::take(&mut shared.ledger),
            limits,
            hold: shared.hold_pending,
        })
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

    /// An operator's `held` is in the shared state: readings may override
    /// it again, unless the operator changed it since.
    pub(super) fn hold_written(&self, held: bool) {
        let mut state = self.lock();
        if let Some(shared) = state.shared.as_mut()
            && shared.hold_pending == Some(held)
        {
            shared.hold_pending = None;
        }
    }

    /// Puts back what a heartbeat could not add to the shared counts, for
    /// the next heartbeat.
    pub(super) fn keep_unreconciled(&self, ledger: &Ledger) {
        let mut state = self.lock();
        if let Some(shared) = state.shared.as_mut() {
            for (minute, counts) in ledger.minutes() {
                shared.ledger.add_minute(minute, counts);
            }
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
        shared.acquire_failures = 0;
        if !shared.connected {
            shared.connected = true;
            shared.decided = true;
            scheduler.set_share(now, 1);
            tracing::info!(
                gateway = %self.gateway,
                node = %link.node(),
                nodes = shared.live,
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
    pub fn take_standing(&self) -> (bool, Option<SharedStanding>) {
        let mut state = self.lock();
        let held = state.held;
        let standing = state.shared.as_mut().map(|shared| SharedStanding {
            ledger: std::mem::take(&mut shared.ledger),
            live: shared.live,
            seen: shared.seen,
            hold_pending: shared.hold_pending,
        });
        (held, standing)
    }

    /// Carries on from the old queue's standing (see
    /// [`DeliveryQueue::take_standing`]): its hold, as it was (not a new
    /// operator's word for the other nodes), its ledger and live count.
    pub fn carry_standing(&self, (held, standing): (bool, Option<SharedStanding>)) {
        let mut state = self.lock();
        state.held = held;
        if let (Some(shared), Some(standing)) = (state.shared.as_mut(), standing) {
            for (minute, counts) in standing.ledger.minutes() {
                shared.ledger.add_minute(minute, counts);
            }
            shared.live = standing.live;
            shared.seen = standing.seen;
            shared.hold_pending = standing.hold_pending;
        }
        drop(state);
        self.wake.notify_waiters();
    }

    /// Cluster mode: the most nodes seen lately, as saved before a
    /// restart; never fewer are assumed while the shared state is out of
    /// reach.
    pub fn restore_nodes_seen(&self, seen: NodesSeen) {
        if let Some(shared) = self.lock().shared.as_mut() {
            shared.seen = seen;
        }
    }

    /// How this node stands with the shared state (cluster mode).
    pub fn cluster_view(&self) -> Option<ClusterView> {
        let state = self.lock();
        state.shared.as_ref().map(|shared| ClusterView {
            connected: shared.connected,
            nodes: shared.live,
            share_of: shared.share_of(self.now()),
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
        let Some(shared) = state.shared.as_ref().filter(|shared| shared.connected) else {
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
