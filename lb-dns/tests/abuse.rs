//! lb-dns under attack: a spoofed-source UDP flood is rate limited (RRL)
//! and slipped while another client is answered in full; TCP connections
//! are capped (the idlest closed) and a stalled one is closed; a health
//! feed that is malformed or too large is refused and the last good state
//! stays in service.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use fleet::feed::MtaState;
use fleet::testkit::process::eventually;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_prefix_is_limited_and_slipped_while_another_client_is_answered() {
    let lb =
        LbDns::standard_with("127.4.50.1", "[rrl]\nresponses_per_second = 5\nslip = 2\n").await;
    let name = cluster("a1b2c3d4");
    let flood = UdpSocket::bind("127.4.51.3:0").await.unwrap();
    const SENT: usize = 60;
    for _ in 0..SENT {
        let bytes = query(&name, RecordType::A).to_vec().unwrap();
        flood.send_to(&bytes, lb.dns).await.unwrap();
    }
    // Meanwhile a client in another prefix gets every answer.
    for _ in 0..5 {
        let answer = udp(lb.dns, &query(&name, RecordType::A)).await;
        assert!(!answer.metadata.truncation);
        assert_eq!(answer.answers.len(), 3);
    }
    let (mut full, mut slipped) = (0, 0);
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), flood.recv(&mut buf)).await
    {
        let reply = Message::from_vec(&buf[..n]).unwrap();
        if reply.metadata.truncation {
            assert!(reply.answers.is_empty(), "a slip carries no records");
            slipped += 1;
        } else {
            full += 1;
        }
    }
    // Within one or two seconds: at most 5 a second answered in full, half
    // the rest slipped, the others dropped.
    assert!(full <= 10, "{full} full answers to the flood");
    assert!(slipped >= (SENT - 10) / 2 - 1, "{slipped} slipped");
    assert!(full + slipped < SENT, "some were dropped");
    assert!(lb.metric("lb_dns_rrl_slipped_total").await.unwrap() >= slipped as f64);
    assert!(lb.metric("lb_dns_rrl_dropped_total").await.unwrap() >= 1.0);
    // The limited client still gets everything over TCP (where slips send it).
    let answer = tcp(lb.dns, &query(&name, RecordType::A)).await;
    assert_eq!(answer.answers.len(), 3);
    lb.stop().await;
}

async fn exchange(stream: &mut TcpStream) -> bool {
    let bytes = query(&cluster("a1b2c3d4"), RecordType::A).to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    if stream.write_all(&framed).await.is_err() {
        return false;
    }
    let mut len = [0u8; 2];
    if stream.read_exact(&mut len).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; u16::from_be_bytes(len).into()];
    stream.read_exact(&mut buf).await.is_ok()
}

/// Whether the server closed `stream` within 5 s.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_capped_closing_the_idlest_and_stalled_ones_are_closed() {
    let lb = LbDns::standard_with(
        "127.4.52.1",
        "max_connections = 3\ntcp_idle_timeout = \"1s\"\n",
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(lb.dns).await.unwrap();
        assert!(exchange(&mut stream).await);
        conns.push(stream);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Activity on the second and third: the first is the idlest.
    assert!(exchange(&mut conns[1]).await);
    assert!(exchange(&mut conns[2]).await);
    let mut fourth = TcpStream::connect(lb.dns).await.unwrap();
    assert!(exchange(&mut fourth).await, "the new connection is served");
    assert!(closed(&mut conns[0]).await, "the idlest was closed");
    assert!(exchange(&mut conns[2]).await, "the others are kept");
    assert!(lb.metric("lb_dns_tcp_evicted_total").await.unwrap() >= 1.0);

    // Half a message, then nothing: closed after the idle timeout.
    let mut stalled = TcpStream::connect(lb.dns).await.unwrap();
    stalled.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
    assert!(closed(&mut stalled).await, "a stalled connection is closed");
    lb.stop().await;
}

