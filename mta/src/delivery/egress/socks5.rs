//! A SOCKS5 client (RFC 1928), CONNECT only, with username/password
//! authentication (RFC 1929) when the source has credentials.
//!
//! Failures are sorted by whose they are: the proxy's (it is down, refuses
//! us or our credentials: take the source out for a while) or the
//! destination's (the proxy says the MX cannot be reached: try the next
//! address, as without a proxy).

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a SOCKS5 CONNECT did not give a stream to the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socks5Error {
    /// The proxy failed or refused us: the source is at fault.
    Proxy(String),
    /// The proxy could not reach the destination.
    Destination(String),
}

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xFF;

fn proxy(text: impl Into<String>) -> Socks5Error {
    Socks5Error::Proxy(text.into())
}

async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    what: &str,
) -> Result<(), Socks5Error> {
    stream
        .read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|e| proxy(format!("the SOCKS5 proxy broke off {what}: {e}")))
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), Socks5Error> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| proxy(format!("cannot write to the SOCKS5 proxy: {e}")))
}

/// Negotiates a method, authenticates when asked, and CONNECTs to
/// `target`; returns the address the proxy bound for it.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: SocketAddr,
    auth: Option<(&str, &str)>,
) -> Result<SocketAddr, Socks5Error> {
    negotiate(stream, auth).await?;
    let mut request = vec![VERSION, 0x01, 0x00];
    match target.ip() {
        IpAddr::V4(ip) => {
            request.push(0x01);
            request.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            request.push(0x04);
            request.extend_from_slice(&ip.octets());
        }
    }
    request.extend_from_slice(&target.port().to_be_bytes());
    write(stream, &request).await?;
    let mut head = [0u8; 4];
    read(stream, &mut head, "before answering CONNECT").await?;
    if head[0] != VERSION {
        return Err(proxy(format!(
            "the proxy answered CONNECT with version {} instead of 5",
            head[0]
        )));
    }
    if head[1] != 0 {
        return Err(reply_error(head[1], target));
    }
    let bound_ip = match head[3] {
        0x01 => {
            let mut ip = [0u8; 4];
            read(stream, &mut ip, "in its CONNECT reply").await?;
            IpAddr::from(ip)
        }
        0x04 => {
            let mut ip = [0u8; 16];
            read(stream, &mut ip, "in its CONNECT reply").await?;
            IpAddr::from(ip)
        }
        0x03 => {
            // A name: read and ignore it.
            let mut len = [0u8; 1];
            read(stream, &mut len, "in its CONNECT reply").await?;
            let mut name = vec![0u8; len[0] as usize];
            read(stream, &mut name, "in its CONNECT reply").await?;
            IpAddr::from([0u8; 4])
        }
        other => {
            return Err(proxy(format!(
                "the proxy's CONNECT reply has an unknown address type {other}"
            )))
        }
    };
    let mut port = [0u8; 2];
    read(stream, &mut port, "in its CONNECT reply").await?;
    Ok(SocketAddr::new(bound_ip, u16::from_be_bytes(port)))
}

/// Method selection (RFC 1928 section 3) and, when chosen, RFC 1929.
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    auth: Option<(&str, &str)>,
) -> Result<(), Socks5Error> {
    let offer: &[u8] = match auth {
        Some(_) => &[VERSION, 2, NO_AUTH, USER_PASS],
        None => &[VERSION, 1, NO_AUTH],
    };
    write(stream, offer).await?;
    let mut choice = [0u8; 2];
    read(stream, &mut choice, "during method selection").await?;
    if choice[0] != VERSION {
        return Err(proxy(format!(
            "the proxy speaks SOCKS version {}, not 5",
            choice[0]
        )));
    }
    match (choice[1], auth) {
        (NO_AUTH, _) => Ok(()),
        (USER_PASS, Some((user, password))) => authenticate(stream, user, password).await,
        (NO_ACCEPTABLE, None) => Err(proxy(
            "the proxy accepts none of the offered methods (it may need a username and password)",
        )),
        (NO_ACCEPTABLE, Some(_)) => Err(proxy(
            "the proxy accepts neither no authentication nor username/password",
        )),
        (other, _) => Err(proxy(format!(
            "the proxy chose authentication method {other}, which was not offered"
        ))),
    }
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    password: &str,
) -> Result<(), Socks5Error> {
    let (user, password) = (user.as_bytes(), password.as_bytes());
    if user.is_empty() || user.len() > 255 || password.is_empty() || password.len() > 255 {
        return Err(proxy(
            "the SOCKS5 username and password must be 1 to 255 bytes",
        ));
    }
    let mut request = Vec::with_capacity(3 + user.len() + password.len());
    request.push(0x01);
    request.push(user.len() as u8);
    request.extend_from_slice(user);
    request.push(password.len() as u8);
    request.extend_from_slice(password);
    write(stream, &request).await?;
    let mut status = [0u8; 2];
    read(stream, &mut status, "during authentication").await?;
    if status[1] != 0 {
        return Err(proxy(format!(
            "the proxy refused the username and password (RFC 1929 status {})",
            status[1]
        )));
    }
    Ok(())
}

