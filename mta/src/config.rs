//! The MTA node's own config file (`configs/mta.toml`) and the fleet it names.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet::config::{load_toml, resolve};
use fleet::load::Problem;
use fleet::secret::SecretStore;
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
    pub shutdown_grace: Duration,
    /// Limits of the SMTP and HTTP ingress.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// Limits of HTTP injection (`[inject]`).
    #[serde(default)]
    pub inject: crate::inject::InjectConfig,
    /// How this node delivers: DNS, retries, smart-host routes, DKIM keys.
    #[serde(default)]
    pub delivery: crate::delivery::DeliveryConfig,
    /// What SIGTERM does: leave DNS, then close (see `planned_stop`).
    #[serde(default)]
    pub planned_stop: crate::planned_stop::PlannedStopConfig,
    /// Where `vault:` references (DKIM keys, credential hashes) are read.
    pub vault: Option<fleet::vault::VaultConfig>,
    /// The event log and the webhooks' sending.
    #[serde(default)]
    pub events: crate::events::EventsConfig,
    /// Mail to the cluster's bounce domain on port 25: DSNs and ARF reports.
    #[serde(default)]
    pub bounces: crate::bounces::BouncesConfig,
    /// sha256 (hex) of the token the admin API (`/api/admin/…`) requires
    /// as `Authorization: Bearer` (or a Vault reference); absent: the admin
    /// API is off.
    pub admin_token_sha256: Option<String>,
}

/// `[smtp]`: limits of SMTP submission (most apply to HTTP injection too).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Longest line accepted, CRLF included, in commands and in DATA
    /// (RFC 5321 4.5.3.1.6: 1000).
    pub max_line_length: usize,
    /// Largest message, announced in EHLO SIZE (10 MB).
    pub max_message_size: usize,
    /// SMTP DATA held in memory per connection (128 KiB): a larger message
    /// streams to the spool as it arrives, judged by its header section,
    /// which must end within this many octets (else `552 5.3.4`).
    pub max_header_size: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// How long the server waits for a command (RFC 5321 4.5.3.2.7: 5 min).
    #[serde(with = "fleet::config::duration")]
    pub command_timeout: Duration,
    /// How long the server waits for each chunk of DATA (3 min).
    #[serde(with = "fleet::config::duration")]
    pub data_timeout: Duration,
    /// Open SMTP and HTTPS connections in all; past it, `421 4.7.0`.
    pub max_connections: usize,
    /// Open connections from one client address; past it, `421 4.7.0`.
    pub max_connections_per_ip: usize,
    /// Failed AUTH attempts on one connection before it is closed.
    pub max_auth_failures: u32,
    /// Wait before answering a failed AUTH (and a failed HTTP Basic auth).
    #[serde(with = "fleet::config::duration")]
    pub auth_failure_delay: Duration,
    /// Unknown or out-of-order commands on one connection before it is closed.
    pub max_command_errors: u32,
    /// The longest an SMTP session may last, however busy (`421 4.4.2`).
    #[serde(with = "fleet::config::duration")]
    pub session_timeout: Duration,
    /// The longest an SMTP session may go without a successful AUTH.
    #[serde(with = "fleet::config::duration")]
    pub pre_auth_timeout: Duration,
    /// The TLS handshake after STARTTLS (and on the HTTPS listener).
    #[serde(with = "fleet::config::duration")]
    pub tls_handshake_timeout: Duration,
    /// IPv6 clients are counted per prefix of this length (a /64 is one
    /// host) by `max_connections_per_ip` and the AUTH limits.
    pub ipv6_client_prefix: u8,
    /// Failed authentications per client address, and per username, across
    /// connections within `auth_failure_window`; past it `454 4.7.0` / HTTP
    /// 429 until the window ends.
    pub auth_failure_limit: u32,
    #[serde(with = "fleet::config::duration")]
    pub auth_failure_window: Duration,
}

