//! Inspection and verification of extent stores: exact figures of a healthy
//! store; exact findings after corrupting a record's payload or header,
//! superblock copies, a remap table copy or a bitmap slot; remaps shown in
//! the remap table; block-size detection and read-only opening of store
//! files.

use std::path::PathBuf;

use strata_disk::device::{BlockDevice, Fault, FaultyDevice, FileDevice, FileOptions, MemDevice};
use strata_disk::record::{
    encode, ChecksumKind, Codec, CodecPolicy, Dtype, RecordError, RecordHeader, RecordMeta,
    HEADER_LEN_BYTES, OFFSET_HEADER_CHECKSUM, OFFSET_SHAPE,
};
use strata_disk::remap::{RemapEntry, RemapState, RemapTable};
use strata_disk::store::{
    check_metadata, detect_block_bytes, open_file_store, open_file_store_readonly, Area,
    ConsistencyDefect, Extent, ExtentStore, Layout, MetadataFinding, OpenFileError, ReadOnlyFile,
    RemapCopyDefect, SlotDefect, StoreConfig, StoreError, SuperblockDefect, SB_OFFSET_SEQUENCE,
};

const BLOCK_BYTES: u64 = 512;
const DEVICE_BLOCKS: u64 = 128;
const SPARE_BLOCKS: u64 = 4;

fn config() -> StoreConfig {
    StoreConfig {
        cap_bytes: Some(64 * BLOCK_BYTES),
        policy: CodecPolicy::None,
        checksum: ChecksumKind::Xxh3,
        spare_blocks: SPARE_BLOCKS,
    }
}

fn meta(len: usize) -> RecordMeta {
    RecordMeta {
        dtype: Dtype::Bytes,
        shape: vec![len as u64],
    }
}

fn pattern(len: usize, step: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(step) ^ 0x5a)
        .collect()
}

fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

fn read_bytes<D: BlockDevice>(device: &D, offset_bytes: u64, len: usize) -> Vec<u8> {
    let block_bytes = device.block_bytes();
    let first = offset_bytes / block_bytes * block_bytes;
    let end = (offset_bytes + len as u64).div_ceil(block_bytes) * block_bytes;
    let mut bytes = vec![0u8; (end - first) as usize];
    device.read_at(first, &mut bytes).unwrap();
    let at = (offset_bytes - first) as usize;
    bytes[at..at + len].to_vec()
}

/// XORs `mask` into the byte at `offset_bytes` (read-modify-write of its block).
fn flip<D: BlockDevice>(device: &D, offset_bytes: u64, mask: u8) {
    let block_bytes = device.block_bytes();
    let first = offset_bytes / block_bytes * block_bytes;
    let mut block = vec![0u8; block_bytes as usize];
    device.read_at(first, &mut block).unwrap();
    block[(offset_bytes - first) as usize] ^= mask;
    device.write_at(first, &block).unwrap();
}

/// A committed store on memory with three records of 1, 2 and 3 blocks.
fn store_with_records() -> (ExtentStore<MemDevice>, Vec<(Extent, Vec<u8>)>) {
    let device = MemDevice::new(DEVICE_BLOCKS * BLOCK_BYTES, BLOCK_BYTES).unwrap();
    let mut store = ExtentStore::create(device, config()).unwrap();
    let mut records = Vec::new();
    for (blocks, step) in [(1usize, 3u8), (2, 5), (3, 7)] {
        let payload = pattern(blocks * BLOCK_BYTES as usize - HEADER_LEN_BYTES, step);
        let extent = store.put(&payload, &meta(payload.len())).unwrap();
        records.push((extent, payload));
    }
    store.commit().unwrap();
    (store, records)
}

