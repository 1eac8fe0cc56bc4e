//! Fixtures for the daemons' tests, the benchmarks and `local-cluster`
//! (feature `testkit`): a local CA, a sink MX, a static DNS server.

pub mod pki;
