//! `strata-pool`: the memory layer every buffer in Strata comes from.
//!
//! - [`budget`]: the [`MemoryPool`](budget::MemoryPool) trait, named
//!   consumers and RAII [`Reservation`](budget::Reservation)s, with
//!   unbounded, greedy and fair budgets and a decorator that tracks peaks
//!   and names the top consumers when a request fails.
//! - [`arena`]: pure placement logic for large blocks (best-fit with
//!   splitting and coalescing, offsets relative to their arena).
//! - [`pressure`]: pressure levels with hysteresis over the budget and, on
//!   Linux, the cgroup limit and `MemAvailable` ([`sysmem`]).
//! - [`sampling`]: byte-rate sampling, the sampled-allocation table, call
//!   sites, leak reports and the event history ring.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arena;
pub mod budget;
pub mod pressure;
pub mod sampling;
pub mod sysmem;
