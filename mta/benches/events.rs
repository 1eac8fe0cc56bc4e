//! Events benchmark (`cargo bench -p mta --bench events`): a node's spool
//! and delivery engine in this process deliver 4 KB messages at full speed
//! to a sink MX on loopback (`spool.accept` from 256 concurrent writers, a
//! Reception event per message as the ingress records it, a Delivery event
//! per delivery), once without a webhook and once with one to a receiver on
//! loopback. Prints both runs' acceptance and delivery rates, the events/s
//! the receiver got while the node delivered, and how long after the last
//! delivery the webhook had everything.
//!
//! Size: EVENTS_BENCH_MESSAGES (default 20000). Addresses: 127.6.200.x.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::event::{Event, EventType};
use fleet::testkit::sink::{Sink, SinkConfig};
use mta::events::{Events, EventsConfig};
use mta::message::NewMessage;
use mta::queue::EgressMetrics;
use mta::spool::Spool;
use mta::webhook::{sender::Sender, HookLabel, HookStatus, WebhookMetrics};

mod support;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 6, 200, last)
}

fn message(n: usize) -> NewMessage {
    let mut text = format!(
        "From: App <app@yourdomain.com>\r\nTo: r{n}@sink.test\r\nSubject: bench {n}\r\n\
         X-Meta-Campaign: bench\r\nMessage-ID: <bench-{n}@yourdomain.com>\r\n\r\n"
    );
    while text.len() < 4096 {
        text.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    NewMessage {
        sender: "app@yourdomain.com".into(),
        recipients: vec![format!("r{n}@sink.test")],
        data: text.into(),
        cluster: "a1b2c3d4".into(),
        credential: "bench".into(),
        via: mta::message::Protocol::Smtp,
        peer: "127.6.200.1:40000".parse().unwrap(),
    }
}

/// A webhook receiver counting the events of every 2xx-answered POST.
async fn receiver(count: Arc<AtomicU64>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip(2), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let count = count.clone();
            async move {
                let n = memchr::memmem::find_iter(&body, b"\"event_id\"").count();
                count.fetch_add(n as u64, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Run {
    accepted_per_s: f64,
    delivered_per_s: f64,
    webhook_per_s_during: f64,
    drained_after: Option<Duration>,
}

async fn run(messages: usize, hook: Option<SocketAddr>, count: Arc<AtomicU64>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkConfig::accept(SocketAddr::new(ip(25).into(), 0)))
        .await
        .unwrap();
    let spool = Spool::open(&dir.path().join("spool")).await.unwrap();
    let events_config = EventsConfig {
        dir: dir.path().join("events"),
        ..Default::default()
    };
    let events = Events::open(&events_config, "bench").unwrap();
    let handle = support::start_engine(
        spool.clone(),
        support::to_sink(ip(54), sink.addr().to_string()),
        events.clone(),
        EgressMetrics::default(),
        fleet::RateLimit::Unlimited,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = hook {
        spawn_webhook(addr, &events, &events_config, stop.clone());
    }
    let started = Instant::now();
    let total = accept_all(&spool, &events, messages).await;
    let accepted = started.elapsed();
    sink.wait_for(total, Duration::from_secs(900))
        .await
        .unwrap();
    let delivered = started.elapsed();
    let during = count.load(Ordering::Relaxed);
    let drained_after = match hook {
        // Each message's Reception and Delivery.
        Some(_) => drained(&count, 2 * total as u64)
            .await
            .then(|| started.elapsed().saturating_sub(delivered)),
        None => None,
    };
    stop.cancel();
    handle.stop(Duration::from_secs(10)).await;
    spool.close();
    Run {
        accepted_per_s: total as f64 / accepted.as_secs_f64(),
        delivered_per_s: total as f64 / delivered.as_secs_f64(),
        webhook_per_s_during: during as f64 / delivered.as_secs_f64(),
        drained_after,
    }
}

/// A webhook sender posting the log's events to `addr` until `stop`.
fn spawn_webhook(
    addr: SocketAddr,
    events: &Arc<Events>,
    events_config: &EventsConfig,
    stop: tokio_util::sync::CancellationToken,
) {
    let sender = Sender {
        hook: fleet::Webhook {
            name: "bench".into(),
            url: format!("http://{addr}/hook"),
            events: None,
            secret: "bench-secret-0123456789".into(),
            batch_size: 500,
            linger: Duration::from_millis(100),
        },
        log: events.log().clone(),
        client: reqwest::Client::new(),
        config: events_config.clone(),
        status: Arc::new(parking_lot::Mutex::new(HookStatus::default())),
        metrics: WebhookMetrics::default(),
        label: HookLabel {
            webhook: "bench".into(),
        },
        readiness: None,
    };
    tokio::spawn(sender.run(stop));
}

/// 256 writers accept `messages` (rounded down to a multiple of 256) into
/// the spool, each with its Reception; returns how many.
async fn accept_all(spool: &Arc<Spool>, events: &Arc<Events>, messages: usize) -> usize {
    let workers = 256;
    let per = messages / workers;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (spool, events) = (spool.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let n = w * per + i;
                let id = spool.accept(message(n)).await.unwrap();
                let mut event = Event::new(EventType::Reception);
                event.id = id.0;
                event.recipient = format!("r{n}@sink.test");
                events.emit(event);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    per * workers
}

/// Whether the receiver has counted `want` events within 5 minutes.
async fn drained(count: &AtomicU64, want: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    while count.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    count.load(Ordering::Relaxed) >= want
}

fn main() {
    let messages: usize = std::env::var("EVENTS_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let count = Arc::new(AtomicU64::new(0));
        let base = run(messages, None, count.clone()).await;
        println!(
            "without webhook: {messages} messages of 4 KB; accepted {:.0} msg/s; delivered {:.0} msg/s",
            base.accepted_per_s, base.delivered_per_s
        );
        let addr = receiver(count.clone()).await;
        let with = run(messages, Some(addr), count.clone()).await;
        println!(
            "with webhook:    accepted {:.0} msg/s; delivered {:.0} msg/s ({:.0} events/s made); \
             webhook received {:.0} events/s while the node delivered; all {} events at the \
             webhook {}",
            with.accepted_per_s,
            with.delivered_per_s,
            2.0 * with.delivered_per_s,
            with.webhook_per_s_during,
            2 * (messages / 256 * 256),
            match with.drained_after {
                Some(d) => format!("{:.2} s after the last delivery", d.as_secs_f64()),
                None => "NOT within 300 s".to_string(),
            }
        );
    });
}
