//! Bad-block remapping without I/O: spare pool and table semantics with
//! exact errors, routing against a naive per-block model, copy encoding
//! (round trip, every single-bit flip, truncation), recovery of the newest
//! valid copy, and readers that never see a pending entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_disk::remap::{
    decode_copy, max_entries, recover, RemapEntry, RemapError, RemapState, RemapStats, RemapTable,
    RouteRun, SparePool, REMAP_ACTIVE_BIT, REMAP_COPY_ENTRY_BYTES, REMAP_COPY_HEADER_BYTES,
    REMAP_MAGIC, REMAP_MAX_BLOCK, REMAP_OFFSET_CRC, REMAP_OFFSET_ENTRY_COUNT,
    REMAP_OFFSET_SEQUENCE, REMAP_OFFSET_VERSION, REMAP_VERSION,
};
use strata_disk::store::Layout;

/// Seed from `STRATA_TEST_SEED` if set, else a fixed default; printed by
/// every assertion that uses it.
fn seed(default: u64) -> u64 {
    std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// A table with `active` entries 10 → 1000, 20 → 1001, ... and one pending.
fn small_table() -> RemapTable {
    let mut table = RemapTable::new(8);
    for (i, bad) in [10u64, 20, 30].into_iter().enumerate() {
        table.begin(bad, 1000 + i as u64).unwrap();
        table.activate(bad).unwrap();
    }
    table.begin(40, 1003).unwrap();
    table.check_invariants();
    table
}

#[test]
fn begin_activate_lookup_and_exact_errors() {
    let mut table = RemapTable::new(3);
    table.begin(5, 100).unwrap();
    assert_eq!(table.lookup(5), None, "pending entries are not looked up");
    assert_eq!(
        table.entry(5),
        Some(RemapEntry {
            bad_block: 5,
            spare_block: 100,
            state: RemapState::Pending
        })
    );
    assert_eq!(
        table.begin(5, 101),
        Err(RemapError::AlreadyRemapped {
            bad_block: 5,
            spare_block: 100
        })
    );
    assert_eq!(
        table.begin(6, 100),
        Err(RemapError::SpareInUse {
            spare_block: 100,
            bad_block: 5
        })
    );
    assert_eq!(table.begin(7, 7), Err(RemapError::BlockIsBoth { block: 7 }));
    // A spare cannot be remapped as a bad block, nor a bad block used as a spare.
    assert_eq!(
        table.begin(100, 200),
        Err(RemapError::BlockIsBoth { block: 100 })
    );
    assert_eq!(table.begin(8, 5), Err(RemapError::BlockIsBoth { block: 5 }));
    assert_eq!(
        table.begin(REMAP_MAX_BLOCK + 1, 200),
        Err(RemapError::BlockTooLarge {
            block: REMAP_MAX_BLOCK + 1,
            max_block: REMAP_MAX_BLOCK
        })
    );
    assert_eq!(
        table.begin(9, u64::MAX),
        Err(RemapError::BlockTooLarge {
            block: u64::MAX,
            max_block: REMAP_MAX_BLOCK
        })
    );
    assert_eq!(
        table.activate(6),
        Err(RemapError::NotRemapped { bad_block: 6 })
    );
    table.activate(5).unwrap();
    assert_eq!(table.lookup(5), Some(100));
    assert_eq!(table.lookup(100), None);
    assert_eq!(
        table.activate(5),
        Err(RemapError::AlreadyActive { bad_block: 5 })
    );
    table.begin(6, 101).unwrap();
    table.begin(7, 102).unwrap();
    assert_eq!(
        table.begin(8, 103),
        Err(RemapError::TableFull { max_entries: 3 })
    );
    // Refused operations changed nothing.
    assert_eq!(table.len(), 3);
    assert_eq!(table.entry(8), None);
    table.check_invariants();

    let pool = SparePool::from_table(100, 4, &table).unwrap();
    assert_eq!(
        RemapStats::collect(&table, &pool),
        RemapStats {
            remaps: 1,
            pending: 2,
            spares_left: 1,
            spares_total: 4
        }
    );
}

#[test]
fn spare_pool_takes_each_spare_once_then_exhausts() {
    let mut pool = SparePool::new(500, 64).unwrap();
    let mut taken = Vec::new();
    for left in (0..64).rev() {
        taken.push(pool.take().unwrap());
        assert_eq!(pool.spares_left(), left);
    }
    taken.sort_unstable();
    assert_eq!(taken, (500..564).collect::<Vec<u64>>());
    assert_eq!(
        pool.take(),
        Err(RemapError::SparesExhausted { spares_total: 64 })
    );
    assert_eq!(pool.spares_left(), 0);
    pool.check_invariants();

    let mut empty = SparePool::new(10, 0).unwrap();
    assert_eq!(
        empty.take(),
        Err(RemapError::SparesExhausted { spares_total: 0 })
    );
    assert_eq!(
        empty.mark_used(10),
        Err(RemapError::NotASpare {
            block: 10,
            spare_start: 10,
            spare_blocks: 0
        })
    );
    empty.check_invariants();
    assert_eq!(
        SparePool::new(u64::MAX, 2).unwrap_err(),
        RemapError::SparePoolTooLarge {
            spare_start: u64::MAX,
            spare_blocks: 2
        }
    );
}

#[test]
fn spare_pool_mark_used_for_recovery() {
    let mut pool = SparePool::new(100, 4).unwrap();
    pool.mark_used(102).unwrap();
    assert_eq!(
        pool.mark_used(102),
        Err(RemapError::SpareAlreadyUsed { spare_block: 102 })
    );
    for block in [99, 104] {
        assert_eq!(
            pool.mark_used(block),
            Err(RemapError::NotASpare {
                block,
                spare_start: 100,
                spare_blocks: 4
            })
        );
    }
    assert_eq!(pool.spares_left(), 3);
    let mut rest: Vec<u64> = (0..3).map(|_| pool.take().unwrap()).collect();
    rest.sort_unstable();
    assert_eq!(rest, vec![100, 101, 103], "take never returns a used spare");
    assert_eq!(
        pool.take(),
        Err(RemapError::SparesExhausted { spares_total: 4 })
    );
    pool.check_invariants();

    // A table naming a spare outside the pool cannot be recovered onto it.
    let mut table = RemapTable::new(4);
    table.begin(1, 99).unwrap();
    assert_eq!(
        SparePool::from_table(100, 4, &table).unwrap_err(),
        RemapError::NotASpare {
            block: 99,
            spare_start: 100,
            spare_blocks: 4
        }
    );
}

/// The naive model: one run per block, merged when consecutive normal blocks.
fn model_route(remapped: &HashMap<u64, u64>, start: u64, len: u64) -> Vec<RouteRun> {
    let mut runs: Vec<RouteRun> = Vec::new();
    for block in start..start + len {
        match remapped.get(&block) {
            Some(&spare) => runs.push(RouteRun {
                logical_block: block,
                device_block: spare,
                len_blocks: 1,
            }),
            None => match runs.last_mut() {
                Some(last)
                    if last.device_block == last.logical_block
                        && !remapped.contains_key(&last.logical_block)
                        && last.logical_block + last.len_blocks == block =>
                {
                    last.len_blocks += 1
                }
                _ => runs.push(RouteRun {
                    logical_block: block,
                    device_block: block,
                    len_blocks: 1,
                }),
            },
        }
    }
    runs
}

#[test]
fn route_matches_naive_model() {
    let seed = seed(0x5EED_0001);
    let mut rng = SmallRng::seed_from_u64(seed);
    for round in 0..40 {
        let device_blocks = rng.gen_range(1..300u64);
        let mut table = RemapTable::new(1000);
        let mut remapped = HashMap::new();
        let remaps = rng.gen_range(0..=device_blocks.min(40));
        for i in 0..remaps {
            let bad = rng.gen_range(0..device_blocks);
            let spare = 10_000 + i;
            if table.begin(bad, spare).is_ok() {
                // Some stay pending: they must route as normal blocks.
                if rng.gen_bool(0.8) {
                    table.activate(bad).unwrap();
                    remapped.insert(bad, spare);
                }
            }
        }
        table.check_invariants();
        for _ in 0..50 {
            let start = rng.gen_range(0..device_blocks);
            let len = rng.gen_range(0..=device_blocks - start);
            let got: Vec<RouteRun> = table.route(start, len).unwrap().collect();
            let want = model_route(&remapped, start, len);
            assert_eq!(
                got, want,
                "seed {seed} round {round}: route({start}, {len}) with remaps {remapped:?}"
            );
        }
        for block in 0..device_blocks {
            assert_eq!(
                table.lookup(block),
                remapped.get(&block).copied(),
                "seed {seed} round {round}: lookup({block})"
            );
        }
    }
}

#[test]
fn route_exact_runs_and_overflow() {
    let table = small_table();
    let runs: Vec<(u64, u64, u64)> = table
        .route(8, 35)
        .unwrap()
        .map(|r| (r.logical_block, r.device_block, r.len_blocks))
        .collect();
    // 40 is pending: it routes to itself.
    assert_eq!(
        runs,
        vec![
            (8, 8, 2),
            (10, 1000, 1),
            (11, 11, 9),
            (20, 1001, 1),
            (21, 21, 9),
            (30, 1002, 1),
            (31, 31, 12)
        ]
    );
    assert_eq!(table.route(20, 1).unwrap().count(), 1);
    assert_eq!(table.route(20, 0).unwrap().count(), 0);
    assert_eq!(
        table.route(u64::MAX, 2).unwrap_err(),
        RemapError::RangeOverflow {
            start_block: u64::MAX,
            len_blocks: 2
        }
    );
}

#[test]
fn encode_decode_round_trip_exact_bytes() {
    let table = small_table();
    let copy = table.encode_copy(77);
    assert_eq!(
        copy.len(),
        REMAP_COPY_HEADER_BYTES + 4 * REMAP_COPY_ENTRY_BYTES
    );
    assert_eq!(&copy[..8], &REMAP_MAGIC);
    assert_eq!(
        u32::from_le_bytes(copy[REMAP_OFFSET_VERSION..][..4].try_into().unwrap()),
        REMAP_VERSION
    );
    assert_eq!(
        u64::from_le_bytes(copy[REMAP_OFFSET_SEQUENCE..][..8].try_into().unwrap()),
        77
    );
    assert_eq!(
        u64::from_le_bytes(copy[REMAP_OFFSET_ENTRY_COUNT..][..8].try_into().unwrap()),
        4
    );
    let entry = |i: usize| {
        let at = REMAP_COPY_HEADER_BYTES + i * REMAP_COPY_ENTRY_BYTES;
        (
            u64::from_le_bytes(copy[at..][..8].try_into().unwrap()),
            u64::from_le_bytes(copy[at + 8..][..8].try_into().unwrap()),
        )
    };
    assert_eq!(entry(0), (10, 1000 | REMAP_ACTIVE_BIT));
    assert_eq!(entry(3), (40, 1003), "pending: state bit clear");
    let mut without_crc = copy[..REMAP_OFFSET_CRC].to_vec();
    without_crc.extend_from_slice(&copy[REMAP_OFFSET_CRC + 4..]);
    assert_eq!(
        u32::from_le_bytes(copy[REMAP_OFFSET_CRC..][..4].try_into().unwrap()),
        crc32c::crc32c(&without_crc)
    );

    let (sequence, decoded) = decode_copy(&copy).unwrap();
    decoded.check_invariants();
    assert_eq!(sequence, 77);
    assert_eq!(decoded.entries(), table.entries(), "states kept by decode");
    assert_eq!(decoded.lookup(40), None);
    assert_eq!(decoded.max_entries(), 4);
    // Padded to a block: padding ignored, capacity from the length.
    let mut padded = copy.clone();
    padded.resize(512, 0);
    let (_, decoded) = decode_copy(&padded).unwrap();
    assert_eq!(decoded.max_entries(), max_entries(512));
    assert_eq!(decoded.encode_copy(77), copy, "re-encoding is identical");
    // Empty table.
    let empty = RemapTable::new(0).encode_copy(1);
    assert_eq!(empty.len(), REMAP_COPY_HEADER_BYTES);
    assert!(decode_copy(&empty).unwrap().1.is_empty());
}

#[test]
fn random_tables_round_trip() {
    let seed = seed(0x5EED_0002);
    let mut rng = SmallRng::seed_from_u64(seed);
    for round in 0..50 {
        let mut table = RemapTable::new(64);
        for _ in 0..rng.gen_range(0..64) {
            let bad = rng.gen_range(0..REMAP_MAX_BLOCK);
            let spare = rng.gen_range(0..=REMAP_MAX_BLOCK);
            if table.begin(bad, spare).is_ok() && rng.gen_bool(0.5) {
                table.activate(bad).unwrap();
            }
        }
        let sequence = rng.gen();
        let copy = table.encode_copy(sequence);
        let (got_sequence, decoded) = decode_copy(&copy)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: decode failed: {e}"));
        decoded.check_invariants();
        assert_eq!(got_sequence, sequence, "seed {seed} round {round}");
        assert_eq!(
            decoded.entries(),
            table.entries(),
            "seed {seed} round {round}"
        );
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let copy = small_table().encode_copy(5);
    for bit in 0..copy.len() * 8 {
        let mut damaged = copy.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let result = decode_copy(&damaged);
        assert!(
            result.is_err(),
            "flip of bit {bit} (byte {}) decoded",
            bit / 8
        );
    }
}

#[test]
fn decode_errors_are_exact() {
    let copy = small_table().encode_copy(5);
    for len in 0..copy.len() {
        let needed_bytes = if len < REMAP_COPY_HEADER_BYTES {
            REMAP_COPY_HEADER_BYTES as u64
        } else {
            copy.len() as u64
        };
        assert_eq!(
            decode_copy(&copy[..len]).unwrap_err(),
            RemapError::CopyTruncated {
                len_bytes: len,
                needed_bytes
            },
            "truncated to {len} bytes"
        );
    }
    let mut bad_magic = copy.clone();
    bad_magic[0] = b'X';
    let mut found = REMAP_MAGIC;
    found[0] = b'X';
    assert_eq!(
        decode_copy(&bad_magic).unwrap_err(),
        RemapError::BadMagic { found }
    );
    let mut bad_version = copy.clone();
    bad_version[REMAP_OFFSET_VERSION] = 2;
    assert_eq!(
        decode_copy(&bad_version).unwrap_err(),
        RemapError::UnsupportedVersion {
            found: 2,
            supported: REMAP_VERSION
        }
    );
    let mut bad_entry = copy.clone();
    bad_entry[REMAP_COPY_HEADER_BYTES + 2 * REMAP_COPY_ENTRY_BYTES] ^= 1;
    assert!(matches!(
        decode_copy(&bad_entry).unwrap_err(),
        RemapError::ChecksumMismatch { .. }
    ));
    // An entry count far beyond the bytes is truncation, not an overflow.
    let mut huge = copy.clone();
    huge[REMAP_OFFSET_ENTRY_COUNT..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        decode_copy(&huge).unwrap_err(),
        RemapError::CopyTruncated {
            len_bytes: copy.len(),
            needed_bytes: u64::MAX
        }
    );
    // Consistent checksum over contradictory entries (a writer bug).
    let mut dup = copy.clone();
    let second = REMAP_COPY_HEADER_BYTES + REMAP_COPY_ENTRY_BYTES;
    dup.copy_within(REMAP_COPY_HEADER_BYTES..REMAP_COPY_HEADER_BYTES + 8, second);
    let mut without_crc = dup[..REMAP_OFFSET_CRC].to_vec();
    without_crc.extend_from_slice(&dup[REMAP_OFFSET_CRC + 4..]);
    let crc = crc32c::crc32c(&without_crc);
    dup[REMAP_OFFSET_CRC..][..4].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        decode_copy(&dup).unwrap_err(),
        RemapError::InvalidEntry {
            index: 1,
            reason: Box::new(RemapError::AlreadyRemapped {
                bad_block: 10,
                spare_block: 1000
            })
        }
    );
}

#[test]
fn recover_takes_newest_valid_copy_and_activates_pending() {
    let mut table = RemapTable::new(8);
    table.begin(1, 100).unwrap();
    table.activate(1).unwrap();
    let old = table.encode_copy(3);
    table.begin(2, 101).unwrap();
    let new = table.encode_copy(4); // crash before activate
    let mut torn = table.encode_copy(5);
    torn[REMAP_COPY_HEADER_BYTES] ^= 0x10;

    for copies in [[&old[..], &new[..]], [&new[..], &old[..]]] {
        let (sequence, recovered) = recover(&copies).unwrap();
        recovered.check_invariants();
        assert_eq!(sequence, 4);
        assert_eq!(recovered.lookup(1), Some(100));
        assert_eq!(recovered.lookup(2), Some(101), "pending made active");
        assert_eq!(recovered.entry(2).unwrap().state, RemapState::Active);
    }
    let (sequence, recovered) = recover(&[&torn, &old]).unwrap();
    assert_eq!(sequence, 3, "torn newest copy skipped");
    assert_eq!(recovered.lookup(2), None);

    let mut bad_magic = old.clone();
    bad_magic[..8].copy_from_slice(b"NOTREMAP");
    match recover(&[&torn, &bad_magic[..], &old[..10]]).unwrap_err() {
        RemapError::NoValidCopy { defects } => {
            assert_eq!(defects.len(), 3, "{defects:?}");
            assert!(
                matches!(defects[0], RemapError::ChecksumMismatch { .. }),
                "{defects:?}"
            );
            assert_eq!(
                defects[1],
                RemapError::BadMagic {
                    found: *b"NOTREMAP"
                }
            );
            assert_eq!(
                defects[2],
                RemapError::CopyTruncated {
                    len_bytes: 10,
                    needed_bytes: REMAP_COPY_HEADER_BYTES as u64
                }
            );
        }
        other => panic!("expected NoValidCopy, got {other:?}"),
    }
}

#[test]
fn store_layout_copies_hold_one_entry_per_spare() {
    for block_bytes in [512u64, 4096] {
        for spare_blocks in [0u64, 1, 27, 28, 29, 252, 253, 1000] {
            let layout = Layout::compute(1 << 20, block_bytes, spare_blocks).unwrap();
            let copy_bytes = (layout.remap_copy_blocks * block_bytes) as usize;
            assert!(
                max_entries(copy_bytes) as u64 >= spare_blocks,
                "B={block_bytes} spares={spare_blocks}: copy of {copy_bytes} bytes holds {}",
                max_entries(copy_bytes)
            );
            // A full table fits its copy.
            let mut pool = SparePool::new(layout.spare_start, layout.spare_blocks).unwrap();
            let mut table = RemapTable::new(max_entries(copy_bytes));
            for bad in 0..spare_blocks {
                let spare = pool.take().unwrap();
                table.begin(layout.data_start + bad, spare).unwrap();
            }
            assert!(table.encode_copy(1).len() <= copy_bytes);
        }
    }
    assert_eq!(max_entries(0), 0);
    assert_eq!(max_entries(REMAP_COPY_HEADER_BYTES + 15), 0);
    assert_eq!(max_entries(REMAP_COPY_HEADER_BYTES + 16), 1);
}

#[test]
fn readers_never_see_pending_entries() {
    const ENTRIES: u64 = 200;
    const READERS: u64 = 2;
    let seed = seed(0x5EED_0003);
    let mut table = RemapTable::new(ENTRIES as usize);
    let handle = table.handle();
    // Bad blocks are 1..=ENTRIES, begun and activated in order. The writer
    // stores `activating = b` just before `activate(b)`: a view taken before
    // a reader loads `activating` may only hold blocks <= that value.
    let activating = Arc::new(AtomicU64::new(0));
    let activated = Arc::new(AtomicU64::new(0));
    let views_taken = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let spare_of = |bad: u64| 1_000_000 + bad * 7;

    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let handle = handle.clone();
            let activating = Arc::clone(&activating);
            let activated = Arc::clone(&activated);
            let views_taken = Arc::clone(&views_taken);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ reader);
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let floor = activated.load(Ordering::Acquire);
                    let view = handle.view();
                    let ceiling = activating.load(Ordering::Acquire);
                    let seen = view.len() as u64;
                    assert!(
                        floor <= seen && seen <= ceiling,
                        "seed {seed}: view has {seen} entries; activated {floor}, activating {ceiling}"
                    );
                    for bad in 1..=seen {
                        assert_eq!(
                            view.lookup(bad),
                            Some(spare_of(bad)),
                            "seed {seed}: active {bad}"
                        );
                    }
                    assert_eq!(
                        view.lookup(seen + 1),
                        None,
                        "seed {seed}: {} not activated (activating {ceiling})",
                        seen + 1
                    );
                    let probe = rng.gen_range(0..ENTRIES + 2);
                    let expected = (1..=seen).contains(&probe).then(|| spare_of(probe));
                    assert_eq!(view.lookup(probe), expected, "seed {seed}: probe {probe}");
                    let routed: Vec<RouteRun> = view.route(0, ENTRIES + 2).unwrap().collect();
                    let remapped = routed.iter().filter(|r| r.device_block != r.logical_block);
                    assert_eq!(remapped.count() as u64, seen, "seed {seed}: {routed:?}");
                    views_taken.fetch_add(1, Ordering::AcqRel);
                    if finished {
                        break;
                    }
                }
            })
        })
        .collect();

    for bad in 1..=ENTRIES {
        table.begin(bad, spare_of(bad)).unwrap();
        // Let readers take views while the entry is pending: each reader
        // has at most one view in flight from before `begin`, so READERS + 1
        // more completed views include one taken wholly after it.
        let start = views_taken.load(Ordering::Acquire);
        while views_taken.load(Ordering::Acquire) < start + READERS + 1
            && !readers.iter().any(|r| r.is_finished())
        {
            std::thread::yield_now();
        }
        activating.store(bad, Ordering::Release);
        table.activate(bad).unwrap();
        activated.store(bad, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.join().expect("reader panicked");
    }
    table.check_invariants();
    assert_eq!(table.view().len() as u64, ENTRIES);
}

#[test]
fn errors_display_their_numbers() {
    let cases = [
        (RemapError::SparesExhausted { spares_total: 17 }, vec!["17"]),
        (
            RemapError::SpareInUse {
                spare_block: 1234,
                bad_block: 56,
            },
            vec!["1234", "56"],
        ),
        (RemapError::TableFull { max_entries: 251 }, vec!["251"]),
        (
            RemapError::CopyTruncated {
                len_bytes: 70,
                needed_bytes: 96,
            },
            vec!["70", "96"],
        ),
        (
            RemapError::InvalidEntry {
                index: 3,
                reason: Box::new(RemapError::AlreadyActive { bad_block: 88 }),
            },
            vec!["3", "88"],
        ),
        (
            RemapError::NoValidCopy {
                defects: vec![RemapError::UnsupportedVersion {
                    found: 9,
                    supported: REMAP_VERSION,
                }],
            },
            vec!["copy 0", "9"],
        ),
    ];
    for (error, needles) in cases {
        let text = error.to_string();
        for needle in needles {
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
    }
}
