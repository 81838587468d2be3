//! The saved shaping state of one gateway, as TOML text: what a restart must
//! not forget (the learned baseline, a throttling cut and where its episode
//! or recovery stood, the cap counts, the volume history of the hour and
//! day budgets).
//! Pure text <-> struct; the spool writes and reads the file.
//!
//! The file's shape is [`File`], derived with serde: version 1, as written
//! since the volume budgets came (a file without `since` is older and still
//! read).

use serde::{Deserialize, Serialize};

use super::penalty::Phase;
use super::receivers::ReceiverState;
use super::shared::NodesSeen;
use super::volume::{KEPT_SLOTS, Seed, VolumeState};
use crate::shaper::Horizon;

/// See the module notes. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedState {
    pub saved_at: f64,
    /// Messages per second.
    pub baseline: f64,
    pub penalty: f64,
    /// Where the penalty stands (an open episode, a recovery ramp and its
    /// start); `None` in a file written before it was saved.
    pub penalty_phase: Option<Phase>,
    pub paused_until: f64,
    /// Per cap window (seconds): (slot number, units) counted.
    pub caps: Vec<(f64, Vec<(i64, u64)>)>,
    /// The per-minute volume history, when some budget is configured.
    pub volume: Option<VolumeState>,
    /// Each budgeted receiver's history (none in a file written before
    /// receivers were counted).
    pub receivers: Vec<ReceiverState>,
    /// Where the volume history was learned from, when `smtp-shaper learn`
    /// wrote it (`None`: the gateway's own sends, or nothing yet).
    pub history: Option<HistorySource>,
    /// An operator's hold (`queue hold`): it outlasts a restart.
    pub held: bool,
    /// Cluster mode: the most nodes seen sharing the gateway lately.
    pub nodes_seen: NodesSeen,
}

/// A volume history learned from the gateway's own log: which kind of log
/// (`postfix log`), when it was learned and the span it covered (Unix
/// seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistorySource {
    pub source: String,
    pub learned_at: f64,
    pub first: f64,
    pub last: f64,
}

/// The only version written and read.
const VERSION: i64 = 1;

/// The document as it is on disk.
#[derive(Serialize, Deserialize)]
struct File {
    version: i64,
    saved_at: f64,
    baseline_per_second: f64,
    penalty: f64,
    /// "calm", "throttled" (an episode waits for the gateway to accept
    /// again) or "recovering" (from `penalty_from` since `penalty_since`);
    /// files from before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    penalty_phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    penalty_since: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    penalty_from: Option<f64>,
    paused_until: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    caps: Vec<CapFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    volume: Option<VolumeFile>,
    /// Per receiver (by name): from when it is held, and its history.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    receivers: std::collections::BTreeMap<String, ReceiverFile>,
    /// Written by `learn` and kept by every save after it; files from
    /// before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    history: Option<HistorySource>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    held: bool,
    /// Cluster mode: (the most nodes seen lately, when last seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nodes_seen: Option<(u64, f64)>,
}

#[derive(Serialize, Deserialize)]
struct CapFile {
    window_seconds: f64,
    /// (slot number, units).
    slots: Vec<(i64, u64)>,
}

/// One receiver's history: the minute from which it is held to its own
/// rule, and its counts.
#[derive(Serialize, Deserialize)]
struct ReceiverFile {
    held_from: i64,
    volume: VolumeFile,
}

/// Units sent per minute up to minute `slot` (Unix minutes), oldest first,
/// as [`counts_to_text`] writes them.
#[derive(Serialize, Deserialize)]
struct VolumeFile {
    slot: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<i64>,
    all: String,
    transactional: String,
    /// (window minutes, units, last minute).
    seeds: Vec<(i64, u64, i64)>,
}

/// Per-minute counts as text: a count per minute, `+N` for N empty minutes
/// (a week of minutes stays a few kilobytes).
fn counts_to_text(counts: &[u64]) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut zeros = 0;
    for units in counts {
        if *units == 0 {
            zeros += 1;
            continue;
        }
        if zeros > 0 {
            words.push(format!("+{zeros}"));
            zeros = 0;
        }
        words.push(units.to_string());
    }
    if zeros > 0 {
        words.push(format!("+{zeros}"));
    }
    words.join(" ")
}

