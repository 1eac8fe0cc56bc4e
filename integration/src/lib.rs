//! `local-cluster`: the whole unMTA fleet on one machine, one OS process per
//! daemon, and what the end-to-end tests use to drive it.

pub mod cli;
pub mod hosts;
pub mod info;
pub mod ops;
pub mod plan;
pub mod ready;
pub mod report;
pub mod run;
pub mod services;
pub mod state;
pub mod supervisor;
pub mod vault;

pub use info::ClusterInfo;
