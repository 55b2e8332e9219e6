//! The memory budget: a [`MemoryPool`] hands out bytes to named consumers
//! through RAII [`Reservation`]s.
//!
//! A consumer ([`MemoryConsumer`]) registers with a pool and gets a
//! [`Reservation`]; it asks for bytes before it allocates them
//! ([`Reservation::try_grow`]), gives them back when it frees
//! ([`Reservation::shrink`]), and everything it still holds is returned when
//! the reservation drops. Pools:
//!
//! - [`UnboundedPool`]: counts, never refuses.
//! - [`GreedyPool`]: first come, first served up to a limit; lock-free.
//! - [`FairPool`]: unspillable consumers take first come, first served from
//!   the whole limit; each spillable consumer may hold at most its share of
//!   what the unspillable ones leave.
//! - [`TrackConsumersPool`]: wraps any pool, tracks current and peak bytes per
//!   consumer and names the largest consumers when a request fails.
//!
//! # Accounting
//!
//! At every instant, for every pool:
//!
//! - `sum(reservation.size() for its live reservations) <= pool.reserved()`,
//!   with equality whenever no reservation call is in flight. A reservation
//!   grows the pool before itself and shrinks itself before the pool.
//! - `pool.reserved() <= pool.limit()` on every pool on which only
//!   [`Reservation::try_grow`] is used to take memory. The infallible
//!   [`Reservation::grow`] (for memory a consumer already holds and must
//!   account for) may push `reserved()` past the limit;
//!   [`MemoryPool::overcommit_bytes`] reports by how much, and every
//!   `try_grow` fails until the pool is back under its limit.
//!
//! ```
//! use std::sync::Arc;
//! use strata_pool::budget::{BudgetError, GreedyPool, MemoryConsumer, MemoryPool, TrackConsumersPool};
//!
//! const MIB: u64 = 1 << 20;
//! let tracked = Arc::new(TrackConsumersPool::new(GreedyPool::new(512 * MIB), 2));
//! let pool: Arc<dyn MemoryPool> = tracked.clone();
//! let prefetch = MemoryConsumer::new("prefetch").with_can_spill(true).register(&pool);
//! let panels = MemoryConsumer::new("matmul-panels").register(&pool);
//! prefetch.try_grow(256 * MIB)?;
//! panels.try_grow(128 * MIB)?;
//! let refused = panels.try_grow(160 * MIB).unwrap_err();
//! assert_eq!(
//!     refused.to_string(),
//!     "failed to reserve 160.0 MiB for consumer 'matmul-panels' (holds 128.0 MiB): \
//!      128.0 MiB of the 512.0 MiB limit available; \
//!      top consumers: prefetch 256.0 MiB, matmul-panels 128.0 MiB"
//! );
//! assert_eq!(pool.reserved(), 384 * MIB); // the refusal changed nothing
//! drop(prefetch);
//! assert_eq!(pool.reserved(), 128 * MIB);
//! assert_eq!(tracked.peak_bytes(), 384 * MIB);
//! # Ok::<(), BudgetError>(())
//! ```

mod error;
mod fair;
mod track;

pub use error::{format_bytes, BudgetError, FairShare, BYTES_PER_KIB};
pub use fair::FairPool;
pub use track::{ConsumerUsage, TrackConsumersPool};

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A budget that reservations take bytes from.
///
/// Pools are driven by [`Reservation`]s: `register` when a consumer
/// registers, `try_grow`/`grow` before the reservation's size goes up,
/// `shrink` after it went down, `unregister` when it drops (after it was
/// freed). Calling these methods directly, outside a reservation, breaks the
/// accounting; pools panic (printing the values) when they catch it, such as
/// a shrink of more than they hold.
///
/// A pool must not rely on [`Reservation::size`] in `shrink` (the
/// reservation has already shrunk), and should not in `try_grow` under
/// concurrency (another thread may be growing the same reservation); pools
/// that need exact per-consumer figures keep them, keyed by [`ConsumerId`].
///
/// The accounting invariants are in the [module docs](self#accounting).
pub trait MemoryPool: Send + Sync + fmt::Debug {
    /// A consumer registered; it holds nothing yet.
    fn register(&self, _consumer: &ConsumerInfo) {}

