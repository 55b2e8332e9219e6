//! The thread-safe form: a bitmap split into shards, one lock each.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::image::{self, ImageHeader};
use crate::{
    BitmapError, BitmapStats, Block, BlockBitmap, Extent, ImageError, CHUNK_BLOCKS,
    MAGAZINE_REFILL_BLOCKS, MAGAZINE_WORDS,
};

/// Smallest shard of a multi-shard [`SharedBitmap`], in blocks. Also the
/// guaranteed longest extent a multi-shard bitmap can serve.
pub const SHARD_BLOCKS_MIN: u64 = 1 << 16;
/// Shards per available core made by [`SharedBitmap::new`].
const SHARDS_PER_CORE: usize = 4;
/// A [`SharedCache`] moves its home to another shard when its home has
/// fewer than `1 / CACHE_HOME_FREE_DIVISOR` of its blocks free: refilling
/// from a nearly full shard claims words holding a block or two each.
const CACHE_HOME_FREE_DIVISOR: u64 = 8;
/// ... or fewer free blocks than this, whatever the shard's size.
const CACHE_HOME_FREE_BLOCKS_MIN: u64 = 4 * MAGAZINE_REFILL_BLOCKS;
const _: () =
    assert!(SHARD_BLOCKS_MIN.is_power_of_two() && SHARD_BLOCKS_MIN.is_multiple_of(CHUNK_BLOCKS));

/// One shard and its lock-free free-block hint, on cache lines of its own
/// (two, for the adjacent-line prefetcher) so threads working on different
/// shards do not false-share.
#[repr(align(128))]
struct ShardSlot {
    shard: Mutex<Shard>,
    /// The shard's free blocks as of its last change; written under the
    /// lock, read without it to choose where a magazine refills.
    free_hint: AtomicU64,
    /// [`SharedCache`]s whose home this shard is, so caches spread out.
    homed_caches: AtomicU64,
}

struct Shard {
    bitmap: BlockBitmap,
    /// Magazines of [`SharedCache`]s holding a word of this shard:
    /// `(global word index, blocks still in the magazine)`.
    magazines: Vec<(u64, Arc<AtomicU64>)>,
}

impl Shard {
    /// Whether `block` (global) sits in a magazine, i.e. was claimed but
    /// not handed out.
    fn in_magazine(&self, block: u64) -> bool {
        let word = block / 64;
        let bit = 1u64 << (block % 64);
        self.magazines
            .iter()
            .any(|(w, m)| *w == word && m.load(Ordering::Acquire) & bit != 0)
    }

    fn first_in_magazine(&self, start: u64, end: u64) -> Option<u64> {
        self.magazines
            .iter()
            .filter_map(|(w, m)| {
                let mask = m.load(Ordering::Acquire);
                (0..64)
                    .filter(|b| mask >> b & 1 == 1)
                    .map(|b| w * 64 + b)
                    .find(|&block| block >= start && block < end)
            })
            .min()
    }
}

impl ShardSlot {
    fn new(bitmap: BlockBitmap) -> Self {
        ShardSlot {
            free_hint: AtomicU64::new(bitmap.free_blocks()),
            homed_caches: AtomicU64::new(0),
            shard: Mutex::new(Shard {
                bitmap,
                magazines: Vec::new(),
            }),
        }
    }
}

/// A locked shard; publishes the shard's free count when released.
struct ShardGuard<'a> {
    guard: MutexGuard<'a, Shard>,
    free_hint: &'a AtomicU64,
}

impl std::ops::Deref for ShardGuard<'_> {
    type Target = Shard;
    fn deref(&self) -> &Shard {
        &self.guard
    }
}

impl std::ops::DerefMut for ShardGuard<'_> {
    fn deref_mut(&mut self) -> &mut Shard {
        &mut self.guard
    }
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        self.free_hint
            .store(self.guard.bitmap.free_blocks(), Ordering::Relaxed);
    }
}

static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Each thread's home slot, so threads start on different shards.
    static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_slot() -> usize {
    THREAD_SLOT.with(|slot| {
        if slot.get() == usize::MAX {
            slot.set(NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed));
        }
        slot.get()
    })
}

