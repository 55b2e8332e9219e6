//! The `bitmap` suite: Strata's block bitmap against a flat first-fit bit
//! vector ([`FlatBitmap`]), measured in the same run.
//!
//! 1. Single-block alloc+free pairs on 2^20 blocks at 50%, 95% and 99.9%
//!    occupancy, for [`BlockBitmap`], for a [`BlockBitmap`] through its
//!    [`BlockCache`], and for the flat baseline. Median ns per pair over
//!    batches.
//! 2. Extents of random length 1..=512 on 2^24 blocks at 95% occupancy,
//!    each `alloc_extent` call timed on its own. Median and p99 ns, next to
//!    the measured cost of the timer itself.
//! 3. [`SharedBitmap`] alloc+free throughput through per-thread caches with
//!    1 and 2 threads.
//!
//! Every benchmark checks its result (see [`verify_single_blocks`] and
//! friends) and fails with [`BenchError::Verification`] if the allocator
//! handed out a block twice, lost one, or miscounted.

use std::fmt;
use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use strata_bitmap::{
    BitmapError, Block, BlockBitmap, BlockCache, Extent, SharedBitmap, SharedCache,
};

use crate::flat::{FlatBitmap, FlatError};
use crate::held::HeldSet;
use crate::stats::{median, percentile};
use crate::{
    BenchError, BenchOptions, BenchResult, SuiteReport, METRIC_MEDIAN, METRIC_P99,
    METRIC_THROUGHPUT, UNIT_NS, UNIT_OPS_PER_S,
};

/// This suite's name in [`crate::SUITES`].
const SUITE: &str = "bitmap";
/// Seed of every random choice in the suite; printed in the notes.
const SEED: u64 = 0x5354_5241_5441_0001;
/// Occupancies are given in parts per thousand.
const OCCUPANCY_SCALE_PERMILLE: u64 = 1000;

/// Capacity of the single-block pair benchmarks.
const PAIR_CAPACITY_BLOCKS: u64 = 1 << 20;
/// Occupancies of the single-block pair benchmarks.
const PAIR_OCCUPANCIES: [Occupancy; 3] = [
    Occupancy {
        permille: 500,
        label: "50%",
    },
    Occupancy {
        permille: 950,
        label: "95%",
    },
    Occupancy {
        permille: 999,
        label: "99.9%",
    },
];
/// Alloc+free pairs timed together by one pair of clock reads.
const PAIRS_PER_BATCH: usize = 1024;

/// Capacity of the extent benchmark.
const EXTENT_CAPACITY_BLOCKS: u64 = 1 << 24;
/// Shortest extent requested.
const EXTENT_LEN_BLOCKS_MIN: u64 = 1;
/// Longest extent requested.
const EXTENT_LEN_BLOCKS_MAX: u64 = 512;
/// Occupancy the extent benchmark holds.
const EXTENT_OCCUPANCY: Occupancy = Occupancy {
    permille: 950,
    label: "95%",
};
/// The fill phase stops after this many `alloc_extent` failures in a row.
const EXTENT_FILL_FAILURES_MAX: u32 = 64;
/// Steady-state `alloc_extent` failures tolerated (each is retried after
/// freeing another extent) before the benchmark gives up.
const EXTENT_STEADY_FAILURES_MAX: u64 = 1 << 20;

/// Capacity of the shared-bitmap throughput benchmark.
const SHARED_CAPACITY_BLOCKS: u64 = 1 << 20;
/// Occupancy of the shared-bitmap throughput benchmark.
const SHARED_OCCUPANCY: Occupancy = Occupancy {
    permille: 500,
    label: "50%",
};
/// Thread counts of the shared-bitmap benchmark; the first is the baseline.
const SHARED_THREAD_COUNTS: [usize; 2] = [1, 2];

const _: () = assert!(PAIRS_PER_BATCH > 0);
const _: () = assert!(EXTENT_LEN_BLOCKS_MIN >= 1 && EXTENT_LEN_BLOCKS_MIN <= EXTENT_LEN_BLOCKS_MAX);
const _: () = assert!(EXTENT_LEN_BLOCKS_MAX < EXTENT_CAPACITY_BLOCKS);
const _: () = assert!(EXTENT_OCCUPANCY.permille < OCCUPANCY_SCALE_PERMILLE);
const _: () = assert!(SHARED_OCCUPANCY.permille < OCCUPANCY_SCALE_PERMILLE);
const _: () = assert!(SHARED_THREAD_COUNTS[0] == 1);

/// A target occupancy.
#[derive(Clone, Copy, Debug)]
struct Occupancy {
    /// Allocated blocks per thousand.
    permille: u64,
    /// How the occupancy appears in row names.
    label: &'static str,
}

impl Occupancy {
    /// Allocated blocks at this occupancy of `capacity_blocks` (rounded down).
    fn allocated_blocks(self, capacity_blocks: u64) -> u64 {
        capacity_blocks * self.permille / OCCUPANCY_SCALE_PERMILLE
    }
}

/// How many iterations each benchmark runs.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// Timed batches per Strata pair benchmark.
    pair_batches_strata: usize,
    /// Timed batches per flat-baseline pair benchmark.
    pair_batches_flat: usize,
    /// Untimed batches before the timed ones.
    pair_warmup_batches: usize,
    /// Timed `alloc_extent` calls on the Strata bitmap.
    extent_calls_strata: usize,
    /// Timed `alloc_extent` calls on the flat baseline.
    extent_calls_flat: usize,
    /// Untimed steady-state calls before the timed ones.
    extent_warmup_calls: usize,
    /// Clock-read pairs timed for the timer-overhead rows.
    timer_samples: usize,
    /// Batches of [`PAIRS_PER_BATCH`] alloc+free pairs per thread in the
    /// shared benchmark.
    shared_batches_per_thread: usize,
}

/// `--quick`: the whole suite in a few seconds of a release build.
const BUDGET_QUICK: Budget = Budget {
    pair_batches_strata: 1_000,
    pair_batches_flat: 50,
    pair_warmup_batches: 10,
    extent_calls_strata: 50_000,
    extent_calls_flat: 1_000,
    extent_warmup_calls: 1_000,
    timer_samples: 200_000,
    shared_batches_per_thread: 2_000,
};

/// The default: tighter figures, up to a couple of minutes.
const BUDGET_FULL: Budget = Budget {
    pair_batches_strata: 20_000,
    pair_batches_flat: 1_000,
    pair_warmup_batches: 100,
    extent_calls_strata: 1_000_000,
    extent_calls_flat: 20_000,
    extent_warmup_calls: 10_000,
    timer_samples: 1_000_000,
    shared_batches_per_thread: 20_000,
};

