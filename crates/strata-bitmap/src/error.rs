//! Typed errors of the bitmap allocator and of its serialized image.

use std::fmt;

/// Why a bitmap operation was refused. A refused operation changes nothing.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitmapError {
    /// A bitmap must hold at least one block.
    CapacityZero,
    /// The requested capacity exceeds [`crate::CAPACITY_BLOCKS_MAX`].
    CapacityTooLarge {
        /// Blocks asked for.
        requested_blocks: u64,
        /// The largest supported capacity.
        max_blocks: u64,
    },
    /// A block (or the end of an extent or range) lies past the capacity.
    OutOfRange {
        /// The first offending block index.
        block: u64,
        /// The bitmap's capacity in blocks.
        capacity_blocks: u64,
    },
    /// The block is not allocated: a double free, or a block never handed out.
    NotAllocated {
        /// The first block of the request that was free.
        block: u64,
    },
    /// The block belongs to a reserved range and can never be freed.
    Reserved {
        /// The first reserved block of the request.
        block: u64,
    },
    /// An extent or range of zero blocks.
    ZeroLength,
    /// A range asked to be reserved holds a block that is currently allocated.
    ReserveInUse {
        /// The first allocated block of the range.
        block: u64,
    },
    /// No free block, or no run of free blocks long enough.
    NoSpace {
        /// Contiguous blocks asked for.
        requested_blocks: u64,
        /// Free blocks in total.
        free_blocks: u64,
        /// The longest run of free blocks that could serve a request.
        largest_free_run_blocks: u64,
    },
}

impl fmt::Display for BitmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BitmapError::CapacityZero => write!(f, "bitmap capacity must be at least 1 block"),
            BitmapError::CapacityTooLarge {
                requested_blocks,
                max_blocks,
            } => write!(
                f,
                "bitmap capacity of {requested_blocks} blocks exceeds the maximum of {max_blocks}"
            ),
            BitmapError::OutOfRange {
                block,
                capacity_blocks,
            } => write!(
                f,
                "block {block} is out of range (capacity {capacity_blocks} blocks)"
            ),
            BitmapError::NotAllocated { block } => {
                write!(
                    f,
                    "block {block} is not allocated (double free or never allocated)"
                )
            }
            BitmapError::Reserved { block } => {
                write!(f, "block {block} is reserved and cannot be freed")
            }
            BitmapError::ZeroLength => write!(f, "extent or range of zero blocks"),
            BitmapError::ReserveInUse { block } => {
                write!(f, "cannot reserve block {block}: it is allocated")
            }
            BitmapError::NoSpace {
                requested_blocks,
                free_blocks,
                largest_free_run_blocks,
            } => write!(
                f,
                "no run of {requested_blocks} free blocks ({free_blocks} free in total, \
                 longest free run {largest_free_run_blocks})"
            ),
        }
    }
}

impl std::error::Error for BitmapError {}

/// Why a serialized bitmap image was rejected. Nothing is built from a
/// rejected image.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The image ends before a field it must contain.
    Truncated {
        /// What was being read.
        field: &'static str,
        /// Byte offset where the field starts.
        offset: u64,
        /// Bytes the image needs up to the end of that field.
        needed_bytes: u64,
        /// Bytes the image has.
        actual_bytes: u64,
    },
    /// The image is longer than its header says.
    TrailingBytes {
        /// Bytes the header accounts for.
        expected_bytes: u64,
        /// Bytes the image has.
        actual_bytes: u64,
    },
    /// The first 8 bytes are not the bitmap magic.
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// A format version this build cannot read.
    UnsupportedVersion {
        /// Version in the image.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The stored checksum does not match the image's bytes.
    ChecksumMismatch {
        /// Checksum stored in the image.
        stored: u64,
        /// Checksum computed over the image.
        computed: u64,
    },
    /// The checksum matched but the content breaks an invariant.
    Invalid {
        /// Byte offset of the offending field.
        offset: u64,
        /// What is wrong, with the values.
        reason: String,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Truncated {
                field,
                offset,
                needed_bytes,
                actual_bytes,
            } => write!(
                f,
                "bitmap image truncated: {field} at offset {offset} needs {needed_bytes} bytes, \
                 image has {actual_bytes}"
            ),
            ImageError::TrailingBytes {
                expected_bytes,
                actual_bytes,
            } => write!(
                f,
                "bitmap image has {actual_bytes} bytes, its header accounts for {expected_bytes}"
            ),
            ImageError::BadMagic { found } => {
                write!(f, "not a bitmap image: magic {found:02x?} at offset 0")
            }
            ImageError::UnsupportedVersion { found, supported } => write!(
                f,
                "bitmap image version {found} is not supported (this build reads {supported})"
            ),
            ImageError::ChecksumMismatch { stored, computed } => write!(
                f,
                "bitmap image checksum mismatch: stored xxh3-64 {stored:016x}, computed {computed:016x}"
            ),
            ImageError::Invalid { offset, reason } => {
                write!(f, "bitmap image invalid at offset {offset}: {reason}")
            }
        }
    }
}

impl std::error::Error for ImageError {}
