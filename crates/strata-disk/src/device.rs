//! Block devices: the [`BlockDevice`] trait and three implementations.
//!
//! - [`FileDevice`]: a regular file (or anything `open(2)` accepts) with
//!   positional I/O and optional `O_DIRECT`, falling back to buffered I/O
//!   where the filesystem refuses it.
//! - [`MemDevice`]: a byte array in memory, for tests and benchmarks.
//! - [`FaultyDevice`]: a wrapper that keeps unflushed writes volatile and
//!   injects faults (I/O errors, bit flips, torn writes, crashes) so the
//!   layers above can be tested against them.
//!
//! Every access covers whole blocks: the offset and the length are multiples
//! of [`BlockDevice::block_bytes`] and the range lies inside the device.
//! Anything else is refused with [`DeviceError::Misaligned`] or
//! [`DeviceError::OutOfRange`] before any byte moves.
//!
//! ```
//! use strata_disk::device::{BlockDevice, DeviceError, MemDevice};
//!
//! let device = MemDevice::new(8 * 4096, 4096).unwrap();
//! device.write_at(4096, &[7u8; 4096]).unwrap();
//! let mut block = vec![0u8; 4096];
//! device.read_at(4096, &mut block).unwrap();
//! assert!(block.iter().all(|&b| b == 7));
//! assert!(matches!(
//!     device.read_at(100, &mut block),
//!     Err(DeviceError::Misaligned { offset_bytes: 100, .. })
//! ));
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

mod faulty;
mod file;
mod mem;

pub use faulty::{Fault, FaultStats, FaultyDevice};
pub use file::{FileDevice, FileOptions};
pub use mem::MemDevice;

/// The smallest supported block size: the traditional disk sector.
pub const BLOCK_BYTES_MIN: u64 = 512;
/// The largest supported block size. Bounds the `O_DIRECT` bounce buffer of
/// [`FileDevice`], which must hold at least one block.
pub const BLOCK_BYTES_MAX: u64 = 1 << 20;

const _: () = assert!(BLOCK_BYTES_MIN.is_power_of_two() && BLOCK_BYTES_MAX.is_power_of_two());
const _: () = assert!(BLOCK_BYTES_MIN <= BLOCK_BYTES_MAX);

/// A fixed-size array of blocks addressed by byte offset.
///
/// Reads and writes cover whole blocks inside the device. Writes may sit in
/// a volatile cache until [`flush`](BlockDevice::flush) returns; only
/// flushed data is guaranteed to survive a crash.
pub trait BlockDevice: Send + Sync {
    /// Bytes per block: a power of two in
    /// [`BLOCK_BYTES_MIN`]`..=`[`BLOCK_BYTES_MAX`].
    fn block_bytes(&self) -> u64;

    /// Device length in bytes, a multiple of the block size.
    fn len_bytes(&self) -> u64;

    /// Fills `buf` with the bytes at `offset_bytes..offset_bytes + buf.len()`.
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError>;

    /// Stores `data` at `offset_bytes..offset_bytes + data.len()`.
    fn write_at(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), DeviceError>;

    /// Device length in blocks.
    fn len_blocks(&self) -> u64 {
        self.len_bytes() / self.block_bytes()
    }
}

/// Checks that an access of `len_bytes` at `offset_bytes` covers whole blocks
/// inside a device of `device_bytes`. Alignment is checked first.
pub fn check_access(
    offset_bytes: u64,
    len_bytes: u64,
    block_bytes: u64,
    device_bytes: u64,
) -> Result<(), DeviceError> {
    if !offset_bytes.is_multiple_of(block_bytes) || !len_bytes.is_multiple_of(block_bytes) {
        return Err(DeviceError::Misaligned {
            offset_bytes,
            len_bytes,
            block_bytes,
        });
    }
    match offset_bytes.checked_add(len_bytes) {
        Some(end) if end <= device_bytes => Ok(()),
        _ => Err(DeviceError::OutOfRange {
            offset_bytes,
            len_bytes,
            device_bytes,
        }),
    }
}

/// Checks a device geometry: the block size is a power of two in
/// [`BLOCK_BYTES_MIN`]`..=`[`BLOCK_BYTES_MAX`] and the length a multiple of it.
pub fn check_geometry(len_bytes: u64, block_bytes: u64) -> Result<(), DeviceError> {
    let reason = if !block_bytes.is_power_of_two() {
        "the block size is not a power of two"
    } else if block_bytes < BLOCK_BYTES_MIN {
        "the block size is below BLOCK_BYTES_MIN (512)"
    } else if block_bytes > BLOCK_BYTES_MAX {
        "the block size is above BLOCK_BYTES_MAX (1 MiB)"
    } else if !len_bytes.is_multiple_of(block_bytes) {
        "the length is not a multiple of the block size"
    } else if usize::try_from(len_bytes).is_err() {
        "the length does not fit in the address space"
    } else {
        return Ok(());
    };
    Err(DeviceError::InvalidGeometry {
        len_bytes,
        block_bytes,
        reason,
    })
}

