//! Delivery against sink MX hosts and a static DNS server on 127.2.N.0/24:
//! MX, preference and fallback, A fallback, null MX, 4xx then 2xx, 5xx,
//! expiry, smart-host routes, DSNs.

mod egress_support;

use std::time::Duration;

use egress_support::*;
use fleet::testkit::dns::Record;
use fleet::testkit::sink::Behaviour;
use mta::events::EventKind;

const FAST_RETRY: &str = "retry_initial = \"100ms\"\nretry_max = \"400ms\"\ntimeout = \"5s\"";

#[tokio::test]
async fn delivers_through_the_domain_mx() {
    let net = 10;
    let sink = tls_sink(net, 25, "mx.example.test").await;
    let dns = dns(
        net,
        vec![
            Record::mx("example.test", 10, "mx.example.test"),
            Record::a("mx.example.test", ip(net, 25)),
        ],
    )
    .await;
    let mut egress = Egress::start(configs(net, "unlimited", Some(dns.addr()), FAST_RETRY)).await;
    let id = egress.inject("someone@example.test", "via-mx").await;
    let delivery = egress.event(&id, EventKind::Delivery).await;
    assert_eq!(delivery.recipient, "someone@example.test");
    assert_eq!(delivery.queue, "example.test");
    assert_eq!(delivery.envelope_sender, "app@yourdomain.com");
    // VERP: the return path on the wire names the message.
    assert_eq!(delivery.sender, format!("{id}@c-a1b2c3d4.unmta.net"));
    assert_eq!(delivery.delivery_protocol.as_deref(), Some("ESMTP"));
    assert_eq!(delivery.meta.cluster, "a1b2c3d4");
    assert_eq!(Some(delivery.site.as_str()), Some("mx.example.test"));
    assert_eq!(delivery.response.code, 250, "{delivery:?}");
    let peer = delivery.peer_address.clone().expect("a peer address");
    assert_eq!(peer.addr, format!("{}:{MX_PORT}", ip(net, 25)));
    assert_eq!(peer.name, "mx.example.test");
    let got = sink.wait_for(1, LIMIT).await.unwrap();
    let received = with_marker(&got, "via-mx").expect("the message at the MX");
    assert_eq!(received.rcpt_to, vec!["someone@example.test".to_string()]);
    assert_eq!(received.mail_from, format!("{id}@c-a1b2c3d4.unmta.net"));
    assert!(received.tls, "opportunistic STARTTLS was not used");
    assert_eq!(received.helo, EXAMPLE_HOSTNAME);
    fleet::testkit::process::eventually(LIMIT, "the spool empties", || {
        let stats = egress.spool.stats();
        async move { stats.queued == 0 }
    })
    .await
    .unwrap();
    assert_eq!(egress.metrics.delivered.get(), 1);
    egress.stop().await;
}

#[tokio::test]
async fn prefers_the_lowest_mx_and_falls_back_to_the_next() {
    let net = 11;
    let best = sink(net, 25, Behaviour::Accept).await;
    let backup = sink(net, 26, Behaviour::Accept).await;
    let dns = dns(
        net,
        vec![
            Record::mx("pref.test", 20, "mx2.pref.test"),
            Record::mx("pref.test", 10, "mx1.pref.test"),
            Record::a("mx1.pref.test", ip(net, 25)),
            Record::a("mx2.pref.test", ip(net, 26)),
        ],
    )
    .await;
    let mut egress = Egress::start(configs(net, "unlimited", Some(dns.addr()), FAST_RETRY)).await;
    for n in 0..3 {
        let id = egress.inject("a@pref.test", &format!("pref-{n}")).await;
        let d = egress.event(&id, EventKind::Delivery).await;
        assert_eq!(Some(d.site.as_str()), Some("mx1.pref.test"));
    }
    assert_eq!(best.messages().len(), 3);
    assert!(backup.messages().is_empty());

    // The preferred MX goes away: the next message goes to the backup, in
    // the same attempt.
    best.stop();
    drop(best);
    let id = egress.inject("a@pref.test", "fallback").await;
    let d = egress.event(&id, EventKind::Delivery).await;
    assert_eq!(Some(d.site.as_str()), Some("mx2.pref.test"));
    assert_eq!(d.num_attempts, 1);
    let got = backup.wait_for(1, LIMIT).await.unwrap();
    assert!(with_marker(&got, "fallback").is_some());
    egress.stop().await;
}

