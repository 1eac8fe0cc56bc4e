//! lb-dns's own config file (`configs/lb-dns.toml`) and the fleet it names.

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
    /// Addresses to answer DNS on, over both UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// The admin HTTP listener: /live, /ready, /metrics, /status.
    pub admin_listen: SocketAddr,
    /// Base URLs of the healthd instances whose feeds this node follows:
    /// `http://host:port`, or `https://host:port` verified against
    /// `healthd_ca_file` (the certificate must name `host`).
    #[serde(default)]
    pub healthd: Vec<String>,
    /// This node's bearer token for the feeds (healthd keeps its sha256
    /// under `[[followers]]`).
    pub healthd_token: Option<String>,
    /// The CA that healthd certificates are verified against (the fleet
    /// CA); required for `https://` feeds, and then only it is trusted.
    pub healthd_ca_file: Option<PathBuf>,
    /// Where the last known health state is kept across restarts.
    pub state_file: Option<PathBuf>,
    /// UDP sockets per listen address (SO_REUSEPORT), each with its own
    /// receive loop; default: one per CPU, at most 4.
    pub udp_sockets: Option<usize>,
    /// How datagrams are shared among an address's UDP sockets: `"cpu"`
    /// (default: the socket of the CPU a datagram arrives on, each
    /// socket's thread kept on those CPUs, spreading by flow hash while
    /// queries queue up) or `"spread"` (flow hash only).
    #[serde(default)]
    pub udp_steering: crate::steer::UdpSteering,
    /// Idle time after which a DNS-over-TCP connection is closed.
    #[serde(default = "default_tcp_idle", with = "fleet::config::duration")]
    pub tcp_idle_timeout: std::time::Duration,
    /// DNS-over-TCP connections open at once (UDP has none); when full, the
    /// connection idle the longest is closed for the new one. Named as in
    /// healthd and the MTA's `[smtp]`; `tcp_max_connections`, its name
    /// before, is still read.
    #[serde(default = "default_max_connections", alias = "tcp_max_connections")]
    pub max_connections: usize,
    /// The DNS cookie secret (RFC 9018), 32 hex digits; give every node of
    /// an anycast set the same one. Default: random per process.
    pub cookie_secret: Option<crate::cookie::CookieSecret>,
    /// Response Rate Limiting over UDP (`[rrl]`).
    #[serde(default)]
    pub rrl: crate::rrl::RrlSettings,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_grace", with = "fleet::config::duration")]
    pub shutdown_grace: std::time::Duration,
    /// Where `vault:` references are read (`healthd_token` may be one).
    pub vault: Option<fleet::vault::VaultConfig>,
}

fn default_tcp_idle() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_max_connections() -> usize {
    1000
}

fn default_grace() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

/// Everything lb-dns reads from disk, reloaded together on SIGHUP.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_file: PathBuf,
    pub node: NodeConfig,
    pub fleet: Fleet,
    /// What was read from Vault; kept across reloads.
    pub secrets: std::sync::Arc<fleet::secret::SecretStore>,
}

impl Settings {
    /// Loads with a fresh secret store (`--check`, the first start).
    pub fn load(config_file: &Path) -> Result<Settings, ConfigError> {
        Self::load_with(config_file, fleet::secret::SecretStore::new())
    }

    /// Loads, reading every Vault reference afresh through `secrets`.
    pub fn load_with(
        config_file: &Path,
        secrets: std::sync::Arc<fleet::secret::SecretStore>,
    ) -> Result<Settings, ConfigError> {
        let mut node: NodeConfig = load_toml(config_file)?;
        node.fleet_file = resolve(config_file, &node.fleet_file);
        node.state_file = node.state_file.map(|p| resolve(config_file, &p));
        node.healthd_ca_file = node.healthd_ca_file.map(|p| resolve(config_file, &p));
        let file = config_file.display().to_string();
        if let Some(vault) = &mut node.vault {
            vault.resolve_paths(config_file);
        }
        secrets
            .configure(node.vault.as_ref())
            .map_err(|message| ConfigError::single(&file, format!("vault: {message}")))?;
        if let Some(token) = &mut node.healthd_token {
            fleet::secret::resolve_text(token, &secrets).map_err(|message| {
                ConfigError::single(&file, format!("healthd_token: {message}"))
            })?;
        }
        crate::feed_client::FeedLink::from_node(&node)
            .map_err(|message| ConfigError::single(&file, message))?;
        let fleet = load_fleet(&node.fleet_file)?;
        Ok(Settings {
            config_file: config_file.to_path_buf(),
            node,
            fleet,
            secrets,
        })
    }
}

/// Everything else applies on reload: the fleet, the feeds followed and
/// where the state is saved.
impl fleet::Reloadable for Settings {
    const METRICS_PREFIX: &'static str = "lb_dns";

    fn startup_only(&self) -> fleet::StartupOnly {
        fleet::StartupOnly::new()
            .key("listen", &self.node.listen)
            .key("admin_listen", self.node.admin_listen)
            .key("udp_sockets", self.node.udp_sockets)
            .key("udp_steering", self.node.udp_steering)
            .key("tcp_idle_timeout", self.node.tcp_idle_timeout)
            .key("max_connections", self.node.max_connections)
            .key("cookie_secret", self.node.cookie_secret)
            .key("rrl", self.node.rrl)
            .key("log_format", self.node.log_format)
    }
}

#[cfg(test)]
mod tests {
    use super::NodeConfig;

    const BASE: &str = "fleet_file = \"fleet.toml\"\nlisten = [\"127.4.0.1:53\"]\n\
                        admin_listen = \"127.4.0.1:9300\"\n";

    fn parse(extra: &str) -> Result<NodeConfig, toml::de::Error> {
        toml::from_str(&format!("{BASE}{extra}"))
    }

    #[test]
    fn max_connections_is_read_under_its_old_name_too() {
        assert_eq!(parse("").unwrap().max_connections, 1000);
        assert_eq!(parse("max_connections = 7\n").unwrap().max_connections, 7);
        assert_eq!(
            parse("tcp_max_connections = 9\n").unwrap().max_connections,
            9
        );
        let both = parse("max_connections = 7\ntcp_max_connections = 9\n").unwrap_err();
        assert!(
            both.to_string().contains("duplicate field"),
            "both names at once must be refused: {both}"
        );
    }
}
