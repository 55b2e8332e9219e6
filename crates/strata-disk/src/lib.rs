//! `strata-disk`: the disk tier of Strata (layer 4).
//!
//! - [`device`]: the [`BlockDevice`](device::BlockDevice) trait with
//!   implementations over a regular file (positional I/O, optional
//!   `O_DIRECT`), over memory, and a fault-injecting wrapper for tests.
//! - [`record`]: spill records: a self-describing header (magic, version,
//!   codec, checksum, lengths, dtype and shape) and a payload that is
//!   verified on every read.
//! - [`store`]: the extent store: records in extents allocated next-fit,
//!   a temp-space cap, superblocks in two copies and a persisted allocation
//!   bitmap, crash-safe commits, and bad-block remapping: a data block whose
//!   write fails is remapped to a spare (the table copies are written and
//!   flushed before the write is retried and acknowledged) and reads are
//!   routed through the table; see `docs/disk-format.md`.
//! - [`remap`]: bad-block remapping without I/O: the spare pool, the remap
//!   table (PENDING/ACTIVE entries, O(1) lookups on snapshots readers take
//!   without blocking the writer), request routing, and the checksummed,
//!   sequence-numbered encoding of a table copy with recovery.
//! - [`writer`]: [`SpillWriter`](writer::SpillWriter), the extent store
//!   behind a background thread with a bounded queue: callers submit
//!   records and wait on a ticket only if they need the extent now.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod device;
pub mod record;
pub mod remap;
pub mod store;
pub mod writer;
