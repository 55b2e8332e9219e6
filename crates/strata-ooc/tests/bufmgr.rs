//! The buffer manager against a model: seeded random pin / unpin /
//! prefetch / insert_intermediate / discard sequences under capacity
//! pressure for every policy, with intermediates spilled to a
//! [`StoreSpill`] over memory; exact `CacheFull`; bit flips in spilled
//! records; several threads pinning at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_disk::device::{Fault, FaultyDevice, MemDevice};
use strata_ooc::bufmgr::{pool_block_bytes, BufferManager, ChunkLoader, Pinned, SpillTarget};
use strata_ooc::contract::PolicyKind;
use strata_ooc::error::OocError;
use strata_ooc::policy::ChunkKey;
use strata_ooc::spill::StoreSpill;
use strata_pool::budget::{
    GreedyPool, MemoryConsumer, MemoryPool, Reservation, TrackConsumersPool,
};
use strata_pool::{HybridPool, PoolConfig};

/// Keys at or above this are intermediates (the loader does not know them).
const INTERMEDIATE_BASE: u64 = 1 << 20;

/// Source chunks in memory; counts loads and catches two loads of one key
/// at once.
struct ModelLoader {
    chunks: Vec<Vec<u8>>,
    loads: Vec<AtomicU64>,
    loading: Vec<AtomicBool>,
    overlapping_loads: AtomicU64,
    /// Yield inside a load, widening the window for races.
    slow: bool,
}

impl ModelLoader {
    fn new(chunks: Vec<Vec<u8>>, slow: bool) -> ModelLoader {
        let n = chunks.len();
        ModelLoader {
            chunks,
            loads: (0..n).map(|_| AtomicU64::new(0)).collect(),
            loading: (0..n).map(|_| AtomicBool::new(false)).collect(),
            overlapping_loads: AtomicU64::new(0),
            slow,
        }
    }

    fn total_loads(&self) -> u64 {
        self.loads.iter().map(|l| l.load(Ordering::Relaxed)).sum()
    }
}

impl ChunkLoader for ModelLoader {
    fn chunk_bytes(&self, key: ChunkKey) -> Result<u64, OocError> {
        self.chunks
            .get(key.0 as usize)
            .map(|c| c.len() as u64)
            .ok_or(OocError::UnknownChunk { key })
    }

    fn load(&self, key: ChunkKey, out: &mut [u8]) -> Result<(), OocError> {
        let index = key.0 as usize;
        let chunk = self
            .chunks
            .get(index)
            .ok_or(OocError::UnknownChunk { key })?;
        if self.loading[index].swap(true, Ordering::AcqRel) {
            self.overlapping_loads.fetch_add(1, Ordering::Relaxed);
        }
        self.loads[index].fetch_add(1, Ordering::Relaxed);
        if self.slow {
            std::thread::yield_now();
        }
        out.copy_from_slice(chunk);
        self.loading[index].store(false, Ordering::Release);
        Ok(())
    }
}

/// A budget of exactly `capacity_bytes`: the pool refuses any byte beyond.
struct Budget {
    tracked: Arc<TrackConsumersPool<GreedyPool>>,
    reservation: Reservation,
}

fn budget(capacity_bytes: u64) -> Budget {
    let tracked = Arc::new(TrackConsumersPool::new(GreedyPool::new(capacity_bytes), 4));
    let dyn_pool: Arc<dyn MemoryPool> = tracked.clone();
    let reservation = MemoryConsumer::new("chunk cache").register(&dyn_pool);
    Budget {
        tracked,
        reservation,
    }
}

fn pool() -> HybridPool {
    HybridPool::new(PoolConfig::default()).expect("CPU pool")
}

fn mem_spill(len_bytes: u64) -> StoreSpill<MemDevice> {
    StoreSpill::create(MemDevice::new(len_bytes, 4096).expect("device"), None).expect("store")
}

fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    // Half compressible, half not, so both raw and compressed records occur.
    if rng.gen_bool(0.5) {
        (0..len).map(|_| rng.gen()).collect()
    } else {
        let fill: u8 = rng.gen();
        (0..len)
            .map(|i| fill.wrapping_add((i / 64) as u8))
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Pin(u64),
    Unpin(usize),
    Prefetch(u64),
    Insert(u64),
    Discard(u64),
}

