//! What a local cluster is made of: its identity (id, credential, tokens)
//! and where everything listens. Saved as `<state-dir>/local-cluster.json`
//! so a restart with the same state dir is the same cluster.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::cli::StartArgs;

pub const PLAN_FILE: &str = "local-cluster.json";
pub const ORIGIN: &str = "unmta.net";
pub const SENDER_DOMAIN: &str = "yourdomain.test";
/// The sink MX's host name, resolved by the static DNS.
pub const SINK_HOST: &str = "mx.sink.test";
/// Recipient domains whose MX is the sink.
pub const SINK_DOMAINS: [&str; 2] = ["example.com", "example.net"];
/// The DKIM selector of the sender domain's key.
pub const DKIM_SELECTOR: &str = "s1";
/// The selector of the RSA-2048 key that signs next to the ed25519 one.
pub const DKIM_RSA_SELECTOR: &str = "r1";
/// How many MTA addresses the cluster certificate names, from the base:
/// room for `--add-mta` without a new certificate.
pub const CERT_ADDRESSES: u8 = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ports {
    pub smtp: Vec<u16>,
    pub https: u16,
    pub dns: u16,
    pub healthd: u16,
    pub lb_dns_admin: u16,
    pub mta_admin: u16,
    pub sink: u16,
    pub resolver: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            smtp: vec![10587, 10025, 12587],
            https: 10443,
            dns: 5300,
            healthd: 10920,
            lb_dns_admin: 10953,
            mta_admin: 10900,
            sink: 2526,
            resolver: 5301,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub cluster_id: String,
    pub origin: String,
    pub sender_domain: String,
    pub username: String,
    pub password: String,
    pub admin_token: String,
    pub api_token: String,
    /// lb-dns's bearer token for healthd's feed (healthd keeps its sha256).
    #[serde(default = "fresh_token")]
    pub feed_token: String,
    pub rate_limit: String,
    pub mtas: usize,
    pub address: Ipv4Addr,
    pub mta_base: Ipv4Addr,
    pub ports: Ports,
    /// With `--vault`: the OpenBao dev server's port (on `address`).
    #[serde(default)]
    pub vault_port: Option<u16>,
}

/// The OpenBao dev server's port when `--vault` names none.
pub const VAULT_PORT: u16 = 8200;

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn fresh_token() -> String {
    random_hex(16)
}

