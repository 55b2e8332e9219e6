//! [`FairPool`]: unspillable consumers first come, first served; spillable
//! consumers capped at an equal share of the rest.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{
    add_bytes, sub_bytes, BudgetError, ConsumerId, ConsumerInfo, FairShare, MemoryPool, Reservation,
};

/// A pool that keeps spillable consumers from starving each other (the
/// semantics of DataFusion's `FairSpillPool`).
///
/// - An unspillable consumer's request succeeds if it fits in what is left
///   of the limit: `reserved + bytes <= limit_bytes`. Spilling is not an
///   option for it, so it comes first; but it cannot take what spillable
///   consumers hold (they must spill first, which they learn when refused).
/// - A spillable consumer may hold at most its fair share,
///   `share_bytes = (limit_bytes - unspillable_bytes) / spillable_consumers`
///   (registered spillable consumers, idle or not), and its request must also
///   fit in what is left of the limit. The share shrinks as unspillable
///   consumers grow or spillable consumers register, so a consumer may find
///   itself above its share; its next request is refused until it spills.
///
/// The pool keeps each consumer's holding itself (keyed by [`ConsumerId`],
/// under one mutex) so shares are exact when several threads grow one
/// reservation. Accounting, checked by [`MemoryPool::check_invariants`]:
/// `unspillable_bytes = sum(held by unspillable consumers)`,
/// `spillable_bytes = sum(held by spillable consumers)`,
/// `reserved() = unspillable_bytes + spillable_bytes`.
///
/// ```
/// use std::sync::Arc;
/// use strata_pool::budget::{BudgetError, FairPool, MemoryConsumer, MemoryPool};
///
/// let fair = Arc::new(FairPool::new(100));
/// let pool: Arc<dyn MemoryPool> = fair.clone();
/// let index = MemoryConsumer::new("index").register(&pool);
/// let sort = MemoryConsumer::new("sort").with_can_spill(true).register(&pool);
/// let join = MemoryConsumer::new("join").with_can_spill(true).register(&pool);
/// index.try_grow(40)?;
/// assert_eq!(fair.fair_share_bytes(), Some(30)); // (100 - 40) / 2
/// sort.try_grow(30)?;
/// assert!(matches!(
///     sort.try_grow(1),
///     Err(BudgetError::Exhausted { fair_share: Some(_), .. })
/// ));
/// drop(join);
/// sort.try_grow(30)?; // alone, its share is all 60
/// # Ok::<(), BudgetError>(())
/// ```
#[derive(Debug)]
pub struct FairPool {
    limit_bytes: u64,
    state: Mutex<FairState>,
}

/// Everything the pool's policy reads, under one lock.
#[derive(Debug, Default)]
struct FairState {
    /// Bytes held by unspillable consumers.
    unspillable_bytes: u64,
    /// Bytes held by spillable consumers.
    spillable_bytes: u64,
    /// Registered spillable consumers.
    spillable_consumers: u64,
    /// Every registered consumer's kind and holding.
    holdings: HashMap<ConsumerId, Holding>,
}

/// One registered consumer, as the pool sees it.
#[derive(Debug)]
struct Holding {
    name: String,
    can_spill: bool,
    held_bytes: u64,
}

impl FairState {
    fn reserved_bytes(&self) -> u64 {
        // Both are sums of holdings that were checked against overflow together.
        self.unspillable_bytes + self.spillable_bytes
    }

    /// `(limit - unspillable) / spillable consumers`, or `None` with no
    /// spillable consumer registered.
    fn share_bytes(&self, limit_bytes: u64) -> Option<u64> {
        (self.spillable_consumers > 0)
            .then(|| limit_bytes.saturating_sub(self.unspillable_bytes) / self.spillable_consumers)
    }

    fn holding(&mut self, id: ConsumerId) -> &mut Holding {
        self.holdings
            .get_mut(&id)
            .unwrap_or_else(|| panic!("FairPool: consumer {id:?} is not registered"))
    }

    /// Adds `bytes` to consumer `id`'s holding and its kind's total.
    fn add(&mut self, id: ConsumerId, bytes: u64) {
        add_bytes(self.reserved_bytes(), bytes, "FairPool");
        let holding = self.holding(id);
        holding.held_bytes += bytes;
        let can_spill = holding.can_spill;
        if can_spill {
            self.spillable_bytes += bytes;
        } else {
            self.unspillable_bytes += bytes;
        }
    }
}

impl FairPool {
    /// An empty pool that grants up to `limit_bytes` in total.
    pub fn new(limit_bytes: u64) -> FairPool {
        FairPool {
            limit_bytes,
            state: Mutex::new(FairState::default()),
        }
    }

    /// The most one spillable consumer may hold now, or `None` when no
    /// spillable consumer is registered.
    pub fn fair_share_bytes(&self) -> Option<u64> {
        self.lock().share_bytes(self.limit_bytes)
    }

    /// Bytes held by unspillable consumers.
    pub fn unspillable_bytes(&self) -> u64 {
        self.lock().unspillable_bytes
    }

