//! The [`ChunkSource`] / [`ChunkSink`] interface and element conversion.
//!
//! A chunk buffer is exactly the chunk's ragged shape (see
//! [`ArrayMeta::chunk_shape_at`]) in C order, little-endian elements of the
//! *stored* dtype. The caller owns the buffer, so the engine can read into
//! buffers taken from its pool without another allocation.
//!
//! Kernels compute in `f32` or `f64`: [`read_chunk_as`] reads a chunk and
//! converts it (into the caller's slice; a same-type read goes straight into
//! it), [`decode_elements`] and [`encode_elements`] convert byte buffers.
//!
//! ```
//! use strata_array::chunk::{read_chunk_as, ChunkSink, ChunkSource};
//! use strata_array::dtype::DataType;
//! use strata_array::mem::MemArray;
//! use strata_array::meta::ArrayMeta;
//!
//! let meta = ArrayMeta::new(vec![3, 5], vec![2, 2], DataType::F16).unwrap();
//! let array = MemArray::zeroed("x", meta);
//! // Chunk [1, 2] is the ragged corner: 1 x 1 element.
//! let one_half = half::f16::from_f32(1.5).to_bits().to_le_bytes();
//! array.write_chunk(&[1, 2], &one_half).unwrap();
//! array.finish().unwrap();
//!
//! let mut scratch = Vec::new();
//! let mut values = [0f32; 1];
//! read_chunk_as(&array, &[1, 2], &mut scratch, &mut values).unwrap();
//! assert_eq!(values, [1.5]);
//! ```

use half::{bf16, f16};

use crate::dtype::{ComputeType, DataType};
use crate::error::ArrayError;
use crate::meta::ArrayMeta;

/// An array whose chunks can be read by grid index.
pub trait ChunkSource: Send + Sync {
    /// Shape, chunk shape and dtype.
    fn meta(&self) -> &ArrayMeta;

    /// The array's path or name, used in errors.
    fn name(&self) -> &str;

    /// Reads the chunk at `grid_index` into `out`, which must be exactly
    /// [`ArrayMeta::chunk_len_bytes_at`] bytes: the ragged chunk in C order,
    /// little-endian elements of the stored dtype.
    fn read_chunk(&self, grid_index: &[u64], out: &mut [u8]) -> Result<(), ArrayError>;
}

/// An array whose chunks can be written by grid index.
///
/// A destination is *incomplete* until [`finish`](ChunkSink::finish)
/// succeeds; each implementation documents how that shows on disk and what
/// its readers do with an incomplete array. Chunks never written read as
/// zero (the fill value).
pub trait ChunkSink: Send + Sync {
    /// Shape, chunk shape and dtype.
    fn meta(&self) -> &ArrayMeta;

    /// The array's path or name, used in errors.
    fn name(&self) -> &str;

    /// Writes the chunk at `grid_index` from `data`, which must be exactly
    /// [`ArrayMeta::chunk_len_bytes_at`] bytes (ragged shape, C order,
    /// little-endian stored dtype). Writing a chunk again replaces it.
    fn write_chunk(&self, grid_index: &[u64], data: &[u8]) -> Result<(), ArrayError>;

    /// Makes everything written durable and marks the array complete.
    /// Writes after it (and a second `finish`) are refused with
    /// [`ArrayError::Finished`].
    fn finish(&self) -> Result<(), ArrayError>;
}

/// Checks that `grid_index` is in the grid and `len_bytes` is the chunk's
/// length; the shared precondition of every `read_chunk` / `write_chunk`.
pub fn check_chunk_buffer(
    name: &str,
    meta: &ArrayMeta,
    grid_index: &[u64],
    len_bytes: usize,
) -> Result<(), ArrayError> {
    if !meta.contains_grid_index(grid_index) {
        return Err(ArrayError::ChunkOutOfGrid {
            array: name.to_string(),
            chunk: grid_index.to_vec(),
            grid_shape: meta.grid_shape(),
        });
    }
    let expected_bytes = meta.chunk_len_bytes_at(grid_index);
    if len_bytes != expected_bytes {
        return Err(ArrayError::BufferLength {
            array: name.to_string(),
            chunk: grid_index.to_vec(),
            chunk_shape: meta.chunk_shape_at(grid_index),
            expected_bytes,
            found_bytes: len_bytes,
        });
    }
    Ok(())
}

/// Checks that an operand has the shape another operand (or the caller)
/// needs.
pub fn check_shape(name: &str, meta: &ArrayMeta, expected: &[u64]) -> Result<(), ArrayError> {
    if meta.shape() == expected {
        Ok(())
    } else {
        Err(ArrayError::ShapeMismatch {
            array: name.to_string(),
            expected: expected.to_vec(),
            found: meta.shape().to_vec(),
        })
    }
}

