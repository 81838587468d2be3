//! One suite for both stores of the cluster gate (`shaper::store`): the
//! in-memory `MemoryStore` the simulator runs, and Redis with the Lua
//! scripts (`cluster::GatewayLink`, on a real `redis-server` started here).
//! Each case runs on three nodes of a fresh shared state and says what the
//! store contract says (see `shaper::store`); the decisions themselves are
//! also compared proposal by proposal in `cluster.rs`.
//!
//! Redis decides on its own clock and the in-memory store on the `now`
//! given, here the system's clock: waits are compared within the time the
//! calls take, never exactly.

use std::fmt::Display;
use std::sync::Arc;

use smtp_shaper::shaper::shared::{
    Busiest, Ledger, Proposal, SharedBudget, SharedCap, SharedFeedback, SharedLimits,
    SharedReceiver,
};
use smtp_shaper::shaper::store::{MemoryStore, Store};
use smtp_shaper::shaper::volume::MinuteCount;
use smtp_shaper::shaper::{AppClass, Horizon};
use smtp_shaper::shaper::{ClassCounts, WindowCounts};

use crate::support::{Redis, free_address};

/// Slack for the time the calls take (the machine is shared).
const SLACK: f64 = 0.5;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn ok<T, E: Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| panic!("the store failed: {error}"))
}

fn limits(rate: f64, burst: u32, budgets: Vec<SharedBudget>, caps: Vec<SharedCap>) -> SharedLimits {
    SharedLimits {
        rate,
        burst,
        budgets,
        caps,
    }
}

fn hour(allowance: u64, bulk_share: u64) -> SharedBudget {
    SharedBudget {
        horizon: Horizon::Hour,
        allowance,
        bulk_share,
    }
}

fn proposal(units: u64, class: AppClass, limits: &SharedLimits) -> Proposal {
    Proposal {
        units,
        class,
        limits: limits.clone(),
        receiver: None,
    }
}

/// `proposal` to receiver `name`, whose hour allows `allowance` units
/// (`bulk_share` of them bulk).
fn to_receiver(
    name: &str,
    (allowance, bulk_share): (u64, u64),
    units: u64,
    class: AppClass,
    limits: &SharedLimits,
) -> Proposal {
    Proposal {
        receiver: Some(SharedReceiver {
            name: name.to_string(),
            budgets: vec![hour(allowance, bulk_share)],
            enforced: true,
        }),
        ..proposal(units, class, limits)
    }
}

fn wide_open() -> SharedLimits {
    limits(1e6, 1000, Vec::new(), Vec::new())
}

/// Every node says it is alive first, as a node's first heartbeat does:
/// their readings count from here.
async fn meet<S: Store>(stores: &[S]) {
    for store in stores {
        ok(store
            .heartbeat(now(), ClassCounts::default(), &Busiest::default())
            .await);
    }
}

/// A grant counts for every node; the bucket spaces them all; the others
/// hear of it in their next reading, never of their own sends.
async fn the_bucket_spaces_every_node_and_the_others_hear_of_each_send<S: Store>(stores: &[S]) {
    meet(stores).await;
    let bucket = limits(1.0, 2, Vec::new(), Vec::new());
    let tx = proposal(1, AppClass::Transactional, &bucket);
    assert!(ok(stores[0].acquire(now(), &tx).await).granted);
    let verdict = ok(stores[1].acquire(now(), &tx).await);
    assert!(verdict.granted, "{verdict:?}");
    assert_eq!(verdict.reading.elsewhere.messages, 1, "node 0's send");
    let held = ok(stores[0].acquire(now(), &tx).await);
    assert!(!held.granted);
    assert_eq!(held.reason, "rate");
    assert!(held.wait > 0.0 && held.wait <= 1.0, "{held:?}");
    assert_eq!(held.reading.elsewhere.messages, 1, "node 1's, not its own");
    let reading = ok(stores[1].hold(now(), false).await);
    assert!(reading.elsewhere.is_empty(), "a refusal counts nothing");
}

