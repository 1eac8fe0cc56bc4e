//! Delivery: from a due recipient to delivered, retried, bounced or expired.
//!
//! The queue hands each permitted recipient to [`Engine`], which reads the
//! message from the spool, signs it (DKIM) when its From: domain has a key,
//! finds where the recipient domain's mail goes ([`route::Router`]) and
//! tries those hosts in order over SMTP ([`smtp::Connector`]). 2xx: done.
//! 4xx, timeouts and unreachable hosts: retried with exponential backoff and
//! jitter until the maximum age. 5xx, null MX, no such domain: bounced.

mod attempt;
pub mod config;
pub mod dsn;
pub mod egress;

pub mod networks;
pub mod route;
pub mod smtp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fleet::RateLimit;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dkim::Dkim;
use crate::events::{Event, EventType as EventKind, Events, PeerAddress, Response};
use crate::queue::metrics::EgressMetrics;
use crate::queue::{Dispatch, Held, LimitSource, Requeue, Scheduler};
use crate::spool::{now_ms, Job, Spool, StoredMessage};
pub use config::DeliveryConfig;
use egress::{Egress, Hold, Via};
use route::Router;
use smtp::Connector;

/// Where an attempt went and what it got: what its events report.
#[derive(Debug, Clone, Default)]
pub struct Reached {
    pub host: Option<String>,
    pub peer: Option<String>,
    /// The SMTP reply code; 0 when decided here.
    pub code: u16,
    pub text: String,
    /// The egress pool and source the attempt left through, when the
    /// cluster has egress sources (the events' `egress_pool` and
    /// `egress_source`): whoever picks the source sets them here.
    pub egress_pool: Option<String>,
    pub egress_source: Option<String>,
}

impl Reached {
    fn here(text: String) -> Reached {
        Reached {
            text,
            ..Reached::default()
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone)]
enum Outcome {
    Delivered(Reached),
    Transient(Reached),
    Permanent(Reached),
    /// The egress source failed before the destination was reached: back
    /// to the queue for another source, no attempt counted.
    SourceDown(String),
}

/// What a reload rebuilds and swaps: where mail goes (the resolver and the
/// routes), how it is sent, the DKIM signers and the retry policy. Each
/// attempt holds the one it started with to its end.
pub struct Setup {
    router: Router,
    connector: Arc<Connector>,
    dkim: Arc<Dkim>,
    config: DeliveryConfig,
    hello: String,
}

impl Setup {
    /// Builds everything from `config`, signing with `dkim` (loaded with
    /// the settings, from files or Vault); the connector (and its pooled
    /// connections) of `previous` is kept when its settings are the same.
    pub fn build(
        config: DeliveryConfig,
        hello_name: String,
        dkim: Arc<Dkim>,
        metrics: &EgressMetrics,
        previous: Option<&Setup>,
    ) -> Result<Setup, String> {
        let router = Router::new(
            &config.nameservers,
            &config.routes,
            config.port,
            config.timeout,
            networks::Allowed::parse(&config.allow_networks)?,
        )?;
        let hello = config.hello_name.clone().unwrap_or(hello_name);
        let connector = match previous {
            Some(old) if old.same_connector(&config, &hello) => old.connector.clone(),
            _ => Arc::new(Connector::new(
                hello.clone(),
                config.starttls_fallback,
                metrics.starttls_fallbacks.clone(),
                config.connections_per_destination,
                config.timeout,
            )),
        };
        Ok(Setup {
            router,
            connector,
            dkim,
            config,
            hello,
        })
    }

    fn same_connector(&self, config: &DeliveryConfig, hello: &str) -> bool {
        self.hello == hello
            && self.config.starttls_fallback == config.starttls_fallback
            && self.config.connections_per_destination == config.connections_per_destination
            && self.config.timeout == config.timeout
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }
}

pub struct Engine {
    spool: Arc<Spool>,
    requeue: Requeue,
    events: Arc<Events>,
    metrics: EgressMetrics,
    setup: ArcSwap<Setup>,
    egress: Arc<Egress>,
    tasks: TaskTracker,
    /// The domain of VERP return paths (`<id>@<domain>`); none: the
    /// envelope sender goes on the wire as given.
    bounce_domain: parking_lot::RwLock<Option<String>>,
    sweeps: crate::queue::sweep::Sweeps,
    /// KiB of messages read back from the spool at once (`max_loaded_bytes`).
    loading: Arc<tokio::sync::Semaphore>,
    loading_kib: u32,
}

/// The running queue and delivery engine.
pub struct EngineHandle {
    pub engine: Arc<Engine>,
    scheduler: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

/// Backoff before attempt `attempts + 1`: `initial * 2^(attempts-1)`, at most
/// `max`, then ±10 % jitter.
pub fn backoff(initial: Duration, max: Duration, attempts: u16) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30) as u32;
    let base = initial.saturating_mul(1u32 << doublings).min(max);
    let jitter: f64 = rand::random_range(0.9..1.1);
    base.mul_f64(jitter)
}

