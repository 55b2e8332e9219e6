//! Every dtype through every backend, with ragged edge chunks: what is
//! written chunk by chunk reads back byte for byte.

mod common;

use common::{assert_chunks_equal, naive_chunk, random_array_bytes, write_all_chunks, TempDir};
use strata_array::chunk::{read_chunk_vec, write_chunk_from, ChunkSink, ChunkSource};
use strata_array::dtype::{DataType, ALL_DATA_TYPES};
use strata_array::mem::MemArray;
use strata_array::meta::ArrayMeta;
use strata_array::npy::{NpyArray, NpyReadMode};
use strata_array::zarr::{zarr_info, ZarrArray, ZarrCodecs, ZarrCompression};

/// (shape, chunk shape): ragged in every dimension, plus whole-row chunks
/// (contiguous in NPY) and a 1-D case.
fn geometries() -> Vec<(Vec<u64>, Vec<u64>)> {
    vec![
        (vec![7, 10], vec![3, 4]),
        (vec![5, 3, 6], vec![2, 3, 4]),
        (vec![11], vec![4]),
        (vec![6, 5], vec![4, 5]),
    ]
}

#[test]
fn mem_round_trips_every_dtype() {
    for (case, (shape, chunk_shape)) in geometries().into_iter().enumerate() {
        for dtype in ALL_DATA_TYPES {
            let seed = 1000 + case as u64;
            let meta = ArrayMeta::new(shape.clone(), chunk_shape.clone(), dtype).unwrap();
            let whole = random_array_bytes(&meta, seed);
            let array = MemArray::zeroed("mem", meta);
            assert!(!array.is_complete());
            write_all_chunks(&array, &whole);
            assert!(array.is_complete());
            array.check_invariants();
            assert_eq!(array.to_bytes(), whole, "seed {seed} {dtype}");
            assert_chunks_equal(&array, &whole, &format!("mem seed {seed} {dtype}"));
        }
    }
}

#[test]
fn npy_round_trips_every_dtype_in_both_modes() {
    let dir = TempDir::new("npy-roundtrip");
    for (case, (shape, chunk_shape)) in geometries().into_iter().enumerate() {
        for dtype in ALL_DATA_TYPES {
            let seed = 2000 + case as u64;
            let meta = ArrayMeta::new(shape.clone(), chunk_shape.clone(), dtype).unwrap();
            let path = dir.path().join(format!("case{case}-{dtype}.npy"));
            let writer = match NpyArray::create(&path, meta.clone()) {
                Ok(writer) => writer,
                Err(error) => {
                    // NPY cannot name bf16; every other type must work.
                    assert_eq!(dtype, DataType::BF16, "{error}");
                    continue;
                }
            };
            let whole = random_array_bytes(&meta, seed);
            assert!(!path.exists(), "final path exists before finish");
            assert!(writer.partial_path().exists());
            write_all_chunks(&writer, &whole);
            assert!(path.exists() && !writer.partial_path().exists());
            let file = std::fs::read(&path).unwrap();
            assert_eq!(
                &file[file.len() - whole.len()..],
                &whole[..],
                "seed {seed} {dtype}"
            );
            for mode in [NpyReadMode::Mapped, NpyReadMode::Positional] {
                // Read with a different chunk shape than written: NPY chunks
                // are only a view.
                let read_chunks: Vec<u64> = shape.iter().map(|&d| d.div_ceil(2).max(1)).collect();
                for chunks in [chunk_shape.clone(), read_chunks] {
                    let array = NpyArray::open(&path, chunks.clone(), mode).unwrap();
                    assert_eq!(array.meta().shape(), &shape[..]);
                    assert_eq!(array.meta().dtype(), dtype);
                    assert_chunks_equal(
                        &array,
                        &whole,
                        &format!("npy {mode:?} seed {seed} {dtype} chunks {chunks:?}"),
                    );
                }
            }
        }
    }
}

