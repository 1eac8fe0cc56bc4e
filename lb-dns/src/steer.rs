//! Which of an address's UDP sockets the kernel hands a datagram to. The
//! sockets of one address form a SO_REUSEPORT group, one thread each. At low
//! load a classic BPF program on the group sends every datagram to the first
//! socket, so one thread takes what arrives together in one batch and the
//! others are not woken: a wake costs more than the answers (the scheduler,
//! two system calls, and a reply that wakes the client), and a query split
//! from its neighbours costs a wake of its own. When the first thread falls
//! behind (a backlog of half a batch or more twice in a row: load, or the
//! thread kept off the CPU) the program lets the kernel spread the
//! datagrams over every socket by flow hash, as without it; after a second
//! without such a backlog on any socket they are concentrated again.
//!
//! Only where a datagram waits changes; every datagram is answered the same
//! way. A kernel that refuses the program spreads by hash from the start.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Receives in a row that found a backlog after which the group spreads.
const SPREAD_AFTER: u32 = 2;
/// Time without a backlog on any socket after which it concentrates.
const CONCENTRATE_AFTER: Duration = Duration::from_secs(1);

/// The steering of one SO_REUSEPORT group.
pub struct Steering {
    /// A handle on a socket of the group (the program is the group's).
    socket: std::net::UdpSocket,
    spread: AtomicBool,
    /// When a socket of the group last had a backlog, in milliseconds since
    /// `epoch`.
    last_full: AtomicU64,
    epoch: Instant,
}

/// A receive thread's own count of receives in a row that found a backlog.
#[derive(Default)]
pub struct Streak(u32);

impl Steering {
    /// Concentrates the group that `first` (the first socket bound on its
    /// address) belongs to on `first`; `None` (the kernel spreads by hash)
    /// when the kernel refuses.
    pub fn new(first: &std::net::UdpSocket) -> Option<Arc<Steering>> {
        let steering = Steering {
            socket: first.try_clone().ok()?,
            spread: AtomicBool::new(false),
            last_full: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        match steering.attach(false) {
            Ok(()) => Some(Arc::new(steering)),
            Err(error) => {
                tracing::warn!(%error, "cannot steer UDP datagrams to one socket at low load; the kernel spreads them by flow");
                None
            }
        }
    }

    /// Whether the group is spread over every socket now.
    fn is_spread(&self) -> bool {
        self.spread.load(Ordering::Relaxed)
    }

    /// Attaches the group's program: every datagram to the first socket, or
    /// an index past the last socket, which makes the kernel pick by hash.
    fn attach(&self, spread: bool) -> std::io::Result<()> {
        let index: u32 = if spread { u32::MAX } else { 0 };
        let mut code = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: index,
        }];
        let program = libc::sock_fprog {
            len: code.len() as u16,
            filter: code.as_mut_ptr(),
        };
        // SAFETY: `program` points at `code`, both alive for the call; the
        // kernel copies the program.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_CBPF,
                (&program as *const libc::sock_fprog).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn switch(&self, spread: bool) {
        if self
            .spread
            .compare_exchange(!spread, spread, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        match self.attach(spread) {
            Ok(()) => tracing::debug!(spread, "UDP steering switched"),
            Err(error) => tracing::warn!(%error, spread, "cannot switch UDP steering"),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Told by a receive thread after each receive whether it found a
    /// backlog (half a batch or more; a timeout is none).
    pub fn after_receive(&self, backlog: bool, streak: &mut Streak) {
        if backlog {
            streak.0 += 1;
            self.last_full.store(self.now_ms(), Ordering::Relaxed);
            if streak.0 >= SPREAD_AFTER && !self.is_spread() {
                self.switch(true);
            }
            return;
        }
        streak.0 = 0;
        if self.is_spread() {
            let quiet = self
                .now_ms()
                .saturating_sub(self.last_full.load(Ordering::Relaxed));
            if quiet >= CONCENTRATE_AFTER.as_millis() as u64 {
                self.switch(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    /// Two sockets in one SO_REUSEPORT group, as `lib.rs` binds them.
    fn group() -> Vec<UdpSocket> {
        let first = crate::udp_socket("127.4.250.1:0".parse().unwrap()).unwrap();
        let second = crate::udp_socket(first.local_addr().unwrap()).unwrap();
        vec![first, second]
    }

    /// Sends one datagram from each of `clients` source ports; returns how
    /// many each socket of `group` got.
    async fn spread_of(group: &[UdpSocket], clients: usize) -> Vec<usize> {
        let to = group[0].local_addr().unwrap();
        let senders: Vec<UdpSocket> = (0..clients)
            .map(|_| UdpSocket::bind("127.4.250.2:0").unwrap())
            .collect();
        for sender in &senders {
            sender.send_to(b"query", to).unwrap();
        }
        let mut got = vec![0; group.len()];
        let mut buf = [0u8; 64];
        fleet::testkit::process::eventually(
            Duration::from_secs(10),
            "every datagram queued",
            || {
                for (socket, n) in group.iter().zip(&mut got) {
                    while socket.recv_from(&mut buf).is_ok() {
                        *n += 1;
                    }
                }
                let total: usize = got.iter().sum();
                async move { total == clients }
            },
        )
        .await
        .unwrap();
        got
    }

    #[tokio::test]
    async fn concentrated_everything_waits_on_the_first_socket_and_a_backlog_spreads() {
        let group = group();
        let steering = Steering::new(&group[0]).expect("the kernel takes the program");
        assert_eq!(spread_of(&group, 32).await, [32, 0]);

        let mut streak = Streak::default();
        steering.after_receive(true, &mut streak);
        assert!(!steering.is_spread(), "one backlog is not enough");
        steering.after_receive(true, &mut streak);
        assert!(steering.is_spread());
        let got = spread_of(&group, 32).await;
        assert!(got.iter().all(|&n| n > 0), "spread by flow: {got:?}");

        // No backlog for CONCENTRATE_AFTER: back to the first socket.
        steering.after_receive(false, &mut streak);
        assert!(steering.is_spread(), "not before CONCENTRATE_AFTER");
        fleet::testkit::process::eventually(Duration::from_secs(10), "concentrated again", || {
            steering.after_receive(false, &mut streak);
            let spread = steering.is_spread();
            async move { !spread }
        })
        .await
        .unwrap();
        assert_eq!(spread_of(&group, 32).await, [32, 0]);
    }
}
