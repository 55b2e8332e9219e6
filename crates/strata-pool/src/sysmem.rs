//! Memory figures of the machine, the cgroup and the process, read from
//! Linux's `/proc` and the cgroup v2 filesystem.
//!
//! The parsers are pure functions of the file text, so they are tested on
//! fixtures. Each reader has an `_at(root)` form that reads the same paths
//! under another filesystem root (a directory of fixture files in tests);
//! the `_at` forms work on any platform, while the plain readers return
//! [`SysMemError::Unsupported`] off Linux. [`system_readings`] turns the
//! figures into [`MemoryReading`]s for a
//! [`PressureMonitor`](crate::pressure::PressureMonitor).
//!
//! ```
//! use strata_pool::sysmem::{parse_cgroup_max, parse_meminfo, MemInfo};
//!
//! let meminfo = "MemTotal:       16318480 kB\nMemFree:  1000 kB\nMemAvailable:    8159240 kB\n";
//! assert_eq!(
//!     parse_meminfo(meminfo)?,
//!     MemInfo { total_bytes: 16318480 * 1024, available_bytes: 8159240 * 1024 }
//! );
//! assert_eq!(parse_cgroup_max("max\n")?, None);
//! assert_eq!(parse_cgroup_max("4294967296\n")?, Some(4 << 30));
//! # Ok::<(), strata_pool::sysmem::SysMemError>(())
//! ```

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::pressure::{MemoryReading, PressureSource};

/// `/proc/meminfo`, relative to the filesystem root.
pub const MEMINFO_PATH: &str = "proc/meminfo";
/// `/proc/self/status`, relative to the filesystem root.
pub const PROCESS_STATUS_PATH: &str = "proc/self/status";
/// `/proc/self/cgroup`, relative to the filesystem root.
pub const PROC_SELF_CGROUP_PATH: &str = "proc/self/cgroup";
/// Where cgroup v2 is mounted on a unified-hierarchy system, relative to
/// the filesystem root.
pub const CGROUP2_MOUNT_PATH: &str = "sys/fs/cgroup";
/// Where cgroup v2 is mounted on a hybrid (v1 + v2) system, relative to the
/// filesystem root.
pub const CGROUP2_HYBRID_MOUNT_PATH: &str = "sys/fs/cgroup/unified";
/// The file whose presence marks the root of a cgroup v2 mount.
pub const CGROUP2_MARKER_FILE: &str = "cgroup.controllers";
/// A cgroup's memory limit file.
pub const CGROUP_MEMORY_MAX_FILE: &str = "memory.max";
/// A cgroup's memory usage file.
pub const CGROUP_MEMORY_CURRENT_FILE: &str = "memory.current";
/// A cgroup's memory statistics file.
pub const CGROUP_MEMORY_STAT_FILE: &str = "memory.stat";
/// Bytes per kB in `/proc` files (the kernel's "kB" is 1024 bytes).
pub const PROC_KB_BYTES: u64 = 1024;

/// Why memory figures could not be read. Names the file and the line or
/// text at fault.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SysMemError {
    /// These figures are only read on Linux.
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The kind of I/O error.
        kind: io::ErrorKind,
        /// The error's message.
        message: String,
    },
    /// A field the figures need is absent.
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `"MemAvailable"`.
        field: &'static str,
    },
    /// A line (or the whole text of a one-value file) could not be parsed.
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line_number: usize,
        /// The line as read.
        line: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for SysMemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SysMemError::Unsupported { what } => {
                write!(f, "reading {what} is only supported on Linux")
            }
            SysMemError::Io {
                path,
                kind,
                message,
            } => write!(f, "cannot read {}: {message} ({kind:?})", path.display()),
            SysMemError::MissingField { path, field } => {
                write!(f, "{} has no {field} field", path.display())
            }
            SysMemError::Malformed {
                path,
                line_number,
                line,
                reason,
            } => write!(
                f,
                "{} line {line_number} {line:?}: {reason}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SysMemError {}

impl SysMemError {
    /// The file this error names, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SysMemError::Unsupported { .. } => None,
            SysMemError::Io { path, .. }
            | SysMemError::MissingField { path, .. }
            | SysMemError::Malformed { path, .. } => Some(path),
        }
    }

    /// The same error naming `actual` instead: the parsers name the
    /// standard path, the `_at` readers the file they really read.
    fn at_path(mut self, actual: &Path) -> Self {
        match &mut self {
            SysMemError::Unsupported { .. } => {}
            SysMemError::Io { path, .. }
            | SysMemError::MissingField { path, .. }
            | SysMemError::Malformed { path, .. } => *path = actual.to_path_buf(),
        }
        self
    }
}

