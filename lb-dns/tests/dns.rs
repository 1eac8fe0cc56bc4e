//! lb-dns end to end: run in-process on 127.4.<n>.1, health from a fake
//! healthd feed on 127.4.<n>.2, asked with raw hickory-proto messages,
//! hickory-resolver and `dig`.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use fleet::feed::MtaState;
use fleet::testkit::process::eventually;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use tokio::io::AsyncWriteExt;

const A1: &str = "a1b2c3d4";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn wait_up(lb: &LbDns, id: &str, up: u64) {
    let limit = Duration::from_secs(5);
    let start = Instant::now();
    loop {
        let status = lb.status().await;
        let ok = status["service"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id && c["up"] == up);
        if ok {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "cluster {id} with {up} MTAs up: not within {limit:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn start_with_feed(n: u8, spec: &FleetSpec) -> (FakeHealthd, LbDns) {
    let feed = FakeHealthd::start(&format!("127.4.{n}.2"), spec.feed(MtaState::Up)).await;
    let lb = LbDns::start(
        &format!("127.4.{n}.1"),
        spec,
        std::slice::from_ref(&feed.url),
    )
    .await;
    (feed, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_spreads_the_first_address_evenly() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(1, &spec).await;
    wait_up(&lb, A1, 3).await;

    // hickory-resolver, no cache: 100 lookups.
    let resolver = resolver(lb.dns, false);
    let mut firsts: HashMap<IpAddr, u32> = HashMap::new();
    for _ in 0..100 {
        let lookup = resolver.lookup(cluster(A1), RecordType::A).await.unwrap();
        let answers = lookup.answers();
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(|r| r.ttl == 30), "one TTL per RRset");
        *firsts
            .entry(answers[0].data.ip_addr().unwrap())
            .or_default() += 1;
    }
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    for (addr, count) in &firsts {
        assert!(
            (30..=37).contains(count),
            "{addr} first {count} times in 100: {firsts:?}"
        );
    }

    // dig +short: 30 queries.
    let mut firsts: HashMap<String, u32> = HashMap::new();
    for _ in 0..30 {
        let out = dig(lb.dns, &["+short", &cluster(A1), "A"]).await;
        let first = out.lines().next().unwrap_or_default().to_string();
        assert_eq!(out.lines().count(), 3, "{out}");
        *firsts.entry(first).or_default() += 1;
    }
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    assert!(firsts.values().all(|c| (8..=12).contains(c)), "{firsts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_set_the_share_of_first_places() {
    let mut spec = FleetSpec::standard();
    spec.clusters[0].1[0].weight = 3;
    let (_feed, lb) = start_with_feed(2, &spec).await;
    wait_up(&lb, A1, 3).await;
    let mut firsts: HashMap<IpAddr, u32> = HashMap::new();
    for _ in 0..100 {
        let ips = lb.a(&cluster(A1)).await;
        assert_eq!(ips.len(), 3);
        *firsts.entry(ips[0]).or_default() += 1;
    }
    let heavy = firsts[&ip("192.0.2.11")];
    assert!((55..=65).contains(&heavy), "{firsts:?}");
    assert!((15..=25).contains(&firsts[&ip("192.0.2.12")]), "{firsts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mta_going_down_leaves_the_next_answer_within_100ms() {
    let spec = FleetSpec::standard();
    let (feed, lb) = start_with_feed(3, &spec).await;
    wait_up(&lb, A1, 3).await;
    let down = ip("192.0.2.12");
    assert!(lb.a(&cluster(A1)).await.contains(&down));
    // Let the follower settle into its long-poll.
    eventually(Duration::from_secs(5), "feed long-polled", || async {
        feed.polls() >= 2
    })
    .await
    .unwrap();

    feed.set("mta-2", MtaState::Down);
    let start = Instant::now();
    loop {
        let ips = lb.a(&cluster(A1)).await;
        if !ips.contains(&down) {
            assert_eq!(ips.len(), 2);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "mta-2 still served {:?} after the feed said down",
            start.elapsed()
        );
    }
    let took = start.elapsed();
    eprintln!("mta-2 left the answers {took:?} after the feed said down");
    // Every later answer, over every client, leaves it out.
    for _ in 0..10 {
        assert!(!lb.a(&cluster(A1)).await.contains(&down));
    }
    let out = dig(lb.dns, &["+short", &cluster(A1), "A"]).await;
    assert!(!out.contains("192.0.2.12"), "{out}");
    let lookup = resolver(lb.dns, false)
        .lookup(cluster(A1), RecordType::A)
        .await
        .unwrap();
    assert!(lookup
        .answers()
        .iter()
        .all(|r| r.data.ip_addr() != Some(down)));
    // AAAA follows too.
    assert_eq!(lb.aaaa(&cluster(A1)).await, vec![ip("2001:db8::11")]);

    // And back.
    feed.set("mta-2", MtaState::Up);
    eventually(Duration::from_secs(2), "mta-2 back", || async {
        lb.a(&cluster(A1)).await.contains(&down)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_mtas_are_not_served() {
    let mut spec = FleetSpec::standard();
    spec.clusters[0].1[2] = spec.clusters[0].1[2].clone().drained();
    let (feed, lb) = start_with_feed(4, &spec).await;
    wait_up(&lb, A1, 2).await;
    for _ in 0..6 {
        let ips = lb.a(&cluster(A1)).await;
        assert_eq!(ips.len(), 2, "{ips:?}");
        assert!(
            !ips.contains(&ip("192.0.2.13")),
            "drained in the fleet file"
        );
    }
    // Drained by healthd (admin call): out too.
    feed.set("mta-1", MtaState::Drain);
    wait_up(&lb, A1, 1).await;
    assert_eq!(lb.a(&cluster(A1)).await, vec![ip("192.0.2.12")]);
    let out = dig(lb.dns, &["+short", &cluster(A1), "A"]).await;
    assert_eq!(out.trim(), "192.0.2.12");
    assert_eq!(
        resolve_a(lb.dns, &cluster(A1)).await,
        vec![ip("192.0.2.12")]
    );
    // Everything else down: fail-open still leaves drained MTAs out.
    feed.set("mta-2", MtaState::Down);
    wait_up(&lb, A1, 0).await;
    assert_eq!(lb.a(&cluster(A1)).await, vec![ip("192.0.2.12")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mta_up_fails_open_and_is_counted() {
    let spec = FleetSpec::standard();
    let (feed, lb) = start_with_feed(5, &spec).await;
    wait_up(&lb, A1, 3).await;
    let series = "lb_dns_all_down_events_total{cluster=\"a1b2c3d4\",action=\"serve_all\"}";
    // The counter exists from the start (labelled counters start at 0).
    let before = lb
        .metric(series)
        .await
        .expect("the all-down counter exists before any all-down");
    for name in ["mta-1", "mta-2", "mta-3"] {
        feed.set(name, MtaState::Down);
    }
    wait_up(&lb, A1, 0).await;
    let mut ips = lb.a(&cluster(A1)).await;
    ips.sort();
    assert_eq!(
        ips,
        vec![ip("192.0.2.11"), ip("192.0.2.12"), ip("192.0.2.13")]
    );
    let out = dig(lb.dns, &[&cluster(A1), "A"]).await;
    assert!(out.contains("ANSWER: 3"), "{out}");
    assert_eq!(resolve_a(lb.dns, &cluster(A1)).await, ips);
    assert_eq!(lb.metric(series).await, Some(before + 1.0));
    assert_eq!(
        lb.metric("lb_dns_cluster_all_down{cluster=\"a1b2c3d4\"}")
            .await,
        Some(1.0)
    );
    let status = lb.status().await;
    assert!(status["service"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == A1 && c["all_down"] == true));
    // One MTA back: only it.
    feed.set("mta-3", MtaState::Up);
    wait_up(&lb, A1, 1).await;
    assert_eq!(lb.a(&cluster(A1)).await, vec![ip("192.0.2.13")]);
    assert_eq!(
        lb.metric(series).await,
        Some(before + 1.0),
        "one per transition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mta_up_with_when_all_down_empty_answers_nodata() {
    let mut spec = FleetSpec::standard();
    spec.when_all_down = "empty";
    let (feed, lb) = start_with_feed(6, &spec).await;
    wait_up(&lb, A1, 3).await;
    for name in ["mta-1", "mta-2", "mta-3"] {
        feed.set(name, MtaState::Down);
    }
    wait_up(&lb, A1, 0).await;
    let answer = udp(lb.dns, &query(&cluster(A1), RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert!(answer.metadata.authoritative);
    assert!(soa_serial(&answer).is_some(), "NODATA carries the SOA");
    assert_eq!(
        lb.metric("lb_dns_all_down_events_total{cluster=\"a1b2c3d4\",action=\"empty\"}")
            .await
            .map(|v| v >= 1.0),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_carry_the_soa() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(7, &spec).await;
    wait_up(&lb, A1, 3).await;

    for name in [
        format!("nope.{ORIGIN}."),
        format!("x.c-{A1}.{ORIGIN}."),
        format!("c-ffff.{ORIGIN}."),
    ] {
        let answer = udp(lb.dns, &query(&name, RecordType::A)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(answer.metadata.authoritative);
        assert!(answer.answers.is_empty());
        assert_eq!(answer.authorities.len(), 1);
        assert!(matches!(answer.authorities[0].data, RData::SOA(_)));
    }
    // NODATA: another type at a cluster (MX and TXT are answered, see
    // tests/conformance.rs); AAAA of a cluster without IPv6.
    for (name, qtype) in [
        (cluster(A1), RecordType::SRV),
        (cluster(A1), RecordType::CAA),
        (cluster("e5f6"), RecordType::AAAA),
        (format!("{ORIGIN}."), RecordType::A),
    ] {
        let answer = udp(lb.dns, &query(&name, qtype)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(answer.metadata.authoritative);
        assert!(answer.answers.is_empty(), "{name} {qtype}");
        assert!(
            matches!(answer.authorities[0].data, RData::SOA(_)),
            "{name} {qtype}"
        );
    }

    let out = dig(lb.dns, &[&format!("nope.{ORIGIN}"), "A"]).await;
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("flags: qr aa"), "{out}");
    assert!(out.contains("AUTHORITY: 1"), "{out}");
    assert!(
        out.contains(&format!("SOA\tns1.{ORIGIN}. hostmaster.{ORIGIN}.")),
        "{out}"
    );
    let out = dig(lb.dns, &[&cluster("e5f6"), "AAAA"]).await;
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("ANSWER: 0, AUTHORITY: 1"), "{out}");

    let resolver = resolver(lb.dns, false);
    let error = resolver
        .lookup(format!("nope.{ORIGIN}."), RecordType::A)
        .await
        .unwrap_err();
    assert!(error.is_nx_domain(), "{error}");
    assert!(error.into_soa().is_some());
    let error = resolver
        .lookup(cluster("e5f6"), RecordType::AAAA)
        .await
        .unwrap_err();
    assert!(
        error.is_no_records_found() && !error.is_nx_domain(),
        "{error}"
    );
    assert!(error.into_soa().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apex_has_soa_ns_and_glue() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(8, &spec).await;
    let apex = format!("{ORIGIN}.");
    let soa = udp(lb.dns, &query(&apex, RecordType::SOA)).await;
    assert!(soa.metadata.authoritative);
    assert_eq!(soa.answers.len(), 1);
    let RData::SOA(record) = &soa.answers[0].data else {
        panic!("{soa:?}")
    };
    assert_eq!(record.mname.to_string(), format!("ns1.{ORIGIN}."));
    assert_eq!(record.rname.to_string(), format!("hostmaster.{ORIGIN}."));

    let ns = udp(lb.dns, &query(&apex, RecordType::NS)).await;
    assert!(ns.metadata.authoritative);
    assert_eq!(ns.answers.len(), 2);
    let glue: Vec<IpAddr> = ns
        .additionals
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    assert_eq!(glue, vec![ip("192.0.2.53"), ip("2001:db8::53")]);

    let out = dig(lb.dns, &["+short", &format!("ns1.{ORIGIN}"), "A"]).await;
    assert_eq!(out.trim(), "192.0.2.53");
    let out = dig(lb.dns, &[&apex, "NS"]).await;
    assert!(
        out.contains("ADDITIONAL: 3"),
        "two glue records and the OPT: {out}"
    );
    assert!(out.contains("AAAA\t2001:db8::53"), "{out}");
    let lookup = resolver(lb.dns, false)
        .lookup(apex.as_str(), RecordType::SOA)
        .await
        .unwrap();
    assert_eq!(lookup.answers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soa_serial_moves_when_the_answers_change() {
    let spec = FleetSpec::standard();
    let (feed, lb) = start_with_feed(9, &spec).await;
    wait_up(&lb, A1, 3).await;
    let apex = format!("{ORIGIN}.");
    let serial =
        || async { soa_serial(&udp(lb.dns, &query(&apex, RecordType::SOA)).await).unwrap() };
    let first = serial().await;
    assert_eq!(serial().await, first, "no change, same serial");
    feed.set("mta-1", MtaState::Down);
    wait_up(&lb, A1, 2).await;
    let second = serial().await;
    assert!(second.wrapping_sub(first) > 0 && second.wrapping_sub(first) < 1 << 31);
    // A change that alters no answer (down -> unknown) keeps the serial.
    feed.set("mta-1", MtaState::Unknown);
    assert_eq!(serial().await, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_zone_is_refused() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(10, &spec).await;
    for name in ["example.com.", "unmta.test.evil.", "test.", "."] {
        let answer = udp(lb.dns, &query(name, RecordType::A)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{name}"
        );
        assert!(!answer.metadata.authoritative);
        assert!(answer.answers.is_empty());
    }
    let out = dig(lb.dns, &["example.com", "A"]).await;
    assert!(out.contains("status: REFUSED"), "{out}");
    let error = resolver(lb.dns, false)
        .lookup("example.com.", RecordType::A)
        .await
        .unwrap_err();
    assert!(!error.is_nx_domain(), "{error}");
    assert!(lb.queries("A", "REFUSED").await >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_gets_the_rfc8482_answer() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(11, &spec).await;
    for name in [cluster(A1), format!("{ORIGIN}.")] {
        for answer in [
            udp(lb.dns, &query(&name, RecordType::ANY)).await,
            tcp(lb.dns, &query(&name, RecordType::ANY)).await,
        ] {
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
            assert!(answer.metadata.authoritative);
            assert_eq!(answer.answers.len(), 1);
            let RData::HINFO(hinfo) = &answer.answers[0].data else {
                panic!("{answer:?}")
            };
            assert_eq!(&*hinfo.cpu, b"RFC8482");
        }
    }
    let answer = udp(lb.dns, &query(&format!("nope.{ORIGIN}."), RecordType::ANY)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    let out = dig(lb.dns, &[&cluster(A1), "ANY"]).await;
    assert!(out.contains("HINFO\t\"RFC8482\" \"\""), "{out}");
    let lookup = resolver(lb.dns, false)
        .lookup(cluster(A1), RecordType::ANY)
        .await
        .unwrap();
    assert!(
        matches!(lookup.answers()[0].data, RData::HINFO(_)),
        "{lookup:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_udp_truncates_at_512_bytes_and_tcp_carries_everything() {
    let mtas: Vec<MtaSpec> = (0..64)
        .map(|i| {
            mta(&format!("big-{i}"), &format!("198.51.100.{}", i + 1))
                .v6(&format!("2001:db8:1::{:x}", i + 1))
        })
        .collect();
    let spec = FleetSpec {
        max_answers: 64,
        when_all_down: "serve_all",
        clusters: vec![("b16".into(), mtas)],
    };
    let (_feed, lb) = start_with_feed(12, &spec).await;
    wait_up(&lb, "b16", 64).await;
    let name = cluster("b16");

    // Plain UDP (no EDNS): at most 512 bytes, TC set.
    for qtype in [RecordType::A, RecordType::AAAA] {
        let bytes = query(&name, qtype).to_vec().unwrap();
        let raw = udp_raw(lb.dns, &bytes).await.unwrap();
        assert!(
            raw.len() <= 512,
            "{qtype}: {} bytes over plain UDP",
            raw.len()
        );
        let answer = hickory_proto::op::Message::from_vec(&raw).unwrap();
        assert!(answer.metadata.truncation, "{qtype}: TC");
    }
    // EDNS 1232: the A set fits, the AAAA set does not.
    let a = udp(lb.dns, &with_edns(query(&name, RecordType::A), 4096, 0)).await;
    assert!(!a.metadata.truncation);
    assert_eq!(a.answers.len(), 64);
    let bytes = with_edns(query(&name, RecordType::AAAA), 4096, 0)
        .to_vec()
        .unwrap();
    let raw = udp_raw(lb.dns, &bytes).await.unwrap();
    assert!(raw.len() <= 1232, "{} bytes", raw.len());
    let aaaa = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert!(aaaa.metadata.truncation);
    assert!(aaaa.edns.is_some(), "a truncated EDNS answer keeps its OPT");
    assert!(
        aaaa.answers.len() >= 40,
        "fills the payload: {}",
        aaaa.answers.len()
    );
    // Asked in capitals, and with a small payload: still fits, with the OPT.
    let shouting = name.to_uppercase();
    let bytes = with_edns(query(&shouting, RecordType::AAAA), 700, 0)
        .to_vec()
        .unwrap();
    let raw = udp_raw(lb.dns, &bytes).await.unwrap();
    assert!(raw.len() <= 700, "{} bytes", raw.len());
    let aaaa = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert!(aaaa.metadata.truncation && aaaa.edns.is_some());
    // TCP: everything.
    for qtype in [RecordType::A, RecordType::AAAA] {
        let answer = tcp(lb.dns, &query(&name, qtype)).await;
        assert!(!answer.metadata.truncation);
        assert_eq!(answer.answers.len(), 64, "{qtype} over TCP");
    }

    let out = dig(lb.dns, &["+noedns", "+ignore", &name, "A"]).await;
    assert!(out.contains("flags: qr aa tc"), "{out}");
    let rcvd: usize = out
        .split("MSG SIZE  rcvd: ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(rcvd <= 512, "{out}");
    let out = dig(lb.dns, &["+noedns", &name, "AAAA"]).await;
    assert!(
        out.contains("ANSWER: 64"),
        "dig retries over TCP after TC: {out}"
    );
    let out = dig(lb.dns, &["+tcp", &name, "AAAA"]).await;
    assert!(out.contains("ANSWER: 64"), "{out}");
    let lookup = resolver(lb.dns, true)
        .lookup(name.as_str(), RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(lookup.answers().len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_serves_several_queries_per_connection() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(13, &spec).await;
    wait_up(&lb, A1, 3).await;
    let mut stream = tokio::net::TcpStream::connect(lb.dns).await.unwrap();
    let mut firsts = Vec::new();
    for _ in 0..6 {
        let answer = tcp_exchange(&mut stream, &query(&cluster(A1), RecordType::A)).await;
        assert_eq!(answer.answers.len(), 3);
        firsts.push(addresses(&answer)[0]);
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 3, "rotates on one connection too");
    // Pipelined: three queries written at once, three answers back.
    let queries = [
        query(&cluster(A1), RecordType::A),
        query(&format!("nope.{ORIGIN}."), RecordType::A),
        query(&format!("{ORIGIN}."), RecordType::SOA),
    ];
    let mut bytes = Vec::new();
    for q in &queries {
        let b = q.to_vec().unwrap();
        bytes.extend_from_slice(&(b.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&b);
    }
    stream.write_all(&bytes).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        use tokio::io::AsyncReadExt;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await.unwrap();
        ids.push(
            hickory_proto::op::Message::from_vec(&buf)
                .unwrap()
                .metadata
                .id,
        );
    }
    let mut want: Vec<u16> = queries.iter().map(|q| q.metadata.id).collect();
    want.sort();
    ids.sort();
    assert_eq!(ids, want);
    // dig over TCP, and a TCP-only resolver.
    let out = dig(lb.dns, &["+tcp", "+short", &cluster(A1), "A"]).await;
    assert_eq!(out.lines().count(), 3, "{out}");
    let lookup = resolver(lb.dns, true)
        .lookup(cluster(A1), RecordType::A)
        .await
        .unwrap();
    assert_eq!(lookup.answers().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(14, &spec).await;
    let answer = udp(
        lb.dns,
        &with_edns(query(&cluster(A1), RecordType::A), 4096, 0),
    )
    .await;
    let edns = answer.edns.as_ref().expect("OPT echoed");
    assert_eq!(edns.version(), 0);
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(answer.answers.len(), 3);
    let plain = udp(lb.dns, &query(&cluster(A1), RecordType::A)).await;
    assert!(plain.edns.is_none(), "no OPT without one in the query");
    let small = udp(
        lb.dns,
        &with_edns(query(&cluster(A1), RecordType::A), 100, 0),
    )
    .await;
    assert_eq!(small.edns.as_ref().unwrap().max_payload(), 512);

    let bad = udp(
        lb.dns,
        &with_edns(query(&cluster(A1), RecordType::A), 4096, 1),
    )
    .await;
    // BADVERS and BADSIG share the value 16 (RFC 6891, RFC 8945).
    assert_eq!(u16::from(bad.metadata.response_code), 16);
    assert!(bad.answers.is_empty());
    assert_eq!(bad.edns.as_ref().unwrap().version(), 0);

    // hickory-resolver speaks EDNS by default.
    assert_eq!(resolve_a(lb.dns, &cluster(A1)).await.len(), 3);
    let out = dig(lb.dns, &["+edns=0", &cluster(A1), "A"]).await;
    assert!(out.contains("EDNS: version: 0"), "{out}");
    assert!(out.contains("udp: 1232"), "{out}");
    let out = dig(
        lb.dns,
        &["+edns=1", "+noednsnegotiation", &cluster(A1), "A"],
    )
    .await;
    assert!(out.contains("status: BADVERS"), "{out}");
    assert!(lb.queries("A", "BADVERS").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_case_insensitive() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(15, &spec).await;
    wait_up(&lb, A1, 3).await;
    let mixed = "C-A1b2C3d4.UnMtA.TeSt.";
    let answer = udp(lb.dns, &query(mixed, RecordType::A)).await;
    assert_eq!(answer.answers.len(), 3);
    assert_eq!(
        answer.queries[0].name().to_string(),
        mixed,
        "question echoed as asked"
    );
    let soa = udp(lb.dns, &query("UNMTA.TEST.", RecordType::SOA)).await;
    assert_eq!(soa.answers.len(), 1);
    let nx = udp(lb.dns, &query("NOPE.UNMTA.TEST.", RecordType::A)).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let out = dig(lb.dns, &["+short", "C-A1B2C3D4.UNMTA.TEST", "A"]).await;
    assert_eq!(out.lines().count(), 3, "{out}");
    let lookup = resolver(lb.dns, false)
        .lookup("c-A1B2C3D4.unmta.TEST.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(lookup.answers().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_outage_keeps_the_last_state() {
    let spec = FleetSpec::standard();
    let (feed, lb) = start_with_feed(16, &spec).await;
    wait_up(&lb, A1, 3).await;
    feed.set("mta-2", MtaState::Down);
    wait_up(&lb, A1, 2).await;
    let fresh = format!("lb_dns_feed_fresh{{feed=\"{}\"}}", feed.url);
    eventually(Duration::from_secs(5), "fresh in metrics", || async {
        lb.metric(&fresh).await == Some(1.0)
    })
    .await
    .unwrap();

    feed.outage();
    eventually(Duration::from_secs(5), "stale", || async {
        lb.status().await["service"]["health"]["stale"] == true
    })
    .await
    .unwrap();
    let status = lb.status().await;
    let reason = status["service"]["health"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("stale:"), "{reason}");
    assert!(reason.contains(&feed.url), "{reason}");
    for _ in 0..6 {
        let mut ips = lb.a(&cluster(A1)).await;
        ips.sort();
        assert_eq!(
            ips,
            vec![ip("192.0.2.11"), ip("192.0.2.13")],
            "last known state"
        );
    }
    let out = dig(lb.dns, &["+short", &cluster(A1), "A"]).await;
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(
        resolve_a(lb.dns, &cluster(A1)).await,
        vec![ip("192.0.2.11"), ip("192.0.2.13")]
    );
    // Ready means serving; /ready's body and the metrics tell the staleness.
    eventually(Duration::from_secs(5), "/ready says stale", || async {
        let (code, body) = lb.http("/ready").await;
        code == 200 && body.contains("degraded: stale:")
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "stale in metrics", || async {
        lb.metric("lb_dns_health_stale").await == Some(1.0) && lb.metric(&fresh).await == Some(0.0)
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "state age grows", || async {
        lb.metric("lb_dns_health_state_age_seconds")
            .await
            .unwrap_or(0.0)
            > 0.0
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_any_healthd_answers_from_the_state_file() {
    let spec = FleetSpec::standard();
    let dir = tempfile::tempdir().unwrap();
    let feed = FakeHealthd::start("127.4.17.2", spec.feed(MtaState::Up)).await;
    let lb = LbDns::start_in(
        dir.path(),
        "127.4.17.1",
        &spec,
        std::slice::from_ref(&feed.url),
    )
    .await;
    wait_up(&lb, A1, 3).await;
    feed.set("mta-1", MtaState::Down);
    wait_up(&lb, A1, 2).await;
    let state_file = dir.path().join("state/lb-dns.json");
    eventually(Duration::from_secs(5), "state file written", || async {
        std::fs::read_to_string(&state_file)
            .map(|s| s.contains("\"mta-1\": \"down\""))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    lb.stop().await;
    feed.outage();

    // Nothing listens on 127.4.17.3:9: every feed unreachable.
    let dead = "http://127.4.17.3:9".to_string();
    let lb = LbDns::start_in(dir.path(), "127.4.17.1", &spec, std::slice::from_ref(&dead)).await;
    let mut ips = lb.a(&cluster(A1)).await;
    ips.sort();
    assert_eq!(ips, vec![ip("192.0.2.12"), ip("192.0.2.13")]);
    let out = dig(lb.dns, &["+short", &cluster(A1), "A"]).await;
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(resolve_a(lb.dns, &cluster(A1)).await, ips);
    let health = &lb.status().await["service"]["health"];
    assert_eq!(health["source"], "state_file");
    assert_eq!(health["stale"], true);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_state_at_all_every_cluster_answers_when_all_down() {
    let dead = "http://127.4.18.3:9".to_string();
    let spec = FleetSpec::standard();
    let lb = LbDns::start("127.4.18.1", &spec, std::slice::from_ref(&dead)).await;
    let mut ips = lb.a(&cluster(A1)).await;
    ips.sort();
    assert_eq!(ips.len(), 3, "fail-open: {ips:?}");
    let reason = lb.status().await["service"]["health"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("no health state"), "{reason}");
    lb.stop().await;

    let mut spec = FleetSpec::standard();
    spec.when_all_down = "empty";
    let lb = LbDns::start("127.4.18.1", &spec, &[dead]).await;
    let answer = udp(lb.dns, &query(&cluster(A1), RecordType::A)).await;
    assert!(answer.answers.is_empty());
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_feeds_merge_and_one_alone_cannot_take_an_mta_out() {
    let spec = FleetSpec::standard();
    let one = FakeHealthd::start("127.4.19.2", spec.feed(MtaState::Up)).await;
    let two = FakeHealthd::start("127.4.19.3", spec.feed(MtaState::Up)).await;
    let lb = LbDns::start("127.4.19.1", &spec, &[one.url.clone(), two.url.clone()]).await;
    wait_up(&lb, A1, 3).await;
    one.set("mta-1", MtaState::Down);
    // two still says up: served.
    eventually(Duration::from_secs(5), "feed one applied", || async {
        lb.status().await["service"]["health"]["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["url"] == one.url.as_str() && f["generation"] == 2)
    })
    .await
    .unwrap();
    assert!(lb.a(&cluster(A1)).await.contains(&ip("192.0.2.11")));
    // two goes away: one alone decides.
    two.outage();
    wait_up(&lb, A1, 2).await;
    assert!(!lb.a(&cluster(A1)).await.contains(&ip("192.0.2.11")));
    let status = lb.status().await;
    assert_eq!(status["service"]["health"]["stale"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_cluster_and_keeps_serving() {
    let spec = FleetSpec::standard();
    let (_feed, lb) = start_with_feed(20, &spec).await;
    wait_up(&lb, A1, 3).await;
    let nx = udp(lb.dns, &query(&cluster("f00d"), RecordType::A)).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    let mut bigger = spec.clone();
    bigger
        .clusters
        .push(("f00d".into(), vec![mta("food-1", "192.0.2.31")]));
    std::fs::write(lb.dir.join("fleet.toml"), bigger.toml()).unwrap();
    lb.reload();
    eventually(Duration::from_secs(5), "new cluster served", || async {
        lb.a(&cluster("f00d")).await == vec![ip("192.0.2.31")]
    })
    .await
    .unwrap();
    // A broken file is refused; the zone stays.
    std::fs::write(lb.dir.join("fleet.toml"), "[zone]\norigin = 5\n").unwrap();
    lb.reload();
    eventually(Duration::from_secs(5), "reload refused", || async {
        !lb.status().await["config"]["last_error"].is_null()
    })
    .await
    .unwrap();
    assert_eq!(lb.a(&cluster("f00d")).await, vec![ip("192.0.2.31")]);
    assert_eq!(lb.a(&cluster(A1)).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_queries_answers_and_feed_freshness() {
    let spec = FleetSpec::standard();
    let (feed, lb) = start_with_feed(21, &spec).await;
    wait_up(&lb, A1, 3).await;
    for _ in 0..5 {
        lb.a(&cluster(A1)).await;
    }
    udp(lb.dns, &query(&format!("nope.{ORIGIN}."), RecordType::AAAA)).await;
    assert!(lb.queries("A", "NOERROR").await >= 5.0);
    assert_eq!(
        lb.metric("lb_dns_queries_total{qtype=\"AAAA\",rcode=\"NXDOMAIN\"}")
            .await,
        Some(1.0)
    );
    assert!(
        lb.metric("lb_dns_answers_total{cluster=\"a1b2c3d4\"}")
            .await
            .unwrap()
            >= 5.0
    );
    let fresh = format!("lb_dns_feed_fresh{{feed=\"{}\"}}", feed.url);
    eventually(Duration::from_secs(5), "fresh in metrics", || async {
        lb.metric(&fresh).await == Some(1.0)
    })
    .await
    .unwrap();
    assert_eq!(lb.metric("lb_dns_health_stale").await, Some(0.0));
    assert_eq!(
        lb.metric("lb_dns_cluster_up_mtas{cluster=\"a1b2c3d4\"}")
            .await,
        Some(3.0)
    );
    let (code, body) = lb.http("/ready").await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_can_change_the_feeds_followed() {
    let spec = FleetSpec::standard();
    let dead = "http://127.4.22.3:9".to_string();
    let lb = LbDns::start("127.4.22.1", &spec, std::slice::from_ref(&dead)).await;
    assert_eq!(lb.status().await["service"]["health"]["stale"], true);
    let mut feed_health = spec.feed(MtaState::Up);
    feed_health.clusters[0].mtas[1].state = MtaState::Down;
    let feed = FakeHealthd::start("127.4.22.2", feed_health).await;
    write_config(
        &lb.dir,
        "127.4.22.1",
        &spec,
        std::slice::from_ref(&feed.url),
    );
    lb.reload();
    wait_up(&lb, A1, 2).await;
    let health = &lb.status().await["service"]["health"];
    assert_eq!(health["stale"], false);
    let feeds = health["feeds"].as_array().unwrap();
    assert_eq!(feeds.len(), 1, "{feeds:?}");
    assert_eq!(feeds[0]["url"], feed.url.as_str());
    assert!(!lb.a(&cluster(A1)).await.contains(&ip("192.0.2.12")));
}

/// A query sent from a thread kept on `cpu`; the reply, if any in 5 s.
fn query_from_cpu(dns: std::net::SocketAddr, cpu: usize, message: &[u8]) -> Option<Vec<u8>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            lb_dns::steer::run_on(&[cpu]).unwrap();
            let socket = std::net::UdpSocket::bind((dns.ip(), 0)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            socket.send_to(message, dns).unwrap();
            let mut buf = [0u8; 1500];
            let n = socket.recv(&mut buf).ok()?;
            Some(buf[..n].to_vec())
        })
        .join()
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_is_steered_by_cpu_and_every_cpus_socket_answers() {
    let lb = LbDns::standard_with("127.4.54.1", "").await;
    let soa = query(&format!("{ORIGIN}."), RecordType::SOA)
        .to_vec()
        .unwrap();
    for cpu in lb_dns::steer::allowed_cpus().unwrap() {
        let dns = lb.dns;
        let message = soa.clone();
        let reply = tokio::task::spawn_blocking(move || query_from_cpu(dns, cpu, &message))
            .await
            .unwrap();
        let reply = reply.unwrap_or_else(|| panic!("no answer to a query sent on CPU {cpu}"));
        assert_eq!(reply[..2], soa[..2], "the answer to CPU {cpu}'s query");
    }
    eventually(
        Duration::from_secs(5),
        "steered by CPU in metrics",
        || async { lb.metric("lb_dns_udp_steered_by_cpu").await == Some(1.0) },
    )
    .await
    .unwrap();
    assert_eq!(
        lb.metric("lb_dns_udp_steering_changes_total").await,
        Some(0.0)
    );

    let spread = LbDns::standard_with("127.4.54.2", "udp_steering = \"spread\"").await;
    spread.a(&cluster(A1)).await;
    assert_eq!(spread.metric("lb_dns_udp_steered_by_cpu").await, Some(0.0));
}