impl SmtpConfig {
    pub fn anvil_limits(&self) -> crate::anvil::Limits {
        crate::anvil::Limits {
            failures: self.auth_failure_limit,
            window: self.auth_failure_window,
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            max_line_length: 1000,
            max_message_size: 10 * 1024 * 1024,
            max_header_size: 128 * 1024,
            max_recipients: 100,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_connections: 2000,
            max_connections_per_ip: 100,
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
            max_command_errors: 20,
            session_timeout: Duration::from_secs(1800),
            pre_auth_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            ipv6_client_prefix: 64,
            auth_failure_limit: 10,
            auth_failure_window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain for the cluster hostname.
    pub certificate: PathBuf,
    /// PEM private key: a file, or a Vault reference
    /// (`vault:secret/data/unmta/tls/cluster#private_key`).
    pub key: fleet::secret::SecretFile,
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// Everything the MTA reads from disk, reloaded together on SIGHUP.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_file: PathBuf,
    pub node: NodeConfig,
    pub fleet: Fleet,
    /// The TLS server configurations built from `node.tls`, so a bad
    /// certificate fails `--check` and a reload like any other error.
    pub tls: crate::tls::TlsConfigs,
    /// This node's cluster and its hostname (`c-<id>.<origin>`), derived at
    /// load so the per-message paths do not search the fleet.
    pub cluster_id: String,
    pub hostname: String,
    /// The DKIM signers built from `node.delivery.dkim` (files or Vault).
    pub dkim: Arc<crate::dkim::Dkim>,
    /// What was read from Vault; kept across reloads.
    pub secrets: Arc<SecretStore>,
}

impl std::fmt::Debug for crate::dkim::Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dkim(<signers>)")
    }
}

/// The node config with its paths resolved against `config_file`, its
/// Vault references read through `secrets` and its sections checked.
fn read_node(config_file: &Path, secrets: &Arc<SecretStore>) -> Result<NodeConfig, ConfigError> {
    let mut node: NodeConfig = load_toml(config_file)?;
    if let Some(vault) = &mut node.vault {
        vault.resolve_paths(config_file);
    }
    secrets
        .configure(node.vault.as_ref())
        .map_err(|m| problem(config_file, "vault", m))?;
    node.fleet_file = resolve(config_file, &node.fleet_file);
    node.spool_dir = resolve(config_file, &node.spool_dir);
    node.tls.certificate = resolve(config_file, &node.tls.certificate);
    node.tls.key.resolve_path(config_file);
    if let Some(admin) = &mut node.admin_token_sha256 {
        fleet::secret::resolve_text(admin, secrets)
            .and_then(|()| {
                fleet::secret::is_sha256_hex(admin)
                    .then_some(())
                    .ok_or_else(|| "must be 64 hex digits (a sha256)".to_string())
            })
            .map_err(|m| problem(config_file, "admin_token_sha256", m))?;
    }
    node.delivery
        .prepare(config_file)
        .map_err(|(key, message)| problem(config_file, &key, message))?;
    node.events
        .prepare(config_file)
        .map_err(|(key, message)| problem(config_file, &key, message))?;
    crate::events::classify::Classifier::load(node.events.bounce_rules.as_deref())
        .map_err(|message| ConfigError::single(&config_file.display().to_string(), &message))?;
    Ok(node)
}

/// This node's cluster: its id and hostname; an error naming `node` when
/// the fleet has no MTA of that name.
fn this_cluster(
    config_file: &Path,
    node: &NodeConfig,
    fleet: &Fleet,
) -> Result<(String, String), ConfigError> {
    let Some((cluster, _)) = fleet.mta(&node.node) else {
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
    };
    Ok((cluster.id.clone(), fleet.hostname(cluster)))
}

/// The planned stop's lb-dns servers and the SMTP limits the protocol needs.
fn check_against_fleet(
    config_file: &Path,
    node: &NodeConfig,
    fleet: &Fleet,
) -> Result<(), ConfigError> {
    node.planned_stop
        .servers(fleet)
        .map_err(|message| ConfigError::single(&config_file.display().to_string(), message))?;
    if node.smtp.max_line_length < 80 {
        return Err(ConfigError::single(
            &config_file.display().to_string(),
            "smtp.max_line_length must be at least 80",
        ));
    }
    if !(1024..=16 << 20).contains(&node.smtp.max_header_size) {
        return Err(ConfigError::single(
            &config_file.display().to_string(),
            "smtp.max_header_size must be between 1024 and 16777216 octets",
        ));
    }
    Ok(())
}

fn problem(file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.display().to_string(),
        problems: vec![Problem {
            line: None,
            key: key.to_string(),
            message: message.into(),
        }],
    }
}

impl Settings {
    /// Loads with a fresh secret store (`--check`, the first start).
    pub fn load(config_file: &Path) -> Result<Settings, ConfigError> {
        Self::load_with(config_file, SecretStore::new())
    }

    /// Loads, reading every Vault reference afresh through `secrets`.
    pub fn load_with(
        config_file: &Path,
        secrets: Arc<SecretStore>,
    ) -> Result<Settings, ConfigError> {
        let node = read_node(config_file, &secrets)?;
        // Keys that cannot be read or parsed fail `--check` and a reload.
        let dkim = crate::dkim::Dkim::load_with(&node.delivery.dkim, &secrets)
            .map_err(|m| problem(config_file, "delivery.dkim", m))?;
        let mut fleet = load_fleet(&node.fleet_file)?;
        resolve_credentials(&mut fleet, &node, &secrets)?;
        let (cluster_id, hostname) = this_cluster(config_file, &node, &fleet)?;
        let tls =
            crate::tls::TlsConfigs::load(&node.tls, &secrets).map_err(|message| ConfigError {
                file: config_file.display().to_string(),
                problems: vec![Problem {
                    line: None,
                    key: "tls".into(),
                    message,
                }],
            })?;
        check_against_fleet(config_file, &node, &fleet)?;
        Ok(Settings {
            config_file: config_file.to_path_buf(),
            node,
            fleet,
            tls,
            cluster_id,
            hostname,
            dkim: Arc::new(dkim),
            secrets,
        })
    }