/// Runs the suite.
pub(crate) fn run(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SuiteReport, BenchError> {
    let budget = if options.quick || options.smoke {
        BUDGET_QUICK
    } else {
        BUDGET_FULL
    };
    let mut report = SuiteReport {
        suite: SUITE.to_owned(),
        results: Vec::new(),
        notes: vec![
            format!(
                "mode {}; seed {SEED:#x}; every baseline is measured in this same run",
                if options.quick || options.smoke {
                    "quick"
                } else {
                    "full"
                }
            ),
            "ratio = value / baseline_value: below 1 is better for ns rows, \
             above 1 is better for ops/s rows"
                .to_owned(),
        ],
    };
    pair_benchmarks(&budget, progress, &mut report)?;
    extent_benchmarks(&budget, progress, &mut report)?;
    shared_benchmarks(&budget, progress, &mut report)?;
    Ok(report)
}

// ---------------------------------------------------------------------------
// Allocator adapters
// ---------------------------------------------------------------------------

/// What the single-block pair loop needs from an allocator.
trait PairAllocator {
    /// Error of a refused free.
    type Error: fmt::Display;
    /// Allocates one block.
    fn alloc_block(&mut self) -> Option<u64>;
    /// Frees one block.
    fn free_block(&mut self, block: u64) -> Result<(), Self::Error>;
}

/// The three Strata single-block allocators share one adapter: each has
/// `alloc() -> Option<Block>` and `free(Block) -> Result<(), BitmapError>`.
macro_rules! strata_pair_allocator {
    ($($ty:ty),+) => {$(
        impl PairAllocator for $ty {
            type Error = BitmapError;
            #[inline]
            fn alloc_block(&mut self) -> Option<u64> {
                self.alloc().map(|block| block.0)
            }
            #[inline]
            fn free_block(&mut self, block: u64) -> Result<(), BitmapError> {
                self.free(Block(block))
            }
        }
    )+};
}

strata_pair_allocator!(BlockBitmap, BlockCache<'_>, SharedCache<'_>);

impl PairAllocator for FlatBitmap {
    type Error = FlatError;
    #[inline]
    fn alloc_block(&mut self) -> Option<u64> {
        self.alloc()
    }
    #[inline]
    fn free_block(&mut self, block: u64) -> Result<(), FlatError> {
        self.free(block)
    }
}

/// What the extent loop needs from an allocator.
trait ExtentAllocator {
    /// Error of a refused free.
    type Error: fmt::Display;
    /// Allocates `len` contiguous blocks; returns the run's first block and
    /// length as the allocator reports them.
    fn alloc_run(&mut self, len: u64) -> Option<(u64, u64)>;
    /// Frees `start..start + len`.
    fn free_run(&mut self, start: u64, len: u64) -> Result<(), Self::Error>;
}

impl ExtentAllocator for BlockBitmap {
    type Error = BitmapError;
    #[inline]
    fn alloc_run(&mut self, len: u64) -> Option<(u64, u64)> {
        self.alloc_extent(len)
            .map(|extent| (extent.start, extent.len))
    }
    #[inline]
    fn free_run(&mut self, start: u64, len: u64) -> Result<(), BitmapError> {
        self.free_extent(Extent { start, len })
    }
}

impl ExtentAllocator for FlatBitmap {
    type Error = FlatError;
    #[inline]
    fn alloc_run(&mut self, len: u64) -> Option<(u64, u64)> {
        self.alloc_extent(len)
            .map(|range| (range.start, range.end - range.start))
    }
    #[inline]
    fn free_run(&mut self, start: u64, len: u64) -> Result<(), FlatError> {
        self.free_range(start..start + len)
    }
}

/// Read-back the verification step needs from an allocator.
trait Audit {
    /// Blocks the allocator counts as allocated and as free.
    fn counts(&mut self) -> (u64, u64);
    /// Frees `start..start + len` (a single block when `len == 1`).
    fn release(&mut self, start: u64, len: u64) -> Result<(), String>;
    /// The allocator's own O(n) consistency check, if it has one.
    fn self_check(&mut self) {}
}

impl Audit for BlockBitmap {
    fn counts(&mut self) -> (u64, u64) {
        let stats = self.stats();
        (stats.allocated_blocks, stats.free_blocks)
    }
    fn release(&mut self, start: u64, len: u64) -> Result<(), String> {
        let result = if len == 1 {
            self.free(Block(start))
        } else {
            self.free_extent(Extent { start, len })
        };
        result.map_err(|e| e.to_string())
    }
    fn self_check(&mut self) {
        self.check_invariants();
    }
}

impl Audit for FlatBitmap {
    fn counts(&mut self) -> (u64, u64) {
        (self.count_allocated(), self.free_blocks())
    }
    fn release(&mut self, start: u64, len: u64) -> Result<(), String> {
        self.free_range(start..start + len)
            .map_err(|e| e.to_string())
    }
}

impl Audit for &SharedBitmap {
    fn counts(&mut self) -> (u64, u64) {
        let stats = self.stats();
        (stats.allocated_blocks, stats.free_blocks)
    }
    fn release(&mut self, start: u64, len: u64) -> Result<(), String> {
        let result = if len == 1 {
            self.free(Block(start))
        } else {
            self.free_extent(Extent { start, len })
        };
        result.map_err(|e| e.to_string())
    }
    fn self_check(&mut self) {
        self.check_invariants();
    }
}

/// Checks an allocator against what the harness holds, then frees every
/// held block through it.
///
/// Passes only if: the held set and the held list agree; the allocator's
/// allocated and free counts equal the held count and the rest of
/// `capacity_blocks`; every held block frees without error (so each was
/// allocated); and afterwards the allocator counts nothing allocated. Given
/// equal counts, the last two prove the allocated set *is* the held set.
fn verify_and_release(
    bench: &str,
    allocator: &mut dyn Audit,
    held: &[(u64, u64)],
    held_set_blocks: u64,
    capacity_blocks: u64,
) -> Result<(), BenchError> {
    let fail = |detail: String| BenchError::Verification {
        bench: bench.to_owned(),
        detail,
    };
    let held_blocks: u64 = held.iter().map(|&(_, len)| len).sum();
    if held_blocks != held_set_blocks {
        return Err(fail(format!(
            "harness holds {held_blocks} blocks in its list but {held_set_blocks} in its bit set"
        )));
    }
    let (allocated, free) = allocator.counts();
    if allocated != held_blocks || free != capacity_blocks - held_blocks {
        return Err(fail(format!(
            "allocator reports {allocated} allocated and {free} free of {capacity_blocks}; \
             the harness holds {held_blocks} (expected {} free)",
            capacity_blocks - held_blocks
        )));
    }
    for &(start, len) in held {
        allocator.release(start, len).map_err(|e| {
            fail(format!(
                "freeing held blocks {start}..{} failed: {e}",
                start + len
            ))
        })?;
    }
    let (allocated, free) = allocator.counts();
    if allocated != 0 || free != capacity_blocks {
        return Err(fail(format!(
            "after freeing all {held_blocks} held blocks the allocator reports {allocated} \
             allocated and {free} free of {capacity_blocks}"
        )));
    }
    allocator.self_check();
    Ok(())
}

/// [`verify_and_release`] for a list of single blocks.
fn verify_single_blocks(
    bench: &str,
    allocator: &mut dyn Audit,
    held: &[u64],
    held_set: &HeldSet,
    capacity_blocks: u64,
) -> Result<(), BenchError> {
    let held: Vec<(u64, u64)> = held.iter().map(|&block| (block, 1)).collect();
    verify_and_release(
        bench,
        allocator,
        &held,
        held_set.held_blocks(),
        capacity_blocks,
    )
}

// ---------------------------------------------------------------------------
// 1. Single-block alloc+free pairs
// ---------------------------------------------------------------------------

/// Which allocator a pair benchmark drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PairVariant {
    /// `BlockBitmap::alloc` / `free`.
    Bitmap,
    /// `BlockBitmap::cache()` then `BlockCache::alloc` / `free`.
    Cache,
    /// `FlatBitmap::alloc` / `free`.
    Flat,
}

