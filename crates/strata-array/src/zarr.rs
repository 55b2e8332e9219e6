//! Zarr v3 arrays on the local filesystem, through the `zarrs` crate.
//!
//! The array lives at the root of a directory (`<path>/zarr.json`, chunks
//! under `<path>/c/...`), which is what `zarr.open_array("<path>")` reads
//! and writes in zarr-python. Supported codecs: `bytes` (any endianness on
//! read, little-endian on write), `zstd`, `crc32c`, and `sharding_indexed`
//! (not nested) whose inner and index codecs are among these. Anything else
//! is refused by name at open, before `zarrs` sees it. Only the `regular`
//! chunk grid is supported.
//!
//! **Chunks of sharded arrays.** The engine's chunk is the *inner* chunk:
//! [`ArrayMeta::chunk_shape`] is the sharding codec's `chunk_shape`, and
//! the shard shape is in [`ZarrInfo::shard_shape`]. Reads decode one inner
//! chunk (its shard's index is read once and cached). Writes collect a
//! shard's inner chunks in a shard-sized buffer and encode the shard when
//! its last inner chunk arrives (so a writer holds at most one shard buffer
//! per shard being filled); rewriting an inner chunk of an already stored
//! shard reads, updates and rewrites that shard.
//!
//! **The incomplete rule.** [`ZarrArray::create`] writes `zarr.json` at once
//! with the attribute `"strata": {"complete": false}`; [`ChunkSink::finish`]
//! stores partly filled shards, syncs the directories (zarrs syncs each
//! chunk file as it writes it), then rewrites
//! `zarr.json` with `"complete": true` and syncs it. [`ZarrArray::open`]
//! refuses an array whose `strata.complete` is `false` with
//! [`ArrayError::Incomplete`] ([`ZarrArray::open_allow_incomplete`] reads it
//! anyway, for inspection and recovery). Arrays without the attribute
//! (written by other tools) are complete.
//!
//! Chunks never written read as the fill value (zero for arrays Strata
//! creates), as in every Zarr implementation; `zarrs` does not store chunks
//! that are all fill value.
//!
//! ```
//! use strata_array::chunk::{read_chunk_vec, write_chunk_from, ChunkSink};
//! use strata_array::dtype::DataType;
//! use strata_array::meta::ArrayMeta;
//! use strata_array::zarr::{ZarrArray, ZarrCodecs, ZarrCompression};
//!
//! let dir = std::env::temp_dir().join(format!("strata-zarr-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let meta = ArrayMeta::new(vec![4, 3], vec![2, 2], DataType::F32).unwrap();
//! let codecs = ZarrCodecs {
//!     compression: ZarrCompression::Zstd { level: 3 },
//!     crc32c: true,
//!     shard_shape: Some(vec![4, 2]),
//! };
//! let writer = ZarrArray::create(&dir, meta.clone(), &codecs).unwrap();
//! for grid_index in meta.grid_indices() {
//!     let n = meta.chunk_element_count_at(&grid_index) as usize;
//!     write_chunk_from(&writer, &grid_index, &mut Vec::new(), &vec![1.0f32; n]).unwrap();
//! }
//! // Not finished yet: readers refuse it.
//! assert!(ZarrArray::open(&dir).is_err());
//! writer.finish().unwrap();
//!
//! let array = ZarrArray::open(&dir).unwrap();
//! assert_eq!(read_chunk_vec::<f64>(&array, &[1, 1]).unwrap(), vec![1.0, 1.0]);
//! assert_eq!(array.info().unwrap().shard_shape, Some(vec![4, 2]));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Value};
use zarrs::array::codec::{
    ArrayToBytesCodecTraits, BytesCodec, CodecError, CodecOptions, Crc32cCodec,
    ShardingCodecBuilder, ZstdCodec,
};
use zarrs::array::{
    Array, ArrayBuilder, ArrayBytes, ArrayMetadataOptions, ChunkRepresentation, CodecChain,
    FillValue,
};
use zarrs::array_subset::ArraySubset;
use zarrs::filesystem::FilesystemStore;
use zarrs::metadata::v3::MetadataV3;

use crate::chunk::{check_chunk_buffer, ChunkSink, ChunkSource};
use crate::dtype::{DataType, ALL_DATA_TYPES};
use crate::error::ArrayError;
use crate::meta::{for_each_run, ArrayMeta, ChunkRegion, MetaError};

/// The metadata document of a Zarr v3 node.
pub const ZARR_JSON: &str = "zarr.json";
/// The attribute under which Strata records its own state.
pub const STRATA_ATTRIBUTE: &str = "strata";
/// The key inside [`STRATA_ATTRIBUTE`] that is `false` until `finish`.
pub const COMPLETE_KEY: &str = "complete";
/// Lowest zstd level accepted (zstd's own range of "normal" levels).
pub const ZSTD_LEVEL_MIN: i32 = 1;
/// Highest zstd level accepted (`ZSTD_maxCLevel`).
pub const ZSTD_LEVEL_MAX: i32 = 22;
const _: () = assert!(ZSTD_LEVEL_MIN <= ZSTD_LEVEL_MAX);

/// Compression of each (inner) chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZarrCompression {
    /// Stored raw.
    None,
    /// The `zstd` codec at `level` (in `ZSTD_LEVEL_MIN..=ZSTD_LEVEL_MAX`).
    Zstd {
        /// The compression level.
        level: i32,
    },
}

/// The codecs of an array [`ZarrArray::create`] makes: `bytes`
/// (little-endian), then the compression, then `crc32c`; all inside
/// `sharding_indexed` if a shard shape is given (its index is `bytes` +
/// `crc32c`, zarr-python's default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZarrCodecs {
    /// Compression of each (inner) chunk.
    pub compression: ZarrCompression,
    /// Append a crc32c checksum to each (inner) chunk.
    pub crc32c: bool,
    /// Shard shape (a whole multiple of the chunk shape in every
    /// dimension), or `None` for one file per chunk.
    pub shard_shape: Option<Vec<u64>>,
}

impl Default for ZarrCodecs {
    fn default() -> Self {
        ZarrCodecs {
            compression: ZarrCompression::None,
            crc32c: false,
            shard_shape: None,
        }
    }
}

