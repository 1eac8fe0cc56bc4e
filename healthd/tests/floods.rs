//! healthd under connection floods: at most `max_connections` open on its
//! listener (the next one waits until one closes) and at most
//! `max_long_polls` feed or dashboard long polls waiting (the next one gets
//! 503 with Retry-After at once).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_long_polls_are_capped() {
    let one = OneFake::new(30, "f1", |_| {}).await;
    let healthd = one
        .start("max_connections = 4\nmax_long_polls = 2", "")
        .await;
    healthd.wait_up("mta-1").await;
    // A generation never reached: each poll waits its whole max_wait, whatever
    // the probes do meanwhile. Of three at once, two wait and one is refused
    // at once (which one depends on arrival order).
    let url = format!("{}/v1/fleet?after={}", healthd.url, u64::MAX - 1);
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let request = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(60))
            .send();
        waiting.push(tokio::spawn(async move {
            request
                .await
                .map(|r| (r.status(), r.headers().contains_key("retry-after")))
        }));
    }
    let refused = fleet::testkit::process::eventually(
        Duration::from_secs(20),
        "one of three long polls is refused",
        || {
            let done = waiting.iter().filter(|p| p.is_finished()).count();
            async move { done >= 1 }
        },
    )
    .await;
    assert!(refused.is_ok(), "{refused:?}");
    let (finished, waiting): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|p| p.is_finished());
    let mut answers = Vec::new();
    for poll in finished {
        answers.push(poll.await.unwrap().map_err(|e| e.to_string()));
    }
    assert_eq!(
        answers,
        vec![Ok((reqwest::StatusCode::SERVICE_UNAVAILABLE, true))],
        "exactly one refused, with Retry-After; the other two still wait"
    );
    healthd.stop().await;
    for poll in waiting {
        let _ = poll.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_waits_until_one_closes() {
    let one = OneFake::new(31, "f1", |_| {}).await;
    let healthd = one.start("max_connections = 3", "").await;
    let addr = healthd.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let live = format!("{}/live", healthd.url);
    let over = reqwest::Client::new()
        .get(&live)
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(over.is_err(), "served over the cap: {over:?}");
    drop(idle.pop());
    let served = reqwest::Client::new()
        .get(&live)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    drop(idle);
    healthd.stop().await;
}