#[test]
fn healthy_store_inspects_to_exact_figures_and_verifies_clean() {
    let (store, records) = store_with_records();
    let layout = Layout::compute(DEVICE_BLOCKS, BLOCK_BYTES, SPARE_BLOCKS).unwrap();
    let report = store.inspect();
    assert_eq!(report.layout, layout);
    assert_eq!(report.device_bytes(), DEVICE_BLOCKS * BLOCK_BYTES);
    let names: Vec<&str> = report.areas.iter().map(|a| a.name).collect();
    assert_eq!(
        names,
        [
            "superblock copy 0",
            "superblock copy 1",
            "bitmap slot 0",
            "bitmap slot 1",
            "remap table copy 0",
            "remap table copy 1",
            "spare pool",
            "data area"
        ]
    );
    // The areas tile the device.
    let mut next = 0;
    for area in &report.areas {
        assert_eq!(area.first_block, next, "{area:?} in {:?}", report.areas);
        next += area.len_blocks;
    }
    assert_eq!(next, DEVICE_BLOCKS);
    assert_eq!(
        report.areas[6],
        Area {
            name: "spare pool",
            first_block: layout.spare_start,
            len_blocks: SPARE_BLOCKS
        }
    );
    let data_blocks = DEVICE_BLOCKS - layout.data_start;
    let stats = report.stats;
    assert_eq!(
        (
            stats.capacity_bytes,
            stats.used_bytes,
            stats.free_bytes,
            stats.pending_free_bytes,
            stats.records,
            stats.cap_bytes,
            stats.sequence
        ),
        (
            data_blocks * BLOCK_BYTES,
            6 * BLOCK_BYTES,
            (data_blocks - 6) * BLOCK_BYTES,
            0,
            3,
            Some(64 * BLOCK_BYTES),
            2
        )
    );
    assert_eq!(
        (stats.spares_total, stats.spares_left),
        (SPARE_BLOCKS, SPARE_BLOCKS)
    );
    assert_eq!(report.largest_free_run_blocks, data_blocks - 6);
    // create writes slot 0 (sequence 1); the commit writes slot 1 (sequence 2).
    assert_eq!(report.current_slot, 1);
    assert_eq!(report.cursor_block, layout.data_start + 6);
    assert_eq!(report.remap_sequence, 1);
    assert!(report.remap_entries.is_empty());
    assert!(report.unmapped_bad_blocks.is_empty() && !report.needs_reopen);

    let verify = store.verify();
    assert!(verify.is_clean(), "{verify:?}");
    assert_eq!(verify.damage_count(), 0);
    assert_eq!(
        (verify.records_checked, verify.record_bytes_checked),
        (3, 6 * BLOCK_BYTES)
    );
    let metadata = &verify.metadata;
    assert_eq!(metadata.layout, Some(layout));
    let sequences: Vec<Option<u64>> = metadata.superblocks.iter().map(|s| s.sequence).collect();
    assert_eq!(sequences, [Some(2), Some(2)]);
    // Both copies name slot 1: it is checked once, and lists the records.
    assert_eq!(metadata.slots.len(), 1, "{:?}", metadata.slots);
    let slot = &metadata.slots[0];
    assert_eq!(
        (
            slot.slot,
            slot.sequence,
            slot.first_block,
            slot.records,
            slot.allocated_blocks
        ),
        (1, 2, layout.slot_start[1], Some(3), Some(6))
    );
    assert_eq!(slot.actual_checksum, Some(slot.expected_checksum));
    let remap: Vec<(u64, Option<u64>, usize)> = metadata
        .remap_copies
        .iter()
        .map(|c| (c.first_block, c.sequence, c.entries.len()))
        .collect();
    assert_eq!(
        remap,
        [
            (layout.remap_start, Some(0), 0),
            (layout.remap_start + layout.remap_copy_blocks, Some(1), 0)
        ]
    );
    assert_eq!(records.len(), 3);
    store.check_invariants();
}

