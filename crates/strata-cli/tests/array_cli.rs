//! The array commands through the built binary: create, info, matmul,
//! einsum and demo, checked against results computed here from the arrays
//! the commands wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use strata_array::chunk::{decode_elements, ChunkSource};
use strata_array::zarr::ZarrArray;

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

/// A fresh directory under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    let output = strata().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "strata {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

/// The whole array as f64, C order.
fn values(path: &Path) -> (Vec<u64>, Vec<f64>) {
    let array = ZarrArray::open(path).unwrap();
    let meta = array.meta().clone();
    let mut all = vec![0f64; meta.element_count() as usize];
    let strides: Vec<u64> = (0..meta.rank())
        .map(|d| meta.shape()[d + 1..].iter().product())
        .collect();
    for grid in meta.grid_indices() {
        let region = meta.chunk_region(&grid);
        let mut raw = vec![0u8; meta.chunk_len_bytes_at(&grid)];
        array.read_chunk(&grid, &mut raw).unwrap();
        let mut chunk = vec![0f64; meta.chunk_element_count_at(&grid) as usize];
        decode_elements::<f64>(meta.dtype(), &raw, &mut chunk);
        for (i, value) in chunk.iter().enumerate() {
            let mut rest = i as u64;
            let mut offset = 0;
            for d in (0..meta.rank()).rev() {
                offset += (region.start[d] + rest % region.shape[d]) * strides[d];
                rest /= region.shape[d];
            }
            all[offset as usize] = *value;
        }
    }
    (meta.shape().to_vec(), all)
}

