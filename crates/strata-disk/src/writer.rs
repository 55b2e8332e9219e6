//! [`SpillWriter`]: an [`ExtentStore`] with a background writer thread, so a
//! caller spilling a record does not wait for the device unless it asks to.
//!
//! - [`SpillWriter::submit`] queues a payload and returns a [`Ticket`] at
//!   once. The queue is bounded ([`WRITER_QUEUE_DEPTH`]): when it is full,
//!   `submit` blocks until the thread takes work off it, so the payloads
//!   held by the writer stay bounded (see [`WriterStats::pending_max`]).
//! - The thread takes what is queued (up to [`WRITER_BATCH_RECORDS_MAX`]
//!   records or [`WRITER_BATCH_BYTES_MAX`] encoded bytes), encodes it
//!   (compression and checksums) *without* holding the store, then takes
//!   the store's write lock for [`ExtentStore::put_batch`] only: allocation
//!   and coalesced device writes. Records are put in submission order.
//! - [`Ticket::wait`] returns the record's extent, or the error that kept it
//!   from being written. A batch refused as a whole is retried record by
//!   record, so each ticket gets the outcome its record would get from
//!   [`ExtentStore::put`], and one bad record never fails its neighbours.
//!   Every ticket resolves: if the thread is gone (it panicked), with
//!   [`WriterError::Stopped`].
//! - [`SpillWriter::flush`] waits until everything submitted before it is
//!   written (not durable); [`SpillWriter::commit`] does that and then
//!   commits the store, making those records durable.
//! - Reads ([`get`](SpillWriter::get), [`get_into`](SpillWriter::get_into),
//!   [`get_many`](SpillWriter::get_many)) take the store's read lock and run
//!   while writes are queued or being encoded; they wait only while a batch
//!   is being allocated and written. A record can only be read once its
//!   ticket has resolved, since that is where its extent comes from.
//! - **Dropping the writer** lets the thread finish every queued write (each
//!   ticket resolves) and joins it, but does **not** commit: the records are
//!   allocated in the store but not durable, exactly as after
//!   [`ExtentStore::put`] without a commit. Call [`SpillWriter::commit`]
//!   first, or [`SpillWriter::into_store`] to get the store back.
//!
//! ```
//! use strata_disk::device::MemDevice;
//! use strata_disk::record::{ChecksumKind, CodecPolicy, Dtype, RecordMeta};
//! use strata_disk::store::{ExtentStore, StoreConfig};
//! use strata_disk::writer::SpillWriter;
//!
//! let config = StoreConfig {
//!     cap_bytes: None,
//!     policy: CodecPolicy::Auto,
//!     checksum: ChecksumKind::Xxh3,
//!     spare_blocks: 4,
//! };
//! let store = ExtentStore::create(MemDevice::new(256 * 4096, 4096).unwrap(), config).unwrap();
//! let writer = SpillWriter::new(store).unwrap();
//! let meta = RecordMeta { dtype: Dtype::Bytes, shape: vec![5] };
//! let tickets: Vec<_> = (0..3u8).map(|i| writer.submit(vec![i; 5], meta.clone())).collect();
//! writer.commit().unwrap();
//! for (i, ticket) in tickets.into_iter().enumerate() {
//!     let extent = ticket.wait().unwrap();
//!     assert_eq!(writer.get(extent).unwrap().payload, vec![i as u8; 5]);
//! }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use crate::device::BlockDevice;
use crate::record::{DecodedRecord, RecordMeta};
use crate::store::{EncodedBatch, Extent, ExtentStore, ReadBuf, RecordView, StoreError};

/// Submissions the queue holds before [`SpillWriter::submit`] blocks.
/// Deep enough that the thread finds a full batch waiting while it writes
/// the previous one; shallow enough that the memory of queued payloads stays
/// a small multiple of a batch.
pub const WRITER_QUEUE_DEPTH: usize = 64;
/// Most records the thread encodes and writes as one batch.
pub const WRITER_BATCH_RECORDS_MAX: usize = WRITER_QUEUE_DEPTH;
/// The thread stops adding records to a batch once its encoded bytes reach
/// this (a batch holds at least one record, whatever its size). Bounds the
/// encode buffer and how long one batch holds the store's write lock.
pub const WRITER_BATCH_BYTES_MAX: usize = 8 << 20;

const _: () = assert!(WRITER_QUEUE_DEPTH > 0 && WRITER_BATCH_RECORDS_MAX > 0);
// The thread never takes more than the queue can hand it in one go.
const _: () = assert!(WRITER_BATCH_RECORDS_MAX <= WRITER_QUEUE_DEPTH);

