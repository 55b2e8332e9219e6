//! [`Region`]: a region file mapped read-only, its layers borrowed with no
//! copy, each layer's checksum verified on its first access, exactly once
//! (however many threads ask at once), or all at once with
//! [`Region::verify`].

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use memmap2::{Advice, Mmap};

use crate::error::RegionError;
use crate::format::{self, Dtype, Header, LayerEntry};

/// Whether a layer's bytes were checked against a recorded checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The xxh3-64 of its bytes matched the header's.
    Verified,
    /// The header records no checksum for it (a plain safetensors file).
    Unverified,
}

/// How a region or a layer will be read, passed to the kernel (`madvise`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessHint {
    /// Front to back: read ahead aggressively.
    Sequential,
    /// Scattered: do not read ahead.
    Random,
    /// Soon: start reading it in now.
    WillNeed,
    /// Back huge pages where the system can (transparent huge pages).
    HugePages,
}

impl AccessHint {
    fn advice(self) -> Option<Advice> {
        match self {
            AccessHint::Sequential => Some(Advice::Sequential),
            AccessHint::Random => Some(Advice::Random),
            AccessHint::WillNeed => Some(Advice::WillNeed),
            #[cfg(target_os = "linux")]
            AccessHint::HugePages => Some(Advice::HugePage),
            #[cfg(not(target_os = "linux"))]
            AccessHint::HugePages => None,
        }
    }
}

/// The layer index's hasher: a multiply-rotate hash over 8-byte words
/// (layer names are short; SipHash costs several times more per lookup),
/// seeded once per process from the standard library's random state so a
/// crafted file cannot pick colliding names in advance.
#[derive(Clone, Copy, Debug)]
pub struct NameHasher {
    state: u64,
}

/// Multiplier of [`NameHasher`] (an odd constant with well-mixed bits).
const NAME_HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            self.state = (self.state ^ word)
                .wrapping_mul(NAME_HASH_MULTIPLIER)
                .rotate_left(29);
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        let word = u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56);
        self.state = (self.state ^ word)
            .wrapping_mul(NAME_HASH_MULTIPLIER)
            .rotate_left(29);
    }
    fn finish(&self) -> u64 {
        // A final avalanche so the low bits hashbrown uses depend on every
        // input bit.
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^ (h >> 33)
    }
}

/// Builds [`NameHasher`]s with the process's seed.
#[derive(Clone, Copy, Debug)]
pub struct NameHasherBuilder {
    seed: u64,
}

impl Default for NameHasherBuilder {
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        NameHasherBuilder { seed }
    }
}

impl std::hash::BuildHasher for NameHasherBuilder {
    type Hasher = NameHasher;
    fn build_hasher(&self) -> NameHasher {
        NameHasher { state: self.seed }
    }
}

/// A mapped region file. `Send + Sync`: share it in an `Arc`.
pub struct Region {
    path: PathBuf,
    /// `None` for an empty data section (nothing to map past the header is
    /// still mapped: the map covers the whole file).
    map: Mmap,
    header: Header,
    index: HashMap<Box<str>, u32, NameHasherBuilder>,
    /// Per layer: the outcome of its one checksum computation.
    checked: Vec<OnceLock<Result<(), u64>>>,
    checksums_computed: AtomicU64,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("path", &self.path)
            .field("layers", &self.header.layers.len())
            .field("mapped_bytes", &self.mapped_bytes())
            .finish_non_exhaustive()
    }
}

/// A borrowed layer: its bytes are the mapped file's, never copied.
#[derive(Clone, Copy, Debug)]
pub struct LayerView<'r> {
    entry: &'r LayerEntry,
    bytes: &'r [u8],
    verification: Verification,
}

/// Element types a layer can be viewed as.
pub trait Element: bytemuck::Pod {
    /// The dtypes whose bytes are this type's.
    const DTYPES: &'static [Dtype];
}

macro_rules! element {
    ($t:ty, $($d:expr),+) => {
        impl Element for $t {
            const DTYPES: &'static [Dtype] = &[$($d),+];
        }
    };
}
element!(u8, Dtype::U8, Dtype::Bool, Dtype::F8E5M2, Dtype::F8E4M3);
element!(i8, Dtype::I8);
element!(u16, Dtype::U16, Dtype::F16, Dtype::BF16);
element!(i16, Dtype::I16);
element!(u32, Dtype::U32);
element!(i32, Dtype::I32);
element!(f32, Dtype::F32);
element!(u64, Dtype::U64);
element!(i64, Dtype::I64);
element!(f64, Dtype::F64);