#[tokio::test]
async fn without_mx_the_domain_address_is_used() {
    let net = 12;
    let sink = sink(net, 25, Behaviour::Accept).await;
    let dns = dns(net, vec![Record::a("plain.test", ip(net, 25))]).await;
    let mut egress = Egress::start(configs(net, "unlimited", Some(dns.addr()), FAST_RETRY)).await;
    let id = egress.inject("x@plain.test", "a-fallback").await;
    let d = egress.event(&id, EventKind::Delivery).await;
    assert_eq!(Some(d.site.as_str()), Some("plain.test"));
    assert!(with_marker(&sink.wait_for(1, LIMIT).await.unwrap(), "a-fallback").is_some());
    egress.stop().await;
}

#[tokio::test]
async fn a_null_mx_and_a_missing_domain_bounce_at_once() {
    let net = 13;
    let dns = dns(net, vec![Record::null_mx("nomail.test")]).await;
    let mut egress = Egress::start(configs(net, "unlimited", Some(dns.addr()), FAST_RETRY)).await;
    let id = egress.inject("x@nomail.test", "null-mx").await;
    let bounce = egress.event(&id, EventKind::Bounce).await;
    assert!(bounce.response.content.contains("null MX"), "{bounce:?}");
    assert!(bounce.response.content.contains("5.1.10"), "{bounce:?}");
    assert_eq!(bounce.num_attempts, 1);
    let id = egress.inject("x@missing.test", "nxdomain").await;
    let bounce = egress.event(&id, EventKind::Bounce).await;
    assert!(
        bounce.response.content.contains("does not exist"),
        "{bounce:?}"
    );
    assert_eq!(egress.metrics.permanent.get(), 2);
    assert_eq!(egress.metrics.transient.get(), 0);
    egress.stop().await;
}

