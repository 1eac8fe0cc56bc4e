//! The health lb-dns serves from: what each healthd feed said last, merged
//! into one state per MTA.
//!
//! Merging: only fresh feeds count (a feed is fresh while its last request
//! succeeded). An MTA is `drain` if any fresh feed says so, else `up` if any
//! fresh feed says so (one partitioned healthd cannot take an MTA out alone),
//! else `down`/`unknown`. With no fresh feed the last merged state stays in
//! service unchanged: from the feeds before they went away, or from the state
//! file at start-up, or nothing (every cluster then answers `when_all_down`).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet::feed::{FleetHealth, MtaState};
use serde::Serialize;
use tokio::sync::watch;

use crate::saved_health::SavedHealth;

/// Where the state in service comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthSource {
    /// No feed has answered and there was no state file.
    Nothing,
    /// The state file written by an earlier run.
    StateFile,
    /// One or more healthd feeds.
    Feeds,
}

#[derive(Debug, Clone, Default)]
struct FeedStatus {
    fresh: bool,
    snapshot: Option<FleetHealth>,
    last_ok: Option<SystemTime>,
    last_error: Option<String>,
}

struct Inner {
    feeds: BTreeMap<String, FeedStatus>,
    effective: BTreeMap<String, MtaState>,
    source: HealthSource,
    /// When the state in service was last confirmed by a fresh feed.
    confirmed_at: Option<SystemTime>,
}

/// The merged state, cheap to query while building answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthView {
    pub mtas: BTreeMap<String, MtaState>,
}

impl HealthView {
    pub fn state(&self, mta: &str) -> MtaState {
        self.mtas.get(mta).copied().unwrap_or(MtaState::Unknown)
    }
}

/// One feed, for `/status` and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct FeedReport {
    pub url: String,
    pub fresh: bool,
    /// Seconds since the feed last answered.
    pub last_ok_secs_ago: Option<f64>,
    pub last_error: Option<String>,
    pub instance: Option<String>,
    pub generation: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub source: HealthSource,
    /// No feed is fresh: answers come from the last known state.
    pub stale: bool,
    /// Seconds since the state in service was confirmed by a fresh feed
    /// (0 while one is fresh; absent when there never was a state).
    pub state_age_secs: Option<f64>,
    pub feeds: Vec<FeedReport>,
    /// The situation in words.
    pub reason: String,
}