fn random_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Plan {
    /// A new cluster from the options, with fresh secrets.
    pub fn fresh(args: &StartArgs) -> Plan {
        let mut plan = Plan {
            cluster_id: random_hex(4),
            origin: ORIGIN.to_string(),
            sender_domain: SENDER_DOMAIN.to_string(),
            username: "local-credential".to_string(),
            password: random_password(),
            admin_token: random_hex(16),
            api_token: random_hex(16),
            feed_token: fresh_token(),
            rate_limit: "unlimited".to_string(),
            mtas: 3,
            address: Ipv4Addr::LOCALHOST,
            mta_base: Ipv4Addr::new(127, 0, 0, 11),
            ports: Ports::default(),
            vault_port: None,
        };
        plan.apply(args);
        plan
    }

    /// The saved plan of `state_dir`, if there is one.
    pub fn load(state_dir: &Path) -> anyhow::Result<Option<Plan>> {
        let path = state_dir.join(PLAN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{}: not a local-cluster plan", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = state_dir.join(PLAN_FILE);
        write_private(&path, &serde_json::to_string_pretty(self)?)
    }

    /// Options given on the command line win over saved ones.
    pub fn apply(&mut self, args: &StartArgs) {
        if let Some(n) = args.mtas {
            self.mtas = n;
        }
        if let Some(rate) = &args.rate_limit {
            self.rate_limit = rate.clone();
        }
        if let Some(address) = args.address {
            self.address = address;
        }
        if let Some(base) = args.mta_base {
            self.mta_base = base;
        }
        if args.vault || args.vault_port.is_some() {
            self.vault_port = Some(args.vault_port.or(self.vault_port).unwrap_or(VAULT_PORT));
        }
        let ports = &mut self.ports;
        if let Some(smtp) = &args.smtp_ports {
            ports.smtp = smtp.clone();
        }
        let pairs = [
            (args.https_port, &mut ports.https),
            (args.dns_port, &mut ports.dns),
            (args.healthd_port, &mut ports.healthd),
            (args.lb_dns_admin_port, &mut ports.lb_dns_admin),
            (args.mta_admin_port, &mut ports.mta_admin),
            (args.sink_port, &mut ports.sink),
            (args.resolver_port, &mut ports.resolver),
        ];
        for (given, port) in pairs {
            if let Some(given) = given {
                *port = given;
            }
        }
    }

    pub fn hostname(&self) -> String {
        fleet::model::cluster_hostname(&self.cluster_id, &self.origin)
    }

    /// The address of the MTA with 0-based `index`.
    pub fn mta_address(&self, index: usize) -> anyhow::Result<Ipv4Addr> {
        let [a, b, c, d] = self.mta_base.octets();
        let last = d as usize + index;
        anyhow::ensure!(
            last < 255,
            "MTA {} would need the address {a}.{b}.{c}.{last}: past the end of the /24",
            index + 1
        );
        Ok(Ipv4Addr::new(a, b, c, last as u8))
    }

    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.ports.dns))
    }

    pub fn healthd_addr(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.ports.healthd))
    }

    pub fn healthd_url(&self) -> String {
        format!("http://{}", self.healthd_addr())
    }

    pub fn lb_dns_admin_addr(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.ports.lb_dns_admin))
    }

    pub fn sink_addr(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.ports.sink))
    }

    pub fn resolver_addr(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.ports.resolver))
    }

    pub fn vault_url(&self) -> Option<String> {
        self.vault_port
            .map(|port| format!("http://{}", SocketAddr::from((self.address, port))))
    }

    pub fn mta_admin_addr(&self, mta: Ipv4Addr) -> SocketAddr {
        SocketAddr::from((mta, self.ports.mta_admin))
    }
}

/// Where a state dir keeps each kind of file.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }
    pub fn fleet_file(&self) -> PathBuf {
        self.root.join("fleet.toml")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }
    /// The cluster's certificate (`write_bundle`'s `cluster.pem`).
    pub fn cluster_cert(&self) -> PathBuf {
        self.tls_dir().join("cluster.pem")
    }
    pub fn dkim_key(&self) -> PathBuf {
        self.tls_dir().join(format!("dkim-{DKIM_SELECTOR}.pem"))
    }
    pub fn dkim_txt(&self) -> PathBuf {
        self.tls_dir().join(format!("dkim-{DKIM_SELECTOR}.txt"))
    }
    pub fn dkim_rsa_key(&self) -> PathBuf {
        self.tls_dir().join(format!("dkim-{DKIM_RSA_SELECTOR}.pem"))
    }
    pub fn dkim_rsa_txt(&self) -> PathBuf {
        self.tls_dir().join(format!("dkim-{DKIM_RSA_SELECTOR}.txt"))
    }
    pub fn config(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.toml"))
    }
    pub fn sink_dir(&self) -> PathBuf {
        self.root.join("sink")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }
    /// `--vault`: the dev server's root token and what was imported.
    pub fn vault_dir(&self) -> PathBuf {
        self.root.join("vault")
    }
    pub fn vault_token_file(&self) -> PathBuf {
        self.vault_dir().join("root-token")
    }
    pub fn vault_mta_references(&self) -> PathBuf {
        self.vault_dir().join("mta-references.json")
    }
    pub fn cluster_json(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
    pub fn requests_dir(&self) -> PathBuf {
        self.root.join("requests")
    }
}

/// Writes a file only its owner can read (it holds secrets), atomically.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    Ok(fleet::fs::replace_file(path, text.as_bytes())?)
}
