//! What the egress tests share: a node's settings from a relocated copy of
//! `configs/`, a spool, the delivery engine in this process, a static DNS
//! server and sink MX hosts on the test's own 127.2.N.0/24.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet::testkit::dns::{Record, StaticDns};
use fleet::testkit::example_configs::ExampleConfigs;
pub use fleet::testkit::example_configs::EXAMPLE_HOSTNAME;
use fleet::testkit::sink::{Behaviour, Sink, SinkConfig};
use fleet::Live;
use mta::delivery::EngineHandle;
use mta::events::{Event, EventKind};
use mta::message::{MessageId, NewMessage};
use mta::queue::EgressMetrics;
use mta::spool::Spool;
use mta::Settings;
use tokio::sync::broadcast;

/// The port every sink MX of these tests listens on.
pub const MX_PORT: u16 = 2525;
pub const LIMIT: Duration = Duration::from_secs(20);

pub fn ip(net: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 2, net, last)
}

pub async fn sink(net: u8, last: u8, behaviour: Behaviour) -> Sink {
    let mut config = SinkConfig::accept(SocketAddr::new(ip(net, last).into(), MX_PORT));
    config.behaviour = behaviour;
    Sink::start(config).await.expect("the sink starts")
}

/// A sink that offers STARTTLS with a certificate from a throwaway CA.
pub async fn tls_sink(net: u8, last: u8, name: &str) -> Sink {
    let ca = fleet::testkit::pki::LocalCa::new("egress test CA").unwrap();
    let issued = ca.issue(&[name]).unwrap();
    let mut config = SinkConfig::accept(SocketAddr::new(ip(net, last).into(), MX_PORT));
    config.tls = Some((issued.cert_pem, issued.key_pem));
    Sink::start(config).await.expect("the sink starts")
}

pub async fn dns(net: u8, records: Vec<Record>) -> StaticDns {
    StaticDns::start(SocketAddr::new(ip(net, 53).into(), 0), records)
        .await
        .expect("the static DNS starts")
}

/// A relocated `configs/` whose node delivers through `dns` to port
/// [`MX_PORT`], with `delivery` appended to its `[delivery]` section.
pub fn configs(
    net: u8,
    rate_limit: &str,
    dns: Option<SocketAddr>,
    delivery: &str,
) -> ExampleConfigs {
    configs_at([127, 2, net], rate_limit, dns, delivery)
}

/// [`configs`] on `base`.0/24 (a test in another engineer's range).
pub fn configs_at(
    base: [u8; 3],
    rate_limit: &str,
    dns: Option<SocketAddr>,
    delivery: &str,
) -> ExampleConfigs {
    let [a, b, net] = base;
    let configs = ExampleConfigs::relocated(base).expect("configs copy");
    let fleet = configs.path("fleet.toml");
    let text = std::fs::read_to_string(&fleet).unwrap();
    let text = text.replacen(
        "rate_limit = \"500/hr\"",
        &format!("rate_limit = \"{rate_limit}\""),
        1,
    );
    std::fs::write(&fleet, text).unwrap();
    // `configs/mta.toml` ends with its `[delivery]` table: keys appended at
    // the end of the file belong to it.
    let node = configs.path("mta.toml");
    let text = std::fs::read_to_string(&node).unwrap();
    let last_table = text
        .lines()
        .rfind(|line| line.starts_with('['))
        .unwrap_or_default();
    assert_eq!(
        last_table, "[delivery]",
        "configs/mta.toml should end with [delivery]"
    );
    let mut text: String = text
        .lines()
        .filter(|line| !line.starts_with("nameservers =") && !line.starts_with("port ="))
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str(&format!("port = {MX_PORT}\n"));
    // Without a DNS server of its own, a test still never asks the
    // machine's resolver: nothing answers at .54.
    let dns = dns.unwrap_or_else(|| SocketAddr::new(Ipv4Addr::new(a, b, net, 54).into(), 53));
    text.push_str(&format!("nameservers = [\"{dns}\"]\n"));
    // The test's sink and MX hosts are on loopback: allowed explicitly.
    text.push_str("allow_networks = [\"127.0.0.0/8\"]\n");
    text.push_str(delivery);
    text.push('\n');
    std::fs::write(&node, text).unwrap();
    configs
}

/// Changes the cluster's rate limit in the copy's fleet file.
pub fn set_rate_limit(configs: &ExampleConfigs, from: &str, to: &str) {
    let fleet = configs.path("fleet.toml");
    let text = std::fs::read_to_string(&fleet).unwrap();
    let changed = text.replacen(
        &format!("rate_limit = \"{from}\""),
        &format!("rate_limit = \"{to}\""),
        1,
    );
    assert_ne!(text, changed, "rate_limit {from} not found");
    std::fs::write(&fleet, changed).unwrap();
}

/// The spool and the delivery engine of one node, in this process.
pub struct Egress {
    pub configs: ExampleConfigs,
    pub live: Arc<Live<Settings>>,
    pub spool: Arc<Spool>,
    pub handle: Option<EngineHandle>,
    pub events: broadcast::Receiver<Arc<Event>>,
    /// Events received but not yet asked for.
    pub backlog: Vec<Arc<Event>>,
    pub metrics: EgressMetrics,
}

