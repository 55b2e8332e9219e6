//! The `pool` suite: Strata's hybrid pool against mimalloc and the system
//! allocator, and the cost of its accounting and sampling, every ratio
//! measured in the same run as its baseline.
//!
//! 1. Churn (see [`crate::churn`]): each thread keeps a working set of live
//!    blocks of log-uniform sizes 16 B..=1 MiB and, step by step, frees one
//!    and allocates a new one in its place, with 1 and 2 threads, on six
//!    allocators driven through the same [`RawAlloc`] interface: the pool
//!    with accounting on, off, and on with sampling at 512 KiB; mimalloc;
//!    the system allocator; `TrackingAllocator<MiMalloc>`. The runs of the
//!    six are interleaved round by round so drift on a shared machine hits
//!    them alike. Every block's first and last byte carry a tag checked
//!    before it is freed, and after every run the pool's statistics must
//!    show nothing allocated and exactly the allocations and frees done.
//!    The "small churn" rows repeat all of this with sizes 16 B..=4 KiB,
//!    where the per-call cost dominates and a 512 KiB sampling mean samples
//!    about one allocation in a thousand (at 16 B..=1 MiB it is about one in
//!    eight, each taking the large path).
//! 2. Metadata: heap bytes per live block with 1,000,000 live 64-byte
//!    blocks in a pool (accounting on, sampling at 512 KiB), measured with
//!    the caller's heap probe ([`BenchOptions::heap_bytes`]), and the
//!    profiler's bytes per live sample.
//! 3. Batch trace: batches of 4 large blocks growing by one step per round
//!    ("batch size N then N+1"), every page touched; the pool's reserved
//!    peak over its allocated peak, and the wall time against mimalloc and
//!    the system allocator.

use std::alloc::{Layout, System};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::Instant;

use mimalloc::MiMalloc;
use strata_pool::os::PAGE_BYTES;
use strata_pool::sampling::{ProfileConfig, ProfileLevel, SAMPLE_MEAN_BYTES_DEFAULT};
use strata_pool::{HybridPool, PoolConfig, PoolStats, TrackingAllocator};

use crate::churn::{
    ChurnPlan, ChurnSizes, ChurnWorker, RawAlloc, ViaGlobalAlloc, CHURN_ALIGN_BYTES,
};
use crate::stats::median;
use crate::{
    BenchError, BenchOptions, BenchResult, SuiteReport, METRIC_COUNT, METRIC_MEAN, METRIC_MEDIAN,
    METRIC_PEAK, METRIC_THROUGHPUT, METRIC_TOTAL, UNIT_BYTES_PER_ALLOC, UNIT_BYTES_PER_SAMPLE,
    UNIT_MS, UNIT_NS, UNIT_OPS_PER_S, UNIT_RATIO, UNIT_SAMPLES,
};

/// This suite's name in [`crate::SUITES`].
const SUITE: &str = "pool";
/// Seed of every random choice in the suite; printed in the notes.
const SEED: u64 = 0x5354_5241_5441_0003;

/// Thread counts of the churn.
const CHURN_THREAD_COUNTS: [usize; 2] = [1, 2];
/// Target: the pool's ns per pair over mimalloc's.
const TARGET_POOL_OVER_MIMALLOC: f64 = 1.0;
/// Target: accounting on over accounting off.
const TARGET_ACCOUNTING_OVERHEAD: f64 = 1.02;
/// Target: sampling at 512 KiB over accounting on.
const TARGET_SAMPLING_OVERHEAD: f64 = 1.01;
/// Target: heap bytes per live unsampled allocation.
const TARGET_UNSAMPLED_BYTES_PER_ALLOC: f64 = 0.0;
/// Target: profiler bytes per live sampled allocation.
const TARGET_BYTES_PER_SAMPLE: f64 = 16.0;
/// Target: reserved peak over allocated peak in the batch trace.
const TARGET_TRACE_RESERVED_OVER_ALLOCATED: f64 = 1.10;

/// Size of every block of the metadata benchmark.
const METADATA_BLOCK_BYTES: usize = 64;
/// Sizes of a trace batch's blocks, in multiples of `N * unit`.
const TRACE_BLOCK_FACTORS: [u64; 4] = [3, 5, 7, 11];
/// Odd bytes added to each trace block, so no size is a round number.
const TRACE_REMAINDER_BYTES: [u64; 4] = [1_001, 3_003, 5_005, 7_007];
/// Unit of the trace block sizes.
const TRACE_UNIT_BYTES: u64 = 1 << 20;
/// Alignment of trace blocks.
const TRACE_ALIGN_BYTES: usize = 64;

const _: () = assert!(CHURN_THREAD_COUNTS[0] == 1);
// The smallest trace block (N = 1) must already take the large path.
const _: () =
    assert!(TRACE_BLOCK_FACTORS[0] * TRACE_UNIT_BYTES > strata_pool::size_class::SMALL_BYTES_MAX);
const _: () = assert!(METADATA_BLOCK_BYTES as u64 <= strata_pool::size_class::SMALL_BYTES_MAX);

/// How many iterations one churn workload runs.
#[derive(Clone, Copy, Debug)]
struct ChurnBudget {
    /// Live blocks per churn thread.
    slots: usize,
    /// Untimed churn steps per thread before the timed batches of a run.
    warmup_steps: usize,
    /// Steps timed together by one pair of clock reads.
    batch_steps: usize,
    /// Timed batches per thread per run.
    batches: usize,
    /// Untimed rounds of every allocator before the timed ones: the first
    /// use of fresh memory (page faults, the allocators' first segments)
    /// is not the steady state the rows describe.
    warmup_rounds: usize,
    /// Timed runs of each allocator, interleaved.
    rounds: usize,
}

/// How many iterations each benchmark runs.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// The churn over [`CHURN`]'s sizes.
    churn: ChurnBudget,
    /// The churn over [`SMALL_CHURN`]'s sizes.
    small_churn: ChurnBudget,
    /// Live blocks of the metadata benchmark.
    metadata_blocks: usize,
    /// The trace runs batches `N = 1..=trace_batches`.
    trace_batches: u64,
    /// Runs of the trace on each allocator, interleaved.
    trace_rounds: usize,
}

