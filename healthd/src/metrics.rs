//! healthd's metrics: per-MTA up gauge, probe latency per kind, state
//! transitions, probe failures by class, and how late probes start.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    /// 1 while the probes say `up`, else 0 (drained MTAs included).
    pub up: Family<Labels, Gauge>,
    pub latency: HistogramFamily,
    pub transitions: Family<Labels, Counter>,
    pub failures: Family<Labels, Counter>,
    pub rounds: Family<Labels, Counter>,
    /// Seconds between a probe's due time and its start.
    pub lag: Histogram,
    pub in_flight: Gauge,
    pub targets: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            up: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            transitions: Family::default(),
            failures: Family::default(),
            rounds: Family::default(),
            lag: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            in_flight: Gauge::default(),
            targets: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every family in healthd's registry (prefix `healthd`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "mta_up",
            "1 while the probes find the MTA up",
            self.up.clone(),
        );
        r.register(
            "probe_duration_seconds",
            "Duration of passing probes, by kind (smtp, https)",
            self.latency.clone(),
        );
        r.register(
            "transitions",
            "MTA state transitions found by the probes",
            self.transitions.clone(),
        );
        r.register(
            "probe_failures",
            "Failed probes by kind and reason class",
            self.failures.clone(),
        );
        r.register(
            "probe_rounds",
            "Probe rounds (SMTP and HTTPS together) by result",
            self.rounds.clone(),
        );
        r.register(
            "probe_lag_seconds",
            "How late probe rounds start after their due time",
            self.lag.clone(),
        );
        r.register(
            "probes_in_flight",
            "Probe rounds running now",
            self.in_flight.clone(),
        );
        r.register("targets", "MTAs being probed", self.targets.clone());
    }

    pub fn mta_labels(cluster: &str, mta: &str) -> Labels {
        vec![("cluster", cluster.to_string()), ("mta", mta.to_string())]
    }
}
