//! [`RegionStore`]: a directory of region files (each a "dimension" of a
//! data set) behind one layer index, plus heap "proto" regions that are
//! readable at once and later crystallized into files while readers keep
//! reading.
//!
//! Readers never take a lock: the store's state is an immutable snapshot
//! behind an [`ArcSwap`]; a lookup loads it, finds the layer in O(1) with
//! no allocation, and gets a [`LayerRef`] that keeps the layer's storage
//! (the mapped [`Region`] or the heap layer) alive by reference count.
//! Writers (loading, adding proto layers, crystallizing, evicting) are
//! serialized by one mutex and publish a new snapshot; a reader holds the
//! old version or the new one, never a torn state, and a heap layer is
//! freed when its last reader drops it.
//!
//! Memory: heap bytes of protos plus mapped bytes of regions, against a
//! limit with three levels ([`PressureLevel`]): warn at 75%, evict cold
//! mappings at 85% (regions no reader holds, least recently read first;
//! they are mapped again on their next read), reject new heap layers at
//! 95%.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::builder::RegionBuilder;
use crate::error::RegionError;
use crate::format::Dtype;
use crate::region::Region;

/// File names the store loads (anything else, and names starting with `.`,
/// such as a builder's temporary files, is skipped).
pub const REGION_EXTENSIONS: [&str; 2] = ["region", "safetensors"];
/// Default levels, in percent of the limit.
pub const WARN_PERCENT_DEFAULT: u64 = 75;
/// See [`WARN_PERCENT_DEFAULT`].
pub const EVICT_PERCENT_DEFAULT: u64 = 85;
/// See [`WARN_PERCENT_DEFAULT`].
pub const REJECT_PERCENT_DEFAULT: u64 = 95;

const _: () = assert!(
    WARN_PERCENT_DEFAULT < EVICT_PERCENT_DEFAULT
        && EVICT_PERCENT_DEFAULT < REJECT_PERCENT_DEFAULT
        && REJECT_PERCENT_DEFAULT <= 100
);

/// The store's memory limit and its levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Heap plus mapped bytes allowed.
    pub limit_bytes: u64,
    /// Percent of the limit at which the level is [`PressureLevel::Warn`].
    pub warn_percent: u64,
    /// Percent at which cold mappings are dropped.
    pub evict_percent: u64,
    /// Percent at which new heap layers are refused.
    pub reject_percent: u64,
}

impl StoreLimits {
    /// `limit_bytes` with the default levels (75 / 85 / 95%).
    pub fn new(limit_bytes: u64) -> StoreLimits {
        StoreLimits {
            limit_bytes,
            warn_percent: WARN_PERCENT_DEFAULT,
            evict_percent: EVICT_PERCENT_DEFAULT,
            reject_percent: REJECT_PERCENT_DEFAULT,
        }
    }

    fn threshold(&self, percent: u64) -> u64 {
        (self.limit_bytes as u128 * percent as u128 / 100) as u64
    }

    /// The level of `used_bytes`.
    pub fn level(&self, used_bytes: u64) -> PressureLevel {
        if used_bytes >= self.threshold(self.reject_percent) {
            PressureLevel::Reject
        } else if used_bytes >= self.threshold(self.evict_percent) {
            PressureLevel::Evict
        } else if used_bytes >= self.threshold(self.warn_percent) {
            PressureLevel::Warn
        } else {
            PressureLevel::Normal
        }
    }
}

/// How full the store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PressureLevel {
    /// Below the warning level.
    Normal,
    /// At or above the warning level.
    Warn,
    /// At or above the eviction level: cold mappings are dropped.
    Evict,
    /// At or above the rejection level: new heap layers are refused.
    Reject,
}

/// A layer's place in the store: stable for the store's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerId {
    /// The region's number.
    pub region: u32,
    /// The layer's number in it.
    pub layer: u32,
}