/// A churn workload in smoke mode.
const CHURN_BUDGET_SMOKE: ChurnBudget = ChurnBudget {
    slots: 64,
    warmup_steps: 256,
    batch_steps: 256,
    batches: 4,
    warmup_rounds: 1,
    rounds: 2,
};

/// A churn workload in `--quick` mode.
const CHURN_BUDGET_QUICK: ChurnBudget = ChurnBudget {
    slots: 1024,
    warmup_steps: 4096,
    batch_steps: 1024,
    batches: 64,
    warmup_rounds: 1,
    rounds: 11,
};

/// A churn workload in the default (full) mode.
const CHURN_BUDGET_FULL: ChurnBudget = ChurnBudget {
    slots: 1024,
    warmup_steps: 8192,
    batch_steps: 1024,
    batches: 256,
    warmup_rounds: 1,
    rounds: 21,
};

/// Smoke mode: every benchmark runs and verifies; the figures mean nothing.
const BUDGET_SMOKE: Budget = Budget {
    churn: CHURN_BUDGET_SMOKE,
    small_churn: CHURN_BUDGET_SMOKE,
    metadata_blocks: 20_000,
    trace_batches: 3,
    trace_rounds: 1,
};

/// `--quick`: the whole suite in about 20 s of a release build.
const BUDGET_QUICK: Budget = Budget {
    churn: CHURN_BUDGET_QUICK,
    small_churn: CHURN_BUDGET_QUICK,
    metadata_blocks: 1_000_000,
    trace_batches: 16,
    trace_rounds: 1,
};

/// The default: tighter figures, up to about two minutes.
const BUDGET_FULL: Budget = Budget {
    churn: CHURN_BUDGET_FULL,
    small_churn: CHURN_BUDGET_FULL,
    metadata_blocks: 1_000_000,
    trace_batches: 32,
    trace_rounds: 3,
};

/// The `TrackingAllocator<MiMalloc>` of the churn, used as a value.
static TRACKED: TrackingAllocator<MiMalloc> = TrackingAllocator::new(MiMalloc);
/// Serialises churn runs on [`TRACKED`], so that its counts before and
/// after a run differ by that run's operations only (tests may run the
/// suite on several threads at once).
static TRACKED_RUNS: Mutex<()> = Mutex::new(());

/// Runs the suite.
pub(crate) fn run(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SuiteReport, BenchError> {
    let (budget, mode) = options.pick(BUDGET_SMOKE, BUDGET_QUICK, BUDGET_FULL);
    let mut report = SuiteReport {
        suite: SUITE.to_owned(),
        results: Vec::new(),
        notes: vec![
            format!("mode {mode}; seed {SEED:#x}; every baseline is measured in this same run"),
            "ratio = value / baseline_value: below 1 is better for ns, ms, B and x rows, \
             above 1 is better for ops/s rows"
                .to_owned(),
        ],
    };
    report.notes.push(churn_method_note());
    for (workload, churn_budget) in [(CHURN, budget.churn), (SMALL_CHURN, budget.small_churn)] {
        churn_benchmarks(workload, &churn_budget, progress, &mut report)?;
    }
    metadata_benchmark(&budget, options, progress, &mut report)?;
    trace_benchmark(&budget, progress, &mut report)?;
    Ok(report)
}

// ---------------------------------------------------------------------------
// 1. Churn
// ---------------------------------------------------------------------------

/// A churn workload: the prefix of its rows and the sizes it draws.
#[derive(Clone, Copy, Debug)]
struct ChurnWorkload {
    name: &'static str,
    sizes: ChurnSizes,
}

/// Sizes over the pool's whole small path, 16 B..=1 MiB.
const CHURN: ChurnWorkload = ChurnWorkload {
    name: "churn",
    sizes: ChurnSizes::FULL,
};

/// Small objects, 16 B..=4 KiB.
const SMALL_CHURN: ChurnWorkload = ChurnWorkload {
    name: "small churn",
    sizes: ChurnSizes::SMALL,
};

/// The allocators of the churn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// The pool, accounting on, profiling off.
    Pool,
    /// The pool, accounting off, profiling off.
    PoolNoAccounting,
    /// The pool, accounting on, sampling at 512 KiB.
    PoolSampled,
    /// `mimalloc::MiMalloc` as a value.
    Mimalloc,
    /// `std::alloc::System`.
    System,
    /// `TrackingAllocator<MiMalloc>` (accounting, sampling at 512 KiB).
    Tracking,
}

/// Every churn variant, in the order of the first round.
const VARIANTS: [Variant; 6] = [
    Variant::Pool,
    Variant::PoolNoAccounting,
    Variant::PoolSampled,
    Variant::Mimalloc,
    Variant::System,
    Variant::Tracking,
];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Pool => "pool",
            Variant::PoolNoAccounting => "pool, accounting off",
            Variant::PoolSampled => "pool, sampled 512 KiB",
            Variant::Mimalloc => "mimalloc",
            Variant::System => "system",
            Variant::Tracking => "TrackingAllocator<mimalloc>",
        }
    }

    fn index(self) -> usize {
        VARIANTS
            .iter()
            .position(|&v| v == self)
            .expect("every variant is listed")
    }
}

/// The three pools of the churn, each used by one variant for every run.
struct ChurnPools {
    accounting: HybridPool,
    no_accounting: HybridPool,
    sampled: HybridPool,
}

/// A pool config with the given accounting and profiling level.
fn pool_config(accounting: bool, level: ProfileLevel) -> PoolConfig {
    PoolConfig {
        accounting,
        profile: ProfileConfig {
            level,
            mean_bytes: SAMPLE_MEAN_BYTES_DEFAULT,
            history_events_max: 0,
            seed: SEED,
        },
        ..PoolConfig::default()
    }
}

