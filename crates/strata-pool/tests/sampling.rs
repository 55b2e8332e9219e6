//! Tests of byte-rate sampling: sampling probabilities, the unbiasedness
//! and claimed error of the estimates, bookkeeping against a naive model,
//! leak reports on a manual clock, the history ring, stack interning, and
//! the metadata the profiler says it holds (measured with a counting
//! allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::hint::black_box;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_pool::sampling::{
    sample_probability, sample_weight, ByteSampler, HistoryEvent, HistoryEventKind, ManualClock,
    ProfileConfig, ProfileLevel, Profiler, ProfilerMetadata, SampleHandle, SampleRecord,
    SamplingError, HISTORY_EVENTS_LIMIT, SAMPLE_HANDLES_MAX, SAMPLE_MEAN_BYTES_DEFAULT,
    SAMPLE_SLAB_GROW_DIVISOR, SAMPLE_SLAB_GROW_MIN_ENTRIES, SITE_ID_UNKNOWN,
};

/// Standard deviations allowed between an estimate and its expectation.
const SIGMAS: f64 = 4.0;
/// Standard deviations allowed for a sampled fraction (a binomial count).
const BINOMIAL_SIGMAS: f64 = 5.0;

fn config(level: ProfileLevel, mean_bytes: u64, seed: u64) -> ProfileConfig {
    ProfileConfig {
        level,
        mean_bytes,
        history_events_max: 0,
        seed,
    }
}

// ---------------------------------------------------------------------------
// (1) The sampler samples an allocation of s bytes with probability p(s),
// independently of the allocations before it.

#[test]
fn sampled_fraction_matches_probability_within_binomial_bound() {
    const DRAWS: u64 = 400_000;
    for seed in [1u64, 2, 3] {
        for size_bytes in [16u64, 4096, 64 * 1024, 512 * 1024, 2 * 1024 * 1024] {
            let mut sampler = ByteSampler::new(SAMPLE_MEAN_BYTES_DEFAULT, seed);
            let mut sampled = 0u64;
            for _ in 0..DRAWS {
                sampled += u64::from(sampler.sample(size_bytes));
            }
            sampler.check_invariants();
            let p = sample_probability(size_bytes, SAMPLE_MEAN_BYTES_DEFAULT);
            let expected = DRAWS as f64 * p;
            let sigma = (DRAWS as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (sampled as f64 - expected).abs() <= BINOMIAL_SIGMAS * sigma,
                "seed {seed}, size {size_bytes}: sampled {sampled} of {DRAWS}, expected \
                 {expected:.1} ± {sigma:.1} (p = {p:.6})"
            );
        }
    }
}

#[test]
fn interleaved_sizes_are_sampled_independently() {
    // Alternate two sizes: each keeps its own p, and consecutive
    // allocations of the small size are both sampled with probability p^2.
    const PAIRS: u64 = 300_000;
    let small_bytes = 128 * 1024;
    let large_bytes = 1024 * 1024;
    let p_small = sample_probability(small_bytes, SAMPLE_MEAN_BYTES_DEFAULT);
    let p_large = sample_probability(large_bytes, SAMPLE_MEAN_BYTES_DEFAULT);
    for seed in [7u64, 8] {
        let mut sampler = ByteSampler::new(SAMPLE_MEAN_BYTES_DEFAULT, seed);
        let (mut small_sampled, mut large_sampled, mut both_small) = (0u64, 0u64, 0u64);
        for _ in 0..PAIRS {
            let small = sampler.sample(small_bytes);
            let small_again = sampler.sample(small_bytes);
            let large = sampler.sample(large_bytes);
            small_sampled += u64::from(small) + u64::from(small_again);
            large_sampled += u64::from(large);
            both_small += u64::from(small && small_again);
        }
        let n_small = 2.0 * PAIRS as f64;
        let n_large = PAIRS as f64;
        for (what, count, n, p) in [
            ("small", small_sampled, n_small, p_small),
            ("large", large_sampled, n_large, p_large),
            ("small pair", both_small, n_large, p_small * p_small),
        ] {
            let sigma = (n * p * (1.0 - p)).sqrt();
            assert!(
                (count as f64 - n * p).abs() <= BINOMIAL_SIGMAS * sigma,
                "seed {seed}, {what}: {count} sampled of {n}, expected {:.1} ± {sigma:.1}",
                n * p
            );
        }
    }
}

#[test]
fn disabled_and_edge_samplers() {
    let mut disabled = ByteSampler::disabled();
    assert!(disabled.is_disabled());
    for size_bytes in [0u64, 1, 1 << 40, u64::MAX, u64::MAX, 1] {
        assert!(
            !disabled.sample(size_bytes),
            "disabled sampled {size_bytes}"
        );
        disabled.check_invariants();
    }
    assert_eq!(sample_probability(12345, u64::MAX), 0.0);
    assert!(sample_weight(12345, u64::MAX).is_none());

    let mut every = ByteSampler::new(0, 9);
    for size_bytes in [1u64, 7, 1 << 30] {
        assert!(
            every.sample(size_bytes),
            "mean 0 did not sample {size_bytes}"
        );
    }
    let mut sampler = ByteSampler::new(SAMPLE_MEAN_BYTES_DEFAULT, 5);
    for _ in 0..100_000 {
        assert!(!sampler.sample(0), "size 0 sampled");
    }

    // Same seed, same choices; thread samplers of one profiler differ, and a
    // second profiler with the same seed hands out the same sequence.
    // Indices of the sampled allocations among 2000 of 1000 bytes (p = 0.22).
    let choices = |mut sampler: ByteSampler| -> Vec<usize> {
        (0..2000).filter(|_| sampler.sample(1000)).collect()
    };
    assert_eq!(
        choices(ByteSampler::new(4096, 42)),
        choices(ByteSampler::new(4096, 42))
    );
    assert_ne!(
        choices(ByteSampler::new(4096, 42)),
        choices(ByteSampler::new(4096, 43))
    );
    let first = Profiler::new(config(ProfileLevel::Sampled, 4096, 42)).unwrap();
    let second = Profiler::new(config(ProfileLevel::Sampled, 4096, 42)).unwrap();
    let (a1, a2) = (
        choices(first.thread_sampler()),
        choices(first.thread_sampler()),
    );
    let (b1, b2) = (
        choices(second.thread_sampler()),
        choices(second.thread_sampler()),
    );
    assert_ne!(a1, a2, "two threads of one profiler got the same samples");
    assert_eq!(
        (a1, a2),
        (b1, b2),
        "same seed, same thread order, other samples"
    );
    let off = Profiler::new(config(ProfileLevel::Off, 4096, 42)).unwrap();
    assert!(off.thread_sampler().is_disabled());
}

// ---------------------------------------------------------------------------
// (2) Estimates on a workload with known truth.

/// How a sample was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recorded {
    /// By address: freed with `record_free(addr)`.
    Address,
    /// By handle: freed with `record_free_handle`.
    Handle(SampleHandle),
}