/// What [`ZarrArray::info`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZarrInfo {
    /// The array shape.
    pub shape: Vec<u64>,
    /// The engine's chunk shape (the inner chunk shape of a sharded array).
    pub chunk_shape: Vec<u64>,
    /// The shard shape of a sharded array.
    pub shard_shape: Option<Vec<u64>>,
    /// The element type.
    pub dtype: DataType,
    /// The codec chain, outermost first, each as `name` or
    /// `name(configuration)`.
    pub codecs: Vec<String>,
    /// Total size of the files under the array's directory.
    pub bytes_on_disk: u64,
    /// `strata.complete`, or `None` for an array without the attribute.
    pub complete: Option<bool>,
}

/// What this crate reads out of a `zarr.json` before handing it to zarrs.
#[derive(Clone, Debug)]
struct Parsed {
    meta: ArrayMeta,
    shard_shape: Option<Vec<u64>>,
    /// The sharding codec's inner `codecs`, for decoding inner chunks.
    inner_codecs: Option<Value>,
    codecs: Vec<String>,
    complete: Option<bool>,
}

fn meta_error(name: &str, detail: impl Into<String>) -> ArrayError {
    ArrayError::CorruptMetadata {
        array: name.to_string(),
        detail: detail.into(),
    }
}

fn u64_list(name: &str, value: Option<&Value>, what: &str) -> Result<Vec<u64>, ArrayError> {
    let items = value
        .and_then(Value::as_array)
        .ok_or_else(|| meta_error(name, format!("{what} is missing or not a list")))?;
    items
        .iter()
        .map(|item| {
            item.as_u64().ok_or_else(|| {
                meta_error(
                    name,
                    format!("{what} entry {item} is not a non-negative integer"),
                )
            })
        })
        .collect()
}

fn codec_name(codec: &Value) -> Option<&str> {
    codec
        .as_str()
        .or_else(|| codec.get("name").and_then(Value::as_str))
}

fn describe_codec(codec: &Value) -> String {
    let name = codec_name(codec).unwrap_or("?");
    match codec.get("configuration") {
        Some(configuration) if configuration.as_object().is_some_and(|c| !c.is_empty()) => {
            format!("{name}({configuration})")
        }
        _ => name.to_string(),
    }
}

/// Checks a codec list: one array-to-bytes codec (`bytes`, or
/// `sharding_indexed` where `sharding_allowed`) followed by `zstd` /
/// `crc32c`. Returns the sharding codec's configuration, if any.
fn check_codecs<'a>(
    name: &str,
    codecs: &'a Value,
    sharding_allowed: bool,
) -> Result<Option<&'a Value>, ArrayError> {
    let list = codecs
        .as_array()
        .ok_or_else(|| meta_error(name, "codecs is missing or not a list"))?;
    let mut sharding = None;
    let mut seen_array_to_bytes = false;
    for codec in list {
        let codec_name = codec_name(codec)
            .ok_or_else(|| meta_error(name, format!("codec {codec} has no name")))?;
        let unsupported = || ArrayError::UnsupportedCodec {
            array: name.to_string(),
            codec: describe_codec(codec),
        };
        match codec_name {
            "bytes" if !seen_array_to_bytes => seen_array_to_bytes = true,
            "sharding_indexed" if !seen_array_to_bytes && sharding_allowed => {
                seen_array_to_bytes = true;
                sharding = Some(codec.get("configuration").ok_or_else(|| {
                    meta_error(name, "sharding_indexed codec has no configuration")
                })?);
            }
            // After sharding_indexed, a bytes-to-bytes codec would wrap the
            // whole shard, so inner chunks could not be read on their own.
            "zstd" | "crc32c" if seen_array_to_bytes && sharding.is_none() => {}
            _ => return Err(unsupported()),
        }
    }
    if !seen_array_to_bytes {
        return Err(meta_error(
            name,
            format!("codecs {codecs} have no array-to-bytes codec"),
        ));
    }
    Ok(sharding)
}

/// Whether a `codecs` list is exactly one `bytes` codec that is not
/// big-endian: then a chunk file is the chunk's elements in native order
/// (this crate only builds for little-endian targets' layouts it checks).
fn is_raw_little_endian(codecs: Option<&Value>) -> bool {
    let Some([only]) = codecs.and_then(Value::as_array).map(Vec::as_slice) else {
        return false;
    };
    let endian = only
        .get("configuration")
        .and_then(|c| c.get("endian"))
        .and_then(Value::as_str);
    only.get("name").and_then(Value::as_str) == Some("bytes")
        && endian != Some("big")
        && cfg!(target_endian = "little")
}

fn parse_zarr_json(name: &str, document: &Value) -> Result<Parsed, ArrayError> {
    if document.get("zarr_format").and_then(Value::as_u64) != Some(3) {
        return Err(ArrayError::UnsupportedLayout {
            array: name.to_string(),
            detail: format!(
                "zarr_format {} (expected 3)",
                document.get("zarr_format").unwrap_or(&Value::Null)
            ),
        });
    }
    match document.get("node_type").and_then(Value::as_str) {
        Some("array") => {}
        other => {
            return Err(ArrayError::NotFound {
                array: name.to_string(),
                detail: format!("node_type is {other:?}, not an array"),
            })
        }
    }
    let shape = u64_list(name, document.get("shape"), "shape")?;
    let data_type = document.get("data_type").unwrap_or(&Value::Null);
    let dtype = data_type
        .as_str()
        .or_else(|| data_type.get("name").and_then(Value::as_str))
        .and_then(DataType::from_zarr_name)
        .ok_or_else(|| ArrayError::UnsupportedDtype {
            array: name.to_string(),
            found: data_type.to_string(),
            expected: ALL_DATA_TYPES.map(DataType::zarr_name).join(", "),
        })?;
    let chunk_grid = document.get("chunk_grid").unwrap_or(&Value::Null);
    if chunk_grid.get("name").and_then(Value::as_str) != Some("regular") {
        return Err(ArrayError::UnsupportedLayout {
            array: name.to_string(),
            detail: format!("chunk grid {chunk_grid} (expected regular)"),
        });
    }
    let grid_chunk_shape = u64_list(
        name,
        chunk_grid
            .get("configuration")
            .and_then(|c| c.get("chunk_shape")),
        "chunk_grid chunk_shape",
    )?;
    let codecs_value = document.get("codecs").unwrap_or(&Value::Null);
    let sharding = check_codecs(name, codecs_value, true)?;
    let inner_codecs = sharding.and_then(|c| c.get("codecs")).cloned();
    let (chunk_shape, shard_shape) = match sharding {
        None => (grid_chunk_shape, None),
        Some(configuration) => {
            check_codecs(
                name,
                configuration.get("codecs").unwrap_or(&Value::Null),
                false,
            )?;
            if let Some(index_codecs) = configuration.get("index_codecs") {
                check_codecs(name, index_codecs, false)?;
            }
            let inner = u64_list(
                name,
                configuration.get("chunk_shape"),
                "sharding chunk_shape",
            )?;
            let valid = inner.len() == grid_chunk_shape.len()
                && inner
                    .iter()
                    .zip(&grid_chunk_shape)
                    .all(|(&c, &s)| c > 0 && s > 0 && s.is_multiple_of(c));
            if !valid {
                return Err(ArrayError::InvalidMeta {
                    array: name.to_string(),
                    source: MetaError::ShardShape {
                        shard_shape: grid_chunk_shape,
                        chunk_shape: inner,
                    },
                });
            }
            (inner, Some(grid_chunk_shape))
        }
    };
    let meta =
        ArrayMeta::new(shape, chunk_shape, dtype).map_err(|source| ArrayError::InvalidMeta {
            array: name.to_string(),
            source,
        })?;
    let complete = document
        .get("attributes")
        .and_then(|a| a.get(STRATA_ATTRIBUTE))
        .and_then(|s| s.get(COMPLETE_KEY))
        .and_then(Value::as_bool);
    let codecs = codecs_value
        .as_array()
        .map(|list| list.iter().map(describe_codec).collect())
        .unwrap_or_default();
    Ok(Parsed {
        meta,
        shard_shape,
        inner_codecs,
        codecs,
        complete,
    })
}

