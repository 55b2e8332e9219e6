//! The alloc+free churn workload of the `pool` suite, usable on any
//! allocator through one raw interface ([`RawAlloc`]).
//!
//! A [`ChurnPlan`] is generated before anything is timed: the sizes of a
//! working set of live slots, then a sequence of steps, each naming the slot
//! to free and the size of the block to allocate into it. Sizes are
//! log-uniform over a [`ChurnSizes`] range (every power of two equally
//! likely): [`ChurnSizes::FULL`] is 16 B..=1 MiB, [`ChurnSizes::SMALL`]
//! 16 B..=4 KiB. No random number is drawn in a timed loop and every
//! allocator replays the same sequence.
//!
//! A [`ChurnWorker`] replays a plan. It writes a tag byte at the first and
//! the last byte of every block it allocates and checks both before it frees
//! the block: an allocator that hands out memory of a live block (a double
//! hand-out or an overlap at either end) is caught as
//! [`ChurnError::TagMismatch`].
//!
//! ```
//! use std::alloc::System;
//! use strata_bench::churn::{ChurnPlan, ChurnSizes, ChurnWorker, ViaGlobalAlloc};
//!
//! let plan = ChurnPlan::generate(7, 64, 1000, ChurnSizes::SMALL);
//! assert!(plan.steps().iter().all(|s| s.size_bytes <= 4096));
//! let system = ViaGlobalAlloc(&System);
//! let mut worker = ChurnWorker::fill(&system, &plan)?;
//! worker.run(plan.steps())?;
//! assert_eq!(worker.allocs(), 64 + 1000);
//! worker.drain()?;
//! # Ok::<(), strata_bench::churn::ChurnError>(())
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::fmt;
use std::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_pool::HybridPool;

/// Smallest block any churn allocates.
pub const CHURN_SIZE_BYTES_MIN: u32 = 16;
/// Largest block any churn allocates (the pool's small-block limit).
pub const CHURN_SIZE_BYTES_MAX: u32 = 1 << 20;
/// Largest block of [`ChurnSizes::SMALL`]: one 4 KiB page, so the small
/// churn stays in the size classes where the per-call cost, not touching
/// memory, dominates.
pub const CHURN_SMALL_SIZE_BYTES_MAX: u32 = 4096;
/// Alignment of every churn block: what `malloc` guarantees, so no
/// allocator takes an aligned slow path.
pub const CHURN_ALIGN_BYTES: usize = 16;

const _: () =
    assert!(CHURN_SIZE_BYTES_MIN.is_power_of_two() && CHURN_SIZE_BYTES_MAX.is_power_of_two());
const _: () = assert!(CHURN_SIZE_BYTES_MIN < CHURN_SIZE_BYTES_MAX);
const _: () = assert!(CHURN_SIZE_BYTES_MAX as u64 <= strata_pool::size_class::SMALL_BYTES_MAX);
// Tags sit at the first and last byte; blocks of one byte would have one.
const _: () = assert!(CHURN_SIZE_BYTES_MIN >= 2);
const _: () = assert!(CHURN_SIZE_BYTES_MIN < CHURN_SMALL_SIZE_BYTES_MAX);
const _: () = assert!(
    ChurnSizes::is_valid(ChurnSizes::FULL.min_bytes, ChurnSizes::FULL.max_bytes)
        && ChurnSizes::is_valid(ChurnSizes::SMALL.min_bytes, ChurnSizes::SMALL.max_bytes)
);

/// The sizes a churn draws: log-uniform over `min_bytes..=max_bytes`, both
/// powers of two inside [`CHURN_SIZE_BYTES_MIN`]..=[`CHURN_SIZE_BYTES_MAX`],
/// so every power of two in the range is equally likely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChurnSizes {
    min_bytes: u32,
    max_bytes: u32,
}

impl ChurnSizes {
    /// 16 B..=1 MiB: every size class of the pool's small path.
    pub const FULL: ChurnSizes = ChurnSizes {
        min_bytes: CHURN_SIZE_BYTES_MIN,
        max_bytes: CHURN_SIZE_BYTES_MAX,
    };
    /// 16 B..=4 KiB ([`CHURN_SMALL_SIZE_BYTES_MAX`]).
    pub const SMALL: ChurnSizes = ChurnSizes {
        min_bytes: CHURN_SIZE_BYTES_MIN,
        max_bytes: CHURN_SMALL_SIZE_BYTES_MAX,
    };