impl Engine {
    pub fn new(
        spool: Arc<Spool>,
        config: DeliveryConfig,
        hello_name: String,
        events: Arc<Events>,
        metrics: EgressMetrics,
    ) -> Result<Arc<Engine>, String> {
        let egress = Arc::new(Egress::new(&config.egress, metrics.sources.clone())?);
        let loading_kib = u32::try_from(config.max_loaded_bytes >> 10).unwrap_or(u32::MAX);
        // No signers until the settings' ones are put in by `reconfigure`.
        let setup = Setup::build(config, hello_name, Arc::default(), &metrics, None)?;
        Ok(Arc::new(Engine {
            loading: Arc::new(tokio::sync::Semaphore::new(loading_kib as usize)),
            loading_kib,
            bounce_domain: parking_lot::RwLock::new(None),
            sweeps: Default::default(),
            spool,
            requeue: Requeue::default(),
            events,
            metrics,
            setup: ArcSwap::from_pointee(setup),
            egress,
            tasks: TaskTracker::new(),
        }))
    }

    /// Room for `job`'s message in memory (`max_loaded_bytes`), held
    /// until dropped: a spool of large messages is not read back all at once.
    async fn load_budget(&self, job: &Job) -> Option<OwnedSemaphorePermit> {
        let kib = job.len.div_ceil(1024).clamp(1, self.loading_kib.max(1));
        self.loading.clone().acquire_many_owned(kib).await.ok()
    }

    /// The setup new attempts start with.
    pub fn setup(&self) -> Arc<Setup> {
        self.setup.load_full()
    }

    /// Rebuilds the setup from `settings` and swaps it in for the attempts
    /// that start from now on; attempts under way finish with theirs. On an
    /// error the setup in service stays.
    pub fn reconfigure(&self, settings: &crate::Settings) -> Result<(), String> {
        let old = self.setup.load_full();
        // A connector that is replaced closes its pooled connections when
        // the last attempt using it ends.
        let new = Setup::build(
            settings.node.delivery.clone(),
            settings.hostname.clone(),
            settings.dkim.clone(),
            &self.metrics,
            Some(&old),
        )?;
        self.setup.store(Arc::new(new));
        self.set_bounce_domain(Some(settings.bounce_domain()));
        Ok(())
    }

    /// Starts the scheduled queue feeding this engine.
    pub fn start(self: &Arc<Self>, initial: RateLimit, limits: LimitSource) -> EngineHandle {
        let stop = CancellationToken::new();
        let scheduler = Scheduler::new(
            self.spool.clone(),
            self.requeue.clone(),
            initial,
            self.setup().config.max_in_flight,
            self.metrics.clone(),
        )
        .with_sweeps(self.sweeps.clone());
        let handle = tokio::spawn(scheduler.run(self.clone(), limits, stop.clone()));
        EngineHandle {
            engine: self.clone(),
            scheduler: handle,
            stop,
        }
    }

    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    pub fn metrics(&self) -> &EgressMetrics {
        &self.metrics
    }

    /// The egress sources this node sends through.
    pub fn egress(&self) -> &Arc<Egress> {
        &self.egress
    }

    /// Return paths become `<id>@<domain>` from now on (VERP).
    pub fn set_bounce_domain(&self, domain: Option<String>) {
        *self.bounce_domain.write() = domain;
    }

    /// The envelope sender on the wire: the VERP address, or the null
    /// sender for a message sent from it.
    fn return_path(&self, message: &StoredMessage, job: &Job) -> String {
        match &*self.bounce_domain.read() {
            Some(domain) if !message.sender.is_empty() => format!("{}@{domain}", job.id()),
            _ => message.sender.clone(),
        }
    }

