//! Reading the spool back at start: every segment, its state file, and the
//! recipients still to deliver. Two threads share the segments.
//!
//! Records are chained by their lengths and never searched for: a message
//! body may itself hold bytes that look like a record, so recovery never
//! resynchronises inside one. A record whose checksum fails but whose
//! length chains to the next is quarantined (its bytes copied to
//! `quarantine/` in the spool, logged, listed in `/status`) and skipped; an
//! incomplete last record (a torn write, never acknowledged) is cut; a
//! header that cannot be read ends the chain: the rest of the segment is
//! quarantined and cut.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::record::{self, ACK_DONE, ACK_LEN, ACK_RETRY, HEADER_LEN};
use super::{ack_path, segment_path, Job, Segment};

pub struct Recovered {
    pub segments: Vec<Segment>,
    pub jobs: Vec<Job>,
    pub max_seq: u64,
    pub next_segment: u32,
    /// Records skipped because their checksum failed or they were torn.
    pub damaged: u64,
    /// What was moved aside, for the log and `/status`.
    pub quarantined: Vec<Quarantined>,
}

/// Bytes of a segment recovery could not trust, moved aside.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    pub segment: u32,
    pub offset: u64,
    pub len: u64,
    /// Where the bytes are now (inside the spool's `quarantine/`).
    pub path: String,
    pub reason: String,
}

/// What the bytes at one position of a segment are.
enum Step {
    /// A whole record with a good checksum.
    Good(usize, record::Summary),
    /// An incomplete last record (or only zeroes): cut here.
    Torn,
    /// A whole record by its length whose checksum or fields fail.
    Damaged(usize),
    /// No readable header: the chain ends here.
    Lost,
}

fn step(bytes: &[u8], pos: usize) -> Step {
    let rest = &bytes[pos..];
    if rest.len() < HEADER_LEN || rest.iter().all(|b| *b == 0) {
        return Step::Torn;
    }
    let Some((len, crc)) = record::header(rest) else {
        return Step::Lost;
    };
    let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        return Step::Torn;
    };
    match (crc32fast::hash(payload) == crc)
        .then(|| record::summarize(payload))
        .flatten()
    {
        Some(summary) => Step::Good(len, summary),
        None => Step::Damaged(HEADER_LEN + len),
    }
}

