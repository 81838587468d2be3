//! Start-up recovery: rebuild the queue from segment files and their
//! completion entries, without holding the whole queue in memory.
//!
//! Recovery runs in two passes over the segments, oldest first, each
//! segment read whole (one segment's bytes at a time in memory):
//! 1. [`check`], before the writer starts: finds torn and damaged records
//!    and the records that settle others, and writes the completion entries
//!    those settle (synced) before anything is delivered.
//! 2. [`replay`], once the delivery side exists: hands every unfinished
//!    message to a sink one at a time, so the caller keeps only what it
//!    wants in memory (the delivery queue keeps a compact reference for
//!    most of a long queue), and tells the writer how many messages each
//!    segment still holds.
//!
//! A record that fails its checksum, or is cut short, at the end of a segment
//! is a write torn by a crash. It was never acknowledged (acknowledgement
//! waits for the sync), so it is cut off and logged. Damage followed by valid
//! records (a disk fault, not a crash) is skipped over, loudly, so the records
//! after it are not lost with it. Finished segments and orphan side files are
//! removed.
//!
//! A record that settles recipients of another (a delivery status
//! notification, `record::Settles`) finishes them whatever the side files
//! say: a crash may have come between the notification's sync and that of
//! their completion entries. The first pass writes the entries (an entry
//! already there is harmless), so the fact outlives the notification's own
//! segment and the second pass reads it like any other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{self, ALL_RECIPIENTS, DONE_ENTRY_LEN, HEADER_LEN, Settles};
use super::{Location, StoredMessage, done_path, segment_path};

/// What the first pass found: the segments to replay and the next free
/// segment number.
pub struct Checked {
    pub segments: Vec<u64>,
    pub next_segment: u64,
}

/// What the second pass handed out.
pub struct Replayed {
    /// Unfinished messages per remaining segment.
    pub live: HashMap<u64, u64>,
    pub messages: u64,
}

/// The first pass (see the module notes).
pub fn check(dir: &Path) -> io::Result<Checked> {
    let mut segments = Vec::new();
    let mut side_files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            segments.push(id);
        } else if let Some(id) = name
            .strip_suffix(".done")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            side_files.push(id);
        }
    }
    segments.sort_unstable();
    for orphan in side_files.iter().filter(|id| !segments.contains(id)) {
        fs::remove_file(done_path(dir, *orphan))?;
    }
    let mut settles = Vec::new();
    for &segment in &segments {
        let path = segment_path(dir, segment);
        let bytes = fs::read(&path)?;
        let end = walk(segment, &bytes, true, |_, decoded| {
            settles.extend(decoded.settles);
        });
        if end < bytes.len() {
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(end as u64)?;
            file.sync_all()?;
        }
    }
    write_settled(dir, &segments, &settles)?;
    Ok(Checked {
        next_segment: segments.last().map_or(1, |last| last + 1),
        segments,
    })
}

/// Writes (and syncs) the completion entries of every settled recipient
/// whose record's segment is still there, one sync per segment.
fn write_settled(dir: &Path, segments: &[u64], settles: &[Settles]) -> io::Result<()> {
    let mut by_segment: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for settles in settles {
        if segments.binary_search(&settles.segment).is_err() {
            // Finished already, segment and all.
            continue;
        }
        let entries = by_segment.entry(settles.segment).or_default();
        for recipient in &settles.recipients {
            entries.extend_from_slice(&record::encode_done(settles.offset, *recipient));
        }
    }
    for (segment, entries) in by_segment {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(done_path(dir, segment))?;
        file.write_all(&entries)?;
        file.sync_data()?;
    }
    Ok(())
}

/// The second pass (see the module notes): every unfinished message, in
/// the order it was stored, to `sink`. Finished segments are removed.
pub fn replay(
    dir: &Path,
    segments: &[u64],
    mut sink: impl FnMut(StoredMessage),
) -> io::Result<Replayed> {
    let mut replayed = Replayed {
        live: HashMap::new(),
        messages: 0,
    };
    for &segment in segments {
        let bytes = fs::read(segment_path(dir, segment))?;
        let finished = read_done_entries(&done_path(dir, segment))?;
        let mut finished_whole = Vec::new();
        let mut live = 0u64;
        walk(segment, &bytes, false, |offset, decoded| {
            let done = finished.get(&offset);
            let pending: Vec<u32> = (0..decoded.envelope.recipients.len() as u32)
                .filter(|index| !done.is_some_and(|set| set.contains(index)))
                .collect();
            if done.is_some_and(|set| set.contains(&ALL_RECIPIENTS)) {
                return;
            }
            if pending.is_empty() {
                // Every recipient settled (by a notification) but the
                // message itself not yet marked: mark it now.
                finished_whole.push(offset);
                return;
            }
            live += 1;
            sink(stored(segment, offset, decoded, pending));
        });
        if !finished_whole.is_empty() {
            let mut entries = Vec::new();
            for offset in finished_whole {
                entries.extend_from_slice(&record::encode_done(offset, ALL_RECIPIENTS));
            }
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(done_path(dir, segment))?;
            file.write_all(&entries)?;
            file.sync_data()?;
        }
        if live == 0 {
            fs::remove_file(segment_path(dir, segment))?;
            let _ = fs::remove_file(done_path(dir, segment));
        } else {
            replayed.live.insert(segment, live);
            replayed.messages += live;
        }
    }
    File::open(dir)?.sync_all()?;
    if replayed.messages > 0 {
        tracing::info!(
            messages = replayed.messages,
            segments = replayed.live.len(),
            "recovered queued messages from the spool"
        );
    }
    Ok(replayed)
}

