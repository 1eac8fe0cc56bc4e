//! lb-dns: the authoritative DNS load balancer for `c-<id>.<origin>`.
//!
//! `udp` (a thread per socket) and `tcp` (a task per connection) both
//! answer through `handler`, the synchronous `respond` over the wire-format
//! answers in `answers` (`wire` reads queries and writes records, `cookie`
//! makes DNS cookies), precomputed by `answer_keeper` from the fleet file and the
//! health that `follow` reads from the healthd feeds and `health` merges
//! (kept across restarts in the `state_file` by `saved_health`).

pub mod answer_keeper;
pub mod answers;
pub mod config;
pub mod cookie;
pub mod feed_client;
pub mod follow;
pub mod handler;
pub mod health;
pub mod metrics;
pub mod respond;
pub mod rrl;
pub mod saved_health;
pub mod steer;
pub mod tcp;
pub mod udp;
pub mod wire;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use fleet::control::Control;
use fleet::daemon::{Daemon, Service};
use fleet::telemetry::LogFormat;
use fleet::ConfigError;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

pub use config::Settings;

use crate::answer_keeper::AnswerKeeper;
use crate::answers::Answers;
use crate::cookie::CookieSecret;
use crate::follow::Followers;
use crate::handler::Handler;
use crate::health::Health;
use crate::metrics::Metrics;

/// The sockets lb-dns serves, bound before `run` so tests can pass port 0.
pub struct Listeners {
    pub admin: TcpListener,
    /// The UDP sockets of each address (several, SO_REUSEPORT), in the
    /// order they were bound.
    pub udp: Vec<Vec<UdpSocket>>,
    pub tcp: Vec<TcpListener>,
}

pub(crate) fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // Absorbs bursts; the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `count` UDP sockets and one TCP listener on the same address and port;
/// with port 0, the port the first UDP socket gets (retried on a clash).
fn bind_dns(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<(Vec<std::net::UdpSocket>, std::net::TcpListener)> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let first = udp_socket(addr)?;
        let bound = first.local_addr()?;
        let result = (|| {
            let mut udp = vec![first];
            for _ in 1..count {
                udp.push(udp_socket(bound)?);
            }
            let tcp = tcp_listener(bound)?;
            Ok((udp, tcp))
        })();
        match result {
            Err(e) if addr.port() == 0 && attempts < 20 => {
                tracing::debug!("port {} taken for TCP, trying another: {e}", bound.port());
            }
            other => return other,
        }
    }
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let addr = settings.node.admin_listen;
        let admin = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on admin address {addr}: {e}"))?;
        let count = settings.node.udp_sockets.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4)
        });
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for &addr in &settings.node.listen {
            let (sockets, listener) = bind_dns(addr, count.max(1))
                .map_err(|e| anyhow::anyhow!("cannot listen for DNS on {addr}: {e}"))?;
            let sockets = sockets.into_iter().map(UdpSocket::from_std);
            udp.push(sockets.collect::<std::io::Result<Vec<_>>>()?);
            tcp.push(TcpListener::from_std(listener)?);
        }
        Ok(Listeners { admin, udp, tcp })
    }

    /// The DNS addresses actually bound (UDP and TCP share each one).
    pub fn dns_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// The UDP side: a thread per socket, and the groups steered by CPU.
struct UdpThreads {
    threads: Vec<std::thread::JoinHandle<()>>,
    steered: Vec<Arc<steer::Group>>,
}

