//! A message as the ingress hands it to the spool.

use std::net::SocketAddr;

/// A message accepted from a client, not yet acknowledged.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Envelope sender (MAIL FROM / `envelope_sender`).
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// The whole RFC 5322 message, our Received: header first.
    pub data: bytes::Bytes,
    /// The cluster and credential it was submitted under.
    pub cluster: String,
    pub credential: String,
    /// How it reached the node.
    pub via: Protocol,
    pub peer: SocketAddr,
}

/// How a message reached the node: over SMTP, over HTTP injection, or made
/// here (a DSN to the envelope sender). Stored in the spool by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Http,
    Dsn,
}

impl Protocol {
    /// The name kept in spool records.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Http => "http",
            Protocol::Dsn => "dsn",
        }
    }

    /// The protocol named in a spool record. A name this version does not
    /// know (a record from a later one) counts as SMTP: the message is
    /// still delivered.
    pub fn from_record(name: &str) -> Protocol {
        match name {
            "http" => Protocol::Http,
            "dsn" => Protocol::Dsn,
            _ => Protocol::Smtp,
        }
    }

    /// An event's `reception_protocol`.
    pub fn reception_protocol(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Smtp | Protocol::Dsn => "ESMTP",
        }
    }
}

/// The spool's id for a message, also used in event logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub String);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
