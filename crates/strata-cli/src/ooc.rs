//! The array commands: `create`, `info`, `matmul`, `einsum`, and the
//! end-to-end `demo`. Everything here prints; the work is done by
//! `strata-array` and `strata-ooc`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use strata_array::chunk::{encode_elements, ChunkSink, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::error::ArrayError;
use strata_array::meta::ArrayMeta;
use strata_array::npy::{NpyArray, NpyReadMode};
use strata_array::zarr::{zarr_info, ZarrArray, ZarrCodecs, ZarrCompression};
use strata_disk::device::FileDevice;
use strata_ooc::bounds::read_lower_bound_bytes;
use strata_ooc::bufmgr::CacheStats;
use strata_ooc::contract::{ContractionJob, Engine, PolicyKind, Progress, RunConfig};
use strata_ooc::einsum::EinsumSpec;
use strata_ooc::map::{MapJob, MapOp};
use strata_ooc::reduce::{ReduceJob, ReduceOp};
use strata_ooc::spill_array::SpillArray;
use strata_ooc::stream::StreamReport;
use strata_pool::budget::format_bytes;
use strata_pool::sysmem::{read_process_memory, reset_peak_rss};

use crate::disk::parse_size;

/// Elements per side of a default chunk (512 × 512 f32 = 1 MiB).
const DEFAULT_CHUNK_SIDE: u64 = 512;
/// Elements a default NPY chunk aims for (leading axes shrink to fit).
const DEFAULT_CHUNK_ELEMENTS: u64 = DEFAULT_CHUNK_SIDE * DEFAULT_CHUNK_SIDE;
/// Output entries the demo checks against directly computed dot products.
const DEMO_CHECKED_ENTRIES: usize = 16;
/// The demo's inputs together are this many times its budget.
const DEMO_INPUTS_OVER_BUDGET: u64 = 8;
/// The disk tier's cap for the demo's intermediate, over its raw size.
const DEMO_SPILL_CAP_OVER_INTERMEDIATE: u64 = 2;
/// Chunks of the intermediate queued for the disk tier take at most
/// 1/this of the budget (the contraction plans with the rest).
const DEMO_SPILL_INFLIGHT_SHARE_DIVISOR: u64 = 8;
/// The demo's chunks are at most 1/this of its budget.
const DEMO_CHUNKS_PER_BUDGET: u64 = 32;
/// The demo's smallest chunk side.
const DEMO_CHUNK_SIDE_MIN: u64 = 16;
/// Seed of the demo's generated arrays.
const DEMO_SEED: u64 = 0x5354_5241_5441_0005;

/// Element type names accepted on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 8-bit unsigned integer.
    U8,
    /// IEEE half precision (computed in f32).
    F16,
    /// bfloat16 (computed in f32).
    Bf16,
}

impl DtypeArg {
    fn dtype(self) -> DataType {
        match self {
            DtypeArg::F32 => DataType::F32,
            DtypeArg::F64 => DataType::F64,
            DtypeArg::I32 => DataType::I32,
            DtypeArg::I64 => DataType::I64,
            DtypeArg::U8 => DataType::U8,
            DtypeArg::F16 => DataType::F16,
            DtypeArg::Bf16 => DataType::BF16,
        }
    }
}

/// Eviction policy names accepted on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Plan-aware MIN (Belady over the schedule).
    Min,
    /// Least recently used.
    Lru,
    /// SIEVE.
    Sieve,
    /// S3-FIFO (also accepted as `s3fifo`).
    #[value(name = "s3-fifo", alias = "s3fifo")]
    S3fifo,
}

impl PolicyArg {
    fn kind(self) -> PolicyKind {
        match self {
            PolicyArg::Min => PolicyKind::Min,
            PolicyArg::Lru => PolicyKind::Lru,
            PolicyArg::Sieve => PolicyKind::Sieve,
            PolicyArg::S3fifo => PolicyKind::S3Fifo,
        }
    }
}

/// `strata create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Where to write: a directory (Zarr v3) or a file ending in `.npy`.
    path: PathBuf,
    /// Shape, comma-separated (`4096,4096`).
    #[arg(long, value_delimiter = ',', required = true)]
    shape: Vec<u64>,
    /// Chunk shape (Zarr; default 512 per axis, capped at the shape).
    #[arg(long, value_delimiter = ',')]
    chunks: Option<Vec<u64>>,
    /// Element type.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// `random` (uniform in [-1, 1), small integers for integer types),
    /// `zeros`, `ones`, or a number.
    #[arg(long, default_value = "random")]
    fill: String,
    /// Seed of `--fill random`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Compress chunks with zstd at this level (Zarr).
    #[arg(long)]
    zstd: Option<i32>,
    /// Append a crc32c to every chunk (Zarr).
    #[arg(long)]
    crc32c: bool,
    /// Store chunks in shards of this shape (Zarr; multiples of the chunks).
    #[arg(long, value_delimiter = ',')]
    shard: Option<Vec<u64>>,
}

/// `strata info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// A Zarr v3 directory or an `.npy` file.
    path: PathBuf,
    /// One JSON document.
    #[arg(long)]
    json: bool,
    /// Also read every chunk and print the xxh3-64 of the elements in C
    /// order (stored dtype, little-endian), the same whatever the chunks and
    /// codecs: numpy's `xxh3_64(a.astype('<f4').tobytes())` gives it too.
    #[arg(long)]
    checksum: bool,
}

/// Options of every long-running array command.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Memory budget for the whole job (`512MiB`, `2GiB`).
    #[arg(long, default_value = "512MiB")]
    memory: String,
    /// Eviction policy of the chunk cache.
    #[arg(long, value_enum, default_value = "min")]
    policy: PolicyArg,
    /// Do not read chunks ahead of use.
    #[arg(long)]
    no_prefetch: bool,
    /// Element type of the result (default: f32, or f64 for f64/i64 inputs).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// The summary as one JSON document.
    #[arg(long)]
    json: bool,
}

