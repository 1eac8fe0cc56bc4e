//! DNS over TCP (RFC 7766): one task per connection, answering its queries
//! in order with the same synchronous `Handler` as UDP. Bounded everywhere:
//! at most `max_connections` (when full, the connection idle the longest is
//! closed to make room), a connection idle (or stuck half-way through a
//! message, or not reading its answers) for `idle` is closed, at most one
//! query is answered at a time and at most `MAX_BUFFERED` answers wait for
//! the client to read them, and running out of file descriptors makes the
//! accept loop back off instead of spinning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::metrics::Tally;
use crate::respond::{Transport, MAX_MESSAGE};

/// Answers written in one go (pipelined queries answered before the
/// client's next read); the reader stops reading until they are written.
const MAX_BUFFERED: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub idle: Duration,
}

struct Slot {
    /// Milliseconds since `Connections::epoch` of the last query.
    last: AtomicU64,
    close: CancellationToken,
}

/// The open connections, to close the idlest when full.
struct Connections {
    epoch: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Slot>>>,
    max: usize,
}

impl Connections {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection, closing the idlest one when full.
    fn admit(&self, handler: &Handler) -> (u64, Arc<Slot>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            last: AtomicU64::new(self.now()),
            close: CancellationToken::new(),
        });
        let mut open = self.open.lock();
        while open.len() >= self.max.max(1) {
            let idlest = open
                .iter()
                .min_by_key(|(_, s)| s.last.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let Some(idlest) = idlest else { break };
            if let Some(evicted) = open.remove(&idlest) {
                evicted.close.cancel();
                handler.metrics.tcp_evicted.inc();
            }
        }
        open.insert(id, slot.clone());
        handler.metrics.tcp_connections.set(open.len() as i64);
        (id, slot)
    }

    fn release(&self, id: u64, handler: &Handler) {
        let mut open = self.open.lock();
        open.remove(&id);
        handler.metrics.tcp_connections.set(open.len() as i64);
    }
}

fn out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts connections on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    limits: TcpLimits,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Connections {
        epoch: Instant::now(),
        next: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
        max: limits.max_connections,
    });
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                handler.metrics.tcp_accept_errors.inc();
                if out_of_descriptors(&error) {
                    tracing::warn!(%error, "out of file descriptors accepting DNS over TCP; backing off {backoff:?}");
                } else {
                    tracing::debug!(%error, "cannot accept a DNS connection");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let (id, slot) = connections.admit(&handler);
        let handler = handler.clone();
        let connections = connections.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = slot.close.cancelled() => {}
                _ = connection(stream, peer, &handler, &slot, &connections, limits.idle) => {}
            }
            connections.release(id, &handler);
        });
    }
    // Open connections end with the shutdown token.
}

/// Reads one length-prefixed message into `buf`; `None` at the end of the
/// stream, on a read error or after `idle`.
async fn read_message<'a>(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    buf: &'a mut [u8],
    idle: Duration,
) -> Option<&'a [u8]> {
    let read = async {
        let len = usize::from(reader.read_u16().await.ok()?);
        reader.read_exact(&mut buf[..len]).await.ok()?;
        Some(len)
    };
    let len = tokio::time::timeout(idle, read).await.ok()??;
    Some(&buf[..len])
}

fn whole_message(buffered: &[u8]) -> bool {
    buffered.len() >= 2
        && buffered.len() - 2 >= usize::from(u16::from_be_bytes([buffered[0], buffered[1]]))
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: &Handler,
    slot: &Slot,
    connections: &Connections,
    idle: Duration,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(16 * 1024, read);
    let mut query = vec![0u8; MAX_MESSAGE];
    let mut out = vec![0u8; MAX_MESSAGE];
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut buffered = 0;
    let mut tally = Tally::default();
    while let Some(message) = read_message(&mut reader, &mut query, idle).await {
        slot.last.store(connections.now(), Ordering::Relaxed);
        if let Some(reply) =
            handler.handle(message, peer.ip(), Transport::Tcp, &mut out, &mut tally)
        {
            pending.extend_from_slice(&(reply.len as u16).to_be_bytes());
            pending.extend_from_slice(&out[..reply.len]);
            buffered += 1;
        }
        // Answer now unless another whole pipelined query is already here.
        if !whole_message(reader.buffer()) || buffered >= MAX_BUFFERED {
            tally.flush(&handler.metrics);
            let written = tokio::time::timeout(idle, write.write_all(&pending)).await;
            if !matches!(written, Ok(Ok(()))) {
                break;
            }
            pending.clear();
            buffered = 0;
        }
    }
    tally.flush(&handler.metrics);
}
