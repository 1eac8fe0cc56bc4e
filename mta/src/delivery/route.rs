//! Where a recipient domain's mail goes: a configured smart host, or its MX
//! hosts by preference (RFC 5321 5.1), or the domain's own A/AAAA when it
//! has no MX; a null MX (RFC 7505) refuses mail.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;

use super::config::{parse_host_port, parse_nameserver, HostPort};
use super::networks::Allowed;

/// One host to try, with its addresses in the order to try them.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Why a domain has nowhere to deliver to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// Will not change by waiting: null MX, no such domain.
    Permanent(String),
    /// A DNS failure that may pass.
    Transient(String),
}

pub struct Router {
    resolver: TokioResolver,
    routes: BTreeMap<String, HostPort>,
    port: u16,
    allowed: Allowed,
}

/// The system's resolvers, as hickory's own reader of `/etc/resolv.conf`
/// finds them (port 53); 127.0.0.1 when it names none or cannot be read.
fn system_nameservers() -> Vec<SocketAddr> {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok((config, _)) => config
            .name_servers()
            .iter()
            .map(|server| SocketAddr::new(server.ip, 53))
            .collect(),
        Err(error) => {
            tracing::warn!("no nameserver from /etc/resolv.conf ({error}): using 127.0.0.1:53");
            vec![SocketAddr::from(([127, 0, 0, 1], 53))]
        }
    }
}

impl Router {
    pub fn new(
        nameservers: &[String],
        routes: &BTreeMap<String, String>,
        port: u16,
        timeout: Duration,
        allowed: Allowed,
    ) -> Result<Router, String> {
        let servers = if nameservers.is_empty() {
            system_nameservers()
        } else {
            nameservers
                .iter()
                .map(|ns| parse_nameserver(ns))
                .collect::<Result<_, _>>()?
        };
        let configs = servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), configs);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let options = builder.options_mut();
        options.timeout = timeout.min(Duration::from_secs(10));
        options.attempts = 2;
        options.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        let routes = routes
            .iter()
            .map(|(domain, target)| Ok((domain.clone(), parse_host_port(target)?)))
            .collect::<Result<_, String>>()?;
        Ok(Router {
            resolver,
            routes,
            port,
            allowed,
        })
    }

    /// `targets` without the addresses this node may not connect to; a
    /// permanent failure naming them when nothing is left.
    fn permitted(&self, mut targets: Vec<Target>) -> Result<Vec<Target>, NoRoute> {
        let mut refused = Vec::new();
        for target in &mut targets {
            target.addrs.retain(|addr| {
                let check = self.allowed.check(&target.host, addr.ip());
                if let Err(reason) = &check {
                    refused.push(reason.clone());
                }
                check.is_ok()
            });
        }
        targets.retain(|t| !t.addrs.is_empty());
        if targets.is_empty() && !refused.is_empty() {
            return Err(NoRoute::Permanent(format!(
                "554 5.4.4 {}",
                refused.join("; ")
            )));
        }
        Ok(targets)
    }

    /// The hosts to try for `domain`, best first.
    pub async fn plan(&self, domain: &str) -> Result<Vec<Target>, NoRoute> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(route) = self.routes.get(&domain) {
            let addrs = self.addresses(&route.host, route.port).await?;
            return self.permitted(vec![Target {
                host: route.host.clone(),
                addrs,
            }]);
        }
        let hosts = self.mx_hosts(&domain).await?;
        let mut targets = Vec::with_capacity(hosts.len());
        let mut last_error = None;
        for host in hosts {
            match self.addresses(&host, self.port).await {
                Ok(addrs) => targets.push(Target { host, addrs }),
                Err(e) => last_error = Some(e),
            }
        }
        match (targets.is_empty(), last_error) {
            (false, _) => self.permitted(targets),
            (true, Some(NoRoute::Transient(e))) => Err(NoRoute::Transient(e)),
            (true, Some(NoRoute::Permanent(e))) => Err(NoRoute::Permanent(e)),
            (true, None) => Err(NoRoute::Permanent(format!(
                "no mail host found for {domain}"
            ))),
        }
    }

    /// MX hosts by preference (equal preferences shuffled); the domain
    /// itself when it has none.
    async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, NoRoute> {
        let fqdn = format!("{domain}.");
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mxs: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some((
                            mx.preference,
                            mx.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect();
                if mxs.is_empty() {
                    return Ok(vec![domain.to_string()]);
                }
                // RFC 7505: a single MX of "." means the domain takes no mail.
                if mxs.iter().all(|(_, host)| host.is_empty()) {
                    return Err(NoRoute::Permanent(format!(
                        "556 5.1.10 {domain} does not accept mail (null MX)"
                    )));
                }
                mxs.retain(|(_, host)| !host.is_empty());
                mxs.shuffle(&mut rand::rng());
                mxs.sort_by_key(|(pref, _)| *pref);
                let mut hosts: Vec<String> = Vec::with_capacity(mxs.len());
                for (_, host) in mxs {
                    if !hosts.contains(&host) {
                        hosts.push(host);
                    }
                }
                Ok(hosts)
            }
            Err(e) if e.is_nx_domain() => Err(NoRoute::Permanent(format!(
                "550 5.1.2 the domain {domain} does not exist"
            ))),
            Err(e) if e.is_no_records_found() => Ok(vec![domain.to_string()]),
            Err(e) => Err(NoRoute::Transient(format!(
                "451 4.4.3 MX lookup for {domain} failed: {e}"
            ))),
        }
    }

    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, NoRoute> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let fqdn = format!("{host}.");
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => {
                let addrs: Vec<SocketAddr> =
                    lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                if addrs.is_empty() {
                    Err(NoRoute::Permanent(format!(
                        "550 5.1.2 {host} has no address"
                    )))
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(NoRoute::Permanent(
                format!("550 5.1.2 {host} has no address"),
            )),
            Err(e) => Err(NoRoute::Transient(format!(
                "451 4.4.3 address lookup for {host} failed: {e}"
            ))),
        }
    }
}
