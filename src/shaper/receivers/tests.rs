//! Each receiver's own rule, on a fake clock, through the model and the
//! scheduler that the relay and `simulate` drive.

use super::*;
use crate::shaper::model::{Decision, GatewayModel};
use crate::shaper::scheduler::{ClassCounts, Lane, Release, Scheduler};
use crate::shaper::{DeferReason, SavedState};

const HOUR: f64 = 3_600.0;
const DAY: f64 = 86_400.0;
/// A Monday 00:00 UTC, so minutes are whole.
const START: f64 = 1_796_601_600.0;
/// The built-in receivers' indices.
const GOOGLE: Option<usize> = Some(0);
const MICROSOFT: Option<usize> = Some(1);

/// A gateway with the shipped floors (60/h, 300/day for the total; 20/h
/// and 100/day per receiver) and a fast minute, plus `extra`.
fn shaping(extra: &str) -> ShapingConfig {
    let initial = if extra.contains("initial_rate") {
        ""
    } else {
        "initial_rate = \"600/min\"\n"
    };
    format!(
        "{initial}max_rate = \"600/min\"\nburst = 100\n\
         min_rate = [\"10/min\", \"60/h\", \"300/day\"]\n{extra}"
    )
    .parse()
    .unwrap()
}

/// A lane of `class`, one message a turn, the gateway's delays.
fn lane(class: AppClass) -> Lane {
    Lane {
        weight: 1,
        class,
        max_queue_delay: None,
        expire_after: None,
    }
}

/// Sends of `units` to `receiver` at `now` until the model says anything
/// but `Send` (saving whenever it asks); how many went, and what it said.
fn send_all(
    model: &mut GatewayModel,
    now: f64,
    receiver: Option<usize>,
    most: usize,
) -> (usize, Decision) {
    let mut sent = 0;
    loop {
        if sent == most {
            return (sent, Decision::Send);
        }
        match model.try_send(now, 1, AppClass::Transactional, receiver) {
            Decision::Send => sent += 1,
            Decision::Save => {
                let reserve = model.reserve();
                model.snapshot(now, reserve);
                model.saved(reserve);
            }
            other => return (sent, other),
        }
    }
}

#[test]
fn a_receiver_is_held_to_its_own_floor_while_the_others_and_the_total_go_on() {
    let mut model = GatewayModel::new(&shaping(""), START);
    let (sent, decision) = send_all(&mut model, START + 60.0, GOOGLE, 1_000);
    assert_eq!(sent, 20, "google's hour floor");
    assert!(
        matches!(decision, Decision::WaitReceiver(wait) if wait > 0.0 && wait <= 60.0),
        "{decision:?}"
    );
    // Microsoft and the receivers not budgeted have their own room.
    assert_eq!(send_all(&mut model, START + 60.0, MICROSOFT, 15).0, 15);
    assert_eq!(send_all(&mut model, START + 60.0, None, 25).0, 25);
    // The total's hour (60) is full now: everyone waits for the gateway.
    let (sent, decision) = send_all(&mut model, START + 60.0, MICROSOFT, 100);
    assert_eq!(sent, 0);
    assert!(matches!(decision, Decision::Wait(_)), "{decision:?}");
    // Google's day floor (100) holds over the next hours.
    let mut google = 20;
    for hour in 1..10 {
        google += send_all(&mut model, START + 60.0 + hour as f64 * HOUR, GOOGLE, 1_000).0;
    }
    assert_eq!(google, 100, "google's day floor");
    let view = model.view(START + 10.0 * HOUR);
    let google_view = &view.receivers[0];
    assert_eq!(google_view.name, "google");
    assert!(google_view.held);
    assert_eq!(google_view.budgets[1].sent, 100);
    assert_eq!(google_view.budgets[1].allowance, 100);
    // Later hours grow with what google saw: its busiest hour was 40
    // (an hour may send twice the busiest before it, 20), so two days
    // later an hour allows 80 and the day 200.
    let later = START + 60.0 + 2.0 * DAY;
    let (sent, decision) = send_all(&mut model, later, GOOGLE, 1_000);
    assert_eq!((sent, decision), (80, Decision::WaitReceiver(60.0)));
    assert_eq!(model.view(later).receivers[0].budgets[1].allowance, 200);
}

