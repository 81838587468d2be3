//! The delivery queue on tokio's paused clock.

use super::*;
use crate::config::units::Period;
use crate::shaper::{GatewayModel, ShapingConfig};
use crate::smtp::MailParams;
use crate::spool::{Envelope, Location};

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
        attempts: 0,
        lane: 0,
        body: body.map(|len| vec![b'x'; len]),
        history: Vec::new(),
        probe: false,
    }
}

/// A fast queue with two lanes that parks past `active_limit`
/// envelopes, reading them back from `spool`.
fn parking_queue(spool: Option<&Spool>, active_limit: usize) -> DeliveryQueue {
    let transactional = Lane {
        weight: 1,
        class: crate::shaper::AppClass::Transactional,
        max_queue_delay: None,
        expire_after: None,
    };
    parking_queue_with(spool, active_limit, vec![transactional; 2])
}

fn parking_queue_with(
    spool: Option<&Spool>,
    active_limit: usize,
    lanes: Vec<Lane>,
) -> DeliveryQueue {
    let shaping: ShapingConfig = "initial_rate = \"1000/s\"\nmax_rate = \"1000/s\"\nburst = 1000"
        .parse()
        .unwrap();
    DeliveryQueue::shared(
        "primary",
        Period::Minute,
        |now| GatewayModel::new(&shaping, now),
        lanes,
        Arc::new(Notify::new()),
        None,
        spool.map(|spool| Parking {
            spool: spool.clone(),
            active_limit,
        }),
    )
}

/// Stores `count` messages in `spool`, the `n`th with `n % 3 + 1`
/// recipients, in lane 0 but every third in lane 1.
async fn stored(spool: &Spool, count: usize) -> Vec<Queued> {
    let mut items = Vec::new();
    for n in 0..count {
        let envelope = Envelope {
            sender: format!("app{n}@example.com"),
            recipients: (0..n % 3 + 1)
                .map(|r| format!("r{r}@example.org"))
                .collect(),
            params: MailParams::default(),
            client_ip: "127.0.0.1".parse().unwrap(),
            received_at: 1_000 + n as u64,
            dsn: false,
        };
        let body = format!("Subject: {n}\r\n\r\nbody {n}\r\n");
        let message = spool
            .store(
                crate::spool::new_queue_id(),
                "primary",
                envelope,
                &[body.as_bytes()],
            )
            .await
            .unwrap();
        items.push(Queued {
            message,
            attempts: 0,
            lane: usize::from(n % 3 == 2),
            body: None,
            history: Vec::new(),
            probe: false,
        });
    }
    items
}

fn copy(item: &Queued) -> Queued {
    Queued {
        message: item.message.clone(),
        attempts: item.attempts,
        lane: item.lane,
        body: None,
        history: item.history.clone(),
        probe: false,
    }
}

fn spool_in(dir: &std::path::Path) -> Spool {
    let config = crate::config::SpoolConfig {
        dir: dir.to_path_buf(),
        segment_size: 64 * 1024 * 1024,
        active_limit: 1,
    };
    let fsync =
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("fsync", "fsync")).unwrap();
    Spool::open(&config, fsync).unwrap().0
}

#[tokio::test]
async fn a_long_queue_parks_envelopes_and_gives_them_back_in_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(dir.path());
    let items = stored(&spool, 30).await;
    let parking = parking_queue(Some(&spool), 5);
    let whole = parking_queue(None, 5);
    for item in &items {
        parking.push(copy(item), true, 4);
        whole.push(copy(item), true, 4);
    }
    assert_eq!((parking.parked(), whole.parked()), (25, 0));
    // Counts, lanes, units, bytes and the oldest age are those of the
    // queue that holds everything.
    let (parked_view, parked_bytes) = parking.view();
    let (whole_view, whole_bytes) = whole.view();
    assert_eq!(parked_view.queued, 30);
    assert_eq!(parked_view.lanes, whole_view.lanes);
    assert_eq!(parked_bytes, whole_bytes);
    assert!((parked_view.oldest_age - whole_view.oldest_age).abs() < 1.0);
    assert_eq!(
        parking.lock().scheduler.queued(),
        whole.lock().scheduler.queued()
    );
    // Released in the same fair order, each read back whole.
    for _ in 0..30 {
        let from_disk = parking.next().await;
        let in_memory = whole.next().await;
        assert_eq!(from_disk.message, in_memory.message);
        assert_eq!(from_disk.lane, in_memory.lane);
        let body = spool.read_body(in_memory.message.location).await.unwrap();
        if let Some(carried) = &from_disk.body {
            assert_eq!(carried, &body);
        }
    }
    assert_eq!((parking.len(), parking.parked()), (0, 0));
    assert_eq!(parking.view().1, 0, "no bytes left counted");
}

