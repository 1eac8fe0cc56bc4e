//! The durable per-node event log.
//!
//! Events are appended by one writer thread to segment files
//! `events-<first sequence, 16 hex>.log`, one line each:
//! `<sequence, 16 hex> <crc32 of the JSON, 8 hex> <JSON>\n`. An event is
//! written to the kernel at once ([`EventLog::record`], the ingress's
//! Reception) or by the log's thread ([`EventLog::append`]), and made
//! durable with every other line written meanwhile by one `fdatasync`, at
//! most every [`writer::COMMIT_EVERY`]; only then is it *committed*:
//! readers (the webhooks) and subscribers see it. On open, a
//! torn or damaged tail (a `kill -9` in the middle of a write) is cut off at
//! the last whole line, so a committed event is never lost nor read twice,
//! and numbering goes on from the last one. A segment is closed after
//! `segment_bytes` or an hour; closed segments older than the retention are
//! deleted. Files are created mode 0600.

mod writer;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleet::event::Event;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, watch};

pub use writer::COMMIT_EVERY;
use writer::{Committer, LogFile, Msg};

pub struct LogSettings {
    /// Prefix of every event id.
    pub node: String,
    pub retention: Duration,
    pub segment_bytes: u64,
}

#[derive(Clone, Default)]
struct Metrics {
    recorded: Counter,
    write_errors: Counter,
    bytes: Gauge,
    segments: Gauge,
}

pub struct EventLog {
    dir: PathBuf,
    file: Arc<Mutex<LogFile>>,
    /// Set while the thread has been asked to commit what was written.
    asked: Arc<AtomicBool>,
    /// Shared by the writers (a Reception being written does not hold up
    /// a delivery's event); taken by `close`, which so waits for them.
    tx: RwLock<Option<Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    committed: watch::Receiver<u64>,
    subscribers: broadcast::Sender<Arc<Event>>,
    metrics: Metrics,
}

/// The file name of the segment whose first event is `first`.
fn segment_name(first: u64) -> String {
    format!("events-{first:016x}.log")
}

/// Every segment in `dir`, oldest first, by first sequence.
pub fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let hex = name.strip_prefix("events-")?.strip_suffix(".log")?;
            Some((u64::from_str_radix(hex, 16).ok()?, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// One line of a segment: its sequence and event, or why it is not one.
fn parse_line(line: &[u8]) -> Result<(u64, Event), String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let text = text.strip_suffix('\n').ok_or("no line end")?;
    let (seq, rest) = text.split_once(' ').ok_or("no sequence")?;
    let (crc, json) = rest.split_once(' ').ok_or("no checksum")?;
    let seq = u64::from_str_radix(seq, 16).map_err(|_| "bad sequence")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum")?;
    if crc32fast::hash(json.as_bytes()) != crc {
        return Err("checksum mismatch".into());
    }
    let event = serde_json::from_str(json).map_err(|e| format!("bad event: {e}"))?;
    Ok((seq, event))
}

/// Appends the line of event `seq` to `out`: the JSON is written in place
/// (no buffer of its own), then its checksum filled in before it.
fn encode_line(seq: u64, event: &Event, out: &mut Vec<u8>) {
    let start = out.len();
    let _ = write!(out, "{seq:016x} 00000000 ");
    let json = out.len();
    if serde_json::to_writer(&mut *out, event).is_err() {
        // An event always serializes; were it not to, no torn line stays.
        out.truncate(start);
        return;
    }
    let crc = crc32fast::hash(&out[json..]);
    for (i, digit) in out[json - 9..json - 1].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(crc >> (28 - 4 * i)) as usize & 0xf];
    }
    out.push(b'\n');
}

/// Reads `path`, cuts a torn or damaged tail, returns its last sequence.
fn recover_segment(path: &Path) -> Result<Option<u64>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut reader = BufReader::new(file);
    let (mut good, mut last, mut line) = (0u64, None, Vec::new());
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        match parse_line(&line) {
            Ok((seq, _)) => {
                good += n as u64;
                last = Some(seq);
            }
            Err(why) => {
                tracing::warn!(
                    "event log {}: cutting a damaged tail at byte {good} ({why})",
                    path.display()
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| format!("cannot repair {}: {e}", path.display()))?;
                file.set_len(good)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| format!("cannot repair {}: {e}", path.display()))?;
                break;
            }
        }
    }
    Ok(last)
}