#[tokio::test]
async fn a_temporary_failure_is_retried_until_delivered() {
    let net = 14;
    let sink = sink(net, 25, Behaviour::TempFailFirst(2)).await;
    let configs = configs(
        net,
        "unlimited",
        None,
        &format!(
            "{FAST_RETRY}\n[delivery.routes]\n\"retry.test\" = \"{}:{MX_PORT}\"",
            ip(net, 25)
        ),
    );
    let mut egress = Egress::start(configs).await;
    let id = egress.inject("r@retry.test", "retry").await;
    let first = egress.event(&id, EventKind::TransientFailure).await;
    assert_eq!(first.response.code, 451, "{first:?}");
    assert_eq!(first.num_attempts, 1);
    let second = egress.event(&id, EventKind::TransientFailure).await;
    assert_eq!(second.num_attempts, 2);
    let delivered = egress.event(&id, EventKind::Delivery).await;
    assert_eq!(delivered.num_attempts, 3);
    // Backoff: 100 ms then 200 ms (±10 %) between the attempts.
    let codes: Vec<u16> = sink.attempts().iter().map(|a| a.code).collect();
    assert_eq!(codes, vec![451, 451, 250]);
    let at: Vec<_> = sink.attempts().iter().map(|a| a.at).collect();
    assert!(
        at[1] - at[0] >= Duration::from_millis(85),
        "{:?}",
        at[1] - at[0]
    );
    assert!(
        at[2] - at[1] >= Duration::from_millis(170),
        "{:?}",
        at[2] - at[1]
    );
    assert_eq!(egress.metrics.transient.get(), 2);
    egress.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_bounces_without_retry() {
    let net = 15;
    let sink = sink(net, 25, Behaviour::Reject).await;
    let configs = configs(
        net,
        "unlimited",
        None,
        &format!(
            "{FAST_RETRY}\n[delivery.routes]\n\"reject.test\" = \"{}:{MX_PORT}\"",
            ip(net, 25)
        ),
    );
    let mut egress = Egress::start(configs).await;
    let id = egress.inject("r@reject.test", "reject").await;
    let bounce = egress.event(&id, EventKind::Bounce).await;
    assert_eq!(bounce.response.code, 550, "{bounce:?}");
    assert_eq!(
        Some(bounce.site.as_str()),
        Some(ip(net, 25).to_string().as_str())
    );
    assert!(sink.messages().is_empty());
    fleet::testkit::process::eventually(LIMIT, "the spool empties", || {
        let stats = egress.spool.stats();
        async move { stats.queued == 0 }
    })
    .await
    .unwrap();
    egress.stop().await;
}

#[tokio::test]
async fn a_message_expires_after_the_maximum_age_with_a_dsn() {
    let net = 16;
    let always_busy = sink(net, 25, Behaviour::TempFailFirst(u32::MAX)).await;
    let sender_mx = sink(net, 26, Behaviour::Accept).await;
    let configs = configs(
        net,
        "unlimited",
        None,
        &format!(
            "retry_initial = \"100ms\"\nretry_max = \"200ms\"\nmax_age = \"1s\"\ndsn = true\n\
             [delivery.routes]\n\"busy.test\" = \"{}:{MX_PORT}\"\n\"yourdomain.com\" = \"{}:{MX_PORT}\"",
            ip(net, 25),
            ip(net, 26)
        ),
    );
    let mut egress = Egress::start(configs).await;
    let id = egress.inject("r@busy.test", "expire").await;
    let expired = egress.event(&id, EventKind::Expiration).await;
    assert!(expired.timestamp > expired.created, "{expired:?}");
    assert!(expired.num_attempts >= 3, "{expired:?}");
    assert!(expired.response.content.contains("expired"), "{expired:?}");
    assert!(always_busy.attempts().len() >= 3);
    assert_eq!(egress.metrics.expired.get(), 1);
    // The sender hears of it, from the null sender.
    let got = sender_mx.wait_for(1, LIMIT).await.unwrap();
    let dsn = &got[0];
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpt_to, vec!["app@yourdomain.com".to_string()]);
    let text = dsn.text();
    assert!(text.contains("multipart/report"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; r@busy.test"),
        "{text}"
    );
    assert!(text.contains("Subject: egress test expire"), "{text}");
    egress.stop().await;
}

#[tokio::test]
async fn a_route_sends_a_domain_to_its_smart_host() {
    let net = 17;
    let smart = sink(net, 30, Behaviour::Accept).await;
    let dns = dns(net, vec![]).await;
    let configs = configs(
        net,
        "unlimited",
        Some(dns.addr()),
        &format!(
            "[delivery.routes]\n\"Routed.Test\" = \"{}:{MX_PORT}\"",
            ip(net, 30)
        ),
    );
    let mut egress = Egress::start(configs).await;
    let id = egress.inject("who@routed.test", "routed").await;
    let d = egress.event(&id, EventKind::Delivery).await;
    assert_eq!(
        d.peer_address.as_ref().map(|p| p.addr.clone()),
        Some(format!("{}:{MX_PORT}", ip(net, 30)))
    );
    assert!(with_marker(&smart.wait_for(1, LIMIT).await.unwrap(), "routed").is_some());
    egress.stop().await;
}

#[tokio::test]
async fn recipients_of_one_message_are_delivered_each_to_its_domain() {
    let net = 19;
    let one = sink(net, 25, Behaviour::Accept).await;
    let _two = sink(net, 26, Behaviour::Reject).await;
    let configs = configs(
        net,
        "unlimited",
        None,
        &format!(
            "[delivery.routes]\n\"one.test\" = \"{}:{MX_PORT}\"\n\"two.test\" = \"{}:{MX_PORT}\"",
            ip(net, 25),
            ip(net, 26)
        ),
    );
    let mut egress = Egress::start(configs).await;
    let id = egress
        .spool
        .accept(message(
            &["a@one.test", "b@two.test", "c@one.test"],
            "multi",
        ))
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    while outcomes.len() < 3 {
        let event = tokio::time::timeout(LIMIT, egress.events.recv())
            .await
            .expect("three outcomes")
            .unwrap();
        if event.id == id.0 && event.kind != EventKind::Reception {
            outcomes.push((event.recipient.clone(), event.kind));
        }
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outcomes,
        vec![
            ("a@one.test".to_string(), EventKind::Delivery),
            ("b@two.test".to_string(), EventKind::Bounce),
            ("c@one.test".to_string(), EventKind::Delivery),
        ]
    );
    assert_eq!(one.wait_for(2, LIMIT).await.unwrap().len(), 2);
    egress.stop().await;
}

#[tokio::test]
async fn attempts_to_one_destination_are_bounded() {
    let net = 22;
    let slow = sink(net, 25, Behaviour::Slow(Duration::from_millis(300))).await;
    let configs = configs(
        net,
        "unlimited",
        None,
        &format!(
            "connections_per_destination = 2\n[delivery.routes]\n\"slow.test\" = \"{}:{MX_PORT}\"",
            ip(net, 25)
        ),
    );
    let mut egress = Egress::start(configs).await;
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(egress.inject("s@slow.test", &format!("slow-{n}")).await);
    }
    for id in &ids {
        egress.event(id, EventKind::Delivery).await;
    }
    // Two at a time, 300 ms each: three rounds.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(850), "6 in {took:?}");
    assert_eq!(slow.messages().len(), 6);
    egress.stop().await;
}

