//! The live-sample slab: a dense array of 16-byte [`SampleRecord`]s
//! indexed by [`SampleHandle`], with a free list threaded through the
//! vacant entries.
//!
//! # Encoding
//!
//! Every entry is one [`SampleRecord`] (16 bytes); nothing else is stored
//! per entry, so a live sample costs exactly 16 bytes and a vacant entry
//! costs no more. The entry's `site_id` word says what it is:
//!
//! - `site_id == SITE_ID_VACANT` (`u32::MAX`): vacant. `alloc_ms` holds the
//!   index of the next vacant entry on the free list (`NO_HANDLE`,
//!   `u32::MAX`, ends it) and `size_bytes` is 0.
//! - otherwise live: the low bits are the site id (below
//!   [`SITES_MAX`](super::SITES_MAX), so at most 16 bits), and
//!   `ADDRESS_KEYED_BIT` (bit 31) is set when the sample was recorded by
//!   address, so a forged handle cannot free it behind the address map's
//!   back. `size_bytes` and `alloc_ms` are the sample's.
//!
//! Live entries never move: their index is the handle the caller keeps.
//! Vacant entries are reused (most recently freed first) before the slab
//! grows; [`SampleSlab::shrink`] drops the vacant tail, releases spare
//! capacity and reorders the free list lowest index first, but holes below
//! the highest live entry stay until reused.

use std::fmt;

use super::{
    SampleRecord, SamplingError, SAMPLE_HANDLES_MAX, SAMPLE_SLAB_GROW_DIVISOR,
    SAMPLE_SLAB_GROW_MIN_ENTRIES, SITES_MAX,
};

/// `site_id` of a vacant entry.
const SITE_ID_VACANT: u32 = u32::MAX;
/// Set in `site_id` of a live entry recorded by address.
const ADDRESS_KEYED_BIT: u32 = 1 << 31;
/// End of the free list.
const NO_HANDLE: u32 = u32::MAX;

// Site ids leave the flag bit free, and a live entry's word (flag and site
// id) can never read as vacant.
const _: () = assert!(SITES_MAX <= ADDRESS_KEYED_BIT as usize);
const _: () = assert!((SITE_ID_VACANT & !ADDRESS_KEYED_BIT) as usize >= SITES_MAX);
// Free-list links and the end marker fit in `alloc_ms` and never collide.
const _: () = assert!(SAMPLE_HANDLES_MAX < NO_HANDLE);
const _: () = assert!(size_of::<SampleRecord>() == 16);

/// Names one live sample recorded with
/// [`Profiler::record_alloc_handle`](super::Profiler::record_alloc_handle):
/// its index in the profiler's slab, below [`SAMPLE_HANDLES_MAX`] (so it
/// fits in 31 bits, and so does [`to_tag`](SampleHandle::to_tag)).
///
/// A handle is valid until its sample is freed; after that its entry may be
/// reused by a later sample, which the old handle would then name. The
/// caller frees each handle once (the pool keeps it in the block it
/// belongs to, and a block is freed once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleHandle(u32);

impl SampleHandle {
    /// The handle with this slab index; `None` at or past
    /// [`SAMPLE_HANDLES_MAX`].
    pub const fn from_index(index: u32) -> Option<SampleHandle> {
        if index < SAMPLE_HANDLES_MAX {
            Some(SampleHandle(index))
        } else {
            None
        }
    }

    /// The slab index.
    pub const fn index(self) -> u32 {
        self.0
    }

    /// `index + 1`: never 0 (so 0 can mean "not sampled") and at most
    /// [`SAMPLE_HANDLES_MAX`], which fits in 31 bits.
    pub const fn to_tag(self) -> u32 {
        self.0 + 1
    }

    /// The inverse of [`to_tag`](SampleHandle::to_tag): `None` for 0 and
    /// for tags past [`SAMPLE_HANDLES_MAX`].
    pub const fn from_tag(tag: u32) -> Option<SampleHandle> {
        if tag == 0 {
            None
        } else {
            SampleHandle::from_index(tag - 1)
        }
    }
}

impl fmt::Display for SampleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Who may free a live entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Keying {
    /// The caller holds the handle.
    Handle,
    /// The profiler's address map holds the handle.
    Address,
}

