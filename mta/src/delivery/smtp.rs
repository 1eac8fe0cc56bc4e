//! SMTP out, with lettre: one pooled transport per destination address
//! (connections are reused for the next messages) and a bound on attempts at
//! once to each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Semaphore;

use super::config::StartTls;

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
}

struct Destination {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    slots: Arc<Semaphore>,
    last_used: AtomicU64,
}

pub struct Connector {
    hello: String,
    starttls: StartTls,
    per_destination: usize,
    timeout: Duration,
    epoch: Instant,
    destinations: Mutex<HashMap<(SocketAddr, String), Arc<Destination>>>,
}

/// Destinations unused this long are dropped (with their connections).
const IDLE: Duration = Duration::from_secs(300);

fn reply_text(response: &lettre::transport::smtp::response::Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    format!("{} {}", u16::from(response.code()), lines.join(" "))
}

impl Connector {
    pub fn new(
        hello: String,
        starttls: StartTls,
        per_destination: usize,
        timeout: Duration,
    ) -> Self {
        Connector {
            hello,
            starttls,
            per_destination,
            timeout,
            epoch: Instant::now(),
            destinations: Mutex::new(HashMap::new()),
        }
    }

    pub fn hello(&self) -> &str {
        &self.hello
    }

    fn destination(&self, addr: SocketAddr, host: &str) -> Result<Arc<Destination>, String> {
        let mut map = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.epoch.elapsed().as_secs();
        if let Some(d) = map.get(&(addr, host.to_string())) {
            d.last_used.store(now, Ordering::Relaxed);
            return Ok(d.clone());
        }
        if map.len() >= 256 {
            map.retain(|_, d| {
                now.saturating_sub(d.last_used.load(Ordering::Relaxed)) < IDLE.as_secs()
                    || Arc::strong_count(d) > 1
            });
        }
        let tls = match self.starttls {
            StartTls::Disabled => Tls::None,
            StartTls::Opportunistic => Tls::Opportunistic(
                TlsParameters::builder(host.to_string())
                    .dangerous_accept_invalid_certs(true)
                    .dangerous_accept_invalid_hostnames(true)
                    .build_rustls()
                    .map_err(|e| format!("TLS settings for {host}: {e}"))?,
            ),
        };
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
                .port(addr.port())
                .tls(tls)
                .hello_name(ClientId::Domain(self.hello.clone()))
                .timeout(Some(self.timeout))
                .pool_config(
                    PoolConfig::new()
                        .max_size(self.per_destination as u32)
                        .idle_timeout(Duration::from_secs(60)),
                )
                .build();
        let d = Arc::new(Destination {
            transport,
            slots: Arc::new(Semaphore::new(self.per_destination)),
            last_used: AtomicU64::new(now),
        });
        map.insert((addr, host.to_string()), d.clone());
        Ok(d)
    }

    /// One SMTP transaction with the server at `addr` (named `host`).
    pub async fn send(
        &self,
        addr: SocketAddr,
        host: &str,
        envelope: &Envelope,
        data: &[u8],
    ) -> Reply {
        let destination = match self.destination(addr, host) {
            Ok(d) => d,
            Err(e) => return Reply::Unreachable(e),
        };
        let Ok(_slot) = destination.slots.clone().acquire_owned().await else {
            return Reply::Unreachable("the destination was closed".into());
        };
        match destination.transport.send_raw(envelope, data).await {
            Ok(response) => Reply::Accepted {
                code: response.code().into(),
                text: reply_text(&response),
            },
            Err(e) => {
                let code = e.status().map(u16::from).unwrap_or(0);
                let text = e.to_string();
                if e.is_permanent() {
                    Reply::Permanent { code, text }
                } else if e.is_transient() {
                    Reply::Transient { code, text }
                } else {
                    Reply::Unreachable(text)
                }
            }
        }
    }

    /// Closes every pooled connection (QUIT).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Destination>> = self
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, d)| d)
            .collect();
        for d in all {
            d.transport.shutdown().await;
        }
    }
}
