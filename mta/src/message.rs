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
    /// `smtp` or `http`.
    pub via: &'static str,
    pub peer: SocketAddr,
}

/// The spool's id for a message, also used in event logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub String);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
