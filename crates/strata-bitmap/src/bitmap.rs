//! The single-threaded hierarchical bitmap allocator.

use std::ops::Range;

use crate::runs::{self, RunTree};
use crate::summary::ChunkSummary;
use crate::{
    BitmapError, BitmapStats, Block, Extent, CAPACITY_BLOCKS_MAX, CHUNK_BLOCKS, CHUNK_WORDS,
};

/// One 512-block chunk: eight 64-bit words, a set bit meaning a free block.
/// Aligned to a cache line so a chunk is read with one line fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct Chunk {
    pub(crate) words: [u64; CHUNK_WORDS],
}

const _: () = assert!(std::mem::size_of::<Chunk>() == 64);

/// [`BlockBitmap::free_extent`] refreshes stale run summaries itself when
/// at most this many chunks are stale (an extent of up to 512 blocks
/// touches at most two; a few more come from single-block operations).
pub const EAGER_REFRESH_CHUNKS_MAX: usize = 8;

/// A block allocator over a hierarchical bitmap.
///
/// Blocks are numbered `0..capacity_blocks`. Each is in exactly one state:
/// free, allocated (handed out), or reserved (never handed out, never
/// freed). The accounting equation is
///
/// `allocated_blocks + free_blocks + reserved_blocks == capacity_blocks`.
///
/// Structure: words of 64 bits (a set bit is a free block), grouped in
/// chunks of 512 blocks; a summary hierarchy says which chunks have
/// a free block (single-block allocation); a segment forest of per-chunk
/// free-run summaries (prefix, suffix, longest run) lets contiguous requests
/// skip every span that cannot serve them. Run summaries of chunks touched
/// by single-block operations are refreshed lazily, at the next operation
/// that needs runs, so the single-block path never recomputes them;
/// [`BlockBitmap::free_extent`] refreshes the few it leaves stale itself,
/// keeping that work off the allocation path.
///
/// ```
/// use strata_bitmap::{BlockBitmap, Extent};
///
/// let mut bitmap = BlockBitmap::new(10_000)?;
/// bitmap.reserve(0..16)?; // a metadata area, never handed out
/// let block = bitmap.alloc().expect("free blocks remain");
/// assert_eq!(block.index(), 16);
/// let extent = bitmap.alloc_extent(100).expect("a run of 100 exists");
/// assert_eq!(extent, Extent { start: 17, len: 100 });
/// bitmap.free(block)?;
/// assert!(bitmap.free(block).is_err()); // a double free is an error value
/// bitmap.free_extent(extent)?;
/// assert_eq!(bitmap.stats().allocated_blocks, 0);
/// # Ok::<(), strata_bitmap::BitmapError>(())
/// ```
#[derive(Clone, Debug)]
pub struct BlockBitmap {
    capacity_blocks: u64,
    free_blocks: u64,
    reserved_blocks: u64,
    chunks: Vec<Chunk>,
    /// Chunks with at least one free block.
    free_chunks: ChunkSummary,
    runs: RunTree,
    /// One bit per chunk whose run summary in `runs` may be stale.
    dirty_bits: Vec<u64>,
    dirty_list: Vec<usize>,
    /// Sorted, disjoint, non-adjacent reserved ranges.
    reserved: Vec<Range<u64>>,
    /// Next-fit cursor: where the next hint-less allocation starts looking.
    cursor: u64,
}

#[inline]
fn word_mask(from_bit: u64, to_bit: u64) -> u64 {
    // Bits from_bit..to_bit of a word, 0 <= from_bit < to_bit <= 64.
    debug_assert!(from_bit < to_bit && to_bit <= 64);
    let high = if to_bit == 64 {
        u64::MAX
    } else {
        (1u64 << to_bit) - 1
    };
    high & (u64::MAX << from_bit)
}

