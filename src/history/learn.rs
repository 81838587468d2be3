//! `smtp-shaper learn`: a gateway's history, read from its own log, becomes
//! its saved volume history and minute baseline, so the next start (or a
//! running service after SIGHUP) shapes from what receivers already know.
//!
//! What is written, and why:
//! - The per-minute counts of the kept span (the last 7 + 2 days the volume
//!   rule looks at), in the gateway's `count` unit (messages or
//!   recipients). Older entries are read and reported but not kept.
//! - The same counts as the transactional apps' series too: a log cannot
//!   tell apps apart, so all the gateway sent is taken as what the
//!   transactional apps may need. Bulk mail then gets the growth the rule
//!   allows beyond the history, never the room the history shows is used;
//!   the learned series ages out within the week as the gateway's own
//!   sends take its place.
//! - The minute baseline: the peak-hold of the per-minute message rate with
//!   the configured half-life and no warm-up bound (the history already
//!   happened; warm-up bounds what is new), faded to now.
//! - `[history]`: the source, when it was learned and the span, so start-up
//!   and `/status` can say where the history comes from, and a running
//!   service can tell a learned file from its own (see `outbound`).
//!
//! What is kept: an existing saved state's cap counts, throttling cut and
//! pause, and an operator's hold. Its volume history is merged minute by minute (the larger count:
//! the gateway's log already holds what the service sent through it),
//! unless it has sends after the log's last entry: then the log is older
//! than the history and `learn` refuses, unless `--replace`, which takes
//! the log's counts up to its end and keeps the saved ones after it.
//! The file is replaced by the spool's crash-safe write (temporary file,
//! fsync, rename, fsync of the directory): a crash leaves the old state.
//! The read and the write hold the file's lock, which a running service
//! takes for each save, so no save falls between them.

use std::collections::BTreeMap;
use std::path::Path;

use super::time::{Zone, format_minute};
use super::{Counts, History, Input, Minute};
use crate::config::{Config, GatewayConfig};
use crate::policy::receivers::Receivers;
use crate::shaper::penalty::Phase;
use crate::shaper::receivers::{ReceiverState, UNKNOWN_HISTORY_SLOTS};
use crate::shaper::volume::{KEPT_SLOTS, Volume, VolumeState};
use crate::shaper::{CountUnit, Horizon, ShapingConfig};
use crate::shaper::{HistorySource, SavedState};

const DAY: f64 = 86_400.0;

/// What the command line asked.
pub struct Request<'a> {
    pub config: &'a Config,
    /// For messages.
    pub config_path: &'a Path,
    pub gateway: &'a str,
    pub inputs: &'a [Input],
    pub replace: bool,
}

/// Reads the inputs, merges with the saved state, writes it; the report
/// to print, or a message naming what is wrong.
pub fn learn(request: &Request, zone: &Zone, now: f64) -> Result<String, String> {
    let config = request.config;
    let Some(gateway) = config.gateways.iter().find(|g| g.name == request.gateway) else {
        let names: Vec<&str> = config.gateways.iter().map(|g| g.name.as_str()).collect();
        return Err(format!(
            "no gateway named {:?} in {}; configured: {}",
            request.gateway,
            request.config_path.display(),
            names.join(", ")
        ));
    };
    let history = super::read(request.inputs, zone, now)?;
    check_span(&history)?;
    check_recent(&history, now)?;
    let path = crate::spool::shaping_state_path(&config.spool.dir, &gateway.name);
    // A running service does not save between this read and the write.
    let _lock = crate::spool::lock_shaping_state(&config.spool.dir, &gateway.name)
        .map_err(|error| error.to_string())?;
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(SavedState::parse(&text).ok_or_else(|| {
            format!(
                "{}: the saved shaping state is damaged; move it away to learn anyway (its cap counts are then forgotten)",
                path.display()
            )
        })?),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(format!("{}: cannot read: {error}", path.display())),
    };
    let state = learned_state(
        &gateway.shaping,
        &history,
        existing.as_ref(),
        request.replace,
        now,
    )?;
    let text = state
        .to_text(&gateway.name)
        .map_err(|error| format!("cannot write the state: {error}"))?;
    // What the service will read: checked before it replaces anything.
    if SavedState::parse(&text).is_none() {
        return Err("the learned state does not read back (a bug); nothing written".into());
    }
    let written = crate::spool::replace_shaping_state(&config.spool.dir, &gateway.name, &text)
        .map_err(|error| error.to_string())?;
    let mut report = summary(gateway, &history, &state, now);
    report.push_str(&format!(
        "written {}{}; a start reads it, and a running smtp-shaper takes it on reload (kill -HUP)\n",
        written.display(),
        if existing.is_some() {
            " (cap counts, throttling cut and pause of the saved state kept)"
        } else {
            ""
        }
    ));
    Ok(report)
}