/// Bulk mail leaves the bucket's last token to transactional mail.
async fn bulk_leaves_the_last_token_to_transactional_mail<S: Store>(stores: &[S]) {
    let bucket = limits(1.0, 2, Vec::new(), Vec::new());
    let bulk = proposal(1, AppClass::Bulk, &bucket);
    let tx = proposal(1, AppClass::Transactional, &bucket);
    assert!(ok(stores[0].acquire(now(), &bulk).await).granted);
    assert_eq!(ok(stores[0].acquire(now(), &bulk).await).reason, "rate");
    assert!(ok(stores[1].acquire(now(), &tx).await).granted);
    assert_eq!(ok(stores[1].acquire(now(), &tx).await).reason, "rate");
}

/// The hour budget holds every node together, bulk mail to its share; a
/// cap holds whatever the budget says.
async fn budgets_and_caps_hold_every_node_and_bulk_keeps_to_its_share<S: Store>(stores: &[S]) {
    let budgeted = limits(1e6, 1000, vec![hour(20, 12)], Vec::new());
    let bulk = proposal(4, AppClass::Bulk, &budgeted);
    let tx = proposal(4, AppClass::Transactional, &budgeted);
    for store in stores {
        assert!(ok(store.acquire(now(), &bulk).await).granted);
    }
    let held = ok(stores[0].acquire(now(), &bulk).await);
    assert_eq!(held.reason, "1h", "12 of bulk used: its share");
    assert!(held.wait > 0.0 && held.wait <= 60.0, "{held:?}");
    assert!(ok(stores[1].acquire(now(), &tx).await).granted);
    assert!(ok(stores[2].acquire(now(), &tx).await).granted);
    assert_eq!(
        ok(stores[2].acquire(now(), &tx).await).reason,
        "1h",
        "20 of 20"
    );

    let capped = limits(
        1e6,
        1000,
        Vec::new(),
        vec![SharedCap {
            window: 86_400,
            limit: 50,
        }],
    );
    assert!(
        ok(stores[0]
            .acquire(now(), &proposal(30, AppClass::Transactional, &capped))
            .await)
        .granted
    );
    let held = ok(stores[1]
        .acquire(now(), &proposal(30, AppClass::Transactional, &capped))
        .await);
    assert_eq!(held.reason, "cap");
    assert!(
        ok(stores[1]
            .acquire(now(), &proposal(20, AppClass::Transactional, &capped))
            .await)
        .granted
    );
}

/// A receiver's hour budget holds every node together: filled across the
/// three nodes, its next send waits for it (`receiver-1h`), bulk to it
/// keeps to its share, and mail to another receiver still flows; the
/// others hear what each node sent to each receiver. The gateway's own
/// reasons come first.
async fn a_receivers_budget_is_shared_by_every_node<S: Store>(stores: &[S]) {
    meet(stores).await;
    let budgeted = limits(1e6, 1000, vec![hour(100, 100)], Vec::new());
    let google = |units, class| to_receiver("google", (10, 6), units, class, &budgeted);
    let microsoft = |units| {
        to_receiver(
            "microsoft",
            (10, 6),
            units,
            AppClass::Transactional,
            &budgeted,
        )
    };
    for store in stores {
        assert!(ok(store.acquire(now(), &google(2, AppClass::Bulk)).await).granted);
    }
    let held = ok(stores[0].acquire(now(), &google(1, AppClass::Bulk)).await);
    assert_eq!(held.reason, "receiver-1h", "6 of google's bulk: {held:?}");
    assert!(held.holds_the_receiver_only());
    assert!(held.wait > 0.0 && held.wait <= 60.0, "{held:?}");
    assert!(
        ok(stores[1]
            .acquire(now(), &google(3, AppClass::Transactional))
            .await)
        .granted
    );
    let held = ok(stores[2]
        .acquire(now(), &google(2, AppClass::Transactional))
        .await);
    assert_eq!(held.reason, "receiver-1h", "9 of 10 across the nodes");
    let google_elsewhere = held.reading.elsewhere.receivers["google"];
    assert_eq!(
        (google_elsewhere.all, google_elsewhere.transactional),
        (3, 3),
        "node 1's 3 since node 2's previous reading, not its own"
    );
    let verdict = ok(stores[2].acquire(now(), &microsoft(5)).await);
    assert!(verdict.granted, "another receiver flows: {verdict:?}");
    assert!(
        ok(stores[0]
            .acquire(now(), &google(1, AppClass::Transactional))
            .await)
        .granted
    );
    let reading = ok(stores[1].hold(now(), false).await);
    assert_eq!(reading.elsewhere.receivers["microsoft"].all, 5);
    assert_eq!(reading.elsewhere.receivers["google"].all, 1, "node 0's");
    // Both full (15 of 15, google 10 of 10): the gateway's reason first.
    let full = limits(1e6, 1000, vec![hour(15, 15)], Vec::new());
    let held = ok(stores[1]
        .acquire(
            now(),
            &to_receiver("google", (10, 6), 1, AppClass::Transactional, &full),
        )
        .await);
    assert_eq!(held.reason, "1h", "{held:?}");
    assert!(!held.holds_the_receiver_only());
}

