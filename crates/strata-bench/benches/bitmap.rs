//! Criterion benches for the bitmap allocator, beside the `strata bench
//! bitmap` suite: the same single-block and extent pairs at 95% occupancy,
//! each next to the flat first-fit baseline. Run with
//! `cargo bench -p strata-bench --bench bitmap`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use strata_bench::FlatBitmap;
use strata_bitmap::BlockBitmap;

const SEED: u64 = 0x5354_5241_5441_0002;
const PAIR_CAPACITY_BLOCKS: u64 = 1 << 20;
const EXTENT_CAPACITY_BLOCKS: u64 = 1 << 22;
const OCCUPANCY_PERMILLE: u64 = 950;
const EXTENT_LEN_BLOCKS_MAX: u64 = 512;

/// A bitmap and a flat baseline with the same scattered 95% occupancy.
fn scattered(capacity: u64) -> (BlockBitmap, FlatBitmap) {
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut bitmap = BlockBitmap::new(capacity).expect("valid capacity");
    let mut flat = FlatBitmap::new(capacity);
    flat.alloc_extent(capacity).expect("empty flat bitmap");
    let mut blocks: Vec<u64> = (0..capacity)
        .map(|_| bitmap.alloc().expect("free blocks remain").index())
        .collect();
    blocks.shuffle(&mut rng);
    let free = capacity - capacity * OCCUPANCY_PERMILLE / 1000;
    for &block in &blocks[..free as usize] {
        bitmap.free(strata_bitmap::Block(block)).expect("allocated");
        flat.free(block).expect("allocated");
    }
    (bitmap, flat)
}

/// Fill with random extents, free random ones down to 95%.
fn extent_layout(capacity: u64) -> (BlockBitmap, FlatBitmap) {
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut bitmap = BlockBitmap::new(capacity).expect("valid capacity");
    let mut held = Vec::new();
    while let Some(extent) = bitmap.alloc_extent(rng.gen_range(1..=EXTENT_LEN_BLOCKS_MAX)) {
        held.push(extent);
    }
    let target = capacity * OCCUPANCY_PERMILLE / 1000;
    while bitmap.allocated_blocks() > target {
        let extent = held.swap_remove(rng.gen_range(0..held.len()));
        bitmap.free_extent(extent).expect("held extent");
    }
    let mut flat = FlatBitmap::new(capacity);
    for extent in &held {
        flat.alloc_range(extent.blocks()).expect("free in the copy");
    }
    (bitmap, flat)
}

/// Pairs must leave both allocators' occupancy exactly where it was.
fn check_unchanged(bitmap: &BlockBitmap, flat: &FlatBitmap, allocated: u64) {
    assert_eq!(
        bitmap.allocated_blocks(),
        allocated,
        "pairs changed the occupancy"
    );
    assert_eq!(
        flat.allocated_blocks(),
        allocated,
        "flat pairs changed the occupancy"
    );
    bitmap.check_invariants();
}

fn single_block_pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc+free pair 2^20 @95%");
    let (mut bitmap, mut flat) = scattered(PAIR_CAPACITY_BLOCKS);
    let allocated = bitmap.allocated_blocks();
    group.bench_function("BlockBitmap", |b| {
        b.iter(|| {
            let block = bitmap.alloc().expect("free blocks remain");
            bitmap.free(black_box(block)).expect("just allocated");
        })
    });
    {
        let mut cache = bitmap.cache();
        group.bench_function("BlockCache", |b| {
            b.iter(|| {
                let block = cache.alloc().expect("free blocks remain");
                cache.free(black_box(block)).expect("just allocated");
            })
        });
    }
    group.bench_function("flat first-fit", |b| {
        b.iter(|| {
            let block = flat.alloc().expect("free blocks remain");
            flat.free(black_box(block)).expect("just allocated");
        })
    });
    group.finish();
    check_unchanged(&bitmap, &flat, allocated);
}

fn extent_pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("extent pair 1..=512 2^22 @95%");
    let (mut bitmap, mut flat) = extent_layout(EXTENT_CAPACITY_BLOCKS);
    let allocated = bitmap.allocated_blocks();
    let mut rng = SmallRng::seed_from_u64(SEED ^ 1);
    group.bench_function("BlockBitmap", |b| {
        b.iter(|| {
            let len = rng.gen_range(1..=EXTENT_LEN_BLOCKS_MAX);
            if let Some(extent) = bitmap.alloc_extent(black_box(len)) {
                bitmap.free_extent(extent).expect("just allocated");
            }
        })
    });
    let mut rng = SmallRng::seed_from_u64(SEED ^ 1);
    group.bench_function("flat first-fit", |b| {
        b.iter(|| {
            let len = rng.gen_range(1..=EXTENT_LEN_BLOCKS_MAX);
            if let Some(range) = flat.alloc_extent(black_box(len)) {
                flat.free_range(range).expect("just allocated");
            }
        })
    });
    group.finish();
    check_unchanged(&bitmap, &flat, allocated);
}

// The macro generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, single_block_pairs, extent_pairs);
}
use group::benches;
criterion_main!(benches);
