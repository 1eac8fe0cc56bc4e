//! `local-cluster`: starts lb-dns, healthd, the MTAs, a sink MX and its DNS
//! on loopback, each its own process (this executable re-executed).

use std::process::ExitCode;

use clap::Parser;
use fleet::daemon::{main_with_args, DaemonArgs};
use integration::cli::{Cli, Command, Role};

fn block_on(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    // One thread: the children's parent-death signal follows this thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("local-cluster: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None if cli.start.add_mta => {
            let Some(state_dir) = cli.start.state_dir.clone() else {
                eprintln!("local-cluster: --add-mta needs --state-dir");
                return ExitCode::FAILURE;
            };
            report(integration::ops::add_mta(&state_dir))
        }
        None if cli.start.hosts => block_on(integration::hosts::run::run(
            cli.start.state_dir,
            cli.start.mtas.unwrap_or(3),
            std::time::Duration::from_secs(cli.start.ready_timeout.unwrap_or(90)),
        )),
        None => block_on(integration::run::run(cli.start)),
        Some(Command::Restart { name, state_dir }) => report(integration::ops::send(
            &state_dir,
            &integration::ops::Request::Restart(name),
        )),
        Some(Command::Reload { state_dir }) => report(integration::ops::send(
            &state_dir,
            &integration::ops::Request::Reload,
        )),
        Some(Command::Daemon {
            role,
            config,
            check,
        }) => {
            let args = DaemonArgs { config, check };
            match role {
                Role::Mta => main_with_args::<mta::MtaNode>(args),
                Role::Healthd => main_with_args::<healthd::Healthd>(args),
                Role::LbDns => main_with_args::<lb_dns::LbDns>(args),
            }
        }
        Some(Command::Sink { listen, maildir }) => {
            block_on(integration::services::sink(listen, maildir))
        }
        Some(Command::Dns { listen, mx, a, txt }) => {
            block_on(integration::services::dns(listen, mx, a, txt))
        }
    }
}

fn report(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("local-cluster: {text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("local-cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}
