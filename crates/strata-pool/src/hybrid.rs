//! The hybrid pool of one device: small blocks in size classes carved from
//! 2 MiB slabs, large blocks best-fit in growable arenas, per-thread caches
//! in front of both, and accounting merged from threads in batches.
//!
//! Memory layout:
//!
//! - One reserved virtual range for slabs ([`PoolConfig::slab_region_bytes`]);
//!   slab `i` is the 2 MiB at `base + i * 2 MiB`, committed when first
//!   used. A pointer's slab, and through a table its class, is found by
//!   arithmetic, so freeing needs no search.
//! - Arenas: each its own reserved range ([`PoolConfig::arena_virtual_bytes`]),
//!   committed from its start as it grows, placed by [`ArenaMap`]
//!   (best fit, split and coalesce). An arena that runs out of room grows
//!   at its end, so a batch of tensors that grows by one step per round
//!   mostly reuses the space the previous round freed.
//! - Free slots of each slab are tracked by a [`BlockBitmap`]; slots move
//!   between it and per-thread magazines a batch at a time, so the common
//!   allocation and free touch only thread-owned memory.
//! - Sampled allocations (see [`crate::sampling`]) are placed in arenas,
//!   whatever their size, so their flag lives in the arena's block record:
//!   an unsampled allocation has no record of any kind.

use std::collections::HashSet;
use std::panic::Location;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use strata_bitmap::{Block, BlockBitmap};

use crate::accounting::{
    Central, PeakTracker, ReservedCounter, ThreadRecord, ALLOC_COUNT, FREE_COUNT, LARGE_INDEX,
};
use crate::arena::{arena_bytes_for, ArenaConfig, ArenaId, ArenaMap};
use crate::budget::Reservation;
use crate::os::{VirtualRange, PAGE_BYTES};
use crate::sample_pages::{
    SamplePages, SAMPLE_PAGE_BLOCK_BYTES_MAX, SAMPLE_PAGE_BYTES, SAMPLE_REGION_BYTES_DEFAULT,
};
use crate::sampling::{HistoryEvent, HistoryEventKind, ProfileConfig, Profiler, SampleHandle};
use crate::size_class::{
    class_for, class_for_size, class_size_bytes, slots_per_slab, ALIGN_BYTES_MAX, CLASS_BYTES_MIN,
    CLASS_COUNT, SLAB_BYTES, SMALL_BYTES_MAX,
};
use crate::stats::{ClassStats, PoolStats, StatBytes};
use crate::thread_cache::{drop_cache, with_cache, FastAlloc, ThreadCache};
use crate::{Device, PoolError};

/// Default address space for slabs (virtual; committed on use).
pub const SLAB_REGION_BYTES_DEFAULT: u64 = 64 << 30;
/// Default address space of one arena (virtual; committed as it grows).
pub const ARENA_VIRTUAL_BYTES_DEFAULT: u64 = 64 << 30;
/// Arenas grow in steps of this many bytes.
pub const ARENA_GROW_BYTES: u64 = 2 << 20;

const _: () = assert!(ARENA_GROW_BYTES.is_multiple_of(PAGE_BYTES));
const _: () = assert!(CLASS_COUNT < u8::MAX as usize, "slab class table is u8");

/// Arena block tag of an unsampled block; a sampled block's tag is its
/// profiler handle ([`SampleHandle::to_tag`], never 0), so the sample's only
/// bookkeeping is the profiler's 16-byte record.
pub(crate) const TAG_UNSAMPLED: u32 = 0;

/// How a pool is built.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The device; only [`Device::Cpu`] has a backend.
    pub device: Device,
    /// Per-operation counters on (the default) or off.
    pub accounting: bool,
    /// Sampled profiling (default: sampled at 512 KiB, no stacks).
    pub profile: ProfileConfig,
    /// Address space reserved for slabs.
    pub slab_region_bytes: u64,
    /// Address space reserved for each arena.
    pub arena_virtual_bytes: u64,
    /// Placement settings of large blocks.
    pub arena: ArenaConfig,
    /// Address space reserved for sampled small blocks (one per page).
    pub sample_region_bytes: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            device: Device::Cpu,
            accounting: true,
            profile: ProfileConfig::default(),
            slab_region_bytes: SLAB_REGION_BYTES_DEFAULT,
            arena_virtual_bytes: ARENA_VIRTUAL_BYTES_DEFAULT,
            arena: ArenaConfig::default(),
            sample_region_bytes: SAMPLE_REGION_BYTES_DEFAULT,
        }
    }
}

/// What [`HybridPool::release_unused`] gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReleaseReport {
    /// Resident bytes returned to the system (counted page by page with
    /// `mincore` before they were dropped).
    pub resident_bytes_returned: u64,
    /// Committed bytes given up (slabs decommitted, arenas unmapped).
    pub reserved_bytes_returned: u64,
    /// Empty slabs decommitted.
    pub slabs_released: u64,
    /// Empty arenas unmapped.
    pub arenas_released: u64,
}

/// Which kind of block a pointer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockKind {
    Small(u8),
    Large,
    /// A sampled small block in its own sample page.
    SamplePage,
}

// ------------------------------------------------------------------- slabs

/// Slab indices not owned by a class.
struct SlabRegion {
    /// Slabs `fresh_next..` have never been committed.
    fresh_next: u32,
    /// Committed and empty, reusable by any class.
    empty: Vec<u32>,
    /// Decommitted, reusable after a new commit.
    released: Vec<u32>,
}

/// One slab of a class: its free slots.
struct ClassSlab {
    slab: u32,
    free_slots: BlockBitmap,
}

/// The central state of one class.
struct ClassCentral {
    slabs: Vec<ClassSlab>,
    /// Indices into `slabs` of slabs with a free slot (a stack).
    partial: Vec<u32>,
    /// Slots out of the slabs: handed to callers or parked in magazines.
    slots_out: u64,
}

/// Pads a lock to its own cache line so classes do not share lines.
#[repr(align(64))]
struct Padded<T>(T);

// ------------------------------------------------------------------ arenas

struct ArenaBacking {
    range: VirtualRange,
    committed_bytes: u64,
}

struct Large {
    map: ArenaMap,
    /// Backing of arena `i` at index `i`; `None` once removed.
    arenas: Vec<Option<ArenaBacking>>,
}

impl Large {
    fn find(&self, addr: usize) -> Option<(ArenaId, u64)> {
        self.arenas.iter().enumerate().find_map(|(i, backing)| {
            let offset = backing.as_ref()?.range.offset_of(addr)?;
            Some((ArenaId(i as u32), offset))
        })
    }
}

