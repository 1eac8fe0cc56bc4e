//! Writing the event log: lines go to the kernel at once, durability comes
//! in groups.
//!
//! [`LogFile`] (behind a lock) numbers events and writes their lines to the
//! active segment: an event that [`super::EventLog::record`] wrote is in
//! the kernel when the call returns, so a `kill -9` right after cannot lose
//! it. The log's thread ([`Committer`]) makes what was written durable with
//! one `fdatasync` at most every [`COMMIT_EVERY`] and only then publishes it
//! as *committed* (readers and subscribers see it). The spool's group
//! commit is the only `fdatasync` a message waits for; the event log's
//! syncs are few and off that path.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::event::Event;
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

use super::{encode_line, segment_name, segments, LogSettings, Metrics};

/// A segment is closed after this long even when small, so retention can
/// delete old events hour by hour.
const SEGMENT_AGE: Duration = Duration::from_secs(3600);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);
const MAX_GROUP: usize = 8192;
/// Events the log's thread encodes and writes per turn of the file lock.
const WRITE_CHUNK: usize = 32;
/// The write buffer is kept for the next write up to this size: one
/// Reception line or a few thousand events, without a fresh allocation
/// (and fresh pages to fault in) for every write.
const KEEP_BUF: usize = 4 << 20;
/// The event log syncs at most this often: under a steady stream events
/// wait up to this long to be committed (and sent to webhooks, which batch
/// for longer anyway); an event after a quiet spell is synced at once.
/// Every sync is a journal commit that the spool's own sync, the one an
/// acknowledgement waits for, queues behind: at most 20 a second.
pub const COMMIT_EVERY: Duration = Duration::from_millis(50);

/// What the log's thread is handed.
// Moved once through the channel; a box would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    /// An event to write and commit.
    Event(Event),
    /// Lines were written by [`LogFile::write`]: commit them.
    Written,
}

struct Active {
    file: File,
    len: u64,
    opened: Instant,
}

/// The segment files and the numbering; shared by the writers.
pub(super) struct LogFile {
    dir: PathBuf,
    settings: LogSettings,
    next: u64,
    active: Option<Active>,
    /// Segments closed since the last sync (synced by the next one).
    retired: Vec<File>,
    /// Events written since the last sync, published by the next one.
    unsynced: Vec<Event>,
    /// The lines of the last write, kept for the next (up to [`KEEP_BUF`]).
    buf: Vec<u8>,
    metrics: Metrics,
}

/// What one sync makes durable.
struct Batch {
    files: Vec<File>,
    last: u64,
    events: Vec<Event>,
}

fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl LogFile {
    pub fn new(dir: &Path, settings: LogSettings, next: u64, metrics: Metrics) -> LogFile {
        LogFile {
            dir: dir.to_path_buf(),
            settings,
            next,
            active: None,
            retired: Vec::new(),
            unsynced: Vec::new(),
            buf: Vec::new(),
            metrics,
        }
    }

    /// Numbers `batch` and writes its lines to the active segment (not
    /// synced); on failure they are cut off again and counted as lost.
    pub fn write(&mut self, mut batch: Vec<Event>) {
        if batch.is_empty() {
            return;
        }
        let (first, next) = (self.next, self.next + batch.len() as u64);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for (seq, event) in (first..next).zip(batch.iter_mut()) {
            event.event_id = format!("{}-{seq:016x}", self.settings.node);
            encode_line(seq, event, &mut buf);
        }
        let written = self.append(first, &buf);
        let len = buf.len();
        if buf.capacity() <= KEEP_BUF {
            self.buf = buf;
        }
        if let Err(error) = written {
            self.metrics.write_errors.inc();
            tracing::error!(
                "cannot write {} events to the event log {}: {error}",
                batch.len(),
                self.dir.display()
            );
            return;
        }
        self.next = next;
        self.metrics.bytes.inc_by(len as i64);
        self.unsynced.append(&mut batch);
    }

    /// Appends `buf` (events from `first` on); on failure the segment is
    /// cut back so no torn line stays in the middle of it.
    fn append(&mut self, first: u64, buf: &[u8]) -> std::io::Result<()> {
        let rotate = self.active.as_ref().is_some_and(|a| {
            a.len > 0
                && (a.len + buf.len() as u64 > self.settings.segment_bytes
                    || a.opened.elapsed() >= SEGMENT_AGE)
        });
        if rotate {
            self.retire();
        }
        if self.active.is_none() {
            let path = self.dir.join(segment_name(first));
            let file = create_private(&path)?;
            File::open(&self.dir)?.sync_all()?;
            self.metrics.segments.inc();
            self.active = Some(Active {
                len: file.metadata()?.len(),
                file,
                opened: Instant::now(),
            });
        }
        let Some(active) = &mut self.active else {
            return Err(std::io::Error::other("no segment open"));
        };
        match active.file.write_all(buf) {
            Ok(()) => {
                active.len += buf.len() as u64;
                Ok(())
            }
            Err(error) => {
                let _ = active.file.set_len(active.len);
                Err(error)
            }
        }
    }

    /// Closes the active segment; the next sync still syncs it.
    fn retire(&mut self) {
        if let Some(active) = self.active.take() {
            self.retired.push(active.file);
        }
    }

    /// What the next sync covers: every line written so far.
    fn take_batch(&mut self) -> Option<Batch> {
        if self.unsynced.is_empty() {
            return None;
        }
        let mut files = std::mem::take(&mut self.retired);
        if let Some(active) = &self.active {
            match active.file.try_clone() {
                Ok(file) => files.push(file),
                Err(e) => tracing::error!(
                    "cannot sync the event log {}: {e}; syncing at the next commit",
                    self.dir.display()
                ),
            }
        }
        Some(Batch {
            files,
            last: self.next - 1,
            events: std::mem::take(&mut self.unsynced),
        })
    }
}

