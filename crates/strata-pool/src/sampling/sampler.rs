//! The per-thread byte sampler and the sampling probability and weights.

use super::SAMPLE_MEAN_BYTES_DISABLED;

/// Probability that an allocation of `size_bytes` is sampled when sample
/// points fall on the allocated bytes as a Poisson process with mean gap
/// `mean_bytes`: `p(s) = 1 - exp(-s/R)`.
///
/// Edge cases: 0 for a size of 0 and for [`SAMPLE_MEAN_BYTES_DISABLED`]; 1
/// for a mean of 0 (every byte is a sample point) and any size above 0.
pub fn sample_probability(size_bytes: u64, mean_bytes: u64) -> f64 {
    if size_bytes == 0 || mean_bytes == SAMPLE_MEAN_BYTES_DISABLED {
        return 0.0;
    }
    if mean_bytes == 0 {
        return 1.0;
    }
    // 1 - exp(-x) through exp_m1: for small allocations x is ~1e-5 and the
    // direct form would lose half the digits.
    -(-(size_bytes as f64) / mean_bytes as f64).exp_m1()
}

/// What one sample stands for: the unbiased (Horvitz-Thompson) weights of a
/// sampled allocation and its contribution to the variance estimates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleWeight {
    /// Probability that the allocation was sampled, `p`.
    pub probability: f64,
    /// Estimated bytes the sample stands for, `s / p`.
    pub bytes: f64,
    /// Estimated allocations the sample stands for, `1 / p`.
    pub count: f64,
    /// Unbiased estimate of this allocation's share of the variance of the
    /// byte estimate: `(s/p)^2 (1 - p)`.
    pub bytes_variance: f64,
    /// The same for the count estimate: `(1/p)^2 (1 - p)`.
    pub count_variance: f64,
}

/// The weights of a sample of `size_bytes` at mean `mean_bytes`, or `None`
/// when such an allocation is never sampled (`p = 0`).
pub fn sample_weight(size_bytes: u64, mean_bytes: u64) -> Option<SampleWeight> {
    let probability = sample_probability(size_bytes, mean_bytes);
    if probability <= 0.0 {
        return None;
    }
    let bytes = size_bytes as f64 / probability;
    let count = 1.0 / probability;
    let unsampled = 1.0 - probability;
    Some(SampleWeight {
        probability,
        bytes,
        count,
        bytes_variance: bytes * bytes * unsampled,
        count_variance: count * count * unsampled,
    })
}

/// Decides which allocations of one thread are sampled. Not shared: each
/// thread owns one (from [`Profiler::thread_sampler`](super::Profiler::thread_sampler)).
///
/// It keeps a countdown of bytes until the next sample point. An allocation
/// shorter than the countdown is not sampled and shortens it; one that
/// reaches it is sampled, and a fresh exponential gap (mean `R`) is drawn.
/// With the gap rounded up to whole bytes, `P(sampled) = P(gap <= s)`
/// `= 1 - exp(-s/R)` exactly, and the leftover countdown after an
/// unsampled allocation is again exponential (memorylessness), so every
/// allocation is sampled independently of the past.
#[derive(Clone, Debug)]
pub struct ByteSampler {
    /// Bytes until the next sample point; at least 1, so an allocation of
    /// 0 bytes is never sampled.
    bytes_until_sample: u64,
    mean_bytes: u64,
    rng_state: u64,
}

impl ByteSampler {
    /// A sampler with mean gap `mean_bytes` (`R`), seeded with `seed`. A mean
    /// of 0 samples every allocation of at least one byte;
    /// [`SAMPLE_MEAN_BYTES_DISABLED`] samples nothing.
    pub fn new(mean_bytes: u64, seed: u64) -> Self {
        let mut sampler = ByteSampler {
            bytes_until_sample: u64::MAX,
            mean_bytes,
            rng_state: seed,
        };
        // The first sample point is random too, so threads started together
        // do not all sample their first allocation.
        if mean_bytes != SAMPLE_MEAN_BYTES_DISABLED {
            sampler.bytes_until_sample = sampler.next_gap_bytes();
        }
        sampler
    }

    /// A sampler that never samples.
    pub fn disabled() -> Self {
        ByteSampler::new(SAMPLE_MEAN_BYTES_DISABLED, 0)
    }

    /// The mean gap between sample points, in bytes.
    pub fn mean_bytes(&self) -> u64 {
        self.mean_bytes
    }

    /// Whether this sampler never samples.
    pub fn is_disabled(&self) -> bool {
        self.mean_bytes == SAMPLE_MEAN_BYTES_DISABLED
    }

    /// Bytes until the next sample point.
    pub fn bytes_until_sample(&self) -> u64 {
        self.bytes_until_sample
    }

    /// Whether the next allocation, of `size_bytes`, is sampled. The fast
    /// path is one compare and one subtraction.
    #[inline]
    pub fn sample(&mut self, size_bytes: u64) -> bool {
        if size_bytes < self.bytes_until_sample {
            self.bytes_until_sample -= size_bytes;
            false
        } else {
            self.sample_slow()
        }
    }

    /// The allocation reaches the sample point: restart the countdown.
    #[cold]
    #[inline(never)]
    fn sample_slow(&mut self) -> bool {
        if self.is_disabled() {
            // Only reached after 2^64 bytes; start over and sample nothing.
            self.bytes_until_sample = u64::MAX;
            return false;
        }
        self.bytes_until_sample = self.next_gap_bytes();
        true
    }

    /// An exponential gap with mean `mean_bytes`, rounded up to whole bytes,
    /// at least 1.
    fn next_gap_bytes(&mut self) -> u64 {
        // 53 random bits, offset by half a step: uniform on (0, 1), never 0
        // (ln 0 = -inf) nor 1 (a gap of 0).
        let unit = ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        let gap_bytes = -(self.mean_bytes as f64) * unit.ln();
        // `as` saturates at u64::MAX; the gap is at most 37.4 R.
        (gap_bytes.ceil() as u64).max(1)
    }

    /// splitmix64: one add and a few multiplies; plenty for picking sample
    /// points, and no dependency.
    fn next_u64(&mut self) -> u64 {
        self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.rng_state)
    }

    /// Panics, printing the values, if the countdown is 0.
    pub fn check_invariants(&self) {
        assert!(
            self.bytes_until_sample >= 1,
            "sampler countdown is {} (mean {} bytes)",
            self.bytes_until_sample,
            self.mean_bytes
        );
    }
}

/// splitmix64's finalizer: a bijective mix of all 64 bits.
pub(super) fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_edges() {
        assert_eq!(sample_probability(0, 512), 0.0);
        assert_eq!(sample_probability(1, SAMPLE_MEAN_BYTES_DISABLED), 0.0);
        assert_eq!(sample_probability(1, 0), 1.0);
        let p = sample_probability(512, 512);
        assert!((p - (1.0 - (-1.0f64).exp())).abs() < 1e-15, "p = {p}");
        assert!(sample_weight(0, 512).is_none());
        let weight = sample_weight(1 << 40, 512).unwrap();
        assert_eq!(weight.probability, 1.0);
        assert_eq!(weight.bytes_variance, 0.0);
    }

    #[test]
    fn mean_zero_samples_every_nonempty_allocation() {
        let mut sampler = ByteSampler::new(0, 3);
        for size in [1u64, 2, 100, u64::MAX] {
            assert!(sampler.sample(size), "size {size}");
            assert!(!sampler.sample(0), "size 0 after {size}");
            sampler.check_invariants();
        }
    }
}
