//! What each receiver sees: a trace whose rows name the recipients' domain
//! is split by receiver (`policy::receivers`: by the domain's name, else by
//! its MX hosts from `--mx-map`), and each receiver's share of the shaped
//! output and of what the apps offered is judged by the volume rule on
//! that receiver's own history, the way Gmail judges a sending IP by the
//! mail Gmail got from it.
//!
//! The rule per receiver R and window W: at most `max(floor_R, warmup x
//! the busiest W-window R saw in the 7 days before)`, with the gateway's
//! receiver floors (`receiver_min_rate`, `[[receivers]] min_rate`). The
//! shaper holds every budgeted receiver to it (`shaper::receivers`); this
//! view judges the output independently, in continuous time, from the
//! moment each receiver's rule holds. A receiver the gateway does not
//! budget (`other` by default) is judged by the shipped floors
//! (`receiver_min_rate`'s default), to show what it got, and marked so.

use std::collections::HashMap;

use super::receiver::{Judge, Rule, Verdict};
use super::{Arrival, SentRecord};
use crate::config::default_receiver_min_volume;
use crate::policy::receivers::Receivers;
use crate::shaper::{Horizon, ShapingConfig};

/// Per receiver, its sends before the trace: (time, units).
pub type Sends = HashMap<String, Vec<(f64, u64)>>;

/// One receiver's share of a replay and how it fares under its rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverReport {
    pub name: String,
    /// Held to its own rule by the gateway (else counted in the total only).
    pub budgeted: bool,
    /// Messages the trace offered to it, and the gateway sent it.
    pub offered: usize,
    pub sent: usize,
    /// Per [`Horizon`]: the rule, and the tightest moment of what it got
    /// (shaped) and of what the apps offered it (unshaped).
    pub windows: Vec<(Horizon, Rule, Verdict, Verdict)>,
}

/// The receiver of each trace row (`None` for all rows when the trace names
/// no domain): by the row's domain, else `other`.
pub fn receivers_of_rows(
    trace: &[Arrival],
    receivers: &Receivers,
    mx: &HashMap<String, Vec<String>>,
) -> Vec<Option<String>> {
    if trace.iter().all(|arrival| arrival.domain.is_none()) {
        return vec![None; trace.len()];
    }
    trace
        .iter()
        .map(|arrival| {
            let domain = arrival.domain.as_deref().unwrap_or("");
            let hosts = mx.get(domain).into_iter().flatten().map(String::as_str);
            Some(receivers.of(domain, hosts).to_string())
        })
        .collect()
}

/// Each receiver's view of `sent` (the shaped output) and of `trace` (what
/// the apps offered), in the order of `receivers`' names; receivers the
/// trace never reaches are left out. `row_receivers` is
/// [`receivers_of_rows`]'s; `history` each receiver's sends before the
/// trace (`--history`, by receiver; none: what the trace sent it is all it
/// has seen); `judged_from` the first second judged of each receiver (from
/// when its rule holds).
pub fn judge_receivers(
    receivers: &Receivers,
    (row_receivers, history): (&[Option<String>], &Sends),
    trace: &[Arrival],
    sent: &[SentRecord],
    shaping: &ShapingConfig,
    judged_from: impl Fn(&str) -> f64,
    units: impl Fn(u32) -> u64,
) -> Vec<ReceiverReport> {
    let mut reports = Vec::new();
    for name in receivers.names() {
        let rule = shaping.receivers.iter().find(|rule| rule.name == name);
        let floors = rule.map_or_else(default_receiver_min_volume, |rule| rule.floors);
        let judged_from = judged_from(name);
        let of = |row: usize| row_receivers[row].as_deref() == Some(name);
        let before = history.get(name).map_or(&[][..], Vec::as_slice);
        let offered: Vec<(f64, u64)> = trace
            .iter()
            .enumerate()
            .filter(|(row, _)| of(*row))
            .map(|(_, arrival)| (arrival.at, units(arrival.recipients)))
            .collect();
        if offered.is_empty() {
            continue;
        }
        let offered_count = offered.len();
        let offered: Vec<(f64, u64)> = offered.into_iter().chain(before.iter().copied()).collect();
        let shaped: Vec<(f64, u64)> = sent
            .iter()
            .filter(|record| of(record.id as usize))
            .map(|record| (record.at, units(record.recipients)))
            .collect();
        let sent_count = shaped.len();
        let shaped: Vec<(f64, u64)> = shaped.into_iter().chain(before.iter().copied()).collect();
        let windows = Horizon::ALL
            .into_iter()
            .map(|horizon| {
                let rule = Rule {
                    window: horizon.seconds() as f64,
                    floor: floors[horizon as usize].unwrap_or(0),
                    warmup: shaping.warmup,
                    seed: None,
                };
                let judge = |sends: &[(f64, u64)]| {
                    Judge::new(sends.to_vec(), rule.window)
                        .judging_from(judged_from)
                        .judge(&rule)
                };
                (horizon, rule, judge(&shaped), judge(&offered))
            })
            .collect();
        reports.push(ReceiverReport {
            name: name.to_string(),
            budgeted: rule.is_some(),
            offered: offered_count,
            sent: sent_count,
            windows,
        });
    }
    reports
}