impl EventLog {
    /// Opens (creating) the log in `dir`, repairing a torn tail.
    pub fn open(dir: &Path, settings: LogSettings) -> Result<Arc<EventLog>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the event log {}: {e}", dir.display()))?;
        let existing = segments(dir);
        let mut last = None;
        for (_, path) in existing.iter().rev() {
            if let Some(seq) = recover_segment(path)? {
                last = Some(seq);
                break;
            }
        }
        // A fresh log numbers from the clock, so ids never repeat even if
        // the directory is wiped.
        let next = match last {
            Some(seq) => seq + 1,
            None => now_micros().max(1),
        };
        let metrics = Metrics::default();
        let (committed_tx, committed) = watch::channel(next - 1);
        let subscribers = broadcast::channel(1 << 16).0;
        let (tx, rx) = std::sync::mpsc::channel();
        let file = Arc::new(Mutex::new(LogFile::new(
            dir,
            settings,
            next,
            metrics.clone(),
        )));
        let asked = Arc::new(AtomicBool::new(false));
        let committer = Committer {
            file: file.clone(),
            asked: asked.clone(),
            committed: committed_tx,
            subscribers: subscribers.clone(),
            metrics: metrics.clone(),
            last_sync: Instant::now(),
            // Housekeeping at the first chance (the metrics start right).
            last_housekeeping: Instant::now()
                .checked_sub(Duration::from_secs(3600))
                .unwrap_or_else(Instant::now),
        };
        let handle = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| format!("cannot start the event log writer: {e}"))?;
        Ok(Arc::new(EventLog {
            dir: dir.to_path_buf(),
            file,
            asked,
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            committed,
            subscribers,
            metrics,
        }))
    }

    /// Queues `event` for the next group commit.
    pub fn append(&self, event: Event) {
        if let Some(tx) = self.tx.read().as_ref() {
            let _ = tx.send(Msg::Event(event));
        }
    }

    /// Writes `events` now: when this returns they are in the kernel (a
    /// `kill -9` cannot lose them) and numbered after every event recorded
    /// before; the next group commit makes them durable and committed.
    /// One `write` under a lock, no `fdatasync`: cheap enough for the
    /// ingress to call before it acknowledges a message.
    pub fn record(&self, events: Vec<Event>) {
        let tx = self.tx.read();
        let Some(tx) = tx.as_ref() else {
            return;
        };
        self.file.lock().write(events);
        if !self.asked.swap(true, Ordering::SeqCst) {
            let _ = tx.send(Msg::Written);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.subscribers.subscribe()
    }

    /// The sequence of the last committed event, followed as it moves.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Commits what is queued and stops the writer.
    pub fn close(&self) {
        drop(self.tx.write().take());
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "events_recorded",
            "Events committed to the durable event log",
            m.recorded.clone(),
        );
        registry.register(
            "events_log_write_errors",
            "Group commits of the event log that failed (their events are lost)",
            m.write_errors.clone(),
        );
        registry.register(
            "events_log_bytes",
            "Bytes in the event log's segments",
            m.bytes.clone(),
        );
        registry.register(
            "events_log_segments",
            "Segment files of the event log",
            m.segments.clone(),
        );
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Reads committed events in order from a position, for one webhook.
pub struct LogReader {
    dir: PathBuf,
    /// The last sequence handed out (or skipped).
    after: u64,
    /// Where the next line starts: the segment's first sequence and an offset.
    pos: Option<(u64, u64)>,
    committed: watch::Receiver<u64>,
}

impl LogReader {
    /// Events after sequence `after`.
    pub fn new(log: &EventLog, after: u64) -> LogReader {
        LogReader {
            dir: log.dir.clone(),
            after,
            pos: None,
            committed: log.committed(),
        }
    }

    pub fn after(&self) -> u64 {
        self.after
    }

    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Waits until an event after the position is committed.
    pub async fn wait(&mut self) {
        let after = self.after;
        let _ = self.committed.wait_for(|c| *c > after).await;
    }

    /// Up to `max` committed events after the position, in order (file I/O:
    /// call it off the async workers).
    pub fn read(&mut self, max: usize) -> Result<Vec<(u64, Event)>, String> {
        let committed = self.committed();
        let mut out = Vec::new();
        while out.len() < max && self.after < committed {
            let all = segments(&self.dir);
            let (first, offset) = match self.pos {
                Some((first, offset)) if all.iter().any(|(f, _)| *f == first) => (first, offset),
                _ => match all
                    .iter()
                    .rev()
                    .find(|(f, _)| *f <= self.after + 1)
                    .or(all.first())
                {
                    Some((first, _)) => (*first, 0),
                    None => return Ok(out),
                },
            };
            let path = self.dir.join(segment_name(first));
            let end = self.read_segment(&path, first, offset, committed, max, &mut out)?;
            if out.len() >= max || self.after >= committed {
                break;
            }
            // The end of this segment: on to the next one, if there is one.
            match all.iter().find(|(f, _)| *f > first) {
                Some((next, _)) if end => self.pos = Some((*next, 0)),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Reads whole committed lines of one segment; true at its end.
    fn read_segment(
        &mut self,
        path: &Path,
        first: u64,
        offset: u64,
        committed: u64,
        max: usize,
        out: &mut Vec<(u64, Event)>,
    ) -> Result<bool, String> {
        let mut file =
            File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut reader = BufReader::with_capacity(64 << 10, file);
        let (mut offset, mut line) = (offset, Vec::new());
        let at_end = loop {
            if out.len() >= max {
                break false;
            }
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break true;
            }
            match parse_line(&line) {
                Ok((seq, _)) if seq > committed => break false,
                Ok((seq, _)) if seq <= self.after => {}
                Ok((seq, event)) => {
                    self.after = seq;
                    out.push((seq, event));
                }
                Err(why) => {
                    tracing::warn!(
                        "event log {}: skipping a bad line at byte {offset}: {why}",
                        path.display()
                    );
                }
            }
            offset += n as u64;
        };
        self.pos = Some((first, offset));
        Ok(at_end)
    }
}

#[cfg(test)]
mod tests;
