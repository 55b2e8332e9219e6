//! The `ooc` suite: the out-of-core engine (`strata-ooc`) against the same
//! GEMM kernel with everything in memory, and its eviction policies
//! against each other and against Belady's optimum, every ratio measured
//! in the same run as its baseline.
//!
//! 1. **Matmul out of core.** A and B (N×N `f32`, random in [-1, 1)) are
//!    written as Zarr v3 arrays under [`std::env::temp_dir`] with the
//!    uncompressed `bytes` codec (no compression, no checksum), so a chunk
//!    read is file I/O and a copy, never decoding work. A
//!    [`ContractionJob`] for `ij,jk->ik` runs under the memory budget with
//!    policy MIN and prefetch, writing C as a Zarr array next to them; its
//!    GFLOP/s (2·N³ over the wall time of engine creation plus
//!    [`ContractionJob::run`], which includes every read, the output writes
//!    and their fsyncs) are compared with one call of the same faer kernel
//!    ([`GemmElement::gemm_add`]) on the whole matrices in memory (the
//!    matrices are read in beforehand and C is pre-faulted; only the call
//!    is timed).
//!    - Peak RSS: the process's peak resident set is reset just before the
//!      run by writing `5` to `/proc/self/clear_refs`, and `VmHWM` is read
//!      from `/proc/self/status` after it. Nothing large is allocated
//!      before (inputs are generated chunk by chunk; the in-memory
//!      baseline runs after the out-of-core runs).
//!    - Bytes read: the cache's `source_read_bytes` against the inputs'
//!      size (each input read once, the least any run reads) and against
//!      the plan's reads with no reuse between steps.
//! 2. **Hit ratios.** The access sequences of real plans
//!    ([`ContractionJob::access_sequence`]) for `ij,jk->ik` and
//!    `bij,bjk->bik` go through [`simulate`] with LRU, SIEVE, S3-FIFO and
//!    plan-aware MIN at caches of 10–50% of the trace's distinct chunks,
//!    each against [`belady_hits`] at the same size.
//! 3. **MIN against LRU.** The matmul of 1 runs again with LRU on the same
//!    arrays and budget: bytes read and wall time, side by side.
//!
//! Every result verifies itself: sampled entries of each C (both
//! out-of-core outputs and the in-memory one) against dot products computed
//! in `f64` from rows of A and columns of B read back from the arrays,
//! within the worst-case bound of any `f32` summation order; the run
//! reports' counters against each other (hits + misses = accesses, written
//! bytes = C's size, reads at least the inputs, reserved peak within the
//! budget); simulated hits against Belady's (no policy may beat it).
//!
//! Fourth, reductions and elementwise maps on the same arrays: a sum over
//! axis 0 of A and A + B out of core, in input MB/s against reading the
//! same chunks with `ZarrArray::read_chunk`, page cache dropped before
//! each (target: 80% of the read rate; both are I/O bound).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_array::chunk::{read_chunk_vec, write_chunk_from, ChunkSink, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::mem::MemArray;
use strata_array::meta::ArrayMeta;
use strata_array::zarr::{ZarrArray, ZarrCodecs};
use strata_ooc::contract::{ContractionJob, Engine, GemmElement, PolicyKind, RunConfig, RunReport};
use strata_ooc::einsum::EinsumSpec;
use strata_ooc::map::{MapJob, MapOp};
use strata_ooc::policy::sim::{belady_hits, simulate};
use strata_ooc::policy::ChunkKey;
use strata_ooc::reduce::{ReduceJob, ReduceOp};
use strata_pool::sysmem::{self, ProcessMemory, CLEAR_REFS_PATH};

use crate::scratch::{DropCaches, TempDir};
use crate::{
    BenchError, BenchOptions, BenchResult, SuiteReport, METRIC_MEAN, METRIC_PEAK,
    METRIC_THROUGHPUT, METRIC_TOTAL, UNIT_GFLOP_PER_S, UNIT_HITS_PER_ACCESS, UNIT_MB_PER_S,
    UNIT_MIB, UNIT_MS,
};

/// This suite's name in [`crate::SUITES`].
const SUITE: &str = "ooc";
/// Seed of every random choice in the suite; printed in the notes.
const SEED: u64 = 0x5354_5241_5441_0005;

/// The reductions and elementwise rows' section, named in their errors.
pub(crate) const REDUCE_MAP_SECTION: &str = "reduction / elementwise map";

/// Target: out-of-core GFLOP/s over in-memory GFLOP/s.
const TARGET_GFLOPS_OVER_IN_MEMORY: f64 = 0.80;
/// Target: peak RSS at most the budget plus this much.
const TARGET_RSS_OVER_BUDGET_BYTES: u64 = 64 << 20;
/// Target: MIN's hits over Belady's.
const TARGET_MIN_OVER_BELADY: f64 = 0.95;
const _: () = assert!(TARGET_MIN_OVER_BELADY > 0.0 && TARGET_MIN_OVER_BELADY <= 1.0);

/// Simulated cache sizes, in percent of the trace's distinct chunks.
const CACHE_SIZE_PERCENTS: [u64; 5] = [10, 20, 30, 40, 50];
/// Sampled rows of C checked (the first and last row among them).
const SAMPLE_ROWS: usize = 4;
/// Sampled columns of C checked (the first and last column among them).
const SAMPLE_COLS: usize = 4;
const _: () = assert!(SAMPLE_ROWS >= 2 && SAMPLE_COLS >= 2);
/// Unit roundoff of `f32` (2^-24).
const F32_UNIT_ROUNDOFF: f64 = 1.0 / (1u64 << 24) as f64;
/// Bytes of an `f32`.
const F32_BYTES: u64 = 4;
/// Bytes per MiB in the MiB rows.
const BYTES_PER_MIB: f64 = (1u64 << 20) as f64;
/// Where `VmHWM` and `VmRSS` are read.
const STATUS_PATH: &str = "/proc/self/status";
/// Side of the square matmul run once before anything is timed, so the
/// GEMM's thread pool is up.
const WARM_UP_SIDE: usize = 256;

