//! A reload (what SIGHUP does) swaps the delivery setup: attempts that
//! start after it use the new routes and hold; an attempt under way
//! finishes with the setup it started with.

mod egress_support;

use std::time::Duration;

use egress_support::*;
use fleet::testkit::process::eventually;
use fleet::testkit::sink::Behaviour;
use mta::events::EventKind;

/// Replaces `from` by `to` in the node config of `egress`.
fn edit_node_config(egress: &Egress, from: &str, to: &str) {
    let path = egress.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in the node config");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn route(net: u8, last: u8) -> String {
    format!("\"moved.test\" = \"{}:{MX_PORT}\"", ip(net, last))
}

#[tokio::test]
async fn a_reload_reroutes_new_attempts_while_the_one_under_way_finishes() {
    let net = 200;
    let old = sink(net, 25, Behaviour::Slow(Duration::from_secs(2))).await;
    let new = sink(net, 26, Behaviour::Accept).await;
    let delivery = format!("timeout = \"10s\"\n[delivery.routes]\n{}", route(net, 25));
    let mut egress = Egress::start(configs(net, "unlimited", None, &delivery)).await;
    let engine = egress.handle.as_ref().unwrap().engine.clone();

    let first = egress.inject("a@moved.test", "before").await;
    eventually(LIMIT, "the first attempt is under way", || async {
        egress.metrics.in_flight.get() == 1
    })
    .await
    .unwrap();
    edit_node_config(&egress, &route(net, 25), &route(net, 26));
    egress.reload();
    let moved = format!("{}:{MX_PORT}", ip(net, 26));
    eventually(LIMIT, "the new route is in service", || async {
        engine.setup().config().routes.get("moved.test") == Some(&moved)
    })
    .await
    .unwrap();

    let second = egress.inject("b@moved.test", "after").await;
    let after = egress.event(&second, EventKind::Delivery).await;
    assert_eq!(
        after.peer_address.as_ref().map(|p| p.addr.as_str()),
        Some(moved.as_str())
    );
    let before = egress.event(&first, EventKind::Delivery).await;
    let kept = format!("{}:{MX_PORT}", ip(net, 25));
    assert_eq!(
        before.peer_address.as_ref().map(|p| p.addr.as_str()),
        Some(kept.as_str())
    );
    assert!(with_marker(&old.messages(), "before").is_some());
    assert!(with_marker(&old.messages(), "after").is_none());
    assert!(with_marker(&new.messages(), "before").is_none());
    egress.stop().await;
}

#[tokio::test]
async fn a_reload_puts_delivery_on_hold_and_takes_it_off() {
    let net = 201;
    let mx = sink(net, 25, Behaviour::Accept).await;
    let delivery = format!("hold = false\n[delivery.routes]\n{}", route(net, 25));
    let mut egress = Egress::start(configs(net, "unlimited", None, &delivery)).await;
    let engine = egress.handle.as_ref().unwrap().engine.clone();

    edit_node_config(&egress, "hold = false", "hold = true");
    egress.reload();
    eventually(LIMIT, "hold is in service", || async {
        engine.setup().config().hold
    })
    .await
    .unwrap();
    // The queue takes the message in and keeps it: nothing is attempted.
    let id = egress.inject("a@moved.test", "held").await;
    eventually(LIMIT, "the message is scheduled", || async {
        egress.metrics.scheduled.get() == 1
    })
    .await
    .unwrap();
    assert_eq!(egress.metrics.in_flight.get(), 0);
    assert!(mx.attempts().is_empty(), "a held message was attempted");

    edit_node_config(&egress, "hold = true", "hold = false");
    egress.reload();
    let delivered = egress.event(&id, EventKind::Delivery).await;
    assert_eq!(delivered.response.code, 250);
    assert!(with_marker(&mx.messages(), "held").is_some());
    egress.stop().await;
}
