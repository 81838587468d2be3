//! Observe mode (`mode = "observe"`): what enforcement would have done to
//! mail that is relayed at once.
//!
//! The observer runs a shadow [`Scheduler`], enforcing, fed the same
//! arrivals in the same lanes. Its queue is virtual: items leave as the
//! shadow's own model lets them, on a virtual clock that catches up with
//! the real one at each call (never ahead of it). What a message would
//! have waited is what the shadow made it wait; why is the shadow's
//! admission at its arrival (the part of the shaping that would have held
//! it). An episode runs from the first arrival the shadow cannot release
//! at once to the moment its queue is empty again. A message is counted
//! as held when the shadow does not release it on arrival.
//!
//! Pure: times are given, never read.

use super::model::{DeferReason, GatewayModel};
use super::scheduler::{ClassCounts, Lane, Release, Scheduler};
use crate::shaper::{ShapingConfig, ShapingMode};

/// What the observer saw, for the metrics and the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Enforcement would have held this arriving message: it would have
    /// waited about `projected` seconds, for `reason`.
    Held { reason: DeferReason, projected: f64 },
    /// The shadow released a message that arrived `waited` seconds ago.
    Released { waited: f64 },
    /// Enforcement would have answered this message with a 4xx (a wait
    /// beyond the app's bound, a full queue, too many recipients).
    Refused { reason: DeferReason, projected: f64 },
    /// Enforcement would have begun holding mail now.
    EpisodeBegan { reason: DeferReason, projected: f64 },
    /// The shadow's queue is empty again: `held` messages would have
    /// waited, the longest `longest` seconds.
    EpisodeEnded { held: u64, longest: f64 },
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    held: u64,
    longest: f64,
}

/// See the module notes.
pub struct Observer {
    /// Items are arrival numbers.
    shadow: Scheduler<u64>,
    arrivals: u64,
    /// The shadow's virtual time.
    clock: f64,
    episode: Option<Episode>,
}

/// The configuration the shadow enforces: `config` with enforcement on.
pub fn enforcing(config: &ShapingConfig) -> ShapingConfig {
    ShapingConfig {
        mode: ShapingMode::Enforce,
        observe_until: None,
        ..config.clone()
    }
}

impl Observer {
    /// An observer whose shadow runs `model` (built from [`enforcing`])
    /// over `lanes`, starting at `now`.
    pub fn new(model: GatewayModel, lanes: Vec<Lane>, now: f64) -> Observer {
        Observer {
            shadow: Scheduler::new(model, lanes),
            arrivals: 0,
            clock: now,
            episode: None,
        }
    }

    /// A message of `lane` with `recipients` recipients arrived at `now`.
    pub fn arrived(&mut self, now: f64, lane: usize, recipients: usize) -> Vec<Observed> {
        let mut seen = Vec::new();
        self.catch_up(now, &mut seen);
        let units = self.shadow.model().units(recipients);
        match self
            .shadow
            .admit(now, lane, units, (ClassCounts::default(), &[]), 0)
        {
            Err(deferral) => seen.push(Observed::Refused {
                reason: deferral.reason,
                projected: deferral.projected_wait,
            }),
            Ok(projection) => {
                self.arrivals += 1;
                let arrival = self.arrivals;
                self.shadow.push(now, lane, None, units, arrival);
                let gone = self.catch_up(now, &mut seen).contains(&arrival);
                if !gone {
                    if self.episode.is_none() {
                        seen.push(Observed::EpisodeBegan {
                            reason: projection.reason,
                            projected: projection.wait,
                        });
                    }
                    let episode = self.episode.get_or_insert(Episode {
                        held: 0,
                        longest: 0.0,
                    });
                    episode.held += 1;
                    seen.push(Observed::Held {
                        reason: projection.reason,
                        projected: projection.wait,
                    });
                }
            }
        }
        seen
    }

    /// Releases what the shadow would have sent up to `now`.
    pub fn advance(&mut self, now: f64) -> Vec<Observed> {
        let mut seen = Vec::new();
        self.catch_up(now, &mut seen);
        seen
    }

    /// Messages the shadow still holds.
    pub fn held(&self) -> usize {
        self.shadow.len()
    }