/// A history shorter than a day says nothing about a day.
fn check_span(history: &History) -> Result<(), String> {
    let counts = &history.counts;
    if counts.counted == 0 {
        return Err(format!(
            "nothing counted in the {} ({} lines read{}); is it the gateway's own log?",
            history.source,
            counts.lines,
            skipped_summary(counts)
        ));
    }
    if counts.span() < DAY {
        return Err(format!(
            "the {} covers only {} ({} .. {}); learning needs at least a day of history",
            history.source,
            duration(counts.span()),
            format_minute(counts.first.unwrap_or(0.0)),
            format_minute(counts.last.unwrap_or(0.0)),
        ));
    }
    Ok(())
}

/// A history that ended before the kept span would write nothing.
fn check_recent(history: &History, now: f64) -> Result<(), String> {
    let last = history.counts.last.unwrap_or(0.0);
    if last < now - KEPT_SLOTS as f64 * 60.0 {
        return Err(format!(
            "the {} ends at {}, more than 9 days ago: the volume rule weighs only the last 7 + 2 days, so none of it would count (simulate --history replays an older history)",
            history.source,
            format_minute(last)
        ));
    }
    Ok(())
}

fn skipped_summary(counts: &Counts) -> String {
    counts
        .skipped
        .iter()
        .map(|(reason, lines)| format!("; {lines} {reason}"))
        .collect()
}

