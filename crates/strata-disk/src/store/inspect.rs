//! Inspection and verification of an extent store: the data behind
//! `strata disk inspect` and `strata disk verify`. Nothing here prints.
//!
//! - [`ExtentStore::inspect`]: layout, usage, spare pool and remap table of
//!   an open store ([`StoreReport`]).
//! - [`check_metadata`]: a raw check of every metadata copy on a device
//!   that does not go through [`ExtentStore::open`], so a store too damaged
//!   to open still says which copy is bad and which is good
//!   ([`MetadataReport`]).
//! - [`ExtentStore::verify`]: reads and verifies every live record, adds the
//!   metadata check and an allocation consistency check ([`VerifyReport`]).
//! - [`open_file_store_readonly`] and [`open_file_store`]: open a store in a
//!   file whose block size the caller does not know
//!   ([`detect_block_bytes`] reads it from a superblock copy). The read-only
//!   form goes through [`ReadOnlyFile`], which opens the file `O_RDONLY`, so
//!   inspecting or verifying cannot write a byte.
//!
//! ```
//! use strata_disk::device::{BlockDevice, MemDevice};
//! use strata_disk::record::{ChecksumKind, CodecPolicy, Dtype, RecordMeta};
//! use strata_disk::store::{check_metadata, ExtentStore, StoreConfig};
//!
//! let config = StoreConfig {
//!     cap_bytes: None,
//!     policy: CodecPolicy::None,
//!     checksum: ChecksumKind::Xxh3,
//!     spare_blocks: 4,
//! };
//! let device = MemDevice::new(64 * 512, 512).unwrap();
//! let mut store = ExtentStore::create(device, config).unwrap();
//! let meta = RecordMeta { dtype: Dtype::Bytes, shape: vec![5] };
//! let extent = store.put(b"hello", &meta).unwrap();
//! store.commit().unwrap();
//! assert_eq!(store.inspect().stats.records, 1);
//! assert!(store.verify().is_clean());
//!
//! // Flip a payload byte: verify names the record.
//! let mut block = vec![0u8; 512];
//! store.device().read_at(extent.start * 512, &mut block).unwrap();
//! block[130] ^= 1;
//! store.device().write_at(extent.start * 512, &block).unwrap();
//! let report = store.verify();
//! assert_eq!(report.bad_records.len(), 1);
//! assert_eq!(report.bad_records[0].extent, extent);
//!
//! // Destroy superblock copy 1: the raw check says copy 0 is still good.
//! store.device().write_at(512, &[0u8; 512]).unwrap();
//! let metadata = check_metadata(store.device());
//! assert!(metadata.superblocks[0].defect.is_none());
//! assert!(metadata.superblocks[1].defect.is_some());
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use strata_bitmap::{BlockBitmap, ImageError};

use super::{
    decode_superblock, get_u64, recover_records, xxh3, Commit, Extent, ExtentStore, Layout,
    StoreConfig, StoreError, StoreStats, SuperblockDefect, BITMAP_SLOTS, REMAP_TABLE_COPIES,
    SB_OFFSET_BLOCK_BYTES, SB_OFFSET_CHECKSUM, SUPERBLOCK_COPIES, SUPERBLOCK_LEN_BYTES,
    SUPERBLOCK_MAGIC,
};
use crate::device::{
    check_access, check_geometry, BlockDevice, DeviceError, FileDevice, FileOptions,
    BLOCK_BYTES_MAX, BLOCK_BYTES_MIN,
};
use crate::record::{ChecksumKind, CodecPolicy, RecordError};
use crate::remap::{self, RemapEntry, RemapError, SparePool};

/// Names of the superblock copies, indexed by copy.
const SUPERBLOCK_AREA_NAMES: [&str; SUPERBLOCK_COPIES as usize] =
    ["superblock copy 0", "superblock copy 1"];
/// Names of the bitmap slots, indexed by slot.
const SLOT_AREA_NAMES: [&str; BITMAP_SLOTS as usize] = ["bitmap slot 0", "bitmap slot 1"];
/// Names of the remap table copies, indexed by copy.
const REMAP_AREA_NAMES: [&str; REMAP_TABLE_COPIES as usize] =
    ["remap table copy 0", "remap table copy 1"];

/// Message of the I/O error a [`ReadOnlyFile`] returns for a write.
const READ_ONLY_MESSAGE: &str = "the store file was opened read-only";

// The superblock copy probed for the block size is read as its first
// SUPERBLOCK_LEN_BYTES bytes, which every allowed block size holds.
const _: () = assert!(SUPERBLOCK_LEN_BYTES as u64 <= BLOCK_BYTES_MIN);
// Copy 1 sits at byte offset `block_bytes`: the probe relies on copies 0 and 1
// being the first two blocks.
const _: () = assert!(SUPERBLOCK_COPIES == 2);

// ---------------------------------------------------------------------------
// Layout areas
// ---------------------------------------------------------------------------

/// One area of a store's layout, in blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    /// What the area holds, e.g. `"bitmap slot 1"`, `"spare pool"`.
    pub name: &'static str,
    /// Its first block.
    pub first_block: u64,
    /// Its length in blocks.
    pub len_blocks: u64,
}

