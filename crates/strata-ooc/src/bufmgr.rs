//! The buffer manager: chunk buffers from `strata-pool` under a byte
//! capacity, pinned while in use, evicted by an [`EvictionPolicy`] when
//! room is needed, loaded on a miss (or ahead of use by a prefetcher), and
//! spilled to a [`SpillTarget`] when they cannot be re-read from a source.
//!
//! # Accounting
//!
//! Every buffer is a [`PoolBox`] charged to the manager's [`Reservation`],
//! so the budget pool sees every byte. On top of that the manager keeps its
//! own capacity: at every instant
//!
//! `held_bytes == sum(entry.block_bytes for every entry, loading or ready)
//! + spill_surplus_bytes <= capacity_bytes`
//!
//! where an entry's block bytes are the pool's real block size (its size
//! class, or the request rounded to a page). Room is made *before* a buffer
//! is allocated, by evicting unpinned ready entries in the policy's order; a
//! pinned or loading entry is never evicted. When even evicting every
//! unpinned ready entry would not make room, the request fails with
//! [`OocError::CacheFull`] *before* anything is evicted, naming the bytes
//! pinned, so a caller that pins more than the capacity learns why.
//!
//! An evicted intermediate's buffer lives until it is on the spill target.
//! Its bytes stay in `held_bytes` until then: they go toward the room the
//! evicting thread claims (that thread allocates only after spilling), and
//! whatever exceeds that claim is `spill_surplus_bytes`, released once the
//! spill is done. So the pool never holds more than the capacity, even
//! while another thread claims room during a spill.
//!
//! # Concurrency
//!
//! One mutex guards the map, the policy and the counters; loads (I/O) run
//! outside it. A thread that needs a chunk another thread is loading waits
//! on a condition variable (counted as stall time). Spilling an evicted
//! intermediate is done by the thread that needed the room, outside the
//! lock, before that thread's own load (the spilled bytes are freed only
//! once they are on the spill target). While it is being spilled a chunk is
//! neither resident nor on the spill target: a pin of it waits like a pin
//! of a loading chunk, and `discard` leaves it alone (returns `false`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use strata_pool::budget::Reservation;
use strata_pool::size_class::{class_for, class_size_bytes};
use strata_pool::{HybridPool, PoolBox, SAMPLE_PAGE_BLOCK_BYTES_MAX};

pub use crate::error::OocError;
use crate::policy::{ChunkKey, EvictionPolicy};

/// Alignment of every chunk buffer: a cache line, and enough for any
/// element type.
pub const CHUNK_ALIGN_BYTES: u64 = 64;
/// How long a pin waits between looks at read-ahead loads and spills in
/// flight when they hold the room it needs (they also signal when done).
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_millis(1);
/// Page granule the pool rounds large blocks to (mirrors the pool's rule,
/// checked against the real block size after each allocation).
const LARGE_GRANULE_BYTES: u64 = 4096;

/// Bytes the engine asks the pool for to hold `len_bytes`: at least one more
/// than the largest block the pool's profiler may place on a page of its
/// own, so a sampled buffer never takes a whole sample page for a few
/// bytes. (A sampled buffer is placed like a large block: its request
/// rounded to a page, which exceeds the size class when the class is not
/// a multiple of a page; the buffer manager claims room for that.)
pub fn pool_request_bytes(len_bytes: u64) -> u64 {
    len_bytes.max(SAMPLE_PAGE_BLOCK_BYTES_MAX + 1)
}

/// The pool block (what the budget is charged) behind a buffer of
/// `len_bytes` taken by the engine: the size class of
/// [`pool_request_bytes`], or that rounded to a page for large blocks.
pub fn pool_block_bytes(len_bytes: u64) -> u64 {
    let request = pool_request_bytes(len_bytes);
    match class_for(request, CHUNK_ALIGN_BYTES) {
        Some(class) => class_size_bytes(class),
        None => request.next_multiple_of(LARGE_GRANULE_BYTES),
    }
}