impl PairVariant {
    fn label(self) -> &'static str {
        match self {
            PairVariant::Bitmap => "BlockBitmap",
            PairVariant::Cache => "BlockCache",
            PairVariant::Flat => "flat first-fit",
        }
    }
}

/// Result of one pair run.
struct PairRun {
    /// Nanoseconds per pair, one sample per timed batch.
    ns_per_pair: Vec<f64>,
    /// Blocks handed out during the run (warm-up included).
    allocs: u64,
    /// Blocks freed during the run (warm-up included).
    frees: u64,
}

fn pair_benchmarks(
    budget: &Budget,
    progress: &mut dyn FnMut(&str),
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    for occupancy in PAIR_OCCUPANCIES {
        let mut pair_rows = Vec::new();
        let mut churn_rows = Vec::new();
        for variant in [PairVariant::Bitmap, PairVariant::Cache, PairVariant::Flat] {
            let pair_name = format!(
                "alloc+free pair 2^20 @{} {}",
                occupancy.label,
                variant.label()
            );
            let churn_name = format!(
                "alloc+free churn 2^20 @{} {}",
                occupancy.label,
                variant.label()
            );
            progress(&format!("{SUITE}: {pair_name}; {churn_name}"));
            let (pair_ns, churn_ns) = pair_benchmark(&churn_name, variant, occupancy, budget)?;
            pair_rows.push(BenchResult::new(pair_name, METRIC_MEDIAN, pair_ns, UNIT_NS));
            churn_rows.push(BenchResult::new(
                churn_name,
                METRIC_MEDIAN,
                churn_ns,
                UNIT_NS,
            ));
        }
        for mut rows in [pair_rows, churn_rows] {
            let flat = rows.pop().expect("three rows");
            report
                .results
                .extend(rows.into_iter().map(|row| row.against(&flat)));
            report.results.push(flat);
        }
    }
    report.notes.push(format!(
        "alloc+free rows: 2^20 blocks filled, then a seeded-random subset freed (the same \
         subset for every allocator) so free blocks are scattered. \"pair\" rows: each pair \
         allocates one block and frees that same block, so occupancy and layout stay fixed and \
         the figure is the cost of finding a free block at that occupancy (next-fit for \
         BlockBitmap, so the cursor sweeps the free blocks; first-fit for the flat baseline, \
         which therefore keeps reusing the first free block). \"churn\" rows: each batch first \
         draws {PAIRS_PER_BATCH} distinct random held blocks (untimed), then times \
         {PAIRS_PER_BATCH} pairs of (alloc one block, free the next drawn block), so free \
         blocks move around at random. Both time {PAIRS_PER_BATCH} pairs per Instant pair and \
         check every hand-out against a held-block bit set after each batch (untimed). \
         value = median ns/pair over {} batches ({} for flat first-fit) after {} warm-up batches",
        budget.pair_batches_strata, budget.pair_batches_flat, budget.pair_warmup_batches
    ));
    Ok(())
}

/// Timed immediate pairs: each allocates one block and frees it again.
/// The held set does not change; every hand-out is checked against it
/// after its batch (untimed). Returns ns per pair, one sample per batch.
fn run_immediate_pairs<A: PairAllocator>(
    allocator: &mut A,
    held_set: &HeldSet,
    warmup: usize,
    batches: usize,
) -> Result<Vec<f64>, String> {
    let mut fresh = vec![0u64; PAIRS_PER_BATCH];
    let mut ns_per_pair = Vec::with_capacity(batches);
    for index in 0..warmup + batches {
        let start = Instant::now();
        for slot in fresh.iter_mut() {
            let Some(block) = allocator.alloc_block() else {
                return Err("alloc returned None at a fixed occupancy below 100%".into());
            };
            *slot = black_box(block);
            allocator
                .free_block(block)
                .map_err(|e| format!("freeing just-allocated block {block} failed: {e}"))?;
        }
        let elapsed = start.elapsed();
        if let Some(&block) = fresh.iter().find(|&&b| held_set.contains(b)) {
            return Err(format!("block {block} handed out while already held"));
        }
        if index >= warmup {
            ns_per_pair.push(elapsed.as_nanos() as f64 / PAIRS_PER_BATCH as f64);
        }
    }
    Ok(ns_per_pair)
}

/// Sets up one allocator at `occupancy`, runs the immediate-pair loop and
/// then the churn loop, verifies, and returns the median ns per pair of each.
fn pair_benchmark(
    name: &str,
    variant: PairVariant,
    occupancy: Occupancy,
    budget: &Budget,
) -> Result<(f64, f64), BenchError> {
    let capacity = PAIR_CAPACITY_BLOCKS;
    let free_target = capacity - occupancy.allocated_blocks(capacity);
    let setup = |detail: String| BenchError::Setup {
        bench: name.to_owned(),
        detail,
    };
    let verification = |detail: String| BenchError::Verification {
        bench: name.to_owned(),
        detail,
    };
    let mut rng = SmallRng::seed_from_u64(SEED ^ occupancy.permille);
    let mut held_set = HeldSet::new(capacity);
    let batches = match variant {
        PairVariant::Flat => budget.pair_batches_flat,
        PairVariant::Bitmap | PairVariant::Cache => budget.pair_batches_strata,
    };

    let run = match variant {
        PairVariant::Flat => {
            let mut flat = FlatBitmap::new(capacity);
            // Allocating every block one at a time would cost a scan each;
            // one whole-capacity extent gives the same state.
            let all = flat
                .alloc_extent(capacity)
                .ok_or_else(|| setup("flat bitmap refused its whole capacity".into()))?;
            let mut held: Vec<u64> = all.collect();
            for &block in &held {
                held_set.insert(block);
            }
            scatter_free(&mut flat, &mut held, &mut held_set, free_target, &mut rng)
                .map_err(setup)?;
            let immediate =
                run_immediate_pairs(&mut flat, &held_set, budget.pair_warmup_batches, batches)
                    .map_err(verification)?;
            let run = run_pairs(
                &mut flat,
                &mut held,
                &mut held_set,
                &mut rng,
                budget.pair_warmup_batches,
                batches,
            )
            .map_err(verification)?;
            check_pair_counts(
                name,
                &run,
                &held,
                held_set.held_blocks(),
                capacity - free_target,
            )?;
            verify_single_blocks(name, &mut flat, &held, &held_set, capacity)?;
            (immediate, run)
        }
        PairVariant::Bitmap | PairVariant::Cache => {
            let mut bitmap = BlockBitmap::new(capacity).map_err(|e| setup(e.to_string()))?;
            let mut held = fill_single(&mut bitmap, capacity, &mut held_set).map_err(setup)?;
            scatter_free(&mut bitmap, &mut held, &mut held_set, free_target, &mut rng)
                .map_err(setup)?;
            let (immediate, run) = if variant == PairVariant::Cache {
                let mut cache = bitmap.cache();
                let immediate =
                    run_immediate_pairs(&mut cache, &held_set, budget.pair_warmup_batches, batches);
                let run = run_pairs(
                    &mut cache,
                    &mut held,
                    &mut held_set,
                    &mut rng,
                    budget.pair_warmup_batches,
                    batches,
                );
                // Dropping the cache returns its cached blocks to the bitmap.
                drop(cache);
                (immediate, run)
            } else {
                let immediate = run_immediate_pairs(
                    &mut bitmap,
                    &held_set,
                    budget.pair_warmup_batches,
                    batches,
                );
                let run = run_pairs(
                    &mut bitmap,
                    &mut held,
                    &mut held_set,
                    &mut rng,
                    budget.pair_warmup_batches,
                    batches,
                );
                (immediate, run)
            };
            let (immediate, run) = (immediate.map_err(verification)?, run.map_err(verification)?);
            check_pair_counts(
                name,
                &run,
                &held,
                held_set.held_blocks(),
                capacity - free_target,
            )?;
            verify_single_blocks(name, &mut bitmap, &held, &held_set, capacity)?;
            (immediate, run)
        }
    };
    let (immediate, run) = run;
    let immediate = median(&immediate).ok_or_else(|| setup("no timed batches".into()))?;
    let churn = median(&run.ns_per_pair).ok_or_else(|| setup("no timed batches".into()))?;
    Ok((immediate, churn))
}

