//! SIGKILL an MTA while a client sends continuously, resolving before each
//! connection: the dead MTA leaves the answers within 3 s + TTL, and every
//! message the client saw acknowledged arrives once it is restarted. A rate
//! limit keeps mail queued on the victim, so its spool has to deliver it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use fleet::testkit::process::eventually;

/// The fleet file's TTL for cluster answers (local-cluster writes 5).
const TTL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_kill9_leaves_answers_and_loses_no_acknowledged_mail() -> anyhow::Result<()> {
    let cluster = Arc::new(Cluster::start(2, &["--rate-limit", "2/s,max_burst=1"])?);
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    let sender = {
        let (cluster, acknowledged, stop) = (cluster.clone(), acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let answers = cluster.resolve().await.unwrap_or_default();
                let Some(address) = answers.get(n % answers.len().max(1)).copied() else {
                    continue;
                };
                let tag = format!("failover {n} via {address}");
                if cluster.send_smtp(address, &tag).await.is_ok() {
                    acknowledged.lock().unwrap().push(tag);
                }
            }
        })
    };
    let count = || acknowledged.lock().unwrap().len();
    eventually(
        Duration::from_secs(30),
        "10 messages acknowledged",
        || async { count() >= 10 },
    )
    .await?;

    let victim = "mta-2";
    let address = cluster.info.process(victim).unwrap().address;
    let via = format!(" via {address}");
    let queued_on_victim = || {
        acknowledged
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.ends_with(&via) && cluster.sink_message(t).is_none())
            .count()
    };
    eventually(Duration::from_secs(30), "mail queued on mta-2", || async {
        queued_on_victim() >= 2
    })
    .await?;
    cluster.kill9(victim);
    let killed = Instant::now();
    let in_spool = queued_on_victim();
    println!("{in_spool} acknowledged messages in mta-2's spool at SIGKILL");
    assert!(in_spool > 0);
    eventually(
        TTL + Duration::from_secs(3),
        "the dead MTA gone from the answers",
        || async {
            let answers = cluster.resolve_set().await;
            !answers.is_empty() && !answers.contains(&address)
        },
    )
    .await?;
    println!(
        "mta-2 left the answers {:?} after SIGKILL",
        killed.elapsed()
    );
    // The client keeps going on the others.
    let before = count();
    eventually(
        Duration::from_secs(30),
        "10 more acknowledged after the kill",
        || async { count() >= before + 10 },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    sender.await?;

    cluster.ops(&["restart", victim])?;
    eventually(
        Duration::from_secs(30),
        "the restarted MTA back in the answers",
        || async { cluster.resolve_set().await.contains(&address) },
    )
    .await?;
    let tags = acknowledged.lock().unwrap().clone();
    println!("{} messages acknowledged", tags.len());
    cluster
        .wait_delivered(&tags, Duration::from_secs(90))
        .await?;
    Ok(())
}
