//! Per-source metrics: attempts started over each source, its failures,
//! whether it is in service, and whether rate limits are held fleet-wide.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub pool: String,
    pub source: String,
}

#[derive(Clone, Default)]
pub struct SourceMetrics {
    pub attempts: Family<SourceLabels, Counter>,
    pub failures: Family<SourceLabels, Counter>,
    pub up: Family<SourceLabels, Gauge>,
    /// 1 while some source's limit is held to this node's share.
    pub throttle_degraded: Gauge,
}

impl SourceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "delivery_egress_attempts",
            "Delivery attempts started over each egress source",
            self.attempts.clone(),
        );
        registry.register(
            "delivery_egress_source_failures",
            "Times an egress source failed (proxy down or refusing) and was taken out",
            self.failures.clone(),
        );
        registry.register(
            "delivery_egress_source_up",
            "1 while an egress source is in service, 0 during its back-off",
            self.up.clone(),
        );
        registry.register(
            "delivery_egress_throttle_degraded",
            "1 while an egress rate limit is held to this node's share (no Redis, or Redis unreachable)",
            self.throttle_degraded.clone(),
        );
    }
}
