//! DNS messages on the wire (RFC 1035), only what the preflight checks and
//! the MX cache need: a query for one name and type (with an EDNS0 OPT
//! record so long TXT answers fit in UDP), the answers of types TXT, A,
//! AAAA and MX with their TTLs, the negative-caching TTL of an answer
//! without records (RFC 2308, from the zone's SOA in the authority
//! section), and whether a response answers a given query (ID, QR bit,
//! question: what RFC 5452 asks a client to check before it believes a
//! reply). Pure: bytes in, records out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record types asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    A = 1,
    Mx = 15,
    Txt = 16,
    Aaaa = 28,
}

/// One answer record of a type we read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The character-strings of one TXT record, joined.
    Txt(String),
    Address(IpAddr),
    Mx {
        preference: u16,
        exchange: String,
    },
}

/// An answer record and how long it may be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedRecord {
    pub record: Record,
    /// Seconds (a TTL with the top bit set is read as 0, RFC 2181 8).
    pub ttl: u32,
}

/// The question a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Lower case, without the final dot.
    pub name: String,
    pub kind: u16,
    pub class: u16,
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    /// The QR bit: a response, not a query.
    pub is_response: bool,
    /// The first question (a response repeats the query's).
    pub question: Option<Question>,
    /// How many questions there are.
    pub questions: u16,
    /// RCODE: 0 no error, 3 the name does not exist.
    pub rcode: u8,
    /// The answer did not fit (retry over TCP).
    pub truncated: bool,
    pub records: Vec<TimedRecord>,
    /// How long an answer without records (NXDOMAIN, or no record of the
    /// type) may be believed, when the server sent the zone's SOA: the
    /// lower of the SOA record's TTL and its MINIMUM field (RFC 2308 5).
    pub negative_ttl: Option<u32>,
}

/// A query for `name` (a domain, with or without the final dot).
pub fn query(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // recursion desired
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // 1 question, 1 additional (OPT)
    put_name(&mut out, name);
    out.extend_from_slice(&(kind as u16).to_be_bytes());
    out.extend_from_slice(&[0, 1]); // class IN
    // OPT: root name, type 41, UDP payload 4096, no flags, no data.
    out.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    out
}

/// Appends `name` as labels, uncompressed (a label longer than 63 bytes is
/// cut: the wire cannot carry it).
fn put_name(out: &mut Vec<u8>, name: &str) {
    let name = name.trim_end_matches('.');
    if !name.is_empty() {
        for label in name.split('.') {
            out.push(label.len().min(63) as u8);
            out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
        }
    }
    out.push(0);
}

/// Reads a response; `None` when it is malformed.
pub fn parse(message: &[u8]) -> Option<Response> {
    let word = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ]))
    };
    let id = word(0)?;
    let flags = word(2)?;
    let long =
        |at: usize| -> Option<u32> { Some(((word(at)? as u32) << 16) | word(at + 2)? as u32) };
    let questions = word(4)?;
    let answers = word(6)?;
    let authorities = word(8)?;
    let mut at = 12;
    let mut question = None;
    for index in 0..questions {
        let name_end = skip_name(message, at)?;
        if index == 0 {
            question = Some(Question {
                name: read_name(message, at)?,
                kind: word(name_end)?,
                class: word(name_end + 2)?,
            });
        }
        at = name_end + 4;
    }
    let mut records = Vec::new();
    for _ in 0..answers {
        let name_end = skip_name(message, at)?;
        let kind = word(name_end)?;
        let ttl = readable_ttl(long(name_end + 4)?);
        let length = word(name_end + 8)? as usize;
        let data = name_end + 10;
        let rdata = message.get(data..data + length)?;
        let record = match kind {
            1 if length == 4 => Some(Record::Address(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            )))),
            28 if length == 16 => {
                let octets: [u8; 16] = rdata.try_into().ok()?;
                Some(Record::Address(IpAddr::V6(Ipv6Addr::from(octets))))
            }
            15 => Some(Record::Mx {
                preference: word(data)?,
                exchange: read_name(message, data + 2)?,
            }),
            16 => {
                let mut text = Vec::new();
                let mut i = 0;
                while i < rdata.len() {
                    let len = rdata[i] as usize;
                    text.extend_from_slice(rdata.get(i + 1..i + 1 + len)?);
                    i += 1 + len;
                }
                Some(Record::Txt(String::from_utf8_lossy(&text).into_owned()))
            }
            _ => None,
        };
        records.extend(record.map(|record| TimedRecord { record, ttl }));
        at = data + length;
    }
    // The authority section matters only for its SOA; a message cut short
    // there still carries its answers, so it reads as having no SOA.
    let mut negative_ttl = None;
    for _ in 0..authorities {
        let Some(name_end) = skip_name(message, at) else {
            break;
        };
        let (Some(kind), Some(ttl), Some(length)) =
            (word(name_end), long(name_end + 4), word(name_end + 8))
        else {
            break;
        };
        let data = name_end + 10;
        let end = data + length as usize;
        // SOA RDATA: two names, then SERIAL, REFRESH, RETRY, EXPIRE and
        // MINIMUM, so MINIMUM is its last four bytes.
        if kind == 6
            && length >= 22
            && let Some(minimum) = long(end - 4)
        {
            negative_ttl = Some(readable_ttl(ttl).min(readable_ttl(minimum)));
        }
        at = end;
    }
    Some(Response {
        id,
        is_response: flags & 0x8000 != 0,
        question,
        questions,
        rcode: (flags & 0x000F) as u8,
        truncated: flags & 0x0200 != 0,
        records,
        negative_ttl,
    })
}