/// The queued message a decoded record at `segment`/`offset` is.
fn stored(
    segment: u64,
    offset: u64,
    decoded: record::DecodedRecord,
    pending: Vec<u32>,
) -> StoredMessage {
    StoredMessage {
        id: decoded.id,
        gateway: decoded.gateway,
        envelope: decoded.envelope,
        location: Location {
            segment,
            offset,
            body_offset: offset + (HEADER_LEN + decoded.body_offset) as u64,
            body_len: decoded.body_len as u64,
        },
        pending,
        notification: decoded.settles.is_some(),
    }
}

/// Reads the message whose record is at `offset` of `segment` back (a
/// message the delivery queue kept only a reference to), with its body;
/// every recipient is pending (only such messages are kept that way).
pub fn read_message(dir: &Path, segment: u64, offset: u64) -> io::Result<(StoredMessage, Vec<u8>)> {
    let file = File::open(segment_path(dir, segment))?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, offset)?;
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no valid record at offset {offset} of spool segment {segment:016X}"),
        )
    };
    let (len, _) = record::decode_header(&header).ok_or_else(invalid)?;
    let mut bytes = vec![0u8; HEADER_LEN + len];
    bytes[..HEADER_LEN].copy_from_slice(&header);
    file.read_exact_at(&mut bytes[HEADER_LEN..], offset + HEADER_LEN as u64)?;
    let (decoded, _) = record_at(&bytes, 0).ok_or_else(invalid)?;
    let body = bytes[HEADER_LEN + decoded.body_offset..].to_vec();
    let pending = (0..decoded.envelope.recipients.len() as u32).collect();
    Ok((stored(segment, offset, decoded, pending), body))
}

/// Finished recipients per record offset (`ALL_RECIPIENTS` for a whole message).
fn read_done_entries(path: &Path) -> io::Result<HashMap<u64, HashSet<u32>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(error) => return Err(error),
    };
    let mut finished: HashMap<u64, HashSet<u32>> = HashMap::new();
    for entry in bytes.chunks(DONE_ENTRY_LEN) {
        // A torn entry only costs a redelivery.
        if let Some((offset, recipient)) = record::decode_done(entry) {
            finished.entry(offset).or_default().insert(recipient);
        }
    }
    Ok(finished)
}

/// Calls `visit` with the offset of every valid record of a segment's
/// `bytes`, skipping damage to the next valid record (logged when `log`);
/// returns where the valid records end (shorter than `bytes` after a torn
/// tail, which the caller cuts off).
fn walk(
    segment: u64,
    bytes: &[u8],
    log: bool,
    mut visit: impl FnMut(u64, record::DecodedRecord),
) -> usize {
    let mut offset = 0usize;
    while offset < bytes.len() {
        let Some((decoded, len)) = record_at(bytes, offset) else {
            // Normally a torn tail. Should valid records follow (damage in
            // the middle of the file), skip to them instead of cutting them off.
            match next_record(bytes, offset + 1) {
                Some(next) => {
                    if log {
                        tracing::error!(
                            segment,
                            offset,
                            skipped_bytes = next - offset,
                            "spool segment damaged: skipping unreadable bytes to the next valid record"
                        );
                    }
                    offset = next;
                    continue;
                }
                None => {
                    if log {
                        tracing::warn!(
                            segment,
                            offset,
                            discarded_bytes = bytes.len() - offset,
                            "discarding a torn write at the end of a spool segment (it was never acknowledged)"
                        );
                    }
                    return offset;
                }
            }
        };
        visit(offset as u64, decoded);
        offset += len;
    }
    offset
}

/// The record at `offset` of `bytes` and its length, or `None` when what is
/// there is not a whole, valid record.
fn record_at(bytes: &[u8], offset: usize) -> Option<(record::DecodedRecord, usize)> {
    let header: &[u8; HEADER_LEN] = bytes.get(offset..offset + HEADER_LEN)?.try_into().ok()?;
    let (len, crc) = record::decode_header(header)?;
    let payload = bytes.get(offset + HEADER_LEN..offset + HEADER_LEN + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((record::decode_payload(payload)?, HEADER_LEN + len))
}

/// The offset of the first valid record at or after `from`, if any.
fn next_record(bytes: &[u8], from: usize) -> Option<usize> {
    let magic = record::MAGIC;
    (from..bytes.len().saturating_sub(magic.len() - 1))
        .filter(|&at| &bytes[at..at + magic.len()] == magic)
        .find(|&at| record_at(bytes, at).is_some())
}
