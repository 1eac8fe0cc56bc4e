//! Wall-clock time as Unix seconds and milliseconds, the one way every
//! crate stamps records, events and files; and durations in words, the one
//! way logs and replies write them.

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

/// A duration as logs and replies write it (humantime): to the millisecond
/// under a minute (`850ms`, `12s 345ms`), to the second from then on
/// (`2m 5s`, `1day 3h 4m`).
pub fn words(duration: Duration) -> String {
    let duration = if duration >= Duration::from_secs(60) {
        Duration::from_secs(duration.as_secs())
    } else {
        Duration::from_millis(duration.as_millis() as u64)
    };
    humantime::format_duration(duration).to_string()
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

    #[test]
    fn words_are_to_the_millisecond_under_a_minute_then_to_the_second() {
        for (duration, written) in [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(850_400), "850ms"),
            (Duration::from_millis(12_345), "12s 345ms"),
            (Duration::from_millis(125_500), "2m 5s"),
            (Duration::from_secs(97_440), "1day 3h 4m"),
        ] {
            assert_eq!(words(duration), written, "{duration:?}");
        }
    }
}
