//! What the egress and events benchmarks share: a delivery engine started
//! in the bench's process that sends every `sink.test` recipient to one
//! address on loopback, at a rate limit that never changes.
#![allow(dead_code)] // each bench uses its own part

use std::net::Ipv4Addr;
use std::sync::Arc;

use mta::delivery::{DeliveryConfig, Engine, EngineHandle};
use mta::events::{Events, EventsConfig};
use mta::queue::{EgressMetrics, LimitSource};
use mta::spool::Spool;

pub use fleet::testkit::example_configs::EXAMPLE_HOSTNAME as HOSTNAME;

/// Delivery settings that route `sink.test` to `sink` (`host:port` on
/// loopback, which delivery refuses unless allowed) and ask `nameserver`
/// for anything else.
pub fn to_sink(nameserver: Ipv4Addr, sink: String) -> DeliveryConfig {
    let mut config = DeliveryConfig {
        nameservers: vec![format!("{nameserver}:53")],
        allow_networks: vec!["127.0.0.0/8".into()],
        ..DeliveryConfig::default()
    };
    config.routes.insert("sink.test".into(), sink);
    config
}

/// The event log beside the spool's directory (`<spool>.events`).
pub fn events_beside(spool: &Spool) -> Arc<Events> {
    let config = EventsConfig {
        dir: spool.dir().with_extension("events"),
        ..Default::default()
    };
    Events::open(&config, "bench").unwrap()
}

/// Starts delivery from `spool` with `config` at `limit`, for good.
pub fn start_engine(
    spool: Arc<Spool>,
    config: DeliveryConfig,
    events: Arc<Events>,
    metrics: EgressMetrics,
    limit: fleet::RateLimit,
) -> EngineHandle {
    let engine = Engine::new(spool, config, HOSTNAME.into(), events, metrics).unwrap();
    let (tx, changed) = tokio::sync::watch::channel(0);
    // The limit never changes: the sender lives as long as the process.
    std::mem::forget(tx);
    engine.start(
        limit,
        LimitSource {
            changed,
            current: Box::new(move || (limit, false)),
        },
    )
}
