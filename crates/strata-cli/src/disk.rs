//! `strata disk`: create, inspect and verify extent store files.
//!
//! Exit codes: 0 when the command succeeded and (for `verify`) the store is
//! clean; 1 when `verify` found damage; 2 for usage errors and stores that
//! cannot be created or opened (the message names the file and what is
//! wrong).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};
use strata_disk::device::{FileDevice, FileOptions};
use strata_disk::record::{ChecksumKind, CodecPolicy};
use strata_disk::remap::{RemapEntry, RemapState};
use strata_disk::store::{
    check_metadata, open_file_store_readonly, ExtentStore, Layout, MetadataReport, ReadOnlyFile,
    StoreConfig, StoreReport, VerifyReport,
};
use strata_pool::budget::format_bytes;

/// Exit code: success, and for `verify` a clean store.
const EXIT_CLEAN: u8 = 0;
/// Exit code: `verify` found damage (bad records or metadata).
const EXIT_DAMAGED: u8 = 1;
/// Exit code: bad arguments, or a store that cannot be created or opened
/// (the same code clap uses for usage errors).
const EXIT_ERROR: u8 = 2;

/// Default block size of `strata disk create`: the page size and the
/// physical sector size of most current disks, so `O_DIRECT` works.
const DEFAULT_BLOCK_BYTES: u64 = 4096;
/// Default spare pool of `strata disk create`: 64 blocks (256 KiB at the
/// default block size) is far more bad blocks than a healthy disk develops,
/// and a negligible share of any useful store.
const DEFAULT_SPARE_BLOCKS: u64 = 64;
/// Spaces between table columns.
const COLUMN_GAP_CHARS: usize = 2;
/// Indentation of table rows under their section title.
const TABLE_INDENT: &str = "  ";

/// Bytes per unit of the size suffixes `strata disk create --size` accepts.
const SIZE_UNITS: [(&str, u64); 13] = [
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("t", 1 << 40),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
];

/// The `strata disk` subcommands.
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Format a new extent store in a file.
    Create {
        /// The file to create.
        path: PathBuf,
        /// Size of the store, e.g. `67108864`, `64MiB`, `1GiB` (K, M, G, T
        /// and KiB... are powers of 1024; kB, MB, GB powers of 1000).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Block size in bytes: a power of two from 512 to 1 MiB.
        #[arg(long, default_value_t = DEFAULT_BLOCK_BYTES, value_parser = parse_size)]
        block_bytes: u64,
        /// Blocks reserved to replace bad data blocks.
        #[arg(long, default_value_t = DEFAULT_SPARE_BLOCKS)]
        spares: u64,
        /// Open the file with O_DIRECT (falls back to buffered I/O where the
        /// filesystem refuses it).
        #[arg(long)]
        direct: bool,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print a store's layout, usage, spare pool and remap table. Opens the
    /// file read-only.
    Inspect {
        /// The store file.
        path: PathBuf,
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Read and verify every record and every metadata copy of a store;
    /// list what is bad. Opens the file read-only. Exit code 0: clean;
    /// 1: damage found; 2: the store cannot be opened (what could be
    /// checked is still printed).
    Verify {
        /// The store file.
        path: PathBuf,
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `strata disk` command; returns the process's exit code.
pub fn run(command: DiskCommand) -> ExitCode {
    let result = match command {
        DiskCommand::Create {
            path,
            size,
            block_bytes,
            spares,
            direct,
            force,
        } => create(&path, size, block_bytes, spares, direct, force),
        DiskCommand::Inspect { path, json } => inspect(&path, json),
        DiskCommand::Verify { path, json } => verify(&path, json),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("strata: error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Parses a byte count with an optional unit: `4096`, `64MiB`, `64 M`, `1GB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "size {text:?} does not start with a whole number of bytes"
        ));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let Some(&(_, unit_bytes)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "size {text:?} has unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, K, M, G, T, \
             kB, MB or GB)"
        ));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| format!("size {text:?} does not fit in 64 bits"))
}

/// Writes `text` to stdout.
fn print(text: &str) -> Result<(), String> {
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing the report: {e}"))
}

fn to_json_text(value: &Value) -> Result<String, String> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}

// ---------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------

