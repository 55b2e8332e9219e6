//! Batched puts and reads of the extent store and the zero-copy read path:
//! `put_many`, `get_many` and `get_into` against a model with seeded random
//! sizes and codecs, coalescing (device operation counts), write faults
//! remapped inside a batch, bit flips caught by every read path, batches
//! that fail part way (all or nothing), unknown extents, read errors inside
//! a coalesced read, and `FileDevice` reads (buffered and `O_DIRECT`)
//! through the aligned `ReadBuf`.

use std::collections::HashMap;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use strata_disk::device::{DeviceError, Fault, FaultyDevice, FileDevice, FileOptions, MemDevice};
use strata_disk::record::{ChecksumKind, Codec, CodecPolicy, Dtype, RecordError, RecordMeta};
use strata_disk::store::{
    EncodedBatch, Extent, ExtentStore, ReadBuf, StoreConfig, StoreError, GET_MANY_READ_BYTES_MAX,
};

const BLOCK_BYTES: u64 = 512;
/// Header bytes of a record: a raw payload of `k * BLOCK_BYTES -
/// RECORD_HEADER_BYTES` bytes fills exactly `k` blocks.
const RECORD_HEADER_BYTES: usize = 128;

/// Seed from `STRATA_TEST_SEED` if set, else a fixed default; printed by
/// every assertion that uses it.
fn seed(default: u64) -> u64 {
    std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn config(policy: CodecPolicy, spare_blocks: u64) -> StoreConfig {
    StoreConfig {
        cap_bytes: None,
        policy,
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

/// A payload filling exactly `blocks` blocks when stored raw.
fn raw_payload(blocks: u64, fill: u8) -> Vec<u8> {
    (0..blocks as usize * BLOCK_BYTES as usize - RECORD_HEADER_BYTES)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect()
}

/// `put_many` items borrowing `payloads` and `metas` pairwise.
fn items<'a>(payloads: &'a [Vec<u8>], metas: &'a [RecordMeta]) -> Vec<(&'a [u8], &'a RecordMeta)> {
    payloads
        .iter()
        .zip(metas)
        .map(|(p, m)| (p.as_slice(), m))
        .collect()
}

fn metas_of(payloads: &[Vec<u8>]) -> Vec<RecordMeta> {
    payloads.iter().map(|p| meta(p.len())).collect()
}

fn faulty(blocks: u64) -> FaultyDevice<MemDevice> {
    FaultyDevice::new(MemDevice::new(blocks * BLOCK_BYTES, BLOCK_BYTES).unwrap())
}

/// Random bytes, or a short pattern repeated (which compresses).
fn random_payload(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len];
    if rng.gen_bool(0.5) {
        rng.fill_bytes(&mut payload);
    } else {
        let pattern: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte = pattern[i % pattern.len()];
        }
    }
    payload
}

/// Whether `codec` is what `policy` may produce.
fn codec_fits(policy: CodecPolicy, codec: Codec) -> bool {
    match policy {
        CodecPolicy::None => codec == Codec::None,
        CodecPolicy::Fast => codec == Codec::Lz4,
        CodecPolicy::Small => matches!(codec, Codec::Zstd { level: 3 }),
        CodecPolicy::Auto => matches!(codec, Codec::None | Codec::Lz4),
    }
}