// ------------------------------------------------------------ shared state

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Shared {
    pub(crate) id: u64,
    device: Device,
    pub(crate) accounting: bool,
    slab_region: VirtualRange,
    /// Per slab index: class + 1 while a class owns the slab, else 0.
    slab_class: Box<[AtomicU8]>,
    /// Per slab index: its position in its class's `slabs`.
    slab_position: Box<[AtomicU32]>,
    slabs: Mutex<SlabRegion>,
    classes: Box<[Padded<Mutex<ClassCentral>>]>,
    large: Mutex<Large>,
    arena_virtual_bytes: u64,
    pub(crate) central: Mutex<Central>,
    /// Sampled small blocks, one per page.
    sample_pages: SamplePages,
    /// Folded net of allocated bytes and its peak.
    pub(crate) peak: PeakTracker,
    /// Folded net of requested bytes and its peak.
    pub(crate) requested_peak: PeakTracker,
    pub(crate) threads: Mutex<Vec<Arc<ThreadRecord>>>,
    reserved: ReservedCounter,
    pub(crate) profiler: Profiler,
    /// Whether the profiler's history ring is on (copied: checked per operation).
    history: bool,
    /// Blocks handed out by the raw API and not yet freed through it.
    raw_live: Mutex<HashSet<usize>>,
    refused_frees: AtomicU64,
    pub(crate) closed: AtomicBool,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a pool lock leaves the state consistent at
    // every await-free step we take, so poisoning is not fatal.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Count one operation done outside any thread cache.
    fn count_direct(&self, index: usize, alloc: bool, block_bytes: u64, requested_bytes: u64) {
        lock(&self.central).count_direct(index, alloc, block_bytes, requested_bytes);
        let net = if alloc {
            block_bytes as i64
        } else {
            -(block_bytes as i64)
        };
        self.peak.fold(net, net.max(0));
    }

    #[inline]
    fn kind_of(&self, addr: usize) -> Option<(BlockKind, u64)> {
        match self.slab_region.offset_of(addr) {
            Some(offset) => {
                let slab = (offset / SLAB_BYTES) as usize;
                match self.slab_class[slab].load(Relaxed) {
                    0 => None,
                    tag => Some((BlockKind::Small(tag - 1), offset)),
                }
            }
            None if self.sample_pages.contains(addr) => Some((BlockKind::SamplePage, 0)),
            None => Some((BlockKind::Large, 0)),
        }
    }

    fn slab_addr(&self, slab: u32) -> usize {
        self.slab_region.base().as_ptr() as usize + slab as usize * SLAB_BYTES as usize
    }

    /// A committed slab for `class`, from the empty list, the released
    /// list, or fresh address space.
    fn take_slab(&self, class: usize) -> Result<u32, PoolError> {
        let mut region = lock(&self.slabs);
        let slab = if let Some(slab) = region.empty.pop() {
            slab
        } else {
            let slab = match region.released.pop() {
                Some(slab) => slab,
                None => {
                    let limit = (self.slab_region.len_bytes() / SLAB_BYTES) as u32;
                    if region.fresh_next >= limit {
                        return Err(PoolError::AddressSpaceExhausted {
                            requested_bytes: SLAB_BYTES,
                            limit_bytes: self.slab_region.len_bytes(),
                        });
                    }
                    region.fresh_next += 1;
                    region.fresh_next - 1
                }
            };
            if let Err(source) = self
                .slab_region
                .commit(slab as u64 * SLAB_BYTES, SLAB_BYTES)
            {
                region.released.push(slab);
                return Err(PoolError::OutOfMemory {
                    requested_bytes: SLAB_BYTES,
                    source,
                });
            }
            self.slab_region
                .advise_huge_pages(slab as u64 * SLAB_BYTES, SLAB_BYTES);
            self.reserved.add(SLAB_BYTES);
            slab
        };
        self.slab_class[slab as usize].store(class as u8 + 1, Relaxed);
        Ok(slab)
    }

    /// Move up to `want` free slots of `class` into `out`; at least one
    /// unless memory runs out.
    pub(crate) fn refill(
        &self,
        class: usize,
        want: usize,
        out: &mut Vec<usize>,
    ) -> Result<(), PoolError> {
        let size = class_size_bytes(class) as usize;
        let mut central = lock(&self.classes[class].0);
        let start_len = out.len();
        while out.len() - start_len < want {
            let position = match central.partial.last() {
                Some(&position) => position as usize,
                None => {
                    let slab = match self.take_slab(class) {
                        Ok(slab) => slab,
                        Err(error) if out.len() == start_len => return Err(error),
                        Err(_) => break,
                    };
                    let free_slots = BlockBitmap::new(slots_per_slab(class))
                        .expect("slots per slab is in range");
                    let position = central.slabs.len();
                    self.slab_position[slab as usize].store(position as u32, Relaxed);
                    central.slabs.push(ClassSlab { slab, free_slots });
                    central.partial.push(position as u32);
                    position
                }
            };
            let class_slab = &mut central.slabs[position];
            let base = self.slab_addr(class_slab.slab);
            let mut taken = 0u64;
            {
                let mut cache = class_slab.free_slots.cache();
                while out.len() - start_len < want {
                    match cache.alloc() {
                        Some(Block(slot)) => {
                            out.push(base + slot as usize * size);
                            taken += 1;
                        }
                        None => break,
                    }
                }
            }
            let now_full = class_slab.free_slots.free_blocks() == 0;
            central.slots_out += taken;
            if now_full {
                central.partial.pop();
            }
        }
        Ok(())
    }

    /// Return slots of `class` to their slabs. A slot whose bit is already
    /// free is refused (counted), never double-freed.
    pub(crate) fn flush(&self, class: usize, slots: &[usize]) {
        let size = class_size_bytes(class);
        let slots_per = slots_per_slab(class);
        let mut central = lock(&self.classes[class].0);
        let mut emptied: Vec<u32> = Vec::new();
        for &addr in slots {
            let offset = self
                .slab_region
                .offset_of(addr)
                .expect("magazine slots lie in the slab region");
            let slab = (offset / SLAB_BYTES) as usize;
            let slot = (offset % SLAB_BYTES) / size;
            let position = self.slab_position[slab].load(Relaxed) as usize;
            let class_slab = &mut central.slabs[position];
            debug_assert_eq!(class_slab.slab as usize, slab);
            let was_full = class_slab.free_slots.free_blocks() == 0;
            if class_slab.free_slots.free(Block(slot)).is_err() {
                self.refused_frees.fetch_add(1, Relaxed);
                continue;
            }
            let now_empty = class_slab.free_slots.free_blocks() == slots_per;
            central.slots_out -= 1;
            if was_full {
                central.partial.push(position as u32);
            }
            if now_empty {
                emptied.push(slab as u32);
            }
        }
        // A slab left wholly free goes back to the region (for any class),
        // unless it is the class's only slab with room: keeping that one
        // stops a class that hovers around a slab boundary from thrashing.
        for slab in emptied {
            let position = self.slab_position[slab as usize].load(Relaxed) as usize;
            let still_empty = central
                .slabs
                .get(position)
                .is_some_and(|s| s.slab == slab && s.free_slots.free_blocks() == slots_per);
            if still_empty && central.partial.len() > 1 {
                self.remove_slab(&mut central, position);
            }
        }
    }

    /// Hand every wholly free slab of a class back to the region.
    fn give_back_empty_slabs(&self, class: usize, central: &mut ClassCentral) {
        let slots = slots_per_slab(class);
        let mut position = 0;
        while position < central.slabs.len() {
            if central.slabs[position].free_slots.free_blocks() == slots {
                self.remove_slab(central, position);
            } else {
                position += 1;
            }
        }
    }

    /// Take the (wholly free) slab at `position` from its class and put it
    /// on the region's empty list.
    fn remove_slab(&self, central: &mut ClassCentral, position: usize) {
        let removed = central.slabs.swap_remove(position);
        self.slab_class[removed.slab as usize].store(0, Relaxed);
        central.partial.retain(|&p| p as usize != position);
        let moved_from = central.slabs.len();
        if position < moved_from {
            let moved = central.slabs[position].slab;
            self.slab_position[moved as usize].store(position as u32, Relaxed);
            for p in central.partial.iter_mut() {
                if *p as usize == moved_from {
                    *p = position as u32;
                }
            }
        }
        lock(&self.slabs).empty.push(removed.slab);
    }

    /// Record a sample, then place its block in an arena with the sample's
    /// handle as the block's tag. If the profiler refuses (its handles are
    /// used up), the allocation goes ahead unsampled.
    pub(crate) fn alloc_sampled(
        &self,
        size_bytes: u64,
        site: &'static Location<'static>,
    ) -> Result<(usize, BlockKind, u64), PoolError> {
        let Ok(handle) = self.profiler.record_alloc_handle(size_bytes, Some(site)) else {
            let (addr, block_bytes) = self.alloc_large(size_bytes, TAG_UNSAMPLED)?;
            return Ok((addr, BlockKind::Large, block_bytes));
        };
        let placed = if size_bytes <= SAMPLE_PAGE_BLOCK_BYTES_MAX {
            self.sample_pages
                .take(handle, &self.reserved)
                .map(|addr| (addr, BlockKind::SamplePage, SAMPLE_PAGE_BYTES))
        } else {
            self.alloc_large(size_bytes, handle.to_tag())
                .map(|(addr, block_bytes)| (addr, BlockKind::Large, block_bytes))
        };
        placed.inspect_err(|_| {
            let undone = self.profiler.record_free_handle(handle);
            debug_assert!(undone.is_ok(), "{undone:?}");
        })
    }

    /// Place a large (or sampled) block; returns its address and length.
    pub(crate) fn alloc_large(&self, size_bytes: u64, tag: u32) -> Result<(usize, u64), PoolError> {
        let mut large = lock(&self.large);
        loop {
            match large.map.alloc(size_bytes, tag) {
                Ok(Some(block)) => {
                    let backing = large.arenas[block.arena.0 as usize]
                        .as_ref()
                        .expect("a placed block lies in a live arena");
                    let addr = backing.range.base().as_ptr() as usize + block.offset_bytes as usize;
                    return Ok((addr, block.len_bytes));
                }
                Ok(None) => self.grow_arenas(&mut large, size_bytes)?,
                Err(_) => {
                    return Err(PoolError::TooLarge {
                        requested_bytes: size_bytes,
                        max_bytes: self.arena_virtual_bytes,
                    })
                }
            }
        }
    }

    /// Make room for `size_bytes`: extend the last arena at its end (its
    /// free tail counts), or map a new one.
    fn grow_arenas(&self, large: &mut Large, size_bytes: u64) -> Result<(), PoolError> {
        let granule = large.map.config().granule_bytes;
        let rounded = size_bytes
            .checked_next_multiple_of(granule.max(PAGE_BYTES))
            .filter(|&rounded| rounded <= self.arena_virtual_bytes)
            .ok_or(PoolError::TooLarge {
                requested_bytes: size_bytes,
                max_bytes: self.arena_virtual_bytes,
            })?;
        let last = large
            .arenas
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, backing)| backing.as_ref().map(|_| ArenaId(i as u32)));
        if let Some(last) = last {
            let tail = large.map.tail_free_bytes(last);
            let additional = (rounded - tail.min(rounded)).next_multiple_of(ARENA_GROW_BYTES);
            let backing = large.arenas[last.0 as usize].as_mut().expect("live arena");
            if backing.committed_bytes + additional <= backing.range.len_bytes() {
                backing
                    .range
                    .commit(backing.committed_bytes, additional)
                    .map_err(|source| PoolError::OutOfMemory {
                        requested_bytes: additional,
                        source,
                    })?;
                backing
                    .range
                    .advise_huge_pages(backing.committed_bytes, additional);
                backing.committed_bytes += additional;
                large
                    .map
                    .extend_arena(last, additional)
                    .expect("extending a live arena by whole granules");
                self.reserved.add(additional);
                return Ok(());
            }
        }
        let existing = large.map.stats().arena_bytes;
        let len = arena_bytes_for(rounded, existing)
            .next_multiple_of(ARENA_GROW_BYTES)
            .min(self.arena_virtual_bytes);
        let range =
            VirtualRange::reserve(self.arena_virtual_bytes, SLAB_BYTES).map_err(|source| {
                PoolError::OutOfMemory {
                    requested_bytes: self.arena_virtual_bytes,
                    source,
                }
            })?;
        range
            .commit(0, len)
            .map_err(|source| PoolError::OutOfMemory {
                requested_bytes: len,
                source,
            })?;
        range.advise_huge_pages(0, len);
        let id = large
            .map
            .add_arena(len)
            .expect("a new arena of whole granules");
        let index = id.0 as usize;
        if large.arenas.len() <= index {
            large.arenas.resize_with(index + 1, || None);
        }
        large.arenas[index] = Some(ArenaBacking {
            range,
            committed_bytes: len,
        });
        self.reserved.add(len);
        Ok(())
    }

    /// Free a large block by address; returns (block bytes, tag).
    fn free_large(&self, addr: usize) -> Result<(u64, u32), PoolError> {
        let mut large = lock(&self.large);
        let (arena, offset) = large.find(addr).ok_or(PoolError::ForeignPointer { addr })?;
        match large.map.free(arena, offset) {
            Ok(freed) => Ok((freed.len_bytes, freed.tag)),
            Err(_) => Err(match large.map.block_at(arena, offset) {
                Some(info) if !info.allocated => PoolError::DoubleFree { addr },
                _ => PoolError::Misaligned {
                    addr,
                    block_bytes: 0,
                },
            }),
        }
    }
}

