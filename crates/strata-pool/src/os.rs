//! Virtual memory from the operating system: the only module of the pool
//! that calls `mmap`, `mprotect`, `madvise` and `mincore`.
//!
//! A [`VirtualRange`] reserves address space with no access and no commit
//! charge; parts are committed (made readable and writable) on demand and
//! decommitted (pages dropped, access removed) when the pool releases them.
//! Slabs and arenas are carved from such ranges, which is what lets an
//! arena grow at its end in place and lets a pointer's slab be found by
//! arithmetic.

use std::io;
use std::ptr::NonNull;

/// The page size the pool assumes for commit, decommit and residency.
pub const PAGE_BYTES: u64 = 4096;

/// A reserved, aligned range of address space, unmapped on drop.
#[derive(Debug)]
pub struct VirtualRange {
    base: NonNull<u8>,
    len_bytes: u64,
}

// SAFETY: the range is plain address space owned by this value; callers
// synchronise access to the memory in it.
unsafe impl Send for VirtualRange {}
// SAFETY: as above: `&VirtualRange` only exposes the base address and
// page-protection calls, which the kernel serialises.
unsafe impl Sync for VirtualRange {}

fn last_os_error(what: &str, len_bytes: u64) -> io::Error {
    let error = io::Error::last_os_error();
    io::Error::new(
        error.kind(),
        format!("{what} of {len_bytes} bytes failed: {error}"),
    )
}