/// A [`BlockBitmap`] shared between threads.
///
/// The block space is split into shards of a power-of-two number of blocks
/// (at least [`SHARD_BLOCKS_MIN`]), each a [`BlockBitmap`] behind its own
/// lock. Each thread has a home shard (threads are numbered on first use
/// and spread across the shards) where it allocates first, so two threads do not fight over one lock or
/// one cache line; a full home shard moves the request to the next shard.
///
/// Extents never cross shard boundaries, so the longest extent a
/// multi-shard bitmap serves is [`SharedBitmap::extent_blocks_max`];
/// `stats()` still reports the true longest free run.
///
/// ```
/// use strata_bitmap::SharedBitmap;
/// use std::thread;
///
/// let bitmap = SharedBitmap::with_shards(1 << 20, 4)?;
/// thread::scope(|s| {
///     for _ in 0..2 {
///         s.spawn(|| {
///             let mut cache = bitmap.cache();
///             let held: Vec<_> = (0..1000).map(|_| cache.alloc().unwrap()).collect();
///             for b in held {
///                 cache.free(b).unwrap();
///             }
///         });
///     }
/// });
/// assert_eq!(bitmap.stats().allocated_blocks, 0);
/// # Ok::<(), strata_bitmap::BitmapError>(())
/// ```
pub struct SharedBitmap {
    capacity_blocks: u64,
    shard_blocks: u64,
    shards: Box<[ShardSlot]>,
}

fn globalize(error: BitmapError, base: u64) -> BitmapError {
    match error {
        BitmapError::NotAllocated { block } => BitmapError::NotAllocated {
            block: block + base,
        },
        BitmapError::Reserved { block } => BitmapError::Reserved {
            block: block + base,
        },
        BitmapError::ReserveInUse { block } => BitmapError::ReserveInUse {
            block: block + base,
        },
        other => other,
    }
}

