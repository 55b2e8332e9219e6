//! The hybrid pool's counters: per-thread records merged in batches.
//!
//! A thread counts in its own [`ThreadRecord`] with relaxed loads and
//! stores (no read-modify-write, so no locked instruction and no shared
//! cache line per operation) and folds the record into [`Central`] under
//! the pool's counter lock every [`COUNTER_MERGE_OPS`] operations, or once
//! its unmerged net change of allocated bytes passes
//! [`COUNTER_MERGE_BYTES`]. A snapshot sums the merged totals and every
//! live record, under the same lock.
//!
//! Small classes count only allocations, frees and requested bytes: a
//! block of class `c` always takes `class_size_bytes(c)`, so its allocated
//! bytes are `count * size`, derived at merge and snapshot time instead of
//! being added on every operation.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::size_class::{class_size_bytes, CLASS_COUNT};
use crate::stats::StatBytes;

/// A thread folds its counters into the pool after this many operations.
pub const COUNTER_MERGE_OPS: u32 = 4096;
/// ... or once its unmerged net change of allocated bytes passes this.
pub const COUNTER_MERGE_BYTES: u64 = 4 << 20;

/// Counter index of the large path (after the small classes).
pub(crate) const LARGE_INDEX: usize = CLASS_COUNT;
/// Counter slots: the small classes and the large path.
pub(crate) const COUNTER_INDICES: usize = CLASS_COUNT + 1;

pub(crate) const ALLOC_COUNT: usize = 0;
pub(crate) const FREE_COUNT: usize = 1;
pub(crate) const REQUESTED_ALLOC_BYTES: usize = 2;
pub(crate) const REQUESTED_FREE_BYTES: usize = 3;
/// Block bytes, kept per operation for the large path only.
pub(crate) const ALLOC_BYTES: usize = 4;
pub(crate) const FREE_BYTES: usize = 5;
pub(crate) const FIELDS: usize = 6;

/// Add to a counter that only the calling thread writes.
#[inline(always)]
pub(crate) fn bump(cell: &AtomicU64, by: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(by), Relaxed);
}

/// Block bytes added and removed for `index`, given its count fields.
#[inline]
pub(crate) fn block_bytes(index: usize, fields: &[u64; FIELDS]) -> (u64, u64) {
    if index == LARGE_INDEX {
        (fields[ALLOC_BYTES], fields[FREE_BYTES])
    } else {
        let size = class_size_bytes(index);
        (fields[ALLOC_COUNT] * size, fields[FREE_COUNT] * size)
    }
}

/// One thread's unmerged counters and magazine fill levels. Written only
/// by its thread; read by snapshots and zeroed by its own merges, both
/// under the pool's counter lock.
pub(crate) struct ThreadRecord {
    pub(crate) counts: [[AtomicU64; FIELDS]; COUNTER_INDICES],
    /// Slots in this thread's magazine of each class (its length; the
    /// magazine itself is thread-private).
    pub(crate) magazine_len: [AtomicU32; CLASS_COUNT],
    /// This thread's highest unmerged net change of allocated bytes, so a
    /// snapshot's peak includes it.
    pub(crate) pending_high_bytes: AtomicI64,
}

impl ThreadRecord {
    pub(crate) fn new() -> Self {
        ThreadRecord {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            magazine_len: std::array::from_fn(|_| AtomicU32::new(0)),
            pending_high_bytes: AtomicI64::new(0),
        }
    }

    /// Bytes of the slots parked in this thread's magazines.
    pub(crate) fn cached_bytes(&self) -> u64 {
        self.magazine_len
            .iter()
            .enumerate()
            .map(|(class, len)| u64::from(len.load(Relaxed)) * class_size_bytes(class))
            .sum()
    }
}

/// A thread's net change since its last merge and the highest point it
/// reached, so a single thread's peak is exact.
#[derive(Clone, Copy, Default)]
pub(crate) struct Excursion {
    pub(crate) net_bytes: i64,
    pub(crate) high_bytes: i64,
}

