//! The contraction executor: runs a [`TilePlan`] over two chunked inputs,
//! under the memory budget, writing the output tile by tile.
//!
//! Every step pins the source chunks of its A tile one at a time, packs them
//! into the packed A tile (converting to the compute type happened when the
//! chunk was loaded), does the same for B, and multiplies the packed tiles
//! into the output tile's accumulator with the GEMM kernel, one batch index
//! at a time. When an output tile's last step is done the accumulator is
//! reordered to the output's axes and written as whole output chunks, each
//! converted to the stored type (output chunks are as long as the inputs'
//! chunks along each label, or the tile where that is shorter, so a
//! chained job can read the result with the memory its inputs needed).
//!
//! A prefetch thread walks the same access sequence ahead of the compute
//! thread and loads chunks into the [`BufferManager`] within a share of its
//! capacity; when it cannot make room without evicting pinned chunks it
//! waits (back-pressure).
//!
//! The output is complete only when [`ChunkSink::finish`] returns, which the
//! executor calls after the last tile; a failed run never calls it, so the
//! destination stays marked incomplete.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_array::chunk::{
    decode_elements, encode_elements, ChunkSink, ChunkSource, ComputeElement,
};
use strata_array::dtype::{ComputeType, DataType};
use strata_array::meta::ArrayMeta;
use strata_pool::budget::{GreedyPool, MemoryConsumer, MemoryPool, TrackConsumersPool};
use strata_pool::{HybridPool, PoolBox, PoolConfig};

use crate::bufmgr::{
    pool_request_bytes, BufferManager, CacheStats, ChunkLoader, OocError, CHUNK_ALIGN_BYTES,
};
use crate::einsum::{Contraction, EinsumSpec, LabelRole};
use crate::pack::{pack_chunk, permute, LabeledBlock};
use crate::plan::{plan_contraction, LabelTile, OperandChunks, PlanRequest, Step, TilePlan};
use crate::policy::{ChunkKey, EvictionPolicy, LruPolicy, MinPolicy, S3FifoPolicy, SievePolicy};

/// Bits of a [`ChunkKey`] below the operand id: the chunk's linear index.
const OPERAND_SHIFT_BITS: u32 = 56;
/// Consumers named in budget errors and reports.
const TILES_CONSUMER: &str = "ooc-tiles";
/// The chunk cache's consumer.
const CACHE_CONSUMER: &str = "ooc-chunk-cache";
/// Top consumers a budget error names.
const TOP_CONSUMERS: usize = 4;
/// How long the prefetcher sleeps when it is ahead or blocked.
const PREFETCH_IDLE: Duration = Duration::from_micros(200);
/// Share of the cache the prefetcher may fill ahead of use, in percent.
pub const PREFETCH_SHARE_PERCENT: u64 = 50;

/// Which eviction policy the chunk cache uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Plan-aware MIN (Belady) over the run's schedule, SIEVE outside it.
    Min,
    /// Least recently used.
    Lru,
    /// SIEVE.
    Sieve,
    /// S3-FIFO.
    S3Fifo,
}

impl PolicyKind {
    /// Every kind, for reports and benchmarks.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Min,
        PolicyKind::Lru,
        PolicyKind::Sieve,
        PolicyKind::S3Fifo,
    ];

    /// Builds the policy; MIN gets `schedule`.
    pub fn build(self, schedule: &[ChunkKey]) -> Box<dyn EvictionPolicy> {
        match self {
            PolicyKind::Min => {
                let mut min = MinPolicy::new(Box::new(SievePolicy::new()));
                min.set_schedule(schedule);
                Box::new(min)
            }
            PolicyKind::Lru => Box::new(LruPolicy::new()),
            PolicyKind::Sieve => Box::new(SievePolicy::new()),
            PolicyKind::S3Fifo => Box::new(S3FifoPolicy::new()),
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Min => "min",
            PolicyKind::Lru => "lru",
            PolicyKind::Sieve => "sieve",
            PolicyKind::S3Fifo => "s3-fifo",
        }
    }
}