#[tokio::test]
async fn private_and_loopback_answers_are_not_connected_to_unless_allowed() {
    let net = 40;
    let allowed = sink(net, 26, Behaviour::Accept).await;
    let forbidden = sink(net, 25, Behaviour::Accept).await;
    let dns = dns(
        net,
        vec![
            Record::mx("inside.test", 10, "mx.inside.test"),
            Record::a("mx.inside.test", ip(net, 25)),
            Record::a("private.test", "10.1.2.3".parse().unwrap()),
            Record::mx("ok.test", 10, "mx.ok.test"),
            Record::a("mx.ok.test", ip(net, 26)),
        ],
    )
    .await;
    let configs = configs(net, "unlimited", Some(dns.addr()), FAST_RETRY);
    // Only the one sink's address is allowed, not the rest of loopback.
    let node = configs.path("mta.toml");
    let text = std::fs::read_to_string(&node).unwrap().replace(
        "allow_networks = [\"127.0.0.0/8\"]",
        &format!("allow_networks = [\"{}/32\"]", ip(net, 26)),
    );
    std::fs::write(&node, text).unwrap();
    let mut egress = Egress::start(configs).await;
    let id = egress.inject("x@inside.test", "to-loopback").await;
    let bounce = egress.event(&id, EventKind::Bounce).await;
    let forbidden_ip = ip(net, 25).to_string();
    assert!(
        bounce.response.content.contains(&forbidden_ip),
        "{bounce:?}"
    );
    assert!(bounce.response.content.contains("loopback"), "{bounce:?}");
    let id = egress.inject("x@private.test", "to-private").await;
    let bounce = egress.event(&id, EventKind::Bounce).await;
    assert!(bounce.response.content.contains("10.1.2.3"), "{bounce:?}");
    assert!(bounce.response.content.contains("private"), "{bounce:?}");
    let id = egress.inject("x@ok.test", "allowed").await;
    egress.event(&id, EventKind::Delivery).await;
    assert!(with_marker(&allowed.wait_for(1, LIMIT).await.unwrap(), "allowed").is_some());
    assert!(
        forbidden.messages().is_empty(),
        "a forbidden address was reached"
    );
    egress.stop().await;
}

#[tokio::test]
async fn a_route_that_requires_starttls_never_falls_back_to_plaintext() {
    let net = 41;
    let plain = sink(net, 25, Behaviour::Accept).await;
    let dns = dns(net, vec![Record::a("strict.test", ip(net, 25))]).await;
    let delivery = format!("{FAST_RETRY}\nroute_starttls = {{ \"strict.test\" = \"required\" }}");
    let mut egress = Egress::start(configs(net, "unlimited", Some(dns.addr()), &delivery)).await;
    let id = egress.inject("x@strict.test", "needs-tls").await;
    let failure = egress.event(&id, EventKind::TransientFailure).await;
    assert!(
        failure.response.content.contains("does not offer STARTTLS"),
        "{failure:?}"
    );
    assert!(plain.messages().is_empty(), "sent in plaintext");
    egress.stop().await;
}
