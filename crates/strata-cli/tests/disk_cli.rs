//! `strata disk create | inspect | verify` run as the built binary on temp
//! files: exit codes, the JSON figures, and a record corrupted through the
//! file that `verify` names.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use strata_disk::device::FileOptions;
use strata_disk::record::{ChecksumKind, CodecPolicy, Dtype, RecordMeta, HEADER_LEN_BYTES};
use strata_disk::store::{open_file_store, Extent, Layout, StoreConfig, SB_OFFSET_SEQUENCE};

const STORE_BYTES: u64 = 4 << 20;
const BLOCK_BYTES: u64 = 4096;
const SPARE_BLOCKS: u64 = 16;

/// A temp file path removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> TempPath {
        let path =
            std::env::temp_dir().join(format!("strata-cli-disk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .expect("the strata binary runs")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Creates a store through the CLI: 4 MiB in 4 KiB blocks with 16 spares.
fn create(path: &Path) {
    let output = strata(&[
        "disk",
        "create",
        path_str(path),
        "--size",
        "4MiB",
        "--spares",
        "16",
    ]);
    assert_eq!(code(&output), 0, "create failed: {}", stderr(&output));
}

fn config() -> StoreConfig {
    StoreConfig {
        cap_bytes: None,
        policy: CodecPolicy::None,
        checksum: ChecksumKind::Xxh3,
        spare_blocks: 0,
    }
}

/// Puts records of 1, 2 and 3 blocks through the library and commits.
fn put_records(path: &Path) -> Vec<Extent> {
    let mut store = open_file_store(path, FileOptions::default(), config()).unwrap();
    let mut extents = Vec::new();
    for blocks in 1..=3u64 {
        let len = (blocks * BLOCK_BYTES) as usize - HEADER_LEN_BYTES;
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ blocks as u8).collect();
        let meta = RecordMeta {
            dtype: Dtype::Bytes,
            shape: vec![len as u64],
        };
        extents.push(store.put(&payload, &meta).unwrap());
    }
    store.commit().unwrap();
    extents
}

fn xor_byte(path: &Path, offset_bytes: u64, mask: u8) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset_bytes).unwrap();
    byte[0] ^= mask;
    file.write_all_at(&byte, offset_bytes).unwrap();
}

