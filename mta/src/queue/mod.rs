//! The scheduled queue: every recipient waiting for an attempt, ordered by
//! due time, owned by one task that sleeps until the next due one.
//!
//! Not-yet-due recipients sit in a binary heap; due ones in a FIFO waiting
//! for two things: a delivery slot (a bound on attempts in flight) and a
//! permit of the node's rate limiter. When the limiter says "not before T",
//! the task sleeps until T: a held backlog costs nothing while it waits, and
//! the recipient at the head gets one `Delayed` event. A reload that changes
//! the cluster's `rate_limit` rebuilds the limiter at once.
//!
//! Only [`Job`]s (32 bytes) are held; bodies stay in the spool.

use parking_lot::Mutex;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleet::RateLimit;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::delivery::egress::{Hold, Via};
use crate::spool::{now_ms, Job, Spool};
use crate::throttle::Throttle;
pub use metrics::EgressMetrics;

pub mod metrics;
pub mod sweep;

/// Where recipients come back after a transient failure.
#[derive(Clone, Default)]
pub struct Requeue {
    inner: Arc<(Mutex<Vec<Job>>, Notify)>,
}

impl Requeue {
    pub fn push(&self, job: Job) {
        self.inner.0.lock().push(job);
        self.inner.1.notify_one();
    }

    fn take(&self) -> Vec<Job> {
        std::mem::take(&mut *self.inner.0.lock())
    }
}

/// Orders the heap by due time, earliest first, then by arrival.
struct Due(Job);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.0.due_ms, other.0.seq, other.0.rcpt).cmp(&(self.0.due_ms, self.0.seq, self.0.rcpt))
    }
}

/// What the queue hands a due, permitted recipient to.
pub trait Dispatch: Send + 'static {
    /// `via`: the egress source [`Dispatch::source`] gave for it.
    fn dispatch(&self, job: Job, slot: OwnedSemaphorePermit, via: Option<Via>);
    /// The recipient at the head waits `wait`, for `why`.
    fn delayed(&self, job: Job, wait: Duration, why: Held);
    /// An egress source with a permit for the next recipient (`Ok(None)`:
    /// none needed), or how long the queue must wait for one.
    fn source(&self) -> impl std::future::Future<Output = Result<Option<Via>, Hold>> + Send {
        async { Ok(None) }
    }
    /// Queued recipients that admin bounce `orders` may concern: bounce the
    /// matching ones, put the others back (through the requeue).
    fn sweep(&self, jobs: Vec<Job>, orders: Vec<sweep::BounceOrder>) {
        drop((jobs, orders));
    }
}

/// Why the recipient at the head of the queue waits.
#[derive(Debug, Clone)]
pub enum Held {
    /// The node's rate limit (the cluster's `rate_limit`).
    NodeLimit(RateLimit),
    /// No egress source is in service with a permit; the reason in words.
    Egress(String),
}

/// How the queue learns the rate limit and whether delivery is on hold: a
/// version that changes on reload, and a function reading both in force.
pub struct LimitSource {
    pub changed: watch::Receiver<u64>,
    pub current: Box<dyn Fn() -> (RateLimit, bool) + Send>,
}

pub struct Scheduler {
    spool: Arc<Spool>,
    requeue: Requeue,
    heap: BinaryHeap<Due>,
    ready: VecDeque<Job>,
    throttle: Throttle,
    head_delayed: bool,
    /// No egress source has a permit before this instant.
    sources_held_until: Option<tokio::time::Instant>,
    slots: Arc<Semaphore>,
    metrics: EgressMetrics,
    sweeps: sweep::Sweeps,
}

/// A rate limiter wakes the queue a little after the instant it names, so
/// that jitter in delivery never makes the observed rate exceed the limit.
const LIMIT_MARGIN_DIVISOR: u32 = 100;

impl Scheduler {
    pub fn new(
        spool: Arc<Spool>,
        requeue: Requeue,
        limit: RateLimit,
        max_in_flight: usize,
        metrics: EgressMetrics,
    ) -> Scheduler {
        Scheduler {
            spool,
            requeue,
            heap: BinaryHeap::new(),
            ready: VecDeque::new(),
            throttle: Throttle::new(limit),
            head_delayed: false,
            sources_held_until: None,
            slots: Arc::new(Semaphore::new(max_in_flight.max(1))),
            metrics,
            sweeps: sweep::Sweeps::default(),
        }
    }

    /// Admin bounce orders come in here.
    pub fn with_sweeps(mut self, sweeps: sweep::Sweeps) -> Scheduler {
        self.sweeps = sweeps;
        self
    }