#[test]
fn batches_match_a_model_across_codecs() {
    let seed = seed(0xBA7C4);
    let mut rng = SmallRng::seed_from_u64(seed);
    let policies = [
        CodecPolicy::None,
        CodecPolicy::Fast,
        CodecPolicy::Small,
        CodecPolicy::Auto,
    ];
    let mut policy = CodecPolicy::Auto;
    let device = MemDevice::new(4096 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let mut store = ExtentStore::create(device, config(policy, 8)).unwrap();
    // Extent -> (payload, meta, policy it was written with).
    let mut model: HashMap<Extent, (Vec<u8>, RecordMeta, CodecPolicy)> = HashMap::new();
    let mut buf = ReadBuf::new();
    for round in 0..40 {
        if round % 6 == 5 {
            // A new session with another policy: records of every codec mix.
            store.commit().unwrap();
            policy = policies[rng.gen_range(0..policies.len())];
            store = ExtentStore::open(store.into_device(), config(policy, 8)).unwrap();
        }
        let items: Vec<(Vec<u8>, RecordMeta)> = (0..rng.gen_range(0..12))
            .map(|_| {
                let len = rng.gen_range(0..3000);
                (random_payload(&mut rng, len), meta(len))
            })
            .collect();
        let refs: Vec<(&[u8], &RecordMeta)> =
            items.iter().map(|(p, m)| (p.as_slice(), m)).collect();
        let extents = store.put_many(&refs).unwrap();
        assert_eq!(extents.len(), items.len(), "seed {seed} round {round}");
        for (extent, (payload, meta)) in extents.iter().zip(items) {
            let previous = model.insert(*extent, (payload, meta, policy));
            assert!(
                previous.is_none(),
                "seed {seed} round {round}: {extent:?} handed out twice"
            );
        }

        // get_many of a shuffled selection with duplicates, in caller order.
        let mut query: Vec<Extent> = model
            .keys()
            .copied()
            .filter(|_| rng.gen_bool(0.6))
            .collect();
        if let Some(&again) = query.first() {
            query.push(again);
        }
        query.shuffle(&mut rng);
        for (extent, result) in query.iter().zip(store.get_many(&query)) {
            let record = result.unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            let (payload, meta, written_with) = &model[extent];
            assert_eq!(
                &record.payload, payload,
                "seed {seed} round {round} {extent:?}"
            );
            assert_eq!(&record.meta, meta, "seed {seed} round {round} {extent:?}");
            assert!(
                codec_fits(*written_with, record.codec),
                "seed {seed} round {round}: {:?} under {written_with:?}",
                record.codec
            );
        }

        // get_into with one reused buffer; get agrees.
        for extent in query.iter().take(4) {
            let (payload, meta, _) = &model[extent];
            let view = store.get_into(*extent, &mut buf).unwrap();
            assert_eq!(view.payload(), payload.as_slice(), "seed {seed} {extent:?}");
            assert_eq!(view.meta(), meta, "seed {seed} {extent:?}");
            assert_eq!(view.checksum_kind(), ChecksumKind::Xxh3, "seed {seed}");
            let codec = view.codec();
            buf.check_invariants();
            let record = store.get(*extent).unwrap();
            assert_eq!(
                (&record.payload, record.codec),
                (payload, codec),
                "seed {seed} {extent:?}"
            );
        }

        // Free a few, so later batches land in fragmented space.
        let mut live: Vec<Extent> = model.keys().copied().collect();
        live.sort_by_key(|e| e.start);
        for extent in live {
            if rng.gen_bool(0.3) {
                store.free(extent).unwrap();
                model.remove(&extent);
            }
        }
        store.check_invariants();
        assert_eq!(
            store.stats().records,
            model.len() as u64,
            "seed {seed} round {round}"
        );
    }
    store.commit().unwrap();
    let store = ExtentStore::open(store.into_device(), config(policy, 8)).unwrap();
    let extents: Vec<Extent> = model.keys().copied().collect();
    for (extent, result) in extents.iter().zip(store.get_many(&extents)) {
        assert_eq!(
            result.unwrap().payload,
            model[extent].0,
            "seed {seed}: {extent:?} after reopen"
        );
    }
}

#[test]
fn adjacent_records_take_one_write_and_one_read() {
    let device = faulty(256);
    let mut store = ExtentStore::create(&device, config(CodecPolicy::None, 4)).unwrap();
    let data_start = store.layout().data_start;
    let payloads: Vec<Vec<u8>> = (1..=10u8)
        .map(|i| raw_payload(u64::from(i % 3) + 1, i))
        .collect();
    let metas = metas_of(&payloads);
    let items = items(&payloads, &metas);
    let before = device.stats();
    let extents = store.put_many(&items).unwrap();
    let after = device.stats();
    assert_eq!(after.writes - before.writes, 1, "{before:?} -> {after:?}");
    // Back to back from the data area's start, in order.
    let mut next = data_start;
    for (extent, payload) in extents.iter().zip(&payloads) {
        let len = (payload.len() + RECORD_HEADER_BYTES) as u64 / BLOCK_BYTES;
        assert_eq!(*extent, Extent { start: next, len });
        next += len;
    }

    // Asked in reverse order: still one read, results in the caller's order.
    let reversed: Vec<Extent> = extents.iter().rev().copied().collect();
    let before = device.stats();
    let results = store.get_many(&reversed);
    let after = device.stats();
    assert_eq!(after.reads - before.reads, 1, "{before:?} -> {after:?}");
    for (result, payload) in results.into_iter().zip(payloads.iter().rev()) {
        assert_eq!(&result.unwrap().payload, payload);
    }
    // Two disjoint groups (a gap where one record is left out): two reads.
    let gapped = [extents[0], extents[1], extents[3], extents[4]];
    let before = device.stats();
    for result in store.get_many(&gapped) {
        result.unwrap();
    }
    assert_eq!(device.stats().reads - before.reads, 2);
    store.check_invariants();
}

#[test]
fn coalesced_reads_stay_within_the_read_bound() {
    // Records of 300 KiB: three fit in one read of at most 1 MiB, a fourth
    // does not.
    let block_bytes = 4096u64;
    let record_blocks = 300 * 1024 / block_bytes;
    let records = 8u64;
    let device = FaultyDevice::new(MemDevice::new(1024 * block_bytes, block_bytes).unwrap());
    let mut store = ExtentStore::create(&device, config(CodecPolicy::None, 4)).unwrap();
    let payloads: Vec<Vec<u8>> = (0..records)
        .map(|i| vec![i as u8; (record_blocks * block_bytes) as usize - RECORD_HEADER_BYTES])
        .collect();
    let metas = metas_of(&payloads);
    let items = items(&payloads, &metas);
    let extents = store.put_many(&items).unwrap();
    let per_read = GET_MANY_READ_BYTES_MAX / (record_blocks * block_bytes);
    assert_eq!(per_read, 3, "record of {record_blocks} blocks");
    let before = device.stats();
    let mut buf = ReadBuf::new();
    let mut visited = Vec::new();
    store.get_many_with(&extents, &mut buf, |index, result| {
        assert_eq!(result.unwrap().payload(), payloads[index].as_slice());
        visited.push(index);
    });
    let reads = device.stats().reads - before.reads;
    assert_eq!(
        reads,
        records.div_ceil(per_read),
        "reads of {per_read} records"
    );
    assert_eq!(visited, (0..records as usize).collect::<Vec<_>>());
    assert!(
        buf.bytes().len() as u64 <= GET_MANY_READ_BYTES_MAX,
        "window {} bytes",
        buf.bytes().len()
    );
    buf.check_invariants();
}

#[test]
fn write_faults_in_a_batch_are_remapped() {
    let device = faulty(256);
    let mut store = ExtentStore::create(&device, config(CodecPolicy::None, 8)).unwrap();
    let data_start = store.layout().data_start;
    // Records of 3 blocks at data_start, +3, +6, ...; bad blocks in records 1 and 3.
    let bad = [data_start + 4, data_start + 9, data_start + 11];
    for block in bad {
        device.inject(Fault::WriteError { block }).unwrap();
    }
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| raw_payload(3, i)).collect();
    let metas = metas_of(&payloads);
    let items = items(&payloads, &metas);
    let extents = store.put_many(&items).unwrap();
    let stats = store.stats();
    assert_eq!(
        (
            stats.remaps,
            stats.bad_blocks,
            stats.write_errors,
            stats.records
        ),
        (3, 3, 3, 5),
        "{stats:?}"
    );
    store.check_invariants();
    for (result, payload) in store.get_many(&extents).into_iter().zip(&payloads) {
        assert_eq!(&result.unwrap().payload, payload);
    }
    let mut buf = ReadBuf::new();
    for (extent, payload) in extents.iter().zip(&payloads) {
        assert_eq!(
            store.get_into(*extent, &mut buf).unwrap().payload(),
            payload.as_slice()
        );
    }
    // The remapped data survives a reopen.
    store.commit().unwrap();
    let store = ExtentStore::open(&device, config(CodecPolicy::None, 8)).unwrap();
    for (result, payload) in store.get_many(&extents).into_iter().zip(&payloads) {
        assert_eq!(&result.unwrap().payload, payload);
    }
}

