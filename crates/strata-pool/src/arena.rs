//! Placement of large blocks inside arenas: best-fit with splitting and
//! coalescing, offsets relative to their arena. Pure bookkeeping: no memory
//! is touched, so the caller maps the arenas and turns
//! `(arena base + offset)` into pointers.
//!
//! An arena is one contiguous range of `arena_len` bytes, tiled exactly by
//! blocks, each free or allocated. Free neighbours are always merged, so a
//! free block is a maximal free run. Allocation takes the smallest free block
//! that fits (ties broken by the lowest `(arena, offset)`), found in
//! O(log n) through an ordered index of free blocks keyed by
//! `(len, arena, offset)`, and splits the remainder off at the block's end.
//! Arenas can be grown at their end ([`ArenaMap::extend_arena`]), as an
//! arena backed by a large reserved virtual range committed lazily can be.
//!
//! The optional oversize rule is PyTorch's `max_split_size`: a free block of
//! at least [`ArenaConfig::oversize_threshold_bytes`] is never split; it
//! serves only a request that is itself at least the threshold and no more
//! than [`ArenaConfig::oversize_slack_bytes`] shorter than the block, which
//! then gets the whole block (the difference is reported as
//! [`ArenaStats::oversize_waste_bytes`]). Because free blocks coalesce, an
//! arena whose free space merges past the threshold no longer serves
//! requests below it; a caller that sets a threshold should size arenas for
//! small traffic below it.
//!
//! ```
//! use strata_pool::arena::{ArenaConfig, ArenaError, ArenaId, ArenaMap, LargeBlock};
//!
//! const MIB: u64 = 1 << 20;
//! let mut map = ArenaMap::new(ArenaConfig::default())?;
//! let arena = map.add_arena(8 * MIB)?;
//! let a = map.alloc(3 * MIB, 0)?.expect("8 MiB are free");
//! assert_eq!(a, LargeBlock { arena, offset_bytes: 0, len_bytes: 3 * MIB });
//! let b = map.alloc(MIB + 1, 7)?.expect("5 MiB are free"); // rounded up to the granule
//! assert_eq!((b.offset_bytes, b.len_bytes), (3 * MIB, MIB + 4096));
//! assert!(map.alloc(5 * MIB, 0)?.is_none()); // no block fits: the caller extends or adds
//! map.extend_arena(arena, MIB)?; // the new tail merges with the free block before it
//! assert_eq!(map.tail_free_bytes(arena), 5 * MIB - 4096);
//! assert_eq!(map.free(b.arena, b.offset_bytes)?.tag, 7);
//! assert_eq!(
//!     map.free(b.arena, b.offset_bytes),
//!     Err(ArenaError::NotAllocated { arena, offset_bytes: 3 * MIB })
//! );
//! map.free(a.arena, a.offset_bytes)?;
//! assert_eq!(map.free_blocks_in(arena).collect::<Vec<_>>(), vec![(0, 9 * MIB)]);
//! assert_eq!(map.remove_arena(arena)?, 9 * MIB);
//! map.check_invariants();
//! # Ok::<(), ArenaError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Default [`ArenaConfig::granule_bytes`]: the base page size, so every
/// block can be returned to the kernel (`madvise`) page by page.
pub const GRANULE_BYTES_DEFAULT: u64 = 4096;

/// Default [`ArenaConfig::oversize_slack_bytes`]: PyTorch's `kLargeBuffer`,
/// the most an oversize block may exceed the request it serves.
pub const OVERSIZE_SLACK_BYTES_DEFAULT: u64 = 20 << 20;

/// [`arena_bytes_for`] rounds every proposal up to this: the x86-64 and
/// AArch64 (4 KiB pages) huge-page size, so arenas can be backed by
/// transparent huge pages.
pub const ARENA_ROUND_BYTES: u64 = 2 << 20;

/// [`arena_bytes_for`] proposes at least `existing / ARENA_GROWTH_DIVISOR`,
/// so the number of arenas grows logarithmically with the bytes mapped
/// while the part of a new arena nobody asked for stays under 1/16 (6.25%)
/// of what is already mapped, inside the 1.10 reserved/peak target.
pub const ARENA_GROWTH_DIVISOR: u64 = 16;

