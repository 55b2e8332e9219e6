//! The hybrid pool against a naive model: random sizes, alignments and
//! frees (seeded; `STRATA_SEED` overrides), no overlap between live blocks,
//! contents intact, every byte accounted; bad input; threads; release.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_pool::budget::{BudgetError, GreedyPool, MemoryConsumer, MemoryPool};
use strata_pool::sampling::{ProfileConfig, ProfileLevel};
use strata_pool::size_class::{class_for, class_size_bytes, SMALL_BYTES_MAX};
use strata_pool::{Device, DevicePools, HybridPool, PoolBox, PoolConfig, PoolError};

const MIB: u64 = 1 << 20;

fn seed() -> u64 {
    std::env::var("STRATA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001)
}

/// A pool that never samples, so every block's placement is predictable.
fn unsampled_pool() -> HybridPool {
    HybridPool::new(PoolConfig {
        profile: ProfileConfig {
            level: ProfileLevel::Off,
            ..ProfileConfig::default()
        },
        ..PoolConfig::default()
    })
    .unwrap()
}

fn random_size(rng: &mut SmallRng) -> u64 {
    match rng.gen_range(0..10) {
        0..=5 => rng.gen_range(1..=512),
        6..=7 => rng.gen_range(513..=64 << 10),
        8 => rng.gen_range(64 << 10..=SMALL_BYTES_MAX),
        _ => rng.gen_range(SMALL_BYTES_MAX + 1..=6 * MIB),
    }
}

/// Distinct positions at both ends and in the middle of a block.
fn stamp_positions(len: usize) -> Vec<usize> {
    let mut positions = vec![0, len / 2, len - 1];
    positions.dedup();
    positions
}

/// Write a pattern derived from `tag` at both ends and in the middle.
fn stamp(block: &mut PoolBox<'_>, tag: u64) {
    let len = block.len();
    let bytes = block.as_uninit_mut();
    for (i, at) in stamp_positions(len).into_iter().enumerate() {
        bytes[at].write((tag as u8).wrapping_add(i as u8));
    }
}

fn check_stamp(block: &PoolBox<'_>, tag: u64, seed: u64) {
    for (i, at) in stamp_positions(block.len()).into_iter().enumerate() {
        // SAFETY: these bytes were written by `stamp`.
        let value = unsafe { *block.as_ptr().add(at) };
        assert_eq!(
            value,
            (tag as u8).wrapping_add(i as u8),
            "seed {seed}: block {tag} byte {at} overwritten"
        );
    }
}

struct Live<'p> {
    block: PoolBox<'p>,
    tag: u64,
    align: u64,
}