impl Layout {
    /// Every area in block order: superblock copies, bitmap slots, remap
    /// table copies, spare pool, data area. They tile `0..device_blocks`.
    pub fn areas(&self) -> Vec<Area> {
        let mut areas = Vec::new();
        for (copy, name) in SUPERBLOCK_AREA_NAMES.iter().enumerate() {
            areas.push(Area {
                name,
                first_block: copy as u64,
                len_blocks: 1,
            });
        }
        for (slot, name) in SLOT_AREA_NAMES.iter().enumerate() {
            areas.push(Area {
                name,
                first_block: self.slot_start[slot],
                len_blocks: self.slot_blocks,
            });
        }
        for (copy, name) in REMAP_AREA_NAMES.iter().enumerate() {
            areas.push(Area {
                name,
                first_block: self.remap_copy_start(copy as u64),
                len_blocks: self.remap_copy_blocks,
            });
        }
        areas.push(Area {
            name: "spare pool",
            first_block: self.spare_start,
            len_blocks: self.spare_blocks,
        });
        areas.push(Area {
            name: "data area",
            first_block: self.data_start,
            len_blocks: self.data_blocks(),
        });
        areas
    }

    /// First block of remap table copy `copy`.
    pub fn remap_copy_start(&self, copy: u64) -> u64 {
        self.remap_start + copy * self.remap_copy_blocks
    }
}

