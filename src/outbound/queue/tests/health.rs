//! What the gateway says of itself: throttling, failed connections, the
//! pause and its one probe.

use super::*;

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
