//! The extent store: spill records in extents of a [`BlockDevice`], with a
//! crash-safe persisted allocation map.
//!
//! Layout (byte by byte in `docs/disk-format.md`, "Extent store"): two
//! superblock copies (blocks 0 and 1), two bitmap slots, two remap table
//! copies, the spare pool, then the data area. Everything before the data
//! area is reserved in the [`BlockBitmap`], so the allocator can never hand
//! it out.
//!
//! - [`ExtentStore::put`] encodes a spill record ([`record::encode_into`]),
//!   pads it to whole blocks, allocates an extent next-fit (so spills land
//!   sequentially) and writes it.
//! - [`ExtentStore::get`] reads the extent and decodes it; every read
//!   verifies the record's checksums before any byte is returned.
//! - [`ExtentStore::get_into`] is the cheap read: it reads into a reusable
//!   [`ReadBuf`] whose window is aligned to the block size (so an `O_DIRECT`
//!   [`FileDevice`](crate::device::FileDevice) reads straight into it, with
//!   no bounce copy), verifies in place ([`record::verify`]) and returns a
//!   [`RecordView`]: a raw record's payload is a slice of the buffer, a
//!   compressed one is decompressed into the buffer's second allocation.
//!   `get` is `get_into` with a fresh buffer.
//! - [`ExtentStore::put_many`] (and [`ExtentStore::put_batch`] for records
//!   encoded elsewhere, [`EncodedBatch`]) puts many records at once:
//!   extents allocated next-fit in order, each run of adjacent extents
//!   written with one device write. All or nothing: if a record fails the
//!   whole batch is released ([`StoreError::BatchRecord`] names it).
//! - [`ExtentStore::get_many`] / [`ExtentStore::get_many_with`] read many
//!   records in block order, coalescing adjacent extents into single reads
//!   of at most [`GET_MANY_READ_BYTES_MAX`] bytes, and verify each; one bad
//!   or unknown record fails alone.
//!
//! Batches coalesce into one contiguous buffer rather than using vectored
//! I/O: next-fit puts records of a batch back to back, so one buffer and one
//! `pwrite`/`pread` cover the run, and no device needs a second code path.
//! [`crate::writer::SpillWriter`] runs puts on a background thread.
//! - [`ExtentStore::free`] forgets a record at once, but its blocks are only
//!   handed out again after the next [`commit`](ExtentStore::commit): until
//!   then the last committed state still lists the record there, and reusing
//!   the blocks would let a crash resurrect it with another record's bytes.
//! - [`ExtentStore::commit`] makes every earlier put and free durable: it
//!   flushes the data, writes the allocation map into the bitmap slot that
//!   is *not* current and flushes, then writes superblock copy 0 pointing
//!   at it (sequence number + 1) and flushes, then copy 1 and flushes. A
//!   crash at any point leaves either the previous committed state or the
//!   new one; once both copies are written, losing either one loses
//!   nothing.
//!
//! **A put is acknowledged (durable) once the next `commit` returns `Ok`.**
//! After a crash, [`ExtentStore::open`] recovers exactly the last committed
//! state: records put after it are not allocated, frees after it are undone.
//!
//! **Bad-block remapping.** Every data read and write is routed through the
//! remap table ([`crate::remap`]): a request is split into runs of normal
//! blocks and single remapped blocks, each served from its spare (a batch
//! routes each coalesced run the same way). When a
//! data-block write fails with a media error (an I/O error, or an injected
//! fault naming a block), `put` (and `put_many`, record by record) rewrites the failing run block by block and,
//! for each block that fails: takes a spare, records the remap PENDING,
//! writes and flushes both table copies, makes the entry ACTIVE, and retries
//! that block's write on the spare; only then does the put go on (and
//! return `Ok`). Several failures in one put each get their own entry, in
//! block order. Remaps are permanent and durable at once (independent of
//! `commit`). When the pool is empty the put fails with
//! [`StoreError::SparesExhausted`] and releases its extent; nothing stored
//! changes, and [`StoreStats::bad_blocks`] exceeds [`StoreStats::remaps`].
//! The block is then set aside for the rest of the session: later puts are
//! placed past it (at most [`BAD_BLOCK_SKIPS_MAX`] such extents per put), so
//! one bad block does not fail every spill after it. The set is not
//! persisted: a reopened store learns it again at the first failed write.
//!
//! ```
//! use strata_disk::device::MemDevice;
//! use strata_disk::record::{ChecksumKind, CodecPolicy, Dtype, RecordMeta};
//! use strata_disk::store::{ExtentStore, StoreConfig, StoreError};
//!
//! let config = StoreConfig {
//!     cap_bytes: Some(64 * 4096),
//!     policy: CodecPolicy::Auto,
//!     checksum: ChecksumKind::Xxh3,
//!     spare_blocks: 8,
//! };
//! let device = MemDevice::new(256 * 4096, 4096).unwrap();
//! let mut store = ExtentStore::create(device, config.clone()).unwrap();
//! let meta = RecordMeta { dtype: Dtype::Bytes, shape: vec![5] };
//! let extent = store.put(b"hello", &meta).unwrap();
//! store.commit().unwrap();
//! assert_eq!(store.get(extent).unwrap().payload, b"hello");
//!
//! // Reopening finds the committed record.
//! let store = ExtentStore::open(store.into_device(), config).unwrap();
//! assert_eq!(store.get(extent).unwrap().payload, b"hello");
//! assert!(matches!(
//!     store.get(strata_disk::store::Extent { start: extent.start + 1, len: 1 }),
//!     Err(StoreError::NotAllocated { .. })
//! ));
//! ```

use std::collections::BTreeMap;
use std::fmt;

pub use strata_bitmap::Extent;
use strata_bitmap::{BitmapError, BlockBitmap, ImageError, CHUNK_BLOCKS};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::device::{BlockDevice, DeviceError, BLOCK_BYTES_MIN};
use crate::record::{
    self, ChecksumKind, Codec, CodecPolicy, DecodedRecord, RecordError, RecordLocation, RecordMeta,
    VerifiedRecord,
};
use crate::remap::{self, RemapError, RemapState, RemapTable, RouteRun, SparePool};

mod inspect;
mod read_buf;

pub use inspect::{
    check_metadata, detect_block_bytes, open_file_store, open_file_store_readonly, Area, BadRecord,
    ConsistencyDefect, MetadataFinding, MetadataReport, OpenFileError, ReadOnlyFile,
    RemapCopyDefect, RemapCopyReport, SlotDefect, SlotReport, StoreReport, SuperblockCopyReport,
    VerifyReport,
};
pub use read_buf::{ReadBuf, RecordView};

/// Most bytes [`ExtentStore::get_many`] reads with one device read when it
/// coalesces adjacent extents (a single record larger than this is still read
/// whole). Large enough that the fixed cost of a read (one system call, one
/// route lookup) is small beside the transfer; small enough to bound the
/// [`ReadBuf`] a batch read grows beyond its largest record. Equal to the
/// largest `O_DIRECT` bounce piece of [`FileDevice`](crate::device::FileDevice).
pub const GET_MANY_READ_BYTES_MAX: u64 = 1 << 20;
const _: () = assert!(GET_MANY_READ_BYTES_MAX >= crate::device::BLOCK_BYTES_MAX);

/// Most extents an allocation passes over because they hold a block found
/// bad with no spare left. Bounds the work of one put on a failing device;
/// a device with more bad blocks in a row than this reports no space.
pub const BAD_BLOCK_SKIPS_MAX: usize = 64;

/// The first 8 bytes of each superblock copy.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"STRSUPR1";
/// The superblock format version this build writes and reads.
pub const SUPERBLOCK_VERSION: u32 = 1;
/// Bytes of a superblock copy that carry fields; the rest of its block is 0.
pub const SUPERBLOCK_LEN_BYTES: usize = 168;
/// Number of superblock copies (blocks `0..SUPERBLOCK_COPIES`).
pub const SUPERBLOCK_COPIES: u64 = 2;
/// Number of bitmap slots; commits alternate between them.
pub const BITMAP_SLOTS: u64 = 2;
/// Number of remap table copies in the metadata area. Table writes put
/// sequence `k` into copy `k % REMAP_TABLE_COPIES`.
pub const REMAP_TABLE_COPIES: u64 = 2;
/// Bytes of a remap table copy's header, reserved for the remap format.
pub const REMAP_HEADER_BYTES: u64 = 64;
/// Bytes per remap entry (bad block u64, spare block u64), one per spare block.
pub const REMAP_ENTRY_BYTES: u64 = 16;
/// Reserved ranges in the persisted bitmap: the one metadata area. Sizes the
/// bitmap slots.
pub const RESERVED_RANGES: u64 = 1;

const _: () = assert!(SUPERBLOCK_LEN_BYTES as u64 <= BLOCK_BYTES_MIN);
const _: () = assert!(SUPERBLOCK_COPIES == 2 && BITMAP_SLOTS == 2);

/// Byte offset of the magic (8 bytes).
pub const SB_OFFSET_MAGIC: usize = 0;
/// Byte offset of the version (u32).
pub const SB_OFFSET_VERSION: usize = 8;
/// Byte offset of the flags (u32, 0).
pub const SB_OFFSET_FLAGS: usize = 12;
/// Byte offset of the block size in bytes (u64).
pub const SB_OFFSET_BLOCK_BYTES: usize = 16;
/// Byte offset of the device length in blocks (u64).
pub const SB_OFFSET_DEVICE_BLOCKS: usize = 24;
/// Byte offset of the sequence number (u64).
pub const SB_OFFSET_SEQUENCE: usize = 32;
/// Byte offset of the copy index (u64: 0 or 1, the block the copy belongs in).
pub const SB_OFFSET_COPY_INDEX: usize = 40;
/// Byte offset of the bitmap slot length in blocks (u64).
pub const SB_OFFSET_SLOT_BLOCKS: usize = 48;
/// Byte offset of bitmap slot 0's first block (u64).
pub const SB_OFFSET_SLOT0_START: usize = 56;
/// Byte offset of bitmap slot 1's first block (u64).
pub const SB_OFFSET_SLOT1_START: usize = 64;
/// Byte offset of the remap table copy count (u64).
pub const SB_OFFSET_REMAP_COPIES: usize = 72;
/// Byte offset of the remap table copy length in blocks (u64).
pub const SB_OFFSET_REMAP_COPY_BLOCKS: usize = 80;
/// Byte offset of the first remap table copy's first block (u64).
pub const SB_OFFSET_REMAP_START: usize = 88;
/// Byte offset of the spare pool's first block (u64).
pub const SB_OFFSET_SPARE_START: usize = 96;
/// Byte offset of the spare pool length in blocks (u64).
pub const SB_OFFSET_SPARE_BLOCKS: usize = 104;
/// Byte offset of the data area's first block (u64).
pub const SB_OFFSET_DATA_START: usize = 112;
/// Byte offset of the current bitmap slot (u64: 0 or 1).
pub const SB_OFFSET_CURRENT_SLOT: usize = 120;
/// Byte offset of the current slot's content length in bytes (u64).
pub const SB_OFFSET_SLOT_LEN: usize = 128;
/// Byte offset of the xxh3-64 of the current slot's content (u64).
pub const SB_OFFSET_SLOT_CHECKSUM: usize = 136;
/// Byte offset of the bitmap image length inside the slot content (u64).
pub const SB_OFFSET_IMAGE_LEN: usize = 144;
/// Byte offset of the next-fit cursor, a block index (u64).
pub const SB_OFFSET_CURSOR: usize = 152;
/// Byte offset of the superblock checksum: xxh3-64 of bytes `0..160`.
pub const SB_OFFSET_CHECKSUM: usize = 160;

