//! The profiler: live sampled allocations, the call-site table, the
//! history ring, and the reports built from them.

use std::collections::HashMap;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::history::HistoryRing;
use super::report::{method_note, Accumulator};
use super::sampler::{mix64, sample_weight};
use super::slab::{Keying, SampleHandle, SampleSlab};
use super::stack::{capture_cost_ns, site_hash, site_label, CapturedStack, FastBuildHasher};
use super::{
    ByteSampler, HistoryEvent, LeakEstimates, LeakReport, LeakSite, ProfileEstimates,
    ProfileReport, SampleWeight, SamplingError, SiteProfile, HISTORY_EVENTS_LIMIT,
    SAMPLE_HANDLES_MAX, SAMPLE_MEAN_BYTES_DEFAULT, SAMPLE_MEAN_BYTES_DISABLED, SITES_MAX,
    SITE_ID_OVERFLOW, SITE_ID_UNKNOWN, STACK_COST_CAPTURES,
};

/// How much the profiler records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProfileLevel {
    /// Nothing is sampled: threads get [`ByteSampler::disabled`].
    Off,
    /// Samples record size, time and the caller's `Location`.
    Sampled,
    /// As `Sampled`, plus a stack capture per sample (see the module doc
    /// for its cost).
    Detailed,
}

impl fmt::Display for ProfileLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            ProfileLevel::Off => "off",
            ProfileLevel::Sampled => "sampled",
            ProfileLevel::Detailed => "detailed",
        })
    }
}

/// How a [`Profiler`] samples and what it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileConfig {
    /// How much is recorded per sample.
    pub level: ProfileLevel,
    /// Mean gap between sample points in allocated bytes (`R`). 0 samples
    /// every allocation; [`SAMPLE_MEAN_BYTES_DISABLED`] none.
    pub mean_bytes: u64,
    /// Events the history ring keeps (0 = history off); at most
    /// [`HISTORY_EVENTS_LIMIT`].
    pub history_events_max: usize,
    /// Seed of the per-thread samplers: runs with the same seed and the same
    /// order of [`Profiler::thread_sampler`] calls sample the same allocations.
    pub seed: u64,
}

impl Default for ProfileConfig {
    /// `Sampled` at [`SAMPLE_MEAN_BYTES_DEFAULT`], history off, seed 0.
    fn default() -> Self {
        ProfileConfig {
            level: ProfileLevel::Sampled,
            mean_bytes: SAMPLE_MEAN_BYTES_DEFAULT,
            history_events_max: 0,
            seed: 0,
        }
    }
}

/// What the profiler keeps per live sampled allocation: 16 bytes, one
/// entry of the live-sample slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleRecord {
    /// Size of the allocation.
    pub size_bytes: u64,
    /// Milliseconds from the profiler's creation to the allocation,
    /// saturating at `u32::MAX` (49.7 days): older allocations all show the
    /// age they would have at that time, so leak ages after 49.7 days of
    /// uptime are understated.
    pub alloc_ms: u32,
    /// Index in the site table (call-site location and/or stack).
    pub site_id: u32,
}

const _: () = assert!(size_of::<SampleRecord>() <= 16);

/// Heap bytes a [`Profiler`] holds, by part, from the capacities
/// ([`Profiler::metadata_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProfilerMetadata {
    /// Live records in the slab: exactly 16 bytes per live sample.
    pub record_bytes: usize,
    /// The rest of the slab: vacant entries (freed samples below the
    /// highest live one, or not yet dropped by [`Profiler::shrink`]) and
    /// spare capacity, 16 bytes per entry.
    pub vacant_bytes: usize,
    /// The address-to-handle map of samples recorded by address (std's
    /// SwissTable: entries, control bytes, slack).
    pub address_map_bytes: usize,
    /// The site table, its hash index and the stack frames.
    pub site_table_bytes: usize,
    /// The history ring.
    pub history_bytes: usize,
}

impl ProfilerMetadata {
    /// All parts.
    pub fn total(&self) -> usize {
        self.record_bytes
            + self.vacant_bytes
            + self.address_map_bytes
            + self.site_table_bytes
            + self.history_bytes
    }
}