type AllocResult = (Option<Recorded>, &'static Location<'static>);

/// The pool's entry point: `#[track_caller]`, so the recorded site is the
/// line that called it. Odd addresses are recorded by handle, even ones by
/// address, so the estimates cover both.
#[track_caller]
fn pool_alloc(
    sampler: &mut ByteSampler,
    profiler: &Profiler,
    addr: usize,
    size_bytes: u64,
) -> AllocResult {
    let site = Location::caller();
    if !sampler.sample(size_bytes) {
        return (None, site);
    }
    let recorded = if addr % 2 == 1 {
        profiler
            .record_alloc_handle(size_bytes, Some(site))
            .map(Recorded::Handle)
    } else {
        profiler
            .record_alloc(addr, size_bytes, Some(site))
            .map(|()| Recorded::Address)
    };
    let recorded = recorded.unwrap_or_else(|error| panic!("record {addr}, {size_bytes}: {error}"));
    (Some(recorded), site)
}

fn alloc_small(s: &mut ByteSampler, p: &Profiler, addr: usize, size: u64) -> AllocResult {
    pool_alloc(s, p, addr, size)
}

fn alloc_medium(s: &mut ByteSampler, p: &Profiler, addr: usize, size: u64) -> AllocResult {
    pool_alloc(s, p, addr, size)
}

fn alloc_large(s: &mut ByteSampler, p: &Profiler, addr: usize, size: u64) -> AllocResult {
    pool_alloc(s, p, addr, size)
}

fn alloc_mixed(s: &mut ByteSampler, p: &Profiler, addr: usize, size: u64) -> AllocResult {
    pool_alloc(s, p, addr, size)
}

/// The true sums of a set of allocations and the exact moments of their
/// Horvitz-Thompson estimates at mean `R`.
#[derive(Clone, Copy, Debug, Default)]
struct Truth {
    bytes: f64,
    count: f64,
    sampled: u64,
    /// Var(byte estimate) = Σ s² (1-p)/p.
    bytes_variance: f64,
    /// Var(count estimate) = Σ (1-p)/p.
    count_variance: f64,
    /// Var(variance estimate Σ_sampled w²(1-p)) = Σ s⁴ (1-p)³/p³.
    variance_estimate_variance: f64,
}

impl Truth {
    fn add(&mut self, size_bytes: u64, mean_bytes: u64, sampled: bool) {
        let s = size_bytes as f64;
        let p = sample_probability(size_bytes, mean_bytes);
        self.bytes += s;
        self.count += 1.0;
        self.sampled += u64::from(sampled);
        self.bytes_variance += s * s * (1.0 - p) / p;
        self.count_variance += (1.0 - p) / p;
        self.variance_estimate_variance += s.powi(4) * (1.0 - p).powi(3) / p.powi(3);
    }

    fn merge(&mut self, other: &Truth) {
        self.bytes += other.bytes;
        self.count += other.count;
        self.sampled += other.sampled;
        self.bytes_variance += other.bytes_variance;
        self.count_variance += other.count_variance;
        self.variance_estimate_variance += other.variance_estimate_variance;
    }
}

/// Checks one byte estimate, its count estimate and its claimed standard
/// error against the truth.
fn check_estimate(
    what: &str,
    truth: &Truth,
    estimated_bytes: f64,
    estimated_count: f64,
    bytes_std_error: f64,
) {
    let sd_bytes = truth.bytes_variance.sqrt();
    assert!(
        (estimated_bytes - truth.bytes).abs() <= SIGMAS * sd_bytes,
        "{what}: estimated {estimated_bytes:.0} bytes, true {:.0}, sd {sd_bytes:.0}",
        truth.bytes
    );
    let sd_count = truth.count_variance.sqrt();
    assert!(
        (estimated_count - truth.count).abs() <= SIGMAS * sd_count,
        "{what}: estimated {estimated_count:.1} allocations, true {}, sd {sd_count:.1}",
        truth.count
    );
    // The claimed variance is itself an unbiased estimate with a known
    // spread; it must land within SIGMAS of its own standard deviation...
    let claimed_variance = bytes_std_error * bytes_std_error;
    let sd_claimed = truth.variance_estimate_variance.sqrt();
    assert!(
        (claimed_variance - truth.bytes_variance).abs() <= SIGMAS * sd_claimed,
        "{what}: claimed variance {claimed_variance:.4e}, true {:.4e}, sd of the claim \
         {sd_claimed:.4e}",
        truth.bytes_variance
    );
    // ...and, on these workloads (dozens of samples per site at least),
    // that keeps the claimed standard error within a factor of 2.
    let ratio = bytes_std_error / sd_bytes;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "{what}: claimed standard error {bytes_std_error:.0}, exact {sd_bytes:.0}"
    );
}

