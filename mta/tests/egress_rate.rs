//! The node's rate limit: a burst is held, not rejected, and leaves at the
//! configured pace; a reload with another limit changes the pace.

mod egress_support;

use std::time::{Duration, Instant};

use egress_support::*;
use fleet::testkit::sink::Behaviour;

fn routed(net: u8) -> String {
    format!(
        "timeout = \"5s\"\n[delivery.routes]\n\"paced.test\" = \"{}:{MX_PORT}\"",
        ip(net, 25)
    )
}

/// The one slow test: 100 messages at 10/s take at least 9.9 s.
#[tokio::test]
async fn a_hundred_messages_at_ten_per_second_take_ten_seconds() {
    let net = 20;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let egress = Egress::start(configs(net, "10/s,max_burst=1", None, &routed(net))).await;
    let mut accepts = Vec::new();
    for n in 0..100 {
        let spool = egress.spool.clone();
        accepts.push(tokio::spawn(async move {
            spool
                .accept(message(&["r@paced.test"], &format!("paced-{n}")))
                .await
        }));
    }
    for accept in accepts {
        accept.await.unwrap().expect("no message is rejected");
    }
    // While they wait, the metric says how many the limit holds.
    fleet::testkit::process::eventually(LIMIT, "the held count shows", || {
        let held = egress.metrics.rate_limited.get();
        async move { held > 50 }
    })
    .await
    .unwrap();
    let got = sink.wait_for(100, Duration::from_secs(40)).await.unwrap();
    assert_eq!(got.len(), 100);
    let first = got.iter().map(|m| m.arrived_at).min().unwrap();
    let last = got.iter().map(|m| m.arrived_at).max().unwrap();
    let span = last - first;
    assert!(
        span >= Duration::from_millis(9900),
        "first to last: {span:?}"
    );
    assert!(span < Duration::from_secs(15), "first to last: {span:?}");
    assert!(egress.metrics.delayed.get() >= 90);
    fleet::testkit::process::eventually(LIMIT, "100 deliveries are counted", || {
        let delivered = egress.metrics.delivered.get();
        async move { delivered == 100 }
    })
    .await
    .unwrap();
    egress.stop().await;
}

/// A reload with a new `rate_limit` changes the pace of a held backlog.
#[tokio::test]
async fn a_changed_rate_limit_changes_the_pace() {
    let net = 21;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let egress = Egress::start(configs(net, "4/s,max_burst=1", None, &routed(net))).await;
    for n in 0..30 {
        egress.inject("r@paced.test", &format!("change-{n}")).await;
    }
    let slow = sink.wait_for(4, LIMIT).await.unwrap();
    let slow_span = slow[3].arrived_at - slow[0].arrived_at;
    assert!(
        slow_span >= Duration::from_millis(740),
        "4 at 4/s: {slow_span:?}"
    );
    // SIGHUP with a faster limit: the remaining 26 (6.5 s at 4/s) come at
    // 50/s.
    set_rate_limit(&egress.configs, "4/s,max_burst=1", "50/s,max_burst=1");
    let changed_at = Instant::now();
    egress.reload();
    sink.wait_for(30, LIMIT).await.unwrap();
    let fast = changed_at.elapsed();
    assert!(fast < Duration::from_secs(3), "26 at 50/s took {fast:?}");
    assert!(
        fast >= Duration::from_millis(400),
        "26 at 50/s took {fast:?}"
    );

    // And slower again: 2/s.
    set_rate_limit(&egress.configs, "50/s,max_burst=1", "2/s,max_burst=1");
    egress.reload();
    // Let the scheduler see the reload before the next burst.
    fleet::testkit::process::eventually(LIMIT, "the reload is seen", || {
        let version = egress.live.status().version;
        async move { version >= 2 }
    })
    .await
    .unwrap();
    tokio::task::yield_now().await;
    for n in 0..4 {
        egress.inject("r@paced.test", &format!("again-{n}")).await;
    }
    let got = sink.wait_for(34, LIMIT).await.unwrap();
    let span = got[33].arrived_at - got[30].arrived_at;
    assert!(span >= Duration::from_millis(1400), "4 at 2/s: {span:?}");
    egress.stop().await;
}