/// One thread per UDP socket, each answering until `stop`; with
/// `steering` by CPU, each address's group is steered (unless the kernel
/// refuses: then it spreads by hash, as before) and returned for the
/// governor.
fn start_udp(
    addresses: Vec<Vec<UdpSocket>>,
    steering: steer::UdpSteering,
    handler: &Arc<Handler>,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<UdpThreads> {
    let mut threads = Vec::new();
    let mut groups = Vec::new();
    for sockets in addresses {
        let sockets = sockets
            .into_iter()
            .map(|s| s.into_std())
            .collect::<std::io::Result<Vec<_>>>()?;
        let group = steer::Group::for_sockets(&sockets, steering);
        for (index, socket) in sockets.into_iter().enumerate() {
            let (handler, stop, group) = (handler.clone(), stop.clone(), group.clone());
            let thread = std::thread::Builder::new()
                .name(format!("lb-dns-udp-{}", threads.len()))
                .spawn(move || {
                    let load = group.map(|group| group.join(index));
                    udp::serve(socket, handler, load, stop)
                })
                .map_err(|e| anyhow::anyhow!("cannot start a UDP thread: {e}"))?;
            threads.push(thread);
        }
        groups.extend(group);
    }
    Ok(UdpThreads {
        threads,
        steered: groups,
    })
}

/// Waits for the UDP threads (they see the stop within `IDLE_CHECK`).
async fn join_udp(threads: Vec<std::thread::JoinHandle<()>>) {
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a UDP thread panicked");
            }
        }
    });
    if joined.await.is_err() {
        tracing::error!("cannot join the UDP threads");
    }
}

/// The health state saved by an earlier run, if any (a broken file is
/// logged and ignored).
fn load_saved_health(settings: &Settings) -> Option<saved_health::SavedHealth> {
    let path = settings.node.state_file.as_ref()?;
    match saved_health::load(path) {
        Ok(state) => {
            if state.is_some() {
                tracing::info!(path = %path.display(), "starting from the saved health state");
            }
            state
        }
        Err(error) => {
            tracing::error!("{error}; starting without a saved health state");
            None
        }
    }
}

fn register_rrl(rrl: &rrl::Rrl, registry: &mut prometheus_client::registry::Registry) {
    registry.register(
        "rrl_slipped",
        "UDP replies over the RRL rate sent truncated (TC) so the client retries over TCP",
        rrl.slipped.clone(),
    );
    registry.register(
        "rrl_dropped",
        "UDP replies over the RRL rate not sent",
        rrl.dropped.clone(),
    );
}

/// `/status`: the zone, its serial, what each cluster answers and the
/// health feeds.
#[derive(Debug, serde::Serialize)]
struct Status {
    zone: String,
    serial: u32,
    clusters: Vec<ClusterStatus>,
    mtas: usize,
    health: health::HealthReport,
    vault: fleet::secret::StoreStatus,
}

/// What one cluster name answers now.
#[derive(Debug, serde::Serialize)]
struct ClusterStatus {
    id: String,
    up: usize,
    all_down: bool,
    served_ipv4: usize,
    served_ipv6: usize,
}

fn status(s: &Settings, answers: &Answers, health: &Health) -> Status {
    Status {
        zone: s.fleet.zone.origin.clone(),
        serial: answers.serial,
        clusters: answers
            .clusters
            .iter()
            .map(|c| ClusterStatus {
                id: c.id.clone(),
                up: c.up,
                all_down: c.all_down,
                served_ipv4: c.served_v4,
                served_ipv6: c.served_v6,
            })
            .collect(),
        mtas: s.fleet.mta_count(),
        health: health.report(),
        vault: s.secrets.status(),
    }
}

/// The DNS side once the service is up: a thread per UDP socket and a task
/// per TCP listener, all answering with `handler`. Returns the UDP threads.
fn serve_dns(
    udp: Vec<Vec<UdpSocket>>,
    tcp: Vec<TcpListener>,
    handler: &Arc<Handler>,
    settings: &Settings,
    control: &Control,
    udp_stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let udp = start_udp(udp, settings.node.udp_steering, handler, udp_stop)?;
    control.tasks.spawn(steer::govern(
        udp.steered,
        handler.metrics.clone(),
        udp_stop.clone(),
    ));
    let limits = tcp::TcpLimits {
        max_connections: settings.node.max_connections,
        idle: settings.node.tcp_idle_timeout,
    };
    for listener in tcp {
        control.tasks.spawn(tcp::serve(
            listener,
            handler.clone(),
            limits,
            control.shutdown.clone(),
        ));
    }
    Ok(udp.threads)
}

