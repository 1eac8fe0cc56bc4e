//! `local-cluster --state-dir` with an existing state: the same cluster
//! comes back and the mail queued when it stopped is delivered.

mod common;

use std::time::Duration;

use common::Cluster;
use lettre::AsyncTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_same_state_dir_delivers_the_queue() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(8, &["--mtas", "1", "--rate-limit", "60/min,max_burst=1"])?;
    let smtp = cluster.smtp(cluster.mta_addresses()[0]);
    let tags: Vec<String> = (0..8)
        .map(|n| format!("queued across restart {n}"))
        .collect();
    for tag in &tags {
        smtp.send(cluster.message(tag)).await?;
    }
    assert!(
        cluster.stop()?,
        "local-cluster did not stop cleanly:\n{}",
        cluster.output()
    );
    let delivered = tags
        .iter()
        .filter(|t| cluster.sink_message(t).is_some())
        .count();
    assert!(
        delivered < tags.len(),
        "nothing was left queued at the stop"
    );

    let dir = cluster.take_dir();
    let again = Cluster::start_in(dir, 8, &[])?;
    assert_eq!(again.info.cluster.rate_limit, "60/min,max_burst=1");
    again.wait_delivered(&tags, Duration::from_secs(60)).await?;
    Ok(())
}
