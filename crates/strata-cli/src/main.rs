//! `strata`: the command-line front end of the Strata memory manager.
//!
//! This is the only crate of the workspace that prints. Results go to stdout,
//! progress lines and errors to stderr; a failure exits non-zero.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use strata_bench::{BenchOptions, BenchResult, SuiteReport};
use strata_pool::TrackingAllocator;

mod disk;
mod ooc;
mod region;
mod stats;

/// Every heap allocation of the program, counted: the `pool` suite reads
/// its live bytes to measure the pool's metadata.
#[global_allocator]
static GLOBAL: TrackingAllocator<MiMalloc> = TrackingAllocator::new(MiMalloc);

/// The program's live heap bytes, as the global allocator counts them.
fn heap_bytes() -> u64 {
    GLOBAL.stats().allocated.current_bytes
}

/// Strata: a memory manager for tensor workloads that do not fit in RAM.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a benchmark suite; every figure is verified and compared with a
    /// baseline measured in the same run.
    Bench {
        /// Suite to run (known: bitmap, pool, disk, ooc).
        suite: String,
        /// Fewer iterations: seconds instead of minutes, noisier figures.
        #[arg(long)]
        quick: bool,
        /// A few iterations of everything, to check that the suite runs
        /// and verifies; the figures mean nothing (for tests).
        #[arg(long, hide = true)]
        smoke: bool,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The main job on generated data, with no setup: two arrays 8x the
    /// budget in a temporary Zarr store, a matmul and a chained einsum,
    /// results checked against direct dot products, and the summary.
    Demo(ooc::DemoArgs),
    /// Generate an array (Zarr v3 directory, or `.npy` file).
    Create(ooc::CreateArgs),
    /// Show an array's shape, chunks, dtype, codecs and size on disk.
    Info(ooc::InfoArgs),
    /// C = A @ B out of core, within `--memory`.
    Matmul(ooc::MatmulArgs),
    /// A two-operand einsum out of core, within `--memory`.
    Einsum(ooc::EinsumArgs),
    /// A reduction (sum, mean, min, max) along axes, within `--memory`.
    Reduce(ooc::ReduceArgs),
    /// An elementwise operation of same-shaped arrays, within `--memory`.
    Map(ooc::MapArgs),
    /// Print this process's memory figures: the heap as the tracking
    /// allocator counts it, RSS, system and cgroup memory, the pressure
    /// level; with `--demo-workload`, also a pool after a short workload.
    Stats {
        /// Run a short pool workload first and include its figures.
        #[arg(long)]
        demo_workload: bool,
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Create, inspect and verify disk-tier store files (exit codes: 0
    /// clean, 1 `verify` found damage, 2 usage or open errors).
    Disk {
        #[command(subcommand)]
        command: disk::DiskCommand,
    },
    /// Build, inspect, verify, import and export region files (exit codes:
    /// 0 clean, 1 `verify` found a corrupt layer, 2 usage or read errors).
    Region {
        #[command(subcommand)]
        command: region::RegionCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench {
            suite,
            quick,
            smoke,
            json,
        } => bench(&suite, BenchMode { quick, smoke }, json),
        Command::Demo(args) => ooc::demo(&args),
        Command::Create(args) => ooc::create(&args),
        Command::Info(args) => ooc::info(&args),
        Command::Matmul(args) => ooc::matmul(&args),
        Command::Einsum(args) => ooc::einsum(&args),
        Command::Reduce(args) => ooc::reduce(&args),
        Command::Map(args) => ooc::map(&args),
        Command::Stats {
            demo_workload,
            json,
        } => print_stats(demo_workload, json),
        Command::Disk { command } => return disk::run(command),
        Command::Region { command } => return region::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("strata: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the figures of `strata stats`.
fn print_stats(demo_workload: bool, json: bool) -> Result<(), String> {
    let snapshot = if demo_workload {
        stats::demo_workload(GLOBAL.stats())?
    } else {
        stats::process_only(GLOBAL.stats())
    };
    let text = if json {
        let mut text =
            serde_json::to_string_pretty(&stats::to_json(&snapshot)).map_err(|e| e.to_string())?;
        text.push('\n');
        text
    } else {
        stats::to_text(&snapshot)
    };
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing the figures: {e}"))
}

/// How much work `strata bench` asks for.
#[derive(Clone, Copy, Debug)]
struct BenchMode {
    quick: bool,
    smoke: bool,
}

/// Runs `suite` and prints its report to stdout.
fn bench(suite: &str, mode: BenchMode, json: bool) -> Result<(), String> {
    let options = BenchOptions {
        quick: mode.quick,
        smoke: mode.smoke,
        heap_bytes: Some(heap_bytes),
    };
    let mut progress = |line: &str| eprintln!("  .. {line}");
    let report =
        strata_bench::run_suite(suite, &options, &mut progress).map_err(|e| e.to_string())?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        text.push('\n');
        text
    } else {
        render_table(&report)
    };
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing the report: {e}"))
}

/// Column headers of the table.
const HEADERS: [&str; 7] = [
    "name",
    "metric",
    "value",
    "unit",
    "baseline",
    "baseline value",
    "ratio",
];
/// Spaces between table columns.
const COLUMN_GAP_CHARS: usize = 2;

/// The report as an aligned text table followed by its notes.
fn render_table(report: &SuiteReport) -> String {
    let rows: Vec<[String; 7]> = report.results.iter().map(table_row).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Text columns align left, numbers right.
    let right_aligned = [false, false, true, false, false, true, true];
    let mut out = format!("suite: {}\n\n", report.suite);
    let headers = HEADERS.map(str::to_owned);
    for row in std::iter::once(&headers).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str(&" ".repeat(COLUMN_GAP_CHARS));
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if right_aligned[i] {
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
    if !report.notes.is_empty() {
        out.push_str("\nnotes:\n");
        for note in &report.notes {
            out.push_str("- ");
            out.push_str(note);
            out.push('\n');
        }
    }
    out
}

fn table_row(result: &BenchResult) -> [String; 7] {
    let missing = || "-".to_owned();
    [
        result.name.clone(),
        result.metric.clone(),
        format_value(result.value),
        result.unit.clone(),
        result.baseline.clone().unwrap_or_else(missing),
        result.baseline_value.map_or_else(missing, format_value),
        result.ratio.map_or_else(missing, format_ratio),
    ]
}

/// Three significant digits for small values, whole numbers for large ones.
fn format_value(value: f64) -> String {
    if !value.is_finite() {
        format!("{value}")
    } else if value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Significant digits shown for a ratio.
const RATIO_SIGNIFICANT_DIGITS: i32 = 3;

/// A ratio with three significant digits but at least three decimals, so
/// that both `0.000216` and `1.250` stay readable.
fn format_ratio(ratio: f64) -> String {
    if !ratio.is_finite() || ratio == 0.0 {
        return format!("{ratio}");
    }
    let magnitude = ratio.abs().log10().floor() as i32;
    let decimals =
        (RATIO_SIGNIFICANT_DIGITS - 1 - magnitude).max(RATIO_SIGNIFICANT_DIGITS) as usize;
    format!("{ratio:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let base = BenchResult::new("flat", "median", 2000.0, "ns");
        let row = BenchResult::new("a longer name", "median", 12.5, "ns").against(&base);
        let report = SuiteReport {
            suite: "bitmap".into(),
            results: vec![row, base],
            notes: vec!["a note".into()],
        };
        let table = render_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "suite: bitmap");
        let header = lines[2];
        let first = lines[3];
        // The value column ends at the same place on every line.
        let value_end = header.find("value").unwrap() + "value".len();
        assert_eq!(&first[value_end - "12.50".len()..value_end], "12.50");
        assert!(first.ends_with("0.00625"), "{first}");
        assert!(lines[4].ends_with('-'), "{}", lines[4]);
        assert!(table.contains("- a note"));
    }

    #[test]
    fn values_are_formatted_by_size() {
        assert_eq!(format_value(1.23456), "1.23");
        assert_eq!(format_value(123.456), "123.5");
        assert_eq!(format_value(12_345_678.9), "12345679");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(format_ratio(0.000_216_04), "0.000216");
        assert_eq!(format_ratio(0.0625), "0.0625");
        assert_eq!(format_ratio(0.25), "0.250");
        assert_eq!(format_ratio(1.25), "1.250");
        assert_eq!(format_ratio(37.5), "37.500");
        assert_eq!(format_ratio(0.0), "0");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