/// Merged counters of one index.
#[derive(Clone, Copy, Default)]
pub(crate) struct Totals {
    /// Fields as in a thread record; for small classes the block-byte
    /// fields are filled in at merge time.
    pub(crate) fields: [u64; FIELDS],
    pub(crate) allocated_peak_bytes: u64,
    pub(crate) requested_peak_bytes: u64,
}

impl Totals {
    pub(crate) fn allocated_current(&self) -> u64 {
        self.fields[ALLOC_BYTES] - self.fields[FREE_BYTES]
    }

    pub(crate) fn requested_current(&self) -> u64 {
        self.fields[REQUESTED_ALLOC_BYTES] - self.fields[REQUESTED_FREE_BYTES]
    }

    /// Add raw thread-record fields of `index`.
    fn add_fields(&mut self, index: usize, raw: &[u64; FIELDS]) {
        let (alloc_bytes, free_bytes) = block_bytes(index, raw);
        self.fields[ALLOC_COUNT] += raw[ALLOC_COUNT];
        self.fields[FREE_COUNT] += raw[FREE_COUNT];
        self.fields[REQUESTED_ALLOC_BYTES] += raw[REQUESTED_ALLOC_BYTES];
        self.fields[REQUESTED_FREE_BYTES] += raw[REQUESTED_FREE_BYTES];
        self.fields[ALLOC_BYTES] += alloc_bytes;
        self.fields[FREE_BYTES] += free_bytes;
    }

    /// The figure as a [`StatBytes`] (`allocated` or `requested`).
    pub(crate) fn stat(&self, allocated: bool) -> StatBytes {
        let (add, remove, peak) = if allocated {
            (ALLOC_BYTES, FREE_BYTES, self.allocated_peak_bytes)
        } else {
            (
                REQUESTED_ALLOC_BYTES,
                REQUESTED_FREE_BYTES,
                self.requested_peak_bytes,
            )
        };
        let current = self.fields[add] - self.fields[remove];
        StatBytes {
            current_bytes: current,
            peak_bytes: peak.max(current),
            allocated_total_bytes: self.fields[add],
            freed_total_bytes: self.fields[remove],
        }
    }
}

/// The pool's merged counters, under one lock.
pub(crate) struct Central {
    pub(crate) totals: [Totals; COUNTER_INDICES],
    pub(crate) allocated_bytes: u64,
    pub(crate) requested_bytes: u64,
    pub(crate) allocated_peak_bytes: u64,
    pub(crate) requested_peak_bytes: u64,
}

impl Central {
    pub(crate) fn new() -> Self {
        Central {
            totals: [Totals::default(); COUNTER_INDICES],
            allocated_bytes: 0,
            requested_bytes: 0,
            allocated_peak_bytes: 0,
            requested_peak_bytes: 0,
        }
    }

    /// Fold a thread's record into the totals and zero it. Called by the
    /// record's own thread (the only writer), so plain loads and stores
    /// suffice.
    pub(crate) fn merge(
        &mut self,
        record: &ThreadRecord,
        allocated: Excursion,
        requested: Excursion,
    ) {
        let peak = |current: u64, excursion: Excursion| {
            (current as i64 + excursion.high_bytes.max(0)).max(0) as u64
        };
        self.allocated_peak_bytes = self
            .allocated_peak_bytes
            .max(peak(self.allocated_bytes, allocated));
        self.requested_peak_bytes = self
            .requested_peak_bytes
            .max(peak(self.requested_bytes, requested));
        for (index, cells) in record.counts.iter().enumerate() {
            let mut raw = [0u64; FIELDS];
            let mut any = false;
            for (value, cell) in raw.iter_mut().zip(cells) {
                *value = cell.load(Relaxed);
                any |= *value != 0;
            }
            if !any {
                continue;
            }
            for cell in cells {
                cell.store(0, Relaxed);
            }
            let totals = &mut self.totals[index];
            totals.add_fields(index, &raw);
            totals.allocated_peak_bytes =
                totals.allocated_peak_bytes.max(totals.allocated_current());
            totals.requested_peak_bytes =
                totals.requested_peak_bytes.max(totals.requested_current());
        }
        record.pending_high_bytes.store(0, Relaxed);
        self.allocated_bytes = (self.allocated_bytes as i64 + allocated.net_bytes) as u64;
        self.requested_bytes = (self.requested_bytes as i64 + requested.net_bytes) as u64;
        self.allocated_peak_bytes = self.allocated_peak_bytes.max(self.allocated_bytes);
        self.requested_peak_bytes = self.requested_peak_bytes.max(self.requested_bytes);
    }