/// Reads chunks that can be read again at any time (source arrays).
pub trait ChunkLoader: Sync {
    /// Bytes of chunk `key` as the manager holds it.
    fn chunk_bytes(&self, key: ChunkKey) -> Result<u64, OocError>;
    /// Fills `out` (exactly [`ChunkLoader::chunk_bytes`] long) with chunk `key`.
    fn load(&self, key: ChunkKey, out: &mut [u8]) -> Result<(), OocError>;
}

/// Where intermediates that cannot be re-read go when evicted.
pub trait SpillTarget: Sync {
    /// Stores `bytes` for `key`; returns a handle to read them back.
    fn spill(&self, key: ChunkKey, bytes: &[u8]) -> Result<SpillHandle, OocError>;
    /// Reads the bytes spilled under `handle` into `out` (exactly as long),
    /// verified.
    fn reload(&self, key: ChunkKey, handle: SpillHandle, out: &mut [u8]) -> Result<(), OocError>;
    /// Forgets `handle` (the chunk is no longer needed).
    fn release(&self, key: ChunkKey, handle: SpillHandle) -> Result<(), OocError>;
}

/// A spilled chunk's location on its [`SpillTarget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpillHandle {
    /// First block.
    pub start: u64,
    /// Blocks.
    pub len: u64,
    /// Bytes of the chunk.
    pub bytes: u64,
}

/// Counters of a manager; see [`BufferManager::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Pins served from a resident chunk.
    pub hits: u64,
    /// Pins that had to load the chunk (or wait for a prefetch in flight).
    pub misses: u64,
    /// Chunks evicted to make room.
    pub evictions: u64,
    /// Bytes read from sources.
    pub source_read_bytes: u64,
    /// Bytes written to the spill target.
    pub spilled_bytes: u64,
    /// Bytes read back from the spill target.
    pub reloaded_bytes: u64,
    /// Chunks loaded by [`BufferManager::prefetch`].
    pub prefetches: u64,
    /// Prefetched chunks pinned before being evicted.
    pub prefetch_hits: u64,
    /// Prefetched chunks evicted or dropped without a pin.
    pub prefetch_wasted: u64,
    /// Highest bytes pinned at once.
    pub peak_pinned_bytes: u64,
    /// Highest bytes held at once.
    pub peak_held_bytes: u64,
    /// Time pins waited for I/O (their own load or another thread's).
    pub stall_ns: u64,
}

/// A resident (or loading) chunk.
struct Entry<'p> {
    /// `None` while loading.
    data: Option<Arc<PoolBox<'p>>>,
    /// Pins held.
    pins: u32,
    /// Bytes the pool block takes (what `held_bytes` counts).
    block_bytes: u64,
    /// Bytes of the chunk.
    len_bytes: u64,
    /// Cannot be re-read from a source: spill before dropping.
    intermediate: bool,
    /// Loaded by a prefetch and not pinned since.
    prefetched: bool,
}

struct State<'p> {
    entries: HashMap<ChunkKey, Entry<'p>>,
    spilled: HashMap<ChunkKey, SpillHandle>,
    /// Evicted intermediates being written to the spill target.
    spilling: HashSet<ChunkKey>,
    policy: Box<dyn EvictionPolicy + 'p>,
    held_bytes: u64,
    /// Bytes of buffers being spilled beyond the room their evicting
    /// threads claimed (see the module documentation).
    spill_surplus_bytes: u64,
    pinned_bytes: u64,
    stats: CacheStats,
}

/// See the module documentation.
pub struct BufferManager<'p> {
    pool: &'p HybridPool,
    reservation: &'p Reservation,
    loader: &'p dyn ChunkLoader,
    spill: Option<&'p dyn SpillTarget>,
    capacity_bytes: u64,
    state: Mutex<State<'p>>,
    loaded: Condvar,
}

