//! Byte-rate sampling of allocations: the per-thread sampler, the table of
//! live sampled allocations, call sites, profile and leak reports, and the
//! bounded history ring of allocation events.
//!
//! # How sampling works
//!
//! Allocated bytes are treated as a stream; sample points fall on it as a
//! Poisson process with mean gap `R` bytes ([`SAMPLE_MEAN_BYTES_DEFAULT`],
//! 512 KiB). An allocation is *sampled* if a sample point falls within its
//! bytes, so an allocation of `s` bytes is sampled with probability
//! `p(s) = 1 - exp(-s/R)` ([`sample_probability`]), independently of every
//! other allocation (the exponential gap is memoryless).
//!
//! [`ByteSampler`] is the per-thread fast path: a countdown of bytes until
//! the next sample point, one subtraction and one compare per allocation;
//! one random draw per *sample*. Unsampled allocations cost no memory and
//! never reach the [`Profiler`].
//!
//! # Estimates
//!
//! Each sample stands for `1/p(s)` allocations and `s/p(s)` bytes
//! ([`SampleWeight`]): the Horvitz-Thompson estimator, unbiased for any
//! workload. Its variance `Σ s² (1-p)/p` over all allocations is estimated,
//! also without bias, by `Σ w² (1-p)` over the samples (`w = s/p`); reports
//! give its square root as the standard error of every byte estimate.
//!
//! # Levels and cost
//!
//! - [`ProfileLevel::Off`]: threads get [`ByteSampler::disabled`]; nothing
//!   is sampled.
//! - [`ProfileLevel::Sampled`]: a sample records its size, its time and its
//!   call site, the `&'static Location` the caller passes (the pool's entry
//!   points are `#[track_caller]`): one [`SampleRecord`] of 16 bytes in the
//!   live-sample slab, and nothing else when the caller keeps the
//!   [`SampleHandle`].
//! - [`ProfileLevel::Detailed`]: each sample also captures the stack
//!   (instruction pointers only, at most [`STACK_FRAMES_MAX`] frames, with
//!   `backtrace::trace`) and interns it in the site table; symbols are
//!   resolved only when a report is built. The cost of one capture is
//!   measured at run time by [`Profiler::stack_capture_cost_ns`] and stated
//!   in Detailed reports; per allocated byte it is that cost divided by `R`.
//!
//! # Memory
//!
//! Live samples sit in a slab: a dense array of 16-byte [`SampleRecord`]s
//! whose vacant entries hold the free list in their own fields, so a vacant
//! entry costs no extra bytes either. Encoding of an entry's `site_id`:
//! `u32::MAX` marks a vacant entry, whose `alloc_ms` is the index of the
//! next vacant entry (`u32::MAX` ends the list) and whose `size_bytes` is
//! 0; in a live entry, bit 31 marks a sample recorded by address and the
//! low bits are the site id (below [`SITES_MAX`], 16 bits). Records handed
//! out never carry the flag. Two ways to record a sample:
//!
//! - By handle ([`Profiler::record_alloc_handle`] /
//!   [`Profiler::record_free_handle`]): the caller keeps the
//!   [`SampleHandle`] (the hybrid pool stores [`SampleHandle::to_tag`] in
//!   the block's arena record). A live sample costs exactly 16 bytes.
//! - By address ([`Profiler::record_alloc`] / [`Profiler::record_free`]),
//!   for callers with nowhere to keep a handle (a global allocator): the
//!   profiler keeps an address-to-handle hash map, which costs its entries
//!   (16 bytes each) and slack on top of the 16-byte record.
//!
//! Both kinds share the slab, the site table and the reports. The slab
//! grows by an eighth ([`SAMPLE_SLAB_GROW_DIVISOR`]); after a burst of
//! frees its vacant entries stay until reused, and [`Profiler::shrink`]
//! drops the vacant tail and releases the spare capacity (live samples
//! never move: their handles are their indices).
//! [`Profiler::metadata_bytes`] reports each part exactly from the
//! capacities ([`ProfilerMetadata`]); a site costs one entry in the site
//! table plus its frames.
//!
//! ```
//! use std::panic::Location;
//! use strata_pool::sampling::{ProfileConfig, ProfileLevel, Profiler, SAMPLE_MEAN_BYTES_DEFAULT};
//!
//! let profiler = Profiler::new(ProfileConfig {
//!     level: ProfileLevel::Sampled,
//!     mean_bytes: SAMPLE_MEAN_BYTES_DEFAULT,
//!     history_events_max: 0,
//!     seed: 7,
//! })?;
//! let mut sampler = profiler.thread_sampler();
//! let mut sampled = Vec::new();
//! for _ in 0..1000 {
//!     let size_bytes = 64 * 1024;
//!     if sampler.sample(size_bytes) {
//!         sampled.push(profiler.record_alloc_handle(size_bytes, Some(Location::caller()))?);
//!     }
//! }
//! // 1000 allocations of 64 KiB: about 117 are sampled, each standing for ~8.5.
//! let report = profiler.profile();
//! assert_eq!(report.totals.sampled_count, sampled.len() as u64);
//! let true_bytes = 1000.0 * 64.0 * 1024.0;
//! let error = (report.totals.estimated_live_bytes - true_bytes).abs();
//! assert!(error <= 5.0 * report.totals.live_bytes_std_error, "{report}");
//! profiler.shrink();
//! assert_eq!(profiler.metadata_bytes().record_bytes, 16 * sampled.len());
//! assert_eq!(profiler.metadata_bytes().vacant_bytes, 0);
//! for &handle in &sampled {
//!     assert_eq!(profiler.record_free_handle(handle)?.size_bytes, 64 * 1024);
//! }
//! // A second free of the same handle is refused.
//! assert!(profiler.record_free_handle(sampled[0]).is_err());
//! assert_eq!(profiler.live_samples(), 0);
//! # Ok::<(), strata_pool::sampling::SamplingError>(())
//! ```

