//! The baseline allocator: a flat bit vector with first-fit linear scans.

use std::fmt;
use std::ops::Range;

use crate::held::for_each_word;

/// Bits per bitmap word.
const WORD_BITS: u64 = u64::BITS as u64;

/// A plain bit vector allocator, the baseline the `bitmap` suite measures
/// Strata's hierarchical bitmap against.
///
/// One bit per block in a `Vec<u64>` (1 = allocated). [`FlatBitmap::alloc`]
/// scans from word 0 for the first word with a clear bit (first fit);
/// [`FlatBitmap::alloc_extent`] scans from block 0 for the first run of `len`
/// clear bits, a word at a time. There is no summary, hint or cache, so a
/// scan's cost grows with how much of the front of the bitmap is full.
///
/// Accounting: `allocated_blocks() + free_blocks() == capacity_blocks()`.
/// Bits past the capacity in the last word are kept set and never counted.
#[derive(Clone, Debug)]
pub struct FlatBitmap {
    words: Vec<u64>,
    capacity_blocks: u64,
    allocated_blocks: u64,
}

/// Why a [`FlatBitmap`] operation was refused. A refused operation changes
/// nothing.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlatError {
    /// A block, or the end of a range, lies past the capacity.
    OutOfRange {
        /// The first offending block.
        block: u64,
        /// The bitmap's capacity in blocks.
        capacity_blocks: u64,
    },
    /// Freeing a block that is not allocated.
    NotAllocated {
        /// The first free block of the request.
        block: u64,
    },
    /// Marking a block allocated that already is.
    AlreadyAllocated {
        /// The first allocated block of the request.
        block: u64,
    },
    /// A range of zero blocks.
    ZeroLength,
}

impl fmt::Display for FlatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlatError::OutOfRange {
                block,
                capacity_blocks,
            } => write!(
                f,
                "block {block} is out of range (capacity {capacity_blocks} blocks)"
            ),
            FlatError::NotAllocated { block } => write!(f, "block {block} is not allocated"),
            FlatError::AlreadyAllocated { block } => {
                write!(f, "block {block} is already allocated")
            }
            FlatError::ZeroLength => write!(f, "range of zero blocks"),
        }
    }
}

impl std::error::Error for FlatError {}

impl FlatBitmap {
    /// An empty bitmap of `capacity_blocks` blocks (may be zero).
    pub fn new(capacity_blocks: u64) -> Self {
        let word_count = capacity_blocks.div_ceil(WORD_BITS);
        let mut words = vec![0u64; usize::try_from(word_count).expect("capacity fits in memory")];
        let tail_bits = capacity_blocks % WORD_BITS;
        if tail_bits != 0 {
            // Blocks past the capacity read as allocated, so no scan returns them.
            *words.last_mut().expect("tail_bits != 0 implies a word") = !0u64 << tail_bits;
        }
        FlatBitmap {
            words,
            capacity_blocks,
            allocated_blocks: 0,
        }
    }

    /// Blocks the bitmap covers.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }

    /// Blocks currently allocated.
    pub fn allocated_blocks(&self) -> u64 {
        self.allocated_blocks
    }

    /// Blocks currently free.
    pub fn free_blocks(&self) -> u64 {
        self.capacity_blocks - self.allocated_blocks
    }

    /// Whether `block` is allocated (`false` past the capacity).
    pub fn is_allocated(&self, block: u64) -> bool {
        block < self.capacity_blocks && self.bit(block)
    }

    /// Allocates the lowest free block, scanning from word 0.
    pub fn alloc(&mut self) -> Option<u64> {
        let (index, word) = self
            .words
            .iter()
            .enumerate()
            .find(|(_, word)| **word != u64::MAX)?;
        let bit = u64::from(word.trailing_ones());
        self.words[index] |= 1 << bit;
        self.allocated_blocks += 1;
        Some(index as u64 * WORD_BITS + bit)
    }

    /// Allocates the lowest run of `len` free blocks, scanning from block 0.
    /// Returns the run's blocks, or `None` if `len` is zero or no run is long
    /// enough.
    pub fn alloc_extent(&mut self, len: u64) -> Option<Range<u64>> {
        let start = self.find_run(len)?;
        self.set_range(start, start + len);
        self.allocated_blocks += len;
        Some(start..start + len)
    }

    /// Marks exactly `range` allocated — a setup helper that lets a benchmark
    /// give the baseline the same starting layout as the allocator it is
    /// compared with. Refused, changing nothing, if any block of `range` is
    /// already allocated.
    pub fn alloc_range(&mut self, range: Range<u64>) -> Result<(), FlatError> {
        self.check_range(&range)?;
        if let Some(block) = range.clone().find(|&block| self.bit(block)) {
            return Err(FlatError::AlreadyAllocated { block });
        }
        self.set_range(range.start, range.end);
        self.allocated_blocks += range.end - range.start;
        Ok(())
    }

