//! What SMTP submission and HTTP injection share: the live settings, the
//! spool, the authenticator, the connection caps, the metrics, and the last
//! step of both paths (trace headers, then the spool).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fleet::admin::Readiness;
use fleet::{Control, Live};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};

use crate::auth::{Authenticator, Principal};
use crate::config::Settings;
use crate::message::{MessageId, NewMessage, Protocol};
use crate::spool::{Spool, SpoolError};

/// Everything an ingress connection needs, shared by all of them.
pub struct Ingress {
    pub live: Arc<Live<Settings>>,
    pub spool: Arc<Spool>,
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<ConnectionLimiter>,
    /// Failed authentications across connections.
    pub anvil: crate::anvil::Anvil,
    pub metrics: IngressMetrics,
    pub readiness: Arc<Readiness>,
    pub control: Control,
    /// Where Reception and Rejection events go.
    pub events: Arc<crate::events::Events>,
    /// Why the spool cannot take mail, as its last health check said.
    spool_problem: Mutex<Option<String>>,
}

impl Ingress {
    pub fn new(
        live: Arc<Live<Settings>>,
        spool: Arc<Spool>,
        readiness: Arc<Readiness>,
        metrics: IngressMetrics,
        control: Control,
        events: Arc<crate::events::Events>,
    ) -> Arc<Ingress> {
        Arc::new(Ingress {
            events,
            auth: Authenticator::new(live.clone()),
            live,
            spool,
            limiter: Arc::default(),
            anvil: crate::anvil::Anvil::default(),
            metrics,
            readiness,
            control,
            spool_problem: Mutex::new(None),
        })
    }

