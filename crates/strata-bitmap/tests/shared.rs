//! [`SharedBitmap`] under concurrency (direct calls and per-thread caches,
//! cross-thread frees), its refusals around shard boundaries and magazines,
//! its statistics and image, and a [`BlockBitmap`] of more than 2^32 blocks.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Barrier};
use std::thread;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_bitmap::{
    BitmapError, Block, BlockBitmap, Extent, SharedBitmap, SharedCache, SHARD_BLOCKS_MIN, WORD_BITS,
};

/// Environment variable that replaces the default seed.
const SEED_ENV: &str = "STRATA_SEED";
const DEFAULT_SEED: u64 = 0x5EED_B175;
/// Worker threads of the concurrent tests (2 to 4 is the brief).
const THREADS: usize = 4;
/// Operations per worker thread.
const OPS_PER_THREAD: usize = 20_000;
/// Blocks a worker holds at most before it only frees.
const HELD_BLOCKS_MAX: u64 = 30_000;
/// Longest extent a worker asks for (usually far less).
const WORKER_EXTENT_MAX: u64 = 4096;
/// Items a producer sends in the cross-thread test.
const CROSS_THREAD_ITEMS: usize = 20_000;
/// Shards of the concurrent tests' bitmaps.
const SHARDS: usize = 4;
const SHARD: u64 = SHARD_BLOCKS_MIN;

fn seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{SEED_ENV}={s:?} is not a u64: {e}")),
        Err(_) => DEFAULT_SEED,
    }
}

/// One flag per block, set while some thread holds the block.
struct Claims(Vec<AtomicBool>);

impl Claims {
    fn new(capacity: u64) -> Self {
        Claims((0..capacity).map(|_| AtomicBool::new(false)).collect())
    }

    /// Record that `who` was handed `extent`: no block may already be held.
    fn claim(&self, extent: Extent, who: &str) {
        for b in extent.blocks() {
            let was = self.0[b as usize].swap(true, Ordering::AcqRel);
            assert!(
                !was,
                "{who}: block {b} (of {extent:?}) handed out while already held"
            );
        }
    }

    /// Record that `who` gives `extent` back (before freeing it).
    fn release(&self, extent: Extent, who: &str) {
        for b in extent.blocks() {
            let was = self.0[b as usize].swap(false, Ordering::AcqRel);
            assert!(
                was,
                "{who}: releasing block {b} (of {extent:?}) that was not held"
            );
        }
    }

    fn held(&self) -> u64 {
        self.0.iter().filter(|f| f.load(Ordering::Acquire)).count() as u64
    }
}

fn len_of(held: &[Extent]) -> u64 {
    held.iter().map(|e| e.len).sum()
}

