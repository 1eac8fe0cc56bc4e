//! The Clusters API healthd serves (`GET /api/v1/clusters`,
//! `GET /api/v1/clusters/{id}`, the admin drain calls): one set of types,
//! written by healthd and read by its dashboard, `local-cluster` and the
//! tests, as [`crate::feed`] is for the health feed.

use serde::{Deserialize, Serialize};

use crate::feed::MtaState;

/// Every successful answer: `{"data": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Data<T> {
    pub data: T,
}

/// Every error answer: `{"message": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub message: String,
}

/// One cluster: how clients reach it and its MTAs' health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: String,
    pub hostname: String,
    pub connection: Connection,
    /// `500/hr per MTA` or `unlimited`.
    pub rate_limit: String,
    pub mtas: Vec<MtaView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub http_endpoint: String,
    pub smtp_host: String,
    /// In the fleet's port order: the first is the recommended one.
    pub smtp_ports: Vec<SmtpPort>,
    pub https_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpPort {
    pub port: u16,
    pub use_case: String,
    pub starttls_required: bool,
}

/// One MTA's health as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MtaView {
    pub name: String,
    pub state: MtaState,
    /// RFC 3339 time the MTA entered `state`; `None` before any probe.
    pub since: Option<String>,
    /// Latency of the last passing probe round, in milliseconds.
    pub latency_ms: Option<f64>,
    /// The last failure, in words.
    pub reason: Option<String>,
    /// What the MTA's passing `/ready` says is degraded (also in
    /// `reason`), if anything.
    #[serde(default)]
    pub degraded: Option<String>,
}

/// An MTA after an admin drain or undrain (`POST`/`DELETE
/// /v1/mtas/{name}/drain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainView {
    pub name: String,
    /// What lb-dns is told.
    pub state: MtaState,
    pub drained: bool,
    pub drained_by_admin: bool,
    pub drained_by_fleet: bool,
    /// What the probes find, drain aside.
    pub probes: MtaState,
    pub reason: Option<String>,
}