impl Egress {
    pub async fn start(configs: ExampleConfigs) -> Egress {
        let settings = Settings::load(&configs.path("mta.toml")).expect("settings load");
        let spool = Spool::open(&settings.node.spool_dir).await.expect("spool");
        let delivery = settings.node.delivery.clone();
        let hello = settings.hostname.clone();
        let events = mta::events::Events::open(&settings.node.events, &settings.node.node)
            .expect("the event log opens");
        let live = Live::new(settings);
        let metrics = EgressMetrics::default();
        let handle = mta::delivery::start_for_node(
            spool.clone(),
            delivery,
            hello,
            events,
            metrics.clone(),
            live.clone(),
        )
        .expect("delivery starts");
        let events = handle.engine.events().subscribe();
        Egress {
            configs,
            live,
            spool,
            handle: Some(handle),
            events,
            backlog: Vec::new(),
            metrics,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.configs.path("mta.toml")
    }

    /// Re-reads the config files and swaps them in, as SIGHUP does.
    pub fn reload(&self) {
        let settings = Settings::load(&self.config_path()).expect("settings reload");
        self.live.replace(settings);
    }

    pub async fn inject(&self, to: &str, marker: &str) -> MessageId {
        self.spool
            .accept(message(&[to], marker))
            .await
            .expect("the spool accepts")
    }

    /// The next event of `kind` about `id`, at most `LIMIT` away.
    pub async fn event(&mut self, id: &MessageId, kind: EventKind) -> Arc<Event> {
        let matches = |e: &Event| e.id == id.0 && e.kind == kind;
        if let Some(at) = self.backlog.iter().position(|e| matches(e)) {
            return self.backlog.remove(at);
        }
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind:?} event for {id} within {LIMIT:?}"));
            match next {
                Ok(event) if matches(&event) => return event,
                Ok(event) => self.backlog.push(event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("the test fell {n} events behind")
                }
                Err(e) => panic!("events: {e}"),
            }
        }
    }

    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop(Duration::from_secs(5)).await;
        }
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.close())
            .await
            .unwrap();
    }
}

/// A small message from the example cluster's sending domain.
pub fn message(to: &[&str], marker: &str) -> NewMessage {
    let data = format!(
        "From: App <app@yourdomain.com>\r\n\
         To: {}\r\n\
         Subject: egress test {marker}\r\n\
         Message-ID: <{marker}@yourdomain.com>\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Hello from the egress tests, {marker}.\r\n",
        to.join(", ")
    );
    NewMessage {
        sender: "app@yourdomain.com".into(),
        recipients: to.iter().map(|s| s.to_string()).collect(),
        data: data.into(),
        cluster: "a1b2c3d4".into(),
        credential: "your-credential".into(),
        via: mta::message::Protocol::Smtp,
        peer: "127.2.0.1:40000".parse().unwrap(),
    }
}

/// The message with `marker` in its subject among `messages`.
pub fn with_marker<'a>(
    messages: &'a [fleet::testkit::sink::Received],
    marker: &str,
) -> Option<&'a fleet::testkit::sink::Received> {
    let subject = format!("egress test {marker}");
    messages
        .iter()
        .find(|m| m.header("Subject").as_deref() == Some(subject.as_str()))
}

/// A whole node (ingress and delivery) running `mta::run` in this process
/// on the relocated example configs: mail goes in over SMTP.
pub struct Node {
    pub configs: ExampleConfigs,
    daemon: fleet::testkit::InProcess,
    pub admin: SocketAddr,
    pub smtp: SocketAddr,
}

impl Node {
    pub async fn start(configs: ExampleConfigs) -> Node {
        let settings = Settings::load(&configs.path("mta.toml")).expect("settings load");
        let listeners = mta::Listeners::bind(&settings).await.expect("listeners");
        let admin = listeners.admin.local_addr().unwrap();
        let smtp = listeners.smtp[0].local_addr().unwrap();
        let daemon =
            fleet::testkit::InProcess::spawn(|control| mta::run(settings, listeners, control));
        Node {
            configs,
            daemon,
            admin,
            smtp,
        }
    }

    /// A submission client with the example credential, over STARTTLS.
    pub fn client(&self, connections: u32) -> lettre::AsyncSmtpTransport<lettre::Tokio1Executor> {
        self.client_with_password("example-password", connections)
    }

    /// [`Node::client`] with another `password` for the example credential.
    pub fn client_with_password(
        &self,
        password: &str,
        connections: u32,
    ) -> lettre::AsyncSmtpTransport<lettre::Tokio1Executor> {
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        let ca = std::fs::read(self.configs.path("tls/ca.pem")).unwrap();
        let tls = TlsParameters::builder(EXAMPLE_HOSTNAME.into())
            .add_root_certificate(Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(
            self.smtp.ip().to_string(),
        )
        .port(self.smtp.port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new("your-credential".into(), password.into()))
        .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(connections))
        .timeout(Some(LIMIT))
        .build()
    }

    /// Sends the test message `marker` to `to` through the node.
    pub async fn submit(
        client: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
        to: &str,
        marker: &str,
    ) -> Result<(), lettre::transport::smtp::Error> {
        use lettre::AsyncTransport;
        let m = message(&[to], marker);
        let envelope = lettre::address::Envelope::new(
            Some(m.sender.parse().unwrap()),
            vec![to.parse().unwrap()],
        )
        .unwrap();
        client.send_raw(&envelope, &m.data).await.map(|_| ())
    }

    /// A sample of `/metrics`, by metric name.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = format!("http://{}/metrics", self.admin);
        fleet::testkit::promtool::scrape_sample(&url, name).await
    }

    /// What SIGHUP does: re-read the files and swap them in.
    pub fn reload(&self) {
        self.daemon.reload();
    }

    pub async fn stop(self) {
        self.daemon.stop(LIMIT).await;
    }
}
