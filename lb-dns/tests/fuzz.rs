//! A bounded fuzz loop (fixed seed): random bytes and mutated valid queries
//! over UDP and TCP. The server must survive, keep answering correctly, and
//! every answer it sends must be a well-formed DNS message.

mod common;

use std::time::Duration;

use common::*;
use fleet::feed::MtaState;
use fleet::testkit::process::eventually;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

const ROUNDS: usize = 4000;
/// Packets thrown straight at the handler (no sockets: fast).
const HANDLER_ROUNDS: usize = 50_000;

fn corpus() -> Vec<Vec<u8>> {
    let mut corpus = Vec::new();
    for name in [
        cluster("a1b2c3d4"),
        cluster("e5f6"),
        format!("{ORIGIN}."),
        format!("nope.{ORIGIN}."),
        "example.com.".to_string(),
    ] {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SOA,
            RecordType::NS,
            RecordType::ANY,
            RecordType::MX,
        ] {
            corpus.push(query(&name, qtype).to_vec().unwrap());
            corpus.push(with_edns(query(&name, qtype), 4096, 0).to_vec().unwrap());
        }
    }
    corpus
}

fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_bool(0.3) {
        let len = rng.random_range(0..600);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut bytes = corpus[rng.random_range(0..corpus.len())].clone();
    for _ in 0..rng.random_range(1..=6) {
        if bytes.is_empty() {
            bytes.push(rng.random());
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..7) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes[at] = rng.random(),
            2 => bytes.truncate(at),
            3 => {
                let extra: Vec<u8> = (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
                bytes.splice(at..at, extra);
            }
            4 if bytes.len() >= 12 => {
                // Section counts: absurd values.
                let field = 4 + 2 * rng.random_range(0..4);
                let value: u16 = rng.random();
                bytes[field..field + 2].copy_from_slice(&value.to_be_bytes());
            }
            5 if bytes.len() >= 4 => {
                // Flags and opcode.
                bytes[2] = rng.random();
                bytes[3] = rng.random();
            }
            _ => {
                // A compression pointer somewhere.
                bytes[at] = 0xc0 | rng.random_range(0..0x40);
            }
        }
    }
    bytes
}

async fn check_answers(lb: &LbDns) {
    let answer = udp(lb.dns, &query(&cluster("a1b2c3d4"), RecordType::A)).await;
    assert_eq!(answer.answers.len(), 3, "UDP still answers correctly");
}

