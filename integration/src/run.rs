//! A local cluster's life: prepare the state dir, start every process,
//! wait until the fleet is healthy and answered, write cluster.json, then
//! supervise until SIGINT or SIGTERM and stop everything.

use parking_lot::Mutex;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::StartArgs;
use crate::info::{ClusterInfo, ProcessRole};
use crate::ops::{self, Request};
use crate::plan::{Layout, Plan, SINK_DOMAINS, SINK_HOST};
use crate::ready::Expectation;
use crate::state::{self, MtaEntry};
use crate::supervisor::{send_signal, Spec, Supervisor};

const STOP_GRACE: Duration = Duration::from_secs(20);
const RESTART_GRACE: Duration = Duration::from_secs(15);

fn os(items: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    items.iter().map(|i| i.as_ref().to_os_string()).collect()
}

pub fn mta_spec(plan: &Plan, layout: &Layout, mta: &MtaEntry) -> Spec {
    Spec {
        role: ProcessRole::Mta,
        name: mta.name.clone(),
        address: mta.ipv4,
        admin_url: Some(format!("http://{}", plan.mta_admin_addr(mta.ipv4))),
        args: os(&[&"daemon", &"mta", &"--config", &layout.config(&mta.name)]),
    }
}

/// Every child, in start order.
fn specs(plan: &Plan, layout: &Layout, mtas: &[MtaEntry]) -> Vec<Spec> {
    let mut dns_args = os(&[&"dns", &"--listen", &plan.resolver_addr().to_string()]);
    for domain in SINK_DOMAINS {
        dns_args.push("--mx".into());
        dns_args.push(format!("{domain}={SINK_HOST}").into());
    }
    dns_args.push("--a".into());
    dns_args.push(format!("{SINK_HOST}={}", plan.address).into());
    for (selector, txt) in state::dkim_records(layout) {
        dns_args.push("--txt".into());
        dns_args.push(format!("{selector}._domainkey.{}={txt}", plan.sender_domain).into());
    }
    let mut specs = vec![
        Spec {
            role: ProcessRole::Dns,
            name: "dns".into(),
            address: plan.address,
            admin_url: None,
            args: dns_args,
        },
        Spec {
            role: ProcessRole::Sink,
            name: "sink".into(),
            address: plan.address,
            admin_url: None,
            args: os(&[
                &"sink",
                &"--listen",
                &plan.sink_addr().to_string(),
                &"--maildir",
                &layout.sink_dir(),
            ]),
        },
    ];
    specs.extend(mtas.iter().map(|m| mta_spec(plan, layout, m)));
    specs.push(Spec {
        role: ProcessRole::Healthd,
        name: "healthd".into(),
        address: plan.address,
        admin_url: Some(plan.healthd_url()),
        args: os(&[
            &"daemon",
            &"healthd",
            &"--config",
            &layout.config("healthd"),
        ]),
    });
    specs.push(Spec {
        role: ProcessRole::LbDns,
        name: "lb-dns".into(),
        address: plan.address,
        admin_url: Some(format!("http://{}", plan.lb_dns_admin_addr())),
        args: os(&[&"daemon", &"lb-dns", &"--config", &layout.config("lb-dns")]),
    });
    specs
}

