//! The delivery queue on tokio's paused clock: the fixtures, and how
//! messages go in and out; each room's own tests beside them ([`parking`],
//! [`retry`], [`health`]).

use super::*;
use crate::config::units::Period;
use crate::shaper::{GatewayModel, ShapingConfig};
use crate::smtp::MailParams;
use crate::spool::{Envelope, Location};

mod health;
mod parking;
mod retry;

/// A queue with two app lanes, shaped by `shaping` (TOML lines).
fn shaped_queue(shaping: &str) -> DeliveryQueue {
    let shaping: ShapingConfig = shaping.parse().unwrap();
    DeliveryQueue::new(
        "primary",
        |now| GatewayModel::new(&shaping, now),
        vec![
            Lane {
                weight: 1,
                class: crate::shaper::AppClass::Transactional,
                max_queue_delay: None,
                expire_after: None,
            };
            2
        ],
        Arc::new(Notify::new()),
    )
}

/// A queue fast enough that shaping never holds anything back.
fn queue() -> DeliveryQueue {
    shaped_queue("initial_rate = \"1000/s\"\nmax_rate = \"1000/s\"\nburst = 1000")
}

fn item(id: &str, body: Option<usize>) -> Queued {
    Queued {
        message: StoredMessage {
            id: id.into(),
            gateway: "primary".into(),
            envelope: Envelope {
                sender: String::new(),
                recipients: vec!["a@example.org".into()],
                params: MailParams::default(),
                client_ip: "127.0.0.1".parse().unwrap(),
                received_at: 0,
                dsn: false,
            },
            location: Location {
                segment: 1,
                offset: 0,
                body_offset: 0,
                body_len: 0,
            },
            pending: vec![0],
            notification: false,
        },
        receiver: None,
        attempts: 0,
        lane: 0,
        body: body.map(|len| vec![b'x'; len]),
        history: Vec::new(),
        probe: false,
    }
}

/// A fast queue with two lanes that parks past `active_limit`
/// envelopes, reading them back from `spool`.
/// `next()`, or None if nothing comes within `limit` of virtual time.
async fn next_within(queue: &DeliveryQueue, limit: Duration) -> Option<Queued> {
    tokio::time::timeout(limit, queue.next()).await.ok()
}

#[tokio::test(start_paused = true)]
async fn ready_messages_come_out_in_order() {
    let queue = queue();
    queue.push(item("a", None), true, 4);
    queue.push(item("b", None), true, 4);
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.next().await.message.id, "a");
    assert_eq!(queue.next().await.message.id, "b");
    assert!(
        next_within(&queue, Duration::from_secs(3600))
            .await
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn bodies_ride_along_only_while_the_queue_is_short() {
    let queue = queue();
    queue.push(item("a", Some(100)), true, 2);
    queue.push(item("b", Some(100)), true, 2);
    queue.push(item("c", Some(100)), true, 2);
    queue.push(item("d", Some(HOT_BODY_BYTES)), true, 10);
    let kept: Vec<bool> = [
        queue.next().await,
        queue.next().await,
        queue.next().await,
        queue.next().await,
    ]
    .iter()
    .map(|item| item.body.is_some())
    .collect();
    assert_eq!(kept, vec![true, true, false, false]);
    queue.push(item("e", Some(HOT_BODY_BYTES)), true, 10);
    assert!(
        queue.next().await.body.is_some(),
        "the budget is free again"
    );
}

#[tokio::test(start_paused = true)]
async fn releases_at_the_ceiling_fairly_across_apps() {
    let queue = shaped_queue("initial_rate = \"30/min\"\nheadroom = 2.0\nburst = 1");
    let start = Instant::now();
    for id in ["bulk1", "bulk2", "bulk3"] {
        queue.push(item(id, None), true, 1);
    }
    let mut reset = item("reset", None);
    reset.lane = 1;
    queue.push(reset, true, 1);
    let mut released = Vec::new();
    for _ in 0..4 {
        let item = queue.next().await;
        released.push((item.message.id, (Instant::now() - start).as_secs_f64()));
    }
    let ids: Vec<&str> = released.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["bulk1", "reset", "bulk2", "bulk3"]);
    for pair in released.windows(2) {
        assert!(pair[1].1 - pair[0].1 >= 0.999, "one a second: {released:?}");
    }
    let (view, _) = queue.view();
    assert_eq!(view.queued, 0);
    assert!((view.model.ceiling - 1.0).abs() < 1e-3, "{view:?}");
}

#[tokio::test(start_paused = true)]
async fn capped_sends_wait_for_the_state_to_be_saved() {
    let queue = shaped_queue("initial_rate = \"100/s\"\nlimits = [\"10/min\"]");
    tokio::time::sleep(Duration::from_secs(1)).await;
    queue.push(item("a", None), true, 1);
    assert!(next_within(&queue, Duration::from_secs(5)).await.is_none());
    let (state, reserve) = queue.snapshot(true);
    assert_eq!((reserve, state.caps[0].1.len()), (1, 1));
    queue.saved(reserve);
    assert!(
        next_within(&queue, Duration::from_millis(1))
            .await
            .is_some()
    );
}

/// Whether `at` is `due`, give or take the timer's millisecond ticks.
fn within_a_tick(at: Instant, due: Instant) -> bool {
    at >= due && at - due < Duration::from_millis(5)
}
