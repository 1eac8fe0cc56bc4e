//! The health of the whole fleet, shared by the probe scheduler (which writes
//! probe results), the feed, the Clusters API and the drain calls. The
//! board follows the settings itself ([`Board::follow`]): a reloaded fleet
//! changes its MTAs, and the probe scheduler hears of changed targets from it.
//! `generation` moves only when something a consumer needs changes: a
//! shown state, an address, a weight, membership.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use fleet::feed::{rfc3339, ClusterHealth, FleetHealth, MtaHealth, MtaState};
use fleet::{Fleet, Live};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

use crate::probe::ProbeTarget;
use crate::probe_health::{ProbeHealth, Transition};

/// One MTA of the fleet and what the probes found.
#[derive(Debug, Clone)]
pub struct Record {
    /// This target's incarnation: a moved MTA is a new target, a new id.
    pub id: u64,
    pub cluster: String,
    pub target: ProbeTarget,
    pub health: ProbeHealth,
    pub fleet_drain: bool,
    pub admin_drain: bool,
    /// The state consumers see (`drain` over the probes' state) and since when.
    pub shown: MtaState,
    pub shown_since: SystemTime,
    /// What the MTA's passing `/ready` says is degraded, if anything.
    pub degraded: Option<String>,
}

impl Record {
    fn new(id: u64, cluster: String, target: ProbeTarget, now: SystemTime) -> Record {
        Record {
            id,
            cluster,
            target,
            health: ProbeHealth::new(now),
            fleet_drain: false,
            admin_drain: false,
            shown: MtaState::Unknown,
            shown_since: now,
            degraded: None,
        }
    }

    pub fn drained(&self) -> bool {
        self.fleet_drain || self.admin_drain
    }

    /// Recomputes the shown state; true when it changed.
    fn refresh(&mut self, now: SystemTime) -> bool {
        let shown = if self.drained() {
            MtaState::Drain
        } else {
            self.health.state
        };
        if shown == self.shown {
            return false;
        }
        self.shown = shown;
        self.shown_since = now;
        true
    }

    /// The reason shown: the last failure, or for a drained MTA why it is
    /// drained and what the probes say.
    pub fn reason(&self) -> Option<String> {
        if !self.drained() {
            let degraded = self
                .degraded
                .as_ref()
                .map(|note| format!("degraded: {note}"));
            return self.health.failure.clone().or(degraded);
        }
        let by = match (self.fleet_drain, self.admin_drain) {
            (true, true) => "the fleet file and an admin call",
            (true, false) => "the fleet file",
            _ => "an admin call",
        };
        let probes = match &self.health.failure {
            Some(failure) => format!("{}: {failure}", self.health.state.as_str()),
            None => self.health.state.as_str().to_string(),
        };
        Some(format!("drained by {by}; probes: {probes}"))
    }

    pub fn latency_ms(&self) -> Option<f64> {
        self.health
            .latency
            .map(|l| (l.as_secs_f64() * 1e5).round() / 100.0)
    }
}

/// What the probe scheduler must start and stop after a fleet change.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<(u64, String, ProbeTarget)>,
    pub removed: Vec<u64>,
}

struct Inner {
    fleet: Arc<Fleet>,
    records: HashMap<String, Record>,
    admin_drains: BTreeSet<String>,
    next_id: u64,
}

pub struct Board {
    instance: String,
    inner: Mutex<Inner>,
    generation: watch::Sender<u64>,
    /// Moves whenever a probe target is added or removed.
    targets_changed: watch::Sender<u64>,
}

/// What consumers see of one MTA; a change moves the generation.
type View = (
    String,
    String,
    String,
    Ipv4Addr,
    Option<Ipv6Addr>,
    u32,
    MtaState,
);

