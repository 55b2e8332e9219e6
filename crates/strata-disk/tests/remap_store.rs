//! Bad-block remapping in the extent store: several failures in one put,
//! routing of reads around remapped blocks, reopen and crash recovery of the
//! table, spare exhaustion, a failing spare, the error counters, and a
//! seeded random sequence with bad blocks injected against a model.

use std::collections::HashMap;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use strata_disk::device::{BlockDevice, DeviceError, Fault, FaultyDevice, MemDevice};
use strata_disk::record::{encode, ChecksumKind, CodecPolicy, Dtype, RecordMeta};
use strata_disk::remap::{decode_copy, RemapState};
use strata_disk::store::{Extent, ExtentStore, StoreConfig, StoreError};

const BLOCK_BYTES: u64 = 512;
/// Header bytes of a raw (`CodecPolicy::None`) record: payloads up to
/// `BLOCK_BYTES - RECORD_HEADER_BYTES` fit one block.
const RECORD_HEADER_BYTES: usize = 128;

/// Seed from `STRATA_TEST_SEED` if set, else a fixed default; printed by
/// every assertion that uses it.
fn seed(default: u64) -> u64 {
    std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn config(spare_blocks: u64) -> StoreConfig {
    StoreConfig {
        cap_bytes: None,
        policy: CodecPolicy::None,
        checksum: ChecksumKind::Xxh3,
        spare_blocks,
    }
}

fn meta(len: usize) -> RecordMeta {
    RecordMeta {
        dtype: Dtype::Bytes,
        shape: vec![len as u64],
    }
}

fn faulty(blocks: u64) -> FaultyDevice<MemDevice> {
    FaultyDevice::new(MemDevice::new(blocks * BLOCK_BYTES, BLOCK_BYTES).unwrap())
}

/// The record as `put` writes it, padded to whole blocks.
fn encoded(payload: &[u8]) -> Vec<u8> {
    let mut bytes = encode(
        payload,
        &meta(payload.len()),
        CodecPolicy::None,
        ChecksumKind::Xxh3,
    )
    .unwrap();
    bytes.resize(
        bytes.len().div_ceil(BLOCK_BYTES as usize) * BLOCK_BYTES as usize,
        0,
    );
    bytes
}

fn read_block<D: BlockDevice>(device: &D, block: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; BLOCK_BYTES as usize];
    device.read_at(block * BLOCK_BYTES, &mut bytes).unwrap();
    bytes
}

#[test]
fn several_failures_in_one_put_each_get_a_spare() {
    let device = faulty(128);
    let mut store = ExtentStore::create(&device, config(8)).unwrap();
    let layout = *store.layout();
    let (data, spare) = (layout.data_start, layout.spare_start);
    let bad = [data + 1, data + 3, data + 4];
    for block in bad {
        device.inject(Fault::WriteError { block }).unwrap();
    }
    // Six blocks: 0 normal, 1 bad, 2 normal, 3-4 bad, 5 normal.
    let payload: Vec<u8> = (0..6 * BLOCK_BYTES as usize - RECORD_HEADER_BYTES)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let extent = store.put(&payload, &meta(payload.len())).unwrap();
    assert_eq!(
        extent,
        Extent {
            start: data,
            len: 6
        }
    );
    let stats = store.stats();
    assert_eq!(
        (
            stats.remaps,
            stats.pending,
            stats.spares_left,
            stats.spares_total,
            stats.bad_blocks,
            stats.write_errors
        ),
        (3, 0, 5, 8, 3, 3),
        "{stats:?}"
    );
    store.check_invariants();
    // Spares are taken in order, one per failed block, and hold the block's
    // bytes; the bad blocks hold nothing of the record.
    let bytes = encoded(&payload);
    let block_of =
        |i: u64| bytes[(i * BLOCK_BYTES) as usize..((i + 1) * BLOCK_BYTES) as usize].to_vec();
    for (n, &bad_block) in bad.iter().enumerate() {
        let i = bad_block - data;
        assert_eq!(
            read_block(&device, spare + n as u64),
            block_of(i),
            "spare {n}"
        );
        assert_ne!(
            read_block(&device, bad_block),
            block_of(i),
            "bad block {bad_block}"
        );
    }
    for i in [0, 2, 5] {
        assert_eq!(
            read_block(&device, data + i),
            block_of(i),
            "normal block {i}"
        );
    }
    // A read is split around the remapped blocks and returns the record.
    assert_eq!(store.get(extent).unwrap().payload, payload);

    // The remaps are durable; after a commit the record is too.
    store.commit().unwrap();
    drop(store);
    let store = ExtentStore::open(&device, config(8)).unwrap();
    let stats = store.stats();
    assert_eq!(
        (
            stats.remaps,
            stats.pending,
            stats.spares_left,
            stats.bad_blocks
        ),
        (3, 0, 5, 3),
        "{stats:?}"
    );
    assert_eq!(store.get(extent).unwrap().payload, payload);
    store.check_invariants();
}

