//! healthd's own config file (`configs/healthd.toml`) and the fleet it names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet::config::{load_toml, resolve};
use fleet::secret::SecretStore;
use fleet::telemetry::LogFormat;
use fleet::{load_fleet, ConfigError, Fleet};
use serde::Deserialize;
use sha2::Digest;

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
    /// Who may read the health feed: one bearer token per follower (an
    /// lb-dns node), only its sha256 kept here. With none, the feed is open
    /// to anyone who can reach `listen` (logged as a warning at start).
    #[serde(default)]
    pub followers: Vec<Follower>,
    /// Serve `listen` over HTTPS with this certificate (one the followers
    /// verify against the fleet CA, naming the host in their feed URL).
    pub tls: Option<ListenTls>,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_grace", with = "fleet::config::duration")]
    pub shutdown_grace: Duration,
    /// How often and how strictly MTAs are probed.
    #[serde(default)]
    pub probe: ProbeConfig,
    /// Where `vault:` references are read: `admin_token_sha256`, the
    /// followers' and the fleet accounts' `token_sha256` may be references.
    pub vault: Option<fleet::vault::VaultConfig>,
    /// Open connections on `listen` at most; past it new connections wait
    /// in the kernel's queue (read at start).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Long polls (`/v1/fleet?after=`, the dashboard's live updates)
    /// waiting at once; past it 503 with `Retry-After: 1` (read at start).
    #[serde(default = "default_max_long_polls")]
    pub max_long_polls: usize,
    /// What the dashboard's "Send a test message" examples say.
    #[serde(default)]
    pub dashboard: DashboardConfig,
}

/// `[dashboard]`: how a viewer's machine reaches the clusters, so the
/// examples work when pasted (applied on reload).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// The DNS server that answers the cluster hostnames (lb-dns), when the
    /// public DNS does not: the examples ask it with `dig` and connect to
    /// the first address, as local-cluster's printed commands do.
    pub dns: Option<SocketAddr>,
    /// The CA the examples verify the certificate against (swaks
    /// `--tls-ca-path`, curl `--cacert`), relative to this file; without
    /// it, the system's CAs.
    pub ca_file: Option<PathBuf>,
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_long_polls() -> usize {
    256
}

/// `[[followers]]`: a reader of the feed and its token's sha256 (hex).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follower {
    pub name: String,
    pub token_sha256: String,
}

/// `[tls]`: the certificate chain and key of the HTTPS listener (read at
/// start and on reload; a reload's serves the connections after it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    pub certificate: PathBuf,
    /// A PEM file, or a Vault reference.
    pub key: fleet::secret::SecretFile,
}

/// Probe timing and thresholds. The defaults take a dead MTA out within
/// 3 s (refused: about 1.3 s; silent: at most 1 s + 2 x 0.9 s) while one
/// failed or slow probe does not change its state.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Time between the starts of two probes of one MTA in a steady state.
    #[serde(with = "fleet::config::duration")]
    pub interval: Duration,
    /// Time between probes while a state is changing (some passes or
    /// failures counted, not yet `rise` or `fall`), and for a new MTA.
    #[serde(with = "fleet::config::duration")]
    pub fast_interval: Duration,
    /// The whole of one probe round (SMTP and HTTPS, run side by side).
    #[serde(with = "fleet::config::duration")]
    pub timeout: Duration,
    /// Consecutive passes that make an MTA `up`.
    pub rise: u32,
    /// Consecutive failures that make an MTA `down`.
    pub fall: u32,
    /// Fraction of the interval (0 to 0.5) taken off at random, so probes
    /// of many MTAs spread out.
    pub jitter: f64,
    /// Probe rounds in flight at once, at most.
    pub max_in_flight: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval: Duration::from_secs(1),
            fast_interval: Duration::from_millis(250),
            timeout: Duration::from_millis(900),
            rise: 2,
            fall: 2,
            jitter: 0.1,
            max_in_flight: 256,
        }
    }
}

impl ProbeConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.interval.is_zero() || self.fast_interval.is_zero() || self.timeout.is_zero() {
            problems.push(
                "probe.interval, probe.fast_interval and probe.timeout must be longer than zero"
                    .to_string(),
            );
        }
        if self.rise == 0 || self.fall == 0 {
            problems.push("probe.rise and probe.fall must be at least 1".to_string());
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            problems.push(format!(
                "probe.jitter {} must be between 0 and 0.5",
                self.jitter
            ));
        }
        if self.max_in_flight == 0 {
            problems.push("probe.max_in_flight must be at least 1".to_string());
        }
        problems
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}