/// What one thread of a churn run hands back.
struct ThreadOutcome {
    /// Nanoseconds per alloc+free pair, one sample per timed batch.
    ns_per_pair: Vec<f64>,
    /// Steps inside timed batches.
    timed_steps: u64,
    /// Seconds inside timed batches.
    timed_secs: f64,
    /// Allocations and frees the thread did (fill, warm-up and drain included).
    allocs: u64,
    frees: u64,
}

/// What one churn run (all its threads) hands back.
struct RunOutcome {
    ns_per_pair: Vec<f64>,
    /// Sum over threads of timed steps / timed seconds.
    pairs_per_s: f64,
    allocs: u64,
    frees: u64,
}

/// Per-variant results gathered over the rounds.
#[derive(Default)]
struct Gathered {
    ns_per_pair: Vec<f64>,
    pairs_per_s: Vec<f64>,
    /// Samples taken by the sampled pool (large-path allocations).
    sampled_allocs: u64,
    allocs: u64,
}

/// One churn workload on every allocator with every thread count; fresh
/// pools, so one workload's slabs do not serve the next.
fn churn_benchmarks(
    workload: ChurnWorkload,
    budget: &ChurnBudget,
    progress: &mut dyn FnMut(&str),
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let setup = |detail: String| BenchError::Setup {
        bench: workload.name.to_owned(),
        detail,
    };
    let pools = ChurnPools {
        accounting: HybridPool::new(pool_config(true, ProfileLevel::Off))
            .map_err(|e| setup(e.to_string()))?,
        no_accounting: HybridPool::new(pool_config(false, ProfileLevel::Off))
            .map_err(|e| setup(e.to_string()))?,
        sampled: HybridPool::new(pool_config(true, ProfileLevel::Sampled))
            .map_err(|e| setup(e.to_string()))?,
    };
    let steps_per_run = budget.warmup_steps + budget.batch_steps * budget.batches;
    let max_threads = *CHURN_THREAD_COUNTS.iter().max().expect("thread counts");
    // One plan per thread; thread 0 replays the same plan at every count.
    let plans: Vec<ChurnPlan> = (0..max_threads)
        .map(|thread| {
            ChurnPlan::generate(
                SEED ^ thread as u64,
                budget.slots,
                steps_per_run,
                workload.sizes,
            )
        })
        .collect();
    let mut targets = Vec::new();
    for threads in CHURN_THREAD_COUNTS {
        let prefix = format!(
            "{} {threads} thread{}",
            workload.name,
            if threads == 1 { "" } else { "s" }
        );
        let mut gathered: Vec<Gathered> = VARIANTS.iter().map(|_| Gathered::default()).collect();
        let rounds = budget.warmup_rounds + budget.rounds;
        for round in 0..rounds {
            let timed = round >= budget.warmup_rounds;
            progress(&format!(
                "{SUITE}: {prefix}, round {} of {rounds}{}",
                round + 1,
                if timed { "" } else { " (warm-up)" }
            ));
            // Rotate the order so no allocator always runs first or last.
            for offset in 0..VARIANTS.len() {
                let variant = VARIANTS[(round + offset) % VARIANTS.len()];
                let name = format!("{prefix}: {}", variant.label());
                let (outcome, sampled_allocs) =
                    run_variant(&name, variant, &pools, &plans[..threads], budget)?;
                if !timed {
                    continue;
                }
                let entry = &mut gathered[variant.index()];
                entry.ns_per_pair.extend_from_slice(&outcome.ns_per_pair);
                entry.pairs_per_s.push(outcome.pairs_per_s);
                entry.sampled_allocs += sampled_allocs;
                entry.allocs += outcome.allocs;
            }
        }
        let row = |variant: Variant, metric: &str| -> Result<BenchResult, BenchError> {
            let entry = &gathered[variant.index()];
            let name = format!("{prefix}: {}", variant.label());
            let (samples, unit) = if metric == METRIC_MEDIAN {
                (&entry.ns_per_pair, UNIT_NS)
            } else {
                (&entry.pairs_per_s, UNIT_OPS_PER_S)
            };
            let value = median(samples).ok_or_else(|| BenchError::Setup {
                bench: name.clone(),
                detail: "no timed batches".into(),
            })?;
            Ok(BenchResult::new(name, metric, value, unit))
        };
        // ns per pair: the comparisons, then the baselines.
        let pool = row(Variant::Pool, METRIC_MEDIAN)?;
        let off = row(Variant::PoolNoAccounting, METRIC_MEDIAN)?;
        let sampled = row(Variant::PoolSampled, METRIC_MEDIAN)?;
        let mimalloc = row(Variant::Mimalloc, METRIC_MEDIAN)?;
        let system = row(Variant::System, METRIC_MEDIAN)?;
        let tracking = row(Variant::Tracking, METRIC_MEDIAN)?;
        let pool_vs_mimalloc = pool.clone().against(&mimalloc);
        let on_vs_off = pool.clone().against(&off);
        let sampled_vs_on = sampled.against(&pool);
        targets.push(format!(
            "{threads} thread{}: pool / mimalloc {} (target <= {TARGET_POOL_OVER_MIMALLOC:.2}), \
             accounting on / off {} (target <= {TARGET_ACCOUNTING_OVERHEAD:.2}), sampled / \
             accounting on {} (target <= {TARGET_SAMPLING_OVERHEAD:.2}), \
             TrackingAllocator<mimalloc> / mimalloc {}",
            if threads == 1 { "" } else { "s" },
            verdict(pool_vs_mimalloc.ratio, TARGET_POOL_OVER_MIMALLOC),
            verdict(on_vs_off.ratio, TARGET_ACCOUNTING_OVERHEAD),
            verdict(sampled_vs_on.ratio, TARGET_SAMPLING_OVERHEAD),
            tracking
                .value
                .checked_ratio(mimalloc.value)
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}")),
        ));
        report.results.push(pool_vs_mimalloc);
        report.results.push(pool.clone().against(&system));
        report.results.push(on_vs_off);
        report.results.push(sampled_vs_on);
        report.results.push(tracking.against(&mimalloc));
        report.results.push(mimalloc);
        report.results.push(system);
        report.results.push(off);
        // Throughput: every allocator against mimalloc.
        let mimalloc = row(Variant::Mimalloc, METRIC_THROUGHPUT)?;
        for variant in VARIANTS {
            if variant != Variant::Mimalloc {
                report
                    .results
                    .push(row(variant, METRIC_THROUGHPUT)?.against(&mimalloc));
            }
        }
        report.results.push(mimalloc);
        let sampled = &gathered[Variant::PoolSampled.index()];
        report.notes.push(format!(
            "{prefix}: the sampled pool sampled {} of {} allocations ({:.2}%): at a 512 KiB mean \
             a block of s bytes is sampled with probability 1 - exp(-s / 512 KiB), and sampled \
             blocks take the large (arena) path",
            sampled.sampled_allocs,
            sampled.allocs,
            100.0 * sampled.sampled_allocs as f64 / sampled.allocs.max(1) as f64
        ));
    }
    report.notes.push(format!(
        "{} rows: sizes log-uniform over {} (mean {:.0} B); each thread keeps {} live blocks; a \
         run: fill, {} untimed warm-up steps, then {} timed batches of {} steps per thread; {} \
         untimed warm-up round(s), then {} timed rounds",
        workload.name,
        workload.sizes,
        plans[0].mean_step_size_bytes(),
        budget.slots,
        budget.warmup_steps,
        budget.batches,
        budget.batch_steps,
        budget.warmup_rounds,
        budget.rounds,
    ));
    for line in targets {
        report
            .notes
            .push(format!("{} targets, {line}", workload.name));
    }
    Ok(())
}

