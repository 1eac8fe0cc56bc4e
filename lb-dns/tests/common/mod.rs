//! What lb-dns's tests share: a fleet written to a temp dir, lb-dns run
//! in-process on 127.4.<n>.1 (port 0), a fake healthd feed served with axum,
//! and small DNS clients (raw UDP/TCP with hickory-proto, hickory-resolver,
//! and `dig`).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet::testkit::process::eventually;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet::feed::{ClusterHealth, FleetHealth, MtaHealth, MtaState};
use fleet::testkit::InProcess;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as DnsQuery};
use hickory_proto::rr::{Name, RData, RecordType};
use lb_dns::{Listeners, Settings};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const ORIGIN: &str = "unmta.test";

#[derive(Clone)]
pub struct MtaSpec {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub weight: u32,
    pub drain: bool,
}

pub fn mta(name: &str, ipv4: &str) -> MtaSpec {
    MtaSpec {
        name: name.to_string(),
        ipv4: ipv4.parse().unwrap(),
        ipv6: None,
        weight: 1,
        drain: false,
    }
}

impl MtaSpec {
    pub fn v6(mut self, ipv6: &str) -> Self {
        self.ipv6 = Some(ipv6.parse().unwrap());
        self
    }
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
    pub fn drained(mut self) -> Self {
        self.drain = true;
        self
    }
}

#[derive(Clone)]
pub struct FleetSpec {
    pub max_answers: usize,
    pub when_all_down: &'static str,
    pub clusters: Vec<(String, Vec<MtaSpec>)>,
}

impl FleetSpec {
    /// Cluster `a1b2c3d4` with three MTAs (the first two with IPv6) and
    /// cluster `e5f6` with one MTA and no IPv6.
    pub fn standard() -> FleetSpec {
        FleetSpec {
            max_answers: 8,
            when_all_down: "serve_all",
            clusters: vec![
                (
                    "a1b2c3d4".into(),
                    vec![
                        mta("mta-1", "192.0.2.11").v6("2001:db8::11"),
                        mta("mta-2", "192.0.2.12").v6("2001:db8::12"),
                        mta("mta-3", "192.0.2.13"),
                    ],
                ),
                ("e5f6".into(), vec![mta("beta-1", "192.0.2.21")]),
            ],
        }
    }

    pub fn toml(&self) -> String {
        let mut s = format!(
            "[zone]\norigin = \"{ORIGIN}\"\nttl = 30\nmax_answers = {}\nwhen_all_down = \"{}\"\n\
             primary_ns = \"ns1.{ORIGIN}\"\nhostmaster = \"hostmaster.{ORIGIN}\"\n\
             nameservers = [ {{ name = \"ns1.{ORIGIN}\", ipv4 = \"192.0.2.53\", ipv6 = \"2001:db8::53\" }}, \
             {{ name = \"ns2.elsewhere.example\" }} ]\n\n",
            self.max_answers, self.when_all_down
        );
        for (id, mtas) in &self.clusters {
            s.push_str(&format!(
                "[[clusters]]\nid = \"{id}\"\ndomains = [\"{id}.example.com\"]\n\n"
            ));
            for m in mtas {
                s.push_str(&format!(
                    "  [[clusters.mtas]]\n  name = \"{}\"\n  ipv4 = \"{}\"\n  weight = {}\n  drain = {}\n",
                    m.name, m.ipv4, m.weight, m.drain
                ));
                if let Some(v6) = m.ipv6 {
                    s.push_str(&format!("  ipv6 = \"{v6}\"\n"));
                }
                s.push('\n');
            }
        }
        s
    }

