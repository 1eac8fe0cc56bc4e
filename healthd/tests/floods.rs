//! healthd under connection floods: at most `max_connections` open on its
//! listener (the next one waits until one closes) and at most
//! `max_long_polls` feed or dashboard long polls waiting (the next one gets
//! 503 with Retry-After at once).

mod common;

use std::time::Duration;

use common::*;
use fleet::feed::MtaState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_long_polls_are_capped() {
    let test = 30;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let _one = fake(ip(test, 10), pki.server(&["c-f1.unmta.net"])).await;
    let fleet = fleet_toml(&[("f1", "500/hr", vec![mta("mta-1", ip(test, 10))])]);
    let config = write_configs(dir.path(), ip(test, 1), &pki, &fleet, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[probe]",
        "max_connections = 4\nmax_long_polls = 2\n[probe]",
    );
    std::fs::write(&config, text).unwrap();
    let healthd = Healthd::start(&config).await;
    healthd
        .wait_state("mta-1", MtaState::Up, Duration::from_secs(5))
        .await;
    // A generation never reached: each poll waits its whole max_wait, whatever
    // the probes do meanwhile. Two wait; the third is refused at once.
    let url = format!("{}/v1/fleet?after={}", healthd.url, u64::MAX - 1);
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let request = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(60))
            .send();
        waiting.push(tokio::spawn(request));
    }
    let refused = fleet::testkit::process::eventually(
        Duration::from_secs(10),
        "a third long poll is refused",
        || {
            let url = url.clone();
            async move {
                let response = reqwest::Client::new()
                    .get(&url)
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await;
                matches!(response, Ok(r) if r.status() == 503
                    && r.headers().get("retry-after").is_some())
            }
        },
    )
    .await;
    assert!(refused.is_ok(), "{refused:?}");
    healthd.stop().await;
    for poll in waiting {
        let _ = poll.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_waits_until_one_closes() {
    let test = 31;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let _one = fake(ip(test, 10), pki.server(&["c-f1.unmta.net"])).await;
    let fleet = fleet_toml(&[("f1", "500/hr", vec![mta("mta-1", ip(test, 10))])]);
    let config = write_configs(dir.path(), ip(test, 1), &pki, &fleet, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[probe]", "max_connections = 3\n[probe]");
    std::fs::write(&config, text).unwrap();
    let healthd = Healthd::start(&config).await;
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
