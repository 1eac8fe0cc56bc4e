//! A fleet on several (simulated) hosts: Linux network namespaces joined by
//! a bridge, documentation prefixes only, the real ports. Used by the
//! multi-host tests and `local-cluster --hosts`.

pub mod configs;
pub mod fleet;
pub mod impair;
pub mod inside;
pub mod netns;
pub mod run;
pub mod topology;

pub use fleet::HostsFleet;