#[test]
fn bit_flips_are_caught_by_get_into_and_get_many() {
    let seed = seed(0xF11B);
    let mut rng = SmallRng::seed_from_u64(seed);
    for (policy, checksum) in [
        (CodecPolicy::None, ChecksumKind::Xxh3),
        (CodecPolicy::Fast, ChecksumKind::Crc32c),
        (CodecPolicy::Small, ChecksumKind::Xxh3),
    ] {
        let device = faulty(512);
        let config = StoreConfig {
            checksum,
            ..config(policy, 4)
        };
        let mut store = ExtentStore::create(&device, config).unwrap();
        let payloads: Vec<Vec<u8>> = (0..6).map(|_| random_payload(&mut rng, 1500)).collect();
        let metas = metas_of(&payloads);
        let items = items(&payloads, &metas);
        let extents = store.put_many(&items).unwrap();
        let mut buf = ReadBuf::new();
        for target in [1usize, 4] {
            let extent = extents[target];
            // A bit inside the record: the header or the stored payload.
            let record_bits = (RECORD_HEADER_BYTES
                + store
                    .get_into(extent, &mut buf)
                    .unwrap()
                    .header()
                    .stored_len_bytes as usize)
                * 8;
            let bit = rng.gen_range(0..record_bits as u64);
            let block = extent.start + bit / (BLOCK_BYTES * 8);
            let flip = Fault::BitFlip {
                block,
                bit: bit % (BLOCK_BYTES * 8),
            };
            let failures = store.stats().checksum_failures;

            device.inject(flip).unwrap();
            let error = store.get_into(extent, &mut buf).unwrap_err();
            assert!(
                matches!(
                    &error,
                    StoreError::Record {
                        extent: e,
                        source: RecordError::HeaderChecksum { .. }
                            | RecordError::PayloadChecksum { .. }
                            | RecordError::BadMagic { .. }
                            | RecordError::UnsupportedVersion { .. }
                    } if *e == extent
                ),
                "seed {seed} {policy:?} {flip:?}: {error}"
            );

            device.inject(flip).unwrap();
            let results = store.get_many(&extents);
            for (index, result) in results.into_iter().enumerate() {
                match result {
                    Ok(record) => {
                        assert_ne!(index, target, "seed {seed} {policy:?} {flip:?}");
                        assert_eq!(record.payload, payloads[index], "seed {seed}");
                    }
                    Err(StoreError::Record { extent: e, .. }) => {
                        assert_eq!((index, e), (target, extent), "seed {seed} {flip:?}")
                    }
                    Err(other) => panic!("seed {seed} {flip:?}: {other}"),
                }
            }
            // A flip in the magic or version is no checksum failure; every
            // other bit is counted once per read path.
            let magic_or_version = bit < 10 * 8;
            let expected = if magic_or_version { 0 } else { 2 };
            assert_eq!(
                store.stats().checksum_failures - failures,
                expected,
                "seed {seed} {policy:?} {flip:?}"
            );
            // The flip was one-shot: the stored record is intact.
            assert_eq!(store.get(extent).unwrap().payload, payloads[target]);
        }
    }
}

