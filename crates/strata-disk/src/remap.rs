//! Bad-block remapping, the I/O-free part: the spare pool, the remap table
//! with lock-free-for-readers snapshots, request routing, and the on-disk
//! encoding of a table copy (byte layout in `docs/disk-format.md`, "Remap
//! table").
//!
//! The write path this serves (wired in by the extent store): a write to a
//! data block fails → [`SparePool::take`] a spare → [`RemapTable::begin`]
//! records the remap PENDING → the table copies ([`RemapTable::encode_copy`])
//! are written and flushed → [`RemapTable::activate`] → the write is retried
//! on the spare, and only then acknowledged. Several failures each get
//! their own entry. Reads go through [`RemapView::route`], which splits a
//! request into runs of normal blocks and single remapped blocks.
//!
//! Readers never lock the table while they look up: [`RemapTable::handle`]
//! gives a [`RemapHandle`]; [`RemapHandle::view`] clones an `Arc` to the
//! current immutable snapshot of the ACTIVE entries (one short read lock to
//! clone the pointer), and every lookup on the [`RemapView`] is a `HashMap`
//! probe, O(1). Writers build a new snapshot on each [`RemapTable::activate`]
//! (copy-on-write, O(active entries), which is at most the spare pool size,
//! and remaps are rare) and swap the pointer, so no reader ever sees a
//! half-built table or a PENDING entry.
//!
//! ```
//! use strata_disk::remap::{recover, RemapTable, SparePool, max_entries};
//!
//! // Spare pool: blocks 100..104. Table copies of 128 bytes: 4 entries.
//! let mut pool = SparePool::new(100, 4).unwrap();
//! let mut table = RemapTable::new(max_entries(128));
//! let readers = table.handle();
//!
//! let spare = pool.take().unwrap();
//! table.begin(7, spare).unwrap();
//! assert_eq!(readers.view().lookup(7), None); // pending: not visible
//! let copy = table.encode_copy(1); // written and flushed by the caller
//! table.activate(7).unwrap();
//! assert_eq!(readers.view().lookup(7), Some(spare));
//!
//! let runs: Vec<_> = readers.view().route(5, 4).unwrap().collect();
//! assert_eq!(runs.len(), 3); // 5..7 normal, 7 on its spare, 8 normal
//!
//! let (sequence, recovered) = recover(&[&copy]).unwrap();
//! assert_eq!((sequence, recovered.lookup(7)), (1, Some(spare)));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use strata_bitmap::BlockBitmap;

/// Magic bytes at the start of every remap table copy.
pub const REMAP_MAGIC: [u8; 8] = *b"STRREMAP";
/// Format version written by this code; other versions are refused.
pub const REMAP_VERSION: u32 = 1;
/// Bytes of a copy's header (matches `store::REMAP_HEADER_BYTES`).
pub const REMAP_COPY_HEADER_BYTES: usize = 64;
/// Bytes per entry (matches `store::REMAP_ENTRY_BYTES`).
pub const REMAP_COPY_ENTRY_BYTES: usize = 16;
/// Byte offset of the magic.
pub const REMAP_OFFSET_MAGIC: usize = 0;
/// Byte offset of the version (u32).
pub const REMAP_OFFSET_VERSION: usize = 8;
/// Byte offset of a reserved u32 that must be zero.
pub const REMAP_OFFSET_RESERVED0: usize = 12;
/// Byte offset of the sequence number (u64).
pub const REMAP_OFFSET_SEQUENCE: usize = 16;
/// Byte offset of the entry count (u64).
pub const REMAP_OFFSET_ENTRY_COUNT: usize = 24;
/// Byte offset of the crc32c (u32) over every header and entry byte except
/// its own four.
pub const REMAP_OFFSET_CRC: usize = 32;
/// Byte offset of the reserved tail of the header (zero up to
/// [`REMAP_COPY_HEADER_BYTES`]).
pub const REMAP_OFFSET_RESERVED1: usize = 36;
/// Bit of an entry's spare word that marks the entry ACTIVE (clear: PENDING).
pub const REMAP_ACTIVE_BIT: u64 = 1 << 63;
/// Largest block number a remap entry can name: bit 63 of the spare word is
/// the state flag. Real devices are far below this (a block's byte offset
/// must fit a u64 and blocks are at least 512 bytes).
pub const REMAP_MAX_BLOCK: u64 = REMAP_ACTIVE_BIT - 1;