/// Copies `bytes` to `quarantine/seg-<id>-at-<offset>.bin` (mode 0600).
fn quarantine(dir: &Path, id: u32, offset: usize, bytes: &[u8], reason: &str) -> Quarantined {
    let folder = dir.join("quarantine");
    let path = folder.join(format!("seg-{id}-at-{offset}.bin"));
    let written = super::create_private_dir(&folder).and_then(|()| {
        use std::io::Write;
        super::private_file()
            .write(true)
            .truncate(true)
            .create(true)
            .open(&path)?
            .write_all(bytes)
    });
    match &written {
        Ok(()) => tracing::error!(
            "spool segment {id}: {} byte(s) at offset {offset} quarantined to {}: {reason}",
            bytes.len(),
            path.display()
        ),
        Err(e) => tracing::error!(
            "spool segment {id}: {} byte(s) at offset {offset} skipped ({reason}); they could not be copied to {}: {e}",
            bytes.len(),
            path.display()
        ),
    }
    Quarantined {
        segment: id,
        offset: offset as u64,
        len: bytes.len() as u64,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Cuts a segment after its last good record (best effort: a read-only
/// spool keeps its bytes, recovery reads no further anyway).
fn cut(path: &Path, at: usize, total: usize) {
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(at as u64));
    match result {
        Ok(()) => tracing::warn!(
            "spool segment {}: cut {} byte(s) of an incomplete last record at offset {at} (it was never acknowledged)",
            path.display(),
            total - at
        ),
        Err(e) => tracing::warn!(
            "spool segment {}: ignoring {} byte(s) of an incomplete last record at offset {at} (cannot cut them: {e})",
            path.display(),
            total - at
        ),
    }
}

fn parse_name(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("seg-")?;
    let (num, ext) = rest.split_once('.')?;
    Some((num.parse().ok()?, ext))
}

enum State {
    Done,
    Retry { attempts: u16, due_ms: u64 },
}

fn read_acks(path: &Path) -> HashMap<(u64, u16), State> {
    let mut states = HashMap::new();
    let Ok(bytes) = std::fs::read(path) else {
        return states;
    };
    for chunk in bytes.chunks_exact(ACK_LEN) {
        let Some(ack) = record::decode_ack(chunk) else {
            continue;
        };
        let key = (ack.seq, ack.rcpt);
        match ack.kind {
            ACK_DONE => {
                states.insert(key, State::Done);
            }
            ACK_RETRY if !matches!(states.get(&key), Some(State::Done)) => {
                states.insert(
                    key,
                    State::Retry {
                        attempts: ack.attempts,
                        due_ms: ack.due_ms,
                    },
                );
            }
            _ => {}
        }
    }
    states
}

struct SegmentResult {
    segment: Segment,
    jobs: Vec<Job>,
    max_seq: u64,
    damaged: u64,
    quarantined: Vec<Quarantined>,
}

fn recover_segment(dir: &Path, id: u32) -> Result<SegmentResult, String> {
    let path = segment_path(dir, id);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let states = read_acks(&ack_path(dir, id));
    let mut jobs = Vec::new();
    let mut max_seq = 0;
    let mut damaged = 0;
    let mut quarantined = Vec::new();
    let mut pos = 0usize;
    let mut records = 0usize;
    while pos < bytes.len() {
        let (len, summary) = match step(&bytes, pos) {
            Step::Good(len, summary) => (len, summary),
            Step::Damaged(whole) => {
                damaged += 1;
                let reason = "its checksum or fields do not match";
                quarantined.push(quarantine(dir, id, pos, &bytes[pos..pos + whole], reason));
                pos += whole;
                continue;
            }
            Step::Torn => {
                damaged += 1;
                if bytes[pos..].iter().any(|b| *b != 0) {
                    let reason =
                        "an incomplete last record (a write torn by a crash, never acknowledged)";
                    quarantined.push(quarantine(dir, id, pos, &bytes[pos..], reason));
                }
                cut(&path, pos, bytes.len());
                break;
            }
            Step::Lost => {
                damaged += 1;
                let reason = "no readable record header: the rest of the segment cannot be chained";
                quarantined.push(quarantine(dir, id, pos, &bytes[pos..], reason));
                cut(&path, pos, bytes.len());
                break;
            }
        };
        max_seq = max_seq.max(summary.seq);
        records += 1;
        push_jobs(&mut jobs, &states, &summary, id, pos, HEADER_LEN + len);
        pos += HEADER_LEN + len;
    }
    let kept = pos.min(bytes.len());
    // A segment of one streamed message is opened when read, not held open.
    let file = (records > 1).then_some(file);
    Ok(SegmentResult {
        segment: Segment {
            id,
            file,
            bytes: AtomicU64::new(kept as u64),
            live: AtomicU64::new(jobs.len() as u64),
            sealed: AtomicBool::new(true),
            delete_requested: AtomicBool::new(false),
        },
        jobs,
        max_seq,
        damaged,
        quarantined,
    })
}

/// The recipients of one good record not yet done.
fn push_jobs(
    jobs: &mut Vec<Job>,
    states: &HashMap<(u64, u16), State>,
    summary: &record::Summary,
    segment: u32,
    offset: usize,
    len: usize,
) {
    for rcpt in 0..summary.recipients.min(u16::MAX as u32) as u16 {
        let (attempts, due_ms) = match states.get(&(summary.seq, rcpt)) {
            Some(State::Done) => continue,
            Some(State::Retry { attempts, due_ms }) => (*attempts, *due_ms),
            None => (0, summary.received_ms),
        };
        jobs.push(Job {
            seq: summary.seq,
            due_ms,
            segment,
            offset: offset as u32,
            len: len as u32,
            rcpt,
            attempts,
        });
    }
}

pub fn recover(dir: &Path) -> Result<Recovered, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut dats = Vec::new();
    let mut acks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_name) {
            Some((id, "dat")) => dats.push(id),
            Some((id, "ack")) => acks.push(id),
            _ => {}
        }
    }
    dats.sort_unstable();
    for id in acks {
        if dats.binary_search(&id).is_err() {
            let _ = std::fs::remove_file(ack_path(dir, id));
        }
    }
    let next_segment = dats.last().map(|id| id + 1).unwrap_or(0);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(dats.len()));
    let failure = Mutex::new(None);
    let threads = dats.len().clamp(1, 2);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&id) = dats.get(i) else {
                    break;
                };
                match recover_segment(dir, id) {
                    Ok(result) => results.lock().push(result),
                    Err(error) => {
                        *failure.lock() = Some(error);
                        break;
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner() {
        return Err(error);
    }
    let mut results = results.into_inner();
    results.sort_unstable_by_key(|r| r.segment.id);
    let total: usize = results.iter().map(|r| r.jobs.len()).sum();
    let mut recovered = Recovered {
        segments: Vec::with_capacity(results.len()),
        jobs: Vec::with_capacity(total),
        max_seq: 0,
        next_segment,
        damaged: 0,
        quarantined: Vec::new(),
    };
    for result in results {
        recovered.jobs.extend_from_slice(&result.jobs);
        recovered.max_seq = recovered.max_seq.max(result.max_seq);
        recovered.damaged += result.damaged;
        recovered.quarantined.extend(result.quarantined);
        recovered.segments.push(result.segment);
    }
    Ok(recovered)
}