/// RFC 1928 section 6: whose fault each reply code is.
fn reply_error(code: u8, target: SocketAddr) -> Socks5Error {
    let destination = |why: &str| {
        Socks5Error::Destination(format!("the SOCKS5 proxy cannot reach {target}: {why}"))
    };
    match code {
        0x03 => destination("network unreachable"),
        0x04 => destination("host unreachable"),
        0x05 => destination("connection refused"),
        0x06 => destination("TTL expired"),
        0x01 => proxy("the SOCKS5 proxy failed (general server failure)"),
        0x02 => proxy(format!(
            "the SOCKS5 proxy's rules do not allow a connection to {target}"
        )),
        0x07 => proxy("the SOCKS5 proxy does not support CONNECT"),
        0x08 => proxy("the SOCKS5 proxy does not support the address type"),
        other => proxy(format!(
            "the SOCKS5 proxy answered with unknown code {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// What the proxy expects to read, and what it answers.
    type Turns = Vec<(Vec<u8>, Vec<u8>)>;

    /// Plays the proxy's side: reads `expect`, writes `answer`, in turns.
    async fn proxy_side(mut stream: tokio::io::DuplexStream, turns: Turns) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        for (expect, answer) in turns {
            let mut got = vec![0u8; expect.len()];
            if stream.read_exact(&mut got).await.is_err() {
                break;
            }
            seen.push(got);
            if stream.write_all(&answer).await.is_err() {
                break;
            }
        }
        seen
    }

    fn target() -> SocketAddr {
        "192.0.2.25:25".parse().unwrap()
    }

    const CONNECT_V4: [u8; 10] = [5, 1, 0, 1, 192, 0, 2, 25, 0, 25];
    const BOUND: [u8; 10] = [5, 0, 0, 1, 198, 51, 100, 7, 0x9c, 0x40];

    #[tokio::test]
    async fn connects_without_authentication() {
        let (mut client, server) = duplex(1024);
        let side = tokio::spawn(proxy_side(
            server,
            vec![
                (vec![5, 1, 0], vec![5, 0]),
                (CONNECT_V4.to_vec(), BOUND.to_vec()),
            ],
        ));
        let bound = connect(&mut client, target(), None).await.unwrap();
        assert_eq!(bound, "198.51.100.7:40000".parse().unwrap());
        assert_eq!(side.await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn authenticates_with_username_and_password() {
        let (mut client, server) = duplex(1024);
        let mut auth = vec![1, 4];
        auth.extend_from_slice(b"user");
        auth.push(6);
        auth.extend_from_slice(b"s3cret");
        let side = tokio::spawn(proxy_side(
            server,
            vec![
                (vec![5, 2, 0, 2], vec![5, 2]),
                (auth.clone(), vec![1, 0]),
                (CONNECT_V4.to_vec(), BOUND.to_vec()),
            ],
        ));
        connect(&mut client, target(), Some(("user", "s3cret")))
            .await
            .unwrap();
        assert_eq!(side.await.unwrap()[1], auth);
    }

    #[tokio::test]
    async fn refusals_are_the_proxy_s_and_unreachable_targets_the_destination_s() {
        let cases: Vec<(Turns, bool)> = vec![
            // Bad credentials.
            (
                vec![(vec![5, 2, 0, 2], vec![5, 2]), (vec![0; 14], vec![1, 1])],
                true,
            ),
            // No acceptable method.
            (vec![(vec![5, 2, 0, 2], vec![5, 0xFF])], true),
            // Not SOCKS5 at all (an SMTP banner, say).
            (vec![(vec![5, 2, 0, 2], b"22".to_vec())], true),
            // A method we did not offer.
            (vec![(vec![5, 2, 0, 2], vec![5, 1])], true),
            // Ruleset refusal.
            (
                vec![
                    (vec![5, 2, 0, 2], vec![5, 0]),
                    (CONNECT_V4.to_vec(), vec![5, 2, 0, 1, 0, 0, 0, 0, 0, 0]),
                ],
                true,
            ),
            // The MX refused the proxy's connection.
            (
                vec![
                    (vec![5, 2, 0, 2], vec![5, 0]),
                    (CONNECT_V4.to_vec(), vec![5, 5, 0, 1, 0, 0, 0, 0, 0, 0]),
                ],
                false,
            ),
            // Host unreachable.
            (
                vec![
                    (vec![5, 2, 0, 2], vec![5, 0]),
                    (CONNECT_V4.to_vec(), vec![5, 4, 0, 1, 0, 0, 0, 0, 0, 0]),
                ],
                false,
            ),
            // A reply cut short.
            (
                vec![
                    (vec![5, 2, 0, 2], vec![5, 0]),
                    (CONNECT_V4.to_vec(), vec![5, 0, 0, 1, 1]),
                ],
                true,
            ),
            // An unknown address type in the reply.
            (
                vec![
                    (vec![5, 2, 0, 2], vec![5, 0]),
                    (CONNECT_V4.to_vec(), vec![5, 0, 0, 9, 0, 0, 0, 0, 0, 0]),
                ],
                true,
            ),
        ];
        for (n, (turns, proxy_fault)) in cases.into_iter().enumerate() {
            let (mut client, server) = duplex(1024);
            let side = tokio::spawn(async move {
                proxy_side(server, turns).await;
            });
            let err = connect(&mut client, target(), Some(("user", "password")))
                .await
                .unwrap_err();
            drop(client);
            let _ = side.await;
            assert_eq!(
                matches!(err, Socks5Error::Proxy(_)),
                proxy_fault,
                "case {n}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn ipv6_targets_and_named_bound_addresses() {
        let (mut client, server) = duplex(1024);
        let v6: SocketAddr = "[2001:db8::25]:25".parse().unwrap();
        let mut request = vec![5, 1, 0, 4];
        request.extend_from_slice(
            &"2001:db8::25"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        request.extend_from_slice(&[0, 25]);
        let mut reply = vec![5, 0, 0, 3, 5];
        reply.extend_from_slice(b"proxy");
        reply.extend_from_slice(&[0, 1]);
        let side = tokio::spawn(proxy_side(
            server,
            vec![(vec![5, 1, 0], vec![5, 0]), (request, reply)],
        ));
        let bound = connect(&mut client, v6, None).await.unwrap();
        assert_eq!(bound.port(), 1);
        side.await.unwrap();
    }
}
