//! Pages for sampled small blocks: one block per 4 KiB page, with the
//! sample's handle in the page's last 8 bytes.
//!
//! A sampled allocation must be recognised when it is freed, at no cost to
//! the unsampled ones. Sampled blocks of at most
//! [`SAMPLE_PAGE_BLOCK_BYTES_MAX`] bytes therefore live in a region of their
//! own: a free checks the address range (two compares it makes anyway for
//! the slab region), and the page's trailer gives the profiler handle. Pages
//! come from a free list or a bump index; the region is committed 2 MiB at a
//! time. Compared with placing them in an arena (a best-fit map, coalescing),
//! taking and giving back a page is a few instructions under one lock.
//!
//! The trailer is `handle tag (u32) | page index ^ SAMPLE_TRAILER_CHECK (u32)`;
//! a free whose trailer does not check out (a double free, an interior or
//! stale pointer, or a block overrun into the trailer) is refused.

use std::sync::Mutex;

use crate::accounting::ReservedCounter;
use crate::hybrid::lock;
use crate::os::{VirtualRange, PAGE_BYTES};
use crate::sampling::SampleHandle;
use crate::PoolError;

/// Bytes of one sample page.
pub const SAMPLE_PAGE_BYTES: u64 = PAGE_BYTES;
/// Bytes at the end of a sample page that hold its trailer.
const SAMPLE_TRAILER_BYTES: u64 = 8;
/// The largest sampled block placed in a sample page; larger sampled blocks
/// go to the arenas (their tag holds the handle).
pub const SAMPLE_PAGE_BLOCK_BYTES_MAX: u64 = SAMPLE_PAGE_BYTES - SAMPLE_TRAILER_BYTES;
/// Address space reserved for sample pages (virtual; committed as used).
pub const SAMPLE_REGION_BYTES_DEFAULT: u64 = 16 << 30;
/// The region is committed in steps of this many bytes.
const SAMPLE_COMMIT_BYTES: u64 = 2 << 20;
/// Mixed into the trailer so a stray value rarely passes as one.
const SAMPLE_TRAILER_CHECK: u32 = 0x5A4D_5054;

const _: () = assert!(SAMPLE_COMMIT_BYTES.is_multiple_of(SAMPLE_PAGE_BYTES));
const _: () = assert!(SAMPLE_REGION_BYTES_DEFAULT / SAMPLE_PAGE_BYTES <= u32::MAX as u64);

struct PageState {
    /// Pages `next_page..` have never been handed out.
    next_page: u32,
    /// Bytes committed from the region's start.
    committed_bytes: u64,
    /// Pages handed back, reused last-in first-out.
    free: Vec<u32>,
}

/// The sample-page region of one pool.
pub(crate) struct SamplePages {
    region: VirtualRange,
    state: Mutex<PageState>,
}

impl SamplePages {
    pub(crate) fn new(region_bytes: u64) -> std::io::Result<Self> {
        let region_bytes = region_bytes
            .next_multiple_of(SAMPLE_COMMIT_BYTES)
            .max(SAMPLE_COMMIT_BYTES);
        Ok(SamplePages {
            region: VirtualRange::reserve(region_bytes, SAMPLE_COMMIT_BYTES)?,
            state: Mutex::new(PageState {
                next_page: 0,
                committed_bytes: 0,
                free: Vec::new(),
            }),
        })
    }

