//! `strata-pool`: the memory layer every buffer in Strata comes from.
//!
//! - [`budget`]: the [`MemoryPool`](budget::MemoryPool) trait, named
//!   consumers and RAII [`Reservation`](budget::Reservation)s, with
//!   unbounded, greedy and fair budgets and a decorator that tracks peaks
//!   and names the top consumers when a request fails.
//! - [`HybridPool`]: the pool of one [`Device`]: small blocks (up to 1 MiB)
//!   in size classes carved from 2 MiB slabs whose free slots a
//!   `strata-bitmap` tracks, large blocks best-fit in growable arenas
//!   ([`arena`]), per-thread caches in front, handles that free on drop
//!   ([`PoolBox`]) and an `allocator-api2` `Allocator`.
//! - Accounting that is always on: PyTorch-style counters per device and
//!   per size class ([`PoolStats`]), kept per thread and merged in batches.
//! - [`pressure`]: pressure levels with hysteresis over the budget and, on
//!   Linux, the cgroup limit and `MemAvailable` ([`sysmem`]), fed by a
//!   background [`watch::PressureWatcher`].
//! - [`TrackingAllocator`]: the same accounting and sampled profile for a
//!   whole program, around any `GlobalAlloc`.
//! - [`sampling`]: byte-rate sampling, the sampled-allocation table, call
//!   sites, leak reports and the event history ring.
//!
//! Unsafe code lives in [`os`] (system calls) and in the hybrid pool's
//! handle and allocator interface.
#![deny(unsafe_op_in_unsafe_fn)]

mod accounting;
pub mod arena;
pub mod budget;
mod device;
mod error;
mod hybrid;
pub mod os;
pub mod pressure;
mod sample_pages;
pub mod sampling;
pub mod size_class;
mod stats;
pub mod sysmem;
mod thread_cache;
mod tracking;
pub mod watch;

pub use accounting::{COUNTER_MERGE_BYTES, COUNTER_MERGE_OPS};
pub use device::Device;
pub use error::PoolError;
pub use hybrid::{
    DevicePools, HybridPool, PoolBox, PoolConfig, ReleaseReport, ARENA_GROW_BYTES,
    ARENA_VIRTUAL_BYTES_DEFAULT, SLAB_REGION_BYTES_DEFAULT,
};
pub use sample_pages::{
    SAMPLE_PAGE_BLOCK_BYTES_MAX, SAMPLE_PAGE_BYTES, SAMPLE_REGION_BYTES_DEFAULT,
};
pub use stats::{ClassStats, PoolStats, StatBytes};
pub use thread_cache::{MAGAZINE_BYTES_MAX, MAGAZINE_SLOTS_MAX, MAGAZINE_SLOTS_MIN};
pub use tracking::{TrackingAllocator, TrackingStats, SAMPLED_FILTER_BUCKETS, TRACKED_THREADS_MAX};
