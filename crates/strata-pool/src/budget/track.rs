//! [`TrackConsumersPool`]: a decorator that tracks current and peak bytes per
//! consumer and names the largest consumers when a request fails.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{add_bytes, sub_bytes, BudgetError, ConsumerId, ConsumerInfo, MemoryPool, Reservation};

/// One consumer's usage, as [`TrackConsumersPool::top_consumers`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerUsage {
    /// The consumer's unique id.
    pub id: ConsumerId,
    /// The consumer's name.
    pub name: String,
    /// Whether the consumer can spill.
    pub can_spill: bool,
    /// Bytes it holds now.
    pub current_bytes: u64,
    /// The most it has held at once since it registered.
    pub peak_bytes: u64,
}

/// Wraps a pool `P`: same policy, plus per-consumer current and peak bytes,
/// the peak of the pool's total, and errors that name the `top_n` largest
/// consumers.
///
/// Every call to the inner pool happens under the tracker's one mutex, so
/// the figures are exact: `sum(current_bytes) = inner.reserved()` and every
/// peak is the true maximum, even under concurrency. The price is that the
/// tracker serializes the pool (a lock-free [`GreedyPool`](super::GreedyPool)
/// inside it is no longer lock-free); it is meant for diagnosis and for pools
/// whose consumers grow in large steps. A consumer's figures are dropped when
/// it unregisters; the pool's peak is kept.
///
/// ```
/// use std::sync::Arc;
/// use strata_pool::budget::{BudgetError, GreedyPool, MemoryConsumer, MemoryPool, TrackConsumersPool};
///
/// let tracked = Arc::new(TrackConsumersPool::new(GreedyPool::new(1000), 3));
/// let pool: Arc<dyn MemoryPool> = tracked.clone();
/// let a = MemoryConsumer::new("a").register(&pool);
/// a.try_grow(600)?;
/// a.shrink(500)?;
/// let top = tracked.top_consumers(1);
/// assert_eq!((top[0].current_bytes, top[0].peak_bytes), (100, 600));
/// # Ok::<(), BudgetError>(())
/// ```
#[derive(Debug)]
pub struct TrackConsumersPool<P> {
    inner: P,
    top_n: usize,
    state: Mutex<TrackState>,
}

/// The tracker's figures, under one lock with every call to the inner pool.
#[derive(Debug, Default)]
struct TrackState {
    /// Registered consumers.
    consumers: HashMap<ConsumerId, Tracked>,
    /// `sum(current_bytes)`; equals `inner.reserved()`.
    reserved_bytes: u64,
    /// The most `reserved_bytes` has been.
    peak_bytes: u64,
}

/// One registered consumer's figures.
#[derive(Debug)]
struct Tracked {
    info: ConsumerInfo,
    current_bytes: u64,
    peak_bytes: u64,
}

impl Tracked {
    fn usage(&self) -> ConsumerUsage {
        ConsumerUsage {
            id: self.info.id(),
            name: self.info.name().to_owned(),
            can_spill: self.info.can_spill(),
            current_bytes: self.current_bytes,
            peak_bytes: self.peak_bytes,
        }
    }
}

impl TrackState {
    fn tracked(&mut self, id: ConsumerId) -> &mut Tracked {
        self.consumers
            .get_mut(&id)
            .unwrap_or_else(|| panic!("TrackConsumersPool: consumer {id:?} is not registered"))
    }

    /// Consumers largest first (ties by id, so the order is deterministic).
    fn ranked(&self) -> Vec<&Tracked> {
        let mut ranked: Vec<&Tracked> = self.consumers.values().collect();
        ranked.sort_by_key(|t| (std::cmp::Reverse(t.current_bytes), t.info.id()));
        ranked
    }

    /// Records `bytes` the inner pool granted consumer `id`.
    fn record_grow(&mut self, id: ConsumerId, bytes: u64) {
        // The inner pool's total did not overflow, and ours equals it.
        self.reserved_bytes = add_bytes(self.reserved_bytes, bytes, "TrackConsumersPool");
        self.peak_bytes = self.peak_bytes.max(self.reserved_bytes);
        let tracked = self.tracked(id);
        tracked.current_bytes += bytes;
        tracked.peak_bytes = tracked.peak_bytes.max(tracked.current_bytes);
    }
}

impl<P: MemoryPool> TrackConsumersPool<P> {
    /// Wraps `inner`; refusals will name up to `top_n` consumers.
    pub fn new(inner: P, top_n: usize) -> TrackConsumersPool<P> {
        TrackConsumersPool {
            inner,
            top_n,
            state: Mutex::new(TrackState::default()),
        }
    }

    /// The wrapped pool.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// How many consumers a refusal names.
    pub fn top_n(&self) -> usize {
        self.top_n
    }