    /// Bytes held by spillable consumers.
    pub fn spillable_bytes(&self) -> u64 {
        self.lock().spillable_bytes
    }

    /// Registered spillable consumers.
    pub fn spillable_consumers(&self) -> u64 {
        self.lock().spillable_consumers
    }

    /// Bytes consumer `id` holds, or `None` if it is not registered.
    pub fn held_bytes(&self, id: ConsumerId) -> Option<u64> {
        self.lock().holdings.get(&id).map(|h| h.held_bytes)
    }

    fn lock(&self) -> MutexGuard<'_, FairState> {
        // Every mutation checks before it writes, so a panic (an accounting
        // bug reported with its values) leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryPool for FairPool {
    fn register(&self, consumer: &ConsumerInfo) {
        let mut state = self.lock();
        let holding = Holding {
            name: consumer.name().to_owned(),
            can_spill: consumer.can_spill(),
            held_bytes: 0,
        };
        if let Some(old) = state.holdings.insert(consumer.id(), holding) {
            panic!(
                "FairPool: consumer {:?} '{}' registered twice (first as '{}')",
                consumer.id(),
                consumer.name(),
                old.name
            );
        }
        if consumer.can_spill() {
            state.spillable_consumers += 1;
        }
    }

    fn unregister(&self, consumer: &ConsumerInfo) {
        let mut state = self.lock();
        let holding = state.holding(consumer.id());
        assert_eq!(
            holding.held_bytes,
            0,
            "FairPool: consumer {:?} '{}' unregistered while holding {} bytes",
            consumer.id(),
            consumer.name(),
            holding.held_bytes
        );
        let can_spill = holding.can_spill;
        state.holdings.remove(&consumer.id());
        if can_spill {
            state.spillable_consumers -= 1;
        }
    }

    fn try_grow(&self, reservation: &Reservation, bytes: u64) -> Result<(), BudgetError> {
        if bytes == 0 {
            return Ok(());
        }
        let limit_bytes = self.limit_bytes;
        let id = reservation.consumer().id();
        let mut state = self.lock();
        let holding = state.holding(id);
        let (held_bytes, can_spill) = (holding.held_bytes, holding.can_spill);
        let left_bytes = limit_bytes.saturating_sub(state.reserved_bytes());
        let exhausted = |available_bytes, fair_share| BudgetError::Exhausted {
            consumer: reservation.consumer().name().to_owned(),
            requested_bytes: bytes,
            held_bytes,
            available_bytes,
            limit_bytes,
            fair_share,
            top_consumers: Vec::new(),
        };
        if can_spill {
            // Registered spillable, so at least one spillable consumer.
            let share_bytes = state
                .share_bytes(limit_bytes)
                .expect("a registered spillable consumer counts itself");
            let share_left_bytes = share_bytes.saturating_sub(held_bytes);
            if bytes > share_left_bytes {
                return Err(exhausted(
                    share_left_bytes.min(left_bytes),
                    Some(FairShare {
                        share_bytes,
                        spillable_consumers: state.spillable_consumers,
                        unspillable_bytes: state.unspillable_bytes,
                    }),
                ));
            }
        }
        if bytes > left_bytes {
            return Err(exhausted(left_bytes, None));
        }
        state.add(id, bytes);
        Ok(())
    }

    fn grow(&self, reservation: &Reservation, bytes: u64) {
        self.lock().add(reservation.consumer().id(), bytes);
    }

    fn shrink(&self, reservation: &Reservation, bytes: u64) {
        let mut state = self.lock();
        let holding = state.holding(reservation.consumer().id());
        holding.held_bytes = sub_bytes(holding.held_bytes, bytes, "FairPool consumer");
        let can_spill = holding.can_spill;
        if can_spill {
            state.spillable_bytes -= bytes;
        } else {
            state.unspillable_bytes -= bytes;
        }
    }

    fn reserved(&self) -> u64 {
        self.lock().reserved_bytes()
    }

    fn limit(&self) -> Option<u64> {
        Some(self.limit_bytes)
    }

    /// Per-kind totals equal the sums of the registered consumers' holdings,
    /// and the spillable count matches.
    fn check_invariants(&self) {
        let state = self.lock();
        let (mut unspillable_bytes, mut spillable_bytes, mut spillable_consumers) =
            (0u64, 0u64, 0u64);
        for holding in state.holdings.values() {
            if holding.can_spill {
                spillable_bytes += holding.held_bytes;
                spillable_consumers += 1;
            } else {
                unspillable_bytes += holding.held_bytes;
            }
        }
        assert_eq!(
            (
                state.unspillable_bytes,
                state.spillable_bytes,
                state.spillable_consumers
            ),
            (unspillable_bytes, spillable_bytes, spillable_consumers),
            "FairPool totals (unspillable bytes, spillable bytes, spillable consumers) disagree \
             with the {} registered consumers' holdings",
            state.holdings.len()
        );
    }
}