impl Board {
    /// A board for `fleet` with MTAs drained through the admin API; every
    /// MTA starts `unknown`.
    pub fn new(fleet: Fleet, admin_drains: BTreeSet<String>) -> Arc<Board> {
        let instance = format!(
            "{:016x}",
            rand::random::<u64>() ^ fleet::clock::unix_micros()
        );
        let board = Board {
            instance,
            inner: Mutex::new(Inner {
                fleet: Arc::new(Fleet {
                    clusters: Vec::new(),
                    accounts: Vec::new(),
                    ..fleet.clone()
                }),
                records: HashMap::new(),
                admin_drains,
                next_id: 1,
            }),
            // Generations start at the start time in milliseconds, so a
            // restarted healthd's generations pass its predecessor's and a
            // consumer's long-poll `after=N` is answered at once.
            generation: watch::channel(start_generation()).0,
            targets_changed: watch::channel(0).0,
        };
        board.apply_fleet(fleet);
        Arc::new(board)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Changes whenever the generation moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes whenever a probe target is added or removed (subscribe
    /// before reading [`Board::targets`]).
    pub fn subscribe_targets(&self) -> watch::Receiver<u64> {
        self.targets_changed.subscribe()
    }

    /// Applies every reloaded fleet until `shutdown`.
    pub async fn follow(self: Arc<Self>, live: Arc<Live<Settings>>, shutdown: CancellationToken) {
        let mut reloads = live.subscribe();
        // A reload between `Board::new` and here is not missed; the same
        // fleet again changes nothing.
        self.apply_fleet(live.get().fleet.clone());
        while fleet::live::next_change(&mut reloads, &shutdown).await {
            self.apply_fleet(live.get().fleet.clone());
        }
    }

    /// Every probe target now, with its id and MTA name.
    pub fn targets(&self) -> Vec<(u64, String, ProbeTarget)> {
        self.lock()
            .records
            .iter()
            .map(|(name, r)| (r.id, name.clone(), r.target.clone()))
            .collect()
    }

    /// Takes a new fleet: new MTAs start `unknown`, removed ones go, a
    /// moved one is a new target.
    pub fn apply_fleet(&self, fleet: Fleet) -> Changes {
        let now = SystemTime::now();
        let mut inner = self.lock();
        let before = view(&inner);
        let mut changes = Changes::default();
        let smtp_port = fleet.ports.smtp.first().copied().unwrap_or(25);
        let https_port = fleet.ports.https;
        let mut old = std::mem::take(&mut inner.records);
        let mut records = HashMap::with_capacity(fleet.mta_count());
        for cluster in &fleet.clusters {
            let hostname = fleet.hostname(cluster);
            for mta in &cluster.mtas {
                let target = ProbeTarget {
                    hostname: hostname.clone(),
                    ipv4: mta.ipv4,
                    ipv6: mta.ipv6,
                    smtp_port,
                    https_port,
                };
                let mut record = match old.remove(&mta.name) {
                    Some(record) if record.target == target && record.cluster == cluster.id => {
                        record
                    }
                    previous => {
                        if let Some(previous) = previous {
                            changes.removed.push(previous.id);
                        }
                        let id = inner.next_id;
                        inner.next_id += 1;
                        changes.added.push((id, mta.name.clone(), target.clone()));
                        Record::new(id, cluster.id.clone(), target, now)
                    }
                };
                record.fleet_drain = mta.drain;
                record.admin_drain = inner.admin_drains.contains(&mta.name);
                record.refresh(now);
                records.insert(mta.name.clone(), record);
            }
        }
        changes.removed.extend(old.into_values().map(|r| r.id));
        inner.records = records;
        inner.fleet = Arc::new(fleet);
        let changed = view(&inner) != before;
        drop(inner);
        if changed {
            self.bump();
        }
        if !changes.added.is_empty() || !changes.removed.is_empty() {
            self.targets_changed.send_modify(|v| *v += 1);
        }
        changes
    }

    /// Takes one probe round's verdict for target `id` of MTA `name`;
    /// `None` when that target is gone. Returns the record after the round
    /// and the probes' transition, if any.
    pub fn observe(
        &self,
        name: &str,
        id: u64,
        verdict: Result<std::time::Duration, &str>,
        rise: u32,
        fall: u32,
    ) -> Option<(Record, Option<Transition>)> {
        let now = SystemTime::now();
        let mut inner = self.lock();
        let record = inner.records.get_mut(name).filter(|r| r.id == id)?;
        let transition = record.health.observe(verdict, rise, fall, now);
        let shown_changed = record.refresh(now);
        let after = record.clone();
        drop(inner);
        if shown_changed {
            self.bump();
        }
        Some((after, transition))
    }

    /// Records what `name`'s last passing `/ready` said is degraded (`None`:
    /// nothing, or the probe failed); consumers hear of a change.
    pub fn note_degraded(&self, name: &str, id: u64, degraded: Option<String>) {
        let mut inner = self.lock();
        let Some(record) = inner.records.get_mut(name).filter(|r| r.id == id) else {
            return;
        };
        if record.degraded == degraded {
            return;
        }
        record.degraded = degraded;
        drop(inner);
        self.bump();
    }

    /// Drains (or undrains) `name` by admin call; `None` when the fleet has
    /// no such MTA.
    pub fn set_admin_drain(&self, name: &str, drain: bool) -> Option<Record> {
        let now = SystemTime::now();
        let mut inner = self.lock();
        inner.records.get(name)?;
        if drain {
            inner.admin_drains.insert(name.to_string());
        } else {
            inner.admin_drains.remove(name);
        }
        let record = inner.records.get_mut(name)?;
        record.admin_drain = drain;
        let changed = record.refresh(now);
        let after = record.clone();
        drop(inner);
        if changed {
            self.bump();
        }
        Some(after)
    }

    /// The MTAs drained through the admin API, for the state file.
    pub fn admin_drains(&self) -> BTreeSet<String> {
        self.lock().admin_drains.clone()
    }

    pub fn record(&self, name: &str) -> Option<Record> {
        self.lock().records.get(name).cloned()
    }

    /// Reads the fleet and the records together.
    pub fn read<T>(&self, f: impl FnOnce(&Fleet, &HashMap<String, Record>) -> T) -> T {
        let inner = self.lock();
        f(&inner.fleet, &inner.records)
    }

    /// The feed: the whole state with its generation.
    pub fn snapshot(&self) -> FleetHealth {
        let inner = self.lock();
        let generation = self.generation();
        let clusters = inner
            .fleet
            .clusters
            .iter()
            .map(|cluster| ClusterHealth {
                id: cluster.id.clone(),
                hostname: inner.fleet.hostname(cluster),
                mtas: cluster
                    .mtas
                    .iter()
                    .filter_map(|mta| {
                        let record = inner.records.get(&mta.name)?;
                        Some(MtaHealth {
                            name: mta.name.clone(),
                            ipv4: mta.ipv4,
                            ipv6: mta.ipv6,
                            weight: mta.weight,
                            state: record.shown,
                            since: rfc3339(record.shown_since),
                            latency_ms: record.latency_ms(),
                            reason: record.reason(),
                        })
                    })
                    .collect(),
            })
            .collect();
        FleetHealth {
            instance: self.instance.clone(),
            generation,
            clusters,
        }
    }
}

fn start_generation() -> u64 {
    fleet::clock::unix_millis().max(1)
}

fn view(inner: &Inner) -> Vec<View> {
    let mut view = Vec::with_capacity(inner.records.len());
    for cluster in &inner.fleet.clusters {
        let hostname = inner.fleet.hostname(cluster);
        for mta in &cluster.mtas {
            let shown = inner
                .records
                .get(&mta.name)
                .map(|r| r.shown)
                .unwrap_or(MtaState::Unknown);
            view.push((
                cluster.id.clone(),
                hostname.clone(),
                mta.name.clone(),
                mta.ipv4,
                mta.ipv6,
                mta.weight,
                shown,
            ));
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn fleet(weight: u32, drain: bool) -> Fleet {
        let text = format!(
            "[zone]\norigin = \"unmta.net\"\nprimary_ns = \"ns1.unmta.net\"\n\
             hostmaster = \"hostmaster.unmta.net\"\n\
             nameservers = [ {{ name = \"ns1.unmta.net\", ipv4 = \"192.0.2.53\" }} ]\n\
             [[clusters]]\nid = \"a1\"\ndomains = [\"a.example\"]\n\
             [[clusters.mtas]]\nname = \"m1\"\nipv4 = \"192.0.2.1\"\nweight = {weight}\ndrain = {drain}\n"
        );
        fleet::parse_fleet(&text, "fleet.toml").unwrap()
    }

    #[test]
    fn generation_moves_only_for_what_consumers_need() {
        let board = Board::new(fleet(1, false), BTreeSet::new());
        let (id, name, _) = board.targets().remove(0);
        let mut generation = board.generation();
        let mut moved = |board: &Board| {
            let now = board.generation();
            let moved = now != generation;
            generation = now;
            moved
        };
        let ms = Duration::from_millis(3);
        assert!(board.observe(&name, id, Ok(ms), 2, 2).is_some());
        assert!(!moved(&board), "one pass is no transition");
        board.observe(&name, id, Ok(ms * 2), 2, 2);
        assert!(moved(&board), "unknown -> up");
        board.observe(&name, id, Ok(ms * 3), 2, 2);
        assert!(!moved(&board), "latency alone");
        board.observe(&name, id, Err("smtp: connection refused"), 2, 2);
        assert!(!moved(&board), "a failure short of fall");
        assert!(
            board.observe(&name, id + 1, Ok(ms), 2, 2).is_none(),
            "stale target"
        );
        board.apply_fleet(fleet(2, false));
        assert!(moved(&board), "weight");
        let changes = board.apply_fleet(fleet(2, true));
        assert!(moved(&board), "drain in the fleet file");
        assert!(changes.added.is_empty() && changes.removed.is_empty());
        assert_eq!(board.record("m1").unwrap().shown, MtaState::Drain);
        board.apply_fleet(fleet(2, true));
        assert!(!moved(&board), "the same fleet again");
        board.set_admin_drain("m1", true);
        assert!(!moved(&board), "already drained by the fleet file");
        assert!(board.set_admin_drain("nope", true).is_none());
    }
}