    /// Takes every queued recipient the pending orders may concern out of
    /// the queue and hands them, with the orders, to `dispatch`.
    fn sweep(&mut self, dispatch: &impl Dispatch) {
        let orders = self.sweeps.take();
        if orders.is_empty() {
            return;
        }
        let candidate = |job: &Job| orders.iter().any(|o| o.selector.may_match(job));
        let (mut taken, kept): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|Due(job)| job)
            .partition(|job| candidate(job));
        self.heap = kept.into_iter().map(Due).collect();
        let ready = std::mem::take(&mut self.ready);
        for job in ready {
            if candidate(&job) {
                taken.push(job);
            } else {
                self.ready.push_back(job);
            }
        }
        dispatch.sweep(taken, orders);
    }

    fn intake(&mut self, now: u64) {
        for job in self
            .spool
            .take_arrivals()
            .into_iter()
            .chain(self.requeue.take())
        {
            if job.due_ms <= now {
                self.ready.push_back(job);
            } else {
                self.heap.push(Due(job));
            }
        }
        while let Some(top) = self.heap.peek() {
            if top.0.due_ms > now {
                break;
            }
            if let Some(Due(job)) = self.heap.pop() {
                self.ready.push_back(job);
            }
        }
        if self.ready.capacity() > 4096 && self.ready.capacity() > self.ready.len() * 4 {
            self.ready.shrink_to(self.ready.len() * 2);
        }
    }

    /// Runs until `shutdown`; recipients still queued then stay in the spool.
    pub async fn run(
        mut self,
        dispatch: impl Dispatch,
        mut limits: LimitSource,
        shutdown: CancellationToken,
    ) {
        let mut limits_open = true;
        let mut held = (limits.current)().1;
        if held {
            tracing::warn!("delivery is on hold: messages stay in the spool");
        }
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let now = now_ms();
            self.intake(now);
            self.sweep(&dispatch);
            let wake = self
                .heap
                .peek()
                .map(|top| Duration::from_millis(top.0.due_ms.saturating_sub(now)));
            let pass = self.dispatch_ready(&dispatch, held, wake).await;
            self.publish_gauges(pass.limited);
            let sleep = async {
                match pass.wake {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            let slot = async {
                if pass.need_slot {
                    let _ = self.slots.clone().acquire_owned().await;
                } else {
                    std::future::pending::<()>().await
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                changed = limits.changed.changed(), if limits_open => {
                    if changed.is_ok() {
                        self.apply_limits(&limits, &mut held);
                    } else {
                        // The configuration source is gone: keep the limit.
                        limits_open = false;
                    }
                }
                _ = self.spool.arrived().notified() => {}
                _ = self.requeue.inner.1.notified() => {}
                _ = self.sweeps.notified() => {}
                _ = sleep => {}
                _ = slot => {}
            }
        }
    }

    /// Hands due recipients to `dispatch` while a delivery slot, the rate
    /// limit and an egress source allow (none while `held`). `wake`: when
    /// the next recipient in the heap is due.
    async fn dispatch_ready(
        &mut self,
        dispatch: &impl Dispatch,
        held: bool,
        mut wake: Option<Duration>,
    ) -> Pass {
        let (mut need_slot, mut limited) = (false, false);
        while let Some(&job) = self.ready.front().filter(|_| !held) {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                need_slot = true;
                break;
            };
            if let Some(until) = self.sources_held_until {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if !left.is_zero() {
                    limited = true;
                    wake = Some(wake.map_or(left, |w| w.min(left)));
                    break;
                }
                self.sources_held_until = None;
            }
            let (wait, why) = match self.permit(dispatch).await {
                Ok(via) => {
                    self.ready.pop_front();
                    self.head_delayed = false;
                    dispatch.dispatch(job, slot, via);
                    continue;
                }
                Err(hold) => hold,
            };
            drop(slot);
            limited = true;
            if !self.head_delayed {
                self.head_delayed = true;
                self.metrics.delayed.inc();
                dispatch.delayed(job, wait, why);
            }
            wake = Some(wake.map_or(wait, |w| w.min(wait)));
            break;
        }
        Pass {
            wake,
            need_slot,
            limited,
        }
    }

    /// The rate limit's permit, then an egress source for the recipient at
    /// the head; else how long it must wait (with a margin) and why.
    async fn permit(&mut self, dispatch: &impl Dispatch) -> Result<Option<Via>, (Duration, Held)> {
        match self.throttle.check() {
            Ok(()) => match dispatch.source().await {
                Ok(via) => Ok(via),
                Err(hold) => {
                    let wait = hold.wait + hold.wait / LIMIT_MARGIN_DIVISOR;
                    self.sources_held_until = Some(tokio::time::Instant::now() + wait);
                    Err((wait, Held::Egress(hold.why)))
                }
            },
            Err(wait) => Err((
                wait + wait / LIMIT_MARGIN_DIVISOR,
                Held::NodeLimit(self.throttle.limit()),
            )),
        }
    }

    fn publish_gauges(&self, limited: bool) {
        self.metrics
            .scheduled
            .set((self.heap.len() + self.ready.len()) as i64);
        self.metrics
            .rate_limited
            .set(if limited { self.ready.len() as i64 } else { 0 });
    }

    /// A reload: the hold and the rate limit in force now. The egress
    /// sources may have changed too, so they are asked again.
    fn apply_limits(&mut self, limits: &LimitSource, held: &mut bool) {
        let (limit, hold) = (limits.current)();
        if hold != *held {
            *held = hold;
            tracing::warn!(hold, "delivery hold changed");
        }
        let before = self.throttle.limit();
        if self.throttle.set(limit) {
            tracing::info!(%before, now = %limit, "delivery rate limit changed");
            self.head_delayed = false;
        }
        self.sources_held_until = None;
    }
}

/// What one pass over the due recipients left: when to look again, whether
/// it waits for a delivery slot, and whether the rate limit or the egress
/// sources held it back.
struct Pass {
    wake: Option<Duration>,
    need_slot: bool,
    limited: bool,
}

#[cfg(test)]
mod tests;
