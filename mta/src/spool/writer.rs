//! The spool's single writer thread and its group commit.
//!
//! Every request waiting in the channel when the thread comes round is
//! written in one go and made durable with one `fdatasync`; the requests that
//! arrive meanwhile form the next group. State records (`.ack`) are written
//! at once (a killed process loses nothing the kernel has) and synced at most
//! once a second, and on [`Op::Sync`].

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::WriteError;
use super::record::ACK_LEN;
use super::{ack_path, segment_path, Segment, Shared};

/// Segments are sealed and a new one started beyond this size.
pub const SEGMENT_LIMIT: u64 = 64 << 20;
/// A group commit writes at most this much before syncing.
const MAX_GROUP_BYTES: usize = 16 << 20;
const ACK_SYNC_EVERY: Duration = Duration::from_secs(1);

/// Where a record was placed (segment, offset), or why it was not.
type Placed = oneshot::Sender<Result<(u32, u32), WriteError>>;

pub enum Op {
    Append {
        record: Vec<u8>,
        jobs: u64,
        reply: Placed,
    },
    /// A complete, synced single-record segment written elsewhere in the
    /// spool (`incoming/`): renamed in as the next segment, sealed.
    Adopt {
        path: std::path::PathBuf,
        len: u64,
        jobs: u64,
        reply: Placed,
    },
    Ack {
        segment: u32,
        ack: [u8; ACK_LEN],
    },
    Delete {
        segment: u32,
    },
    Sync {
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
}

struct Active {
    id: u32,
    file: File,
    len: u64,
}

struct Pending {
    reply: Placed,
    segment: u32,
    offset: u32,
    jobs: u64,
}

struct Writer {
    shared: Arc<Shared>,
    next_segment: u32,
    segment_limit: u64,
    active: Option<Active>,
    buf: Vec<u8>,
    pending: Vec<Pending>,
    /// Segments renamed in this group, answered after one directory sync.
    adopted: Vec<(u32, Placed)>,
    acks: HashMap<u32, Vec<u8>>,
    ack_files: HashMap<u32, File>,
    acks_unsynced: bool,
    last_ack_sync: Instant,
}

pub fn start(
    shared: Arc<Shared>,
    next_segment: u32,
    segment_limit: u64,
) -> Result<(Sender<Op>, std::thread::JoinHandle<()>), WriteError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = Writer {
        shared,
        next_segment,
        segment_limit,
        active: None,
        buf: Vec::with_capacity(1 << 20),
        pending: Vec::new(),
        adopted: Vec::new(),
        acks: HashMap::new(),
        ack_files: HashMap::new(),
        acks_unsynced: false,
        last_ack_sync: Instant::now(),
    };
    let handle = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| WriteError::Thread(e.into()))?;
    Ok((tx, handle))
}

