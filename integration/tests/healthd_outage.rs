//! A healthd outage: SIGKILL healthd, and lb-dns keeps answering with the
//! last state it knew; healthd comes back with `local-cluster restart`.

mod common;

use std::time::Duration;

use common::Cluster;
use fleet::testkit::process::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthd_outage_lb_dns_keeps_answering() -> anyhow::Result<()> {
    let cluster = Cluster::start(6, &[])?;
    let mut all = cluster.mta_addresses();
    all.sort();
    assert_eq!(cluster.resolve().await?, all);

    cluster.kill9("healthd");
    let healthd: std::net::SocketAddr = cluster
        .info
        .healthd
        .url
        .trim_start_matches("http://")
        .parse()?;
    eventually(Duration::from_secs(5), "healthd gone", || async {
        !common::listening(healthd)
    })
    .await?;
    // Over several seconds (longer than lb-dns's feed long-poll retry), every
    // answer is still the last known state.
    for _ in 0..20 {
        assert_eq!(
            cluster.resolve().await?,
            all,
            "lb-dns changed its answer without healthd"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.ops(&["restart", "healthd"])?;
    eventually(
        Duration::from_secs(20),
        "healthd back with every MTA up",
        || async {
            cluster.health("mta-1").await.as_deref() == Some("up")
                && cluster.health("mta-3").await.as_deref() == Some("up")
        },
    )
    .await?;
    assert_eq!(cluster.resolve().await?, all);
    Ok(())
}