    /// Frees one allocated block.
    pub fn free(&mut self, block: u64) -> Result<(), FlatError> {
        self.free_range(block..block + 1)
    }

    /// Frees every block of `range`, all of which must be allocated.
    pub fn free_range(&mut self, range: Range<u64>) -> Result<(), FlatError> {
        self.check_range(&range)?;
        if let Some(block) = range.clone().find(|&block| !self.bit(block)) {
            return Err(FlatError::NotAllocated { block });
        }
        self.clear_range(range.start, range.end);
        self.allocated_blocks -= range.end - range.start;
        Ok(())
    }

    /// Counts the set bits below the capacity; equals `allocated_blocks()`
    /// unless the bitmap is corrupt. O(capacity / 64).
    pub fn count_allocated(&self) -> u64 {
        let ones: u64 = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        let tail_bits = self.capacity_blocks % WORD_BITS;
        let padding = if tail_bits == 0 {
            0
        } else {
            WORD_BITS - tail_bits
        };
        ones - padding
    }

    fn check_range(&self, range: &Range<u64>) -> Result<(), FlatError> {
        if range.start >= range.end {
            return Err(FlatError::ZeroLength);
        }
        if range.end > self.capacity_blocks {
            return Err(FlatError::OutOfRange {
                block: range.start.max(self.capacity_blocks),
                capacity_blocks: self.capacity_blocks,
            });
        }
        Ok(())
    }

    fn bit(&self, block: u64) -> bool {
        self.words[(block / WORD_BITS) as usize] >> (block % WORD_BITS) & 1 == 1
    }

    /// First block of the lowest run of `len` clear bits. Walks the words in
    /// order, keeping the length of the clear run that reaches the current
    /// position; full words are skipped with one comparison.
    fn find_run(&self, len: u64) -> Option<u64> {
        if len == 0 || len > self.capacity_blocks {
            return None;
        }
        let mut run_start = 0u64;
        let mut run_len = 0u64;
        for (index, &word) in self.words.iter().enumerate() {
            let base = index as u64 * WORD_BITS;
            if word == u64::MAX {
                run_len = 0;
                continue;
            }
            if word == 0 {
                if run_len == 0 {
                    run_start = base;
                }
                run_len += WORD_BITS;
                if run_len >= len {
                    return Some(run_start);
                }
                continue;
            }
            // Mixed word: walk its alternating runs of clear and set bits.
            let mut bit = 0u64;
            while bit < WORD_BITS {
                let rest = word >> bit;
                let clear = u64::from(rest.trailing_zeros()).min(WORD_BITS - bit);
                if clear > 0 {
                    if run_len == 0 {
                        run_start = base + bit;
                    }
                    run_len += clear;
                    if run_len >= len {
                        return Some(run_start);
                    }
                    bit += clear;
                }
                if bit < WORD_BITS {
                    let set = u64::from((word >> bit).trailing_ones());
                    run_len = 0;
                    bit += set;
                }
            }
        }
        None
    }

    fn set_range(&mut self, start: u64, end: u64) {
        for_each_word(start, end, |index, mask| self.words[index] |= mask);
    }