#[test]
fn estimates_within_their_standard_error() {
    type Helper = fn(&mut ByteSampler, &Profiler, usize, u64) -> AllocResult;
    const MEAN_BYTES: u64 = SAMPLE_MEAN_BYTES_DEFAULT;
    let helpers: [(Helper, u32); 4] = [
        (alloc_small, 50),
        (alloc_medium, 5),
        (alloc_large, 1),
        (alloc_mixed, 5),
    ];
    let weights_total: u32 = helpers.iter().map(|(_, weight)| weight).sum();
    const ALLOCATIONS: usize = 250_000;
    for seed in [11u64, 22, 33, 44] {
        let profiler = Profiler::new(config(ProfileLevel::Sampled, MEAN_BYTES, seed)).unwrap();
        let mut sampler = profiler.thread_sampler();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut total: HashMap<&'static Location<'static>, Truth> = HashMap::new();
        let mut live: HashMap<&'static Location<'static>, Truth> = HashMap::new();
        for addr in 1..=ALLOCATIONS {
            let mut pick = rng.gen_range(0..weights_total);
            let mut helper_index = 0;
            while pick >= helpers[helper_index].1 {
                pick -= helpers[helper_index].1;
                helper_index += 1;
            }
            let size_bytes = match helper_index {
                0 => rng.gen_range(16..=256),
                1 => rng.gen_range(4096..=64 * 1024),
                2 => rng.gen_range(1024 * 1024..=4 * 1024 * 1024),
                _ => {
                    let (low, high) = ((16f64).ln(), ((4 * 1024 * 1024) as f64).ln());
                    rng.gen_range(low..high).exp() as u64
                }
            };
            let (recorded, site) =
                helpers[helper_index].0(&mut sampler, &profiler, addr, size_bytes);
            let sampled = recorded.is_some();
            total
                .entry(site)
                .or_default()
                .add(size_bytes, MEAN_BYTES, sampled);
            if rng.gen_bool(0.5) {
                live.entry(site)
                    .or_default()
                    .add(size_bytes, MEAN_BYTES, sampled);
            } else if let Some(recorded) = recorded {
                let record = match recorded {
                    Recorded::Address => profiler.record_free(addr),
                    Recorded::Handle(handle) => Some(
                        profiler
                            .record_free_handle(handle)
                            .unwrap_or_else(|error| panic!("seed {seed}: {error}")),
                    ),
                };
                assert_eq!(
                    record.map(|record| record.size_bytes),
                    Some(size_bytes),
                    "seed {seed}: free of sampled {addr}"
                );
            }
        }
        profiler.check_invariants();
        let report = profiler.profile();
        assert_eq!(report.sites.len(), helpers.len(), "seed {seed}:\n{report}");
        assert!(
            report.method.contains("unbiased Horvitz-Thompson"),
            "{report}"
        );
        assert!(report.method.contains(&MEAN_BYTES.to_string()), "{report}");
        for site in &report.sites {
            let (&location, site_total) = total
                .iter()
                .find(|(location, _)| location.to_string() == site.site)
                .unwrap_or_else(|| panic!("seed {seed}: unexpected site {}", site.site));
            let site_live = live.get(location).copied().unwrap_or_default();
            let estimates = &site.estimates;
            assert_eq!(
                estimates.sampled_count, site_total.sampled,
                "seed {seed}: {location}"
            );
            assert_eq!(
                estimates.live_sampled_count, site_live.sampled,
                "seed {seed}: {location}"
            );
            check_estimate(
                &format!("seed {seed}, {location}, total"),
                site_total,
                estimates.estimated_total_bytes,
                estimates.estimated_total_count,
                estimates.total_bytes_std_error,
            );
            check_estimate(
                &format!("seed {seed}, {location}, live"),
                &site_live,
                estimates.estimated_live_bytes,
                estimates.estimated_live_count,
                estimates.live_bytes_std_error,
            );
        }
        let mut all_total = Truth::default();
        let mut all_live = Truth::default();
        total.values().for_each(|truth| all_total.merge(truth));
        live.values().for_each(|truth| all_live.merge(truth));
        let totals = &report.totals;
        check_estimate(
            &format!("seed {seed}, all sites, total"),
            &all_total,
            totals.estimated_total_bytes,
            totals.estimated_total_count,
            totals.total_bytes_std_error,
        );
        check_estimate(
            &format!("seed {seed}, all sites, live"),
            &all_live,
            totals.estimated_live_bytes,
            totals.estimated_live_count,
            totals.live_bytes_std_error,
        );
        let live_bytes: Vec<f64> = report
            .sites
            .iter()
            .map(|site| site.estimates.estimated_live_bytes)
            .collect();
        assert!(
            live_bytes.windows(2).all(|pair| pair[0] >= pair[1]),
            "seed {seed}: sites not sorted by live bytes: {live_bytes:?}"
        );
        let text = report.to_string();
        for site in &report.sites {
            assert!(
                text.contains(&site.site),
                "seed {seed}: {} missing from\n{text}",
                site.site
            );
        }
    }
}

// ---------------------------------------------------------------------------
// (3) Record and free against a naive model.

#[test]
fn bookkeeping_matches_naive_model() {
    const OPERATIONS: usize = 20_000;
    const ADDRESSES: usize = 400;
    let locations: [&'static Location<'static>; 3] =
        [Location::caller(), Location::caller(), Location::caller()];
    for seed in [100u64, 101, 102] {
        let profiler = Profiler::new(config(
            ProfileLevel::Sampled,
            SAMPLE_MEAN_BYTES_DEFAULT,
            seed,
        ))
        .unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut model: HashMap<usize, (u64, Option<usize>)> = HashMap::new();
        let mut sampled_per_site = [0u64; 4];
        let mut site_ids: [Option<u32>; 3] = [None; 3];
        for operation in 0..OPERATIONS {
            let addr = rng.gen_range(1..=ADDRESSES);
            if rng.gen_bool(0.55) {
                let size_bytes = rng.gen_range(1..=(1u64 << 22));
                let site_index = rng.gen_range(0..4usize);
                let site = locations.get(site_index).copied();
                let result = profiler.record_alloc(addr, size_bytes, site);
                match model.get(&addr) {
                    Some(&(live_size_bytes, _)) => assert_eq!(
                        result,
                        Err(SamplingError::AlreadyLive {
                            addr,
                            live_size_bytes,
                            size_bytes
                        }),
                        "seed {seed}, op {operation}"
                    ),
                    None => {
                        assert_eq!(result, Ok(()), "seed {seed}, op {operation}");
                        model.insert(addr, (size_bytes, site.map(|_| site_index)));
                        sampled_per_site[site_index] += 1;
                    }
                }
            } else {
                let record = profiler.record_free(addr);
                match model.remove(&addr) {
                    None => assert_eq!(record, None, "seed {seed}, op {operation}: free {addr}"),
                    Some((size_bytes, site_index)) => {
                        let record = record.unwrap_or_else(|| {
                            panic!("seed {seed}, op {operation}: live {addr} not found")
                        });
                        assert_eq!(record.size_bytes, size_bytes, "seed {seed}, op {operation}");
                        match site_index {
                            None => assert_eq!(record.site_id, SITE_ID_UNKNOWN, "seed {seed}"),
                            Some(index) => {
                                let id = *site_ids[index].get_or_insert(record.site_id);
                                assert_eq!(
                                    record.site_id, id,
                                    "seed {seed}, op {operation}: site {index} changed id"
                                );
                            }
                        }
                    }
                }
            }
            assert_eq!(
                profiler.live_samples(),
                model.len(),
                "seed {seed}, op {operation}"
            );
            if operation.is_multiple_of(1000) {
                profiler.check_invariants();
            }
        }
        profiler.check_invariants();
        let known_ids: Vec<u32> = site_ids.iter().flatten().copied().collect();
        let mut distinct_ids = known_ids.clone();
        distinct_ids.sort_unstable();
        distinct_ids.dedup();
        assert_eq!(
            known_ids.len(),
            distinct_ids.len(),
            "seed {seed}: {site_ids:?}"
        );

        // Sizes of 0 are never sampled, so they cannot be recorded.
        assert_eq!(
            profiler.record_alloc(ADDRESSES + 1, 0, None),
            Err(SamplingError::ZeroProbability {
                size_bytes: 0,
                mean_bytes: SAMPLE_MEAN_BYTES_DEFAULT
            })
        );
        assert_eq!(profiler.live_samples(), model.len(), "seed {seed}");

        // The report's live estimates are exactly the model's weights.
        let report = profiler.profile();
        for (index, location) in locations.iter().enumerate() {
            let site = report
                .sites
                .iter()
                .find(|site| site.site == location.to_string())
                .unwrap_or_else(|| panic!("seed {seed}: no site {location}\n{report}"));
            let live = model.values().filter(|(_, site)| *site == Some(index));
            let expected_bytes: f64 = live
                .clone()
                .map(|&(size, _)| {
                    sample_weight(size, SAMPLE_MEAN_BYTES_DEFAULT)
                        .unwrap()
                        .bytes
                })
                .sum();
            let estimates = &site.estimates;
            assert_eq!(
                estimates.live_sampled_count,
                live.count() as u64,
                "seed {seed}"
            );
            assert_eq!(
                estimates.sampled_count, sampled_per_site[index],
                "seed {seed}"
            );
            assert!(
                (estimates.estimated_live_bytes - expected_bytes).abs() <= 1e-9 * expected_bytes,
                "seed {seed}, {location}: live {} vs model {expected_bytes}",
                estimates.estimated_live_bytes
            );
        }
        let unknown = report
            .sites
            .iter()
            .find(|site| site.site_id == SITE_ID_UNKNOWN);
        assert_eq!(
            unknown.map(|site| (site.site.as_str(), site.estimates.sampled_count)),
            Some(("unknown", sampled_per_site[3])),
            "seed {seed}"
        );
    }
}

