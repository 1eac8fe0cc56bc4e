//! Many large SMTP transfers at once to a real `mta` process, its memory
//! read from `/proc/<pid>/status` (`clear_refs` resets the peak, `VmHWM`
//! reads it), and one more client served in the middle of them.
//!
//! Every flood connection authenticates and opens DATA first; then all of
//! them send the head of their message (all of it but the final `.`, or a
//! part); once half of them are through (the others still sending), a
//! bystander from another address sends a small message and must get its
//! 250; when all are through, every transfer is open at once, in its
//! middle. Then they end their messages ([`Finish`]) and must all get 250.

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
    /// Octets every connection sends before any of them ends its message
    /// (`size`: all of it; less keeps the spool small, see [`Finish`]).
    pub head: usize,
    /// How the connections end their messages.
    pub finish: Finish,
    /// Client addresses, used in turn.
    pub sources: Vec<Ipv4Addr>,
    /// Where the bystander connects from (not among `sources`).
    pub bystander: Ipv4Addr,
    /// How long every step may take (setup, transfer).
    pub limit: Duration,
}

/// How the connections end their messages once all have sent their head.
pub enum Finish {
    /// All at once.
    Together,
    /// At most `window` at a time, and only while fewer than `backlog`
    /// accepted messages are still undelivered (by `delivered`): the spool
    /// on disk stays small (the node delivers to a [`DiscardMx`]).
    Rolling {
        window: usize,
        backlog: usize,
        delivered: Arc<AtomicUsize>,
    },
}

