//! The read-ahead detector on synthetic traces (sequential, strided,
//! backward, interleaved, random, broken and restarted, wasted), with exact
//! outputs on small hand traces; and [`ReadAheadManager`] over a
//! [`BufferManager`] with an in-memory loader: a sequential scan without a
//! schedule stalls on a handful of chunks instead of every one, loads each
//! chunk once and stays within the budget.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_ooc::bufmgr::{pool_block_bytes, BufferManager, ChunkLoader};
use strata_ooc::contract::PolicyKind;
use strata_ooc::error::OocError;
use strata_ooc::policy::ChunkKey;
use strata_ooc::readahead::manager::{ReadAheadManager, ReadAheadReport};
use strata_ooc::readahead::{
    KeyRun, ReadAhead, CONFIRM_ACCESSES, STREAMS_MAX, STRIDE_MAX_CHUNKS, WINDOW_MAX_CHUNKS,
    WINDOW_MIN_CHUNKS,
};
use strata_pool::budget::{
    GreedyPool, MemoryConsumer, MemoryPool, Reservation, TrackConsumersPool,
};
use strata_pool::{HybridPool, PoolConfig};

// ---------------------------------------------------------------------------
// The detector.

/// Feeds `trace` without a budget cap, checking the invariants each step.
fn feed(ahead: &mut ReadAhead, trace: &[u64]) -> Vec<Option<KeyRun>> {
    trace
        .iter()
        .map(|&key| {
            let run = ahead.access(key, u64::MAX, 1);
            ahead.check_invariants();
            run
        })
        .collect()
}

fn run(first: u64, stride: i64, count: u64) -> Option<KeyRun> {
    Some(KeyRun {
        first,
        stride,
        count,
    })
}

/// The keys read ahead of a trace and, for each access, whether it had
/// been read ahead before it came.
fn coverage(trace: &[u64], runs: &[Option<KeyRun>]) -> (Vec<u64>, Vec<bool>) {
    let mut issued = Vec::new();
    let mut seen = HashSet::new();
    let mut covered = Vec::new();
    for (&key, run) in trace.iter().zip(runs) {
        covered.push(seen.contains(&key));
        for k in run.iter().flat_map(KeyRun::keys) {
            issued.push(k);
            seen.insert(k);
        }
    }
    (issued, covered)
}

/// The stride-`stride` scan of `len` keys from `start`.
fn scan(start: u64, stride: i64, len: u64) -> Vec<u64> {
    (0..len)
        .map(|i| (i128::from(start) + i128::from(stride) * i128::from(i)) as u64)
        .collect()
}

/// Checks a single-stream scan: nothing read ahead twice or behind the
/// reader, every access after the first [`CONFIRM_ACCESSES`] covered, the
/// window at the maximum at the end.
fn check_scan(trace: &[u64], stride: i64) {
    let mut ahead = ReadAhead::new();
    let runs = feed(&mut ahead, trace);
    let (issued, covered) = coverage(trace, &runs);
    let distinct: HashSet<_> = issued.iter().collect();
    assert_eq!(
        distinct.len(),
        issued.len(),
        "stride {stride}: a key read ahead twice"
    );
    let confirm = CONFIRM_ACCESSES as usize;
    assert!(
        covered[..confirm].iter().all(|c| !c),
        "stride {stride}: covered before the stream was confirmed"
    );
    assert!(
        covered[confirm..].iter().all(|&c| c),
        "stride {stride}: an access after confirmation was not read ahead: {:?}",
        covered.iter().position(|&c| !c)
    );
    // Read-ahead keys follow the trace itself (past its end, they continue it).
    let continued = scan(trace[0], stride, trace.len() as u64 + WINDOW_MAX_CHUNKS + 1);
    let allowed: HashSet<_> = continued.iter().collect();
    for k in &issued {
        assert!(
            allowed.contains(k),
            "stride {stride}: {k} is off the stream"
        );
    }
    let stats = ahead.stats();
    assert_eq!(
        stats.window_max_chunks, WINDOW_MAX_CHUNKS,
        "stride {stride}: {stats:?}"
    );
    let covered_share = stats.covered_accesses as f64 / stats.accesses as f64;
    assert!(
        covered_share > 0.99,
        "stride {stride}: covered {covered_share}: {stats:?}"
    );
    let streams: Vec<_> = ahead.streams().filter(|s| s.window_chunks > 0).collect();
    assert_eq!(streams.len(), 1, "stride {stride}: {streams:?}");
    assert_eq!(
        streams[0].window_chunks, WINDOW_MAX_CHUNKS,
        "stride {stride}"
    );
    assert_eq!(streams[0].stride, stride);
}