#[test]
fn random_sequences_against_a_model() {
    for round in 0..3 {
        let seed = seed() + round;
        let mut rng = SmallRng::seed_from_u64(seed);
        let pool = unsampled_pool();
        let mut live: Vec<Live<'_>> = Vec::new();
        let mut next_tag = 0u64;
        let (mut allocated, mut requested, mut peak) = (0u64, 0u64, 0u64);
        let (mut allocs, mut frees) = (0u64, 0u64);
        for step in 0..4000 {
            if live.is_empty() || rng.gen_bool(0.55) {
                let size = random_size(&mut rng);
                let align = 1u64 << rng.gen_range(0..=12);
                let mut block = pool.alloc_aligned(size, align).unwrap();
                assert_eq!(
                    block.as_ptr() as usize as u64 % align,
                    0,
                    "seed {seed} step {step}"
                );
                let expected_block = match class_for(size, align) {
                    Some(class) => class_size_bytes(class),
                    None => size.next_multiple_of(4096),
                };
                assert_eq!(
                    block.block_bytes(),
                    expected_block,
                    "seed {seed} step {step} size {size}"
                );
                stamp(&mut block, next_tag);
                allocated += block.block_bytes();
                requested += size;
                peak = peak.max(allocated);
                allocs += 1;
                live.push(Live {
                    block,
                    tag: next_tag,
                    align,
                });
                next_tag += 1;
            } else {
                let victim = live.swap_remove(rng.gen_range(0..live.len()));
                check_stamp(&victim.block, victim.tag, seed);
                allocated -= victim.block.block_bytes();
                requested -= victim.block.len() as u64;
                frees += 1;
                if rng.gen_bool(0.5) {
                    pool.free(victim.block).unwrap();
                } else {
                    drop(victim.block);
                }
            }
            if step % 500 == 0 {
                // No two live blocks overlap.
                let mut ranges = BTreeMap::new();
                for l in &live {
                    let start = l.block.as_ptr() as usize;
                    ranges.insert(start, start + l.block.block_bytes() as usize);
                    assert_eq!(start as u64 % l.align, 0);
                }
                let mut end_prev = 0;
                for (&start, &end) in &ranges {
                    assert!(
                        start >= end_prev,
                        "seed {seed} step {step}: overlap at {start:#x}"
                    );
                    end_prev = end;
                }
                assert_eq!(
                    ranges.len(),
                    live.len(),
                    "seed {seed}: two blocks at one address"
                );
                pool.check_invariants();
            }
            let stats = pool.stats();
            if step % 97 == 0 {
                assert_eq!(
                    stats.allocated.current_bytes, allocated,
                    "seed {seed} step {step}"
                );
                assert_eq!(
                    stats.requested.current_bytes, requested,
                    "seed {seed} step {step}"
                );
                assert_eq!(
                    stats.allocated.peak_bytes, peak,
                    "seed {seed} step {step}: peak"
                );
                assert_eq!(stats.alloc_count, allocs, "seed {seed} step {step}");
                assert_eq!(stats.free_count, frees, "seed {seed} step {step}");
            }
        }
        for l in &live {
            check_stamp(&l.block, l.tag, seed);
        }
        drop(live);
        let stats = pool.stats();
        assert_eq!(stats.allocated.current_bytes, 0, "seed {seed}");
        assert_eq!(stats.requested.current_bytes, 0, "seed {seed}");
        assert_eq!(stats.allocated.peak_bytes, peak, "seed {seed}");
        assert_eq!(stats.refused_frees, 0, "seed {seed}");
        pool.check_invariants();
        let report = pool.release_unused();
        let after = pool.stats();
        assert_eq!(after.reserved.current_bytes, 0, "seed {seed}: {report:?}");
        assert_eq!(
            report.reserved_bytes_returned, stats.reserved.current_bytes,
            "seed {seed}"
        );
        pool.check_invariants();
    }
}