const _: () = assert!(REMAP_OFFSET_VERSION == REMAP_OFFSET_MAGIC + REMAP_MAGIC.len());
const _: () = assert!(REMAP_OFFSET_RESERVED0 == REMAP_OFFSET_VERSION + 4);
const _: () = assert!(REMAP_OFFSET_SEQUENCE == REMAP_OFFSET_RESERVED0 + 4);
const _: () = assert!(REMAP_OFFSET_ENTRY_COUNT == REMAP_OFFSET_SEQUENCE + 8);
const _: () = assert!(REMAP_OFFSET_CRC == REMAP_OFFSET_ENTRY_COUNT + 8);
const _: () = assert!(REMAP_OFFSET_RESERVED1 == REMAP_OFFSET_CRC + 4);
const _: () = assert!(REMAP_OFFSET_RESERVED1 < REMAP_COPY_HEADER_BYTES);
// The extent store sizes each copy as header + one entry per spare block;
// this format must fit exactly that room.
const _: () = assert!(REMAP_COPY_HEADER_BYTES as u64 == crate::store::REMAP_HEADER_BYTES);
const _: () = assert!(REMAP_COPY_ENTRY_BYTES as u64 == crate::store::REMAP_ENTRY_BYTES);

/// The most entries a copy of `copy_bytes` bytes can hold (0 if it cannot
/// even hold the header). For a store layout,
/// `max_entries(remap_copy_blocks * block_bytes) >= spare_blocks`.
pub fn max_entries(copy_bytes: usize) -> usize {
    copy_bytes.saturating_sub(REMAP_COPY_HEADER_BYTES) / REMAP_COPY_ENTRY_BYTES
}