/// Why a device operation failed. A refused access (misaligned, out of
/// range, crashed, injected fault) changes nothing.
#[non_exhaustive]
#[derive(Debug)]
pub enum DeviceError {
    /// The offset or the length is not a multiple of the block size.
    Misaligned {
        /// Offset of the access.
        offset_bytes: u64,
        /// Length of the access.
        len_bytes: u64,
        /// The device's block size.
        block_bytes: u64,
    },
    /// The access ends past the end of the device.
    OutOfRange {
        /// Offset of the access.
        offset_bytes: u64,
        /// Length of the access.
        len_bytes: u64,
        /// The device's length.
        device_bytes: u64,
    },
    /// A device cannot be built with this geometry.
    InvalidGeometry {
        /// Requested (or found) device length.
        len_bytes: u64,
        /// Requested block size.
        block_bytes: u64,
        /// Which rule is broken.
        reason: &'static str,
    },
    /// The operating system reported an error.
    Io {
        /// What was being done: `"open"`, `"create"`, `"read"`, `"write"`, `"flush"`.
        op: &'static str,
        /// Offset of the access (0 for whole-file operations).
        offset_bytes: u64,
        /// Length of the access (0 for whole-file operations).
        len_bytes: u64,
        /// The file, where there is one.
        path: Option<PathBuf>,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A [`FaultyDevice`] failed the operation on purpose.
    InjectedFault {
        /// `"read"`, `"write"` or `"flush"`.
        op: &'static str,
        /// The faulty block, or `None` for a fault not tied to a block
        /// (a flush, or [`Fault::ErrorAfterOps`]).
        block: Option<u64>,
    },
    /// The [`FaultyDevice`] was crashed and not yet recovered.
    Crashed,
    /// A fault cannot be injected: its block or bit lies outside the device.
    InvalidFault {
        /// The fault asked for.
        fault: Fault,
        /// The device's length in blocks.
        device_blocks: u64,
        /// The device's block size.
        block_bytes: u64,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Misaligned {
                offset_bytes,
                len_bytes,
                block_bytes,
            } => write!(
                f,
                "misaligned access: {len_bytes} bytes at offset {offset_bytes} \
                 (block size {block_bytes} bytes)"
            ),
            DeviceError::OutOfRange {
                offset_bytes,
                len_bytes,
                device_bytes,
            } => write!(
                f,
                "access out of range: {len_bytes} bytes at offset {offset_bytes} \
                 (device length {device_bytes} bytes)"
            ),
            DeviceError::InvalidGeometry {
                len_bytes,
                block_bytes,
                reason,
            } => write!(
                f,
                "invalid device geometry: {len_bytes} bytes in blocks of {block_bytes} bytes: {reason}"
            ),
            DeviceError::Io {
                op,
                offset_bytes,
                len_bytes,
                path,
                source,
            } => {
                write!(
                    f,
                    "I/O error on {op} of {len_bytes} bytes at offset {offset_bytes}"
                )?;
                if let Some(path) = path {
                    write!(f, " of {}", path.display())?;
                }
                write!(f, ": {source}")
            }
            DeviceError::InjectedFault { op, block } => match block {
                Some(block) => write!(f, "injected fault on {op} of block {block}"),
                None => write!(f, "injected fault on {op}"),
            },
            DeviceError::Crashed => {
                write!(f, "device used after a simulated crash (call recover first)")
            }
            DeviceError::InvalidFault {
                fault,
                device_blocks,
                block_bytes,
            } => write!(
                f,
                "cannot inject {fault:?}: device has {device_blocks} blocks of {block_bytes} bytes"
            ),
        }
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DeviceError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Forwards every method to the device behind a reference or smart pointer.
macro_rules! forward_block_device {
    ($($wrapper:ty),* $(,)?) => {$(
        impl<D: BlockDevice + ?Sized> BlockDevice for $wrapper {
            fn block_bytes(&self) -> u64 {
                (**self).block_bytes()
            }
            fn len_bytes(&self) -> u64 {
                (**self).len_bytes()
            }
            fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
                (**self).read_at(offset_bytes, buf)
            }
            fn write_at(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
                (**self).write_at(offset_bytes, data)
            }
            fn flush(&self) -> Result<(), DeviceError> {
                (**self).flush()
            }
        }
    )*};
}

forward_block_device!(&D, Arc<D>, Box<D>);