    /// `Err` with the reason while the spool cannot take mail (checked in
    /// the background, so this costs nothing per message).
    pub fn spool_health(&self) -> Result<(), String> {
        match &*self.spool_problem.lock() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Adds the trace headers and hands the message to the spool; returns
    /// only once it is durable.
    pub async fn submit(&self, submission: Submission<'_>) -> Result<MessageId, SpoolError> {
        let settings = self.live.get();
        let data: bytes::Bytes = submission.with_trace_headers(&settings).into();
        let size = data.len() as u64;
        let result = self
            .spool
            .accept(submission.new_message(data.clone()))
            .await;
        let meta = crate::events::meta::of_message(
            &data,
            &submission.principal.cluster,
            &submission.principal.username,
        );
        self.submitted(&submission, result, meta, size)
    }

    /// Starts a message whose rest streams to the spool as it arrives:
    /// `submission.data` is its header section, written after the trace
    /// headers. [`Ingress::submit_staged`] completes it.
    pub async fn stage(&self, submission: &Submission<'_>) -> Result<Incoming, SpoolError> {
        let settings = self.live.get();
        let head: bytes::Bytes = submission.with_trace_headers(&settings).into();
        let meta = crate::events::meta::of_message(
            &head,
            &submission.principal.cluster,
            &submission.principal.username,
        );
        let staged = self.spool.stage(submission.new_message(head)).await?;
        Ok(Incoming { staged, meta })
    }

    /// Makes a staged message durable (as [`Ingress::submit`]; the
    /// submission's `data` is not used).
    pub async fn submit_staged(
        &self,
        submission: Submission<'_>,
        incoming: Incoming,
    ) -> Result<MessageId, SpoolError> {
        let size = incoming.staged.data_len();
        let result = self.spool.commit_staged(incoming.staged).await;
        self.submitted(&submission, result, incoming.meta, size)
    }

    /// Metrics, the Reception events and the log for a spool's answer.
    fn submitted(
        &self,
        submission: &Submission<'_>,
        result: Result<MessageId, SpoolError>,
        meta: fleet::event::Meta,
        size: u64,
    ) -> Result<MessageId, SpoolError> {
        let listener = submission.via.listener();
        match &result {
            Ok(id) => {
                self.metrics.accepted(&listener, size);
                // Recorded before this task yields: the queue cannot have
                // attempted the message yet, so Reception comes first.
                self.reception(id, submission, meta, size);
                tracing::debug!(
                    id = %id,
                    peer = %submission.peer,
                    credential = %submission.principal.username,
                    size,
                    "message received"
                );
            }
            Err(error) => {
                self.metrics.rejected(&listener, Rejected::Spool);
                tracing::error!(peer = %submission.peer, "spool refused a message: {error}");
            }
        }
        result
    }

    /// One Reception event per recipient of a message the spool accepted.
    fn reception(
        &self,
        id: &MessageId,
        submission: &Submission<'_>,
        meta: fleet::event::Meta,
        size: u64,
    ) {
        use crate::events::{Event, EventType, PeerAddress, Response};
        let now = fleet::clock::unix_secs();
        let mut events = Vec::with_capacity(submission.recipients.len());
        for recipient in submission.recipients {
            let mut event = Event::new(EventType::Reception);
            event.id = id.0.clone();
            event.envelope_sender = submission.sender.to_string();
            event.sender = submission.sender.to_string();
            event.recipient = recipient.clone();
            event.queue = fleet::event::queue_of(recipient);
            event.peer_address = Some(PeerAddress {
                name: submission.via.helo().to_string(),
                addr: submission.peer.to_string(),
            });
            event.response = Response::new(250, format!("2.0.0 OK queued as {id}"));
            event.timestamp = now;
            event.created = now;
            event.reception_protocol = Some(submission.via.reception_protocol().into());
            event.size = size;
            event.meta = meta.clone();
            events.push(event);
        }
        // In the log (safe from a kill -9) before the client hears 250.
        self.events.record(events);
    }

    /// A Rejection event: the session refused something (failed AUTH, a
    /// policy refusal) with `reply`.
    pub fn rejection(&self, refused: Refused<'_>) {
        use crate::events::{Event, EventType, PeerAddress, Response};
        let mut event = Event::new(EventType::Rejection);
        event.sender = refused.sender.to_string();
        event.envelope_sender = refused.sender.to_string();
        event.recipient = refused.recipient.to_string();
        event.queue = fleet::event::queue_of(refused.recipient);
        event.peer_address = Some(PeerAddress {
            name: refused.helo.to_string(),
            addr: refused.peer.to_string(),
        });
        let (code, text) = refused
            .reply
            .split_once(' ')
            .and_then(|(code, text)| Some((code.parse().ok()?, text)))
            .unwrap_or((0, refused.reply));
        event.response = Response::new(code, text);
        event.reception_protocol = Some(refused.protocol.into());
        event.meta.cluster = self.live.get().cluster_id.clone();
        event.meta.credential = refused.credential.map(str::to_string);
        self.events.emit(event);
    }

    /// Keeps [`Ingress::spool_health`] and the `spool` readiness concern
    /// in step with `spool.health()` until shutdown.
    pub async fn watch_spool_health(self: Arc<Self>) {
        let shutdown = self.control.shutdown.clone();
        loop {
            let spool = self.spool.clone();
            let health =
                tokio::task::spawn_blocking(move || spool.health().map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_else(|e| Err(format!("the health check failed: {e}")));
            match &health {
                Ok(()) => self.readiness.ready("spool"),
                Err(reason) => self
                    .readiness
                    .not_ready("spool", format!("spool: {reason}")),
            }
            *self.spool_problem.lock() = health.err();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// A connection from the accept loop, within the caps or not.
pub enum Accepted {
    /// Holds its slot until the permit drops.
    Admitted(TcpStream, SocketAddr, ConnectionPermit),
    /// Over a cap: answer (if the protocol can) and close.
    Refused(TcpStream, SocketAddr, CapHit),
}

impl Ingress {
    /// The next connection on `listener` (named `name` in metrics and
    /// logs), with the connection caps in service applied; `None` once
    /// shutdown starts. Accept errors (out of descriptors and the like)
    /// never end the loop.
    pub async fn next_connection(&self, listener: &TcpListener, name: &str) -> Option<Accepted> {
        let stop = self.control.shutdown.cancelled();
        let (stream, peer) = fleet::accept::next_connection(listener, name, stop).await?;
        let settings = self.live.get();
        let caps = &settings.node.smtp;
        Some(
            match self.limiter.try_acquire(
                crate::anvil::client_key(peer.ip(), caps.ipv6_client_prefix),
                caps.max_connections,
                caps.max_connections_per_ip,
            ) {
                Ok(permit) => {
                    self.metrics.connection(name);
                    Accepted::Admitted(stream, peer, permit)
                }
                Err(cap) => {
                    self.metrics.refused(name, cap);
                    tracing::info!(%peer, listener = %name, cap = cap.label(), "connection refused at its cap");
                    Accepted::Refused(stream, peer, cap)
                }
            },
        )
    }
}

/// What a Rejection event says.
pub struct Refused<'a> {
    pub peer: SocketAddr,
    pub helo: &'a str,
    /// `ESMTP` or `HTTP`.
    pub protocol: &'static str,
    /// The credential tried or used, when there was one.
    pub credential: Option<&'a str>,
    pub sender: &'a str,
    pub recipient: &'a str,
    /// The reply sent, `550 5.7.1 …`.
    pub reply: &'a str,
}

/// How a message came in.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// SMTP on this port; `helo` is what the client said in EHLO/HELO.
    Smtp {
        port: u16,
        helo: &'a str,
    },
    Http {
        port: u16,
    },
}

impl Via<'_> {
    pub fn protocol(&self) -> Protocol {
        match self {
            Via::Smtp { .. } => Protocol::Smtp,
            Via::Http { .. } => Protocol::Http,
        }
    }

    /// The EHLO name, empty over HTTP.
    pub fn helo(&self) -> &str {
        match self {
            Via::Smtp { helo, .. } => helo,
            Via::Http { .. } => "",
        }
    }

    /// An event's `reception_protocol`.
    pub fn reception_protocol(&self) -> &'static str {
        self.protocol().reception_protocol()
    }

    pub fn listener(&self) -> String {
        match self {
            Via::Smtp { port, .. } => format!("smtp:{port}"),
            Via::Http { port } => format!("https:{port}"),
        }
    }
}

/// One message ready for the spool, as the client sent it.
pub struct Submission<'a> {
    pub principal: &'a Principal,
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub data: &'a [u8],
    /// Whether the message already has these headers.
    pub has_message_id: bool,
    pub has_date: bool,
    pub via: Via<'a>,
    pub peer: SocketAddr,
}