/// Errors of the store.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// A region file's error.
    Region(RegionError),
    /// No region or layer of this name or id.
    NotFound {
        /// What was asked for.
        what: String,
    },
    /// The operation needs a proto region and this one is not (or the
    /// other way round), or the name is taken.
    Conflict {
        /// What is wrong.
        detail: String,
    },
    /// A new heap layer would pass the rejection level.
    OverLimit {
        /// Bytes asked for.
        requested_bytes: u64,
        /// Heap plus mapped bytes in use.
        used_bytes: u64,
        /// Where rejection starts.
        reject_at_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// Crystallization stopped after a step (a simulated crash, for tests).
    Interrupted {
        /// The last step done.
        step: CrystallizeStep,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Region(e) => write!(f, "{e}"),
            StoreError::NotFound { what } => write!(f, "region store: no {what}"),
            StoreError::Conflict { detail } => write!(f, "region store: {detail}"),
            StoreError::OverLimit {
                requested_bytes,
                used_bytes,
                reject_at_bytes,
                limit_bytes,
            } => write!(
                f,
                "region store: {requested_bytes} more heap bytes refused: {used_bytes} bytes are in use, new layers are refused from {reject_at_bytes} (limit {limit_bytes})"
            ),
            StoreError::Interrupted { step } => {
                write!(f, "region store: crystallization stopped after {step:?}")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Region(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RegionError> for StoreError {
    fn from(e: RegionError) -> Self {
        StoreError::Region(e)
    }
}

/// A layer on the heap, in a proto region.
#[derive(Debug)]
pub struct HeapLayer {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    bytes: Vec<u8>,
    attributes: Vec<(String, String)>,
}

/// The steps of [`RegionStore::crystallize`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrystallizeStep {
    /// The region file is written to a temporary file and synced.
    Written,
    /// The temporary file is mapped and every checksum verified.
    Verified,
    /// It is renamed into place and the directory synced.
    Renamed,
    /// Readers are switched to the mapped version.
    Switched,
}

#[derive(Debug)]
struct Proto {
    layers: Vec<Arc<HeapLayer>>,
    index: HashMap<Box<str>, u32>,
}

impl Proto {
    fn heap_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes.len() as u64).sum()
    }
}

#[derive(Debug)]
enum Storage {
    Mapped(Arc<Region>),
    /// Dropped to relieve memory: mapped again on the next read.
    Unmapped {
        index: Arc<HashMap<Box<str>, u32>>,
    },
    Proto(Arc<Proto>),
    /// The file disappeared at a reload.
    Gone,
}

#[derive(Debug)]
struct Slot {
    name: Box<str>,
    path: Option<PathBuf>,
    storage: Storage,
    /// Tick of the last read (relaxed, for choosing what to evict).
    last_read: Arc<AtomicU64>,
    /// File size and modification time when mapped (to notice changes).
    stamp: Option<(u64, std::time::SystemTime)>,
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Arc<Slot>>,
    by_name: HashMap<Box<str>, u32>,
}

/// A layer a reader holds: the mapped region or the heap layer stays alive
/// while it does.
#[derive(Clone, Debug)]
pub enum LayerRef {
    /// In a mapped region file (its checksum verified).
    Mapped {
        /// The region.
        region: Arc<Region>,
        /// The layer's number in it.
        index: usize,
    },
    /// On the heap, in a proto region.
    Heap(Arc<HeapLayer>),
}

impl LayerRef {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            LayerRef::Mapped { region, index } => region
                .layer_at(*index)
                .expect("verified when the reference was made")
                .bytes(),
            LayerRef::Heap(layer) => &layer.bytes,
        }
    }
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            LayerRef::Mapped { region, index } => region.layers()[*index].dtype,
            LayerRef::Heap(layer) => layer.dtype,
        }
    }
    /// Shape.
    pub fn shape(&self) -> &[u64] {
        match self {
            LayerRef::Mapped { region, index } => &region.layers()[*index].shape,
            LayerRef::Heap(layer) => &layer.shape,
        }
    }
    /// The layer's name.
    pub fn name(&self) -> &str {
        match self {
            LayerRef::Mapped { region, index } => &region.layers()[*index].name,
            LayerRef::Heap(layer) => &layer.name,
        }
    }
    /// Whether it is on the heap (a proto layer not yet crystallized).
    pub fn is_heap(&self) -> bool {
        matches!(self, LayerRef::Heap(_))
    }
}

