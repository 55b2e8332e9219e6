//! `strata-array`: chunked N-d arrays for Strata's out-of-core engine (layer 5).
//!
//! Every array is read and written one chunk at a time, by chunk grid index,
//! with its shape, chunk shape and dtype known up front:
//!
//! - [`meta`]: [`ArrayMeta`], the regular chunk grid and its
//!   ragged edge chunks.
//! - [`dtype`]: the stored element types (`f32`, `f64`, `i32`, `i64`, `u8`,
//!   `f16`, `bf16`) and the type each is computed in.
//! - [`chunk`]: the [`ChunkSource`] /
//!   [`ChunkSink`] traits, and conversion of chunks to and
//!   from `f32` / `f64`.
//! - [`digest`]: a checksum of an array's elements in C order, the same
//!   whatever the chunks and codecs (for checks against other readers).
//! - [`mem`]: arrays in memory, for tests.
//! - [`npy`]: NPY files (versions 1–3 read, 1 written), memory-mapped or read
//!   with positional reads.
//! - [`zarr`]: Zarr v3 on the local filesystem through `zarrs` (`bytes`,
//!   `zstd`, `crc32c`, sharding), readable by zarr-python, xarray and Dask.
//! - [`error`]: [`ArrayError`], which names the array, the
//!   chunk and what was expected.
//!
//! Buffers hold little-endian elements; the crate assumes a little-endian
//! host (it refuses to build on others), so no buffer is ever byte-swapped.
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(target_endian = "big")]
compile_error!(
    "strata-array assumes a little-endian host: chunk buffers are used as little-endian in place"
);

pub mod chunk;
pub mod digest;
pub mod dtype;
pub mod error;
pub mod mem;
pub mod meta;
pub mod npy;
pub mod zarr;

pub use chunk::{ChunkSink, ChunkSource};
pub use dtype::DataType;
pub use error::ArrayError;
pub use meta::ArrayMeta;