#[test]
fn sequential_scan_grows_to_the_maximum() {
    let trace = scan(0, 1, 2000);
    check_scan(&trace, 1);
    // Exact: the window doubles at each refill, which comes when half of
    // it is left ahead: 2, 4, 8, 16, 32, 64, then stays.
    let mut ahead = ReadAhead::new();
    let runs = feed(&mut ahead, &trace[..200]);
    let batches: Vec<(usize, KeyRun)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect();
    let expected = [
        (
            2,
            KeyRun {
                first: 3,
                stride: 1,
                count: 2,
            },
        ),
        (
            3,
            KeyRun {
                first: 5,
                stride: 1,
                count: 3,
            },
        ),
        (
            5,
            KeyRun {
                first: 8,
                stride: 1,
                count: 6,
            },
        ),
        (
            9,
            KeyRun {
                first: 14,
                stride: 1,
                count: 12,
            },
        ),
        (
            17,
            KeyRun {
                first: 26,
                stride: 1,
                count: 24,
            },
        ),
        (
            33,
            KeyRun {
                first: 50,
                stride: 1,
                count: 48,
            },
        ),
        (
            65,
            KeyRun {
                first: 98,
                stride: 1,
                count: 32,
            },
        ),
        (
            97,
            KeyRun {
                first: 130,
                stride: 1,
                count: 32,
            },
        ),
        (
            129,
            KeyRun {
                first: 162,
                stride: 1,
                count: 32,
            },
        ),
        (
            161,
            KeyRun {
                first: 194,
                stride: 1,
                count: 32,
            },
        ),
        (
            193,
            KeyRun {
                first: 226,
                stride: 1,
                count: 32,
            },
        ),
    ];
    assert_eq!(batches, expected);
    let stats = ahead.stats();
    assert_eq!(stats.window_histogram, [0, 1, 1, 1, 1, 1, 6], "{stats:?}");
}

#[test]
fn strided_and_backward_scans() {
    check_scan(&scan(100, 7, 1000), 7);
    let widest = -(STRIDE_MAX_CHUNKS as i64);
    check_scan(&scan(1_000_000, widest, 1000), widest);
    check_scan(&scan(5000, -1, 3000), -1);
    // Exact: every third key, then backwards.
    let mut ahead = ReadAhead::new();
    assert_eq!(
        feed(&mut ahead, &[30, 33, 36, 39]),
        [None, None, run(39, 3, 2), run(45, 3, 3)]
    );
    let mut ahead = ReadAhead::new();
    assert_eq!(
        feed(&mut ahead, &[30, 27, 24, 21]),
        [None, None, run(21, -3, 2), run(15, -3, 3)]
    );
    // Backwards to key 0: nothing below it.
    let trace = scan(200, -1, 201);
    let mut ahead = ReadAhead::new();
    let runs = feed(&mut ahead, &trace);
    let last = runs.iter().flatten().last().expect("read ahead");
    assert_eq!(last.last(), 0, "{last:?}");
}

#[test]
fn strides_beyond_the_maximum_are_not_streams() {
    let trace = scan(0, STRIDE_MAX_CHUNKS as i64 + 1, 500);
    let mut ahead = ReadAhead::new();
    let runs = feed(&mut ahead, &trace);
    assert!(runs.iter().all(Option::is_none));
    assert_eq!(ahead.stats().stream_accesses, 0);
}

