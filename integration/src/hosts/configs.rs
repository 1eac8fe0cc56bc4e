//! The files of a multi-host fleet, in one state dir every host reads (the
//! namespaces share the file system): a fleet CA and certificates (the
//! cluster hostname for the MTAs, each healthd's address for its feed), the
//! fleet file, and one node config per daemon, with the real ports.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::topology::{Host, Role, Topology, HAPROXY_PORT, SOCKS5_PORT};
use crate::plan::write_private;
use crate::state::sha256_hex;

pub const ORIGIN: &str = "unmta.net";
pub const SENDER_DOMAIN: &str = "yourdomain.test";
pub const SINK_HOST: &str = "mx.sink.test";
pub const SINK_DOMAINS: [&str; 2] = ["example.com", "example.net"];
pub const SMTP_PORTS: [u16; 3] = [587, 25, 2587];
pub const HTTPS_PORT: u16 = 443;
pub const HEALTHD_PORT: u16 = 9200;
pub const ADMIN_PORT: u16 = 9300;
/// Short, so a planned stop and failover take seconds.
pub const TTL: u32 = 2;

/// The secrets and names of one fleet, kept as `hosts.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub cluster_id: String,
    pub username: String,
    pub password: String,
    pub admin_token: String,
    /// One feed token per lb-dns, in topology order.
    pub feed_tokens: Vec<String>,
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

impl Secrets {
    pub fn fresh(lb_dns: usize) -> Secrets {
        Secrets {
            cluster_id: random_hex(4),
            username: "hosts-credential".to_string(),
            password: random_hex(10),
            admin_token: random_hex(16),
            feed_tokens: (0..lb_dns).map(|_| random_hex(16)).collect(),
        }
    }

    pub fn hostname(&self) -> String {
        fleet::model::cluster_hostname(&self.cluster_id, ORIGIN)
    }
}

/// Where the files of a state dir are.
#[derive(Debug, Clone)]
pub struct Files {
    pub root: PathBuf,
}

impl Files {
    pub fn config(&self, host: &str) -> PathBuf {
        self.root.join(format!("{host}.toml"))
    }
    pub fn log(&self, host: &str) -> PathBuf {
        self.root.join("logs").join(format!("{host}.log"))
    }
    pub fn ca(&self) -> PathBuf {
        self.root.join("tls/ca.pem")
    }
    pub fn sink_dir(&self) -> PathBuf {
        self.root.join("sink")
    }
    /// A proxy host's `danted.conf` or `haproxy.cfg`.
    pub fn proxy_config(&self, host: &str) -> PathBuf {
        self.root.join(format!("{host}.proxy.conf"))
    }
    pub fn events(&self, host: &str) -> PathBuf {
        self.root.join("var").join(host).join("events.log")
    }
}

