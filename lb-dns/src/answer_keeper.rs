//! Keeps the answers current: rebuilds them when the fleet file is reloaded
//! or the merged health changes, moves the SOA serial when they change, logs
//! and counts all-down transitions, persists the health to the state file
//! and keeps the freshness metrics up to date.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fleet::admin::Readiness;
use fleet::control::Control;
use fleet::{Live, WhenAllDown};
use tokio::sync::watch;

use crate::answers::{Answers, ClusterSummary};
use crate::config::Settings;
use crate::follow::Followers;
use crate::health::{Health, HealthSource};
use crate::metrics::{AllDownLabels, ClusterLabel, FeedLabel, Metrics};
use crate::saved_health::SavedHealth;

const TICK: Duration = Duration::from_secs(1);
/// While fresh, the state file is rewritten at least this often so its
/// `confirmed_at` stays close to the truth.
const PERSIST_EVERY: Duration = Duration::from_secs(30);

pub struct AnswerKeeper {
    pub answers: Arc<ArcSwap<Answers>>,
    live: Arc<Live<Settings>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    all_down: HashMap<String, (bool, bool)>,
    last_persist: Option<Instant>,
    /// Feed labels in the metrics now.
    feeds_shown: Vec<String>,
    /// The latest state for the writer task (`saved_health::writer`).
    to_persist: watch::Sender<Option<(PathBuf, SavedHealth)>>,
    /// Subscribed before the first build, so no change is missed.
    settings_changed: watch::Receiver<u64>,
    health_changed: watch::Receiver<u64>,
}

fn next_serial(previous: u32) -> u32 {
    let now = fleet::clock::unix_secs() as u32;
    // RFC 1982: `now` is newer when it is ahead by less than 2^31.
    if now != previous && now.wrapping_sub(previous) < (1 << 31) {
        now
    } else {
        previous.wrapping_add(1)
    }
}

impl AnswerKeeper {
    /// Builds the first answers; fails when the zone itself cannot be built.
    pub fn new(
        live: Arc<Live<Settings>>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        to_persist: watch::Sender<Option<(PathBuf, SavedHealth)>>,
    ) -> anyhow::Result<AnswerKeeper> {
        let settings_changed = live.subscribe();
        let health_changed = health.subscribe();
        let settings = live.get();
        let answers = Answers::build(
            &settings.fleet,
            &health.view(),
            fleet::clock::unix_secs() as u32,
            |c| metrics.served_counter(c),
        )
        .map_err(|e| anyhow::anyhow!("cannot build the zone: {e}"))?;
        let mut keeper = AnswerKeeper {
            answers: Arc::new(ArcSwap::from_pointee(answers)),
            live,
            health,
            metrics,
            readiness,
            all_down: HashMap::new(),
            last_persist: None,
            feeds_shown: Vec::new(),
            to_persist,
            settings_changed,
            health_changed,
        };
        keeper.metrics.rebuilds.inc();
        keeper.observe();
        keeper.tick();
        Ok(keeper)
    }

    /// Rebuilds the answers; swaps them in (with a new serial) only when
    /// their content changed.
    pub fn rebuild(&mut self) {
        let settings = self.live.get();
        let previous = self.answers.load_full();
        let metrics = &self.metrics;
        let health = self.health.view();
        let build = |serial| {
            Answers::build(&settings.fleet, &health, serial, |c| {
                metrics.served_counter(c)
            })
        };
        let answers = match build(previous.serial) {
            Ok(answers) => answers,
            Err(error) => {
                tracing::error!("cannot rebuild the zone, the previous answers stay: {error}");
                return;
            }
        };
        if answers.content_hash == previous.content_hash {
            // Same answers; the source may have changed (quiet start-up).
            self.observe();
            return;
        }
        let serial = next_serial(previous.serial);
        let answers = match build(serial) {
            Ok(answers) => answers,
            Err(error) => {
                tracing::error!("cannot rebuild the zone, the previous answers stay: {error}");
                return;
            }
        };
        self.answers.store(Arc::new(answers));
        self.metrics.rebuilds.inc();
        tracing::debug!(serial, "answers rebuilt");
        self.observe();
    }

