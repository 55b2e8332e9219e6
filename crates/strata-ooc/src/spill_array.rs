//! [`SpillArray`]: an intermediate array kept in the disk tier, the output
//! of one operation ([`ChunkSink`]) and the input of the next
//! ([`ChunkSource`]).
//!
//! - [`write_chunk`](ChunkSink::write_chunk) hands the chunk to a
//!   background [`SpillWriter`] as a spill record (the array's dtype and the
//!   chunk's ragged shape, codec chosen per record, xxh3 checksums) and
//!   returns without waiting for the device.
//! - [`finish`](ChunkSink::finish) waits for every write, frees the records
//!   of chunks written again, and commits the store. A write that failed
//!   (the disk tier full, a device error) fails `finish`, and the next
//!   `write_chunk` once it is known.
//! - [`read_chunk`](ChunkSource::read_chunk) is refused until `finish`
//!   succeeded ([`ArrayError::Incomplete`]), reads the record back verified
//!   (a checksum failure is [`ArrayError::CorruptChunk`], never wrong
//!   bytes), and refuses a chunk that was never written
//!   ([`ArrayError::NotFound`]): an intermediate is written in full before
//!   it is read, so a missing chunk is a bug upstream, not zeros.
//!
//! **Memory.** Chunks handed to the writer and not yet written are held as
//! copies: at most `inflight_bytes_max` bytes of them, or one chunk if a
//! chunk is larger (`write_chunk` waits for the oldest writes before taking
//! more). The writer's queue holds at most [`WRITER_QUEUE_DEPTH`] of them
//! besides, and its encode buffer one batch (at most
//! [`WRITER_BATCH_BYTES_MAX`] or one record). Reads keep up to
//! [`READ_BUFS_KEPT_MAX`] read buffers, each about twice a chunk. The index
//! of written chunks is a map of one extent per chunk.
//!
//! [`WRITER_QUEUE_DEPTH`]: strata_disk::writer::WRITER_QUEUE_DEPTH
//! [`WRITER_BATCH_BYTES_MAX`]: strata_disk::writer::WRITER_BATCH_BYTES_MAX
//!
//! ```
//! use strata_array::chunk::{ChunkSink, ChunkSource};
//! use strata_array::dtype::DataType;
//! use strata_array::meta::ArrayMeta;
//! use strata_disk::device::MemDevice;
//! use strata_ooc::spill_array::SpillArray;
//!
//! let meta = ArrayMeta::new(vec![3, 5], vec![2, 4], DataType::F32)?;
//! let device = MemDevice::new(256 * 4096, 4096)?;
//! let array = SpillArray::create("t", meta, device, None, 1 << 20)?;
//! for grid in [[0u64, 0], [0, 1], [1, 0], [1, 1]] {
//!     let len = ChunkSink::meta(&array).chunk_len_bytes_at(&grid);
//!     array.write_chunk(&grid, &vec![grid[1] as u8; len])?;
//! }
//! array.finish()?;
//! let mut out = vec![0u8; 4]; // chunk [1, 1] is the ragged corner: 1 x 1
//! array.read_chunk(&[1, 1], &mut out)?;
//! assert_eq!(out, [1u8; 4]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

use strata_array::chunk::{check_chunk_buffer, ChunkSink, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::error::ArrayError;
use strata_array::meta::ArrayMeta;
use strata_disk::device::{BlockDevice, FileDevice};
use strata_disk::record::{Dtype, RecordMeta};
use strata_disk::store::{Extent, ExtentStore, ReadBuf, StoreError};
use strata_disk::writer::{SpillWriter, WriterError};

use crate::spill::{full_figures, spill_store_config, temp_store, TempPath, READ_BUFS_KEPT_MAX};

/// The disk tier's dtype for an array dtype.
fn record_dtype(dtype: DataType) -> Dtype {
    match dtype {
        DataType::F32 => Dtype::F32,
        DataType::F64 => Dtype::F64,
        DataType::I32 => Dtype::I32,
        DataType::I64 => Dtype::I64,
        DataType::U8 => Dtype::U8,
        DataType::F16 => Dtype::F16,
        DataType::BF16 => Dtype::BF16,
        // A dtype added later is still stored faithfully, as bytes.
        _ => Dtype::Bytes,
    }
}

/// A chunk handed to the writer and not yet known written.
#[derive(Debug)]
struct InFlight {
    linear: u64,
    grid: Vec<u64>,
    len_bytes: u64,
    ticket: strata_disk::writer::Ticket,
}

/// The first write that failed.
#[derive(Debug, Clone)]
struct WriteFailure {
    chunk: Vec<u64>,
    kind: io::ErrorKind,
    detail: String,
}

#[derive(Debug, Default)]
struct WriteState {
    /// Written chunks: linear index to record.
    written: HashMap<u64, Extent>,
    /// Oldest first (the writer resolves tickets in submission order).
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: u64,
    peak_in_flight_bytes: u64,
    /// Chunks submitted.
    submitted: u64,
    /// Chunk bytes submitted.
    submitted_bytes: u64,
    failure: Option<WriteFailure>,
    /// `finish` is running or done: no more writes.
    closed: bool,
}

/// Figures of a [`SpillArray`]; see [`SpillArray::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpillArrayStats {
    /// Chunk writes handed to the writer (rewrites included).
    pub chunks_submitted: u64,
    /// Chunk bytes handed to the writer (before compression).
    pub submitted_bytes: u64,
    /// Distinct chunks known written.
    pub chunks_written: u64,
    /// Chunk bytes held for writes in flight now.
    pub in_flight_bytes: u64,
    /// Most chunk bytes held for writes in flight at once.
    pub peak_in_flight_bytes: u64,
    /// Bytes of the disk tier allocated (whole blocks).
    pub disk_used_bytes: u64,
}