    /// Whether `addr` lies in the region.
    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        self.region.offset_of(addr).is_some()
    }

    fn page_addr(&self, page: u32) -> usize {
        self.region.base().as_ptr() as usize + page as usize * SAMPLE_PAGE_BYTES as usize
    }

    fn trailer(&self, page: u32) -> *mut u32 {
        (self.page_addr(page) + (SAMPLE_PAGE_BYTES - SAMPLE_TRAILER_BYTES) as usize) as *mut u32
    }

    /// A page for the sample `handle`; its address.
    pub(crate) fn take(
        &self,
        handle: SampleHandle,
        reserved: &ReservedCounter,
    ) -> Result<usize, PoolError> {
        let mut state = lock(&self.state);
        let page = match state.free.pop() {
            Some(page) => page,
            None => {
                let page = state.next_page;
                let end = (u64::from(page) + 1) * SAMPLE_PAGE_BYTES;
                if end > state.committed_bytes {
                    if state.committed_bytes + SAMPLE_COMMIT_BYTES > self.region.len_bytes() {
                        return Err(PoolError::AddressSpaceExhausted {
                            requested_bytes: SAMPLE_PAGE_BYTES,
                            limit_bytes: self.region.len_bytes(),
                        });
                    }
                    self.region
                        .commit(state.committed_bytes, SAMPLE_COMMIT_BYTES)
                        .map_err(|source| PoolError::OutOfMemory {
                            requested_bytes: SAMPLE_COMMIT_BYTES,
                            source,
                        })?;
                    state.committed_bytes += SAMPLE_COMMIT_BYTES;
                    reserved.add(SAMPLE_COMMIT_BYTES);
                }
                state.next_page += 1;
                page
            }
        };
        let trailer = self.trailer(page);
        // SAFETY: the page is committed (above, or when first handed out), it
        // is ours alone (just taken under the lock), and the trailer is its
        // last 8 bytes, 4-byte aligned.
        unsafe {
            trailer.write(handle.to_tag());
            trailer.add(1).write(page ^ SAMPLE_TRAILER_CHECK);
        }
        Ok(self.page_addr(page))
    }

    /// Give back the page at `addr`; the sample handle its trailer held.
    pub(crate) fn give(&self, addr: usize) -> Result<SampleHandle, PoolError> {
        let offset = self
            .region
            .offset_of(addr)
            .ok_or(PoolError::ForeignPointer { addr })?;
        if !offset.is_multiple_of(SAMPLE_PAGE_BYTES) {
            return Err(PoolError::Misaligned {
                addr,
                block_bytes: SAMPLE_PAGE_BYTES,
            });
        }
        let page = (offset / SAMPLE_PAGE_BYTES) as u32;
        let mut state = lock(&self.state);
        if page >= state.next_page {
            return Err(PoolError::ForeignPointer { addr });
        }
        let trailer = self.trailer(page);
        // SAFETY: pages below `next_page` are committed and never decommitted
        // (release only purges free pages, which read as zeros); the trailer
        // is 4-byte aligned.
        let (tag, check) = unsafe { (trailer.read(), trailer.add(1).read()) };
        let handle = match SampleHandle::from_tag(tag) {
            Some(handle) if check == page ^ SAMPLE_TRAILER_CHECK => handle,
            _ => return Err(PoolError::DoubleFree { addr }),
        };
        // SAFETY: as above; the block is being freed, so the trailer is ours.
        unsafe {
            trailer.write(0);
            trailer.add(1).write(0);
        }
        state.free.push(page);
        Ok(handle)
    }

    /// Drop the contents of free pages; the resident bytes that returned.
    pub(crate) fn purge_free(&self) -> u64 {
        let state = lock(&self.state);
        let mut returned = 0;
        for &page in &state.free {
            let offset = u64::from(page) * SAMPLE_PAGE_BYTES;
            returned += self.region.resident_bytes(offset, SAMPLE_PAGE_BYTES);
            self.region.purge(offset, SAMPLE_PAGE_BYTES);
        }
        returned
    }

    /// (committed bytes, bytes of pages not holding a block).
    pub(crate) fn figures(&self) -> (u64, u64) {
        let state = lock(&self.state);
        let live = u64::from(state.next_page) - state.free.len() as u64;
        (
            state.committed_bytes,
            state.committed_bytes - live * SAMPLE_PAGE_BYTES,
        )
    }

    /// Free pages are distinct and were handed out; committed memory covers
    /// every page handed out. Returns the committed bytes.
    pub(crate) fn check_invariants(&self) -> u64 {
        let state = lock(&self.state);
        let mut free = state.free.clone();
        free.sort_unstable();
        free.dedup();
        assert_eq!(free.len(), state.free.len(), "a sample page is free twice");
        if let Some(&last) = free.last() {
            assert!(
                last < state.next_page,
                "free sample page {last} >= next page {}",
                state.next_page
            );
        }
        assert!(
            u64::from(state.next_page) * SAMPLE_PAGE_BYTES <= state.committed_bytes,
            "{} sample pages handed out, {} bytes committed",
            state.next_page,
            state.committed_bytes
        );
        state.committed_bytes
    }
}
