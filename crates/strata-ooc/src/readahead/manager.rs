//! [`ReadAheadManager`]: pins chunks for a reader without a schedule and,
//! on each pin, asks the [`ReadAhead`] detector what to read ahead; a
//! background thread (scoped, like the scheduled prefetchers of
//! [`crate::contract`] and [`crate::stream`]) loads those chunks with
//! [`BufferManager::prefetch`].
//!
//! The reader never waits for the read-ahead: suggested keys go to a
//! bounded queue ([`READ_QUEUE_CHUNKS_MAX`]; keys that do not fit are
//! dropped and counted), and a queued key the reader pins first is taken
//! off the queue (the reader loads it). Keys already resident or in
//! flight cost the thread one look ([`BufferManager::prefetch`] skips
//! them). Keys the loader does not know (past the end of an array) are
//! never queued. One race is left: a key the thread has taken off the
//! queue, that the reader then pins, loads itself and gets evicted again
//! (the reader moved a cache's worth on) before the thread's load starts,
//! is loaded a second time (and counts as unused). Only a thread that is
//! descheduled for that long sees it.
//!
//! The window is capped by a byte budget the caller gives (a share of the
//! cache: half of it, [`PREFETCH_SHARE_PERCENT`], as the scheduled
//! prefetchers use), split evenly among the streams reading ahead.
//!
//! # Used and wasted
//!
//! Whether a pin found a chunk the read-ahead loaded (used) or had to
//! wait (stalled) is read off the manager's counters around the pin
//! ([`CacheStats::prefetch_hits`], [`CacheStats::misses`]), which the
//! background thread never moves: the counts are exact when this reader
//! is the only thread pinning from the manager. A chunk the thread loaded
//! that the reader then had to load again was evicted unused: that is
//! waste, reported to the detector ([`ReadAhead::on_wasted`]), which
//! shrinks the stream's window.
//!
//! ```
//! use strata_ooc::bufmgr::{pool_block_bytes, BufferManager, ChunkLoader, OocError};
//! use strata_ooc::policy::{ChunkKey, LruPolicy};
//! use strata_ooc::readahead::manager::ReadAheadManager;
//! use strata_pool::budget::{MemoryConsumer, MemoryPool, UnboundedPool};
//! use strata_pool::{HybridPool, PoolConfig};
//! use std::sync::Arc;
//!
//! /// 32 chunks of 1 KiB, chunk `k` filled with `k`.
//! struct Counting;
//! impl ChunkLoader for Counting {
//!     fn chunk_bytes(&self, key: ChunkKey) -> Result<u64, OocError> {
//!         if key.0 < 32 { Ok(1024) } else { Err(OocError::UnknownChunk { key }) }
//!     }
//!     fn load(&self, key: ChunkKey, out: &mut [u8]) -> Result<(), OocError> {
//!         out.fill(key.0 as u8);
//!         Ok(())
//!     }
//! }
//!
//! let pool = HybridPool::new(PoolConfig::default())?;
//! let budget: Arc<dyn MemoryPool> = Arc::new(UnboundedPool::new());
//! let reservation = MemoryConsumer::new("cache").register(&budget);
//! let capacity_bytes = 8 * pool_block_bytes(1024);
//! let manager = BufferManager::new(
//!     &pool, &reservation, &Counting, None, Box::new(LruPolicy::new()), capacity_bytes,
//! );
//! let report = std::thread::scope(|scope| -> Result<_, OocError> {
//!     let mut reader = ReadAheadManager::start(scope, &manager, &Counting, capacity_bytes / 2);
//!     for k in 0..32 {
//!         let pinned = reader.pin(ChunkKey(k))?;
//!         assert!(pinned.bytes().iter().all(|&b| b == k as u8));
//!     }
//!     Ok(reader.finish())
//! })?;
//! assert_eq!(report.pins, 32);
//! // The reader alone pinned and the thread alone prefetched.
//! let stats = manager.stats();
//! assert_eq!((report.loaded, report.pins_read_ahead), (stats.prefetches, stats.prefetch_hits));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{Scope, ScopedJoinHandle};

