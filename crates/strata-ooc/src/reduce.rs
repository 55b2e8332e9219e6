//! Streaming reductions (sum, mean, min, max) along any set of axes, under
//! the memory budget.
//!
//! The output is tiled along the axes that are kept; an output tile's
//! accumulators live in one pool buffer while every input chunk that meets
//! the tile is streamed through them (all chunks along the reduced axes),
//! then the tile is finished, converted to the output's stored type and
//! written as one output chunk. Tiles are finished one after another in C
//! order, so only one tile's accumulators exist at a time. A tile starts as
//! one input chunk along each kept axis, so each input chunk is read once;
//! under a small budget tiles shrink (see [`crate::stream`]) and chunks
//! meeting several tiles are read again (or found in the cache).
//!
//! # Accuracy
//!
//! Inputs are converted to the compute type of
//! [`crate::contract::compute_type_for`]: `f64` for `f64`,
//! `i64` and `i32` inputs, `f32` for the others (exact for `f32`, `f16`,
//! `bf16` and `u8`).
//!
//! Sums (and means) use Neumaier's variant of Kahan's compensated summation
//! (a running sum and a compensation term per output element, both in the
//! compute type, the compensation taking the rounding error of each
//! addition whichever operand is larger). With unit roundoff `u` of the
//! compute type (2^-24 or 2^-53) and `n` terms, the computed sum `ŝ` of
//! `x_1..x_n` satisfies
//!
//! `|ŝ - Σx| <= (2u + O(n u²)) Σ|x|`
//!
//! for *any* order of the terms: the bound does not grow with `n` (to first
//! order) and does not depend on the chunk shape, which only changes the
//! order. A mean divides the sum by the count (one more rounding, `u` of
//! the result), and writing the result rounds once more to the output
//! type. A non-finite running sum (an infinity or NaN among the terms) is
//! returned as is, without its compensation.
//!
//! Min and max are exact (comparisons only); a NaN in the input makes the
//! result NaN, as numpy's `min` and `max` do.
//!
//! # Output
//!
//! The reduced axes are removed, or kept with length 1 with `keepdims`.
//! Reducing every axis without `keepdims` gives a one-element array of
//! shape `[1]` (arrays here have at least one axis). Output chunks are the
//! output tiles.
//!
//! ```
//! use strata_array::chunk::{decode_elements, encode_elements};
//! use strata_array::{ArrayMeta, DataType};
//! use strata_array::mem::MemArray;
//! use strata_ooc::contract::{Engine, RunConfig};
//! use strata_ooc::reduce::{ReduceJob, ReduceOp};
//!
//! // A 3 x 4 array of 0..12, chunked 2 x 3; sum over axis 0.
//! let meta = ArrayMeta::new(vec![3, 4], vec![2, 3], DataType::F32)?;
//! let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
//! let mut bytes = vec![0u8; 48];
//! encode_elements(DataType::F32, &values, &mut bytes);
//! let input = MemArray::from_bytes("x", meta, bytes)?;
//!
//! let budget_bytes = 1 << 20;
//! let job = ReduceJob::new(&input, ReduceOp::Sum, &[0], false, DataType::F64, budget_bytes)?;
//! let out = MemArray::zeroed("sum", job.output_meta());
//! let report = job.run(&Engine::new(budget_bytes)?, &out, &RunConfig::with_budget(budget_bytes), &mut |_| {})?;
//! assert!(report.peak_reserved_bytes <= budget_bytes);
//! let mut sums = [0f64; 4];
//! decode_elements(DataType::F64, &out.to_bytes(), &mut sums);
//! assert_eq!(sums, [12.0, 15.0, 18.0, 21.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use strata_array::chunk::{encode_elements, ChunkSink, ChunkSource};
use strata_array::dtype::{ComputeType, DataType};
use strata_array::meta::ArrayMeta;