impl<'r> LayerView<'r> {
    /// The layer's name.
    pub fn name(&self) -> &'r str {
        &self.entry.name
    }
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.entry.dtype
    }
    /// Shape.
    pub fn shape(&self) -> &'r [u64] {
        &self.entry.shape
    }
    /// The bytes, borrowed from the mapping.
    pub fn bytes(&self) -> &'r [u8] {
        self.bytes
    }
    /// Its attributes, sorted by key.
    pub fn attributes(&self) -> &'r [(String, String)] {
        &self.entry.attributes
    }
    /// One attribute.
    pub fn attribute(&self, key: &str) -> Option<&'r str> {
        self.entry
            .attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Whether its checksum was verified.
    pub fn verification(&self) -> Verification {
        self.verification
    }
    /// The elements as `&[T]`, with no copy, when the dtype's bytes are
    /// `T`'s and the bytes are aligned for `T` (little-endian hosts only).
    pub fn as_slice<T: Element>(&self) -> Result<&'r [T], RegionError> {
        let error = |detail: String| RegionError::TypedView {
            layer: self.entry.name.clone(),
            detail,
        };
        if !T::DTYPES.contains(&self.entry.dtype) {
            return Err(error(format!(
                "it is {}, not {}",
                self.entry.dtype,
                T::DTYPES
                    .iter()
                    .map(|d| d.name())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        if cfg!(target_endian = "big") && std::mem::size_of::<T>() > 1 {
            return Err(error(
                "the host is big-endian, the file little-endian".to_string(),
            ));
        }
        bytemuck::try_cast_slice(self.bytes).map_err(|e| {
            error(format!(
                "{e:?}: {} bytes at address {:#x}, {} needs alignment {}",
                self.bytes.len(),
                self.bytes.as_ptr() as usize,
                std::any::type_name::<T>(),
                std::mem::align_of::<T>()
            ))
        })
    }
}

impl Region {
    /// Maps the file at `path` read-only and validates its header strictly.
    /// Layers' checksums are checked on first access, not here.
    pub fn open(path: impl AsRef<Path>) -> Result<Region, RegionError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| RegionError::io(&path, "opening", e))?;
        // SAFETY: the mapping is read-only and private to this process; a
        // region file is immutable once published (builders write a new file
        // and rename it into place), so nothing writes the mapped bytes while
        // the map lives. A process that truncates the file anyway breaks that
        // contract, as with any mapped file.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| RegionError::io(&path, "mapping", e))?;
        let header = format::parse(&path, &map)?;
        let mut index =
            HashMap::with_capacity_and_hasher(header.layers.len(), NameHasherBuilder::default());
        for (i, layer) in header.layers.iter().enumerate() {
            index.insert(layer.name.clone().into_boxed_str(), i as u32);
        }
        let checked = (0..header.layers.len()).map(|_| OnceLock::new()).collect();
        Ok(Region {
            path,
            map,
            header,
            index,
            checked,
            checksums_computed: AtomicU64::new(0),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes mapped (the whole file).
    pub fn mapped_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.header.layers.len()
    }

    /// The layers' entries, in file order (their index is stable for the
    /// file).
    pub fn layers(&self) -> &[LayerEntry] {
        &self.header.layers
    }

    /// The index of layer `name`: O(1), no allocation.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).map(|&i| i as usize)
    }

    /// Layer `name`, verified on its first access.
    pub fn layer(&self, name: &str) -> Result<LayerView<'_>, RegionError> {
        let index = self
            .layer_index(name)
            .ok_or_else(|| RegionError::NotFound {
                path: self.path.clone(),
                layer: name.to_string(),
            })?;
        self.layer_at(index)
    }

    /// Layer number `index`, verified on its first access.
    pub fn layer_at(&self, index: usize) -> Result<LayerView<'_>, RegionError> {
        let entry = self
            .header
            .layers
            .get(index)
            .ok_or_else(|| RegionError::NotFound {
                path: self.path.clone(),
                layer: format!("#{index} (the file has {})", self.header.layers.len()),
            })?;
        let bytes = self.bytes_of(entry);
        let verification = match entry.checksum {
            None => Verification::Unverified,
            Some(expected) => {
                let outcome = self.checked[index].get_or_init(|| {
                    self.checksums_computed.fetch_add(1, Ordering::Relaxed);
                    let actual = xxhash_rust::xxh3::xxh3_64(bytes);
                    if actual == expected {
                        Ok(())
                    } else {
                        Err(actual)
                    }
                });
                if let Err(actual) = outcome {
                    return Err(RegionError::ChecksumMismatch {
                        path: self.path.clone(),
                        layer: entry.name.clone(),
                        expected,
                        actual: *actual,
                    });
                }
                Verification::Verified
            }
        };
        Ok(LayerView {
            entry,
            bytes,
            verification,
        })
    }

    fn bytes_of(&self, entry: &LayerEntry) -> &[u8] {
        let start = (self.header.data_start + entry.begin) as usize;
        let end = (self.header.data_start + entry.end) as usize;
        &self.map[start..end]
    }

    /// Checks every layer that has a checksum now (each at most once over
    /// the region's life); returns every mismatch, in file order.
    pub fn verify(&self) -> Result<(), Vec<RegionError>> {
        let errors: Vec<RegionError> = (0..self.header.layers.len())
            .filter_map(|i| self.layer_at(i).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// How many layer checksums this region has computed (each layer's at
    /// most once).
    pub fn checksums_computed(&self) -> u64 {
        self.checksums_computed.load(Ordering::Relaxed)
    }

    /// Tells the kernel how the whole region will be read.
    pub fn advise(&self, hint: AccessHint) -> Result<(), RegionError> {
        let Some(advice) = hint.advice() else {
            return Ok(());
        };
        self.map.advise(advice).map_err(|e| RegionError::Advise {
            path: self.path.clone(),
            detail: format!("{hint:?}: {e}"),
        })
    }

    /// Tells the kernel how layer `name` will be read (its pages, rounded
    /// out to whole pages).
    pub fn advise_layer(&self, name: &str, hint: AccessHint) -> Result<(), RegionError> {
        let index = self
            .layer_index(name)
            .ok_or_else(|| RegionError::NotFound {
                path: self.path.clone(),
                layer: name.to_string(),
            })?;
        let Some(advice) = hint.advice() else {
            return Ok(());
        };
        let entry = &self.header.layers[index];
        if entry.begin == entry.end {
            return Ok(());
        }
        const PAGE: u64 = 4096;
        let start = (self.header.data_start + entry.begin) / PAGE * PAGE;
        let end = (self.header.data_start + entry.end).min(self.map.len() as u64);
        self.map
            .advise_range(advice, start as usize, (end - start) as usize)
            .map_err(|e| RegionError::Advise {
                path: self.path.clone(),
                detail: format!("{hint:?} on layer {name:?}: {e}"),
            })
    }
}