fn io_error(name: &str, operation: &'static str, source: std::io::Error) -> ArrayError {
    ArrayError::Io {
        array: name.to_string(),
        chunk: None,
        operation,
        source,
    }
}

fn zarr_error(
    name: &str,
    chunk: Option<&[u64]>,
    operation: &'static str,
    detail: impl ToString,
) -> ArrayError {
    ArrayError::Zarr {
        array: name.to_string(),
        chunk: chunk.map(<[u64]>::to_vec),
        operation,
        detail: detail.to_string(),
    }
}

fn read_document(name: &str, path: &Path) -> Result<Value, ArrayError> {
    let metadata_path = path.join(ZARR_JSON);
    let text = match std::fs::read(&metadata_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let detail = if !path.exists() {
                "no such directory".to_string()
            } else if path.join(".zarray").exists() {
                "no zarr.json: this is a Zarr v2 array (.zarray); only Zarr v3 is supported"
                    .to_string()
            } else {
                format!("no {ZARR_JSON} in the directory")
            };
            return Err(ArrayError::NotFound {
                array: name.to_string(),
                detail,
            });
        }
        Err(error) => return Err(io_error(name, "reading zarr.json", error)),
    };
    serde_json::from_slice(&text)
        .map_err(|error| meta_error(name, format!("zarr.json is not valid JSON: {error}")))
}

/// Sum of the sizes of every file under `path`.
fn bytes_under(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += bytes_under(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// An I/O error on the file of one chunk, naming the file.
fn chunk_file_error(
    array: &str,
    grid_index: &[u64],
    file_path: &Path,
    operation: &'static str,
    error: std::io::Error,
) -> ArrayError {
    ArrayError::Io {
        array: array.to_string(),
        chunk: Some(grid_index.to_vec()),
        operation,
        source: std::io::Error::new(
            error.kind(),
            format!("file {}: {error}", file_path.display()),
        ),
    }
}

/// Asks the kernel to start writing `file`'s dirty pages back now, without
/// waiting, so that the sync in `finish` finds little left to write. Only a
/// hint: failure is ignored (the sync reports real errors).
fn start_write_back(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `file` is an open descriptor for the whole call; offset 0
        // and length 0 mean "to the end of the file"; the flag only starts
        // write-back and touches no memory of ours.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Syncs every directory under `path` (and `path` itself), so the entries
/// of new chunk files are durable. The files' contents need no sync here:
/// zarrs' filesystem store syncs each file before a write returns.
fn sync_directories(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_directories(&entry.path())?;
        }
    }
    File::open(path)?.sync_all()
}

fn open_store(name: &str, path: &Path) -> Result<Arc<FilesystemStore>, ArrayError> {
    FilesystemStore::new(path)
        .map(Arc::new)
        .map_err(|error| zarr_error(name, None, "opening the filesystem store", error))
}

fn metadata_options() -> ArrayMetadataOptions {
    // Keep zarr.json to the spec's fields plus our attribute.
    ArrayMetadataOptions::default().with_include_zarrs_metadata(false)
}

/// Maps a zarrs error from reading (decoding) a chunk. Decoding errors of
/// stored bytes mean the chunk is corrupt; storage errors are I/O.
fn read_error(
    name: &str,
    grid_index: &[u64],
    where_stored: &str,
    error: zarrs::array::ArrayError,
) -> ArrayError {
    use zarrs::array::ArrayError as Z;
    match error {
        Z::CodecError(CodecError::InvalidChecksum) => ArrayError::CorruptChunk {
            array: name.to_string(),
            chunk: grid_index.to_vec(),
            detail: format!("crc32c checksum mismatch in {where_stored}"),
        },
        Z::CodecError(CodecError::StorageError(error)) | Z::StorageError(error) => {
            zarr_error(name, Some(grid_index), "reading the chunk", error)
        }
        Z::CodecError(error) => ArrayError::CorruptChunk {
            array: name.to_string(),
            chunk: grid_index.to_vec(),
            detail: format!("{where_stored} does not decode: {error}"),
        },
        other => zarr_error(name, Some(grid_index), "reading the chunk", other),
    }
}

/// The shard holding inner chunk `grid_index`, and the inner chunk's
/// region relative to the shard's origin.
fn shard_of(meta: &ArrayMeta, shard_shape: &[u64], grid_index: &[u64]) -> (Vec<u64>, ChunkRegion) {
    let region = meta.chunk_region(grid_index);
    let shard_index: Vec<u64> = region
        .start
        .iter()
        .zip(shard_shape)
        .map(|(&s, &w)| s / w)
        .collect();
    let start = region
        .start
        .iter()
        .zip(&shard_index)
        .zip(shard_shape)
        .map(|((&s, &i), &w)| s - i * w)
        .collect();
    (
        shard_index,
        ChunkRegion {
            start,
            shape: region.shape,
        },
    )
}

/// A Zarr v3 array read by chunk; see the module docs.
pub struct ZarrArray {
    name: String,
    path: PathBuf,
    meta: ArrayMeta,
    parsed: Parsed,
    array: Array<FilesystemStore>,
    sharded: Option<ShardedReader>,
    options: CodecOptions,
    /// Chunks are stored as raw little-endian bytes (the only codec is
    /// `bytes`, not big-endian): a full chunk file is read straight into the
    /// caller's buffer, with no intermediate copy.
    raw_little_endian: bool,
}

/// A shard index entry (offset and size both) marking a missing inner chunk.
const MISSING_INNER_CHUNK: u64 = u64::MAX;
/// Bytes of one shard index entry: offset and size, `u64` each.
const SHARD_INDEX_ENTRY_BYTES: u64 = 16;
/// Bytes a crc32c codec appends.
const CRC32C_BYTES: u64 = 4;

/// What reading inner chunks of a sharded array needs.
///
/// The shard index is read and checked here rather than through zarrs:
/// zarrs 0.22's partial decoding strips inner crc32c checksums without
/// checking them, and its encoded-inner-chunk lookup overflows on a missing
/// inner chunk. Each inner chunk is read with one positional read and
/// decoded in full by the inner codec chain, which checks its checksum.
struct ShardedReader {
    shard_shape: Vec<u64>,
    inner_codecs: CodecChain,
    inner_representation: ChunkRepresentation,
    /// `index_location` is `end` (the default) rather than `start`.
    index_at_end: bool,
    /// The index codecs end with `crc32c`.
    index_crc32c: bool,
    /// Shard indexes read so far (`None`: the shard file does not exist).
    indexes: Mutex<HashMap<Vec<u64>, ShardIndexEntries>>,
}

/// A shard's index: offset and size per inner chunk in C order, or `None`
/// when the shard has no file (every inner chunk is the fill value).
type ShardIndexEntries = Arc<Option<Vec<u64>>>;

/// Checks the sharding index configuration: `bytes` (little-endian) then
/// optionally `crc32c`. Returns (index at end, index has crc32c).
fn parse_index_config(name: &str, configuration: &Value) -> Result<(bool, bool), ArrayError> {
    let index_at_end = match configuration.get("index_location").and_then(Value::as_str) {
        None | Some("end") => true,
        Some("start") => false,
        Some(other) => {
            return Err(ArrayError::UnsupportedCodec {
                array: name.to_string(),
                codec: format!("sharding_indexed with index_location {other:?}"),
            })
        }
    };
    let default_codecs =
        json!([{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]);
    let index_codecs = configuration.get("index_codecs").unwrap_or(&default_codecs);
    let list = index_codecs
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let names: Vec<Option<&str>> = list.iter().map(codec_name).collect();
    let endian_little = list
        .first()
        .and_then(|c| c.get("configuration"))
        .and_then(|c| c.get("endian"))
        .and_then(Value::as_str)
        != Some("big");
    match names.as_slice() {
        [Some("bytes")] if endian_little => Ok((index_at_end, false)),
        [Some("bytes"), Some("crc32c")] if endian_little => Ok((index_at_end, true)),
        _ => Err(ArrayError::UnsupportedCodec {
            array: name.to_string(),
            codec: format!("sharding_indexed index_codecs {index_codecs} (supported: bytes little-endian, then optionally crc32c)"),
        }),
    }
}

impl std::fmt::Debug for ZarrArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZarrArray")
            .field("name", &self.name)
            .field("meta", &self.meta)
            .field("shard_shape", &self.parsed.shard_shape)
            .field("codecs", &self.parsed.codecs)
            .finish_non_exhaustive()
    }
}