/// An operator's hold on one node holds every node until released.
async fn an_operators_hold_holds_every_node<S: Store>(stores: &[S]) {
    let tx = proposal(1, AppClass::Transactional, &wide_open());
    assert!(ok(stores[0].hold(now(), true).await).held);
    let held = ok(stores[1].acquire(now(), &tx).await);
    assert!(!held.granted && held.reading.held);
    assert_eq!(held.reason, "hold");
    assert!((held.wait - 1.0).abs() < 1e-6, "{held:?}");
    assert!(!ok(stores[2].hold(now(), false).await).held);
    assert!(ok(stores[1].acquire(now(), &tx).await).granted);
}

/// Throttling one node hears cuts the shared penalty once per episode and
/// pauses every node; an operator's unpause ends the pause, not the cut.
async fn throttling_pauses_every_node_once_per_episode<S: Store>(stores: &[S]) {
    let reading = ok(stores[0].throttled(now(), (0.5, 60.0, 600.0)).await);
    assert!((reading.feedback.penalty - 0.5).abs() < 1e-9, "{reading:?}");
    assert!(
        (reading.feedback.pause_left - 60.0).abs() < SLACK,
        "{reading:?}"
    );
    let reading = ok(stores[1].throttled(now(), (0.5, 60.0, 600.0)).await);
    assert!(
        (reading.feedback.penalty - 0.5).abs() < 1e-9,
        "the same episode cuts nothing more: {reading:?}"
    );
    let tx = proposal(1, AppClass::Transactional, &wide_open());
    let held = ok(stores[2].acquire(now(), &tx).await);
    assert_eq!(held.reason, "pause");
    assert!((held.wait - 60.0).abs() < SLACK, "{held:?}");
    let reading = ok(stores[1].end_pause(now()).await);
    assert!(reading.feedback.pause_left <= 0.0, "{reading:?}");
    assert!((reading.feedback.penalty - 0.5).abs() < 1e-9);
    assert!(ok(stores[2].acquire(now(), &tx).await).granted);
}

/// A used-up quota rests every node, cutting nothing; a shorter rest does
/// not shorten it.
async fn a_used_up_quota_rests_every_node_without_a_cut<S: Store>(stores: &[S]) {
    let reading = ok(stores[0].pause(now(), 30.0).await);
    assert_eq!(reading.feedback.penalty, 1.0);
    let reading = ok(stores[1].pause(now(), 10.0).await);
    assert!(
        (reading.feedback.pause_left - 30.0).abs() < SLACK,
        "{reading:?}"
    );
    let tx = proposal(1, AppClass::Transactional, &wide_open());
    let held = ok(stores[2].acquire(now(), &tx).await);
    assert_eq!(held.reason, "pause");
    assert!((held.wait - 30.0).abs() < SLACK, "{held:?}");
}