pub struct Health {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

fn rank(state: MtaState) -> u8 {
    match state {
        MtaState::Unknown => 0,
        MtaState::Down => 1,
        MtaState::Up => 2,
        MtaState::Drain => 3,
    }
}

fn secs_since(time: SystemTime) -> f64 {
    SystemTime::now()
        .duration_since(time)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

impl Health {
    /// Starts from the state file's content, if any, following `feeds`.
    pub fn new(initial: Option<SavedHealth>, feeds: &[String]) -> Arc<Health> {
        let (effective, source, confirmed_at) = match initial {
            Some(state) => (
                state.mtas,
                HealthSource::StateFile,
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(state.confirmed_at)),
            ),
            None => (BTreeMap::new(), HealthSource::Nothing, None),
        };
        let health = Arc::new(Health {
            inner: Mutex::new(Inner {
                feeds: BTreeMap::new(),
                effective,
                source,
                confirmed_at,
            }),
            changed: watch::channel(0).0,
        });
        health.set_feeds(feeds);
        health
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Changes whenever the merged state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Follows exactly these feeds from now on (after a reload).
    pub fn set_feeds(&self, urls: &[String]) {
        let mut inner = self.lock();
        inner.feeds.retain(|url, _| urls.contains(url));
        for url in urls {
            inner.feeds.entry(url.clone()).or_default();
        }
        self.recompute(&mut inner);
    }

    /// The feed answered: with a new snapshot, or `None` when nothing
    /// changed since the last one.
    pub fn feed_ok(&self, url: &str, snapshot: Option<FleetHealth>) {
        let mut inner = self.lock();
        let Some(feed) = inner.feeds.get_mut(url) else {
            return;
        };
        feed.fresh = true;
        feed.last_ok = Some(SystemTime::now());
        feed.last_error = None;
        if let Some(snapshot) = snapshot {
            feed.snapshot = Some(snapshot);
        }
        self.recompute(&mut inner);
    }

    /// The feed failed: it no longer counts until it answers again.
    pub fn feed_failed(&self, url: &str, error: String) {
        let mut inner = self.lock();
        let Some(feed) = inner.feeds.get_mut(url) else {
            return;
        };
        let was_fresh = feed.fresh;
        feed.fresh = false;
        feed.last_error = Some(error);
        if was_fresh {
            self.recompute(&mut inner);
        }
    }

    /// Merges the fresh feeds; with none, keeps the state in service.
    fn recompute(&self, inner: &mut Inner) {
        let fresh: Vec<&FleetHealth> = inner
            .feeds
            .values()
            .filter(|f| f.fresh)
            .filter_map(|f| f.snapshot.as_ref())
            .collect();
        if fresh.is_empty() {
            return;
        }
        let mut merged: BTreeMap<String, MtaState> = BTreeMap::new();
        for snapshot in fresh {
            for mta in snapshot.clusters.iter().flat_map(|c| &c.mtas) {
                let entry = merged.entry(mta.name.clone()).or_insert(mta.state);
                if rank(mta.state) > rank(*entry) {
                    *entry = mta.state;
                }
            }
        }
        inner.source = HealthSource::Feeds;
        inner.confirmed_at = Some(SystemTime::now());
        if merged != inner.effective {
            inner.effective = merged;
            self.changed.send_modify(|v| *v += 1);
        }
    }

    pub fn view(&self) -> HealthView {
        HealthView {
            mtas: self.lock().effective.clone(),
        }
    }

    /// What to write to the state file; `None` until there is a state.
    pub fn persisted(&self) -> Option<SavedHealth> {
        let inner = self.lock();
        let confirmed_at = inner.confirmed_at?;
        Some(SavedHealth::new(confirmed_at, inner.effective.clone()))
    }

    pub fn source(&self) -> HealthSource {
        self.lock().source
    }

    pub fn report(&self) -> HealthReport {
        let inner = self.lock();
        let feeds: Vec<FeedReport> = inner
            .feeds
            .iter()
            .map(|(url, f)| FeedReport {
                url: url.clone(),
                fresh: f.fresh,
                last_ok_secs_ago: f.last_ok.map(secs_since),
                last_error: f.last_error.clone(),
                instance: f.snapshot.as_ref().map(|s| s.instance.clone()),
                generation: f.snapshot.as_ref().map(|s| s.generation),
            })
            .collect();
        let fresh: Vec<&str> = feeds
            .iter()
            .filter(|f| f.fresh)
            .map(|f| f.url.as_str())
            .collect();
        let stale = fresh.is_empty();
        let state_age_secs = if !stale {
            Some(0.0)
        } else {
            inner.confirmed_at.map(secs_since)
        };
        let reason = reason(&feeds, &fresh, inner.source, state_age_secs);
        HealthReport {
            source: inner.source,
            stale,
            state_age_secs,
            feeds,
            reason,
        }
    }
}

/// `/ready`'s and `/status`'s sentence on where the answers come from.
fn reason(
    feeds: &[FeedReport],
    fresh: &[&str],
    source: HealthSource,
    state_age_secs: Option<f64>,
) -> String {
    if !fresh.is_empty() {
        let lagging: Vec<String> = feeds.iter().filter(|f| !f.fresh).map(trouble).collect();
        return if lagging.is_empty() {
            format!("fresh: following {}", fresh.join(", "))
        } else {
            format!(
                "fresh: following {}; unreachable: {}",
                fresh.join(", "),
                lagging.join("; ")
            )
        };
    }
    let why = if feeds.is_empty() {
        "no healthd feed configured".to_string()
    } else {
        feeds.iter().map(trouble).collect::<Vec<_>>().join("; ")
    };
    match (source, state_age_secs) {
        (HealthSource::Nothing, _) | (_, None) => {
            format!("stale: no health state at all ({why}); every cluster answers when_all_down")
        }
        (source, Some(age)) => format!(
            "stale: every healthd feed is unreachable ({why}); answering from the last \
             known state ({}, {} old)",
            match source {
                HealthSource::StateFile => "from the state file",
                _ => "from the feeds",
            },
            fleet::clock::words(Duration::try_from_secs_f64(age.round()).unwrap_or_default())
        ),
    }
}

/// What is wrong with a feed that is not fresh.
fn trouble(feed: &FeedReport) -> String {
    match &feed.last_error {
        Some(e) => format!("{}: {e}", feed.url),
        None => format!("{}: no answer yet", feed.url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet::feed::{ClusterHealth, MtaHealth};

    fn snapshot(generation: u64, states: &[(&str, MtaState)]) -> FleetHealth {
        FleetHealth {
            instance: "i".into(),
            generation,
            clusters: vec![ClusterHealth {
                id: "c".into(),
                hostname: "c-c.example".into(),
                mtas: states
                    .iter()
                    .map(|(name, state)| MtaHealth {
                        name: name.to_string(),
                        ipv4: "127.4.0.1".parse().unwrap(),
                        ipv6: None,
                        weight: 1,
                        state: *state,
                        since: String::new(),
                        latency_ms: None,
                        reason: None,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn any_fresh_feed_saying_up_wins_and_drain_wins_over_up() {
        let feeds = vec!["a".to_string(), "b".to_string()];
        let health = Health::new(None, &feeds);
        health.feed_ok(
            "a",
            Some(snapshot(1, &[("m1", MtaState::Up), ("m2", MtaState::Up)])),
        );
        health.feed_ok(
            "b",
            Some(snapshot(
                1,
                &[("m1", MtaState::Down), ("m2", MtaState::Drain)],
            )),
        );
        let view = health.view();
        assert_eq!(view.state("m1"), MtaState::Up);
        assert_eq!(view.state("m2"), MtaState::Drain);
        assert_eq!(view.state("m3"), MtaState::Unknown);
        // a goes away: b alone decides.
        health.feed_failed("a", "refused".into());
        assert_eq!(health.view().state("m1"), MtaState::Down);
        // b goes away too: the last state stays.
        health.feed_failed("b", "refused".into());
        assert_eq!(health.view().state("m1"), MtaState::Down);
        let report = health.report();
        assert!(report.stale);
        assert!(report.reason.starts_with("stale:"), "{}", report.reason);
    }

    #[test]
    fn starts_from_the_state_file_until_a_feed_answers() {
        let mut mtas = BTreeMap::new();
        mtas.insert("m1".to_string(), MtaState::Up);
        let state = SavedHealth::new(SystemTime::now() - Duration::from_secs(60), mtas);
        let health = Health::new(Some(state), &["a".to_string()]);
        assert_eq!(health.view().state("m1"), MtaState::Up);
        let report = health.report();
        assert_eq!(report.source, HealthSource::StateFile);
        assert!(report.state_age_secs.unwrap() >= 59.0);
        health.feed_ok("a", Some(snapshot(1, &[("m1", MtaState::Down)])));
        assert_eq!(health.view().state("m1"), MtaState::Down);
        assert!(!health.report().stale);
    }
}