#[test]
fn a_batch_that_fails_part_way_stores_nothing() {
    let device = faulty(128);
    let mut store = ExtentStore::create(&device, config(CodecPolicy::None, 0)).unwrap();
    let data_start = store.layout().data_start;
    let kept = store
        .put(&raw_payload(2, 9), &meta(raw_payload(2, 9).len()))
        .unwrap();
    let before = store.stats();
    let extents_before: Vec<Extent> = store.extents().collect();
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| raw_payload(2, i)).collect();
    let metas = metas_of(&payloads);
    let unchanged = |store: &ExtentStore<&FaultyDevice<MemDevice>>, what: &str| {
        let stats = store.stats();
        assert_eq!(
            (stats.records, stats.used_bytes),
            (before.records, before.used_bytes),
            "{what}: {stats:?}"
        );
        assert_eq!(
            store.extents().collect::<Vec<_>>(),
            extents_before,
            "{what}"
        );
        store.check_invariants();
    };

    // Record 2 cannot be encoded: its shape does not describe its bytes.
    let mut bad_metas = metas.clone();
    bad_metas[2] = RecordMeta {
        dtype: Dtype::F32,
        shape: vec![3],
    };
    let error = store.put_many(&items(&payloads, &bad_metas)).unwrap_err();
    assert!(
        matches!(&error, StoreError::BatchRecord { index: 2, records: 5, source }
            if matches!(**source, StoreError::Encode { .. })),
        "{error}"
    );
    unchanged(&store, "encode error");

    // Record 3's second block is bad and there is no spare: refused at 3.
    // Records: kept (2 blocks), then 0..5 of 2 blocks each.
    let bad_block = data_start + 2 + 3 * 2 + 1;
    device
        .inject(Fault::WriteError { block: bad_block })
        .unwrap();
    let error = store.put_many(&items(&payloads, &metas)).unwrap_err();
    assert!(
        matches!(&error, StoreError::BatchRecord { index: 3, records: 5, source }
            if matches!(**source, StoreError::SparesExhausted { bad_block: b, .. } if b == bad_block)),
        "{error}"
    );
    unchanged(&store, "spares exhausted");
    device.clear_all();
    // The store sets that block aside for the rest of its session; a
    // reopened store (a new session) may use it again.
    store.commit().unwrap();
    let mut store = ExtentStore::open(&device, config(CodecPolicy::None, 0)).unwrap();

    // No room for record 4 (the device is nearly full): refused at 4.
    let free_blocks = store.stats().free_bytes / BLOCK_BYTES;
    let filler = raw_payload(free_blocks - 9, 1);
    let filler_extent = store.put(&filler, &meta(filler.len())).unwrap();
    let before = store.stats();
    let extents_before: Vec<Extent> = store.extents().collect();
    let error = store.put_many(&items(&payloads, &metas)).unwrap_err();
    assert!(
        matches!(&error, StoreError::BatchRecord { index: 4, records: 5, source }
            if matches!(**source, StoreError::NoSpace { requested_blocks: 2, free_blocks: 9, .. })),
        "{error}"
    );
    let stats = store.stats();
    assert_eq!(
        (stats.records, stats.used_bytes),
        (before.records, before.used_bytes)
    );
    assert_eq!(store.extents().collect::<Vec<_>>(), extents_before);
    store.free(filler_extent).unwrap();
    store.commit().unwrap();

    // Over the cap: the whole batch's bytes are named, unwrapped.
    let mut capped = ExtentStore::open(
        &device,
        StoreConfig {
            cap_bytes: Some(4 * 2 * BLOCK_BYTES),
            ..config(CodecPolicy::None, 0)
        },
    )
    .unwrap();
    let error = capped.put_many(&items(&payloads, &metas)).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::CapExceeded {
                requested_bytes,
                used_bytes,
                ..
            } if requested_bytes == 10 * BLOCK_BYTES && used_bytes == 2 * BLOCK_BYTES
        ),
        "{error}"
    );
    // After the refusals the same batch goes through, right after `kept`
    // (the cursor was restored each time).
    let mut store = ExtentStore::open(&device, config(CodecPolicy::None, 0)).unwrap();
    let extents = store.put_many(&items(&payloads, &metas)).unwrap();
    assert_eq!(
        extents[0],
        Extent {
            start: kept.end() + free_blocks - 9,
            len: 2
        },
        "next-fit continues after the freed filler's extent"
    );
    for (result, payload) in store.get_many(&extents).into_iter().zip(&payloads) {
        assert_eq!(&result.unwrap().payload, payload);
    }
    store.check_invariants();
}

