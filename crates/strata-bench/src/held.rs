//! The harness's own record of which blocks it holds, used to catch an
//! allocator handing out a block twice.

/// Bits per word of the held sets.
const WORD_BITS: u64 = u64::BITS as u64;

/// One bit per block: set while the harness holds the block.
#[derive(Clone, Debug)]
pub(crate) struct HeldSet {
    words: Vec<u64>,
    capacity_blocks: u64,
    held_blocks: u64,
}

impl HeldSet {
    /// An empty set over `capacity_blocks` blocks.
    pub(crate) fn new(capacity_blocks: u64) -> Self {
        let words = capacity_blocks.div_ceil(WORD_BITS) as usize;
        HeldSet {
            words: vec![0; words],
            capacity_blocks,
            held_blocks: 0,
        }
    }

    /// Blocks currently in the set.
    pub(crate) fn held_blocks(&self) -> u64 {
        self.held_blocks
    }

    /// Whether `block` is held; blocks past the capacity count as held (an
    /// allocator must never hand them out).
    #[inline]
    pub(crate) fn contains(&self, block: u64) -> bool {
        block >= self.capacity_blocks
            || self.words[(block / WORD_BITS) as usize] >> (block % WORD_BITS) & 1 == 1
    }

    /// Adds `block`; `false` (and no change) if it was already held or lies
    /// past the capacity — either way the allocator handed out a bad block.
    #[inline]
    pub(crate) fn insert(&mut self, block: u64) -> bool {
        if block >= self.capacity_blocks {
            return false;
        }
        let word = &mut self.words[(block / WORD_BITS) as usize];
        let mask = 1u64 << (block % WORD_BITS);
        if *word & mask != 0 {
            return false;
        }
        *word |= mask;
        self.held_blocks += 1;
        true
    }

    /// Removes `block`; `false` (and no change) if it was not held.
    #[inline]
    pub(crate) fn remove(&mut self, block: u64) -> bool {
        if block >= self.capacity_blocks {
            return false;
        }
        let word = &mut self.words[(block / WORD_BITS) as usize];
        let mask = 1u64 << (block % WORD_BITS);
        if *word & mask == 0 {
            return false;
        }
        *word &= !mask;
        self.held_blocks -= 1;
        true
    }

    /// Adds `start..start + len`. On failure nothing changes and the first
    /// block that was already held (or past the capacity) is returned.
    pub(crate) fn insert_range(&mut self, start: u64, len: u64) -> Result<(), u64> {
        let end = start.checked_add(len).ok_or(start)?;
        if end > self.capacity_blocks {
            return Err(start.max(self.capacity_blocks));
        }
        let mut conflict = None;
        for_each_word(start, end, |index, mask| {
            let overlap = self.words[index] & mask;
            if overlap != 0 && conflict.is_none() {
                conflict = Some(index as u64 * WORD_BITS + u64::from(overlap.trailing_zeros()));
            }
        });
        if let Some(block) = conflict {
            return Err(block);
        }
        for_each_word(start, end, |index, mask| self.words[index] |= mask);
        self.held_blocks += len;
        Ok(())
    }

    /// Removes `start..start + len`. On failure nothing changes and the first
    /// block that was not held is returned.
    pub(crate) fn remove_range(&mut self, start: u64, len: u64) -> Result<(), u64> {
        let end = start.checked_add(len).ok_or(start)?;
        if end > self.capacity_blocks {
            return Err(start.max(self.capacity_blocks));
        }
        let mut missing = None;
        for_each_word(start, end, |index, mask| {
            let absent = !self.words[index] & mask;
            if absent != 0 && missing.is_none() {
                missing = Some(index as u64 * WORD_BITS + u64::from(absent.trailing_zeros()));
            }
        });
        if let Some(block) = missing {
            return Err(block);
        }
        for_each_word(start, end, |index, mask| self.words[index] &= !mask);
        self.held_blocks -= len;
        Ok(())
    }
}

/// Calls `f(word_index, mask)` for each 64-bit word that `start..end`
/// touches, with the mask of the range's bits in that word.
pub(crate) fn for_each_word(start: u64, end: u64, mut f: impl FnMut(usize, u64)) {
    let mut block = start;
    while block < end {
        let offset = block % WORD_BITS;
        let bits = (WORD_BITS - offset).min(end - block);
        let mask = if bits == WORD_BITS {
            u64::MAX
        } else {
            ((1u64 << bits) - 1) << offset
        };
        f((block / WORD_BITS) as usize, mask);
        block += bits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_blocks() {
        let mut set = HeldSet::new(130);
        assert!(set.insert(0));
        assert!(set.insert(129));
        assert!(!set.insert(129));
        assert!(!set.insert(130));
        assert_eq!(set.held_blocks(), 2);
        assert!(set.remove(0));
        assert!(!set.remove(0));
        assert_eq!(set.held_blocks(), 1);
    }

    #[test]
    fn ranges_report_the_first_conflict_and_change_nothing() {
        let mut set = HeldSet::new(300);
        assert_eq!(set.insert_range(60, 80), Ok(()));
        assert_eq!(set.insert_range(0, 61), Err(60));
        assert_eq!(set.insert_range(139, 5), Err(139));
        assert_eq!(set.insert_range(290, 11), Err(300));
        assert_eq!(set.held_blocks(), 80);
        assert_eq!(set.remove_range(50, 20), Err(50));
        assert_eq!(set.remove_range(130, 20), Err(140));
        assert_eq!(set.held_blocks(), 80);
        assert_eq!(set.remove_range(60, 80), Ok(()));
        assert_eq!(set.held_blocks(), 0);
        assert!(set.words.iter().all(|w| *w == 0));
    }
}
