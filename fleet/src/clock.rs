//! Wall-clock time as Unix seconds and milliseconds, the one way every
//! crate stamps records, events and files.

use std::time::{Duration, SystemTime};

/// Seconds since the Unix epoch of `time` (0 before the epoch).
pub fn secs_of(time: SystemTime) -> u64 {
    since_epoch(time).as_secs()
}

/// Milliseconds since the Unix epoch of `time` (0 before the epoch).
pub fn millis_of(time: SystemTime) -> u64 {
    since_epoch(time).as_millis() as u64
}

/// Seconds since the Unix epoch, now.
pub fn unix_secs() -> u64 {
    secs_of(SystemTime::now())
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis() -> u64 {
    millis_of(SystemTime::now())
}

/// Microseconds since the Unix epoch, now (for ids that must grow).
pub fn unix_micros() -> u64 {
    since_epoch(SystemTime::now()).as_micros() as u64
}

fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_epoch_is_zero_and_now_is_after_2020() {
        assert_eq!(secs_of(SystemTime::UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert!(unix_secs() > 1_577_836_800);
        assert!(unix_millis() / 1000 >= unix_secs() - 1);
    }
}
