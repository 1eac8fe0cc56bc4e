//! Which UDP socket of an address gets a datagram. With `udp_steering =
//! "cpu"` (the default) the reuseport group hands each datagram to the
//! socket of the CPU it arrived on (a classic BPF program, as the kernel's
//! `reuseport_bpf_cpu` self-test has it) and each socket's thread runs on
//! those CPUs, so a query is answered where its packet already is: the
//! thread is woken on a CPU that is awake, and the queries that arrive
//! while it waits for its turn are answered in one batch. When queries
//! queue up (`SPREAD_AT_BATCH` per wake), the group spreads datagrams by
//! flow hash over every socket and lets the threads run anywhere, as with
//! `"spread"`, and steers again once the load has fallen to half of what
//! made it spread.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
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
const TICK: Duration = Duration::from_millis(250);
/// The least time spent spreading before steering again.
const SPREAD_AT_LEAST: Duration = Duration::from_secs(1);

/// What one UDP thread has received; written by that thread only, on a
/// cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ThreadLoad {
    queries: AtomicU64,
    batches: AtomicU64,
    /// The thread's id (0 until it starts), for placing it.
    tid: AtomicI32,
}

impl ThreadLoad {
    /// Counts one `recvmmsg` that returned `received` datagrams.
    pub fn record(&self, received: usize) {
        self.queries.fetch_add(received as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
}

/// The load of a group over one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub queries_per_second: f64,
    /// Datagrams per wake of a thread: how many queries had queued up,
    /// each waiting for those before it.
    pub mean_batch: f64,
}

impl Sample {
    fn new(queries: u64, batches: u64, seconds: f64) -> Sample {
        Sample {
            queries_per_second: queries as f64 / seconds,
            mean_batch: queries as f64 / batches.max(1) as f64,
        }
    }
}

/// The mean batch at which a group spreads: by then each wake finds queries
/// that waited behind three others, on one CPU, while the others may idle.
const SPREAD_AT_BATCH: f64 = 4.0;

/// Where a group stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    ByCpu,
    /// Spreading since `since`, because at `overflow_rate` queries/s they
    /// queued up.
    Spread {
        since: Instant,
        overflow_rate: f64,
    },
}

