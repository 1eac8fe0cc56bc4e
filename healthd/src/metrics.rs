//! healthd's metrics: per-MTA up gauge, probe latency per kind, state
//! transitions, probe failures by class, and how late probes start. Label
//! sets are typed; every one known at start (each kind, class, result and
//! probe transition) is exported at zero from the start.

use fleet::feed::MtaState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::probe::{Class, Kind};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MtaLabels {
    pub cluster: String,
    pub mta: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: &'static str,
    pub class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundLabels {
    /// `pass` or `fail`.
    pub result: &'static str,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// The transitions the probes make (`drain` is not theirs, and nothing
/// goes back to `unknown`).
const PROBE_TRANSITIONS: [(MtaState, MtaState); 4] = [
    (MtaState::Unknown, MtaState::Up),
    (MtaState::Unknown, MtaState::Down),
    (MtaState::Up, MtaState::Down),
    (MtaState::Down, MtaState::Up),
];

#[derive(Clone)]
pub struct Metrics {
    /// 1 while the probes say `up`, else 0 (drained MTAs included).
    pub up: Family<MtaLabels, Gauge>,
    pub latency: HistogramFamily,
    pub transitions: Family<TransitionLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub rounds: Family<RoundLabels, Counter>,
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
        use fleet::metrics::at_zero;
        let kinds = Kind::ALL.map(|kind| KindLabels {
            kind: kind.as_str(),
        });
        let failures = Kind::ALL.iter().flat_map(|kind| {
            Class::ALL.map(|class| FailureLabels {
                kind: kind.as_str(),
                class: class.as_str(),
            })
        });
        let transitions = PROBE_TRANSITIONS.map(|(from, to)| TransitionLabels {
            from: from.as_str(),
            to: to.as_str(),
        });
        Metrics {
            up: Family::default(),
            latency: at_zero(Family::new_with_constructor(latency_histogram), kinds),
            transitions: at_zero(Family::default(), transitions),
            failures: at_zero(Family::default(), failures),
            rounds: at_zero(
                Family::default(),
                ["pass", "fail"].map(|result| RoundLabels { result }),
            ),
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

    pub fn mta_labels(cluster: &str, mta: &str) -> MtaLabels {
        MtaLabels {
            cluster: cluster.to_string(),
            mta: mta.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before any probe, every counter whose labels are known is there at 0.
    #[test]
    fn known_label_sets_start_at_zero() {
        let text = fleet::metrics::scrape("healthd", |r| Metrics::default().register(r)).unwrap();
        for line in [
            r#"healthd_transitions_total{from="up",to="down"} 0"#,
            r#"healthd_transitions_total{from="unknown",to="up"} 0"#,
            r#"healthd_probe_failures_total{kind="https",class="status"} 0"#,
            r#"healthd_probe_failures_total{kind="smtp",class="tls"} 0"#,
            r#"healthd_probe_rounds_total{result="fail"} 0"#,
            r#"healthd_probe_duration_seconds_count{kind="smtp"} 0"#,
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "no `{line}` in\n{text}"
            );
        }
        assert_eq!(text.matches("healthd_probe_failures_total{").count(), 10);
    }
}