impl SharedBitmap {
    /// A shared bitmap of `capacity_blocks` free blocks, with a few shards
    /// per available core.
    pub fn new(capacity_blocks: u64) -> Result<Self, BitmapError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_shards(capacity_blocks, cores * SHARDS_PER_CORE)
    }

    /// A shared bitmap with about `shards` shards (fewer if the capacity is
    /// small: a shard holds at least [`SHARD_BLOCKS_MIN`] blocks).
    pub fn with_shards(capacity_blocks: u64, shards: usize) -> Result<Self, BitmapError> {
        BlockBitmap::check_capacity(capacity_blocks)?;
        let shard_blocks = Self::shard_blocks_for(capacity_blocks, shards);
        let count = capacity_blocks.div_ceil(shard_blocks);
        let shards = (0..count)
            .map(|i| {
                let len = shard_blocks.min(capacity_blocks - i * shard_blocks);
                let bitmap = BlockBitmap::new(len).expect("shard capacity is valid");
                ShardSlot::new(bitmap)
            })
            .collect();
        Ok(SharedBitmap {
            capacity_blocks,
            shard_blocks,
            shards,
        })
    }

    fn shard_blocks_for(capacity_blocks: u64, shards: usize) -> u64 {
        if shards <= 1 || capacity_blocks <= SHARD_BLOCKS_MIN {
            return capacity_blocks;
        }
        capacity_blocks
            .div_ceil(shards as u64)
            .next_power_of_two()
            .max(SHARD_BLOCKS_MIN)
    }

    /// Total blocks.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Longest extent [`SharedBitmap::alloc_extent`] can serve: one shard.
    pub fn extent_blocks_max(&self) -> u64 {
        self.shard_blocks
    }

    fn lock(&self, shard: usize) -> ShardGuard<'_> {
        let slot = &self.shards[shard];
        ShardGuard {
            guard: slot
                .shard
                .lock()
                .expect("a bitmap shard lock was poisoned by a panic"),
            free_hint: &slot.free_hint,
        }
    }

    /// Where a cache whose home ran low should refill next: among shards
    /// whose lock-free hint shows at least `free_blocks_min` free blocks,
    /// the one fewest other caches call home, then the one this cache has
    /// freed the most blocks into (so a thread keeps allocating where its
    /// own frees land, away from other threads' shards), then the first
    /// after `from`. With no roomy shard, the one with the most free blocks.
    fn refill_shard(&self, from: usize, free_blocks_min: u64, freed_into: &[u32]) -> usize {
        let n = self.shards.len();
        let slot = |i: usize| &self.shards[i];
        let mut best: Option<((u64, u32), usize)> = None;
        for i in (1..=n).map(|k| (from + k) % n) {
            if slot(i).free_hint.load(Ordering::Relaxed) < free_blocks_min {
                continue;
            }
            // Lower is better: fewer caches, then more of our frees.
            let key = (
                slot(i).homed_caches.load(Ordering::Relaxed),
                u32::MAX - freed_into[i],
            );
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, i));
            }
        }
        best.map(|(_, i)| i).unwrap_or_else(|| {
            (0..n)
                .max_by_key(|&i| slot(i).free_hint.load(Ordering::Relaxed))
                .expect("at least one shard")
        })
    }

    /// The home for a new cache: the shard with the fewest caches homed on
    /// it, searching from this thread's spread-out starting shard.
    fn new_cache_home(&self) -> usize {
        let n = self.shards.len();
        let start = self.home();
        let home = (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.shards[i].homed_caches.load(Ordering::Relaxed))
            .expect("at least one shard");
        self.shards[home]
            .homed_caches
            .fetch_add(1, Ordering::Relaxed);
        home
    }

    fn lock_range(&self, shards: Range<usize>) -> Vec<ShardGuard<'_>> {
        // Always in ascending order, so concurrent multi-shard calls cannot deadlock.
        shards.map(|i| self.lock(i)).collect()
    }

    fn lock_all(&self) -> Vec<ShardGuard<'_>> {
        self.lock_range(0..self.shards.len())
    }

    fn base(&self, shard: usize) -> u64 {
        shard as u64 * self.shard_blocks
    }

    /// This thread's home shard. Slots are bit-reversed so consecutive
    /// threads start far apart (0, 1/2, 1/4, 3/4, ... of the shards) and
    /// their allocations do not run into each other's home shards.
    fn home(&self) -> usize {
        let spread = (thread_slot() as u32).reverse_bits() as u64;
        ((spread * self.shards.len() as u64) >> 32) as usize
    }

    fn check_range(&self, start: u64, len: u64) -> Result<u64, BitmapError> {
        crate::check_range(start, len, self.capacity_blocks)
    }

    /// Allocate one block, from this thread's home shard first.
    pub fn alloc(&self) -> Option<Block> {
        let home = self.home();
        let n = self.shards.len();
        (0..n).find_map(|k| {
            let i = (home + k) % n;
            let block = self.lock(i).bitmap.alloc()?;
            Some(Block(block.0 + self.base(i)))
        })
    }

    /// Allocate `len` contiguous blocks within one shard, home shard first.
    /// `None` if `len == 0`, `len > extent_blocks_max()`, or no shard has a
    /// long enough run.
    pub fn alloc_extent(&self, len: u64) -> Option<Extent> {
        if len == 0 || len > self.shard_blocks {
            return None;
        }
        let home = self.home();
        let n = self.shards.len();
        (0..n).find_map(|k| {
            let i = (home + k) % n;
            let extent = self.lock(i).bitmap.alloc_extent(len)?;
            Some(Extent {
                start: extent.start + self.base(i),
                len,
            })
        })
    }

    /// Free one block. Errors as [`BlockBitmap::free`]; a block sitting
    /// in a [`SharedCache`] magazine (claimed, never handed out) is
    /// [`BitmapError::NotAllocated`].
    pub fn free(&self, block: Block) -> Result<(), BitmapError> {
        if block.0 >= self.capacity_blocks {
            return Err(BitmapError::OutOfRange {
                block: block.0,
                capacity_blocks: self.capacity_blocks,
            });
        }
        let i = (block.0 / self.shard_blocks) as usize;
        let base = self.base(i);
        let mut shard = self.lock(i);
        if shard.in_magazine(block.0) {
            return Err(BitmapError::NotAllocated { block: block.0 });
        }
        shard
            .bitmap
            .free(Block(block.0 - base))
            .map_err(|e| globalize(e, base))
    }

    /// Free an extent (it may span shards). All its blocks must be
    /// allocated; otherwise nothing changes.
    pub fn free_extent(&self, extent: Extent) -> Result<(), BitmapError> {
        let end = self.check_range(extent.start, extent.len)?;
        let first = (extent.start / self.shard_blocks) as usize;
        let last = ((end - 1) / self.shard_blocks) as usize;
        let mut guards = self.lock_range(first..last + 1);
        // Same error order as `BlockBitmap::free_extent` over the whole
        // extent: the first block that is not allocated (free in a bitmap,
        // or sitting in a magazine), and only then the first reserved one.
        let pieces = |k: usize| {
            let base = self.base(first + k);
            (
                base,
                extent.start.max(base),
                end.min(base + self.shard_blocks),
            )
        };
        for (k, shard) in guards.iter().enumerate() {
            let (base, lo, hi) = pieces(k);
            let free = shard
                .bitmap
                .first_free_in(lo - base, hi - base)
                .map(|b| b + base);
            let cached = shard.first_in_magazine(lo, hi);
            if let Some(block) = free.into_iter().chain(cached).min() {
                return Err(BitmapError::NotAllocated { block });
            }
        }
        for (k, shard) in guards.iter().enumerate() {
            let (base, lo, hi) = pieces(k);
            if let Some(block) = shard.bitmap.first_reserved_in(lo - base, hi - base) {
                return Err(BitmapError::Reserved {
                    block: block + base,
                });
            }
        }
        for (k, shard) in guards.iter_mut().enumerate() {
            let base = self.base(first + k);
            let (lo, hi) = (extent.start.max(base), end.min(base + self.shard_blocks));
            shard.bitmap.release_validated(lo - base, hi - base);
        }
        Ok(())
    }

    /// Reserve `range` (it may span shards). Errors as
    /// [`BlockBitmap::reserve`]; nothing changes on error.
    pub fn reserve(&self, range: Range<u64>) -> Result<(), BitmapError> {
        if range.start >= range.end {
            return Err(BitmapError::ZeroLength);
        }
        let end = self.check_range(range.start, range.end - range.start)?;
        let first = (range.start / self.shard_blocks) as usize;
        let last = ((end - 1) / self.shard_blocks) as usize;
        let mut guards = self.lock_range(first..last + 1);
        for (k, shard) in guards.iter().enumerate() {
            let base = self.base(first + k);
            let (lo, hi) = (range.start.max(base), end.min(base + self.shard_blocks));
            shard
                .bitmap
                .validate_reservable(lo - base, hi - base)
                .map_err(|e| globalize(e, base))?;
        }
        for (k, shard) in guards.iter_mut().enumerate() {
            let base = self.base(first + k);
            let (lo, hi) = (range.start.max(base), end.min(base + self.shard_blocks));
            shard.bitmap.apply_reserve(lo - base, hi - base);
        }
        Ok(())
    }

    /// Exact figures: every shard is locked (in order) while they are read.
    pub fn stats(&self) -> BitmapStats {
        let mut guards = self.lock_all();
        let (mut reserved, mut free) = (0u64, 0u64);
        let (mut best, mut carry) = (0u64, 0u64);
        for shard in guards.iter_mut() {
            reserved += shard.bitmap.reserved_blocks();
            free += shard.bitmap.free_blocks();
            let len = shard.bitmap.capacity_blocks();
            let (prefix, suffix, longest) = shard.bitmap.run_totals();
            best = best.max(longest).max(carry + prefix);
            carry = if prefix == len { carry + len } else { suffix };
        }
        BitmapStats::new(self.capacity_blocks, reserved, free, best.max(carry))
    }

    /// Check every shard's invariants and that magazine blocks are marked
    /// allocated in their shard. Panics with the values on a violation.
    pub fn check_invariants(&self) {
        let guards = self.lock_all();
        for (i, shard) in guards.iter().enumerate() {
            shard.bitmap.check_invariants();
            let base = self.base(i);
            for (word, mask) in &shard.magazines {
                let mask = mask.load(Ordering::Acquire);
                for b in (0..64).filter(|b| mask >> b & 1 == 1) {
                    let block = word * 64 + b;
                    assert!(
                        block >= base && block < base + shard.bitmap.capacity_blocks(),
                        "magazine block {block} is outside shard {i}"
                    );
                    assert!(
                        shard.bitmap.is_allocated(block - base),
                        "magazine block {block} is not marked allocated in shard {i}"
                    );
                }
            }
        }
    }

    /// A per-thread magazine in front of this bitmap.
    pub fn cache(&self) -> SharedCache<'_> {
        SharedCache {
            shared: self,
            home: self.new_cache_home(),
            shard: None,
            words: [0; MAGAZINE_WORDS],
            local: [0; MAGAZINE_WORDS],
            published: std::array::from_fn(|_| Arc::new(AtomicU64::new(0))),
            len: 0,
            freed_into: vec![0; self.shards.len()],
        }
    }

    /// Serialize to the same image format as [`BlockBitmap::to_bytes`].
    /// Blocks in magazines count as allocated.
    pub fn to_bytes(&self) -> Vec<u8> {
        let guards = self.lock_all();
        let mut ranges: Vec<Range<u64>> = Vec::new();
        let (mut reserved, mut free) = (0u64, 0u64);
        for (i, shard) in guards.iter().enumerate() {
            reserved += shard.bitmap.reserved_blocks();
            free += shard.bitmap.free_blocks();
            for r in shard.bitmap.reserved() {
                let r = r.start + self.base(i)..r.end + self.base(i);
                match ranges.last_mut() {
                    // A range cut at a shard boundary is one range in the image.
                    Some(prev) if prev.end == r.start => prev.end = r.end,
                    _ => ranges.push(r),
                }
            }
        }
        image::encode(
            ImageHeader {
                capacity_blocks: self.capacity_blocks,
                reserved_blocks: reserved,
                free_blocks: free,
            },
            &ranges,
            guards.iter().map(|g| g.bitmap.chunks()),
        )
    }

    /// Rebuild from an image written by either form, with the default
    /// shard count.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ImageError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self::from_bitmap(
            BlockBitmap::from_bytes(bytes)?,
            cores * SHARDS_PER_CORE,
        ))
    }

    /// Split a [`BlockBitmap`] into a shared bitmap of about `shards` shards.
    pub fn from_bitmap(bitmap: BlockBitmap, shards: usize) -> Self {
        let capacity_blocks = bitmap.capacity_blocks();
        let shard_blocks = Self::shard_blocks_for(capacity_blocks, shards);
        let shard_chunks = shard_blocks.div_ceil(CHUNK_BLOCKS) as usize;
        let count = capacity_blocks.div_ceil(shard_blocks) as usize;
        let shards = (0..count)
            .map(|i| {
                let base = i as u64 * shard_blocks;
                let len = shard_blocks.min(capacity_blocks - base);
                let chunk_lo = i * shard_chunks;
                let chunk_hi = (chunk_lo + shard_chunks).min(bitmap.chunks().len());
                let ranges = bitmap
                    .reserved()
                    .iter()
                    .filter(|r| r.start < base + len && r.end > base)
                    .map(|r| r.start.max(base) - base..r.end.min(base + len) - base)
                    .collect();
                let chunks = bitmap.chunks()[chunk_lo..chunk_hi].to_vec();
                ShardSlot::new(BlockBitmap::from_chunks(len, chunks, ranges))
            })
            .collect();
        SharedBitmap {
            capacity_blocks,
            shard_blocks,
            shards,
        }
    }
}

