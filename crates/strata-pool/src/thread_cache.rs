//! Per-thread caches of the hybrid pool: a magazine of free slots per size
//! class, the thread's counters, and its sampler.
//!
//! The common allocation pops a slot from the thread's own magazine and
//! the common free pushes one; both touch only memory this thread owns.
//! Slots move to and from the slabs half a magazine at a time, under the
//! class's lock. A thread keeps one cache per pool it uses; the most
//! recently used one sits in a fixed place so finding it is one compare.

use std::cell::RefCell;
use std::panic::Location;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::accounting::{
    bump, ThreadRecord, ALLOC_BYTES, ALLOC_COUNT, COUNTER_INDICES, COUNTER_MERGE_BYTES,
    COUNTER_MERGE_OPS, FREE_BYTES, FREE_COUNT, LARGE_INDEX, REQUESTED_ALLOC_BYTES,
    REQUESTED_FREE_BYTES,
};
use crate::hybrid::{lock, BlockKind, Shared, TAG_UNSAMPLED};
use crate::sampling::{ByteSampler, ProfileLevel};
use crate::size_class::{class_size_bytes, CLASS_COUNT};
use crate::PoolError;

/// Bytes a per-thread magazine of one class holds at most (but see
/// [`MAGAZINE_SLOTS_MIN`]).
pub const MAGAZINE_BYTES_MAX: u64 = 256 << 10;
/// Slots a magazine holds at least, whatever the class size.
pub const MAGAZINE_SLOTS_MIN: usize = 2;
/// Slots a magazine holds at most.
pub const MAGAZINE_SLOTS_MAX: usize = 64;

const _: () = assert!(MAGAZINE_SLOTS_MIN >= 2 && MAGAZINE_SLOTS_MIN <= MAGAZINE_SLOTS_MAX);
const _: () = assert!(MAGAZINE_SLOTS_MAX <= u32::MAX as usize);

/// What an allocation produced: address, kind, block bytes.
pub(crate) type Placed = (usize, BlockKind, u64);

/// The outcome of the fast path of a small allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FastAlloc {
    /// A slot from the magazine, already counted.
    Hit(usize),
    /// The magazine is empty.
    Refill,
    /// The sampler picked this allocation.
    Sample,
}

/// One thread's cache for one pool.
pub(crate) struct ThreadCache {
    pub(crate) pool_id: u64,
    shared: Arc<Shared>,
    record: Arc<ThreadRecord>,
    slots: Box<[[usize; MAGAZINE_SLOTS_MAX]; CLASS_COUNT]>,
    capacity: [u32; CLASS_COUNT],
    sampler: ByteSampler,
    profiling: bool,
    accounting: bool,
    /// Net change of allocated bytes since the last fold (its highest
    /// point is kept in the record, where snapshots see it).
    net_allocated_bytes: i64,
    /// Net requested bytes this thread has merged so far, and its whole
    /// net (merged and not) at the last fold: requested bytes are folded
    /// into their own peak tracker at the allocated folds, with no
    /// per-operation cost.
    requested_merged_bytes: i64,
    requested_at_fold_bytes: i64,
}

impl ThreadCache {
    fn new(shared: Arc<Shared>) -> Self {
        let record = Arc::new(ThreadRecord::new());
        lock(&shared.threads).push(Arc::clone(&record));
        let capacity = std::array::from_fn(|class| {
            ((MAGAZINE_BYTES_MAX / class_size_bytes(class)) as usize)
                .clamp(MAGAZINE_SLOTS_MIN, MAGAZINE_SLOTS_MAX) as u32
        });
        ThreadCache {
            pool_id: shared.id,
            sampler: shared.profiler.thread_sampler(),
            profiling: shared.profiler.level() != ProfileLevel::Off,
            accounting: shared.accounting,
            shared,
            record,
            slots: Box::new([[0; MAGAZINE_SLOTS_MAX]; CLASS_COUNT]),
            capacity,
            net_allocated_bytes: 0,
            requested_merged_bytes: 0,
            requested_at_fold_bytes: 0,
        }
    }

    /// Count one operation. A class's counters merge into the pool after
    /// every [`COUNTER_MERGE_OPS`] allocations of that class (checked on the
    /// count just written, so no separate countdown is kept); the net of
    /// allocated bytes folds into the pool's peak tracker when it passes
    /// [`COUNTER_MERGE_BYTES`] either way. Four stores per allocation and
    /// three per free, all to lines the operation touches anyway.
    #[inline(always)]
    fn count(&mut self, index: usize, alloc: bool, block_bytes: u64, requested_bytes: u64) {
        let record = &*self.record;
        let cells = &record.cells[index].counts;
        if alloc {
            let allocs = cells[ALLOC_COUNT].load(Relaxed) + 1;
            cells[ALLOC_COUNT].store(allocs, Relaxed);
            bump(&cells[REQUESTED_ALLOC_BYTES], requested_bytes);
            if index == LARGE_INDEX {
                bump(&cells[ALLOC_BYTES], block_bytes);
            }
            let net = self.net_allocated_bytes + block_bytes as i64;
            self.net_allocated_bytes = net;
            // Branch-free: the high moves by a conditional move and is always
            // published (a branch on a random walk mispredicts often).
            let high = record.pending_high_bytes.load(Relaxed).max(net);
            record.pending_high_bytes.store(high, Relaxed);
            if net >= COUNTER_MERGE_BYTES as i64 {
                self.fold();
            }
            if allocs & (COUNTER_MERGE_OPS - 1) == 0 {
                self.merge(index);
            }
        } else {
            bump(&cells[FREE_COUNT], 1);
            bump(&cells[REQUESTED_FREE_BYTES], requested_bytes);
            if index == LARGE_INDEX {
                bump(&cells[FREE_BYTES], block_bytes);
            }
            self.net_allocated_bytes -= block_bytes as i64;
            if self.net_allocated_bytes <= -(COUNTER_MERGE_BYTES as i64) {
                self.fold();
            }
        }
    }