    /// The feed healthd would serve for this fleet, every MTA in `state`.
    pub fn feed(&self, state: MtaState) -> FleetHealth {
        FleetHealth {
            instance: "fake-1".into(),
            generation: 1,
            clusters: self
                .clusters
                .iter()
                .map(|(id, mtas)| ClusterHealth {
                    id: id.clone(),
                    hostname: fleet::model::cluster_hostname(id, ORIGIN),
                    mtas: mtas
                        .iter()
                        .map(|m| MtaHealth {
                            name: m.name.clone(),
                            ipv4: m.ipv4,
                            ipv6: m.ipv6,
                            weight: m.weight,
                            state,
                            since: "2026-01-01T00:00:00Z".into(),
                            latency_ms: Some(1.0),
                            reason: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------- fake healthd

struct FeedState {
    health: Mutex<FleetHealth>,
    generation: watch::Sender<u64>,
    outage: CancellationToken,
    polls: Mutex<u64>,
}

/// A healthd feed the test controls: `GET /v1/fleet[?after=N]`, long-poll.
pub struct FakeHealthd {
    pub url: String,
    state: Arc<FeedState>,
}

#[derive(Deserialize)]
struct After {
    after: Option<u64>,
}

async fn fleet_feed(State(state): State<Arc<FeedState>>, Query(q): Query<After>) -> Response {
    *state.polls.lock().unwrap() += 1;
    if let Some(after) = q.after {
        let mut rx = state.generation.subscribe();
        tokio::select! {
            _ = rx.wait_for(|g| *g > after) => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = state.outage.cancelled() => {}
        }
    }
    if state.outage.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "outage").into_response();
    }
    let health = state.health.lock().unwrap().clone();
    Json(health).into_response()
}

impl FakeHealthd {
    pub async fn start(ip: &str, initial: FleetHealth) -> FakeHealthd {
        let listener = tokio::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FeedState {
            generation: watch::channel(initial.generation).0,
            health: Mutex::new(initial),
            outage: CancellationToken::new(),
            polls: Mutex::new(0),
        });
        let app = Router::new()
            .route("/v1/fleet", get(fleet_feed))
            .with_state(state.clone());
        let outage = state.outage.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { outage.cancelled().await })
                .await
                .unwrap();
        });
        FakeHealthd {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Sets one MTA's state and publishes a new generation.
    pub fn set(&self, mta: &str, new: MtaState) {
        let mut health = self.state.health.lock().unwrap();
        let mut found = false;
        for m in health.clusters.iter_mut().flat_map(|c| c.mtas.iter_mut()) {
            if m.name == mta {
                m.state = new;
                found = true;
            }
        }
        assert!(found, "no MTA {mta} in the feed");
        health.generation += 1;
        self.state.generation.send_replace(health.generation);
    }

    pub fn polls(&self) -> u64 {
        *self.state.polls.lock().unwrap()
    }

    /// healthd goes away: open long-polls fail, new connections are refused.
    pub fn outage(&self) {
        self.state.outage.cancel();
    }
}

// ---------------------------------------------------------------- lb-dns

pub struct LbDns {
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    daemon: InProcess,
    _tmp: Option<tempfile::TempDir>,
}

/// Writes `fleet.toml` and `lb-dns.toml` in `dir`; returns the config path.
pub fn write_config(dir: &Path, ip: &str, spec: &FleetSpec, feeds: &[String]) -> PathBuf {
    write_config_with(dir, ip, spec, feeds, "")
}

/// `write_config` with more node settings (`extra`, TOML lines).
pub fn write_config_with(
    dir: &Path,
    ip: &str,
    spec: &FleetSpec,
    feeds: &[String],
    extra: &str,
) -> PathBuf {
    std::fs::write(dir.join("fleet.toml"), spec.toml()).unwrap();
    let feeds: Vec<String> = feeds.iter().map(|f| format!("\"{f}\"")).collect();
    let config = format!(
        "fleet_file = \"fleet.toml\"\nlisten = [\"{ip}:0\"]\nadmin_listen = \"{ip}:0\"\n\
         healthd = [{}]\nstate_file = \"state/lb-dns.json\"\nudp_sockets = 2\n{extra}\n",
        feeds.join(", ")
    );
    let path = dir.join("lb-dns.toml");
    std::fs::write(&path, config).unwrap();
    path
}

impl LbDns {
    /// Starts lb-dns in-process on `ip` with a fresh temp dir.
    pub async fn start(ip: &str, spec: &FleetSpec, feeds: &[String]) -> LbDns {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut lb = LbDns::start_in(&dir, ip, spec, feeds).await;
        lb._tmp = Some(tmp);
        lb
    }

    /// Starts lb-dns with more node settings (`extra`, TOML lines).
    pub async fn start_with(ip: &str, spec: &FleetSpec, feeds: &[String], extra: &str) -> LbDns {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let config = write_config_with(&dir, ip, spec, feeds, extra);
        let mut lb = LbDns::start_config(&dir, &config).await;
        lb._tmp = Some(tmp);
        lb
    }

    /// [`LbDns::start_with`] the standard fleet and no feed.
    pub async fn standard_with(ip: &str, extra: &str) -> LbDns {
        LbDns::start_with(ip, &FleetSpec::standard(), &[], extra).await
    }

    /// Starts lb-dns with its files in `dir` (kept by the caller).
    pub async fn start_in(dir: &Path, ip: &str, spec: &FleetSpec, feeds: &[String]) -> LbDns {
        let config = write_config(dir, ip, spec, feeds);
        LbDns::start_config(dir, &config).await
    }

    async fn start_config(dir: &Path, config: &Path) -> LbDns {
        let settings = Settings::load(config).unwrap();
        let listeners = Listeners::bind(&settings).await.unwrap();
        let dns = listeners.dns_addrs()[0];
        let admin = listeners.admin.local_addr().unwrap();
        let daemon = InProcess::spawn(|control| lb_dns::run(settings, listeners, control));
        let lb = LbDns {
            dns,
            admin,
            dir: dir.to_path_buf(),
            daemon,
            _tmp: None,
        };
        let admin_url = format!("http://{admin}/ready");
        eventually(Duration::from_secs(5), "lb-dns ready", || async {
            matches!(reqwest::get(&admin_url).await, Ok(r) if r.status().is_success())
        })
        .await
        .unwrap();
        lb
    }

    pub async fn stop(self) {
        self.daemon.stop(Duration::from_secs(10)).await;
    }

    /// What SIGHUP does.
    pub fn reload(&self) {
        self.daemon.reload();
    }

    pub async fn http(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.http("/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A metric's value from `/metrics` (the first line starting with `series`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http("/metrics").await;
        fleet::testkit::promtool::sample(&body, series)
    }

    /// Queries answered so far with `qtype` and `rcode`
    /// (`lb_dns_queries_total`; 0 while the series is absent).
    pub async fn queries(&self, qtype: &str, rcode: &str) -> f64 {
        let series = format!("lb_dns_queries_total{{qtype=\"{qtype}\",rcode=\"{rcode}\"}}");
        self.metric(&series).await.unwrap_or(0.0)
    }

    pub async fn a(&self, name: &str) -> Vec<IpAddr> {
        addresses(&udp(self.dns, &query(name, RecordType::A)).await)
    }

    pub async fn aaaa(&self, name: &str) -> Vec<IpAddr> {
        addresses(&udp(self.dns, &query(name, RecordType::AAAA)).await)
    }
}

pub fn cluster(id: &str) -> String {
    format!("c-{id}.{ORIGIN}.")
}

// ---------------------------------------------------------------- DNS clients

pub fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.add_query(DnsQuery::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

pub fn with_edns(mut m: Message, payload: u16, version: u8) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    edns.set_version(version);
    m.set_edns(edns);
    m
}

/// Sends raw bytes over UDP; the raw answer, or `None` within 1 s.
pub async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((server.ip(), 0)).await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn udp(server: SocketAddr, m: &Message) -> Message {
    let bytes = m.to_vec().unwrap();
    let answer = udp_raw(server, &bytes)
        .await
        .unwrap_or_else(|| panic!("no UDP answer from {server}"));
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.id, m.metadata.id);
    answer
}

/// One query on an open TCP connection.
pub async fn tcp_exchange(stream: &mut TcpStream, m: &Message) -> Message {
    let bytes = m.to_vec().unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await.unwrap();
    let answer = Message::from_vec(&buf).unwrap();
    assert_eq!(answer.metadata.id, m.metadata.id);
    answer
}

pub async fn tcp(server: SocketAddr, m: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    tcp_exchange(&mut stream, m).await
}

pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

pub fn soa_serial(m: &Message) -> Option<u32> {
    m.answers
        .iter()
        .chain(&m.authorities)
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
}

/// Runs `dig` against `server` and returns its output.
pub async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=1", "+norecurse"])
        .args(args);
    let out = cmd.output().await.expect("dig is installed (dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A hickory-resolver that asks only `server`, over UDP (or TCP), without
/// a cache.
pub fn resolver(
    server: SocketAddr,
    tcp: bool,
) -> hickory_resolver::Resolver<hickory_resolver::net::runtime::TokioRuntimeProvider> {
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
    };
    let mut connection = if tcp {
        ConnectionConfig::tcp()
    } else {
        ConnectionConfig::udp()
    };
    connection.port = server.port();
    let mut ns = NameServerConfig::udp(server.ip());
    ns.connections = vec![connection];
    let config = ResolverConfig::from_name_servers(vec![ns]);
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.attempts = 1;
    opts.timeout = Duration::from_secs(2);
    opts.recursion_desired = false;
    hickory_resolver::Resolver::builder_with_config(
        config,
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap()
}

/// A-record lookup with hickory-resolver (UDP, no cache), sorted.
pub async fn resolve_a(server: SocketAddr, name: &str) -> Vec<IpAddr> {
    let lookup = resolver(server, false)
        .lookup(name, RecordType::A)
        .await
        .unwrap_or_else(|e| panic!("hickory-resolver {name} A: {e}"));
    let mut ips: Vec<IpAddr> = lookup
        .answers()
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    ips.sort();
    ips
}