/// A contraction whose access sequence is simulated.
#[derive(Clone, Copy, Debug)]
struct TraceCase {
    spec: &'static str,
    a_shape: &'static [u64],
    a_chunks: &'static [u64],
    b_shape: &'static [u64],
    b_chunks: &'static [u64],
    /// The budget the plan is made for (it shapes the tiles, hence the
    /// trace).
    budget_bytes: u64,
}

/// How much work the suite does.
#[derive(Clone, Copy, Debug)]
struct Settings {
    /// Rows, columns and inner length of the matmul.
    matmul_n: u64,
    /// Side of the square chunks of A and B.
    chunk_side: u64,
    /// The out-of-core runs' memory budget.
    budget_bytes: u64,
    /// Whether to drop the page cache before each out-of-core run.
    drop_caches: bool,
    /// The simulated plans.
    traces: [TraceCase; 2],
}

/// Tiny sizes, to check the suite end to end (tests).
const SETTINGS_SMOKE: Settings = Settings {
    matmul_n: 256,
    chunk_side: 64,
    budget_bytes: 256 << 10,
    // Dropping the whole machine's cache from a test would slow everyone.
    drop_caches: false,
    traces: [
        TraceCase {
            spec: "ij,jk->ik",
            a_shape: &[256, 256],
            a_chunks: &[32, 32],
            b_shape: &[256, 256],
            b_chunks: &[32, 32],
            budget_bytes: 64 << 10,
        },
        TraceCase {
            spec: "bij,bjk->bik",
            a_shape: &[4, 128, 128],
            a_chunks: &[1, 32, 32],
            b_shape: &[4, 128, 128],
            b_chunks: &[1, 32, 32],
            budget_bytes: 64 << 10,
        },
    ],
};

/// The traces of `--quick` and the full run.
const TRACES: [TraceCase; 2] = [
    TraceCase {
        spec: "ij,jk->ik",
        a_shape: &[2048, 2048],
        a_chunks: &[128, 128],
        b_shape: &[2048, 2048],
        b_chunks: &[128, 128],
        budget_bytes: 2 << 20,
    },
    TraceCase {
        spec: "bij,bjk->bik",
        a_shape: &[16, 512, 512],
        a_chunks: &[1, 128, 128],
        b_shape: &[16, 512, 512],
        b_chunks: &[1, 128, 128],
        budget_bytes: 1 << 20,
    },
];

/// `--quick`.
const SETTINGS_QUICK: Settings = Settings {
    matmul_n: 4096,
    chunk_side: 512,
    budget_bytes: 32 << 20,
    drop_caches: true,
    traces: TRACES,
};

/// The default (full) run.
const SETTINGS_FULL: Settings = Settings {
    matmul_n: 16384,
    chunk_side: 512,
    budget_bytes: 256 << 20,
    drop_caches: true,
    traces: TRACES,
};

// Chunks tile the matrices exactly, and the budget is smaller than the
// inputs (otherwise nothing is out of core).
const _: () = assert!(valid(&SETTINGS_SMOKE) && valid(&SETTINGS_QUICK) && valid(&SETTINGS_FULL));

const fn valid(settings: &Settings) -> bool {
    settings.matmul_n.is_multiple_of(settings.chunk_side)
        && 2 * settings.matmul_n * settings.matmul_n * F32_BYTES > settings.budget_bytes
}

