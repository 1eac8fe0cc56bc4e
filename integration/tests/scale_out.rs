//! `--add-mta`: a fourth MTA joins the fleet file, the daemons reload, and
//! it is answered only after it passed its probes; the client changes
//! nothing.

mod common;

use std::time::Duration;

use common::Cluster;
use fleet::testkit::process::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_add_mta_is_answered_after_its_probes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, &[])?;
    assert_eq!(cluster.resolve().await?.len(), 3);

    let said = cluster.ops(&["--add-mta"])?;
    assert!(said.contains("mta-4"), "{said}");
    let new = "127.5.3.14".parse()?;
    // Not served before healthd has seen it pass `rise` probes.
    let first = cluster.resolve_set().await;
    assert!(
        !first.contains(&new),
        "answered before its probes: {first:?}"
    );
    eventually(Duration::from_secs(30), "mta-4 in the answers", || async {
        let answers = cluster.resolve_set().await;
        if answers.contains(&new) {
            // Whenever it is answered, healthd has it up.
            assert_eq!(cluster.health("mta-4").await.as_deref(), Some("up"));
        }
        answers.len() == 4
    })
    .await?;

    cluster.refresh()?;
    assert_eq!(cluster.info.process("mta-4").map(|p| p.address), Some(new));
    let tags = vec!["scale-out smtp".to_string(), "scale-out http".to_string()];
    cluster.send_smtp(new, &tags[0]).await?;
    cluster.inject(new, &tags[1]).await?;
    cluster
        .wait_delivered(&tags, Duration::from_secs(60))
        .await?;
    Ok(())
}
