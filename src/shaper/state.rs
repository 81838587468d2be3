//! The saved shaping state of one gateway, as TOML text: what a restart must
//! not forget (the learned baseline, a throttling cut, the cap counts, the
//! volume history of the hour and day budgets).
//! Pure text <-> struct; the spool writes and reads the file.

use toml::{Table, Value};

use super::volume::{Seed, VolumeState};
use crate::config::Horizon;

/// See the module notes. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedState {
    pub saved_at: f64,
    /// Messages per second.
    pub baseline: f64,
    pub penalty: f64,
    pub paused_until: f64,
    /// Per cap window (seconds): (slot number, units) counted.
    pub caps: Vec<(f64, Vec<(i64, u64)>)>,
    /// The per-minute volume history, when some budget is configured.
    pub volume: Option<VolumeState>,
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
                if counts.len().checked_add(zeros)? > super::volume::KEPT_SLOTS as usize {
                    return None;
                }
                counts.resize(counts.len() + zeros, 0);
            }
            None => counts.push(word.parse().ok()?),
        }
    }
    (counts.len() <= super::volume::KEPT_SLOTS as usize).then_some(counts)
}

fn volume_to_text(volume: &VolumeState) -> String {
    let seeds: Vec<String> = Horizon::ALL
        .into_iter()
        .filter_map(|horizon| {
            let seed = volume.seeds[horizon as usize]?;
            Some(format!(
                "[{}, {}, {}]",
                horizon.minutes(),
                seed.units,
                seed.until
            ))
        })
        .collect();
    format!(
        "\n# Units sent per minute up to minute `slot` (Unix minutes), oldest first;\n\
         # \"+N\" is N minutes with none. Seeds: [window minutes, units, last minute].\n\
         [volume]\nslot = {}\nsince = {}\nall = \"{}\"\ntransactional = \"{}\"\nseeds = [{}]\n",
        volume.slot,
        volume.since,
        counts_to_text(&volume.all),
        counts_to_text(&volume.transactional),
        seeds.join(", ")
    )
}

fn volume_from_table(table: &Value) -> Option<VolumeState> {
    let mut seeds = [None; 2];
    for seed in table.get("seeds")?.as_array()? {
        let seed = seed.as_array()?;
        let minutes = seed.first()?.as_integer()?;
        let horizon = Horizon::ALL
            .into_iter()
            .find(|horizon| horizon.minutes() == minutes)?;
        seeds[horizon as usize] = Some(Seed {
            units: u64::try_from(seed.get(1)?.as_integer()?).ok()?,
            until: seed.get(2)?.as_integer()?,
        });
    }
    let slot = table.get("slot")?.as_integer()?;
    Some(VolumeState {
        slot,
        // Files written before `since` was saved: the history began no
        // later than the kept span.
        since: match table.get("since") {
            Some(since) => since.as_integer()?,
            None => slot - super::volume::KEPT_SLOTS,
        },
        all: counts_from_text(table.get("all")?.as_str()?)?,
        transactional: counts_from_text(table.get("transactional")?.as_str()?)?,
        seeds,
    })
}

impl SavedState {
    /// The state as a small TOML document.
    pub fn to_text(&self, gateway: &str) -> String {
        let mut text = format!(
            "# smtp-shaper: learned shaping state of gateway \"{gateway}\", rewritten while it runs.\n\
             # Delete the file to forget the history (the gateway restarts from initial_rate).\n\
             version = 1\nsaved_at = {:?}\nbaseline_per_second = {:?}\npenalty = {:?}\npaused_until = {:?}\n",
            self.saved_at, self.baseline, self.penalty, self.paused_until
        );
        for (window, slots) in &self.caps {
            let slots: Vec<String> = slots
                .iter()
                .map(|(slot, units)| format!("[{slot}, {units}]"))
                .collect();
            text.push_str(&format!(
                "\n[[caps]]\nwindow_seconds = {window:?}\nslots = [{}]\n",
                slots.join(", ")
            ));
        }
        if let Some(volume) = &self.volume {
            text.push_str(&volume_to_text(volume));
        }
        text
    }

    /// Reads [`SavedState::to_text`]; `None` explains nothing because the
    /// caller logs the file and starts fresh.
    pub fn parse(text: &str) -> Option<SavedState> {
        let table: Table = text.parse().ok()?;
        let number = |key: &str| -> Option<f64> {
            match table.get(key)? {
                Value::Float(value) => Some(*value),
                Value::Integer(value) => Some(*value as f64),
                _ => None,
            }
        };
        if table.get("version")?.as_integer()? != 1 {
            return None;
        }
        let mut caps = Vec::new();
        if let Some(entries) = table.get("caps") {
            for entry in entries.as_array()? {
                let window = match entry.get("window_seconds")? {
                    Value::Float(value) => *value,
                    Value::Integer(value) => *value as f64,
                    _ => return None,
                };
                let mut slots = Vec::new();
                for pair in entry.get("slots")?.as_array()? {
                    let pair = pair.as_array()?;
                    let slot = pair.first()?.as_integer()?;
                    let units = u64::try_from(pair.get(1)?.as_integer()?).ok()?;
                    slots.push((slot, units));
                }
                caps.push((window, slots));
            }
        }
        let volume = match table.get("volume") {
            Some(volume) => Some(volume_from_table(volume)?),
            None => None,
        };
        let saved_at = number("saved_at")?;
        // The volume's minute must be the save's: anything else is damage
        // (and would make waits absurd).
        if volume
            .as_ref()
            .is_some_and(|volume| (volume.slot as f64 - saved_at / 60.0).abs() > 2.0)
        {
            return None;
        }
        let state = SavedState {
            saved_at,
            baseline: number("baseline_per_second")?,
            penalty: number("penalty")?,
            paused_until: number("paused_until")?,
            caps,
            volume,
        };
        (state.baseline.is_finite() && state.baseline >= 0.0 && state.penalty.is_finite())
            .then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let state = SavedState {
            saved_at: 1_764_180_060.25,
            baseline: 0.5,
            penalty: 1.0,
            paused_until: 0.0,
            caps: vec![
                (60.0, vec![(29_403_000, 3), (29_403_001, 1)]),
                (86_400.0, vec![]),
            ],
            volume: None,
        };
        assert_eq!(
            SavedState::parse(&state.to_text("primary")),
            Some(state.clone())
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
            ..state
        };
        let text = with_volume.to_text("primary");
        assert!(text.contains("all = \"3 +3 7 +1\""), "{text}");
        assert_eq!(SavedState::parse(&text), Some(with_volume));
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
        assert_eq!(SavedState::parse("not toml ["), None);
        assert_eq!(
            SavedState::parse(
                "version = 1\nsaved_at = 1\nbaseline_per_second = \"x\"\npenalty = 1\npaused_until = 0\n"
            ),
            None
        );
    }
}
