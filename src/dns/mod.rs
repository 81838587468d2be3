//! A small DNS client for the sender-domain preflight (`check-dns`) and
//! the recipient domains' MX hosts ([`mx_cache`]): TXT, A/AAAA and MX
//! lookups through the system's resolvers (every `nameserver` of
//! /etc/resolv.conf, in turn), over UDP with EDNS0 and over TCP when an
//! answer is truncated. A reply counts only when its ID (random, from
//! `ring`), QR bit and question match the query; anything else is ignored
//! while the wait goes on. [`Resolver`] is the seam tests fill with records.

pub mod mx_cache;
pub mod wire;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use wire::{Record, RecordType, TimedRecord};

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The resolver could not be asked or did not answer (temporary).
    Failed(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::Failed(why) => write!(f, "DNS lookup failed: {why}"),
        }
    }
}

/// What a lookup found: the records of the kind asked for (perhaps none),
/// or that the name does not exist at all (NXDOMAIN, RCODE 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Records(Vec<T>),
    NoSuchName,
}

impl<T> Answer<T> {
    /// The records; a name that does not exist has none.
    pub fn records(self) -> Vec<T> {
        match self {
            Answer::Records(records) => records,
            Answer::NoSuchName => Vec::new(),
        }
    }
}

/// What an MX lookup found, with how long it may be believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxAnswer {
    /// The exchange hosts, most preferred first, each with its record's TTL
    /// in seconds.
    pub exchanges: Answer<(String, u32)>,
    /// When there are no exchanges (NXDOMAIN, or a name without MX): how
    /// many seconds that may be believed, if the server said (RFC 2308).
    pub negative_ttl: Option<u32>,
}

impl MxAnswer {
    /// The exchange hosts, most preferred first.
    pub fn hosts(self) -> Vec<String> {
        self.exchanges
            .records()
            .into_iter()
            .map(|(host, _)| host)
            .collect()
    }
}

/// The TTL [`Resolver::mx_answer`] gives records from a resolver that does
/// not know them (one implementing only [`Resolver::mx`]): an hour, as long
/// as the DMARC cache keeps its records.
pub const UNKNOWN_TTL: u32 = 3_600;

/// The lookups the checks make. A name that does not exist has no records
/// (an empty list), which is not an error; [`Resolver::txt_answer`] tells
/// it apart where that matters (a sender domain that does not exist is
/// another mistake than one without SPF).
pub trait Resolver {
    fn txt_answer(&self, name: &str) -> Result<Answer<String>, DnsError>;
    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self.txt_answer(name)?.records())
    }
    /// A and AAAA together.
    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError>;
    /// Exchange host names, most preferred first.
    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError>;
    /// The exchanges with their TTLs, and whether the name exists. A
    /// resolver that does not know TTLs need not say: its records are given
    /// [`UNKNOWN_TTL`], and a name without exchanges has no negative TTL.
    fn mx_answer(&self, name: &str) -> Result<MxAnswer, DnsError> {
        Ok(MxAnswer {
            exchanges: Answer::Records(
                self.mx(name)?
                    .into_iter()
                    .map(|host| (host, UNKNOWN_TTL))
                    .collect(),
            ),
            negative_ttl: None,
        })
    }
}

/// Asks recursive resolvers, one after another.
pub struct SystemResolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

/// Rounds over the servers, like the C library's `attempts:2` default.
const ATTEMPTS: usize = 2;

impl SystemResolver {
    /// Every `nameserver` of /etc/resolv.conf (127.0.0.53 if none).
    pub fn from_resolv_conf() -> SystemResolver {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        SystemResolver::with_servers(nameservers(&text))
    }

    /// A resolver at `server` (e.g. "9.9.9.9:53").
    pub fn at(server: SocketAddr) -> SystemResolver {
        SystemResolver::with_servers(vec![server])
    }

