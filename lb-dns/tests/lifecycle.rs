//! The binary started from a copy of `configs/` answers /live, reloads on
//! SIGHUP (refusing a broken fleet file) and exits 0 on SIGTERM.

use std::path::Path;

#[tokio::test(flavor = "multi_thread")]
async fn starts_reloads_and_stops_from_the_example_configs() {
    fleet::testkit::process::check_lifecycle(
        Path::new(env!("CARGO_BIN_EXE_lb-dns")),
        "lb-dns.toml",
        [127, 6, 3],
    )
    .await
    .unwrap();
}

#[test]
fn check_accepts_the_example_config() {
    let config = fleet::testkit::example_configs::repo_configs().join("lb-dns.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-dns"))
        .arg("--check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}
