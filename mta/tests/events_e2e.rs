//! Events end to end: the real `mta` binary, the test sink as the MX, and a
//! webhook receiver (Python, verifying the signature with its own hmac):
//! every event type from a real scenario arrives with the documented
//! fields; a webhook down while the MTA is killed loses nothing.

mod events_support;

use std::collections::{BTreeMap, BTreeSet};

use events_support::*;
use fleet::event::{Event, EventType};
use fleet::testkit::sink::{Behaviour, Sink, SinkConfig};
use toml_edit::value;

async fn sink(net: u8) -> Sink {
    let mut config = SinkConfig::accept(std::net::SocketAddr::new(ip(net, 25).into(), SINK_PORT));
    config.behaviour = Behaviour::Accept;
    Sink::start(config).await.expect("the sink starts")
}

fn verp(id: &str) -> String {
    format!("{id}@{HOSTNAME}")
}

/// Each message's Reception arrives before its other events.
fn assert_in_order_per_message(events: &[Event]) {
    let mut seen: BTreeMap<&str, Vec<EventType>> = BTreeMap::new();
    for event in events.iter().filter(|e| !e.id.is_empty()) {
        seen.entry(&event.id).or_default().push(event.kind);
    }
    for (id, kinds) in seen {
        if let Some(first) = kinds.iter().position(|k| *k == EventType::Reception) {
            assert!(
                kinds[..first].is_empty(),
                "message {id}: {kinds:?} before its Reception"
            );
        }
    }
}