#[test]
fn get_many_reports_unknown_extents_alone() {
    let device = faulty(128);
    let mut store = ExtentStore::create(&device, config(CodecPolicy::None, 4)).unwrap();
    let payloads: Vec<Vec<u8>> = (0..4u8).map(|i| raw_payload(2, i)).collect();
    let metas = metas_of(&payloads);
    let items = items(&payloads, &metas);
    let extents = store.put_many(&items).unwrap();
    store.free(extents[2]).unwrap();
    let unknown = [
        Extent {
            start: extents[0].start + 1,
            len: 1,
        },
        Extent {
            start: extents[1].start,
            len: 3,
        },
        extents[2],
        Extent {
            start: 1 << 40,
            len: 1,
        },
    ];
    let query = [
        extents[0], unknown[0], extents[1], unknown[1], unknown[2], extents[3], unknown[3],
    ];
    let results = store.get_many(&query);
    for (extent, result) in query.iter().zip(results) {
        match extents.iter().position(|e| e == extent && *e != extents[2]) {
            Some(index) => assert_eq!(result.unwrap().payload, payloads[index]),
            None => assert!(
                matches!(result, Err(StoreError::NotAllocated { extent: e }) if e == *extent),
                "{extent:?}"
            ),
        }
    }
    let mut buf = ReadBuf::new();
    assert!(matches!(
        store.get_into(unknown[0], &mut buf),
        Err(StoreError::NotAllocated { .. })
    ));
}