    /// Resolvers asked in this order: the next one when one does not answer
    /// in time or answers SERVFAIL or REFUSED (127.0.0.53 if none).
    pub fn with_servers(servers: Vec<SocketAddr>) -> SystemResolver {
        let servers = if servers.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 53], 53))]
        } else {
            servers
        };
        SystemResolver {
            servers,
            timeout: Duration::from_secs(2),
        }
    }

    /// How long to wait for each server's answer (2 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> SystemResolver {
        self.timeout = timeout;
        self
    }

    /// The servers asked, in order.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The first response that answers: RCODE 0 (no error) or 3 (no such
    /// name).
    fn ask(&self, name: &str, kind: RecordType) -> Result<wire::Response, DnsError> {
        let mut tried = Vec::new();
        for _round in 0..ATTEMPTS {
            // What each server did last is what the error tells.
            tried.clear();
            for &server in &self.servers {
                match self.ask_one(server, name, kind) {
                    Ok(response) => match response.rcode {
                        0 | 3 => return Ok(response),
                        // This server cannot answer now; another may.
                        2 | 5 => tried.push(format!("{server}: {}", rcode(response.rcode))),
                        code => {
                            return Err(DnsError::Failed(format!(
                                "{name} ({kind:?}) via {server}: the resolver answered {}",
                                rcode(code)
                            )));
                        }
                    },
                    Err(why) => tried.push(format!("{server}: {why}")),
                }
            }
        }
        Err(DnsError::Failed(format!(
            "{name} ({kind:?}): {}",
            tried.join("; ")
        )))
    }

    /// One query to `server`, on a socket of its own with a fresh ID, so
    /// that a late answer to an earlier try cannot be taken for this one.
    fn ask_one(
        &self,
        server: SocketAddr,
        name: &str,
        kind: RecordType,
    ) -> Result<wire::Response, String> {
        let id = query_id()?;
        let query = wire::query(id, name, kind);
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("valid")
        } else {
            "[::]:0".parse().expect("valid")
        };
        let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        // Connected: the kernel drops datagrams from any other address.
        socket.connect(server).map_err(|e| e.to_string())?;
        socket.send(&query).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.timeout;
        let no_answer = || format!("no answer within {:?}", self.timeout);
        let mut buffer = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(no_answer());
            }
            socket
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let len = match socket.recv(&mut buffer) {
                Ok(len) => len,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(no_answer());
                }
                Err(e) => return Err(e.to_string()),
            };
            // A reply to another query, or a forgery racing the real
            // answer: not an answer at all, so the real one is awaited.
            let Some(response) =
                wire::parse(&buffer[..len]).filter(|response| response.answers(id, name, kind))
            else {
                continue;
            };
            return if response.truncated {
                self.ask_tcp(server, &query, id, name, kind)
            } else {
                Ok(response)
            };
        }
    }

    fn ask_tcp(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        name: &str,
        kind: RecordType,
    ) -> Result<wire::Response, String> {
        let mut stream =
            TcpStream::connect_timeout(&server, self.timeout).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).map_err(|e| e.to_string())?;
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).map_err(|e| e.to_string())?;
        let mut message = vec![0u8; u16::from_be_bytes(length) as usize];
        stream.read_exact(&mut message).map_err(|e| e.to_string())?;
        wire::parse(&message)
            .filter(|response| response.answers(id, name, kind))
            .ok_or_else(|| "malformed or mismatched answer over TCP".to_string())
    }
}

/// The records of a response [`SystemResolver::ask`] returned, or that the
/// name does not exist.
fn answer(response: wire::Response) -> Answer<TimedRecord> {
    match response.rcode {
        3 => Answer::NoSuchName,
        _ => Answer::Records(response.records),
    }
}

/// A query ID nobody off the path can predict (RFC 5452 9.2).
fn query_id() -> Result<u16, String> {
    let bytes: [u8; 2] = ring::rand::generate(&SystemRandom::new())
        .map_err(|_| "the system gave no random bytes for a query ID".to_string())?
        .expose();
    Ok(u16::from_be_bytes(bytes))
}

/// What an RCODE means, for error messages.
fn rcode(code: u8) -> String {
    let meaning = match code {
        1 => "FORMERR",
        2 => "SERVFAIL",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => return format!("RCODE {code}"),
    };
    format!("RCODE {code} ({meaning})")
}