/// The slab. See the module doc for the encoding.
///
/// Invariants: `entries.len() <= max_entries`; the free list starts at
/// `free_head`, visits every vacant entry exactly once and nothing else;
/// `live_entries` is the number of live entries; vacant entries have
/// `size_bytes == 0`.
#[derive(Debug)]
pub(super) struct SampleSlab {
    entries: Vec<SampleRecord>,
    free_head: u32,
    live_entries: usize,
    max_entries: u32,
}

impl SampleSlab {
    /// An empty slab of at most `max_entries` entries (at most
    /// [`SAMPLE_HANDLES_MAX`]).
    pub(super) fn new(max_entries: u32) -> SampleSlab {
        assert!(
            max_entries <= SAMPLE_HANDLES_MAX,
            "slab of {max_entries} entries exceeds SAMPLE_HANDLES_MAX = {SAMPLE_HANDLES_MAX}"
        );
        SampleSlab {
            entries: Vec::new(),
            free_head: NO_HANDLE,
            live_entries: 0,
            max_entries,
        }
    }

    /// Live entries.
    pub(super) fn live_entries(&self) -> usize {
        self.live_entries
    }

    /// Vacant entries below the slab's length (not counting spare capacity).
    pub(super) fn vacant_entries(&self) -> usize {
        self.entries.len() - self.live_entries
    }

    /// Heap bytes of the live records: exactly 16 per live sample.
    pub(super) fn record_bytes(&self) -> usize {
        self.live_entries * size_of::<SampleRecord>()
    }

    /// Heap bytes of the slab not holding a live record: vacant entries and
    /// spare capacity.
    pub(super) fn vacant_bytes(&self) -> usize {
        (self.entries.capacity() - self.live_entries) * size_of::<SampleRecord>()
    }

    /// Whether [`insert`](SampleSlab::insert) would succeed; otherwise the
    /// error it would return.
    pub(super) fn check_room(&self) -> Result<(), SamplingError> {
        if self.free_head != NO_HANDLE || self.entries.len() < self.max_entries as usize {
            Ok(())
        } else {
            Err(SamplingError::HandlesExhausted {
                max_handles: self.max_entries,
            })
        }
    }

    /// Stores `record` (its `site_id` below [`SITES_MAX`]) in a vacant entry,
    /// or at the end; refused when the slab is full.
    pub(super) fn insert(
        &mut self,
        record: SampleRecord,
        keying: Keying,
    ) -> Result<SampleHandle, SamplingError> {
        assert!(
            (record.site_id as usize) < SITES_MAX,
            "site id {} of a new sample is not below SITES_MAX = {SITES_MAX}",
            record.site_id
        );
        self.check_room()?;
        let stored = SampleRecord {
            site_id: match keying {
                Keying::Handle => record.site_id,
                Keying::Address => record.site_id | ADDRESS_KEYED_BIT,
            },
            ..record
        };
        let index = if self.free_head != NO_HANDLE {
            let index = self.free_head;
            let vacant = &mut self.entries[index as usize];
            debug_assert_eq!(vacant.site_id, SITE_ID_VACANT, "free list at {index}");
            self.free_head = vacant.alloc_ms;
            *vacant = stored;
            index
        } else {
            let len = self.entries.len();
            if len == self.entries.capacity() {
                // Grow by an eighth (not double): the slack stays small next
                // to the 16 bytes per sample, and samples are rare enough
                // that the extra copies do not matter.
                let grow = (len / SAMPLE_SLAB_GROW_DIVISOR)
                    .max(SAMPLE_SLAB_GROW_MIN_ENTRIES)
                    .min(self.max_entries as usize - len);
                self.entries.reserve_exact(grow);
            }
            self.entries.push(stored);
            // `check_room` bounds `len` below `max_entries`, a u32.
            len as u32
        };
        self.live_entries += 1;
        Ok(SampleHandle(index))
    }

    /// The live record at `handle` (site id without the flag) and how it
    /// was keyed, or why there is none.
    pub(super) fn get(
        &self,
        handle: SampleHandle,
    ) -> Result<(SampleRecord, Keying), SamplingError> {
        let Some(&entry) = self.entries.get(handle.0 as usize) else {
            return Err(SamplingError::StaleHandle {
                handle,
                slab_entries: self.entries.len(),
            });
        };
        decode(entry).ok_or(SamplingError::VacantHandle { handle })
    }