#[test]
fn corrupt_payload_is_reported_with_its_extent_and_checksums() {
    let (store, records) = store_with_records();
    let (extent, payload) = &records[1];
    // Byte 10 of the stored payload (raw codec: stored == payload).
    let at = extent.start * BLOCK_BYTES + HEADER_LEN_BYTES as u64 + 10;
    flip(store.device(), at, 0x40);
    let mut corrupted = payload.clone();
    corrupted[10] ^= 0x40;
    let report = store.verify();
    assert!(!report.is_clean());
    assert_eq!(report.records_checked, 3);
    assert_eq!(report.bad_records.len(), 1, "{report:?}");
    let bad = &report.bad_records[0];
    assert_eq!(bad.extent, *extent);
    assert_eq!(bad.kind(), "payload checksum");
    assert_eq!(
        bad.checksums(),
        Some((ChecksumKind::Xxh3, xxh3(payload), xxh3(&corrupted)))
    );
    assert!(
        matches!(bad.error, StoreError::Record { extent: e, .. } if e == *extent),
        "{:?}",
        bad.error
    );
    assert!(report.metadata.is_clean() && report.consistency.is_empty());
    assert_eq!(report.damage_count(), 1);
    assert_eq!(store.stats().checksum_failures, 1);
}

#[test]
fn corrupt_header_is_reported_with_its_header_checksums() {
    let (store, records) = store_with_records();
    let (extent, payload) = &records[2];
    let header_at = extent.start * BLOCK_BYTES;
    // The shape's first dimension: covered by the header checksum only.
    flip(store.device(), header_at + OFFSET_SHAPE as u64, 0x01);
    let mut header = encode(
        payload,
        &meta(payload.len()),
        CodecPolicy::None,
        ChecksumKind::Xxh3,
    )
    .unwrap()[..HEADER_LEN_BYTES]
        .to_vec();
    let stored = u64::from_le_bytes(
        header[OFFSET_HEADER_CHECKSUM..OFFSET_HEADER_CHECKSUM + 8]
            .try_into()
            .unwrap(),
    );
    header[OFFSET_SHAPE] ^= 0x01;
    let report = store.verify();
    assert_eq!(report.bad_records.len(), 1, "{report:?}");
    let bad = &report.bad_records[0];
    assert_eq!((bad.extent, bad.kind()), (*extent, "header checksum"));
    assert_eq!(
        bad.checksums(),
        Some((
            ChecksumKind::Xxh3,
            stored,
            xxh3(&header[..OFFSET_HEADER_CHECKSUM])
        ))
    );
}

#[test]
fn undecompressable_payload_with_matching_checksums_is_reported() {
    let (store, records) = store_with_records();
    let (extent, _) = &records[0];
    // A header that claims lz4 over garbage, with both checksums right.
    let garbage = vec![0xffu8; 200];
    let header = RecordHeader {
        meta: meta(300),
        codec: Codec::Lz4,
        checksum_kind: ChecksumKind::Xxh3,
        raw_len_bytes: 300,
        stored_len_bytes: garbage.len() as u64,
        payload_checksum: xxh3(&garbage),
    };
    let mut block = header.to_bytes().to_vec();
    block.extend_from_slice(&garbage);
    block.resize(BLOCK_BYTES as usize, 0);
    store
        .device()
        .write_at(extent.start * BLOCK_BYTES, &block)
        .unwrap();
    let report = store.verify();
    assert_eq!(report.bad_records.len(), 1, "{report:?}");
    let bad = &report.bad_records[0];
    assert_eq!(
        (bad.extent, bad.kind(), bad.checksums()),
        (*extent, "decompress", None)
    );
    assert!(
        matches!(bad.record_error(), Some(RecordError::Decompress { .. })),
        "{:?}",
        bad.error
    );
}

