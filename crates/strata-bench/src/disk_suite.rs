//! The `disk` suite: the disk tier's spill path against plain file I/O of
//! the same bytes, the cost of record checksums, and the bad-block
//! remapping structures, every ratio measured in the same run as its
//! baseline.
//!
//! 1. Spill throughput: records of incompressible random bytes are `put`
//!    into an [`ExtentStore`] over a [`FileDevice`] (buffered, and with
//!    `O_DIRECT` where the filesystem accepts it; policy
//!    [`CodecPolicy::Auto`], which must store them raw) and committed; the
//!    baseline writes the same bytes to a plain [`File`] with `write_all`
//!    and `sync_data`. Then every record is read back (`get` against
//!    `read_exact`) and compared with what was written. Rounds of the
//!    variants are interleaved; the rows are medians over rounds, in MB/s
//!    (10^6 bytes per second of raw payload).
//! 2. Compressible data (zeros, and a smooth sine quantized to 4 bits as
//!    `f32`): the same, buffered only, with the stored size (whole blocks)
//!    over the raw size.
//! 3. Checksum cost, two ways. On the spill path: the buffered store's
//!    round trip (puts + commit, then `get_into` of every record) against
//!    the same less the xxh3 time it spent, each checksum timed alone over
//!    the same bytes in the same run. In memory, for reference:
//!    [`record::encode_into`] + [`record::decode_into`] of an incompressible
//!    record with policy `None` and each checksum, against the same copies
//!    without any checksum (this bounds the cost where the device is as
//!    fast as memory).
//! 4. Spare allocation ([`SparePool::take`]) and remap lookups
//!    ([`RemapTable::lookup`], [`RemapView::lookup`]), hits and misses, in
//!    ns per call.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use strata_disk::device::{FileDevice, FileOptions};
use strata_disk::record::{
    self, ChecksumKind, Codec, CodecPolicy, Dtype, RecordLocation, RecordMeta, HEADER_LEN_BYTES,
};
use strata_disk::remap::{RemapTable, SparePool};
use strata_disk::store::{Extent, ExtentStore, ReadBuf, StoreConfig};
use strata_disk::writer::SpillWriter;

use crate::scratch::{DropCaches, TempDir};
use crate::stats::median;
use crate::{
    BenchError, BenchOptions, BenchResult, SuiteReport, METRIC_MEDIAN, METRIC_THROUGHPUT,
    METRIC_TOTAL, UNIT_MB_PER_S, UNIT_MS, UNIT_NS, UNIT_RATIO,
};

/// This suite's name in [`crate::SUITES`].
const SUITE: &str = "disk";
/// Seed of every random choice in the suite; printed in the notes.
const SEED: u64 = 0x5354_5241_5441_0004;

/// Target: store throughput over plain file I/O of the same bytes.
const TARGET_SPILL_OVER_PLAIN: f64 = 0.90;
/// Target: the spill round trip with checksums over the same without (and,
/// for reference, in-memory encode+decode over copies alone).
const TARGET_CHECKSUM_OVERHEAD: f64 = 1.05;
/// Target: ns per spare taken and per remap lookup.
const TARGET_REMAP_NS: f64 = 100.0;

/// Block size of every device of the suite.
const BLOCK_BYTES: u64 = 4096;
/// Spare blocks reserved by every store of the suite.
const STORE_SPARE_BLOCKS: u64 = 64;
/// Bytes per megabyte in the MB/s rows.
const BYTES_PER_MB: f64 = 1e6;
/// Quantization levels of the low-entropy sine (4 bits).
const SINE_LEVELS: f32 = 16.0;
/// Period of the sine, in elements.
const SINE_PERIOD_ELEMENTS: usize = 4096;

/// Spares in the pool of the spare benchmark.
const SPARE_POOL_BLOCKS: u64 = 65_536;
/// First block of that pool (as if after a data area).
const SPARE_POOL_START: u64 = 1 << 20;
/// Entries of the remap table of the lookup benchmark.
const REMAP_TABLE_ENTRIES: u64 = 4096;
/// Calls timed together by one pair of clock reads.
const CALLS_PER_BATCH: usize = 1024;

const _: () = assert!(SPARE_POOL_BLOCKS.is_multiple_of(CALLS_PER_BATCH as u64));
const _: () = assert!(REMAP_TABLE_ENTRIES <= SPARE_POOL_BLOCKS);
const _: () = assert!(TARGET_SPILL_OVER_PLAIN > 0.0 && TARGET_SPILL_OVER_PLAIN <= 1.0);

/// How much work each benchmark does.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// Raw bytes of one spill record.
    record_bytes: usize,
    /// Records per spill round.
    records: usize,
    /// Length of each store's device.
    device_bytes: u64,
    /// Interleaved rounds of the incompressible spill.
    spill_rounds: usize,
    /// Interleaved rounds of each compressible spill.
    compressible_rounds: usize,
    /// Timed encode+decode calls of each checksum variant.
    checksum_samples: usize,
    /// Fresh spare pools drained, each fully.
    spare_rounds: usize,
    /// Passes over the remap table's hits (and as many over misses).
    lookup_rounds: usize,
    /// Whether to drop the page cache before read phases.
    drop_caches: bool,
}