impl StoreConfig {
    /// A configuration for opening a store only to read it: no cap, default
    /// codec policy and checksum (they only matter to `put`), and
    /// `spare_blocks` 0 (`open` reads the layout from the superblock).
    pub fn for_reading() -> StoreConfig {
        StoreConfig {
            cap_bytes: None,
            policy: CodecPolicy::default(),
            checksum: ChecksumKind::default(),
            spare_blocks: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Inspect
// ---------------------------------------------------------------------------

/// What [`ExtentStore::inspect`] reports: everything an operator needs to
/// see of an open store, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreReport {
    /// The block layout (block size, device length, every area).
    pub layout: Layout,
    /// The layout as a list of areas, in block order.
    pub areas: Vec<Area>,
    /// Usage, spare pool and error counters.
    pub stats: StoreStats,
    /// The longest run of free data blocks: the largest record that fits.
    pub largest_free_run_blocks: u64,
    /// The bitmap slot of the last durable commit (0 or 1).
    pub current_slot: u64,
    /// The next-fit cursor: the block the next put starts looking at.
    pub cursor_block: u64,
    /// Sequence number of the newest remap table copy.
    pub remap_sequence: u64,
    /// Every remap entry (bad block, spare, state), by bad block.
    pub remap_entries: Vec<RemapEntry>,
    /// Data blocks found bad this session with no spare left for them.
    pub unmapped_bad_blocks: Vec<u64>,
    /// Whether an earlier commit or remap table write failed part way (the
    /// store refuses writes until reopened).
    pub needs_reopen: bool,
}

impl StoreReport {
    /// Bytes on the device.
    pub fn device_bytes(&self) -> u64 {
        self.layout.device_blocks * self.layout.block_bytes
    }
}

impl<D: BlockDevice> ExtentStore<D> {
    /// The store's layout, usage, spare pool and remap table. Reads nothing
    /// from the device; O(device blocks) for the largest free run.
    pub fn inspect(&self) -> StoreReport {
        // `largest_free_run_blocks` refreshes the bitmap's run summaries,
        // which needs `&mut`; a copy keeps `inspect` a reader.
        let largest_free_run_blocks = self.bitmap.clone().largest_free_run_blocks();
        StoreReport {
            layout: self.layout,
            areas: self.layout.areas(),
            stats: self.stats(),
            largest_free_run_blocks,
            current_slot: self.committed.current_slot,
            cursor_block: self.cursor,
            remap_sequence: self.remap_sequence,
            remap_entries: self.table.entries(),
            unmapped_bad_blocks: self.unmapped_bad.iter().copied().collect(),
            needs_reopen: self.needs_reopen,
        }
    }

    /// Reads and verifies every live record (header checksum, payload
    /// checksum, decompression: everything `get` checks), checks every
    /// metadata copy on the device ([`check_metadata`]) and that the
    /// allocation map agrees with the records. Reading goes through `get`,
    /// so failures also count in [`StoreStats::checksum_failures`] and
    /// [`StoreStats::read_errors`]. Writes nothing.
    pub fn verify(&self) -> VerifyReport {
        let metadata = check_metadata(&self.device);
        let mut records_checked = 0u64;
        let mut record_bytes_checked = 0u64;
        let mut bad_records = Vec::new();
        for extent in self.extents() {
            records_checked += 1;
            record_bytes_checked += extent.len * self.layout.block_bytes;
            if let Err(error) = self.get(extent) {
                bad_records.push(BadRecord { extent, error });
            }
        }
        VerifyReport {
            metadata,
            records_checked,
            record_bytes_checked,
            bad_records,
            consistency: self.check_consistency(),
        }
    }

    /// The in-memory allocation state against the records and the layout;
    /// the non-panicking part of `check_invariants` an operator cares about.
    fn check_consistency(&self) -> Vec<ConsistencyDefect> {
        let mut defects = Vec::new();
        let record_blocks: u64 = self.live.values().sum();
        let pending_free_blocks: u64 = self.pending_free.iter().map(|e| e.len).sum();
        let metadata_blocks = self.layout.data_start;
        let bitmap_blocks = self.bitmap.allocated_blocks() + self.bitmap.reserved_blocks();
        if bitmap_blocks != record_blocks + pending_free_blocks + metadata_blocks {
            defects.push(ConsistencyDefect::AllocationMismatch {
                bitmap_blocks,
                record_blocks,
                pending_free_blocks,
                metadata_blocks,
            });
        }
        if self.bitmap.reserved() != std::slice::from_ref(&(0..metadata_blocks)) {
            defects.push(ConsistencyDefect::ReservedMismatch {
                reserved: self.bitmap.reserved().to_vec(),
                data_start: metadata_blocks,
            });
        }
        let spares_left = self.spares.spares_left();
        let remap_entries = self.table.len() as u64;
        if spares_left + remap_entries != self.layout.spare_blocks {
            defects.push(ConsistencyDefect::SpareCountMismatch {
                spares_left,
                remap_entries,
                spare_blocks: self.layout.spare_blocks,
            });
        }
        defects
    }
}

// ---------------------------------------------------------------------------
// Verify
// ---------------------------------------------------------------------------

/// A live record that failed verification.
#[derive(Debug)]
pub struct BadRecord {
    /// The record's extent.
    pub extent: Extent,
    /// Why: [`StoreError::Record`] (checksums, decoding) or
    /// [`StoreError::Device`] (the read failed).
    pub error: StoreError,
}

impl BadRecord {
    /// The record error, when the bytes were read but did not verify.
    pub fn record_error(&self) -> Option<&RecordError> {
        match &self.error {
            StoreError::Record { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The checksum that failed: its algorithm, the value stored and the
    /// value computed. `None` unless the header or payload checksum failed.
    pub fn checksums(&self) -> Option<(ChecksumKind, u64, u64)> {
        match self.record_error()? {
            // The header checksum is always xxh3.
            RecordError::HeaderChecksum {
                expected, actual, ..
            } => Some((ChecksumKind::Xxh3, *expected, *actual)),
            RecordError::PayloadChecksum {
                kind,
                expected,
                actual,
                ..
            } => Some((*kind, *expected, *actual)),
            _ => None,
        }
    }

    /// A short name of what failed: `"header checksum"`, `"payload
    /// checksum"`, `"magic"`, `"decompress"`, `"read"`, or `"record"` for
    /// any other decoding error.
    pub fn kind(&self) -> &'static str {
        match (&self.error, self.record_error()) {
            (_, Some(RecordError::HeaderChecksum { .. })) => "header checksum",
            (_, Some(RecordError::PayloadChecksum { .. })) => "payload checksum",
            (_, Some(RecordError::BadMagic { .. })) => "magic",
            (_, Some(RecordError::Decompress { .. } | RecordError::LengthMismatch { .. })) => {
                "decompress"
            }
            (StoreError::Device { .. }, None) => "read",
            _ => "record",
        }
    }
}

/// The allocation state disagrees with the records or the layout.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsistencyDefect {
    /// Blocks allocated or reserved in the bitmap differ from the blocks of
    /// live records, frees pending commit and the metadata area.
    AllocationMismatch {
        /// Allocated plus reserved blocks in the bitmap.
        bitmap_blocks: u64,
        /// Blocks of live records.
        record_blocks: u64,
        /// Blocks of records freed since the last commit.
        pending_free_blocks: u64,
        /// Blocks of the metadata area (`data_start`).
        metadata_blocks: u64,
    },
    /// The bitmap's reserved ranges are not exactly the metadata area.
    ReservedMismatch {
        /// The reserved ranges found.
        reserved: Vec<Range<u64>>,
        /// First block of the data area.
        data_start: u64,
    },
    /// Free spares plus remap entries differ from the spare pool's size.
    SpareCountMismatch {
        /// Spares still free.
        spares_left: u64,
        /// Remap entries (each holds one spare).
        remap_entries: u64,
        /// Blocks in the spare pool.
        spare_blocks: u64,
    },
}

impl fmt::Display for ConsistencyDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsistencyDefect::AllocationMismatch {
                bitmap_blocks,
                record_blocks,
                pending_free_blocks,
                metadata_blocks,
            } => write!(
                f,
                "the bitmap holds {bitmap_blocks} blocks allocated or reserved, but records \
                 cover {record_blocks}, pending frees {pending_free_blocks} and the metadata \
                 area {metadata_blocks}"
            ),
            ConsistencyDefect::ReservedMismatch {
                reserved,
                data_start,
            } => write!(
                f,
                "the bitmap reserves {reserved:?}, expected only the metadata area 0..{data_start}"
            ),
            ConsistencyDefect::SpareCountMismatch {
                spares_left,
                remap_entries,
                spare_blocks,
            } => write!(
                f,
                "{spares_left} spares free plus {remap_entries} remap entries is not the spare \
                 pool's {spare_blocks} blocks"
            ),
        }
    }
}

/// What [`ExtentStore::verify`] found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Every metadata copy on the device, checked raw.
    pub metadata: MetadataReport,
    /// Live records read and verified.
    pub records_checked: u64,
    /// Bytes of their extents (whole blocks).
    pub record_bytes_checked: u64,
    /// The records that failed, in block order.
    pub bad_records: Vec<BadRecord>,
    /// Disagreements between the allocation map, the records and the layout.
    pub consistency: Vec<ConsistencyDefect>,
}

impl VerifyReport {
    /// Whether nothing is wrong: every record verifies, every metadata copy
    /// is whole and agrees with its twin, and the allocation map is
    /// consistent.
    pub fn is_clean(&self) -> bool {
        self.damage_count() == 0
    }

    /// Number of problems found: bad records, metadata findings and
    /// consistency defects.
    pub fn damage_count(&self) -> usize {
        self.bad_records.len() + self.metadata.findings.len() + self.consistency.len()
    }
}

