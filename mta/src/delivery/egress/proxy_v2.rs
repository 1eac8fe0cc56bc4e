//! The PROXY protocol version 2 header (HAProxy's proxy-protocol.txt,
//! section 2.2) a connection to an HAProxy `accept-proxy` listener starts
//! with: it asks HAProxy to connect to `destination` from `source`.

use std::net::{IpAddr, SocketAddr};

const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;

/// The header for a TCP connection from `source` (any port) to
/// `destination`; `None` when their address families differ, which the
/// protocol cannot express.
pub fn header(source: IpAddr, destination: SocketAddr) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(V2_PROXY);
    match (source, destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(TCP_OVER_IPV4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out.push(TCP_OVER_IPV6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        _ => return None,
    }
    // Source port 0: HAProxy (`usesrc clientip`) lets the kernel pick one.
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_matches_the_specification() {
        let h = header(
            "203.0.113.10".parse().unwrap(),
            "192.0.2.25:25".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[14..16], &[0, 12]);
        assert_eq!(&h[16..20], &[203, 0, 113, 10]);
        assert_eq!(&h[20..24], &[192, 0, 2, 25]);
        assert_eq!(&h[24..], &[0, 0, 0, 25]);
    }

    #[test]
    fn ipv6_header_and_mixed_families() {
        let h = header(
            "2001:db8::10".parse().unwrap(),
            "[2001:db8::25]:2525".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[13], 0x21);
        assert_eq!(&h[14..16], &[0, 36]);
        assert_eq!(&h[h.len() - 2..], &2525u16.to_be_bytes());
        assert!(header(
            "203.0.113.10".parse().unwrap(),
            "[2001:db8::25]:25".parse().unwrap()
        )
        .is_none());
    }
}
