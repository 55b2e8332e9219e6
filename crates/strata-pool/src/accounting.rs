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

/// A thread folds a class's counters into the pool after this many
/// allocations of that class.
pub const COUNTER_MERGE_OPS: u64 = 4096;

const _: () = assert!(COUNTER_MERGE_OPS.is_power_of_two(), "checked with a mask");
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

/// One class's (or the large path's) line of a thread record: the
/// magazine's fill level and the unmerged counters, in one cache line, so
/// counting an operation touches no line the operation does not touch
/// anyway (the magazine length).
#[repr(align(64))]
pub(crate) struct ClassCell {
    /// Slots in this thread's magazine of the class (its length; the
    /// magazine itself is thread-private). Unused for the large path.
    pub(crate) magazine_len: AtomicU32,
    pub(crate) counts: [AtomicU64; FIELDS],
}

const _: () = assert!(std::mem::size_of::<ClassCell>() == 64);

/// One thread's unmerged counters and magazine fill levels. Written only
/// by its thread; read by snapshots and zeroed by its own merges, both
/// under the pool's counter lock.
pub(crate) struct ThreadRecord {
    pub(crate) cells: [ClassCell; COUNTER_INDICES],
    /// This thread's highest unmerged net change of allocated bytes, so a
    /// snapshot's peak includes it.
    pub(crate) pending_high_bytes: AtomicI64,
}

impl ThreadRecord {
    /// Net requested bytes counted here and not merged yet.
    pub(crate) fn unmerged_requested_net_bytes(&self) -> i64 {
        self.cells
            .iter()
            .map(|cell| {
                cell.counts[REQUESTED_ALLOC_BYTES].load(Relaxed) as i64
                    - cell.counts[REQUESTED_FREE_BYTES].load(Relaxed) as i64
            })
            .sum()
    }