/// `strata matmul`.
#[derive(Debug, Args)]
pub struct MatmulArgs {
    /// Left operand (M × K).
    a: PathBuf,
    /// Right operand (K × N).
    b: PathBuf,
    /// Result (M × N): a new Zarr directory, or an `.npy` file.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// `strata einsum`.
#[derive(Debug, Args)]
pub struct EinsumArgs {
    /// Two-operand spec with an explicit output (`bij,bjk->bik`).
    spec: String,
    /// First operand.
    a: PathBuf,
    /// Second operand.
    b: PathBuf,
    /// Result: a new Zarr directory, or an `.npy` file.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// `strata demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Memory budget of the demo's jobs.
    #[arg(long, default_value = "32MiB")]
    memory: String,
    /// Directory for the generated arrays and results (default: a new
    /// directory under the system's temporary directory, kept afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The summary as one JSON document.
    #[arg(long)]
    json: bool,
}

fn is_npy(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// A default chunk shape: 512 per axis for the last two axes, leading axes
/// shrunk so a chunk holds about [`DEFAULT_CHUNK_ELEMENTS`].
fn default_chunks(shape: &[u64]) -> Vec<u64> {
    let mut chunks = vec![1u64; shape.len()];
    let mut elements = 1u64;
    for axis in (0..shape.len()).rev() {
        let room = (DEFAULT_CHUNK_ELEMENTS / elements).max(1);
        let side = if axis + 2 >= shape.len() {
            DEFAULT_CHUNK_SIDE.min(room)
        } else {
            room
        };
        chunks[axis] = side.min(shape[axis]).max(1);
        elements *= chunks[axis];
    }
    chunks
}

/// Opens an input array (Zarr directory or NPY file).
pub fn open_source(path: &Path) -> Result<Box<dyn ChunkSource>, String> {
    if is_npy(path) {
        let probe = NpyArray::open(path, vec![1], NpyReadMode::Mapped);
        // The chunk shape needs the rank: read the header first.
        let shape = match probe {
            Ok(array) => array.header().shape.clone(),
            Err(strata_array::error::ArrayError::InvalidMeta { .. }) | Err(_) => {
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                strata_array::npy::parse_header(&path.display().to_string(), &bytes)
                    .map_err(|e| e.to_string())?
                    .shape
            }
        };
        let array = NpyArray::open(path, default_chunks(&shape), NpyReadMode::Mapped)
            .map_err(|e| e.to_string())?;
        Ok(Box::new(array))
    } else {
        Ok(Box::new(ZarrArray::open(path).map_err(|e| e.to_string())?))
    }
}

/// Creates an output array with `meta` (Zarr directory or NPY file).
fn create_sink(
    path: &Path,
    meta: ArrayMeta,
    codecs: &ZarrCodecs,
) -> Result<Box<dyn ChunkSink>, String> {
    if is_npy(path) {
        Ok(Box::new(
            NpyArray::create(path, meta).map_err(|e| e.to_string())?,
        ))
    } else {
        Ok(Box::new(
            ZarrArray::create(path, meta, codecs).map_err(|e| e.to_string())?,
        ))
    }
}

/// Fills a chunk's values: deterministic per chunk, so arrays are
/// reproducible from the seed whatever the order of writing.
fn fill_values(fill: &Fill, dtype: DataType, seed: u64, linear: u64, count: usize) -> Vec<f64> {
    match fill {
        Fill::Constant(value) => vec![*value; count],
        Fill::Random => {
            let mut rng =
                SmallRng::seed_from_u64(seed ^ linear.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            (0..count)
                .map(|_| match dtype {
                    DataType::U8 => f64::from(rng.gen_range(0u8..16)),
                    DataType::I32 | DataType::I64 => f64::from(rng.gen_range(-8i32..8)),
                    _ => rng.gen_range(-1.0f64..1.0),
                })
                .collect()
        }
    }
}

enum Fill {
    Random,
    Constant(f64),
}

fn parse_fill(text: &str) -> Result<Fill, String> {
    match text {
        "random" => Ok(Fill::Random),
        "zeros" => Ok(Fill::Constant(0.0)),
        "ones" => Ok(Fill::Constant(1.0)),
        number => number
            .parse::<f64>()
            .map(Fill::Constant)
            .map_err(|_| format!("--fill {number:?}: expected random, zeros, ones or a number")),
    }
}

/// Writes every chunk of a new array.
fn generate(
    path: &Path,
    meta: ArrayMeta,
    codecs: &ZarrCodecs,
    fill: &Fill,
    seed: u64,
) -> Result<u64, String> {
    let sink = create_sink(path, meta.clone(), codecs)?;
    let bar = progress_bar(meta.chunk_count(), &format!("create {}", path.display()));
    let mut bytes = Vec::new();
    for (linear, grid) in meta.grid_indices().enumerate() {
        let count = meta.chunk_element_count_at(&grid) as usize;
        let values = fill_values(fill, meta.dtype(), seed, linear as u64, count);
        bytes.resize(count * meta.dtype().size_bytes(), 0);
        encode_elements::<f64>(meta.dtype(), &values, &mut bytes);
        sink.write_chunk(&grid, &bytes).map_err(|e| e.to_string())?;
        bar.inc(1);
    }
    sink.finish().map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    Ok(meta.len_bytes())
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
fn progress_bar(total: u64, message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len} ({eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// `strata create`.
pub fn create(args: &CreateArgs) -> Result<(), String> {
    let chunks = args
        .chunks
        .clone()
        .unwrap_or_else(|| default_chunks(&args.shape));
    let meta = ArrayMeta::new(args.shape.clone(), chunks, args.dtype.dtype())
        .map_err(|e| e.to_string())?;
    let codecs = ZarrCodecs {
        compression: match args.zstd {
            Some(level) => ZarrCompression::Zstd { level },
            None => ZarrCompression::None,
        },
        crc32c: args.crc32c,
        shard_shape: args.shard.clone(),
    };
    let fill = parse_fill(&args.fill)?;
    let started = Instant::now();
    let bytes = generate(&args.path, meta, &codecs, &fill, args.seed)?;
    println!(
        "created {} ({} of {}) in {:.2} s",
        args.path.display(),
        format_bytes(bytes),
        args.dtype.dtype(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `strata info`.
pub fn info(args: &InfoArgs) -> Result<(), String> {
    let (shape, chunks, dtype, codecs, on_disk, complete, shard) = if is_npy(&args.path) {
        let source = open_source(&args.path)?;
        let meta = source.meta().clone();
        let on_disk = std::fs::metadata(&args.path)
            .map_err(|e| e.to_string())?
            .len();
        (
            meta.shape().to_vec(),
            meta.chunk_shape().to_vec(),
            meta.dtype(),
            vec!["npy (C order, little-endian)".to_string()],
            on_disk,
            Some(true),
            None,
        )
    } else {
        let info = zarr_info(&args.path).map_err(|e| e.to_string())?;
        (
            info.shape,
            info.chunk_shape,
            info.dtype,
            info.codecs,
            info.bytes_on_disk,
            info.complete,
            info.shard_shape,
        )
    };
    let raw_bytes = shape.iter().product::<u64>() * dtype.size_bytes() as u64;
    let checksum = if args.checksum {
        let source = open_source(&args.path)?;
        let digest = strata_array::digest::content_xxh3(source.as_ref())
            .map_err(|e| format!("checksumming {}: {e}", args.path.display()))?;
        Some(format!("{digest:016x}"))
    } else {
        None
    };
    if args.json {
        let value = json!({
            "path": args.path.display().to_string(),
            "shape": shape,
            "chunk_shape": chunks,
            "shard_shape": shard,
            "dtype": dtype.to_string(),
            "codecs": codecs,
            "bytes_raw": raw_bytes,
            "bytes_on_disk": on_disk,
            "complete": complete,
            "content_xxh3": checksum,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
        );
    } else {
        let dims = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" x ");
        println!("{}", args.path.display());
        println!("  shape         {}", dims(&shape));
        println!("  chunks        {}", dims(&chunks));
        if let Some(shard) = &shard {
            println!("  shards        {}", dims(shard));
        }
        println!("  dtype         {dtype}");
        println!("  codecs        {}", codecs.join(", "));
        println!(
            "  size          {} raw, {} on disk",
            format_bytes(raw_bytes),
            format_bytes(on_disk)
        );
        println!(
            "  complete      {}",
            match complete {
                Some(true) => "yes",
                Some(false) => "NO: a job writing it did not finish",
                None => "yes (written by another tool)",
            }
        );
        if let Some(checksum) = &checksum {
            println!("  content xxh3  {checksum} (elements in C order, little-endian)");
        }
    }
    Ok(())
}

/// Everything the summary of one job shows.
struct Summary {
    title: String,
    output: String,
    plan: String,
    policy: &'static str,
    wall_seconds: f64,
    /// Floating-point operations (contractions only).
    flops: Option<u64>,
    budget_bytes: u64,
    peak_reserved_bytes: u64,
    peak_rss_bytes: Option<u64>,
    read_bytes: u64,
    input_bytes: u64,
    lower_bound_bytes: u64,
    written_bytes: u64,
    cache: CacheStats,
}

impl Summary {
    fn hit_ratio(&self) -> f64 {
        let total = self.cache.hits + self.cache.misses;
        if total == 0 {
            0.0
        } else {
            self.cache.hits as f64 / total as f64
        }
    }

    fn json(&self) -> Value {
        let c = &self.cache;
        json!({
            "job": self.title,
            "output": self.output,
            "plan": self.plan,
            "policy": self.policy,
            "wall_seconds": self.wall_seconds,
            "flops": self.flops,
            "gflops_per_second": self.flops.map(|f| f as f64 / self.wall_seconds.max(f64::MIN_POSITIVE) / 1e9),
            "read_mb_per_second": self.read_bytes as f64 / self.wall_seconds.max(f64::MIN_POSITIVE) / 1e6,
            "budget_bytes": self.budget_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "read_bytes": self.read_bytes,
            "written_bytes": self.written_bytes,
            "spilled_bytes": c.spilled_bytes,
            "reloaded_bytes": c.reloaded_bytes,
            "input_bytes": self.input_bytes,
            "read_lower_bound_bytes": self.lower_bound_bytes,
            "cache_hits": c.hits,
            "cache_misses": c.misses,
            "cache_hit_ratio": self.hit_ratio(),
            "evictions": c.evictions,
            "prefetches": c.prefetches,
            "prefetch_hits": c.prefetch_hits,
            "prefetch_wasted": c.prefetch_wasted,
            "stall_seconds": c.stall_ns as f64 / 1e9,
        })
    }

    fn text(&self) -> String {
        let c = &self.cache;
        let prefetch_use = if c.prefetches == 0 {
            "off or none needed".to_string()
        } else {
            format!(
                "{} chunks read ahead, {} used before eviction ({:.1}%), {} wasted",
                c.prefetches,
                c.prefetch_hits,
                100.0 * c.prefetch_hits as f64 / c.prefetches as f64,
                c.prefetch_wasted
            )
        };
        let wall = self.wall_seconds.max(f64::MIN_POSITIVE);
        let compute = match self.flops {
            Some(flops) => format!(
                "{:.1} GFLOP at {:.1} GFLOP/s",
                flops as f64 / 1e9,
                flops as f64 / wall / 1e9
            ),
            None => format!("read at {:.0} MB/s", self.read_bytes as f64 / wall / 1e6),
        };
        let lines = [
            self.title.clone(),
            format!("  output          {}", self.output),
            format!("  plan            {}; policy {}", self.plan, self.policy),
            format!("  wall time       {:.2} s", self.wall_seconds),
            format!("  compute         {compute}"),
            format!(
                "  peak reserved   {} of the {} budget",
                format_bytes(self.peak_reserved_bytes),
                format_bytes(self.budget_bytes)
            ),
            format!(
                "  peak RSS        {}",
                self.peak_rss_bytes.map_or(
                    "not measured (cannot reset the process's peak)".to_string(),
                    format_bytes
                )
            ),
            format!(
                "  read            {} = {:.2}x the inputs, {:.2}x the I/O lower bound ({})",
                format_bytes(self.read_bytes),
                self.read_bytes as f64 / self.input_bytes.max(1) as f64,
                self.read_bytes as f64 / self.lower_bound_bytes.max(1) as f64,
                format_bytes(self.lower_bound_bytes)
            ),
            format!("  written         {}", format_bytes(self.written_bytes)),
            format!(
                "  spilled         {} (reloaded {})",
                format_bytes(c.spilled_bytes),
                format_bytes(c.reloaded_bytes)
            ),
            format!(
                "  cache           {:.1}% hits ({} hits, {} misses, {} evictions); stalled {:.2} s on I/O",
                100.0 * self.hit_ratio(),
                c.hits,
                c.misses,
                c.evictions,
                c.stall_ns as f64 / 1e9
            ),
            format!("  prefetch        {prefetch_use}"),
        ];
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

/// A progress bar for a job of `steps` and the peak-RSS reset, then `run`,
/// then the peak RSS (if it could be reset).
fn timed_job<R>(
    title: &str,
    steps: u64,
    run: impl FnOnce(&mut dyn FnMut(Progress)) -> Result<R, String>,
) -> Result<(R, Option<u64>), String> {
    let rss_reset = reset_peak_rss().is_ok();
    let bar = progress_bar(steps, title);
    let result = run(&mut |p: Progress| bar.set_position(p.steps_done))?;
    bar.finish_and_clear();
    let peak_rss_bytes = if rss_reset {
        read_process_memory().ok().map(|m| m.peak_rss_bytes)
    } else {
        None
    };
    Ok((result, peak_rss_bytes))
}

fn run_config(run: &RunArgs, budget_bytes: u64) -> RunConfig {
    RunConfig {
        budget_bytes,
        policy: run.policy.kind(),
        prefetch: !run.no_prefetch,
        gemm_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Where a contraction's result goes.
struct Destination<'d> {
    /// How the summary names it.
    name: &'d str,
    /// Makes the sink for the result's metadata.
    sink_for: &'d dyn Fn(ArrayMeta) -> Result<Box<dyn ChunkSink>, String>,
    /// Memory the sink holds outside the engine (chunks queued for the disk
    /// tier): it comes out of the budget before the engine plans with the
    /// rest.
    queued_bytes: u64,
}

/// Plans and runs one contraction into `destination`, returning its
/// summary.
fn run_contraction(
    spec: &EinsumSpec,
    a: &dyn ChunkSource,
    b: &dyn ChunkSource,
    destination: &Destination<'_>,
    run: &RunArgs,
    title: String,
) -> Result<Summary, String> {
    let (output, sink_for, sink_bytes) = (
        destination.name,
        destination.sink_for,
        destination.queued_bytes,
    );
    let total_budget_bytes = parse_size(&run.memory).map_err(|e| format!("--memory: {e}"))?;
    let budget_bytes = total_budget_bytes.checked_sub(sink_bytes).ok_or_else(|| {
        format!(
            "--memory {total_budget_bytes} bytes is less than the {sink_bytes} bytes the destination queues"
        )
    })?;
    let output_dtype = run.dtype.map(DtypeArg::dtype).unwrap_or_else(|| {
        strata_ooc::contract::compute_type_for(a.meta().dtype(), b.meta().dtype()).dtype()
    });
    let job =
        ContractionJob::new(spec, a, b, output_dtype, budget_bytes).map_err(|e| e.to_string())?;
    let sink = sink_for(job.output_meta())?;
    let config = run_config(run, budget_bytes);
    let engine = Engine::new(budget_bytes).map_err(|e| e.to_string())?;
    let steps = job.plan().output_tiles() * job.plan().steps_per_output_tile();
    let (report, peak_rss_bytes) = timed_job(&title, steps, |progress| {
        job.run(&engine, sink.as_ref(), &config, progress)
            .map_err(|e| format!("{e} (the destination {output} is left incomplete)"))
    })?;
    let compute_bytes = job.compute_type().dtype().size_bytes() as u64;
    let lower_bound_bytes = read_lower_bound_bytes(
        job.contraction(),
        a.meta().dtype().size_bytes() as u64,
        b.meta().dtype().size_bytes() as u64,
        compute_bytes,
        budget_bytes,
    );
    let plan = format!(
        "tiles {}",
        report
            .plan
            .tiles
            .iter()
            .map(|t| format!("{}={}", t.label as char, t.tile))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(Summary {
        title,
        output: output.to_string(),
        plan,
        policy: report.policy,
        wall_seconds: report.wall.as_secs_f64(),
        flops: Some(report.flops),
        budget_bytes: total_budget_bytes,
        peak_reserved_bytes: report.peak_reserved_bytes,
        peak_rss_bytes,
        read_bytes: report.cache.source_read_bytes,
        input_bytes: report.input_bytes,
        lower_bound_bytes,
        written_bytes: report.written_bytes,
        cache: report.cache,
    })
}

/// The summary of a streaming job (reduction or elementwise).
fn stream_summary(
    title: String,
    output: &str,
    plan: String,
    budget_bytes: u64,
    report: &StreamReport,
    peak_rss_bytes: Option<u64>,
) -> Summary {
    Summary {
        title,
        output: output.to_string(),
        plan,
        policy: report.policy,
        wall_seconds: report.wall.as_secs_f64(),
        flops: None,
        budget_bytes,
        peak_reserved_bytes: report.peak_reserved_bytes,
        peak_rss_bytes,
        read_bytes: report.read_bytes,
        input_bytes: report.input_bytes,
        // Streaming jobs can do no better than reading each input once.
        lower_bound_bytes: report.input_bytes,
        written_bytes: report.written_bytes,
        cache: report.cache,
    }
}

fn file_sink(path: &Path) -> impl Fn(ArrayMeta) -> Result<Box<dyn ChunkSink>, String> + '_ {
    move |meta| create_sink(path, meta, &ZarrCodecs::default())
}

fn describe(name: &Path, source: &dyn ChunkSource) -> String {
    let meta = source.meta();
    format!(
        "{} ({} {}, {})",
        name.display(),
        meta.shape()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("x"),
        meta.dtype(),
        format_bytes(meta.len_bytes())
    )
}

fn print_summary(summary: &Summary, json: bool) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary.json()).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}

/// `strata matmul`.
pub fn matmul(args: &MatmulArgs) -> Result<(), String> {
    let a = open_source(&args.a)?;
    let b = open_source(&args.b)?;
    let title = format!(
        "matmul {} @ {}",
        describe(&args.a, a.as_ref()),
        describe(&args.b, b.as_ref())
    );
    let output = args.output.display().to_string();
    let summary = run_contraction(
        &EinsumSpec::matmul(),
        a.as_ref(),
        b.as_ref(),
        &Destination {
            name: &output,
            sink_for: &file_sink(&args.output),
            queued_bytes: 0,
        },
        &args.run,
        title,
    )?;
    print_summary(&summary, args.run.json)
}

/// `strata einsum`.
pub fn einsum(args: &EinsumArgs) -> Result<(), String> {
    let spec = EinsumSpec::parse(&args.spec).map_err(|e| e.to_string())?;
    let a = open_source(&args.a)?;
    let b = open_source(&args.b)?;
    let title = format!(
        "einsum {spec} {} , {}",
        describe(&args.a, a.as_ref()),
        describe(&args.b, b.as_ref())
    );
    let output = args.output.display().to_string();
    let summary = run_contraction(
        &spec,
        a.as_ref(),
        b.as_ref(),
        &Destination {
            name: &output,
            sink_for: &file_sink(&args.output),
            queued_bytes: 0,
        },
        &args.run,
        title,
    )?;
    print_summary(&summary, args.run.json)
}

/// Reduction names accepted on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReduceArg {
    /// Compensated sum.
    Sum,
    /// Mean.
    Mean,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
}

/// `strata reduce`.
#[derive(Debug, Args)]
pub struct ReduceArgs {
    /// The reduction.
    #[arg(value_enum)]
    op: ReduceArg,
    /// The input array.
    input: PathBuf,
    /// Axes to reduce, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    axes: Option<Vec<usize>>,
    /// Keep reduced axes with length 1.
    #[arg(long)]
    keepdims: bool,
    /// Result: a new Zarr directory, or an `.npy` file.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// Elementwise operation names accepted on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MapArg {
    /// a + b.
    Add,
    /// a - b.
    Sub,
    /// a * b.
    Mul,
    /// a / b.
    Div,
    /// min(a, b).
    Min,
    /// max(a, b).
    Max,
    /// a * b + c (fused).
    Fma,
    /// a * --scale + --offset (fused).
    Scale,
}

/// `strata map`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// The operation.
    #[arg(value_enum)]
    op: MapArg,
    /// Inputs (one for scale, three for fma, two otherwise), same shape.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Factor of `scale`.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    scale: f64,
    /// Term added by `scale`.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    offset: f64,
    /// Result: a new Zarr directory, or an `.npy` file.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// Runs a reduction of `source` into `sink_for(output meta)`.
#[allow(clippy::too_many_arguments)]
fn run_reduce(
    source: &dyn ChunkSource,
    op: ReduceOp,
    axes: &[usize],
    keepdims: bool,
    output: &str,
    sink_for: &dyn Fn(ArrayMeta) -> Result<Box<dyn ChunkSink>, String>,
    run: &RunArgs,
    title: String,
) -> Result<Summary, String> {
    let budget_bytes = parse_size(&run.memory).map_err(|e| format!("--memory: {e}"))?;
    let output_dtype = run.dtype.map(DtypeArg::dtype).unwrap_or_else(|| {
        strata_ooc::contract::compute_type_for(source.meta().dtype(), source.meta().dtype()).dtype()
    });
    let job = ReduceJob::new(source, op, axes, keepdims, output_dtype, budget_bytes)
        .map_err(|e| e.to_string())?;
    let sink = sink_for(job.output_meta())?;
    let config = run_config(run, budget_bytes);
    let engine = Engine::new(budget_bytes).map_err(|e| e.to_string())?;
    let steps = job.access_sequence().len() as u64;
    let (report, peak_rss_bytes) = timed_job(&title, steps, |progress| {
        job.run(&engine, sink.as_ref(), &config, progress)
            .map_err(|e| format!("{e} (the destination {output} is left incomplete)"))
    })?;
    let plan = format!("tiles {:?} over the kept axes", job.tile_shape());
    Ok(stream_summary(
        title,
        output,
        plan,
        budget_bytes,
        &report,
        peak_rss_bytes,
    ))
}

/// `strata reduce`.
pub fn reduce(args: &ReduceArgs) -> Result<(), String> {
    let source = open_source(&args.input)?;
    let op = match args.op {
        ReduceArg::Sum => ReduceOp::Sum,
        ReduceArg::Mean => ReduceOp::Mean,
        ReduceArg::Min => ReduceOp::Min,
        ReduceArg::Max => ReduceOp::Max,
    };
    let axes = args
        .axes
        .clone()
        .unwrap_or_else(|| (0..source.meta().rank()).collect());
    let title = format!(
        "reduce {} over axes {axes:?} of {}",
        op.name(),
        describe(&args.input, source.as_ref())
    );
    let output = args.output.display().to_string();
    let summary = run_reduce(
        source.as_ref(),
        op,
        &axes,
        args.keepdims,
        &output,
        &file_sink(&args.output),
        &args.run,
        title,
    )?;
    print_summary(&summary, args.run.json)
}

/// `strata map`.
pub fn map(args: &MapArgs) -> Result<(), String> {
    let op = match args.op {
        MapArg::Add => MapOp::Add,
        MapArg::Sub => MapOp::Sub,
        MapArg::Mul => MapOp::Mul,
        MapArg::Div => MapOp::Div,
        MapArg::Min => MapOp::Min,
        MapArg::Max => MapOp::Max,
        MapArg::Fma => MapOp::Fma,
        MapArg::Scale => MapOp::Scale {
            scale: args.scale,
            offset: args.offset,
        },
    };
    let sources = args
        .inputs
        .iter()
        .map(|p| open_source(p))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: Vec<&dyn ChunkSource> = sources.iter().map(|s| s.as_ref()).collect();
    let budget_bytes = parse_size(&args.run.memory).map_err(|e| format!("--memory: {e}"))?;
    let first = inputs[0].meta().dtype();
    let output_dtype = args
        .run
        .dtype
        .map(DtypeArg::dtype)
        .unwrap_or_else(|| strata_ooc::contract::compute_type_for(first, first).dtype());
    let job = MapJob::new(op, &inputs, output_dtype, budget_bytes).map_err(|e| e.to_string())?;
    let sink = create_sink(&args.output, job.output_meta(), &ZarrCodecs::default())?;
    let config = run_config(&args.run, budget_bytes);
    let engine = Engine::new(budget_bytes).map_err(|e| e.to_string())?;
    let title = format!(
        "map {} of {}",
        op.name(),
        args.inputs
            .iter()
            .zip(&inputs)
            .map(|(p, s)| describe(p, *s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let output = args.output.display().to_string();
    let steps = job.access_sequence().len() as u64;
    let (report, peak_rss_bytes) = timed_job(&title, steps, |progress| {
        job.run(&engine, sink.as_ref(), &config, progress)
            .map_err(|e| format!("{e} (the destination {output} is left incomplete)"))
    })?;
    let plan = format!("output chunks {:?}", job.output_meta().chunk_shape());
    let summary = stream_summary(title, &output, plan, budget_bytes, &report, peak_rss_bytes);
    print_summary(&summary, args.run.json)
}

/// Line `index` of a 2-D `source` as f64: row `index` (`along_rows`) or
/// column `index`, read chunk by chunk.
fn line(source: &dyn ChunkSource, index: u64, along_rows: bool) -> Result<Vec<f64>, String> {
    let meta = source.meta();
    let (rows, cols) = (meta.shape()[0], meta.shape()[1]);
    let (chunk_rows, chunk_cols) = (meta.chunk_shape()[0], meta.chunk_shape()[1]);
    let len = if along_rows { cols } else { rows };
    let mut values = vec![0f64; len as usize];
    let mut raw = Vec::new();
    let mut decoded = Vec::new();
    let chunks_along = if along_rows {
        cols.div_ceil(chunk_cols)
    } else {
        rows.div_ceil(chunk_rows)
    };
    for step in 0..chunks_along {
        let grid = if along_rows {
            [index / chunk_rows, step]
        } else {
            [step, index / chunk_cols]
        };
        let region = meta.chunk_region(&grid);
        raw.resize(meta.chunk_len_bytes_at(&grid), 0);
        source
            .read_chunk(&grid, &mut raw)
            .map_err(|e| e.to_string())?;
        decoded.resize(meta.chunk_element_count_at(&grid) as usize, 0f64);
        strata_array::chunk::decode_elements::<f64>(meta.dtype(), &raw, &mut decoded);
        let (region_rows, region_cols) = (region.shape[0], region.shape[1]);
        if along_rows {
            let r = index - region.start[0];
            for c in 0..region_cols {
                values[(region.start[1] + c) as usize] = decoded[(r * region_cols + c) as usize];
            }
        } else {
            let c = index - region.start[1];
            for r in 0..region_rows {
                values[(region.start[0] + r) as usize] = decoded[(r * region_cols + c) as usize];
            }
        }
    }
    Ok(values)
}

/// `strata demo`: generate, multiply, chain, check, summarize.
pub fn demo(args: &DemoArgs) -> Result<(), String> {
    let budget_bytes = parse_size(&args.memory).map_err(|e| format!("--memory: {e}"))?;
    // Chunks small enough that the cache holds many (a budget of 1/32nd
    // per chunk at most), up to the default 512 x 512.
    let mut chunk_side = DEFAULT_CHUNK_SIDE;
    while chunk_side > DEMO_CHUNK_SIDE_MIN
        && chunk_side * chunk_side * 4 * DEMO_CHUNKS_PER_BUDGET > budget_bytes
    {
        chunk_side /= 2;
    }
    // Two square f32 inputs, together DEMO_INPUTS_OVER_BUDGET x the budget,
    // rounded to whole chunks.
    let input_elements = budget_bytes * DEMO_INPUTS_OVER_BUDGET / 2 / 4;
    let side = (((input_elements as f64).sqrt() as u64) / chunk_side).max(1) * chunk_side;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("strata-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = |name: &str| dir.join(name);
    for name in ["a.zarr", "b.zarr", "c.zarr", "r.zarr"] {
        if path(name).exists() {
            std::fs::remove_dir_all(path(name))
                .map_err(|e| format!("{}: {e}", path(name).display()))?;
        }
    }
    let meta = ArrayMeta::new(
        vec![side, side],
        vec![chunk_side, chunk_side],
        DataType::F32,
    )
    .map_err(|e| e.to_string())?;
    if !args.json {
        println!(
            "strata demo: two {side}x{side} f32 arrays ({} each, {} together = {:.1}x the {} budget) in {}",
            format_bytes(meta.len_bytes()),
            format_bytes(2 * meta.len_bytes()),
            2.0 * meta.len_bytes() as f64 / budget_bytes.max(1) as f64,
            format_bytes(budget_bytes),
            dir.display()
        );
    }
    let started = Instant::now();
    generate(
        &path("a.zarr"),
        meta.clone(),
        &ZarrCodecs::default(),
        &Fill::Random,
        DEMO_SEED,
    )?;
    generate(
        &path("b.zarr"),
        meta.clone(),
        &ZarrCodecs::default(),
        &Fill::Random,
        DEMO_SEED + 1,
    )?;
    let generated_seconds = started.elapsed().as_secs_f64();
    let a = open_source(&path("a.zarr"))?;
    let b = open_source(&path("b.zarr"))?;
    let (a_name, b_name) = (
        describe(&path("a.zarr"), a.as_ref()),
        describe(&path("b.zarr"), b.as_ref()),
    );
    let run = RunArgs {
        memory: args.memory.clone(),
        policy: PolicyArg::Min,
        no_prefetch: false,
        dtype: None,
        json: args.json,
    };
    // 1. C = A @ B, to c.zarr.
    let c_path = path("c.zarr");
    let matmul = run_contraction(
        &EinsumSpec::matmul(),
        a.as_ref(),
        b.as_ref(),
        &Destination {
            name: &c_path.display().to_string(),
            sink_for: &file_sink(&c_path),
            queued_bytes: 0,
        },
        &run,
        format!("matmul {a_name} @ {b_name}"),
    )?;
    let c = open_source(&c_path)?;
    let checked_matmul = check_entries(a.as_ref(), b.as_ref(), c.as_ref(), false)?;
    drop(c);

    // 2. A chain: T = einsum("ij,kj->ik", A, B) is an intermediate in the
    //    disk tier (spill records with checksums, written in the
    //    background), never a user file; r = sum of T over axis 1 reads it
    //    back, verified, and goes to r.zarr.
    let spec = EinsumSpec::parse("ij,kj->ik").map_err(|e| e.to_string())?;
    let spill_cap_bytes = meta.len_bytes() * DEMO_SPILL_CAP_OVER_INTERMEDIATE;
    // Chunks of T queued for the disk tier are heap memory: a share of the
    // budget, which the contraction plans without.
    let spill_inflight_bytes = parse_size(&args.memory).map_err(|e| format!("--memory: {e}"))?
        / DEMO_SPILL_INFLIGHT_SHARE_DIVISOR;
    let intermediate: std::cell::RefCell<Option<std::sync::Arc<SpillArray<FileDevice>>>> =
        std::cell::RefCell::new(None);
    let spill_sink = |out_meta: ArrayMeta| -> Result<Box<dyn ChunkSink>, String> {
        let array = std::sync::Arc::new(
            SpillArray::<FileDevice>::temp_file(
                "T (intermediate)",
                out_meta,
                &dir,
                spill_cap_bytes,
                spill_inflight_bytes,
            )
            .map_err(|e| e.to_string())?,
        );
        *intermediate.borrow_mut() = Some(std::sync::Arc::clone(&array));
        Ok(Box::new(SharedSink(array)))
    };
    let einsum = run_contraction(
        &spec,
        a.as_ref(),
        b.as_ref(),
        &Destination {
            name: "T, an intermediate in the disk tier",
            sink_for: &spill_sink,
            queued_bytes: spill_inflight_bytes,
        },
        &run,
        format!("einsum ij,kj->ik {a_name} , {b_name}"),
    )?;
    let t = intermediate
        .borrow_mut()
        .take()
        .ok_or("the chained einsum made no intermediate")?;
    let checked_einsum = check_entries(a.as_ref(), b.as_ref(), t.as_ref(), true)?;
    let r_path = path("r.zarr");
    let reduce = run_reduce(
        t.as_ref(),
        ReduceOp::Sum,
        &[1],
        false,
        &r_path.display().to_string(),
        &file_sink(&r_path),
        &run,
        "reduce sum over axis 1 of T (read back from the disk tier)".to_string(),
    )?;
    let spill_stats = t.stats();
    drop(t);
    let r = open_source(&r_path)?;
    let checked_reduce = check_row_sums(a.as_ref(), b.as_ref(), r.as_ref())?;

    let checked = checked_matmul + checked_einsum + checked_reduce;
    if args.json {
        let value = json!({
            "dir": dir.display().to_string(),
            "generated_seconds": generated_seconds,
            "jobs": [matmul.json(), einsum.json(), reduce.json()],
            "intermediate_spill": {
                "chunks_written": spill_stats.chunks_written,
                "submitted_bytes": spill_stats.submitted_bytes,
                "peak_in_flight_bytes": spill_stats.peak_in_flight_bytes,
                "in_flight_bytes_max": spill_inflight_bytes,
                "disk_used_bytes": spill_stats.disk_used_bytes,
            },
            "checked_entries": checked,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
        );
    } else {
        println!("generated the inputs in {generated_seconds:.2} s\n");
        let ok = "all within the f32 error bound";
        print!("{}", matmul.text());
        println!("  checked         {checked_matmul} sampled entries against direct dot products: {ok}\n");
        print!("{}", einsum.text());
        println!(
            "  intermediate    {} chunks ({}) spilled as verified records, {} on disk; \
             at most {} queued for the disk (limit {}, counted in the budget)",
            spill_stats.chunks_written,
            format_bytes(spill_stats.submitted_bytes),
            format_bytes(spill_stats.disk_used_bytes),
            format_bytes(spill_stats.peak_in_flight_bytes),
            format_bytes(spill_inflight_bytes),
        );
        println!("  checked         {checked_einsum} sampled entries of T against direct dot products: {ok}\n");
        print!("{}", reduce.text());
        println!("  checked         {checked_reduce} sampled sums against A's rows times B's column sums: {ok}\n");
        println!(
            "files: {} (a.zarr, b.zarr: inputs; c.zarr = a @ b; r.zarr = row sums of a @ b^T, \
             computed through an intermediate spilled to the disk tier); remove the directory when done",
            dir.display()
        );
    }
    Ok(())
}

/// A sink shared with the caller (who reads the intermediate afterwards).
struct SharedSink(std::sync::Arc<SpillArray<FileDevice>>);

impl ChunkSink for SharedSink {
    fn meta(&self) -> &ArrayMeta {
        ChunkSink::meta(self.0.as_ref())
    }
    fn name(&self) -> &str {
        ChunkSink::name(self.0.as_ref())
    }
    fn write_chunk(&self, grid_index: &[u64], data: &[u8]) -> Result<(), ArrayError> {
        self.0.write_chunk(grid_index, data)
    }
    fn finish(&self) -> Result<(), ArrayError> {
        self.0.finish()
    }
}

/// Checks sampled entries of `r`, the row sums of A @ B^T, against
/// `A[i, :] . colsum(B)`, within the bound of the chained computation.
fn check_row_sums(
    a: &dyn ChunkSource,
    b: &dyn ChunkSource,
    r: &dyn ChunkSource,
) -> Result<usize, String> {
    let n = b.meta().shape()[0];
    let depth = a.meta().shape()[1];
    // Column sums of B, and of |B|, in f64.
    let mut column_sums = vec![0f64; depth as usize];
    let mut column_magnitudes = vec![0f64; depth as usize];
    for k in 0..n {
        for (j, value) in line(b, k, true)?.into_iter().enumerate() {
            column_sums[j] += value;
            column_magnitudes[j] += value.abs();
        }
    }
    let mut rng = SmallRng::seed_from_u64(DEMO_SEED + 2);
    let u = f64::from(f32::EPSILON) / 2.0;
    let rows = r.meta().shape()[0];
    let r_all = line_1d(r)?;
    for _ in 0..DEMO_CHECKED_ENTRIES {
        let i = rng.gen_range(0..rows);
        let row = line(a, i, true)?;
        let want: f64 = row.iter().zip(&column_sums).map(|(x, s)| x * s).sum();
        let magnitude: f64 = row
            .iter()
            .zip(&column_magnitudes)
            .map(|(x, s)| x.abs() * s)
            .sum();
        let got = r_all[i as usize];
        // Each T entry: gamma_depth on its products and one rounding to f32;
        // the compensated sum over n of them: 2u; the result's rounding.
        let gamma = depth as f64 * u / (1.0 - depth as f64 * u);
        let bound = (gamma + 3.0 * u) * magnitude + u * want.abs();
        if (got - want).abs() > bound {
            return Err(format!(
                "check failed: row sum {i} of {} is {got}, directly computed {want} (bound {bound:e})",
                r.name()
            ));
        }
    }
    Ok(DEMO_CHECKED_ENTRIES)
}

/// A 1-D array as f64.
fn line_1d(source: &dyn ChunkSource) -> Result<Vec<f64>, String> {
    let meta = source.meta();
    let mut values = Vec::with_capacity(meta.shape()[0] as usize);
    for grid in meta.grid_indices() {
        let mut raw = vec![0u8; meta.chunk_len_bytes_at(&grid)];
        source
            .read_chunk(&grid, &mut raw)
            .map_err(|e| e.to_string())?;
        let mut decoded = vec![0f64; meta.chunk_element_count_at(&grid) as usize];
        strata_array::chunk::decode_elements::<f64>(meta.dtype(), &raw, &mut decoded);
        values.extend(decoded);
    }
    Ok(values)
}

/// Checks sampled entries of `out` against dot products computed directly
/// from `a` and `b` (rows of A with columns of B, or rows of B when
/// `b_transposed`), within the f32 summation bound. Returns how many.
fn check_entries(
    a: &dyn ChunkSource,
    b: &dyn ChunkSource,
    out: &dyn ChunkSource,
    b_transposed: bool,
) -> Result<usize, String> {
    let rows = out.meta().shape()[0];
    let cols = out.meta().shape()[1];
    let depth = a.meta().shape()[1];
    let mut rng = SmallRng::seed_from_u64(DEMO_SEED);
    let u = f64::from(f32::EPSILON) / 2.0;
    for _ in 0..DEMO_CHECKED_ENTRIES {
        let (i, j) = (rng.gen_range(0..rows), rng.gen_range(0..cols));
        let row = line(a, i, true)?;
        // Column j of B, or row j of B when the product takes B transposed.
        let other = line(b, j, b_transposed)?;
        if row.len() as u64 != depth || other.len() as u64 != depth {
            return Err(format!(
                "check: lines of {} and {} elements for a depth of {depth}",
                row.len(),
                other.len()
            ));
        }
        let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
        for (x, y) in row.iter().zip(&other) {
            sum += x * y;
            magnitude += (x * y).abs();
        }
        let got = line(out, i, true)?[j as usize];
        // gamma_K on the products (inputs are exact in f32) plus one
        // rounding of the result to f32.
        let k = depth as f64;
        let bound = k * u / (1.0 - k * u) * magnitude + u * sum.abs() * 2.0;
        if (got - sum).abs() > bound {
            return Err(format!(
                "check failed: entry ({i}, {j}) of {} is {got}, the direct dot product is {sum} (bound {bound:e})",
                out.name()
            ));
        }
    }
    Ok(DEMO_CHECKED_ENTRIES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_parse_with_and_without_the_dash() {
        for (text, want) in [
            ("min", PolicyKind::Min),
            ("lru", PolicyKind::Lru),
            ("sieve", PolicyKind::Sieve),
            ("s3-fifo", PolicyKind::S3Fifo),
            ("s3fifo", PolicyKind::S3Fifo),
        ] {
            let parsed = PolicyArg::from_str(text, false).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.kind(), want, "{text}");
        }
        assert!(PolicyArg::from_str("fifo", false).is_err());
    }
}
