//! Where a cluster's delivery connections leave from, as KumoMTA's
//! `make_egress_source` / `make_egress_pool` describe it:
//! `[[clusters.egress_sources]]` (a local address, a SOCKS5 proxy or an
//! HAProxy speaking PROXY protocol v2) and `[clusters.egress_pool]` (the
//! sources with weights). A cluster without sources connects directly.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::rate::RateLimit;

/// The pool and source names events carry when a cluster has no sources
/// (KumoMTA's names for "the kernel picks the address").
pub const UNSPECIFIED: &str = "unspecified";

/// The pool name when `[clusters.egress_pool]` is left out or has no name.
pub const DEFAULT_POOL: &str = "default";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressSource {
    /// Reported in events and metrics; the key of its fleet-wide limit.
    pub name: String,
    /// The address receivers see (and SPF lists). Without a proxy: the
    /// local address connections bind to. With `ha_proxy`: the source the
    /// PROXY v2 header asks for. With `socks5`: the proxy's outgoing
    /// address (the proxy's own configuration decides it).
    pub source_address: IpAddr,
    /// A SOCKS5 proxy (RFC 1928), `host:port`.
    pub socks5: Option<String>,
    /// An HAProxy listener with `accept-proxy`, `host:port`.
    pub ha_proxy: Option<String>,
    /// RFC 1929 username and password for the SOCKS5 proxy.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The EHLO name presented over this source; default: the node's.
    pub ehlo_name: Option<String>,
    /// Fleet-wide delivery rate over this source (every MTA together).
    #[serde(default)]
    pub rate_limit: RateLimit,
}

/// How a source's connections are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressRoute<'a> {
    /// Bind `source_address` locally and connect.
    Direct { bind: IpAddr },
    /// Through a SOCKS5 proxy, with username and password when given.
    Socks5 {
        proxy: &'a str,
        auth: Option<(&'a str, &'a str)>,
    },
    /// Through HAProxy: a PROXY v2 header names `source` and the target.
    HaProxy { proxy: &'a str, source: IpAddr },
}

impl EgressSource {
    /// The route this source takes (a validated source has at most one
    /// proxy; `socks5` wins if both were set).
    pub fn route(&self) -> EgressRoute<'_> {
        match (&self.socks5, &self.ha_proxy) {
            (Some(proxy), _) => EgressRoute::Socks5 {
                proxy,
                auth: match (&self.username, &self.password) {
                    (Some(user), Some(password)) => Some((user, password.expose())),
                    _ => None,
                },
            },
            (None, Some(proxy)) => EgressRoute::HaProxy {
                proxy,
                source: self.source_address,
            },
            (None, None) => EgressRoute::Direct {
                bind: self.source_address,
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressPool {
    /// Reported in events as `egress_pool`.
    #[serde(default = "default_pool_name")]
    pub name: String,
    pub entries: Vec<PoolEntry>,
}

fn default_pool_name() -> String {
    DEFAULT_POOL.to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    /// An `egress_sources` name of the same cluster.
    pub name: String,
    /// Share of connections (weighted round robin); 0 leaves it out.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A value kept out of `Debug` output and logs.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A value written as a Vault reference replaced by what Vault holds
    /// (see [`crate::secret::resolve_text`]); plain values stay.
    pub fn resolve(&mut self, store: &crate::secret::SecretStore) -> Result<(), String> {
        crate::secret::resolve_text(&mut self.0, store)
    }

    pub fn is_reference(&self) -> bool {
        crate::secret::VaultRef::is_reference(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Splits a proxy's `host:port` (`[v6]:port` for IPv6 literals).
pub fn parse_proxy_address(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` should be host:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{port}` in `{text}` is not a port (1 to 65535)"))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| format!("`{v6}` in `{text}` is not an IPv6 address"))?,
        None if host.parse::<std::net::Ipv4Addr>().is_ok() => host.to_string(),
        None => {
            crate::validate::check_dns_name(host)
                .map_err(|why| format!("`{host}` in `{text}` is not a host name: {why}"))?;
            host.to_ascii_lowercase()
        }
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_addresses_parse() {
        assert_eq!(
            parse_proxy_address("127.2.0.1:1080").unwrap(),
            ("127.2.0.1".to_string(), 1080)
        );
        assert_eq!(
            parse_proxy_address("[2001:db8::1]:5000").unwrap(),
            ("2001:db8::1".to_string(), 5000)
        );
        assert_eq!(
            parse_proxy_address("Proxy-1.Example:1080").unwrap(),
            ("proxy-1.example".to_string(), 1080)
        );
        for bad in [
            "proxy",
            "proxy:0",
            "proxy:99999",
            "2001:db8::1:1080",
            "[nope]:1",
            ":1080",
        ] {
            assert!(parse_proxy_address(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert_eq!(secret.expose(), "hunter2");
    }
}