#[test]
fn interleaved_streams_are_tracked_apart() {
    // Exact, two arrays ten keys apart read in lockstep: a seed is not used
    // up by a pairing, so 1 pairs with 0 although 10 paired with 0 first.
    let mut ahead = ReadAhead::new();
    assert_eq!(
        feed(&mut ahead, &[0, 10, 1, 11, 2, 12, 3, 13]),
        [
            None,
            None,
            None,
            None,
            run(3, 1, 2),
            run(13, 1, 2),
            run(5, 1, 3),
            run(15, 1, 3)
        ]
    );
    // Long: both grow to the maximum; all but the first accesses covered.
    for (a, b) in [(0u64, 100_000u64), (0, 10), (5000, 0)] {
        let trace: Vec<u64> = (0..2000).flat_map(|i| [a + i, b + i]).collect();
        let mut ahead = ReadAhead::new();
        let runs = feed(&mut ahead, &trace);
        let (_, covered) = coverage(&trace, &runs);
        let uncovered = covered.iter().filter(|&&c| !c).count();
        assert!(
            uncovered <= 2 * CONFIRM_ACCESSES as usize,
            "{a}/{b}: {uncovered} uncovered"
        );
        let windows: Vec<_> = ahead
            .streams()
            .filter(|s| s.window_chunks > 0)
            .map(|s| (s.stride, s.window_chunks))
            .collect();
        assert_eq!(
            windows,
            [(1, WINDOW_MAX_CHUNKS), (1, WINDOW_MAX_CHUNKS)],
            "{a}/{b}"
        );
    }
    // As many streams as the table holds, round robin, far apart.
    let streams = STREAMS_MAX as u64;
    let trace: Vec<u64> = (0..500)
        .flat_map(|i| (0..streams).map(move |s| s * 1_000_000 + i))
        .collect();
    let mut ahead = ReadAhead::new();
    let runs = feed(&mut ahead, &trace);
    let (_, covered) = coverage(&trace, &runs);
    let uncovered = covered.iter().filter(|&&c| !c).count() as u64;
    assert_eq!(uncovered, streams * u64::from(CONFIRM_ACCESSES));
    // One more stream than the tables hold thrashes them (each seed is
    // pushed out before its stream comes back): nothing is read ahead.
    let streams = STREAMS_MAX as u64 + 1;
    let trace: Vec<u64> = (0..500)
        .flat_map(|i| (0..streams).map(move |s| s * 1_000_000 + i))
        .collect();
    let mut ahead = ReadAhead::new();
    let runs = feed(&mut ahead, &trace);
    assert!(runs.iter().all(Option::is_none), "LRU round robin");
}

#[test]
fn random_access_reads_little_ahead() {
    for (seed, key_space) in [(1u64, 1u64 << 40), (2, 1_000_000), (3, 10_000), (4, 1000)] {
        let mut rng = SmallRng::seed_from_u64(seed);
        let trace: Vec<u64> = (0..20_000).map(|_| rng.gen_range(0..key_space)).collect();
        let mut ahead = ReadAhead::new();
        let runs = feed(&mut ahead, &trace);
        let stats = ahead.stats();
        let issued_share = stats.issued_keys as f64 / trace.len() as f64;
        // In random keys a stream is confirmed by chance: an access landing
        // on one of at most STREAMS_MAX expected keys, which reads the
        // minimum window ahead (growing takes more such luck).
        let chance = STREAMS_MAX as f64 / key_space as f64;
        assert!(
            issued_share <= 2.0 * WINDOW_MIN_CHUNKS as f64 * chance,
            "seed {seed}, keys 0..{key_space}: {issued_share} keys read ahead per access: {stats:?}"
        );
        assert_eq!(
            runs.iter().flatten().count() as u64,
            stats.batches,
            "seed {seed}"
        );
    }
}

