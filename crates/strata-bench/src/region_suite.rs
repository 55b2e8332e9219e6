//! The `region` suite: mapped regions against what a user would do instead,
//! each in the same run.
//!
//! - Warm layer lookup + slice (`Region::layer` by name, then a 64-byte
//!   slice) per operation, against a `HashMap<String, (offset, len)>` over a
//!   `Vec<u8>` (the floor for any name lookup). Each operation is timed
//!   alone, so the clock read is in every sample; it has its own row.
//! - Opening a region of many layers (`Region::open`: map, parse, index)
//!   against `safetensors::SafeTensors::deserialize` of the same bytes
//!   already in memory.
//! - Cold sequential read of one large layer through the mapping (open,
//!   sequential hint, first access verifies the checksum, then every byte
//!   summed), against `read_exact` of the same bytes from a plain file into
//!   one buffer, summed the same way; page cache dropped before each.
//! - Building a region (the builder streaming layers, before fsync) against
//!   `write_all` of the same bytes to a plain file; and crystallizing a proto
//!   region end to end (write, fsync, verify, rename, switch).
//! - Reading layers with 1, 2, 8 and 128 threads (warm), in MB/s.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_region::{AccessHint, Dtype, Region, RegionBuilder, RegionStore, StoreLimits};

use crate::scratch::{DropCaches, TempDir};
use crate::stats::{median, percentile};
use crate::{
    BenchError, BenchOptions, BenchResult, SuiteReport, METRIC_MEDIAN, METRIC_P99,
    METRIC_THROUGHPUT, UNIT_MB_PER_S, UNIT_MS, UNIT_NS,
};

const SUITE: &str = "region";
const SEED: u64 = 0x5354_5241_5441_0006;
/// Bytes of each layer of the many-layer region.
const SMALL_LAYER_BYTES: usize = 256;
/// Bytes sliced from a layer per lookup.
const SLICE_BYTES: usize = 64;
/// Reader thread counts of the throughput rows.
const READER_THREADS: [usize; 4] = [1, 2, 8, 128];
/// Bytes of each layer the reader threads read.
const READ_LAYER_BYTES: usize = 64 << 10;
/// Layers the reader threads pick from (64 MiB together: more than the
/// last-level cache, so reads come from memory).
const READ_LAYERS: usize = 1024;

#[derive(Clone, Copy)]
struct Settings {
    layers: usize,
    lookups: usize,
    opens: usize,
    large_layer_bytes: usize,
    build_bytes: usize,
    build_layer_bytes: usize,
    read_window: Duration,
    drop_caches: bool,
}

const SETTINGS_SMOKE: Settings = Settings {
    layers: 200,
    lookups: 2_000,
    opens: 3,
    large_layer_bytes: 1 << 20,
    build_bytes: 2 << 20,
    build_layer_bytes: 256 << 10,
    read_window: Duration::from_millis(20),
    drop_caches: false,
};
const SETTINGS_QUICK: Settings = Settings {
    layers: 10_000,
    lookups: 200_000,
    opens: 11,
    large_layer_bytes: 64 << 20,
    build_bytes: 64 << 20,
    build_layer_bytes: 4 << 20,
    read_window: Duration::from_millis(300),
    drop_caches: true,
};
const SETTINGS_FULL: Settings = Settings {
    layers: 10_000,
    lookups: 2_000_000,
    opens: 31,
    large_layer_bytes: 512 << 20,
    build_bytes: 512 << 20,
    build_layer_bytes: 16 << 20,
    read_window: Duration::from_secs(2),
    drop_caches: true,
};

fn setup(bench: &str, detail: impl std::fmt::Display) -> BenchError {
    BenchError::Setup {
        bench: bench.to_owned(),
        detail: detail.to_string(),
    }
}

fn verification(bench: &str, detail: impl Into<String>) -> BenchError {
    BenchError::Verification {
        bench: bench.to_owned(),
        detail: detail.into(),
    }
}

fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    bytes
}