#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    let pool = unsampled_pool();
    assert!(matches!(pool.alloc(0), Err(PoolError::ZeroSize)));
    assert!(matches!(
        pool.alloc_aligned(64, 3),
        Err(PoolError::BadAlignment {
            align_bytes: 3,
            max_bytes: 4096
        })
    ));
    assert!(matches!(
        pool.alloc_aligned(64, 8192),
        Err(PoolError::BadAlignment {
            align_bytes: 8192,
            ..
        })
    ));
    assert!(matches!(
        pool.alloc(u64::MAX),
        Err(PoolError::TooLarge { .. })
    ));
    assert!(matches!(
        pool.alloc(1 << 40),
        Err(PoolError::TooLarge { .. })
    ));
    assert!(matches!(
        HybridPool::new(PoolConfig {
            device: Device::Cuda(0),
            ..PoolConfig::default()
        }),
        Err(PoolError::UnsupportedDevice {
            device: Device::Cuda(0)
        })
    ));

    // Raw API: double free, foreign pointer, interior pointer, wrong size.
    let small = pool.alloc_raw(100, 8).unwrap();
    let large = pool.alloc_raw(3 * MIB, 64).unwrap();
    let before = pool.stats();
    let mut local = 0u64;
    let foreign = NonNull::from(&mut local).cast::<u8>();
    // SAFETY: each refused call frees nothing; the successful ones free
    // blocks this test no longer uses.
    unsafe {
        assert!(matches!(
            pool.free_raw(foreign, 8, 8),
            Err(PoolError::ForeignPointer { .. })
        ));
        let interior = NonNull::new(small.as_ptr().add(16)).unwrap();
        assert!(matches!(
            pool.free_raw(interior, 100, 8),
            Err(PoolError::Misaligned {
                block_bytes: 112,
                ..
            })
        ));
        assert!(matches!(
            pool.free_raw(small, 5000, 8),
            Err(PoolError::SizeMismatch {
                block_bytes: 112,
                given_bytes: 5000,
                ..
            })
        ));
        let large_interior = NonNull::new(large.as_ptr().add(4096)).unwrap();
        assert!(pool.free_raw(large_interior, 3 * MIB, 64).is_err());
        assert_eq!(
            pool.stats().allocated,
            before.allocated,
            "refusals changed nothing"
        );
        pool.free_raw(small, 100, 8).unwrap();
        assert!(matches!(
            pool.free_raw(small, 100, 8),
            Err(PoolError::DoubleFree { .. })
        ));
        pool.free_raw(large, 3 * MIB, 64).unwrap();
        assert!(matches!(
            pool.free_raw(large, 3 * MIB, 64),
            Err(PoolError::DoubleFree { .. })
        ));
    }
    let stats = pool.stats();
    assert_eq!(stats.allocated.current_bytes, 0);
    assert_eq!(stats.alloc_count, 2);
    assert_eq!(stats.free_count, 2);
    pool.check_invariants();

    // Freeing through the pool of another device (here: another pool).
    let other = unsampled_pool();
    let block = pool.alloc(64).unwrap();
    assert!(matches!(
        other.free(block),
        Err(PoolError::WrongDevice { .. })
    ));
    assert_eq!(
        pool.stats().allocated.current_bytes,
        0,
        "freed by its own pool"
    );
    assert_eq!(other.stats().free_count, 0);
    let pools = DevicePools::new();
    let cpu = pools.get(Device::Cpu).unwrap();
    let raw = cpu.alloc_raw(64, 8).unwrap();
    // SAFETY: refused: the block stays live; then freed through its pool.
    unsafe {
        assert!(matches!(
            pools.free_raw(Device::Cuda(1), raw, 64, 8),
            Err(PoolError::UnsupportedDevice { .. })
        ));
        pools.free_raw(Device::Cpu, raw, 64, 8).unwrap();
    }
}

#[test]
fn threads_churn_and_counters_are_exact_once_merged() {
    let pool = Arc::new(unsampled_pool());
    let threads = 4u64;
    let ops = 20_000u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let seed = seed() ^ (t << 32);
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut live = Vec::new();
                let (mut allocs, mut alloc_bytes, mut kept_bytes) = (0u64, 0u64, 0u64);
                for _ in 0..ops {
                    if live.is_empty() || rng.gen_bool(0.5) {
                        let size = rng.gen_range(1..=8192);
                        let mut block = pool.alloc(size).unwrap();
                        block.as_uninit_mut()[0].write(t as u8);
                        allocs += 1;
                        alloc_bytes += block.block_bytes();
                        live.push(block);
                    } else {
                        let block = live.swap_remove(rng.gen_range(0..live.len()));
                        // SAFETY: written at allocation.
                        let first = unsafe { *block.as_ptr() };
                        assert_eq!(first, t as u8, "seed {seed}: block shared");
                        drop(block);
                    }
                }
                // Keep every tenth block alive past the thread's end.
                let kept: Vec<_> = live
                    .into_iter()
                    .step_by(10)
                    .map(|b| {
                        (
                            b.as_ptr() as usize,
                            b.len(),
                            b.block_bytes(),
                            std::mem::ManuallyDrop::new(b),
                        )
                    })
                    .collect();
                for k in &kept {
                    kept_bytes += k.2;
                }
                (
                    allocs,
                    alloc_bytes,
                    kept_bytes,
                    kept.into_iter().map(|k| (k.0, k.1)).collect::<Vec<_>>(),
                )
            })
        })
        .collect();
    let mut allocs = 0;
    let mut kept_bytes = 0;
    let mut kept = Vec::new();
    for handle in handles {
        let (a, _, k, blocks) = handle.join().unwrap();
        allocs += a;
        kept_bytes += k;
        kept.extend(blocks);
    }
    let stats = pool.stats();
    assert_eq!(stats.alloc_count, allocs);
    assert_eq!(stats.allocated.current_bytes, kept_bytes);
    assert_eq!(
        stats.cached_bytes, 0,
        "exited threads flushed their magazines"
    );
    assert!(stats.allocated.peak_bytes >= kept_bytes);
    pool.check_invariants();
    // Free the blocks the threads kept, through the allocator interface
    // (by address), from this thread.
    use allocator_api2::alloc::Allocator;
    for (addr, len) in kept {
        let layout = std::alloc::Layout::from_size_align(len, 16).unwrap();
        // SAFETY: each kept block was handed out by this pool with this size
        // and is no longer used.
        unsafe { (&*pool).deallocate(NonNull::new(addr as *mut u8).unwrap(), layout) };
    }
    let stats = pool.stats();
    assert_eq!(stats.allocated.current_bytes, 0);
    assert_eq!(stats.free_count, allocs);
    assert_eq!(stats.refused_frees, 0);
    pool.check_invariants();
}

