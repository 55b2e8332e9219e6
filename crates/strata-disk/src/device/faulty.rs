//! [`FaultyDevice`]: a wrapper that keeps unflushed writes volatile and
//! injects faults, for testing the layers above a [`BlockDevice`].
//!
//! Volatility: writes land in an in-memory overlay of whole blocks and reach
//! the inner device only on [`flush`](BlockDevice::flush); reads see the
//! overlay first. [`FaultyDevice::crash`] drops the overlay, so exactly the
//! unflushed writes are lost.
//!
//! Faults ([`Fault`]), injected at run time through `&self`:
//!
//! - [`Fault::ReadError`] / [`Fault::WriteError`]: every read (write) that
//!   covers the block fails with [`DeviceError::InjectedFault`] naming the
//!   first faulty block of the access, until cleared (a bad sector). A failed
//!   write stores nothing.
//! - [`Fault::ErrorAfterOps`]: the next `ops` operations (reads, writes,
//!   flushes) proceed; every one after that fails with
//!   `InjectedFault { block: None }` until cleared.
//! - [`Fault::BitFlip`]: the next read covering the block returns it with
//!   that one bit inverted; the stored data is unchanged, so later reads are
//!   correct. One-shot.
//! - [`Fault::TornWrite`]: arms the block; the next write covering it is
//!   *torn*. If a flush completes before a crash, the torn write is fully
//!   persisted and the fault is spent. If the device crashes first, the first
//!   `keep_bytes` of the block's latest unflushed content reach the inner
//!   device and the rest of that block keeps its last flushed content; every
//!   other unflushed block is dropped as usual. One-shot.
//!
//! Operations are counted ([`FaultStats`]) once they pass the crash check
//! and the alignment/range check, whether or not a fault then fires.
//!
//! ```
//! use strata_disk::device::{BlockDevice, DeviceError, Fault, FaultyDevice, MemDevice};
//!
//! let device = FaultyDevice::new(MemDevice::new(4 * 512, 512).unwrap());
//! device.write_at(0, &[1u8; 512]).unwrap();
//! device.flush().unwrap();
//! device.write_at(0, &[2u8; 512]).unwrap();
//! device.crash().unwrap();
//! assert!(matches!(device.read_at(0, &mut [0u8; 512]), Err(DeviceError::Crashed)));
//! device.recover();
//! let mut block = [0u8; 512];
//! device.read_at(0, &mut block).unwrap();
//! assert_eq!(block, [1u8; 512]); // the unflushed write was lost
//!
//! device.inject(Fault::ReadError { block: 3 }).unwrap();
//! assert!(matches!(
//!     device.read_at(3 * 512, &mut block),
//!     Err(DeviceError::InjectedFault { op: "read", block: Some(3) })
//! ));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use super::{check_access, BlockDevice, DeviceError};

/// A fault to inject into a [`FaultyDevice`]; see the module documentation
/// for the precise semantics of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Reads covering `block` fail until cleared.
    ReadError {
        /// The bad block.
        block: u64,
    },
    /// Writes covering `block` fail until cleared.
    WriteError {
        /// The bad block.
        block: u64,
    },
    /// After `ops` more operations, every operation fails until cleared.
    ErrorAfterOps {
        /// Operations that still succeed.
        ops: u64,
    },
    /// The next read of `block` returns it with bit `bit` inverted.
    BitFlip {
        /// The block to corrupt.
        block: u64,
        /// Bit index inside the block: byte `bit / 8`, bit `bit % 8`
        /// (least significant first).
        bit: u64,
    },
    /// The next write covering `block` is torn if a crash comes before a flush.
    TornWrite {
        /// The block whose next write is torn.
        block: u64,
        /// Bytes of the block that persist at the crash (at most a block).
        keep_bytes: u64,
    },
}

/// Operation counters of a [`FaultyDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// `read_at` calls that passed the crash and range checks.
    pub reads: u64,
    /// `write_at` calls that passed the crash and range checks.
    pub writes: u64,
    /// `flush` calls that passed the crash check.
    pub flushes: u64,
    /// Faults that took effect: failed operations, flipped bits, torn blocks
    /// applied at a crash.
    pub faults_fired: u64,
}