/// What happened.
#[derive(Debug)]
pub struct FloodReport {
    /// The node's RSS before the flood, kB.
    pub idle_kb: u64,
    /// Its peak RSS while every connection was in the middle of its
    /// transfer (before any ended), kB.
    pub open_peak_kb: u64,
    /// Its peak RSS over the whole flood, kB.
    pub peak_kb: u64,
    /// The bystander's wait for its 250 (STARTTLS and AUTH included).
    pub bystander: Duration,
    /// Flood connections still sending their head when it got it.
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

/// What the flood's clients share.
struct Shared {
    data: Vec<u8>,
    head: usize,
    addr: std::net::SocketAddr,
    ca_pem: String,
    limit: Duration,
    setup: Semaphore,
    window: Semaphore,
    ready: AtomicUsize,
    sent: AtomicUsize,
    accepted: AtomicUsize,
}

/// One flood client: set up to DATA, wait for `go`, send the head, wait
/// for `release`, then end the message within the window.
async fn client(
    shared: Arc<Shared>,
    source: IpAddr,
    mut go: watch::Receiver<bool>,
    mut release: watch::Receiver<bool>,
    gate: Option<(usize, Arc<AtomicUsize>)>,
) -> Result<(), super::Reply> {
    let permit = shared.setup.acquire().await.unwrap();
    let mut raw = Raw::authenticated_at(shared.addr, &shared.ca_pem, source).await;
    for (cmd, code) in [
        ("MAIL FROM:<sender@yourdomain.com>", 250),
        ("RCPT TO:<rcpt@example.com>", 250),
        ("DATA", 354),
    ] {
        let reply = raw.cmd(cmd).await;
        assert_eq!(reply.code, code, "{cmd}: {reply:?}");
    }
    drop(permit);
    shared.ready.fetch_add(1, Ordering::SeqCst);
    go.wait_for(|go| *go).await.unwrap();
    let (head, rest) = shared.data.split_at(shared.head);
    for chunk in head.chunks(64 * 1024) {
        raw.send_within(chunk, shared.limit).await;
    }
    shared.sent.fetch_add(1, Ordering::SeqCst);
    release.wait_for(|r| *r).await.unwrap();
    let _turn = shared.window.acquire().await.unwrap();
    if let Some((backlog, delivered)) = gate {
        let what = "the node's backlog of undelivered flood messages";
        let (accepted, delivered) = (&shared.accepted, &*delivered);
        let under = || async {
            accepted.load(Ordering::SeqCst) < delivered.load(Ordering::SeqCst) + backlog
        };
        eventually(shared.limit, what, under).await.unwrap();
    }
    for chunk in rest.chunks(64 * 1024) {
        raw.send_within(chunk, shared.limit).await;
    }
    raw.send(b".\r\n").await;
    // Its 250 waits for its file to be synced, behind the others.
    let reply = raw.reply_within(shared.limit).await;
    shared.accepted.fetch_add(1, Ordering::SeqCst);
    (reply.code == 250).then_some(()).ok_or(reply)
}

/// Runs the flood against the node `pid` serving `fixture`.
pub async fn flood(fixture: &Fixture, pid: u32, flood: Flood) -> FloodReport {
    let (window, gate) = match &flood.finish {
        Finish::Together => (flood.connections, None),
        Finish::Rolling {
            window,
            backlog,
            delivered,
        } => (*window, Some((*backlog, delivered.clone()))),
    };
    let data = big_message(flood.size);
    let shared = Arc::new(Shared {
        head: flood.head.min(data.len()),
        data,
        addr: fixture.smtp_addr(),
        ca_pem: fixture.ca_pem.clone(),
        limit: flood.limit,
        // Connections are set up a few at a time (each pays a handshake).
        setup: Semaphore::new(64),
        window: Semaphore::new(window.max(1)),
        ready: AtomicUsize::new(0),
        sent: AtomicUsize::new(0),
        accepted: AtomicUsize::new(0),
    });
    let (go, going) = watch::channel(false);
    let (release, released) = watch::channel(false);
    let idle_kb = status_kb(pid, "VmRSS:");
    reset_peak(pid);
    let tasks: Vec<_> = (0..flood.connections)
        .map(|i| {
            let source = IpAddr::V4(flood.sources[i % flood.sources.len()]);
            let (going, released) = (going.clone(), released.clone());
            tokio::spawn(client(
                shared.clone(),
                source,
                going,
                released,
                gate.clone(),
            ))
        })
        .collect();
    let all = flood.connections;
    wait_count(&shared.ready, all, flood.limit, "flood connections in DATA").await;
    let started = Instant::now();
    go.send(true).unwrap();
    wait_count(
        &shared.sent,
        all / 2,
        flood.limit,
        "half the flood heads sent",
    )
    .await;
    // Every transfer is under way, half of them still sending: another
    // client is still served.
    let asked = Instant::now();
    let mut raw = Raw::authenticated_from(fixture, IpAddr::V4(flood.bystander)).await;
    let reply = transaction(&mut raw, message("bystander").as_bytes()).await;
    let bystander = asked.elapsed();
    let still_sending = all - shared.sent.load(Ordering::SeqCst);
    assert_eq!(reply.code, 250, "the bystander during the flood: {reply:?}");
    wait_count(&shared.sent, all, flood.limit, "flood heads sent").await;
    let open_peak_kb = status_kb(pid, "VmHWM:");
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
        open_peak_kb,
        peak_kb: status_kb(pid, "VmHWM:"),
        bystander,
        still_sending,
        transfer: started.elapsed(),
        accepted,
    }
}

/// An MX that takes every message and keeps nothing but a count.
pub struct DiscardMx {
    pub delivered: Arc<AtomicUsize>,
}

impl DiscardMx {
    pub async fn start(addr: std::net::SocketAddr) -> DiscardMx {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let delivered = Arc::new(AtomicUsize::new(0));
        let count = delivered.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(discard_session(stream, count.clone()));
            }
        });
        DiscardMx { delivered }
    }
}

async fn discard_session(stream: tokio::net::TcpStream, count: Arc<AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = BufReader::with_capacity(256 * 1024, stream);
    let mut line = Vec::new();
    let mut in_data = false;
    let _ = stream.get_mut().write_all(b"220 discard ESMTP\r\n").await;
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let reply: &[u8] = if in_data {
            if line != b".\r\n" {
                continue;
            }
            in_data = false;
            count.fetch_add(1, Ordering::SeqCst);
            b"250 2.0.0 discarded\r\n"
        } else {
            match line.get(..4).map(|v| v.to_ascii_uppercase()).as_deref() {
                Some(b"EHLO") => b"250-discard\r\n250 8BITMIME\r\n",
                Some(b"DATA") => {
                    in_data = true;
                    b"354 go on\r\n"
                }
                Some(b"QUIT") => return,
                _ => b"250 2.0.0 ok\r\n",
            }
        };
        if stream.get_mut().write_all(reply).await.is_err() {
            return;
        }
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
