//! The `pool` suite with a heap probe: this test binary's global allocator
//! counts live bytes, as the `strata` CLI's does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use strata_bench::{run_suite, BenchOptions, METRIC_COUNT, METRIC_MEAN, UNIT_BYTES_PER_ALLOC};

/// `System`, counting live requested bytes.
struct Counting {
    live_bytes: AtomicU64,
}

// SAFETY: every call is forwarded to `System` unchanged; only counts change.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, forwarded.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            self.live_bytes.fetch_add(layout.size() as u64, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live_bytes.fetch_sub(layout.size() as u64, Relaxed);
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting {
    live_bytes: AtomicU64::new(0),
};

fn heap_bytes() -> u64 {
    COUNTING.live_bytes.load(Relaxed)
}

#[test]
fn metadata_rows_are_measured_with_a_probe() {
    let options = BenchOptions {
        smoke: true,
        heap_bytes: Some(heap_bytes),
        ..BenchOptions::default()
    };
    let mut lines = Vec::new();
    let report = run_suite("pool", &options, &mut |line| lines.push(line.to_owned())).unwrap();
    assert!(
        lines.iter().any(|l| l.contains("metadata")),
        "progress names the metadata benchmark: {lines:?}"
    );
    let row = |suffix: &str| {
        report
            .results
            .iter()
            .find(|r| r.name.starts_with("metadata") && r.name.ends_with(suffix))
            .unwrap_or_else(|| panic!("no metadata row ending {suffix:?}: {report:#?}"))
    };
    let per_block = row("heap per block");
    assert_eq!(
        (per_block.metric.as_str(), per_block.unit.as_str()),
        (METRIC_MEAN, UNIT_BYTES_PER_ALLOC)
    );
    // Slab bitmaps cost a fraction of a byte per 64-byte block; a pool that
    // kept a heap record per block would cost 8 or more.
    assert!(
        per_block.value >= 0.0 && per_block.value < 4.0,
        "{per_block:?}"
    );
    let outside = row("heap per block outside profiler");
    assert!(
        outside.value <= per_block.value,
        "{outside:?} {per_block:?}"
    );
    let samples = row("live samples");
    assert_eq!(samples.metric, METRIC_COUNT);
    // 20,000 blocks of 64 B at a 512 KiB mean: 2.4 samples expected.
    assert!(samples.value < 40.0, "{samples:?}");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("metadata rows") && n.contains("Targets")),
        "{:?}",
        report.notes
    );
}