    /// Count one operation done outside any thread cache.
    pub(crate) fn count_direct(
        &mut self,
        index: usize,
        alloc: bool,
        block_bytes_value: u64,
        requested_bytes: u64,
    ) {
        let mut raw = [0u64; FIELDS];
        if alloc {
            raw[ALLOC_COUNT] = 1;
            raw[REQUESTED_ALLOC_BYTES] = requested_bytes;
            raw[ALLOC_BYTES] = block_bytes_value;
            self.allocated_bytes += block_bytes_value;
            self.requested_bytes += requested_bytes;
        } else {
            raw[FREE_COUNT] = 1;
            raw[REQUESTED_FREE_BYTES] = requested_bytes;
            raw[FREE_BYTES] = block_bytes_value;
            self.allocated_bytes -= block_bytes_value;
            self.requested_bytes -= requested_bytes;
        }
        let totals = &mut self.totals[index];
        totals.add_fields(index, &raw);
        totals.allocated_peak_bytes = totals.allocated_peak_bytes.max(totals.allocated_current());
        totals.requested_peak_bytes = totals.requested_peak_bytes.max(totals.requested_current());
        self.allocated_peak_bytes = self.allocated_peak_bytes.max(self.allocated_bytes);
        self.requested_peak_bytes = self.requested_peak_bytes.max(self.requested_bytes);
    }

    /// The merged totals plus every record's unmerged figures, and the
    /// peaks including each thread's pending high.
    pub(crate) fn snapshot<'r>(&self, records: impl Iterator<Item = &'r ThreadRecord>) -> Snapshot {
        let mut totals = self.totals;
        let mut allocated_peak = self.allocated_peak_bytes;
        let requested_peak = self.requested_peak_bytes;
        let mut cached_bytes = 0;
        for record in records {
            let high = record.pending_high_bytes.load(Relaxed).max(0);
            allocated_peak = allocated_peak.max((self.allocated_bytes as i64 + high) as u64);
            cached_bytes += record.cached_bytes();
            for (index, cells) in record.counts.iter().enumerate() {
                let mut raw = [0u64; FIELDS];
                for (value, cell) in raw.iter_mut().zip(cells) {
                    *value = cell.load(Relaxed);
                }
                totals[index].add_fields(index, &raw);
            }
        }
        Snapshot {
            totals,
            allocated_peak_bytes: allocated_peak,
            requested_peak_bytes: requested_peak,
            cached_bytes,
        }
    }
}

/// What [`Central::snapshot`] gives.
pub(crate) struct Snapshot {
    pub(crate) totals: [Totals; COUNTER_INDICES],
    pub(crate) allocated_peak_bytes: u64,
    pub(crate) requested_peak_bytes: u64,
    pub(crate) cached_bytes: u64,
}

/// Committed bytes, updated only on slab and arena commits (rare), so
/// atomics here cost nothing on the allocation path.
#[derive(Default)]
pub(crate) struct ReservedCounter {
    pub(crate) current: AtomicU64,
    peak: AtomicU64,
    added_total: AtomicU64,
    removed_total: AtomicU64,
}

impl ReservedCounter {
    pub(crate) fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(now, Relaxed);
        self.added_total.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn remove(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Relaxed);
        self.removed_total.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn stat(&self) -> StatBytes {
        StatBytes {
            current_bytes: self.current.load(Relaxed),
            peak_bytes: self.peak.load(Relaxed),
            allocated_total_bytes: self.added_total.load(Relaxed),
            freed_total_bytes: self.removed_total.load(Relaxed),
        }
    }
}