    /// A consumer's reservation dropped; it was freed first, so it holds nothing.
    fn unregister(&self, _consumer: &ConsumerInfo) {}

    /// Takes `bytes` more for `reservation` if the pool's policy allows it;
    /// otherwise returns [`BudgetError::Exhausted`] and changes nothing.
    /// A request for 0 bytes always succeeds.
    fn try_grow(&self, reservation: &Reservation, bytes: u64) -> Result<(), BudgetError>;

    /// Takes `bytes` more for `reservation` unconditionally, even past the
    /// limit (see [`MemoryPool::overcommit_bytes`]).
    fn grow(&self, reservation: &Reservation, bytes: u64);

    /// Returns `bytes` that `reservation` held (it has already shrunk).
    fn shrink(&self, reservation: &Reservation, bytes: u64);

    /// Bytes currently reserved from the pool.
    fn reserved(&self) -> u64;

    /// The limit in bytes; `None` for an unbounded pool.
    fn limit(&self) -> Option<u64>;

    /// Bytes reserved beyond the limit (through [`MemoryPool::grow`]); 0 when
    /// within the limit or unbounded.
    fn overcommit_bytes(&self) -> u64 {
        self.limit()
            .map_or(0, |limit_bytes| self.reserved().saturating_sub(limit_bytes))
    }

    /// O(n) consistency check of the pool's own state; panics with the values
    /// on a violation. The default has nothing to check.
    fn check_invariants(&self) {}
}

/// A consumer's identity, unique per [`MemoryConsumer::new`] in the process,
/// so two consumers with the same name stay distinct.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsumerId(pub u64);

/// The next [`ConsumerId`] to hand out.
static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(0);

/// What a pool knows about a consumer: its id, name and whether it can spill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    id: ConsumerId,
    name: Arc<str>,
    can_spill: bool,
}

impl ConsumerInfo {
    /// The consumer's unique id.
    pub fn id(&self) -> ConsumerId {
        self.id
    }

    /// The consumer's name, as given to [`MemoryConsumer::new`]; not unique.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the consumer can release memory by spilling when refused.
    pub fn can_spill(&self) -> bool {
        self.can_spill
    }
}

/// A named consumer about to register with a pool.
///
/// ```
/// use std::sync::Arc;
/// use strata_pool::budget::{MemoryConsumer, MemoryPool, UnboundedPool};
///
/// let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedPool::new());
/// let a = MemoryConsumer::new("sort").with_can_spill(true).register(&pool);
/// let b = MemoryConsumer::new("sort").register(&pool);
/// assert_ne!(a.consumer().id(), b.consumer().id());
/// assert!(a.consumer().can_spill() && !b.consumer().can_spill());
/// ```
// Not `Clone`: the id is assigned here, and two registrations must not share it.
#[derive(Debug)]
pub struct MemoryConsumer {
    info: ConsumerInfo,
}

impl MemoryConsumer {
    /// A consumer that cannot spill, with a fresh [`ConsumerId`].
    pub fn new(name: impl Into<String>) -> MemoryConsumer {
        let id = ConsumerId(NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed));
        MemoryConsumer {
            info: ConsumerInfo {
                id,
                name: Arc::from(name.into()),
                can_spill: false,
            },
        }
    }

    /// Sets whether the consumer can spill (a [`FairPool`] limits spillable
    /// consumers to their share).
    pub fn with_can_spill(mut self, can_spill: bool) -> MemoryConsumer {
        self.info.can_spill = can_spill;
        self
    }

    /// The identity the pool will see.
    pub fn info(&self) -> &ConsumerInfo {
        &self.info
    }

    /// Registers with `pool` and returns an empty reservation.
    pub fn register(self, pool: &Arc<dyn MemoryPool>) -> Reservation {
        pool.register(&self.info);
        Reservation {
            consumer: self.info,
            pool: Arc::clone(pool),
            size_bytes: AtomicU64::new(0),
        }
    }
}

