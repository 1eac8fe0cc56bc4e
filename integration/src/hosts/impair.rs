//! Loss and latency on the links to some hosts: `tc netem` on their `eth0`
//! where the kernel has it; else (kernels without `sch_netem`) the same
//! impairment in user space on the client's side: its packets to those
//! hosts are routed into a TUN device, dropped at random or held for the
//! delay, and written back to be forwarded out of `eth0`.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;

use super::netns::{run, Network};

const TUN: &str = "impair0";
const TABLE: &str = "100";

/// How the impairment was made, and how to undo it.
pub enum Impairment {
    Netem {
        namespaces: Vec<String>,
    },
    Tun {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl Impairment {
    pub fn describe(&self) -> &'static str {
        match self {
            Impairment::Netem { .. } => "tc netem on the lb-dns hosts' links",
            Impairment::Tun { .. } => {
                "user-space impairment on the client's link to lb-dns (no sch_netem in this kernel)"
            }
        }
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        match self {
            Impairment::Netem { namespaces } => {
                for ns in namespaces {
                    let _ = run(
                        "ip",
                        &[
                            "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                        ],
                    );
                }
            }
            Impairment::Tun { stop, thread } => {
                stop.store(true, Ordering::SeqCst);
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// `loss` (0..1) and `delay` on every packet between `client` and `hosts`.
pub fn impair(
    network: &Network,
    client: (&str, Ipv4Addr),
    hosts: &[(&str, Ipv4Addr)],
    loss: f64,
    delay: Duration,
) -> anyhow::Result<Impairment> {
    let netem = [
        "delay".to_string(),
        format!("{}ms", delay.as_millis()),
        "loss".to_string(),
        format!("{}%", loss * 100.0),
    ];
    let mut namespaces = Vec::new();
    for (host, _) in hosts {
        let ns = network.ns(host);
        let mut args = vec![
            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
        ];
        args.extend(netem.iter().map(String::as_str));
        if run("ip", &args).is_err() {
            drop(Impairment::Netem { namespaces });
            return tun(network, client, hosts, loss, delay);
        }
        namespaces.push(ns);
    }
    Ok(Impairment::Netem { namespaces })
}

fn tun(
    network: &Network,
    (client, source): (&str, Ipv4Addr),
    hosts: &[(&str, Ipv4Addr)],
    loss: f64,
    delay: Duration,
) -> anyhow::Result<Impairment> {
    let ns = network.ns(client);
    let path = format!("/var/run/netns/{ns}");
    // The device is created by a thread inside the client's namespace.
    let (created, device) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::spawn(move || {
        let file = match enter(&path).and_then(|()| open_tun()) {
            Ok(file) => {
                let _ = created.send(Ok(()));
                file
            }
            Err(e) => {
                let _ = created.send(Err(e));
                return;
            }
        };
        relay(file, loss, delay, &stopping);
    });
    device
        .recv()
        .context("the impairment thread ended before its TUN device existed")??;
    let sh = |script: &str| run("ip", &["netns", "exec", &ns, "sh", "-c", script]);
    sh(&format!(
        "echo 1 > /proc/sys/net/ipv4/ip_forward && \
         echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter && \
         echo 0 > /proc/sys/net/ipv4/conf/{TUN}/rp_filter && \
         echo 1 > /proc/sys/net/ipv4/conf/{TUN}/accept_local"
    ))?;
    run("ip", &["-n", &ns, "link", "set", TUN, "up"])?;
    let src = source.to_string();
    run(
        "ip",
        &[
            "-n", &ns, "route", "add", "default", "dev", TUN, "src", &src, "table", TABLE,
        ],
    )?;
    for (_, address) in hosts {
        let to = format!("{address}/32");
        run(
            "ip",
            &[
                "-n", &ns, "rule", "add", "to", &to, "iif", "lo", "table", TABLE,
            ],
        )?;
    }
    Ok(Impairment::Tun {
        stop,
        thread: Some(thread),
    })
}

fn enter(path: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: a valid namespace fd; setns affects only this thread.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    anyhow::ensure!(result == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Opens a TUN device named [`TUN`] (no packet information header),
/// non-blocking.
fn open_tun() -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut request = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    request.name[..TUN.len()].copy_from_slice(TUN.as_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: TUNSETIFF reads an ifreq, which IfReq lays out.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
    anyhow::ensure!(
        result == 0,
        "TUNSETIFF: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(file)
}

/// Reads packets, drops `loss` of them, writes the rest back after `delay`.
fn relay(mut file: std::fs::File, loss: f64, delay: Duration, stop: &AtomicBool) {
    // SAFETY: a second handle on the same fd, used only for writing.
    let mut writer = unsafe { std::fs::File::from_raw_fd(libc::dup(file.as_raw_fd())) };
    let mut held: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut buf = vec![0u8; 65536];
    let mut rng = rand::rng();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, packet)) = held.pop_front() {
                let _ = writer.write_all(&packet);
            }
        }
        let wait = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let mut poll = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut poll, 1, wait.as_millis().max(1) as i32) };
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            if !rng.random_bool(loss) {
                held.push_back((Instant::now() + delay, buf[..n].to_vec()));
            }
        }
    }
}
