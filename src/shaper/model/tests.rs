//! The model on a fake clock.

use super::*;

fn shaping(extra: &str) -> ShapingConfig {
    extra.parse().unwrap()
}

/// One message of a transactional app with `ahead` messages (and units)
/// before it, out of `queued`, that waits up to the gateway's
/// `max_queue_delay`.
fn offer(model: &GatewayModel, ahead: usize, queued: usize, queued_units: u64) -> Offer {
    Offer {
        max_delay: model.max_queue_delay().as_secs_f64(),
        ahead,
        ahead_units: ahead as u64,
        queued_messages: queued,
        queued_units,
        units: 1,
        class: AppClass::Transactional,
        fingerprint: ahead as u64,
        receivers: Vec::new(),
    }
}

/// Offers `demand` messages per second for `seconds`, sending whatever
/// the model allows; returns the send times.
fn run(model: &mut GatewayModel, start: f64, seconds: f64, demand: f64) -> Vec<f64> {
    run_steps(model, start, seconds, demand, 0.01)
}

fn run_steps(
    model: &mut GatewayModel,
    start: f64,
    seconds: f64,
    demand: f64,
    step: f64,
) -> Vec<f64> {
    let mut sent = Vec::new();
    let mut queued = 0.0;
    let mut now = start;
    while now < start + seconds {
        queued += demand * step;
        while queued >= 1.0 {
            match model.try_send(now, 1, AppClass::Transactional, None) {
                Decision::Send => {
                    sent.push(now);
                    queued -= 1.0;
                }
                Decision::Save => {
                    let reserve = model.reserve();
                    model.snapshot(now, reserve);
                    model.saved(reserve);
                }
                Decision::Wait(_) | Decision::WaitReceiver(_) => break,
            }
        }
        now += step;
    }
    sent
}

#[test]
fn the_ceiling_is_the_clamped_baseline_times_headroom() {
    let model = GatewayModel::new(
        &shaping("initial_rate = \"60/min\"\nheadroom = 3.0\nmax_rate = \"120/min\""),
        0.0,
    );
    assert_eq!(model.ceiling(), 2.0, "3/s clamped to max_rate");
    let model = GatewayModel::new(
        &shaping("initial_rate = \"1/min\"\nmin_rate = \"10/min\""),
        0.0,
    );
    assert!((model.ceiling() - 10.0 / 60.0).abs() < 1e-9);
}

#[test]
fn under_the_ceiling_nothing_waits() {
    let mut model = GatewayModel::new(&shaping("initial_rate = \"60/min\""), 0.0);
    let mut now = 10.0;
    for _ in 0..1_000 {
        assert_eq!(
            model.try_send(now, 1, AppClass::Transactional, None),
            Decision::Send,
            "at {now}"
        );
        now += 1.0;
    }
}

#[test]
fn a_burst_from_idle_is_released_at_the_ceiling_and_warms_up_by_day() {
    let config =
        shaping("initial_rate = \"60/min\"\nheadroom = 2.0\nwarmup = \"2x/day\"\nburst = 5");
    let mut model = GatewayModel::new(&config, 0.0);
    let sent = run(&mut model, 1_000.0, 600.0, 100.0);
    for (index, start) in sent.iter().enumerate() {
        let in_second = sent[index..]
            .iter()
            .take_while(|t| **t < start + 1.0)
            .count();
        assert!(in_second <= 2 + 5, "{in_second} in the second from {start}");
    }
    // Backlogged for ten minutes: about 2/s, a little more as it warms.
    assert!((1_190..=1_215).contains(&sent.len()), "{}", sent.len());
    // A day of backlog doubles the baseline (and so the ceiling).
    let mut model = GatewayModel::new(&config, 0.0);
    run_steps(&mut model, 0.0, DAY, 100.0, 0.1);
    let view = model.view(DAY);
    assert!((view.baseline - 2.0).abs() < 0.05, "{view:?}");
    assert!((view.ceiling - 4.0).abs() < 0.1, "{view:?}");
}

#[test]
fn the_baseline_holds_its_peak_and_fades_slowly_when_quiet() {
    let config =
        shaping("initial_rate = \"6/min\"\nmin_rate = \"1/min\"\nbaseline_half_life = \"7d\"");
    let mut model = GatewayModel::new(&config, 0.0);
    run(&mut model, 0.0, 3_600.0, 0.05);
    let learned = model.view(3_600.0).baseline;
    assert!(
        (0.099..=0.1).contains(&learned),
        "an hour fades 0.4%: {learned}"
    );
    let later = model.view(3_600.0 + 7.0 * DAY).baseline;
    assert!((later - learned / 2.0).abs() < 0.001, "{later}");
}

