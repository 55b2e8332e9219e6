//! Pressure levels with hysteresis over memory readings (policy only, no I/O).
//!
//! A [`MemoryReading`] says how much of some limit is used: the budget, the
//! cgroup limit or the machine's memory (see [`crate::sysmem`] for the
//! Linux readers). The pressure ratio is the worst `used / limit` across the
//! readings of one observation, and [`next_level`] turns it into a
//! [`PressureLevel`]:
//!
//! - rising, the level becomes the highest level whose threshold the ratio
//!   has reached (a jump from normal to critical is one step);
//! - falling, the level drops one step at a time, and only while the ratio
//!   is below the current level's threshold minus the hysteresis, so a ratio
//!   hovering around a threshold does not flap.
//!
//! [`PressureMonitor`] keeps the current level, counts crossings and calls
//! registered callbacks once per crossing, in crossing order.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use strata_pool::pressure::{
//!     MemoryReading, PressureLevel, PressureMonitor, PressureSource, PressureThresholds,
//! };
//!
//! let monitor = PressureMonitor::new(PressureThresholds::default())?;
//! let events = Arc::new(AtomicU64::new(0));
//! let seen = Arc::clone(&events);
//! monitor.on_change(move |event| {
//!     assert_eq!(event.source, PressureSource::Budget);
//!     seen.fetch_add(1, Ordering::Relaxed);
//! });
//! let budget = |used_bytes| MemoryReading::new(PressureSource::Budget, used_bytes, 1000);
//! assert_eq!(monitor.observe(&[budget(800)]), PressureLevel::Elevated); // 80% >= 75%
//! assert_eq!(monitor.observe(&[budget(720)]), PressureLevel::Elevated); // 72% >= 75% - 5%
//! assert_eq!(monitor.observe(&[budget(690)]), PressureLevel::Normal); //   69% <  75% - 5%
//! assert_eq!(events.load(Ordering::Relaxed), 2);
//! assert_eq!(monitor.crossings(), 2);
//! # Ok::<(), strata_pool::pressure::PressureError>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Default ratio at which pressure becomes [`PressureLevel::Elevated`].
pub const ELEVATED_RATIO_DEFAULT: f64 = 0.75;
/// Default ratio at which pressure becomes [`PressureLevel::High`].
pub const HIGH_RATIO_DEFAULT: f64 = 0.85;
/// Default ratio at which pressure becomes [`PressureLevel::Critical`].
pub const CRITICAL_RATIO_DEFAULT: f64 = 0.95;
/// Default hysteresis: a level is left only once the ratio is this far
/// below its threshold.
pub const HYSTERESIS_RATIO_DEFAULT: f64 = 0.05;

const _: () = assert!(0.0 < ELEVATED_RATIO_DEFAULT);
const _: () = assert!(ELEVATED_RATIO_DEFAULT < HIGH_RATIO_DEFAULT);
const _: () = assert!(HIGH_RATIO_DEFAULT < CRITICAL_RATIO_DEFAULT);
const _: () = assert!(CRITICAL_RATIO_DEFAULT <= 1.0);
const _: () = assert!(0.0 <= HYSTERESIS_RATIO_DEFAULT);
const _: () = assert!(HYSTERESIS_RATIO_DEFAULT < ELEVATED_RATIO_DEFAULT);

/// How close memory use is to a limit, from least to most pressing.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PressureLevel {
    /// Below the elevated threshold (or fallen back below it by the hysteresis).
    Normal = 0,
    /// At or above the elevated threshold.
    Elevated = 1,
    /// At or above the high threshold.
    High = 2,
    /// At or above the critical threshold.
    Critical = 3,
}

impl PressureLevel {
    /// Every level, from [`PressureLevel::Normal`] up.
    pub const ALL: [PressureLevel; 4] = [
        PressureLevel::Normal,
        PressureLevel::Elevated,
        PressureLevel::High,
        PressureLevel::Critical,
    ];

    /// The level one step lower (`Normal` stays `Normal`).
    pub fn lower(self) -> PressureLevel {
        match self {
            PressureLevel::Normal | PressureLevel::Elevated => PressureLevel::Normal,
            PressureLevel::High => PressureLevel::Elevated,
            PressureLevel::Critical => PressureLevel::High,
        }
    }

    /// The level stored as `index` by `level as u8`; `None` past `Critical`.
    pub fn from_index(index: u8) -> Option<PressureLevel> {
        PressureLevel::ALL.get(usize::from(index)).copied()
    }