/// An intermediate array in the disk tier. See the module documentation.
pub struct SpillArray<D: BlockDevice + 'static> {
    name: String,
    meta: ArrayMeta,
    inflight_bytes_max: u64,
    writer: SpillWriter<D>,
    state: Mutex<WriteState>,
    /// Set by a successful `finish`: the index reads use.
    finished: OnceLock<HashMap<u64, Extent>>,
    read_bufs: Mutex<Vec<ReadBuf>>,
    /// Declared after the writer, so the file goes once the store is closed.
    temp: Option<TempPath>,
}

impl<D: BlockDevice + 'static> fmt::Debug for SpillArray<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpillArray")
            .field("name", &self.name)
            .field("meta", &self.meta)
            .field("finished", &self.finished.get().is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<D: BlockDevice + 'static> SpillArray<D> {
    /// An empty intermediate `name` of `meta`, its chunks spilled to a store
    /// formatted on `device` holding at most `cap_bytes` of records; at most
    /// `inflight_bytes_max` bytes of chunks wait for the device at once (see
    /// the module documentation).
    pub fn create(
        name: impl Into<String>,
        meta: ArrayMeta,
        device: D,
        cap_bytes: Option<u64>,
        inflight_bytes_max: u64,
    ) -> Result<SpillArray<D>, ArrayError> {
        let name = name.into();
        let store = ExtentStore::create(device, spill_store_config(cap_bytes)).map_err(|e| {
            ArrayError::Io {
                array: name.clone(),
                chunk: None,
                operation: "format the spill store",
                source: io::Error::other(e),
            }
        })?;
        Self::with_store(name, meta, store, inflight_bytes_max, None)
    }

    fn with_store(
        name: String,
        meta: ArrayMeta,
        store: ExtentStore<D>,
        inflight_bytes_max: u64,
        temp: Option<TempPath>,
    ) -> Result<SpillArray<D>, ArrayError> {
        let writer = SpillWriter::new(store).map_err(|e| ArrayError::Io {
            array: name.clone(),
            chunk: None,
            operation: "start the spill writer",
            source: io::Error::other(e),
        })?;
        Ok(SpillArray {
            name,
            meta,
            inflight_bytes_max,
            writer,
            state: Mutex::new(WriteState::default()),
            finished: OnceLock::new(),
            read_bufs: Mutex::new(Vec::new()),
            temp,
        })
    }

    /// Whether `finish` has succeeded (reads are allowed).
    pub fn is_complete(&self) -> bool {
        self.finished.get().is_some()
    }

    /// Current figures.
    pub fn stats(&self) -> SpillArrayStats {
        let (submitted, submitted_bytes, written, in_flight_bytes, peak) = {
            let state = self.lock();
            (
                state.submitted,
                state.submitted_bytes,
                state.written.len() as u64,
                state.in_flight_bytes,
                state.peak_in_flight_bytes,
            )
        };
        let written = self.finished.get().map_or(written, |w| w.len() as u64);
        SpillArrayStats {
            chunks_submitted: submitted,
            submitted_bytes,
            chunks_written: written,
            in_flight_bytes,
            peak_in_flight_bytes: peak,
            disk_used_bytes: self.writer.with_store(|s| s.stats().used_bytes),
        }
    }

    /// The spill file, for an array made by [`SpillArray::temp_file`].
    pub fn temp_path(&self) -> Option<&Path> {
        self.temp.as_ref().map(TempPath::path)
    }

    /// Panics (with the values) unless the bytes in flight are those of the
    /// chunks in flight and within their bound, every written chunk is in
    /// the grid, and the writer's and store's invariants hold.
    pub fn check_invariants(&self) {
        self.meta.check_invariants();
        {
            let state = self.lock();
            let in_flight: u64 = state.in_flight.iter().map(|c| c.len_bytes).sum();
            assert_eq!(
                state.in_flight_bytes, in_flight,
                "array {}: in-flight bytes out of step with the chunks in flight",
                self.name
            );
            let bound = self
                .inflight_bytes_max
                .max(self.meta.full_chunk_len_bytes() as u64);
            assert!(
                state.peak_in_flight_bytes <= bound,
                "array {}: {} bytes in flight at once, bound {bound}",
                self.name,
                state.peak_in_flight_bytes
            );
            let chunk_count = self.meta.chunk_count();
            for &linear in state.written.keys() {
                assert!(
                    linear < chunk_count,
                    "array {}: chunk {linear} written, grid has {chunk_count}",
                    self.name
                );
            }
        }
        self.writer.check_invariants();
    }

    fn lock(&self) -> MutexGuard<'_, WriteState> {
        // Every change to the state is a single step after any call that
        // can fail, so a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the oldest write in flight and records its outcome.
    fn settle_oldest(&self, state: &mut WriteState) {
        let Some(chunk) = state.in_flight.pop_front() else {
            return;
        };
        state.in_flight_bytes -= chunk.len_bytes;
        match chunk.ticket.wait() {
            Ok(extent) => {
                if let Some(old) = state.written.insert(chunk.linear, extent) {
                    // Written again: the older record is garbage. A free
                    // fails only for an extent that is not live, which
                    // cannot be one the writer just handed out.
                    if let Err(error) = self.writer.free(old) {
                        self.note_failure(
                            state,
                            &chunk.grid,
                            io::ErrorKind::Other,
                            error.to_string(),
                        );
                    }
                }
            }
            Err(error) => {
                let (kind, detail) = self.describe_write_error(&error);
                self.note_failure(state, &chunk.grid, kind, detail);
            }
        }
    }

    fn note_failure(
        &self,
        state: &mut WriteState,
        grid: &[u64],
        kind: io::ErrorKind,
        detail: String,
    ) {
        if state.failure.is_none() {
            state.failure = Some(WriteFailure {
                chunk: grid.to_vec(),
                kind,
                detail,
            });
        }
    }

    /// The error kind and a message naming the figures that matter.
    fn describe_write_error(&self, error: &WriterError) -> (io::ErrorKind, String) {
        if let WriterError::Store { source } = error {
            let (block_bytes, cap) = self.writer.with_store(|s| {
                let stats = s.stats();
                (
                    stats.block_bytes,
                    stats.cap_bytes.unwrap_or(stats.capacity_bytes),
                )
            });
            if let Some((asked, left, cap)) = full_figures(source, block_bytes, cap) {
                return (
                    io::ErrorKind::StorageFull,
                    format!(
                        "disk tier full: asked for {asked} bytes, {left} bytes left of its \
                         {cap}-byte cap ({source})"
                    ),
                );
            }
        }
        (io::ErrorKind::Other, error.to_string())
    }

    fn failure_error(&self, failure: &WriteFailure) -> ArrayError {
        ArrayError::Io {
            array: self.name.clone(),
            chunk: Some(failure.chunk.clone()),
            operation: "spill chunk to the disk tier",
            source: io::Error::new(failure.kind, failure.detail.clone()),
        }
    }
}

