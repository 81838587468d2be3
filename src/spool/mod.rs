//! The durable spool: accepted messages live here until every recipient is
//! delivered or dead-lettered.
//!
//! Layout under `spool.dir`:
//! - `queue/NNNNNNNNNNNNNNNN.seg`: append-only segment files of message records
//!   ([`record`]); one writer thread appends, group-commits and fsyncs them.
//! - `queue/NNNNNNNNNNNNNNNN.done`: per-segment completion entries (a message
//!   or one recipient finished). A segment whose records are all finished is
//!   deleted with its side file; nothing refers across segments, so deletion
//!   never loses another segment's state.
//! - `dead/`: dead-letter files, one per permanent failure, fsynced.
//! - `shaping/<gateway>.toml`: each gateway's learned shaping state
//!   (`shaper::SavedState`), replaced atomically (write, fsync, rename, fsync).
//! - `lock`: held while a process uses the spool.
//!
//! Invariants:
//! - [`Spool::store`] returns only after the record is on stable storage
//!   (write + fdatasync of the segment; a new segment's directory entry is
//!   fsynced before its first record is acknowledged). This is what lets the
//!   session answer 250 (DESIGN.md invariant 1).
//! - Many sessions storing at once share one fdatasync (group commit), so
//!   durability costs one sync per batch, not per message.
//! - Completion entries are written at once but synced at most a second
//!   later: a crash may forget a delivery and send that message again
//!   (at-least-once), never the other way round.
//! - Bodies are not kept in memory: a queued message is its envelope and the
//!   position of its body in a segment.

pub mod record;
mod recovery;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::Histogram;
use tokio::sync::oneshot;

use crate::config::SpoolConfig;
use crate::smtp::MailParams;
use writer::{Request, Writer};

/// The envelope of one message: who sent it, to whom, and how it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    pub params: MailParams,
    pub client_ip: IpAddr,
    /// Unix seconds when the message was accepted; the retry age counts from it.
    pub received_at: u64,
    /// Whether a recipient dead-lettered produces a delivery status
    /// notification to the sender: the app's `dsn` when the message was
    /// accepted (kept in the record, so an app that logged in keeps it
    /// after a restart).
    pub dsn: bool,
}

/// Where a message's record and body are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    /// Offset of the record; completion entries name it.
    pub offset: u64,
    pub body_offset: u64,
    pub body_len: u64,
}

/// A message in the spool, as the delivery side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    /// Name of the gateway chosen when the message was accepted.
    pub gateway: String,
    pub envelope: Envelope,
    pub location: Location,
    /// Indices into `envelope.recipients` still to be delivered.
    pub pending: Vec<u32>,
    /// A delivery status notification smtp-shaper wrote (stored with
    /// [`Spool::store_report`]), not mail an app sent.
    pub notification: bool,
}

/// A dead-letter file read back (to queue it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub queue_id: String,
    pub gateway: String,
    /// The failed recipients only; `received_at` is now.
    pub envelope: Envelope,
    /// The message as it was queued (our Received: first).
    pub body: Vec<u8>,
}

impl DeadLetter {
    /// Parses the `X-Smtp-Shaper-*` lines [`Spool::dead_letter`] writes
    /// in front of the message.
    fn parse(bytes: &[u8]) -> Option<DeadLetter> {
        let mut letter = DeadLetter {
            queue_id: String::new(),
            gateway: String::new(),
            envelope: Envelope {
                sender: String::new(),
                recipients: Vec::new(),
                params: MailParams::default(),
                client_ip: IpAddr::from([127, 0, 0, 1]),
                received_at: unix_seconds(),
                // The sender was told (if the app wanted it) when the
                // recipients failed; queueing them again is the operator's
                // retry, and a second failure goes to the dead letters only.
                dsn: false,
            },
            body: Vec::new(),
        };
        let mut rest = bytes;
        let mut sender_seen = false;
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let line = std::str::from_utf8(&rest[..end]).ok()?;
            let Some((name, value)) = line
                .strip_prefix("X-Smtp-Shaper-")
                .and_then(|line| line.split_once(": "))
            else {
                break;
            };
            let address = |value: &str| {
                value
                    .strip_prefix('<')
                    .and_then(|value| value.split_once('>'))
                    .map(|(address, _)| address.to_string())
            };
            match name {
                "Queue-Id" => letter.queue_id = value.to_string(),
                "Gateway" => letter.gateway = value.to_string(),
                "Sender" => {
                    letter.envelope.sender = address(value)?;
                    sender_seen = true;
                }
                "Failed-Recipient" => letter.envelope.recipients.push(address(value)?),
                "Client" => letter.envelope.client_ip = value.parse().ok()?,
                "Params" => letter.envelope.params = MailParams::from_words(value).ok()?,
                _ => {}
            }
            rest = &rest[end + 2..];
        }
        if letter.queue_id.is_empty() || !sender_seen || letter.envelope.recipients.is_empty() {
            return None;
        }
        letter.body = rest.to_vec();
        Some(letter)
    }
}

