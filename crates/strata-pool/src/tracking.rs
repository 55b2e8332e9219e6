//! `TrackingAllocator<A>`: the pool's accounting and sampled profile for a
//! whole program, wrapped around any global allocator.
//!
//! ```
//! use std::alloc::System;
//! use strata_pool::TrackingAllocator;
//!
//! // In a program: #[global_allocator]
//! static TRACKED: TrackingAllocator<System> = TrackingAllocator::new(System);
//!
//! let layout = std::alloc::Layout::from_size_align(1000, 8).unwrap();
//! // SAFETY: the layout is non-zero; the block is freed with the same layout.
//! unsafe {
//!     use std::alloc::GlobalAlloc;
//!     let p = TRACKED.alloc(layout);
//!     assert!(!p.is_null());
//!     assert_eq!(TRACKED.stats().allocated.current_bytes, 1000);
//!     TRACKED.dealloc(p, layout);
//! }
//! assert_eq!(TRACKED.stats().allocated.current_bytes, 0);
//! ```
//!
//! How it stays cheap:
//!
//! - Counters are kept per thread in a slot of a fixed table
//!   ([`TRACKED_THREADS_MAX`] slots, no allocation), written with plain
//!   relaxed stores by their own thread, and folded into the tracker every
//!   [`COUNTER_MERGE_OPS`] operations or [`COUNTER_MERGE_BYTES`] of net
//!   change. [`TrackingAllocator::stats`] sums the merged figures and every
//!   slot, so current values are exact when the program is quiescent;
//!   peaks are as described on [`PoolStats`](crate::PoolStats).
//! - Sampling is a countdown per thread ([`ByteSampler`]). A sampled block's
//!   address goes into the profiler's table and into a small counting
//!   filter ([`SAMPLED_FILTER_BUCKETS`] counters); a free looks at one
//!   counter and only consults the table when it is nonzero.
//! - A thread that cannot get a slot (more live threads than slots), or
//!   whose thread-locals are gone (thread teardown), counts directly with
//!   atomic adds: slower, still exact.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU16, AtomicU64, AtomicUsize, Ordering::Relaxed,
};
use std::sync::OnceLock;

use crate::pressure::{MemoryReading, PressureSource};
use crate::sampling::{
    ByteSampler, ProfileConfig, ProfileLevel, Profiler, SAMPLE_MEAN_BYTES_DEFAULT,
};
use crate::stats::StatBytes;
use crate::{COUNTER_MERGE_BYTES, COUNTER_MERGE_OPS};

/// Threads that can count in slots at once (over all trackers); more fall
/// back to atomic adds.
pub const TRACKED_THREADS_MAX: usize = 256;
/// Counters of the sampled-address filter.
pub const SAMPLED_FILTER_BUCKETS: usize = 1 << 16;
/// Trackers one thread keeps bindings for.
const BINDINGS_PER_THREAD: usize = 4;

const _: () = assert!(SAMPLED_FILTER_BUCKETS.is_power_of_two());

/// Counter fields of a slot.
const ALLOC_COUNT: usize = 0;
const FREE_COUNT: usize = 1;
const ALLOC_BYTES: usize = 2;
const FREE_BYTES: usize = 3;
const FIELDS: usize = 4;

/// One thread's unmerged counters for one tracker.
struct ThreadSlot {
    /// Address of the tracker's core, 0 when never claimed.
    tracker: AtomicUsize,
    /// Whether a live thread counts here now.
    in_use: AtomicBool,
    counts: [AtomicU64; FIELDS],
    /// Highest unmerged net change of allocated bytes.
    pending_high_bytes: AtomicI64,
}

#[allow(clippy::declare_interior_mutable_const)] // used only as an array initialiser
const EMPTY_SLOT: ThreadSlot = ThreadSlot {
    tracker: AtomicUsize::new(0),
    in_use: AtomicBool::new(false),
    counts: [const { AtomicU64::new(0) }; FIELDS],
    pending_high_bytes: AtomicI64::new(0),
};

/// The slots of every tracker in the program.
static SLOTS: [ThreadSlot; TRACKED_THREADS_MAX] = [EMPTY_SLOT; TRACKED_THREADS_MAX];

/// The non-generic part of a tracker.
struct Core {
    merged: [AtomicU64; FIELDS],
    merged_current_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    sample_mean_bytes: u64,
    profiler: OnceLock<Profiler>,
    filter: [AtomicU16; SAMPLED_FILTER_BUCKETS],
    budget_bytes: AtomicU64,
}