/// A directory of regions and proto regions; see the module documentation.
pub struct RegionStore {
    dir: PathBuf,
    limits: StoreLimits,
    state: ArcSwap<State>,
    writer: Mutex<()>,
    errors: Mutex<Vec<(PathBuf, String)>>,
    clock: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for RegionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionStore")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn region_name(path: &Path) -> Option<String> {
    let file_name = path.file_name()?.to_str()?;
    if file_name.starts_with('.') {
        return None;
    }
    let extension = path.extension()?.to_str()?;
    if !REGION_EXTENSIONS.contains(&extension) {
        return None;
    }
    Some(path.file_stem()?.to_str()?.to_string())
}

impl RegionStore {
    /// Loads every region file of `dir` (`*.region`, `*.safetensors`). A
    /// file that fails to open is skipped and recorded in
    /// [`RegionStore::errors`]; the others load.
    pub fn open_dir(dir: impl AsRef<Path>, limits: StoreLimits) -> Result<RegionStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(StoreError::NotFound {
                what: format!("directory {}", dir.display()),
            });
        }
        let store = RegionStore {
            dir,
            limits,
            state: ArcSwap::from_pointee(State::default()),
            writer: Mutex::new(()),
            errors: Mutex::new(Vec::new()),
            clock: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        };
        store.reload()?;
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files that failed to load at the last (re)load, with why.
    pub fn errors(&self) -> Vec<(PathBuf, String)> {
        self.errors.lock().expect("errors lock").clone()
    }

    /// Rescans the directory: new files are loaded, changed ones mapped
    /// again, vanished ones dropped (readers holding them keep them).
    /// Protos are kept. Region numbers never change.
    pub fn reload(&self) -> Result<(), StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| RegionError::io(&self.dir, "listing the directory", e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| region_name(p).is_some())
            .collect();
        paths.sort();
        let old = self.state.load_full();
        let mut slots = old.slots.clone();
        let mut by_name = old.by_name.clone();
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for path in paths {
            let name = region_name(&path).expect("filtered");
            if !seen.insert(name.clone()) {
                errors.push((path, format!("another file already gives region {name:?}")));
                continue;
            }
            let stamp = file_stamp(&path);
            if let Some(&number) = by_name.get(name.as_str()) {
                let slot = &slots[number as usize];
                let unchanged = slot.stamp.is_some()
                    && slot.stamp == stamp
                    && slot.path.as_deref() == Some(path.as_path());
                if unchanged || matches!(slot.storage, Storage::Proto(_)) {
                    continue;
                }
            }
            match Region::open(&path) {
                Ok(region) => {
                    let slot = Arc::new(Slot {
                        name: name.clone().into_boxed_str(),
                        path: Some(path),
                        storage: Storage::Mapped(Arc::new(region)),
                        last_read: Arc::new(AtomicU64::new(self.tick())),
                        stamp,
                    });
                    match by_name.get(name.as_str()) {
                        Some(&number) => slots[number as usize] = slot,
                        None => {
                            by_name.insert(name.into_boxed_str(), slots.len() as u32);
                            slots.push(slot);
                        }
                    }
                }
                Err(error) => errors.push((path, error.to_string())),
            }
        }
        // Files gone from the directory.
        for slot in slots.iter_mut() {
            let vanished = slot.path.is_some()
                && !matches!(slot.storage, Storage::Proto(_) | Storage::Gone)
                && !seen.contains(slot.name.as_ref());
            if vanished {
                *slot = Arc::new(Slot {
                    name: slot.name.clone(),
                    path: slot.path.clone(),
                    storage: Storage::Gone,
                    last_read: Arc::clone(&slot.last_read),
                    stamp: None,
                });
            }
        }
        *self.errors.lock().expect("errors lock") = errors;
        self.state.store(Arc::new(State { slots, by_name }));
        self.relieve_pressure_locked();
        Ok(())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The id of layer `layer` of region `region`: O(1), no allocation.
    pub fn lookup(&self, region: &str, layer: &str) -> Option<LayerId> {
        let state = self.state.load();
        let number = *state.by_name.get(region)?;
        let index = match &state.slots[number as usize].storage {
            Storage::Mapped(r) => r.layer_index(layer)?,
            Storage::Unmapped { index } => *index.get(layer)? as usize,
            Storage::Proto(p) => *p.index.get(layer)? as usize,
            Storage::Gone => return None,
        };
        Some(LayerId {
            region: number,
            layer: index as u32,
        })
    }

    /// [`RegionStore::lookup`] for many layers against one snapshot.
    pub fn lookup_many(&self, names: &[(&str, &str)]) -> Vec<Option<LayerId>> {
        let state = self.state.load();
        names
            .iter()
            .map(|(region, layer)| {
                let number = *state.by_name.get(*region)?;
                let index = match &state.slots[number as usize].storage {
                    Storage::Mapped(r) => r.layer_index(layer)?,
                    Storage::Unmapped { index } => *index.get(*layer)? as usize,
                    Storage::Proto(p) => *p.index.get(*layer)? as usize,
                    Storage::Gone => return None,
                };
                Some(LayerId {
                    region: number,
                    layer: index as u32,
                })
            })
            .collect()
    }

    /// Layer `layer` of region `region`.
    pub fn layer(&self, region: &str, layer: &str) -> Result<LayerRef, StoreError> {
        let id = self
            .lookup(region, layer)
            .ok_or_else(|| StoreError::NotFound {
                what: format!("layer {layer:?} in region {region:?}"),
            })?;
        self.layer_by_id(id)
    }

    /// The layer with id `id`. Takes no lock unless its region was evicted
    /// and must be mapped again.
    pub fn layer_by_id(&self, id: LayerId) -> Result<LayerRef, StoreError> {
        let not_found = || StoreError::NotFound {
            what: format!("layer id {id:?}"),
        };
        let slot = {
            let state = self.state.load();
            Arc::clone(state.slots.get(id.region as usize).ok_or_else(not_found)?)
        };
        slot.last_read.store(self.tick(), Ordering::Relaxed);
        match &slot.storage {
            Storage::Mapped(region) => {
                let index = id.layer as usize;
                region.layer_at(index)?;
                Ok(LayerRef::Mapped {
                    region: Arc::clone(region),
                    index,
                })
            }
            Storage::Proto(proto) => proto
                .layers
                .get(id.layer as usize)
                .map(|l| LayerRef::Heap(Arc::clone(l)))
                .ok_or_else(not_found),
            Storage::Unmapped { .. } => {
                let region = self.remap(id.region)?;
                let index = id.layer as usize;
                region.layer_at(index)?;
                Ok(LayerRef::Mapped { region, index })
            }
            Storage::Gone => Err(not_found()),
        }
    }

    /// Maps an evicted region again, returning it; while the caller holds
    /// it, relieving pressure cannot unmap it again.
    fn remap(&self, number: u32) -> Result<Arc<Region>, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let state = self.state.load_full();
        let slot = &state.slots[number as usize];
        let path = match &slot.storage {
            Storage::Mapped(region) => return Ok(Arc::clone(region)), // another reader did it
            Storage::Unmapped { .. } => slot.path.clone().expect("an unmapped region has a file"),
            Storage::Proto(_) | Storage::Gone => {
                return Err(StoreError::NotFound {
                    what: format!("region {:?} as a file", slot.name),
                })
            }
        };
        let region = Arc::new(Region::open(&path)?);
        self.replace_slot(
            &state,
            number,
            Slot {
                name: slot.name.clone(),
                path: Some(path.clone()),
                storage: Storage::Mapped(Arc::clone(&region)),
                last_read: Arc::clone(&slot.last_read),
                stamp: file_stamp(&path),
            },
        );
        self.relieve_pressure_locked();
        Ok(region)
    }

    fn replace_slot(&self, state: &State, number: u32, slot: Slot) {
        let mut slots = state.slots.clone();
        slots[number as usize] = Arc::new(slot);
        self.state.store(Arc::new(State {
            slots,
            by_name: state.by_name.clone(),
        }));
    }

    /// Heap bytes of protos and mapped bytes of regions.
    pub fn used_bytes(&self) -> (u64, u64) {
        let state = self.state.load();
        let mut heap = 0;
        let mut mapped = 0;
        for slot in &state.slots {
            match &slot.storage {
                Storage::Mapped(r) => mapped += r.mapped_bytes(),
                Storage::Proto(p) => heap += p.heap_bytes(),
                Storage::Unmapped { .. } | Storage::Gone => {}
            }
        }
        (heap, mapped)
    }

    /// The current level.
    pub fn pressure(&self) -> PressureLevel {
        let (heap, mapped) = self.used_bytes();
        self.limits.level(heap + mapped)
    }

    /// Regions unmapped to relieve memory so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// At the eviction level, unmaps regions no reader holds, least
    /// recently read first, until below it. The writer lock is held.
    fn relieve_pressure_locked(&self) {
        let evict_at = self.limits.threshold(self.limits.evict_percent);
        loop {
            let (heap, mapped) = self.used_bytes();
            if heap + mapped < evict_at {
                return;
            }
            let state = self.state.load_full();
            let coldest = state
                .slots
                .iter()
                .enumerate()
                .filter_map(|(n, slot)| match &slot.storage {
                    // Held only by the store's snapshot: no reader has it.
                    Storage::Mapped(r) if Arc::strong_count(r) == 1 => {
                        Some((slot.last_read.load(Ordering::Relaxed), n))
                    }
                    _ => None,
                })
                .min();
            let Some((_, number)) = coldest else {
                return; // everything mapped is in use
            };
            let slot = &state.slots[number];
            let Storage::Mapped(region) = &slot.storage else {
                unreachable!("chosen as mapped");
            };
            let index: HashMap<Box<str>, u32> = region
                .layers()
                .iter()
                .enumerate()
                .map(|(i, l)| (l.name.clone().into_boxed_str(), i as u32))
                .collect();
            self.replace_slot(
                &state,
                number as u32,
                Slot {
                    name: slot.name.clone(),
                    path: slot.path.clone(),
                    storage: Storage::Unmapped {
                        index: Arc::new(index),
                    },
                    last_read: Arc::clone(&slot.last_read),
                    stamp: slot.stamp,
                },
            );
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A new, empty proto region `name` (its file will be
    /// `<dir>/<name>.region`).
    pub fn create_proto(&self, name: &str) -> Result<(), StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let state = self.state.load_full();
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            return Err(StoreError::Conflict {
                detail: format!("{name:?} is not a region name"),
            });
        }
        if state.by_name.contains_key(name) {
            return Err(StoreError::Conflict {
                detail: format!("region {name:?} exists"),
            });
        }
        let mut slots = state.slots.clone();
        let mut by_name = state.by_name.clone();
        by_name.insert(name.into(), slots.len() as u32);
        slots.push(Arc::new(Slot {
            name: name.into(),
            path: None,
            storage: Storage::Proto(Arc::new(Proto {
                layers: Vec::new(),
                index: HashMap::new(),
            })),
            last_read: Arc::new(AtomicU64::new(self.tick())),
            stamp: None,
        }));
        self.state.store(Arc::new(State { slots, by_name }));
        Ok(())
    }

    /// Adds a heap layer to proto region `region`: readable at once.
    /// Refused at the rejection level.
    pub fn add_proto_layer(
        &self,
        region: &str,
        layer: &str,
        dtype: Dtype,
        shape: &[u64],
        bytes: Vec<u8>,
        attributes: &[(&str, &str)],
    ) -> Result<LayerId, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let state = self.state.load_full();
        let number = *state
            .by_name
            .get(region)
            .ok_or_else(|| StoreError::NotFound {
                what: format!("region {region:?}"),
            })?;
        let slot = &state.slots[number as usize];
        let Storage::Proto(proto) = &slot.storage else {
            return Err(StoreError::Conflict {
                detail: format!("region {region:?} is a file, not a proto region"),
            });
        };
        if proto.index.contains_key(layer) || layer.is_empty() {
            return Err(StoreError::Conflict {
                detail: format!("layer {layer:?} exists in {region:?} or is not a name"),
            });
        }
        let declared = shape
            .iter()
            .try_fold(1u64, |p, &d| p.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size_bytes()));
        if declared != Some(bytes.len() as u64) {
            return Err(StoreError::Region(RegionError::InvalidLayer {
                layer: layer.to_string(),
                detail: format!(
                    "{} bytes given, shape {shape:?} of {dtype} holds {declared:?}",
                    bytes.len()
                ),
            }));
        }
        let (heap, mapped) = self.used_bytes();
        let reject_at = self.limits.threshold(self.limits.reject_percent);
        if heap + mapped + bytes.len() as u64 > reject_at {
            return Err(StoreError::OverLimit {
                requested_bytes: bytes.len() as u64,
                used_bytes: heap + mapped,
                reject_at_bytes: reject_at,
                limit_bytes: self.limits.limit_bytes,
            });
        }
        let mut layers = proto.layers.clone();
        let mut index = proto.index.clone();
        index.insert(layer.into(), layers.len() as u32);
        let mut attributes: Vec<(String, String)> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes.sort();
        layers.push(Arc::new(HeapLayer {
            name: layer.to_string(),
            dtype,
            shape: shape.to_vec(),
            bytes,
            attributes,
        }));
        let id = LayerId {
            region: number,
            layer: (layers.len() - 1) as u32,
        };
        self.replace_slot(
            &state,
            number,
            Slot {
                name: slot.name.clone(),
                path: None,
                storage: Storage::Proto(Arc::new(Proto { layers, index })),
                last_read: Arc::clone(&slot.last_read),
                stamp: None,
            },
        );
        self.relieve_pressure_locked();
        Ok(id)
    }

    /// Writes proto region `region` to `<dir>/<region>.region`, maps it,
    /// verifies every checksum, and switches readers to the mapped
    /// version. Layer ids are kept. A failure (or a crash) at any step
    /// leaves the proto as it was and no partial file under a region name.
    pub fn crystallize(&self, region: &str) -> Result<PathBuf, StoreError> {
        self.crystallize_until(region, CrystallizeStep::Switched)
    }

    /// [`RegionStore::crystallize`], stopping after `last` as a crash
    /// would (files on disk left as they are at that point): for tests of
    /// crash safety.
    #[doc(hidden)]
    pub fn crystallize_until(
        &self,
        region: &str,
        last: CrystallizeStep,
    ) -> Result<PathBuf, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let state = self.state.load_full();
        let number = *state
            .by_name
            .get(region)
            .ok_or_else(|| StoreError::NotFound {
                what: format!("region {region:?}"),
            })?;
        let slot = &state.slots[number as usize];
        let Storage::Proto(proto) = &slot.storage else {
            return Err(StoreError::Conflict {
                detail: format!("region {region:?} is already a file"),
            });
        };
        let destination = self.dir.join(format!("{region}.region"));
        if destination.exists() {
            return Err(StoreError::Conflict {
                detail: format!("{} exists", destination.display()),
            });
        }
        let mut builder = RegionBuilder::create(&destination)?;
        for layer in &proto.layers {
            let attributes: Vec<(&str, &str)> = layer
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            builder.add_tensor(
                &layer.name,
                layer.dtype,
                &layer.shape,
                &layer.bytes,
                &attributes,
            )?;
        }
        let pending = builder.write_temp()?;
        if last == CrystallizeStep::Written {
            std::mem::forget(pending); // as a crash would leave it
            return Err(StoreError::Interrupted { step: last });
        }
        let staged = pending.open()?;
        if let Err(mut errors) = staged.verify() {
            return Err(StoreError::Region(errors.remove(0)));
        }
        // The file's layer order is the proto's (the builder writes them in
        // order), so ids carry over.
        for (i, layer) in proto.layers.iter().enumerate() {
            if staged.layer_index(&layer.name) != Some(i)
                || staged.layer_at(i)?.bytes() != layer.bytes.as_slice()
            {
                return Err(StoreError::Conflict {
                    detail: format!(
                        "crystallized layer {:?} does not read back as written",
                        layer.name
                    ),
                });
            }
        }
        drop(staged);
        if last == CrystallizeStep::Verified {
            std::mem::forget(pending);
            return Err(StoreError::Interrupted { step: last });
        }
        let path = pending.commit()?;
        if last == CrystallizeStep::Renamed {
            return Err(StoreError::Interrupted { step: last });
        }
        let mapped = Region::open(&path)?;
        self.replace_slot(
            &state,
            number,
            Slot {
                name: slot.name.clone(),
                path: Some(path.clone()),
                storage: Storage::Mapped(Arc::new(mapped)),
                last_read: Arc::clone(&slot.last_read),
                stamp: file_stamp(&path),
            },
        );
        self.relieve_pressure_locked();
        Ok(path)
    }

    /// Every figure of the store as one JSON document: regions, layers,
    /// sizes, verification, heap and mapped bytes, the limits and level.
    pub fn dump_state(&self) -> serde_json::Value {
        let state = self.state.load();
        let (heap, mapped) = self.used_bytes();
        let regions: Vec<serde_json::Value> = state
            .slots
            .iter()
            .enumerate()
            .map(|(number, slot)| {
                let (kind, layers): (&str, Vec<serde_json::Value>) = match &slot.storage {
                    Storage::Mapped(region) => (
                        "mapped",
                        region
                            .layers()
                            .iter()
                            .map(|l| {
                                serde_json::json!({
                                    "name": l.name, "dtype": l.dtype.name(), "shape": l.shape,
                                    "bytes": l.len_bytes(),
                                    "verification": if l.checksum.is_some() { "checksummed" } else { "unverified" },
                                })
                            })
                            .collect(),
                    ),
                    Storage::Unmapped { index } => ("unmapped", vec![serde_json::json!({ "layers": index.len() })]),
                    Storage::Proto(proto) => (
                        "heap",
                        proto
                            .layers
                            .iter()
                            .map(|l| serde_json::json!({
                                "name": l.name, "dtype": l.dtype.name(), "shape": l.shape,
                                "bytes": l.bytes.len(), "verification": "heap",
                            }))
                            .collect(),
                    ),
                    Storage::Gone => ("gone", Vec::new()),
                };
                serde_json::json!({
                    "id": number, "name": slot.name.as_ref(), "kind": kind,
                    "path": slot.path.as_ref().map(|p| p.display().to_string()),
                    "mapped_bytes": match &slot.storage { Storage::Mapped(r) => r.mapped_bytes(), _ => 0 },
                    "layers": layers,
                })
            })
            .collect();
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "heap_bytes": heap,
            "mapped_bytes": mapped,
            "limit_bytes": self.limits.limit_bytes,
            "levels_percent": { "warn": self.limits.warn_percent, "evict": self.limits.evict_percent, "reject": self.limits.reject_percent },
            "level": format!("{:?}", self.limits.level(heap + mapped)).to_lowercase(),
            "evictions": self.evictions(),
            "regions": regions,
            "errors": self.errors().iter().map(|(p, e)| serde_json::json!({"path": p.display().to_string(), "error": e})).collect::<Vec<_>>(),
        })
    }

    /// Checks the store's structure (O(regions + layers)); panics with the
    /// values on a violation.
    pub fn check_invariants(&self) {
        let state = self.state.load();
        assert_eq!(
            state.by_name.len(),
            state.slots.len(),
            "names {} vs slots {}",
            state.by_name.len(),
            state.slots.len()
        );
        for (name, &number) in &state.by_name {
            let slot = &state.slots[number as usize];
            assert_eq!(slot.name.as_ref(), name.as_ref(), "slot {number}");
            if let Storage::Proto(proto) = &slot.storage {
                assert_eq!(proto.index.len(), proto.layers.len(), "proto {name}");
                for (layer, &i) in &proto.index {
                    assert_eq!(
                        proto.layers[i as usize].name.as_str(),
                        layer.as_ref(),
                        "proto {name}"
                    );
                }
            }
        }
    }
}