// ---------------------------------------------------------------------------
// (4) Leak reports on a manual clock.

#[test]
fn leak_report_lists_old_live_samples_only() {
    let clock = Arc::new(ManualClock::new());
    let profiler = Profiler::with_clock(
        config(ProfileLevel::Sampled, SAMPLE_MEAN_BYTES_DEFAULT, 1),
        clock.clone(),
    )
    .unwrap();
    let site_a: &'static Location<'static> = Location::caller();
    let site_b: &'static Location<'static> = Location::caller();
    let weight = |size: u64| sample_weight(size, SAMPLE_MEAN_BYTES_DEFAULT).unwrap();

    profiler.record_alloc(1, 1000, Some(site_a)).unwrap(); // t = 0, stays
    profiler.record_alloc(2, 5_000_000, Some(site_b)).unwrap(); // t = 0, freed
    profiler.record_alloc(3, 3_000_000, Some(site_b)).unwrap(); // t = 0, stays
    clock.advance(Duration::from_secs(5));
    profiler.record_alloc(4, 2000, Some(site_a)).unwrap(); // t = 5 s, stays
    assert!(profiler.record_free(2).is_some());
    clock.advance(Duration::from_secs(6)); // now t = 11 s

    let report = profiler.leak_report(Duration::from_secs(10));
    let listed: Vec<(&str, u64)> = report
        .sites
        .iter()
        .map(|site| (site.site.as_str(), site.estimates.sampled_count))
        .collect();
    let (a, b) = (site_a.to_string(), site_b.to_string());
    // Sorted by estimated bytes: site b (3 MB) before site a (1 kB).
    assert_eq!(listed, vec![(b.as_str(), 1), (a.as_str(), 1)], "{report}");
    assert_eq!(
        report.sites[0].estimates.estimated_bytes,
        weight(3_000_000).bytes
    );
    assert_eq!(
        report.sites[1].estimates.estimated_bytes,
        weight(1000).bytes
    );
    assert_eq!(
        report.sites[1].estimates.estimated_count,
        weight(1000).count
    );
    assert_eq!(
        report.sites[1].estimates.oldest_age,
        Duration::from_secs(11)
    );
    assert_eq!(report.totals.sampled_count, 2);
    assert_eq!(report.uptime, Duration::from_secs(11));

    // A lower threshold adds the sample made at 5 s.
    let report = profiler.leak_report(Duration::from_secs(6));
    let site_a_row = report.sites.iter().find(|site| site.site == a).unwrap();
    assert_eq!(site_a_row.estimates.sampled_count, 2, "{report}");
    assert_eq!(
        site_a_row.estimates.estimated_bytes,
        weight(1000).bytes + weight(2000).bytes
    );
    assert_eq!(site_a_row.estimates.oldest_age, Duration::from_secs(11));
    let text = report.to_string();
    assert!(text.contains(&a) && text.contains(&b), "{text}");

    // Past every age: nothing.
    let report = profiler.leak_report(Duration::from_secs(12));
    assert!(report.sites.is_empty(), "{report}");
    assert_eq!(report.totals.sampled_count, 0);

    // Times saturate at u32::MAX milliseconds (49.7 days).
    clock.advance(Duration::from_secs(60 * 24 * 3600));
    profiler.record_alloc(5, 100, None).unwrap();
    let record = profiler.record_free(5).unwrap();
    assert_eq!(
        record,
        SampleRecord {
            size_bytes: 100,
            alloc_ms: u32::MAX,
            site_id: SITE_ID_UNKNOWN
        }
    );
    profiler.check_invariants();
}

// ---------------------------------------------------------------------------
// (5) The history ring.

#[test]
fn history_ring_is_bounded_and_counts_drops() {
    let event = |index: usize| HistoryEvent {
        kind: if index.is_multiple_of(2) {
            HistoryEventKind::Alloc
        } else {
            HistoryEventKind::Free
        },
        addr: index,
        size_bytes: index as u64 * 16,
        at_ms: index as u32,
    };

    let off = Profiler::new(ProfileConfig::default()).unwrap();
    assert!(!off.history_enabled());
    off.record_event(event(1));
    assert!(off.history().is_empty());
    assert_eq!(off.history_dropped_events(), 0);

    const CAPACITY: usize = 8;
    let profiler = Profiler::new(ProfileConfig {
        history_events_max: CAPACITY,
        ..ProfileConfig::default()
    })
    .unwrap();
    assert!(profiler.history_enabled());
    for index in 0..5 {
        profiler.record_event(event(index));
    }
    assert_eq!(profiler.history(), (0..5).map(event).collect::<Vec<_>>());
    assert_eq!(profiler.history_dropped_events(), 0);
    for index in 5..20 {
        profiler.record_event(event(index));
        profiler.check_invariants();
    }
    assert_eq!(profiler.history(), (12..20).map(event).collect::<Vec<_>>());
    assert_eq!(profiler.history_dropped_events(), 12);
    assert_eq!(
        profiler.metadata_bytes().history_bytes,
        CAPACITY * size_of::<HistoryEvent>()
    );

    assert_eq!(
        Profiler::new(ProfileConfig {
            history_events_max: HISTORY_EVENTS_LIMIT + 1,
            ..ProfileConfig::default()
        })
        .err(),
        Some(SamplingError::HistoryTooLarge {
            requested_events: HISTORY_EVENTS_LIMIT + 1,
            max_events: HISTORY_EVENTS_LIMIT
        })
    );
}

// ---------------------------------------------------------------------------
// (6) Detailed level: one stack id per call path.

#[inline(never)]
fn record_and_free(profiler: &Profiler, addr: usize) -> u32 {
    profiler.record_alloc(black_box(addr), 4096, None).unwrap();
    profiler.record_free(addr).unwrap().site_id
}

#[inline(never)]
fn path_alpha(profiler: &Profiler, addr: usize) -> u32 {
    black_box(record_and_free(profiler, addr))
}

#[inline(never)]
fn path_beta(profiler: &Profiler, addr: usize) -> u32 {
    // A different body, so the compiler cannot merge it with path_alpha.
    let site_id = record_and_free(profiler, black_box(addr));
    black_box(site_id).wrapping_add(black_box(0))
}