/// Generated traces: lanes of random weights, pushes and releases
/// interleaved at random, any active limit. The parking queue releases
/// exactly what the queue holding everything does, in the same order,
/// and shows the same counts at every step.
#[tokio::test]
async fn parking_never_changes_what_is_released_or_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(dir.path());
    for seed in 0..12u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let lanes: Vec<Lane> = (0..rng.usize(2..5))
            .map(|_| Lane {
                weight: rng.u32(1..4),
                class: crate::shaper::AppClass::Transactional,
                max_queue_delay: None,
                expire_after: None,
            })
            .collect();
        let mut items = stored(&spool, rng.usize(10..40)).await;
        for item in &mut items {
            item.lane = rng.usize(0..lanes.len());
        }
        let limit = rng.usize(1..8);
        let parking = parking_queue_with(Some(&spool), limit, lanes.clone());
        let whole = parking_queue_with(None, limit, lanes);
        let mut pending = items.iter();
        loop {
            let push = rng.u8(0..3) > 0;
            if push {
                let Some(item) = pending.next() else { break };
                let arrival = rng.bool();
                parking.push(copy(item), arrival, 4);
                whole.push(copy(item), arrival, 4);
            } else if whole.len() > 0 {
                let (a, b) = (parking.next().await, whole.next().await);
                assert_eq!((&a.message, a.lane), (&b.message, b.lane), "seed {seed}");
            }
            let (a, b) = (parking.view().0, whole.view().0);
            assert_eq!((a.queued, &a.lanes), (b.queued, &b.lanes), "seed {seed}");
            assert_eq!(
                parking.lock().scheduler.queued(),
                whole.lock().scheduler.queued()
            );
        }
        while whole.len() > 0 {
            let (a, b) = (parking.next().await, whole.next().await);
            assert_eq!((&a.message, a.lane), (&b.message, b.lane), "seed {seed}");
        }
        assert_eq!((parking.len(), parking.parked()), (0, 0));
    }
}

#[test]
fn only_ids_in_the_form_the_spool_makes_are_parked() {
    let id = crate::spool::new_queue_id();
    assert_eq!(Parked::id_value(&id).map(Parked::id_text), Some(id.clone()));
    for other in [
        "+000000000000001",
        "00000000000000ab",
        "Q1",
        "0000000000000000A",
        "",
    ] {
        assert_eq!(Parked::id_value(other), None, "{other}");
    }
}

#[tokio::test]
async fn only_untried_whole_messages_are_parked() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(dir.path());
    let items = stored(&spool, 4).await;
    let queue = parking_queue(Some(&spool), 1);
    let mut tried = copy(&items[1]);
    tried.attempts = 1;
    let mut half = copy(&items[2]);
    half.message.pending = vec![1];
    for item in [copy(&items[0]), tried, half, copy(&items[3])] {
        queue.push(item, false, 4);
    }
    assert_eq!(queue.parked(), 1, "only the last, never tried, whole");
    // A retry coming due is never parked either.
    queue.retry_at(copy(&items[0]), Instant::now());
    assert_eq!(queue.parked(), 1);
}

