use super::*;

/// Two MTAs sending over a SOCKS5 source `a` and a PROXY v2 source `b`
/// (with `b_extra`, e.g. its rate limit), weighted 2:1 in pool `shared`.
fn fleet_text(b_extra: &str) -> String {
    fleet::testkit::FleetToml::new("192.0.2.53")
        .cluster("a1b2c3d4", &["yourdomain.com"])
        .mta("mta-1", "203.0.113.11")
        .mta("mta-2", "203.0.113.12")
        .raw(&format!(
            r#"
  [[clusters.egress_sources]]
  name = "a"
  source_address = "198.51.100.1"
  socks5 = "127.2.0.1:1080"
  ehlo_name = "a.yourdomain.com"

  [[clusters.egress_sources]]
  name = "b"
  source_address = "198.51.100.2"
  ha_proxy = "127.2.0.2:5000"
  {b_extra}

  [clusters.egress_pool]
  name = "shared"
  entries = [ {{ name = "a", weight = 2 }}, {{ name = "b" }} ]
"#
        ))
        .to_string()
}

fn cluster(rate: &str) -> Cluster {
    let text = fleet_text(rate);
    let fleet = fleet::parse_fleet(&text, "test.toml").unwrap();
    fleet.clusters[0].clone()
}

fn egress(rate: &str) -> Egress {
    let config = EgressConfig {
        source_backoff: Duration::from_millis(300),
        ..EgressConfig::default()
    };
    let egress = Egress::new(&config, SourceMetrics::default()).unwrap();
    egress.update(Some(&cluster(rate))).unwrap();
    egress
}

async fn picks(egress: &Egress, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let via = egress.choose().await.unwrap().unwrap();
        assert_eq!(&*via.pool, "shared");
        *counts.entry(via.source.name.to_string()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn sources_are_picked_by_weight_and_a_failed_one_is_out_for_its_backoff() {
    let egress = egress("");
    let counts = picks(&egress, 30).await;
    assert_eq!(counts["a"], 20);
    assert_eq!(counts["b"], 10);
    let via_a = egress.choose().await.unwrap().unwrap();
    assert_eq!(&*via_a.source.name, "a");
    assert_eq!(via_a.source.hello.as_deref(), Some("a.yourdomain.com"));
    assert!(matches!(via_a.source.route, Route::Socks5 { .. }));
    egress.source_failed(&via_a, "connection refused");
    // A second report while it is out does not lengthen the back-off.
    egress.source_failed(&via_a, "connection refused");
    assert_eq!(picks(&egress, 10).await.get("a"), None);
    // Back after the back-off, and in service once it works.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(picks(&egress, 30).await["a"], 20);
    egress.source_worked(&via_a);
    assert_eq!(via_a.source.health.lock().failures, 0);
}

#[tokio::test]
async fn with_every_source_out_the_queue_holds_until_the_first_is_back() {
    let egress = egress("");
    let a = egress.choose().await.unwrap().unwrap();
    let b = egress.choose().await.unwrap().unwrap();
    assert_ne!(a.source.name, b.source.name);
    egress.source_failed(&a, "down");
    egress.source_failed(&b, "down");
    let hold = egress.choose().await.unwrap_err();
    assert!(hold.wait <= Duration::from_millis(300), "{hold:?}");
    assert!(
        hold.why.contains("every egress source of pool shared"),
        "{}",
        hold.why
    );
    // Failing again right after coming back doubles the back-off.
    tokio::time::sleep(Duration::from_millis(350)).await;
    egress.source_failed(&a, "down");
    assert!(
        a.source.health.lock().down_until.unwrap() > Instant::now() + Duration::from_millis(400)
    );
}

#[tokio::test]
async fn a_source_over_its_limit_leaves_the_traffic_to_the_others() {
    // b: 2 per hour here (4/hr over two MTAs, no Redis).
    let egress = egress("rate_limit = \"4/hr\"");
    let counts = picks(&egress, 30).await;
    assert_eq!(counts["b"], 2);
    assert_eq!(counts["a"], 28);
    let readiness = Readiness::new();
    egress.attach_readiness(readiness.clone());
    let note = readiness.degradation().unwrap();
    assert!(
        note.contains("egress source b holds to this node's share (1/2 of 4/hr)"),
        "{note}"
    );
    // A reload without the limit ends the degradation.
    egress.update(Some(&cluster(""))).unwrap();
    assert_eq!(readiness.degradation(), None);
}

#[tokio::test]
async fn without_sources_connections_are_direct() {
    let egress = egress("");
    egress.update(None).unwrap();
    assert!(egress.choose().await.unwrap().is_none());
    assert!(!egress.has_sources());
}