/// Sums the bytes eight at a time (every byte is read).
fn sum_bytes(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut sum = 0u64;
    for chunk in &mut chunks {
        sum = sum.wrapping_add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
    }
    chunks
        .remainder()
        .iter()
        .fold(sum, |s, &b| s.wrapping_add(u64::from(b)))
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

pub(crate) fn run(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SuiteReport, BenchError> {
    let (settings, mode) = options.pick(SETTINGS_SMOKE, SETTINGS_QUICK, SETTINGS_FULL);
    let mut report = SuiteReport {
        suite: SUITE.to_owned(),
        results: Vec::new(),
        notes: vec![
            format!("mode {mode}; seed {SEED:#x}; every baseline is measured in this same run"),
            "ratio = value / baseline_value: below 1 is better for ns and ms rows, above 1 for MB/s rows"
                .to_owned(),
        ],
    };
    let dir = TempDir::create(SUITE)?;
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut drops = DropCaches::new(settings.drop_caches);

    progress("region: lookups and opening a region of many layers");
    lookup_and_open(&settings, &dir, &mut rng, &mut report)?;
    progress("region: cold sequential read of a large layer");
    cold_read(&settings, &dir, &mut rng, &mut drops, &mut report)?;
    progress("region: building and crystallizing");
    build_and_crystallize(&settings, &dir, &mut rng, &mut report)?;
    progress("region: concurrent readers");
    concurrent_reads(&settings, &dir, &mut rng, &mut report)?;
    report.notes.push(drops.note(
        "before each cold read",
        "the cold-read rows read from the page cache",
    ));
    Ok(report)
}

fn lookup_and_open(
    settings: &Settings,
    dir: &TempDir,
    rng: &mut SmallRng,
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let bench = "lookup";
    let path = dir.file("many.region");
    let mut builder = RegionBuilder::create(&path).map_err(|e| setup(bench, e))?;
    let names: Vec<String> = (0..settings.layers)
        .map(|n| format!("model.layers.{n}.weight"))
        .collect();
    let mut flat = Vec::with_capacity(settings.layers * SMALL_LAYER_BYTES);
    let mut table = std::collections::HashMap::new();
    for name in &names {
        let bytes = random_bytes(rng, SMALL_LAYER_BYTES);
        builder
            .add_tensor(
                name,
                Dtype::F32,
                &[(SMALL_LAYER_BYTES / 4) as u64],
                &bytes,
                &[],
            )
            .map_err(|e| setup(bench, e))?;
        table.insert(name.clone(), (flat.len(), bytes.len()));
        flat.extend_from_slice(&bytes);
    }
    builder.finish().map_err(|e| setup(bench, e))?;
    let region = Region::open(&path).map_err(|e| setup(bench, e))?;
    region
        .verify()
        .map_err(|e| verification(bench, format!("{e:?}")))?;
    // Warm: every layer verified; the same random order for both.
    let order: Vec<usize> = (0..settings.lookups)
        .map(|_| rng.gen_range(0..names.len()))
        .collect();
    let mut region_ns = Vec::with_capacity(order.len());
    let mut map_ns = Vec::with_capacity(order.len());
    let mut clock_ns = Vec::with_capacity(order.len());
    let mut checksum = 0u64;
    for (n, &i) in order.iter().enumerate() {
        let name = names[i].as_str();
        // Alternate which goes first, so neither always finds the name's
        // cache lines warmed by the other.
        let time_region = || -> Result<(f64, &[u8]), BenchError> {
            let started = Instant::now();
            let layer = region
                .layer(black_box(name))
                .map_err(|e| verification(bench, e.to_string()))?;
            let slice = &layer.bytes()[..SLICE_BYTES];
            black_box(slice);
            Ok((started.elapsed().as_nanos() as f64, slice))
        };
        let time_map = || -> (f64, &[u8]) {
            let started = Instant::now();
            let &(offset, len) = table
                .get(black_box(name))
                .expect("every name is in the table");
            let floor = &flat[offset..offset + len.min(SLICE_BYTES)];
            black_box(floor);
            (started.elapsed().as_nanos() as f64, floor)
        };
        let ((region_time, slice), (map_time, floor)) = if n % 2 == 0 {
            let r = time_region()?;
            (r, time_map())
        } else {
            let m = time_map();
            (time_region()?, m)
        };
        region_ns.push(region_time);
        map_ns.push(map_time);
        if slice != floor {
            return Err(verification(
                bench,
                format!("layer {name}: region and table slices differ"),
            ));
        }
        checksum = checksum.wrapping_add(u64::from(slice[0]));
        let started = Instant::now();
        clock_ns.push(black_box(started).elapsed().as_nanos() as f64);
    }
    black_box(checksum);
    let prefix = format!(
        "lookup + {SLICE_BYTES}-byte slice, {} layers, warm",
        settings.layers
    );
    for metric in [METRIC_MEDIAN, METRIC_P99] {
        let stat = |samples: &[f64]| {
            if metric == METRIC_MEDIAN {
                median(samples)
            } else {
                percentile(samples, 99.0)
            }
            .unwrap_or(f64::NAN)
        };
        let baseline = BenchResult::new(
            format!("{prefix}: HashMap<String, range> over a Vec"),
            metric,
            stat(&map_ns),
            UNIT_NS,
        );
        report.results.push(
            BenchResult::new(
                format!("{prefix}: Region::layer"),
                metric,
                stat(&region_ns),
                UNIT_NS,
            )
            .against(&baseline),
        );
        report.results.push(baseline);
        report.results.push(BenchResult::new(
            format!("{prefix}: the clock read alone (in every sample)"),
            metric,
            stat(&clock_ns),
            UNIT_NS,
        ));
    }
    report.notes.push(format!(
        "lookup: {} lookups of random names (\"model.layers.<n>.weight\") among {} layers of {SMALL_LAYER_BYTES} bytes, each timed alone; target p99 <= 200 ns",
        settings.lookups, settings.layers
    ));

    // Opening.
    let bytes = std::fs::read(&path).map_err(|e| setup("open", e))?;
    let mut open_ms = Vec::new();
    let mut deserialize_ms = Vec::new();
    for _ in 0..settings.opens {
        let started = Instant::now();
        let opened = Region::open(&path).map_err(|e| verification("open", e.to_string()))?;
        open_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if opened.layer_count() != settings.layers {
            return Err(verification(
                "open",
                format!(
                    "{} layers, {} written",
                    opened.layer_count(),
                    settings.layers
                ),
            ));
        }
        let started = Instant::now();
        let parsed = safetensors::SafeTensors::deserialize(black_box(&bytes))
            .map_err(|e| verification("open", format!("safetensors refused the region: {e:?}")))?;
        deserialize_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if parsed.len() != settings.layers {
            return Err(verification(
                "open",
                format!("safetensors sees {} tensors", parsed.len()),
            ));
        }
    }
    let name = format!("open a region of {} layers", settings.layers);
    let baseline = BenchResult::new(
        format!("{name}: safetensors deserialize (bytes in memory)"),
        METRIC_MEDIAN,
        median(&deserialize_ms).unwrap_or(f64::NAN),
        UNIT_MS,
    );
    report.results.push(
        BenchResult::new(
            format!("{name}: Region::open (map, parse, index)"),
            METRIC_MEDIAN,
            median(&open_ms).unwrap_or(f64::NAN),
            UNIT_MS,
        )
        .against(&baseline),
    );
    report.results.push(baseline);
    report.notes.push(format!(
        "open: median of {} opens of a {} KiB file ({} KiB of header); target <= 5 ms",
        settings.opens,
        bytes.len() >> 10,
        region.header().header_bytes >> 10
    ));
    Ok(())
}

fn cold_read(
    settings: &Settings,
    dir: &TempDir,
    rng: &mut SmallRng,
    drops: &mut DropCaches,
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let bench = "cold read";
    let bytes = random_bytes(rng, settings.large_layer_bytes);
    let want = sum_bytes(&bytes);
    let region_path = dir.file("large.region");
    let mut builder = RegionBuilder::create(&region_path).map_err(|e| setup(bench, e))?;
    builder
        .add_blob("large", &bytes, &[])
        .map_err(|e| setup(bench, e))?;
    builder.finish().map_err(|e| setup(bench, e))?;
    let plain_path = dir.file("large.bin");
    std::fs::write(&plain_path, &bytes).map_err(|e| setup(bench, e))?;
    drop(bytes);
    let sync = || {
        for p in [&region_path, &plain_path] {
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(|e| setup(bench, e))?;
        }
        Ok::<(), BenchError>(())
    };
    sync()?;
    let mut region_mb = Vec::new();
    let mut plain_mb = Vec::new();
    let mut buffer = vec![0u8; settings.large_layer_bytes];
    for _ in 0..3 {
        drops.drop_now();
        let started = Instant::now();
        let region = Region::open(&region_path).map_err(|e| verification(bench, e.to_string()))?;
        region
            .advise(AccessHint::Sequential)
            .map_err(|e| verification(bench, e.to_string()))?;
        let layer = region
            .layer("large")
            .map_err(|e| verification(bench, e.to_string()))?;
        let got = sum_bytes(layer.bytes());
        region_mb.push(mb_per_s(settings.large_layer_bytes, started.elapsed()));
        if got != want {
            return Err(verification(
                bench,
                "the mapped layer sums to something else",
            ));
        }
        drops.drop_now();
        let started = Instant::now();
        let mut file = std::fs::File::open(&plain_path).map_err(|e| setup(bench, e))?;
        file.read_exact(&mut buffer).map_err(|e| setup(bench, e))?;
        let got = sum_bytes(&buffer);
        plain_mb.push(mb_per_s(settings.large_layer_bytes, started.elapsed()));
        if got != want {
            return Err(verification(bench, "the plain file sums to something else"));
        }
    }
    let name = format!(
        "cold sequential read of a {} MiB layer",
        settings.large_layer_bytes >> 20
    );
    let baseline = BenchResult::new(
        format!("{name}: read_exact of a plain file"),
        METRIC_THROUGHPUT,
        median(&plain_mb).unwrap_or(f64::NAN),
        UNIT_MB_PER_S,
    );
    report.results.push(
        BenchResult::new(
            format!("{name}: mapped region (checksum verified on first access)"),
            METRIC_THROUGHPUT,
            median(&region_mb).unwrap_or(f64::NAN),
            UNIT_MB_PER_S,
        )
        .against(&baseline),
    );
    report.results.push(baseline);
    report.notes.push("cold read: median of 3 interleaved rounds; both sum every byte; the region's time includes open, the sequential hint and the xxh3 verification of the layer; target >= 0.90 of the plain read".to_owned());
    Ok(())
}

fn build_and_crystallize(
    settings: &Settings,
    dir: &TempDir,
    rng: &mut SmallRng,
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let bench = "build";
    let layers: Vec<Vec<u8>> = (0..settings.build_bytes / settings.build_layer_bytes)
        .map(|_| random_bytes(rng, settings.build_layer_bytes))
        .collect();
    let total: usize = layers.iter().map(Vec::len).sum();
    let mut builder_mb = Vec::new();
    let mut plain_mb = Vec::new();
    for round in 0..3 {
        let path = dir.file(&format!("built-{round}.region"));
        let started = Instant::now();
        let mut builder = RegionBuilder::create(&path).map_err(|e| setup(bench, e))?;
        for (n, layer) in layers.iter().enumerate() {
            builder
                .add_blob(&format!("layer{n}"), layer, &[])
                .map_err(|e| setup(bench, e))?;
        }
        builder_mb.push(mb_per_s(total, started.elapsed()));
        builder.finish().map_err(|e| setup(bench, e))?;
        let plain = dir.file(&format!("plain-{round}.bin"));
        let started = Instant::now();
        let mut file = std::fs::File::create(&plain).map_err(|e| setup(bench, e))?;
        for layer in &layers {
            file.write_all(layer).map_err(|e| setup(bench, e))?;
        }
        plain_mb.push(mb_per_s(total, started.elapsed()));
        drop(file);
        let region = Region::open(&path).map_err(|e| verification(bench, e.to_string()))?;
        for (n, layer) in layers.iter().enumerate() {
            let got = region
                .layer(&format!("layer{n}"))
                .map_err(|e| verification(bench, e.to_string()))?;
            if got.bytes() != layer.as_slice() {
                return Err(verification(
                    bench,
                    format!("layer{n} reads back differently"),
                ));
            }
        }
        std::fs::remove_file(&path).map_err(|e| setup(bench, e))?;
        std::fs::remove_file(&plain).map_err(|e| setup(bench, e))?;
    }
    let name = format!(
        "write {} MiB in {} layers (before fsync)",
        total >> 20,
        layers.len()
    );
    let baseline = BenchResult::new(
        format!("{name}: write_all to a plain file"),
        METRIC_THROUGHPUT,
        median(&plain_mb).unwrap_or(f64::NAN),
        UNIT_MB_PER_S,
    );
    report.results.push(
        BenchResult::new(
            format!("{name}: RegionBuilder (streamed, checksummed)"),
            METRIC_THROUGHPUT,
            median(&builder_mb).unwrap_or(f64::NAN),
            UNIT_MB_PER_S,
        )
        .against(&baseline),
    );
    report.results.push(baseline);

    // Crystallizing a proto region end to end.
    let store_dir = dir.file("store");
    std::fs::create_dir_all(&store_dir).map_err(|e| setup(bench, e))?;
    let store = RegionStore::open_dir(&store_dir, StoreLimits::new(u64::MAX / 2))
        .map_err(|e| setup(bench, e))?;
    store.create_proto("proto").map_err(|e| setup(bench, e))?;
    for (n, layer) in layers.iter().enumerate() {
        store
            .add_proto_layer(
                "proto",
                &format!("layer{n}"),
                Dtype::U8,
                &[layer.len() as u64],
                layer.clone(),
                &[],
            )
            .map_err(|e| setup(bench, e))?;
    }
    let started = Instant::now();
    store
        .crystallize("proto")
        .map_err(|e| verification(bench, e.to_string()))?;
    let elapsed = started.elapsed();
    let check = store
        .layer("proto", "layer0")
        .map_err(|e| verification(bench, e.to_string()))?;
    if check.is_heap() || check.bytes() != layers[0].as_slice() {
        return Err(verification(
            bench,
            "the crystallized layer is not the mapped original",
        ));
    }
    report.results.push(BenchResult::new(
        format!(
            "crystallize {} MiB end to end (write, fsync, verify, rename, switch)",
            total >> 20
        ),
        METRIC_THROUGHPUT,
        mb_per_s(total, elapsed),
        UNIT_MB_PER_S,
    ));
    report.notes.push("build: median of 3 rounds, interleaved with the plain writes; the builder's time covers creating the temporary file and streaming every layer with its xxh3, not the header or fsync; target >= 1 GB/s before fsync".to_owned());
    Ok(())
}

fn concurrent_reads(
    settings: &Settings,
    dir: &TempDir,
    rng: &mut SmallRng,
    report: &mut SuiteReport,
) -> Result<(), BenchError> {
    let bench = "readers";
    let path = dir.file("readers.region");
    let mut builder = RegionBuilder::create(&path).map_err(|e| setup(bench, e))?;
    let mut sums = Vec::new();
    for n in 0..READ_LAYERS {
        let bytes = random_bytes(rng, READ_LAYER_BYTES);
        sums.push(sum_bytes(&bytes));
        builder
            .add_blob(&format!("l{n}"), &bytes, &[])
            .map_err(|e| setup(bench, e))?;
    }
    builder.finish().map_err(|e| setup(bench, e))?;
    let region = Arc::new(Region::open(&path).map_err(|e| setup(bench, e))?);
    region
        .verify()
        .map_err(|e| verification(bench, format!("{e:?}")))?;
    let sums = Arc::new(sums);
    let names: Arc<Vec<String>> = Arc::new((0..READ_LAYERS).map(|n| format!("l{n}")).collect());
    let mut one_thread = None;
    for threads in READER_THREADS {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes_read = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        // Every reader starts together, after all are spawned, and counts
        // only what it read before the stop flag.
        let start = Arc::new(std::sync::Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = Arc::clone(&start);
                let (region, stop, bytes_read, failures, sums, names) = (
                    Arc::clone(&region),
                    Arc::clone(&stop),
                    Arc::clone(&bytes_read),
                    Arc::clone(&failures),
                    Arc::clone(&sums),
                    Arc::clone(&names),
                );
                std::thread::spawn(move || {
                    let mut n = t * 7919;
                    let mut local = 0u64;
                    start.wait();
                    // Each reader times its own window: with many threads
                    // on few cores, the coordinating thread may run late.
                    let began = Instant::now();
                    let mut ended = began;
                    while !stop.load(Ordering::Relaxed) {
                        let i = n % READ_LAYERS;
                        match region.layer(&names[i]) {
                            Ok(layer) if sum_bytes(layer.bytes()) == sums[i] => {
                                local += layer.bytes().len() as u64;
                                ended = Instant::now();
                            }
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        n += 1;
                    }
                    bytes_read.fetch_add(local, Ordering::Relaxed);
                    (began, ended)
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(settings.read_window);
        stop.store(true, Ordering::Relaxed);
        let mut windows = Vec::with_capacity(threads);
        for handle in handles {
            windows.push(
                handle
                    .join()
                    .map_err(|_| verification(bench, "a reader panicked"))?,
            );
        }
        // From the first reader's start to the last reader's last read.
        let first = windows
            .iter()
            .map(|w| w.0)
            .min()
            .expect("at least one reader");
        let last = windows
            .iter()
            .map(|w| w.1)
            .max()
            .expect("at least one reader");
        let elapsed = last.saturating_duration_since(first);
        if failures.load(Ordering::Relaxed) != 0 {
            return Err(verification(
                bench,
                format!("{} reads failed", failures.load(Ordering::Relaxed)),
            ));
        }
        let row = BenchResult::new(
            format!(
                "read {} KiB layers, warm: {threads} thread(s)",
                READ_LAYER_BYTES >> 10
            ),
            METRIC_THROUGHPUT,
            mb_per_s(bytes_read.load(Ordering::Relaxed) as usize, elapsed),
            UNIT_MB_PER_S,
        );
        let row = match &one_thread {
            None => {
                one_thread = Some(row.clone());
                row
            }
            Some(base) => row.against(base),
        };
        report.results.push(row);
    }
    report.notes.push(format!(
        "readers: each thread looks layers up by name and sums every byte, for about {} ms per thread count, on a machine with {} cores; bytes over the span from the first reader's start to the last reader's last completed read; every sum is checked",
        settings.read_window.as_millis(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_run_verifies_and_compares_what_it_should() {
        let options = BenchOptions {
            smoke: true,
            ..BenchOptions::default()
        };
        let report = run(&options, &mut |_| {}).unwrap();
        assert_eq!(report.suite, SUITE);
        for row in &report.results {
            assert!(row.value.is_finite() && row.value >= 0.0, "{row:?}");
            if let Some(baseline) = &row.baseline {
                assert!(
                    report.results.iter().any(|b| &b.name == baseline),
                    "{row:?}"
                );
            }
        }
        for needle in [
            "Region::layer",
            "Region::open",
            "mapped region",
            "RegionBuilder",
            "128 thread(s)",
        ] {
            let row = report.results.iter().find(|r| r.name.contains(needle));
            assert!(row.is_some_and(|r| r.ratio.is_some()), "{needle}: {row:?}");
        }
    }
}