impl ZarrArray {
    /// Opens the array in directory `path`. Refuses a Strata array whose
    /// writer did not finish ([`ArrayError::Incomplete`]).
    pub fn open(path: impl AsRef<Path>) -> Result<ZarrArray, ArrayError> {
        Self::open_impl(path.as_ref(), false)
    }

    /// Opens the array even if `strata.complete` is `false`: chunks not yet
    /// written read as the fill value.
    pub fn open_allow_incomplete(path: impl AsRef<Path>) -> Result<ZarrArray, ArrayError> {
        Self::open_impl(path.as_ref(), true)
    }

    fn open_impl(path: &Path, allow_incomplete: bool) -> Result<ZarrArray, ArrayError> {
        let name = path.display().to_string();
        let document = read_document(&name, path)?;
        let parsed = parse_zarr_json(&name, &document)?;
        if parsed.complete == Some(false) && !allow_incomplete {
            return Err(ArrayError::Incomplete { array: name });
        }
        let store = open_store(&name, path)?;
        let array = Array::open(store, "/")
            .map_err(|error| meta_error(&name, format!("zarrs refused zarr.json: {error}")))?;
        let sharded = match (&parsed.shard_shape, &parsed.inner_codecs) {
            (Some(shard_shape), Some(inner_codecs)) => {
                let inner_metadata: Vec<MetadataV3> = serde_json::from_value(inner_codecs.clone())
                    .map_err(|error| meta_error(&name, format!("sharding codecs: {error}")))?;
                let inner_codecs = CodecChain::from_metadata(&inner_metadata)
                    .map_err(|error| meta_error(&name, format!("sharding codecs: {error}")))?;
                let inner_shape: Vec<NonZeroU64> = parsed
                    .meta
                    .chunk_shape()
                    .iter()
                    .map(|&d| {
                        NonZeroU64::new(d).expect("chunk dims are nonzero (ArrayMeta invariant)")
                    })
                    .collect();
                let inner_representation = ChunkRepresentation::new(
                    inner_shape,
                    array.data_type().clone(),
                    array.fill_value().clone(),
                )
                .map_err(|error| meta_error(&name, format!("inner chunks: {error}")))?;
                let sharding_configuration = document
                    .get("codecs")
                    .and_then(Value::as_array)
                    .and_then(|codecs| codecs.first())
                    .and_then(|codec| codec.get("configuration"))
                    .unwrap_or(&Value::Null);
                let (index_at_end, index_crc32c) =
                    parse_index_config(&name, sharding_configuration)?;
                Some(ShardedReader {
                    shard_shape: shard_shape.clone(),
                    inner_codecs,
                    inner_representation,
                    index_at_end,
                    index_crc32c,
                    indexes: Mutex::new(HashMap::new()),
                })
            }
            _ => None,
        };
        let raw_little_endian = sharded.is_none() && is_raw_little_endian(document.get("codecs"));
        Ok(ZarrArray {
            name,
            path: path.to_path_buf(),
            meta: parsed.meta.clone(),
            parsed,
            array,
            sharded,
            options: CodecOptions::default(),
            raw_little_endian,
        })
    }