/// A worker: allocates and frees at random, directly and through its own
/// cache, recording every block it is handed in `claims`. Returns what it
/// still holds (its cache dropped).
fn worker(
    shared: &SharedBitmap,
    claims: &Claims,
    reserved: &[Range<u64>],
    seed: u64,
    t: usize,
) -> Vec<Extent> {
    let mut rng = SmallRng::seed_from_u64(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9));
    let mut held: Vec<Extent> = Vec::new();
    let mut held_blocks = 0u64;
    let mut cache: Option<SharedCache<'_>> = None;
    let cap = shared.capacity_blocks();
    for i in 0..OPS_PER_THREAD {
        let who = format!("seed {seed} thread {t} op {i}");
        let free_only = held_blocks > HELD_BLOCKS_MAX;
        match rng.gen_range(0..100) {
            0..=24 if !free_only => {
                if let Some(b) = shared.alloc() {
                    let e = Extent { start: b.0, len: 1 };
                    claims.claim(e, &who);
                    held.push(e);
                    held_blocks += 1;
                }
            }
            25..=39 if !free_only => {
                let len = if rng.gen_bool(0.9) {
                    rng.gen_range(1..=64)
                } else {
                    rng.gen_range(65..=WORKER_EXTENT_MAX)
                };
                if let Some(e) = shared.alloc_extent(len) {
                    assert_eq!(e.len, len, "{who}: extent length");
                    assert!(e.end() <= cap, "{who}: {e:?} past capacity {cap}");
                    claims.claim(e, &who);
                    held.push(e);
                    held_blocks += len;
                }
            }
            40..=64 if !free_only => {
                let c = cache.get_or_insert_with(|| shared.cache());
                if let Some(b) = c.alloc() {
                    assert!(b.0 < cap, "{who}: cache block {b:?} past capacity");
                    let e = Extent { start: b.0, len: 1 };
                    claims.claim(e, &who);
                    held.push(e);
                    held_blocks += 1;
                }
            }
            65..=66 => {
                drop(cache.take());
            }
            67..=68 => {
                // Refusals that cannot touch another thread's blocks.
                if let Some(r) = reserved.first() {
                    let b = rng.gen_range(r.clone());
                    assert_eq!(
                        shared.free(Block(b)),
                        Err(BitmapError::Reserved { block: b }),
                        "{who}"
                    );
                }
                assert_eq!(
                    shared.free(Block(cap)),
                    Err(BitmapError::OutOfRange {
                        block: cap,
                        capacity_blocks: cap
                    }),
                    "{who}"
                );
            }
            _ => {
                if held.is_empty() {
                    continue;
                }
                let e = held.swap_remove(rng.gen_range(0..held.len()));
                if e.len > 1 && rng.gen_bool(0.3) {
                    // Free the front part, keep the rest.
                    let k = rng.gen_range(1..e.len);
                    let front = Extent {
                        start: e.start,
                        len: k,
                    };
                    claims.release(front, &who);
                    assert_eq!(
                        shared.free_extent(front),
                        Ok(()),
                        "{who}: free_extent({front:?})"
                    );
                    held.push(Extent {
                        start: e.start + k,
                        len: e.len - k,
                    });
                    held_blocks -= k;
                    continue;
                }
                claims.release(e, &who);
                let result = match (e.len, rng.gen_range(0..3), cache.as_mut()) {
                    (1, 0, Some(c)) => c.free(Block(e.start)),
                    (1, 1, _) => shared.free(Block(e.start)),
                    _ => shared.free_extent(e),
                };
                assert_eq!(result, Ok(()), "{who}: freeing held {e:?}");
                held_blocks -= e.len;
            }
        }
    }
    drop(cache);
    assert_eq!(
        len_of(&held),
        held_blocks,
        "seed {seed} thread {t}: held count"
    );
    held
}

/// Observer: while the workers run, the accounting always adds up and
/// every invariant (including "magazine blocks are allocated") holds.
fn observer(shared: &SharedBitmap, reserved: u64, stop: &AtomicBool) -> usize {
    let mut rounds = 0;
    while !stop.load(Ordering::Acquire) {
        let s = shared.stats();
        assert_eq!(
            s.allocated_blocks + s.free_blocks + s.reserved_blocks,
            s.capacity_blocks
        );
        assert_eq!(s.reserved_blocks, reserved);
        assert!(s.largest_free_run_blocks <= s.free_blocks, "{s:?}");
        shared.check_invariants();
        rounds += 1;
        thread::yield_now();
    }
    rounds
}