/// The report's section on `reports` (empty without any); days count from
/// `day_origin` (the report's).
pub fn to_text(reports: &[ReceiverReport], day_origin: f64) -> String {
    if reports.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nwhat each receiver sees: for each receiver R (by the rows' domain, else its\n\
         --mx-map hosts; else other) and window W, at most max(floor, warmup x the busiest\n\
         W-window R saw in the 7 days before), as the gateway holds each budgeted receiver to;\n\
         judged from when R's own history is known (a row over its allowance is a jump that\n\
         receiver's own history does not allow; a receiver's history: with --history, its own\n\
         from the log; else what the trace sent it)\n\
         receiver    offered     sent  window   shaped: tightest sent / allowed (excess), ending       offered: tightest / allowed (x)\n",
    );
    for report in reports {
        for (index, (horizon, _, shaped, offered)) in report.windows.iter().enumerate() {
            let (name, counts) = if index == 0 {
                (
                    if report.budgeted {
                        report.name.clone()
                    } else {
                        format!("{}*", report.name)
                    },
                    format!("{:>7}  {:>7}", report.offered, report.sent),
                )
            } else {
                (String::new(), format!("{:>7}  {:>7}", "", ""))
            };
            let seconds = (shaped.at - day_origin).max(0.0);
            let ending = if shaped.sent == 0 {
                "-".to_string()
            } else {
                format!(
                    "day {} {:02}:{:02}",
                    (seconds / 86_400.0).floor() as u64 + 1,
                    (seconds % 86_400.0 / 3_600.0).floor() as u64,
                    (seconds % 3_600.0 / 60.0).floor() as u64
                )
            };
            out.push_str(&format!(
                "{name:<10}  {counts}  {:<6}   {:>10} / {:<10} ({:>5}) {ending:<12}  {:>8} / {:<8} ({:.1}x)\n",
                horizon.label(),
                shaped.sent,
                shaped.allowed,
                shaped.excess.max(0),
                offered.sent,
                offered.allowed,
                offered.ratio,
            ));
        }
    }
    if reports.iter().any(|report| !report.budgeted) {
        out.push_str(
            "* not budgeted on this gateway: counted in the total only (judged by the shipped receiver_min_rate)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(at: f64, domain: &str) -> Arrival {
        Arrival {
            at,
            app: "hr".into(),
            recipients: 1,
            domain: Some(domain.into()),
        }
    }

    #[test]
    fn a_burst_to_a_new_receiver_is_judged_on_that_receiver_s_history() {
        let shaping: ShapingConfig = "".parse().unwrap();
        // A week of 100 a day to the company's own domain (Microsoft 365),
        // then a thousand to gmail.com in an hour.
        let mut trace: Vec<Arrival> = (0..700)
            .map(|index| arrival(index as f64 * 864.0, "example.com"))
            .collect();
        trace.extend(
            (0..1_000).map(|index| arrival(7.0 * 86_400.0 + index as f64 * 3.6, "gmail.com")),
        );
        let mx = HashMap::from([(
            "example.com".to_string(),
            vec!["example-com.mail.protection.outlook.com".to_string()],
        )]);
        let receivers = Receivers::builtin();
        let rows = receivers_of_rows(&trace, &receivers, &mx);
        assert_eq!(rows[0].as_deref(), Some("microsoft"));
        assert_eq!(rows[700].as_deref(), Some("google"));
        // Judged as if everything were sent as offered.
        let sent: Vec<SentRecord> = trace
            .iter()
            .enumerate()
            .map(|(row, arrival)| SentRecord {
                id: row as u64,
                at: arrival.at,
                lane: 0,
                recipients: 1,
                delay: 0.0,
                held: 0.0,
            })
            .collect();
        let none = HashMap::new();
        let reports = judge_receivers(
            &receivers,
            (&rows, &none),
            &trace,
            &sent,
            &shaping,
            |_| 0.0,
            u64::from,
        );
        let names: Vec<&str> = reports.iter().map(|report| report.name.as_str()).collect();
        assert_eq!(
            names,
            ["google", "microsoft"],
            "receivers never reached left out"
        );
        let (_, rule, shaped, offered) = &reports[0].windows[0];
        assert_eq!((rule.window, rule.floor), (3_600.0, 20));
        // Gmail saw nothing before: its hour allows the floor only.
        assert_eq!((offered.sent, offered.allowed), (1_000, 20));
        assert_eq!(shaped.excess, 980);
        // Microsoft's hours never passed its floor.
        let (_, _, microsoft, _) = &reports[1].windows[0];
        assert_eq!(microsoft.excess, 0);
        // With Gmail's own history (500 in an hour three days before, as
        // `--history` gives it), the same burst is within its rule.
        let history = HashMap::from([(
            "google".to_string(),
            (0..500)
                .map(|index| (4.0 * 86_400.0 + index as f64, 1))
                .collect(),
        )]);
        let known = judge_receivers(
            &receivers,
            (&rows, &history),
            &trace,
            &sent,
            &shaping,
            |_| 5.0 * 86_400.0,
            u64::from,
        );
        let (_, _, shaped, _) = &known[0].windows[0];
        assert_eq!((shaped.allowed, shaped.excess), (1_000, 0));
        assert_eq!(known[0].offered, 1_000, "the history is not the trace's");
        let text = to_text(&reports, 0.0);
        assert!(text.contains("what each receiver sees"), "{text}");
        assert!(text.contains("google"), "{text}");
    }

    #[test]
    fn a_trace_without_domains_has_no_receiver_section() {
        let trace = vec![Arrival {
            at: 0.0,
            app: "hr".into(),
            recipients: 1,
            domain: None,
        }];
        let rows = receivers_of_rows(&trace, &Receivers::builtin(), &HashMap::new());
        assert_eq!(rows, [None]);
        let shaping: ShapingConfig = "".parse().unwrap();
        let reports = judge_receivers(
            &Receivers::builtin(),
            (&rows, &HashMap::new()),
            &trace,
            &[],
            &shaping,
            |_| 0.0,
            u64::from,
        );
        assert!(reports.is_empty());
        assert_eq!(to_text(&reports, 0.0), "");
    }
}