/// A feed server whose body the test changes: `good`, then garbage, then
/// one too large. Long-polls (`?after=`) wait 200 ms.
async fn scripted_feed(ip: &str) -> (String, tokio::sync::watch::Sender<Vec<u8>>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let body = rx.borrow().clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = stream.read(&mut request).await.unwrap_or(0);
                if String::from_utf8_lossy(&request[..n]).contains("after=") {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    (url, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_oversized_feed_is_refused_and_the_last_good_state_stays() {
    let spec = FleetSpec::standard();
    let (url, body) = scripted_feed("127.4.53.2").await;
    let mut health = spec.feed(MtaState::Up);
    for m in health.clusters.iter_mut().flat_map(|c| c.mtas.iter_mut()) {
        if m.name == "mta-3" {
            m.state = MtaState::Down;
        }
    }
    body.send_replace(serde_json::to_vec(&health).unwrap());
    let lb = LbDns::start("127.4.53.1", &spec, std::slice::from_ref(&url)).await;
    let host = cluster("a1b2c3d4");
    eventually(Duration::from_secs(5), "the good feed applied", || async {
        lb.a(&host).await.len() == 2
    })
    .await
    .unwrap();
    let good: HashSet<_> = lb.a(&host).await.into_iter().collect();

    let cases: [(&str, Vec<u8>); 2] = [
        (
            "not a health feed",
            b"{\"instance\": 1, \"clusters\": [".to_vec(),
        ),
        (
            "larger than",
            [
                b"{\"pad\":\"".as_slice(),
                &vec![b'x'; lb_dns::follow::MAX_FEED_BYTES],
                b"\"}",
            ]
            .concat(),
        ),
    ];
    for (error, bad) in cases {
        body.send_replace(bad);
        eventually(Duration::from_secs(10), error, || async {
            let status = lb.status().await;
            status["service"]["health"]["feeds"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(error))
        })
        .await
        .unwrap();
        let now: HashSet<_> = lb.a(&host).await.into_iter().collect();
        assert_eq!(now, good, "the last good state stays ({error})");
        let (code, _) = lb.http("/live").await;
        assert_eq!(code, 200);
    }
    lb.stop().await;
}

/// CPU seconds (user + system) `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name in parentheses: utime is the 14th
    // field of the line, stime the 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Out of file descriptors (a real lb-dns process limited to 64), a crowd
/// of TCP clients does not make the accept loop spin: lb-dns stays cheap,
/// UDP is answered throughout, and TCP works again once the crowd leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_tcp_backs_off_and_udp_is_answered() {
    let ip = "127.4.53.1";
    let dir = tempfile::tempdir().unwrap();
    let spec = FleetSpec::standard();
    let config = write_config_with(dir.path(), ip, &spec, &[], "tcp_idle_timeout = \"120s\"\n");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("[\"{ip}:0\"]"), &format!("[\"{ip}:15353\"]"))
        .replace(&format!("\"{ip}:0\""), &format!("\"{ip}:19053\""));
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_lb-dns"))
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs lb-dns");
    let pid = child.id();
    let dns: std::net::SocketAddr = format!("{ip}:15353").parse().unwrap();
    let name = cluster("a1b2c3d4");
    eventually(Duration::from_secs(20), "lb-dns answers over UDP", || {
        let q = query(&name, RecordType::A).to_vec().unwrap();
        async move { udp_raw(dns, &q).await.is_some() }
    })
    .await
    .unwrap();

    // Many more connections than descriptors, all idle.
    let mut crowd = Vec::new();
    for _ in 0..150 {
        crowd.push(TcpStream::connect(dns).await.unwrap());
    }
    let before = cpu_seconds(pid);
    let started = std::time::Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(2) {
        if udp_raw(dns, &query(&name, RecordType::A).to_vec().unwrap())
            .await
            .is_some()
        {
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let used = cpu_seconds(pid) - before;
    let wall = started.elapsed().as_secs_f64();
    println!("out of descriptors: {used:.3} CPU s in {wall:.1} s, {answered} UDP answers");
    assert!(answered >= 10, "UDP answered only {answered} times");
    assert!(
        used < 0.5 * wall,
        "the accept loop spins out of descriptors: {used:.3} CPU s in {wall:.1} s"
    );

    drop(crowd);
    eventually(Duration::from_secs(20), "TCP answers again", || async {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(dns)).await {
            Ok(Ok(mut stream)) => {
                tokio::time::timeout(Duration::from_secs(2), exchange(&mut stream))
                    .await
                    .unwrap_or(false)
            }
            _ => false,
        }
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
}