impl SpillArray<FileDevice> {
    /// An empty intermediate whose chunks go to a new spill file under
    /// `dir` with room for `cap_bytes` of records (removed when the array
    /// drops), with at most `inflight_bytes_max` bytes of chunks waiting for
    /// the device: heap memory outside the engine's pool, which a caller
    /// under a budget takes out of that budget.
    pub fn temp_file(
        name: impl Into<String>,
        meta: ArrayMeta,
        dir: &Path,
        cap_bytes: u64,
        inflight_bytes_max: u64,
    ) -> Result<SpillArray<FileDevice>, ArrayError> {
        let name = name.into();
        let (store, temp) = temp_store(dir, cap_bytes).map_err(|e| ArrayError::Io {
            array: name.clone(),
            chunk: None,
            operation: "create the spill file",
            source: io::Error::other(e),
        })?;
        Self::with_store(name, meta, store, inflight_bytes_max, Some(temp))
    }
}

impl<D: BlockDevice + 'static> ChunkSink for SpillArray<D> {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn write_chunk(&self, grid_index: &[u64], data: &[u8]) -> Result<(), ArrayError> {
        check_chunk_buffer(&self.name, &self.meta, grid_index, data.len())?;
        let record_meta = RecordMeta {
            dtype: record_dtype(self.meta.dtype()),
            shape: self.meta.chunk_shape_at(grid_index),
        };
        let len_bytes = data.len() as u64;
        let mut state = self.lock();
        if state.closed {
            return Err(ArrayError::Finished {
                array: self.name.clone(),
            });
        }
        // Learn of finished writes (and failures) without waiting, then
        // wait for the oldest while the new chunk would pass the bound.
        while state.in_flight.front().is_some_and(|c| c.ticket.is_ready())
            || (!state.in_flight.is_empty()
                && state.in_flight_bytes + len_bytes > self.inflight_bytes_max)
        {
            self.settle_oldest(&mut state);
        }
        if let Some(failure) = &state.failure {
            return Err(self.failure_error(failure));
        }
        let ticket = self.writer.submit(data.to_vec(), record_meta);
        state.in_flight.push_back(InFlight {
            linear: self.meta.grid_index_to_linear(grid_index),
            grid: grid_index.to_vec(),
            len_bytes,
            ticket,
        });
        state.in_flight_bytes += len_bytes;
        state.peak_in_flight_bytes = state.peak_in_flight_bytes.max(state.in_flight_bytes);
        state.submitted += 1;
        state.submitted_bytes += len_bytes;
        Ok(())
    }

    fn finish(&self) -> Result<(), ArrayError> {
        let mut state = self.lock();
        if self.finished.get().is_some() {
            return Err(ArrayError::Finished {
                array: self.name.clone(),
            });
        }
        state.closed = true;
        while !state.in_flight.is_empty() {
            self.settle_oldest(&mut state);
        }
        if let Some(failure) = &state.failure {
            return Err(self.failure_error(failure));
        }
        self.writer.commit().map_err(|e| ArrayError::Io {
            array: self.name.clone(),
            chunk: None,
            operation: "commit the spill store",
            source: io::Error::other(e),
        })?;
        let written = std::mem::take(&mut state.written);
        self.finished
            .set(written)
            .expect("finish holds the state lock and checked it is unset");
        Ok(())
    }
}

