//! The extent store: seeded random put/get/free/commit/reopen sequences
//! against a model; crashes between operations and inside commit; damaged
//! superblocks and bitmap slots; exact cap and no-space errors; bit flips
//! in stored records are always errors, never wrong bytes.

use std::collections::HashMap;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use strata_disk::device::{BlockDevice, DeviceError, Fault, FaultyDevice, MemDevice};
use strata_disk::record::{ChecksumKind, CodecPolicy, Dtype, RecordError, RecordMeta};
use strata_disk::store::{
    Extent, ExtentStore, Layout, StoreConfig, StoreError, SuperblockDefect, SB_OFFSET_SEQUENCE,
};

const BLOCK_BYTES: u64 = 512;

/// Seed from `STRATA_TEST_SEED` if set, else a fixed default; printed by
/// every assertion that uses it.
fn seed(default: u64) -> u64 {
    std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn config(cap_bytes: Option<u64>, policy: CodecPolicy) -> StoreConfig {
    StoreConfig {
        cap_bytes,
        policy,
        checksum: ChecksumKind::Xxh3,
        spare_blocks: 4,
    }
}

fn meta(len: usize) -> RecordMeta {
    RecordMeta {
        dtype: Dtype::Bytes,
        shape: vec![len as u64],
    }
}

/// Random bytes, or a compressible pattern, so both raw and lz4 records occur.
fn payload(rng: &mut SmallRng, max_len: usize) -> Vec<u8> {
    let len = rng.gen_range(0..=max_len);
    let mut bytes = vec![0u8; len];
    if rng.gen_bool(0.5) {
        rng.fill_bytes(&mut bytes);
    } else {
        let step: u8 = rng.gen();
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (i / 64) as u8 ^ step;
        }
    }
    bytes
}

/// Checks the store holds exactly `model`: the same extents, each reading
/// back its bytes.
fn assert_holds<D: BlockDevice>(
    store: &ExtentStore<D>,
    model: &HashMap<Extent, Vec<u8>>,
    context: &str,
) {
    let mut actual: Vec<Extent> = store.extents().collect();
    let mut expected: Vec<Extent> = model.keys().copied().collect();
    actual.sort_by_key(|e| e.start);
    expected.sort_by_key(|e| e.start);
    assert_eq!(actual, expected, "{context}: live extents differ");
    for (&extent, bytes) in model {
        let record = store
            .get(extent)
            .unwrap_or_else(|e| panic!("{context}: get {extent:?}: {e}"));
        assert_eq!(&record.payload, bytes, "{context}: bytes of {extent:?}");
        assert_eq!(
            record.meta,
            meta(bytes.len()),
            "{context}: meta of {extent:?}"
        );
    }
    assert_eq!(
        store.stats().records,
        model.len() as u64,
        "{context}: record count"
    );
    store.check_invariants();
}

#[test]
fn layout_is_exact() {
    // 64 blocks of 512: the bitmap image is 56 + 16 (one range) + 8 * 8
    // (one chunk) + 8 = 144 bytes, the start map 8 bytes: one block per
    // slot. The remap copies hold 64 + 16 * 4 = 128 bytes: one block each.
    let layout = Layout::compute(64, 512, 4).unwrap();
    assert_eq!(
        layout,
        Layout {
            block_bytes: 512,
            device_blocks: 64,
            slot_blocks: 1,
            slot_start: [2, 3],
            remap_copy_blocks: 1,
            remap_start: 4,
            spare_start: 6,
            spare_blocks: 4,
            data_start: 10,
        }
    );
    // 2^20 blocks of 4096: image 56 + 16 + 8 * 16384 + 8 = 131152 bytes,
    // start map 131072 bytes: 262224 bytes, 65 blocks. 1000 spares:
    // 64 + 16000 bytes, 4 blocks per remap copy.
    let layout = Layout::compute(1 << 20, 4096, 1000).unwrap();
    assert_eq!(layout.slot_blocks, 65);
    assert_eq!(layout.slot_start, [2, 67]);
    assert_eq!(layout.remap_copy_blocks, 4);
    assert_eq!(layout.remap_start, 132);
    assert_eq!(layout.spare_start, 140);
    assert_eq!(layout.data_start, 1140);
    assert_eq!(layout.data_blocks(), (1 << 20) - 1140);

    let error = ExtentStore::create(
        MemDevice::new(10 * BLOCK_BYTES, BLOCK_BYTES).unwrap(),
        config(None, CodecPolicy::None),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::DeviceTooSmall {
                device_blocks: 10,
                needed_blocks: 11
            }
        ),
        "{error:?}"
    );
}

