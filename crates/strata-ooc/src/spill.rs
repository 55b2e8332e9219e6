//! [`StoreSpill`]: the buffer manager's [`SpillTarget`] over the disk tier,
//! an [`ExtentStore`] of `strata-disk`.
//!
//! - [`spill`](SpillTarget::spill) puts the chunk as a spill record (codec
//!   chosen per record by [`CodecPolicy::Auto`], xxh3 checksums), dtype
//!   `Bytes`; [`StoreSpill::spill_typed`] records the real dtype and shape.
//! - [`reload`](SpillTarget::reload) reads it back with
//!   [`ExtentStore::get_into`], which verifies both checksums before a byte
//!   is returned: a mismatch is [`OocError::Spill`] naming the chunk, the
//!   extent and the expected and actual checksums, never wrong bytes.
//! - [`release`](SpillTarget::release) frees the record. A freed record's
//!   blocks only return after a commit of the store; rather than commit
//!   (four device flushes) on every release, a put that finds the tier full
//!   commits once and retries, so space is reclaimed when it is needed.
//! - A full tier (the cap reached, or no free blocks left) is
//!   [`OocError::SpillFull`], naming the bytes asked for and left.
//!
//! The store sits behind a read-write lock: reloads run in parallel, puts
//! and frees one at a time. Spilled intermediates are scratch: nothing is
//! committed for durability, and [`StoreSpill::temp_file`] removes its file
//! when dropped.
//!
//! Memory outside the budget: up to [`READ_BUFS_KEPT_MAX`] read buffers are
//! kept between reloads, each about twice the largest record read with it
//! (the block-aligned read window and the decompression buffer), plus one
//! such buffer per reload in flight. Puts encode into the store's own
//! scratch buffer (one record long).
//!
//! ```
//! use strata_disk::device::MemDevice;
//! use strata_ooc::bufmgr::SpillTarget;
//! use strata_ooc::policy::ChunkKey;
//! use strata_ooc::spill::StoreSpill;
//!
//! let device = MemDevice::new(1024 * 4096, 4096)?;
//! let spill = StoreSpill::create(device, Some(64 * 4096))?;
//! let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
//! let handle = spill.spill(ChunkKey(7), &bytes)?;
//! let mut back = vec![0u8; bytes.len()];
//! spill.reload(ChunkKey(7), handle, &mut back)?;
//! assert_eq!(back, bytes);
//! spill.release(ChunkKey(7), handle)?;
//! assert_eq!(spill.stats().records_live, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use strata_disk::device::{BlockDevice, DeviceError, FileDevice, FileOptions};
use strata_disk::record::{ChecksumKind, CodecPolicy, Dtype, RecordMeta};
use strata_disk::store::{Extent, ExtentStore, Layout, ReadBuf, StoreConfig, StoreError};

use crate::bufmgr::{SpillHandle, SpillTarget};
use crate::error::OocError;
use crate::policy::ChunkKey;

/// Block size of the spill files [`StoreSpill::temp_file`] and
/// [`SpillArray::temp_file`](crate::spill_array::SpillArray::temp_file)
/// create: a page, the unit filesystems and `O_DIRECT` work in.
pub const SPILL_BLOCK_BYTES: u64 = 4096;
/// Spare blocks reserved for bad-block remapping in a store created here. A
/// spill file lives for one run; a handful of remaps is plenty before the
/// device is better given up on.
pub const SPILL_SPARE_BLOCKS: u64 = 16;
/// Read buffers [`StoreSpill`] keeps for reuse between reloads.
pub const READ_BUFS_KEPT_MAX: usize = 4;
/// Names tried before [`temp_store`] gives up on finding a free one.
pub const TEMP_NAME_ATTEMPTS_MAX: u32 = 64;