/// Bytes a consumer holds in a pool. Dropping it frees them and unregisters
/// the consumer.
///
/// All methods take `&self` and may be called from several threads at once
/// (the size is an atomic), so allocations made on many threads can be
/// charged to one reservation. Each call is atomic with respect to the
/// reservation's size; a refused call changes nothing.
pub struct Reservation {
    consumer: ConsumerInfo,
    pool: Arc<dyn MemoryPool>,
    size_bytes: AtomicU64,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the pool: its state can be large, and it is shared.
        f.debug_struct("Reservation")
            .field("consumer", &self.consumer)
            .field("size_bytes", &self.size())
            .finish()
    }
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn size(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    /// The consumer that holds this reservation.
    pub fn consumer(&self) -> &ConsumerInfo {
        &self.consumer
    }

    /// The pool the bytes come from.
    pub fn pool(&self) -> &Arc<dyn MemoryPool> {
        &self.pool
    }

    /// Takes `bytes` more if the pool allows it; otherwise returns the pool's
    /// [`BudgetError::Exhausted`] and changes nothing.
    pub fn try_grow(&self, bytes: u64) -> Result<(), BudgetError> {
        if bytes == 0 {
            return Ok(());
        }
        self.pool.try_grow(self, bytes)?;
        self.add_to_size(bytes);
        Ok(())
    }

    /// Takes `bytes` more unconditionally, for memory the consumer already
    /// holds; may push the pool past its limit
    /// ([`MemoryPool::overcommit_bytes`]).
    pub fn grow(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.pool.grow(self, bytes);
        self.add_to_size(bytes);
    }

    /// Returns `bytes` to the pool; [`BudgetError::ShrinkTooLarge`] (and no
    /// change) if the reservation holds fewer.
    pub fn shrink(&self, bytes: u64) -> Result<(), BudgetError> {
        if bytes == 0 {
            return Ok(());
        }
        self.size_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held_bytes| {
                held_bytes.checked_sub(bytes)
            })
            .map_err(|held_bytes| BudgetError::ShrinkTooLarge {
                consumer: self.consumer.name().to_owned(),
                shrink_bytes: bytes,
                held_bytes,
            })?;
        self.pool.shrink(self, bytes);
        Ok(())
    }

    /// Grows or shrinks to exactly `new_size_bytes`. Growing goes through
    /// [`MemoryPool::try_grow`] and may be refused (nothing changes). Atomic
    /// with respect to concurrent calls on this reservation: the size moves
    /// from one value straight to `new_size_bytes`.
    pub fn try_resize(&self, new_size_bytes: u64) -> Result<(), BudgetError> {
        loop {
            let held_bytes = self.size();
            if new_size_bytes > held_bytes {
                let delta_bytes = new_size_bytes - held_bytes;
                self.pool.try_grow(self, delta_bytes)?;
                if self.swap_size(held_bytes, new_size_bytes) {
                    return Ok(());
                }
                // The size moved under us: give the bytes back and start over.
                self.pool.shrink(self, delta_bytes);
            } else if self.swap_size(held_bytes, new_size_bytes) {
                self.pool.shrink(self, held_bytes - new_size_bytes);
                return Ok(());
            }
        }
    }

    /// Returns everything this reservation holds to the pool; returns the
    /// bytes released.
    pub fn free(&self) -> u64 {
        let bytes = self.size_bytes.swap(0, Ordering::AcqRel);
        if bytes > 0 {
            self.pool.shrink(self, bytes);
        }
        bytes
    }

    /// Adds `bytes` the pool has already granted.
    fn add_to_size(&self, bytes: u64) {
        // The pool holds at least the sum of its reservations and its total
        // did not overflow, so this cannot.
        atomic_add_bytes(&self.size_bytes, bytes, "Reservation");
    }

    /// Sets the size from `expected_bytes` to `new_bytes` if it still is
    /// `expected_bytes`.
    fn swap_size(&self, expected_bytes: u64, new_bytes: u64) -> bool {
        self.size_bytes
            .compare_exchange(
                expected_bytes,
                new_bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.free();
        self.pool.unregister(&self.consumer);
    }
}

/// `total_bytes + bytes`, panicking (with the values) on overflow: a total
/// past `u64::MAX` bytes is an accounting bug, not a request to refuse.
fn add_bytes(total_bytes: u64, bytes: u64, owner: &str) -> u64 {
    total_bytes
        .checked_add(bytes)
        .unwrap_or_else(|| panic!("{owner}: reserved bytes overflow: {total_bytes} + {bytes}"))
}