#[test]
fn superblock_copy_1_corrupt_copy_0_good() {
    let (store, _) = store_with_records();
    let at = BLOCK_BYTES + SB_OFFSET_SEQUENCE as u64;
    let before = read_bytes(store.device(), BLOCK_BYTES, 168);
    flip(store.device(), at, 0x02);
    let after = read_bytes(store.device(), BLOCK_BYTES, 168);
    let stored = u64::from_le_bytes(before[160..168].try_into().unwrap());
    let report = store.verify();
    let expected = MetadataFinding::SuperblockInvalid {
        copy_index: 1,
        defect: SuperblockDefect::Checksum {
            expected: stored,
            actual: xxh3(&after[..160]),
        },
        other_valid_sequence: Some(2),
    };
    assert_eq!(report.metadata.findings, std::slice::from_ref(&expected));
    assert_eq!(report.metadata.superblocks[0].sequence, Some(2));
    assert_eq!(report.metadata.superblocks[1].sequence, None);
    let text = expected.to_string();
    assert!(
        text.starts_with("superblock copy 1 is corrupt: checksum mismatch")
            && text.ends_with("copy 0 is good (sequence 2)"),
        "{text}"
    );
    assert_eq!((report.bad_records.len(), report.damage_count()), (0, 1));
    // The store still opens from copy 0 and its records read.
    let reopened = ExtentStore::open(store.into_device(), config()).unwrap();
    assert!(reopened.verify().bad_records.is_empty());
}

#[test]
fn both_superblocks_corrupt_leave_the_layout_unknown() {
    let (store, _) = store_with_records();
    flip(store.device(), 0, 0xff); // copy 0: magic
    flip(store.device(), BLOCK_BYTES + 40, 0x01); // copy 1: copy_index, caught by the checksum
    let device = store.into_device();
    let report = check_metadata(&device);
    assert_eq!(report.layout, None);
    assert!(report.slots.is_empty() && report.remap_copies.is_empty());
    assert_eq!(report.findings.len(), 3, "{:?}", report.findings);
    let mut magic = *b"STRSUPR1";
    magic[0] ^= 0xff;
    assert_eq!(
        report.findings[0],
        MetadataFinding::SuperblockInvalid {
            copy_index: 0,
            defect: SuperblockDefect::BadMagic { found: magic },
            other_valid_sequence: None,
        }
    );
    assert!(
        matches!(
            &report.findings[1],
            MetadataFinding::SuperblockInvalid {
                copy_index: 1,
                defect: SuperblockDefect::Checksum { .. },
                other_valid_sequence: None
            }
        ),
        "{:?}",
        report.findings[1]
    );
    assert_eq!(report.findings[2], MetadataFinding::NoValidSuperblock);
    assert!(matches!(
        ExtentStore::open(device, config()),
        Err(StoreError::NoValidSuperblock { .. })
    ));
}

#[test]
fn remap_table_copy_corrupt_other_good() {
    let (store, _) = store_with_records();
    let layout = *store.layout();
    // Copy 0's sequence field (bytes 16..24): the crc32c catches it.
    flip(store.device(), layout.remap_start * BLOCK_BYTES + 16, 0x80);
    let report = store.verify();
    assert_eq!(report.metadata.findings.len(), 1, "{:?}", report.metadata);
    match &report.metadata.findings[0] {
        MetadataFinding::RemapCopyInvalid {
            copy_index: 0,
            defect:
                RemapCopyDefect::Decode {
                    source: strata_disk::remap::RemapError::ChecksumMismatch { stored, computed },
                },
            other_valid_sequence: Some(1),
        } => assert_ne!(stored, computed),
        other => panic!("unexpected finding {other:?}"),
    }
    assert_eq!(report.metadata.remap_copies[0].sequence, None);
    assert_eq!(report.metadata.remap_copies[1].sequence, Some(1));
}