const _: () = assert!(SPILL_BLOCK_BYTES.is_power_of_two());
const _: () = assert!(
    SPILL_BLOCK_BYTES >= strata_disk::device::BLOCK_BYTES_MIN
        && SPILL_BLOCK_BYTES <= strata_disk::device::BLOCK_BYTES_MAX
);
const _: () = assert!(READ_BUFS_KEPT_MAX > 0 && TEMP_NAME_ATTEMPTS_MAX > 0);

/// Why a spill store could not be set up.
#[non_exhaustive]
#[derive(Debug)]
pub enum SpillError {
    /// The spill file could not be created.
    TempFile {
        /// The file (or the directory, if no name was free).
        path: PathBuf,
        /// The device's error.
        source: DeviceError,
    },
    /// The store could not be formatted on the device.
    Store {
        /// The file, where there is one.
        path: Option<PathBuf>,
        /// The store's error.
        source: StoreError,
    },
    /// The device's length does not fit in `u64` once the metadata area is
    /// added to the cap.
    CapTooLarge {
        /// The cap asked for.
        cap_bytes: u64,
    },
}

impl fmt::Display for SpillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpillError::TempFile { path, source } => {
                write!(f, "cannot create spill file {}: {source}", path.display())
            }
            SpillError::Store { path, source } => match path {
                Some(path) => write!(
                    f,
                    "cannot set up spill store in {}: {source}",
                    path.display()
                ),
                None => write!(f, "cannot set up spill store: {source}"),
            },
            SpillError::CapTooLarge { cap_bytes } => write!(
                f,
                "spill cap of {cap_bytes} bytes plus the store's metadata does not fit a device"
            ),
        }
    }
}

impl std::error::Error for SpillError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpillError::TempFile { source, .. } => Some(source),
            SpillError::Store { source, .. } => Some(source),
            SpillError::CapTooLarge { .. } => None,
        }
    }
}

/// A file removed when this drops (errors removing it are ignored: the
/// file is scratch, and a drop cannot report them).
#[derive(Debug)]
pub struct TempPath {
    path: PathBuf,
}

impl TempPath {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The store configuration used for spills: codec chosen per record,
/// xxh3 checksums, `cap_bytes` of records at most.
pub fn spill_store_config(cap_bytes: Option<u64>) -> StoreConfig {
    StoreConfig {
        cap_bytes,
        policy: CodecPolicy::Auto,
        checksum: ChecksumKind::Xxh3,
        spare_blocks: SPILL_SPARE_BLOCKS,
    }
}

/// Blocks of a device whose data area holds at least `cap_bytes`.
fn device_blocks_for(cap_bytes: u64) -> Result<u64, SpillError> {
    let too_large = || SpillError::CapTooLarge { cap_bytes };
    let data_blocks = cap_bytes.div_ceil(SPILL_BLOCK_BYTES).max(1);
    let mut device_blocks = data_blocks;
    // The metadata area grows (slowly) with the device: settle in a few
    // rounds.
    loop {
        let layout = Layout::compute(device_blocks, SPILL_BLOCK_BYTES, SPILL_SPARE_BLOCKS);
        let data_start = match layout {
            Ok(layout) if layout.data_blocks() >= data_blocks => return Ok(device_blocks),
            Ok(layout) => layout.data_start,
            Err(StoreError::DeviceTooSmall { needed_blocks, .. }) => needed_blocks,
            Err(_) => return Err(too_large()),
        };
        device_blocks = data_blocks.checked_add(data_start).ok_or_else(too_large)?;
        device_blocks
            .checked_mul(SPILL_BLOCK_BYTES)
            .ok_or_else(too_large)?;
    }
}

/// Creates a spill file in `dir` (a fresh name, removed when the returned
/// [`TempPath`] drops) with room for `cap_bytes` of records, and formats a
/// store capped at `cap_bytes` on it. The file is sparse: blocks take disk
/// space only once written.
pub fn temp_store(
    dir: &Path,
    cap_bytes: u64,
) -> Result<(ExtentStore<FileDevice>, TempPath), SpillError> {
    static NEXT_NAME: AtomicU64 = AtomicU64::new(0);
    let device_blocks = device_blocks_for(cap_bytes)?;
    let mut attempt = 0;
    let path = loop {
        let number = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("strata-spill-{}-{number}.tmp", std::process::id()));
        // Reserve the name first so an existing file is never truncated.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => break path,
            Err(error)
                if error.kind() == std::io::ErrorKind::AlreadyExists
                    && attempt + 1 < TEMP_NAME_ATTEMPTS_MAX =>
            {
                attempt += 1;
            }
            Err(source) => {
                return Err(SpillError::TempFile {
                    path,
                    source: DeviceError::Io {
                        op: "create",
                        offset_bytes: 0,
                        len_bytes: 0,
                        path: Some(dir.to_path_buf()),
                        source,
                    },
                })
            }
        }
    };
    let temp = TempPath { path };
    let device = FileDevice::create(
        temp.path(),
        device_blocks * SPILL_BLOCK_BYTES,
        SPILL_BLOCK_BYTES,
        FileOptions::default(),
    )
    .map_err(|source| SpillError::TempFile {
        path: temp.path().to_path_buf(),
        source,
    })?;
    let store =
        ExtentStore::create(device, spill_store_config(Some(cap_bytes))).map_err(|source| {
            SpillError::Store {
                path: Some(temp.path().to_path_buf()),
                source,
            }
        })?;
    Ok((store, temp))
}

