//! Files in the formats other tools write and read: NPY bytes written by
//! numpy (checked in under `testdata/`), and `zarr.json` against the Zarr v3
//! spec's fields.

mod common;

use std::path::{Path, PathBuf};

use common::{random_array_bytes, write_all_chunks, TempDir};
use strata_array::chunk::{read_chunk_vec, ChunkSink, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::meta::ArrayMeta;
use strata_array::npy::{encode_header, parse_header, NpyArray, NpyReadMode};
use strata_array::zarr::{ZarrArray, ZarrCodecs, ZarrCompression};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Reads the whole golden file through 1 x N chunks and as f64.
fn read_all_f64(name: &str, mode: NpyReadMode) -> (NpyArray, Vec<f64>) {
    let header = parse_header(name, &std::fs::read(testdata(name)).unwrap()).unwrap();
    let mut chunk_shape = header.shape.clone();
    chunk_shape[0] = 1;
    let array = NpyArray::open(testdata(name), chunk_shape, mode).unwrap();
    let values = array
        .meta()
        .grid_indices()
        .flat_map(|grid_index| read_chunk_vec::<f64>(&array, &grid_index).unwrap())
        .collect();
    (array, values)
}

#[test]
fn numpy_files_read_exactly() {
    for mode in [NpyReadMode::Mapped, NpyReadMode::Positional] {
        let (array, values) = read_all_f64("f32_2x3.npy", mode);
        assert_eq!(
            (array.meta().shape(), array.meta().dtype()),
            (&[2u64, 3][..], DataType::F32)
        );
        assert_eq!(array.header().version, (1, 0));
        assert_eq!(array.header().data_offset_bytes, 128);
        assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "{mode:?}");

        let (array, values) = read_all_f64("u8_5.npy", mode);
        assert_eq!(array.meta().dtype(), DataType::U8);
        assert_eq!(values, vec![0.0, 1.0, 127.0, 128.0, 255.0]);

        let (array, values) = read_all_f64("f16_3x2.npy", mode);
        assert_eq!(array.meta().dtype(), DataType::F16);
        assert_eq!(values, vec![0.5, -1.0, 65504.0, 2f64.powi(-24), 1.5, -0.0]);
        assert!(values[5].is_sign_negative());

        let (array, values) = read_all_f64("i64_2x2x3.npy", mode);
        assert_eq!(array.meta().shape(), &[2, 2, 3]);
        let expected: Vec<f64> = (0..12)
            .map(|i| ((i - 6) * 1_000_000_007i64) as f64)
            .collect();
        assert_eq!(values, expected);

        let (array, values) = read_all_f64("i32_3x4_v2.npy", mode);
        assert_eq!(array.header().version, (2, 0));
        assert_eq!(array.meta().dtype(), DataType::I32);
        assert_eq!(
            values,
            (0..12).map(|i| f64::from(i * -3)).collect::<Vec<_>>()
        );

        let (array, values) = read_all_f64("f64_2x2_v3.npy", mode);
        assert_eq!(array.header().version, (3, 0));
        assert_eq!(values, vec![1.25, -2.5, 1e300, -0.0]);
    }
}

#[test]
fn written_npy_files_are_byte_identical_to_numpy() {
    let dir = TempDir::new("npy-golden");
    for name in ["f32_2x3.npy", "u8_5.npy", "f16_3x2.npy", "i64_2x2x3.npy"] {
        let golden = std::fs::read(testdata(name)).unwrap();
        let source = NpyArray::open(
            testdata(name),
            vec![1; parse_header(name, &golden).unwrap().shape.len()],
            NpyReadMode::Positional,
        )
        .unwrap();
        let header = source.header().clone();
        assert_eq!(
            encode_header(header.dtype, &header.shape).unwrap(),
            golden[..header.data_offset_bytes as usize],
            "{name}"
        );
        // Copy through odd chunks (ragged, not whole rows) into a new file.
        let chunk_shape: Vec<u64> = header.shape.iter().map(|&d| d.div_ceil(2)).collect();
        let source =
            NpyArray::open(testdata(name), chunk_shape.clone(), NpyReadMode::Mapped).unwrap();
        let out_path = dir.path().join(name);
        let writer = NpyArray::create(&out_path, source.meta().clone()).unwrap();
        for grid_index in source.meta().grid_indices() {
            let mut chunk = vec![0u8; source.meta().chunk_len_bytes_at(&grid_index)];
            source.read_chunk(&grid_index, &mut chunk).unwrap();
            writer.write_chunk(&grid_index, &chunk).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(std::fs::read(&out_path).unwrap(), golden, "{name}");
    }
}

#[test]
fn npy_headers_round_trip_for_many_shapes() {
    for shape in [
        vec![1u64],
        vec![0],
        vec![123_456_789_012, 3],
        vec![2, 0, 5],
        vec![1; 64],
    ] {
        for dtype in [DataType::F32, DataType::U8, DataType::I64] {
            let header = encode_header(dtype, &shape).unwrap();
            assert!(
                header.len().is_multiple_of(64),
                "{shape:?}: {}",
                header.len()
            );
            assert_eq!(header.last(), Some(&b'\n'));
            let parsed = parse_header("x", &header).unwrap();
            assert_eq!((parsed.dtype, parsed.shape.clone()), (dtype, shape.clone()));
            assert_eq!(parsed.data_offset_bytes, header.len() as u64);
        }
    }
    assert_eq!(encode_header(DataType::BF16, &[2]), None);
}

fn zarr_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path.join("zarr.json")).unwrap()).unwrap()
}