fn create(
    path: &Path,
    size_bytes: u64,
    block_bytes: u64,
    spare_blocks: u64,
    direct: bool,
    force: bool,
) -> Result<u8, String> {
    let shown = path.display();
    if !force && path.exists() {
        return Err(format!(
            "{shown}: already exists (pass --force to overwrite it)"
        ));
    }
    strata_disk::device::check_geometry(size_bytes, block_bytes)
        .map_err(|e| format!("{shown}: {e}"))?;
    // Checked before the file exists, so a refused size leaves nothing behind.
    let layout = Layout::compute(size_bytes / block_bytes, block_bytes, spare_blocks)
        .map_err(|e| format!("{shown}: {e}"))?;
    let config = StoreConfig {
        cap_bytes: None,
        policy: CodecPolicy::default(),
        checksum: ChecksumKind::default(),
        spare_blocks,
    };
    let device = FileDevice::create(path, size_bytes, block_bytes, FileOptions { direct })
        .map_err(|e| format!("{shown}: {e}"))?;
    let is_direct = device.is_direct();
    if let Err(error) = ExtentStore::create(device, config) {
        // A half-formatted file is no store; do not leave it looking like one.
        let _ = std::fs::remove_file(path);
        return Err(format!("{shown}: formatting failed: {error}"));
    }
    print(&format!(
        "created {shown}: {} in {} blocks of {}; data area {} ({} blocks from block {}), {} \
         spare blocks; {} I/O\n",
        format_bytes(size_bytes),
        layout.device_blocks,
        format_bytes(block_bytes),
        format_bytes(layout.data_blocks() * block_bytes),
        layout.data_blocks(),
        layout.data_start,
        layout.spare_blocks,
        if is_direct { "direct" } else { "buffered" },
    ))?;
    Ok(EXIT_CLEAN)
}

// ---------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------

fn inspect(path: &Path, json: bool) -> Result<u8, String> {
    let store = open_file_store_readonly(path).map_err(|e| e.to_string())?;
    let report = store.inspect();
    let text = if json {
        to_json_text(&inspect_json(path, &report))?
    } else {
        inspect_text(path, &report)
    };
    print(&text)?;
    Ok(EXIT_CLEAN)
}

fn state_name(state: RemapState) -> &'static str {
    match state {
        RemapState::Active => "active",
        RemapState::Pending => "pending",
    }
}

fn entries_json(entries: &[RemapEntry]) -> Value {
    entries
        .iter()
        .map(|e| {
            json!({
                "bad_block": e.bad_block,
                "spare_block": e.spare_block,
                "state": state_name(e.state),
            })
        })
        .collect()
}

fn inspect_json(path: &Path, report: &StoreReport) -> Value {
    let layout = &report.layout;
    let stats = &report.stats;
    json!({
        "path": path.display().to_string(),
        "block_bytes": layout.block_bytes,
        "device_blocks": layout.device_blocks,
        "device_bytes": report.device_bytes(),
        "layout": report.areas.iter().map(|a| json!({
            "area": a.name,
            "first_block": a.first_block,
            "blocks": a.len_blocks,
            "bytes": a.len_blocks * layout.block_bytes,
        })).collect::<Vec<_>>(),
        "usage": {
            "capacity_bytes": stats.capacity_bytes,
            "used_bytes": stats.used_bytes,
            "free_bytes": stats.free_bytes,
            "pending_free_bytes": stats.pending_free_bytes,
            "records": stats.records,
            "cap_bytes": stats.cap_bytes,
            "sequence": stats.sequence,
            "current_slot": report.current_slot,
            "cursor_block": report.cursor_block,
            "largest_free_run_bytes": report.largest_free_run_blocks * layout.block_bytes,
        },
        "spares": {
            "total": stats.spares_total,
            "left": stats.spares_left,
            "remaps": stats.remaps,
            "pending": stats.pending,
            "bad_blocks": stats.bad_blocks,
        },
        "remap_table": {
            "sequence": report.remap_sequence,
            "entries": entries_json(&report.remap_entries),
        },
        "counters": {
            "read_errors": stats.read_errors,
            "write_errors": stats.write_errors,
            "checksum_failures": stats.checksum_failures,
        },
    })
}