// -------------------------------------------------------------------- pool

/// The pool of one device.
///
/// ```
/// use strata_pool::{HybridPool, PoolConfig};
///
/// let pool = HybridPool::new(PoolConfig::default())?;
/// let mut block = pool.alloc(1000)?;
/// block.as_uninit_mut()[0].write(7);
/// let big = pool.alloc_aligned(8 << 20, 4096)?;
/// assert_eq!(big.as_ptr() as usize % 4096, 0);
/// drop(block);
/// pool.free(big)?;
/// let stats = pool.stats();
/// assert_eq!(stats.allocated.current_bytes, 0);
/// assert_eq!(stats.alloc_count, 2);
/// # Ok::<(), strata_pool::PoolError>(())
/// ```
pub struct HybridPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HybridPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridPool")
            .field("device", &self.shared.device)
            .field("id", &self.shared.id)
            .finish()
    }
}

impl HybridPool {
    /// A pool for `config.device`, reserving (not committing) its address space.
    pub fn new(config: PoolConfig) -> Result<Self, PoolError> {
        if !config.device.has_backend() {
            return Err(PoolError::UnsupportedDevice {
                device: config.device,
            });
        }
        let slab_region_bytes = config
            .slab_region_bytes
            .next_multiple_of(SLAB_BYTES)
            .max(SLAB_BYTES);
        let slab_region =
            VirtualRange::reserve(slab_region_bytes, SLAB_BYTES).map_err(|source| {
                PoolError::OutOfMemory {
                    requested_bytes: slab_region_bytes,
                    source,
                }
            })?;
        let slab_count = (slab_region_bytes / SLAB_BYTES) as usize;
        let map = ArenaMap::new(config.arena).map_err(|error| PoolError::BadConfig {
            what: format!("arena: {error}"),
        })?;
        if config.arena.granule_bytes < ALIGN_BYTES_MAX
            || config.arena.granule_bytes > ARENA_GROW_BYTES
        {
            return Err(PoolError::BadConfig {
                what: format!(
                    "arena granule {} must lie in {ALIGN_BYTES_MAX}..={ARENA_GROW_BYTES} so large blocks are aligned",
                    config.arena.granule_bytes
                ),
            });
        }
        let sample_pages = SamplePages::new(config.sample_region_bytes).map_err(|source| {
            PoolError::OutOfMemory {
                requested_bytes: config.sample_region_bytes,
                source,
            }
        })?;
        let profiler = Profiler::new(config.profile).map_err(|error| PoolError::BadConfig {
            what: format!("profile: {error}"),
        })?;
        let arena_virtual_bytes = config
            .arena_virtual_bytes
            .next_multiple_of(ARENA_GROW_BYTES)
            .max(ARENA_GROW_BYTES);
        let shared = Shared {
            id: NEXT_POOL_ID.fetch_add(1, Relaxed),
            device: config.device,
            accounting: config.accounting,
            slab_region,
            slab_class: (0..slab_count).map(|_| AtomicU8::new(0)).collect(),
            slab_position: (0..slab_count).map(|_| AtomicU32::new(0)).collect(),
            slabs: Mutex::new(SlabRegion {
                fresh_next: 0,
                empty: Vec::new(),
                released: Vec::new(),
            }),
            classes: (0..CLASS_COUNT)
                .map(|_| {
                    Padded(Mutex::new(ClassCentral {
                        slabs: Vec::new(),
                        partial: Vec::new(),
                        slots_out: 0,
                    }))
                })
                .collect(),
            large: Mutex::new(Large {
                map,
                arenas: Vec::new(),
            }),
            arena_virtual_bytes,
            central: Mutex::new(Central::new()),
            sample_pages,
            peak: PeakTracker::default(),
            requested_peak: PeakTracker::default(),
            threads: Mutex::new(Vec::new()),
            reserved: ReservedCounter::default(),
            history: profiler.history_enabled(),
            profiler,
            raw_live: Mutex::new(HashSet::new()),
            refused_frees: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        };
        Ok(HybridPool {
            shared: Arc::new(shared),
        })
    }