/// The `nameserver` addresses of a resolv.conf, in order, port 53. A
/// scoped IPv6 address (`fe80::1%eth0`) is skipped: the zone cannot be
/// given to the socket without the interface's index.
fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver")
                .then(|| words.next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .map(|address| SocketAddr::new(address, 53))
        .collect()
}

impl Resolver for SystemResolver {
    fn txt_answer(&self, name: &str) -> Result<Answer<String>, DnsError> {
        Ok(match answer(self.ask(name, RecordType::Txt)?) {
            Answer::NoSuchName => Answer::NoSuchName,
            Answer::Records(records) => Answer::Records(
                records
                    .into_iter()
                    .filter_map(|timed| match timed.record {
                        Record::Txt(text) => Some(text),
                        _ => None,
                    })
                    .collect(),
            ),
        })
    }

    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let mut addresses = Vec::new();
        for kind in [RecordType::A, RecordType::Aaaa] {
            addresses.extend(
                answer(self.ask(name, kind)?)
                    .records()
                    .into_iter()
                    .filter_map(|timed| match timed.record {
                        Record::Address(address) => Some(address),
                        _ => None,
                    }),
            );
        }
        Ok(addresses)
    }

    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self.mx_answer(name)?.hosts())
    }

    fn mx_answer(&self, name: &str) -> Result<MxAnswer, DnsError> {
        let response = self.ask(name, RecordType::Mx)?;
        let negative_ttl = response.negative_ttl;
        let exchanges = match answer(response) {
            Answer::NoSuchName => Answer::NoSuchName,
            Answer::Records(records) => {
                let mut exchanges: Vec<(u16, String, u32)> = records
                    .into_iter()
                    .filter_map(|timed| match timed.record {
                        Record::Mx {
                            preference,
                            exchange,
                        } => Some((preference, exchange, timed.ttl)),
                        _ => None,
                    })
                    .collect();
                exchanges.sort();
                Answer::Records(
                    exchanges
                        .into_iter()
                        .map(|(_, exchange, ttl)| (exchange, ttl))
                        .collect(),
                )
            }
        };
        Ok(MxAnswer {
            exchanges,
            negative_ttl,
        })
    }
}

/// Records given up front instead of asked for: what tests (and
/// `check-dns --records FILE`, to try a zone before publishing it) use.
/// One record per line: `name TYPE value`, TYPE one of TXT, A, AAAA, MX
/// (value: the exchange host, then optionally its TTL in seconds, else
/// [`UNKNOWN_TTL`]); a TXT value may be in double quotes; `#` starts a
/// comment. Names are case-insensitive. A name exists when it or
/// a name below it has a record (RFC 8020); any other is NXDOMAIN.
#[derive(Debug, Default, Clone)]
pub struct SeededResolver {
    records: std::collections::HashMap<(String, String), Vec<String>>,
}

impl SeededResolver {
    /// Parses the lines; an error names the line.
    pub fn parse(text: &str) -> Result<SeededResolver, String> {
        let mut seeded = SeededResolver::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, char::is_whitespace);
            let (Some(name), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("line {}: expected `name TYPE value`", index + 1));
            };
            let kind = kind.to_ascii_uppercase();
            if !["TXT", "A", "AAAA", "MX"].contains(&kind.as_str()) {
                return Err(format!(
                    "line {}: type {kind} is not TXT, A, AAAA or MX",
                    index + 1
                ));
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if kind != "TXT" && kind != "MX" && value.parse::<IpAddr>().is_err() {
                return Err(format!(
                    "line {}: {value:?} is not an IP address",
                    index + 1
                ));
            }
            if kind == "MX" && seeded_exchange(value).is_none() {
                return Err(format!(
                    "line {}: {value:?} is not an exchange host and an optional TTL in seconds",
                    index + 1
                ));
            }
            seeded.add(name, &kind, value);
        }
        Ok(seeded)
    }

    /// Adds one record.
    pub fn add(&mut self, name: &str, kind: &str, value: &str) {
        self.records
            .entry((
                name.trim_end_matches('.').to_ascii_lowercase(),
                kind.to_string(),
            ))
            .or_default()
            .push(value.to_string());
    }

    /// Adds one MX record whose TTL is `ttl` seconds.
    pub fn add_mx(&mut self, name: &str, exchange: &str, ttl: u32) {
        self.add(name, "MX", &format!("{exchange} {ttl}"));
    }

    /// Whether `name`, or a name below it, has a record.
    fn exists(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let below = format!(".{name}");
        self.records
            .keys()
            .any(|(owner, _)| *owner == name || owner.ends_with(&below))
    }

    fn get(&self, name: &str, kind: &str) -> Vec<String> {
        self.records
            .get(&(
                name.trim_end_matches('.').to_ascii_lowercase(),
                kind.to_string(),
            ))
            .cloned()
            .unwrap_or_default()
    }
}

