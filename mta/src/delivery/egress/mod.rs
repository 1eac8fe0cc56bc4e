//! Egress sources and pools (`egress_sources`, `egress_pool` of the
//! node's cluster in the fleet file): which address each delivery
//! connection leaves from, as KumoMTA's egress sources do.
//!
//! The queue asks [`Egress::choose`] for a source before it hands out a
//! recipient: weighted round robin over the pool's sources that are in
//! service and have a permit of their `rate_limit` (fleet-wide in Redis,
//! see [`shared`], else this node's share). With none, the recipient waits
//! in the scheduled queue. A source whose proxy fails is taken out for a
//! back-off (doubling while it keeps failing) and the recipient goes back
//! to the queue at once, for another source: no attempt is counted, no
//! mail bounces because a proxy died. Without sources, connections are
//! direct, as before.

pub mod connect;
pub mod limit;
pub mod metrics;
pub mod proxy_v2;
pub mod shared;
pub mod socks5;
pub mod wrr;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fleet::admin::Readiness;
use fleet::egress::{parse_proxy_address, Secret};
use fleet::{Cluster, EgressRoute, EgressSource};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use limit::{Mode, SourceLimit};
use metrics::{SourceLabels, SourceMetrics};
use shared::SharedThrottles;
use wrr::Wrr;

/// `[delivery.egress]` in the node config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// `redis://host:port[/db]` where every MTA of the cluster keeps the
    /// sources' rate limits; without it each node holds to its share.
    pub redis: Option<String>,
    /// Longest wait for Redis; then this node's share applies.
    #[serde(with = "fleet::config::duration")]
    pub redis_timeout: Duration,
    /// How long a failed source is out; doubles while it keeps failing
    /// (at most 8 times as long).
    #[serde(with = "fleet::config::duration")]
    pub source_backoff: Duration,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            redis: None,
            redis_timeout: Duration::from_millis(500),
            source_backoff: Duration::from_secs(30),
        }
    }
}

/// How a source's connections are made (the fleet file's, owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct {
        bind: IpAddr,
    },
    Socks5 {
        proxy: (String, u16),
        auth: Option<(String, Secret)>,
    },
    HaProxy {
        proxy: (String, u16),
        source: IpAddr,
    },
}

impl Route {
    fn of(source: &EgressSource) -> Result<Route, String> {
        let proxy = |text: &str| parse_proxy_address(text);
        Ok(match source.route() {
            EgressRoute::Direct { bind } => Route::Direct { bind },
            EgressRoute::Socks5 { proxy: p, auth } => Route::Socks5 {
                proxy: proxy(p)?,
                auth: auth.map(|(u, p)| (u.to_string(), Secret::new(p))),
            },
            EgressRoute::HaProxy { proxy: p, source } => Route::HaProxy {
                proxy: proxy(p)?,
                source,
            },
        })
    }
}

/// A source in service on this node.
pub struct Source {
    pub name: Arc<str>,
    pub route: Route,
    /// What receivers see.
    pub address: IpAddr,
    /// EHLO name over this source; `None`: the node's.
    pub hello: Option<String>,
    limit: SourceLimit,
    health: Mutex<SourceHealth>,
}

#[derive(Debug, Default, Clone)]
struct SourceHealth {
    down_until: Option<Instant>,
    failures: u32,
}

impl Source {
    fn up(&self, now: Instant) -> bool {
        self.health
            .lock()
            .down_until
            .is_none_or(|until| now >= until)
    }

    fn same_as(&self, other: &Source) -> bool {
        self.name == other.name
            && self.route == other.route
            && self.address == other.address
            && self.hello == other.hello
    }
}

/// The source an attempt goes through, and its pool.
#[derive(Clone)]
pub struct Via {
    pub source: Arc<Source>,
    pub pool: Arc<str>,
}

impl std::fmt::Debug for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Via({}/{})", self.pool, self.source.name)
    }
}

/// Why the queue waits for a source, and how long.
#[derive(Debug, Clone)]
pub struct Hold {
    pub wait: Duration,
    pub why: String,
}

#[derive(Default)]
struct Pool {
    name: Arc<str>,
    cluster: String,
    sources: Vec<Arc<Source>>,
    weights: Vec<u32>,
}

pub struct Egress {
    pool: RwLock<Arc<Pool>>,
    wrr: Mutex<Wrr>,
    shared: Option<SharedThrottles>,
    backoff: Duration,
    readiness: OnceLock<Arc<Readiness>>,
    /// Sources held to this node's share, with why.
    degraded: Mutex<BTreeMap<String, String>>,
    metrics: SourceMetrics,
}