impl<D: BlockDevice + 'static> ChunkSource for SpillArray<D> {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_chunk(&self, grid_index: &[u64], out: &mut [u8]) -> Result<(), ArrayError> {
        let Some(written) = self.finished.get() else {
            return Err(ArrayError::Incomplete {
                array: self.name.clone(),
            });
        };
        check_chunk_buffer(&self.name, &self.meta, grid_index, out.len())?;
        let linear = self.meta.grid_index_to_linear(grid_index);
        let Some(&extent) = written.get(&linear) else {
            return Err(ArrayError::NotFound {
                array: self.name.clone(),
                detail: format!(
                    "chunk {grid_index:?} of this intermediate was never written (an \
                     intermediate is written in full before it is read)"
                ),
            });
        };
        let corrupt = |detail: String| ArrayError::CorruptChunk {
            array: self.name.clone(),
            chunk: grid_index.to_vec(),
            detail,
        };
        let mut buf = lock_bufs(&self.read_bufs).pop().unwrap_or_default();
        let result = match self.writer.get_into(extent, &mut buf) {
            Ok(view) if view.payload().len() == out.len() => {
                out.copy_from_slice(view.payload());
                Ok(())
            }
            Ok(view) => Err(corrupt(format!(
                "spill record at blocks {}..{} holds {} bytes, the chunk has {}",
                extent.start,
                extent.end(),
                view.payload().len(),
                out.len()
            ))),
            Err(error @ StoreError::Record { .. }) => Err(corrupt(error.to_string())),
            Err(error) => Err(ArrayError::Io {
                array: self.name.clone(),
                chunk: Some(grid_index.to_vec()),
                operation: "read spilled chunk",
                source: io::Error::other(error),
            }),
        };
        let mut kept = lock_bufs(&self.read_bufs);
        if kept.len() < READ_BUFS_KEPT_MAX {
            kept.push(buf);
        }
        result
    }
}

fn lock_bufs(bufs: &Mutex<Vec<ReadBuf>>) -> MutexGuard<'_, Vec<ReadBuf>> {
    // A list of buffers: a panic elsewhere cannot leave it half-changed.
    bufs.lock().unwrap_or_else(|e| e.into_inner())
}