#[tokio::test]
async fn every_event_type_reaches_the_webhook_signed_with_the_documented_fields() {
    let net = 1;
    let _sink = sink(net).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(net, &dir.path().join("events.jsonl"));
    let configs = node_configs(
        net,
        &[
            ("retry_initial", value("1500ms")),
            ("retry_max", value("1500ms")),
            ("max_age", value("5s")),
        ],
    );
    let _node = start_node(&configs, net).await;

    let main = submit(
        net,
        &[
            "ok-1@example.test",
            "reject-1@example.test",
            "tempfail-1@example.test",
        ],
        "events e2e",
    )
    .await;
    let expiring = submit(net, &["late@busy.test"], "will expire").await;
    let held = submit(net, &["held@held.test"], "admin bounce").await;

    // A failed AUTH, and a relay attempt without AUTH on the bounce port.
    let refused = smtp(net, SUBMISSION, Some((USER, "wrong password")))
        .test_connection()
        .await;
    assert!(refused.is_err(), "a wrong password was accepted");
    let relay = send_to_bounce_port(
        net,
        "someone@elsewhere.test",
        "Subject: relay?\r\n\r\nx\r\n",
    )
    .await;
    assert!(relay.is_err(), "the bounce port relayed");

    // Out of band: the MX accepted, then sends a DSN to the return path;
    // and a complaint (ARF) about the same message.
    let events = receiver
        .wait_until("the first Delivery", |e| {
            find(e, EventType::Delivery, "ok-1@example.test").is_some()
        })
        .await;
    let delivery = find(&events, EventType::Delivery, "ok-1@example.test").unwrap();
    assert_eq!(delivery.sender, verp(&main));
    send_to_bounce_port(net, &verp(&main), &dsn(&verp(&main), "ok-1@example.test"))
        .await
        .expect("the DSN is taken");
    send_to_bounce_port(net, &verp(&main), &arf(&verp(&main), "ok-1@example.test"))
        .await
        .expect("the ARF report is taken");
    send_to_bounce_port(
        net,
        &verp(&main),
        "Subject: out of office\r\n\r\nBack monday.\r\n",
    )
    .await
    .expect("unparseable mail is taken and dropped");

    // An admin bounce of the message queued for held.test, once it waits.
    receiver
        .wait_until("a TransientFailure for held.test", |e| {
            find(e, EventType::TransientFailure, "held@held.test").is_some()
        })
        .await;
    let answer = reqwest::Client::new()
        .post(format!("{}/api/admin/bounce", admin(net)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"domain": "held.test", "reason": "customer asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["bounced"], 1, "{answer}");
    let unauthenticated = reqwest::Client::new()
        .post(format!("{}/api/admin/bounce", admin(net)))
        .bearer_auth("not the token")
        .json(&serde_json::json!({"id": held, "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let wanted = [
        (EventType::Reception, "ok-1@example.test"),
        (EventType::Delivery, "ok-1@example.test"),
        (EventType::Bounce, "reject-1@example.test"),
        (EventType::TransientFailure, "tempfail-1@example.test"),
        (EventType::Delivery, "tempfail-1@example.test"),
        (EventType::Expiration, "late@busy.test"),
        (EventType::AdminBounce, "held@held.test"),
        (EventType::Oob, "ok-1@example.test"),
        (EventType::Feedback, "ok-1@example.test"),
        (EventType::Rejection, ""),
        (EventType::Rejection, "someone@elsewhere.test"),
    ];
    let events = receiver
        .wait_until("every event type", |e| {
            wanted.iter().all(|(k, r)| find(e, *k, r).is_some())
        })
        .await;
    assert_eq!(receiver.bad_signatures(), 0);
    assert_in_order_per_message(&events);
    let ids: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "event ids repeat without a retry");

    let reception = find(&events, EventType::Reception, "ok-1@example.test").unwrap();
    assert_eq!(reception.id, main);
    assert_eq!(reception.envelope_sender, "app@yourdomain.com");
    assert_eq!(reception.queue, "example.test");
    assert_eq!(reception.response.code, 250);
    assert_eq!(reception.reception_protocol.as_deref(), Some("ESMTP"));
    assert_eq!(reception.nodeid, "mta-1");
    assert_eq!(reception.meta.from.as_deref(), Some("app@yourdomain.com"));
    assert_eq!(reception.meta.subject.as_deref(), Some("events e2e"));
    assert_eq!(reception.meta.cluster, "a1b2c3d4");
    assert_eq!(reception.meta.credential.as_deref(), Some(USER));
    assert_eq!(
        reception.meta.metadata.get("campaign").map(String::as_str),
        Some("spring")
    );
    assert!(reception.bounce_classification.is_none());

    let delivery = find(&events, EventType::Delivery, "ok-1@example.test").unwrap();
    assert_eq!(delivery.response.code, 250);
    assert_eq!(delivery.num_attempts, 1);
    assert_eq!(delivery.delivery_protocol.as_deref(), Some("ESMTP"));
    assert_eq!(
        delivery.peer_address.as_ref().unwrap().addr,
        format!("{}:{SINK_PORT}", ip(net, 25))
    );
    assert!(delivery.created > 0 && delivery.timestamp >= delivery.created);
    assert_eq!(delivery.meta.subject.as_deref(), Some("events e2e"));

    let bounce = find(&events, EventType::Bounce, "reject-1@example.test").unwrap();
    assert_eq!(bounce.response.code, 550, "{bounce:?}");
    assert_eq!(bounce.response.enhanced_code.unwrap().to_string(), "5.1.1");
    assert_eq!(
        bounce.bounce_classification.as_deref(),
        Some("InvalidRecipient")
    );

    let transient = find(
        &events,
        EventType::TransientFailure,
        "tempfail-1@example.test",
    )
    .unwrap();
    assert_eq!(transient.response.code, 451);
    assert_eq!(
        transient.bounce_classification.as_deref(),
        Some("PolicyRelated")
    );
    let late = find(&events, EventType::Delivery, "tempfail-1@example.test").unwrap();
    assert!(late.num_attempts >= 2, "{late:?}");

    let expired = find(&events, EventType::Expiration, "late@busy.test").unwrap();
    assert_eq!(expired.id, expiring);
    assert_eq!(
        expired.bounce_classification.as_deref(),
        Some("MessageExpired")
    );

    let admin_bounce = find(&events, EventType::AdminBounce, "held@held.test").unwrap();
    assert_eq!(admin_bounce.id, held);
    assert!(admin_bounce.response.content.contains("customer asked"));

    let oob = find(&events, EventType::Oob, "ok-1@example.test").unwrap();
    assert_eq!(oob.id, main);
    assert_eq!(oob.response.code, 550);
    assert_eq!(
        oob.bounce_classification.as_deref(),
        Some("InvalidRecipient")
    );

    let feedback = find(&events, EventType::Feedback, "ok-1@example.test").unwrap();
    assert_eq!(feedback.id, main);
    let report = feedback.feedback_report.as_ref().unwrap();
    assert_eq!(report.feedback_type, "abuse");
    assert_eq!(report.user_agent.as_deref(), Some("TestFBL/1.0"));

    let auth = find(&events, EventType::Rejection, "").unwrap();
    assert_eq!(auth.response.code, 535);
    assert_eq!(auth.meta.credential.as_deref(), Some(USER));
    assert_eq!(
        auth.bounce_classification.as_deref(),
        Some("AuthenticationFailed")
    );
    let relay = find(&events, EventType::Rejection, "someone@elsewhere.test").unwrap();
    assert_eq!(relay.response.code, 550);

    // The webhook's state is visible.
    let hook = webhook_status(net).await;
    assert_eq!(hook["name"], "test", "{hook}");
    assert!(
        hook["sent"].as_u64().unwrap() >= events.len() as u64,
        "{hook}"
    );
    let (_, metrics) = fleet::testkit::process::http_get(&format!("{}/metrics", admin(net)))
        .await
        .unwrap();
    fleet::testkit::assert_contains_all(
        &metrics,
        &[
            "mta_webhook_sent_events_total{webhook=\"test\"}",
            "mta_webhook_backlog_events{webhook=\"test\"}",
            "mta_bounces_received_total{kind=\"unparseable\"} 1",
        ],
    );
}

#[tokio::test]
async fn a_webhook_down_while_the_mta_is_killed_still_gets_every_event() {
    let net = 2;
    let sink = sink(net).await;
    let dir = tempfile::tempdir().unwrap();
    let configs = node_configs(net, &[]);
    let mut node = start_node(&configs, net).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            submit(
                net,
                &[&format!("ok-{n}@example.test")],
                &format!("down {n}"),
            )
            .await,
        );
    }
    sink.wait_for(10, LIMIT).await.unwrap();
    // Nothing listens at the webhook's address: POSTs fail and retry.
    until_webhook(net, "the webhook is failing with a backlog", |hook| {
        hook["failures"].as_u64().unwrap_or(0) > 0 && hook["backlog"].as_u64().unwrap_or(0) >= 20
    })
    .await;
    // The node says so on /ready (healthd's dashboard shows it), still 200.
    let ready = format!("{}/ready", admin(net));
    fleet::testkit::process::eventually(LIMIT, "/ready says the webhook is failing", || {
        let ready = ready.clone();
        async move {
            matches!(fleet::testkit::process::http_get(&ready).await,
                Some((200, body)) if body.contains("degraded") && body.contains("webhook"))
        }
    })
    .await
    .unwrap();
    node.signal("KILL").unwrap();
    node.wait_exit(LIMIT).await.unwrap();

    let receiver = Receiver::start(net, &dir.path().join("events.jsonl"));
    let _node = start_node(&configs, net).await;
    let events = receiver
        .wait_until("every Reception and Delivery", |e| {
            ids.iter().all(|id| {
                [EventType::Reception, EventType::Delivery]
                    .iter()
                    .all(|k| e.iter().any(|ev| ev.id == *id && ev.kind == *k))
            })
        })
        .await;
    assert_eq!(receiver.bad_signatures(), 0);
    assert_in_order_per_message(&events);
    fleet::testkit::process::eventually(LIMIT, "/ready no longer degraded", || {
        let ready = ready.clone();
        async move {
            matches!(fleet::testkit::process::http_get(&ready).await,
                Some((200, body)) if !body.contains("degraded"))
        }
    })
    .await
    .unwrap();
    // Duplicates are allowed; after dedupe by event id, exactly one each.
    let unique: BTreeMap<&str, &Event> = events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    for id in &ids {
        for kind in [EventType::Reception, EventType::Delivery] {
            let n = unique
                .values()
                .filter(|e| e.id == *id && e.kind == kind)
                .count();
            assert_eq!(n, 1, "{kind} of {id} {n} times");
        }
    }
}

/// An https webhook is verified against `webhook_ca_file`: a receiver whose
/// certificate another CA issued gets nothing (the failure names the
/// certificate), and once the right one listens it gets every event.
#[tokio::test]
async fn an_https_webhook_gets_events_only_from_a_trusted_certificate() {
    let net = 3;
    let sink = sink(net).await;
    let dir = tempfile::tempdir().unwrap();
    let host = ip(net, 2).to_string();
    let trusted = fleet::testkit::pki::LocalCa::new("webhook test CA").unwrap();
    trusted
        .write_bundle(&dir.path().join("good"), "hook", &[&host])
        .unwrap();
    let stranger = fleet::testkit::pki::LocalCa::new("someone else's CA").unwrap();
    stranger
        .write_bundle(&dir.path().join("bad"), "hook", &[&host])
        .unwrap();
    let configs = node_configs(net, &[]);
    configs
        .edit("fleet.toml", |doc| {
            doc["clusters"][0]["webhooks"][0]["url"] =
                value(format!("https://{host}:{HOOK_PORT}/events"));
        })
        .unwrap();
    let ca_file = dir.path().join("good/ca.pem");
    configs
        .edit("mta.toml", |doc| {
            doc["events"]["webhook_ca_file"] = value(ca_file.display().to_string());
        })
        .unwrap();
    let tls = |d: &str| {
        (
            dir.path().join(d).join("hook.pem"),
            dir.path().join(d).join("hook-key.pem"),
        )
    };
    let (cert, key) = tls("bad");
    let impostor = Receiver::start_tls(net, &dir.path().join("impostor.jsonl"), &cert, &key);
    let _node = start_node(&configs, net).await;
    let id = submit(net, &["ok-tls@example.test"], "over https").await;
    sink.wait_for(1, LIMIT).await.unwrap();
    until_webhook(net, "the untrusted receiver is refused", |hook| {
        let error = hook["last_error"].as_str().unwrap_or("");
        error.to_lowercase().contains("certificate")
    })
    .await;
    assert!(
        impostor.events().is_empty(),
        "an untrusted receiver got events"
    );
    drop(impostor);

    let (cert, key) = tls("good");
    let receiver = Receiver::start_tls(net, &dir.path().join("events.jsonl"), &cert, &key);
    let events = receiver
        .wait_until("Reception and Delivery over https", |e| {
            [EventType::Reception, EventType::Delivery]
                .iter()
                .all(|k| e.iter().any(|ev| ev.id == id && ev.kind == *k))
        })
        .await;
    assert_eq!(receiver.bad_signatures(), 0);
    assert_in_order_per_message(&events);
}