mod history;
mod profiler;
mod report;
mod sampler;
mod slab;
mod stack;

use std::fmt;

pub use history::{HistoryEvent, HistoryEventKind};
pub use profiler::{
    ManualClock, ProfileConfig, ProfileLevel, Profiler, ProfilerMetadata, SampleRecord,
};
pub use report::{
    LeakEstimates, LeakReport, LeakSite, ProfileEstimates, ProfileReport, SiteProfile,
};
pub use sampler::{sample_probability, sample_weight, ByteSampler, SampleWeight};
pub use slab::SampleHandle;

/// Mean gap between sample points, in allocated bytes (`R`): each byte is a
/// sample point with probability `1/R`.
pub const SAMPLE_MEAN_BYTES_DEFAULT: u64 = 512 * 1024;
/// A mean gap of this value disables sampling: [`ByteSampler::disabled`],
/// and [`sample_probability`] is 0 for every size.
pub const SAMPLE_MEAN_BYTES_DISABLED: u64 = u64::MAX;
/// Frames captured per stack at [`ProfileLevel::Detailed`]; deeper frames
/// are cut, so call paths that differ only below this depth share a site.
pub const STACK_FRAMES_MAX: usize = 32;
/// Resolved frames shown per site in a Detailed report.
pub const REPORT_FRAMES_MAX: usize = 4;
/// Distinct call sites (locations or stacks) the site table holds; later
/// new sites are counted under [`SITE_ID_OVERFLOW`].
pub const SITES_MAX: usize = 1 << 16;
/// Site id of samples recorded without a location or stack.
pub const SITE_ID_UNKNOWN: u32 = 0;
/// Site id of samples whose site did not fit in the table ([`SITES_MAX`]).
pub const SITE_ID_OVERFLOW: u32 = 1;
/// Largest history ring a [`ProfileConfig`] may ask for (events). At 24 bytes
/// an event, 96 MiB.
pub const HISTORY_EVENTS_LIMIT: usize = 1 << 22;
/// Captures timed by [`Profiler::stack_capture_cost_ns`].
pub const STACK_COST_CAPTURES: u32 = 64;
/// Live-sample slab entries a profiler may hold (live and vacant): handles
/// are `0..SAMPLE_HANDLES_MAX`, so a handle and its tag (`handle + 1`) fit
/// in 31 bits. Reaching it takes 32 GiB of records.
pub const SAMPLE_HANDLES_MAX: u32 = (1 << 31) - 1;
/// The slab grows by `1 / SAMPLE_SLAB_GROW_DIVISOR` of its entries, so its
/// spare capacity is at most an eighth of its entries (plus
/// [`SAMPLE_SLAB_GROW_MIN_ENTRIES`]).
pub const SAMPLE_SLAB_GROW_DIVISOR: usize = 8;
/// The slab grows by at least this many entries (1 KiB of records).
pub const SAMPLE_SLAB_GROW_MIN_ENTRIES: usize = 64;