/// `6d 23h 59m`.
fn duration(seconds: f64) -> String {
    let minutes = (seconds / 60.0).floor() as i64;
    let (days, hours, minutes) = (minutes / 1_440, minutes % 1_440 / 60, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m"),
        (0, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h {minutes}m"),
    }
}

/// The units a minute counts for a gateway counting `unit`.
fn units(minute: &super::Minute, unit: CountUnit) -> u64 {
    match unit {
        CountUnit::Messages => minute.messages,
        CountUnit::Recipients => minute.recipients,
    }
}

/// The state to save at `now`: the learned history (merged with
/// `existing`'s, see the module notes) and the kept parts of `existing`.
pub fn learned_state(
    shaping: &ShapingConfig,
    history: &History,
    existing: Option<&SavedState>,
    replace: bool,
    now: f64,
) -> Result<SavedState, String> {
    let counts = &history.counts;
    let slot = (now / 60.0).floor() as i64;
    let first_kept = slot - KEPT_SLOTS + 1;
    let log_last = (counts.last.unwrap_or(now) / 60.0).floor() as i64;
    let saved_volume = existing.and_then(|state| state.volume.as_ref());
    let saved_all = saved_volume.map_or_else(
        || vec![0; KEPT_SLOTS as usize],
        |volume| aligned(&volume.all, volume.slot, slot),
    );
    if let Some(newest) = saved_all.iter().rposition(|units| *units > 0) {
        let newest = first_kept + newest as i64;
        if newest > log_last && !replace {
            return Err(format!(
                "the saved history of this gateway has sends up to {}, after the {}'s last entry ({}): the log is older than the history; give a log that reaches further, or --replace to take the log's counts up to its end (the saved ones after it are kept)",
                format_minute(newest as f64 * 60.0),
                history.source,
                format_minute(counts.last.unwrap_or(0.0)),
            ));
        }
    }
    let first_minute = (counts.first.unwrap_or(now) / 60.0).floor() as i64;
    let learning = Learning {
        shaping,
        slot,
        log_last,
        first_minute,
        replace,
    };
    let volume = learning.merged(&counts.minutes, saved_volume);
    // Each budgeted receiver's share of the log, when the log names the
    // recipients (else the saved receivers stay as they were). Its history
    // is known from the log's first minute: held a week after it (at once
    // for a log of a week or more), or earlier if the saved state knew it.
    let receivers = match existing {
        Some(state) if counts.receivers.is_empty() => state.receivers.clone(),
        _ if counts.receivers.is_empty() => Vec::new(),
        _ => shaping
            .receivers
            .iter()
            .map(|rule| {
                let saved = existing
                    .and_then(|state| state.receivers.iter().find(|kept| kept.name == rule.name));
                let empty = BTreeMap::new();
                let minutes = counts.receivers.get(&rule.name).unwrap_or(&empty);
                let held_from = first_minute + UNKNOWN_HISTORY_SLOTS;
                ReceiverState {
                    name: rule.name.clone(),
                    volume: learning.merged(minutes, saved.map(|kept| &kept.volume)),
                    held_from: match saved {
                        Some(kept) if !replace => held_from.min(kept.held_from),
                        _ => held_from,
                    },
                }
            })
            .collect(),
    };
    let half_life = shaping.baseline_half_life.as_secs_f64();
    let learned_baseline = baseline(shaping, counts, now);
    // The throttling cut (with its phase) and pause are kept as saved.
    let kept = existing.cloned().unwrap_or(SavedState {
        receivers: Vec::new(),
        saved_at: now,
        baseline: 0.0,
        penalty: 1.0,
        penalty_phase: Some(Phase::Calm),
        paused_until: 0.0,
        caps: Vec::new(),
        volume: None,
        history: None,
        held: false,
        nodes_seen: Default::default(),
    });
    let faded = kept.baseline * 0.5f64.powf((now - kept.saved_at).max(0.0) / half_life);
    let baseline = if replace {
        learned_baseline
    } else {
        learned_baseline.max(faded)
    };
    Ok(SavedState {
        saved_at: now,
        baseline,
        volume: Some(volume),
        receivers,
        history: Some(HistorySource {
            source: history.source.clone(),
            learned_at: now,
            first: counts.first.unwrap_or(now),
            last: counts.last.unwrap_or(now),
        }),
        ..kept
    })
}

/// What merging a log's counts with a saved history needs to know.
struct Learning<'a> {
    shaping: &'a ShapingConfig,
    /// The minute the merged counts end in (now).
    slot: i64,
    /// The log's last and first minutes.
    log_last: i64,
    first_minute: i64,
    replace: bool,
}

impl Learning<'_> {
    /// `minutes` (a log's counts) merged with `saved`, minute by minute
    /// (see the module notes), as one series for all mail and the
    /// transactional apps' alike.
    fn merged(&self, minutes: &BTreeMap<i64, Minute>, saved: Option<&VolumeState>) -> VolumeState {
        let slot = self.slot;
        let first_kept = slot - KEPT_SLOTS + 1;
        let mut learned = vec![0u64; KEPT_SLOTS as usize];
        for (minute, count) in minutes {
            // A gateway clock a little ahead: counted in the current minute.
            let minute = (*minute).min(slot);
            if minute >= first_kept {
                learned[(minute - first_kept) as usize] += units(count, self.shaping.count);
            }
        }
        let merge = |saved: Option<&[u64]>, saved_end: i64| -> Vec<u64> {
            let saved = saved.map_or_else(
                || vec![0; KEPT_SLOTS as usize],
                |counts| aligned(counts, saved_end, slot),
            );
            let cut = if self.replace {
                self.log_last
            } else {
                i64::MIN
            };
            merge_series(&learned, &saved, slot, cut)
        };
        let since = match saved {
            Some(volume) if !self.replace => volume.since.min(self.first_minute),
            _ => self.first_minute,
        };
        let end = saved.map_or(slot, |volume| volume.slot);
        VolumeState {
            slot,
            all: merge(saved.map(|volume| &volume.all[..]), end),
            transactional: merge(saved.map(|volume| &volume.transactional[..]), end),
            seeds: [None; 2],
            since: since.max(slot - KEPT_SLOTS),
        }
    }
}

