//! What the streaming jobs ([`crate::reduce`], [`crate::map`]) share: their
//! error type, memory plan and report, the tile planner, the loader that
//! converts source chunks to the compute type, the read-ahead thread, and
//! the driver that runs a job's tile loop under the budget.
//!
//! # Memory
//!
//! A streaming job holds, all from the [`Engine`]'s pool and charged to its
//! budget:
//!
//! - its *tile buffers* (a reduction's accumulators, an elementwise job's
//!   operand tiles), in the compute type, one output tile's worth;
//! - a *staging* buffer: the finished tile in the output's stored type;
//! - *conversion* scratch when an input is stored in another type than the
//!   compute type: one stored chunk per loading thread
//!   ([`LOADING_THREADS`]);
//! - a chunk cache ([`BufferManager`]) of at least [`CACHE_CHUNKS_MIN`]
//!   of the largest source chunk (one being used, one being read ahead),
//!   plus [`READ_AHEAD_SLACK_CHUNKS`] while the read-ahead thread runs (see
//!   there); the rest of the budget also goes to it.
//!
//! Every buffer counts as the pool block it takes
//! ([`pool_block_bytes`]). Output tiles start at the shape the job asks for
//! (whole input chunks); while the working set does not fit, the longest
//! tile axis is halved, down to one element. A budget that cannot hold even
//! that is refused with [`StreamError::BudgetTooSmall`], naming the bytes
//! needed.
//!
//! # Read-ahead
//!
//! A job knows its whole access sequence before it starts. A second thread
//! walks it ahead of the compute thread and loads chunks into the cache,
//! never more than [`PREFETCH_SHARE_PERCENT`] of the cache ahead of the
//! compute thread's position; it sleeps until the position moves when it
//! is that far ahead or the cache is full of chunks in use.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use strata_array::chunk::{decode_elements, ChunkSink, ChunkSource, ComputeElement};
use strata_array::dtype::DataType;
use strata_array::meta::ArrayMeta;
use strata_pool::budget::{MemoryConsumer, MemoryPool, Reservation};
use strata_pool::{HybridPool, PoolBox, PoolError};

use crate::bufmgr::{
    pool_block_bytes, pool_request_bytes, BufferManager, CacheStats, ChunkLoader, OocError, Pinned,
    CHUNK_ALIGN_BYTES,
};
use crate::contract::{Engine, Progress, RunConfig, PREFETCH_SHARE_PERCENT};
use crate::plan::{CACHE_CHUNKS_MIN, LOADING_THREADS};
use crate::policy::ChunkKey;

/// Bits of a [`ChunkKey`] below the operand number: the chunk's linear
/// index in its source's grid.
const OPERAND_SHIFT_BITS: u32 = 56;
/// Most inputs a streaming job takes (a fused multiply-add has three).
pub const OPERANDS_MAX: usize = 3;
const _: () = assert!(OPERANDS_MAX <= 1 << (64 - OPERAND_SHIFT_BITS));
/// The budget consumer of the tile, staging and conversion buffers.
const BUFFERS_CONSUMER: &str = "ooc-stream-buffers";
/// The budget consumer of the chunk cache.
const CACHE_CONSUMER: &str = "ooc-stream-cache";
/// Chunks of the cache's share kept out of the [`BufferManager`]'s
/// capacity while the read-ahead thread runs. [`BufferManager::prefetch`]
/// publishes a loaded chunk (unpinned, so evictable) before it lets go of
/// its own reference to the buffer; if the read-ahead thread is descheduled
/// in between, the compute thread can use and evict that chunk while its
/// block is still alive, so the pool holds one block more than the
/// manager counts. One prefetch is in flight at a time, so one chunk of
/// slack keeps the budget's reservation within the plan.
pub const READ_AHEAD_SLACK_CHUNKS: u64 = 1;
/// Longest the read-ahead thread sleeps before looking again; it is woken
/// whenever the compute thread moves, so this only bounds a missed wake-up.
const PREFETCH_WAIT: Duration = Duration::from_millis(1);

