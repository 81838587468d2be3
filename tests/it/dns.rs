//! Relay rule 4 preflight: `check-dns` on records given in a file, and the
//! DNS client against a UDP responder on loopback (never the internet).

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use smtp_shaper::dns::{Resolver, SystemResolver};

#[test]
fn check_dns_explains_a_zone_and_exits_by_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("zone.txt");
    std::fs::write(
        &zone,
        "example.com TXT \"v=spf1 include:_spf.example.com ~all\"\n\
         _spf.example.com TXT \"v=spf1 ip4:192.0.2.0/28 -all\"\n\
         _dmarc.example.com TXT \"v=DMARC1; p=reject\"\n\
         s1._domainkey.example.com TXT \"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"\n",
    )
    .unwrap();
    let run = |ip: &str| {
        Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
            .args(["check-dns", "--domain", "example.com", "--gateway-ip", ip])
            .args(["--dkim-selector", "s1", "--records"])
            .arg(&zone)
            .output()
            .unwrap()
    };
    let good = run("192.0.2.3");
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(
        text.contains(
            "SPF for the gateway 192.0.2.3: pass by ip4:192.0.2.0/28 (in include:_spf.example.com)"
        ),
        "{text}"
    );
    // ~all at the top: others only soft-fail, which is a problem to fix.
    assert!(text.contains("PROBLEM  SPF for anyone else"), "{text}");
    assert_eq!(good.status.code(), Some(1));
    let outside = run("192.0.2.200");
    let text = String::from_utf8_lossy(&outside.stdout);
    assert!(
        text.contains("SPF for the gateway 192.0.2.200: softfail by ~all"),
        "{text}"
    );
}

/// The answer a resolver would give to `query` (as the client sent it,
/// with its OPT record last): one TXT record.
fn reply(query: &[u8], text: &str) -> Vec<u8> {
    // Drop the OPT record (the last 11 octets), mark as a response with one
    // answer and no additional records.
    let mut response = query[..query.len() - 11].to_vec();
    response[2] |= 0x80;
    response[6..8].copy_from_slice(&1u16.to_be_bytes());
    response[10..12].copy_from_slice(&0u16.to_be_bytes());
    response.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
    response.extend_from_slice(&((text.len() + 1) as u16).to_be_bytes());
    response.push(text.len() as u8);
    response.extend_from_slice(text.as_bytes());
    response
}

/// Answers the next `count` queries on `socket` with what `answer` makes
/// of each, then ends.
fn respond(
    socket: UdpSocket,
    count: usize,
    answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        for _ in 0..count {
            let (len, from) = socket.recv_from(&mut buffer).unwrap();
            socket.send_to(&answer(&buffer[..len]), from).unwrap();
        }
    })
}

#[test]
fn the_dns_client_asks_over_udp() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = server.local_addr().unwrap();
    let responder = respond(server, 1, |query| reply(query, "v=spf1 -all"));
    let records = SystemResolver::at(address).txt("example.com").unwrap();
    assert_eq!(records, vec!["v=spf1 -all".to_string()]);
    responder.join().unwrap();
}

#[test]
fn replies_that_do_not_answer_the_query_are_ignored() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = server.local_addr().unwrap();
    let responder = std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        let (len, client) = server.recv_from(&mut buffer).unwrap();
        let query = buffer[..len].to_vec();
        let forged = reply(&query, "v=spf1 +all");
        // From another address than the resolver's.
        let elsewhere = UdpSocket::bind("127.0.0.2:0").unwrap();
        elsewhere.send_to(&forged, client).unwrap();
        let mut wrong_id = forged.clone();
        wrong_id[1] ^= 1;
        let mut not_a_response = forged.clone();
        not_a_response[2] &= 0x7F;
        // The same ID, for another name and for another type.
        let mut other_name = query.clone();
        other_name[13] = b'x';
        let mut other_type = query.clone();
        let kind = query.len() - 11 - 4;
        other_type[kind..kind + 2].copy_from_slice(&1u16.to_be_bytes());
        for spoofed in [
            wrong_id,
            not_a_response,
            reply(&other_name, "v=spf1 +all"),
            reply(&other_type, "v=spf1 +all"),
        ] {
            server.send_to(&spoofed, client).unwrap();
        }
        // The real answer comes last, and once: a client that gave up on
        // its query and sent another would wait for nothing.
        server
            .send_to(&reply(&query, "v=spf1 -all"), client)
            .unwrap();
    });
    let records = SystemResolver::at(address).txt("example.com").unwrap();
    assert_eq!(records, vec!["v=spf1 -all".to_string()]);
    responder.join().unwrap();
}