#[test]
fn a_broken_scan_collapses_and_regrows() {
    // A scan restarts elsewhere: the new stream starts at the minimum window
    // and regrows exactly as a fresh detector would.
    let first = scan(0, 1, 300);
    let second = scan(50_000, 1, 300);
    let mut ahead = ReadAhead::new();
    feed(&mut ahead, &first);
    let restarted = feed(&mut ahead, &second);
    let fresh = feed(&mut ReadAhead::new(), &second);
    assert_eq!(restarted, fresh);
    assert_eq!(
        restarted[CONFIRM_ACCESSES as usize - 1],
        run(50_000 + u64::from(CONFIRM_ACCESSES), 1, WINDOW_MIN_CHUNKS)
    );
    // A skip inside a stream (100 is never read) also restarts it: the
    // old stream waits for 100 and ages out, the new one starts small.
    let trace: Vec<u64> = (0..100).chain(101..400).collect();
    let mut ahead = ReadAhead::new();
    let runs = feed(&mut ahead, &trace);
    let confirmed_at = 100 + CONFIRM_ACCESSES as usize - 1;
    assert_eq!(runs[100], None, "101 is a seed");
    assert_eq!(runs[101], None, "102 is a tentative stream");
    let restart = runs[confirmed_at].expect("confirmed again at 103");
    // The old stream had read up to 161 ahead; the new one starts from the
    // minimum window all the same.
    assert_eq!(
        restart,
        KeyRun {
            first: 104,
            stride: 1,
            count: WINDOW_MIN_CHUNKS
        }
    );
    let windows: Vec<_> = ahead
        .streams()
        .map(|s| (s.last_key, s.window_chunks))
        .collect();
    assert!(
        windows.contains(&(399, WINDOW_MAX_CHUNKS)) && windows.contains(&(99, WINDOW_MAX_CHUNKS)),
        "{windows:?}"
    );
}

#[test]
fn waste_shrinks_the_window() {
    let trace = scan(0, 1, 200);
    let mut ahead = ReadAhead::new();
    feed(&mut ahead, &trace);
    let stream = |ahead: &ReadAhead| {
        ahead
            .streams()
            .find(|s| s.window_chunks > 0)
            .expect("the scan's stream")
    };
    let before = stream(&ahead);
    assert_eq!(before.window_chunks, WINDOW_MAX_CHUNKS);
    // Each chunk wasted halves the window, down to the minimum.
    let mut window = WINDOW_MAX_CHUNKS;
    for report in 0..5u64 {
        let end = stream(&ahead).ahead_end.expect("read ahead");
        assert!(
            ahead.on_wasted(end),
            "report {report}: {end} was read ahead"
        );
        window = (window / 2).max(WINDOW_MIN_CHUNKS);
        let after = stream(&ahead);
        assert_eq!(after.window_chunks, window, "report {report}");
        // What is left ahead fits the window, and the wasted key is read again.
        let ahead_chunks = after.ahead_end.expect("read ahead") - after.last_key;
        assert!(ahead_chunks < end - after.last_key, "report {report}");
        assert!(
            ahead_chunks <= window,
            "report {report}: {ahead_chunks} > {window}"
        );
        ahead.check_invariants();
    }
    assert_eq!(window, WINDOW_MIN_CHUNKS);
    // A key no stream read ahead changes nothing.
    assert!(!ahead.on_wasted(1_000_000));
    assert!(!ahead.on_wasted(150), "behind the reader");
    assert_eq!(stream(&ahead).window_chunks, WINDOW_MIN_CHUNKS);
    // Exact, from the minimum: the window regrows from the last access, so
    // the wasted keys (257, 231, ..., 203) are read again as it nears them.
    let s = stream(&ahead);
    assert_eq!((s.last_key, s.ahead_end), (199, Some(201)));
    assert_eq!(ahead.access(200, u64::MAX, 1), run(202, 1, 3));
    let stats = ahead.stats();
    assert_eq!(
        (stats.wasted_reports, stats.wasted_shrinks),
        (7, 5),
        "{stats:?}"
    );
    // It regrows while the stream holds.
    feed(&mut ahead, &scan(201, 1, 300));
    assert_eq!(stream(&ahead).window_chunks, WINDOW_MAX_CHUNKS);
}

