//! Rate-limit syntax, as KumoMTA writes it, and its one translation into a
//! `governor::Quota`.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::Quota;

/// A per-MTA delivery rate: `unlimited`, or `<count>/<period>[,max_burst=<n>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum RateLimit {
    #[default]
    Unlimited,
    Limited {
        count: u32,
        period: Duration,
        max_burst: Option<u32>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid rate limit `{spec}`: {why}")]
pub struct RateLimitError {
    spec: String,
    why: String,
}

impl RateLimit {
    /// The governor quota for this limit; `None` means unlimited.
    ///
    /// The burst is `max_burst` when given, else the whole count (KumoMTA's
    /// rule), and permits are replenished every `period / count`.
    pub fn quota(&self) -> Option<Quota> {
        match *self {
            RateLimit::Unlimited => None,
            RateLimit::Limited {
                count,
                period,
                max_burst,
            } => {
                let replenish = period / count;
                let burst = NonZeroU32::new(max_burst.unwrap_or(count)).unwrap_or(NonZeroU32::MIN);
                Quota::with_period(replenish).map(|q| q.allow_burst(burst))
            }
        }
    }

    /// The wording the dashboard and the Clusters API use: `500/hr per MTA`.
    pub fn per_mta_wording(&self) -> String {
        match self {
            RateLimit::Unlimited => "unlimited".to_string(),
            limited => format!("{limited} per MTA"),
        }
    }
}

fn period_unit(unit: &str) -> Option<u64> {
    Some(match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    })
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |why: String| RateLimitError {
            spec: spec.to_string(),
            why,
        };
        let trimmed = spec.trim();
        if trimmed.eq_ignore_ascii_case("unlimited") {
            return Ok(RateLimit::Unlimited);
        }
        let (count, rest) = trimmed.split_once('/').ok_or_else(|| {
            fail("expected `unlimited` or `<count>/<period>`, such as `500/hr`".into())
        })?;
        let digits: String = count.chars().filter(|c| *c != '_' && *c != ',').collect();
        let count: u32 = digits
            .trim()
            .parse()
            .map_err(|_| fail(format!("`{}` is not a whole number", count.trim())))?;
        if count == 0 {
            return Err(fail(
                "the count must be at least 1 (stop sending by draining instead)".into(),
            ));
        }
        let mut parts = rest.split(',');
        let period = parts.next().unwrap_or_default().trim();
        let split = period
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period.len());
        let (multiplier, unit) = period.split_at(split);
        let multiplier: u64 = if multiplier.is_empty() {
            1
        } else {
            multiplier
                .parse()
                .map_err(|_| fail(format!("`{multiplier}` is not a whole number")))?
        };
        let unit_secs = period_unit(unit).ok_or_else(|| {
            fail(format!(
                "unknown period `{unit}` (use s, min, h or d, optionally with a multiplier such as 30min)"
            ))
        })?;
        if multiplier == 0 {
            return Err(fail("the period must be longer than zero".into()));
        }
        let period = Duration::from_secs(multiplier.saturating_mul(unit_secs));
        let mut max_burst = None;
        for option in parts {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| fail(format!("`{}` should be `max_burst=<n>`", option.trim())))?;
            if key.trim() != "max_burst" {
                return Err(fail(format!(
                    "unknown option `{}` (only max_burst is known)",
                    key.trim()
                )));
            }
            let burst: u32 = value.trim().parse().map_err(|_| {
                fail(format!(
                    "max_burst `{}` is not a whole number",
                    value.trim()
                ))
            })?;
            if burst == 0 {
                return Err(fail("max_burst must be at least 1".into()));
            }
            max_burst = Some(burst);
        }
        Ok(RateLimit::Limited {
            count,
            period,
            max_burst,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RateLimit::Unlimited => f.write_str("unlimited"),
            RateLimit::Limited {
                count,
                period,
                max_burst,
            } => {
                let secs = period.as_secs();
                let (n, unit) = [(86_400, "day"), (3_600, "hr"), (60, "min"), (1, "s")]
                    .into_iter()
                    .find(|(unit, _)| secs % unit == 0)
                    .map(|(unit, name)| (secs / unit, name))
                    .unwrap_or((secs, "s"));
                if n == 1 {
                    write!(f, "{count}/{unit}")?;
                } else {
                    write!(f, "{count}/{n}{unit}")?;
                }
                if let Some(burst) = max_burst {
                    write!(f, ",max_burst={burst}")?;
                }
                Ok(())
            }
        }
    }
}

impl TryFrom<String> for RateLimit {
    type Error = RateLimitError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<RateLimit> for String {
    fn from(value: RateLimit) -> Self {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(count: u32, secs: u64, max_burst: Option<u32>) -> RateLimit {
        RateLimit::Limited {
            count,
            period: Duration::from_secs(secs),
            max_burst,
        }
    }

    #[test]
    fn parses_the_kumomta_forms() {
        assert_eq!("unlimited".parse(), Ok(RateLimit::Unlimited));
        assert_eq!("500/hr".parse(), Ok(limited(500, 3600, None)));
        assert_eq!("10/s,max_burst=1".parse(), Ok(limited(10, 1, Some(1))));
        assert_eq!("20/30min".parse(), Ok(limited(20, 1800, None)));
        assert_eq!("1,000/hr".parse(), Ok(limited(1000, 3600, None)));
        assert_eq!("1_000/day".parse(), Ok(limited(1000, 86_400, None)));
        assert_eq!("60/minute".parse(), Ok(limited(60, 60, None)));
    }

    #[test]
    fn rejects_nonsense_with_the_reason() {
        let err = "500/fortnight".parse::<RateLimit>().unwrap_err();
        assert!(
            err.to_string().contains("unknown period `fortnight`"),
            "{err}"
        );
        for bad in [
            "",
            "500",
            "0/s",
            "x/s",
            "5/0s",
            "5/s,burst=2",
            "5/s,max_burst=0",
            "5/s,max_burst",
        ] {
            assert!(
                bad.parse::<RateLimit>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn displays_canonically_and_round_trips() {
        for spec in [
            "unlimited",
            "500/hr",
            "10/s,max_burst=1",
            "20/30min",
            "7/day",
        ] {
            let parsed: RateLimit = spec.parse().unwrap();
            assert_eq!(parsed.to_string(), spec);
        }
        assert_eq!(
            "500/h".parse::<RateLimit>().unwrap().per_mta_wording(),
            "500/hr per MTA"
        );
    }

    #[test]
    fn quota_spreads_the_count_over_the_period() {
        let quota = "10/s,max_burst=1"
            .parse::<RateLimit>()
            .unwrap()
            .quota()
            .unwrap();
        assert_eq!(quota.replenish_interval(), Duration::from_millis(100));
        assert_eq!(quota.burst_size().get(), 1);
        let quota = "500/hr".parse::<RateLimit>().unwrap().quota().unwrap();
        assert_eq!(quota.burst_size().get(), 500);
        assert!(RateLimit::Unlimited.quota().is_none());
    }
}
