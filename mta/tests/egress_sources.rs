//! Egress sources with the real proxies: Dante (SOCKS5, with and without
//! username/password), HAProxy (PROXY v2 in, the asked-for source address
//! out) and a local bind address; a proxy that refuses or dies; per-source
//! rate limits kept fleet-wide in Redis by three MTAs, and their fallback
//! when Redis stops. Addresses: 127.2.40-49.x (listeners), 127.8.40-49.x
//! (the addresses mail leaves from). The proxy tests run in a user and
//! network namespace of their own (`fleet::testkit::namespace`): Dante's
//! test user lives in a private mount namespace and HAProxy binds foreign
//! sources, which need root there.

mod egress_support;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egress_support::*;
use fleet::testkit::example_configs::ExampleConfigs;
use fleet::testkit::proxies::{self, ProxyProcess};
use fleet::testkit::sink::{Behaviour, Received};
use mta::events::EventKind;

fn out(net: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 8, net, last)
}

fn at(net: u8, last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(net, last).into(), port)
}

/// Dante on `net`.2:1080 asking for `unmta`/`s3cret` and sending from
/// `out(net, 11)`, and HAProxy on `net`.3:5000; both listening.
async fn password_socks_and_haproxy(net: u8) -> (ProxyProcess, ProxyProcess) {
    let socks = proxies::dante(
        at(net, 2, 1080),
        out(net, 11).into(),
        Some(("unmta", "s3cret")),
    );
    let haproxy = proxies::haproxy(at(net, 3, 5000));
    (
        started(socks.unwrap()).await,
        started(haproxy.unwrap()).await,
    )
}

async fn started(mut proxy: ProxyProcess) -> ProxyProcess {
    proxy
        .wait_listening(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("the proxy starts: {e:#}"));
    proxy
}

/// Relocated configs whose cluster has `sources` (TOML for
/// `[[clusters.egress_sources]]` and `[clusters.egress_pool]`), delivering
/// `proxied.test` to the sink at `.25`, with `egress` under
/// `[delivery.egress]`.
fn configs_with(net: u8, sources: &str, egress: &str) -> ExampleConfigs {
    let delivery = format!(
        "timeout = \"5s\"\nretry_initial = \"1s\"\nretry_max = \"2s\"\n\
         [delivery.egress]\n{egress}\n\
         [delivery.routes]\n\"proxied.test\" = \"{}:{MX_PORT}\"",
        ip(net, 25)
    );
    let configs = configs(net, "unlimited", None, &delivery);
    let path = configs.path("fleet.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Into the first cluster: before the second `[[clusters]]`.
    let (second, _) = text
        .match_indices("\n[[clusters]]")
        .nth(1)
        .expect("the example fleet has two clusters");
    let text = format!("{}\n{sources}\n{}", &text[..second], &text[second..]);
    std::fs::write(&path, text).unwrap();
    configs
}

fn source(name: &str, address: Ipv4Addr, extra: &str) -> String {
    format!(
        "  [[clusters.egress_sources]]\n  name = \"{name}\"\n  source_address = \"{address}\"\n  \
         ehlo_name = \"{name}.yourdomain.com\"\n{extra}\n"
    )
}

fn by_peer(messages: &[Received]) -> BTreeMap<IpAddr, usize> {
    let mut counts = BTreeMap::new();
    for m in messages {
        *counts.entry(m.peer.ip()).or_default() += 1;
    }
    counts
}

/// Each kind of source carries mail, leaves from its own address and
/// presents its own EHLO name; weighted round robin shares the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_with_and_without_a_password_haproxy_and_a_local_address_each_carry_mail() {
    fleet::in_own_namespace!();
    let net = 40;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let _plain =
        started(proxies::dante(at(net, 1, 1080), out(net, 10).into(), None).unwrap()).await;
    let (_auth, _haproxy) = password_socks_and_haproxy(net).await;
    let sources = [
        source("socks", out(net, 10), &format!("  socks5 = \"{}\"", at(net, 1, 1080))),
        source(
            "socks-auth",
            out(net, 11),
            &format!(
                "  socks5 = \"{}\"\n  username = \"unmta\"\n  password = \"s3cret\"",
                at(net, 2, 1080)
            ),
        ),
        source("haproxy", out(net, 12), &format!("  ha_proxy = \"{}\"", at(net, 3, 5000))),
        source("local", out(net, 13), ""),
        "  [clusters.egress_pool]\n  name = \"shared\"\n  entries = [{ name = \"socks\", weight = 2 }, \
         { name = \"socks-auth\" }, { name = \"haproxy\" }, { name = \"local\" }]\n"
            .to_string(),
    ]
    .concat();
    let mut egress = Egress::start(configs_with(net, &sources, "")).await;
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(egress.inject("r@proxied.test", &format!("kinds-{n}")).await);
    }
    let mut named = Vec::new();
    for id in &ids {
        let event = egress.event(id, EventKind::Delivery).await;
        assert_eq!(event.egress_pool.as_deref(), Some("shared"));
        named.push(
            event
                .egress_source
                .clone()
                .expect("the event names the source"),
        );
    }
    let got = sink.wait_for(50, LIMIT).await.unwrap();
    let peers = by_peer(&got);
    println!("per source address at the sink: {peers:?}");
    let count = |last| peers.get(&IpAddr::V4(out(net, last))).copied().unwrap_or(0);
    // 2:1:1:1 of 50.
    assert_eq!(count(10), 20, "{peers:?}");
    assert_eq!(count(11), 10, "{peers:?}");
    assert_eq!(count(12), 10, "{peers:?}");
    assert_eq!(count(13), 10, "{peers:?}");
    for (n, event_source) in named.iter().enumerate() {
        let m = with_marker(&got, &format!("kinds-{n}")).unwrap();
        let name = match m.peer.ip() {
            ip if ip == IpAddr::V4(out(net, 10)) => "socks",
            ip if ip == IpAddr::V4(out(net, 11)) => "socks-auth",
            ip if ip == IpAddr::V4(out(net, 12)) => "haproxy",
            _ => "local",
        };
        assert_eq!(
            event_source, name,
            "the event names the source the sink saw"
        );
        assert_eq!(m.helo, format!("{name}.yourdomain.com"));
    }
    let socks = mta::delivery::egress::metrics::SourceLabels {
        pool: "shared".into(),
        source: "socks".into(),
    };
    let attempts = egress.metrics.sources.attempts.get_or_create(&socks).get();
    assert_eq!(attempts, 20, "attempts over the shared pool's socks source");
    egress.stop().await;
}