/// A TTL as received: one with the top bit set is read as 0 (RFC 2181 8).
fn readable_ttl(ttl: u32) -> u32 {
    if ttl > i32::MAX as u32 { 0 } else { ttl }
}

impl Response {
    /// True when this is the response to `query(id, name, kind)`: anything
    /// else on the socket (a late answer to an earlier query, a forgery
    /// guessing at the port) is not.
    pub fn answers(&self, id: u16, name: &str, kind: RecordType) -> bool {
        let name = name.trim_end_matches('.');
        self.id == id
            && self.is_response
            && self.questions == 1
            && self.question.as_ref().is_some_and(|question| {
                question.name.eq_ignore_ascii_case(name)
                    && question.kind == kind as u16
                    && question.class == 1
            })
    }
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return Some(at + 2),
            l => at += 1 + l as usize,
        }
    }
}

/// The name at `at`, following compression pointers (at most 32 jumps).
fn read_name(message: &[u8], mut at: usize) -> Option<String> {
    let mut labels: Vec<String> = Vec::new();
    for _ in 0..128 {
        let len = *message.get(at)?;
        if len == 0 {
            return Some(labels.join("."));
        }
        if len & 0xC0 == 0xC0 {
            at = (((len & 0x3F) as usize) << 8) | *message.get(at + 1)? as usize;
            continue;
        }
        let label = message.get(at + 1..at + 1 + len as usize)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len as usize;
    }
    None
}