    /// The lowercase word [`Display`](fmt::Display) prints.
    pub fn name(self) -> &'static str {
        match self {
            PressureLevel::Normal => "normal",
            PressureLevel::Elevated => "elevated",
            PressureLevel::High => "high",
            PressureLevel::Critical => "critical",
        }
    }
}

impl fmt::Display for PressureLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a [`PressureThresholds`] was refused. Nothing is built from refused
/// thresholds.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum PressureError {
    /// A level threshold is not a number in `(0, 1]`.
    ThresholdOutOfRange {
        /// The field: `"elevated_ratio"`, `"high_ratio"` or `"critical_ratio"`.
        name: &'static str,
        /// Its value.
        ratio: f64,
    },
    /// Two level thresholds are not strictly increasing.
    ThresholdsNotIncreasing {
        /// The lower level's field.
        lower_name: &'static str,
        /// Its value.
        lower_ratio: f64,
        /// The higher level's field.
        upper_name: &'static str,
        /// Its value, which must exceed `lower_ratio`.
        upper_ratio: f64,
    },
    /// The hysteresis is not a number in `[0, elevated_ratio)`.
    HysteresisOutOfRange {
        /// The hysteresis given.
        hysteresis_ratio: f64,
        /// The elevated threshold it must stay below.
        elevated_ratio: f64,
    },
}

impl fmt::Display for PressureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PressureError::ThresholdOutOfRange { name, ratio } => {
                write!(f, "pressure threshold {name} = {ratio} is not in (0, 1]")
            }
            PressureError::ThresholdsNotIncreasing {
                lower_name,
                lower_ratio,
                upper_name,
                upper_ratio,
            } => write!(
                f,
                "pressure thresholds must increase strictly: {lower_name} = {lower_ratio} \
                 is not below {upper_name} = {upper_ratio}"
            ),
            PressureError::HysteresisOutOfRange {
                hysteresis_ratio,
                elevated_ratio,
            } => write!(
                f,
                "pressure hysteresis_ratio = {hysteresis_ratio} is not in [0, elevated_ratio = \
                 {elevated_ratio})"
            ),
        }
    }
}

impl std::error::Error for PressureError {}

/// The ratios of used to limit at which each level starts, and the
/// hysteresis applied when falling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PressureThresholds {
    /// Ratio at which [`PressureLevel::Elevated`] starts.
    pub elevated_ratio: f64,
    /// Ratio at which [`PressureLevel::High`] starts.
    pub high_ratio: f64,
    /// Ratio at which [`PressureLevel::Critical`] starts.
    pub critical_ratio: f64,
    /// A level is left only when the ratio is below its threshold minus this.
    pub hysteresis_ratio: f64,
}

impl Default for PressureThresholds {
    fn default() -> Self {
        PressureThresholds {
            elevated_ratio: ELEVATED_RATIO_DEFAULT,
            high_ratio: HIGH_RATIO_DEFAULT,
            critical_ratio: CRITICAL_RATIO_DEFAULT,
            hysteresis_ratio: HYSTERESIS_RATIO_DEFAULT,
        }
    }
}

impl PressureThresholds {
    /// Checks that the level thresholds lie in `(0, 1]` and increase
    /// strictly, and that the hysteresis lies in `[0, elevated_ratio)`
    /// (so falling below elevated stays reachable). NaN is refused.
    pub fn validate(&self) -> Result<(), PressureError> {
        let named = [
            ("elevated_ratio", self.elevated_ratio),
            ("high_ratio", self.high_ratio),
            ("critical_ratio", self.critical_ratio),
        ];
        for (name, ratio) in named {
            // Written so that NaN fails too.
            if !(ratio > 0.0 && ratio <= 1.0) {
                return Err(PressureError::ThresholdOutOfRange { name, ratio });
            }
        }
        for pair in named.windows(2) {
            let ((lower_name, lower_ratio), (upper_name, upper_ratio)) = (pair[0], pair[1]);
            if lower_ratio >= upper_ratio {
                return Err(PressureError::ThresholdsNotIncreasing {
                    lower_name,
                    lower_ratio,
                    upper_name,
                    upper_ratio,
                });
            }
        }
        if !(self.hysteresis_ratio >= 0.0 && self.hysteresis_ratio < self.elevated_ratio) {
            return Err(PressureError::HysteresisOutOfRange {
                hysteresis_ratio: self.hysteresis_ratio,
                elevated_ratio: self.elevated_ratio,
            });
        }
        Ok(())
    }

