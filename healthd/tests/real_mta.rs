//! healthd against a real `mta` node in this process: up while it serves,
//! down within 3 s once it stops.

mod common;

use std::time::Duration;

use common::*;
use fleet::feed::MtaState;
use fleet::testkit::InProcess;

const HOST: &str = "c-m1.unmta.net";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mta_is_up_and_down_within_3s_after_it_stops() {
    let bed = Bed::new(15);
    let dir = bed.dir.path();
    let issued = bed.pki.ca.issue(&[HOST]).unwrap();
    std::fs::write(dir.join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
    let fleet = fleet_toml(&[("m1", "unlimited", vec![mta("mta-1", bed.ip(10))])]);
    let config = bed.configs(&fleet, "", "");
    let mta_config = dir.join("mta.toml");
    std::fs::write(
        &mta_config,
        format!(
            r#"fleet_file = "fleet.toml"
node = "mta-1"
spool_dir = "spool"
admin_listen = "{}:0"
shutdown_grace = "2s"

[tls]
certificate = "cert.pem"
key = "key.pem"

[delivery]
hold = true
nameservers = ["{}:53"]
dsn = false
"#,
            bed.ip(2),
            bed.ip(53)
        ),
    )
    .unwrap();
    let settings = mta::Settings::load(&mta_config).unwrap();
    let listeners = mta::Listeners::bind(&settings).await.unwrap();
    let node = InProcess::spawn(|control| mta::run(settings, listeners, control));

    let healthd = Healthd::start(&config).await;
    let up = healthd
        .wait_state("mta-1", MtaState::Up, Duration::from_secs(10))
        .await;
    assert_eq!(up.reason, None);
    assert!(up.latency_ms.is_some());

    node.shutdown();
    let (down, took) = healthd
        .wait_down_timed("mta-1", Duration::from_secs(5))
        .await;
    assert!(
        took <= Duration::from_secs(3),
        "down after {took:?}: {down:?}"
    );
    let reason = down.reason.unwrap_or_default();
    assert!(
        reason.starts_with("smtp:") || reason.starts_with("https:"),
        "{reason}"
    );
    node.stop(Duration::from_secs(10)).await;
    healthd.stop().await;
}