/// The chunk sizes: below, at and well above the pool's small-block sizes.
/// Each one's block is a whole number of pages, so a block the profiler
/// samples (placed like a large block) takes no more than its class, and
/// the model knows every entry's block bytes.
const CHUNK_SIZES_BYTES: [usize; 5] = [1, 3000, 20_000, 40_000, 130_000];

#[test]
fn model_chunk_sizes_take_whole_pages() {
    for len in CHUNK_SIZES_BYTES {
        let block = pool_block_bytes(len as u64);
        assert!(
            block.is_multiple_of(4096),
            "{len} bytes take a block of {block}"
        );
    }
}

/// Returns the spills, reloads and `CacheFull` refusals seen.
fn run_model(policy: PolicyKind, seed: u64, op_count: usize) -> (u64, u64, u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let source_count = 12u64;
    let intermediate_count = 8u64;
    let chunks: Vec<Vec<u8>> = (0..source_count)
        .map(|_| {
            let len = CHUNK_SIZES_BYTES[rng.gen_range(0..CHUNK_SIZES_BYTES.len())];
            random_bytes(&mut rng, len)
        })
        .collect();
    let intermediate_len: Vec<usize> = (0..intermediate_count)
        .map(|_| CHUNK_SIZES_BYTES[rng.gen_range(0..CHUNK_SIZES_BYTES.len())])
        .collect();
    let key_of = |rng: &mut SmallRng| {
        if rng.gen_bool(0.6) {
            rng.gen_range(0..source_count)
        } else {
            INTERMEDIATE_BASE + rng.gen_range(0..intermediate_count)
        }
    };
    let ops: Vec<Op> = (0..op_count)
        .map(|_| match rng.gen_range(0..100) {
            0..=39 => Op::Pin(key_of(&mut rng)),
            40..=64 => Op::Unpin(rng.gen_range(0..8)),
            65..=74 => Op::Prefetch(key_of(&mut rng)),
            75..=89 => Op::Insert(INTERMEDIATE_BASE + rng.gen_range(0..intermediate_count)),
            _ => Op::Discard(key_of(&mut rng)),
        })
        .collect();
    let schedule: Vec<ChunkKey> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Pin(k) => Some(ChunkKey(*k)),
            _ => None,
        })
        .collect();
    // Room for a few of the largest chunks: pressure, and CacheFull when
    // several large chunks are pinned.
    let capacity_bytes = 3 * pool_block_bytes(130_000) + pool_block_bytes(20_000);
    let loader = ModelLoader::new(chunks.clone(), false);
    let spill = mem_spill(64 << 20);
    let budget = budget(capacity_bytes);
    let pool = pool();
    let manager = BufferManager::new(
        &pool,
        &budget.reservation,
        &loader,
        Some(&spill as &dyn SpillTarget),
        policy.build(&schedule),
        capacity_bytes,
    );
    let context =
        |step: usize, op: Op| format!("policy {} seed {seed} step {step} op {op:?}", policy.name());
    // The model: live intermediates' bytes, the pins held.
    let mut intermediates: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut pins: Vec<(u64, Pinned<'_, '_>)> = Vec::new();
    let expected_bytes = |key: u64, intermediates: &HashMap<u64, Vec<u8>>| -> Option<Vec<u8>> {
        if key < INTERMEDIATE_BASE {
            Some(chunks[key as usize].clone())
        } else {
            intermediates.get(&key).cloned()
        }
    };
    let pinned_block_bytes = |pins: &[(u64, Pinned<'_, '_>)]| -> u64 {
        let mut distinct: Vec<u64> = pins.iter().map(|(k, _)| *k).collect();
        distinct.sort_unstable();
        distinct.dedup();
        distinct
            .iter()
            .map(|&k| {
                pool_block_bytes(pins.iter().find(|(p, _)| *p == k).unwrap().1.bytes().len() as u64)
            })
            .sum()
    };
    let mut cache_full_seen = 0u32;
    for (step, &op) in ops.iter().enumerate() {
        let ctx = context(step, op);
        match op {
            Op::Pin(key) => {
                let expected = expected_bytes(key, &intermediates);
                let result = manager.pin(ChunkKey(key));
                match (expected, result) {
                    (Some(bytes), Ok(pinned)) => {
                        assert_eq!(pinned.bytes(), &bytes[..], "{ctx}: pinned bytes differ");
                        assert_eq!(pinned.key(), ChunkKey(key), "{ctx}");
                        pins.push((key, pinned));
                    }
                    (
                        Some(bytes),
                        Err(OocError::CacheFull {
                            key: full_key,
                            needed_bytes,
                            capacity_bytes: cap,
                            pinned_bytes,
                        }),
                    ) => {
                        let pinned_now = pinned_block_bytes(&pins);
                        let block = pool_block_bytes(bytes.len() as u64);
                        assert!(
                            !pins.iter().any(|(k, _)| *k == key),
                            "{ctx}: CacheFull for a pinned chunk"
                        );
                        assert_eq!(
                            (full_key, needed_bytes, cap, pinned_bytes),
                            (ChunkKey(key), block, capacity_bytes, pinned_now),
                            "{ctx}: CacheFull figures"
                        );
                        assert!(
                            pinned_now + block > capacity_bytes,
                            "{ctx}: CacheFull with room"
                        );
                        cache_full_seen += 1;
                    }
                    (None, Err(OocError::UnknownChunk { key: k })) => {
                        assert_eq!(k, ChunkKey(key), "{ctx}");
                    }
                    (expected, result) => panic!(
                        "{ctx}: expected {:?} bytes, got {:?}",
                        expected.map(|b| b.len()),
                        result.map(|p| p.bytes().len())
                    ),
                }
            }
            Op::Unpin(index) => {
                if !pins.is_empty() {
                    let (_, pinned) = pins.remove(index % pins.len());
                    drop(pinned);
                }
            }
            Op::Prefetch(key) => {
                let result = manager.prefetch(ChunkKey(key));
                match expected_bytes(key, &intermediates) {
                    Some(_) => assert!(result.is_ok(), "{ctx}: {result:?}"),
                    None => assert!(
                        matches!(result, Err(OocError::UnknownChunk { .. })),
                        "{ctx}: {result:?}"
                    ),
                }
            }
            Op::Insert(key) => {
                if intermediates.contains_key(&key) {
                    continue; // inserting a live intermediate again is a caller bug
                }
                let len = intermediate_len[(key - INTERMEDIATE_BASE) as usize];
                let bytes = random_bytes(&mut rng, len);
                let block = pool_block_bytes(len as u64);
                let pinned_now = pinned_block_bytes(&pins);
                match manager.insert_intermediate(ChunkKey(key), &bytes) {
                    Ok(()) => {
                        assert!(
                            pinned_now + block <= capacity_bytes,
                            "{ctx}: inserted past capacity"
                        );
                        intermediates.insert(key, bytes);
                    }
                    Err(OocError::CacheFull {
                        pinned_bytes,
                        needed_bytes,
                        ..
                    }) => {
                        assert_eq!((pinned_bytes, needed_bytes), (pinned_now, block), "{ctx}");
                        assert!(
                            pinned_now + block > capacity_bytes,
                            "{ctx}: CacheFull with room"
                        );
                    }
                    Err(other) => panic!("{ctx}: {other}"),
                }
            }
            Op::Discard(key) => {
                let pinned = pins.iter().any(|(k, _)| *k == key);
                let discarded = manager.discard(ChunkKey(key)).expect("discard");
                assert_eq!(
                    discarded, !pinned,
                    "{ctx}: discard of a chunk pinned: {pinned}"
                );
                if discarded {
                    intermediates.remove(&key);
                }
            }
        }
        manager.check_invariants();
        spill.check_invariants();
        let held = manager.held_bytes();
        assert!(
            held <= capacity_bytes,
            "{ctx}: held {held} > capacity {capacity_bytes}"
        );
        // A pinned chunk is never evicted: its bytes stay what they were.
        for (key, pinned) in &pins {
            let expected = expected_bytes(*key, &intermediates).expect("pinned chunks are live");
            assert_eq!(
                pinned.bytes(),
                &expected[..],
                "{ctx}: pinned chunk {key} changed"
            );
        }
        let peak = budget.tracked.peak_bytes();
        assert!(
            peak <= capacity_bytes,
            "{ctx}: budget peak {peak} > capacity {capacity_bytes}"
        );
    }
    drop(pins);
    // Every intermediate discarded: nothing is left on the spill target.
    for &key in intermediates.keys() {
        assert!(
            manager.discard(ChunkKey(key)).expect("discard"),
            "seed {seed}: discard {key}"
        );
    }
    manager.check_invariants();
    spill.check_invariants();
    let (cache, spilled) = (manager.stats(), spill.stats());
    assert_eq!(
        spilled.records_live,
        0,
        "seed {seed} {}: spill records left",
        policy.name()
    );
    assert_eq!(
        (cache.spilled_bytes, cache.reloaded_bytes),
        (spilled.spilled_bytes, spilled.reloaded_bytes),
        "seed {seed} {}: the manager's spill figures against the target's",
        policy.name()
    );
    (spilled.spills, spilled.reloads, u64::from(cache_full_seen))
}

