//! A fleet on several hosts: the network, the files, and one process per
//! daemon in its host's namespace (this executable, `local-cluster`,
//! re-executed as `daemon mta`, `sink`, `dns`, ...).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::RecordType;
use parking_lot::Mutex;

use super::configs::{self, Files, Secrets};
use super::netns::Network;
use super::topology::{Host, Role, Topology};

/// The running fleet; dropping it stops every process and removes the
/// network.
pub struct HostsFleet {
    pub topology: Topology,
    pub secrets: Secrets,
    pub files: Files,
    bin: PathBuf,
    children: Mutex<HashMap<String, Vec<Child>>>,
    // Dropped last: kills whatever is left in the namespaces.
    pub network: Network,
}

impl HostsFleet {
    /// Builds the network, writes the files into `root` and starts every
    /// daemon with `bin` (the `local-cluster` executable).
    pub fn start(bin: &Path, root: &Path, mtas: usize) -> anyhow::Result<HostsFleet> {
        let topology = Topology::new(mtas);
        let mut network = Network::new()?;
        for host in &topology.hosts {
            network.add_host(&host.name, &host.addresses(), &super::topology::ROUTES)?;
        }
        let secrets = Secrets::fresh(topology.lb_dns().len());
        let files = configs::write_all(root, &topology, &secrets)?;
        let fleet = HostsFleet {
            topology,
            secrets,
            files,
            bin: bin.to_path_buf(),
            children: Mutex::new(HashMap::new()),
            network,
        };
        let names: Vec<String> = fleet
            .topology
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .collect();
        for name in names {
            fleet.start_host(&name)?;
        }
        Ok(fleet)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.topology
            .host(name)
            .unwrap_or_else(|| panic!("no host named {name}"))
    }

    /// Starts what runs on host `name` (after it died or stopped).
    pub fn start_host(&self, name: &str) -> anyhow::Result<()> {
        let host = self.host(name).clone();
        let log = self.files.log(name);
        let config = self.files.config(name);
        let config = config.to_string_lossy();
        let bin = self.bin.to_string_lossy();
        let mut started = Vec::new();
        let daemon = |role: &str| -> anyhow::Result<Child> {
            self.network
                .spawn(name, &bin, &["daemon", role, "--config", &config], &log)
        };
        match host.role {
            Role::LbDns => started.push(daemon("lb-dns")?),
            Role::Healthd => started.push(daemon("healthd")?),
            Role::Mta => started.push(daemon("mta")?),
            Role::Internet => {
                let sink = format!("{}:25", host.ipv4);
                let dns = format!("{}:53", host.ipv4);
                let maildir = self.files.sink_dir();
                let maildir = maildir.to_string_lossy();
                let sink_args = ["sink", "--listen", &sink, "--maildir", &maildir];
                started.push(self.network.spawn(name, &bin, &sink_args, &log)?);
                let mut dns_args = vec!["dns".to_string(), "--listen".into(), dns];
                for domain in configs::SINK_DOMAINS {
                    dns_args.push("--mx".into());
                    dns_args.push(format!("{domain}={}", configs::SINK_HOST));
                }
                dns_args.push("--a".into());
                dns_args.push(format!("{}={}", configs::SINK_HOST, host.ipv4));
                let dns_args: Vec<&str> = dns_args.iter().map(String::as_str).collect();
                started.push(self.network.spawn(name, &bin, &dns_args, &log)?);
            }
            Role::Socks5 | Role::HaProxy => {
                let config = self.files.proxy_config(name);
                let config = config.to_string_lossy();
                let (program, args) = match host.role {
                    Role::HaProxy => ("haproxy", vec!["-f", &*config, "-db"]),
                    _ => ("danted", vec!["-f", &*config, "-N", "1"]),
                };
                started.push(self.network.spawn(name, program, &args, &log)?);
            }
            Role::Client => {}
        }
        self.children.lock().insert(name.to_string(), started);
        Ok(())
    }

    /// `kill -9` of every process on host `name`: the host dies.
    pub fn kill_host(&self, name: &str) -> usize {
        let killed = self.network.kill_all(name, libc::SIGKILL);
        if let Some(children) = self.children.lock().remove(name) {
            for mut child in children {
                let _ = child.wait();
            }
        }
        killed
    }