    fn event(&self, kind: EventKind, message: &StoredMessage, job: &Job, reached: Reached) {
        let recipient = message
            .recipients
            .get(job.rcpt as usize)
            .cloned()
            .unwrap_or_default();
        let mut event = Event::new(kind);
        event.id = job.id().0;
        event.sender = self.return_path(message, job);
        event.envelope_sender = message.sender.clone();
        event.queue = fleet::event::queue_of(&recipient);
        event.recipient = recipient;
        event.site = reached.host.clone().unwrap_or_default();
        event.peer_address = reached.peer.map(|addr| PeerAddress {
            name: reached.host.clone().unwrap_or_default(),
            addr,
        });
        event.delivery_protocol = reached.host.is_some().then(|| "ESMTP".to_string());
        event.response = Response::new(reached.code, reached.text);
        event.created = message.received_ms / 1000;
        event.num_attempts = job.attempts as u32;
        event.egress_pool = reached.egress_pool;
        event.egress_source = reached.egress_source;
        event.reception_protocol = Some(message.via.reception_protocol().to_string());
        event.size = message.data.len() as u64;
        event.meta =
            crate::events::meta::of_message(&message.data, &message.cluster, &message.credential);
        self.events.emit(event);
    }

    /// One attempt for `job`, start to end: its message read back, sent,
    /// and the outcome settled.
    async fn deliver(self: Arc<Self>, mut job: Job, via: Option<Via>) {
        // This attempt keeps the setup it starts with, whatever a reload
        // swaps in meanwhile.
        let setup = self.setup();
        self.metrics.in_flight.inc();
        let _loaded = self.load_budget(&job).await;
        if let Some(message) = self.load_or_retry(&mut job).await {
            let started = Instant::now();
            let outcome = self.attempt(&setup, &message, &job, via.as_ref()).await;
            self.metrics
                .attempt_seconds
                .observe(started.elapsed().as_secs_f64());
            self.settle(&setup, &message, job, via.as_ref(), outcome)
                .await;
        }
        self.metrics.in_flight.dec();
    }

    /// The job's message from the spool. A record that cannot be read back
    /// is retried a few times (an I/O error may pass), then given up loudly.
    async fn load_or_retry(&self, job: &mut Job) -> Option<StoredMessage> {
        let error = match self.spool.load(job).await {
            Ok(message) => return Some(message),
            Err(error) => error,
        };
        job.attempts += 1;
        if job.attempts >= 5 {
            tracing::error!("giving up on a spooled recipient: {error}");
            self.metrics.permanent.inc();
            self.spool.done(job);
        } else {
            tracing::warn!("{error}; retrying");
            job.due_ms = now_ms() + 1000 * job.attempts as u64;
            self.requeue.push(*job);
        }
        None
    }

    /// What an attempt's outcome does to its job: out of the spool
    /// (delivered, bounced), back to the queue, or retried later; and the
    /// event that says so.
    async fn settle(
        &self,
        setup: &Setup,
        message: &StoredMessage,
        job: Job,
        via: Option<&Via>,
        outcome: Outcome,
    ) {
        // Attempts that reached the destination are counted.
        let counted = Job {
            attempts: job.attempts.saturating_add(1),
            ..job
        };
        match outcome {
            Outcome::SourceDown(why) => {
                if let Some(via) = via {
                    self.egress.source_failed(via, &why);
                }
                // Due as it was: the queue gives it another source at once.
                self.requeue.push(job);
            }
            Outcome::Delivered(reached) => {
                self.spool.done(&counted);
                self.metrics.delivered.inc();
                self.metrics
                    .delivery_seconds
                    .observe(now_ms().saturating_sub(message.received_ms) as f64 / 1000.0);
                self.event(EventKind::Delivery, message, &counted, reached);
            }
            Outcome::Permanent(reached) => {
                self.metrics.permanent.inc();
                self.given_up(setup, message, &counted, EventKind::Bounce, reached)
                    .await;
            }
            Outcome::Transient(reached) => {
                self.retry_or_expire(setup, message, counted, reached).await
            }
        }
    }

