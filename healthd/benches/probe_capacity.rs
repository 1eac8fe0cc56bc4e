//! Probe capacity: how many MTAs healthd probes at a 1 s interval (SMTP +
//! STARTTLS + HTTPS /ready each, verified TLS) while staying on schedule,
//! and the CPU it uses for that.
//!
//! `cargo bench -p healthd --bench probe_capacity` (optionally
//! `-- 500 1000 2000`: the MTA counts to try; `PROBE_WINDOW_SECS=10`).
//!
//! The fake MTAs run in a child process (this executable, re-run with
//! `PROBE_CAPACITY_FAKES` set) on 127.3.100.1 onwards, so this process's CPU
//! time is healthd's alone (plus one metrics scrape per second). Ten MTAs
//! per cluster, each cluster with its own hostname (one wildcard
//! certificate), as production would have it.

#[path = "../tests/common/fake.rs"]
mod fake;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet::control::Control;

const SMTP_PORT: u16 = 2525;
const HTTPS_PORT: u16 = 8443;
const PER_CLUSTER: usize = 10;

fn fake_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 3, 100 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn main() {
    if let Ok(count) = std::env::var("PROBE_CAPACITY_FAKES") {
        serve_fakes(count.parse().expect("fake count"));
        return;
    }
    let mut counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if counts.is_empty() {
        counts = vec![500, 1000, 1500, 2000, 3000];
    }
    let window: u64 = std::env::var("PROBE_WINDOW_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let max = *counts.iter().max().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = fleet::testkit::pki::LocalCa::new("probe capacity CA").unwrap();
    ca.write_bundle(dir.path(), "mta", &["*.unmta.net"])
        .unwrap();

    // The fakes, in their own process.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("PROBE_CAPACITY_FAKES", max.to_string())
        .env("PROBE_CAPACITY_TLS", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fake MTAs");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "fake MTAs did not start");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("probe capacity: interval 1s, SMTP+STARTTLS+HTTPS per MTA, {window}s windows, 2 cores shared with the fakes");
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}  verdict",
        "MTAs", "rounds/s", "expected", "lag p50", "lag p99", "failed", "CPU", "fakes", "idle"
    );
    let mut best: Option<(usize, f64)> = None;
    for n in counts {
        let result = runtime.block_on(measure(dir.path(), n, window, child.id().to_string()));
        let on_schedule =
            result.rate >= 0.97 * result.expected && result.lag_p99 <= 0.1 && result.failed == 0;
        println!(
            "{:>6} {:>10.1} {:>10.1} {:>7.1}ms {:>7.1}ms {:>8} {:>8.1}% {:>8.1}% {:>8.1}%  {}",
            n,
            result.rate,
            result.expected,
            result.lag_p50 * 1e3,
            result.lag_p99 * 1e3,
            result.failed,
            result.cpu * 100.0,
            result.fakes_cpu * 100.0,
            result.idle * 100.0,
            if on_schedule { "on schedule" } else { "BEHIND" }
        );
        if on_schedule && best.is_none_or(|(b, _)| n > b) {
            best = Some((n, result.cpu));
        }
    }
    match best {
        Some((n, cpu)) => println!(
            "largest on schedule: {n} MTAs at 1s with {:.1}% of one core",
            cpu * 100.0
        ),
        None => println!("no MTA count stayed on schedule"),
    }
    drop(child.stdin.take());
    let _ = child.wait();
}

struct Measured {
    rate: f64,
    expected: f64,
    lag_p50: f64,
    lag_p99: f64,
    failed: u64,
    cpu: f64,
    fakes_cpu: f64,
    /// Idle cores of the whole machine during the window.
    idle: f64,
}

fn fleet_toml(n: usize) -> String {
    let mut text = format!(
        "[zone]\norigin = \"unmta.net\"\nprimary_ns = \"ns1.unmta.net\"\nhostmaster = \"hostmaster.unmta.net\"\n\
         nameservers = [ {{ name = \"ns1.unmta.net\", ipv4 = \"127.3.99.53\" }} ]\n\
         [ports]\nsmtp = [{SMTP_PORT}]\nhttps = {HTTPS_PORT}\n"
    );
    for c in 0..n.div_ceil(PER_CLUSTER) {
        text.push_str(&format!(
            "\n[[clusters]]\nid = \"b{c:05}\"\ndomains = [\"b{c}.example.com\"]\n"
        ));
        for i in c * PER_CLUSTER..((c + 1) * PER_CLUSTER).min(n) {
            text.push_str(&format!(
                "  [[clusters.mtas]]\n  name = \"m{i}\"\n  ipv4 = \"{}\"\n",
                fake_ip(i)
            ));
        }
    }
    text
}

/// Idle CPU time of the whole machine (all cores), from /proc/stat.
fn idle_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.get(3).copied().unwrap_or(0.0) / 100.0
}

