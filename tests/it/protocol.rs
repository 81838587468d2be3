//! The inbound hard edges over real TCP: SMTP smuggling, line and size
//! limits, timeouts, error and connection limits, client networks, address
//! syntax. Each answer is checked for its code and enhanced status.

use std::time::Duration;

use smtp_shaper::config::units::parse_allowance;

use crate::support::{self, Client, Harness, eventually, fetch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_sequences_never_split_a_transaction() {
    let h = Harness::start().await;
    let variants: [&[u8]; 9] = [
        b"\n.\n",
        b"\r.\r",
        b"\r.\n",
        b"\n.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\0.\r\n",
    ];
    for fake_end in variants {
        let mut client = h.client().await;
        assert_eq!(
            client.command("MAIL FROM:<app@example.com>").await.code,
            250
        );
        assert_eq!(client.command("RCPT TO:<real@example.org>").await.code, 250);
        assert_eq!(client.command("DATA").await.code, 354);
        let mut payload = b"Subject: innocent\r\n\r\nhello".to_vec();
        payload.extend_from_slice(fake_end);
        payload.extend_from_slice(b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nforged\r\n.\r\n");
        client.send_raw(&payload).await;
        let reply = client
            .reply()
            .await
            .expect("one reply for the whole payload");
        assert_eq!(reply.code, 554, "{fake_end:?}: {reply:?}");
        assert!(reply.text.starts_with("5.6.0"), "{reply:?}");
        // The session is still in sync: exactly one reply was owed.
        let noop = client.command("NOOP").await;
        assert_eq!(noop.code, 250, "{fake_end:?}: out of sync, got {noop:?}");
    }
    // Nothing of those payloads was relayed; a normal message still is.
    let mut client = h.client().await;
    client
        .accepted(
            "app@example.com",
            &["ok@example.org"],
            b"Subject: fine\r\n\r\nx\r\n",
        )
        .await;
    eventually("the normal message", || h.sink.count() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.sink.count(), 1);
    assert_eq!(h.sink.messages()[0].recipients, vec!["ok@example.org"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_line_ends_and_nul_in_commands_are_refused() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    client.send_raw(b"NOOP\n").await;
    let reply = client.reply().await.unwrap();
    assert_eq!((reply.code, &reply.text[..5]), (500, "5.5.2"), "{reply:?}");
    client.send_raw(b"NO\rOP\r\n").await;
    assert_eq!(client.reply().await.unwrap().code, 500);
    client.send_raw(b"NOOP\0\r\n").await;
    assert_eq!(client.reply().await.unwrap().code, 500);
    // A bare LF cannot start a second command inside one line.
    client
        .send_raw(b"RSET\nMAIL FROM:<a@example.com>\r\n")
        .await;
    assert_eq!(client.reply().await.unwrap().code, 500);
    assert_eq!(client.reply().await.unwrap().code, 250);
    drop(client);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_lines_are_limited_to_512_octets() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let fits = format!("NOOP {}", "a".repeat(505));
    assert_eq!(fits.len() + 2, 512);
    assert_eq!(client.command(&fits).await.code, 250);
    let reply = client.command(&format!("NOOP {}", "a".repeat(506))).await;
    assert_eq!((reply.code, &reply.text[..5]), (500, "5.5.2"), "{reply:?}");
    let reply = client
        .command(&format!("NOOP {}", "a".repeat(100_000)))
        .await;
    assert_eq!(reply.code, 500);
    assert_eq!(client.command("NOOP").await.code, 250);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_are_limited_to_1000_octets() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'y'; 999]);
    body.extend_from_slice(b"\r\n");
    let reply = client
        .send_message("app@example.com", &["a@example.org"], &body)
        .await;
    assert_eq!((reply.code, &reply.text[..5]), (554, "5.6.0"), "{reply:?}");
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'y'; 998]);
    body.extend_from_slice(b"\r\n");
    client
        .accepted("app@example.com", &["a@example.org"], &body)
        .await;
    eventually("the 998-octet line", || h.sink.count() == 1).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_per_message_are_limited() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    assert_eq!(
        client.command("MAIL FROM:<app@example.com>").await.code,
        250
    );
    for n in 0..100 {
        assert_eq!(
            client
                .command(&format!("RCPT TO:<r{n}@example.org>"))
                .await
                .code,
            250
        );
    }
    let reply = client.command("RCPT TO:<r100@example.org>").await;
    assert_eq!((reply.code, &reply.text[..5]), (452, "4.5.3"), "{reply:?}");
    assert_eq!(client.command("DATA").await.code, 354);
    client.send_raw(b"Subject: many\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(client.reply().await.unwrap().code, 250);
    eventually("one message with 100 recipients", || h.sink.count() == 1).await;
    assert_eq!(h.sink.messages()[0].recipients.len(), 100);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_is_limited_at_mail_and_at_data() {
    let h = Harness::with(|config| config.server.max_message_size = 10_000).await;
    let mut client = h.client().await;
    let reply = client
        .command("MAIL FROM:<app@example.com> SIZE=10001")
        .await;
    assert_eq!((reply.code, &reply.text[..5]), (552, "5.3.4"), "{reply:?}");
    assert_eq!(
        client
            .command("MAIL FROM:<app@example.com> SIZE=500")
            .await
            .code,
        250
    );
    assert_eq!(client.command("RCPT TO:<a@example.org>").await.code, 250);
    assert_eq!(client.command("DATA").await.code, 354);
    let mut body = Vec::new();
    for _ in 0..200 {
        body.extend_from_slice(&[b'z'; 98]);
        body.extend_from_slice(b"\r\n");
    }
    client.send_raw(&support::stuff(&body)).await;
    let reply = client.reply().await.unwrap();
    assert_eq!((reply.code, &reply.text[..5]), (552, "5.3.4"), "{reply:?}");
    assert_eq!(client.command("NOOP").await.code, 250);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_disconnected_with_421() {
    let h = Harness::with(|config| config.server.idle_timeout = Duration::from_millis(300)).await;
    let mut client = h.client().await;
    let reply = client.reply().await.expect("a 421 before the close");
    assert_eq!((reply.code, &reply.text[..5]), (421, "4.4.2"), "{reply:?}");
    assert!(client.is_closed().await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_data_phase_times_out() {
    let h = Harness::with(|config| config.server.data_timeout = Duration::from_millis(300)).await;
    let mut client = h.client().await;
    assert_eq!(
        client.command("MAIL FROM:<app@example.com>").await.code,
        250
    );
    assert_eq!(client.command("RCPT TO:<a@example.org>").await.code, 250);
    assert_eq!(client.command("DATA").await.code, 354);
    client.send_raw(b"Subject: half\r\n\r\npartial").await;
    let reply = client.reply().await.expect("a 421 before the close");
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(client.is_closed().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.sink.count(), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_errors_close_the_session() {
    let h = Harness::with(|config| config.server.max_errors = 5).await;
    let mut client = h.client().await;
    for _ in 0..4 {
        assert_eq!(client.command("BOGUS").await.code, 500);
    }
    let reply = client.command("BOGUS").await;
    assert_eq!((reply.code, &reply.text[..5]), (421, "4.7.0"), "{reply:?}");
    assert!(client.is_closed().await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_421() {
    let h = Harness::with(|config| config.server.max_connections = 2).await;
    let _first = h.client().await;
    let _second = h.client().await;
    let (mut third, greeting) = Client::connect(h.service.smtp_address()).await;
    assert_eq!(
        (greeting.code, &greeting.text[..5]),
        (421, "4.7.0"),
        "{greeting:?}"
    );
    assert!(third.is_closed().await);
    drop(_first);
    let mut fourth = None;
    for _ in 0..100 {
        let (client, greeting) = Client::connect(h.service.smtp_address()).await;
        if greeting.code == 220 {
            fourth = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fourth.is_some(), "a slot frees up when a client leaves");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_allowed_networks_get_554() {
    let h = Harness::with(|config| {
        config.server.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()]
    })
    .await;
    let (mut client, greeting) = Client::connect(h.service.smtp_address()).await;
    assert_eq!(
        (greeting.code, &greeting.text[..5]),
        (554, "5.7.1"),
        "{greeting:?}"
    );
    assert!(client.is_closed().await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_addresses_get_501() {
    let h = Harness::with(|config| config.server.max_errors = 100).await;
    let mut client = h.client().await;
    let reply = client.command("MAIL FROM:<a>b@example.com>").await;
    assert_eq!((reply.code, &reply.text[..5]), (501, "5.1.7"), "{reply:?}");
    assert_eq!(
        client.command("MAIL FROM:<app@example.com>").await.code,
        250
    );
    for line in [
        "RCPT TO:<a>b@example.org>",
        "RCPT TO:<a\tb@example.org>",
        "RCPT TO:<noatsign>",
        "RCPT TO:<a@example.org",
        "RCPT TO:<a b@example.org>",
    ] {
        let reply = client.command(line).await;
        assert_eq!(
            (reply.code, &reply.text[..5]),
            (501, "5.1.3"),
            "{line}: {reply:?}"
        );
    }
    for raw in [
        &b"RCPT TO:<a\rb@example.org>\r\n"[..],
        b"RCPT TO:<a\0b@example.org>\r\n",
    ] {
        client.send_raw(raw).await;
        let reply = client.reply().await.unwrap();
        assert_eq!(
            (reply.code, &reply.text[..5]),
            (501, "5.1.3"),
            "{raw:?}: {reply:?}"
        );
    }
    // A bare LF ends nothing: the address is refused, and what follows the LF
    // is not taken for a recipient either.
    client.send_raw(b"RCPT TO:<a\nb@example.org>\r\n").await;
    let reply = client.reply().await.unwrap();
    assert_eq!((reply.code, &reply.text[..5]), (501, "5.1.3"), "{reply:?}");
    assert_eq!(client.reply().await.unwrap().code, 500);
    client.send_raw(b"MAIL FROM:<a\rb@example.com>\r\n").await;
    let reply = client.reply().await.unwrap();
    assert_eq!((reply.code, &reply.text[..5]), (501, "5.1.7"), "{reply:?}");
    let reply = client.command("RCPT TO:<a@example.org> NOTIFY=NEVER").await;
    assert_eq!((reply.code, &reply.text[..5]), (555, "5.5.4"), "{reply:?}");
    drop(client);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_the_service_commands() {
    let h = Harness::start().await;
    let (mut client, greeting) = Client::connect(h.service.smtp_address()).await;
    assert_eq!(greeting.code, 220);
    assert!(
        greeting.text.starts_with("shaper.test ESMTP"),
        "{greeting:?}"
    );
    client.send_raw(b"EHLO app.test\r\n").await;
    let mut ehlo = Vec::new();
    loop {
        let mut line = String::new();
        // Multi-line: collect the keywords.
        let reply = client.reply_line(&mut line).await;
        ehlo.push(line.trim_end().to_string());
        if reply {
            break;
        }
    }
    for keyword in [
        "PIPELINING",
        "8BITMIME",
        "SIZE 26214400",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(
            ehlo.iter().any(|line| line[4..] == *keyword),
            "{keyword} missing in {ehlo:?}"
        );
    }
    assert_eq!(client.command("VRFY someone").await.code, 252);
    assert_eq!(client.command("HELP").await.code, 214);
    let reply = client.command("EXPN list").await;
    assert_eq!((reply.code, &reply.text[..5]), (502, "5.5.1"));
    assert_eq!(client.command("HELO app.test").await.code, 250);
    let reply = client
        .command("MAIL FROM:<a@example.com> BODY=8BITMIME")
        .await;
    assert_eq!(reply.code, 555, "MAIL parameters need EHLO: {reply:?}");
    assert_eq!(client.command("RSET").await.code, 250);
    assert_eq!(client.command("QUIT").await.code, 221);
    assert!(client.is_closed().await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transactions_get_their_replies_in_order() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    client
        .send_raw(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<bad>\r\nDATA\r\n",
        )
        .await;
    let codes = client.reply_codes(4).await;
    assert_eq!(codes, vec![250, 250, 501, 354]);
    client.send_raw(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@example.com>\r\nRCPT TO:<y@example.org>\r\nDATA\r\n").await;
    let codes = client.reply_codes(4).await;
    assert_eq!(codes, vec![250, 250, 250, 354]);
    client.send_raw(b"second\r\n.\r\nQUIT\r\n").await;
    assert_eq!(client.reply().await.unwrap().code, 250);
    assert_eq!(client.reply().await.unwrap().code, 221);
    eventually("two messages", || h.sink.count() == 2).await;
    h.shutdown().await;
}

/// Connects, says EHLO (and optionally opens DATA), then trickles `byte`
/// every 50 ms from a second task; returns the first reply line read after
/// the trickle began.
async fn trickle(h: &Harness, in_data: bool) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(h.service.smtp_address())
        .await
        .unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    let read_reply = async |reader: &mut BufReader<_>, line: &mut String| {
        loop {
            line.clear();
            reader.read_line(line).await.unwrap();
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    };
    read_reply(&mut reader, &mut line).await;
    writer.write_all(b"EHLO app.test\r\n").await.unwrap();
    read_reply(&mut reader, &mut line).await;
    if in_data {
        writer
            .write_all(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
            .await
            .unwrap();
        for _ in 0..3 {
            read_reply(&mut reader, &mut line).await;
        }
        assert!(line.starts_with("354"), "{line}");
    }
    let writer_task = tokio::spawn(async move {
        loop {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    line.clear();
    tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
        .await
        .expect("cut off within 30 s")
        .unwrap();
    writer_task.abort();
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_is_cut_off_in_commands_and_in_data() {
    let h = Harness::with(|config| {
        config.server.command_deadline = Duration::from_millis(500);
        config.server.data_deadline = Duration::from_millis(500);
    })
    .await;
    // One byte every 50 ms: never silent for idle_timeout (5m), never done.
    let in_command = trickle(&h, false).await;
    assert!(in_command.starts_with("421 4.4.2"), "{in_command:?}");
    let in_data = trickle(&h, true).await;
    assert!(in_data.starts_with("421 4.4.2"), "{in_data:?}");
    assert_eq!(h.sink.count(), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_gets_only_its_share_of_connections() {
    let h = Harness::with(|config| {
        config.server.max_connections_per_client = 2;
        // Loopback is exempt by default (see below).
        config.server.limit_exempt_networks = Vec::new();
    })
    .await;
    let _first = h.client().await;
    let _second = h.client().await;
    let (mut third, greeting) = support::Client::connect(h.service.smtp_address()).await;
    assert_eq!(
        (greeting.code, &greeting.text[..5]),
        (421, "4.7.0"),
        "{greeting:?}"
    );
    assert!(
        greeting
            .text
            .contains("too many connections from 127.0.0.1")
    );
    assert!(third.is_closed().await);
    drop(_first);
    // A slot is free again once a session ends.
    support::eventually_async("a new connection is greeted", || async {
        support::Client::connect(h.service.smtp_address())
            .await
            .1
            .code
            == 220
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_on_loopback_are_not_held_to_the_per_client_limits() {
    let h = Harness::with(|config| {
        config.server.max_connections_per_client = 2;
        config.server.client_connection_rate = parse_allowance("3/h").unwrap();
    })
    .await;
    // A hundred threads of one app beside the sidecar: not an attacker.
    let mut open = Vec::new();
    for _ in 0..10 {
        let (client, greeting) = support::Client::connect(h.service.smtp_address()).await;
        assert_eq!(greeting.code, 220, "{greeting:?}");
        open.push(client);
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_relay_probes_are_refused_or_go_only_to_the_gateway() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    // The classic relay-test forms, against an IP literal and a host name.
    let probes = [
        "victim@external.test",
        "victim%external.test@shaper.test",
        "victim%external.test@[127.0.0.1]",
        "\"victim@external.test\"",
        "\"victim@external.test\"@shaper.test",
        "\"victim%external.test\"@shaper.test",
        "@shaper.test:victim@external.test",
        "@[127.0.0.1]:victim@external.test",
        "external.test!victim",
        "external.test!victim@shaper.test",
        "external.test!victim@[127.0.0.1]",
        "victim@external.test@shaper.test",
        "victim@[127.0.0.1]",
        "victim@external.test.",
        "victim",
        "<victim@external.test>",
    ];
    let mut relayed = 0;
    for probe in probes {
        assert_eq!(
            client.command("MAIL FROM:<probe@example.com>").await.code,
            250
        );
        let reply = client.command(&format!("RCPT TO:<{probe}>")).await;
        if reply.code == 250 {
            assert_eq!(client.command("DATA").await.code, 354);
            client
                .send_raw(b"Subject: probe\r\n\r\nprobe\r\n.\r\n")
                .await;
            assert_eq!(client.reply().await.unwrap().code, 250);
            relayed += 1;
        } else {
            assert!((500..600).contains(&reply.code), "{probe}: {reply:?}");
            assert_eq!(client.command("RSET").await.code, 250);
        }
    }
    eventually("the accepted probes at the one configured gateway", || {
        h.sink.count() == relayed
    })
    .await;
    for message in h.sink.messages() {
        // Passed on as a plain address, exactly as received (source routes
        // dropped): the gateway, not the proxy, decides what it means.
        assert!(
            !message.recipients[0].starts_with('@'),
            "{:?}",
            message.recipients
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_too_often_is_refused_421_others_are_not() {
    let h = Harness::with(|config| {
        config.server.client_connection_rate = parse_allowance("3/h").unwrap();
        config.server.limit_exempt_networks = Vec::new();
    })
    .await;
    let address = h.service.smtp_address();
    for _ in 0..3 {
        let (mut client, greeting) = Client::connect(address).await;
        assert_eq!(greeting.code, 220, "{greeting:?}");
        assert_eq!(client.command("QUIT").await.code, 221);
    }
    let (mut refused, greeting) = Client::connect(address).await;
    assert_eq!(
        (greeting.code, &greeting.text[..5]),
        (421, "4.7.0"),
        "{greeting:?}"
    );
    assert!(greeting.text.contains("connection rate"), "{greeting:?}");
    assert!(refused.is_closed().await);
    let (_other, greeting) = Client::connect_from("127.0.0.2".parse().unwrap(), address).await;
    assert_eq!(greeting.code, 220, "another address has its own allowance");
    let metrics = fetch(h.service.http_address().unwrap(), "GET", "/metrics", None)
        .await
        .body;
    assert!(
        metrics.contains("smtp_shaper_rejections_total{reason=\"connection_rate\"} 1\n"),
        "{metrics}"
    );
    h.shutdown().await;
}

/// A client outside `limit_exempt_networks` that talks before the greeting
/// is a bot, not a mail client (Postfix's postscreen PREGREET): refused and
/// closed. One that waits is greeted as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_talker_is_refused_before_the_greeting() {
    let h = Harness::with(|config| {
        config.server.limit_exempt_networks = Vec::new();
        config.server.pregreet_wait = Duration::from_millis(300);
    })
    .await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(h.service.smtp_address())
        .await
        .unwrap();
    stream.write_all(b"EHLO bot.test\r\n").await.unwrap();
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("554 5.5.1"), "{line:?}");
    line.clear();
    assert_eq!(reader.read_line(&mut line).await.unwrap(), 0, "closed");
    let reply = h
        .client()
        .await
        .offer(
            "app@example.com",
            "a@example.org",
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(reply.code, 250, "a client that waits is served");
    h.shutdown().await;
}

/// The body sent before the 354 (a whole transaction in one write) is
/// refused and the connection closed: nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_data_before_the_354_is_refused() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    client
        .send_raw(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: early\r\n\r\nhello\r\n.\r\n")
        .await;
    assert_eq!(client.reply().await.unwrap().code, 250);
    assert_eq!(client.reply().await.unwrap().code, 250);
    let refused = client.reply().await.unwrap();
    assert_eq!(refused.code, 554, "{refused:?}");
    assert!(refused.text.starts_with("5.5.0"), "{refused:?}");
    assert!(client.reply().await.is_none(), "closed");
    assert_eq!(h.sink.count(), 0);
    assert_eq!(h.service.queued("primary"), 0);
    h.shutdown().await;
}
