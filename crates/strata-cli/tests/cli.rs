//! Runs the built `strata` binary.

use std::process::Command;

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

#[test]
fn unknown_suite_fails_and_names_the_known_suites() {
    let output = strata().args(["bench", "nosuch"]).output().unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nosuch"), "{stderr}");
    assert!(
        stderr.contains("known suites: bitmap, pool, disk"),
        "{stderr}"
    );
}

#[test]
fn version_is_printed() {
    let output = strata().arg("--version").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("strata "), "{stdout}");
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

#[test]
fn usage_errors_exit_non_zero() {
    let output = strata().args(["bench"]).output().unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert!(!output.stderr.is_empty(), "{output:?}");
}

/// The quick bitmap suite takes seconds in release but far longer in a test
/// build, so it only runs when `STRATA_SLOW_TESTS` is set.
#[test]
fn bench_bitmap_quick_json_when_slow_tests_enabled() {
    if std::env::var_os("STRATA_SLOW_TESTS").is_none() {
        return;
    }
    let output = strata()
        .args(["bench", "bitmap", "--quick", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.trim_start().starts_with('{'), "{stdout}");
    for key in [
        "\"suite\"",
        "\"results\"",
        "\"name\"",
        "\"metric\"",
        "\"value\"",
        "\"unit\"",
        "\"baseline\"",
        "\"baseline_value\"",
        "\"ratio\"",
    ] {
        assert!(stdout.contains(key), "missing {key} in {stdout}");
    }
}

/// `strata bench pool --smoke --json`: a fraction of a second in release,
/// a few seconds in a test build; the output is the documented JSON.
#[test]
fn bench_pool_smoke_json_parses() {
    let output = strata()
        .args(["bench", "pool", "--smoke", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["suite"], "pool", "{report}");
    let results = report["results"].as_array().unwrap();
    assert!(!results.is_empty(), "{report}");
    for row in results {
        let row = row.as_object().unwrap();
        let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "baseline",
                "baseline_value",
                "metric",
                "name",
                "ratio",
                "unit",
                "value"
            ],
            "{row:?}"
        );
        assert!(row["value"].is_number(), "{row:?}");
        assert_eq!(row["baseline"].is_null(), row["ratio"].is_null(), "{row:?}");
    }
    // The CLI gives the suite its heap probe, so the metadata rows are there.
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("metadata") && n.ends_with("heap per block")),
        "{names:?}"
    );
    for workload in ["churn", "small churn"] {
        for threads in ["1 thread", "2 threads"] {
            let name = format!("{workload} {threads}: TrackingAllocator<mimalloc>");
            assert!(names.contains(&name.as_str()), "no {name:?} in {names:?}");
        }
    }
    assert!(report["notes"].as_array().is_some_and(|n| !n.is_empty()));
}

#[test]
fn stats_prints_the_pool_and_process_figures() {
    let output = strata()
        .args(["stats", "--demo-workload", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let pool = &doc["pool"];
    let allocated = &pool["allocated"];
    let current = allocated["current_bytes"].as_u64().unwrap();
    let peak = allocated["peak_bytes"].as_u64().unwrap();
    assert!(current > 0 && peak >= current, "{allocated}");
    assert_eq!(
        allocated["allocated_total_bytes"].as_u64().unwrap()
            - allocated["freed_total_bytes"].as_u64().unwrap(),
        current
    );
    assert!(pool["reserved"]["current_bytes"].as_u64().unwrap() >= current);
    // The charged budget holds exactly what the pool has live.
    assert_eq!(doc["budget"]["reserved_bytes"].as_u64().unwrap(), current);
    assert_eq!(doc["budget"]["top_consumers"].as_array().unwrap().len(), 3);
    assert!(doc["heap"]["alloc_count"].as_u64().unwrap() > 0);
    assert!(doc["machine"]["pressure"].is_string());

    let text = strata()
        .args(["stats", "--demo-workload"])
        .output()
        .unwrap();
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in [
        "allocated",
        "reserved",
        "budget:",
        "sampled profile",
        "memory pressure",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

/// `strata bench disk --smoke --json`: tiny files in the temp directory;
/// the output is the documented JSON and every store row has its baseline.
#[test]
fn bench_disk_smoke_json_parses() {
    let output = strata()
        .args(["bench", "disk", "--smoke", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["suite"], "disk", "{report}");
    let results = report["results"].as_array().unwrap();
    assert!(!results.is_empty(), "{report}");
    for row in results {
        let name = row["name"].as_str().unwrap();
        assert!(row["value"].as_f64().unwrap().is_finite(), "{row}");
        if name.starts_with("spill")
            && (name.ends_with(": store buffered") || name.ends_with(": store O_DIRECT"))
        {
            assert!(row["baseline"].as_str().is_some(), "{row}");
            assert!(row["ratio"].as_f64().is_some(), "{row}");
        }
    }
    assert!(
        results
            .iter()
            .any(|r| r["unit"] == "MB/s" && r["metric"] == "throughput"),
        "{report}"
    );
    assert!(!report["notes"].as_array().unwrap().is_empty(), "{report}");
}
