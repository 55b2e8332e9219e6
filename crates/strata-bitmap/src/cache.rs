//! The allocation cache: a magazine of pre-claimed blocks.

use crate::{BitmapError, Block, BlockBitmap, MAGAZINE_REFILL_BLOCKS, MAGAZINE_WORDS};

/// A magazine of blocks claimed from a [`BlockBitmap`] a word at a time.
///
/// Claimed blocks are marked allocated in the bitmap, so nothing is handed
/// out twice; [`BlockCache::alloc`] pops one with no search. A freed block
/// whose word the magazine holds goes back into the magazine (a double
/// free is detected exactly: the block's bit is already in the magazine);
/// any other freed block goes straight to the bitmap. The magazine returns
/// its blocks in bulk, one word OR at a time, on [`BlockCache::drain`] and
/// on drop.
///
/// ```
/// use strata_bitmap::BlockBitmap;
///
/// let mut bitmap = BlockBitmap::new(4096)?;
/// {
///     let mut cache = bitmap.cache();
///     let a = cache.alloc().unwrap();
///     let b = cache.alloc().unwrap();
///     assert_eq!(b.index(), a.index() + 1);
///     cache.free(a)?;
///     assert!(cache.free(a).is_err()); // double free, caught by the magazine
/// } // dropping the cache returns its blocks
/// assert_eq!(bitmap.allocated_blocks(), 1);
/// # Ok::<(), strata_bitmap::BitmapError>(())
/// ```
pub struct BlockCache<'a> {
    bitmap: &'a mut BlockBitmap,
    /// `(word index, blocks of that word held here)`, a stack: the entry
    /// at `len - 1` serves allocations.
    words: [(u64, u64); MAGAZINE_WORDS],
    len: usize,
}

impl BlockBitmap {
    /// A magazine cache in front of this bitmap.
    pub fn cache(&mut self) -> BlockCache<'_> {
        BlockCache {
            bitmap: self,
            words: [(0, 0); MAGAZINE_WORDS],
            len: 0,
        }
    }
}

impl BlockCache<'_> {
    /// Allocate one block from the magazine, refilling it from the bitmap
    /// (next-fit, a word at a time) when empty.
    #[inline]
    pub fn alloc(&mut self) -> Option<Block> {
        loop {
            if self.len == 0 && !self.refill() {
                return None;
            }
            let (word, mask) = &mut self.words[self.len - 1];
            if *mask != 0 {
                let bit = mask.trailing_zeros();
                *mask &= *mask - 1;
                return Some(Block(*word * 64 + bit as u64));
            }
            self.len -= 1;
        }
    }

    fn refill(&mut self) -> bool {
        let mut claimed = 0u64;
        while self.len < MAGAZINE_WORDS && claimed < MAGAZINE_REFILL_BLOCKS {
            match self.bitmap.claim_word() {
                Some((word, mask)) => {
                    self.words[self.len] = (word, mask);
                    self.len += 1;
                    claimed += mask.count_ones() as u64;
                }
                None => break,
            }
        }
        // Lowest addresses on top of the stack, so sequential allocation
        // stays sequential.
        self.words[..self.len].reverse();
        self.len > 0
    }

    /// Free one block: into the magazine if it holds the block's word,
    /// otherwise to the bitmap. Errors as [`BlockBitmap::free`].
    #[inline]
    pub fn free(&mut self, block: Block) -> Result<(), BitmapError> {
        if block.0 >= self.bitmap.capacity_blocks() {
            return Err(BitmapError::OutOfRange {
                block: block.0,
                capacity_blocks: self.bitmap.capacity_blocks(),
            });
        }
        let word = block.0 / 64;
        let bit = 1u64 << (block.0 % 64);
        if let Some(i) = self.words[..self.len].iter().position(|&(w, _)| w == word) {
            // The magazine claimed every free block of this word, so the
            // bitmap holds none free: the block is allocated, reserved, or
            // (if its bit is in the mask) already back in the magazine.
            if self.words[i].1 & bit != 0 {
                return Err(BitmapError::NotAllocated { block: block.0 });
            }
            if self.bitmap.is_reserved(block.0) {
                return Err(BitmapError::Reserved { block: block.0 });
            }
            self.words[i].1 |= bit;
            return Ok(());
        }
        self.bitmap.free(block)
    }

    /// Blocks in the magazine now.
    pub fn cached_blocks(&self) -> u64 {
        self.words[..self.len]
            .iter()
            .map(|&(_, m)| m.count_ones() as u64)
            .sum()
    }

    /// Return every cached block to the bitmap, a word at a time.
    pub fn drain(&mut self) {
        for &(word, mask) in &self.words[..self.len] {
            self.bitmap.release_word(word, mask);
        }
        self.len = 0;
    }

    /// The bitmap, after draining the magazine into it.
    pub fn bitmap(&mut self) -> &mut BlockBitmap {
        self.drain();
        self.bitmap
    }
}

impl Drop for BlockCache<'_> {
    fn drop(&mut self) {
        self.drain();
    }
}
