//! DNS cookies (RFC 7873) with interoperable server cookies (RFC 9018):
//! version 1, reserved, a timestamp and SipHash-2-4 over the client cookie,
//! those fields and the client's address, keyed with the server secret (the
//! same secret on every node of an anycast set makes their cookies
//! interchangeable).

use std::net::IpAddr;

use crate::wire::Cookie;

/// A server cookie is accepted up to an hour after it was made and five
/// minutes before (clock skew between nodes), RFC 9018 section 4.3.
const MAX_AGE: u32 = 3600;
const MAX_AHEAD: u32 = 300;

#[derive(Clone, Copy, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct CookieSecret {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSecret(..)")
    }
}

impl CookieSecret {
    pub fn new(secret: [u8; 16]) -> CookieSecret {
        let (a, b) = secret.split_at(8);
        CookieSecret {
            k0: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(b.try_into().unwrap_or_default()),
        }
    }

    /// A secret of this process only, from the operating system's random
    /// source.
    pub fn random() -> CookieSecret {
        use std::hash::{BuildHasher, Hasher};
        let mut secret = [0u8; 16];
        if let Ok(bytes) = std::fs::read("/proc/sys/kernel/random/uuid") {
            // 128 random bits in hex (with dashes), read without an extra crate.
            let hex: Vec<u8> = bytes.into_iter().filter(u8::is_ascii_hexdigit).collect();
            for (i, pair) in hex.chunks(2).take(16).enumerate() {
                let s = std::str::from_utf8(pair).unwrap_or("0");
                secret[i] = u8::from_str_radix(s, 16).unwrap_or(0);
            }
        }
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(&secret);
        let extra = h.finish().to_le_bytes();
        for (s, e) in secret.iter_mut().zip(extra) {
            *s ^= e;
        }
        CookieSecret::new(secret)
    }

    fn hash(&self, client: &[u8; 8], head: &[u8; 8], ip: IpAddr) -> [u8; 8] {
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(self.k0, self.k1);
        use std::hash::Hasher;
        h.write(client);
        h.write(head);
        match ip {
            IpAddr::V4(ip) => h.write(&ip.octets()),
            IpAddr::V6(ip) => h.write(&ip.octets()),
        }
        h.finish().to_le_bytes()
    }

    /// The server cookie for this client cookie and address, made `now`.
    pub fn make(&self, client: &[u8; 8], ip: IpAddr, now: u32) -> [u8; 16] {
        let mut cookie = [0u8; 16];
        cookie[0] = 1;
        cookie[4..8].copy_from_slice(&now.to_be_bytes());
        let head: [u8; 8] = cookie[..8].try_into().unwrap_or_default();
        cookie[8..].copy_from_slice(&self.hash(client, &head, ip));
        cookie
    }

    /// Whether the server part of `cookie` is one we made for this client.
    pub fn valid(&self, cookie: &Cookie, ip: IpAddr, now: u32) -> bool {
        let server = cookie.server();
        if server.len() != 16 || server[0] != 1 {
            return false;
        }
        let made = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
        let age = now.wrapping_sub(made);
        let fresh = age <= MAX_AGE || made.wrapping_sub(now) <= MAX_AHEAD;
        let head: [u8; 8] = server[..8].try_into().unwrap_or_default();
        fresh && self.hash(&cookie.client, &head, ip) == server[8..16]
    }
}

impl TryFrom<String> for CookieSecret {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        parse_secret(&value)
    }
}

/// Reads a 32-hex-digit secret (`cookie_secret` in the node config).
pub fn parse_secret(hex: &str) -> Result<CookieSecret, String> {
    let hex = hex.trim();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be 32 hexadecimal digits (128 bits)".to_string());
    }
    let mut secret = [0u8; 16];
    for (i, s) in secret.iter_mut().enumerate() {
        *s = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(CookieSecret::new(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(client: [u8; 8], server: &[u8]) -> Cookie {
        let mut c = Cookie {
            client,
            server_len: server.len() as u8,
            ..Cookie::default()
        };
        c.server[..server.len()].copy_from_slice(server);
        c
    }

    #[test]
    fn a_cookie_is_valid_for_its_client_and_address_only_and_expires() {
        let secret = parse_secret("e5e973e5a6b2a43f48e7dc849e37bfcf").unwrap();
        let ip: IpAddr = "198.51.100.100".parse().unwrap();
        let client = [0x24, 0x64, 0xc4, 0xab, 0xcf, 0x10, 0xc9, 0x57];
        let made = secret.make(&client, ip, 1_559_731_985);
        // RFC 9018 appendix A.1.
        assert_eq!(
            made,
            [1, 0, 0, 0, 0x5c, 0xf7, 0x9f, 0x11, 0x1f, 0x81, 0x30, 0xc3, 0xee, 0xe2, 0x94, 0x80]
        );
        let good = cookie(client, &made);
        assert!(secret.valid(&good, ip, 1_559_731_985 + 60));
        assert!(!secret.valid(&good, "198.51.100.101".parse().unwrap(), 1_559_731_985));
        assert!(!secret.valid(&good, ip, 1_559_731_985 + 4000), "expired");
        let mut other = client;
        other[0] ^= 1;
        assert!(!secret.valid(&cookie(other, &made), ip, 1_559_731_985));
    }
}
