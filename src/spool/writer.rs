//! The spool writer thread: the only code that writes queue files.
//!
//! It takes every request that is waiting, appends all new records with one
//! write and one fdatasync (group commit), and only then acknowledges them.
//! While it syncs, new requests queue up and form the next batch, so the sync
//! cost is shared by however many sessions are storing at once.
//!
//! A segment is deleted once every message in it is finished. The active
//! one too: once all its messages are finished it is retired (when it has
//! grown past [`RETIRE_FINISHED_AT`], or after a second without writes), so
//! delivered mail gives its disk space back without waiting for the
//! segment to fill up.
//!
//! After a failed write or sync the active segment is abandoned (its
//! unacknowledged tail cut off when possible) and the next batch starts a new
//! segment: a record is never appended behind bytes of unknown state, so
//! recovery's "stop at the first bad record" cannot hide an acknowledged one.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use prometheus::Histogram;
use tokio::sync::oneshot;

use super::record::{self, ALL_RECIPIENTS, Settles};
use super::{Location, done_path, segment_path};

/// How long completion entries may stay unsynced.
const DONE_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Most record bytes in one batch, so one huge batch cannot starve the rest.
const MAX_BATCH_BYTES: usize = 32 << 20;
/// An active segment whose messages are all finished is retired (and
/// deleted) at once from this size on; a smaller one waits for a second
/// without writes. A new segment costs a directory sync: under steady
/// traffic that keeps delivering everything, one per megabyte is noise.
const RETIRE_FINISHED_AT: u64 = 1 << 20;

pub enum Request {
    /// Append a record; reply once it is durable.
    Append {
        frame: Vec<u8>,
        /// Offset of the body inside `frame`.
        body_offset: u64,
        /// Recipients of another record this one finishes (a notification).
        settles: Option<Settles>,
        reply: oneshot::Sender<io::Result<Location>>,
    },
    /// A recipient (or, with `ALL_RECIPIENTS`, the message) is finished.
    Done {
        segment: u64,
        offset: u64,
        recipient: u32,
    },
    /// Recovery's replay is over: the unfinished messages per segment it
    /// handed out (see [`Writer::new`]).
    Recovered { live: HashMap<u64, u64> },
    /// Sync everything and stop.
    Close { reply: oneshot::Sender<()> },
}

struct Active {
    id: u64,
    file: File,
    len: u64,
}

struct PendingAppend {
    frame: Vec<u8>,
    body_offset: u64,
    settles: Option<Settles>,
    reply: oneshot::Sender<io::Result<Location>>,
}

pub struct Writer {
    dir: PathBuf,
    segment_size: u64,
    next_segment: u64,
    active: Option<Active>,
    /// Unfinished messages per segment; a segment at zero (not active) is deleted.
    live: HashMap<u64, u64>,
    /// Until recovery's replay reports the segments it found
    /// (`Request::Recovered`): messages finished meanwhile per segment the
    /// writer does not know yet (a recovered message may be delivered
    /// before the replay is over).
    finished_early: Option<HashMap<u64, u64>>,
    /// The first segment this writer made; older ones are recovery's.
    first_segment: u64,
    done_files: HashMap<u64, File>,
    done_dirty: bool,
    last_done_sync: Instant,
    /// Time of each group commit's fdatasync (the wait before a 250).
    fsync_seconds: Histogram,
}

impl Writer {
    /// A writer appending from segment `next_segment` on. It learns the
    /// older segments' unfinished messages from recovery's replay
    /// (`Request::Recovered`), and deletes none of them before.
    pub fn new(
        dir: PathBuf,
        segment_size: u64,
        next_segment: u64,
        fsync_seconds: Histogram,
    ) -> Self {
        Writer {
            dir,
            segment_size,
            next_segment,
            active: None,
            live: HashMap::new(),
            finished_early: Some(HashMap::new()),
            first_segment: next_segment,
            done_files: HashMap::new(),
            done_dirty: false,
            last_done_sync: Instant::now(),
            fsync_seconds,
        }
    }