fn choose_state_dir(args: &StartArgs) -> anyhow::Result<PathBuf> {
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => {
            let stamp = fleet::clock::unix_secs();
            std::env::temp_dir().join(format!("local-cluster-{stamp}-{}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the state dir {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))
}

/// Every MTA of the fleet file: name, address, drained.
type Inventory = Vec<(String, std::net::Ipv4Addr, bool)>;

/// The fleet's MTAs as the readiness check wants them, with their drains,
/// and the rate limit in service.
fn expected(layout: &Layout) -> anyhow::Result<(Inventory, String)> {
    let fleet = fleet::load_fleet(&layout.fleet_file())
        .map_err(|e| anyhow::anyhow!("the fleet file is invalid: {e}"))?;
    let cluster = fleet
        .clusters
        .first()
        .context("the fleet file has no cluster")?;
    let mtas = cluster
        .mtas
        .iter()
        .map(|m| (m.name.clone(), m.ipv4, m.drain))
        .collect();
    Ok((mtas, cluster.rate_limit.to_string()))
}

fn save_info(plan: &Plan, supervisor: &Supervisor) {
    let rate = expected(&supervisor.layout)
        .map(|(_, rate)| rate)
        .unwrap_or_else(|_| plan.rate_limit.clone());
    if let Err(e) = ClusterInfo::build(plan, supervisor, &rate).save() {
        eprintln!("local-cluster: {e:#}");
    }
}

pub async fn run(args: StartArgs) -> anyhow::Result<()> {
    let state_dir = choose_state_dir(&args)?;
    let layout = Layout::new(&state_dir);
    let (plan, mtas) = prepare(&args, &state_dir, &layout)?;
    // Dropped (the server killed) when local-cluster returns.
    let _vault = match plan.vault_port {
        Some(_) => Some(crate::vault::start(&layout, &plan, &mtas).await?),
        None => None,
    };
    // Stale requests from a previous run are void.
    for (path, _) in ops::pending(&layout) {
        let _ = std::fs::remove_file(path);
    }
    let mut signals = Signals::new()?;
    let mut supervisor = Supervisor::new(layout.clone())?;
    println!(
        "local-cluster: starting cluster {} with {} MTAs in {} (logs in {}/logs)",
        plan.hostname(),
        mtas.len(),
        state_dir.display(),
        state_dir.display()
    );
    for spec in specs(&plan, &layout, &mtas) {
        if let Err(error) = supervisor.start(spec) {
            supervisor.stop_all(STOP_GRACE).await;
            return Err(error);
        }
    }
    let timeout = Duration::from_secs(args.ready_timeout.unwrap_or(90));
    if let Some(failure) = wait_ready(&plan, &mut supervisor, &mut signals, timeout).await? {
        supervisor.stop_all(STOP_GRACE).await;
        anyhow::bail!("{failure}");
    }
    save_info(&plan, &supervisor);
    let info = ClusterInfo::load(&state_dir)?;
    println!("local-cluster: the cluster is up and answered by lb-dns");
    println!("{}", crate::report::details(&info));
    serve(&mut supervisor, &plan, &mut signals).await;
    stop(&mut supervisor, &state_dir).await;
    Ok(())
}

/// Refuses a state dir another local-cluster runs; loads (or makes) the
/// plan with `args` applied and prepares the state dir's files; the MTAs.
fn prepare(
    args: &StartArgs,
    state_dir: &Path,
    layout: &Layout,
) -> anyhow::Result<(Plan, Vec<MtaEntry>)> {
    if let Ok(info) = ClusterInfo::load(state_dir) {
        anyhow::ensure!(
            info.supervisor_pid == std::process::id() || !send_signal(info.supervisor_pid, 0),
            "a local-cluster (pid {}) already runs {}; stop it first, or operate it with \
             --add-mta, restart and reload",
            info.supervisor_pid,
            state_dir.display()
        );
        let _ = std::fs::remove_file(layout.cluster_json());
    }
    let plan = match Plan::load(state_dir)? {
        Some(mut plan) => {
            println!(
                "local-cluster: reusing the cluster in {}",
                state_dir.display()
            );
            plan.apply(args);
            plan
        }
        None => Plan::fresh(args),
    };
    plan.save(state_dir)?;
    if plan.vault_port.is_some() && layout.fleet_file().exists() {
        state::restore_fleet_secrets(layout, &plan)?;
    }
    let mtas = state::prepare(layout, &plan, args.rate_limit.is_some())?;
    Ok((plan, mtas))
}

/// The signals local-cluster answers: TERM and INT stop it, USR1 says a
/// request (`--add-mta`, restart, reload) waits in the state dir.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Waits, at most `timeout`, until healthd has every MTA up and lb-dns
/// answers them; `Some(why)` if it did not, a signal came or a process
/// died first.
async fn wait_ready(
    plan: &Plan,
    supervisor: &mut Supervisor,
    signals: &mut Signals,
    timeout: Duration,
) -> anyhow::Result<Option<String>> {
    let last = Arc::new(Mutex::new(String::from("nothing checked yet")));
    let hostname = plan.hostname();
    let healthd_url = plan.healthd_url();
    let (expected_mtas, _) = expected(&supervisor.layout)?;
    let poll = {
        let last = last.clone();
        let expectation = Expectation {
            healthd_url: &healthd_url,
            token: &plan.admin_token,
            dns: plan.dns_addr(),
            hostname: &hostname,
            mtas: expected_mtas,
        };
        async move {
            loop {
                match expectation.check().await {
                    Ok(()) => return,
                    Err(why) => *last.lock() = why,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let waited = tokio::time::timeout(timeout, poll);
    Ok(tokio::select! {
            result = waited => match result {
                Ok(()) => None,
                Err(_) => Some(format!(
                    "the cluster was not ready within {timeout:?}: {}",
                    last.lock()
                )),
            },
            _ = signals.term.recv() => Some("stopped by SIGTERM while starting".to_string()),
            _ = signals.int.recv() => Some("stopped by SIGINT while starting".to_string()),
            Some(exit) = supervisor.next_exit() => {
                supervisor.handle_exit(&exit, true);
                Some(format!(
                    "{} exited while the cluster was starting ({}); its log ends with:\n{}",
                    exit.name,
                    exit.status,
                    supervisor.log_tail(&exit.name, 20)
                ))
            }
    })
}

/// Supervises until SIGTERM or SIGINT: answers the requests USR1 announces
/// and notes each process that exits.
async fn serve(supervisor: &mut Supervisor, plan: &Plan, signals: &mut Signals) {
    let layout = supervisor.layout.clone();
    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.usr1.recv() => {
                for (path, request) in ops::pending(&layout) {
                    let result = handle(supervisor, plan, &layout, &request).await;
                    match &result {
                        Ok(text) => println!("local-cluster: {text}"),
                        Err(e) => eprintln!("local-cluster: {e:#}"),
                    }
                    save_info(plan, supervisor);
                    ops::answer(&path, &result);
                }
            }
            Some(exit) = supervisor.next_exit() => {
                supervisor.handle_exit(&exit, false);
                save_info(plan, supervisor);
            }
        }
    }
}

/// Stops every process (killing what outlives the grace) and removes
/// cluster.json; the state dir stays for the next start.
async fn stop(supervisor: &mut Supervisor, state_dir: &Path) {
    println!("local-cluster: stopping every process");
    let killed = supervisor.stop_all(STOP_GRACE).await;
    let _ = std::fs::remove_file(supervisor.layout.cluster_json());
    if !killed.is_empty() {
        eprintln!(
            "local-cluster: {} did not stop within {STOP_GRACE:?} and were killed",
            killed.join(", ")
        );
    }
    println!(
        "local-cluster: stopped; the state stays in {} (start it again with --state-dir)",
        state_dir.display()
    );
}

async fn handle(
    supervisor: &mut Supervisor,
    plan: &Plan,
    layout: &Layout,
    request: &Request,
) -> anyhow::Result<String> {
    match request {
        Request::Reload => {
            let names = supervisor.reload_daemons();
            Ok(format!("SIGHUP sent to {}", names.join(", ")))
        }
        Request::Restart(name) => {
            let pid = supervisor.restart(name, RESTART_GRACE).await?;
            Ok(format!("{name} started again (pid {pid})"))
        }
        Request::Start(name) => {
            anyhow::ensure!(
                supervisor.child(name).is_none_or(|c| !c.running),
                "{name} is already running"
            );
            let mta = state::fleet_mtas(layout)?
                .into_iter()
                .find(|m| &m.name == name)
                .with_context(|| format!("the fleet file has no MTA named `{name}`"))?;
            // The others learn about it first; the new one reads the fleet
            // file as it starts (a SIGHUP before its handlers would kill it).
            let reloaded = supervisor.reload_daemons();
            state::write_mta_config(layout, plan, &mta)?;
            if plan.vault_port.is_some() {
                crate::vault::configure_new_mta(layout, plan, &layout.config(&mta.name))?;
            }
            let pid = supervisor.start(mta_spec(plan, layout, &mta))?;
            Ok(format!(
                "{name} started (pid {pid}); SIGHUP sent to {}",
                reloaded.join(", ")
            ))
        }
    }
}