#[test]
fn create_info_matmul_and_einsum_agree_with_a_direct_product() {
    let dir = scratch("matmul");
    let (a, b, c, d) = (
        dir.join("a.zarr"),
        dir.join("b.zarr"),
        dir.join("c.zarr"),
        dir.join("d.zarr"),
    );
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    run(&[
        "create",
        &s(&a),
        "--shape",
        "70,50",
        "--chunks",
        "16,32",
        "--seed",
        "3",
        "--crc32c",
    ]);
    run(&[
        "create",
        &s(&b),
        "--shape",
        "50,40",
        "--chunks",
        "32,8",
        "--dtype",
        "f64",
        "--zstd",
        "3",
    ]);
    let info = json(&run(&["info", &s(&b), "--json"]));
    assert_eq!(info["shape"], serde_json::json!([50, 40]));
    assert_eq!(info["chunk_shape"], serde_json::json!([32, 8]));
    assert_eq!(info["dtype"], "float64");
    assert_eq!(info["complete"], true);
    assert!(info["codecs"].to_string().contains("zstd"), "{info}");

    let summary = json(&run(&[
        "matmul",
        &s(&a),
        &s(&b),
        "-o",
        &s(&c),
        "--memory",
        "256KiB",
        "--json",
    ]));
    assert!(
        summary["peak_reserved_bytes"].as_u64().unwrap() <= 256 << 10,
        "{summary}"
    );
    assert_eq!(summary["flops"].as_u64().unwrap(), 2 * 70 * 50 * 40);
    let (_, av) = values(&a);
    let (_, bv) = values(&b);
    let (c_shape, cv) = values(&c);
    assert_eq!(c_shape, vec![70, 40]);
    for i in 0..70 {
        for j in 0..40 {
            let want: f64 = (0..50).map(|k| av[i * 50 + k] * bv[k * 40 + j]).sum();
            let got = cv[i * 40 + j];
            // f64 compute (B is f64): the bound is tiny.
            assert!(
                (want - got).abs() <= 1e-12 * 50.0,
                "({i}, {j}): {want} vs {got}"
            );
        }
    }

    // einsum with a transpose: D[j, i] = sum_k A[i, k] B[k, j].
    run(&[
        "einsum",
        "ik,kj->ji",
        &s(&a),
        &s(&b),
        "-o",
        &s(&d),
        "--memory",
        "256KiB",
        "--policy",
        "lru",
    ]);
    let (d_shape, dv) = values(&d);
    assert_eq!(d_shape, vec![40, 70]);
    for i in 0..70 {
        for j in 0..40 {
            assert!((dv[j * 70 + i] - cv[i * 40 + j]).abs() <= 1e-12 * 50.0);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_jobs_fail_with_a_clear_message_and_leave_nothing_complete() {
    let dir = scratch("bad");
    let s = |p: PathBuf| p.to_str().unwrap().to_owned();
    run(&[
        "create",
        &s(dir.join("a.zarr")),
        "--shape",
        "64,64",
        "--chunks",
        "32,32",
    ]);
    run(&[
        "create",
        &s(dir.join("b.zarr")),
        "--shape",
        "48,64",
        "--chunks",
        "32,32",
    ]);
    let output = strata()
        .args([
            "matmul",
            &s(dir.join("a.zarr")),
            &s(dir.join("b.zarr")),
            "-o",
            &s(dir.join("c.zarr")),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a.zarr") && stderr.contains("b.zarr") && stderr.contains("'j'"),
        "{stderr}"
    );

    let output = strata()
        .args([
            "matmul",
            &s(dir.join("a.zarr")),
            &s(dir.join("a.zarr")),
            "-o",
            &s(dir.join("c.zarr")),
            "--memory",
            "2KiB",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("too small") && stderr.contains("needs"),
        "{stderr}"
    );

    let output = strata()
        .args([
            "einsum",
            "ij,jk",
            &s(dir.join("a.zarr")),
            &s(dir.join("a.zarr")),
            "-o",
            &s(dir.join("c.zarr")),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("->"));

    let output = strata()
        .args(["info", &s(dir.join("missing.zarr"))])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.zarr"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_runs_and_checks_its_results() {
    let dir = scratch("demo");
    let output = run(&[
        "demo",
        "--memory",
        "1MiB",
        "--dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    let report = json(&output);
    // 16 entries each of the matmul, the intermediate and the reduction.
    assert_eq!(report["checked_entries"], 48, "{report}");
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    for job in jobs {
        assert!(
            job["peak_reserved_bytes"].as_u64().unwrap() <= 1 << 20,
            "{job}"
        );
        assert!(job["read_bytes"].as_u64().unwrap() >= job["input_bytes"].as_u64().unwrap());
    }
    // The chained intermediate lived in a disk-tier file in the same
    // directory, removed when done: only the inputs and results remain.
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["a.zarr", "b.zarr", "c.zarr", "r.zarr"]);
    for name in &left {
        assert!(dir.join(name).join("zarr.json").exists(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn info_checksum_is_the_same_across_chunkings_and_codecs_and_matches_the_elements() {
    let dir = scratch("checksum");
    let mut checksums = Vec::new();
    for (name, extra) in [
        ("plain.zarr", vec!["--chunks", "5,7"]),
        (
            "zstd.zarr",
            vec!["--chunks", "3,16", "--zstd", "3", "--crc32c"],
        ),
        ("sharded.zarr", vec!["--chunks", "4,4", "--shard", "8,8"]),
        ("a.npy", vec![]),
    ] {
        let path = dir.join(name);
        let path_text = path.to_str().unwrap();
        let mut args = vec!["create", path_text, "--shape", "13,21", "--fill", "2.5"];
        args.extend(extra);
        run(&args);
        let info = json(&run(&["info", path_text, "--json", "--checksum"]));
        checksums.push((name, info["content_xxh3"].as_str().unwrap().to_string()));
    }
    // 13 x 21 elements of 2.5f32, little-endian, in C order.
    let bytes: Vec<u8> = (0..13 * 21).flat_map(|_| 2.5f32.to_le_bytes()).collect();
    let want = format!(
        "{:016x}",
        strata_array::digest::content_xxh3(
            &strata_array::mem::MemArray::from_bytes(
                "want",
                strata_array::meta::ArrayMeta::new(
                    vec![13, 21],
                    vec![13, 21],
                    strata_array::DataType::F32
                )
                .unwrap(),
                bytes,
            )
            .unwrap(),
        )
        .unwrap()
    );
    for (name, checksum) in &checksums {
        assert_eq!(checksum, &want, "{name}: {checksums:?}");
    }
    let text = String::from_utf8(
        run(&[
            "info",
            dir.join("plain.zarr").to_str().unwrap(),
            "--checksum",
        ])
        .stdout,
    )
    .unwrap();
    assert!(text.contains(&want), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
