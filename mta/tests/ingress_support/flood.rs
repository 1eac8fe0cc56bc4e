//! Many large SMTP transfers at once to a real `mta` process, its memory
//! read from `/proc/<pid>/status` (`clear_refs` resets the peak, `VmHWM`
//! reads it), and one more client served in the middle of them.
//!
//! Every flood connection authenticates and opens DATA first; then all of
//! them send their message but for the final `.`; once half of them are
//! through (the others still sending), a bystander from another address
//! sends a small message and must get its 250; when all are through, the
//! floods end their data and must all get theirs. Every transfer is open
//! from the first byte to the last 250: the peak holds them all at once.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::testkit::process::eventually;
use tokio::sync::{watch, Semaphore};

use super::{message, transaction, Fixture, Raw};

/// What to send.
pub struct Flood {
    pub connections: usize,
    /// Octets of each message.
    pub size: usize,
    /// Client addresses, used in turn.
    pub sources: Vec<Ipv4Addr>,
    /// Where the bystander connects from (not among `sources`).
    pub bystander: Ipv4Addr,
    /// How long every step may take (setup, transfer).
    pub limit: Duration,
}

/// What happened.
#[derive(Debug)]
pub struct FloodReport {
    /// The node's RSS before the flood, kB.
    pub idle_kb: u64,
    /// Its peak RSS during the flood, kB.
    pub peak_kb: u64,
    /// The bystander's wait for its 250 (STARTTLS and AUTH included).
    pub bystander: Duration,
    /// Flood connections still sending their data when it got it.
    pub still_sending: usize,
    /// From the first byte of data to the last 250.
    pub transfer: Duration,
    /// Flood messages answered 250.
    pub accepted: usize,
}

pub fn status_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

/// Resets the peak RSS (`VmHWM`) of `pid`.
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// A valid message of about `size` octets as sent: dot-stuffed lines of 78
/// octets, without the final `.`.
pub fn big_message(size: usize) -> Vec<u8> {
    let mut out =
        b"From: Sender <sender@yourdomain.com>\r\nTo: <rcpt@example.com>\r\nSubject: flood\r\n\r\n"
            .to_vec();
    let mut i = 0u64;
    while out.len() < size.saturating_sub(80) {
        let line = format!(".{i:012} {}\r\n", "x".repeat(63));
        // Every line starts with a dot, stuffed: the node unstuffs it.
        out.push(b'.');
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out
}

/// Runs the flood against the node `pid` serving `fixture`.
pub async fn flood(fixture: &Fixture, pid: u32, flood: Flood) -> FloodReport {
    let data = Arc::new(big_message(flood.size));
    let ca_pem = Arc::new(fixture.ca_pem.clone());
    let ready = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    // Connections are set up a few at a time (each pays a TLS handshake).
    let setup = Arc::new(Semaphore::new(64));
    let idle_kb = status_kb(pid, "VmRSS:");
    reset_peak(pid);
    let (go, going) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..flood.connections {
        let source = IpAddr::V4(flood.sources[i % flood.sources.len()]);
        let (data, ready, sent, setup) = (data.clone(), ready.clone(), sent.clone(), setup.clone());
        let (mut going, mut released) = (going.clone(), released.clone());
        let (addr, ca_pem, limit) = (fixture.smtp_addr(), ca_pem.clone(), flood.limit);
        tasks.push(tokio::spawn(async move {
            let permit = setup.acquire().await.unwrap();
            let mut raw = Raw::authenticated_at(addr, &ca_pem, source).await;
            for (cmd, code) in [
                ("MAIL FROM:<sender@yourdomain.com>", 250),
                ("RCPT TO:<rcpt@example.com>", 250),
                ("DATA", 354),
            ] {
                let reply = raw.cmd(cmd).await;
                assert_eq!(reply.code, code, "{cmd}: {reply:?}");
            }
            drop(permit);
            ready.fetch_add(1, Ordering::SeqCst);
            going.wait_for(|go| *go).await.unwrap();
            for chunk in data.chunks(64 * 1024) {
                raw.send_within(chunk, limit).await;
            }
            sent.fetch_add(1, Ordering::SeqCst);
            released.wait_for(|r| *r).await.unwrap();
            raw.send(b".\r\n").await;
            // Its 250 waits for its file to be synced, behind the others.
            let reply = raw.reply_within(limit).await;
            (reply.code == 250).then_some(()).ok_or(reply)
        }));
    }
    wait_count(
        &ready,
        flood.connections,
        flood.limit,
        "flood connections in DATA",
    )
    .await;
    let started = Instant::now();
    go.send(true).unwrap();
    let half = flood.connections / 2;
    wait_count(&sent, half, flood.limit, "half the flood messages sent").await;
    // Every transfer is under way, half of them still sending: another
    // client is still served.
    let asked = Instant::now();
    let mut raw = Raw::authenticated_from(fixture, IpAddr::V4(flood.bystander)).await;
    let reply = transaction(&mut raw, message("bystander").as_bytes()).await;
    let bystander = asked.elapsed();
    let still_sending = flood.connections - sent.load(Ordering::SeqCst);
    assert_eq!(reply.code, 250, "the bystander during the flood: {reply:?}");
    let all = flood.connections;
    wait_count(
        &sent,
        all,
        flood.limit,
        "flood messages sent but for the end",
    )
    .await;
    release.send(true).unwrap();
    let mut accepted = 0;
    for task in tasks {
        match tokio::time::timeout(flood.limit, task).await {
            Ok(Ok(Ok(()))) => accepted += 1,
            Ok(Ok(Err(reply))) => panic!("a flood message was refused: {reply:?}"),
            Ok(Err(e)) => panic!("a flood client failed: {e}"),
            Err(_) => panic!("a flood client got no answer within {:?}", flood.limit),
        }
    }
    FloodReport {
        idle_kb,
        peak_kb: status_kb(pid, "VmHWM:"),
        bystander,
        still_sending,
        transfer: started.elapsed(),
        accepted,
    }
}

async fn wait_count(count: &AtomicUsize, target: usize, limit: Duration, what: &str) {
    let result = eventually(limit, what, || async {
        count.load(Ordering::SeqCst) >= target
    })
    .await;
    if let Err(error) = result {
        panic!("{error}: {} of {target}", count.load(Ordering::SeqCst));
    }
}