    /// The pool's device.
    pub fn device(&self) -> Device {
        self.shared.device
    }

    /// The sampled profiler of this pool.
    pub fn profiler(&self) -> &Profiler {
        &self.shared.profiler
    }

    #[inline(always)]
    fn with_cache<R>(&self, f: impl FnOnce(&mut ThreadCache) -> R) -> Option<R> {
        with_cache(&self.shared, f)
    }

    fn check_request(size_bytes: u64, align_bytes: u64) -> Result<(), PoolError> {
        if size_bytes == 0 {
            return Err(PoolError::ZeroSize);
        }
        if !align_bytes.is_power_of_two() || align_bytes > ALIGN_BYTES_MAX {
            return Err(PoolError::BadAlignment {
                align_bytes,
                max_bytes: ALIGN_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// The allocation path: small, unaligned requests with history off
    /// take a slot from the thread's magazine inline; everything else goes
    /// to [`HybridPool::alloc_block`].
    #[inline(always)]
    fn alloc_fast(
        &self,
        size_bytes: u64,
        align_bytes: u64,
        site: &'static Location<'static>,
    ) -> Result<(NonNull<u8>, BlockKind, u64), PoolError> {
        debug_assert!(align_bytes.is_power_of_two(), "alignment {align_bytes}");
        // `size - 1 < max` also refuses 0 (it wraps).
        if size_bytes.wrapping_sub(1) < SMALL_BYTES_MAX
            && align_bytes <= CLASS_BYTES_MIN
            && !self.shared.history
        {
            let class = class_for_size(size_bytes);
            let fast = with_cache(&self.shared, |cache| {
                cache.try_alloc_small(class, size_bytes)
            });
            if let Some(FastAlloc::Hit(addr)) = fast {
                if let Some(ptr) = NonNull::new(addr as *mut u8) {
                    return Ok((ptr, BlockKind::Small(class as u8), class_size_bytes(class)));
                }
            }
            return self.alloc_after_fast(class, size_bytes, site, fast);
        }
        self.alloc_block(size_bytes, align_bytes, site)
    }

    /// Finish an allocation the fast path could not serve.
    #[cold]
    #[inline(never)]
    fn alloc_after_fast(
        &self,
        class: usize,
        size_bytes: u64,
        site: &'static Location<'static>,
        fast: Option<FastAlloc>,
    ) -> Result<(NonNull<u8>, BlockKind, u64), PoolError> {
        let placed = match fast {
            Some(FastAlloc::Refill) => {
                self.with_cache(|cache| cache.alloc_small_slow(class, size_bytes, site, false))
            }
            Some(FastAlloc::Sample) => {
                self.with_cache(|cache| cache.alloc_small_slow(class, size_bytes, site, true))
            }
            Some(FastAlloc::Hit(_)) | None => None,
        };
        let (addr, kind, block_bytes) = match placed {
            Some(result) => result?,
            None => self.alloc_uncached(Some(class), size_bytes)?,
        };
        Ok((
            NonNull::new(addr as *mut u8).expect("pool addresses are non-null"),
            kind,
            block_bytes,
        ))
    }

    #[inline(never)]
    fn alloc_block(
        &self,
        size_bytes: u64,
        align_bytes: u64,
        site: &'static Location<'static>,
    ) -> Result<(NonNull<u8>, BlockKind, u64), PoolError> {
        Self::check_request(size_bytes, align_bytes)?;
        let class = class_for(size_bytes, align_bytes);
        let result = self.with_cache(|cache| match class {
            Some(class) => cache.alloc_small(class, size_bytes, site),
            None => cache.alloc_large(size_bytes, site),
        });
        let (addr, kind, block_bytes) = match result {
            Some(result) => result?,
            None => self.alloc_uncached(class, size_bytes)?,
        };
        self.record_history(HistoryEventKind::Alloc, addr, size_bytes);
        Ok((
            NonNull::new(addr as *mut u8).expect("pool addresses are non-null"),
            kind,
            block_bytes,
        ))
    }

    /// Allocation with no thread cache (thread teardown, reentrancy, raw API).
    fn alloc_uncached(
        &self,
        class: Option<usize>,
        size_bytes: u64,
    ) -> Result<(usize, BlockKind, u64), PoolError> {
        let shared = &*self.shared;
        let (addr, kind, index, block_bytes) = match class {
            Some(class) => {
                let mut slot = Vec::with_capacity(1);
                shared.refill(class, 1, &mut slot)?;
                (
                    slot[0],
                    BlockKind::Small(class as u8),
                    class,
                    class_size_bytes(class),
                )
            }
            None => {
                let (addr, block_bytes) = shared.alloc_large(size_bytes, TAG_UNSAMPLED)?;
                (addr, BlockKind::Large, LARGE_INDEX, block_bytes)
            }
        };
        if shared.accounting {
            shared.count_direct(index, true, block_bytes, size_bytes);
        }
        Ok((addr, kind, block_bytes))
    }

    #[inline]
    fn record_history(&self, kind: HistoryEventKind, addr: usize, size_bytes: u64) {
        let profiler = &self.shared.profiler;
        if profiler.history_enabled() {
            profiler.record_event(HistoryEvent {
                kind,
                addr,
                size_bytes,
                at_ms: profiler.now_ms(),
            });
        }
    }

    /// Give a block back: to this thread's magazine, or to its slab or arena.
    #[inline(always)]
    fn release_block(
        &self,
        addr: usize,
        kind: BlockKind,
        requested_bytes: u64,
    ) -> Result<(), PoolError> {
        if let BlockKind::Small(class) = kind {
            if !self.shared.history {
                let class = class as usize;
                let freed = with_cache(&self.shared, |cache| {
                    cache.free_small(class, addr, requested_bytes)
                });
                if freed.is_some() {
                    return Ok(());
                }
            }
        }
        self.release_block_slow(addr, kind, requested_bytes)
    }

    #[cold]
    #[inline(never)]
    fn release_block_slow(
        &self,
        addr: usize,
        kind: BlockKind,
        requested_bytes: u64,
    ) -> Result<(), PoolError> {
        self.record_history(HistoryEventKind::Free, addr, requested_bytes);
        match kind {
            BlockKind::Small(class) => {
                let class = class as usize;
                let cached =
                    self.with_cache(|cache| cache.free_small(class, addr, requested_bytes));
                if cached.is_none() {
                    self.shared.flush(class, &[addr]);
                    if self.shared.accounting {
                        self.shared.count_direct(
                            class,
                            false,
                            class_size_bytes(class),
                            requested_bytes,
                        );
                    }
                }
                Ok(())
            }
            BlockKind::Large | BlockKind::SamplePage => {
                let (block_bytes, handle) = if kind == BlockKind::SamplePage {
                    (
                        SAMPLE_PAGE_BYTES,
                        Some(self.shared.sample_pages.give(addr)?),
                    )
                } else {
                    let (block_bytes, tag) = self.shared.free_large(addr)?;
                    (block_bytes, SampleHandle::from_tag(tag))
                };
                if let Some(handle) = handle {
                    let forgotten = self.shared.profiler.record_free_handle(handle);
                    debug_assert!(
                        forgotten.is_ok(),
                        "sample {handle} at {addr:#x}: {forgotten:?}"
                    );
                }
                let counted =
                    self.with_cache(|cache| cache.count_large_free(block_bytes, requested_bytes));
                if counted.is_none() && self.shared.accounting {
                    self.shared
                        .count_direct(LARGE_INDEX, false, block_bytes, requested_bytes);
                }
                Ok(())
            }
        }
    }

    /// Allocate `size_bytes` aligned to 16.
    #[track_caller]
    pub fn alloc(&self, size_bytes: u64) -> Result<PoolBox<'_>, PoolError> {
        self.alloc_with(size_bytes, 16, None, Location::caller())
    }

    /// Allocate `size_bytes` aligned to `align_bytes` (a power of two up
    /// to [`ALIGN_BYTES_MAX`]).
    #[track_caller]
    pub fn alloc_aligned(
        &self,
        size_bytes: u64,
        align_bytes: u64,
    ) -> Result<PoolBox<'_>, PoolError> {
        self.alloc_with(size_bytes, align_bytes, None, Location::caller())
    }

    /// Allocate and charge the block's bytes to `reservation`, which is
    /// grown first (so the pool never holds more than the budget allows)
    /// and shrunk when the block is freed.
    #[track_caller]
    pub fn alloc_charged<'p>(
        &'p self,
        size_bytes: u64,
        align_bytes: u64,
        reservation: &'p Reservation,
    ) -> Result<PoolBox<'p>, PoolError> {
        self.alloc_with(
            size_bytes,
            align_bytes,
            Some(reservation),
            Location::caller(),
        )
    }