fn drain_replies(socket: &UdpSocket, replies: &mut usize) {
    let mut buf = vec![0u8; 65535];
    while let Ok(n) = socket.try_recv(&mut buf) {
        *replies += 1;
        if let Err(e) = Message::from_vec(&buf[..n]) {
            panic!(
                "the server sent a malformed message ({e}): {:02x?}",
                &buf[..n]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_never_take_the_server_down() {
    let spec = FleetSpec::standard();
    let feed = FakeHealthd::start("127.4.30.2", spec.feed(MtaState::Up)).await;
    let lb = LbDns::start("127.4.30.1", &spec, std::slice::from_ref(&feed.url)).await;
    eventually(Duration::from_secs(5), "feed applied", || async {
        lb.status().await["service"]["health"]["stale"] == false
    })
    .await
    .unwrap();
    let corpus = corpus();
    let mut rng = StdRng::seed_from_u64(0x1b_d5_f0_22);
    let socket = UdpSocket::bind("127.4.30.3:0").await.unwrap();
    socket.connect(lb.dns).await.unwrap();
    let mut replies = 0;
    let mut tcp_sent = 0;
    for round in 0..ROUNDS {
        let bytes = mutate(&mut rng, &corpus);
        if round % 10 == 0 {
            // Over TCP: a length prefix that is right, or not.
            let mut stream = TcpStream::connect(lb.dns).await.unwrap();
            let len = if rng.random_bool(0.8) {
                bytes.len() as u16
            } else {
                rng.random()
            };
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = stream.write_all(&framed).await;
            let _ = stream.shutdown().await;
            tcp_sent += 1;
        } else if !bytes.is_empty() {
            socket.send(&bytes).await.unwrap();
        }
        if round % 50 == 0 {
            // Let the answers come back, then check them.
            tokio::task::yield_now().await;
            drain_replies(&socket, &mut replies);
        }
        if round % 250 == 0 {
            check_answers(&lb).await;
        }
    }
    // A round trip after the last packet: its replies are in by then.
    check_answers(&lb).await;
    drain_replies(&socket, &mut replies);
    eprintln!("{ROUNDS} packets ({tcp_sent} over TCP), {replies} replies");
    assert!(
        replies > 100,
        "the server answered mutated queries ({replies})"
    );

    // Still serving: UDP, TCP, admin.
    check_answers(&lb).await;
    let answer = tcp(lb.dns, &query(&cluster("a1b2c3d4"), RecordType::A)).await;
    assert_eq!(answer.answers.len(), 3);
    let (code, _) = lb.http("/live").await;
    assert_eq!(code, 200);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_get_formerr_and_responses_get_nothing() {
    let spec = FleetSpec::standard();
    let lb = LbDns::start("127.4.31.1", &spec, &[]).await;
    let valid = query(&cluster("a1b2c3d4"), RecordType::A).to_vec().unwrap();

    // A header that promises a question, then garbage: FORMERR, same id.
    let mut broken = valid[..12].to_vec();
    broken.extend_from_slice(&[0x05, b'a', b'b']);
    let raw = udp_raw(lb.dns, &broken).await.expect("FORMERR answer");
    let answer = Message::from_vec(&raw).unwrap();
    assert_eq!(answer.metadata.id, u16::from_be_bytes([valid[0], valid[1]]));
    assert_eq!(
        answer.metadata.response_code,
        hickory_proto::op::ResponseCode::FormErr
    );
    // Two questions: FORMERR from the handler.
    let mut two = query(&cluster("a1b2c3d4"), RecordType::A);
    two.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii(format!("{ORIGIN}.")).unwrap(),
        RecordType::SOA,
    ));
    let answer = udp(lb.dns, &two).await;
    assert_eq!(
        answer.metadata.response_code,
        hickory_proto::op::ResponseCode::FormErr
    );
    // A response sent to us (reflection) and a runt get no answer at all.
    let mut reflected = valid.clone();
    reflected[2] |= 0x80;
    assert_eq!(udp_raw(lb.dns, &reflected).await, None);
    assert_eq!(udp_raw(lb.dns, &valid[..7]).await, None);
    // Another opcode: NOTIMP.
    let mut notify = valid.clone();
    notify[2] = (notify[2] & 0x87) | (4 << 3);
    let answer = Message::from_vec(&udp_raw(lb.dns, &notify).await.unwrap()).unwrap();
    assert_eq!(
        answer.metadata.response_code,
        hickory_proto::op::ResponseCode::NotImp
    );
    assert!(lb.queries("none", "FORMERR").await >= 1.0);
    lb.stop().await;
}

#[tokio::test]
async fn the_handler_answers_every_mutated_packet_with_a_well_formed_message() {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use lb_dns::answers::Answers;
    use lb_dns::handler::Handler;
    use lb_dns::health::HealthView;
    use lb_dns::metrics::Metrics;

    let spec = FleetSpec::standard();
    let fleet = fleet::parse_fleet(&spec.toml(), "fleet.toml").unwrap();
    let mut health = HealthView::default();
    health.mtas.insert("mta-1".into(), MtaState::Up);
    health.mtas.insert("mta-2".into(), MtaState::Up);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let answers = Answers::build(&fleet, &health, 1, |c| metrics.served_counter(c)).unwrap();
    let handler = Handler::new(Arc::new(ArcSwap::from_pointee(answers)), metrics);
    let src: std::net::SocketAddr = "127.4.32.1:5353".parse().unwrap();

    let corpus = corpus();
    let mut rng = StdRng::seed_from_u64(0x5eed_0d15);
    let (mut replies, mut formerr, mut silent) = (0, 0, 0);
    for _ in 0..HANDLER_ROUNDS {
        let bytes = mutate(&mut rng, &corpus);
        match lb_dns::udp::answer(&handler, &bytes, src) {
            None => silent += 1,
            Some(reply) => {
                replies += 1;
                assert!(reply.len() <= 1232, "{} bytes", reply.len());
                let message = Message::from_vec(&reply).unwrap_or_else(|e| {
                    panic!("malformed reply ({e}) to {bytes:02x?}: {reply:02x?}")
                });
                assert_eq!(
                    message.metadata.id,
                    u16::from_be_bytes([bytes[0], bytes[1]])
                );
                if message.metadata.response_code == hickory_proto::op::ResponseCode::FormErr {
                    formerr += 1;
                }
            }
        }
    }
    eprintln!("{HANDLER_ROUNDS} packets: {replies} replies ({formerr} FORMERR), {silent} dropped");
    assert!(replies > HANDLER_ROUNDS / 4 && formerr > 0 && silent > 0);
    // And it still answers properly.
    let valid = query(&cluster("a1b2c3d4"), RecordType::A).to_vec().unwrap();
    let reply = lb_dns::udp::answer(&handler, &valid, src).unwrap();
    assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 2);
}
