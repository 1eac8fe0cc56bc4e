//! Drain: `drain = true` in the fleet file (and the healthd admin call)
//! takes an MTA out of the answers without stopping it; mail queued on it
//! still delivers.

mod common;

use std::time::Duration;

use common::Cluster;
use fleet::testkit::process::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_removes_from_answers_and_queued_mail_still_delivers() -> anyhow::Result<()> {
    // Paced delivery keeps mail queued on mta-1 while it is drained.
    let cluster = Cluster::start(4, &["--rate-limit", "60/min,max_burst=1"])?;
    let [first, second, third] = cluster.mta_addresses()[..] else {
        anyhow::bail!("three MTAs expected");
    };
    let mut tags = Vec::new();
    for n in 0..6 {
        let tag = format!("drain queued {n}");
        cluster.send_smtp(first, &tag).await?;
        tags.push(tag);
    }

    let fleet_file = &cluster.info.fleet_file;
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(fleet_file)?.parse()?;
    doc["clusters"][0]["mtas"][0]["drain"] = toml_edit::value(true);
    std::fs::write(fleet_file, doc.to_string())?;
    cluster.ops(&["reload"])?;
    let delivered_at_drain = tags
        .iter()
        .filter(|t| cluster.sink_message(t).is_some())
        .count();
    eventually(
        Duration::from_secs(15),
        "mta-1 out of the answers",
        || async { cluster.resolve_set().await == [second, third].into_iter().collect() },
    )
    .await?;
    assert_eq!(cluster.health("mta-1").await.as_deref(), Some("drain"));
    assert!(
        common::send_signal(cluster.pid("mta-1"), 0),
        "the drained MTA is not running"
    );
    assert!(
        delivered_at_drain < tags.len(),
        "nothing was queued when the drain began"
    );
    // Still running, it delivers what it had queued.
    cluster
        .wait_delivered(&tags, Duration::from_secs(60))
        .await?;

    // The admin call drains too, and undrains.
    let client = reqwest::Client::new();
    let url = format!("{}/v1/mtas/mta-2/drain", cluster.info.healthd.url);
    for (method, what, answered) in [
        (
            reqwest::Method::POST,
            "mta-2 drained by the admin call",
            vec![third],
        ),
        (
            reqwest::Method::DELETE,
            "mta-2 back after the undrain",
            vec![second, third],
        ),
    ] {
        let response = (client.request(method, &url))
            .bearer_auth(&cluster.info.healthd.admin_token)
            .send()
            .await?;
        assert!(response.status().is_success(), "{}", response.status());
        let answered: std::collections::BTreeSet<_> = answered.into_iter().collect();
        eventually(Duration::from_secs(15), what, || async {
            cluster.resolve_set().await == answered
        })
        .await?;
    }
    Ok(())
}