#[test]
fn detailed_level_interns_one_site_per_call_path() {
    let profiler =
        Profiler::new(config(ProfileLevel::Detailed, SAMPLE_MEAN_BYTES_DEFAULT, 3)).unwrap();
    let alpha: Vec<u32> = (0..3).map(|i| path_alpha(&profiler, 10 + i)).collect();
    let beta: Vec<u32> = (0..3).map(|i| path_beta(&profiler, 20 + i)).collect();
    let alpha_elsewhere = path_alpha(&profiler, 30);
    assert!(
        alpha.iter().all(|&id| id == alpha[0]),
        "alpha ids {alpha:?}"
    );
    assert!(beta.iter().all(|&id| id == beta[0]), "beta ids {beta:?}");
    assert_ne!(alpha[0], beta[0], "two paths, one site");
    assert_ne!(alpha[0], alpha_elsewhere, "alpha from two lines, one site");
    assert!(
        ![alpha[0], beta[0], alpha_elsewhere].contains(&SITE_ID_UNKNOWN),
        "a stack was not captured: {alpha:?} {beta:?} {alpha_elsewhere}"
    );

    // The same stack with and without a location: two sites.
    let with_location = {
        let here: &'static Location<'static> = Location::caller();
        let mut ids = Vec::new();
        for addr in [40usize, 41] {
            profiler.record_alloc(addr, 4096, Some(here)).unwrap();
            ids.push(profiler.record_free(addr).unwrap().site_id);
        }
        ids
    };
    assert_eq!(with_location[0], with_location[1]);
    profiler.check_invariants();

    let report = profiler.profile();
    let label_of = |site_id: u32| {
        report
            .sites
            .iter()
            .find(|site| site.site_id == site_id)
            .map(|site| site.site.clone())
            .unwrap_or_else(|| panic!("site {site_id} missing from\n{report}"))
    };
    assert!(label_of(alpha[0]).contains("path_alpha"), "{report}");
    assert!(label_of(beta[0]).contains("path_beta"), "{report}");
    assert!(
        !label_of(alpha[0]).contains("strata_pool::sampling::"),
        "{report}"
    );
    let cost_ns = report
        .stack_capture_cost_ns
        .expect("Detailed reports state the cost");
    assert!(cost_ns > 0, "{report}");
    assert!(
        report.to_string().contains("ns per stack capture"),
        "{report}"
    );
    assert!(Profiler::stack_capture_cost_ns() > 0);

    let sampled =
        Profiler::new(config(ProfileLevel::Sampled, SAMPLE_MEAN_BYTES_DEFAULT, 3)).unwrap();
    assert_eq!(
        path_alpha(&sampled, 1),
        path_beta(&sampled, 2),
        "Sampled captured a stack"
    );
    assert_eq!(sampled.profile().stack_capture_cost_ns, None);
}

// ---------------------------------------------------------------------------
// (7) Sizes and thread-safety of the types.

#[test]
fn record_is_at_most_16_bytes_and_types_are_thread_safe() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    assert_eq!(size_of::<SampleRecord>(), 16);
    send::<ByteSampler>();
    send_sync::<Profiler>();
}

// ---------------------------------------------------------------------------
// (8) metadata_bytes is the heap the profiler really holds.

/// Counts the net heap bytes each thread has allocated, so a test can
/// measure what one structure holds while other tests run.
struct CountingAllocator;