/// Allocates `count` blocks one at a time, checking each against the held set.
fn fill_single<A: PairAllocator>(
    allocator: &mut A,
    count: u64,
    held_set: &mut HeldSet,
) -> Result<Vec<u64>, String> {
    let mut held = Vec::with_capacity(count as usize);
    for done in 0..count {
        let block = allocator
            .alloc_block()
            .ok_or_else(|| format!("alloc failed after {done} of {count} blocks"))?;
        if !held_set.insert(block) {
            return Err(format!("block {block} handed out twice while filling"));
        }
        held.push(block);
    }
    Ok(held)
}

/// Frees a seeded-random `free_count` of the held blocks. The held list is
/// sorted first, so every allocator frees the same subset.
fn scatter_free<A: PairAllocator>(
    allocator: &mut A,
    held: &mut Vec<u64>,
    held_set: &mut HeldSet,
    free_count: u64,
    rng: &mut SmallRng,
) -> Result<(), String> {
    held.sort_unstable();
    held.shuffle(rng);
    let keep = held.len() - free_count as usize;
    for block in held.drain(keep..) {
        held_set.remove(block);
        allocator
            .free_block(block)
            .map_err(|e| format!("freeing block {block} during setup: {e}"))?;
    }
    Ok(())
}

/// The pair loop: `warmup + batches` batches of [`PAIRS_PER_BATCH`] pairs,
/// timed per batch. See [`PairBatch`] for what is and is not timed.
fn run_pairs<A: PairAllocator>(
    allocator: &mut A,
    held: &mut Vec<u64>,
    held_set: &mut HeldSet,
    rng: &mut SmallRng,
    warmup: usize,
    batches: usize,
) -> Result<PairRun, String> {
    let mut batch = PairBatch::new();
    let mut run = PairRun {
        ns_per_pair: Vec::with_capacity(batches),
        allocs: 0,
        frees: 0,
    };
    for index in 0..warmup + batches {
        batch.draw(held, rng)?;
        let elapsed = batch.run(allocator)?;
        batch.settle(held, held_set)?;
        run.allocs += PAIRS_PER_BATCH as u64;
        run.frees += PAIRS_PER_BATCH as u64;
        if index >= warmup {
            run.ns_per_pair
                .push(elapsed.as_nanos() as f64 / PAIRS_PER_BATCH as f64);
        }
    }
    Ok(run)
}

/// One batch of [`PAIRS_PER_BATCH`] alloc+free pairs, with the harness's
/// bookkeeping kept outside the timed region:
///
/// 1. [`PairBatch::draw`] (untimed) takes `PAIRS_PER_BATCH` distinct
///    uniformly random blocks out of the held list — the *victims*. They stay
///    allocated until the batch frees them, so occupancy does not move.
/// 2. [`PairBatch::run`] (timed) does, for each slot `i`: alloc one block
///    into `fresh[i]`, then free `victims[i]`. The loop touches only these
///    two sequential arrays, so the figure is the allocator's cost, not the
///    cache misses of random indexing into a million-entry held list.
/// 3. [`PairBatch::settle`] (untimed) replays the batch in order against the
///    held bit set — each fresh block must not have been held when it was
///    handed out, each victim leaves — and appends the fresh blocks to the
///    held list.
struct PairBatch {
    victims: Vec<u64>,
    fresh: Vec<u64>,
}

impl PairBatch {
    fn new() -> Self {
        PairBatch {
            victims: vec![0; PAIRS_PER_BATCH],
            fresh: vec![0; PAIRS_PER_BATCH],
        }
    }

    /// Untimed: moves `PAIRS_PER_BATCH` random held blocks into the victims.
    fn draw(&mut self, held: &mut Vec<u64>, rng: &mut SmallRng) -> Result<(), String> {
        if held.len() < PAIRS_PER_BATCH {
            return Err(format!(
                "a batch frees {PAIRS_PER_BATCH} held blocks but only {} are held",
                held.len()
            ));
        }
        for victim in self.victims.iter_mut() {
            *victim = held.swap_remove(rng.gen_range(0..held.len()));
        }
        Ok(())
    }

    /// Timed: the pairs themselves. Returns the batch's elapsed time.
    #[inline]
    fn run<A: PairAllocator>(&mut self, allocator: &mut A) -> Result<Duration, String> {
        let start = Instant::now();
        for (slot, &victim) in self.fresh.iter_mut().zip(&self.victims) {
            let Some(block) = allocator.alloc_block() else {
                return Err("alloc returned None at a fixed occupancy below 100%".into());
            };
            *slot = black_box(block);
            if let Err(e) = allocator.free_block(victim) {
                return Err(format!("freeing held block {victim} failed: {e}"));
            }
        }
        Ok(start.elapsed())
    }

    /// Untimed: checks the batch's hand-outs and returns the fresh blocks to
    /// the held list.
    fn settle(&self, held: &mut Vec<u64>, held_set: &mut HeldSet) -> Result<(), String> {
        for (&block, &victim) in self.fresh.iter().zip(&self.victims) {
            if !held_set.insert(block) {
                return Err(format!(
                    "block {block} handed out while already held (or out of range)"
                ));
            }
            if !held_set.remove(victim) {
                return Err(format!("harness lost track of victim block {victim}"));
            }
        }
        held.extend_from_slice(&self.fresh);
        Ok(())
    }
}