/// How every churn workload runs; each adds a note with its sizes and
/// budget.
fn churn_method_note() -> String {
    format!(
        "churn method ({} and {} rows): alloc+free churn; each thread keeps a working set of \
         live blocks; each step checks and frees one (slot drawn uniformly) and allocates a new \
         block into its slot; sizes are log-uniform over the workload's range (every power of \
         two equally likely), aligned to {CHURN_ALIGN_BYTES}; slots and sizes are generated \
         before timing, the same sequence for every allocator. Each block's first and last byte \
         carry a tag checked before it is freed. A run: fill, untimed warm-up steps, then timed \
         batches per thread, then every block checked and freed; each thread churns its own \
         working set. The {} allocators run interleaved (untimed warm-up round(s), then timed \
         rounds, order rotated per round), all through the same raw alloc/dealloc trait (the \
         pool through its allocator-api2 Allocator impl on &HybridPool; mimalloc, system and \
         TrackingAllocator<MiMalloc> as GlobalAlloc values; mimalloc is the mimalloc crate, \
         whose libmimalloc-sys builds C mimalloc v3 unless its v2 feature is on, and which asks \
         for transparent huge pages while the pool's slabs use 4 KiB pages). Each workload has \
         its own three pools. median = median ns per alloc+free pair over all batches of all \
         rounds and threads (per thread); throughput = median over rounds of the sum over \
         threads of pairs / timed seconds. After each pool run: allocated 0, alloc and free \
         counts equal to the run's, no refused frees, no live samples, invariants checked",
        CHURN.name,
        SMALL_CHURN.name,
        VARIANTS.len(),
    )
}

/// `ratio` against an upper bound: `1.234 (met)` / `(missed)`.
fn verdict(ratio: Option<f64>, target: f64) -> String {
    match ratio {
        Some(ratio) => format!(
            "{ratio:.3} ({})",
            if ratio <= target { "met" } else { "missed" }
        ),
        None => "- (no figure)".to_owned(),
    }
}

/// `a / b`, when `b` is a usable divisor.
trait CheckedRatio {
    fn checked_ratio(self, divisor: f64) -> Option<f64>;
}

impl CheckedRatio for f64 {
    fn checked_ratio(self, divisor: f64) -> Option<f64> {
        (divisor.is_finite() && divisor != 0.0).then(|| self / divisor)
    }
}

/// One run of `variant`, verified. Returns the outcome and, for the
/// sampled pool, how many allocations it sampled.
fn run_variant(
    name: &str,
    variant: Variant,
    pools: &ChurnPools,
    plans: &[ChurnPlan],
    budget: &ChurnBudget,
) -> Result<(RunOutcome, u64), BenchError> {
    let verification = |detail: String| BenchError::Verification {
        bench: name.to_owned(),
        detail,
    };
    match variant {
        Variant::Pool | Variant::PoolNoAccounting | Variant::PoolSampled => {
            let pool = match variant {
                Variant::Pool => &pools.accounting,
                Variant::PoolNoAccounting => &pools.no_accounting,
                _ => &pools.sampled,
            };
            let before = pool.stats();
            let outcome = churn_run(pool, plans, budget).map_err(verification)?;
            let after = pool.stats();
            verify_pool_run(pool, &before, &after, &outcome).map_err(verification)?;
            let sampled = after.large.alloc_count - before.large.alloc_count;
            Ok((outcome, sampled))
        }
        Variant::Mimalloc => Ok((
            churn_run(&ViaGlobalAlloc(&MiMalloc), plans, budget).map_err(verification)?,
            0,
        )),
        Variant::System => Ok((
            churn_run(&ViaGlobalAlloc(&System), plans, budget).map_err(verification)?,
            0,
        )),
        Variant::Tracking => {
            let _exclusive = TRACKED_RUNS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = TRACKED.stats();
            let outcome =
                churn_run(&ViaGlobalAlloc(&TRACKED), plans, budget).map_err(verification)?;
            let after = TRACKED.stats();
            let (allocs, frees) = (
                after.alloc_count - before.alloc_count,
                after.free_count - before.free_count,
            );
            if allocs != outcome.allocs
                || frees != outcome.frees
                || after.allocated.current_bytes != before.allocated.current_bytes
                || after.live_samples != before.live_samples
            {
                return Err(verification(format!(
                    "TrackingAllocator counted {allocs} allocations and {frees} frees (the run did \
                     {} and {}); allocated {} -> {} bytes, live samples {} -> {}",
                    outcome.allocs,
                    outcome.frees,
                    before.allocated.current_bytes,
                    after.allocated.current_bytes,
                    before.live_samples,
                    after.live_samples
                )));
            }
            Ok((outcome, 0))
        }
    }
}