/// The largest length [`arena_bytes_for`] proposes: the largest multiple of
/// [`ARENA_ROUND_BYTES`] in a `u64`, where proposals saturate.
pub const ARENA_PROPOSAL_BYTES_MAX: u64 = !(ARENA_ROUND_BYTES - 1);

const _: () = assert!(GRANULE_BYTES_DEFAULT.is_power_of_two());
const _: () = assert!(ARENA_ROUND_BYTES.is_power_of_two());
// Arenas proposed by `arena_bytes_for` are whole numbers of default granules.
const _: () = assert!(ARENA_ROUND_BYTES.is_multiple_of(GRANULE_BYTES_DEFAULT));
// The default slack is a whole number of default granules.
const _: () = assert!(OVERSIZE_SLACK_BYTES_DEFAULT.is_multiple_of(GRANULE_BYTES_DEFAULT));
const _: () = assert!(ARENA_GROWTH_DIVISOR > 0);

/// Proposes the length of a new arena for a request of `request_bytes` that
/// fits nowhere, given `existing_arena_bytes` already in arenas.
///
/// Growth rule: `max(request_bytes, existing_arena_bytes /
/// ARENA_GROWTH_DIVISOR)` rounded up to [`ARENA_ROUND_BYTES`]. The first term
/// makes the request fit; the second keeps the number of arenas (mmaps,
/// VMAs, `madvise` passes) logarithmic in the total while over-reserving at
/// most 1/16 of it. Saturates at [`ARENA_PROPOSAL_BYTES_MAX`] when the
/// rounding would overflow `u64` (such a request cannot be served anyway). The result is a multiple of the
/// granule whenever the granule is at most [`ARENA_ROUND_BYTES`].
///
/// ```
/// use strata_pool::arena::arena_bytes_for;
/// const MIB: u64 = 1 << 20;
/// assert_eq!(arena_bytes_for(3 * MIB, 0), 4 * MIB);
/// assert_eq!(arena_bytes_for(3 * MIB, 1024 * MIB), 64 * MIB);
/// ```
pub fn arena_bytes_for(request_bytes: u64, existing_arena_bytes: u64) -> u64 {
    let wanted_bytes = request_bytes.max(existing_arena_bytes / ARENA_GROWTH_DIVISOR);
    round_up(wanted_bytes, ARENA_ROUND_BYTES).unwrap_or(ARENA_PROPOSAL_BYTES_MAX)
}

/// `value` rounded up to a multiple of the power of two `unit`, `None` on
/// overflow.
fn round_up(value: u64, unit: u64) -> Option<u64> {
    debug_assert!(unit.is_power_of_two(), "unit {unit} is not a power of two");
    value.checked_add(unit - 1).map(|v| v & !(unit - 1))
}

/// Names one arena of an [`ArenaMap`]. Ids are handed out in increasing
/// order and never reused, so a stale id is reported as unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArenaId(pub u32);

impl fmt::Display for ArenaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "arena {}", self.0)
    }
}

/// A block handed out by [`ArenaMap::alloc`]: `len_bytes` bytes starting
/// `offset_bytes` into `arena`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LargeBlock {
    /// The arena holding the block.
    pub arena: ArenaId,
    /// Start of the block, relative to the arena's base; a multiple of the
    /// granule.
    pub offset_bytes: u64,
    /// Length of the block: the request rounded up to the granule, or a
    /// whole oversize block.
    pub len_bytes: u64,
}

/// What [`ArenaMap::free`] released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreedBlock {
    /// Length of the block that was allocated.
    pub len_bytes: u64,
    /// The tag given to [`ArenaMap::alloc`].
    pub tag: u32,
}

/// One block as seen by [`ArenaMap::block_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// Length of the block.
    pub len_bytes: u64,
    /// Whether the block is handed out.
    pub allocated: bool,
    /// The allocation's tag; 0 for a free block.
    pub tag: u32,
}

/// Settings of an [`ArenaMap`], checked by [`ArenaConfig::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Unit of every offset and length; a power of two. Any alignment up to
    /// the granule holds when the arena base is granule-aligned.
    pub granule_bytes: u64,
    /// Free blocks of at least this many bytes are never split and serve
    /// only requests of at least this many bytes (PyTorch's
    /// `max_split_size`). `None` turns the rule off. A multiple of the
    /// granule.
    pub oversize_threshold_bytes: Option<u64>,
    /// An oversize block serves a request only if it is at most this many
    /// bytes longer than the (rounded) request.
    pub oversize_slack_bytes: u64,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        ArenaConfig {
            granule_bytes: GRANULE_BYTES_DEFAULT,
            oversize_threshold_bytes: None,
            oversize_slack_bytes: OVERSIZE_SLACK_BYTES_DEFAULT,
        }
    }
}

