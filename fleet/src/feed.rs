//! The health feed healthd serves at `GET /v1/fleet` and lb-dns follows.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The whole health state. `generation` moves only when something a
/// consumer needs changes; `instance` changes when healthd restarts, so a
/// consumer knows a lower generation is not stale.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FleetHealth {
    pub instance: String,
    pub generation: u64,
    pub clusters: Vec<ClusterHealth>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterHealth {
    pub id: String,
    pub hostname: String,
    pub mtas: Vec<MtaHealth>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MtaHealth {
    pub name: String,
    pub ipv4: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub weight: u32,
    pub state: MtaState,
    /// RFC 3339 time the MTA entered `state`.
    pub since: String,
    /// Latency of the last passing probe round, in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// The last failure, in words (`smtp: no 220 banner within 2s`).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MtaState {
    Unknown,
    Up,
    Down,
    Drain,
}

impl MtaState {
    pub fn as_str(&self) -> &'static str {
        match self {
            MtaState::Unknown => "unknown",
            MtaState::Up => "up",
            MtaState::Down => "down",
            MtaState::Drain => "drain",
        }
    }
}

/// RFC 3339 text for a time, as the feed writes `since`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