#[test]
fn allocator_api2_vec_uses_the_pool() {
    let pool = unsampled_pool();
    let mut v: allocator_api2::vec::Vec<u64, &HybridPool> = allocator_api2::vec::Vec::new_in(&pool);
    for i in 0..300_000u64 {
        v.push(i * 3);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    let stats = pool.stats();
    assert_eq!(stats.allocated.current_bytes, (v.capacity() * 8) as u64);
    assert!(stats.alloc_count > 10, "Vec growth went through the pool");
    drop(v);
    assert_eq!(pool.stats().allocated.current_bytes, 0);
    pool.check_invariants();
}

#[test]
fn charged_allocations_stay_within_the_budget() {
    let budget: Arc<dyn MemoryPool> = Arc::new(GreedyPool::new(MIB));
    let reservation = MemoryConsumer::new("tiles").register(&budget);
    let pool = unsampled_pool();
    let mut held = Vec::new();
    let error = loop {
        match pool.alloc_charged(100_000, 64, &reservation) {
            Ok(block) => held.push(block),
            Err(error) => break error,
        }
    };
    let block_bytes = held[0].block_bytes();
    assert_eq!(held.len() as u64, MIB / block_bytes);
    assert_eq!(reservation.size(), held.len() as u64 * block_bytes);
    assert!(budget.reserved() <= MIB);
    match error {
        PoolError::Budget(BudgetError::Exhausted {
            requested_bytes, ..
        }) => {
            assert_eq!(requested_bytes, block_bytes)
        }
        other => panic!("expected a budget error, got {other}"),
    }
    assert_eq!(
        pool.stats().allocated.current_bytes,
        reservation.size(),
        "a refused charge allocates nothing"
    );
    held.clear();
    assert_eq!(reservation.size(), 0);
    assert_eq!(budget.reserved(), 0);
    let large = pool.alloc_charged(3 * MIB, 64, &reservation);
    assert!(matches!(large, Err(PoolError::Budget(_))));
    assert_eq!(reservation.size(), 0);
}

#[test]
fn release_returns_resident_memory() {
    let pool = unsampled_pool();
    let mut blocks: Vec<_> = (0..2000).map(|_| pool.alloc(4000).unwrap()).collect();
    for b in &mut blocks {
        b.zeroed()[0] = 1;
    }
    let mut large = pool.alloc(40 * MIB).unwrap();
    large.zeroed();
    let keep = pool.alloc(3 * MIB).unwrap();
    let reserved = pool.stats().reserved.current_bytes;
    drop(blocks);
    drop(large);
    let report = pool.release_unused();
    // The small blocks' slabs and the 40 MiB block's pages come back; the
    // arena holding `keep` stays.
    assert!(
        report.resident_bytes_returned >= 40 * MIB + 2000 * 4000 / 2,
        "{report:?}"
    );
    assert!(report.slabs_released >= 3, "{report:?}");
    let after = pool.stats();
    assert_eq!(
        after.reserved.current_bytes,
        reserved - report.reserved_bytes_returned
    );
    assert!(
        after.inactive_split_bytes >= 40 * MIB,
        "free space beside `keep` is inactive split"
    );
    pool.check_invariants();
    drop(keep);
    let report = pool.release_unused();
    assert_eq!(report.arenas_released, 1);
    assert_eq!(pool.stats().reserved.current_bytes, 0);
}

#[test]
fn growing_batches_reuse_freed_arena_space() {
    let pool = unsampled_pool();
    for n in 1..=24u64 {
        let batch: Vec<_> = [3, 5, 7, 2]
            .iter()
            .map(|k| pool.alloc(k * n * MIB + 12345).unwrap())
            .collect();
        drop(batch);
    }
    let stats = pool.stats();
    let ratio = stats.reserved.peak_bytes as f64 / stats.allocated.peak_bytes as f64;
    assert!(
        ratio <= 1.10,
        "reserved peak / allocated peak = {ratio:.3}: {stats}"
    );
}

#[test]
fn sampled_allocations_are_recorded_and_forgotten() {
    let pool = HybridPool::new(PoolConfig {
        profile: ProfileConfig {
            level: ProfileLevel::Sampled,
            mean_bytes: 64 << 10,
            history_events_max: 64,
            seed: 7,
        },
        ..PoolConfig::default()
    })
    .unwrap();
    let blocks: Vec<_> = (0..2000)
        .map(|i| pool.alloc(100 + i % 900).unwrap())
        .collect();
    let samples = pool.profiler().live_samples();
    // ~1.1 MB allocated at a 64 KiB mean: about 16 samples expected.
    assert!((3..=60).contains(&samples), "{samples} samples");
    assert_eq!(pool.profiler().history().len(), 64);
    drop(blocks);
    assert_eq!(pool.profiler().live_samples(), 0);
    assert_eq!(pool.stats().allocated.current_bytes, 0);
    pool.check_invariants();
}

/// Allocates through one call site (its `Location` is this line).
fn site_small(pool: &HybridPool, size: u64) -> PoolBox<'_> {
    pool.alloc(size).unwrap()
}

