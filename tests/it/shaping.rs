//! Shaping over real loopback TCP: an idle gateway hit by a burst, admission
//! deferrals, hard caps across a restart, and the gateway's throttling
//! replies. Rates here are high enough to keep the tests short; the shaping
//! math itself is tested on a fake clock in `src/shaper`.

use std::time::{Duration, Instant};

use smtp_shaper::config::Config;
use smtp_shaper::shaper::DeferReason;

use crate::support::{
    self, Client, ClientReply, Harness, Sink, eventually, most_in_window, shaping, start,
    test_config,
};

const APP: &str = "app@example.com";
const BODY: &[u8] = b"Subject: shaped\r\n\r\nhello\r\n";

/// One transaction that the service may defer at RCPT: returns the RCPT
/// reply when it is not 250 (after RSET), else the reply to the end of DATA.
async fn offer(client: &mut Client) -> ClientReply {
    assert_eq!(
        client.command(&format!("MAIL FROM:<{APP}>")).await.code,
        250
    );
    let rcpt = client.command("RCPT TO:<someone@example.org>").await;
    if rcpt.code != 250 {
        assert_eq!(client.command("RSET").await.code, 250);
        return rcpt;
    }
    assert_eq!(client.command("DATA").await.code, 354);
    client.send_raw(&support::stuff(BODY)).await;
    client.reply().await.expect("reply to end of DATA")
}

/// Offers one message to each of `recipients`, on fresh connections (a
/// session ends after a few RSETs that moved no mail); returns the codes.
async fn offer_each(address: std::net::SocketAddr, recipients: &[String]) -> Vec<ClientReply> {
    let mut replies = Vec::new();
    for chunk in recipients.chunks(5) {
        let mut client = Client::ready(address).await;
        for to in chunk {
            replies.push(client.offer(APP, to, BODY).await);
        }
    }
    replies
}

