use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;
use crate::message::NewMessage;

struct Recorder {
    tx: mpsc::UnboundedSender<(Job, Instant)>,
    delayed: Arc<Mutex<Vec<u64>>>,
}

impl Dispatch for Recorder {
    fn dispatch(&self, job: Job, slot: OwnedSemaphorePermit, _via: Option<Via>) {
        let _ = self.tx.send((job, Instant::now()));
        drop(slot);
    }
    fn delayed(&self, job: Job, _wait: Duration, _why: Held) {
        self.delayed.lock().unwrap().push(job.seq);
    }
}

fn message() -> NewMessage {
    NewMessage {
        sender: "s@example.com".into(),
        recipients: vec!["r@example.net".into()],
        data: Bytes::from_static(b"Subject: t\r\n\r\nx\r\n"),
        cluster: "a1b2c3d4".into(),
        credential: "c".into(),
        via: crate::message::Protocol::Smtp,
        peer: "127.2.0.1:1".parse().unwrap(),
    }
}

struct Harness {
    spool: Arc<Spool>,
    requeue: Requeue,
    got: mpsc::UnboundedReceiver<(Job, Instant)>,
    delayed: Arc<Mutex<Vec<u64>>>,
    limit: watch::Sender<u64>,
    current: Arc<Mutex<RateLimit>>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start(limit: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let requeue = Requeue::default();
    let (tx, got) = mpsc::unbounded_channel();
    let delayed = Arc::new(Mutex::new(Vec::new()));
    let (limit_tx, limit_rx) = watch::channel(0);
    let current = Arc::new(Mutex::new(limit.parse::<RateLimit>().unwrap()));
    let shutdown = CancellationToken::new();
    let scheduler = Scheduler::new(
        spool.clone(),
        requeue.clone(),
        *current.lock().unwrap(),
        64,
        EgressMetrics::default(),
    );
    let reader = current.clone();
    tokio::spawn(scheduler.run(
        Recorder {
            tx,
            delayed: delayed.clone(),
        },
        LimitSource {
            changed: limit_rx,
            current: Box::new(move || (*reader.lock().unwrap(), false)),
        },
        shutdown.clone(),
    ));
    Harness {
        spool,
        requeue,
        got,
        delayed,
        limit: limit_tx,
        current,
        shutdown,
        _dir: dir,
    }
}

async fn next(h: &mut Harness) -> (Job, Instant) {
    tokio::time::timeout(Duration::from_secs(10), h.got.recv())
        .await
        .expect("nothing dispatched within 10 s")
        .unwrap()
}

#[tokio::test]
async fn due_messages_go_at_once_in_order() {
    let mut h = start("unlimited").await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(h.spool.accept(message()).await.unwrap());
    }
    for id in ids {
        assert_eq!(next(&mut h).await.0.id(), id);
    }
    h.shutdown.cancel();
}

#[tokio::test]
async fn a_retry_waits_until_it_is_due() {
    let mut h = start("unlimited").await;
    h.spool.accept(message()).await.unwrap();
    let (mut job, _) = next(&mut h).await;
    let asked = Instant::now();
    job.due_ms = now_ms() + 300;
    job.attempts = 1;
    h.requeue.push(job);
    let (back, at) = next(&mut h).await;
    assert_eq!(back.attempts, 1);
    let waited = at - asked;
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    h.shutdown.cancel();
}

#[tokio::test]
async fn the_rate_limit_paces_and_a_change_takes_effect() {
    let mut h = start("20/s,max_burst=1").await;
    for _ in 0..30 {
        h.spool.accept(message()).await.unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..10 {
        times.push(next(&mut h).await.1);
    }
    let span = times[9] - times[0];
    assert!(
        span >= Duration::from_millis(450),
        "10 at 20/s took {span:?}"
    );
    // Held ones got Delayed events (one per recipient at the head).
    assert!(h.delayed.lock().unwrap().len() >= 9);
    // Now unlimited: the remaining 20 come at once.
    *h.current.lock().unwrap() = RateLimit::Unlimited;
    h.limit.send_replace(1);
    let started = Instant::now();
    for _ in 0..20 {
        next(&mut h).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    h.shutdown.cancel();
}
