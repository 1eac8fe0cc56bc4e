//! One scheduler drives every probe: a heap of due times, at most
//! `max_in_flight` rounds at once, each round a short task that ends with
//! its report. The board follows fleet reloads; the scheduler starts and
//! stops probes as the board's targets change.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fleet::admin::Readiness;
use fleet::feed::MtaState;
use fleet::Live;
use rand::Rng;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::board::Board;
use crate::config::{ProbeConfig, Settings};
use crate::metrics::{FailureLabels, KindLabels, Metrics, RoundLabels, TransitionLabels};
use crate::probe::https::Kept;
use crate::probe::{ProbeTarget, Prober, Report};

struct Slot {
    name: String,
    target: Arc<ProbeTarget>,
    running: Option<AbortHandle>,
    /// The HTTPS connection the last round left open.
    kept: Option<Kept>,
}

struct Done {
    id: u64,
    due: Instant,
    report: Report,
    kept: Option<Kept>,
}

pub struct ProbeScheduler {
    live: Arc<Live<Settings>>,
    board: Arc<Board>,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    probe: ProbeConfig,
    prober: Prober,
    slots: HashMap<u64, Slot>,
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    running: JoinSet<Done>,
    /// Targets not yet probed once since start; ready when empty.
    first_round: Option<HashSet<u64>>,
    /// (cluster, MTA) of every `mta_up` gauge set, to remove stale ones.
    known_gauges: HashSet<(String, String)>,
    /// Moves when the board's targets change.
    targets: tokio::sync::watch::Receiver<u64>,
}

fn prober(settings: &Settings) -> Prober {
    let origin = settings.fleet.zone.origin.trim_end_matches('.');
    Prober::new(
        settings.tls.clone(),
        settings.node.probe.timeout,
        &format!("healthd.{origin}"),
    )
}

impl ProbeScheduler {
    pub fn new(
        live: Arc<Live<Settings>>,
        board: Arc<Board>,
        metrics: Metrics,
        readiness: Arc<Readiness>,
    ) -> ProbeScheduler {
        let settings = live.get();
        readiness.not_ready("probes", "the first probe round has not finished");
        let targets = board.subscribe_targets();
        let mut scheduler = ProbeScheduler {
            probe: settings.node.probe.clone(),
            prober: prober(&settings),
            live,
            board,
            metrics,
            readiness,
            slots: HashMap::new(),
            due: BinaryHeap::new(),
            running: JoinSet::new(),
            first_round: Some(HashSet::new()),
            known_gauges: HashSet::new(),
            targets,
        };
        // The first round spreads over up to one interval (1 ms per MTA),
        // so a large fleet does not start with every handshake at once.
        let now = Instant::now();
        let mut targets = scheduler.board.targets();
        targets.sort_by_key(|(id, _, _)| *id);
        let spread =
            (Duration::from_millis(1) * targets.len() as u32).min(scheduler.probe.interval);
        let count = targets.len().max(1) as f64;
        for (i, (id, name, target)) in targets.into_iter().enumerate() {
            scheduler.add(id, name, target, now + spread.mul_f64(i as f64 / count));
        }
        scheduler.check_first_round();
        scheduler
    }

    fn add(&mut self, id: u64, name: String, target: ProbeTarget, due: Instant) {
        self.slots.insert(
            id,
            Slot {
                name,
                target: Arc::new(target),
                running: None,
                kept: None,
            },
        );
        self.due.push(Reverse((due, id)));
        if let Some(first) = &mut self.first_round {
            first.insert(id);
        }
        self.metrics.targets.set(self.slots.len() as i64);
    }

    fn remove(&mut self, id: u64) {
        if let Some(slot) = self.slots.remove(&id) {
            if let Some(running) = slot.running {
                running.abort();
            }
            tracing::info!(mta = %slot.name, address = %slot.target.ipv4, "no longer probed");
        }
        if let Some(first) = &mut self.first_round {
            first.remove(&id);
        }
        self.metrics.targets.set(self.slots.len() as i64);
    }

    fn check_first_round(&mut self) {
        if self.first_round.as_ref().is_some_and(|f| f.is_empty()) {
            self.first_round = None;
            self.readiness.ready("probes");
            tracing::info!("first probe round finished: ready");
        }
    }

    /// Applies the probe settings in service now (after a reload).
    fn reload(&mut self) {
        let settings = self.live.get();
        self.probe = settings.node.probe.clone();
        self.prober = prober(&settings);
        // Kept HTTPS connections were verified with the old settings.
        for slot in self.slots.values_mut() {
            slot.kept = None;
        }
    }