#[test]
fn remap_copies_that_disagree_or_leave_the_data_area_are_reported() {
    let (store, _) = store_with_records();
    let layout = *store.layout();
    let copy_bytes = layout.remap_copy_blocks * BLOCK_BYTES;
    let write_copy = |copy: u64, table: &RemapTable, sequence: u64| {
        let mut bytes = table.encode_copy(sequence);
        bytes.resize(copy_bytes as usize, 0);
        store
            .device()
            .write_at(layout.remap_copy_start(copy) * BLOCK_BYTES, &bytes)
            .unwrap();
    };
    let mut table = RemapTable::new(SPARE_BLOCKS as usize);
    table
        .begin(layout.data_start + 2, layout.spare_start)
        .unwrap();
    write_copy(1, &table, 5);
    let report = check_metadata(store.device());
    assert_eq!(
        report.findings,
        [MetadataFinding::RemapCopiesDisagree {
            sequences: [0, 5],
            entries: [0, 1]
        }]
    );
    assert_eq!(
        report.remap_copies[1].entries,
        [RemapEntry {
            bad_block: layout.data_start + 2,
            spare_block: layout.spare_start,
            state: RemapState::Pending
        }]
    );
    // A bad block in the metadata area.
    let mut outside = RemapTable::new(SPARE_BLOCKS as usize);
    outside.begin(1, layout.spare_start).unwrap();
    write_copy(1, &outside, 6);
    let report = check_metadata(store.device());
    assert_eq!(
        report.findings,
        [MetadataFinding::RemapCopyInvalid {
            copy_index: 1,
            defect: RemapCopyDefect::OutsideData {
                bad_block: 1,
                data_start: layout.data_start,
                device_blocks: DEVICE_BLOCKS
            },
            other_valid_sequence: Some(0),
        }]
    );
}

#[test]
fn corrupt_current_bitmap_slot_is_found_without_opening() {
    let (store, _) = store_with_records();
    let layout = *store.layout();
    let slot = store.verify().metadata.slots[0].clone();
    assert_eq!(slot.slot, 1);
    // A byte inside the slot's content.
    let at = layout.slot_start[1] * BLOCK_BYTES + 20;
    flip(store.device(), at, 0x10);
    let content = read_bytes(
        store.device(),
        layout.slot_start[1] * BLOCK_BYTES,
        slot.len_bytes as usize,
    );
    let device = store.into_device();
    let report = check_metadata(&device);
    assert_eq!(
        report.findings,
        [MetadataFinding::SlotDamaged {
            slot: 1,
            sequence: 2,
            defect: SlotDefect::Checksum {
                expected: slot.expected_checksum,
                actual: xxh3(&content)
            }
        }]
    );
    assert_eq!(report.slots[0].records, None);
    // open refuses the store; the raw check is what says why.
    assert!(matches!(
        ExtentStore::open(device, config()),
        Err(StoreError::BitmapSlotCorrupt {
            slot: 1,
            sequence: 2,
            ..
        })
    ));
}

#[test]
fn superblock_copies_on_different_commits_are_reported_and_both_slots_checked() {
    let (mut store, records) = store_with_records();
    let old_copy_1 = read_bytes(store.device(), BLOCK_BYTES, BLOCK_BYTES as usize);
    store.free(records[0].0).unwrap();
    store.commit().unwrap(); // sequence 3, slot 0
                             // As if commit 3 were cut short after copy 0.
    store.device().write_at(BLOCK_BYTES, &old_copy_1).unwrap();
    let report = check_metadata(store.device());
    assert_eq!(
        report.findings,
        [MetadataFinding::SuperblocksDisagree { sequences: [3, 2] }]
    );
    let slots: Vec<(u64, u64, Option<u64>)> = report
        .slots
        .iter()
        .map(|s| (s.slot, s.sequence, s.records))
        .collect();
    assert_eq!(slots, [(0, 3, Some(2)), (1, 2, Some(3))]);
}

#[test]
fn pending_frees_and_uncommitted_puts_are_consistent() {
    let (mut store, records) = store_with_records();
    store.free(records[1].0).unwrap();
    let payload = pattern(700, 11);
    store.put(&payload, &meta(payload.len())).unwrap();
    let report = store.verify();
    assert!(report.consistency.is_empty(), "{:?}", report.consistency);
    assert_eq!(report.records_checked, 3);
    assert!(report.is_clean(), "{report:?}");
    // The Display of a consistency defect names the numbers.
    let text = ConsistencyDefect::SpareCountMismatch {
        spares_left: 3,
        remap_entries: 0,
        spare_blocks: 4,
    }
    .to_string();
    assert!(text.contains('3') && text.contains("4 blocks"), "{text}");
}