#[test]
fn caps_hold_across_a_crash_thanks_to_the_reserve() {
    let config =
        shaping("initial_rate = \"100/s\"\nmax_rate = \"100/s\"\nlimits = [\"30/min\", \"100/h\"]");
    let mut model = GatewayModel::new(&config, 0.0);
    let sent = run(&mut model, 0.0, 120.0, 10.0);
    assert_eq!(sent.len(), 60, "30 per minute");
    // Saved after 10 more sends, then "crashed" and restored.
    let more = run(&mut model, 120.0, 20.0, 10.0);
    let state = model.snapshot(140.0, model.reserve());
    let mut restored = GatewayModel::restore(&config, &state, 141.0);
    // Until the hour's first sends leave the window (at 3,660 s).
    let after = run(&mut restored, 141.0, 3_400.0, 10.0);
    assert_eq!(
        sent.len() + more.len() + after.len(),
        100 - 1,
        "the reserve is counted as sent"
    );
}

#[test]
fn a_message_counting_more_than_the_reserve_is_saved_for_and_sent() {
    let config = shaping("count = \"recipients\"\nlimits = [\"30/min\"]");
    let mut model = GatewayModel::new(&config, 0.0);
    assert_eq!(
        model.try_send(10.0, 3, AppClass::Transactional, None),
        Decision::Save
    );
    let reserve = model.reserve();
    assert_eq!(
        reserve, 3,
        "a 30/min cap saves 1 ahead, this message needs 3"
    );
    model.snapshot(10.0, reserve);
    model.saved(reserve);
    assert_eq!(
        model.try_send(10.0, 3, AppClass::Transactional, None),
        Decision::Send
    );
}

#[test]
fn a_message_bigger_than_the_budgets_let_through_is_split_by_the_client() {
    let config = shaping("count = \"recipients\"\nmin_rate = [\"10/min\", \"20/h\"]");
    let mut model = GatewayModel::new(&config, 0.0);
    let mut offer = offer(&model, 0, 0, 0);
    offer.units = 20;
    assert!(
        model.admit(0.0, &offer).is_ok(),
        "20 fit an empty hour of 20"
    );
    offer.units = 21;
    let deferral = model.admit(0.0, &offer).unwrap_err();
    assert_eq!(deferral.reason, DeferReason::Recipients);
    // Bulk mail leaves a tenth to the transactional apps.
    offer.units = 19;
    offer.class = AppClass::Bulk;
    assert_eq!(
        model.admit(0.0, &offer).unwrap_err().reason,
        DeferReason::Recipients
    );
}

#[test]
fn admission_defers_beyond_the_projected_wait() {
    let config = shaping(
        "initial_rate = \"30/min\"\nheadroom = 2.0\nmax_queue_delay = \"10m\"\nmax_queued = 5000",
    );
    let mut model = GatewayModel::new(&config, 0.0);
    // Ceiling 1/s: 599 queued means the next waits 600 s, which is allowed.
    assert!(model.admit(0.0, &offer(&model, 599, 599, 599)).is_ok());
    let deferral = model.admit(0.0, &offer(&model, 700, 700, 700)).unwrap_err();
    assert_eq!(deferral.reason, DeferReason::QueueDelay);
    assert!((deferral.retry_after - 101.0).abs() < 1e-6);
    assert_eq!(
        model
            .admit(0.0, &offer(&model, 10, 5_000, 5_000))
            .unwrap_err()
            .reason,
        DeferReason::QueueFull
    );
    let config = shaping("limits = [\"100/day\"]\nmax_queue_delay = \"1h\"");
    let mut model = GatewayModel::new(&config, 0.0);
    assert_eq!(
        model
            .admit(0.0, &offer(&model, 100, 100, 100))
            .unwrap_err()
            .reason,
        DeferReason::Cap
    );
    assert_eq!(model.view(0.0).deferrals, [0, 0, 1, 0, 0, 0, 0, 0]);
}