#[test]
fn zarr_json_has_the_v3_spec_fields() {
    let dir = TempDir::new("zarr-json");
    let meta = ArrayMeta::new(vec![7, 10], vec![3, 4], DataType::F32).unwrap();
    let path = dir.path().join("plain.zarr");
    let codecs = ZarrCodecs {
        compression: ZarrCompression::Zstd { level: 5 },
        crc32c: true,
        shard_shape: None,
    };
    let writer = ZarrArray::create(&path, meta.clone(), &codecs).unwrap();
    let json = zarr_json(&path);
    assert_eq!(json["attributes"]["strata"]["complete"], false);
    write_all_chunks(&writer, &random_array_bytes(&meta, 3));
    let json = zarr_json(&path);
    assert_eq!(json["zarr_format"], 3);
    assert_eq!(json["node_type"], "array");
    assert_eq!(json["shape"], serde_json::json!([7, 10]));
    assert_eq!(json["data_type"], "float32");
    assert_eq!(
        json["chunk_grid"],
        serde_json::json!({"name": "regular", "configuration": {"chunk_shape": [3, 4]}})
    );
    assert_eq!(
        json["chunk_key_encoding"],
        serde_json::json!({"name": "default", "configuration": {"separator": "/"}})
    );
    assert_eq!(json["fill_value"], 0.0);
    assert_eq!(
        json["codecs"][0],
        serde_json::json!({"name": "bytes", "configuration": {"endian": "little"}})
    );
    assert_eq!(json["codecs"][1]["name"], "zstd");
    assert_eq!(json["codecs"][1]["configuration"]["level"], 5);
    assert_eq!(json["codecs"][2]["name"], "crc32c");
    assert_eq!(json["codecs"].as_array().unwrap().len(), 3);
    assert_eq!(
        json["attributes"],
        serde_json::json!({"strata": {"complete": true}})
    );
    // Chunk files use the default key encoding: c/<row>/<col>.
    for grid_index in meta.grid_indices() {
        let file = path.join(format!("c/{}/{}", grid_index[0], grid_index[1]));
        assert!(file.is_file(), "{}", file.display());
    }

    let sharded = dir.path().join("sharded.zarr");
    let codecs = ZarrCodecs {
        compression: ZarrCompression::None,
        crc32c: false,
        shard_shape: Some(vec![6, 8]),
    };
    let int_meta = ArrayMeta::new(vec![7, 10], vec![3, 4], DataType::I64).unwrap();
    write_all_chunks(
        &ZarrArray::create(&sharded, int_meta.clone(), &codecs).unwrap(),
        &random_array_bytes(&int_meta, 4),
    );
    let json = zarr_json(&sharded);
    assert_eq!(json["data_type"], "int64");
    assert_eq!(json["fill_value"], 0);
    assert_eq!(
        json["chunk_grid"]["configuration"]["chunk_shape"],
        serde_json::json!([6, 8])
    );
    let sharding = &json["codecs"][0];
    assert_eq!(sharding["name"], "sharding_indexed");
    assert_eq!(
        sharding["configuration"]["chunk_shape"],
        serde_json::json!([3, 4])
    );
    assert_eq!(
        sharding["configuration"]["codecs"],
        serde_json::json!([{"name": "bytes", "configuration": {"endian": "little"}}])
    );
    assert_eq!(
        sharding["configuration"]["index_codecs"],
        serde_json::json!([{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}])
    );
    assert_eq!(sharding["configuration"]["index_location"], "end");
    // 2 x 2 shards, one file each.
    for (row, col) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        assert!(sharded.join(format!("c/{row}/{col}")).is_file());
    }
}
