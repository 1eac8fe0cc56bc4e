//! Egress benchmarks (`cargo bench -p mta --bench egress [-- e2e|e2e-unsigned|held]`):
//!
//! - **e2e**: a node started in this process with `rate_limit = "unlimited"`,
//!   messages of 4 KB injected over SMTP (STARTTLS + AUTH, many connections,
//!   many messages per connection), durably spooled, delivered to a sink MX
//!   on loopback. Prints messages/s from the first injection to the last
//!   arrival at the sink. Also the same without SMTP: `spool.accept` ->
//!   delivery.
//! - **held**: 1,000,000 messages of 1 KB accepted into a spool whose rate
//!   limit (`1/hr`) holds them; prints RSS per held message, CPU used while
//!   holding, then the time for a fresh process to recover the spool until
//!   the whole queue is scheduled, ready to deliver (warm page cache, then
//!   cold when the caches can be dropped).
//!
//! Sizes: EGRESS_BENCH_MESSAGES (default 20000), EGRESS_BENCH_HELD (default
//! 1000000), EGRESS_BENCH_CONNECTIONS (default 50).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::testkit::sink::{Sink, SinkConfig};
use fleet::testkit::LocalCa;
use fleet::Control;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use mta::delivery::DeliveryConfig;
use mta::message::NewMessage;
use mta::queue::EgressMetrics;
use mta::spool::Spool;

mod support;

use support::HOSTNAME;

const NET: u8 = 200;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 2, NET, last)
}

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// CPU time (user + system) of this process.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn body(size: usize, n: usize) -> String {
    let mut text = format!(
        "From: App <app@yourdomain.com>\r\nTo: r{n}@sink.test\r\nSubject: bench {n}\r\n\
         Message-ID: <bench-{n}@yourdomain.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n"
    );
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while text.len() + line.len() <= size {
        text.push_str(line);
    }
    text
}

