//! The feed: generation moves on transitions only, and a long-poll waiter
//! is woken within 100 ms of a transition.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use fleet::feed::{FleetHealth, MtaState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_within_100ms_of_a_transition() {
    let mut one = OneFake::new(9, "f1", |_| {}).await;
    let healthd = one.start("", "").await;
    healthd.wait_up("mta-1").await;
    let feed = healthd.feed().await;
    assert_eq!(feed.clusters[0].hostname, "c-f1.unmta.net");
    let generation = feed.generation;

    // Nothing changes while the MTA stays up: a waiter is not answered.
    let waited = healthd
        .client
        .get(format!("{}/v1/fleet?after={generation}", healthd.url))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(
        waited.is_err_and(|e| e.is_timeout()),
        "answered without a change"
    );
    assert_eq!(
        healthd.feed().await.generation,
        generation,
        "latency moved the generation"
    );

    // A waiter is woken by the transition and sees it.
    let url = format!("{}/v1/fleet?after={generation}", healthd.url);
    let client = healthd.client.clone();
    let waiter = tokio::spawn(async move {
        let feed: FleetHealth = client.get(url).send().await.unwrap().json().await.unwrap();
        (SystemTime::now(), feed)
    });
    one.fake.kill();
    let (woken, feed) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(feed.generation > generation);
    let down = find(&feed, "mta-1").unwrap();
    assert_eq!(down.state, MtaState::Down);
    let since = humantime::parse_rfc3339(&down.since).unwrap();
    let delay = woken.duration_since(since).unwrap_or_default();
    assert!(
        delay <= Duration::from_millis(100),
        "woken {delay:?} after the transition"
    );
    assert_eq!(feed.instance, healthd.feed().await.instance);
    healthd.stop().await;
}
