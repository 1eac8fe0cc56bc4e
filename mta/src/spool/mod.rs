//! The durable spool. `accept` returns only once the message is on disk.
//!
//! Messages are appended to segment files (`seg-<n>.dat`, checksummed
//! records) by one writer thread that commits in groups: every `accept`
//! waiting while a `fdatasync` runs shares the next one, so throughput grows
//! with concurrency. Per-recipient state (done, rescheduled) goes to the
//! segment's `.ack` file. A segment whose recipients are all done is deleted
//! with its `.ack`. On open, every segment is read back, checksums checked,
//! and each recipient not yet done becomes a [`Job`] for the queue.
//!
//! Only [`Job`]s (32 bytes each) live in memory; bodies stay on disk and are
//! read back with [`Spool::load`] when a delivery is attempted.

mod error;
pub mod record;
mod recover;
mod staged;
mod writer;

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::message::{MessageId, NewMessage};
pub use error::WriteError;
pub use record::StoredMessage;
pub use recover::Quarantined;
pub use staged::Staged;

/// Where a durable record is, and what the queue needs of it.
struct Stored {
    seq: u64,
    received_ms: u64,
    segment: u32,
    offset: u32,
    len: u32,
    recipients: u16,
}

/// Creates `dir` (and its parents) with mode 0700, and makes an existing
/// one 0700: a spool holds customers' mail.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        // A read-only mount keeps its modes; recovery still reads it.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Options that create files with mode 0600 (spool, state, events, keys).
pub fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.mode(0o600);
    options
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool cannot store messages: {0}")]
    Unavailable(String),
    #[error("the spool cannot store messages: {0}")]
    Write(#[from] WriteError),
    #[error("spooled message {0} cannot be read: {1}")]
    Unreadable(MessageId, String),
}

/// One recipient of one spooled message, as the queue holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// The message's sequence number (its id, in hex).
    pub seq: u64,
    /// When the next attempt is due, unix milliseconds.
    pub due_ms: u64,
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
    /// Index into the message's recipients.
    pub rcpt: u16,
    /// Delivery attempts that failed transiently so far.
    pub attempts: u16,
}

impl Job {
    pub fn id(&self) -> MessageId {
        record::message_id(self.seq)
    }
}

pub use fleet::clock::unix_millis as now_ms;

pub(crate) struct Segment {
    pub id: u32,
    /// An open handle for reading, or `None`: opened by path for each
    /// read (segments of one streamed message, so that a spool of many
    /// large messages holds no descriptor per message).
    pub file: Option<File>,
    pub bytes: AtomicU64,
    /// Recipients of this segment not yet done.
    pub live: AtomicU64,
    /// No more records will be appended.
    pub sealed: AtomicBool,
    pub delete_requested: AtomicBool,
}

pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:08}.dat"))
}

pub(crate) fn ack_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:08}.ack"))
}

pub(crate) struct Metrics {
    pub commit_seconds: Histogram,
    pub commit_batch: Histogram,
    pub bytes: Gauge,
    pub jobs: Gauge,
    pub accepted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            commit_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
            ]),
            commit_batch: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            bytes: Gauge::default(),
            jobs: Gauge::default(),
            accepted: Counter::default(),
        }
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub segments: RwLock<HashMap<u32, Arc<Segment>>>,
    /// The reason the last write failed, until a write or probe succeeds.
    pub write_error: Mutex<Option<WriteError>>,
    pub metrics: Metrics,
}

impl Shared {
    pub fn segment(&self, id: u32) -> Option<Arc<Segment>> {
        self.segments.read().get(&id).cloned()
    }

    pub fn set_error(&self, error: Option<WriteError>) {
        *self.write_error.lock() = error;
    }

    pub fn error(&self) -> Option<WriteError> {
        self.write_error.lock().clone()
    }
}

/// What the spool holds, for status pages and tests.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SpoolStats {
    /// Recipients not yet delivered, bounced or expired.
    pub queued: u64,
    pub segments: usize,
    pub bytes: u64,
}

pub struct Spool {
    shared: Arc<Shared>,
    ops: Mutex<Option<std::sync::mpsc::Sender<writer::Op>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    next_seq: AtomicU64,
    arrivals: Mutex<Vec<Job>>,
    arrived: Notify,
    probe: Mutex<Option<(Instant, Result<(), WriteError>)>>,
    /// What recovery moved aside at open.
    quarantined: Vec<Quarantined>,
}

const PROBE_EVERY: Duration = Duration::from_millis(500);

impl Spool {
    /// Opens (creating) the spool in `dir` and recovers every message in it;
    /// the recovered recipients wait in [`Spool::take_arrivals`].
    pub async fn open(dir: &Path) -> Result<Arc<Spool>, SpoolError> {
        Self::open_with(dir, writer::SEGMENT_LIMIT).await
    }