impl Resolver for SeededResolver {
    fn txt_answer(&self, name: &str) -> Result<Answer<String>, DnsError> {
        Ok(match self.exists(name) {
            true => Answer::Records(self.get(name, "TXT")),
            false => Answer::NoSuchName,
        })
    }

    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        Ok(self
            .get(name, "A")
            .into_iter()
            .chain(self.get(name, "AAAA"))
            .filter_map(|value| value.parse().ok())
            .collect())
    }

    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self.mx_answer(name)?.hosts())
    }

    fn mx_answer(&self, name: &str) -> Result<MxAnswer, DnsError> {
        let exchanges = match self.exists(name) {
            true => Answer::Records(
                self.get(name, "MX")
                    .iter()
                    .filter_map(|value| seeded_exchange(value))
                    .collect(),
            ),
            false => Answer::NoSuchName,
        };
        Ok(MxAnswer {
            exchanges,
            negative_ttl: None,
        })
    }
}

/// A seeded MX value, `host [ttl]`, as the host and its TTL.
fn seeded_exchange(value: &str) -> Option<(String, u32)> {
    let mut words = value.split_whitespace();
    let host = words.next()?.to_string();
    let ttl = match words.next() {
        Some(ttl) => ttl.parse().ok()?,
        None => UNKNOWN_TTL,
    };
    words.next().is_none().then_some((host, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nameserver_of_resolv_conf_is_taken_in_order() {
        let text = "# written by hand\n\
                    search example.com\n\
                    nameserver 192.0.2.53\n\
                    nameserver   2001:db8::53 # the second\n\
                    ; nameserver 192.0.2.99\n\
                    nameservers 192.0.2.98\n\
                    nameserver fe80::1%eth0\n\
                    nameserver not-an-address\n\
                    \tnameserver 198.51.100.53\n\
                    options timeout:1\n";
        assert_eq!(
            nameservers(text),
            [
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "198.51.100.53:53".parse().unwrap(),
            ]
        );
        assert_eq!(
            SystemResolver::with_servers(nameservers("search example.com\n")).servers(),
            ["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn seeded_mx_records_carry_a_ttl_else_an_hour() {
        let mut zone = SeededResolver::parse(
            "example.org MX aspmx.l.google.com 300\n\
             example.org MX alt1.aspmx.l.google.com\n\
             www.nodata.example A 192.0.2.1\n",
        )
        .unwrap();
        zone.add_mx("example.net", "mx.example.net", 60);
        let exchanges = |name: &str| zone.mx_answer(name).unwrap().exchanges;
        assert_eq!(
            exchanges("Example.ORG."),
            Answer::Records(vec![
                ("aspmx.l.google.com".to_string(), 300),
                ("alt1.aspmx.l.google.com".to_string(), UNKNOWN_TTL),
            ])
        );
        assert_eq!(
            exchanges("example.net"),
            Answer::Records(vec![("mx.example.net".to_string(), 60)])
        );
        assert_eq!(exchanges("nodata.example"), Answer::Records(vec![]));
        assert_eq!(exchanges("nowhere.example"), Answer::NoSuchName);
        assert_eq!(
            zone.mx("example.org").unwrap(),
            ["aspmx.l.google.com", "alt1.aspmx.l.google.com"]
        );
        for line in [
            "example.org MX mx.example.org soon",
            "example.org MX a b 300",
        ] {
            let error = SeededResolver::parse(line).unwrap_err();
            assert!(error.starts_with("line 1: "), "{error}");
        }
    }
}
