//! What the multi-host tests share: starting a fleet in network namespaces
//! (or saying clearly why not), and the client host's real clients: a stub
//! resolver that asks both lb-dns and caches for the TTL, SMTP (lettre,
//! STARTTLS verified, AUTH PLAIN) and HTTP injection (reqwest, TLS verified),
//! each message on a fresh connection.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hickory_resolver::proto::rr::RecordType;
use integration::hosts::configs::{self, SENDER_DOMAIN};
use integration::hosts::{inside, netns, HostsFleet};

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use parking_lot::Mutex;

pub const BIN: &str = env!("CARGO_BIN_EXE_local-cluster");

/// One fleet at a time: the machine has few cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the one-fleet-at-a-time lock.
pub fn serial() -> parking_lot::MutexGuard<'static, ()> {
    SERIAL.lock()
}

pub struct Setup {
    pub fleet: HostsFleet,
    _dir: tempfile::TempDir,
    _serial: parking_lot::MutexGuard<'static, ()>,
}

impl Setup {
    /// A fleet of 3 MTAs, every one answered by both lb-dns, one fleet at
    /// a time. Its network namespaces are built inside a user, network and
    /// mount namespace of the test's own (`fleet::testkit::namespace`):
    /// `None` in the test's first run, which ran the test there and passed.
    pub async fn start(test: &str) -> Option<Setup> {
        let serial = SERIAL.lock();
        if !fleet::testkit::namespace::inside() {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let fleet = HostsFleet::start(std::path::Path::new(BIN), dir.path(), 3)
            .expect("the multi-host fleet starts");
        let setup = Setup {
            fleet,
            _dir: dir,
            _serial: serial,
        };
        let took = (setup.fleet.wait_ready(Duration::from_secs(90)).await)
            .unwrap_or_else(|e| setup.fail(e));
        println!(
            "{test}: fleet up on {} hosts, every MTA up and answered after {took:.1?}",
            setup.fleet.topology.hosts.len()
        );
        Some(setup)
    }

    /// Panics with `error` and the tail of every daemon's log.
    pub fn fail(&self, error: anyhow::Error) -> ! {
        for host in &self.fleet.topology.hosts {
            eprintln!(
                "--- {} (last lines)\n{}",
                host.name,
                self.fleet.log_tail(&host.name, 12)
            );
        }
        panic!("{error:#}");
    }

    pub fn client_ns(&self) -> String {
        self.fleet.network.ns(&self.fleet.topology.client().name)
    }

    /// `program args` on the client host; its stdout, or an error with
    /// its stderr.
    pub fn on_client(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let client = &self.fleet.topology.client().name;
        netns::stdout_of(self.fleet.network.command(client, program).args(args))
    }

    pub fn client(&self) -> Client {
        Client {
            hostname: self.fleet.secrets.hostname(),
            username: self.fleet.secrets.username.clone(),
            password: self.fleet.secrets.password.clone(),
            ca_pem: std::fs::read(self.fleet.files.ca()).expect("the CA"),
            lb_dns: (self.fleet.topology.lb_dns().iter())
                .map(|h| SocketAddr::new(IpAddr::V4(h.ipv4), 53))
                .collect(),
            cache: Arc::new(Mutex::new(None)),
            turn: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many sink messages carry each Subject starting with `prefix`.
    pub fn delivered(&self, prefix: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for message in self.fleet.sink_messages() {
            if let Some(subject) = subject(&message) {
                if subject.starts_with(prefix) {
                    *counts.entry(subject).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Waits until every tag is at the sink; the counts per tag.
    pub async fn wait_delivered(
        &self,
        prefix: &str,
        tags: &[String],
        bound: Duration,
    ) -> BTreeMap<String, usize> {
        let start = Instant::now();
        loop {
            let counts = self.delivered(prefix);
            let missing: Vec<&String> = tags.iter().filter(|t| !counts.contains_key(*t)).collect();
            if missing.is_empty() {
                return counts;
            }
            if start.elapsed() > bound {
                self.fail(anyhow::anyhow!(
                    "{} of {} acknowledged messages not delivered within {bound:?}: {:?}",
                    missing.len(),
                    tags.len(),
                    &missing[..missing.len().min(10)]
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One message at the sink: when it arrived (the file's millis), its
/// Subject and the address it came from (`X-Sink-Peer`).
#[derive(Debug, Clone)]
pub struct Arrival {
    pub millis: u64,
    pub subject: String,
    pub peer: IpAddr,
}

impl Setup {
    /// The sink's messages whose Subject starts with `prefix`, in order of
    /// arrival.
    pub fn arrivals(&self, prefix: &str) -> Vec<Arrival> {
        let Ok(entries) = std::fs::read_dir(self.fleet.files.sink_dir()) else {
            return Vec::new();
        };
        let mut files: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        let mut arrivals = Vec::new();
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let millis = (file.file_name().and_then(|n| n.to_str()))
                .and_then(|n| n.split('-').next()?.parse().ok())
                .unwrap_or_default();
            let peer =
                (text.lines()).find_map(|l| l.strip_prefix("X-Sink-Peer: ")?.trim().parse().ok());
            match (subject(&text), peer) {
                (Some(subject), Some(peer)) if subject.starts_with(prefix) => {
                    arrivals.push(Arrival {
                        millis,
                        subject,
                        peer,
                    })
                }
                _ => {}
            }
        }
        arrivals
    }

    /// Delivery events per egress source name, from every MTA's event log.
    pub fn delivery_sources(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for mta in self.fleet.topology.mtas() {
            let dir = self
                .fleet
                .files
                .root
                .join("var")
                .join(&mta.name)
                .join("events");
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                // `<sequence> <crc32> <event JSON>` per line.
                for line in text.lines() {
                    let json = line.splitn(3, ' ').nth(2).unwrap_or_default();
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(json) else {
                        continue;
                    };
                    if event["type"] == "Delivery" {
                        let source = event["egress_source"].as_str().unwrap_or("none");
                        *counts.entry(source.to_string()).or_default() += 1;
                    }
                }
            }
        }
        counts
    }
}

/// The state healthd `hd` reports for `mta`, asked from the client host.
pub async fn healthd_state(setup: &Setup, hd: &str, mta: &str) -> Option<String> {
    setup.fleet.healthd_state(hd, mta).await
}

pub async fn wait_healthd_state(setup: &Setup, hd: &str, mta: &str, state: &str) {
    let start = Instant::now();
    while healthd_state(setup, hd, mta).await.as_deref() != Some(state) {
        if start.elapsed() > Duration::from_secs(30) {
            setup.fail(anyhow::anyhow!("{hd} never saw {mta} {state}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn subject(message: &str) -> Option<String> {
    message
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .map(|s| s.trim().to_string())
}

/// When the cluster's addresses were asked for, and what they were.
type Answer = (Instant, Vec<IpAddr>);

/// A client on the client host; clone it into each worker.
#[derive(Clone)]
pub struct Client {
    pub hostname: String,
    username: String,
    password: String,
    ca_pem: Vec<u8>,
    lb_dns: Vec<SocketAddr>,
    cache: Arc<Mutex<Option<Answer>>>,
    turn: Arc<AtomicUsize>,
}

impl Client {
    /// The cluster's IPv4 addresses, from the cache while the TTL lasts,
    /// else from the first lb-dns that answers.
    pub async fn resolve(&self) -> anyhow::Result<Vec<IpAddr>> {
        if let Some((at, addresses)) = self.cache.lock().clone() {
            if at.elapsed() < Duration::from_secs(configs::TTL.into()) && !addresses.is_empty() {
                return Ok(addresses);
            }
        }
        let name = format!("{}.", self.hostname);
        for server in &self.lb_dns {
            if let Some(addresses) = mta::planned_stop::ask(*server, &name, RecordType::A).await {
                if !addresses.is_empty() {
                    *self.cache.lock() = Some((Instant::now(), addresses.clone()));
                    return Ok(addresses);
                }
            }
        }
        anyhow::bail!("no lb-dns answered for {name}")
    }

    /// One address of the cluster, taking turns.
    pub async fn pick(&self) -> anyhow::Result<IpAddr> {
        let addresses = self.resolve().await?;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Ok(addresses[turn % addresses.len()])
    }

    pub async fn send_smtp(&self, address: IpAddr, port: u16, tag: &str) -> anyhow::Result<()> {
        let tls = TlsParameters::builder(self.hostname.clone())
            .add_root_certificate(Certificate::from_pem(&self.ca_pem)?)
            .build_rustls()?;
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.to_string())
                .port(port)
                .tls(Tls::Required(tls))
                .credentials(Credentials::new(
                    self.username.clone(),
                    self.password.clone(),
                ))
                .authentication(vec![Mechanism::Plain])
                .timeout(Some(Duration::from_secs(20)))
                .build();
        let message = Message::builder()
            .from(format!("Hosts test <hello@{SENDER_DOMAIN}>").parse()?)
            .to("someone@example.com".parse()?)
            .subject(tag)
            .header(ContentType::TEXT_PLAIN)
            .body(format!("multi-host test message {tag}\r\n"))?;
        transport
            .send(message)
            .await
            .with_context(|| format!("SMTP to {address}:{port}"))?;
        Ok(())
    }

    pub async fn inject(&self, address: IpAddr, tag: &str) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem)?)
            .resolve(
                &self.hostname,
                SocketAddr::new(address, configs::HTTPS_PORT),
            )
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()?;
        let sender = format!("hello@{SENDER_DOMAIN}");
        let response = client
            .post(format!("https://{}/api/inject/v1", self.hostname))
            .basic_auth(&self.username, Some(&self.password))
            .json(&serde_json::json!({
                "envelope_sender": sender,
                "recipients": ["someone@example.net"],
                "content": {"from": {"email": sender, "name": "Hosts test"},
                            "subject": tag, "text_body": "multi-host injection"}
            }))
            .send()
            .await
            .with_context(|| format!("HTTP injection to {address}"))?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "HTTP injection to {address}: {status}");
        Ok(())
    }
}

/// What the load's clients saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Tags of acknowledged messages.
    pub acked: Vec<String>,
    /// (when, what) of every failed attempt.
    pub errors: Vec<(Instant, String)>,
    /// Acknowledged messages per MTA address.
    pub per_address: BTreeMap<IpAddr, usize>,
}

/// Constant load from the client host: `smtp` SMTP workers and `http` HTTP
/// workers, each sending one message after the other (fresh connection,
/// address from the TTL-cached answers) until `stop`.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<LoadReport>>,
}

impl Load {
    pub fn start(setup: &Setup, prefix: &str, smtp: usize, http: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = setup.client();
        let ns = setup.client_ns();
        let (prefix, stopping) = (prefix.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            inside::block_on_in(&ns, move || async move {
                let report = Arc::new(Mutex::new(LoadReport::default()));
                let mut workers = Vec::new();
                for w in 0..smtp + http {
                    let (client, report, stop) = (client.clone(), report.clone(), stopping.clone());
                    let tag = format!("{prefix}-w{w}");
                    workers.push(tokio::spawn(worker(client, report, stop, tag, w < smtp)));
                }
                for worker in workers {
                    let _ = worker.await;
                }
                let report = report.lock().clone();
                Ok(report)
            })
        });
        Load { stop, thread }
    }

    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("the load thread")
            .expect("the load ran")
    }
}

fn record(
    report: &Mutex<LoadReport>,
    tag: String,
    result: Result<IpAddr, (Option<IpAddr>, anyhow::Error)>,
) {
    let mut report = report.lock();
    match result {
        Ok(address) => {
            report.acked.push(tag);
            *report.per_address.entry(address).or_default() += 1;
        }
        Err((address, e)) => {
            let error = format!("{address:?}: {e:#}");
            report.errors.push((Instant::now(), error));
        }
    }
}

async fn worker(
    client: Client,
    report: Arc<Mutex<LoadReport>>,
    stop: Arc<AtomicBool>,
    tag: String,
    smtp: bool,
) {
    let ports = configs::SMTP_PORTS;
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let tag = format!("{tag}-{n}");
        let result = match client.pick().await {
            Err(e) => Err((None, e)),
            Ok(address) => {
                let sent = if smtp {
                    client
                        .send_smtp(address, ports[n % ports.len()], &tag)
                        .await
                } else {
                    client.inject(address, &tag).await
                };
                sent.map(|()| address).map_err(|e| (Some(address), e))
            }
        };
        record(&report, tag, result);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
