//! SMTP DATA streams to the spool as it arrives: memory grows with
//! connections, not with message sizes (issue 11).
//!
//! - Many 10 MB transfers at once to the real `mta` binary (127.1.60.11,
//!   clients from 127.1.61.x) keep its peak RSS far below what holding the
//!   messages would take, a bystander is served during them, and every
//!   message is spooled intact. The full 2,000 × 10 MB run is the benchmark
//!   `cargo bench -p mta --bench ingress_flood`.
//! - With a small `max_header_size`, streamed messages keep every rule of
//!   DATA: the size limit (552, the connection goes on), the From: policy,
//!   the header limit, bare LF; nothing is left in `incoming/`.

mod ingress_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use fleet::testkit::process::DaemonProcess;
use ingress_support::flood::{big_message, flood, Finish, Flood};
use ingress_support::*;

const MTA: &str = env!("CARGO_BIN_EXE_mta");
/// Flood connections in the test (the benchmark runs 2,000).
const CONNECTIONS: usize = 64;
const SIZE: usize = 10 * 1024 * 1024;
/// Peak RSS above idle allowed: holding the messages would take at least
/// CONNECTIONS × SIZE (640 MB), three to four times over before streaming.
const BOUND_MB: u64 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_10_mb_transfers_do_not_grow_memory_with_message_size() {
    // Connections that are through wait for the others before ending their
    // data: on a loaded machine that may take a while.
    let fixture = Fixture::new(60, "data_timeout = \"10m\"");
    let mut node = DaemonProcess::start(MTA.as_ref(), &fixture.config()).unwrap();
    fixture.wait_ready().await;
    // Warm up: the first AUTH pays the password hash once.
    let mut raw = Raw::authenticated(&fixture).await;
    assert_eq!(
        transaction(&mut raw, message("warm").as_bytes()).await.code,
        250
    );
    drop(raw);
    let report = flood(
        &fixture,
        node.pid(),
        Flood {
            connections: CONNECTIONS,
            size: SIZE,
            head: SIZE,
            finish: Finish::Together,
            sources: (1..=4).map(|i| Ipv4Addr::new(127, 1, 61, i)).collect(),
            bystander: Ipv4Addr::new(127, 1, 61, 200),
            limit: Duration::from_secs(300),
        },
    )
    .await;
    let above = report.peak_kb.saturating_sub(report.idle_kb) / 1024;
    println!(
        "{CONNECTIONS} × {} MB: idle {} MB, peak {} MB ({above} MB above idle), bystander answered in {:?} with {} still sending, transfer {:?}",
        SIZE >> 20,
        report.idle_kb / 1024,
        report.peak_kb / 1024,
        report.bystander,
        report.still_sending,
        report.transfer
    );
    assert_eq!(report.accepted, CONNECTIONS);
    assert!(above < BOUND_MB, "{above} MB above idle");
    node.signal("TERM").unwrap();
    node.wait_exit(LIMIT).await.unwrap();
    // Every message is in the spool; a flood message reads back intact.
    let spool = mta::spool::Spool::open(&fixture.spool_dir()).await.unwrap();
    let jobs = spool.take_arrivals();
    assert_eq!(jobs.len(), CONNECTIONS + 2);
    let big = jobs.iter().max_by_key(|j| j.len).unwrap();
    let stored = spool.load(big).await.unwrap();
    let sent = unstuffed(&big_message(SIZE));
    assert!(stored.data.ends_with(&sent[sent.len() / 2..]));
    assert!(stored.data.starts_with(b"Received: "));
    assert_eq!(stored.sender, "sender@yourdomain.com");
    assert_no_incoming(&fixture);
}

fn unstuffed(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    for line in wire.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

fn assert_no_incoming(fixture: &Fixture) {
    let incoming = fixture.spool_dir().join("incoming");
    let left: Vec<_> = std::fs::read_dir(&incoming)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", incoming.display());
}

/// Sends `data` (a whole message as sent, without the final dot).
async fn send_message(raw: &mut Raw, data: &[u8]) -> Reply {
    transaction(raw, data).await
}

#[tokio::test]
async fn streamed_messages_keep_every_rule_of_data() {
    let (fixture, node) =
        Fixture::started(62, "max_header_size = 4096\nmax_message_size = 1048576").await;
    let mut raw = Raw::authenticated(&fixture).await;
    // Over the size limit while streaming: 552, the connection goes on.
    let reply = send_message(&mut raw, &big_message(1_500_000)).await;
    assert_eq!(reply.code, 552, "{reply:?}");
    assert!(reply.first().starts_with("5.3.4"), "{reply:?}");
    // Streamed and accepted: 500 kB, read back below.
    let reply = send_message(&mut raw, &big_message(500_000)).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    // A From: of another domain, found in the header section.
    let evil = big_message(300_000);
    let evil =
        String::from_utf8(evil)
            .unwrap()
            .replacen("sender@yourdomain.com", "boss@other.example", 1);
    let reply = send_message(&mut raw, evil.as_bytes()).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.first().starts_with("5.7.1"), "{reply:?}");
    // A header section that does not end within max_header_size.
    let mut long_header = String::from("From: <sender@yourdomain.com>\r\n");
    for i in 0..100 {
        long_header.push_str(&format!("X-Filler-{i}: {}\r\n", "h".repeat(70)));
    }
    long_header.push_str("\r\nbody\r\n");
    let reply = send_message(&mut raw, long_header.as_bytes()).await;
    assert_eq!(reply.code, 552, "{reply:?}");
    assert!(reply.text().contains("header section"), "{reply:?}");
    // A bare LF deep in a streamed body.
    let mut bare = big_message(200_000);
    bare.extend_from_slice(b"smuggled\n.\r\nMAIL FROM:<x@yourdomain.com>\r\n");
    let reply = send_message(&mut raw, &bare).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.first().starts_with("5.6.0"), "{reply:?}");
    // The connection still works.
    let reply = send_message(&mut raw, message("after").as_bytes()).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(raw.cmd("QUIT").await.code, 221);
    node.stop().await;
    assert_no_incoming(&fixture);
    let spooled = fixture.spooled().await;
    assert_eq!(spooled.len(), 2, "only the two accepted messages");
    let streamed = spooled.iter().max_by_key(|m| m.data.len()).unwrap();
    let sent = unstuffed(&big_message(500_000));
    let at =
        memchr_find(&streamed.data, b"From: Sender").expect("the message after the trace headers");
    assert_eq!(&streamed.data[at..], &sent[..]);
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
