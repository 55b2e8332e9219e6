//! Interoperability with zarr-python and numpy, when a Python with both is
//! available: `STRATA_TEST_PYTHON` names the interpreter (default
//! `python3`). Without one, the test says so and passes: the Zarr and NPY
//! formats are still checked field by field in `formats.rs`.

mod common;

use std::process::Command;

use common::TempDir;
use strata_array::chunk::{read_chunk_vec, write_chunk_from, ChunkSink, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::meta::ArrayMeta;
use strata_array::npy::{NpyArray, NpyReadMode};
use strata_array::zarr::{ZarrArray, ZarrCodecs, ZarrCompression};

fn python() -> Option<String> {
    let python = std::env::var("STRATA_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let ok = Command::new(&python)
        .args(["-c", "import zarr, numpy"])
        .output()
        .is_ok_and(|output| output.status.success());
    ok.then_some(python)
}

fn run(python: &str, script: &str) -> String {
    let output = Command::new(python).args(["-c", script]).output().unwrap();
    assert!(
        output.status.success(),
        "python failed:\n{script}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Element i of the test arrays (C order), exact in f32.
fn value(i: u64) -> f32 {
    (i as f32) * 0.25 - 7.0
}

#[test]
fn zarr_python_and_numpy_read_what_strata_writes_and_the_other_way_round() {
    let Some(python) = python() else {
        eprintln!("skipped: no Python with zarr and numpy (set STRATA_TEST_PYTHON)");
        return;
    };
    let dir = TempDir::new("python");
    let meta = ArrayMeta::new(vec![7, 10], vec![3, 4], DataType::F32).unwrap();
    let expected: Vec<f64> = (0..70).map(|i| f64::from(value(i))).collect();
    let cases = [
        ("plain", ZarrCodecs::default()),
        (
            "zstd-crc32c-sharded",
            ZarrCodecs {
                compression: ZarrCompression::Zstd { level: 3 },
                crc32c: true,
                shard_shape: Some(vec![6, 8]),
            },
        ),
    ];
    // Strata writes, zarr-python reads.
    for (tag, codecs) in &cases {
        let path = dir.path().join(format!("strata-{tag}.zarr"));
        let writer = ZarrArray::create(&path, meta.clone(), codecs).unwrap();
        for grid_index in meta.grid_indices() {
            let region = meta.chunk_region(&grid_index);
            let mut values = Vec::new();
            for row in region.start[0]..region.start[0] + region.shape[0] {
                for col in region.start[1]..region.start[1] + region.shape[1] {
                    values.push(value(row * 10 + col));
                }
            }
            write_chunk_from(&writer, &grid_index, &mut Vec::new(), &values).unwrap();
        }
        writer.finish().unwrap();
        let got = run(
            &python,
            &format!(
                "import zarr, json\na = zarr.open_array({:?}, mode='r')\n\
                 assert a.dtype == 'float32' and a.shape == (7, 10), (a.dtype, a.shape)\n\
                 print(json.dumps([float(x) for x in a[:].ravel()]))",
                path.display().to_string()
            ),
        );
        let got: Vec<f64> = serde_json::from_str(got.trim()).unwrap();
        assert_eq!(got, expected, "{tag}");
    }
    // zarr-python writes, Strata reads.
    for (tag, extra) in [
        ("plain", "compressors=None"),
        ("zstd-crc32c-sharded", "shards=(6, 8), compressors=[zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()]"),
    ] {
        let path = dir.path().join(format!("python-{tag}.zarr"));
        run(
            &python,
            &format!(
                "import zarr, numpy as np\n\
                 a = zarr.create_array(store={:?}, shape=(7, 10), chunks=(3, 4), dtype='float32', fill_value=0, {extra})\n\
                 a[:] = (np.arange(70, dtype='float32') * 0.25 - 7.0).reshape(7, 10)",
                path.display().to_string()
            ),
        );
        let array = ZarrArray::open(&path).unwrap();
        assert_eq!(array.meta(), &meta, "{tag}");
        for grid_index in meta.grid_indices() {
            let got = read_chunk_vec::<f32>(&array, &grid_index).unwrap();
            let region = meta.chunk_region(&grid_index);
            let mut want = Vec::new();
            for row in region.start[0]..region.start[0] + region.shape[0] {
                for col in region.start[1]..region.start[1] + region.shape[1] {
                    want.push(value(row * 10 + col));
                }
            }
            assert_eq!(got, want, "{tag} chunk {grid_index:?}");
        }
    }
    // numpy reads an NPY Strata wrote (memory-mapped, as np.load(mmap_mode) does).
    let npy = dir.path().join("strata.npy");
    let writer = NpyArray::create(&npy, meta.clone()).unwrap();
    for grid_index in meta.grid_indices() {
        let region = meta.chunk_region(&grid_index);
        let mut values = Vec::new();
        for row in region.start[0]..region.start[0] + region.shape[0] {
            for col in region.start[1]..region.start[1] + region.shape[1] {
                values.push(value(row * 10 + col));
            }
        }
        write_chunk_from(&writer, &grid_index, &mut Vec::new(), &values).unwrap();
    }
    writer.finish().unwrap();
    let got = run(
        &python,
        &format!(
            "import numpy as np\na = np.load({:?}, mmap_mode='r')\n\
             ok = a.dtype == np.float32 and a.shape == (7, 10) and (a == (np.arange(70, dtype='float32') * 0.25 - 7.0).reshape(7, 10)).all()\n\
             print(ok)",
            npy.display().to_string()
        ),
    );
    assert_eq!(got.trim(), "True");
    NpyArray::open(&npy, vec![7, 10], NpyReadMode::Mapped).unwrap();
}
