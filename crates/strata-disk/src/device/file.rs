//! [`FileDevice`]: a block device over a file with positional I/O.
//!
//! With [`FileOptions::direct`] the file is opened with `O_DIRECT` (Linux),
//! bypassing the page cache. `O_DIRECT` needs the buffer address, the file
//! offset and the length aligned to the device's logical block size; offsets
//! and lengths are whole blocks already, and buffers are copied through an
//! internal aligned bounce buffer when the caller's is not aligned.
//!
//! Fallback: some filesystems (older tmpfs, some FUSE and network
//! filesystems) refuse `O_DIRECT` at `open(2)` with `EINVAL`, and a device
//! whose logical sector is larger than the chosen block size refuses the
//! first aligned read with `EINVAL`. In both cases the file is reopened with
//! buffered I/O and [`FileDevice::is_direct`] reports `false`; no error
//! reaches the caller. Any other error is returned.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{check_access, check_geometry, BlockDevice, DeviceError, BLOCK_BYTES_MAX};

/// The largest bounce buffer used for `O_DIRECT` I/O from unaligned caller
/// buffers; larger accesses are split into pieces of this size.
pub const DIRECT_BOUNCE_BYTES_MAX: u64 = 1 << 20;

// A piece must hold at least one whole block.
const _: () = assert!(DIRECT_BOUNCE_BYTES_MAX >= BLOCK_BYTES_MAX);
const _: () = assert!(DIRECT_BOUNCE_BYTES_MAX.is_power_of_two());

/// How to open a [`FileDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOptions {
    /// Ask for `O_DIRECT` (bypass the page cache). Falls back to buffered
    /// I/O where the filesystem refuses it; see the module documentation.
    pub direct: bool,
}

/// A block device over a regular file. Reads and writes are positional
/// (`pread`/`pwrite`), so the device is shared between threads without a
/// cursor; [`flush`](BlockDevice::flush) is `fdatasync`.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    len_bytes: u64,
    block_bytes: u64,
    direct: bool,
    /// Over-allocated storage for the aligned bounce buffer (`O_DIRECT` only);
    /// grown on demand up to `DIRECT_BOUNCE_BYTES_MAX + block_bytes`.
    bounce: Mutex<Vec<u8>>,
}

impl FileDevice {
    /// Creates the file at `path` (truncating an existing one) with
    /// `len_bytes` of zeros in blocks of `block_bytes`.
    pub fn create(
        path: impl AsRef<Path>,
        len_bytes: u64,
        block_bytes: u64,
        options: FileOptions,
    ) -> Result<FileDevice, DeviceError> {
        let path = path.as_ref();
        check_geometry(len_bytes, block_bytes)?;
        let io_error = |source| DeviceError::Io {
            op: "create",
            offset_bytes: 0,
            len_bytes,
            path: Some(path.to_path_buf()),
            source,
        };
        let mut open = OpenOptions::new();
        open.read(true).write(true).create(true).truncate(true);
        let file = open.open(path).map_err(io_error)?;
        file.set_len(len_bytes).map_err(io_error)?;
        drop(file);
        // Reopen so the direct/buffered decision is made in one place.
        Self::open_with_len(path, len_bytes, block_bytes, options, "create")
    }

    /// Opens the existing file at `path`; its length must be a multiple of
    /// `block_bytes`.
    pub fn open(
        path: impl AsRef<Path>,
        block_bytes: u64,
        options: FileOptions,
    ) -> Result<FileDevice, DeviceError> {
        let path = path.as_ref();
        let len_bytes = std::fs::metadata(path)
            .map_err(|source| DeviceError::Io {
                op: "open",
                offset_bytes: 0,
                len_bytes: 0,
                path: Some(path.to_path_buf()),
                source,
            })?
            .len();
        check_geometry(len_bytes, block_bytes)?;
        Self::open_with_len(path, len_bytes, block_bytes, options, "open")
    }

