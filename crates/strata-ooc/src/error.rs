//! The engine's error type.

use std::fmt;

use strata_pool::PoolError;

use crate::policy::ChunkKey;

/// Errors of the engine.
#[non_exhaustive]
#[derive(Debug)]
pub enum OocError {
    /// No room: everything resident is pinned or loading.
    CacheFull {
        /// The chunk that needed room.
        key: ChunkKey,
        /// Bytes it needs.
        needed_bytes: u64,
        /// The manager's capacity.
        capacity_bytes: u64,
        /// Bytes held by pinned or loading entries.
        pinned_bytes: u64,
    },
    /// The pool refused the buffer (budget exhausted or out of memory).
    Pool {
        /// The chunk.
        key: ChunkKey,
        /// The pool's error.
        source: PoolError,
    },
    /// A source could not produce a chunk.
    Source {
        /// The chunk.
        key: ChunkKey,
        /// What went wrong, with the array and chunk named.
        detail: String,
    },
    /// The spill target failed.
    Spill {
        /// The chunk.
        key: ChunkKey,
        /// What went wrong.
        detail: String,
    },
    /// The disk tier has no room for a spilled chunk (its cap is reached,
    /// or no run of free blocks is long enough).
    SpillFull {
        /// The chunk being spilled.
        key: ChunkKey,
        /// Bytes the record needs on disk (whole blocks).
        asked_bytes: u64,
        /// Bytes the disk tier has left (under its cap, or free blocks).
        left_bytes: u64,
        /// The disk tier's cap in bytes.
        cap_bytes: u64,
    },
    /// An intermediate was asked for that was never written.
    UnknownChunk {
        /// The chunk.
        key: ChunkKey,
    },
    /// The job cannot be planned (operands, spec or budget).
    Plan {
        /// What is wrong, naming the arrays and sizes.
        detail: String,
    },
    /// The destination refused a write or could not be finished.
    Sink {
        /// The destination's error.
        detail: String,
    },
}

impl fmt::Display for OocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OocError::CacheFull {
                key,
                needed_bytes,
                capacity_bytes,
                pinned_bytes,
            } => write!(
                f,
                "chunk cache full: {key} needs {needed_bytes} bytes but {pinned_bytes} of the cache's {capacity_bytes} bytes are pinned or loading"
            ),
            OocError::Pool { key, source } => write!(f, "buffer for {key}: {source}"),
            OocError::Source { key, detail } => write!(f, "reading {key}: {detail}"),
            OocError::Spill { key, detail } => write!(f, "spill of {key}: {detail}"),
            OocError::SpillFull {
                key,
                asked_bytes,
                left_bytes,
                cap_bytes,
            } => write!(
                f,
                "disk tier full spilling {key}: asked for {asked_bytes} bytes, {left_bytes} bytes \
                 left of its {cap_bytes}-byte cap"
            ),
            OocError::UnknownChunk { key } => {
                write!(f, "{key} is neither resident, spilled, nor readable from a source")
            }
            OocError::Plan { detail } => write!(f, "cannot plan the job: {detail}"),
            OocError::Sink { detail } => write!(f, "writing the result: {detail}"),
        }
    }
}

impl std::error::Error for OocError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OocError::Pool { source, .. } => Some(source),
            _ => None,
        }
    }
}