    /// The ratio at which `level` starts; `0.0` for [`PressureLevel::Normal`].
    pub fn threshold_ratio(&self, level: PressureLevel) -> f64 {
        match level {
            PressureLevel::Normal => 0.0,
            PressureLevel::Elevated => self.elevated_ratio,
            PressureLevel::High => self.high_ratio,
            PressureLevel::Critical => self.critical_ratio,
        }
    }
}

/// The level after observing `ratio` at level `current`.
///
/// Rising: the highest level whose threshold `ratio` has reached, if that
/// is above `current`. Otherwise falling: starting from `current`, drop one
/// step while `ratio` is below the level's threshold minus the hysteresis
/// (possibly several steps at once, never below the level `ratio` reaches).
/// A NaN ratio leaves the level unchanged. `thresholds` should be
/// [validated](PressureThresholds::validate).
pub fn next_level(
    current: PressureLevel,
    ratio: f64,
    thresholds: &PressureThresholds,
) -> PressureLevel {
    let reached = PressureLevel::ALL
        .into_iter()
        .rev()
        .find(|&level| ratio >= thresholds.threshold_ratio(level))
        .unwrap_or(PressureLevel::Normal);
    if reached > current {
        return reached;
    }
    let mut level = current;
    while level > PressureLevel::Normal
        && ratio < thresholds.threshold_ratio(level) - thresholds.hysteresis_ratio
    {
        level = level.lower();
    }
    level
}

/// Which limit a [`MemoryReading`] measures against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PressureSource {
    /// Strata's own memory budget.
    Budget,
    /// The cgroup (v2) memory limit of the process.
    Cgroup,
    /// The machine's memory (`MemTotal - MemAvailable` over `MemTotal`).
    System,
}

impl fmt::Display for PressureSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PressureSource::Budget => "budget",
            PressureSource::Cgroup => "cgroup",
            PressureSource::System => "system",
        })
    }
}

/// Bytes used against a limit, as measured by one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReading {
    /// What the limit is.
    pub source: PressureSource,
    /// Bytes in use.
    pub used_bytes: u64,
    /// The limit; a reading with limit 0 carries no information and is ignored.
    pub limit_bytes: u64,
}

impl MemoryReading {
    /// A reading of `used_bytes` against `limit_bytes` from `source`.
    pub fn new(source: PressureSource, used_bytes: u64, limit_bytes: u64) -> Self {
        MemoryReading {
            source,
            used_bytes,
            limit_bytes,
        }
    }

    /// `used_bytes / limit_bytes` (above 1 when over the limit); `None` when
    /// the limit is 0.
    pub fn ratio(&self) -> Option<f64> {
        (self.limit_bytes > 0).then(|| self.used_bytes as f64 / self.limit_bytes as f64)
    }
}

/// The worst reading of `readings` and its ratio: the highest
/// `used / limit`, the first one on ties. `None` when no reading has a
/// limit above 0.
pub fn worst_reading(readings: &[MemoryReading]) -> Option<(f64, MemoryReading)> {
    let mut worst: Option<(f64, MemoryReading)> = None;
    for reading in readings {
        if let Some(ratio) = reading.ratio() {
            if worst.is_none_or(|(worst_ratio, _)| ratio > worst_ratio) {
                worst = Some((ratio, *reading));
            }
        }
    }
    worst
}

/// One crossing from `previous` to `level`, with the reading that drove it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PressureEvent {
    /// The level after the crossing.
    pub level: PressureLevel,
    /// The level before it.
    pub previous: PressureLevel,
    /// The pressure ratio observed (`used_bytes / limit_bytes`).
    pub ratio: f64,
    /// The source of the worst reading.
    pub source: PressureSource,
    /// Bytes used in the worst reading.
    pub used_bytes: u64,
    /// The limit of the worst reading.
    pub limit_bytes: u64,
    /// The crossing's number in this monitor: 1 for the first. Events are
    /// delivered in this order.
    pub crossing: u64,
}

/// Names a callback registered with [`PressureMonitor::on_change`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallbackId(pub u64);

type PressureCallback = dyn Fn(&PressureEvent) + Send + Sync + 'static;

struct Registration {
    id: CallbackId,
    /// Set by `remove_callback` so a delivery that took its snapshot of the
    /// list earlier skips the callback.
    removed: AtomicBool,
    callback: Box<PressureCallback>,
}

/// What `observe` changes, under one lock.
struct MonitorState {
    level: PressureLevel,
    crossings: u64,
    /// Crossings not yet delivered to the callbacks, oldest first.
    pending: VecDeque<PressureEvent>,
    /// A thread is delivering `pending`; others leave their events to it.
    delivering: bool,
}