#[test]
fn create_then_inspect_reports_the_layout_and_usage() {
    let path = TempPath::new("inspect");
    create(&path.0);
    let extents = put_records(&path.0);
    let before = std::fs::read(&path.0).unwrap();
    let output = strata(&["disk", "inspect", path_str(&path.0), "--json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report = json(&output);
    let layout = Layout::compute(STORE_BYTES / BLOCK_BYTES, BLOCK_BYTES, SPARE_BLOCKS).unwrap();
    assert_eq!(report["block_bytes"], BLOCK_BYTES);
    assert_eq!(report["device_bytes"], STORE_BYTES);
    let areas = report["layout"].as_array().unwrap();
    assert_eq!(areas.len(), 8);
    assert_eq!(areas[6]["area"], "spare pool");
    assert_eq!(areas[6]["first_block"], layout.spare_start);
    assert_eq!(areas[6]["blocks"], SPARE_BLOCKS);
    assert_eq!(areas[7]["area"], "data area");
    assert_eq!(areas[7]["first_block"], layout.data_start);
    let usage = &report["usage"];
    let data_bytes = layout.data_blocks() * BLOCK_BYTES;
    assert_eq!(usage["capacity_bytes"], data_bytes);
    assert_eq!(usage["used_bytes"], 6 * BLOCK_BYTES);
    assert_eq!(usage["free_bytes"], data_bytes - 6 * BLOCK_BYTES);
    assert_eq!(usage["records"], 3);
    assert_eq!(usage["sequence"], 2);
    assert_eq!(
        usage["largest_free_run_bytes"],
        data_bytes - 6 * BLOCK_BYTES
    );
    assert_eq!(usage["cap_bytes"], Value::Null);
    assert_eq!(report["spares"]["total"], SPARE_BLOCKS);
    assert_eq!(report["spares"]["left"], SPARE_BLOCKS);
    assert_eq!(report["remap_table"]["entries"], Value::Array(Vec::new()));
    assert_eq!(extents[0].start, layout.data_start);
    // Inspecting wrote nothing.
    assert!(
        std::fs::read(&path.0).unwrap() == before,
        "inspect changed the file"
    );

    // The text form has the sections and sizes in units.
    let output = strata(&["disk", "inspect", path_str(&path.0)]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "layout",
        "usage",
        "spare pool",
        "remap table",
        "4.0 MiB",
        "24.0 KiB",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
}

#[test]
fn verify_is_clean_then_names_a_corrupted_record() {
    let path = TempPath::new("verify");
    create(&path.0);
    let extents = put_records(&path.0);
    let output = strata(&["disk", "verify", path_str(&path.0), "--json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report = json(&output);
    assert_eq!(report["clean"], true);
    assert_eq!(report["records_checked"], 3);
    assert_eq!(report["record_bytes_checked"], 6 * BLOCK_BYTES);
    let superblocks = report["metadata"]["superblocks"].as_array().unwrap();
    assert!(superblocks
        .iter()
        .all(|s| s["valid"] == true && s["sequence"] == 2));

    // One payload byte of the 2-block record.
    let bad = extents[1];
    xor_byte(
        &path.0,
        bad.start * BLOCK_BYTES + HEADER_LEN_BYTES as u64 + 100,
        0x08,
    );
    let output = strata(&["disk", "verify", path_str(&path.0), "--json"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let report = json(&output);
    assert_eq!(report["clean"], false);
    assert_eq!(report["damage_count"], 1);
    let bad_records = report["bad_records"].as_array().unwrap();
    assert_eq!(bad_records.len(), 1, "{report}");
    assert_eq!(bad_records[0]["extent"]["start"], bad.start);
    assert_eq!(bad_records[0]["extent"]["blocks"], bad.len);
    assert_eq!(bad_records[0]["kind"], "payload checksum");
    assert_eq!(bad_records[0]["checksum"], "xxh3");
    assert_ne!(
        bad_records[0]["expected_checksum"],
        bad_records[0]["actual_checksum"]
    );

    // The text form names the extent's blocks too.
    let output = strata(&["disk", "verify", path_str(&path.0)]);
    assert_eq!(code(&output), 1);
    let text = String::from_utf8(output.stdout).unwrap();
    let blocks = format!("{}..{}", bad.start, bad.end());
    assert!(text.contains(&blocks) && text.contains("DAMAGED"), "{text}");
}

#[test]
fn verify_names_a_corrupt_superblock_copy_and_the_good_one() {
    let path = TempPath::new("superblock");
    create(&path.0);
    put_records(&path.0);
    xor_byte(&path.0, BLOCK_BYTES + SB_OFFSET_SEQUENCE as u64, 0x01);
    let output = strata(&["disk", "verify", path_str(&path.0), "--json"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let report = json(&output);
    let superblocks = &report["metadata"]["superblocks"];
    assert_eq!(superblocks[0]["valid"], true);
    assert_eq!(superblocks[1]["valid"], false);
    let findings = report["metadata"]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    let finding = findings[0].as_str().unwrap();
    assert!(
        finding.starts_with("superblock copy 1 is corrupt: checksum mismatch")
            && finding.ends_with("copy 0 is good (sequence 2)"),
        "{finding}"
    );
}

#[test]
fn unopenable_stores_exit_2_naming_the_file_and_each_defect() {
    let path = TempPath::new("broken");
    create(&path.0);
    for copy in 0..2 {
        xor_byte(
            &path.0,
            copy * BLOCK_BYTES + SB_OFFSET_SEQUENCE as u64,
            0x01,
        );
    }
    let shown = path_str(&path.0);
    let output = strata(&["disk", "inspect", shown]);
    assert_eq!(code(&output), 2);
    let message = stderr(&output);
    assert!(
        message.contains(shown)
            && message.contains("copy 0: checksum mismatch")
            && message.contains("copy 1: checksum mismatch"),
        "{message}"
    );
    // verify still prints what the raw check found.
    let output = strata(&["disk", "verify", shown, "--json"]);
    assert_eq!(code(&output), 2);
    let report = json(&output);
    assert_eq!(report["opened"], false);
    assert_eq!(report["findings"].as_array().unwrap().len(), 3, "{report}");

    let missing = TempPath::new("missing");
    let output = strata(&["disk", "verify", path_str(&missing.0)]);
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains(path_str(&missing.0)));
}

#[test]
fn create_refuses_bad_arguments_with_exit_2() {
    let path = TempPath::new("create");
    let shown = path_str(&path.0);
    // Not a multiple of the block size.
    let output = strata(&["disk", "create", shown, "--size", "10000"]);
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("multiple"), "{}", stderr(&output));
    assert!(!path.0.exists(), "a refused create left a file");
    // Unknown unit: a clap usage error.
    let output = strata(&["disk", "create", shown, "--size", "4 parsecs"]);
    assert_eq!(code(&output), 2);
    // Too small for the metadata and one data block.
    let output = strata(&["disk", "create", shown, "--size", "8KiB"]);
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("too small"), "{}", stderr(&output));
    assert!(!path.0.exists());
    // An existing file is kept unless --force.
    std::fs::write(&path.0, b"precious").unwrap();
    let output = strata(&["disk", "create", shown, "--size", "1MiB"]);
    assert_eq!(code(&output), 2);
    assert_eq!(std::fs::read(&path.0).unwrap(), b"precious");
    let output = strata(&[
        "disk",
        "create",
        shown,
        "--size",
        "1MiB",
        "--block-bytes",
        "1KiB",
        "--force",
    ]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report = json(&strata(&["disk", "inspect", shown, "--json"]));
    assert_eq!(report["block_bytes"], 1024);
    assert_eq!(report["device_blocks"], 1024);
}