#[test]
fn random_sequences_against_the_model_for_every_policy() {
    for policy in PolicyKind::ALL {
        let mut seen = (0, 0, 0);
        for seed in 0..4 {
            let (spills, reloads, full) = run_model(policy, 0x5eed_0000 + seed, 600);
            seen = (seen.0 + spills, seen.1 + reloads, seen.2 + full);
        }
        // The sequences exercise what they are meant to.
        assert!(
            seen.0 > 0 && seen.1 > 0 && seen.2 > 0,
            "{}: spills, reloads, CacheFull refusals: {seen:?}",
            policy.name()
        );
    }
}

#[test]
fn cache_full_is_exact_when_everything_is_pinned() {
    let len = 20_000usize;
    let block = pool_block_bytes(len as u64);
    let loader = ModelLoader::new((0..5u8).map(|i| vec![i; len]).collect(), false);
    let budget = budget(3 * block);
    let pool = pool();
    let manager = BufferManager::new(
        &pool,
        &budget.reservation,
        &loader,
        None,
        PolicyKind::Lru.build(&[]),
        3 * block,
    );
    let pins: Vec<_> = (0..3)
        .map(|k| manager.pin(ChunkKey(k)).expect("fits"))
        .collect();
    let before = manager.stats();
    match manager.pin(ChunkKey(3)) {
        Err(OocError::CacheFull {
            key,
            needed_bytes,
            capacity_bytes,
            pinned_bytes,
        }) => assert_eq!(
            (key, needed_bytes, capacity_bytes, pinned_bytes),
            (ChunkKey(3), block, 3 * block, 3 * block)
        ),
        other => panic!("expected CacheFull, got {:?}", other.map(|p| p.key())),
    }
    // The refusal changed nothing.
    assert_eq!(manager.stats().evictions, before.evictions);
    assert_eq!(manager.held_bytes(), 3 * block);
    manager.check_invariants();
    drop(pins);
    let pinned = manager.pin(ChunkKey(3)).expect("room after the unpins");
    assert_eq!(pinned.bytes(), &vec![3u8; len][..]);
    assert_eq!(manager.stats().evictions, before.evictions + 1);
}