/// Tracks the pressure level over observations and calls registered
/// callbacks once per crossing. All methods take `&self`; share it in an
/// `Arc`.
///
/// Guarantees:
/// - Observations are serialized: each `observe` computes its level from
///   the level left by the previous one, so the crossings form a chain
///   (each event's `previous` is the prior event's `level`, the first
///   event's `previous` is `Normal`), numbered by [`PressureEvent::crossing`].
/// - Every callback registered at delivery time is called exactly once per
///   crossing, in crossing order, and callbacks are never called
///   concurrently with each other: one thread at a time delivers.
/// - No internal lock is held while a callback runs, so a callback may call
///   any method of the monitor, including `observe` (the crossing that
///   causes is delivered after the current callbacks return, by the same
///   delivering thread) and `on_change` / `remove_callback`.
/// - When two threads observe concurrently, the one that finds no delivery
///   under way delivers every pending crossing, including the other
///   thread's; the other returns at once. So when `observe` returns, its
///   crossing has been delivered or is being delivered by another thread.
///   [`level`](Self::level) may run ahead of the delivered events.
/// - A callback that panics makes the delivering `observe` panic; that
///   event's remaining callbacks are skipped, and later pending events are
///   delivered by the next `observe`.
pub struct PressureMonitor {
    thresholds: PressureThresholds,
    /// Mirror of `state.level` so `level()` takes no lock.
    level: AtomicU8,
    state: Mutex<MonitorState>,
    callbacks: Mutex<Vec<Arc<Registration>>>,
    next_callback_id: AtomicU64,
}

impl fmt::Debug for PressureMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PressureMonitor")
            .field("thresholds", &self.thresholds)
            .field("level", &self.level())
            .field("crossings", &self.crossings())
            .field("callbacks", &self.lock_callbacks().len())
            .finish()
    }
}

/// Clears `delivering` if a callback panics, so later observations deliver.
struct DeliveryGuard<'a> {
    monitor: &'a PressureMonitor,
    finished: bool,
}

impl Drop for DeliveryGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.monitor.lock_state().delivering = false;
        }
    }
}

impl PressureMonitor {
    /// A monitor at [`PressureLevel::Normal`] with no callbacks; refuses
    /// thresholds that fail [`PressureThresholds::validate`].
    pub fn new(thresholds: PressureThresholds) -> Result<Self, PressureError> {
        thresholds.validate()?;
        Ok(PressureMonitor {
            thresholds,
            level: AtomicU8::new(PressureLevel::Normal as u8),
            state: Mutex::new(MonitorState {
                level: PressureLevel::Normal,
                crossings: 0,
                pending: VecDeque::new(),
                delivering: false,
            }),
            callbacks: Mutex::new(Vec::new()),
            next_callback_id: AtomicU64::new(0),
        })
    }

    /// The thresholds this monitor applies.
    pub fn thresholds(&self) -> PressureThresholds {
        self.thresholds
    }

    /// Feeds one observation and returns the level after it. The ratio is
    /// the worst of `readings` ([`worst_reading`]); with no reading of a
    /// non-zero limit there is no information and the level stays. A
    /// crossing is delivered to the callbacks before returning unless
    /// another thread is already delivering (see the type's guarantees).
    pub fn observe(&self, readings: &[MemoryReading]) -> PressureLevel {
        let worst = worst_reading(readings);
        let mut state = self.lock_state();
        if let Some((ratio, reading)) = worst {
            let previous = state.level;
            let level = next_level(previous, ratio, &self.thresholds);
            if level != previous {
                state.level = level;
                state.crossings += 1;
                self.level.store(level as u8, Ordering::Release);
                let crossing = state.crossings;
                state.pending.push_back(PressureEvent {
                    level,
                    previous,
                    ratio,
                    source: reading.source,
                    used_bytes: reading.used_bytes,
                    limit_bytes: reading.limit_bytes,
                    crossing,
                });
            }
        }
        let level = state.level;
        let deliver = !state.delivering && !state.pending.is_empty();
        if deliver {
            state.delivering = true;
        }
        drop(state);
        if deliver {
            self.deliver_pending();
        }
        level
    }

    /// The current level: the one left by the latest observation.
    pub fn level(&self) -> PressureLevel {
        let index = self.level.load(Ordering::Acquire);
        PressureLevel::from_index(index).unwrap_or_else(|| {
            panic!("pressure monitor holds level index {index}, past the last level")
        })
    }

