//! Bad input gives the exact error kind, naming the array, the chunk and
//! what was expected.

mod common;

use common::{random_array_bytes, write_all_chunks, TempDir};
use strata_array::chunk::{check_dtype, check_shape, read_chunk_as, ChunkSink, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::error::ArrayError;
use strata_array::mem::MemArray;
use strata_array::meta::{ArrayMeta, MetaError};
use strata_array::npy::{NpyArray, NpyReadMode};
use strata_array::zarr::{zarr_info, ZarrArray, ZarrCodecs, ZarrCompression};

fn meta_f32() -> ArrayMeta {
    ArrayMeta::new(vec![7, 10], vec![3, 4], DataType::F32).unwrap()
}

#[test]
fn missing_arrays_are_not_found_naming_the_path() {
    let dir = TempDir::new("missing");
    let missing = dir.path().join("nope.zarr");
    let error = ZarrArray::open(&missing).unwrap_err();
    assert!(
        matches!(&error, ArrayError::NotFound { detail, .. } if detail == "no such directory"),
        "{error}"
    );
    assert!(error.to_string().contains("nope.zarr"), "{error}");

    let empty = dir.path().join("empty.zarr");
    std::fs::create_dir(&empty).unwrap();
    let error = ZarrArray::open(&empty).unwrap_err();
    assert!(
        matches!(&error, ArrayError::NotFound { detail, .. } if detail.contains("zarr.json")),
        "{error}"
    );

    let v2 = dir.path().join("v2.zarr");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join(".zarray"), "{}").unwrap();
    let error = ZarrArray::open(&v2).unwrap_err();
    assert!(
        matches!(&error, ArrayError::NotFound { detail, .. } if detail.contains("Zarr v2")),
        "{error}"
    );

    let error =
        NpyArray::open(dir.path().join("nope.npy"), vec![1], NpyReadMode::Mapped).unwrap_err();
    assert!(
        matches!(&error, ArrayError::NotFound { array, .. } if array.ends_with("nope.npy")),
        "{error}"
    );

    let not_npy = dir.path().join("text.npy");
    std::fs::write(&not_npy, b"hello world, not numpy").unwrap();
    let error = NpyArray::open(&not_npy, vec![1], NpyReadMode::Positional).unwrap_err();
    assert!(matches!(error, ArrayError::NotFound { .. }), "{error}");
}

#[test]
fn wrong_buffer_lengths_and_indices_outside_the_grid_are_refused() {
    let dir = TempDir::new("buffers");
    let meta = meta_f32();
    let mem = MemArray::zeroed("m", meta.clone());
    let npy = NpyArray::create(dir.path().join("a.npy"), meta.clone()).unwrap();
    let zarr = ZarrArray::create(
        dir.path().join("a.zarr"),
        meta.clone(),
        &ZarrCodecs::default(),
    )
    .unwrap();
    let sinks: [&dyn ChunkSink; 3] = [&mem, &npy, &zarr];
    for sink in sinks {
        // Chunk [2, 2] is ragged: 1 x 2 elements of 4 bytes.
        let error = sink.write_chunk(&[2, 2], &[0u8; 3 * 4 * 4]).unwrap_err();
        match &error {
            ArrayError::BufferLength {
                chunk,
                chunk_shape,
                expected_bytes,
                found_bytes,
                ..
            } => {
                assert_eq!(
                    (chunk.as_slice(), chunk_shape.as_slice()),
                    (&[2u64, 2][..], &[1u64, 2][..])
                );
                assert_eq!((*expected_bytes, *found_bytes), (8, 48));
            }
            other => panic!("{}: {other}", sink.name()),
        }
        assert!(
            error
                .to_string()
                .contains("needs a buffer of 8 bytes, got 48"),
            "{error}"
        );
        let error = sink.write_chunk(&[3, 0], &[0u8; 48]).unwrap_err();
        assert!(
            matches!(&error, ArrayError::ChunkOutOfGrid { chunk, grid_shape, .. } if chunk == &[3, 0] && grid_shape == &[3, 3]),
            "{error}"
        );
        let error = sink.write_chunk(&[0], &[0u8; 48]).unwrap_err();
        assert!(
            matches!(error, ArrayError::ChunkOutOfGrid { .. }),
            "{error}"
        );
        sink.finish().unwrap();
        assert!(matches!(
            sink.finish().unwrap_err(),
            ArrayError::Finished { .. }
        ));
        assert!(matches!(
            sink.write_chunk(&[0, 0], &[0u8; 48]).unwrap_err(),
            ArrayError::Finished { .. }
        ));
    }
    let sources: Vec<Box<dyn ChunkSource>> = vec![
        Box::new(mem),
        Box::new(
            NpyArray::open(dir.path().join("a.npy"), vec![3, 4], NpyReadMode::Mapped).unwrap(),
        ),
        Box::new(ZarrArray::open(dir.path().join("a.zarr")).unwrap()),
    ];
    for source in &sources {
        let mut short = vec![0u8; 47];
        let error = source.read_chunk(&[0, 0], &mut short).unwrap_err();
        assert!(
            matches!(
                error,
                ArrayError::BufferLength {
                    expected_bytes: 48,
                    found_bytes: 47,
                    ..
                }
            ),
            "{}: {error}",
            source.name()
        );
        let error = source.read_chunk(&[0, 3], &mut [0u8; 48]).unwrap_err();
        assert!(
            matches!(error, ArrayError::ChunkOutOfGrid { .. }),
            "{error}"
        );
        let mut out = vec![1.0f64; 3];
        let error = read_chunk_as(source.as_ref(), &[0, 0], &mut Vec::new(), &mut out).unwrap_err();
        assert!(
            matches!(
                error,
                ArrayError::BufferLength {
                    expected_bytes: 96,
                    found_bytes: 24,
                    ..
                }
            ),
            "{error}"
        );
    }
}

