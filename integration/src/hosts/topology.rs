//! The hosts of a multi-host fleet and their addresses, all from the
//! documentation prefixes (RFC 5737, RFC 3849), which exist only inside the
//! harness's namespaces: the fleet's infrastructure (with the egress
//! proxies, whose addresses are the ones receivers see) in 192.0.2.0/24, the
//! MTAs in 203.0.113.0/24, "the internet" (the recipients' MX, their DNS,
//! the client) in 198.51.100.0/24, IPv6 in 2001:db8::/32.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every prefix each host reaches on its link.
pub const ROUTES: [&str; 4] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "2001:db8::/32",
];

/// What runs on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    LbDns,
    Healthd,
    Mta,
    /// A Dante SOCKS5 server the MTAs send through.
    Socks5,
    /// An HAProxy taking PROXY v2 from the MTAs, sending from its own
    /// address.
    HaProxy,
    /// The recipients' MX (the sink) and the DNS that names it.
    Internet,
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its name in the fleet and in its namespace's name: `mta-1`, `lb-dns-2`.
    pub name: String,
    pub role: Role,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Host {
    fn new(name: &str, role: Role, ipv4: [u8; 4], ipv6: &str) -> Host {
        Host {
            name: name.to_string(),
            role,
            ipv4: Ipv4Addr::from(ipv4),
            ipv6: ipv6.parse().expect("a valid IPv6 literal"),
        }
    }

    pub fn addresses(&self) -> Vec<(IpAddr, u8)> {
        vec![(IpAddr::V4(self.ipv4), 24), (IpAddr::V6(self.ipv6), 64)]
    }
}

/// The SOCKS5 port of the Dante hosts and HAProxy's PROXY v2 port.
pub const SOCKS5_PORT: u16 = 1080;
pub const HAPROXY_PORT: u16 = 5000;

/// 2 lb-dns, 2 healthd, `mtas` MTAs, 2 SOCKS5 proxies and an HAProxy, the
/// internet host and the client.
#[derive(Debug, Clone)]
pub struct Topology {
    pub hosts: Vec<Host>,
}

impl Topology {
    pub fn new(mtas: usize) -> Topology {
        // The fixed hosts (name, role, IPv4, IPv6); the MTAs go after the
        // healthd hosts.
        let mut hosts: Vec<Host> = [
            ("lb-dns-1", Role::LbDns, [192, 0, 2, 53], "2001:db8:2::53"),
            ("lb-dns-2", Role::LbDns, [192, 0, 2, 54], "2001:db8:2::54"),
            (
                "healthd-1",
                Role::Healthd,
                [192, 0, 2, 21],
                "2001:db8:2::21",
            ),
            (
                "healthd-2",
                Role::Healthd,
                [192, 0, 2, 22],
                "2001:db8:2::22",
            ),
            ("socks-1", Role::Socks5, [192, 0, 2, 81], "2001:db8:2::81"),
            ("socks-2", Role::Socks5, [192, 0, 2, 82], "2001:db8:2::82"),
            (
                "haproxy-1",
                Role::HaProxy,
                [192, 0, 2, 83],
                "2001:db8:2::83",
            ),
            (
                "internet",
                Role::Internet,
                [198, 51, 100, 25],
                "2001:db8:51::25",
            ),
            (
                "client",
                Role::Client,
                [198, 51, 100, 10],
                "2001:db8:51::10",
            ),
        ]
        .into_iter()
        .map(|(name, role, ipv4, ipv6)| Host::new(name, role, ipv4, ipv6))
        .collect();
        let mta_hosts = (1..=mtas as u8).map(|i| {
            let ipv6 = format!("2001:db8:113::{}", 10 + i);
            Host::new(&format!("mta-{i}"), Role::Mta, [203, 0, 113, 10 + i], &ipv6)
        });
        hosts.splice(4..4, mta_hosts);
        Topology { hosts }
    }

    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |h| h.role == role)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn mtas(&self) -> Vec<&Host> {
        self.with_role(Role::Mta).collect()
    }

    pub fn lb_dns(&self) -> Vec<&Host> {
        self.with_role(Role::LbDns).collect()
    }

    pub fn healthd(&self) -> Vec<&Host> {
        self.with_role(Role::Healthd).collect()
    }

    /// The egress proxies, in the pool's order.
    pub fn proxies(&self) -> Vec<&Host> {
        (self.hosts.iter())
            .filter(|h| matches!(h.role, Role::Socks5 | Role::HaProxy))
            .collect()
    }

    pub fn internet(&self) -> &Host {
        self.with_role(Role::Internet)
            .next()
            .expect("the topology has an internet host")
    }

    pub fn client(&self) -> &Host {
        self.with_role(Role::Client)
            .next()
            .expect("the topology has a client host")
    }
}