const _: () = assert!(SB_OFFSET_CHECKSUM + 8 == SUPERBLOCK_LEN_BYTES);

/// How a store is created or opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Most bytes of the data area that records may occupy (whole blocks,
    /// padding included); `None` for no cap beyond the device. Applies to
    /// this session only; it is not stored on disk.
    pub cap_bytes: Option<u64>,
    /// Codec policy for records written by [`ExtentStore::put`].
    pub policy: CodecPolicy,
    /// Checksum algorithm for records written by [`ExtentStore::put`].
    pub checksum: ChecksumKind,
    /// Blocks of spare pool to reserve ([`ExtentStore::create`] only; `open`
    /// reads the layout from the superblock). The remap table copies are
    /// sized for one entry per spare block.
    pub spare_blocks: u64,
}

/// Block geometry of a store: where each area starts and how long it is.
/// All values are block indices or block counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per block.
    pub block_bytes: u64,
    /// Blocks on the device.
    pub device_blocks: u64,
    /// Blocks per bitmap slot.
    pub slot_blocks: u64,
    /// First block of each bitmap slot.
    pub slot_start: [u64; 2],
    /// Blocks per remap table copy.
    pub remap_copy_blocks: u64,
    /// First block of the first remap table copy; copy `i` starts at
    /// `remap_start + i * remap_copy_blocks`.
    pub remap_start: u64,
    /// First block of the spare pool.
    pub spare_start: u64,
    /// Blocks in the spare pool.
    pub spare_blocks: u64,
    /// First block of the data area; `0..data_start` is the metadata area.
    pub data_start: u64,
}

impl Layout {
    /// The layout of a device of `device_blocks` blocks of `block_bytes`
    /// with `spare_blocks` spare blocks. Deterministic, so `open` can check
    /// the superblock's copy of it.
    pub fn compute(
        device_blocks: u64,
        block_bytes: u64,
        spare_blocks: u64,
    ) -> Result<Layout, StoreError> {
        let too_small = |needed_blocks: u64| StoreError::DeviceTooSmall {
            device_blocks,
            needed_blocks,
        };
        let slot_bytes = slot_capacity_bytes(device_blocks);
        let slot_blocks = slot_bytes.div_ceil(block_bytes);
        let remap_copy_bytes = spare_blocks
            .checked_mul(REMAP_ENTRY_BYTES)
            .and_then(|b| b.checked_add(REMAP_HEADER_BYTES))
            .ok_or(too_small(u64::MAX))?;
        let remap_copy_blocks = remap_copy_bytes.div_ceil(block_bytes);
        let slot0 = SUPERBLOCK_COPIES;
        let slot1 = slot0 + slot_blocks;
        let remap_start = slot1 + slot_blocks;
        let spare_start = remap_copy_blocks
            .checked_mul(REMAP_TABLE_COPIES)
            .and_then(|b| b.checked_add(remap_start))
            .ok_or(too_small(u64::MAX))?;
        let data_start = spare_start
            .checked_add(spare_blocks)
            .ok_or(too_small(u64::MAX))?;
        // At least one data block, or the store can hold nothing.
        if data_start >= device_blocks {
            return Err(too_small(data_start + 1));
        }
        Ok(Layout {
            block_bytes,
            device_blocks,
            slot_blocks,
            slot_start: [slot0, slot1],
            remap_copy_blocks,
            remap_start,
            spare_start,
            spare_blocks,
            data_start,
        })
    }

    /// Blocks of the data area.
    pub fn data_blocks(&self) -> u64 {
        self.device_blocks - self.data_start
    }

    /// Bytes of one remap table copy (`remap_copy_blocks` whole blocks).
    pub fn remap_copy_bytes(&self) -> usize {
        (self.remap_copy_blocks * self.block_bytes) as usize
    }
}

/// Most bytes a slot's content needs on a device of `device_blocks`: the
/// largest bitmap image (one reserved range) plus the record-start map.
fn slot_capacity_bytes(device_blocks: u64) -> u64 {
    let words = device_blocks.div_ceil(CHUNK_BLOCKS) * (CHUNK_BLOCKS / 64);
    let image_bytes = strata_bitmap::IMAGE_HEADER_BYTES + 16 * RESERVED_RANGES + 8 * words + 8;
    image_bytes + start_map_bytes(device_blocks)
}

fn start_map_bytes(device_blocks: u64) -> u64 {
    device_blocks.div_ceil(8)
}

/// Figures of a store at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes per block.
    pub block_bytes: u64,
    /// Bytes of the data area.
    pub capacity_bytes: u64,
    /// Bytes of the data area allocated: live records plus records freed
    /// since the last commit (their blocks return at the next commit).
    pub used_bytes: u64,
    /// Bytes of the data area that can be allocated now.
    pub free_bytes: u64,
    /// Of `used_bytes`, bytes freed since the last commit.
    pub pending_free_bytes: u64,
    /// The session's cap, if any.
    pub cap_bytes: Option<u64>,
    /// Live records (put and not freed).
    pub records: u64,
    /// Sequence number of the last durable superblock.
    pub sequence: u64,
    /// ACTIVE remaps: bad data blocks served from a spare.
    pub remaps: u64,
    /// PENDING remaps (non-zero only after a failed table write, until the
    /// store is reopened).
    pub pending: u64,
    /// Spare blocks still free.
    pub spares_left: u64,
    /// Blocks in the spare pool.
    pub spares_total: u64,
    /// Data blocks known bad: the remapped ones plus those found bad this
    /// session when no spare was left.
    pub bad_blocks: u64,
    /// Record reads (`get`, `get_into`, and `get_many` per record) that
    /// failed with a device error, this session.
    pub read_errors: u64,
    /// Data-block writes that failed, counted per block after a failed run
    /// is split, this session.
    pub write_errors: u64,
    /// Record reads (`get`, `get_into`, `get_many`) whose record failed its
    /// header or payload checksum, this session.
    pub checksum_failures: u64,
}

/// Why a superblock copy was rejected at open.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuperblockDefect {
    /// Reading the block failed.
    ReadFailed {
        /// The device error, as text (the error itself is not `Clone`).
        detail: String,
    },
    /// The first 8 bytes are not [`SUPERBLOCK_MAGIC`].
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The superblock checksum does not match its bytes.
    Checksum {
        /// Checksum stored in the copy.
        expected: u64,
        /// xxh3-64 computed over bytes `0..160`.
        actual: u64,
    },
    /// A version this build cannot read.
    UnsupportedVersion {
        /// Version found.
        found: u32,
    },
    /// A field disagrees with the device or with the layout recomputed from
    /// the device geometry and the stored spare pool size.
    Field {
        /// The field's name as in `docs/disk-format.md`.
        field: &'static str,
        /// The value stored.
        stored: u64,
        /// The value expected.
        expected: u64,
    },
    /// A field lies outside its valid range `min..max_exclusive`.
    OutOfRange {
        /// The field's name as in `docs/disk-format.md`.
        field: &'static str,
        /// The value stored.
        stored: u64,
        /// Smallest valid value.
        min: u64,
        /// One past the largest valid value.
        max_exclusive: u64,
    },
    /// The stored spare pool leaves no data block on this device.
    SpareTooLarge {
        /// Spare blocks stored.
        spare_blocks: u64,
        /// Blocks on the device.
        device_blocks: u64,
    },
}

impl fmt::Display for SuperblockDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuperblockDefect::ReadFailed { detail } => write!(f, "read failed: {detail}"),
            SuperblockDefect::BadMagic { found } => {
                write!(f, "magic {found:02x?}, expected {SUPERBLOCK_MAGIC:02x?}")
            }
            SuperblockDefect::Checksum { expected, actual } => write!(
                f,
                "checksum mismatch: xxh3 expected {expected:#018x}, found {actual:#018x}"
            ),
            SuperblockDefect::UnsupportedVersion { found } => {
                write!(f, "version {found}, this build reads {SUPERBLOCK_VERSION}")
            }
            SuperblockDefect::Field {
                field,
                stored,
                expected,
            } => write!(f, "field {field} holds {stored}, expected {expected}"),
            SuperblockDefect::OutOfRange {
                field,
                stored,
                min,
                max_exclusive,
            } => write!(
                f,
                "field {field} holds {stored}, outside {min}..{max_exclusive}"
            ),
            SuperblockDefect::SpareTooLarge {
                spare_blocks,
                device_blocks,
            } => write!(
                f,
                "a spare pool of {spare_blocks} blocks leaves no data block on a device of \
                 {device_blocks} blocks"
            ),
        }
    }
}