/// A running service's state (`running`, just snapshot) once `learn` wrote
/// `learned` beside it: the learned volume history up to the log's last
/// entry, the larger of both counts after it (the service's sends since),
/// the larger baseline, and the service's own caps, cut and pause.
pub fn adopt(running: &SavedState, learned: &SavedState) -> SavedState {
    let mut state = running.clone();
    state.baseline = running.baseline.max(learned.baseline);
    state.history = learned.history.clone();
    let Some(learned_volume) = &learned.volume else {
        return state;
    };
    // The save's minute (the file's volume must end there).
    let slot = (running.saved_at / 60.0).floor() as i64;
    let log_last = learned
        .history
        .as_ref()
        .map_or(i64::MIN, |history| (history.last / 60.0).floor() as i64);
    let merge = |learned: &[u64], learned_end: i64, own: Option<(&[u64], i64)>| {
        let learned = aligned(learned, learned_end, slot);
        let own = own.map_or_else(
            || vec![0; KEPT_SLOTS as usize],
            |(counts, end)| aligned(counts, end, slot),
        );
        merge_series(&learned, &own, slot, log_last)
    };
    let adopted = |learned: &VolumeState, own: Option<&VolumeState>| VolumeState {
        slot,
        all: merge(
            &learned.all,
            learned.slot,
            own.map(|volume| (&volume.all[..], volume.slot)),
        ),
        transactional: merge(
            &learned.transactional,
            learned.slot,
            own.map(|volume| (&volume.transactional[..], volume.slot)),
        ),
        seeds: [None; 2],
        since: learned
            .since
            .min(own.map_or(i64::MAX, |volume| volume.since))
            .max(slot - KEPT_SLOTS),
    };
    state.volume = Some(adopted(learned_volume, running.volume.as_ref()));
    // Each receiver the log knew, the same way; the service's others stay.
    for receiver in &learned.receivers {
        let own = state
            .receivers
            .iter()
            .position(|kept| kept.name == receiver.name);
        let merged = ReceiverState {
            name: receiver.name.clone(),
            volume: adopted(
                &receiver.volume,
                own.map(|index| &state.receivers[index].volume),
            ),
            held_from: own.map_or(receiver.held_from, |index| {
                receiver.held_from.min(state.receivers[index].held_from)
            }),
        };
        match own {
            Some(index) => state.receivers[index] = merged,
            None => state.receivers.push(merged),
        }
    }
    state
}

/// Two series of the kept span ending at `slot`: `learned`'s counts up
/// to minute `cut`, the larger of both after it, without the leading
/// empty minutes.
fn merge_series(learned: &[u64], other: &[u64], slot: i64, cut: i64) -> Vec<u64> {
    let first_kept = slot - KEPT_SLOTS + 1;
    let merged: Vec<u64> = (0..KEPT_SLOTS as usize)
        .map(|index| {
            if first_kept + index as i64 <= cut {
                learned[index]
            } else {
                learned[index].max(other[index])
            }
        })
        .collect();
    let zeros = merged.iter().take_while(|units| **units == 0).count();
    merged[zeros..].to_vec()
}

/// `counts` ending at minute `end`, placed in the kept span ending at
/// `slot` (a count after `slot` goes into it).
fn aligned(counts: &[u64], end: i64, slot: i64) -> Vec<u64> {
    let first_kept = slot - KEPT_SLOTS + 1;
    let mut placed = vec![0u64; KEPT_SLOTS as usize];
    let start = end - counts.len() as i64 + 1;
    for (offset, units) in counts.iter().enumerate() {
        let minute = (start + offset as i64).min(slot);
        if minute >= first_kept {
            placed[(minute - first_kept) as usize] += units;
        }
    }
    placed
}