/// The machine's memory from `/proc/meminfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`: what can be allocated without swapping, counting
    /// reclaimable caches.
    pub available_bytes: u64,
}

/// The process's resident memory from `/proc/self/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMemory {
    /// `VmRSS`.
    pub rss_bytes: u64,
    /// `VmHWM`: the peak resident set size.
    pub peak_rss_bytes: u64,
}

/// Memory figures of a cgroup v2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The cgroup the figures are from, relative to the cgroup v2 mount
    /// (`"/"` for the mount's root): the process's own cgroup, or the
    /// ancestor whose limit is closest to being reached.
    pub path: String,
    /// `memory.max`; `None` when it is `max` (no limit).
    pub max_bytes: Option<u64>,
    /// `memory.current`: all memory charged to the cgroup, page cache included.
    pub current_bytes: u64,
    /// `inactive_file` of `memory.stat`: page cache the kernel reclaims
    /// first when the limit is reached; `None` if the file is absent.
    pub inactive_file_bytes: Option<u64>,
}

impl CgroupMemory {
    /// `current_bytes` less the inactive page cache (the "working set"
    /// container runtimes use): charged memory that would not simply be
    /// dropped when the limit is reached.
    pub fn working_set_bytes(&self) -> u64 {
        self.current_bytes
            .saturating_sub(self.inactive_file_bytes.unwrap_or(0))
    }
}

fn malformed(path: &str, line_number: usize, line: &str, reason: &'static str) -> SysMemError {
    SysMemError::Malformed {
        path: PathBuf::from(path),
        line_number,
        line: line.to_string(),
        reason,
    }
}

/// `/`-rooted form of a relative constant, for errors from the parsers.
fn standard_path(relative: &str) -> String {
    format!("/{relative}")
}

/// The value of `field` in a `Key:   value kB` file (`/proc/meminfo`,
/// `/proc/self/status`), in bytes. `None` if the field is absent; the
/// first occurrence counts.
fn find_kb_field(text: &str, field: &'static str, path: &str) -> Result<Option<u64>, SysMemError> {
    for (index, line) in text.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if key.trim() != field {
            continue;
        }
        let line_number = index + 1;
        let mut words = rest.split_whitespace();
        let (Some(number), Some("kB"), None) = (words.next(), words.next(), words.next()) else {
            return Err(malformed(
                path,
                line_number,
                line,
                "expected \"<number> kB\"",
            ));
        };
        let kb: u64 = number
            .parse()
            .map_err(|_| malformed(path, line_number, line, "value is not an unsigned integer"))?;
        let bytes = kb
            .checked_mul(PROC_KB_BYTES)
            .ok_or_else(|| malformed(path, line_number, line, "value overflows u64 bytes"))?;
        return Ok(Some(bytes));
    }
    Ok(None)
}

fn require_kb_field(text: &str, field: &'static str, path: &str) -> Result<u64, SysMemError> {
    find_kb_field(text, field, path)?.ok_or_else(|| SysMemError::MissingField {
        path: PathBuf::from(path),
        field,
    })
}

/// Parses `/proc/meminfo` (values in kB): `MemTotal` and `MemAvailable`.
/// Other lines are not looked at. Errors name `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, SysMemError> {
    let path = standard_path(MEMINFO_PATH);
    Ok(MemInfo {
        total_bytes: require_kb_field(text, "MemTotal", &path)?,
        available_bytes: require_kb_field(text, "MemAvailable", &path)?,
    })
}