    /// A transient failure: tried again after a backoff, or, at the
    /// message's maximum age, expired.
    async fn retry_or_expire(
        &self,
        setup: &Setup,
        message: &StoredMessage,
        mut job: Job,
        mut reached: Reached,
    ) {
        let now = now_ms();
        let expires = message
            .received_ms
            .saturating_add(setup.config.max_age.as_millis() as u64);
        if now >= expires {
            self.metrics.expired.inc();
            reached.text = format!(
                "expired after {} attempts in {}; last: {}",
                job.attempts,
                fleet::clock::words(Duration::from_millis(
                    now.saturating_sub(message.received_ms)
                )),
                reached.text
            );
            return self
                .given_up(setup, message, &job, EventKind::Expiration, reached)
                .await;
        }
        let wait = backoff(
            setup.config.retry_initial,
            setup.config.retry_max,
            job.attempts,
        );
        // The last attempt is at the maximum age, not beyond.
        job.due_ms = (now + wait.as_millis() as u64).min(expires);
        self.metrics.transient.inc();
        self.spool.reschedule(&job);
        self.event(EventKind::TransientFailure, message, &job, reached);
        self.requeue.push(job);
    }

    /// A recipient that is not tried again: out of the spool, its `kind`
    /// event, and a DSN to the sender.
    async fn given_up(
        &self,
        setup: &Setup,
        message: &StoredMessage,
        job: &Job,
        kind: EventKind,
        reached: Reached,
    ) {
        self.spool.done(job);
        let why = reached.text.clone();
        self.event(kind, message, job, reached);
        self.notify_sender(setup, message, job, kind, &why).await;
    }

    /// A DSN to the envelope sender, when configured and there is one.
    async fn notify_sender(
        &self,
        setup: &Setup,
        message: &StoredMessage,
        job: &Job,
        kind: EventKind,
        why: &str,
    ) {
        if !setup.config.dsn || message.sender.is_empty() {
            return;
        }
        let report = dsn::build(message, job, kind, why, setup.connector.hello());
        if let Err(e) = self.spool.accept(report).await {
            tracing::error!(id = %job.id(), "cannot queue the delivery status notification: {e}");
        }
    }

    /// Bounces every queued recipient `selector` matches with `reason`
    /// (AdminBounce events, and DSNs when configured); returns how many.
    pub async fn admin_bounce(
        &self,
        selector: crate::queue::sweep::BounceSelector,
        reason: String,
    ) -> Result<usize, String> {
        if self.setup().config.hold {
            return Err("delivery is on hold ([delivery] hold = true): nothing is swept".into());
        }
        let (done, count) = tokio::sync::oneshot::channel();
        self.sweeps.push(crate::queue::sweep::BounceOrder {
            selector,
            reason,
            done,
        });
        match tokio::time::timeout(Duration::from_secs(120), count).await {
            Ok(Ok(n)) => Ok(n),
            _ => Err("the queue did not finish the admin bounce within 120s".into()),
        }
    }

    /// Bounces the jobs an order matches, puts the others back.
    async fn sweep(self: Arc<Self>, jobs: Vec<Job>, orders: Vec<crate::queue::sweep::BounceOrder>) {
        let setup = self.setup();
        let mut counts = vec![0usize; orders.len()];
        for job in jobs {
            let _loaded = self.load_budget(&job).await;
            let Ok(message) = self.spool.load(&job).await else {
                self.requeue.push(job);
                continue;
            };
            let recipient = message
                .recipients
                .get(job.rcpt as usize)
                .map_or("", String::as_str);
            let Some(at) = orders
                .iter()
                .position(|o| o.selector.matches(&job, &message.cluster, recipient))
            else {
                self.requeue.push(job);
                continue;
            };
            counts[at] += 1;
            self.spool.done(&job);
            self.metrics.permanent.inc();
            let why = format!("bounced by the administrator: {}", orders[at].reason);
            self.event(
                EventKind::AdminBounce,
                &message,
                &job,
                Reached::here(why.clone()),
            );
            self.notify_sender(&setup, &message, &job, EventKind::AdminBounce, &why)
                .await;
        }
        for (order, n) in orders.into_iter().zip(counts) {
            tracing::info!(selector = ?order.selector, bounced = n, "admin bounce: {}", order.reason);
            let _ = order.done.send(n);
        }
    }

    async fn report_delayed(self: Arc<Self>, job: Job, wait: Duration, why: Held) {
        let _loaded = self.load_budget(&job).await;
        let Ok(message) = self.spool.load(&job).await else {
            return;
        };
        let text = match why {
            Held::NodeLimit(limit) => format!(
                "held by the node's rate limit {limit}: next permit in {}",
                fleet::clock::words(wait)
            ),
            Held::Egress(why) => format!("{why}: next try in {}", fleet::clock::words(wait)),
        };
        self.event(EventKind::Delayed, &message, &job, Reached::here(text));
    }
}

