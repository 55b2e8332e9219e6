//! Stack capture (instruction pointers only) and, at report time, symbol
//! resolution.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::panic::Location;
use std::time::Instant;

use super::{REPORT_FRAMES_MAX, STACK_FRAMES_MAX};

/// Instruction pointers of the current stack, innermost first, at most
/// [`STACK_FRAMES_MAX`].
#[derive(Clone, Copy, Debug)]
pub(super) struct CapturedStack {
    frames: [usize; STACK_FRAMES_MAX],
    depth: usize,
}

impl CapturedStack {
    /// No frames: the site is the location alone.
    pub(super) const EMPTY: CapturedStack = CapturedStack {
        frames: [0; STACK_FRAMES_MAX],
        depth: 0,
    };

    /// Walks the current stack. No symbols, no allocation by this code;
    /// the unwinder may allocate once on first use.
    #[inline(never)]
    pub(super) fn capture() -> CapturedStack {
        let mut stack = CapturedStack::EMPTY;
        backtrace::trace(|frame| {
            stack.frames[stack.depth] = frame.ip() as usize;
            stack.depth += 1;
            stack.depth < STACK_FRAMES_MAX
        });
        stack
    }

    pub(super) fn frames(&self) -> &[usize] {
        &self.frames[..self.depth]
    }
}

/// A fast, deterministic hasher for the profiler's own tables (keys are
/// addresses, site hashes and source locations, never attacker-chosen):
/// a multiply-rotate over 8-byte words, about ten times cheaper than SipHash
/// on a file path, which mattered because every sample hashes its site.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FastHasher(u64);

const FAST_HASH_MULTIPLIER: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FAST_HASH_MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ (rest.len() as u64) << 59);
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`FastHasher`]s for the profiler's hash maps.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FastBuildHasher;

impl BuildHasher for FastBuildHasher {
    type Hasher = FastHasher;

    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher::default()
    }
}

/// Hash of a site key: its location (by value) and its frames, with the
/// deterministic [`FastHasher`], so site interning is reproducible across runs.
pub(super) fn site_hash(location: Option<&'static Location<'static>>, frames: &[usize]) -> u64 {
    let mut hasher = FastHasher::default();
    location.hash(&mut hasher);
    frames.hash(&mut hasher);
    hasher.finish()
}

/// Mean wall-clock nanoseconds of one [`CapturedStack::capture`], over
/// `captures` captures from the caller's stack depth.
pub(super) fn capture_cost_ns(captures: u32) -> u64 {
    let start = Instant::now();
    for _ in 0..captures {
        std::hint::black_box(CapturedStack::capture());
    }
    let elapsed_ns = start.elapsed().as_nanos();
    u64::try_from(elapsed_ns / u128::from(captures.max(1))).unwrap_or(u64::MAX)
}

/// A readable name for a site: `file:line:col` of its location and/or its
/// top resolved frames (`function (file:line) <- caller ...`), skipping the
/// frames of the unwinder and of this module; "unknown" when it has neither.
pub(super) fn site_label(location: Option<&'static Location<'static>>, frames: &[usize]) -> String {
    let mut label = String::new();
    if let Some(location) = location {
        let _ = write!(label, "{location}");
    }
    let mut shown = 0usize;
    for &ip in frames {
        if shown == REPORT_FRAMES_MAX {
            break;
        }
        let Some(frame) = resolve_frame(ip) else {
            continue;
        };
        if !label.is_empty() {
            label.push_str(if shown == 0 { " | " } else { " <- " });
        }
        label.push_str(&frame);
        shown += 1;
    }
    if label.is_empty() {
        label.push_str("unknown");
    }
    label
}

/// `function (file:line)` for one instruction pointer, `None` for frames of
/// the unwinder and of this module, `0x…` when nothing resolves.
fn resolve_frame(ip: usize) -> Option<String> {
    let mut name = None;
    let mut place = None;
    // Captured pointers are return addresses: the call is the byte before.
    let lookup = std::ptr::without_provenance_mut::<std::ffi::c_void>(ip.saturating_sub(1));
    backtrace::resolve(lookup, |symbol| {
        if name.is_none() {
            name = symbol.name().map(|symbol_name| format!("{symbol_name:#}"));
            place = match (symbol.filename(), symbol.lineno()) {
                (Some(file), Some(line)) => Some(format!("{}:{line}", file.display())),
                _ => None,
            };
        }
    });
    match name {
        Some(name) if is_internal_frame(&name) => None,
        Some(name) => Some(match place {
            Some(place) => format!("{name} ({place})"),
            None => name,
        }),
        None => Some(format!("{ip:#x}")),
    }
}

fn is_internal_frame(name: &str) -> bool {
    name.starts_with("backtrace::") || name.contains("strata_pool::sampling::")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_sees_frames_and_label_skips_this_module() {
        let stack = CapturedStack::capture();
        assert!(stack.depth > 2, "depth {}", stack.depth);
        let label = site_label(None, stack.frames());
        assert!(!label.contains("strata_pool::sampling::"), "{label}");
        assert_ne!(label, "unknown", "{label}");
        assert_eq!(site_label(None, &[]), "unknown");
    }
}
