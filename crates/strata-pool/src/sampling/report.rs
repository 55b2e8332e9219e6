//! Profile and leak reports, and their text tables.

use std::fmt;
use std::time::Duration;

use super::{ProfileLevel, SampleWeight};

/// Sums of sample weights: the estimates and their variance estimates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Accumulator {
    pub(super) sampled_count: u64,
    pub(super) bytes: f64,
    pub(super) count: f64,
    pub(super) bytes_variance: f64,
    pub(super) count_variance: f64,
}

impl Accumulator {
    pub(super) fn add(&mut self, weight: &SampleWeight) {
        self.sampled_count += 1;
        self.bytes += weight.bytes;
        self.count += weight.count;
        self.bytes_variance += weight.bytes_variance;
        self.count_variance += weight.count_variance;
    }

    /// Samples are independent, so variances add.
    pub(super) fn merge(&mut self, other: &Accumulator) {
        self.sampled_count += other.sampled_count;
        self.bytes += other.bytes;
        self.count += other.count;
        self.bytes_variance += other.bytes_variance;
        self.count_variance += other.count_variance;
    }
}

/// The estimates of one call site, or of all of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileEstimates {
    /// Samples recorded since the profiler was created.
    pub sampled_count: u64,
    /// Samples still live (allocated, not freed).
    pub live_sampled_count: u64,
    /// Estimated bytes live now.
    pub estimated_live_bytes: f64,
    /// Standard error of `estimated_live_bytes`.
    pub live_bytes_std_error: f64,
    /// Estimated allocations live now.
    pub estimated_live_count: f64,
    /// Standard error of `estimated_live_count`.
    pub live_count_std_error: f64,
    /// Estimated bytes allocated since the profiler was created.
    pub estimated_total_bytes: f64,
    /// Standard error of `estimated_total_bytes`.
    pub total_bytes_std_error: f64,
    /// Estimated allocations since the profiler was created.
    pub estimated_total_count: f64,
    /// Standard error of `estimated_total_count`.
    pub total_count_std_error: f64,
}

impl ProfileEstimates {
    pub(super) fn from_sums(total: &Accumulator, live: &Accumulator) -> Self {
        ProfileEstimates {
            sampled_count: total.sampled_count,
            live_sampled_count: live.sampled_count,
            estimated_live_bytes: live.bytes,
            live_bytes_std_error: live.bytes_variance.sqrt(),
            estimated_live_count: live.count,
            live_count_std_error: live.count_variance.sqrt(),
            estimated_total_bytes: total.bytes,
            total_bytes_std_error: total.bytes_variance.sqrt(),
            estimated_total_count: total.count,
            total_count_std_error: total.count_variance.sqrt(),
        }
    }
}

/// One call site of a [`ProfileReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct SiteProfile {
    /// Index in the profiler's site table ([`SampleRecord::site_id`](super::SampleRecord::site_id)).
    pub site_id: u32,
    /// `file:line:col`, the top resolved frames (Detailed level), or "unknown".
    pub site: String,
    /// The estimates for this site.
    pub estimates: ProfileEstimates,
}

/// What the sampled allocations say about all allocations: per call site
/// and in total, live and since the profiler was created. Built by
/// [`Profiler::profile`](super::Profiler::profile).
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileReport {
    /// The profiler's level.
    pub level: ProfileLevel,
    /// Mean gap between sample points, `R`.
    pub mean_bytes: u64,
    /// Time since the profiler was created.
    pub uptime: Duration,
    /// Sites with at least one sample, by estimated live bytes (descending),
    /// then estimated total bytes, then site id.
    pub sites: Vec<SiteProfile>,
    /// Sums over all sites.
    pub totals: ProfileEstimates,
    /// Mean cost of one stack capture, measured at run time (Detailed only).
    pub stack_capture_cost_ns: Option<u64>,
    /// How the estimates are made and why they are unbiased.
    pub method: String,
}

/// The estimates of the old live samples of one call site, or of all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeakEstimates {
    /// Live samples at least `min_age` old.
    pub sampled_count: u64,
    /// Estimated bytes they stand for.
    pub estimated_bytes: f64,
    /// Standard error of `estimated_bytes`.
    pub bytes_std_error: f64,
    /// Estimated allocations they stand for.
    pub estimated_count: f64,
    /// Standard error of `estimated_count`.
    pub count_std_error: f64,
    /// Age of the oldest of them.
    pub oldest_age: Duration,
}

impl LeakEstimates {
    pub(super) fn from_sums(sums: &Accumulator, oldest_age: Duration) -> Self {
        LeakEstimates {
            sampled_count: sums.sampled_count,
            estimated_bytes: sums.bytes,
            bytes_std_error: sums.bytes_variance.sqrt(),
            estimated_count: sums.count,
            count_std_error: sums.count_variance.sqrt(),
            oldest_age,
        }
    }
}

/// One call site of a [`LeakReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct LeakSite {
    /// Index in the profiler's site table.
    pub site_id: u32,
    /// `file:line:col`, the top resolved frames (Detailed level), or "unknown".
    pub site: String,
    /// The estimates for this site.
    pub estimates: LeakEstimates,
}