    /// Releases what is due up to `now`; returns the arrival numbers
    /// released.
    fn catch_up(&mut self, now: f64, seen: &mut Vec<Observed>) -> Vec<u64> {
        // A step at least this long: a zero wait must not spin.
        const STEP: f64 = 1e-3;
        let mut released = Vec::new();
        while self.clock <= now {
            match self.shadow.next(self.clock) {
                Release::Send {
                    item: arrival,
                    waited,
                    ..
                } => {
                    if let Some(episode) = self.episode.as_mut() {
                        episode.longest = episode.longest.max(waited);
                    }
                    released.push(arrival);
                    seen.push(Observed::Released { waited });
                }
                Release::Wait(wait) => {
                    let next = self.clock + wait.max(STEP);
                    if next > now {
                        break;
                    }
                    self.clock = next;
                }
                Release::Save => {
                    // The shadow's counts are never saved: nothing to
                    // reserve against.
                    self.shadow.model_mut().assume_saved();
                }
                Release::Idle => break,
            }
        }
        // Nothing more was due before `now`.
        self.clock = self.clock.max(now);
        if self.shadow.is_empty()
            && let Some(episode) = self.episode.take()
        {
            seen.push(Observed::EpisodeEnded {
                held: episode.held,
                longest: episode.longest,
            });
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::AppClass;

    fn observer(shaping: &str) -> Observer {
        let shaping = enforcing(&shaping.parse().unwrap());
        let lanes = vec![Lane {
            weight: 1,
            class: AppClass::Transactional,
            max_queue_delay: None,
            expire_after: None,
        }];
        Observer::new(GatewayModel::new(&shaping, 0.0), lanes, 0.0)
    }

    fn released(seen: &[Observed]) -> Vec<f64> {
        seen.iter()
            .filter_map(|observed| match observed {
                Observed::Released { waited } => Some(*waited),
                _ => None,
            })
            .collect()
    }

    fn held(seen: &[Observed]) -> Vec<DeferReason> {
        seen.iter()
            .filter_map(|observed| match observed {
                Observed::Held { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_burst_over_the_ceiling_would_have_waited_and_the_episode_ends_when_it_drains() {
        let mut observer = observer(
            "initial_rate = \"60/min\"\nmin_rate = \"60/min\"\nmax_rate = \"60/min\"\nheadroom = 1.0\nburst = 2",
        );
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.extend(observer.arrived(10.0, 0, 1));
        }
        assert_eq!(released(&seen).len(), 2, "the burst of 2 goes at once");
        assert_eq!(held(&seen), vec![DeferReason::QueueDelay; 3]);
        assert!(matches!(
            seen.iter()
                .find(|o| matches!(o, Observed::EpisodeBegan { .. })),
            Some(Observed::EpisodeBegan {
                reason: DeferReason::QueueDelay,
                ..
            })
        ));
        assert_eq!(observer.held(), 3);
        // Nothing is released ahead of the real clock.
        assert!(released(&observer.advance(10.5)).is_empty());
        let later = observer.advance(20.0);
        let waits = released(&later);
        assert_eq!(waits.len(), 3);
        for (index, wait) in waits.iter().enumerate() {
            assert!((wait - (index + 1) as f64).abs() < 0.01, "{waits:?}");
        }
        assert_eq!(
            later.last(),
            Some(&Observed::EpisodeEnded {
                held: 3,
                longest: waits[2]
            })
        );
        assert!(observer.advance(30.0).is_empty());
    }

    #[test]
    fn the_hour_budget_names_what_would_have_held_the_rest() {
        let mut observer = observer(
            "initial_rate = \"6000/min\"\nmin_rate = [\"6000/min\", \"10/h\", \"1000/day\"]\nmax_rate = \"6000/min\"\nburst = 100",
        );
        let mut seen = Vec::new();
        for _ in 0..15 {
            seen.extend(observer.arrived(100.0, 0, 1));
        }
        assert_eq!(released(&seen).len(), 10, "the hour's floor");
        assert_eq!(observer.held(), 5);
        assert_eq!(held(&seen), vec![DeferReason::HourBudget; 5]);
        assert!(seen.iter().any(|o| matches!(
            o,
            Observed::EpisodeBegan {
                reason: DeferReason::HourBudget,
                ..
            }
        )));
        let later = observer.advance(100.0 + 2.0 * 3_600.0);
        let waits = released(&later);
        assert_eq!(waits.len(), 5);
        assert!(waits.iter().all(|wait| *wait > 3_000.0), "{waits:?}");
    }

    #[test]
    fn mail_enforcement_would_refuse_is_said() {
        let mut observer = observer(
            "initial_rate = \"60/min\"\nmin_rate = \"60/min\"\nmax_rate = \"60/min\"\nburst = 1\nmax_queued = 2",
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(observer.arrived(100.0, 0, 1));
        }
        assert!(seen.iter().any(|o| matches!(
            o,
            Observed::Refused {
                reason: DeferReason::QueueFull,
                ..
            }
        )));
    }
}