/// The run's own counts: allocs − frees must leave exactly the starting
/// number of blocks held.
fn check_pair_counts(
    bench: &str,
    run: &PairRun,
    held: &[u64],
    held_set_blocks: u64,
    expected_held: u64,
) -> Result<(), BenchError> {
    let net = run.allocs as i128 - run.frees as i128;
    if held.len() as u64 != expected_held || held_set_blocks != expected_held || net != 0 {
        return Err(BenchError::Verification {
            bench: bench.to_owned(),
            detail: format!(
                "{} allocs and {} frees left {} blocks held ({held_set_blocks} in the bit \
                 set); expected {expected_held}",
                run.allocs,
                run.frees,
                held.len()
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Extents
// ---------------------------------------------------------------------------

/// Result of one extent run.
struct ExtentRun {
    /// Nanoseconds per `alloc_extent` call, failed calls included.
    call_ns: Vec<f64>,
    /// Calls that returned `None` (each was retried after a free).
    failures: u64,
    /// Of those, calls after the warm-up (so among `call_ns`).
    timed_failures: u64,
    /// Extents handed out (warm-up included).
    allocs: u64,
    /// Extents freed (warm-up included).
    frees: u64,
    /// Indices (warm-up included) of the calls that returned `None`.
    failed_calls: Vec<usize>,
    /// Nanoseconds per `free_extent` call (immediate pairs only; empty in
    /// churn runs).
    free_ns: Vec<f64>,
}

impl ExtentRun {
    /// An empty run with room for `samples` timed calls.
    fn new(samples: usize) -> Self {
        ExtentRun {
            call_ns: Vec::with_capacity(samples),
            failures: 0,
            timed_failures: 0,
            allocs: 0,
            frees: 0,
            failed_calls: Vec::new(),
            free_ns: Vec::new(),
        }
    }
}

fn extent_benchmarks(
    budget: &Budget,
    progress: &mut dyn FnMut(&str),
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let capacity = EXTENT_CAPACITY_BLOCKS;
    let target_blocks = EXTENT_OCCUPANCY.allocated_blocks(capacity);
    let prefix = format!(
        "extent {EXTENT_LEN_BLOCKS_MIN}..={EXTENT_LEN_BLOCKS_MAX} 2^24 @{}",
        EXTENT_OCCUPANCY.label
    );
    let strata_name = format!("{prefix} BlockBitmap");
    let flat_name = format!("{prefix} flat first-fit");

    let timer_name = "timer overhead (Instant::now + elapsed)";
    progress(&format!("{SUITE}: {timer_name}"));
    let timer_ns = timer_overhead(budget.timer_samples);
    let timer_median = median(&timer_ns).unwrap_or(f64::NAN);
    let timer_p99 = percentile(&timer_ns, 99.0).unwrap_or(f64::NAN);

    // Setup once on the Strata bitmap; the flat baseline copies the layout.
    progress(&format!("{SUITE}: {prefix} setup"));
    let setup = |detail: String| BenchError::Setup {
        bench: strata_name.clone(),
        detail,
    };
    let mut rng = SmallRng::seed_from_u64(SEED ^ EXTENT_CAPACITY_BLOCKS);
    let mut bitmap = BlockBitmap::new(capacity).map_err(|e| setup(e.to_string()))?;
    let mut held_set = HeldSet::new(capacity);
    let mut held: Vec<(u64, u64)> = Vec::new();
    let mut failures_in_row = 0;
    while failures_in_row < EXTENT_FILL_FAILURES_MAX {
        let len = rng.gen_range(EXTENT_LEN_BLOCKS_MIN..=EXTENT_LEN_BLOCKS_MAX);
        match bitmap.alloc_extent(len) {
            Some(extent) => {
                failures_in_row = 0;
                if extent.len != len {
                    return Err(setup(format!(
                        "asked for {len} blocks, got extent {extent:?}"
                    )));
                }
                held_set
                    .insert_range(extent.start, extent.len)
                    .map_err(|block| setup(format!("block {block} handed out twice")))?;
                held.push((extent.start, extent.len));
            }
            None => failures_in_row += 1,
        }
    }
    let filled_blocks = held_set.held_blocks();
    while held_set.held_blocks() > target_blocks {
        let (start, len) = held.swap_remove(rng.gen_range(0..held.len()));
        held_set
            .remove_range(start, len)
            .map_err(|block| setup(format!("held block {block} missing")))?;
        bitmap
            .free_extent(Extent { start, len })
            .map_err(|e| setup(e.to_string()))?;
    }
    let mut flat = FlatBitmap::new(capacity);
    for &(start, len) in &held {
        flat.alloc_range(start..start + len)
            .map_err(|e| setup(format!("copying the layout to the flat bitmap: {e}")))?;
    }
    let start_blocks = held_set.held_blocks();
    let mut flat_held = held.clone();
    let mut flat_held_set = held_set.clone();

    // Immediate extent pairs on the identical layout, before any churn.
    let pair_seed = SEED ^ (EXTENT_CAPACITY_BLOCKS + 2);
    let pair_strata_name = format!(
        "extent pair {EXTENT_LEN_BLOCKS_MIN}..={EXTENT_LEN_BLOCKS_MAX} 2^24 @{} BlockBitmap",
        EXTENT_OCCUPANCY.label
    );
    let pair_flat_name = format!(
        "extent pair {EXTENT_LEN_BLOCKS_MIN}..={EXTENT_LEN_BLOCKS_MAX} 2^24 @{} flat first-fit",
        EXTENT_OCCUPANCY.label
    );
    progress(&format!("{SUITE}: {pair_strata_name}"));
    let pair_strata = run_extent_pairs(
        &mut bitmap,
        &held_set,
        &mut SmallRng::seed_from_u64(pair_seed),
        budget.extent_warmup_calls,
        budget.extent_calls_strata,
    )
    .map_err(|detail| BenchError::Verification {
        bench: pair_strata_name.clone(),
        detail,
    })?;
    progress(&format!("{SUITE}: {pair_flat_name}"));
    let pair_flat = run_extent_pairs(
        &mut flat,
        &flat_held_set,
        &mut SmallRng::seed_from_u64(pair_seed),
        budget.extent_warmup_calls.min(budget.extent_calls_flat),
        budget.extent_calls_flat,
    )
    .map_err(|detail| BenchError::Verification {
        bench: pair_flat_name.clone(),
        detail,
    })?;

    // Same layout, same lengths: a run exists for one allocator iff it
    // exists for the other, so their failures must agree call for call.
    let common_calls =
        budget.extent_warmup_calls.min(budget.extent_calls_flat) + budget.extent_calls_flat;
    let strata_failed: Vec<usize> = pair_strata
        .failed_calls
        .iter()
        .copied()
        .filter(|&c| c < common_calls)
        .collect();
    if strata_failed != pair_flat.failed_calls {
        return Err(BenchError::Verification {
            bench: pair_strata_name.clone(),
            detail: format!(
                "over the first {common_calls} calls BlockBitmap found no run at calls {:?}, \
                 the flat first-fit scan at calls {:?}",
                &strata_failed[..strata_failed.len().min(8)],
                &pair_flat.failed_calls[..pair_flat.failed_calls.len().min(8)]
            ),
        });
    }

    progress(&format!("{SUITE}: {strata_name}"));
    let steady_seed = SEED ^ (EXTENT_CAPACITY_BLOCKS + 1);
    let strata_run = run_extents(
        &mut bitmap,
        &mut held,
        &mut held_set,
        &mut SmallRng::seed_from_u64(steady_seed),
        target_blocks,
        budget.extent_warmup_calls,
        budget.extent_calls_strata,
    )
    .map_err(|detail| BenchError::Verification {
        bench: strata_name.clone(),
        detail,
    })?;
    check_extent_counts(&strata_name, &strata_run, &held_set, &held)?;
    verify_and_release(
        &strata_name,
        &mut bitmap,
        &held,
        held_set.held_blocks(),
        capacity,
    )?;
    drop(bitmap);

    progress(&format!("{SUITE}: {flat_name}"));
    let flat_run = run_extents(
        &mut flat,
        &mut flat_held,
        &mut flat_held_set,
        &mut SmallRng::seed_from_u64(steady_seed),
        target_blocks,
        budget.extent_warmup_calls.min(budget.extent_calls_flat),
        budget.extent_calls_flat,
    )
    .map_err(|detail| BenchError::Verification {
        bench: flat_name.clone(),
        detail,
    })?;
    check_extent_counts(&flat_name, &flat_run, &flat_held_set, &flat_held)?;
    verify_and_release(
        &flat_name,
        &mut flat,
        &flat_held,
        flat_held_set.held_blocks(),
        capacity,
    )?;

    let rows_of = |name: &str, run: &ExtentRun| -> Result<[BenchResult; 2], BenchError> {
        let missing = || BenchError::Setup {
            bench: name.to_owned(),
            detail: "no timed calls".into(),
        };
        Ok([
            BenchResult::new(
                name,
                METRIC_MEDIAN,
                median(&run.call_ns).ok_or_else(missing)?,
                UNIT_NS,
            ),
            BenchResult::new(
                name,
                METRIC_P99,
                percentile(&run.call_ns, 99.0).ok_or_else(missing)?,
                UNIT_NS,
            ),
        ])
    };
    let free_rows_of = |name: &str, run: &ExtentRun| -> Result<[BenchResult; 2], BenchError> {
        let missing = || BenchError::Setup {
            bench: name.to_owned(),
            detail: "no timed frees".into(),
        };
        let name = format!("{name} free_extent");
        Ok([
            BenchResult::new(
                &name,
                METRIC_MEDIAN,
                median(&run.free_ns).ok_or_else(missing)?,
                UNIT_NS,
            ),
            BenchResult::new(
                &name,
                METRIC_P99,
                percentile(&run.free_ns, 99.0).ok_or_else(missing)?,
                UNIT_NS,
            ),
        ])
    };
    let [free_flat_median, free_flat_p99] = free_rows_of(&pair_flat_name, &pair_flat)?;
    let [free_strata_median, free_strata_p99] = free_rows_of(&pair_strata_name, &pair_strata)?;
    let [pair_flat_median, pair_flat_p99] = rows_of(&pair_flat_name, &pair_flat)?;
    let [pair_strata_median, pair_strata_p99] = rows_of(&pair_strata_name, &pair_strata)?;
    report
        .results
        .push(pair_strata_median.against(&pair_flat_median));
    report.results.push(pair_strata_p99.against(&pair_flat_p99));
    report.results.push(pair_flat_median);
    report.results.push(pair_flat_p99);
    report
        .results
        .push(free_strata_median.against(&free_flat_median));
    report.results.push(free_strata_p99.against(&free_flat_p99));
    report.results.push(free_flat_median);
    report.results.push(free_flat_p99);
    let [flat_median, flat_p99] = rows_of(&flat_name, &flat_run)?;
    let [strata_median, strata_p99] = rows_of(&strata_name, &strata_run)?;
    report.results.push(strata_median.against(&flat_median));
    report.results.push(strata_p99.against(&flat_p99));
    report.results.push(flat_median);
    report.results.push(flat_p99);
    report.results.push(BenchResult::new(
        timer_name,
        METRIC_MEDIAN,
        timer_median,
        UNIT_NS,
    ));
    report
        .results
        .push(BenchResult::new(timer_name, METRIC_P99, timer_p99, UNIT_NS));
    // The floor under any per-call figure that touches cold memory: one
    // timed write to a random cache line of a buffer larger than the caches.
    let floor_name = format!(
        "memory floor (one random write in {} MiB)",
        MEMORY_FLOOR_BUFFER_BYTES >> 20
    );
    progress(&format!("{SUITE}: {floor_name}"));
    let floor_ns = memory_floor(budget.timer_samples);
    report.results.push(BenchResult::new(
        &floor_name,
        METRIC_MEDIAN,
        median(&floor_ns).unwrap_or(f64::NAN),
        UNIT_NS,
    ));
    report.results.push(BenchResult::new(
        &floor_name,
        METRIC_P99,
        percentile(&floor_ns, 99.0).unwrap_or(f64::NAN),
        UNIT_NS,
    ));

    report.notes.push(format!(
        "extent pair rows: on the starting layout below, each call is alloc_extent(random \
         length) then free_extent of that same extent, so the layout stays fixed and the figure \
         is the cost of finding a run of that length at 95% occupancy. The free_extent rows \
         time the matching frees the same way (BlockBitmap::free_extent refreshes the run \
         summaries it made stale when few are, so that work is counted there, not in the \
         next alloc_extent). A None means no free run \
         is long enough anywhere (checked against the layout, which does not change): \
         BlockBitmap {} of {} timed calls, flat first-fit {} of {}",
        pair_strata.timed_failures,
        pair_strata.call_ns.len(),
        pair_flat.timed_failures,
        pair_flat.call_ns.len()
    ));
    let percent = |blocks: u64| blocks as f64 * 100.0 / capacity as f64;
    report.notes.push(format!(
        "extent rows: 2^24 blocks filled with random {EXTENT_LEN_BLOCKS_MIN}..={EXTENT_LEN_BLOCKS_MAX}-block \
         extents to {:.2}% (until {EXTENT_FILL_FAILURES_MAX} allocations in a row failed), then \
         random extents freed down to {:.2}%; the flat baseline starts from the identical layout. \
         Steady state: alloc_extent(random length), then free random held extents while above \
         {}. {} timed calls on BlockBitmap, {} on flat first-fit, after warm-up",
        percent(filled_blocks),
        percent(start_blocks),
        EXTENT_OCCUPANCY.label,
        strata_run.call_ns.len(),
        flat_run.call_ns.len(),
    ));
    report.notes.push(format!(
        "extent rows time each alloc_extent call on its own with Instant::now()/elapsed(), so \
         every sample includes one clock read pair; that cost is measured as the \
         \"{timer_name}\" rows ({timer_median:.1} ns median, {timer_p99:.1} ns p99) and is NOT \
         subtracted"
    ));
    report.notes.push(format!(
        "alloc_extent returned None (no free run long enough; the harness then freed another \
         random extent and retried; failed calls are timed and included in the figures): \
         BlockBitmap {} of {} timed calls, flat first-fit {} of {}",
        strata_run.timed_failures,
        strata_run.call_ns.len(),
        flat_run.timed_failures,
        flat_run.call_ns.len()
    ));
    Ok(())
}

/// Immediate extent pairs: `alloc_extent(len)` (timed on its own), then
/// `free_extent` of the same extent (untimed). Hand-outs are checked
/// against the unchanging held set.
fn run_extent_pairs<A: ExtentAllocator>(
    allocator: &mut A,
    held_set: &HeldSet,
    rng: &mut SmallRng,
    warmup: usize,
    calls: usize,
) -> Result<ExtentRun, String> {
    let mut run = ExtentRun::new(calls);
    for call in 0..warmup + calls {
        let len = rng.gen_range(EXTENT_LEN_BLOCKS_MIN..=EXTENT_LEN_BLOCKS_MAX);
        let t0 = Instant::now();
        let got = black_box(allocator.alloc_run(black_box(len)));
        let elapsed = t0.elapsed();
        if call >= warmup {
            run.call_ns.push(elapsed.as_nanos() as f64);
        }
        let Some((start, got_len)) = got else {
            run.failed_calls.push(call);
            run.failures += 1;
            if call >= warmup {
                run.timed_failures += 1;
            }
            continue;
        };
        if got_len != len {
            return Err(format!(
                "alloc_extent({len}) returned {got_len} blocks at {start}"
            ));
        }
        if let Some(block) = (start..start + len).find(|&b| held_set.contains(b)) {
            return Err(format!(
                "extent {start}..{} holds block {block}, already held or out of range",
                start + len
            ));
        }
        run.allocs += 1;
        let t0 = Instant::now();
        let freed = black_box(allocator.free_run(start, len));
        let elapsed = t0.elapsed();
        freed.map_err(|e| {
            format!(
                "freeing just-allocated extent {start}..{} failed: {e}",
                start + len
            )
        })?;
        if call >= warmup {
            run.free_ns.push(elapsed.as_nanos() as f64);
        }
        run.frees += 1;
    }
    Ok(run)
}

/// `samples` durations of an empty region between `Instant::now()` and
/// `elapsed()`, in ns: the overhead every per-call sample carries.
fn timer_overhead(samples: usize) -> Vec<f64> {
    let mut ns = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        black_box(());
        ns.push(start.elapsed().as_nanos() as f64);
    }
    ns
}

/// Bytes of the buffer the memory-floor rows write into: larger than the
/// last-level cache of the machines we run on, so most writes miss.
const MEMORY_FLOOR_BUFFER_BYTES: usize = 64 << 20;
/// Bytes per cache line (one write per sample touches one line).
const CACHE_LINE_BYTES: usize = 64;
/// Bytes per (small) page, for touching the buffer before timing.
const PAGE_BYTES: usize = 4096;
const _: () = assert!(MEMORY_FLOOR_BUFFER_BYTES.is_power_of_two());

/// `samples` timed writes to random cache lines of a buffer larger than the
/// caches, in ns each (timer included, as in every per-call row).
fn memory_floor(samples: usize) -> Vec<f64> {
    let words = MEMORY_FLOOR_BUFFER_BYTES / 8;
    let mut buffer = vec![0u64; words];
    // Touch every page first, so the samples time memory, not page faults.
    for (i, word) in buffer.iter_mut().enumerate().step_by(PAGE_BYTES / 8) {
        *word = i as u64;
    }
    let mut rng = SmallRng::seed_from_u64(SEED ^ 0xf1_00);
    let lines = MEMORY_FLOOR_BUFFER_BYTES / CACHE_LINE_BYTES;
    let mut ns = Vec::with_capacity(samples);
    for _ in 0..samples {
        let word = rng.gen_range(0..lines) * (CACHE_LINE_BYTES / 8);
        let start = Instant::now();
        buffer[word] = black_box(buffer[word] + 1);
        ns.push(start.elapsed().as_nanos() as f64);
    }
    black_box(&buffer);
    ns
}

/// The steady-state extent loop; see the suite notes.
fn run_extents<A: ExtentAllocator>(
    allocator: &mut A,
    held: &mut Vec<(u64, u64)>,
    held_set: &mut HeldSet,
    rng: &mut SmallRng,
    target_blocks: u64,
    warmup: usize,
    calls: usize,
) -> Result<ExtentRun, String> {
    let mut run = ExtentRun::new(calls + calls / 16);
    for call in 0..warmup + calls {
        let len = rng.gen_range(EXTENT_LEN_BLOCKS_MIN..=EXTENT_LEN_BLOCKS_MAX);
        let (start, got_len) = loop {
            let t0 = Instant::now();
            let got = black_box(allocator.alloc_run(black_box(len)));
            let elapsed = t0.elapsed();
            if call >= warmup {
                run.call_ns.push(elapsed.as_nanos() as f64);
            }
            match got {
                Some(run) => break run,
                None => {
                    run.failures += 1;
                    if call >= warmup {
                        run.timed_failures += 1;
                    }
                    if run.failures > EXTENT_STEADY_FAILURES_MAX || held.is_empty() {
                        return Err(format!(
                            "alloc_extent({len}) keeps failing: {} failures, {} extents held",
                            run.failures,
                            held.len()
                        ));
                    }
                    free_random_extent(allocator, held, held_set, rng)?;
                    run.frees += 1;
                }
            }
        };
        if got_len != len {
            return Err(format!(
                "alloc_extent({len}) returned {got_len} blocks at {start}"
            ));
        }
        held_set.insert_range(start, len).map_err(|block| {
            format!(
                "extent {start}..{} holds block {block}, already held or out of range",
                start + len
            )
        })?;
        held.push((start, len));
        run.allocs += 1;
        while held_set.held_blocks() > target_blocks {
            free_random_extent(allocator, held, held_set, rng)?;
            run.frees += 1;
        }
    }
    Ok(run)
}

fn free_random_extent<A: ExtentAllocator>(
    allocator: &mut A,
    held: &mut Vec<(u64, u64)>,
    held_set: &mut HeldSet,
    rng: &mut SmallRng,
) -> Result<(), String> {
    let (start, len) = held.swap_remove(rng.gen_range(0..held.len()));
    held_set
        .remove_range(start, len)
        .map_err(|block| format!("harness lost track of held block {block}"))?;
    allocator
        .free_run(start, len)
        .map_err(|e| format!("freeing held extent {start}..{} failed: {e}", start + len))
}

/// The run's own counts agree with the held list.
fn check_extent_counts(
    bench: &str,
    run: &ExtentRun,
    held_set: &HeldSet,
    held: &[(u64, u64)],
) -> Result<(), BenchError> {
    let held_blocks: u64 = held.iter().map(|&(_, len)| len).sum();
    if held_blocks != held_set.held_blocks() {
        return Err(BenchError::Verification {
            bench: bench.to_owned(),
            detail: format!(
                "after {} extent allocs and {} frees the held list has {held_blocks} blocks, \
                 the bit set {}",
                run.allocs,
                run.frees,
                held_set.held_blocks()
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. SharedBitmap throughput
// ---------------------------------------------------------------------------

fn shared_benchmarks(
    budget: &Budget,
    progress: &mut dyn FnMut(&str),
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let mut rows: Vec<BenchResult> = Vec::new();
    for threads in SHARED_THREAD_COUNTS {
        let name = format!(
            "SharedBitmap cache alloc+free 2^20 @{}, {threads} thread{}",
            SHARED_OCCUPANCY.label,
            if threads == 1 { "" } else { "s" }
        );
        progress(&format!("{SUITE}: {name}"));
        let ops_per_s = shared_throughput(&name, threads, budget.shared_batches_per_thread)?;
        let row = BenchResult::new(name, METRIC_THROUGHPUT, ops_per_s, UNIT_OPS_PER_S);
        rows.push(match rows.first() {
            Some(one_thread) => row.against(one_thread),
            None => row,
        });
    }
    report.results.extend(rows);
    report.notes.push(format!(
        "SharedBitmap rows: 2^20 blocks; each of N threads allocates 1/N of them through its \
         own cache() and frees a random part of its share, leaving {} occupied; then each \
         thread runs {} churn batches of {PAIRS_PER_BATCH} pairs on its own blocks, batched \
         like the alloc+free churn rows; one op = one \
         alloc+free pair. Throughput = sum over threads of (thread's ops / thread's time \
         inside timed batches); the untimed per-batch bookkeeping is excluded, so threads \
         overlap for most but not all of the run. A block handed to two threads at once is \
         caught by the end-of-run counts and by freeing every held block. The multi-thread \
         ratio is N-thread / 1-thread throughput (higher is better; N is linear scaling). \
         Threads available: {}",
        SHARED_OCCUPANCY.label,
        budget.shared_batches_per_thread,
        thread::available_parallelism().map_or(0, |n| n.get())
    ));
    Ok(())
}

/// What one worker thread hands back.
struct WorkerOutcome {
    /// The blocks it holds at the end.
    held: Vec<u64>,
    /// Alloc+free pairs it did.
    pairs: u64,
    /// Time spent inside timed batches.
    timed: Duration,
}

/// Alloc+free pairs per second of `threads` threads doing
/// `batches_per_thread` batches each on one shared bitmap, verified
/// afterwards: the sum over threads of each thread's pairs divided by its
/// time inside timed batches.
fn shared_throughput(
    name: &str,
    threads: usize,
    batches_per_thread: usize,
) -> Result<f64, BenchError> {
    let capacity = SHARED_CAPACITY_BLOCKS;
    let setup = |detail: String| BenchError::Setup {
        bench: name.to_owned(),
        detail,
    };
    let verification = |detail: String| BenchError::Verification {
        bench: name.to_owned(),
        detail,
    };
    let shared = SharedBitmap::new(capacity).map_err(|e| setup(e.to_string()))?;
    // Each worker fills its own share and frees a random part of it, so
    // each thread churns blocks it allocated itself (the use the per-thread
    // home shards are built for).
    let share_blocks = capacity / threads as u64;
    let keep_blocks = SHARED_OCCUPANCY.allocated_blocks(capacity) / threads as u64;
    let expected_held = keep_blocks * threads as u64;

    let barrier = Barrier::new(threads);
    let outcomes: Vec<thread::Result<Result<WorkerOutcome, String>>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (shared, barrier) = (&shared, &barrier);
                scope.spawn(move || {
                    shared_worker(
                        shared,
                        barrier,
                        (share_blocks, keep_blocks),
                        SEED ^ (index as u64 + 1),
                        batches_per_thread,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join()).collect()
    });

    // Each thread checked its own blocks; together they must not overlap.
    let mut held: Vec<u64> = Vec::with_capacity(expected_held as usize);
    let mut held_set = HeldSet::new(capacity);
    let mut ops_per_s = 0.0;
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome
            .map_err(|_| verification(format!("worker thread {index} panicked")))?
            .map_err(|e| verification(format!("worker thread {index}: {e}")))?;
        let seconds = outcome.timed.as_secs_f64();
        if seconds <= 0.0 {
            return Err(setup(format!(
                "thread {index}: {} pairs took no measurable time",
                outcome.pairs
            )));
        }
        ops_per_s += outcome.pairs as f64 / seconds;
        for &block in &outcome.held {
            if !held_set.insert(block) {
                return Err(verification(format!(
                    "block {block} is held by two threads (or out of range)"
                )));
            }
        }
        held.extend(outcome.held);
    }
    if held.len() as u64 != expected_held {
        return Err(verification(format!(
            "threads hold {} blocks; expected {expected_held}",
            held.len()
        )));
    }
    let pairs: Vec<(u64, u64)> = held.iter().map(|&block| (block, 1)).collect();
    verify_and_release(name, &mut &shared, &pairs, held_set.held_blocks(), capacity)?;

    Ok(ops_per_s)
}

/// One thread of the shared benchmark: `batches` [`PairBatch`]es through
/// the thread's own cache.
///
/// The thread's own [`HeldSet`] catches a block handed to this thread twice.
/// A block handed to this thread while another holds it is caught
/// afterwards: each such double hand-out leaves the threads holding one block
/// more than the bitmap counts as allocated (a free of a block the bitmap
/// does not hold is an error), which [`verify_and_release`] rejects.
fn shared_worker(
    shared: &SharedBitmap,
    barrier: &Barrier,
    (share_blocks, keep_blocks): (u64, u64),
    seed: u64,
    batches: usize,
) -> Result<WorkerOutcome, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut held_set = HeldSet::new(SHARED_CAPACITY_BLOCKS);
    let mut cache = shared.cache();
    let mut held = fill_single(&mut cache, share_blocks, &mut held_set)?;
    scatter_free(
        &mut cache,
        &mut held,
        &mut held_set,
        share_blocks - keep_blocks,
        &mut rng,
    )?;
    let mut batch = PairBatch::new();
    let mut timed = Duration::ZERO;
    barrier.wait();
    for _ in 0..batches {
        batch.draw(&mut held, &mut rng)?;
        timed += batch.run(&mut cache)?;
        batch.settle(&mut held, &mut held_set)?;
    }
    // Return the cached blocks before anyone checks the counts.
    cache.drain();
    drop(cache);
    Ok(WorkerOutcome {
        held,
        pairs: (batches * PAIRS_PER_BATCH) as u64,
        timed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_targets() {
        assert_eq!(PAIR_OCCUPANCIES[0].allocated_blocks(1 << 20), 1 << 19);
        // 99.9% of 2^20 leaves 1049 free blocks.
        assert_eq!(
            (1 << 20) - PAIR_OCCUPANCIES[2].allocated_blocks(1 << 20),
            1049
        );
    }

    #[test]
    fn flat_pairs_keep_occupancy_and_verify() {
        let capacity = 4096;
        let mut flat = FlatBitmap::new(capacity);
        let mut held: Vec<u64> = flat.alloc_extent(capacity).unwrap().collect();
        let mut held_set = HeldSet::new(capacity);
        for &block in &held {
            held_set.insert(block);
        }
        let mut rng = SmallRng::seed_from_u64(1);
        scatter_free(&mut flat, &mut held, &mut held_set, 100, &mut rng).unwrap();
        let run = run_pairs(&mut flat, &mut held, &mut held_set, &mut rng, 1, 3).unwrap();
        assert_eq!(run.ns_per_pair.len(), 3);
        assert_eq!(run.allocs, 4 * PAIRS_PER_BATCH as u64);
        check_pair_counts("t", &run, &held, held_set.held_blocks(), capacity - 100).unwrap();
        verify_single_blocks("t", &mut flat, &held, &held_set, capacity).unwrap();
        assert_eq!(flat.allocated_blocks(), 0);
    }

    #[test]
    fn verification_catches_a_lost_block() {
        let capacity = 256;
        let mut flat = FlatBitmap::new(capacity);
        let mut held_set = HeldSet::new(capacity);
        let held: Vec<u64> = (0..10).map(|_| flat.alloc().unwrap()).collect();
        for &block in &held {
            held_set.insert(block);
        }
        // The allocator holds a block the harness does not know about.
        flat.alloc().unwrap();
        let err = verify_single_blocks("t", &mut flat, &held, &held_set, capacity).unwrap_err();
        assert!(matches!(err, BenchError::Verification { .. }), "{err}");
    }

    #[test]
    fn flat_extents_steady_state() {
        let capacity = 1 << 14;
        let mut flat = FlatBitmap::new(capacity);
        let mut held = Vec::new();
        let mut held_set = HeldSet::new(capacity);
        let target = capacity * 9 / 10;
        let mut rng = SmallRng::seed_from_u64(2);
        let run = run_extents(
            &mut flat,
            &mut held,
            &mut held_set,
            &mut rng,
            target,
            10,
            500,
        )
        .unwrap();
        assert!(run.call_ns.len() >= 500);
        assert!(held_set.held_blocks() <= target);
        check_extent_counts("t", &run, &held_set, &held).unwrap();
        verify_and_release("t", &mut flat, &held, held_set.held_blocks(), capacity).unwrap();
    }
}