/// Tiny sizes, to check the suite end to end (tests).
const BUDGET_SMOKE: Budget = Budget {
    record_bytes: 256 << 10,
    records: 4,
    device_bytes: 8 << 20,
    spill_rounds: 2,
    compressible_rounds: 1,
    checksum_samples: 3,
    spare_rounds: 1,
    lookup_rounds: 1,
    // Dropping the whole machine's cache from a test would slow everyone.
    drop_caches: false,
};

/// `--quick`.
const BUDGET_QUICK: Budget = Budget {
    record_bytes: 4 << 20,
    records: 32,
    device_bytes: 256 << 20,
    spill_rounds: 3,
    compressible_rounds: 3,
    checksum_samples: 31,
    spare_rounds: 5,
    lookup_rounds: 20,
    drop_caches: true,
};

/// The default (full) run.
const BUDGET_FULL: Budget = Budget {
    record_bytes: 4 << 20,
    records: 64,
    device_bytes: 1 << 30,
    spill_rounds: 7,
    compressible_rounds: 5,
    checksum_samples: 101,
    spare_rounds: 21,
    lookup_rounds: 200,
    drop_caches: true,
};

// Every budget's records fit its device with a quarter to spare for the
// metadata area (superblocks, bitmap slots, remap copies, spares).
const _: () = assert!(fits(&BUDGET_SMOKE) && fits(&BUDGET_QUICK) && fits(&BUDGET_FULL));

const fn fits(budget: &Budget) -> bool {
    let padded =
        (budget.record_bytes as u64 + HEADER_LEN_BYTES as u64).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    padded * budget.records as u64 * 5 / 4 <= budget.device_bytes
}

pub(crate) fn run(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SuiteReport, BenchError> {
    let (budget, mode) = options.pick(BUDGET_SMOKE, BUDGET_QUICK, BUDGET_FULL);
    let mut report = SuiteReport {
        suite: SUITE.to_owned(),
        results: Vec::new(),
        notes: vec![
            format!("mode {mode}; seed {SEED:#x}; every baseline is measured in this same run"),
            "ratio = value / baseline_value: above 1 is better for MB/s rows, \
             below 1 is better for ns rows"
                .to_owned(),
        ],
    };
    let dir = TempDir::create("disk")?;
    report.notes.push(format!(
        "files in {} (removed at the end); blocks of {BLOCK_BYTES} B; records of {} B",
        dir.path.display(),
        budget.record_bytes
    ));
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut drops = DropCaches::new(budget.drop_caches);

    progress("disk: spill of incompressible data");
    let random = Dataset::random(&budget, &mut rng);
    spill_benchmark(&budget, &random, &dir, &mut drops, &mut report)?;
    drop(random);
    for dataset in [Dataset::zeros(&budget), Dataset::sine(&budget)] {
        progress(&format!("disk: spill of {}", dataset.name));
        spill_benchmark(&budget, &dataset, &dir, &mut drops, &mut report)?;
    }
    report.notes.push(drops.note(
        "before every read phase",
        "reads of the store (buffered) and of the plain file come from the page cache",
    ));

    progress("disk: checksum cost");
    checksum_benchmark(&budget, &mut rng, &mut report)?;
    progress("disk: spare allocation and remap lookup");
    spare_benchmark(&budget, &mut report)?;
    lookup_benchmark(&budget, &mut rng, &mut report)?;
    Ok(report)
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The records one spill round writes.
struct Dataset {
    name: &'static str,
    meta: RecordMeta,
    records: Vec<Vec<u8>>,
    /// Whether `Auto` must store the records raw.
    incompressible: bool,
}

impl Dataset {
    fn random(budget: &Budget, rng: &mut SmallRng) -> Self {
        let records = (0..budget.records)
            .map(|_| {
                let mut bytes = vec![0u8; budget.record_bytes];
                rng.fill_bytes(&mut bytes);
                bytes
            })
            .collect();
        Dataset {
            name: "random",
            meta: bytes_meta(budget.record_bytes),
            records,
            incompressible: true,
        }
    }

    fn zeros(budget: &Budget) -> Self {
        Dataset {
            name: "zeros",
            meta: bytes_meta(budget.record_bytes),
            records: vec![vec![0u8; budget.record_bytes]; budget.records],
            incompressible: false,
        }
    }

    fn sine(budget: &Budget) -> Self {
        let elements = budget.record_bytes / 4;
        let record: Vec<u8> = (0..elements)
            .flat_map(|i| {
                let phase = (i % SINE_PERIOD_ELEMENTS) as f32 / SINE_PERIOD_ELEMENTS as f32;
                let value = (phase * std::f32::consts::TAU).sin();
                let quantized = (value * (SINE_LEVELS / 2.0)).round() / (SINE_LEVELS / 2.0);
                quantized.to_le_bytes()
            })
            .collect();
        Dataset {
            name: "sine f32 4-bit",
            meta: RecordMeta {
                dtype: Dtype::F32,
                shape: vec![elements as u64],
            },
            records: vec![record; budget.records],
            incompressible: false,
        }
    }

    fn raw_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.len() as u64).sum()
    }
}