    fn alloc_with<'p>(
        &'p self,
        size_bytes: u64,
        align_bytes: u64,
        charge: Option<&'p Reservation>,
        site: &'static Location<'static>,
    ) -> Result<PoolBox<'p>, PoolError> {
        Self::check_request(size_bytes, align_bytes)?;
        // Charge what the block will take before taking it: its class, or
        // the request rounded to the arena granule.
        let charged = match charge {
            None => 0,
            Some(reservation) => {
                let charged = match class_for(size_bytes, align_bytes) {
                    Some(class) => class_size_bytes(class),
                    None => size_bytes.checked_next_multiple_of(PAGE_BYTES).ok_or(
                        PoolError::TooLarge {
                            requested_bytes: size_bytes,
                            max_bytes: self.shared.arena_virtual_bytes,
                        },
                    )?,
                };
                reservation.try_grow(charged)?;
                charged
            }
        };
        let (ptr, kind, block_bytes) = match self.alloc_fast(size_bytes, align_bytes, site) {
            Ok(placed) => placed,
            Err(error) => {
                if let Some(reservation) = charge {
                    let _ = reservation.shrink(charged);
                }
                return Err(error);
            }
        };
        if let Some(reservation) = charge {
            // A sampled block may be larger than its class: charge the difference.
            if block_bytes > charged {
                reservation.grow(block_bytes - charged);
            } else if block_bytes < charged {
                let _ = reservation.shrink(charged - block_bytes);
            }
        }
        Ok(PoolBox {
            pool: self,
            ptr,
            len_bytes: size_bytes,
            block_bytes,
            kind,
            charge,
            initialised: false,
        })
    }

    /// Free a block explicitly. A block of another pool (another device) is
    /// refused with [`PoolError::WrongDevice`]; the handle is then dropped,
    /// which frees the block through the pool it belongs to, so nothing is
    /// lost or corrupted.
    pub fn free(&self, block: PoolBox<'_>) -> Result<(), PoolError> {
        if !Arc::ptr_eq(&self.shared, &block.pool.shared) {
            let error = PoolError::WrongDevice {
                block_device: block.pool.device(),
                pool_device: self.device(),
            };
            drop(block); // freed by the pool it belongs to
            return Err(error);
        }
        let block = std::mem::ManuallyDrop::new(block);
        block.release()
    }

    /// Allocate through the raw API: the block bypasses the thread caches
    /// and is remembered, so [`HybridPool::free_raw`] detects a double free
    /// exactly. Slower than [`HybridPool::alloc`]; meant for foreign code
    /// that hands back bare pointers.
    pub fn alloc_raw(&self, size_bytes: u64, align_bytes: u64) -> Result<NonNull<u8>, PoolError> {
        Self::check_request(size_bytes, align_bytes)?;
        let (addr, _, _) = self.alloc_uncached(class_for(size_bytes, align_bytes), size_bytes)?;
        lock(&self.shared.raw_live).insert(addr);
        Ok(NonNull::new(addr as *mut u8).expect("pool addresses are non-null"))
    }

    /// Free a block of the raw API, checking everything first: a pointer
    /// this pool did not hand out, one not at a block start, a size of
    /// another class, or a block already freed is refused with its typed
    /// error and changes nothing.
    ///
    /// # Safety
    /// The memory at `ptr` must not be used after this returns `Ok`.
    pub unsafe fn free_raw(
        &self,
        ptr: NonNull<u8>,
        size_bytes: u64,
        align_bytes: u64,
    ) -> Result<(), PoolError> {
        let addr = ptr.as_ptr() as usize;
        let mut raw_live = lock(&self.shared.raw_live);
        let kind = match self.shared.slab_region.offset_of(addr) {
            Some(offset) => {
                let slab = (offset / SLAB_BYTES) as usize;
                let class = match self.shared.slab_class[slab].load(Relaxed) {
                    0 => {
                        return Err(if raw_live.contains(&addr) {
                            PoolError::DoubleFree { addr }
                        } else {
                            PoolError::ForeignPointer { addr }
                        })
                    }
                    tag => (tag - 1) as usize,
                };
                let class_bytes = class_size_bytes(class);
                if !(offset % SLAB_BYTES).is_multiple_of(class_bytes) {
                    return Err(PoolError::Misaligned {
                        addr,
                        block_bytes: class_bytes,
                    });
                }
                if class_for(size_bytes, align_bytes) != Some(class) {
                    return Err(PoolError::SizeMismatch {
                        addr,
                        block_bytes: class_bytes,
                        given_bytes: size_bytes,
                    });
                }
                BlockKind::Small(class as u8)
            }
            None => {
                let large = lock(&self.shared.large);
                let (arena, offset) = large.find(addr).ok_or(PoolError::ForeignPointer { addr })?;
                match large.map.block_at(arena, offset) {
                    Some(info) if info.allocated => BlockKind::Large,
                    Some(_) => return Err(PoolError::DoubleFree { addr }),
                    None => {
                        return Err(PoolError::Misaligned {
                            addr,
                            block_bytes: 0,
                        })
                    }
                }
            }
        };
        if !raw_live.remove(&addr) {
            return Err(PoolError::DoubleFree { addr });
        }
        drop(raw_live);
        match kind {
            BlockKind::Small(class) => {
                let class = class as usize;
                self.shared.flush(class, &[addr]);
                if self.shared.accounting {
                    self.shared
                        .count_direct(class, false, class_size_bytes(class), size_bytes);
                }
            }
            BlockKind::Large => {
                let (block_bytes, _) = self.shared.free_large(addr)?;
                if self.shared.accounting {
                    self.shared
                        .count_direct(LARGE_INDEX, false, block_bytes, size_bytes);
                }
            }
            BlockKind::SamplePage => unreachable!("the raw API never hands out sample pages"),
        }
        Ok(())
    }

    /// Whether `ptr` lies in memory of this pool.
    pub fn owns(&self, ptr: *const u8) -> bool {
        let addr = ptr as usize;
        self.shared.slab_region.offset_of(addr).is_some()
            || self.shared.sample_pages.contains(addr)
            || lock(&self.shared.large).find(addr).is_some()
    }

    /// Free by address (the allocator interface): the block's kind comes
    /// from where it lies. A foreign or already-free pointer is refused and
    /// counted in [`PoolStats::refused_frees`]. A small block goes to this
    /// thread's magazine inline.
    #[inline(always)]
    fn free_addr(&self, addr: usize, requested_bytes: u64) {
        if let Some(offset) = self.shared.slab_region.offset_of(addr) {
            let tag = self.shared.slab_class[(offset / SLAB_BYTES) as usize].load(Relaxed);
            if tag != 0 && !self.shared.history {
                let class = (tag - 1) as usize;
                let freed = with_cache(&self.shared, |cache| {
                    cache.free_small(class, addr, requested_bytes)
                });
                if freed.is_some() {
                    return;
                }
            }
        }
        self.free_addr_slow(addr, requested_bytes);
    }

    #[cold]
    #[inline(never)]
    fn free_addr_slow(&self, addr: usize, requested_bytes: u64) {
        let result = match self.shared.kind_of(addr) {
            Some((kind, _)) => self.release_block(addr, kind, requested_bytes),
            None => Err(PoolError::ForeignPointer { addr }),
        };
        if result.is_err() {
            self.shared.refused_frees.fetch_add(1, Relaxed);
        }
    }

    /// Return this thread's cached slots to the slabs, then give empty
    /// slabs and arenas back to the system and drop the pages of free
    /// arena space. Other threads' caches are untouched (they flush as
    /// they run and when they exit).
    pub fn release_unused(&self) -> ReleaseReport {
        self.with_cache(|cache| cache.flush_all());
        let shared = &*self.shared;
        let mut report = ReleaseReport::default();
        shared.profiler.shrink();
        for class in 0..CLASS_COUNT {
            let mut central = lock(&shared.classes[class].0);
            shared.give_back_empty_slabs(class, &mut central);
        }
        {
            let mut region = lock(&shared.slabs);
            let empty = std::mem::take(&mut region.empty);
            for slab in empty {
                let offset = slab as u64 * SLAB_BYTES;
                report.resident_bytes_returned +=
                    shared.slab_region.resident_bytes(offset, SLAB_BYTES);
                shared.slab_region.decommit(offset, SLAB_BYTES);
                shared.reserved.remove(SLAB_BYTES);
                report.reserved_bytes_returned += SLAB_BYTES;
                report.slabs_released += 1;
                region.released.push(slab);
            }
        }
        report.resident_bytes_returned += shared.sample_pages.purge_free();
        let mut large = lock(&shared.large);
        for id in large.map.empty_arenas() {
            let len = large
                .map
                .remove_arena(id)
                .expect("an empty arena can be removed");
            let backing = large.arenas[id.0 as usize].take().expect("live arena");
            report.resident_bytes_returned +=
                backing.range.resident_bytes(0, backing.committed_bytes);
            debug_assert_eq!(len, backing.committed_bytes);
            shared.reserved.remove(backing.committed_bytes);
            report.reserved_bytes_returned += backing.committed_bytes;
            report.arenas_released += 1;
        }
        let large = &*large;
        for (index, backing) in large.arenas.iter().enumerate() {
            let Some(backing) = backing else { continue };
            for (offset, len) in large.map.free_blocks_in(ArenaId(index as u32)) {
                let start = offset.next_multiple_of(PAGE_BYTES);
                let end = (offset + len) / PAGE_BYTES * PAGE_BYTES;
                if end > start {
                    report.resident_bytes_returned +=
                        backing.range.resident_bytes(start, end - start);
                    backing.range.purge(start, end - start);
                }
            }
        }
        report
    }

    /// A snapshot of every figure; exact for current values and totals when
    /// no other thread is allocating (see [`PoolStats`]).
    pub fn stats(&self) -> PoolStats {
        let shared = &*self.shared;
        let mut classes = Vec::with_capacity(CLASS_COUNT);
        let mut slots_out_bytes = 0;
        let mut slab_free_bytes = 0;
        let mut slabs = 0;
        let mut inactive_split_bytes = 0;
        for class in 0..CLASS_COUNT {
            let central = lock(&shared.classes[class].0);
            let size = class_size_bytes(class);
            slots_out_bytes += central.slots_out * size;
            for slab in &central.slabs {
                let free = slab.free_slots.free_blocks() * size;
                slab_free_bytes += free;
                if slab.free_slots.free_blocks() < slots_per_slab(class) {
                    inactive_split_bytes += free;
                }
            }
            slabs += central.slabs.len() as u64;
        }
        let empty_slab_bytes = lock(&shared.slabs).empty.len() as u64 * SLAB_BYTES;
        let (arena_stats, large_allocated) = {
            let large = lock(&shared.large);
            let stats = large.map.stats();
            (stats, stats.allocated_bytes)
        };
        let (snapshot, allocated_peak) = {
            let central = lock(&shared.central);
            let threads = lock(&shared.threads);
            (
                central.snapshot(threads.iter().map(|record| &**record)),
                shared
                    .peak
                    .peak_with(threads.iter().map(|record| &**record)),
            )
        };
        let totals = snapshot.totals;
        let requested_peak = snapshot
            .requested_peak_bytes
            .max(shared.requested_peak.folded_peak());
        let cached_bytes = snapshot.cached_bytes;
        let class_stats = |index: usize, class_bytes: u64| ClassStats {
            class_bytes,
            allocated: totals[index].stat(true),
            requested: totals[index].stat(false),
            alloc_count: totals[index].fields[ALLOC_COUNT],
            free_count: totals[index].fields[FREE_COUNT],
        };
        for class in 0..CLASS_COUNT {
            classes.push(class_stats(class, class_size_bytes(class)));
        }
        let large = class_stats(LARGE_INDEX, 0);
        let sum = |f: &dyn Fn(&ClassStats) -> StatBytes| {
            let mut total = StatBytes::default();
            for c in classes.iter().chain(std::iter::once(&large)) {
                let s = f(c);
                total.current_bytes += s.current_bytes;
                total.allocated_total_bytes += s.allocated_total_bytes;
                total.freed_total_bytes += s.freed_total_bytes;
            }
            total
        };
        let mut allocated = sum(&|c| c.allocated);
        allocated.peak_bytes = allocated_peak.max(allocated.current_bytes);
        let mut requested = sum(&|c| c.requested);
        requested.peak_bytes = requested_peak.max(requested.current_bytes);
        let (sample_committed_bytes, sample_free_bytes) = shared.sample_pages.figures();
        let sample_live_bytes = sample_committed_bytes - sample_free_bytes;
        let free_bytes =
            slab_free_bytes + empty_slab_bytes + arena_stats.free_bytes + sample_free_bytes;
        PoolStats {
            device: shared.device,
            accounting: shared.accounting,
            allocated,
            requested,
            reserved: shared.reserved.stat(),
            active_bytes: slots_out_bytes + large_allocated + sample_live_bytes,
            cached_bytes,
            inactive_split_bytes: inactive_split_bytes + arena_stats.inactive_split_bytes,
            free_bytes,
            largest_free_bytes: arena_stats.largest_free_bytes,
            fragmentation: arena_stats.fragmentation,
            alloc_count: classes
                .iter()
                .chain(std::iter::once(&large))
                .map(|c| c.alloc_count)
                .sum(),
            free_count: classes
                .iter()
                .chain(std::iter::once(&large))
                .map(|c| c.free_count)
                .sum(),
            slabs,
            arenas: arena_stats.arenas,
            classes,
            large,
            refused_frees: shared.refused_frees.load(Relaxed),
        }
    }

    /// Check every structural invariant, and the accounting equations,
    /// which hold whenever no other thread is in the middle of an
    /// operation on this pool. O(slabs + slots + arena blocks).
    ///
    /// # Panics
    /// On any violation, with the values.
    pub fn check_invariants(&self) {
        let shared = &*self.shared;
        let mut owned = vec![false; shared.slab_class.len()];
        let mut slab_bytes = 0;
        for class in 0..CLASS_COUNT {
            let central = lock(&shared.classes[class].0);
            let slots = slots_per_slab(class);
            let mut out = 0;
            for (position, slab) in central.slabs.iter().enumerate() {
                slab.free_slots.check_invariants();
                assert_eq!(
                    slab.free_slots.capacity_blocks(),
                    slots,
                    "class {class} slab {}",
                    slab.slab
                );
                assert_eq!(
                    shared.slab_class[slab.slab as usize].load(Relaxed) as usize,
                    class + 1,
                    "slab {} class table",
                    slab.slab
                );
                assert_eq!(
                    shared.slab_position[slab.slab as usize].load(Relaxed) as usize,
                    position,
                    "slab {} position",
                    slab.slab
                );
                assert!(!owned[slab.slab as usize], "slab {} owned twice", slab.slab);
                owned[slab.slab as usize] = true;
                out += slab.free_slots.allocated_blocks();
                let in_partial = central.partial.contains(&(position as u32));
                assert_eq!(
                    in_partial,
                    slab.free_slots.free_blocks() > 0,
                    "class {class} slab {} partial membership (free {})",
                    slab.slab,
                    slab.free_slots.free_blocks()
                );
                slab_bytes += SLAB_BYTES;
            }
            let mut partial = central.partial.clone();
            partial.sort_unstable();
            partial.dedup();
            assert_eq!(
                partial.len(),
                central.partial.len(),
                "class {class} partial duplicates"
            );
            assert_eq!(out, central.slots_out, "class {class} slots out");
        }
        let region = lock(&shared.slabs);
        for &slab in region.empty.iter() {
            assert!(!owned[slab as usize], "empty slab {slab} owned by a class");
            assert_eq!(
                shared.slab_class[slab as usize].load(Relaxed),
                0,
                "empty slab {slab} has a class"
            );
            owned[slab as usize] = true;
            slab_bytes += SLAB_BYTES;
        }
        for &slab in region.released.iter() {
            assert!(!owned[slab as usize], "released slab {slab} also in use");
            assert!(
                slab < region.fresh_next,
                "released slab {slab} never committed"
            );
        }
        drop(region);
        let large = lock(&shared.large);
        large.map.check_invariants();
        let mut arena_bytes = 0;
        for (index, backing) in large.arenas.iter().enumerate() {
            let len = large.map.arena_len(ArenaId(index as u32));
            match backing {
                Some(backing) => {
                    assert_eq!(len, Some(backing.committed_bytes), "arena {index} length");
                    arena_bytes += backing.committed_bytes;
                }
                None => assert_eq!(len, None, "removed arena {index} still mapped"),
            }
        }
        drop(large);
        let sample_bytes = shared.sample_pages.check_invariants();
        let reserved = shared.reserved.current.load(Relaxed);
        assert_eq!(
            reserved,
            slab_bytes + arena_bytes + sample_bytes,
            "reserved {reserved} != slabs {slab_bytes} + arenas {arena_bytes} + sample pages {sample_bytes}"
        );
        if shared.accounting {
            let stats = self.stats();
            assert_eq!(
                stats.active_bytes,
                stats.allocated.current_bytes + stats.cached_bytes,
                "active {} != allocated {} + cached {}",
                stats.active_bytes,
                stats.allocated.current_bytes,
                stats.cached_bytes
            );
            assert!(
                stats.reserved.current_bytes >= stats.active_bytes + stats.inactive_split_bytes,
                "reserved {} < active {} + inactive split {}",
                stats.reserved.current_bytes,
                stats.active_bytes,
                stats.inactive_split_bytes
            );
            assert!(stats.allocated.peak_bytes >= stats.allocated.current_bytes);
        }
    }
}