/// Why a remap operation was refused, or why a table copy did not decode.
/// A refused operation changes nothing.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemapError {
    /// Every spare block is in use.
    SparesExhausted {
        /// Blocks in the spare pool.
        spares_total: u64,
    },
    /// The spare pool's range does not fit a u64 block number or the bitmap.
    SparePoolTooLarge {
        /// First block of the pool.
        spare_start: u64,
        /// Blocks asked for.
        spare_blocks: u64,
    },
    /// A block named as a spare is not in the spare pool.
    NotASpare {
        /// The block.
        block: u64,
        /// First block of the pool.
        spare_start: u64,
        /// Blocks in the pool.
        spare_blocks: u64,
    },
    /// A spare marked used is already in use.
    SpareAlreadyUsed {
        /// The spare block.
        spare_block: u64,
    },
    /// The bad block already has an entry.
    AlreadyRemapped {
        /// The bad block.
        bad_block: u64,
        /// The spare its entry names.
        spare_block: u64,
    },
    /// The spare already backs another entry.
    SpareInUse {
        /// The spare block.
        spare_block: u64,
        /// The bad block whose entry uses it.
        bad_block: u64,
    },
    /// The block to remap is itself the spare of an entry (remap the
    /// original bad block instead), or the spare named is a bad block.
    BlockIsBoth {
        /// The block that would be both bad block and spare.
        block: u64,
    },
    /// A block number above [`REMAP_MAX_BLOCK`].
    BlockTooLarge {
        /// The block.
        block: u64,
        /// [`REMAP_MAX_BLOCK`].
        max_block: u64,
    },
    /// The table holds as many entries as one copy can store.
    TableFull {
        /// The table's capacity in entries.
        max_entries: usize,
    },
    /// `activate` of a block with no entry.
    NotRemapped {
        /// The block.
        bad_block: u64,
    },
    /// `activate` of an entry that is already ACTIVE.
    AlreadyActive {
        /// The bad block.
        bad_block: u64,
    },
    /// `start_block + len_blocks` overflows a u64.
    RangeOverflow {
        /// First block of the request.
        start_block: u64,
        /// Blocks in the request.
        len_blocks: u64,
    },
    /// A copy shorter than its header, or than its header plus its entries.
    CopyTruncated {
        /// Bytes given.
        len_bytes: usize,
        /// Bytes needed.
        needed_bytes: u64,
    },
    /// The copy does not start with [`REMAP_MAGIC`].
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// A version other than [`REMAP_VERSION`].
    UnsupportedVersion {
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// The stored crc32c does not match the bytes.
    ChecksumMismatch {
        /// Stored checksum.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// A reserved header byte is not zero (checksum matched: a writer bug or
    /// a newer format).
    ReservedNotZero {
        /// Byte offset in the copy.
        offset: usize,
    },
    /// An entry contradicts the entries before it (checksum matched).
    InvalidEntry {
        /// Index of the entry in the copy.
        index: u64,
        /// Why it was refused.
        reason: Box<RemapError>,
    },
    /// `recover` found no valid copy.
    NoValidCopy {
        /// Each copy's defect, in the order given.
        defects: Vec<RemapError>,
    },
}

impl fmt::Display for RemapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemapError::SparesExhausted { spares_total } => {
                write!(f, "all {spares_total} spare blocks are in use")
            }
            RemapError::SparePoolTooLarge {
                spare_start,
                spare_blocks,
            } => write!(
                f,
                "spare pool of {spare_blocks} blocks at block {spare_start} is too large"
            ),
            RemapError::NotASpare {
                block,
                spare_start,
                spare_blocks,
            } => write!(
                f,
                "block {block} is not in the spare pool (blocks {spare_start}, {spare_blocks} long)"
            ),
            RemapError::SpareAlreadyUsed { spare_block } => {
                write!(f, "spare block {spare_block} is already in use")
            }
            RemapError::AlreadyRemapped {
                bad_block,
                spare_block,
            } => write!(
                f,
                "block {bad_block} is already remapped to spare {spare_block}"
            ),
            RemapError::SpareInUse {
                spare_block,
                bad_block,
            } => write!(
                f,
                "spare block {spare_block} already backs bad block {bad_block}"
            ),
            RemapError::BlockIsBoth { block } => write!(
                f,
                "block {block} cannot be both a bad block and a spare in the remap table"
            ),
            RemapError::BlockTooLarge { block, max_block } => write!(
                f,
                "block {block} is above the largest remappable block {max_block}"
            ),
            RemapError::TableFull { max_entries } => {
                write!(f, "remap table is full ({max_entries} entries per copy)")
            }
            RemapError::NotRemapped { bad_block } => {
                write!(f, "block {bad_block} has no remap entry")
            }
            RemapError::AlreadyActive { bad_block } => {
                write!(f, "remap entry of block {bad_block} is already active")
            }
            RemapError::RangeOverflow {
                start_block,
                len_blocks,
            } => write!(
                f,
                "request of {len_blocks} blocks at block {start_block} overflows a u64"
            ),
            RemapError::CopyTruncated {
                len_bytes,
                needed_bytes,
            } => write!(
                f,
                "remap table copy of {len_bytes} bytes is truncated ({needed_bytes} bytes needed)"
            ),
            RemapError::BadMagic { found } => {
                write!(f, "remap table copy has bad magic {found:02x?}")
            }
            RemapError::UnsupportedVersion { found, supported } => write!(
                f,
                "remap table copy version {found} is not supported (supported: {supported})"
            ),
            RemapError::ChecksumMismatch { stored, computed } => write!(
                f,
                "remap table copy checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            RemapError::ReservedNotZero { offset } => {
                write!(f, "remap table copy has a non-zero reserved byte at {offset}")
            }
            RemapError::InvalidEntry { index, reason } => {
                write!(f, "remap table copy entry {index} is invalid: {reason}")
            }
            RemapError::NoValidCopy { defects } => {
                write!(f, "no valid remap table copy among {}:", defects.len())?;
                for (copy, defect) in defects.iter().enumerate() {
                    write!(f, " copy {copy}: {defect};")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RemapError {}

/// The spare-block pool: which spares are free, over device blocks
/// `spare_start .. spare_start + spare_blocks`.
///
/// Backed by a [`BlockBitmap`]: [`take`](SparePool::take) is its next-fit
/// allocation, which starts at a cursor and skips full chunks through its
/// run summaries, so it never scans the whole pool (O(1) amortised over a
/// sequence of takes). Spares are never returned: a remap is permanent.
#[derive(Debug)]
pub struct SparePool {
    spare_start: u64,
    spare_blocks: u64,
    /// `None` for an empty pool (a bitmap holds at least one block).
    free: Option<BlockBitmap>,
}

impl SparePool {
    /// A pool with every spare free.
    pub fn new(spare_start: u64, spare_blocks: u64) -> Result<Self, RemapError> {
        let too_large = RemapError::SparePoolTooLarge {
            spare_start,
            spare_blocks,
        };
        match spare_start.checked_add(spare_blocks) {
            Some(end) if end <= REMAP_MAX_BLOCK + 1 => {}
            _ => return Err(too_large),
        }
        let free = if spare_blocks == 0 {
            None
        } else {
            Some(BlockBitmap::new(spare_blocks).map_err(|_| too_large)?)
        };
        Ok(SparePool {
            spare_start,
            spare_blocks,
            free,
        })
    }

    /// A pool where every spare named by `table` is in use (recovery).
    pub fn from_table(
        spare_start: u64,
        spare_blocks: u64,
        table: &RemapTable,
    ) -> Result<Self, RemapError> {
        let mut pool = SparePool::new(spare_start, spare_blocks)?;
        for entry in table.entries() {
            pool.mark_used(entry.spare_block)?;
        }
        Ok(pool)
    }

    /// Take a free spare: its device block number.
    pub fn take(&mut self) -> Result<u64, RemapError> {
        let exhausted = RemapError::SparesExhausted {
            spares_total: self.spare_blocks,
        };
        let bitmap = self.free.as_mut().ok_or(exhausted.clone())?;
        let block = bitmap.alloc().ok_or(exhausted)?;
        Ok(self.spare_start + block.index())
    }

    /// Mark `block` in use (recovery: spares named by the table).
    pub fn mark_used(&mut self, block: u64) -> Result<(), RemapError> {
        let not_a_spare = RemapError::NotASpare {
            block,
            spare_start: self.spare_start,
            spare_blocks: self.spare_blocks,
        };
        if block < self.spare_start || block - self.spare_start >= self.spare_blocks {
            return Err(not_a_spare);
        }
        let bitmap = self.free.as_mut().ok_or(not_a_spare)?;
        let index = block - self.spare_start;
        if !bitmap.is_free(index) {
            return Err(RemapError::SpareAlreadyUsed { spare_block: block });
        }
        // The first free block at or after a free block is that block.
        let got = bitmap.alloc_near(index).map(|b| b.index());
        assert_eq!(
            got,
            Some(index),
            "alloc_near({index}) of a free spare returned another block"
        );
        Ok(())
    }

    /// Spares still free.
    pub fn spares_left(&self) -> u64 {
        self.free.as_ref().map_or(0, |b| b.free_blocks())
    }

    /// Blocks in the pool.
    pub fn spares_total(&self) -> u64 {
        self.spare_blocks
    }

    /// First block of the pool.
    pub fn spare_start(&self) -> u64 {
        self.spare_start
    }

    /// Check the pool's internal consistency; panics with the values.
    pub fn check_invariants(&self) {
        match &self.free {
            None => assert_eq!(self.spare_blocks, 0, "empty pool without a bitmap"),
            Some(bitmap) => {
                bitmap.check_invariants();
                assert_eq!(
                    bitmap.capacity_blocks(),
                    self.spare_blocks,
                    "bitmap capacity != spare_blocks"
                );
            }
        }
    }
}

/// State of a remap entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemapState {
    /// Recorded, table copies not yet known durable: reads still go to the
    /// bad block (nothing acknowledged was ever written to the spare).
    Pending,
    /// Durable: reads and writes of the bad block go to the spare.
    Active,
}

/// One remap: a bad block and the spare that replaces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemapEntry {
    /// The block that failed.
    pub bad_block: u64,
    /// The spare that replaces it.
    pub spare_block: u64,
    /// Whether reads and writes are redirected yet.
    pub state: RemapState,
}

/// The immutable set of ACTIVE remaps that readers see.
#[derive(Debug, Default)]
struct ActiveMap {
    spare_by_bad: HashMap<u64, u64>,
    /// Sorted bad blocks, for routing a request in O(log n + remaps hit).
    sorted_bad: Vec<u64>,
}

/// A reader's immutable snapshot of the ACTIVE remaps; cheap to clone.
#[derive(Clone, Debug)]
pub struct RemapView {
    active: Arc<ActiveMap>,
}

impl RemapView {
    /// The spare replacing `block`, if it has an ACTIVE remap. O(1).
    pub fn lookup(&self, block: u64) -> Option<u64> {
        self.active.spare_by_bad.get(&block).copied()
    }

    /// Active remaps in this snapshot.
    pub fn len(&self) -> usize {
        self.active.sorted_bad.len()
    }

    /// Whether this snapshot has no active remap.
    pub fn is_empty(&self) -> bool {
        self.active.sorted_bad.is_empty()
    }

    /// Split blocks `start_block .. start_block + len_blocks` into runs, in
    /// order: maximal runs of normal blocks (device block = logical block)
    /// and single remapped blocks (device block = spare).
    pub fn route(&self, start_block: u64, len_blocks: u64) -> Result<Route, RemapError> {
        let end_block = start_block
            .checked_add(len_blocks)
            .ok_or(RemapError::RangeOverflow {
                start_block,
                len_blocks,
            })?;
        let next_remap = self.active.sorted_bad.partition_point(|&b| b < start_block);
        Ok(Route {
            active: Arc::clone(&self.active),
            cursor_block: start_block,
            end_block,
            next_remap,
        })
    }
}

/// One run of a routed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRun {
    /// First logical block of the run.
    pub logical_block: u64,
    /// Where the run lives on the device.
    pub device_block: u64,
    /// Blocks in the run (1 for a remapped block).
    pub len_blocks: u64,
}