#[test]
fn a_receiver_whose_history_is_not_known_is_counted_and_held_a_week_later() {
    // The operator vouches for the gateway's history, not its split.
    let config = shaping("initial_rate = [\"600/min\", \"2000/h\", \"20000/day\"]");
    let mut model = GatewayModel::new(&config, START);
    let sent: usize = (0..10)
        .map(|step| send_all(&mut model, START + 60.0 + step as f64 * 10.0, GOOGLE, 50).0)
        .sum();
    assert_eq!(sent, 500, "only the total holds");
    let view = model.view(START + 150.0);
    assert!(!view.receivers[0].held);
    assert_eq!(view.receivers[0].held_from, START + 7.0 * DAY);
    assert_eq!(view.receivers[0].budgets[0].sent, 500, "but counted");
    // A week later google's own history holds it: 2 x 500 in an hour
    // allowed only while the 500 are in the week before.
    let later = START + 7.0 * DAY;
    assert!(model.view(later).receivers[0].held);
    let sent: usize = (0..20)
        .map(|step| send_all(&mut model, later + step as f64 * 10.0, GOOGLE, 100).0)
        .sum();
    assert_eq!(sent, 1_000, "2 x its busiest hour, 500");
    let hour = &model.view(later + 200.0).receivers[0].budgets[0];
    assert_eq!((hour.sent, hour.allowance), (1_000, 1_000));
}

#[test]
fn counts_survive_a_restart_and_a_receiver_added_by_reload_starts_unknown() {
    let config = shaping("");
    let mut model = GatewayModel::new(&config, START);
    assert_eq!(send_all(&mut model, START + 60.0, GOOGLE, 15).0, 15);
    let reserve = model.reserve();
    let text = model.snapshot(START + 90.0, reserve).to_text("g").unwrap();
    assert!(text.contains("[receivers.google]"), "{text}");
    let state = SavedState::parse(&text).unwrap();
    // A reload adds a receiver before the built-in ones (it claims its
    // domains first): indices move, names do not.
    let mut reloaded = shaping("");
    reloaded.receivers.insert(
        0,
        crate::shaper::ReceiverRule {
            name: "internal".into(),
            floors: [Some(20), Some(100)],
        },
    );
    let mut model = GatewayModel::restore(&reloaded, &state, START + 120.0);
    let view = model.view(START + 120.0);
    let names: Vec<&str> = view
        .receivers
        .iter()
        .map(|view| view.name.as_str())
        .collect();
    assert_eq!(names, ["internal", "google", "microsoft", "yahoo", "apple"]);
    assert!(
        view.receivers[1].budgets[0].sent >= 15,
        "google's sends are kept (with the reserve)"
    );
    assert!(view.receivers[1].held);
    assert!(
        !view.receivers[0].held,
        "internal's mail was other's until now: its history is not known"
    );
    let (sent, _) = send_all(&mut model, START + 150.0, Some(1), 100);
    assert!(sent <= 5, "google has at most 5 left in its hour: {sent}");
    // (A restored bucket starts part full: some seconds later.)
    assert_eq!(send_all(&mut model, START + 150.0, Some(0), 30).0, 30);
}

#[test]
fn admission_waits_for_the_receivers_of_the_message() {
    let mut model = GatewayModel::new(&shaping(""), START);
    assert_eq!(send_all(&mut model, START + 60.0, GOOGLE, 100).0, 20);
    let mut scheduler: Scheduler<u32> = Scheduler::new(model, vec![lane(AppClass::Transactional)]);
    for id in 0..30 {
        scheduler.push(START + 60.0, 0, GOOGLE, 1, id);
    }
    let none = ClassCounts::default();
    // To google: behind 30 queued to it, with its hour full: hours away.
    let projection = scheduler
        .admit(START + 60.0, 0, 1, (none, &[(0, 1)]), 1)
        .unwrap();
    assert_eq!(projection.reason, DeferReason::ReceiverHourBudget);
    assert!(projection.wait >= HOUR, "{projection:?}");
    // To microsoft: nothing holds it but the minute.
    let projection = scheduler
        .admit(START + 60.0, 0, 1, (none, &[(1, 1)]), 2)
        .unwrap();
    assert!(projection.wait < 60.0, "{projection:?}");
    // Beyond its app's bound, a receiver's budget is a reason to refuse.
    let mut short = shaping("max_queue_delay = \"30m\"");
    short.receivers.truncate(2);
    let mut model = GatewayModel::new(&short, START);
    assert_eq!(send_all(&mut model, START + 60.0, GOOGLE, 100).0, 20);
    let mut scheduler: Scheduler<u32> = Scheduler::new(model, vec![lane(AppClass::Transactional)]);
    let deferral = scheduler
        .admit(START + 60.0, 0, 1, (none, &[(0, 1)]), 3)
        .unwrap_err();
    assert_eq!(deferral.reason, DeferReason::ReceiverHourBudget);
}

