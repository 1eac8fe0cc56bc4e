//! Recent state transitions for the Cluster page. healthd keeps only each
//! MTA's current state; the journal follows the board and writes down every
//! change of a shown state it sees (from, to, when, why).

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

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
        let mut inner = self.inner.lock();
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
        let inner = self.inner.lock();
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    const FLEET: &str = r#"
[zone]
origin = "unmta.net"
primary_ns = "ns1.unmta.net"
hostmaster = "hostmaster.unmta.net"
nameservers = [ { name = "ns1.unmta.net", ipv4 = "192.0.2.53" } ]

[ports]
smtp = [587]
https = 443

[[clusters]]
id = "a1"
domains = ["a.example"]
  [[clusters.mtas]]
  name = "mta-1"
  ipv4 = "192.0.2.1"

[[clusters]]
id = "b2"
domains = ["b.example"]
  [[clusters.mtas]]
  name = "mta-2"
  ipv4 = "192.0.2.2"
"#;

    fn id(board: &Board, name: &str) -> u64 {
        board
            .targets()
            .into_iter()
            .find(|(_, n, _)| n == name)
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn writes_down_each_change_of_a_shown_state_per_cluster() {
        let fleet = fleet::parse_fleet(FLEET, "fleet.toml").unwrap();
        let board = Board::new(fleet, BTreeSet::new());
        let shutdown = CancellationToken::new();
        let journal = Journal::start(board.clone(), shutdown.clone());
        assert!(journal.recent("a1", 10).is_empty());
        let mut taken = journal.subscribe();

        let one = id(&board, "mta-1");
        board.observe("mta-1", one, Ok(Duration::from_millis(3)), 1, 1);
        board.observe("mta-1", one, Err("smtp: connection refused"), 1, 1);
        let generation = board.generation();
        tokio::time::timeout(Duration::from_secs(5), taken.wait_for(|g| *g >= generation))
            .await
            .expect("the journal takes in the board's generation")
            .unwrap();
        let recent = journal.recent("a1", 10);
        // Changes may coalesce; the last one is always there, newest first.
        let last = &recent[0];
        assert_eq!((last.mta.as_str(), last.to), ("mta-1", MtaState::Down));
        assert_eq!(last.reason.as_deref(), Some("smtp: connection refused"));
        assert!(journal.recent("b2", 10).is_empty());
        assert_eq!(journal.recent("a1", 1).len(), 1);
        shutdown.cancel();
    }
}