use crate::contract::{compute_type_for, Engine, Progress, RunConfig};
use crate::policy::ChunkKey;
use crate::stream::{
    c_strides, check_not_empty, chunk_key, chunk_ranges, drive, for_each_index, for_each_row,
    plan_tile, typed, BufferNeeds, Setup, Stream, StreamElement, StreamError, StreamMemory,
    StreamReport,
};

/// Accumulator values per output element of a compensated sum: the sum
/// and its compensation.
const COMPENSATED_TERMS: u64 = 2;

/// A reduction.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Compensated sum.
    Sum,
    /// Compensated sum divided by the number of terms.
    Mean,
    /// Least element (NaN if any is NaN).
    Min,
    /// Greatest element (NaN if any is NaN).
    Max,
}

impl ReduceOp {
    /// Every reduction.
    pub const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Min, ReduceOp::Max];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
        }
    }

    /// Accumulator values per output element.
    fn accumulator_terms(self) -> u64 {
        match self {
            ReduceOp::Sum | ReduceOp::Mean => COMPENSATED_TERMS,
            ReduceOp::Min | ReduceOp::Max => 1,
        }
    }
}

/// A reduction of one array, planned.
pub struct ReduceJob<'a> {
    source: &'a dyn ChunkSource,
    op: ReduceOp,
    /// Per input axis: reduced.
    reduced: Vec<bool>,
    keepdims: bool,
    output_dtype: DataType,
    compute: ComputeType,
    /// Tile length of each kept axis, in axis order.
    tile: Vec<u64>,
    memory: StreamMemory,
}

impl<'a> ReduceJob<'a> {
    /// Checks the axes and plans `op` over `axes` of `source` for
    /// `budget_bytes`; the output is stored as `output_dtype`. No axes
    /// reduces nothing (each element is its own sum, mean, min and max).
    pub fn new(
        source: &'a dyn ChunkSource,
        op: ReduceOp,
        axes: &[usize],
        keepdims: bool,
        output_dtype: DataType,
        budget_bytes: u64,
    ) -> Result<Self, StreamError> {
        check_not_empty(source)?;
        let meta = source.meta();
        let rank = meta.rank();
        let mut reduced = vec![false; rank];
        for &axis in axes {
            if axis >= rank || reduced[axis] {
                return Err(StreamError::BadAxis {
                    array: source.name().to_string(),
                    axis,
                    rank,
                    repeated: axis < rank,
                });
            }
            reduced[axis] = true;
        }
        let compute = compute_type_for(meta.dtype(), meta.dtype());
        let compute_bytes = compute.dtype().size_bytes() as u64;
        let needs = BufferNeeds::for_sources(
            &[source],
            compute.dtype(),
            vec![op.accumulator_terms() * compute_bytes],
            output_dtype.size_bytes() as u64,
        );
        let kept: Vec<usize> = (0..rank).filter(|&d| !reduced[d]).collect();
        let extents: Vec<u64> = kept.iter().map(|&d| meta.shape()[d]).collect();
        let start_tile: Vec<u64> = kept.iter().map(|&d| meta.chunk_shape()[d]).collect();
        let (tile, memory) = plan_tile(&extents, &start_tile, &needs, budget_bytes)?;
        let job = ReduceJob {
            source,
            op,
            reduced,
            keepdims,
            output_dtype,
            compute,
            tile,
            memory,
        };
        job.check_invariants();
        Ok(job)
    }

    /// Panics (printing the values) if the plan is inconsistent: a tile
    /// per kept axis, each within its axis, and the budget covering the
    /// working set.
    pub fn check_invariants(&self) {
        let shape = self.source.meta().shape();
        let kept: Vec<usize> = self.kept().collect();
        assert_eq!(
            kept.len(),
            self.tile.len(),
            "kept axes {kept:?}, tile {:?}",
            self.tile
        );
        for (&d, &tile) in kept.iter().zip(&self.tile) {
            assert!(
                (1..=shape[d]).contains(&tile),
                "tile {tile} along axis {d} of length {}",
                shape[d]
            );
        }
        assert!(
            self.memory.cache_bytes > 0 && self.memory.working_bytes() < self.memory.total_bytes(),
            "memory plan {:?}",
            self.memory
        );
        self.output_meta().check_invariants();
    }