/// The minute baseline (messages per second) the history shows at `now`:
/// each minute's rate held as a peak, fading by the half-life, never below
/// the floor the model keeps.
pub fn baseline(shaping: &ShapingConfig, counts: &Counts, now: f64) -> f64 {
    let floor = shaping.min_rate / shaping.headroom;
    let fade_per_minute = 0.5f64.powf(60.0 / shaping.baseline_half_life.as_secs_f64());
    let mut rate = floor;
    let mut at: Option<i64> = None;
    for (minute, count) in &counts.minutes {
        if let Some(previous) = at {
            rate *= fade_per_minute.powf((minute - previous) as f64);
        }
        rate = rate.max(count.messages as f64 / 60.0);
        at = Some(*minute);
    }
    if let Some(last) = at {
        let since = (now / 60.0).floor() as i64 - last;
        rate *= fade_per_minute.powf(since.max(0) as f64);
    }
    rate.max(floor)
}

/// The busiest window of `minutes` minutes: (units, the first minute with
/// sends in it).
pub fn busiest(counts: &Counts, unit: CountUnit, minutes: i64) -> (u64, i64) {
    busiest_of(&counts.minutes, unit, minutes)
}

/// [`busiest`] of one series of minutes (the gateway's, or a receiver's).
fn busiest_of(series: &BTreeMap<i64, Minute>, unit: CountUnit, minutes: i64) -> (u64, i64) {
    let entries: Vec<(i64, u64)> = series
        .iter()
        .map(|(minute, count)| (*minute, units(count, unit)))
        .collect();
    let mut best = (0, entries.first().map_or(0, |(minute, _)| *minute));
    let mut sum = 0;
    let mut start = 0;
    for (minute, units) in &entries {
        sum += units;
        while entries[start].0 <= minute - minutes {
            sum -= entries[start].1;
            start += 1;
        }
        if sum > best.0 {
            best = (sum, entries[start].0);
        }
    }
    best
}