/// Sets the RCODE of a response.
fn with_rcode(mut response: Vec<u8>, rcode: u8) -> Vec<u8> {
    response[3] = (response[3] & 0xF0) | rcode;
    response
}

#[test]
fn every_nameserver_is_tried_in_turn() {
    let bind = || UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = bind();
    let closed = bind().local_addr().unwrap(); // the socket is gone
    let servfail = bind();
    let refused = bind();
    let good = bind();
    let servers = [
        silent.local_addr().unwrap(),
        closed,
        servfail.local_addr().unwrap(),
        refused.local_addr().unwrap(),
        good.local_addr().unwrap(),
    ];
    let responders = [
        respond(servfail, 1, |query| with_rcode(reply(query, ""), 2)),
        respond(refused, 1, |query| with_rcode(reply(query, ""), 5)),
        respond(good, 1, |query| reply(query, "v=spf1 -all")),
    ];
    let resolver =
        SystemResolver::with_servers(servers.to_vec()).with_timeout(Duration::from_millis(300));
    assert_eq!(resolver.txt("example.com").unwrap(), ["v=spf1 -all"]);
    for responder in responders {
        responder.join().unwrap();
    }
    // The first one was asked first, and not answering cost only its wait.
    silent.set_nonblocking(true).unwrap();
    assert!(silent.recv_from(&mut [0u8; 512]).is_ok());

    // None answers: the error says what each did, after two rounds.
    let servfail = bind();
    let servers = vec![silent.local_addr().unwrap(), servfail.local_addr().unwrap()];
    let responder = respond(servfail, 2, |query| with_rcode(reply(query, ""), 2));
    let error = SystemResolver::with_servers(servers.clone())
        .with_timeout(Duration::from_millis(200))
        .txt("example.com")
        .unwrap_err()
        .to_string();
    responder.join().unwrap();
    assert!(
        error.contains(&format!("{}: no answer within", servers[0]))
            && error.contains(&format!("{}: RCODE 2 (SERVFAIL)", servers[1])),
        "{error}"
    );
}

/// The response to `query` with no records and `rcode` (3: NXDOMAIN).
fn empty(query: &[u8], rcode: u8) -> Vec<u8> {
    let mut response = query[..query.len() - 11].to_vec();
    response[2] |= 0x80;
    response[10..12].copy_from_slice(&0u16.to_be_bytes());
    with_rcode(response, rcode)
}

/// `check-dns` asking a resolver on loopback that answers every query
/// with no records and `rcode`: its report.
fn check_dns_against(rcode: u8) -> String {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = server.local_addr().unwrap();
    // Answers until nobody has asked for a while (the command has ended).
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let responder = std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((len, from)) = server.recv_from(&mut buffer) {
            server.send_to(&empty(&buffer[..len], rcode), from).unwrap();
        }
    });
    let output = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(["check-dns", "--domain", "exmaple.com", "--gateway-ip"])
        .args(["192.0.2.25", "--dkim-selector", "s1", "--resolver"])
        .arg(address.to_string())
        .output()
        .unwrap();
    drop(responder);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_dns_tells_a_domain_that_does_not_exist_from_one_without_spf() {
    let text = check_dns_against(3);
    assert!(
        text.contains("exmaple.com does not exist in DNS (NXDOMAIN)"),
        "{text}"
    );
    assert!(!text.contains("no SPF record"), "{text}");
    let text = check_dns_against(0);
    assert!(
        text.contains("no SPF record (TXT \"v=spf1 ...\") at exmaple.com"),
        "{text}"
    );
    assert!(!text.contains("NXDOMAIN"), "{text}");
}

/// `check-dns --help` and the README say the same about which nameservers
/// are asked without `--resolver` (the help once said only the first).
#[test]
fn check_dns_help_and_the_readme_name_the_same_nameservers() {
    let help = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(["check-dns", "--help"])
        .output()
        .unwrap();
    let words = |text: &str| {
        text.replace('`', "")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let help = words(&String::from_utf8_lossy(&help.stdout));
    let readme =
        words(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap());
    let said = "every nameserver of /etc/resolv.conf, in turn: the next one when one does not \
                answer within 2 s or answers SERVFAIL or REFUSED, two rounds";
    assert!(help.contains(said), "check-dns --help: {help}");
    assert!(readme.contains(said), "README");
}