#[test]
fn concurrent_alloc_free_never_hands_out_a_block_twice() {
    let seed = seed();
    for threads in [2, THREADS] {
        let cap = SHARDS as u64 * SHARD;
        let shared = SharedBitmap::with_shards(cap, SHARDS).unwrap();
        assert_eq!(shared.shard_count(), SHARDS);
        // Reserved ranges, one across a shard boundary.
        let reserved = vec![
            0..64,
            SHARD - 32..SHARD + 32,
            3 * SHARD + 100..3 * SHARD + 200,
        ];
        for r in &reserved {
            shared.reserve(r.clone()).unwrap();
        }
        let reserved_blocks: u64 = reserved.iter().map(|r| r.end - r.start).sum();
        let claims = Claims::new(cap);
        let stop = AtomicBool::new(false);
        let (held, rounds) = thread::scope(|s| {
            let obs = s.spawn(|| observer(&shared, reserved_blocks, &stop));
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (shared, claims, reserved) = (&shared, &claims, &reserved);
                    s.spawn(move || worker(shared, claims, reserved, seed, t))
                })
                .collect();
            let held: Vec<Vec<Extent>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            stop.store(true, Ordering::Release);
            (held, obs.join().unwrap())
        });
        assert!(rounds > 0, "the observer never ran");
        let all: Vec<Extent> = held.into_iter().flatten().collect();
        let total = len_of(&all);
        assert_eq!(
            claims.held(),
            total,
            "seed {seed}: claim flags vs held lists"
        );
        // Every held block is a distinct, allocated block.
        let mut seen = vec![false; cap as usize];
        for e in &all {
            for b in e.blocks() {
                assert!(
                    !std::mem::replace(&mut seen[b as usize], true),
                    "seed {seed}: {b} held twice"
                );
            }
        }
        let stats = shared.stats();
        assert_eq!(
            stats.allocated_blocks, total,
            "seed {seed} threads {threads}: allocated vs held"
        );
        assert_eq!(stats.reserved_blocks, reserved_blocks);
        assert_eq!(stats.free_blocks, cap - total - reserved_blocks);
        shared.check_invariants();
        // The image agrees block by block.
        let image = BlockBitmap::from_bytes(&shared.to_bytes()).unwrap();
        for e in &all {
            assert!(
                e.blocks().all(|b| image.is_allocated(b)),
                "seed {seed}: {e:?} not allocated in the image"
            );
        }
        assert_eq!(image.allocated_blocks(), total);
        for e in &all {
            shared.free_extent(*e).unwrap();
        }
        assert_eq!(shared.stats().allocated_blocks, 0);
        shared.check_invariants();
    }
}

