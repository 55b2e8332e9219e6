//! Strata: a memory manager for tensor workloads that do not fit in RAM.
//!
//! This facade re-exports the public API of Strata's layers so that one
//! dependency is enough. Each layer is also usable on its own through its
//! crate; today those are the block allocator, [`bitmap`] (`strata-bitmap`):
//! O(1) block and extent allocation over a hierarchical bitmap, with an
//! allocation cache and reserved ranges; and the memory layer, [`pool`]
//! (`strata-pool`): budgets, the hybrid pool per device with always-on
//! accounting, pressure levels, sampled profiling and a tracking global
//! allocator; the disk tier, [`disk`] (`strata-disk`): block devices,
//! verified spill records and the extent store with bad-block remapping;
//! mapped regions, [`region`] (`strata-region`): safetensors-compatible
//! layer files mapped zero-copy with checksums verified once;
//! chunked arrays, [`array`](mod@array) (`strata-array`): Zarr v3, NPY and in-memory
//! arrays behind `ChunkSource`/`ChunkSink`; and the out-of-core engine,
//! [`ooc`] (`strata-ooc`): einsum contractions, reductions and elementwise
//! operations under a memory budget, with a buffer manager and plan-aware
//! eviction.
//!
//! # Example
//!
//! ```
//! use strata::{BitmapError, BlockBitmap, Extent};
//!
//! # fn main() -> Result<(), BitmapError> {
//! let mut bitmap = BlockBitmap::new(1 << 16)?;
//! // Keep the first 64 blocks for metadata: they are never handed out.
//! bitmap.reserve(0..64)?;
//!
//! let block = bitmap.alloc().expect("the bitmap is nearly empty");
//! assert!(block.0 >= 64);
//! let extent: Extent = bitmap.alloc_extent(8).expect("room for 8 blocks");
//! assert_eq!(extent.len, 8);
//!
//! bitmap.free(block)?;
//! // A double free is an error value, never silent.
//! assert!(bitmap.free(block).is_err());
//! bitmap.free_extent(extent)?;
//!
//! let stats = bitmap.stats();
//! assert_eq!(stats.allocated_blocks, 0);
//! assert_eq!(stats.free_blocks + stats.reserved_blocks, stats.capacity_blocks);
//! # Ok(())
//! # }
//! ```

pub use strata_array as array;
pub use strata_bitmap as bitmap;
pub use strata_bitmap::{BitmapError, BitmapStats, Block, BlockBitmap, Extent, SharedBitmap};
pub use strata_disk as disk;
pub use strata_ooc as ooc;
pub use strata_pool as pool;
pub use strata_pool::{
    Device, DevicePools, HybridPool, PoolBox, PoolConfig, PoolError, PoolStats, TrackingAllocator,
};
pub use strata_region as region;
