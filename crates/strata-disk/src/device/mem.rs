//! [`MemDevice`]: a block device over a byte array.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{check_access, check_geometry, BlockDevice, DeviceError};

/// A block device held in memory. Every write is immediately "durable";
/// [`flush`](BlockDevice::flush) does nothing and succeeds.
#[derive(Debug)]
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
    len_bytes: u64,
    block_bytes: u64,
}

impl MemDevice {
    /// A zero-filled device of `len_bytes` in blocks of `block_bytes`.
    pub fn new(len_bytes: u64, block_bytes: u64) -> Result<MemDevice, DeviceError> {
        check_geometry(len_bytes, block_bytes)?;
        // check_geometry verified that len_bytes fits in usize.
        let len = len_bytes as usize;
        Ok(MemDevice {
            bytes: RwLock::new(vec![0u8; len]),
            len_bytes,
            block_bytes,
        })
    }

    // A panic while holding the lock cannot leave the bytes inconsistent in
    // a way the device cares about (any byte pattern is valid), so poisoning
    // is ignored.
    fn read_lock(&self) -> RwLockReadGuard<'_, Vec<u8>> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Vec<u8>> {
        self.bytes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Panics (with the values) if the byte array disagrees with the geometry.
    pub fn check_invariants(&self) {
        let actual = self.read_lock().len() as u64;
        assert_eq!(
            actual, self.len_bytes,
            "MemDevice holds {actual} bytes, its length is {}",
            self.len_bytes
        );
        assert!(
            check_geometry(self.len_bytes, self.block_bytes).is_ok(),
            "MemDevice geometry {} bytes / {} byte blocks is invalid",
            self.len_bytes,
            self.block_bytes
        );
    }
}

impl BlockDevice for MemDevice {
    fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_access(
            offset_bytes,
            buf.len() as u64,
            self.block_bytes,
            self.len_bytes,
        )?;
        let start = offset_bytes as usize;
        buf.copy_from_slice(&self.read_lock()[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        check_access(
            offset_bytes,
            data.len() as u64,
            self.block_bytes,
            self.len_bytes,
        )?;
        let start = offset_bytes as usize;
        self.write_lock()[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
}