/// Iterator over the runs of a request; see [`RemapView::route`].
#[derive(Debug)]
pub struct Route {
    active: Arc<ActiveMap>,
    cursor_block: u64,
    end_block: u64,
    /// Index in `sorted_bad` of the first remap at or after `cursor_block`.
    next_remap: usize,
}

impl Iterator for Route {
    type Item = RouteRun;

    fn next(&mut self) -> Option<RouteRun> {
        if self.cursor_block >= self.end_block {
            return None;
        }
        let logical_block = self.cursor_block;
        let next_bad = self.active.sorted_bad.get(self.next_remap).copied();
        let run = match next_bad {
            Some(bad) if bad == logical_block => {
                self.next_remap += 1;
                RouteRun {
                    logical_block,
                    device_block: self.active.spare_by_bad[&bad],
                    len_blocks: 1,
                }
            }
            Some(bad) if bad < self.end_block => RouteRun {
                logical_block,
                device_block: logical_block,
                len_blocks: bad - logical_block,
            },
            _ => RouteRun {
                logical_block,
                device_block: logical_block,
                len_blocks: self.end_block - logical_block,
            },
        };
        self.cursor_block += run.len_blocks;
        Some(run)
    }
}

/// A shared handle for readers: [`view`](RemapHandle::view) returns the
/// newest published snapshot. `Send + Sync`; clone one per thread.
#[derive(Clone, Debug)]
pub struct RemapHandle {
    published: Arc<RwLock<Arc<ActiveMap>>>,
}

