//! lb-dns's metrics, all under the `lb_dns_` prefix. The per-query counters
//! are resolved once at start-up, so a query costs one atomic increment.

use std::sync::atomic::AtomicU64;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

const QTYPES: [&str; 7] = ["A", "AAAA", "SOA", "NS", "ANY", "other", "none"];
const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];

fn qtype_index(qtype: Option<RecordType>) -> usize {
    match qtype {
        Some(RecordType::A) => 0,
        Some(RecordType::AAAA) => 1,
        Some(RecordType::SOA) => 2,
        Some(RecordType::NS) => 3,
        Some(RecordType::ANY) => 4,
        Some(_) => 5,
        None => 6,
    }
}

fn rcode_index(rcode: ResponseCode) -> usize {
    match rcode {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        ResponseCode::BADVERS => 6,
        _ => 7,
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
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (give it the
    /// `lb_dns` sub-registry).
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
        metrics
    }

    /// Counts one answered query.
    pub fn query(&self, qtype: Option<RecordType>, rcode: ResponseCode) {
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