/// Why a streaming job was refused or failed.
#[non_exhaustive]
#[derive(Debug)]
pub enum StreamError {
    /// Two arrays that must have the same shape do not.
    ShapeMismatch {
        /// The first array's name.
        first: String,
        /// Its shape.
        first_shape: Vec<u64>,
        /// The second array's name.
        second: String,
        /// Its shape.
        second_shape: Vec<u64>,
    },
    /// Two arrays that must have the same element type do not.
    DtypeMismatch {
        /// The first array's name.
        first: String,
        /// Its type.
        first_dtype: DataType,
        /// The second array's name.
        second: String,
        /// Its type.
        second_dtype: DataType,
    },
    /// The destination's geometry is not what the job writes.
    Destination {
        /// The destination's name.
        array: String,
        /// The job, naming its inputs.
        job: String,
        /// What the job writes (see the job's `output_meta`).
        expected: Box<ArrayMeta>,
        /// What the destination has.
        found: Box<ArrayMeta>,
    },
    /// A reduction axis outside the array, or given twice.
    BadAxis {
        /// The array.
        array: String,
        /// The axis.
        axis: usize,
        /// The array's rank.
        rank: usize,
        /// Whether the axis was given twice (else it is out of range).
        repeated: bool,
    },
    /// An input has a zero-length axis: there is no chunk to stream.
    EmptyArray {
        /// The array.
        array: String,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// The operation takes another number of inputs.
    Arity {
        /// The operation.
        op: &'static str,
        /// Inputs it takes.
        expected: usize,
        /// Inputs given.
        found: usize,
    },
    /// Even the smallest working set does not fit the budget.
    BudgetTooSmall {
        /// The budget given.
        budget_bytes: u64,
        /// The smallest budget that runs the job.
        needed_bytes: u64,
    },
    /// The run's budget is not the one the job was planned for.
    BudgetChanged {
        /// The budget of the plan.
        planned_bytes: u64,
        /// The budget of the run.
        run_bytes: u64,
    },
    /// The pool refused a tile, staging or conversion buffer.
    Buffer {
        /// Which buffer.
        what: &'static str,
        /// Bytes asked for.
        bytes: u64,
        /// The pool's error.
        source: Box<PoolError>,
    },
    /// The engine failed: a source chunk, the chunk cache, or the
    /// destination.
    Engine(Box<OocError>),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::ShapeMismatch {
                first,
                first_shape,
                second,
                second_shape,
            } => write!(
                f,
                "shape mismatch: {first} is {first_shape:?} but {second} is {second_shape:?}"
            ),
            StreamError::DtypeMismatch {
                first,
                first_dtype,
                second,
                second_dtype,
            } => write!(
                f,
                "dtype mismatch: {first} is {first_dtype} but {second} is {second_dtype}"
            ),
            StreamError::Destination {
                array,
                job,
                expected,
                found,
            } => write!(
                f,
                "destination {array} is {:?} chunked {:?} of {}, but the {job} writes {:?} chunked {:?} of {}",
                found.shape(),
                found.chunk_shape(),
                found.dtype(),
                expected.shape(),
                expected.chunk_shape(),
                expected.dtype()
            ),
            StreamError::BadAxis {
                array,
                axis,
                rank,
                repeated,
            } => {
                if *repeated {
                    write!(f, "axis {axis} of {array} is given twice")
                } else {
                    write!(f, "axis {axis} is out of range for {array} of rank {rank}")
                }
            }
            StreamError::EmptyArray { array, shape } => {
                write!(f, "{array} has shape {shape:?}: a zero-length axis leaves nothing to stream")
            }
            StreamError::Arity {
                op,
                expected,
                found,
            } => write!(f, "{op} takes {expected} inputs, {found} given"),
            StreamError::BudgetTooSmall {
                budget_bytes,
                needed_bytes,
            } => write!(
                f,
                "memory budget of {budget_bytes} bytes is too small for this job: its smallest working set needs {needed_bytes} bytes"
            ),
            StreamError::BudgetChanged {
                planned_bytes,
                run_bytes,
            } => write!(
                f,
                "the job is planned for a budget of {planned_bytes} bytes, the run has {run_bytes}"
            ),
            StreamError::Buffer {
                what,
                bytes,
                source,
            } => write!(f, "{what} buffer of {bytes} bytes: {source}"),
            StreamError::Engine(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StreamError::Buffer { source, .. } => Some(source.as_ref()),
            StreamError::Engine(error) => Some(error.as_ref()),
            _ => None,
        }
    }
}