// ---------------------------------------------------------------------------
// Raw metadata check
// ---------------------------------------------------------------------------

/// One superblock copy as found on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperblockCopyReport {
    /// The copy (0 or 1), which is also its block.
    pub copy_index: u64,
    /// Its commit sequence number, when the copy is valid.
    pub sequence: Option<u64>,
    /// The bitmap slot it names, when the copy is valid.
    pub current_slot: Option<u64>,
    /// Why the copy was rejected; `None` when it is valid.
    pub defect: Option<SuperblockDefect>,
}

/// Why a bitmap slot named by a valid superblock copy is unusable.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotDefect {
    /// Reading the slot failed.
    ReadFailed {
        /// The device error, as text.
        detail: String,
    },
    /// The content does not match the superblock's checksum.
    Checksum {
        /// Checksum in the superblock.
        expected: u64,
        /// xxh3-64 of the content.
        actual: u64,
    },
    /// The checksum matched but the bitmap image was rejected.
    Image {
        /// The image error.
        source: ImageError,
    },
    /// The checksum matched but the content contradicts the layout.
    Inconsistent {
        /// What is wrong, with the values.
        reason: String,
    },
}

impl fmt::Display for SlotDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotDefect::ReadFailed { detail } => write!(f, "read failed: {detail}"),
            SlotDefect::Checksum { expected, actual } => write!(
                f,
                "checksum mismatch: xxh3 expected {expected:#018x}, found {actual:#018x}"
            ),
            SlotDefect::Image { source } => write!(f, "bitmap image rejected: {source}"),
            SlotDefect::Inconsistent { reason } => write!(f, "inconsistent: {reason}"),
        }
    }
}

/// A bitmap slot named by a valid superblock copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotReport {
    /// The slot (0 or 1).
    pub slot: u64,
    /// Sequence of the newest valid superblock copy naming it.
    pub sequence: u64,
    /// The slot's first block.
    pub first_block: u64,
    /// Bytes of content the superblock names.
    pub len_bytes: u64,
    /// Checksum in the superblock.
    pub expected_checksum: u64,
    /// xxh3-64 of the content read; `None` when the read failed.
    pub actual_checksum: Option<u64>,
    /// Records the slot lists, when it decodes.
    pub records: Option<u64>,
    /// Data blocks it lists allocated, when it decodes.
    pub allocated_blocks: Option<u64>,
    /// Why the slot is unusable; `None` when it is good.
    pub defect: Option<SlotDefect>,
}

/// Why a remap table copy is unusable.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemapCopyDefect {
    /// Reading the copy failed.
    ReadFailed {
        /// The device error, as text.
        detail: String,
    },
    /// The copy did not decode (magic, version, length, crc32c, entries).
    Decode {
        /// The decoding error.
        source: RemapError,
    },
    /// An entry names a bad block outside the data area.
    OutsideData {
        /// The bad block named.
        bad_block: u64,
        /// First block of the data area.
        data_start: u64,
        /// Blocks on the device.
        device_blocks: u64,
    },
    /// An entry names a spare outside the spare pool, or one spare twice.
    Spares {
        /// The spare pool's error.
        source: RemapError,
    },
}

impl fmt::Display for RemapCopyDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemapCopyDefect::ReadFailed { detail } => write!(f, "read failed: {detail}"),
            RemapCopyDefect::Decode { source } => write!(f, "{source}"),
            RemapCopyDefect::OutsideData {
                bad_block,
                data_start,
                device_blocks,
            } => write!(
                f,
                "an entry names bad block {bad_block}, outside the data area \
                 {data_start}..{device_blocks}"
            ),
            RemapCopyDefect::Spares { source } => write!(f, "spare pool: {source}"),
        }
    }
}

/// One remap table copy as found on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemapCopyReport {
    /// The copy (0 or 1).
    pub copy_index: u64,
    /// Its first block.
    pub first_block: u64,
    /// Its sequence number, when it decodes.
    pub sequence: Option<u64>,
    /// Its entries in their stored state, by bad block (empty when it does
    /// not decode).
    pub entries: Vec<RemapEntry>,
    /// Why the copy is unusable; `None` when it is good.
    pub defect: Option<RemapCopyDefect>,
}

impl RemapCopyReport {
    /// Whether the copy's crc32c matched: `None` when it was never compared
    /// (the read failed, or the magic, version or length was already wrong).
    pub fn crc_ok(&self) -> Option<bool> {
        match &self.defect {
            None | Some(RemapCopyDefect::OutsideData { .. } | RemapCopyDefect::Spares { .. }) => {
                Some(true)
            }
            Some(RemapCopyDefect::ReadFailed { .. }) => None,
            Some(RemapCopyDefect::Decode { source }) => match source {
                RemapError::ChecksumMismatch { .. } => Some(false),
                RemapError::ReservedNotZero { .. } | RemapError::InvalidEntry { .. } => Some(true),
                _ => None,
            },
        }
    }
}

