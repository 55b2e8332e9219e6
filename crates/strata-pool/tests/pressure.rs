//! Pressure levels (state machine, monitor, callbacks) and the Linux memory
//! readers (parsers on fixtures, readers on a fake root, the live machine).

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_pool::pressure::{
    next_level, worst_reading, MemoryReading, PressureError, PressureEvent, PressureLevel,
    PressureMonitor, PressureSource, PressureThresholds,
};
use strata_pool::sysmem::{
    parse_cgroup_current, parse_cgroup_inactive_file, parse_cgroup_max, parse_meminfo,
    parse_proc_self_cgroup, parse_process_status, read_cgroup_memory, read_cgroup_memory_at,
    read_meminfo, read_meminfo_at, read_process_memory, read_process_memory_at, system_readings,
    system_readings_at, CgroupMemory, MemInfo, ProcessMemory, SysMemError,
};

use PressureLevel::{Critical, Elevated, High, Normal};

// ---------------------------------------------------------------------------
// State machine

/// The rule restated differently from `next_level`: the result is the larger
/// of the level the ratio reaches and the highest level at or below the
/// current one that the ratio still holds (ratio >= threshold - hysteresis).
fn naive_next_level(current: PressureLevel, ratio: f64, t: &PressureThresholds) -> PressureLevel {
    let thresholds = [0.0, t.elevated_ratio, t.high_ratio, t.critical_ratio];
    let mut reached = 0;
    for (index, &threshold) in thresholds.iter().enumerate() {
        if ratio >= threshold {
            reached = index;
        }
    }
    let mut held = 0;
    for (index, &threshold) in thresholds.iter().enumerate().take(current as usize + 1) {
        if index > 0 && ratio >= threshold - t.hysteresis_ratio {
            held = index;
        }
    }
    if ratio.is_nan() {
        // No information: nothing is reached or let go of.
        return current;
    }
    PressureLevel::ALL[reached.max(held)]
}

fn grid_ratios(t: &PressureThresholds) -> Vec<f64> {
    let mut ratios: Vec<f64> = (0..=1200).map(|i| i as f64 / 1000.0).collect();
    for level in PressureLevel::ALL {
        let threshold = t.threshold_ratio(level);
        for edge in [threshold, threshold - t.hysteresis_ratio] {
            ratios.extend([edge, edge.next_up(), edge.next_down()]);
        }
    }
    ratios.extend([-0.5, 1.0, 7.0, f64::INFINITY, f64::NAN]);
    ratios
}

fn threshold_sets(seed: u64) -> Vec<PressureThresholds> {
    let mut sets = vec![
        PressureThresholds::default(),
        PressureThresholds {
            hysteresis_ratio: 0.0,
            ..PressureThresholds::default()
        },
        PressureThresholds {
            hysteresis_ratio: 0.74,
            ..PressureThresholds::default()
        },
        PressureThresholds {
            elevated_ratio: 0.5,
            high_ratio: 0.5f64.next_up(),
            critical_ratio: 1.0,
            hysteresis_ratio: 0.2,
        },
    ];
    let mut rng = SmallRng::seed_from_u64(seed);
    while sets.len() < 40 {
        let mut cuts = [rng.gen::<f64>(), rng.gen::<f64>(), rng.gen::<f64>()];
        cuts.sort_by(f64::total_cmp);
        let candidate = PressureThresholds {
            elevated_ratio: cuts[0],
            high_ratio: cuts[1],
            critical_ratio: cuts[2],
            hysteresis_ratio: rng.gen::<f64>() * cuts[0],
        };
        if candidate.validate().is_ok() {
            sets.push(candidate);
        }
    }
    sets
}