impl Dispatch for Arc<Engine> {
    fn dispatch(&self, job: Job, slot: OwnedSemaphorePermit, via: Option<Via>) {
        let engine = self.clone();
        self.tasks.spawn(async move {
            engine.deliver(job, via).await;
            drop(slot);
        });
    }

    fn delayed(&self, job: Job, wait: Duration, why: Held) {
        self.tasks
            .spawn(self.clone().report_delayed(job, wait, why));
    }

    async fn source(&self) -> Result<Option<Via>, Hold> {
        self.egress.choose().await
    }

    fn sweep(&self, jobs: Vec<Job>, orders: Vec<crate::queue::sweep::BounceOrder>) {
        self.tasks.spawn(self.clone().sweep(jobs, orders));
    }
}

/// Starts delivery for this node: events to `events`, then, on every
/// reload, the cluster's rate limit, `[delivery].hold` and a rebuilt
/// [`Setup`] (routes, resolver, DKIM keys, retries, SMTP settings) with the
/// cluster's bounce domain.
pub fn start_for_node(
    spool: Arc<Spool>,
    config: DeliveryConfig,
    hello_name: String,
    events: Arc<Events>,
    metrics: EgressMetrics,
    live: Arc<fleet::Live<crate::Settings>>,
) -> anyhow::Result<EngineHandle> {
    let engine =
        Engine::new(spool, config, hello_name, events, metrics).map_err(anyhow::Error::msg)?;
    let limit_of = |settings: &crate::Settings| {
        let limit = settings
            .cluster()
            .map(|cluster| cluster.rate_limit)
            .unwrap_or_default();
        (limit, settings.node.delivery.hold)
    };
    // The sources are in place before the queue asks for one.
    engine
        .egress
        .update(live.get().cluster())
        .map_err(anyhow::Error::msg)?;
    let (initial, _) = limit_of(&live.get());
    let egress = engine.egress.clone();
    let current = {
        let live = live.clone();
        Box::new(move || {
            let settings = live.get();
            // The queue reads the settings here after a reload: the
            // cluster's egress sources are applied on the same path, so the
            // next source it asks for comes from the reloaded pool.
            egress.apply_reload(settings.cluster());
            limit_of(&settings)
        })
    };
    let limits = LimitSource {
        changed: live.subscribe(),
        current,
    };
    // Subscribed before the settings in service are applied, so a reload
    // right after start is not missed.
    let changed = live.subscribe();
    engine
        .reconfigure(&live.get())
        .map_err(anyhow::Error::msg)?;
    let handle = engine.start(initial, limits);
    tokio::spawn(follow_reloads(engine, live, changed, handle.stop.clone()));
    Ok(handle)
}

/// Swaps in a new [`Setup`] after every reload, until `stop`.
async fn follow_reloads(
    engine: Arc<Engine>,
    live: Arc<fleet::Live<crate::Settings>>,
    mut changed: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            result = changed.changed() => if result.is_err() { return },
        }
        let settings = live.get();
        match engine.reconfigure(&settings) {
            Ok(()) => tracing::info!("delivery settings reloaded"),
            Err(error) => tracing::error!(
                "the reloaded [delivery] settings cannot be applied, the previous ones stay: {error}"
            ),
        }
    }
}

impl EngineHandle {
    /// Stops taking recipients from the queue and waits, at most `grace`,
    /// for attempts under way; then makes the spool's state durable.
    /// Returns false when attempts were still running at the end of the
    /// grace (they stay in the spool and are attempted again after restart).
    pub async fn stop(self, grace: Duration) -> bool {
        self.stop.cancel();
        let _ = self.scheduler.await;
        self.engine.tasks.close();
        let finished = tokio::time::timeout(grace, self.engine.tasks.wait())
            .await
            .is_ok();
        self.engine.setup().connector.shutdown().await;
        if let Err(e) = self.engine.spool.sync().await {
            tracing::error!("cannot sync the spool at shutdown: {e}");
        }
        let events = self.engine.events.clone();
        let _ = tokio::task::spawn_blocking(move || events.close()).await;
        finished
    }
}