/// How a run behaves.
#[derive(Clone, Copy, Debug)]
pub struct RunConfig {
    /// The whole job's memory budget.
    pub budget_bytes: u64,
    /// The chunk cache's policy.
    pub policy: PolicyKind,
    /// Whether a thread loads chunks ahead of use.
    pub prefetch: bool,
    /// Threads for the GEMM kernel (1 = the calling thread only).
    pub gemm_threads: usize,
}

impl RunConfig {
    /// MIN, prefetch on, GEMM on every core.
    pub fn with_budget(budget_bytes: u64) -> Self {
        RunConfig {
            budget_bytes,
            policy: PolicyKind::Min,
            prefetch: true,
            gemm_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Where a run stands, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Steps done.
    pub steps_done: u64,
    /// Steps in the schedule.
    pub steps_total: u64,
    /// Output tiles written.
    pub tiles_written: u64,
}

/// What a finished run measured.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The plan it ran.
    pub plan: TilePlan,
    /// Wall time of the run.
    pub wall: Duration,
    /// Floating-point operations of the contraction.
    pub flops: u64,
    /// The chunk cache's counters.
    pub cache: CacheStats,
    /// The policy's name.
    pub policy: &'static str,
    /// Highest bytes reserved from the budget at once (every consumer).
    pub peak_reserved_bytes: u64,
    /// Bytes written to the output (stored type).
    pub written_bytes: u64,
    /// Bytes of the two inputs (stored types): the least any run reads.
    pub input_bytes: u64,
    /// Chunk accesses of the schedule.
    pub accesses: u64,
}

impl RunReport {
    /// GFLOP/s over the wall time.
    pub fn gflops(&self) -> f64 {
        self.flops as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE) / 1e9
    }

    /// Hits over accesses of the chunk cache.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.cache.hits + self.cache.misses;
        if total == 0 {
            0.0
        } else {
            self.cache.hits as f64 / total as f64
        }
    }
}

/// A compute type the GEMM kernel runs in.
pub trait GemmElement: ComputeElement {
    /// `acc[m×n] += a[m×k] · b[k×n]`, all row-major and contiguous.
    fn gemm_add(
        acc: &mut [Self],
        a: &[Self],
        b: &[Self],
        m: usize,
        k: usize,
        n: usize,
        threads: usize,
    );
}

fn parallelism(threads: usize) -> faer::Par {
    match std::num::NonZeroUsize::new(threads) {
        Some(n) if threads > 1 => faer::Par::Rayon(n),
        _ => faer::Par::Seq,
    }
}

macro_rules! gemm_element {
    ($t:ty) => {
        impl GemmElement for $t {
            fn gemm_add(
                acc: &mut [$t],
                a: &[$t],
                b: &[$t],
                m: usize,
                k: usize,
                n: usize,
                threads: usize,
            ) {
                let lhs = faer::MatRef::from_row_major_slice(a, m, k);
                let rhs = faer::MatRef::from_row_major_slice(b, k, n);
                let dst = faer::MatMut::from_row_major_slice_mut(acc, m, n);
                faer::linalg::matmul::matmul(
                    dst,
                    faer::Accum::Add,
                    lhs,
                    rhs,
                    1.0,
                    parallelism(threads),
                );
            }
        }
    };
}
gemm_element!(f32);
gemm_element!(f64);

/// The pool and budget a run takes its memory from.
pub struct Engine {
    pool: HybridPool,
    budget: Arc<TrackConsumersPool<GreedyPool>>,
}

