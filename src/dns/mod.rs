//! A small DNS client for the sender-domain preflight (`check-dns`): TXT,
//! A/AAAA and MX lookups through the system's resolver (the first
//! `nameserver` in /etc/resolv.conf), over UDP with EDNS0 and over TCP when
//! an answer is truncated. [`Resolver`] is the seam tests fill with records.

pub mod wire;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

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

/// The lookups the checks make. A name that does not exist has no records
/// (an empty list), which is not an error.
pub trait Resolver {
    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError>;
    /// A and AAAA together.
    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError>;
    /// Exchange host names, most preferred first.
    fn mx(&self, name: &str) -> Result<Vec<String>, DnsError>;
}

/// Asks one recursive resolver.
pub struct SystemResolver {
    server: SocketAddr,
    timeout: Duration,
}

impl SystemResolver {
    /// The first `nameserver` of /etc/resolv.conf (127.0.0.53 if none).
    pub fn from_resolv_conf() -> SystemResolver {
        let server = std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let address = line.trim().strip_prefix("nameserver")?.trim();
                    address.parse::<IpAddr>().ok()
                })
            })
            .unwrap_or(IpAddr::from([127, 0, 0, 53]));
        SystemResolver::at(SocketAddr::new(server, 53))
    }

    /// A resolver at `server` (e.g. "9.9.9.9:53").
    pub fn at(server: SocketAddr) -> SystemResolver {
        SystemResolver {
            server,
            timeout: Duration::from_secs(2),
        }
    }

    fn ask(&self, name: &str, kind: RecordType) -> Result<Vec<Record>, DnsError> {
        let failed =
            |why: String| DnsError::Failed(format!("{name} ({kind:?}) via {}: {why}", self.server));
        let id = fastrand::u16(..);
        let query = wire::query(id, name, kind);
        let bind: SocketAddr = if self.server.is_ipv4() {
            "0.0.0.0:0".parse().expect("valid")
        } else {
            "[::]:0".parse().expect("valid")
        };
        let socket = UdpSocket::bind(bind).map_err(|e| failed(e.to_string()))?;
        socket
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| failed(e.to_string()))?;
        let mut buffer = vec![0u8; 4096];
        for _attempt in 0..2 {
            socket
                .send_to(&query, self.server)
                .map_err(|e| failed(e.to_string()))?;
            let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                continue;
            };
            if from != self.server {
                continue;
            }
            let Some(response) = wire::parse(&buffer[..len]).filter(|r| r.id == id) else {
                continue;
            };
            let response = if response.truncated {
                self.ask_tcp(&query, id).map_err(failed)?
            } else {
                response
            };
            return match response.rcode {
                0 | 3 => Ok(response.records),
                code => Err(failed(format!("the resolver answered RCODE {code}"))),
            };
        }
        Err(failed("no answer".into()))
    }

    fn ask_tcp(&self, query: &[u8], id: u16) -> Result<wire::Response, String> {
        let mut stream =
            TcpStream::connect_timeout(&self.server, self.timeout).map_err(|e| e.to_string())?;
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
            .filter(|response| response.id == id)
            .ok_or_else(|| "malformed answer over TCP".to_string())
    }
}

impl Resolver for SystemResolver {
    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self
            .ask(name, RecordType::Txt)?
            .into_iter()
            .filter_map(|record| match record {
                Record::Txt(text) => Some(text),
                _ => None,
            })
            .collect())
    }

    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let mut addresses = Vec::new();
        for kind in [RecordType::A, RecordType::Aaaa] {
            addresses.extend(
                self.ask(name, kind)?
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
/// starts a comment. Names are case-insensitive.
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
    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self.get(name, "TXT"))
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
