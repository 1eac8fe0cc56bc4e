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
    counts: [u32; QTYPES.len() * RCODES.len()],
    /// Bit i set: `counts[i]` is not zero.
    touched: u128,
    pending: u32,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            counts: [0; QTYPES.len() * RCODES.len()],
            touched: 0,
            pending: 0,
        }
    }
}

impl Tally {
    /// Counts one reply; flushes to `metrics` every 256.
    pub fn add(&mut self, qtype: Option<u16>, rcode: u16, metrics: &Metrics) {
        let i = qtype_index(qtype) * RCODES.len() + rcode_index(rcode);
        self.counts[i] += 1;
        self.touched |= 1 << i;
        self.pending += 1;
        if self.pending >= 256 {
            self.flush(metrics);
        }
    }

    /// Adds the counts to `metrics`' shared counters (only those counted
    /// since the last flush are touched).
    pub fn flush(&mut self, metrics: &Metrics) {
        while self.touched != 0 {
            let i = self.touched.trailing_zeros() as usize;
            self.touched &= self.touched - 1;
            metrics.queries[i].inc_by(u64::from(self.counts[i]));
            self.counts[i] = 0;
        }
        self.pending = 0;
    }
}

pub struct Metrics {
    /// `queries_total` by `qtype_index * RCODES.len() + rcode_index`.
    queries: Vec<Counter>,
    query_family: Family<QueryLabels, Counter>,
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
    pub udp_steered_by_cpu: Gauge,
    pub udp_steering_changes: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (lb-dns's
    /// registry, prefix `lb_dns`).
    pub fn register(registry: &mut Registry) -> Metrics {
        let query_family = Family::<QueryLabels, Counter>::default();
        let queries = QTYPES
            .iter()
            .flat_map(|qtype| RCODES.iter().map(move |rcode| (qtype, rcode)))
            .map(|(qtype, rcode)| {
                query_family
                    .get_or_create(&QueryLabels {
                        qtype: qtype.to_string(),
                        rcode: rcode.to_string(),
                    })
                    .clone()
            })
            .collect();
        let metrics = Metrics {
            queries,
            query_family,
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
            udp_steered_by_cpu: Gauge::default(),
            udp_steering_changes: Counter::default(),
        };
        metrics.register_queries_and_clusters(registry);
        metrics.register_feeds_and_tcp(registry);
        metrics
    }

    fn register_queries_and_clusters(&self, registry: &mut Registry) {
        registry.register(
            "queries",
            "DNS queries answered, by question type and response code",
            self.query_family.clone(),
        );
        registry.register(
            "answers",
            "Address answers served per cluster",
            self.answers.clone(),
        );
        registry.register(
            "all_down_events",
            "Transitions of a cluster to no MTA up; action serve_all is a fail-open",
            self.all_down.clone(),
        );
        registry.register(
            "cluster_up_mtas",
            "MTAs up and not drained, per cluster",
            self.cluster_up.clone(),
        );
        registry.register(
            "cluster_all_down",
            "1 while a cluster has no MTA up and when_all_down decides its answer",
            self.cluster_all_down.clone(),
        );
    }

    fn register_feeds_and_tcp(&self, registry: &mut Registry) {
        registry.register(
            "feed_fresh",
            "1 while a healthd feed answers",
            self.feed_fresh.clone(),
        );
        registry.register(
            "feed_last_ok_age_seconds",
            "Seconds since a healthd feed last answered (-1: never)",
            self.feed_last_ok_age.clone(),
        );
        registry.register(
            "health_state_age_seconds",
            "Seconds since the health in service was confirmed by a fresh feed (0: fresh now; -1: no state)",
            self.state_age.clone(),
        );
        registry.register(
            "health_stale",
            "1 while no healthd feed is fresh and answers come from the last known state",
            self.stale.clone(),
        );
        registry.register("zone_serial", "The zone's SOA serial", self.serial.clone());
        registry.register(
            "answer_rebuilds",
            "Times the precomputed answers were rebuilt",
            self.rebuilds.clone(),
        );
        registry.register(
            "state_file_errors",
            "Failed reads or writes of the state file",
            self.state_file_errors.clone(),
        );
        registry.register(
            "tcp_connections",
            "DNS-over-TCP connections open",
            self.tcp_connections.clone(),
        );
        registry.register(
            "tcp_evicted",
            "DNS-over-TCP connections closed to make room (max_connections reached), the idlest first",
            self.tcp_evicted.clone(),
        );
        registry.register(
            "tcp_accept_errors",
            "Failed accepts of DNS-over-TCP connections (out of file descriptors: the accept loop backs off)",
            self.tcp_accept_errors.clone(),
        );
        registry.register(
            "udp_steered_by_cpu",
            "Listen addresses whose UDP datagrams go to the socket of the CPU they arrive on (udp_steering = \"cpu\" and not overloaded)",
            self.udp_steered_by_cpu.clone(),
        );
        registry.register(
            "udp_steering_changes",
            "Times an address's UDP steering changed between by CPU and spread by flow hash (overload and back)",
            self.udp_steering_changes.clone(),
        );
    }

    pub fn served_counter(&self, cluster: &str) -> Counter {
        self.answers
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .clone()
    }
}
