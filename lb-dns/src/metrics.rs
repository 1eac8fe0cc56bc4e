//! lb-dns's metrics, all under the `lb_dns_` prefix. The per-query counters
//! are resolved once at start-up, so a query costs one atomic increment.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::wire;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub qtype: String,
    pub rcode: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AllDownLabels {
    pub cluster: String,
    /// `serve_all` (fail-open) or `empty`.
    pub action: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedLabel {
    pub feed: String,
}

const QTYPES: [&str; 9] = [
    "A", "AAAA", "SOA", "NS", "MX", "TXT", "ANY", "other", "none",
];
const RCODES: [&str; 9] = [
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "BADVERS",
    "BADCOOKIE",
    "other",
];

fn qtype_index(qtype: Option<u16>) -> usize {
    match qtype {
        Some(wire::TYPE_A) => 0,
        Some(wire::TYPE_AAAA) => 1,
        Some(wire::TYPE_SOA) => 2,
        Some(wire::TYPE_NS) => 3,
        Some(wire::TYPE_MX) => 4,
        Some(wire::TYPE_TXT) => 5,
        Some(wire::TYPE_ANY) => 6,
        Some(_) => 7,
        None => 8,
    }
}

fn rcode_index(rcode: u16) -> usize {
    match rcode {
        wire::RCODE_NOERROR => 0,
        wire::RCODE_FORMERR => 1,
        wire::RCODE_SERVFAIL => 2,
        wire::RCODE_NXDOMAIN => 3,
        wire::RCODE_NOTIMP => 4,
        wire::RCODE_REFUSED => 5,
        wire::RCODE_BADVERS => 6,
        wire::RCODE_BADCOOKIE => 7,
        _ => 8,
    }
}

/// Query counts kept by one thread and added to the shared counters now and
/// then, so the hot path touches no shared cache line for them.
pub struct Tally {
    counts: [[u32; RCODES.len()]; QTYPES.len()],
    pending: u32,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            counts: [[0; RCODES.len()]; QTYPES.len()],
            pending: 0,
        }
    }
}

impl Tally {
    /// Counts one reply; flushes to `metrics` every 256.
    pub fn add(&mut self, qtype: Option<u16>, rcode: u16, metrics: &Metrics) {
        self.counts[qtype_index(qtype)][rcode_index(rcode)] += 1;
        self.pending += 1;
        if self.pending >= 256 {
            self.flush(metrics);
        }
    }

    pub fn flush(&mut self, metrics: &Metrics) {
        if self.pending == 0 {
            return;
        }
        for (row, counters) in self.counts.iter_mut().zip(&metrics.queries) {
            for (n, counter) in row.iter_mut().zip(counters) {
                if *n > 0 {
                    counter.inc_by(u64::from(*n));
                    *n = 0;
                }
            }
        }
        self.pending = 0;
    }
}

pub struct Metrics {
    queries: Vec<Vec<Counter>>,
    pub answers: Family<ClusterLabel, Counter>,
    pub all_down: Family<AllDownLabels, Counter>,
    pub cluster_up: Family<ClusterLabel, Gauge>,
    pub cluster_all_down: Family<ClusterLabel, Gauge>,
    pub feed_fresh: Family<FeedLabel, Gauge>,
    pub feed_last_ok_age: Family<FeedLabel, Gauge<f64, AtomicU64>>,
    pub state_age: Gauge<f64, AtomicU64>,
    pub stale: Gauge,
    pub serial: Gauge,
    pub rebuilds: Counter,
    pub state_file_errors: Counter,
    pub tcp_connections: Gauge,
    pub tcp_evicted: Counter,
    pub tcp_accept_errors: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (lb-dns's
    /// registry, prefix `lb_dns`).
    pub fn register(registry: &mut Registry) -> Metrics {
        let query_family = Family::<QueryLabels, Counter>::default();
        let queries = QTYPES
            .iter()
            .map(|qtype| {
                RCODES
                    .iter()
                    .map(|rcode| {
                        query_family
                            .get_or_create(&QueryLabels {
                                qtype: qtype.to_string(),
                                rcode: rcode.to_string(),
                            })
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let metrics = Metrics {
            queries,
            answers: Family::default(),
            all_down: Family::default(),
            cluster_up: Family::default(),
            cluster_all_down: Family::default(),
            feed_fresh: Family::default(),
            feed_last_ok_age: Family::default(),
            state_age: Gauge::default(),
            stale: Gauge::default(),
            serial: Gauge::default(),
            rebuilds: Counter::default(),
            state_file_errors: Counter::default(),
            tcp_connections: Gauge::default(),
            tcp_evicted: Counter::default(),
            tcp_accept_errors: Counter::default(),
        };
        registry.register(
            "queries",
            "DNS queries answered, by question type and response code",
            query_family,
        );
        registry.register(
            "answers",
            "Address answers served per cluster",
            metrics.answers.clone(),
        );
        registry.register(
            "all_down_events",
            "Transitions of a cluster to no MTA up; action serve_all is a fail-open",
            metrics.all_down.clone(),
        );
        registry.register(
            "cluster_up_mtas",
            "MTAs up and not drained, per cluster",
            metrics.cluster_up.clone(),
        );
        registry.register(
            "cluster_all_down",
            "1 while a cluster has no MTA up and when_all_down decides its answer",
            metrics.cluster_all_down.clone(),
        );
        registry.register(
            "feed_fresh",
            "1 while a healthd feed answers",
            metrics.feed_fresh.clone(),
        );
        registry.register(
            "feed_last_ok_age_seconds",
            "Seconds since a healthd feed last answered (-1: never)",
            metrics.feed_last_ok_age.clone(),
        );
        registry.register(
            "health_state_age_seconds",
            "Seconds since the health in service was confirmed by a fresh feed (0: fresh now; -1: no state)",
            metrics.state_age.clone(),
        );
        registry.register(
            "health_stale",
            "1 while no healthd feed is fresh and answers come from the last known state",
            metrics.stale.clone(),
        );
        registry.register(
            "zone_serial",
            "The zone's SOA serial",
            metrics.serial.clone(),
        );
        registry.register(
            "answer_rebuilds",
            "Times the precomputed answers were rebuilt",
            metrics.rebuilds.clone(),
        );
        registry.register(
            "state_file_errors",
            "Failed reads or writes of the state file",
            metrics.state_file_errors.clone(),
        );
        registry.register(
            "tcp_connections",
            "DNS-over-TCP connections open",
            metrics.tcp_connections.clone(),
        );
        registry.register(
            "tcp_evicted",
            "DNS-over-TCP connections closed to make room (tcp_max_connections reached), the idlest first",
            metrics.tcp_evicted.clone(),
        );
        registry.register(
            "tcp_accept_errors",
            "Failed accepts of DNS-over-TCP connections (out of file descriptors: the accept loop backs off)",
            metrics.tcp_accept_errors.clone(),
        );
        metrics
    }

    /// Counts one answered query.
    pub fn query(&self, qtype: Option<u16>, rcode: u16) {
        self.queries[qtype_index(qtype)][rcode_index(rcode)].inc();
    }

    pub fn served_counter(&self, cluster: &str) -> Counter {
        self.answers
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .clone()
    }
}