/// Something wrong in the metadata area.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataFinding {
    /// A superblock copy is invalid.
    SuperblockInvalid {
        /// The copy.
        copy_index: u64,
        /// Why.
        defect: SuperblockDefect,
        /// The other copy's sequence, when that copy is valid.
        other_valid_sequence: Option<u64>,
    },
    /// Neither superblock copy is valid: the layout is unknown, so the
    /// bitmap slots and remap table copies were not checked.
    NoValidSuperblock,
    /// Both copies are valid but hold different commits (a commit was cut
    /// short between them; the next commit rewrites both).
    SuperblocksDisagree {
        /// Sequence of copy 0 and of copy 1.
        sequences: [u64; 2],
    },
    /// A bitmap slot named by a valid superblock copy is unusable.
    SlotDamaged {
        /// The slot.
        slot: u64,
        /// Sequence of the superblock naming it.
        sequence: u64,
        /// Why.
        defect: SlotDefect,
    },
    /// A remap table copy is unusable.
    RemapCopyInvalid {
        /// The copy.
        copy_index: u64,
        /// Why.
        defect: RemapCopyDefect,
        /// The other copy's sequence, when that copy is good.
        other_valid_sequence: Option<u64>,
    },
    /// Both remap table copies are good but list different remaps (a remap
    /// was cut short between the two writes).
    RemapCopiesDisagree {
        /// Sequence of copy 0 and of copy 1.
        sequences: [u64; 2],
        /// Entries in copy 0 and in copy 1.
        entries: [u64; 2],
    },
}

impl fmt::Display for MetadataFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let other = |f: &mut fmt::Formatter<'_>, copy: u64, sequence: Option<u64>| match sequence {
            Some(sequence) => write!(f, "; copy {} is good (sequence {sequence})", 1 - copy),
            None => write!(f, "; copy {} is bad too", 1 - copy),
        };
        match self {
            MetadataFinding::SuperblockInvalid {
                copy_index,
                defect,
                other_valid_sequence,
            } => {
                write!(f, "superblock copy {copy_index} is corrupt: {defect}")?;
                other(f, *copy_index, *other_valid_sequence)
            }
            MetadataFinding::NoValidSuperblock => write!(
                f,
                "no valid superblock copy: the layout is unknown, bitmap slots and remap table \
                 copies were not checked"
            ),
            MetadataFinding::SuperblocksDisagree { sequences } => write!(
                f,
                "superblock copies hold different commits: copy 0 sequence {}, copy 1 sequence {} \
                 (the next commit rewrites both)",
                sequences[0], sequences[1]
            ),
            MetadataFinding::SlotDamaged {
                slot,
                sequence,
                defect,
            } => write!(
                f,
                "bitmap slot {slot} (superblock sequence {sequence}) is damaged: {defect}"
            ),
            MetadataFinding::RemapCopyInvalid {
                copy_index,
                defect,
                other_valid_sequence,
            } => {
                write!(f, "remap table copy {copy_index} is corrupt: {defect}")?;
                other(f, *copy_index, *other_valid_sequence)
            }
            MetadataFinding::RemapCopiesDisagree { sequences, entries } => write!(
                f,
                "remap table copies differ: copy 0 (sequence {}) has {} entries, copy 1 \
                 (sequence {}) has {}",
                sequences[0], entries[0], sequences[1], entries[1]
            ),
        }
    }
}

/// What [`check_metadata`] found on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataReport {
    /// The device's block size.
    pub block_bytes: u64,
    /// The device's length in blocks.
    pub device_blocks: u64,
    /// Both superblock copies, copy 0 first.
    pub superblocks: Vec<SuperblockCopyReport>,
    /// The layout of the newest valid superblock copy; `None` when neither
    /// is valid.
    pub layout: Option<Layout>,
    /// The bitmap slots named by valid superblock copies, newest first,
    /// each once.
    pub slots: Vec<SlotReport>,
    /// Both remap table copies (empty when the layout is unknown).
    pub remap_copies: Vec<RemapCopyReport>,
    /// Everything wrong, in the order above; empty when the metadata is
    /// whole.
    pub findings: Vec<MetadataFinding>,
}