#[test]
fn waiting_for_room_is_held_up_to_the_apps_own_bound() {
    // A gateway with no history and the shipped floors: 300 a day.
    let config = shaping("min_rate = [\"10/min\", \"60/h\", \"300/day\"]");
    let mut model = GatewayModel::new(&config, 0.0);
    let mut thousandth = offer(&model, 999, 999, 999);
    let projection = model.admit(0.0, &thousandth).expect("held, not refused");
    assert_eq!(projection.reason, DeferReason::DayBudget);
    assert!(
        projection.wait > DAY && projection.wait < 4.0 * DAY,
        "the thousandth message leaves in days, not never: {}",
        projection.wait
    );
    assert_eq!(model.view(0.0).deferrals, [0; 8], "nothing refused");
    // An app that keeps its own backlog (an MTA) says so with a short
    // bound, and hears 451 for the same wait.
    thousandth.max_delay = 900.0;
    let deferral = model.admit(0.0, &thousandth).unwrap_err();
    assert_eq!(deferral.reason, DeferReason::DayBudget);
    assert_eq!(deferral.projected_wait, projection.wait);
    // Mail with nothing ahead leaves at once.
    let first = model.admit(0.0, &offer(&model, 0, 0, 0)).unwrap();
    assert!(first.wait <= 1.0, "{first:?}");
}

#[test]
fn a_used_up_quota_holds_for_the_longest_window() {
    let mut model = GatewayModel::new(&shaping("limits = [\"30/min\", \"10000/day\"]"), 0.0);
    assert_eq!(model.quota_exhausted(100.0), DAY);
    assert!(
        matches!(model.try_send(200.0, 1, AppClass::Transactional, None), Decision::Wait(wait) if (wait - (DAY - 100.0)).abs() < 1e-6)
    );
    let mut uncapped = GatewayModel::new(&shaping(""), 0.0);
    assert_eq!(uncapped.quota_exhausted(0.0), 3_600.0);
}

#[test]
fn throttling_cuts_once_per_episode_floors_and_recovers_within_backoff_recovery() {
    let config = shaping(
        "initial_rate = \"60/min\"\nmin_rate = \"15/min\"\nheadroom = 1.0\nbackoff_factor = 0.5\nbackoff_pause = \"1m\"\nbackoff_recovery = \"1h\"",
    );
    let mut model = GatewayModel::new(&config, 0.0);
    assert!(model.throttled(100.0));
    assert!(!model.throttled(110.0), "within the pause");
    assert_eq!(model.view(110.0).penalty, 0.5);
    assert!(
        matches!(model.try_send(120.0, 1, AppClass::Transactional, None), Decision::Wait(wait) if (wait - 40.0).abs() < 1e-9)
    );
    assert_eq!(model.take_changes()[0].cause, Cause::Throttled);
    // After the pause, before the gateway accepted: paused again, no cut.
    assert!(!model.throttled(170.0));
    assert_eq!(model.view(170.0).penalty, 0.5);
    assert!(model.view(170.0).paused_for > 59.0);
    assert_eq!(model.view(200.0).penalty_phase, PenaltyPhase::Throttled);
    // Accepted during the pause: the episode goes on.
    model.gateway_accepted(200.0);
    assert_eq!(model.view(200.0).penalty_phase, PenaltyPhase::Throttled);
    model.gateway_accepted(240.0);
    assert_eq!(model.view(240.0).penalty_phase, PenaltyPhase::Recovering);
    // A new episode cuts again, but never under min_rate (15 of 60).
    for at in [300.0, 400.0, 500.0] {
        model.throttled(at);
        model.gateway_accepted(at + 61.0);
    }
    let floored = model.view(561.0);
    assert!(floored.penalty >= 0.25 - 1e-9, "{}", floored.penalty);
    assert!((floored.ceiling - 0.25).abs() < 1e-3, "{}", floored.ceiling);
    // Back to the whole ceiling within backoff_recovery of the last
    // acceptance, and halfway (log-linearly) at half of it.
    let half = model.view(561.0 + 1_800.0).penalty;
    assert!((half - 0.5).abs() < 0.01, "{half}");
    let back = model.view(561.0 + 3_600.0);
    assert_eq!(back.penalty, 1.0);
    assert_eq!(back.penalty_phase, PenaltyPhase::Calm);
}