impl From<OocError> for StreamError {
    fn from(error: OocError) -> Self {
        StreamError::Engine(Box::new(error))
    }
}

/// Where a streaming job's budget goes, in bytes (pool blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamMemory {
    /// The tile buffers: accumulators (with their compensation terms) or
    /// operand tiles, in the compute type.
    pub tile_bytes: u64,
    /// The finished tile in the output's stored type.
    pub staging_bytes: u64,
    /// Stored chunks being converted to the compute type, one per loading
    /// thread (0 when every input is stored in the compute type).
    pub conversion_bytes: u64,
    /// The chunk cache: the rest of the budget.
    pub cache_bytes: u64,
}

impl StreamMemory {
    /// Bytes of everything but the cache.
    pub fn working_bytes(&self) -> u64 {
        self.tile_bytes + self.staging_bytes + self.conversion_bytes
    }

    /// Every byte of the plan.
    pub fn total_bytes(&self) -> u64 {
        self.working_bytes() + self.cache_bytes
    }
}

/// What a finished streaming run measured.
#[derive(Clone, Debug)]
pub struct StreamReport {
    /// Wall time of the run.
    pub wall: Duration,
    /// The chunk cache's counters.
    pub cache: CacheStats,
    /// The cache policy's name.
    pub policy: &'static str,
    /// Highest bytes reserved from the engine's budget at once.
    pub peak_reserved_bytes: u64,
    /// Bytes read from the sources (stored types; re-reads count again).
    pub read_bytes: u64,
    /// Bytes written to the destination (stored type).
    pub written_bytes: u64,
    /// Bytes of the inputs (stored types): the least any run reads.
    pub input_bytes: u64,
    /// Chunk accesses of the schedule.
    pub accesses: u64,
    /// Output chunks written.
    pub tiles_written: u64,
    /// The memory plan the run used.
    pub memory: StreamMemory,
}

/// Arithmetic the streaming kernels need on top of [`ComputeElement`].
pub(crate) trait StreamElement:
    ComputeElement
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    /// Positive infinity.
    const INFINITY: Self;
    /// `self * a + b` with one rounding.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Not a number.
    fn is_nan(self) -> bool;
    /// Neither infinite nor NaN.
    fn is_finite(self) -> bool;
    /// Negation.
    fn negate(self) -> Self;
}

macro_rules! stream_element {
    ($t:ty) => {
        impl StreamElement for $t {
            const INFINITY: Self = <$t>::INFINITY;
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn negate(self) -> Self {
                -self
            }
        }
    };
}
stream_element!(f32);
stream_element!(f64);

/// The key of chunk `linear` of input `operand`.
pub(crate) fn chunk_key(operand: usize, linear: u64) -> ChunkKey {
    debug_assert!(
        operand < OPERANDS_MAX && linear < 1 << OPERAND_SHIFT_BITS,
        "operand {operand}, chunk {linear}"
    );
    ChunkKey((operand as u64) << OPERAND_SHIFT_BITS | linear)
}

fn split_key(key: ChunkKey) -> (usize, u64) {
    (
        (key.0 >> OPERAND_SHIFT_BITS) as usize,
        key.0 & ((1 << OPERAND_SHIFT_BITS) - 1),
    )
}