/// Parses `/proc/self/status` (values in kB): `VmRSS` and `VmHWM`.
/// Errors name `/proc/self/status`.
pub fn parse_process_status(text: &str) -> Result<ProcessMemory, SysMemError> {
    let path = standard_path(PROCESS_STATUS_PATH);
    Ok(ProcessMemory {
        rss_bytes: require_kb_field(text, "VmRSS", &path)?,
        peak_rss_bytes: require_kb_field(text, "VmHWM", &path)?,
    })
}

/// The one value of a one-value cgroup file, or the error naming it.
fn single_value<'a>(text: &'a str, file: &'static str) -> Result<&'a str, SysMemError> {
    let value = text.trim();
    if value.is_empty() {
        return Err(malformed(file, 1, text, "file is empty"));
    }
    if value.contains(char::is_whitespace) {
        return Err(malformed(file, 1, text, "expected a single value"));
    }
    Ok(value)
}

/// Parses a cgroup v2 `memory.max`: `max` (no limit) or a byte count.
/// Errors name `memory.max`.
pub fn parse_cgroup_max(text: &str) -> Result<Option<u64>, SysMemError> {
    let value = single_value(text, CGROUP_MEMORY_MAX_FILE)?;
    if value == "max" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        malformed(
            CGROUP_MEMORY_MAX_FILE,
            1,
            text,
            "expected \"max\" or an unsigned integer",
        )
    })
}

/// Parses a cgroup v2 `memory.current`: a byte count. Errors name
/// `memory.current`.
pub fn parse_cgroup_current(text: &str) -> Result<u64, SysMemError> {
    let value = single_value(text, CGROUP_MEMORY_CURRENT_FILE)?;
    value.parse().map_err(|_| {
        malformed(
            CGROUP_MEMORY_CURRENT_FILE,
            1,
            text,
            "expected an unsigned integer",
        )
    })
}

/// Parses `inactive_file` from a cgroup v2 `memory.stat` (`key value`
/// lines, values in bytes); `None` if absent. Errors name `memory.stat`.
pub fn parse_cgroup_inactive_file(text: &str) -> Result<Option<u64>, SysMemError> {
    for (index, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("inactive_file") {
            continue;
        }
        let (Some(number), None) = (words.next(), words.next()) else {
            return Err(malformed(
                CGROUP_MEMORY_STAT_FILE,
                index + 1,
                line,
                "expected \"inactive_file <number>\"",
            ));
        };
        return number.parse().map(Some).map_err(|_| {
            malformed(
                CGROUP_MEMORY_STAT_FILE,
                index + 1,
                line,
                "value is not an unsigned integer",
            )
        });
    }
    Ok(None)
}

/// The cgroup v2 path of the process from `/proc/self/cgroup`: the text
/// after `0::` on the hierarchy-0 line. `None` without such a line (a
/// cgroup v1 only system).
pub fn parse_proc_self_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end().to_string())
}

/// Reads a whole file; `Ok(None)` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, SysMemError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(path, &error)),
    }
}

fn read_required(path: &Path) -> Result<String, SysMemError> {
    std::fs::read_to_string(path).map_err(|error| io_error(path, &error))
}

fn io_error(path: &Path, error: &io::Error) -> SysMemError {
    SysMemError::Io {
        path: path.to_path_buf(),
        kind: error.kind(),
        message: error.to_string(),
    }
}

/// [`read_meminfo`] with `/` replaced by `root`. Works on any platform.
pub fn read_meminfo_at(root: &Path) -> Result<MemInfo, SysMemError> {
    let path = root.join(MEMINFO_PATH);
    parse_meminfo(&read_required(&path)?).map_err(|e| e.at_path(&path))
}

/// [`read_process_memory`] with `/` replaced by `root`. Works on any platform.
pub fn read_process_memory_at(root: &Path) -> Result<ProcessMemory, SysMemError> {
    let path = root.join(PROCESS_STATUS_PATH);
    parse_process_status(&read_required(&path)?).map_err(|e| e.at_path(&path))
}