fn site_large(pool: &HybridPool, size: u64) -> PoolBox<'_> {
    pool.alloc(size).unwrap()
}

#[test]
fn pool_sampling_estimates_each_call_site_within_its_error() {
    use strata_pool::sampling::sample_probability;
    const MEAN_BYTES: u64 = 64 << 10;
    for seed in [11u64, 12, 13] {
        let pool = HybridPool::new(PoolConfig {
            profile: ProfileConfig {
                level: ProfileLevel::Sampled,
                mean_bytes: MEAN_BYTES,
                history_events_max: 0,
                seed,
            },
            ..PoolConfig::default()
        })
        .unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        // Known truth per site: total bytes and the exact variance of the
        // Horvitz-Thompson estimate, sum of s^2 (1 - p) / p.
        let mut truth = [(0f64, 0f64); 2];
        let mut held = Vec::new();
        for i in 0..6000 {
            let (which, size) = if i % 4 == 0 {
                (1, rng.gen_range(SMALL_BYTES_MAX + 1..=3 * MIB))
            } else {
                (0, rng.gen_range(16..=4096))
            };
            let block = if which == 0 {
                site_small(&pool, size)
            } else {
                site_large(&pool, size)
            };
            let p = sample_probability(size, MEAN_BYTES);
            truth[which].0 += size as f64;
            truth[which].1 += (size * size) as f64 * (1.0 - p) / p;
            if which == 1 {
                drop(block); // large blocks freed at once: only the total counts
            } else {
                held.push(block);
            }
        }
        let report = pool.profiler().profile();
        let line = |name: &str| {
            // The call sites are the `pool.alloc` lines inside the helpers.
            let source = include_str!("hybrid.rs");
            let at = source.find(&format!("fn {name}(")).unwrap();
            source[..at].lines().count() + 2
        };
        for (which, name) in [(0usize, "site_small"), (1, "site_large")] {
            let wanted = format!("hybrid.rs:{}:", line(name));
            let site = report
                .sites
                .iter()
                .find(|s| s.site.contains(&wanted))
                .unwrap_or_else(|| panic!("seed {seed}: no site {wanted} in {report}"));
            let (bytes, variance) = truth[which];
            let sigma = variance.sqrt();
            let estimate = site.estimates.estimated_total_bytes;
            assert!(
                (estimate - bytes).abs() <= 4.0 * sigma,
                "seed {seed} {name}: estimate {estimate:.0} vs true {bytes:.0} (sigma {sigma:.0})"
            );
            let claimed = site.estimates.total_bytes_std_error;
            assert!(
                claimed > sigma / 3.0 && claimed < sigma * 3.0,
                "seed {seed} {name}: claimed error {claimed:.0} vs exact {sigma:.0}"
            );
        }
        drop(held);
        assert_eq!(pool.profiler().live_samples(), 0, "seed {seed}");
    }
}