fn counts_from_text(text: &str) -> Option<Vec<u64>> {
    let mut counts = Vec::new();
    for word in text.split_whitespace() {
        match word.strip_prefix('+') {
            Some(zeros) => {
                let zeros: usize = zeros.parse().ok()?;
                if counts.len().checked_add(zeros)? > KEPT_SLOTS as usize {
                    return None;
                }
                counts.resize(counts.len() + zeros, 0);
            }
            None => counts.push(word.parse().ok()?),
        }
    }
    (counts.len() <= KEPT_SLOTS as usize).then_some(counts)
}

impl VolumeFile {
    fn new(volume: &VolumeState) -> VolumeFile {
        VolumeFile {
            slot: volume.slot,
            since: Some(volume.since),
            all: counts_to_text(&volume.all),
            transactional: counts_to_text(&volume.transactional),
            seeds: Horizon::ALL
                .into_iter()
                .filter_map(|horizon| {
                    let seed = volume.seeds[horizon as usize]?;
                    Some((horizon.minutes(), seed.units, seed.until))
                })
                .collect(),
        }
    }

    fn state(&self) -> Option<VolumeState> {
        let mut seeds = [None; 2];
        for (minutes, units, until) in &self.seeds {
            let horizon = Horizon::ALL
                .into_iter()
                .find(|horizon| horizon.minutes() == *minutes)?;
            seeds[horizon as usize] = Some(Seed {
                units: *units,
                until: *until,
            });
        }
        Some(VolumeState {
            slot: self.slot,
            // Files written before `since` was saved: the history began no
            // later than the kept span.
            since: self.since.unwrap_or(self.slot - KEPT_SLOTS),
            all: counts_from_text(&self.all)?,
            transactional: counts_from_text(&self.transactional)?,
            seeds,
        })
    }
}

impl SavedState {
    /// The state as a small TOML document. The toml crate writes every
    /// value of [`File`] (counts past 2^63 too); an error would be a
    /// serialiser's limit, and the caller logs it and keeps the old file.
    pub fn to_text(&self, gateway: &str) -> Result<String, toml::ser::Error> {
        let file = File {
            version: VERSION,
            saved_at: self.saved_at,
            baseline_per_second: self.baseline,
            penalty: self.penalty,
            penalty_phase: self.penalty_phase.map(|phase| {
                match phase {
                    Phase::Calm => "calm",
                    Phase::Episode(_) => "throttled",
                    Phase::Recovering { .. } => "recovering",
                }
                .to_string()
            }),
            penalty_since: match self.penalty_phase {
                Some(Phase::Recovering { since, .. }) => Some(since),
                _ => None,
            },
            penalty_from: match self.penalty_phase {
                Some(Phase::Recovering { from, .. }) => Some(from),
                _ => None,
            },
            paused_until: self.paused_until,
            caps: self
                .caps
                .iter()
                .map(|(window, slots)| CapFile {
                    window_seconds: *window,
                    slots: slots.clone(),
                })
                .collect(),
            volume: self.volume.as_ref().map(VolumeFile::new),
            receivers: self
                .receivers
                .iter()
                .map(|receiver| {
                    (
                        receiver.name.clone(),
                        ReceiverFile {
                            held_from: receiver.held_from,
                            volume: VolumeFile::new(&receiver.volume),
                        },
                    )
                })
                .collect(),
            history: self.history.clone(),
            held: self.held,
            nodes_seen: (self.nodes_seen.most > 0)
                .then_some((self.nodes_seen.most, self.nodes_seen.at)),
        };
        let mut text = format!(
            "# smtp-shaper: learned shaping state of gateway \"{gateway}\", rewritten while it runs.\n\
             # Delete the file to forget the history (the gateway restarts from initial_rate).\n"
        );
        if file.volume.is_some() {
            text.push_str(
                "# [volume]: units sent per minute up to minute `slot` (Unix minutes), oldest\n\
                 # first; \"+N\" is N minutes with none. Seeds: [window minutes, units, last minute].\n",
            );
        }
        text.push_str(&toml::to_string(&file)?);
        Ok(text)
    }