    /// Frees the live entry at `handle` and returns its record. Refused
    /// (nothing changes) for a handle past the end, a vacant entry, or, by
    /// handle, an entry recorded by address. Panics if the address map
    /// names an entry recorded by handle (a broken invariant).
    pub(super) fn remove(
        &mut self,
        handle: SampleHandle,
        keying: Keying,
    ) -> Result<SampleRecord, SamplingError> {
        let (record, entry_keying) = self.get(handle)?;
        match (entry_keying, keying) {
            (Keying::Address, Keying::Handle) => {
                return Err(SamplingError::AddressKeyed { handle });
            }
            // Only the profiler's address map frees by address, with
            // handles it recorded itself.
            (Keying::Handle, Keying::Address) => panic!(
                "address map and slab disagree: handle {handle} ({record:?}) was recorded \
                 by handle"
            ),
            _ => {}
        }
        self.entries[handle.0 as usize] = SampleRecord {
            size_bytes: 0,
            alloc_ms: self.free_head,
            site_id: SITE_ID_VACANT,
        };
        self.free_head = handle.0;
        self.live_entries -= 1;
        Ok(record)
    }

    /// The live records (site id without the flag).
    pub(super) fn live_records(&self) -> impl Iterator<Item = SampleRecord> + '_ {
        self.entries
            .iter()
            .filter_map(|&entry| decode(entry).map(|(record, _)| record))
    }

    /// The live entries' handles and keyings.
    pub(super) fn live_handles(&self) -> impl Iterator<Item = (SampleHandle, Keying)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(index, &entry)| {
                // Indices are bounded by `max_entries`, a u32.
                decode(entry).map(|(_, keying)| (SampleHandle(index as u32), keying))
            })
    }

    /// Drops the vacant entries at the tail and releases the spare
    /// capacity; returns the heap bytes released. O(entries): the free list
    /// is rebuilt, lowest index first, so that later samples fill the holes
    /// from the bottom and the tail can empty again.
    pub(super) fn shrink(&mut self) -> usize {
        let capacity_before = self.entries.capacity();
        while self
            .entries
            .last()
            .is_some_and(|entry| entry.site_id == SITE_ID_VACANT)
        {
            self.entries.pop();
        }
        // The dropped entries were anywhere on the singly linked free list;
        // rebuilding it is simpler than unlinking them.
        self.free_head = NO_HANDLE;
        for index in (0..self.entries.len()).rev() {
            let entry = &mut self.entries[index];
            if entry.site_id == SITE_ID_VACANT {
                entry.alloc_ms = self.free_head;
                // Bounded by `max_entries`, a u32.
                self.free_head = index as u32;
            }
        }
        self.entries.shrink_to_fit();
        (capacity_before - self.entries.capacity()) * size_of::<SampleRecord>()
    }

    /// Panics, printing the values, if an invariant is broken. `sites` is
    /// the number of sites a live entry may name. O(entries).
    pub(super) fn check_invariants(&self, sites: usize) {
        let len = self.entries.len();
        assert!(
            len <= self.max_entries as usize,
            "slab holds {len} entries, at most {}",
            self.max_entries
        );
        let mut on_free_list = vec![false; len];
        let mut cursor = self.free_head;
        let mut listed = 0usize;
        while cursor != NO_HANDLE {
            let index = cursor as usize;
            assert!(
                index < len,
                "free list names entry {index} of a slab of {len}"
            );
            assert!(
                !on_free_list[index],
                "free list visits entry {index} twice (after {listed} entries)"
            );
            let entry = self.entries[index];
            assert!(
                entry.site_id == SITE_ID_VACANT,
                "free list names live entry {index}: {entry:?}"
            );
            on_free_list[index] = true;
            listed += 1;
            cursor = entry.alloc_ms;
        }
        let mut live = 0usize;
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.site_id == SITE_ID_VACANT {
                assert!(
                    on_free_list[index] && entry.size_bytes == 0,
                    "vacant entry {index} ({entry:?}) on the free list: {}",
                    on_free_list[index]
                );
            } else {
                let site_id = entry.site_id & !ADDRESS_KEYED_BIT;
                assert!(
                    (site_id as usize) < sites,
                    "live entry {index} names site {site_id} of {sites}"
                );
                live += 1;
            }
        }
        assert_eq!(
            live, self.live_entries,
            "slab holds {live} live entries, counted {}",
            self.live_entries
        );
        assert_eq!(
            listed,
            len - live,
            "free list holds {listed} entries, the slab {} vacant",
            len - live
        );
    }
}

