//! Relaying through the service to a real SMTP sink over loopback:
//! byte-exact bodies, envelopes, routing and per-recipient outcomes.

use std::collections::HashMap;

use crate::support::{self, Client, Harness, Sink, eventually, start, without_trace};

/// A body with the shapes that break naive relays: dot lines, a lone dot line,
/// 8-bit text, a 998-octet line and empty lines.
fn tricky_body(index: usize) -> Vec<u8> {
    let mut body =
        format!("Subject: message {index}\r\nMessage-ID: <{index}@app.test>\r\n\r\n").into_bytes();
    body.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\n\r\n");
    body.extend_from_slice("8-bit: caf\u{e9} \u{fc}ber na\u{ef}ve \u{2603}\r\n".as_bytes());
    body.extend_from_slice(&vec![b'x'; 998]);
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(format!("end of {index}\r\n").as_bytes());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_hundreds_of_messages_byte_exact() {
    let h = Harness::start().await;
    let address = h.service.smtp_address();

    let mut clients = Vec::new();
    for client in 0..10 {
        clients.push(tokio::spawn(async move {
            let mut session = Client::ready(address).await;
            let mut ids = Vec::new();
            for n in 0..30 {
                let index = client * 30 + n;
                let id = session
                    .accepted(
                        "app@example.com",
                        &[&format!("user{index}@example.org")],
                        &tricky_body(index),
                    )
                    .await;
                ids.push((index, id));
            }
            ids
        }));
    }
    let mut ids = HashMap::new();
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    eventually("300 messages at the sink", || h.sink.count() == 300).await;
    for message in h.sink.messages() {
        let index: usize = message.recipients[0]
            .trim_start_matches("user")
            .trim_end_matches("@example.org")
            .parse()
            .unwrap();
        assert_eq!(
            message.mail_from.split('>').next().unwrap(),
            "<app@example.com"
        );
        assert!(message.mail_from.contains("BODY=8BITMIME") || !message.mail_from.contains("BODY"));
        assert_eq!(
            without_trace(&message.data),
            tricky_body(index),
            "message {index}"
        );
        let trace = String::from_utf8_lossy(&message.data[..200]);
        assert!(trace.contains(&format!("id {}", ids[&index])), "{trace}");
        assert!(
            trace.contains("by shaper.test (smtp-shaper) with ESMTP"),
            "{trace}"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_a_large_attachment_and_keeps_envelope_parameters() {
    let h = Harness::start().await;
    let mut client = h.client().await;

    // About 8 MiB of base64-like lines of 76 octets, plus 8-bit bytes.
    let mut body =
        b"Subject: attachment\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..110_000 {
        let line: Vec<u8> = (0..76)
            .map(|_| {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/."
                    [rng.usize(0..65)]
            })
            .collect();
        body.extend_from_slice(&line);
        body.extend_from_slice(b"\r\n");
    }
    assert_eq!(
        client
            .command("MAIL FROM:<app@example.com> BODY=8BITMIME SIZE=8500000")
            .await
            .code,
        250
    );
    assert_eq!(client.command("RCPT TO:<one@example.org>").await.code, 250);
    assert_eq!(client.command("RCPT TO:<two@example.org>").await.code, 250);
    assert_eq!(client.command("DATA").await.code, 354);
    client.send_raw(&support::stuff(&body)).await;
    assert_eq!(client.reply().await.unwrap().code, 250);

    assert_eq!(
        client
            .command("MAIL FROM:<\u{fc}ser@example.com> SMTPUTF8")
            .await
            .code,
        250
    );
    assert_eq!(
        client
            .command("RCPT TO:<\u{e9}l\u{e8}ve@example.org>")
            .await
            .code,
        250
    );
    assert_eq!(client.command("DATA").await.code, 354);
    client.send_raw(b"Subject: utf8\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(client.reply().await.unwrap().code, 250);

    eventually("both messages at the sink", || h.sink.count() == 2).await;
    let messages = h.sink.messages();
    let large = messages.iter().find(|m| m.recipients.len() == 2).unwrap();
    assert_eq!(without_trace(&large.data), body);
    assert!(
        large.mail_from.contains("BODY=8BITMIME"),
        "{}",
        large.mail_from
    );
    assert_eq!(large.recipients, vec!["one@example.org", "two@example.org"]);
    let utf8 = messages.iter().find(|m| m.recipients.len() == 1).unwrap();
    assert!(utf8.mail_from.contains("SMTPUTF8"), "{}", utf8.mail_from);
    assert_eq!(utf8.recipients, vec!["\u{e9}l\u{e8}ve@example.org"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_sender_domain_to_several_gateways() {
    let billing = Sink::start().await;
    let fallback = Sink::start().await;
    let spool = tempfile::tempdir().unwrap();
    let config = smtp_shaper::config::Config::parse(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [spool]
        dir = "{}"
        [http]
        listen = "127.0.0.1:0"
        [[gateways]]
        name = "billing"
        address = "{}"
        senders = ["billing.example.com", "*.invoices.example.com"]
        [[gateways]]
        name = "fallback"
        address = "{}"
        default = true
        "#,
        spool.path().display(),
        billing.address,
        fallback.address
    ))
    .unwrap();
    let service = start(config).await;
    let mut client = Client::ready(service.smtp_address()).await;
    for sender in [
        "a@billing.example.com",
        "b@eu.invoices.example.com",
        "c@example.com",
        "",
    ] {
        client
            .accepted(sender, &["x@example.org"], b"Subject: r\r\n\r\nx\r\n")
            .await;
    }
    eventually("4 messages routed", || {
        billing.count() + fallback.count() == 4
    })
    .await;
    let senders = |sink: &Sink| -> Vec<String> {
        let mut senders: Vec<String> = sink
            .messages()
            .iter()
            .map(|m| m.mail_from.split(' ').next().unwrap().to_string())
            .collect();
        senders.sort();
        senders
    };
    assert_eq!(
        senders(&billing),
        vec!["<a@billing.example.com>", "<b@eu.invoices.example.com>"]
    );
    assert_eq!(senders(&fallback), vec!["<>", "<c@example.com>"]);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_tricks_reach_the_gateway_as_plain_addresses() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    assert_eq!(
        client.command("MAIL FROM:<app@example.com>").await.code,
        250
    );
    for rcpt in [
        "RCPT TO:<user%elsewhere.test@example.org>",
        "RCPT TO:<elsewhere.test!user@example.org>",
        "RCPT TO:<\"user@elsewhere.test\"@example.org>",
        "RCPT TO:<@elsewhere.test,@relay.test:user@example.org>",
    ] {
        assert_eq!(client.command(rcpt).await.code, 250, "{rcpt}");
    }
    assert_eq!(client.command("DATA").await.code, 354);
    client.send_raw(b"Subject: tricks\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(client.reply().await.unwrap().code, 250);
    eventually("message at the sink", || h.sink.count() == 1).await;
    assert_eq!(
        h.sink.messages()[0].recipients,
        vec![
            "user%elsewhere.test@example.org",
            "elsewhere.test!user@example.org",
            "\"user@elsewhere.test\"@example.org",
            "user@example.org",
        ]
    );
    h.shutdown().await;
}
