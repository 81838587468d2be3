//! On-disk formats of the spool, with no I/O: message records in segment files
//! and completion entries in their `.done` side files.
//!
//! Message record: `b"SSM1"`, payload length (u32 LE), CRC-32 of the payload
//! (u32 LE), payload. A record whose magic, length or checksum does not hold is
//! a write torn by a crash; it can only sit at the end of a segment, because a
//! failed write is cut off before anything else is appended.
//!
//! Payload, format 1: version, id, gateway, sender, client, flags, arrival
//! time, recipients, body length, body. Format 2 (written only for a record
//! that settles another, a delivery status notification) adds, after the
//! recipients, the record it settles (segment u64 LE, offset u64 LE) and the
//! recipient indices it finishes there (count u32 LE, then u32 LE each), so
//! an ordinary record stays readable by a version that knows only format 1.
//! Flags a version does not know are ignored by it.
//!
//! Completion entry: offset of the record (u64 LE), recipient index (u32 LE,
//! [`ALL_RECIPIENTS`] for the whole message), CRC-32 of those 12 octets.

use std::net::IpAddr;

use crate::smtp::{Body, MailParams};

use super::Envelope;

/// First octets of every message record ("smtp-shaper message", format 1).
pub const MAGIC: &[u8; 4] = b"SSM1";
/// Magic, payload length and checksum.
pub const HEADER_LEN: usize = 12;
/// Record offset, recipient index and checksum.
pub const DONE_ENTRY_LEN: usize = 16;
/// Recipient index meaning "the whole message is finished".
pub const ALL_RECIPIENTS: u32 = u32::MAX;
/// Largest payload a record may claim; anything bigger is corruption.
pub const MAX_PAYLOAD: usize = 1 << 30;

const VERSION: u8 = 1;
/// Format 1 plus what the record settles.
const VERSION_SETTLES: u8 = 2;
const FLAG_8BITMIME: u8 = 1;
const FLAG_SMTPUTF8: u8 = 2;
const FLAG_DSN: u8 = 4;

/// Recipients of another record that storing this one finishes: the
/// recipients a delivery status notification reports. Being part of the
/// notification's own record, "notification queued" and "recipients
/// finished" are one durable fact (see `Spool::store_report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settles {
    pub segment: u64,
    pub offset: u64,
    pub recipients: Vec<u32>,
}

/// The envelope part of a decoded record and where its body lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    pub id: String,
    pub gateway: String,
    pub envelope: Envelope,
    /// Offset of the body inside the payload.
    pub body_offset: usize,
    pub body_len: usize,
    /// What this record finishes of another (format 2).
    pub settles: Option<Settles>,
}

/// Encodes a whole record (header and payload). The body is the
/// concatenation of `body_parts` (trace header, then the message).
/// With `settles`, the record is format 2. Returns the frame and the
/// offset of the body inside it.
pub fn encode(
    id: &str,
    gateway: &str,
    envelope: &Envelope,
    settles: Option<&Settles>,
    body_parts: &[&[u8]],
) -> (Vec<u8>, usize) {
    let body_len: usize = body_parts.iter().map(|part| part.len()).sum();
    let mut frame = Vec::with_capacity(HEADER_LEN + 256 + body_len);
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&[0; 8]);
    frame.push(if settles.is_some() {
        VERSION_SETTLES
    } else {
        VERSION
    });
    put_str(&mut frame, id);
    put_str(&mut frame, gateway);
    put_str(&mut frame, &envelope.sender);
    put_str(&mut frame, &envelope.client_ip.to_string());
    let mut flags = 0;
    if envelope.params.body == Body::EightBitMime {
        flags |= FLAG_8BITMIME;
    }
    if envelope.params.smtputf8 {
        flags |= FLAG_SMTPUTF8;
    }
    if envelope.dsn {
        flags |= FLAG_DSN;
    }
    frame.push(flags);
    frame.extend_from_slice(&envelope.received_at.to_le_bytes());
    frame.extend_from_slice(&(envelope.recipients.len() as u32).to_le_bytes());
    for recipient in &envelope.recipients {
        put_str(&mut frame, recipient);
    }
    if let Some(settles) = settles {
        frame.extend_from_slice(&settles.segment.to_le_bytes());
        frame.extend_from_slice(&settles.offset.to_le_bytes());
        frame.extend_from_slice(&(settles.recipients.len() as u32).to_le_bytes());
        for recipient in &settles.recipients {
            frame.extend_from_slice(&recipient.to_le_bytes());
        }
    }
    frame.extend_from_slice(&(body_len as u64).to_le_bytes());
    let body_offset = frame.len();
    for part in body_parts {
        frame.extend_from_slice(part);
    }
    let payload_len = (frame.len() - HEADER_LEN) as u32;
    let crc = crc32fast::hash(&frame[HEADER_LEN..]);
    frame[4..8].copy_from_slice(&payload_len.to_le_bytes());
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    (frame, body_offset)
}

/// Reads a record header: the payload length and checksum, or `None` when
/// the bytes are not a record header.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Option<(usize, u32)> {
    if &header[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[8..12].try_into().ok()?);
    (len <= MAX_PAYLOAD).then_some((len, crc))
}

/// Decodes a payload whose checksum has been verified.
pub fn decode_payload(payload: &[u8]) -> Option<DecodedRecord> {
    decode_prefix(payload, payload.len())
}