impl RemapHandle {
    /// The newest snapshot: one read lock held only to clone an `Arc`.
    pub fn view(&self) -> RemapView {
        // A poisoned lock still holds a whole snapshot: publishing is one
        // pointer assignment, so a panic cannot leave it half written.
        let guard = self.published.read().unwrap_or_else(|e| e.into_inner());
        RemapView {
            active: Arc::clone(&guard),
        }
    }
}

/// The remap table: every entry (PENDING and ACTIVE) for the single writer,
/// plus the published snapshot of ACTIVE entries for readers.
#[derive(Debug)]
pub struct RemapTable {
    max_entries: usize,
    /// bad block → (spare block, state).
    entries: HashMap<u64, (u64, RemapState)>,
    /// spare block → bad block, for the spare-in-use check.
    bad_by_spare: HashMap<u64, u64>,
    /// The writer's copy of the newest snapshot (the same `Arc` readers get).
    active: Arc<ActiveMap>,
    published: Arc<RwLock<Arc<ActiveMap>>>,
}

impl RemapTable {
    /// An empty table holding at most `max_entries` entries (use
    /// [`max_entries`] of the copy size, so every table fits its copy).
    pub fn new(max_entries: usize) -> Self {
        let active = Arc::new(ActiveMap::default());
        RemapTable {
            max_entries,
            entries: HashMap::new(),
            bad_by_spare: HashMap::new(),
            published: Arc::new(RwLock::new(Arc::clone(&active))),
            active,
        }
    }

    /// A handle readers use to take snapshots of the ACTIVE entries.
    pub fn handle(&self) -> RemapHandle {
        RemapHandle {
            published: Arc::clone(&self.published),
        }
    }

    /// The current snapshot of the ACTIVE entries.
    pub fn view(&self) -> RemapView {
        RemapView {
            active: Arc::clone(&self.active),
        }
    }