#[cfg(doc)]
use crate::bufmgr::CacheStats;
use crate::bufmgr::{pool_block_bytes, BufferManager, ChunkLoader, OocError, Pinned};
#[cfg(doc)]
use crate::contract::PREFETCH_SHARE_PERCENT;
use crate::policy::ChunkKey;

use super::{ReadAhead, ReadAheadStats, WINDOW_MAX_CHUNKS};

/// Keys waiting for the read-ahead thread; more are dropped (the reader
/// never waits). Room for two full windows, so one stream at the largest
/// window never drops a refill.
pub const READ_QUEUE_CHUNKS_MAX: usize = 2 * WINDOW_MAX_CHUNKS as usize;
/// Chunks loaded ahead and not yet pinned that are remembered (to tell a
/// wasted load at the reader's pin); the oldest are forgotten beyond, and
/// count as unused.
pub const LOADED_TRACKED_MAX: usize = 4096;

const _: () = assert!(READ_QUEUE_CHUNKS_MAX as u64 >= WINDOW_MAX_CHUNKS);
const _: () = assert!(LOADED_TRACKED_MAX >= READ_QUEUE_CHUNKS_MAX);

/// Where a key handed to the read-ahead thread is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ahead {
    /// In the queue.
    Queued,
    /// Being loaded by the thread.
    Loading,
    /// Loaded by the thread, not pinned since.
    Loaded,
}