#[test]
fn remaps_show_in_the_remap_table() {
    let device =
        FaultyDevice::new(MemDevice::new(DEVICE_BLOCKS * BLOCK_BYTES, BLOCK_BYTES).unwrap());
    let mut store = ExtentStore::create(&device, config()).unwrap();
    let layout = *store.layout();
    let bad = [layout.data_start + 1, layout.data_start + 3];
    for block in bad {
        device.inject(Fault::WriteError { block }).unwrap();
    }
    let payload = pattern(4 * BLOCK_BYTES as usize - HEADER_LEN_BYTES, 13);
    let extent = store.put(&payload, &meta(payload.len())).unwrap();
    store.commit().unwrap();
    let report = store.inspect();
    assert_eq!(
        report.remap_entries,
        [
            RemapEntry {
                bad_block: bad[0],
                spare_block: layout.spare_start,
                state: RemapState::Active
            },
            RemapEntry {
                bad_block: bad[1],
                spare_block: layout.spare_start + 1,
                state: RemapState::Active
            }
        ]
    );
    assert_eq!(
        (
            report.stats.remaps,
            report.stats.spares_left,
            report.stats.bad_blocks,
            report.stats.write_errors
        ),
        (2, SPARE_BLOCKS - 2, 2, 2)
    );
    // create wrote sequences 0 and 1; each remap writes both copies.
    assert_eq!(report.remap_sequence, 5);
    let verify = store.verify();
    assert!(verify.is_clean(), "{verify:?}");
    assert_eq!(store.get(extent).unwrap().payload, payload);
    // On disk both copies hold the newest entry PENDING (recovery activates
    // it); the first was ACTIVE in memory when the second remap wrote them.
    for copy in &verify.metadata.remap_copies {
        let states: Vec<(u64, RemapState)> = copy
            .entries
            .iter()
            .map(|e| (e.bad_block, e.state))
            .collect();
        assert_eq!(
            states,
            [(bad[0], RemapState::Active), (bad[1], RemapState::Pending)],
            "copy {copy:?}"
        );
    }
    let sequences: Vec<Option<u64>> = verify
        .metadata
        .remap_copies
        .iter()
        .map(|c| c.sequence)
        .collect();
    assert_eq!(sequences, [Some(4), Some(5)]);
    // After a reopen the entries are ACTIVE and inspect shows the same table.
    drop(store);
    let reopened = ExtentStore::open(&device, config()).unwrap();
    assert_eq!(reopened.inspect().remap_entries, report.remap_entries);
}

// ---------------------------------------------------------------------------
// Store files
// ---------------------------------------------------------------------------

/// A temp file path removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> TempPath {
        TempPath(
            std::env::temp_dir().join(format!("strata-disk-inspect-{}-{name}", std::process::id())),
        )
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A committed store file of `blocks` blocks of `block_bytes` with two records.
fn store_file(name: &str, block_bytes: u64, blocks: u64) -> (TempPath, Vec<Extent>) {
    let path = TempPath::new(name);
    let device = FileDevice::create(
        &path.0,
        blocks * block_bytes,
        block_bytes,
        FileOptions::default(),
    )
    .unwrap();
    let mut store = ExtentStore::create(device, config()).unwrap();
    let mut extents = Vec::new();
    for step in [3u8, 9] {
        let payload = pattern(3000, step);
        extents.push(store.put(&payload, &meta(payload.len())).unwrap());
    }
    store.commit().unwrap();
    (path, extents)
}