thread_local! {
    static NET_HEAP_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count_heap_bytes(delta: isize) {
    // During thread teardown the slot may be gone; those frees do not matter.
    let _ = NET_HEAP_BYTES.try_with(|net| net.set(net.get() + delta));
}

// SAFETY: every method forwards to `System` with the caller's arguments and
// only adds bookkeeping in a const-initialized thread-local `Cell`, which
// never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            count_heap_bytes(layout.size() as isize);
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        let block = unsafe { System.alloc_zeroed(layout) };
        if !block.is_null() {
            count_heap_bytes(layout.size() as isize);
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(block, layout) };
        count_heap_bytes(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let moved = unsafe { System.realloc(block, layout, new_size) };
        if !moved.is_null() {
            count_heap_bytes(new_size as isize - layout.size() as isize);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn net_heap_bytes() -> isize {
    NET_HEAP_BYTES.with(Cell::get)
}

#[test]
fn metadata_bytes_equals_measured_heap() {
    let sites: [&'static Location<'static>; 4] = [
        Location::caller(),
        Location::caller(),
        Location::caller(),
        Location::caller(),
    ];
    for level in [ProfileLevel::Sampled, ProfileLevel::Detailed] {
        // Warm up what is allocated once per thread (hash keys, unwinder).
        drop(Profiler::new(config(level, SAMPLE_MEAN_BYTES_DEFAULT, 0)).unwrap());
        drop(black_box(HashMap::<u64, u64>::from([(1, 1)])));
        let warm = Profiler::new(config(level, SAMPLE_MEAN_BYTES_DEFAULT, 0)).unwrap();
        warm.record_alloc(1, 1, None).unwrap();
        drop(warm);

        for live_target in [0usize, 1, 5, 100, 3000] {
            // Allocated before the measurement starts.
            let mut handles = Vec::with_capacity(live_target * 2);
            let before = net_heap_bytes();
            let profiler = Profiler::new(ProfileConfig {
                level,
                mean_bytes: SAMPLE_MEAN_BYTES_DEFAULT,
                history_events_max: 50,
                seed: 0,
            })
            .unwrap();
            // Every other sample by address, the rest by handle; free half
            // of each.
            for addr in 0..live_target * 2 {
                let site = Some(sites[addr % sites.len()]);
                let size_bytes = 1 + addr as u64;
                if addr % 4 < 2 {
                    profiler.record_alloc(addr, size_bytes, site).unwrap();
                } else {
                    handles.push(profiler.record_alloc_handle(size_bytes, site).unwrap());
                }
            }
            for addr in (0..live_target * 2).step_by(4) {
                assert!(profiler.record_free(addr).is_some());
            }
            for &handle in handles.iter().step_by(2) {
                profiler.record_free_handle(handle).unwrap();
            }
            assert_eq!(profiler.live_samples(), live_target);
            for phase in ["after the frees", "after shrink"] {
                if phase == "after shrink" {
                    let total_before = profiler.metadata_bytes().total();
                    let released = profiler.shrink();
                    assert_eq!(
                        released,
                        total_before - profiler.metadata_bytes().total(),
                        "level {level}, {live_target} live samples"
                    );
                }
                let measured = net_heap_bytes() - before;
                let claimed = profiler.metadata_bytes();
                assert_eq!(
                    measured,
                    claimed.total() as isize,
                    "level {level}, {live_target} live samples, {phase}: measured {measured} \
                     heap bytes, metadata_bytes says {claimed:?}"
                );
                assert_eq!(
                    claimed.record_bytes,
                    16 * live_target,
                    "level {level}, {phase}: {claimed:?}"
                );
                assert_eq!(
                    claimed.history_bytes,
                    50 * size_of::<HistoryEvent>(),
                    "level {level}, {phase}: {claimed:?}"
                );
                assert_eq!(
                    claimed.address_map_bytes == 0,
                    live_target == 0,
                    "level {level}, {live_target} live samples, {phase}: {claimed:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (9) The handle API against a naive model of the slab.

/// One slab entry of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelEntry {
    Vacant,
    /// Recorded by handle: size and site index (3 = unknown).
    Handle(u64, usize),
    /// Recorded by address.
    Address(usize, u64, usize),
}

/// The slab as a plain vector, a stack of vacant indices (the documented
/// reuse order: most recently freed first; lowest first after a shrink)
/// and the capacity (grown by an eighth, at least 64, exact after shrink).
#[derive(Debug, Default)]
struct SlabModel {
    entries: Vec<ModelEntry>,
    vacant_stack: Vec<u32>,
    capacity: usize,
    addresses: HashMap<usize, u32>,
}

impl SlabModel {
    fn next_handle(&self) -> u32 {
        self.vacant_stack
            .last()
            .copied()
            .unwrap_or(self.entries.len() as u32)
    }

    fn insert(&mut self, entry: ModelEntry) -> u32 {
        let handle = match self.vacant_stack.pop() {
            Some(handle) => handle,
            None => {
                let len = self.entries.len();
                if len == self.capacity {
                    self.capacity +=
                        (len / SAMPLE_SLAB_GROW_DIVISOR).max(SAMPLE_SLAB_GROW_MIN_ENTRIES);
                }
                self.entries.push(ModelEntry::Vacant);
                len as u32
            }
        };
        self.entries[handle as usize] = entry;
        if let ModelEntry::Address(addr, ..) = entry {
            self.addresses.insert(addr, handle);
        }
        handle
    }

    fn remove(&mut self, handle: u32) -> ModelEntry {
        let entry = std::mem::replace(&mut self.entries[handle as usize], ModelEntry::Vacant);
        if let ModelEntry::Address(addr, ..) = entry {
            self.addresses.remove(&addr);
        }
        self.vacant_stack.push(handle);
        entry
    }

    fn shrink(&mut self) {
        while self.entries.last() == Some(&ModelEntry::Vacant) {
            self.entries.pop();
        }
        self.vacant_stack = (0..self.entries.len() as u32)
            .rev()
            .filter(|&index| self.entries[index as usize] == ModelEntry::Vacant)
            .collect();
        self.capacity = self.entries.len();
    }

    fn live(&self) -> usize {
        self.entries.len() - self.vacant()
    }

    fn vacant(&self) -> usize {
        self.vacant_stack.len()
    }

    /// What `record_free_handle(handle)` must answer, without the record.
    fn expected_free(&self, handle: u32) -> Result<ModelEntry, SamplingError> {
        let sample_handle = SampleHandle::from_index(handle).unwrap();
        match self.entries.get(handle as usize) {
            None => Err(SamplingError::StaleHandle {
                handle: sample_handle,
                slab_entries: self.entries.len(),
            }),
            Some(ModelEntry::Vacant) => Err(SamplingError::VacantHandle {
                handle: sample_handle,
            }),
            Some(ModelEntry::Address(..)) => Err(SamplingError::AddressKeyed {
                handle: sample_handle,
            }),
            Some(&entry) => Ok(entry),
        }
    }
}

#[test]
fn handle_api_matches_naive_model() {
    const OPERATIONS: usize = 30_000;
    const ADDRESSES: usize = 300;
    let locations: [&'static Location<'static>; 3] =
        [Location::caller(), Location::caller(), Location::caller()];
    for seed in [200u64, 201, 202, 203] {
        let clock = Arc::new(ManualClock::new());
        let profiler = Profiler::with_clock(
            config(ProfileLevel::Sampled, SAMPLE_MEAN_BYTES_DEFAULT, seed),
            clock.clone(),
        )
        .unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut model = SlabModel::default();
        let mut site_ids: [Option<u32>; 4] = [None, None, None, Some(SITE_ID_UNKNOWN)];
        let mut sampled_per_site = [0u64; 4];
        // Outcomes seen: stale, vacant, recorded by address, shrinks that
        // dropped a tail; each must occur.
        let mut outcomes = [0u32; 4];
        // Check a returned record against the model's entry.
        let mut check_record = |record: SampleRecord, size_bytes: u64, site: usize, what: &str| {
            assert_eq!(record.size_bytes, size_bytes, "seed {seed}, {what}");
            let id = *site_ids[site].get_or_insert(record.site_id);
            assert_eq!(record.site_id, id, "seed {seed}, {what}: site {site}");
        };
        // Bursts of allocations and of frees, so the slab grows, empties
        // and leaves vacant tails.
        let mut alloc_bias = 0.6;
        for operation in 0..OPERATIONS {
            if operation % 2000 == 0 {
                alloc_bias = if alloc_bias > 0.5 { 0.3 } else { 0.7 };
            }
            clock.advance(Duration::from_millis(rng.gen_range(0..3)));
            let what = format!("op {operation}");
            let size_bytes = rng.gen_range(1..=(1u64 << 22));
            let site = rng.gen_range(0..4usize);
            let location = locations.get(site).copied();
            let roll: f64 = rng.gen();
            if roll < alloc_bias * 0.75 {
                let expected = model.next_handle();
                let handle = profiler
                    .record_alloc_handle(size_bytes, location)
                    .unwrap_or_else(|error| panic!("seed {seed}, {what}: {error}"));
                assert_eq!(handle.index(), expected, "seed {seed}, {what}");
                assert_eq!(model.insert(ModelEntry::Handle(size_bytes, site)), expected);
                sampled_per_site[site] += 1;
            } else if roll < alloc_bias {
                let addr = rng.gen_range(1..=ADDRESSES);
                let result = profiler.record_alloc(addr, size_bytes, location);
                match model.addresses.get(&addr) {
                    Some(&handle) => {
                        let ModelEntry::Address(_, live_size_bytes, _) =
                            model.entries[handle as usize]
                        else {
                            panic!("seed {seed}, {what}: model maps {addr} to {handle}");
                        };
                        assert_eq!(
                            result,
                            Err(SamplingError::AlreadyLive {
                                addr,
                                live_size_bytes,
                                size_bytes
                            }),
                            "seed {seed}, {what}"
                        );
                    }
                    None => {
                        assert_eq!(result, Ok(()), "seed {seed}, {what}");
                        model.insert(ModelEntry::Address(addr, size_bytes, site));
                        sampled_per_site[site] += 1;
                    }
                }
            } else if roll < 0.85 {
                // Free a live sample recorded by handle, sometimes twice.
                let live: Vec<u32> = (0..model.entries.len() as u32)
                    .filter(|&index| {
                        matches!(model.entries[index as usize], ModelEntry::Handle(..))
                    })
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let handle = live[rng.gen_range(0..live.len())];
                let sample_handle = SampleHandle::from_index(handle).unwrap();
                let record = profiler
                    .record_free_handle(sample_handle)
                    .unwrap_or_else(|error| panic!("seed {seed}, {what}: {error}"));
                let ModelEntry::Handle(size_bytes, site) = model.remove(handle) else {
                    unreachable!()
                };
                check_record(record, size_bytes, site, &what);
                if rng.gen_bool(0.3) {
                    assert_eq!(
                        profiler.record_free_handle(sample_handle),
                        Err(SamplingError::VacantHandle {
                            handle: sample_handle
                        }),
                        "seed {seed}, {what}: double free"
                    );
                }
            } else if roll < 0.93 {
                // Any handle: live, vacant, recorded by address or past the end.
                let handle = rng.gen_range(0..model.entries.len() as u32 + 3);
                let result = profiler.record_free_handle(SampleHandle::from_index(handle).unwrap());
                match model.expected_free(handle) {
                    Err(error) => {
                        outcomes[match error {
                            SamplingError::StaleHandle { .. } => 0,
                            SamplingError::VacantHandle { .. } => 1,
                            _ => 2,
                        }] += 1;
                        assert_eq!(result, Err(error), "seed {seed}, {what}");
                    }
                    Ok(_) => {
                        let ModelEntry::Handle(size_bytes, site) = model.remove(handle) else {
                            unreachable!()
                        };
                        let record =
                            result.unwrap_or_else(|error| panic!("seed {seed}, {what}: {error}"));
                        check_record(record, size_bytes, site, &what);
                    }
                }
            } else if roll < 0.995 {
                let addr = rng.gen_range(1..=ADDRESSES);
                let record = profiler.record_free(addr);
                match model.addresses.get(&addr).copied() {
                    None => assert_eq!(record, None, "seed {seed}, {what}: free {addr}"),
                    Some(handle) => {
                        let ModelEntry::Address(_, size_bytes, site) = model.remove(handle) else {
                            unreachable!()
                        };
                        let record = record.unwrap_or_else(|| {
                            panic!("seed {seed}, {what}: live {addr} not found")
                        });
                        check_record(record, size_bytes, site, &what);
                    }
                }
            } else {
                let before = profiler.metadata_bytes();
                let released = profiler.shrink();
                let entries_before = model.entries.len();
                model.shrink();
                outcomes[3] += u32::from(model.entries.len() < entries_before);
                let after = profiler.metadata_bytes();
                assert_eq!(
                    released,
                    before.total() - after.total(),
                    "seed {seed}, {what}: {before:?} -> {after:?}"
                );
            }
            assert_eq!(profiler.live_samples(), model.live(), "seed {seed}, {what}");
            assert_eq!(
                profiler.vacant_entries(),
                model.vacant(),
                "seed {seed}, {what}"
            );
            let metadata = profiler.metadata_bytes();
            assert_eq!(
                (metadata.record_bytes, metadata.vacant_bytes),
                (16 * model.live(), 16 * (model.capacity - model.live())),
                "seed {seed}, {what}: {metadata:?}, model capacity {}",
                model.capacity
            );
            if operation % 1000 == 0 {
                profiler.check_invariants();
            }
        }
        profiler.check_invariants();
        assert!(
            outcomes.iter().all(|&seen| seen > 0),
            "seed {seed}: stale, vacant, by-address refusals and tail drops seen {outcomes:?}"
        );

        // Reports see the samples recorded either way.
        let live_weights = |site: usize| {
            model
                .entries
                .iter()
                .filter_map(|entry| match *entry {
                    ModelEntry::Handle(size, s) | ModelEntry::Address(_, size, s) if s == site => {
                        Some(sample_weight(size, SAMPLE_MEAN_BYTES_DEFAULT).unwrap())
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let report = profiler.profile();
        let leaks = profiler.leak_report(Duration::ZERO);
        for site in 0..4 {
            let site_id = site_ids[site].unwrap_or_else(|| panic!("seed {seed}: site {site}"));
            let profile_row = report
                .sites
                .iter()
                .find(|row| row.site_id == site_id)
                .unwrap_or_else(|| panic!("seed {seed}: no site {site_id}\n{report}"));
            let weights = live_weights(site);
            let expected_bytes: f64 = weights.iter().map(|weight| weight.bytes).sum();
            let estimates = &profile_row.estimates;
            assert_eq!(
                (estimates.sampled_count, estimates.live_sampled_count),
                (sampled_per_site[site], weights.len() as u64),
                "seed {seed}, site {site}"
            );
            assert!(
                (estimates.estimated_live_bytes - expected_bytes).abs() <= 1e-9 * expected_bytes,
                "seed {seed}, site {site}: live {} vs model {expected_bytes}",
                estimates.estimated_live_bytes
            );
            let leak_row = leaks.sites.iter().find(|row| row.site_id == site_id);
            assert_eq!(
                leak_row.map_or(0, |row| row.estimates.sampled_count),
                weights.len() as u64,
                "seed {seed}, site {site}"
            );
            if let Some(row) = leak_row {
                assert_eq!(
                    row.estimates.estimated_bytes,
                    estimates.estimated_live_bytes
                );
            }
        }
        assert_eq!(report.totals.live_sampled_count, model.live() as u64);
    }
}

#[test]
fn handle_errors_and_limits() {
    let profiler = Profiler::new(ProfileConfig::default()).unwrap();
    assert_eq!(
        profiler.record_alloc_handle(0, None),
        Err(SamplingError::ZeroProbability {
            size_bytes: 0,
            mean_bytes: SAMPLE_MEAN_BYTES_DEFAULT
        })
    );
    assert_eq!(profiler.live_samples(), 0);
    let empty = profiler.metadata_bytes();
    assert_eq!(
        (
            empty.record_bytes,
            empty.vacant_bytes,
            empty.address_map_bytes
        ),
        (0, 0, 0),
        "{empty:?}"
    );
    let first = profiler.record_alloc_handle(100, None).unwrap();
    let handle = SampleHandle::from_index(5).unwrap();
    let stale = profiler.record_free_handle(handle).unwrap_err();
    assert_eq!(
        stale,
        SamplingError::StaleHandle {
            handle,
            slab_entries: 1
        }
    );
    profiler.record_alloc(0x1000, 200, None).unwrap();
    let keyed = SampleHandle::from_index(1).unwrap();
    let by_address = profiler.record_free_handle(keyed).unwrap_err();
    assert_eq!(by_address, SamplingError::AddressKeyed { handle: keyed });
    assert_eq!(profiler.live_samples(), 2, "refusals changed nothing");
    assert_eq!(
        profiler.record_free(0x1000).map(|r| r.size_bytes),
        Some(200)
    );
    assert_eq!(profiler.record_free_handle(first).unwrap().size_bytes, 100);
    let vacant = profiler.record_free_handle(first).unwrap_err();
    assert_eq!(vacant, SamplingError::VacantHandle { handle: first });
    profiler.check_invariants();
    for (error, words) in [
        (stale, &["#5", "1 entries"][..]),
        (by_address, &["#1", "address"][..]),
        (vacant, &["#0", "already freed"][..]),
        (
            SamplingError::HandlesExhausted {
                max_handles: SAMPLE_HANDLES_MAX,
            },
            &["2147483647"][..],
        ),
    ] {
        let text = error.to_string();
        assert!(words.iter().all(|word| text.contains(word)), "{text}");
    }
    // Tags: 0 means "not sampled"; the largest tag fits in 31 bits.
    assert_eq!(SampleHandle::from_tag(0), None);
    assert_eq!(SampleHandle::from_tag(first.to_tag()), Some(first));
    let largest = SampleHandle::from_index(SAMPLE_HANDLES_MAX - 1).unwrap();
    assert!(
        largest.to_tag() < 1 << 31,
        "largest tag {} needs 32 bits",
        largest.to_tag()
    );
    assert_eq!(SampleHandle::from_index(SAMPLE_HANDLES_MAX), None);
}

// ---------------------------------------------------------------------------
// (10) A sample recorded by handle costs exactly 16 bytes of heap.

#[test]
fn handle_samples_cost_exactly_16_bytes() {
    let site: &'static Location<'static> = Location::caller();
    let profiler =
        Profiler::new(config(ProfileLevel::Sampled, SAMPLE_MEAN_BYTES_DEFAULT, 0)).unwrap();
    // Intern the site, then release the slab: what stays is the site table.
    let warm = profiler.record_alloc_handle(1, Some(site)).unwrap();
    profiler.record_free_handle(warm).unwrap();
    profiler.shrink();
    let empty = profiler.metadata_bytes();
    assert_eq!(
        (empty.record_bytes, empty.vacant_bytes),
        (0, 0),
        "{empty:?}"
    );
    for samples in [1usize, 7, 64, 65, 1000, 5000] {
        let mut handles = Vec::with_capacity(samples);
        let before = net_heap_bytes();
        for index in 0..samples {
            handles.push(
                profiler
                    .record_alloc_handle(1 + index as u64, Some(site))
                    .unwrap(),
            );
        }
        // Growing: the slack is reported as vacant and bounded by the
        // growth step.
        let grown = profiler.metadata_bytes();
        let measured = net_heap_bytes() - before;
        assert_eq!(
            measured,
            (grown.record_bytes + grown.vacant_bytes) as isize,
            "{samples} samples: {grown:?}"
        );
        assert_eq!(grown.record_bytes, 16 * samples, "{grown:?}");
        let slack_max = 16 * (samples / SAMPLE_SLAB_GROW_DIVISOR).max(SAMPLE_SLAB_GROW_MIN_ENTRIES);
        assert!(
            grown.vacant_bytes < slack_max,
            "{samples} samples: {grown:?}, slack at most {slack_max}"
        );
        // Shrunk: exactly 16 bytes each, nothing else.
        profiler.shrink();
        let measured = net_heap_bytes() - before;
        let shrunk = profiler.metadata_bytes();
        assert_eq!(
            measured,
            16 * samples as isize,
            "{samples} samples: {shrunk:?}"
        );
        assert_eq!(
            shrunk,
            ProfilerMetadata {
                record_bytes: 16 * samples,
                ..empty
            },
            "{samples} samples"
        );
        // A burst of frees leaves vacant entries until shrink drops the tail.
        for &handle in handles.iter().rev() {
            profiler.record_free_handle(handle).unwrap();
        }
        let vacated = profiler.metadata_bytes();
        assert_eq!(
            (vacated.record_bytes, vacated.vacant_bytes),
            (0, 16 * samples),
            "{samples} samples"
        );
        assert_eq!(profiler.vacant_entries(), samples);
        assert_eq!(profiler.shrink(), 16 * samples);
        assert_eq!(net_heap_bytes() - before, 0, "{samples} samples");
        assert_eq!(profiler.metadata_bytes(), empty);
        profiler.check_invariants();
    }
}

// ---------------------------------------------------------------------------
// (11) Reports do not depend on how samples were recorded.

#[test]
fn reports_are_the_same_for_handle_and_address_samples() {
    let sites: [&'static Location<'static>; 3] =
        [Location::caller(), Location::caller(), Location::caller()];
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        Address,
        Handle,
        Mixed,
    }
    for seed in [300u64, 301] {
        let reports: Vec<_> = [Mode::Address, Mode::Handle, Mode::Mixed]
            .into_iter()
            .map(|mode| {
                let clock = Arc::new(ManualClock::new());
                let profiler = Profiler::with_clock(
                    config(ProfileLevel::Sampled, SAMPLE_MEAN_BYTES_DEFAULT, seed),
                    clock.clone(),
                )
                .unwrap();
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut live: Vec<(usize, Recorded)> = Vec::new();
                for addr in 1..=3000usize {
                    clock.advance(Duration::from_millis(rng.gen_range(0..20)));
                    let size_bytes = rng.gen_range(1..=(1u64 << 24));
                    let site = sites.get(rng.gen_range(0..4)).copied();
                    let by_handle = match mode {
                        Mode::Address => false,
                        Mode::Handle => true,
                        Mode::Mixed => addr % 3 == 0,
                    };
                    let recorded = if by_handle {
                        Recorded::Handle(profiler.record_alloc_handle(size_bytes, site).unwrap())
                    } else {
                        profiler.record_alloc(addr, size_bytes, site).unwrap();
                        Recorded::Address
                    };
                    live.push((addr, recorded));
                    if rng.gen_bool(0.4) {
                        let (addr, recorded) = live.swap_remove(rng.gen_range(0..live.len()));
                        let record = match recorded {
                            Recorded::Address => profiler.record_free(addr).unwrap(),
                            Recorded::Handle(handle) => {
                                profiler.record_free_handle(handle).unwrap()
                            }
                        };
                        assert!(record.size_bytes > 0, "seed {seed}, {mode:?}");
                    }
                }
                profiler.check_invariants();
                let leaks =
                    [0u64, 10, 30].map(|secs| profiler.leak_report(Duration::from_secs(secs)));
                (mode, profiler.profile(), leaks)
            })
            .collect();
        let (_, profile, leaks) = &reports[0];
        assert!(
            profile.totals.live_sampled_count > 0,
            "seed {seed}\n{profile}"
        );
        assert!(
            leaks[1].totals.sampled_count > 0,
            "seed {seed}\n{}",
            leaks[1]
        );
        for (mode, other_profile, other_leaks) in &reports[1..] {
            assert_eq!(other_profile, profile, "seed {seed}, {mode:?}");
            assert_eq!(other_leaks, leaks, "seed {seed}, {mode:?}");
        }
    }
}