/// Writes a node config for 127.2.200.11 delivering `sink.test` to `sink`.
fn write_node(dir: &Path, ca: &LocalCa, sink: SocketAddr, signing: Signing) -> PathBuf {
    let issued = ca.issue(&[HOSTNAME, &ip(11).to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
    write_fleet(dir);
    let config = dir.join("mta.toml");
    std::fs::write(
        &config,
        format!(
            r#"
fleet_file = "fleet.toml"
node = "mta-1"
spool_dir = "spool"
admin_listen = "{admin}:0"
shutdown_grace = "10s"

[tls]
certificate = "cert.pem"
key = "key.pem"

[smtp]
max_connections_per_ip = 1000

[delivery]
nameservers = ["{ns}:53"]
routes = {{ "sink.test" = "{sink}" }}
allow_networks = ["127.0.0.0/8"]
"#,
            admin = ip(1),
            ns = ip(54),
        ),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&dkim_tables(dir, signing));
    std::fs::write(&config, text).unwrap();
    config
}

/// The fleet file: one cluster, its one MTA on 127.2.200.11.
fn write_fleet(dir: &Path) {
    let hash = fleet::password::hash_password("bench-secret").unwrap();
    std::fs::write(
        dir.join("fleet.toml"),
        format!(
            r#"
[zone]
origin = "unmta.net"
primary_ns = "ns1.unmta.net"
hostmaster = "hostmaster.unmta.net"
nameservers = [{{ name = "ns1.unmta.net", ipv4 = "{ns}" }}]

[ports]
smtp = [12525]
https = 12443

[[clusters]]
id = "a1b2c3d4"
rate_limit = "unlimited"
domains = ["yourdomain.com"]

  [[clusters.credentials]]
  username = "bench"
  password = "{hash}"

  [[clusters.mtas]]
  name = "mta-1"
  ipv4 = "{node}"
"#,
            ns = ip(53),
            node = ip(11),
        ),
    )
    .unwrap();
}

/// The `[[delivery.dkim]]` tables for `signing`, with their keys written.
fn dkim_tables(dir: &Path, signing: Signing) -> String {
    let (rsa, ed) = write_dkim_keys(dir);
    let key = |path: &Path, selector: &str, algorithm: &str| {
        format!(
            "\n[[delivery.dkim]]\ndomain = \"yourdomain.com\"\nselector = \"{selector}\"\nkey = \"{}\"\nalgorithm = \"{algorithm}\"\n",
            path.display()
        )
    };
    match signing {
        Signing::None => String::new(),
        Signing::Rsa => key(&rsa, "rsa", "rsa-sha256"),
        Signing::Dual => key(&rsa, "rsa", "rsa-sha256") + &key(&ed, "ed", "ed25519-sha256"),
    }
}

/// Which DKIM keys the node of the end-to-end run signs with.
#[derive(Debug, Clone, Copy)]
enum Signing {
    None,
    Rsa,
    Dual,
}

/// The test RSA-2048 key and a fresh ed25519 key, as PEM files in `dir`.
fn write_dkim_keys(dir: &Path) -> (PathBuf, PathBuf) {
    use base64::Engine as _;
    let rsa = dir.join("dkim-rsa.pem");
    std::fs::write(
        &rsa,
        include_str!("../tests/egress_support/dkim-rsa-test.pem"),
    )
    .unwrap();
    let key = mail_auth::common::crypto::Ed25519Key::generate_pkcs8().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
    let ed = dir.join("dkim-ed.pem");
    std::fs::write(
        &ed,
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    (rsa, ed)
}

fn envelope(n: usize) -> Envelope {
    Envelope::new(
        Some("app@yourdomain.com".parse().unwrap()),
        vec![format!("r{n}@sink.test").parse().unwrap()],
    )
    .unwrap()
}

/// A submission client as a busy application runs one: a session per
/// connection (TCP_NODELAY, STARTTLS, AUTH PLAIN), many messages each.
struct SmtpClient {
    ca_pem: String,
}

impl SmtpClient {
    async fn connect(&self) -> anyhow::Result<AsyncSmtpConnection> {
        let stream = tokio::net::TcpStream::connect((ip(11), 12525)).await?;
        stream.set_nodelay(true)?;
        let hello = ClientId::Domain("bench.client".into());
        let mut conn =
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello).await?;
        let tls = TlsParameters::builder(HOSTNAME.to_string())
            .add_root_certificate(Certificate::from_pem(self.ca_pem.as_bytes())?)
            .build_rustls()?;
        conn.starttls(tls, &hello).await?;
        conn.auth(
            &[Mechanism::Plain],
            &Credentials::new("bench".into(), "bench-secret".into()),
        )
        .await?;
        Ok(conn)
    }
}

async fn e2e(messages: usize, connections: usize, signing: Signing) {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("egress bench CA").unwrap();
    // The sink MX offers STARTTLS: delivery runs over TLS, as to most MX.
    let mx = ca.issue(&["mx.sink.test"]).unwrap();
    let mut sink_config = SinkConfig::accept(SocketAddr::new(ip(25).into(), 2525));
    sink_config.tls = Some((mx.cert_pem, mx.key_pem));
    let sink = Sink::start(sink_config).await.unwrap();
    let config = write_node(dir.path(), &ca, sink.addr(), signing);
    let settings = mta::Settings::load(&config).unwrap();
    let listeners = mta::Listeners::bind(&settings).await.unwrap();
    let control = Control::new();
    let node = tokio::spawn(mta::run(settings, listeners, control.clone()));

    let ca_pem = ca.cert_pem();
    let client = SmtpClient { ca_pem };
    // Warm up: the node answers, the credential is verified and cached.
    let mut ready = false;
    for _ in 0..500 {
        if let Ok(mut conn) = client.connect().await {
            if conn
                .send(&envelope(0), body(4096, 0).as_bytes())
                .await
                .is_ok()
            {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "the node does not take mail");
    sink.wait_for(1, Duration::from_secs(20)).await.unwrap();

    let client = Arc::new(client);
    let started = Instant::now();
    let per = messages / connections;
    let mut workers = Vec::new();
    for c in 0..connections {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut conn = client.connect().await.expect("a session");
            for i in 0..per {
                let n = c * per + i;
                conn.send(&envelope(n), body(4096, n).as_bytes())
                    .await
                    .expect("the node accepts");
            }
            let _ = conn.quit().await;
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let injected = started.elapsed();
    let total = per * connections;
    sink.wait_for(total + 1, Duration::from_secs(600))
        .await
        .unwrap();
    let delivered = started.elapsed();
    let over_tls = sink.messages().iter().filter(|m| m.tls).count();
    let signed = sink
        .messages()
        .iter()
        .filter(|m| m.text().contains("DKIM-Signature:"))
        .count();
    println!(
        "e2e DKIM {signing:?} (signed: {signed}) SMTP (STARTTLS+AUTH, {connections} connections) -> spool -> SMTP (STARTTLS: {over_tls} of {}) to sink, 4 KB, unlimited: \
         {total} messages; all accepted in {:.2} s ({:.0} msg/s); all delivered in {:.2} s: {:.0} msg/s end to end",
        total + 1,
        injected.as_secs_f64(),
        total as f64 / injected.as_secs_f64(),
        delivered.as_secs_f64(),
        total as f64 / delivered.as_secs_f64()
    );
    control.shutdown.cancel();
    let _ = node.await;
}

async fn spool_path(messages: usize) {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkConfig::accept(SocketAddr::new(ip(26).into(), 2525)))
        .await
        .unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let handle = support::start_engine(
        spool.clone(),
        support::to_sink(ip(54), sink.addr().to_string()),
        support::events_beside(&spool),
        EgressMetrics::default(),
        fleet::RateLimit::Unlimited,
    );
    let started = Instant::now();
    let workers = 256;
    let per = messages / workers;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let n = w * per + i;
                spool.accept(message(4096, n)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed();
    sink.wait_for(per * workers, Duration::from_secs(600))
        .await
        .unwrap();
    let delivered = started.elapsed();
    let total = per * workers;
    println!(
        "spool.accept (256 concurrent) -> SMTP to sink, 4 KB, unlimited: {total} messages; \
         accepted {:.0} msg/s; delivered {:.0} msg/s end to end",
        total as f64 / accepted.as_secs_f64(),
        total as f64 / delivered.as_secs_f64()
    );
    handle.stop(Duration::from_secs(10)).await;
    spool.close();
}

fn message(size: usize, n: usize) -> NewMessage {
    NewMessage {
        sender: "app@yourdomain.com".into(),
        recipients: vec![format!("r{n}@sink.test")],
        data: body(size, n).into(),
        cluster: "a1b2c3d4".into(),
        credential: "bench".into(),
        via: mta::message::Protocol::Smtp,
        peer: "127.2.200.1:40000".parse().unwrap(),
    }
}

/// The engine of a held node: `1/hr`, its one permit spent on a host that
/// refuses, everything else scheduled.
async fn held_engine(spool: Arc<Spool>) -> (mta::delivery::EngineHandle, EgressMetrics) {
    let config = DeliveryConfig {
        timeout: Duration::from_secs(2),
        ..support::to_sink(ip(54), format!("{}:2525", ip(27)))
    };
    let metrics = EgressMetrics::default();
    let events = support::events_beside(&spool);
    let limit: fleet::RateLimit = "1/hr".parse().unwrap();
    let handle = support::start_engine(spool, config, events, metrics.clone(), limit);
    (handle, metrics)
}

async fn wait_scheduled(metrics: &EgressMetrics, n: usize, limit: Duration) {
    let started = Instant::now();
    while (metrics.scheduled.get() as usize) < n {
        assert!(
            started.elapsed() < limit,
            "{} of {n} scheduled after {limit:?}",
            metrics.scheduled.get()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Child process: fills the spool at `dir` with `n` held messages.
async fn held_child(dir: PathBuf, n: usize) {
    let rss0 = rss();
    let spool = Spool::open(&dir).await.unwrap();
    let (handle, metrics) = held_engine(spool.clone()).await;
    let started = Instant::now();
    let workers = 1024;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                spool.accept(message(1024, i)).await.unwrap();
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed();
    wait_scheduled(&metrics, n, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss();
    let cpu0 = cpu();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = cpu() - cpu0;
    println!(
        "held: {n} messages of 1 KB accepted in {:.1} s ({:.0} msg/s durable); \
         {} scheduled, {} held by the rate limit",
        accepted.as_secs_f64(),
        n as f64 / accepted.as_secs_f64(),
        metrics.scheduled.get(),
        metrics.rate_limited.get()
    );
    println!(
        "held: RSS {:.1} MB -> {:.1} MB: {:.0} bytes per held message; CPU while holding for 5 s: {:.2} s",
        rss0 as f64 / 1e6,
        rss1 as f64 / 1e6,
        (rss1.saturating_sub(rss0)) as f64 / n as f64,
        idle_cpu.as_secs_f64()
    );
    handle.stop(Duration::from_secs(5)).await;
    spool.close();
    println!("held: spool on disk {:.0} MB", dir_size(&dir) as f64 / 1e6);
}

/// Child process: recovers the spool at `dir` and times it until all `n`
/// messages are scheduled.
async fn restart_child(dir: PathBuf, n: usize, label: &str) {
    let rss0 = rss();
    let started = Instant::now();
    let spool = Spool::open(&dir).await.unwrap();
    let opened = started.elapsed();
    let (handle, metrics) = held_engine(spool.clone()).await;
    wait_scheduled(&metrics, n - 1, Duration::from_secs(300)).await;
    let ready = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss();
    println!(
        "restart ({label}): spool recovered in {:.2} s, {} messages scheduled ready to deliver in {:.2} s; \
         RSS {:.0} bytes per held message",
        opened.as_secs_f64(),
        metrics.scheduled.get(),
        ready.as_secs_f64(),
        (rss1.saturating_sub(rss0)) as f64 / n as f64
    );
    handle.stop(Duration::from_secs(5)).await;
    spool.close();
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `openssl speed rsa2048` on this machine, one core: signatures per
/// second of CPU time (openssl speed divides by the process's user CPU time
/// unless given `-elapsed`, so a loaded machine does not skew it).
fn openssl_speed_rsa2048() -> Option<f64> {
    let output = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "3", "rsa2048"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "rsa 2048 bits 0.000752s 0.000022s   1329.8  45370.1"
    let line = text.lines().find(|l| l.starts_with("rsa 2048 bits"))?;
    line.split_whitespace().nth(5)?.parse().ok()
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// `work` run `n` times: CPU time and wall time per run.
fn per_run(n: usize, mut work: impl FnMut(usize)) -> (Duration, Duration) {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    for i in 0..n {
        work(i);
    }
    ((thread_cpu() - cpu) / n as u32, wall.elapsed() / n as u32)
}

/// "X µs of CPU (Y µs wall)", and the ratio of the CPU time to openssl
/// speed's when `compare`.
fn figures((cpu, wall): (Duration, Duration), speed: Option<f64>, compare: bool) -> String {
    let ratio = match speed {
        Some(per_s) if compare => format!(
            ", {:.2}x openssl speed's time (target <= 1.1)",
            cpu.as_secs_f64() * per_s
        ),
        _ => String::new(),
    };
    format!(
        "{:.0} µs of CPU ({:.0} µs wall, {:.0} signatures/s of one core){ratio}",
        cpu.as_secs_f64() * 1e6,
        wall.as_secs_f64() * 1e6,
        1.0 / cpu.as_secs_f64()
    )
}

/// One round of the DKIM comparison: openssl speed's CPU time per
/// signature, ours for the signature alone and for a whole rsa-sha256
/// DKIM signature of a 4 KB message.
struct DkimRound {
    speed: Option<Duration>,
    alone: (Duration, Duration),
    whole: (Duration, Duration),
}

fn dkim_round(
    messages: usize,
    alone: &mta::dkim::OpensslRsa,
    signer: &mta::dkim::Dkim,
    bodies: &[String],
) -> DkimRound {
    use mail_auth::common::crypto::SigningKey;
    let speed = openssl_speed_rsa2048().map(|per_s| Duration::from_secs_f64(1.0 / per_s));
    let input = [7u8; 300];
    let alone = per_run(messages, |_| {
        alone.sign(&input[..]).unwrap();
    });
    let whole = per_run(messages, |i| {
        signer.sign(bodies[i].as_bytes()).unwrap().unwrap();
    });
    DkimRound {
        speed,
        alone,
        whole,
    }
}

/// DKIM signing cost per 4 KB message, one core, in 3 rounds that
/// alternate `openssl speed rsa2048` with ours; CPU time against CPU time,
/// the best of each compared (the machine is shared: a round that lost
/// the core to another process is slower, never faster).
fn dkim(messages: usize) {
    use mta::delivery::config::{DkimAlgorithm, DkimKey};
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ed) = write_dkim_keys(dir.path());
    let key = |path: &PathBuf, algorithm| DkimKey {
        domain: "yourdomain.com".into(),
        selector: fleet::secret::SecretRef::Value(fleet::secret::SecretBytes::new(b"s1".to_vec())),
        key: fleet::secret::SecretFile::Path(path.clone()),
        algorithm,
    };
    let bodies: Vec<String> = (0..messages).map(|n| body(4096, n)).collect();
    // The RSA signature alone, through the signer's OpenSSL binding (what
    // the DKIM figure adds on top is hashing and canonicalising the message).
    let alone = mta::dkim::OpensslRsa::from_pem(&std::fs::read(&rsa).unwrap()).unwrap();
    let rsa_signer = mta::dkim::Dkim::load(&[key(&rsa, DkimAlgorithm::RsaSha256)]).unwrap();
    let rounds: Vec<DkimRound> = (0..3)
        .map(|_| dkim_round(messages, &alone, &rsa_signer, &bodies))
        .collect();
    for (n, round) in rounds.iter().enumerate() {
        println!(
            "round {}: openssl speed {:.0} µs, signature alone {:.0} µs, whole DKIM {:.0} µs of CPU",
            n + 1,
            round.speed.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
            round.alone.0.as_secs_f64() * 1e6,
            round.whole.0.as_secs_f64() * 1e6
        );
    }
    let best =
        |pick: fn(&DkimRound) -> (Duration, Duration)| rounds.iter().map(pick).min().unwrap();
    let speed = rounds.iter().filter_map(|r| r.speed).min();
    let per_s = speed.map(|d| 1.0 / d.as_secs_f64());
    if let Some(d) = speed {
        println!(
            "openssl speed rsa2048, best of 3: {:.0} µs of CPU per signature",
            d.as_secs_f64() * 1e6
        );
    }
    println!(
        "rsa-sha256 signature alone (300 bytes of signed headers), best of 3: {}",
        figures(best(|r| r.alone), per_s, true)
    );
    println!(
        "dkim rsa-sha256 (2048 bits), 4 KB message, best of 3: {}",
        figures(best(|r| r.whole), per_s, true)
    );
    for (keys, name) in [
        (
            vec![key(&ed, DkimAlgorithm::Ed25519Sha256)],
            "ed25519-sha256",
        ),
        (
            vec![
                key(&rsa, DkimAlgorithm::RsaSha256),
                key(&ed, DkimAlgorithm::Ed25519Sha256),
            ],
            "dual (rsa-sha256 + ed25519-sha256)",
        ),
    ] {
        let signer = mta::dkim::Dkim::load(&keys).unwrap();
        let timed = per_run(messages, |i| {
            signer.sign(bodies[i].as_bytes()).unwrap().unwrap();
        });
        println!(
            "dkim {name}, 4 KB message: {}",
            figures(timed, per_s, false)
        );
    }
}

fn child(args: &[&str]) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "{args:?} failed");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let held_n = env_usize("EGRESS_BENCH_HELD", 1_000_000);
    match args.first().map(String::as_str) {
        Some("held-child") => return runtime.block_on(held_child(args[1].clone().into(), held_n)),
        Some("restart-child") => {
            return runtime.block_on(restart_child(args[1].clone().into(), held_n, &args[2]))
        }
        _ => {}
    }
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |what: &str| only.is_empty() || only.contains(&what);
    let messages = env_usize("EGRESS_BENCH_MESSAGES", 20_000);
    let connections = env_usize("EGRESS_BENCH_CONNECTIONS", 50);
    if wants("e2e") {
        runtime.block_on(e2e(messages, connections, Signing::None));
        runtime.block_on(e2e(messages, connections, Signing::Rsa));
        runtime.block_on(e2e(messages, connections, Signing::Dual));
        runtime.block_on(spool_path(messages));
    } else if only.contains(&"e2e-unsigned") {
        // The unsigned run alone (what round one's bench measured).
        runtime.block_on(e2e(messages, connections, Signing::None));
    }
    if wants("dkim") {
        dkim(2000);
    }
    if wants("held") {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let path = spool_dir.to_str().unwrap();
        child(&["held-child", path]);
        child(&["restart-child", path, "warm page cache"]);
        let dropped = std::process::Command::new("sh")
            .args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if dropped {
            child(&["restart-child", path, "cold: page cache dropped"]);
        } else {
            println!("restart (cold): cannot drop the page cache here; not measured");
        }
    }
}