    pub fn run(mut self, requests: Receiver<Request>) {
        loop {
            let first = match requests.recv_timeout(DONE_SYNC_INTERVAL) {
                Ok(request) => request,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_done_files();
                    self.retire_if_finished(1);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut appends = Vec::new();
            let mut batch_bytes = 0;
            let mut close = None;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append {
                        frame,
                        body_offset,
                        settles,
                        reply,
                    } => {
                        batch_bytes += frame.len();
                        appends.push(PendingAppend {
                            frame,
                            body_offset,
                            settles,
                            reply,
                        });
                    }
                    Request::Done {
                        segment,
                        offset,
                        recipient,
                    } => self.mark_done(segment, offset, recipient),
                    Request::Recovered { live } => self.recovered(live),
                    Request::Close { reply } => close = Some(reply),
                }
                if close.is_none() && batch_bytes < MAX_BATCH_BYTES {
                    next = requests.try_recv().ok();
                }
            }
            self.commit(appends);
            if close.is_some() || self.last_done_sync.elapsed() >= DONE_SYNC_INTERVAL {
                self.sync_done_files();
            }
            if let Some(reply) = close {
                let _ = reply.send(());
                return;
            }
        }
        self.sync_done_files();
    }

    /// Writes a batch, rotating segments at the size limit; one sync per segment touched.
    fn commit(&mut self, appends: Vec<PendingAppend>) {
        let mut run: Vec<PendingAppend> = Vec::new();
        let mut run_bytes = 0u64;
        for append in appends {
            let active_len = self.active.as_ref().map_or(0, |active| active.len);
            let size = append.frame.len() as u64;
            if active_len + run_bytes > 0 && active_len + run_bytes + size > self.segment_size {
                self.write_run(std::mem::take(&mut run));
                run_bytes = 0;
                self.retire_active();
            }
            run_bytes += size;
            run.push(append);
        }
        self.write_run(run);
    }

    /// Appends one run of records to the active segment and acknowledges them.
    fn write_run(&mut self, run: Vec<PendingAppend>) {
        if run.is_empty() {
            return;
        }
        let result = self.ensure_active().and_then(|()| {
            let active = self.active.as_mut().expect("ensured above");
            let mut buffer = Vec::with_capacity(run.iter().map(|a| a.frame.len()).sum());
            for append in &run {
                buffer.extend_from_slice(&append.frame);
            }
            active.file.write_all_at(&buffer, active.len)?;
            let started = Instant::now();
            active.file.sync_data()?;
            self.fsync_seconds.observe(started.elapsed().as_secs_f64());
            Ok((active.id, active.len))
        });
        match result {
            Ok((segment, start)) => {
                // What a settling record finishes is made durable before it
                // is acknowledged: once the sender may be told, the settled
                // recipients are finished even if that record's segment is
                // finished and deleted first.
                let mut settled = false;
                for settles in run.iter().filter_map(|append| append.settles.as_ref()) {
                    for recipient in &settles.recipients {
                        self.mark_done(settles.segment, settles.offset, *recipient);
                    }
                    settled = true;
                }
                if settled {
                    self.sync_done_files();
                }
                let mut offset = start;
                for append in run {
                    let location = Location {
                        segment,
                        offset,
                        body_offset: offset + append.body_offset,
                        body_len: append.frame.len() as u64 - append.body_offset,
                    };
                    offset += append.frame.len() as u64;
                    *self.live.entry(segment).or_default() += 1;
                    let _ = append.reply.send(Ok(location));
                }
                if let Some(active) = self.active.as_mut() {
                    active.len = offset;
                }
            }
            Err(error) => {
                tracing::error!(%error, messages = run.len(), "spool write failed; answering 452 and starting a new segment");
                self.abandon_active();
                for append in run {
                    let _ = append
                        .reply
                        .send(Err(io::Error::new(error.kind(), error.to_string())));
                }
            }
        }
    }

    fn ensure_active(&mut self) -> io::Result<()> {
        if self.active.is_some() {
            return Ok(());
        }
        let id = self.next_segment;
        self.next_segment += 1;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // The new name must be durable before any record in it is acknowledged.
        File::open(&self.dir)?.sync_all()?;
        self.live.entry(id).or_default();
        self.active = Some(Active { id, file, len: 0 });
        Ok(())
    }

    /// Stops appending to the active segment (it is full); deletes it if already finished.
    fn retire_active(&mut self) {
        if let Some(active) = self.active.take() {
            self.delete_if_finished(active.id);
        }
    }

    /// Retires the active segment when it holds `min_len` bytes or more and
    /// all its messages are finished: its space goes back now, not when it
    /// would have filled up.
    fn retire_if_finished(&mut self, min_len: u64) {
        let finished = self.active.as_ref().is_some_and(|active| {
            active.len >= min_len && self.live.get(&active.id).copied().unwrap_or(0) == 0
        });
        if finished {
            self.retire_active();
        }
    }

    /// After a failed write: cut off the unacknowledged tail if possible, then
    /// never append to this segment again.
    fn abandon_active(&mut self) {
        if let Some(active) = self.active.take() {
            if let Err(error) = active
                .file
                .set_len(active.len)
                .and_then(|()| active.file.sync_all())
            {
                tracing::warn!(%error, segment = active.id, "could not cut off a failed write; recovery will discard it by checksum");
            }
            self.delete_if_finished(active.id);
        }
    }

    /// Takes in the replay's counts, less what finished meanwhile, and
    /// deletes the segments that are finished already.
    fn recovered(&mut self, mut live: HashMap<u64, u64>) {
        let early = self.finished_early.take().unwrap_or_default();
        for (segment, finished) in early {
            if let Some(count) = live.get_mut(&segment) {
                *count = count.saturating_sub(finished);
            }
        }
        let segments: Vec<u64> = live.keys().copied().collect();
        self.live.extend(live);
        for segment in segments {
            self.delete_if_finished(segment);
        }
    }

    fn mark_done(&mut self, segment: u64, offset: u64, recipient: u32) {
        if !self.live.contains_key(&segment) {
            // A recovered message finished before the replay's counts came:
            // its entry is written, the count waits for them.
            let Some(early) = self.finished_early.as_mut() else {
                return;
            };
            if segment >= self.first_segment {
                return;
            }
            if recipient == ALL_RECIPIENTS {
                *early.entry(segment).or_default() += 1;
            }
            if let Err(error) = self.append_done(segment, offset, recipient) {
                tracing::warn!(%error, segment, offset, "could not record a completion; it may be delivered twice after a restart");
            }
            return;
        }
        if let Err(error) = self.append_done(segment, offset, recipient) {
            // Without the entry the message is sent again after a restart.
            tracing::warn!(%error, segment, offset, "could not record a completion; it may be delivered twice after a restart");
        }
        if recipient == ALL_RECIPIENTS {
            if let Some(live) = self.live.get_mut(&segment) {
                *live = live.saturating_sub(1);
            }
            self.delete_if_finished(segment);
            self.retire_if_finished(RETIRE_FINISHED_AT.min(self.segment_size));
        }
    }

    fn append_done(&mut self, segment: u64, offset: u64, recipient: u32) -> io::Result<()> {
        let file = match self.done_files.entry(segment) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(done_path(&self.dir, segment))?,
            ),
        };
        file.write_all(&record::encode_done(offset, recipient))?;
        self.done_dirty = true;
        Ok(())
    }

    fn delete_if_finished(&mut self, segment: u64) {
        let is_active = self
            .active
            .as_ref()
            .is_some_and(|active| active.id == segment);
        if is_active || self.live.get(&segment).copied().unwrap_or(0) > 0 {
            return;
        }
        self.live.remove(&segment);
        self.done_files.remove(&segment);
        // Segment first, made durable, then its side file: a crash in between
        // leaves an orphan side file (ignored), never records without their
        // completion entries.
        let removed = fs::remove_file(segment_path(&self.dir, segment))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        match removed {
            Ok(()) => {
                let _ = fs::remove_file(done_path(&self.dir, segment));
                tracing::debug!(segment, "spool segment finished and removed");
            }
            Err(error) => {
                tracing::warn!(%error, segment, "could not remove a finished spool segment")
            }
        }
    }

    fn sync_done_files(&mut self) {
        if !self.done_dirty {
            return;
        }
        for (segment, file) in &self.done_files {
            if let Err(error) = file.sync_data() {
                tracing::warn!(%error, segment, "could not sync completion entries");
            }
        }
        if let Err(error) = File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            tracing::warn!(%error, "could not sync the queue directory");
        }
        self.done_dirty = false;
        self.last_done_sync = Instant::now();
    }
}
