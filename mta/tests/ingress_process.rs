//! The real `mta` binary: SIGKILL while clients send loses no acknowledged
//! message nor its Reception event, and the seed's own swaks and curl examples work against an mta
//! started from `configs/`.

mod ingress_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet::testkit::example_configs::ExampleConfigs;
use fleet::testkit::process::{eventually, DaemonProcess};
use ingress_support::*;
use lettre::AsyncTransport;

const MTA: &str = env!("CARGO_BIN_EXE_mta");

/// Waits until `addr` answers with an SMTP banner.
async fn smtp_up(addr: SocketAddr) {
    eventually(LIMIT, "the mta answers SMTP", || async move {
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
        else {
            return false;
        };
        let mut banner = [0u8; 3];
        use tokio::io::AsyncReadExt;
        let mut stream = stream;
        matches!(
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut banner)).await,
            Ok(Ok(_))
        ) && &banner == b"220"
    })
    .await
    .unwrap();
}

/// Runs a client command off the runtime, within the limit.
async fn run(mut command: std::process::Command) -> std::process::Output {
    let output = tokio::task::spawn_blocking(move || command.output());
    tokio::time::timeout(LIMIT, output)
        .await
        .expect("the command ends within the limit")
        .unwrap()
        .expect("the command runs")
}

fn subjects(messages: &[mta::spool::StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| {
            mail_parser::MessageParser::new()
                .parse_headers(&m.data[..])
                .and_then(|p| p.subject().map(str::to_string))
        })
        .collect()
}

/// The subjects of the Reception events in the event log in `dir`, read
/// from its files as a restart would (a torn last line is skipped).
fn receptions(dir: &Path) -> std::collections::HashSet<String> {
    let mut subjects = std::collections::HashSet::new();
    for (_, path) in mta::events::log::segments(dir) {
        let text = std::fs::read(&path).unwrap();
        for line in text.split(|&b| b == b'\n') {
            let json = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.splitn(3, ' ').nth(2))
                .and_then(|j| serde_json::from_str::<fleet::event::Event>(j).ok());
            if let Some(event) = json.filter(|e| e.kind == fleet::event::EventType::Reception) {
                subjects.extend(event.meta.subject);
            }
        }
    }
    subjects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_clients_send_loses_no_acknowledged_message() {
    let fixture = Arc::new(Fixture::new(70, ""));
    let mut mta = DaemonProcess::start(Path::new(MTA), &fixture.config()).unwrap();
    smtp_up(fixture.smtp_addr()).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (fixture, acked, killed) = (fixture.clone(), acked.clone(), killed.clone());
        clients.push(tokio::spawn(async move {
            let mailer = fixture.lettre(Some((USER, PASSWORD)));
            for i in 0.. {
                if killed.load(Ordering::Relaxed) {
                    break;
                }
                let marker = format!("smtp-{client}-{i}");
                let sent = mailer
                    .send_raw(
                        &lettre::address::Envelope::new(
                            Some("sender@yourdomain.com".parse().unwrap()),
                            vec!["rcpt@example.com".parse().unwrap()],
                        )
                        .unwrap(),
                        message(&marker).as_bytes(),
                    )
                    .await;
                match sent {
                    Ok(_) => acked.lock().unwrap().push(marker),
                    Err(_) if killed.load(Ordering::Relaxed) => break,
                    Err(e) => panic!("{marker} refused before the kill: {e}"),
                }
            }
        }));
    }
    for client in 0..2 {
        let (fixture, acked, killed) = (fixture.clone(), acked.clone(), killed.clone());
        clients.push(tokio::spawn(async move {
            let http = fixture.http();
            for i in 0.. {
                if killed.load(Ordering::Relaxed) {
                    break;
                }
                let marker = format!("http-{client}-{i}");
                let body = serde_json::json!({
                    "envelope_sender": "bounces@yourdomain.com",
                    "recipients": ["user@example.com"],
                    "content": {"from": "sender@yourdomain.com", "subject": marker, "text_body": "x"}
                });
                let sent = http
                    .post(fixture.https_url("/api/inject/v1"))
                    .basic_auth(USER, Some(PASSWORD))
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        acked.lock().unwrap().push(marker)
                    }
                    _ if killed.load(Ordering::Relaxed) => break,
                    Ok(response) => panic!("{marker}: HTTP {}", response.status()),
                    Err(e) => panic!("{marker} failed before the kill: {e}"),
                }
            }
        }));
    }

    // Kill while every client is in full flow.
    eventually(Duration::from_secs(60), "150 messages acknowledged", || {
        let acked = acked.clone();
        async move { acked.lock().unwrap().len() >= 150 }
    })
    .await
    .unwrap();
    killed.store(true, Ordering::Relaxed);
    mta.signal("KILL").unwrap();
    mta.wait_exit(LIMIT).await.unwrap();
    for client in clients {
        tokio::time::timeout(LIMIT, client).await.unwrap().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.iter().any(|m| m.starts_with("smtp")) && acked.iter().any(|m| m.starts_with("http"))
    );
    // Each acknowledged message's Reception was in the event log before
    // its 250 / 200: the kill took none of them.
    let events_dir = fixture.config().parent().unwrap().join("events");
    let received = receptions(&events_dir);
    let unrecorded: Vec<_> = acked.iter().filter(|m| !received.contains(*m)).collect();
    assert!(
        unrecorded.is_empty(),
        "{} of {} acknowledged messages have no Reception after SIGKILL: {unrecorded:?}",
        unrecorded.len(),
        acked.len()
    );

    // Restart: it recovers the spool and serves again.
    let mut mta = DaemonProcess::start(Path::new(MTA), &fixture.config()).unwrap();
    smtp_up(fixture.smtp_addr()).await;
    fixture
        .lettre(Some((USER, PASSWORD)))
        .send_raw(
            &lettre::address::Envelope::new(
                Some("sender@yourdomain.com".parse().unwrap()),
                vec!["rcpt@example.com".parse().unwrap()],
            )
            .unwrap(),
            message("after-restart").as_bytes(),
        )
        .await
        .unwrap();
    mta.terminate(LIMIT).await.unwrap();

    let spooled = subjects(&fixture.spooled().await);
    let missing: Vec<_> = acked.iter().filter(|m| !spooled.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost: {missing:?}",
        missing.len(),
        acked.len()
    );
    assert!(spooled.iter().any(|s| s == "after-restart"));
    eprintln!(
        "{} acknowledged before SIGKILL, all {} in the spool after restart ({} stored in all)",
        acked.len(),
        acked.len(),
        spooled.len()
    );
}