/// Live sampled allocations at least `min_age` old, grouped by call site.
/// Built by [`Profiler::leak_report`](super::Profiler::leak_report).
#[derive(Clone, Debug, PartialEq)]
pub struct LeakReport {
    /// The age threshold.
    pub min_age: Duration,
    /// Time since the profiler was created.
    pub uptime: Duration,
    /// Mean gap between sample points, `R`.
    pub mean_bytes: u64,
    /// Sites with old live samples, by estimated bytes (descending), then
    /// site id.
    pub sites: Vec<LeakSite>,
    /// Sums over all sites.
    pub totals: LeakEstimates,
    /// How the estimates are made and why they are unbiased.
    pub method: String,
}

/// The method note shared by both reports.
pub(super) fn method_note(mean_bytes: u64) -> String {
    format!(
        "unbiased Horvitz-Thompson estimates: allocated bytes are sampled as a Poisson process \
         with mean gap R = {mean_bytes} bytes ({}), so an allocation of s bytes is sampled with \
         probability p(s) = 1 - exp(-s/R), independently of all others; each sample is weighted \
         by the inverse of its probability (bytes s/p, count 1/p); a standard error (±) is the \
         square root of the unbiased variance estimate, the sum over samples of w^2 (1 - p) \
         with w the sample's weight",
        Bytes(mean_bytes as f64)
    )
}

/// Bytes in binary units with 1 decimal.
struct Bytes(f64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut value = self.0;
        let mut unit = 0;
        while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        let text = if unit == 0 {
            format!("{value:.0} {}", UNITS[unit])
        } else {
            format!("{value:.1} {}", UNITS[unit])
        };
        f.pad(&text)
    }
}

/// A value and its standard error, e.g. `12.0 MiB ± 1.5 MiB`.
struct BytesPm(f64, f64);

impl fmt::Display for BytesPm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{} ± {}", Bytes(self.0), Bytes(self.1)))
    }
}

/// A count estimate and its standard error, e.g. `1200 ± 80`.
struct CountPm(f64, f64);

impl fmt::Display for CountPm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{:.0} ± {:.0}", self.0, self.1))
    }
}

fn write_profile_row(
    f: &mut fmt::Formatter<'_>,
    estimates: &ProfileEstimates,
    site: &str,
) -> fmt::Result {
    writeln!(
        f,
        "{:>8} {:>8} {:>23} {:>15} {:>23} {:>15}  {site}",
        estimates.sampled_count,
        estimates.live_sampled_count,
        BytesPm(
            estimates.estimated_live_bytes,
            estimates.live_bytes_std_error
        ),
        CountPm(
            estimates.estimated_live_count,
            estimates.live_count_std_error
        ),
        BytesPm(
            estimates.estimated_total_bytes,
            estimates.total_bytes_std_error
        ),
        CountPm(
            estimates.estimated_total_count,
            estimates.total_count_std_error
        ),
    )
}

impl fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "allocation profile: {} samples ({} live) at mean {} per sample, level {}, uptime {:.1} s",
            self.totals.sampled_count,
            self.totals.live_sampled_count,
            Bytes(self.mean_bytes as f64),
            self.level,
            self.uptime.as_secs_f64()
        )?;
        writeln!(f, "method: {}", self.method)?;
        if let Some(cost_ns) = self.stack_capture_cost_ns {
            writeln!(
                f,
                "cost of the detailed level: {cost_ns} ns per stack capture (measured), one \
                 capture per sample, about {:.4} ns per allocated byte",
                cost_ns as f64 / self.mean_bytes.max(1) as f64
            )?;
        }
        writeln!(
            f,
            "{:>8} {:>8} {:>23} {:>15} {:>23} {:>15}  site",
            "samples", "live", "live bytes", "live count", "total bytes", "total count"
        )?;
        for site in &self.sites {
            write_profile_row(f, &site.estimates, &site.site)?;
        }
        write_profile_row(f, &self.totals, "(all sites)")
    }
}

fn write_leak_row(
    f: &mut fmt::Formatter<'_>,
    estimates: &LeakEstimates,
    site: &str,
) -> fmt::Result {
    writeln!(
        f,
        "{:>8} {:>23} {:>15} {:>12.1}  {site}",
        estimates.sampled_count,
        BytesPm(estimates.estimated_bytes, estimates.bytes_std_error),
        CountPm(estimates.estimated_count, estimates.count_std_error),
        estimates.oldest_age.as_secs_f64(),
    )
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "possible leaks: live allocations at least {:.1} s old, uptime {:.1} s, {} samples \
             at mean {} per sample",
            self.min_age.as_secs_f64(),
            self.uptime.as_secs_f64(),
            self.totals.sampled_count,
            Bytes(self.mean_bytes as f64)
        )?;
        writeln!(f, "method: {}", self.method)?;
        writeln!(
            f,
            "{:>8} {:>23} {:>15} {:>12}  site",
            "samples", "bytes", "count", "oldest (s)"
        )?;
        for site in &self.sites {
            write_leak_row(f, &site.estimates, &site.site)?;
        }
        write_leak_row(f, &self.totals, "(all sites)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(Bytes(0.0).to_string(), "0 B");
        assert_eq!(Bytes(1023.0).to_string(), "1023 B");
        assert_eq!(Bytes(1536.0).to_string(), "1.5 KiB");
        assert_eq!(Bytes(512.0 * 1024.0).to_string(), "512.0 KiB");
        assert_eq!(Bytes(3.0 * 1024.0 * 1024.0 * 1024.0).to_string(), "3.0 GiB");
        assert_eq!(format!("{:>10}", Bytes(2048.0)), "   2.0 KiB");
        assert_eq!(CountPm(12.4, 3.6).to_string(), "12 ± 4");
    }
}