/// `total_bytes - bytes`, panicking (with the values) when giving back more
/// than is held: an accounting bug.
fn sub_bytes(total_bytes: u64, bytes: u64, owner: &str) -> u64 {
    total_bytes.checked_sub(bytes).unwrap_or_else(|| {
        panic!("{owner}: shrink of {bytes} bytes exceeds the {total_bytes} bytes reserved")
    })
}

/// [`add_bytes`] on an atomic; the counter is unchanged if it panics.
fn atomic_add_bytes(counter: &AtomicU64, bytes: u64, owner: &str) {
    if let Err(total_bytes) =
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |total_bytes| {
            total_bytes.checked_add(bytes)
        })
    {
        add_bytes(total_bytes, bytes, owner);
    }
}

/// [`sub_bytes`] on an atomic; the counter is unchanged if it panics.
fn atomic_sub_bytes(counter: &AtomicU64, bytes: u64, owner: &str) {
    if let Err(total_bytes) =
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |total_bytes| {
            total_bytes.checked_sub(bytes)
        })
    {
        sub_bytes(total_bytes, bytes, owner);
    }
}

/// Counts reservations and never refuses one.
#[derive(Debug, Default)]
pub struct UnboundedPool {
    reserved_bytes: AtomicU64,
}

impl UnboundedPool {
    /// An empty pool.
    pub fn new() -> UnboundedPool {
        UnboundedPool::default()
    }
}

impl MemoryPool for UnboundedPool {
    fn try_grow(&self, reservation: &Reservation, bytes: u64) -> Result<(), BudgetError> {
        self.grow(reservation, bytes);
        Ok(())
    }

    fn grow(&self, _reservation: &Reservation, bytes: u64) {
        atomic_add_bytes(&self.reserved_bytes, bytes, "UnboundedPool");
    }

    fn shrink(&self, _reservation: &Reservation, bytes: u64) {
        atomic_sub_bytes(&self.reserved_bytes, bytes, "UnboundedPool");
    }

    fn reserved(&self) -> u64 {
        self.reserved_bytes.load(Ordering::Acquire)
    }

    fn limit(&self) -> Option<u64> {
        None
    }
}

/// First come, first served up to a limit: a request succeeds if it fits in
/// what is left. Lock-free (one compare-and-swap loop on the total).
#[derive(Debug)]
pub struct GreedyPool {
    limit_bytes: u64,
    reserved_bytes: AtomicU64,
}

impl GreedyPool {
    /// An empty pool that grants up to `limit_bytes` in total.
    pub fn new(limit_bytes: u64) -> GreedyPool {
        GreedyPool {
            limit_bytes,
            reserved_bytes: AtomicU64::new(0),
        }
    }
}

impl MemoryPool for GreedyPool {
    fn try_grow(&self, reservation: &Reservation, bytes: u64) -> Result<(), BudgetError> {
        let limit_bytes = self.limit_bytes;
        self.reserved_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved_bytes| {
                reserved_bytes
                    .checked_add(bytes)
                    .filter(|&after_bytes| after_bytes <= limit_bytes)
            })
            .map(|_| ())
            .map_err(|reserved_bytes| BudgetError::Exhausted {
                consumer: reservation.consumer().name().to_owned(),
                requested_bytes: bytes,
                held_bytes: reservation.size(),
                available_bytes: limit_bytes.saturating_sub(reserved_bytes),
                limit_bytes,
                fair_share: None,
                top_consumers: Vec::new(),
            })
    }

    fn grow(&self, _reservation: &Reservation, bytes: u64) {
        atomic_add_bytes(&self.reserved_bytes, bytes, "GreedyPool");
    }

    fn shrink(&self, _reservation: &Reservation, bytes: u64) {
        atomic_sub_bytes(&self.reserved_bytes, bytes, "GreedyPool");
    }

    fn reserved(&self) -> u64 {
        self.reserved_bytes.load(Ordering::Acquire)
    }

    fn limit(&self) -> Option<u64> {
        Some(self.limit_bytes)
    }
}