/// healthd in this process probing the `n` fakes every second; its URL,
/// its control and its task.
async fn start_healthd(
    dir: &Path,
    n: usize,
) -> (String, Control, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let run_dir = dir.join(format!("run-{n}"));
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(run_dir.join("fleet.toml"), fleet_toml(n)).unwrap();
    let config = run_dir.join("healthd.toml");
    std::fs::write(
        &config,
        format!(
            "fleet_file = \"fleet.toml\"\nlisten = \"127.3.99.1:0\"\nca_file = \"{}\"\n\
             state_file = \"state.json\"\nlog_format = \"human\"\n[probe]\ninterval = \"1s\"\n",
            dir.join("ca.pem").display()
        ),
    )
    .unwrap();
    let settings = healthd::Settings::load(&config).unwrap();
    let listeners = healthd::Listeners::bind(&settings).await.unwrap();
    let url = format!("http://{}", listeners.listen.local_addr().unwrap());
    let control = Control::new();
    let task = tokio::spawn(healthd::run(settings, listeners, control.clone()));
    (url, control, task)
}

async fn measure(dir: &Path, n: usize, window: u64, fakes_pid: String) -> Measured {
    let (url, control, task) = start_healthd(dir, n).await;
    let client = reqwest::Client::new();

    // Warm up: every MTA up, then a few seconds of steady state.
    let start = Instant::now();
    loop {
        let feed: fleet::feed::FleetHealth = get(&client, format!("{url}/v1/fleet"))
            .await
            .json()
            .await
            .unwrap();
        let up = feed
            .clusters
            .iter()
            .flat_map(|c| &c.mtas)
            .filter(|m| m.state == fleet::feed::MtaState::Up)
            .count();
        if up == n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {up} of {n} MTAs up after 60 s; for example {:?}",
            feed.clusters
                .iter()
                .flat_map(|c| &c.mtas)
                .find(|m| m.state != fleet::feed::MtaState::Up)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = scrape(&client, &url).await;
    let cpu_before = cpu_seconds();
    let fakes_before = process_cpu_seconds(&fakes_pid);
    let idle_before = idle_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let after = scrape(&client, &url).await;
    let cpu = (cpu_seconds() - cpu_before) / t0.elapsed().as_secs_f64();
    let fakes_cpu = (process_cpu_seconds(&fakes_pid) - fakes_before) / t0.elapsed().as_secs_f64();
    let idle = (idle_seconds() - idle_before) / t0.elapsed().as_secs_f64();
    let elapsed = t0.elapsed().as_secs_f64();
    control.shutdown.cancel();
    let _ = task.await;

    let rounds = after.passed - before.passed;
    let lag: Vec<(f64, f64)> = after
        .lag
        .iter()
        .zip(&before.lag)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    // Mean interval with jitter 0.1 taken off at random: 0.95 s.
    Measured {
        rate: rounds / elapsed,
        expected: n as f64 / 0.95,
        lag_p50: quantile(&lag, 0.5),
        lag_p99: quantile(&lag, 0.99),
        failed: (after.failed - before.failed) as u64,
        cpu,
        fakes_cpu,
        idle,
    }
}

#[derive(Default)]
struct Scrape {
    passed: f64,
    failed: f64,
    /// Cumulative lag buckets: (upper bound, count).
    lag: Vec<(f64, f64)>,
}

/// The answer to a GET of `url` (any status).
async fn get(client: &reqwest::Client, url: String) -> reqwest::Response {
    client.get(url).send().await.unwrap()
}

async fn scrape(client: &reqwest::Client, url: &str) -> Scrape {
    let text = get(client, format!("{url}/metrics"))
        .await
        .text()
        .await
        .unwrap();
    let mut scrape = Scrape::default();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if name == r#"healthd_probe_rounds_total{result="pass"}"# {
            scrape.passed = value;
        } else if name == r#"healthd_probe_rounds_total{result="fail"}"# {
            scrape.failed = value;
        } else if let Some(le) = name
            .strip_prefix("healthd_probe_lag_seconds_bucket{le=\"")
            .and_then(|rest| rest.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            scrape.lag.push((le, value));
        }
    }
    scrape
}

/// The upper bound of the bucket holding quantile `q`.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(le, _)| *le)
        .unwrap_or(f64::INFINITY)
}

/// This process's user + system CPU time, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// A process's user + system CPU time, from /proc/<pid>/stat.
fn process_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn serve_fakes(n: usize) {
    let dir = std::env::var("PROBE_CAPACITY_TLS").expect("PROBE_CAPACITY_TLS");
    let dir = Path::new(&dir);
    let cert = std::fs::read_to_string(dir.join("mta.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("mta-key.pem")).unwrap();
    let tls = fake::server_config(&cert, &key);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut fakes = Vec::with_capacity(n);
        for i in 0..n {
            fakes.push(
                fake::Fake::start(IpAddr::V4(fake_ip(i)), SMTP_PORT, HTTPS_PORT, tls.clone()).await,
            );
        }
        println!("ready");
        std::io::stdout().flush().unwrap();
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
        })
        .await
        .unwrap();
        eprintln!(
            "fake MTAs: {} full and {} resumed TLS handshakes",
            fake::FULL_HANDSHAKES.load(std::sync::atomic::Ordering::Relaxed),
            fake::RESUMED_HANDSHAKES.load(std::sync::atomic::Ordering::Relaxed)
        );
        drop(fakes);
    });
}