/// A per-thread magazine in front of a [`SharedBitmap`].
///
/// Refilled under one shard lock with up to [`MAGAZINE_WORDS`] words (at
/// least [`MAGAZINE_REFILL_BLOCKS`] blocks when the shard has them);
/// allocations pop from the magazine with no lock. Each word's remaining
/// blocks are published in an atomic word that the shard checks on every
/// free, so a block that was claimed but not handed out can never be freed
/// into the bitmap (and then handed out twice). Frees go to the shared
/// bitmap. When the cache's home shard runs low it moves to the shard with
/// room that it has freed the most blocks into, so each thread keeps
/// working on its own shards. Dropping the cache returns its blocks.
pub struct SharedCache<'a> {
    shared: &'a SharedBitmap,
    /// Shard refills try first.
    home: usize,
    /// Shard the magazine's words belong to, if it holds any.
    shard: Option<usize>,
    /// Global indices of the words held; a stack, `len - 1` serves allocations.
    words: [u64; MAGAZINE_WORDS],
    /// This thread's copy of each word's remaining blocks (the only writer).
    local: [u64; MAGAZINE_WORDS],
    /// The same masks as seen by the shard's free checks.
    published: [Arc<AtomicU64>; MAGAZINE_WORDS],
    len: usize,
    /// Blocks this cache freed into each shard (halved at each move).
    freed_into: Vec<u32>,
}

