//! Smooth weighted round robin (as nginx balances upstreams): over any run
//! of picks each eligible entry gets its share of the weights, spread out
//! rather than in blocks (weights 2 and 1 give a, b, a, a, b, a, ...).

#[derive(Debug, Default)]
pub struct Wrr {
    current: Vec<i64>,
}

impl Wrr {
    pub fn new(entries: usize) -> Wrr {
        Wrr {
            current: vec![0; entries],
        }
    }

    /// The next entry among those with a weight above 0 that `eligible`
    /// accepts; `None` when there is none.
    pub fn next(&mut self, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.current.len() != weights.len() {
            self.current = vec![0; weights.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &weight) in weights.iter().enumerate() {
            if weight == 0 || !eligible(i) {
                continue;
            }
            self.current[i] += i64::from(weight);
            total += i64::from(weight);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(
        wrr: &mut Wrr,
        weights: &[u32],
        picks: usize,
        eligible: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut counts = vec![0; weights.len()];
        for _ in 0..picks {
            if let Some(i) = wrr.next(weights, &eligible) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn shares_follow_the_weights_and_are_spread_out() {
        let mut wrr = Wrr::new(3);
        assert_eq!(
            counts(&mut wrr, &[2, 1, 0], 300, |_| true),
            vec![200, 100, 0]
        );
        let mut wrr = Wrr::new(2);
        let picks: Vec<usize> = (0..6).filter_map(|_| wrr.next(&[2, 1], |_| true)).collect();
        assert_eq!(picks, vec![0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn ineligible_entries_are_skipped_and_none_means_none() {
        let mut wrr = Wrr::new(3);
        assert_eq!(
            counts(&mut wrr, &[5, 1, 1], 100, |i| i != 0),
            vec![0, 50, 50]
        );
        assert_eq!(wrr.next(&[1, 1, 1], |_| false), None);
        assert_eq!(wrr.next(&[0, 0], |_| true), None);
        // A changed number of entries starts over.
        assert!(wrr.next(&[1], |_| true).is_some());
    }
}