    /// Up to `n` registered consumers, largest current holding first (ties by
    /// id); consumers holding nothing come last, with their peaks.
    pub fn top_consumers(&self, n: usize) -> Vec<ConsumerUsage> {
        let state = self.lock();
        state
            .ranked()
            .into_iter()
            .take(n)
            .map(Tracked::usage)
            .collect()
    }

    /// The most the pool has had reserved at once.
    pub fn peak_bytes(&self) -> u64 {
        self.lock().peak_bytes
    }

    fn lock(&self) -> MutexGuard<'_, TrackState> {
        // Every mutation checks before it writes, so a panic (an accounting
        // bug reported with its values) leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<P: MemoryPool> MemoryPool for TrackConsumersPool<P> {
    fn register(&self, consumer: &ConsumerInfo) {
        let mut state = self.lock();
        let tracked = Tracked {
            info: consumer.clone(),
            current_bytes: 0,
            peak_bytes: 0,
        };
        if let Some(old) = state.consumers.insert(consumer.id(), tracked) {
            panic!(
                "TrackConsumersPool: consumer {:?} '{}' registered twice (first as '{}')",
                consumer.id(),
                consumer.name(),
                old.info.name()
            );
        }
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &ConsumerInfo) {
        let mut state = self.lock();
        let current_bytes = state.tracked(consumer.id()).current_bytes;
        assert_eq!(
            current_bytes,
            0,
            "TrackConsumersPool: consumer {:?} '{}' unregistered while holding {} bytes",
            consumer.id(),
            consumer.name(),
            current_bytes
        );
        state.consumers.remove(&consumer.id());
        self.inner.unregister(consumer);
    }

    /// The inner pool's answer; a refusal names the `top_n` largest
    /// consumers that hold anything.
    fn try_grow(&self, reservation: &Reservation, bytes: u64) -> Result<(), BudgetError> {
        let mut state = self.lock();
        match self.inner.try_grow(reservation, bytes) {
            Ok(()) => {
                state.record_grow(reservation.consumer().id(), bytes);
                Ok(())
            }
            Err(mut error) => {
                if let BudgetError::Exhausted { top_consumers, .. } = &mut error {
                    *top_consumers = state
                        .ranked()
                        .into_iter()
                        .filter(|t| t.current_bytes > 0)
                        .take(self.top_n)
                        .map(|t| (t.info.name().to_owned(), t.current_bytes))
                        .collect();
                }
                Err(error)
            }
        }
    }

    fn grow(&self, reservation: &Reservation, bytes: u64) {
        let mut state = self.lock();
        self.inner.grow(reservation, bytes);
        state.record_grow(reservation.consumer().id(), bytes);
    }

    fn shrink(&self, reservation: &Reservation, bytes: u64) {
        let mut state = self.lock();
        let id = reservation.consumer().id();
        // Check before the inner pool changes, so a bad shrink changes nothing.
        let current_bytes = state.tracked(id).current_bytes;
        let after_bytes = sub_bytes(current_bytes, bytes, "TrackConsumersPool consumer");
        self.inner.shrink(reservation, bytes);
        state.tracked(id).current_bytes = after_bytes;
        state.reserved_bytes -= bytes;
    }

    fn reserved(&self) -> u64 {
        self.inner.reserved()
    }

    fn limit(&self) -> Option<u64> {
        self.inner.limit()
    }

    fn overcommit_bytes(&self) -> u64 {
        self.inner.overcommit_bytes()
    }

    /// `sum(current_bytes) = reserved_bytes = inner.reserved()`, every
    /// current within its peak, every peak within the pool's peak; then the
    /// inner pool's own check.
    fn check_invariants(&self) {
        let state = self.lock();
        let current_sum_bytes: u64 = state.consumers.values().map(|t| t.current_bytes).sum();
        let inner_reserved_bytes = self.inner.reserved();
        assert!(
            current_sum_bytes == state.reserved_bytes
                && state.reserved_bytes == inner_reserved_bytes,
            "TrackConsumersPool: sum of {} consumers' current bytes {current_sum_bytes}, tracked \
             total {}, inner reserved {inner_reserved_bytes}",
            state.consumers.len(),
            state.reserved_bytes
        );
        assert!(
            state.reserved_bytes <= state.peak_bytes,
            "TrackConsumersPool: reserved {} > peak {}",
            state.reserved_bytes,
            state.peak_bytes
        );
        for t in state.consumers.values() {
            assert!(
                t.current_bytes <= t.peak_bytes && t.peak_bytes <= state.peak_bytes,
                "TrackConsumersPool: consumer {:?} '{}' current {} peak {}, pool peak {}",
                t.info.id(),
                t.info.name(),
                t.current_bytes,
                t.peak_bytes,
                state.peak_bytes
            );
        }
        self.inner.check_invariants();
    }
}
