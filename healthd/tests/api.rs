//! The Clusters API with an account that owns one of two clusters, the
//! admin token, and every status it answers; `/ready` after the first round.

mod common;

use std::time::Duration;

use common::*;
use fleet::clusters_api::{ClusterView, Data};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_api_answers_by_token() {
    let bed = Bed::new(10);
    let _one = bed.fake(10, &["c-a1.unmta.net"]).await;
    let fleet = fleet_toml(&[
        ("a1", "500/hr", vec![mta("mta-a", bed.ip(10))]),
        ("b2", "unlimited", vec![mta("mta-b", bed.ip(11))]),
    ]);
    let healthd = Healthd::start(&bed.configs(&fleet, "", "")).await;

    for token in [None, Some("not-a-token")] {
        for path in [
            "/api/v1/clusters",
            "/api/v1/clusters/a1",
            "/api/v1/clusters/zz",
        ] {
            let (status, body) = healthd.get(path, token).await;
            assert_eq!(status, 401, "{path} {token:?}");
            assert_eq!(body, serde_json::json!({"message": "Unauthenticated."}));
        }
    }

    let (status, body) = healthd.get("/api/v1/clusters", Some(ACCOUNT_TOKEN)).await;
    assert_eq!(status, 200);
    let list = body["data"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["id"], "a1");

    let (status, body) = healthd
        .get("/api/v1/clusters/a1", Some(ACCOUNT_TOKEN))
        .await;
    assert_eq!(status, 200);
    // The wire format is the shared types' (fleet::clusters_api).
    let cluster = serde_json::from_value::<Data<ClusterView>>(body)
        .unwrap()
        .data;
    assert_eq!(cluster.hostname, "c-a1.unmta.net");
    assert_eq!(cluster.rate_limit, "500/hr per MTA");
    let connection = &cluster.connection;
    assert_eq!(
        connection.http_endpoint,
        "https://c-a1.unmta.net:8443/api/inject/v1"
    );
    assert_eq!(connection.smtp_host, "c-a1.unmta.net");
    assert_eq!(connection.https_port, 8443);
    assert_eq!(connection.smtp_ports[0].port, SMTP_PORT);
    assert_eq!(connection.smtp_ports[1].port, 25);
    assert!(connection.smtp_ports[1].starttls_required);
    assert_eq!(cluster.mtas[0].name, "mta-a");
    assert!(cluster.mtas[0].since.is_some());

    // Another account's cluster and an unknown one are both Not Found.
    for path in ["/api/v1/clusters/b2", "/api/v1/clusters/zz"] {
        let (status, body) = healthd.get(path, Some(ACCOUNT_TOKEN)).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body, serde_json::json!({"message": "Not Found"}));
    }

    // The admin token sees every cluster.
    let (status, body) = healthd.get("/api/v1/clusters", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "b2"]);
    let (status, body) = healthd.get("/api/v1/clusters/b2", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["rate_limit"], "unlimited");
    let (status, _) = healthd.get("/api/v1/clusters/zz", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);

    // MTA health shows through: mta-a up, mta-b (nothing listening) down.
    let mut last = serde_json::Value::Null;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        last = healthd.get("/api/v1/clusters", Some(ADMIN_TOKEN)).await.1;
        if last["data"][0]["mtas"][0]["state"] == "up"
            && last["data"][1]["mtas"][0]["state"] == "down"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last["data"][0]["mtas"][0]["state"], "up", "{last}");
    assert_eq!(last["data"][1]["mtas"][0]["state"], "down", "{last}");
    assert_eq!(
        last["data"][1]["mtas"][0]["reason"],
        "smtp: connection refused"
    );
    healthd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_the_first_probe_round_finished() {
    // The MTA says nothing: the first round takes the whole timeout.
    let one = OneFake::new(14, "r1", |s| s.no_banner = true).await;
    let healthd = one.start("", "timeout = \"2s\"").await;
    let (status, body) = healthd.text("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("first probe round"), "{body}");
    let start = std::time::Instant::now();
    loop {
        let (status, _) = healthd.text("/ready").await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not ready after the first round"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "ready before the round finished"
    );
    let (status, live) = healthd.text("/live").await;
    assert_eq!((status, live.trim()), (200, "live"));
    healthd.stop().await;
}

/// An MTA whose `/ready` passes but says it is degraded (a failing webhook)
/// stays up; the Clusters API and the dashboard show the note until it
/// clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_mta_stays_up_and_says_why() {
    let note = "webhook crm has failed 3 times in a row with 40 events waiting: POST answered 503";
    let one = OneFake::new(16, "d1", |s| {
        s.ready_body = format!("ready, degraded: {note}");
    })
    .await;
    let healthd = one.start("", "interval = \"200ms\"").await;
    fleet::testkit::process::eventually(Duration::from_secs(10), "the note in the API", || async {
        let mta = mta_view(&healthd, "d1").await;
        mta["state"] == "up" && mta["degraded"] == note
    })
    .await
    .unwrap();
    let mta = mta_view(&healthd, "d1").await;
    assert_eq!(mta["reason"], format!("degraded: {note}"));

    one.fake.set(|s| s.ready_body = "ready".into());
    fleet::testkit::process::eventually(Duration::from_secs(10), "the note cleared", || async {
        let mta = mta_view(&healthd, "d1").await;
        mta["state"] == "up" && mta["degraded"].is_null() && mta["reason"].is_null()
    })
    .await
    .unwrap();
    healthd.stop().await;
}

/// The first MTA of `cluster` as the Clusters API shows it.
async fn mta_view(healthd: &Healthd, cluster: &str) -> serde_json::Value {
    let (_, body) = healthd
        .get(&format!("/api/v1/clusters/{cluster}"), Some(ACCOUNT_TOKEN))
        .await;
    body["data"]["mtas"][0].clone()
}

/// Outside the routes, healthd answers the Clusters API's JSON: 404 for an
/// unknown path, 405 (with `Allow`) for a known path asked with another
/// method, the admin endpoints included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_answer_json() {
    use reqwest::Method;
    let test = 45;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let fleet = fleet_toml(&[("a1", "unlimited", vec![mta("mta-a", ip(test, 10))])]);
    let config = write_configs(dir.path(), ip(test, 1), &pki, &fleet, "");
    let healthd = Healthd::start(&config).await;
    let not_found = serde_json::json!({"message": "Not Found"});
    for path in [
        "/nope",
        "/api/v2/clusters",
        "/dashboard/assets/x.css",
        "/v1/fleet/x",
    ] {
        for method in [Method::GET, Method::POST] {
            let (status, body) = healthd.call(method.clone(), path, None).await;
            assert_eq!((status, &body), (404, &not_found), "{method} {path}");
        }
    }
    let not_allowed = serde_json::json!({"message": "Method Not Allowed"});
    for (method, path) in [
        (Method::DELETE, "/api/v1/clusters"),
        (Method::POST, "/api/v1/clusters/a1"),
        (Method::PUT, "/"),
        (Method::GET, "/logout"),
        (Method::POST, "/v1/fleet"),
        (Method::GET, "/v1/mtas/mta-a/drain"),
        (Method::POST, "/metrics"),
        (Method::DELETE, "/status"),
        (Method::PUT, "/ready"),
    ] {
        let response = healthd
            .client
            .request(method.clone(), format!("{}{path}", healthd.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert!(response.headers().contains_key("allow"), "{method} {path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body, not_allowed, "{method} {path}");
    }
    // The routes themselves still answer.
    assert_eq!(healthd.text("/metrics").await.0, 200);
    assert_eq!(healthd.text("/live").await.0, 200);
    healthd.stop().await;
}