/// Which kind of access [`FaultyDevice::begin`] checks.
#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
}

#[derive(Debug, Default)]
struct State {
    /// Unflushed block contents by block index, each exactly one block long.
    overlay: BTreeMap<u64, Vec<u8>>,
    read_errors: BTreeSet<u64>,
    write_errors: BTreeSet<u64>,
    /// Operations that still succeed before every operation fails.
    ops_before_error: Option<u64>,
    /// Armed bit flips as (block, bit).
    bit_flips: Vec<(u64, u64)>,
    /// Armed torn writes: block to keep_bytes.
    torn_armed: BTreeMap<u64, u64>,
    /// Torn writes that happened since the last flush: block to keep_bytes.
    torn_pending: BTreeMap<u64, u64>,
    crashed: bool,
    stats: FaultStats,
}

impl State {
    /// Counts down [`Fault::ErrorAfterOps`]; `Err` once it is exhausted.
    fn tick(&mut self, op: &'static str) -> Result<(), DeviceError> {
        match self.ops_before_error {
            Some(0) => {
                self.stats.faults_fired += 1;
                Err(DeviceError::InjectedFault { op, block: None })
            }
            Some(n) => {
                self.ops_before_error = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// A fault-injecting, crash-simulating wrapper around a [`BlockDevice`].
/// See the module documentation.
#[derive(Debug)]
pub struct FaultyDevice<D: BlockDevice> {
    inner: D,
    state: Mutex<State>,
}

impl<D: BlockDevice> FaultyDevice<D> {
    /// Wraps `inner`, with no faults and nothing unflushed.
    pub fn new(inner: D) -> FaultyDevice<D> {
        FaultyDevice {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    // A panic inside an operation leaves the state consistent enough for a
    // test harness (the overlay only ever holds whole blocks), so poisoning
    // is ignored.
    /// The checks every read and write starts with, in order: not crashed,
    /// a whole-block access inside the device, the operation counted and
    /// the error-after-N countdown ticked, no injected error on a block of
    /// the access. Returns the access's blocks as `first..end`.
    fn begin(
        &self,
        state: &mut State,
        op: Op,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> Result<(u64, u64), DeviceError> {
        if state.crashed {
            return Err(DeviceError::Crashed);
        }
        let block_bytes = self.block_bytes();
        check_access(offset_bytes, len_bytes, block_bytes, self.len_bytes())?;
        let (name, errors) = match op {
            Op::Read => {
                state.stats.reads += 1;
                ("read", &state.read_errors)
            }
            Op::Write => {
                state.stats.writes += 1;
                ("write", &state.write_errors)
            }
        };
        let first = offset_bytes / block_bytes;
        let end = first + len_bytes / block_bytes;
        let bad = errors.range(first..end).next().copied();
        state.tick(name)?;
        if let Some(block) = bad {
            state.stats.faults_fired += 1;
            return Err(DeviceError::InjectedFault {
                op: name,
                block: Some(block),
            });
        }
        Ok((first, end))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `fault` to the plan. Refused (changing nothing) if its block, bit
    /// or `keep_bytes` lies outside the device.
    pub fn inject(&self, fault: Fault) -> Result<(), DeviceError> {
        let device_blocks = self.inner.len_blocks();
        let block_bytes = self.inner.block_bytes();
        let valid = match fault {
            Fault::ReadError { block } | Fault::WriteError { block } => block < device_blocks,
            Fault::ErrorAfterOps { .. } => true,
            Fault::BitFlip { block, bit } => block < device_blocks && bit / 8 < block_bytes,
            Fault::TornWrite { block, keep_bytes } => {
                block < device_blocks && keep_bytes <= block_bytes
            }
        };
        if !valid {
            return Err(DeviceError::InvalidFault {
                fault,
                device_blocks,
                block_bytes,
            });
        }
        let mut state = self.lock();
        match fault {
            Fault::ReadError { block } => {
                state.read_errors.insert(block);
            }
            Fault::WriteError { block } => {
                state.write_errors.insert(block);
            }
            Fault::ErrorAfterOps { ops } => state.ops_before_error = Some(ops),
            Fault::BitFlip { block, bit } => state.bit_flips.push((block, bit)),
            Fault::TornWrite { block, keep_bytes } => {
                state.torn_armed.insert(block, keep_bytes);
            }
        }
        Ok(())
    }

    /// Removes `fault` from the plan (for [`Fault::ErrorAfterOps`], any
    /// count; for [`Fault::TornWrite`], the armed fault on that block whatever
    /// its `keep_bytes`). Returns whether it was there. A torn write that
    /// already happened stays torn.
    pub fn clear(&self, fault: Fault) -> bool {
        let mut state = self.lock();
        match fault {
            Fault::ReadError { block } => state.read_errors.remove(&block),
            Fault::WriteError { block } => state.write_errors.remove(&block),
            Fault::ErrorAfterOps { .. } => state.ops_before_error.take().is_some(),
            Fault::BitFlip { block, bit } => {
                let before = state.bit_flips.len();
                state.bit_flips.retain(|&f| f != (block, bit));
                state.bit_flips.len() != before
            }
            Fault::TornWrite { block, .. } => state.torn_armed.remove(&block).is_some(),
        }
    }

    /// Removes every fault from the plan. Unflushed data and torn writes that
    /// already happened are kept.
    pub fn clear_all(&self) {
        let mut state = self.lock();
        state.read_errors.clear();
        state.write_errors.clear();
        state.ops_before_error = None;
        state.bit_flips.clear();
        state.torn_armed.clear();
    }

    /// Simulates a power loss: applies torn writes (see the module
    /// documentation), drops every other unflushed write, and fails every
    /// later operation with [`DeviceError::Crashed`] until
    /// [`recover`](Self::recover). The fault plan is kept. Crashing a crashed
    /// device does nothing. An error from the inner device while persisting
    /// torn blocks is returned; the device is crashed regardless.
    pub fn crash(&self) -> Result<(), DeviceError> {
        let mut state = self.lock();
        if state.crashed {
            return Ok(());
        }
        state.crashed = true;
        let overlay = std::mem::take(&mut state.overlay);
        let torn = std::mem::take(&mut state.torn_pending);
        let block_bytes = self.inner.block_bytes();
        let mut stored = vec![0u8; block_bytes as usize];
        for (&block, &keep_bytes) in &torn {
            let Some(latest) = overlay.get(&block) else {
                panic!("torn block {block} is not in the overlay of unflushed blocks");
            };
            let offset_bytes = block * block_bytes;
            self.inner.read_at(offset_bytes, &mut stored)?;
            let keep = keep_bytes as usize;
            stored[..keep].copy_from_slice(&latest[..keep]);
            self.inner.write_at(offset_bytes, &stored)?;
            state.stats.faults_fired += 1;
        }
        if !torn.is_empty() {
            self.inner.flush()?;
        }
        Ok(())
    }

    /// Makes a crashed device usable again, holding only flushed data (and
    /// the persisted parts of torn writes).
    pub fn recover(&self) {
        self.lock().crashed = false;
    }

    /// Whether the device is crashed and not yet recovered.
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The operation counters.
    pub fn stats(&self) -> FaultStats {
        self.lock().stats
    }

    /// Blocks written since the last flush.
    pub fn unflushed_blocks(&self) -> u64 {
        self.lock().overlay.len() as u64
    }

    /// The wrapped device. It holds only flushed data.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Unwraps the device, dropping unflushed writes (flush first to keep
    /// them).
    pub fn into_inner(self) -> D {
        self.inner
    }

    /// Panics (with the values) if the overlay or the fault plan is
    /// inconsistent with the device.
    pub fn check_invariants(&self) {
        let state = self.lock();
        let device_blocks = self.inner.len_blocks();
        let block_bytes = self.inner.block_bytes();
        for (&block, bytes) in &state.overlay {
            assert!(
                block < device_blocks,
                "overlay block {block} past the device's {device_blocks} blocks"
            );
            assert_eq!(
                bytes.len() as u64,
                block_bytes,
                "overlay block {block} holds {} bytes, block size is {block_bytes}",
                bytes.len()
            );
        }
        for (&block, &keep_bytes) in state.torn_pending.iter().chain(&state.torn_armed) {
            assert!(
                block < device_blocks && keep_bytes <= block_bytes,
                "torn write on block {block} keeping {keep_bytes} bytes does not fit \
                 {device_blocks} blocks of {block_bytes} bytes"
            );
        }
        for &block in state.torn_pending.keys() {
            assert!(
                state.overlay.contains_key(&block),
                "torn block {block} is not unflushed"
            );
        }
        if state.crashed {
            assert!(
                state.overlay.is_empty() && state.torn_pending.is_empty(),
                "crashed device holds {} unflushed and {} torn blocks",
                state.overlay.len(),
                state.torn_pending.len()
            );
        }
        for &(block, bit) in &state.bit_flips {
            assert!(
                block < device_blocks && bit / 8 < block_bytes,
                "bit flip at block {block} bit {bit} outside {device_blocks} blocks of \
                 {block_bytes} bytes"
            );
        }
    }
}

impl<D: BlockDevice> BlockDevice for FaultyDevice<D> {
    fn block_bytes(&self) -> u64 {
        self.inner.block_bytes()
    }

    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }

    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let mut state = self.lock();
        let (first, end) = self.begin(&mut state, Op::Read, offset_bytes, buf.len() as u64)?;
        let block_bytes = self.block_bytes();
        self.inner.read_at(offset_bytes, buf)?;
        for (&block, bytes) in state.overlay.range(first..end) {
            let at = ((block - first) * block_bytes) as usize;
            buf[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let mut fired = 0;
        state.bit_flips.retain(|&(block, bit)| {
            if (first..end).contains(&block) {
                let at = ((block - first) * block_bytes + bit / 8) as usize;
                buf[at] ^= 1 << (bit % 8);
                fired += 1;
                false
            } else {
                true
            }
        });
        state.stats.faults_fired += fired;
        Ok(())
    }

    fn write_at(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        let mut state = self.lock();
        let (first, end) = self.begin(&mut state, Op::Write, offset_bytes, data.len() as u64)?;
        let block_bytes = self.block_bytes();
        let armed: Vec<(u64, u64)> = state
            .torn_armed
            .range(first..end)
            .map(|(&b, &k)| (b, k))
            .collect();
        for (block, keep_bytes) in armed {
            state.torn_armed.remove(&block);
            state.torn_pending.insert(block, keep_bytes);
        }
        for (i, chunk) in data.chunks_exact(block_bytes as usize).enumerate() {
            state.overlay.insert(first + i as u64, chunk.to_vec());
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        let mut state = self.lock();
        if state.crashed {
            return Err(DeviceError::Crashed);
        }
        state.stats.flushes += 1;
        state.tick("flush")?;
        let block_bytes = self.block_bytes();
        // Write contiguous runs of unflushed blocks with one call each.
        let mut run_first = 0u64;
        let mut run: Vec<u8> = Vec::new();
        for (&block, bytes) in &state.overlay {
            let run_end = run_first + run.len() as u64 / block_bytes;
            if !run.is_empty() && block != run_end {
                self.inner.write_at(run_first * block_bytes, &run)?;
                run.clear();
            }
            if run.is_empty() {
                run_first = block;
            }
            run.extend_from_slice(bytes);
        }
        if !run.is_empty() {
            self.inner.write_at(run_first * block_bytes, &run)?;
        }
        self.inner.flush()?;
        // Only now is everything durable: an error above keeps the overlay,
        // so a crash still loses what the inner device may not have stored.
        state.overlay.clear();
        state.torn_pending.clear();
        Ok(())
    }
}