#[test]
fn next_level_matches_naive_rule_on_grid() {
    let seed = 0x5EED_0001;
    for t in threshold_sets(seed) {
        t.validate()
            .unwrap_or_else(|e| panic!("seed {seed}: {t:?} invalid: {e}"));
        for ratio in grid_ratios(&t) {
            for current in PressureLevel::ALL {
                let got = next_level(current, ratio, &t);
                let want = naive_next_level(current, ratio, &t);
                assert_eq!(
                    got, want,
                    "seed {seed}: {t:?} from {current} at ratio {ratio}"
                );
                // Properties the rule implies, as a second check.
                if ratio.is_nan() {
                    continue;
                }
                let held = |level: PressureLevel| {
                    level == Normal || ratio >= t.threshold_ratio(level) - t.hysteresis_ratio
                };
                if got > current {
                    assert!(
                        ratio >= t.threshold_ratio(got)
                            && (got == Critical
                                || ratio < t.threshold_ratio(PressureLevel::ALL[got as usize + 1])),
                        "seed {seed}: {t:?} rose from {current} to {got} at {ratio}"
                    );
                }
                if got < current {
                    let left_all = PressureLevel::ALL
                        .into_iter()
                        .filter(|&level| level > got && level <= current)
                        .all(|level| !held(level));
                    assert!(
                        left_all && held(got),
                        "seed {seed}: {t:?} fell from {current} to {got} at {ratio}"
                    );
                }
            }
        }
    }
}

#[test]
fn next_level_exact_values_on_defaults() {
    let t = PressureThresholds::default();
    let cases = [
        (Normal, 0.0, Normal),
        (Normal, 0.7499, Normal),
        (Normal, 0.75, Elevated),
        (Normal, 0.85, High),
        (Normal, 0.95, Critical),
        (Normal, 1.5, Critical),
        (Elevated, 0.71, Elevated),
        (Elevated, 0.69, Normal),
        (High, 0.81, High),
        (High, 0.79, Elevated),
        (High, 0.69, Normal),
        (Critical, 0.91, Critical),
        (Critical, 0.88, High),
        (Critical, 0.75, Elevated),
        (Critical, 0.10, Normal),
        (Elevated, 0.96, Critical),
        (High, f64::NAN, High),
    ];
    for (current, ratio, want) in cases {
        assert_eq!(
            next_level(current, ratio, &t),
            want,
            "from {current} at {ratio}"
        );
    }
}

#[test]
fn thresholds_default_and_validation_errors() {
    let t = PressureThresholds::default();
    assert_eq!(
        (
            t.elevated_ratio,
            t.high_ratio,
            t.critical_ratio,
            t.hysteresis_ratio
        ),
        (0.75, 0.85, 0.95, 0.05)
    );
    assert_eq!(t.validate(), Ok(()));
    let with = |f: fn(&mut PressureThresholds)| {
        let mut t = PressureThresholds::default();
        f(&mut t);
        t.validate()
    };
    assert_eq!(
        with(|t| t.elevated_ratio = 0.0),
        Err(PressureError::ThresholdOutOfRange {
            name: "elevated_ratio",
            ratio: 0.0
        })
    );
    assert_eq!(
        with(|t| t.critical_ratio = 1.01),
        Err(PressureError::ThresholdOutOfRange {
            name: "critical_ratio",
            ratio: 1.01
        })
    );
    assert!(matches!(
        with(|t| t.high_ratio = f64::NAN),
        Err(PressureError::ThresholdOutOfRange { name: "high_ratio", ratio }) if ratio.is_nan()
    ));
    assert_eq!(
        with(|t| t.high_ratio = 0.75),
        Err(PressureError::ThresholdsNotIncreasing {
            lower_name: "elevated_ratio",
            lower_ratio: 0.75,
            upper_name: "high_ratio",
            upper_ratio: 0.75,
        })
    );
    assert_eq!(
        with(|t| t.critical_ratio = 0.80),
        Err(PressureError::ThresholdsNotIncreasing {
            lower_name: "high_ratio",
            lower_ratio: 0.85,
            upper_name: "critical_ratio",
            upper_ratio: 0.80,
        })
    );
    assert_eq!(
        with(|t| t.hysteresis_ratio = -0.01),
        Err(PressureError::HysteresisOutOfRange {
            hysteresis_ratio: -0.01,
            elevated_ratio: 0.75
        })
    );
    assert_eq!(
        with(|t| t.hysteresis_ratio = 0.75),
        Err(PressureError::HysteresisOutOfRange {
            hysteresis_ratio: 0.75,
            elevated_ratio: 0.75
        })
    );
    assert_eq!(with(|t| t.critical_ratio = 1.0), Ok(()));
    let message = with(|t| t.critical_ratio = 0.80).unwrap_err().to_string();
    assert!(
        message.contains("high_ratio = 0.85") && message.contains("critical_ratio = 0.8"),
        "{message}"
    );
}