/// Why a store operation failed. A refused operation changes nothing,
/// except where a variant says otherwise.
#[non_exhaustive]
#[derive(Debug)]
pub enum StoreError {
    /// The device failed.
    Device {
        /// What the store was doing, e.g. `"write record"`, `"flush bitmap"`.
        op: &'static str,
        /// The device error.
        source: DeviceError,
    },
    /// The record could not be encoded (bad meta, too large).
    Encode {
        /// The record error.
        source: RecordError,
    },
    /// The record at `extent` failed verification or decoding; for a
    /// checksum mismatch `source` names the extent and the expected and
    /// actual checksums.
    Record {
        /// The extent read.
        extent: Extent,
        /// The record error.
        source: RecordError,
    },
    /// The put would take the store past its cap.
    CapExceeded {
        /// Bytes the record needs (whole blocks).
        requested_bytes: u64,
        /// Bytes allocated now.
        used_bytes: u64,
        /// The cap.
        cap_bytes: u64,
    },
    /// No run of free blocks is long enough for the record.
    NoSpace {
        /// Blocks the record needs.
        requested_blocks: u64,
        /// Free blocks in total.
        free_blocks: u64,
        /// The longest run of free blocks.
        largest_free_run_blocks: u64,
    },
    /// The extent is not a live record of this store: never put, already
    /// freed (a double free), or not exactly the extent `put` returned.
    NotAllocated {
        /// The extent asked for.
        extent: Extent,
    },
    /// The device cannot hold the metadata area and one data block.
    DeviceTooSmall {
        /// Blocks on the device.
        device_blocks: u64,
        /// Blocks needed (`u64::MAX` if the count overflows).
        needed_blocks: u64,
    },
    /// The bitmap could not be built (the device exceeds the bitmap's
    /// capacity limit).
    Bitmap {
        /// The bitmap error.
        source: BitmapError,
    },
    /// Neither superblock copy is valid: not a store, or both are damaged.
    NoValidSuperblock {
        /// Why copy 0 and copy 1 were rejected.
        defects: [SuperblockDefect; 2],
    },
    /// The newest valid superblock points at a bitmap slot whose content
    /// does not match its checksum. Open does not fall back to the older
    /// copy: its allocation state may list blocks that were freed and
    /// reused since, so a read could return another record's bytes.
    BitmapSlotCorrupt {
        /// Sequence number of the superblock.
        sequence: u64,
        /// The slot (0 or 1).
        slot: u64,
        /// Checksum in the superblock.
        expected: u64,
        /// Checksum computed over the slot content.
        actual: u64,
    },
    /// The slot's checksum matched but its bitmap image was rejected.
    BitmapImage {
        /// The slot (0 or 1).
        slot: u64,
        /// The image error.
        source: ImageError,
    },
    /// The slot's checksum matched but its content contradicts the layout
    /// (reserved ranges, capacity, record-start map).
    SlotInconsistent {
        /// The slot (0 or 1).
        slot: u64,
        /// What is wrong, with the values.
        reason: String,
    },
    /// An earlier commit or remap table write failed part way; the on-disk
    /// state is the last committed one or the attempted one. Reads still
    /// work; reopen the store to write again.
    NeedsReopen,
    /// A data block's write failed and every spare is in use. The put
    /// failed and released its extent; nothing stored changed.
    SparesExhausted {
        /// The data block whose write failed.
        bad_block: u64,
        /// Blocks in the spare pool (all in use).
        spares_total: u64,
    },
    /// The write of a remapped block to its spare failed too. The put
    /// failed and released its extent; the remap stays (a spare is never
    /// replaced), so later writes to this block keep failing.
    SpareWriteFailed {
        /// The bad data block.
        bad_block: u64,
        /// Its spare.
        spare_block: u64,
        /// The device error.
        source: DeviceError,
    },
    /// Neither remap table copy is valid, or the recovered table does not
    /// fit the layout (open).
    RemapTable {
        /// The remap error.
        source: RemapError,
    },
    /// Record `index` of a batch ([`ExtentStore::put_many`],
    /// [`ExtentStore::put_batch`]) failed with `source`: it could not be
    /// encoded, no run of free blocks fits it, or writing it failed. The
    /// whole batch was refused: no record of it was stored and every extent
    /// it had allocated was released (remaps made on the way stay).
    BatchRecord {
        /// Position of the failing record in the batch.
        index: usize,
        /// Records in the batch.
        records: usize,
        /// Why it failed.
        source: Box<StoreError>,
    },
    /// An [`EncodedBatch`] was encoded for another block size than the store's.
    BatchBlockSize {
        /// Block size the batch was padded to.
        batch_block_bytes: u64,
        /// The store's block size.
        store_block_bytes: u64,
    },
    /// The recovered remap table names a bad block outside the data area.
    RemapOutsideData {
        /// The bad block named.
        bad_block: u64,
        /// First block of the data area.
        data_start: u64,
        /// Blocks on the device.
        device_blocks: u64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Device { op, source } => write!(f, "extent store: {op} failed: {source}"),
            StoreError::Encode { source } => {
                write!(f, "extent store: cannot encode record: {source}")
            }
            StoreError::Record { extent, source } => write!(
                f,
                "extent store: record at blocks {}..{} is unreadable: {source}",
                extent.start,
                extent.end()
            ),
            StoreError::CapExceeded {
                requested_bytes,
                used_bytes,
                cap_bytes,
            } => write!(
                f,
                "extent store cap exceeded: asked for {requested_bytes} bytes, {used_bytes} of \
                 {cap_bytes} bytes used, {} left",
                cap_bytes.saturating_sub(*used_bytes)
            ),
            StoreError::NoSpace {
                requested_blocks,
                free_blocks,
                largest_free_run_blocks,
            } => write!(
                f,
                "extent store full: asked for {requested_blocks} contiguous blocks, {free_blocks} \
                 free, longest free run {largest_free_run_blocks}"
            ),
            StoreError::NotAllocated { extent } => write!(
                f,
                "extent at blocks {}..{} is not a live record (never put, already freed, or not \
                 the extent put returned)",
                extent.start,
                extent.end()
            ),
            StoreError::DeviceTooSmall {
                device_blocks,
                needed_blocks,
            } => write!(
                f,
                "device of {device_blocks} blocks is too small for an extent store: needs at \
                 least {needed_blocks}"
            ),
            StoreError::Bitmap { source } => write!(f, "extent store bitmap: {source}"),
            StoreError::NoValidSuperblock { defects } => write!(
                f,
                "no valid superblock: copy 0: {}; copy 1: {}",
                defects[0], defects[1]
            ),
            StoreError::BitmapSlotCorrupt {
                sequence,
                slot,
                expected,
                actual,
            } => write!(
                f,
                "bitmap slot {slot} of superblock sequence {sequence} is corrupt: xxh3 expected \
                 {expected:#018x}, found {actual:#018x}"
            ),
            StoreError::BitmapImage { slot, source } => {
                write!(f, "bitmap slot {slot}: {source}")
            }
            StoreError::SlotInconsistent { slot, reason } => {
                write!(f, "bitmap slot {slot} is inconsistent: {reason}")
            }
            StoreError::NeedsReopen => write!(
                f,
                "an earlier commit or remap table write failed part way; reopen the extent store \
                 before writing"
            ),
            StoreError::SparesExhausted {
                bad_block,
                spares_total,
            } => write!(
                f,
                "write to bad block {bad_block} failed and all {spares_total} spare blocks are in \
                 use; the put was refused"
            ),
            StoreError::SpareWriteFailed {
                bad_block,
                spare_block,
                source,
            } => write!(
                f,
                "write to spare block {spare_block} (replacing bad block {bad_block}) failed: \
                 {source}"
            ),
            StoreError::RemapTable { source } => write!(f, "extent store remap table: {source}"),
            StoreError::BatchRecord {
                index,
                records,
                source,
            } => write!(
                f,
                "batch of {records} records refused at record {index}, nothing of it stored: \
                 {source}"
            ),
            StoreError::BatchBlockSize {
                batch_block_bytes,
                store_block_bytes,
            } => write!(
                f,
                "batch encoded for blocks of {batch_block_bytes} bytes, the store's are \
                 {store_block_bytes} bytes"
            ),
            StoreError::RemapOutsideData {
                bad_block,
                data_start,
                device_blocks,
            } => write!(
                f,
                "remap table names bad block {bad_block}, outside the data area \
                 {data_start}..{device_blocks}"
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Device { source, .. } | StoreError::SpareWriteFailed { source, .. } => {
                Some(source)
            }
            StoreError::RemapTable { source } => Some(source),
            StoreError::Encode { source } | StoreError::Record { source, .. } => Some(source),
            StoreError::Bitmap { source } => Some(source),
            StoreError::BitmapImage { source, .. } => Some(source),
            StoreError::BatchRecord { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

fn device_error(op: &'static str) -> impl FnOnce(DeviceError) -> StoreError {
    move |source| StoreError::Device { op, source }
}

/// Whether a failed write means the block itself is bad (so remapping it
/// helps): an I/O error, or an injected fault naming a block. A crash, a
/// refused access or a fault not tied to a block is not.
fn is_media_error(error: &DeviceError) -> bool {
    matches!(
        error,
        DeviceError::Io { .. } | DeviceError::InjectedFault { block: Some(_), .. }
    )
}

fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// The fields of a superblock copy that change between commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Commit {
    sequence: u64,
    current_slot: u64,
    slot_len_bytes: u64,
    slot_checksum: u64,
    image_len_bytes: u64,
    cursor: u64,
}

fn encode_superblock(layout: &Layout, commit: &Commit, copy_index: u64) -> Vec<u8> {
    let mut block = vec![0u8; layout.block_bytes as usize];
    block[SB_OFFSET_MAGIC..SB_OFFSET_MAGIC + 8].copy_from_slice(&SUPERBLOCK_MAGIC);
    block[SB_OFFSET_VERSION..SB_OFFSET_VERSION + 4]
        .copy_from_slice(&SUPERBLOCK_VERSION.to_le_bytes());
    for (offset, value) in [
        (SB_OFFSET_BLOCK_BYTES, layout.block_bytes),
        (SB_OFFSET_DEVICE_BLOCKS, layout.device_blocks),
        (SB_OFFSET_SEQUENCE, commit.sequence),
        (SB_OFFSET_COPY_INDEX, copy_index),
        (SB_OFFSET_SLOT_BLOCKS, layout.slot_blocks),
        (SB_OFFSET_SLOT0_START, layout.slot_start[0]),
        (SB_OFFSET_SLOT1_START, layout.slot_start[1]),
        (SB_OFFSET_REMAP_COPIES, REMAP_TABLE_COPIES),
        (SB_OFFSET_REMAP_COPY_BLOCKS, layout.remap_copy_blocks),
        (SB_OFFSET_REMAP_START, layout.remap_start),
        (SB_OFFSET_SPARE_START, layout.spare_start),
        (SB_OFFSET_SPARE_BLOCKS, layout.spare_blocks),
        (SB_OFFSET_DATA_START, layout.data_start),
        (SB_OFFSET_CURRENT_SLOT, commit.current_slot),
        (SB_OFFSET_SLOT_LEN, commit.slot_len_bytes),
        (SB_OFFSET_SLOT_CHECKSUM, commit.slot_checksum),
        (SB_OFFSET_IMAGE_LEN, commit.image_len_bytes),
        (SB_OFFSET_CURSOR, commit.cursor),
    ] {
        put_u64(&mut block, offset, value);
    }
    let checksum = xxh3(&block[..SB_OFFSET_CHECKSUM]);
    put_u64(&mut block, SB_OFFSET_CHECKSUM, checksum);
    block
}

/// Parses and validates the superblock copy `copy_index` (its whole block).
fn decode_superblock(
    block: &[u8],
    copy_index: u64,
    block_bytes: u64,
    device_blocks: u64,
) -> Result<(Layout, Commit), SuperblockDefect> {
    let magic: [u8; 8] = block[..8].try_into().expect("8 bytes");
    if magic != SUPERBLOCK_MAGIC {
        return Err(SuperblockDefect::BadMagic { found: magic });
    }
    let expected = get_u64(block, SB_OFFSET_CHECKSUM);
    let actual = xxh3(&block[..SB_OFFSET_CHECKSUM]);
    if expected != actual {
        return Err(SuperblockDefect::Checksum { expected, actual });
    }
    let version = u32::from_le_bytes(
        block[SB_OFFSET_VERSION..SB_OFFSET_VERSION + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if version != SUPERBLOCK_VERSION {
        return Err(SuperblockDefect::UnsupportedVersion { found: version });
    }
    let field = |field: &'static str, offset: usize, expected: u64| {
        let stored = get_u64(block, offset);
        if stored == expected {
            Ok(())
        } else {
            Err(SuperblockDefect::Field {
                field,
                stored,
                expected,
            })
        }
    };
    let flags = u32::from_le_bytes(
        block[SB_OFFSET_FLAGS..SB_OFFSET_FLAGS + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if flags != 0 {
        return Err(SuperblockDefect::Field {
            field: "flags",
            stored: u64::from(flags),
            expected: 0,
        });
    }
    field("block_bytes", SB_OFFSET_BLOCK_BYTES, block_bytes)?;
    field("device_blocks", SB_OFFSET_DEVICE_BLOCKS, device_blocks)?;
    let sequence = get_u64(block, SB_OFFSET_SEQUENCE);
    field("copy_index", SB_OFFSET_COPY_INDEX, copy_index)?;
    let spare_blocks = get_u64(block, SB_OFFSET_SPARE_BLOCKS);
    let layout = Layout::compute(device_blocks, block_bytes, spare_blocks).map_err(|_| {
        SuperblockDefect::SpareTooLarge {
            spare_blocks,
            device_blocks,
        }
    })?;
    field("slot_blocks", SB_OFFSET_SLOT_BLOCKS, layout.slot_blocks)?;
    field("slot0_start", SB_OFFSET_SLOT0_START, layout.slot_start[0])?;
    field("slot1_start", SB_OFFSET_SLOT1_START, layout.slot_start[1])?;
    field("remap_copies", SB_OFFSET_REMAP_COPIES, REMAP_TABLE_COPIES)?;
    field(
        "remap_copy_blocks",
        SB_OFFSET_REMAP_COPY_BLOCKS,
        layout.remap_copy_blocks,
    )?;
    field("remap_start", SB_OFFSET_REMAP_START, layout.remap_start)?;
    field("spare_start", SB_OFFSET_SPARE_START, layout.spare_start)?;
    field("data_start", SB_OFFSET_DATA_START, layout.data_start)?;
    let current_slot = get_u64(block, SB_OFFSET_CURRENT_SLOT);
    if current_slot >= BITMAP_SLOTS {
        return Err(SuperblockDefect::OutOfRange {
            field: "current_slot",
            stored: current_slot,
            min: 0,
            max_exclusive: BITMAP_SLOTS,
        });
    }
    let slot_len_bytes = get_u64(block, SB_OFFSET_SLOT_LEN);
    let slot_capacity = layout.slot_blocks * block_bytes;
    let map_bytes = start_map_bytes(device_blocks);
    if slot_len_bytes <= map_bytes || slot_len_bytes > slot_capacity {
        return Err(SuperblockDefect::OutOfRange {
            field: "slot_len",
            stored: slot_len_bytes,
            min: map_bytes + 1,
            max_exclusive: slot_capacity + 1,
        });
    }
    let image_len_bytes = get_u64(block, SB_OFFSET_IMAGE_LEN);
    field("image_len", SB_OFFSET_IMAGE_LEN, slot_len_bytes - map_bytes)?;
    let cursor = get_u64(block, SB_OFFSET_CURSOR);
    if cursor < layout.data_start || cursor >= device_blocks {
        return Err(SuperblockDefect::OutOfRange {
            field: "cursor",
            stored: cursor,
            min: layout.data_start,
            max_exclusive: device_blocks,
        });
    }
    Ok((
        layout,
        Commit {
            sequence,
            current_slot,
            slot_len_bytes,
            slot_checksum: get_u64(block, SB_OFFSET_SLOT_CHECKSUM),
            image_len_bytes,
            cursor,
        },
    ))
}

/// Records encoded and padded to whole blocks, back to back in one buffer,
/// ready for [`ExtentStore::put_batch`]. Encoding (compression and
/// checksums) needs no store, so it can run on a thread that does not hold
/// the store; [`ExtentStore::new_batch`] makes one with the store's codec
/// policy, checksum and block size.
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    block_bytes: u64,
    policy: CodecPolicy,
    checksum: ChecksumKind,
    /// The records, each padded with zeros to whole blocks.
    bytes: Vec<u8>,
    /// `start_blocks[i]` is record `i`'s first block in `bytes`; one more
    /// entry than records, the last being the total.
    start_blocks: Vec<u64>,
}

impl EncodedBatch {
    /// An empty batch whose records are padded to `block_bytes` (a power of
    /// two in `BLOCK_BYTES_MIN..=BLOCK_BYTES_MAX`; panics otherwise), encoded
    /// with `policy` and `checksum`.
    pub fn new(block_bytes: u64, policy: CodecPolicy, checksum: ChecksumKind) -> EncodedBatch {
        assert!(
            block_bytes.is_power_of_two()
                && (BLOCK_BYTES_MIN..=crate::device::BLOCK_BYTES_MAX).contains(&block_bytes),
            "block size {block_bytes} is not a power of two in {BLOCK_BYTES_MIN}..={}",
            crate::device::BLOCK_BYTES_MAX
        );
        EncodedBatch {
            block_bytes,
            policy,
            checksum,
            bytes: Vec::new(),
            start_blocks: vec![0],
        }
    }

    /// Encodes `payload` as the next record and returns its length in
    /// blocks. [`StoreError::Encode`] (bad meta, too large) leaves the batch
    /// unchanged.
    pub fn push(&mut self, payload: &[u8], meta: &RecordMeta) -> Result<u64, StoreError> {
        let start = self.bytes.len();
        record::encode_into(payload, meta, self.policy, self.checksum, &mut self.bytes)
            .map_err(|source| StoreError::Encode { source })?;
        let len_blocks = ((self.bytes.len() - start) as u64).div_ceil(self.block_bytes);
        self.bytes
            .resize(start + (len_blocks * self.block_bytes) as usize, 0);
        let end_block = self.total_blocks() + len_blocks;
        self.start_blocks.push(end_block);
        Ok(len_blocks)
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.start_blocks.len() - 1
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blocks of all records together.
    pub fn total_blocks(&self) -> u64 {
        *self
            .start_blocks
            .last()
            .expect("start_blocks is never empty")
    }

    /// Bytes of all records together (whole blocks).
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The block size the records are padded to.
    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// Length of record `index` in blocks.
    pub fn record_blocks(&self, index: usize) -> u64 {
        self.start_blocks[index + 1] - self.start_blocks[index]
    }

    /// Forgets every record, keeping the buffer for reuse.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.start_blocks.truncate(1);
    }

    /// The bytes of records `range` (whole blocks, back to back).
    fn bytes_of(&self, range: std::ops::Range<usize>) -> &[u8] {
        let at = |index: usize| (self.start_blocks[index] * self.block_bytes) as usize;
        &self.bytes[at(range.start)..at(range.end)]
    }

    /// Panics (with the values) unless the record starts increase, every
    /// record has at least one block, and the buffer holds exactly the
    /// records' blocks.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.start_blocks.first(),
            Some(&0),
            "first record start {:?}",
            self.start_blocks.first()
        );
        for (index, pair) in self.start_blocks.windows(2).enumerate() {
            assert!(
                pair[1] > pair[0],
                "record {index} spans blocks {}..{}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(
            self.bytes.len() as u64,
            self.total_blocks() * self.block_bytes,
            "buffer of {} bytes, records cover {} blocks of {}",
            self.bytes.len(),
            self.total_blocks(),
            self.block_bytes
        );
    }
}

/// Spill records in extents of a block device. See the module documentation.
#[derive(Debug)]
pub struct ExtentStore<D: BlockDevice> {
    device: D,
    config: StoreConfig,
    layout: Layout,
    /// The allocation map: metadata area reserved; live records and frees
    /// pending commit allocated.
    bitmap: BlockBitmap,
    /// Live records: start block to length in blocks.
    live: BTreeMap<u64, u64>,
    /// Records freed since the last commit; their blocks stay allocated
    /// until the commit that frees them is durable.
    pending_free: Vec<Extent>,
    /// The last durable superblock's commit fields.
    committed: Commit,
    /// Next-fit cursor: the block after the last extent allocated.
    cursor: u64,
    /// Set when a commit failed part way.
    needs_reopen: bool,
    /// Reused encode buffer.
    scratch: Vec<u8>,
    /// Bad data blocks and their spares.
    table: RemapTable,
    /// Free spares.
    spares: SparePool,
    /// Sequence number of the newest remap table copy written (held in copy
    /// `remap_sequence % REMAP_TABLE_COPIES`).
    remap_sequence: u64,
    /// Data blocks found bad this session with no spare left for them.
    unmapped_bad: BTreeSet<u64>,
    /// Counters for [`StoreStats`]; atomics because `get` takes `&self`.
    read_errors: AtomicU64,
    write_errors: u64,
    checksum_failures: AtomicU64,
}

impl<D: BlockDevice> ExtentStore<D> {
    /// Formats `device` as an empty store and makes it durable. Whatever the
    /// device held is forgotten. The store exists once this returns `Ok`; a
    /// crash before that may leave the device unformatted or holding its old
    /// store.
    pub fn create(device: D, config: StoreConfig) -> Result<Self, StoreError> {
        let layout = Layout::compute(
            device.len_blocks(),
            device.block_bytes(),
            config.spare_blocks,
        )?;
        let mut bitmap = BlockBitmap::new(layout.device_blocks)
            .map_err(|source| StoreError::Bitmap { source })?;
        bitmap
            .reserve(0..layout.data_start)
            .map_err(|source| StoreError::Bitmap { source })?;
        let mut store = ExtentStore {
            device,
            config,
            layout,
            bitmap,
            live: BTreeMap::new(),
            pending_free: Vec::new(),
            committed: Commit {
                sequence: 0,
                current_slot: 0,
                slot_len_bytes: 0,
                slot_checksum: 0,
                image_len_bytes: 0,
                cursor: layout.data_start,
            },
            cursor: layout.data_start,
            needs_reopen: false,
            scratch: Vec::new(),
            table: RemapTable::new(remap::max_entries(layout.remap_copy_bytes())),
            spares: SparePool::new(layout.spare_start, layout.spare_blocks)
                .map_err(|source| StoreError::RemapTable { source })?,
            remap_sequence: 0,
            unmapped_bad: BTreeSet::new(),
            read_errors: AtomicU64::new(0),
            write_errors: 0,
            checksum_failures: AtomicU64::new(0),
        };
        // Empty remap tables (sequences 0 and 1, each in its copy), slot 0,
        // then both superblock copies (sequence 1) pointing at it, so no
        // copy of an older store on the device survives.
        for sequence in 0..REMAP_TABLE_COPIES {
            store.write_remap_copy(sequence)?;
        }
        let (slot_bytes, image_len_bytes) = store.slot_content(&store.bitmap);
        store.write_slot(0, &slot_bytes)?;
        let commit = Commit {
            sequence: 1,
            current_slot: 0,
            slot_len_bytes: slot_bytes.len() as u64,
            slot_checksum: xxh3(&slot_bytes),
            image_len_bytes,
            cursor: layout.data_start,
        };
        store.write_superblock(&commit)?;
        store.committed = commit;
        Ok(store)
    }

    /// Opens the store on `device`: takes the valid superblock copy with the
    /// highest sequence number, verifies its bitmap slot and recovers the
    /// last committed state. `config.spare_blocks` is ignored (the layout
    /// comes from the superblock); the cap, policy and checksum apply to
    /// this session.
    ///
    /// Errors: [`StoreError::NoValidSuperblock`] when neither copy is valid;
    /// [`StoreError::BitmapSlotCorrupt`], [`StoreError::BitmapImage`] or
    /// [`StoreError::SlotInconsistent`] when the newest valid copy's slot is
    /// damaged (no fallback to the older copy; see `BitmapSlotCorrupt`).
    pub fn open(device: D, config: StoreConfig) -> Result<Self, StoreError> {
        let block_bytes = device.block_bytes();
        let device_blocks = device.len_blocks();
        let mut block = vec![0u8; block_bytes as usize];
        let mut candidates = Vec::new();
        let mut defects = Vec::new();
        for copy_index in 0..SUPERBLOCK_COPIES {
            let parsed = device
                .read_at(copy_index * block_bytes, &mut block)
                .map_err(|e| SuperblockDefect::ReadFailed {
                    detail: e.to_string(),
                })
                .and_then(|()| decode_superblock(&block, copy_index, block_bytes, device_blocks));
            match parsed {
                Ok(found) => candidates.push(found),
                Err(defect) => defects.push(defect),
            }
        }
        let Some(&(layout, commit)) = candidates.iter().max_by_key(|(_, c)| c.sequence) else {
            let second = defects.pop().expect("two defects");
            let first = defects.pop().expect("two defects");
            return Err(StoreError::NoValidSuperblock {
                defects: [first, second],
            });
        };
        let slot = commit.current_slot;
        let mut slot_bytes = vec![0u8; (layout.slot_blocks * block_bytes) as usize];
        device
            .read_at(
                layout.slot_start[slot as usize] * block_bytes,
                &mut slot_bytes,
            )
            .map_err(device_error("read bitmap slot"))?;
        slot_bytes.truncate(commit.slot_len_bytes as usize);
        let actual = xxh3(&slot_bytes);
        if actual != commit.slot_checksum {
            return Err(StoreError::BitmapSlotCorrupt {
                sequence: commit.sequence,
                slot,
                expected: commit.slot_checksum,
                actual,
            });
        }
        let (image, start_map) = slot_bytes.split_at(commit.image_len_bytes as usize);
        let bitmap = BlockBitmap::from_bytes(image)
            .map_err(|source| StoreError::BitmapImage { slot, source })?;
        let live = recover_records(&bitmap, start_map, &layout)
            .map_err(|reason| StoreError::SlotInconsistent { slot, reason })?;
        let (remap_sequence, table) = read_remap_table(&device, &layout)?;
        let spares = SparePool::from_table(layout.spare_start, layout.spare_blocks, &table)
            .map_err(|source| StoreError::RemapTable { source })?;
        let store = ExtentStore {
            device,
            config,
            layout,
            bitmap,
            live,
            pending_free: Vec::new(),
            committed: commit,
            cursor: commit.cursor,
            needs_reopen: false,
            scratch: Vec::new(),
            table,
            spares,
            remap_sequence,
            unmapped_bad: BTreeSet::new(),
            read_errors: AtomicU64::new(0),
            write_errors: 0,
            checksum_failures: AtomicU64::new(0),
        };
        Ok(store)
    }

    /// Encodes `payload` as a spill record, allocates an extent for it
    /// (next-fit) and writes it, remapping blocks whose write fails (see the
    /// module documentation). Durable once the next
    /// [`commit`](Self::commit) returns `Ok`.
    ///
    /// Errors (no record changes): [`StoreError::Encode`],
    /// [`StoreError::CapExceeded`] (checked first),
    /// [`StoreError::NoSpace`], [`StoreError::NeedsReopen`]; after the
    /// extent is allocated (it is released again):
    /// [`StoreError::Device`] (not a media error, or a remap table write
    /// failed: then the store needs reopening),
    /// [`StoreError::SparesExhausted`], [`StoreError::SpareWriteFailed`].
    /// Remaps made before such an error stay: a bad block stays bad.
    pub fn put(&mut self, payload: &[u8], meta: &RecordMeta) -> Result<Extent, StoreError> {
        if self.needs_reopen {
            return Err(StoreError::NeedsReopen);
        }
        let block_bytes = self.layout.block_bytes;
        self.scratch.clear();
        record::encode_into(
            payload,
            meta,
            self.config.policy,
            self.config.checksum,
            &mut self.scratch,
        )
        .map_err(|source| StoreError::Encode { source })?;
        let len_blocks = (self.scratch.len() as u64).div_ceil(block_bytes);
        self.scratch.resize((len_blocks * block_bytes) as usize, 0);
        let requested_bytes = len_blocks * block_bytes;
        let used_bytes = self.bitmap.allocated_blocks() * block_bytes;
        if let Some(cap_bytes) = self.config.cap_bytes {
            if used_bytes.saturating_add(requested_bytes) > cap_bytes {
                return Err(StoreError::CapExceeded {
                    requested_bytes,
                    used_bytes,
                    cap_bytes,
                });
            }
        }
        let Some(extent) = self.alloc_extent_avoiding_bad(len_blocks, self.cursor) else {
            return Err(StoreError::NoSpace {
                requested_blocks: len_blocks,
                free_blocks: self.bitmap.free_blocks(),
                largest_free_run_blocks: self.bitmap.largest_free_run_blocks(),
            });
        };
        let bytes = std::mem::take(&mut self.scratch);
        let written = self.write_data(extent, &bytes);
        self.scratch = bytes;
        if let Err(error) = written {
            self.bitmap
                .free_extent(extent)
                .expect("an extent just allocated can be freed");
            return Err(error);
        }
        self.live.insert(extent.start, extent.len);
        self.cursor = self.cursor_after(extent);
        Ok(extent)
    }

    /// An empty [`EncodedBatch`] with this store's block size, codec policy
    /// and checksum.
    pub fn new_batch(&self) -> EncodedBatch {
        EncodedBatch::new(
            self.layout.block_bytes,
            self.config.policy,
            self.config.checksum,
        )
    }

    /// Puts every `(payload, meta)` of `items` as one batch: encodes them
    /// all, allocates their extents next-fit in order (so they usually land
    /// back to back), and writes each run of adjacent extents with one
    /// device write. Returns the extents in the order of `items`. Durable
    /// once the next [`commit`](Self::commit) returns `Ok`.
    ///
    /// **All or nothing.** If any record fails, the batch is refused as a
    /// whole: no record of it is stored, every extent it allocated is
    /// released and the next-fit cursor is back where it was. A failure
    /// concerning one record is [`StoreError::BatchRecord`] naming its index
    /// (with [`StoreError::Encode`], [`StoreError::NoSpace`] or a write error
    /// as for [`put`](Self::put) inside); [`StoreError::CapExceeded`] (for
    /// the whole batch's blocks) and [`StoreError::NeedsReopen`] come
    /// unwrapped. As for `put`, remaps made before a failure stay.
    ///
    /// Writes go through the remap table like `put`'s: when the write of a
    /// run fails, its records are rewritten one by one with `put`'s
    /// per-block fallback, so each bad block is remapped (or the batch
    /// fails with the index of the record holding it).
    pub fn put_many(&mut self, items: &[(&[u8], &RecordMeta)]) -> Result<Vec<Extent>, StoreError> {
        if self.needs_reopen {
            return Err(StoreError::NeedsReopen);
        }
        let mut batch = self.new_batch();
        for (index, (payload, meta)) in items.iter().enumerate() {
            batch
                .push(payload, meta)
                .map_err(|source| StoreError::BatchRecord {
                    index,
                    records: items.len(),
                    source: Box::new(source),
                })?;
        }
        self.put_batch(&batch)
    }

    /// Puts the records of an [`EncodedBatch`] (see
    /// [`put_many`](Self::put_many), whose semantics and errors apply;
    /// [`StoreError::BatchBlockSize`] if the batch was padded for another
    /// block size).
    pub fn put_batch(&mut self, batch: &EncodedBatch) -> Result<Vec<Extent>, StoreError> {
        self.put_encoded(batch, 0..batch.len())
            .map_err(|(index, source)| match index {
                Some(index) => StoreError::BatchRecord {
                    index,
                    records: batch.len(),
                    source: Box::new(source),
                },
                None => source,
            })
    }

    /// Puts records `range` of `batch`, all or nothing (see
    /// [`put_many`](Self::put_many)). On error returns the index of the
    /// record the error concerns, if it concerns one.
    pub(crate) fn put_encoded(
        &mut self,
        batch: &EncodedBatch,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<Extent>, (Option<usize>, StoreError)> {
        if self.needs_reopen {
            return Err((None, StoreError::NeedsReopen));
        }
        let block_bytes = self.layout.block_bytes;
        if batch.block_bytes != block_bytes {
            return Err((
                None,
                StoreError::BatchBlockSize {
                    batch_block_bytes: batch.block_bytes,
                    store_block_bytes: block_bytes,
                },
            ));
        }
        let requested_bytes =
            (batch.start_blocks[range.end] - batch.start_blocks[range.start]) * block_bytes;
        let used_bytes = self.bitmap.allocated_blocks() * block_bytes;
        if let Some(cap_bytes) = self.config.cap_bytes {
            if used_bytes.saturating_add(requested_bytes) > cap_bytes {
                return Err((
                    None,
                    StoreError::CapExceeded {
                        requested_bytes,
                        used_bytes,
                        cap_bytes,
                    },
                ));
            }
        }
        let cursor_before = self.cursor;
        let mut extents = Vec::with_capacity(range.len());
        let mut outcome = Ok(());
        for index in range.clone() {
            let len_blocks = batch.record_blocks(index);
            match self.alloc_extent_avoiding_bad(len_blocks, self.cursor) {
                Some(extent) => {
                    extents.push(extent);
                    self.cursor = self.cursor_after(extent);
                }
                None => {
                    outcome = Err((index, len_blocks));
                    break;
                }
            }
        }
        let result = match outcome {
            Ok(()) => self
                .write_extents(&extents, batch, range.start)
                .map_err(|(index, error)| (Some(index), error)),
            Err((index, requested_blocks)) => {
                // Numbers as the caller will see the store: batch released.
                self.release(&extents);
                extents.clear();
                Err((
                    Some(index),
                    StoreError::NoSpace {
                        requested_blocks,
                        free_blocks: self.bitmap.free_blocks(),
                        largest_free_run_blocks: self.bitmap.largest_free_run_blocks(),
                    },
                ))
            }
        };
        if let Err(error) = result {
            self.release(&extents);
            self.cursor = cursor_before;
            return Err(error);
        }
        for extent in &extents {
            self.live.insert(extent.start, extent.len);
        }
        Ok(extents)
    }

    /// Frees extents allocated (and not made live) by a failed batch.
    fn release(&mut self, extents: &[Extent]) {
        for &extent in extents {
            self.bitmap
                .free_extent(extent)
                .expect("an extent just allocated can be freed");
        }
    }

    /// Allocates an extent of `len_blocks` next-fit from `hint` that holds
    /// no block found bad this session without a spare (such a block would
    /// fail every write again). Extents that do are held while the search
    /// moves past the bad block, then released; after
    /// [`BAD_BLOCK_SKIPS_MAX`] skips the search gives up (`None`, reported as
    /// no space).
    fn alloc_extent_avoiding_bad(&mut self, len_blocks: u64, hint: u64) -> Option<Extent> {
        let mut held = Vec::new();
        let mut hint = hint;
        let mut found = None;
        for _ in 0..=BAD_BLOCK_SKIPS_MAX {
            let Some(extent) = self.bitmap.alloc_extent_near(len_blocks, hint) else {
                break;
            };
            match self
                .unmapped_bad
                .range(extent.start..extent.end())
                .next_back()
            {
                None => {
                    found = Some(extent);
                    break;
                }
                Some(&bad) => {
                    held.push(extent);
                    hint = bad + 1;
                }
            }
        }
        for extent in held {
            self.bitmap
                .free_extent(extent)
                .expect("an extent just allocated can be freed");
        }
        found
    }

    /// The next-fit cursor after allocating `extent`: the block after it,
    /// wrapping to the data area's start at the end of the device.
    fn cursor_after(&self, extent: Extent) -> u64 {
        if extent.end() >= self.layout.device_blocks {
            self.layout.data_start
        } else {
            extent.end()
        }
    }

    /// Writes records `first_index..` of `batch` at `extents` (one per
    /// record, in order): each run of adjacent extents with one write per
    /// routed run; a run whose fast write fails is rewritten record by
    /// record through [`Self::write_data`] (per-block fallback and remap).
    /// On error returns the failing record's index in `batch`.
    fn write_extents(
        &mut self,
        extents: &[Extent],
        batch: &EncodedBatch,
        first_index: usize,
    ) -> Result<(), (usize, StoreError)> {
        let mut run_start = 0;
        while run_start < extents.len() {
            let mut run_end = run_start + 1;
            while run_end < extents.len() && extents[run_end].start == extents[run_end - 1].end() {
                run_end += 1;
            }
            let span = Extent {
                start: extents[run_start].start,
                len: extents[run_end - 1].end() - extents[run_start].start,
            };
            let bytes = batch.bytes_of(first_index + run_start..first_index + run_end);
            if !self.try_write_span(span, bytes) {
                for (offset, &extent) in extents[run_start..run_end].iter().enumerate() {
                    let index = first_index + run_start + offset;
                    self.write_data(extent, batch.bytes_of(index..index + 1))
                        .map_err(|error| (index, error))?;
                }
            }
            run_start = run_end;
        }
        Ok(())
    }

    /// Writes `bytes` at `span`, one write per routed run, with no fallback:
    /// `false` as soon as anything fails (the caller then takes the slow,
    /// per-block path, which counts the errors).
    fn try_write_span(&self, span: Extent, bytes: &[u8]) -> bool {
        let block_bytes = self.layout.block_bytes;
        let Ok(runs) = self.route(span) else {
            return false;
        };
        runs.iter().all(|run| {
            let at = ((run.logical_block - span.start) * block_bytes) as usize;
            let len = (run.len_blocks * block_bytes) as usize;
            self.device
                .write_at(run.device_block * block_bytes, &bytes[at..at + len])
                .is_ok()
        })
    }

    /// Reads and verifies the record at `extent` (exactly as `put` returned
    /// it). No byte is returned unless the record's checksums match. Built
    /// on [`get_into`](Self::get_into) with a fresh buffer; reuse a
    /// [`ReadBuf`] with `get_into` to avoid the allocations and the copy.
    pub fn get(&self, extent: Extent) -> Result<DecodedRecord, StoreError> {
        let mut buf = ReadBuf::new();
        let view = self.get_into(extent, &mut buf)?;
        let header = view.header;
        let payload = match header.codec {
            Codec::None => view.payload.to_vec(),
            // Already an owned buffer: take it rather than copy it.
            Codec::Lz4 | Codec::Zstd { .. } => buf.take_decoded(),
        };
        Ok(DecodedRecord {
            meta: header.meta,
            codec: header.codec,
            checksum_kind: header.checksum_kind,
            payload,
        })
    }

    /// Reads the record at `extent` (exactly as `put` returned it) into
    /// `buf` and returns a view of it once both checksums match: the same
    /// checks, errors and counters as [`get`](Self::get). A raw record's
    /// payload is a slice of `buf`'s block-aligned read window (no copy);
    /// an lz4 or zstd payload is decompressed into `buf`'s second buffer.
    /// Both buffers are reused by the next read.
    ///
    /// ```
    /// use strata_disk::device::MemDevice;
    /// use strata_disk::record::{ChecksumKind, Codec, CodecPolicy, Dtype, RecordMeta};
    /// use strata_disk::store::{ExtentStore, ReadBuf, StoreConfig};
    ///
    /// let config = StoreConfig {
    ///     cap_bytes: None,
    ///     policy: CodecPolicy::None,
    ///     checksum: ChecksumKind::Xxh3,
    ///     spare_blocks: 4,
    /// };
    /// let device = MemDevice::new(64 * 512, 512).unwrap();
    /// let mut store = ExtentStore::create(device, config).unwrap();
    /// let meta = RecordMeta { dtype: Dtype::Bytes, shape: vec![3] };
    /// let extents = store.put_many(&[(b"abc", &meta), (b"xyz", &meta)]).unwrap();
    /// let mut buf = ReadBuf::new();
    /// let view = store.get_into(extents[1], &mut buf).unwrap();
    /// assert_eq!((view.payload(), view.codec()), (&b"xyz"[..], Codec::None));
    /// ```
    pub fn get_into<'buf>(
        &self,
        extent: Extent,
        buf: &'buf mut ReadBuf,
    ) -> Result<RecordView<'buf>, StoreError> {
        self.check_live(extent)?;
        let block_bytes = self.layout.block_bytes;
        let window = buf.window((extent.len * block_bytes) as usize, block_bytes as usize);
        if let Err(source) = self.read_span(extent, window) {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Device {
                op: "read record",
                source,
            });
        }
        self.view_in(extent, buf, 0)
    }

    /// Reads and verifies every record of `extents` and returns the results
    /// in the order of `extents`, one per entry (an entry that is not a live
    /// record gets [`StoreError::NotAllocated`]; the others are unaffected).
    /// See [`get_many_with`](Self::get_many_with) for how reads are
    /// coalesced; this copies each payload out once.
    pub fn get_many(&self, extents: &[Extent]) -> Vec<Result<DecodedRecord, StoreError>> {
        let mut results: Vec<Option<Result<DecodedRecord, StoreError>>> =
            extents.iter().map(|_| None).collect();
        let mut buf = ReadBuf::new();
        self.get_many_with(extents, &mut buf, |index, result| {
            results[index] = Some(result.map(|view| view.to_decoded()));
        });
        results
            .into_iter()
            .map(|result| result.expect("get_many_with visits every index once"))
            .collect()
    }

    /// Reads and verifies every record of `extents`, calling
    /// `visit(index, result)` once per entry, `index` being its position in
    /// `extents`. Records are read in block order: adjacent extents (one
    /// ending where the next starts) are coalesced into one device read of
    /// at most [`GET_MANY_READ_BYTES_MAX`] bytes (a larger record alone is
    /// read whole) into `buf`, then each is verified exactly as
    /// [`get_into`](Self::get_into) does and visited with a view into
    /// `buf`. Visits therefore come in block order, not in the order of
    /// `extents`. If a coalesced read fails, its records are read again one
    /// by one, so a read error costs only the records it touches (and
    /// [`StoreStats::read_errors`] counts those reads).
    pub fn get_many_with(
        &self,
        extents: &[Extent],
        buf: &mut ReadBuf,
        mut visit: impl FnMut(usize, Result<RecordView<'_>, StoreError>),
    ) {
        let block_bytes = self.layout.block_bytes;
        let mut order: Vec<usize> = (0..extents.len()).collect();
        order.sort_by_key(|&index| (extents[index].start, index));
        let mut group_start = 0;
        while group_start < order.len() {
            let first = extents[order[group_start]];
            if let Err(error) = self.check_live(first) {
                visit(order[group_start], Err(error));
                group_start += 1;
                continue;
            }
            let mut group_end = group_start + 1;
            let mut span_end = first.end();
            while group_end < order.len() {
                let next = extents[order[group_end]];
                let fits = (next.end() - first.start) * block_bytes <= GET_MANY_READ_BYTES_MAX;
                if next.start != span_end || !fits || self.check_live(next).is_err() {
                    break;
                }
                span_end = next.end();
                group_end += 1;
            }
            let group = &order[group_start..group_end];
            group_start = group_end;
            if group.len() == 1 {
                visit(group[0], self.get_into(first, buf));
                continue;
            }
            let span = Extent {
                start: first.start,
                len: span_end - first.start,
            };
            let window = buf.window((span.len * block_bytes) as usize, block_bytes as usize);
            if self.read_span(span, window).is_ok() {
                for &index in group {
                    let extent = extents[index];
                    let at = ((extent.start - span.start) * block_bytes) as usize;
                    visit(index, self.view_in(extent, buf, at));
                }
            } else {
                for &index in group {
                    visit(index, self.get_into(extents[index], buf));
                }
            }
        }
    }

    /// [`StoreError::NotAllocated`] unless `extent` is a live record exactly.
    fn check_live(&self, extent: Extent) -> Result<(), StoreError> {
        if self.live.get(&extent.start) == Some(&extent.len) {
            Ok(())
        } else {
            Err(StoreError::NotAllocated { extent })
        }
    }

    /// Reads the blocks of `span` (routed around remapped blocks) into
    /// `window`, exactly `span.len` blocks. Counts nothing.
    fn read_span(&self, span: Extent, window: &mut [u8]) -> Result<(), DeviceError> {
        let block_bytes = self.layout.block_bytes;
        let runs = self
            .table
            .route(span.start, span.len)
            .expect("a live extent lies inside the device");
        for run in runs {
            let at = ((run.logical_block - span.start) * block_bytes) as usize;
            let len = (run.len_blocks * block_bytes) as usize;
            self.device
                .read_at(run.device_block * block_bytes, &mut window[at..at + len])?;
        }
        Ok(())
    }

    /// Verifies the record of `extent` at byte `at` of `buf`'s window and
    /// views it, decompressing into `buf` if needed. Counts checksum
    /// failures.
    fn view_in<'buf>(
        &self,
        extent: Extent,
        buf: &'buf mut ReadBuf,
        at: usize,
    ) -> Result<RecordView<'buf>, StoreError> {
        let location = RecordLocation {
            start_block: extent.start,
            len_blocks: extent.len,
        };
        let (window, decoded) = buf.parts();
        let bytes = &window[at..at + (extent.len * self.layout.block_bytes) as usize];
        let VerifiedRecord {
            header,
            stored_range,
        } = record::verify(bytes, location).map_err(|source| self.record_error(extent, source))?;
        let stored = &bytes[stored_range];
        let payload = match header.codec {
            Codec::None => stored,
            Codec::Lz4 | Codec::Zstd { .. } => {
                decoded.clear();
                record::decompress_into(&header, stored, location, decoded)
                    .map_err(|source| self.record_error(extent, source))?;
                let decoded: &'buf Vec<u8> = decoded;
                decoded.as_slice()
            }
        };
        Ok(RecordView { header, payload })
    }

    /// Wraps a record error for `extent`, counting checksum mismatches.
    fn record_error(&self, extent: Extent, source: RecordError) -> StoreError {
        if matches!(
            source,
            RecordError::HeaderChecksum { .. } | RecordError::PayloadChecksum { .. }
        ) {
            self.checksum_failures.fetch_add(1, Ordering::Relaxed);
        }
        StoreError::Record { extent, source }
    }

    /// The runs of `extent` on the device: normal blocks in place, remapped
    /// blocks on their spares.
    fn route(&self, extent: Extent) -> Result<Vec<RouteRun>, StoreError> {
        Ok(self
            .table
            .route(extent.start, extent.len)
            .map_err(|source| StoreError::RemapTable { source })?
            .collect())
    }

    /// Writes `bytes` (whole blocks) at `extent`, run by run through the
    /// remap table. A run whose write fails is rewritten block by block,
    /// and each block that fails with a media error is remapped
    /// ([`Self::remap_and_write`]).
    fn write_data(&mut self, extent: Extent, bytes: &[u8]) -> Result<(), StoreError> {
        let block_bytes = self.layout.block_bytes;
        for run in self.route(extent)? {
            let at = ((run.logical_block - extent.start) * block_bytes) as usize;
            let data = &bytes[at..at + (run.len_blocks * block_bytes) as usize];
            if self
                .device
                .write_at(run.device_block * block_bytes, data)
                .is_ok()
            {
                continue;
            }
            for (i, block) in data.chunks_exact(block_bytes as usize).enumerate() {
                let logical_block = run.logical_block + i as u64;
                let device_block = run.device_block + i as u64;
                let Err(source) = self.device.write_at(device_block * block_bytes, block) else {
                    continue;
                };
                self.write_errors += 1;
                if device_block != logical_block {
                    return Err(StoreError::SpareWriteFailed {
                        bad_block: logical_block,
                        spare_block: device_block,
                        source,
                    });
                }
                if !is_media_error(&source) {
                    return Err(StoreError::Device {
                        op: "write record",
                        source,
                    });
                }
                self.remap_and_write(logical_block, block)?;
            }
        }
        Ok(())
    }

    /// Remaps `bad_block` and writes `block` to its spare: take a spare,
    /// record the remap PENDING, write and flush both table copies, make the
    /// entry ACTIVE, write the block on the spare. A failed table write
    /// leaves the entry PENDING and the store needing a reopen (the copies
    /// on disk may or may not hold the entry; `open` recovers either).
    fn remap_and_write(&mut self, bad_block: u64, block: &[u8]) -> Result<(), StoreError> {
        let spare_block = match self.spares.take() {
            Ok(spare_block) => spare_block,
            Err(RemapError::SparesExhausted { spares_total }) => {
                self.unmapped_bad.insert(bad_block);
                return Err(StoreError::SparesExhausted {
                    bad_block,
                    spares_total,
                });
            }
            Err(source) => return Err(StoreError::RemapTable { source }),
        };
        // Cannot fail: the block is a data block with no entry (it was
        // routed to itself and no entry is PENDING while writes are
        // allowed), the spare is free, and the table holds one entry per
        // spare.
        self.table
            .begin(bad_block, spare_block)
            .unwrap_or_else(|e| panic!("remap of {bad_block} to spare {spare_block}: {e}"));
        for _ in 0..REMAP_TABLE_COPIES {
            if let Err(error) = self.write_remap_copy(self.remap_sequence + 1) {
                self.needs_reopen = true;
                return Err(error);
            }
        }
        self.table
            .activate(bad_block)
            .unwrap_or_else(|e| panic!("activate remap of {bad_block}: {e}"));
        let block_bytes = self.layout.block_bytes;
        self.device
            .write_at(spare_block * block_bytes, block)
            .map_err(|source| {
                self.write_errors += 1;
                StoreError::SpareWriteFailed {
                    bad_block,
                    spare_block,
                    source,
                }
            })
    }

    /// Writes the table as copy `sequence % REMAP_TABLE_COPIES` with
    /// `sequence`, zero-padded to the copy's blocks, then flushes.
    fn write_remap_copy(&mut self, sequence: u64) -> Result<(), StoreError> {
        let block_bytes = self.layout.block_bytes;
        let mut bytes = self.table.encode_copy(sequence);
        bytes.resize(self.layout.remap_copy_bytes(), 0);
        let copy = sequence % REMAP_TABLE_COPIES;
        let start_block = self.layout.remap_start + copy * self.layout.remap_copy_blocks;
        self.device
            .write_at(start_block * block_bytes, &bytes)
            .map_err(device_error("write remap table"))?;
        self.device
            .flush()
            .map_err(device_error("flush remap table"))?;
        self.remap_sequence = sequence;
        Ok(())
    }

    /// Forgets the record at `extent` (exactly as `put` returned it). Its
    /// blocks become allocatable after the next successful commit.
    /// [`StoreError::NotAllocated`] for anything that is not a live record,
    /// a double free included.
    pub fn free(&mut self, extent: Extent) -> Result<(), StoreError> {
        if self.needs_reopen {
            return Err(StoreError::NeedsReopen);
        }
        if self.live.get(&extent.start) != Some(&extent.len) {
            return Err(StoreError::NotAllocated { extent });
        }
        self.live.remove(&extent.start);
        self.pending_free.push(extent);
        Ok(())
    }

    /// Makes every earlier put and free durable; see the module
    /// documentation for the write order. On a device error the store
    /// refuses further writes ([`StoreError::NeedsReopen`]): the on-disk
    /// state is then the previous commit or this one, and only reopening
    /// tells which.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.needs_reopen {
            return Err(StoreError::NeedsReopen);
        }
        // The new allocation map: pending frees released.
        let mut next = self.bitmap.clone();
        for &extent in &self.pending_free {
            next.free_extent(extent)
                .expect("a pending free is allocated in the bitmap");
        }
        let (slot_bytes, image_len_bytes) = self.slot_content(&next);
        let commit = Commit {
            sequence: self.committed.sequence + 1,
            current_slot: 1 - self.committed.current_slot,
            slot_len_bytes: slot_bytes.len() as u64,
            slot_checksum: xxh3(&slot_bytes),
            image_len_bytes,
            cursor: self.cursor,
        };
        let result = self
            .device
            .flush()
            .map_err(device_error("flush records"))
            .and_then(|()| self.write_slot(commit.current_slot, &slot_bytes))
            .and_then(|()| self.write_superblock(&commit));
        if let Err(error) = result {
            self.needs_reopen = true;
            return Err(error);
        }
        self.bitmap = next;
        self.pending_free.clear();
        self.committed = commit;
        Ok(())
    }

    /// The slot content for `bitmap` and the live records: the bitmap image
    /// then the record-start map. Returns it and the image's length.
    fn slot_content(&self, bitmap: &BlockBitmap) -> (Vec<u8>, u64) {
        let mut bytes = bitmap.to_bytes();
        let image_len_bytes = bytes.len() as u64;
        let map_start = bytes.len();
        bytes.resize(
            map_start + start_map_bytes(self.layout.device_blocks) as usize,
            0,
        );
        for &start in self.live.keys() {
            bytes[map_start + (start / 8) as usize] |= 1 << (start % 8);
        }
        let capacity = self.layout.slot_blocks * self.layout.block_bytes;
        assert!(
            bytes.len() as u64 <= capacity,
            "slot content of {} bytes exceeds the slot's {capacity} bytes",
            bytes.len()
        );
        (bytes, image_len_bytes)
    }

    /// Writes `content` (padded with zeros) into bitmap slot `slot`, then flushes.
    fn write_slot(&self, slot: u64, content: &[u8]) -> Result<(), StoreError> {
        let block_bytes = self.layout.block_bytes;
        let mut padded = content.to_vec();
        padded.resize(
            (content.len() as u64).div_ceil(block_bytes) as usize * block_bytes as usize,
            0,
        );
        self.device
            .write_at(self.layout.slot_start[slot as usize] * block_bytes, &padded)
            .map_err(device_error("write bitmap slot"))?;
        self.device
            .flush()
            .map_err(device_error("flush bitmap slot"))
    }

    /// Writes superblock copy 0 for `commit` and flushes, then copy 1 and
    /// flushes: at every instant at least one copy is whole, and once both
    /// are written a damaged copy costs nothing.
    fn write_superblock(&self, commit: &Commit) -> Result<(), StoreError> {
        for copy_index in 0..SUPERBLOCK_COPIES {
            let block = encode_superblock(&self.layout, commit, copy_index);
            self.device
                .write_at(copy_index * self.layout.block_bytes, &block)
                .map_err(device_error("write superblock"))?;
            self.device
                .flush()
                .map_err(device_error("flush superblock"))?;
        }
        Ok(())
    }

    /// Current figures.
    pub fn stats(&self) -> StoreStats {
        let block_bytes = self.layout.block_bytes;
        let pending: u64 = self.pending_free.iter().map(|e| e.len).sum();
        let remap_stats = remap::RemapStats::collect(&self.table, &self.spares);
        StoreStats {
            block_bytes,
            capacity_bytes: self.layout.data_blocks() * block_bytes,
            used_bytes: self.bitmap.allocated_blocks() * block_bytes,
            free_bytes: self.bitmap.free_blocks() * block_bytes,
            pending_free_bytes: pending * block_bytes,
            cap_bytes: self.config.cap_bytes,
            records: self.live.len() as u64,
            sequence: self.committed.sequence,
            remaps: remap_stats.remaps,
            pending: remap_stats.pending,
            spares_left: remap_stats.spares_left,
            spares_total: remap_stats.spares_total,
            bad_blocks: self.table.len() as u64 + self.unmapped_bad.len() as u64,
            read_errors: self.read_errors.load(Ordering::Relaxed),
            write_errors: self.write_errors,
            checksum_failures: self.checksum_failures.load(Ordering::Relaxed),
        }
    }

    /// The live records' extents, in block order.
    pub fn extents(&self) -> impl Iterator<Item = Extent> + '_ {
        self.live.iter().map(|(&start, &len)| Extent { start, len })
    }

    /// The store's block layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Gives the device back (nothing is written: call
    /// [`commit`](Self::commit) first to keep uncommitted work).
    pub fn into_device(self) -> D {
        self.device
    }

    /// O(device blocks) check of every invariant; panics with the values.
    ///
    /// - the bitmap's own invariants; its only reserved range is the
    ///   metadata area `0..data_start`;
    /// - live records and pending frees are disjoint, inside the data area,
    ///   and every block of them is allocated;
    /// - allocated blocks are exactly those of live records and pending frees;
    /// - the cursor lies in the data area;
    /// - the remap table's and spare pool's own invariants; every entry maps
    ///   a data block to a spare-pool block; spares in use equal entries; no
    ///   entry is PENDING unless the store needs reopening; blocks found bad
    ///   without a spare are data blocks with no entry.
    pub fn check_invariants(&self) {
        self.table.check_invariants();
        self.spares.check_invariants();
        let layout = &self.layout;
        assert_eq!(
            self.spares.spares_left() + self.table.len() as u64,
            layout.spare_blocks,
            "{} spares left + {} remap entries != {} spare blocks",
            self.spares.spares_left(),
            self.table.len(),
            layout.spare_blocks
        );
        for entry in self.table.entries() {
            assert!(
                entry.bad_block >= layout.data_start
                    && entry.bad_block < layout.device_blocks
                    && entry.spare_block >= layout.spare_start
                    && entry.spare_block < layout.spare_start + layout.spare_blocks,
                "remap entry {entry:?} outside data area {}..{} or spare pool {}+{}",
                layout.data_start,
                layout.device_blocks,
                layout.spare_start,
                layout.spare_blocks
            );
            assert!(
                entry.state == RemapState::Active || self.needs_reopen,
                "remap entry {entry:?} PENDING while the store accepts writes"
            );
        }
        for &block in &self.unmapped_bad {
            assert!(
                block >= layout.data_start
                    && block < layout.device_blocks
                    && self.table.entry(block).is_none(),
                "unmapped bad block {block} outside the data area {}..{} or remapped ({:?})",
                layout.data_start,
                layout.device_blocks,
                self.table.entry(block)
            );
        }
        self.bitmap.check_invariants();
        let layout = &self.layout;
        assert_eq!(
            self.bitmap.reserved(),
            std::slice::from_ref(&(0..layout.data_start)),
            "reserved ranges {:?}, expected only the metadata area 0..{}",
            self.bitmap.reserved(),
            layout.data_start
        );
        let mut extents: Vec<Extent> = self
            .extents()
            .chain(self.pending_free.iter().copied())
            .collect();
        extents.sort_by_key(|e| e.start);
        let mut previous_end = layout.data_start;
        let mut blocks = 0u64;
        for extent in &extents {
            assert!(
                extent.len > 0
                    && extent.start >= previous_end
                    && extent.end() <= layout.device_blocks,
                "extent {extent:?} overlaps the previous one (ending at {previous_end}) or leaves \
                 the data area {}..{}",
                layout.data_start,
                layout.device_blocks
            );
            for block in extent.blocks() {
                assert!(
                    self.bitmap.is_allocated(block),
                    "block {block} of record {extent:?} is not allocated in the bitmap"
                );
            }
            blocks += extent.len;
            previous_end = extent.end();
        }
        assert_eq!(
            blocks,
            self.bitmap.allocated_blocks(),
            "records and pending frees cover {blocks} blocks, the bitmap has {} allocated",
            self.bitmap.allocated_blocks()
        );
        assert!(
            self.cursor >= layout.data_start && self.cursor < layout.device_blocks,
            "cursor {} outside the data area {}..{}",
            self.cursor,
            layout.data_start,
            layout.device_blocks
        );
    }
}