impl ArenaConfig {
    /// Checks the settings: the granule is a power of two, the oversize
    /// threshold (if any) a nonzero multiple of it.
    pub fn validate(&self) -> Result<(), ArenaError> {
        if !self.granule_bytes.is_power_of_two() {
            return Err(ArenaError::BadConfig {
                what: "granule_bytes must be a power of two",
                value_bytes: self.granule_bytes,
            });
        }
        if let Some(threshold_bytes) = self.oversize_threshold_bytes {
            if threshold_bytes == 0 || !threshold_bytes.is_multiple_of(self.granule_bytes) {
                return Err(ArenaError::BadConfig {
                    what: "oversize_threshold_bytes must be a nonzero multiple of granule_bytes",
                    value_bytes: threshold_bytes,
                });
            }
        }
        Ok(())
    }
}

/// Why an [`ArenaMap`] operation was refused. A refused operation changes
/// nothing.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArenaError {
    /// A request, arena or extension of zero bytes.
    ZeroSize,
    /// The size overflows `u64` once rounded to the granule or added to the
    /// arena (or to the total of all arenas).
    SizeOverflow {
        /// Bytes asked for.
        requested_bytes: u64,
    },
    /// No arena with this id (never added, or removed).
    UnknownArena {
        /// The id given.
        arena: ArenaId,
    },
    /// No allocated block starts at this offset: a double free, or an offset
    /// that is not the start of a block.
    NotAllocated {
        /// The arena given.
        arena: ArenaId,
        /// The offset given.
        offset_bytes: u64,
    },
    /// The arena still holds allocated blocks and cannot be removed.
    ArenaInUse {
        /// The arena given.
        arena: ArenaId,
        /// Bytes still allocated in it.
        allocated_bytes: u64,
    },
    /// A setting of [`ArenaConfig`] is invalid.
    BadConfig {
        /// Which rule the setting breaks.
        what: &'static str,
        /// The offending value.
        value_bytes: u64,
    },
    /// An arena length or extension is not a multiple of the granule (the
    /// map cannot round it: the caller maps exactly that many bytes).
    NotGranuleMultiple {
        /// The length given.
        bytes: u64,
        /// The map's granule.
        granule_bytes: u64,
    },
    /// All `u32` arena ids have been handed out.
    ArenaIdsExhausted,
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArenaError::ZeroSize => write!(f, "a block, arena or extension of zero bytes"),
            ArenaError::SizeOverflow { requested_bytes } => write!(
                f,
                "{requested_bytes} bytes overflow u64 once rounded to the granule or added \
                 to the arena"
            ),
            ArenaError::UnknownArena { arena } => write!(f, "{arena} does not exist"),
            ArenaError::NotAllocated {
                arena,
                offset_bytes,
            } => write!(
                f,
                "no allocated block starts at offset {offset_bytes} of {arena} \
                 (double free or not a block start)"
            ),
            ArenaError::ArenaInUse {
                arena,
                allocated_bytes,
            } => write!(
                f,
                "{arena} still holds {allocated_bytes} allocated bytes and cannot be removed"
            ),
            ArenaError::BadConfig { what, value_bytes } => {
                write!(f, "bad arena config: {what} (got {value_bytes})")
            }
            ArenaError::NotGranuleMultiple {
                bytes,
                granule_bytes,
            } => write!(
                f,
                "{bytes} bytes is not a multiple of the {granule_bytes}-byte granule"
            ),
            ArenaError::ArenaIdsExhausted => write!(f, "all {} arena ids are used", u32::MAX),
        }
    }
}

impl std::error::Error for ArenaError {}

/// Counters of an [`ArenaMap`], kept incrementally.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArenaStats {
    /// Arenas in the map.
    pub arenas: u64,
    /// Total length of all arenas.
    pub arena_bytes: u64,
    /// Bytes in allocated blocks (oversize waste included).
    pub allocated_bytes: u64,
    /// Bytes in free blocks: `arena_bytes - allocated_bytes`.
    pub free_bytes: u64,
    /// Allocated blocks.
    pub allocated_blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// The longest free block (0 when nothing is free).
    pub largest_free_bytes: u64,
    /// Free bytes in arenas that also hold an allocated block: memory that
    /// cannot be returned by dropping whole arenas.
    pub inactive_split_bytes: u64,
    /// Bytes by which live oversize blocks exceed the requests they serve.
    pub oversize_waste_bytes: u64,
    /// `1 - largest_free_bytes / free_bytes`; 0 when nothing is free.
    pub fragmentation: f64,
}