/// The cgroup v2 mount under `root`: the unified location, else the hybrid
/// one, whichever holds [`CGROUP2_MARKER_FILE`].
fn find_cgroup2_mount(root: &Path) -> Option<PathBuf> {
    [CGROUP2_MOUNT_PATH, CGROUP2_HYBRID_MOUNT_PATH]
        .into_iter()
        .map(|relative| root.join(relative))
        .find(|mount| mount.join(CGROUP2_MARKER_FILE).is_file())
}

/// The names along a cgroup path (`/a/b` gives `["a", "b"]`); `None` if it
/// is not absolute or climbs with `..` (a cgroup outside this namespace's
/// view, which cannot be located under the mount).
fn cgroup_components(cgroup_path: &str) -> Option<Vec<String>> {
    let path = Path::new(cgroup_path);
    if !path.has_root() {
        return None;
    }
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => names.push(name.to_str()?.to_string()),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(names)
}

/// `memory.max` and `memory.current` of the cgroup directory `dir`;
/// `Ok(None)` if either file is absent (no memory controller there, or the
/// root cgroup).
fn read_cgroup_dir(dir: &Path) -> Result<Option<(Option<u64>, u64)>, SysMemError> {
    let max_path = dir.join(CGROUP_MEMORY_MAX_FILE);
    let Some(max_text) = read_optional(&max_path)? else {
        return Ok(None);
    };
    let current_path = dir.join(CGROUP_MEMORY_CURRENT_FILE);
    let Some(current_text) = read_optional(&current_path)? else {
        return Ok(None);
    };
    let max_bytes = parse_cgroup_max(&max_text).map_err(|e| e.at_path(&max_path))?;
    let current_bytes =
        parse_cgroup_current(&current_text).map_err(|e| e.at_path(&current_path))?;
    Ok(Some((max_bytes, current_bytes)))
}

/// [`read_cgroup_memory`] with `/` replaced by `root`. Works on any platform.
pub fn read_cgroup_memory_at(root: &Path) -> Result<Option<CgroupMemory>, SysMemError> {
    let Some(cgroup_text) = read_optional(&root.join(PROC_SELF_CGROUP_PATH))? else {
        return Ok(None);
    };
    let Some(cgroup_path) = parse_proc_self_cgroup(&cgroup_text) else {
        return Ok(None);
    };
    let Some(mount) = find_cgroup2_mount(root) else {
        return Ok(None);
    };
    let Some(names) = cgroup_components(&cgroup_path) else {
        return Ok(None);
    };
    // Walk from the process's cgroup up to the mount root: a limit set on an
    // ancestor (a systemd slice, a pod) binds the process too, and the
    // ancestor's usage includes its siblings. Keep the tightest.
    let mut own: Option<(Option<u64>, u64)> = None;
    let mut tightest: Option<(f64, usize, u64, u64)> = None;
    for depth in (0..=names.len()).rev() {
        let dir = names[..depth]
            .iter()
            .fold(mount.clone(), |dir, name| dir.join(name));
        let Some((max_bytes, current_bytes)) = read_cgroup_dir(&dir)? else {
            break;
        };
        if depth == names.len() {
            own = Some((max_bytes, current_bytes));
        }
        if let Some(max_bytes) = max_bytes.filter(|&m| m > 0) {
            let ratio = current_bytes as f64 / max_bytes as f64;
            if tightest.is_none_or(|(tightest_ratio, ..)| ratio > tightest_ratio) {
                tightest = Some((ratio, depth, max_bytes, current_bytes));
            }
        }
    }
    let Some((own_max_bytes, own_current_bytes)) = own else {
        return Ok(None);
    };
    let (depth, max_bytes, current_bytes) = match tightest {
        Some((_, depth, max_bytes, current_bytes)) => (depth, Some(max_bytes), current_bytes),
        None => (names.len(), own_max_bytes, own_current_bytes),
    };
    let dir = names[..depth]
        .iter()
        .fold(mount, |dir, name| dir.join(name));
    let stat_path = dir.join(CGROUP_MEMORY_STAT_FILE);
    let inactive_file_bytes = match read_optional(&stat_path)? {
        Some(text) => parse_cgroup_inactive_file(&text).map_err(|e| e.at_path(&stat_path))?,
        None => None,
    };
    Ok(Some(CgroupMemory {
        path: format!("/{}", names[..depth].join("/")),
        max_bytes,
        current_bytes,
        inactive_file_bytes,
    }))
}