    /// The memory plan.
    pub fn memory(&self) -> StreamMemory {
        self.memory
    }

    /// The compute type.
    pub fn compute_type(&self) -> ComputeType {
        self.compute
    }

    /// The output tile's length along each kept axis (in axis order).
    pub fn tile_shape(&self) -> &[u64] {
        &self.tile
    }

    /// The output's geometry: the input's shape without the reduced axes
    /// (or with them at length 1 with `keepdims`; `[1]` when nothing is
    /// left), chunked as the output tiles, of the output dtype. Create the
    /// destination with it.
    pub fn output_meta(&self) -> ArrayMeta {
        let shape = self.source.meta().shape();
        let mut kept_tiles = self.tile.iter();
        let (mut out_shape, mut out_chunks) = (Vec::new(), Vec::new());
        for (d, &len) in shape.iter().enumerate() {
            if !self.reduced[d] {
                out_shape.push(len);
                out_chunks.push(*kept_tiles.next().expect("a tile per kept axis"));
            } else if self.keepdims {
                out_shape.push(1);
                out_chunks.push(1);
            }
        }
        if out_shape.is_empty() {
            (out_shape, out_chunks) = (vec![1], vec![1]);
        }
        ArrayMeta::new(out_shape, out_chunks, self.output_dtype)
            .expect("a reduction of a valid array is a valid array")
    }

    /// Output tiles along each kept axis.
    fn tile_counts(&self) -> Vec<std::ops::Range<u64>> {
        self.kept()
            .zip(&self.tile)
            .map(|(d, &t)| 0..self.source.meta().shape()[d].div_ceil(t))
            .collect()
    }

