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
    assert!(stderr.contains("known suites: bitmap"), "{stderr}");
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