/// Why a writer operation failed.
#[non_exhaustive]
#[derive(Debug)]
pub enum WriterError {
    /// The store refused the operation (as [`ExtentStore::put`] or
    /// [`ExtentStore::commit`] would have).
    Store {
        /// The store error.
        source: StoreError,
    },
    /// The background thread is gone (it panicked), so the operation was
    /// not carried out.
    Stopped,
    /// The background thread could not be started.
    Spawn {
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl fmt::Display for WriterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriterError::Store { source } => write!(f, "spill writer: {source}"),
            WriterError::Stopped => write!(
                f,
                "spill writer: the background thread has stopped; the operation was not done"
            ),
            WriterError::Spawn { source } => {
                write!(
                    f,
                    "spill writer: cannot start the background thread: {source}"
                )
            }
        }
    }
}

impl std::error::Error for WriterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriterError::Store { source } => Some(source),
            WriterError::Spawn { source } => Some(source),
            WriterError::Stopped => None,
        }
    }
}

/// Figures of a writer at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Records submitted.
    pub submitted: u64,
    /// Records written (their tickets resolved with an extent).
    pub written: u64,
    /// Records not written (their tickets resolved with an error).
    pub failed: u64,
    /// `put_batch` calls made by the thread (retries of a refused batch
    /// record by record not included).
    pub batches: u64,
    /// Most records submitted and not yet resolved, seen at any submit
    /// (queued, being encoded, or being written). At most
    /// [`WRITER_QUEUE_DEPTH`] + [`WRITER_BATCH_RECORDS_MAX`].
    pub pending_max: u64,
}

#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    /// Submissions whose send to the queue has returned.
    accepted: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
    pending_max: AtomicU64,
}

/// Where a ticket's outcome is delivered.
#[derive(Debug, Default)]
struct Slot {
    outcome: Mutex<Option<Result<Extent, WriterError>>>,
    ready: Condvar,
}

/// The writer's end of a ticket. Resolving it is the only way to consume
/// it; dropping it unresolved (the thread panicked, or the queue is gone)
/// resolves it with [`WriterError::Stopped`], so no ticket waits forever.
#[derive(Debug)]
struct Promise {
    slot: Option<Arc<Slot>>,
    counters: Arc<Counters>,
}