impl MetadataReport {
    /// Whether every metadata copy is whole and agrees with its twin.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks every metadata copy on `device` without opening the store: both
/// superblock copies; the bitmap slot each valid copy names (checksum,
/// bitmap image, record-start map); both remap table copies (decoding,
/// crc32c, entries inside the data area and the spare pool); and that the
/// twins agree. Reads only; a failed read is a finding, not an error.
pub fn check_metadata<D: BlockDevice>(device: &D) -> MetadataReport {
    let block_bytes = device.block_bytes();
    let device_blocks = device.len_blocks();
    let mut findings = Vec::new();
    let mut superblocks = Vec::new();
    let mut valid: Vec<(Layout, Commit)> = Vec::new();
    for copy_index in 0..SUPERBLOCK_COPIES {
        let mut block = vec![0u8; block_bytes as usize];
        let parsed = device
            .read_at(copy_index * block_bytes, &mut block)
            .map_err(|e| SuperblockDefect::ReadFailed {
                detail: e.to_string(),
            })
            .and_then(|()| decode_superblock(&block, copy_index, block_bytes, device_blocks));
        superblocks.push(match parsed {
            Ok((layout, commit)) => {
                valid.push((layout, commit));
                SuperblockCopyReport {
                    copy_index,
                    sequence: Some(commit.sequence),
                    current_slot: Some(commit.current_slot),
                    defect: None,
                }
            }
            Err(defect) => SuperblockCopyReport {
                copy_index,
                sequence: None,
                current_slot: None,
                defect: Some(defect),
            },
        });
    }
    for (copy, report) in superblocks.iter().enumerate() {
        if let Some(defect) = &report.defect {
            findings.push(MetadataFinding::SuperblockInvalid {
                copy_index: copy as u64,
                defect: defect.clone(),
                other_valid_sequence: superblocks[1 - copy].sequence,
            });
        }
    }
    if let (Some(first), Some(second)) = (superblocks[0].sequence, superblocks[1].sequence) {
        if first != second {
            findings.push(MetadataFinding::SuperblocksDisagree {
                sequences: [first, second],
            });
        }
    }
    // Newest first, so each slot is checked against the newest commit naming it.
    valid.sort_by_key(|(_, commit)| std::cmp::Reverse(commit.sequence));
    let Some(&(layout, _)) = valid.first() else {
        findings.push(MetadataFinding::NoValidSuperblock);
        return MetadataReport {
            block_bytes,
            device_blocks,
            superblocks,
            layout: None,
            slots: Vec::new(),
            remap_copies: Vec::new(),
            findings,
        };
    };
    let mut slots: Vec<SlotReport> = Vec::new();
    for (layout, commit) in &valid {
        if slots.iter().any(|s| s.slot == commit.current_slot) {
            continue;
        }
        let report = check_slot(device, layout, commit);
        if let Some(defect) = &report.defect {
            findings.push(MetadataFinding::SlotDamaged {
                slot: report.slot,
                sequence: report.sequence,
                defect: defect.clone(),
            });
        }
        slots.push(report);
    }
    let remap_copies: Vec<RemapCopyReport> = (0..REMAP_TABLE_COPIES)
        .map(|copy| check_remap_copy(device, &layout, copy))
        .collect();
    for (copy, report) in remap_copies.iter().enumerate() {
        if let Some(defect) = &report.defect {
            let other = &remap_copies[1 - copy];
            findings.push(MetadataFinding::RemapCopyInvalid {
                copy_index: copy as u64,
                defect: defect.clone(),
                other_valid_sequence: other.defect.is_none().then_some(other.sequence).flatten(),
            });
        }
    }
    if let [first, second] = remap_copies.as_slice() {
        let pairs = |r: &RemapCopyReport| -> BTreeSet<(u64, u64)> {
            r.entries
                .iter()
                .map(|e| (e.bad_block, e.spare_block))
                .collect()
        };
        if first.defect.is_none() && second.defect.is_none() && pairs(first) != pairs(second) {
            findings.push(MetadataFinding::RemapCopiesDisagree {
                sequences: [first.sequence.unwrap_or(0), second.sequence.unwrap_or(0)],
                entries: [first.entries.len() as u64, second.entries.len() as u64],
            });
        }
    }
    MetadataReport {
        block_bytes,
        device_blocks,
        superblocks,
        layout: Some(layout),
        slots,
        remap_copies,
        findings,
    }
}

/// Checks the bitmap slot `commit` names, as `open` would.
fn check_slot<D: BlockDevice>(device: &D, layout: &Layout, commit: &Commit) -> SlotReport {
    let slot = commit.current_slot;
    let first_block = layout.slot_start[slot as usize];
    let mut report = SlotReport {
        slot,
        sequence: commit.sequence,
        first_block,
        len_bytes: commit.slot_len_bytes,
        expected_checksum: commit.slot_checksum,
        actual_checksum: None,
        records: None,
        allocated_blocks: None,
        defect: None,
    };
    let mut bytes = vec![0u8; (layout.slot_blocks * layout.block_bytes) as usize];
    if let Err(error) = device.read_at(first_block * layout.block_bytes, &mut bytes) {
        report.defect = Some(SlotDefect::ReadFailed {
            detail: error.to_string(),
        });
        return report;
    }
    bytes.truncate(commit.slot_len_bytes as usize);
    let actual = xxh3(&bytes);
    report.actual_checksum = Some(actual);
    if actual != commit.slot_checksum {
        report.defect = Some(SlotDefect::Checksum {
            expected: commit.slot_checksum,
            actual,
        });
        return report;
    }
    let (image, start_map) = bytes.split_at(commit.image_len_bytes as usize);
    let bitmap = match BlockBitmap::from_bytes(image) {
        Ok(bitmap) => bitmap,
        Err(source) => {
            report.defect = Some(SlotDefect::Image { source });
            return report;
        }
    };
    report.allocated_blocks = Some(bitmap.allocated_blocks());
    match recover_records(&bitmap, start_map, layout) {
        Ok(live) => report.records = Some(live.len() as u64),
        Err(reason) => report.defect = Some(SlotDefect::Inconsistent { reason }),
    }
    report
}

/// Checks remap table copy `copy`, as `open` would check the copy it
/// recovers.
fn check_remap_copy<D: BlockDevice>(device: &D, layout: &Layout, copy: u64) -> RemapCopyReport {
    let first_block = layout.remap_copy_start(copy);
    let mut report = RemapCopyReport {
        copy_index: copy,
        first_block,
        sequence: None,
        entries: Vec::new(),
        defect: None,
    };
    let mut bytes = vec![0u8; layout.remap_copy_bytes()];
    if let Err(error) = device.read_at(first_block * layout.block_bytes, &mut bytes) {
        report.defect = Some(RemapCopyDefect::ReadFailed {
            detail: error.to_string(),
        });
        return report;
    }
    let (sequence, table) = match remap::decode_copy(&bytes) {
        Ok(decoded) => decoded,
        Err(source) => {
            report.defect = Some(RemapCopyDefect::Decode { source });
            return report;
        }
    };
    report.sequence = Some(sequence);
    report.entries = table.entries();
    let outside = report
        .entries
        .iter()
        .find(|e| e.bad_block < layout.data_start || e.bad_block >= layout.device_blocks);
    if let Some(entry) = outside {
        report.defect = Some(RemapCopyDefect::OutsideData {
            bad_block: entry.bad_block,
            data_start: layout.data_start,
            device_blocks: layout.device_blocks,
        });
    } else if let Err(source) =
        SparePool::from_table(layout.spare_start, layout.spare_blocks, &table)
    {
        report.defect = Some(RemapCopyDefect::Spares { source });
    }
    report
}

// ---------------------------------------------------------------------------
// Opening a store file
// ---------------------------------------------------------------------------

/// Why a store file could not be opened. Every message names the file.
#[non_exhaustive]
#[derive(Debug)]
pub enum OpenFileError {
    /// The operating system refused an operation on the file.
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done: `"open"`, `"stat"`, `"read superblock"`.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is shorter than one superblock.
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len_bytes: u64,
        /// Bytes a superblock copy needs.
        needed_bytes: u64,
    },
    /// No superblock copy tells the block size: copy 0 is unusable and no
    /// whole copy 1 sits at any allowed block size. Not a store, or both
    /// copies are destroyed.
    NoSuperblock {
        /// The file.
        path: PathBuf,
        /// Its length.
        len_bytes: u64,
        /// Why copy 0 was rejected.
        copy0: SuperblockDefect,
    },
    /// Opening the file as a block device failed (e.g. its length is not
    /// a multiple of the block size the superblock names).
    Device {
        /// The file.
        path: PathBuf,
        /// The device error.
        source: DeviceError,
    },
    /// The store itself could not be opened (both superblocks invalid, the
    /// current bitmap slot corrupt, no valid remap table copy...).
    Store {
        /// The file.
        path: PathBuf,
        /// The store error, naming each defect.
        source: StoreError,
    },
}

