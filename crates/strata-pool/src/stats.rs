//! Accounting figures of the hybrid pool, in the PyTorch style.
//!
//! Names follow `torch.cuda.memory_stats()` so users coming from there
//! recognise them:
//!
//! - `allocated`: bytes of blocks handed to callers (sizes rounded to the
//!   block actually taken);
//! - `requested`: bytes callers asked for (before rounding);
//! - `active`: bytes not free for any thread to reuse: `allocated` plus
//!   the slots parked in per-thread caches;
//! - `reserved`: bytes committed from the operating system (slabs and arena
//!   memory);
//! - `inactive_split`: free bytes inside slabs and arenas that also hold
//!   live blocks, so they cannot be returned to the system.
//!
//! Accounting equations (checked by `HybridPool::check_invariants` when
//! the pool is quiescent):
//!
//! - `allocated.current == allocated.allocated_total - allocated.freed_total`
//!   (and the same for `requested`);
//! - `active == allocated.current + cached`;
//! - `reserved.current >= active + inactive_split`.

use std::fmt;

use crate::budget::format_bytes;
use crate::Device;

/// One accounted quantity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatBytes {
    /// Bytes now.
    pub current_bytes: u64,
    /// Highest value of `current_bytes` (see [`PoolStats`] for how exact).
    pub peak_bytes: u64,
    /// Bytes ever added.
    pub allocated_total_bytes: u64,
    /// Bytes ever removed.
    pub freed_total_bytes: u64,
}

/// Figures of one small size class (or of the large path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes of one block of the class (0 for the large path).
    pub class_bytes: u64,
    /// Blocks handed out, in bytes of the class.
    pub allocated: StatBytes,
    /// Bytes callers asked for.
    pub requested: StatBytes,
    /// Allocations served.
    pub alloc_count: u64,
    /// Frees received.
    pub free_count: u64,
}

/// A snapshot of a hybrid pool's accounting.
///
/// Current values and totals are exact when taken while no other thread
/// is allocating from the pool (they sum the merged figures with every
/// thread's unmerged ones). Each thread merges a class's counters into the
/// pool after every [`COUNTER_MERGE_OPS`](crate::COUNTER_MERGE_OPS)
/// allocations of that class, and folds its net of allocated bytes into
/// the pool's peak tracker whenever that net passes
/// [`COUNTER_MERGE_BYTES`](crate::COUNTER_MERGE_BYTES) either way, together
/// with the highest point it reached. So the `allocated` peak is exact while
/// one thread allocates, and otherwise within
/// `(threads - 1) * (COUNTER_MERGE_BYTES + the largest block)` of the true
/// peak. The `requested` peak is taken at those folds and at merges, with no
/// cost per operation, so it can miss a short excursion of up to
/// `COUNTER_MERGE_BYTES + the largest block` per thread. `reserved` is kept
/// under the pool's own locks and is always exact.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStats {
    /// The pool's device.
    pub device: Device,
    /// Whether per-operation accounting is on (off: only `reserved`,
    /// `active` and the structural figures are kept).
    pub accounting: bool,
    /// Blocks handed out.
    pub allocated: StatBytes,
    /// Bytes asked for.
    pub requested: StatBytes,
    /// Memory committed from the system.
    pub reserved: StatBytes,
    /// `allocated` plus slots parked in per-thread caches.
    pub active_bytes: u64,
    /// Slots parked in per-thread caches.
    pub cached_bytes: u64,
    /// Free bytes in slabs and arenas that also hold live blocks.
    pub inactive_split_bytes: u64,
    /// Free bytes the pool holds (in slabs, arenas and empty slabs).
    pub free_bytes: u64,
    /// Largest free block in the arenas.
    pub largest_free_bytes: u64,
    /// `1 - largest_free / free` over the arenas (0 when nothing is free).
    pub fragmentation: f64,
    /// Allocations served.
    pub alloc_count: u64,
    /// Frees received.
    pub free_count: u64,
    /// Slabs committed.
    pub slabs: u64,
    /// Arenas mapped.
    pub arenas: u64,
    /// Small classes, in size order.
    pub classes: Vec<ClassStats>,
    /// Blocks above the small limit (and sampled blocks of any size).
    pub large: ClassStats,
    /// Frees through the allocator interface that were refused (a foreign
    /// or already-free pointer): counted instead of corrupting the pool.
    pub refused_frees: u64,
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, name: &str, stat: &StatBytes| {
            writeln!(
                f,
                "  {name:<15} {:>12} {:>12} {:>14} {:>14}",
                format_bytes(stat.current_bytes),
                format_bytes(stat.peak_bytes),
                format_bytes(stat.allocated_total_bytes),
                format_bytes(stat.freed_total_bytes)
            )
        };
        writeln!(
            f,
            "pool {} (accounting {})",
            self.device,
            if self.accounting { "on" } else { "off" }
        )?;
        writeln!(
            f,
            "  {:<15} {:>12} {:>12} {:>14} {:>14}",
            "", "current", "peak", "total alloc", "total freed"
        )?;
        row(f, "allocated", &self.allocated)?;
        row(f, "requested", &self.requested)?;
        row(f, "reserved", &self.reserved)?;
        writeln!(
            f,
            "  active {}, cached in threads {}, inactive split {}, free {}",
            format_bytes(self.active_bytes),
            format_bytes(self.cached_bytes),
            format_bytes(self.inactive_split_bytes),
            format_bytes(self.free_bytes)
        )?;
        writeln!(
            f,
            "  {} allocations, {} frees, {} slabs, {} arenas, fragmentation {:.3}",
            self.alloc_count, self.free_count, self.slabs, self.arenas, self.fragmentation
        )?;
        if self.refused_frees > 0 {
            writeln!(f, "  {} refused frees", self.refused_frees)?;
        }
        Ok(())
    }
}