/// Figures of a [`TrackingAllocator`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackingStats {
    /// Bytes of live blocks as requested by the program (no rounding is
    /// visible to a wrapper).
    pub allocated: StatBytes,
    /// Allocations (a reallocation counts as one allocation and one free).
    pub alloc_count: u64,
    /// Frees.
    pub free_count: u64,
    /// Threads counting in slots now.
    pub threads: u64,
    /// Live sampled allocations.
    pub live_samples: u64,
}

/// Wraps a global allocator with Strata's accounting and sampled profile.
///
/// Meant to be a `static` (usually the `#[global_allocator]`); see the
/// module docs for how it keeps its cost down.
pub struct TrackingAllocator<A> {
    inner: A,
    core: Core,
}

/// A thread's binding to one tracker.
struct Binding {
    core: usize,
    slot: usize,
    net_bytes: i64,
    high_bytes: i64,
    sampler: ByteSampler,
}

struct Bindings {
    bound: [Option<Binding>; BINDINGS_PER_THREAD],
    /// Set while the tracker itself allocates (profiler tables), so those
    /// allocations are counted but never sampled.
    busy: bool,
}

/// Releases a thread's slots when it exits; their unmerged counts stay in
/// the slot (still summed by snapshots) for the next thread to merge.
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = BINDINGS.try_with(|bindings| {
            if let Ok(mut bindings) = bindings.try_borrow_mut() {
                for binding in bindings.bound.iter_mut().filter_map(Option::take) {
                    SLOTS[binding.slot].in_use.store(false, Relaxed);
                }
            }
        });
    }
}

thread_local! {
    static BINDINGS: RefCell<Bindings> = const {
        RefCell::new(Bindings { bound: [const { None }; BINDINGS_PER_THREAD], busy: false })
    };
    static EXIT_GUARD: ExitGuard = const { ExitGuard };
}

impl<A> TrackingAllocator<A> {
    /// A tracker around `inner`, sampling at the default 512 KiB mean.
    pub const fn new(inner: A) -> Self {
        Self::with_sample_mean(inner, SAMPLE_MEAN_BYTES_DEFAULT)
    }

