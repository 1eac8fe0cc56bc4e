//! One probe round against one MTA: SMTP with STARTTLS and HTTPS `/ready`,
//! side by side, each bounded by the probe timeout. Both must pass.

pub mod https;
pub mod smtp;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Where and as whom an MTA is probed. Two MTAs with equal targets are
/// probed the same way; a changed target is a new target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeTarget {
    /// The cluster hostname: SNI, and the name the certificate must carry.
    pub hostname: String,
    pub ipv4: Ipv4Addr,
    /// Served as AAAA by lb-dns, so SMTP is probed there too.
    pub ipv6: Option<Ipv6Addr>,
    pub smtp_port: u16,
    pub https_port: u16,
}

impl ProbeTarget {
    pub fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ipv4, self.smtp_port))
    }

    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ipv4, self.https_port))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Smtp,
    Https,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Smtp, Kind::Https];

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Smtp => "smtp",
            Kind::Https => "https",
        }
    }
}

/// What went wrong, coarsely, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Connect,
    Timeout,
    Protocol,
    Tls,
    Status,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Connect,
        Class::Timeout,
        Class::Protocol,
        Class::Tls,
        Class::Status,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Class::Connect => "connect",
            Class::Timeout => "timeout",
            Class::Protocol => "protocol",
            Class::Tls => "tls",
            Class::Status => "status",
        }
    }
}

/// A failed probe: its class and the reason in words
/// (`smtp: STARTTLS not offered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    pub class: Class,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The outcome of one round: each probe's latency or failure.
#[derive(Debug, Clone)]
pub struct Report {
    pub smtp: Result<Duration, Failure>,
    pub https: Result<Duration, Failure>,
    /// What a passing `/ready` said is degraded (a failing webhook, stale
    /// secrets), shown on the dashboard.
    pub degraded: Option<String>,
}

impl Report {
    /// The round's latency when both passed, else the first failure.
    pub fn verdict(&self) -> Result<Duration, &Failure> {
        match (&self.smtp, &self.https) {
            (Ok(a), Ok(b)) => Ok((*a).max(*b)),
            (Err(f), _) | (_, Err(f)) => Err(f),
        }
    }
}

/// Runs probe rounds; cheap to clone, one TLS configuration for all.
#[derive(Clone)]
pub struct Prober {
    tls: TlsConnector,
    timeout: Duration,
    ehlo: Arc<str>,
}

impl Prober {
    pub fn new(tls: Arc<rustls::ClientConfig>, timeout: Duration, ehlo: &str) -> Prober {
        Prober {
            tls: TlsConnector::from(tls),
            timeout,
            ehlo: ehlo.into(),
        }
    }

    /// One round; `kept` is the HTTPS connection the last round left open,
    /// and the one this round leaves comes back with the report.
    pub async fn probe(
        &self,
        target: &ProbeTarget,
        kept: Option<https::Kept>,
    ) -> (Report, Option<https::Kept>) {
        let (smtp, (https, kept)) =
            tokio::join!(self.smtp_everywhere(target), self.https(target, kept));
        let (https, degraded) = match https {
            Ok((latency, note)) => (Ok(latency), note),
            Err(failure) => (Err(failure), None),
        };
        let report = Report {
            smtp,
            https,
            degraded,
        };
        (report, kept)
    }

    /// SMTP on the IPv4 address and, when the MTA has one, the IPv6 one:
    /// a client may reach either.
    async fn smtp_everywhere(&self, target: &ProbeTarget) -> Result<Duration, Failure> {
        let Some(ipv6) = target.ipv6 else {
            return self.smtp(target, target.smtp_addr()).await;
        };
        let over_v6 = SocketAddr::from((ipv6, target.smtp_port));
        let (v4, v6) = tokio::join!(
            self.smtp(target, target.smtp_addr()),
            self.smtp(target, over_v6)
        );
        let v6 = v6.map_err(|failure| Failure {
            reason: format!("{} (over IPv6, {over_v6})", failure.reason),
            ..failure
        });
        Ok(v4?.max(v6?))
    }

    async fn smtp(&self, target: &ProbeTarget, addr: SocketAddr) -> Result<Duration, Failure> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let conversation = smtp::Conversation {
            tls: &self.tls,
            server_name: server_name(target)?,
            hostname: &target.hostname,
            ehlo: &self.ehlo,
            deadline,
            timeout: self.timeout,
        };
        conversation.run(addr).await?;
        Ok(started.elapsed())
    }

    async fn https(
        &self,
        target: &ProbeTarget,
        kept: Option<https::Kept>,
    ) -> (
        Result<(Duration, Option<String>), Failure>,
        Option<https::Kept>,
    ) {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let server_name = match server_name(target) {
            Ok(name) => name,
            Err(failure) => return (Err(failure), None),
        };
        let check = https::ReadyCheck {
            tls: &self.tls,
            server_name,
            hostname: &target.hostname,
            port: target.https_port,
            deadline,
            timeout: self.timeout,
        };
        let (result, kept) = check.run(target.https_addr(), kept).await;
        (result.map(|note| (started.elapsed(), note)), kept)
    }
}

fn server_name(target: &ProbeTarget) -> Result<ServerName<'static>, Failure> {
    ServerName::try_from(target.hostname.clone()).map_err(|_| Failure {
        kind: Kind::Smtp,
        class: Class::Tls,
        reason: format!("tls: `{}` is not a valid server name", target.hostname),
    })
}

/// `2s`, `900ms`: a timeout as a reason writes it.
pub fn words(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// A probe's TCP connection (without Nagle), bounded by its deadline.
pub(crate) async fn connect(
    addr: SocketAddr,
    deadline: tokio::time::Instant,
    kind: Kind,
    within: &str,
) -> Result<tokio::net::TcpStream, Failure> {
    let waiting = || format!("{}: no connection within {within}", kind.as_str());
    let tcp = until(deadline, kind, waiting, async {
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| connect_failure(kind, addr, &e))
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A probe's TLS handshake, bounded by its deadline, failures in words
/// (`tls: certificate not valid for …`).
pub(crate) async fn handshake(
    tls: &TlsConnector,
    server_name: ServerName<'static>,
    hostname: &str,
    tcp: tokio::net::TcpStream,
    deadline: tokio::time::Instant,
    kind: Kind,
    within: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Failure> {
    let waiting = || format!("tls: no handshake within {within}");
    until(deadline, kind, waiting, async {
        tls.connect(server_name, tcp).await.map_err(|e| Failure {
            kind,
            class: Class::Tls,
            reason: crate::tls::describe(&e, hostname),
        })
    })
    .await
}

/// Runs `io` until `deadline`; on time-out fails with `waiting` as the
/// reason (`smtp: no 220 banner within 2s`).
pub(crate) async fn until<T>(
    deadline: tokio::time::Instant,
    kind: Kind,
    waiting: impl FnOnce() -> String,
    io: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout_at(deadline, io).await {
        Ok(result) => result,
        Err(_) => Err(Failure {
            kind,
            class: Class::Timeout,
            reason: waiting(),
        }),
    }
}

/// A failed TCP connect, in words.
pub(crate) fn connect_failure(kind: Kind, addr: SocketAddr, error: &std::io::Error) -> Failure {
    let reason = match error.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("{}: connection refused", kind.as_str()),
        _ => format!("{}: cannot connect to {addr}: {error}", kind.as_str()),
    };
    Failure {
        kind,
        class: Class::Connect,
        reason,
    }
}
