//! Which UDP socket of an address gets a datagram. With `udp_steering =
//! "cpu"` (the default) the reuseport group hands each datagram to the
//! socket of the CPU it arrived on (a classic BPF program, as the kernel's
//! `reuseport_bpf_cpu` self-test has it) and each socket's thread runs on
//! those CPUs, so a query is answered where its packet already is: the
//! thread is woken on a CPU that is awake, and the queries that arrive
//! while it waits for its turn are answered in one batch. When a socket's
//! thread cannot keep up (full batches), the group spreads datagrams by
//! flow hash over every socket, as with `"spread"`, and steers again once
//! the load has fallen to half of what overflowed it.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How datagrams are shared among an address's UDP sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpSteering {
    /// By the CPU a datagram arrives on, spreading while overloaded.
    #[default]
    Cpu,
    /// By flow hash (the kernel's default for SO_REUSEPORT).
    Spread,
}

/// `SKF_AD_OFF + SKF_AD_CPU`: classic BPF's load of the current CPU.
const LOAD_CPU: u32 = (-0x1000i32 + 36) as u32;
/// `SO_DETACH_REUSEPORT_BPF` (Linux 5.8+).
const DETACH_REUSEPORT_BPF: libc::c_int = 68;
/// How often the governor looks at the load.
pub const TICK: Duration = Duration::from_millis(250);
/// The least time spent spreading before steering again.
const SPREAD_AT_LEAST: Duration = Duration::from_secs(1);

/// What one UDP thread has received; written by that thread only, on a
/// cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ThreadLoad {
    queries: AtomicU64,
    full_batches: AtomicU64,
}