fn zarr_codec_cases() -> Vec<(&'static str, ZarrCodecs)> {
    vec![
        ("plain", ZarrCodecs::default()),
        (
            "zstd",
            ZarrCodecs {
                compression: ZarrCompression::Zstd { level: 3 },
                ..ZarrCodecs::default()
            },
        ),
        (
            "crc32c",
            ZarrCodecs {
                crc32c: true,
                ..ZarrCodecs::default()
            },
        ),
        (
            "zstd-crc32c-sharded",
            ZarrCodecs {
                compression: ZarrCompression::Zstd { level: 1 },
                crc32c: true,
                shard_shape: Some(vec![]),
            },
        ),
        (
            "sharded",
            ZarrCodecs {
                shard_shape: Some(vec![]),
                ..ZarrCodecs::default()
            },
        ),
    ]
}

#[test]
fn zarr_round_trips_every_dtype_and_codec() {
    let dir = TempDir::new("zarr-roundtrip");
    // zarrs syncs every chunk file it writes, so the matrix is kept small:
    // every dtype and codec on the first geometry, every geometry and codec
    // for f32 and bf16.
    for (case, (shape, chunk_shape)) in geometries().into_iter().enumerate() {
        for (codec_name, mut codecs) in zarr_codec_cases() {
            if codecs.shard_shape.is_some() {
                // Two chunks per shard along each dimension: shards are
                // ragged at the edge too.
                codecs.shard_shape = Some(chunk_shape.iter().map(|&c| 2 * c).collect());
            }
            let dtypes: &[DataType] = if case == 0 {
                &ALL_DATA_TYPES
            } else {
                &[DataType::F32, DataType::BF16]
            };
            for &dtype in dtypes {
                let seed = 3000 + case as u64;
                let context = format!("zarr {codec_name} seed {seed} {dtype} shape {shape:?}");
                let meta = ArrayMeta::new(shape.clone(), chunk_shape.clone(), dtype).unwrap();
                let path = dir
                    .path()
                    .join(format!("case{case}-{codec_name}-{dtype}.zarr"));
                let writer = ZarrArray::create(&path, meta.clone(), &codecs).unwrap();
                let whole = random_array_bytes(&meta, seed);
                write_all_chunks(&writer, &whole);
                assert_eq!(writer.pending_shard_count(), 0, "{context}");
                let array = ZarrArray::open(&path).unwrap();
                assert_eq!(array.meta(), &meta, "{context}");
                assert_chunks_equal(&array, &whole, &context);
                let info = array.info().unwrap();
                assert_eq!(info.shape, shape, "{context}");
                assert_eq!(info.chunk_shape, chunk_shape, "{context}");
                assert_eq!(info.shard_shape, codecs.shard_shape, "{context}");
                assert_eq!(info.dtype, dtype, "{context}");
                assert_eq!(info.complete, Some(true), "{context}");
                assert!(info.bytes_on_disk > 0, "{context}");
                let names: Vec<&str> = info
                    .codecs
                    .iter()
                    .map(|c| c.split('(').next().unwrap())
                    .collect();
                let expected: &[&str] = match codec_name {
                    "plain" => &["bytes"],
                    "zstd" => &["bytes", "zstd"],
                    "crc32c" => &["bytes", "crc32c"],
                    _ => &["sharding_indexed"],
                };
                assert_eq!(names, expected, "{context}: {:?}", info.codecs);
            }
        }
    }
}

