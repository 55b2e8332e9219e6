//! [`RegionError`]: what went wrong, naming the file, the byte offset or the
//! layer, and what was expected.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Every failure of this crate. A refused operation changes nothing.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegionError {
    /// An I/O error from the operating system.
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The file is shorter than its structure says.
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the structure needs.
        needed_bytes: u64,
        /// Bytes the file has.
        file_bytes: u64,
    },
    /// The header is not valid: bad length field, JSON, field or value.
    Header {
        /// The file.
        path: PathBuf,
        /// Byte offset in the file where the problem is (or starts).
        offset: u64,
        /// What is wrong and what was expected.
        detail: String,
    },
    /// A layer's entry is not valid: dtype, shape, offsets, size, overlap,
    /// name.
    Layer {
        /// The file.
        path: PathBuf,
        /// The layer.
        layer: String,
        /// What is wrong and what was expected.
        detail: String,
    },
    /// A layer's bytes do not match the checksum its header records.
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The layer.
        layer: String,
        /// The recorded xxh3-64.
        expected: u64,
        /// The xxh3-64 of the bytes in the file.
        actual: u64,
    },
    /// No layer of this name.
    NotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        layer: String,
    },
    /// A typed view was asked of a layer that cannot give it.
    TypedView {
        /// The layer.
        layer: String,
        /// What is wrong (dtype, alignment or length), with the numbers.
        detail: String,
    },
    /// A layer the builder was given is not valid.
    InvalidLayer {
        /// The layer.
        layer: String,
        /// What is wrong.
        detail: String,
    },
    /// An access hint the system refused.
    Advise {
        /// The file.
        path: PathBuf,
        /// The hint and the system's error.
        detail: String,
    },
}

impl RegionError {
    pub(crate) fn io(path: impl Into<PathBuf>, operation: &'static str, source: io::Error) -> Self {
        RegionError::Io {
            path: path.into(),
            operation,
            source,
        }
    }
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionError::Io {
                path,
                operation,
                source,
            } => write!(f, "region {}: {operation}: {source}", path.display()),
            RegionError::Truncated {
                path,
                needed_bytes,
                file_bytes,
            } => write!(
                f,
                "region {}: truncated: needs {needed_bytes} bytes, the file has {file_bytes}",
                path.display()
            ),
            RegionError::Header {
                path,
                offset,
                detail,
            } => write!(
                f,
                "region {}: bad header at byte {offset}: {detail}",
                path.display()
            ),
            RegionError::Layer {
                path,
                layer,
                detail,
            } => write!(f, "region {}: layer {layer:?}: {detail}", path.display()),
            RegionError::ChecksumMismatch {
                path,
                layer,
                expected,
                actual,
            } => write!(
                f,
                "region {}: layer {layer:?} is corrupt: xxh3 {actual:016x}, the header records {expected:016x}",
                path.display()
            ),
            RegionError::NotFound { path, layer } => {
                write!(f, "region {}: no layer {layer:?}", path.display())
            }
            RegionError::TypedView { layer, detail } => {
                write!(f, "layer {layer:?}: no typed view: {detail}")
            }
            RegionError::InvalidLayer { layer, detail } => {
                write!(f, "layer {layer:?} cannot be added: {detail}")
            }
            RegionError::Advise { path, detail } => {
                write!(f, "region {}: access hint refused: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for RegionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RegionError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