/// A message being written to the spool as it arrives, with the event
/// metadata read from its header section.
pub struct Incoming {
    staged: crate::spool::Staged,
    meta: fleet::event::Meta,
}

impl crate::smtp::data::Sink for Incoming {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<Vec<u8>, String> {
        self.staged.append(chunk).await.map_err(|e| e.to_string())
    }
}

impl Submission<'_> {
    /// The spool's view of this submission with `data` as its message.
    fn new_message(&self, data: bytes::Bytes) -> NewMessage {
        NewMessage {
            sender: self.sender.to_string(),
            recipients: self.recipients.to_vec(),
            data,
            cluster: self.principal.cluster.clone(),
            credential: self.principal.username.clone(),
            via: self.via.protocol(),
            peer: self.peer,
        }
    }

    /// Received: first, then Message-ID: and Date: where missing, then the
    /// message as it came.
    fn with_trace_headers(&self, settings: &Settings) -> Vec<u8> {
        use std::fmt::Write;
        let now = mail_builder::headers::date::Date::now().to_rfc822();
        let mut head = String::with_capacity(256);
        let ip = self.peer.ip();
        let _ = match self.via {
            Via::Smtp { helo, .. } => write!(
                head,
                "Received: from {} ([{ip}])\r\n\tby {} ({}) with ESMTPSA id {}",
                clean_helo(helo),
                settings.hostname,
                settings.node.node,
                trace_id(),
            ),
            Via::Http { .. } => write!(
                head,
                "Received: from [{ip}]\r\n\tby {} ({}) with HTTPS id {}",
                settings.hostname,
                settings.node.node,
                trace_id(),
            ),
        };
        if let [only] = self.recipients {
            if only.is_ascii() && !only.contains(['\r', '\n', '<', '>']) {
                let _ = write!(head, "\r\n\tfor <{only}>");
            }
        }
        let _ = write!(head, "; {now}\r\n");
        if !self.has_message_id {
            let _ = write!(
                head,
                "Message-ID: <{}@{}>\r\n",
                trace_id(),
                settings.hostname
            );
        }
        if !self.has_date {
            let _ = write!(head, "Date: {now}\r\n");
        }
        let mut data = Vec::with_capacity(head.len() + self.data.len());
        data.extend_from_slice(head.as_bytes());
        data.extend_from_slice(self.data);
        data
    }
}

