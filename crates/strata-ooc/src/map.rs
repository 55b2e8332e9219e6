//! Streaming elementwise operations under the memory budget: `a + b`,
//! `a - b`, `a * b`, `a / b`, `min(a, b)`, `max(a, b)` of two arrays,
//! `a * b + c` of three, and `a * s + t` of one array and two scalars.
//!
//! # Chunking
//!
//! The inputs must have the same shape and the same stored type; their
//! chunk shapes may differ. The output is tiled like the *first* input
//! (each output chunk is one chunk of `a`, the last ones ragged alike), or
//! in smaller tiles if the budget cannot hold that (see
//! [`crate::stream`]). For each output tile, the chunks of each input that
//! meet it are pinned one at a time and the part inside the tile is copied
//! into (or combined with) a tile buffer; a chunk of another input that
//! straddles several tiles is read for each of them (or found in the
//! cache).
//!
//! # Accuracy
//!
//! Inputs are converted to the compute type of
//! [`crate::contract::compute_type_for`] (`f64` for
//! `f64`, `i64` and `i32`, `f32` otherwise), and each output element is one
//! correctly rounded operation in it: `+ - * /` as IEEE 754, `a * b + c`
//! and `a * s + t` as a fused multiply-add (one rounding), min and max
//! exact (NaN if either operand is NaN, as numpy's `minimum` and
//! `maximum`). The result is then rounded once to the output type, which
//! the caller chooses (integers round to nearest and saturate, NaN
//! becomes 0).
//!
//! ```
//! use strata_array::chunk::{decode_elements, encode_elements};
//! use strata_array::{ArrayMeta, DataType};
//! use strata_array::mem::MemArray;
//! use strata_ooc::contract::{Engine, RunConfig};
//! use strata_ooc::map::{MapJob, MapOp};
//!
//! let array = |name: &str, chunks: Vec<u64>, values: &[f32]| {
//!     let meta = ArrayMeta::new(vec![2, 3], chunks, DataType::F32).unwrap();
//!     let mut bytes = vec![0u8; 24];
//!     encode_elements(DataType::F32, values, &mut bytes);
//!     MemArray::from_bytes(name, meta, bytes).unwrap()
//! };
//! let a = array("a", vec![1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//! let b = array("b", vec![2, 2], &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
//!
//! let budget_bytes = 1 << 20;
//! let job = MapJob::new(MapOp::Add, &[&a, &b], DataType::F32, budget_bytes)?;
//! assert_eq!(job.output_meta().chunk_shape(), &[1, 3]); // a's chunks
//! let out = MemArray::zeroed("a+b", job.output_meta());
//! job.run(&Engine::new(budget_bytes)?, &out, &RunConfig::with_budget(budget_bytes), &mut |_| {})?;
//! let mut sums = [0f32; 6];
//! decode_elements(DataType::F32, &out.to_bytes(), &mut sums);
//! assert_eq!(sums, [11.0, 22.0, 33.0, 44.0, 55.0, 66.0]);
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

/// An elementwise operation.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MapOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `min(a, b)` (NaN if either is NaN).
    Min,
    /// `max(a, b)` (NaN if either is NaN).
    Max,
    /// `a * b + c`, fused (one rounding).
    Fma,
    /// `a * scale + offset`, fused (one rounding); the scalars are
    /// converted to the compute type first.
    Scale {
        /// The factor.
        scale: f64,
        /// The term added.
        offset: f64,
    },
}

impl MapOp {
    /// The binary operations.
    pub const BINARY: [MapOp; 6] = [
        MapOp::Add,
        MapOp::Sub,
        MapOp::Mul,
        MapOp::Div,
        MapOp::Min,
        MapOp::Max,
    ];

    /// Inputs the operation takes.
    pub fn arity(self) -> usize {
        match self {
            MapOp::Scale { .. } => 1,
            MapOp::Fma => 3,
            _ => 2,
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            MapOp::Add => "add",
            MapOp::Sub => "sub",
            MapOp::Mul => "mul",
            MapOp::Div => "div",
            MapOp::Min => "min",
            MapOp::Max => "max",
            MapOp::Fma => "fma",
            MapOp::Scale { .. } => "scale",
        }
    }

