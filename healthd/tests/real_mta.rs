//! healthd against a real `mta` node in this process: up while it serves,
//! down within 3 s once it stops.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleet::control::Control;
use fleet::feed::MtaState;

const HOST: &str = "c-m1.unmta.net";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mta_is_up_and_down_within_3s_after_it_stops() {
    let test = 15;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let issued = pki.ca.issue(&[HOST]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &issued.key_pem).unwrap();
    let fleet = fleet_toml(&[("m1", "unlimited", vec![mta("mta-1", ip(test, 10))])]);
    let config = write_configs(dir.path(), ip(test, 1), &pki, &fleet, "");
    let mta_config = dir.path().join("mta.toml");
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
            ip(test, 2),
            ip(test, 53)
        ),
    )
    .unwrap();
    let settings = mta::Settings::load(&mta_config).unwrap();
    let listeners = mta::Listeners::bind(&settings).await.unwrap();
    let mta_control = Control::new();
    let node = tokio::spawn(mta::run(settings, listeners, mta_control.clone()));

    let healthd = Healthd::start(&config).await;
    let up = healthd
        .wait_state("mta-1", MtaState::Up, Duration::from_secs(10))
        .await;
    assert_eq!(up.reason, None);
    assert!(up.latency_ms.is_some());

    mta_control.shutdown.cancel();
    let stopped = Instant::now();
    let down = healthd
        .wait_state("mta-1", MtaState::Down, Duration::from_secs(5))
        .await;
    let took = stopped.elapsed();
    assert!(
        took <= Duration::from_secs(3),
        "down after {took:?}: {down:?}"
    );
    let reason = down.reason.unwrap_or_default();
    assert!(
        reason.starts_with("smtp:") || reason.starts_with("https:"),
        "{reason}"
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), node).await;
    healthd.stop().await;
}