/// Renders rows as columns separated by [`COLUMN_GAP_CHARS`] spaces, each
/// indented by [`TABLE_INDENT`]; `right_aligned[i]` right-aligns column `i`
/// (numbers). The header row, if any, is the first row.
fn render_table(rows: &[Vec<String>], right_aligned: &[bool]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(TABLE_INDENT);
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str(&" ".repeat(COLUMN_GAP_CHARS));
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if right_aligned.get(i).copied().unwrap_or(false) {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A two-column table of names and values.
fn render_pairs(pairs: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|(name, value)| vec![(*name).to_owned(), value.clone()])
        .collect();
    render_table(&rows, &[false, false])
}

fn blocks_text(blocks: u64, block_bytes: u64) -> String {
    format!("{} ({blocks} blocks)", format_bytes(blocks * block_bytes))
}

fn store_heading(path: &Path, layout: &Layout) -> String {
    format!(
        "store: {}\n  {} in {} blocks of {}\n",
        path.display(),
        format_bytes(layout.device_blocks * layout.block_bytes),
        layout.device_blocks,
        format_bytes(layout.block_bytes)
    )
}

fn inspect_text(path: &Path, report: &StoreReport) -> String {
    let layout = &report.layout;
    let block_bytes = layout.block_bytes;
    let stats = &report.stats;
    let mut out = store_heading(path, layout);

    out.push_str("\nlayout\n");
    let mut rows = vec![vec![
        "area".to_owned(),
        "first block".to_owned(),
        "blocks".to_owned(),
        "size".to_owned(),
    ]];
    for area in &report.areas {
        rows.push(vec![
            area.name.to_owned(),
            area.first_block.to_string(),
            area.len_blocks.to_string(),
            format_bytes(area.len_blocks * block_bytes),
        ]);
    }
    out.push_str(&render_table(&rows, &[false, true, true, true]));

    out.push_str("\nusage\n");
    let used_blocks = stats.used_bytes / block_bytes;
    out.push_str(&render_pairs(&[
        ("capacity", format_bytes(stats.capacity_bytes)),
        (
            "used",
            format!(
                "{} in {} records",
                blocks_text(used_blocks, block_bytes),
                stats.records
            ),
        ),
        (
            "free",
            blocks_text(stats.free_bytes / block_bytes, block_bytes),
        ),
        ("pending free", format_bytes(stats.pending_free_bytes)),
        (
            "largest free run",
            blocks_text(report.largest_free_run_blocks, block_bytes),
        ),
        (
            "cap",
            stats
                .cap_bytes
                .map_or_else(|| "none".to_owned(), format_bytes),
        ),
        (
            "commit",
            format!(
                "sequence {}, bitmap slot {}, next-fit cursor at block {}",
                stats.sequence, report.current_slot, report.cursor_block
            ),
        ),
    ]));

    out.push_str("\nspare pool\n");
    out.push_str(&render_pairs(&[
        ("total", blocks_text(stats.spares_total, block_bytes)),
        ("left", blocks_text(stats.spares_left, block_bytes)),
        (
            "remaps",
            format!("{} active, {} pending", stats.remaps, stats.pending),
        ),
        ("bad blocks", stats.bad_blocks.to_string()),
    ]));

    out.push_str(&format!(
        "\nremap table (sequence {})\n",
        report.remap_sequence
    ));
    if report.remap_entries.is_empty() {
        out.push_str(&format!("{TABLE_INDENT}no remapped blocks\n"));
    } else {
        let mut rows = vec![vec![
            "bad block".to_owned(),
            "spare block".to_owned(),
            "state".to_owned(),
        ]];
        for entry in &report.remap_entries {
            rows.push(vec![
                entry.bad_block.to_string(),
                entry.spare_block.to_string(),
                state_name(entry.state).to_owned(),
            ]);
        }
        out.push_str(&render_table(&rows, &[true, true, false]));
    }
    if !report.unmapped_bad_blocks.is_empty() {
        out.push_str(&format!(
            "{TABLE_INDENT}bad blocks with no spare: {:?}\n",
            report.unmapped_bad_blocks
        ));
    }

    out.push_str("\ncounters (this session)\n");
    out.push_str(&render_pairs(&[
        ("read errors", stats.read_errors.to_string()),
        ("write errors", stats.write_errors.to_string()),
        ("checksum failures", stats.checksum_failures.to_string()),
    ]));
    out
}

// ---------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------

fn verify(path: &Path, json: bool) -> Result<u8, String> {
    let device = ReadOnlyFile::open_store_file(path).map_err(|e| e.to_string())?;
    let store = match ExtentStore::open(&device, StoreConfig::for_reading()) {
        Ok(store) => store,
        Err(error) => {
            // Say what the raw check found, then why the store cannot open.
            let metadata = check_metadata(&device);
            let message = format!("{}: cannot open the store: {error}", path.display());
            let text = if json {
                let mut value = metadata_json(&metadata);
                value["path"] = json!(path.display().to_string());
                value["opened"] = json!(false);
                value["open_error"] = json!(message);
                value["clean"] = json!(false);
                to_json_text(&value)?
            } else {
                let mut text = format!("store: {}\n", path.display());
                text.push_str(&metadata_text(&metadata));
                text.push_str("\nresult: CANNOT OPEN\n");
                for finding in &metadata.findings {
                    text.push_str(&format!("{TABLE_INDENT}- {finding}\n"));
                }
                text
            };
            print(&text)?;
            return Err(message);
        }
    };
    let report = store.verify();
    let text = if json {
        to_json_text(&verify_json(path, &report))?
    } else {
        verify_text(path, store.layout(), &report)
    };
    print(&text)?;
    Ok(if report.is_clean() {
        EXIT_CLEAN
    } else {
        EXIT_DAMAGED
    })
}

fn defect_json<T: ToString>(defect: &Option<T>) -> Value {
    defect
        .as_ref()
        .map_or(Value::Null, |d| Value::String(d.to_string()))
}

fn metadata_json(metadata: &MetadataReport) -> Value {
    json!({
        "block_bytes": metadata.block_bytes,
        "device_blocks": metadata.device_blocks,
        "superblocks": metadata.superblocks.iter().map(|s| json!({
            "copy": s.copy_index,
            "valid": s.defect.is_none(),
            "sequence": s.sequence,
            "current_slot": s.current_slot,
            "defect": defect_json(&s.defect),
        })).collect::<Vec<_>>(),
        "bitmap_slots": metadata.slots.iter().map(|s| json!({
            "slot": s.slot,
            "first_block": s.first_block,
            "sequence": s.sequence,
            "valid": s.defect.is_none(),
            "len_bytes": s.len_bytes,
            "expected_checksum": s.expected_checksum,
            "actual_checksum": s.actual_checksum,
            "records": s.records,
            "allocated_blocks": s.allocated_blocks,
            "defect": defect_json(&s.defect),
        })).collect::<Vec<_>>(),
        "remap_copies": metadata.remap_copies.iter().map(|c| json!({
            "copy": c.copy_index,
            "first_block": c.first_block,
            "valid": c.defect.is_none(),
            "sequence": c.sequence,
            "crc_ok": c.crc_ok(),
            "entries": entries_json(&c.entries),
            "defect": defect_json(&c.defect),
        })).collect::<Vec<_>>(),
        "findings": metadata.findings.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn verify_json(path: &Path, report: &VerifyReport) -> Value {
    json!({
        "path": path.display().to_string(),
        "opened": true,
        "clean": report.is_clean(),
        "damage_count": report.damage_count(),
        "records_checked": report.records_checked,
        "record_bytes_checked": report.record_bytes_checked,
        "bad_records": report.bad_records.iter().map(|bad| {
            let checksums = bad.checksums();
            json!({
                "extent": {"start": bad.extent.start, "blocks": bad.extent.len},
                "kind": bad.kind(),
                "checksum": checksums.map(|(kind, _, _)| kind.to_string()),
                "expected_checksum": checksums.map(|(_, expected, _)| expected),
                "actual_checksum": checksums.map(|(_, _, actual)| actual),
                "message": bad.error.to_string(),
            })
        }).collect::<Vec<_>>(),
        "metadata": metadata_json(&report.metadata),
        "consistency": report.consistency.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// The metadata section: one row per superblock copy, checked bitmap slot
/// and remap table copy, then the findings.
fn metadata_text(metadata: &MetadataReport) -> String {
    let status = |ok: bool| if ok { "ok" } else { "BAD" }.to_owned();
    let mut rows = vec![vec![
        "area".to_owned(),
        "first block".to_owned(),
        "status".to_owned(),
        "details".to_owned(),
    ]];
    for copy in &metadata.superblocks {
        let details = match (&copy.defect, copy.sequence, copy.current_slot) {
            (Some(defect), _, _) => defect.to_string(),
            (None, Some(sequence), Some(slot)) => {
                format!("sequence {sequence}, bitmap slot {slot}")
            }
            (None, _, _) => String::new(),
        };
        rows.push(vec![
            format!("superblock copy {}", copy.copy_index),
            copy.copy_index.to_string(),
            status(copy.defect.is_none()),
            details,
        ]);
    }
    for slot in &metadata.slots {
        let details = match &slot.defect {
            Some(defect) => format!("sequence {}: {defect}", slot.sequence),
            None => format!(
                "sequence {}, {} records, {} blocks allocated, xxh3 {:#018x}",
                slot.sequence,
                slot.records.unwrap_or(0),
                slot.allocated_blocks.unwrap_or(0),
                slot.expected_checksum
            ),
        };
        rows.push(vec![
            format!("bitmap slot {}", slot.slot),
            slot.first_block.to_string(),
            status(slot.defect.is_none()),
            details,
        ]);
    }
    for copy in &metadata.remap_copies {
        let details = match (&copy.defect, copy.sequence) {
            (Some(defect), _) => defect.to_string(),
            (None, sequence) => format!(
                "sequence {}, {} entries, crc32c ok",
                sequence.unwrap_or(0),
                copy.entries.len()
            ),
        };
        rows.push(vec![
            format!("remap table copy {}", copy.copy_index),
            copy.first_block.to_string(),
            status(copy.defect.is_none()),
            details,
        ]);
    }
    let mut out = String::from("\nmetadata\n");
    out.push_str(&render_table(&rows, &[false, true, false, false]));
    out
}

fn verify_text(path: &Path, layout: &Layout, report: &VerifyReport) -> String {
    let mut out = store_heading(path, layout);
    out.push_str(&metadata_text(&report.metadata));
    out.push_str(&format!(
        "\nrecords: {} checked ({}), {} bad\n",
        report.records_checked,
        format_bytes(report.record_bytes_checked),
        report.bad_records.len()
    ));
    if !report.bad_records.is_empty() {
        let mut rows = vec![vec![
            "blocks".to_owned(),
            "length".to_owned(),
            "error".to_owned(),
            "checksum".to_owned(),
            "expected".to_owned(),
            "actual".to_owned(),
        ]];
        for bad in &report.bad_records {
            let (kind, expected, actual) = match bad.checksums() {
                Some((kind, expected, actual)) => (
                    kind.to_string(),
                    format!("{expected:#018x}"),
                    format!("{actual:#018x}"),
                ),
                None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            };
            rows.push(vec![
                format!("{}..{}", bad.extent.start, bad.extent.end()),
                bad.extent.len.to_string(),
                bad.kind().to_owned(),
                kind,
                expected,
                actual,
            ]);
        }
        out.push_str(&render_table(
            &rows,
            &[false, true, false, false, false, false],
        ));
    }
    if report.is_clean() {
        out.push_str("\nresult: clean\n");
        return out;
    }
    let problems = report.damage_count();
    let noun = if problems == 1 { "problem" } else { "problems" };
    out.push_str(&format!("\nresult: DAMAGED, {problems} {noun}\n"));
    let lines = report
        .metadata
        .findings
        .iter()
        .map(ToString::to_string)
        .chain(report.bad_records.iter().map(|bad| bad.error.to_string()))
        .chain(report.consistency.iter().map(ToString::to_string));
    for line in lines {
        out.push_str(&format!("{TABLE_INDENT}- {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64 mib"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("3kB"), Ok(3000));
        assert_eq!(parse_size("512B"), Ok(512));
        assert!(parse_size("MiB").unwrap_err().contains("whole number"));
        assert!(parse_size("1.5GiB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("64 bits"));
    }

    #[test]
    fn tables_align_numbers_right() {
        let rows = vec![
            vec!["area".to_owned(), "blocks".to_owned()],
            vec!["a long name".to_owned(), "7".to_owned()],
            vec!["x".to_owned(), "1234".to_owned()],
        ];
        let text = render_table(&rows, &[false, true]);
        assert_eq!(
            text,
            "  area         blocks\n  a long name       7\n  x              1234\n"
        );
    }
}