    /// A tracker sampling at `sample_mean_bytes`
    /// ([`SAMPLE_MEAN_BYTES_DISABLED`](crate::sampling::SAMPLE_MEAN_BYTES_DISABLED): no sampling).
    pub const fn with_sample_mean(inner: A, sample_mean_bytes: u64) -> Self {
        TrackingAllocator {
            inner,
            core: Core {
                merged: [const { AtomicU64::new(0) }; FIELDS],
                merged_current_bytes: AtomicU64::new(0),
                peak_bytes: AtomicU64::new(0),
                sample_mean_bytes,
                profiler: OnceLock::new(),
                filter: [const { AtomicU16::new(0) }; SAMPLED_FILTER_BUCKETS],
                budget_bytes: AtomicU64::new(0),
            },
        }
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    fn core_addr(&self) -> usize {
        &self.core as *const Core as usize
    }

    /// The sampled profile, once something has been sampled.
    pub fn profiler(&self) -> Option<&Profiler> {
        self.core.profiler.get()
    }

    /// Set a memory budget for the whole program (0: none); it is the limit
    /// of the `Budget` reading of [`TrackingAllocator::pressure_readings`].
    pub fn set_budget_bytes(&self, budget_bytes: u64) {
        self.core.budget_bytes.store(budget_bytes, Relaxed);
    }

    /// Readings for a [`PressureMonitor`](crate::pressure::PressureMonitor):
    /// the program's allocated bytes against its budget (if set), plus the
    /// cgroup and system readings of [`crate::sysmem::system_readings`].
    pub fn pressure_readings(&self) -> Vec<MemoryReading> {
        let mut readings = crate::sysmem::system_readings();
        let budget = self.core.budget_bytes.load(Relaxed);
        if budget > 0 {
            readings.push(MemoryReading {
                source: PressureSource::Budget,
                used_bytes: self.stats().allocated.current_bytes,
                limit_bytes: budget,
            });
        }
        readings
    }

    /// A snapshot: merged figures plus every thread's unmerged ones.
    pub fn stats(&self) -> TrackingStats {
        let core = self.core_addr();
        let mut fields = [0u64; FIELDS];
        for (total, merged) in fields.iter_mut().zip(&self.core.merged) {
            *total = merged.load(Relaxed);
        }
        let merged_current = self.core.merged_current_bytes.load(Relaxed);
        let mut peak = self.core.peak_bytes.load(Relaxed);
        let mut threads = 0;
        for slot in SLOTS.iter().filter(|s| s.tracker.load(Relaxed) == core) {
            for (total, count) in fields.iter_mut().zip(&slot.counts) {
                *total += count.load(Relaxed);
            }
            let high = slot.pending_high_bytes.load(Relaxed).max(0);
            peak = peak.max((merged_current as i64).saturating_add(high).max(0) as u64);
            threads += u64::from(slot.in_use.load(Relaxed));
        }
        let current = fields[ALLOC_BYTES].wrapping_sub(fields[FREE_BYTES]);
        TrackingStats {
            allocated: StatBytes {
                current_bytes: current,
                peak_bytes: peak.max(current),
                allocated_total_bytes: fields[ALLOC_BYTES],
                freed_total_bytes: fields[FREE_BYTES],
            },
            alloc_count: fields[ALLOC_COUNT],
            free_count: fields[FREE_COUNT],
            threads,
            live_samples: self.profiler().map_or(0, |p| p.live_samples() as u64),
        }
    }

    /// Fold a slot's counters into the tracker.
    fn merge(&self, binding: &mut Binding) {
        let slot = &SLOTS[binding.slot];
        let mut moved = [0u64; FIELDS];
        for (field, count) in slot.counts.iter().enumerate() {
            moved[field] = count.swap(0, Relaxed);
        }
        let high = binding
            .high_bytes
            .max(slot.pending_high_bytes.swap(0, Relaxed))
            .max(0) as u64;
        for (merged, moved) in self.core.merged.iter().zip(moved) {
            merged.fetch_add(moved, Relaxed);
        }
        let before = self
            .core
            .merged_current_bytes
            .fetch_add(moved[ALLOC_BYTES].wrapping_sub(moved[FREE_BYTES]), Relaxed);
        // The merged figure can be transiently "negative" (wrapped) when this
        // thread frees blocks other threads allocated and have not merged yet.
        let after = before.wrapping_add(moved[ALLOC_BYTES].wrapping_sub(moved[FREE_BYTES]));
        let candidate = (before as i64)
            .saturating_add(high as i64)
            .max(after as i64)
            .max(0) as u64;
        self.core.peak_bytes.fetch_max(candidate, Relaxed);
        binding.net_bytes = 0;
        binding.high_bytes = 0;
    }

    /// Count directly (no slot): exact, with an atomic add per field.
    fn count_direct(&self, alloc: bool, bytes: u64) {
        let core = &self.core;
        if alloc {
            core.merged[ALLOC_COUNT].fetch_add(1, Relaxed);
            core.merged[ALLOC_BYTES].fetch_add(bytes, Relaxed);
            let now = core
                .merged_current_bytes
                .fetch_add(bytes, Relaxed)
                .wrapping_add(bytes);
            core.peak_bytes
                .fetch_max((now as i64).max(0) as u64, Relaxed);
        } else {
            core.merged[FREE_COUNT].fetch_add(1, Relaxed);
            core.merged[FREE_BYTES].fetch_add(bytes, Relaxed);
            core.merged_current_bytes.fetch_sub(bytes, Relaxed);
        }
    }

    /// Claim a slot for this thread: one this tracker used before and no
    /// live thread holds (its unmerged counts carry on), else a fresh one.
    fn claim_slot(&self) -> Option<usize> {
        let core = self.core_addr();
        let claim = |slot: &ThreadSlot| {
            slot.in_use
                .compare_exchange(false, true, Relaxed, Relaxed)
                .is_ok()
        };
        for (index, slot) in SLOTS.iter().enumerate() {
            if slot.tracker.load(Relaxed) == core && claim(slot) {
                if slot.tracker.load(Relaxed) == core {
                    return Some(index);
                }
                slot.in_use.store(false, Relaxed);
            }
        }
        for (index, slot) in SLOTS.iter().enumerate() {
            if slot.tracker.load(Relaxed) == 0 && claim(slot) {
                if slot
                    .tracker
                    .compare_exchange(0, core, Relaxed, Relaxed)
                    .is_ok()
                {
                    return Some(index);
                }
                slot.in_use.store(false, Relaxed);
            }
        }
        None
    }

    /// Count one operation on this thread; returns whether a sampled
    /// allocation should be recorded. `None`: no binding could be used.
    #[inline]
    fn count(&self, alloc: bool, bytes: u64) -> Option<bool> {
        let core = self.core_addr();
        BINDINGS
            .try_with(|bindings| {
                let mut bindings = bindings.try_borrow_mut().ok()?;
                let busy = bindings.busy;
                // The usual case: this tracker is the thread's first binding.
                let binding = match &mut bindings.bound[0] {
                    Some(binding) if binding.core == core => binding,
                    _ => self.find_binding(&mut bindings)?,
                };
                let slot = &SLOTS[binding.slot];
                let mut sampled = false;
                if alloc {
                    let allocs = slot.counts[ALLOC_COUNT].load(Relaxed) + 1;
                    slot.counts[ALLOC_COUNT].store(allocs, Relaxed);
                    bump(&slot.counts[ALLOC_BYTES], bytes);
                    let net = binding.net_bytes + bytes as i64;
                    binding.net_bytes = net;
                    // Branch-free, as in the pool: a conditional move and a store.
                    binding.high_bytes = binding.high_bytes.max(net);
                    slot.pending_high_bytes.store(binding.high_bytes, Relaxed);
                    sampled = binding.sampler.sample(bytes) && !busy;
                    if allocs >= COUNTER_MERGE_OPS || net >= COUNTER_MERGE_BYTES as i64 {
                        self.merge(binding);
                    }
                } else {
                    bump(&slot.counts[FREE_COUNT], 1);
                    bump(&slot.counts[FREE_BYTES], bytes);
                    binding.net_bytes -= bytes as i64;
                    if binding.net_bytes <= -(COUNTER_MERGE_BYTES as i64) {
                        self.merge(binding);
                    }
                }
                Some(sampled)
            })
            .ok()
            .flatten()
    }

    /// This tracker's binding on this thread, made if there is none.
    #[cold]
    #[inline(never)]
    fn find_binding<'b>(&self, bindings: &'b mut Bindings) -> Option<&'b mut Binding> {
        let core = self.core_addr();
        match bindings
            .bound
            .iter()
            .position(|b| b.as_ref().is_some_and(|b| b.core == core))
        {
            Some(position) => bindings.bound[position].as_mut(),
            None => self.bind(bindings),
        }
    }

    #[cold]
    fn bind<'b>(&self, bindings: &'b mut Bindings) -> Option<&'b mut Binding> {
        let free = bindings.bound.iter().position(Option::is_none)?;
        // Registers the thread-exit hook (no allocation on glibc targets).
        EXIT_GUARD.try_with(|_| ()).ok()?;
        let slot = self.claim_slot()?;
        // A disabled sampler never samples, so no separate flag is checked.
        let sampler = ByteSampler::new(
            self.core.sample_mean_bytes,
            (slot as u64) << 32 | free as u64,
        );
        bindings.bound[free] = Some(Binding {
            core: self.core_addr(),
            slot,
            net_bytes: 0,
            high_bytes: 0,
            sampler,
        });
        bindings.bound[free].as_mut()
    }

    fn filter_bucket(addr: usize) -> usize {
        (((addr as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as usize
            & (SAMPLED_FILTER_BUCKETS - 1)
    }

    /// Record a sampled allocation (allocations the profiler makes meanwhile
    /// are counted but not sampled).
    #[cold]
    fn record_sample(&self, addr: usize, size_bytes: u64) {
        let set_busy = |busy: bool| {
            let _ = BINDINGS.try_with(|b| {
                if let Ok(mut b) = b.try_borrow_mut() {
                    b.busy = busy;
                }
            });
        };
        set_busy(true);
        let profiler = self.core.profiler.get_or_init(|| {
            Profiler::new(ProfileConfig {
                level: ProfileLevel::Sampled,
                mean_bytes: self.core.sample_mean_bytes,
                history_events_max: 0,
                seed: 0,
            })
            .expect("a profiler without history is always valid")
        });
        if profiler.record_alloc(addr, size_bytes, None).is_ok() {
            let bucket = &self.core.filter[Self::filter_bucket(addr)];
            // Saturates: a saturated bucket stays a (harmless) false positive.
            let _ = bucket.fetch_update(Relaxed, Relaxed, |c| c.checked_add(1));
        }
        set_busy(false);
    }

    /// Forget a sampled block, if `addr` is one.
    #[inline]
    fn forget_sample(&self, addr: usize) {
        let bucket = &self.core.filter[Self::filter_bucket(addr)];
        if bucket.load(Relaxed) == 0 {
            return;
        }
        self.forget_sample_slow(addr, bucket);
    }

    #[cold]
    fn forget_sample_slow(&self, addr: usize, bucket: &AtomicU16) {
        let Some(profiler) = self.core.profiler.get() else {
            return;
        };
        if profiler.record_free(addr).is_some() {
            let _ = bucket.fetch_update(Relaxed, Relaxed, |c| {
                (c != u16::MAX).then(|| c.saturating_sub(1))
            });
        }
    }

    #[inline]
    fn on_alloc(&self, ptr: *mut u8, bytes: u64) {
        if ptr.is_null() {
            return;
        }
        match self.count(true, bytes) {
            Some(true) => self.record_sample(ptr as usize, bytes),
            Some(false) => {}
            None => self.count_direct(true, bytes),
        }
    }

    #[inline]
    fn on_free(&self, ptr: *mut u8, bytes: u64) {
        self.forget_sample(ptr as usize);
        if self.count(false, bytes).is_none() {
            self.count_direct(false, bytes);
        }
    }
}

#[inline]
fn bump(cell: &AtomicU64, by: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(by), Relaxed);
}

// SAFETY: every call is forwarded to `inner` with the caller's arguments
// unchanged; the tracker only counts, and never touches the memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.inner.alloc(layout) };
        self.on_alloc(ptr, layout.size() as u64);
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        self.on_alloc(ptr, layout.size() as u64);
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.on_free(ptr, layout.size() as u64);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new_ptr = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !new_ptr.is_null() {
            self.on_free(ptr, layout.size() as u64);
            self.on_alloc(new_ptr, new_size as u64);
        }
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn threads_count_exactly_and_slots_are_reused() {
        static TRACKER: TrackingAllocator<System> =
            TrackingAllocator::with_sample_mean(System, 4096);
        let layout = Layout::from_size_align(100, 8).unwrap();
        for round in 0..3 {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    std::thread::spawn(move || {
                        let mut held = Vec::new();
                        for i in 0..5000 {
                            // SAFETY: non-zero layout; freed below with it.
                            let p = unsafe { TRACKER.alloc(layout) };
                            assert!(!p.is_null());
                            held.push(p as usize);
                            if i % 3 == 0 {
                                let q = held.swap_remove(0);
                                // SAFETY: allocated above with `layout`.
                                unsafe { TRACKER.dealloc(q as *mut u8, layout) };
                            }
                        }
                        held
                    })
                })
                .collect();
            let mut held = Vec::new();
            for h in handles {
                held.extend(h.join().unwrap());
            }
            let stats = TRACKER.stats();
            let expected_allocs = 20_000 * (round + 1);
            assert_eq!(stats.alloc_count, expected_allocs, "round {round}");
            assert_eq!(
                stats.allocated.current_bytes,
                held.len() as u64 * 100,
                "round {round}"
            );
            assert!(
                stats.live_samples > 0,
                "100-byte blocks at a 4 KiB mean are sampled"
            );
            for p in held {
                // SAFETY: allocated by the threads with `layout`.
                unsafe { TRACKER.dealloc(p as *mut u8, layout) };
            }
            let stats = TRACKER.stats();
            assert_eq!(stats.allocated.current_bytes, 0, "round {round}");
            assert_eq!(
                stats.live_samples, 0,
                "round {round}: every sample forgotten"
            );
            assert_eq!(stats.alloc_count, stats.free_count);
        }
        let used = SLOTS
            .iter()
            .filter(|s| s.tracker.load(Relaxed) == TRACKER.core_addr())
            .count();
        assert!(used <= 5, "exited threads' slots are reused: {used}");
    }

    #[test]
    fn peak_is_exact_on_one_thread() {
        static TRACKER: TrackingAllocator<System> = TrackingAllocator::with_sample_mean(
            System,
            crate::sampling::SAMPLE_MEAN_BYTES_DISABLED,
        );
        let mut held = Vec::new();
        let mut current = 0u64;
        let mut peak = 0u64;
        for i in 1..2000u64 {
            let layout = Layout::from_size_align((i * 37 % 5000 + 1) as usize, 8).unwrap();
            if i % 5 < 3 || held.is_empty() {
                // SAFETY: non-zero layout; freed below with it.
                let p = unsafe { TRACKER.alloc(layout) };
                held.push((p as usize, layout));
                current += layout.size() as u64;
                peak = peak.max(current);
            } else {
                let (p, l) = held.swap_remove((i as usize * 7) % held.len());
                // SAFETY: allocated above with `l`.
                unsafe { TRACKER.dealloc(p as *mut u8, l) };
                current -= l.size() as u64;
            }
            let stats = TRACKER.stats();
            assert_eq!(stats.allocated.current_bytes, current, "step {i}");
            assert_eq!(stats.allocated.peak_bytes, peak, "step {i}");
        }
        for (p, l) in held {
            // SAFETY: allocated above with `l`.
            unsafe { TRACKER.dealloc(p as *mut u8, l) };
        }
    }
}
