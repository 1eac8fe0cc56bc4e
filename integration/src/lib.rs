//! Test fixtures shared by the daemons' tests and `local-cluster`: a local
//! CA. (This crate never depends on the daemon crates: it drives them as
//! processes, so their tests may use it.)

pub mod pki;
