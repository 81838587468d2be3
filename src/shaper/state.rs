//! The saved shaping state of one gateway, as TOML text: what a restart must
//! not forget (the learned baseline, a throttling cut, the cap counts).
//! Pure text <-> struct; the spool writes and reads the file.

use toml::{Table, Value};

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
        let state = SavedState {
            saved_at: number("saved_at")?,
            baseline: number("baseline_per_second")?,
            penalty: number("penalty")?,
            paused_until: number("paused_until")?,
            caps,
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
            saved_at: 1_764_180_000.25,
            baseline: 0.5,
            penalty: 1.0,
            paused_until: 0.0,
            caps: vec![
                (60.0, vec![(29_403_000, 3), (29_403_001, 1)]),
                (86_400.0, vec![]),
            ],
        };
        assert_eq!(SavedState::parse(&state.to_text("primary")), Some(state));
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