    /// Fold this thread's net of allocated bytes into the peak tracker.
    #[cold]
    #[inline(never)]
    fn fold(&mut self) {
        let high = self.record.pending_high_bytes.load(Relaxed);
        self.shared.peak.fold(self.net_allocated_bytes, high);
        self.net_allocated_bytes = 0;
        self.record.pending_high_bytes.store(0, Relaxed);
        let requested = self.requested_merged_bytes + self.record.unmerged_requested_net_bytes();
        let delta = requested - self.requested_at_fold_bytes;
        self.shared.requested_peak.fold(delta, delta.max(0));
        self.requested_at_fold_bytes = requested;
    }

    /// Merge one class's counters into the pool.
    #[cold]
    #[inline(never)]
    fn merge(&mut self, index: usize) {
        self.requested_merged_bytes +=
            lock(&self.shared.central).merge(&self.record, index..index + 1);
    }

    /// Merge every class's counters into the pool.
    fn merge_all(&mut self) {
        self.requested_merged_bytes +=
            lock(&self.shared.central).merge(&self.record, 0..COUNTER_INDICES);
    }

    /// The common case of a small allocation: a slot from this thread's
    /// magazine. Anything else (an empty magazine, a sample) is left to
    /// [`ThreadCache::alloc_small_slow`], so this stays a few instructions.
    #[inline(always)]
    pub(crate) fn try_alloc_small(&mut self, class: usize, size_bytes: u64) -> FastAlloc {
        if self.profiling && self.sampler.sample(size_bytes) {
            return FastAlloc::Sample;
        }
        let len_cell = &self.record.cells[class].magazine_len;
        let len = len_cell.load(Relaxed) as usize;
        if len == 0 {
            return FastAlloc::Refill;
        }
        len_cell.store(len as u32 - 1, Relaxed);
        let addr = self.slots[class][len - 1];
        if self.accounting {
            self.count(class, true, class_size_bytes(class), size_bytes);
        }
        FastAlloc::Hit(addr)
    }

    /// Finish a small allocation that [`ThreadCache::try_alloc_small`]
    /// could not: refill the magazine, or place a sampled block.
    #[cold]
    #[inline(never)]
    pub(crate) fn alloc_small_slow(
        &mut self,
        class: usize,
        size_bytes: u64,
        site: &'static Location<'static>,
        sample: bool,
    ) -> Result<Placed, PoolError> {
        if sample {
            return self.alloc_sampled(size_bytes, site);
        }
        let addr = self.refill(class)?;
        let class_bytes = class_size_bytes(class);
        if self.accounting {
            self.count(class, true, class_bytes, size_bytes);
        }
        Ok((addr, BlockKind::Small(class as u8), class_bytes))
    }

    /// Allocate a small block of `class`.
    #[inline]
    pub(crate) fn alloc_small(
        &mut self,
        class: usize,
        size_bytes: u64,
        site: &'static Location<'static>,
    ) -> Result<Placed, PoolError> {
        match self.try_alloc_small(class, size_bytes) {
            FastAlloc::Hit(addr) => {
                Ok((addr, BlockKind::Small(class as u8), class_size_bytes(class)))
            }
            FastAlloc::Refill => self.alloc_small_slow(class, size_bytes, site, false),
            FastAlloc::Sample => self.alloc_small_slow(class, size_bytes, site, true),
        }
    }