    fn kept(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.reduced.len()).filter(|&d| !self.reduced[d])
    }

    /// The input elements output tile `tile_index` covers, per input axis.
    fn input_ranges(&self, tile_index: &[u64]) -> Vec<std::ops::Range<u64>> {
        let shape = self.source.meta().shape();
        let mut kept = tile_index.iter().zip(&self.tile);
        (0..shape.len())
            .map(|d| {
                if self.reduced[d] {
                    0..shape[d]
                } else {
                    let (&index, &tile) = kept.next().expect("a tile index per kept axis");
                    index * tile..((index + 1) * tile).min(shape[d])
                }
            })
            .collect()
    }

    /// Calls `f` with the key and grid index of every input chunk that
    /// meets the input ranges `ranges`, in C order of the grid.
    fn for_each_chunk(&self, ranges: &[std::ops::Range<u64>], mut f: impl FnMut(ChunkKey, &[u64])) {
        let meta = self.source.meta();
        for_each_index(&chunk_ranges(meta, ranges), |grid| {
            f(chunk_key(0, meta.grid_index_to_linear(grid)), grid)
        });
    }

    /// The chunk keys in the order a run pins them.
    pub fn access_sequence(&self) -> Vec<ChunkKey> {
        let mut keys = Vec::new();
        for_each_index(&self.tile_counts(), |tile_index| {
            self.for_each_chunk(&self.input_ranges(tile_index), |key, _| keys.push(key));
        });
        keys
    }

    /// Runs the reduction, writing every output chunk to `out` (created
    /// with [`ReduceJob::output_meta`]) and finishing it. `config` must
    /// have the budget the job was planned for; its `gemm_threads` is not
    /// used.
    pub fn run(
        &self,
        engine: &Engine,
        out: &dyn ChunkSink,
        config: &RunConfig,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<StreamReport, StreamError> {
        match self.compute {
            ComputeType::F32 => self.run_typed::<f32>(engine, out, config, progress),
            ComputeType::F64 => self.run_typed::<f64>(engine, out, config, progress),
        }
    }

    fn run_typed<T: StreamElement>(
        &self,
        engine: &Engine,
        out: &dyn ChunkSink,
        config: &RunConfig,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<StreamReport, StreamError> {
        let sources = [self.source];
        let tile_elements: u64 = self.tile.iter().product();
        let setup = Setup {
            sources: &sources,
            accesses: self.access_sequence(),
            memory: self.memory,
            tile_buffer_bytes: vec![
                self.op.accumulator_terms() * tile_elements * size_of::<T>() as u64,
            ],
            staging_bytes: tile_elements * self.output_dtype.size_bytes() as u64,
            output_meta: self.output_meta(),
            job: format!(
                "{} over axes {:?} of {}",
                self.op.name(),
                (0..self.reduced.len())
                    .filter(|&d| self.reduced[d])
                    .collect::<Vec<_>>(),
                self.source.name()
            ),
        };
        let mut body = |stream: &mut Stream<'_, '_>| -> Result<(), StreamError> {
            let mut outcome = Ok(());
            for_each_index(&self.tile_counts(), |tile_index| {
                if outcome.is_ok() {
                    outcome = self.reduce_tile::<T>(stream, tile_index);
                }
            });
            outcome
        };
        drive::<T>(&setup, engine, out, config, progress, &mut body)
    }

    /// Streams every chunk meeting output tile `tile_index` through its
    /// accumulators and writes the tile.
    fn reduce_tile<T: StreamElement>(
        &self,
        stream: &mut Stream<'_, '_>,
        tile_index: &[u64],
    ) -> Result<(), StreamError> {
        let meta = self.source.meta();
        let ranges = self.input_ranges(tile_index);
        let kept: Vec<usize> = self.kept().collect();
        let tile_shape: Vec<u64> = kept
            .iter()
            .map(|&d| ranges[d].end - ranges[d].start)
            .collect();
        let elements = tile_shape.iter().product::<u64>() as usize;
        // Where an input element lands in the tile: C order over the kept
        // axes, nowhere along the reduced ones.
        let kept_strides = c_strides(&tile_shape);
        let mut dst_strides = vec![0u64; meta.rank()];
        let mut dst_start = vec![0u64; meta.rank()];
        for (k, &d) in kept.iter().enumerate() {
            dst_strides[d] = kept_strides[k];
            dst_start[d] = ranges[d].start;
        }
        let inner_stride = dst_strides[meta.rank() - 1] as usize;
        let terms = self.op.accumulator_terms() as usize;
        {
            let acc = typed::<T>(&mut stream.tiles[0], terms * elements);
            let (values, compensations) = acc.split_at_mut(elements);
            match self.op {
                ReduceOp::Sum | ReduceOp::Mean => {
                    values.fill(T::default());
                    compensations.fill(T::default());
                }
                ReduceOp::Min => values.fill(T::INFINITY),
                ReduceOp::Max => values.fill(T::INFINITY.negate()),
            }
        }
        let mut chunks = Vec::new();
        self.for_each_chunk(&ranges, |key, grid| chunks.push((key, grid.to_vec())));
        for (key, grid) in chunks {
            let pinned = stream.pin_next(key)?;
            let data: &[T] = bytemuck::cast_slice(pinned.bytes());
            let region = meta.chunk_region(&grid);
            let box_start: Vec<u64> = region
                .start
                .iter()
                .zip(&ranges)
                .map(|(&s, r)| s.max(r.start))
                .collect();
            let box_shape: Vec<u64> = (0..meta.rank())
                .map(|d| (region.start[d] + region.shape[d]).min(ranges[d].end) - box_start[d])
                .collect();
            let acc = typed::<T>(&mut stream.tiles[0], terms * elements);
            let (values, compensations) = acc.split_at_mut(elements);
            for_each_row(
                &box_start,
                &box_shape,
                &region.start,
                &region.shape,
                &dst_start,
                &dst_strides,
                |src, dst, len| {
                    let row = &data[src..src + len];
                    match self.op {
                        ReduceOp::Sum | ReduceOp::Mean => {
                            sum_row(row, values, compensations, dst, inner_stride)
                        }
                        ReduceOp::Min => extreme_row(row, values, dst, inner_stride, |x, m| x < m),
                        ReduceOp::Max => extreme_row(row, values, dst, inner_stride, |x, m| x > m),
                    }
                },
            );
        }
        // Finish the tile and write it.
        let stored_bytes = elements * self.output_dtype.size_bytes();
        {
            let acc = typed::<T>(&mut stream.tiles[0], terms * elements);
            let (values, compensations) = acc.split_at_mut(elements);
            if matches!(self.op, ReduceOp::Sum | ReduceOp::Mean) {
                let count = T::from_f64(
                    (0..meta.rank())
                        .filter(|&d| self.reduced[d])
                        .map(|d| meta.shape()[d] as f64)
                        .product(),
                );
                for (value, &compensation) in values.iter_mut().zip(compensations.iter()) {
                    if value.is_finite() {
                        *value = *value + compensation;
                    }
                    if self.op == ReduceOp::Mean {
                        *value = *value / count;
                    }
                }
            }
            let staging = &mut stream.staging.as_bytes_mut()[..stored_bytes];
            encode_elements(self.output_dtype, values, staging);
        }
        stream.write_staged(&self.output_grid_index(tile_index), stored_bytes)
    }

    /// The output chunk of output tile `tile_index`.
    fn output_grid_index(&self, tile_index: &[u64]) -> Vec<u64> {
        let mut kept = tile_index.iter();
        let mut grid = Vec::new();
        for &reduced in &self.reduced {
            if !reduced {
                grid.push(*kept.next().expect("a tile index per kept axis"));
            } else if self.keepdims {
                grid.push(0);
            }
        }
        if grid.is_empty() {
            grid.push(0);
        }
        grid
    }
}

/// One step of Neumaier's compensated summation: adds `x` to `sum`, keeping
/// the rounding error in `compensation`.
fn neumaier_add<T: StreamElement>(sum: &mut T, compensation: &mut T, x: T) {
    let total = *sum + x;
    // The rounding error of `sum + x`, exact when |larger| >= |smaller|.
    *compensation = *compensation
        + if sum.abs() >= x.abs() {
            (*sum - total) + x
        } else {
            (x - total) + *sum
        };
    *sum = total;
}

/// Adds `row` into the sums from `dst` on: one sum per element
/// (`inner_stride` 1) or all into one (0).
fn sum_row<T: StreamElement>(
    row: &[T],
    sums: &mut [T],
    compensations: &mut [T],
    dst: usize,
    inner_stride: usize,
) {
    if inner_stride == 0 {
        let (mut sum, mut compensation) = (sums[dst], compensations[dst]);
        for &x in row {
            neumaier_add(&mut sum, &mut compensation, x);
        }
        (sums[dst], compensations[dst]) = (sum, compensation);
    } else {
        let sums = &mut sums[dst..dst + row.len()];
        let compensations = &mut compensations[dst..dst + row.len()];
        for ((sum, compensation), &x) in sums.iter_mut().zip(compensations).zip(row) {
            neumaier_add(sum, compensation, x);
        }
    }
}

/// Folds `row` into the running extremes: `x` replaces `m` when
/// `better(x, m)` or `x` is NaN (a NaN, once in, stays: no comparison with
/// it is true).
fn extreme_row<T: StreamElement>(
    row: &[T],
    extremes: &mut [T],
    dst: usize,
    inner_stride: usize,
    better: impl Fn(T, T) -> bool,
) {
    let fold = |m: &mut T, x: T| {
        if better(x, *m) || x.is_nan() {
            *m = x;
        }
    };
    if inner_stride == 0 {
        let mut m = extremes[dst];
        for &x in row {
            fold(&mut m, x);
        }
        extremes[dst] = m;
    } else {
        for (m, &x) in extremes[dst..dst + row.len()].iter_mut().zip(row) {
            fold(m, x);
        }
    }
}
