//! Driving the real `local-cluster` executable from a test: each test gets
//! its own 127.5.<net>.0/24 (infrastructure on .1, MTAs from .11) and a
//! state dir in a temp folder, and real clients talk to it.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use integration::ClusterInfo;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

pub const BIN: &str = env!("CARGO_BIN_EXE_local-cluster");

/// A running local cluster, stopped (SIGTERM) when dropped.
pub struct Cluster {
    pub child: Option<Child>,
    pub info: ClusterInfo,
    dir: Option<tempfile::TempDir>,
    pub net: u8,
    output: PathBuf,
}

pub use integration::supervisor::send_signal;
pub const SIGKILL: i32 = libc::SIGKILL;
pub const SIGTERM: i32 = libc::SIGTERM;

static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Cluster {
    /// Starts a cluster on 127.5.`net`.0/24 with `extra` options and waits
    /// (bounded) for its cluster.json.
    pub fn start(net: u8, extra: &[&str]) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        Self::start_in(dir, net, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, net: u8, extra: &[&str]) -> anyhow::Result<Cluster> {
        let state = dir.path().join("state");
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let output = dir.path().join(format!("local-cluster-{n}.out"));
        let out = std::fs::File::create(&output)?;
        let mut child = Command::new(BIN)
            .arg("--state-dir")
            .arg(&state)
            .args(["--address", &format!("127.5.{net}.1")])
            .args(["--mta-base", &format!("127.5.{net}.11")])
            .args(["--ready-timeout", "60"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start local-cluster")?;
        let started = Instant::now();
        let info = loop {
            if let Ok(info) = ClusterInfo::load(&state) {
                if info.supervisor_pid == child.id() {
                    break info;
                }
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "local-cluster exited ({status}) before it was up:\n{}",
                    std::fs::read_to_string(&output).unwrap_or_default()
                );
            }
            if started.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                anyhow::bail!(
                    "local-cluster was not up within 90s:\n{}",
                    std::fs::read_to_string(&output).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(Cluster {
            child: Some(child),
            info,
            dir: Some(dir),
            net,
            output,
        })
    }

    /// Stops the cluster and hands over its folder, to start it again.
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        let _ = self.stop();
        self.dir.take().expect("the cluster's folder")
    }

    pub fn state_dir(&self) -> &Path {
        &self.info.state_dir
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Re-reads cluster.json (pids change on restarts).
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        self.info = ClusterInfo::load(&self.info.state_dir)?;
        Ok(())
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.info
            .process(name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .pid
    }

    pub fn mta_addresses(&self) -> Vec<Ipv4Addr> {
        self.info.mtas().map(|p| p.address).collect()
    }

    pub fn kill9(&self, name: &str) {
        assert!(send_signal(self.pid(name), SIGKILL), "kill -9 {name}");
    }

    /// Runs `local-cluster <args> --state-dir <dir>` (an ops command).
    pub fn ops(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(BIN)
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(
            output.status.success(),
            "local-cluster {args:?} failed: {text}"
        );
        Ok(text)
    }

    /// The addresses lb-dns answers for the cluster hostname, sorted.
    pub async fn resolve(&self) -> anyhow::Result<Vec<Ipv4Addr>> {
        let dns = SocketAddr::from((self.info.dns.address, self.info.dns.port));
        integration::ready::addresses(dns, &self.info.cluster.hostname).await
    }

    pub async fn resolve_set(&self) -> BTreeSet<Ipv4Addr> {
        self.resolve()
            .await
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// healthd's state of `name` (`up`, `down`, ...).
    pub async fn health(&self, name: &str) -> Option<String> {
        let feed = integration::ready::feed(&self.info.healthd.url, &self.info.healthd.admin_token)
            .await
            .ok()?;
        feed.clusters
            .iter()
            .flat_map(|c| c.mtas.iter())
            .find(|m| m.name == name)
            .map(|m| m.state.as_str().to_string())
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.info.ca_file).expect("the CA file")
    }

    /// An SMTP client for one MTA: STARTTLS required, the certificate
    /// verified against the cluster CA with the cluster hostname, AUTH PLAIN.
    pub fn smtp(&self, address: Ipv4Addr) -> AsyncSmtpTransport<Tokio1Executor> {
        self.smtp_as(
            address,
            &self.info.credential.username,
            &self.info.credential.password,
        )
    }

    /// As [`Cluster::smtp`], authenticating as `username` with `password`.
    pub fn smtp_as(
        &self,
        address: Ipv4Addr,
        username: &str,
        password: &str,
    ) -> AsyncSmtpTransport<Tokio1Executor> {
        let tls = TlsParameters::builder(self.info.cluster.hostname.clone())
            .add_root_certificate(Certificate::from_pem(&self.ca_pem()).expect("CA PEM"))
            .build_rustls()
            .expect("TLS parameters");
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.to_string())
            .port(self.info.cluster.smtp_ports[0])
            .tls(Tls::Required(tls))
            .credentials(Credentials::new(username.to_string(), password.to_string()))
            .authentication(vec![Mechanism::Plain])
            .timeout(Some(Duration::from_secs(10)))
            .build()
    }

    /// A message from the sender domain to example.com, its Subject `tag`.
    pub fn message(&self, tag: &str) -> Message {
        Message::builder()
            .from(
                format!("Test <sender@{}>", self.info.sender_domain)
                    .parse()
                    .unwrap(),
            )
            .to("someone@example.com".parse().unwrap())
            .subject(tag)
            .header(ContentType::TEXT_PLAIN)
            .body(format!("end-to-end test message {tag}\r\n"))
            .unwrap()
    }

    pub async fn send_smtp(&self, address: Ipv4Addr, tag: &str) -> anyhow::Result<()> {
        self.smtp(address)
            .send(self.message(tag))
            .await
            .map(|_| ())
            .with_context(|| format!("SMTP to {address}"))
    }

    /// HTTP injection to one MTA, TLS verified with the cluster hostname.
    pub async fn inject(&self, address: Ipv4Addr, tag: &str) -> anyhow::Result<serde_json::Value> {
        let port = self.info.cluster.https_port;
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem())?)
            .resolve(
                &self.info.cluster.hostname,
                SocketAddr::from((address, port)),
            )
            .timeout(Duration::from_secs(10))
            .build()?;
        let sender = format!("sender@{}", self.info.sender_domain);
        let response = client
            .post(&self.info.cluster.http_endpoint)
            .basic_auth(
                &self.info.credential.username,
                Some(&self.info.credential.password),
            )
            .json(&serde_json::json!({
                "envelope_sender": sender,
                "recipients": ["someone@example.net"],
                "content": {
                    "from": {"email": sender, "name": "Test"},
                    "subject": tag,
                    "text_body": format!("end-to-end injection {tag}"),
                }
            }))
            .send()
            .await
            .with_context(|| format!("HTTP injection to {address}"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "HTTP injection to {address}: {status} {body}"
        );
        Ok(body)
    }

    /// Every message file in the sink, as text.
    pub fn sink_messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.info.sink.maildir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect()
    }

    /// The sink's message whose Subject is `tag`.
    pub fn sink_message(&self, tag: &str) -> Option<String> {
        let line = format!("Subject: {tag}\r\n");
        self.sink_messages().into_iter().find(|m| m.contains(&line))
    }

    /// Waits until every tag has a message in the sink.
    pub async fn wait_delivered(&self, tags: &[String], limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let messages = self.sink_messages();
            let missing: Vec<&String> = tags
                .iter()
                .filter(|t| {
                    let line = format!("Subject: {t}\r\n");
                    !messages.iter().any(|m| m.contains(&line))
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < limit,
                "{} of {} messages not at the sink within {limit:?}: {:?}",
                missing.len(),
                tags.len(),
                &missing[..missing.len().min(10)]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then a bounded wait for the exit; returns its success.
    pub fn stop(&mut self) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        send_signal(child.id(), SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if start.elapsed() > Duration::from_secs(40) {
                let _ = child.kill();
                anyhow::bail!("local-cluster did not stop within 40s:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e:#}");
        }
        if std::thread::panicking() {
            eprintln!("local-cluster output:\n{}", self.output());
            for name in ["mta-1", "mta-2", "healthd", "lb-dns"] {
                let log = self.state_dir().join("logs").join(format!("{name}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- {name} (last lines)");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// True when something accepts TCP connections on `addr`.
pub fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}
