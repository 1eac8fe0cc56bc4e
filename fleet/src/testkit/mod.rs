//! Fixtures for the daemons' tests, the benchmarks and `local-cluster`
//! (feature `testkit`): a local CA, a sink MX, a static DNS server, the
//! example configs relocated per test, helpers for daemon processes, and a
//! strict TLS client.

pub mod bao;
pub mod dns;
pub mod example_configs;
pub mod fleet_toml;
pub mod in_process;
pub mod namespace;
pub mod pki;
pub mod process;
pub mod promtool;
pub mod proxies;
pub mod sink;
pub mod strict_tls;

pub use bao::Bao;
pub use dns::StaticDns;
pub use fleet_toml::FleetToml;
pub use in_process::InProcess;
pub use pki::LocalCa;
pub use sink::{Behaviour, Received, Sink, SinkConfig};

/// Asserts that `text` contains each of `parts`; a failure names every part
/// missing, then the whole text.
#[track_caller]
pub fn assert_contains_all(text: &str, parts: &[&str]) {
    let missing: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|part| !text.contains(part))
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{text}");
}

/// The value of the sample `series` (name and labels, as exported) in a
/// `/metrics` text; fails naming the series when it is missing.
#[track_caller]
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}