/// The pool after a run: nothing allocated or parked, the run's exact
/// counts (accounting on), no refused frees, no live samples, invariants.
fn verify_pool_run(
    pool: &HybridPool,
    before: &PoolStats,
    after: &PoolStats,
    outcome: &RunOutcome,
) -> Result<(), String> {
    if after.refused_frees != before.refused_frees {
        return Err(format!(
            "{} frees refused during the run",
            after.refused_frees - before.refused_frees
        ));
    }
    // The worker threads have exited, so their caches are flushed.
    if after.active_bytes != 0 || after.cached_bytes != 0 {
        return Err(format!(
            "after the run the pool still has {} active bytes ({} cached in threads)",
            after.active_bytes, after.cached_bytes
        ));
    }
    if after.accounting {
        let allocs = after.alloc_count - before.alloc_count;
        let frees = after.free_count - before.free_count;
        if after.allocated.current_bytes != 0
            || after.requested.current_bytes != 0
            || allocs != outcome.allocs
            || frees != outcome.frees
        {
            return Err(format!(
                "pool counted {allocs} allocations and {frees} frees (the run did {} and {}), \
                 {} bytes still allocated ({} requested)",
                outcome.allocs,
                outcome.frees,
                after.allocated.current_bytes,
                after.requested.current_bytes
            ));
        }
    }
    let live_samples = pool.profiler().live_samples();
    if live_samples != 0 {
        return Err(format!("{live_samples} samples still live after the run"));
    }
    pool.check_invariants();
    Ok(())
}

/// One churn run: a thread per plan, each filling its working set, warming
/// up, then (all together, after a barrier) timing its batches, and
/// finally checking and freeing every block.
fn churn_run<A: RawAlloc>(
    allocator: &A,
    plans: &[ChurnPlan],
    budget: &ChurnBudget,
) -> Result<RunOutcome, String> {
    let barrier = Barrier::new(plans.len());
    let results: Vec<Result<ThreadOutcome, String>> = thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|plan| {
                let barrier = &barrier;
                scope.spawn(move || churn_thread(allocator, plan, budget, barrier))
            })
            .collect();
        // Joined explicitly: a joined thread has also run its thread-local
        // destructors, which flush the pool's per-thread cache.
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a churn thread panicked".to_owned()))
            })
            .collect()
    });
    let mut run = RunOutcome {
        ns_per_pair: Vec::new(),
        pairs_per_s: 0.0,
        allocs: 0,
        frees: 0,
    };
    for result in results {
        let thread = result?;
        run.ns_per_pair.extend_from_slice(&thread.ns_per_pair);
        run.pairs_per_s += thread.timed_steps as f64 / thread.timed_secs;
        run.allocs += thread.allocs;
        run.frees += thread.frees;
    }
    Ok(run)
}

fn churn_thread<A: RawAlloc>(
    allocator: &A,
    plan: &ChurnPlan,
    budget: &ChurnBudget,
    barrier: &Barrier,
) -> Result<ThreadOutcome, String> {
    let (warmup, timed) = plan.steps().split_at(budget.warmup_steps);
    let ready = ChurnWorker::fill(allocator, plan).and_then(|mut worker| {
        worker.run(warmup)?;
        Ok(worker)
    });
    // Every thread reaches the barrier, failed or not, so none waits forever.
    barrier.wait();
    let mut worker = ready.map_err(|e| e.to_string())?;
    let mut outcome = ThreadOutcome {
        ns_per_pair: Vec::with_capacity(budget.batches),
        timed_steps: 0,
        timed_secs: 0.0,
        allocs: 0,
        frees: 0,
    };
    for batch in timed.chunks_exact(budget.batch_steps) {
        let start = Instant::now();
        worker.run(batch).map_err(|e| e.to_string())?;
        let elapsed = start.elapsed();
        outcome
            .ns_per_pair
            .push(elapsed.as_nanos() as f64 / batch.len() as f64);
        outcome.timed_steps += batch.len() as u64;
        outcome.timed_secs += elapsed.as_secs_f64();
    }
    outcome.allocs = worker.allocs();
    outcome.frees = worker.frees() + worker.live_blocks() as u64;
    worker.drain().map_err(|e| e.to_string())?;
    Ok(outcome)
}

// ---------------------------------------------------------------------------
// 2. Metadata
// ---------------------------------------------------------------------------

