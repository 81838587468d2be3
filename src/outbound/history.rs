//! Where each gateway's volume history comes from (learned from its log,
//! its own sends, the operator's `initial_rate` seeds, or nothing), for the
//! start-up log and `/status`; and a history `smtp-shaper learn` wrote
//! while the service runs.
//!
//! The service saves its state every few seconds, which would overwrite a
//! file `learn` just wrote. So before each save the file is looked at (a
//! `stat`): when another process replaced it and it holds a learned
//! history newer than the one in force, that history is adopted: every
//! save from then on carries it (merged with the service's own counts,
//! see `history::learn::adopt`), and the next reload (SIGHUP) or start
//! shapes from it. The service's caps, throttling cut and pause are its
//! own throughout. The service holds the file's lock
//! (`spool::lock_shaping_state`) from the look to the end of its write, as
//! `learn` does from its read to its write, so neither lands unseen between
//! the other's steps.

use std::sync::Mutex;

use crate::history::learn::adopt;
use crate::poison::LockRecovered;
use crate::shaper::volume::KEPT_SLOTS;
use crate::shaper::{HistorySource, SavedState};
use crate::shaper::{Horizon, ShapingConfig};
use crate::spool::{Spool, shaping_state_identity};
use crate::telemetry::HistoryView;

/// A saved state file's identity (see `spool::shaping_state_identity`).
type Identity = (u64, u64, u64, i64, i64);

/// One gateway's history, as the running service knows it.
pub(super) struct Kept {
    state: Mutex<State>,
}

struct State {
    /// Learned from a log (still in force), if so.
    learned: Option<HistorySource>,
    /// A saved history of the gateway's own sends was restored.
    restored: bool,
    /// `initial_rate` names hour or day seeds.
    seeded: bool,
    /// Unix seconds of the history's first minute.
    since: f64,
    /// The file as this service last read or wrote it.
    identity: Option<Identity>,
    /// A learned state found on disk since the start, carried by every save
    /// (it is in force from the next reload or start).
    adopted: Option<SavedState>,
}

impl Kept {
    /// What a gateway starts from: `saved` (read from the file whose
    /// identity was `identity` just before) or nothing.
    pub(super) fn at_start(
        saved: Option<&SavedState>,
        shaping: &ShapingConfig,
        identity: Option<Identity>,
        now: f64,
    ) -> Kept {
        let volume = saved.and_then(|state| state.volume.as_ref());
        Kept {
            state: Mutex::new(State {
                learned: saved.and_then(|state| state.history.clone()),
                restored: volume.is_some(),
                seeded: shaping.initial_volume.iter().any(Option::is_some),
                since: volume.map_or(now, |volume| volume.since as f64 * 60.0),
                identity,
                adopted: None,
            }),
        }
    }

    /// The start-up log's words: `learned from postfix log, 7d`, `own
    /// sends, 2d`, `seeded by initial_rate`, `none: floors 60/h, 300/day`.
    pub(super) fn describe(&self, shaping: &ShapingConfig, now: f64) -> String {
        let state = self.state.lock_recovered();
        match state.source(now) {
            Source::Learned(history) => format!(
                "learned from {}, {}",
                history.source,
                days(history.last - history.first)
            ),
            Source::Own => format!("own sends, {}", days(now - state.since)),
            Source::Seeded => "seeded by initial_rate".to_string(),
            Source::None => {
                let floors: Vec<String> = Horizon::ALL
                    .into_iter()
                    .filter_map(|horizon| {
                        let floor = shaping.min_volume[horizon as usize]?;
                        Some(match horizon {
                            Horizon::Hour => format!("{floor}/h"),
                            Horizon::Day => format!("{floor}/day"),
                        })
                    })
                    .collect();
                if floors.is_empty() {
                    "none (no hour or day budget)".to_string()
                } else {
                    format!("none: floors {}", floors.join(", "))
                }
            }
        }
    }

    /// `/status`'s `history`.
    pub(super) fn view(&self, now: f64) -> HistoryView {
        let state = self.state.lock_recovered();
        let source = match state.source(now) {
            Source::Learned(history) => history.source.clone(),
            Source::Own => "own sends".to_string(),
            Source::Seeded => "initial_rate".to_string(),
            Source::None => "none".to_string(),
        };
        // What the rule still holds: at most the kept span.
        let since = state.since.max(now - KEPT_SLOTS as f64 * 60.0).max(0.0);
        HistoryView {
            source,
            since: since as u64,
            minutes: ((now - since) / 60.0).floor().max(0.0) as u64,
        }
    }

