//! The gate's transitions on a fake clock, with made-up answers of the
//! store.

use super::*;
use crate::shaper::shared::{Busiest, Units};
use crate::shaper::shared::{Elsewhere, NodesSeen};
use crate::shaper::store::Reading;
use crate::shaper::{GatewayModel, Lane, Release, ShapingConfig};

const DAY: f64 = 86_400.0;

/// Lane 0 transactional, lane 1 bulk, at 10 messages a second.
fn scheduler() -> Scheduler<&'static str> {
    scheduler_with("")
}

/// As [`scheduler`], with hour and day budgets: the built-in receivers
/// are budgeted (google is 0, microsoft 1).
fn budgeted() -> Scheduler<&'static str> {
    scheduler_with("min_rate = [\"10/min\", \"1000/h\", \"10000/day\"]")
}

fn scheduler_with(extra: &str) -> Scheduler<&'static str> {
    let shaping: ShapingConfig =
        format!("initial_rate = \"10/s\"\nmax_rate = \"10/s\"\nburst = 10\n{extra}")
            .parse()
            .unwrap();
    let lane = |class| Lane {
        weight: 1,
        class,
        max_queue_delay: None,
        expire_after: None,
    };
    Scheduler::new(
        GatewayModel::new(&shaping, 0.0),
        vec![lane(AppClass::Transactional), lane(AppClass::Bulk)],
    )
}

fn beat(live: u64) -> Heartbeat {
    Heartbeat {
        live,
        queued_elsewhere: ClassCounts {
            messages: [2, 3],
            units: [4, 9],
        },
        busiest_elsewhere: Busiest::default(),
        reading: Reading {
            feedback: SharedFeedback {
                penalty: 1.0,
                pause_left: 0.0,
            },
            held: false,
            elsewhere: Elsewhere::default(),
        },
    }
}

/// A refusal of the shared state: wait `wait` seconds for `reason`.
fn refusal(wait: f64, reason: &str) -> Verdict {
    Verdict {
        granted: false,
        wait,
        reason: reason.to_string(),
        reading: beat(1).reading,
    }
}

/// A gate of three expected nodes that reached the shared state at `now`.
fn connected(scheduler: &mut Scheduler<&'static str>, now: f64) -> Gate {
    let mut gate = Gate::new(scheduler, now, 3);
    gate.hear(scheduler, now, &beat(3), false, false);
    assert!(gate.reached(scheduler, now), "news");
    gate
}

#[test]
fn nothing_goes_before_the_first_verdict_and_a_lost_state_means_the_share() {
    let mut scheduler = budgeted();
    let mut gate = Gate::new(&mut scheduler, 0.0, 3);
    assert!(!gate.decided() && !gate.is_connected());
    assert_eq!(gate.share_of(0.0), 3);
    assert!(gate.lost(&mut scheduler, 1.0), "the first verdict is news");
    assert!(!gate.lost(&mut scheduler, 2.0), "logged once");
    assert!(gate.decided() && !gate.is_connected());
    assert_eq!(
        gate.route(&mut scheduler, 120.0, (0, Some(0)), 2),
        Route::Release
    );
    assert_eq!(
        gate.route(&mut scheduler, 130.0, (1, None), 3),
        Route::Release
    );
    assert_eq!(
        gate.ledger().total(),
        Elsewhere {
            messages: 2,
            all: 5,
            transactional: 2,
            receivers: [(
                "google".to_string(),
                Units {
                    all: 2,
                    transactional: 2
                }
            )]
            .into(),
        },
        "sends on the share are in the ledger, with their receiver by name"
    );
}

#[test]
fn connected_every_send_is_proposed_with_its_class_and_the_models_limits() {
    let mut scheduler = budgeted();
    let mut gate = connected(&mut scheduler, 0.0);
    assert!(!gate.reached(&mut scheduler, 1.0), "no news");
    let Route::Propose(proposal) = gate.route(&mut scheduler, 1.0, (1, Some(1)), 4) else {
        panic!("proposed");
    };
    assert_eq!(proposal.units, 4);
    assert_eq!(proposal.class, AppClass::Bulk);
    assert_eq!(proposal.limits, scheduler.model_mut().shared_limits(1.0));
    let receiver = proposal.receiver.expect("a budgeted receiver");
    assert_eq!(receiver.name, "microsoft");
    assert!(receiver.enforced, "no history before: held at once");
    assert_eq!(
        receiver.budgets,
        scheduler
            .model_mut()
            .shared_receiver(1.0, Some(1))
            .unwrap()
            .budgets
    );
    let Route::Propose(proposal) = gate.route(&mut scheduler, 1.0, (0, None), 1) else {
        panic!("proposed");
    };
    assert_eq!(proposal.receiver, None, "not budgeted");
    assert!(gate.ledger().is_empty());
}

