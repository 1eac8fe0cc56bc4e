//! The one way a daemon's TCP listener takes its next connection.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long a listener waits after a failed accept before the next one.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// The next connection on `listener` (named `name` in the log), with Nagle
/// off; `None` once `stop` completes. A failed accept (out of file
/// descriptors and the like) is logged and retried after a short pause: it
/// never ends the listener.
pub async fn next_connection(
    listener: &TcpListener,
    name: impl Display,
    stop: impl Future<Output = ()>,
) -> Option<(TcpStream, SocketAddr)> {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(error) => {
                tracing::warn!(listener = %name, "accept failed: {error}");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_the_next_connection_and_none_once_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, peer) = next_connection(&listener, "test", std::future::pending())
            .await
            .unwrap();
        assert_eq!(peer, client.await.unwrap().unwrap().local_addr().unwrap());
        assert!(stream.nodelay().unwrap());
        assert!(next_connection(&listener, "test", async {}).await.is_none());
    }
}
