//! Start-up recovery: rebuild the queue from segment files and their
//! completion entries, without holding the whole queue in memory.
//!
//! Recovery runs in two passes over the segments, oldest first, with
//! bounded memory whatever the queue:
//! 1. [`check`], before the writer starts, reads every segment through a
//!    window of [`WINDOW`] octets and verifies every record's checksum: it
//!    finds torn and damaged records and the records that settle others,
//!    and writes the completion entries those settle (synced) before
//!    anything is delivered.
//! 2. [`replay`], once the delivery side exists, follows the records the
//!    first pass found valid and reads only their envelopes (not the
//!    bodies), handing every unfinished message to a sink one at a time, so
//!    the caller keeps only what it wants in memory (the delivery queue
//!    keeps a compact reference for most of a long queue).
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

/// Octets of a segment the first pass reads at a time.
const WINDOW: usize = 4 << 20;

/// Octets of a record the second pass reads to find its envelope (more
/// only for an envelope longer than that).
const ENVELOPE_PREFIX: usize = 1024;

/// What the first pass found: the segments to replay, the damage the
/// second pass skips, and the next free segment number.
pub struct Checked {
    pub segments: Vec<u64>,
    /// Per damaged segment, where unreadable bytes begin and the next valid
    /// record after them.
    pub damage: HashMap<u64, Vec<(u64, u64)>>,
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
    let mut damage = HashMap::new();
    let mut buffer = Vec::new();
    for &segment in &segments {
        let path = segment_path(dir, segment);
        let file = File::open(&path)?;
        let mut window = Window::new(&file, &mut buffer)?;
        let mut skipped = Vec::new();
        let end = walk(segment, &mut window, &mut skipped, |decoded| {
            settles.extend(decoded.settles);
        })?;
        if end < window.len {
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(end)?;
            file.sync_all()?;
        }
        if !skipped.is_empty() {
            damage.insert(segment, skipped);
        }
    }
    write_settled(dir, &segments, &settles)?;
    Ok(Checked {
        next_segment: segments.last().map_or(1, |last| last + 1),
        segments,
        damage,
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
        append_done_entries(dir, segment, &entries)?;
    }
    Ok(())
}

/// Appends completion `entries` to `segment`'s side file and syncs them
/// (recovery's own entries are durable before anything is delivered).
fn append_done_entries(dir: &Path, segment: u64, entries: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(done_path(dir, segment))?;
    file.write_all(entries)?;
    file.sync_data()
}

/// The second pass (see the module notes): every unfinished message, in
/// the order it was stored, to `sink`. Finished segments are removed.
pub fn replay(
    dir: &Path,
    checked: &Checked,
    mut sink: impl FnMut(StoredMessage),
) -> io::Result<Replayed> {
    let mut replayed = Replayed {
        live: HashMap::new(),
        messages: 0,
    };
    let no_damage = Vec::new();
    for &segment in &checked.segments {
        let file = File::open(segment_path(dir, segment))?;
        let finished = read_done_entries(&done_path(dir, segment))?;
        let mut finished_whole = Vec::new();
        let mut live = 0u64;
        let damage = checked.damage.get(&segment).unwrap_or(&no_damage);
        envelopes(&file, damage, |offset, decoded| {
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
        })?;
        if !finished_whole.is_empty() {
            let mut entries = Vec::new();
            for offset in finished_whole {
                entries.extend_from_slice(&record::encode_done(offset, ALL_RECIPIENTS));
            }
            append_done_entries(dir, segment, &entries)?;
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
    let (len, crc) = record::decode_header(&header).ok_or_else(invalid)?;
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + HEADER_LEN as u64)?;
    let decoded = verified(&payload, crc).ok_or_else(invalid)?;
    let body = payload[decoded.body_offset..].to_vec();
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

/// A payload decoded, if its checksum is `crc`.
fn verified(payload: &[u8], crc: u32) -> Option<record::DecodedRecord> {
    (crc32fast::hash(payload) == crc)
        .then(|| record::decode_payload(payload))
        .flatten()
}

/// A segment read through a window of [`WINDOW`] octets (more for a
/// record bigger than that), in the order the records are visited.
struct Window<'a> {
    file: &'a File,
    len: u64,
    buffer: &'a mut Vec<u8>,
    /// File offset of `buffer[0]`.
    start: u64,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, buffer: &'a mut Vec<u8>) -> io::Result<Window<'a>> {
        buffer.clear();
        Ok(Window {
            len: file.metadata()?.len(),
            file,
            buffer,
            start: 0,
        })
    }

    /// The `len` octets at `offset`, or `None` past the end of the file.
    fn bytes(&mut self, offset: u64, len: usize) -> io::Result<Option<&[u8]>> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.len)
        {
            return Ok(None);
        }
        let end = self.start + self.buffer.len() as u64;
        if offset < self.start || offset + len as u64 > end {
            let want = (len.max(WINDOW) as u64).min(self.len - offset) as usize;
            self.buffer.resize(want, 0);
            self.file.read_exact_at(self.buffer, offset)?;
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(Some(&self.buffer[at..at + len]))
    }

    /// The record at `offset` and its length, or `None` when what is there
    /// is not a whole, valid record.
    fn record_at(&mut self, offset: u64) -> io::Result<Option<(record::DecodedRecord, u64)>> {
        let Some(header) = self.bytes(offset, HEADER_LEN)? else {
            return Ok(None);
        };
        let header: &[u8; HEADER_LEN] = header.try_into().expect("a header's length");
        let Some((len, crc)) = record::decode_header(header) else {
            return Ok(None);
        };
        let Some(bytes) = self.bytes(offset, HEADER_LEN + len)? else {
            return Ok(None);
        };
        Ok(verified(&bytes[HEADER_LEN..], crc).map(|decoded| (decoded, (HEADER_LEN + len) as u64)))
    }

    /// The offset of the first valid record at or after `from`, if any.
    fn next_record(&mut self, from: u64) -> io::Result<Option<u64>> {
        let magic = record::MAGIC;
        let mut start = from;
        while start + magic.len() as u64 <= self.len {
            let len = (WINDOW as u64).min(self.len - start) as usize;
            let chunk = self.bytes(start, len)?.expect("within the file");
            let candidates: Vec<u64> = chunk
                .windows(magic.len())
                .enumerate()
                .filter(|(_, window)| window == magic)
                .map(|(index, _)| start + index as u64)
                .collect();
            for candidate in candidates {
                if self.record_at(candidate)?.is_some() {
                    return Ok(Some(candidate));
                }
            }
            if start + len as u64 == self.len {
                break;
            }
            // Overlap so a magic split across windows is still seen.
            start += (len - (magic.len() - 1)) as u64;
        }
        Ok(None)
    }
}

/// Calls `visit` with every valid record of a segment, skipping damage to
/// the next valid record (logged, and noted in `skipped`); returns where
/// the valid records end (before the end of the file after a torn tail,
/// which the caller cuts off).
fn walk(
    segment: u64,
    window: &mut Window<'_>,
    skipped: &mut Vec<(u64, u64)>,
    mut visit: impl FnMut(record::DecodedRecord),
) -> io::Result<u64> {
    let mut offset = 0u64;
    while offset < window.len {
        let Some((decoded, len)) = window.record_at(offset)? else {
            // Normally a torn tail. Should valid records follow (damage in
            // the middle of the file), skip to them instead of cutting them off.
            match window.next_record(offset + 1)? {
                Some(next) => {
                    tracing::error!(
                        segment,
                        offset,
                        skipped_bytes = next - offset,
                        "spool segment damaged: skipping unreadable bytes to the next valid record"
                    );
                    skipped.push((offset, next));
                    offset = next;
                    continue;
                }
                None => {
                    tracing::warn!(
                        segment,
                        offset,
                        discarded_bytes = window.len - offset,
                        "discarding a torn write at the end of a spool segment (it was never acknowledged)"
                    );
                    return Ok(offset);
                }
            }
        };
        visit(decoded);
        offset += len;
    }
    Ok(offset)
}

/// Calls `visit` with the offset and envelope of every record of a segment
/// the first pass found valid (so no checksum is computed again), skipping
/// the `damage` it found; reads about [`ENVELOPE_PREFIX`] octets a record.
fn envelopes(
    file: &File,
    damage: &[(u64, u64)],
    mut visit: impl FnMut(u64, record::DecodedRecord),
) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut buffer = vec![0u8; HEADER_LEN + ENVELOPE_PREFIX];
    let mut offset = 0u64;
    while offset + HEADER_LEN as u64 <= len {
        if let Some((_, next)) = damage.iter().find(|(start, _)| *start == offset) {
            offset = *next;
            continue;
        }
        let want = ((HEADER_LEN + ENVELOPE_PREFIX) as u64).min(len - offset) as usize;
        buffer.resize(want, 0);
        file.read_exact_at(&mut buffer, offset)?;
        let header: &[u8; HEADER_LEN] = buffer[..HEADER_LEN].try_into().expect("a header");
        let Some((payload_len, _)) = record::decode_header(header) else {
            // The first pass left only valid records: the file changed.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("spool segment changed during recovery at offset {offset}"),
            ));
        };
        let decoded = match record::decode_prefix(&buffer[HEADER_LEN..], payload_len) {
            Some(decoded) => Some(decoded),
            None => {
                // An envelope longer than the prefix: read the payload.
                let mut payload = vec![0u8; payload_len];
                file.read_exact_at(&mut payload, offset + HEADER_LEN as u64)?;
                record::decode_payload(&payload)
            }
        };
        if let Some(decoded) = decoded {
            visit(offset, decoded);
        }
        offset += (HEADER_LEN + payload_len) as u64;
    }
    Ok(())
}
