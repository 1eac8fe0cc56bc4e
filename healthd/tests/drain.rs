//! Drain and undrain through the admin API, kept across a restart; a
//! drain in the fleet file; drained MTAs are still probed and shown.

mod common;

use std::time::Duration;

use common::*;
use fleet::feed::MtaState;
use fleet::testkit::process::eventually;
use reqwest::Method;

const DRAIN: &str = "/v1/mtas/mta-1/drain";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_undrain_survive_a_restart() {
    let bed = Bed::new(8);
    let one = bed.fake(10, &["c-d1.unmta.net"]).await;
    let _two = bed.fake(11, &["c-d1.unmta.net"]).await;
    let mtas = vec![mta("mta-1", bed.ip(10)), mta("mta-2", bed.ip(11))];
    let config = bed.configs(&fleet_toml(&[("d1", "unlimited", mtas)]), "", "");
    let healthd = Healthd::start(&config).await;
    healthd.wait_up("mta-1").await;
    healthd.wait_up("mta-2").await;

    // Only the admin token may drain.
    let (status, body) = healthd.call(Method::POST, DRAIN, None).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("Unauthenticated."))
    );
    let (status, _) = healthd.call(Method::POST, DRAIN, Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = healthd.call(Method::POST, DRAIN, Some(ACCOUNT_TOKEN)).await;
    assert_eq!(status, 403);
    let (status, body) = healthd
        .call(Method::POST, "/v1/mtas/nope/drain", Some(ADMIN_TOKEN))
        .await;
    assert_eq!((status, body["message"].as_str()), (404, Some("Not Found")));
    assert_eq!(healthd.mta("mta-1").await.unwrap().state, MtaState::Up);

    let generation = healthd.feed().await.generation;
    let (status, body) = healthd.call(Method::POST, DRAIN, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "drain");
    assert_eq!(body["data"]["probes"], "up");
    let feed = healthd.feed().await;
    assert!(feed.generation > generation);
    let drained = find(&feed, "mta-1").unwrap();
    assert_eq!(drained.state, MtaState::Drain);
    assert_eq!(
        drained.reason.as_deref(),
        Some("drained by an admin call; probes: up")
    );
    assert_eq!(find(&feed, "mta-2").unwrap().state, MtaState::Up);

    // Still probed while drained, and a failure shows through the reason.
    let before = one.smtp_connections();
    eventually(Duration::from_secs(5), "probed while drained", || async {
        one.smtp_connections() >= before + 2
    })
    .await
    .unwrap();
    one.set(|s| s.offer_starttls = false);
    let shown = healthd
        .wait_for(
            "mta-1",
            Duration::from_secs(5),
            "failing while drained",
            |m| {
                m.reason.as_deref()
                    == Some("drained by an admin call; probes: down: smtp: STARTTLS not offered")
            },
        )
        .await;
    assert_eq!(shown.state, MtaState::Drain);
    one.set(|s| s.offer_starttls = true);
    healthd
        .wait_for(
            "mta-1",
            Duration::from_secs(5),
            "passing while drained",
            |m| m.reason.as_deref() == Some("drained by an admin call; probes: up"),
        )
        .await;

    // A restart keeps the drain; the new instance's generations pass the
    // old one's, so a consumer's long-poll is answered at once.
    let old = healthd.feed().await;
    healthd.stop().await;
    let saved = std::fs::read_to_string(bed.dir.path().join("var/state.json")).unwrap();
    assert!(saved.contains("mta-1"), "{saved}");
    let healthd = Healthd::start(&config).await;
    let new = healthd.feed().await;
    assert_ne!(new.instance, old.instance);
    assert!(new.generation > old.generation);
    assert_eq!(healthd.mta("mta-1").await.unwrap().state, MtaState::Drain);
    assert_ne!(healthd.mta("mta-2").await.unwrap().state, MtaState::Drain);

    // Undrain: back to what the probes say; and that survives a restart too.
    let (status, body) = healthd.call(Method::DELETE, DRAIN, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["drained"], false);
    healthd.wait_up("mta-1").await;
    healthd.stop().await;
    let healthd = Healthd::start(&config).await;
    let after = healthd.mta("mta-1").await.unwrap();
    assert_eq!(
        after.state,
        MtaState::Unknown,
        "a restart starts from unknown, undrained"
    );
    healthd.wait_up("mta-1").await;
    healthd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_in_the_fleet_file_is_not_undone_by_an_admin_call() {
    let bed = Bed::new(13);
    let one = bed.fake(10, &["c-d2.unmta.net"]).await;
    let mut spec = mta("mta-1", bed.ip(10));
    spec.drain = true;
    let config = bed.configs(&fleet_toml(&[("d2", "unlimited", vec![spec])]), "", "");
    let healthd = Healthd::start(&config).await;
    assert_eq!(healthd.mta("mta-1").await.unwrap().state, MtaState::Drain);
    healthd
        .wait_for("mta-1", Duration::from_secs(5), "probed up", |m| {
            m.reason.as_deref() == Some("drained by the fleet file; probes: up")
        })
        .await;
    assert!(one.smtp_connections() >= 2);
    let (status, body) = healthd.call(Method::DELETE, DRAIN, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["state"], "drain");
    assert_eq!(body["data"]["drained_by_fleet"], true);

    // Taking the drain out of the fleet file serves it again.
    bed.rewrite_fleet(&fleet_toml(&[(
        "d2",
        "unlimited",
        vec![mta("mta-1", bed.ip(10))],
    )]));
    healthd.reload();
    healthd.wait_up("mta-1").await;
    healthd.stop().await;
}