/// State of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    Free,
    Allocated {
        tag: u32,
        /// Bytes beyond the rounded request (nonzero only for oversize).
        waste_bytes: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    len_bytes: u64,
    state: BlockState,
}

/// Key of the free index; the derived order is best-fit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FreeKey {
    len_bytes: u64,
    arena: u32,
    offset_bytes: u64,
}

impl FreeKey {
    /// The smallest key with this length.
    fn first_of_len(len_bytes: u64) -> FreeKey {
        FreeKey {
            len_bytes,
            arena: 0,
            offset_bytes: 0,
        }
    }
}

#[derive(Clone, Debug)]
struct Arena {
    len_bytes: u64,
    allocated_bytes: u64,
    /// Blocks by offset; they tile `0..len_bytes`.
    blocks: BTreeMap<u64, Block>,
}

impl Arena {
    /// This arena's share of [`ArenaStats::inactive_split_bytes`].
    fn inactive_split_bytes(&self) -> u64 {
        if self.allocated_bytes > 0 {
            self.len_bytes - self.allocated_bytes
        } else {
            0
        }
    }
}

/// Best-fit placement of large blocks over a set of arenas.
///
/// Every operation is O(log n) in the blocks and arenas, except the
/// queries that return a list ([`ArenaMap::empty_arenas`],
/// [`ArenaMap::free_blocks_in`]) and [`ArenaMap::check_invariants`].
#[derive(Clone, Debug)]
pub struct ArenaMap {
    config: ArenaConfig,
    arenas: BTreeMap<u32, Arena>,
    /// The id the next arena gets; past `u32::MAX` ids are exhausted.
    next_arena_id: u64,
    free_index: BTreeSet<FreeKey>,
    arena_bytes: u64,
    allocated_bytes: u64,
    allocated_blocks: u64,
    inactive_split_bytes: u64,
    oversize_waste_bytes: u64,
}