#[test]
fn shape_and_dtype_mismatches_name_the_operand() {
    let a = meta_f32();
    let b = ArrayMeta::new(vec![10, 7], vec![4, 4], DataType::F64).unwrap();
    let error = check_shape("b.zarr", &b, a.shape()).unwrap_err();
    assert!(
        matches!(&error, ArrayError::ShapeMismatch { array, expected, found } if array == "b.zarr" && expected == &[7, 10] && found == &[10, 7]),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "array b.zarr: shape [10, 7], expected [7, 10]"
    );
    let error = check_dtype("b.zarr", &b, DataType::F32).unwrap_err();
    assert_eq!(
        error.to_string(),
        "array b.zarr: data type float64, expected float32"
    );
    check_shape("a", &a, &[7, 10]).unwrap();
    check_dtype("a", &a, DataType::F32).unwrap();
}

#[test]
fn invalid_geometry_is_refused() {
    assert_eq!(
        ArrayMeta::new(vec![], vec![], DataType::U8),
        Err(MetaError::Rank { rank: 0 })
    );
    assert!(matches!(
        ArrayMeta::new(vec![4, 4], vec![2], DataType::U8),
        Err(MetaError::RankMismatch { .. })
    ));
    assert!(matches!(
        ArrayMeta::new(vec![4, 4], vec![2, 0], DataType::U8),
        Err(MetaError::ZeroChunkDim { .. })
    ));
    assert!(matches!(
        ArrayMeta::new(vec![u64::MAX, 2], vec![1, 1], DataType::U8),
        Err(MetaError::TooLarge { .. })
    ));
    assert!(matches!(
        ArrayMeta::new(
            vec![1 << 30, 1 << 30],
            vec![1 << 20, 1 << 20],
            DataType::F64
        ),
        Err(MetaError::ChunkTooLarge { .. })
    ));
    let dir = TempDir::new("shard-shape");
    let error = ZarrArray::create(
        dir.path().join("a.zarr"),
        meta_f32(),
        &ZarrCodecs {
            shard_shape: Some(vec![6, 6]),
            ..ZarrCodecs::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            ArrayError::InvalidMeta {
                source: MetaError::ShardShape { .. },
                ..
            }
        ),
        "{error}"
    );
    let error = ZarrArray::create(
        dir.path().join("b.zarr"),
        meta_f32(),
        &ZarrCodecs {
            compression: ZarrCompression::Zstd { level: 99 },
            ..ZarrCodecs::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(error, ArrayError::UnsupportedCodec { .. }),
        "{error}"
    );
    // A refused create leaves nothing behind.
    assert!(!dir.path().join("a.zarr").exists() && !dir.path().join("b.zarr").exists());
}

/// Flips one byte in the middle of `file`.
fn corrupt_file(file: &std::path::Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_corrupt_chunk_under_crc32c_names_the_chunk() {
    let dir = TempDir::new("corrupt");
    let meta = meta_f32();
    let whole = random_array_bytes(&meta, 5);
    for (tag, shard_shape) in [("plain", None), ("sharded", Some(vec![6, 8]))] {
        let path = dir.path().join(format!("{tag}.zarr"));
        let codecs = ZarrCodecs {
            crc32c: true,
            shard_shape: shard_shape.clone(),
            ..ZarrCodecs::default()
        };
        write_all_chunks(
            &ZarrArray::create(&path, meta.clone(), &codecs).unwrap(),
            &whole,
        );
        // Chunk [1, 2] lives in file c/1/2, or in shard c/0/1 when sharded.
        let file = if shard_shape.is_some() {
            path.join("c/0/1")
        } else {
            path.join("c/1/2")
        };
        let array = ZarrArray::open(&path).unwrap();
        let mut out = vec![0u8; meta.chunk_len_bytes_at(&[1, 2])];
        array.read_chunk(&[1, 2], &mut out).unwrap();
        corrupt_file(&file);
        let array = ZarrArray::open(&path).unwrap();
        let mut errors = Vec::new();
        for grid_index in meta.grid_indices() {
            let mut out = vec![0u8; meta.chunk_len_bytes_at(&grid_index)];
            if let Err(error) = array.read_chunk(&grid_index, &mut out) {
                errors.push((grid_index, error));
            }
        }
        // Exactly one chunk is hit: the one whose bytes hold the middle of the file.
        assert_eq!(errors.len(), 1, "{tag}: {errors:?}");
        let (grid_index, error) = &errors[0];
        match error {
            ArrayError::CorruptChunk {
                array,
                chunk,
                detail,
            } => {
                assert_eq!(chunk, grid_index, "{tag}");
                assert!(array.ends_with(&format!("{tag}.zarr")), "{tag}: {array}");
                assert!(
                    detail.contains("crc32c checksum mismatch"),
                    "{tag}: {detail}"
                );
            }
            other => panic!("{tag}: {other}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(&format!("chunk {grid_index:?} is corrupt")),
            "{message}"
        );
        if shard_shape.is_some() {
            assert!(
                grid_index[0] < 2 && grid_index[1] >= 2,
                "{tag}: {grid_index:?} not in shard [0, 1]"
            );
            assert!(message.contains("shard [0, 1]"), "{message}");
        } else {
            assert_eq!(grid_index, &[1, 2]);
            assert!(message.contains("c/1/2"), "{message}");
        }
    }
}

#[test]
fn unsupported_codecs_dtypes_and_layouts_are_refused_by_name() {
    let dir = TempDir::new("unsupported");
    let path = dir.path().join("a.zarr");
    write_all_chunks(
        &ZarrArray::create(&path, meta_f32(), &ZarrCodecs::default()).unwrap(),
        &random_array_bytes(&meta_f32(), 9),
    );
    let json_path = path.join("zarr.json");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();

    let mut gzip = original.clone();
    gzip["codecs"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "gzip", "configuration": {"level": 5}}));
    std::fs::write(&json_path, serde_json::to_vec(&gzip).unwrap()).unwrap();
    let error = ZarrArray::open(&path).unwrap_err();
    assert!(
        matches!(&error, ArrayError::UnsupportedCodec { codec, .. } if codec.starts_with("gzip")),
        "{error}"
    );
    assert!(
        error.to_string().contains("unsupported codec gzip"),
        "{error}"
    );

    let mut complex = original.clone();
    complex["data_type"] = serde_json::json!("complex64");
    std::fs::write(&json_path, serde_json::to_vec(&complex).unwrap()).unwrap();
    let error = ZarrArray::open(&path).unwrap_err();
    assert!(
        matches!(&error, ArrayError::UnsupportedDtype { found, .. } if found.contains("complex64")),
        "{error}"
    );

    let mut v2 = original.clone();
    v2["zarr_format"] = serde_json::json!(2);
    std::fs::write(&json_path, serde_json::to_vec(&v2).unwrap()).unwrap();
    assert!(matches!(
        ZarrArray::open(&path).unwrap_err(),
        ArrayError::UnsupportedLayout { .. }
    ));

    std::fs::write(&json_path, b"{not json").unwrap();
    assert!(matches!(
        ZarrArray::open(&path).unwrap_err(),
        ArrayError::CorruptMetadata { .. }
    ));

    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let error = NpyArray::open(
        testdata.join("f64_4x3_fortran.npy"),
        vec![2, 2],
        NpyReadMode::Mapped,
    )
    .unwrap_err();
    assert!(
        matches!(&error, ArrayError::UnsupportedLayout { detail, .. } if detail.contains("fortran_order")),
        "{error}"
    );
    let error = NpyArray::open(
        testdata.join("f4_big_endian.npy"),
        vec![2],
        NpyReadMode::Mapped,
    )
    .unwrap_err();
    assert!(
        matches!(&error, ArrayError::UnsupportedLayout { detail, .. } if detail.contains("big-endian")),
        "{error}"
    );
    let bf16 = ArrayMeta::new(vec![4], vec![2], DataType::BF16).unwrap();
    let error = NpyArray::create(dir.path().join("bf16.npy"), bf16).unwrap_err();
    assert!(
        matches!(&error, ArrayError::UnsupportedDtype { found, .. } if found == "bfloat16"),
        "{error}"
    );
    assert!(!dir.path().join("bf16.npy.partial").exists());
}

#[test]
fn incomplete_destinations_are_visible_and_refused() {
    let dir = TempDir::new("incomplete");
    let meta = meta_f32();
    let path = dir.path().join("a.zarr");
    let writer = ZarrArray::create(&path, meta.clone(), &ZarrCodecs::default()).unwrap();
    writer.write_chunk(&[0, 0], &[1u8; 48]).unwrap();
    let error = ZarrArray::open(&path).unwrap_err();
    assert!(
        matches!(&error, ArrayError::Incomplete { array } if array.ends_with("a.zarr")),
        "{error}"
    );
    assert_eq!(zarr_info(&path).unwrap().complete, Some(false));
    // Inspection still works, and shows what was written so far.
    let partial = ZarrArray::open_allow_incomplete(&path).unwrap();
    let mut out = vec![0u8; 48];
    partial.read_chunk(&[0, 0], &mut out).unwrap();
    assert_eq!(out, vec![1u8; 48]);
    assert!(matches!(
        ZarrArray::create(&path, meta.clone(), &ZarrCodecs::default()).unwrap_err(),
        ArrayError::AlreadyExists { .. }
    ));
    writer.finish().unwrap();
    assert_eq!(zarr_info(&path).unwrap().complete, Some(true));
    ZarrArray::open(&path).unwrap();

    let npy_path = dir.path().join("a.npy");
    let writer = NpyArray::create(&npy_path, meta.clone()).unwrap();
    let error = NpyArray::open(&npy_path, vec![3, 4], NpyReadMode::Mapped).unwrap_err();
    assert!(matches!(error, ArrayError::NotFound { .. }), "{error}");
    writer.finish().unwrap();
    NpyArray::open(&npy_path, vec![3, 4], NpyReadMode::Mapped).unwrap();
    assert!(matches!(
        NpyArray::create(&npy_path, meta).unwrap_err(),
        ArrayError::AlreadyExists { .. }
    ));
}

#[test]
fn a_truncated_npy_is_corrupt_metadata() {
    let dir = TempDir::new("truncated");
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let bytes = std::fs::read(testdata.join("f32_2x3.npy")).unwrap();
    let path = dir.path().join("short.npy");
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let error = NpyArray::open(&path, vec![1, 3], NpyReadMode::Positional).unwrap_err();
    assert!(
        matches!(&error, ArrayError::CorruptMetadata { detail, .. } if detail.contains("148 bytes") && detail.contains("152")),
        "{error}"
    );
    std::fs::write(&path, &bytes[..40]).unwrap();
    assert!(matches!(
        NpyArray::open(&path, vec![1, 3], NpyReadMode::Positional).unwrap_err(),
        ArrayError::CorruptMetadata { .. }
    ));
}

#[test]
fn raw_chunk_files_of_the_wrong_length_are_corrupt_and_missing_ones_read_as_fill() {
    // Uncompressed, unchecked chunks are read straight from their files; a
    // file whose length is not a full chunk's must still be refused.
    let dir = TempDir::new("raw");
    let meta = meta_f32();
    let whole = random_array_bytes(&meta, 9);
    let path = dir.path().join("raw.zarr");
    write_all_chunks(
        &ZarrArray::create(&path, meta.clone(), &ZarrCodecs::default()).unwrap(),
        &whole,
    );
    let full_chunk_bytes = meta.full_chunk_len_bytes();
    for (file, new_len) in [
        ("c/0/0", full_chunk_bytes - 1),
        ("c/1/1", full_chunk_bytes + 4),
        ("c/2/2", 0),
    ] {
        let file = path.join(file);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.resize(new_len, 0);
        std::fs::write(&file, bytes).unwrap();
    }
    std::fs::remove_file(path.join("c/0/1")).unwrap();
    let array = ZarrArray::open(&path).unwrap();
    for grid_index in meta.grid_indices() {
        let mut out = vec![0xAAu8; meta.chunk_len_bytes_at(&grid_index)];
        let result = array.read_chunk(&grid_index, &mut out);
        match grid_index.as_slice() {
            [0, 0] | [1, 1] | [2, 2] => match result {
                Err(ArrayError::CorruptChunk { chunk, .. }) => assert_eq!(chunk, grid_index),
                other => panic!("chunk {grid_index:?}: {other:?}"),
            },
            [0, 1] => {
                result.unwrap();
                assert!(
                    out.iter().all(|&b| b == 0),
                    "missing chunk is not the fill value"
                );
            }
            _ => {
                result.unwrap_or_else(|e| panic!("chunk {grid_index:?}: {e}"));
                let reference = MemArray::from_bytes("ref", meta.clone(), whole.clone()).unwrap();
                let mut want = vec![0u8; out.len()];
                ChunkSource::read_chunk(&reference, &grid_index, &mut want).unwrap();
                assert_eq!(out, want, "chunk {grid_index:?}");
            }
        }
    }
}