impl Promise {
    fn resolve(mut self, outcome: Result<Extent, WriterError>) {
        let slot = self.slot.take().expect("a promise resolves once");
        let counter = match outcome {
            Ok(_) => &self.counters.written,
            Err(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *lock(&slot.outcome) = Some(outcome);
        slot.ready.notify_all();
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            Promise {
                slot: Some(slot),
                counters: Arc::clone(&self.counters),
            }
            .resolve(Err(WriterError::Stopped));
        }
    }
}

/// The outcome of one [`SpillWriter::submit`]: wait on it for the extent.
#[derive(Debug)]
pub struct Ticket {
    slot: Arc<Slot>,
}

impl Ticket {
    /// Blocks until the record is written (its extent) or has failed (the
    /// error, e.g. [`StoreError::Encode`] for a bad meta, a device error,
    /// [`StoreError::NoSpace`], all inside [`WriterError::Store`]). The
    /// record is durable only after a later [`SpillWriter::commit`].
    pub fn wait(self) -> Result<Extent, WriterError> {
        let mut outcome = lock(&self.slot.outcome);
        loop {
            if let Some(result) = outcome.take() {
                return result;
            }
            outcome = self
                .slot
                .ready
                .wait(outcome)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether [`wait`](Self::wait) would return at once.
    pub fn is_ready(&self) -> bool {
        lock(&self.slot.outcome).is_some()
    }
}

enum Command {
    Write {
        payload: Vec<u8>,
        meta: RecordMeta,
        promise: Promise,
    },
    Flush {
        done: mpsc::Sender<()>,
    },
    Commit {
        done: mpsc::Sender<Result<(), StoreError>>,
    },
}

/// An [`ExtentStore`] written by a background thread. See the module
/// documentation.
pub struct SpillWriter<D: BlockDevice + 'static> {
    store: Arc<RwLock<ExtentStore<D>>>,
    /// `None` once shut down.
    queue: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl<D: BlockDevice + 'static> fmt::Debug for SpillWriter<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpillWriter")
            .field("stats", &self.stats())
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl<D: BlockDevice + 'static> SpillWriter<D> {
    /// Takes over `store` and starts the background thread.
    pub fn new(store: ExtentStore<D>) -> Result<SpillWriter<D>, WriterError> {
        let store = Arc::new(RwLock::new(store));
        let counters = Arc::new(Counters::default());
        let (queue, commands) = mpsc::sync_channel(WRITER_QUEUE_DEPTH);
        let thread = {
            let store = Arc::clone(&store);
            std::thread::Builder::new()
                .name("strata-spill-writer".into())
                .spawn(move || run(&store, &commands))
                .map_err(|source| WriterError::Spawn { source })?
        };
        Ok(SpillWriter {
            store,
            queue: Some(queue),
            thread: Some(thread),
            counters,
        })
    }

    /// Queues `payload` to be encoded and written; blocks while the queue
    /// holds [`WRITER_QUEUE_DEPTH`] submissions. The ticket resolves once
    /// the record is written or has failed.
    pub fn submit(&self, payload: Vec<u8>, meta: RecordMeta) -> Ticket {
        let slot = Arc::new(Slot::default());
        let promise = Promise {
            slot: Some(Arc::clone(&slot)),
            counters: Arc::clone(&self.counters),
        };
        // Counted before the send, so `written + failed <= submitted` holds
        // at every instant.
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        let command = Command::Write {
            payload,
            meta,
            promise,
        };
        // A send fails only when the thread is gone; the command (and its
        // promise) is dropped, resolving the ticket with `Stopped`.
        if let Some(queue) = &self.queue {
            let _ = queue.send(command);
        }
        // Counted after the send: every accepted record is in the queue, in
        // the thread's hands, or resolved, so this bounds what is held.
        let accepted = self.counters.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        let resolved = self.counters.written.load(Ordering::Relaxed)
            + self.counters.failed.load(Ordering::Relaxed);
        self.counters
            .pending_max
            .fetch_max(accepted.saturating_sub(resolved), Ordering::Relaxed);
        Ticket { slot }
    }

    /// Waits until every record submitted before this call is written or
    /// has failed (their tickets are resolved). Makes nothing durable.
    pub fn flush(&self) -> Result<(), WriterError> {
        let (done, finished) = mpsc::channel();
        self.send(Command::Flush { done })?;
        finished.recv().map_err(|_| WriterError::Stopped)
    }

    /// Waits as [`flush`](Self::flush) does, then commits the store: every
    /// record written so far (and every free) becomes durable. A failed
    /// commit leaves the store needing a reopen, as
    /// [`ExtentStore::commit`] describes.
    pub fn commit(&self) -> Result<(), WriterError> {
        let (done, finished) = mpsc::channel();
        self.send(Command::Commit { done })?;
        finished
            .recv()
            .map_err(|_| WriterError::Stopped)?
            .map_err(|source| WriterError::Store { source })
    }

    fn send(&self, command: Command) -> Result<(), WriterError> {
        self.queue
            .as_ref()
            .ok_or(WriterError::Stopped)?
            .send(command)
            .map_err(|_| WriterError::Stopped)
    }

    /// [`ExtentStore::get`] under the store's read lock.
    pub fn get(&self, extent: Extent) -> Result<DecodedRecord, StoreError> {
        self.read().get(extent)
    }

    /// [`ExtentStore::get_into`] under the store's read lock; the view
    /// borrows only `buf`, so the lock is released when this returns.
    pub fn get_into<'buf>(
        &self,
        extent: Extent,
        buf: &'buf mut ReadBuf,
    ) -> Result<RecordView<'buf>, StoreError> {
        self.read().get_into(extent, buf)
    }

    /// [`ExtentStore::get_many`] under the store's read lock.
    pub fn get_many(&self, extents: &[Extent]) -> Vec<Result<DecodedRecord, StoreError>> {
        self.read().get_many(extents)
    }

    /// [`ExtentStore::free`] under the store's write lock.
    pub fn free(&self, extent: Extent) -> Result<(), StoreError> {
        write(&self.store).free(extent)
    }

    /// Runs `inspect` on the store under its read lock (for
    /// [`ExtentStore::stats`], [`ExtentStore::extents`] and the like).
    pub fn with_store<R>(&self, inspect: impl FnOnce(&ExtentStore<D>) -> R) -> R {
        inspect(&self.read())
    }

    /// Current figures.
    pub fn stats(&self) -> WriterStats {
        let counters = &self.counters;
        WriterStats {
            submitted: counters.submitted.load(Ordering::Relaxed),
            written: counters.written.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            batches: counters.batches.load(Ordering::Relaxed),
            pending_max: counters.pending_max.load(Ordering::Relaxed),
        }
    }

    /// Finishes every queued write (as dropping does; no commit), stops the
    /// thread and gives the store back.
    pub fn into_store(mut self) -> ExtentStore<D> {
        self.shut_down();
        let store = Arc::clone(&self.store);
        drop(self);
        let store = Arc::try_unwrap(store)
            .unwrap_or_else(|_| panic!("the writer thread has exited and held the only other Arc"));
        store.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the queue and joins the thread; the thread first drains every
    /// command queued before. Idempotent.
    fn shut_down(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the thread has already resolved the tickets it held
            // (their promises were dropped); there is nothing more to report.
            let _ = thread.join();
        }
    }

