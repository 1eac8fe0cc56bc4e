//! Is the cluster serving? healthd's feed and lb-dns's answers, checked
//! the way a client would see them.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use fleet::feed::{FleetHealth, MtaState};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

/// A resolver that asks only `server` (UDP, then TCP) and caches nothing.
pub fn resolver(server: SocketAddr) -> anyhow::Result<TokioResolver> {
    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut name_server.connections {
        connection.port = server.port();
    }
    let config = ResolverConfig::from_name_servers(vec![name_server]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    let options = builder.options_mut();
    options.cache_size = 0;
    options.attempts = 1;
    options.timeout = Duration::from_secs(1);
    Ok(builder.build()?)
}

/// The IPv4 addresses `server` answers for `hostname`, sorted; empty for
/// an empty answer.
pub async fn addresses(server: SocketAddr, hostname: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let resolver = resolver(server)?;
    let name = format!("{}.", hostname.trim_end_matches('.'));
    match resolver.ipv4_lookup(name.as_str()).await {
        Ok(lookup) => {
            let mut found: Vec<Ipv4Addr> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            found.sort();
            Ok(found)
        }
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!(
            "no answer from {server} for {hostname}: {e}"
        )),
    }
}

/// healthd's whole feed, read with `token` (a follower's or the admin's).
pub async fn feed(healthd_url: &str, token: &str) -> anyhow::Result<FleetHealth> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("{healthd_url}/v1/fleet");
    let request = client.get(&url).bearer_auth(token);
    let response = request.send().await?.error_for_status()?;
    Ok(response.json().await?)
}

/// What the cluster looks like now, in words when it is not ready yet.
pub struct Expectation<'a> {
    pub healthd_url: &'a str,
    /// A token that may read the feed.
    pub token: &'a str,
    pub dns: SocketAddr,
    pub hostname: &'a str,
    /// Every MTA of the fleet file: name, address, drained.
    pub mtas: Vec<(String, Ipv4Addr, bool)>,
}

impl Expectation<'_> {
    /// `Ok(())` when every MTA is up (or drained, when the fleet drains it)
    /// and lb-dns answers exactly the up ones; else what is still missing.
    pub async fn check(&self) -> Result<(), String> {
        let health = feed(self.healthd_url, self.token)
            .await
            .map_err(|e| format!("healthd feed: {e}"))?;
        let states: Vec<_> = health.clusters.iter().flat_map(|c| c.mtas.iter()).collect();
        let mut missing = Vec::new();
        let mut up = BTreeSet::new();
        for (name, address, drain) in &self.mtas {
            let want = if *drain {
                MtaState::Drain
            } else {
                MtaState::Up
            };
            match states.iter().find(|m| &m.name == name) {
                Some(m) if m.state == want => {
                    if want == MtaState::Up {
                        up.insert(*address);
                    }
                }
                Some(m) => missing.push(format!(
                    "{name} is {}{}",
                    m.state.as_str(),
                    m.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )),
                None => missing.push(format!("{name} is not in healthd's feed yet")),
            }
        }
        if !missing.is_empty() {
            return Err(missing.join("; "));
        }
        let answered = addresses(self.dns, self.hostname)
            .await
            .map_err(|e| format!("lb-dns: {e}"))?;
        let answered: BTreeSet<_> = answered.into_iter().collect();
        if answered != up {
            return Err(format!(
                "lb-dns answers {answered:?} for {}, healthd has {up:?} up",
                self.hostname
            ));
        }
        Ok(())
    }
}