    /// Starts probing the board's new targets and stops the removed ones.
    fn sync_targets(&mut self) {
        let mut current: HashMap<u64, (String, ProbeTarget)> = self
            .board
            .targets()
            .into_iter()
            .map(|(id, name, target)| (id, (name, target)))
            .collect();
        let gone: Vec<u64> = self
            .slots
            .keys()
            .filter(|id| !current.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.remove(id);
        }
        current.retain(|id, _| !self.slots.contains_key(id));
        let now = Instant::now();
        let mut added: Vec<_> = current.into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        for (id, (name, target)) in added {
            tracing::info!(mta = %name, address = %target.ipv4, "new probe target: unknown until probed");
            self.add(id, name, target, now);
        }
        // Gauges of MTAs that left the fleet go too.
        let present: HashSet<(String, String)> = self.board.read(|fleet, _| {
            fleet
                .clusters
                .iter()
                .flat_map(|c| c.mtas.iter().map(|m| (c.id.clone(), m.name.clone())))
                .collect()
        });
        for (cluster, mta) in self.known_gauges.iter().filter(|k| !present.contains(*k)) {
            self.metrics.up.remove(&Metrics::mta_labels(cluster, mta));
        }
        self.known_gauges.retain(|k| present.contains(k));
        self.check_first_round();
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        while self.running.len() < self.probe.max_in_flight {
            let Some(Reverse((due, id))) = self.due.peek().copied() else {
                break;
            };
            if due > now {
                break;
            }
            self.due.pop();
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            self.metrics
                .lag
                .observe(now.saturating_duration_since(due).as_secs_f64());
            let prober = self.prober.clone();
            let target = slot.target.clone();
            let kept = slot.kept.take();
            let handle = self.running.spawn(async move {
                let (report, kept) = prober.probe(&target, kept).await;
                Done {
                    id,
                    due,
                    report,
                    kept,
                }
            });
            slot.running = Some(handle);
        }
        self.metrics.in_flight.set(self.running.len() as i64);
    }

    fn finish(&mut self, done: Done) {
        let Some(slot) = self.slots.get_mut(&done.id) else {
            return;
        };
        slot.running = None;
        slot.kept = done.kept;
        let name = slot.name.clone();
        for (kind, result) in [
            (crate::probe::Kind::Smtp, &done.report.smtp),
            (crate::probe::Kind::Https, &done.report.https),
        ] {
            match result {
                Ok(latency) => self
                    .metrics
                    .latency
                    .get_or_create(&KindLabels {
                        kind: kind.as_str(),
                    })
                    .observe(latency.as_secs_f64()),
                Err(failure) => {
                    self.metrics
                        .failures
                        .get_or_create(&FailureLabels {
                            kind: kind.as_str(),
                            class: failure.class.as_str(),
                        })
                        .inc();
                }
            }
        }
        self.board
            .note_degraded(&name, done.id, done.report.degraded.clone());
        let verdict = done.report.verdict().map_err(|f| f.reason.as_str());
        self.metrics
            .rounds
            .get_or_create(&RoundLabels {
                result: if verdict.is_ok() { "pass" } else { "fail" },
            })
            .inc();
        let Some((record, transition)) =
            self.board
                .observe(&name, done.id, verdict, self.probe.rise, self.probe.fall)
        else {
            return;
        };
        let labels = Metrics::mta_labels(&record.cluster, &name);
        self.metrics
            .up
            .get_or_create(&labels)
            .set(i64::from(record.health.state == MtaState::Up));
        self.known_gauges
            .insert((record.cluster.clone(), name.clone()));
        if let Some(t) = transition {
            self.metrics
                .transitions
                .get_or_create(&TransitionLabels {
                    from: t.from.as_str(),
                    to: t.to.as_str(),
                })
                .inc();
            let drained = if record.drained() {
                " (drained: not served either way)"
            } else {
                ""
            };
            if t.to == MtaState::Down {
                tracing::warn!(mta = %name, cluster = %record.cluster, address = %record.target.ipv4,
                    "{name} {} -> {}: {}{drained}", t.from.as_str(), t.to.as_str(), t.reason);
            } else {
                tracing::info!(mta = %name, cluster = %record.cluster, address = %record.target.ipv4,
                    "{name} {} -> {}: {}{drained}", t.from.as_str(), t.to.as_str(), t.reason);
            }
        }
        let next = self.next_due(done.due, record.health.changing());
        self.due.push(Reverse((next, done.id)));
        if let Some(first) = &mut self.first_round {
            first.remove(&done.id);
        }
        self.check_first_round();
    }

    /// The next start after one due at `due`: on schedule, not after it
    /// finished, less a random share of the interval.
    fn next_due(&self, due: Instant, changing: bool) -> Instant {
        let interval = if changing {
            self.probe.fast_interval.min(self.probe.interval)
        } else {
            self.probe.interval
        };
        let jitter = if self.probe.jitter > 0.0 {
            interval.mul_f64(rand::rng().random_range(0.0..self.probe.jitter))
        } else {
            Duration::ZERO
        };
        (due + interval - jitter).max(Instant::now())
    }

    /// Probes until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut reloads = self.live.subscribe();
        loop {
            self.start_due();
            let next = self
                .due
                .peek()
                .map(|Reverse((due, _))| *due)
                .filter(|_| self.running.len() < self.probe.max_in_flight);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = reloads.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.reload();
                }
                changed = self.targets.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.sync_targets();
                }
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    if let Ok(done) = joined {
                        self.finish(done);
                    }
                    // Take every other finished round without waiting.
                    while let Some(joined) = self.running.try_join_next() {
                        if let Ok(done) = joined {
                            self.finish(done);
                        }
                    }
                    self.metrics.in_flight.set(self.running.len() as i64);
                }
                _ = sleep_until(next), if next.is_some() => {}
            }
        }
        self.running.abort_all();
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}