    /// Reads a full, raw little-endian chunk file straight into `out`
    /// (exactly one chunk's bytes). A missing file is the fill value, as
    /// zarrs reads it; a file of any other length is a corrupt chunk.
    fn read_raw_chunk(&self, grid_index: &[u64], out: &mut [u8]) -> Result<(), ArrayError> {
        let key = self.array.chunk_key(grid_index);
        let file_path = self.path.join(key.as_str());
        let io_error = |operation, error| {
            chunk_file_error(&self.name, grid_index, &file_path, operation, error)
        };
        let mut file = match File::open(&file_path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let fill = self.array.fill_value().as_ne_bytes();
                for element in out.chunks_exact_mut(fill.len()) {
                    element.copy_from_slice(fill);
                }
                return Ok(());
            }
            Err(error) => return Err(io_error("opening the chunk file", error)),
        };
        let stored_bytes = file
            .metadata()
            .map_err(|error| io_error("reading the chunk file's size", error))?
            .len();
        if stored_bytes != out.len() as u64 {
            return Err(ArrayError::CorruptChunk {
                array: self.name.clone(),
                chunk: grid_index.to_vec(),
                detail: format!(
                    "file {} holds {stored_bytes} bytes, a raw chunk is {}",
                    file_path.display(),
                    out.len()
                ),
            });
        }
        std::io::Read::read_exact(&mut file, out)
            .map_err(|error| io_error("reading the chunk file", error))
    }

    /// Creates a new array in directory `path` (created if missing) with
    /// `meta` (its chunk shape is the inner chunk shape when sharded) and
    /// `codecs`. Refuses if `path` already holds a `zarr.json`.
    pub fn create(
        path: impl AsRef<Path>,
        meta: ArrayMeta,
        codecs: &ZarrCodecs,
    ) -> Result<ZarrWriter, ArrayError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        if path.join(ZARR_JSON).exists() {
            return Err(ArrayError::AlreadyExists { array: name });
        }
        if let Some(shard_shape) = &codecs.shard_shape {
            let valid = shard_shape.len() == meta.rank()
                && shard_shape
                    .iter()
                    .zip(meta.chunk_shape())
                    .all(|(&s, &c)| s > 0 && s.is_multiple_of(c));
            if !valid {
                return Err(ArrayError::InvalidMeta {
                    array: name,
                    source: MetaError::ShardShape {
                        shard_shape: shard_shape.clone(),
                        chunk_shape: meta.chunk_shape().to_vec(),
                    },
                });
            }
        }
        let mut bytes_to_bytes: Vec<Arc<dyn zarrs::array::codec::BytesToBytesCodecTraits>> =
            Vec::new();
        if let ZarrCompression::Zstd { level } = codecs.compression {
            if !(ZSTD_LEVEL_MIN..=ZSTD_LEVEL_MAX).contains(&level) {
                return Err(ArrayError::UnsupportedCodec {
                    array: name,
                    codec: format!(
                        "zstd level {level} (expected {ZSTD_LEVEL_MIN}..={ZSTD_LEVEL_MAX})"
                    ),
                });
            }
            bytes_to_bytes.push(Arc::new(ZstdCodec::new(level, false)));
        }
        if codecs.crc32c {
            bytes_to_bytes.push(Arc::new(Crc32cCodec::new()));
        }
        std::fs::create_dir_all(path)
            .map_err(|e| io_error(&name, "creating the array directory", e))?;
        let store = open_store(&name, path)?;
        let grid_chunk_shape = codecs
            .shard_shape
            .clone()
            .unwrap_or_else(|| meta.chunk_shape().to_vec());
        let mut builder = ArrayBuilder::new(
            meta.shape().to_vec(),
            grid_chunk_shape,
            meta.dtype().zarr_name(),
            // Zero bytes are 0 (or 0.0) in every supported dtype.
            FillValue::from(vec![0u8; meta.dtype().size_bytes()]),
        );
        if codecs.shard_shape.is_some() {
            let inner_chunk_shape = meta
                .chunk_shape()
                .to_vec()
                .try_into()
                .expect("chunk dims are nonzero (ArrayMeta invariant)");
            let mut sharding = ShardingCodecBuilder::new(inner_chunk_shape);
            sharding
                .array_to_bytes_codec(Arc::new(BytesCodec::little()))
                .bytes_to_bytes_codecs(bytes_to_bytes)
                .index_array_to_bytes_codec(Arc::new(BytesCodec::little()))
                .index_bytes_to_bytes_codecs(vec![Arc::new(Crc32cCodec::new())]);
            builder.array_to_bytes_codec(sharding.build_arc());
        } else {
            builder
                .array_to_bytes_codec(Arc::new(BytesCodec::little()))
                .bytes_to_bytes_codecs(bytes_to_bytes);
        }
        builder
            .attributes_mut()
            .insert(STRATA_ATTRIBUTE.to_string(), json!({ COMPLETE_KEY: false }));
        let array = builder
            .build(store, "/")
            .map_err(|error| zarr_error(&name, None, "building the array metadata", error))?;
        array
            .store_metadata_opt(&metadata_options())
            .map_err(|error| zarr_error(&name, None, "writing zarr.json", error))?;
        Ok(ZarrWriter {
            name,
            path: path.to_path_buf(),
            meta,
            shard_shape: codecs.shard_shape.clone(),
            array: RwLock::new(array),
            shards: Mutex::new(HashMap::new()),
            finished: AtomicBool::new(false),
            options: CodecOptions::default(),
            raw_little_endian: codecs.shard_shape.is_none()
                && codecs.compression == ZarrCompression::None
                && !codecs.crc32c
                && cfg!(target_endian = "little"),
            unsynced_files: Mutex::new(Vec::new()),
        })
    }

    /// The index of shard `shard_index` (offset and size per inner chunk,
    /// C order), read and checked once, or `None` if the shard has no file.
    fn shard_index_entries(
        &self,
        sharded: &ShardedReader,
        shard_index: &[u64],
        grid_index: &[u64],
        where_stored: &str,
    ) -> Result<ShardIndexEntries, ArrayError> {
        if let Some(entries) = sharded
            .indexes
            .lock()
            .expect("shard index lock poisoned")
            .get(shard_index)
        {
            return Ok(entries.clone());
        }
        let corrupt = |detail: String| ArrayError::CorruptChunk {
            array: self.name.clone(),
            chunk: grid_index.to_vec(),
            detail: format!("{where_stored}: {detail}"),
        };
        let io = |operation, source| ArrayError::Io {
            array: self.name.clone(),
            chunk: Some(grid_index.to_vec()),
            operation,
            source,
        };
        let file_path = self.path.join(self.array.chunk_key(shard_index).as_str());
        let entries = match File::open(&file_path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(io("opening the shard", error)),
            Ok(file) => {
                let file_len = file
                    .metadata()
                    .map_err(|e| io("reading the shard length", e))?
                    .len();
                let entry_count: u64 = sharded
                    .shard_shape
                    .iter()
                    .zip(self.meta.chunk_shape())
                    .map(|(&s, &c)| s / c)
                    .product();
                let checksum_len = if sharded.index_crc32c {
                    CRC32C_BYTES
                } else {
                    0
                };
                let index_len = entry_count * SHARD_INDEX_ENTRY_BYTES + checksum_len;
                if file_len < index_len {
                    return Err(corrupt(format!(
                        "shard of {file_len} bytes is shorter than its index of {index_len}"
                    )));
                }
                let index_offset = if sharded.index_at_end {
                    file_len - index_len
                } else {
                    0
                };
                let mut index = vec![0u8; index_len as usize];
                file.read_exact_at(&mut index, index_offset)
                    .map_err(|e| io("reading the shard index", e))?;
                let (entries_bytes, checksum) = index.split_at(index.len() - checksum_len as usize);
                if sharded.index_crc32c && crc32c::crc32c(entries_bytes).to_le_bytes() != checksum {
                    return Err(corrupt("shard index crc32c checksum mismatch".to_string()));
                }
                let entries: Vec<u64> = entries_bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte chunks")))
                    .collect();
                for pair in entries.chunks_exact(2) {
                    let (offset, size) = (pair[0], pair[1]);
                    let missing = offset == MISSING_INNER_CHUNK && size == MISSING_INNER_CHUNK;
                    if !missing && offset.checked_add(size).is_none_or(|end| end > file_len) {
                        return Err(corrupt(format!(
                            "shard index entry (offset {offset}, size {size}) runs past the shard's {file_len} bytes"
                        )));
                    }
                }
                Some(entries)
            }
        };
        let entries = Arc::new(entries);
        sharded
            .indexes
            .lock()
            .expect("shard index lock poisoned")
            .insert(shard_index.to_vec(), entries.clone());
        Ok(entries)
    }

    /// The encoded bytes of inner chunk `grid_index`, or `None` if it is not
    /// stored (it reads as the fill value).
    fn read_inner_chunk(
        &self,
        sharded: &ShardedReader,
        shard_index: &[u64],
        grid_index: &[u64],
        where_stored: &str,
    ) -> Result<Option<Vec<u8>>, ArrayError> {
        let entries = self.shard_index_entries(sharded, shard_index, grid_index, where_stored)?;
        let Some(entries) = entries.as_ref() else {
            return Ok(None);
        };
        // C-order number of the inner chunk within its shard.
        let mut linear = 0u64;
        for ((&shard, &chunk), (&index, &shard_at)) in sharded
            .shard_shape
            .iter()
            .zip(self.meta.chunk_shape())
            .zip(grid_index.iter().zip(shard_index))
        {
            let per_shard = shard / chunk;
            linear = linear * per_shard + (index - shard_at * per_shard);
        }
        let (offset, size) = (
            entries[2 * linear as usize],
            entries[2 * linear as usize + 1],
        );
        if offset == MISSING_INNER_CHUNK && size == MISSING_INNER_CHUNK {
            return Ok(None);
        }
        let file_path = self.path.join(self.array.chunk_key(shard_index).as_str());
        let mut encoded = vec![0u8; size as usize];
        File::open(&file_path)
            .and_then(|file| file.read_exact_at(&mut encoded, offset))
            .map_err(|source| ArrayError::Io {
                array: self.name.clone(),
                chunk: Some(grid_index.to_vec()),
                operation: "reading the inner chunk",
                source,
            })?;
        Ok(Some(encoded))
    }

    /// Shape, chunks, dtype, codecs and bytes on disk.
    pub fn info(&self) -> Result<ZarrInfo, ArrayError> {
        info_of(&self.name, &self.path, &self.parsed)
    }
}