    /// The range `min_bytes..=max_bytes`.
    ///
    /// # Panics
    /// If either bound is not a power of two, `min_bytes > max_bytes`, or
    /// the range leaves `CHURN_SIZE_BYTES_MIN..=CHURN_SIZE_BYTES_MAX`.
    pub fn new(min_bytes: u32, max_bytes: u32) -> ChurnSizes {
        assert!(
            ChurnSizes::is_valid(min_bytes, max_bytes),
            "sizes {min_bytes}..={max_bytes} must be powers of two, ordered, inside \
             {CHURN_SIZE_BYTES_MIN}..={CHURN_SIZE_BYTES_MAX}"
        );
        ChurnSizes {
            min_bytes,
            max_bytes,
        }
    }

    /// The checks of [`ChurnSizes::new`].
    const fn is_valid(min_bytes: u32, max_bytes: u32) -> bool {
        min_bytes.is_power_of_two()
            && max_bytes.is_power_of_two()
            && CHURN_SIZE_BYTES_MIN <= min_bytes
            && min_bytes <= max_bytes
            && max_bytes <= CHURN_SIZE_BYTES_MAX
    }

    /// Smallest size drawn.
    pub fn min_bytes(self) -> u32 {
        self.min_bytes
    }

    /// Largest size drawn.
    pub fn max_bytes(self) -> u32 {
        self.max_bytes
    }

    /// Whether `size_bytes` lies in the range.
    pub fn contains(self, size_bytes: u32) -> bool {
        (self.min_bytes..=self.max_bytes).contains(&size_bytes)
    }
}

impl fmt::Display for ChurnSizes {
    /// `16 B..=4 KiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..={}",
            power_of_two_bytes(self.min_bytes),
            power_of_two_bytes(self.max_bytes)
        )
    }
}

/// `16 B`, `4 KiB`, `1 MiB`: a size in the largest binary unit that
/// divides it.
fn power_of_two_bytes(size_bytes: u32) -> String {
    const KIB: u32 = 1 << 10;
    const MIB: u32 = 1 << 20;
    if size_bytes >= MIB && size_bytes.is_multiple_of(MIB) {
        format!("{} MiB", size_bytes / MIB)
    } else if size_bytes >= KIB && size_bytes.is_multiple_of(KIB) {
        format!("{} KiB", size_bytes / KIB)
    } else {
        format!("{size_bytes} B")
    }
}

/// The raw allocation interface every benchmarked allocator is driven
/// through, so that they all pay the same call overhead.
pub trait RawAlloc: Sync {
    /// A block of `layout` (non-zero size), or null if the allocator refused.
    fn alloc(&self, layout: Layout) -> *mut u8;

    /// Frees a block.
    ///
    /// # Safety
    /// `ptr` must come from [`RawAlloc::alloc`] on this allocator with this
    /// same `layout`, and must not have been freed yet.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout);
}