impl Drop for HybridPool {
    fn drop(&mut self) {
        self.shared.closed.store(true, Relaxed);
        // Drop this thread's cache now; other threads drop theirs when they
        // next look up a cache or exit. Shared memory lives until the last goes.
        drop_cache(self.shared.id);
    }
}

// ------------------------------------------------------------------ handle

/// A block of a [`HybridPool`], freed on drop (or by [`HybridPool::free`]).
///
/// Its memory is not initialised: write through [`PoolBox::as_uninit_mut`],
/// or call [`PoolBox::zeroed`] to clear it and get a byte slice.
pub struct PoolBox<'p> {
    pool: &'p HybridPool,
    ptr: NonNull<u8>,
    len_bytes: u64,
    block_bytes: u64,
    kind: BlockKind,
    charge: Option<&'p Reservation>,
    /// Whether every requested byte has been written (by
    /// [`PoolBox::zeroed`] or [`PoolBox::as_bytes_mut`]).
    initialised: bool,
}

// SAFETY: a PoolBox owns its block exclusively, like a Box<[u8]>; the pool
// it frees into is Sync.
unsafe impl Send for PoolBox<'_> {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for PoolBox<'_> {}

impl PoolBox<'_> {
    /// Start of the block.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Start of the block, writable.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes asked for.
    pub fn len(&self) -> usize {
        self.len_bytes as usize
    }

    /// Never true: the pool refuses zero-size requests.
    pub fn is_empty(&self) -> bool {
        self.len_bytes == 0
    }

    /// Bytes the block actually takes (its class or rounded arena length).
    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// The requested bytes as possibly-uninitialised memory.
    pub fn as_uninit_mut(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        // SAFETY: the block holds at least `len_bytes` bytes owned by this
        // handle for its lifetime; MaybeUninit needs no initialisation.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.len_bytes as usize) }
    }

    /// Fill the block with zeros and view it as initialised bytes.
    pub fn zeroed(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_uninit_mut`; every byte is written before the
        // slice is formed.
        unsafe {
            std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.len_bytes as usize);
        }
        self.initialised = true;
        // SAFETY: every byte was just written.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len_bytes as usize) }
    }

    /// The block as writable bytes: zeroed on the first call (so a block
    /// never shows an earlier owner's bytes), as last written afterwards.
    ///
    /// ```
    /// use strata_pool::{HybridPool, PoolConfig};
    ///
    /// let pool = HybridPool::new(PoolConfig::default()).unwrap();
    /// let mut block = pool.alloc(64).unwrap();
    /// assert!(block.as_bytes().is_none());
    /// block.as_bytes_mut()[0] = 7;
    /// assert_eq!(block.as_bytes_mut()[0], 7); // not zeroed again
    /// assert_eq!(block.as_bytes().unwrap()[..2], [7, 0]);
    /// ```
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        if self.initialised {
            // SAFETY: the block holds `len_bytes` bytes owned by this handle,
            // all written before (`initialised`).
            unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len_bytes as usize) }
        } else {
            self.zeroed()
        }
    }

    /// The block as bytes, once initialised ([`PoolBox::as_bytes_mut`] or
    /// [`PoolBox::zeroed`]); `None` before.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        // SAFETY: as in `as_bytes_mut`; shared access only reads.
        self.initialised.then(|| unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr(), self.len_bytes as usize)
        })
    }

    /// The device of the pool that owns the block.
    pub fn device(&self) -> Device {
        self.pool.device()
    }

    fn release(&self) -> Result<(), PoolError> {
        let result = self
            .pool
            .release_block(self.ptr.as_ptr() as usize, self.kind, self.len_bytes);
        if let Some(reservation) = self.charge {
            let _ = reservation.shrink(self.block_bytes);
        }
        result
    }
}