fn users(count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("user{index}@example.org"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_hit_by_a_burst_receives_it_no_faster_than_the_ceiling() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(
            "initial_rate = \"40/s\"\nmin_rate = \"40/s\"\nmax_rate = \"40/s\"\nheadroom = 1.0\nburst = 5\nmax_queue_delay = \"1h\"",
        );
    })
    .await;
    let mut client = h.client().await;
    for _ in 0..300 {
        assert_eq!(offer(&mut client).await.code, 250);
    }
    eventually("all 300 delivered", || h.sink.count() == 300).await;
    let mut times: Vec<Instant> = h.sink.messages().iter().map(|m| m.at).collect();
    times.sort();
    // ceiling x window + burst, plus 3 for the loopback hop's jitter
    // (a release a few milliseconds late can land next to the next one).
    for (window, allowed) in [(1, 40 + 5 + 3), (3, 120 + 5 + 3)] {
        let most = most_in_window(&times, Duration::from_secs(window));
        assert!(
            most <= allowed,
            "{most} messages within {window}s; the ceiling allows {allowed}"
        );
    }
    let view = h.service.shaping("primary").unwrap();
    assert_eq!(view.queued, 0);
    assert!(view.model.send_rate > 0.0 && view.model.demand_rate > 0.0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mail_is_deferred_once_the_projected_wait_passes_the_bound() {
    // One message a minute, at most 3 minutes of waiting: 3 fit, the 4th not.
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(
            "initial_rate = \"1/min\"\nmin_rate = \"1/min\"\nmax_rate = \"1/min\"\nheadroom = 1.0\nburst = 1\nmax_queue_delay = \"3m\"",
        );
    })
    .await;
    let mut client = h.client().await;
    for _ in 0..3 {
        assert_eq!(offer(&mut client).await.code, 250);
    }
    let deferred = offer(&mut client).await;
    assert_eq!(deferred.code, 451, "{deferred:?}");
    assert!(
        deferred
            .text
            .starts_with("4.7.1 Rate limited: the gateway is sending slowly")
            && deferred.text.ends_with("try again in 1m"),
        "{deferred:?}"
    );
    // The session goes on: a deferral is not an error.
    assert_eq!(client.command("NOOP").await.code, 250);
    let view = h.service.shaping("primary").unwrap();
    assert_eq!(view.queued, 3);
    assert_eq!(view.model.deferrals, [1, 0, 0, 0, 0, 0, 0, 0]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_cap_counts_and_the_learned_state() {
    let sink = Sink::start().await;
    let spool = tempfile::tempdir().unwrap();
    let config = || -> Config {
        let mut config = test_config(spool.path(), sink.address);
        config.gateways[0].shaping = shaping(
            "initial_rate = \"100/s\"\nmax_rate = \"100/s\"\nlimits = [\"5/day\"]\nmax_queue_delay = \"1m\"",
        );
        config
    };
    let service = start(config()).await;
    let mut client = Client::ready(service.smtp_address()).await;
    for _ in 0..3 {
        assert_eq!(offer(&mut client).await.code, 250);
    }
    eventually("3 delivered", || sink.count() == 3).await;
    let before = service.shaping("primary").unwrap().model;
    drop(client);
    service.shutdown().await;

    let service = start(config()).await;
    let after = service.shaping("primary").unwrap().model;
    assert!(
        (after.baseline - before.baseline).abs() < before.baseline * 0.01,
        "baseline {} before, {} after",
        before.baseline,
        after.baseline
    );
    let mut client = Client::ready(service.smtp_address()).await;
    for _ in 0..2 {
        assert_eq!(offer(&mut client).await.code, 250);
    }
    let capped = offer(&mut client).await;
    assert_eq!(capped.code, 451, "{capped:?}");
    assert!(
        capped.text.contains("sending cap leaves no room"),
        "{capped:?}"
    );
    eventually("5 delivered in all", || sink.count() == 5).await;
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_reply_from_the_gateway_slows_sending() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(
            "initial_rate = \"50/s\"\nmin_rate = \"1/s\"\nmax_rate = \"100/s\"\nheadroom = 1.0\nbackoff_factor = 0.5\nbackoff_pause = \"1s\"\nbackoff_recovery = \"2s\"",
        );
    })
    .await;
    h.sink.behavior.lock().unwrap().data_replies.push_back(
        "451 4.7.500 Server busy. Please try again later from [127.0.0.1]. (AS770)".into(),
    );
    let before = h.service.shaping("primary").unwrap().model.ceiling;
    let mut client = h.client().await;
    assert_eq!(offer(&mut client).await.code, 250);
    eventually("the gateway throttled us", || {
        h.service.shaping("primary").unwrap().model.penalty < 1.0
    })
    .await;
    let view = h.service.shaping("primary").unwrap().model;
    assert!(
        (view.ceiling - before / 2.0).abs() < before * 0.01,
        "ceiling {} after {before}",
        view.ceiling
    );
    eventually("delivered after the pause", || h.sink.count() == 1).await;
    assert_eq!(*h.sink.data_attempts.lock().unwrap(), 2);
    // Back to the whole ceiling within backoff_recovery (2s) once the
    // gateway accepts; a day-long warm-up would take hours.
    eventually("the ceiling back where it was", || {
        let model = h.service.shaping("primary").unwrap().model;
        model.penalty == 1.0 && (model.ceiling - model.baseline).abs() < 1e-9
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_sends_its_hour_floor_defers_the_rest_and_a_restart_keeps_the_count() {
    let sink = Sink::start().await;
    let spool = tempfile::tempdir().unwrap();
    let config = || -> Config {
        let mut config = test_config(spool.path(), sink.address);
        config.gateways[0].shaping = shaping(
            "initial_rate = \"600/min\"\nmin_rate = [\"600/min\", \"40/h\", \"1000/day\"]\nmax_rate = \"600/min\"\nburst = 5\nmax_queue_delay = \"15m\"",
        );
        config
    };
    let service = start(config()).await;
    let (mut accepted, mut deferred) = (0, 0);
    for reply in offer_each(service.smtp_address(), &users(200)).await {
        match reply.code {
            250 => accepted += 1,
            451 => {
                assert!(
                    reply.text.contains("4.7.1") && reply.text.contains("hourly volume budget"),
                    "{reply:?}"
                );
                deferred += 1;
            }
            _ => panic!("{reply:?}"),
        }
    }
    assert_eq!((accepted, deferred), (40, 160), "the hour floor is 40");
    eventually("the hour's 40 delivered", || sink.count() == 40).await;
    let view = service.shaping("primary").unwrap().model;
    assert_eq!(view.budgets[0].sent, 40);
    assert_eq!(view.budgets[0].allowance, 40);
    assert!(view.deferrals[DeferReason::HourBudget as usize] >= 160);
    service.shutdown().await;

    let service = start(config()).await;
    let view = service.shaping("primary").unwrap().model;
    assert!(
        view.budgets[0].sent >= 40,
        "the hour's count is kept: {view:?}"
    );
    let mut client = Client::ready(service.smtp_address()).await;
    let reply = client.offer(APP, "late@example.org", BODY).await;
    assert_eq!(reply.code, 451, "{reply:?}");
    drop(client);
    service.shutdown().await;
    assert_eq!(sink.count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_counts_deferred_offers_once_so_the_burst_ratio_shows_the_burst() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(
            "initial_rate = \"6/min\"\nmin_rate = \"6/min\"\nmax_rate = \"6/min\"\nheadroom = 1.0\nburst = 1\nmax_queue_delay = \"30s\"",
        );
    })
    .await;
    let replies = offer_each(h.service.smtp_address(), &users(100)).await;
    let deferred = replies.iter().filter(|reply| reply.code == 451).count();
    assert!(deferred > 90, "{deferred} deferred");
    let first = h.service.shaping("primary").unwrap().model;
    // 100 offers in the last minute against a baseline of 6 a minute.
    assert!(first.burst_ratio > 10.0, "{first:?}");
    // The same envelopes offered again (an MTA retrying) add nothing.
    offer_each(h.service.smtp_address(), &users(100)).await;
    let again = h.service.shaping("primary").unwrap().model;
    assert!(
        again.demand_rate <= first.demand_rate * 1.05 + 0.02,
        "re-offers counted again: {} then {}",
        first.demand_rate,
        again.demand_rate
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_beyond_what_the_budget_lets_through_are_refused_with_452() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping =
            shaping("count = \"recipients\"\nmin_rate = [\"10/min\", \"3/h\", \"100/day\"]");
    })
    .await;
    let mut client = h.client().await;
    assert_eq!(
        client.command(&format!("MAIL FROM:<{APP}>")).await.code,
        250
    );
    for index in 0..3 {
        let reply = client
            .command(&format!("RCPT TO:<user{index}@example.org>"))
            .await;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    let fourth = client.command("RCPT TO:<user3@example.org>").await;
    assert_eq!(fourth.code, 452, "{fourth:?}");
    assert!(fourth.text.contains("4.5.3"), "{fourth:?}");
    assert_eq!(client.command("DATA").await.code, 354);
    client.send_raw(&support::stuff(BODY)).await;
    assert_eq!(client.reply().await.unwrap().code, 250);
    eventually("the three delivered", || h.sink.count() == 1).await;
    assert_eq!(h.sink.messages()[0].recipients.len(), 3);
    h.shutdown().await;
}

const SLOW: &str = "slow@example.org";
const BUSY: &str = "451 4.7.500 Server busy. Please try again later from [127.0.0.1]. (AS770)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_throttled_at_every_attempt_never_digs_the_ceiling_under_min_rate() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(
            "initial_rate = \"40/s\"\nmin_rate = \"10/s\"\nmax_rate = \"40/s\"\nheadroom = 1.0\nbackoff_factor = 0.5\nbackoff_pause = \"100ms\"\nbackoff_recovery = \"1h\"",
        );
    })
    .await;
    let floor = 10.0 / 40.0;
    h.sink
        .behavior
        .lock()
        .unwrap()
        .rcpt_replies
        .insert(SLOW.into(), BUSY.into());
    let mut client = h.client().await;
    assert_eq!(client.offer(APP, SLOW, BODY).await.code, 250);
    // Other mail goes on, so each attempt of the throttled one after an
    // acceptance opens a new episode: without a floor they dig the
    // ceiling ever lower.
    let mut lowest = 1.0f64;
    let mut sent = 0;
    while h.sink.behavior.lock().unwrap().rcpt_refused < 6 && sent < 400 {
        let reply = client
            .offer(APP, &format!("user{sent}@example.org"), BODY)
            .await;
        assert_eq!(reply.code, 250, "{reply:?}");
        sent += 1;
        lowest = lowest.min(h.service.shaping("primary").unwrap().model.penalty);
        // Slower than the floor's 10/s, so the retry never queues behind them.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    lowest = lowest.min(h.service.shaping("primary").unwrap().model.penalty);
    let refused = h.sink.behavior.lock().unwrap().rcpt_refused;
    assert!(
        refused >= 6,
        "the throttled recipient was tried {refused} times"
    );
    assert!(lowest < 1.0, "the throttling was heard");
    assert!(
        lowest >= floor - 1e-9,
        "penalty {lowest} took the ceiling under min_rate ({floor})"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_recipient_in_a_transaction_the_gateway_accepted_cuts_nothing() {
    let h = Harness::with(|config| {
        config.gateways[0].retry_initial = Duration::from_secs(3_600);
        config.gateways[0].retry_max = Duration::from_secs(3_600);
        config.gateways[0].shaping = shaping(
            "initial_rate = \"40/s\"\nmin_rate = \"5/s\"\nmax_rate = \"40/s\"\nheadroom = 1.0\nbackoff_pause = \"1h\"",
        );
    })
    .await;
    h.sink
        .behavior
        .lock()
        .unwrap()
        .rcpt_replies
        .insert(SLOW.into(), BUSY.into());
    let mut client = h.client().await;
    let reply = client
        .send_message(APP, &[SLOW, "fine@example.org"], BODY)
        .await;
    assert_eq!(reply.code, 250, "{reply:?}");
    eventually(
        "one recipient delivered, the other back in the queue",
        || h.sink.count() == 1 && h.service.shaping("primary").unwrap().queued == 1,
    )
    .await;
    assert_eq!(h.sink.behavior.lock().unwrap().rcpt_refused, 1);
    let model = h.service.shaping("primary").unwrap().model;
    assert_eq!(model.penalty, 1.0, "{model:?}");
    assert_eq!(model.paused_for, 0.0, "{model:?}");
    h.shutdown().await;
}