/// A clock moved by hand, for tests and replays: build the profiler with
/// [`Profiler::with_clock`] and [`advance`](ManualClock::advance) it.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock at 0.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// Moves the clock forward by `by` (whole milliseconds, saturating).
    pub fn advance(&self, by: Duration) {
        let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .now_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now_ms| {
                Some(now_ms.saturating_add(by_ms))
            });
    }

    /// Time since the clock's start.
    pub fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
enum TimeSource {
    Monotonic(Instant),
    Manual(Arc<ManualClock>),
}

impl TimeSource {
    fn elapsed(&self) -> Duration {
        match self {
            TimeSource::Monotonic(start) => start.elapsed(),
            TimeSource::Manual(clock) => clock.now(),
        }
    }
}

/// Marks the end of a hash chain in the site table.
const NO_SITE: u32 = u32::MAX;

/// One interned call site: a location, a stack, or both.
#[derive(Debug)]
struct Site {
    location: Option<&'static Location<'static>>,
    /// The site's frames are `stack_frames[frames_start..][..frames_len]`.
    frames_start: u32,
    frames_len: u16,
    /// Next site whose key has the same hash.
    hash_next: u32,
    /// Every sample recorded here since the profiler was created.
    cumulative: Accumulator,
}

impl Site {
    fn reserved() -> Site {
        Site {
            location: None,
            frames_start: 0,
            frames_len: 0,
            hash_next: NO_SITE,
            cumulative: Accumulator::default(),
        }
    }
}

/// Everything behind the profiler's lock.
///
/// Invariants: `sites[0]` and `sites[1]` are the reserved unknown and
/// overflow sites (no location, no frames); the frames of the other sites
/// tile `stack_frames` in order; every other site is on the hash chain of
/// its key's hash, starting at `site_index`; every live record names an
/// existing site, and a site has no more live samples than samples; the
/// address map names exactly the slab's entries recorded by address.
#[derive(Debug)]
struct Tables {
    live: SampleSlab,
    /// Handles of the samples recorded by address.
    address_map: HashMap<usize, SampleHandle, FastBuildHasher>,
    sites: Vec<Site>,
    site_index: HashMap<u64, u32, FastBuildHasher>,
    stack_frames: Vec<usize>,
    history: HistoryRing,
}

impl Tables {
    fn frames_of(&self, site: &Site) -> &[usize] {
        let start = site.frames_start as usize;
        &self.stack_frames[start..start + usize::from(site.frames_len)]
    }

    /// The id of the site with this key, added if new (or the overflow
    /// site when the table is full).
    fn intern_site(
        &mut self,
        location: Option<&'static Location<'static>>,
        frames: &[usize],
        hash: u64,
    ) -> u32 {
        if location.is_none() && frames.is_empty() {
            return SITE_ID_UNKNOWN;
        }
        let head = self.site_index.get(&hash).copied().unwrap_or(NO_SITE);
        let mut cursor = head;
        while cursor != NO_SITE {
            let site = &self.sites[cursor as usize];
            if site.location == location && self.frames_of(site) == frames {
                return cursor;
            }
            cursor = site.hash_next;
        }
        if self.sites.len() >= SITES_MAX {
            return SITE_ID_OVERFLOW;
        }
        // Both fit: SITES_MAX and STACK_FRAMES_MAX are checked against u32
        // and u16 at compile time.
        let site_id = self.sites.len() as u32;
        let frames_start = self.stack_frames.len() as u32;
        self.stack_frames.extend_from_slice(frames);
        self.sites.push(Site {
            location,
            frames_start,
            frames_len: frames.len() as u16,
            hash_next: head,
            cumulative: Accumulator::default(),
        });
        self.site_index.insert(hash, site_id);
        site_id
    }
}

/// Records sampled allocations: the live ones by address, all of them per
/// call site, and (if enabled) a bounded history of events. `Send + Sync`;
/// every method takes `&self` and a short lock, and only sampled events (and
/// history events, when enabled) reach it.
///
/// Accounting, per site: the cumulative estimates are the sums of the
/// weights of every sample recorded there; the live estimates are the sums
/// over the samples still in the live table (recomputed per report, so a
/// free subtracts exactly what its allocation added).
#[derive(Debug)]
pub struct Profiler {
    level: ProfileLevel,
    mean_bytes: u64,
    seed: u64,
    history_enabled: bool,
    samplers_created: AtomicU64,
    time: TimeSource,
    stack_capture_cost_ns: OnceLock<u64>,
    tables: Mutex<Tables>,
}

