//! Order statistics of timing samples.
//!
//! Both functions copy and sort their input (`f64::total_cmp`), so the caller's
//! sample vector keeps its order. They return `None` for an empty input.

/// The median of `samples`: the middle value, or the mean of the two middle
/// values when the count is even. `None` if `samples` is empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let sorted = sorted(samples);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        Some(sorted[mid])
    } else {
        Some((sorted[mid - 1] + sorted[mid]) / 2.0)
    }
}

/// The `p`-th percentile of `samples` by the nearest-rank method: the
/// smallest sample such that at least `p` percent of the samples are less
/// than or equal to it (rank `ceil(p / 100 * n)`, 1-based).
///
/// `None` if `samples` is empty or `p` is not in `(0, 100]`.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let sorted = sorted(samples);
    let n = sorted.len();
    // `p * n / 100` can land a hair above an integer (99.9 is not exact in
    // binary); the tolerance keeps such ranks from rounding up one too far.
    let rank = (p * n as f64 / 100.0 - RANK_TOLERANCE).ceil() as usize;
    let rank = rank.clamp(1, n);
    Some(sorted[rank - 1])
}

/// Slack for float error in the nearest-rank computation, in ranks.
const RANK_TOLERANCE: f64 = 1e-9;

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0, 5.0, 1.0, 9.0, 9.0]), Some(5.0));
    }

    #[test]
    fn median_leaves_input_unsorted() {
        let samples = [3.0, 1.0, 2.0];
        let _ = median(&samples);
        assert_eq!(samples, [3.0, 1.0, 2.0]);
    }

    #[test]
    fn percentile_nearest_rank() {
        // The textbook example: n = 5.
        let samples = [15.0, 20.0, 35.0, 40.0, 50.0];
        assert_eq!(percentile(&samples, 5.0), Some(15.0));
        assert_eq!(percentile(&samples, 30.0), Some(20.0));
        assert_eq!(percentile(&samples, 40.0), Some(20.0));
        assert_eq!(percentile(&samples, 50.0), Some(35.0));
        assert_eq!(percentile(&samples, 100.0), Some(50.0));
    }

    #[test]
    fn percentile_p99_of_one_to_hundred() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 1.0), Some(1.0));
        let samples: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&samples, 99.0), Some(990.0));
        assert_eq!(percentile(&samples, 99.9), Some(999.0));
    }

    #[test]
    fn percentile_rejects_bad_input() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], 0.0), None);
        assert_eq!(percentile(&[1.0], 100.1), None);
        assert_eq!(percentile(&[1.0], f64::NAN), None);
        assert_eq!(percentile(&[1.0], 0.001), Some(1.0));
    }
}