/// A proxy that refuses (wrong password), one that is not there and a
/// local address that is not on this host are taken out; their mail goes
/// over the source that works, none is bounced or counted as an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_and_absent_sources_are_taken_out_and_their_mail_goes_over_the_others() {
    fleet::in_own_namespace!();
    let net = 41;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let (_auth, _haproxy) = password_socks_and_haproxy(net).await;
    let sources = [
        source(
            "wrong-password",
            out(net, 11),
            &format!(
                "  socks5 = \"{}\"\n  username = \"unmta\"\n  password = \"wrong\"",
                at(net, 2, 1080)
            ),
        ),
        // Nothing listens here.
        source(
            "absent",
            out(net, 14),
            &format!("  socks5 = \"{}\"", at(net, 4, 1080)),
        ),
        // Not an address of this host.
        source("elsewhere", Ipv4Addr::new(192, 0, 2, 77), ""),
        source(
            "haproxy",
            out(net, 12),
            &format!("  ha_proxy = \"{}\"", at(net, 3, 5000)),
        ),
    ]
    .concat();
    let mut egress = Egress::start(configs_with(net, &sources, "source_backoff = \"30s\"")).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            egress
                .inject("r@proxied.test", &format!("refused-{n}"))
                .await,
        );
    }
    for id in &ids {
        let event = egress.event(id, EventKind::Delivery).await;
        assert_eq!(event.num_attempts, 1, "a failed source is not an attempt");
        assert_eq!(event.egress_source.as_deref(), Some("haproxy"));
        assert_eq!(event.egress_pool.as_deref(), Some("default"));
    }
    let got = sink.wait_for(20, LIMIT).await.unwrap();
    assert_eq!(by_peer(&got).get(&IpAddr::V4(out(net, 12))), Some(&20));
    assert!(egress.backlog.iter().all(|e| e.kind != EventKind::Bounce));
    let failures = &egress.metrics.sources.failures;
    for name in ["wrong-password", "absent", "elsewhere"] {
        let labels = mta::delivery::egress::metrics::SourceLabels {
            pool: "default".into(),
            source: name.into(),
        };
        assert_eq!(failures.get_or_create(&labels).get(), 1, "{name}");
        assert_eq!(
            egress.metrics.sources.up.get_or_create(&labels).get(),
            0,
            "{name}"
        );
    }
    egress.stop().await;
}

