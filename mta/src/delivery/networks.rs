//! Where delivery may connect: never to a loopback, unspecified,
//! link-local, private (or multicast/broadcast) address that an MX or A/AAAA
//! answer (or a route) points at, unless the node config allows that
//! network (`[delivery] allow_networks = ["127.0.0.0/8"]`): a recipient
//! domain must not turn the MTA against the node's own network.

use std::net::IpAddr;
use std::str::FromStr;

/// An address prefix, `192.0.2.0/24` or `2001:db8::/32` (a bare address
/// is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad = || format!("`{text}` is not a network (use 127.0.0.0/8 or ::1/128)");
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Cidr { net, len })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.len)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let shift = u32::from(bits - len);
    (a >> shift) == (b >> shift)
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub fn restricted_kind(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                Some("private")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("private")
            } else if v6.is_multicast() {
                Some("multicast or reserved")
            } else {
                None
            }
        }
    }
}

/// The networks a node may deliver into although they are not public.
#[derive(Debug, Clone, Default)]
pub struct Allowed(Vec<Cidr>);

impl Allowed {
    pub fn parse(networks: &[String]) -> Result<Allowed, String> {
        networks
            .iter()
            .map(|n| n.parse())
            .collect::<Result<_, _>>()
            .map(Allowed)
    }

    /// `Err` with the reason when delivery must not connect to `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        match restricted_kind(ip) {
            Some(kind) if !self.0.iter().any(|n| n.contains(ip)) => Err(format!(
                "{host} resolves to {ip}, a {kind} address this node does not deliver to \
                 (allow it with [delivery] allow_networks)"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn kinds_and_networks() {
        for (text, kind) in [
            ("127.0.0.1", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("0.0.0.0", Some("unspecified")),
            ("::", Some("unspecified")),
            ("169.254.169.254", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("private")),
            ("fd00::1", Some("private")),
            ("192.0.2.25", None),
            ("2001:db8::25", None),
            ("8.8.8.8", None),
        ] {
            assert_eq!(restricted_kind(ip(text)), kind, "{text}");
        }
        let allowed = Allowed::parse(&["127.1.0.0/16".into(), "::1".into()]).unwrap();
        assert!(allowed.check("sink", ip("127.1.2.3")).is_ok());
        assert!(allowed.check("sink", ip("::1")).is_ok());
        let refused = allowed
            .check("mx.evil.example", ip("127.0.0.1"))
            .unwrap_err();
        assert!(refused.contains("127.0.0.1") && refused.contains("loopback"));
        assert!(allowed.check("x", ip("10.0.0.1")).is_err());
        assert!(Allowed::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(Allowed::parse(&["nonsense".into()]).is_err());
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("10.0.0.1")));
    }
}