#[test]
fn a_remapped_block_is_written_on_its_spare_without_a_new_remap() {
    let device = faulty(64);
    let mut store = ExtentStore::create(&device, config(4)).unwrap();
    let data = store.layout().data_start;
    device.inject(Fault::WriteError { block: data }).unwrap();
    let first = store.put(&[1u8; 300], &meta(300)).unwrap();
    assert_eq!(store.stats().remaps, 1);
    store.free(first).unwrap();
    store.commit().unwrap();
    // Fill the data area so the allocator wraps around to the bad block.
    let mut extents = Vec::new();
    loop {
        match store.put(&[2u8; 300], &meta(300)) {
            Ok(extent) => extents.push(extent),
            Err(StoreError::NoSpace { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(extents.contains(&Extent {
        start: data,
        len: 1
    }));
    let stats = store.stats();
    assert_eq!((stats.remaps, stats.write_errors), (1, 1), "{stats:?}");
    for extent in extents {
        assert_eq!(store.get(extent).unwrap().payload, vec![2u8; 300]);
    }
    store.check_invariants();
}

#[test]
fn crash_after_the_table_flush_before_commit_keeps_the_remap() {
    let device = faulty(64);
    let mut store = ExtentStore::create(&device, config(4)).unwrap();
    let layout = *store.layout();
    let committed = store.put(&[3u8; 700], &meta(700)).unwrap();
    store.commit().unwrap();
    let bad_block = committed.end();
    device
        .inject(Fault::WriteError { block: bad_block })
        .unwrap();
    let lost = store.put(&[4u8; 700], &meta(700)).unwrap();
    assert_eq!(lost.start, bad_block);
    assert_eq!(store.stats().remaps, 1);
    drop(store);
    device.crash().unwrap();
    device.recover();

    // The newest table copy on disk holds the entry PENDING (it was written
    // before the entry was activated in memory).
    let copy_bytes = layout.remap_copy_bytes();
    let mut newest = None;
    for copy in 0..2 {
        let mut bytes = vec![0u8; copy_bytes];
        let start = layout.remap_start + copy * layout.remap_copy_blocks;
        device.read_at(start * BLOCK_BYTES, &mut bytes).unwrap();
        let (sequence, table) = decode_copy(&bytes).unwrap();
        if newest.as_ref().is_none_or(|(s, _)| sequence > *s) {
            newest = Some((sequence, table));
        }
    }
    let (_, table) = newest.unwrap();
    let entries = table.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (
            entries[0].bad_block,
            entries[0].spare_block,
            entries[0].state
        ),
        (bad_block, layout.spare_start, RemapState::Pending)
    );

    // Open recovers it ACTIVE; the committed record is intact, the
    // uncommitted one is gone.
    let mut store = ExtentStore::open(&device, config(4)).unwrap();
    let stats = store.stats();
    assert_eq!(
        (
            stats.remaps,
            stats.pending,
            stats.spares_left,
            stats.records
        ),
        (1, 0, 3, 1),
        "{stats:?}"
    );
    assert_eq!(store.extents().collect::<Vec<_>>(), vec![committed]);
    assert_eq!(store.get(committed).unwrap().payload, vec![3u8; 700]);
    store.check_invariants();
    // The next put lands on the bad block again and goes to its spare.
    let again = store.put(&[5u8; 700], &meta(700)).unwrap();
    assert_eq!(again.start, bad_block);
    let stats = store.stats();
    assert_eq!((stats.remaps, stats.write_errors), (1, 0), "{stats:?}");
    assert_eq!(store.get(again).unwrap().payload, vec![5u8; 700]);
}

#[test]
fn spare_exhaustion_refuses_the_put_and_keeps_everything_stored() {
    let device = faulty(64);
    let mut store = ExtentStore::create(&device, config(2)).unwrap();
    let data = store.layout().data_start;
    for block in [data, data + 2, data + 4] {
        device.inject(Fault::WriteError { block }).unwrap();
    }
    let mut stored = Vec::new();
    for id in 0..4u8 {
        let payload = vec![id; 200];
        let extent = store.put(&payload, &meta(200)).unwrap();
        assert_eq!(
            extent,
            Extent {
                start: data + u64::from(id),
                len: 1
            }
        );
        stored.push((extent, payload));
    }
    let before = store.stats();
    assert_eq!((before.remaps, before.spares_left), (2, 0), "{before:?}");
    let error = store.put(&[9u8; 200], &meta(200)).unwrap_err();
    match &error {
        StoreError::SparesExhausted {
            bad_block,
            spares_total,
        } => assert_eq!((*bad_block, *spares_total), (data + 4, 2)),
        other => panic!("{other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains(&format!("bad block {}", data + 4)) && text.contains("all 2 spare blocks"),
        "{text}"
    );
    let after = store.stats();
    assert_eq!(
        (
            after.remaps,
            after.spares_left,
            after.bad_blocks,
            after.records,
            after.used_bytes,
            after.write_errors
        ),
        (2, 0, 3, 4, before.used_bytes, before.write_errors + 1),
        "{after:?}"
    );
    store.check_invariants();
    for (extent, payload) in &stored {
        assert_eq!(&store.get(*extent).unwrap().payload, payload);
    }
    // The next put steps over the bad block and succeeds.
    let past = store.put(&[8u8; 200], &meta(200)).unwrap();
    assert_eq!(
        past,
        Extent {
            start: data + 5,
            len: 1
        }
    );
    assert_eq!(store.stats().bad_blocks, 3);
    store.free(past).unwrap();
    store.check_invariants();
    // Commits and reopens keep working and keep everything.
    store.commit().unwrap();
    drop(store);
    let store = ExtentStore::open(&device, config(2)).unwrap();
    for (extent, payload) in &stored {
        assert_eq!(&store.get(*extent).unwrap().payload, payload);
    }
    assert_eq!(store.stats().remaps, 2);
    store.check_invariants();
}

#[test]
fn a_failing_spare_fails_the_put_with_both_blocks_named() {
    let device = faulty(64);
    let mut store = ExtentStore::create(&device, config(2)).unwrap();
    let layout = *store.layout();
    let kept = store.put(&[6u8; 100], &meta(100)).unwrap();
    let bad_block = kept.end();
    device
        .inject(Fault::WriteError { block: bad_block })
        .unwrap();
    device
        .inject(Fault::WriteError {
            block: layout.spare_start,
        })
        .unwrap();
    let before = store.stats();
    match store.put(&[7u8; 100], &meta(100)) {
        Err(StoreError::SpareWriteFailed {
            bad_block: b,
            spare_block: s,
            source: DeviceError::InjectedFault { .. },
        }) => assert_eq!((b, s), (bad_block, layout.spare_start)),
        other => panic!("{other:?}"),
    }
    let after = store.stats();
    assert_eq!(
        (
            after.records,
            after.used_bytes,
            after.remaps,
            after.write_errors
        ),
        (1, before.used_bytes, 1, 2),
        "{after:?}"
    );
    assert_eq!(store.get(kept).unwrap().payload, vec![6u8; 100]);
    store.check_invariants();
}

#[test]
fn read_errors_and_checksum_failures_are_counted() {
    let device = faulty(64);
    let mut store = ExtentStore::create(&device, config(2)).unwrap();
    let extent = store.put(&[8u8; 1000], &meta(1000)).unwrap();
    store.commit().unwrap();
    device
        .inject(Fault::ReadError {
            block: extent.start + 1,
        })
        .unwrap();
    assert!(matches!(
        store.get(extent),
        Err(StoreError::Device {
            op: "read record",
            ..
        })
    ));
    device.clear_all();
    device
        .inject(Fault::BitFlip {
            block: extent.start + 1,
            bit: 77,
        })
        .unwrap();
    assert!(matches!(store.get(extent), Err(StoreError::Record { .. })));
    assert_eq!(store.get(extent).unwrap().payload, vec![8u8; 1000]);
    let stats = store.stats();
    assert_eq!(
        (
            stats.read_errors,
            stats.checksum_failures,
            stats.write_errors,
            stats.remaps
        ),
        (1, 1, 0, 0),
        "{stats:?}"
    );
}

fn random_payload(rng: &mut SmallRng) -> Vec<u8> {
    let mut bytes = vec![0u8; rng.gen_range(0..2500)];
    rng.fill_bytes(&mut bytes);
    bytes
}

#[test]
fn random_operations_with_bad_blocks_match_a_model() {
    let seed = seed(0x5EED_BAD0);
    let mut rng = SmallRng::seed_from_u64(seed);
    let device = faulty(160);
    let spare_blocks = 12;
    let mut store = ExtentStore::create(&device, config(spare_blocks)).unwrap();
    let layout = *store.layout();
    let mut model: HashMap<Extent, Vec<u8>> = HashMap::new();
    let mut committed = model.clone();
    let (mut exhausted, mut injected) = (0u32, 0u32);
    for step in 0..1200 {
        let context = format!("seed {seed} step {step}");
        match rng.gen_range(0..100) {
            0..=39 => {
                let payload = random_payload(&mut rng);
                let before = store.stats();
                match store.put(&payload, &meta(payload.len())) {
                    Ok(extent) => {
                        assert!(
                            model.insert(extent, payload).is_none(),
                            "{context}: {extent:?} handed out twice"
                        );
                    }
                    Err(StoreError::NoSpace { .. }) => {
                        assert_eq!(
                            store.stats(),
                            before,
                            "{context}: refused put changed stats"
                        );
                    }
                    Err(StoreError::SparesExhausted { spares_total, .. }) => {
                        exhausted += 1;
                        let after = store.stats();
                        assert_eq!(spares_total, spare_blocks, "{context}");
                        assert_eq!(
                            (after.records, after.used_bytes, after.spares_left),
                            (before.records, before.used_bytes, 0),
                            "{context}"
                        );
                        assert!(after.bad_blocks > after.remaps, "{context}: {after:?}");
                    }
                    Err(e) => panic!("{context}: put: {e}"),
                }
            }
            40..=64 => {
                if let Some(&extent) = model.keys().nth(rng.gen_range(0..model.len().max(1))) {
                    let record = store
                        .get(extent)
                        .unwrap_or_else(|e| panic!("{context}: get {extent:?}: {e}"));
                    assert_eq!(record.payload, model[&extent], "{context}: {extent:?}");
                }
            }
            65..=82 => {
                if let Some(&extent) = model.keys().nth(rng.gen_range(0..model.len().max(1))) {
                    store.free(extent).unwrap();
                    model.remove(&extent);
                }
            }
            83..=90 => {
                store.commit().unwrap();
                committed = model.clone();
            }
            91..=95 => {
                let block = rng.gen_range(layout.data_start..layout.device_blocks);
                device.inject(Fault::WriteError { block }).unwrap();
                injected += 1;
            }
            _ => {
                // Reopen, with or without a crash: uncommitted work is
                // dropped, remaps are kept.
                let remaps = store.stats().remaps;
                drop(store);
                if rng.gen_bool(0.5) {
                    device.crash().unwrap();
                    device.recover();
                }
                store = ExtentStore::open(&device, config(spare_blocks))
                    .unwrap_or_else(|e| panic!("{context}: open: {e}"));
                model = committed.clone();
                let stats = store.stats();
                assert_eq!(stats.remaps, remaps, "{context}: remaps lost at reopen");
                for (extent, bytes) in &model {
                    let record = store
                        .get(*extent)
                        .unwrap_or_else(|e| panic!("{context}: get {extent:?}: {e}"));
                    assert_eq!(&record.payload, bytes, "{context}: {extent:?} after reopen");
                }
            }
        }
        store.check_invariants();
        let stats = store.stats();
        assert_eq!(stats.records, model.len() as u64, "{context}");
        assert_eq!(
            stats.remaps + stats.spares_left,
            spare_blocks,
            "{context}: {stats:?}"
        );
        assert!(stats.bad_blocks >= stats.remaps, "{context}: {stats:?}");
    }
    for (extent, bytes) in &model {
        assert_eq!(
            &store.get(*extent).unwrap().payload,
            bytes,
            "seed {seed} end"
        );
    }
    let stats = store.stats();
    // The sequence must exercise remapping, and with this many bad blocks
    // injected the pool runs out.
    assert!(
        stats.remaps == spare_blocks && exhausted > 0 && injected > spare_blocks as u32,
        "seed {seed}: {stats:?}, {exhausted} exhausted puts, {injected} injected"
    );
}