#[test]
fn file_store_opens_at_the_block_size_its_superblock_names_and_is_not_written() {
    let (path, extents) = store_file("detect", 1024, 256);
    assert_eq!(detect_block_bytes(&path.0).unwrap(), 1024);
    let before = std::fs::read(&path.0).unwrap();
    let store = open_file_store_readonly(&path.0).unwrap();
    assert_eq!(store.layout().block_bytes, 1024);
    assert_eq!(store.extents().collect::<Vec<_>>(), extents);
    let report = store.verify();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(store.inspect().stats.records, 2);
    // The read-only device refuses writes before touching the file.
    let refused = store.device().write_at(0, &[0u8; 1024]).unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");
    store.device().check_invariants();
    drop(store);
    assert!(
        std::fs::read(&path.0).unwrap() == before,
        "inspection changed the file"
    );

    // Read-write opening finds the same store and can put.
    let mut store = open_file_store(&path.0, FileOptions::default(), config()).unwrap();
    let payload = pattern(100, 1);
    let extent = store.put(&payload, &meta(100)).unwrap();
    store.commit().unwrap();
    drop(store);
    let store = open_file_store_readonly(&path.0).unwrap();
    assert_eq!(store.get(extent).unwrap().payload, payload);
}

#[test]
fn block_size_is_found_from_copy_1_when_copy_0_is_destroyed() {
    let (path, _) = store_file("copy1", 2048, 128);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path.0)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 2048], 0).unwrap();
    drop(file);
    assert_eq!(detect_block_bytes(&path.0).unwrap(), 2048);
    let store = open_file_store_readonly(&path.0).unwrap();
    let report = store.verify();
    assert_eq!(report.metadata.findings.len(), 1, "{:?}", report.metadata);
    assert!(matches!(
        report.metadata.findings[0],
        MetadataFinding::SuperblockInvalid {
            copy_index: 0,
            defect: SuperblockDefect::BadMagic {
                found: [0, 0, 0, 0, 0, 0, 0, 0]
            },
            other_valid_sequence: Some(2)
        }
    ));
}

#[test]
fn unreadable_store_files_name_the_file_and_each_defect() {
    // Both copies zeroed: nothing tells the block size.
    let (path, _) = store_file("zeroed", 512, 128);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path.0)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 1024], 0).unwrap();
    drop(file);
    let error = detect_block_bytes(&path.0).unwrap_err();
    assert!(
        matches!(
            &error,
            OpenFileError::NoSuperblock {
                len_bytes: 65536,
                copy0: SuperblockDefect::BadMagic {
                    found: [0, 0, 0, 0, 0, 0, 0, 0]
                },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with(&path.0.display().to_string()),
        "{error}"
    );

    // Both copies damaged but copy 0's magic intact: open reports both.
    let (path, _) = store_file("both", 512, 128);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path.0)
        .unwrap();
    for copy in 0..2u64 {
        let at = copy * 512 + SB_OFFSET_SEQUENCE as u64;
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xee], at).unwrap();
    }
    drop(file);
    assert_eq!(detect_block_bytes(&path.0).unwrap(), 512);
    let error = open_file_store_readonly(&path.0).unwrap_err();
    match &error {
        OpenFileError::Store {
            source: StoreError::NoValidSuperblock { defects },
            ..
        } => assert!(
            defects
                .iter()
                .all(|d| matches!(d, SuperblockDefect::Checksum { .. })),
            "{defects:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("copy 0: checksum mismatch") && text.contains("copy 1: checksum mismatch"),
        "{text}"
    );
    // The device still opens, so the raw check can say the same.
    let device = ReadOnlyFile::open_store_file(&path.0).unwrap();
    assert_eq!(check_metadata(&device).findings.len(), 3);

    // Not a store at all, and too short.
    let short = TempPath::new("short");
    std::fs::write(&short.0, [0u8; 100]).unwrap();
    assert!(matches!(
        detect_block_bytes(&short.0),
        Err(OpenFileError::TooShort {
            len_bytes: 100,
            needed_bytes: 168,
            ..
        })
    ));
    let missing = TempPath::new("missing");
    assert!(matches!(
        detect_block_bytes(&missing.0),
        Err(OpenFileError::Io { op: "open", .. })
    ));
}