#[test]
fn sampled_small_blocks_live_in_sample_pages_and_refuse_double_frees() {
    use allocator_api2::alloc::Allocator;
    use strata_pool::{SAMPLE_PAGE_BLOCK_BYTES_MAX, SAMPLE_PAGE_BYTES};
    let pool = HybridPool::new(PoolConfig {
        // A mean of 0 samples every allocation.
        profile: ProfileConfig {
            level: ProfileLevel::Sampled,
            mean_bytes: 0,
            history_events_max: 0,
            seed: 3,
        },
        ..PoolConfig::default()
    })
    .unwrap();
    let mut rng = SmallRng::seed_from_u64(seed());
    let mut blocks = Vec::new();
    for i in 0..600u64 {
        let size = rng.gen_range(1..=SAMPLE_PAGE_BLOCK_BYTES_MAX + 200);
        let align = 1u64 << rng.gen_range(0..=12);
        let mut block = pool.alloc_aligned(size, align).unwrap();
        assert_eq!(block.as_ptr() as u64 % align, 0);
        if size <= SAMPLE_PAGE_BLOCK_BYTES_MAX {
            assert_eq!(
                block.block_bytes(),
                SAMPLE_PAGE_BYTES,
                "one page per sampled small block"
            );
        }
        stamp(&mut block, i);
        blocks.push((block, i));
    }
    assert_eq!(pool.profiler().live_samples(), 600);
    for (block, tag) in &blocks {
        check_stamp(block, *tag, 0);
    }
    pool.check_invariants();
    // Free half through the allocator interface (by address), half by drop.
    let mut freed_by_address = Vec::new();
    for (index, (block, _)) in blocks.into_iter().enumerate() {
        if index % 2 == 0 {
            let (addr, len) = (block.as_ptr() as usize, block.len());
            std::mem::forget(block);
            let layout = std::alloc::Layout::from_size_align(len, 1).unwrap();
            // SAFETY: handed out by this pool, not used again.
            unsafe { (&pool).deallocate(NonNull::new(addr as *mut u8).unwrap(), layout) };
            freed_by_address.push((addr, layout));
        }
    }
    assert_eq!(pool.profiler().live_samples(), 0);
    assert_eq!(pool.stats().allocated.current_bytes, 0);
    assert_eq!(pool.stats().refused_frees, 0);
    // A double free through the allocator interface is refused and counted,
    // and the profiler is untouched.
    let (addr, layout) = freed_by_address[0];
    let small = layout.size() as u64 <= SAMPLE_PAGE_BLOCK_BYTES_MAX;
    // SAFETY: deliberately a double free; the pool must refuse it.
    unsafe { (&pool).deallocate(NonNull::new(addr as *mut u8).unwrap(), layout) };
    assert_eq!(pool.stats().refused_frees, 1, "small: {small}");
    assert_eq!(pool.profiler().live_samples(), 0);
    pool.check_invariants();
    let report = pool.release_unused();
    assert!(report.resident_bytes_returned > 0, "{report:?}");
    pool.check_invariants();
}

