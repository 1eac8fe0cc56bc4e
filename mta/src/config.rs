//! The MTA node's own config file (`configs/mta.toml`) and the fleet it names.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use fleet::config::{load_toml, resolve};
use fleet::load::Problem;
use fleet::telemetry::LogFormat;
use fleet::{load_fleet, ConfigError, Fleet};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The fleet file, relative to this file.
    pub fleet_file: PathBuf,
    /// Which `[[clusters.mtas]]` entry of the fleet file this node is.
    pub node: String,
    /// Address to bind SMTP and HTTPS on instead of the node's fleet address
    /// (for a node behind NAT, `0.0.0.0`).
    pub bind_address: Option<IpAddr>,
    /// The durable spool.
    pub spool_dir: PathBuf,
    /// The admin HTTP listener: /live, /ready, /metrics, /status.
    pub admin_listen: SocketAddr,
    pub tls: TlsConfig,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_grace", with = "fleet::config::duration")]
    pub shutdown_grace: std::time::Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain for the cluster hostname.
    pub certificate: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

fn default_grace() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// Everything the MTA reads from disk, reloaded together on SIGHUP.
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
        node.spool_dir = resolve(config_file, &node.spool_dir);
        node.tls.certificate = resolve(config_file, &node.tls.certificate);
        node.tls.key = resolve(config_file, &node.tls.key);
        let fleet = load_fleet(&node.fleet_file)?;
        if fleet.mta(&node.node).is_none() {
            return Err(ConfigError {
                file: config_file.display().to_string(),
                problems: vec![Problem {
                    line: None,
                    key: "node".into(),
                    message: format!(
                        "no MTA named `{}` in {}",
                        node.node,
                        node.fleet_file.display()
                    ),
                }],
            });
        }
        Ok(Settings {
            config_file: config_file.to_path_buf(),
            node,
            fleet,
        })
    }
}
