//! Benchmark framework for Strata: self-verifying suites, each measured
//! against a baseline in the same run.
//!
//! A suite is run by name through [`run_suite`] and returns a [`SuiteReport`]:
//! one [`BenchResult`] row per figure, plus free-form notes (seeds, failure
//! counts, what a timing includes). Every benchmark checks its own result —
//! blocks handed out against the set the harness holds, free counts against
//! the allocator's statistics — and returns [`BenchError::Verification`] if
//! they disagree, so a broken fast path cannot post a good number.
//!
//! This crate never prints; progress is reported through a callback and the
//! caller (the `strata` CLI) decides what to do with it.
//!
//! # Ratios
//!
//! `ratio = value / baseline_value` for every row that has a baseline:
//!
//! - latency rows (`unit == "ns"`, metric `median` or `p99`): lower is better,
//!   so a ratio below 1 means Strata is faster than the baseline;
//! - throughput rows (`unit == "ops/s"`, metric `throughput`): higher is
//!   better, so a ratio above 1 means more operations per second than the
//!   baseline (for the 2-thread row, the scaling factor over 1 thread);
//! - data throughput rows (`unit == "MB/s"`, metric `throughput`): higher
//!   is better, like operation throughputs;
//! - compute throughput rows (`unit == "GFLOP/s"`) and cache hit ratio rows
//!   (`unit == "hits/access"`): higher is better;
//! - cost rows (`unit` `"ms"`, `"B/alloc"`, `"B/sample"`, `"MiB"` or `"x"`):
//!   lower is better, like latencies.

use std::fmt;

use serde::Serialize;

mod bitmap_suite;
pub mod churn;
mod disk_suite;
mod flat;
mod held;
mod ooc_suite;
mod pool_suite;
mod region_suite;
mod scratch;
pub mod stats;

pub use flat::{FlatBitmap, FlatError};

/// Names of the suites [`run_suite`] knows, in the order they are listed.
pub const SUITES: &[&str] = &["bitmap", "pool", "disk", "ooc", "region"];

/// Metric name of a median latency row.
pub const METRIC_MEDIAN: &str = "median";
/// Metric name of a 99th-percentile latency row.
pub const METRIC_P99: &str = "p99";
/// Metric name of a throughput row.
pub const METRIC_THROUGHPUT: &str = "throughput";
/// Unit of latency rows: nanoseconds.
pub const UNIT_NS: &str = "ns";
/// Unit of throughput rows: operations per second.
pub const UNIT_OPS_PER_S: &str = "ops/s";
/// Metric name of a mean (e.g. bytes per allocation).
pub const METRIC_MEAN: &str = "mean";
/// Metric name of a highest value over a run (e.g. a peak ratio).
pub const METRIC_PEAK: &str = "peak";
/// Metric name of a whole run's total (e.g. its wall time).
pub const METRIC_TOTAL: &str = "total";
/// Metric name of a count.
pub const METRIC_COUNT: &str = "count";
/// Unit of wall-time rows: milliseconds.
pub const UNIT_MS: &str = "ms";
/// Unit of metadata rows: heap bytes per live allocation.
pub const UNIT_BYTES_PER_ALLOC: &str = "B/alloc";
/// Unit of profiler metadata rows: bytes per live sampled allocation.
pub const UNIT_BYTES_PER_SAMPLE: &str = "B/sample";
/// Unit of a dimensionless ratio of two quantities measured in one run.
pub const UNIT_RATIO: &str = "x";
/// Unit of a count of sampled allocations.
pub const UNIT_SAMPLES: &str = "samples";
/// Unit of data throughput rows: megabytes (10^6 bytes) per second.
pub const UNIT_MB_PER_S: &str = "MB/s";
/// Unit of compute throughput rows: 10^9 floating-point operations per second.
pub const UNIT_GFLOP_PER_S: &str = "GFLOP/s";
/// Unit of memory and data size rows: mebibytes (2^20 bytes).
pub const UNIT_MIB: &str = "MiB";
/// Unit of cache hit ratio rows: hits over accesses.
pub const UNIT_HITS_PER_ACCESS: &str = "hits/access";

/// One measured figure of a suite.
///
/// Serialized (by `strata bench --json`) with exactly these field names;
/// options serialize as `null`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchResult {
    /// What was measured, e.g. `alloc+free 2^20 @95% BlockBitmap`.
    pub name: String,
    /// `"median"`, `"p99"`, `"throughput"`, `"mean"`, `"peak"`, `"total"`
    /// or `"count"` (the `METRIC_*` constants).
    pub metric: String,
    /// The measured value, in `unit`.
    pub value: f64,
    /// `"ns"` for latencies, `"ops/s"` or `"MB/s"` for throughputs; see the `UNIT_*`
    /// constants for the others.
    pub unit: String,
    /// Name of the row this one is compared against, if any.
    pub baseline: Option<String>,
    /// Value of the baseline row (same metric and unit).
    pub baseline_value: Option<f64>,
    /// `value / baseline_value`; see the crate docs for which way is better.
    pub ratio: Option<f64>,
}

impl BenchResult {
    /// A row without a baseline.
    pub fn new(name: impl Into<String>, metric: &str, value: f64, unit: &str) -> Self {
        BenchResult {
            name: name.into(),
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: None,
            baseline_value: None,
            ratio: None,
        }
    }

