//! Failed authentications counted across connections, per client address
//! (IPv6 per prefix) and per username, as Postfix's anvil counts them:
//! after `auth_failure_limit` failures within `auth_failure_window`, that
//! address (or username) is refused AUTH (`454 4.7.0`, HTTP 429 with
//! `Retry-After`) until the window ends. Other clients are unaffected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Entries kept before old windows are pruned.
const PRUNE_AT: usize = 100_000;

#[derive(Default)]
pub struct Anvil {
    by_address: Mutex<HashMap<IpAddr, Window>>,
    by_user: Mutex<HashMap<String, Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Why AUTH is refused for now, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error("too many failed authentications from your address: try again in {}", retry_words(*.0))]
    Address(Duration),
    #[error("too many failed authentications for this username: try again in {}", retry_words(*.0))]
    User(Duration),
}

/// Whole seconds, at least one: a client cannot wait a fraction.
fn retry_words(wait: Duration) -> String {
    fleet::clock::words(Duration::from_secs(wait.as_secs().max(1)))
}

impl Blocked {
    pub fn retry_after(&self) -> Duration {
        match self {
            Blocked::Address(d) | Blocked::User(d) => *d,
        }
    }
}

/// The limits in service (from `[smtp]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub failures: u32,
    pub window: Duration,
}

fn remaining(window: Option<&Window>, limits: Limits, now: Instant) -> Option<Duration> {
    let window = window?;
    let end = window.started + limits.window;
    (window.failures >= limits.failures && now < end).then(|| end - now)
}

fn count<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Window>>, key: K, limits: Limits) {
    let now = Instant::now();
    let mut map = map.lock();
    if map.len() >= PRUNE_AT {
        map.retain(|_, w| now.duration_since(w.started) < limits.window);
    }
    let window = map.entry(key).or_insert(Window {
        started: now,
        failures: 0,
    });
    if now.duration_since(window.started) >= limits.window {
        *window = Window {
            started: now,
            failures: 0,
        };
    }
    window.failures += 1;
}

impl Anvil {
    /// `Err` while `address` or `username` is over its limit.
    pub fn check(&self, address: IpAddr, username: &str, limits: Limits) -> Result<(), Blocked> {
        let now = Instant::now();
        if let Some(wait) = remaining(self.by_address.lock().get(&address), limits, now) {
            return Err(Blocked::Address(wait));
        }
        if let Some(wait) = remaining(self.by_user.lock().get(username), limits, now) {
            return Err(Blocked::User(wait));
        }
        Ok(())
    }

    /// Counts one failure for both.
    pub fn failed(&self, address: IpAddr, username: &str, limits: Limits) {
        count(&self.by_address, address, limits);
        count(&self.by_user, username.to_string(), limits);
    }
}

/// The key a client address is counted under: IPv4 as is, IPv6 by its
/// first `v6_prefix` bits (a /64 is one client, as one host gets a /64).
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_user_then_the_window_ends() {
        let anvil = Anvil::default();
        let limits = Limits {
            failures: 3,
            window: Duration::from_millis(200),
        };
        let a: IpAddr = "127.1.0.1".parse().unwrap();
        let b: IpAddr = "127.1.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(anvil.check(a, "u1", limits), Ok(()));
            anvil.failed(a, "u1", limits);
        }
        assert!(matches!(
            anvil.check(a, "other", limits),
            Err(Blocked::Address(_))
        ));
        assert!(matches!(
            anvil.check(b, "u1", limits),
            Err(Blocked::User(_))
        ));
        assert_eq!(anvil.check(b, "u2", limits), Ok(()));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(anvil.check(a, "u1", limits), Ok(()));
    }

    #[test]
    fn the_refusal_says_the_wait_in_whole_seconds_at_least_one() {
        assert_eq!(
            Blocked::Address(Duration::from_millis(300)).to_string(),
            "too many failed authentications from your address: try again in 1s"
        );
        assert_eq!(
            Blocked::User(Duration::from_millis(65_900)).to_string(),
            "too many failed authentications for this username: try again in 1m 5s"
        );
    }

    #[test]
    fn ipv6_counts_per_prefix() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let two: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(one, 64), client_key(two, 64));
        assert_ne!(client_key(one, 64), client_key(other, 64));
        assert_ne!(client_key(one, 128), client_key(two, 128));
        let v4: IpAddr = "127.1.0.1".parse().unwrap();
        assert_eq!(client_key(v4, 64), v4);
    }
}