#[test]
fn levels_order_and_display() {
    assert!(Normal < Elevated && Elevated < High && High < Critical);
    let words: Vec<String> = PressureLevel::ALL.iter().map(|l| l.to_string()).collect();
    assert_eq!(words, ["normal", "elevated", "high", "critical"]);
    assert_eq!(PressureSource::Cgroup.to_string(), "cgroup");
}

// ---------------------------------------------------------------------------
// Monitor

fn budget(used_bytes: u64) -> MemoryReading {
    MemoryReading::new(PressureSource::Budget, used_bytes, 1000)
}

fn monitor() -> PressureMonitor {
    PressureMonitor::new(PressureThresholds::default()).unwrap()
}

/// A monitor whose callback records every event.
fn recording_monitor() -> (PressureMonitor, Arc<Mutex<Vec<PressureEvent>>>) {
    let monitor = monitor();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    monitor.on_change(move |event| sink.lock().unwrap().push(*event));
    (monitor, events)
}

fn transitions(events: &Mutex<Vec<PressureEvent>>) -> Vec<(PressureLevel, PressureLevel)> {
    events
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.previous, e.level))
        .collect()
}

#[test]
fn hysteresis_sequence() {
    let (monitor, events) = recording_monitor();
    assert_eq!(monitor.observe(&[budget(800)]), Elevated);
    assert_eq!(monitor.observe(&[budget(720)]), Elevated);
    assert_eq!(monitor.observe(&[budget(740)]), Elevated);
    assert_eq!(monitor.observe(&[budget(690)]), Normal);
    assert_eq!(monitor.observe(&[budget(720)]), Normal);
    assert_eq!(monitor.level(), Normal);
    assert_eq!(
        transitions(&events),
        [(Normal, Elevated), (Elevated, Normal)]
    );
    assert_eq!(monitor.crossings(), 2);
    monitor.check_invariants();
}

#[test]
fn jump_is_one_event_with_the_worst_reading() {
    let (monitor, events) = recording_monitor();
    let readings = [
        budget(500),
        MemoryReading::new(PressureSource::Cgroup, 960, 1000),
        MemoryReading::new(PressureSource::System, 999, 0), // limit 0: ignored
        MemoryReading::new(PressureSource::System, 300, 1000),
    ];
    assert_eq!(monitor.observe(&readings), Critical);
    assert_eq!(
        *events.lock().unwrap(),
        [PressureEvent {
            level: Critical,
            previous: Normal,
            ratio: 0.96,
            source: PressureSource::Cgroup,
            used_bytes: 960,
            limit_bytes: 1000,
            crossing: 1,
        }]
    );
    // Far below: several steps down in one observation, one event.
    assert_eq!(monitor.observe(&[budget(100)]), Normal);
    assert_eq!(
        transitions(&events),
        [(Normal, Critical), (Critical, Normal)]
    );
    assert_eq!(events.lock().unwrap()[1].crossing, 2);
    assert_eq!(monitor.crossings(), 2);
}

#[test]
fn observations_without_information_change_nothing() {
    let (monitor, events) = recording_monitor();
    monitor.observe(&[budget(900)]);
    assert_eq!(monitor.observe(&[]), High);
    assert_eq!(
        monitor.observe(&[MemoryReading::new(PressureSource::Budget, 0, 0)]),
        High
    );
    assert_eq!(monitor.observe(&[budget(900)]), High);
    assert_eq!(transitions(&events), [(Normal, High)]);
    assert_eq!(worst_reading(&[]), None);
    assert_eq!(
        worst_reading(&[
            budget(500),
            MemoryReading::new(PressureSource::Cgroup, 5, 10)
        ]),
        Some((0.5, budget(500))),
        "ties go to the first reading"
    );
}