#[test]
fn metadata_area_is_never_handed_out() {
    let device = MemDevice::new(64 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let mut store = ExtentStore::create(&device, config(None, CodecPolicy::None)).unwrap();
    let data_start = store.layout().data_start;
    let mut extents = Vec::new();
    while let Ok(extent) = store.put(&[1u8; 10], &meta(10)) {
        extents.push(extent);
    }
    assert_eq!(extents.len() as u64, 64 - data_start);
    for (i, extent) in extents.iter().enumerate() {
        // Next-fit from the start of the data area: sequential.
        assert_eq!(
            *extent,
            Extent {
                start: data_start + i as u64,
                len: 1
            }
        );
    }
    store.check_invariants();
}

fn random_ops<D: BlockDevice>(device: D, seed: u64, reopen: impl Fn(D) -> D) -> (u64, u64, u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let cfg = config(Some(200 * BLOCK_BYTES), CodecPolicy::Auto);
    let mut store = Some(ExtentStore::create(device, cfg.clone()).unwrap());
    let mut model: HashMap<Extent, Vec<u8>> = HashMap::new();
    let mut committed = model.clone();
    let mut freed: Vec<Extent> = Vec::new();
    let (mut puts, mut refusals, mut reopens) = (0, 0, 0);
    for step in 0..1500 {
        let s = store.as_mut().unwrap();
        let context = format!("seed {seed} step {step}");
        match rng.gen_range(0..100) {
            0..=44 => {
                let bytes = payload(&mut rng, 3000);
                let before = s.stats();
                match s.put(&bytes, &meta(bytes.len())) {
                    Ok(extent) => {
                        puts += 1;
                        assert!(
                            model.insert(extent, bytes).is_none(),
                            "{context}: {extent:?} handed out twice"
                        );
                    }
                    Err(StoreError::CapExceeded { .. } | StoreError::NoSpace { .. }) => {
                        refusals += 1;
                        assert_eq!(
                            s.stats(),
                            before,
                            "{context}: a refused put changed the store"
                        );
                    }
                    Err(e) => panic!("{context}: put: {e}"),
                }
            }
            45..=64 => {
                if let Some(&extent) = model.keys().nth(rng.gen_range(0..model.len().max(1))) {
                    let record = s.get(extent).unwrap();
                    assert_eq!(record.payload, model[&extent], "{context}: {extent:?}");
                }
            }
            65..=84 => {
                if let Some(&extent) = model.keys().nth(rng.gen_range(0..model.len().max(1))) {
                    s.free(extent).unwrap();
                    model.remove(&extent);
                    freed.push(extent);
                }
            }
            85..=89 => {
                if let Some(&extent) = freed.last() {
                    if !model.contains_key(&extent) {
                        assert!(
                            matches!(s.free(extent), Err(StoreError::NotAllocated { extent: e }) if e == extent),
                            "{context}: double free of {extent:?} accepted"
                        );
                        assert!(matches!(
                            s.get(extent),
                            Err(StoreError::NotAllocated { .. })
                        ));
                    }
                }
            }
            90..=96 => {
                s.commit().unwrap();
                committed = model.clone();
            }
            _ => {
                // Reopen without committing: uncommitted work is dropped.
                let device = store.take().unwrap().into_device();
                let reopened = ExtentStore::open(reopen(device), cfg.clone())
                    .unwrap_or_else(|e| panic!("{context}: open: {e}"));
                store = Some(reopened);
                model = committed.clone();
                reopens += 1;
                assert_holds(store.as_ref().unwrap(), &model, &context);
            }
        }
        store.as_ref().unwrap().check_invariants();
        assert_eq!(
            store.as_ref().unwrap().stats().records,
            model.len() as u64,
            "{context}"
        );
    }
    assert_holds(store.as_ref().unwrap(), &model, &format!("seed {seed} end"));
    (puts, refusals, reopens)
}

#[test]
fn random_operations_match_a_model_in_memory() {
    let seed = seed(0x5EED_0001);
    let device = MemDevice::new(300 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let (puts, refusals, reopens) = random_ops(device, seed, |d| d);
    // The test exercises what it claims to.
    assert!(
        puts > 300 && refusals > 0 && reopens > 5,
        "seed {seed}: {puts} {refusals} {reopens}"
    );
}

#[test]
fn random_operations_match_a_model_across_crashes() {
    let seed = seed(0x5EED_0002);
    let device = FaultyDevice::new(MemDevice::new(300 * BLOCK_BYTES, BLOCK_BYTES).unwrap());
    let (puts, refusals, reopens) = random_ops(device, seed, |d| {
        d.crash().unwrap();
        d.recover();
        d
    });
    assert!(
        puts > 300 && refusals > 0 && reopens > 5,
        "seed {seed}: {puts} {refusals} {reopens}"
    );
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Put(u8),
    /// Free the record put by `Put(id)`.
    Free(u8),
    Commit,
}

const SCRIPT: [Op; 14] = [
    Op::Put(1),
    Op::Put(2),
    Op::Commit,
    Op::Put(3),
    Op::Free(1),
    Op::Commit,
    Op::Free(2),
    Op::Put(4),
    Op::Put(5),
    Op::Commit,
    Op::Free(4),
    Op::Put(6),
    Op::Commit,
    Op::Put(7),
];

fn script_payload(id: u8) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(u64::from(id));
    let len = 200 + 700 * usize::from(id % 3);
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

struct Run {
    model: HashMap<Extent, Vec<u8>>,
    committed: HashMap<Extent, Vec<u8>>,
}

/// Runs `ops` on `store`, tracking the live and committed models.
fn run_ops<D: BlockDevice>(
    store: &mut ExtentStore<D>,
    ops: &[Op],
    ids: &mut HashMap<u8, Extent>,
    run: &mut Run,
) {
    for op in ops {
        match *op {
            Op::Put(id) => {
                let bytes = script_payload(id);
                let extent = store.put(&bytes, &meta(bytes.len())).unwrap();
                ids.insert(id, extent);
                run.model.insert(extent, bytes);
            }
            Op::Free(id) => {
                store.free(ids[&id]).unwrap();
                run.model.remove(&ids[&id]);
            }
            Op::Commit => {
                store.commit().unwrap();
                run.committed = run.model.clone();
            }
        }
    }
}

#[test]
fn crash_between_operations_recovers_the_last_commit() {
    let cfg = config(None, CodecPolicy::None);
    for crash_at in 0..=SCRIPT.len() {
        let device = FaultyDevice::new(MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap());
        let mut store = ExtentStore::create(&device, cfg.clone()).unwrap();
        let mut ids = HashMap::new();
        let mut run = Run {
            model: HashMap::new(),
            committed: HashMap::new(),
        };
        run_ops(&mut store, &SCRIPT[..crash_at], &mut ids, &mut run);
        drop(store);
        device.crash().unwrap();
        device.recover();
        let store = ExtentStore::open(&device, cfg.clone()).unwrap();
        assert_holds(
            &store,
            &run.committed,
            &format!("crash after {crash_at} ops"),
        );
        // Frees committed before the crash are gone; puts after it are not
        // allocated, so their blocks are free.
        for (id, extent) in &ids {
            if !run.committed.contains_key(extent) {
                assert!(
                    matches!(store.get(*extent), Err(StoreError::NotAllocated { .. })),
                    "crash after {crash_at}: record {id} at {extent:?} is visible"
                );
            }
        }
        let used: u64 = run.committed.keys().map(|e| e.len).sum();
        assert_eq!(
            store.stats().used_bytes,
            used * BLOCK_BYTES,
            "crash after {crash_at}"
        );
    }
}

#[test]
fn crash_inside_commit_leaves_the_old_or_the_new_state() {
    let cfg = config(None, CodecPolicy::None);
    // Every commit of the script, failing after each of its device operations
    // (flush data, write slot, flush, write copy 0, flush, write copy 1,
    // flush), then crashing.
    let commits: Vec<usize> = (0..SCRIPT.len())
        .filter(|&i| matches!(SCRIPT[i], Op::Commit))
        .collect();
    let mut outcomes = [0u32; 2];
    for &commit_at in &commits {
        for ops_before_error in 0..9 {
            let context = format!("commit at op {commit_at}, error after {ops_before_error} ops");
            let device = FaultyDevice::new(MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap());
            let mut store = ExtentStore::create(&device, cfg.clone()).unwrap();
            let mut ids = HashMap::new();
            let mut run = Run {
                model: HashMap::new(),
                committed: HashMap::new(),
            };
            run_ops(&mut store, &SCRIPT[..commit_at], &mut ids, &mut run);
            device
                .inject(Fault::ErrorAfterOps {
                    ops: ops_before_error,
                })
                .unwrap();
            let old_sequence = store.stats().sequence;
            let result = store.commit();
            if result.is_err() {
                assert!(
                    matches!(store.put(b"x", &meta(1)), Err(StoreError::NeedsReopen)),
                    "{context}"
                );
                device.clear_all();
                // Reads still work.
                for (extent, bytes) in &run.model {
                    assert_eq!(&store.get(*extent).unwrap().payload, bytes, "{context}");
                }
            }
            drop(store);
            device.clear_all();
            device.crash().unwrap();
            device.recover();
            let store = ExtentStore::open(&device, cfg.clone()).unwrap();
            // The commit point: superblock copy 0 written and flushed (the
            // fifth operation). From then on copy 0 is newer than copy 1 and
            // open must take it.
            let expect_new = ops_before_error >= 5;
            assert_eq!(result.is_ok(), ops_before_error >= 7, "{context}");
            let sequence = store.stats().sequence;
            if expect_new {
                assert_eq!(sequence, old_sequence + 1, "{context}");
                assert_holds(&store, &run.model, &format!("{context}: new state"));
                outcomes[1] += 1;
            } else {
                assert_eq!(sequence, old_sequence, "{context}");
                assert_holds(&store, &run.committed, &format!("{context}: old state"));
                outcomes[0] += 1;
            }
        }
    }
    // Both outcomes occur: the commit point is inside the sequence.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

#[test]
fn torn_superblock_write_falls_back_to_the_other_copy() {
    let cfg = config(None, CodecPolicy::None);
    for (copy, ops_before_error, expect_new) in [(0u64, 4u64, false), (1, 6, true)] {
        let context = format!("torn copy {copy}");
        let device = FaultyDevice::new(MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap());
        let mut store = ExtentStore::create(&device, cfg.clone()).unwrap();
        let old = store
            .put(&script_payload(1), &meta(script_payload(1).len()))
            .unwrap();
        store.commit().unwrap();
        let new = store
            .put(&script_payload(2), &meta(script_payload(2).len()))
            .unwrap();
        // The superblock write lands torn, then its flush fails and the
        // device crashes: the torn copy has new bytes up to 100, old after.
        device
            .inject(Fault::TornWrite {
                block: copy,
                keep_bytes: 100,
            })
            .unwrap();
        device
            .inject(Fault::ErrorAfterOps {
                ops: ops_before_error,
            })
            .unwrap();
        assert!(store.commit().is_err(), "{context}");
        drop(store);
        device.clear_all();
        device.crash().unwrap();
        device.recover();
        let store = ExtentStore::open(&device, cfg.clone()).unwrap();
        let mut expected = HashMap::from([(old, script_payload(1))]);
        if expect_new {
            expected.insert(new, script_payload(2));
        }
        assert_holds(&store, &expected, &context);
    }
}

/// A store with two committed records, closed; returns the device.
fn committed_store(device: &MemDevice) -> HashMap<Extent, Vec<u8>> {
    let mut store = ExtentStore::create(device, config(None, CodecPolicy::None)).unwrap();
    let mut model = HashMap::new();
    for id in [1, 2] {
        let bytes = script_payload(id);
        model.insert(store.put(&bytes, &meta(bytes.len())).unwrap(), bytes);
    }
    store.commit().unwrap();
    assert_eq!(store.stats().sequence, 2);
    model
}

fn scribble(device: &MemDevice, block: u64, byte: usize) {
    let mut bytes = vec![0u8; BLOCK_BYTES as usize];
    device.read_at(block * BLOCK_BYTES, &mut bytes).unwrap();
    bytes[byte] ^= 0x40;
    device.write_at(block * BLOCK_BYTES, &bytes).unwrap();
}

#[test]
fn damaged_superblocks() {
    let cfg = config(None, CodecPolicy::None);
    for copy in 0..2u64 {
        let device = MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
        let model = committed_store(&device);
        scribble(&device, copy, SB_OFFSET_SEQUENCE);
        let store = ExtentStore::open(&device, cfg.clone()).unwrap();
        assert_holds(&store, &model, &format!("copy {copy} damaged"));
        assert_eq!(store.stats().sequence, 2);
    }
    let device = MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    committed_store(&device);
    scribble(&device, 0, 0);
    scribble(&device, 1, SB_OFFSET_SEQUENCE);
    match ExtentStore::open(&device, cfg.clone()) {
        Err(StoreError::NoValidSuperblock { defects }) => {
            assert!(
                matches!(defects[0], SuperblockDefect::BadMagic { .. }),
                "{defects:?}"
            );
            assert!(
                matches!(defects[1], SuperblockDefect::Checksum { expected, actual } if expected != actual),
                "{defects:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A blank device is not a store.
    let blank = MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    assert!(matches!(
        ExtentStore::open(&blank, cfg.clone()),
        Err(StoreError::NoValidSuperblock { .. })
    ));
    // A superblock for another geometry is rejected field by field.
    let device = MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    committed_store(&device);
    let mut image = vec![0u8; (128 * BLOCK_BYTES) as usize];
    device.read_at(0, &mut image).unwrap();
    let bigger = MemDevice::new(256 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    bigger.write_at(0, &image).unwrap();
    match ExtentStore::open(&bigger, cfg) {
        Err(StoreError::NoValidSuperblock { defects }) => {
            for defect in defects {
                assert_eq!(
                    defect,
                    SuperblockDefect::Field {
                        field: "device_blocks",
                        stored: 128,
                        expected: 256
                    }
                );
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn damaged_bitmap_slots() {
    let cfg = config(None, CodecPolicy::None);
    // After create (sequence 1, slot 0) and one commit (sequence 2), slot 1
    // is current.
    let device = MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let model = committed_store(&device);
    let layout = *ExtentStore::open(&device, cfg.clone()).unwrap().layout();
    scribble(&device, layout.slot_start[1], 60);
    match ExtentStore::open(&device, cfg.clone()) {
        Err(StoreError::BitmapSlotCorrupt {
            sequence: 2,
            slot: 1,
            expected,
            actual,
        }) => assert_ne!(expected, actual),
        other => panic!("{other:?}"),
    }
    // The other slot is not consulted.
    let device = MemDevice::new(128 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let model2 = committed_store(&device);
    assert_eq!(model.len(), model2.len());
    scribble(&device, layout.slot_start[0], 60);
    let store = ExtentStore::open(&device, cfg).unwrap();
    assert_holds(&store, &model2, "old slot damaged");
}

#[test]
fn cap_and_no_space_errors_are_exact() {
    // Raw records: 128 header bytes + payload, padded to 512-byte blocks.
    let device = MemDevice::new(64 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let mut store =
        ExtentStore::create(&device, config(Some(4 * BLOCK_BYTES), CodecPolicy::None)).unwrap();
    let a = store.put(&[7u8; 896], &meta(896)).unwrap();
    assert_eq!(a.len, 2);
    let before = store.stats();
    let error = store.put(&[7u8; 1000], &meta(1000)).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::CapExceeded {
                requested_bytes: 1536,
                used_bytes: 1024,
                cap_bytes: 2048
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("1536") && text.contains("1024 of 2048") && text.contains("1024 left"),
        "{text}"
    );
    assert_eq!(store.stats(), before);
    // Exactly up to the cap is allowed.
    store.put(&[7u8; 896], &meta(896)).unwrap();
    assert_eq!(store.stats().used_bytes, 4 * BLOCK_BYTES);
    drop(store);

    // No space: fill the data area with one-block records, free every other.
    let device = MemDevice::new(64 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let mut store = ExtentStore::create(&device, config(None, CodecPolicy::None)).unwrap();
    let data_blocks = store.layout().data_blocks();
    let extents: Vec<Extent> = (0..data_blocks)
        .map(|_| store.put(&[1u8; 384], &meta(384)).unwrap())
        .collect();
    let error = store.put(&[], &meta(0)).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NoSpace {
                requested_blocks: 1,
                free_blocks: 0,
                largest_free_run_blocks: 0
            }
        ),
        "{error:?}"
    );
    for extent in extents.iter().step_by(2) {
        store.free(*extent).unwrap();
    }
    // Freed blocks are not reused before the free is committed.
    assert!(matches!(
        store.put(&[], &meta(0)),
        Err(StoreError::NoSpace { free_blocks: 0, .. })
    ));
    assert_eq!(
        store.stats().pending_free_bytes,
        data_blocks.div_ceil(2) * BLOCK_BYTES
    );
    store.commit().unwrap();
    let freed = data_blocks.div_ceil(2);
    let before = store.stats();
    assert_eq!(before.free_bytes, freed * BLOCK_BYTES);
    let error = store.put(&[1u8; 385], &meta(385)).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NoSpace {
                requested_blocks: 2,
                free_blocks,
                largest_free_run_blocks: 1
            } if free_blocks == freed
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("longest free run 1"), "{error}");
    assert_eq!(store.stats(), before);
    // A one-block record fits in a freed block.
    let again = store.put(&[1u8; 10], &meta(10)).unwrap();
    assert!(extents.iter().step_by(2).any(|e| *e == again), "{again:?}");
    store.check_invariants();
}

#[test]
fn free_and_get_refuse_what_is_not_a_live_record() {
    let device = MemDevice::new(64 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let mut store = ExtentStore::create(&device, config(None, CodecPolicy::None)).unwrap();
    let extent = store.put(&[3u8; 1000], &meta(1000)).unwrap();
    assert_eq!(extent.len, 3);
    for wrong in [
        Extent {
            start: extent.start,
            len: 2,
        },
        Extent {
            start: extent.start + 1,
            len: 2,
        },
        Extent { start: 0, len: 1 },
        Extent {
            start: extent.end(),
            len: 1,
        },
    ] {
        assert!(
            matches!(store.free(wrong), Err(StoreError::NotAllocated { extent }) if extent == wrong),
            "{wrong:?}"
        );
        assert!(matches!(
            store.get(wrong),
            Err(StoreError::NotAllocated { .. })
        ));
    }
    store.free(extent).unwrap();
    assert!(matches!(
        store.free(extent),
        Err(StoreError::NotAllocated { .. })
    ));
    store.commit().unwrap();
    assert!(matches!(
        store.free(extent),
        Err(StoreError::NotAllocated { .. })
    ));
    store.check_invariants();
}

#[test]
fn bit_flips_in_records_are_errors_never_wrong_bytes() {
    let seed = seed(0x5EED_0003);
    let mut rng = SmallRng::seed_from_u64(seed);
    let device = FaultyDevice::new(MemDevice::new(64 * BLOCK_BYTES, BLOCK_BYTES).unwrap());
    for policy in [CodecPolicy::None, CodecPolicy::Fast] {
        let mut store = ExtentStore::create(&device, config(None, policy)).unwrap();
        let mut bytes = payload(&mut rng, 700);
        bytes.resize(700, 9);
        let extent = store.put(&bytes, &meta(bytes.len())).unwrap();
        store.commit().unwrap();
        let mut payload_errors = 0;
        for bit in 0..extent.len * BLOCK_BYTES * 8 {
            let block = extent.start + bit / (BLOCK_BYTES * 8);
            device
                .inject(Fault::BitFlip {
                    block,
                    bit: bit % (BLOCK_BYTES * 8),
                })
                .unwrap();
            match store.get(extent) {
                // Only a flip in the padding after the record may pass.
                Ok(record) => assert_eq!(record.payload, bytes, "seed {seed} bit {bit}"),
                Err(StoreError::Record {
                    extent: e,
                    source:
                        RecordError::PayloadChecksum {
                            location,
                            expected,
                            actual,
                            ..
                        },
                }) => {
                    assert_eq!(e, extent);
                    assert_eq!(
                        (location.start_block, location.len_blocks),
                        (extent.start, extent.len)
                    );
                    assert_ne!(expected, actual, "seed {seed} bit {bit}");
                    assert!(bit >= 128 * 8, "seed {seed} bit {bit} in the header");
                    payload_errors += 1;
                }
                Err(StoreError::Record { extent: e, .. }) => {
                    assert_eq!(e, extent);
                    assert!(
                        bit < 128 * 8,
                        "seed {seed} bit {bit}: header error for a payload bit"
                    );
                }
                Err(other) => panic!("seed {seed} bit {bit}: {other:?}"),
            }
        }
        assert!(payload_errors > 0, "seed {seed} {policy:?}");
        // The flips were one-shot: the record reads back.
        assert_eq!(store.get(extent).unwrap().payload, bytes);
    }
}

#[test]
fn reopen_after_clean_shutdown_keeps_committed_records_only() {
    let cfg = config(None, CodecPolicy::Auto);
    let device = MemDevice::new(256 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let mut store = ExtentStore::create(&device, cfg.clone()).unwrap();
    let committed_bytes = vec![5u8; 3000];
    let committed = store.put(&committed_bytes, &meta(3000)).unwrap();
    store.commit().unwrap();
    let uncommitted = store.put(&[6u8; 100], &meta(100)).unwrap();
    store.free(committed).unwrap();
    drop(store);
    let mut store = ExtentStore::open(&device, cfg.clone()).unwrap();
    assert_holds(
        &store,
        &HashMap::from([(committed, committed_bytes)]),
        "reopen",
    );
    assert!(matches!(
        store.get(uncommitted),
        Err(StoreError::NotAllocated { .. })
    ));
    // Next-fit continues after the last committed extent.
    let next = store.put(&[1u8; 10], &meta(10)).unwrap();
    assert_eq!(next.start, committed.end());
    // The cap of this session applies.
    drop(store);
    let mut capped = cfg;
    capped.cap_bytes = Some(0);
    let mut store = ExtentStore::open(&device, capped).unwrap();
    assert!(matches!(
        store.put(&[], &meta(0)),
        Err(StoreError::CapExceeded {
            requested_bytes: 512,
            cap_bytes: 0,
            ..
        })
    ));
}

#[test]
fn a_failed_record_write_changes_nothing() {
    // A fault not tied to a block (no media error): no remap, the put fails
    // and releases its extent. (A bad block is remapped: tests/remap_store.rs.)
    let device = FaultyDevice::new(MemDevice::new(64 * BLOCK_BYTES, BLOCK_BYTES).unwrap());
    let mut store = ExtentStore::create(&device, config(None, CodecPolicy::None)).unwrap();
    let data_start = store.layout().data_start;
    device.inject(Fault::ErrorAfterOps { ops: 0 }).unwrap();
    let before = store.stats();
    match store.put(&[2u8; 600], &meta(600)) {
        Err(StoreError::Device {
            op: "write record",
            source:
                DeviceError::InjectedFault {
                    op: "write",
                    block: None,
                },
        }) => {}
        other => panic!("{other:?}"),
    }
    let after = store.stats();
    // The first block of the split run failed: one write error, nothing else.
    assert_eq!(after.write_errors, before.write_errors + 1);
    assert_eq!(
        strata_disk::store::StoreStats {
            write_errors: before.write_errors,
            ..after
        },
        before
    );
    assert_eq!((after.remaps, after.bad_blocks), (0, 0));
    store.check_invariants();
    device.clear_all();
    let extent = store.put(&[2u8; 600], &meta(600)).unwrap();
    assert_eq!(
        extent,
        Extent {
            start: data_start,
            len: 2
        }
    );
    assert_eq!(store.get(extent).unwrap().payload, vec![2u8; 600]);
}
