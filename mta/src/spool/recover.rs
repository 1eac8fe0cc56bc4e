//! Reading the spool back at start: every segment, its state file, and the
//! recipients still to deliver. Two threads share the segments.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::record::{self, ACK_DONE, ACK_LEN, ACK_RETRY, HEADER_LEN};
use super::{ack_path, segment_path, Job, Segment};

pub struct Recovered {
    pub segments: Vec<Segment>,
    pub jobs: Vec<Job>,
    pub max_seq: u64,
    pub next_segment: u32,
    /// Records skipped because their checksum failed.
    pub damaged: u64,
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
}

fn recover_segment(dir: &Path, id: u32) -> Result<SegmentResult, String> {
    let path = segment_path(dir, id);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let states = read_acks(&ack_path(dir, id));
    let mut jobs = Vec::new();
    let mut max_seq = 0;
    let mut damaged = 0;
    let mut pos = 0usize;
    while pos + HEADER_LEN <= bytes.len() {
        let valid = record::header(&bytes[pos..]).and_then(|(len, crc)| {
            let payload = bytes.get(pos + HEADER_LEN..pos + HEADER_LEN + len)?;
            (crc32fast::hash(payload) == crc)
                .then(|| record::summarize(payload))
                .flatten()
                .map(|s| (len, s))
        });
        let Some((len, summary)) = valid else {
            // A torn tail or a damaged record: find the next good one.
            damaged += 1;
            let next = bytes[pos + 1..]
                .windows(4)
                .position(|w| w == record::MAGIC.to_le_bytes())
                .map(|p| pos + 1 + p);
            match next {
                Some(next) => {
                    pos = next;
                    continue;
                }
                None => break,
            }
        };
        max_seq = max_seq.max(summary.seq);
        for rcpt in 0..summary.recipients.min(u16::MAX as u32) as u16 {
            let (attempts, due_ms) = match states.get(&(summary.seq, rcpt)) {
                Some(State::Done) => continue,
                Some(State::Retry { attempts, due_ms }) => (*attempts, *due_ms),
                None => (0, summary.received_ms),
            };
            jobs.push(Job {
                seq: summary.seq,
                due_ms,
                segment: id,
                offset: pos as u32,
                len: (HEADER_LEN + len) as u32,
                rcpt,
                attempts,
            });
        }
        pos += HEADER_LEN + len;
    }
    if damaged > 0 {
        tracing::warn!(
            "spool segment {}: skipped {damaged} damaged or incomplete record(s) \
             (an incomplete last record was never acknowledged)",
            path.display()
        );
    }
    Ok(SegmentResult {
        segment: Segment {
            id,
            file,
            bytes: AtomicU64::new(bytes.len() as u64),
            live: AtomicU64::new(jobs.len() as u64),
            sealed: AtomicBool::new(true),
            delete_requested: AtomicBool::new(false),
        },
        jobs,
        max_seq,
        damaged,
    })
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
                    Ok(result) => results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(result),
                    Err(error) => {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                        break;
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(error);
    }
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_unstable_by_key(|r| r.segment.id);
    let total: usize = results.iter().map(|r| r.jobs.len()).sum();
    let mut recovered = Recovered {
        segments: Vec::with_capacity(results.len()),
        jobs: Vec::with_capacity(total),
        max_seq: 0,
        next_segment,
        damaged: 0,
    };
    for result in results {
        recovered.jobs.extend_from_slice(&result.jobs);
        recovered.max_seq = recovered.max_seq.max(result.max_seq);
        recovered.damaged += result.damaged;
        recovered.segments.push(result.segment);
    }
    Ok(recovered)
}