#[test]
fn callbacks_fire_once_per_crossing_and_removal_works() {
    let monitor = monitor();
    let first = Arc::new(AtomicU64::new(0));
    let second = Arc::new(AtomicU64::new(0));
    let first_id = {
        let first = Arc::clone(&first);
        monitor.on_change(move |_| {
            first.fetch_add(1, Ordering::SeqCst);
        })
    };
    {
        let second = Arc::clone(&second);
        monitor.on_change(move |_| {
            second.fetch_add(1, Ordering::SeqCst);
        });
    }
    // Normal -> high -> high -> critical -> elevated -> elevated: 3 crossings.
    for used in [870, 900, 990, 780, 760] {
        monitor.observe(&[budget(used)]);
    }
    assert_eq!(monitor.level(), Elevated);
    assert_eq!(monitor.crossings(), 3);
    assert_eq!(first.load(Ordering::SeqCst), 3);
    assert_eq!(second.load(Ordering::SeqCst), 3);

    assert!(monitor.remove_callback(first_id));
    assert!(
        !monitor.remove_callback(first_id),
        "second removal must fail"
    );
    monitor.observe(&[budget(100)]);
    assert_eq!(
        first.load(Ordering::SeqCst),
        3,
        "removed callback was called"
    );
    assert_eq!(second.load(Ordering::SeqCst), 4);
    monitor.check_invariants();
}

/// Runs `f` on another thread and fails instead of hanging if it deadlocks.
fn within_timeout(f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("deadlock: the test body did not finish within 10 s");
}

#[test]
fn callback_calling_back_into_the_monitor_does_not_deadlock() {
    within_timeout(|| {
        let monitor = Arc::new(monitor());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let weak = Arc::downgrade(&monitor);
        let sink = Arc::clone(&seen);
        monitor.on_change(move |event| {
            let monitor = weak.upgrade().unwrap();
            // level() already shows the crossing being delivered.
            sink.lock()
                .unwrap()
                .push((event.previous, event.level, monitor.level()));
            let _ = monitor.crossings();
            if event.level == Critical {
                // Re-entrant observe: its crossing is delivered after this one.
                assert_eq!(monitor.observe(&[budget(100)]), Normal);
            }
        });
        assert_eq!(monitor.observe(&[budget(990)]), Critical);
        assert_eq!(monitor.level(), Normal);
        assert_eq!(
            *seen.lock().unwrap(),
            [(Normal, Critical, Critical), (Critical, Normal, Normal)]
        );
        monitor.check_invariants();
    });
}

#[test]
fn callback_may_register_and_remove_callbacks() {
    within_timeout(|| {
        let monitor = Arc::new(monitor());
        let calls = Arc::new(AtomicU64::new(0));
        let weak = Arc::downgrade(&monitor);
        let own_id = Arc::new(Mutex::new(None));
        let id = {
            let own_id = Arc::clone(&own_id);
            let calls = Arc::clone(&calls);
            monitor.on_change(move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                let monitor = weak.upgrade().unwrap();
                let id = own_id.lock().unwrap().expect("id stored before observing");
                assert!(monitor.remove_callback(id));
                monitor.on_change(|_| {});
            })
        };
        *own_id.lock().unwrap() = Some(id);
        monitor.observe(&[budget(800)]);
        monitor.observe(&[budget(100)]);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "removed itself on the first call"
        );
        monitor.check_invariants();
    });
}

#[test]
fn panicking_callback_does_not_stop_later_deliveries() {
    let (monitor, events) = recording_monitor();
    let calls = Arc::new(AtomicU64::new(0));
    {
        let calls = Arc::clone(&calls);
        monitor.on_change(move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first delivery fails");
            }
        });
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| monitor.observe(&[budget(800)])));
    assert!(outcome.is_err(), "the callback's panic must propagate");
    assert_eq!(monitor.level(), Elevated);
    monitor.observe(&[budget(900)]);
    assert_eq!(transitions(&events), [(Normal, Elevated), (Elevated, High)]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    monitor.check_invariants();
}