/// The hybrid pool through its `allocator-api2` `Allocator` impl on
/// `&HybridPool`.
impl RawAlloc for HybridPool {
    #[inline]
    fn alloc(&self, layout: Layout) -> *mut u8 {
        match <&HybridPool as Allocator>::allocate(&self, layout) {
            Ok(block) => block.as_ptr().cast::<u8>(),
            Err(_) => std::ptr::null_mut(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(ptr) = NonNull::new(ptr) else {
            return;
        };
        // SAFETY: the caller guarantees `ptr` came from `allocate` on this
        // pool with `layout` and is live.
        unsafe { <&HybridPool as Allocator>::deallocate(&self, ptr, layout) }
    }
}

/// Any `GlobalAlloc` used as a value (not as the program's global
/// allocator), e.g. `ViaGlobalAlloc(&mimalloc::MiMalloc)`.
#[derive(Clone, Copy, Debug)]
pub struct ViaGlobalAlloc<'a, A>(pub &'a A);

impl<A: GlobalAlloc + Sync> RawAlloc for ViaGlobalAlloc<'_, A> {
    #[inline]
    fn alloc(&self, layout: Layout) -> *mut u8 {
        debug_assert!(layout.size() > 0, "zero-size layout {layout:?}");
        // SAFETY: every layout the churn asks for has a non-zero size.
        unsafe { self.0.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from `alloc` on this
        // allocator with `layout` and is live.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// One step of a churn: free `slot`, then allocate `size_bytes` into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChurnStep {
    /// The working-set slot whose block is freed and replaced.
    pub slot: u32,
    /// Bytes of the new block.
    pub size_bytes: u32,
}

/// A pre-generated churn: the working set's starting sizes and the steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChurnPlan {
    fill_sizes: Vec<u32>,
    steps: Vec<ChurnStep>,
}

impl ChurnPlan {
    /// `slots` starting blocks and `steps` steps, all drawn from `seed`:
    /// slots uniformly, sizes with [`log_uniform_size`] over `sizes`.
    ///
    /// # Panics
    /// If `slots` is 0 or above `u32::MAX`.
    pub fn generate(seed: u64, slots: usize, steps: usize, sizes: ChurnSizes) -> ChurnPlan {
        assert!(
            slots > 0 && slots <= u32::MAX as usize,
            "slots {slots} must lie in 1..={}",
            u32::MAX
        );
        let mut rng = SmallRng::seed_from_u64(seed);
        let fill_sizes = (0..slots)
            .map(|_| log_uniform_size(&mut rng, sizes))
            .collect();
        let steps = (0..steps)
            .map(|_| ChurnStep {
                slot: rng.gen_range(0..slots as u32),
                size_bytes: log_uniform_size(&mut rng, sizes),
            })
            .collect();
        ChurnPlan { fill_sizes, steps }
    }

    /// A plan with the given starting sizes and steps (e.g. a workload of
    /// one size range).
    ///
    /// # Panics
    /// If there are no slots, a size is outside
    /// `CHURN_SIZE_BYTES_MIN..=CHURN_SIZE_BYTES_MAX`, or a step names a slot
    /// past the working set.
    pub fn from_parts(fill_sizes: Vec<u32>, steps: Vec<ChurnStep>) -> ChurnPlan {
        let sizes = ChurnSizes::FULL.min_bytes..=ChurnSizes::FULL.max_bytes;
        assert!(
            !fill_sizes.is_empty() && fill_sizes.len() <= u32::MAX as usize,
            "{} slots",
            fill_sizes.len()
        );
        if let Some(size) = fill_sizes.iter().find(|s| !sizes.contains(s)) {
            panic!("starting size {size} outside {sizes:?}");
        }
        if let Some(step) = steps
            .iter()
            .find(|s| !sizes.contains(&s.size_bytes) || s.slot as usize >= fill_sizes.len())
        {
            panic!(
                "step {step:?} outside sizes {sizes:?} or {} slots",
                fill_sizes.len()
            );
        }
        ChurnPlan { fill_sizes, steps }
    }

    /// Live blocks the working set holds.
    pub fn slots(&self) -> usize {
        self.fill_sizes.len()
    }

    /// Starting size of each slot.
    pub fn fill_sizes(&self) -> &[u32] {
        &self.fill_sizes
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[ChurnStep] {
        &self.steps
    }

    /// Mean size of the blocks the steps allocate (0 with no steps).
    pub fn mean_step_size_bytes(&self) -> f64 {
        if self.steps.is_empty() {
            return 0.0;
        }
        self.steps
            .iter()
            .map(|s| f64::from(s.size_bytes))
            .sum::<f64>()
            / self.steps.len() as f64
    }
}

/// A size whose base-2 logarithm is uniform over
/// `log2(sizes.min_bytes())..=log2(sizes.max_bytes())`, rounded to whole
/// bytes.
pub fn log_uniform_size(rng: &mut SmallRng, sizes: ChurnSizes) -> u32 {
    // Both bounds are powers of two, so these are their exact logarithms.
    let low = f64::from(sizes.min_bytes.trailing_zeros());
    let high = f64::from(sizes.max_bytes.trailing_zeros());
    let size = rng.gen_range(low..=high).exp2().round();
    (size as u32).clamp(sizes.min_bytes, sizes.max_bytes)
}

/// Why a churn stopped. The worker's live blocks are then leaked, not
/// freed: after a tag mismatch, freeing could corrupt the allocator.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChurnError {
    /// The allocator returned null.
    AllocFailed {
        /// Allocations done before this one.
        allocs_done: u64,
        /// Bytes asked for.
        size_bytes: u32,
    },
    /// The allocator returned a block not aligned as asked.
    Misaligned {
        /// The block's address.
        addr: usize,
        /// Bytes asked for.
        size_bytes: u32,
        /// Alignment asked for.
        align_bytes: usize,
    },
    /// A block's first or last byte changed while it was live: another
    /// live block shares its memory.
    TagMismatch {
        /// The slot holding the block.
        slot: u32,
        /// The block's address.
        addr: usize,
        /// The block's size.
        size_bytes: u32,
        /// The tag written when it was allocated.
        expected: u8,
        /// What its first byte holds now.
        found_first: u8,
        /// What its last byte holds now.
        found_last: u8,
    },
}

impl fmt::Display for ChurnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChurnError::AllocFailed {
                allocs_done,
                size_bytes,
            } => write!(
                f,
                "allocation of {size_bytes} bytes returned null after {allocs_done} allocations"
            ),
            ChurnError::Misaligned {
                addr,
                size_bytes,
                align_bytes,
            } => write!(
                f,
                "block of {size_bytes} bytes at {addr:#x} is not aligned to {align_bytes}"
            ),
            ChurnError::TagMismatch {
                slot,
                addr,
                size_bytes,
                expected,
                found_first,
                found_last,
            } => write!(
                f,
                "live block of slot {slot} ({size_bytes} bytes at {addr:#x}) was overwritten: \
                 tag {expected:#04x} expected, first byte {found_first:#04x}, last byte \
                 {found_last:#04x} (two live blocks overlap)"
            ),
        }
    }
}