    /// Tile buffers: the result, and `c` for a multiply-add.
    fn tile_buffers(self) -> usize {
        if self == MapOp::Fma {
            2
        } else {
            1
        }
    }

    /// The order inputs are streamed into the tile buffers.
    fn passes(self) -> &'static [Pass] {
        match self {
            MapOp::Scale { .. } => &[Pass {
                operand: 0,
                action: Action::LoadScaled,
            }],
            MapOp::Fma => &[
                Pass {
                    operand: 0,
                    action: Action::Load(0),
                },
                Pass {
                    operand: 2,
                    action: Action::Load(1),
                },
                Pass {
                    operand: 1,
                    action: Action::Combine,
                },
            ],
            _ => &[
                Pass {
                    operand: 0,
                    action: Action::Load(0),
                },
                Pass {
                    operand: 1,
                    action: Action::Combine,
                },
            ],
        }
    }

    /// The binary operation on two elements.
    fn apply<T: StreamElement>(self, a: T, b: T) -> T {
        match self {
            MapOp::Add => a + b,
            MapOp::Sub => a - b,
            MapOp::Mul => a * b,
            MapOp::Div => a / b,
            MapOp::Min | MapOp::Max if a.is_nan() => a,
            MapOp::Min | MapOp::Max if b.is_nan() => b,
            MapOp::Min => {
                if b < a {
                    b
                } else {
                    a
                }
            }
            MapOp::Max => {
                if b > a {
                    b
                } else {
                    a
                }
            }
            MapOp::Fma | MapOp::Scale { .. } => {
                unreachable!("{} is not a binary operation", self.name())
            }
        }
    }
}

/// What a pass does with the part of an input chunk inside the tile.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// Copy into tile buffer `n`.
    Load(usize),
    /// `a * scale + offset` into tile buffer 0.
    LoadScaled,
    /// Combine with tile buffer 0 (and 1 for a multiply-add) into buffer 0.
    Combine,
}

/// One input streamed into the tile.
#[derive(Clone, Copy, Debug)]
struct Pass {
    operand: usize,
    action: Action,
}

/// An elementwise operation, planned.
pub struct MapJob<'a> {
    op: MapOp,
    inputs: Vec<&'a dyn ChunkSource>,
    output_dtype: DataType,
    compute: ComputeType,
    /// Output tile length along each axis.
    tile: Vec<u64>,
    memory: StreamMemory,
}