/// Checks that an operand has the dtype another operand (or the caller)
/// needs.
pub fn check_dtype(name: &str, meta: &ArrayMeta, expected: DataType) -> Result<(), ArrayError> {
    if meta.dtype() == expected {
        Ok(())
    } else {
        Err(ArrayError::DtypeMismatch {
            array: name.to_string(),
            expected,
            found: meta.dtype(),
        })
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A type kernels compute in: `f32` or `f64`.
pub trait ComputeElement:
    sealed::Sealed + bytemuck::Pod + Default + PartialEq + std::fmt::Debug + Send + Sync
{
    /// Which compute type this is.
    const COMPUTE_TYPE: ComputeType;
    /// Converts from `f32` (exact for both types).
    fn from_f32(value: f32) -> Self;
    /// Converts from `f64`, rounding to nearest.
    fn from_f64(value: f64) -> Self;
    /// Converts from `i64`, rounding to nearest (once).
    fn from_i64(value: i64) -> Self;
    /// Widens to `f64` (exact).
    fn to_f64(self) -> f64;
}

impl ComputeElement for f32 {
    const COMPUTE_TYPE: ComputeType = ComputeType::F32;
    fn from_f32(value: f32) -> Self {
        value
    }
    fn from_f64(value: f64) -> Self {
        value as f32
    }
    fn from_i64(value: i64) -> Self {
        value as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl ComputeElement for f64 {
    const COMPUTE_TYPE: ComputeType = ComputeType::F64;
    fn from_f32(value: f32) -> Self {
        f64::from(value)
    }
    fn from_f64(value: f64) -> Self {
        value
    }
    fn from_i64(value: i64) -> Self {
        value as f64
    }
    fn to_f64(self) -> f64 {
        self
    }
}

fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(bytes);
    array
}

/// Converts little-endian elements of `dtype` in `bytes` to `out`.
///
/// Exact except where the target cannot hold the value: `f64` into `f32`
/// and `i64` beyond 2^24 (`f32`) or 2^53 (`f64`) round to nearest.
///
/// # Panics
/// If `bytes.len() != out.len() * dtype.size_bytes()`.
pub fn decode_elements<T: ComputeElement>(dtype: DataType, bytes: &[u8], out: &mut [T]) {
    let size = dtype.size_bytes();
    assert_eq!(
        bytes.len(),
        out.len() * size,
        "{} bytes of {dtype} for {} elements",
        bytes.len(),
        out.len()
    );
    let pairs = out.iter_mut().zip(bytes.chunks_exact(size));
    match dtype {
        DataType::F32 => pairs.for_each(|(o, b)| *o = T::from_f32(f32::from_le_bytes(le_array(b)))),
        DataType::F64 => pairs.for_each(|(o, b)| *o = T::from_f64(f64::from_le_bytes(le_array(b)))),
        DataType::I32 => {
            pairs.for_each(|(o, b)| *o = T::from_f64(f64::from(i32::from_le_bytes(le_array(b)))))
        }
        DataType::I64 => pairs.for_each(|(o, b)| *o = T::from_i64(i64::from_le_bytes(le_array(b)))),
        DataType::U8 => pairs.for_each(|(o, b)| *o = T::from_f32(f32::from(b[0]))),
        DataType::F16 => pairs.for_each(|(o, b)| {
            *o = T::from_f32(f16::from_bits(u16::from_le_bytes(le_array(b))).to_f32())
        }),
        DataType::BF16 => pairs.for_each(|(o, b)| {
            *o = T::from_f32(bf16::from_bits(u16::from_le_bytes(le_array(b))).to_f32())
        }),
    }
}

/// Narrows `value` to `f32` rounding to odd: truncate, then set the last
/// bit if anything was lost. A second rounding to a format with at most
/// 22 significand bits (f16 has 11, bf16 8) then rounds as if directly
/// from `value`. (half's own `from_f64` looks at the upper 32 bits only, so
/// it can lose the bits that break a tie.)
fn f64_to_f32_round_to_odd(value: f64) -> f32 {
    let nearest = value as f32;
    if !nearest.is_finite() || f64::from(nearest) == value {
        return nearest;
    }
    // Inexact: step toward zero if rounding went up in magnitude (nearest is
    // then nonzero, so its magnitude bits can go down by one).
    let truncated = if f64::from(nearest).abs() > value.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    f32::from_bits(truncated.to_bits() | 1)
}

/// Converts `values` to little-endian elements of `dtype` in `out`.
///
/// Floats round to nearest (even) in one step, also from `f64` to `f16` /
/// `bf16`. Integers take the nearest integer (ties to even), saturate at
/// the type's bounds, and NaN becomes 0.
///
/// # Panics
/// If `out.len() != values.len() * dtype.size_bytes()`.
pub fn encode_elements<T: ComputeElement>(dtype: DataType, values: &[T], out: &mut [u8]) {
    let size = dtype.size_bytes();
    assert_eq!(
        out.len(),
        values.len() * size,
        "{} bytes of {dtype} for {} elements",
        out.len(),
        values.len()
    );
    let pairs = values.iter().zip(out.chunks_exact_mut(size));
    // Widening to f64 is exact, so every conversion below rounds once.
    match dtype {
        DataType::F32 => {
            pairs.for_each(|(v, o)| o.copy_from_slice(&(v.to_f64() as f32).to_le_bytes()))
        }
        DataType::F64 => pairs.for_each(|(v, o)| o.copy_from_slice(&v.to_f64().to_le_bytes())),
        DataType::I32 => pairs.for_each(|(v, o)| {
            o.copy_from_slice(&(v.to_f64().round_ties_even() as i32).to_le_bytes())
        }),
        DataType::I64 => pairs.for_each(|(v, o)| {
            o.copy_from_slice(&(v.to_f64().round_ties_even() as i64).to_le_bytes())
        }),
        DataType::U8 => pairs.for_each(|(v, o)| o[0] = v.to_f64().round_ties_even() as u8),
        DataType::F16 => pairs.for_each(|(v, o)| {
            let narrowed = f64_to_f32_round_to_odd(v.to_f64());
            o.copy_from_slice(&f16::from_f32(narrowed).to_bits().to_le_bytes())
        }),
        DataType::BF16 => pairs.for_each(|(v, o)| {
            let narrowed = f64_to_f32_round_to_odd(v.to_f64());
            o.copy_from_slice(&bf16::from_f32(narrowed).to_bits().to_le_bytes())
        }),
    }
}

/// Checks the grid index and that a typed buffer has the chunk's element
/// count (the error reports bytes of `T`).
fn check_element_count<T>(
    name: &str,
    meta: &ArrayMeta,
    grid_index: &[u64],
    len: usize,
) -> Result<(), ArrayError> {
    if !meta.contains_grid_index(grid_index) {
        return Err(ArrayError::ChunkOutOfGrid {
            array: name.to_string(),
            chunk: grid_index.to_vec(),
            grid_shape: meta.grid_shape(),
        });
    }
    let expected = meta.chunk_element_count_at(grid_index) as usize;
    if len != expected {
        return Err(ArrayError::BufferLength {
            array: name.to_string(),
            chunk: grid_index.to_vec(),
            chunk_shape: meta.chunk_shape_at(grid_index),
            expected_bytes: expected * size_of::<T>(),
            found_bytes: len * size_of::<T>(),
        });
    }
    Ok(())
}

/// Reads the chunk at `grid_index` converted to `T` into `out` (exactly the
/// chunk's ragged element count). A chunk stored as `T` is read straight
/// into `out`; others go through `scratch`, which is resized as needed and
/// can be reused across calls.
pub fn read_chunk_as<T: ComputeElement>(
    source: &(impl ChunkSource + ?Sized),
    grid_index: &[u64],
    scratch: &mut Vec<u8>,
    out: &mut [T],
) -> Result<(), ArrayError> {
    let meta = source.meta();
    check_element_count::<T>(source.name(), meta, grid_index, out.len())?;
    let dtype = meta.dtype();
    if dtype == T::COMPUTE_TYPE.dtype() {
        // Little-endian bytes are the host's representation (see the crate
        // docs), so the chunk is read straight into `out`.
        return source.read_chunk(grid_index, bytemuck::cast_slice_mut(out));
    }
    scratch.clear();
    scratch.resize(meta.chunk_len_bytes_at(grid_index), 0);
    source.read_chunk(grid_index, scratch)?;
    decode_elements(dtype, scratch, out);
    Ok(())
}

/// Reads the chunk at `grid_index` converted to `T` into a new vector.
pub fn read_chunk_vec<T: ComputeElement>(
    source: &(impl ChunkSource + ?Sized),
    grid_index: &[u64],
) -> Result<Vec<T>, ArrayError> {
    let meta = source.meta();
    if !meta.contains_grid_index(grid_index) {
        return Err(ArrayError::ChunkOutOfGrid {
            array: source.name().to_string(),
            chunk: grid_index.to_vec(),
            grid_shape: meta.grid_shape(),
        });
    }
    let mut out = vec![T::default(); meta.chunk_element_count_at(grid_index) as usize];
    read_chunk_as(source, grid_index, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Converts `values` (exactly the chunk's ragged element count) to the
/// sink's dtype through `scratch` and writes the chunk at `grid_index`.
pub fn write_chunk_from<T: ComputeElement>(
    sink: &(impl ChunkSink + ?Sized),
    grid_index: &[u64],
    scratch: &mut Vec<u8>,
    values: &[T],
) -> Result<(), ArrayError> {
    let meta = sink.meta();
    check_element_count::<T>(sink.name(), meta, grid_index, values.len())?;
    scratch.clear();
    scratch.resize(values.len() * meta.dtype().size_bytes(), 0);
    encode_elements(meta.dtype(), values, scratch);
    sink.write_chunk(grid_index, scratch)
}
