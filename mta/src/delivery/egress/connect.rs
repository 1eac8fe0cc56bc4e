//! Opening a TCP stream to a destination through an egress source: bound
//! to a local address, through a SOCKS5 proxy, or through HAProxy with a
//! PROXY v2 header. Every failure says whose it is.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use super::socks5::{self, Socks5Error};
use super::Route;

/// Why no stream to the destination was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The source failed (its proxy is down or refuses, its address is
    /// not on this host): take it out for a while, use another.
    Source(String),
    /// The destination cannot be reached this way: try its next address.
    Destination(String),
}

/// A stream to `target`, directly (no route) or through `route`, its
/// set-up bounded by `timeout`.
pub async fn open(
    route: Option<&Route>,
    target: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, OpenError> {
    let opening = async {
        match route {
            None => TcpStream::connect(target)
                .await
                .map_err(|e| OpenError::Destination(format!("cannot connect to {target}: {e}"))),
            Some(Route::Direct { bind }) => bound(*bind, target).await,
            Some(Route::Socks5 { proxy, auth }) => {
                let mut stream = to_proxy(proxy, "SOCKS5").await?;
                let auth = auth.as_ref().map(|(u, p)| (u.as_str(), p.expose()));
                match socks5::connect(&mut stream, target, auth).await {
                    Ok(_) => Ok(stream),
                    Err(Socks5Error::Proxy(why)) => Err(OpenError::Source(format!(
                        "SOCKS5 proxy {}: {why}",
                        proxy.0
                    ))),
                    Err(Socks5Error::Destination(why)) => Err(OpenError::Destination(why)),
                }
            }
            Some(Route::HaProxy { proxy, source }) => {
                let Some(header) = super::proxy_v2::header(*source, target) else {
                    return Err(family_mismatch(*source, target));
                };
                let mut stream = to_proxy(proxy, "HAProxy").await?;
                stream.write_all(&header).await.map_err(|e| {
                    OpenError::Source(format!("cannot write to HAProxy {}: {e}", proxy.0))
                })?;
                Ok(stream)
            }
        }
    };
    match tokio::time::timeout(timeout, opening).await {
        Ok(result) => result,
        Err(_) => Err(match route {
            None | Some(Route::Direct { .. }) => {
                OpenError::Destination(format!("no connection to {target} within {timeout:?}"))
            }
            Some(_) => OpenError::Source(format!(
                "the proxy did not open a connection to {target} within {timeout:?}"
            )),
        }),
    }
    .inspect(|stream| {
        let _ = stream.set_nodelay(true);
    })
}

fn family_mismatch(source: IpAddr, target: SocketAddr) -> OpenError {
    OpenError::Destination(format!(
        "source address {source} cannot reach {target} (another address family)"
    ))
}

async fn bound(bind: IpAddr, target: SocketAddr) -> Result<TcpStream, OpenError> {
    let socket = match (bind, target) {
        (IpAddr::V4(_), SocketAddr::V4(_)) => TcpSocket::new_v4(),
        (IpAddr::V6(_), SocketAddr::V6(_)) => TcpSocket::new_v6(),
        _ => return Err(family_mismatch(bind, target)),
    }
    .map_err(|e| OpenError::Source(format!("cannot make a socket: {e}")))?;
    socket
        .bind(SocketAddr::new(bind, 0))
        .map_err(|e| OpenError::Source(format!("cannot bind source address {bind}: {e}")))?;
    socket
        .connect(target)
        .await
        .map_err(|e| OpenError::Destination(format!("cannot connect to {target} from {bind}: {e}")))
}

async fn to_proxy(proxy: &(String, u16), kind: &str) -> Result<TcpStream, OpenError> {
    let (host, port) = (proxy.0.as_str(), proxy.1);
    TcpStream::connect((host, port)).await.map_err(|e| {
        OpenError::Source(format!("cannot connect to {kind} proxy {host}:{port}: {e}"))
    })
}
