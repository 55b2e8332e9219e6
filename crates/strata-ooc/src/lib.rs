//! `strata-ooc`: Strata's out-of-core engine (layer 5).
//!
//! The engine computes over arrays larger than the memory budget: a planner
//! emits the whole schedule of tile operations up front, and a buffer
//! manager keeps the chunks it touches under the budget. This crate holds,
//! so far, the part of the buffer manager that decides *which* chunk goes
//! when room is needed:
//!
//! - [`policy`]: the [`EvictionPolicy`](policy::EvictionPolicy) trait and
//!   its implementations: [`LruPolicy`](policy::LruPolicy),
//!   [`SievePolicy`](policy::SievePolicy) (NSDI '24),
//!   [`S3FifoPolicy`](policy::S3FifoPolicy) (SOSP '23), and
//!   [`MinPolicy`](policy::MinPolicy), which evicts the chunk whose next
//!   scheduled use is farthest away (Belady's MIN) and falls back to an
//!   online policy outside the schedule.
//! - [`policy::sim`]: a cache simulator over access traces and an offline
//!   Belady reference; [`policy::trace`]: deterministic synthetic traces
//!   (loops, scans, Zipf, blocked matmul tiles).
//!
//! Streaming jobs under the same budget: [`reduce`] (sum, mean, min, max
//! along any axes, compensated sums) and [`map`] (elementwise arithmetic of
//! one to three arrays), sharing the planner and read-ahead of [`stream`].
//!
//! Policy code does no I/O and starts no threads, so it is tested
//! exhaustively against naive models. No `unsafe` code.
//!
//! ```
//! use strata_ooc::policy::sim::{belady_hits, simulate};
//! use strata_ooc::policy::trace::MatmulTiles;
//! use strata_ooc::policy::{LruPolicy, MinPolicy};
//!
//! // The tile accesses of a 4x4x4-tile blocked matmul, with room for 8 of its 32 tiles.
//! let trace = MatmulTiles::new(4, 4, 4)?.trace();
//! let mut min = MinPolicy::new(Box::new(LruPolicy::new()));
//! min.set_schedule(&trace);
//! let stats = simulate(&mut min, &trace, 8, &mut |_| false)?;
//! assert_eq!(stats.hits, belady_hits(&trace, 8)?); // optimal on its schedule
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod bounds;
pub mod bufmgr;
pub mod contract;
pub mod einsum;
pub mod error;
pub mod map;
pub mod pack;
pub mod plan;
pub mod policy;
pub mod readahead;
pub mod reduce;
pub mod spill;
pub mod spill_array;
pub mod stream;