    fn open_with_len(
        path: &Path,
        len_bytes: u64,
        block_bytes: u64,
        options: FileOptions,
        op: &'static str,
    ) -> Result<FileDevice, DeviceError> {
        let (file, direct) = open_with_fallback(
            options.direct,
            || open_file(path, true),
            || open_file(path, false),
            |file| probe_direct(file, block_bytes, len_bytes),
        )
        .map_err(|source| DeviceError::Io {
            op,
            offset_bytes: 0,
            len_bytes,
            path: Some(path.to_path_buf()),
            source,
        })?;
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            len_bytes,
            block_bytes,
            direct,
            bounce: Mutex::new(Vec::new()),
        })
    }

    /// Whether I/O bypasses the page cache (`O_DIRECT` was asked for and the
    /// filesystem accepted it).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The file's path as given when opening.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Panics (with the values) if the file's length or the geometry is off.
    pub fn check_invariants(&self) {
        assert!(
            check_geometry(self.len_bytes, self.block_bytes).is_ok(),
            "FileDevice geometry {} bytes / {} byte blocks is invalid",
            self.len_bytes,
            self.block_bytes
        );
        if let Ok(meta) = self.file.metadata() {
            assert_eq!(
                meta.len(),
                self.len_bytes,
                "file {} is {} bytes, the device expects {}",
                self.path.display(),
                meta.len(),
                self.len_bytes
            );
        }
    }

    fn io_error(
        &self,
        op: &'static str,
        offset_bytes: u64,
        len_bytes: u64,
        source: io::Error,
    ) -> DeviceError {
        DeviceError::Io {
            op,
            offset_bytes,
            len_bytes,
            path: Some(self.path.clone()),
            source,
        }
    }

    fn is_aligned(&self, address: *const u8) -> bool {
        (address as usize).is_multiple_of(self.block_bytes as usize)
    }

    /// Runs `io(piece_offset_bytes, aligned_piece, done_bytes)` over an access
    /// of `len` bytes in pieces of at most `DIRECT_BOUNCE_BYTES_MAX`, each in
    /// the aligned bounce buffer; `io` copies caller data in or out of the
    /// piece, which starts `done_bytes` into the access.
    fn with_bounce(
        &self,
        offset_bytes: u64,
        len: usize,
        mut io: impl FnMut(u64, &mut [u8], usize) -> io::Result<()>,
    ) -> io::Result<()> {
        let block = self.block_bytes as usize;
        let piece_max = DIRECT_BOUNCE_BYTES_MAX as usize;
        let mut storage = self.bounce.lock().unwrap_or_else(|e| e.into_inner());
        let needed = len.min(piece_max) + block;
        if storage.len() < needed {
            storage.resize(needed, 0);
        }
        // Alignment of a byte pointer is always computable; the offset is
        // below `block` because the storage has `block` bytes of slack.
        let skew = storage.as_ptr().align_offset(block);
        assert!(
            skew < block,
            "bounce buffer skew {skew} not below block size {block}"
        );
        let mut done = 0usize;
        while done < len {
            let piece = (len - done).min(piece_max);
            io(
                offset_bytes + done as u64,
                &mut storage[skew..skew + piece],
                done,
            )?;
            done += piece;
        }
        Ok(())
    }
}

fn open_file(path: &Path, direct: bool) -> io::Result<File> {
    let mut open = OpenOptions::new();
    open.read(true).write(true);
    if direct {
        #[cfg(target_os = "linux")]
        open.custom_flags(libc::O_DIRECT);
        #[cfg(not(target_os = "linux"))]
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    open.open(path)
}

/// Reads the first block through an aligned buffer: a filesystem that
/// accepted `O_DIRECT` at open may still refuse I/O at this block size.
fn probe_direct(file: &File, block_bytes: u64, len_bytes: u64) -> io::Result<()> {
    if len_bytes == 0 {
        return Ok(());
    }
    let block = block_bytes as usize;
    let mut storage = vec![0u8; 2 * block];
    let skew = storage.as_ptr().align_offset(block);
    assert!(
        skew < block,
        "probe buffer skew {skew} not below block size {block}"
    );
    file.read_exact_at(&mut storage[skew..skew + block], 0)
}

fn is_einval(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EINVAL)
}