impl Engine {
    /// An engine with a fresh CPU pool and a budget of `budget_bytes`.
    pub fn new(budget_bytes: u64) -> Result<Engine, OocError> {
        let pool = HybridPool::new(PoolConfig::default()).map_err(|source| OocError::Pool {
            key: ChunkKey(0),
            source,
        })?;
        Ok(Engine {
            pool,
            budget: Arc::new(TrackConsumersPool::new(
                GreedyPool::new(budget_bytes),
                TOP_CONSUMERS,
            )),
        })
    }

    /// The budget pool (reserved, limit, peak, top consumers).
    pub fn budget(&self) -> &Arc<TrackConsumersPool<GreedyPool>> {
        &self.budget
    }

    /// The memory pool.
    pub fn pool(&self) -> &HybridPool {
        &self.pool
    }
}

/// A contraction of two arrays, planned.
pub struct ContractionJob<'a> {
    contraction: Contraction,
    a: &'a dyn ChunkSource,
    b: &'a dyn ChunkSource,
    compute: ComputeType,
    output_dtype: DataType,
    plan: TilePlan,
}

/// The compute type for two stored types: the wider of the two types'
/// own [`DataType::compute_type`], so f64, i64 and i32 (whose values f32
/// holds exactly only up to 2^24) compute in f64, everything else in f32.
pub fn compute_type_for(a: DataType, b: DataType) -> ComputeType {
    match (a.compute_type(), b.compute_type()) {
        (ComputeType::F32, ComputeType::F32) => ComputeType::F32,
        _ => ComputeType::F64,
    }
}

