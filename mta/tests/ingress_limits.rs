//! Slow and idle clients cannot hold the door, and guessing passwords across
//! connections stops: a node in-process on 127.1.<n>.11 attacked with raw
//! sockets and reqwest.

mod ingress_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ingress_support::*;
use tokio::io::AsyncWriteExt;

/// NOOPs every 50 ms until the server answers something else.
async fn noop_until_refused(raw: &mut Raw) -> Reply {
    loop {
        let reply = raw.cmd("NOOP").await;
        if reply.code != 250 {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn busy_sessions_end_at_the_pre_auth_and_session_deadlines() {
    let (fixture, node) = Fixture::started(
        92,
        "pre_auth_timeout = \"700ms\"\nsession_timeout = \"1500ms\"",
    )
    .await;
    let mut raw = Raw::secure(&fixture).await;
    let reply = noop_until_refused(&mut raw).await;
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.text().contains("No successful AUTH"), "{reply:?}");
    assert!(raw.closed().await);

    let mut raw = Raw::authenticated(&fixture).await;
    let started = Instant::now();
    let reply = noop_until_refused(&mut raw).await;
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.text().contains("Session time limit"), "{reply:?}");
    assert!(started.elapsed() < LIMIT);
    assert!(raw.closed().await);
    node.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off() {
    let (fixture, node) = Fixture::started(93, "command_timeout = \"500ms\"").await;
    let stream = tokio::net::TcpStream::connect(fixture.smtp_addr())
        .await
        .unwrap();
    let (_read, mut write) = stream.into_split();
    // Pipelined commands, replies never read: the server's replies fill
    // the socket buffers, its writes block, the deadline ends them.
    let chunk = "NOOP\r\n".repeat(10_000);
    let cut_off = tokio::time::timeout(LIMIT * 3, async {
        loop {
            if write.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(cut_off.is_ok(), "the server kept the connection open");
    node.stop().await;
}

#[tokio::test]
async fn a_silent_starttls_handshake_is_dropped_quickly() {
    let (fixture, node) = Fixture::started(94, "tls_handshake_timeout = \"300ms\"").await;
    let mut raw = Raw::greeted(fixture.smtp_addr()).await;
    assert_eq!(raw.cmd("EHLO client.example").await.code, 250);
    assert_eq!(raw.cmd("STARTTLS").await.code, 220);
    let started = Instant::now();
    assert!(raw.closed().await);
    assert!(started.elapsed() < Duration::from_secs(10));
    node.stop().await;
}

#[tokio::test]
async fn auth_failures_are_limited_per_address_and_per_username() {
    let (fixture, node) = Fixture::started(
        95,
        "auth_failure_limit = 3\nauth_failure_window = \"60s\"\nmax_auth_failures = 10",
    )
    .await;
    let guesser: IpAddr = "127.1.95.50".parse().unwrap();
    let other: IpAddr = "127.1.95.51".parse().unwrap();
    let third: IpAddr = "127.1.95.52".parse().unwrap();
    // Three wrong guesses over two connections.
    for guesses in [2, 1] {
        let mut raw = Raw::secure_from(&fixture, guesser).await;
        for _ in 0..guesses {
            let reply = raw
                .cmd(&format!("AUTH PLAIN {}", plain("nobody", "guess")))
                .await;
            assert_eq!(reply.code, 535, "{reply:?}");
        }
    }
    // The address is refused now, even with the right password...
    let mut raw = Raw::secure_from(&fixture, guesser).await;
    let reply = raw
        .cmd(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
        .await;
    assert_eq!(reply.code, 454, "{reply:?}");
    assert!(reply.first().starts_with("4.7.0"), "{reply:?}");
    assert!(reply.text().contains("your address"), "{reply:?}");
    // ...the guessed username from anywhere...
    let mut raw = Raw::secure_from(&fixture, other).await;
    let reply = raw
        .cmd(&format!("AUTH PLAIN {}", plain("nobody", "x")))
        .await;
    assert_eq!(reply.code, 454, "{reply:?}");
    assert!(reply.text().contains("username"), "{reply:?}");
    // ...while another client is served.
    let mut raw = Raw::secure_from(&fixture, third).await;
    let reply = raw
        .cmd(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
        .await;
    assert_eq!(reply.code, 235, "{reply:?}");

    // HTTP from the guessing address: 429 with Retry-After.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fixture.ca_pem.as_bytes()).unwrap())
        .resolve(
            HOSTNAME,
            SocketAddr::new(IpAddr::V4(fixture.ip), HTTPS_PORT),
        )
        .local_address(guesser)
        .build()
        .unwrap();
    let response = client
        .post(fixture.https_url("/api/inject/v1"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    let metrics = node.metrics().await;
    // Counted where they were refused (the series exist at 0 from start).
    let smtp = format!("smtp:{}", SMTP_PORTS[0]);
    let https = format!("https:{HTTPS_PORT}");
    for listener in [smtp, https] {
        let series = format!("mta_ingress_auth_blocked_total{{listener=\"{listener}\"}}");
        let count = fleet::testkit::sample(&metrics, &series);
        assert!(count >= 1.0, "{series} {count}");
    }
    node.stop().await;
}