#[test]
fn zarr_zstd_compresses_repetitive_data() {
    let dir = TempDir::new("zarr-zstd-size");
    let meta = ArrayMeta::new(vec![64, 64], vec![32, 32], DataType::F64).unwrap();
    let values: Vec<f64> = (0..32 * 32).map(|i| f64::from(i % 7)).collect();
    let mut sizes = Vec::new();
    for compression in [ZarrCompression::None, ZarrCompression::Zstd { level: 3 }] {
        let path = dir.path().join(format!("{compression:?}.zarr"));
        let codecs = ZarrCodecs {
            compression,
            ..ZarrCodecs::default()
        };
        let writer = ZarrArray::create(&path, meta.clone(), &codecs).unwrap();
        for grid_index in meta.grid_indices() {
            write_chunk_from(&writer, &grid_index, &mut Vec::new(), &values).unwrap();
        }
        writer.finish().unwrap();
        sizes.push(zarr_info(&path).unwrap().bytes_on_disk);
        let array = ZarrArray::open(&path).unwrap();
        assert_eq!(read_chunk_vec::<f64>(&array, &[1, 1]).unwrap(), values);
    }
    // Raw: 4 chunks of 8 KiB plus zarr.json.
    assert!(sizes[0] >= 4 * 32 * 32 * 8, "raw {sizes:?}");
    assert!(sizes[1] * 10 < sizes[0], "zstd did not compress: {sizes:?}");
}

#[test]
fn zarr_sharded_writer_holds_only_unfilled_shards_and_finish_stores_partial_ones() {
    let dir = TempDir::new("zarr-shards");
    let meta = ArrayMeta::new(vec![8, 8], vec![2, 2], DataType::I32).unwrap();
    let codecs = ZarrCodecs {
        shard_shape: Some(vec![4, 8]),
        ..ZarrCodecs::default()
    };
    let path = dir.path().join("a.zarr");
    let writer = ZarrArray::create(&path, meta.clone(), &codecs).unwrap();
    let whole = random_array_bytes(&meta, 77);
    // Fill shard [0, 0] (grid rows 0..2) completely: it is stored at once.
    for row in 0..2 {
        for col in 0..4 {
            writer
                .write_chunk(&[row, col], &naive_chunk(&meta, &whole, &[row, col]))
                .unwrap();
        }
    }
    assert_eq!(writer.pending_shard_count(), 0);
    // Rewrite one inner chunk of the stored shard (read-modify-write).
    let replacement = vec![0x5Au8; meta.chunk_len_bytes_at(&[1, 2])];
    writer.write_chunk(&[1, 2], &replacement).unwrap();
    // Half of shard [1, 0]: pending until finish.
    writer
        .write_chunk(&[2, 0], &naive_chunk(&meta, &whole, &[2, 0]))
        .unwrap();
    assert_eq!(writer.pending_shard_count(), 1);
    writer.finish().unwrap();
    assert_eq!(writer.pending_shard_count(), 0);

    let array = ZarrArray::open(&path).unwrap();
    for grid_index in meta.grid_indices() {
        let mut got = vec![0u8; meta.chunk_len_bytes_at(&grid_index)];
        array.read_chunk(&grid_index, &mut got).unwrap();
        let expected = if grid_index == [1, 2] {
            replacement.clone()
        } else if grid_index[0] < 2 || grid_index == [2, 0] {
            naive_chunk(&meta, &whole, &grid_index)
        } else {
            vec![0; got.len()] // never written: the fill value
        };
        assert_eq!(got, expected, "chunk {grid_index:?}");
    }
}

#[test]
fn read_chunk_as_converts_every_dtype() {
    // 0, 1, 2, 3, 7 and 100 are exact in every dtype.
    for dtype in ALL_DATA_TYPES {
        let meta = ArrayMeta::new(vec![2, 3], vec![2, 2], dtype).unwrap();
        let array = MemArray::zeroed("conv", meta.clone());
        let mut scratch = Vec::new();
        write_chunk_from(&array, &[0, 0], &mut scratch, &[0.0f64, 1.0, 3.0, 100.0]).unwrap();
        write_chunk_from(&array, &[0, 1], &mut scratch, &[2.0f32, 7.0]).unwrap();
        array.finish().unwrap();
        let whole_f64: Vec<f64> = read_chunk_vec::<f64>(&array, &[0, 0])
            .unwrap()
            .into_iter()
            .chain(read_chunk_vec::<f64>(&array, &[0, 1]).unwrap())
            .collect();
        assert_eq!(whole_f64, vec![0.0, 1.0, 3.0, 100.0, 2.0, 7.0], "{dtype}");
        let first_f32 = read_chunk_vec::<f32>(&array, &[0, 0]).unwrap();
        assert_eq!(first_f32, vec![0.0, 1.0, 3.0, 100.0], "{dtype}");
    }
}