/// What `learn` found and what follows, for the operator.
fn summary(gateway: &GatewayConfig, history: &History, state: &SavedState, now: f64) -> String {
    let shaping = &gateway.shaping;
    let counts = &history.counts;
    let unit = match shaping.count {
        CountUnit::Messages => "messages",
        CountUnit::Recipients => "recipients",
    };
    let mut text = format!(
        "gateway {:?}: history from the {}\n",
        gateway.name, history.source
    );
    text.push_str(&format!(
        "  lines read     {}\n  lines counted  {}\n",
        counts.lines, counts.counted
    ));
    for (reason, lines) in &counts.skipped {
        text.push_str(&format!("  skipped        {lines} {reason}\n"));
    }
    text.push_str(&format!(
        "  span           {} .. {} ({})\n",
        format_minute(counts.first.unwrap_or(0.0)),
        format_minute(counts.last.unwrap_or(0.0)),
        duration(counts.span())
    ));
    let too_old = counts
        .minutes
        .range(..(now / 60.0).floor() as i64 - KEPT_SLOTS + 1)
        .count();
    if too_old > 0 {
        text.push_str(&format!(
            "                 ({too_old} minutes with sends are older than the 9 days kept)\n"
        ));
    }
    for (name, minutes) in [("minute", 1), ("hour", 60), ("day", 1_440)] {
        let (units, start) = busiest(counts, shaping.count, minutes);
        text.push_str(&format!(
            "  busiest {name:<6} {units} {unit} from {}\n",
            format_minute(start as f64 * 60.0)
        ));
    }
    // Each receiver's own history, busiest hour and day first (what
    // per-receiver budgets will weigh a burst to that receiver against).
    let receivers = Receivers::builtin();
    for name in receivers.names() {
        let Some(series) = counts.receivers.get(name) else {
            continue;
        };
        let (hour, _) = busiest_of(series, shaping.count, 60);
        let (day, _) = busiest_of(series, shaping.count, 1_440);
        text.push_str(&format!(
            "  receiver       {name:<10} busiest hour {hour}, day {day} {unit}\n"
        ));
    }
    let mut volume = Volume::restore(shaping, state.volume.as_ref().expect("learned"), now);
    let views = volume.view(now);
    if views.is_empty() {
        text.push_str("  allowances     none: min_rate names no hour or day floor\n");
    }
    for view in views {
        let name = match view.horizon {
            Horizon::Hour => "hour",
            Horizon::Day => "day",
        };
        text.push_str(&format!(
            "  allowance      {} {unit} per rolling {name} now (max(floor, warmup x the busiest {name} of the last 7 days))\n",
            view.allowance
        ));
    }
    text.push_str(&format!(
        "  baseline       {} (ceiling {})\n",
        gateway.rate_period.format(state.baseline),
        gateway.rate_period.format(
            (state.baseline * shaping.headroom * state.penalty)
                .clamp(shaping.min_rate, shaping.max_rate)
        )
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Minute;

    fn shaping(extra: &str) -> ShapingConfig {
        format!("min_rate = [\"10/min\", \"60/h\", \"300/day\"]\n{extra}")
            .parse()
            .unwrap()
    }

    /// `per_minute[i]` (messages, recipients) at minute `start + i`.
    fn history(start: i64, per_minute: &[(i64, u64, u64)]) -> History {
        let mut counts = Counts::default();
        for (offset, messages, recipients) in per_minute {
            let at = (start + offset) as f64 * 60.0;
            counts.minutes.insert(
                start + offset,
                Minute {
                    messages: *messages,
                    recipients: *recipients,
                },
            );
            counts.counted += 1;
            counts.first = Some(counts.first.map_or(at, |f: f64| f.min(at)));
            counts.last = Some(counts.last.map_or(at, |l: f64| l.max(at)));
        }
        History {
            counts,
            source: "postfix log".into(),
        }
    }

    const NOW_MINUTE: i64 = 29_946_000;

    #[test]
    fn busiest_windows_slide_over_minutes() {
        let history = history(
            0,
            &[(0, 5, 5), (30, 5, 9), (59, 1, 1), (60, 10, 10), (200, 3, 3)],
        );
        assert_eq!(busiest(&history.counts, CountUnit::Messages, 1), (10, 60));
        assert_eq!(busiest(&history.counts, CountUnit::Messages, 60), (16, 30));
        assert_eq!(
            busiest(&history.counts, CountUnit::Recipients, 60),
            (20, 30)
        );
        assert_eq!(
            busiest(&history.counts, CountUnit::Messages, 1_440),
            (24, 0)
        );
    }

    #[test]
    fn the_learned_state_counts_the_configured_unit_and_reads_back() {
        let start = NOW_MINUTE - 3 * 1_440;
        let history = history(
            start,
            &[
                (0, 1, 1),
                (600, 100, 250),
                (1_500, 20, 20),
                (2 * 1_440, 2, 2),
            ],
        );
        let now = NOW_MINUTE as f64 * 60.0 + 30.0;
        let shaping = shaping("count = \"recipients\"");
        let state = learned_state(&shaping, &history, None, false, now).unwrap();
        let volume = state.volume.clone().unwrap();
        assert_eq!(volume.slot, NOW_MINUTE);
        assert_eq!(volume.since, start);
        assert_eq!(volume.all.iter().sum::<u64>(), 273);
        assert_eq!(volume.all, volume.transactional);
        assert_eq!(state.history.as_ref().unwrap().source, "postfix log");
        let text = state.to_text("g").unwrap();
        assert_eq!(SavedState::parse(&text), Some(state.clone()));
        let mut restored = Volume::restore(&shaping, &volume, now);
        let view = restored.view(now);
        assert_eq!(
            view[0].allowance, 500,
            "2 x the busiest hour (250 recipients)"
        );
        assert_eq!(view[1].allowance, 540, "2 x the busiest day (250 + 20)");
        // The baseline: 100 messages in a minute, faded since.
        let minutes = (3 * 1_440 - 600) as f64;
        let expected =
            100.0 / 60.0 * 0.5f64.powf(minutes * 60.0 / shaping.baseline_half_life.as_secs_f64());
        assert!(
            (state.baseline - expected).abs() / expected < 0.01,
            "{} vs {expected}",
            state.baseline
        );
    }

    #[test]
    fn keeps_caps_merges_history_and_refuses_an_older_log() {
        let now = NOW_MINUTE as f64 * 60.0;
        let shaping = shaping("");
        let existing = SavedState {
            saved_at: now - 60.0,
            baseline: 0.01,
            penalty: 0.5,
            penalty_phase: None,
            receivers: Vec::new(),
            paused_until: now + 100.0,
            caps: vec![(60.0, vec![(NOW_MINUTE - 1, 7)])],
            volume: Some(VolumeState {
                slot: NOW_MINUTE - 1,
                all: vec![40, 0, 3],
                transactional: vec![3],
                seeds: [None; 2],
                since: NOW_MINUTE - 100,
            }),
            history: None,
            held: true,
            nodes_seen: Default::default(),
        };
        // The saved history has a send in minute NOW - 1; the log ends at NOW - 3.
        let log = history(
            NOW_MINUTE - 2_000,
            &[(0, 5, 5), (1_996, 9, 9), (1_997, 1, 1)],
        );
        let error = learned_state(&shaping, &log, Some(&existing), false, now).unwrap_err();
        assert!(error.contains("--replace"), "{error}");
        let replaced = learned_state(&shaping, &log, Some(&existing), true, now).unwrap();
        assert_eq!(replaced.caps, existing.caps, "the caps' counts are kept");
        assert_eq!(replaced.paused_until, existing.paused_until);
        assert!(replaced.held, "an operator's hold is kept");
        assert_eq!(replaced.penalty, 0.5, "the cut is kept as saved");
        let all = replaced.volume.as_ref().unwrap().all.clone();
        // Up to the log's end (NOW - 3) the log's counts (1, not the saved
        // 40); after it the saved ones.
        assert_eq!(&all[all.len() - 5..], &[9, 1, 0, 3, 0]);
        // A log reaching further merges by the larger count.
        let longer = history(
            NOW_MINUTE - 2_000,
            &[(0, 5, 5), (1_997, 9, 9), (1_999, 1, 1)],
        );
        let merged = learned_state(&shaping, &longer, Some(&existing), false, now).unwrap();
        let all = merged.volume.as_ref().unwrap().all.clone();
        assert_eq!(&all[all.len() - 4..], &[40, 0, 3, 0]);
        assert_eq!(merged.volume.as_ref().unwrap().since, NOW_MINUTE - 2_000);
    }

    #[test]
    fn a_running_service_adopts_a_learned_history_and_keeps_its_own_counts() {
        let now = NOW_MINUTE as f64 * 60.0;
        let shaping = shaping("");
        let log = history(NOW_MINUTE - 2_000, &[(0, 5, 5), (1_990, 7, 7)]);
        let learned = learned_state(&shaping, &log, None, false, now - 120.0).unwrap();
        let running = SavedState {
            saved_at: now,
            baseline: 0.01,
            penalty: 0.5,
            penalty_phase: None,
            paused_until: 0.0,
            receivers: Vec::new(),
            caps: vec![(60.0, vec![(NOW_MINUTE, 2)])],
            volume: Some(VolumeState {
                slot: NOW_MINUTE,
                // Its own sends: 4 in the log's last minute (NOW - 10),
                // 2 after it.
                all: vec![4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
                transactional: vec![1],
                seeds: [None; 2],
                since: NOW_MINUTE - 30,
            }),
            history: None,
            held: false,
            nodes_seen: Default::default(),
        };
        let adopted = adopt(&running, &learned);
        assert_eq!(adopted.caps, running.caps);
        assert_eq!(adopted.penalty, 0.5);
        assert_eq!(adopted.history, learned.history);
        let volume = adopted.volume.clone().unwrap();
        assert_eq!(volume.slot, NOW_MINUTE);
        assert_eq!(volume.since, NOW_MINUTE - 2_000);
        assert_eq!(
            volume.all.iter().sum::<u64>(),
            5 + 7 + 2,
            "{:?}",
            &volume.all[volume.all.len() - 12..]
        );
        assert_eq!(
            volume.all[volume.all.len() - 11..],
            [7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]
        );
        assert_eq!(volume.transactional.iter().sum::<u64>(), 5 + 7 + 1);
        let text = SavedState {
            saved_at: now,
            ..adopted.clone()
        }
        .to_text("g")
        .unwrap();
        assert!(SavedState::parse(&text).is_some());
    }

    #[test]
    fn reports_durations_and_short_spans() {
        assert_eq!(duration(59.0), "0m");
        assert_eq!(duration(3_600.0 * 5.0 + 180.0), "5h 3m");
        assert_eq!(
            duration(DAY * 6.0 + 3_600.0 * 23.0 + 59.0 * 60.0),
            "6d 23h 59m"
        );
        let short = history(NOW_MINUTE, &[(0, 1, 1), (600, 1, 1)]);
        let error = check_span(&short).unwrap_err();
        assert!(error.contains("covers only 10h 0m"), "{error}");
        let old = history(NOW_MINUTE - 11 * 1_440, &[(0, 1, 1), (1_500, 1, 1)]);
        assert!(check_span(&old).is_ok());
        let error = check_recent(&old, NOW_MINUTE as f64 * 60.0).unwrap_err();
        assert!(error.contains("more than 9 days ago"), "{error}");
        let recent = history(NOW_MINUTE - 3 * 1_440, &[(0, 1, 1), (1_500, 1, 1)]);
        assert!(check_recent(&recent, NOW_MINUTE as f64 * 60.0).is_ok());
        let empty = History {
            counts: Counts::default(),
            source: "csv".into(),
        };
        assert!(check_span(&empty).unwrap_err().contains("nothing counted"));
    }

    #[test]
    fn a_log_that_names_recipients_gives_each_receiver_its_history() {
        let now = NOW_MINUTE as f64 * 60.0;
        let shaping = shaping("");
        // Eight days of 300 a day, all to Microsoft.
        let start = NOW_MINUTE - 8 * 1_440;
        let per_day: Vec<(i64, u64, u64)> = (0..8).map(|day| (day * 1_440, 300, 300)).collect();
        let mut log = history(start, &per_day);
        log.counts.receivers.insert(
            "microsoft".into(),
            per_day
                .iter()
                .map(|(offset, messages, recipients)| {
                    (
                        start + offset,
                        Minute {
                            messages: *messages,
                            recipients: *recipients,
                        },
                    )
                })
                .collect(),
        );
        let learned = learned_state(&shaping, &log, None, false, now).unwrap();
        let names: Vec<&str> = learned.receivers.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["google", "microsoft", "yahoo", "apple"]);
        let microsoft = &learned.receivers[1];
        assert_eq!(microsoft.volume.all.iter().sum::<u64>(), 8 * 300);
        assert_eq!(microsoft.held_from, start + UNKNOWN_HISTORY_SLOTS);
        assert_eq!(learned.receivers[0].volume.all.iter().sum::<u64>(), 0);
        // The log covers more than a week: each receiver is held to its own
        // history at once, Microsoft's grown by it, Google's at its floor.
        let mut model = crate::shaper::GatewayModel::restore(&shaping, &learned, now);
        let view = model.view(now);
        assert!(view.receivers.iter().all(|receiver| receiver.held));
        assert_eq!(
            view.receivers[1].budgets[1].allowance, 600,
            "2 x its busiest day"
        );
        assert_eq!(view.receivers[0].budgets[1].allowance, 100);
        // A service running beside it adopts the receivers too, keeping its
        // own sends after the log's end.
        let mut running = learned.clone();
        running.receivers.clear();
        let adopted = adopt(&running, &learned);
        assert_eq!(adopted.receivers, learned.receivers);
        // A log without recipients keeps the saved receivers as they are.
        let mut counts_only = log.clone();
        counts_only.counts.receivers.clear();
        let again = learned_state(&shaping, &counts_only, Some(&learned), false, now).unwrap();
        assert_eq!(again.receivers, learned.receivers);
    }
}