    /// This node's cluster in the fleet.
    pub fn cluster(&self) -> Option<&fleet::Cluster> {
        self.fleet.cluster(&self.cluster_id)
    }

    /// The domain of the cluster's VERP return paths.
    pub fn bounce_domain(&self) -> String {
        self.cluster()
            .map(|c| c.bounce_domain_or(&self.hostname).to_ascii_lowercase())
            .unwrap_or_else(|| self.hostname.clone())
    }
}

/// Reads the password hashes and webhook signing secrets of this node's
/// cluster written as Vault references (only its own: an MTA's Vault
/// policy need not reach others).
fn resolve_credentials(
    fleet: &mut Fleet,
    node: &NodeConfig,
    secrets: &SecretStore,
) -> Result<(), ConfigError> {
    let Some(index) = fleet
        .clusters
        .iter()
        .position(|c| c.mtas.iter().any(|m| m.name == node.node))
    else {
        return Ok(());
    };
    let mut problems = Vec::new();
    for (number, credential) in fleet.clusters[index].credentials.iter_mut().enumerate() {
        if let Err(message) = credential.password.resolve(secrets) {
            problems.push(Problem {
                line: None,
                key: format!("clusters[{index}].credentials[{number}].password"),
                message,
            });
        }
    }
    for (number, hook) in fleet.clusters[index].webhooks.iter_mut().enumerate() {
        let result = fleet::secret::resolve_text(&mut hook.secret, secrets).and_then(|()| {
            (hook.secret.len() >= 16)
                .then_some(())
                .ok_or_else(|| "the signing secret read must be at least 16 characters".into())
        });
        if let Err(message) = result {
            problems.push(Problem {
                line: None,
                key: format!("clusters[{index}].webhooks[{number}].secret"),
                message,
            });
        }
    }
    for (number, source) in fleet.clusters[index].egress_sources.iter_mut().enumerate() {
        let Some(password) = &mut source.password else {
            continue;
        };
        let result = password.resolve(secrets).and_then(|()| {
            (1..=255)
                .contains(&password.expose().len())
                .then_some(())
                .ok_or_else(|| "the SOCKS5 password read must be 1 to 255 bytes".into())
        });
        if let Err(message) = result {
            problems.push(Problem {
                line: None,
                key: format!("clusters[{index}].egress_sources[{number}].password"),
                message,
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            file: node.fleet_file.display().to_string(),
            problems,
        })
    }
}

/// Everything else applies on reload: `[smtp]` limits and `[tls]` for new
/// connections, `[delivery]` for new attempts (see
/// `delivery::start_for_node`) except `max_in_flight` and
/// `[delivery.egress]`, credentials, egress sources and rate limits of the
/// fleet.
impl fleet::Reloadable for Settings {
    const METRICS_PREFIX: &'static str = "mta";

    fn startup_only(&self) -> fleet::StartupOnly {
        let node = &self.node;
        let keys = fleet::StartupOnly::new()
            .key("node", &node.node)
            .key("bind_address", node.bind_address)
            .key("spool_dir", &node.spool_dir)
            .key("admin_listen", node.admin_listen)
            .key("log_format", node.log_format)
            .key("delivery.max_in_flight", node.delivery.max_in_flight)
            // The egress engine is built once, at start (`Egress::new`).
            .key("delivery.egress.redis", &node.delivery.egress.redis)
            .key(
                "delivery.egress.redis_timeout",
                node.delivery.egress.redis_timeout,
            )
            .key(
                "delivery.egress.source_backoff",
                node.delivery.egress.source_backoff,
            )
            .key("events", &node.events)
            .key("ports.smtp", &self.fleet.ports.smtp)
            .key("ports.https", self.fleet.ports.https);
        // The node listens on its fleet addresses unless bind_address says.
        match (node.bind_address, self.fleet.mta(&node.node)) {
            (None, Some((_, mta))) => keys
                .key(format!("clusters.mtas.{}.ipv4", mta.name), mta.ipv4)
                .key(format!("clusters.mtas.{}.ipv6", mta.name), mta.ipv6),
            _ => keys,
        }
    }
}