impl std::error::Error for ChurnError {}

/// One live block of a worker.
#[derive(Clone, Copy, Debug)]
struct LiveBlock {
    ptr: *mut u8,
    size_bytes: u32,
    tag: u8,
}

/// Replays a [`ChurnPlan`] on one allocator, on one thread.
///
/// A worker dropped without [`ChurnWorker::drain`] leaks its blocks.
pub struct ChurnWorker<'a, A: RawAlloc + ?Sized> {
    allocator: &'a A,
    live: Vec<LiveBlock>,
    allocs: u64,
    frees: u64,
}

impl<A: RawAlloc + ?Sized> fmt::Debug for ChurnWorker<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChurnWorker")
            .field("live", &self.live.len())
            .field("allocs", &self.allocs)
            .field("frees", &self.frees)
            .finish()
    }
}

/// A tag byte for the `seq`-th allocation: a multiplicative hash, so tags of
/// blocks allocated close together differ.
#[inline]
fn tag_for(seq: u64) -> u8 {
    (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

impl<'a, A: RawAlloc + ?Sized> ChurnWorker<'a, A> {
    /// Allocates the plan's starting working set on `allocator`.
    pub fn fill(allocator: &'a A, plan: &ChurnPlan) -> Result<Self, ChurnError> {
        let mut worker = ChurnWorker {
            allocator,
            live: Vec::with_capacity(plan.slots()),
            allocs: 0,
            frees: 0,
        };
        for &size_bytes in plan.fill_sizes() {
            let block = worker.alloc_block(size_bytes)?;
            worker.live.push(block);
        }
        Ok(worker)
    }

    /// Allocations done so far (the fill included).
    pub fn allocs(&self) -> u64 {
        self.allocs
    }

    /// Frees done so far.
    pub fn frees(&self) -> u64 {
        self.frees
    }

    /// Live blocks.
    pub fn live_blocks(&self) -> usize {
        self.live.len()
    }

    /// Bytes of the live blocks.
    pub fn live_bytes(&self) -> u64 {
        self.live.iter().map(|b| u64::from(b.size_bytes)).sum()
    }

    #[inline]
    fn alloc_block(&mut self, size_bytes: u32) -> Result<LiveBlock, ChurnError> {
        let layout = churn_layout(size_bytes);
        let ptr = self.allocator.alloc(layout);
        if ptr.is_null() {
            return Err(ChurnError::AllocFailed {
                allocs_done: self.allocs,
                size_bytes,
            });
        }
        if !(ptr as usize).is_multiple_of(CHURN_ALIGN_BYTES) {
            return Err(ChurnError::Misaligned {
                addr: ptr as usize,
                size_bytes,
                align_bytes: CHURN_ALIGN_BYTES,
            });
        }
        let tag = tag_for(self.allocs);
        self.allocs += 1;
        // SAFETY: the block is `size_bytes >= 2` bytes, just allocated.
        unsafe {
            ptr.write(tag);
            ptr.add(size_bytes as usize - 1).write(tag);
        }
        Ok(LiveBlock {
            ptr,
            size_bytes,
            tag,
        })
    }

    /// Checks a block's tags, then frees it.
    #[inline]
    fn free_block(&mut self, slot: u32, block: LiveBlock) -> Result<(), ChurnError> {
        // SAFETY: the block is live and `size_bytes >= 2` bytes long.
        let (first, last) = unsafe {
            (
                block.ptr.read(),
                block.ptr.add(block.size_bytes as usize - 1).read(),
            )
        };
        if first != block.tag || last != block.tag {
            return Err(ChurnError::TagMismatch {
                slot,
                addr: block.ptr as usize,
                size_bytes: block.size_bytes,
                expected: block.tag,
                found_first: first,
                found_last: last,
            });
        }
        // SAFETY: allocated by this worker's allocator with this layout,
        // and removed from the working set, so freed once.
        unsafe {
            self.allocator
                .dealloc(block.ptr, churn_layout(block.size_bytes))
        };
        self.frees += 1;
        Ok(())
    }

    /// Replays `steps`: for each, checks and frees the slot's block, then
    /// allocates the new size into the slot.
    ///
    /// # Panics
    /// If a step names a slot outside the working set.
    #[inline]
    pub fn run(&mut self, steps: &[ChurnStep]) -> Result<(), ChurnError> {
        for step in steps {
            let old = self.live[step.slot as usize];
            self.free_block(step.slot, old)?;
            match self.alloc_block(step.size_bytes) {
                Ok(block) => self.live[step.slot as usize] = block,
                Err(error) => {
                    // The slot's block is gone: drop it from the set so
                    // nothing frees it again, and keep the rest leaked.
                    self.live.swap_remove(step.slot as usize);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Checks and frees every live block.
    pub fn drain(mut self) -> Result<(), ChurnError> {
        while let Some(block) = self.live.pop() {
            let slot = self.live.len() as u32;
            self.free_block(slot, block)?;
        }
        Ok(())
    }
}

/// The layout of a churn block of `size_bytes`.
#[inline]
pub fn churn_layout(size_bytes: u32) -> Layout {
    debug_assert!(size_bytes > 0);
    // Sizes are at most 1 MiB and the alignment a power of two: never fails.
    Layout::from_size_align(size_bytes as usize, CHURN_ALIGN_BYTES)
        .expect("churn sizes are small and the alignment a power of two")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    #[test]
    fn sizes_cover_every_octave_about_equally() {
        for (seed, sizes) in [(11, ChurnSizes::FULL), (12, ChurnSizes::SMALL)] {
            let mut rng = SmallRng::seed_from_u64(seed);
            let octaves =
                (sizes.max_bytes().trailing_zeros() - sizes.min_bytes().trailing_zeros()) as usize;
            let mut counts = vec![0u32; octaves + 1];
            let draws = 160_000;
            for _ in 0..draws {
                let size = log_uniform_size(&mut rng, sizes);
                assert!(
                    sizes.contains(size),
                    "seed {seed}: size {size} outside {sizes}"
                );
                let octave = (size.ilog2() - sizes.min_bytes().trailing_zeros()) as usize;
                counts[octave] += 1;
            }
            // Octaves below the top each get 1/octaves of the draws (the
            // top "octave" is the single size max_bytes, hit by rounding).
            let expected = draws as f64 / octaves as f64;
            for (octave, &count) in counts[..octaves].iter().enumerate() {
                let error = (f64::from(count) - expected).abs() / expected;
                assert!(
                    error < 0.05,
                    "seed {seed}, {sizes}: octave {octave}: {count} of {draws}, expected \
                     {expected}"
                );
            }
        }
    }

    #[test]
    fn plans_are_reproducible_and_in_range() {
        // E[2^U], U uniform on [a, b]: (2^b - 2^a) / ((b - a) ln 2).
        // [4, 20]: 94,548; [4, 12]: 735.8.
        for (sizes, expected_mean) in [(ChurnSizes::FULL, 94_548.0), (ChurnSizes::SMALL, 735.8)] {
            let a = ChurnPlan::generate(5, 100, 10_000, sizes);
            assert_eq!(a, ChurnPlan::generate(5, 100, 10_000, sizes));
            assert_ne!(a, ChurnPlan::generate(6, 100, 10_000, sizes));
            assert!(a.steps().iter().all(|s| (s.slot as usize) < a.slots()));
            assert!(a.fill_sizes().iter().all(|&s| sizes.contains(s)), "{sizes}");
            assert!(
                a.steps().iter().all(|s| sizes.contains(s.size_bytes)),
                "{sizes}"
            );
            let mean = a.mean_step_size_bytes();
            assert!(
                (mean - expected_mean).abs() < 0.1 * expected_mean,
                "{sizes}: mean {mean}, expected {expected_mean}"
            );
        }
    }

    #[test]
    fn size_ranges_print_in_binary_units() {
        assert_eq!(ChurnSizes::FULL.to_string(), "16 B..=1 MiB");
        assert_eq!(ChurnSizes::SMALL.to_string(), "16 B..=4 KiB");
        assert_eq!(ChurnSizes::new(32, 32).to_string(), "32 B..=32 B");
        assert_eq!(ChurnSizes::new(16, 4096), ChurnSizes::SMALL);
    }

    #[test]
    #[should_panic(expected = "sizes 16..=3000 must be powers of two")]
    fn size_ranges_need_power_of_two_bounds() {
        let _ = ChurnSizes::new(16, 3000);
    }

    #[test]
    #[should_panic(expected = "sizes 8..=64 must be powers of two, ordered, inside 16")]
    fn size_ranges_stay_inside_the_churn_limits() {
        let _ = ChurnSizes::new(8, 64);
    }

    #[test]
    fn from_parts_keeps_a_valid_plan() {
        let steps = vec![ChurnStep {
            slot: 1,
            size_bytes: 4096,
        }];
        let plan = ChurnPlan::from_parts(vec![16, 32], steps.clone());
        assert_eq!((plan.slots(), plan.steps()), (2, &steps[..]));
        assert_eq!(plan.mean_step_size_bytes(), 4096.0);
    }

    #[test]
    #[should_panic(expected = "outside sizes")]
    fn from_parts_refuses_a_slot_past_the_working_set() {
        let steps = vec![ChurnStep {
            slot: 2,
            size_bytes: 64,
        }];
        let _ = ChurnPlan::from_parts(vec![16, 32], steps);
    }

    /// Hands out the same block twice after `after` allocations.
    struct DoubleHandOut {
        allocs: AtomicUsize,
        after: usize,
        kept: AtomicUsize,
    }

    impl RawAlloc for DoubleHandOut {
        fn alloc(&self, layout: Layout) -> *mut u8 {
            let n = self.allocs.fetch_add(1, Relaxed);
            let kept = self.kept.load(Relaxed);
            if n > self.after && kept != 0 {
                return kept as *mut u8;
            }
            // Every block is 1 MiB, so any two share their first byte.
            let big =
                Layout::from_size_align(CHURN_SIZE_BYTES_MAX as usize, layout.align()).unwrap();
            // SAFETY: non-zero layout; these blocks are leaked on purpose.
            let ptr = unsafe { System.alloc(big) };
            if n == self.after {
                self.kept.store(ptr as usize, Relaxed);
            }
            ptr
        }

        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
    }

    #[test]
    fn a_double_hand_out_is_caught() {
        let plan = ChurnPlan::generate(3, 16, 2_000, ChurnSizes::FULL);
        let allocator = DoubleHandOut {
            allocs: AtomicUsize::new(0),
            after: 20,
            kept: AtomicUsize::new(0),
        };
        let mut worker = ChurnWorker::fill(&allocator, &plan).unwrap();
        let error = worker.run(plan.steps()).unwrap_err();
        assert!(matches!(error, ChurnError::TagMismatch { .. }), "{error}");
    }

    #[test]
    fn counts_match_the_plan() {
        let plan = ChurnPlan::generate(9, 32, 500, ChurnSizes::SMALL);
        let system = ViaGlobalAlloc(&System);
        let mut worker = ChurnWorker::fill(&system, &plan).unwrap();
        assert_eq!(worker.live_blocks(), 32);
        worker.run(&plan.steps()[..200]).unwrap();
        worker.run(&plan.steps()[200..]).unwrap();
        assert_eq!((worker.allocs(), worker.frees()), (532, 500));
        worker.drain().unwrap();
    }
}