/// Why a message could not be stored. The session answers it with 452 4.3.1.
#[derive(Debug)]
pub struct SpoolError(pub io::Error);

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spool write failed: {}", self.0)
    }
}

impl std::error::Error for SpoolError {}

/// The messages a spool held when it was opened, still to be handed to
/// the delivery side (see [`Spool::open`]).
pub struct Recovery {
    spool: Spool,
    checked: recovery::Checked,
}

impl Recovery {
    /// Hands every unfinished message to `sink`, oldest first, one at a
    /// time (nothing but the message being handed over is held here);
    /// returns how many. Finished segments are removed, and the writer
    /// learns what the others hold.
    pub fn replay(self, sink: impl FnMut(StoredMessage)) -> io::Result<u64> {
        let replayed = recovery::replay(&self.spool.inner.queue_dir, &self.checked, sink)?;
        // The writer stops only at close; then nothing is deleted anyway.
        let _ = self.spool.send(Request::Recovered {
            live: replayed.live,
        });
        Ok(replayed.messages)
    }
}

/// A handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    queue_dir: PathBuf,
    dead_dir: PathBuf,
    shaping_dir: PathBuf,
    requests: mpsc::Sender<Request>,
    _lock: File,
}

const QUEUE_DIR: &str = "queue";
const DEAD_DIR: &str = "dead";
const SHAPING_DIR: &str = "shaping";

/// A new queue id: 10 hex digits of milliseconds and 6 of a process-wide
/// counter that starts at a random value, so ids stay unique across restarts
/// and sort roughly by arrival.
pub fn new_queue_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| fastrand::u32(..));
    let count = start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!(
        "{:010X}{:06X}",
        unix_millis() & 0xFF_FFFF_FFFF,
        count & 0xFF_FFFF
    )
}

