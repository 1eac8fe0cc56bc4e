//! `[delivery]` in the node config: how this node delivers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartTls {
    /// STARTTLS when the server offers it, certificate not verified (as MTAs
    /// do without MTA-STS or DANE); plaintext otherwise.
    #[default]
    Opportunistic,
    /// Never STARTTLS.
    Disabled,
    /// STARTTLS or nothing: a server that does not offer it, or a failed
    /// handshake, is a transient failure (no plaintext fallback).
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Keep every message in the spool and attempt none (maintenance, or
    /// tests of the ingress alone).
    pub hold: bool,
    /// DNS servers for MX, A and AAAA lookups (`"192.0.2.53"` or
    /// `"127.2.0.53:5353"`); empty: the system's resolv.conf.
    pub nameservers: Vec<String>,
    /// The port of recipient MX hosts.
    pub port: u16,
    /// EHLO name; default: the cluster hostname.
    pub hello_name: Option<String>,
    pub starttls: StartTls,
    /// After a failed STARTTLS, a destination is sent plaintext for this
    /// long, then STARTTLS is tried again (logged and counted each time).
    #[serde(with = "fleet::config::duration")]
    pub starttls_fallback: Duration,
    /// Recipient domain -> `starttls` mode for it (e.g. `"required"`).
    pub route_starttls: BTreeMap<String, StartTls>,
    /// Non-public networks delivery may connect to (`127.0.0.0/8`,
    /// `::1/128`): by default no loopback, unspecified, link-local or
    /// private address that an MX, A/AAAA or route points at is contacted.
    pub allow_networks: Vec<String>,
    /// Delivery attempts under way at once, all destinations together.
    pub max_in_flight: usize,
    /// Bytes of spooled messages read into memory for attempts at once
    /// (256 MiB); a message larger than this waits until it is alone.
    pub max_loaded_bytes: usize,
    /// Attempts (and so connections) at once to one destination address.
    pub connections_per_destination: usize,
    /// Limit on each SMTP command and on connecting.
    #[serde(with = "fleet::config::duration")]
    pub timeout: Duration,
    /// First retry after a transient failure; each next one doubles.
    #[serde(with = "fleet::config::duration")]
    pub retry_initial: Duration,
    /// The longest wait between two attempts.
    #[serde(with = "fleet::config::duration")]
    pub retry_max: Duration,
    /// A message not delivered this long after reception expires.
    #[serde(with = "fleet::config::duration")]
    pub max_age: Duration,
    /// Send a delivery status notification to the envelope sender on a
    /// bounce or an expiry.
    pub dsn: bool,
    /// Recipient domain -> `host:port` smart host, instead of its MX.
    pub routes: BTreeMap<String, String>,
    /// DKIM keys by signing domain.
    pub dkim: Vec<DkimKey>,
    /// Egress sources: where their rate limits are kept, their back-off.
    pub egress: super::egress::EgressConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// Messages whose From: domain is this are signed (d=).
    pub domain: String,
    /// s=, the key's name under `_domainkey.<domain>`; may be a Vault
    /// reference, so a key and its selector rotate together.
    pub selector: fleet::secret::SecretRef,
    /// PEM private key (PKCS#8, or PKCS#1 for RSA): a file relative to the
    /// config, or a Vault reference `vault:<mount>/data/<path>#<field>`.
    pub key: fleet::secret::SecretFile,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: DkimAlgorithm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            hold: false,
            nameservers: Vec::new(),
            port: 25,
            hello_name: None,
            starttls: StartTls::Opportunistic,
            starttls_fallback: Duration::from_secs(3600),
            route_starttls: BTreeMap::new(),
            allow_networks: Vec::new(),
            max_in_flight: 1024,
            max_loaded_bytes: 256 << 20,
            connections_per_destination: 32,
            timeout: Duration::from_secs(60),
            retry_initial: Duration::from_secs(20 * 60),
            retry_max: Duration::from_secs(8 * 3600),
            max_age: Duration::from_secs(7 * 86_400),
            dsn: false,
            routes: BTreeMap::new(),
            dkim: Vec::new(),
            egress: super::egress::EgressConfig::default(),
        }
    }
}

/// A route's target, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