impl<'a> ContractionJob<'a> {
    /// Checks `spec` against the inputs and plans it for `budget_bytes`.
    /// The output is stored as `output_dtype`.
    pub fn new(
        spec: &EinsumSpec,
        a: &'a dyn ChunkSource,
        b: &'a dyn ChunkSource,
        output_dtype: DataType,
        budget_bytes: u64,
    ) -> Result<Self, OocError> {
        let contraction =
            spec.bind(a.meta().shape(), b.meta().shape())
                .map_err(|e| OocError::Plan {
                    detail: format!("{e} (A is {}, B is {})", a.name(), b.name()),
                })?;
        let compute = compute_type_for(a.meta().dtype(), b.meta().dtype());
        let compute_bytes = compute.dtype().size_bytes() as u64;
        let request = PlanRequest {
            contraction: &contraction,
            a: OperandChunks {
                chunk_shape: a.meta().chunk_shape().to_vec(),
                element_bytes: a.meta().dtype().size_bytes() as u64,
            },
            b: OperandChunks {
                chunk_shape: b.meta().chunk_shape().to_vec(),
                element_bytes: b.meta().dtype().size_bytes() as u64,
            },
            compute_element_bytes: compute_bytes,
            output_element_bytes: output_dtype.size_bytes() as u64,
            output_is_compute_type: output_dtype == compute.dtype(),
            budget_bytes,
        };
        let plan = plan_contraction(&request).map_err(|e| OocError::Plan {
            detail: e.to_string(),
        })?;
        Ok(ContractionJob {
            contraction,
            a,
            b,
            compute,
            output_dtype,
            plan,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &TilePlan {
        &self.plan
    }

    /// The compute type.
    pub fn compute_type(&self) -> ComputeType {
        self.compute
    }

    /// The bound contraction.
    pub fn contraction(&self) -> &Contraction {
        &self.contraction
    }

    /// The output's geometry: its shape, chunks equal to the output tiles,
    /// and the output dtype. Create the destination with it.
    pub fn output_meta(&self) -> ArrayMeta {
        let spec = &self.contraction.spec;
        let chunk_shape = spec
            .output
            .iter()
            .map(|&l| {
                self.plan
                    .tile(l)
                    .expect("output labels have tiles")
                    .output_chunk()
            })
            .collect();
        ArrayMeta::new(
            self.contraction.output_shape(),
            chunk_shape,
            self.output_dtype,
        )
        .expect("an output of a bound contraction is a valid array")
    }

    /// The chunk keys in the order a run pins them.
    pub fn access_sequence(&self) -> Vec<ChunkKey> {
        let mut keys = Vec::new();
        for step in self.plan.steps() {
            for operand in [0u8, 1] {
                self.for_each_chunk(&step, operand, |key, _| keys.push(key));
            }
        }
        keys
    }

    fn source(&self, operand: u8) -> &'a dyn ChunkSource {
        if operand == 0 {
            self.a
        } else {
            self.b
        }
    }

    fn labels(&self, operand: u8) -> &[u8] {
        if operand == 0 {
            &self.contraction.spec.a
        } else {
            &self.contraction.spec.b
        }
    }

    /// Calls `f` with the key and grid index of every chunk of `operand`
    /// that meets the step's tile, in C order of the grid.
    fn for_each_chunk(&self, step: &Step, operand: u8, mut f: impl FnMut(ChunkKey, &[u64])) {
        let source = self.source(operand);
        let meta = source.meta();
        let labels = self.labels(operand);
        let ranges: Vec<std::ops::Range<u64>> = labels
            .iter()
            .enumerate()
            .map(|(axis, &label)| {
                let position = self
                    .plan
                    .tiles
                    .iter()
                    .position(|t| t.label == label)
                    .expect("bound");
                let range = self.plan.tiles[position].range(step.tile_index[position]);
                let chunk = meta.chunk_shape()[axis];
                range.start / chunk..range.end.div_ceil(chunk)
            })
            .collect();
        let mut grid: Vec<u64> = ranges.iter().map(|r| r.start).collect();
        'outer: loop {
            // A label on two axes (a diagonal) only needs chunks whose
            // ranges along those axes meet.
            let diagonal_ok = labels.iter().enumerate().all(|(x, &lx)| {
                labels.iter().enumerate().skip(x + 1).all(|(y, &ly)| {
                    lx != ly || {
                        let (cx, cy) = (meta.chunk_shape()[x], meta.chunk_shape()[y]);
                        let (sx, sy) = (grid[x] * cx, grid[y] * cy);
                        sx < sy + cy && sy < sx + cx
                    }
                })
            });
            if diagonal_ok {
                let linear = meta.grid_index_to_linear(&grid);
                f(chunk_key(operand, linear), &grid);
            }
            for axis in (0..grid.len()).rev() {
                grid[axis] += 1;
                if grid[axis] < ranges[axis].end {
                    continue 'outer;
                }
                grid[axis] = ranges[axis].start;
            }
            break;
        }
    }

    /// Runs the plan, writing every output tile to `out` (created with
    /// [`ContractionJob::output_meta`]) and finishing it.
    pub fn run(
        &self,
        engine: &Engine,
        out: &dyn ChunkSink,
        config: &RunConfig,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunReport, OocError> {
        match self.compute {
            ComputeType::F32 => self.run_typed::<f32>(engine, out, config, progress),
            ComputeType::F64 => self.run_typed::<f64>(engine, out, config, progress),
        }
    }

    fn run_typed<T: GemmElement>(
        &self,
        engine: &Engine,
        out: &dyn ChunkSink,
        config: &RunConfig,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunReport, OocError> {
        let started = Instant::now();
        let expected = self.output_meta();
        if out.meta() != &expected {
            return Err(OocError::Plan {
                detail: format!(
                    "destination {} is {:?}, the plan writes {:?}",
                    out.name(),
                    out.meta(),
                    expected
                ),
            });
        }
        if config.budget_bytes != self.plan.memory.total_bytes() {
            // The plan was made for another budget; the caller must replan.
            return Err(OocError::Plan {
                detail: format!(
                    "the plan is for a budget of {} bytes, the run has {}",
                    self.plan.memory.total_bytes(),
                    config.budget_bytes
                ),
            });
        }
        let budget: Arc<dyn MemoryPool> = engine.budget.clone();
        let tiles_reservation = MemoryConsumer::new(TILES_CONSUMER).register(&budget);
        let cache_reservation = MemoryConsumer::new(CACHE_CONSUMER)
            .with_can_spill(true)
            .register(&budget);
        let pool = &engine.pool;
        let memory = self.plan.memory;
        let elem = std::mem::size_of::<T>() as u64;
        let alloc = |bytes: u64| -> Result<PoolBox<'_>, OocError> {
            pool.alloc_charged(
                pool_request_bytes(bytes.max(elem)),
                CHUNK_ALIGN_BYTES,
                &tiles_reservation,
            )
            .map_err(|source| OocError::Pool {
                key: ChunkKey(u64::MAX),
                source,
            })
        };
        let mut accumulator = alloc(memory.accumulator_bytes)?;
        let mut packed_a = alloc(memory.packed_a_bytes)?;
        let mut packed_b = alloc(memory.packed_b_bytes)?;
        let mut staging = alloc(memory.staging_bytes)?;
        let loader = SourceLoader::<T> {
            job: self,
            pool,
            reservation: &tiles_reservation,
            marker: std::marker::PhantomData,
        };
        let accesses = self.access_sequence();
        // The cache's capacity is what the plan left, less what the pool's
        // rounding of the tile buffers took beyond the plan.
        let tiles_charged = tiles_reservation.size() + memory.conversion_bytes;
        let cache_capacity = memory
            .total_bytes()
            .saturating_sub(tiles_charged.max(memory.tile_bytes()));
        let manager = BufferManager::new(
            pool,
            &cache_reservation,
            &loader,
            None,
            config.policy.build(&accesses),
            cache_capacity,
        );
        let position = AtomicUsize::new(0);
        let done = AtomicBool::new(false);
        let steps_total = self.plan.output_tiles() * self.plan.steps_per_output_tile();
        let mut tiles_written = 0u64;
        let mut written_bytes = 0u64;
        let result = std::thread::scope(|scope| {
            if config.prefetch {
                let prefetch_bytes = cache_capacity / 100 * PREFETCH_SHARE_PERCENT;
                let (manager, accesses, position, done) = (&manager, &accesses, &position, &done);
                let loader: &dyn ChunkLoader = &loader;
                scope.spawn(move || {
                    prefetch_loop(manager, accesses, position, done, prefetch_bytes, loader)
                });
            }
            let outcome = (|| -> Result<(), OocError> {
                let mut cursor = 0usize;
                for (step_number, step) in self.plan.steps().enumerate() {
                    let acc: &mut [T] = bytemuck::cast_slice_mut(accumulator.as_bytes_mut());
                    let acc_len = self.tile_elements(&step, &self.out_tile_labels());
                    if step.first {
                        acc[..acc_len].fill(T::default());
                    }
                    for (operand, packed) in [(0u8, &mut packed_a), (1u8, &mut packed_b)] {
                        let tile_labels = self.packed_labels(operand);
                        let tile = LabeledBlock {
                            labels: &tile_labels,
                            ranges: self.tile_ranges(&step, &tile_labels),
                        };
                        let packed_len = tile.shape().iter().product::<u64>() as usize;
                        let packed: &mut [T] = bytemuck::cast_slice_mut(packed.as_bytes_mut());
                        let packed = &mut packed[..packed_len];
                        let mut chunks = Vec::new();
                        self.for_each_chunk(&step, operand, |key, grid| {
                            chunks.push((key, grid.to_vec()))
                        });
                        for (key, grid) in chunks {
                            debug_assert_eq!(
                                accesses[cursor], key,
                                "schedule out of step at access {cursor}"
                            );
                            cursor += 1;
                            position.store(cursor, Ordering::Release);
                            let pinned = manager.pin(key)?;
                            let region = self.source(operand).meta().chunk_region(&grid);
                            let chunk_block = LabeledBlock {
                                labels: self.labels(operand),
                                ranges: region
                                    .start
                                    .iter()
                                    .zip(&region.shape)
                                    .map(|(&s, &l)| s..s + l)
                                    .collect(),
                            };
                            let data: &[T] = bytemuck::cast_slice(pinned.bytes());
                            pack_chunk(data, &chunk_block, packed, &tile);
                        }
                    }
                    self.multiply::<T>(&step, acc, &packed_a, &packed_b, config.gemm_threads);
                    if step.last {
                        written_bytes +=
                            self.write_tile::<T>(&step, &mut accumulator, &mut staging, out)?;
                        tiles_written += 1;
                    }
                    progress(Progress {
                        steps_done: step_number as u64 + 1,
                        steps_total,
                        tiles_written,
                    });
                }
                Ok(())
            })();
            done.store(true, Ordering::Release);
            outcome
        });
        result?;
        manager.check_invariants();
        out.finish().map_err(|e| OocError::Sink {
            detail: e.to_string(),
        })?;
        Ok(RunReport {
            plan: self.plan.clone(),
            wall: started.elapsed(),
            flops: self.contraction.flops(),
            cache: manager.stats(),
            policy: manager.policy_name(),
            peak_reserved_bytes: engine.budget.peak_bytes(),
            written_bytes,
            input_bytes: self.plan.input_bytes,
            accesses: accesses.len() as u64,
        })
    }

    /// Output tile labels in accumulator order: batch, free A, free B.
    fn out_tile_labels(&self) -> Vec<u8> {
        self.role_labels(&[LabelRole::Batch, LabelRole::FreeA, LabelRole::FreeB])
    }

    fn role_labels(&self, roles: &[LabelRole]) -> Vec<u8> {
        roles
            .iter()
            .flat_map(|&role| {
                self.plan
                    .tiles
                    .iter()
                    .filter(move |t| t.role == role)
                    .map(|t| t.label)
            })
            .collect()
    }

    /// The packed layout of an operand: batch, then free A and contracted
    /// (A), or contracted and free B (B).
    fn packed_labels(&self, operand: u8) -> Vec<u8> {
        if operand == 0 {
            self.role_labels(&[LabelRole::Batch, LabelRole::FreeA, LabelRole::Contracted])
        } else {
            self.role_labels(&[LabelRole::Batch, LabelRole::Contracted, LabelRole::FreeB])
        }
    }

    fn tile_ranges(&self, step: &Step, labels: &[u8]) -> Vec<std::ops::Range<u64>> {
        labels
            .iter()
            .map(|&label| {
                let position = self
                    .plan
                    .tiles
                    .iter()
                    .position(|t| t.label == label)
                    .expect("bound");
                self.plan.tiles[position].range(step.tile_index[position])
            })
            .collect()
    }

    fn tile_elements(&self, step: &Step, labels: &[u8]) -> usize {
        self.tile_ranges(step, labels)
            .iter()
            .map(|r| r.end - r.start)
            .product::<u64>() as usize
    }

    fn multiply<T: GemmElement>(
        &self,
        step: &Step,
        acc: &mut [T],
        packed_a: &PoolBox<'_>,
        packed_b: &PoolBox<'_>,
        threads: usize,
    ) {
        let extent = |role| self.tile_elements(step, &self.role_labels(&[role]));
        let (batch, m, k, n) = (
            extent(LabelRole::Batch),
            extent(LabelRole::FreeA),
            extent(LabelRole::Contracted),
            extent(LabelRole::FreeB),
        );
        let a: &[T] = bytemuck::cast_slice(packed_a.as_bytes().expect("packed A written"));
        let b: &[T] = bytemuck::cast_slice(packed_b.as_bytes().expect("packed B written"));
        for index in 0..batch {
            T::gemm_add(
                &mut acc[index * m * n..(index + 1) * m * n],
                &a[index * m * k..(index + 1) * m * k],
                &b[index * k * n..(index + 1) * k * n],
                m,
                k,
                n,
                threads,
            );
        }
    }

    /// Reorders the finished accumulator to the output's axes, then writes
    /// it as output chunks (each converted to the stored type). Returns the
    /// bytes written.
    fn write_tile<T: GemmElement>(
        &self,
        step: &Step,
        accumulator: &mut PoolBox<'_>,
        staging: &mut PoolBox<'_>,
        out: &dyn ChunkSink,
    ) -> Result<u64, OocError> {
        let spec = &self.contraction.spec;
        let acc_labels = self.out_tile_labels();
        let elements = self.tile_elements(step, &acc_labels);
        let extent_of = |label: u8| {
            let r = &self.tile_ranges(step, &[label])[0];
            r.end - r.start
        };
        let compute_bytes = elements * std::mem::size_of::<T>();
        let staging = staging.as_bytes_mut();
        let reorder = acc_labels != spec.output;
        let (ordered_bytes, rest) = staging.split_at_mut(if reorder { compute_bytes } else { 0 });
        let convert = self.output_dtype != T::COMPUTE_TYPE.dtype();
        let acc: &[T] = bytemuck::cast_slice(&accumulator.as_bytes_mut()[..compute_bytes]);
        let ordered: &[T] = if reorder {
            let ordered: &mut [T] = bytemuck::cast_slice_mut(ordered_bytes);
            permute(acc, &acc_labels, ordered, &spec.output, extent_of);
            ordered
        } else {
            acc
        };
        let tile_block = LabeledBlock {
            labels: &spec.output,
            ranges: self.tile_ranges(step, &spec.output),
        };
        let tiles: Vec<LabelTile> = spec
            .output
            .iter()
            .map(|&l| self.plan.tile(l).expect("bound"))
            .collect();
        // Chunk grid ranges of the tile along each output axis.
        let grid_ranges: Vec<std::ops::Range<u64>> = tile_block
            .ranges
            .iter()
            .zip(&tiles)
            .map(|(r, t)| r.start / t.output_chunk()..r.end.div_ceil(t.output_chunk()))
            .collect();
        let mut grid: Vec<u64> = grid_ranges.iter().map(|r| r.start).collect();
        let mut written_bytes = 0u64;
        loop {
            let chunk_block = LabeledBlock {
                labels: &spec.output,
                ranges: grid
                    .iter()
                    .zip(&tiles)
                    .map(|(&g, t)| g * t.output_chunk()..((g + 1) * t.output_chunk()).min(t.len))
                    .collect(),
            };
            let chunk_elements = chunk_block.shape().iter().product::<u64>() as usize;
            let stored = chunk_elements * self.output_dtype.size_bytes();
            let chunk_compute_bytes = chunk_elements * std::mem::size_of::<T>();
            let encoded: &[u8] = if convert {
                let (chunk_bytes, encoded_bytes) = rest.split_at_mut(chunk_compute_bytes);
                let chunk: &mut [T] = bytemuck::cast_slice_mut(chunk_bytes);
                pack_chunk(ordered, &tile_block, chunk, &chunk_block);
                let encoded = &mut encoded_bytes[..stored];
                encode_elements(self.output_dtype, chunk, encoded);
                encoded
            } else {
                // Stored as computed: copy the chunk straight into its bytes.
                let chunk: &mut [T] = bytemuck::cast_slice_mut(&mut rest[..stored]);
                pack_chunk(ordered, &tile_block, chunk, &chunk_block);
                &rest[..stored]
            };
            out.write_chunk(&grid, encoded)
                .map_err(|e| OocError::Sink {
                    detail: e.to_string(),
                })?;
            written_bytes += stored as u64;
            // Next chunk of the tile, C order.
            let mut axis = grid.len();
            loop {
                if axis == 0 {
                    return Ok(written_bytes);
                }
                axis -= 1;
                grid[axis] += 1;
                if grid[axis] < grid_ranges[axis].end {
                    break;
                }
                grid[axis] = grid_ranges[axis].start;
            }
        }
    }
}

fn chunk_key(operand: u8, linear: u64) -> ChunkKey {
    debug_assert!(linear < 1 << OPERAND_SHIFT_BITS, "chunk index {linear}");
    ChunkKey(u64::from(operand) << OPERAND_SHIFT_BITS | linear)
}

fn split_key(key: ChunkKey) -> (u8, u64) {
    (
        (key.0 >> OPERAND_SHIFT_BITS) as u8,
        key.0 & ((1 << OPERAND_SHIFT_BITS) - 1),
    )
}

/// Loads source chunks converted to the compute type `T`.
struct SourceLoader<'j, 'a, T> {
    job: &'j ContractionJob<'a>,
    pool: &'j HybridPool,
    /// Conversion scratch is charged here (the plan's staging share).
    reservation: &'j strata_pool::budget::Reservation,
    marker: std::marker::PhantomData<fn() -> T>,
}

impl<T: GemmElement> ChunkLoader for SourceLoader<'_, '_, T> {
    fn chunk_bytes(&self, key: ChunkKey) -> Result<u64, OocError> {
        let (operand, linear) = split_key(key);
        let meta = self.job.source(operand).meta();
        let grid = meta.linear_to_grid_index(linear);
        Ok(meta.chunk_element_count_at(&grid) * std::mem::size_of::<T>() as u64)
    }

    fn load(&self, key: ChunkKey, out: &mut [u8]) -> Result<(), OocError> {
        let (operand, linear) = split_key(key);
        let source = self.job.source(operand);
        let meta = source.meta();
        let grid = meta.linear_to_grid_index(linear);
        let source_error = |e: strata_array::error::ArrayError| OocError::Source {
            key,
            detail: e.to_string(),
        };
        if meta.dtype() == T::COMPUTE_TYPE.dtype() {
            return source.read_chunk(&grid, out).map_err(source_error);
        }
        let raw_len = meta.chunk_len_bytes_at(&grid) as u64;
        let mut raw = self
            .pool
            .alloc_charged(
                pool_request_bytes(raw_len),
                CHUNK_ALIGN_BYTES,
                self.reservation,
            )
            .map_err(|source| OocError::Pool { key, source })?;
        let raw = &mut raw.as_bytes_mut()[..raw_len as usize];
        source.read_chunk(&grid, raw).map_err(source_error)?;
        decode_elements::<T>(meta.dtype(), raw, bytemuck::cast_slice_mut(out));
        Ok(())
    }
}

/// Loads chunks ahead of the compute thread's position, keeping at most
/// `prefetch_bytes` of not-yet-used chunks ahead.
fn prefetch_loop(
    manager: &BufferManager<'_>,
    accesses: &[ChunkKey],
    position: &AtomicUsize,
    done: &AtomicBool,
    prefetch_bytes: u64,
    loader: &dyn ChunkLoader,
) {
    while !done.load(Ordering::Acquire) {
        let start = position.load(Ordering::Acquire);
        let mut ahead_bytes = 0u64;
        let mut loaded_any = false;
        let mut seen = std::collections::HashSet::new();
        for &key in accesses.iter().skip(start) {
            if done.load(Ordering::Acquire) || !seen.insert(key) {
                continue;
            }
            let Ok(bytes) = loader.chunk_bytes(key) else {
                break;
            };
            ahead_bytes += bytes;
            if ahead_bytes > prefetch_bytes {
                break;
            }
            match manager.prefetch(key) {
                Ok(true) => {
                    loaded_any = true;
                    break; // re-read the position: the compute thread moved on
                }
                Ok(false) => {}
                // The compute thread meets the same error and reports it.
                Err(_) => return,
            }
        }
        if !loaded_any {
            std::thread::sleep(PREFETCH_IDLE);
        }
    }
}
