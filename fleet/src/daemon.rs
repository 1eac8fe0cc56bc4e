//! The shape every daemon's `main` shares: `--config PATH`, `--check`, a
//! tokio runtime, signal handling and a clean exit code.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::control::Control;
use crate::load::ConfigError;
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
pub struct DaemonArgs {
    /// The daemon's config file; it names the fleet file.
    #[arg(long, short, value_name = "PATH")]
    pub config: PathBuf,
    /// Validate the config and fleet files, print what is wrong, and exit.
    #[arg(long)]
    pub check: bool,
}

/// One daemon: how it loads its configuration and how it runs.
pub trait Daemon {
    /// The daemon's own config together with the fleet file it names.
    type Settings: Send + 'static;

    const NAME: &'static str;

    fn load(config_file: &Path) -> Result<Self::Settings, ConfigError>;

    /// One line for `--check` and the start-up log.
    fn describe(settings: &Self::Settings) -> String;

    fn log_format(settings: &Self::Settings) -> LogFormat;

    /// Binds, serves, reloads on request and returns after a graceful
    /// shutdown.
    fn run(
        settings: Self::Settings,
        control: Control,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The whole of a daemon's `main`.
pub fn main<D: Daemon>() -> ExitCode {
    main_with_args::<D>(DaemonArgs::parse())
}

/// `main` with arguments parsed elsewhere (local-cluster hosts every daemon
/// in its own executable and re-executes itself, one process per daemon).
pub fn main_with_args<D: Daemon>(args: DaemonArgs) -> ExitCode {
    let settings = match D::load(&args.config) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{}: {error}", D::NAME);
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        println!(
            "{}: {} is valid: {}",
            D::NAME,
            args.config.display(),
            D::describe(&settings)
        );
        return ExitCode::SUCCESS;
    }
    telemetry::init(D::log_format(&settings));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{}: cannot start the async runtime: {error}", D::NAME);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let control = Control::new();
        control.install_signal_handlers()?;
        tracing::info!(daemon = D::NAME, "starting: {}", D::describe(&settings));
        D::run(settings, control).await
    });
    match result {
        Ok(()) => {
            tracing::info!(daemon = D::NAME, "stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(daemon = D::NAME, "{error:#}");
            eprintln!("{}: {error:#}", D::NAME);
            ExitCode::FAILURE
        }
    }
}

/// The pieces every daemon's `run` starts the same way: the live settings,
/// readiness, the metrics registry, the admin listener and the reload loop.
pub struct Service<S> {
    pub control: Control,
    pub live: std::sync::Arc<crate::Live<S>>,
    pub readiness: std::sync::Arc<crate::admin::Readiness>,
    pub registry: prometheus_client::registry::Registry,
    /// Serve the admin listener over TLS with this configuration (healthd's
    /// feed between hosts); plain HTTP when `None`.
    pub admin_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// At most this many open connections on the admin listener (healthd's
    /// feed and dashboard); unlimited when `None`.
    pub admin_max_connections: Option<usize>,
}

/// `/status`: what the last reloads did (`config`) and the daemon's own
/// report (`service`, a struct of each daemon's).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StatusReport<T> {
    pub config: crate::live::ReloadStatus,
    pub service: T,
}

impl<S: crate::live::Reloadable + Send + Sync + 'static> Service<S> {
    /// Every metric registered in `registry` is named
    /// `<S::METRICS_PREFIX>_…` (`lb_dns`, `healthd`, `mta`).
    pub fn new(control: Control, settings: S) -> Self {
        let live = crate::Live::new(settings);
        let mut registry = crate::metrics::registry(S::METRICS_PREFIX);
        live.register(&mut registry);
        Service {
            control,
            live,
            readiness: crate::admin::Readiness::new(),
            registry,
            admin_tls: None,
            admin_max_connections: None,
        }
    }

    /// Serves the admin listener (with `extra` routes merged in) and reloads
    /// the settings with `load` on SIGHUP. Register every metric first.
    pub fn start<T: serde::Serialize>(
        self,
        admin: tokio::net::TcpListener,
        extra: axum::Router,
        load: impl Fn() -> Result<S, ConfigError> + Send + 'static,
        status: impl Fn(&S) -> T + Send + Sync + 'static,
    ) -> Started<S> {
        let Service {
            control,
            live,
            readiness,
            registry,
            admin_tls,
            admin_max_connections,
        } = self;
        let status_live = live.clone();
        let state = crate::admin::AdminState {
            readiness: readiness.clone(),
            registry: std::sync::Arc::new(registry),
            status: std::sync::Arc::new(move || {
                let report = StatusReport {
                    config: status_live.status(),
                    service: status(&status_live.get()),
                };
                serde_json::to_value(report).unwrap_or_default()
            }),
        };
        let router = crate::admin::admin_router(state).merge(extra);
        let shutdown = control.shutdown.clone();
        control.tasks.spawn(async move {
            let served = match (admin_tls, admin_max_connections) {
                (None, None) => crate::admin::serve(admin, router, shutdown).await,
                (Some(tls), None) => crate::admin::serve_tls(admin, router, tls, shutdown).await,
                (tls, Some(max)) => {
                    crate::admin::serve_capped(admin, router, tls, max, shutdown).await
                }
            };
            if let Err(error) = served {
                tracing::error!("admin listener failed: {error}");
            }
        });
        control.tasks.spawn(crate::live::reload_on_request(
            control.clone(),
            live.clone(),
            load,
        ));
        Started {
            control,
            live,
            readiness,
        }
    }
}

/// A started service's handles.
pub struct Started<S> {
    pub control: Control,
    pub live: std::sync::Arc<crate::Live<S>>,
    pub readiness: std::sync::Arc<crate::admin::Readiness>,
}

impl<S> Started<S> {
    /// Waits for shutdown (not ready from then on), then for the tracked
    /// tasks, at most the grace `grace` reads from the settings in service
    /// then (so a reload changes it).
    pub async fn until_shutdown(&self, grace: impl Fn(&S) -> std::time::Duration) {
        self.control.shutdown.cancelled().await;
        self.readiness.not_ready("shutdown", "shutting down");
        self.control.drain(grace(&self.live.get())).await;
    }
}