#[test]
fn runs_stay_within_window_and_budget() {
    // Random mixtures of streams, noise and budgets: every run lies ahead of
    // the access on its stride, within the window and the budget.
    for seed in 0..20u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut ahead = ReadAhead::new();
        let mut cursors: Vec<(u64, i64)> = (0..3)
            .map(|s| {
                let stride = rng.gen_range(1i64..=8);
                (
                    1_000_000 * (s + 1),
                    if rng.gen_bool(0.5) { -stride } else { stride },
                )
            })
            .collect();
        for step in 0..5000 {
            let key = if rng.gen_bool(0.1) {
                rng.gen_range(0..4_000_000)
            } else {
                let c = &mut cursors[rng.gen_range(0..3)];
                c.0 = (c.0 as i64 + c.1) as u64;
                c.0
            };
            let chunk_bytes = rng.gen_range(1..100u64);
            let budget_bytes = rng.gen_range(0..10_000u64);
            let cap = (budget_bytes / chunk_bytes).min(WINDOW_MAX_CHUNKS);
            if rng.gen_bool(0.01) {
                let wasted = rng.gen_range(0..4_000_000);
                ahead.on_wasted(wasted);
            }
            if let Some(run) = ahead.access(key, budget_bytes, chunk_bytes) {
                let ctx = format!("seed {seed} step {step}: key {key}, {run:?}, cap {cap}");
                assert!(run.count >= 1 && run.count <= cap, "{ctx}");
                let distance = run.last().abs_diff(key);
                assert!(distance <= cap * run.stride.unsigned_abs(), "{ctx}");
                assert!(
                    (run.first as i128 - key as i128) % i128::from(run.stride) == 0
                        && (run.first as i128 - key as i128).signum()
                            == i128::from(run.stride.signum()),
                    "{ctx}: not ahead on the stride"
                );
            }
            ahead.check_invariants();
        }
    }
}

// ---------------------------------------------------------------------------
// The manager.

/// Bytes of every chunk.
const CHUNK_BYTES: usize = 16_384;

/// Chunks in memory (chunk `k`'s byte `i` is `k * 7 + i`), counting loads
/// per key and those done on the reader's thread.
struct ScanLoader {
    chunk_count: u64,
    reader: ThreadId,
    loads: Vec<AtomicU64>,
    reader_loads: AtomicU64,
    other_loads: AtomicU64,
}

impl ScanLoader {
    fn new(chunk_count: u64) -> ScanLoader {
        ScanLoader {
            chunk_count,
            reader: std::thread::current().id(),
            loads: (0..chunk_count).map(|_| AtomicU64::new(0)).collect(),
            reader_loads: AtomicU64::new(0),
            other_loads: AtomicU64::new(0),
        }
    }

    fn loads_of(&self, key: u64) -> u64 {
        self.loads[key as usize].load(Ordering::Acquire)
    }
}

fn chunk_byte(key: u64, i: usize) -> u8 {
    (key as usize * 7 + i) as u8
}

impl ChunkLoader for ScanLoader {
    fn chunk_bytes(&self, key: ChunkKey) -> Result<u64, OocError> {
        if key.0 < self.chunk_count {
            Ok(CHUNK_BYTES as u64)
        } else {
            Err(OocError::UnknownChunk { key })
        }
    }

    fn load(&self, key: ChunkKey, out: &mut [u8]) -> Result<(), OocError> {
        if key.0 >= self.chunk_count {
            return Err(OocError::UnknownChunk { key });
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = chunk_byte(key.0, i);
        }
        if std::thread::current().id() == self.reader {
            self.reader_loads.fetch_add(1, Ordering::Relaxed);
        } else {
            self.other_loads.fetch_add(1, Ordering::Relaxed);
        }
        self.loads[key.0 as usize].fetch_add(1, Ordering::Release);
        Ok(())
    }
}

/// A budget of exactly `capacity_bytes`: the pool refuses any byte beyond.
struct Budget {
    tracked: Arc<TrackConsumersPool<GreedyPool>>,
    reservation: Reservation,
}

fn budget(capacity_bytes: u64) -> Budget {
    let tracked = Arc::new(TrackConsumersPool::new(GreedyPool::new(capacity_bytes), 4));
    let dyn_pool: Arc<dyn MemoryPool> = tracked.clone();
    let reservation = MemoryConsumer::new("chunk cache").register(&dyn_pool);
    Budget {
        tracked,
        reservation,
    }
}

fn pool() -> HybridPool {
    HybridPool::new(PoolConfig::default()).expect("CPU pool")
}

fn check_chunk(key: u64, bytes: &[u8]) {
    assert_eq!(bytes.len(), CHUNK_BYTES, "chunk {key}");
    for (i, &b) in bytes.iter().enumerate() {
        assert_eq!(b, chunk_byte(key, i), "chunk {key} byte {i}");
    }
}

/// Longest the scan waits for a chunk to be read ahead (a guard against a
/// read-ahead that never comes; the counts decide the test, not the time).
const READ_AHEAD_WAIT: Duration = Duration::from_secs(2);