fn bytes_meta(len_bytes: usize) -> RecordMeta {
    RecordMeta {
        dtype: Dtype::Bytes,
        shape: vec![len_bytes as u64],
    }
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / BYTES_PER_MB / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// `ratio` against a lower bound (higher is better).
fn verdict_at_least(ratio: Option<f64>, target: f64) -> String {
    match ratio {
        Some(ratio) => format!(
            "{ratio:.3} ({})",
            if ratio >= target { "met" } else { "missed" }
        ),
        None => "- (no figure)".to_owned(),
    }
}

/// `value` against an upper bound (lower is better).
fn verdict_at_most(value: Option<f64>, target: f64) -> String {
    match value {
        Some(value) => format!(
            "{value:.3} ({})",
            if value <= target { "met" } else { "missed" }
        ),
        None => "- (no figure)".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// 1 and 2. Spill throughput
// ---------------------------------------------------------------------------

/// Where one spill round writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// The store over a buffered file device.
    StoreBuffered,
    /// The store over an `O_DIRECT` file device.
    StoreDirect,
    /// The store over a buffered file device, written through a
    /// [`SpillWriter`] (encoding and writing on its thread).
    StoreWriter,
    /// A plain file: `write_all` + `sync_data`, `read_exact`.
    Plain,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::StoreBuffered => "store buffered",
            Variant::StoreDirect => "store O_DIRECT",
            Variant::StoreWriter => "store buffered, SpillWriter",
            Variant::Plain => "plain file",
        }
    }
}

/// One round's timings of a variant.
struct RoundTimes {
    write: Duration,
    read: Duration,
    /// Stored bytes (whole blocks), for the store variants.
    stored_bytes: u64,
}

fn spill_benchmark(
    budget: &Budget,
    dataset: &Dataset,
    dir: &TempDir,
    drops: &mut DropCaches,
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let bench = format!("spill {}", dataset.name);
    let mut variants = vec![Variant::StoreBuffered, Variant::Plain];
    if dataset.incompressible {
        variants.insert(1, Variant::StoreWriter);
    }
    let rounds = if dataset.incompressible {
        // Ask for O_DIRECT; keep the variant only if the filesystem accepts it.
        let probe_path = dir.file("probe-direct");
        let direct = FileDevice::create(
            &probe_path,
            BLOCK_BYTES * 16,
            BLOCK_BYTES,
            FileOptions { direct: true },
        )
        .map_err(|e| BenchError::Setup {
            bench: bench.clone(),
            detail: format!("O_DIRECT probe device: {e}"),
        })?
        .is_direct();
        let _ = std::fs::remove_file(&probe_path);
        if direct {
            variants.insert(1, Variant::StoreDirect);
        } else {
            report.notes.push(format!(
                "{bench}: O_DIRECT refused by the filesystem of {}; no O_DIRECT rows",
                dir.path.display()
            ));
        }
        budget.spill_rounds
    } else {
        budget.compressible_rounds
    };
    let mut times: Vec<Vec<RoundTimes>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        // Rotate the order so no variant always runs first.
        for offset in 0..variants.len() {
            let index = (round + offset) % variants.len();
            let variant = variants[index];
            let path = dir.file(&format!("spill-{}", index));
            let timed = match variant {
                Variant::Plain => plain_round(dataset, &path, drops),
                Variant::StoreBuffered | Variant::StoreDirect | Variant::StoreWriter => {
                    store_round(budget, dataset, &path, variant, drops)
                }
            };
            let _ = std::fs::remove_file(&path);
            let timed = timed.map_err(|detail| BenchError::Verification {
                bench: format!("{bench} {}", variant.label()),
                detail: format!("round {round}: {detail}"),
            })?;
            times[index].push(timed);
        }
    }

    let raw_bytes = dataset.raw_bytes();
    let prefix = format!(
        "spill {} {}x{} KiB",
        dataset.name,
        dataset.records.len(),
        budget.record_bytes >> 10
    );
    let row = |phase: &str, variant: Variant, runs: &[RoundTimes]| {
        let samples: Vec<f64> = runs
            .iter()
            .map(|t| mb_per_s(raw_bytes, if phase == "write" { t.write } else { t.read }))
            .collect();
        BenchResult::new(
            format!("{prefix} {phase}: {}", variant.label()),
            METRIC_THROUGHPUT,
            median(&samples).unwrap_or(0.0),
            UNIT_MB_PER_S,
        )
    };
    let plain_index = variants.iter().position(|&v| v == Variant::Plain).unwrap();
    for phase in ["write", "read"] {
        let baseline = row(phase, Variant::Plain, &times[plain_index]);
        for (index, &variant) in variants.iter().enumerate() {
            if variant == Variant::Plain {
                continue;
            }
            let result = row(phase, variant, &times[index]).against(&baseline);
            if dataset.incompressible {
                report.notes.push(format!(
                    "{}: ratio {} against target >= {TARGET_SPILL_OVER_PLAIN}",
                    result.name,
                    verdict_at_least(result.ratio, TARGET_SPILL_OVER_PLAIN)
                ));
            }
            report.results.push(result);
        }
        report.results.push(baseline);
    }
    if dataset.incompressible {
        checksum_share(budget, dataset, &prefix, &times[0], report);
    }
    if !dataset.incompressible {
        let stored = times[0].first().map_or(0, |t| t.stored_bytes);
        report.results.push(BenchResult::new(
            format!("{prefix}: stored / raw bytes (auto)"),
            METRIC_TOTAL,
            stored as f64 / raw_bytes as f64,
            UNIT_RATIO,
        ));
    }
    let write_what = if dataset.incompressible {
        "random bytes, policy auto (verified stored raw)"
    } else {
        "policy auto (lz4 where it saves >= 10%)"
    };
    report.notes.push(format!(
        "{prefix}: {write_what}; MB/s of raw payload, median of {rounds} interleaved rounds; \
         store write = every put + commit (data flushed; SpillWriter: every submit + commit), \
         plain write = write_all of each record + sync_data; reads = get_into of every record \
         into one reused ReadBuf (checksums verified, raw payload not copied) vs read_exact \
         into one reused buffer; \
         every record read back compared with what was written"
    ));
    Ok(())
}

