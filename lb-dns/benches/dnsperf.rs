//! lb-dns against gdnsd under dnsperf, on loopback, same zone, same query
//! mix (cluster A and AAAA, SOA, NXDOMAIN names).
//!
//! `cargo bench -p lb-dns --bench dnsperf` builds lb-dns in release, runs it
//! as its own process (health from a feed this bench serves; 2 UDP sockets
//! and RRL off, like gdnsd), runs gdnsd (multifo plugin, the same addresses,
//! 2 UDP threads) as its own process, and in each of a few alternating rounds
//! drives each server with dnsperf at full speed and at 30,000 and 50,000
//! queries/s offered (`-Q`), reading the server's own CPU time from
//! `/proc/<pid>/stat` around each fixed-load run. It prints, side by side and
//! best of the rounds: CPU seconds per 100,000 answered queries at both
//! loads, average latency at both loads, peak queries/s, the ratios and the
//! targets; then runs lb-dns at 50 % of its peak and checks that no query is
//! lost. On a 2-CPU machine dnsperf itself takes about one CPU, so the peak
//! is partly a race with the load generator; CPU per query is the server's
//! own cost.
//!
//! Knobs (environment): DNSPERF_SECONDS (default 5), DNSPERF_ROUNDS (3),
//! DNSPERF_LB_UDP_SOCKETS (lb-dns's `udp_sockets`, 2),
//! DNSPERF_LB_UDP_STEERING (lb-dns's `udp_steering`, its default `cpu`, or
//! `spread`) and DNSPERF_GDNSD_UDP_THREADS (gdnsd's `udp_threads`, 2).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::routing::get;
use axum::{Json, Router};
use fleet::feed::{ClusterHealth, FleetHealth, MtaHealth, MtaState};
use hickory_proto::op::{Message, MessageType, OpCode, Query as DnsQuery};
use hickory_proto::rr::{Name, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ORIGIN: &str = "bench.test";
const CLUSTERS: usize = 20;
const MTAS: usize = 3;
const LB_DNS: &str = "127.4.200.1:53535";
const LB_ADMIN: &str = "127.4.200.1:9380";
const FEED: &str = "127.4.200.3:9390";
const GDNSD: &str = "127.4.200.2:53535";

fn cluster_id(c: usize) -> String {
    format!("b{c:04}")
}

fn v4(c: usize, m: usize) -> String {
    format!("10.{}.{}.{}", 1 + c / 200, c % 200, 11 + m)
}

fn v6(c: usize, m: usize) -> String {
    format!("2001:db8:{c:x}::{:x}", 11 + m)
}

fn fleet_toml() -> String {
    let mut s = format!(
        "[zone]\norigin = \"{ORIGIN}\"\nttl = 30\nmax_answers = 8\nwhen_all_down = \"serve_all\"\n\
         primary_ns = \"ns1.{ORIGIN}\"\nhostmaster = \"hostmaster.{ORIGIN}\"\n\
         nameservers = [ {{ name = \"ns1.{ORIGIN}\", ipv4 = \"192.0.2.53\" }} ]\n\n"
    );
    for c in 0..CLUSTERS {
        s.push_str(&format!(
            "[[clusters]]\nid = \"{}\"\ndomains = [\"c{c}.example.com\"]\n",
            cluster_id(c)
        ));
        for m in 0..MTAS {
            s.push_str(&format!(
                "  [[clusters.mtas]]\n  name = \"m-{c}-{m}\"\n  ipv4 = \"{}\"\n  ipv6 = \"{}\"\n",
                v4(c, m),
                v6(c, m)
            ));
        }
    }
    s
}

fn feed() -> FleetHealth {
    FleetHealth {
        instance: "bench".into(),
        generation: 1,
        clusters: (0..CLUSTERS)
            .map(|c| ClusterHealth {
                id: cluster_id(c),
                hostname: fleet::model::cluster_hostname(&cluster_id(c), ORIGIN),
                mtas: (0..MTAS)
                    .map(|m| MtaHealth {
                        name: format!("m-{c}-{m}"),
                        ipv4: v4(c, m).parse().unwrap(),
                        ipv6: Some(v6(c, m).parse().unwrap()),
                        weight: 1,
                        state: MtaState::Up,
                        since: "2026-01-01T00:00:00Z".into(),
                        latency_ms: None,
                        reason: None,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[derive(serde::Deserialize)]
struct After {
    after: Option<u64>,
}

/// A healthd feed that says every MTA is up (long-polls just hold).
fn serve_feed(runtime: &tokio::runtime::Runtime) {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(FEED))
        .unwrap_or_else(|e| panic!("cannot bind the feed on {FEED}: {e}"));
    let app = Router::new().route(
        "/v1/fleet",
        get(|Query(q): Query<After>| async move {
            if q.after.is_some() {
                tokio::time::sleep(Duration::from_secs(25)).await;
            }
            Json(feed())
        }),
    );
    runtime.spawn(async move { axum::serve(listener, app).await });
}

fn gdnsd_config(dir: &Path, udp_threads: usize) -> PathBuf {
    let root = dir.join("gdnsd");
    std::fs::create_dir_all(root.join("zones")).unwrap();
    let mut resources = String::new();
    for c in 0..CLUSTERS {
        let a: Vec<String> = (0..MTAS).map(|m| v4(c, m)).collect();
        let aaaa: Vec<String> = (0..MTAS).map(|m| v6(c, m)).collect();
        resources.push_str(&format!(
            "    c-{} => {{\n      addrs_v4 => [ {} ]\n      addrs_v6 => [ {} ]\n    }}\n",
            cluster_id(c),
            a.join(", "),
            aaaa.join(", ")
        ));
    }
    let config = format!(
        "options => {{\n  listen => [ {GDNSD} ]\n  run_dir => {run}\n  state_dir => {state}\n  \
         udp_threads => {udp_threads}\n  tcp_threads => 1\n}}\n\
         plugins => {{\n  multifo => {{\n    service_types => up\n{resources}  }}\n}}\n",
        run = root.join("run").display(),
        state = root.join("state").display(),
    );
    std::fs::write(root.join("config"), config).unwrap();
    let mut zone =
        "$TTL 30\n@ SOA ns1 hostmaster 1 3600 600 604800 30\n@ NS ns1\nns1 A 192.0.2.53\n"
            .to_string();
    for c in 0..CLUSTERS {
        let id = cluster_id(c);
        zone.push_str(&format!("c-{id} 30 DYNA multifo!c-{id}\n"));
    }
    std::fs::write(root.join("zones").join(ORIGIN), zone).unwrap();
    root
}

/// The query mix: 45 % cluster A, 20 % cluster AAAA, 10 % SOA, 25 % NXDOMAIN.
fn query_file(dir: &Path) -> PathBuf {
    let mut rng = StdRng::seed_from_u64(53);
    let mut lines = String::new();
    for i in 0..2000 {
        let c = cluster_id(rng.random_range(0..CLUSTERS));
        let line = match rng.random_range(0..100) {
            0..45 => format!("c-{c}.{ORIGIN} A"),
            45..65 => format!("c-{c}.{ORIGIN} AAAA"),
            65..75 => format!("{ORIGIN} SOA"),
            _ => format!("nope-{i}.{ORIGIN} A"),
        };
        lines.push_str(&line);
        lines.push('\n');
    }
    let path = dir.join("queries.txt");
    std::fs::write(&path, lines).unwrap();
    path
}

/// Asks `server` for a cluster's A set until it answers with `want` records.
fn wait_answering(server: &str, want: usize, child: &mut Child, what: &str) {
    let server: SocketAddr = server.parse().unwrap();
    let socket = UdpSocket::bind((server.ip(), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let name = Name::from_ascii(format!("c-{}.{ORIGIN}.", cluster_id(0))).unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited during start-up: {status}");
        }
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(DnsQuery::query(name.clone(), RecordType::A));
        let _ = socket.send_to(&m.to_vec().unwrap(), server);
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Ok(answer) = Message::from_vec(&buf[..n]) {
                if answer.answers.len() == want {
                    return;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} not answering on {server}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Clone, Default)]
struct Run {
    qps: f64,
    avg_latency_ms: f64,
    max_latency_ms: f64,
    sent: u64,
    lost: u64,
    codes: String,
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no `{key}` in dnsperf output:\n{out}"))
}

fn first_number(s: &str) -> f64 {
    s.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|t| !t.is_empty())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0)
}

/// The server's CPU time so far (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line.
    field(11) + field(12)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A fixed offered load: the server's CPU seconds per 100,000 answered
/// queries, and dnsperf's figures (as /work/shared/bench/dns-cpu-per-query.sh).
#[derive(Debug, Clone, Default)]
struct Load {
    cpu_per_100k: f64,
    run: Run,
}

fn fixed_load(server: &str, pid: u32, queries: &Path, seconds: u64, rate: u64) -> Load {
    let before = cpu_ticks(pid);
    let run = dnsperf_with(
        server,
        queries,
        seconds,
        Some(rate),
        &["-c", "4", "-q", "200"],
    );
    let ticks = cpu_ticks(pid) - before;
    let completed = run.sent.saturating_sub(run.lost).max(1);
    Load {
        cpu_per_100k: ticks as f64 / clock_ticks_per_second() / completed as f64 * 100_000.0,
        run,
    }
}

fn dnsperf(server: &str, queries: &Path, seconds: u64, max_qps: Option<u64>) -> Run {
    dnsperf_with(server, queries, seconds, max_qps, &["-c", "8", "-q", "256"])
}

fn dnsperf_with(
    server: &str,
    queries: &Path,
    seconds: u64,
    max_qps: Option<u64>,
    clients: &[&str],
) -> Run {
    let server: SocketAddr = server.parse().unwrap();
    let mut cmd = Command::new("dnsperf");
    cmd.args(["-s", &server.ip().to_string()])
        .args(["-p", &server.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-l", &seconds.to_string()])
        .args(clients)
        .args(["-T", "1", "-t", "2"]);
    if let Some(qps) = max_qps {
        cmd.args(["-Q", &qps.to_string()]);
    }
    let out = cmd.output().expect("dnsperf runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let latency = field(&text, "Average Latency (s):");
    let max = latency
        .split("max ")
        .nth(1)
        .map(first_number)
        .unwrap_or(0.0);
    Run {
        qps: first_number(field(&text, "Queries per second:")),
        avg_latency_ms: first_number(latency) * 1000.0,
        max_latency_ms: max * 1000.0,
        sent: first_number(field(&text, "Queries sent:")) as u64,
        lost: first_number(field(&text, "Queries lost:")) as u64,
        codes: field(&text, "Response codes:").to_string(),
    }
}

fn print_run(what: &str, run: &Run) {
    println!(
        "{what:<22} {:>10.0} q/s   avg {:>7.3} ms   max {:>8.3} ms   sent {:>9}   lost {:>6}   {}",
        run.qps, run.avg_latency_ms, run.max_latency_ms, run.sent, run.lost, run.codes
    );
}

/// Offered loads at which CPU per query and latency are compared.
const LOADS: [u64; 2] = [30_000, 50_000];

/// The best of the rounds, per server.
#[derive(Default)]
struct Best {
    peak: Run,
    loads: [Load; 2],
}

impl Best {
    fn peak(&mut self, run: Run) {
        if run.qps > self.peak.qps {
            self.peak = run;
        }
    }

    fn load(&mut self, i: usize, load: Load) {
        let best = &mut self.loads[i];
        if best.run.sent == 0 || load.cpu_per_100k < best.cpu_per_100k {
            best.cpu_per_100k = load.cpu_per_100k;
        }
        if best.run.sent == 0 || load.run.avg_latency_ms < best.run.avg_latency_ms {
            best.run = load.run;
        }
    }
}

struct Rounds {
    lb: Best,
    gd: Best,
}

fn print_load(what: &str, load: &Load) {
    println!(
        "{what:<22} {:>7.3} CPU s/100k   {:>8.0} q/s   avg {:>6.3} ms   lost {:>5}",
        load.cpu_per_100k, load.run.qps, load.run.avg_latency_ms, load.run.lost
    );
}

impl Rounds {
    fn run(pids: (u32, u32), queries: &Path, seconds: u64, rounds: usize) -> Rounds {
        println!(
            "\n{CLUSTERS} clusters x {MTAS} MTAs, mix: 45% A, 20% AAAA, 10% SOA, 25% NXDOMAIN; {} CPUs; \
             peak: dnsperf -c 8 -T 1 -q 256 -l {seconds}; fixed loads: dnsperf -c 4 -T 1 -q 200 -l {seconds} -Q <rate>",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
        let mut r = Rounds {
            lb: Best::default(),
            gd: Best::default(),
        };
        for round in 1..=rounds {
            for (name, server, pid) in [("lb-dns", LB_DNS, pids.0), ("gdnsd", GDNSD, pids.1)] {
                let best = if name == "lb-dns" {
                    &mut r.lb
                } else {
                    &mut r.gd
                };
                let run = dnsperf(server, queries, seconds, None);
                print_run(&format!("{name:<7} round {round} peak"), &run);
                best.peak(run);
                for (i, rate) in LOADS.iter().enumerate() {
                    let load = fixed_load(server, pid, queries, seconds, *rate);
                    print_load(&format!("{name:<7} round {round} {rate}"), &load);
                    best.load(i, load);
                }
            }
        }
        r
    }

    fn print(&self) {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!("\nbest of the rounds          lb-dns        gdnsd    ratio  target");
        for (i, rate) in LOADS.iter().enumerate() {
            let (l, g) = (&self.lb.loads[i], &self.gd.loads[i]);
            let ratio = l.cpu_per_100k / g.cpu_per_100k;
            println!(
                "CPU s/100k at {rate:>6} q/s {:>10.3} {:>12.3} {:>8.2}  <= 0.80 {}",
                l.cpu_per_100k,
                g.cpu_per_100k,
                ratio,
                verdict(ratio <= 0.8)
            );
            let ratio = l.run.avg_latency_ms / g.run.avg_latency_ms;
            println!(
                "avg latency at {rate:>6} q/s {:>8.3}ms {:>10.3}ms {:>8.2}  <= 1.00 {}",
                l.run.avg_latency_ms,
                g.run.avg_latency_ms,
                ratio,
                verdict(ratio <= 1.0)
            );
        }
        let ratio = self.lb.peak.qps / self.gd.peak.qps;
        println!(
            "peak q/s                 {:>10.0} {:>12.0} {:>8.2}  >= 1.00 {}",
            self.lb.peak.qps,
            self.gd.peak.qps,
            ratio,
            verdict(ratio >= 1.0)
        );
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not and
    // should not run a minute of load.
    if !std::env::args().any(|a| a == "--bench") {
        println!("dnsperf bench: run with `cargo bench -p lb-dns --bench dnsperf`");
        return;
    }
    if let Some(tool) = ["dnsperf", "gdnsd"].into_iter().find(|t| !installed(t)) {
        println!("dnsperf bench skipped: `{tool}` is not installed (Debian package {tool})");
        return;
    }
    let seconds = setting("DNSPERF_SECONDS", 5) as u64;
    let rounds = setting("DNSPERF_ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    serve_feed(&runtime);
    let feed_thread = std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
    drop(feed_thread);

    let mut lb = start_lb_dns(dir.path(), setting("DNSPERF_LB_UDP_SOCKETS", 2));
    let gd = start_gdnsd(dir.path(), setting("DNSPERF_GDNSD_UDP_THREADS", 2));
    let queries = query_file(dir.path());
    let rounds = Rounds::run((lb.0.id(), gd.0.id()), &queries, seconds, rounds.max(1));
    rounds.print();
    let half = (rounds.lb.peak.qps / 2.0) as u64;
    let run = dnsperf(LB_DNS, &queries, seconds, Some(half));
    print_run(&format!("lb-dns  -Q {half}"), &run);
    let run_gd = dnsperf(GDNSD, &queries, seconds, Some(half));
    print_run(&format!("gdnsd   -Q {half}"), &run_gd);
    println!(
        "\nat 50% of lb-dns's peak: lb-dns lost {} of {} queries{}",
        run.lost,
        run.sent,
        if run.lost == 0 { " (none)" } else { "" }
    );
    std::io::stdout().flush().unwrap();
    if let Ok(Some(status)) = lb.0.try_wait() {
        panic!("lb-dns exited under load: {status}");
    }
    assert_eq!(run.lost, 0, "lb-dns lost queries at 50% of its peak");
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A number from the environment, or `default`.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// lb-dns on [`LB_DNS`], answering from a fresh feed (not failing open).
fn start_lb_dns(dir: &Path, udp_sockets: usize) -> Killed {
    let steering = std::env::var("DNSPERF_LB_UDP_STEERING").unwrap_or_else(|_| "cpu".into());
    std::fs::write(dir.join("fleet.toml"), fleet_toml()).unwrap();
    let config = dir.join("lb-dns.toml");
    std::fs::write(
        &config,
        format!(
            "fleet_file = \"fleet.toml\"\nlisten = [\"{LB_DNS}\"]\nadmin_listen = \"{LB_ADMIN}\"\n\
             healthd = [\"http://{FEED}\"]\nstate_file = \"state.json\"\nudp_sockets = {udp_sockets}\n\
             udp_steering = \"{steering}\"\n[rrl]\nresponses_per_second = 0\n"
        ),
    )
    .unwrap();
    let lb = Command::new(env!("CARGO_BIN_EXE_lb-dns"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .spawn()
        .expect("lb-dns starts");
    let mut lb = Killed(lb);
    wait_answering(LB_DNS, MTAS, &mut lb.0, "lb-dns");
    let start = Instant::now();
    loop {
        let status = Command::new("curl")
            .args(["-s", &format!("http://{LB_ADMIN}/status")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if status.contains("\"stale\":false") {
            return lb;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lb-dns never fresh: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_gdnsd(dir: &Path, udp_threads: usize) -> Killed {
    let gdnsd_dir = gdnsd_config(dir, udp_threads);
    let gd = Command::new("gdnsd")
        .arg("-c")
        .arg(&gdnsd_dir)
        .arg("start")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gdnsd starts");
    let mut gd = Killed(gd);
    wait_answering(GDNSD, MTAS, &mut gd.0, "gdnsd");
    gd
}