#[test]
fn a_full_receiver_never_holds_an_apps_mail_to_the_others() {
    let lanes = vec![lane(AppClass::Transactional), lane(AppClass::Bulk)];
    let mut scheduler: Scheduler<(&str, u32)> =
        Scheduler::new(GatewayModel::new(&shaping(""), START), lanes);
    // An HR app (lane 0) queues 200 to gmail, then its ordinary mail to
    // the company's Microsoft-hosted domain and elsewhere; a bulk app
    // (lane 1) mails gmail too.
    for id in 0..200 {
        scheduler.push(START, 0, GOOGLE, 1, ("hr-gmail", id));
    }
    for id in 0..10 {
        scheduler.push(START + 1.0, 0, MICROSOFT, 1, ("hr-microsoft", id));
        scheduler.push(START + 1.0, 0, None, 1, ("hr-other", id));
        scheduler.push(START + 1.0, 1, GOOGLE, 1, ("news-gmail", id));
    }
    assert_eq!(scheduler.view(START).receivers, [210, 10, 0, 0]);
    let mut sent: Vec<(&str, u32)> = Vec::new();
    let mut now = START + 2.0;
    while now < START + 30.0 * 60.0 {
        match scheduler.next(now) {
            Release::Send { item, .. } => sent.push(item),
            Release::Save => {
                let (_, reserve) = scheduler.snapshot(now, true);
                scheduler.model_mut().saved(reserve);
            }
            // Strictly later, where a wait vanishes in rounding.
            Release::Wait(wait) => now = (now + wait).max(now.next_up()),
            Release::Idle => break,
        }
    }
    let count = |kind: &str| sent.iter().filter(|(name, _)| *name == kind).count();
    assert_eq!(count("hr-microsoft"), 10, "not behind the gmail run");
    assert_eq!(count("hr-other"), 10);
    // Gmail got its hour floor, 20, less what bulk leaves to the others.
    assert_eq!(count("hr-gmail") + count("news-gmail"), 20);
    // Each receiver's mail left in arrival order.
    let gmail: Vec<u32> = sent
        .iter()
        .filter(|(name, _)| *name == "hr-gmail")
        .map(|(_, id)| *id)
        .collect();
    assert!(gmail.windows(2).all(|pair| pair[0] < pair[1]), "{gmail:?}");
    let view = scheduler.view(now);
    assert_eq!(view.receivers[0], 210 - 20);
    // What the held mail waits for is gmail's own budget, for days.
    assert_eq!(view.drain.reason, DeferReason::ReceiverDayBudget);
    assert!(view.drain.wait > DAY, "{:?}", view.drain);
}

#[test]
fn in_cluster_mode_the_others_sends_and_busiest_windows_count_per_receiver() {
    use crate::shaper::shared::{Busiest, Elsewhere, Units};
    let mut model = GatewayModel::new(&shaping(""), START);
    let now = START + 60.0;
    let units = |all| Units {
        all,
        transactional: all,
    };
    model.sent_elsewhere(
        now,
        &Elsewhere {
            messages: 20,
            all: 20,
            transactional: 20,
            receivers: [
                ("google".to_string(), units(15)),
                ("not-here".to_string(), units(5)),
            ]
            .into(),
        },
    );
    let view = model.view(now);
    assert_eq!(view.receivers[0].budgets[0].sent, 15, "google's");
    assert_eq!(view.receivers[1].budgets[0].sent, 0, "not microsoft's");
    assert_eq!(view.budgets[0].sent, 20, "the total's");
    assert_eq!(
        send_all(&mut model, now, GOOGLE, 1_000).0,
        5,
        "google's floor of 20, 15 of it sent elsewhere"
    );
    let shared = model.shared_receiver(now, GOOGLE).expect("budgeted");
    assert_eq!((shared.name.as_str(), shared.enforced), ("google", true));
    assert_eq!(shared.budgets[0].allowance, 20);
    assert_eq!(model.shared_receiver(now, None), None);
    // The windows before the current one: what the others hear of.
    let now = now + 2.0 * HOUR;
    let busiest = model.busiest(now).receivers["google"];
    assert_eq!(busiest[0], 20, "{busiest:?}");

    // A node that joins late allows what each receiver's history with the
    // whole gateway allows: twice the busiest hour the others saw.
    model.learn_busiest(
        now,
        &Busiest {
            total: [1_000, 5_000],
            receivers: [("google".to_string(), [100, 400])].into(),
        },
    );
    let view = model.view(now);
    assert_eq!(view.receivers[0].budgets[0].allowance, 200);
    assert_eq!(view.receivers[0].budgets[1].allowance, 800);
    assert_eq!(
        view.receivers[1].budgets[0].allowance, 20,
        "microsoft's floor"
    );
    assert_eq!(
        model.shared_receiver(now, GOOGLE).unwrap().budgets[0].allowance,
        200
    );
}
