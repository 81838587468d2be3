//! Start-up recovery: rebuild the queue from segment files and their
//! completion entries.
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
//! their completion entries. Recovery writes the missing entries (synced)
//! before anything is delivered, so the fact outlives the notification's
//! own segment.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{self, ALL_RECIPIENTS, DONE_ENTRY_LEN, HEADER_LEN, Settles};
use super::{Location, StoredMessage, done_path, segment_path};

pub struct Recovered {
    pub messages: Vec<StoredMessage>,
    /// Unfinished messages per remaining segment.
    pub live: HashMap<u64, u64>,
    pub next_segment: u64,
}

pub fn recover(dir: &Path) -> io::Result<Recovered> {
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

    let mut recovered = Recovered {
        messages: Vec::new(),
        live: HashMap::new(),
        next_segment: segments.last().map_or(1, |last| last + 1),
    };
    let mut settles = Vec::new();
    for &segment in &segments {
        let finished = read_done_entries(&done_path(dir, segment))?;
        scan_segment(
            dir,
            segment,
            &finished,
            &mut recovered.messages,
            &mut settles,
        )?;
    }
    apply_settles(dir, &settles, &mut recovered.messages)?;
    for message in &recovered.messages {
        *recovered.live.entry(message.location.segment).or_default() += 1;
    }
    for segment in segments {
        if !recovered.live.contains_key(&segment) {
            fs::remove_file(segment_path(dir, segment))?;
            let _ = fs::remove_file(done_path(dir, segment));
        }
    }
    File::open(dir)?.sync_all()?;
    if !recovered.messages.is_empty() {
        tracing::info!(
            messages = recovered.messages.len(),
            segments = recovered.live.len(),
            "recovered queued messages from the spool"
        );
    }
    Ok(recovered)
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

/// Finishes the recipients that settling records name, writing (and
/// syncing) the completion entries their side files lack; a message left
/// with no recipient is finished whole and dropped.
fn apply_settles(
    dir: &Path,
    settles: &[Settles],
    messages: &mut Vec<StoredMessage>,
) -> io::Result<()> {
    let mut finished_whole = HashSet::new();
    for settles in settles {
        let Some(message) = messages.iter_mut().find(|message| {
            message.location.segment == settles.segment && message.location.offset == settles.offset
        }) else {
            // Finished already (or its segment is gone with it).
            continue;
        };
        let missing: Vec<u32> = settles
            .recipients
            .iter()
            .copied()
            .filter(|recipient| message.pending.contains(recipient))
            .collect();
        if missing.is_empty() {
            continue;
        }
        message
            .pending
            .retain(|recipient| !missing.contains(recipient));
        let mut entries = Vec::new();
        for recipient in &missing {
            entries.extend_from_slice(&record::encode_done(settles.offset, *recipient));
        }
        if message.pending.is_empty() {
            entries.extend_from_slice(&record::encode_done(settles.offset, ALL_RECIPIENTS));
            finished_whole.insert((settles.segment, settles.offset));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(done_path(dir, settles.segment))?;
        file.write_all(&entries)?;
        file.sync_data()?;
        tracing::info!(
            queue_id = %message.id,
            recipients = missing.len(),
            "recipients reported to the sender in a queued notification are finished"
        );
    }
    messages.retain(|message| {
        !finished_whole.contains(&(message.location.segment, message.location.offset))
    });
    Ok(())
}

fn scan_segment(
    dir: &Path,
    segment: u64,
    finished: &HashMap<u64, HashSet<u32>>,
    messages: &mut Vec<StoredMessage>,
    settles: &mut Vec<Settles>,
) -> io::Result<()> {
    let path = segment_path(dir, segment);
    let file = File::open(&path)?;
    let file_len = file.metadata()?.len();
    let mut offset = 0u64;
    let mut payload = Vec::new();
    while offset < file_len {
        let Some(decoded) = read_record_at(&file, offset, file_len, &mut payload)? else {
            // Normally a torn tail. Should valid records follow (damage in
            // the middle of the file), skip to them instead of cutting them off.
            match find_next_record(&file, offset + 1, file_len)? {
                Some(next) => {
                    tracing::error!(
                        segment,
                        offset,
                        skipped_bytes = next - offset,
                        "spool segment damaged: skipping unreadable bytes to the next valid record"
                    );
                    offset = next;
                    continue;
                }
                None => {
                    tracing::warn!(
                        segment,
                        offset,
                        discarded_bytes = file_len - offset,
                        "discarding a torn write at the end of a spool segment (it was never acknowledged)"
                    );
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(offset)?;
                    file.sync_all()?;
                    break;
                }
            }
        };
        let record_len = (HEADER_LEN + payload.len()) as u64;
        let done = finished.get(&offset);
        let pending: Vec<u32> = (0..decoded.envelope.recipients.len() as u32)
            .filter(|index| !done.is_some_and(|set| set.contains(index)))
            .collect();
        let whole_done = done.is_some_and(|set| set.contains(&ALL_RECIPIENTS));
        let notification = decoded.settles.is_some();
        settles.extend(decoded.settles);
        if !whole_done && !pending.is_empty() {
            messages.push(StoredMessage {
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
                notification,
            });
        }
        offset += record_len;
    }
    Ok(())
}

/// Reads the record at `offset` into `payload`; `None` when what is there is
/// not a whole, valid record.
fn read_record_at(
    file: &File,
    offset: u64,
    file_len: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Option<record::DecodedRecord>> {
    let mut header = [0u8; HEADER_LEN];
    if file_len - offset < HEADER_LEN as u64 {
        return Ok(None);
    }
    file.read_exact_at(&mut header, offset)?;
    let Some((len, crc)) = record::decode_header(&header) else {
        return Ok(None);
    };
    if len as u64 > file_len - offset - HEADER_LEN as u64 {
        return Ok(None);
    }
    payload.resize(len, 0);
    file.read_exact_at(payload, offset + HEADER_LEN as u64)?;
    if crc32fast::hash(payload) != crc {
        return Ok(None);
    }
    Ok(record::decode_payload(payload))
}

/// The offset of the first valid record at or after `from`, if any.
fn find_next_record(file: &File, from: u64, file_len: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let mut chunk = Vec::new();
    let mut payload = Vec::new();
    let mut start = from;
    while start < file_len {
        let len = CHUNK.min(file_len - start);
        chunk.resize(len as usize, 0);
        file.read_exact_at(&mut chunk, start)?;
        for (index, window) in chunk.windows(record::MAGIC.len()).enumerate() {
            let candidate = start + index as u64;
            if window == record::MAGIC
                && read_record_at(file, candidate, file_len, &mut payload)?.is_some()
            {
                return Ok(Some(candidate));
            }
        }
        if start + len == file_len {
            break;
        }
        // Overlap so a magic split across chunks is still seen.
        start += len - (record::MAGIC.len() as u64 - 1);
    }
    Ok(None)
}