/// The next mode after a tick's `sample`: spread once queries queue up
/// (`SPREAD_AT_BATCH`); steer again after a second once the rate is under
/// half of the one that did it.
pub fn next_mode(mode: Mode, sample: Sample, now: Instant) -> Mode {
    match mode {
        Mode::ByCpu if sample.mean_batch >= SPREAD_AT_BATCH => Mode::Spread {
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
    /// One per socket, in the order they were bound.
    threads: Vec<Arc<ThreadLoad>>,
    /// The CPUs the process could use when the group was made.
    allowed: Vec<usize>,
    state: Mutex<GroupState>,
}

#[derive(Debug)]
struct GroupState {
    mode: Mode,
    queries: u64,
    batches: u64,
    at: Instant,
}

impl Group {
    /// `sockets` steered by CPU, if `steering` asks for it and there is
    /// more than one; `None` (the kernel's flow hash) otherwise, also when
    /// the kernel refuses the program.
    pub fn for_sockets(
        sockets: &[std::net::UdpSocket],
        steering: UdpSteering,
    ) -> Option<Arc<Group>> {
        if steering != UdpSteering::Cpu || sockets.len() < 2 {
            return None;
        }
        match Group::by_cpu(sockets) {
            Ok(group) => Some(Arc::new(group)),
            Err(error) => {
                tracing::warn!(%error, "cannot steer UDP by CPU; spreading by flow hash");
                None
            }
        }
    }

    /// Steers `sockets` (one address's, in the order they were bound) by
    /// CPU. Fails if the kernel refuses the program.
    pub fn by_cpu(sockets: &[std::net::UdpSocket]) -> std::io::Result<Group> {
        let socket = sockets[0].try_clone()?;
        attach(&socket, sockets.len())?;
        Ok(Group {
            socket,
            threads: (0..sockets.len()).map(|_| Arc::default()).collect(),
            allowed: allowed_cpus()?,
            state: Mutex::new(GroupState {
                mode: Mode::ByCpu,
                queries: 0,
                batches: 0,
                at: Instant::now(),
            }),
        })
    }

    /// Called on the thread of socket `index` as it starts: places it as
    /// the mode wants, and returns where it records what it receives.
    pub fn join(&self, index: usize) -> Arc<ThreadLoad> {
        let load = self.threads[index].clone();
        // SAFETY: gettid has no preconditions.
        load.tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
        let state = self.lock();
        self.place(index, matches!(state.mode, Mode::ByCpu));
        load
    }

    /// Keeps thread `index` on the CPUs whose datagrams its socket gets
    /// (`by_cpu`), or lets it run anywhere it could.
    fn place(&self, index: usize, by_cpu: bool) {
        let tid = self.threads[index].tid.load(Ordering::Relaxed);
        if tid == 0 {
            return;
        }
        let mine: Vec<usize> = match by_cpu {
            true => cpus_of(index, self.threads.len(), &self.allowed),
            false => self.allowed.clone(),
        };
        if mine.is_empty() {
            return;
        }
        if let Err(error) = set_cpus(tid, &mine) {
            tracing::warn!(%error, "cannot place a UDP thread on CPUs {mine:?}");
        }
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
        let batches: u64 = self
            .threads
            .iter()
            .map(|t| t.batches.load(Ordering::Relaxed))
            .sum();
        let mut state = self.lock();
        let seconds = now.duration_since(state.at).as_secs_f64().max(1e-3);
        let sample = Sample::new(
            queries.saturating_sub(state.queries),
            batches.saturating_sub(state.batches),
            seconds,
        );
        (state.queries, state.batches, state.at) = (queries, batches, now);
        tracing::debug!(?sample, "UDP load");
        let next = next_mode(state.mode, sample, now);
        let changed = matches!(state.mode, Mode::ByCpu) != matches!(next, Mode::ByCpu);
        if !changed {
            state.mode = next;
            return false;
        }
        let applied = match next {
            Mode::ByCpu => attach(&self.socket, self.threads.len()),
            Mode::Spread { .. } => detach(&self.socket),
        };
        match applied {
            Ok(()) => {
                self.log_change(next, sample);
                state.mode = next;
                for index in 0..self.threads.len() {
                    self.place(index, matches!(next, Mode::ByCpu));
                }
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
                "UDP datagrams spread by flow hash: at {rate} queries/s they queue up on one CPU"
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
    // `fprog` points at `program`, which outlives the call.
    set_socket_option(socket, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// Back to the kernel's flow hash.
fn detach(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    // The option takes an int that the kernel ignores.
    set_socket_option(socket, DETACH_REUSEPORT_BPF, &0 as &libc::c_int)
}

/// Sets the `SOL_SOCKET` option `name` of `socket` to `value`.
fn set_socket_option<T>(
    socket: &std::net::UdpSocket,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is a live T and the kernel is given its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPUs among `allowed` whose datagrams socket `index` of a group of
/// `size` gets: those with `cpu % size == index`.
fn cpus_of(index: usize, size: usize, allowed: &[usize]) -> Vec<usize> {
    allowed
        .iter()
        .copied()
        .filter(|cpu| cpu % size.max(1) == index)
        .collect()
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
    set_cpus(0, cpus)
}

/// Keeps thread `tid` (0: the calling one) on `cpus`.
fn set_cpus(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; the call is given its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: the kernel's CPU numbers are below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
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

    fn sample(queries_per_second: f64, mean_batch: f64) -> Sample {
        Sample {
            queries_per_second,
            mean_batch,
        }
    }

    #[test]
    fn a_group_spreads_when_queries_queue_up_and_steers_again_when_the_load_halves() {
        let t0 = Instant::now();
        let light = next_mode(Mode::ByCpu, sample(30_000.0, 2.3), t0);
        assert_eq!(light, Mode::ByCpu, "a few queries per wake: steered");
        let spread = next_mode(Mode::ByCpu, sample(200_000.0, 4.0), t0);
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
    fn a_sample_is_the_rate_and_the_datagrams_per_wake() {
        let s = Sample::new(1_000, 400, 0.5);
        assert_eq!(s.queries_per_second, 2_000.0);
        assert_eq!(s.mean_batch, 2.5);
        assert_eq!(Sample::new(0, 0, 0.25).mean_batch, 0.0);
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

    #[test]
    fn the_cpus_of_a_socket_are_those_whose_number_leaves_its_index() {
        assert_eq!(cpus_of(1, 2, &[0, 1, 2, 3, 5]), vec![1, 3, 5]);
        assert_eq!(cpus_of(0, 4, &[2, 3]), Vec::<usize>::new());
        assert_eq!(cpus_of(0, 1, &[2, 3]), vec![2, 3]);
    }

    fn cpus_of_thread(tid: libc::pid_t) -> Vec<usize> {
        // SAFETY: cpu_set_t is plain data; the call is given its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::sched_getaffinity(tid, size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0);
        // SAFETY: every index is below CPU_SETSIZE.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    }

    #[test]
    fn an_overloaded_group_lets_its_threads_run_anywhere_and_keeps_them_again_after() {
        let (sockets, _) = group_of_two();
        let group = Arc::new(Group::by_cpu(&sockets).unwrap());
        let (joined, joined_rx) = std::sync::mpsc::channel();
        let (done, done_rx) = std::sync::mpsc::channel::<()>();
        let member = group.clone();
        let thread = std::thread::spawn(move || {
            let load = member.join(1);
            joined.send(load).unwrap();
            done_rx.recv().unwrap();
        });
        let load = joined_rx.recv().unwrap();
        let tid = load.tid.load(Ordering::Relaxed);
        let allowed = allowed_cpus().unwrap();
        let mine = match cpus_of(1, 2, &allowed) {
            cpus if cpus.is_empty() => allowed.clone(),
            cpus => cpus,
        };
        assert_eq!(cpus_of_thread(tid), mine, "kept on its CPUs");

        let t0 = Instant::now();
        for _ in 0..100 {
            load.record(5);
        }
        assert!(group.tick(t0 + TICK), "overloaded: spreads");
        assert!(!group.steered_by_cpu());
        assert_eq!(cpus_of_thread(tid), allowed, "runs anywhere while spread");

        load.record(1);
        assert!(group.tick(t0 + TICK * 8), "quiet again: steers");
        assert!(group.steered_by_cpu());
        assert_eq!(cpus_of_thread(tid), mine, "kept on its CPUs again");
        done.send(()).unwrap();
        thread.join().unwrap();
    }
}