/// Everything healthd reads from disk, reloaded together on SIGHUP.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_file: PathBuf,
    pub node: NodeConfig,
    pub fleet: Fleet,
    /// The TLS client every probe uses, trusting `ca_file` only.
    pub tls: Arc<rustls::ClientConfig>,
    /// The HTTPS listener's configuration, when `[tls]` names one.
    pub listen_tls: Option<fleet::tls::ServerTls>,
    /// What was read from Vault; kept across reloads.
    pub secrets: Arc<SecretStore>,
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
        let mut node: NodeConfig = load_toml(config_file)?;
        node.fleet_file = resolve(config_file, &node.fleet_file);
        node.ca_file = resolve(config_file, &node.ca_file);
        node.state_file = resolve(config_file, &node.state_file);
        if let Some(ca) = &mut node.dashboard.ca_file {
            *ca = resolve(config_file, ca);
        }
        if let Some(tls) = &mut node.tls {
            tls.certificate = resolve(config_file, &tls.certificate);
            tls.key.resolve_path(config_file);
        }
        let file = config_file.display().to_string();
        let mut problems: Vec<(String, String)> = (node.probe.problems().into_iter())
            .map(|message| ("probe".to_string(), message))
            .collect();
        problems.extend(resolve_tokens(&mut node, config_file, &secrets));
        problems.extend(follower_problems(&node.followers));
        if !problems.is_empty() {
            return Err(ConfigError {
                file,
                problems: problems
                    .into_iter()
                    .map(|(key, message)| fleet::Problem {
                        line: None,
                        key,
                        message,
                    })
                    .collect(),
            });
        }
        let tls = crate::tls::client_config(&node.ca_file)
            .map_err(|message| ConfigError::single(&file, format!("ca_file: {message}")))?;
        let listen_tls = match &node.tls {
            None => None,
            Some(tls) => Some(
                fleet::tls::ServerTls::load(&tls.certificate, &tls.key, &secrets)
                    .map_err(|message| ConfigError::single(&file, format!("tls: {message}")))?,
            ),
        };
        let mut fleet = load_fleet(&node.fleet_file)?;
        let problems = fleet::secret::resolve_account_tokens(&mut fleet, &secrets);
        if !problems.is_empty() {
            return Err(ConfigError {
                file: node.fleet_file.display().to_string(),
                problems,
            });
        }
        Ok(Settings {
            config_file: config_file.to_path_buf(),
            node,
            fleet,
            tls,
            listen_tls,
            secrets,
        })
    }

    /// Whether `token` is a follower's (or the admin's): may read the feed.
    pub fn may_follow(&self, token: &str) -> bool {
        let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        let admin = self.node.admin_token_sha256.iter();
        let followers = self.node.followers.iter().map(|f| &f.token_sha256);
        admin
            .chain(followers)
            .any(|known| known.trim().eq_ignore_ascii_case(&digest))
    }
}

/// Reads the token hashes written as Vault references (through `[vault]`).
fn resolve_tokens(
    node: &mut NodeConfig,
    config_file: &Path,
    secrets: &SecretStore,
) -> Vec<(String, String)> {
    if let Some(vault) = &mut node.vault {
        vault.resolve_paths(config_file);
    }
    if let Err(message) = secrets.configure(node.vault.as_ref()) {
        return vec![("vault".to_string(), message)];
    }
    let mut problems = Vec::new();
    if let Some(admin) = &mut node.admin_token_sha256 {
        if let Err(message) = fleet::secret::resolve_text(admin, secrets) {
            problems.push(("admin_token_sha256".to_string(), message));
        }
    }
    for (i, follower) in node.followers.iter_mut().enumerate() {
        if let Err(message) = fleet::secret::resolve_text(&mut follower.token_sha256, secrets) {
            problems.push((format!("followers[{i}].token_sha256"), message));
        }
    }
    problems
}

/// Every follower has a name of its own and a sha256 in hex.
fn follower_problems(followers: &[Follower]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, follower) in followers.iter().enumerate() {
        if !names.insert(follower.name.as_str()) {
            problems.push((
                format!("followers[{i}].name"),
                format!("duplicate follower name `{}`", follower.name),
            ));
        }
        let hash = follower.token_sha256.trim();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.push((
                format!("followers[{i}].token_sha256"),
                "must be the 64 hex digits of the token's sha256 (`echo -n TOKEN | sha256sum`)"
                    .to_string(),
            ));
        }
    }
    problems
}

/// Everything else applies on reload: the fleet, probe settings and the
/// CA (from the next probe), the tokens (from the next request), `[tls]`'s
/// certificate and key (from the next connection; whether there is a
/// `[tls]` at all needs a restart).
impl fleet::Reloadable for Settings {
    const METRICS_PREFIX: &'static str = "healthd";

    fn startup_only(&self) -> fleet::StartupOnly {
        fleet::StartupOnly::new()
            .key("listen", self.node.listen)
            .key("tls", self.node.tls.is_some())
            .key("state_file", &self.node.state_file)
            .key("log_format", self.node.log_format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(probe: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("healthd.toml");
        std::fs::write(
            &config,
            format!(
                "fleet_file = \"../../configs/fleet.toml\"\nlisten = \"127.3.0.1:0\"\n\
                 ca_file = \"{}\"\nstate_file = \"state.json\"\n[probe]\n{probe}\n",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../configs/tls/ca.pem")
                    .display()
            ),
        )
        .unwrap();
        Settings::load(&config)
    }

    #[test]
    fn probe_settings_are_checked_with_their_place() {
        let error = load("jitter = 0.9\nfall = 0").unwrap_err().to_string();
        assert!(
            error.contains("probe.jitter 0.9 must be between 0 and 0.5"),
            "{error}"
        );
        assert!(
            error.contains("probe.rise and probe.fall must be at least 1"),
            "{error}"
        );
        let error = load("interval = \"soon\"").unwrap_err().to_string();
        assert!(error.contains("interval"), "{error}");
        let error = load("intervall = \"1s\"").unwrap_err().to_string();
        assert!(error.contains("intervall"), "{error}");
    }

    #[test]
    fn the_example_config_has_the_documented_defaults() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/healthd.toml");
        let settings = Settings::load(&config).unwrap();
        assert_eq!(settings.node.probe, ProbeConfig::default());
        assert_eq!(settings.node.probe.interval, Duration::from_secs(1));
        assert_eq!(settings.node.probe.timeout, Duration::from_millis(900));
    }
}