fn info_of(name: &str, path: &Path, parsed: &Parsed) -> Result<ZarrInfo, ArrayError> {
    Ok(ZarrInfo {
        shape: parsed.meta.shape().to_vec(),
        chunk_shape: parsed.meta.chunk_shape().to_vec(),
        shard_shape: parsed.shard_shape.clone(),
        dtype: parsed.meta.dtype(),
        codecs: parsed.codecs.clone(),
        bytes_on_disk: bytes_under(path)
            .map_err(|e| io_error(name, "measuring the array's files", e))?,
        complete: parsed.complete,
    })
}

/// Reads the metadata and disk usage of the array at `path` without
/// opening it for reading (works on incomplete arrays too).
pub fn zarr_info(path: impl AsRef<Path>) -> Result<ZarrInfo, ArrayError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let parsed = parse_zarr_json(&name, &read_document(&name, path)?)?;
    info_of(&name, path, &parsed)
}

impl ChunkSource for ZarrArray {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_chunk(&self, grid_index: &[u64], out: &mut [u8]) -> Result<(), ArrayError> {
        check_chunk_buffer(&self.name, &self.meta, grid_index, out.len())?;
        let size = self.meta.dtype().size_bytes();
        // Stored chunks are full-sized; the ragged part is copied out.
        let ragged = ChunkRegion {
            start: vec![0; self.meta.rank()],
            shape: self.meta.chunk_shape_at(grid_index),
        };
        match &self.sharded {
            Some(sharded) => {
                let (shard_index, _) = shard_of(&self.meta, &sharded.shard_shape, grid_index);
                let where_stored = format!(
                    "shard {shard_index:?} (file {})",
                    self.array.chunk_key(&shard_index)
                );
                let encoded =
                    self.read_inner_chunk(sharded, &shard_index, grid_index, &where_stored)?;
                let Some(encoded) = encoded else {
                    // Not stored: the fill value.
                    let fill = self.array.fill_value().as_ne_bytes();
                    for element in out.chunks_exact_mut(size) {
                        element.copy_from_slice(fill);
                    }
                    return Ok(());
                };
                let decoded = sharded
                    .inner_codecs
                    .decode(
                        Cow::Owned(encoded),
                        &sharded.inner_representation,
                        &self.options,
                    )
                    .map_err(|error| {
                        read_error(
                            &self.name,
                            grid_index,
                            &where_stored,
                            zarrs::array::ArrayError::CodecError(error),
                        )
                    })?;
                let raw = decoded.into_fixed().map_err(|error| {
                    zarr_error(&self.name, Some(grid_index), "reading the chunk", error)
                })?;
                if raw.len() != self.meta.full_chunk_len_bytes() {
                    return Err(ArrayError::CorruptChunk {
                        array: self.name.clone(),
                        chunk: grid_index.to_vec(),
                        detail: format!(
                            "{where_stored} decodes to {} bytes, expected {}",
                            raw.len(),
                            self.meta.full_chunk_len_bytes()
                        ),
                    });
                }
                for_each_run(self.meta.chunk_shape(), &ragged, |outer, inner, len| {
                    let (outer, inner, len) = (
                        outer as usize * size,
                        inner as usize * size,
                        len as usize * size,
                    );
                    out[inner..inner + len].copy_from_slice(&raw[outer..outer + len]);
                });
            }
            None if self.raw_little_endian
                && out.len() as u64 == self.meta.full_chunk_len_bytes() as u64 =>
            {
                self.read_raw_chunk(grid_index, out)?;
            }
            None => {
                let where_stored = format!("file {}", self.array.chunk_key(grid_index));
                let bytes = self
                    .array
                    .retrieve_chunk_opt(grid_index, &self.options)
                    .map_err(|error| read_error(&self.name, grid_index, &where_stored, error))?;
                let raw = bytes.into_fixed().map_err(|error| {
                    zarr_error(&self.name, Some(grid_index), "reading the chunk", error)
                })?;
                for_each_run(self.meta.chunk_shape(), &ragged, |outer, inner, len| {
                    let (outer, inner, len) = (
                        outer as usize * size,
                        inner as usize * size,
                        len as usize * size,
                    );
                    out[inner..inner + len].copy_from_slice(&raw[outer..outer + len]);
                });
            }
        }
        Ok(())
    }
}

