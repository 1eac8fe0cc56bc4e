//! The health of one MTA as probes see it: `unknown` until `rise` passes
//! or `fall` failures, then `up` or `down`, changing only after `rise`
//! consecutive passes or `fall` consecutive failures.

use std::time::{Duration, SystemTime};

use fleet::feed::MtaState;

/// A state change, with the reason in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: MtaState,
    pub to: MtaState,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct ProbeHealth {
    /// `Unknown`, `Up` or `Down`: never `Drain`, which is not the probes'.
    pub state: MtaState,
    pub since: SystemTime,
    passes: u32,
    failures: u32,
    /// The last passing round's latency.
    pub latency: Option<Duration>,
    /// The last round's failure, while the last round failed.
    pub failure: Option<String>,
    /// Rounds observed since this target appeared.
    pub rounds: u64,
}

impl ProbeHealth {
    pub fn new(now: SystemTime) -> ProbeHealth {
        ProbeHealth {
            state: MtaState::Unknown,
            since: now,
            passes: 0,
            failures: 0,
            latency: None,
            failure: None,
            rounds: 0,
        }
    }

    /// Takes one round's verdict; returns the transition it causes.
    pub fn observe(
        &mut self,
        verdict: Result<Duration, &str>,
        rise: u32,
        fall: u32,
        now: SystemTime,
    ) -> Option<Transition> {
        self.rounds += 1;
        let (to, reason) = match verdict {
            Ok(latency) => {
                self.passes = self.passes.saturating_add(1);
                self.failures = 0;
                self.latency = Some(latency);
                self.failure = None;
                if self.state == MtaState::Up || self.passes < rise {
                    return None;
                }
                (
                    MtaState::Up,
                    format!(
                        "{} consecutive probe{} passed",
                        self.passes,
                        if self.passes == 1 { "" } else { "s" }
                    ),
                )
            }
            Err(reason) => {
                self.failures = self.failures.saturating_add(1);
                self.passes = 0;
                self.failure = Some(reason.to_string());
                if self.state == MtaState::Down || self.failures < fall {
                    return None;
                }
                (MtaState::Down, reason.to_string())
            }
        };
        let from = self.state;
        self.state = to;
        self.since = now;
        Some(Transition { from, to, reason })
    }

    /// Whether a change is under way: probe again sooner.
    pub fn changing(&self) -> bool {
        match self.state {
            MtaState::Up => self.failures > 0,
            MtaState::Down => self.passes > 0,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(5);

    fn run(health: &mut ProbeHealth, verdicts: &[Result<Duration, &str>]) -> Vec<MtaState> {
        verdicts
            .iter()
            .filter_map(|v| health.observe(*v, 2, 3, SystemTime::now()))
            .map(|t| t.to)
            .collect()
    }

    #[test]
    fn rises_and_falls_only_after_consecutive_rounds() {
        let mut h = ProbeHealth::new(SystemTime::now());
        assert!(h.changing());
        assert_eq!(run(&mut h, &[Ok(MS)]), vec![]);
        assert_eq!(h.state, MtaState::Unknown);
        assert_eq!(run(&mut h, &[Ok(MS)]), vec![MtaState::Up]);
        assert!(!h.changing());
        // Failures interrupted by a pass do not add up.
        assert_eq!(
            run(&mut h, &[Err("x"), Err("x"), Ok(MS), Err("x"), Err("x")]),
            vec![]
        );
        assert!(h.changing());
        assert_eq!(h.failure.as_deref(), Some("x"));
        let t = h.observe(Err("smtp: connection refused"), 2, 3, SystemTime::now());
        assert_eq!(
            t,
            Some(Transition {
                from: MtaState::Up,
                to: MtaState::Down,
                reason: "smtp: connection refused".into()
            })
        );
        assert_eq!(run(&mut h, &[Ok(MS), Ok(MS)]), vec![MtaState::Up]);
        assert_eq!(h.failure, None);
    }

    #[test]
    fn a_new_dead_mta_goes_down_after_fall() {
        let mut h = ProbeHealth::new(SystemTime::now());
        assert_eq!(
            run(&mut h, &[Err("a"), Err("b"), Err("c")]),
            vec![MtaState::Down]
        );
        assert_eq!(run(&mut h, &[Err("d")]), vec![]);
        assert_eq!(h.failure.as_deref(), Some("d"));
    }
}
