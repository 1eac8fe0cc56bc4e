//! The per-node delivery rate limit: a `governor` limiter built from the
//! cluster's `rate_limit`, rebuilt when a reload changes it.

use std::time::Duration;

use fleet::RateLimit;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, RateLimiter};

pub struct Throttle {
    limit: RateLimit,
    clock: DefaultClock,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Throttle {
    pub fn new(limit: RateLimit) -> Throttle {
        let clock = DefaultClock::default();
        Throttle {
            limit,
            limiter: Self::build(limit, &clock),
            clock,
        }
    }

    fn build(limit: RateLimit, clock: &DefaultClock) -> Option<DefaultDirectRateLimiter> {
        limit
            .quota()
            .map(|quota| RateLimiter::direct_with_clock(quota, clock.clone()))
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes effect at once; returns whether the limit changed.
    pub fn set(&mut self, limit: RateLimit) -> bool {
        if limit == self.limit {
            return false;
        }
        self.limit = limit;
        self.limiter = Self::build(limit, &self.clock);
        true
    }

    /// Takes one permit, or says how long until the next one.
    pub fn check(&self) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_wait_and_changes_on_set() {
        let mut t = Throttle::new("10/s,max_burst=1".parse().unwrap());
        assert_eq!(t.check(), Ok(()));
        let wait = t.check().unwrap_err();
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(!t.set("10/s,max_burst=1".parse().unwrap()));
        assert!(t.set(RateLimit::Unlimited));
        for _ in 0..1000 {
            assert_eq!(t.check(), Ok(()));
        }
        assert!(t.set("1/hr".parse().unwrap()));
        assert_eq!(t.check(), Ok(()));
        assert!(t.check().unwrap_err() > Duration::from_secs(3000));
    }
}
