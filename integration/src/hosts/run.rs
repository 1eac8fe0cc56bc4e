//! `local-cluster --hosts`: the multi-host fleet for a person. It builds the
//! namespaces, starts every daemon, prints the Connection Details and
//! commands to paste (run on the client host with `ip netns exec`), and on
//! Ctrl-C or SIGTERM stops everything and removes the network.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use super::configs::{self, HTTPS_PORT, SENDER_DOMAIN, SINK_DOMAINS, SMTP_PORTS};
use super::HostsFleet;

/// Starts the fleet in `state_dir` (default: a fresh temp folder) and
/// serves until Ctrl-C or SIGTERM.
pub async fn run(
    state_dir: Option<PathBuf>,
    mtas: usize,
    ready_timeout: Duration,
) -> anyhow::Result<()> {
    if let Some(reason) = super::netns::unavailable() {
        anyhow::bail!("--hosts: {reason}");
    }
    let (_temp, root) = match state_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (None, dir)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("local-cluster-hosts-")
                .tempdir()?;
            let root = temp.path().to_path_buf();
            (Some(temp), root)
        }
    };
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let fleet = HostsFleet::start(&exe, &root, mtas)?;
    let took = fleet.wait_ready(ready_timeout).await?;
    print!("{}", details(&fleet, took));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("local-cluster --hosts: stopping every process and removing the namespaces");
    drop(fleet);
    Ok(())
}

/// The Connection Details, the hosts and commands that work when pasted.
pub fn details(fleet: &HostsFleet, took: Duration) -> String {
    let s = &fleet.secrets;
    let hostname = s.hostname();
    let ports: Vec<String> = SMTP_PORTS.iter().map(u16::to_string).collect();
    let client = fleet.network.ns(&fleet.topology.client().name);
    let lb = fleet.topology.lb_dns()[0].ipv4;
    let ca = fleet.files.ca().display().to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "local-cluster --hosts: the fleet is up on {} hosts and answered by every lb-dns ({took:.1?})\n",
        fleet.topology.hosts.len()
    );
    let _ = writeln!(out, "Connection Details");
    let _ = writeln!(out, "  HTTP endpoint  https://{hostname}/api/inject/v1");
    let _ = writeln!(out, "  SMTP host      {hostname}");
    let _ = writeln!(
        out,
        "  SMTP ports     {} (STARTTLS and AUTH required on all)",
        ports.join(", ")
    );
    let _ = writeln!(out, "  Username       {}", s.username);
    let _ = writeln!(out, "  Password       {}", s.password);
    let _ = writeln!(out, "  Rate limit     unlimited per MTA");
    let _ = writeln!(
        out,
        "  Sender domain  {SENDER_DOMAIN} (mail to {} lands in the sink)\n",
        SINK_DOMAINS.join(" or ")
    );
    let _ = writeln!(out, "The hosts (one network namespace each)");
    for host in &fleet.topology.hosts {
        let _ = writeln!(
            out,
            "  {:<10} {:<24} {:<15} {}",
            host.name,
            fleet.network.ns(&host.name),
            host.ipv4,
            host.ipv6
        );
    }
    let _ = writeln!(out, "  CA             {ca}");
    let _ = writeln!(out, "  sink maildir   {}", fleet.files.sink_dir().display());
    let _ = writeln!(out, "  logs           {}/logs", fleet.files.root.display());
    let _ = writeln!(
        out,
        "  admin token    {} (healthd feeds: https://<healthd>:{}/v1/fleet)",
        s.admin_token,
        configs::HEALTHD_PORT
    );
    let on_client = format!("ip netns exec {client}");
    let first = format!("\"$({on_client} dig @{lb} {hostname} A +short | head -n1)\"");
    let _ = writeln!(out, "\nFrom the client host (paste as root):\n");
    let _ = writeln!(out, "{on_client} dig @{lb} {hostname} A +short\n");
    let _ = writeln!(
        out,
        "{on_client} swaks --server {first} --port 587 \\\n  -tls --tls-verify --tls-ca-path {ca} --tls-sni {hostname} \\\n  \
         --auth PLAIN --auth-user {} --auth-password {} \\\n  \
         --from hello@{SENDER_DOMAIN} --to someone@example.com --header 'Subject: hello from swaks'\n",
        s.username, s.password
    );
    let _ = writeln!(
        out,
        "{on_client} curl --cacert {ca} \\\n  --resolve {hostname}:{HTTPS_PORT}:{first} \\\n  \
         -u {}:{} -H 'Content-Type: application/json' \\\n  \
         -d '{{\"envelope_sender\":\"hello@{SENDER_DOMAIN}\",\"recipients\":[\"someone@example.com\"],\"content\":{{\"from\":\"hello@{SENDER_DOMAIN}\",\"subject\":\"hello from curl\",\"text_body\":\"It works.\"}}}}' \\\n  \
         https://{hostname}/api/inject/v1\n",
        s.username, s.password
    );
    let _ = writeln!(
        out,
        "Kill an MTA host: ip netns pids {} | xargs kill -9\nCtrl-C stops everything and removes the namespaces.",
        fleet.network.ns("mta-2")
    );
    out
}