#[test]
fn concurrent_observers_produce_one_ordered_chain_of_events() {
    const THREADS: u64 = 4;
    const OBSERVATIONS_PER_THREAD: u64 = 3000;
    let seed = 0x5EED_0002;
    let monitor = Arc::new(monitor());
    let events = Arc::new(Mutex::new(Vec::<PressureEvent>::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    {
        let events = Arc::clone(&events);
        let in_flight = Arc::clone(&in_flight);
        let max_in_flight = Arc::clone(&max_in_flight);
        monitor.on_change(move |event| {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max_in_flight.fetch_max(now, Ordering::SeqCst);
            events.lock().unwrap().push(*event);
            std::thread::yield_now();
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
    let second_callback_calls = Arc::new(AtomicU64::new(0));
    {
        let calls = Arc::clone(&second_callback_calls);
        monitor.on_change(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
        });
    }
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let monitor = Arc::clone(&monitor);
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed + thread);
                for _ in 0..OBSERVATIONS_PER_THREAD {
                    monitor.observe(&[budget(rng.gen_range(0..=1000))]);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let events = events.lock().unwrap();
    let crossings = monitor.crossings();
    assert!(crossings > 100, "seed {seed}: only {crossings} crossings");
    assert_eq!(events.len() as u64, crossings, "seed {seed}");
    assert_eq!(
        second_callback_calls.load(Ordering::SeqCst),
        crossings,
        "seed {seed}"
    );
    assert_eq!(
        max_in_flight.load(Ordering::SeqCst),
        1,
        "seed {seed}: concurrent callbacks"
    );
    let mut level = Normal;
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.crossing, index as u64 + 1, "seed {seed}: {event:?}");
        assert_eq!(
            event.previous, level,
            "seed {seed}: event {index} {event:?}"
        );
        assert_ne!(event.level, event.previous, "seed {seed}: {event:?}");
        assert_eq!(
            event.level,
            next_level(event.previous, event.ratio, &PressureThresholds::default()),
            "seed {seed}: {event:?}"
        );
        level = event.level;
    }
    assert_eq!(level, monitor.level(), "seed {seed}");
    monitor.check_invariants();
}

// ---------------------------------------------------------------------------
// Parsers

const MEMINFO: &str = include_str!("fixtures/sysmem/meminfo");
const STATUS: &str = include_str!("fixtures/sysmem/status");
const CGROUP_V2: &str = include_str!("fixtures/sysmem/proc_self_cgroup_v2");
const CGROUP_HYBRID: &str = include_str!("fixtures/sysmem/proc_self_cgroup_hybrid");
const MEMORY_STAT: &str = include_str!("fixtures/sysmem/memory.stat");

fn malformed(path: &str, line_number: usize, line: &str, reason: &'static str) -> SysMemError {
    SysMemError::Malformed {
        path: PathBuf::from(path),
        line_number,
        line: line.to_string(),
        reason,
    }
}

#[test]
fn meminfo_parses_fixture_and_names_bad_lines() {
    assert_eq!(
        parse_meminfo(MEMINFO),
        Ok(MemInfo {
            total_bytes: 24684084 * 1024,
            available_bytes: 24339172 * 1024,
        })
    );
    let without_available: String = MEMINFO
        .lines()
        .filter(|l| !l.starts_with("MemAvailable"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        parse_meminfo(&without_available),
        Err(SysMemError::MissingField {
            path: PathBuf::from("/proc/meminfo"),
            field: "MemAvailable",
        })
    );
    let text = "MemTotal:  16 kB\nMemFree: 1 kB\nMemAvailable:   12x kB\n";
    assert_eq!(
        parse_meminfo(text),
        Err(malformed(
            "/proc/meminfo",
            3,
            "MemAvailable:   12x kB",
            "value is not an unsigned integer"
        ))
    );
    assert_eq!(
        parse_meminfo("MemTotal:  16\nMemAvailable: 1 kB\n"),
        Err(malformed(
            "/proc/meminfo",
            1,
            "MemTotal:  16",
            "expected \"<number> kB\""
        ))
    );
    assert_eq!(
        parse_meminfo("MemTotal:  16 MB\nMemAvailable: 1 kB\n"),
        Err(malformed(
            "/proc/meminfo",
            1,
            "MemTotal:  16 MB",
            "expected \"<number> kB\""
        ))
    );
    let huge = format!("MemTotal: {} kB\nMemAvailable: 1 kB\n", u64::MAX / 1000);
    assert_eq!(
        parse_meminfo(&huge),
        Err(malformed(
            "/proc/meminfo",
            1,
            huge.lines().next().unwrap(),
            "value overflows u64 bytes"
        ))
    );
    let error = parse_meminfo(text).unwrap_err().to_string();
    assert!(
        error.contains("/proc/meminfo") && error.contains("line 3") && error.contains("12x"),
        "{error}"
    );
}

#[test]
fn process_status_parses_fixture_and_names_bad_lines() {
    assert_eq!(
        parse_process_status(STATUS),
        Ok(ProcessMemory {
            rss_bytes: 2236 * 1024,
            peak_rss_bytes: 5120 * 1024,
        })
    );
    assert_eq!(
        parse_process_status("Name:\tx\nVmRSS:\t  10 kB\n"),
        Err(SysMemError::MissingField {
            path: PathBuf::from("/proc/self/status"),
            field: "VmHWM",
        })
    );
    assert_eq!(
        parse_process_status("Name:\tx\nVmHWM:\t  10 kB\nVmRSS:\t -3 kB\n"),
        Err(malformed(
            "/proc/self/status",
            3,
            "VmRSS:\t -3 kB",
            "value is not an unsigned integer"
        ))
    );
}

#[test]
fn cgroup_value_files_parse_and_name_bad_text() {
    assert_eq!(parse_cgroup_max("max\n"), Ok(None));
    assert_eq!(parse_cgroup_max("8589934592\n"), Ok(Some(8 << 30)));
    assert_eq!(parse_cgroup_current("123456789\n"), Ok(123456789));
    assert_eq!(
        parse_cgroup_max(""),
        Err(malformed("memory.max", 1, "", "file is empty"))
    );
    assert_eq!(
        parse_cgroup_max("12 34\n"),
        Err(malformed(
            "memory.max",
            1,
            "12 34\n",
            "expected a single value"
        ))
    );
    assert_eq!(
        parse_cgroup_max("-1\n"),
        Err(malformed(
            "memory.max",
            1,
            "-1\n",
            "expected \"max\" or an unsigned integer"
        ))
    );
    assert_eq!(
        parse_cgroup_current("max\n"),
        Err(malformed(
            "memory.current",
            1,
            "max\n",
            "expected an unsigned integer"
        ))
    );
    assert_eq!(
        parse_cgroup_inactive_file(MEMORY_STAT),
        Ok(Some(1742848000))
    );
    assert_eq!(parse_cgroup_inactive_file("anon 5\n"), Ok(None));
    assert_eq!(
        parse_cgroup_inactive_file("anon 5\ninactive_file 1 2\n"),
        Err(malformed(
            "memory.stat",
            2,
            "inactive_file 1 2",
            "expected \"inactive_file <number>\""
        ))
    );
}

#[test]
fn proc_self_cgroup_finds_the_v2_line() {
    assert_eq!(
        parse_proc_self_cgroup(CGROUP_V2).as_deref(),
        Some("/user.slice/user-1000.slice/user@1000.service/app.slice/strata.scope")
    );
    assert_eq!(parse_proc_self_cgroup(CGROUP_HYBRID).as_deref(), Some("/"));
    let v1_only: String = CGROUP_HYBRID
        .lines()
        .filter(|l| !l.starts_with("0::"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(parse_proc_self_cgroup(&v1_only), None);
}

// ---------------------------------------------------------------------------
// Readers on a fake root

/// A directory of fixture files standing in for `/`, removed on drop.
struct FakeRoot {
    path: PathBuf,
}

impl FakeRoot {
    fn new(name: &str) -> FakeRoot {
        let path =
            std::env::temp_dir().join(format!("strata-pool-sysmem-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        FakeRoot { path }
    }

    fn write(&self, relative: &str, text: &str) -> &FakeRoot {
        let path = self.path.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

const SCOPE: &str =
    "sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/strata.scope";
const APP_SLICE: &str = "sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice";

/// A unified cgroup v2 system: the process in `strata.scope`, which has a
/// 4 GiB limit and 3 GiB charged; `app.slice` above it has no limit.
fn unified_root(name: &str) -> FakeRoot {
    let root = FakeRoot::new(name);
    root.write("proc/meminfo", MEMINFO)
        .write("proc/self/status", STATUS)
        .write("proc/self/cgroup", CGROUP_V2)
        .write(
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        )
        .write(&format!("{SCOPE}/memory.max"), "4294967296\n")
        .write(&format!("{SCOPE}/memory.current"), "3221225472\n")
        .write(&format!("{SCOPE}/memory.stat"), MEMORY_STAT)
        .write(&format!("{APP_SLICE}/memory.max"), "max\n")
        .write(&format!("{APP_SLICE}/memory.current"), "5368709120\n");
    root
}

#[test]
fn readers_on_a_unified_fake_root() {
    let root = unified_root("unified");
    assert_eq!(
        read_meminfo_at(root.path()),
        Ok(MemInfo {
            total_bytes: 24684084 * 1024,
            available_bytes: 24339172 * 1024,
        })
    );
    assert_eq!(
        read_process_memory_at(root.path()),
        Ok(ProcessMemory {
            rss_bytes: 2236 * 1024,
            peak_rss_bytes: 5120 * 1024,
        })
    );
    let cgroup = CgroupMemory {
        path: "/user.slice/user-1000.slice/user@1000.service/app.slice/strata.scope".into(),
        max_bytes: Some(4 << 30),
        current_bytes: 3 << 30,
        inactive_file_bytes: Some(1742848000),
    };
    assert_eq!(read_cgroup_memory_at(root.path()), Ok(Some(cgroup.clone())));
    assert_eq!(cgroup.working_set_bytes(), (3 << 30) - 1742848000);
    assert_eq!(
        system_readings_at(root.path()),
        [
            MemoryReading::new(PressureSource::Cgroup, (3 << 30) - 1742848000, 4 << 30),
            MemoryReading::new(
                PressureSource::System,
                (24684084 - 24339172) * 1024,
                24684084 * 1024
            ),
        ]
    );
}

#[test]
fn cgroup_reader_picks_the_tightest_ancestor_limit() {
    let root = unified_root("ancestor");
    // app.slice: 6 GiB limit with 5 GiB charged (83%) beats the scope's 75%.
    root.write(&format!("{APP_SLICE}/memory.max"), "6442450944\n");
    assert_eq!(
        read_cgroup_memory_at(root.path()),
        Ok(Some(CgroupMemory {
            path: "/user.slice/user-1000.slice/user@1000.service/app.slice".into(),
            max_bytes: Some(6 << 30),
            current_bytes: 5 << 30,
            inactive_file_bytes: None,
        }))
    );
    // No limit anywhere: the process's own figures, unlimited.
    root.write(&format!("{APP_SLICE}/memory.max"), "max\n")
        .write(&format!("{SCOPE}/memory.max"), "max\n");
    assert_eq!(
        read_cgroup_memory_at(root.path()),
        Ok(Some(CgroupMemory {
            path: "/user.slice/user-1000.slice/user@1000.service/app.slice/strata.scope".into(),
            max_bytes: None,
            current_bytes: 3 << 30,
            inactive_file_bytes: Some(1742848000),
        }))
    );
    assert_eq!(
        system_readings_at(root.path())
            .iter()
            .map(|r| r.source)
            .collect::<Vec<_>>(),
        [PressureSource::System],
        "no cgroup reading without a limit"
    );
}

#[test]
fn cgroup_reader_returns_none_without_v2_memory_files() {
    // No cgroup v2 mount.
    let root = FakeRoot::new("no-mount");
    root.write("proc/self/cgroup", CGROUP_V2);
    assert_eq!(read_cgroup_memory_at(root.path()), Ok(None));
    // No /proc/self/cgroup at all.
    let empty = FakeRoot::new("empty");
    assert_eq!(read_cgroup_memory_at(empty.path()), Ok(None));
    // Memory controller not enabled for the process's cgroup.
    let root = unified_root("no-controller");
    std::fs::remove_file(root.path().join(SCOPE).join("memory.current")).unwrap();
    assert_eq!(read_cgroup_memory_at(root.path()), Ok(None));
    // cgroup v1 only: no "0::" line.
    let root = unified_root("v1-only");
    root.write(
        "proc/self/cgroup",
        "4:memory:/user.slice\n1:name=systemd:/\n",
    );
    assert_eq!(read_cgroup_memory_at(root.path()), Ok(None));
    // A path outside the namespace's view.
    let root = unified_root("outside");
    root.write("proc/self/cgroup", "0::/../../elsewhere\n");
    assert_eq!(read_cgroup_memory_at(root.path()), Ok(None));
}

#[test]
fn cgroup_reader_finds_the_hybrid_mount_and_the_namespace_root() {
    // Hybrid layout, process in a cgroup namespace ("0::/"): the mount root
    // is the container's cgroup and carries the limit.
    let root = FakeRoot::new("hybrid");
    root.write("proc/self/cgroup", CGROUP_HYBRID)
        .write("sys/fs/cgroup/unified/cgroup.controllers", "memory pids\n")
        .write("sys/fs/cgroup/unified/memory.max", "2147483648\n")
        .write("sys/fs/cgroup/unified/memory.current", "1073741824\n");
    assert_eq!(
        read_cgroup_memory_at(root.path()),
        Ok(Some(CgroupMemory {
            path: "/".into(),
            max_bytes: Some(2 << 30),
            current_bytes: 1 << 30,
            inactive_file_bytes: None,
        }))
    );
}

#[test]
fn readers_name_the_file_they_read() {
    let root = unified_root("malformed");
    root.write(&format!("{SCOPE}/memory.max"), "lots\n");
    assert_eq!(
        read_cgroup_memory_at(root.path()),
        Err(SysMemError::Malformed {
            path: root.path().join(SCOPE).join("memory.max"),
            line_number: 1,
            line: "lots\n".into(),
            reason: "expected \"max\" or an unsigned integer",
        })
    );
    root.write("proc/meminfo", "MemTotal: 1 kB\n");
    assert_eq!(
        read_meminfo_at(root.path()),
        Err(SysMemError::MissingField {
            path: root.path().join("proc/meminfo"),
            field: "MemAvailable",
        })
    );
    let empty = FakeRoot::new("missing");
    match read_process_memory_at(empty.path()) {
        Err(SysMemError::Io { path, kind, .. }) => {
            assert_eq!(path, empty.path().join("proc/self/status"));
            assert_eq!(kind, io::ErrorKind::NotFound);
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    assert_eq!(system_readings_at(empty.path()), []);
}

// ---------------------------------------------------------------------------
// The live machine

#[test]
fn live_proc_figures_are_plausible() {
    if !cfg!(target_os = "linux") {
        assert!(matches!(
            read_meminfo(),
            Err(SysMemError::Unsupported { .. })
        ));
        return;
    }
    let meminfo = read_meminfo().unwrap();
    assert!(
        meminfo.total_bytes > meminfo.available_bytes && meminfo.available_bytes > 0,
        "{meminfo:?}"
    );
    let process = read_process_memory().unwrap();
    assert!(
        process.rss_bytes > 0 && process.peak_rss_bytes >= process.rss_bytes,
        "{process:?}"
    );
    assert!(
        process.rss_bytes < meminfo.total_bytes,
        "{process:?} {meminfo:?}"
    );
    // Whatever the cgroup setup, reading it must not fail.
    let cgroup = read_cgroup_memory().unwrap();
    if let Some(cgroup) = &cgroup {
        assert!(cgroup.current_bytes > 0, "{cgroup:?}");
    }
    let readings = system_readings();
    let system = readings
        .iter()
        .find(|r| r.source == PressureSource::System)
        .unwrap_or_else(|| panic!("no system reading in {readings:?}"));
    assert_eq!(system.limit_bytes, meminfo.total_bytes);
    assert!(system.used_bytes < system.limit_bytes, "{system:?}");
    assert_eq!(
        readings.iter().any(|r| r.source == PressureSource::Cgroup),
        cgroup.is_some_and(|c| c.max_bytes.is_some()),
        "{readings:?}"
    );
}