#[test]
fn a_refusal_holds_the_node_but_a_refused_bulk_message_only_the_bulk_lanes() {
    let mut scheduler = scheduler();
    let mut gate = connected(&mut scheduler, 0.0);
    assert_eq!(
        gate.refused(
            &mut scheduler,
            10.0,
            (AppClass::Bulk, None),
            &refusal(5.0, "1h")
        ),
        None
    );
    assert_eq!(gate.waits_until(10.0), None, "transactional mail goes on");
    scheduler.push(10.0, 1, None, 1, "bulk");
    scheduler.push(10.0, 0, None, 1, "transactional");
    let Release::Send { item, .. } = scheduler.next(10.0) else {
        panic!("the transactional lane goes on");
    };
    assert_eq!(item, "transactional");
    assert!(
        !matches!(scheduler.next(10.0), Release::Send { .. }),
        "bulk waits"
    );
    assert!(matches!(scheduler.next(15.0), Release::Send { .. }));

    let refused = (AppClass::Transactional, Some(0));
    let until = gate.refused(&mut scheduler, 20.0, refused, &refusal(2.5, "rate"));
    assert_eq!(until, Some(22.5));
    assert_eq!(gate.waits_until(21.0), Some(22.5));
    assert_eq!(gate.waits_until(22.5), None, "over at its end");
    let never_now = gate.refused(&mut scheduler, 30.0, refused, &refusal(0.0, "1h"));
    assert!(never_now > Some(30.0), "strictly later: {never_now:?}");
}

#[test]
fn a_refusal_for_the_receivers_budgets_alone_holds_only_that_receivers_mail() {
    let (google, microsoft) = (Some(0), Some(1));
    let mut scheduler = budgeted();
    let mut gate = connected(&mut scheduler, 0.0);
    // The saved state's reserve covers what the test sends.
    let (_, reserve) = scheduler.snapshot(0.0, true);
    assert!(reserve >= 10, "{reserve}");
    scheduler.model_mut().saved(reserve);
    let verdict = refusal(30.0, "receiver-1h");
    assert!(verdict.holds_the_receiver_only());
    let refused = (AppClass::Transactional, google);
    assert_eq!(gate.refused(&mut scheduler, 10.0, refused, &verdict), None);
    assert_eq!(gate.waits_until(10.0), None, "the node is not held");
    scheduler.push(10.0, 0, google, 1, "gmail");
    scheduler.push(10.0, 1, google, 1, "gmail newsletter");
    scheduler.push(10.0, 0, microsoft, 1, "outlook");
    scheduler.push(10.0, 1, None, 1, "newsletter elsewhere");
    let mut sent = Vec::new();
    while let Release::Send { item, .. } = scheduler.next(11.0) {
        sent.push(item);
    }
    assert_eq!(sent, ["outlook", "newsletter elsewhere"]);
    assert!(matches!(scheduler.next(39.0), Release::Wait(wait) if (wait - 1.0).abs() < 1e-9));
    let Release::Send { item, .. } = scheduler.next(40.0) else {
        panic!("google's hold is over");
    };
    assert_eq!(item, "gmail");

    // Bulk refused for the receiver: its transactional mail goes on.
    let refused = (AppClass::Bulk, microsoft);
    assert_eq!(gate.refused(&mut scheduler, 50.0, refused, &verdict), None);
    scheduler.push(50.0, 1, microsoft, 1, "outlook newsletter");
    scheduler.push(50.0, 0, microsoft, 1, "outlook reset");
    let Release::Send { item, .. } = scheduler.next(51.0) else {
        panic!("transactional goes on");
    };
    assert_eq!(item, "gmail newsletter", "google's bulk is free again");
    let Release::Send { item, .. } = scheduler.next(51.0) else {
        panic!("transactional goes on");
    };
    assert_eq!(item, "outlook reset");
    assert!(matches!(scheduler.next(51.0), Release::Wait(_)));

    // Refused with no receiver to hold: the usual refusal.
    let until = gate.refused(
        &mut scheduler,
        60.0,
        (AppClass::Transactional, None),
        &verdict,
    );
    assert_eq!(until, Some(90.0));
}