    /// Record a PENDING remap of `bad_block` to `spare_block`. Readers do
    /// not see it until [`activate`](RemapTable::activate).
    pub fn begin(&mut self, bad_block: u64, spare_block: u64) -> Result<(), RemapError> {
        for block in [bad_block, spare_block] {
            if block > REMAP_MAX_BLOCK {
                return Err(RemapError::BlockTooLarge {
                    block,
                    max_block: REMAP_MAX_BLOCK,
                });
            }
        }
        if let Some(&(spare, _)) = self.entries.get(&bad_block) {
            return Err(RemapError::AlreadyRemapped {
                bad_block,
                spare_block: spare,
            });
        }
        if let Some(&bad) = self.bad_by_spare.get(&spare_block) {
            return Err(RemapError::SpareInUse {
                spare_block,
                bad_block: bad,
            });
        }
        if bad_block == spare_block || self.bad_by_spare.contains_key(&bad_block) {
            return Err(RemapError::BlockIsBoth { block: bad_block });
        }
        if self.entries.contains_key(&spare_block) {
            return Err(RemapError::BlockIsBoth { block: spare_block });
        }
        if self.entries.len() >= self.max_entries {
            return Err(RemapError::TableFull {
                max_entries: self.max_entries,
            });
        }
        self.entries
            .insert(bad_block, (spare_block, RemapState::Pending));
        self.bad_by_spare.insert(spare_block, bad_block);
        Ok(())
    }

    /// Make the PENDING entry of `bad_block` ACTIVE and publish a new
    /// snapshot (O(active entries)). Call once the table copies holding the
    /// entry are flushed.
    pub fn activate(&mut self, bad_block: u64) -> Result<(), RemapError> {
        match self.entries.get(&bad_block) {
            None => return Err(RemapError::NotRemapped { bad_block }),
            Some((_, RemapState::Active)) => return Err(RemapError::AlreadyActive { bad_block }),
            Some((_, RemapState::Pending)) => {}
        }
        self.activate_all(&[bad_block]);
        Ok(())
    }

