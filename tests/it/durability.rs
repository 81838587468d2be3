//! Durability with the real binary: SIGKILL between 250 and delivery, SIGKILL
//! under load, SIGTERM. Whatever got 250 is delivered after a restart.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    self, Client, Harness, Sink, eventually, free_address, spawn, start, test_config, write_config,
    write_config_with,
};

fn body(tag: &str) -> Vec<u8> {
    format!("Subject: {tag}\r\nMessage-ID: <{tag}@app.test>\r\n\r\npayload {tag}\r\n.dot line\r\n")
        .into_bytes()
}

/// The Subject of each message the sink received.
fn subjects(sink: &Sink) -> HashSet<String> {
    sink.messages()
        .iter()
        .map(|message| {
            let text = String::from_utf8_lossy(&message.data).into_owned();
            let line = text
                .lines()
                .find(|line| line.starts_with("Subject: "))
                .unwrap()
                .to_string();
            line["Subject: ".len()..].to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_250_and_delivery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = free_address();
    let listen = free_address();
    let config = write_config(dir.path(), listen, gateway);
    let mut process = spawn(&config, listen).await;
    let mut client = Client::ready(process.address).await;
    let mut accepted = HashSet::new();
    for n in 0..50 {
        let tag = format!("queued-{n}");
        client
            .accepted("app@example.com", &["a@example.org"], &body(&tag))
            .await;
        accepted.insert(tag);
    }
    process.kill();

    let sink = Sink::start_on(gateway).await;
    let mut process = spawn(&config, listen).await;
    eventually("all 50 delivered after the restart", || sink.count() >= 50).await;
    assert_eq!(subjects(&sink), accepted);
    for message in sink.messages() {
        let tag = String::from_utf8_lossy(&message.data)
            .lines()
            .find(|l| l.starts_with("Subject: "))
            .unwrap()[9..]
            .to_string();
        assert_eq!(support::without_trace(&message.data), body(&tag));
    }
    process.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_that_got_250() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let listen = free_address();
    let config = write_config(dir.path(), listen, sink.address);
    let mut process = spawn(&config, listen).await;

    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let mut senders = Vec::new();
    for client_index in 0..8 {
        let accepted = accepted.clone();
        senders.push(tokio::spawn(async move {
            let mut client = Client::ready(listen).await;
            for n in 0.. {
                let tag = format!("load-{client_index}-{n}");
                // Raw steps so a killed server ends the loop instead of panicking.
                client
                    .send_raw(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n")
                    .await;
                let mut ok = true;
                for _ in 0..3 {
                    ok &= client.reply().await.is_some();
                }
                if !ok {
                    return;
                }
                client.send_raw(&support::stuff(&body(&tag))).await;
                match client.reply().await {
                    Some(reply) if reply.code == 250 => {
                        accepted.lock().unwrap().insert(tag);
                    }
                    _ => return,
                }
            }
        }));
    }
    eventually("some load accepted", || {
        accepted.lock().unwrap().len() >= 300
    })
    .await;
    process.kill();
    for sender in senders {
        let _ = sender.await;
    }
    let accepted = accepted.lock().unwrap().clone();

    let mut process = spawn(&config, listen).await;
    eventually("every message that got 250 is delivered", || {
        subjects(&sink).is_superset(&accepted)
    })
    .await;
    process.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_keeps_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = free_address();
    let listen = free_address();
    let config = write_config(dir.path(), listen, gateway);
    let mut process = spawn(&config, listen).await;
    let mut client = Client::ready(process.address).await;
    for n in 0..5 {
        client
            .accepted(
                "app@example.com",
                &["a@example.org"],
                &body(&format!("term-{n}")),
            )
            .await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The idle client is told the service is going away.
    let reply = client.reply().await.expect("421 on shutdown");
    assert_eq!((reply.code, &reply.text[..5]), (421, "4.3.2"), "{reply:?}");
    let exit = process.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM exits 0");

    let sink = Sink::start_on(gateway).await;
    let mut process = spawn(&config, listen).await;
    eventually("the 5 queued messages are delivered", || sink.count() == 5).await;
    process.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_in_flight_at_shutdown_may_finish() {
    let Harness {
        sink,
        spool,
        service,
    } = Harness::start().await;
    let address = service.smtp_address();
    let mut client = Client::ready(address).await;
    assert_eq!(
        client.command("MAIL FROM:<app@example.com>").await.code,
        250
    );
    assert_eq!(client.command("RCPT TO:<a@example.org>").await.code, 250);
    let stopping = tokio::spawn(service.shutdown());
    // New connections are no longer accepted once the listener is closed.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(address).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.command("DATA").await.code, 354);
    client
        .send_raw(b"Subject: last\r\n\r\nmade it\r\n.\r\n")
        .await;
    assert_eq!(client.reply().await.unwrap().code, 250);
    let reply = client.reply().await.expect("421 after the transaction");
    assert_eq!(reply.code, 421, "{reply:?}");
    stopping.await.unwrap();

    // Delivered before stopping, or kept for the next start.
    let service = start(test_config(spool.path(), sink.address)).await;
    eventually("the last message delivered", || sink.count() == 1).await;
    service.shutdown().await;
}

/// A session still in DATA when shutdown_grace is over is told 421 (not a
/// silent close): the message was never answered 250, the client sends it
/// again. And a second stop signal ends the wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_by_shutdown_is_told_421_and_a_second_signal_ends_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = free_address();
    let listen = free_address();
    let config = write_config(dir.path(), listen, gateway);
    // An hour's grace: only the second signal ends the wait in this test.
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1h\"");
    std::fs::write(&config, toml).unwrap();
    let mut process = spawn(&config, listen).await;
    let mut client = Client::ready(process.address).await;
    assert_eq!(
        client.command("MAIL FROM:<app@example.com>").await.code,
        250
    );
    assert_eq!(client.command("RCPT TO:<a@example.org>").await.code, 250);
    assert_eq!(client.command("DATA").await.code, 354);
    client.send_raw(b"Subject: half\r\n\r\nhalf a bo").await;
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &process.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-INT");
    // The first signal closes the listener and waits for the session (it
    // could finish its message).
    let mut stopped = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(listen).await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stopped, "the first signal stops accepting");
    signal("-INT");
    let reply = client.reply().await.expect("421 when the wait is cut");
    assert_eq!((reply.code, &reply.text[..5]), (421, "4.3.2"), "{reply:?}");
    assert!(reply.text.contains("message not accepted"), "{reply:?}");
    let exit = process.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// Offers message number `index` (the service may defer it at RCPT).
async fn offer_tagged(client: &mut Client, index: usize) -> support::ClientReply {
    client
        .offer(
            "app@example.com",
            "a@example.org",
            &body(&format!("m{index}")),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_cap_holds_across_sigkill() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_address();
    // An hour's wait at most: mail the cap holds for a day is refused at
    // RCPT, so what is accepted shows what the restarted service counts.
    let config = write_config_with(
        dir.path(),
        listen,
        sink.address,
        "limits = [\"4/day\"]\nmax_queue_delay = \"1h\"",
    );
    let mut process = spawn(&config, listen).await;
    let mut client = Client::ready(listen).await;
    for index in 0..3 {
        let reply = offer_tagged(&mut client, index).await;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    eventually("3 delivered", || sink.count() == 3).await;
    drop(client);
    process.kill();

    // The saved counts cover every send (plus at most the reserve of 1), so
    // after the crash at most one more fits in the day, and never two.
    let _process = spawn(&config, listen).await;
    let mut client = Client::ready(listen).await;
    let mut accepted = 0;
    let mut deferred = Vec::new();
    for index in 3..5 {
        let reply = offer_tagged(&mut client, index).await;
        match reply.code {
            250 => accepted += 1,
            _ => deferred.push(reply),
        }
    }
    assert!(accepted <= 1, "{accepted} accepted past a 4/day cap");
    assert!(
        deferred
            .iter()
            .all(|reply| reply.code == 451 && reply.text.contains("sending cap")),
        "{deferred:?}"
    );
    eventually("the accepted one delivered", || {
        sink.count() == 3 + accepted
    })
    .await;
}

/// A burst deferred at RCPT leaves one log line per deferral, naming the
/// reply sent (it once took two lines, one without the reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_deferral_is_one_log_line_naming_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = free_address();
    let listen = free_address();
    let config = write_config(dir.path(), listen, gateway);
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"10000/s\"", "\"60/min\"")
        .replace(
            "burst = 1000",
            "burst = 1\n        headroom = 1.0\n        max_queue_delay = \"3s\"",
        );
    std::fs::write(&config, toml).unwrap();
    let mut process = spawn(&config, listen).await;
    let mut deferred = 0;
    for chunk in 0..4 {
        let mut client = Client::ready(process.address).await;
        for n in 0..5 {
            let reply = client
                .offer(
                    "app@example.com",
                    &format!("u{chunk}-{n}@example.org"),
                    b"Subject: x\r\n\r\nx\r\n",
                )
                .await;
            match reply.code {
                250 => {}
                451 => deferred += 1,
                _ => panic!("{reply:?}"),
            }
        }
    }
    assert!(deferred >= 5, "the burst was deferred: {deferred}");
    process.kill();
    let log = std::fs::read_to_string(dir.path().join("smtp-shaper.log")).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("deferred"))
        .collect();
    assert_eq!(lines.len(), deferred, "{log}");
    assert!(
        lines.iter().all(|line| line.contains("451 4.7.1")),
        "{lines:?}"
    );
}