impl BlockBitmap {
    /// A bitmap of `capacity_blocks` free blocks.
    pub fn new(capacity_blocks: u64) -> Result<Self, BitmapError> {
        Self::check_capacity(capacity_blocks)?;
        let chunk_count = capacity_blocks.div_ceil(CHUNK_BLOCKS) as usize;
        let mut chunks = vec![
            Chunk {
                words: [u64::MAX; CHUNK_WORDS]
            };
            chunk_count
        ];
        let tail_blocks = capacity_blocks - (chunk_count as u64 - 1) * CHUNK_BLOCKS;
        let last = &mut chunks[chunk_count - 1].words;
        for (i, word) in last.iter_mut().enumerate() {
            let lo = i as u64 * 64;
            *word = if lo >= tail_blocks {
                0
            } else if lo + 64 <= tail_blocks {
                u64::MAX
            } else {
                word_mask(0, tail_blocks - lo)
            };
        }
        Ok(Self::from_chunks(capacity_blocks, chunks, Vec::new()))
    }

    pub(crate) fn check_capacity(capacity_blocks: u64) -> Result<(), BitmapError> {
        if capacity_blocks == 0 {
            return Err(BitmapError::CapacityZero);
        }
        if capacity_blocks > CAPACITY_BLOCKS_MAX {
            return Err(BitmapError::CapacityTooLarge {
                requested_blocks: capacity_blocks,
                max_blocks: CAPACITY_BLOCKS_MAX,
            });
        }
        Ok(())
    }

    /// Build every derived structure from the words and reserved ranges.
    /// The caller guarantees bits past the capacity are clear, ranges are
    /// sorted, disjoint, non-adjacent and their blocks' bits clear.
    pub(crate) fn from_chunks(
        capacity_blocks: u64,
        chunks: Vec<Chunk>,
        reserved: Vec<Range<u64>>,
    ) -> Self {
        let chunk_count = chunks.len();
        let mut free_chunks = ChunkSummary::new(chunk_count);
        let mut free_blocks = 0u64;
        let mut leaves = Vec::with_capacity(chunk_count);
        for (c, chunk) in chunks.iter().enumerate() {
            let ones: u64 = chunk.words.iter().map(|w| w.count_ones() as u64).sum();
            if ones > 0 {
                free_chunks.insert(c);
            }
            free_blocks += ones;
            leaves.push(runs::summarize_chunk(&chunk.words));
        }
        let reserved_blocks = reserved.iter().map(|r| r.end - r.start).sum();
        BlockBitmap {
            capacity_blocks,
            free_blocks,
            reserved_blocks,
            runs: RunTree::new(&leaves),
            chunks,
            free_chunks,
            dirty_bits: vec![0; chunk_count.div_ceil(64)],
            dirty_list: Vec::new(),
            reserved,
            cursor: 0,
        }
    }

    pub(crate) fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    pub(crate) fn reserved_ranges(&self) -> &[Range<u64>] {
        &self.reserved
    }

    /// Total blocks, reserved ones included.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }

    /// Blocks that can be handed out now.
    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    /// Blocks handed out (including those sitting in a [`crate::BlockCache`]).
    pub fn allocated_blocks(&self) -> u64 {
        self.capacity_blocks - self.free_blocks - self.reserved_blocks
    }

    /// Blocks in reserved ranges.
    pub fn reserved_blocks(&self) -> u64 {
        self.reserved_blocks
    }

    /// The reserved ranges, sorted and coalesced.
    pub fn reserved(&self) -> &[Range<u64>] {
        &self.reserved
    }

