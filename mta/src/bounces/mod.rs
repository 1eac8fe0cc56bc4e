//! Mail that comes back: on the bounce port (25), without AUTH, mail to the
//! cluster's bounce domain only (the VERP return paths `<id>@<domain>`).
//! RFC 3464 delivery status notifications become `OOB` events for the
//! original message and recipient, RFC 5965 ARF reports `Feedback` events;
//! anything else is counted and dropped with a log line.

pub mod parse;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::events::{Event, EventType, Events, PeerAddress, Response};
use parse::Report;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BouncesConfig {
    /// The SMTP port (one of the fleet's `[ports].smtp`) that takes mail for
    /// the bounce domain without AUTH.
    pub port: u16,
    /// Bounces may come in without STARTTLS (nothing else may).
    pub allow_plaintext: bool,
    /// Largest bounce or report, in octets.
    pub max_size: usize,
}

impl Default for BouncesConfig {
    fn default() -> Self {
        BouncesConfig {
            port: 25,
            allow_plaintext: false,
            max_size: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// `bounces_received_total{kind="dsn"|"arf"|"unparseable"}`, each kind at 0
/// from the start.
#[derive(Clone)]
pub struct BounceMetrics {
    received: Family<KindLabel, Counter>,
}

impl Default for BounceMetrics {
    fn default() -> Self {
        let kinds = ["dsn", "arf", "unparseable"].map(|kind| KindLabel { kind });
        BounceMetrics {
            received: fleet::metrics::at_zero(Family::default(), kinds),
        }
    }
}

impl BounceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bounces_received",
            "Mail to the bounce domain by what it was: dsn, arf or unparseable (dropped)",
            self.received.clone(),
        );
    }

    fn count(&self, kind: &'static str) {
        self.received.get_or_create(&KindLabel { kind }).inc();
    }
}

/// Whether `recipient` is at `bounce_domain` (case-insensitive).
pub fn is_bounce_address(recipient: &str, bounce_domain: &str) -> bool {
    recipient.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.eq_ignore_ascii_case(bounce_domain)
    })
}

/// What one message to the bounce domain came with.
pub struct Inbound<'a> {
    pub peer: std::net::SocketAddr,
    pub helo: &'a str,
    pub recipients: &'a [String],
    pub data: &'a [u8],
    pub cluster: &'a str,
    pub bounce_domain: &'a str,
}

/// Turns one message into events; returns how many.
pub fn receive(events: &Events, metrics: &BounceMetrics, inbound: Inbound<'_>) -> usize {
    // The VERP local part names the message the bounce is about.
    let verp_id = inbound
        .recipients
        .iter()
        .find_map(|r| {
            r.rsplit_once('@')
                .map(|(local, _)| local.to_ascii_lowercase())
        })
        .unwrap_or_default();
    let peer = PeerAddress {
        name: inbound.helo.to_string(),
        addr: inbound.peer.to_string(),
    };
    let base = |kind: EventType| {
        let mut event = Event::new(kind);
        event.peer_address = Some(peer.clone());
        event.meta.cluster = inbound.cluster.to_string();
        event.size = inbound.data.len() as u64;
        event.reception_protocol = Some("ESMTP".into());
        event
    };
    match parse::report(inbound.data) {
        Ok(Report::Dsn(recipients)) => {
            metrics.count("dsn");
            let mut n = 0;
            for failed in recipients.into_iter().filter(|r| r.action == "failed") {
                let mut event = base(EventType::Oob);
                event.id.clone_from(&verp_id);
                event.sender = format!("{verp_id}@{}", inbound.bounce_domain);
                event.queue = fleet::event::queue_of(&failed.recipient);
                event.recipient = failed.recipient;
                event.site = failed.remote_mta.unwrap_or_default();
                event.response = failed.response;
                events.emit(event);
                n += 1;
            }
            n
        }
        Ok(Report::Arf(report)) => {
            metrics.count("arf");
            let mut event = base(EventType::Feedback);
            let original_id = report
                .original_mail_from
                .as_deref()
                .filter(|from| is_bounce_address(from, inbound.bounce_domain))
                .and_then(|from| from.rsplit_once('@'))
                .map(|(local, _)| local.to_ascii_lowercase());
            event.id = original_id.unwrap_or(verp_id);
            event.sender = format!("{}@{}", event.id, inbound.bounce_domain);
            event.recipient = report.original_rcpt_to.clone().unwrap_or_default();
            event.queue = fleet::event::queue_of(&event.recipient);
            event.response = Response::new(0, format!("feedback report: {}", report.feedback_type));
            event.feedback_report = Some(report);
            events.emit(event);
            1
        }
        Err(why) => {
            metrics.count("unparseable");
            tracing::warn!(
                peer = %inbound.peer,
                recipients = ?inbound.recipients,
                "dropped mail to the bounce domain that is neither a DSN nor an ARF report: {why}"
            );
            0
        }
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    #[test]
    fn every_kind_is_counted_from_zero() {
        let text = fleet::metrics::scrape("mta", |r| BounceMetrics::default().register(r)).unwrap();
        for kind in ["dsn", "arf", "unparseable"] {
            let line = format!("mta_bounces_received_total{{kind=\"{kind}\"}} 0\n");
            assert!(text.contains(&line), "no `{line}` in\n{text}");
        }
    }
}
