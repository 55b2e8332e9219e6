//! [`StoreSpill`] and [`SpillArray`]: round trips, exact errors (never
//! written, read before finish, disk full), bit flips, temporary files.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_array::chunk::{ChunkSink, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::error::ArrayError;
use strata_array::meta::ArrayMeta;
use strata_disk::device::{BlockDevice, Fault, FaultyDevice, MemDevice};
use strata_ooc::bufmgr::SpillTarget;
use strata_ooc::error::OocError;
use strata_ooc::policy::ChunkKey;
use strata_ooc::spill::StoreSpill;
use strata_ooc::spill_array::SpillArray;

fn mem_device(len_bytes: u64) -> MemDevice {
    MemDevice::new(len_bytes, 4096).expect("device")
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-ooc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("test directory");
    dir
}

/// The whole array's values and its chunks' bytes (little-endian `T`).
fn chunk_bytes<T: Copy>(
    meta: &ArrayMeta,
    values: &[T],
    grid: &[u64],
    to_le: impl Fn(T) -> Vec<u8>,
) -> Vec<u8> {
    let region = meta.chunk_region(grid);
    let shape = meta.shape();
    let mut out = Vec::new();
    // Two-dimensional arrays only: rows of the chunk, C order.
    for row in region.start[0]..region.start[0] + region.shape[0] {
        for col in region.start[1]..region.start[1] + region.shape[1] {
            out.extend(to_le(values[(row * shape[1] + col) as usize]));
        }
    }
    out
}

fn round_trip<T: Copy>(
    dtype: DataType,
    seed: u64,
    value: impl Fn(&mut SmallRng) -> T,
    to_le: impl Fn(T) -> Vec<u8> + Copy,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    // 3 x 4 chunk grid, ragged in both dimensions.
    let meta = ArrayMeta::new(vec![13, 29], vec![5, 8], dtype).expect("meta");
    let values: Vec<T> = (0..13 * 29).map(|_| value(&mut rng)).collect();
    let array =
        SpillArray::create("t", meta.clone(), mem_device(4 << 20), None, 1500).expect("array");
    let mut grids: Vec<Vec<u64>> = meta.grid_indices().collect();
    // Some chunks first get garbage, then their real bytes: a write again
    // replaces (and frees) the old record.
    for grid in grids.iter().step_by(3) {
        let garbage = vec![0xAB; meta.chunk_len_bytes_at(grid)];
        array.write_chunk(grid, &garbage).expect("write");
    }
    for i in (1..grids.len()).rev() {
        grids.swap(i, rng.gen_range(0..=i));
    }
    for grid in &grids {
        let bytes = chunk_bytes(&meta, &values, grid, to_le);
        array
            .write_chunk(grid, &bytes)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        array.check_invariants();
    }
    array.finish().expect("finish");
    array.check_invariants();
    let stats = array.stats();
    assert_eq!(
        stats.chunks_written,
        meta.chunk_count(),
        "seed {seed}: {stats:?}"
    );
    assert_eq!(stats.in_flight_bytes, 0, "seed {seed}");
    // The bound: 1500 bytes in flight, or one chunk when a chunk is larger.
    let bound = 1500u64.max(meta.full_chunk_len_bytes() as u64);
    assert!(
        stats.peak_in_flight_bytes <= bound,
        "seed {seed}: {stats:?}"
    );
    for grid in meta.grid_indices() {
        let expected = chunk_bytes(&meta, &values, &grid, to_le);
        let mut out = vec![0u8; expected.len()];
        array
            .read_chunk(&grid, &mut out)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(out, expected, "seed {seed}: chunk {grid:?}");
    }
    // A wrong-length buffer is refused.
    let mut short = vec![0u8; 3];
    assert!(matches!(
        array.read_chunk(&[0, 0], &mut short),
        Err(ArrayError::BufferLength { .. })
    ));
}

