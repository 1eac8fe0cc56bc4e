//! Recent state transitions for the Cluster page. healthd keeps only each
//! MTA's current state; the journal follows the board and writes down every
//! change of a shown state it sees (from, to, when, why).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use fleet::feed::{FleetHealth, MtaState};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::board::Board;

/// Transitions kept for the whole fleet, newest last.
const KEEP: usize = 2_000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// RFC 3339 time the MTA entered `to`.
    pub at: String,
    pub cluster: String,
    pub mta: String,
    pub from: MtaState,
    pub to: MtaState,
    pub reason: Option<String>,
}

#[derive(Default)]
struct Inner {
    last: HashMap<(String, String), MtaState>,
    entries: VecDeque<Entry>,
}

pub struct Journal {
    inner: Mutex<Inner>,
    /// The board generation the journal has taken in.
    processed: watch::Sender<u64>,
}

impl Journal {
    /// Follows `board` until `shutdown`.
    pub fn start(board: Arc<Board>, shutdown: CancellationToken) -> Arc<Journal> {
        let mut changes = board.subscribe();
        let journal = Arc::new(Journal {
            inner: Mutex::new(Inner::default()),
            processed: watch::channel(0).0,
        });
        journal.take(&board.snapshot());
        let following = journal.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
                following.take(&board.snapshot());
            }
        });
        journal
    }

    /// Records the differences between `snapshot` and the last one.
    fn take(&self, snapshot: &FleetHealth) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = HashMap::with_capacity(inner.last.len());
        for cluster in &snapshot.clusters {
            for mta in &cluster.mtas {
                let key = (cluster.id.clone(), mta.name.clone());
                let before = inner.last.get(&key).copied();
                if before.is_some_and(|before| before != mta.state) {
                    inner.entries.push_back(Entry {
                        at: mta.since.clone(),
                        cluster: cluster.id.clone(),
                        mta: mta.name.clone(),
                        from: before.unwrap_or(MtaState::Unknown),
                        to: mta.state,
                        reason: mta.reason.clone(),
                    });
                }
                last.insert(key, mta.state);
            }
        }
        inner.last = last;
        while inner.entries.len() > KEEP {
            inner.entries.pop_front();
        }
        drop(inner);
        self.processed.send_if_modified(|g| {
            let moved = snapshot.generation > *g;
            if moved {
                *g = snapshot.generation;
            }
            moved
        });
    }

    /// The board generation taken in so far.
    pub fn generation(&self) -> u64 {
        *self.processed.borrow()
    }

    /// Changes whenever the journal has taken in a newer generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.processed.subscribe()
    }

    /// The last `limit` transitions of `cluster`, newest first.
    pub fn recent(&self, cluster: &str, limit: usize) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .iter()
            .rev()
            .filter(|e| e.cluster == cluster)
            .take(limit)
            .cloned()
            .collect()
    }
}
