//! A planned stop waits while a DNS server still answers the node's address,
//! then one TTL more, bounded by `max_wait`. On 127.5.30.0/24.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fleet::testkit::dns::{Record, StaticDns};
use mta::planned_stop::Watch;

const HOST: &str = "c-ps000001.unmta.net";
const NODE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);

fn watch(server: SocketAddr, ttl: Duration, max_wait: Duration) -> Watch {
    Watch {
        hostname: format!("{HOST}."),
        addresses: [IpAddr::V4(NODE)].into_iter().collect(),
        servers: vec![server],
        ttl,
        max_wait,
        poll: Duration::from_millis(100),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_while_answered_then_one_ttl() {
    let addr: SocketAddr = "127.5.30.1:0".parse().unwrap();
    let dns = StaticDns::start(addr, vec![Record::a(HOST, NODE), Record::a(HOST, OTHER)])
        .await
        .unwrap();
    let server = dns.addr();
    let ttl = Duration::from_millis(800);
    let waiting = tokio::spawn(async move {
        let start = Instant::now();
        watch(server, ttl, Duration::from_secs(60))
            .wait_out_of_dns()
            .await;
        start.elapsed()
    });
    // Answered: still serving after 1.5 s (almost two TTLs).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "stopped while still answered");
    // The answers drop this node: it stops one TTL later, not at once.
    dns.stop().await.unwrap();
    let dns = StaticDns::start(server, vec![Record::a(HOST, OTHER)])
        .await
        .unwrap();
    let dropped = Instant::now();
    let total = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("stops once out of DNS")
        .unwrap();
    let after_drop = dropped.elapsed();
    println!("planned stop: {total:?} in all, {after_drop:?} after leaving the answers");
    assert!(
        after_drop >= ttl,
        "closed {after_drop:?} after leaving DNS, TTL {ttl:?}"
    );
    assert!(after_drop < ttl + Duration::from_secs(5), "{after_drop:?}");
    dns.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_bounds_the_stop_while_still_answered() {
    let addr: SocketAddr = "127.5.30.2:0".parse().unwrap();
    let dns = StaticDns::start(addr, vec![Record::a(HOST, NODE)])
        .await
        .unwrap();
    let start = Instant::now();
    watch(
        dns.addr(),
        Duration::from_secs(30),
        Duration::from_millis(1200),
    )
    .wait_out_of_dns()
    .await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1200), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    dns.stop().await.unwrap();
}

#[test]
fn lb_dns_servers_default_to_the_zone_nameservers_and_are_checked() {
    let fleet = fleet::parse_fleet(
        "[zone]\norigin = \"unmta.net\"\nprimary_ns = \"ns1.unmta.net\"\n\
         hostmaster = \"h.unmta.net\"\n\
         nameservers = [ { name = \"ns1.unmta.net\", ipv4 = \"192.0.2.53\", ipv6 = \"2001:db8::53\" } ]\n\
         [ports]\nsmtp = [587]\nhttps = 443\n",
        "fleet.toml",
    )
    .unwrap();
    let mut config = mta::planned_stop::PlannedStopConfig::default();
    assert_eq!(
        config.servers(&fleet).unwrap(),
        vec![
            "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        ]
    );
    config.lb_dns = vec!["198.51.100.53".into(), "127.0.0.1:5300".into()];
    assert_eq!(
        config.servers(&fleet).unwrap()[1],
        "127.0.0.1:5300".parse::<SocketAddr>().unwrap()
    );
    config.lb_dns = vec!["ns1.unmta.net".into()];
    let error = config.servers(&fleet).unwrap_err();
    assert!(error.contains("planned_stop.lb_dns[0]"), "{error}");
}
