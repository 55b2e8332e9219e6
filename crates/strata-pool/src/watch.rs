//! A background thread that feeds a [`PressureMonitor`] at a fixed interval.
//!
//! The monitor itself is pure logic; this module owns the thread and the
//! clock. Readings come from a closure, typically the budget's
//! ([`budget_reading`]) plus the system's ([`crate::sysmem::system_readings`]).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use strata_pool::budget::{GreedyPool, MemoryConsumer, MemoryPool};
//! use strata_pool::pressure::{PressureLevel, PressureMonitor, PressureThresholds};
//! use strata_pool::watch::{budget_reading, PressureWatcher};
//!
//! let budget: Arc<dyn MemoryPool> = Arc::new(GreedyPool::new(1000));
//! let monitor = Arc::new(PressureMonitor::new(PressureThresholds::default()).unwrap());
//! let watched = Arc::clone(&budget);
//! let watcher = PressureWatcher::spawn(Arc::clone(&monitor), Duration::from_millis(1), move || {
//!     budget_reading(&*watched).into_iter().collect()
//! });
//! let reservation = MemoryConsumer::new("tiles").register(&budget);
//! reservation.try_grow(900).unwrap();
//! watcher.wait_for_observations(3);
//! assert_eq!(monitor.level(), PressureLevel::High);
//! ```

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::budget::MemoryPool;
use crate::pressure::{MemoryReading, PressureMonitor, PressureSource};

/// The shortest interval a watcher accepts (a tighter loop would only burn CPU).
pub const WATCH_INTERVAL_MIN: Duration = Duration::from_micros(100);

/// The `Budget` reading of a budget with a limit (`None` when unbounded).
pub fn budget_reading(pool: &dyn MemoryPool) -> Option<MemoryReading> {
    pool.limit()
        .map(|limit_bytes| MemoryReading::new(PressureSource::Budget, pool.reserved(), limit_bytes))
}

struct WatchState {
    stop: bool,
    observations: u64,
}

/// Calls [`PressureMonitor::observe`] every interval on its own thread
/// until dropped (which stops and joins it).
pub struct PressureWatcher {
    state: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl PressureWatcher {
    /// Start watching: `readings` is called once per interval (at least
    /// [`WATCH_INTERVAL_MIN`]) and its result observed.
    pub fn spawn(
        monitor: Arc<PressureMonitor>,
        interval: Duration,
        readings: impl Fn() -> Vec<MemoryReading> + Send + 'static,
    ) -> PressureWatcher {
        let interval = interval.max(WATCH_INTERVAL_MIN);
        let state = Arc::new((
            Mutex::new(WatchState {
                stop: false,
                observations: 0,
            }),
            Condvar::new(),
        ));
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("strata-pressure".into())
            .spawn(move || {
                let (lock, wake) = &*thread_state;
                loop {
                    monitor.observe(&readings());
                    let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
                    state.observations += 1;
                    wake.notify_all();
                    let (state, _) = wake
                        .wait_timeout_while(state, interval, |s| !s.stop)
                        .unwrap_or_else(|p| p.into_inner());
                    if state.stop {
                        return;
                    }
                }
            })
            .expect("spawning the pressure watcher thread");
        PressureWatcher {
            state,
            thread: Some(thread),
        }
    }

    /// Observations made so far.
    pub fn observations(&self) -> u64 {
        self.state
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observations
    }

    /// Block until `more` further observations have been made.
    pub fn wait_for_observations(&self, more: u64) {
        let (lock, wake) = &*self.state;
        let state = lock.lock().unwrap_or_else(|p| p.into_inner());
        let target = state.observations + more;
        let _state = wake
            .wait_while(state, |s| s.observations < target && !s.stop)
            .unwrap_or_else(|p| p.into_inner());
    }
}

impl Drop for PressureWatcher {
    fn drop(&mut self) {
        let (lock, wake) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{MemoryConsumer, UnboundedPool};
    use crate::pressure::{PressureLevel, PressureThresholds};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn callbacks_fire_once_per_crossing_from_the_watcher() {
        let used = Arc::new(AtomicU64::new(0));
        let monitor = Arc::new(PressureMonitor::new(PressureThresholds::default()).unwrap());
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        monitor.on_change(move |event| sink.lock().unwrap().push((event.previous, event.level)));
        let source = Arc::clone(&used);
        let watcher = PressureWatcher::spawn(Arc::clone(&monitor), Duration::ZERO, move || {
            vec![MemoryReading::new(
                PressureSource::Budget,
                source.load(Ordering::Relaxed),
                100,
            )]
        });
        for (value, level) in [
            (80, PressureLevel::Elevated),
            (96, PressureLevel::Critical),
            (10, PressureLevel::Normal),
        ] {
            used.store(value, Ordering::Relaxed);
            watcher.wait_for_observations(2);
            assert_eq!(monitor.level(), level, "at {value}%");
        }
        drop(watcher);
        assert_eq!(
            *events.lock().unwrap(),
            [
                (PressureLevel::Normal, PressureLevel::Elevated),
                (PressureLevel::Elevated, PressureLevel::Critical),
                (PressureLevel::Critical, PressureLevel::Normal)
            ]
        );
    }

    #[test]
    fn unbounded_budgets_give_no_reading() {
        let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedPool::new());
        let reservation = MemoryConsumer::new("x").register(&pool);
        reservation.grow(10);
        assert_eq!(budget_reading(&*pool), None);
    }
}