#[test]
fn spill_array_round_trips_f32_and_f64_with_ragged_edges() {
    for seed in 0..3 {
        round_trip(
            DataType::F32,
            seed,
            |r| r.gen_range(-1e3f32..1e3),
            |v| v.to_le_bytes().to_vec(),
        );
        // Smooth values compress: both codec paths are read back.
        round_trip(
            DataType::F64,
            seed,
            |r| (r.gen_range(0..4) as f64) * 0.5,
            |v| v.to_le_bytes().to_vec(),
        );
    }
}

#[test]
fn spill_array_refuses_a_chunk_never_written() {
    let meta = ArrayMeta::new(vec![4, 4], vec![2, 2], DataType::F32).expect("meta");
    let array = SpillArray::create("partial", meta.clone(), mem_device(1 << 20), None, 1 << 20)
        .expect("array");
    for grid in meta.grid_indices().filter(|g| g != &[1, 0]) {
        array.write_chunk(&grid, &[1u8; 16]).expect("write");
    }
    array.finish().expect("finish");
    let mut out = [7u8; 16];
    match array.read_chunk(&[1, 0], &mut out) {
        Err(ArrayError::NotFound { array, detail }) => {
            assert_eq!(array, "partial");
            assert!(
                detail.contains("[1, 0]") && detail.contains("never written"),
                "{detail}"
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(out, [7u8; 16], "a refused read leaves the buffer alone");
    array
        .read_chunk(&[1, 1], &mut out)
        .expect("a written chunk");
    assert_eq!(out, [1u8; 16]);
}

#[test]
fn spill_array_refuses_reads_before_finish_and_writes_after() {
    let meta = ArrayMeta::new(vec![2, 2], vec![2, 2], DataType::F64).expect("meta");
    let array =
        SpillArray::create("early", meta, mem_device(1 << 20), None, 1 << 20).expect("array");
    array.write_chunk(&[0, 0], &[2u8; 32]).expect("write");
    let mut out = [0u8; 32];
    assert!(
        matches!(array.read_chunk(&[0, 0], &mut out), Err(ArrayError::Incomplete { ref array }) if array == "early")
    );
    assert!(!array.is_complete());
    array.finish().expect("finish");
    assert!(array.is_complete());
    array.read_chunk(&[0, 0], &mut out).expect("read");
    assert_eq!(out, [2u8; 32]);
    assert!(matches!(
        array.write_chunk(&[0, 0], &[0u8; 32]),
        Err(ArrayError::Finished { .. })
    ));
    assert!(matches!(array.finish(), Err(ArrayError::Finished { .. })));
    // Out-of-grid and wrong-length writes are refused before anything is queued.
    let meta = ArrayMeta::new(vec![2, 2], vec![2, 2], DataType::F64).expect("meta");
    let array = SpillArray::create("bad", meta, mem_device(1 << 20), None, 1 << 20).expect("array");
    assert!(matches!(
        array.write_chunk(&[1, 0], &[0u8; 32]),
        Err(ArrayError::ChunkOutOfGrid { .. })
    ));
    assert!(matches!(
        array.write_chunk(&[0, 0], &[0u8; 31]),
        Err(ArrayError::BufferLength { .. })
    ));
    assert_eq!(array.stats().chunks_submitted, 0);
}

#[test]
fn spill_array_reports_a_full_disk_tier_with_the_figures() {
    // Incompressible 8 KiB chunks take 3 blocks each (header + payload);
    // the cap of 4 blocks holds one.
    let cap_bytes = 4 * 4096;
    let meta = ArrayMeta::new(vec![4, 8192], vec![1, 8192], DataType::U8).expect("meta");
    let array = SpillArray::create("full", meta, mem_device(1 << 20), Some(cap_bytes), 1 << 20)
        .expect("array");
    let mut rng = SmallRng::seed_from_u64(3);
    let mut first_error = None;
    for row in 0..4u64 {
        let bytes: Vec<u8> = (0..8192).map(|_| rng.gen()).collect();
        if let Err(error) = array.write_chunk(&[row, 0], &bytes) {
            first_error = Some(error);
            break;
        }
    }
    let error = match first_error {
        Some(error) => error,
        None => array.finish().expect_err("the second chunk does not fit"),
    };
    match &error {
        ArrayError::Io {
            array,
            chunk,
            source,
            ..
        } => {
            assert_eq!(array, "full");
            assert_eq!(
                chunk.as_deref(),
                Some(&[1u64, 0][..]),
                "the second chunk failed"
            );
            assert_eq!(source.kind(), io::ErrorKind::StorageFull);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains(
            "disk tier full: asked for 12288 bytes, 4096 bytes left of its 16384-byte cap"
        ),
        "{text}"
    );
    // finish keeps refusing, and the array stays unreadable.
    assert!(array.finish().is_err());
    assert!(!array.is_complete());
}

#[test]
fn store_spill_full_names_bytes_asked_and_left_and_reclaims_released_records() {
    let spill = StoreSpill::create(mem_device(1 << 20), Some(6 * 4096)).expect("store");
    let mut rng = SmallRng::seed_from_u64(5);
    let bytes: Vec<u8> = (0..8192).map(|_| rng.gen()).collect();
    let a = spill.spill(ChunkKey(1), &bytes).expect("first");
    let _b = spill.spill(ChunkKey(2), &bytes).expect("second");
    match spill.spill(ChunkKey(3), &bytes) {
        Err(error @ OocError::SpillFull { .. }) => {
            let OocError::SpillFull {
                key,
                asked_bytes,
                left_bytes,
                cap_bytes,
            } = error
            else {
                unreachable!()
            };
            assert_eq!(
                (key, asked_bytes, left_bytes, cap_bytes),
                (ChunkKey(3), 12288, 0, 24576)
            );
            assert!(
                error
                    .to_string()
                    .contains("asked for 12288 bytes, 0 bytes left"),
                "{error}"
            );
        }
        other => panic!("expected SpillFull, got {other:?}"),
    }
    spill.check_invariants();
    // Releasing a record makes room, once the store commits (on demand).
    spill.release(ChunkKey(1), a).expect("release");
    let c = spill
        .spill(ChunkKey(3), &bytes)
        .expect("room after the release");
    let stats = spill.stats();
    assert_eq!(
        (
            stats.reclaim_commits,
            stats.records_live,
            stats.spills,
            stats.releases
        ),
        (1, 2, 3, 1)
    );
    let mut out = vec![0u8; bytes.len()];
    spill.reload(ChunkKey(3), c, &mut out).expect("reload");
    assert_eq!(out, bytes);
    // A released record cannot be reloaded or released again.
    assert!(matches!(
        spill.reload(ChunkKey(1), a, &mut out),
        Err(OocError::Spill { .. })
    ));
    assert!(matches!(
        spill.release(ChunkKey(1), a),
        Err(OocError::Spill { .. })
    ));
    // A wrong-length buffer is refused.
    let mut short = vec![0u8; 10];
    assert!(matches!(
        spill.reload(ChunkKey(3), c, &mut short),
        Err(OocError::Spill { .. })
    ));
    spill.check_invariants();
}

#[test]
fn store_spill_bit_flip_names_the_chunk_the_extent_and_the_checksums() {
    let device = Arc::new(FaultyDevice::new(mem_device(1 << 20)));
    let spill = StoreSpill::create(Arc::clone(&device), None).expect("store");
    // Incompressible: stored raw over 5 blocks, the last one part payload.
    let mut rng = SmallRng::seed_from_u64(42);
    let bytes: Vec<u8> = (0..20_000).map(|_| rng.gen()).collect();
    let handle = spill.spill(ChunkKey(42), &bytes).expect("spill");
    assert_eq!(handle.len, 5, "{handle:?}");
    // Byte 100 of the last block is payload.
    device
        .inject(Fault::BitFlip {
            block: handle.start + handle.len - 1,
            bit: 800,
        })
        .expect("inject");
    let mut out = vec![0u8; bytes.len()];
    match spill.reload(ChunkKey(42), handle, &mut out) {
        Err(error @ OocError::Spill { .. }) => {
            let text = error.to_string();
            let blocks = format!("blocks {}..{}", handle.start, handle.start + handle.len);
            for needle in [
                "chunk 42",
                &blocks[..],
                "checksum mismatch",
                "expected",
                "found",
            ] {
                assert!(text.contains(needle), "{needle:?} missing from {text}");
            }
        }
        other => panic!("expected a spill error, got {other:?}"),
    }
    assert_eq!(spill.stats().checksum_failures, 1);
    spill
        .reload(ChunkKey(42), handle, &mut out)
        .expect("the flip was on one read");
    assert_eq!(out, bytes);
}

#[test]
fn spill_array_bit_flip_is_a_corrupt_chunk() {
    let device = Arc::new(FaultyDevice::new(mem_device(1 << 20)));
    let meta = ArrayMeta::new(vec![1, 4096], vec![1, 4096], DataType::F32).expect("meta");
    let array =
        SpillArray::create("flip", meta, Arc::clone(&device), None, 1 << 20).expect("array");
    let mut rng = SmallRng::seed_from_u64(9);
    let bytes: Vec<u8> = (0..16384).map(|_| rng.gen()).collect();
    array.write_chunk(&[0, 0], &bytes).expect("write");
    array.finish().expect("finish");
    // Arm a flip on every block: only the record's blocks are read, so
    // the read sees flipped bits in its record and nothing else.
    for block in 0..device.inner().len_blocks() {
        device
            // Byte 200: past the header (whose own checksum would catch a
            // flip too), inside the payload.
            .inject(Fault::BitFlip { block, bit: 1600 })
            .expect("inject");
    }
    let mut out = vec![0u8; 16384];
    match array.read_chunk(&[0, 0], &mut out) {
        Err(ArrayError::CorruptChunk {
            array,
            chunk,
            detail,
        }) => {
            assert_eq!((array.as_str(), chunk), ("flip", vec![0, 0]));
            assert!(detail.contains("checksum mismatch"), "{detail}");
        }
        other => panic!("expected CorruptChunk, got {other:?}"),
    }
    device.clear_all();
    array
        .read_chunk(&[0, 0], &mut out)
        .expect("clean read once the faults are gone");
    assert_eq!(out, bytes);
}

#[test]
fn temp_files_work_and_go_away() {
    let dir = test_dir("temp");
    let path = {
        let spill = StoreSpill::temp_file(&dir, 1 << 20).expect("temp store");
        let path = spill.temp_path().expect("a temp file").to_path_buf();
        assert!(
            path.exists() && path.starts_with(&dir),
            "{}",
            path.display()
        );
        let bytes = vec![9u8; 50_000];
        let handle = spill.spill(ChunkKey(1), &bytes).expect("spill");
        let mut out = vec![0u8; bytes.len()];
        spill.reload(ChunkKey(1), handle, &mut out).expect("reload");
        assert_eq!(out, bytes);
        spill.check_invariants();
        path
    };
    assert!(!path.exists(), "{} left behind", path.display());

    let meta = ArrayMeta::new(vec![10, 10], vec![4, 4], DataType::F32).expect("meta");
    let path = {
        let array =
            SpillArray::temp_file("tmp", meta.clone(), &dir, 1 << 20, 1 << 20).expect("temp array");
        let path = array.temp_path().expect("a temp file").to_path_buf();
        for grid in meta.grid_indices() {
            let len = meta.chunk_len_bytes_at(&grid);
            array
                .write_chunk(&grid, &vec![grid[0] as u8 * 10 + grid[1] as u8; len])
                .expect("write");
        }
        array.finish().expect("finish");
        for grid in meta.grid_indices() {
            let mut out = vec![0u8; meta.chunk_len_bytes_at(&grid)];
            array.read_chunk(&grid, &mut out).expect("read");
            assert!(
                out.iter().all(|&b| b == grid[0] as u8 * 10 + grid[1] as u8),
                "{grid:?}"
            );
        }
        array.check_invariants();
        path
    };
    assert!(!path.exists(), "{} left behind", path.display());
    // A directory that does not exist is a clear error naming it.
    let missing = dir.join("no-such-dir");
    let error = StoreSpill::temp_file(&missing, 1 << 20).expect_err("no directory");
    assert!(error.to_string().contains("no-such-dir"), "{error}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