impl Profiler {
    /// A profiler on the monotonic clock.
    pub fn new(config: ProfileConfig) -> Result<Self, SamplingError> {
        Profiler::with_time(config, TimeSource::Monotonic(Instant::now()))
    }

    /// A profiler whose ages come from `clock` (tests, replays).
    pub fn with_clock(
        config: ProfileConfig,
        clock: Arc<ManualClock>,
    ) -> Result<Self, SamplingError> {
        Profiler::with_time(config, TimeSource::Manual(clock))
    }

    fn with_time(config: ProfileConfig, time: TimeSource) -> Result<Self, SamplingError> {
        if config.history_events_max > HISTORY_EVENTS_LIMIT {
            return Err(SamplingError::HistoryTooLarge {
                requested_events: config.history_events_max,
                max_events: HISTORY_EVENTS_LIMIT,
            });
        }
        let tables = Tables {
            live: SampleSlab::new(SAMPLE_HANDLES_MAX),
            address_map: HashMap::default(),
            // Unknown and overflow.
            sites: vec![Site::reserved(), Site::reserved()],
            site_index: HashMap::default(),
            stack_frames: Vec::new(),
            history: HistoryRing::new(config.history_events_max),
        };
        Ok(Profiler {
            level: config.level,
            mean_bytes: config.mean_bytes,
            seed: config.seed,
            history_enabled: config.history_events_max > 0,
            samplers_created: AtomicU64::new(0),
            time,
            stack_capture_cost_ns: OnceLock::new(),
            tables: Mutex::new(tables),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Every update leaves the tables consistent before it can panic, so
        // a panic elsewhere while holding the lock does not spoil them.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The recording level.
    pub fn level(&self) -> ProfileLevel {
        self.level
    }

    /// Mean gap between sample points, `R`.
    pub fn mean_bytes(&self) -> u64 {
        self.mean_bytes
    }

    /// A sampler for one thread. Each call derives a distinct seed from the
    /// config's seed and a counter, so a run is reproducible given the order
    /// in which threads ask. Disabled at [`ProfileLevel::Off`] or a mean of
    /// [`SAMPLE_MEAN_BYTES_DISABLED`].
    pub fn thread_sampler(&self) -> ByteSampler {
        if self.level == ProfileLevel::Off || self.mean_bytes == SAMPLE_MEAN_BYTES_DISABLED {
            return ByteSampler::disabled();
        }
        let index = self.samplers_created.fetch_add(1, Ordering::Relaxed);
        ByteSampler::new(self.mean_bytes, mix64(self.seed ^ mix64(index)))
    }

    /// Milliseconds since the profiler was created, saturating at
    /// `u32::MAX` (49.7 days): the time base of [`SampleRecord::alloc_ms`]
    /// and [`HistoryEvent::at_ms`].
    pub fn now_ms(&self) -> u32 {
        u32::try_from(self.time.elapsed().as_millis()).unwrap_or(u32::MAX)
    }

    /// Records a sampled allocation of `size_bytes` made at `site`
    /// (`None`: unknown) and returns its handle, which the caller keeps and
    /// passes to [`record_free_handle`](Profiler::record_free_handle). The
    /// sample costs exactly one 16-byte [`SampleRecord`]. At
    /// [`ProfileLevel::Detailed`] the stack is captured here, before the
    /// lock is taken. Recorded whatever the level: the level only decides
    /// the samplers and the stack capture.
    ///
    /// Refused (nothing changes) if an allocation of that size is never
    /// sampled (`p = 0`), or if the slab holds [`SAMPLE_HANDLES_MAX`]
    /// entries and none is vacant.
    pub fn record_alloc_handle(
        &self,
        size_bytes: u64,
        site: Option<&'static Location<'static>>,
    ) -> Result<SampleHandle, SamplingError> {
        let weight = self.weight(size_bytes)?;
        // Captured here, not in a shared helper, so the stack does not
        // spend a frame on it.
        let stack = if self.level == ProfileLevel::Detailed {
            CapturedStack::capture()
        } else {
            CapturedStack::EMPTY
        };
        self.insert_sample(&weight, size_bytes, site, &stack, None)
    }

    /// Records the free of the sample `handle` names and returns its record.
    ///
    /// Refused (nothing changes) if the handle is past the slab's end
    /// ([`SamplingError::StaleHandle`]), names a vacant entry, i.e. a sample
    /// already freed ([`SamplingError::VacantHandle`]), or names a sample
    /// recorded by address ([`SamplingError::AddressKeyed`]). A handle whose
    /// entry was reused names the new sample: free each handle once.
    pub fn record_free_handle(&self, handle: SampleHandle) -> Result<SampleRecord, SamplingError> {
        self.lock().live.remove(handle, Keying::Handle)
    }

    /// Records a sampled allocation of `size_bytes` at `addr`, made at
    /// `site` (`None`: unknown), for callers that have nowhere to keep a
    /// handle (a global allocator): the profiler maps the address to the
    /// sample's handle itself, which costs the map's bytes
    /// ([`ProfilerMetadata::address_map_bytes`], 16 per entry plus slack)
    /// on top of the 16-byte record. Otherwise as
    /// [`record_alloc_handle`](Profiler::record_alloc_handle).
    ///
    /// Refused (nothing changes) if `addr` already has a live sample, if an
    /// allocation of that size is never sampled (`p = 0`), or if the slab
    /// is full.
    pub fn record_alloc(
        &self,
        addr: usize,
        size_bytes: u64,
        site: Option<&'static Location<'static>>,
    ) -> Result<(), SamplingError> {
        let weight = self.weight(size_bytes)?;
        let stack = if self.level == ProfileLevel::Detailed {
            CapturedStack::capture()
        } else {
            CapturedStack::EMPTY
        };
        self.insert_sample(&weight, size_bytes, site, &stack, Some(addr))
            .map(|_| ())
    }

    /// Records the free of the sampled allocation at `addr` and returns its
    /// record; `None` if `addr` has no live sample recorded by address (a
    /// bookkeeping error of the caller; nothing changes).
    pub fn record_free(&self, addr: usize) -> Option<SampleRecord> {
        let mut tables = self.lock();
        let handle = tables.address_map.remove(&addr)?;
        match tables.live.remove(handle, Keying::Address) {
            Ok(record) => Some(record),
            Err(error) => panic!(
                "address map names handle {handle} for {addr:#x}, but the slab refuses it: {error}"
            ),
        }
    }

    /// Live sampled allocations, recorded either way.
    pub fn live_samples(&self) -> usize {
        self.lock().live.live_entries()
    }

    /// Vacant entries in the slab below its end: freed samples not yet
    /// reused, nor dropped by [`shrink`](Profiler::shrink).
    pub fn vacant_entries(&self) -> usize {
        self.lock().live.vacant_entries()
    }

    /// Drops the slab's vacant tail and releases its spare capacity and the
    /// address map's; returns the heap bytes released. Live samples keep
    /// their handles, so vacant entries below the highest live one stay.
    /// O(slab entries + address map); meant for the pool's trim path.
    pub fn shrink(&self) -> usize {
        let mut tables = self.lock();
        let map_bytes_before = hash_map_heap_bytes(&tables.address_map);
        let slab_released_bytes = tables.live.shrink();
        tables.address_map.shrink_to_fit();
        slab_released_bytes + map_bytes_before - hash_map_heap_bytes(&tables.address_map)
    }

    fn weight(&self, size_bytes: u64) -> Result<SampleWeight, SamplingError> {
        sample_weight(size_bytes, self.mean_bytes).ok_or(SamplingError::ZeroProbability {
            size_bytes,
            mean_bytes: self.mean_bytes,
        })
    }

    /// Stores a sample, keyed by handle or (with `addr`) by address. Every
    /// check comes before the first change, so a refusal changes nothing.
    fn insert_sample(
        &self,
        weight: &SampleWeight,
        size_bytes: u64,
        site: Option<&'static Location<'static>>,
        stack: &CapturedStack,
        addr: Option<usize>,
    ) -> Result<SampleHandle, SamplingError> {
        let hash = site_hash(site, stack.frames());
        let alloc_ms = self.now_ms();
        let mut tables = self.lock();
        if let Some(addr) = addr {
            if let Some(&handle) = tables.address_map.get(&addr) {
                let live_size_bytes = match tables.live.get(handle) {
                    Ok((record, _)) => record.size_bytes,
                    Err(error) => panic!(
                        "address map names handle {handle} for {addr:#x}, but the slab \
                         refuses it: {error}"
                    ),
                };
                return Err(SamplingError::AlreadyLive {
                    addr,
                    live_size_bytes,
                    size_bytes,
                });
            }
        }
        tables.live.check_room()?;
        let site_id = tables.intern_site(site, stack.frames(), hash);
        tables.sites[site_id as usize].cumulative.add(weight);
        let record = SampleRecord {
            size_bytes,
            alloc_ms,
            site_id,
        };
        let keying = if addr.is_some() {
            Keying::Address
        } else {
            Keying::Handle
        };
        let handle = tables.live.insert(record, keying)?;
        if let Some(addr) = addr {
            tables.address_map.insert(addr, handle);
        }
        Ok(handle)
    }

    /// Whether the history ring is on; no lock.
    #[inline]
    pub fn history_enabled(&self) -> bool {
        self.history_enabled
    }

    /// Appends `event` to the history ring, overwriting the oldest event
    /// when it is full; does nothing when history is off.
    pub fn record_event(&self, event: HistoryEvent) {
        if self.history_enabled {
            self.lock().history.push(event);
        }
    }

    /// The history ring's events, oldest first.
    pub fn history(&self) -> Vec<HistoryEvent> {
        self.lock().history.to_vec()
    }

    /// Events overwritten because the history ring was full.
    pub fn history_dropped_events(&self) -> u64 {
        self.lock().history.dropped_events()
    }

    /// Heap bytes held by the slab (live records and the rest), the address
    /// map, the site table (with its index and stack frames) and the
    /// history ring, computed from their capacities. The hash tables are
    /// counted with the layout of std's SwissTable: per bucket one entry
    /// and one control byte, plus one group of control bytes.
    pub fn metadata_bytes(&self) -> ProfilerMetadata {
        let tables = self.lock();
        ProfilerMetadata {
            record_bytes: tables.live.record_bytes(),
            vacant_bytes: tables.live.vacant_bytes(),
            address_map_bytes: hash_map_heap_bytes(&tables.address_map),
            site_table_bytes: hash_map_heap_bytes(&tables.site_index)
                + tables.sites.capacity() * size_of::<Site>()
                + tables.stack_frames.capacity() * size_of::<usize>(),
            history_bytes: tables.history.heap_bytes(),
        }
    }

    /// Mean wall-clock nanoseconds of one stack capture (the extra cost of a
    /// sample at [`ProfileLevel::Detailed`]), timed over
    /// [`STACK_COST_CAPTURES`] captures from the caller's stack.
    pub fn stack_capture_cost_ns() -> u64 {
        capture_cost_ns(STACK_COST_CAPTURES)
    }

    /// The estimates per call site and in total, live and since creation.
    /// Symbols of Detailed stacks are resolved here, outside the lock.
    pub fn profile(&self) -> ProfileReport {
        struct Row {
            site_id: u32,
            location: Option<&'static Location<'static>>,
            frames: Vec<usize>,
            cumulative: Accumulator,
            live: Accumulator,
        }
        let uptime = self.time.elapsed();
        let mut rows = {
            let tables = self.lock();
            let mut live = vec![Accumulator::default(); tables.sites.len()];
            for record in tables.live.live_records() {
                if let Some(weight) = sample_weight(record.size_bytes, self.mean_bytes) {
                    live[record.site_id as usize].add(&weight);
                }
            }
            let mut rows = Vec::new();
            for (site_id, site) in tables.sites.iter().enumerate() {
                if site.cumulative.sampled_count > 0 {
                    rows.push(Row {
                        site_id: site_id as u32,
                        location: site.location,
                        frames: tables.frames_of(site).to_vec(),
                        cumulative: site.cumulative,
                        live: live[site_id],
                    });
                }
            }
            rows
        };
        rows.sort_by(|a, b| {
            b.live
                .bytes
                .total_cmp(&a.live.bytes)
                .then(b.cumulative.bytes.total_cmp(&a.cumulative.bytes))
                .then(a.site_id.cmp(&b.site_id))
        });
        let mut cumulative_total = Accumulator::default();
        let mut live_total = Accumulator::default();
        let sites = rows
            .iter()
            .map(|row| {
                cumulative_total.merge(&row.cumulative);
                live_total.merge(&row.live);
                SiteProfile {
                    site_id: row.site_id,
                    site: self.label(row.site_id, row.location, &row.frames),
                    estimates: ProfileEstimates::from_sums(&row.cumulative, &row.live),
                }
            })
            .collect();
        ProfileReport {
            level: self.level,
            mean_bytes: self.mean_bytes,
            uptime,
            sites,
            totals: ProfileEstimates::from_sums(&cumulative_total, &live_total),
            stack_capture_cost_ns: self.detailed_cost_ns(),
            method: method_note(self.mean_bytes),
        }
    }

    /// Live sampled allocations at least `min_age` old, grouped by call
    /// site, with their estimated bytes and counts and the oldest age.
    pub fn leak_report(&self, min_age: Duration) -> LeakReport {
        struct Row {
            site_id: u32,
            location: Option<&'static Location<'static>>,
            frames: Vec<usize>,
            sums: Accumulator,
            oldest_age_ms: u64,
        }
        let uptime = self.time.elapsed();
        let now_ms = u64::from(self.now_ms());
        let min_age_ms = u64::try_from(min_age.as_millis()).unwrap_or(u64::MAX);
        let mut rows = {
            let tables = self.lock();
            let mut by_site: HashMap<u32, (Accumulator, u64)> = HashMap::new();
            for record in tables.live.live_records() {
                let age_ms = now_ms.saturating_sub(u64::from(record.alloc_ms));
                if age_ms < min_age_ms {
                    continue;
                }
                if let Some(weight) = sample_weight(record.size_bytes, self.mean_bytes) {
                    let (sums, oldest_age_ms) = by_site.entry(record.site_id).or_default();
                    sums.add(&weight);
                    *oldest_age_ms = (*oldest_age_ms).max(age_ms);
                }
            }
            by_site
                .into_iter()
                .map(|(site_id, (sums, oldest_age_ms))| {
                    let site = &tables.sites[site_id as usize];
                    Row {
                        site_id,
                        location: site.location,
                        frames: tables.frames_of(site).to_vec(),
                        sums,
                        oldest_age_ms,
                    }
                })
                .collect::<Vec<_>>()
        };
        rows.sort_by(|a, b| {
            b.sums
                .bytes
                .total_cmp(&a.sums.bytes)
                .then(a.site_id.cmp(&b.site_id))
        });
        let mut total = Accumulator::default();
        let mut oldest_age_ms = 0;
        let sites = rows
            .iter()
            .map(|row| {
                total.merge(&row.sums);
                oldest_age_ms = oldest_age_ms.max(row.oldest_age_ms);
                LeakSite {
                    site_id: row.site_id,
                    site: self.label(row.site_id, row.location, &row.frames),
                    estimates: LeakEstimates::from_sums(
                        &row.sums,
                        Duration::from_millis(row.oldest_age_ms),
                    ),
                }
            })
            .collect();
        LeakReport {
            min_age,
            uptime,
            mean_bytes: self.mean_bytes,
            sites,
            totals: LeakEstimates::from_sums(&total, Duration::from_millis(oldest_age_ms)),
            method: method_note(self.mean_bytes),
        }
    }

    fn label(
        &self,
        site_id: u32,
        location: Option<&'static Location<'static>>,
        frames: &[usize],
    ) -> String {
        if site_id == SITE_ID_OVERFLOW {
            format!("(other sites: the site table holds at most {SITES_MAX})")
        } else {
            site_label(location, frames)
        }
    }

    /// The capture cost, measured once per profiler, for Detailed reports.
    fn detailed_cost_ns(&self) -> Option<u64> {
        (self.level == ProfileLevel::Detailed).then(|| {
            *self
                .stack_capture_cost_ns
                .get_or_init(Profiler::stack_capture_cost_ns)
        })
    }

    /// Panics, printing the values, if an invariant of the tables is broken.
    /// O(live samples + sites + frames).
    pub fn check_invariants(&self) {
        let tables = self.lock();
        assert!(
            tables.sites.len() >= 2 && tables.sites.len() <= SITES_MAX,
            "site table holds {} sites (2 reserved, at most {SITES_MAX})",
            tables.sites.len()
        );
        let mut frames_end = 0usize;
        let mut chained_sites = 0usize;
        for (site_id, site) in tables.sites.iter().enumerate() {
            if site_id == SITE_ID_UNKNOWN as usize || site_id == SITE_ID_OVERFLOW as usize {
                assert!(
                    site.location.is_none() && site.frames_len == 0 && site.hash_next == NO_SITE,
                    "reserved site {site_id} has location {:?}, {} frames, hash_next {}",
                    site.location,
                    site.frames_len,
                    site.hash_next
                );
                continue;
            }
            assert!(
                site.location.is_some() || site.frames_len > 0,
                "site {site_id} has neither a location nor frames"
            );
            assert_eq!(
                site.frames_start as usize, frames_end,
                "site {site_id} frames start at {} but the previous site's end at {frames_end}",
                site.frames_start
            );
            frames_end += usize::from(site.frames_len);
            let hash = site_hash(site.location, tables.frames_of(site));
            let mut cursor = tables.site_index.get(&hash).copied().unwrap_or(NO_SITE);
            let mut steps = 0usize;
            while cursor != NO_SITE && cursor as usize != site_id {
                cursor = tables.sites[cursor as usize].hash_next;
                steps += 1;
                assert!(
                    steps <= tables.sites.len(),
                    "hash chain of site {site_id} (hash {hash:#x}) loops"
                );
            }
            assert_eq!(
                cursor as usize, site_id,
                "site {site_id} (hash {hash:#x}) is not on its hash chain"
            );
            chained_sites += 1;
        }
        assert_eq!(
            frames_end,
            tables.stack_frames.len(),
            "sites cover {frames_end} frames, the arena holds {}",
            tables.stack_frames.len()
        );
        let mut chain_entries = 0usize;
        for &head in tables.site_index.values() {
            let mut cursor = head;
            while cursor != NO_SITE {
                chain_entries += 1;
                cursor = tables.sites[cursor as usize].hash_next;
            }
        }
        assert_eq!(
            chain_entries, chained_sites,
            "hash chains hold {chain_entries} entries, {chained_sites} sites are interned"
        );
        tables.live.check_invariants(tables.sites.len());
        let mut live_per_site = vec![0u64; tables.sites.len()];
        for record in tables.live.live_records() {
            assert!(
                sample_weight(record.size_bytes, self.mean_bytes).is_some(),
                "live sample {record:?} has probability 0 at mean {}",
                self.mean_bytes
            );
            live_per_site[record.site_id as usize] += 1;
        }
        let mut address_keyed = 0usize;
        for (&addr, &handle) in &tables.address_map {
            let entry = tables.live.get(handle);
            assert!(
                matches!(entry, Ok((_, Keying::Address))),
                "address map names handle {handle} for {addr:#x}, the slab holds {entry:?}"
            );
            address_keyed += 1;
        }
        let slab_address_keyed = tables
            .live
            .live_handles()
            .filter(|&(_, keying)| keying == Keying::Address)
            .count();
        assert_eq!(
            address_keyed, slab_address_keyed,
            "address map holds {address_keyed} handles, the slab {slab_address_keyed} samples \
             recorded by address"
        );
        for (site_id, (site, &live)) in tables.sites.iter().zip(&live_per_site).enumerate() {
            assert!(
                live <= site.cumulative.sampled_count,
                "site {site_id} has {live} live samples but {} samples in total",
                site.cumulative.sampled_count
            );
        }
        tables.history.check_invariants();
    }
}

/// Heap bytes of a std `HashMap` from its capacity: std's SwissTable has a
/// power-of-two number of buckets, `capacity = buckets - 1` below 8 buckets
/// and `buckets / 8 * 7` from 8 on; its allocation holds the entries
/// (rounded up to the control bytes' alignment), one control byte per
/// bucket and one more group of control bytes.
fn hash_map_heap_bytes<K, V, S>(map: &HashMap<K, V, S>) -> usize {
    /// Control bytes per group: SSE2 groups on x86, a machine word elsewhere.
    const GROUP_WIDTH: usize = if cfg!(any(target_arch = "x86", target_arch = "x86_64"))
        && cfg!(target_feature = "sse2")
    {
        16
    } else {
        size_of::<usize>()
    };
    let capacity = map.capacity();
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        capacity + 1
    } else {
        (capacity / 7 * 8).next_power_of_two()
    };
    let align = align_of::<(K, V)>().max(GROUP_WIDTH);
    let entries_bytes = (buckets * size_of::<(K, V)>()).next_multiple_of(align);
    entries_bytes + buckets + GROUP_WIDTH
}
