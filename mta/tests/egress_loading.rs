//! Delivery reads spooled messages back within `delivery.max_loaded_bytes`:
//! a spool of large messages is not read into memory all at once. Three
//! 700 kB messages with a budget of 1 MiB, to a sink on 127.1.71.25 that
//! takes a second to answer each: they go one after another (at least three
//! seconds in all) where without the budget they would go together.

mod egress_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use egress_support::*;
use fleet::testkit::dns::{Record, StaticDns};
use fleet::testkit::sink::{Behaviour, Sink, SinkConfig};
use mta::events::EventKind;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 71, last)
}

/// A message of about `size` bytes to `to`.
fn large(to: &str, marker: &str, size: usize) -> mta::message::NewMessage {
    let mut message = message(&[to], marker);
    let mut data = message.data.to_vec();
    while data.len() < size {
        data.extend_from_slice(format!("{}\r\n", "z".repeat(76)).as_bytes());
    }
    message.data = data.into();
    message
}

#[tokio::test]
async fn large_messages_are_read_back_within_max_loaded_bytes() {
    let mut config = SinkConfig::accept(SocketAddr::new(ip(25).into(), MX_PORT));
    config.behaviour = Behaviour::Slow(Duration::from_secs(1));
    let sink = Sink::start(config).await.unwrap();
    let dns = StaticDns::start(
        SocketAddr::new(ip(53).into(), 0),
        vec![Record::a("big.test", ip(25))],
    )
    .await
    .unwrap();
    let delivery = "timeout = \"10s\"\nmax_loaded_bytes = 1048576";
    let configs = configs_at([127, 1, 71], "unlimited", Some(dns.addr()), delivery);
    let mut egress = Egress::start(configs).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..3 {
        let message = large(&format!("r{n}@big.test"), &format!("big{n}"), 700_000);
        ids.push(egress.spool.accept(message).await.unwrap());
    }
    for id in &ids {
        egress.event(id, EventKind::Delivery).await;
    }
    let took = started.elapsed();
    assert_eq!(sink.messages().len(), 3);
    assert!(
        took >= Duration::from_millis(2900),
        "three 700 kB messages within a 1 MiB budget went together: {took:?}"
    );
    egress.stop().await;
}