    /// SIGTERM to the daemons of host `name`; waits (bounded) for them to
    /// exit and returns how long that took and whether all exited 0.
    pub fn stop_host(&self, name: &str, bound: Duration) -> anyhow::Result<(Duration, bool)> {
        let start = Instant::now();
        let mut children = self.children.lock().remove(name).unwrap_or_default();
        for child in &children {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let mut clean = true;
        for child in &mut children {
            loop {
                if let Some(status) = child.try_wait()? {
                    clean &= status.success();
                    break;
                }
                if start.elapsed() > bound {
                    let _ = child.kill();
                    let _ = child.wait();
                    anyhow::bail!("{name} did not stop within {bound:?} of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok((start.elapsed(), clean))
    }

    /// What lb-dns `lb` answers for the cluster hostname (A and AAAA), asked
    /// from the client host; `None` without an answer within a second.
    pub async fn answers(&self, lb: &str) -> Option<BTreeSet<IpAddr>> {
        let server = std::net::SocketAddr::new(IpAddr::V4(self.host(lb).ipv4), 53);
        let name = format!("{}.", self.secrets.hostname());
        let ns = self.network.ns(&self.topology.client().name);
        super::inside::run_in(&ns, move || async move {
            let mut all = BTreeSet::new();
            for qtype in [RecordType::A, RecordType::AAAA] {
                let answer = mta::planned_stop::ask(server, &name, qtype)
                    .await
                    .ok_or_else(|| anyhow::anyhow!("no answer"))?;
                all.extend(answer);
            }
            Ok(all)
        })
        .await
        .ok()
    }

    /// Every address (v4 and v6) of the MTAs named.
    pub fn addresses_of(&self, mtas: &[&str]) -> BTreeSet<IpAddr> {
        mtas.iter()
            .flat_map(|m| {
                let h = self.host(m);
                [IpAddr::V4(h.ipv4), IpAddr::V6(h.ipv6)]
            })
            .collect()
    }

    /// Waits until every lb-dns answers exactly `expected`; returns how long.
    pub async fn wait_answers(
        &self,
        expected: &BTreeSet<IpAddr>,
        bound: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let mut all = true;
            let mut seen = Vec::new();
            for lb in self.topology.lb_dns() {
                let answers = self.answers(&lb.name).await;
                all &= answers.as_ref() == Some(expected);
                seen.push((lb.name.clone(), answers));
            }
            if all {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < bound,
                "lb-dns did not answer {expected:?} within {bound:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The state healthd `hd` reports for `mta` (`up`, `down`, ...), read
    /// from its HTTPS feed with the admin token, from the client host.
    pub async fn healthd_state(&self, hd: &str, mta: &str) -> Option<String> {
        let url = format!(
            "https://{}:{}/v1/fleet",
            self.host(hd).ipv4,
            configs::HEALTHD_PORT
        );
        let token = self.secrets.admin_token.clone();
        let ca = std::fs::read(self.files.ca()).ok()?;
        let mta = mta.to_string();
        let ns = self.network.ns(&self.topology.client().name);
        super::inside::run_in(&ns, move || async move {
            let client = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
                .timeout(Duration::from_secs(3))
                .build()?;
            let feed: fleet::feed::FleetHealth = (client.get(url).bearer_auth(token).send())
                .await?
                .error_for_status()?
                .json()
                .await?;
            let state = (feed.clusters.iter().flat_map(|c| c.mtas.iter()))
                .find(|m| m.name == mta)
                .map(|m| m.state.as_str().to_string());
            state.ok_or_else(|| anyhow::anyhow!("{mta} is not in the feed"))
        })
        .await
        .ok()
    }

    /// Waits until every healthd sees every MTA up and every lb-dns
    /// answers them all; returns how long that took.
    pub async fn wait_ready(&self, bound: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.wait_proxies(bound).await?;
        let mtas: Vec<String> = self
            .topology
            .mtas()
            .iter()
            .map(|m| m.name.clone())
            .collect();
        for hd in self.topology.healthd() {
            for mta in &mtas {
                while self.healthd_state(&hd.name, mta).await.as_deref() != Some("up") {
                    anyhow::ensure!(
                        start.elapsed() < bound,
                        "{} did not see {mta} up within {bound:?}",
                        hd.name
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let names: Vec<&str> = mtas.iter().map(String::as_str).collect();
        let all = self.addresses_of(&names);
        self.wait_answers(&all, bound.saturating_sub(start.elapsed()))
            .await?;
        Ok(start.elapsed())
    }

    /// Waits until every proxy host accepts connections on its port,
    /// tried from the client host.
    pub async fn wait_proxies(&self, bound: Duration) -> anyhow::Result<()> {
        let ns = self.network.ns(&self.topology.client().name);
        let targets: Vec<(String, std::net::SocketAddr)> = (self.topology.proxies().iter())
            .map(|h| {
                let port = match h.role {
                    Role::HaProxy => super::topology::HAPROXY_PORT,
                    _ => super::topology::SOCKS5_PORT,
                };
                (
                    h.name.clone(),
                    std::net::SocketAddr::new(IpAddr::V4(h.ipv4), port),
                )
            })
            .collect();
        super::inside::run_in(&ns, move || async move {
            let start = Instant::now();
            for (name, target) in targets {
                while tokio::net::TcpStream::connect(target).await.is_err() {
                    anyhow::ensure!(
                        start.elapsed() < bound,
                        "proxy host {name} does not listen on {target} within {bound:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Ok(())
        })
        .await
    }

    /// Every message file at the sink, as text.
    pub fn sink_messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.files.sink_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect()
    }

    /// The last lines of host `name`'s log, for a failure's report.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.files.log(name)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for HostsFleet {
    fn drop(&mut self) {
        for (_, children) in self.children.lock().drain() {
            for mut child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