/// Decodes the envelope part of a verified payload of `payload_len` octets
/// from its first octets, `prefix` (recovery reads no body it does not
/// need). `None` when the prefix ends before the envelope does (or the
/// payload is not a record).
pub fn decode_prefix(prefix: &[u8], payload_len: usize) -> Option<DecodedRecord> {
    let mut reader = Reader {
        bytes: prefix,
        at: 0,
    };
    let version = reader.u8()?;
    if version != VERSION && version != VERSION_SETTLES {
        return None;
    }
    let id = reader.str()?;
    let gateway = reader.str()?;
    let sender = reader.str()?;
    let client_ip: IpAddr = reader.str()?.parse().ok()?;
    let flags = reader.u8()?;
    let received_at = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
    let count = u32::from_le_bytes(reader.take(4)?.try_into().ok()?) as usize;
    let mut recipients = Vec::with_capacity(count.min(10_000));
    for _ in 0..count {
        recipients.push(reader.str()?);
    }
    let settles = if version == VERSION_SETTLES {
        let segment = reader.u64()?;
        let offset = reader.u64()?;
        let count = reader.u32()? as usize;
        let mut settled = Vec::with_capacity(count.min(10_000));
        for _ in 0..count {
            settled.push(reader.u32()?);
        }
        Some(Settles {
            segment,
            offset,
            recipients: settled,
        })
    } else {
        None
    };
    let body_len = u64::from_le_bytes(reader.take(8)?.try_into().ok()?) as usize;
    let body_offset = reader.at;
    (payload_len.checked_sub(body_offset) == Some(body_len)).then_some(DecodedRecord {
        id,
        gateway,
        envelope: Envelope {
            sender,
            recipients,
            params: MailParams {
                size: None,
                body: if flags & FLAG_8BITMIME != 0 {
                    Body::EightBitMime
                } else {
                    Body::SevenBit
                },
                smtputf8: flags & FLAG_SMTPUTF8 != 0,
            },
            client_ip,
            received_at,
            dsn: flags & FLAG_DSN != 0,
        },
        body_offset,
        body_len,
        settles,
    })
}

/// One completion entry.
pub fn encode_done(offset: u64, recipient: u32) -> [u8; DONE_ENTRY_LEN] {
    let mut entry = [0u8; DONE_ENTRY_LEN];
    entry[..8].copy_from_slice(&offset.to_le_bytes());
    entry[8..12].copy_from_slice(&recipient.to_le_bytes());
    let crc = crc32fast::hash(&entry[..12]);
    entry[12..].copy_from_slice(&crc.to_le_bytes());
    entry
}

/// Decodes a completion entry; `None` for a torn or corrupt one.
pub fn decode_done(entry: &[u8]) -> Option<(u64, u32)> {
    let entry: &[u8; DONE_ENTRY_LEN] = entry.try_into().ok()?;
    let crc = u32::from_le_bytes(entry[12..].try_into().ok()?);
    (crc32fast::hash(&entry[..12]) == crc).then(|| {
        (
            u64::from_le_bytes(entry[..8].try_into().unwrap_or_default()),
            u32::from_le_bytes(entry[8..12].try_into().unwrap_or_default()),
        )
    })
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            sender: "app@example.com".into(),
            recipients: vec!["a@x.test".into(), "\"b c\"@y.test".into()],
            params: MailParams {
                size: None,
                body: Body::EightBitMime,
                smtputf8: true,
            },
            client_ip: "::1".parse().unwrap(),
            received_at: 1_795_722_059,
            dsn: true,
        }
    }

    #[test]
    fn record_round_trip() {
        let (frame, body_offset) = encode(
            "Q1",
            "primary",
            &envelope(),
            None,
            &[b"Received: x\r\n", b"body\r\n"],
        );
        let (len, crc) = decode_header(frame[..HEADER_LEN].try_into().unwrap()).unwrap();
        let payload = &frame[HEADER_LEN..];
        assert_eq!(len, payload.len());
        assert_eq!(crc, crc32fast::hash(payload));
        let record = decode_payload(payload).unwrap();
        assert_eq!(record.id, "Q1");
        assert_eq!(record.gateway, "primary");
        assert_eq!(record.envelope, envelope());
        assert_eq!(HEADER_LEN + record.body_offset, body_offset);
        assert_eq!(&frame[body_offset..], b"Received: x\r\nbody\r\n");
        assert_eq!(record.settles, None);
        assert_eq!(
            frame[HEADER_LEN], VERSION,
            "an ordinary record stays format 1"
        );
    }

    #[test]
    fn a_settling_record_round_trips_as_format_2() {
        let settles = Settles {
            segment: 7,
            offset: 4096,
            recipients: vec![0, 2],
        };
        let mut report = envelope();
        report.sender = String::new();
        report.dsn = false;
        let (frame, body_offset) =
            encode("Q2", "primary", &report, Some(&settles), &[b"report\r\n"]);
        assert_eq!(frame[HEADER_LEN], VERSION_SETTLES);
        let record = decode_payload(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(record.envelope, report);
        assert_eq!(record.settles, Some(settles));
        assert_eq!(&frame[body_offset..], b"report\r\n");
        assert!(decode_payload(&frame[HEADER_LEN..frame.len() - 1]).is_none());
    }

    #[test]
    fn truncated_payload_is_not_a_record() {
        let (frame, _) = encode("Q1", "primary", &envelope(), None, &[b"body\r\n"]);
        assert!(decode_payload(&frame[HEADER_LEN..frame.len() - 1]).is_none());
        assert!(decode_header(&[0; HEADER_LEN]).is_none());
    }

    #[test]
    fn done_entries_detect_corruption() {
        let entry = encode_done(4096, 3);
        assert_eq!(decode_done(&entry), Some((4096, 3)));
        let mut torn = entry;
        torn[15] ^= 1;
        assert_eq!(decode_done(&torn), None);
        assert_eq!(decode_done(&entry[..10]), None);
    }
}
