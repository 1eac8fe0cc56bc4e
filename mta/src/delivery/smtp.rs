//! SMTP out with lettre's client connection: per destination address a
//! small pool of open connections (reused for the next messages) and a
//! bound on attempts at once. Sockets are `TCP_NODELAY`: lettre writes the
//! end of DATA apart from the body, which Nagle's algorithm would hold back
//! for a delayed ACK (40 ms a message).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;

use super::config::StartTls;
use super::egress::connect::{open, OpenError};
use super::egress::Via;

/// What one attempt at one address came to.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 2xx: the server took the message.
    Accepted { code: u16, text: String },
    /// 4xx from the server.
    Transient { code: u16, text: String },
    /// 5xx from the server.
    Permanent { code: u16, text: String },
    /// No SMTP answer: connection, TLS or timeout; the next address may work.
    Unreachable(String),
    /// The egress source failed (its proxy is down or refuses): another
    /// source should carry the message.
    SourceDown(String),
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

struct Destination {
    idle: Mutex<Vec<Idle>>,
    slots: Arc<Semaphore>,
    last_used: AtomicU64,
    /// STARTTLS failed here: plaintext until this many seconds after the
    /// connector's epoch (0: never failed).
    plaintext_until: AtomicU64,
}

pub struct Connector {
    hello: ClientId,
    hello_text: String,
    fallback: Duration,
    fallbacks: Counter,
    per_destination: usize,
    timeout: Duration,
    epoch: Instant,
    destinations: Mutex<HashMap<DestinationKey, Arc<Destination>>>,
}

/// Connections are pooled per address, host name and egress source.
type DestinationKey = (SocketAddr, String, Option<Arc<str>>, StartTls);

/// Destinations unused this long are dropped (with their connections).
const FORGET: Duration = Duration::from_secs(300);
/// A pooled connection idle this long is closed rather than reused.
const IDLE: Duration = Duration::from_secs(30);

fn reply_text(response: &lettre::transport::smtp::response::Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    format!("{} {}", u16::from(response.code()), lines.join(" "))
}

impl Connector {
    pub fn new(
        hello: String,
        fallback: Duration,
        fallbacks: Counter,
        per_destination: usize,
        timeout: Duration,
    ) -> Self {
        Connector {
            hello: ClientId::Domain(hello.clone()),
            hello_text: hello,
            fallback,
            fallbacks,
            per_destination,
            timeout,
            epoch: Instant::now(),
            destinations: Mutex::new(HashMap::new()),
        }
    }

    pub fn hello(&self) -> &str {
        &self.hello_text
    }