/// Opens with `O_DIRECT` when asked, falling back to buffered I/O when the
/// open or the probe fails with `EINVAL`. Returns the file and whether it is
/// direct. Split out (with the opens as closures) so the fallback can be
/// tested on filesystems that do accept `O_DIRECT`.
fn open_with_fallback(
    want_direct: bool,
    open_direct: impl FnOnce() -> io::Result<File>,
    open_buffered: impl FnOnce() -> io::Result<File>,
    probe: impl FnOnce(&File) -> io::Result<()>,
) -> io::Result<(File, bool)> {
    if want_direct {
        match open_direct() {
            Ok(file) => match probe(&file) {
                Ok(()) => return Ok((file, true)),
                Err(e) if is_einval(&e) => {}
                Err(e) => return Err(e),
            },
            Err(e) if is_einval(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((open_buffered()?, false))
}

impl BlockDevice for FileDevice {
    fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let len_bytes = buf.len() as u64;
        check_access(offset_bytes, len_bytes, self.block_bytes, self.len_bytes)?;
        let result = if !self.direct || self.is_aligned(buf.as_ptr()) {
            self.file.read_exact_at(buf, offset_bytes)
        } else {
            self.with_bounce(offset_bytes, buf.len(), |piece_offset, piece, done| {
                self.file.read_exact_at(piece, piece_offset)?;
                buf[done..done + piece.len()].copy_from_slice(piece);
                Ok(())
            })
        };
        result.map_err(|e| self.io_error("read", offset_bytes, len_bytes, e))
    }

    fn write_at(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        let len_bytes = data.len() as u64;
        check_access(offset_bytes, len_bytes, self.block_bytes, self.len_bytes)?;
        let result = if !self.direct || self.is_aligned(data.as_ptr()) {
            self.file.write_all_at(data, offset_bytes)
        } else {
            self.with_bounce(offset_bytes, data.len(), |piece_offset, piece, done| {
                piece.copy_from_slice(&data[done..done + piece.len()]);
                self.file.write_all_at(piece, piece_offset)
            })
        };
        result.map_err(|e| self.io_error("write", offset_bytes, len_bytes, e))
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.file
            .sync_data()
            .map_err(|e| self.io_error("flush", 0, self.len_bytes, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "strata-disk-device-unit-{}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn einval_at_open_falls_back_to_buffered() {
        let path = temp_path("fallback-open");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let (_, direct) = open_with_fallback(
            true,
            || Err(io::Error::from_raw_os_error(libc::EINVAL)),
            || open_file(&path, false),
            |_| panic!("probe must not run when the open failed"),
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!direct, "EINVAL at open must fall back to buffered I/O");
    }

    #[test]
    fn einval_at_probe_falls_back_to_buffered() {
        let path = temp_path("fallback-probe");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let (_, direct) = open_with_fallback(
            true,
            || open_file(&path, false),
            || open_file(&path, false),
            |_| Err(io::Error::from_raw_os_error(libc::EINVAL)),
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            !direct,
            "EINVAL at the probe must fall back to buffered I/O"
        );
    }

    #[test]
    fn other_errors_are_not_swallowed() {
        let result = open_with_fallback(
            true,
            || Err(io::Error::from_raw_os_error(libc::EACCES)),
            || panic!("must not fall back on EACCES"),
            |_| Ok(()),
        );
        let error = result.expect_err("EACCES must be returned");
        assert_eq!(error.raw_os_error(), Some(libc::EACCES), "{error}");
    }

    #[test]
    fn not_asked_opens_buffered() {
        let path = temp_path("buffered");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let (_, direct) = open_with_fallback(
            false,
            || panic!("direct open must not be tried"),
            || open_file(&path, false),
            |_| panic!("probe must not run"),
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!direct);
    }
}