#[test]
fn a_bit_flip_in_a_spilled_chunk_is_an_error_never_wrong_bytes() {
    let len = 30_000usize;
    let block = pool_block_bytes(len as u64);
    let device = Arc::new(FaultyDevice::new(
        MemDevice::new(4 << 20, 4096).expect("device"),
    ));
    let spill = StoreSpill::create(Arc::clone(&device), None).expect("store");
    let loader = ModelLoader::new(Vec::new(), false);
    let budget = budget(2 * block);
    let pool = pool();
    let manager = BufferManager::new(
        &pool,
        &budget.reservation,
        &loader,
        Some(&spill as &dyn SpillTarget),
        PolicyKind::Lru.build(&[]),
        2 * block,
    );
    let mut rng = SmallRng::seed_from_u64(7);
    let values: Vec<Vec<u8>> = (0..3)
        .map(|_| (0..len).map(|_| rng.gen()).collect())
        .collect();
    for (i, bytes) in values.iter().enumerate() {
        manager
            .insert_intermediate(ChunkKey(INTERMEDIATE_BASE + i as u64), bytes)
            .expect("insert");
    }
    // The third insert evicted the first (LRU): it is the only record.
    let extents: Vec<_> = spill.with_store(|s| s.extents().collect());
    assert_eq!(extents.len(), 1, "{extents:?}");
    let extent = extents[0];
    // Flip a bit in the payload's last block.
    device
        .inject(Fault::BitFlip {
            block: extent.end() - 1,
            bit: 100,
        })
        .expect("inject");
    let key = ChunkKey(INTERMEDIATE_BASE);
    match manager.pin(key) {
        Err(OocError::Spill { key: k, detail }) => {
            assert_eq!(k, key);
            let blocks = format!("blocks {}..{}", extent.start, extent.end());
            for needle in [&blocks[..], "checksum mismatch", "expected", "found"] {
                assert!(
                    detail.contains(needle),
                    "{needle:?} missing from {detail:?}"
                );
            }
        }
        other => panic!(
            "expected a spill error, got {:?}",
            other.map(|p| p.bytes().len())
        ),
    }
    manager.check_invariants();
    assert_eq!(spill.stats().checksum_failures, 1);
    // The flip was on one read: the record itself is intact.
    let pinned = manager.pin(key).expect("second read");
    assert_eq!(pinned.bytes(), &values[0][..]);
    drop(pinned);
    manager.check_invariants();
}

