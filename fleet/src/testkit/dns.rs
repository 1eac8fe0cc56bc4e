//! A static DNS server for tests and the local cluster (hickory-server, UDP
//! and TCP): MX, A, AAAA and TXT records given up front; NXDOMAIN (with an
//! SOA) for every other name. The MTAs' resolver is pointed at it so MX
//! lookups stay on loopback.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// The TTL on every record served.
pub const TTL: u32 = 5;

/// One record to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub data: Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Mx { preference: u16, host: String },
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Txt(String),
}

impl Record {
    pub fn mx(domain: &str, preference: u16, host: &str) -> Record {
        Record {
            name: domain.to_string(),
            data: Data::Mx {
                preference,
                host: host.to_string(),
            },
        }
    }

    /// RFC 7505: `MX 0 .`, the domain accepts no mail.
    pub fn null_mx(domain: &str) -> Record {
        Record::mx(domain, 0, ".")
    }

    pub fn a(host: &str, address: Ipv4Addr) -> Record {
        Record {
            name: host.to_string(),
            data: Data::A(address),
        }
    }

    pub fn aaaa(host: &str, address: Ipv6Addr) -> Record {
        Record {
            name: host.to_string(),
            data: Data::Aaaa(address),
        }
    }

    /// A TXT record; long text (a DKIM key) is split into 255-byte strings.
    pub fn txt(name: &str, text: &str) -> Record {
        Record {
            name: name.to_string(),
            data: Data::Txt(text.to_string()),
        }
    }

    fn to_hickory(&self) -> anyhow::Result<hickory_proto::rr::Record> {
        let name = fqdn(&self.name)?;
        let data = match &self.data {
            Data::Mx { preference, host } => RData::MX(MX::new(*preference, fqdn(host)?)),
            Data::A(address) => RData::A(A(*address)),
            Data::Aaaa(address) => RData::AAAA(AAAA(*address)),
            Data::Txt(text) => RData::TXT(TXT::new(split_text(text))),
        };
        Ok(hickory_proto::rr::Record::from_rdata(name, TTL, data))
    }
}

fn fqdn(name: &str) -> anyhow::Result<Name> {
    let mut parsed = Name::from_ascii(name)
        .with_context(|| format!("static DNS: `{name}` is not a domain name"))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

fn split_text(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > 255 {
        let mut cut = 255;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        parts.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    parts.push(rest.to_string());
    parts
}

/// A running static DNS server; it stops when dropped.
pub struct StaticDns {
    addr: SocketAddr,
    server: Server<Catalog>,
}

impl StaticDns {
    /// Serves `records` on `listen` over UDP and TCP (the same port; with
    /// port 0 the UDP port is chosen first and TCP binds to it).
    pub async fn start(listen: SocketAddr, records: Vec<Record>) -> anyhow::Result<StaticDns> {
        // One root zone holds every record, so any other name is NXDOMAIN.
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            Name::root(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            fqdn("ns.sink.test")?,
            fqdn("hostmaster.sink.test")?,
            1,
            3600,
            600,
            86400,
            TTL,
        );
        zone.upsert_mut(
            hickory_proto::rr::Record::from_rdata(Name::root(), TTL, RData::SOA(soa)),
            1,
        );
        for record in &records {
            if !zone.upsert_mut(record.to_hickory()?, 1) {
                anyhow::bail!("static DNS: cannot add {record:?}");
            }
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(zone)]);

        let udp = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("static DNS: cannot bind UDP {listen}"))?;
        let addr = udp.local_addr()?;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("static DNS: cannot bind TCP {addr}"))?;
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        Ok(StaticDns { addr, server })
    }

    /// The address served on, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the server tasks.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.server
            .shutdown_gracefully()
            .await
            .context("static DNS: shutdown failed")
    }
}

impl Drop for StaticDns {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::{Resolver, TokioResolver};

    fn resolver(addr: SocketAddr) -> TokioResolver {
        let mut server = NameServerConfig::udp_and_tcp(addr.ip());
        for connection in &mut server.connections {
            connection.port = addr.port();
        }
        let config = ResolverConfig::from_name_servers(vec![server]);
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        builder.options_mut().cache_size = 0;
        builder.build().unwrap()
    }

    #[tokio::test]
    async fn serves_mx_a_txt_and_nxdomain() {
        let key = "v=DKIM1; k=rsa; p=".to_string() + &"A".repeat(400);
        let dns = StaticDns::start(
            "127.5.0.53:0".parse().unwrap(),
            vec![
                Record::mx("example.com", 10, "mx.sink.test"),
                Record::null_mx("nomail.example"),
                Record::a("mx.sink.test", Ipv4Addr::new(127, 5, 0, 25)),
                Record::aaaa("mx.sink.test", Ipv6Addr::LOCALHOST),
                Record::txt("s1._domainkey.example.com", &key),
            ],
        )
        .await
        .unwrap();
        let resolver = resolver(dns.addr());

        let mx = resolver.mx_lookup("example.com.").await.unwrap();
        let mx: Vec<(u16, String)> = mx
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(mx, vec![(10, "mx.sink.test.".to_string())]);

        let a = resolver.ipv4_lookup("mx.sink.test.").await.unwrap();
        assert!(a
            .answers()
            .iter()
            .any(|r| r.data == RData::A(A(Ipv4Addr::new(127, 5, 0, 25)))));
        let aaaa = resolver.ipv6_lookup("mx.sink.test.").await.unwrap();
        assert_eq!(aaaa.answers().len(), 1);

        let txt = resolver
            .txt_lookup("s1._domainkey.example.com.")
            .await
            .unwrap();
        let joined: String = txt
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        assert_eq!(joined, key);

        let null = resolver.mx_lookup("nomail.example.").await.unwrap();
        assert!(null.answers().iter().any(|r| match &r.data {
            RData::MX(mx) => mx.preference == 0 && mx.exchange.is_root(),
            _ => false,
        }));

        let missing = resolver.mx_lookup("example.org.").await.unwrap_err();
        assert!(missing.is_nx_domain(), "{missing:?}");
    }

    #[tokio::test]
    async fn answers_over_tcp() {
        let dns = StaticDns::start(
            "127.5.0.54:0".parse().unwrap(),
            vec![Record::a("host.test", Ipv4Addr::new(127, 5, 0, 1))],
        )
        .await
        .unwrap();
        let mut server = NameServerConfig::tcp(dns.addr().ip());
        server.connections[0].port = dns.addr().port();
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![server]),
            TokioRuntimeProvider::default(),
        )
        .build()
        .unwrap();
        let a = resolver.ipv4_lookup("host.test.").await.unwrap();
        assert_eq!(
            a.answers()[0].data,
            RData::A(A(Ipv4Addr::new(127, 5, 0, 1)))
        );
        dns.stop().await.unwrap();
    }
}
