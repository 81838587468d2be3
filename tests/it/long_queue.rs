//! A queue longer than `spool.active_limit`: envelopes past it wait as
//! references to their spool records, are listed a page at a time, survive
//! a restart that way, and are delivered in order, each once.

use smtp_shaper::telemetry::client::encode;

use crate::support::{
    self, Client, Harness, Sink, eventually, fetch, sample_in, start, test_config,
};

const BODY: &[u8] = b"Subject: long queue\r\n\r\nqueued\r\n";

/// The ids on a text page of `queue list`, and its last line.
fn page_ids(body: &str) -> (Vec<String>, String) {
    let mut ids = Vec::new();
    let mut footer = String::new();
    for line in body.lines() {
        match line.strip_prefix("-- ") {
            Some(rest) => footer = rest.to_string(),
            None => ids.push(line.split_whitespace().next().unwrap().to_string()),
        }
    }
    (ids, footer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_past_its_active_limit_lists_restarts_and_drains_in_order() {
    let sink = Sink::start().await;
    let spool = tempfile::tempdir().unwrap();
    let configure = || {
        let mut config = test_config(spool.path(), sink.address);
        config.spool.active_limit = 5;
        // One connection: the order of delivery is the order of release.
        config.gateways[0].max_connections = 1;
        config
    };
    let service = start(configure()).await;
    let http = service.http_address().unwrap();
    let held = fetch(http, "POST", "/admin/gateways/primary/hold", None).await;
    assert_eq!(held.status, 200);
    let mut client = Client::ready(service.smtp_address()).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let to = format!("m{n:02}@example.org");
        ids.push(client.accepted("app@example.com", &[&to], BODY).await);
    }
    let status = fetch(http, "GET", "/metrics", None).await.body;
    assert_eq!(
        sample_in(&status, "smtp_shaper_queue_messages{gateway=\"primary\"}"),
        Some(40.0)
    );
    assert_eq!(
        sample_in(
            &status,
            "smtp_shaper_queue_parked_messages{gateway=\"primary\"}"
        ),
        Some(35.0),
        "all but the first 5 envelopes wait on disk"
    );
    let json = fetch(http, "GET", "/status", None).await.body;
    assert_eq!(
        support::json(&json)["gateways"][0]["queue"]["parked"],
        35,
        "{json}"
    );

    // Three pages of 15, oldest first, parked envelopes read back.
    let mut listed = Vec::new();
    let mut after = String::new();
    let mut footers = Vec::new();
    for _ in 0..3 {
        let path = format!("/admin/queue?limit=15{after}");
        let page = fetch(http, "GET", &path, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let (page_ids, footer) = page_ids(&page.body);
        assert!(
            page.body.contains("<app@example.com> -> <m"),
            "{}",
            page.body
        );
        after = format!("&after={}", page_ids.last().unwrap());
        listed.extend(page_ids);
        footers.push(footer);
    }
    assert_eq!(listed, ids, "every message once, in arrival order");
    assert_eq!(
        footers,
        vec![
            format!("15 shown of 40; next page: --after {}", ids[14]),
            format!("15 shown of 40; next page: --after {}", ids[29]),
            "10 shown of 40; last page".to_string(),
        ]
    );
    let refused = fetch(http, "GET", "/admin/queue?limit=0", None).await;
    assert_eq!(refused.status, 400, "{}", refused.body);

    // A parked message is shown and deleted like any other.
    let shown = fetch(http, "GET", &format!("/admin/queue/{}", ids[30]), None).await;
    assert!(shown.body.contains("Subject: long queue"), "{}", shown.body);
    let deleted = fetch(http, "DELETE", &format!("/admin/queue/{}", ids[30]), None).await;
    assert_eq!(deleted.body, format!("deleted {}\n", ids[30]));
    service.shutdown().await;

    // After a restart the queue is read back the same way, still held (the
    // hold is saved); once released, delivered in order, each message once,
    // the deleted one never.
    let service = start(configure()).await;
    let http = service.http_address().unwrap();
    let status = fetch(http, "GET", "/status", None).await.body;
    assert_eq!(support::json(&status)["gateways"][0]["queue"]["held"], true);
    let released = fetch(http, "POST", "/admin/gateways/primary/release", None).await;
    assert_eq!(released.status, 200);
    eventually("39 messages delivered", || {
        sink.received.lock().unwrap().len() >= 39
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let delivered: Vec<String> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|received| received.recipients.join(","))
        .collect();
    let expected: Vec<String> = (0..40)
        .filter(|n| *n != 30)
        .map(|n| format!("m{n:02}@example.org"))
        .collect();
    assert_eq!(delivered, expected);
    let metrics = fetch(http, "GET", "/metrics", None).await.body;
    assert_eq!(
        sample_in(
            &metrics,
            "smtp_shaper_queue_parked_messages{gateway=\"primary\"}"
        ),
        Some(0.0)
    );
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_a_page_at_a_time_oldest_first() {
    let h = Harness::start().await;
    let http = h.service.http_address().unwrap();
    let mut client = h.client().await;
    for n in 0..12 {
        let to = format!("gone{n:02}@example.org");
        h.sink
            .behavior
            .lock()
            .unwrap()
            .rcpt_replies
            .insert(to.clone(), "550 5.1.1 no such user".into());
        client.accepted("app@example.com", &[&to], BODY).await;
    }
    eventually("12 dead letters", || {
        crate::support::dead_letters(h.spool.path()).len() == 12
    })
    .await;
    let whole = fetch(http, "GET", "/admin/dead?limit=100", None).await.body;
    let all: Vec<&str> = whole.lines().collect();
    assert_eq!(all.len(), 12, "{whole}");
    let mut paged = Vec::new();
    let mut after = String::new();
    let mut footers = Vec::new();
    for _ in 0..3 {
        let page = fetch(http, "GET", &format!("/admin/dead?limit=4{after}"), None).await;
        let (names, footer) = page_ids(&page.body);
        after = format!("&after={}", encode(names.last().unwrap()));
        paged.extend(names);
        footers.push(footer);
    }
    assert_eq!(paged, all);
    assert_eq!(
        footers,
        vec![
            format!("4 shown of 12; next page: --after {}", all[3]),
            format!("4 shown of 12; next page: --after {}", all[7]),
            // A full last page says it is the last.
            "4 shown of 12; last page".to_string(),
        ]
    );
    // Oldest first: the names end in the time each was written.
    let written: Vec<u64> = all
        .iter()
        .map(|name| {
            let stem = name.strip_suffix(".eml").unwrap();
            stem.rsplit_once('.').unwrap().1.parse().unwrap()
        })
        .collect();
    assert!(written.windows(2).all(|pair| pair[0] <= pair[1]), "{all:?}");
    h.shutdown().await;
}