impl Writer {
    fn run(mut self, rx: Receiver<Op>) {
        loop {
            let first = match rx.recv_timeout(ACK_SYNC_EVERY) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.maybe_sync_acks(false);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut syncs = Vec::new();
            self.handle(first, &mut syncs);
            while self.buf.len() < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(op) => self.handle(op, &mut syncs),
                    Err(_) => break,
                }
            }
            self.commit();
            self.settle_adopted();
            self.flush_acks();
            if syncs.is_empty() {
                let _ = self.maybe_sync_acks(false);
            } else {
                let result = self.maybe_sync_acks(true);
                for reply in syncs {
                    let _ = reply.send(result.clone());
                }
            }
        }
        // Channel closed: the spool is closing.
        self.commit();
        self.settle_adopted();
        self.flush_acks();
        let _ = self.maybe_sync_acks(true);
    }

    fn handle(&mut self, op: Op, syncs: &mut Vec<oneshot::Sender<Result<(), WriteError>>>) {
        match op {
            Op::Append {
                record,
                jobs,
                reply,
            } => {
                if let Err(error) = self.ensure_room(record.len() as u64) {
                    let _ = reply.send(Err(error));
                    return;
                }
                let Some(active) = &self.active else {
                    let _ = reply.send(Err(WriteError::NoSegment));
                    return;
                };
                let offset = active.len + self.buf.len() as u64;
                self.buf.extend_from_slice(&record);
                self.pending.push(Pending {
                    reply,
                    segment: active.id,
                    offset: offset as u32,
                    jobs,
                });
            }
            Op::Adopt {
                path,
                len,
                jobs,
                reply,
            } => self.adopt(&path, len, jobs, reply),
            Op::Ack { segment, ack } => {
                self.acks
                    .entry(segment)
                    .or_default()
                    .extend_from_slice(&ack);
            }
            Op::Delete { segment } => self.delete(segment),
            Op::Sync { reply } => syncs.push(reply),
        }
    }

    /// Makes sure the active segment can take `len` more bytes, sealing it
    /// and starting another when it cannot.
    fn ensure_room(&mut self, len: u64) -> Result<(), WriteError> {
        if let Some(active) = &self.active {
            let used = active.len + self.buf.len() as u64;
            if used == 0 || used + len <= self.segment_limit {
                return Ok(());
            }
            self.commit();
            self.seal();
        }
        if self.active.is_none() {
            self.open_segment()?;
        }
        Ok(())
    }

    fn open_segment(&mut self) -> Result<(), WriteError> {
        let dir = &self.shared.dir;
        let id = self.next_segment;
        let path = segment_path(dir, id);
        let result = (|| {
            let file = super::private_file()
                .create_new(true)
                .append(true)
                .open(&path)?;
            let read = File::open(&path)?;
            File::open(dir)?.sync_all()?;
            Ok::<_, std::io::Error>((file, read))
        })();
        let (file, read) = result.map_err(|e| {
            let _ = std::fs::remove_file(&path);
            let error = WriteError::CreateSegment {
                path,
                source: e.into(),
            };
            self.shared.set_error(Some(error.clone()));
            error
        })?;
        self.next_segment += 1;
        self.shared.segments.write().insert(
            id,
            Arc::new(Segment {
                id,
                file: Some(read),
                bytes: AtomicU64::new(0),
                live: AtomicU64::new(0),
                sealed: AtomicBool::new(false),
                delete_requested: AtomicBool::new(false),
            }),
        );
        self.active = Some(Active { id, file, len: 0 });
        Ok(())
    }

    /// Renames a staged segment into the spool as the next segment id.
    fn adopt(&mut self, path: &std::path::Path, len: u64, jobs: u64, reply: Placed) {
        let id = self.next_segment;
        let to = segment_path(&self.shared.dir, id);
        if let Err(e) = std::fs::rename(path, &to) {
            let _ = std::fs::remove_file(path);
            let _ = reply.send(Err(WriteError::Adopt {
                from: path.to_path_buf(),
                to,
                source: e.into(),
            }));
            return;
        }
        self.next_segment += 1;
        self.shared.metrics.bytes.inc_by(len as i64);
        self.shared.segments.write().insert(
            id,
            Arc::new(Segment {
                id,
                file: None,
                bytes: AtomicU64::new(len),
                live: AtomicU64::new(jobs),
                sealed: AtomicBool::new(true),
                delete_requested: AtomicBool::new(false),
            }),
        );
        self.adopted.push((id, reply));
    }

    /// One directory sync makes this group's renames durable; then their
    /// senders hear of it (on failure the segments are deleted again).
    fn settle_adopted(&mut self) {
        if self.adopted.is_empty() {
            return;
        }
        let dir = &self.shared.dir;
        let synced = File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WriteError::SyncDir {
                dir: dir.clone(),
                source: e.into(),
            });
        for (id, reply) in std::mem::take(&mut self.adopted) {
            if synced.is_err() {
                if let Some(segment) = self.shared.segment(id) {
                    segment.delete_requested.store(true, Ordering::SeqCst);
                }
                self.delete(id);
            }
            let _ = reply.send(synced.clone().map(|()| (id, 0)));
        }
    }

    /// No more appends to the active segment; delete it if nothing is live.
    fn seal(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        if let Some(segment) = self.shared.segment(active.id) {
            segment.sealed.store(true, Ordering::SeqCst);
            if segment.live.load(Ordering::SeqCst) == 0
                && !segment.delete_requested.swap(true, Ordering::SeqCst)
            {
                self.delete(active.id);
            }
        }
    }

    /// Writes and syncs the buffered records, then answers their senders.
    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let started = Instant::now();
        let count = self.pending.len();
        let result = match &mut self.active {
            Some(active) => {
                let result = active
                    .file
                    .write_all(&self.buf)
                    .and_then(|()| active.file.sync_data());
                match result {
                    Ok(()) => {
                        active.len += self.buf.len() as u64;
                        Ok(active.id)
                    }
                    Err(e) => Err((active.id, active.len, e)),
                }
            }
            None => {
                for p in self.pending.drain(..) {
                    let _ = p.reply.send(Err(WriteError::NoSegment));
                }
                self.buf.clear();
                return;
            }
        };
        match result {
            Ok(id) => {
                self.shared.set_error(None);
                let m = &self.shared.metrics;
                m.commit_seconds.observe(started.elapsed().as_secs_f64());
                m.commit_batch.observe(count as f64);
                m.bytes.inc_by(self.buf.len() as i64);
                if let Some(segment) = self.shared.segment(id) {
                    segment
                        .bytes
                        .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                    let jobs: u64 = self.pending.iter().map(|p| p.jobs).sum();
                    segment.live.fetch_add(jobs, Ordering::SeqCst);
                }
                for p in self.pending.drain(..) {
                    let _ = p.reply.send(Ok((p.segment, p.offset)));
                }
            }
            Err((id, good_len, e)) => {
                let error = WriteError::WriteSegment {
                    path: segment_path(&self.shared.dir, id),
                    source: e.into(),
                };
                tracing::error!("{error}");
                self.shared.set_error(Some(error.clone()));
                for p in self.pending.drain(..) {
                    let _ = p.reply.send(Err(error.clone()));
                }
                // Never append behind a possibly partial write: cut it off
                // (recovery would skip it anyway) and start a new segment.
                if let Some(active) = &self.active {
                    let _ = active.file.set_len(good_len);
                }
                self.seal();
            }
        }
        self.buf.clear();
    }

    fn flush_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        for (segment, bytes) in std::mem::take(&mut self.acks) {
            let file = match self.ack_files.get_mut(&segment) {
                Some(file) => file,
                None => {
                    let path = ack_path(&self.shared.dir, segment);
                    match super::private_file().create(true).append(true).open(&path) {
                        Ok(file) => self.ack_files.entry(segment).or_insert(file),
                        Err(e) => {
                            tracing::error!(
                                "cannot open spool state file {}: {e}; a restart may attempt these recipients again",
                                path.display()
                            );
                            continue;
                        }
                    }
                }
            };
            if let Err(e) = file.write_all(&bytes) {
                tracing::error!(
                    "cannot write spool state file {}: {e}; a restart may attempt these recipients again",
                    ack_path(&self.shared.dir, segment).display()
                );
            }
            self.acks_unsynced = true;
        }
    }

    fn maybe_sync_acks(&mut self, force: bool) -> Result<(), WriteError> {
        if !self.acks_unsynced || (!force && self.last_ack_sync.elapsed() < ACK_SYNC_EVERY) {
            return Ok(());
        }
        self.last_ack_sync = Instant::now();
        self.acks_unsynced = false;
        let mut result = Ok(());
        for (segment, file) in &self.ack_files {
            if let Err(e) = file.sync_data() {
                result = Err(WriteError::SyncState {
                    path: ack_path(&self.shared.dir, *segment),
                    source: e.into(),
                });
            }
        }
        if let Err(error) = &result {
            tracing::error!("{error}");
        }
        result
    }

    fn delete(&mut self, segment: u32) {
        self.acks.remove(&segment);
        self.ack_files.remove(&segment);
        let dir = &self.shared.dir;
        let dat = segment_path(dir, segment);
        match std::fs::remove_file(&dat) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(
                    "cannot delete finished spool segment {}: {e}",
                    dat.display()
                );
                return;
            }
        }
        let _ = std::fs::remove_file(ack_path(dir, segment));
        if let Some(gone) = self.shared.segments.write().remove(&segment) {
            self.shared
                .metrics
                .bytes
                .dec_by(gone.bytes.load(Ordering::Relaxed) as i64);
        }
    }
}
