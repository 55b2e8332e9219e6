//! Eviction policies for the buffer manager (pure logic: no I/O, no threads).
//!
//! The buffer manager keeps the bytes of resident chunks; a policy only
//! orders their keys. The manager tells the policy what happened to each
//! key ([`EvictionPolicy::on_insert`], [`EvictionPolicy::on_hit`],
//! [`EvictionPolicy::on_remove`]) and, when it needs room, asks for a
//! [`EvictionPolicy::victim`] among the keys it may drop (pinned chunks are
//! in use and are never chosen). Policies count entries, not bytes: the
//! manager asks for victims until its bytes fit.
//!
//! | policy | order | cost per call |
//! |---|---|---|
//! | [`LruPolicy`] | least recently used first | O(1), plus the pinned keys passed over |
//! | [`SievePolicy`] | FIFO with a visited bit and a moving hand (NSDI '24) | O(1) amortized, plus pinned keys passed over |
//! | [`S3FifoPolicy`] | small FIFO, main FIFO with 2-bit frequencies, ghost FIFO (SOSP '23) | O(1) amortized, plus pinned keys passed over |
//! | [`MinPolicy`] | farthest next scheduled use first (Belady's MIN), a fallback policy for the rest | O(log n), plus the fallback's cost |
//!
//! Contract violations (inserting a resident key, touching or removing a
//! key that is not resident) return a [`PolicyError`] and change nothing.
//!
//! ```
//! use strata_ooc::policy::{ChunkKey, EvictionPolicy, LruPolicy};
//!
//! let mut lru = LruPolicy::new();
//! for key in [1, 2, 3] {
//!     lru.on_insert(ChunkKey(key))?;
//! }
//! lru.on_hit(ChunkKey(1))?;
//! // Key 2 is the least recently used, but it is pinned: the next one goes.
//! assert_eq!(lru.victim(&mut |key| key != ChunkKey(2)), Some(ChunkKey(3)));
//! assert_eq!(lru.victim(&mut |_| true), Some(ChunkKey(2)));
//! assert_eq!(lru.len(), 1);
//! # Ok::<(), strata_ooc::policy::PolicyError>(())
//! ```

mod list;
mod lru;
mod min;
mod s3fifo;
mod sieve;
pub mod sim;
pub mod trace;

pub use lru::LruPolicy;
pub use min::MinPolicy;
pub use s3fifo::{
    S3FifoPolicy, S3FIFO_FREQ_MAX, S3FIFO_GHOST_PERCENT, S3FIFO_PROMOTE_FREQ_MIN,
    S3FIFO_SMALL_PERCENT,
};
pub use sieve::SievePolicy;

use std::fmt;

/// The identity of one chunk (a tile of an array, an intermediate...).
/// The buffer manager assigns the numbers; policies only compare and hash
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey(pub u64);

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chunk {}", self.0)
    }
}

/// Decides which resident chunk to evict.
///
/// Residency is the set of keys inserted and neither removed nor returned
/// by [`victim`](Self::victim). A refused call (an error) changes nothing.
pub trait EvictionPolicy: Send + fmt::Debug {
    /// `key` became resident (an access that missed).
    fn on_insert(&mut self, key: ChunkKey) -> Result<(), PolicyError>;

    /// A resident `key` was accessed.
    fn on_hit(&mut self, key: ChunkKey) -> Result<(), PolicyError>;

    /// The manager dropped a resident `key` for a reason of its own (freed,
    /// invalidated); this is not an eviction and leaves no history (no
    /// ghost entry).
    fn on_remove(&mut self, key: ChunkKey) -> Result<(), PolicyError>;

    /// Chooses a resident key for which `evictable` returns true, removes it
    /// from the residency and returns it; `None` when no resident key is
    /// evictable. `evictable` may be called several times for one key; a
    /// key it refuses (pinned) is never returned.
    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey>;

    /// `key` became resident ahead of its use (read ahead by a prefetcher):
    /// no access happened yet, so a policy that follows a schedule must not
    /// count one. Online policies treat it as an insert (the default).
    fn on_insert_ahead(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        self.on_insert(key)
    }

    /// Like [`victim`](Self::victim), to make room for `incoming`, which is
    /// being read ahead of its use: a policy that knows the future refuses
    /// (`None`) when every candidate is needed before `incoming`, since
    /// evicting it would cost a read to save one. Online policies cannot
    /// tell and take their usual victim (the default).
    fn victim_for_prefetch(
        &mut self,
        incoming: ChunkKey,
        evictable: &mut dyn FnMut(ChunkKey) -> bool,
    ) -> Option<ChunkKey> {
        let _ = incoming;
        self.victim(evictable)
    }

    /// Whether `key` is resident.
    fn contains(&self, key: ChunkKey) -> bool;

    /// Resident keys.
    fn len(&self) -> usize;

    /// Whether no key is resident.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short name for reports ("lru", "sieve", "s3-fifo", "min").
    fn name(&self) -> &'static str;

    /// Checks every internal invariant in O(n); panics with the values.
    fn check_invariants(&self);
}

/// A call that breaks the residency contract.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// `on_insert` of a key that is already resident.
    AlreadyResident {
        /// The key.
        key: ChunkKey,
        /// The policy's name.
        policy: &'static str,
        /// Resident keys at the time.
        resident_entries: usize,
    },
    /// `on_hit` or `on_remove` of a key that is not resident.
    NotResident {
        /// The key.
        key: ChunkKey,
        /// The policy's name.
        policy: &'static str,
        /// Resident keys at the time.
        resident_entries: usize,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::AlreadyResident {
                key,
                policy,
                resident_entries,
            } => write!(
                f,
                "{policy}: {key} is already resident (insert refused; {resident_entries} resident)"
            ),
            PolicyError::NotResident {
                key,
                policy,
                resident_entries,
            } => write!(
                f,
                "{policy}: {key} is not resident ({resident_entries} resident)"
            ),
        }
    }
}

impl std::error::Error for PolicyError {}
