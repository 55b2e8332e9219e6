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
//! `held_bytes == sum(entry.block_bytes for every entry, loading or ready) <= capacity_bytes`
//!
//! where an entry's block bytes are the pool's real block size (its size
//! class, or the request rounded to a page). Room is made *before* a buffer
//! is allocated, by evicting unpinned ready entries in the policy's order; a
//! pinned or loading entry is never evicted. When nothing more can be
//! evicted the request fails with [`OocError::CacheFull`], naming the bytes
//! pinned, so a caller that pins more than the capacity learns why.
//!
//! # Concurrency
//!
//! One mutex guards the map, the policy and the counters; loads (I/O) run
//! outside it. A thread that needs a chunk another thread is loading waits
//! on a condition variable (counted as stall time). Spilling an evicted
//! intermediate is done by the thread that needed the room, outside the
//! lock, before that thread's own load (the spilled bytes are freed only
//! once they are on the spill target).

use std::collections::HashMap;
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
/// Page granule the pool rounds large blocks to (mirrors the pool's rule,
/// checked against the real block size after each allocation).
const LARGE_GRANULE_BYTES: u64 = 4096;

/// Bytes the engine asks the pool for to hold `len_bytes`: at least one more
/// than the largest block the pool's profiler may place on a page of its
/// own, so a sampled buffer takes exactly its size class like any other and
/// the plan's byte counts hold whatever the sampler picks.
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
    policy: Box<dyn EvictionPolicy + 'p>,
    held_bytes: u64,
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
                policy,
                held_bytes: 0,
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
                            data: Some(data),
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
                let mut state = self.lock();
                state.stats.prefetches += 1;
                if let Some(entry) = state.entries.get_mut(&key) {
                    entry.prefetched = true;
                }
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
        let Some((mut data, block_bytes)) = self.allocate_room(key, bytes.len() as u64, 0, true)?
        else {
            panic!("intermediate chunk {key} inserted twice");
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
            None => Found::Absent,
        }
    }

    fn block_bytes_for(len_bytes: u64) -> u64 {
        pool_block_bytes(len_bytes)
    }

    /// Makes room for and allocates a buffer for `key` (registering a
    /// loading entry with `pins`), evicting as needed.
    fn allocate_room(
        &self,
        key: ChunkKey,
        len_bytes: u64,
        pins: u32,
        intermediate: bool,
    ) -> Result<Option<(PoolBox<'p>, u64)>, OocError> {
        let block_bytes = Self::block_bytes_for(len_bytes);
        let mut to_spill = Vec::new();
        {
            let mut state = self.lock();
            if state.entries.contains_key(&key) {
                // Another thread got there first.
                return Ok(None);
            }
            self.make_room(&mut state, key, block_bytes, &mut to_spill)?;
            // Claim the room before the lock drops.
            state.held_bytes += block_bytes;
            state.stats.peak_held_bytes = state.stats.peak_held_bytes.max(state.held_bytes);
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
        }
        let result = self.spill_evicted(to_spill).and_then(|()| {
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
        // The pool may hand out more than the size class (a sampled small
        // block takes a page): account for the real size, evicting more if
        // that overflows the capacity.
        let real_bytes = block.block_bytes();
        if real_bytes != block_bytes {
            let mut to_spill = Vec::new();
            let grown = {
                let mut state = self.lock();
                let entry = state.entries.get_mut(&key).expect("loading entry");
                entry.block_bytes = real_bytes;
                state.held_bytes = state.held_bytes - block_bytes + real_bytes;
                if pins > 0 {
                    state.pinned_bytes = state.pinned_bytes - block_bytes + real_bytes;
                }
                let made = self.make_room(&mut state, key, 0, &mut to_spill);
                state.stats.peak_held_bytes = state.stats.peak_held_bytes.max(state.held_bytes);
                state.stats.peak_pinned_bytes =
                    state.stats.peak_pinned_bytes.max(state.pinned_bytes);
                made
            };
            if let Err(error) = grown.and_then(|()| self.spill_evicted(to_spill)) {
                drop(block);
                self.abandon(key);
                return Err(error);
            }
        }
        Ok(Some((block, real_bytes)))
    }

    /// Evicts unpinned ready entries in the policy's order until
    /// `extra_bytes` more fit the capacity. Evicted intermediates not yet on
    /// the spill target go to `to_spill` (spilled by the caller, outside the
    /// lock).
    fn make_room(
        &self,
        state: &mut State<'p>,
        key: ChunkKey,
        extra_bytes: u64,
        to_spill: &mut Vec<(ChunkKey, Entry<'p>)>,
    ) -> Result<(), OocError> {
        while state.held_bytes + extra_bytes > self.capacity_bytes {
            let State {
                entries, policy, ..
            } = &mut *state;
            let victim = policy.victim(&mut |k| {
                entries
                    .get(&k)
                    .is_some_and(|e| e.pins == 0 && e.data.is_some())
            });
            let Some(victim) = victim else {
                return Err(OocError::CacheFull {
                    key,
                    needed_bytes: extra_bytes,
                    capacity_bytes: self.capacity_bytes,
                    pinned_bytes: state.pinned_bytes,
                });
            };
            let entry = state.entries.remove(&victim).expect("victims are resident");
            state.held_bytes -= entry.block_bytes;
            state.stats.evictions += 1;
            if entry.prefetched {
                state.stats.prefetch_wasted += 1;
            }
            // An intermediate already on the spill target (reloaded, never
            // changed since) is just dropped.
            if entry.intermediate && !state.spilled.contains_key(&victim) {
                to_spill.push((victim, entry));
            }
        }
        Ok(())
    }

    /// Writes evicted intermediates to the spill target; their buffers are
    /// freed when this returns.
    fn spill_evicted(&self, evicted: Vec<(ChunkKey, Entry<'p>)>) -> Result<(), OocError> {
        for (key, entry) in evicted {
            let spill = self.spill.ok_or(OocError::Spill {
                key,
                detail: "no spill target configured for intermediates".to_string(),
            })?;
            let data = entry.data.expect("evicted entries are ready");
            let bytes = &data.as_bytes().expect("ready buffers are initialised")
                [..entry.len_bytes as usize];
            let handle = spill.spill(key, bytes)?;
            let mut state = self.lock();
            state.stats.spilled_bytes += entry.len_bytes;
            state.spilled.insert(key, handle);
        }
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
        state
            .policy
            .on_insert(key)
            .unwrap_or_else(|e| panic!("policy out of step: {e}"));
        drop(state);
        self.loaded.notify_all();
        handle
    }

    /// Loads `key` from the spill target or its source, with `pins` pins;
    /// `None` if another thread registered it first.
    fn load(
        &self,
        key: ChunkKey,
        pins: u32,
    ) -> Result<Option<(Arc<PoolBox<'p>>, usize)>, OocError> {
        let spilled = self.lock().spilled.get(&key).copied();
        let len_bytes = match spilled {
            Some(handle) => handle.bytes,
            None => self.loader.chunk_bytes(key)?,
        };
        let Some((mut block, block_bytes)) =
            self.allocate_room(key, len_bytes, pins, spilled.is_some())?
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
            self.publish(key, block, block_bytes),
            len_bytes as usize,
        )))
    }

    /// O(entries) check; panics with the values.
    pub fn check_invariants(&self) {
        let state = self.lock();
        state.policy.check_invariants();
        let held: u64 = state.entries.values().map(|e| e.block_bytes).sum();
        let pinned: u64 = state
            .entries
            .values()
            .filter(|e| e.pins > 0)
            .map(|e| e.block_bytes)
            .sum();
        assert_eq!(
            state.held_bytes, held,
            "held bytes out of step with the entries"
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
        }
    }
}

fn elapsed_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