/// The bytes asked for, left, and the cap, when `error` says the store is
/// full (`None` for any other error, and for a fragmented store with enough
/// free blocks but no run long enough: its own message says that better).
pub(crate) fn full_figures(
    error: &StoreError,
    block_bytes: u64,
    capacity_bytes: u64,
) -> Option<(u64, u64, u64)> {
    match *error {
        StoreError::CapExceeded {
            requested_bytes,
            used_bytes,
            cap_bytes,
        } => Some((
            requested_bytes,
            cap_bytes.saturating_sub(used_bytes),
            cap_bytes,
        )),
        StoreError::NoSpace {
            requested_blocks,
            free_blocks,
            ..
        } if free_blocks < requested_blocks => Some((
            requested_blocks * block_bytes,
            free_blocks * block_bytes,
            capacity_bytes,
        )),
        _ => None,
    }
}

/// The disk tier's cap: the store's session cap, or its data area.
fn cap_of<D: BlockDevice>(store: &ExtentStore<D>) -> u64 {
    let stats = store.stats();
    stats.cap_bytes.unwrap_or(stats.capacity_bytes)
}

/// Figures of a [`StoreSpill`]; see [`StoreSpill::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpillStats {
    /// Chunk bytes written (before compression).
    pub spilled_bytes: u64,
    /// Chunk bytes read back (after decompression).
    pub reloaded_bytes: u64,
    /// Successful spills.
    pub spills: u64,
    /// Successful reloads.
    pub reloads: u64,
    /// Successful releases.
    pub releases: u64,
    /// Records spilled and not released.
    pub records_live: u64,
    /// Commits made to reclaim released records' blocks.
    pub reclaim_commits: u64,
    /// Bytes of the disk tier allocated (whole blocks; released records
    /// count until the next reclaim).
    pub disk_used_bytes: u64,
    /// The disk tier's cap in bytes.
    pub disk_cap_bytes: u64,
    /// Reloads refused because a record failed its checksum.
    pub checksum_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    spilled_bytes: AtomicU64,
    reloaded_bytes: AtomicU64,
    spills: AtomicU64,
    reloads: AtomicU64,
    releases: AtomicU64,
    reclaim_commits: AtomicU64,
}

/// A [`SpillTarget`] over an [`ExtentStore`]. See the module documentation.
pub struct StoreSpill<D: BlockDevice> {
    store: RwLock<ExtentStore<D>>,
    read_bufs: Mutex<Vec<ReadBuf>>,
    counters: Counters,
    /// Declared after the store, so the file goes once the store is closed.
    temp: Option<TempPath>,
}