#[test]
fn on_its_share_a_node_sends_a_share_of_every_limit() {
    let config = shaping(
        "initial_rate = \"60/min\"\nmin_rate = [\"60/min\", \"100/h\"]\nheadroom = 1.0\nburst = 1\nlimits = [\"40/h\"]\nmax_queue_delay = \"7d\"",
    );
    let mut alone = GatewayModel::new(&config, 0.0);
    let mut shared = GatewayModel::new(&config, 0.0);
    shared.set_share(0.0, 4);
    assert!((shared.enforced_rate() - 0.25).abs() < 1e-9);
    let sent_alone = run(&mut alone, 0.0, 600.0, 5.0).len();
    let sent_shared = run(&mut shared, 0.0, 600.0, 5.0).len();
    assert_eq!(sent_alone, 40, "the 40/h cap binds");
    assert_eq!(sent_shared, 10, "a quarter of the cap");
    // Back on the whole gateway: its own sends count once again, the
    // ones made on its share stay counted four times.
    shared.set_share(700.0, 1);
    assert_eq!(run(&mut shared, 700.0, 600.0, 5.0).len(), 0);
}

#[test]
fn what_others_sent_counts_in_caps_budgets_and_the_learned_rate() {
    let config = shaping(
        "initial_rate = \"60/min\"\nmin_rate = [\"60/min\", \"100/h\"]\nheadroom = 1.0\nburst = 100\nmax_queue_delay = \"7d\"",
    );
    let mut model = GatewayModel::new(&config, 0.0);
    let before = model.view(1.0).send_rate;
    model.sent_elsewhere(
        1.0,
        &Elsewhere {
            messages: 90,
            all: 90,
            transactional: 30,
            ..Elsewhere::default()
        },
    );
    let view = model.view(2.0);
    assert!(view.send_rate > before + 1.0, "{view:?}");
    assert_eq!(view.budgets[0].sent, 90);
    assert_eq!(run(&mut model, 2.0, 60.0, 50.0).len(), 10, "100/h less 90");
}

#[test]
fn a_refunded_send_gives_its_room_back() {
    let config = shaping(
        "initial_rate = \"60/min\"\nmin_rate = [\"60/min\", \"10/h\"]\nburst = 100\nlimits = [\"5/min\"]\nmax_queue_delay = \"7d\"",
    );
    let mut model = GatewayModel::new(&config, 0.0);
    let sent = run(&mut model, 0.0, 10.0, 100.0);
    assert_eq!(sent.len(), 5);
    assert!(matches!(
        model.try_send(10.0, 1, AppClass::Transactional, None),
        Decision::Wait(_)
    ));
    model.refund(sent[4], 1, AppClass::Transactional, None);
    assert_eq!(model.view(10.0).budgets[0].sent, 4);
    let reserve = model.reserve();
    model.snapshot(10.0, reserve);
    model.saved(reserve);
    assert_eq!(
        model.try_send(10.0, 1, AppClass::Transactional, None),
        Decision::Send
    );
    assert_eq!(model.view(10.0).budgets[0].sent, 5);
}

#[test]
fn a_pause_another_node_heard_holds_this_one_too() {
    let config = shaping("initial_rate = \"60/min\"\nburst = 10\nbackoff_factor = 0.5");
    let mut model = GatewayModel::new(&config, 0.0);
    let ceiling = model.ceiling();
    model.shared_feedback(
        10.0,
        &SharedFeedback {
            penalty: 0.5,
            pause_left: 30.0,
        },
    );
    assert!(matches!(
        model.try_send(10.0, 1, AppClass::Transactional, None),
        Decision::Wait(wait) if (wait - 30.0).abs() < 1e-6
    ));
    assert!((model.ceiling() / (ceiling * 0.5) - 1.0).abs() < 1e-3);
    // A later reading of the same episode cuts nothing more.
    model.shared_feedback(
        20.0,
        &SharedFeedback {
            penalty: 0.5,
            pause_left: 20.0,
        },
    );
    assert!((model.ceiling() / (ceiling * 0.5) - 1.0).abs() < 1e-3);
}