    /// Make every PENDING entry ACTIVE (one new snapshot); returns how many.
    /// [`recover`] does this; see there for why.
    pub fn activate_pending(&mut self) -> usize {
        let pending: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, (_, state))| *state == RemapState::Pending)
            .map(|(&bad, _)| bad)
            .collect();
        if !pending.is_empty() {
            self.activate_all(&pending);
        }
        pending.len()
    }

    fn activate_all(&mut self, bad_blocks: &[u64]) {
        let mut spare_by_bad = self.active.spare_by_bad.clone();
        for bad in bad_blocks {
            let entry = self
                .entries
                .get_mut(bad)
                .unwrap_or_else(|| panic!("activate_all: block {bad} has no entry"));
            entry.1 = RemapState::Active;
            spare_by_bad.insert(*bad, entry.0);
        }
        let mut sorted_bad: Vec<u64> = spare_by_bad.keys().copied().collect();
        sorted_bad.sort_unstable();
        self.active = Arc::new(ActiveMap {
            spare_by_bad,
            sorted_bad,
        });
        let mut guard = self.published.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::clone(&self.active);
    }

    /// The spare replacing `block`, if it has an ACTIVE remap. O(1).
    pub fn lookup(&self, block: u64) -> Option<u64> {
        self.active.spare_by_bad.get(&block).copied()
    }

    /// The entry of `bad_block` in any state.
    pub fn entry(&self, bad_block: u64) -> Option<RemapEntry> {
        self.entries
            .get(&bad_block)
            .map(|&(spare_block, state)| RemapEntry {
                bad_block,
                spare_block,
                state,
            })
    }

    /// Every entry, sorted by bad block.
    pub fn entries(&self) -> Vec<RemapEntry> {
        let mut all: Vec<RemapEntry> = self
            .entries
            .iter()
            .map(|(&bad_block, &(spare_block, state))| RemapEntry {
                bad_block,
                spare_block,
                state,
            })
            .collect();
        all.sort_unstable_by_key(|e| e.bad_block);
        all
    }

    /// Entries in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries this table accepts.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Routing on the current snapshot; see [`RemapView::route`].
    pub fn route(&self, start_block: u64, len_blocks: u64) -> Result<Route, RemapError> {
        self.view().route(start_block, len_blocks)
    }

    /// Encode one copy with `sequence`: exactly
    /// `REMAP_COPY_HEADER_BYTES + len() * REMAP_COPY_ENTRY_BYTES` bytes (the
    /// caller zero-pads it to the copy's blocks). Entries are sorted by bad
    /// block, so equal tables encode equally.
    pub fn encode_copy(&self, sequence: u64) -> Vec<u8> {
        let entries = self.entries();
        let mut bytes = vec![0u8; REMAP_COPY_HEADER_BYTES + entries.len() * REMAP_COPY_ENTRY_BYTES];
        bytes[REMAP_OFFSET_MAGIC..REMAP_OFFSET_MAGIC + 8].copy_from_slice(&REMAP_MAGIC);
        put_u32(&mut bytes, REMAP_OFFSET_VERSION, REMAP_VERSION);
        put_u64(&mut bytes, REMAP_OFFSET_SEQUENCE, sequence);
        put_u64(&mut bytes, REMAP_OFFSET_ENTRY_COUNT, entries.len() as u64);
        for (i, entry) in entries.iter().enumerate() {
            let at = REMAP_COPY_HEADER_BYTES + i * REMAP_COPY_ENTRY_BYTES;
            let state_bit = match entry.state {
                RemapState::Pending => 0,
                RemapState::Active => REMAP_ACTIVE_BIT,
            };
            put_u64(&mut bytes, at, entry.bad_block);
            put_u64(&mut bytes, at + 8, entry.spare_block | state_bit);
        }
        let crc = copy_crc(&bytes);
        put_u32(&mut bytes, REMAP_OFFSET_CRC, crc);
        bytes
    }

    /// Check the table's internal consistency; panics with the values.
    pub fn check_invariants(&self) {
        assert!(
            self.entries.len() <= self.max_entries,
            "{} entries > max {}",
            self.entries.len(),
            self.max_entries
        );
        assert_eq!(
            self.entries.len(),
            self.bad_by_spare.len(),
            "entries and spare index differ in size"
        );
        let mut active = 0;
        for (&bad, &(spare, state)) in &self.entries {
            assert_eq!(
                self.bad_by_spare.get(&spare),
                Some(&bad),
                "spare {spare} of bad {bad} not indexed"
            );
            assert!(
                !self.entries.contains_key(&spare),
                "spare {spare} of bad {bad} is also a bad block"
            );
            assert!(
                bad <= REMAP_MAX_BLOCK && spare <= REMAP_MAX_BLOCK,
                "bad {bad} or spare {spare} above {REMAP_MAX_BLOCK}"
            );
            let published = self.active.spare_by_bad.get(&bad).copied();
            match state {
                RemapState::Active => {
                    active += 1;
                    assert_eq!(published, Some(spare), "active bad {bad} not published");
                }
                RemapState::Pending => {
                    assert_eq!(published, None, "pending bad {bad} published")
                }
            }
        }
        assert_eq!(
            self.active.spare_by_bad.len(),
            active,
            "snapshot size != active entries"
        );
        let mut sorted: Vec<u64> = self.active.spare_by_bad.keys().copied().collect();
        sorted.sort_unstable();
        assert_eq!(sorted, self.active.sorted_bad, "sorted_bad out of date");
        let guard = self.published.read().unwrap_or_else(|e| e.into_inner());
        assert!(
            Arc::ptr_eq(&guard, &self.active),
            "published snapshot is not the writer's"
        );
    }
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn get_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// crc32c of a whole encoded copy (header + entries) without its crc field.
fn copy_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&bytes[..REMAP_OFFSET_CRC]);
    crc32c::crc32c_append(crc, &bytes[REMAP_OFFSET_CRC + 4..])
}