/// Where dead letter `name` sorts: oldest first. Names are
/// `<queue id>.<unix millis>.eml` (see [`Spool::dead_letter`]): the order
/// is in the name, so listing stats no file.
pub fn dead_letter_order(name: &str) -> (u64, String) {
    let millis = name
        .strip_suffix(".eml")
        .and_then(|stem| stem.rsplit_once('.'))
        .and_then(|(_, millis)| millis.parse().ok())
        .unwrap_or(0);
    (millis, name.to_string())
}

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    unix_millis() / 1000
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Spool {
    /// Opens (creating if needed) the spool, checks what is queued (cutting
    /// off torn writes, finishing what queued notifications settle) and
    /// starts the writer. The queued messages come from
    /// [`Recovery::replay`], one at a time, once the delivery side can take
    /// them.
    /// The writer observes each group commit's fdatasync in `fsync_seconds`
    /// (telemetry's `spool_fsync_seconds`).
    pub fn open(config: &SpoolConfig, fsync_seconds: Histogram) -> io::Result<(Spool, Recovery)> {
        let dir = &config.dir;
        for sub in [
            dir.clone(),
            dir.join(QUEUE_DIR),
            dir.join(DEAD_DIR),
            dir.join(SHAPING_DIR),
        ] {
            fs::create_dir_all(&sub).map_err(|error| annotate(error, &sub, "cannot create"))?;
        }
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| annotate(error, &lock_path, "cannot open"))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "spool {} is in use by another smtp-shaper process",
                    dir.display()
                ),
            )
        })?;
        let queue_dir = dir.join(QUEUE_DIR);
        let checked = recovery::check(&queue_dir)?;
        let (requests, receiver) = mpsc::channel();
        let writer = Writer::new(
            queue_dir.clone(),
            config.segment_size,
            checked.next_segment,
            fsync_seconds,
        );
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(receiver))?;
        let spool = Spool {
            inner: Arc::new(Inner {
                dir: dir.clone(),
                queue_dir,
                dead_dir: dir.join(DEAD_DIR),
                shaping_dir: dir.join(SHAPING_DIR),
                requests,
                _lock: lock,
            }),
        };
        let recovery = Recovery {
            spool: spool.clone(),
            checked,
        };
        Ok((spool, recovery))
    }

    /// Reads a queued message back from its record (one the delivery queue
    /// kept only a reference to), with its body; every recipient pending.
    pub async fn read_message(
        &self,
        segment: u64,
        offset: u64,
    ) -> io::Result<(StoredMessage, Vec<u8>)> {
        let dir = self.inner.queue_dir.clone();
        tokio::task::spawn_blocking(move || recovery::read_message(&dir, segment, offset))
            .await
            .map_err(io::Error::other)?
    }

    /// [`Spool::read_message`] on the caller's thread, for a few messages
    /// at a time (a page of the admin listing).
    pub fn read_message_now(&self, segment: u64, offset: u64) -> io::Result<StoredMessage> {
        recovery::read_message(&self.inner.queue_dir, segment, offset).map(|(message, _)| message)
    }

    /// Stores a message durably; returns once it is on stable storage.
    pub async fn store(
        &self,
        id: String,
        gateway: &str,
        envelope: Envelope,
        body_parts: &[&[u8]],
    ) -> Result<StoredMessage, SpoolError> {
        self.append(id, gateway, envelope, None, body_parts).await
    }

    /// Stores a delivery status notification about `recipients` of
    /// `reported`, and finishes those recipients, as one durable fact:
    /// the notification's record names them (format 2, see [`record`]),
    /// so a crash at any instant leaves either no notification and the
    /// recipients still queued (they are tried again, and a second failure
    /// reports them then), or the notification queued and the recipients
    /// finished; never a second notification for the same failure. The
    /// writer also writes and syncs their completion entries before it
    /// answers, and recovery writes them from the record should a crash
    /// have come in between.
    pub async fn store_report(
        &self,
        id: String,
        gateway: &str,
        envelope: Envelope,
        body: &[u8],
        reported: &StoredMessage,
        recipients: &[u32],
    ) -> Result<StoredMessage, SpoolError> {
        let settles = record::Settles {
            segment: reported.location.segment,
            offset: reported.location.offset,
            recipients: recipients.to_vec(),
        };
        self.append(id, gateway, envelope, Some(settles), &[body])
            .await
    }

    async fn append(
        &self,
        id: String,
        gateway: &str,
        envelope: Envelope,
        settles: Option<record::Settles>,
        body_parts: &[&[u8]],
    ) -> Result<StoredMessage, SpoolError> {
        let (frame, body_offset) =
            record::encode(&id, gateway, &envelope, settles.as_ref(), body_parts);
        let body_len = (frame.len() - body_offset) as u64;
        let notification = settles.is_some();
        let (reply, done) = oneshot::channel();
        self.send(Request::Append {
            frame,
            body_offset: body_offset as u64,
            settles,
            reply,
        })
        .map_err(SpoolError)?;
        let location = done
            .await
            .map_err(|_| SpoolError(io::Error::other("spool writer stopped")))?
            .map_err(SpoolError)?;
        let pending = (0..envelope.recipients.len() as u32).collect();
        Ok(StoredMessage {
            id,
            gateway: gateway.to_string(),
            envelope,
            location: Location {
                body_len,
                ..location
            },
            pending,
            notification,
        })
    }

    /// Records that one recipient of `message` is finished (delivered or dead-lettered).
    pub fn recipient_done(&self, message: &StoredMessage, recipient: u32) {
        self.done(message, recipient);
    }

    /// Records that `message` is finished; its space is reclaimed with its segment.
    pub fn message_done(&self, message: &StoredMessage) {
        self.done(message, record::ALL_RECIPIENTS);
    }

    fn done(&self, message: &StoredMessage, recipient: u32) {
        // The writer only stops at shutdown; a lost entry means a redelivery.
        let _ = self.send(Request::Done {
            segment: message.location.segment,
            offset: message.location.offset,
            recipient,
        });
    }

    /// Reads a queued message's body (trace header included) from its segment.
    pub async fn read_body(&self, location: Location) -> io::Result<Vec<u8>> {
        let path = segment_path(&self.inner.queue_dir, location.segment);
        tokio::task::spawn_blocking(move || {
            let file = File::open(&path)?;
            let mut body = vec![0; location.body_len as usize];
            file.read_exact_at(&mut body, location.body_offset)?;
            Ok(body)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Writes a dead-letter file for the given failed recipients, durably,
    /// and returns its path. The caller then marks those recipients done.
    pub async fn dead_letter(
        &self,
        message: &StoredMessage,
        failures: &[(u32, String)],
        gateway: &str,
    ) -> io::Result<PathBuf> {
        let body = self.read_body(message.location).await?;
        let mut text = String::new();
        text.push_str(&format!("X-Smtp-Shaper-Queue-Id: {}\r\n", message.id));
        text.push_str(&format!("X-Smtp-Shaper-Gateway: {gateway}\r\n"));
        text.push_str(&format!(
            "X-Smtp-Shaper-Sender: <{}>\r\n",
            message.envelope.sender
        ));
        text.push_str(&format!(
            "X-Smtp-Shaper-Client: {}\r\n",
            message.envelope.client_ip
        ));
        let words = MailParams {
            size: None,
            ..message.envelope.params.clone()
        }
        .to_words();
        if !words.is_empty() {
            text.push_str(&format!("X-Smtp-Shaper-Params: {words}\r\n"));
        }
        for (recipient, reason) in failures {
            let address = message
                .envelope
                .recipients
                .get(*recipient as usize)
                .map_or("", String::as_str);
            let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
            text.push_str(&format!(
                "X-Smtp-Shaper-Failed-Recipient: <{address}>; {reason}\r\n"
            ));
        }
        text.push_str(&format!(
            "X-Smtp-Shaper-Dead-At: {}\r\n",
            crate::smtp::trace::rfc5322_date(unix_seconds())
        ));
        let name = format!("{}.{}.eml", message.id, unix_millis());
        replace_durably(
            self.inner.dead_dir.clone(),
            name,
            vec![text.into_bytes(), body],
        )
        .await
    }

    /// Calls `visit` with the name of every dead-letter file, in no
    /// order, reading the directory as it goes (nothing is collected).
    pub fn visit_dead_letters(&self, mut visit: impl FnMut(String)) -> io::Result<()> {
        for entry in fs::read_dir(&self.inner.dead_dir)? {
            let Ok(entry) = entry else { continue };
            if let Ok(name) = entry.file_name().into_string()
                && name.ends_with(".eml")
            {
                visit(name);
            }
        }
        Ok(())
    }

    /// Dead-letter files waiting in `dead/`.
    pub fn dead_letter_count(&self) -> io::Result<usize> {
        let mut count = 0;
        self.visit_dead_letters(|_| count += 1)?;
        Ok(count)
    }

    /// Reads dead letter `name` back: its envelope (the failed recipients
    /// only) and the message as it was queued.
    pub async fn read_dead_letter(&self, name: &str) -> io::Result<DeadLetter> {
        if name.contains('/') || !name.ends_with(".eml") || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not a dead-letter file name",
            ));
        }
        let path = self.inner.dead_dir.join(name);
        let bytes = tokio::task::spawn_blocking(move || fs::read(path))
            .await
            .map_err(io::Error::other)??;
        DeadLetter::parse(&bytes).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} is not a dead letter written by smtp-shaper"),
            )
        })
    }

    /// Removes dead letter `name` (it was queued again), durably.
    pub fn remove_dead_letter(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.inner.dead_dir.join(name))?;
        File::open(&self.inner.dead_dir)?.sync_all()
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The saved shaping state of `gateway`, if there is one.
    pub fn load_shaping_state(&self, gateway: &str) -> io::Result<Option<String>> {
        let path = self.inner.shaping_dir.join(format!("{gateway}.toml"));
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(annotate(error, &path, "cannot read")),
        }
    }

    /// Replaces the saved shaping state of `gateway`; returns once it is on
    /// stable storage.
    pub async fn save_shaping_state(&self, gateway: &str, text: String) -> io::Result<()> {
        let name = format!("{gateway}.toml");
        replace_durably(
            self.inner.shaping_dir.clone(),
            name,
            vec![text.into_bytes()],
        )
        .await
        .map(|_| ())
    }

    /// Bytes free for unprivileged users on the spool's file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        free_bytes_at(&self.inner.dir)
    }

    /// Whether the spool can take a write now: creates, syncs and removes a
    /// small probe file (what /readyz asks).
    pub fn check_writable(&self) -> io::Result<()> {
        let probe = self.inner.dir.join(".ready-probe");
        let result = File::create(&probe).and_then(|mut file| {
            file.write_all(b"ready\n")?;
            file.sync_data()
        });
        let _ = fs::remove_file(&probe);
        result.map_err(|error| annotate(error, &probe, "cannot write"))
    }

    /// Syncs completion entries and stops the writer; called once at shutdown.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.send(Request::Close { reply }).is_ok() {
            let _ = done.await;
        }
    }

    fn send(&self, request: Request) -> io::Result<()> {
        self.inner
            .requests
            .send(request)
            .map_err(|_| io::Error::other("spool writer stopped"))
    }
}