/// The response a DNS server gives to `query` (a message [`query`] built):
/// `exchanges` as MX answers (preference, host, TTL) and, when `soa` is
/// given (its TTL and MINIMUM), the zone's SOA in the authority section.
/// For tests' loopback servers.
#[cfg(test)]
pub(crate) fn mx_response(
    query: &[u8],
    rcode: u8,
    exchanges: &[(u16, &str, u32)],
    soa: Option<(u32, u32)>,
) -> Vec<u8> {
    let question_end = skip_name(query, 12).expect("a query with a question") + 4;
    let mut message = query[..question_end].to_vec();
    message[2] = 0x81; // a response, recursion desired
    message[3] = 0x80 | rcode; // recursion available
    message[6..8].copy_from_slice(&(exchanges.len() as u16).to_be_bytes());
    message[8..10].copy_from_slice(&u16::from(soa.is_some()).to_be_bytes());
    message[10..12].copy_from_slice(&[0, 0]); // the query's OPT is not echoed
    for (preference, exchange, ttl) in exchanges {
        let mut rdata = preference.to_be_bytes().to_vec();
        put_name(&mut rdata, exchange);
        message.extend_from_slice(&[0xC0, 12, 0, 15, 0, 1]);
        message.extend_from_slice(&ttl.to_be_bytes());
        message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        message.extend_from_slice(&rdata);
    }
    if let Some((ttl, minimum)) = soa {
        let mut rdata = Vec::new();
        put_name(&mut rdata, "ns.example");
        put_name(&mut rdata, "hostmaster.example");
        for field in [1, 7_200, 900, 1_209_600, minimum] {
            rdata.extend_from_slice(&u32::to_be_bytes(field));
        }
        message.extend_from_slice(&[0xC0, 12, 0, 6, 0, 1]);
        message.extend_from_slice(&ttl.to_be_bytes());
        message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        message.extend_from_slice(&rdata);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `query(7, "example.com", ...)` with the given answers
    /// (each: type, rdata), names compressed to the question.
    fn response(answers: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut message = query(7, "example.com", RecordType::Txt);
        message.truncate(message.len() - 11); // drop the OPT record
        message[2] = 0x81;
        message[3] = 0x80;
        message[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        message[10..12].copy_from_slice(&[0, 0]);
        for (kind, rdata) in answers {
            message.extend_from_slice(&[0xC0, 12]);
            message.extend_from_slice(&kind.to_be_bytes());
            message.extend_from_slice(&[0, 1, 0, 0, 1, 0]);
            message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            message.extend_from_slice(rdata);
        }
        message
    }

    #[test]
    fn reads_txt_a_aaaa_and_mx_answers() {
        let mut txt = vec![10];
        txt.extend_from_slice(b"v=spf1 ip4");
        txt.push(8);
        txt.extend_from_slice(b":1.2.3.4");
        let mx = vec![0, 10, 0xC0, 12];
        let v6 = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        let message = response(&[(16, txt), (1, vec![192, 0, 2, 1]), (28, v6), (15, mx)]);
        let parsed = parse(&message).unwrap();
        assert_eq!((parsed.id, parsed.rcode, parsed.truncated), (7, 0, false));
        let records: Vec<Record> = parsed.records.iter().map(|r| r.record.clone()).collect();
        assert_eq!(
            records,
            vec![
                Record::Txt("v=spf1 ip4:1.2.3.4".into()),
                Record::Address("192.0.2.1".parse().unwrap()),
                Record::Address("2001:db8::1".parse().unwrap()),
                Record::Mx {
                    preference: 10,
                    exchange: "example.com".into()
                },
            ]
        );
        assert!(parsed.records.iter().all(|record| record.ttl == 256));
        assert_eq!(parsed.negative_ttl, None, "no SOA");
        assert_eq!(parse(&message[..20]), None, "truncated garbage");
    }

    #[test]
    fn each_record_keeps_its_ttl() {
        let asked = query(9, "example.org", RecordType::Mx);
        let message = mx_response(
            &asked,
            0,
            &[
                (10, "aspmx.l.google.com", 300),
                (20, "alt1.aspmx.l.google.com.", 3_600),
                (30, "mx.example.org", 0x8000_0000),
            ],
            None,
        );
        let parsed = parse(&message).unwrap();
        assert!(parsed.answers(9, "example.org", RecordType::Mx));
        assert_eq!(
            parsed.records,
            vec![
                TimedRecord {
                    record: Record::Mx {
                        preference: 10,
                        exchange: "aspmx.l.google.com".into()
                    },
                    ttl: 300
                },
                TimedRecord {
                    record: Record::Mx {
                        preference: 20,
                        exchange: "alt1.aspmx.l.google.com".into()
                    },
                    ttl: 3_600
                },
                TimedRecord {
                    record: Record::Mx {
                        preference: 30,
                        exchange: "mx.example.org".into()
                    },
                    ttl: 0
                },
            ],
            "a TTL with the top bit set is 0 (RFC 2181 8)"
        );
    }

    #[test]
    fn an_answer_without_records_is_believed_for_the_soa_s_lower_ttl() {
        let asked = query(5, "nomx.example", RecordType::Mx);
        let negative = |soa| parse(&mx_response(&asked, 0, &[], soa)).unwrap();
        assert_eq!(negative(Some((900, 120))).negative_ttl, Some(120));
        assert_eq!(
            negative(Some((90, 3_600))).negative_ttl,
            Some(90),
            "the SOA record's own TTL when it is lower than MINIMUM"
        );
        assert_eq!(negative(None).negative_ttl, None);
        let nxdomain = parse(&mx_response(&asked, 3, &[], Some((900, 600)))).unwrap();
        assert_eq!((nxdomain.rcode, nxdomain.negative_ttl), (3, Some(600)));
        // Cut inside the authority section: the answers still count.
        let whole = mx_response(&asked, 0, &[(10, "mx.nomx.example", 60)], Some((900, 120)));
        let cut = parse(&whole[..whole.len() - 3]).unwrap();
        assert_eq!((cut.records.len(), cut.negative_ttl), (1, None));
    }

    #[test]
    fn a_response_answers_only_its_own_query() {
        let message = response(&[]);
        let parsed = parse(&message).unwrap();
        assert!(parsed.answers(7, "example.com", RecordType::Txt));
        assert!(parsed.answers(7, "Example.COM.", RecordType::Txt));
        assert!(!parsed.answers(8, "example.com", RecordType::Txt), "ID");
        assert!(!parsed.answers(7, "example.net", RecordType::Txt), "name");
        assert!(
            !parsed.answers(7, "www.example.com", RecordType::Txt),
            "name"
        );
        assert!(!parsed.answers(7, "example.com", RecordType::Mx), "type");
        let mut query_back = message.clone();
        query_back[2] &= 0x7F;
        assert!(
            !parse(&query_back)
                .unwrap()
                .answers(7, "example.com", RecordType::Txt),
            "QR bit clear: a query, not an answer"
        );
        let mut chaos = message.clone();
        let class = message.len() - 2;
        chaos[class..].copy_from_slice(&[0, 3]);
        assert!(
            !parse(&chaos)
                .unwrap()
                .answers(7, "example.com", RecordType::Txt),
            "class CH"
        );
        let mut no_question = message;
        no_question.truncate(12);
        no_question[4..6].copy_from_slice(&[0, 0]);
        assert!(
            !parse(&no_question)
                .unwrap()
                .answers(7, "example.com", RecordType::Txt),
            "no question"
        );
    }

    #[test]
    fn queries_name_the_labels_and_ask_for_edns() {
        let message = query(0x1234, "_dmarc.Example.com.", RecordType::Txt);
        assert_eq!(&message[..2], &[0x12, 0x34]);
        assert_eq!(&message[12..19], b"\x06_dmarc");
        assert!(message.ends_with(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]));
    }
}