const _: () = assert!(SAMPLE_MEAN_BYTES_DEFAULT > 0);
const _: () = assert!(SAMPLE_MEAN_BYTES_DEFAULT < SAMPLE_MEAN_BYTES_DISABLED);
const _: () = assert!(REPORT_FRAMES_MAX <= STACK_FRAMES_MAX);
const _: () = assert!(SITE_ID_UNKNOWN != SITE_ID_OVERFLOW);
const _: () = assert!((SITE_ID_OVERFLOW as usize) < SITES_MAX);
// Site ids are u32 and frame offsets into the stack arena are u32.
const _: () = assert!(SITES_MAX <= u32::MAX as usize);
const _: () = assert!(SITES_MAX * STACK_FRAMES_MAX <= u32::MAX as usize);
const _: () = assert!(STACK_FRAMES_MAX <= u16::MAX as usize);
const _: () = assert!(HISTORY_EVENTS_LIMIT * size_of::<HistoryEvent>() <= 128 << 20);
const _: () = assert!(STACK_COST_CAPTURES > 0);
const _: () = assert!((SAMPLE_HANDLES_MAX as u64) < 1 << 31);
const _: () = assert!(SAMPLE_SLAB_GROW_DIVISOR > 0 && SAMPLE_SLAB_GROW_MIN_ENTRIES > 0);

/// Why a profiler operation was refused. A refused operation changes nothing.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SamplingError {
    /// The address already has a live sample: its free was never recorded.
    AlreadyLive {
        /// The address recorded twice.
        addr: usize,
        /// Size of the live sample at that address.
        live_size_bytes: u64,
        /// Size of the refused new sample.
        size_bytes: u64,
    },
    /// An allocation of this size is never sampled at this mean (a size of
    /// 0, or sampling disabled), so it has no weight.
    ZeroProbability {
        /// Size of the refused sample.
        size_bytes: u64,
        /// The profiler's mean gap between samples.
        mean_bytes: u64,
    },
    /// The history ring asked for is larger than [`HISTORY_EVENTS_LIMIT`].
    HistoryTooLarge {
        /// Events asked for.
        requested_events: usize,
        /// The largest ring allowed.
        max_events: usize,
    },
    /// The slab holds [`SAMPLE_HANDLES_MAX`] entries and none is vacant.
    HandlesExhausted {
        /// The most entries the slab may hold.
        max_handles: u32,
    },
    /// The handle is past the slab's end: it was never handed out, or its
    /// entry was vacant and dropped by [`Profiler::shrink`].
    StaleHandle {
        /// The refused handle.
        handle: SampleHandle,
        /// Entries (live and vacant) the slab holds.
        slab_entries: usize,
    },
    /// The handle's entry is vacant: its sample was already freed.
    VacantHandle {
        /// The refused handle.
        handle: SampleHandle,
    },
    /// The handle's sample was recorded by address; it is freed with
    /// [`Profiler::record_free`].
    AddressKeyed {
        /// The refused handle.
        handle: SampleHandle,
    },
}

impl fmt::Display for SamplingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplingError::AlreadyLive {
                addr,
                live_size_bytes,
                size_bytes,
            } => write!(
                f,
                "address {addr:#x} already has a live sample of {live_size_bytes} bytes \
                 (new sample of {size_bytes} bytes refused; was its free not recorded?)"
            ),
            SamplingError::ZeroProbability {
                size_bytes,
                mean_bytes,
            } => write!(
                f,
                "an allocation of {size_bytes} bytes is never sampled at mean {mean_bytes} bytes, \
                 so it cannot be recorded as a sample"
            ),
            SamplingError::HistoryTooLarge {
                requested_events,
                max_events,
            } => write!(
                f,
                "history ring of {requested_events} events exceeds the maximum of {max_events}"
            ),
            SamplingError::HandlesExhausted { max_handles } => write!(
                f,
                "the live-sample slab is full: {max_handles} entries, none vacant"
            ),
            SamplingError::StaleHandle {
                handle,
                slab_entries,
            } => write!(
                f,
                "sample handle {handle} is past the slab's {slab_entries} entries \
                 (never handed out, or freed and dropped by shrink)"
            ),
            SamplingError::VacantHandle { handle } => write!(
                f,
                "sample handle {handle} names a vacant entry (its sample was already freed)"
            ),
            SamplingError::AddressKeyed { handle } => write!(
                f,
                "sample handle {handle} names a sample recorded by address; free it by address"
            ),
        }
    }
}

impl std::error::Error for SamplingError {}