/// Threads pin shared and private keys (sources and intermediates) under
/// pressure; bytes are always right, no key is loaded twice at once, every
/// load fills a miss, and the budget holds.
#[test]
fn threads_pinning_the_same_and_different_keys() {
    const THREADS: u64 = 4;
    const PINS_PER_THREAD: usize = 400;
    let len = 8000usize;
    let block = pool_block_bytes(len as u64);
    assert!(
        block.is_multiple_of(4096),
        "{len} bytes take a block of {block}"
    );
    let sources = 16u64;
    let mut rng = SmallRng::seed_from_u64(11);
    let chunks: Vec<Vec<u8>> = (0..sources).map(|_| random_bytes(&mut rng, len)).collect();
    let intermediates: Vec<Vec<u8>> = (0..6).map(|_| random_bytes(&mut rng, len)).collect();
    let loader = ModelLoader::new(chunks.clone(), true);
    let spill = mem_spill(32 << 20);
    let capacity_bytes = 7 * block;
    let budget = budget(capacity_bytes);
    let pool = pool();
    let manager = BufferManager::new(
        &pool,
        &budget.reservation,
        &loader,
        Some(&spill as &dyn SpillTarget),
        PolicyKind::Sieve.build(&[]),
        capacity_bytes,
    );
    for (i, bytes) in intermediates.iter().enumerate() {
        manager
            .insert_intermediate(ChunkKey(INTERMEDIATE_BASE + i as u64), bytes)
            .expect("insert");
    }
    let cache_full = AtomicU32::new(0);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (manager, chunks, intermediates, cache_full) =
                (&manager, &chunks, &intermediates, &cache_full);
            scope.spawn(move || {
                let seed = 100 + thread;
                let mut rng = SmallRng::seed_from_u64(seed);
                for step in 0..PINS_PER_THREAD {
                    // Half the pins go to four keys every thread shares.
                    let key = match rng.gen_range(0..4) {
                        0 | 1 => rng.gen_range(0..4),
                        2 => rng.gen_range(0..sources),
                        _ => INTERMEDIATE_BASE + rng.gen_range(0..intermediates.len() as u64),
                    };
                    let expected = if key < INTERMEDIATE_BASE {
                        &chunks[key as usize]
                    } else {
                        &intermediates[(key - INTERMEDIATE_BASE) as usize]
                    };
                    match manager.pin(ChunkKey(key)) {
                        Ok(pinned) => assert_eq!(
                            pinned.bytes(),
                            &expected[..],
                            "seed {seed} step {step}: key {key}"
                        ),
                        // Every thread may hold a pin and be loading: room
                        // for 7 is enough, but a spill in flight holds its
                        // bytes until written.
                        Err(OocError::CacheFull { .. }) => {
                            cache_full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(other) => panic!("seed {seed} step {step}: key {key}: {other}"),
                    }
                }
            });
        }
    });
    manager.check_invariants();
    spill.check_invariants();
    assert_eq!(
        loader.overlapping_loads.load(Ordering::Relaxed),
        0,
        "a key loaded twice at once"
    );
    let stats = manager.stats();
    let spilled = spill.stats();
    // Every time a chunk became resident it was loaded, reloaded or
    // inserted once; it left by eviction or is still there.
    let resident = manager.held_bytes() / block;
    assert_eq!(
        loader.total_loads() + spilled.reloads + intermediates.len() as u64,
        stats.evictions + resident,
        "loads {} + reloads {} + inserts against evictions {} + resident {resident}",
        loader.total_loads(),
        spilled.reloads,
        stats.evictions
    );
    assert!(
        stats.misses >= loader.total_loads() + spilled.reloads,
        "{} misses for {} loads",
        stats.misses,
        loader.total_loads() + spilled.reloads
    );
    assert!(
        spilled.reloads > 0,
        "the intermediates should have been spilled and reloaded"
    );
    let peak = budget.tracked.peak_bytes();
    assert!(
        peak <= capacity_bytes,
        "budget peak {peak} > capacity {capacity_bytes}"
    );
}