fn store_round(
    budget: &Budget,
    dataset: &Dataset,
    path: &Path,
    variant: Variant,
    drops: &mut DropCaches,
) -> Result<RoundTimes, String> {
    let options = FileOptions {
        direct: variant == Variant::StoreDirect,
    };
    let device = FileDevice::create(path, budget.device_bytes, BLOCK_BYTES, options)
        .map_err(|e| format!("create device: {e}"))?;
    if device.is_direct() != options.direct {
        return Err(format!(
            "device is_direct() = {} but {} was asked",
            device.is_direct(),
            options.direct
        ));
    }
    let config = StoreConfig {
        cap_bytes: None,
        policy: CodecPolicy::Auto,
        checksum: ChecksumKind::Xxh3,
        spare_blocks: STORE_SPARE_BLOCKS,
    };
    let mut store =
        ExtentStore::create(device, config).map_err(|e| format!("create store: {e}"))?;
    let mut extents: Vec<Extent> = Vec::with_capacity(dataset.records.len());
    let write = if variant == Variant::StoreWriter {
        // The caller hands its buffers over; the copies are made untimed.
        let owned: Vec<Vec<u8>> = dataset.records.clone();
        let writer = SpillWriter::new(store).map_err(|e| format!("start writer: {e}"))?;
        let start = Instant::now();
        let tickets: Vec<_> = owned
            .into_iter()
            .map(|payload| writer.submit(payload, dataset.meta.clone()))
            .collect();
        writer.commit().map_err(|e| format!("writer commit: {e}"))?;
        let write = start.elapsed();
        for (index, ticket) in tickets.into_iter().enumerate() {
            extents.push(
                ticket
                    .wait()
                    .map_err(|e| format!("writer put of record {index}: {e}"))?,
            );
        }
        store = writer.into_store();
        write
    } else {
        let start = Instant::now();
        for (index, payload) in dataset.records.iter().enumerate() {
            let extent = store
                .put(payload, &dataset.meta)
                .map_err(|e| format!("put of record {index}: {e}"))?;
            extents.push(extent);
        }
        store.commit().map_err(|e| format!("commit: {e}"))?;
        start.elapsed()
    };
    let stats = store.stats();
    if stats.records != dataset.records.len() as u64 {
        return Err(format!(
            "store holds {} records after {} puts",
            stats.records,
            dataset.records.len()
        ));
    }
    let stored_bytes: u64 = extents.iter().map(|e| e.len * BLOCK_BYTES).sum();
    if stats.used_bytes < stored_bytes {
        return Err(format!(
            "store uses {} bytes, less than its records' {stored_bytes}",
            stats.used_bytes
        ));
    }

    drops.drop_now();
    let mut read = Duration::ZERO;
    let mut buf = ReadBuf::new();
    for (index, (extent, payload)) in extents.iter().zip(&dataset.records).enumerate() {
        let start = Instant::now();
        let view = store
            .get_into(*extent, &mut buf)
            .map_err(|e| format!("get_into of record {index} at {extent:?}: {e}"))?;
        read += start.elapsed();
        if view.payload() != payload.as_slice() {
            return Err(format!(
                "record {index} at {extent:?} read back differs from what was written \
                 ({} bytes read, {} written)",
                view.payload().len(),
                payload.len()
            ));
        }
        if dataset.incompressible && view.codec() != Codec::None {
            return Err(format!(
                "record {index} of random bytes was stored with {} instead of raw",
                view.codec()
            ));
        }
        if *view.meta() != dataset.meta {
            return Err(format!(
                "record {index}: meta {:?} read back, {:?} written",
                view.meta(),
                dataset.meta
            ));
        }
    }
    store.check_invariants();
    Ok(RoundTimes {
        write,
        read,
        stored_bytes,
    })
}

