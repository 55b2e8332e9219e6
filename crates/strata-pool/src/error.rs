//! Typed errors of the hybrid pool.

use std::fmt;

use crate::budget::BudgetError;
use crate::Device;

/// Why the hybrid pool refused a request. A refused request changes nothing.
#[non_exhaustive]
#[derive(Debug)]
pub enum PoolError {
    /// A request for zero bytes.
    ZeroSize,
    /// The alignment is not a power of two, or exceeds the largest supported.
    BadAlignment {
        /// Alignment asked for.
        align_bytes: u64,
        /// The largest alignment the pool honours.
        max_bytes: u64,
    },
    /// The size, rounded up to what the pool hands out, overflows or
    /// exceeds what one pool can address.
    TooLarge {
        /// Bytes asked for.
        requested_bytes: u64,
        /// The largest single block the pool can serve.
        max_bytes: u64,
    },
    /// The operating system refused memory.
    OutOfMemory {
        /// Bytes the pool tried to obtain.
        requested_bytes: u64,
        /// What the system said.
        source: std::io::Error,
    },
    /// The pool's address space for this kind of block is used up.
    AddressSpaceExhausted {
        /// Bytes asked for.
        requested_bytes: u64,
        /// Bytes of address space the pool was configured with.
        limit_bytes: u64,
    },
    /// A setting of the pool's configuration is invalid.
    BadConfig {
        /// Which setting, and why.
        what: String,
    },
    /// The reservation the allocation is charged to could not grow.
    Budget(BudgetError),
    /// No backend exists for this device.
    UnsupportedDevice {
        /// The device asked for.
        device: Device,
    },
    /// A block was freed through a pool of another device (or another pool).
    WrongDevice {
        /// Device of the block.
        block_device: Device,
        /// Device of the pool asked to free it.
        pool_device: Device,
    },
    /// The address was not handed out by this pool.
    ForeignPointer {
        /// The address.
        addr: usize,
    },
    /// The address is inside the pool but not at the start of a block.
    Misaligned {
        /// The address.
        addr: usize,
        /// Size of the blocks around it.
        block_bytes: u64,
    },
    /// The block is already free.
    DoubleFree {
        /// The address.
        addr: usize,
    },
    /// The size given at free maps to another size class than the block's.
    SizeMismatch {
        /// The address.
        addr: usize,
        /// Size of the block at that address.
        block_bytes: u64,
        /// Size the caller gave.
        given_bytes: u64,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::ZeroSize => write!(f, "zero-size allocation requested"),
            PoolError::BadAlignment {
                align_bytes,
                max_bytes,
            } => write!(
                f,
                "alignment {align_bytes} is not a power of two between 1 and {max_bytes}"
            ),
            PoolError::TooLarge {
                requested_bytes,
                max_bytes,
            } => write!(
                f,
                "allocation of {requested_bytes} bytes is larger than the largest block ({max_bytes} bytes)"
            ),
            PoolError::OutOfMemory {
                requested_bytes,
                source,
            } => write!(
                f,
                "the system refused {requested_bytes} bytes of memory: {source}"
            ),
            PoolError::AddressSpaceExhausted {
                requested_bytes,
                limit_bytes,
            } => write!(
                f,
                "no address space left for {requested_bytes} bytes (configured for {limit_bytes} bytes)"
            ),
            PoolError::BadConfig { what } => write!(f, "invalid pool configuration: {what}"),
            PoolError::Budget(error) => write!(f, "{error}"),
            PoolError::UnsupportedDevice { device } => {
                write!(f, "no memory backend for device {device} in this build (only cpu)")
            }
            PoolError::WrongDevice {
                block_device,
                pool_device,
            } => write!(
                f,
                "block of device {block_device} freed through the pool of device {pool_device}"
            ),
            PoolError::ForeignPointer { addr } => {
                write!(f, "address {addr:#x} was not handed out by this pool")
            }
            PoolError::Misaligned { addr, block_bytes } => write!(
                f,
                "address {addr:#x} is not the start of a block (blocks of {block_bytes} bytes there)"
            ),
            PoolError::DoubleFree { addr } => write!(f, "double free of address {addr:#x}"),
            PoolError::SizeMismatch {
                addr,
                block_bytes,
                given_bytes,
            } => write!(
                f,
                "free of address {addr:#x} with size {given_bytes}, but its block holds {block_bytes} bytes"
            ),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::OutOfMemory { source, .. } => Some(source),
            PoolError::Budget(error) => Some(error),
            _ => None,
        }
    }
}

impl From<BudgetError> for PoolError {
    fn from(error: BudgetError) -> Self {
        PoolError::Budget(error)
    }
}