/// Writes every file of the fleet into `root`.
pub fn write_all(root: &Path, topology: &Topology, secrets: &Secrets) -> anyhow::Result<Files> {
    let files = Files {
        root: root.to_path_buf(),
    };
    for dir in ["tls", "logs", "var", "sink"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    write_certificates(&files, topology, secrets)?;
    write_private(&root.join("fleet.toml"), &fleet_toml(topology, secrets)?)?;
    for (i, host) in topology.lb_dns().into_iter().enumerate() {
        let text = lb_dns_toml(topology, host, &secrets.feed_tokens[i]);
        write_private(&files.config(&host.name), &text)?;
    }
    for host in topology.healthd() {
        let text = healthd_toml(topology, host, secrets);
        write_private(&files.config(&host.name), &text)?;
    }
    for host in topology.mtas() {
        std::fs::create_dir_all(root.join("var").join(&host.name))?;
        write_private(&files.config(&host.name), &mta_toml(topology, host))?;
    }
    for host in topology.proxies() {
        write_private(&files.proxy_config(&host.name), &proxy_config(host))?;
    }
    write_private(
        &root.join("hosts.json"),
        &serde_json::to_string_pretty(secrets)?,
    )?;
    Ok(files)
}

fn write_certificates(files: &Files, topology: &Topology, secrets: &Secrets) -> anyhow::Result<()> {
    let ca = fleet::testkit::pki::LocalCa::new(&format!(
        "unMTA hosts fleet CA {} (not for production)",
        secrets.cluster_id
    ))?;
    let tls = files.root.join("tls");
    let hostname = secrets.hostname();
    let mut names = vec![hostname];
    for mta in topology.mtas() {
        names.push(mta.ipv4.to_string());
        names.push(mta.ipv6.to_string());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    ca.write_bundle(&tls, "cluster", &names)
        .context("cannot write the cluster certificate")?;
    for healthd in topology.healthd() {
        let (v4, v6) = (healthd.ipv4.to_string(), healthd.ipv6.to_string());
        ca.write_bundle(&tls, &healthd.name, &[&v4, &v6])
            .context("cannot write a healthd certificate")?;
    }
    Ok(())
}

fn fleet_toml(topology: &Topology, secrets: &Secrets) -> anyhow::Result<String> {
    let hash = fleet::password::hash_password(&secrets.password)
        .map_err(|e| anyhow::anyhow!("cannot hash the credential's password: {e}"))?;
    let nameservers: Vec<String> = (topology.lb_dns().iter().enumerate())
        .map(|(i, h)| {
            format!(
                "{{ name = \"ns{}.{ORIGIN}\", ipv4 = \"{}\", ipv6 = \"{}\" }}",
                i + 1,
                h.ipv4,
                h.ipv6
            )
        })
        .collect();
    let smtp: Vec<String> = SMTP_PORTS.iter().map(u16::to_string).collect();
    let mut text = format!(
        "# A fleet on several hosts, written by the multi-host harness.\n\
         [zone]\norigin = \"{ORIGIN}\"\nttl = {TTL}\nmax_answers = 8\n\
         when_all_down = \"serve_all\"\nprimary_ns = \"ns1.{ORIGIN}\"\n\
         hostmaster = \"hostmaster.{ORIGIN}\"\nnameservers = [ {} ]\n\n\
         [ports]\nsmtp = [{}]\nhttps = {HTTPS_PORT}\n\n\
         [[clusters]]\nid = \"{}\"\ndomains = [\"{SENDER_DOMAIN}\"]\n\n\
         \x20 [[clusters.credentials]]\n  username = \"{}\"\n  password = \"{hash}\"\n",
        nameservers.join(", "),
        smtp.join(", "),
        secrets.cluster_id,
        secrets.username,
    );
    for mta in topology.mtas() {
        text.push_str(&format!(
            "\n  [[clusters.mtas]]\n  name = \"{}\"\n  ipv4 = \"{}\"\n  ipv6 = \"{}\"\n",
            mta.name, mta.ipv4, mta.ipv6
        ));
    }
    text.push_str(&egress_sources(topology));
    fleet::parse_fleet(&text, "the hosts fleet file")
        .map_err(|e| anyhow::anyhow!("the harness wrote an invalid fleet file: {e}"))?;
    Ok(text)
}

/// Dante leaving from its host's own address; HAProxy sending from the
/// source the PROXY header names (its own address, see [`egress_sources`]).
fn proxy_config(host: &Host) -> String {
    let v4 = std::net::IpAddr::V4(host.ipv4);
    match host.role {
        Role::HaProxy => {
            fleet::testkit::proxies::haproxy_config(std::net::SocketAddr::new(v4, HAPROXY_PORT))
        }
        _ => fleet::testkit::proxies::dante_config(
            std::net::SocketAddr::new(v4, SOCKS5_PORT),
            v4,
            false,
        ),
    }
}

/// `[[clusters.egress_sources]]`, one per proxy host (each the address
/// receivers see), and the pool of all three, equal weights.
fn egress_sources(topology: &Topology) -> String {
    let mut text = String::new();
    let mut entries = Vec::new();
    for host in topology.proxies() {
        let via = match host.role {
            Role::HaProxy => format!("ha_proxy = \"{}:{HAPROXY_PORT}\"", host.ipv4),
            _ => format!("socks5 = \"{}:{SOCKS5_PORT}\"", host.ipv4),
        };
        text.push_str(&format!(
            "\n  [[clusters.egress_sources]]\n  name = \"{name}\"\n  source_address = \"{ip}\"\n  {via}\n",
            name = host.name,
            ip = host.ipv4,
        ));
        entries.push(format!("{{ name = \"{}\" }}", host.name));
    }
    if !entries.is_empty() {
        text.push_str(&format!(
            "\n  [clusters.egress_pool]\n  name = \"proxies\"\n  entries = [{}]\n",
            entries.join(", ")
        ));
    }
    text
}

fn lb_dns_toml(topology: &Topology, host: &Host, token: &str) -> String {
    let feeds: Vec<String> = (topology.healthd().iter())
        .map(|h| format!("\"https://{}:{HEALTHD_PORT}\"", h.ipv4))
        .collect();
    format!(
        "fleet_file = \"fleet.toml\"\n\
         listen = [\"{v4}:53\", \"[{v6}]:53\"]\n\
         admin_listen = \"{v4}:{ADMIN_PORT}\"\n\
         healthd = [{feeds}]\n\
         healthd_token = \"{token}\"\n\
         healthd_ca_file = \"tls/ca.pem\"\n\
         state_file = \"var/{name}.json\"\n\
         udp_sockets = 1\n\
         shutdown_grace = \"2s\"\n",
        v4 = host.ipv4,
        v6 = host.ipv6,
        feeds = feeds.join(", "),
        name = host.name,
    )
}

fn healthd_toml(topology: &Topology, host: &Host, secrets: &Secrets) -> String {
    let mut text = format!(
        "fleet_file = \"fleet.toml\"\n\
         listen = \"{v4}:{HEALTHD_PORT}\"\n\
         ca_file = \"tls/ca.pem\"\n\
         admin_token_sha256 = \"{admin}\"\n\
         state_file = \"var/{name}.json\"\n\
         shutdown_grace = \"2s\"\n\n\
         [tls]\ncertificate = \"tls/{name}.pem\"\nkey = \"tls/{name}-key.pem\"\n",
        v4 = host.ipv4,
        admin = sha256_hex(&secrets.admin_token),
        name = host.name,
    );
    for (lb, token) in topology.lb_dns().iter().zip(&secrets.feed_tokens) {
        text.push_str(&format!(
            "\n[[followers]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\n",
            lb.name,
            sha256_hex(token)
        ));
    }
    text
}

fn mta_toml(topology: &Topology, host: &Host) -> String {
    let internet = topology.internet();
    format!(
        "fleet_file = \"fleet.toml\"\n\
         node = \"{name}\"\n\
         spool_dir = \"var/{name}/spool\"\n\
         admin_listen = \"{v4}:{ADMIN_PORT}\"\n\
         shutdown_grace = \"5s\"\n\n\
         [tls]\ncertificate = \"tls/cluster.pem\"\nkey = \"tls/cluster-key.pem\"\n\n\
         [planned_stop]\nmax_wait = \"30s\"\npoll = \"100ms\"\n\n\
         [events]\ndir = \"var/{name}/events\"\n\n\
         [delivery]\nnameservers = [\"{dns}\"]\n\
         retry_initial = \"1s\"\nretry_max = \"2s\"\ntimeout = \"10s\"\n\n\
         [delivery.egress]\nsource_backoff = \"5s\"\n",
        name = host.name,
        v4 = host.ipv4,
        dns = internet.ipv4,
    )
}
