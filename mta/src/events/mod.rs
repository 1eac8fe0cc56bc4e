//! Every message's life as events ([`fleet::event::Event`], the hosted
//! service's documented shape), recorded in this node's durable event log
//! ([`log::EventLog`]) and from there sent to the cluster's webhooks.
//!
//! Who records what: the ingress a `Reception` once the spool's `accept`
//! returned (written before the client hears `250`, see [`Events::record`]), and a `Rejection` for a failed AUTH or a policy refusal; the
//! delivery engine `Delivery`, `Bounce`, `TransientFailure`, `Expiration`,
//! `Delayed` and `AdminBounce`; the bounce-domain receiver `OOB` and
//! `Feedback`. [`Events::emit`] stamps the node, the time and the bounce
//! classification and hands the event to the log; in-process subscribers
//! (tests) see each event once it is durable.

pub mod classify;
pub mod config;
pub mod log;
pub mod meta;

use std::sync::Arc;

pub use config::EventsConfig;
pub use fleet::event::{Event, EventType, PeerAddress, Response};
use tokio::sync::broadcast;

/// The name the delivery tests knew the event types by.
pub type EventKind = EventType;

pub struct Events {
    node: String,
    log: Arc<log::EventLog>,
    classifier: classify::Classifier,
}

impl Events {
    /// Opens (recovering) the event log in `config.dir` for node `node`.
    pub fn open(config: &EventsConfig, node: &str) -> Result<Arc<Events>, String> {
        let classifier = classify::Classifier::load(config.bounce_rules.as_deref())?;
        let log = log::EventLog::open(
            &config.dir,
            log::LogSettings {
                node: node.to_string(),
                retention: config.retention,
                segment_bytes: config.segment_bytes,
            },
        )?;
        Ok(Arc::new(Events {
            node: node.to_string(),
            log,
            classifier,
        }))
    }

    /// Records `event` (durable within one group commit); never waits.
    pub fn emit(&self, mut event: Event) {
        self.stamp(&mut event);
        self.log.append(event);
    }

    /// Records `events` at once: written to the log (in the kernel, safe
    /// from a `kill -9`) when this returns, durable at the log's next group
    /// commit. The ingress records Receptions this way before it answers.
    pub fn record(&self, mut events: Vec<Event>) {
        for event in &mut events {
            self.stamp(event);
        }
        self.log.record(events);
    }

    fn stamp(&self, event: &mut Event) {
        event.nodeid.clone_from(&self.node);
        if event.timestamp == 0 {
            event.timestamp = fleet::clock::unix_secs();
        }
        if event.bounce_classification.is_none() && is_failure(event.kind) {
            event.bounce_classification = Some(self.classifier.classify(&event.response).into());
        }
    }

    /// Every event from now on, once durable (a slow reader misses some:
    /// `Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.log.subscribe()
    }

    pub fn log(&self) -> &Arc<log::EventLog> {
        &self.log
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Makes every event emitted so far durable and stops the writer.
    pub fn close(&self) {
        self.log.close();
    }
}

/// The types whose reply says why mail did not arrive.
pub fn is_failure(kind: EventType) -> bool {
    matches!(
        kind,
        EventType::Bounce
            | EventType::TransientFailure
            | EventType::Expiration
            | EventType::AdminBounce
            | EventType::Oob
            | EventType::Rejection
    )
}