/// Writes `dir/name` from `parts` so that a crash leaves the old file or the
/// new one, never a mix: a temporary file, fsync, rename, fsync of the
/// directory. Returns the path.
async fn replace_durably(dir: PathBuf, name: String, parts: Vec<Vec<u8>>) -> io::Result<PathBuf> {
    tokio::task::spawn_blocking(move || {
        let temporary = format!(".{name}.tmp");
        write_durably(&dir, &name, &temporary, &parts)
    })
    .await
    .map_err(io::Error::other)?
}

/// [`replace_durably`]'s work, blocking, through the temporary file
/// `dir/temporary` (another process writing the same file uses another
/// name, so two writers never mix their bytes).
fn write_durably(
    dir: &Path,
    name: &str,
    temporary: &str,
    parts: &[Vec<u8>],
) -> io::Result<PathBuf> {
    let temporary = dir.join(temporary);
    let path = dir.join(name);
    let mut file = File::create(&temporary)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()?;
    fs::rename(&temporary, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// The saved shaping state file of `gateway` in the spool at `dir`.
pub fn shaping_state_path(dir: &Path, gateway: &str) -> PathBuf {
    dir.join(SHAPING_DIR).join(format!("{gateway}.toml"))
}

/// Replaces the saved shaping state of `gateway` in the spool at `dir` from
/// outside the service (`smtp-shaper learn`, which may run beside it): the
/// same crash-safe write as the service's, through a temporary file of its
/// own. Creates `shaping/` when the spool is new.
pub fn replace_shaping_state(dir: &Path, gateway: &str, text: &str) -> io::Result<PathBuf> {
    let shaping = dir.join(SHAPING_DIR);
    fs::create_dir_all(&shaping).map_err(|error| annotate(error, &shaping, "cannot create"))?;
    let name = format!("{gateway}.toml");
    let temporary = format!(".{name}.learn.tmp");
    write_durably(&shaping, &name, &temporary, &[text.as_bytes().to_vec()])
        .map_err(|error| annotate(error, &shaping.join(&name), "cannot write"))
}

/// Holds the saved shaping state of `gateway` for one read-and-replace
/// (`learn`'s merge, the service's check-and-save) until the file returned
/// is dropped: the two never interleave, so neither writes over what the
/// other just wrote unseen. An advisory lock on `shaping/.<gateway>.lock`,
/// released by the kernel if the process dies.
pub fn lock_shaping_state(dir: &Path, gateway: &str) -> io::Result<File> {
    let shaping = dir.join(SHAPING_DIR);
    fs::create_dir_all(&shaping).map_err(|error| annotate(error, &shaping, "cannot create"))?;
    let path = shaping.join(format!(".{gateway}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| annotate(error, &path, "cannot open"))?;
    file.lock()
        .map_err(|error| annotate(error, &path, "cannot lock"))?;
    Ok(file)
}

/// Which file the saved shaping state of `gateway` is now (device, inode,
/// size, modification time): a change tells a running service that
/// another process (`learn`) replaced it. `None` when there is none.
pub fn shaping_state_identity(dir: &Path, gateway: &str) -> Option<(u64, u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(shaping_state_path(dir, gateway)).ok()?;
    Some((
        metadata.dev(),
        metadata.ino(),
        metadata.size(),
        metadata.mtime(),
        metadata.mtime_nsec(),
    ))
}

/// Bytes free for unprivileged users on the file system holding `path`.
fn free_bytes_at(path: &Path) -> io::Result<u64> {
    let path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed struct to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// A segment holds its whole size until every message in it is finished:
/// with `segment_size` above a quarter of the free space, a few segments
/// holding one unfinished message each can fill the disk (then mail is
/// answered 452). Says so for `check-config` and the start-up log; the
/// spool directory need not exist yet (its nearest existing parent's file
/// system is asked).
pub fn segment_size_warning(config: &SpoolConfig) -> Option<String> {
    let existing = config.dir.ancestors().find(|dir| dir.exists())?;
    let free = free_bytes_at(existing).ok()?;
    (config.segment_size > free / 4).then(|| {
        format!(
            "spool.segment_size ({} MiB) is more than a quarter of the free space on the spool's file system ({} MiB): a segment keeps its space until all its messages are finished, so a few can fill the disk; lower segment_size (e.g. to {} MiB) or give the spool more room",
            config.segment_size >> 20,
            free >> 20,
            ((free / 16) >> 20).max(1)
        )
    })
}

fn segment_path(queue_dir: &Path, segment: u64) -> PathBuf {
    queue_dir.join(format!("{segment:016X}.seg"))
}

fn done_path(queue_dir: &Path, segment: u64) -> PathBuf {
    queue_dir.join(format!("{segment:016X}.done"))
}

fn annotate(error: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::MailParams;

    fn fsync_seconds() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("fsync", "fsync")).unwrap()
    }

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            segment_size: 64 * 1024,
            active_limit: 10_000,
        }
    }

    fn envelope(recipients: usize) -> Envelope {
        Envelope {
            sender: "app@example.com".into(),
            recipients: (0..recipients)
                .map(|n| format!("r{n}@example.org"))
                .collect(),
            params: MailParams::default(),
            client_ip: "127.0.0.1".parse().unwrap(),
            received_at: 1_000,
            dsn: true,
        }
    }

    async fn store(spool: &Spool, n: usize, body: &[u8]) -> StoredMessage {
        spool
            .store(
                format!("Q{n}"),
                "primary",
                envelope(2),
                &[b"Received: x\r\n", body],
            )
            .await
            .unwrap()
    }

    /// Opens the spool and replays what it holds into a list.
    fn open(dir: &Path) -> (Spool, Vec<StoredMessage>) {
        let (spool, recovery) = Spool::open(&config(dir), fsync_seconds()).unwrap();
        let mut messages = Vec::new();
        let count = recovery.replay(|message| messages.push(message)).unwrap();
        assert_eq!(count, messages.len() as u64);
        (spool, messages)
    }

    async fn reopen(dir: &Path, spool: Spool) -> (Spool, Vec<StoredMessage>) {
        spool.close().await;
        drop(spool);
        open(dir)
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir.join(QUEUE_DIR))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn learn_and_the_service_take_turns_on_a_shaping_state() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_shaping_state(dir.path(), "g").unwrap();
        let other = File::open(dir.path().join("shaping/.g.lock")).unwrap();
        assert!(other.try_lock().is_err(), "held: the other waits");
        drop(held);
        other.try_lock().expect("released");
        // A temporary file a killed writer left does not stand in the way.
        std::fs::write(dir.path().join("shaping/.g.toml.learn.tmp"), "torn").unwrap();
        replace_shaping_state(dir.path(), "g", "whole\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(shaping_state_path(dir.path(), "g")).unwrap(),
            "whole\n"
        );
    }

    #[tokio::test]
    async fn stored_messages_survive_a_reopen_with_their_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, recovered) = open(dir.path());
        assert!(recovered.is_empty());
        let first = store(&spool, 1, b"one\r\n").await;
        let second = store(&spool, 2, b"two\r\n").await;
        let (spool, recovered) = reopen(dir.path(), spool).await;
        assert_eq!(recovered, vec![first.clone(), second]);
        assert_eq!(
            spool.read_body(recovered[0].location).await.unwrap(),
            b"Received: x\r\none\r\n"
        );
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = open(dir.path());
        let error = Spool::open(&config(dir.path()), fsync_seconds())
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("in use by another smtp-shaper"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn completions_are_remembered_per_recipient_and_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let finished = store(&spool, 1, b"a\r\n").await;
        let half = store(&spool, 2, b"b\r\n").await;
        spool.message_done(&finished);
        spool.recipient_done(&half, 0);
        let (_spool, recovered) = reopen(dir.path(), spool).await;
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].id, "Q2");
        assert_eq!(recovered[0].pending, vec![1]);
    }

    #[tokio::test]
    async fn a_torn_final_record_is_discarded_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        store(&spool, 1, b"kept\r\n").await;
        let torn = store(&spool, 2, b"torn\r\n").await;
        spool.close().await;
        drop(spool);
        // Simulate a crash in the middle of writing the second record.
        let path = segments(dir.path()).pop().unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(torn.location.offset + 20).unwrap();
        drop(file);
        let (spool, recovered) = open(dir.path());
        assert_eq!(
            recovered.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["Q1"]
        );
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            torn.location.offset,
            "torn tail cut off"
        );
        // New records after recovery are found again.
        store(&spool, 3, b"after\r\n").await;
        let (_spool, recovered) = reopen(dir.path(), spool).await;
        assert_eq!(
            recovered.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["Q1", "Q3"]
        );
    }

    #[tokio::test]
    async fn a_record_with_a_bad_checksum_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        store(&spool, 1, b"kept\r\n").await;
        let damaged = store(&spool, 2, b"damaged\r\n").await;
        spool.close().await;
        drop(spool);
        let path = segments(dir.path()).pop().unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", damaged.location.body_offset)
            .unwrap();
        drop(file);
        let (_spool, recovered) = open(dir.path());
        assert_eq!(
            recovered.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["Q1"]
        );
    }

    #[tokio::test]
    async fn damage_in_the_middle_does_not_lose_the_records_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        store(&spool, 1, b"first\r\n").await;
        let damaged = store(&spool, 2, b"damaged\r\n").await;
        store(&spool, 3, b"third\r\n").await;
        spool.close().await;
        drop(spool);
        let path = segments(dir.path()).pop().unwrap();
        let length = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"\0\0\0\0", damaged.location.offset)
            .unwrap();
        drop(file);
        let (spool, recovered) = open(dir.path());
        assert_eq!(
            recovered.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["Q1", "Q3"]
        );
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            length,
            "nothing cut off"
        );
        assert_eq!(
            spool.read_body(recovered[1].location).await.unwrap(),
            b"Received: x\r\nthird\r\n"
        );
    }

    #[tokio::test]
    async fn finished_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let body = vec![b'x'; 20_000];
        let mut stored = Vec::new();
        for n in 0..10 {
            stored.push(store(&spool, n, &body).await);
        }
        assert!(segments(dir.path()).len() >= 3, "rotated at 64KiB");
        for message in &stored[..9] {
            spool.message_done(message);
        }
        let (spool, recovered) = reopen(dir.path(), spool).await;
        assert_eq!(recovered.len(), 1);
        assert_eq!(
            segments(dir.path()).len(),
            1,
            "only the segment with Q9 is left"
        );
        spool.message_done(&recovered[0]);
        let (_spool, recovered) = reopen(dir.path(), spool).await;
        assert!(recovered.is_empty());
        assert!(segments(dir.path()).is_empty());
    }

    /// Polls until the spool holds `count` segment files (a completion
    /// reaches the writer thread a little later); panics after 30 s.
    async fn segments_become(dir: &Path, count: usize) {
        for _ in 0..3_000 {
            if segments(dir).len() == count {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{} segments, not {count}", segments(dir).len());
    }

    #[tokio::test]
    async fn the_active_segment_gives_its_space_back_once_its_messages_are_finished() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            segment_size: 64 << 20,
            ..config(dir.path())
        };
        let (spool, recovery) = Spool::open(&config, fsync_seconds()).unwrap();
        recovery.replay(|_| {}).unwrap();
        // Past a megabyte, finished: retired and deleted at once.
        let big = vec![b'x'; 600_000];
        let first = [store(&spool, 1, &big).await, store(&spool, 2, &big).await];
        assert_eq!(segments(dir.path()).len(), 1);
        for message in &first {
            spool.message_done(message);
        }
        segments_become(dir.path(), 0).await;
        // A small one goes in a new segment, deleted after a second without
        // writes once it is finished.
        let small = store(&spool, 3, b"small\r\n").await;
        assert_eq!(segments(dir.path()).len(), 1);
        spool.message_done(&small);
        segments_become(dir.path(), 0).await;
        // Still usable, and what is stored survives a restart.
        let kept = store(&spool, 4, b"kept\r\n").await;
        let (_spool, recovered) = reopen(dir.path(), spool).await;
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].id, kept.id);
    }

    #[tokio::test]
    async fn an_envelope_longer_than_the_replay_reads_at_first_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let short = store(&spool, 1, b"short\r\n").await;
        let long = spool
            .store("Q2".into(), "primary", envelope(300), &[b"long\r\n"])
            .await
            .unwrap();
        let after = store(&spool, 3, b"after\r\n").await;
        let (_spool, recovered) = reopen(dir.path(), spool).await;
        assert_eq!(recovered, vec![short, long, after]);
    }

    #[tokio::test]
    async fn messages_finished_while_the_replay_runs_free_their_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let body = vec![b'x'; 20_000];
        for n in 0..10 {
            store(&spool, n, &body).await;
        }
        spool.close().await;
        drop(spool);
        assert!(segments(dir.path()).len() >= 3);
        // Delivered as soon as handed out: before the writer has the
        // replay's counts.
        let (spool, recovery) = Spool::open(&config(dir.path()), fsync_seconds()).unwrap();
        let replayed = recovery
            .replay(|message| spool.message_done(&message))
            .unwrap();
        assert_eq!(replayed, 10);
        spool.close().await;
        drop(spool);
        assert!(
            segments(dir.path()).is_empty(),
            "every segment finished and removed: {:?}",
            segments(dir.path())
        );
        let (_spool, recovered) = open(dir.path());
        assert!(recovered.is_empty());
    }

    async fn report(spool: &Spool, reported: &StoredMessage, recipients: &[u32]) -> StoredMessage {
        let mut envelope = envelope(1);
        envelope.sender.clear();
        envelope.dsn = false;
        spool
            .store_report(
                "R1".into(),
                "primary",
                envelope,
                b"report\r\n",
                reported,
                recipients,
            )
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_stored_report_finishes_the_recipients_it_reports() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let original = store(&spool, 1, b"a\r\n").await;
        let stored = report(&spool, &original, &[0]).await;
        assert!(stored.notification);
        let (_spool, recovered) = reopen(dir.path(), spool).await;
        assert_eq!(recovered.len(), 2);
        assert_eq!(
            (recovered[0].id.as_str(), recovered[0].pending.clone()),
            ("Q1", vec![1])
        );
        assert!(!recovered[0].notification);
        assert_eq!(recovered[1].id, "R1");
        assert!(
            recovered[1].notification,
            "known as a report after a restart"
        );
        assert!(!recovered[1].envelope.dsn && recovered[1].envelope.sender.is_empty());
    }

    #[tokio::test]
    async fn a_crash_before_the_completions_are_synced_cannot_report_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let half = store(&spool, 1, b"a\r\n").await;
        let whole = store(&spool, 2, b"b\r\n").await;
        report(&spool, &half, &[1]).await;
        report(&spool, &whole, &[0, 1]).await;
        spool.close().await;
        drop(spool);
        // The crash: the reports' records are on disk, the originals'
        // completion entries are not.
        let done = done_path(&dir.path().join(QUEUE_DIR), half.location.segment);
        fs::remove_file(&done).unwrap();
        let (spool, recovered) = open(dir.path());
        let pending: Vec<(&str, Vec<u32>)> = recovered
            .iter()
            .map(|message| (message.id.as_str(), message.pending.clone()))
            .collect();
        assert_eq!(
            pending,
            vec![("Q1", vec![0]), ("R1", vec![0]), ("R1", vec![0])],
            "the reported recipients are finished, Q2 entirely"
        );
        // Recovery wrote the entries: with the reports delivered (their
        // records finished), the recipients stay finished.
        for report in &recovered[1..] {
            spool.message_done(report);
        }
        let (_spool, recovered) = reopen(dir.path(), spool).await;
        let pending: Vec<(&str, Vec<u32>)> = recovered
            .iter()
            .map(|message| (message.id.as_str(), message.pending.clone()))
            .collect();
        assert_eq!(pending, vec![("Q1", vec![0])]);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_later_writes_recover() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let big = vec![b'x'; 40_000];
        store(&spool, 1, &big).await;
        // The next record needs a new segment; make the queue directory unusable.
        let queue = dir.path().join(QUEUE_DIR);
        let moved = dir.path().join("queue-moved");
        fs::rename(&queue, &moved).unwrap();
        fs::write(&queue, b"not a directory").unwrap();
        let error = spool
            .store("Q2".into(), "primary", envelope(1), &[&big])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("spool write failed"), "{error}");
        fs::remove_file(&queue).unwrap();
        fs::rename(&moved, &queue).unwrap();
        store(&spool, 3, &big).await;
        let (_spool, recovered) = reopen(dir.path(), spool).await;
        assert_eq!(
            recovered.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["Q1", "Q3"]
        );
    }
}