/// A pinned chunk; unpinned on drop.
pub struct Pinned<'m, 'p> {
    manager: &'m BufferManager<'p>,
    key: ChunkKey,
    /// `None` only inside `drop`, which lets go of it before unpinning so
    /// an eviction right after the unpin frees the block at once.
    data: Option<Arc<PoolBox<'p>>>,
    len_bytes: usize,
}

impl Pinned<'_, '_> {
    /// The chunk's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self
            .data
            .as_ref()
            .expect("held until drop")
            .as_bytes()
            .expect("a ready chunk buffer is initialised")[..self.len_bytes]
    }

    /// The chunk's key.
    pub fn key(&self) -> ChunkKey {
        self.key
    }
}

impl Drop for Pinned<'_, '_> {
    fn drop(&mut self) {
        // The entry holds its own reference while pinned.
        drop(self.data.take());
        let mut state = self.manager.lock();
        let entry = state
            .entries
            .get_mut(&self.key)
            .unwrap_or_else(|| panic!("pinned chunk {} is not resident", self.key));
        assert!(
            entry.pins > 0,
            "chunk {} unpinned more than pinned",
            self.key
        );
        entry.pins -= 1;
        if entry.pins == 0 {
            let bytes = entry.block_bytes;
            state.pinned_bytes -= bytes;
        }
    }
}

/// A finished load: the handle (for a pinned load) and the chunk's bytes.
type Loaded<'p> = (Option<Arc<PoolBox<'p>>>, usize);

/// What [`BufferManager::pin_or_load`] found under the lock.
enum Found<'p> {
    Ready(Arc<PoolBox<'p>>, usize),
    Loading,
    Absent,
}