fn metadata_benchmark(
    budget: &Budget,
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let blocks = budget.metadata_blocks;
    let prefix = format!("metadata {blocks} x {METADATA_BLOCK_BYTES} B");
    let Some(heap_bytes) = options.heap_bytes else {
        report.notes.push(format!(
            "{prefix}: skipped, no heap probe (BenchOptions::heap_bytes) was given; the strata \
             CLI gives one"
        ));
        return Ok(());
    };
    progress(&format!("{SUITE}: {prefix}"));
    let setup = |detail: String| BenchError::Setup {
        bench: prefix.clone(),
        detail,
    };
    let verification = |detail: String| BenchError::Verification {
        bench: prefix.clone(),
        detail,
    };
    let pool = HybridPool::new(pool_config(true, ProfileLevel::Sampled))
        .map_err(|e| setup(e.to_string()))?;
    let layout = Layout::from_size_align(METADATA_BLOCK_BYTES, CHURN_ALIGN_BYTES)
        .map_err(|e| setup(e.to_string()))?;
    // Room for every pointer before the first reading, and this thread's
    // cache made (a fixed cost per thread, not per block).
    let mut held: Vec<usize> = Vec::with_capacity(blocks);
    let warm = RawAlloc::alloc(&pool, layout);
    if warm.is_null() {
        return Err(setup("the first allocation failed".into()));
    }
    // SAFETY: allocated just above with `layout`.
    unsafe { RawAlloc::dealloc(&pool, warm, layout) };
    let samples_before = pool.profiler().live_samples();
    let profiler_before = pool.profiler().metadata_bytes().total();
    let heap_before = heap_bytes();
    for index in 0..blocks {
        let ptr = RawAlloc::alloc(&pool, layout);
        if ptr.is_null() {
            return Err(verification(format!(
                "allocation {index} of {blocks} failed"
            )));
        }
        // SAFETY: the block is METADATA_BLOCK_BYTES long and live.
        unsafe { ptr.write(index as u8) };
        held.push(ptr as usize);
    }
    let heap_after = heap_bytes();
    let profiler_after = pool.profiler().metadata_bytes().total();
    let record_bytes = pool.profiler().metadata_bytes().record_bytes;
    let live_samples = pool.profiler().live_samples() - samples_before;

    // Every block distinct, unoverlapped and still tagged.
    let stats = pool.stats();
    if stats.requested.current_bytes != (blocks * METADATA_BLOCK_BYTES) as u64 {
        return Err(verification(format!(
            "pool reports {} requested bytes live, {blocks} blocks of {METADATA_BLOCK_BYTES} \
             are held",
            stats.requested.current_bytes
        )));
    }
    for (index, &addr) in held.iter().enumerate() {
        // SAFETY: live block written above.
        let tag = unsafe { (addr as *const u8).read() };
        if tag != index as u8 {
            return Err(verification(format!(
                "block {index} at {addr:#x} holds tag {tag}, expected {}",
                index as u8
            )));
        }
    }
    let mut sorted = held.clone();
    sorted.sort_unstable();
    if let Some(pair) = sorted
        .windows(2)
        .find(|pair| pair[1] - pair[0] < METADATA_BLOCK_BYTES)
    {
        return Err(verification(format!(
            "blocks at {:#x} and {:#x} overlap",
            pair[0], pair[1]
        )));
    }
    for &addr in &held {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { RawAlloc::dealloc(&pool, addr as *mut u8, layout) };
    }
    let stats = pool.stats();
    if stats.allocated.current_bytes != 0 || pool.profiler().live_samples() != 0 {
        return Err(verification(format!(
            "after freeing every block: {} bytes allocated, {} live samples",
            stats.allocated.current_bytes,
            pool.profiler().live_samples()
        )));
    }
    pool.check_invariants();

    let heap_growth = heap_after as f64 - heap_before as f64;
    let profiler_growth = profiler_after as f64 - profiler_before as f64;
    let per_block = heap_growth / blocks as f64;
    let per_block_outside_profiler = (heap_growth - profiler_growth) / blocks as f64;
    report.results.push(BenchResult::new(
        format!("{prefix}: heap per block"),
        METRIC_MEAN,
        per_block,
        UNIT_BYTES_PER_ALLOC,
    ));
    report.results.push(BenchResult::new(
        format!("{prefix}: heap per block outside profiler"),
        METRIC_MEAN,
        per_block_outside_profiler,
        UNIT_BYTES_PER_ALLOC,
    ));
    report.results.push(BenchResult::new(
        format!("{prefix}: live samples"),
        METRIC_COUNT,
        live_samples as f64,
        UNIT_SAMPLES,
    ));
    let per_sample = (live_samples > 0).then(|| profiler_growth / live_samples as f64);
    if let Some(per_sample) = per_sample {
        report.results.push(BenchResult::new(
            format!("{prefix}: profiler per sample"),
            METRIC_MEAN,
            per_sample,
            UNIT_BYTES_PER_SAMPLE,
        ));
        report.results.push(BenchResult::new(
            format!("{prefix}: sample record per sample"),
            METRIC_MEAN,
            record_bytes as f64 / live_samples as f64,
            UNIT_BYTES_PER_SAMPLE,
        ));
    }
    report.notes.push(format!(
        "metadata rows: heap bytes per live block (B/alloc) and the profiler's bytes per live \
         sample (B/sample); a pool with accounting on and sampling at 512 KiB; {blocks} blocks of \
         {METADATA_BLOCK_BYTES} B allocated through the Allocator interface and held. Heap bytes \
         come from the caller's probe (the CLI's TrackingAllocator<MiMalloc> global allocator), \
         read before and after the allocations (the pointer list is reserved beforehand); pool \
         memory itself is mmap'd, so the growth ({:.0} B) is the pool's bookkeeping: slab free-slot \
         bitmaps, arena records of sampled blocks and the profiler's tables. The profiler's \
         share is Profiler::metadata_bytes() (grew {:.0} B for {live_samples} live samples). \
         Targets: {} B per unsampled block: {:.4} ({}); <= {TARGET_BYTES_PER_SAMPLE:.0} B per \
         sampled block: {}",
        heap_growth,
        profiler_growth,
        TARGET_UNSAMPLED_BYTES_PER_ALLOC,
        per_block_outside_profiler,
        if per_block_outside_profiler <= TARGET_UNSAMPLED_BYTES_PER_ALLOC {
            "met"
        } else {
            "missed"
        },
        per_sample.map_or_else(
            || "- (no live samples)".to_owned(),
            |b| format!(
                "{b:.1} ({})",
                if b <= TARGET_BYTES_PER_SAMPLE {
                    "met"
                } else {
                    "missed"
                }
            )
        ),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Batch trace
// ---------------------------------------------------------------------------

/// Bytes of block `index` of batch `n`.
fn trace_block_bytes(n: u64, index: usize) -> u64 {
    TRACE_BLOCK_FACTORS[index] * n * TRACE_UNIT_BYTES + TRACE_REMAINDER_BYTES[index]
}

/// The allocators of the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TraceVariant {
    Pool,
    Mimalloc,
    System,
}

const TRACE_VARIANTS: [TraceVariant; 3] = [
    TraceVariant::Pool,
    TraceVariant::Mimalloc,
    TraceVariant::System,
];

impl TraceVariant {
    fn label(self) -> &'static str {
        match self {
            TraceVariant::Pool => "pool",
            TraceVariant::Mimalloc => "mimalloc",
            TraceVariant::System => "system",
        }
    }
}

fn trace_benchmark(
    budget: &Budget,
    progress: &mut dyn FnMut(&str),
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let prefix = format!("trace N=1..={}", budget.trace_batches);
    let mut wall_ms: Vec<Vec<f64>> = TRACE_VARIANTS.iter().map(|_| Vec::new()).collect();
    let mut ratios = Vec::new();
    let mut last_stats = None;
    for round in 0..budget.trace_rounds {
        for offset in 0..TRACE_VARIANTS.len() {
            let variant = TRACE_VARIANTS[(round + offset) % TRACE_VARIANTS.len()];
            let name = format!("{prefix}: {}", variant.label());
            progress(&format!(
                "{SUITE}: {name}, round {} of {}",
                round + 1,
                budget.trace_rounds
            ));
            let verification = |detail: String| BenchError::Verification {
                bench: name.clone(),
                detail,
            };
            let elapsed_ms = match variant {
                TraceVariant::Pool => {
                    // The default pool: accounting on, sampling at 512 KiB.
                    let pool =
                        HybridPool::new(PoolConfig::default()).map_err(|e| BenchError::Setup {
                            bench: name.clone(),
                            detail: e.to_string(),
                        })?;
                    let elapsed = run_trace(&pool, budget.trace_batches).map_err(verification)?;
                    let stats = pool.stats();
                    let blocks = TRACE_BLOCK_FACTORS.len() as u64 * budget.trace_batches;
                    if stats.allocated.current_bytes != 0
                        || stats.alloc_count != blocks
                        || stats.free_count != blocks
                        || stats.refused_frees != 0
                    {
                        return Err(verification(format!(
                            "after the trace the pool reports {} bytes allocated, {} \
                             allocations, {} frees, {} refused (expected 0, {blocks}, {blocks}, 0)",
                            stats.allocated.current_bytes,
                            stats.alloc_count,
                            stats.free_count,
                            stats.refused_frees
                        )));
                    }
                    pool.check_invariants();
                    ratios
                        .push(stats.reserved.peak_bytes as f64 / stats.allocated.peak_bytes as f64);
                    last_stats = Some(stats);
                    elapsed
                }
                TraceVariant::Mimalloc => {
                    run_trace(&ViaGlobalAlloc(&MiMalloc), budget.trace_batches)
                        .map_err(verification)?
                }
                TraceVariant::System => run_trace(&ViaGlobalAlloc(&System), budget.trace_batches)
                    .map_err(verification)?,
            };
            wall_ms[TRACE_VARIANTS
                .iter()
                .position(|&v| v == variant)
                .expect("listed")]
            .push(elapsed_ms);
        }
    }
    let stats = last_stats.ok_or_else(|| BenchError::Setup {
        bench: prefix.clone(),
        detail: "no trace round ran".into(),
    })?;
    // Deterministic for a fresh pool; the worst round is reported.
    let ratio = ratios.iter().copied().fold(f64::NAN, f64::max);
    report.results.push(BenchResult::new(
        format!("{prefix}: pool reserved / allocated peak"),
        METRIC_PEAK,
        ratio,
        UNIT_RATIO,
    ));
    let time_row = |index: usize| {
        BenchResult::new(
            format!("{prefix}: {} wall time", TRACE_VARIANTS[index].label()),
            METRIC_TOTAL,
            median(&wall_ms[index]).unwrap_or(f64::NAN),
            UNIT_MS,
        )
    };
    let (pool, mimalloc, system) = (time_row(0), time_row(1), time_row(2));
    report.results.push(pool.clone().against(&mimalloc));
    report.results.push(pool.against(&system));
    report.results.push(mimalloc);
    report.results.push(system);
    report.notes.push(format!(
        "trace rows: batch size N then N+1; for N = 1..={}, allocate 4 blocks of (3N, 5N, 7N, 11N) MiB plus (1001, 3003, \
         5005, 7007) bytes aligned to {TRACE_ALIGN_BYTES}, write one byte per {PAGE_BYTES}-byte \
         page of each, check the blocks are disjoint and their first and last bytes, free the \
         batch. The pool is a fresh default pool (accounting on, sampling at 512 KiB) per round: \
         reserved peak {} B over allocated peak {} B (largest batch {} B requested) = {} (target \
         <= {TARGET_TRACE_RESERVED_OVER_ALLOCATED:.2}). Wall time: median over {} rounds, \
         page faults included (the pool keeps freed arena pages committed; mimalloc and the \
         system allocator map and unmap blocks this large)",
        budget.trace_batches,
        stats.reserved.peak_bytes,
        stats.allocated.peak_bytes,
        (0..TRACE_BLOCK_FACTORS.len())
            .map(|i| trace_block_bytes(budget.trace_batches, i))
            .sum::<u64>(),
        verdict(Some(ratio), TARGET_TRACE_RESERVED_OVER_ALLOCATED),
        budget.trace_rounds,
    ));
    Ok(())
}

/// The trace on `allocator`; returns its wall time in milliseconds.
fn run_trace<A: RawAlloc>(allocator: &A, batches: u64) -> Result<f64, String> {
    let start = Instant::now();
    let mut batch: Vec<(*mut u8, Layout)> = Vec::with_capacity(TRACE_BLOCK_FACTORS.len());
    for n in 1..=batches {
        for index in 0..TRACE_BLOCK_FACTORS.len() {
            let size_bytes = trace_block_bytes(n, index);
            let layout = Layout::from_size_align(size_bytes as usize, TRACE_ALIGN_BYTES)
                .map_err(|e| format!("layout of {size_bytes} bytes: {e}"))?;
            let ptr = allocator.alloc(layout);
            if ptr.is_null() {
                return Err(format!(
                    "batch {n}: allocation of {size_bytes} bytes failed"
                ));
            }
            if !(ptr as usize).is_multiple_of(TRACE_ALIGN_BYTES) {
                return Err(format!(
                    "batch {n}: block of {size_bytes} bytes at {ptr:p} is not aligned to \
                     {TRACE_ALIGN_BYTES}"
                ));
            }
            let tag = (n as u8).wrapping_mul(4).wrapping_add(index as u8);
            let mut offset = 0;
            while offset < size_bytes as usize {
                // SAFETY: offset < size; the block is live.
                unsafe { ptr.add(offset).write(tag) };
                offset += PAGE_BYTES as usize;
            }
            // SAFETY: the last byte of the live block.
            unsafe { ptr.add(size_bytes as usize - 1).write(tag) };
            batch.push((ptr, layout));
        }
        let mut ranges: Vec<(usize, usize)> = batch
            .iter()
            .map(|&(ptr, layout)| (ptr as usize, ptr as usize + layout.size()))
            .collect();
        ranges.sort_unstable();
        if let Some(pair) = ranges.windows(2).find(|pair| pair[1].0 < pair[0].1) {
            return Err(format!(
                "batch {n}: blocks {:#x}..{:#x} and {:#x}..{:#x} overlap",
                pair[0].0, pair[0].1, pair[1].0, pair[1].1
            ));
        }
        for (index, (ptr, layout)) in batch.drain(..).enumerate() {
            let tag = (n as u8).wrapping_mul(4).wrapping_add(index as u8);
            // SAFETY: first and last byte of the live block.
            let (first, last) = unsafe { (ptr.read(), ptr.add(layout.size() - 1).read()) };
            if first != tag || last != tag {
                return Err(format!(
                    "batch {n}: block {index} at {ptr:p} holds {first}/{last}, expected {tag}"
                ));
            }
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { allocator.dealloc(ptr, layout) };
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::churn::churn_layout;

    fn smoke() -> BenchOptions {
        BenchOptions {
            smoke: true,
            ..BenchOptions::default()
        }
    }

    #[test]
    fn smoke_run_verifies_and_every_comparison_has_its_baseline() {
        let report = run(&smoke(), &mut |_| {}).unwrap();
        assert_eq!(report.suite, SUITE);
        for row in &report.results {
            assert!(row.value.is_finite(), "{row:?}");
            let compared = row.baseline.is_some();
            assert_eq!(compared, row.baseline_value.is_some(), "{row:?}");
            assert_eq!(compared, row.ratio.is_some(), "{row:?}");
            if let Some(baseline) = &row.baseline {
                assert!(
                    report.results.iter().any(|b| &b.name == baseline
                        && b.metric == row.metric
                        && Some(b.value) == row.baseline_value),
                    "baseline {baseline:?} of {:?} is not a row of the report",
                    row.name
                );
            }
        }
        // A row `name` of `metric` compared against the row `baseline`.
        let compared = |name: &str, metric: &str, baseline: &str| {
            report.results.iter().any(|r| {
                r.name == name && r.metric == metric && r.baseline.as_deref() == Some(baseline)
            })
        };
        for workload in [CHURN.name, SMALL_CHURN.name] {
            for threads in ["1 thread", "2 threads"] {
                let row = |v: &str| format!("{workload} {threads}: {v}");
                for (name, baseline) in [
                    ("pool", "mimalloc"),
                    ("pool", "system"),
                    ("pool", "pool, accounting off"),
                    ("pool, sampled 512 KiB", "pool"),
                    ("TrackingAllocator<mimalloc>", "mimalloc"),
                ] {
                    assert!(
                        compared(&row(name), METRIC_MEDIAN, &row(baseline)),
                        "no median row {:?} against {:?}",
                        row(name),
                        row(baseline)
                    );
                }
                for name in VARIANTS.iter().filter(|&&v| v != Variant::Mimalloc) {
                    assert!(
                        compared(&row(name.label()), METRIC_THROUGHPUT, &row("mimalloc")),
                        "no throughput row {:?} against mimalloc",
                        row(name.label())
                    );
                }
                let sampled_note = format!("{workload} {threads}: the sampled pool sampled ");
                assert!(
                    report.notes.iter().any(|n| n.starts_with(&sampled_note)),
                    "no note {sampled_note:?}: {:#?}",
                    report.notes
                );
            }
            assert!(
                report
                    .notes
                    .iter()
                    .any(|n| n.starts_with(&format!("{workload} rows: sizes log-uniform"))),
                "{workload}: {:#?}",
                report.notes
            );
        }
        assert!(
            report.results.iter().any(|r| r.name.starts_with("trace")
                && r.name.ends_with("pool wall time")
                && r.baseline
                    .as_deref()
                    .is_some_and(|b| b.ends_with("mimalloc wall time"))),
            "{report:#?}"
        );
        let trace = report
            .results
            .iter()
            .find(|r| r.name.ends_with("reserved / allocated peak"))
            .unwrap();
        assert!(trace.value >= 1.0, "{trace:?}");
        // No probe: the metadata rows are skipped with a note.
        assert!(!report
            .results
            .iter()
            .any(|r| r.name.starts_with("metadata")));
        assert!(report
            .notes
            .iter()
            .any(|n| n.starts_with("metadata") && n.contains("skipped")));
    }

    #[test]
    fn verdicts_compare_against_the_target() {
        assert_eq!(verdict(Some(1.0), 1.0), "1.000 (met)");
        assert_eq!(verdict(Some(1.0201), 1.02), "1.020 (missed)");
        assert_eq!(verdict(None, 1.0), "- (no figure)");
    }

    #[test]
    fn trace_sizes_are_large_and_odd() {
        for n in 1..=32 {
            for index in 0..TRACE_BLOCK_FACTORS.len() {
                let bytes = trace_block_bytes(n, index);
                assert!(
                    bytes > strata_pool::size_class::SMALL_BYTES_MAX,
                    "{n} {index}"
                );
                assert_eq!(bytes % 2, 1, "{n} {index}");
            }
        }
        assert_eq!(trace_block_bytes(2, 3), 22 * (1 << 20) + 7_007);
    }

    #[test]
    fn churn_layout_matches_the_workload() {
        let layout = churn_layout(CHURN.sizes.max_bytes());
        assert_eq!(layout.size(), 1 << 20);
        assert_eq!(SMALL_CHURN.sizes.max_bytes(), 4096);
        assert_eq!(layout.align(), CHURN_ALIGN_BYTES);
    }
}
