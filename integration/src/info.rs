//! `<state-dir>/cluster.json`: every endpoint of a running local cluster,
//! for scripts, CI and the end-to-end tests.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::plan::{write_private, Layout, Plan, SINK_DOMAINS};
use crate::supervisor::Supervisor;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterInfo {
    pub dns: Endpoint,
    pub cluster: ClusterDetails,
    pub credential: CredentialInfo,
    pub sender_domain: String,
    /// Recipient domains whose mail lands in the sink.
    pub sink_domains: Vec<String>,
    pub ca_file: PathBuf,
    pub fleet_file: PathBuf,
    pub healthd: HealthdInfo,
    pub processes: Vec<ProcessInfo>,
    pub sink: SinkInfo,
    /// The DNS the MTAs resolve recipient domains with.
    pub resolver: Endpoint,
    pub state_dir: PathBuf,
    /// The local-cluster process that supervises the others.
    pub supervisor_pid: u32,
    /// With `--vault`: the OpenBao dev server holding every secret.
    #[serde(default)]
    pub vault: Option<VaultInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VaultInfo {
    pub address: String,
    /// The dev server's root token.
    pub token_file: PathBuf,
    /// KV v2 mount and the path under it the secrets are at.
    pub mount: String,
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterDetails {
    pub id: String,
    pub hostname: String,
    pub http_endpoint: String,
    pub smtp_host: String,
    pub smtp_ports: Vec<u16>,
    pub https_port: u16,
    pub rate_limit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CredentialInfo {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthdInfo {
    pub url: String,
    pub admin_token: String,
    pub api_token: String,
}

/// What a child of the local cluster is (`role` in cluster.json).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessRole {
    Dns,
    Sink,
    Mta,
    Healthd,
    LbDns,
}

impl ProcessRole {
    /// lb-dns, healthd and the MTAs: the daemons that reload on SIGHUP.
    pub fn is_daemon(self) -> bool {
        matches!(
            self,
            ProcessRole::Mta | ProcessRole::Healthd | ProcessRole::LbDns
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessInfo {
    pub role: ProcessRole,
    pub name: String,
    pub pid: u32,
    pub address: Ipv4Addr,
    pub admin_url: Option<String>,
    pub running: bool,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkInfo {
    pub address: Ipv4Addr,
    pub port: u16,
    pub maildir: PathBuf,
}

impl ClusterInfo {
    pub fn build(plan: &Plan, supervisor: &Supervisor, rate_limit: &str) -> ClusterInfo {
        let layout = &supervisor.layout;
        let hostname = plan.hostname();
        ClusterInfo {
            dns: Endpoint {
                address: plan.address,
                port: plan.ports.dns,
            },
            cluster: ClusterDetails {
                id: plan.cluster_id.clone(),
                http_endpoint: format!("https://{hostname}:{}/api/inject/v1", plan.ports.https),
                smtp_host: hostname.clone(),
                hostname,
                smtp_ports: plan.ports.smtp.clone(),
                https_port: plan.ports.https,
                rate_limit: rate_limit.to_string(),
            },
            credential: CredentialInfo {
                username: plan.username.clone(),
                password: plan.password.clone(),
            },
            sender_domain: plan.sender_domain.clone(),
            sink_domains: SINK_DOMAINS.iter().map(|d| d.to_string()).collect(),
            ca_file: layout.ca_file(),
            fleet_file: layout.fleet_file(),
            healthd: HealthdInfo {
                url: plan.healthd_url(),
                admin_token: plan.admin_token.clone(),
                api_token: plan.api_token.clone(),
            },
            processes: supervisor
                .children
                .iter()
                .map(|c| ProcessInfo {
                    role: c.spec.role,
                    name: c.spec.name.clone(),
                    pid: c.pid,
                    address: c.spec.address,
                    admin_url: c.spec.admin_url.clone(),
                    running: c.running,
                    log: layout.log(&c.spec.name),
                })
                .collect(),
            sink: SinkInfo {
                address: plan.address,
                port: plan.ports.sink,
                maildir: layout.sink_dir(),
            },
            resolver: Endpoint {
                address: plan.address,
                port: plan.ports.resolver,
            },
            state_dir: layout.root.clone(),
            supervisor_pid: std::process::id(),
            vault: plan.vault_url().map(|address| VaultInfo {
                address,
                token_file: layout.vault_token_file(),
                mount: crate::vault::MOUNT.to_string(),
                prefix: crate::vault::PREFIX.to_string(),
            }),
        }
    }

    pub fn load(state_dir: &Path) -> anyhow::Result<ClusterInfo> {
        let path = Layout::new(state_dir).cluster_json();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is a local-cluster running with this state dir?)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a cluster.json", path.display()))
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let path = Layout::new(&self.state_dir).cluster_json();
        write_private(&path, &serde_json::to_string_pretty(self)?)
    }

    pub fn process(&self, name: &str) -> Option<&ProcessInfo> {
        self.processes.iter().find(|p| p.name == name)
    }

    pub fn mtas(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.processes.iter().filter(|p| p.role == ProcessRole::Mta)
    }
}
