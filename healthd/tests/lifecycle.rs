//! The binary started from a copy of `configs/` answers /live, reloads on
//! SIGHUP (refusing a broken fleet file) and exits 0 on SIGTERM.

use std::path::Path;

use fleet::testkit::process::{check_accepts_example_config, check_lifecycle};

const BINARY: &str = env!("CARGO_BIN_EXE_healthd");

#[tokio::test(flavor = "multi_thread")]
async fn starts_reloads_and_stops_from_the_example_configs() {
    check_lifecycle(Path::new(BINARY), "healthd.toml", [127, 6, 2])
        .await
        .unwrap();
}

#[test]
fn check_accepts_the_example_config() {
    check_accepts_example_config(Path::new(BINARY), "healthd.toml").unwrap();
}
