//! The real `mta` binary with a held backlog: SIGKILL loses nothing and the
//! restarted node keeps the pace; a clean stop (SIGTERM) delivers nothing
//! twice.

mod egress_support;

use std::collections::BTreeMap;
use std::time::Duration;

use egress_support::*;
use fleet::testkit::example_configs::ExampleConfigs;
use fleet::testkit::process::DaemonProcess;
use fleet::testkit::sink::{Behaviour, Received, Sink};
use mta::spool::Spool;

const BACKLOG: usize = 30;

fn node_configs(net: u8) -> ExampleConfigs {
    configs(
        net,
        "5/s,max_burst=1",
        None,
        &format!(
            "timeout = \"5s\"\n[delivery.routes]\n\"held.test\" = \"{}:{MX_PORT}\"",
            ip(net, 25)
        ),
    )
}

/// A sink on `net` and a node's configs whose spool holds the backlog.
async fn backlogged(net: u8) -> (Sink, ExampleConfigs) {
    let sink = sink(net, 25, Behaviour::Accept).await;
    let configs = node_configs(net);
    spool_backlog(&configs).await;
    (sink, configs)
}

/// The real binary on `configs`.
fn start(configs: &ExampleConfigs) -> DaemonProcess {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_mta"));
    DaemonProcess::start(binary, &configs.path("mta.toml")).unwrap()
}

/// Fills the node's spool with the backlog before the node starts.
async fn spool_backlog(configs: &ExampleConfigs) {
    let settings = mta::Settings::load(&configs.path("mta.toml")).unwrap();
    let spool = Spool::open(&settings.node.spool_dir).await.unwrap();
    for n in 0..BACKLOG {
        spool
            .accept(message(&["r@held.test"], &format!("held-{n}")))
            .await
            .unwrap();
    }
    tokio::task::spawn_blocking(move || spool.close())
        .await
        .unwrap();
}

/// Arrivals per subject.
fn by_subject(got: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in got {
        *counts
            .entry(m.header("Subject").unwrap_or_default())
            .or_default() += 1;
    }
    counts
}

async fn wait_count(sink: &Sink, n: usize) {
    sink.wait_for(n, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn assert_paced(got: &[Received], what: &str) {
    // 5/s: at least 200 ms apart, a little jitter allowed.
    for pair in got.windows(2) {
        let gap = pair[1].arrived_at - pair[0].arrived_at;
        assert!(
            gap >= Duration::from_millis(180),
            "{what}: a gap of {gap:?}"
        );
    }
}

#[tokio::test]
async fn a_held_backlog_survives_sigkill_and_keeps_its_pace() {
    let (sink, configs) = backlogged(30).await;
    let mut node = start(&configs);
    wait_count(&sink, 8).await;
    node.signal("KILL").unwrap();
    node.wait_exit(LIMIT).await.unwrap();
    let before = sink.messages().len();
    assert!(
        before < BACKLOG,
        "the backlog was not held: {before} arrived"
    );
    assert_paced(&sink.messages(), "before the kill");

    let mut node = start(&configs);
    // Everything arrives; at most the one in flight at the kill twice.
    fleet::testkit::process::eventually(Duration::from_secs(40), "the whole backlog", || {
        let n = by_subject(&sink.messages()).len();
        async move { n == BACKLOG }
    })
    .await
    .unwrap();
    let got = sink.messages();
    assert!(got.len() <= BACKLOG + 1, "{} arrivals", got.len());
    let after = &got[before..];
    assert!(after.len() >= BACKLOG - before);
    assert_paced(after, "after the restart");
    node.terminate(LIMIT).await.unwrap();
}

#[tokio::test]
async fn a_clean_restart_delivers_nothing_twice() {
    let (sink, configs) = backlogged(31).await;
    let mut node = start(&configs);
    wait_count(&sink, 5).await;
    node.terminate(LIMIT).await.unwrap();
    let mut node = start(&configs);
    wait_count(&sink, BACKLOG).await;
    // Nothing more comes: every message exactly once.
    let counts = by_subject(&sink.messages());
    assert_eq!(counts.len(), BACKLOG);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    node.terminate(LIMIT).await.unwrap();
    assert_eq!(sink.messages().len(), BACKLOG);
    // And the spool is empty after the clean stop.
    let settings = mta::Settings::load(&configs.path("mta.toml")).unwrap();
    let spool = Spool::open(&settings.node.spool_dir).await.unwrap();
    assert!(spool.take_arrivals().is_empty());
}