#[test]
fn raw_chunks_written_directly_read_back_through_zarrs_itself() {
    // Uncompressed, unchecked arrays bypass zarrs on both paths; zarrs must
    // still read every chunk (full and ragged) as written.
    let dir = TempDir::new("raw-zarrs");
    for (case, (shape, chunk_shape)) in geometries().into_iter().enumerate() {
        for dtype in ALL_DATA_TYPES {
            let seed = 3000 + case as u64;
            let meta = ArrayMeta::new(shape.clone(), chunk_shape.clone(), dtype).unwrap();
            let whole = random_array_bytes(&meta, seed);
            let path = dir.path().join(format!("{case}-{dtype}.zarr"));
            let writer = ZarrArray::create(&path, meta.clone(), &ZarrCodecs::default()).unwrap();
            write_all_chunks(&writer, &whole); // and finishes
            let store =
                std::sync::Arc::new(zarrs::filesystem::FilesystemStore::new(&path).unwrap());
            let array = zarrs::array::Array::open(store, "/").unwrap();
            for grid_index in meta.grid_indices() {
                let bytes = array.retrieve_chunk(&grid_index).unwrap().into_owned();
                let stored = bytes.into_fixed().unwrap();
                let want = naive_chunk(&meta, &whole, &grid_index);
                let ragged = meta.chunk_shape_at(&grid_index);
                // zarrs hands back the full stored chunk; compare its
                // in-array part, row by row in C order.
                let size = dtype.size_bytes();
                let mut got = Vec::with_capacity(want.len());
                strata_array::meta::for_each_run(
                    meta.chunk_shape(),
                    &strata_array::meta::ChunkRegion {
                        start: vec![0; meta.rank()],
                        shape: ragged,
                    },
                    |outer, _inner, len| {
                        let (outer, len) = (outer as usize * size, len as usize * size);
                        got.extend_from_slice(&stored[outer..outer + len]);
                    },
                );
                assert_eq!(got, want, "case {case} {dtype} chunk {grid_index:?}");
            }
            assert_chunks_equal(
                &ZarrArray::open(&path).unwrap(),
                &whole,
                &format!("raw case {case} {dtype}"),
            );
        }
    }
}

#[test]
fn content_digest_is_xxh3_of_the_c_order_bytes_whatever_the_chunking_and_codecs() {
    let dir = TempDir::new("digest");
    for (case, (shape, chunk_shape)) in geometries().into_iter().enumerate() {
        for dtype in [DataType::F32, DataType::U8, DataType::F16, DataType::I64] {
            let seed = 4000 + case as u64;
            let meta = ArrayMeta::new(shape.clone(), chunk_shape.clone(), dtype).unwrap();
            let whole = random_array_bytes(&meta, seed);
            let want = xxhash_rust::xxh3::xxh3_64(&whole);
            let mem = MemArray::zeroed("mem", meta.clone());
            write_all_chunks(&mem, &whole);
            assert_eq!(strata_array::digest::content_xxh3(&mem).unwrap(), want);
            let codecs = ZarrCodecs {
                compression: ZarrCompression::Zstd { level: 1 },
                crc32c: true,
                shard_shape: None,
            };
            let path = dir.path().join(format!("{case}-{dtype}.zarr"));
            write_all_chunks(
                &ZarrArray::create(&path, meta.clone(), &codecs).unwrap(),
                &whole,
            );
            let array = ZarrArray::open(&path).unwrap();
            assert_eq!(
                strata_array::digest::content_xxh3(&array).unwrap(),
                want,
                "case {case} {dtype}"
            );
            // One flipped element changes it.
            let mut other = whole.clone();
            other[whole.len() / 2] ^= 1;
            let changed = MemArray::zeroed("changed", meta.clone());
            write_all_chunks(&changed, &other);
            assert_ne!(strata_array::digest::content_xxh3(&changed).unwrap(), want);
        }
    }
}