/// A unique id for trace headers: time and randomness, hex.
pub fn trace_id() -> String {
    let micros = fleet::clock::unix_micros();
    format!("{micros:x}.{:016x}", rand::random::<u64>())
}

/// The EHLO name as it may appear in a header: printable, no spaces, short.
fn clean_helo(helo: &str) -> String {
    let cleaned: String = helo
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';'))
        .take(255)
        .collect();
    if cleaned.is_empty() {
        "unknown".to_string()
    } else {
        cleaned
    }
}

/// Open connections in all and per client address.
#[derive(Default)]
pub struct ConnectionLimiter {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which cap a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapHit {
    Total,
    PerIp,
}

impl CapHit {
    pub fn label(self) -> &'static str {
        match self {
            CapHit::Total => "max_connections",
            CapHit::PerIp => "max_connections_per_ip",
        }
    }
}

impl ConnectionLimiter {
    /// A slot for a connection from `ip`, held until the permit drops.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnectionPermit, CapHit> {
        let mut open = self.lock();
        if open.total >= max_total {
            return Err(CapHit::Total);
        }
        let count = open.per_ip.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            return Err(CapHit::PerIp);
        }
        *count += 1;
        open.total += 1;
        Ok(ConnectionPermit {
            limiter: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Open> {
        self.open.lock()
    }
}

pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

type Labels = Vec<(String, String)>;

/// Why a message was refused: the `reason` of
/// `mta_ingress_messages_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The sender or a recipient breaks the domain rules.
    Policy,
    /// Mail without AUTH to anything but the bounce domain.
    Relay,
    /// Over `max_message_size` or `max_header_size`.
    Size,
    /// The spool could not store it.
    Spool,
    /// Bad line endings, a line too long, control characters.
    Syntax,
}

impl Rejected {
    /// The reasons an SMTP listener refuses for.
    pub const SMTP: [Rejected; 5] = [
        Rejected::Policy,
        Rejected::Relay,
        Rejected::Size,
        Rejected::Spool,
        Rejected::Syntax,
    ];
    /// The reasons the HTTPS listener refuses for.
    pub const HTTP: [Rejected; 3] = [Rejected::Policy, Rejected::Size, Rejected::Spool];

    pub fn label(self) -> &'static str {
        match self {
            Rejected::Policy => "policy",
            Rejected::Relay => "relay",
            Rejected::Size => "size",
            Rejected::Spool => "spool",
            Rejected::Syntax => "syntax",
        }
    }
}