    pub(crate) fn new() -> Self {
        ThreadRecord {
            cells: std::array::from_fn(|_| ClassCell {
                magazine_len: AtomicU32::new(0),
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
            pending_high_bytes: AtomicI64::new(0),
        }
    }

    /// Bytes of the slots parked in this thread's magazines.
    pub(crate) fn cached_bytes(&self) -> u64 {
        self.cells[..CLASS_COUNT]
            .iter()
            .enumerate()
            .map(|(class, cell)| {
                u64::from(cell.magazine_len.load(Relaxed)) * class_size_bytes(class)
            })
            .sum()
    }
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
    /// Allocated minus freed bytes. A thread that frees blocks another
    /// thread allocated may merge its frees before the allocating thread
    /// merges the allocations, so merged totals can briefly show more freed
    /// than allocated: the figure is then 0 until the allocations arrive.
    pub(crate) fn allocated_current(&self) -> u64 {
        self.fields[ALLOC_BYTES].saturating_sub(self.fields[FREE_BYTES])
    }

    /// As [`Totals::allocated_current`], for requested bytes.
    pub(crate) fn requested_current(&self) -> u64 {
        self.fields[REQUESTED_ALLOC_BYTES].saturating_sub(self.fields[REQUESTED_FREE_BYTES])
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

/// The pool-wide net of allocated bytes that threads have folded in, and
/// the peak, kept apart from the counters so that a thread folds its net
/// change with two atomics (no lock) whenever it passes
/// [`COUNTER_MERGE_BYTES`] either way.
#[derive(Default)]
pub(crate) struct PeakTracker {
    merged_net_bytes: AtomicI64,
    peak_bytes: AtomicU64,
}

impl PeakTracker {
    /// Fold a thread's net change, whose highest point since its last fold
    /// was `high_bytes`.
    pub(crate) fn fold(&self, net_bytes: i64, high_bytes: i64) {
        let before = self.merged_net_bytes.fetch_add(net_bytes, Relaxed);
        let candidate = before.saturating_add(high_bytes.max(net_bytes)).max(0) as u64;
        self.peak_bytes.fetch_max(candidate, Relaxed);
    }

    /// The peak so far, counting no unfolded change.
    pub(crate) fn folded_peak(&self) -> u64 {
        self.peak_bytes.load(Relaxed)
    }

    /// The peak, counting each thread's unfolded high.
    pub(crate) fn peak_with<'r>(&self, records: impl Iterator<Item = &'r ThreadRecord>) -> u64 {
        let merged = self.merged_net_bytes.load(Relaxed);
        records.fold(self.peak_bytes.load(Relaxed), |peak, record| {
            let high = record.pending_high_bytes.load(Relaxed).max(0);
            peak.max(merged.saturating_add(high).max(0) as u64)
        })
    }
}

/// The pool's merged counters, under one lock.
pub(crate) struct Central {
    pub(crate) totals: [Totals; COUNTER_INDICES],
    /// Requested bytes merged so far (negative while cross-thread frees
    /// are merged ahead of their allocations), and their peak at merge
    /// points.
    requested_bytes: i64,
    requested_peak_bytes: u64,
}

impl Central {
    pub(crate) fn new() -> Self {
        Central {
            totals: [Totals::default(); COUNTER_INDICES],
            requested_bytes: 0,
            requested_peak_bytes: 0,
        }
    }

    /// Fold a thread's counters of `indices` into the totals and zero them.
    /// Called by the record's own thread (the only writer), so plain loads
    /// and stores suffice.
    ///
    /// Returns the net of requested bytes it moved.
    pub(crate) fn merge(&mut self, record: &ThreadRecord, indices: std::ops::Range<usize>) -> i64 {
        let mut requested_net_bytes = 0i64;
        for index in indices {
            let cells = &record.cells[index].counts;
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
            let net = raw[REQUESTED_ALLOC_BYTES] as i64 - raw[REQUESTED_FREE_BYTES] as i64;
            requested_net_bytes += net;
            self.requested_bytes += net;
            self.requested_peak_bytes = self
                .requested_peak_bytes
                .max(self.requested_bytes.max(0) as u64);
        }
        requested_net_bytes
    }

    /// Count one operation done outside any thread cache (the caller folds
    /// the bytes into the [`PeakTracker`]).
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
            self.requested_bytes += requested_bytes as i64;
        } else {
            raw[FREE_COUNT] = 1;
            raw[REQUESTED_FREE_BYTES] = requested_bytes;
            raw[FREE_BYTES] = block_bytes_value;
            self.requested_bytes -= requested_bytes as i64;
        }
        let totals = &mut self.totals[index];
        totals.add_fields(index, &raw);
        totals.allocated_peak_bytes = totals.allocated_peak_bytes.max(totals.allocated_current());
        totals.requested_peak_bytes = totals.requested_peak_bytes.max(totals.requested_current());
        self.requested_peak_bytes = self
            .requested_peak_bytes
            .max(self.requested_bytes.max(0) as u64);
    }

    /// The merged totals plus every record's unmerged figures.
    pub(crate) fn snapshot<'r>(&self, records: impl Iterator<Item = &'r ThreadRecord>) -> Snapshot {
        let mut totals = self.totals;
        let mut cached_bytes = 0;
        for record in records {
            cached_bytes += record.cached_bytes();
            for (index, cells) in record.cells.iter().map(|c| &c.counts).enumerate() {
                let mut raw = [0u64; FIELDS];
                for (value, cell) in raw.iter_mut().zip(cells) {
                    *value = cell.load(Relaxed);
                }
                totals[index].add_fields(index, &raw);
            }
        }
        Snapshot {
            totals,
            requested_peak_bytes: self.requested_peak_bytes,
            cached_bytes,
        }
    }
}

/// What [`Central::snapshot`] gives.
pub(crate) struct Snapshot {
    pub(crate) totals: [Totals; COUNTER_INDICES],
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
