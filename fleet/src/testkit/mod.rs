//! Fixtures for the daemons' tests, the benchmarks and `local-cluster`
//! (feature `testkit`): a local CA, a sink MX, a static DNS server.

pub mod dns;
pub mod pki;
pub mod sink;

pub use dns::StaticDns;
pub use pki::LocalCa;
pub use sink::{Behaviour, Received, Sink, SinkConfig};
