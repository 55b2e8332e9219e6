//! `strata region` through the built binary: build, inspect, verify (and
//! its exit codes), import and export, checked against the files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_region::{Region, Verification};

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-region-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn build_inspect_verify_import_and_export_work_on_real_files() {
    let dir = scratch("all");
    let input = dir.join("input");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::write(input.join("a.txt"), b"alpha").unwrap();
    std::fs::write(input.join("sub/b.bin"), vec![7u8; 10_000]).unwrap();
    let region_path = dir.join("built.region");
    let out = strata(&["region", "build", text(&input), "-o", text(&region_path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let region = Region::open(&region_path).unwrap();
    assert_eq!(region.layer("a.txt").unwrap().bytes(), b"alpha");
    let b = region.layer("sub/b.bin").unwrap();
    assert_eq!(
        (b.bytes().len(), b.verification()),
        (10_000, Verification::Verified)
    );
    assert_eq!(b.attribute("source"), Some("sub/b.bin"));

    let out = strata(&["region", "inspect", text(&region_path), "--json"]);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["layers"].as_array().unwrap().len(), 2);
    assert_eq!(info["layers"][0]["name"], "a.txt");
    assert!(info["layers"][0]["checksum"].is_string());
    assert_eq!(info["data_start"].as_u64().unwrap() % 4096, 0);
    let out = strata(&["region", "inspect", text(&region_path)]);
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("sub/b.bin") && shown.contains("strata region v1"),
        "{shown}"
    );

    // Verify: clean (0), then a flipped byte (1), then garbage (2).
    let out = strata(&["region", "verify", text(&region_path)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut bytes = std::fs::read(&region_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let damaged = dir.join("damaged.region");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = strata(&["region", "verify", text(&damaged), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"][0]["status"], "damaged");
    assert!(
        report["files"][0]["errors"][0]
            .as_str()
            .unwrap()
            .contains("sub/b.bin"),
        "{report}"
    );
    std::fs::write(dir.join("garbage.region"), b"nope").unwrap();
    let out = strata(&["region", "verify", text(&dir)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains("built.region: clean")
            && listing.contains("damaged.region: damaged")
            && listing.contains("garbage.region: unreadable"),
        "{listing}"
    );

    // Import a safetensors file written by Python: checksums added.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/region/python_mixed.safetensors");
    let imported = dir.join("imported.region");
    let out = strata(&["region", "import", text(&fixture), "-o", text(&imported)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let original = Region::open(&fixture).unwrap();
    let copy = Region::open(&imported).unwrap();
    assert_eq!(
        copy.header().other_metadata,
        original.header().other_metadata
    );
    for layer in original.layers() {
        let (a, b) = (
            original.layer(&layer.name).unwrap(),
            copy.layer(&layer.name).unwrap(),
        );
        assert_eq!(
            (a.bytes(), a.dtype(), a.shape()),
            (b.bytes(), b.dtype(), b.shape()),
            "{}",
            layer.name
        );
        assert_eq!(b.verification(), Verification::Verified, "{}", layer.name);
    }
    // Export back to plain safetensors: no Strata metadata, same tensors.
    let exported = dir.join("plain.safetensors");
    let out = strata(&["region", "export", text(&imported), "-o", text(&exported)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = Region::open(&exported).unwrap();
    assert_eq!(plain.header().format_version, None);
    assert_eq!(plain.layer_count(), original.layer_count());
    for layer in original.layers() {
        assert_eq!(
            plain.layer(&layer.name).unwrap().bytes(),
            original.layer(&layer.name).unwrap().bytes()
        );
    }
    // Refusing to export a damaged region: nothing written.
    let out = strata(&[
        "region",
        "export",
        text(&damaged),
        "-o",
        text(&dir.join("x.safetensors")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.join("x.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