impl Drop for PoolBox<'_> {
    fn drop(&mut self) {
        if self.release().is_err() {
            self.pool.shared.refused_frees.fetch_add(1, Relaxed);
        }
    }
}

impl std::fmt::Debug for PoolBox<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBox")
            .field("ptr", &self.ptr)
            .field("len_bytes", &self.len_bytes)
            .field("block_bytes", &self.block_bytes)
            .finish()
    }
}

// -------------------------------------------------------- allocator-api2

// SAFETY: blocks are valid for their layout until deallocated, never
// handed out twice, and aligned as asked (alignment above the maximum is
// refused); a zero-size request gets a dangling, aligned pointer that
// `deallocate` ignores.
unsafe impl allocator_api2::alloc::Allocator for &HybridPool {
    #[track_caller]
    fn allocate(
        &self,
        layout: std::alloc::Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if layout.size() == 0 {
            let dangling = NonNull::new(layout.align() as *mut u8).expect("alignment is nonzero");
            return Ok(NonNull::slice_from_raw_parts(dangling, 0));
        }
        match self.alloc_fast(
            layout.size() as u64,
            layout.align() as u64,
            Location::caller(),
        ) {
            Ok((ptr, _, _)) => Ok(NonNull::slice_from_raw_parts(ptr, layout.size())),
            Err(_) => Err(allocator_api2::alloc::AllocError),
        }
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: std::alloc::Layout) {
        if layout.size() == 0 {
            return;
        }
        self.free_addr(ptr.as_ptr() as usize, layout.size() as u64);
    }
}

