//! A scripted fake MTA for healthd's tests and benchmark: SMTP with
//! STARTTLS on one port and HTTPS `/ready` on another, at one loopback
//! address. What it answers can be changed while it runs, and it counts
//! the connections it receives.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// TLS handshakes the fakes of this process completed, full and resumed.
pub static FULL_HANDSHAKES: AtomicU64 = AtomicU64::new(0);
pub static RESUMED_HANDSHAKES: AtomicU64 = AtomicU64::new(0);

fn count_handshake(kind: Option<rustls::HandshakeKind>) {
    let counter = match kind {
        Some(rustls::HandshakeKind::Resumed) => &RESUMED_HANDSHAKES,
        _ => &FULL_HANDSHAKES,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How the fake answers; change it with [`Fake::set`].
#[derive(Debug, Clone)]
pub struct Script {
    /// Never send the 220 banner (hold the connection open).
    pub no_banner: bool,
    /// Wait this long before the banner and before the HTTPS answer.
    pub delay: Duration,
    pub offer_starttls: bool,
    pub ready_status: u16,
    pub ready_body: String,
    /// Send `/ready`'s body in chunks (`Transfer-Encoding: chunked`).
    pub ready_chunked: bool,
    /// Close the connection after each `/ready` answer (`Connection: close`).
    pub ready_close: bool,
    /// Wait this long before the HTTPS answer only.
    pub ready_delay: Duration,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            no_banner: false,
            delay: Duration::ZERO,
            offer_starttls: true,
            ready_status: 200,
            ready_body: "ready".into(),
            ready_chunked: false,
            ready_close: false,
            ready_delay: Duration::ZERO,
        }
    }
}

pub fn server_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    // Stateless tickets: resumption without a server-side session cache
    // (whose lookups are linear), so the fakes stay cheap.
    config.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(config)
}

struct Shared {
    script: Mutex<Script>,
    tls: Mutex<TlsAcceptor>,
    smtp_connections: AtomicU64,
    https_connections: AtomicU64,
    https_requests: AtomicU64,
}

pub struct Fake {
    pub ip: IpAddr,
    pub smtp_port: u16,
    pub https_port: u16,
    shared: Arc<Shared>,
    serving: Option<JoinSet<()>>,
}

impl Fake {
    /// Starts serving SMTP and HTTPS on `ip`.
    pub async fn start(
        ip: IpAddr,
        smtp_port: u16,
        https_port: u16,
        tls: Arc<rustls::ServerConfig>,
    ) -> Fake {
        let mut fake = Fake {
            ip,
            smtp_port,
            https_port,
            shared: Arc::new(Shared {
                script: Mutex::new(Script::default()),
                tls: Mutex::new(TlsAcceptor::from(tls)),
                smtp_connections: AtomicU64::new(0),
                https_connections: AtomicU64::new(0),
                https_requests: AtomicU64::new(0),
            }),
            serving: None,
        };
        fake.resume().await;
        fake
    }

    pub fn set(&self, change: impl FnOnce(&mut Script)) {
        change(&mut self.shared.script.lock().unwrap());
    }

    pub fn set_tls(&self, tls: Arc<rustls::ServerConfig>) {
        *self.shared.tls.lock().unwrap() = TlsAcceptor::from(tls);
    }

    pub fn smtp_connections(&self) -> u64 {
        self.shared.smtp_connections.load(Ordering::SeqCst)
    }

    pub fn https_connections(&self) -> u64 {
        self.shared.https_connections.load(Ordering::SeqCst)
    }

    pub fn https_requests(&self) -> u64 {
        self.shared.https_requests.load(Ordering::SeqCst)
    }

    /// Closes both listeners and every open connection: it is dead.
    pub fn kill(&mut self) {
        self.serving = None;
    }

    /// Listens again on the same addresses.
    pub async fn resume(&mut self) {
        let smtp = bind(SocketAddr::new(self.ip, self.smtp_port)).await;
        let https = bind(SocketAddr::new(self.ip, self.https_port)).await;
        let mut serving = JoinSet::new();
        let shared = self.shared.clone();
        serving.spawn(accept(smtp, shared.clone(), Protocol::Smtp));
        serving.spawn(accept(https, shared, Protocol::Https));
        self.serving = Some(serving);
    }
}

async fn bind(addr: SocketAddr) -> TcpListener {
    // A killed fake's sockets may take a moment to go; retry briefly.
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fake MTA cannot listen on {addr}: {last:?}");
}

