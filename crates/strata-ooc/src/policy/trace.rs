//! Synthetic access traces, deterministic from their parameters and seed,
//! for tests and benchmarks of eviction policies.
//!
//! - [`loop_trace`]: a cyclic scan of `keys` keys, repeated (the case LRU
//!   gets entirely wrong once the loop outgrows the cache);
//! - [`scan_trace`]: keys used once each;
//! - [`zipf_trace`]: independent draws with Zipf-distributed popularity;
//! - [`MatmulTiles::trace`]: the tile accesses of a blocked matmul, the
//!   shape of the engine's real schedules.
//!
//! ```
//! use strata_ooc::policy::trace::{loop_trace, MatmulTiles};
//! use strata_ooc::policy::ChunkKey;
//!
//! assert_eq!(loop_trace(2, 2), [0, 1, 0, 1].map(ChunkKey));
//! let tiles = MatmulTiles::new(1, 2, 2)?;
//! // C(0,0) += A(0,0) B(0,0) + A(0,1) B(1,0); then C(0,1) the same way.
//! let (a, b) = (|p| tiles.a_key(0, p), |p, j| tiles.b_key(p, j));
//! assert_eq!(tiles.trace(), [a(0), b(0, 0), a(1), b(1, 0), a(0), b(0, 1), a(1), b(1, 1)]);
//! # Ok::<(), strata_ooc::policy::trace::TraceError>(())
//! ```

use std::fmt;

use super::ChunkKey;

/// Parameters a trace generator refuses.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum TraceError {
    /// A Zipf trace with accesses needs at least one key.
    NoKeys {
        /// Accesses asked for.
        length: usize,
    },
    /// The Zipf exponent must be finite and at least 0.
    BadExponent {
        /// The exponent given.
        exponent: f64,
    },
    /// The tile keys of a matmul grid do not fit in 64 bits, or its trace
    /// length in a `usize`.
    GridTooLarge {
        /// Row tiles of A and C.
        m: u64,
        /// Column tiles of B and C.
        n: u64,
        /// Inner tiles (columns of A, rows of B).
        k: u64,
    },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::NoKeys { length } => {
                write!(
                    f,
                    "a Zipf trace of {length} accesses needs at least one key"
                )
            }
            TraceError::BadExponent { exponent } => {
                write!(f, "Zipf exponent {exponent} is not a finite number >= 0")
            }
            TraceError::GridTooLarge { m, n, k } => {
                write!(
                    f,
                    "a {m}x{n}x{k} tile grid has more tile keys or accesses than fit"
                )
            }
        }
    }
}

impl std::error::Error for TraceError {}

/// `passes` passes over keys `0..keys`, in order.
pub fn loop_trace(keys: u64, passes: usize) -> Vec<ChunkKey> {
    let mut trace = Vec::with_capacity(passes.saturating_mul(keys as usize));
    for _ in 0..passes {
        trace.extend((0..keys).map(ChunkKey));
    }
    trace
}

/// Keys `first_key..first_key + length`, each used once (saturating at
/// `u64::MAX`).
pub fn scan_trace(first_key: u64, length: u64) -> Vec<ChunkKey> {
    (first_key..first_key.saturating_add(length))
        .map(ChunkKey)
        .collect()
}

/// `length` independent draws over keys `0..keys`, key `r` drawn with
/// probability proportional to `1 / (r + 1)^exponent` (exponent 0 is
/// uniform; around 1 is typical of real workloads). Deterministic in `seed`.
pub fn zipf_trace(
    keys: u64,
    exponent: f64,
    length: usize,
    seed: u64,
) -> Result<Vec<ChunkKey>, TraceError> {
    if !(exponent.is_finite() && exponent >= 0.0) {
        return Err(TraceError::BadExponent { exponent });
    }
    if length == 0 {
        return Ok(Vec::new());
    }
    if keys == 0 {
        return Err(TraceError::NoKeys { length });
    }
    // Inverse transform over the cumulative weights.
    let mut cumulative = Vec::with_capacity(keys as usize);
    let mut total = 0.0;
    for rank in 0..keys {
        total += 1.0 / ((rank + 1) as f64).powf(exponent);
        cumulative.push(total);
    }
    let mut rng = SplitMix64(seed);
    let trace = (0..length)
        .map(|_| {
            let target = rng.next_unit() * total;
            let rank = cumulative.partition_point(|&sum| sum <= target);
            // Rounding can put the target at the very top.
            ChunkKey((rank as u64).min(keys - 1))
        })
        .collect();
    Ok(trace)
}

/// The tile grid of a blocked matmul C = A·B: A is m×k tiles, B is k×n,
/// C is m×n. Keys: A's tiles are `0..m·k` (row-major), B's follow them
/// (`m·k..m·k + k·n`, row-major). C's tiles are not in the trace: the
/// engine accumulates each output tile in a pinned buffer and writes it
/// out once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulTiles {
    m: u64,
    n: u64,
    k: u64,
}

impl MatmulTiles {
    /// A grid of `m` row tiles, `n` column tiles and `k` inner tiles.
    pub fn new(m: u64, n: u64, k: u64) -> Result<Self, TraceError> {
        let keys = m.checked_mul(k).zip(k.checked_mul(n));
        let keys_fit = keys.is_some_and(|(a, b)| a.checked_add(b).is_some());
        let trace_length = m
            .checked_mul(n)
            .and_then(|mn| mn.checked_mul(k))
            .and_then(|mnk| mnk.checked_mul(2));
        let length_fits = trace_length.is_some_and(|length| usize::try_from(length).is_ok());
        if keys_fit && length_fits {
            Ok(MatmulTiles { m, n, k })
        } else {
            Err(TraceError::GridTooLarge { m, n, k })
        }
    }

