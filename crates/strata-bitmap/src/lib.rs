//! `strata-bitmap`: the block allocator under Strata's memory pool (slab
//! slots) and disk tier (extents, spare blocks).
//!
//! - [`BlockBitmap`]: single-threaded, O(1)-ish single-block allocation
//!   and O(log n) contiguous extents over a hierarchical bitmap, with
//!   reserved ranges, next-fit hints, exact error values and
//!   incrementally kept statistics.
//! - [`BlockCache`]: a magazine of pre-claimed blocks in front of a
//!   [`BlockBitmap`] for the single-block fast path.
//! - [`SharedBitmap`]: the thread-safe form, sharded with one lock per
//!   shard and a per-thread home shard, with [`SharedCache`] magazines.
//! - Serialization to a checksummed byte image ([`BlockBitmap::to_bytes`],
//!   [`BlockBitmap::from_bytes`]) so the disk tier can persist it; the
//!   layout is in `docs/bitmap-format.md`.
//!
//! No `unsafe` code: `#![forbid(unsafe_code)]`.
//!
//! ```
//! use strata_bitmap::{BlockBitmap, BitmapError, Block};
//!
//! let mut bitmap = BlockBitmap::new(1 << 20)?;
//! bitmap.reserve(0..64)?;
//! let a = bitmap.alloc_extent(8).unwrap();
//! let b = bitmap.alloc_extent(8).unwrap();
//! assert_eq!(b.start, a.end()); // next-fit: sequential requests stay sequential
//! assert_eq!(bitmap.free(Block(3)), Err(BitmapError::Reserved { block: 3 }));
//! let stats = bitmap.stats();
//! assert_eq!(stats.allocated_blocks + stats.free_blocks + stats.reserved_blocks, 1 << 20);
//! # Ok::<(), BitmapError>(())
//! ```
#![forbid(unsafe_code)]

mod bitmap;
mod cache;
mod error;
mod image;
mod runs;
mod shared;
mod summary;

pub use bitmap::{BlockBitmap, EAGER_REFRESH_CHUNKS_MAX};
pub use cache::BlockCache;
pub use error::{BitmapError, ImageError};
pub use image::{IMAGE_HEADER_BYTES, IMAGE_MAGIC, IMAGE_VERSION};
pub use shared::{SharedBitmap, SharedCache, SHARD_BLOCKS_MIN};

use std::ops::Range;

/// Blocks per bitmap word.
pub const WORD_BITS: u64 = 64;
/// Words per chunk.
pub const CHUNK_WORDS: usize = 8;
/// Blocks per chunk: the unit of the summary level and of run summaries.
pub const CHUNK_BLOCKS: u64 = WORD_BITS * CHUNK_WORDS as u64;
/// Largest supported capacity (2^40 blocks; 128 GiB of bitmap words).
pub const CAPACITY_BLOCKS_MAX: u64 = 1 << 40;
/// Words a [`BlockCache`] magazine holds at most.
pub const MAGAZINE_WORDS: usize = 8;
/// A [`BlockCache`] refill stops once it holds this many blocks.
pub const MAGAZINE_REFILL_BLOCKS: u64 = 64;

const _: () = assert!(CHUNK_BLOCKS == 512);
const _: () = assert!(CAPACITY_BLOCKS_MAX.is_multiple_of(CHUNK_BLOCKS));
const _: () = assert!(MAGAZINE_REFILL_BLOCKS <= MAGAZINE_WORDS as u64 * WORD_BITS);

/// End of the range `start..start + len` if it is non-empty and lies within
/// `capacity_blocks`; otherwise the error naming what is wrong.
pub(crate) fn check_range(start: u64, len: u64, capacity_blocks: u64) -> Result<u64, BitmapError> {
    if len == 0 {
        return Err(BitmapError::ZeroLength);
    }
    match start.checked_add(len) {
        Some(end) if end <= capacity_blocks => Ok(end),
        _ => Err(BitmapError::OutOfRange {
            block: start.max(capacity_blocks),
            capacity_blocks,
        }),
    }
}

/// A block index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block(pub u64);

impl Block {
    /// The block's index.
    pub fn index(self) -> u64 {
        self.0
    }
}

/// A run of `len` contiguous blocks starting at `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub len: u64,
}

impl Extent {
    /// One past the last block.
    pub fn end(self) -> u64 {
        self.start + self.len
    }

    /// The blocks as a range.
    pub fn blocks(self) -> Range<u64> {
        self.start..self.end()
    }
}

/// A point-in-time view of a bitmap's accounting.
///
/// `allocated_blocks + free_blocks + reserved_blocks == capacity_blocks`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BitmapStats {
    /// Total blocks.
    pub capacity_blocks: u64,
    /// Blocks in reserved ranges.
    pub reserved_blocks: u64,
    /// Blocks handed out (including those held in caches).
    pub allocated_blocks: u64,
    /// Blocks that can be handed out.
    pub free_blocks: u64,
    /// Longest run of contiguous free blocks.
    pub largest_free_run_blocks: u64,
    /// `1 - largest_free_run_blocks / free_blocks` (0 when nothing is free):
    /// 0 means all free space is one run, near 1 means it is scattered.
    pub fragmentation: f64,
}

impl BitmapStats {
    fn new(
        capacity_blocks: u64,
        reserved_blocks: u64,
        free_blocks: u64,
        largest_free_run_blocks: u64,
    ) -> Self {
        let fragmentation = if free_blocks == 0 {
            0.0
        } else {
            1.0 - largest_free_run_blocks as f64 / free_blocks as f64
        };
        BitmapStats {
            capacity_blocks,
            reserved_blocks,
            allocated_blocks: capacity_blocks - reserved_blocks - free_blocks,
            free_blocks,
            largest_free_run_blocks,
            fragmentation,
        }
    }
}