/// Ingress metrics, by listener (`smtp:587`, `https:443`).
#[derive(Clone, Default)]
pub struct IngressMetrics {
    connections: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    tls_handshakes: Family<Labels, Counter>,
    auth_failures: Family<Labels, Counter>,
    auth_blocked: Family<Labels, Counter>,
    messages: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    /// Mail to the bounce domain (DSNs, ARF reports, dropped).
    pub bounces: crate::bounces::BounceMetrics,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl IngressMetrics {
    /// Registers the families, each labelled counter of `listeners` at 0.
    pub fn register(registry: &mut Registry, listeners: &crate::Listeners) -> IngressMetrics {
        let metrics = IngressMetrics::default();
        metrics.at_zero(listeners);
        metrics.bounces.register(registry);
        let registry = registry.sub_registry_with_prefix("ingress");
        registry.register(
            "connections",
            "Connections accepted, by listener",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at a connection cap, by listener and cap",
            metrics.refused.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by listener and result",
            metrics.tls_handshakes.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentications, by listener",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "auth_blocked",
            "AUTH attempts refused because the client address or username is over auth_failure_limit, by listener",
            metrics.auth_blocked.clone(),
        );
        registry.register(
            "messages",
            "Messages accepted into the spool, by listener",
            metrics.messages.clone(),
        );
        registry.register(
            "bytes",
            "Bytes of messages accepted into the spool, by listener",
            metrics.bytes.clone(),
        );
        registry.register(
            "messages_rejected",
            "Messages refused, by listener and reason",
            metrics.rejected.clone(),
        );
        metrics
    }

    /// Every counter whose labels are known at start exists from then on
    /// at 0: by listener, cap, TLS result and refusal reason.
    fn at_zero(&self, listeners: &crate::Listeners) {
        use fleet::metrics::at_zero;
        let name = |scheme: &str, listener: &TcpListener| {
            let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
            format!("{scheme}:{port}")
        };
        let smtp = listeners
            .smtp
            .iter()
            .map(|l| (name("smtp", l), &Rejected::SMTP[..]));
        let https = listeners
            .https
            .iter()
            .map(|l| (name("https", l), &Rejected::HTTP[..]));
        for (listener, reasons) in smtp.chain(https) {
            let one = || [labels(&[("listener", &listener)])];
            for family in [
                &self.connections,
                &self.auth_failures,
                &self.auth_blocked,
                &self.messages,
                &self.bytes,
            ] {
                at_zero(family.clone(), one());
            }
            let pairs = |key: &str, values: &[&str]| {
                values
                    .iter()
                    .map(|value| labels(&[("listener", &listener), (key, value)]))
                    .collect::<Vec<_>>()
            };
            let caps = [CapHit::Total.label(), CapHit::PerIp.label()];
            at_zero(self.refused.clone(), pairs("cap", &caps));
            at_zero(
                self.tls_handshakes.clone(),
                pairs("result", &["ok", "error"]),
            );
            let reasons: Vec<&str> = reasons.iter().map(|r| r.label()).collect();
            at_zero(self.rejected.clone(), pairs("reason", &reasons));
        }
    }

    pub fn connection(&self, listener: &str) {
        self.connections
            .get_or_create(&labels(&[("listener", listener)]))
            .inc();
    }

    pub fn refused(&self, listener: &str, cap: CapHit) {
        self.refused
            .get_or_create(&labels(&[("listener", listener), ("cap", cap.label())]))
            .inc();
    }

    pub fn tls_handshake(&self, listener: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_handshakes
            .get_or_create(&labels(&[("listener", listener), ("result", result)]))
            .inc();
    }

    pub fn auth_failure(&self, listener: &str) {
        self.auth_failures
            .get_or_create(&labels(&[("listener", listener)]))
            .inc();
    }

    pub fn auth_blocked(&self, listener: &str) {
        self.auth_blocked
            .get_or_create(&labels(&[("listener", listener)]))
            .inc();
    }

    pub fn accepted(&self, listener: &str, bytes: u64) {
        let key = labels(&[("listener", listener)]);
        self.messages.get_or_create(&key).inc();
        self.bytes.get_or_create(&key).inc_by(bytes);
    }

    pub fn rejected(&self, listener: &str, reason: Rejected) {
        self.rejected
            .get_or_create(&labels(&[
                ("listener", listener),
                ("reason", reason.label()),
            ]))
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_and_release() {
        let limiter = Arc::new(ConnectionLimiter::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = limiter.try_acquire(a, 3, 2).unwrap();
        let _p2 = limiter.try_acquire(a, 3, 2).unwrap();
        assert_eq!(limiter.try_acquire(a, 3, 2).err(), Some(CapHit::PerIp));
        let _p3 = limiter.try_acquire(b, 3, 2).unwrap();
        assert_eq!(limiter.try_acquire(b, 3, 2).err(), Some(CapHit::Total));
        drop(p1);
        let _p4 = limiter.try_acquire(a, 3, 2).unwrap();
        assert_eq!(limiter.open(), 3);
    }

    #[test]
    fn helo_cannot_break_the_header() {
        assert_eq!(clean_helo("a b\r\nX-Evil: 1"), "abX-Evil:1");
        assert_eq!(clean_helo(""), "unknown");
    }
}