/// Checks that no axis of `source` has length zero.
pub(crate) fn check_not_empty(source: &dyn ChunkSource) -> Result<(), StreamError> {
    let shape = source.meta().shape();
    if shape.contains(&0) {
        return Err(StreamError::EmptyArray {
            array: source.name().to_string(),
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

/// The largest chunk of `meta` (the regular chunk clipped to the array), in
/// elements.
pub(crate) fn largest_chunk_elements(meta: &ArrayMeta) -> u64 {
    meta.shape()
        .iter()
        .zip(meta.chunk_shape())
        .map(|(&len, &chunk)| len.min(chunk))
        .product()
}

/// The buffers a job needs, per output tile element, and its fixed parts.
pub(crate) struct BufferNeeds {
    /// Bytes per tile element of each tile buffer (one pool block each).
    pub tile_buffer_element_bytes: Vec<u64>,
    /// Bytes per tile element of the staging buffer.
    pub staging_element_bytes: u64,
    /// Conversion scratch (pool blocks already).
    pub conversion_bytes: u64,
    /// The least chunk cache (pool blocks already).
    pub cache_min_bytes: u64,
}

impl BufferNeeds {
    /// The conversion and least cache for `sources` computed in
    /// `compute`: [`LOADING_THREADS`] of the largest stored chunk that
    /// needs converting, [`CACHE_CHUNKS_MIN`] of the largest chunk in the
    /// compute type.
    pub(crate) fn for_sources(
        sources: &[&dyn ChunkSource],
        compute: DataType,
        tile_buffer_element_bytes: Vec<u64>,
        staging_element_bytes: u64,
    ) -> BufferNeeds {
        let compute_bytes = compute.size_bytes() as u64;
        let conversion_chunk_bytes = sources
            .iter()
            .filter(|s| s.meta().dtype() != compute)
            .map(|s| largest_chunk_elements(s.meta()) * s.meta().dtype().size_bytes() as u64)
            .max();
        let cache_chunk_bytes = sources
            .iter()
            .map(|s| largest_chunk_elements(s.meta()) * compute_bytes)
            .max()
            .unwrap_or(compute_bytes);
        BufferNeeds {
            tile_buffer_element_bytes,
            staging_element_bytes,
            conversion_bytes: conversion_chunk_bytes
                .map_or(0, |bytes| LOADING_THREADS * pool_block_bytes(bytes)),
            cache_min_bytes: (CACHE_CHUNKS_MIN + READ_AHEAD_SLACK_CHUNKS)
                * pool_block_bytes(cache_chunk_bytes),
        }
    }

    /// The working set (no cache) of tiles of `elements` elements.
    fn working(&self, elements: u64) -> StreamMemory {
        StreamMemory {
            tile_bytes: self
                .tile_buffer_element_bytes
                .iter()
                .map(|&b| pool_block_bytes(b * elements))
                .sum(),
            staging_bytes: pool_block_bytes(self.staging_element_bytes * elements),
            conversion_bytes: self.conversion_bytes,
            cache_bytes: 0,
        }
    }
}

/// Chooses the tile: `start_tile` (one length per tiled axis, each at most
/// the axis's `extents`), halving the longest tile axis while the working
/// set and the least cache exceed `budget_bytes`. The cache gets the rest.
pub(crate) fn plan_tile(
    extents: &[u64],
    start_tile: &[u64],
    needs: &BufferNeeds,
    budget_bytes: u64,
) -> Result<(Vec<u64>, StreamMemory), StreamError> {
    assert_eq!(
        extents.len(),
        start_tile.len(),
        "extents {extents:?} vs tile {start_tile:?}"
    );
    let mut tile: Vec<u64> = start_tile
        .iter()
        .zip(extents)
        .map(|(&t, &e)| t.clamp(1, e.max(1)))
        .collect();
    loop {
        let working = needs.working(tile.iter().product());
        let needed_bytes = working.working_bytes() + needs.cache_min_bytes;
        if needed_bytes <= budget_bytes {
            let memory = StreamMemory {
                cache_bytes: budget_bytes - working.working_bytes(),
                ..working
            };
            return Ok((tile, memory));
        }
        // Halve the longest axis; at one element everywhere nothing is left.
        match (0..tile.len())
            .filter(|&d| tile[d] > 1)
            .max_by_key(|&d| tile[d])
        {
            Some(d) => tile[d] = tile[d].div_ceil(2),
            None => {
                return Err(StreamError::BudgetTooSmall {
                    budget_bytes,
                    needed_bytes,
                })
            }
        }
    }
}

/// Calls `row(src_offset, dst_offset, len)` for every row (run along the
/// last axis) of the box `box_start .. box_start + box_shape` (array
/// coordinates). `src` is a C-order block at `src_start` of `src_shape`
/// (rows are contiguous in it); the destination offset of an element `g`
/// is `sum((g[d] - dst_start[d]) * dst_strides[d])` and advances by
/// `dst_strides[last]` along a row.
pub(crate) fn for_each_row(
    box_start: &[u64],
    box_shape: &[u64],
    src_start: &[u64],
    src_shape: &[u64],
    dst_start: &[u64],
    dst_strides: &[u64],
    mut row: impl FnMut(usize, usize, usize),
) {
    let rank = box_start.len();
    debug_assert!(
        [box_shape.len(), src_start.len(), src_shape.len(), dst_start.len(), dst_strides.len()]
            .iter()
            .all(|&n| n == rank),
        "ranks differ: box {box_start:?} {box_shape:?}, src {src_start:?} {src_shape:?}, dst {dst_start:?} {dst_strides:?}"
    );
    if box_shape.contains(&0) {
        return;
    }
    let mut src_strides = vec![1u64; rank];
    for d in (0..rank - 1).rev() {
        src_strides[d] = src_strides[d + 1] * src_shape[d + 1];
    }
    let rows: u64 = box_shape[..rank - 1].iter().product();
    let len = box_shape[rank - 1] as usize;
    let mut counter = vec![0u64; rank - 1];
    for _ in 0..rows {
        let mut src = 0u64;
        let mut dst = 0u64;
        for d in 0..rank {
            let g = box_start[d] + if d < rank - 1 { counter[d] } else { 0 };
            src += (g - src_start[d]) * src_strides[d];
            dst += (g - dst_start[d]) * dst_strides[d];
        }
        row(src as usize, dst as usize, len);
        for d in (0..rank - 1).rev() {
            counter[d] += 1;
            if counter[d] < box_shape[d] {
                break;
            }
            counter[d] = 0;
        }
    }
}

/// C-order strides of `shape`, in elements.
pub(crate) fn c_strides(shape: &[u64]) -> Vec<u64> {
    let mut strides = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Calls `visit` with every index of the box `ranges` in C order (once,
/// with an empty index, when there are no axes).
pub(crate) fn for_each_index(ranges: &[std::ops::Range<u64>], mut visit: impl FnMut(&[u64])) {
    if ranges.iter().any(|r| r.is_empty()) {
        return;
    }
    let mut index: Vec<u64> = ranges.iter().map(|r| r.start).collect();
    'outer: loop {
        visit(&index);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < ranges[d].end {
                continue 'outer;
            }
            index[d] = ranges[d].start;
        }
        return;
    }
}

/// The grid indices of the chunks of `meta` that meet the box `ranges`
/// (one element range per axis).
pub(crate) fn chunk_ranges(
    meta: &ArrayMeta,
    ranges: &[std::ops::Range<u64>],
) -> Vec<std::ops::Range<u64>> {
    ranges
        .iter()
        .zip(meta.chunk_shape())
        .map(|(r, &chunk)| r.start / chunk..r.end.div_ceil(chunk))
        .collect()
}

/// Loads source chunks converted to the compute type `T`.
struct StreamLoader<'j, T> {
    sources: &'j [&'j dyn ChunkSource],
    pool: &'j HybridPool,
    /// Conversion scratch is charged here (the plan's conversion share).
    reservation: &'j Reservation,
    /// Stored bytes read from the sources.
    read_bytes: AtomicU64,
    marker: PhantomData<fn() -> T>,
}

impl<T: ComputeElement> ChunkLoader for StreamLoader<'_, T> {
    fn chunk_bytes(&self, key: ChunkKey) -> Result<u64, OocError> {
        let (operand, linear) = split_key(key);
        let meta = self.sources[operand].meta();
        Ok(meta.chunk_element_count_at(&meta.linear_to_grid_index(linear)) * size_of::<T>() as u64)
    }

    fn load(&self, key: ChunkKey, out: &mut [u8]) -> Result<(), OocError> {
        let (operand, linear) = split_key(key);
        let source = self.sources[operand];
        let meta = source.meta();
        let grid = meta.linear_to_grid_index(linear);
        let stored_bytes = meta.chunk_len_bytes_at(&grid);
        let source_error = |e: strata_array::error::ArrayError| OocError::Source {
            key,
            detail: e.to_string(),
        };
        if meta.dtype() == T::COMPUTE_TYPE.dtype() {
            source.read_chunk(&grid, out).map_err(source_error)?;
        } else {
            let mut raw = self
                .pool
                .alloc_charged(
                    pool_request_bytes(stored_bytes as u64),
                    CHUNK_ALIGN_BYTES,
                    self.reservation,
                )
                .map_err(|source| OocError::Pool { key, source })?;
            let raw = &mut raw.as_bytes_mut()[..stored_bytes];
            source.read_chunk(&grid, raw).map_err(source_error)?;
            decode_elements::<T>(meta.dtype(), raw, bytemuck::cast_slice_mut(out));
        }
        self.read_bytes
            .fetch_add(stored_bytes as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The compute thread's position in the access sequence, watched by the
/// read-ahead thread.
struct Cursor {
    /// Index of the next access not yet pinned.
    position: Mutex<usize>,
    moved: Condvar,
    done: AtomicBool,
}

impl Cursor {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.position.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(&self, position: usize) {
        *self.lock() = position;
        self.moved.notify_all();
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        let _guard = self.lock();
        self.moved.notify_all();
    }
}

/// Loads chunks ahead of the compute thread, at most `window_bytes` (pool
/// blocks) of distinct chunks past its position.
fn read_ahead(
    manager: &BufferManager<'_>,
    accesses: &[ChunkKey],
    cursor: &Cursor,
    window_bytes: u64,
    loader: &dyn ChunkLoader,
) {
    let mut seen = HashSet::new();
    while !cursor.done.load(Ordering::Acquire) {
        let start = *cursor.lock();
        let mut ahead_bytes = 0u64;
        let mut loaded = false;
        seen.clear();
        for &key in &accesses[start..] {
            if cursor.done.load(Ordering::Acquire) {
                return;
            }
            if !seen.insert(key) {
                continue;
            }
            let Ok(bytes) = loader.chunk_bytes(key) else {
                return;
            };
            ahead_bytes += pool_block_bytes(bytes);
            if ahead_bytes > window_bytes {
                break;
            }
            match manager.prefetch(key) {
                Ok(true) => {
                    loaded = true;
                    break; // look at the position again
                }
                Ok(false) => {}
                // The compute thread meets the same error and reports it.
                Err(_) => return,
            }
        }
        if !loaded {
            let position = cursor.lock();
            if *position == start && !cursor.done.load(Ordering::Acquire) {
                let _ = cursor
                    .moved
                    .wait_timeout(position, PREFETCH_WAIT)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

/// The compute thread's view of a run: pins chunks in schedule order,
/// holds the tile and staging buffers, writes output chunks.
pub(crate) struct Stream<'m, 'p> {
    manager: &'m BufferManager<'p>,
    cursor: &'m Cursor,
    accesses: &'m [ChunkKey],
    next: usize,
    /// The tile buffers, as the job asked for them.
    pub tiles: Vec<PoolBox<'p>>,
    /// The staging buffer.
    pub staging: PoolBox<'p>,
    out: &'m dyn ChunkSink,
    progress: &'m mut dyn FnMut(Progress),
    written_bytes: u64,
    tiles_written: u64,
}

impl<'m, 'p> Stream<'m, 'p> {
    /// Pins `key`, which must be the schedule's next access.
    pub(crate) fn pin_next(&mut self, key: ChunkKey) -> Result<Pinned<'m, 'p>, StreamError> {
        assert_eq!(
            self.accesses.get(self.next),
            Some(&key),
            "schedule out of step at access {}",
            self.next
        );
        self.next += 1;
        self.cursor.advance(self.next);
        Ok(self.manager.pin(key)?)
    }

    /// Writes the first `len_bytes` of the staging buffer as output chunk
    /// `grid`.
    pub(crate) fn write_staged(
        &mut self,
        grid: &[u64],
        len_bytes: usize,
    ) -> Result<(), StreamError> {
        let data = &self.staging.as_bytes_mut()[..len_bytes];
        self.out
            .write_chunk(grid, data)
            .map_err(|e| OocError::Sink {
                detail: e.to_string(),
            })?;
        self.written_bytes += len_bytes as u64;
        self.tiles_written += 1;
        (self.progress)(Progress {
            steps_done: self.next as u64,
            steps_total: self.accesses.len() as u64,
            tiles_written: self.tiles_written,
        });
        Ok(())
    }
}

/// The first `len` elements of `buffer` as `T`.
pub(crate) fn typed<'b, T: bytemuck::Pod>(buffer: &'b mut PoolBox<'_>, len: usize) -> &'b mut [T] {
    bytemuck::cast_slice_mut(&mut buffer.as_bytes_mut()[..len * size_of::<T>()])
}

/// A planned streaming job, as the driver needs it.
pub(crate) struct Setup<'s> {
    /// The inputs, by operand number.
    pub sources: &'s [&'s dyn ChunkSource],
    /// Every chunk pin of the run, in order.
    pub accesses: Vec<ChunkKey>,
    /// The memory plan (its total is the planned budget).
    pub memory: StreamMemory,
    /// Bytes of each tile buffer.
    pub tile_buffer_bytes: Vec<u64>,
    /// Bytes of the staging buffer.
    pub staging_bytes: u64,
    /// What the destination must be.
    pub output_meta: ArrayMeta,
    /// The job, naming its inputs, for errors.
    pub job: String,
}

/// Runs a job: checks the destination and budget, takes the buffers and
/// the cache from the engine, starts the read-ahead thread, calls `body`
/// (the tile loop) and finishes the destination if it succeeded.
pub(crate) fn drive<T: ComputeElement>(
    setup: &Setup<'_>,
    engine: &Engine,
    out: &dyn ChunkSink,
    config: &RunConfig,
    progress: &mut dyn FnMut(Progress),
    body: &mut dyn FnMut(&mut Stream<'_, '_>) -> Result<(), StreamError>,
) -> Result<StreamReport, StreamError> {
    let started = Instant::now();
    if out.meta() != &setup.output_meta {
        return Err(StreamError::Destination {
            array: out.name().to_string(),
            job: setup.job.clone(),
            expected: Box::new(setup.output_meta.clone()),
            found: Box::new(out.meta().clone()),
        });
    }
    let memory = setup.memory;
    if config.budget_bytes != memory.total_bytes() {
        return Err(StreamError::BudgetChanged {
            planned_bytes: memory.total_bytes(),
            run_bytes: config.budget_bytes,
        });
    }
    let budget: Arc<dyn MemoryPool> = engine.budget().clone();
    let buffers_reservation = MemoryConsumer::new(BUFFERS_CONSUMER).register(&budget);
    let cache_reservation = MemoryConsumer::new(CACHE_CONSUMER)
        .with_can_spill(true)
        .register(&budget);
    let pool = engine.pool();
    let alloc = |what: &'static str, bytes: u64| -> Result<PoolBox<'_>, StreamError> {
        let bytes = bytes.max(size_of::<T>() as u64);
        pool.alloc_charged(
            pool_request_bytes(bytes),
            CHUNK_ALIGN_BYTES,
            &buffers_reservation,
        )
        .map_err(|source| StreamError::Buffer {
            what,
            bytes,
            source: Box::new(source),
        })
    };
    let tiles = setup
        .tile_buffer_bytes
        .iter()
        .map(|&bytes| alloc("tile", bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let staging = alloc("staging", setup.staging_bytes)?;
    let loader = StreamLoader::<T> {
        sources: setup.sources,
        pool,
        reservation: &buffers_reservation,
        read_bytes: AtomicU64::new(0),
        marker: PhantomData,
    };
    // What the pool really charged for the buffers, if more than planned,
    // comes out of the cache.
    let working_charged = buffers_reservation.size() + memory.conversion_bytes;
    let slack_bytes = if config.prefetch {
        let largest_chunk_bytes = setup
            .sources
            .iter()
            .map(|s| largest_chunk_elements(s.meta()) * size_of::<T>() as u64)
            .max()
            .unwrap_or(0);
        READ_AHEAD_SLACK_CHUNKS * pool_block_bytes(largest_chunk_bytes)
    } else {
        0
    };
    let cache_capacity = memory
        .total_bytes()
        .saturating_sub(working_charged.max(memory.working_bytes()) + slack_bytes);
    let manager = BufferManager::new(
        pool,
        &cache_reservation,
        &loader,
        None,
        config.policy.build(&setup.accesses),
        cache_capacity,
    );
    let cursor = Cursor {
        position: Mutex::new(0),
        moved: Condvar::new(),
        done: AtomicBool::new(false),
    };
    let mut stream = Stream {
        manager: &manager,
        cursor: &cursor,
        accesses: &setup.accesses,
        next: 0,
        tiles,
        staging,
        out,
        progress,
        written_bytes: 0,
        tiles_written: 0,
    };
    let outcome = std::thread::scope(|scope| {
        if config.prefetch {
            let window_bytes = cache_capacity / 100 * PREFETCH_SHARE_PERCENT;
            let (manager, accesses, cursor) = (&manager, &setup.accesses, &cursor);
            let loader: &dyn ChunkLoader = &loader;
            scope.spawn(move || read_ahead(manager, accesses, cursor, window_bytes, loader));
        }
        let outcome = body(&mut stream);
        cursor.finish();
        outcome
    });
    outcome?;
    assert_eq!(
        stream.next,
        setup.accesses.len(),
        "the run pinned {} of {} scheduled chunks",
        stream.next,
        setup.accesses.len()
    );
    let (written_bytes, tiles_written) = (stream.written_bytes, stream.tiles_written);
    drop(stream);
    manager.check_invariants();
    out.finish().map_err(|e| OocError::Sink {
        detail: e.to_string(),
    })?;
    Ok(StreamReport {
        wall: started.elapsed(),
        cache: manager.stats(),
        policy: manager.policy_name(),
        peak_reserved_bytes: engine.budget().peak_bytes(),
        read_bytes: loader.read_bytes.load(Ordering::Relaxed),
        written_bytes,
        input_bytes: setup.sources.iter().map(|s| s.meta().len_bytes()).sum(),
        accesses: setup.accesses.len() as u64,
        tiles_written,
        memory,
    })
}