/// The readiness concern egress reports under.
const CONCERN: &str = "egress";

impl Egress {
    pub fn new(config: &EgressConfig, metrics: SourceMetrics) -> Result<Egress, String> {
        let shared = match &config.redis {
            Some(url) => Some(SharedThrottles::new(url, config.redis_timeout)?),
            None => None,
        };
        Ok(Egress {
            pool: RwLock::new(Arc::default()),
            wrr: Mutex::new(Wrr::default()),
            shared,
            backoff: config.source_backoff,
            readiness: OnceLock::new(),
            degraded: Mutex::new(BTreeMap::new()),
            metrics,
        })
    }

    /// `/ready` says "degraded" while a limit is held to this node's share.
    pub fn attach_readiness(&self, readiness: Arc<Readiness>) {
        let _ = self.readiness.set(readiness);
        self.publish_degradation();
    }

    /// Takes the cluster's sources and pool as they are now (at start and
    /// on every reload). A source whose definition did not change keeps
    /// its back-off state; its rate limit takes the new value.
    pub fn update(&self, cluster: Option<&Cluster>) -> Result<(), String> {
        let next = match cluster.and_then(|c| c.effective_egress_pool().map(|p| (c, p))) {
            None => Pool::default(),
            Some((cluster, pool)) => {
                let old = self.pool.read().clone();
                let mut sources = Vec::new();
                let mut weights = Vec::new();
                for entry in &pool.entries {
                    let Some(def) = cluster.egress_sources.iter().find(|s| s.name == entry.name)
                    else {
                        return Err(format!("the pool names an unknown source `{}`", entry.name));
                    };
                    let source = Source {
                        name: Arc::from(def.name.as_str()),
                        route: Route::of(def)?,
                        address: def.source_address,
                        hello: def.ehlo_name.clone(),
                        limit: SourceLimit::new(def.rate_limit, cluster.mtas.len()),
                        health: Mutex::default(),
                    };
                    if let Some(kept) = old.sources.iter().find(|s| s.same_as(&source)) {
                        *source.health.lock() = kept.health.lock().clone();
                    }
                    sources.push(Arc::new(source));
                    weights.push(entry.weight);
                }
                Pool {
                    name: Arc::from(pool.name.as_str()),
                    cluster: cluster.id.clone(),
                    sources,
                    weights,
                }
            }
        };
        let now = Instant::now();
        for source in &next.sources {
            self.up_gauge(&next.name, source)
                .set(i64::from(source.up(now)));
            // Its counters are there at 0 from the start.
            let labels = SourceLabels {
                pool: next.name.to_string(),
                source: source.name.to_string(),
            };
            let _ = self.metrics.attempts.get_or_create(&labels);
            let _ = self.metrics.failures.get_or_create(&labels);
        }
        *self.wrr.lock() = Wrr::new(next.sources.len());
        let mut degraded = self.degraded.lock();
        degraded.clear();
        if self.shared.is_none() {
            for source in &next.sources {
                if let Some(note) = share_note(source, "no Redis is configured") {
                    degraded.insert(source.name.to_string(), note);
                }
            }
        }
        drop(degraded);
        *self.pool.write() = Arc::new(next);
        self.publish_degradation();
        Ok(())
    }