#[test]
fn a_sequential_scan_without_a_schedule_stalls_far_less() {
    let chunk_count = 200u64;
    let block = pool_block_bytes(CHUNK_BYTES as u64);
    let capacity_bytes = 16 * block;
    let limit_bytes = capacity_bytes / 2;
    let pool = pool();

    // Off: the reader loads every chunk itself.
    let loader = ScanLoader::new(chunk_count);
    let off = budget(capacity_bytes);
    let manager = BufferManager::new(
        &pool,
        &off.reservation,
        &loader,
        None,
        PolicyKind::Lru.build(&[]),
        capacity_bytes,
    );
    for key in 0..chunk_count {
        let pinned = manager.pin(ChunkKey(key)).expect("pin");
        check_chunk(key, pinned.bytes());
    }
    let stats_off = manager.stats();
    assert_eq!(loader.reader_loads.load(Ordering::Relaxed), chunk_count);
    assert_eq!(stats_off.misses, chunk_count);
    drop(manager);

    // On: the reader stalls on the chunks before the stream is confirmed.
    // Its "compute" on chunk k lasts until the read-ahead loaded k + 1
    // (when read-ahead has started), so the counts are exact.
    let loader = ScanLoader::new(chunk_count);
    let on = budget(capacity_bytes);
    let manager = BufferManager::new(
        &pool,
        &on.reservation,
        &loader,
        None,
        PolicyKind::Lru.build(&[]),
        capacity_bytes,
    );
    let report: ReadAheadReport = std::thread::scope(|scope| {
        let mut reader = ReadAheadManager::start(scope, &manager, &loader, limit_bytes);
        for key in 0..chunk_count {
            let pinned = reader.pin(ChunkKey(key)).expect("pin");
            check_chunk(key, pinned.bytes());
            let next = key + 1;
            if next >= u64::from(CONFIRM_ACCESSES) && next < chunk_count {
                let deadline = Instant::now() + READ_AHEAD_WAIT;
                // Loaded and published (counted by the manager).
                while (loader.loads_of(next) == 0
                    || manager.stats().prefetches < loader.other_loads.load(Ordering::Acquire))
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            reader.check_invariants();
        }
        reader.finish()
    });
    manager.check_invariants();
    let stats = manager.stats();
    let confirm = u64::from(CONFIRM_ACCESSES);
    let reader_loads = loader.reader_loads.load(Ordering::Relaxed);
    assert_eq!(
        reader_loads, confirm,
        "loads on the reader's thread with read-ahead ({report:?})"
    );
    assert_eq!(
        loader.other_loads.load(Ordering::Relaxed),
        chunk_count - confirm
    );
    assert_eq!(
        stats.misses, confirm,
        "stalls on: {stats:?}, off: {stats_off:?}"
    );
    assert_eq!(report.pins, chunk_count);
    assert_eq!(report.pins_stalled, confirm, "{report:?}");
    assert_eq!(report.pins_read_ahead, chunk_count - confirm, "{report:?}");
    assert_eq!(report.loaded, chunk_count - confirm, "{report:?}");
    assert_eq!((report.wasted, report.unused), (0, 0), "{report:?}");
    assert_eq!(
        report.detector.window_max_chunks,
        (limit_bytes / block).min(WINDOW_MAX_CHUNKS),
        "{report:?}"
    );
    // Every chunk read exactly once; nothing past the end.
    for key in 0..chunk_count {
        assert_eq!(loader.loads_of(key), 1, "chunk {key} ({report:?})");
    }
    assert_eq!(stats.source_read_bytes, chunk_count * CHUNK_BYTES as u64);
    assert_eq!(stats.source_read_bytes, stats_off.source_read_bytes);
    assert!(stats.peak_held_bytes <= capacity_bytes, "{stats:?}");
    let peak = on.tracked.peak_bytes();
    assert!(
        peak <= capacity_bytes,
        "budget peak {peak} > capacity {capacity_bytes}"
    );
}

#[test]
fn lockstep_streams_in_a_tight_cache_stay_correct() {
    // Two arrays read in lockstep, a cache of six chunks and a read-ahead
    // limit as large as the cache: read-ahead chunks get evicted before use,
    // which the report counts as waste; the data, the budget and the
    // counters stay right.
    let per_array = 150u64;
    let block = pool_block_bytes(CHUNK_BYTES as u64);
    let capacity_bytes = 6 * block;
    let pool = pool();
    for seed in 0..4u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let loader = ScanLoader::new(2 * per_array);
        let tight = budget(capacity_bytes);
        let manager = BufferManager::new(
            &pool,
            &tight.reservation,
            &loader,
            None,
            PolicyKind::ALL[seed as usize % PolicyKind::ALL.len()].build(&[]),
            capacity_bytes,
        );
        let report = std::thread::scope(|scope| {
            let mut reader = ReadAheadManager::start(scope, &manager, &loader, capacity_bytes);
            for i in 0..per_array {
                // The second array runs backwards.
                let keys = [i, 2 * per_array - 1 - i];
                let a = reader.pin(ChunkKey(keys[0])).expect("pin a");
                let b = reader.pin(ChunkKey(keys[1])).expect("pin b");
                check_chunk(keys[0], a.bytes());
                check_chunk(keys[1], b.bytes());
                for _ in 0..rng.gen_range(0..3) {
                    std::thread::yield_now();
                }
                drop((a, b));
                reader.check_invariants();
            }
            reader.finish()
        });
        manager.check_invariants();
        let stats = manager.stats();
        let ctx = format!("seed {seed}: {report:?}, {stats:?}");
        assert_eq!(report.pins, 2 * per_array, "{ctx}");
        // The reader is the only pinning thread and the read-ahead thread
        // the only prefetching one: the report matches the manager.
        assert_eq!(report.loaded, stats.prefetches, "{ctx}");
        assert_eq!(report.pins_read_ahead, stats.prefetch_hits, "{ctx}");
        assert_eq!(report.pins_stalled, stats.misses, "{ctx}");
        assert!(report.wasted <= stats.prefetch_wasted, "{ctx}");
        // Each waste the reader met went to the detector.
        assert_eq!(report.detector.wasted_reports, report.wasted, "{ctx}");
        let total_loads: u64 = (0..2 * per_array).map(|k| loader.loads_of(k)).sum();
        assert_eq!(
            total_loads,
            loader.reader_loads.load(Ordering::Relaxed)
                + loader.other_loads.load(Ordering::Relaxed),
            "{ctx}"
        );
        assert_eq!(
            stats.source_read_bytes,
            total_loads * CHUNK_BYTES as u64,
            "{ctx}"
        );
        assert!(stats.peak_held_bytes <= capacity_bytes, "{ctx}");
        let peak = tight.tracked.peak_bytes();
        assert!(
            peak <= capacity_bytes,
            "{ctx}: budget peak {peak} > {capacity_bytes}"
        );
        assert!(report.detector.streams_confirmed >= 2, "{ctx}");
    }
}

