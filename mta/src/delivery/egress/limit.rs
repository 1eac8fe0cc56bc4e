//! One source's `rate_limit`: fleet-wide through Redis when configured and
//! reachable, else this node's share of it (the limit divided by the MTAs
//! of the cluster, which all send over the same sources).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet::RateLimit;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use super::shared::{Cell, SharedThrottles};

/// Whose count a permit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No limit.
    Unlimited,
    /// The fleet-wide count in Redis.
    Fleet,
    /// This node's share (no Redis, or Redis unreachable).
    Share,
}

pub struct SourceLimit {
    limit: RateLimit,
    /// The MTAs sharing the source.
    nodes: u32,
    clock: DefaultClock,
    share: Mutex<Option<DefaultDirectRateLimiter>>,
    /// The last permit came from Redis: the next share limiter starts
    /// empty, so the switch does not add a burst to what Redis allowed.
    was_fleet: AtomicBool,
}

impl SourceLimit {
    pub fn new(limit: RateLimit, nodes: usize) -> SourceLimit {
        SourceLimit {
            limit,
            nodes: nodes.clamp(1, u32::MAX as usize) as u32,
            clock: DefaultClock::default(),
            share: Mutex::new(None),
            was_fleet: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// The whole limit as a GCRA cell; `None` when unlimited.
    pub fn cell(&self) -> Option<Cell> {
        let RateLimit::Limited {
            count,
            period,
            max_burst,
        } = self.limit
        else {
            return None;
        };
        Some(Cell {
            interval: period / count,
            burst: max_burst.unwrap_or(count),
        })
    }

    /// This node's share: the interval times the nodes, the burst divided.
    fn share_quota(&self) -> Option<(Quota, u32)> {
        let cell = self.cell()?;
        let burst = (cell.burst / self.nodes).max(1);
        let quota = Quota::with_period(cell.interval.saturating_mul(self.nodes))?
            .allow_burst(NonZeroU32::new(burst)?);
        Some((quota, burst))
    }

    /// Takes a permit, or says how long until the next one.
    pub async fn check(
        &self,
        shared: Option<&SharedThrottles>,
        key: &str,
    ) -> (Mode, Result<(), Duration>, Option<String>) {
        let Some(cell) = self.cell() else {
            return (Mode::Unlimited, Ok(()), None);
        };
        let mut failure = None;
        if let Some(shared) = shared {
            match shared.check(key, cell).await {
                Ok(answer) => {
                    self.was_fleet.store(true, Ordering::Relaxed);
                    return (Mode::Fleet, answer, None);
                }
                Err(why) => failure = Some(why),
            }
        }
        (Mode::Share, self.check_share(), failure)
    }

    fn check_share(&self) -> Result<(), Duration> {
        let Some((quota, burst)) = self.share_quota() else {
            return Ok(());
        };
        let mut share = self.share.lock();
        let switching = self.was_fleet.swap(false, Ordering::Relaxed);
        if share.is_none() || switching {
            let limiter = RateLimiter::direct_with_clock(quota, self.clock.clone());
            if switching {
                // Start empty: Redis may have just granted a burst.
                if let Some(n) = NonZeroU32::new(burst) {
                    let _ = limiter.check_n(n);
                }
            }
            *share = Some(limiter);
        }
        match share.as_ref().map(|limiter| limiter.check()) {
            Some(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_redis_a_node_holds_to_its_share() {
        // 30 per 30 s over three nodes: 10 per 30 s here, a burst of 10.
        let limit = SourceLimit::new("30/30s".parse().unwrap(), 3);
        let mut granted = 0;
        for _ in 0..30 {
            let (mode, answer, failure) = limit.check(None, "k").await;
            assert_eq!(mode, Mode::Share);
            assert!(failure.is_none());
            granted += usize::from(answer.is_ok());
        }
        assert_eq!(granted, 10);
        let (_, answer, _) = limit.check(None, "k").await;
        let wait = answer.unwrap_err();
        assert!(
            wait > Duration::from_secs(2) && wait <= Duration::from_secs(3),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn unlimited_needs_no_one() {
        let limit = SourceLimit::new(RateLimit::Unlimited, 3);
        for _ in 0..1000 {
            assert_eq!(limit.check(None, "k").await.0, Mode::Unlimited);
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_the_share_at_once() {
        // Nothing listens on this port of the egress test range.
        let shared =
            SharedThrottles::new("redis://127.2.255.1:1/", Duration::from_secs(2)).unwrap();
        let limit = SourceLimit::new("2/s,max_burst=2".parse().unwrap(), 2);
        let (mode, answer, failure) = limit.check(Some(&shared), "k").await;
        assert_eq!(mode, Mode::Share);
        assert!(answer.is_ok());
        assert!(failure.unwrap().contains("127.2.255.1"));
        // The next check does not wait on Redis again.
        let started = std::time::Instant::now();
        let (mode, answer, failure) = limit.check(Some(&shared), "k").await;
        assert_eq!(mode, Mode::Share);
        assert!(answer.is_err(), "a share of 1/s with burst 1 allows one");
        assert!(failure.is_some());
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