pub(crate) fn run(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SuiteReport, BenchError> {
    let (settings, mode) = options.pick(SETTINGS_SMOKE, SETTINGS_QUICK, SETTINGS_FULL);
    let mut report = SuiteReport {
        suite: SUITE.to_owned(),
        results: Vec::new(),
        notes: vec![
            format!("mode {mode}; seed {SEED:#x}; every baseline is measured in this same run"),
            "ratio = value / baseline_value: above 1 is better for GFLOP/s and hits/access \
             rows, below 1 is better for MiB and ms rows"
                .to_owned(),
        ],
    };
    let dir = TempDir::create("ooc")?;
    let threads = RunConfig::with_budget(settings.budget_bytes).gemm_threads;
    warm_up(threads);

    progress("ooc: writing the matmul inputs");
    let inputs = MatmulInputs::generate(&settings, &dir)?;
    report.notes.push(format!(
        "matmul inputs: A and B {n}x{n} f32 (uniform in [-1, 1)), Zarr v3 in {} (removed at \
         the end), chunks {c}x{c}, codec `bytes` only (uncompressed, no checksum: a chunk read \
         is I/O and a copy); {} MiB of inputs = {:.1}x the {} MiB budget; output C in the same \
         directory, chunks = the plan's output tiles",
        dir.path.display(),
        mib(inputs.input_bytes()),
        inputs.input_bytes() as f64 / settings.budget_bytes as f64,
        mib(settings.budget_bytes),
        n = settings.matmul_n,
        c = settings.chunk_side,
    ));
    let samples = Samples::read(&inputs, &settings)?;
    let mut drops = DropCaches::new(settings.drop_caches);

    let mut runs = Vec::new();
    for policy in [PolicyKind::Min, PolicyKind::Lru] {
        progress(&format!(
            "ooc: matmul out of core, policy {}",
            policy.name()
        ));
        let run = run_out_of_core(&inputs, &settings, policy, threads, &dir, &mut drops)?;
        samples.check(&format!("out-of-core C ({})", policy.name()), |i, j| {
            run.output_at(i, j)
        })?;
        runs.push(run);
    }
    report.notes.push(drops.note(
        "before each out-of-core run and each baseline read",
        "the runs read the inputs from the page cache",
    ));

    progress("ooc: matmul in memory (baseline)");
    let in_memory = run_in_memory(&inputs, threads)?;
    let n = settings.matmul_n as usize;
    samples.check("in-memory C", |i, j| {
        Ok(in_memory.c[i as usize * n + j as usize])
    })?;
    matmul_rows(&settings, &inputs, &runs, &in_memory, threads, &mut report);

    progress("ooc: policy simulations on plan traces");
    for case in &settings.traces {
        trace_benchmark(case, &mut report)?;
    }
    progress("ooc: reduction and elementwise map against reading the same bytes");
    stream_rows(&inputs, &settings, threads, &dir, &mut drops, &mut report)?;
    Ok(report)
}

/// Target: a streaming job's input MB/s over reading the same chunks.
const TARGET_STREAM_OVER_READ: f64 = 0.80;
/// Columns of A whose sums the reduction row checks.
const CHECKED_SUMS: u64 = 4;

/// Reads every chunk of `arrays` (page cache dropped first), timing it.
fn read_all(arrays: &[&ZarrArray], drops: &mut DropCaches) -> Result<Duration, BenchError> {
    drops.drop_now();
    let started = Instant::now();
    let mut buffer = Vec::new();
    let mut read_bytes = 0u64;
    for array in arrays {
        let meta = array.meta();
        for grid in meta.grid_indices() {
            buffer.resize(meta.chunk_len_bytes_at(&grid), 0);
            array
                .read_chunk(&grid, &mut buffer)
                .map_err(|e| setup(REDUCE_MAP_SECTION, format!("reading {grid:?}: {e}")))?;
            read_bytes += buffer.len() as u64;
        }
    }
    let elapsed = started.elapsed();
    let expected: u64 = arrays.iter().map(|a| a.meta().len_bytes()).sum();
    if read_bytes != expected {
        return Err(setup(
            REDUCE_MAP_SECTION,
            format!("read {read_bytes} bytes, the arrays hold {expected}"),
        ));
    }
    Ok(elapsed)
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Reduction (sum over axis 0 of A) and elementwise add (A + B) out of
/// core, each against plain reads of the same chunks, page cache dropped
/// before every run.
fn stream_rows(
    inputs: &MatmulInputs,
    settings: &Settings,
    threads: usize,
    dir: &TempDir,
    drops: &mut DropCaches,
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let budget = settings.budget_bytes;
    let n = settings.matmul_n;
    let prefix = format!("stream {n}^2 f32, budget {} MiB", mib(budget));
    let config = RunConfig {
        gemm_threads: threads,
        ..RunConfig::with_budget(budget)
    };
    let bench = |what: &str, e: String| setup(REDUCE_MAP_SECTION, format!("{what}: {e}"));

    // Reduction: sum of A over axis 0 (column sums).
    let read_a = read_all(&[&inputs.a], drops)?;
    let job = ReduceJob::new(&inputs.a, ReduceOp::Sum, &[0], false, DataType::F32, budget)
        .map_err(|e| bench("reduce", e.to_string()))?;
    let sums = MemArray::zeroed("column sums", job.output_meta());
    drops.drop_now();
    let engine = Engine::new(budget).map_err(|e| bench("reduce", e.to_string()))?;
    let started = Instant::now();
    let reduce_report = job
        .run(&engine, &sums, &config, &mut |_| {})
        .map_err(|e| bench("reduce", e.to_string()))?;
    let reduce_time = started.elapsed();
    let sums_values: Vec<f32> = sums
        .to_bytes()
        .chunks_exact(F32_BYTES as usize)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for j in (0..n).step_by((n / CHECKED_SUMS).max(1) as usize) {
        let column = inputs.column(&inputs.a, j)?;
        let (exact, magnitude) = column.iter().fold((0f64, 0f64), |(s, m), &x| {
            (s + f64::from(x), m + f64::from(x).abs())
        });
        // Compensated summation: 2u sum|x| (plus O(n u^2)), and the result's rounding.
        let bound = 3.0 * F32_UNIT_ROUNDOFF * magnitude + F32_UNIT_ROUNDOFF * exact.abs();
        let found = f64::from(sums_values[j as usize]);
        if (found - exact).abs() > bound {
            return Err(BenchError::Verification {
                bench: prefix.clone(),
                detail: format!(
                    "sum of column {j} is {found}, exactly {exact} (bound {bound:.3e})"
                ),
            });
        }
    }
    if reduce_report.read_bytes < inputs.a.meta().len_bytes() {
        return Err(BenchError::Verification {
            bench: prefix.clone(),
            detail: format!(
                "the reduction read {} bytes of A's {}",
                reduce_report.read_bytes,
                inputs.a.meta().len_bytes()
            ),
        });
    }
    let a_bytes = inputs.a.meta().len_bytes();
    let baseline = BenchResult::new(
        format!("{prefix}: read every chunk of A"),
        METRIC_THROUGHPUT,
        mb_per_s(a_bytes, read_a),
        UNIT_MB_PER_S,
    );
    let result = BenchResult::new(
        format!("{prefix}: reduce sum over axis 0 of A"),
        METRIC_THROUGHPUT,
        mb_per_s(a_bytes, reduce_time),
        UNIT_MB_PER_S,
    )
    .against(&baseline);
    report.notes.push(format!(
        "{}: ratio {} against target >= {TARGET_STREAM_OVER_READ}; read {:.2}x A, hit ratio over {} accesses {:.3}",
        result.name,
        verdict_at_least(result.ratio, TARGET_STREAM_OVER_READ),
        reduce_report.read_bytes as f64 / a_bytes as f64,
        reduce_report.accesses,
        {
            let c = &reduce_report.cache;
            c.hits as f64 / (c.hits + c.misses).max(1) as f64
        }
    ));
    report.results.push(result);
    report.results.push(baseline);

    // Elementwise: A + B into a Zarr array on the same disk.
    let read_ab = read_all(&[&inputs.a, &inputs.b], drops)?;
    let inputs_list: [&dyn ChunkSource; 2] = [&inputs.a, &inputs.b];
    let job = MapJob::new(MapOp::Add, &inputs_list, DataType::F32, budget)
        .map_err(|e| bench("map", e.to_string()))?;
    let path = dir.path.join("a-plus-b");
    let out = ZarrArray::create(&path, job.output_meta(), &ZarrCodecs::default())
        .map_err(|e| bench("map", e.to_string()))?;
    drops.drop_now();
    let engine = Engine::new(budget).map_err(|e| bench("map", e.to_string()))?;
    let started = Instant::now();
    let map_report = job
        .run(&engine, &out, &config, &mut |_| {})
        .map_err(|e| bench("map", e.to_string()))?;
    let map_time = started.elapsed();
    let written = ZarrArray::open(&path).map_err(|e| bench("map", e.to_string()))?;
    for i in (0..n).step_by((n / CHECKED_SUMS).max(1) as usize) {
        let (a_row, b_row) = (inputs.row(&inputs.a, i)?, inputs.row(&inputs.b, i)?);
        let c_row = inputs.row(&written, i)?;
        if let Some(j) = (0..n as usize).find(|&j| c_row[j] != a_row[j] + b_row[j]) {
            return Err(BenchError::Verification {
                bench: prefix.clone(),
                detail: format!(
                    "(A + B)[{i}][{j}] = {}, expected {}",
                    c_row[j],
                    a_row[j] + b_row[j]
                ),
            });
        }
    }
    let ab_bytes = inputs.input_bytes();
    let baseline = BenchResult::new(
        format!("{prefix}: read every chunk of A and B"),
        METRIC_THROUGHPUT,
        mb_per_s(ab_bytes, read_ab),
        UNIT_MB_PER_S,
    );
    let result = BenchResult::new(
        format!("{prefix}: map add A + B (inputs read)"),
        METRIC_THROUGHPUT,
        mb_per_s(ab_bytes, map_time),
        UNIT_MB_PER_S,
    )
    .against(&baseline);
    report.notes.push(format!(
        "{}: ratio {} against target >= {TARGET_STREAM_OVER_READ}; read {:.2}x the inputs and wrote {} MiB (with fsync) in the same time",
        result.name,
        verdict_at_least(result.ratio, TARGET_STREAM_OVER_READ),
        map_report.read_bytes as f64 / ab_bytes as f64,
        mib(map_report.written_bytes)
    ));
    report.results.push(result);
    report.results.push(baseline);
    report.notes.push(format!(
        "{prefix}: MB/s of input bytes over the job's wall time (Engine::new + run, page cache \
         dropped before each run and each baseline read); baselines read every chunk with \
         ZarrArray::read_chunk into one reused buffer; the sum is checked on {CHECKED_SUMS} columns \
         within the compensated-summation bound, the map on {CHECKED_SUMS} rows exactly"
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Matmul out of core
// ---------------------------------------------------------------------------

/// A and B on disk.
struct MatmulInputs {
    a: ZarrArray,
    b: ZarrArray,
    n: u64,
    chunk_side: u64,
}

impl MatmulInputs {
    /// Writes A and B chunk by chunk (one chunk in memory at a time), each
    /// chunk's values from its own seed, and opens them for reading.
    fn generate(settings: &Settings, dir: &TempDir) -> Result<Self, BenchError> {
        let (n, side) = (settings.matmul_n, settings.chunk_side);
        let meta = ArrayMeta::new(vec![n, n], vec![side, side], DataType::F32)
            .map_err(|e| setup("matmul inputs", format!("{n}x{n} in {side}x{side}: {e}")))?;
        let mut open = Vec::new();
        for (operand, name) in [(0u64, "a"), (1, "b")] {
            let path = dir.path.join(name);
            let writer = ZarrArray::create(&path, meta.clone(), &ZarrCodecs::default())
                .map_err(|e| setup("matmul inputs", e.to_string()))?;
            let mut values = Vec::new();
            let mut scratch = Vec::new();
            for grid in meta.grid_indices() {
                let linear = meta.grid_index_to_linear(&grid);
                let mut rng = SmallRng::seed_from_u64(SEED ^ (operand << 56) ^ linear);
                values.clear();
                values.extend(
                    (0..meta.chunk_element_count_at(&grid)).map(|_| rng.gen_range(-1.0f32..1.0)),
                );
                write_chunk_from(&writer, &grid, &mut scratch, &values)
                    .map_err(|e| setup("matmul inputs", e.to_string()))?;
            }
            writer
                .finish()
                .map_err(|e| setup("matmul inputs", e.to_string()))?;
            open.push(ZarrArray::open(&path).map_err(|e| setup("matmul inputs", e.to_string()))?);
        }
        let b = open.pop().expect("two arrays");
        let a = open.pop().expect("two arrays");
        Ok(MatmulInputs {
            a,
            b,
            n,
            chunk_side: side,
        })
    }

    fn input_bytes(&self) -> u64 {
        self.a.meta().len_bytes() + self.b.meta().len_bytes()
    }

    /// Row `i` of `array` (N×N, chunked like the inputs), read chunk by
    /// chunk.
    fn row(&self, array: &ZarrArray, i: u64) -> Result<Vec<f32>, BenchError> {
        let side = self.chunk_side;
        let mut row = Vec::with_capacity(self.n as usize);
        for column_chunk in 0..self.n / side {
            let chunk = read_chunk_vec::<f32>(array, &[i / side, column_chunk])
                .map_err(|e| setup("matmul samples", e.to_string()))?;
            let start = ((i % side) * side) as usize;
            row.extend_from_slice(&chunk[start..start + side as usize]);
        }
        Ok(row)
    }

    /// Column `j` of `array`, read chunk by chunk.
    fn column(&self, array: &ZarrArray, j: u64) -> Result<Vec<f32>, BenchError> {
        let side = self.chunk_side;
        let mut column = Vec::with_capacity(self.n as usize);
        for row_chunk in 0..self.n / side {
            let chunk = read_chunk_vec::<f32>(array, &[row_chunk, j / side])
                .map_err(|e| setup("matmul samples", e.to_string()))?;
            column
                .extend((0..side as usize).map(|r| chunk[r * side as usize + (j % side) as usize]));
        }
        Ok(column)
    }

    /// The whole of `array` in memory, row-major.
    fn whole(&self, array: &ZarrArray) -> Result<Vec<f32>, BenchError> {
        let (n, side) = (self.n as usize, self.chunk_side as usize);
        let mut whole = vec![0.0f32; n * n];
        for grid in array.meta().grid_indices() {
            let chunk = read_chunk_vec::<f32>(array, &grid)
                .map_err(|e| setup("matmul in memory", e.to_string()))?;
            let (row0, col0) = (grid[0] as usize * side, grid[1] as usize * side);
            for (r, chunk_row) in chunk.chunks_exact(side).enumerate() {
                let start = (row0 + r) * n + col0;
                whole[start..start + side].copy_from_slice(chunk_row);
            }
        }
        Ok(whole)
    }
}

/// Sampled entries of C = A·B, computed from rows and columns read back from
/// the arrays.
struct Samples {
    rows: Vec<u64>,
    cols: Vec<u64>,
    /// `expected[r][c]`: (the dot product in `f64`, the bound on any `f32`
    /// result's error).
    expected: Vec<Vec<(f64, f64)>>,
}

impl Samples {
    fn read(inputs: &MatmulInputs, settings: &Settings) -> Result<Self, BenchError> {
        let n = settings.matmul_n;
        let mut rng = SmallRng::seed_from_u64(SEED ^ 0x5A);
        let mut pick = |count: usize| {
            let mut picked = vec![0, n - 1];
            while picked.len() < count {
                let index = rng.gen_range(0..n);
                if !picked.contains(&index) {
                    picked.push(index);
                }
            }
            picked
        };
        let (rows, cols) = (pick(SAMPLE_ROWS), pick(SAMPLE_COLS));
        let a_rows = rows
            .iter()
            .map(|&i| inputs.row(&inputs.a, i))
            .collect::<Result<Vec<_>, _>>()?;
        let b_cols = cols
            .iter()
            .map(|&j| inputs.column(&inputs.b, j))
            .collect::<Result<Vec<_>, _>>()?;
        // Any order of summing n products in f32 is within
        // gamma_n * sum |a_k b_k| of the exact dot product (Higham, 3.1);
        // the f64 reference's own error is far below that.
        let gamma = n as f64 * F32_UNIT_ROUNDOFF / (1.0 - n as f64 * F32_UNIT_ROUNDOFF);
        let expected = a_rows
            .iter()
            .map(|row| {
                b_cols
                    .iter()
                    .map(|column| {
                        let (sum, magnitude) = row.iter().zip(column).fold(
                            (0.0f64, 0.0f64),
                            |(sum, magnitude), (&x, &y)| {
                                let term = f64::from(x) * f64::from(y);
                                (sum + term, magnitude + term.abs())
                            },
                        );
                        (sum, gamma * magnitude)
                    })
                    .collect()
            })
            .collect();
        Ok(Samples {
            rows,
            cols,
            expected,
        })
    }

    /// Checks every sampled entry of `what` (read through `entry`) against
    /// its dot product.
    fn check(
        &self,
        what: &str,
        mut entry: impl FnMut(u64, u64) -> Result<f32, BenchError>,
    ) -> Result<(), BenchError> {
        for (r, &i) in self.rows.iter().enumerate() {
            for (c, &j) in self.cols.iter().enumerate() {
                let (exact, bound) = self.expected[r][c];
                let found = f64::from(entry(i, j)?);
                // A NaN fails too.
                let within = (found - exact).abs() <= bound;
                if !within {
                    return Err(BenchError::Verification {
                        bench: format!("matmul: {what}"),
                        detail: format!(
                            "C[{i}][{j}] = {found}, the dot product of row {i} of A and column \
                             {j} of B is {exact} (allowed error {bound:.3e}, seed {SEED:#x})"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// One out-of-core run and its measurements.
struct OocRun {
    policy: PolicyKind,
    report: RunReport,
    /// Engine creation plus the run.
    elapsed: Duration,
    /// Peak RSS during the run, or why it was not measured.
    peak_rss: Result<RssFigures, String>,
    output: ZarrArray,
}

impl OocRun {
    /// `C[i][j]` read from the output array.
    fn output_at(&self, i: u64, j: u64) -> Result<f32, BenchError> {
        let meta = self.output.meta();
        let (rows, cols) = (meta.chunk_shape()[0], meta.chunk_shape()[1]);
        let grid = [i / rows, j / cols];
        let chunk = read_chunk_vec::<f32>(&self.output, &grid)
            .map_err(|e| verification(self.policy, format!("reading C: {e}")))?;
        let width = meta.chunk_shape_at(&grid)[1];
        Ok(chunk[((i % rows) * width + j % cols) as usize])
    }
}

/// Peak and starting RSS of a run.
#[derive(Clone, Copy, Debug)]
struct RssFigures {
    /// `VmRSS` just after the reset.
    start_bytes: u64,
    /// `VmHWM` after the run.
    peak_bytes: u64,
}

fn run_out_of_core(
    inputs: &MatmulInputs,
    settings: &Settings,
    policy: PolicyKind,
    threads: usize,
    dir: &TempDir,
    drops: &mut DropCaches,
) -> Result<OocRun, BenchError> {
    let budget = settings.budget_bytes;
    let job = ContractionJob::new(
        &EinsumSpec::matmul(),
        &inputs.a,
        &inputs.b,
        DataType::F32,
        budget,
    )
    .map_err(|e| setup("matmul out of core", e.to_string()))?;
    let path = dir.path.join(format!("c-{}", policy.name()));
    let out = ZarrArray::create(&path, job.output_meta(), &ZarrCodecs::default())
        .map_err(|e| setup("matmul out of core", e.to_string()))?;
    let config = RunConfig {
        policy,
        prefetch: true,
        gemm_threads: threads,
        ..RunConfig::with_budget(budget)
    };
    drops.drop_now();
    let reset = reset_peak_rss();
    let started = Instant::now();
    let engine = Engine::new(budget).map_err(|e| setup("matmul out of core", e.to_string()))?;
    let report = job
        .run(&engine, &out, &config, &mut |_| {})
        .map_err(|e| verification(policy, format!("run failed: {e}")))?;
    let elapsed = started.elapsed();
    let peak_rss = reset.and_then(|start_bytes| {
        Ok(RssFigures {
            start_bytes,
            peak_bytes: read_rss()?.peak_rss_bytes,
        })
    });
    drop(engine);
    // The run's own counters, against each other and the plan.
    let n = settings.matmul_n;
    let checks = [
        (
            report.cache.hits + report.cache.misses == report.accesses,
            format!(
                "hits {} + misses {} != accesses {}",
                report.cache.hits, report.cache.misses, report.accesses
            ),
        ),
        (
            report.accesses == job.access_sequence().len() as u64,
            format!(
                "{} accesses reported, the schedule has {}",
                report.accesses,
                job.access_sequence().len()
            ),
        ),
        (
            report.written_bytes == n * n * F32_BYTES,
            format!(
                "{} bytes written, C has {}",
                report.written_bytes,
                n * n * F32_BYTES
            ),
        ),
        (
            report.cache.source_read_bytes >= inputs.input_bytes(),
            format!(
                "{} bytes read, less than the inputs' {}",
                report.cache.source_read_bytes,
                inputs.input_bytes()
            ),
        ),
        (
            report.peak_reserved_bytes <= budget,
            format!(
                "{} bytes reserved at peak, over the budget of {budget}",
                report.peak_reserved_bytes
            ),
        ),
        (
            report.flops == 2 * n * n * n,
            format!("{} flops reported, 2*{n}^3 expected", report.flops),
        ),
    ];
    for (ok, detail) in checks {
        if !ok {
            return Err(verification(policy, detail));
        }
    }
    let output = ZarrArray::open(&path).map_err(|e| verification(policy, e.to_string()))?;
    Ok(OocRun {
        policy,
        report,
        elapsed,
        peak_rss,
        output,
    })
}

/// The in-memory baseline: the whole product in one kernel call.
struct InMemory {
    c: Vec<f32>,
    elapsed: Duration,
}

fn run_in_memory(inputs: &MatmulInputs, threads: usize) -> Result<InMemory, BenchError> {
    let n = inputs.n as usize;
    let a = inputs.whole(&inputs.a)?;
    let b = inputs.whole(&inputs.b)?;
    let mut c = vec![0.0f32; n * n];
    // Touch every page before the clock starts (the value hides that it is
    // the zero the allocation already holds).
    c.fill(std::hint::black_box(0.0));
    let started = Instant::now();
    f32::gemm_add(&mut c, &a, &b, n, n, n, threads);
    let elapsed = started.elapsed();
    Ok(InMemory { c, elapsed })
}

/// A small product on the kernel's thread pool, so no timed run pays for
/// starting it.
fn warm_up(threads: usize) {
    let a = vec![1.0f32; WARM_UP_SIDE * WARM_UP_SIDE];
    let mut c = vec![0.0f32; WARM_UP_SIDE * WARM_UP_SIDE];
    f32::gemm_add(
        &mut c,
        &a,
        &a,
        WARM_UP_SIDE,
        WARM_UP_SIDE,
        WARM_UP_SIDE,
        threads,
    );
    std::hint::black_box(&c);
}

/// Rows 1 and 3: throughput, peak RSS, bytes read and wall time.
fn matmul_rows(
    settings: &Settings,
    inputs: &MatmulInputs,
    runs: &[OocRun],
    in_memory: &InMemory,
    threads: usize,
    report: &mut SuiteReport,
) {
    let n = settings.matmul_n;
    let flops = (2 * n * n * n) as f64;
    let prefix = format!(
        "matmul {n}^2 f32, budget {} MiB",
        mib(settings.budget_bytes)
    );
    let gflops = |elapsed: Duration| flops / elapsed.as_secs_f64().max(f64::MIN_POSITIVE) / 1e9;
    let baseline = BenchResult::new(
        format!("{prefix}: in memory (one faer call)"),
        METRIC_THROUGHPUT,
        gflops(in_memory.elapsed),
        UNIT_GFLOP_PER_S,
    );
    report.notes.push(format!(
        "{}: GEMM on {threads} thread(s); the in-memory baseline times one \
         gemm_add({n}, {n}, {n}) call on matrices already in memory; out-of-core rows time \
         Engine::new + ContractionJob::run (reads, packing, GEMM, output writes with fsync)",
        prefix
    ));
    let plan = &runs[0].report.plan;
    let tiles: Vec<String> = plan
        .tiles
        .iter()
        .map(|t| format!("{}={}", t.label as char, t.tile))
        .collect();
    report.notes.push(format!(
        "{prefix}: plan tiles {}; {} output tiles x {} steps; memory: accumulator {} KiB, \
         packed A {} KiB, packed B {} KiB, staging {} KiB, GEMM kernel's own packing {} KiB \
         (outside the pool, counted in the budget), cache {} KiB",
        tiles.join(" "),
        plan.output_tiles(),
        plan.steps_per_output_tile(),
        plan.memory.accumulator_bytes >> 10,
        plan.memory.packed_a_bytes >> 10,
        plan.memory.packed_b_bytes >> 10,
        plan.memory.staging_bytes >> 10,
        plan.memory.kernel_workspace_bytes >> 10,
        plan.memory.cache_bytes >> 10,
    ));
    let lower_bound = BenchResult::new(
        format!("{prefix}: bytes read, lower bound (inputs once)"),
        METRIC_TOTAL,
        mib(inputs.input_bytes()),
        UNIT_MIB,
    );
    let no_reuse = BenchResult::new(
        format!("{prefix}: bytes read, plan without reuse"),
        METRIC_TOTAL,
        mib(plan.read_bytes_no_reuse),
        UNIT_MIB,
    )
    .against(&lower_bound);
    // The budget bounds what the run holds at its peak.
    let budget_row = BenchResult::new(
        format!("{prefix}: memory budget"),
        METRIC_PEAK,
        mib(settings.budget_bytes),
        UNIT_MIB,
    );
    let mut wall_min: Option<BenchResult> = None;
    for run in runs {
        let name = run.policy.name();
        let throughput = BenchResult::new(
            format!("{prefix}: out of core, {name} + prefetch"),
            METRIC_THROUGHPUT,
            gflops(run.elapsed),
            UNIT_GFLOP_PER_S,
        )
        .against(&baseline);
        report.notes.push(format!(
            "{}: ratio {} against target >= {TARGET_GFLOPS_OVER_IN_MEMORY}",
            throughput.name,
            verdict_at_least(throughput.ratio, TARGET_GFLOPS_OVER_IN_MEMORY)
        ));
        report.results.push(throughput);
        let cache = &run.report.cache;
        let read = BenchResult::new(
            format!("{prefix}: bytes read, {name}"),
            METRIC_TOTAL,
            mib(cache.source_read_bytes),
            UNIT_MIB,
        )
        .against(&lower_bound);
        report.notes.push(format!(
            "{}: {:.3}x the inputs, {:.3}x the plan's reads without reuse",
            read.name,
            cache.source_read_bytes as f64 / inputs.input_bytes() as f64,
            cache.source_read_bytes as f64 / plan.read_bytes_no_reuse as f64,
        ));
        report.results.push(read);
        let wall = BenchResult::new(
            format!("{prefix}: wall time, {name} + prefetch"),
            METRIC_TOTAL,
            run.elapsed.as_secs_f64() * 1e3,
            UNIT_MS,
        );
        report.notes.push(format!(
            "{prefix}, {name}: hit ratio {:.3} over {} accesses; {} evictions; {} prefetched \
             ({} used, {} wasted); pins stalled {:.0} ms in all; peak pinned {} KiB, peak \
             held {} KiB, peak reserved {} KiB of {} KiB",
            run.report.hit_ratio(),
            run.report.accesses,
            cache.evictions,
            cache.prefetches,
            cache.prefetch_hits,
            cache.prefetch_wasted,
            cache.stall_ns as f64 / 1e6,
            cache.peak_pinned_bytes >> 10,
            cache.peak_held_bytes >> 10,
            run.report.peak_reserved_bytes >> 10,
            settings.budget_bytes >> 10,
        ));
        match &wall_min {
            None => {
                wall_min = Some(wall.clone());
                report.results.push(wall);
            }
            Some(min) => report.results.push(wall.against(min)),
        }
        match run.peak_rss {
            Ok(rss) => {
                let row = BenchResult::new(
                    format!("{prefix}: peak RSS, {name}"),
                    METRIC_PEAK,
                    mib(rss.peak_bytes),
                    UNIT_MIB,
                )
                .against(&budget_row);
                let limit = settings.budget_bytes + TARGET_RSS_OVER_BUDGET_BYTES;
                report.notes.push(format!(
                    "{}: {:.1} MiB against target <= budget + {} MiB = {} MiB ({}); {:.1} MiB \
                     were resident when the peak was reset (binary, libraries, allocator \
                     caches, the open arrays)",
                    row.name,
                    mib(rss.peak_bytes),
                    mib(TARGET_RSS_OVER_BUDGET_BYTES),
                    mib(limit),
                    if rss.peak_bytes <= limit {
                        "met"
                    } else {
                        "missed"
                    },
                    mib(rss.start_bytes),
                ));
                report.results.push(row);
            }
            Err(ref why) => report
                .notes
                .push(format!("{prefix}: peak RSS, {name}: not measured ({why})")),
        }
    }
    report.notes.push(format!(
        "peak RSS: '5' written to {CLEAR_REFS_PATH} just before each out-of-core run resets \
         VmHWM to the current RSS; VmHWM read from {STATUS_PATH} right after the run"
    ));
    report.results.push(baseline);
    report.results.push(no_reuse);
    report.results.push(lower_bound);
    report.results.push(budget_row);
}

// ---------------------------------------------------------------------------
// Policy simulations
// ---------------------------------------------------------------------------

/// Row 2: every policy on the trace of `case`'s plan, at each cache size,
/// against Belady.
fn trace_benchmark(case: &TraceCase, report: &mut SuiteReport) -> Result<(), BenchError> {
    let bench = format!("trace {}", case.spec);
    let spec = EinsumSpec::parse(case.spec).map_err(|e| setup(&bench, e.to_string()))?;
    let source = |name: &str, shape: &[u64], chunks: &[u64]| {
        ArrayMeta::new(shape.to_vec(), chunks.to_vec(), DataType::F32)
            .map(|meta| MemArray::zeroed(name, meta))
            .map_err(|e| setup(&bench, format!("{name}: {e}")))
    };
    let a = source("a", case.a_shape, case.a_chunks)?;
    let b = source("b", case.b_shape, case.b_chunks)?;
    let job = ContractionJob::new(&spec, &a, &b, DataType::F32, case.budget_bytes)
        .map_err(|e| setup(&bench, e.to_string()))?;
    let trace = job.access_sequence();
    let distinct = trace.iter().collect::<HashSet<&ChunkKey>>().len() as u64;
    let tiles: Vec<String> = job
        .plan()
        .tiles
        .iter()
        .map(|t| format!("{}={}", t.label as char, t.tile))
        .collect();
    report.notes.push(format!(
        "{bench}: A {:?} in chunks {:?}, B {:?} in chunks {:?}, planned for {} KiB (tiles {}): \
         {} accesses over {distinct} distinct chunks (the working set); simulated without \
         pins, every miss admitted",
        case.a_shape,
        case.a_chunks,
        case.b_shape,
        case.b_chunks,
        case.budget_bytes >> 10,
        tiles.join(" "),
        trace.len(),
    ));
    let mut min_over_belady_lowest = f64::INFINITY;
    for percent in CACHE_SIZE_PERCENTS {
        let capacity = (distinct * percent / 100).max(1) as usize;
        let belady = belady_hits(&trace, capacity).map_err(|e| setup(&bench, e.to_string()))?;
        let prefix = format!("hits {bench}, cache {percent}% ({capacity} chunks)");
        let baseline = BenchResult::new(
            format!("{prefix}: belady"),
            METRIC_MEAN,
            belady as f64 / trace.len() as f64,
            UNIT_HITS_PER_ACCESS,
        );
        for policy in [
            PolicyKind::Lru,
            PolicyKind::Sieve,
            PolicyKind::S3Fifo,
            PolicyKind::Min,
        ] {
            let stats = simulate(policy.build(&trace).as_mut(), &trace, capacity, &mut |_| {
                false
            })
            .map_err(|e| setup(&bench, e.to_string()))?;
            if stats.hits + stats.misses != trace.len() as u64 || stats.hits > belady {
                return Err(BenchError::Verification {
                    bench: bench.clone(),
                    detail: format!(
                        "{} at {capacity} chunks: {} hits + {} misses over {} accesses, \
                         Belady's optimum is {belady} hits",
                        policy.name(),
                        stats.hits,
                        stats.misses,
                        trace.len()
                    ),
                });
            }
            if policy == PolicyKind::Min && belady > 0 {
                min_over_belady_lowest =
                    min_over_belady_lowest.min(stats.hits as f64 / belady as f64);
            }
            report.results.push(
                BenchResult::new(
                    format!("{prefix}: {}", policy.name()),
                    METRIC_MEAN,
                    stats.hit_ratio(),
                    UNIT_HITS_PER_ACCESS,
                )
                .against(&baseline),
            );
        }
        report.results.push(baseline);
    }
    report.notes.push(format!(
        "{bench}: min's hits over belady's, lowest over the cache sizes: {} against target >= \
         {TARGET_MIN_OVER_BELADY}",
        verdict_at_least(
            min_over_belady_lowest
                .is_finite()
                .then_some(min_over_belady_lowest),
            TARGET_MIN_OVER_BELADY
        )
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn mib(bytes: u64) -> f64 {
    bytes as f64 / BYTES_PER_MIB
}

fn setup(bench: &str, detail: String) -> BenchError {
    BenchError::Setup {
        bench: bench.to_owned(),
        detail,
    }
}

fn verification(policy: PolicyKind, detail: String) -> BenchError {
    BenchError::Verification {
        bench: format!("matmul out of core ({})", policy.name()),
        detail,
    }
}

/// `ratio` against a lower bound (higher is better).
fn verdict_at_least(ratio: Option<f64>, target: f64) -> String {
    match ratio {
        Some(ratio) => format!(
            "{ratio:.3} ({})",
            if ratio >= target { "met" } else { "missed" }
        ),
        None => "- (no figure)".to_owned(),
    }
}

/// Resets the process's peak RSS to its current RSS; returns that RSS.
fn reset_peak_rss() -> Result<u64, String> {
    sysmem::reset_peak_rss().map_err(|e| format!("resetting the peak failed: {e}"))?;
    read_rss().map(|m| m.rss_bytes)
}

/// `VmRSS` and `VmHWM` now.
fn read_rss() -> Result<ProcessMemory, String> {
    sysmem::read_process_memory().map_err(|e| format!("reading {STATUS_PATH} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_run_verifies_and_compares_every_row_it_should() {
        let options = BenchOptions {
            smoke: true,
            ..BenchOptions::default()
        };
        let report = run(&options, &mut |_| {}).unwrap();
        assert_eq!(report.suite, SUITE);
        for row in &report.results {
            assert!(row.value.is_finite() && row.value >= 0.0, "{row:?}");
            if let Some(baseline) = &row.baseline {
                assert!(
                    report.results.iter().any(|b| &b.name == baseline
                        && b.metric == row.metric
                        && b.unit == row.unit
                        && Some(b.value) == row.baseline_value),
                    "baseline {baseline:?} of {:?} is not a row of the report",
                    row.name
                );
            }
        }
        let find = |needle: &str| {
            report
                .results
                .iter()
                .filter(|r| r.name.contains(needle))
                .collect::<Vec<_>>()
        };
        // Both policies ran out of core, against the in-memory baseline.
        for policy in ["min", "lru"] {
            let rows = find(&format!("out of core, {policy} + prefetch"));
            assert_eq!(rows.len(), 1, "{policy}: {rows:?}");
            assert!(rows[0].ratio.is_some_and(|r| r > 0.0), "{rows:?}");
            let read = find(&format!("bytes read, {policy}"));
            assert_eq!(read.len(), 1, "{policy}: {read:?}");
            // Every run reads each input at least once.
            assert!(read[0].ratio.is_some_and(|r| r >= 1.0), "{read:?}");
        }
        // Two traces x five sizes x (four policies + belady).
        let hit_rows = find("hits trace");
        assert_eq!(
            hit_rows.len(),
            2 * CACHE_SIZE_PERCENTS.len() * 5,
            "{hit_rows:?}"
        );
        for row in &hit_rows {
            if row.name.ends_with(": belady") {
                assert!(row.baseline.is_none(), "{row:?}");
            } else {
                let ratio = row.ratio.unwrap_or(1.0);
                assert!(ratio <= 1.0 + 1e-12, "a policy beat Belady: {row:?}");
            }
            if row.name.ends_with(": min") {
                assert!(
                    row.ratio.is_none_or(|r| r >= TARGET_MIN_OVER_BELADY),
                    "{row:?}"
                );
            }
        }
        for row in ["reduce sum over axis 0 of A", "map add A + B (inputs read)"] {
            let found = report
                .results
                .iter()
                .find(|r| r.name.starts_with("stream") && r.name.ends_with(row))
                .unwrap_or_else(|| panic!("no {row:?} row: {:?}", report.results));
            assert!(found.ratio.is_some_and(|r| r > 0.0), "{found:?}");
        }
    }

    #[test]
    fn verdicts_compare_against_the_targets() {
        assert_eq!(verdict_at_least(Some(0.96), 0.95), "0.960 (met)");
        assert_eq!(verdict_at_least(Some(0.5), 0.8), "0.500 (missed)");
        assert_eq!(verdict_at_least(None, 0.8), "- (no figure)");
    }
}
