//! [`ReadBuf`]: a reusable, block-aligned read buffer, and [`RecordView`]:
//! a verified record borrowed from one.
//!
//! The buffer's window starts at an address that is a multiple of the
//! store's block size, so a [`FileDevice`](crate::device::FileDevice) opened
//! with `O_DIRECT` reads straight into it instead of through its bounce
//! buffer (the block size is a multiple of the logical sector size `O_DIRECT`
//! needs). Alignment comes from over-allocating a `Vec<u8>` by one block and
//! starting the window at the first aligned byte, so no `unsafe` is needed.

use crate::record::{ChecksumKind, Codec, DecodedRecord, RecordHeader, RecordMeta};

/// A reusable buffer for [`ExtentStore::get_into`](super::ExtentStore::get_into)
/// and [`ExtentStore::get_many_with`](super::ExtentStore::get_many_with).
///
/// It holds two allocations that grow to the largest read (and the largest
/// decompressed payload) seen and are kept for the next read: the aligned
/// read window, and the buffer compressed payloads are decompressed into.
/// Raw payloads are never copied out of the window.
#[derive(Debug, Default)]
pub struct ReadBuf {
    /// Backing storage; the window lies at `window_start..window_start + window_len`.
    storage: Vec<u8>,
    /// Offset of the window in `storage`; below `align_bytes`.
    window_start: usize,
    /// Length of the window of the last read.
    window_len: usize,
    /// Alignment of the window of the last read (1 before any read).
    align_bytes: usize,
    /// Decompressed payload of the last compressed record viewed.
    decoded: Vec<u8>,
}

impl ReadBuf {
    /// An empty buffer; it allocates on first use.
    pub fn new() -> ReadBuf {
        ReadBuf::default()
    }

    /// The window of the last read: the device bytes of the extent (or, after
    /// a batch read, of the coalesced run of extents), record and padding.
    /// Empty before the first read.
    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.window_start..self.window_start + self.window_len]
    }

    /// Bytes held by both allocations (the read storage, alignment slack
    /// included, and the decompression buffer).
    pub fn capacity_bytes(&self) -> usize {
        self.storage.len() + self.decoded.capacity()
    }

    /// Frees both allocations; the next read allocates again.
    pub fn release(&mut self) {
        *self = ReadBuf::default();
    }

    /// A window of `len_bytes` starting at an address that is a multiple of
    /// `align_bytes` (a power of two), growing the storage if needed. Its
    /// contents are stale until the caller fills it.
    pub(crate) fn window(&mut self, len_bytes: usize, align_bytes: usize) -> &mut [u8] {
        assert!(
            align_bytes.is_power_of_two(),
            "alignment {align_bytes} is not a power of two"
        );
        // One block of slack: an aligned start always lies within it.
        let needed_bytes = len_bytes + align_bytes;
        if self.storage.len() < needed_bytes {
            // Zeroed allocation rather than `resize`: the old contents are
            // stale anyway, so copying them would be wasted work.
            self.storage = vec![0u8; needed_bytes];
        }
        let address = self.storage.as_ptr() as usize;
        let window_start = address.next_multiple_of(align_bytes) - address;
        self.window_start = window_start;
        self.window_len = len_bytes;
        self.align_bytes = align_bytes;
        &mut self.storage[window_start..window_start + len_bytes]
    }

    /// The window (read only) and the decompression buffer, borrowed together.
    pub(crate) fn parts(&mut self) -> (&[u8], &mut Vec<u8>) {
        (
            &self.storage[self.window_start..self.window_start + self.window_len],
            &mut self.decoded,
        )
    }

    /// Takes the decompression buffer (the payload of the last compressed
    /// record viewed), leaving an empty one.
    pub(crate) fn take_decoded(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.decoded)
    }

    /// Panics (with the values) unless the window lies inside the storage and
    /// starts at an address aligned as the last read asked.
    pub fn check_invariants(&self) {
        let align_bytes = self.align_bytes.max(1);
        assert!(
            self.window_start + self.window_len <= self.storage.len(),
            "window {}+{} outside storage of {} bytes",
            self.window_start,
            self.window_len,
            self.storage.len()
        );
        assert!(
            self.window_start < align_bytes || self.storage.is_empty(),
            "window starts {} bytes in, at least the alignment {align_bytes}",
            self.window_start
        );
        let address = self.storage[self.window_start..].as_ptr() as usize;
        assert!(
            self.window_len == 0 || address.is_multiple_of(align_bytes),
            "window at address {address:#x} is not aligned to {align_bytes} bytes"
        );
    }
}

/// A verified record whose payload is borrowed from a [`ReadBuf`]: a slice
/// of the read window after the header for a raw record (no copy), or the
/// buffer's decompression buffer for lz4 and zstd. Only built after both
/// checksums matched.
#[derive(Clone, Debug)]
pub struct RecordView<'buf> {
    pub(crate) header: RecordHeader,
    pub(crate) payload: &'buf [u8],
}

impl<'buf> RecordView<'buf> {
    /// The raw (decompressed) payload.
    pub fn payload(&self) -> &'buf [u8] {
        self.payload
    }

    /// Dtype and shape.
    pub fn meta(&self) -> &RecordMeta {
        &self.header.meta
    }

    /// How the payload was stored.
    pub fn codec(&self) -> Codec {
        self.header.codec
    }

    /// Checksum algorithm the payload was verified with.
    pub fn checksum_kind(&self) -> ChecksumKind {
        self.header.checksum_kind
    }

    /// The whole parsed header (lengths and the payload checksum too).
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// An owned copy, as [`ExtentStore::get`](super::ExtentStore::get) returns.
    pub fn to_decoded(&self) -> DecodedRecord {
        DecodedRecord {
            meta: self.header.meta.clone(),
            codec: self.header.codec,
            checksum_kind: self.header.checksum_kind,
            payload: self.payload.to_vec(),
        }
    }
}
