//! Outbound STARTTLS that fails, end to end (spool → delivery → an MX on
//! 127.1.70.25/.26 that offers STARTTLS and then answers its 220 with bytes
//! that are not TLS):
//! - `opportunistic`: the message goes out in plaintext on a new connection,
//!   later messages go plaintext without trying TLS, and once
//!   `starttls_fallback` has passed TLS is tried again;
//! - `required` for the route: never plaintext, a transient failure instead.

mod egress_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egress_support::*;
use fleet::testkit::dns::{Record, StaticDns};
use mta::events::EventKind;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the MX saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A client asked for STARTTLS (and got a broken handshake).
    StartTls,
    /// A message in plaintext, by its Subject marker.
    Plaintext(String),
}

/// An MX whose STARTTLS never works; it closes after each message.
struct BrokenTlsMx {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl BrokenTlsMx {
    async fn start(addr: SocketAddr) -> BrokenTlsMx {
        let listener = TcpListener::bind(addr).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, log.clone()));
            }
        });
        BrokenTlsMx { seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

async fn session(stream: tokio::net::TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
    let mut stream = BufReader::new(stream);
    let _ = stream
        .get_mut()
        .write_all(b"220 mx.broken.test ESMTP\r\n")
        .await;
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-mx.broken.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
            "STAR" => {
                log.lock().push(Seen::StartTls);
                let _ = stream.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await;
                let _ = stream
                    .get_mut()
                    .write_all(b"this is not TLS at all\r\n")
                    .await;
                return;
            }
            "DATA" => {
                let _ = stream.get_mut().write_all(b"354 go on\r\n").await;
                let mut subject = String::new();
                loop {
                    line.clear();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    if let Some(s) = line.strip_prefix("Subject: egress test ") {
                        subject = s.trim().to_string();
                    }
                }
                log.lock().push(Seen::Plaintext(subject));
                let _ = stream.get_mut().write_all(b"250 2.0.0 taken\r\n").await;
                return;
            }
            "QUIT" => return,
            _ => b"250 2.0.0 ok\r\n",
        };
        if stream.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 70, last)
}

/// The MX on 127.1.70.`mx`, a DNS server naming it, and a node delivering.
async fn setup(mx: u8, delivery: &str) -> (BrokenTlsMx, StaticDns, Egress) {
    let dns = StaticDns::start(
        SocketAddr::new(ip(mx + 100).into(), 0),
        vec![
            Record::a("broken.test", ip(mx)),
            Record::a("strict.test", ip(mx)),
        ],
    )
    .await
    .unwrap();
    let mx = BrokenTlsMx::start(SocketAddr::new(ip(mx).into(), MX_PORT)).await;
    let delivery =
        format!("retry_initial = \"200ms\"\nretry_max = \"400ms\"\ntimeout = \"5s\"\n{delivery}");
    let configs = configs_at([127, 1, 70], "unlimited", Some(dns.addr()), &delivery);
    (mx, dns, Egress::start(configs).await)
}

/// The fallback window of the first test.
const FALLBACK: Duration = Duration::from_secs(6);

#[tokio::test]
async fn a_failed_starttls_falls_back_to_plaintext_until_the_fallback_expires() {
    let (mx, _dns, mut egress) = setup(25, "starttls_fallback = \"6s\"").await;
    let id = egress.inject("a@broken.test", "first").await;
    egress.event(&id, EventKind::Delivery).await;
    let fell_back = Instant::now();
    assert_eq!(
        mx.seen(),
        [Seen::StartTls, Seen::Plaintext("first".into())],
        "STARTTLS was tried, then the message went in plaintext"
    );
    let id = egress.inject("b@broken.test", "second").await;
    egress.event(&id, EventKind::Delivery).await;
    // Within the window no TLS is tried (unless the machine was so slow
    // that the window passed: then nothing can be said of it).
    if fell_back.elapsed() < FALLBACK - Duration::from_secs(2) {
        assert_eq!(mx.seen()[2..], [Seen::Plaintext("second".into())]);
    } else {
        println!("the second delivery came after the fallback window: not judged");
    }
    // After the window, STARTTLS again (it fails again: plaintext again).
    let left = FALLBACK.saturating_sub(fell_back.elapsed()) + Duration::from_secs(1);
    tokio::time::sleep(left).await;
    let before = mx.seen().len();
    let id = egress.inject("c@broken.test", "third").await;
    egress.event(&id, EventKind::Delivery).await;
    assert_eq!(
        mx.seen()[before..],
        [Seen::StartTls, Seen::Plaintext("third".into())],
        "after starttls_fallback STARTTLS is tried again"
    );
    assert_eq!(egress.metrics.starttls_fallbacks.get(), 2);
    egress.stop().await;
}

#[tokio::test]
async fn a_route_that_requires_starttls_refuses_plaintext_after_a_failed_handshake() {
    let delivery = "route_starttls = { \"strict.test\" = \"required\" }";
    let (mx, _dns, mut egress) = setup(26, delivery).await;
    let id = egress.inject("x@strict.test", "strict").await;
    let failure = egress.event(&id, EventKind::TransientFailure).await;
    assert!(
        failure.response.content.contains("it is required for"),
        "{failure:?}"
    );
    // A retry fails the same way: STARTTLS every time, never plaintext.
    egress.event(&id, EventKind::TransientFailure).await;
    let seen = mx.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|s| *s == Seen::StartTls), "{seen:?}");
    // The same MX for an opportunistic domain still gets its mail.
    let id = egress.inject("y@broken.test", "other").await;
    egress.event(&id, EventKind::Delivery).await;
    assert!(mx.seen().contains(&Seen::Plaintext("other".into())));
    egress.stop().await;
}