    fn clear_range(&mut self, start: u64, end: u64) {
        for_each_word(start, end, |index, mask| self.words[index] &= !mask);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Naive model: one bool per block, first fit by linear search.
    struct Model {
        bits: Vec<bool>,
    }

    impl Model {
        fn alloc(&mut self) -> Option<u64> {
            let block = self.bits.iter().position(|b| !b)?;
            self.bits[block] = true;
            Some(block as u64)
        }

        fn alloc_extent(&mut self, len: u64) -> Option<Range<u64>> {
            let len = len as usize;
            if len == 0 || len > self.bits.len() {
                return None;
            }
            let start =
                (0..=self.bits.len() - len).find(|&s| self.bits[s..s + len].iter().all(|b| !b))?;
            self.bits[start..start + len].fill(true);
            Some(start as u64..(start + len) as u64)
        }

        fn free_range(&mut self, range: Range<u64>) -> bool {
            let bits = &mut self.bits[range.start as usize..range.end as usize];
            if bits.iter().all(|b| *b) {
                bits.fill(false);
                true
            } else {
                false
            }
        }
    }

    fn check_same(flat: &FlatBitmap, model: &Model, seed: u64) {
        for (block, &allocated) in model.bits.iter().enumerate() {
            assert_eq!(
                flat.is_allocated(block as u64),
                allocated,
                "seed {seed} block {block}"
            );
        }
        let allocated = model.bits.iter().filter(|b| **b).count() as u64;
        assert_eq!(flat.allocated_blocks(), allocated, "seed {seed}");
        assert_eq!(flat.count_allocated(), allocated, "seed {seed}");
        assert_eq!(
            flat.free_blocks(),
            flat.capacity_blocks() - allocated,
            "seed {seed}"
        );
    }

    #[test]
    fn matches_vec_bool_model_under_random_operations() {
        const SEEDS: u64 = 40;
        const OPS: usize = 2_000;
        const EXTENT_LEN_BLOCKS_MAX: u64 = 150;
        for seed in 0..SEEDS {
            let mut rng = SmallRng::seed_from_u64(seed);
            // Capacities that do and do not fill the last word.
            let capacity = [1, 63, 64, 65, 200, 640, 1000][seed as usize % 7];
            let mut flat = FlatBitmap::new(capacity);
            let mut model = Model {
                bits: vec![false; capacity as usize],
            };
            let mut held: Vec<Range<u64>> = Vec::new();
            for _ in 0..OPS {
                match rng.gen_range(0..5) {
                    0 | 1 => {
                        let got = flat.alloc();
                        assert_eq!(got, model.alloc(), "seed {seed}");
                        if let Some(block) = got {
                            held.push(block..block + 1);
                        }
                    }
                    2 => {
                        let len = rng.gen_range(0..=EXTENT_LEN_BLOCKS_MAX);
                        let got = flat.alloc_extent(len);
                        assert_eq!(got, model.alloc_extent(len), "seed {seed} len {len}");
                        held.extend(got);
                    }
                    _ => {
                        if held.is_empty() {
                            continue;
                        }
                        let range = held.swap_remove(rng.gen_range(0..held.len()));
                        assert!(model.free_range(range.clone()), "seed {seed}");
                        assert_eq!(flat.free_range(range.clone()), Ok(()), "seed {seed}");
                        // A second free of the same blocks is refused.
                        assert_eq!(
                            flat.free_range(range.clone()),
                            Err(FlatError::NotAllocated { block: range.start }),
                            "seed {seed}"
                        );
                    }
                }
            }
            check_same(&flat, &model, seed);
        }
    }

    #[test]
    fn alloc_is_first_fit_from_word_zero() {
        let mut flat = FlatBitmap::new(256);
        assert_eq!(flat.alloc_extent(256), Some(0..256));
        assert_eq!(flat.alloc(), None);
        flat.free(200).unwrap();
        flat.free(3).unwrap();
        assert_eq!(flat.alloc(), Some(3));
        assert_eq!(flat.alloc(), Some(200));
        assert_eq!(flat.alloc(), None);
    }

    #[test]
    fn extent_runs_cross_word_boundaries() {
        let mut flat = FlatBitmap::new(300);
        flat.alloc_range(0..60).unwrap();
        flat.alloc_range(70..140).unwrap();
        flat.alloc_range(150..300).unwrap();
        // 60..70 (10 blocks, spans words 0 and 1) and 140..150 (10 blocks).
        assert_eq!(flat.alloc_extent(11), None);
        assert_eq!(flat.alloc_extent(10), Some(60..70));
        assert_eq!(flat.alloc_extent(4), Some(140..144));
        flat.free_range(64..130).unwrap();
        assert_eq!(flat.alloc_extent(66), Some(64..130));
        assert_eq!(flat.free_blocks(), 6);
    }

    #[test]
    fn refusals_change_nothing() {
        let mut flat = FlatBitmap::new(100);
        flat.alloc_range(10..20).unwrap();
        assert_eq!(
            flat.alloc_range(15..30),
            Err(FlatError::AlreadyAllocated { block: 15 })
        );
        assert_eq!(
            flat.free_range(5..15),
            Err(FlatError::NotAllocated { block: 5 })
        );
        assert_eq!(
            flat.free(100),
            Err(FlatError::OutOfRange {
                block: 100,
                capacity_blocks: 100
            })
        );
        assert_eq!(
            flat.alloc_range(90..101).unwrap_err(),
            FlatError::OutOfRange {
                block: 100,
                capacity_blocks: 100
            }
        );
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 5..5;
        assert_eq!(flat.free_range(empty), Err(FlatError::ZeroLength));
        assert_eq!(flat.alloc_extent(0), None);
        assert_eq!(flat.alloc_extent(101), None);
        assert_eq!(flat.allocated_blocks(), 10);
        assert_eq!(flat.count_allocated(), 10);
    }

    #[test]
    fn zero_capacity_is_always_full() {
        let mut flat = FlatBitmap::new(0);
        assert_eq!(flat.alloc(), None);
        assert_eq!(flat.alloc_extent(1), None);
        assert_eq!(flat.free_blocks(), 0);
    }
}
