//! The UDP path: one thread per socket (several sockets per address with
//! SO_REUSEPORT), as gdnsd does. Each thread blocks in `recvmmsg` for the
//! first datagram and takes whatever else is queued (up to `BATCH`), answers
//! each with the synchronous `Handler` into its own reply buffer, and sends
//! the replies with one `sendmmsg`. No task hand-off, no allocation, no lock.
//!
//! Datagrams shorter than a header, responses sent to us (reflection),
//! sources with port 0 and datagrams longer than `IN_SIZE` get nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::handler::Handler;
use crate::metrics::Tally;
use crate::respond::{Transport, EDNS_PAYLOAD, MAX_MESSAGE};
use crate::steer::ThreadLoad;

/// Datagrams taken per system call.
pub const BATCH: usize = 32;
/// The largest query read; longer ones are dropped.
const IN_SIZE: usize = 4096;
/// The largest UDP reply (the EDNS payload we announce).
const OUT_SIZE: usize = EDNS_PAYLOAD as usize;
/// How often a receive loop looks at the shutdown token while idle.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// The reply to one datagram, if it deserves one (for tests and tools; the
/// receive loop answers in place).
pub fn answer(handler: &Handler, datagram: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let mut out = vec![0u8; MAX_MESSAGE];
    let mut tally = Tally::default();
    let reply = handler.handle(datagram, src.ip(), Transport::Udp, &mut out, &mut tally)?;
    tally.flush(&handler.metrics);
    out.truncate(reply.len);
    Some(out)
}

/// The buffers and headers of one batch; boxed so the pointers between
/// them stay put.
struct Batch {
    input: Vec<u8>,
    output: Vec<u8>,
    addrs: [libc::sockaddr_storage; BATCH],
    in_iov: [libc::iovec; BATCH],
    out_iov: [libc::iovec; BATCH],
    in_msgs: [libc::mmsghdr; BATCH],
    out_msgs: [libc::mmsghdr; BATCH],
}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY: all-zero is a valid value for these C structs.
        let mut b = Box::new(Batch {
            input: vec![0u8; IN_SIZE * BATCH],
            output: vec![0u8; OUT_SIZE * BATCH],
            addrs: unsafe { std::mem::zeroed() },
            in_iov: unsafe { std::mem::zeroed() },
            out_iov: unsafe { std::mem::zeroed() },
            in_msgs: unsafe { std::mem::zeroed() },
            out_msgs: unsafe { std::mem::zeroed() },
        });
        for i in 0..BATCH {
            b.in_iov[i].iov_base = b.input[i * IN_SIZE..].as_mut_ptr().cast();
            b.in_iov[i].iov_len = IN_SIZE;
            b.out_iov[i].iov_base = b.output[i * OUT_SIZE..].as_mut_ptr().cast();
        }
        b.reset_inputs();
        b
    }

    /// Points every input header at its buffer and address again (the
    /// kernel overwrites lengths).
    fn reset_inputs(&mut self) {
        for i in 0..BATCH {
            let hdr = &mut self.in_msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.in_iov[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.in_msgs[i].msg_len = 0;
        }
    }
}

fn source(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let a = unsafe { &*(addr as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let a = unsafe { &*(addr as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

/// Answers the `received` datagrams of `b`; returns how many replies it
/// prepared in `out_msgs`.
fn answer_batch(b: &mut Batch, received: usize, handler: &Handler, tally: &mut Tally) -> usize {
    let mut replies = 0;
    for i in 0..received {
        let msg = &b.in_msgs[i];
        let len = msg.msg_len as usize;
        if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            continue;
        }
        let Some(src) = source(&b.addrs[i]) else {
            continue;
        };
        if src.port() == 0 || src.ip().is_unspecified() {
            continue;
        }
        let (input, output) = (&b.input[i * IN_SIZE..i * IN_SIZE + len], &mut b.output);
        let out = &mut output[i * OUT_SIZE..(i + 1) * OUT_SIZE];
        let Some(reply) = handler.handle(input, src.ip(), Transport::Udp, out, tally) else {
            continue;
        };
        b.out_iov[i].iov_len = reply.len;
        let hdr = &mut b.out_msgs[replies].msg_hdr;
        hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = b.in_msgs[i].msg_hdr.msg_namelen;
        hdr.msg_iov = &mut b.out_iov[i];
        hdr.msg_iovlen = 1;
        replies += 1;
    }
    replies
}

fn send_all(fd: i32, b: &mut Batch, count: usize) {
    let mut sent = 0;
    while sent < count {
        // SAFETY: out_msgs[sent..count] point into `b`, alive and unmoved.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                b.out_msgs[sent..].as_mut_ptr(),
                (count - sent) as libc::c_uint,
                0,
            )
        };
        if n <= 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // That reply cannot go (e.g. the peer's address is unreachable).
            tracing::debug!(%error, "UDP send error");
            sent += 1;
        } else {
            sent += n as usize;
        }
    }
}

/// Answers datagrams on `socket` until `shutdown`, on a thread of its own.
/// `load`, if the socket's group is steered, gets what it receives.
pub fn serve(
    socket: std::net::UdpSocket,
    handler: Arc<Handler>,
    load: Option<Arc<ThreadLoad>>,
    shutdown: CancellationToken,
) {
    if let Err(error) = socket
        .set_nonblocking(false)
        .and_then(|()| socket.set_read_timeout(Some(IDLE_CHECK)))
    {
        tracing::error!(%error, "cannot set up a UDP socket; it will not be served");
        return;
    }
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    let mut tally = Tally::default();
    while !shutdown.is_cancelled() {
        batch.reset_inputs();
        // SAFETY: in_msgs point into `batch`, alive and unmoved.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                batch.in_msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let received = usize::try_from(n).unwrap_or(0);
        if received == 0 {
            // Timeouts, interruptions, and ICMP errors from earlier replies
            // surface here; the socket itself is fine.
            tally.flush(&handler.metrics);
            continue;
        }
        if let Some(load) = &load {
            load.record(received);
        }
        let replies = answer_batch(&mut batch, received, &handler, &mut tally);
        send_all(fd, &mut batch, replies);
        if received < BATCH {
            // The queue is empty: counters up to date before waiting.
            tally.flush(&handler.metrics);
        }
    }
    tally.flush(&handler.metrics);
}