impl fmt::Display for OpenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenFileError::Io { path, op, source } => {
                write!(f, "{}: {op} failed: {source}", path.display())
            }
            OpenFileError::TooShort {
                path,
                len_bytes,
                needed_bytes,
            } => write!(
                f,
                "{}: not an extent store: {len_bytes} bytes long, a superblock needs \
                 {needed_bytes}",
                path.display()
            ),
            OpenFileError::NoSuperblock {
                path,
                len_bytes,
                copy0,
            } => write!(
                f,
                "{}: not an extent store, or both superblocks are destroyed: superblock copy 0: \
                 {copy0}; copy 1: no valid copy at any block size from {BLOCK_BYTES_MIN} to \
                 {BLOCK_BYTES_MAX} bytes ({len_bytes} bytes in the file)",
                path.display()
            ),
            OpenFileError::Device { path, source } => {
                write!(
                    f,
                    "{}: cannot open as a block device: {source}",
                    path.display()
                )
            }
            OpenFileError::Store { path, source } => {
                write!(f, "{}: cannot open the store: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for OpenFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenFileError::Io { source, .. } => Some(source),
            OpenFileError::Device { source, .. } => Some(source),
            OpenFileError::Store { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Checks a superblock copy far enough to trust its block size: magic,
/// checksum, a block size in range, then every field as `open` checks it
/// against a device of `len_bytes` in blocks of that size.
fn probe_copy(bytes: &[u8], copy_index: u64, len_bytes: u64) -> Result<u64, SuperblockDefect> {
    let found: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
    if found != SUPERBLOCK_MAGIC {
        return Err(SuperblockDefect::BadMagic { found });
    }
    let expected = get_u64(bytes, SB_OFFSET_CHECKSUM);
    let actual = xxh3(&bytes[..SB_OFFSET_CHECKSUM]);
    if expected != actual {
        return Err(SuperblockDefect::Checksum { expected, actual });
    }
    let block_bytes = get_u64(bytes, SB_OFFSET_BLOCK_BYTES);
    if !is_block_size(block_bytes) {
        return Err(SuperblockDefect::OutOfRange {
            field: "block_bytes",
            stored: block_bytes,
            min: BLOCK_BYTES_MIN,
            max_exclusive: BLOCK_BYTES_MAX + 1,
        });
    }
    decode_superblock(bytes, copy_index, block_bytes, len_bytes / block_bytes)?;
    Ok(block_bytes)
}

fn is_block_size(block_bytes: u64) -> bool {
    block_bytes.is_power_of_two() && (BLOCK_BYTES_MIN..=BLOCK_BYTES_MAX).contains(&block_bytes)
}

/// The block size of the store in the file at `path`, from its superblock:
/// copy 0 if it is valid; else the block size `B` at which a valid copy 1
/// sits at byte `B` (every power of two from [`BLOCK_BYTES_MIN`] to
/// [`BLOCK_BYTES_MAX`] is tried); else, if copy 0 is damaged but still
/// names a possible block size, that one (so `open` can report both copies'
/// defects). Reads at most one superblock per candidate; writes nothing.
pub fn detect_block_bytes(path: impl AsRef<Path>) -> Result<u64, OpenFileError> {
    let path = path.as_ref();
    let io_error = |op: &'static str| {
        move |source| OpenFileError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let file = File::open(path).map_err(io_error("open"))?;
    let len_bytes = file.metadata().map_err(io_error("stat"))?.len();
    let read_copy = |offset_bytes: u64| -> Result<Vec<u8>, OpenFileError> {
        let mut bytes = vec![0u8; SUPERBLOCK_LEN_BYTES];
        file.read_exact_at(&mut bytes, offset_bytes)
            .map_err(io_error("read superblock"))?;
        Ok(bytes)
    };
    if len_bytes < SUPERBLOCK_LEN_BYTES as u64 {
        return Err(OpenFileError::TooShort {
            path: path.to_path_buf(),
            len_bytes,
            needed_bytes: SUPERBLOCK_LEN_BYTES as u64,
        });
    }
    let copy0 = read_copy(0)?;
    let copy0_defect = match probe_copy(&copy0, 0, len_bytes) {
        Ok(block_bytes) => return Ok(block_bytes),
        Err(defect) => defect,
    };
    let mut candidate = BLOCK_BYTES_MIN;
    while candidate <= BLOCK_BYTES_MAX && candidate + SUPERBLOCK_LEN_BYTES as u64 <= len_bytes {
        if probe_copy(&read_copy(candidate)?, 1, len_bytes) == Ok(candidate) {
            return Ok(candidate);
        }
        candidate *= 2;
    }
    let named = get_u64(&copy0, SB_OFFSET_BLOCK_BYTES);
    let magic_ok = !matches!(copy0_defect, SuperblockDefect::BadMagic { .. });
    if magic_ok && is_block_size(named) {
        return Ok(named);
    }
    Err(OpenFileError::NoSuperblock {
        path: path.to_path_buf(),
        len_bytes,
        copy0: copy0_defect,
    })
}

/// A read-only block device over a file: reads are positional (`pread`);
/// writes fail with an I/O error (permission denied) before touching the
/// file, which is opened `O_RDONLY` anyway; flush has nothing to do.
#[derive(Debug)]
pub struct ReadOnlyFile {
    file: File,
    path: PathBuf,
    len_bytes: u64,
    block_bytes: u64,
}

impl ReadOnlyFile {
    /// Opens the file at `path` read-only in blocks of `block_bytes`; its
    /// length must be a multiple of the block size.
    pub fn open(path: impl AsRef<Path>, block_bytes: u64) -> Result<ReadOnlyFile, DeviceError> {
        let path = path.as_ref();
        let io_error = |source| DeviceError::Io {
            op: "open",
            offset_bytes: 0,
            len_bytes: 0,
            path: Some(path.to_path_buf()),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let len_bytes = file.metadata().map_err(io_error)?.len();
        check_geometry(len_bytes, block_bytes)?;
        Ok(ReadOnlyFile {
            file,
            path: path.to_path_buf(),
            len_bytes,
            block_bytes,
        })
    }

    /// Opens the store file at `path` read-only at the block size its
    /// superblock names ([`detect_block_bytes`]).
    pub fn open_store_file(path: impl AsRef<Path>) -> Result<ReadOnlyFile, OpenFileError> {
        let path = path.as_ref();
        let block_bytes = detect_block_bytes(path)?;
        ReadOnlyFile::open(path, block_bytes).map_err(|source| OpenFileError::Device {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The file's path as given when opening.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Panics (with the values) if the geometry is off or the file changed
    /// length since it was opened.
    pub fn check_invariants(&self) {
        assert!(
            check_geometry(self.len_bytes, self.block_bytes).is_ok(),
            "ReadOnlyFile geometry {} bytes / {} byte blocks is invalid",
            self.len_bytes,
            self.block_bytes
        );
        if let Ok(meta) = self.file.metadata() {
            assert_eq!(
                meta.len(),
                self.len_bytes,
                "file {} is {} bytes, the device expects {}",
                self.path.display(),
                meta.len(),
                self.len_bytes
            );
        }
    }
}

impl BlockDevice for ReadOnlyFile {
    fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let len_bytes = buf.len() as u64;
        check_access(offset_bytes, len_bytes, self.block_bytes, self.len_bytes)?;
        self.file
            .read_exact_at(buf, offset_bytes)
            .map_err(|source| DeviceError::Io {
                op: "read",
                offset_bytes,
                len_bytes,
                path: Some(self.path.clone()),
                source,
            })
    }

    fn write_at(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        let len_bytes = data.len() as u64;
        check_access(offset_bytes, len_bytes, self.block_bytes, self.len_bytes)?;
        Err(DeviceError::Io {
            op: "write",
            offset_bytes,
            len_bytes,
            path: Some(self.path.clone()),
            source: io::Error::new(io::ErrorKind::PermissionDenied, READ_ONLY_MESSAGE),
        })
    }

    fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Opens the store in the file at `path` read-only, whatever its block
/// size: for inspecting and verifying. Nothing is written to the file.
pub fn open_file_store_readonly(
    path: impl AsRef<Path>,
) -> Result<ExtentStore<ReadOnlyFile>, OpenFileError> {
    let path = path.as_ref();
    let device = ReadOnlyFile::open_store_file(path)?;
    ExtentStore::open(device, StoreConfig::for_reading()).map_err(|source| OpenFileError::Store {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens the store in the file at `path` for reading and writing at the
/// block size its superblock names. `config.spare_blocks` is ignored, as
/// in [`ExtentStore::open`]. Opening writes nothing; later puts and
/// commits do.
pub fn open_file_store(
    path: impl AsRef<Path>,
    options: FileOptions,
    config: StoreConfig,
) -> Result<ExtentStore<FileDevice>, OpenFileError> {
    let path = path.as_ref();
    let block_bytes = detect_block_bytes(path)?;
    let device =
        FileDevice::open(path, block_bytes, options).map_err(|source| OpenFileError::Device {
            path: path.to_path_buf(),
            source,
        })?;
    ExtentStore::open(device, config).map_err(|source| OpenFileError::Store {
        path: path.to_path_buf(),
        source,
    })
}