    fn destination(
        &self,
        addr: SocketAddr,
        host: &str,
        via: Option<&Via>,
        tls: StartTls,
    ) -> Arc<Destination> {
        let mut map = self.destinations.lock();
        let now = self.epoch.elapsed().as_secs();
        let key = (
            addr,
            host.to_string(),
            via.map(|v| v.source.name.clone()),
            tls,
        );
        if let Some(d) = map.get(&key) {
            d.last_used.store(now, Ordering::Relaxed);
            return d.clone();
        }
        if map.len() >= 256 {
            map.retain(|_, d| {
                now.saturating_sub(d.last_used.load(Ordering::Relaxed)) < FORGET.as_secs()
                    || Arc::strong_count(d) > 1
            });
        }
        let d = Arc::new(Destination {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(self.per_destination)),
            last_used: AtomicU64::new(now),
            plaintext_until: AtomicU64::new(0),
        });
        map.insert(key, d.clone());
        d
    }

    /// A new connection (through `via`'s source when given): greeting,
    /// EHLO with the source's name, and STARTTLS when offered.
    async fn connect(
        &self,
        destination: &Destination,
        addr: SocketAddr,
        host: &str,
        via: Option<&Via>,
        mode: StartTls,
    ) -> Result<AsyncSmtpConnection, OpenError> {
        let use_tls = match mode {
            StartTls::Disabled => false,
            StartTls::Required => true,
            StartTls::Opportunistic => !self.in_fallback(destination),
        };
        let source_hello = via
            .and_then(|v| v.source.hello.clone())
            .map(ClientId::Domain);
        let hello = source_hello.as_ref().unwrap_or(&self.hello);
        let stream = open(via.map(|v| &v.source.route), addr, self.timeout).await?;
        let session = async {
            let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello)
                .await
                .map_err(|e| format!("{addr} did not greet: {e}"))?;
            if mode == StartTls::Required && !conn.can_starttls() {
                return Err(format!(
                    "{addr} does not offer STARTTLS, which is required for {host}"
                ));
            }
            if use_tls && conn.can_starttls() {
                let tls = TlsParameters::builder(host.to_string())
                    .dangerous_accept_invalid_certs(true)
                    .dangerous_accept_invalid_hostnames(true)
                    .build_rustls()
                    .map_err(|e| format!("TLS settings for {host}: {e}"))?;
                if let Err(e) = conn.starttls(tls, hello).await {
                    if mode == StartTls::Required {
                        return Err(format!(
                            "STARTTLS with {addr} failed: {e}; it is required for {host}"
                        ));
                    }
                    self.fall_back(destination, addr, host, &e.to_string());
                    return Err(format!(
                        "STARTTLS with {addr} failed: {e}; plaintext for {:?}",
                        self.fallback
                    ));
                }
            }
            Ok(conn)
        };
        match tokio::time::timeout(self.timeout, session).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(OpenError::Destination(e)),
            Err(_) => Err(OpenError::Destination(format!(
                "no session with {addr} within {:?}",
                self.timeout
            ))),
        }
    }

    fn in_fallback(&self, destination: &Destination) -> bool {
        let until = destination.plaintext_until.load(Ordering::Relaxed);
        until != 0 && self.epoch.elapsed().as_secs() < until
    }

    /// Plaintext to this destination for `fallback`: logged and counted.
    fn fall_back(&self, destination: &Destination, addr: SocketAddr, host: &str, error: &str) {
        let until = self.epoch.elapsed().as_secs() + self.fallback.as_secs().max(1);
        destination.plaintext_until.store(until, Ordering::Relaxed);
        self.fallbacks.inc();
        tracing::warn!(
            %addr, %host,
            "STARTTLS failed ({error}): sending plaintext to this destination for {:?}, then trying STARTTLS again",
            self.fallback
        );
    }

    fn take_idle(&self, destination: &Destination) -> Option<AsyncSmtpConnection> {
        let mut idle = destination.idle.lock();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < IDLE && !entry.conn.has_broken() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// One SMTP transaction with the server at `addr` (named `host`),
    /// through `via`'s egress source when given.
    pub async fn send(
        &self,
        addr: SocketAddr,
        host: &str,
        envelope: &Envelope,
        data: &[u8],
        via: Option<&Via>,
        tls: StartTls,
    ) -> Reply {
        let destination = self.destination(addr, host, via, tls);
        let Ok(_slot) = destination.slots.clone().acquire_owned().await else {
            return Reply::Unreachable("the destination was closed".into());
        };
        // A pooled connection may have been closed by the server meanwhile:
        // then one more try on a new connection.
        let mut pooled = self.take_idle(&destination);
        let mut tls_retry = true;
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => match self.connect(&destination, addr, host, via, tls).await {
                    Ok(conn) => conn,
                    Err(OpenError::Source(e)) => return Reply::SourceDown(e),
                    Err(OpenError::Destination(e)) => {
                        if tls_retry && self.in_fallback(&destination) {
                            tls_retry = false;
                            continue;
                        }
                        return Reply::Unreachable(e);
                    }
                },
            };
            let result = tokio::time::timeout(self.timeout * 2, conn.send(envelope, data)).await;
            match result {
                Ok(Ok(response)) => {
                    if !conn.has_broken() {
                        destination.idle.lock().push(Idle {
                            conn,
                            since: Instant::now(),
                        });
                    }
                    return Reply::Accepted {
                        code: response.code().into(),
                        text: reply_text(&response),
                    };
                }
                Ok(Err(e)) => {
                    if reused && !e.is_response() {
                        continue;
                    }
                    let code = e.status().map(u16::from).unwrap_or(0);
                    let text = e.to_string();
                    return if e.is_permanent() {
                        Reply::Permanent { code, text }
                    } else if e.is_transient() {
                        Reply::Transient { code, text }
                    } else {
                        Reply::Unreachable(text)
                    };
                }
                Err(_) => {
                    return Reply::Unreachable(format!(
                        "{addr} did not finish the transaction within {:?}",
                        self.timeout * 2
                    ))
                }
            }
        }
    }

    /// Closes every pooled connection (QUIT).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Destination>> = self.destinations.lock().drain().map(|(_, d)| d).collect();
        for d in all {
            let idle = std::mem::take(&mut *d.idle.lock());
            for mut entry in idle {
                let _ = tokio::time::timeout(Duration::from_secs(1), entry.conn.quit()).await;
            }
        }
    }
}
