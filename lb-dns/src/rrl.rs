//! Response Rate Limiting for UDP, as BIND, Knot and NSD have it: the
//! replies to one client prefix (/24 for IPv4, /56 for IPv6 by default) are
//! counted per answer (the same name and type; every NXDOMAIN of the zone
//! together; each error code together) per second. Past the rate, every
//! `slip`-th limited reply goes out as an empty truncated reply (TC), so a
//! real client behind a spoofed-at address retries over TCP, and the others
//! are dropped, so a spoofed flood gets no amplification. Replies over TCP
//! and to queries with a valid server cookie are never limited.
//!
//! The table is a fixed array of atomic words (one per bucket, no lock, no
//! allocation): a 32-bit tag of the (prefix, answer) hash, the second and the
//! count in that second. Two keys that share a bucket reset each other's
//! count, which can only let more through, never limit an innocent client.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

/// `[rrl]` in the node config.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RrlSettings {
    /// Identical replies per client prefix per second; 0 turns RRL off.
    pub responses_per_second: u32,
    /// Every `slip`-th limited reply is sent truncated (TC) instead of
    /// dropped; 0 drops them all, 1 truncates them all.
    pub slip: u32,
    /// The prefix lengths that make one client.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Buckets in the table (rounded up to a power of two).
    pub table_size: usize,
}

/// Off unless configured, as in BIND and Knot (`configs/lb-dns.toml` turns
/// it on at NSD's default of 200): tools and tests that poll one name from
/// one address are not limited by surprise.
impl Default for RrlSettings {
    fn default() -> RrlSettings {
        RrlSettings {
            responses_per_second: 0,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            table_size: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Send an empty reply with TC set.
    Slip,
    Drop,
}

pub struct Rrl {
    settings: RrlSettings,
    table: Box<[AtomicU64]>,
    mask: usize,
    hasher: RandomState,
    epoch: Instant,
    pub slipped: Counter,
    pub dropped: Counter,
}

/// The client's prefix, with its family.
fn prefix(ip: IpAddr, v4: u8, v6: u8) -> (u8, u128) {
    match ip {
        IpAddr::V4(ip) => {
            let bits = u32::from(ip);
            let keep = u32::MAX
                .checked_shl(32 - u32::from(v4.min(32)))
                .unwrap_or(0);
            (4, u128::from(bits & keep))
        }
        IpAddr::V6(ip) => {
            let bits = u128::from(ip);
            let keep = u128::MAX
                .checked_shl(128 - u32::from(v6.min(128)))
                .unwrap_or(0);
            (6, bits & keep)
        }
    }
}

impl Rrl {
    /// `None` when the rate is 0 (off).
    pub fn new(settings: RrlSettings) -> Option<Rrl> {
        if settings.responses_per_second == 0 {
            return None;
        }
        let size = settings.table_size.clamp(64, 1 << 24).next_power_of_two();
        Some(Rrl {
            settings,
            table: (0..size).map(|_| AtomicU64::new(0)).collect(),
            mask: size - 1,
            hasher: RandomState::new(),
            epoch: Instant::now(),
            slipped: Counter::default(),
            dropped: Counter::default(),
        })
    }

    /// Counts one reply to `src` whose answer is `answer` (a hash of what
    /// makes replies identical) and says what to do with it.
    pub fn check(&self, src: IpAddr, answer: u64) -> Verdict {
        let mut h = self.hasher.build_hasher();
        prefix(src, self.settings.ipv4_prefix, self.settings.ipv6_prefix).hash(&mut h);
        answer.hash(&mut h);
        let hash = h.finish();
        let bucket = &self.table[(hash as usize) & self.mask];
        let tag = hash >> 32;
        let second = self.epoch.elapsed().as_secs() & 0xffff;
        let mut current = bucket.load(Ordering::Relaxed);
        let count = loop {
            let same = current >> 32 == tag && (current >> 16) & 0xffff == second;
            let count = if same {
                (current & 0xffff).saturating_add(1).min(0xffff)
            } else {
                1
            };
            let next = (tag << 32) | (second << 16) | count;
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break count,
                Err(seen) => current = seen,
            }
        };
        let rate = u64::from(self.settings.responses_per_second);
        if count <= rate {
            return Verdict::Answer;
        }
        let slip = u64::from(self.settings.slip);
        if slip > 0 && (count - rate) % slip == 0 {
            self.slipped.inc();
            Verdict::Slip
        } else {
            self.dropped.inc();
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_limited_per_answer_and_slips_every_nth() {
        let rrl = Rrl::new(RrlSettings {
            responses_per_second: 5,
            slip: 2,
            ..RrlSettings::default()
        })
        .unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let same_prefix: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..11)
            .map(|i| rrl.check(if i % 2 == 0 { a } else { same_prefix }, 7))
            .collect();
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Answer));
        assert_eq!(
            &verdicts[5..],
            &[
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip
            ]
        );
        assert_eq!(rrl.check(other, 7), Verdict::Answer, "another prefix");
        assert_eq!(rrl.check(a, 8), Verdict::Answer, "another answer");
        assert!(Rrl::new(RrlSettings {
            responses_per_second: 0,
            ..RrlSettings::default()
        })
        .is_none());
    }

    #[test]
    fn prefixes_follow_the_settings() {
        let p = |s: &str| prefix(s.parse().unwrap(), 24, 56);
        assert_eq!(p("192.0.2.1"), p("192.0.2.254"));
        assert_ne!(p("192.0.2.1"), p("192.0.3.1"));
        assert_eq!(p("2001:db8:0:ff::1"), p("2001:db8:0:1::2"));
        assert_ne!(p("2001:db8:0:100::1"), p("2001:db8:0:1::2"));
    }
}