    /// The same row compared against `baseline`: records its name and value
    /// and sets `ratio = self.value / baseline.value` (left `None` when the
    /// baseline value is zero or not finite).
    pub fn against(mut self, baseline: &BenchResult) -> Self {
        debug_assert_eq!(
            (self.metric.as_str(), self.unit.as_str()),
            (baseline.metric.as_str(), baseline.unit.as_str()),
            "row {:?} compared against {:?} with a different metric or unit",
            self.name,
            baseline.name
        );
        self.baseline = Some(baseline.name.clone());
        self.baseline_value = Some(baseline.value);
        self.ratio = if baseline.value.is_finite() && baseline.value != 0.0 {
            Some(self.value / baseline.value)
        } else {
            None
        };
        self
    }
}

/// Everything a suite measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SuiteReport {
    /// Suite name, one of [`SUITES`].
    pub suite: String,
    /// Measured rows, baselines included.
    pub results: Vec<BenchResult>,
    /// Seeds, failure counts and what the timings include.
    pub notes: Vec<String>,
}

/// Reads the program's live heap bytes (e.g. from a counting global
/// allocator).
pub type HeapProbe = fn() -> u64;

/// How much work a suite does.
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchOptions {
    /// Fewer iterations: the whole `bitmap` suite finishes in a few seconds
    /// and the `pool` suite in about 20 s in a release build. Figures are
    /// noisier.
    pub quick: bool,
    /// Only a few iterations of every benchmark, to check that a suite runs
    /// and verifies end to end (for tests); the figures mean nothing.
    /// Takes precedence over `quick` (the `bitmap` suite runs as `quick`).
    pub smoke: bool,
    /// The program's live heap bytes, for suites that measure metadata
    /// (`pool`); without it those rows are skipped with a note. It must
    /// count every heap allocation of the process, e.g. the
    /// `#[global_allocator]`'s live bytes.
    pub heap_bytes: Option<HeapProbe>,
}

impl BenchOptions {
    /// The settings for this mode out of the three a suite defines, and the
    /// mode's name for the report's notes.
    pub fn pick<T>(&self, smoke: T, quick: T, full: T) -> (T, &'static str) {
        if self.smoke {
            (smoke, "smoke")
        } else if self.quick {
            (quick, "quick")
        } else {
            (full, "full")
        }
    }
}

/// Why a suite could not produce a report.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BenchError {
    /// No suite of that name.
    UnknownSuite {
        /// The name asked for.
        name: String,
        /// The suites that exist.
        known: &'static [&'static str],
    },
    /// A benchmark could not build its starting state.
    Setup {
        /// The benchmark.
        bench: String,
        /// What went wrong, with the values.
        detail: String,
    },
    /// A benchmark's own check of its result failed: the measured code
    /// handed out a block twice, lost a block, or miscounted.
    Verification {
        /// The benchmark.
        bench: String,
        /// What disagreed, with the values.
        detail: String,
    },
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::UnknownSuite { name, known } => write!(
                f,
                "unknown benchmark suite {name:?}; known suites: {}",
                known.join(", ")
            ),
            BenchError::Setup { bench, detail } => {
                write!(f, "benchmark {bench:?} setup failed: {detail}")
            }
            BenchError::Verification { bench, detail } => {
                write!(f, "benchmark {bench:?} failed verification: {detail}")
            }
        }
    }
}

impl std::error::Error for BenchError {}

/// Runs the suite called `name`.
///
/// `progress` receives one short line before each benchmark starts (the
/// library never prints). Returns [`BenchError::UnknownSuite`] naming the
/// known suites if `name` is not one of [`SUITES`].
pub fn run_suite(
    name: &str,
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SuiteReport, BenchError> {
    match name {
        "bitmap" => bitmap_suite::run(options, progress),
        "pool" => pool_suite::run(options, progress),
        "disk" => disk_suite::run(options, progress),
        "ooc" => ooc_suite::run(options, progress),
        "region" => region_suite::run(options, progress),
        _ => Err(BenchError::UnknownSuite {
            name: name.to_owned(),
            known: SUITES,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_suite_names_the_known_ones() {
        let err = run_suite("nosuch", &BenchOptions::default(), &mut |_| {}).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("nosuch"), "{message}");
        for suite in SUITES {
            assert!(message.contains(suite), "{message}");
        }
    }

    #[test]
    fn ratio_is_value_over_baseline() {
        let base = BenchResult::new("flat", METRIC_MEDIAN, 200.0, UNIT_NS);
        let row = BenchResult::new("strata", METRIC_MEDIAN, 50.0, UNIT_NS).against(&base);
        assert_eq!(row.baseline.as_deref(), Some("flat"));
        assert_eq!(row.baseline_value, Some(200.0));
        assert_eq!(row.ratio, Some(0.25));
        let zero = BenchResult::new("zero", METRIC_MEDIAN, 0.0, UNIT_NS);
        assert_eq!(row.against(&zero).ratio, None);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let report = SuiteReport {
            suite: "bitmap".into(),
            results: vec![BenchResult::new(
                "x",
                METRIC_THROUGHPUT,
                1.5,
                UNIT_OPS_PER_S,
            )],
            notes: vec![],
        };
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["suite"], "bitmap");
        let row = json["results"][0].as_object().unwrap();
        let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "baseline",
                "baseline_value",
                "metric",
                "name",
                "ratio",
                "unit",
                "value"
            ]
        );
        assert!(row["baseline"].is_null());
        assert_eq!(row["value"], 1.5);
    }
}
