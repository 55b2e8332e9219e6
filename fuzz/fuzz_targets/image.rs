//! Fuzz target: arbitrary bytes through `BlockBitmap::from_bytes`. It must
//! never panic; an accepted image must round-trip byte for byte, pass
//! `check_invariants()`, and serve allocations consistently.
//!
//! A random checksum almost never matches, so each input is also decoded
//! with its last 8 bytes replaced by the xxh3-64 of the rest ("resealed"):
//! that reaches the content checks (ranges, counts, tail bits) behind the
//! checksum.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_bitmap::{BlockBitmap, SharedBitmap};
use xxhash_rust::xxh3::xxh3_64;

const CHECKSUM_BYTES: usize = 8;

fn check(bytes: &[u8]) {
    let Ok(bitmap) = BlockBitmap::from_bytes(bytes) else {
        return;
    };
    bitmap.check_invariants();
    assert!(
        bitmap.to_bytes() == bytes,
        "accepted image does not round-trip"
    );
    let stats = bitmap.clone().stats();
    assert_eq!(
        stats.allocated_blocks + stats.free_blocks + stats.reserved_blocks,
        stats.capacity_blocks
    );
    assert!(stats.largest_free_run_blocks <= stats.free_blocks);
    // The same image split into shards serializes identically.
    let shared = SharedBitmap::from_bitmap(bitmap.clone(), 4);
    shared.check_invariants();
    assert!(shared.to_bytes() == bytes, "SharedBitmap image differs");
    // A decoded bitmap serves allocations from its real free space only.
    let mut bitmap = bitmap;
    let free = bitmap.free_blocks();
    let largest = bitmap.largest_free_run_blocks();
    if largest > 0 {
        let e = bitmap.alloc_extent(largest).expect("the longest run fits");
        assert!(e.blocks().all(|b| bitmap.is_allocated(b)));
        bitmap
            .free_extent(e)
            .expect("freeing what was just allocated");
    }
    let mut n = 0;
    while let Some(b) = bitmap.alloc() {
        assert!(!bitmap.is_reserved(b.0));
        n += 1;
        if n == 64 {
            break;
        }
    }
    assert_eq!(bitmap.free_blocks(), free - n);
    bitmap.check_invariants();
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= CHECKSUM_BYTES {
        let mut sealed = data.to_vec();
        let body = sealed.len() - CHECKSUM_BYTES;
        let sum = xxh3_64(&sealed[..body]);
        sealed[body..].copy_from_slice(&sum.to_le_bytes());
        check(&sealed);
    }
});