/// One of two SOCKS5 proxies dies mid-run: every acknowledged message
/// arrives, the rest over the other proxy, and only a message whose reply
/// died with the proxy can arrive twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_run_loses_nothing() {
    fleet::in_own_namespace!();
    let net = 42;
    let sink = Arc::new(sink(net, 25, Behaviour::Accept).await);
    let mut a = started(proxies::dante(at(net, 1, 1080), out(net, 10).into(), None).unwrap()).await;
    let _b = started(proxies::dante(at(net, 2, 1080), out(net, 11).into(), None).unwrap()).await;
    let sources = [
        source(
            "a",
            out(net, 10),
            &format!("  socks5 = \"{}\"", at(net, 1, 1080)),
        ),
        source(
            "b",
            out(net, 11),
            &format!("  socks5 = \"{}\"", at(net, 2, 1080)),
        ),
    ]
    .concat();
    let egress = Egress::start(configs_with(net, &sources, "source_backoff = \"2s\"")).await;
    let total = 300;
    let mut acknowledged = HashSet::new();
    let mut killed_at = None;
    for n in 0..total {
        let marker = format!("kill-{n}");
        egress.inject("r@proxied.test", &marker).await;
        acknowledged.insert(marker);
        if n == total / 3 {
            // Wait until mail flows over both, then kill a.
            sink.wait_for(total / 5, LIMIT).await.unwrap();
            a.kill();
            killed_at = Some((Instant::now(), sink.messages().len()));
        }
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (killed_at, before) = killed_at.unwrap();
    let got = sink.wait_for(total, LIMIT * 2).await.unwrap();
    // Give a duplicate, if any, the time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = sink.messages();
    let subjects: Vec<String> = got_all
        .iter()
        .filter_map(|m| m.header("Subject"))
        .map(|s| s.trim_start_matches("egress test ").to_string())
        .collect();
    let unique: HashSet<&String> = subjects.iter().collect();
    let peers = by_peer(&got);
    // What a relayed before it died may still land just after the kill.
    let after: Vec<&Received> = got
        .iter()
        .filter(|m| m.arrived_at > killed_at + Duration::from_secs(1))
        .collect();
    println!(
        "acknowledged {}, delivered {} ({} unique); per source address: {peers:?}; \
         {before} had arrived when a was killed, all {total} {:?} later",
        acknowledged.len(),
        subjects.len(),
        unique.len(),
        got.iter().map(|m| m.arrived_at).max().unwrap() - killed_at,
    );
    // SMTP cannot be exactly-once when the path dies between the receiver's
    // 250 and our reading it (RFC 1047): such a message is retried over b. So
    // every message arrives, and a second copy exists only for a message
    // whose first copy went over a, within a second of the kill.
    let mut first_copy: BTreeMap<&str, &Received> = BTreeMap::new();
    for (subject, message) in subjects.iter().zip(got_all.iter()) {
        if let Some(first) = first_copy.insert(subject, message) {
            assert_eq!(
                first.peer.ip(),
                IpAddr::V4(out(net, 10)),
                "a duplicate of {subject} whose first copy did not go over the killed proxy"
            );
            assert!(
                first.arrived_at <= killed_at + Duration::from_secs(1),
                "a duplicate of {subject} whose first copy arrived long after the kill"
            );
        }
    }
    assert!(
        subjects.len() - unique.len() <= 32, // connections_per_destination
        "at most the connections open through a are retried: {} unique of {} delivered",
        unique.len(),
        subjects.len()
    );
    assert_eq!(unique.len(), total);
    assert!(unique.iter().all(|s| acknowledged.contains(*s)));
    assert!(peers.get(&IpAddr::V4(out(net, 10))).copied().unwrap_or(0) > 0);
    assert!(
        after
            .iter()
            .all(|m| m.peer.ip() == IpAddr::V4(out(net, 11))),
        "after the kill everything goes over b"
    );
    egress.stop().await;
}

