//! The cluster at `60/min,max_burst=1`: 30 messages are accepted at once,
//! none rejected, and they reach the sink paced by the limit. A new limit in
//! the fleet file takes effect on reload.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use lettre::AsyncTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_accepts_at_once_and_paces_delivery() -> anyhow::Result<()> {
    let cluster = Cluster::start(5, &["--mtas", "1", "--rate-limit", "60/min,max_burst=1"])?;
    assert_eq!(cluster.info.cluster.rate_limit, "60/min,max_burst=1");
    let address = cluster.mta_addresses()[0];
    let smtp = cluster.smtp(address);
    let accepting = Instant::now();
    let mut tags = Vec::new();
    for n in 0..30 {
        let tag = format!("paced {n:02}");
        smtp.send(cluster.message(&tag)).await?;
        tags.push(tag);
    }
    let accepted_in = accepting.elapsed();
    assert!(
        accepted_in < Duration::from_secs(20),
        "accepting 30 took {accepted_in:?}"
    );

    cluster
        .wait_delivered(&tags, Duration::from_secs(90))
        .await?;
    // The sink names each file after its arrival time in milliseconds.
    let mut arrivals: Vec<u128> = std::fs::read_dir(&cluster.info.sink.maildir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.contains("Subject: paced ").then_some(())?;
            name.split('-').next()?.parse().ok()
        })
        .collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 30);
    let span = arrivals[29] - arrivals[0];
    // 30 at one a second: about 29 s from first to last.
    assert!(
        span >= 24_000,
        "30 messages arrived within {span} ms: not paced"
    );
    for window in arrivals.windows(6) {
        assert!(
            window[5] - window[0] >= 3_500,
            "6 messages within {} ms: faster than 1/s",
            window[5] - window[0]
        );
    }

    // `unlimited` in the fleet file and a reload: no more pacing.
    let fleet_file = &cluster.info.fleet_file;
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(fleet_file)?.parse()?;
    doc["clusters"][0]["rate_limit"] = toml_edit::value("unlimited");
    std::fs::write(fleet_file, doc.to_string())?;
    cluster.ops(&["reload"])?;
    let status = format!(
        "{}/status",
        cluster
            .info
            .process("mta-1")
            .unwrap()
            .admin_url
            .clone()
            .unwrap()
    );
    fleet::testkit::process::eventually(Duration::from_secs(10), "mta-1 reloaded", || async {
        let Ok(response) = reqwest::get(&status).await else {
            return false;
        };
        let status: serde_json::Value = response.json().await.unwrap_or_default();
        status["config"]["version"].as_u64().unwrap_or(0) >= 1
    })
    .await?;
    let tags: Vec<String> = (0..10).map(|n| format!("unpaced {n}")).collect();
    let sending = Instant::now();
    for tag in &tags {
        smtp.send(cluster.message(tag)).await?;
    }
    cluster
        .wait_delivered(&tags, Duration::from_secs(5))
        .await?;
    println!(
        "10 unpaced messages delivered {:?} after the first was sent",
        sending.elapsed()
    );
    Ok(())
}
