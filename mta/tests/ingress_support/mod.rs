//! What the ingress tests share: a node written into a temporary folder on
//! its own loopback address (127.1.<n>.11, fixed ports), started in-process
//! or as the real binary, and the clients that talk to it: a scripted raw
//! SMTP client, lettre, reqwest.

#![allow(dead_code)]

pub mod flood;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use fleet::testkit::{InProcess, LocalCa};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub use fleet::testkit::example_configs::EXAMPLE_HOSTNAME as HOSTNAME;
pub const USER: &str = "sender";
pub const PASSWORD: &str = "secret";
/// A credential of the other cluster.
pub const OTHER_USER: &str = "beta";
pub const OTHER_PASSWORD: &str = "beta-secret";
pub const SMTP_PORTS: [u16; 3] = [10587, 10025, 12587];
pub const HTTPS_PORT: u16 = 10443;
pub const LIMIT: Duration = Duration::from_secs(20);

fn hashes() -> &'static (String, String) {
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    HASHES.get_or_init(|| {
        (
            fleet::password::hash_password(PASSWORD).unwrap(),
            fleet::password::hash_password(OTHER_PASSWORD).unwrap(),
        )
    })
}

/// A node's files: fleet, node config, certificates, spool folder.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ip: Ipv4Addr,
    pub ca_pem: String,
}

impl Fixture {
    /// Node `mta-1` on 127.1.`n`.11; `smtp` is extra `[smtp]` lines.
    pub fn new(n: u8, smtp: &str) -> Fixture {
        let delivery = format!(
            r#"# Nothing is delivered, nothing leaves loopback: recipients stay queued.
[delivery]
hold = true
nameservers = ["127.1.{n}.53:53"]
routes = {{ "example.com" = "127.1.{n}.25:25" }}
dsn = false
retry_initial = "1h"
"#
        );
        Fixture::at([127, 1, n], smtp, &delivery)
    }

    /// The `[delivery]` section of a node on `net` that delivers
    /// example.com to the sink MX at `sink` (quick retries, no DSN).
    pub fn delivery_to_sink(net: [u8; 3], sink: SocketAddr) -> String {
        let [a, b, n] = net;
        format!(
            "[delivery]\nnameservers = [\"{a}.{b}.{n}.53:53\"]\n\
             routes = {{ \"example.com\" = \"{sink}\" }}\n\
             allow_networks = [\"127.0.0.0/8\"]\ndsn = false\nretry_initial = \"1s\"\n"
        )
    }