    /// Refill an empty magazine to about half its capacity and take a slot.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, class: usize) -> Result<usize, PoolError> {
        let want = self.capacity[class] as usize / 2 + 1;
        let mut taken = Vec::with_capacity(want);
        self.shared.refill(class, want, &mut taken)?;
        // Lowest addresses on top, so consecutive allocations are adjacent.
        taken.sort_unstable_by(|a, b| b.cmp(a));
        let addr = taken.pop().expect("refill returns at least one slot");
        self.slots[class][..taken.len()].copy_from_slice(&taken);
        self.record.cells[class]
            .magazine_len
            .store(taken.len() as u32, Relaxed);
        Ok(addr)
    }

    /// Free a small block of `class` into this thread's magazine.
    #[inline(always)]
    pub(crate) fn free_small(&mut self, class: usize, addr: usize, requested_bytes: u64) {
        let mut len = self.record.cells[class].magazine_len.load(Relaxed);
        if len >= self.capacity[class] {
            len = self.flush_half(class);
        }
        self.slots[class][len as usize] = addr;
        self.record.cells[class]
            .magazine_len
            .store(len + 1, Relaxed);
        if self.accounting {
            self.count(class, false, class_size_bytes(class), requested_bytes);
        }
    }

    /// Return the older half of a full magazine to the slabs; the new length.
    #[cold]
    #[inline(never)]
    fn flush_half(&mut self, class: usize) -> u32 {
        let len = self.record.cells[class].magazine_len.load(Relaxed) as usize;
        let keep = len / 2;
        // The bottom of the stack has waited longest: return it.
        self.shared.flush(class, &self.slots[class][..len - keep]);
        self.slots[class].copy_within(len - keep..len, 0);
        self.record.cells[class]
            .magazine_len
            .store(keep as u32, Relaxed);
        keep as u32
    }

    /// Return every parked slot to the slabs.
    pub(crate) fn flush_all(&mut self) {
        for class in 0..CLASS_COUNT {
            let len = self.record.cells[class].magazine_len.load(Relaxed) as usize;
            if len > 0 {
                self.shared.flush(class, &self.slots[class][..len]);
                self.record.cells[class].magazine_len.store(0, Relaxed);
            }
        }
    }

    /// Count a large free (the block is already back in its arena).
    #[inline]
    pub(crate) fn count_large_free(&mut self, block_bytes: u64, requested_bytes: u64) {
        if self.accounting {
            self.count(LARGE_INDEX, false, block_bytes, requested_bytes);
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_sampled(
        &mut self,
        size_bytes: u64,
        site: &'static Location<'static>,
    ) -> Result<Placed, PoolError> {
        let (addr, kind, block_bytes) = self.shared.alloc_sampled(size_bytes, site)?;
        if self.accounting {
            self.count(LARGE_INDEX, true, block_bytes, size_bytes);
        }
        Ok((addr, kind, block_bytes))
    }

    /// Allocate a block too large (or too aligned) for a size class.
    pub(crate) fn alloc_large(
        &mut self,
        size_bytes: u64,
        site: &'static Location<'static>,
    ) -> Result<Placed, PoolError> {
        if self.profiling && self.sampler.sample(size_bytes) {
            return self.alloc_sampled(size_bytes, site);
        }
        let (addr, block_bytes) = self.shared.alloc_large(size_bytes, TAG_UNSAMPLED)?;
        if self.accounting {
            self.count(LARGE_INDEX, true, block_bytes, size_bytes);
        }
        Ok((addr, BlockKind::Large, block_bytes))
    }
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        self.flush_all();
        if self.accounting {
            self.merge_all();
            self.fold();
        }
        let mut threads = lock(&self.shared.threads);
        threads.retain(|record| !Arc::ptr_eq(record, &self.record));
    }
}

/// A thread's caches: the most recently used pool's in `primary`.
struct ThreadCaches {
    primary: Option<ThreadCache>,
    others: Vec<ThreadCache>,
}

thread_local! {
    static THREAD_CACHES: RefCell<ThreadCaches> = const {
        RefCell::new(ThreadCaches { primary: None, others: Vec::new() })
    };
}

/// Run `f` on this thread's cache for the pool `shared`; `None` while the
/// thread's caches are torn down or already borrowed (reentrancy).
#[inline(always)]
pub(crate) fn with_cache<R>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut ThreadCache) -> R,
) -> Option<R> {
    THREAD_CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let cache = match caches.primary.as_mut() {
                Some(cache) if cache.pool_id == shared.id => cache,
                _ => find_cache(&mut caches, shared),
            };
            Some(f(cache))
        })
        .ok()
        .flatten()
}

/// Make the cache of `shared` this thread's primary one, creating it if
/// needed and dropping caches of pools that are gone.
#[cold]
#[inline(never)]
fn find_cache<'c>(caches: &'c mut ThreadCaches, shared: &Arc<Shared>) -> &'c mut ThreadCache {
    caches.others.retain(|c| !c.shared.closed.load(Relaxed));
    if caches
        .primary
        .as_ref()
        .is_some_and(|c| c.shared.closed.load(Relaxed))
    {
        caches.primary = None;
    }
    let found = caches.others.iter().position(|c| c.pool_id == shared.id);
    let cache = match found {
        Some(index) => caches.others.swap_remove(index),
        None => ThreadCache::new(Arc::clone(shared)),
    };
    if let Some(previous) = caches.primary.replace(cache) {
        caches.others.push(previous);
    }
    caches.primary.as_mut().expect("just set")
}

/// Drop this thread's cache of pool `pool_id` (the pool is going away).
pub(crate) fn drop_cache(pool_id: u64) {
    let _ = THREAD_CACHES.try_with(|caches| {
        if let Ok(mut caches) = caches.try_borrow_mut() {
            caches.others.retain(|c| c.pool_id != pool_id);
            if caches
                .primary
                .as_ref()
                .is_some_and(|c| c.pool_id == pool_id)
            {
                caches.primary = None;
            }
        }
    });
}
