//! Recent state transitions for the Cluster page. healthd keeps only each
//! MTA's current state; the journal follows the board and writes down every
//! change of a shown state it sees (from, to, when, why). The entries are
//! kept in a file beside the drain state file (`transitions.json`, replaced
//! atomically after each change), so they survive a restart.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet::feed::{FleetHealth, MtaState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::board::Board;

/// Transitions kept for the whole fleet, newest last.
const KEEP: usize = 2_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// RFC 3339 time the MTA entered `to`.
    pub at: String,
    pub cluster: String,
    pub mta: String,
    pub from: MtaState,
    pub to: MtaState,
    pub reason: Option<String>,
}

/// What `transitions.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// Oldest first.
    transitions: Vec<Entry>,
}

/// The file the journal is kept in.
#[derive(Debug, Clone)]
pub struct JournalFile {
    path: PathBuf,
}

impl JournalFile {
    /// `transitions.json` in the folder of the drain state file.
    pub fn beside(state_file: &Path) -> JournalFile {
        JournalFile {
            path: state_file.with_file_name("transitions.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries kept; none (with a warning naming the file) when it
    /// cannot be read, so a damaged journal never stops the probes.
    pub fn load(&self) -> Vec<Entry> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(
                    "transitions {} cannot be read: {e}; starting empty",
                    self.path.display()
                );
                return Vec::new();
            }
        };
        match serde_json::from_str::<Saved>(&text) {
            Ok(saved) => saved.transitions,
            Err(e) => {
                tracing::warn!(
                    "transitions {} are not valid: {e}; starting empty",
                    self.path.display()
                );
                Vec::new()
            }
        }
    }

    /// Replaces the file atomically.
    pub fn save(&self, transitions: Vec<Entry>) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(&Saved { transitions })?;
        text.push('\n');
        fleet::fs::replace_file(&self.path, text.as_bytes())
    }
}

#[derive(Default)]
struct Inner {
    last: HashMap<(String, String), MtaState>,
    entries: VecDeque<Entry>,
}

pub struct Journal {
    inner: Mutex<Inner>,
    /// The board generation the journal has taken in (and saved).
    processed: watch::Sender<u64>,
}

impl Journal {
    /// Follows `board` until `shutdown` on `tasks`, starting with the
    /// entries of `file` and saving every change there.
    pub fn start(
        board: Arc<Board>,
        file: Option<JournalFile>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Journal> {
        let mut changes = board.subscribe();
        let mut inner = Inner::default();
        if let Some(file) = &file {
            inner.entries = file.load().into();
            trim(&mut inner.entries);
        }
        let journal = Arc::new(Journal {
            inner: Mutex::new(inner),
            processed: watch::channel(0).0,
        });
        let snapshot = board.snapshot();
        journal.take(&snapshot);
        journal.publish(snapshot.generation);
        let following = journal.clone();
        tasks.spawn(async move {
            while fleet::live::next_change(&mut changes, &shutdown).await {
                let snapshot = board.snapshot();
                if following.take(&snapshot) {
                    if let Some(file) = &file {
                        following.save(file).await;
                    }
                }
                following.publish(snapshot.generation);
            }
        });
        journal
    }

    async fn save(&self, file: &JournalFile) {
        let entries: Vec<Entry> = self.inner.lock().entries.iter().cloned().collect();
        let writing = file.clone();
        let saved = tokio::task::spawn_blocking(move || writing.save(entries)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("recent transitions not kept: {e}"),
            Err(e) => tracing::warn!(
                "recent transitions not kept in {}: {e}",
                file.path().display()
            ),
        }
    }

    /// Records the differences between `snapshot` and the last one; true
    /// when it wrote down a transition.
    fn take(&self, snapshot: &FleetHealth) -> bool {
        let mut inner = self.inner.lock();
        let mut last = HashMap::with_capacity(inner.last.len());
        let mut added = false;
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
                    added = true;
                }
                last.insert(key, mta.state);
            }
        }
        inner.last = last;
        trim(&mut inner.entries);
        added
    }

    fn publish(&self, generation: u64) {
        self.processed.send_if_modified(|g| {
            let moved = generation > *g;
            if moved {
                *g = generation;
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

fn trim(entries: &mut VecDeque<Entry>) {
    while entries.len() > KEEP {
        entries.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    /// Two clusters of one MTA each.
    fn two_clusters() -> fleet::Fleet {
        let text = fleet::testkit::FleetToml::new("192.0.2.53")
            .ports(&[587], 443)
            .cluster("a1", &["a.example"])
            .mta("mta-1", "192.0.2.1")
            .cluster("b2", &["b.example"])
            .mta("mta-2", "192.0.2.2")
            .to_string();
        fleet::parse_fleet(&text, "fleet.toml").unwrap()
    }

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
        let fleet = two_clusters();
        let board = Board::new(fleet, BTreeSet::new());
        let shutdown = CancellationToken::new();
        let journal = Journal::start(board.clone(), None, &TaskTracker::new(), shutdown.clone());
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

    /// What was written down is in the file once taken in, and a journal
    /// started on that file (a restarted healthd) shows it; a damaged
    /// file starts empty.
    #[tokio::test]
    async fn transitions_survive_a_restart_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = JournalFile::beside(&dir.path().join("var/state.json"));
        let fleet = two_clusters();
        let board = Board::new(fleet.clone(), BTreeSet::new());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let journal = Journal::start(board.clone(), Some(file.clone()), &tasks, shutdown.clone());
        let one = id(&board, "mta-1");
        board.observe("mta-1", one, Err("smtp: connection refused"), 1, 1);
        let generation = board.generation();
        let mut taken = journal.subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            taken.wait_for(|g| *g >= generation),
        )
        .await
        .expect("the journal takes in and saves the board's generation")
        .unwrap();
        let before = journal.recent("a1", 10);
        assert_eq!(before.len(), 1);
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;

        let restarted = Board::new(fleet, BTreeSet::new());
        let again = Journal::start(
            restarted,
            Some(file.clone()),
            &TaskTracker::new(),
            CancellationToken::new(),
        );
        assert_eq!(again.recent("a1", 10), before);
        assert_eq!(before[0].to, MtaState::Down);

        std::fs::write(file.path(), "{ not json").unwrap();
        let board = Board::new(two_clusters(), BTreeSet::new());
        let damaged = Journal::start(
            board,
            Some(file),
            &TaskTracker::new(),
            CancellationToken::new(),
        );
        assert!(damaged.recent("a1", 10).is_empty());
    }
}
