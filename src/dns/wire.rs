//! DNS messages on the wire (RFC 1035), only what the preflight checks need:
//! a query for one name and type (with an EDNS0 OPT record so long TXT
//! answers fit in UDP), the answers of types TXT, A, AAAA and MX, and
//! whether a response answers a given query (ID, QR bit, question: what
//! RFC 5452 asks a client to check before it believes a reply). Pure: bytes
//! in, records out.

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
    pub records: Vec<Record>,
}

/// A query for `name` (a domain, with or without the final dot).
pub fn query(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // recursion desired
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // 1 question, 1 additional (OPT)
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
    out.extend_from_slice(&(kind as u16).to_be_bytes());
    out.extend_from_slice(&[0, 1]); // class IN
    // OPT: root name, type 41, UDP payload 4096, no flags, no data.
    out.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    out
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
    let questions = word(4)?;
    let answers = word(6)?;
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
        let length = word(name_end + 8)? as usize;
        let data = name_end + 10;
        let rdata = message.get(data..data + length)?;
        match kind {
            1 if length == 4 => records.push(Record::Address(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            )))),
            28 if length == 16 => {
                let octets: [u8; 16] = rdata.try_into().ok()?;
                records.push(Record::Address(IpAddr::V6(Ipv6Addr::from(octets))));
            }
            15 => records.push(Record::Mx {
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
                records.push(Record::Txt(String::from_utf8_lossy(&text).into_owned()));
            }
            _ => {}
        }
        at = data + length;
    }
    Some(Response {
        id,
        is_response: flags & 0x8000 != 0,
        question,
        questions,
        rcode: (flags & 0x000F) as u8,
        truncated: flags & 0x0200 != 0,
        records,
    })
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
        assert_eq!(
            parsed.records,
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
        assert_eq!(parse(&message[..20]), None, "truncated garbage");
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