    /// Distinct tiles in the trace (of A and B): the working set.
    pub fn input_tiles(&self) -> u64 {
        self.m * self.k + self.k * self.n
    }

    /// The key of A(i, p).
    pub fn a_key(&self, i: u64, p: u64) -> ChunkKey {
        debug_assert!(
            i < self.m && p < self.k,
            "A({i}, {p}) outside {}x{}",
            self.m,
            self.k
        );
        ChunkKey(i * self.k + p)
    }

    /// The key of B(p, j).
    pub fn b_key(&self, p: u64, j: u64) -> ChunkKey {
        debug_assert!(
            p < self.k && j < self.n,
            "B({p}, {j}) outside {}x{}",
            self.k,
            self.n
        );
        ChunkKey(self.m * self.k + p * self.n + j)
    }

    /// The accesses of the i-j-p loop nest: for each output tile C(i, j),
    /// in row-major order, A(i, p) then B(p, j) for p = 0..k. Length
    /// 2·m·n·k.
    pub fn trace(&self) -> Vec<ChunkKey> {
        let length = (2 * self.m * self.n * self.k) as usize;
        let mut trace = Vec::with_capacity(length);
        for i in 0..self.m {
            for j in 0..self.n {
                for p in 0..self.k {
                    trace.push(self.a_key(i, p));
                    trace.push(self.b_key(p, j));
                }
            }
        }
        trace
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for
/// trace generation; fixed here so traces never change with a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn counts(trace: &[ChunkKey]) -> HashMap<u64, usize> {
        let mut counts = HashMap::new();
        for key in trace {
            *counts.entry(key.0).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn zipf_is_deterministic_and_skewed() {
        const KEYS: u64 = 100;
        const LENGTH: usize = 20_000;
        let trace = zipf_trace(KEYS, 1.0, LENGTH, 42).unwrap();
        assert_eq!(trace, zipf_trace(KEYS, 1.0, LENGTH, 42).unwrap());
        assert_ne!(trace, zipf_trace(KEYS, 1.0, LENGTH, 43).unwrap());
        assert_eq!(trace.len(), LENGTH);
        assert!(trace.iter().all(|key| key.0 < KEYS));
        // P(key 0) = 1 / H(100); 0.015 is over 5 standard deviations here.
        let harmonic: f64 = (1..=KEYS).map(|rank| 1.0 / rank as f64).sum();
        let counts = counts(&trace);
        let share = counts[&0] as f64 / LENGTH as f64;
        assert!(
            (share - 1.0 / harmonic).abs() < 0.015,
            "key 0 share {share}, expected {}",
            1.0 / harmonic
        );
        assert!(
            counts[&0] > counts[&1] && counts[&1] > counts[&9],
            "{counts:?}"
        );
    }

    #[test]
    fn zipf_exponent_zero_is_uniform() {
        const LENGTH: usize = 40_000;
        let counts = counts(&zipf_trace(4, 0.0, LENGTH, 7).unwrap());
        for key in 0..4 {
            let share = counts[&key] as f64 / LENGTH as f64;
            // Standard deviation about 0.0022.
            assert!((share - 0.25).abs() < 0.012, "key {key} share {share}");
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(
            zipf_trace(0, 1.0, 5, 1),
            Err(TraceError::NoKeys { length: 5 })
        );
        assert_eq!(zipf_trace(0, 1.0, 0, 1), Ok(Vec::new()));
        assert_eq!(
            zipf_trace(3, -1.0, 5, 1),
            Err(TraceError::BadExponent { exponent: -1.0 })
        );
        assert!(matches!(
            zipf_trace(3, f64::NAN, 5, 1),
            Err(TraceError::BadExponent { exponent }) if exponent.is_nan()
        ));
        let error = MatmulTiles::new(u64::MAX, 2, 2).unwrap_err();
        assert_eq!(
            error,
            TraceError::GridTooLarge {
                m: u64::MAX,
                n: 2,
                k: 2
            }
        );
        assert_eq!(
            error.to_string(),
            format!(
                "a {}x2x2 tile grid has more tile keys or accesses than fit",
                u64::MAX
            )
        );
        assert!(MatmulTiles::new(1 << 40, 1 << 40, 1).is_err()); // m·n·k overflows
    }

    #[test]
    fn matmul_visits_every_tile_product_once() {
        let (m, n, k) = (3, 4, 5);
        let tiles = MatmulTiles::new(m, n, k).unwrap();
        let trace = tiles.trace();
        assert_eq!(trace.len() as u64, 2 * m * n * k);
        let counts = counts(&trace);
        assert_eq!(counts.len() as u64, tiles.input_tiles());
        for i in 0..m {
            for p in 0..k {
                assert_eq!(counts[&tiles.a_key(i, p).0], n as usize, "A({i}, {p})");
            }
        }
        for p in 0..k {
            for j in 0..n {
                assert_eq!(counts[&tiles.b_key(p, j).0], m as usize, "B({p}, {j})");
            }
        }
        // Every (A(i,p), B(p,j)) pair is adjacent exactly once.
        let pairs: std::collections::HashSet<(ChunkKey, ChunkKey)> =
            trace.chunks(2).map(|pair| (pair[0], pair[1])).collect();
        assert_eq!(pairs.len() as u64, m * n * k);
    }

    #[test]
    fn loops_and_scans() {
        assert_eq!(loop_trace(3, 2), [0, 1, 2, 0, 1, 2].map(ChunkKey));
        assert!(loop_trace(0, 5).is_empty());
        assert_eq!(scan_trace(10, 3), [10, 11, 12].map(ChunkKey));
        assert_eq!(scan_trace(u64::MAX - 1, 5), [ChunkKey(u64::MAX - 1)]);
    }
}
