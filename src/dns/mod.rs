//! A small DNS client for the sender-domain preflight (`check-dns`): TXT,
//! A/AAAA and MX lookups through the system's resolvers (every `nameserver`
//! of /etc/resolv.conf, in turn), over UDP with EDNS0 and over TCP when an
//! answer is truncated. A reply counts only when its ID (random, from
//! `ring`), QR bit and question match the query; anything else is ignored
//! while the wait goes on. [`Resolver`] is the seam tests fill with records.

pub mod wire;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use wire::{Record, RecordType};

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

    fn ask(&self, name: &str, kind: RecordType) -> Result<Answer<Record>, DnsError> {
        let mut tried = Vec::new();
        for _round in 0..ATTEMPTS {
            // What each server did last is what the error tells.
            tried.clear();
            for &server in &self.servers {
                match self.ask_one(server, name, kind) {
                    Ok(response) => match response.rcode {
                        0 => return Ok(Answer::Records(response.records)),
                        3 => return Ok(Answer::NoSuchName),
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
        Ok(match self.ask(name, RecordType::Txt)? {
            Answer::NoSuchName => Answer::NoSuchName,
            Answer::Records(records) => Answer::Records(
                records
                    .into_iter()
                    .filter_map(|record| match record {
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
                self.ask(name, kind)?
                    .records()
                    .into_iter()
                    .filter_map(|record| match record {
                        Record::Address(address) => Some(address),
                        _ => None,
                    }),
            );
        }
        Ok(addresses)
    }

    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let mut exchanges: Vec<(u16, String)> = self
            .ask(name, RecordType::Mx)?
            .records()
            .into_iter()
            .filter_map(|record| match record {
                Record::Mx {
                    preference,
                    exchange,
                } => Some((preference, exchange)),
                _ => None,
            })
            .collect();
        exchanges.sort();
        Ok(exchanges
            .into_iter()
            .map(|(_, exchange)| exchange)
            .collect())
    }
}

/// Records given up front instead of asked for: what tests (and
/// `check-dns --records FILE`, to try a zone before publishing it) use.
/// One record per line: `name TYPE value`, TYPE one of TXT, A, AAAA, MX
/// (value: the exchange host); a TXT value may be in double quotes; `#`
/// starts a comment. Names are case-insensitive. A name exists when it or
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
        Ok(self.get(name, "MX"))
    }
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
}