/// A stored entry as a record and its keying; `None` if vacant.
fn decode(entry: SampleRecord) -> Option<(SampleRecord, Keying)> {
    if entry.site_id == SITE_ID_VACANT {
        return None;
    }
    let keying = if entry.site_id & ADDRESS_KEYED_BIT != 0 {
        Keying::Address
    } else {
        Keying::Handle
    };
    Some((
        SampleRecord {
            site_id: entry.site_id & !ADDRESS_KEYED_BIT,
            ..entry
        },
        keying,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(size_bytes: u64) -> SampleRecord {
        SampleRecord {
            size_bytes,
            alloc_ms: 7,
            site_id: 3,
        }
    }

    #[test]
    fn full_slab_refuses_and_changes_nothing() {
        let mut slab = SampleSlab::new(3);
        let handles: Vec<SampleHandle> = (1..=3)
            .map(|size| slab.insert(record(size), Keying::Handle).unwrap())
            .collect();
        assert_eq!(handles, [SampleHandle(0), SampleHandle(1), SampleHandle(2)]);
        assert_eq!(slab.entries.capacity(), 3, "growth is capped at the limit");
        for keying in [Keying::Handle, Keying::Address] {
            assert_eq!(
                slab.insert(record(9), keying),
                Err(SamplingError::HandlesExhausted { max_handles: 3 })
            );
        }
        slab.check_invariants(4);
        assert_eq!(slab.live_entries(), 3);
        assert_eq!(slab.remove(handles[1], Keying::Handle), Ok(record(2)));
        assert_eq!(slab.insert(record(5), Keying::Address), Ok(handles[1]));
        assert_eq!(
            slab.remove(handles[1], Keying::Handle),
            Err(SamplingError::AddressKeyed { handle: handles[1] })
        );
        assert_eq!(slab.remove(handles[1], Keying::Address), Ok(record(5)));
        slab.check_invariants(4);
    }

    #[test]
    fn shrink_drops_the_vacant_tail_and_rebuilds_the_free_list() {
        let mut slab = SampleSlab::new(SAMPLE_HANDLES_MAX);
        for size in 1..=10 {
            slab.insert(record(size), Keying::Handle).unwrap();
        }
        for index in [1u32, 9, 4, 8, 7] {
            slab.remove(SampleHandle(index), Keying::Handle).unwrap();
        }
        let capacity_bytes = slab.entries.capacity() * 16;
        assert_eq!(slab.shrink(), capacity_bytes - 7 * 16);
        assert_eq!(slab.entries.len(), 7);
        assert_eq!(slab.vacant_entries(), 2);
        slab.check_invariants(4);
        // Lowest vacant entry first, then the end.
        let reused: Vec<u32> = (0..3)
            .map(|_| slab.insert(record(1), Keying::Handle).unwrap().index())
            .collect();
        assert_eq!(reused, [1, 4, 7]);
        slab.check_invariants(4);
    }

    #[test]
    fn tags_round_trip_and_fit_in_31_bits() {
        assert_eq!(SampleHandle::from_tag(0), None);
        assert_eq!(SampleHandle::from_tag(1), Some(SampleHandle(0)));
        let last = SampleHandle::from_index(SAMPLE_HANDLES_MAX - 1).unwrap();
        assert_eq!(last.to_tag(), SAMPLE_HANDLES_MAX);
        assert!(last.to_tag() < 1 << 31, "tag {}", last.to_tag());
        assert_eq!(SampleHandle::from_tag(last.to_tag()), Some(last));
        assert_eq!(SampleHandle::from_tag(SAMPLE_HANDLES_MAX + 1), None);
        assert_eq!(SampleHandle::from_index(SAMPLE_HANDLES_MAX), None);
        assert_eq!(SampleHandle(12).to_string(), "#12");
    }
}