    /// Node `mta-1` on `net`.11 with its own `[delivery]` section (and
    /// whatever sections follow it).
    pub fn at(net: [u8; 3], smtp: &str, delivery: &str) -> Fixture {
        let [a, b, n] = net;
        let dir = tempfile::tempdir().unwrap();
        let ip = Ipv4Addr::new(a, b, n, 11);
        let other = Ipv4Addr::new(a, b, n, 12);
        let (hash, other_hash) = hashes();
        let ca = LocalCa::new("ingress test CA").unwrap();
        let issued = ca.issue(&[HOSTNAME, &ip.to_string()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &issued.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &issued.key_pem).unwrap();
        let fleet = fleet::testkit::FleetToml::new(Ipv4Addr::new(a, b, n, 53))
            .ports(&SMTP_PORTS, HTTPS_PORT)
            .cluster("a1b2c3d4", &["yourdomain.com", "news.yourdomain.com"])
            .credential(USER, hash)
            .set("  domains = [\"yourdomain.com\"]")
            .mta("mta-1", ip)
            .cluster("e5f6a7b8", &["beta.example.org"])
            .credential(OTHER_USER, other_hash)
            .mta("beta-1", other);
        std::fs::write(dir.path().join("fleet.toml"), fleet.to_string()).unwrap();
        std::fs::write(
            dir.path().join("mta.toml"),
            format!(
                r#"
fleet_file = "fleet.toml"
node = "mta-1"
spool_dir = "spool"
admin_listen = "{a}.{b}.{n}.1:0"
shutdown_grace = "5s"

[tls]
certificate = "cert.pem"
key = "key.pem"

[smtp]
auth_failure_delay = "10ms"
{smtp}

{delivery}
"#
            ),
        )
        .unwrap();
        Fixture {
            dir,
            ip,
            ca_pem: ca.cert_pem(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("mta.toml")
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), SMTP_PORTS[0])
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://{HOSTNAME}:{HTTPS_PORT}{path}")
    }

    /// Waits (bounded) until a node on this fixture answers `/ready` 200.
    pub async fn wait_ready(&self) {
        let client = self.http();
        let ready = self.https_url("/ready");
        fleet::testkit::process::eventually(LIMIT, "the mta answers /ready", || {
            let (client, ready) = (client.clone(), ready.clone());
            async move {
                client
                    .get(ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
        .unwrap();
    }

    /// [`Fixture::new`], then [`Fixture::start`]: the fixture and its node.
    pub async fn started(n: u8, smtp: &str) -> (Fixture, Running) {
        let fixture = Fixture::new(n, smtp);
        let node = fixture.start().await;
        (fixture, node)
    }

    /// Stops `node` and checks that nothing reached the spool (a test of
    /// what the node refuses).
    pub async fn stop_with_nothing_spooled(&self, node: Running) {
        node.stop().await;
        assert!(self.spooled().await.is_empty(), "something was spooled");
    }

    /// Starts the node in this process.
    pub async fn start(&self) -> Running {
        let settings = mta::Settings::load(&self.config()).unwrap();
        let listeners = mta::Listeners::bind(&settings).await.unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let daemon = InProcess::spawn(|control| mta::run(settings, listeners, control));
        // The listeners are bound: clients may connect at once.
        Running { daemon, admin }
    }

    /// lettre over STARTTLS with the test CA and the cluster hostname.
    pub fn lettre(&self, credentials: Option<(&str, &str)>) -> AsyncSmtpTransport<Tokio1Executor> {
        let tls = TlsParameters::builder(HOSTNAME.to_string())
            .add_root_certificate(Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build_rustls()
            .unwrap();
        self.lettre_with(credentials, Tls::Required(tls))
    }

    pub fn lettre_with(
        &self,
        credentials: Option<(&str, &str)>,
        tls: Tls,
    ) -> AsyncSmtpTransport<Tokio1Executor> {
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.ip.to_string())
                .port(SMTP_PORTS[0])
                .tls(tls)
                .timeout(Some(LIMIT));
        if let Some((user, password)) = credentials {
            builder = builder
                .credentials(Credentials::new(user.to_string(), password.to_string()))
                .authentication(vec![Mechanism::Plain]);
        }
        builder.build()
    }

    /// reqwest trusting the test CA, with the cluster hostname resolving
    /// to this node.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .resolve(HOSTNAME, SocketAddr::new(IpAddr::V4(self.ip), HTTPS_PORT))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    /// POSTs `body` to `/api/inject/v1` with the test credential: the status
    /// and the JSON answer (the raw text as a JSON string when it is not JSON).
    pub async fn inject(
        &self,
        body: &serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let response = self
            .http()
            .post(self.https_url("/api/inject/v1"))
            .basic_auth(USER, Some(PASSWORD))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let answer = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, answer)
    }

    /// Every message in the spool, read back through the spool's own
    /// recovery (the node must be stopped).
    pub async fn spooled(&self) -> Vec<mta::spool::StoredMessage> {
        spooled(&self.spool_dir()).await
    }
}

/// Every message in the spool at `dir`, by recovery.
pub async fn spooled(dir: &Path) -> Vec<mta::spool::StoredMessage> {
    let spool = mta::spool::Spool::open(dir).await.unwrap();
    let mut seen = BTreeMap::new();
    for job in spool.take_arrivals() {
        if let std::collections::btree_map::Entry::Vacant(entry) = seen.entry(job.seq) {
            entry.insert(spool.load(&job).await.unwrap());
        }
    }
    seen.into_values().collect()
}

/// A node running in this process.
pub struct Running {
    daemon: InProcess,
    pub admin: SocketAddr,
}

impl Running {
    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Starts the shutdown a SIGTERM starts.
    pub fn shutdown(&self) {
        self.daemon.shutdown();
    }

    /// What SIGHUP does.
    pub fn reload(&self) {
        self.daemon.reload();
    }

    pub async fn stop(self) {
        self.daemon.stop(LIMIT).await;
    }
}

/// One SMTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The first line's text after the code (e.g. `5.7.0 Must ...`).
    pub fn first(&self) -> &str {
        self.lines
            .first()
            .map(|l| l.get(4..).unwrap_or(""))
            .unwrap_or("")
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A scripted SMTP client that sends exactly the bytes it is told to.
pub struct Raw {
    stream: BufReader<Box<dyn Io>>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Raw {
            stream: BufReader::new(Box::new(stream)),
        }
    }

    /// Connects and reads the greeting, which must be a 220.
    pub async fn greeted(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let greeting = raw.reply().await;
        assert_eq!(greeting.code, 220, "{greeting:?}");
        raw
    }

    /// Connects from `source` (a loopback address of the test's range).
    pub async fn connect_from(addr: SocketAddr, source: IpAddr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = tokio::time::timeout(LIMIT, socket.connect(addr))
            .await
            .unwrap()
            .unwrap();
        Raw {
            stream: BufReader::new(Box::new(stream)),
        }
    }

    /// [`Raw::authenticated`] from `source`.
    pub async fn authenticated_from(fixture: &Fixture, source: IpAddr) -> Raw {
        Raw::authenticated_at(fixture.smtp_addr(), &fixture.ca_pem, source).await
    }

    /// [`Raw::authenticated`] to `addr` (trusting `ca_pem`) from `source`.
    pub async fn authenticated_at(addr: SocketAddr, ca_pem: &str, source: IpAddr) -> Raw {
        let raw = Raw::connect_from(addr, source).await;
        raw.handshake(ca_pem).await.auth_plain().await
    }

    /// [`Raw::secure`] from `source`.
    pub async fn secure_from(fixture: &Fixture, source: IpAddr) -> Raw {
        let raw = Raw::connect_from(fixture.smtp_addr(), source).await;
        raw.handshake(&fixture.ca_pem).await
    }

    /// Reads the banner, EHLO, STARTTLS, TLS (trusting `ca_pem`), EHLO again.
    async fn handshake(mut self, ca_pem: &str) -> Raw {
        assert_eq!(self.reply().await.code, 220);
        assert_eq!(self.cmd("EHLO client.example").await.code, 250);
        assert_eq!(self.cmd("STARTTLS").await.code, 220);
        let mut raw = self.tls(ca_pem).await;
        assert_eq!(raw.cmd("EHLO client.example").await.code, 250);
        raw
    }

    /// AUTH PLAIN as the test credential, which must succeed.
    async fn auth_plain(mut self) -> Raw {
        let reply = self
            .cmd(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
            .await;
        assert_eq!(reply.code, 235, "{reply:?}");
        self
    }

    /// Over any stream (an in-memory pipe in the session tests).
    pub fn over(stream: impl Io + 'static) -> Raw {
        Raw {
            stream: BufReader::new(Box::new(stream)),
        }
    }

    /// Connects, reads the banner, EHLO, STARTTLS, TLS, EHLO again.
    pub async fn secure(fixture: &Fixture) -> Raw {
        let raw = Raw::connect(fixture.smtp_addr()).await;
        raw.handshake(&fixture.ca_pem).await
    }

    /// [`Raw::secure`], then AUTH PLAIN as the test credential.
    pub async fn authenticated(fixture: &Fixture) -> Raw {
        Raw::secure(fixture).await.auth_plain().await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.send_within(bytes, LIMIT).await
    }

    /// [`Raw::send`] with its own limit (a node under a flood).
    pub async fn send_within(&mut self, bytes: &[u8], limit: Duration) {
        let stream = self.stream.get_mut();
        tokio::time::timeout(limit, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .expect("write within the limit")
        .unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn reply(&mut self) -> Reply {
        self.try_reply()
            .await
            .unwrap_or_else(|| panic!("no reply: connection closed"))
    }

    /// The next reply, or `None` at the end of the stream.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        self.try_reply_within(LIMIT).await
    }

    /// [`Raw::reply`] with its own limit (a node under a flood).
    pub async fn reply_within(&mut self, limit: Duration) -> Reply {
        self.try_reply_within(limit)
            .await
            .unwrap_or_else(|| panic!("no reply: connection closed"))
    }

    async fn try_reply_within(&mut self, limit: Duration) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(limit, self.stream.read_line(&mut line))
                .await
                .expect("a reply within the limit")
                .ok()?;
            if n == 0 {
                return None;
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .expect("a reply code");
            lines.push(line);
            if last {
                return Some(Reply { code, lines });
            }
        }
    }

    /// True when the server closes the connection (within the limit).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(LIMIT, self.stream.read_to_end(&mut rest)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }

    /// Nothing buffered from the server.
    pub fn nothing_buffered(&self) -> bool {
        self.stream.buffer().is_empty()
    }

    /// TLS over this connection (after a 220 to STARTTLS).
    pub async fn tls(self, ca_pem: &str) -> Raw {
        self.try_tls(ca_pem).await.expect("TLS handshake")
    }

    /// TLS trusting only `ca_pem`, SNI the cluster hostname; `None` when
    /// the handshake fails.
    pub async fn try_tls(self, ca_pem: &str) -> Option<Raw> {
        self.try_tls_served(ca_pem).await.map(|(raw, _)| raw)
    }

    /// [`Raw::try_tls`], and the leaf certificate the server presented.
    pub async fn try_tls_served(
        self,
        ca_pem: &str,
    ) -> Option<(Raw, rustls_pki_types::CertificateDer<'static>)> {
        assert!(
            self.nothing_buffered(),
            "the server sent more after its 220 to STARTTLS"
        );
        let stream = self.stream.into_inner();
        let tls = strict_tls(stream, ca_pem, &[]).await.ok()?;
        let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
        Some((
            Raw {
                stream: BufReader::new(Box::new(tls)),
            },
            leaf,
        ))
    }
}

/// TLS over `stream` with the strict client (rustls's default verifier)
/// trusting only `ca_pem`, SNI the cluster hostname, offering `alpn`.
pub async fn strict_tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> anyhow::Result<tokio_rustls::client::TlsStream<S>> {
    fleet::testkit::strict_tls::connect(stream, HOSTNAME, ca_pem, alpn).await
}

/// SASL PLAIN initial response.
pub fn plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// A small valid message from an allowed domain, with `marker` in Subject.
pub fn message(marker: &str) -> String {
    format!(
        "From: Sender <sender@yourdomain.com>\r\nTo: <rcpt@example.com>\r\nSubject: {marker}\r\n\r\nHello {marker}\r\n"
    )
}

/// One whole transaction on an authenticated raw connection; returns the
/// reply to the end of data.
pub async fn transaction(raw: &mut Raw, data: &[u8]) -> Reply {
    let reply = raw.cmd("MAIL FROM:<sender@yourdomain.com>").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let reply = raw.cmd("RCPT TO:<rcpt@example.com>").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let reply = raw.cmd("DATA").await;
    assert_eq!(reply.code, 354, "{reply:?}");
    raw.send(data).await;
    raw.send(b".\r\n").await;
    raw.reply().await
}

/// The seed's curl example.
pub fn seed_example() -> serde_json::Value {
    serde_json::json!({
        "envelope_sender": "bounces@yourdomain.com",
        "recipients": ["user@example.com"],
        "content": {
            "from": "sender@yourdomain.com",
            "subject": "Hello",
            "text_body": "Hello from unMTA"
        }
    })
}