/// The log's thread: writes appended events, syncs, publishes, and keeps
/// the segments within their age and retention.
pub(super) struct Committer {
    pub file: Arc<Mutex<LogFile>>,
    /// Set while a [`Msg::Written`] is on its way.
    pub asked: Arc<AtomicBool>,
    pub committed: watch::Sender<u64>,
    pub subscribers: broadcast::Sender<Arc<Event>>,
    pub metrics: Metrics,
    pub last_sync: Instant,
    pub last_housekeeping: Instant,
}

impl Committer {
    pub fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let first = match rx.recv_timeout(HOUSEKEEPING_EVERY) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    self.housekeeping();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Let the group form: sleeping, not receiving, so senders
            // meanwhile wake nobody.
            let due = self.last_sync + COMMIT_EVERY;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next {
                if let Msg::Event(event) = msg {
                    batch.push(event);
                }
                next = (batch.len() < MAX_GROUP)
                    .then(|| rx.try_recv().ok())
                    .flatten();
            }
            // A few events per lock: an ingress writing its Reception (on
            // an async worker) waits for one chunk, never for the group.
            let mut batch = batch.into_iter();
            loop {
                let chunk: Vec<Event> = batch.by_ref().take(WRITE_CHUNK).collect();
                if chunk.is_empty() {
                    break;
                }
                self.file.lock().write(chunk);
            }
            self.sync();
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                self.housekeeping();
            }
        }
        self.sync();
    }

    /// One `fdatasync` for every line written since the last; then those
    /// events are committed.
    fn sync(&mut self) {
        self.asked.store(false, Ordering::SeqCst);
        let Some(batch) = self.file.lock().take_batch() else {
            return;
        };
        self.last_sync = Instant::now();
        for file in &batch.files {
            if let Err(e) = file.sync_data() {
                // The lines are in the kernel (they survive the process);
                // a power loss may take them.
                self.metrics.write_errors.inc();
                tracing::error!("cannot sync the event log: {e}");
            }
        }
        self.metrics.recorded.inc_by(batch.events.len() as u64);
        self.committed.send_replace(batch.last);
        if self.subscribers.receiver_count() > 0 {
            for event in batch.events {
                let _ = self.subscribers.send(Arc::new(event));
            }
        }
    }

    /// Closes an old active segment and deletes segments past retention.
    fn housekeeping(&mut self) {
        self.last_housekeeping = Instant::now();
        let (dir, retention) = {
            let mut file = self.file.lock();
            if file
                .active
                .as_ref()
                .is_some_and(|a| a.len > 0 && a.opened.elapsed() >= SEGMENT_AGE)
            {
                file.retire();
            }
            (file.dir.clone(), file.settings.retention)
        };
        let all = segments(&dir);
        let newest = all.last().map(|(first, _)| *first);
        let mut bytes = 0u64;
        let mut count = 0i64;
        for (first, path) in &all {
            let meta = std::fs::metadata(path).ok();
            let age = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if Some(*first) != newest && age > retention {
                match std::fs::remove_file(path) {
                    Ok(()) => tracing::info!("event log: {} expired", path.display()),
                    Err(e) => tracing::warn!("cannot delete {}: {e}", path.display()),
                }
                continue;
            }
            bytes += meta.map(|m| m.len()).unwrap_or_default();
            count += 1;
        }
        self.metrics.bytes.set(bytes as i64);
        self.metrics.segments.set(count);
    }
}
