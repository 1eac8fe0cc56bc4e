//! The node's rate limit, on a whole node in this process (SMTP in, SMTP
//! out): a burst is held, not rejected, and leaves at the configured pace;
//! a reload (what SIGHUP does) with another limit changes the pace.

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

/// Submits `{marker}-0` .. `{marker}-{count - 1}` one after the other.
async fn submit_in_turn(
    client: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    marker: &str,
    count: usize,
) {
    for n in 0..count {
        Node::submit(client, "r@paced.test", &format!("{marker}-{n}"))
            .await
            .unwrap();
    }
}

/// The one slow test: 100 messages submitted at once at 10/s take at least
/// 9.9 s from the first arrival to the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_messages_at_ten_per_second_take_ten_seconds() {
    let net = 20;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let node = Node::start(configs(net, "10/s,max_burst=1", None, &routed(net))).await;
    let client = std::sync::Arc::new(node.client(5));
    let mut submits = Vec::new();
    for n in 0..100 {
        let client = client.clone();
        submits.push(tokio::spawn(async move {
            Node::submit(&client, "r@paced.test", &format!("paced-{n}")).await
        }));
    }
    for submit in submits {
        submit
            .await
            .unwrap()
            .expect("no message is rejected over SMTP");
    }
    // While they wait, the metric says how many the limit holds.
    let deadline = Instant::now() + LIMIT;
    let mut held = 0.0;
    while held < 20.0 {
        assert!(
            Instant::now() < deadline,
            "mta_queue_rate_limited stayed at {held}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        held = node.metric("mta_queue_rate_limited").await.unwrap_or(0.0);
    }
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
    for n in 0..100 {
        assert!(
            with_marker(&got, &format!("paced-{n}")).is_some(),
            "paced-{n} missing"
        );
    }
    let delayed = node
        .metric("mta_queue_delayed_by_rate_limit_total")
        .await
        .unwrap_or(0.0);
    assert!(delayed >= 90.0, "{delayed} Delayed");
    node.stop().await;
}

/// A reload with a new `rate_limit` changes the pace of a held backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rate_limit_changes_the_pace() {
    let net = 21;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let node = Node::start(configs(net, "4/s,max_burst=1", None, &routed(net))).await;
    let client = node.client(4);
    submit_in_turn(&client, "change", 30).await;
    let slow = sink.wait_for(4, LIMIT).await.unwrap();
    let slow_span = slow[3].arrived_at - slow[0].arrived_at;
    assert!(
        slow_span >= Duration::from_millis(740),
        "4 at 4/s: {slow_span:?}"
    );
    // SIGHUP with a faster limit: the remaining 26 (6.5 s at 4/s) come at
    // 50/s.
    set_rate_limit(&node.configs, "4/s,max_burst=1", "50/s,max_burst=1");
    let changed_at = Instant::now();
    node.reload();
    sink.wait_for(30, LIMIT).await.unwrap();
    let fast = changed_at.elapsed();
    assert!(fast < Duration::from_secs(3), "26 at 50/s took {fast:?}");

    // And slower again: 2/s. The reload is done when the admin status says
    // so; then 4 more messages take at least 1.5 s.
    set_rate_limit(&node.configs, "50/s,max_burst=1", "2/s,max_burst=1");
    node.reload();
    fleet::testkit::process::eventually(LIMIT, "the second reload is in service", || {
        let admin = node.admin;
        async move {
            fleet::testkit::process::http_get(&format!("http://{admin}/status"))
                .await
                .is_some_and(|(_, body)| body.contains("\"version\":2"))
        }
    })
    .await
    .unwrap();
    submit_in_turn(&client, "again", 4).await;
    let got = sink.wait_for(34, LIMIT).await.unwrap();
    let span = got[33].arrived_at - got[30].arrived_at;
    assert!(span >= Duration::from_millis(1400), "4 at 2/s: {span:?}");
    node.stop().await;
}