impl ArenaMap {
    /// An empty map (no arenas) with validated settings.
    pub fn new(config: ArenaConfig) -> Result<Self, ArenaError> {
        config.validate()?;
        Ok(ArenaMap {
            config,
            arenas: BTreeMap::new(),
            next_arena_id: 0,
            free_index: BTreeSet::new(),
            arena_bytes: 0,
            allocated_bytes: 0,
            allocated_blocks: 0,
            inactive_split_bytes: 0,
            oversize_waste_bytes: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> ArenaConfig {
        self.config
    }

    /// The ids of all arenas, in increasing order.
    pub fn arena_ids(&self) -> impl Iterator<Item = ArenaId> + '_ {
        self.arenas.keys().map(|&id| ArenaId(id))
    }

    /// Checks that `bytes` is a nonzero multiple of the granule.
    fn check_arena_bytes(&self, bytes: u64) -> Result<(), ArenaError> {
        if bytes == 0 {
            return Err(ArenaError::ZeroSize);
        }
        if !bytes.is_multiple_of(self.config.granule_bytes) {
            return Err(ArenaError::NotGranuleMultiple {
                bytes,
                granule_bytes: self.config.granule_bytes,
            });
        }
        Ok(())
    }

    /// Adds an arena of `len_bytes` (a nonzero multiple of the granule),
    /// wholly free. Its id is larger than every id handed out before.
    pub fn add_arena(&mut self, len_bytes: u64) -> Result<ArenaId, ArenaError> {
        self.check_arena_bytes(len_bytes)?;
        let total_bytes =
            self.arena_bytes
                .checked_add(len_bytes)
                .ok_or(ArenaError::SizeOverflow {
                    requested_bytes: len_bytes,
                })?;
        let id = u32::try_from(self.next_arena_id).map_err(|_| ArenaError::ArenaIdsExhausted)?;
        self.next_arena_id += 1;
        self.arena_bytes = total_bytes;
        let mut blocks = BTreeMap::new();
        blocks.insert(
            0,
            Block {
                len_bytes,
                state: BlockState::Free,
            },
        );
        self.arenas.insert(
            id,
            Arena {
                len_bytes,
                allocated_bytes: 0,
                blocks,
            },
        );
        self.free_index.insert(FreeKey {
            len_bytes,
            arena: id,
            offset_bytes: 0,
        });
        Ok(ArenaId(id))
    }

    /// Grows an arena by `additional_bytes` (a nonzero multiple of the
    /// granule) at its end. The new tail is free and merges with a free
    /// block at the old end.
    pub fn extend_arena(&mut self, id: ArenaId, additional_bytes: u64) -> Result<(), ArenaError> {
        if !self.arenas.contains_key(&id.0) {
            return Err(ArenaError::UnknownArena { arena: id });
        }
        self.check_arena_bytes(additional_bytes)?;
        let arena = self.arenas.get_mut(&id.0).expect("checked to exist above");
        let overflow = ArenaError::SizeOverflow {
            requested_bytes: additional_bytes,
        };
        let new_len_bytes = arena
            .len_bytes
            .checked_add(additional_bytes)
            .ok_or(overflow.clone())?;
        let total_bytes = self
            .arena_bytes
            .checked_add(additional_bytes)
            .ok_or(overflow)?;
        let inactive_before = arena.inactive_split_bytes();
        let old_len_bytes = arena.len_bytes;
        let (&last_offset, last) = arena
            .blocks
            .last_key_value()
            .expect("an arena always holds a block");
        let last = *last;
        if last.state == BlockState::Free {
            self.free_index.remove(&FreeKey {
                len_bytes: last.len_bytes,
                arena: id.0,
                offset_bytes: last_offset,
            });
            let merged_bytes = last.len_bytes + additional_bytes;
            arena.blocks.insert(
                last_offset,
                Block {
                    len_bytes: merged_bytes,
                    state: BlockState::Free,
                },
            );
            self.free_index.insert(FreeKey {
                len_bytes: merged_bytes,
                arena: id.0,
                offset_bytes: last_offset,
            });
        } else {
            arena.blocks.insert(
                old_len_bytes,
                Block {
                    len_bytes: additional_bytes,
                    state: BlockState::Free,
                },
            );
            self.free_index.insert(FreeKey {
                len_bytes: additional_bytes,
                arena: id.0,
                offset_bytes: old_len_bytes,
            });
        }
        arena.len_bytes = new_len_bytes;
        self.arena_bytes = total_bytes;
        self.inactive_split_bytes =
            self.inactive_split_bytes - inactive_before + arena.inactive_split_bytes();
        Ok(())
    }

    /// Removes a wholly free arena and returns its length; an arena still
    /// holding allocated blocks is refused with [`ArenaError::ArenaInUse`].
    pub fn remove_arena(&mut self, id: ArenaId) -> Result<u64, ArenaError> {
        let arena = self
            .arenas
            .get(&id.0)
            .ok_or(ArenaError::UnknownArena { arena: id })?;
        if arena.allocated_bytes > 0 {
            return Err(ArenaError::ArenaInUse {
                arena: id,
                allocated_bytes: arena.allocated_bytes,
            });
        }
        let len_bytes = arena.len_bytes;
        // Wholly free and coalesced: exactly one free block at offset 0.
        let removed = self.free_index.remove(&FreeKey {
            len_bytes,
            arena: id.0,
            offset_bytes: 0,
        });
        assert!(
            removed && arena.blocks.len() == 1,
            "free {id} of {len_bytes} bytes is not one free block: {} blocks, indexed {removed}",
            arena.blocks.len()
        );
        self.arenas.remove(&id.0);
        self.arena_bytes -= len_bytes;
        Ok(len_bytes)
    }

    /// Places a block of `size_bytes` (rounded up to the granule) with the
    /// given tag: the smallest free block that fits and that the oversize
    /// rule allows, ties broken by the lowest `(arena, offset)`. A normal
    /// block is split, the remainder staying free at its end; an oversize
    /// block is handed out whole. `Ok(None)` when nothing fits: the caller
    /// extends or adds an arena and asks again.
    pub fn alloc(&mut self, size_bytes: u64, tag: u32) -> Result<Option<LargeBlock>, ArenaError> {
        if size_bytes == 0 {
            return Err(ArenaError::ZeroSize);
        }
        let len_bytes =
            round_up(size_bytes, self.config.granule_bytes).ok_or(ArenaError::SizeOverflow {
                requested_bytes: size_bytes,
            })?;
        let threshold_bytes = self.config.oversize_threshold_bytes;
        let oversize_request = threshold_bytes.is_some_and(|t| len_bytes >= t);
        let from = FreeKey::first_of_len(len_bytes);
        let candidate = match threshold_bytes {
            // Every free block of at least `len_bytes` is oversize here; the
            // smallest is the only one that may be within the slack.
            Some(_) if oversize_request => self
                .free_index
                .range(from..)
                .next()
                .filter(|key| key.len_bytes - len_bytes <= self.config.oversize_slack_bytes),
            // Not oversize: `len_bytes < t`, so the bounds are ordered.
            Some(t) => self.free_index.range(from..FreeKey::first_of_len(t)).next(),
            None => self.free_index.range(from..).next(),
        };
        let Some(&key) = candidate else {
            return Ok(None);
        };
        self.free_index.remove(&key);
        let arena = self
            .arenas
            .get_mut(&key.arena)
            .expect("the free index names only live arenas");
        let inactive_before = arena.inactive_split_bytes();
        let (handed_bytes, waste_bytes) = if oversize_request {
            (key.len_bytes, key.len_bytes - len_bytes)
        } else {
            (len_bytes, 0)
        };
        arena.blocks.insert(
            key.offset_bytes,
            Block {
                len_bytes: handed_bytes,
                state: BlockState::Allocated { tag, waste_bytes },
            },
        );
        let remainder_bytes = key.len_bytes - handed_bytes;
        if remainder_bytes > 0 {
            // Both lengths are granule multiples, so the remainder is at
            // least one granule.
            let remainder_offset_bytes = key.offset_bytes + handed_bytes;
            arena.blocks.insert(
                remainder_offset_bytes,
                Block {
                    len_bytes: remainder_bytes,
                    state: BlockState::Free,
                },
            );
            self.free_index.insert(FreeKey {
                len_bytes: remainder_bytes,
                arena: key.arena,
                offset_bytes: remainder_offset_bytes,
            });
        }
        arena.allocated_bytes += handed_bytes;
        self.allocated_bytes += handed_bytes;
        self.allocated_blocks += 1;
        self.oversize_waste_bytes += waste_bytes;
        self.inactive_split_bytes =
            self.inactive_split_bytes - inactive_before + arena.inactive_split_bytes();
        Ok(Some(LargeBlock {
            arena: ArenaId(key.arena),
            offset_bytes: key.offset_bytes,
            len_bytes: handed_bytes,
        }))
    }

    /// Frees the allocated block starting at `offset_bytes` of `arena`,
    /// merging it with free neighbours, and returns its length and tag.
    pub fn free(&mut self, arena: ArenaId, offset_bytes: u64) -> Result<FreedBlock, ArenaError> {
        let record = self
            .arenas
            .get_mut(&arena.0)
            .ok_or(ArenaError::UnknownArena { arena })?;
        let not_allocated = ArenaError::NotAllocated {
            arena,
            offset_bytes,
        };
        let block = *record
            .blocks
            .get(&offset_bytes)
            .ok_or(not_allocated.clone())?;
        let BlockState::Allocated { tag, waste_bytes } = block.state else {
            return Err(not_allocated);
        };
        let inactive_before = record.inactive_split_bytes();
        let mut start_bytes = offset_bytes;
        let mut len_bytes = block.len_bytes;
        let next_offset_bytes = offset_bytes + block.len_bytes;
        if let Some(&next) = record.blocks.get(&next_offset_bytes) {
            if next.state == BlockState::Free {
                self.free_index.remove(&FreeKey {
                    len_bytes: next.len_bytes,
                    arena: arena.0,
                    offset_bytes: next_offset_bytes,
                });
                record.blocks.remove(&next_offset_bytes);
                len_bytes += next.len_bytes;
            }
        }
        if let Some((&prev_offset_bytes, &prev)) = record.blocks.range(..offset_bytes).next_back() {
            if prev.state == BlockState::Free {
                self.free_index.remove(&FreeKey {
                    len_bytes: prev.len_bytes,
                    arena: arena.0,
                    offset_bytes: prev_offset_bytes,
                });
                record.blocks.remove(&offset_bytes);
                start_bytes = prev_offset_bytes;
                len_bytes += prev.len_bytes;
            }
        }
        record.blocks.insert(
            start_bytes,
            Block {
                len_bytes,
                state: BlockState::Free,
            },
        );
        self.free_index.insert(FreeKey {
            len_bytes,
            arena: arena.0,
            offset_bytes: start_bytes,
        });
        record.allocated_bytes -= block.len_bytes;
        self.allocated_bytes -= block.len_bytes;
        self.allocated_blocks -= 1;
        self.oversize_waste_bytes -= waste_bytes;
        self.inactive_split_bytes =
            self.inactive_split_bytes - inactive_before + record.inactive_split_bytes();
        Ok(FreedBlock {
            len_bytes: block.len_bytes,
            tag,
        })
    }

    /// The block starting exactly at `offset_bytes` of `arena`, if any.
    pub fn block_at(&self, arena: ArenaId, offset_bytes: u64) -> Option<BlockInfo> {
        let block = self.arenas.get(&arena.0)?.blocks.get(&offset_bytes)?;
        Some(match block.state {
            BlockState::Free => BlockInfo {
                len_bytes: block.len_bytes,
                allocated: false,
                tag: 0,
            },
            BlockState::Allocated { tag, .. } => BlockInfo {
                len_bytes: block.len_bytes,
                allocated: true,
                tag,
            },
        })
    }

    /// The free blocks of `arena` as `(offset_bytes, len_bytes)`, by offset
    /// (empty for an unknown arena): the ranges whose memory may be
    /// returned to the kernel.
    pub fn free_blocks_in(&self, arena: ArenaId) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.arenas
            .get(&arena.0)
            .into_iter()
            .flat_map(|record| record.blocks.iter())
            .filter(|(_, block)| block.state == BlockState::Free)
            .map(|(&offset_bytes, block)| (offset_bytes, block.len_bytes))
    }

    /// The arenas holding no allocated block, by id.
    pub fn empty_arenas(&self) -> Vec<ArenaId> {
        self.arenas
            .iter()
            .filter(|(_, arena)| arena.allocated_bytes == 0)
            .map(|(&id, _)| ArenaId(id))
            .collect()
    }

    /// Free bytes at the end of `arena` (0 when its last block is
    /// allocated, or for an unknown arena): what an extension would merge
    /// with.
    pub fn tail_free_bytes(&self, arena: ArenaId) -> u64 {
        self.arenas
            .get(&arena.0)
            .and_then(|record| record.blocks.last_key_value())
            .filter(|(_, block)| block.state == BlockState::Free)
            .map_or(0, |(_, block)| block.len_bytes)
    }

    /// The length of `arena`, `None` if it does not exist.
    pub fn arena_len(&self, arena: ArenaId) -> Option<u64> {
        self.arenas.get(&arena.0).map(|record| record.len_bytes)
    }

    /// The counters, in O(log n).
    pub fn stats(&self) -> ArenaStats {
        let free_bytes = self.arena_bytes - self.allocated_bytes;
        let largest_free_bytes = self.free_index.last().map_or(0, |key| key.len_bytes);
        let fragmentation = if free_bytes == 0 {
            0.0
        } else {
            1.0 - largest_free_bytes as f64 / free_bytes as f64
        };
        ArenaStats {
            arenas: self.arenas.len() as u64,
            arena_bytes: self.arena_bytes,
            allocated_bytes: self.allocated_bytes,
            free_bytes,
            allocated_blocks: self.allocated_blocks,
            free_blocks: self.free_index.len() as u64,
            largest_free_bytes,
            inactive_split_bytes: self.inactive_split_bytes,
            oversize_waste_bytes: self.oversize_waste_bytes,
            fragmentation,
        }
    }

    /// Checks every invariant in O(n) and panics with the values on a
    /// violation: blocks tile each arena exactly, lengths and offsets are
    /// granule multiples, no two free blocks are adjacent, the free index is
    /// exactly the set of free blocks, and every counter equals a recount.
    pub fn check_invariants(&self) {
        let granule_bytes = self.config.granule_bytes;
        let mut arena_bytes = 0u64;
        let mut allocated_bytes = 0u64;
        let mut allocated_blocks = 0u64;
        let mut inactive_split_bytes = 0u64;
        let mut oversize_waste_bytes = 0u64;
        let mut free_keys = BTreeSet::new();
        for (&id, arena) in &self.arenas {
            assert!(
                u64::from(id) < self.next_arena_id,
                "arena {id} >= next id {}",
                self.next_arena_id
            );
            assert!(
                arena.len_bytes > 0 && arena.len_bytes.is_multiple_of(granule_bytes),
                "arena {id} length {} is not a nonzero multiple of {granule_bytes}",
                arena.len_bytes
            );
            let mut expected_offset_bytes = 0u64;
            let mut previous_free = false;
            let mut arena_allocated_bytes = 0u64;
            for (&offset_bytes, block) in &arena.blocks {
                assert_eq!(
                    offset_bytes, expected_offset_bytes,
                    "arena {id}: block at {offset_bytes}, expected one at {expected_offset_bytes} \
                     (gap or overlap)"
                );
                assert!(
                    block.len_bytes > 0 && block.len_bytes.is_multiple_of(granule_bytes),
                    "arena {id}: block at {offset_bytes} has length {} \
                     (not a nonzero multiple of {granule_bytes})",
                    block.len_bytes
                );
                match block.state {
                    BlockState::Free => {
                        assert!(
                            !previous_free,
                            "arena {id}: free block at {offset_bytes} follows a free block"
                        );
                        free_keys.insert(FreeKey {
                            len_bytes: block.len_bytes,
                            arena: id,
                            offset_bytes,
                        });
                    }
                    BlockState::Allocated { waste_bytes, .. } => {
                        assert!(
                            waste_bytes < block.len_bytes,
                            "arena {id}: block at {offset_bytes} of {} bytes wastes {waste_bytes}",
                            block.len_bytes
                        );
                        if waste_bytes > 0 {
                            let threshold = self.config.oversize_threshold_bytes;
                            assert!(
                                threshold.is_some_and(|t| block.len_bytes - waste_bytes >= t)
                                    && waste_bytes <= self.config.oversize_slack_bytes,
                                "arena {id}: block at {offset_bytes} of {} bytes wastes \
                                 {waste_bytes} (threshold {threshold:?}, slack {})",
                                block.len_bytes,
                                self.config.oversize_slack_bytes
                            );
                        }
                        arena_allocated_bytes += block.len_bytes;
                        allocated_blocks += 1;
                        oversize_waste_bytes += waste_bytes;
                    }
                }
                previous_free = block.state == BlockState::Free;
                expected_offset_bytes = offset_bytes + block.len_bytes;
            }
            assert_eq!(
                expected_offset_bytes, arena.len_bytes,
                "arena {id}: blocks end at {expected_offset_bytes}, the arena at {}",
                arena.len_bytes
            );
            assert_eq!(
                arena_allocated_bytes, arena.allocated_bytes,
                "arena {id}: allocated counter {} disagrees with the recount {arena_allocated_bytes}",
                arena.allocated_bytes
            );
            arena_bytes += arena.len_bytes;
            allocated_bytes += arena_allocated_bytes;
            inactive_split_bytes += arena.inactive_split_bytes();
        }
        assert!(
            free_keys == self.free_index,
            "free index ({} entries) disagrees with the free blocks ({} blocks): \
             only in index {:?}, only in blocks {:?}",
            self.free_index.len(),
            free_keys.len(),
            self.free_index.difference(&free_keys).collect::<Vec<_>>(),
            free_keys.difference(&self.free_index).collect::<Vec<_>>()
        );
        assert_eq!(
            arena_bytes, self.arena_bytes,
            "arena_bytes counter {} disagrees with the recount {arena_bytes}",
            self.arena_bytes
        );
        assert_eq!(
            allocated_bytes, self.allocated_bytes,
            "allocated_bytes counter {} disagrees with the recount {allocated_bytes}",
            self.allocated_bytes
        );
        assert_eq!(
            allocated_blocks, self.allocated_blocks,
            "allocated_blocks counter {} disagrees with the recount {allocated_blocks}",
            self.allocated_blocks
        );
        assert_eq!(
            inactive_split_bytes, self.inactive_split_bytes,
            "inactive_split_bytes counter {} disagrees with the recount {inactive_split_bytes}",
            self.inactive_split_bytes
        );
        assert_eq!(
            oversize_waste_bytes, self.oversize_waste_bytes,
            "oversize_waste_bytes counter {} disagrees with the recount {oversize_waste_bytes}",
            self.oversize_waste_bytes
        );
    }
}