/// Reads both remap table copies and recovers the table (PENDING entries
/// made ACTIVE, see [`remap::recover`]); checks every bad block lies in the
/// data area. A copy that cannot be read counts as empty (truncated).
fn read_remap_table<D: BlockDevice>(
    device: &D,
    layout: &Layout,
) -> Result<(u64, RemapTable), StoreError> {
    let block_bytes = layout.block_bytes;
    let copies: Vec<Vec<u8>> = (0..REMAP_TABLE_COPIES)
        .map(|copy| {
            let mut bytes = vec![0u8; layout.remap_copy_bytes()];
            let start_block = layout.remap_start + copy * layout.remap_copy_blocks;
            match device.read_at(start_block * block_bytes, &mut bytes) {
                Ok(()) => bytes,
                Err(_) => Vec::new(),
            }
        })
        .collect();
    let slices: Vec<&[u8]> = copies.iter().map(Vec::as_slice).collect();
    let (sequence, table) =
        remap::recover(&slices).map_err(|source| StoreError::RemapTable { source })?;
    for entry in table.entries() {
        if entry.bad_block < layout.data_start || entry.bad_block >= layout.device_blocks {
            return Err(StoreError::RemapOutsideData {
                bad_block: entry.bad_block,
                data_start: layout.data_start,
                device_blocks: layout.device_blocks,
            });
        }
    }
    Ok((sequence, table))
}