impl VirtualRange {
    /// Reserve `len_bytes` of address space aligned to `align_bytes`
    /// (both multiples of [`PAGE_BYTES`], `align_bytes` a power of two).
    /// Nothing is committed.
    pub fn reserve(len_bytes: u64, align_bytes: u64) -> io::Result<Self> {
        assert!(
            len_bytes > 0 && len_bytes.is_multiple_of(PAGE_BYTES),
            "len {len_bytes} not a positive multiple of {PAGE_BYTES}"
        );
        assert!(
            align_bytes.is_power_of_two() && align_bytes >= PAGE_BYTES,
            "align {align_bytes}"
        );
        let padded_bytes = len_bytes
            .checked_add(align_bytes - PAGE_BYTES)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "range too large"))?;
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing touches no existing memory.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded_bytes as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(last_os_error("reserving address space", padded_bytes));
        }
        let start = raw as usize as u64;
        let aligned = start.next_multiple_of(align_bytes);
        let head_bytes = aligned - start;
        let tail_bytes = padded_bytes - head_bytes - len_bytes;
        // SAFETY: both pieces lie inside the mapping just made and are
        // referenced by nothing.
        unsafe {
            if head_bytes > 0 {
                libc::munmap(raw, head_bytes as usize);
            }
            if tail_bytes > 0 {
                libc::munmap(
                    (aligned + len_bytes) as usize as *mut libc::c_void,
                    tail_bytes as usize,
                );
            }
        }
        let base = NonNull::new(aligned as usize as *mut u8).expect("mmap returned null");
        Ok(VirtualRange { base, len_bytes })
    }

    /// First byte of the range.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Bytes of address space reserved.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Whether `addr` lies in the range; if so, its offset.
    #[inline]
    pub fn offset_of(&self, addr: usize) -> Option<u64> {
        let offset = (addr as u64).wrapping_sub(self.base.as_ptr() as usize as u64);
        (offset < self.len_bytes).then_some(offset)
    }

    fn check(&self, offset_bytes: u64, len_bytes: u64) {
        assert!(
            offset_bytes.is_multiple_of(PAGE_BYTES)
                && len_bytes.is_multiple_of(PAGE_BYTES)
                && offset_bytes
                    .checked_add(len_bytes)
                    .is_some_and(|end| end <= self.len_bytes),
            "pages {offset_bytes}+{len_bytes} outside range of {} bytes",
            self.len_bytes
        );
    }

    fn addr(&self, offset_bytes: u64) -> *mut libc::c_void {
        // Within the range: checked by `check` before every use.
        self.base
            .as_ptr()
            .wrapping_add(offset_bytes as usize)
            .cast()
    }

    /// Make `len_bytes` at `offset_bytes` readable and writable (zeroed on
    /// first touch). Page-aligned.
    pub fn commit(&self, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        self.check(offset_bytes, len_bytes);
        // SAFETY: the pages lie inside our own reservation (checked).
        let rc = unsafe {
            libc::mprotect(
                self.addr(offset_bytes),
                len_bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(last_os_error("committing memory", len_bytes));
        }
        Ok(())
    }

    /// Ask for transparent huge pages over this part of the range (where
    /// the system is set to `madvise` mode): fewer TLB misses for memory
    /// that is used in 2 MiB pieces, like slabs and arena growth steps.
    /// Advice only; refused advice is not an error.
    pub fn advise_huge_pages(&self, offset_bytes: u64, len_bytes: u64) {
        self.check(offset_bytes, len_bytes);
        #[cfg(target_os = "linux")]
        // SAFETY: the pages lie inside our reservation (checked); the advice
        // changes no contents.
        unsafe {
            libc::madvise(
                self.addr(offset_bytes),
                len_bytes as usize,
                libc::MADV_HUGEPAGE,
            );
        }
    }

    /// Drop the pages' contents (their physical memory goes back to the
    /// system; they read as zeros next time) and keep them committed.
    ///
    /// The caller must hold no live data in those pages.
    pub fn purge(&self, offset_bytes: u64, len_bytes: u64) {
        self.check(offset_bytes, len_bytes);
        if len_bytes == 0 {
            return;
        }
        // SAFETY: the pages lie inside our reservation (checked) and the
        // caller guarantees they hold no live data.
        let rc = unsafe {
            libc::madvise(
                self.addr(offset_bytes),
                len_bytes as usize,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(
            rc,
            0,
            "madvise(DONTNEED) on our own pages failed: {}",
            io::Error::last_os_error()
        );
    }

    /// Purge the pages and remove access, returning the commit charge.
    pub fn decommit(&self, offset_bytes: u64, len_bytes: u64) {
        self.purge(offset_bytes, len_bytes);
        // SAFETY: as in `purge`; removing access to pages that hold no
        // live data.
        let rc =
            unsafe { libc::mprotect(self.addr(offset_bytes), len_bytes as usize, libc::PROT_NONE) };
        assert_eq!(
            rc,
            0,
            "mprotect(NONE) on our own pages failed: {}",
            io::Error::last_os_error()
        );
    }

    /// Bytes of the pages at `offset_bytes` that are resident in RAM now.
    pub fn resident_bytes(&self, offset_bytes: u64, len_bytes: u64) -> u64 {
        self.check(offset_bytes, len_bytes);
        let pages = (len_bytes / PAGE_BYTES) as usize;
        if pages == 0 {
            return 0;
        }
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is inside our mapping and `vec` has one byte
        // per page, as mincore requires.
        let rc = unsafe {
            libc::mincore(
                self.addr(offset_bytes),
                len_bytes as usize,
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return 0;
        }
        vec.iter().filter(|&&v| v & 1 != 0).count() as u64 * PAGE_BYTES
    }
}

impl Drop for VirtualRange {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `reserve` and nothing borrowed
        // from it outlives `self` (its owners guarantee that).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len_bytes as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_touch_purge_and_residency() {
        let range = VirtualRange::reserve(8 * PAGE_BYTES, 2 << 20).unwrap();
        assert_eq!(range.base().as_ptr() as usize % (2 << 20), 0);
        range.commit(0, 4 * PAGE_BYTES).unwrap();
        assert_eq!(range.resident_bytes(0, 4 * PAGE_BYTES), 0);
        // SAFETY: the first four pages are committed and owned by this test.
        unsafe { std::ptr::write_bytes(range.base().as_ptr(), 7, 2 * PAGE_BYTES as usize) };
        assert_eq!(range.resident_bytes(0, 4 * PAGE_BYTES), 2 * PAGE_BYTES);
        range.purge(0, PAGE_BYTES);
        assert_eq!(range.resident_bytes(0, 4 * PAGE_BYTES), PAGE_BYTES);
        // SAFETY: still committed; a purged page reads as zero.
        assert_eq!(unsafe { *range.base().as_ptr() }, 0);
        range.decommit(0, 4 * PAGE_BYTES);
        assert_eq!(range.offset_of(range.base().as_ptr() as usize + 5), Some(5));
        assert_eq!(
            range.offset_of(range.base().as_ptr() as usize + 8 * PAGE_BYTES as usize),
            None
        );
    }
}