impl ThreadLoad {
    /// Counts one `recvmmsg` that returned `received` datagrams.
    pub fn record(&self, received: usize) {
        self.queries.fetch_add(received as u64, Ordering::Relaxed);
        if received >= crate::udp::BATCH {
            self.full_batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The load of a group over one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub queries_per_second: f64,
    /// The share of the datagrams that came in full batches: a thread that
    /// found its queue full each time it looked, i.e. fell behind.
    pub backlogged: f64,
}

impl Sample {
    fn new(queries: u64, full_batches: u64, batch: usize, seconds: f64) -> Sample {
        Sample {
            queries_per_second: queries as f64 / seconds,
            backlogged: (full_batches * batch as u64) as f64 / queries.max(1) as f64,
        }
    }
}

/// Where a group stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    ByCpu,
    /// Spreading since `since`, because `overflow_rate` queries/s overran
    /// one socket's thread.
    Spread {
        since: Instant,
        overflow_rate: f64,
    },
}

/// The next mode after a tick's `sample`: spread once half of the
/// datagrams came in full batches (a burst now and then is not an
/// overload); steer again after a second once the rate is under half of
/// the one that overflowed.
pub fn next_mode(mode: Mode, sample: Sample, now: Instant) -> Mode {
    match mode {
        Mode::ByCpu if sample.backlogged >= 0.5 => Mode::Spread {
            since: now,
            overflow_rate: sample.queries_per_second,
        },
        Mode::Spread {
            since,
            overflow_rate,
        } if now.duration_since(since) >= SPREAD_AT_LEAST
            && sample.queries_per_second < overflow_rate / 2.0 =>
        {
            Mode::ByCpu
        }
        other => other,
    }
}

/// The UDP sockets of one address, as the kernel shares datagrams among
/// them.
#[derive(Debug)]
pub struct Group {
    /// A handle on the group's first socket, through which the program is
    /// attached and detached.
    socket: std::net::UdpSocket,
    size: usize,
    threads: Vec<Arc<ThreadLoad>>,
    state: Mutex<GroupState>,
}

#[derive(Debug)]
struct GroupState {
    mode: Mode,
    queries: u64,
    full_batches: u64,
    at: Instant,
}

impl Group {
    /// Steers `sockets` (one address's, in the order they were bound) by
    /// CPU. Fails if the kernel refuses the program.
    pub fn by_cpu(sockets: &[std::net::UdpSocket]) -> std::io::Result<Group> {
        let socket = sockets[0].try_clone()?;
        attach(&socket, sockets.len())?;
        Ok(Group {
            socket,
            size: sockets.len(),
            threads: (0..sockets.len()).map(|_| Arc::default()).collect(),
            state: Mutex::new(GroupState {
                mode: Mode::ByCpu,
                queries: 0,
                full_batches: 0,
                at: Instant::now(),
            }),
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Where the thread of socket `index` records what it receives.
    pub fn load(&self, index: usize) -> Arc<ThreadLoad> {
        self.threads[index].clone()
    }

    pub fn steered_by_cpu(&self) -> bool {
        matches!(self.lock().mode, Mode::ByCpu)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks at the load since the last tick and changes the mode if it
    /// should; returns whether it changed.
    pub fn tick(&self, now: Instant) -> bool {
        let queries: u64 = self
            .threads
            .iter()
            .map(|t| t.queries.load(Ordering::Relaxed))
            .sum();
        let full: u64 = self
            .threads
            .iter()
            .map(|t| t.full_batches.load(Ordering::Relaxed))
            .sum();
        let mut state = self.lock();
        let seconds = now.duration_since(state.at).as_secs_f64().max(1e-3);
        let sample = Sample::new(
            queries.saturating_sub(state.queries),
            full.saturating_sub(state.full_batches),
            crate::udp::BATCH,
            seconds,
        );
        (state.queries, state.full_batches, state.at) = (queries, full, now);
        tracing::debug!(?sample, "UDP load");
        let next = next_mode(state.mode, sample, now);
        let changed = matches!(state.mode, Mode::ByCpu) != matches!(next, Mode::ByCpu);
        if !changed {
            state.mode = next;
            return false;
        }
        let applied = match next {
            Mode::ByCpu => attach(&self.socket, self.size),
            Mode::Spread { .. } => detach(&self.socket),
        };
        match applied {
            Ok(()) => {
                self.log_change(next, sample);
                state.mode = next;
                true
            }
            Err(error) => {
                let address = self.socket.local_addr().ok();
                tracing::warn!(%error, ?address, "cannot change how UDP datagrams are steered; keeping it as it is");
                false
            }
        }
    }
}

impl Group {
    fn log_change(&self, next: Mode, sample: Sample) {
        let address = self.socket.local_addr().ok();
        let rate = sample.queries_per_second.round();
        match next {
            Mode::Spread { .. } => tracing::info!(
                ?address,
                "UDP datagrams spread by flow hash: at {rate} queries/s a socket's thread could not keep up"
            ),
            Mode::ByCpu => tracing::info!(
                ?address,
                "UDP datagrams steered by CPU again: the load fell to {rate} queries/s"
            ),
        }
    }
}

/// Makes the kernel hand each datagram for `socket`'s reuseport group to
/// socket `cpu % group_size`.
fn attach(socket: &std::net::UdpSocket, group_size: usize) -> std::io::Result<()> {
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, LOAD_CPU),
        op(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            group_size as u32,
        ),
        op(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: fprog points at `program`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Back to the kernel's flow hash.
fn detach(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    let unused: libc::c_int = 0;
    // SAFETY: the option takes an int that the kernel ignores.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            DETACH_REUSEPORT_BPF,
            (&unused as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs the calling thread on the allowed CPUs `c` with `c % group_size ==
/// index`, the ones whose datagrams its socket gets; leaves it as it is if
/// there are none.
pub fn pin(index: usize, group_size: usize) -> std::io::Result<()> {
    let mine: Vec<usize> = allowed_cpus()?
        .into_iter()
        .filter(|cpu| cpu % group_size.max(1) == index)
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    run_on(&mine)
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; the call is given its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let cpus = 0..libc::CPU_SETSIZE as usize;
    // SAFETY: every index is below CPU_SETSIZE.
    Ok(cpus
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Keeps the calling thread on `cpus`.
pub fn run_on(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; the call is given its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: the kernel's CPU numbers are below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Ticks every group until `shutdown`, keeping the steering metrics.
pub async fn govern(
    groups: Vec<Arc<Group>>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        for group in &groups {
            if group.tick(now) {
                metrics.udp_steering_changes.inc();
            }
        }
        let steered = groups.iter().filter(|g| g.steered_by_cpu()).count();
        metrics.udp_steered_by_cpu.set(steered as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn sample(queries_per_second: f64, backlogged: f64) -> Sample {
        Sample {
            queries_per_second,
            backlogged,
        }
    }

    #[test]
    fn a_group_spreads_when_backlogged_and_steers_again_when_the_load_halves() {
        let t0 = Instant::now();
        let burst = next_mode(Mode::ByCpu, sample(30_000.0, 0.1), t0);
        assert_eq!(burst, Mode::ByCpu, "a burst now and then is no overload");
        let spread = next_mode(Mode::ByCpu, sample(200_000.0, 0.9), t0);
        assert!(matches!(spread, Mode::Spread { overflow_rate, .. } if overflow_rate == 200_000.0));
        let soon = t0 + Duration::from_millis(500);
        assert_eq!(
            next_mode(spread, sample(10.0, 0.0), soon),
            spread,
            "spreads at least 1 s"
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(next_mode(spread, sample(150_000.0, 0.0), later), spread);
        assert_eq!(next_mode(spread, sample(90_000.0, 0.0), later), Mode::ByCpu);
    }

    #[test]
    fn the_backlogged_share_counts_datagrams_in_full_batches() {
        let s = Sample::new(1_000, 20, 32, 0.5);
        assert_eq!(s.queries_per_second, 2_000.0);
        assert!((s.backlogged - 0.64).abs() < 1e-9);
        assert_eq!(Sample::new(0, 0, 32, 0.25).backlogged, 0.0);
    }

    /// Sends `payload` from `client` on a thread that runs on `cpu` only.
    fn send_from_cpu(client: &UdpSocket, to: std::net::SocketAddr, cpu: usize, payload: &[u8]) {
        std::thread::scope(|s| {
            s.spawn(|| {
                run_on(&[cpu]).unwrap();
                client.send_to(payload, to).unwrap();
            });
        });
    }

    /// Which of `sockets` each datagram sent lands in (waits up to 5 s).
    fn receivers(sockets: &[UdpSocket], expected: usize) -> Vec<(Vec<u8>, usize)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < expected && Instant::now() < deadline {
            for (i, socket) in sockets.iter().enumerate() {
                let mut buf = [0u8; 64];
                if let Ok(n) = socket.recv(&mut buf) {
                    got.push((buf[..n].to_vec(), i));
                }
            }
        }
        assert_eq!(got.len(), expected, "datagrams received: {got:?}");
        got.sort();
        got
    }

    fn group_of_two() -> (Vec<UdpSocket>, std::net::SocketAddr) {
        let first = crate::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = crate::udp_socket(addr).unwrap();
        (vec![first, second], addr)
    }

    #[test]
    fn datagrams_go_to_the_socket_of_the_cpu_they_arrive_on_until_spread() {
        let (sockets, addr) = group_of_two();
        let group = Group::by_cpu(&sockets).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cpus = allowed_cpus().unwrap();
        // On loopback a datagram arrives on the sender's CPU.
        for &cpu in &cpus {
            send_from_cpu(&client, addr, cpu, &[cpu as u8]);
        }
        let expected: Vec<(Vec<u8>, usize)> =
            cpus.iter().map(|&c| (vec![c as u8], c % 2)).collect();
        assert_eq!(receivers(&sockets, cpus.len()), expected);

        // Spread: one flow, one socket, whatever the CPU.
        detach(&group.socket).unwrap();
        for &cpu in &cpus {
            send_from_cpu(&client, addr, cpu, &[cpu as u8]);
        }
        let got = receivers(&sockets, cpus.len());
        assert!(got.iter().all(|(_, socket)| *socket == got[0].1), "{got:?}");
    }
}