/// Decode one copy: its sequence number and table, entries in their stored
/// state. `bytes` may be the whole copy area (bytes after the entries are
/// padding and ignored); the table's capacity is `max_entries(bytes.len())`.
///
/// Checks, in order: length of the header, magic, version, length of the
/// entries, checksum, reserved bytes zero, entries consistent (as
/// [`RemapTable::begin`] checks them).
pub fn decode_copy(bytes: &[u8]) -> Result<(u64, RemapTable), RemapError> {
    if bytes.len() < REMAP_COPY_HEADER_BYTES {
        return Err(RemapError::CopyTruncated {
            len_bytes: bytes.len(),
            needed_bytes: REMAP_COPY_HEADER_BYTES as u64,
        });
    }
    let mut found = [0u8; 8];
    found.copy_from_slice(&bytes[REMAP_OFFSET_MAGIC..REMAP_OFFSET_MAGIC + 8]);
    if found != REMAP_MAGIC {
        return Err(RemapError::BadMagic { found });
    }
    let version = get_u32(bytes, REMAP_OFFSET_VERSION);
    if version != REMAP_VERSION {
        return Err(RemapError::UnsupportedVersion {
            found: version,
            supported: REMAP_VERSION,
        });
    }
    let sequence = get_u64(bytes, REMAP_OFFSET_SEQUENCE);
    let count = get_u64(bytes, REMAP_OFFSET_ENTRY_COUNT);
    let needed_bytes =
        u128::from(count) * REMAP_COPY_ENTRY_BYTES as u128 + REMAP_COPY_HEADER_BYTES as u128;
    if needed_bytes > bytes.len() as u128 {
        return Err(RemapError::CopyTruncated {
            len_bytes: bytes.len(),
            needed_bytes: u64::try_from(needed_bytes).unwrap_or(u64::MAX),
        });
    }
    let copy = &bytes[..needed_bytes as usize];
    let stored = get_u32(copy, REMAP_OFFSET_CRC);
    let computed = copy_crc(copy);
    if stored != computed {
        return Err(RemapError::ChecksumMismatch { stored, computed });
    }
    let reserved = (REMAP_OFFSET_RESERVED0..REMAP_OFFSET_RESERVED0 + 4)
        .chain(REMAP_OFFSET_RESERVED1..REMAP_COPY_HEADER_BYTES);
    for offset in reserved {
        if copy[offset] != 0 {
            return Err(RemapError::ReservedNotZero { offset });
        }
    }
    let mut table = RemapTable::new(max_entries(bytes.len()));
    let mut active = Vec::new();
    for index in 0..count {
        let at = REMAP_COPY_HEADER_BYTES + index as usize * REMAP_COPY_ENTRY_BYTES;
        let bad_block = get_u64(copy, at);
        let spare_word = get_u64(copy, at + 8);
        let spare_block = spare_word & !REMAP_ACTIVE_BIT;
        table
            .begin(bad_block, spare_block)
            .map_err(|reason| RemapError::InvalidEntry {
                index,
                reason: Box::new(reason),
            })?;
        if spare_word & REMAP_ACTIVE_BIT != 0 {
            active.push(bad_block);
        }
    }
    if !active.is_empty() {
        table.activate_all(&active);
    }
    Ok((sequence, table))
}

/// Recovery: the valid copy with the highest sequence number (ties: the
/// first given), with its PENDING entries made ACTIVE.
///
/// Why activate: the write path records an entry PENDING, writes and
/// flushes the copies, activates in memory, retries the write on the spare
/// and acknowledges it, without writing the copies again. So a durable
/// PENDING entry may guard data that was acknowledged on the spare;
/// dropping it would send reads back to the bad block and lose that data.
/// Activating is always safe: the block did fail, so keeping it remapped
/// costs one spare, and if the retried write never happened the spare
/// holds bytes no committed record points to (the store only acknowledges
/// after the write), which record checksums would reject anyway.
pub fn recover(copies: &[&[u8]]) -> Result<(u64, RemapTable), RemapError> {
    let mut best: Option<(u64, RemapTable)> = None;
    let mut defects = Vec::new();
    for copy in copies {
        match decode_copy(copy) {
            Ok((sequence, table)) => {
                if best.as_ref().is_none_or(|(s, _)| sequence > *s) {
                    best = Some((sequence, table));
                }
            }
            Err(defect) => defects.push(defect),
        }
    }
    match best {
        Some((sequence, mut table)) => {
            table.activate_pending();
            Ok((sequence, table))
        }
        None => Err(RemapError::NoValidCopy { defects }),
    }
}

/// Remapping figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemapStats {
    /// ACTIVE remaps.
    pub remaps: u64,
    /// PENDING remaps.
    pub pending: u64,
    /// Spares still free.
    pub spares_left: u64,
    /// Blocks in the spare pool.
    pub spares_total: u64,
}

impl RemapStats {
    /// The figures of a table and its pool.
    pub fn collect(table: &RemapTable, pool: &SparePool) -> Self {
        let remaps = table.view().len() as u64;
        RemapStats {
            remaps,
            pending: table.len() as u64 - remaps,
            spares_left: pool.spares_left(),
            spares_total: pool.spares_total(),
        }
    }
}