/// Serves until `control.shutdown`, reloading on `control`'s requests.
pub async fn run(settings: Settings, listeners: Listeners, control: Control) -> anyhow::Result<()> {
    let config_file = settings.config_file.clone();
    let health = Health::new(load_saved_health(&settings), &settings.node.healthd);
    let mut service = Service::new(control, settings);
    fleet::secret::register_metrics(&service.live.get().secrets, &mut service.registry);
    let metrics = Arc::new(Metrics::register(&mut service.registry));
    let rrl = rrl::Rrl::new(service.live.get().node.rrl);
    if let Some(rrl) = &rrl {
        register_rrl(rrl, &mut service.registry);
    }
    let (to_persist, latest) = tokio::sync::watch::channel(None);
    let writer_metrics = metrics.clone();
    // Ends when the answer keeper (the sender) is gone.
    service
        .control
        .tasks
        .spawn(saved_health::writer(latest, move |error| {
            writer_metrics.state_file_errors.inc();
            tracing::error!("{error}");
        }));
    let keeper = AnswerKeeper::new(
        service.live.clone(),
        health.clone(),
        metrics.clone(),
        service.readiness.clone(),
        to_persist,
    )?;
    let answers = keeper.answers.clone();
    let (status_health, status_answers) = (health.clone(), answers.clone());
    let secrets = service.live.get().secrets.clone();
    let started = service.start(
        listeners.admin,
        axum::Router::new(),
        {
            let secrets = secrets.clone();
            move || Settings::load_with(&config_file, secrets.clone())
        },
        move |s: &Settings| status(s, &status_answers.load(), &status_health),
    );
    fleet::secret::watch(&secrets, started.readiness.clone(), &started.control);
    let control = started.control.clone();
    started
        .readiness
        .not_ready("dns", "starting: DNS listeners not serving yet");

    let mut followers = Followers::new(health.clone(), control.clone())?;
    followers.sync(&started.live.get().node);
    control.tasks.spawn(keeper.run(control.clone(), followers));

    // Stops the UDP threads on shutdown, or when this future is dropped.
    let udp_stop = control.shutdown.child_token();
    let _udp_stop_on_drop = udp_stop.clone().drop_guard();
    let settings = started.live.get();
    let cookies = settings
        .node
        .cookie_secret
        .unwrap_or_else(CookieSecret::random);
    let handler = Arc::new(Handler::configured(answers, metrics, cookies, rrl));
    let (udp, tcp) = (listeners.udp, listeners.tcp);
    let udp_threads = serve_dns(udp, tcp, &handler, &settings, &control, &udp_stop)?;
    started.readiness.ready("dns");
    started
        .until_shutdown(|s: &Settings| s.node.shutdown_grace)
        .await;
    udp_stop.cancel();
    join_udp(udp_threads).await;
    Ok(())
}

pub struct LbDns;

impl Daemon for LbDns {
    type Settings = Settings;
    const NAME: &'static str = "lb-dns";

    fn load(config_file: &Path) -> Result<Settings, ConfigError> {
        Settings::load(config_file)
    }

    fn describe(s: &Settings) -> String {
        format!(
            "zone {} with {} clusters and {} MTAs, DNS on {:?}, admin on {}",
            s.fleet.zone.origin,
            s.fleet.clusters.len(),
            s.fleet.mta_count(),
            s.node.listen,
            s.node.admin_listen
        )
    }

    fn log_format(s: &Settings) -> LogFormat {
        s.node.log_format
    }

    async fn run(settings: Settings, control: Control) -> anyhow::Result<()> {
        let listeners = Listeners::bind(&settings).await?;
        run(settings, listeners, control).await
    }
}
