//! The demo's closing summary: per app what was offered, accepted, lost,
//! delivered and held, the burst's replies, and the budgets as the service
//! saw them at the end.

use super::*;

pub(super) fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// How the run ended, for the summary.
pub(super) struct Ending<'a> {
    /// The gateway's shaping, as the service runs it.
    pub(super) shaping: &'a ShapingConfig,
    pub(super) scale: f64,
    pub(super) metrics_url: &'a str,
    /// Demo time of a Ctrl-C, when the run was cut short.
    pub(super) stopped_at: Option<f64>,
    /// When everything queued at the end waited for a volume budget: the
    /// budgets with no room left for bulk mail.
    pub(super) held_by: Option<Vec<&'static str>>,
}

/// `seconds` as a configuration writes it ("4d", "15m").
pub(super) fn duration_text(seconds: u64) -> String {
    match seconds {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub(super) fn summary(
    shared: &Shared,
    arrivals: &[gateway::Arrival],
    view: &GatewayView,
    ending: &Ending<'_>,
) -> String {
    let scale = ending.scale;
    let mut text = match ending.stopped_at {
        Some(at) => format!("\nsmtp-shaper demo: summary so far (stopped at t = {at:.0}s)\n\n"),
        None => String::from("\nsmtp-shaper demo: summary\n\n"),
    };
    let _ = writeln!(
        text,
        "  {:<11} {:>8} {:>9} {:>5} {:>10} {:>5} {:>10} {:>10}",
        "app", "messages", "accepted", "lost", "delivered", "held", "p50 delay", "p99 delay"
    );
    let delivered_by = |app: &str| -> Vec<f64> {
        arrivals
            .iter()
            .filter(|a| a.app == app)
            .map(|a| a.delay / scale)
            .collect()
    };
    for (index, app) in APPS.iter().enumerate() {
        let delays = delivered_by(app);
        let c = &shared.apps[index];
        let _ = writeln!(
            text,
            "  {:<11} {:>8} {:>9} {:>5} {:>10} {:>5} {:>9.1}s {:>9.1}s",
            app,
            AppCounts::get(&c.messages),
            AppCounts::get(&c.accepted),
            c.lost(),
            delays.len(),
            view.lanes.get(index).copied().unwrap_or(0),
            percentile(delays.clone(), 0.5),
            percentile(delays, 0.99),
        );
    }
    let _ = writeln!(
        text,
        "  (delays: of the delivered messages; held: in the service's spool at the end)\n"
    );
    let accepted = shared.total(|c| &c.accepted);
    let (refused, failed) = (shared.total(|c| &c.refused), shared.total(|c| &c.failed));
    let delivered = arrivals.len() as u64;
    let held = view.queued as u64;
    let deferrals: u64 = view.model.deferrals.iter().sum();
    let lost = refused + failed;
    if lost == 0 {
        let _ = writeln!(
            text,
            "  lost 0: nothing was refused (the service counted {deferrals} deferrals). These apps send each\n  message once, as Python's smtplib, Jakarta Mail or .NET's SmtpClient do: a 4xx would have lost it."
        );
    } else {
        let _ = writeln!(
            text,
            "  lost {lost}: {refused} answered 4xx/5xx (the service counted {deferrals} deferrals), {failed} without\n  an answer. These apps send each message once: what is not accepted is lost."
        );
    }
    burst_lines(&mut text, shared, ending.stopped_at.is_some());
    let budget_held = shared.total(|c| &c.budget_held);
    if ending.stopped_at.is_some() {
        let _ = writeln!(
            text,
            "  accepted {accepted}, delivered {delivered}, {held} in the spool when you stopped it (a real\n  service delivers its spool after the next start; the demo removes its own)."
        );
    } else {
        let sum = if accepted == delivered + held {
            "="
        } else {
            "but"
        };
        let _ = writeln!(
            text,
            "  accepted {accepted} {sum} delivered {delivered} + held {held} in the spool at the end."
        );
        match &ending.held_by {
            Some(budgets) if held > 0 => {
                let _ = writeln!(
                    text,
                    "  The {held} held wait for room for bulk mail in the {} budget ({budget_held} were told so by\n  their 250). The service releases them as the real hour's and day's windows move on, if it\n  kept running: the demo ends here and removes its temporary spool.",
                    budgets.join(" and ")
                );
            }
            Some(_) => {}
            None => {
                let _ = writeln!(
                    text,
                    "  The run's time was up with mail no budget holds still queued ({budget_held} were told by\n  their 250 that a volume budget holds them); the demo removes its temporary spool."
                );
            }
        }
    }
    let alerts = &shared.apps[ALERTS];
    let alert_delays = delivered_by(APPS[ALERTS]);
    if AppCounts::get(&alerts.budget_held) == 0 && view.lanes.get(ALERTS) == Some(&0) {
        let _ = writeln!(
            text,
            "  alerts were never held: {} delivered, the slowest in {:.1}s.",
            alert_delays.len(),
            alert_delays.iter().copied().fold(0.0, f64::max)
        );
    }
    budget_lines(&mut text, view, ending.shaping);
    // The most the gateway received in any one (demo) second.
    let mut per_second = std::collections::HashMap::<u64, u64>::new();
    for arrival in arrivals {
        *per_second.entry((arrival.at / scale) as u64).or_default() += 1;
    }
    let peak = per_second.values().copied().max().unwrap_or(0);
    let _ = writeln!(
        text,
        "  the gateway received at most {peak} messages in any second; the ceiling was {:.1}/s (+ burst {}).",
        view.model.ceiling * scale,
        ending.shaping.burst
    );
    let _ = writeln!(
        text,
        "\n  Try it for real: smtp-shaper run   (or cargo run --release -- run)\n  on its embedded default: listens on 127.0.0.1:2525, spools to ./smtp-shaper-spool,\n  relays to an SMTP server on 127.0.0.1:25; config/smtp-shaper.toml documents every key.\n  Metrics were at {} (grafana/ has the dashboard and alert rules).",
        ending.metrics_url
    );
    text
}

/// What the burst's answers were.
pub(super) fn burst_lines(text: &mut String, shared: &Shared, stopped: bool) {
    let burst = &shared.burst;
    let accepted = AppCounts::get(&burst.accepted);
    match shared.burst_done() {
        Some(done) => {
            let _ = writeln!(
                text,
                "  the burst: {accepted} of {BURST_MESSAGES} accepted at once, the last 250 {:.1}s after it began.",
                done - BURST_AT
            );
        }
        None if stopped && accepted > 0 => {
            let _ = writeln!(
                text,
                "  the burst: {accepted} of {BURST_MESSAGES} accepted when you stopped it."
            );
        }
        None => return,
    }
    let waits = AppCounts::get(&burst.waits);
    if let Some((_, reply)) = burst.longest.lock_recovered().as_ref() {
        let _ = writeln!(
            text,
            "  {waits} of its 250s said when the message leaves; the longest wait:\n    {reply}"
        );
    }
}

/// The volume budgets at the end, and the shaping they come from.
pub(super) fn budget_lines(text: &mut String, view: &GatewayView, shaping: &ShapingConfig) {
    for budget in &view.model.budgets {
        let name = horizon_name(budget.horizon);
        let floor = shaping.min_volume[budget.horizon as usize].unwrap_or(0);
        let unit = match budget.horizon {
            crate::shaper::Horizon::Hour => "h",
            crate::shaper::Horizon::Day => "day",
        };
        let allowance = if budget.allowance == floor {
            format!("{floor} (the {floor}/{unit} floor: no history yet)")
        } else {
            format!("{} (the floor is {floor}/{unit})", budget.allowance)
        };
        let _ = writeln!(
            text,
            "  {name} budget: {} sent of {allowance}; bulk mail may use {} of it.",
            budget.sent,
            budget.allowance.saturating_sub(budget.transactional_room)
        );
    }
    let _ = writeln!(
        text,
        "  shaped as shipped: warmup {}x/day, max_queue_delay {} (the defaults); the floors are the demo's.",
        shaping.warmup,
        duration_text(shaping.max_queue_delay.as_secs())
    );
}