    /// `open` with a chosen segment size (tests use small ones).
    pub async fn open_with(dir: &Path, segment_limit: u64) -> Result<Arc<Spool>, SpoolError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, segment_limit))
            .await
            .map_err(|e| SpoolError::Unavailable(format!("spool recovery panicked: {e}")))?
    }

    fn open_blocking(dir: &Path, segment_limit: u64) -> Result<Arc<Spool>, SpoolError> {
        let unavailable = SpoolError::Unavailable;
        create_private_dir(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        staged::clear_incoming(dir);
        let started = Instant::now();
        let recovered = recover::recover(dir).map_err(unavailable)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segments: RwLock::new(HashMap::new()),
            write_error: Mutex::new(None),
            metrics: Metrics::default(),
        });
        let mut empty = Vec::new();
        {
            let mut segments = shared.segments.write();
            for segment in recovered.segments {
                shared
                    .metrics
                    .bytes
                    .inc_by(segment.bytes.load(Ordering::Relaxed) as i64);
                if segment.live.load(Ordering::Relaxed) == 0 {
                    segment.delete_requested.store(true, Ordering::Relaxed);
                    empty.push(segment.id);
                }
                segments.insert(segment.id, Arc::new(segment));
            }
        }
        shared.metrics.jobs.set(recovered.jobs.len() as i64);
        let (tx, handle) = writer::start(shared.clone(), recovered.next_segment, segment_limit)?;
        for id in empty {
            let _ = tx.send(writer::Op::Delete { segment: id });
        }
        let next_seq = (recovered.max_seq + 1).max(fleet::clock::unix_micros());
        if !recovered.jobs.is_empty() || recovered.damaged > 0 {
            tracing::info!(
                recipients = recovered.jobs.len(),
                damaged_records = recovered.damaged,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "spool {} recovered",
                dir.display()
            );
        }
        Ok(Arc::new(Spool {
            shared,
            ops: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            next_seq: AtomicU64::new(next_seq),
            arrivals: Mutex::new(recovered.jobs),
            arrived: Notify::new(),
            probe: Mutex::new(None),
            quarantined: recovered.quarantined,
        }))
    }

    fn send(&self, op: writer::Op) -> Result<(), SpoolError> {
        let ops = self.ops.lock();
        match ops.as_ref() {
            Some(tx) => tx
                .send(op)
                .map_err(|_| SpoolError::from(WriteError::Stopped)),
            None => Err(WriteError::Closed.into()),
        }
    }

    /// Stores `message` durably and returns its id.
    pub async fn accept(&self, message: NewMessage) -> Result<MessageId, SpoolError> {
        self.check_acceptable(&message)?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let received_ms = now_ms();
        let bytes = record::encode(seq, received_ms, &message);
        let len = bytes.len() as u32;
        let recipients = message.recipients.len() as u16;
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(writer::Op::Append {
            record: bytes,
            jobs: recipients as u64,
            reply,
        })?;
        let (segment, offset) = done
            .await
            .map_err(|_| SpoolError::from(WriteError::Stopped))??;
        let at = Stored {
            seq,
            received_ms,
            segment,
            offset,
            len,
            recipients,
        };
        Ok(self.arrive(at))
    }

    /// `Err` when the spool cannot take `message` at all.
    fn check_acceptable(&self, message: &NewMessage) -> Result<(), SpoolError> {
        if let Some(error) = self.shared.error() {
            return Err(error.into());
        }
        if message.recipients.is_empty() || message.recipients.len() > u16::MAX as usize {
            return Err(SpoolError::Unavailable(format!(
                "a message needs 1 to {} recipients, not {}",
                u16::MAX,
                message.recipients.len()
            )));
        }
        Ok(())
    }

    /// A durable record's recipients become jobs for the queue.
    fn arrive(&self, at: Stored) -> MessageId {
        self.shared.metrics.accepted.inc();
        self.shared.metrics.jobs.inc_by(at.recipients as i64);
        let jobs = (0..at.recipients).map(|rcpt| Job {
            seq: at.seq,
            due_ms: at.received_ms,
            segment: at.segment,
            offset: at.offset,
            len: at.len,
            rcpt,
            attempts: 0,
        });
        self.arrivals.lock().extend(jobs);
        self.arrived.notify_one();
        // The caller records the Reception event (the ingress does).
        record::message_id(at.seq)
    }

    /// `Err` with the reason when the spool cannot take mail.
    pub fn health(&self) -> Result<(), WriteError> {
        if self.ops.lock().is_none() {
            return Err(WriteError::Closed);
        }
        let mut probe = self.probe.lock();
        let fresh = matches!(&*probe, Some((at, _)) if at.elapsed() < PROBE_EVERY);
        if !fresh {
            let result = self.probe_write();
            if result.is_ok() {
                // A write that works again clears an earlier failure.
                self.shared.set_error(None);
            }
            *probe = Some((Instant::now(), result));
        }
        if let Some(error) = self.shared.error() {
            return Err(error);
        }
        probe.as_ref().map(|(_, r)| r.clone()).unwrap_or(Ok(()))
    }

    fn probe_write(&self) -> Result<(), WriteError> {
        use std::io::Write;
        let path = self.shared.dir.join(".probe");
        let result = private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&[0u8; 4096]))
            .map_err(|e| WriteError::Unwritable {
                dir: self.shared.dir.clone(),
                source: e.into(),
            });
        let _ = std::fs::remove_file(&path);
        result
    }

    /// New (and, after open, recovered) recipients for the queue.
    pub fn take_arrivals(&self) -> Vec<Job> {
        std::mem::take(&mut *self.arrivals.lock())
    }

    /// Notified whenever [`Spool::take_arrivals`] has something.
    pub fn arrived(&self) -> &Notify {
        &self.arrived
    }

    /// Reads a job's message back from disk.
    pub async fn load(&self, job: &Job) -> Result<StoredMessage, SpoolError> {
        let segment = self.shared.segment(job.segment).ok_or_else(|| {
            SpoolError::Unreadable(job.id(), format!("segment {} is gone", job.segment))
        })?;
        let (offset, len, id) = (job.offset as u64, job.len as usize, job.id());
        let path = segment_path(&self.shared.dir, segment.id);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let read = match &segment.file {
                Some(file) => file.read_exact_at(&mut buf, offset),
                None => File::open(&path).and_then(|f| f.read_exact_at(&mut buf, offset)),
            };
            read.map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|()| record::decode(&buf))
        })
        .await
        .map_err(|e| SpoolError::Unreadable(id.clone(), e.to_string()))?
        .map_err(|e| SpoolError::Unreadable(id, e))
    }

    /// The recipient is finished with (delivered, bounced or expired): its
    /// state is recorded and the segment deleted once nothing in it is left.
    pub fn done(&self, job: &Job) {
        let ack = record::encode_ack(record::ACK_DONE, job.seq, job.rcpt, job.attempts, 0);
        if self
            .send(writer::Op::Ack {
                segment: job.segment,
                ack,
            })
            .is_err()
        {
            return;
        }
        self.shared.metrics.jobs.dec();
        if let Some(segment) = self.shared.segment(job.segment) {
            if segment.live.fetch_sub(1, Ordering::SeqCst) == 1
                && segment.sealed.load(Ordering::SeqCst)
                && !segment.delete_requested.swap(true, Ordering::SeqCst)
            {
                let _ = self.send(writer::Op::Delete {
                    segment: segment.id,
                });
            }
        }
    }

    /// Records the job's new attempt count and due time, so a restart keeps
    /// the retry schedule.
    pub fn reschedule(&self, job: &Job) {
        let ack = record::encode_ack(
            record::ACK_RETRY,
            job.seq,
            job.rcpt,
            job.attempts,
            job.due_ms,
        );
        let _ = self.send(writer::Op::Ack {
            segment: job.segment,
            ack,
        });
    }

    /// Makes every recorded state durable (for a clean shutdown).
    pub async fn sync(&self) -> Result<(), SpoolError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(writer::Op::Sync { reply })?;
        done.await
            .map_err(|_| SpoolError::from(WriteError::Stopped))??;
        Ok(())
    }

    /// Syncs and stops the writer; later calls fail as unavailable.
    pub fn close(&self) {
        let tx = self.ops.lock().take();
        drop(tx);
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }

    pub fn stats(&self) -> SpoolStats {
        let segments = self.shared.segments.read();
        SpoolStats {
            queued: self.shared.metrics.jobs.get().max(0) as u64,
            segments: segments.len(),
            bytes: self.shared.metrics.bytes.get().max(0) as u64,
        }
    }

    /// The bytes recovery could not trust and moved aside at open.
    pub fn quarantined(&self) -> &[Quarantined] {
        &self.quarantined
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// `spool_*` metrics: commit latency and batch size, bytes and recipients held.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.shared.metrics;
        registry.register(
            "spool_commit_seconds",
            "Time to write and fdatasync one group commit",
            m.commit_seconds.clone(),
        );
        registry.register(
            "spool_commit_messages",
            "Messages made durable by one group commit",
            m.commit_batch.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes in spool segment files",
            m.bytes.clone(),
        );
        registry.register(
            "spool_recipients",
            "Recipients in the spool not yet delivered, bounced or expired",
            m.jobs.clone(),
        );
        registry.register(
            "spool_accepted_messages",
            "Messages durably accepted into the spool",
            m.accepted.clone(),
        );
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
