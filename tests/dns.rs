//! Relay rule 4 preflight: `check-dns` on records given in a file, and the
//! DNS client against a UDP responder on loopback (never the internet).

use std::net::UdpSocket;
use std::process::Command;

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

/// Answers every query with one TXT record, like a resolver would.
fn answer_with_txt(socket: &UdpSocket, text: &str) {
    let mut buffer = [0u8; 512];
    let (len, from) = socket.recv_from(&mut buffer).unwrap();
    let mut response = buffer[..len].to_vec();
    // Drop the OPT record (the last 11 octets), mark as a response with one
    // answer and no additional records.
    response.truncate(len - 11);
    response[2] |= 0x80;
    response[6..8].copy_from_slice(&1u16.to_be_bytes());
    response[10..12].copy_from_slice(&0u16.to_be_bytes());
    response.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
    response.extend_from_slice(&((text.len() + 1) as u16).to_be_bytes());
    response.push(text.len() as u8);
    response.extend_from_slice(text.as_bytes());
    socket.send_to(&response, from).unwrap();
}

#[test]
fn the_dns_client_asks_over_udp() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = server.local_addr().unwrap();
    let responder = std::thread::spawn(move || answer_with_txt(&server, "v=spf1 -all"));
    let records = SystemResolver::at(address).txt("example.com").unwrap();
    assert_eq!(records, vec!["v=spf1 -all".to_string()]);
    responder.join().unwrap();
}
