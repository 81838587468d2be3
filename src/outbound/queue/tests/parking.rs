//! Parking: a long queue keeps envelopes as spool references and releases
//! and counts exactly what a queue held whole would.

use super::*;

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
            receiver: None,
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
        receiver: item.receiver,
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
                receiver,
                units,
            } => moved.push_parked(parked, (lane, receiver), units),
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
