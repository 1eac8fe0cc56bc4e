//! The events every MTA records for every message, in the hosted service's
//! documented shape (the fields of a KumoMTA log record): one type shared by
//! the MTA's durable log, its webhooks, the fleet file's webhook filters and
//! the tests' receivers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// Durably accepted (SMTP or HTTP), one per recipient.
    Reception,
    /// The recipient's MX answered 2xx.
    Delivery,
    /// A 5xx (or an undeliverable address): no more attempts.
    Bounce,
    /// A 4xx, a timeout or an unreachable host: will retry.
    TransientFailure,
    /// Not delivered within the maximum age.
    Expiration,
    /// Bounced by an operator through the admin API.
    AdminBounce,
    /// An out-of-band bounce: a DSN that came back after the 250.
    #[serde(rename = "OOB")]
    Oob,
    /// An ARF (RFC 5965) complaint report.
    Feedback,
    /// Refused during the SMTP/HTTP session (failed AUTH, policy).
    Rejection,
    /// Held by the node's rate limit.
    Delayed,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::Reception,
        EventType::Delivery,
        EventType::Bounce,
        EventType::TransientFailure,
        EventType::Expiration,
        EventType::AdminBounce,
        EventType::Oob,
        EventType::Feedback,
        EventType::Rejection,
        EventType::Delayed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::Reception => "Reception",
            EventType::Delivery => "Delivery",
            EventType::Bounce => "Bounce",
            EventType::TransientFailure => "TransientFailure",
            EventType::Expiration => "Expiration",
            EventType::AdminBounce => "AdminBounce",
            EventType::Oob => "OOB",
            EventType::Feedback => "Feedback",
            EventType::Rejection => "Rejection",
            EventType::Delayed => "Delayed",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The host an event concerns: the MX tried, or the client that connected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    /// Host name (MX host, or the client's EHLO name), empty when unknown.
    pub name: String,
    /// `ip:port`.
    pub addr: String,
}

/// An RFC 3463 enhanced status code, split as KumoMTA logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    /// The first `x.y.z` (x in 2, 4, 5) in `text`.
    pub fn find(text: &str) -> Option<EnhancedCode> {
        text.split(|c: char| c.is_whitespace() || matches!(c, ':' | '(' | ')' | ';' | ','))
            .find_map(|word| {
                let mut parts = word.split('.');
                let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() || !matches!(a, "2" | "4" | "5") {
                    return None;
                }
                let number = |p: &str| {
                    (!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| p.parse::<u16>().ok())
                        .flatten()
                };
                Some(EnhancedCode {
                    class: a.parse().ok()?,
                    subject: number(b)?,
                    detail: number(c)?,
                })
            })
    }
}

impl std::fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// The reply an event rests on: the remote server's, or ours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The SMTP reply code; 0 when the outcome was decided here without one.
    pub code: u16,
    pub enhanced_code: Option<EnhancedCode>,
    /// The reply text, or the reason in words.
    pub content: String,
}

impl Response {
    pub fn new(code: u16, content: impl Into<String>) -> Response {
        let content = content.into();
        Response {
            code,
            enhanced_code: EnhancedCode::find(&content),
            content,
        }
    }
}

/// What the message says about itself and who sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The From: header's address.
    pub from: Option<String>,
    pub subject: Option<String>,
    /// The cluster id.
    pub cluster: String,
    /// The credential (username) that submitted the message.
    pub credential: Option<String>,
    /// Customer metadata: every `X-Meta-<name>: <value>` header (name in
    /// lower case, without the prefix), or the HTTP API's `metadata`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The parts of an ARF report (RFC 5965) a Feedback event carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackReport {
    /// `Feedback-Type`: abuse, fraud, virus, other, not-spam…
    pub feedback_type: String,
    pub user_agent: Option<String>,
    pub original_mail_from: Option<String>,
    pub original_rcpt_to: Option<String>,
    pub reporting_mta: Option<String>,
    pub arrival_date: Option<String>,
}

/// One event, as the log keeps it and the webhooks send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Unique and stable: the same event sent twice has the same id
    /// (`<node>-<sequence>`), for receivers that deduplicate.
    pub event_id: String,
    /// The message id (the spool's); empty for a Rejection before one existed.
    pub id: String,
    /// The return path on the wire: `<id>@<bounce domain>` (VERP).
    pub sender: String,
    /// The envelope sender the customer gave (MAIL FROM / `envelope_sender`).
    pub envelope_sender: String,
    pub recipient: String,
    /// The destination: the recipient's domain.
    pub queue: String,
    /// The MX site the attempt went to (`host` or `host:port`), else empty.
    pub site: String,
    pub peer_address: Option<PeerAddress>,
    pub response: Response,
    /// When it happened, unix seconds.
    pub timestamp: u64,
    /// When the message was received, unix seconds.
    pub created: u64,
    /// Delivery attempts so far, this one included.
    pub num_attempts: u32,
    /// The class of a failure, from the rule table (`Uncategorized` when
    /// none matches); absent for events that are not failures.
    pub bounce_classification: Option<String>,
    /// Filled by the egress sources, when the cluster has them.
    pub egress_pool: Option<String>,
    pub egress_source: Option<String>,
    /// `ESMTP` for SMTP delivery attempts.
    pub delivery_protocol: Option<String>,
    /// How the message came in: `ESMTP` or `HTTP`.
    pub reception_protocol: Option<String>,
    /// The MTA that recorded the event.
    pub nodeid: String,
    /// Message size in bytes.
    pub size: u64,
    pub meta: Meta,
    /// For Feedback events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_report: Option<FeedbackReport>,
}

impl Event {
    /// A blank event of `kind` (ids, times and the rest filled by the caller).
    pub fn new(kind: EventType) -> Event {
        Event {
            kind,
            event_id: String::new(),
            id: String::new(),
            sender: String::new(),
            envelope_sender: String::new(),
            recipient: String::new(),
            queue: String::new(),
            site: String::new(),
            peer_address: None,
            response: Response::default(),
            timestamp: 0,
            created: 0,
            num_attempts: 0,
            bounce_classification: None,
            egress_pool: None,
            egress_source: None,
            delivery_protocol: None,
            reception_protocol: None,
            nodeid: String::new(),
            size: 0,
            meta: Meta::default(),
            feedback_report: None,
        }
    }
}

/// The queue an event names for a recipient: its domain in lower case
/// (empty without one), as the hosted service's events do.
pub fn queue_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_found_and_split() {
        let code = EnhancedCode::find("550 5.1.1 <x@y>: user unknown").unwrap();
        assert_eq!((code.class, code.subject, code.detail), (5, 1, 1));
        assert_eq!(code.to_string(), "5.1.1");
        assert_eq!(EnhancedCode::find("connection refused at 1.2.3.4"), None);
        assert_eq!(EnhancedCode::find("version 1.2.3"), None);
    }

    #[test]
    fn types_serialize_as_documented() {
        let names: Vec<String> = EventType::ALL
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        assert!(names.contains(&"\"OOB\"".to_string()), "{names:?}");
        for t in EventType::ALL {
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
    }

    #[test]
    fn an_event_round_trips() {
        let mut event = Event::new(EventType::Delivery);
        event.response = Response::new(250, "2.0.0 OK");
        event.meta.metadata.insert("campaign".into(), "7".into());
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains("\"type\":\"Delivery\""), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
    }
}
