//! The thread-safe form: a bitmap split into shards, one lock each.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::image::{self, ImageHeader};
use crate::{BitmapError, BitmapStats, Block, BlockBitmap, Extent, ImageError, CHUNK_BLOCKS};

/// Smallest shard of a multi-shard [`SharedBitmap`], in blocks. Also the
/// guaranteed longest extent a multi-shard bitmap can serve.
pub const SHARD_BLOCKS_MIN: u64 = 1 << 16;
/// Shards per available core made by [`SharedBitmap::new`].
const SHARDS_PER_CORE: usize = 4;
const _: () = assert!(SHARD_BLOCKS_MIN.is_power_of_two() && SHARD_BLOCKS_MIN % CHUNK_BLOCKS == 0);

/// Keeps each shard's lock on its own cache lines (two, for the adjacent
/// line prefetcher) so threads on different shards do not false-share.
#[repr(align(128))]
struct Padded<T>(T);

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
/// lock. Each thread has a home shard (assigned round-robin on first use)
/// where it allocates first, so two threads do not fight over one lock or
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
    shards: Box<[Padded<Mutex<Shard>>]>,
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
                Padded(Mutex::new(Shard {
                    bitmap,
                    magazines: Vec::new(),
                }))
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

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard]
            .0
            .lock()
            .expect("a bitmap shard lock was poisoned by a panic")
    }

    fn lock_range(&self, shards: Range<usize>) -> Vec<MutexGuard<'_, Shard>> {
        // Always in ascending order, so concurrent multi-shard calls cannot deadlock.
        shards.map(|i| self.lock(i)).collect()
    }

    fn lock_all(&self) -> Vec<MutexGuard<'_, Shard>> {
        self.lock_range(0..self.shards.len())
    }

    fn base(&self, shard: usize) -> u64 {
        shard as u64 * self.shard_blocks
    }

    fn home(&self) -> usize {
        thread_slot() % self.shards.len()
    }

    fn check_range(&self, start: u64, len: u64) -> Result<u64, BitmapError> {
        if len == 0 {
            return Err(BitmapError::ZeroLength);
        }
        match start.checked_add(len) {
            Some(end) if end <= self.capacity_blocks => Ok(end),
            _ => Err(BitmapError::OutOfRange {
                block: start.max(self.capacity_blocks),
                capacity_blocks: self.capacity_blocks,
            }),
        }
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
        for (k, shard) in guards.iter().enumerate() {
            let base = self.base(first + k);
            let (lo, hi) = (extent.start.max(base), end.min(base + self.shard_blocks));
            shard
                .bitmap
                .validate_allocated(lo - base, hi - base)
                .map_err(|e| globalize(e, base))?;
            if let Some(block) = shard.first_in_magazine(lo, hi) {
                return Err(BitmapError::NotAllocated { block });
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
            mask: Arc::new(AtomicU64::new(0)),
            local: 0,
            word: 0,
            shard: None,
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
                Padded(Mutex::new(Shard {
                    bitmap: BlockBitmap::from_chunks(len, chunks, ranges),
                    magazines: Vec::new(),
                }))
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
/// Refilled a word at a time under the shard's lock; allocations pop from
/// the magazine with no lock. The magazine's remaining blocks are published
/// in an atomic word that the shard checks on every free, so a block that
/// was claimed but not handed out can never be freed into the bitmap (and
/// then handed out twice). Frees go to the shared bitmap. Dropping the
/// cache returns its blocks.
pub struct SharedCache<'a> {
    shared: &'a SharedBitmap,
    /// Blocks still in the magazine, as seen by the shard's free checks.
    mask: Arc<AtomicU64>,
    /// This thread's copy of `mask` (the only writer is this cache).
    local: u64,
    /// Global index of the word the magazine holds.
    word: u64,
    /// Shard the magazine's word belongs to, if any.
    shard: Option<usize>,
}

impl SharedCache<'_> {
    /// Allocate one block with no lock, refilling a word under a lock when
    /// the magazine is empty.
    #[inline]
    pub fn alloc(&mut self) -> Option<Block> {
        if self.local == 0 && !self.refill() {
            return None;
        }
        let bit = self.local.trailing_zeros() as u64;
        self.local &= self.local - 1;
        // Published before the block leaves this thread, so a free of it
        // from any thread sees it gone from the magazine.
        self.mask.store(self.local, Ordering::Release);
        Some(Block(self.word * 64 + bit))
    }

    fn refill(&mut self) -> bool {
        self.drain();
        let home = self.shared.home();
        let n = self.shared.shards.len();
        for k in 0..n {
            let i = (home + k) % n;
            let mut shard = self.shared.lock(i);
            if let Some((word, mask)) = shard.bitmap.claim_word() {
                self.word = word + self.shared.base(i) / 64;
                self.local = mask;
                self.mask.store(mask, Ordering::Release);
                shard.magazines.push((self.word, Arc::clone(&self.mask)));
                self.shard = Some(i);
                return true;
            }
        }
        false
    }

    /// Free one block to the shared bitmap (see [`SharedBitmap::free`]).
    pub fn free(&mut self, block: Block) -> Result<(), BitmapError> {
        self.shared.free(block)
    }

    /// Blocks in the magazine now.
    pub fn cached_blocks(&self) -> u64 {
        self.local.count_ones() as u64
    }

    /// Return the magazine's blocks to their shard.
    pub fn drain(&mut self) {
        let Some(i) = self.shard.take() else {
            return;
        };
        let mut shard = self.shared.lock(i);
        let base_word = self.shared.base(i) / 64;
        shard.bitmap.release_word(self.word - base_word, self.local);
        self.local = 0;
        self.mask.store(0, Ordering::Release);
        shard.magazines.retain(|(_, m)| !Arc::ptr_eq(m, &self.mask));
    }
}

impl Drop for SharedCache<'_> {
    fn drop(&mut self) {
        self.drain();
    }
}