/// Three MTAs send through one source limited to 4/s (the scaled-down
/// 60/min of the issue: same GCRA, burst 1): together they send at most 4
/// a second, not 12; Redis stopped mid-run, each holds to a third and the
/// sum stays within the limit, and `/ready` says degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mtas_share_one_source_limit_through_redis_and_without_it() {
    let net = 43;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let mut redis = started(proxies::redis(at(net, 6, 6379)).unwrap()).await;
    let sources = source(
        "warming",
        out(net, 10),
        "  rate_limit = \"4/s,max_burst=1\"",
    );
    let egress_config = format!(
        "redis = \"redis://{}/\"\nredis_timeout = \"300ms\"",
        at(net, 6, 6379)
    );
    let mut nodes = Vec::new();
    let mut readiness = Vec::new();
    for _ in 0..3 {
        let node = Egress::start(configs_with(net, &sources, &egress_config)).await;
        let ready = fleet::admin::Readiness::new();
        node.handle
            .as_ref()
            .unwrap()
            .engine
            .egress()
            .attach_readiness(ready.clone());
        readiness.push(ready);
        nodes.push(node);
    }
    assert!(readiness.iter().all(|r| r.degradation().is_none()));
    let per_node = 40;
    for (i, node) in nodes.iter().enumerate() {
        for n in 0..per_node {
            node.inject("r@proxied.test", &format!("rate-{i}-{n}"))
                .await;
        }
    }
    // Redis stops 2.5 s after the first arrival.
    sink.wait_for(1, LIMIT).await.unwrap();
    let first = sink.messages()[0].arrived_at;
    tokio::time::sleep_until((first + Duration::from_millis(2500)).into()).await;
    redis.stop();
    let stopped = Instant::now();
    fleet::testkit::process::eventually(LIMIT, "every node says degraded", || {
        let readiness = readiness.clone();
        async move {
            readiness
                .iter()
                .all(|r| r.degradation().is_some_and(|d| d.contains("Redis")))
        }
    })
    .await
    .unwrap();
    tokio::time::sleep_until((first + Duration::from_secs(10)).into()).await;
    let got = sink.messages();
    let times: Vec<Instant> = got.iter().map(|m| m.arrived_at).collect();
    let in_window = |from: Instant, len: Duration| {
        times
            .iter()
            .filter(|t| **t >= from && **t < from + len)
            .count()
    };
    let window = Duration::from_secs(5);
    let with_redis = in_window(first, window);
    let busiest = times.iter().map(|t| in_window(*t, window)).max().unwrap();
    let after_stop = in_window(stopped + Duration::from_millis(500), window);
    println!(
        "limit 4/s over 3 MTAs: {with_redis} in the first 5 s (Redis up until 2.5 s), \
         {after_stop} in 5 s without Redis, busiest 5 s: {busiest}, {} in 10 s \
         (unshared it would be 60 per 5 s)",
        times.len()
    );
    // 5 s at 4/s: 20, one more at the window's edge, one of jitter.
    assert!(busiest <= 22, "busiest 5 s window: {busiest}");
    assert!(with_redis >= 15, "the limit was not used: {with_redis}");
    assert!(
        after_stop >= 10,
        "without Redis the nodes stalled: {after_stop}"
    );
    for node in nodes {
        node.stop().await;
    }
}

/// A source's `rate_limit` holds its mail in the queue (a `Delayed` event
/// says why), and a reload with a new limit lets the held mail go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_source_limit_releases_the_held_mail() {
    let net = 44;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let sources = source("warming", out(net, 10), "  rate_limit = \"1/hr\"");
    let mut egress = Egress::start(configs_with(net, &sources, "")).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(egress.inject("r@proxied.test", &format!("held-{n}")).await);
    }
    egress.event(&ids[0], EventKind::Delivery).await;
    let delayed = egress.event(&ids[1], EventKind::Delayed).await;
    assert!(
        delayed
            .response
            .content
            .contains("rate limit 1/hr of egress source warming"),
        "{:?}",
        delayed.response
    );
    assert_eq!(sink.messages().len(), 1);
    let fleet = egress.configs.path("fleet.toml");
    let text = std::fs::read_to_string(&fleet).unwrap();
    std::fs::write(
        &fleet,
        text.replace("rate_limit = \"1/hr\"", "rate_limit = \"100/s\""),
    )
    .unwrap();
    egress.reload();
    let got = sink.wait_for(5, LIMIT).await.unwrap();
    assert!(got.iter().all(|m| m.peer.ip() == IpAddr::V4(out(net, 10))));
    egress.stop().await;
}