#[test]
fn a_refund_gives_back_what_the_send_counted_whatever_the_share_now() {
    let config = shaping(
        "initial_rate = \"60/min\"\nmin_rate = [\"60/min\", \"100/h\"]\nburst = 10\nmax_queue_delay = \"7d\"",
    );
    let mut model = GatewayModel::new(&config, 0.0);
    let sent = run(&mut model, 0.0, 10.0, 1.0);
    assert!(!sent.is_empty());
    let counted = model.counted(1);
    assert_eq!(model.view(10.0).budgets[0].sent, sent.len() as u64);
    // Redis is lost while the send is proposed: the share becomes 3.
    model.set_share(10.0, 3);
    assert_eq!(model.counted(1), 3);
    model.refund(
        *sent.last().unwrap(),
        counted,
        AppClass::Transactional,
        None,
    );
    assert_eq!(model.view(10.0).budgets[0].sent, sent.len() as u64 - 1);
}

/// One try at `now`, saving when asked (as the live queue does).
fn try_now(model: &mut GatewayModel, now: f64) -> Decision {
    loop {
        match model.try_send(now, 1, AppClass::Transactional, None) {
            Decision::Save => {
                let reserve = model.reserve();
                model.snapshot(now, reserve);
                model.saved(reserve);
            }
            other => return other,
        }
    }
}

#[test]
fn observing_relays_past_the_ceiling_and_budgets_the_caps_still_hold_and_observe_until_enforces() {
    let config = shaping(
        "initial_rate = \"60/min\"\nmin_rate = [\"60/min\", \"10/h\"]\nmax_rate = \"60/min\"\nheadroom = 1.0\nburst = 1\nlimits = [\"30/min\"]\nmode = \"observe\"\nobserve_until = \"2h\"",
    );
    let mut model = GatewayModel::new(&config, 0.0);
    assert_eq!(model.view(0.0).mode, ShapingMode::Observe);
    // 40 at once: past the ceiling (1/s, burst 1) and the hour's 10, all
    // sent but for the cap of 30 a minute.
    let sent = (0..40)
        .filter(|_| try_now(&mut model, 10.0) == Decision::Send)
        .count();
    assert_eq!(sent, 30, "the cap holds; the ceiling and the budget do not");
    let budgets = model.view(10.0).budgets;
    assert!(
        budgets[0].sent > budgets[0].allowance,
        "shown as in enforce"
    );
    // Admission sees only the cap (the hour's budget is long past).
    let projection = model.projection(10.0, 0, 0, AppClass::Transactional);
    assert_eq!(projection.reason, DeferReason::Cap, "{projection:?}");
    assert!(projection.wait <= 62.0, "{projection:?}");
    // Two hours of history later, enforcing by itself.
    model.update(2.0 * 3_600.0 + 60.0);
    let view = model.view(2.0 * 3_600.0 + 60.0);
    assert_eq!(view.mode, ShapingMode::Enforce);
    assert!(!model.observing());
}

/// A restart keeps the throttling penalty where it stood: an episode stays
/// open until the gateway accepts, and a recovery keeps its ramp, so the
/// ceiling is back within `backoff_recovery` of the acceptance, restart or
/// not.
#[test]
fn a_restart_keeps_the_penalty_s_episode_and_its_recovery_ramp() {
    let config =
        shaping("initial_rate = \"60/min\"\nbackoff_factor = 0.5\nbackoff_recovery = \"1h\"");
    let mut episode = GatewayModel::new(&config, 0.0);
    assert!(episode.throttled(10.0));
    let saved = episode.snapshot(20.0, 0);
    let mut restored = GatewayModel::restore(&config, &saved, 3_620.0);
    assert_eq!(restored.view(3_620.0).penalty, 0.5, "nothing accepted yet");
    assert!(
        !restored.throttled(3_630.0),
        "the same episode: no second cut"
    );
    restored.gateway_accepted(3_700.0);
    assert!(restored.view(3_700.0 + 1_800.0).penalty < 1.0);
    assert_eq!(restored.view(3_700.0 + 3_600.0).penalty, 1.0);

    let mut running = GatewayModel::new(&config, 0.0);
    assert!(running.throttled(10.0));
    running.gateway_accepted(100.0);
    let saved = running.snapshot(1_900.0, 0);
    let mut restarted = GatewayModel::restore(&config, &saved, 2_000.0);
    for at in [2_000.0, 3_000.0, 3_699.0, 3_700.0] {
        let (kept, never) = (restarted.view(at).penalty, running.view(at).penalty);
        assert!((kept - never).abs() < 1e-9, "at {at}: {kept} vs {never}");
    }
    assert_eq!(
        restarted.view(3_700.0).penalty,
        1.0,
        "back within 1h of the acceptance"
    );
}
