//! Memory under a flood of large messages: 2,000 concurrent 10 MB SMTP
//! transfers (STARTTLS + AUTH, from 40 loopback addresses 127.1.211.x) to
//! the real `mta` binary on 127.1.210.11, while another client sends a
//! small message in the middle of them. Prints the node's idle RSS, its
//! peak while all 2,000 transfers are open at once (each in its middle),
//! and its peak over the whole run (`VmHWM` of `/proc/<pid>/status`); the
//! issue's target is a node under 1 GB.
//!
//! The disk: 2,000 × 10 MB is 20 GB of spool if all were held at once.
//! Every connection first sends its first `head` MB (1 by default: 2 GB on
//! disk with all 2,000 open), then the connections end their messages at
//! most 100 at a time while the node delivers them to a discarding MX on
//! loopback (127.1.210.25:2525, routes in the node config) and deletes
//! them, the backlog of undelivered ones kept under 100 (about 1 GB). The
//! node then runs delivery too, with `max_loaded_bytes = 64 MiB`: its
//! whole-run peak includes what delivery holds. The spool is a temporary
//! folder deleted at the end. A head of 10 holds all 20 GB at once.
//!
//! `cargo bench -p mta --bench ingress_flood` (optional:
//! `-- <connections> <message MB> <head MB>`).

#[path = "../tests/ingress_support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fleet::testkit::process::DaemonProcess;
use support::flood::{flood, DiscardMx, Finish, Flood, FloodReport};
use support::*;

const MTA: &str = env!("CARGO_BIN_EXE_mta");

fn free_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut stat), 0, "statvfs");
        stat.f_bavail as u64 * stat.f_frsize as u64
    }
}

/// The node: connections that are through wait for the others before
/// ending their data (longer than the default data_timeout); delivery to
/// the discarding MX.
fn fixture() -> Fixture {
    Fixture::at(
        [127, 1, 210],
        "max_connections = 2100\ndata_timeout = \"30m\"\nsession_timeout = \"2h\"",
        r#"[delivery]
nameservers = ["127.1.210.53:53"]
routes = { "example.com" = "127.1.210.25:2525" }
allow_networks = ["127.0.0.0/8"]
dsn = false
max_loaded_bytes = 67108864
"#,
    )
}

fn print(report: &FloodReport, connections: usize, size: usize) {
    let gb = (connections * size) as f64 / f64::from(1 << 30);
    println!(
        "{} of {connections} accepted ({gb:.1} GB) in {:.1} s ({:.0} MB/s)",
        report.accepted,
        report.transfer.as_secs_f64(),
        gb * 1024.0 / report.transfer.as_secs_f64(),
    );
    println!(
        "mta RSS: idle {} MB; peak {} MB with all {connections} transfers open; peak {} MB over the whole run (delivery included)",
        report.idle_kb / 1024,
        report.open_peak_kb / 1024,
        report.peak_kb / 1024,
    );
    println!(
        "a bystander's small message (STARTTLS, AUTH, one transaction) got 250 in {:.2} s with {} flood connections still sending",
        report.bystander.as_secs_f64(),
        report.still_sending
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let connections = args.first().copied().unwrap_or(2000);
    let size = args.get(1).copied().unwrap_or(10) << 20;
    let head = (args.get(2).copied().unwrap_or(1) << 20).min(size);
    let fixture = fixture();
    let need = (connections * head + 200 * size) as u64 / 10 * 11;
    let free = free_bytes(fixture.dir.path());
    assert!(
        free > need,
        "the spool needs {} GB, {} has {} GB free",
        need >> 30,
        fixture.dir.path().display(),
        free >> 30
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mx = DiscardMx::start(SocketAddr::new(Ipv4Addr::new(127, 1, 210, 25).into(), 2525)).await;
        let mut node = DaemonProcess::start(MTA.as_ref(), &fixture.config()).unwrap();
        fixture.wait_ready().await;
        let mut raw = Raw::authenticated(&fixture).await;
        assert_eq!(transaction(&mut raw, message("warm").as_bytes()).await.code, 250);
        drop(raw);
        println!(
            "ingress_flood: {connections} × {} MB over SMTP+STARTTLS, {} MB of each before any ends, into {} ({} CPUs)",
            size >> 20,
            head >> 20,
            fixture.spool_dir().display(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        let started = Instant::now();
        let report = flood(
            &fixture,
            node.pid(),
            Flood {
                connections,
                size,
                head,
                finish: Finish::Rolling {
                    window: 100,
                    backlog: 100,
                    delivered: mx.delivered.clone(),
                },
                // At most 50 connections per address (the cap is 100).
                sources: (1..=connections.div_ceil(50).max(1) as u8)
                    .map(|i| Ipv4Addr::new(127, 1, 211, i))
                    .collect(),
                bystander: Ipv4Addr::new(127, 1, 212, 1),
                limit: Duration::from_secs(3600),
            },
        )
        .await;
        print(&report, connections, size);
        println!("whole run {:.1} s", started.elapsed().as_secs_f64());
        node.signal("TERM").unwrap();
        node.wait_exit(Duration::from_secs(120)).await.unwrap();
    });
    println!("deleting the spool");
    drop(fixture);
}