/// A shard being filled by a [`ZarrWriter`].
enum ShardSlot {
    /// Not stored yet: the full (padded) shard in C order, which of its
    /// inner chunks were written, and how many inside the array are still
    /// missing.
    Pending {
        bytes: Vec<u8>,
        written: Vec<bool>,
        remaining: usize,
    },
    /// Encoded and stored; later writes update it in place.
    Stored,
}

/// Writes a Zarr v3 array chunk by chunk; see [`ZarrArray::create`].
pub struct ZarrWriter {
    name: String,
    path: PathBuf,
    meta: ArrayMeta,
    shard_shape: Option<Vec<u64>>,
    /// Write-locked only by `finish`, to update the attributes.
    array: RwLock<Array<FilesystemStore>>,
    /// Shards touched so far, each behind its own lock so that shards are
    /// filled and encoded in parallel.
    shards: Mutex<HashMap<Vec<u64>, Arc<Mutex<ShardSlot>>>>,
    finished: AtomicBool,
    options: CodecOptions,
    /// Chunks are stored as raw little-endian bytes: full chunks are
    /// written straight to their files, without zarrs' fsync per file; the
    /// files written are synced once, by `finish`, before the array is
    /// marked complete.
    raw_little_endian: bool,
    /// Files written directly and not yet synced.
    unsynced_files: Mutex<Vec<PathBuf>>,
}

impl std::fmt::Debug for ZarrWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZarrWriter")
            .field("name", &self.name)
            .field("meta", &self.meta)
            .field("shard_shape", &self.shard_shape)
            .finish_non_exhaustive()
    }
}

impl ZarrWriter {
    /// Shape, chunks, dtype, codecs and bytes on disk so far.
    pub fn info(&self) -> Result<ZarrInfo, ArrayError> {
        zarr_info(&self.path)
    }

    /// Number of shards buffered in memory, not yet stored.
    pub fn pending_shard_count(&self) -> usize {
        let shards = self.shards.lock().expect("shard map lock poisoned");
        shards
            .values()
            .filter(|slot| {
                matches!(
                    *slot.lock().expect("shard lock poisoned"),
                    ShardSlot::Pending { .. }
                )
            })
            .count()
    }

    fn new_pending(&self, shard_shape: &[u64], shard_index: &[u64]) -> ShardSlot {
        let chunk_shape = self.meta.chunk_shape();
        let per_shard: Vec<u64> = shard_shape
            .iter()
            .zip(chunk_shape)
            .map(|(&s, &c)| s / c)
            .collect();
        // Inner chunks of this shard that intersect the array.
        let inside: u64 = (0..self.meta.rank())
            .map(|d| {
                let origin = shard_index[d] * shard_shape[d];
                per_shard[d].min((self.meta.shape()[d] - origin).div_ceil(chunk_shape[d]))
            })
            .product();
        let shard_elements: u64 = shard_shape.iter().product();
        ShardSlot::Pending {
            bytes: vec![0; shard_elements as usize * self.meta.dtype().size_bytes()],
            written: vec![false; per_shard.iter().product::<u64>() as usize],
            remaining: inside as usize,
        }
    }

    fn store_shard(
        &self,
        shard_index: &[u64],
        grid_index: &[u64],
        bytes: &[u8],
    ) -> Result<(), ArrayError> {
        let array = self.array.read().expect("array lock poisoned");
        array
            .store_chunk_opt(
                shard_index,
                ArrayBytes::new_flen(Cow::Borrowed(bytes)),
                &self.options,
            )
            .map_err(|error| zarr_error(&self.name, Some(grid_index), "storing the shard", error))
    }

    fn write_sharded(
        &self,
        shard_shape: &[u64],
        grid_index: &[u64],
        data: &[u8],
    ) -> Result<(), ArrayError> {
        let (shard_index, local) = shard_of(&self.meta, shard_shape, grid_index);
        let slot = {
            let mut shards = self.shards.lock().expect("shard map lock poisoned");
            shards
                .entry(shard_index.clone())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(self.new_pending(shard_shape, &shard_index)))
                })
                .clone()
        };
        let mut slot = slot.lock().expect("shard lock poisoned");
        match &mut *slot {
            ShardSlot::Pending {
                bytes,
                written,
                remaining,
            } => {
                let size = self.meta.dtype().size_bytes();
                for_each_run(shard_shape, &local, |outer, inner, len| {
                    let (outer, inner, len) = (
                        outer as usize * size,
                        inner as usize * size,
                        len as usize * size,
                    );
                    bytes[outer..outer + len].copy_from_slice(&data[inner..inner + len]);
                });
                // C-order number of the inner chunk within its shard.
                let mut linear = 0usize;
                for ((&shard, &chunk), &start) in shard_shape
                    .iter()
                    .zip(self.meta.chunk_shape())
                    .zip(&local.start)
                {
                    linear = linear * (shard / chunk) as usize + (start / chunk) as usize;
                }
                if !written[linear] {
                    written[linear] = true;
                    *remaining -= 1;
                }
                if *remaining == 0 {
                    // On failure the slot stays pending with its data, so a
                    // retried write (or finish) stores it again.
                    self.store_shard(&shard_index, grid_index, bytes)?;
                    *slot = ShardSlot::Stored;
                }
                Ok(())
            }
            ShardSlot::Stored => {
                let subset = ArraySubset::new_with_start_shape(local.start, local.shape).map_err(
                    |error| {
                        zarr_error(
                            &self.name,
                            Some(grid_index),
                            "building the chunk subset",
                            error,
                        )
                    },
                )?;
                let array = self.array.read().expect("array lock poisoned");
                array
                    .store_chunk_subset_opt(
                        &shard_index,
                        &subset,
                        ArrayBytes::new_flen(Cow::Borrowed(data)),
                        &self.options,
                    )
                    .map_err(|error| {
                        zarr_error(
                            &self.name,
                            Some(grid_index),
                            "updating a stored shard",
                            error,
                        )
                    })
            }
        }
    }
}