#[test]
fn dropping_the_manager_stops_its_thread() {
    let loader = ScanLoader::new(64);
    let capacity_bytes = 8 * pool_block_bytes(CHUNK_BYTES as u64);
    let reservation = budget(capacity_bytes);
    let pool = pool();
    let manager = BufferManager::new(
        &pool,
        &reservation.reservation,
        &loader,
        None,
        PolicyKind::Lru.build(&[]),
        capacity_bytes,
    );
    // The scope ends only once the thread has: a dropped reader stops it.
    std::thread::scope(|scope| {
        let mut reader = ReadAheadManager::start(scope, &manager, &loader, capacity_bytes / 2);
        for key in 0..10 {
            drop(reader.pin(ChunkKey(key)).expect("pin"));
        }
    });
    manager.check_invariants();
    // A key no loader knows is the pin's error, not the thread's.
    std::thread::scope(|scope| {
        let mut reader = ReadAheadManager::start(scope, &manager, &loader, capacity_bytes / 2);
        let error = reader.pin(ChunkKey(64)).err().expect("unknown chunk");
        assert!(
            matches!(error, OocError::UnknownChunk { key: ChunkKey(64) }),
            "{error}"
        );
        let report = reader.finish();
        assert_eq!(report.pins, 0, "{report:?}");
    });
}
