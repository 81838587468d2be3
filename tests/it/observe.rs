//! Observe mode over loopback: a burst far over the floors is relayed at
//! once, what enforcement would have held is counted by reason, the hard
//! caps still hold, and switching the mode is a reload. The switch by
//! `observe_until` and the observer's arithmetic are tested on a fake
//! clock (`src/shaper/model/tests.rs`, `src/shaper/observe.rs`).

use crate::support::{Client, Harness, eventually, fetch, shaping};

const APP: &str = "app@example.com";
const BODY: &[u8] = b"Subject: observed\r\n\r\nhello\r\n";

/// 60/min with a burst of 5, floors of 20 an hour: enforcing, a burst of
/// 100 would mostly wait for the hour budget. A cap of 80 an hour.
const SHAPING: &str = "initial_rate = \"60/min\"\nmin_rate = [\"60/min\", \"20/h\", \"1000/day\"]\nmax_rate = \"60/min\"\nheadroom = 1.0\nburst = 5\nlimits = [\"80/h\"]";

async fn offer_burst(h: &Harness, count: usize) -> Vec<String> {
    let mut texts = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(20) {
        let mut client = Client::ready(h.service.smtp_address()).await;
        for n in chunk {
            let reply = client
                .offer(APP, &format!("user{n}@example.org"), BODY)
                .await;
            assert_eq!(reply.code, 250, "{reply:?}");
            texts.push(reply.text);
        }
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_relays_a_burst_at_once_counts_what_enforcement_would_hold_and_caps_still_hold()
 {
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(&format!("{SHAPING}\nmode = \"observe\""));
    })
    .await;
    let texts = offer_burst(&h, 100).await;
    assert!(
        texts[..80].iter().all(|text| !text.contains("leaves in")),
        "the first 80 go at once: {texts:?}"
    );
    eventually("80 relayed at once", || h.sink.count() == 80).await;
    eventually("the cap holds the other 20", || {
        h.service.shaping("primary").unwrap().queued == 20
    })
    .await;
    let http = h.service.http_address().unwrap();
    let status = fetch(http, "GET", "/status", None).await.body;
    assert!(status.contains("\"mode\":\"observe\""), "{status}");
    assert!(status.contains("\"observed\":{\"would_hold\":"), "{status}");
    let mut held = Vec::new();
    for reason in ["queue_delay", "hour_budget", "cap"] {
        let series =
            format!("smtp_shaper_observed_holds_total{{gateway=\"primary\",reason=\"{reason}\"}}");
        held.push(h.sample(&series).await);
    }
    let [ceiling, hour, cap] = held[..] else {
        unreachable!()
    };
    assert!(
        // However slowly the burst came (the shadow sends 1/s meanwhile),
        // at least 60 would have waited for the hour's budget.
        hour >= 60.0 && ceiling + hour + cap >= 70.0,
        "ceiling {ceiling}, hour {hour}, cap {cap}"
    );
    assert_eq!(
        h.sample("smtp_shaper_shaping_observing{gateway=\"primary\"}")
            .await,
        1.0
    );
    // The shadow releases along the ceiling: delays are observed as they
    // would have ended (each scrape catches up).
    let mut observed = 0.0;
    for _ in 0..600 {
        observed = h
            .sample("smtp_shaper_observed_delay_seconds_count{gateway=\"primary\"}")
            .await;
        if observed >= 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(observed >= 3.0, "{observed}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_observe_is_a_reload_and_lets_held_mail_go() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping = shaping(SHAPING);
    })
    .await;
    offer_burst(&h, 40).await;
    eventually("the hour's floor relayed", || h.sink.count() >= 20).await;
    assert!(h.service.shaping("primary").unwrap().queued >= 15);
    let mut config = crate::support::test_config(h.spool.path(), h.sink.address);
    config.gateways[0].shaping = shaping(&format!("{SHAPING}\nmode = \"observe\""));
    h.service.reload(config).await.unwrap();
    eventually("the held mail relayed once observing", || {
        h.sink.count() == 40
    })
    .await;
    h.shutdown().await;
}
