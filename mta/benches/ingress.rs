//! Ingress throughput: 4 KB messages over SMTP (STARTTLS + AUTH PLAIN on
//! every connection, several pipelined transactions per connection) and
//! over HTTP injection, into the real durable spool, with the node running
//! in this process on 127.1.200.11 and delivery on hold.
//!
//! `cargo bench -p mta --bench ingress` (optional: `-- <connections>
//! <messages per connection> <http clients> <messages per client>`).

#[path = "../tests/ingress_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

const SIZE: usize = 4096;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (connections, per_connection) = (arg(0, 200), arg(1, 50));
    let (http_clients, per_client) = (arg(2, 32), arg(3, 200));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let fixture = Fixture::new(
            200,
            "max_connections = 100000\nmax_connections_per_ip = 100000",
        );
        let node = fixture.start().await;
        println!(
            "ingress bench: spool {} (durable: group-committed fdatasync), delivery on hold, {} CPUs",
            fixture.spool_dir().display(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        // Warm up: the first AUTH pays argon2 once, then it is cached.
        let mut raw = Raw::authenticated(&fixture).await;
        assert_eq!(transaction(&mut raw, &body(0, 0)).await.code, 250);
        drop(raw);

        smtp_round(&fixture, connections, per_connection).await;
        http_round(&fixture, http_clients, per_client).await;
        node.stop().await;
    });
}

/// `connections` clients at once, each with STARTTLS and AUTH, then
/// `per_connection` pipelined transactions.
async fn smtp_round(fixture: &Fixture, connections: usize, per_connection: usize) {
    let total = connections * per_connection;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(async move {
            let mut raw = Raw::authenticated(fixture).await;
            for m in 0..per_connection {
                raw.send(
                    b"MAIL FROM:<sender@yourdomain.com> SIZE=4096\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n",
                )
                .await;
                for expected in [250, 250, 354] {
                    assert_eq!(raw.reply().await.code, expected);
                }
                let mut data = body(c, m);
                data.extend_from_slice(b".\r\n");
                raw.send(&data).await;
                let reply = raw.reply().await;
                assert_eq!(reply.code, 250, "{reply:?}");
            }
            raw.cmd("QUIT").await;
        });
    }
    futures_util::future::join_all(tasks).await;
    report(
        &format!(
            "smtp: {total} messages of {SIZE} B, {connections} connections \
             (STARTTLS+AUTH each) x {per_connection} pipelined transactions"
        ),
        total,
        started.elapsed(),
    );
}

/// `http_clients` keep-alive clients at once, each posting `per_client`
/// one-recipient injections.
async fn http_round(fixture: &Fixture, http_clients: usize, per_client: usize) {
    let total = http_clients * per_client;
    let started = Instant::now();
    let client = fixture.http();
    let url = fixture.https_url("/api/inject/v1");
    let mut tasks = Vec::new();
    for c in 0..http_clients {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(async move {
            for m in 0..per_client {
                let request = serde_json::json!({
                    "envelope_sender": "bounces@yourdomain.com",
                    "recipients": ["rcpt@example.com"],
                    "content": {
                        "from": "sender@yourdomain.com",
                        "subject": format!("http {c} {m}"),
                        "text_body": text(SIZE - 600),
                    }
                });
                let response = client
                    .post(&url)
                    .basic_auth(USER, Some(PASSWORD))
                    .json(&request)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        });
    }
    futures_util::future::join_all(tasks).await;
    report(
        &format!(
            "http: {total} messages of ~{SIZE} B, {http_clients} clients (keep-alive) x {per_client} requests"
        ),
        total,
        started.elapsed(),
    );
}

fn report(what: &str, messages: usize, elapsed: Duration) {
    println!(
        "{what}: {:.2} s, {:.0} messages/s",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
}

/// A message of exactly `SIZE` octets.
fn body(connection: usize, n: usize) -> Vec<u8> {
    let mut data = message(&format!("bench {connection} {n}")).into_bytes();
    let fill = SIZE - data.len();
    data.extend_from_slice(text(fill).as_bytes());
    assert_eq!(data.len(), SIZE);
    data
}

/// `len` octets of 78-character CRLF lines.
fn text(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() + 80 <= len {
        out.push_str(&"x".repeat(78));
        out.push_str("\r\n");
    }
    match len - out.len() {
        0 => {}
        // One octet more on the first line.
        1 => out.insert(0, 'y'),
        rest => {
            out.push_str(&"y".repeat(rest - 2));
            out.push_str("\r\n");
        }
    }
    out
}