/// [`system_readings`] with `/` replaced by `root`. Works on any platform.
pub fn system_readings_at(root: &Path) -> Vec<MemoryReading> {
    let mut readings = Vec::new();
    if let Ok(Some(cgroup)) = read_cgroup_memory_at(root) {
        if let Some(max_bytes) = cgroup.max_bytes {
            readings.push(MemoryReading::new(
                PressureSource::Cgroup,
                cgroup.working_set_bytes(),
                max_bytes,
            ));
        }
    }
    if let Ok(meminfo) = read_meminfo_at(root) {
        readings.push(MemoryReading::new(
            PressureSource::System,
            meminfo.total_bytes.saturating_sub(meminfo.available_bytes),
            meminfo.total_bytes,
        ));
    }
    readings
}

/// `/proc/meminfo` of this machine.
pub fn read_meminfo() -> Result<MemInfo, SysMemError> {
    if cfg!(target_os = "linux") {
        read_meminfo_at(Path::new("/"))
    } else {
        Err(SysMemError::Unsupported {
            what: "/proc/meminfo",
        })
    }
}

/// `VmRSS` and `VmHWM` of this process.
pub fn read_process_memory() -> Result<ProcessMemory, SysMemError> {
    if cfg!(target_os = "linux") {
        read_process_memory_at(Path::new("/"))
    } else {
        Err(SysMemError::Unsupported {
            what: "/proc/self/status",
        })
    }
}

/// Where Linux resets a process's peak RSS (`VmHWM`) when "5" is written.
pub const CLEAR_REFS_PATH: &str = "/proc/self/clear_refs";

/// Resets this process's peak RSS (`VmHWM`) to its current RSS, so a later
/// [`read_process_memory`] gives the peak of what ran in between (Linux 4.0
/// and later). Errors say why it could not (not Linux, or the write was
/// refused); the caller should then not report a peak for the interval.
pub fn reset_peak_rss() -> Result<(), SysMemError> {
    if !cfg!(target_os = "linux") {
        return Err(SysMemError::Unsupported {
            what: CLEAR_REFS_PATH,
        });
    }
    std::fs::write(CLEAR_REFS_PATH, "5").map_err(|error| SysMemError::Io {
        path: PathBuf::from(CLEAR_REFS_PATH),
        kind: error.kind(),
        message: error.to_string(),
    })
}

/// The cgroup v2 memory figures of this process: its own cgroup's, or
/// those of the ancestor whose limit is closest to being reached.
/// `Ok(None)` when there is no cgroup v2 (cgroup v1 is not read) or no
/// memory controller files for the process's cgroup.
pub fn read_cgroup_memory() -> Result<Option<CgroupMemory>, SysMemError> {
    if cfg!(target_os = "linux") {
        read_cgroup_memory_at(Path::new("/"))
    } else {
        Err(SysMemError::Unsupported {
            what: "cgroup memory",
        })
    }
}

/// Readings for a [`PressureMonitor`](crate::pressure::PressureMonitor):
/// a [`PressureSource::Cgroup`] reading (working set over `memory.max`) if
/// the cgroup has a limit, and a [`PressureSource::System`] reading
/// (`MemTotal - MemAvailable` over `MemTotal`). A figure that cannot be read
/// is left out (call the readers to see why); empty off Linux.
pub fn system_readings() -> Vec<MemoryReading> {
    if cfg!(target_os = "linux") {
        system_readings_at(Path::new("/"))
    } else {
        Vec::new()
    }
}