#[tokio::test]
async fn the_seed_swaks_and_curl_examples_work_against_configs() {
    let configs = ExampleConfigs::relocated([127, 1, 80]).unwrap();
    // Keep delivery on loopback: nothing may leave this machine.
    configs
        .edit("mta.toml", |doc| {
            use toml_edit::{value, Array, InlineTable};
            doc["delivery"]["nameservers"] = value(Array::from_iter(["127.1.80.53:53"]));
            let mut routes = InlineTable::new();
            routes.insert("example.com", "127.1.80.25:25".into());
            doc["delivery"]["routes"] = value(routes);
            doc["delivery"]["dsn"] = value(false);
            // The unanswered loopback route keeps the messages queued.
            doc["delivery"]["allow_networks"] = value(Array::from_iter(["127.0.0.0/8"]));
        })
        .unwrap();
    let ip = Ipv4Addr::new(127, 1, 80, 11);
    let ca = configs.path("tls/ca.pem");
    let mut mta = DaemonProcess::start(Path::new(MTA), &configs.path("mta.toml")).unwrap();
    smtp_up(SocketAddr::new(IpAddr::V4(ip), SMTP_PORTS[0])).await;

    // The seed's swaks command, pointed at this node and verifying the
    // certificate against the local CA with the cluster hostname as SNI.
    let mut swaks = std::process::Command::new("swaks");
    swaks
        .args([
            "--to",
            "recipient@example.com",
            "--from",
            "sender@yourdomain.com",
        ])
        .args(["--server", &format!("{ip}:{}", SMTP_PORTS[0])])
        .args(["--tls", "--tls-verify", "--tls-sni", HOSTNAME])
        .arg("--tls-ca-path")
        .arg(&ca)
        .args([
            "--auth-user",
            "your-credential",
            "--auth-password",
            "example-password",
        ])
        .args(["--header", "Subject: Test", "--body", "Hello from unMTA"]);
    let swaks = run(swaks).await;
    let transcript = String::from_utf8_lossy(&swaks.stdout);
    assert!(swaks.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("=== TLS started with cipher"),
        "{transcript}"
    );
    assert!(
        transcript.contains("<~  250 2.0.0 OK queued as"),
        "{transcript}"
    );

    // The seed's curl example, with --cacert and the hostname resolved here.
    let body = serde_json::to_string_pretty(&seed_example()).unwrap();
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "-X", "POST"])
        .arg(format!("https://{HOSTNAME}:{HTTPS_PORT}/api/inject/v1"))
        .arg("--resolve")
        .arg(format!("{HOSTNAME}:{HTTPS_PORT}:{ip}"))
        .arg("--cacert")
        .arg(&ca)
        .args(["-u", "your-credential:example-password"])
        .args(["-H", "Content-Type: application/json", "-d", &body])
        .args(["-w", "\n%{http_code}"]);
    let curl = run(curl).await;
    let out = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.status.success(),
        "curl failed: {out} {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(out.ends_with("\n200"), "{out}");
    assert!(out.contains("\"success_count\":1"), "{out}");

    mta.terminate(LIMIT).await.unwrap();
    let spooled = subjects(&spooled(&configs.path("var/mta-1/spool")).await);
    assert_eq!(spooled, ["Test", "Hello"]);
}