    /// Panics (with the values) unless the counters agree (no more
    /// resolved than submitted, the pending bound holds) and the store's
    /// own invariants hold.
    pub fn check_invariants(&self) {
        // Resolved counts first: a submit racing with this only adds to
        // `submitted` before its record can resolve.
        let written = self.counters.written.load(Ordering::Relaxed);
        let failed = self.counters.failed.load(Ordering::Relaxed);
        let stats = self.stats();
        assert!(
            written + failed <= stats.submitted,
            "{written} written + {failed} failed exceed {} submitted",
            stats.submitted
        );
        let bound = (WRITER_QUEUE_DEPTH + WRITER_BATCH_RECORDS_MAX) as u64;
        assert!(
            stats.pending_max <= bound,
            "{} records pending at once, bound {bound}",
            stats.pending_max
        );
        self.read().check_invariants();
    }

    fn read(&self) -> RwLockReadGuard<'_, ExtentStore<D>> {
        // A panic while the thread held the lock happened inside the store,
        // whose operations leave it consistent or flagged (needs reopen)
        // before anything that can panic; reads go on.
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl<D: BlockDevice + 'static> Drop for SpillWriter<D> {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn write<D: BlockDevice>(store: &RwLock<ExtentStore<D>>) -> RwLockWriteGuard<'_, ExtentStore<D>> {
    store.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The slot holds plain data; a panic elsewhere cannot leave it half-set.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The background thread: until the queue closes (and is drained), gather
/// a batch, encode it without the lock, write it under the lock, then
/// answer a flush or commit that ended the batch.
fn run<D: BlockDevice>(store: &RwLock<ExtentStore<D>>, commands: &Receiver<Command>) {
    let mut batch: EncodedBatch = store.read().unwrap_or_else(|e| e.into_inner()).new_batch();
    let mut promises: Vec<Promise> = Vec::with_capacity(WRITER_BATCH_RECORDS_MAX);
    while let Ok(first) = commands.recv() {
        let mut next = Some(first);
        let mut control = None;
        while let Some(command) = next.take() {
            match command {
                Command::Write {
                    payload,
                    meta,
                    promise,
                } => match batch.push(&payload, &meta) {
                    Ok(_) => promises.push(promise),
                    Err(source) => promise.resolve(Err(WriterError::Store { source })),
                },
                control_command => {
                    control = Some(control_command);
                    break;
                }
            }
            if promises.len() < WRITER_BATCH_RECORDS_MAX
                && batch.len_bytes() < WRITER_BATCH_BYTES_MAX
            {
                next = commands.try_recv().ok();
            }
        }
        write_batch(store, &mut batch, &mut promises);
        match control {
            Some(Command::Flush { done }) => {
                let _ = done.send(());
            }
            Some(Command::Commit { done }) => {
                let _ = done.send(write(store).commit());
            }
            Some(Command::Write { .. }) | None => {}
        }
    }
}

/// Puts `batch` and resolves `promises` (one per record, in order). A batch
/// refused as a whole is put again record by record so each promise gets
/// its own record's outcome. Leaves both empty.
fn write_batch<D: BlockDevice>(
    store: &RwLock<ExtentStore<D>>,
    batch: &mut EncodedBatch,
    promises: &mut Vec<Promise>,
) {
    assert_eq!(
        batch.len(),
        promises.len(),
        "{} records encoded, {} promises",
        batch.len(),
        promises.len()
    );
    if promises.is_empty() {
        return;
    }
    let mut store = write(store);
    if let Some(promise) = promises.first() {
        promise.counters.batches.fetch_add(1, Ordering::Relaxed);
    }
    match store.put_encoded(batch, 0..batch.len()) {
        Ok(extents) => {
            for (promise, extent) in promises.drain(..).zip(extents) {
                promise.resolve(Ok(extent));
            }
        }
        Err((_, error)) if promises.len() == 1 => {
            let promise = promises.pop().expect("one promise");
            promise.resolve(Err(WriterError::Store { source: error }));
        }
        Err(_) => {
            for (index, promise) in promises.drain(..).enumerate() {
                let outcome = store
                    .put_encoded(batch, index..index + 1)
                    .map(|extents| extents[0])
                    .map_err(|(_, source)| WriterError::Store { source });
                promise.resolve(outcome);
            }
        }
    }
    drop(store);
    batch.clear();
}
