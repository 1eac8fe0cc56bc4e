//! The fleet file's shape. Field-level checks live in the types
//! (`RateLimit`, `PhcHash`); cross-field checks live in `validate`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::egress::{EgressPool, EgressSource, PoolEntry, DEFAULT_POOL};
use crate::rate::RateLimit;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub zone: Zone,
    #[serde(default)]
    pub ports: Ports,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default)]
    pub accounts: Vec<Account>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub origin: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default = "default_max_answers")]
    pub max_answers: usize,
    #[serde(default)]
    pub when_all_down: WhenAllDown,
    pub primary_ns: String,
    pub hostmaster: String,
    #[serde(default)]
    pub nameservers: Vec<NameServer>,
}

fn default_ttl() -> u32 {
    30
}

fn default_max_answers() -> usize {
    8
}

/// What a cluster with no healthy MTA answers.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllDown {
    /// Every non-drained address (fail open, as gdnsd and Route 53 do).
    #[default]
    ServeAll,
    /// NODATA.
    Empty,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NameServer {
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    #[serde(default = "default_smtp_ports")]
    pub smtp: Vec<u16>,
    #[serde(default = "default_https_port")]
    pub https: u16,
}

fn default_smtp_ports() -> Vec<u16> {
    vec![587, 25, 2587]
}

fn default_https_port() -> u16 {
    443
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            smtp: default_smtp_ports(),
            https: default_https_port(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub id: String,
    #[serde(default)]
    pub rate_limit: RateLimit,
    pub domains: Vec<String>,
    #[serde(default)]
    pub credentials: Vec<Credential>,
    #[serde(default)]
    pub mtas: Vec<Mta>,
    /// The domain of the per-message return paths (`<id>@<bounce_domain>`)
    /// that out-of-band bounces and complaints come back to; default: the
    /// cluster hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_domain: Option<String>,
    /// Where every MTA of the cluster sends its events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// Where delivery connections leave from; none: directly from the MTA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_sources: Vec<EgressSource>,
    /// The sources with weights; default: every source, weight 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_pool: Option<EgressPool>,
}

/// One `[[clusters.webhooks]]`: an endpoint that receives the cluster's
/// events as signed JSON batches.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Names the endpoint in metrics, status and the cursor file.
    pub name: String,
    /// `https://…`; `http://` only for a loopback host (tests).
    pub url: String,
    /// The event types sent; absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<crate::event::EventType>>,
    /// The HMAC-SHA256 signing secret, or a Vault reference to it (read by
    /// the cluster's MTAs).
    pub secret: String,
    /// Events per POST at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a batch may wait to fill before it is sent.
    #[serde(default = "default_linger", with = "crate::config::duration")]
    pub linger: std::time::Duration,
}

fn default_batch_size() -> usize {
    100
}

fn default_linger() -> std::time::Duration {
    std::time::Duration::from_millis(500)
}

impl Webhook {
    pub fn wants(&self, kind: crate::event::EventType) -> bool {
        self.events
            .as_ref()
            .is_none_or(|types| types.contains(&kind))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub username: String,
    /// A PHC hash, or a Vault reference to one.
    pub password: crate::secret::Secret<PhcHash>,
    /// The subset of the cluster's domains this credential may send as;
    /// absent means all of them.
    pub domains: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mta {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub drain: bool,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub name: String,
    /// 64 hex digits, or a Vault reference to them (read by healthd).
    pub token_sha256: String,
    pub clusters: Vec<String>,
}

/// A password hash in PHC string format, from the argon2 family.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct PhcHash(String);

impl PhcHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PhcHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhcHash(..)")
    }
}

impl TryFrom<String> for PhcHash {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match argon2::PasswordHash::new(&value) {
            Ok(hash) if hash.algorithm.as_str().starts_with("argon2") => Ok(PhcHash(value)),
            Ok(hash) => Err(format!(
                "password hash uses `{}`; only argon2 (argon2id) hashes are accepted",
                hash.algorithm
            )),
            Err(_) => Err(
                "password must be an argon2id PHC hash ($argon2id$v=19$...), never plaintext; \
                 make one with `fleet hash-password`"
                    .to_string(),
            ),
        }
    }
}

impl From<PhcHash> for String {
    fn from(value: PhcHash) -> Self {
        value.0
    }
}

impl Fleet {
    pub fn cluster(&self, id: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.id == id)
    }

    /// The MTA with this name and the cluster it belongs to.
    pub fn mta(&self, name: &str) -> Option<(&Cluster, &Mta)> {
        self.clusters
            .iter()
            .find_map(|c| c.mtas.iter().find(|m| m.name == name).map(|m| (c, m)))
    }

    pub fn hostname(&self, cluster: &Cluster) -> String {
        cluster_hostname(&cluster.id, &self.zone.origin)
    }

    pub fn mta_count(&self) -> usize {
        self.clusters.iter().map(|c| c.mtas.len()).sum()
    }
}

/// The name clients use for cluster `id` in zone `origin`: `c-<id>.<origin>`.
pub fn cluster_hostname(id: &str, origin: &str) -> String {
    format!("c-{id}.{}", origin.trim_end_matches('.'))
}

impl Cluster {
    /// Where VERP return paths point: `bounce_domain`, else `hostname`.
    pub fn bounce_domain_or<'a>(&'a self, hostname: &'a str) -> &'a str {
        self.bounce_domain.as_deref().unwrap_or(hostname)
    }

    /// The domains a credential may send as.
    pub fn allowed_domains<'a>(&'a self, credential: &'a Credential) -> &'a [String] {
        credential.domains.as_deref().unwrap_or(&self.domains)
    }

    /// The addresses mail of this cluster leaves from, as receivers see
    /// them (lb-dns publishes them as the cluster's SPF record): with egress
    /// sources, their `source_address`es; else every MTA's IPv4 and IPv6
    /// address, drained and down ones included (they may still be
    /// delivering what they queued). In fleet order without duplicates.
    pub fn mail_source_addresses(&self) -> Vec<IpAddr> {
        let mut addresses: Vec<IpAddr> = Vec::new();
        if !self.egress_sources.is_empty() {
            for source in &self.egress_sources {
                if !addresses.contains(&source.source_address) {
                    addresses.push(source.source_address);
                }
            }
            return addresses;
        }
        for mta in &self.mtas {
            for ip in [Some(IpAddr::V4(mta.ipv4)), mta.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                if !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
        }
        addresses
    }

    /// The pool delivery uses: `egress_pool`, or every source with weight 1
    /// under the name `default`; `None` when the cluster has no sources.
    pub fn effective_egress_pool(&self) -> Option<EgressPool> {
        if self.egress_sources.is_empty() {
            return None;
        }
        Some(self.egress_pool.clone().unwrap_or_else(|| {
            EgressPool {
                name: DEFAULT_POOL.to_string(),
                entries: self
                    .egress_sources
                    .iter()
                    .map(|source| PoolEntry {
                        name: source.name.clone(),
                        weight: 1,
                    })
                    .collect(),
            }
        }))
    }
}