#[test]
fn only_three_failed_proposals_in_a_row_mean_the_state_is_lost() {
    let mut scheduler = scheduler();
    let mut gate = connected(&mut scheduler, 0.0);
    assert!(!gate.failed(1.0));
    assert_eq!(gate.waits_until(1.5), Some(1.0 + ACQUIRE_RETRY));
    assert!(!gate.failed(2.0));
    gate.granted();
    assert!(!gate.failed(3.0), "a grant between starts the count again");
    assert!(!gate.failed(4.0));
    assert!(gate.failed(5.0), "the third in a row");
    assert_eq!(gate.failures(), ACQUIRE_FAILURES);
    assert!(gate.lost(&mut scheduler, 5.0), "news: it was connected");
    assert_eq!(gate.waits_until(5.5), None, "on its share at once");
    assert!(gate.reached(&mut scheduler, 6.0));
    assert_eq!(gate.failures(), 0);
}

#[test]
fn the_share_is_never_of_fewer_nodes_than_expected_or_seen_in_the_last_week() {
    let mut scheduler = scheduler();
    let mut gate = connected(&mut scheduler, 0.0);
    gate.hear(&mut scheduler, DAY, &beat(5), false, false);
    assert_eq!(gate.live(), 5);
    gate.hear(&mut scheduler, 2.0 * DAY, &beat(2), false, false);
    assert_eq!(gate.live(), 2);
    assert_eq!(gate.share_of(2.0 * DAY), 5, "five seen a day ago");
    assert_eq!(gate.share_of(8.5 * DAY), 3, "a week later: the expected");
    assert_eq!(
        gate.queued_elsewhere(),
        ClassCounts {
            messages: [2, 3],
            units: [4, 9]
        }
    );
    let mut restarted = Gate::new(&mut scheduler, 3.0 * DAY, 1);
    restarted.restore_seen(gate.seen());
    assert_eq!(restarted.share_of(3.0 * DAY), 5, "saved over a restart");
}

#[test]
fn an_operators_hold_is_written_by_a_heartbeat_and_kept_until_it_is() {
    let mut scheduler = scheduler();
    let mut gate = connected(&mut scheduler, 0.0);
    gate.hold_given(true);
    let writes = gate.hear(&mut scheduler, 1.0, &beat(3), false, true);
    assert_eq!(writes.hold, Some(true));
    assert_eq!(writes.rebuild, None, "no new epoch: nothing to rebuild");
    gate.hold_given(false);
    gate.hold_written(true);
    assert_eq!(
        gate.hold_pending(),
        Some(false),
        "released since: still to be written"
    );
    gate.hold_written(false);
    assert_eq!(gate.hold_pending(), None);
    let writes = gate.hear(&mut scheduler, 2.0, &beat(3), true, true);
    let (_, feedback, held) = writes.rebuild.expect("a rebuild");
    assert!(held);
    assert_eq!(feedback.penalty, 1.0);
}

#[test]
fn the_ledger_goes_to_the_heartbeat_comes_back_if_unwritten_and_over_a_reload() {
    let mut scheduler = scheduler();
    let mut gate = Gate::new(&mut scheduler, 0.0, 3);
    gate.lost(&mut scheduler, 0.0);
    gate.route(&mut scheduler, 60.0, (0, Some(0)), 2);
    let writes = gate.hear(&mut scheduler, 61.0, &beat(4), false, false);
    assert_eq!(writes.ledger.total().messages, 1);
    assert!(gate.ledger().is_empty(), "taken out");
    gate.keep_unreconciled(&writes.ledger);
    assert_eq!(gate.ledger(), &writes.ledger, "back for the next heartbeat");
    gate.hold_given(true);

    let standing = gate.take_standing();
    assert!(gate.ledger().is_empty());
    let mut next = Gate::new(&mut scheduler, 62.0, 3);
    next.carry(standing);
    assert_eq!(next.ledger(), &writes.ledger);
    assert_eq!(next.live(), 4);
    assert_eq!(next.hold_pending(), Some(true));
    assert_eq!(next.seen(), NodesSeen { most: 4, at: 61.0 });
    assert!(
        !next.decided(),
        "a new queue waits for its own first verdict"
    );
}
