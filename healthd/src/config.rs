//! healthd's own config file (`configs/healthd.toml`) and the fleet it names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleet::config::{load_toml, resolve};
use fleet::telemetry::LogFormat;
use fleet::{load_fleet, ConfigError, Fleet};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The fleet file, relative to this file.
    pub fleet_file: PathBuf,
    /// The HTTP listener: the feed, the Clusters API, the dashboard and the
    /// admin endpoints (/live, /ready, /metrics, /status).
    pub listen: SocketAddr,
    /// The CA that MTA certificates are verified against.
    pub ca_file: PathBuf,
    /// sha256 (hex) of the admin token for drain calls and all-cluster reads.
    pub admin_token_sha256: Option<String>,
    /// Where drains made through the admin API are kept across restarts.
    pub state_file: PathBuf,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_grace", with = "fleet::config::duration")]
    pub shutdown_grace: std::time::Duration,
}

fn default_grace() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

/// Everything healthd reads from disk, reloaded together on SIGHUP.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_file: PathBuf,
    pub node: NodeConfig,
    pub fleet: Fleet,
}

impl Settings {
    pub fn load(config_file: &Path) -> Result<Settings, ConfigError> {
        let mut node: NodeConfig = load_toml(config_file)?;
        node.fleet_file = resolve(config_file, &node.fleet_file);
        node.ca_file = resolve(config_file, &node.ca_file);
        node.state_file = resolve(config_file, &node.state_file);
        let fleet = load_fleet(&node.fleet_file)?;
        Ok(Settings {
            config_file: config_file.to_path_buf(),
            node,
            fleet,
        })
    }
}