#[test]
fn a_read_error_in_a_coalesced_read_fails_only_its_record() {
    let device = faulty(128);
    let mut store = ExtentStore::create(&device, config(CodecPolicy::None, 4)).unwrap();
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| raw_payload(2, i)).collect();
    let metas = metas_of(&payloads);
    let items = items(&payloads, &metas);
    let extents = store.put_many(&items).unwrap();
    device
        .inject(Fault::ReadError {
            block: extents[2].start + 1,
        })
        .unwrap();
    for (index, result) in store.get_many(&extents).into_iter().enumerate() {
        if index == 2 {
            assert!(
                matches!(
                    result,
                    Err(StoreError::Device {
                        op: "read record",
                        source: DeviceError::InjectedFault { op: "read", .. }
                    })
                ),
                "{result:?}"
            );
        } else {
            assert_eq!(result.unwrap().payload, payloads[index], "record {index}");
        }
    }
    assert_eq!(store.stats().read_errors, 1, "{:?}", store.stats());
}

#[test]
fn file_device_reads_go_through_the_aligned_buffer() {
    let seed = seed(0xF1E);
    let mut rng = SmallRng::seed_from_u64(seed);
    for direct in [false, true] {
        let block_bytes = 4096u64;
        let path = std::env::temp_dir().join(format!(
            "strata-disk-batch-{}-{direct}.img",
            std::process::id()
        ));
        let device = FileDevice::create(
            &path,
            512 * block_bytes,
            block_bytes,
            FileOptions { direct },
        )
        .unwrap();
        let mut store = ExtentStore::create(device, config(CodecPolicy::Auto, 4)).unwrap();
        let payloads: Vec<Vec<u8>> = (0..12)
            .map(|_| {
                let len = rng.gen_range(0..20_000);
                random_payload(&mut rng, len)
            })
            .collect();
        let metas = metas_of(&payloads);
        let items = items(&payloads, &metas);
        let extents = store.put_many(&items).unwrap();
        store.commit().unwrap();
        let mut buf = ReadBuf::new();
        for (extent, payload) in extents.iter().zip(&payloads) {
            let view = store.get_into(*extent, &mut buf).unwrap();
            assert_eq!(
                view.payload(),
                payload.as_slice(),
                "seed {seed} direct {direct}"
            );
            buf.check_invariants();
            let window = buf.bytes();
            assert_eq!(window.len() as u64, extent.len * block_bytes);
            assert!(
                (window.as_ptr() as usize).is_multiple_of(block_bytes as usize),
                "window at {:p} not aligned to {block_bytes}",
                window.as_ptr()
            );
        }
        let is_direct = store.device().is_direct();
        let store = ExtentStore::open(
            FileDevice::open(&path, block_bytes, FileOptions { direct }).unwrap(),
            config(CodecPolicy::Auto, 4),
        )
        .unwrap();
        for (result, payload) in store.get_many(&extents).into_iter().zip(&payloads) {
            assert_eq!(
                &result.unwrap().payload,
                payload,
                "seed {seed} direct {direct}"
            );
        }
        assert!(
            is_direct == store.device().is_direct() && (direct || !is_direct),
            "asked direct {direct}, got {is_direct} then {}",
            store.device().is_direct()
        );
        drop(store);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_read_buf_is_reused_across_sizes() {
    let device = MemDevice::new(512 * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let mut store = ExtentStore::create(device, config(CodecPolicy::Fast, 4)).unwrap();
    let big: Vec<u8> = (0..40_000u32).map(|i| (i / 7) as u8).collect();
    let small = b"tiny".to_vec();
    let raw = raw_payload(1, 3);
    let big_extent = store.put(&big, &meta(big.len())).unwrap();
    let small_extent = store.put(&small, &meta(small.len())).unwrap();
    let mut buf = ReadBuf::new();
    assert_eq!(buf.capacity_bytes(), 0);
    assert_eq!(
        store.get_into(big_extent, &mut buf).unwrap().payload(),
        big.as_slice()
    );
    let capacity = buf.capacity_bytes();
    assert!(capacity >= big.len(), "capacity {capacity}");
    assert_eq!(
        store.get_into(small_extent, &mut buf).unwrap().payload(),
        small.as_slice()
    );
    assert_eq!(
        buf.capacity_bytes(),
        capacity,
        "a smaller read reallocates nothing"
    );
    let mut store = ExtentStore::open(store.into_device(), config(CodecPolicy::None, 4)).unwrap();
    let raw_extent = store.put(&raw, &meta(raw.len())).unwrap();
    let view = store.get_into(raw_extent, &mut buf).unwrap();
    assert_eq!(
        (view.payload(), view.codec()),
        (raw.as_slice(), Codec::None)
    );
    // A raw payload is the window itself after the header: no copy.
    let window_start = buf.bytes().as_ptr() as usize;
    let view = store.get_into(raw_extent, &mut buf).unwrap();
    assert_eq!(
        view.payload().as_ptr() as usize,
        window_start + RECORD_HEADER_BYTES
    );
    buf.check_invariants();
    buf.release();
    assert_eq!((buf.capacity_bytes(), buf.bytes().len()), (0, 0));
}

#[test]
fn device_ops_are_counted_for_single_and_batched_puts() {
    // One put per record costs one write each; one batch of the same
    // records costs one write in total.
    let device = faulty(256);
    let mut store = ExtentStore::create(&device, config(CodecPolicy::None, 4)).unwrap();
    let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| raw_payload(1, i)).collect();
    let before = device.stats().writes;
    for payload in &payloads {
        store.put(payload, &meta(payload.len())).unwrap();
    }
    assert_eq!(device.stats().writes - before, 8);
    let metas = metas_of(&payloads);
    let items = items(&payloads, &metas);
    let before = device.stats().writes;
    store.put_many(&items).unwrap();
    assert_eq!(device.stats().writes - before, 1);
    assert_eq!(store.put_many(&[]).unwrap(), Vec::<Extent>::new());
    assert_eq!(
        device.stats().writes - before,
        1,
        "an empty batch writes nothing"
    );
}

#[test]
fn encoded_batches_check_their_block_size_and_refuse_bad_records_cleanly() {
    let device = faulty(128);
    let mut store = ExtentStore::create(&device, config(CodecPolicy::None, 4)).unwrap();
    let mut batch = store.new_batch();
    assert_eq!(batch.push(&raw_payload(2, 1), &meta(896)).unwrap(), 2);
    assert_eq!(batch.push(b"abc", &meta(3)).unwrap(), 1);
    let (records, bytes) = (batch.len(), batch.len_bytes());
    let bad = RecordMeta {
        dtype: Dtype::I32,
        shape: vec![2],
    };
    assert!(matches!(
        batch.push(b"abc", &bad),
        Err(StoreError::Encode { .. })
    ));
    assert_eq!(
        (batch.len(), batch.len_bytes(), batch.total_blocks()),
        (records, bytes, 3)
    );
    batch.check_invariants();

    let foreign = EncodedBatch::new(4096, CodecPolicy::None, ChecksumKind::Xxh3);
    let before = device.stats().writes;
    assert!(matches!(
        store.put_batch(&foreign),
        Err(StoreError::BatchBlockSize {
            batch_block_bytes: 4096,
            store_block_bytes: 512
        })
    ));
    let extents = store.put_batch(&batch).unwrap();
    assert_eq!(device.stats().writes - before, 1);
    assert_eq!(
        store.get(extents[1]).unwrap().payload,
        b"abc".to_vec(),
        "{extents:?}"
    );
    batch.clear();
    assert!(batch.is_empty());
    batch.check_invariants();
}