#[test]
fn cross_thread_frees() {
    let seed = seed();
    let cap = SHARDS as u64 * SHARD;
    let shared = SharedBitmap::with_shards(cap, SHARDS).unwrap();
    let claims = Claims::new(cap);
    let producer = |t: usize, tx: mpsc::SyncSender<Extent>| {
        let mut rng = SmallRng::seed_from_u64(seed ^ t as u64);
        let mut cache = shared.cache();
        for i in 0..CROSS_THREAD_ITEMS {
            let who = format!("seed {seed} producer {t} item {i}");
            let e = match rng.gen_range(0..3) {
                0 => cache.alloc().map(|b| Extent { start: b.0, len: 1 }),
                1 => shared.alloc().map(|b| Extent { start: b.0, len: 1 }),
                _ => shared.alloc_extent(rng.gen_range(1..=32)),
            }
            .unwrap_or_else(|| panic!("{who}: bitmap unexpectedly full"));
            claims.claim(e, &who);
            tx.send(e).unwrap();
        }
    };
    let consumer = |t: usize, rx: mpsc::Receiver<Extent>| {
        let mut cache = shared.cache();
        let mut n = 0;
        for e in rx {
            let who = format!("seed {seed} consumer {t} item {n}");
            claims.release(e, &who);
            let result = if e.len == 1 && n % 2 == 0 {
                cache.free(Block(e.start))
            } else {
                shared.free_extent(e)
            };
            assert_eq!(
                result,
                Ok(()),
                "{who}: freeing {e:?} allocated by another thread"
            );
            n += 1;
        }
        n
    };
    let freed = thread::scope(|s| {
        let mut consumers = Vec::new();
        for t in 0..2 {
            let (tx, rx) = mpsc::sync_channel(64);
            s.spawn(move || producer(t, tx));
            consumers.push(s.spawn(move || consumer(t, rx)));
        }
        consumers
            .into_iter()
            .map(|c| c.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(freed, 2 * CROSS_THREAD_ITEMS);
    assert_eq!(claims.held(), 0);
    let stats = shared.stats();
    assert_eq!(stats.allocated_blocks, 0, "{stats:?}");
    assert_eq!(stats.largest_free_run_blocks, cap);
    shared.check_invariants();
}

#[test]
fn blocks_in_a_magazine_cannot_be_freed() {
    let shared = SharedBitmap::with_shards(2 * SHARD, 2).unwrap();
    let mut c1 = shared.cache();
    let a = c1.alloc().unwrap();
    // A fresh shard: the magazine claimed (at least) the whole word of `a`,
    // and claimed blocks count as allocated.
    assert_eq!(a.0 % WORD_BITS, 0);
    let cached = c1.cached_blocks();
    assert!(cached >= WORD_BITS - 1, "magazine holds {cached} blocks");
    assert_eq!(shared.stats().allocated_blocks, cached + 1);
    let inside = a.0 + 1;
    let last = a.0 + WORD_BITS - 1;
    let before = shared.to_bytes();
    assert_eq!(
        shared.free(Block(inside)),
        Err(BitmapError::NotAllocated { block: inside })
    );
    assert_eq!(
        shared.free(Block(last)),
        Err(BitmapError::NotAllocated { block: last })
    );
    let mut c2 = shared.cache();
    assert_eq!(
        c2.free(Block(inside)),
        Err(BitmapError::NotAllocated { block: inside })
    );
    assert_eq!(
        shared.free_extent(Extent { start: a.0, len: 3 }),
        Err(BitmapError::NotAllocated { block: inside })
    );
    assert_eq!(
        shared.reserve(inside..inside + 1),
        Err(BitmapError::ReserveInUse { block: inside })
    );
    assert_eq!(
        shared.to_bytes(),
        before,
        "a refused free changed the bitmap"
    );
    shared.check_invariants();
    // Once handed out, the block can be freed, from anywhere.
    assert_eq!(c1.alloc(), Some(Block(inside)));
    assert_eq!(c2.free(Block(inside)), Ok(()));
    assert_eq!(
        c2.free(Block(inside)),
        Err(BitmapError::NotAllocated { block: inside })
    );
    assert_eq!(shared.free(a), Ok(()));
    drop(c1);
    drop(c2);
    assert_eq!(shared.stats().allocated_blocks, 0);
    shared.check_invariants();

    // Across threads: B cannot free what sits in A's magazine.
    let barrier = Barrier::new(2);
    let (tx, rx) = mpsc::channel();
    let (barrier, shared_ref) = (&barrier, &shared);
    thread::scope(|s| {
        s.spawn(move || {
            let shared = shared_ref;
            let mut cache = shared.cache();
            let b = cache.alloc().unwrap();
            tx.send(b).unwrap();
            barrier.wait(); // B checks while the magazine is alive
            barrier.wait();
            assert!(cache.cached_blocks() > 0);
        });
        s.spawn(move || {
            let shared = shared_ref;
            let b = rx.recv().unwrap();
            let mut other = shared.cache();
            assert_eq!(
                other.alloc().map(|x| x.0 / WORD_BITS == b.0 / WORD_BITS),
                Some(false)
            );
            let neighbour = b.0 ^ 1;
            assert_eq!(
                shared.free(Block(neighbour)),
                Err(BitmapError::NotAllocated { block: neighbour })
            );
            assert_eq!(
                other.free(Block(neighbour)),
                Err(BitmapError::NotAllocated { block: neighbour })
            );
            assert_eq!(other.free(b), Ok(()));
            assert_eq!(
                shared.free(b),
                Err(BitmapError::NotAllocated { block: b.0 })
            );
            barrier.wait();
            barrier.wait();
        });
    });
    assert_eq!(shared.stats().allocated_blocks, 1, "B's one allocation");
    shared.check_invariants();
}

/// A bitmap of two shards, entirely allocated.
fn full_two_shards() -> SharedBitmap {
    let shared = SharedBitmap::with_shards(2 * SHARD, 2).unwrap();
    assert_eq!(shared.extent_blocks_max(), SHARD);
    let a = shared.alloc_extent(SHARD).unwrap();
    let b = shared.alloc_extent(SHARD).unwrap();
    assert_eq!(a.start.min(b.start), 0);
    assert_eq!(a.start.max(b.start), SHARD);
    assert_eq!(shared.alloc(), None);
    shared
}

#[test]
fn free_extent_and_reserve_across_shard_boundaries() {
    let shared = full_two_shards();
    let e = Extent {
        start: SHARD - 100,
        len: 200,
    };
    assert_eq!(shared.free_extent(e), Ok(()));
    let s = shared.stats();
    assert_eq!((s.free_blocks, s.largest_free_run_blocks), (200, 200));
    assert_eq!(
        shared.free_extent(e),
        Err(BitmapError::NotAllocated { block: SHARD - 100 })
    );
    assert_eq!(
        shared.free_extent(Extent {
            start: SHARD - 150,
            len: 100
        }),
        Err(BitmapError::NotAllocated { block: SHARD - 100 })
    );
    // Partly free: nothing of the allocated part is freed.
    let before = shared.to_bytes();
    assert_eq!(
        shared.free_extent(Extent {
            start: SHARD - 300,
            len: 250
        }),
        Err(BitmapError::NotAllocated { block: SHARD - 100 })
    );
    assert_eq!(
        shared.to_bytes(),
        before,
        "a refused free_extent changed the bitmap"
    );

    // Reserve across the boundary: blocks SHARD-100..SHARD+100 are free.
    assert_eq!(shared.reserve(SHARD - 50..SHARD + 50), Ok(()));
    assert_eq!(shared.stats().reserved_blocks, 100);
    // Over the allocated blocks past the free run, in the second shard only.
    let before = shared.to_bytes();
    assert_eq!(
        shared.reserve(SHARD - 10..SHARD + 101),
        Err(BitmapError::ReserveInUse { block: SHARD + 100 })
    );
    // The first allocated block is named even when it is in the first shard.
    assert_eq!(
        shared.reserve(SHARD - 101..SHARD + 101),
        Err(BitmapError::ReserveInUse { block: SHARD - 101 })
    );
    assert_eq!(
        shared.to_bytes(),
        before,
        "a refused reserve changed the bitmap"
    );
    assert_eq!(
        shared.free(Block(SHARD)),
        Err(BitmapError::Reserved { block: SHARD })
    );
    assert_eq!(
        shared.free(Block(SHARD - 1)),
        Err(BitmapError::Reserved { block: SHARD - 1 })
    );
    // The image has one range, not two halves.
    let image = BlockBitmap::from_bytes(&shared.to_bytes()).unwrap();
    assert_eq!(
        image.reserved(),
        std::slice::from_ref(&(SHARD - 50..SHARD + 50))
    );
    // Growing it on both sides across the boundary merges into one range.
    shared.reserve(SHARD - 100..SHARD - 50).unwrap();
    shared.reserve(SHARD + 40..SHARD + 100).unwrap();
    let image = BlockBitmap::from_bytes(&shared.to_bytes()).unwrap();
    assert_eq!(
        image.reserved(),
        std::slice::from_ref(&(SHARD - 100..SHARD + 100))
    );
    let s = shared.stats();
    assert_eq!(
        (s.reserved_blocks, s.free_blocks, s.largest_free_run_blocks),
        (200, 0, 0)
    );
    // An extent over reserved blocks in both shards names the first.
    assert_eq!(
        shared.free_extent(Extent {
            start: SHARD - 200,
            len: 400
        }),
        Err(BitmapError::Reserved { block: SHARD - 100 })
    );
    shared.check_invariants();
}

/// The same refusal from a shared bitmap and from a single bitmap in the
/// same state: a free block is reported before a reserved one over the
/// whole extent, as [`BlockBitmap::free_extent`] does, even when the
/// reserved block is in an earlier shard.
#[test]
fn free_extent_error_order_across_shards_matches_block_bitmap() {
    let shared = full_two_shards();
    shared.free(Block(SHARD + 20)).unwrap();
    shared.free(Block(SHARD - 20)).unwrap();
    shared.reserve(SHARD - 20..SHARD - 19).unwrap();
    let mut twin = BlockBitmap::from_bytes(&shared.to_bytes()).unwrap();
    // Reserved SHARD-20 (first shard), free SHARD+20 (second shard).
    let e = Extent {
        start: SHARD - 30,
        len: 60,
    };
    let before = shared.to_bytes();
    let want = twin.free_extent(e);
    assert_eq!(want, Err(BitmapError::NotAllocated { block: SHARD + 20 }));
    assert_eq!(
        shared.free_extent(e),
        want,
        "SharedBitmap::free_extent({e:?}) vs BlockBitmap"
    );
    assert_eq!(shared.to_bytes(), before);
}

/// A block sitting in a magazine counts as "not allocated" for
/// `free_extent`, which names the first such block of the request.
#[test]
fn free_extent_names_the_first_magazine_block() {
    let shared = SharedBitmap::with_shards(2 * SHARD, 2).unwrap();
    let mut cache = shared.cache();
    let a = cache.alloc().unwrap();
    assert_eq!(a.0 % WORD_BITS, 0);
    // a+1..past sit in the magazine (whole fresh words); `past` is free in
    // the bitmap.
    let past = a.0 + 1 + cache.cached_blocks();
    assert_eq!(past % WORD_BITS, 0);
    let e = Extent {
        start: a.0,
        len: past + 1 - a.0,
    };
    let after_free = shared.free_extent(e);
    // The same with `past` reserved: the magazine block still comes first.
    shared.reserve(past..past + 1).unwrap();
    let after_reserved = shared.free_extent(e);
    let want = Err(BitmapError::NotAllocated { block: a.0 + 1 });
    assert_eq!(
        (after_free, after_reserved),
        (want.clone(), want),
        "free_extent({e:?}) with {}..{past} in a magazine, {past} free / reserved",
        a.0 + 1
    );
}

/// Longest free run of a naive per-block view.
fn naive_largest(free: &[bool]) -> u64 {
    let (mut best, mut run) = (0u64, 0u64);
    for &f in free {
        run = if f { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[test]
fn largest_free_run_across_shards_matches_naive() {
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    // Three full shards and a short last one.
    let cap = 3 * SHARD + 777;
    let shared = SharedBitmap::with_shards(cap, 4).unwrap();
    assert_eq!(shared.shard_count(), 4);
    // Everything allocated, then freed in random extents, many across boundaries.
    let mut free = vec![false; cap as usize];
    let mut pos = 0;
    while pos < cap {
        let len = (cap - pos).min(SHARD);
        let e = shared.alloc_extent(len).unwrap();
        assert!(e.len == len);
        pos += len;
    }
    assert_eq!(shared.stats().free_blocks, 0);
    for step in 0..300 {
        let boundary = SHARD * rng.gen_range(1..4);
        let start = match rng.gen_range(0..3) {
            0 => boundary - rng.gen_range(1..2000).min(boundary),
            1 => rng.gen_range(0..cap),
            _ => cap - rng.gen_range(1..=1000),
        };
        let len_max = if rng.gen_bool(0.8) {
            5000
        } else {
            3 * SHARD / 2
        };
        let len = rng.gen_range(1..=(cap - start).min(len_max));
        let e = Extent { start, len };
        let first_free = (start..start + len).find(|&b| free[b as usize]);
        let result = shared.free_extent(e);
        match first_free {
            Some(block) => assert_eq!(
                result,
                Err(BitmapError::NotAllocated { block }),
                "seed {seed} step {step}"
            ),
            None => {
                assert_eq!(
                    result,
                    Ok(()),
                    "seed {seed} step {step}: free_extent({e:?})"
                );
                free[start as usize..(start + len) as usize].fill(true);
            }
        }
        let s = shared.stats();
        let want = naive_largest(&free);
        assert_eq!(
            s.largest_free_run_blocks, want,
            "seed {seed} step {step} after {e:?}"
        );
        assert_eq!(s.free_blocks, free.iter().filter(|f| **f).count() as u64);
        if step % 50 == 0 {
            let mut single = BlockBitmap::from_bytes(&shared.to_bytes()).unwrap();
            assert_eq!(
                single.largest_free_run_blocks(),
                want,
                "seed {seed} step {step}: image"
            );
        }
        if s.free_blocks > cap / 2 {
            // Take some back: allocate whatever fits and mark it.
            for _ in 0..20 {
                if let Some(e) = shared.alloc_extent(rng.gen_range(1..5000)) {
                    for b in e.blocks() {
                        assert!(free[b as usize], "seed {seed}: {b} handed out but not free");
                        free[b as usize] = false;
                    }
                }
            }
        }
    }
    shared.check_invariants();
}

#[test]
fn shared_image_round_trips_through_block_bitmap() {
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let cap = 5 * SHARD + 12_345;
    let shared = SharedBitmap::with_shards(cap, 8).unwrap();
    shared.reserve(0..100).unwrap();
    shared.reserve(2 * SHARD - 3..2 * SHARD + 3).unwrap();
    shared.reserve(cap - 10..cap).unwrap();
    let mut held = Vec::new();
    for _ in 0..2000 {
        if let Some(e) = shared.alloc_extent(rng.gen_range(1..300)) {
            held.push(e);
        }
    }
    for e in held.iter().step_by(3) {
        shared.free_extent(*e).unwrap();
    }
    // A live cache: its magazine counts as allocated in the image.
    let mut cache = shared.cache();
    let _kept = cache.alloc().unwrap();
    let bytes = shared.to_bytes();
    let single = BlockBitmap::from_bytes(&bytes).unwrap();
    single.check_invariants();
    assert_eq!(
        single.to_bytes(),
        bytes,
        "BlockBitmap image differs from the SharedBitmap one"
    );
    let s = shared.stats();
    assert_eq!(single.allocated_blocks(), s.allocated_blocks);
    assert_eq!(single.free_blocks(), s.free_blocks);
    assert_eq!(
        single.reserved(),
        &[0..100, 2 * SHARD - 3..2 * SHARD + 3, cap - 10..cap]
    );
    drop(cache);
    // Back into shared bitmaps of any shard count, and out again.
    let bytes = shared.to_bytes();
    for shards in [1, 2, 3, 8, 64] {
        let single = BlockBitmap::from_bytes(&bytes).unwrap();
        let again = SharedBitmap::from_bitmap(single, shards);
        again.check_invariants();
        assert_eq!(
            again.to_bytes(),
            bytes,
            "from_bitmap(.., {shards}) round trip"
        );
        let mut single = BlockBitmap::from_bytes(&bytes).unwrap();
        assert_eq!(again.stats(), single.stats(), "stats with {shards} shards");
    }
    let again = SharedBitmap::from_bytes(&bytes).unwrap();
    assert_eq!(again.to_bytes(), bytes);
    again.check_invariants();
}

/// More than 2^32 blocks: positions, extents and ranges past u32, across the
/// 2^31 and 2^32 boundaries. About 800 MB, a few seconds.
#[test]
fn block_bitmap_beyond_u32_blocks() {
    const T: u64 = 1 << 31;
    const F: u64 = 1 << 32;
    const CAP: u64 = F + 1000;
    let mut bm = BlockBitmap::new(CAP).unwrap();
    assert_eq!(bm.capacity_blocks(), CAP);
    assert_eq!(bm.alloc(), Some(Block(0)));
    assert_eq!(bm.alloc_near(F + 500), Some(Block(F + 500)));
    assert!(bm.is_allocated(F + 500) && bm.is_free(F + 499) && bm.is_free(CAP - 1));
    // Leave free only T-10..T+10 and F-10..F+10.
    let fills = [
        (1, T - 10),
        (T + 10, F - 10),
        (F + 10, F + 500),
        (F + 501, CAP),
    ];
    for (start, end) in fills {
        let got = bm.alloc_extent_near(end - start, start);
        assert_eq!(
            got,
            Some(Extent {
                start,
                len: end - start
            })
        );
    }
    let s = bm.stats();
    assert_eq!(
        (s.free_blocks, s.largest_free_run_blocks, s.allocated_blocks),
        (40, 20, CAP - 40)
    );
    assert_eq!(
        bm.try_alloc_extent(21),
        Err(BitmapError::NoSpace {
            requested_blocks: 21,
            free_blocks: 40,
            largest_free_run_blocks: 20
        })
    );
    // Hinted past the first run's start: the run crossing 2^32.
    assert_eq!(
        bm.alloc_extent_near(20, T + 5),
        Some(Extent {
            start: F - 10,
            len: 20
        })
    );
    // Next-fit from F+10 wraps to the run crossing 2^31.
    assert_eq!(
        bm.alloc_extent(20),
        Some(Extent {
            start: T - 10,
            len: 20
        })
    );
    assert_eq!(bm.alloc(), None);
    assert_eq!(bm.stats().free_blocks, 0);
    bm.free_extent(Extent {
        start: T - 10,
        len: 20,
    })
    .unwrap();
    bm.free_extent(Extent {
        start: F - 10,
        len: 20,
    })
    .unwrap();
    assert_eq!(
        bm.free_extent(Extent {
            start: F - 10,
            len: 20
        }),
        Err(BitmapError::NotAllocated { block: F - 10 })
    );
    // Reserve across 2^32.
    assert_eq!(
        bm.reserve(F - 20..F),
        Err(BitmapError::ReserveInUse { block: F - 20 })
    );
    assert_eq!(bm.reserve(F - 5..F + 5), Ok(()));
    assert_eq!(bm.reserved(), std::slice::from_ref(&(F - 5..F + 5)));
    assert!(bm.is_reserved(F) && bm.is_reserved(F - 5) && !bm.is_reserved(F + 5));
    assert_eq!(bm.free(Block(F)), Err(BitmapError::Reserved { block: F }));
    assert_eq!(
        bm.free(Block(CAP)),
        Err(BitmapError::OutOfRange {
            block: CAP,
            capacity_blocks: CAP
        })
    );
    // F-10..F-5 and F+5..F+10 are too short for 10: the run across 2^31.
    assert_eq!(
        bm.alloc_extent_near(10, F - 10),
        Some(Extent {
            start: T - 10,
            len: 10
        })
    );
    assert_eq!(bm.alloc_extent(10), Some(Extent { start: T, len: 10 }));
    // Nothing free at or after F+500: wrap to the first free block.
    assert_eq!(bm.alloc_near(F + 500), Some(Block(F - 10)));
    assert_eq!(bm.alloc_near(F + 6), Some(Block(F + 6)));
    // Free almost everything: runs longer than a run tree (2^31 blocks).
    bm.free_extent(Extent {
        start: 0,
        len: T - 10,
    })
    .unwrap();
    bm.free_extent(Extent {
        start: T - 10,
        len: 20,
    })
    .unwrap();
    bm.free_extent(Extent {
        start: T + 10,
        len: F - 10 - T - 10,
    })
    .unwrap();
    bm.free(Block(F - 10)).unwrap();
    let s = bm.stats();
    assert_eq!(s.largest_free_run_blocks, F - 5, "run 0..F-5");
    assert_eq!(s.reserved_blocks, 10);
    let big = bm.alloc_extent_near(F - 5, 1);
    assert_eq!(
        big,
        Some(Extent {
            start: 0,
            len: F - 5
        })
    );
    let s = bm.stats();
    assert_eq!(s.allocated_blocks, CAP - 10 - s.free_blocks);
    // Left free: F+5 and F+7..F+10.
    assert_eq!((s.free_blocks, s.largest_free_run_blocks), (4, 3));
    // O(capacity), about 2.5 s here: worth it once at this size.
    bm.check_invariants();
}