impl<'a> MapJob<'a> {
    /// Checks the inputs (as many as `op` takes, one shape, one dtype, in
    /// the order `a, b, c`) and plans `op` for `budget_bytes`; the output
    /// is stored as `output_dtype`.
    pub fn new(
        op: MapOp,
        inputs: &[&'a dyn ChunkSource],
        output_dtype: DataType,
        budget_bytes: u64,
    ) -> Result<Self, StreamError> {
        if inputs.len() != op.arity() {
            return Err(StreamError::Arity {
                op: op.name(),
                expected: op.arity(),
                found: inputs.len(),
            });
        }
        let first = inputs[0];
        check_not_empty(first)?;
        for other in &inputs[1..] {
            if other.meta().shape() != first.meta().shape() {
                return Err(StreamError::ShapeMismatch {
                    first: first.name().to_string(),
                    first_shape: first.meta().shape().to_vec(),
                    second: other.name().to_string(),
                    second_shape: other.meta().shape().to_vec(),
                });
            }
            if other.meta().dtype() != first.meta().dtype() {
                return Err(StreamError::DtypeMismatch {
                    first: first.name().to_string(),
                    first_dtype: first.meta().dtype(),
                    second: other.name().to_string(),
                    second_dtype: other.meta().dtype(),
                });
            }
        }
        let dtype = first.meta().dtype();
        let compute = compute_type_for(dtype, dtype);
        let compute_bytes = compute.dtype().size_bytes() as u64;
        let needs = BufferNeeds::for_sources(
            inputs,
            compute.dtype(),
            vec![compute_bytes; op.tile_buffers()],
            output_dtype.size_bytes() as u64,
        );
        let (tile, memory) = plan_tile(
            first.meta().shape(),
            first.meta().chunk_shape(),
            &needs,
            budget_bytes,
        )?;
        let job = MapJob {
            op,
            inputs: inputs.to_vec(),
            output_dtype,
            compute,
            tile,
            memory,
        };
        job.check_invariants();
        Ok(job)
    }

    /// Panics (printing the values) if the plan is inconsistent: as many
    /// inputs as the op takes, one shape, a tile within the shape, and the
    /// budget covering the working set.
    pub fn check_invariants(&self) {
        assert_eq!(self.inputs.len(), self.op.arity(), "{:?}", self.op);
        let shape = self.inputs[0].meta().shape();
        for input in &self.inputs {
            assert_eq!(input.meta().shape(), shape, "input {}", input.name());
        }
        assert_eq!(
            self.tile.len(),
            shape.len(),
            "tile {:?} for {shape:?}",
            self.tile
        );
        for (d, (&tile, &len)) in self.tile.iter().zip(shape).enumerate() {
            assert!(
                (1..=len).contains(&tile),
                "tile {tile} along axis {d} of length {len}"
            );
        }
        assert!(
            self.memory.cache_bytes > 0 && self.memory.working_bytes() < self.memory.total_bytes(),
            "memory plan {:?}",
            self.memory
        );
    }

    /// The memory plan.
    pub fn memory(&self) -> StreamMemory {
        self.memory
    }

    /// The compute type.
    pub fn compute_type(&self) -> ComputeType {
        self.compute
    }

    /// The output's geometry: the inputs' shape, chunked as the output
    /// tiles (the first input's chunks when the budget allows), of the
    /// output dtype. Create the destination with it.
    pub fn output_meta(&self) -> ArrayMeta {
        ArrayMeta::new(
            self.inputs[0].meta().shape().to_vec(),
            self.tile.clone(),
            self.output_dtype,
        )
        .expect("the inputs' shape with tiles no longer than it is valid")
    }

    fn tile_counts(&self) -> Vec<std::ops::Range<u64>> {
        self.inputs[0]
            .meta()
            .shape()
            .iter()
            .zip(&self.tile)
            .map(|(&len, &tile)| 0..len.div_ceil(tile))
            .collect()
    }

    fn tile_ranges(&self, tile_index: &[u64]) -> Vec<std::ops::Range<u64>> {
        self.inputs[0]
            .meta()
            .shape()
            .iter()
            .zip(&self.tile)
            .zip(tile_index)
            .map(|((&len, &tile), &index)| index * tile..((index + 1) * tile).min(len))
            .collect()
    }

    /// Calls `f` with the key and grid index of every chunk of input
    /// `operand` that meets `ranges`, in C order of its grid.
    fn for_each_chunk(
        &self,
        operand: usize,
        ranges: &[std::ops::Range<u64>],
        mut f: impl FnMut(ChunkKey, &[u64]),
    ) {
        let meta = self.inputs[operand].meta();
        for_each_index(&chunk_ranges(meta, ranges), |grid| {
            f(chunk_key(operand, meta.grid_index_to_linear(grid)), grid)
        });
    }

    /// The chunk keys in the order a run pins them.
    pub fn access_sequence(&self) -> Vec<ChunkKey> {
        let mut keys = Vec::new();
        for_each_index(&self.tile_counts(), |tile_index| {
            let ranges = self.tile_ranges(tile_index);
            for pass in self.op.passes() {
                self.for_each_chunk(pass.operand, &ranges, |key, _| keys.push(key));
            }
        });
        keys
    }

    /// Runs the operation, writing every output chunk to `out` (created
    /// with [`MapJob::output_meta`]) and finishing it. `config` must have
    /// the budget the job was planned for; its `gemm_threads` is not used.
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
        let tile_elements: u64 = self.tile.iter().product();
        let setup = Setup {
            sources: &self.inputs,
            accesses: self.access_sequence(),
            memory: self.memory,
            tile_buffer_bytes: vec![tile_elements * size_of::<T>() as u64; self.op.tile_buffers()],
            staging_bytes: tile_elements * self.output_dtype.size_bytes() as u64,
            output_meta: self.output_meta(),
            job: format!(
                "{} of {}",
                self.op.name(),
                self.inputs
                    .iter()
                    .map(|input| input.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut body = |stream: &mut Stream<'_, '_>| -> Result<(), StreamError> {
            let mut outcome = Ok(());
            for_each_index(&self.tile_counts(), |tile_index| {
                if outcome.is_ok() {
                    outcome = self.map_tile::<T>(stream, tile_index);
                }
            });
            outcome
        };
        drive::<T>(&setup, engine, out, config, progress, &mut body)
    }

    /// Streams the inputs' chunks meeting output tile `tile_index` into the
    /// tile buffers and writes the result.
    fn map_tile<T: StreamElement>(
        &self,
        stream: &mut Stream<'_, '_>,
        tile_index: &[u64],
    ) -> Result<(), StreamError> {
        let ranges = self.tile_ranges(tile_index);
        let tile_shape: Vec<u64> = ranges.iter().map(|r| r.end - r.start).collect();
        let tile_start: Vec<u64> = ranges.iter().map(|r| r.start).collect();
        let tile_strides = c_strides(&tile_shape);
        let elements = tile_shape.iter().product::<u64>() as usize;
        let (scale, offset) = match self.op {
            MapOp::Scale { scale, offset } => (T::from_f64(scale), T::from_f64(offset)),
            _ => (T::default(), T::default()),
        };
        for pass in self.op.passes() {
            let meta = self.inputs[pass.operand].meta();
            let mut chunks = Vec::new();
            self.for_each_chunk(pass.operand, &ranges, |key, grid| {
                chunks.push((key, grid.to_vec()))
            });
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
                let (result, rest) = stream.tiles.split_at_mut(1);
                let result = typed::<T>(&mut result[0], elements);
                let mut addend = rest.first_mut().map(|buffer| typed::<T>(buffer, elements));
                for_each_row(
                    &box_start,
                    &box_shape,
                    &region.start,
                    &region.shape,
                    &tile_start,
                    &tile_strides,
                    |src, dst, len| {
                        let row = &data[src..src + len];
                        match pass.action {
                            Action::Load(0) => result[dst..dst + len].copy_from_slice(row),
                            Action::Load(_) => addend.as_mut().expect("a second tile buffer")
                                [dst..dst + len]
                                .copy_from_slice(row),
                            Action::LoadScaled => {
                                for (r, &x) in result[dst..dst + len].iter_mut().zip(row) {
                                    *r = x.mul_add(scale, offset);
                                }
                            }
                            Action::Combine if self.op == MapOp::Fma => {
                                let c = &addend.as_ref().expect("c's tile buffer")[dst..dst + len];
                                for ((r, &b), &c) in
                                    result[dst..dst + len].iter_mut().zip(row).zip(c)
                                {
                                    *r = r.mul_add(b, c);
                                }
                            }
                            Action::Combine => {
                                for (r, &b) in result[dst..dst + len].iter_mut().zip(row) {
                                    *r = self.op.apply(*r, b);
                                }
                            }
                        }
                    },
                );
            }
        }
        let stored_bytes = elements * self.output_dtype.size_bytes();
        {
            let result = typed::<T>(&mut stream.tiles[0], elements);
            let staging = &mut stream.staging.as_bytes_mut()[..stored_bytes];
            encode_elements(self.output_dtype, result, staging);
        }
        stream.write_staged(tile_index, stored_bytes)
    }
}