#[tokio::test]
async fn parked_messages_are_visited_removed_and_moved_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(dir.path());
    let items = stored(&spool, 6).await;
    let queue = parking_queue(Some(&spool), 2);
    for item in &items {
        queue.push(copy(item), false, 4);
    }
    let mut seen = Vec::new();
    queue.visit(|visited, _| {
        seen.push((
            visited.id().into_owned(),
            matches!(visited, Visited::Parked(_)),
        ))
    });
    let ids: Vec<String> = items.iter().map(|item| item.message.id.clone()).collect();
    let mut expected: Vec<(String, bool)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), n >= 2))
        .collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
    let Taken {
        item: removed,
        lane,
        ..
    } = queue.remove(&ids[3]).unwrap();
    assert!(matches!(removed, Slot::Parked(parked) if parked.id() == ids[3]));
    assert_eq!(lane, items[3].lane);
    assert_eq!(queue.parked(), 3);
    // A reload moves parked messages without reading them.
    let moved = parking_queue(Some(&spool), 2);
    for drained in queue.drain() {
        match drained {
            Drained::Held(item, _) => moved.push(*item, false, 4),
            Drained::Parked {
                parked,
                lane,
                units,
            } => moved.push_parked(parked, lane, units),
        }
    }
    assert_eq!((queue.len(), queue.parked()), (0, 0));
    assert_eq!((moved.len(), moved.parked()), (5, 3));
    let mut released = Vec::new();
    for _ in 0..5 {
        released.push(moved.next().await.message.id);
    }
    released.sort();
    let mut left: Vec<String> = ids.clone();
    left.remove(3);
    assert_eq!(released, left);
}

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
async fn retries_wait_until_due_and_drop_their_body() {
    let queue = queue();
    let start = Instant::now();
    queue.retry_at(item("late", Some(10)), start + Duration::from_secs(60));
    queue.retry_at(item("early", None), start + Duration::from_secs(30));
    assert!(next_within(&queue, Duration::from_secs(29)).await.is_none());
    let early = queue.next().await;
    assert_eq!(early.message.id, "early");
    assert_eq!(Instant::now() - start, Duration::from_secs(30));
    let late = queue.next().await;
    assert_eq!(
        (late.message.id.as_str(), late.body.is_none()),
        ("late", true)
    );
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
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

#[tokio::test(start_paused = true)]
async fn a_throttling_reply_halves_the_ceiling() {
    let queue = shaped_queue("initial_rate = \"60/min\"\nbackoff_factor = 0.5");
    let before = queue.view().0.model.ceiling;
    queue.heard(GatewayEvent::Throttled {
        reply: &"451 4.7.500 Server busy, try again later",
    });
    let (after, _) = queue.view();
    assert!((after.model.ceiling - before / 2.0).abs() < 1e-9);
    assert!(after.model.paused_for > 59.0);
}

/// Whether `at` is `due`, give or take the timer's millisecond ticks.
fn within_a_tick(at: Instant, due: Instant) -> bool {
    at >= due && at - due < Duration::from_millis(5)
}

fn ten_per_failure(failures: u32) -> Duration {
    Duration::from_secs(10 * u64::from(failures))
}

/// A connection attempt begun at `started` failed; the pause it began.
fn failed(queue: &DeliveryQueue, started: Instant) -> Option<Duration> {
    queue
        .heard(GatewayEvent::ConnectFailed {
            started,
            address: "gateway",
            error: &"refused",
            pause: &ten_per_failure,
        })
        .pause()
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_gateway_pauses_the_queue() {
    let queue = queue();
    queue.push(item("a", None), true, 4);
    let pause = failed(&queue, Instant::now());
    assert_eq!(pause, Some(Duration::from_secs(10)));
    assert!(next_within(&queue, Duration::from_secs(9)).await.is_none());
    let probe = queue.next().await;
    assert_eq!((probe.message.id.as_str(), probe.probe), ("a", true));

    queue.push(item("b", None), true, 4);
    let pause = failed(&queue, Instant::now());
    assert_eq!(pause, Some(Duration::from_secs(20)), "backs off further");
    queue.heard(GatewayEvent::Connected);
    assert!(
        next_within(&queue, Duration::from_millis(1))
            .await
            .is_some(),
        "resumes at once"
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_pause_one_probe_goes_and_only_its_failure_lengthens_the_pause() {
    let queue = queue();
    for id in ["a", "b", "c", "d"] {
        queue.push(item(id, None), true, 4);
    }
    // Four workers' attempts, all under way when the first one fails.
    let started = Instant::now();
    let taken = [queue.next().await, queue.next().await, queue.next().await];
    assert!(taken.iter().all(|item| !item.probe));
    let pauses: Vec<Option<Duration>> = (0..3).map(|_| failed(&queue, started)).collect();
    assert_eq!(pauses, vec![Some(Duration::from_secs(10)), None, None]);
    for item in taken {
        queue.retry_at(item, started + Duration::from_secs(1));
    }

    // The pause ends: one probe, however many workers ask.
    let probe = queue.next().await;
    assert!(within_a_tick(
        Instant::now(),
        started + Duration::from_secs(10)
    ));
    assert!(probe.probe);
    assert!(
        next_within(&queue, Duration::from_secs(3600))
            .await
            .is_none()
    );
    let probe_started = Instant::now();
    assert_eq!(failed(&queue, probe_started), Some(Duration::from_secs(20)));
    queue.retry_at(probe, probe_started);

    // A probe that says nothing (its body unreadable) hands over to the next.
    let probe = queue.next().await;
    assert!(within_a_tick(
        Instant::now(),
        probe_started + Duration::from_secs(20)
    ));
    queue.heard(GatewayEvent::ProbeInconclusive);
    let next = queue.next().await;
    assert!(next.probe && next.message.id != probe.message.id);
    queue.heard(GatewayEvent::Connected);
    let rest = [queue.next().await, queue.next().await];
    assert!(rest.iter().all(|item| !item.probe), "the gateway is up");
}

#[tokio::test(start_paused = true)]
async fn an_operator_retry_ends_the_pause_with_one_probe() {
    let queue = queue();
    let start = Instant::now();
    queue.retry_at(item("tried", None), start + Duration::from_secs(5));
    queue.retry_at(item("later", None), start + Duration::from_secs(3600));
    queue.push(item("new", None), true, 4);
    failed(&queue, start);
    let mut places = Vec::new();
    queue.visit(|item, place| {
        if let Place::Retry(at) = place {
            let after = (at - queue.clock.at(start)).round() as u64;
            places.push((item.id().into_owned(), after));
        }
    });
    assert_eq!(
        places,
        vec![
            ("new".to_string(), 10),
            ("tried".to_string(), 10),
            ("later".to_string(), 3600)
        ],
        "none goes before the pause ends"
    );

    assert_eq!(
        queue.retry_now(Some("new")),
        1,
        "ready, held only by the pause"
    );
    let probe = next_within(&queue, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(probe.probe);
    assert!(next_within(&queue, Duration::from_secs(60)).await.is_none());
    assert_eq!(
        queue.retry_now(None),
        1,
        "the later one, while the probe is out"
    );
    queue.heard(GatewayEvent::Connected);
    let rest = [queue.next().await, queue.next().await];
    assert!(rest.iter().all(|item| !item.probe));
}

/// The outage: 16 messages, 10 workers, `retry_initial` 5 s, the
/// gateway down for 40 s. Workers here do what `worker::deliver` does
/// with a connection that cannot be opened, or with one that can.
#[tokio::test(start_paused = true)]
async fn a_gateway_back_after_40_s_gets_everything_at_the_next_probe() {
    use crate::outbound::retry::Backoff;

    let backoff = Backoff {
        initial: Duration::from_secs(5),
        max: Duration::from_secs(3600),
    };
    let queue = Arc::new(queue());
    let start = Instant::now();
    let up_at = start + Duration::from_secs(40);
    for n in 0..16 {
        queue.push(item(&format!("m{n}"), None), true, 10);
    }
    #[derive(Default)]
    struct Log {
        attempts: Vec<Instant>,
        /// (began, length) of every pause a failure started.
        pauses: Vec<(Instant, Duration)>,
        delivered: Vec<Instant>,
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let all_delivered = Arc::new(Notify::new());
    for worker in 0..10u64 {
        let (queue, log, all_delivered) = (queue.clone(), log.clone(), all_delivered.clone());
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(worker);
            loop {
                let mut item = queue.next().await;
                let started = Instant::now();
                log.lock().unwrap().attempts.push(started);
                // Opening a connection takes a moment, so the workers'
                // first attempts overlap.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if started < up_at {
                    let jitter = rng.f64();
                    if let Some(pause) = queue
                        .heard(GatewayEvent::ConnectFailed {
                            started,
                            address: "gateway",
                            error: &"refused",
                            pause: &|failures| backoff.delay(failures, jitter),
                        })
                        .pause()
                    {
                        log.lock().unwrap().pauses.push((Instant::now(), pause));
                    }
                    item.attempts += 1;
                    let delay = backoff.delay(item.attempts, rng.f64());
                    queue.retry_at(item, Instant::now() + delay);
                } else {
                    queue.heard(GatewayEvent::Connected);
                    let mut log = log.lock().unwrap();
                    log.delivered.push(started);
                    if log.delivered.len() == 16 {
                        all_delivered.notify_one();
                    }
                }
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(24 * 3600), all_delivered.notified())
        .await
        .expect("all 16 delivered within a day");

    let log = log.lock().unwrap();
    let first_success = log.delivered[0];
    assert!(
        log.delivered
            .iter()
            .all(|at| *at - first_success < Duration::from_secs(1)),
        "everything goes once the probe gets through"
    );
    let failed_attempts = log.attempts.iter().filter(|at| **at < up_at).count();
    assert_eq!(
        failed_attempts,
        10 + log.pauses.len() - 1,
        "the first wave, then one probe per pause: {:?}",
        log.pauses
    );
    for (n, (_, pause)) in log.pauses.iter().enumerate() {
        assert!(
            *pause <= backoff.delay(n as u32 + 1, 1.0),
            "pause {n} follows the schedule: {:?}",
            log.pauses
        );
    }
    let (began, pause) = *log.pauses.last().unwrap();
    assert!(began < up_at);
    assert!(
        within_a_tick(first_success, began + pause),
        "the first probe after the return"
    );
    assert!(first_success - up_at <= backoff.delay(log.pauses.len() as u32, 1.0));
}