#[derive(Clone, Copy)]
enum Protocol {
    Smtp,
    Https,
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, protocol: Protocol) {
    // Connections live in this set: killing the fake ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let _ = match protocol {
                        Protocol::Smtp => smtp(stream, shared).await,
                        Protocol::Https => https(stream, shared).await,
                    };
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn smtp(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    shared.smtp_connections.fetch_add(1, Ordering::SeqCst);
    let script = shared.script.lock().unwrap().clone();
    let _ = stream.set_nodelay(true);
    let mut plain = BufReader::new(stream);
    if script.no_banner {
        let mut sink = Vec::new();
        let _ = plain.read_to_end(&mut sink).await;
        return Ok(());
    }
    if !script.delay.is_zero() {
        tokio::time::sleep(script.delay).await;
    }
    plain
        .get_mut()
        .write_all(b"220 fake.test ESMTP\r\n")
        .await?;
    let mut line = String::new();
    loop {
        let Some(verb) = read_verb(&mut plain, &mut line).await? else {
            return Ok(());
        };
        if verb.starts_with("EHLO") {
            let reply: &[u8] = if script.offer_starttls {
                b"250-fake.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
            } else {
                b"250-fake.test\r\n250 PIPELINING\r\n"
            };
            plain.get_mut().write_all(reply).await?;
        } else if verb == "STARTTLS" && script.offer_starttls {
            plain.get_mut().write_all(b"220 go ahead\r\n").await?;
            break;
        } else if verb == "QUIT" {
            plain.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            plain.get_mut().write_all(b"502 5.5.1 not here\r\n").await?;
        }
    }
    let acceptor = shared.tls.lock().unwrap().clone();
    let tls = acceptor.accept(plain.into_inner()).await?;
    count_handshake(tls.get_ref().1.handshake_kind());
    let mut secure = BufReader::new(tls);
    loop {
        let Some(verb) = read_verb(&mut secure, &mut line).await? else {
            return Ok(());
        };
        if verb.starts_with("EHLO") {
            secure
                .get_mut()
                .write_all(b"250-fake.test\r\n250 AUTH PLAIN\r\n")
                .await?;
        } else if verb == "QUIT" {
            secure.get_mut().write_all(b"221 bye\r\n").await?;
            secure.get_mut().shutdown().await?;
            return Ok(());
        } else {
            secure
                .get_mut()
                .write_all(b"502 5.5.1 not here\r\n")
                .await?;
        }
        secure.get_mut().flush().await?;
    }
}

/// The next command line, upper-cased; `None` when the client is gone.
async fn read_verb(
    stream: &mut (impl AsyncBufReadExt + Unpin),
    line: &mut String,
) -> std::io::Result<Option<String>> {
    line.clear();
    if stream.read_line(line).await? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim().to_ascii_uppercase()))
}

async fn https(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    shared.https_connections.fetch_add(1, Ordering::SeqCst);
    let _ = stream.set_nodelay(true);
    let acceptor = shared.tls.lock().unwrap().clone();
    let mut tls = acceptor.accept(stream).await?;
    count_handshake(tls.get_ref().1.handshake_kind());
    // HTTP/1.1 keep-alive: one answer per request until the client closes
    // or asks to.
    loop {
        let head = match read_head(&mut tls).await {
            Ok(head) => head,
            Err(_) => return Ok(()),
        };
        shared.https_requests.fetch_add(1, Ordering::SeqCst);
        let script = shared.script.lock().unwrap().clone();
        let close = script.ready_close || head.to_ascii_lowercase().contains("connection: close");
        let delay = script.delay + script.ready_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        tls.write_all(ready_answer(&script, close).as_bytes())
            .await?;
        if close {
            return tls.shutdown().await;
        }
    }
}

/// `/ready`'s answer as the script says: by length or in 1 KiB chunks.
fn ready_answer(script: &Script, close: bool) -> String {
    let body = format!("{}\n", script.ready_body);
    let mut answer = format!(
        "HTTP/1.1 {} X\r\nContent-Type: text/plain\r\n{}",
        script.ready_status,
        if close { "Connection: close\r\n" } else { "" }
    );
    if !script.ready_chunked {
        answer.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        return answer;
    }
    answer.push_str("Transfer-Encoding: chunked\r\n\r\n");
    for chunk in body.as_bytes().chunks(1024) {
        answer.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    answer.push_str("0\r\n\r\n");
    answer
}

async fn read_head<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte: a fake need not be fast at this, and nothing of the
    // next request is read too early.
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await?;
        if n == 0 || buf.len() > 8192 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