impl ChunkSink for ZarrWriter {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn write_chunk(&self, grid_index: &[u64], data: &[u8]) -> Result<(), ArrayError> {
        if self.finished.load(Ordering::Acquire) {
            return Err(ArrayError::Finished {
                array: self.name.clone(),
            });
        }
        check_chunk_buffer(&self.name, &self.meta, grid_index, data.len())?;
        if let Some(shard_shape) = &self.shard_shape {
            return self.write_sharded(shard_shape, grid_index, data);
        }
        let ragged = self.meta.chunk_shape_at(grid_index);
        if self.raw_little_endian && ragged == self.meta.chunk_shape() {
            return self.write_raw_chunk(grid_index, data);
        }
        let padded;
        let full: &[u8] = if ragged == self.meta.chunk_shape() {
            data
        } else {
            // Zarr stores edge chunks full-sized; pad with the fill value.
            let size = self.meta.dtype().size_bytes();
            let mut buffer = vec![0u8; self.meta.full_chunk_len_bytes()];
            let region = ChunkRegion {
                start: vec![0; self.meta.rank()],
                shape: ragged,
            };
            for_each_run(self.meta.chunk_shape(), &region, |outer, inner, len| {
                let (outer, inner, len) = (
                    outer as usize * size,
                    inner as usize * size,
                    len as usize * size,
                );
                buffer[outer..outer + len].copy_from_slice(&data[inner..inner + len]);
            });
            padded = buffer;
            &padded
        };
        let array = self.array.read().expect("array lock poisoned");
        array
            .store_chunk_opt(
                grid_index,
                ArrayBytes::new_flen(Cow::Borrowed(full)),
                &self.options,
            )
            .map_err(|error| zarr_error(&self.name, Some(grid_index), "storing the chunk", error))
    }

    fn finish(&self) -> Result<(), ArrayError> {
        if self.finished.swap(true, Ordering::AcqRel) {
            return Err(ArrayError::Finished {
                array: self.name.clone(),
            });
        }
        // Writes are refused from here on; if finishing fails, it can be
        // retried (the flag goes back), as a refused operation changes nothing.
        let result = self.finish_unguarded();
        if result.is_err() {
            self.finished.store(false, Ordering::Release);
        }
        result
    }
}

impl ZarrWriter {
    /// Writes a full raw chunk straight to its file (what the `bytes` codec
    /// would store), starting its write-back without waiting for it; the
    /// file is synced by `finish`.
    fn write_raw_chunk(&self, grid_index: &[u64], data: &[u8]) -> Result<(), ArrayError> {
        let key = self
            .array
            .read()
            .expect("array lock poisoned")
            .chunk_key(grid_index);
        let file_path = self.path.join(key.as_str());
        let io = |operation, error| {
            chunk_file_error(&self.name, grid_index, &file_path, operation, error)
        };
        if let Some(parent) = file_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| io("creating the chunk's directory", error))?;
        }
        let mut file =
            File::create(&file_path).map_err(|error| io("creating the chunk file", error))?;
        std::io::Write::write_all(&mut file, data)
            .map_err(|error| io("writing the chunk file", error))?;
        start_write_back(&file);
        self.unsynced_files
            .lock()
            .expect("unsynced file list lock poisoned")
            .push(file_path);
        Ok(())
    }

    /// The work of `finish` once the flag is set.
    fn finish_unguarded(&self) -> Result<(), ArrayError> {
        // Shards with inner chunks never written are stored as they are:
        // the missing inner chunks read as the fill value.
        let slots: Vec<(Vec<u64>, Arc<Mutex<ShardSlot>>)> = self
            .shards
            .lock()
            .expect("shard map lock poisoned")
            .iter()
            .map(|(index, slot)| (index.clone(), slot.clone()))
            .collect();
        for (shard_index, slot) in slots {
            let mut slot = slot.lock().expect("shard lock poisoned");
            if let ShardSlot::Pending { bytes, .. } = &*slot {
                self.store_shard(&shard_index, &shard_index, bytes)?;
                *slot = ShardSlot::Stored;
            }
        }
        // Chunks are durable before zarr.json says the array is complete.
        let mut unsynced = std::mem::take(
            &mut *self
                .unsynced_files
                .lock()
                .expect("unsynced file list lock poisoned"),
        );
        unsynced.sort_unstable();
        unsynced.dedup();
        for (n, file_path) in unsynced.iter().enumerate() {
            if let Err(error) = File::open(file_path).and_then(|file| file.sync_data()) {
                // Keep what is still unsynced for a retried finish.
                self.unsynced_files
                    .lock()
                    .expect("unsynced file list lock poisoned")
                    .extend_from_slice(&unsynced[n..]);
                return Err(io_error(&self.name, "syncing the chunk files", error));
            }
        }
        sync_directories(&self.path)
            .map_err(|e| io_error(&self.name, "syncing the chunk files", e))?;
        let mut array = self.array.write().expect("array lock poisoned");
        array
            .attributes_mut()
            .insert(STRATA_ATTRIBUTE.to_string(), json!({ COMPLETE_KEY: true }));
        array
            .store_metadata_opt(&metadata_options())
            .map_err(|error| zarr_error(&self.name, None, "writing zarr.json", error))?;
        File::open(self.path.join(ZARR_JSON))
            .and_then(|file| file.sync_all())
            .and_then(|()| File::open(&self.path))
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io_error(&self.name, "syncing zarr.json", e))
    }
}