impl<D: BlockDevice> fmt::Debug for StoreSpill<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSpill")
            .field("stats", &self.stats())
            .field("temp", &self.temp)
            .finish()
    }
}

impl<D: BlockDevice> StoreSpill<D> {
    /// Spills into `store` (records are put with the store's own codec
    /// policy and checksum).
    pub fn new(store: ExtentStore<D>) -> StoreSpill<D> {
        StoreSpill {
            store: RwLock::new(store),
            read_bufs: Mutex::new(Vec::new()),
            counters: Counters::default(),
            temp: None,
        }
    }

    /// Formats `device` as a spill store ([`spill_store_config`]) holding
    /// at most `cap_bytes` of records.
    pub fn create(device: D, cap_bytes: Option<u64>) -> Result<StoreSpill<D>, SpillError> {
        let store = ExtentStore::create(device, spill_store_config(cap_bytes))
            .map_err(|source| SpillError::Store { path: None, source })?;
        Ok(StoreSpill::new(store))
    }

    /// As [`SpillTarget::spill`], recording `meta` (the chunk's dtype and
    /// shape) in the record instead of `Bytes`.
    pub fn spill_typed(
        &self,
        key: ChunkKey,
        bytes: &[u8],
        meta: &RecordMeta,
    ) -> Result<SpillHandle, OocError> {
        let mut store = self.write();
        let mut put = store.put(bytes, meta);
        if matches!(
            put,
            Err(StoreError::CapExceeded { .. } | StoreError::NoSpace { .. })
        ) && store.stats().pending_free_bytes > 0
        {
            // Released records hold blocks until a commit: reclaim them.
            store.commit().map_err(|e| OocError::Spill {
                key,
                detail: format!("committing to reclaim released records: {e}"),
            })?;
            self.counters
                .reclaim_commits
                .fetch_add(1, Ordering::Relaxed);
            put = store.put(bytes, meta);
        }
        let extent = put.map_err(|error| {
            match full_figures(&error, store.layout().block_bytes, cap_of(&store)) {
                Some((asked_bytes, left_bytes, cap_bytes)) => OocError::SpillFull {
                    key,
                    asked_bytes,
                    left_bytes,
                    cap_bytes,
                },
                None => OocError::Spill {
                    key,
                    detail: format!("writing {} bytes to the disk tier: {error}", bytes.len()),
                },
            }
        })?;
        drop(store);
        self.counters
            .spilled_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.counters.spills.fetch_add(1, Ordering::Relaxed);
        Ok(SpillHandle {
            start: extent.start,
            len: extent.len,
            bytes: bytes.len() as u64,
        })
    }

    /// Current figures.
    pub fn stats(&self) -> SpillStats {
        let store_stats = self.read().stats();
        let c = &self.counters;
        SpillStats {
            spilled_bytes: c.spilled_bytes.load(Ordering::Relaxed),
            reloaded_bytes: c.reloaded_bytes.load(Ordering::Relaxed),
            spills: c.spills.load(Ordering::Relaxed),
            reloads: c.reloads.load(Ordering::Relaxed),
            releases: c.releases.load(Ordering::Relaxed),
            records_live: store_stats.records,
            reclaim_commits: c.reclaim_commits.load(Ordering::Relaxed),
            disk_used_bytes: store_stats.used_bytes,
            disk_cap_bytes: store_stats.cap_bytes.unwrap_or(store_stats.capacity_bytes),
            checksum_failures: store_stats.checksum_failures,
        }
    }

    /// The spill file, for a store made by [`StoreSpill::temp_file`].
    pub fn temp_path(&self) -> Option<&Path> {
        self.temp.as_ref().map(TempPath::path)
    }