    /// Crossings so far (level changes, whatever their size).
    pub fn crossings(&self) -> u64 {
        self.lock_state().crossings
    }

    /// Registers `callback` to be called once per crossing from now on
    /// (including crossings already observed but not yet delivered).
    pub fn on_change(
        &self,
        callback: impl Fn(&PressureEvent) + Send + Sync + 'static,
    ) -> CallbackId {
        let id = CallbackId(self.next_callback_id.fetch_add(1, Ordering::Relaxed));
        self.lock_callbacks().push(Arc::new(Registration {
            id,
            removed: AtomicBool::new(false),
            callback: Box::new(callback),
        }));
        id
    }

    /// Unregisters a callback; `false` if `id` is not registered (any more).
    /// After this returns the callback is not called again, except for a
    /// call already running on another thread.
    pub fn remove_callback(&self, id: CallbackId) -> bool {
        let mut callbacks = self.lock_callbacks();
        match callbacks.iter().position(|r| r.id == id) {
            Some(index) => {
                let registration = callbacks.remove(index);
                registration.removed.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Panics, printing the values, if the level mirror disagrees with the
    /// state or the pending events do not chain up to the current level.
    pub fn check_invariants(&self) {
        let state = self.lock_state();
        assert_eq!(
            self.level.load(Ordering::Acquire),
            state.level as u8,
            "level mirror differs from the state level {}",
            state.level
        );
        assert!(
            state.pending.len() as u64 <= state.crossings,
            "{} pending events but only {} crossings",
            state.pending.len(),
            state.crossings
        );
        let mut expected_crossing = state.crossings - state.pending.len() as u64;
        let mut expected_previous = state.pending.front().map(|e| e.previous);
        for event in &state.pending {
            expected_crossing += 1;
            assert_eq!(
                event.crossing, expected_crossing,
                "pending event {event:?} out of sequence"
            );
            assert_eq!(
                Some(event.previous),
                expected_previous,
                "pending event {event:?} does not follow the previous one"
            );
            assert_ne!(
                event.level, event.previous,
                "pending event {event:?} is no crossing"
            );
            expected_previous = Some(event.level);
        }
        if let Some(last) = state.pending.back() {
            assert_eq!(
                last.level, state.level,
                "last pending event {last:?} does not end at the level {}",
                state.level
            );
        }
        let callbacks = self.lock_callbacks();
        for (index, registration) in callbacks.iter().enumerate() {
            assert!(
                !registration.removed.load(Ordering::Acquire),
                "callback {:?} is registered but marked removed",
                registration.id
            );
            assert!(
                callbacks[..index].iter().all(|r| r.id != registration.id),
                "callback id {:?} registered twice",
                registration.id
            );
        }
    }

    /// Delivers pending events oldest first until none is left. Called by
    /// the thread that set `delivering`; holds no lock while a callback runs.
    fn deliver_pending(&self) {
        let mut guard = DeliveryGuard {
            monitor: self,
            finished: false,
        };
        loop {
            let event = {
                let mut state = self.lock_state();
                match state.pending.pop_front() {
                    Some(event) => event,
                    None => {
                        // Cleared under the same lock the enqueuers check, so
                        // no event is left behind without a deliverer.
                        state.delivering = false;
                        guard.finished = true;
                        return;
                    }
                }
            };
            let snapshot: Vec<Arc<Registration>> = self.lock_callbacks().clone();
            for registration in snapshot {
                if !registration.removed.load(Ordering::Acquire) {
                    (registration.callback)(&event);
                }
            }
        }
    }

    // Callbacks never run under these locks, so poisoning can only come from
    // a panic inside this module's own short critical sections, which leave
    // the data consistent; carry on with it.
    fn lock_state(&self) -> MutexGuard<'_, MonitorState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_callbacks(&self) -> MutexGuard<'_, Vec<Arc<Registration>>> {
        self.callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_round_trips_through_its_index() {
        for level in PressureLevel::ALL {
            assert_eq!(PressureLevel::from_index(level as u8), Some(level));
        }
        assert_eq!(PressureLevel::from_index(4), None);
    }

    #[test]
    fn new_refuses_invalid_thresholds() {
        let thresholds = PressureThresholds {
            high_ratio: 0.70,
            ..PressureThresholds::default()
        };
        assert_eq!(
            PressureMonitor::new(thresholds).unwrap_err(),
            PressureError::ThresholdsNotIncreasing {
                lower_name: "elevated_ratio",
                lower_ratio: 0.75,
                upper_name: "high_ratio",
                upper_ratio: 0.70,
            }
        );
    }
}
