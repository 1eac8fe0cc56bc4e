//! Egress metrics: the scheduled queue, deliveries in flight, outcomes, the
//! rate limit's hold, delivery latency.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct EgressMetrics {
    pub scheduled: Gauge,
    pub in_flight: Gauge,
    pub delivered: Counter,
    pub transient: Counter,
    pub permanent: Counter,
    pub expired: Counter,
    /// Recipients due now but waiting for the rate limit.
    pub rate_limited: Gauge,
    /// Delayed events (a recipient held by the rate limit).
    pub delayed: Counter,
    /// One SMTP attempt, connection included.
    pub attempt_seconds: Histogram,
    /// Reception to delivery.
    pub delivery_seconds: Histogram,
    /// Per egress source.
    pub sources: crate::delivery::egress::metrics::SourceMetrics,
    /// Plaintext fallbacks after a failed outbound STARTTLS.
    pub starttls_fallbacks: Counter,
}

impl Default for EgressMetrics {
    fn default() -> Self {
        EgressMetrics {
            scheduled: Gauge::default(),
            in_flight: Gauge::default(),
            delivered: Counter::default(),
            transient: Counter::default(),
            permanent: Counter::default(),
            expired: Counter::default(),
            rate_limited: Gauge::default(),
            delayed: Counter::default(),
            attempt_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            delivery_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 14)),
            sources: Default::default(),
            starttls_fallbacks: Counter::default(),
        }
    }
}

impl EgressMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "delivery_starttls_fallbacks",
            "Outbound STARTTLS failures after which a destination is sent plaintext for starttls_fallback",
            self.starttls_fallbacks.clone(),
        );
        registry.register(
            "queue_scheduled",
            "Recipients in the scheduled queue (due or not), in flight excluded",
            self.scheduled.clone(),
        );
        registry.register(
            "delivery_in_flight",
            "Delivery attempts under way",
            self.in_flight.clone(),
        );
        registry.register(
            "delivery_delivered",
            "Recipients delivered (2xx)",
            self.delivered.clone(),
        );
        registry.register(
            "delivery_transient_failures",
            "Attempts that failed transiently (4xx, timeout, connection) and will be retried",
            self.transient.clone(),
        );
        registry.register(
            "delivery_permanent_failures",
            "Recipients bounced (5xx, null MX, no such domain)",
            self.permanent.clone(),
        );
        registry.register(
            "delivery_expired",
            "Recipients expired after the maximum age",
            self.expired.clone(),
        );
        registry.register(
            "queue_rate_limited",
            "Recipients due now but held by the node's rate limit",
            self.rate_limited.clone(),
        );
        registry.register(
            "queue_delayed_by_rate_limit",
            "Recipients that had to wait for the rate limit (Delayed events)",
            self.delayed.clone(),
        );
        registry.register(
            "delivery_attempt_seconds",
            "Duration of one SMTP delivery attempt",
            self.attempt_seconds.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from reception to delivery",
            self.delivery_seconds.clone(),
        );
        self.sources.register(registry);
    }
}