impl<'p> BufferManager<'p> {
    /// A manager holding at most `capacity_bytes` of chunk buffers from
    /// `pool`, charged to `reservation`, ordered by `policy`.
    pub fn new(
        pool: &'p HybridPool,
        reservation: &'p Reservation,
        loader: &'p dyn ChunkLoader,
        spill: Option<&'p dyn SpillTarget>,
        policy: Box<dyn EvictionPolicy + 'p>,
        capacity_bytes: u64,
    ) -> Self {
        BufferManager {
            pool,
            reservation,
            loader,
            spill,
            capacity_bytes,
            state: Mutex::new(State {
                entries: HashMap::new(),
                spilled: HashMap::new(),
                spilling: HashSet::new(),
                policy,
                held_bytes: 0,
                spill_surplus_bytes: 0,
                pinned_bytes: 0,
                stats: CacheStats::default(),
            }),
            loaded: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<'p>> {
        // A panic while holding the lock leaves counters that may be off;
        // the invariants check catches that, so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// Bytes held now (resident and loading entries).
    pub fn held_bytes(&self) -> u64 {
        self.lock().held_bytes
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.lock().policy.name()
    }

    /// Pins chunk `key`, loading it (from its source or the spill target)
    /// if it is not resident. The chunk stays resident until the returned
    /// guard drops.
    pub fn pin(&self, key: ChunkKey) -> Result<Pinned<'_, 'p>, OocError> {
        let started = Instant::now();
        let mut state = self.lock();
        let mut waited = false;
        loop {
            match Self::find(&mut state, key) {
                Found::Ready(data, len_bytes) => {
                    let entry = state.entries.get_mut(&key).expect("found");
                    if entry.pins == 0 {
                        let bytes = entry.block_bytes;
                        state.pinned_bytes += bytes;
                    }
                    let entry = state.entries.get_mut(&key).expect("found");
                    entry.pins += 1;
                    let prefetched = std::mem::take(&mut entry.prefetched);
                    if waited {
                        state.stats.misses += 1;
                        state.stats.stall_ns += elapsed_ns(started);
                    } else {
                        state.stats.hits += 1;
                    }
                    if prefetched {
                        state.stats.prefetch_hits += 1;
                    }
                    state.stats.peak_pinned_bytes =
                        state.stats.peak_pinned_bytes.max(state.pinned_bytes);
                    state
                        .policy
                        .on_hit(key)
                        .unwrap_or_else(|e| panic!("policy out of step: {e}"));
                    return Ok(Pinned {
                        manager: self,
                        key,
                        data: Some(data),
                        len_bytes,
                    });
                }
                Found::Loading => {
                    waited = true;
                    state = self.loaded.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                Found::Absent => {
                    drop(state);
                    if let Some((data, len_bytes)) = self.load(key, 1)? {
                        let mut state = self.lock();
                        state.stats.misses += 1;
                        state.stats.stall_ns += elapsed_ns(started);
                        return Ok(Pinned {
                            manager: self,
                            key,
                            data: Some(data.expect("a pinned load returns its handle")),
                            len_bytes,
                        });
                    }
                    // Raced with another loader: wait for it like any pin.
                    state = self.lock();
                }
            }
        }
    }

    /// Loads chunk `key` ahead of use without pinning it, if it is neither
    /// resident nor loading and room can be made. Returns whether it was
    /// loaded; `Ok(false)` when it was there already or the cache is full
    /// of pinned chunks (back-pressure: the prefetcher should wait).
    pub fn prefetch(&self, key: ChunkKey) -> Result<bool, OocError> {
        {
            let mut state = self.lock();
            if !matches!(Self::find(&mut state, key), Found::Absent) {
                return Ok(false);
            }
        }
        match self.load(key, 0) {
            Ok(None) => Ok(false),
            Ok(Some(_)) => {
                self.lock().stats.prefetches += 1;
                Ok(true)
            }
            Err(OocError::CacheFull { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Hands the manager an intermediate chunk it cannot re-read: resident
    /// and unpinned, spilled when evicted. `bytes` is copied into a pool
    /// buffer.
    pub fn insert_intermediate(&self, key: ChunkKey, bytes: &[u8]) -> Result<(), OocError> {
        let Some((mut data, block_bytes)) =
            self.allocate_room(key, bytes.len() as u64, 0, true, None, false)?
        else {
            panic!("intermediate {key} inserted twice (resident, being spilled or spilled: discard it first)");
        };
        data.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        self.publish(key, data, block_bytes, false);
        Ok(())
    }

    /// Forgets chunk `key` wherever it is (resident or spilled), e.g. an
    /// intermediate that no later step reads. A pinned chunk stays until
    /// unpinned: returns `false` then.
    pub fn discard(&self, key: ChunkKey) -> Result<bool, OocError> {
        let mut state = self.lock();
        if state.spilling.contains(&key) {
            return Ok(false);
        }
        if let Some(entry) = state.entries.get(&key) {
            if entry.pins > 0 || entry.data.is_none() {
                return Ok(false);
            }
            let entry = state.entries.remove(&key).expect("present");
            state.held_bytes -= entry.block_bytes;
            if entry.prefetched {
                state.stats.prefetch_wasted += 1;
            }
            state
                .policy
                .on_remove(key)
                .unwrap_or_else(|e| panic!("policy out of step: {e}"));
        }
        let spilled = state.spilled.remove(&key);
        drop(state);
        if let (Some(handle), Some(spill)) = (spilled, self.spill) {
            spill.release(key, handle)?;
        }
        Ok(true)
    }

    fn find(state: &mut State<'p>, key: ChunkKey) -> Found<'p> {
        match state.entries.get(&key) {
            Some(Entry {
                data: Some(data),
                len_bytes,
                ..
            }) => Found::Ready(Arc::clone(data), *len_bytes as usize),
            Some(_) => Found::Loading,
            None if state.spilling.contains(&key) => Found::Loading,
            None => Found::Absent,
        }
    }

    /// The most the pool may take for a buffer of `len_bytes`: its block
    /// ([`pool_block_bytes`]), or, if the profiler samples it, the request
    /// rounded to a page (a sampled block too large for a sample page is
    /// placed like a large block). Room for this much is claimed before the
    /// allocation, so the budget never sees more than the capacity; the
    /// claim shrinks to the real block once it is known.
    fn block_bytes_for(len_bytes: u64) -> u64 {
        pool_block_bytes(len_bytes)
            .max(pool_request_bytes(len_bytes).next_multiple_of(LARGE_GRANULE_BYTES))
    }

    /// Makes room for and allocates a buffer for `key` (registering a
    /// loading entry with `pins`), evicting as needed. `None` if another
    /// thread got there first, or if the chunk's spill state is no longer
    /// `expected_spill` (it was spilled or discarded since the caller
    /// looked): the caller looks again.
    fn allocate_room(
        &self,
        key: ChunkKey,
        len_bytes: u64,
        pins: u32,
        intermediate: bool,
        expected_spill: Option<SpillHandle>,
        prefetch: bool,
    ) -> Result<Option<(PoolBox<'p>, u64)>, OocError> {
        let block_bytes = Self::block_bytes_for(len_bytes);
        let mut to_spill = Vec::new();
        let surplus_bytes = {
            let mut state = self.lock();
            // Nothing is evicted unless all of the room can be made. A pin
            // that finds the room held by read-ahead loads or spills in
            // flight waits for them (they become evictable or free their
            // room) instead of failing; a prefetch never waits.
            let surplus_bytes = loop {
                if state.entries.contains_key(&key)
                    || state.spilling.contains(&key)
                    || state.spilled.get(&key).copied() != expected_spill
                {
                    return Ok(None);
                }
                if prefetch && !self.make_room_for_prefetch(&mut state, key, block_bytes) {
                    return Err(OocError::CacheFull {
                        key,
                        needed_bytes: block_bytes,
                        capacity_bytes: self.capacity_bytes,
                        pinned_bytes: state.pinned_bytes,
                    });
                }
                match self.claim_room(&mut state, key, block_bytes, true, &mut to_spill) {
                    Ok(surplus_bytes) => break surplus_bytes,
                    Err(OocError::CacheFull { .. })
                        if pins > 0
                            && (!state.spilling.is_empty()
                                || state
                                    .entries
                                    .values()
                                    .any(|e| e.pins == 0 && e.data.is_none())) =>
                    {
                        state = self
                            .loaded
                            .wait_timeout(state, IN_FLIGHT_WAIT)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    Err(error) => return Err(error),
                }
            };
            if pins > 0 {
                state.pinned_bytes += block_bytes;
                state.stats.peak_pinned_bytes =
                    state.stats.peak_pinned_bytes.max(state.pinned_bytes);
            }
            state.entries.insert(
                key,
                Entry {
                    data: None,
                    pins,
                    block_bytes,
                    len_bytes,
                    intermediate,
                    prefetched: false,
                },
            );
            surplus_bytes
        };
        let result = self.spill_evicted(to_spill, surplus_bytes).and_then(|()| {
            self.pool
                .alloc_charged(
                    pool_request_bytes(len_bytes),
                    CHUNK_ALIGN_BYTES,
                    self.reservation,
                )
                .map_err(|source| OocError::Pool { key, source })
        });
        let block = match result {
            Ok(block) => block,
            Err(error) => {
                self.abandon(key);
                return Err(error);
            }
        };
        // The claim covered the largest block the pool may hand out; account
        // for the real size (usually smaller: the block was not sampled),
        // evicting more should a pool ever exceed the claim.
        let real_bytes = block.block_bytes();
        if real_bytes != block_bytes {
            let mut to_spill = Vec::new();
            let grown = {
                let mut state = self.lock();
                // The block exists already, so evicted intermediates (alive
                // until spilled) cannot pay for the growth.
                let claimed = self.claim_room(
                    &mut state,
                    key,
                    real_bytes.saturating_sub(block_bytes),
                    false,
                    &mut to_spill,
                );
                if claimed.is_ok() {
                    let shrink_bytes = block_bytes.saturating_sub(real_bytes);
                    state.held_bytes -= shrink_bytes;
                    let entry = state.entries.get_mut(&key).expect("loading entry");
                    entry.block_bytes = real_bytes;
                    if pins > 0 {
                        state.pinned_bytes = state.pinned_bytes - block_bytes + real_bytes;
                        state.stats.peak_pinned_bytes =
                            state.stats.peak_pinned_bytes.max(state.pinned_bytes);
                    }
                }
                claimed
            };
            if let Err(error) = grown.and_then(|surplus| self.spill_evicted(to_spill, surplus)) {
                drop(block);
                self.abandon(key);
                return Err(error);
            }
        }
        Ok(Some((block, real_bytes)))
    }

    /// Makes room for `key`, read ahead of its use, by evicting only what the
    /// policy says is worth less than `key` (see
    /// [`EvictionPolicy::victim_for_prefetch`]) and only clean chunks
    /// (intermediates not yet spilled stay). Returns whether `bytes` fit.
    fn make_room_for_prefetch(&self, state: &mut State<'p>, key: ChunkKey, bytes: u64) -> bool {
        while state.held_bytes + bytes > self.capacity_bytes {
            let State {
                entries,
                policy,
                spilled,
                ..
            } = &mut *state;
            let victim = policy.victim_for_prefetch(key, &mut |k| {
                entries.get(&k).is_some_and(|e| {
                    e.pins == 0 && e.data.is_some() && (!e.intermediate || spilled.contains_key(&k))
                })
            });
            let Some(victim) = victim else {
                return false;
            };
            let entry = state.entries.remove(&victim).expect("victims are resident");
            state.held_bytes -= entry.block_bytes;
            state.stats.evictions += 1;
            if entry.prefetched {
                state.stats.prefetch_wasted += 1;
            }
        }
        true
    }

    /// Evicts (see [`make_room`](Self::make_room)) until `extra_bytes` more
    /// fit the capacity and adds them to `held_bytes`. Returns the surplus
    /// (already in `held_bytes`) to release once `to_spill` is spilled.
    fn claim_room(
        &self,
        state: &mut State<'p>,
        key: ChunkKey,
        extra_bytes: u64,
        credit_spills: bool,
        to_spill: &mut Vec<(ChunkKey, Entry<'p>)>,
    ) -> Result<u64, OocError> {
        let claimed_bytes = self.make_room(state, key, extra_bytes, credit_spills, to_spill)?;
        let spill_bytes: u64 = to_spill.iter().map(|(_, e)| e.block_bytes).sum();
        // What the evicted intermediates paid toward the claim.
        let credited_bytes = extra_bytes - claimed_bytes;
        let surplus_bytes = spill_bytes - credited_bytes;
        state.held_bytes += claimed_bytes;
        state.spill_surplus_bytes += surplus_bytes;
        state.stats.peak_held_bytes = state.stats.peak_held_bytes.max(state.held_bytes);
        Ok(surplus_bytes)
    }

    /// Evicts unpinned ready entries in the policy's order until
    /// `extra_bytes` more fit the capacity; returns the bytes still to add
    /// to `held_bytes` for them. A clean victim's bytes leave `held_bytes`
    /// at once. An intermediate victim not yet on the spill target goes to
    /// `to_spill` (spilled by the caller, outside the lock) and its bytes
    /// stay held until then; with `credit_spills` (the caller allocates only
    /// after spilling) they count toward `extra_bytes`.
    ///
    /// Refuses with [`OocError::CacheFull`] before evicting anything when
    /// evicting every candidate would not make the room, so a refusal
    /// changes nothing (and loses no intermediate).
    fn make_room(
        &self,
        state: &mut State<'p>,
        key: ChunkKey,
        extra_bytes: u64,
        credit_spills: bool,
        to_spill: &mut Vec<(ChunkKey, Entry<'p>)>,
    ) -> Result<u64, OocError> {
        if state.held_bytes + extra_bytes <= self.capacity_bytes {
            return Ok(extra_bytes);
        }
        let evictable_bytes: u64 = state
            .entries
            .iter()
            .filter(|(k, e)| {
                e.pins == 0
                    && e.data.is_some()
                    && (credit_spills || !e.intermediate || state.spilled.contains_key(k))
            })
            .map(|(_, e)| e.block_bytes)
            .sum();
        let unevictable_bytes = state.held_bytes - evictable_bytes;
        if unevictable_bytes + extra_bytes > self.capacity_bytes {
            return Err(OocError::CacheFull {
                key,
                needed_bytes: extra_bytes,
                capacity_bytes: self.capacity_bytes,
                pinned_bytes: unevictable_bytes,
            });
        }
        let mut remaining_bytes = extra_bytes;
        while state.held_bytes + remaining_bytes > self.capacity_bytes {
            let State {
                entries, policy, ..
            } = &mut *state;
            let victim = policy.victim(&mut |k| {
                entries
                    .get(&k)
                    .is_some_and(|e| e.pins == 0 && e.data.is_some())
            });
            let victim = victim.unwrap_or_else(|| {
                panic!(
                    "{key}: no victim though {evictable_bytes} bytes were evictable; held {} + \
                     {remaining_bytes} > capacity {}",
                    state.held_bytes, self.capacity_bytes
                )
            });
            let entry = state.entries.remove(&victim).expect("victims are resident");
            state.stats.evictions += 1;
            if entry.prefetched {
                state.stats.prefetch_wasted += 1;
            }
            // An intermediate already on the spill target (reloaded, never
            // changed since) is just dropped.
            if entry.intermediate && !state.spilled.contains_key(&victim) {
                if credit_spills {
                    remaining_bytes = remaining_bytes.saturating_sub(entry.block_bytes);
                }
                state.spilling.insert(victim);
                to_spill.push((victim, entry));
            } else {
                state.held_bytes -= entry.block_bytes;
            }
        }
        Ok(remaining_bytes)
    }

    /// Writes evicted intermediates to the spill target; their buffers are
    /// freed as each is written, then `surplus_bytes` leave `held_bytes`.
    /// On a failure the chunks not yet written are lost: a later pin of
    /// one goes to the loader (which does not know it).
    fn spill_evicted(
        &self,
        evicted: Vec<(ChunkKey, Entry<'p>)>,
        surplus_bytes: u64,
    ) -> Result<(), OocError> {
        let mut outcome = Ok(());
        for (key, entry) in evicted {
            if outcome.is_ok() {
                outcome = self.spill_one(key, &entry);
            }
            // The buffer goes before the chunk shows as spilled or lost.
            drop(entry);
            let mut state = self.lock();
            state.spilling.remove(&key);
        }
        let mut state = self.lock();
        state.held_bytes -= surplus_bytes;
        state.spill_surplus_bytes -= surplus_bytes;
        drop(state);
        self.loaded.notify_all();
        outcome
    }

    fn spill_one(&self, key: ChunkKey, entry: &Entry<'p>) -> Result<(), OocError> {
        let spill = self.spill.ok_or(OocError::Spill {
            key,
            detail: "no spill target configured for intermediates".to_string(),
        })?;
        let data = entry.data.as_ref().expect("evicted entries are ready");
        let bytes =
            &data.as_bytes().expect("ready buffers are initialised")[..entry.len_bytes as usize];
        let handle = spill.spill(key, bytes)?;
        let mut state = self.lock();
        state.stats.spilled_bytes += entry.len_bytes;
        state.spilled.insert(key, handle);
        Ok(())
    }

    /// Removes a loading entry whose load failed and wakes waiters.
    fn abandon(&self, key: ChunkKey) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.remove(&key) {
            state.held_bytes -= entry.block_bytes;
            if entry.pins > 0 {
                state.pinned_bytes -= entry.block_bytes;
            }
        }
        drop(state);
        self.loaded.notify_all();
    }

    /// Marks `key` ready with `data` and tells the policy. Returns a second
    /// handle only for a pinned entry (its pin keeps it from eviction): an
    /// unpinned entry is evictable the moment the lock drops, and a stray
    /// handle would keep its block, and the budget it is charged to, alive
    /// after the eviction counted it gone.
    fn publish(
        &self,
        key: ChunkKey,
        data: PoolBox<'p>,
        block_bytes: u64,
        prefetched: bool,
    ) -> Option<Arc<PoolBox<'p>>> {
        let data = Arc::new(data);
        let mut state = self.lock();
        let entry = state
            .entries
            .get_mut(&key)
            .unwrap_or_else(|| panic!("loading entry for chunk {key} vanished"));
        assert_eq!(entry.block_bytes, block_bytes, "chunk {key}");
        let handle = (entry.pins > 0).then(|| Arc::clone(&data));
        entry.data = Some(data);
        entry.prefetched = prefetched;
        let inserted = if prefetched {
            state.policy.on_insert_ahead(key)
        } else {
            state.policy.on_insert(key)
        };
        inserted.unwrap_or_else(|e| panic!("policy out of step: {e}"));
        drop(state);
        self.loaded.notify_all();
        handle
    }

    /// Loads `key` from the spill target or its source, with `pins` pins
    /// (0: a prefetch); `None` if another thread registered it first. The
    /// handle is there only when `pins > 0` (see [`Self::publish`]).
    fn load(&self, key: ChunkKey, pins: u32) -> Result<Option<Loaded<'p>>, OocError> {
        let spilled = self.lock().spilled.get(&key).copied();
        let len_bytes = match spilled {
            Some(handle) => handle.bytes,
            None => self.loader.chunk_bytes(key)?,
        };
        let Some((mut block, block_bytes)) =
            self.allocate_room(key, len_bytes, pins, spilled.is_some(), spilled, pins == 0)?
        else {
            return Ok(None);
        };
        let out = &mut block.as_bytes_mut()[..len_bytes as usize];
        let filled = match (spilled, self.spill) {
            (Some(handle), Some(spill)) => spill.reload(key, handle, out),
            (Some(_), None) => Err(OocError::UnknownChunk { key }),
            (None, _) => self.loader.load(key, out),
        };
        if let Err(error) = filled {
            self.abandon(key);
            return Err(error);
        }
        {
            let mut state = self.lock();
            match spilled {
                Some(_) => state.stats.reloaded_bytes += len_bytes,
                None => state.stats.source_read_bytes += len_bytes,
            }
        }
        Ok(Some((
            self.publish(key, block, block_bytes, pins == 0),
            len_bytes as usize,
        )))
    }

    /// O(entries) check; panics with the values.
    pub fn check_invariants(&self) {
        let state = self.lock();
        state.policy.check_invariants();
        let held: u64 =
            state.entries.values().map(|e| e.block_bytes).sum::<u64>() + state.spill_surplus_bytes;
        let pinned: u64 = state
            .entries
            .values()
            .filter(|e| e.pins > 0)
            .map(|e| e.block_bytes)
            .sum();
        assert_eq!(
            state.held_bytes, held,
            "held bytes out of step with the entries (spill surplus {})",
            state.spill_surplus_bytes
        );
        assert_eq!(
            state.pinned_bytes, pinned,
            "pinned bytes out of step with the entries"
        );
        assert!(
            state.held_bytes <= self.capacity_bytes,
            "held {} > capacity {}",
            state.held_bytes,
            self.capacity_bytes
        );
        let ready = state.entries.values().filter(|e| e.data.is_some()).count();
        assert_eq!(
            state.policy.len(),
            ready,
            "policy tracks {} keys, {ready} entries are ready",
            state.policy.len()
        );
        for (key, entry) in &state.entries {
            if entry.data.is_some() {
                assert!(
                    state.policy.contains(*key),
                    "ready chunk {key} unknown to the policy"
                );
            }
            assert!(
                !state.spilled.contains_key(key) || entry.intermediate,
                "chunk {key} both spilled and resident as a source chunk"
            );
            assert!(
                !state.spilling.contains(key),
                "chunk {key} both resident and being spilled"
            );
        }
        for key in &state.spilling {
            assert!(
                !state.spilled.contains_key(key),
                "chunk {key} both spilled and being spilled"
            );
        }
    }
}

fn elapsed_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