impl SharedCache<'_> {
    /// Allocate one block with no lock, refilling under a lock when the
    /// magazine is empty.
    #[inline]
    pub fn alloc(&mut self) -> Option<Block> {
        loop {
            if self.len == 0 && !self.refill() {
                return None;
            }
            let top = self.len - 1;
            let mask = self.local[top];
            if mask != 0 {
                let bit = mask.trailing_zeros() as u64;
                self.local[top] = mask & (mask - 1);
                // Published before the block leaves this thread, so a free
                // of it from any thread sees it gone from the magazine.
                self.published[top].store(self.local[top], Ordering::Release);
                return Some(Block(self.words[top] * 64 + bit));
            }
            self.len -= 1;
        }
    }

    fn refill(&mut self) -> bool {
        self.drain();
        let n = self.shared.shards.len();
        let roomy_blocks_min =
            (self.shared.shard_blocks / CACHE_HOME_FREE_DIVISOR).max(CACHE_HOME_FREE_BLOCKS_MIN);
        let home_free_blocks = self.shared.shards[self.home]
            .free_hint
            .load(Ordering::Relaxed);
        if home_free_blocks < roomy_blocks_min {
            let next = self
                .shared
                .refill_shard(self.home, roomy_blocks_min, &self.freed_into);
            self.shared.shards[self.home]
                .homed_caches
                .fetch_sub(1, Ordering::Relaxed);
            self.shared.shards[next]
                .homed_caches
                .fetch_add(1, Ordering::Relaxed);
            self.home = next;
            // Older frees say less about where this thread works now.
            for count in &mut self.freed_into {
                *count /= 2;
            }
        }
        for k in 0..n {
            let i = (self.home + k) % n;
            let mut shard = self.shared.lock(i);
            let base_word = self.shared.base(i) / 64;
            let mut claimed = 0u64;
            while self.len < MAGAZINE_WORDS && claimed < MAGAZINE_REFILL_BLOCKS {
                let Some((word, mask)) = shard.bitmap.claim_word() else {
                    break;
                };
                let slot = self.len;
                self.words[slot] = word + base_word;
                self.local[slot] = mask;
                self.published[slot].store(mask, Ordering::Release);
                shard
                    .magazines
                    .push((word + base_word, Arc::clone(&self.published[slot])));
                self.len += 1;
                claimed += mask.count_ones() as u64;
            }
            if self.len > 0 {
                // Lowest addresses on top of the stack.
                self.words[..self.len].reverse();
                self.local[..self.len].reverse();
                self.published[..self.len].reverse();
                self.shard = Some(i);
                return true;
            }
        }
        false
    }

    /// Free one block to the shared bitmap (see [`SharedBitmap::free`]).
    pub fn free(&mut self, block: Block) -> Result<(), BitmapError> {
        self.shared.free(block)?;
        let shard = (block.0 / self.shared.shard_blocks) as usize;
        self.freed_into[shard] = self.freed_into[shard].saturating_add(1);
        Ok(())
    }

    /// Blocks in the magazine now.
    pub fn cached_blocks(&self) -> u64 {
        self.local[..self.len]
            .iter()
            .map(|m| m.count_ones() as u64)
            .sum()
    }

    /// Return the magazine's blocks to their shard.
    pub fn drain(&mut self) {
        let Some(i) = self.shard.take() else {
            return;
        };
        let mut shard = self.shared.lock(i);
        let base_word = self.shared.base(i) / 64;
        // Every word this cache registered, including emptied ones.
        let registered = &self.published;
        shard
            .magazines
            .retain(|(_, m)| !registered.iter().any(|p| Arc::ptr_eq(m, p)));
        for slot in 0..self.len {
            shard
                .bitmap
                .release_word(self.words[slot] - base_word, self.local[slot]);
        }
        for (local, published) in self.local.iter_mut().zip(&self.published) {
            *local = 0;
            published.store(0, Ordering::Release);
        }
        self.len = 0;
    }
}

impl Drop for SharedCache<'_> {
    fn drop(&mut self) {
        self.drain();
        self.shared.shards[self.home]
            .homed_caches
            .fetch_sub(1, Ordering::Relaxed);
    }
}