    /// Runs `inspect` on the store under its read lock.
    pub fn with_store<R>(&self, inspect: impl FnOnce(&ExtentStore<D>) -> R) -> R {
        inspect(&self.read())
    }

    /// Panics (with the values) unless the store's invariants hold and the
    /// live records are the spills not released. Call it with no spill or
    /// release in flight.
    pub fn check_invariants(&self) {
        let store = self.read();
        store.check_invariants();
        let spills = self.counters.spills.load(Ordering::Relaxed);
        let releases = self.counters.releases.load(Ordering::Relaxed);
        let records = store.stats().records;
        assert_eq!(
            spills - releases,
            records,
            "{spills} spills - {releases} releases != {records} live records"
        );
        let kept = lock(&self.read_bufs).len();
        assert!(
            kept <= READ_BUFS_KEPT_MAX,
            "{kept} read buffers kept, at most {READ_BUFS_KEPT_MAX}"
        );
    }

    fn read(&self) -> RwLockReadGuard<'_, ExtentStore<D>> {
        // The store leaves itself consistent (or flagged for reopening)
        // before anything that can panic.
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, ExtentStore<D>> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoreSpill<FileDevice> {
    /// A spill store in a new file under `dir` with room for `cap_bytes` of
    /// records (see [`temp_store`]); the file is removed when the store
    /// drops.
    pub fn temp_file(dir: &Path, cap_bytes: u64) -> Result<StoreSpill<FileDevice>, SpillError> {
        let (store, temp) = temp_store(dir, cap_bytes)?;
        let mut spill = StoreSpill::new(store);
        spill.temp = Some(temp);
        Ok(spill)
    }
}

impl<D: BlockDevice> SpillTarget for StoreSpill<D> {
    fn spill(&self, key: ChunkKey, bytes: &[u8]) -> Result<SpillHandle, OocError> {
        let meta = RecordMeta {
            dtype: Dtype::Bytes,
            shape: vec![bytes.len() as u64],
        };
        self.spill_typed(key, bytes, &meta)
    }

    fn reload(&self, key: ChunkKey, handle: SpillHandle, out: &mut [u8]) -> Result<(), OocError> {
        if out.len() as u64 != handle.bytes {
            return Err(OocError::Spill {
                key,
                detail: format!(
                    "reload into a buffer of {} bytes, the record at blocks {}..{} holds {}",
                    out.len(),
                    handle.start,
                    handle.start + handle.len,
                    handle.bytes
                ),
            });
        }
        let extent = Extent {
            start: handle.start,
            len: handle.len,
        };
        let mut buf = lock(&self.read_bufs).pop().unwrap_or_default();
        let result = match self.read().get_into(extent, &mut buf) {
            Ok(view) if view.payload().len() == out.len() => {
                out.copy_from_slice(view.payload());
                Ok(())
            }
            Ok(view) => Err(OocError::Spill {
                key,
                detail: format!(
                    "the record at blocks {}..{} holds {} bytes, {} expected",
                    extent.start,
                    extent.end(),
                    view.payload().len(),
                    out.len()
                ),
            }),
            Err(error) => Err(OocError::Spill {
                key,
                detail: format!("reading it back: {error}"),
            }),
        };
        let mut kept = lock(&self.read_bufs);
        if kept.len() < READ_BUFS_KEPT_MAX {
            kept.push(buf);
        }
        drop(kept);
        result?;
        self.counters
            .reloaded_bytes
            .fetch_add(handle.bytes, Ordering::Relaxed);
        self.counters.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, key: ChunkKey, handle: SpillHandle) -> Result<(), OocError> {
        let extent = Extent {
            start: handle.start,
            len: handle.len,
        };
        self.write().free(extent).map_err(|error| OocError::Spill {
            key,
            detail: format!("releasing it: {error}"),
        })?;
        self.counters.releases.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data (a list of buffers): a panic elsewhere cannot leave it
    // half-changed.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