/// Heartbeats count the live nodes and tell each what the others queued
/// and the busiest windows they saw, of the total and per receiver.
async fn heartbeats_count_the_live_nodes_and_what_the_others_queued<S: Store>(stores: &[S]) {
    let queued = |transactional: usize, bulk: usize| ClassCounts {
        messages: [transactional, bulk],
        units: [transactional as u64 * 2, bulk as u64 * 3],
    };
    let busiest = |total: [u64; 2], receivers: &[(&str, [u64; 2])]| Busiest {
        total,
        receivers: receivers
            .iter()
            .map(|(name, windows)| (name.to_string(), *windows))
            .collect(),
    };
    let a = busiest([10, 100], &[("google", [3, 30]), ("microsoft", [0, 0])]);
    let first = ok(stores[0].heartbeat(now(), queued(3, 5), &a).await);
    assert_eq!(first.live, 1);
    let b = busiest([20, 50], &[("google", [5, 20]), ("yahoo", [1, 2])]);
    ok(stores[1].heartbeat(now(), queued(1, 0), &b).await);
    let beat = ok(stores[2]
        .heartbeat(now(), queued(0, 0), &Busiest::default())
        .await);
    assert_eq!(beat.live, 3);
    assert_eq!(beat.queued_elsewhere, queued(4, 5));
    assert_eq!(
        beat.busiest_elsewhere,
        busiest(
            [20, 100],
            &[
                ("google", [5, 30]),
                ("microsoft", [0, 0]),
                ("yahoo", [1, 2])
            ]
        )
    );
    let beat = ok(stores[0].heartbeat(now(), queued(3, 5), &a).await);
    assert_eq!(
        beat.queued_elsewhere,
        queued(1, 0),
        "its own is not elsewhere"
    );
    assert_eq!(
        beat.busiest_elsewhere, b,
        "nor what it saw itself (node 2 saw nothing)"
    );
}

/// What a node sent on its share, reconciled, counts in the windows and
/// in its totals, each receiver's part in that receiver's: the others hear
/// of it, and the budgets hold them.
async fn a_reconciled_ledger_counts_in_the_windows_and_the_others_hear_of_it<S: Store>(
    stores: &[S],
) {
    meet(stores).await;
    let budgeted = limits(1e6, 1000, vec![hour(10, 10)], Vec::new());
    let mut ledger = Ledger::default();
    ledger.add(now(), 5, AppClass::Transactional, Some("google"));
    ledger.add(now(), 3, AppClass::Transactional, None);
    ok(stores[0].reconcile(now(), &budgeted, &ledger).await);
    let verdict = ok(stores[1]
        .acquire(now(), &proposal(3, AppClass::Transactional, &budgeted))
        .await);
    assert_eq!(
        verdict.reason, "1h",
        "8 of 10 sent on the share: {verdict:?}"
    );
    assert_eq!(verdict.reading.elsewhere.messages, 2);
    assert_eq!(verdict.reading.elsewhere.all, 8);
    assert_eq!(verdict.reading.elsewhere.receivers["google"].all, 5);
    let google = |units| to_receiver("google", (6, 6), units, AppClass::Transactional, &budgeted);
    let verdict = ok(stores[2].acquire(now(), &google(2)).await);
    assert_eq!(
        verdict.reason, "receiver-1h",
        "google's 5 of 6 sent on the share: {verdict:?}"
    );
    assert!(
        ok(stores[1]
            .acquire(now(), &proposal(2, AppClass::Transactional, &budgeted))
            .await)
        .granted
    );
}