/// The checksums' share of the buffered store's spill round trip (every
/// put + commit, then every get_into), measured in the same run: the time to
/// compute each checksum over the records' bytes twice (once when a record is
/// encoded, once when it is verified on read) is timed on its own, and the
/// rows compare the round trip with checksum against the round trip less the
/// xxh3 time the store spent (the record format has no checksum-off switch).
fn checksum_share(
    budget: &Budget,
    dataset: &Dataset,
    prefix: &str,
    store_times: &[RoundTimes],
    report: &mut SuiteReport,
) {
    let round_trip_ms: Vec<f64> = store_times
        .iter()
        .map(|t| (t.write + t.read).as_secs_f64() * 1e3)
        .collect();
    let round_trip = median(&round_trip_ms).unwrap_or(0.0);
    let checksum_ms = |kind: ChecksumKind| {
        let samples: Vec<f64> = (0..budget.spill_rounds.max(1))
            .map(|_| {
                let start = Instant::now();
                let mut fold = 0u64;
                for _pass in 0..2 {
                    for record in &dataset.records {
                        fold ^= kind.compute(record);
                    }
                }
                std::hint::black_box(fold);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        median(&samples).unwrap_or(0.0)
    };
    let xxh3 = checksum_ms(ChecksumKind::Xxh3);
    let crc32c = checksum_ms(ChecksumKind::Crc32c);
    let without = (round_trip - xxh3).max(f64::MIN_POSITIVE);
    let baseline = BenchResult::new(
        format!("{prefix} round trip: store buffered less its xxh3 time"),
        METRIC_MEDIAN,
        without,
        UNIT_MS,
    );
    for (kind, cost) in [(ChecksumKind::Xxh3, xxh3), (ChecksumKind::Crc32c, crc32c)] {
        let result = BenchResult::new(
            format!("{prefix} round trip: store buffered with {kind} checksums"),
            METRIC_MEDIAN,
            without + cost,
            UNIT_MS,
        )
        .against(&baseline);
        report.notes.push(format!(
            "{}: ratio {} against target <= {TARGET_CHECKSUM_OVERHEAD}",
            result.name,
            verdict_at_most(result.ratio, TARGET_CHECKSUM_OVERHEAD)
        ));
        report.results.push(result);
    }
    report.results.push(baseline);
    report.notes.push(format!(
        "{prefix} round trip rows: median store-buffered round trip (put + commit, then \
         get_into of every record) {round_trip:.2} ms; checksum time over the records' bytes, \
         twice (encode and verify), timed alone in this run: xxh3 {xxh3:.2} ms, crc32c \
         {crc32c:.2} ms (median of {} passes); baseline = round trip - xxh3 time (the store \
         checksums with xxh3), rows = baseline + each checksum's time",
        budget.spill_rounds.max(1)
    ));
}

fn plain_round(
    dataset: &Dataset,
    path: &Path,
    drops: &mut DropCaches,
) -> Result<RoundTimes, String> {
    let start = Instant::now();
    let mut file = File::create(path).map_err(|e| format!("create: {e}"))?;
    for (index, payload) in dataset.records.iter().enumerate() {
        file.write_all(payload)
            .map_err(|e| format!("write_all of record {index}: {e}"))?;
    }
    file.sync_data().map_err(|e| format!("sync_data: {e}"))?;
    let write = start.elapsed();
    drop(file);

    drops.drop_now();
    let mut file = File::open(path).map_err(|e| format!("open: {e}"))?;
    let mut buf = vec![0u8; dataset.records.first().map_or(0, Vec::len)];
    let mut read = Duration::ZERO;
    for (index, payload) in dataset.records.iter().enumerate() {
        buf.resize(payload.len(), 0);
        let start = Instant::now();
        file.read_exact(&mut buf)
            .map_err(|e| format!("read_exact of record {index}: {e}"))?;
        read += start.elapsed();
        if buf != *payload {
            return Err(format!(
                "record {index} read back differs from what was written"
            ));
        }
    }
    Ok(RoundTimes {
        write,
        read,
        stored_bytes: dataset.raw_bytes(),
    })
}

// ---------------------------------------------------------------------------
// 3. Checksum cost
// ---------------------------------------------------------------------------

fn checksum_benchmark(
    budget: &Budget,
    rng: &mut SmallRng,
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let bench = "checksum";
    let mut payload = vec![0u8; budget.record_bytes];
    rng.fill_bytes(&mut payload);
    let meta = bytes_meta(payload.len());
    let location = RecordLocation {
        start_block: 0,
        len_blocks: 0,
    };
    let kinds = [None, Some(ChecksumKind::Xxh3), Some(ChecksumKind::Crc32c)];
    let mut samples: Vec<Vec<f64>> = kinds.iter().map(|_| Vec::new()).collect();
    let mut encoded: Vec<u8> = Vec::with_capacity(payload.len() + HEADER_LEN_BYTES);
    let mut decoded: Vec<u8> = Vec::with_capacity(payload.len());
    let header_placeholder = [0u8; HEADER_LEN_BYTES];
    // One untimed pass of each warms the buffers and caches.
    for sample in 0..=budget.checksum_samples {
        for offset in 0..kinds.len() {
            let index = (sample + offset) % kinds.len();
            encoded.clear();
            decoded.clear();
            let start = Instant::now();
            match kinds[index] {
                None => {
                    encoded.extend_from_slice(&header_placeholder);
                    encoded.extend_from_slice(&payload);
                    decoded.extend_from_slice(&encoded[HEADER_LEN_BYTES..]);
                }
                Some(kind) => {
                    record::encode_into(&payload, &meta, CodecPolicy::None, kind, &mut encoded)
                        .map_err(|e| BenchError::Verification {
                            bench: bench.to_owned(),
                            detail: format!("encode with {kind}: {e}"),
                        })?;
                    record::decode_into(&encoded, location, &mut decoded).map_err(|e| {
                        BenchError::Verification {
                            bench: bench.to_owned(),
                            detail: format!("decode with {kind}: {e}"),
                        }
                    })?;
                }
            }
            let elapsed = start.elapsed();
            if decoded != payload || encoded.len() != HEADER_LEN_BYTES + payload.len() {
                return Err(BenchError::Verification {
                    bench: bench.to_owned(),
                    detail: format!(
                        "{:?}: {} bytes encoded, {} decoded, payload {} (decoded equal: {})",
                        kinds[index],
                        encoded.len(),
                        decoded.len(),
                        payload.len(),
                        decoded == payload
                    ),
                });
            }
            if sample > 0 {
                samples[index].push(elapsed.as_nanos() as f64);
            }
        }
    }
    let label = |kind: Option<ChecksumKind>| match kind {
        None => "copy only, no checksum".to_owned(),
        Some(kind) => format!("{kind}"),
    };
    let prefix = format!("encode+decode {} KiB raw", budget.record_bytes >> 10);
    let baseline = BenchResult::new(
        format!("{prefix}: {}", label(None)),
        METRIC_MEDIAN,
        median(&samples[0]).unwrap_or(0.0),
        UNIT_NS,
    );
    for (index, &kind) in kinds.iter().enumerate().skip(1) {
        let result = BenchResult::new(
            format!("{prefix}: {}", label(kind)),
            METRIC_MEDIAN,
            median(&samples[index]).unwrap_or(0.0),
            UNIT_NS,
        )
        .against(&baseline);
        report.notes.push(format!(
            "{}: ratio {} against target <= {TARGET_CHECKSUM_OVERHEAD}",
            result.name,
            verdict_at_most(result.ratio, TARGET_CHECKSUM_OVERHEAD)
        ));
        report.results.push(result);
    }
    report.results.push(baseline);
    report.notes.push(format!(
        "{prefix}: in memory, random bytes, median of {} interleaved calls; the checksum rows \
         are record::encode_into (policy none) + record::decode_into, reusing their buffers; \
         the record format has no checksum-off switch, so the baseline does the same copies \
         without one: extend_from_slice of a {HEADER_LEN_BYTES}-byte header placeholder and \
         the payload into the encode buffer, then of the payload into the decode buffer \
         (it builds no header: the header's own xxh3 over 120 bytes is part of the cost \
         measured); every decoded payload compared with the original",
        budget.checksum_samples
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Spare allocation and remap lookup
// ---------------------------------------------------------------------------

fn spare_benchmark(budget: &Budget, report: &mut SuiteReport) -> Result<(), BenchError> {
    let bench = "spare take";
    let verification = |detail: String| BenchError::Verification {
        bench: bench.to_owned(),
        detail,
    };
    let mut batch_ns: Vec<f64> = Vec::new();
    let mut taken = vec![0u64; SPARE_POOL_BLOCKS as usize];
    for round in 0..budget.spare_rounds {
        let mut pool = SparePool::new(SPARE_POOL_START, SPARE_POOL_BLOCKS)
            .map_err(|e| verification(format!("new pool: {e}")))?;
        let mut seen = vec![false; SPARE_POOL_BLOCKS as usize];
        for batch in taken.chunks_mut(CALLS_PER_BATCH) {
            let start = Instant::now();
            for slot in batch.iter_mut() {
                *slot = pool.take().unwrap_or(u64::MAX);
            }
            batch_ns.push(start.elapsed().as_nanos() as f64 / CALLS_PER_BATCH as f64);
        }
        for (index, &block) in taken.iter().enumerate() {
            let offset = block.wrapping_sub(SPARE_POOL_START);
            if offset >= SPARE_POOL_BLOCKS {
                return Err(verification(format!(
                    "round {round}: take {index} returned {block}, outside the pool \
                     {SPARE_POOL_START}+{SPARE_POOL_BLOCKS} (u64::MAX: refused)"
                )));
            }
            if std::mem::replace(&mut seen[offset as usize], true) {
                return Err(verification(format!(
                    "round {round}: spare {block} handed out twice (take {index})"
                )));
            }
        }
        if pool.spares_left() != 0 || pool.take().is_ok() {
            return Err(verification(format!(
                "round {round}: pool not exhausted after {SPARE_POOL_BLOCKS} takes \
                 ({} left)",
                pool.spares_left()
            )));
        }
        pool.check_invariants();
    }
    let result = BenchResult::new(
        format!("SparePool::take, pool of {SPARE_POOL_BLOCKS}"),
        METRIC_MEDIAN,
        median(&batch_ns).unwrap_or(0.0),
        UNIT_NS,
    );
    report.notes.push(format!(
        "{}: {} ns against target <= {TARGET_REMAP_NS} ns; median over batches of \
         {CALLS_PER_BATCH} takes, {} pools drained fully, every spare handed out once, \
         then refused",
        result.name,
        verdict_at_most(Some(result.value), TARGET_REMAP_NS),
        budget.spare_rounds
    ));
    report.results.push(result);
    Ok(())
}

fn lookup_benchmark(
    budget: &Budget,
    rng: &mut SmallRng,
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let bench = "remap lookup";
    let verification = |detail: String| BenchError::Verification {
        bench: bench.to_owned(),
        detail,
    };
    // Bad blocks spread over a data area, every other block of 2 * entries
    // picked at random; the blocks between them are the misses.
    let data_blocks = REMAP_TABLE_ENTRIES * 4;
    let mut candidates: Vec<u64> = (0..data_blocks).collect();
    candidates.shuffle(rng);
    let bad: Vec<u64> = candidates[..REMAP_TABLE_ENTRIES as usize].to_vec();
    let misses: Vec<u64> =
        candidates[REMAP_TABLE_ENTRIES as usize..][..REMAP_TABLE_ENTRIES as usize].to_vec();
    let mut table = RemapTable::new(REMAP_TABLE_ENTRIES as usize);
    let mut pool = SparePool::new(SPARE_POOL_START, SPARE_POOL_BLOCKS)
        .map_err(|e| verification(format!("new pool: {e}")))?;
    let mut expected = Vec::with_capacity(bad.len());
    for &block in &bad {
        let spare = pool
            .take()
            .map_err(|e| verification(format!("take: {e}")))?;
        table
            .begin(block, spare)
            .map_err(|e| verification(format!("begin({block}, {spare}): {e}")))?;
        expected.push(spare);
    }
    let activated = table.activate_pending();
    if activated != bad.len() {
        return Err(verification(format!(
            "activate_pending activated {activated} of {} entries",
            bad.len()
        )));
    }
    table.check_invariants();
    let view = table.view();

    let mut results: Vec<Option<u64>> = vec![None; CALLS_PER_BATCH];
    let mut rows = Vec::new();
    for (what, keys) in [("hit", &bad), ("miss", &misses)] {
        for via in ["RemapTable", "RemapView"] {
            let mut batch_ns = Vec::new();
            for round in 0..budget.lookup_rounds {
                for (chunk_index, chunk) in keys.chunks(CALLS_PER_BATCH).enumerate() {
                    let start = Instant::now();
                    if via == "RemapTable" {
                        for (slot, &block) in results.iter_mut().zip(chunk) {
                            *slot = table.lookup(block);
                        }
                    } else {
                        for (slot, &block) in results.iter_mut().zip(chunk) {
                            *slot = view.lookup(block);
                        }
                    }
                    batch_ns.push(start.elapsed().as_nanos() as f64 / chunk.len() as f64);
                    for (offset, (&got, &block)) in results.iter().zip(chunk).enumerate() {
                        let want = (what == "hit")
                            .then(|| expected[chunk_index * CALLS_PER_BATCH + offset]);
                        if got != want {
                            return Err(verification(format!(
                                "{via}::lookup({block}) = {got:?}, expected {want:?} \
                                 (round {round})"
                            )));
                        }
                    }
                }
            }
            rows.push(BenchResult::new(
                format!("{via}::lookup {what}, {REMAP_TABLE_ENTRIES} entries"),
                METRIC_MEDIAN,
                median(&batch_ns).unwrap_or(0.0),
                UNIT_NS,
            ));
        }
    }
    for row in &rows {
        report.notes.push(format!(
            "{}: {} ns against target <= {TARGET_REMAP_NS} ns",
            row.name,
            verdict_at_most(Some(row.value), TARGET_REMAP_NS)
        ));
    }
    report.results.extend(rows);
    report.notes.push(format!(
        "remap lookups: {REMAP_TABLE_ENTRIES} ACTIVE entries over {data_blocks} data blocks; \
         median over batches of {CALLS_PER_BATCH} lookups in a shuffled order, {} passes \
         each; every result checked (the spare for hits, None for misses)",
        budget.lookup_rounds
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_run_verifies_and_every_comparison_has_its_baseline() {
        let options = BenchOptions {
            smoke: true,
            ..BenchOptions::default()
        };
        let report = run(&options, &mut |_| {}).unwrap();
        assert_eq!(report.suite, SUITE);
        for row in &report.results {
            assert!(row.value.is_finite() && row.value > 0.0, "{row:?}");
            let compared = row.baseline.is_some();
            assert_eq!(compared, row.baseline_value.is_some(), "{row:?}");
            assert_eq!(compared, row.ratio.is_some(), "{row:?}");
            if let Some(baseline) = &row.baseline {
                assert!(
                    report.results.iter().any(|b| &b.name == baseline
                        && b.metric == row.metric
                        && b.unit == row.unit
                        && Some(b.value) == row.baseline_value),
                    "baseline {baseline:?} of {:?} is not a row of the report",
                    row.name
                );
            }
            // Rows that must be compared: every store spill row and every
            // checksum row except the copy-only baseline itself.
            let needs_baseline = (row.name.starts_with("spill")
                && (row.name.ends_with(": store buffered")
                    || row.name.ends_with(": store O_DIRECT")
                    || row.name.ends_with(": store buffered, SpillWriter")
                    || row.name.ends_with(" checksums")))
                || (row.name.starts_with("encode+decode") && !row.name.ends_with("no checksum"));
            assert_eq!(compared, needs_baseline, "{row:?}");
        }
        let find = |prefix: &str, suffix: &str| {
            report
                .results
                .iter()
                .filter(|r| r.name.starts_with(prefix) && r.name.ends_with(suffix))
                .count()
        };
        for dataset in ["spill random", "spill zeros", "spill sine"] {
            assert!(
                find(dataset, ": store buffered") == 2,
                "{dataset}: {report:#?}"
            );
            assert!(find(dataset, ": plain file") == 2, "{dataset}: {report:#?}");
        }
        for dataset in ["spill zeros", "spill sine"] {
            let stored = report
                .results
                .iter()
                .find(|r| r.name.starts_with(dataset) && r.name.contains("stored / raw"))
                .unwrap();
            assert!(stored.value < 0.5, "{stored:?}");
        }
        assert_eq!(find("spill random", ": store buffered, SpillWriter"), 2);
        assert_eq!(find("spill random", "with xxh3 checksums"), 1);
        assert_eq!(find("spill random", "with crc32c checksums"), 1);
        assert_eq!(find("spill random", "less its xxh3 time"), 1);
        assert_eq!(find("encode+decode", "xxh3"), 1);
        assert_eq!(find("encode+decode", "crc32c"), 1);
        assert_eq!(find("SparePool::take", ""), 1);
        assert_eq!(find("RemapTable::lookup", ""), 2);
        assert_eq!(find("RemapView::lookup", ""), 2);
        assert!(report.notes.iter().any(|n| n.contains("page cache")));
    }

    #[test]
    fn verdicts_compare_against_the_targets() {
        assert_eq!(verdict_at_least(Some(0.95), 0.9), "0.950 (met)");
        assert_eq!(verdict_at_least(Some(0.85), 0.9), "0.850 (missed)");
        assert_eq!(verdict_at_most(Some(1.04), 1.05), "1.040 (met)");
        assert_eq!(verdict_at_most(Some(120.0), 100.0), "120.000 (missed)");
        assert_eq!(verdict_at_most(None, 1.0), "- (no figure)");
    }

    #[test]
    fn sine_dataset_is_low_entropy_f32() {
        let dataset = Dataset::sine(&BUDGET_SMOKE);
        let record = &dataset.records[0];
        assert_eq!(record.len(), BUDGET_SMOKE.record_bytes);
        let mut levels: Vec<u32> = record
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        levels.sort_unstable();
        levels.dedup();
        // Levels -8/8..=8/8, and -0.0 besides 0.0.
        assert!(levels.len() <= SINE_LEVELS as usize + 2, "{}", levels.len());
        assert!(levels.len() > 2, "{}", levels.len());
    }
}