#[test]
fn charged_allocations_from_many_threads_never_exceed_the_budget() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const LIMIT_BYTES: u64 = 8 * MIB;
    let budget: Arc<dyn MemoryPool> = Arc::new(GreedyPool::new(LIMIT_BYTES));
    let pool = Arc::new(unsampled_pool());
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let observer = {
        let (budget, stop, checks) = (Arc::clone(&budget), Arc::clone(&stop), Arc::clone(&checks));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let reserved = budget.reserved();
                assert!(reserved <= LIMIT_BYTES, "budget over its limit: {reserved}");
                checks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (budget, pool, checks) =
                (Arc::clone(&budget), Arc::clone(&pool), Arc::clone(&checks));
            std::thread::spawn(move || {
                // Start once the observer runs, so it overlaps the workers.
                while checks.load(Ordering::Relaxed) == 0 {
                    std::thread::yield_now();
                }
                let reservation = MemoryConsumer::new(format!("worker-{t}")).register(&budget);
                let mut rng = SmallRng::seed_from_u64(seed() ^ t);
                let (mut refused, mut held) = (0u64, Vec::new());
                for _ in 0..4000 {
                    if held.len() < 64 && rng.gen_bool(0.6) {
                        let size = if rng.gen_bool(0.1) {
                            rng.gen_range(SMALL_BYTES_MAX + 1..=2 * MIB)
                        } else {
                            rng.gen_range(1..=64 << 10)
                        };
                        match pool.alloc_charged(size, 16, &reservation) {
                            Ok(block) => held.push(block),
                            Err(PoolError::Budget(_)) => refused += 1,
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    } else if !held.is_empty() {
                        held.swap_remove(rng.gen_range(0..held.len()));
                    }
                    let charged: u64 = held.iter().map(|b| b.block_bytes()).sum();
                    assert_eq!(reservation.size(), charged, "the charge follows the blocks");
                }
                drop(held);
                assert_eq!(reservation.size(), 0);
                refused
            })
        })
        .collect();
    let refused: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    observer.join().unwrap();
    assert!(checks.load(Ordering::Relaxed) > 0);
    assert!(
        refused > 0,
        "the budget was tight enough to refuse some requests"
    );
    assert_eq!(budget.reserved(), 0);
    assert_eq!(pool.stats().allocated.current_bytes, 0);
    pool.check_invariants();
}

/// Blocks allocated on one thread and freed on another: the freeing thread
/// may merge its counters first (here when its churn reaches the merge
/// interval while the allocating thread still holds unmerged counts), which
/// once underflowed the merged "current" figure (a panic in debug builds, a
/// wrapped peak in release). Figures must stay sane, and exact once both
/// threads merged.
#[test]
fn frees_merged_before_their_allocations_do_not_underflow() {
    const CROSS_BLOCKS: usize = 8;
    let pool = unsampled_pool();
    std::thread::scope(|scope| {
        let (blocks_tx, blocks_rx) = std::sync::mpsc::channel::<PoolBox<'_>>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let pool = &pool;
        scope.spawn(move || {
            for _ in 0..CROSS_BLOCKS {
                blocks_tx.send(pool.alloc(1024).unwrap()).unwrap();
            }
            // Stay alive with the allocations unmerged until told to go.
            go_rx.recv().unwrap();
        });
        let blocks: Vec<PoolBox<'_>> = (0..CROSS_BLOCKS)
            .map(|_| blocks_rx.recv().unwrap())
            .collect();
        drop(blocks);
        // Enough operations of the same class to merge this thread's
        // counters, frees included, ahead of the other thread's allocations.
        for _ in 0..2 * strata_pool::COUNTER_MERGE_OPS {
            drop(pool.alloc(1024).unwrap());
        }
        let stats = pool.stats();
        assert!(
            stats.allocated.current_bytes <= (CROSS_BLOCKS * 1024) as u64
                && stats.allocated.peak_bytes <= 1 << 30,
            "merged figures must never wrap: {stats:?}"
        );
        go_tx.send(()).unwrap();
    });
    let stats = pool.stats();
    assert_eq!(stats.allocated.current_bytes, 0, "{stats:?}");
}