/// A rebuild takes the larger count of each slot (every node's view
/// together is conservative, the receivers' windows included), the lower
/// penalty, the longer pause and a hold.
async fn a_rebuild_takes_the_larger_count_of_each_slot<S: Store>(stores: &[S]) {
    let minute = (now() / 60.0).floor() as i64;
    let hour_of = |units: u64| {
        vec![(
            Horizon::Hour,
            vec![MinuteCount {
                minute,
                all: units,
                transactional: units,
            }],
        )]
    };
    let counts = |units: u64| WindowCounts {
        budgets: hour_of(units),
        caps: Vec::new(),
        receivers: vec![("google".to_string(), hour_of(units / 2))],
    };
    let feedback = |penalty: f64, pause_left: f64| SharedFeedback {
        penalty,
        pause_left,
    };
    let reading = ok(stores[0]
        .rebuild(now(), &counts(6), &feedback(0.8, 0.0), false)
        .await);
    assert!((reading.feedback.penalty - 0.8).abs() < 1e-9, "{reading:?}");
    assert!(!reading.held);
    let reading = ok(stores[1]
        .rebuild(now(), &counts(4), &feedback(0.9, 20.0), true)
        .await);
    assert!(
        (reading.feedback.penalty - 0.8).abs() < 1e-9,
        "the lower: {reading:?}"
    );
    assert!(
        (reading.feedback.pause_left - 20.0).abs() < SLACK,
        "{reading:?}"
    );
    assert!(reading.held);
    ok(stores[1].hold(now(), false).await);
    ok(stores[1].end_pause(now()).await);
    let budgeted = limits(1e6, 1000, vec![hour(10, 10)], Vec::new());
    let verdict = ok(stores[2]
        .acquire(now(), &proposal(5, AppClass::Transactional, &budgeted))
        .await);
    assert_eq!(verdict.reason, "1h", "6 counted, not 10: {verdict:?}");
    let google = |units| to_receiver("google", (5, 5), units, AppClass::Transactional, &budgeted);
    let verdict = ok(stores[2].acquire(now(), &google(3)).await);
    assert_eq!(
        verdict.reason, "receiver-1h",
        "google's 3 counted, not 5: {verdict:?}"
    );
    assert!(ok(stores[2].acquire(now(), &google(2)).await).granted);
    assert!(
        ok(stores[2]
            .acquire(now(), &proposal(2, AppClass::Transactional, &budgeted))
            .await)
        .granted
    );
}

/// Every case, each on three nodes of a new shared state from `cluster`.
async fn keeps_the_contract<S: Store>(cluster: impl Fn(&str) -> Vec<S>) {
    the_bucket_spaces_every_node_and_the_others_hear_of_each_send(&cluster("bucket")).await;
    bulk_leaves_the_last_token_to_transactional_mail(&cluster("bulk")).await;
    budgets_and_caps_hold_every_node_and_bulk_keeps_to_its_share(&cluster("budgets")).await;
    an_operators_hold_holds_every_node(&cluster("hold")).await;
    throttling_pauses_every_node_once_per_episode(&cluster("throttle")).await;
    a_used_up_quota_rests_every_node_without_a_cut(&cluster("quota")).await;
    heartbeats_count_the_live_nodes_and_what_the_others_queued(&cluster("depth")).await;
    a_reconciled_ledger_counts_in_the_windows_and_the_others_hear_of_it(&cluster("ledger")).await;
    a_rebuild_takes_the_larger_count_of_each_slot(&cluster("rebuild")).await;
    a_receivers_budget_is_shared_by_every_node(&cluster("receiver")).await;
}

#[tokio::test]
async fn the_in_memory_store_keeps_the_contract() {
    keeps_the_contract(|_| MemoryStore::cluster(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_the_contract() {
    let port = free_address().port();
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    keeps_the_contract(|gateway| {
        crate::cluster::three_links(port, gateway)
            .into_iter()
            .map(|link| Arc::into_inner(link).expect("the only owner of the link"))
            .collect()
    })
    .await;
}