    /// Bytes of heap memory the bitmap and its indexes hold.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * std::mem::size_of::<Chunk>()
            + self.free_chunks.heap_bytes()
            + self.runs.heap_bytes()
            + self.dirty_bits.len() * 8
            + self.dirty_list.capacity() * std::mem::size_of::<usize>()
            + self.reserved.capacity() * std::mem::size_of::<Range<u64>>()
    }

    #[inline]
    fn bit(&self, block: u64) -> bool {
        let c = (block / CHUNK_BLOCKS) as usize;
        let w = ((block % CHUNK_BLOCKS) / 64) as usize;
        self.chunks[c].words[w] >> (block % 64) & 1 == 1
    }

    /// Whether `block` is free. Out-of-range blocks are not free.
    pub fn is_free(&self, block: u64) -> bool {
        block < self.capacity_blocks && self.bit(block)
    }

    /// Whether `block` lies in a reserved range.
    #[inline]
    pub fn is_reserved(&self, block: u64) -> bool {
        match self.reserved.first() {
            None => false,
            Some(first) if block < first.start => false,
            Some(_) => {
                let i = self.reserved.partition_point(|r| r.end <= block);
                i < self.reserved.len() && self.reserved[i].start <= block
            }
        }
    }

    /// Whether `block` is allocated (handed out).
    pub fn is_allocated(&self, block: u64) -> bool {
        block < self.capacity_blocks && !self.bit(block) && !self.is_reserved(block)
    }

    #[inline]
    fn mark_dirty(&mut self, chunk: usize) {
        let (w, b) = (chunk / 64, chunk % 64);
        if self.dirty_bits[w] >> b & 1 == 0 {
            self.dirty_bits[w] |= 1 << b;
            self.dirty_list.push(chunk);
        }
    }

    /// Bring the run summaries of every chunk touched since the last refresh
    /// up to date. Cost: O(dirty chunks × (8 words + tree height)).
    pub(crate) fn refresh_runs(&mut self) {
        let mut list = std::mem::take(&mut self.dirty_list);
        for &chunk in &list {
            self.dirty_bits[chunk / 64] &= !(1 << (chunk % 64));
            let leaf = runs::summarize_chunk(&self.chunks[chunk].words);
            self.runs.update(chunk, leaf);
        }
        list.clear();
        self.dirty_list = list;
    }

    /// Take free block `block` (known free) out of the free set.
    #[inline]
    fn take_bit(&mut self, chunk: usize, word: usize, bit: u32) -> Block {
        let w = &mut self.chunks[chunk].words[word];
        debug_assert!(*w >> bit & 1 == 1, "taking a block that is not free");
        *w &= !(1u64 << bit);
        if *w == 0 && self.chunks[chunk].words.iter().all(|&x| x == 0) {
            self.free_chunks.remove(chunk);
        }
        self.free_blocks -= 1;
        self.mark_dirty(chunk);
        let block = chunk as u64 * CHUNK_BLOCKS + word as u64 * 64 + bit as u64;
        self.cursor = if block + 1 == self.capacity_blocks {
            0
        } else {
            block + 1
        };
        Block(block)
    }

    /// Allocate one block, next-fit from the bitmap's cursor.
    #[inline]
    pub fn alloc(&mut self) -> Option<Block> {
        self.alloc_near(self.cursor)
    }

    /// Allocate the first free block at or after `hint` (wrapping to the
    /// start), so allocations near a hint stay near each other.
    #[inline]
    pub fn alloc_near(&mut self, hint: u64) -> Option<Block> {
        if self.free_blocks == 0 {
            return None;
        }
        let hint = if hint >= self.capacity_blocks {
            0
        } else {
            hint
        };
        let chunk = (hint / CHUNK_BLOCKS) as usize;
        let first_word = ((hint % CHUNK_BLOCKS) / 64) as usize;
        let words = &self.chunks[chunk].words;
        let masked = words[first_word] & (u64::MAX << (hint % 64));
        if masked != 0 {
            return Some(self.take_bit(chunk, first_word, masked.trailing_zeros()));
        }
        if let Some((word, &w)) = words
            .iter()
            .enumerate()
            .skip(first_word + 1)
            .find(|(_, &w)| w != 0)
        {
            return Some(self.take_bit(chunk, word, w.trailing_zeros()));
        }
        let next = self
            .free_chunks
            .next_from(chunk + 1)
            .or_else(|| self.free_chunks.next_from(0))
            .expect("free_blocks > 0 but no chunk has a free block");
        let words = &self.chunks[next].words;
        let word = words
            .iter()
            .position(|&w| w != 0)
            .expect("summary marks a chunk with no free block");
        let bit = words[word].trailing_zeros();
        Some(self.take_bit(next, word, bit))
    }

    /// [`BlockBitmap::alloc`] with a [`BitmapError::NoSpace`] error when full.
    pub fn try_alloc(&mut self) -> Result<Block, BitmapError> {
        self.alloc().ok_or(BitmapError::NoSpace {
            requested_blocks: 1,
            free_blocks: 0,
            largest_free_run_blocks: 0,
        })
    }

    /// Allocate `len` contiguous blocks, next-fit from the cursor.
    /// `None` if `len == 0` or no run of `len` free blocks exists.
    pub fn alloc_extent(&mut self, len: u64) -> Option<Extent> {
        self.alloc_extent_near(len, self.cursor)
    }

    /// Allocate the first run of `len` free blocks that starts at or after
    /// `hint`, or failing that the first run from block 0.
    pub fn alloc_extent_near(&mut self, len: u64, hint: u64) -> Option<Extent> {
        if len == 0 || len > self.free_blocks {
            return None;
        }
        if len == 1 {
            return self.alloc_near(hint).map(|b| Extent { start: b.0, len: 1 });
        }
        self.refresh_runs();
        if len > self.runs.largest_run() {
            return None;
        }
        let hint = if hint >= self.capacity_blocks {
            0
        } else {
            hint
        };
        let start = self.find_run_from(hint, len).or_else(|| {
            if hint > 0 {
                self.find_run_from(0, len)
            } else {
                None
            }
        })?;
        let extent = Extent { start, len };
        self.claim_range(start, start + len);
        self.cursor = if extent.end() >= self.capacity_blocks {
            0
        } else {
            extent.end()
        };
        Some(extent)
    }

    /// [`BlockBitmap::alloc_extent`] with typed errors: [`BitmapError::ZeroLength`]
    /// for `len == 0`, [`BitmapError::NoSpace`] (with the free total and the
    /// longest free run) when no run is long enough.
    pub fn try_alloc_extent(&mut self, len: u64) -> Result<Extent, BitmapError> {
        if len == 0 {
            return Err(BitmapError::ZeroLength);
        }
        match self.alloc_extent(len) {
            Some(extent) => Ok(extent),
            None => {
                self.refresh_runs();
                Err(BitmapError::NoSpace {
                    requested_blocks: len,
                    free_blocks: self.free_blocks,
                    largest_free_run_blocks: self.runs.largest_run(),
                })
            }
        }
    }

    /// Leftmost start `s >= from` with `s..s + len` all free. Runs must be fresh.
    fn find_run_from(&self, from: u64, len: u64) -> Option<u64> {
        let chunk = (from / CHUNK_BLOCKS) as usize;
        let bit = (from % CHUNK_BLOCKS) as u32;
        let words = &self.chunks[chunk].words;
        let leaf = self.runs.leaf(chunk);
        // The bit-level scan only runs when the chunk's summary says a run
        // that long exists in it.
        if len <= leaf.best as u64 {
            if let Some(s) = runs::find_run_in_chunk(words, bit, len as u32) {
                return Some(chunk as u64 * CHUNK_BLOCKS + s as u64);
            }
        }
        if chunk + 1 >= self.chunks.len() {
            return None;
        }
        // The free run ending at the chunk's end, clipped to start at `bit`.
        let carry = (leaf.suffix).min(CHUNK_BLOCKS as u32 - bit) as u64;
        let chunks = &self.chunks;
        let scan_leaf = |c: usize| -> u64 {
            let s = runs::find_run_in_chunk(&chunks[c].words, 0, len as u32)
                .expect("run tree promised a run inside this chunk");
            c as u64 * CHUNK_BLOCKS + s as u64
        };
        self.runs.find(chunk + 1, carry, len, &scan_leaf)
    }

    /// Apply `f` to each chunk word overlapping `start..end`, with the mask
    /// of the bits inside the range.
    #[inline]
    fn for_each_word(start: u64, end: u64, mut f: impl FnMut(usize, usize, u64)) {
        let mut pos = start;
        while pos < end {
            let word_start = pos - pos % 64;
            let to = (end - word_start).min(64);
            let mask = word_mask(pos - word_start, to);
            f(
                (word_start / CHUNK_BLOCKS) as usize,
                ((word_start % CHUNK_BLOCKS) / 64) as usize,
                mask,
            );
            pos = word_start + to;
        }
    }

    /// Apply `f(chunk, word, mask)` to each word overlapping `start..end`,
    /// then `g(chunk)` once per chunk, after its words.
    #[inline]
    fn for_each_chunk_word(
        &mut self,
        start: u64,
        end: u64,
        mut f: impl FnMut(&mut [u64; CHUNK_WORDS], usize, u64),
        mut g: impl FnMut(&mut Self, usize),
    ) {
        let mut pos = start;
        while pos < end {
            let c = (pos / CHUNK_BLOCKS) as usize;
            let chunk_end = ((c as u64 + 1) * CHUNK_BLOCKS).min(end);
            let words = &mut self.chunks[c].words;
            while pos < chunk_end {
                let word_start = pos - pos % 64;
                let to = (chunk_end - word_start).min(64);
                f(
                    words,
                    ((word_start % CHUNK_BLOCKS) / 64) as usize,
                    word_mask(pos - word_start, to),
                );
                pos = word_start + to;
            }
            g(self, c);
        }
    }

    /// Mark every block of `start..end` (all known free) allocated.
    fn claim_range(&mut self, start: u64, end: u64) {
        self.for_each_chunk_word(
            start,
            end,
            |words, w, mask| {
                debug_assert_eq!(
                    words[w] & mask,
                    mask,
                    "claiming blocks that are not all free"
                );
                words[w] &= !mask;
            },
            |this, c| {
                if this.chunks[c].words.iter().all(|&w| w == 0) {
                    this.free_chunks.remove(c);
                }
                this.mark_dirty(c);
            },
        );
        self.free_blocks -= end - start;
    }

    /// Mark every block of `start..end` (all known allocated) free.
    fn release_range(&mut self, start: u64, end: u64) {
        self.for_each_chunk_word(
            start,
            end,
            |words, w, mask| {
                debug_assert_eq!(words[w] & mask, 0, "releasing blocks that are already free");
                words[w] |= mask;
            },
            |this, c| {
                this.free_chunks.insert(c);
                this.mark_dirty(c);
            },
        );
        self.free_blocks += end - start;
    }

    /// Return the blocks of word `word_index` set in `mask` (all allocated,
    /// none reserved) to the free set in one step.
    pub(crate) fn release_word(&mut self, word_index: u64, mask: u64) {
        if mask == 0 {
            return;
        }
        let c = (word_index / CHUNK_WORDS as u64) as usize;
        let w = (word_index % CHUNK_WORDS as u64) as usize;
        let word = &mut self.chunks[c].words[w];
        assert_eq!(
            *word & mask,
            0,
            "word {word_index}: returning blocks that are already free"
        );
        *word |= mask;
        self.free_chunks.insert(c);
        self.mark_dirty(c);
        self.free_blocks += mask.count_ones() as u64;
    }

    /// Claim every free block of the next word with free blocks at or after
    /// the cursor. Returns the word index and the claimed bits.
    pub(crate) fn claim_word(&mut self) -> Option<(u64, u64)> {
        let block = self.alloc()?;
        let c = (block.0 / CHUNK_BLOCKS) as usize;
        let w = ((block.0 % CHUNK_BLOCKS) / 64) as usize;
        let word = &mut self.chunks[c].words[w];
        let rest = *word;
        *word = 0;
        if rest != 0 {
            self.free_blocks -= rest.count_ones() as u64;
            if self.chunks[c].words.iter().all(|&x| x == 0) {
                self.free_chunks.remove(c);
            }
        }
        let mask = rest | (1u64 << (block.0 % 64));
        Some((block.0 / 64, mask))
    }

    /// First block of `start..end` that is free.
    pub(crate) fn first_free_in(&self, start: u64, end: u64) -> Option<u64> {
        let mut found = None;
        Self::for_each_word(start, end, |c, w, mask| {
            if found.is_none() {
                let free = self.chunks[c].words[w] & mask;
                if free != 0 {
                    found = Some(
                        (c as u64 * CHUNK_BLOCKS) + w as u64 * 64 + free.trailing_zeros() as u64,
                    );
                }
            }
        });
        found
    }

    /// First reserved block of `start..end`.
    pub(crate) fn first_reserved_in(&self, start: u64, end: u64) -> Option<u64> {
        let i = self.reserved.partition_point(|r| r.end <= start);
        self.reserved
            .get(i)
            .filter(|r| r.start < end)
            .map(|r| r.start.max(start))
    }

    fn check_range(&self, start: u64, len: u64) -> Result<u64, BitmapError> {
        crate::check_range(start, len, self.capacity_blocks)
    }

    /// Free one allocated block.
    ///
    /// Errors (and no change): [`BitmapError::OutOfRange`],
    /// [`BitmapError::NotAllocated`] for a free block (double free),
    /// [`BitmapError::Reserved`] for a reserved block.
    #[inline]
    pub fn free(&mut self, block: Block) -> Result<(), BitmapError> {
        let b = block.0;
        if b < self.capacity_blocks {
            let c = (b / CHUNK_BLOCKS) as usize;
            let w = ((b % CHUNK_BLOCKS) / 64) as usize;
            let bit = 1u64 << (b % 64);
            let word = self.chunks[c].words[w];
            if word & bit == 0 && !self.is_reserved(b) {
                self.chunks[c].words[w] = word | bit;
                if word == 0 {
                    self.free_chunks.insert(c);
                }
                self.free_blocks += 1;
                self.mark_dirty(c);
                return Ok(());
            }
        }
        Err(self.free_error(b))
    }

    /// Why freeing `block` is refused (kept out of the fast path).
    #[cold]
    #[inline(never)]
    fn free_error(&self, block: u64) -> BitmapError {
        if block >= self.capacity_blocks {
            BitmapError::OutOfRange {
                block,
                capacity_blocks: self.capacity_blocks,
            }
        } else if self.bit(block) {
            BitmapError::NotAllocated { block }
        } else {
            BitmapError::Reserved { block }
        }
    }

    /// Free every block of an allocated extent. All blocks must be allocated:
    /// otherwise the error names the first free or reserved block and nothing
    /// changes.
    ///
    /// When few chunks have stale run summaries (at most
    /// [`EAGER_REFRESH_CHUNKS_MAX`]), this brings them up to date before
    /// returning, so the next [`BlockBitmap::alloc_extent`], on the path a
    /// writer waits on, does not pay for them.
    pub fn free_extent(&mut self, extent: Extent) -> Result<(), BitmapError> {
        let end = self.check_range(extent.start, extent.len)?;
        self.validate_allocated(extent.start, end)?;
        self.release_range(extent.start, end);
        if self.dirty_list.len() <= EAGER_REFRESH_CHUNKS_MAX {
            self.refresh_runs();
        }
        Ok(())
    }

    /// Every block of `start..end` (in range) is allocated: the first free
    /// one is [`BitmapError::NotAllocated`], the first reserved one
    /// [`BitmapError::Reserved`].
    pub(crate) fn validate_allocated(&self, start: u64, end: u64) -> Result<(), BitmapError> {
        if let Some(block) = self.first_free_in(start, end) {
            return Err(BitmapError::NotAllocated { block });
        }
        if let Some(block) = self.first_reserved_in(start, end) {
            return Err(BitmapError::Reserved { block });
        }
        Ok(())
    }

    /// Release `start..end`, validated by [`Self::validate_allocated`].
    pub(crate) fn release_validated(&mut self, start: u64, end: u64) {
        self.release_range(start, end);
    }

    /// Reserve `range`: its blocks are never handed out nor freed. Blocks
    /// already reserved may be reserved again; an allocated block in the
    /// range is an error ([`BitmapError::ReserveInUse`]) and nothing changes.
    pub fn reserve(&mut self, range: Range<u64>) -> Result<(), BitmapError> {
        if range.start >= range.end {
            return Err(BitmapError::ZeroLength);
        }
        let end = self.check_range(range.start, range.end - range.start)?;
        self.validate_reservable(range.start, end)?;
        self.apply_reserve(range.start, end);
        Ok(())
    }

    /// Every block of `start..end` (in range) is free or already reserved.
    pub(crate) fn validate_reservable(&self, start: u64, end: u64) -> Result<(), BitmapError> {
        let mut pos = start;
        while pos < end {
            let next_reserved = self.first_reserved_in(pos, end).unwrap_or(end);
            // pos..next_reserved holds no reserved block: all must be free.
            if let Some(block) = self.first_allocated_in(pos, next_reserved) {
                return Err(BitmapError::ReserveInUse { block });
            }
            if next_reserved == end {
                break;
            }
            let i = self.reserved.partition_point(|r| r.end <= next_reserved);
            pos = self.reserved[i].end.min(end);
        }
        Ok(())
    }

    /// Reserve `start..end`, validated by [`Self::validate_reservable`].
    pub(crate) fn apply_reserve(&mut self, start: u64, end: u64) {
        let mut newly = 0u64;
        Self::for_each_word(start, end, |c, w, mask| {
            newly += (self.chunks[c].words[w] & mask).count_ones() as u64;
        });
        if newly > 0 {
            // Reserved blocks inside are already clear; clear the free ones.
            self.for_each_chunk_word(
                start,
                end,
                |words, w, mask| words[w] &= !mask,
                |this, c| {
                    if this.chunks[c].words.iter().all(|&x| x == 0) {
                        this.free_chunks.remove(c);
                    }
                    this.mark_dirty(c);
                },
            );
            self.free_blocks -= newly;
        }
        self.reserved_blocks += newly;
        self.insert_reserved(start..end);
    }

    fn first_allocated_in(&self, start: u64, end: u64) -> Option<u64> {
        if start >= end {
            return None;
        }
        let mut found = None;
        Self::for_each_word(start, end, |c, w, mask| {
            if found.is_none() {
                let used = !self.chunks[c].words[w] & mask;
                if used != 0 {
                    found = Some(
                        c as u64 * CHUNK_BLOCKS + w as u64 * 64 + used.trailing_zeros() as u64,
                    );
                }
            }
        });
        found
    }

    fn insert_reserved(&mut self, range: Range<u64>) {
        // Merge with every range that overlaps or touches it.
        let lo = self.reserved.partition_point(|r| r.end < range.start);
        let hi = self.reserved.partition_point(|r| r.start <= range.end);
        let mut merged = range;
        if lo < hi {
            merged.start = merged.start.min(self.reserved[lo].start);
            merged.end = merged.end.max(self.reserved[hi - 1].end);
        }
        self.reserved.splice(lo..hi, std::iter::once(merged));
    }

    /// Current figures. Refreshes stale run summaries (only the chunks
    /// touched since the last refresh), never scans the whole bitmap.
    pub fn stats(&mut self) -> BitmapStats {
        self.refresh_runs();
        BitmapStats::new(
            self.capacity_blocks,
            self.reserved_blocks,
            self.free_blocks,
            self.runs.largest_run(),
        )
    }

    /// Longest run of free blocks (refreshes stale run summaries).
    pub fn largest_free_run_blocks(&mut self) -> u64 {
        self.refresh_runs();
        self.runs.largest_run()
    }

    /// O(capacity) check of every invariant; panics with the values on the
    /// first violation. For tests and fuzzers.
    ///
    /// - `allocated + free + reserved == capacity`, `free` equals the set bits;
    /// - bits past the capacity and bits of reserved blocks are clear;
    /// - reserved ranges are sorted, disjoint, non-adjacent, in range;
    /// - the chunk summary agrees with the words;
    /// - run summaries of clean chunks agree with their bits, stale chunks are
    ///   all listed as dirty, and the run forest is internally consistent.
    pub fn check_invariants(&self) {
        let popcount: u64 = self
            .chunks
            .iter()
            .flat_map(|c| c.words.iter())
            .map(|w| w.count_ones() as u64)
            .sum();
        assert_eq!(
            popcount, self.free_blocks,
            "free_blocks counter {} disagrees with {} set bits",
            self.free_blocks, popcount
        );
        assert!(
            self.free_blocks + self.reserved_blocks <= self.capacity_blocks,
            "free {} + reserved {} > capacity {}",
            self.free_blocks,
            self.reserved_blocks,
            self.capacity_blocks
        );
        let padded = self.chunks.len() as u64 * CHUNK_BLOCKS;
        if self.capacity_blocks < padded {
            assert!(
                self.first_free_in(self.capacity_blocks, padded).is_none(),
                "a bit past capacity {} is set",
                self.capacity_blocks
            );
        }
        let mut reserved_sum = 0;
        for (i, r) in self.reserved.iter().enumerate() {
            assert!(
                r.start < r.end && r.end <= self.capacity_blocks,
                "reserved range {r:?} invalid (capacity {})",
                self.capacity_blocks
            );
            if i > 0 {
                let prev = &self.reserved[i - 1];
                assert!(
                    prev.end < r.start,
                    "reserved ranges {prev:?} and {r:?} overlap or touch"
                );
            }
            assert!(
                self.first_free_in(r.start, r.end).is_none(),
                "reserved range {r:?} has a free block"
            );
            reserved_sum += r.end - r.start;
        }
        assert_eq!(
            reserved_sum, self.reserved_blocks,
            "reserved_blocks counter disagrees with the ranges"
        );
        self.free_chunks
            .check_invariants(|c| self.chunks[c].words.iter().any(|&w| w != 0));
        let listed: std::collections::HashSet<usize> = self.dirty_list.iter().copied().collect();
        assert_eq!(
            listed.len(),
            self.dirty_list.len(),
            "a chunk is listed dirty twice"
        );
        for c in 0..self.chunks.len() {
            let dirty = self.dirty_bits[c / 64] >> (c % 64) & 1 == 1;
            assert_eq!(
                dirty,
                listed.contains(&c),
                "dirty bit of chunk {c} disagrees with the dirty list"
            );
            if !dirty {
                let want = runs::summarize_chunk(&self.chunks[c].words);
                assert_eq!(
                    self.runs.leaf(c),
                    want,
                    "run summary of clean chunk {c} disagrees with its bits"
                );
            }
        }
        self.runs.check_invariants();
        assert!(
            self.cursor < self.capacity_blocks,
            "cursor {} >= capacity {}",
            self.cursor,
            self.capacity_blocks
        );
    }

    /// `(prefix, suffix, longest)` free runs of the whole bitmap, for
    /// combining shards.
    pub(crate) fn run_totals(&mut self) -> (u64, u64, u64) {
        self.refresh_runs();
        self.runs.totals()
    }
}