/// What the reader and the thread share, under one mutex.
#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<ChunkKey>,
    tracked: HashMap<ChunkKey, Ahead>,
    /// Keys in the order the thread loaded them (some since pinned).
    loaded_order: VecDeque<ChunkKey>,
    stopping: bool,
    /// Chunks the thread loaded.
    loaded: u64,
    /// Keys the thread did not load: resident or in flight already, no
    /// room (the cache is full of pinned chunks), or a failed load (the
    /// reader meets the error at its pin).
    not_loaded: u64,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a [`ReadAheadManager`] did; see [`ReadAheadManager::finish`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadAheadReport {
    /// Pins by the reader.
    pub pins: u64,
    /// Of those, the ones that loaded the chunk or waited for a load in
    /// flight (stalls).
    pub pins_stalled: u64,
    /// Of those, the ones served by a chunk the read-ahead loaded (used).
    pub pins_read_ahead: u64,
    /// Keys handed to the read-ahead thread.
    pub queued: u64,
    /// Suggested keys dropped: the queue was full.
    pub queue_dropped: u64,
    /// Queued keys the reader pinned before the thread got to them.
    pub overtaken: u64,
    /// Chunks the read-ahead thread loaded.
    pub loaded: u64,
    /// Keys the thread did not load (resident, in flight, no room, failed).
    pub not_loaded: u64,
    /// Loaded chunks evicted before the reader pinned them (it loaded them
    /// again).
    pub wasted: u64,
    /// Loaded chunks not pinned by the end (`loaded - used - wasted`).
    pub unused: u64,
    /// The detector's counters (window sizes among them).
    pub detector: ReadAheadStats,
}

/// See the module documentation.
pub struct ReadAheadManager<'scope, 'p> {
    manager: &'scope BufferManager<'p>,
    loader: &'scope dyn ChunkLoader,
    limit_bytes: u64,
    detector: ReadAhead,
    shared: Arc<Shared>,
    thread: Option<ScopedJoinHandle<'scope, ()>>,
    /// Counters the reader alone moves.
    report: ReadAheadReport,
}

impl<'scope, 'p> ReadAheadManager<'scope, 'p> {
    /// Starts the read-ahead thread in `scope`; it stops when this is
    /// finished or dropped. At most `limit_bytes` (pool blocks) are read
    /// ahead, split among the streams: a share of the manager's capacity
    /// (reading ahead more than the cache can keep evicts chunks before
    /// their use). `loader` must be the manager's: it sizes the keys.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        manager: &'scope BufferManager<'p>,
        loader: &'scope dyn ChunkLoader,
        limit_bytes: u64,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = scope.spawn(move || read_ahead_loop(manager, &thread_shared));
        ReadAheadManager {
            manager,
            loader,
            limit_bytes,
            detector: ReadAhead::new(),
            shared,
            thread: Some(thread),
            report: ReadAheadReport::default(),
        }
    }

    /// The detector, for its streams and counters.
    pub fn detector(&self) -> &ReadAhead {
        &self.detector
    }

    /// Pins `key` like [`BufferManager::pin`], then hands the keys the
    /// detector suggests to the read-ahead thread (never waiting for it).
    ///
    /// The pin comes first: a chunk read ahead while `key` is not yet
    /// pinned could evict `key` itself, which an online policy may rank
    /// below the chunks used since it was read ahead.
    pub fn pin(&mut self, key: ChunkKey) -> Result<Pinned<'scope, 'p>, OocError> {
        {
            let mut queue = self.shared.lock();
            if queue.tracked.get(&key) == Some(&Ahead::Queued) {
                // The reader loads it now; the thread would only find it there.
                queue.tracked.remove(&key);
                queue.pending.retain(|&k| k != key);
                self.report.overtaken += 1;
            }
        }
        let before = self.manager.stats();
        let pinned = self.manager.pin(key)?;
        let after = self.manager.stats();
        self.report.pins += 1;
        if after.misses > before.misses {
            self.report.pins_stalled += 1;
        }
        let read_ahead = after.prefetch_hits > before.prefetch_hits;
        if read_ahead {
            self.report.pins_read_ahead += 1;
        }
        let wasted = {
            let mut queue = self.shared.lock();
            match queue.tracked.get(&key) {
                Some(Ahead::Loaded) => {
                    queue.tracked.remove(&key);
                    !read_ahead
                }
                // The thread published it and the pin found it before the
                // thread looked again: it finds the key gone and adds
                // nothing. (A pin that loaded it itself leaves the key to
                // the thread, whose prefetch finds it resident.)
                Some(Ahead::Loading) if read_ahead => {
                    queue.tracked.remove(&key);
                    false
                }
                _ => false,
            }
        };
        if wasted {
            // Before the access: `key` is still ahead of its stream, so the
            // stream's read-ahead is pulled back to it.
            self.report.wasted += 1;
            self.detector.on_wasted(key.0);
        }
        self.suggest(key);
        Ok(pinned)
    }

    /// Feeds `key` to the detector and queues what it suggests.
    fn suggest(&mut self, key: ChunkKey) {
        let Ok(len_bytes) = self.loader.chunk_bytes(key) else {
            return; // not a source chunk: nothing to read ahead from
        };
        let streams = self.detector.active_streams().max(1) as u64;
        let Some(run) = self.detector.access(
            key.0,
            self.limit_bytes / streams,
            pool_block_bytes(len_bytes),
        ) else {
            return;
        };
        let known: Vec<ChunkKey> = run
            .keys()
            .map(ChunkKey)
            .filter(|&k| self.loader.chunk_bytes(k).is_ok())
            .collect();
        let mut queue = self.shared.lock();
        for k in known {
            if queue.tracked.contains_key(&k) {
                continue; // queued, loading or loaded already
            }
            if queue.pending.len() >= READ_QUEUE_CHUNKS_MAX {
                self.report.queue_dropped += 1;
                continue;
            }
            queue.pending.push_back(k);
            queue.tracked.insert(k, Ahead::Queued);
            self.report.queued += 1;
        }
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Stops the thread (after the load it is doing) and waits for it.
    fn stop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The loop does not panic short of a bug; surface it.
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// Stops the read-ahead thread and returns what was done.
    pub fn finish(mut self) -> ReadAheadReport {
        self.stop();
        self.check_invariants();
        let queue = self.shared.lock();
        let mut report = self.report;
        report.loaded = queue.loaded;
        report.not_loaded = queue.not_loaded;
        // Each use or waste is of a distinct load by the thread.
        report.unused = report
            .loaded
            .checked_sub(report.pins_read_ahead + report.wasted)
            .unwrap_or_else(|| {
                panic!(
                    "used {} + wasted {} > loaded {}",
                    report.pins_read_ahead, report.wasted, report.loaded
                )
            });
        report.detector = self.detector.stats();
        report
    }

    /// Checks the invariants of the detector and the queue in O(tracked
    /// keys); panics with the values.
    pub fn check_invariants(&self) {
        self.detector.check_invariants();
        let queue = self.shared.lock();
        assert!(
            queue.pending.len() <= READ_QUEUE_CHUNKS_MAX,
            "{} keys queued > {READ_QUEUE_CHUNKS_MAX}",
            queue.pending.len()
        );
        assert!(
            queue.loaded_order.len() <= LOADED_TRACKED_MAX,
            "{} loaded keys remembered > {LOADED_TRACKED_MAX}",
            queue.loaded_order.len()
        );
        let count = |state: Ahead| queue.tracked.values().filter(|&&s| s == state).count();
        assert_eq!(
            count(Ahead::Queued),
            queue.pending.len(),
            "queued keys vs the queue {:?}",
            queue.pending
        );
        for key in &queue.pending {
            assert_eq!(
                queue.tracked.get(key),
                Some(&Ahead::Queued),
                "{key} queued but not tracked as queued"
            );
        }
        let loading = count(Ahead::Loading);
        assert!(
            loading <= usize::from(self.thread.is_some()),
            "{loading} keys loading with one thread (running: {})",
            self.thread.is_some()
        );
        // A pin may count a use before the thread counts its load (one at
        // a time).
        let in_flight = u64::from(self.thread.is_some());
        assert!(
            self.report.pins_read_ahead + self.report.wasted <= queue.loaded + in_flight,
            "used {} + wasted {} > loaded {} + {in_flight} in flight",
            self.report.pins_read_ahead,
            self.report.wasted,
            queue.loaded
        );
        let r = &self.report;
        assert!(
            r.pins_read_ahead <= r.pins && r.pins_stalled <= r.pins,
            "used {} and stalled {} of {} pins",
            r.pins_read_ahead,
            r.pins_stalled,
            r.pins
        );
    }
}

impl Drop for ReadAheadManager<'_, '_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The read-ahead thread: loads queued keys, oldest first, until stopped.
fn read_ahead_loop(manager: &BufferManager<'_>, shared: &Shared) {
    loop {
        let key = {
            let mut queue = shared.lock();
            loop {
                if queue.stopping {
                    return;
                }
                if let Some(key) = queue.pending.pop_front() {
                    queue.tracked.insert(key, Ahead::Loading);
                    break key;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        let outcome = manager.prefetch(key);
        let mut queue = shared.lock();
        let still_loading = queue.tracked.get(&key) == Some(&Ahead::Loading);
        match outcome {
            Ok(true) => {
                queue.loaded += 1;
                // Gone: the reader pinned what this load published.
                if still_loading {
                    queue.tracked.insert(key, Ahead::Loaded);
                    queue.loaded_order.push_back(key);
                    while queue.loaded_order.len() > LOADED_TRACKED_MAX {
                        let oldest = queue.loaded_order.pop_front().expect("over the bound");
                        if queue.tracked.get(&oldest) == Some(&Ahead::Loaded) {
                            queue.tracked.remove(&oldest);
                        }
                    }
                }
            }
            // The reader meets a failure at its own pin and reports it.
            Ok(false) | Err(_) => {
                queue.not_loaded += 1;
                if still_loading {
                    queue.tracked.remove(&key);
                }
            }
        }
    }
}
