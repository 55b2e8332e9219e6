//! Exact extent positions on a bitmap deep enough for a five-level run tree
//! (2^22 + 777 blocks), against a naive scan of a `Vec<bool>` model. The
//! model tests cover many small capacities; this one covers the tree walk's
//! partial-node, pruning and multi-level descent paths at depth.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_bitmap::{BlockBitmap, Extent};

const CAPACITY_BLOCKS: u64 = (1 << 22) + 777;
const EXTENT_LEN_BLOCKS_MAX: u64 = 2048;
const OCCUPANCY_PERMILLE: u64 = 950;
const QUERIES: usize = 300;

fn seed() -> u64 {
    std::env::var("STRATA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_dee9)
}

/// Leftmost `s >= from` with `s..s + len` free, else leftmost from 0.
fn naive_find(free: &[bool], len: u64, from: u64) -> Option<u64> {
    let scan = |lo: u64| -> Option<u64> {
        let mut run = 0u64;
        for b in lo..free.len() as u64 {
            run = if free[b as usize] { run + 1 } else { 0 };
            if run == len {
                return Some(b + 1 - len);
            }
        }
        None
    };
    scan(from).or_else(|| if from > 0 { scan(0) } else { None })
}

#[test]
fn extent_positions_match_naive_scan_on_a_deep_tree() {
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut bitmap = BlockBitmap::new(CAPACITY_BLOCKS).unwrap();
    let mut free = vec![true; CAPACITY_BLOCKS as usize];
    let mut held: Vec<Extent> = Vec::new();
    // Fill with random extents, then free random ones to 95% occupancy,
    // plus a few long holes so long requests have somewhere to go.
    while let Some(e) = bitmap.alloc_extent(rng.gen_range(1..=512)) {
        held.push(e);
    }
    let target = CAPACITY_BLOCKS * OCCUPANCY_PERMILLE / 1000;
    while bitmap.allocated_blocks() > target {
        let e = held.swap_remove(rng.gen_range(0..held.len()));
        bitmap.free_extent(e).unwrap();
    }
    for e in &held {
        for b in e.blocks() {
            free[b as usize] = false;
        }
    }
    let (mut found, mut none) = (0, 0);
    for query in 0..QUERIES {
        let len = if query % 3 == 0 {
            rng.gen_range(513..=EXTENT_LEN_BLOCKS_MAX)
        } else {
            rng.gen_range(1..=512)
        };
        let hint = rng.gen_range(0..CAPACITY_BLOCKS);
        let want = naive_find(&free, len, hint);
        let got = bitmap.alloc_extent_near(len, hint);
        assert_eq!(
            got.map(|e| e.start),
            want,
            "seed {seed} query {query}: alloc_extent_near(len {len}, hint {hint})"
        );
        if let Some(e) = got {
            found += 1;
            // Keep half of them so the layout keeps changing.
            if rng.gen_bool(0.5) {
                bitmap.free_extent(e).unwrap();
            } else {
                for b in e.blocks() {
                    free[b as usize] = false;
                }
            }
        } else {
            none += 1;
        }
    }
    assert!(
        found > QUERIES / 2 && none > 0,
        "seed {seed}: {found} found, {none} refused: the workload no longer covers both outcomes"
    );
    bitmap.check_invariants();
}
