//! [`ArrayError`]: every refusal names the array (its path or name), the
//! chunk grid index where one is involved, and what was expected against
//! what was found.

use std::fmt;
use std::io;

use crate::dtype::DataType;
use crate::meta::MetaError;

/// An error reading, writing, opening or creating a chunked array.
#[derive(Debug)]
#[non_exhaustive]
pub enum ArrayError {
    /// No array at the path (no file, or a directory without `zarr.json`).
    NotFound {
        /// The path looked at.
        array: String,
        /// What was missing.
        detail: String,
    },
    /// Creating an array where one already exists.
    AlreadyExists {
        /// The path.
        array: String,
    },
    /// The shape or chunk shape is invalid.
    InvalidMeta {
        /// The array.
        array: String,
        /// What is wrong with it.
        source: MetaError,
    },
    /// The stored element type is not one this crate supports.
    UnsupportedDtype {
        /// The array.
        array: String,
        /// The type as the file names it.
        found: String,
        /// The types accepted here.
        expected: String,
    },
    /// A codec (or codec configuration) this crate does not read or write.
    UnsupportedCodec {
        /// The array.
        array: String,
        /// The codec as the metadata names it.
        codec: String,
    },
    /// A layout this crate does not handle (Fortran order, big-endian, a
    /// scalar, a chunk grid other than regular...).
    UnsupportedLayout {
        /// The array.
        array: String,
        /// What the file has and what would be needed.
        detail: String,
    },
    /// The array's metadata (an NPY header, a `zarr.json`) cannot be parsed
    /// or contradicts the file.
    CorruptMetadata {
        /// The array.
        array: String,
        /// What is wrong.
        detail: String,
    },
    /// A chunk's stored bytes fail their checksum or do not decode.
    CorruptChunk {
        /// The array.
        array: String,
        /// The chunk's grid index.
        chunk: Vec<u64>,
        /// What failed.
        detail: String,
    },
    /// A grid index outside the chunk grid (or of the wrong rank).
    ChunkOutOfGrid {
        /// The array.
        array: String,
        /// The index asked for.
        chunk: Vec<u64>,
        /// The grid's shape.
        grid_shape: Vec<u64>,
    },
    /// A chunk buffer whose length is not the chunk's ragged shape times the
    /// element size.
    BufferLength {
        /// The array.
        array: String,
        /// The chunk's grid index.
        chunk: Vec<u64>,
        /// The chunk's ragged shape.
        chunk_shape: Vec<u64>,
        /// Bytes the chunk has.
        expected_bytes: usize,
        /// Bytes the buffer has.
        found_bytes: usize,
    },
    /// Operands (or an operand and what a caller expects) differ in shape.
    ShapeMismatch {
        /// The array.
        array: String,
        /// The shape expected.
        expected: Vec<u64>,
        /// The array's shape.
        found: Vec<u64>,
    },
    /// Operands (or an operand and what a caller expects) differ in dtype.
    DtypeMismatch {
        /// The array.
        array: String,
        /// The type expected.
        expected: DataType,
        /// The array's type.
        found: DataType,
    },
    /// A Strata array whose writer never called `finish`.
    Incomplete {
        /// The array.
        array: String,
    },
    /// A write (or a second `finish`) after `finish`.
    Finished {
        /// The array.
        array: String,
    },
    /// An I/O error from the operating system.
    Io {
        /// The array.
        array: String,
        /// The chunk, if the operation concerned one.
        chunk: Option<Vec<u64>>,
        /// What was being done.
        operation: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Any other error from the Zarr library, with its message.
    Zarr {
        /// The array.
        array: String,
        /// The chunk, if the operation concerned one.
        chunk: Option<Vec<u64>>,
        /// What was being done.
        operation: &'static str,
        /// The library's message.
        detail: String,
    },
}

impl ArrayError {
    /// The array (path or name) the error concerns.
    pub fn array(&self) -> &str {
        match self {
            ArrayError::NotFound { array, .. }
            | ArrayError::AlreadyExists { array }
            | ArrayError::InvalidMeta { array, .. }
            | ArrayError::UnsupportedDtype { array, .. }
            | ArrayError::UnsupportedCodec { array, .. }
            | ArrayError::UnsupportedLayout { array, .. }
            | ArrayError::CorruptMetadata { array, .. }
            | ArrayError::CorruptChunk { array, .. }
            | ArrayError::ChunkOutOfGrid { array, .. }
            | ArrayError::BufferLength { array, .. }
            | ArrayError::ShapeMismatch { array, .. }
            | ArrayError::DtypeMismatch { array, .. }
            | ArrayError::Incomplete { array }
            | ArrayError::Finished { array }
            | ArrayError::Io { array, .. }
            | ArrayError::Zarr { array, .. } => array,
        }
    }
}

impl fmt::Display for ArrayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArrayError::NotFound { array, detail } => {
                write!(f, "array {array}: not found ({detail})")
            }
            ArrayError::AlreadyExists { array } => {
                write!(f, "array {array}: already exists; refusing to overwrite it")
            }
            ArrayError::InvalidMeta { array, source } => write!(f, "array {array}: {source}"),
            ArrayError::UnsupportedDtype {
                array,
                found,
                expected,
            } => write!(
                f,
                "array {array}: unsupported data type {found:?} (expected one of {expected})"
            ),
            ArrayError::UnsupportedCodec { array, codec } => write!(
                f,
                "array {array}: unsupported codec {codec} (supported: bytes (little-endian), \
                 zstd, crc32c, sharding_indexed)"
            ),
            ArrayError::UnsupportedLayout { array, detail } => {
                write!(f, "array {array}: unsupported layout: {detail}")
            }
            ArrayError::CorruptMetadata { array, detail } => {
                write!(f, "array {array}: corrupt metadata: {detail}")
            }
            ArrayError::CorruptChunk {
                array,
                chunk,
                detail,
            } => write!(f, "array {array}: chunk {chunk:?} is corrupt: {detail}"),
            ArrayError::ChunkOutOfGrid {
                array,
                chunk,
                grid_shape,
            } => write!(
                f,
                "array {array}: chunk {chunk:?} is outside the chunk grid {grid_shape:?}"
            ),
            ArrayError::BufferLength {
                array,
                chunk,
                chunk_shape,
                expected_bytes,
                found_bytes,
            } => write!(
                f,
                "array {array}: chunk {chunk:?} of shape {chunk_shape:?} needs a buffer of \
                 {expected_bytes} bytes, got {found_bytes}"
            ),
            ArrayError::ShapeMismatch {
                array,
                expected,
                found,
            } => write!(f, "array {array}: shape {found:?}, expected {expected:?}"),
            ArrayError::DtypeMismatch {
                array,
                expected,
                found,
            } => write!(f, "array {array}: data type {found}, expected {expected}"),
            ArrayError::Incomplete { array } => write!(
                f,
                "array {array}: incomplete (its writer did not finish; attribute \
                 strata.complete is false)"
            ),
            ArrayError::Finished { array } => {
                write!(f, "array {array}: already finished; no more writes")
            }
            ArrayError::Io {
                array,
                chunk,
                operation,
                source,
            } => match chunk {
                Some(chunk) => write!(f, "array {array}: chunk {chunk:?}: {operation}: {source}"),
                None => write!(f, "array {array}: {operation}: {source}"),
            },
            ArrayError::Zarr {
                array,
                chunk,
                operation,
                detail,
            } => match chunk {
                Some(chunk) => write!(f, "array {array}: chunk {chunk:?}: {operation}: {detail}"),
                None => write!(f, "array {array}: {operation}: {detail}"),
            },
        }
    }
}

impl std::error::Error for ArrayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArrayError::InvalidMeta { source, .. } => Some(source),
            ArrayError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