    /// Logs and counts all-down transitions; updates per-cluster gauges.
    fn observe(&mut self) {
        let answers = self.answers.load_full();
        let when_all_down = self.live.get().fleet.zone.when_all_down;
        let action = match when_all_down {
            WhenAllDown::ServeAll => "serve_all",
            WhenAllDown::Empty => "empty",
        };
        self.metrics.serial.set(i64::from(answers.serial));
        // Before any health state, every cluster is all down: one line, not
        // one warning per cluster.
        let quiet = self.health.source() == HealthSource::Nothing;
        let mut quiet_clusters = 0;
        let mut seen = HashMap::new();
        for cluster in &answers.clusters {
            self.set_cluster_gauges(cluster);
            // (all down, logged as such)
            let (was, logged) = self
                .all_down
                .get(&cluster.id)
                .copied()
                .unwrap_or((false, false));
            // Every cluster's counter is there at 0 from the start.
            let all_down = self
                .metrics
                .all_down
                .get_or_create(&AllDownLabels {
                    cluster: cluster.id.clone(),
                    action: action.to_string(),
                })
                .clone();
            if cluster.all_down && !was {
                all_down.inc();
                if quiet {
                    quiet_clusters += 1;
                }
            }
            let now_logged = log_all_down_change(cluster, when_all_down, (was, logged), quiet);
            seen.insert(cluster.id.clone(), (cluster.all_down, now_logged));
        }
        if quiet_clusters > 0 {
            tracing::info!(
                clusters = quiet_clusters,
                "no health state yet (no feed has answered, no state file): \
                 answering when_all_down until a feed answers"
            );
        }
        for gone in self.all_down.keys().filter(|id| !seen.contains_key(*id)) {
            let label = ClusterLabel {
                cluster: gone.clone(),
            };
            self.metrics.cluster_up.remove(&label);
            self.metrics.cluster_all_down.remove(&label);
        }
        self.all_down = seen;
    }

    fn set_cluster_gauges(&self, cluster: &ClusterSummary) {
        let label = ClusterLabel {
            cluster: cluster.id.clone(),
        };
        self.metrics
            .cluster_up
            .get_or_create(&label)
            .set(cluster.up as i64);
        self.metrics
            .cluster_all_down
            .get_or_create(&label)
            .set(i64::from(cluster.all_down));
    }

    /// Updates the freshness metrics; persists the state when due.
    fn tick(&mut self) {
        let report = self.health.report();
        self.metrics.stale.set(i64::from(report.stale));
        // Still serving from the last state: ready, but say it is stale.
        if report.stale {
            self.readiness.degraded("health", report.reason.clone());
        } else {
            self.readiness.not_degraded("health");
        }
        self.metrics
            .state_age
            .set(report.state_age_secs.unwrap_or(-1.0));
        let followed: Vec<&str> = report.feeds.iter().map(|f| f.url.as_str()).collect();
        self.feeds_shown.retain(|url| {
            let keep = followed.contains(&url.as_str());
            if !keep {
                let label = FeedLabel { feed: url.clone() };
                self.metrics.feed_fresh.remove(&label);
                self.metrics.feed_last_ok_age.remove(&label);
            }
            keep
        });
        for feed in &report.feeds {
            if !self.feeds_shown.contains(&feed.url) {
                self.feeds_shown.push(feed.url.clone());
            }
            let label = FeedLabel {
                feed: feed.url.clone(),
            };
            self.metrics
                .feed_fresh
                .get_or_create(&label)
                .set(i64::from(feed.fresh));
            self.metrics
                .feed_last_ok_age
                .get_or_create(&label)
                .set(feed.last_ok_secs_ago.unwrap_or(-1.0));
        }
        if !report.stale
            && self
                .last_persist
                .is_none_or(|at| at.elapsed() >= PERSIST_EVERY)
        {
            self.persist();
        }
    }

    /// Hands the state to the writer task (no-op without a state file).
    fn persist(&mut self) {
        let Some(path): Option<PathBuf> = self.live.get().node.state_file.clone() else {
            return;
        };
        let Some(state) = self.health.persisted() else {
            return;
        };
        self.last_persist = Some(Instant::now());
        self.to_persist.send_replace(Some((path, state)));
    }

    /// Runs until shutdown: reloads, health changes, ticks.
    pub async fn run(mut self, control: Control, mut followers: Followers) {
        let mut settings_changed = self.settings_changed.clone();
        let mut health_changed = self.health_changed.clone();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = control.shutdown.cancelled() => return,
                changed = settings_changed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    followers.sync(&self.live.get().node);
                    self.rebuild();
                }
                changed = health_changed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.rebuild();
                    self.persist();
                }
                _ = ticker.tick() => self.tick(),
            }
        }
    }
}

/// Logs a cluster going all down (unless `quiet`: no health state yet) or
/// coming back; `was`: all down before, `logged`: and logged as such.
/// Returns whether its being all down is now logged.
fn log_all_down_change(
    cluster: &ClusterSummary,
    when_all_down: WhenAllDown,
    (was, logged): (bool, bool),
    quiet: bool,
) -> bool {
    if cluster.all_down && !logged && !quiet {
        match when_all_down {
            WhenAllDown::ServeAll => tracing::warn!(
                cluster = %cluster.id,
                addresses = cluster.served_v4 + cluster.served_v6,
                "no MTA up: failing open, serving every non-drained address"
            ),
            WhenAllDown::Empty => tracing::warn!(
                cluster = %cluster.id,
                "no MTA up: answering NODATA (when_all_down = \"empty\")"
            ),
        }
        return true;
    }
    if !cluster.all_down && was && logged {
        tracing::info!(cluster = %cluster.id, up = cluster.up, "MTAs up again");
    }
    logged && cluster.all_down
}