/// Rebuilds the live records from a bitmap and its record-start map, and
/// checks they agree with each other and with the layout.
fn recover_records(
    bitmap: &BlockBitmap,
    start_map: &[u8],
    layout: &Layout,
) -> Result<BTreeMap<u64, u64>, String> {
    if bitmap.capacity_blocks() != layout.device_blocks {
        return Err(format!(
            "bitmap capacity {} blocks, device has {}",
            bitmap.capacity_blocks(),
            layout.device_blocks
        ));
    }
    if bitmap.reserved() != std::slice::from_ref(&(0..layout.data_start)) {
        return Err(format!(
            "reserved ranges {:?}, expected 0..{}",
            bitmap.reserved(),
            layout.data_start
        ));
    }
    if start_map.len() as u64 != start_map_bytes(layout.device_blocks) {
        return Err(format!(
            "record-start map of {} bytes, expected {}",
            start_map.len(),
            start_map_bytes(layout.device_blocks)
        ));
    }
    let is_start = |block: u64| start_map[(block / 8) as usize] >> (block % 8) & 1 == 1;
    for block in (0..layout.data_start).chain(layout.device_blocks..start_map.len() as u64 * 8) {
        if is_start(block) {
            return Err(format!(
                "record start at block {block}, outside the data area"
            ));
        }
    }
    let mut live = BTreeMap::new();
    let mut open: Option<u64> = None;
    for block in layout.data_start..layout.device_blocks {
        let allocated = bitmap.is_allocated(block);
        match (allocated, is_start(block)) {
            (false, true) => return Err(format!("record start at free block {block}")),
            (true, false) if open.is_none() => {
                return Err(format!("allocated block {block} belongs to no record"))
            }
            (true, false) => {}
            (_, starts) => {
                if let Some(start) = open.take() {
                    live.insert(start, block - start);
                }
                if starts {
                    open = Some(block);
                }
            }
        }
    }
    if let Some(start) = open {
        live.insert(start, layout.device_blocks - start);
    }
    Ok(live)
}