pub fn parse_host_port(text: &str) -> Result<HostPort, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` should be host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("`{port}` in `{text}` is not a port"))?;
    if host.is_empty() || host.contains(':') {
        return Err(format!("`{text}` should be host:port"));
    }
    Ok(HostPort {
        host: host.to_ascii_lowercase(),
        port,
    })
}

pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("nameserver `{text}` should be an address, optionally with :port"))
}

impl DeliveryConfig {
    /// Resolves paths against the config file and checks what serde cannot.
    /// Returns (key, message) for the first problem.
    pub fn prepare(&mut self, config_file: &Path) -> Result<(), (String, String)> {
        for ns in &self.nameservers {
            parse_nameserver(ns).map_err(|m| ("delivery.nameservers".into(), m))?;
        }
        let mut routes = BTreeMap::new();
        for (domain, target) in &self.routes {
            parse_host_port(target).map_err(|m| (format!("delivery.routes.{domain}"), m))?;
            routes.insert(domain.to_ascii_lowercase(), target.clone());
        }
        self.routes = routes;
        super::networks::Allowed::parse(&self.allow_networks)
            .map_err(|m| ("delivery.allow_networks".to_string(), m))?;
        self.route_starttls = std::mem::take(&mut self.route_starttls)
            .into_iter()
            .map(|(domain, mode)| (domain.to_ascii_lowercase(), mode))
            .collect();
        if self.max_loaded_bytes < 1 << 20 {
            return Err((
                "delivery.max_loaded_bytes".into(),
                "max_loaded_bytes must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if self.max_in_flight == 0 || self.connections_per_destination == 0 {
            return Err((
                "delivery".into(),
                "max_in_flight and connections_per_destination must be at least 1".into(),
            ));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err((
                "delivery.retry_initial".into(),
                "retry_initial must be above zero and not above retry_max".into(),
            ));
        }
        if let Some(url) = &self.egress.redis {
            super::egress::shared::SharedThrottles::new(url, self.egress.redis_timeout)
                .map_err(|m| ("delivery.egress.redis".to_string(), m))?;
        }
        if self.egress.source_backoff.is_zero() || self.egress.redis_timeout.is_zero() {
            return Err((
                "delivery.egress".into(),
                "source_backoff and redis_timeout must be above zero".into(),
            ));
        }
        for key in &mut self.dkim {
            key.key.resolve_path(config_file);
            key.domain = key.domain.to_ascii_lowercase();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_and_nameservers_parse() {
        assert_eq!(
            parse_host_port("Smart.Example:2525").unwrap(),
            HostPort {
                host: "smart.example".into(),
                port: 2525
            }
        );
        assert_eq!(parse_host_port("[::1]:25").unwrap().host, "::1");
        assert!(parse_host_port("nohost").is_err());
        assert!(parse_host_port("h:x").is_err());
        assert_eq!(
            parse_nameserver("127.2.0.53").unwrap(),
            "127.2.0.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.2.0.53:5353").unwrap(),
            "127.2.0.53:5353".parse().unwrap()
        );
    }

    #[test]
    fn an_unreadable_dkim_key_is_a_config_error() {
        let mut config = DeliveryConfig {
            dkim: vec![DkimKey {
                domain: "Example.COM".into(),
                selector: fleet::secret::SecretRef::Value(fleet::secret::SecretBytes::new(
                    b"s1".to_vec(),
                )),
                key: fleet::secret::SecretFile::Path("no-such-key.pem".into()),
                algorithm: DkimAlgorithm::RsaSha256,
            }],
            ..DeliveryConfig::default()
        };
        config.prepare(Path::new("/etc/unmta/mta.toml")).unwrap();
        let message = crate::dkim::Dkim::load(&config.dkim).err().unwrap();
        assert!(message.contains("/etc/unmta/no-such-key.pem"), "{message}");
        assert!(message.contains("example.com"), "{message}");
    }

    #[test]
    fn a_bad_route_is_a_config_error() {
        let mut config = DeliveryConfig::default();
        config.routes.insert("x.test".into(), "nowhere".into());
        let (key, _) = config.prepare(Path::new("mta.toml")).unwrap_err();
        assert_eq!(key, "delivery.routes.x.test");
    }

    #[test]
    fn defaults_are_kumomta_like() {
        let d = DeliveryConfig::default();
        assert_eq!(d.retry_initial, Duration::from_secs(1200));
        assert_eq!(d.max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(d.port, 25);
    }
}
