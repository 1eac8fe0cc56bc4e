//! A network of Linux network namespaces: one per host, each with `lo` and
//! `eth0`, every `eth0` a veth whose peer sits on a bridge inside a switch
//! namespace of its own. The root namespace is never attached: no host has
//! a route to the machine's network. Dropping the [`Network`] kills every
//! process in its namespaces and deletes them (also after a failed test);
//! namespaces left by a process that died are removed by the next one.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Every namespace name starts with this, then the creating pid.
pub const NAME_PREFIX: &str = "unmta";

static NETWORKS: AtomicUsize = AtomicUsize::new(0);

/// Why the harness cannot run here, if it cannot (not root, no `ip`).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the multi-host harness needs root (network namespaces)".to_string());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("the multi-host harness needs `ip` (iproute2)".to_string()),
    }
}

/// Runs `program args`, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    stdout_of(Command::new(program).args(args))
}

/// Runs `command` to its end: its stdout, or an error naming the command
/// with its stderr.
pub fn stdout_of(command: &mut Command) -> anyhow::Result<String> {
    let out = (command.output()).with_context(|| format!("cannot run {command:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{command:?}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// One network: its switch and its hosts, removed on drop.
pub struct Network {
    pub prefix: String,
    switch: String,
    hosts: Vec<String>,
}

impl Network {
    /// A new, empty network with a unique name prefix.
    pub fn new() -> anyhow::Result<Network> {
        remove_orphans();
        let prefix = format!(
            "{NAME_PREFIX}{}n{}",
            std::process::id(),
            NETWORKS.fetch_add(1, Ordering::SeqCst)
        );
        let switch = format!("{prefix}-sw");
        let network = Network {
            prefix,
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        Ok(network)
    }

    /// The namespace name of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Adds `host` with `addresses` (with their prefix lengths) on `eth0`,
    /// and an on-link route to every prefix in `routes`.
    pub fn add_host(
        &mut self,
        host: &str,
        addresses: &[(IpAddr, u8)],
        routes: &[&str],
    ) -> anyhow::Result<()> {
        let ns = self.ns(host);
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        let peer = format!("v-{host}");
        anyhow::ensure!(peer.len() <= 15, "host name `{host}` is too long");
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.switch,
        ])?;
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &peer,
            "master",
            "br0",
            "up",
        ])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        for (address, len) in addresses {
            let cidr = format!("{address}/{len}");
            match address {
                IpAddr::V4(_) => ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?,
                IpAddr::V6(_) => ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0", "nodad"])?,
            };
        }
        for route in routes {
            let family = if route.contains(':') { "-6" } else { "-4" };
            // The host's own prefix already has its route.
            let _ = ip(&["-n", &ns, family, "route", "add", route, "dev", "eth0"]);
        }
        Ok(())
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(host), program]);
        command
    }

    /// Starts `program args` in `host`, output appended to `log`.
    pub fn spawn(
        &self,
        host: &str,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> anyhow::Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        self.command(host, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {program} in {host}"))
    }

    /// Every process in `host`'s namespace.
    pub fn pids(&self, host: &str) -> Vec<i32> {
        pids(&self.ns(host))
    }

    /// `kill -<signal>` of every process in `host` (a host dying: 9).
    pub fn kill_all(&self, host: &str, signal: i32) -> usize {
        kill_all(&self.ns(host), signal)
    }

    /// Drops every packet from `host` to `to` (a partition, one way; the
    /// replies of the other side never come back either).
    pub fn blackhole(&self, host: &str, to: IpAddr) -> anyhow::Result<()> {
        self.blackhole_route("add", host, to)
    }

    /// Ends a [`Network::blackhole`].
    pub fn heal(&self, host: &str, to: IpAddr) -> anyhow::Result<()> {
        self.blackhole_route("del", host, to)
    }

    /// `ip route add|del blackhole <to>` in `host`'s namespace.
    fn blackhole_route(&self, verb: &str, host: &str, to: IpAddr) -> anyhow::Result<()> {
        let family = if to.is_ipv6() { "-6" } else { "-4" };
        let (ns, target) = (self.ns(host), to.to_string());
        ip(&["-n", &ns, family, "route", verb, "blackhole", &target]).map(|_| ())
    }
}

fn pids(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill_all(ns: &str, signal: i32) -> usize {
    let pids = pids(ns);
    for &pid in &pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
    }
    pids.len()
}

/// Kills every process of `ns`, waits (bounded) until none is left, and
/// deletes it.
fn remove(ns: &str) {
    kill_all(ns, libc::SIGKILL);
    let start = Instant::now();
    while !pids(ns).is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("netns harness: {e:#}");
    }
}

/// Removes the namespaces of harness processes that are gone.
fn remove_orphans() {
    let listed = ip(&["netns", "list"]).unwrap_or_default();
    for line in listed.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            remove(name);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.hosts.iter().rev() {
            remove(ns);
        }
        remove(&self.switch);
    }
}