    fn up_gauge(&self, pool: &str, source: &Source) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .up
            .get_or_create(&SourceLabels {
                pool: pool.to_string(),
                source: source.name.to_string(),
            })
            .clone()
    }

    /// [`Egress::update`] after a reload: a pool that cannot be applied
    /// is logged and the previous one stays.
    pub fn apply_reload(&self, cluster: Option<&Cluster>) {
        if let Err(error) = self.update(cluster) {
            tracing::error!(
                "the reloaded egress sources cannot be applied, the previous ones stay: {error}"
            );
        }
    }

    /// Whether this node has sources at all.
    pub fn has_sources(&self) -> bool {
        !self.pool.read().sources.is_empty()
    }

    /// A source for the next recipient: `Ok(None)` without sources (direct
    /// connections); `Err(hold)` when every source is out or over its limit.
    pub async fn choose(&self) -> Result<Option<Via>, Hold> {
        let pool = self.pool.read().clone();
        if pool.sources.is_empty() {
            return Ok(None);
        }
        let now = Instant::now();
        let mut tried = vec![false; pool.sources.len()];
        let mut hold: Option<Hold> = None;
        loop {
            let next = self
                .wrr
                .lock()
                .next(&pool.weights, |i| !tried[i] && pool.sources[i].up(now));
            let Some(i) = next else { break };
            tried[i] = true;
            let source = &pool.sources[i];
            let key = format!("unmta:egress:{}:{}", pool.cluster, source.name);
            let (mode, answer, failure) = source.limit.check(self.shared.as_ref(), &key).await;
            self.note_mode(source, mode, failure);
            match answer {
                Ok(()) => {
                    self.metrics
                        .attempts
                        .get_or_create(&SourceLabels {
                            pool: pool.name.to_string(),
                            source: source.name.to_string(),
                        })
                        .inc();
                    return Ok(Some(Via {
                        source: source.clone(),
                        pool: pool.name.clone(),
                    }));
                }
                Err(wait) if hold.as_ref().is_none_or(|h| wait < h.wait) => {
                    hold = Some(Hold {
                        wait,
                        why: format!(
                            "held by the rate limit {} of egress source {}",
                            source.limit.limit(),
                            source.name
                        ),
                    });
                }
                Err(_) => {}
            }
        }
        Err(self.all_out(&pool, now, hold))
    }

    /// The hold when no source gave a permit: the soonest of the rate
    /// limits' waits and the back-offs' ends.
    fn all_out(&self, pool: &Pool, now: Instant, limited: Option<Hold>) -> Hold {
        let back = pool
            .sources
            .iter()
            .zip(&pool.weights)
            .filter(|(_, w)| **w > 0)
            .filter_map(|(s, _)| s.health.lock().down_until)
            .map(|until| until.saturating_duration_since(now))
            .min();
        match (limited, back) {
            (Some(hold), Some(back)) if back < hold.wait => Hold {
                wait: back,
                why: hold.why,
            },
            (Some(hold), _) => hold,
            (None, back) => Hold {
                wait: back.unwrap_or(self.backoff),
                why: format!(
                    "every egress source of pool {} is out after failing; the first is back in {:?}",
                    pool.name,
                    back.unwrap_or(self.backoff)
                ),
            },
        }
    }

    /// The source failed: out for the back-off (unless already out).
    pub fn source_failed(&self, via: &Via, why: &str) {
        let now = Instant::now();
        let backoff = {
            let mut health = via.source.health.lock();
            if health.down_until.is_some_and(|until| now < until) {
                return;
            }
            health.failures = health.failures.saturating_add(1);
            let doublings = health.failures.saturating_sub(1).min(3);
            let backoff = self.backoff.saturating_mul(1 << doublings);
            health.down_until = Some(now + backoff);
            backoff
        };
        tracing::warn!(
            source = %via.source.name,
            pool = %via.pool,
            "egress source out for {backoff:?}, its mail goes over the others: {why}"
        );
        let labels = SourceLabels {
            pool: via.pool.to_string(),
            source: via.source.name.to_string(),
        };
        self.metrics.failures.get_or_create(&labels).inc();
        self.metrics.up.get_or_create(&labels).set(0);
    }

    /// The source reached a destination: in service again.
    pub fn source_worked(&self, via: &Via) {
        let mut health = via.source.health.lock();
        if health.failures == 0 {
            return;
        }
        *health = SourceHealth::default();
        drop(health);
        tracing::info!(source = %via.source.name, pool = %via.pool, "egress source works again");
        self.up_gauge(&via.pool, &via.source).set(1);
    }

    fn note_mode(&self, source: &Source, mode: Mode, failure: Option<String>) {
        let note = match (mode, failure) {
            (Mode::Share, Some(why)) => share_note(source, &why),
            (Mode::Share, None) => share_note(source, "no Redis is configured"),
            _ => None,
        };
        let mut degraded = self.degraded.lock();
        let changed = match note {
            Some(note) => degraded.insert(source.name.to_string(), note.clone()) != Some(note),
            None => degraded.remove(source.name.as_ref()).is_some(),
        };
        drop(degraded);
        if changed {
            self.publish_degradation();
        }
    }

    fn publish_degradation(&self) {
        let degraded = self.degraded.lock();
        self.metrics
            .throttle_degraded
            .set(i64::from(!degraded.is_empty()));
        let Some(readiness) = self.readiness.get() else {
            return;
        };
        if degraded.is_empty() {
            readiness.not_degraded(CONCERN);
        } else {
            let notes: Vec<&str> = degraded.values().map(String::as_str).collect();
            readiness.degraded(CONCERN, notes.join("; "));
        }
    }
}

/// What `/ready` says of a source held to this node's share.
fn share_note(source: &Source, why: &str) -> Option<String> {
    source.limit.cell()?;
    Some(format!(
        "egress source {} holds to this node's share (1/{} of {}): {why}",
        source.name,
        source.limit.nodes(),
        source.limit.limit(),
    ))
}

#[cfg(test)]
mod tests;