    /// Readies `snapshot` (the state about to be saved) for the file: a
    /// learned history another process wrote since the last save is
    /// adopted (logged once) and goes with every save from then on;
    /// otherwise the learned history in force does.
    pub(super) fn before_save(
        &self,
        snapshot: SavedState,
        spool: &Spool,
        gateway: &str,
    ) -> SavedState {
        let mut state = self.state.lock_recovered();
        let identity = shaping_state_identity(spool.dir(), gateway);
        if identity.is_some() && identity != state.identity {
            state.identity = identity;
            let found = spool
                .load_shaping_state(gateway)
                .ok()
                .flatten()
                .and_then(|text| SavedState::parse(&text));
            if let Some(found) = found {
                // Newer than the history in force, or than one adopted already.
                let known = state
                    .adopted
                    .as_ref()
                    .and_then(|adopted| adopted.history.as_ref())
                    .or(state.learned.as_ref());
                let newer = match (&found.history, known) {
                    (Some(found), Some(known)) => found.learned_at > known.learned_at,
                    (Some(_), None) => true,
                    _ => false,
                };
                if let (true, Some(history)) = (newer, &found.history) {
                    tracing::info!(
                        %gateway,
                        source = %history.source,
                        span = %days(history.last - history.first),
                        "a learned history was written for this gateway; it is kept in every save and shapes from the next reload (SIGHUP) or start"
                    );
                    state.adopted = Some(found);
                }
            }
        }
        // The adopted history goes into the file (with its own source); the
        // one in force stays what the start-up log and /status say until
        // the next generation starts from the file.
        match &state.adopted {
            Some(learned) => adopt(&snapshot, learned),
            None => SavedState {
                history: state.learned.clone(),
                ..snapshot
            },
        }
    }

    /// The save is on disk.
    pub(super) fn saved(&self, spool: &Spool, gateway: &str) {
        self.state.lock_recovered().identity = shaping_state_identity(spool.dir(), gateway);
    }
}

enum Source<'a> {
    Learned(&'a HistorySource),
    Own,
    Seeded,
    None,
}

impl State {
    fn source(&self, now: f64) -> Source<'_> {
        // A learned history counts until it has left the kept span.
        match &self.learned {
            Some(history) if now - history.last < KEPT_SLOTS as f64 * 60.0 => {
                Source::Learned(history)
            }
            _ if self.seeded && !self.restored && now - self.since < 7.0 * 86_400.0 => {
                Source::Seeded
            }
            // What it sent itself since it started counts once it has.
            _ if self.restored || now - self.since >= 60.0 => Source::Own,
            _ => Source::None,
        }
    }
}

/// `7d`, `3.5d`, `5h`: a span as the logs say it.
fn days(seconds: f64) -> String {
    let days = seconds / 86_400.0;
    if days >= 1.0 {
        let text = format!("{days:.1}");
        format!("{}d", text.trim_end_matches(".0"))
    } else {
        format!("{:.0}h", (seconds / 3_600.0).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::volume::VolumeState;

    fn shaping(extra: &str) -> ShapingConfig {
        format!("min_rate = [\"10/min\", \"60/h\", \"300/day\"]\n{extra}")
            .parse()
            .unwrap()
    }

    const NOW: f64 = 1_796_634_000.0;

    fn saved(since_minutes_ago: i64, history: Option<HistorySource>) -> SavedState {
        let slot = (NOW / 60.0) as i64;
        SavedState {
            saved_at: NOW,
            baseline: 0.1,
            penalty: 1.0,
            penalty_phase: None,
            paused_until: 0.0,
            receivers: Vec::new(),
            caps: Vec::new(),
            volume: Some(VolumeState {
                slot,
                all: vec![1],
                transactional: vec![],
                seeds: [None; 2],
                since: slot - since_minutes_ago,
            }),
            history,
            held: false,
            nodes_seen: Default::default(),
        }
    }

    #[test]
    fn says_where_the_history_comes_from() {
        let plain = shaping("");
        let none = Kept::at_start(None, &plain, None, NOW);
        assert_eq!(none.describe(&plain, NOW), "none: floors 60/h, 300/day");
        assert_eq!(none.view(NOW).source, "none");
        assert_eq!(
            none.view(NOW + 600.0).source,
            "own sends",
            "once it has sent"
        );
        let seeded_config = shaping("initial_rate = [\"60/min\", \"200/h\"]");
        let seeded = Kept::at_start(None, &seeded_config, None, NOW);
        assert_eq!(
            seeded.describe(&seeded_config, NOW),
            "seeded by initial_rate"
        );
        let own = Kept::at_start(Some(&saved(2 * 1_440, None)), &plain, None, NOW);
        assert_eq!(own.describe(&plain, NOW), "own sends, 2d");
        let learned = HistorySource {
            source: "postfix log".into(),
            learned_at: NOW,
            first: NOW - 7.0 * 86_400.0,
            last: NOW - 60.0,
        };
        let from_log = Kept::at_start(
            Some(&saved(7 * 1_440, Some(learned.clone()))),
            &plain,
            None,
            NOW,
        );
        assert_eq!(
            from_log.describe(&plain, NOW),
            "learned from postfix log, 7d"
        );
        let view = from_log.view(NOW);
        assert_eq!(
            (view.source.as_str(), view.since, view.minutes),
            ("postfix log", (NOW as u64 / 60 - 7 * 1_440) * 60, 7 * 1_440)
        );
        // Weeks later the learned history has left the kept span.
        let later = NOW + 30.0 * 86_400.0;
        let view = from_log.view(later);
        assert_eq!(view.source, "own sends");
        assert_eq!(view.minutes, KEPT_SLOTS as u64);
    }
}