    /// Reads [`SavedState::to_text`]; `None` explains nothing because the
    /// caller logs the file and starts fresh.
    pub fn parse(text: &str) -> Option<SavedState> {
        let file: File = toml::from_str(text).ok()?;
        if file.version != VERSION {
            return None;
        }
        let volume = match &file.volume {
            Some(volume) => Some(volume.state()?),
            None => None,
        };
        let mut receivers = Vec::with_capacity(file.receivers.len());
        for (name, receiver) in &file.receivers {
            receivers.push(ReceiverState {
                name: name.clone(),
                volume: receiver.volume.state()?,
                held_from: receiver.held_from,
            });
        }
        // The volume's minute must be the save's: anything else is damage
        // (and would make waits absurd).
        if volume
            .iter()
            .chain(receivers.iter().map(|receiver| &receiver.volume))
            .any(|volume| (volume.slot as f64 - file.saved_at / 60.0).abs() > 2.0)
        {
            return None;
        }
        let penalty_phase = match file.penalty_phase.as_deref() {
            None => None,
            Some("calm") => Some(Phase::Calm),
            Some("throttled") => Some(Phase::Episode(file.penalty)),
            Some("recovering") => Some(Phase::Recovering {
                since: file.penalty_since?,
                from: file.penalty_from?,
            }),
            Some(_) => return None,
        };
        let state = SavedState {
            saved_at: file.saved_at,
            baseline: file.baseline_per_second,
            penalty: file.penalty,
            penalty_phase,
            paused_until: file.paused_until,
            caps: file
                .caps
                .into_iter()
                .map(|cap| (cap.window_seconds, cap.slots))
                .collect(),
            volume,
            receivers,
            history: file.history,
            held: file.held,
            nodes_seen: file
                .nodes_seen
                .filter(|(_, at)| at.is_finite())
                .map(|(most, at)| NodesSeen { most, at })
                .unwrap_or_default(),
        };
        // TOML has nan and inf; none is a time, a rate or a factor here.
        let (since, from) = match state.penalty_phase {
            Some(Phase::Recovering { since, from }) => (since, from),
            _ => (0.0, 0.0),
        };
        let finite = [
            state.saved_at,
            state.baseline,
            state.penalty,
            state.paused_until,
            since,
            from,
        ]
        .iter()
        .chain(
            state
                .history
                .iter()
                .flat_map(|history| [&history.learned_at, &history.first, &history.last]),
        )
        .all(|number| number.is_finite());
        (finite && state.baseline >= 0.0).then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_penalty_s_phase_round_trips_and_an_older_file_has_none() {
        let state = SavedState {
            receivers: Vec::new(),
            saved_at: 1_764_180_060.0,
            baseline: 0.5,
            penalty: 0.5,
            penalty_phase: Some(Phase::Episode(0.5)),
            paused_until: 0.0,
            caps: Vec::new(),
            volume: None,
            history: None,
            held: false,
            nodes_seen: NodesSeen::default(),
        };
        for phase in [
            Phase::Calm,
            Phase::Episode(0.5),
            Phase::Recovering {
                since: 1_764_180_000.5,
                from: 0.25,
            },
        ] {
            let state = SavedState {
                receivers: Vec::new(),
                penalty_phase: Some(phase),
                ..state.clone()
            };
            let text = state.to_text("primary").unwrap();
            assert_eq!(SavedState::parse(&text), Some(state), "{text}");
        }
        let older = "version = 1\nsaved_at = 1764180060\nbaseline_per_second = 0.5\npenalty = 0.5\npaused_until = 0\n";
        assert_eq!(SavedState::parse(older).unwrap().penalty_phase, None);
        let unknown = older.replace(
            "penalty = 0.5\n",
            "penalty = 0.5\npenalty_phase = \"angry\"\n",
        );
        assert_eq!(SavedState::parse(&unknown), None);
        let half = older.replace(
            "penalty = 0.5\n",
            "penalty = 0.5\npenalty_phase = \"recovering\"\n",
        );
        assert_eq!(SavedState::parse(&half), None, "a ramp needs its start");
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        let state = SavedState {
            receivers: Vec::new(),
            saved_at: 1_764_180_060.25,
            baseline: 0.5,
            penalty: 1.0,
            penalty_phase: None,
            paused_until: 0.0,
            caps: vec![
                (60.0, vec![(29_403_000, 3), (29_403_001, 1)]),
                (86_400.0, vec![]),
            ],
            volume: None,
            history: None,
            held: false,
            nodes_seen: NodesSeen::default(),
        };
        let text = state.to_text("primary").unwrap();
        assert!(!text.contains("held"), "no hold, no line: {text}");
        assert_eq!(SavedState::parse(&text), Some(state.clone()));
        let held = SavedState {
            held: true,
            nodes_seen: NodesSeen {
                most: 3,
                at: 1_764_180_000.0,
            },
            ..state.clone()
        };
        assert_eq!(
            SavedState::parse(&held.to_text("primary").unwrap()),
            Some(held)
        );
        let with_volume = SavedState {
            volume: Some(VolumeState {
                slot: 29_403_001,
                all: vec![3, 0, 0, 0, 7, 0],
                transactional: vec![1],
                seeds: [
                    None,
                    Some(Seed {
                        units: 2_000,
                        until: 29_413_000,
                    }),
                ],
                since: 29_402_000,
            }),
            ..state.clone()
        };
        let text = with_volume.to_text("primary").unwrap();
        assert!(text.contains("all = \"3 +3 7 +1\""), "{text}");
        assert_eq!(SavedState::parse(&text), Some(with_volume.clone()));
        let learned = SavedState {
            history: Some(HistorySource {
                source: "postfix log".into(),
                learned_at: 1_764_180_060.5,
                first: 1_763_575_200.0,
                last: 1_764_180_000.0,
            }),
            ..with_volume.clone()
        };
        let learned_text = learned.to_text("primary").unwrap();
        assert!(
            learned_text.contains("source = \"postfix log\""),
            "{learned_text}"
        );
        assert_eq!(SavedState::parse(&learned_text), Some(learned));
        assert_eq!(
            SavedState::parse(
                &learned_text.replace("learned_at = 1764180060.5", "learned_at = nan")
            ),
            None
        );
        let damaged = text.replace("+3 7", "+x 7");
        assert_eq!(SavedState::parse(&damaged), None);
        let elsewhere = text.replace("slot = 29403001", "slot = 999999999999999");
        assert_eq!(
            SavedState::parse(&elsewhere),
            None,
            "a minute not the save's"
        );
        let huge = text.replace("+3 7", "+18446744073709551615 7");
        assert_eq!(SavedState::parse(&huge), None);
        assert_eq!(SavedState::parse("version = 2\n"), None);
        for key in ["saved_at", "baseline_per_second", "penalty", "paused_until"] {
            let broken = state
                .to_text("primary")
                .unwrap()
                .lines()
                .map(|line| match line.split_once(" = ") {
                    Some((name, _)) if name == key => format!("{key} = nan"),
                    _ => line.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            assert_eq!(SavedState::parse(&broken), None, "{key} = nan");
        }
        let past_toml = SavedState {
            caps: vec![(60.0, vec![(1, u64::MAX)])],
            ..state.clone()
        };
        assert_eq!(
            SavedState::parse(&past_toml.to_text("primary").unwrap()),
            Some(past_toml),
            "counts past TOML's i64 still round-trip"
        );
        assert_eq!(SavedState::parse("not toml ["), None);
        assert_eq!(
            SavedState::parse(
                "version = 1\nsaved_at = 1\nbaseline_per_second = \"x\"\npenalty = 1\npaused_until = 0\n"
            ),
            None
        );
    }

    /// The layout earlier releases wrote by hand, from before `since` was
    /// saved, with integral numbers written as integers (as an operator may
    /// edit them): still read, so an upgrade keeps the learned history.
    #[test]
    fn reads_the_files_earlier_releases_wrote() {
        let text = "# smtp-shaper: learned shaping state of gateway \"primary\", rewritten while it runs.\n\
            version = 1\nsaved_at = 1764180060\nbaseline_per_second = 0.5\npenalty = 1\npaused_until = 0\n\
            \n[[caps]]\nwindow_seconds = 60\nslots = [[29403000, 3], [29403001, 1]]\n\
            \n[[caps]]\nwindow_seconds = 86400.0\nslots = []\n\
            \n# Units sent per minute\n[volume]\nslot = 29403001\nall = \"3 +3 7\"\n\
            transactional = \"\"\nseeds = [[1440, 2000, 29413000]]\n";
        let state = SavedState::parse(text).expect("an earlier file is read");
        assert_eq!(state.saved_at, 1_764_180_060.0);
        assert_eq!(state.penalty, 1.0);
        assert_eq!(
            state.caps,
            vec![
                (60.0, vec![(29_403_000, 3), (29_403_001, 1)]),
                (86_400.0, vec![])
            ]
        );
        let volume = state.volume.expect("the volume history");
        assert_eq!(volume.since, 29_403_001 - KEPT_SLOTS);
        assert_eq!(volume.all, vec![3, 0, 0, 0, 7]);
        assert!(volume.transactional.is_empty());
        assert_eq!(
            volume.seeds[Horizon::Day as usize].map(|seed| seed.units),
            Some(2_000)
        );
        assert_eq!(volume.seeds[Horizon::Hour as usize], None);
    }
}
