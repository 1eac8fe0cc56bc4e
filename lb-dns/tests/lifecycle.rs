//! The binary started from a copy of `configs/` answers /live, reloads on
//! SIGHUP (refusing a broken fleet file) and exits 0 on SIGTERM; its
//! `/metrics` passes `promtool check metrics`.

fleet::daemon_binary_tests! {
    binary: env!("CARGO_BIN_EXE_lb-dns"), config: "lb-dns.toml", prefix: "lb_dns",
    base: [127, 6, 3], metrics_base: [127, 6, 13],
}