/// One pool per device, created on first use.
///
/// ```
/// use strata_pool::{Device, DevicePools, PoolError};
///
/// let pools = DevicePools::new();
/// let cpu = pools.get(Device::Cpu)?;
/// assert_eq!(cpu.device(), Device::Cpu);
/// assert!(matches!(pools.get(Device::Cuda(0)), Err(PoolError::UnsupportedDevice { .. })));
/// # Ok::<(), PoolError>(())
/// ```
#[derive(Debug, Default)]
pub struct DevicePools {
    pools: Mutex<Vec<Arc<HybridPool>>>,
}

impl DevicePools {
    /// No pools yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pool of `device`, created with default settings on first use.
    pub fn get(&self, device: Device) -> Result<Arc<HybridPool>, PoolError> {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.iter().find(|p| p.device() == device) {
            return Ok(Arc::clone(pool));
        }
        let pool = Arc::new(HybridPool::new(PoolConfig {
            device,
            ..PoolConfig::default()
        })?);
        pools.push(Arc::clone(&pool));
        Ok(pool)
    }

    /// Free a raw block through the pool of `device`, refusing a block
    /// that belongs to another device's pool with [`PoolError::WrongDevice`].
    ///
    /// # Safety
    /// As [`HybridPool::free_raw`].
    pub unsafe fn free_raw(
        &self,
        device: Device,
        ptr: NonNull<u8>,
        size_bytes: u64,
        align_bytes: u64,
    ) -> Result<(), PoolError> {
        let pool = self.get(device)?;
        if !pool.owns(ptr.as_ptr()) {
            let pools = lock(&self.pools);
            if let Some(owner) = pools.iter().find(|p| p.owns(ptr.as_ptr())) {
                return Err(PoolError::WrongDevice {
                    block_device: owner.device(),
                    pool_device: device,
                });
            }
        }
        // SAFETY: the caller's contract is the same as free_raw's.
        unsafe { pool.free_raw(ptr, size_bytes, align_bytes) }
    }
}
