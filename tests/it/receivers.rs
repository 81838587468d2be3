//! Each receiver's own budget over real loopback TCP: a burst to Gmail from
//! a gateway busy with Microsoft is held to Google's floors while the mail
//! to Microsoft and to everyone else flows, a message to several receivers
//! leaves as one transaction per receiver, and a restart keeps the counts.
//! The rule itself is tested on a fake clock in `src/shaper/receivers`.

use smtp_shaper::config::Config;

use crate::support::{Client, Sink, eventually, shaping, start, test_config};

const APP: &str = "hr@example.com";
const BODY: &[u8] = b"Subject: your application\r\n\r\nhello\r\n";

/// Budgets far above the test's load for the total; each receiver's hour
/// floor 5.
fn config(spool: &std::path::Path, sink: &Sink) -> Config {
    let mut config = test_config(spool, sink.address);
    config.gateways[0].shaping = shaping(
        "initial_rate = \"600/min\"\nmin_rate = [\"600/min\", \"10000/h\", \"100000/day\"]\n\
         max_rate = \"600/min\"\nburst = 50\nreceiver_min_rate = [\"5/h\", \"1000/day\"]",
    );
    config
}

/// Messages the sink got with a recipient at `domain`.
fn delivered_to(sink: &Sink, domain: &str) -> usize {
    sink.messages()
        .iter()
        .filter(|message| {
            message.recipients.iter().any(|to| {
                to.ends_with(&format!("@{domain}>")) || to.ends_with(&format!("@{domain}"))
            })
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_gmail_is_held_to_google_s_floor_while_other_receivers_flow_and_a_restart_keeps_it()
 {
    let sink = Sink::start().await;
    let spool = tempfile::tempdir().unwrap();
    let service = start(config(spool.path(), &sink)).await;
    let mut client = Client::ready(service.smtp_address()).await;
    // The HR app mails eight candidates at gmail.com: all accepted, held.
    for index in 0..8 {
        let to = format!("candidate{index}@gmail.com");
        let reply = client.send_message(APP, &[&to], BODY).await;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    // Behind it, mail to Microsoft and one message to three receivers.
    for index in 0..3 {
        let to = format!("staff{index}@outlook.com");
        assert_eq!(client.send_message(APP, &[&to], BODY).await.code, 250);
    }
    let split = client
        .send_message(
            APP,
            &[
                "late@gmail.com",
                "team@hotmail.co.uk",
                "partner@example.org",
            ],
            BODY,
        )
        .await;
    assert_eq!(split.code, 250, "{split:?}");
    let ids: Vec<&str> = split
        .text
        .split_once("queued as ")
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(ids.len(), 3, "one queue id per receiver: {split:?}");
    drop(client);

    // Microsoft's four and the other receiver's one leave, not behind the
    // gmail run; Gmail gets its hour floor.
    eventually(
        "microsoft's and the other receiver's mail delivered",
        || {
            delivered_to(&sink, "outlook.com") == 3
                && delivered_to(&sink, "hotmail.co.uk") == 1
                && delivered_to(&sink, "example.org") == 1
        },
    )
    .await;
    eventually("gmail's hour floor delivered", || {
        delivered_to(&sink, "gmail.com") == 5
    })
    .await;
    // One upstream transaction per receiver: no message mixes them.
    for message in sink.messages() {
        let domains: std::collections::HashSet<&str> = message
            .recipients
            .iter()
            .map(|to| to.rsplit_once('@').unwrap().1)
            .collect();
        assert_eq!(domains.len(), 1, "{:?}", message.recipients);
    }
    let view = service.shaping("primary").unwrap();
    let google = &view.model.receivers[0];
    assert_eq!(google.name, "google");
    assert!(google.held);
    assert_eq!(
        (google.budgets[0].sent, google.budgets[0].allowance),
        (5, 5)
    );
    assert_eq!(view.receivers[0], 4, "four gmail messages held");
    assert_eq!(view.model.receivers[1].budgets[0].sent, 4, "microsoft");
    service.shutdown().await;

    // After a restart Google's hour is still used up: the four stay held,
    // and Microsoft's mail still goes.
    let service = start(config(spool.path(), &sink)).await;
    let view = service.shaping("primary").unwrap();
    assert!(
        view.model.receivers[0].budgets[0].sent >= 5,
        "google's count is kept: {:?}",
        view.model.receivers[0]
    );
    assert_eq!(view.receivers[0], 4);
    let mut client = Client::ready(service.smtp_address()).await;
    assert_eq!(
        client
            .send_message(APP, &["staff9@outlook.com"], BODY)
            .await
            .code,
        250
    );
    drop(client);
    eventually("microsoft's mail goes after the restart", || {
        delivered_to(&sink, "outlook.com") == 4
    })
    .await;
    assert_eq!(delivered_to(&sink, "gmail.com"), 5);
    assert_eq!(service.shaping("primary").unwrap().receivers[0], 4);
    service.shutdown().await;
}
