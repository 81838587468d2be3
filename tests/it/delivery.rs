//! Delivery outcomes against a sink that misbehaves on purpose: 4xx, 5xx,
//! dropped connections, a gateway that is down and comes back, and a spool
//! that cannot be written.

use std::time::Duration;

use crate::support::{
    self, Behavior, Client, Harness, SilentGateway, Sink, eventually, fetch, free_address, start,
    test_config, without_trace,
};

const BODY: &[u8] = b"Subject: outcome\r\n\r\nhello\r\n";
const APP: &str = "app@example.com";

/// The finished dead letters' contents.
fn dead_letters(spool: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = crate::support::dead_letters(spool)
        .into_iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_a_temporary_failure() {
    let h = Harness::start().await;
    h.sink.behavior.lock().unwrap().data_replies.extend([
        "451 4.3.0 try again later".to_string(),
        "421 4.4.5 busy".to_string(),
    ]);
    h.client()
        .await
        .accepted(APP, &["a@example.org"], BODY)
        .await;
    eventually("delivered on the third attempt", || h.sink.count() == 1).await;
    assert_eq!(*h.sink.data_attempts.lock().unwrap(), 3);
    assert_eq!(without_trace(&h.sink.messages()[0].data), BODY);
    eventually("queue empty", || h.service.queued("primary") == 0).await;
    assert!(dead_letters(h.spool.path()).is_empty());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_go_to_the_dead_letter_area_per_recipient() {
    let h = Harness::start().await;
    h.sink
        .reply_to_rcpt("gone@example.org", "550 5.1.1 no such user");
    let id = h
        .client()
        .await
        .accepted(APP, &["ok@example.org", "gone@example.org"], BODY)
        .await;
    eventually("the good recipient is delivered", || h.sink.count() == 1).await;
    assert_eq!(h.sink.messages()[0].recipients, vec!["ok@example.org"]);
    eventually("one dead letter", || {
        dead_letters(h.spool.path()).len() == 1
    })
    .await;
    let dead = &dead_letters(h.spool.path())[0];
    assert!(
        dead.contains("X-Smtp-Shaper-Failed-Recipient: <gone@example.org>; 550 5.1.1 no such user"),
        "{dead}"
    );
    assert!(
        dead.contains(&format!("X-Smtp-Shaper-Queue-Id: {id}")),
        "{dead}"
    );
    assert!(dead.ends_with("\r\nhello\r\n"), "{dead}");
    assert!(!dead.contains("ok@example.org>;"), "{dead}");
    eventually("queue empty", || h.service.queued("primary") == 0).await;
    let Harness {
        sink,
        spool,
        service,
    } = h;
    service.shutdown().await;

    // A restart must not resurrect the finished message.
    let delivered = sink.count();
    let service = start(test_config(spool.path(), sink.address)).await;
    assert_eq!(service.queued("primary"), 0);
    service.shutdown().await;
    assert_eq!(sink.count(), delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_deferred_alone_is_retried_alone() {
    let h = Harness::start().await;
    h.sink
        .reply_to_rcpt("later@example.org", "450 4.2.1 mailbox busy");
    h.client()
        .await
        .accepted(APP, &["now@example.org", "later@example.org"], BODY)
        .await;
    eventually("first recipient delivered", || h.sink.count() == 1).await;
    h.sink.behavior.lock().unwrap().rcpt_replies.clear();
    eventually("second recipient delivered", || h.sink.count() == 2).await;
    let messages = h.sink.messages();
    assert_eq!(messages[0].recipients, vec!["now@example.org"]);
    assert_eq!(messages[1].recipients, vec!["later@example.org"]);
    eventually("queue empty", || h.service.queued("primary") == 0).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_down_then_up_delivers_everything() {
    let gateway = free_address();
    let spool = tempfile::tempdir().unwrap();
    let service = start(test_config(spool.path(), gateway)).await;
    let mut client = Client::ready(service.smtp_address()).await;
    for n in 0..20 {
        let body = format!("Subject: {n}\r\n\r\nwaiting\r\n");
        client
            .accepted(APP, &["a@example.org"], body.as_bytes())
            .await;
    }
    assert_eq!(service.queued("primary"), 20);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let sink = Sink::start_on(gateway).await;
    eventually("all 20 delivered after the gateway came up", || {
        sink.count() == 20
    })
    .await;
    assert!(dead_letters(spool.path()).is_empty());
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_gateway_gets_one_connection_attempt_per_pause_from_many_workers() {
    let silent = SilentGateway::start().await;
    let gateway = silent.address;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(spool.path(), gateway);
    let primary = &mut config.gateways[0];
    primary.max_connections = 10;
    primary.retry_initial = Duration::from_secs(1);
    primary.retry_max = Duration::from_secs(1);
    // How long a worker waits for the greeting that never comes.
    primary.command_timeout = Duration::from_millis(300);
    let service = start(config).await;
    let http = service.http_address().unwrap();
    // The first contact at start is one connection, over once /readyz says
    // the gateway was not reachable.
    for _ in 0..600 {
        let ready = fetch(http, "GET", "/readyz", None).await.body;
        if ready.contains("not reachable at start") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(silent.connections(), 1, "the first contact");

    // Held while the mail comes in, so the ten workers start together.
    fetch(http, "POST", "/admin/gateways/primary/hold", None).await;
    let mut client = Client::ready(service.smtp_address()).await;
    for n in 0..16 {
        let body = format!("Subject: {n}\r\n\r\nwaiting\r\n");
        client
            .accepted(APP, &["a@example.org"], body.as_bytes())
            .await;
    }
    fetch(http, "POST", "/admin/gateways/primary/release", None).await;
    eventually("the ten workers' attempts and three probes", || {
        silent.connections() >= 14
    })
    .await;
    let seen = silent.overlaps();
    assert!(
        seen[11..].iter().all(|open| *open == 0),
        "after the first contact and the first ten, one attempt at a time: {seen:?}"
    );

    silent.stop().await;
    let sink = Sink::start_on(gateway).await;
    eventually("all 16 delivered once the gateway is up", || {
        sink.count() == 16
    })
    .await;
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_during_data_is_retried() {
    let h = Harness::start().await;
    h.sink.behavior.lock().unwrap().drop_during_data = 2;
    h.client()
        .await
        .accepted(APP, &["a@example.org"], BODY)
        .await;
    eventually("delivered after two dropped connections", || {
        h.sink.count() == 1
    })
    .await;
    assert_eq!(without_trace(&h.sink.messages()[0].data), BODY);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_with_a_gateway_without_pipelining() {
    let h = Harness::start().await;
    h.sink.behavior.lock().unwrap().no_pipelining = true;
    h.sink
        .reply_to_rcpt("gone@example.org", "550 5.1.1 no such user");
    let mut client = h.client().await;
    for _ in 0..5 {
        client
            .accepted(
                APP,
                &["a@example.org", "gone@example.org", "b@example.org"],
                BODY,
            )
            .await;
    }
    eventually("5 messages", || h.sink.count() == 5).await;
    for message in h.sink.messages() {
        assert_eq!(message.recipients, vec!["a@example.org", "b@example.org"]);
    }
    eventually("5 dead letters", || dead_letters(h.spool.path()).len() == 5).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_max_age_are_dead_lettered() {
    let h = Harness::with(|config| config.gateways[0].max_age = std::time::Duration::from_secs(1))
        .await;
    h.sink
        .reply_to_rcpt("stuck@example.org", "451 4.7.1 greylisted");
    h.client()
        .await
        .accepted(APP, &["stuck@example.org"], BODY)
        .await;
    eventually("expired into the dead-letter area", || {
        dead_letters(h.spool.path()).len() == 1
    })
    .await;
    let dead = &dead_letters(h.spool.path())[0];
    assert!(dead.contains("expired after"), "{dead}");
    assert!(dead.contains("451 4.7.1 greylisted"), "{dead}");
    eventually("queue empty", || h.service.queued("primary") == 0).await;
    assert_eq!(h.sink.count(), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_write_failure_is_answered_452_never_250() {
    let gateway = free_address();
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(spool.path(), gateway);
    config.spool.segment_size = 64 * 1024;
    let service = start(config).await;
    let mut client = Client::ready(service.smtp_address()).await;
    let body = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "q".repeat(98)).repeat(400)
    );
    client
        .accepted(APP, &["a@example.org"], body.as_bytes())
        .await;
    // The next message needs a new spool file; make that impossible.
    let queue = spool.path().join("queue");
    let moved = spool.path().join("queue-moved");
    std::fs::rename(&queue, &moved).unwrap();
    std::fs::write(&queue, b"not a directory").unwrap();
    let reply = client
        .send_message(APP, &["a@example.org"], body.as_bytes())
        .await;
    assert_eq!((reply.code, &reply.text[..5]), (452, "4.3.1"), "{reply:?}");
    // The session goes on, and once storage works again so does the spool.
    std::fs::remove_file(&queue).unwrap();
    std::fs::rename(&moved, &queue).unwrap();
    client
        .accepted(APP, &["a@example.org"], body.as_bytes())
        .await;
    assert_eq!(service.queued("primary"), 2);
    drop(client);
    service.shutdown().await;
}

/// A gateway that answers the end of a message after `command_timeout`
/// (content scanning) gets it once: the end of data has its own, longer
/// wait (`data_reply_timeout`, RFC 5321's 10 minutes by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reply_to_the_end_of_data_is_waited_for_not_sent_again() {
    let h = Harness::with(|config| {
        config.gateways[0].command_timeout = Duration::from_millis(300);
        config.gateways[0].data_reply_timeout = Duration::from_secs(10);
    })
    .await;
    h.sink.behavior.lock().unwrap().data_reply_delay = Some(Duration::from_secs(1));
    let mut client = h.client().await;
    for n in 0..3 {
        client
            .accepted(APP, &[&format!("slow{n}@example.org")], BODY)
            .await;
    }
    // Settled (a message out for an attempt does not count as queued).
    support::eventually_async("three delivered", || async {
        h.sample("smtp_shaper_messages_relayed_total{gateway=\"primary\",result=\"delivered\"}")
            .await
            == 3.0
    })
    .await;
    assert_eq!(h.sink.count(), 3, "each message once");
    assert_eq!(*h.sink.data_attempts.lock().unwrap(), 3);
    assert_eq!(
        h.sample("smtp_shaper_upstream_outcome_unknown_total{gateway=\"primary\"}")
            .await,
        0.0
    );
    h.shutdown().await;
}

/// No reply to the end of data even within `data_reply_timeout`: the
/// outcome is unknown (the gateway took the message), so it is tried again,
/// counted and logged as a possible duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_to_the_end_of_data_is_an_unknown_outcome_tried_again() {
    let h = Harness::with(|config| {
        config.gateways[0].data_reply_timeout = Duration::from_millis(500);
    })
    .await;
    h.sink.behavior.lock().unwrap().data_reply_delay = Some(Duration::from_secs(2));
    h.client()
        .await
        .accepted(APP, &["unknown@example.org"], BODY)
        .await;
    support::eventually_async("an unknown outcome counted", || async {
        h.sample("smtp_shaper_upstream_outcome_unknown_total{gateway=\"primary\"}")
            .await
            >= 1.0
    })
    .await;
    // The gateway answers in time again: the retry is delivered.
    h.sink.behavior.lock().unwrap().data_reply_delay = None;
    // Settled (a message out for an attempt does not count as queued).
    support::eventually_async("delivered", || async {
        h.sample("smtp_shaper_messages_relayed_total{gateway=\"primary\",result=\"delivered\"}")
            .await
            == 1.0
    })
    .await;
    assert!(h.sink.count() >= 2, "taken at the first attempt and again");
    h.shutdown().await;
}

/// A gateway that answers MAIL and then closes (RFC 5321: a 421 closes the
/// connection) has said something: a throttling 421 cuts the ceiling and
/// is counted, and the message goes later; a 554 is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_read_before_the_gateway_closes_is_what_it_said() {
    let h = Harness::start().await;
    h.sink.behavior.lock().unwrap().mail_reply_then_close =
        Some("421 4.7.0 mx.test Service busy, try again later".into());
    h.client()
        .await
        .accepted(APP, &["a@example.org"], BODY)
        .await;
    eventually("delivered after the throttling", || h.sink.count() == 1).await;
    assert_eq!(
        h.sample("smtp_shaper_upstream_replies_total{class=\"4xx\",gateway=\"primary\"}")
            .await,
        1.0,
        "the 421 counted"
    );
    assert!(
        h.sample("smtp_shaper_backoff_penalty{gateway=\"primary\"}")
            .await
            < 1.0,
        "the throttling heard"
    );

    h.sink.behavior.lock().unwrap().mail_reply_then_close = Some("554 5.7.1 sender blocked".into());
    h.client()
        .await
        .accepted(APP, &["b@example.org"], BODY)
        .await;
    eventually("dead-lettered, not retried", || {
        dead_letters(h.spool.path()).len() == 1
    })
    .await;
    assert!(dead_letters(h.spool.path())[0].contains("554 5.7.1 sender blocked"));
    assert_eq!(h.sink.count(), 1, "never delivered");
    h.shutdown().await;
}

/// The same before any transaction: a greeting or an EHLO answered with a
/// throttling 421 and a close is counted and heard, and the mail goes on
/// the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greeting_or_ehlo_refused_before_the_gateway_closes_is_what_it_said() {
    let busy = "421 4.7.0 mx.test Too many connections, try again later";
    for (step, refuse) in [
        (
            "greeting",
            (&|b: &mut Behavior| b.greeting_then_close = Some(busy.into()))
                as &dyn Fn(&mut Behavior),
        ),
        ("EHLO", &|b: &mut Behavior| {
            b.ehlo_reply_then_close = Some(busy.into())
        }),
    ] {
        let h = Harness::start().await;
        // The service's first contact at start is not what is tested here.
        eventually("the first contact greeted", || {
            h.sink.behavior.lock().unwrap().greeted >= 1
        })
        .await;
        refuse(&mut h.sink.behavior.lock().unwrap());
        h.client()
            .await
            .accepted(APP, &["a@example.org"], BODY)
            .await;
        eventually("delivered on the next connection", || h.sink.count() == 1).await;
        assert_eq!(
            h.sample("smtp_shaper_upstream_replies_total{class=\"4xx\",gateway=\"primary\"}")
                .await,
            1.0,
            "the {step} 421 counted"
        );
        assert!(
            h.sample("smtp_shaper_backoff_penalty{gateway=\"primary\"}")
                .await
                < 1.0,
            "the {step} throttling heard"
        );
        h.shutdown().await;
    }
}
