//! [`RegionBuilder`]: layers streamed to a temporary file next to the
//! destination, then published atomically.
//!
//! The data is written first, at [`HEADER_RESERVE_BYTES`] into the
//! temporary file, while each layer's xxh3-64 is computed as it streams;
//! the header, which needs every offset and checksum, is written last in
//! front of it. A header larger than the reservation moves the data once
//! (`std::io::copy`, which the kernel does file to file). Publishing is two
//! steps so a caller can verify before readers see the file:
//! [`RegionBuilder::write_temp`] (header written, file synced) and
//! [`PendingRegion::commit`] (renamed into place, directory synced). A crash
//! at any point leaves the old file or the new one, never a partial one.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::Xxh3;

use crate::error::RegionError;
use crate::format::{self, Dtype, WrittenTensor, DATA_ALIGN_BYTES, PAD_LAYER_PREFIX};
use crate::region::Region;

/// Bytes reserved for the header in front of the streamed data: room for
/// the metadata of a few hundred layers without moving the data.
pub const HEADER_RESERVE_BYTES: u64 = 64 << 10;
/// Bytes read from a streamed layer's reader at a time.
pub const STREAM_PIECE_BYTES: usize = 1 << 20;

const _: () = assert!(HEADER_RESERVE_BYTES.is_multiple_of(DATA_ALIGN_BYTES));

/// Distinguishes temporary files of builders in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

struct Added {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    begin: u64,
    end: u64,
    checksum: Option<u64>,
    attributes: Vec<(String, String)>,
}

/// Builds a region file layer by layer; see the module documentation.
pub struct RegionBuilder {
    destination: PathBuf,
    temp_path: PathBuf,
    file: Option<File>,
    tensors: Vec<Added>,
    data_bytes: u64,
    pads: u64,
    metadata: Vec<(String, String)>,
    /// Names added so far (a set, so adding n layers stays O(n)).
    names: std::collections::HashSet<String>,
}

impl std::fmt::Debug for RegionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionBuilder")
            .field("destination", &self.destination)
            .field("layers", &self.tensors.len())
            .field("data_bytes", &self.data_bytes)
            .finish_non_exhaustive()
    }
}

fn temp_path_for(destination: &Path) -> PathBuf {
    let name = destination
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "region".to_string());
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    destination.with_file_name(format!(".{name}.tmp-{}-{unique}", std::process::id()))
}

impl RegionBuilder {
    /// A builder whose file will be published at `destination`.
    pub fn create(destination: impl AsRef<Path>) -> Result<RegionBuilder, RegionError> {
        let destination = destination.as_ref().to_path_buf();
        let temp_path = temp_path_for(&destination);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| RegionError::io(&temp_path, "creating the temporary region file", e))?;
        Ok(RegionBuilder {
            destination,
            temp_path,
            file: Some(file),
            tensors: Vec::new(),
            data_bytes: 0,
            pads: 0,
            metadata: Vec::new(),
            names: std::collections::HashSet::new(),
        })
    }

    /// Adds a file-level metadata entry (kept as is; keys starting with
    /// `strata.` are Strata's own and refused here).
    pub fn set_metadata(&mut self, key: &str, value: &str) -> Result<(), RegionError> {
        if key.starts_with("strata.") {
            return Err(RegionError::InvalidLayer {
                layer: format::METADATA_KEY.to_string(),
                detail: format!(
                    "metadata key {key:?}: keys starting with \"strata.\" are reserved"
                ),
            });
        }
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// Adds a typed tensor: `bytes` are its elements in C order,
    /// little-endian, exactly `shape.product() * dtype.size_bytes()` bytes.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        bytes: &[u8],
        attributes: &[(&str, &str)],
    ) -> Result<(), RegionError> {
        self.add_from_reader(name, dtype, shape, bytes, attributes)
    }

    /// Adds a byte blob (a 1-D `U8` tensor).
    pub fn add_blob(
        &mut self,
        name: &str,
        bytes: &[u8],
        attributes: &[(&str, &str)],
    ) -> Result<(), RegionError> {
        self.add_tensor(name, Dtype::U8, &[bytes.len() as u64], bytes, attributes)
    }

    /// Adds a tensor whose bytes come from `reader`, which must yield
    /// exactly the shape's byte length; read and written
    /// [`STREAM_PIECE_BYTES`] at a time, so a layer need not fit in memory.
    pub fn add_from_reader(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        mut reader: impl Read,
        attributes: &[(&str, &str)],
    ) -> Result<(), RegionError> {
        let invalid = |detail: String| RegionError::InvalidLayer {
            layer: name.to_string(),
            detail,
        };
        if name.is_empty() || name == format::METADATA_KEY || name.starts_with(PAD_LAYER_PREFIX) {
            return Err(invalid(format!(
                "the name must be non-empty and neither {:?} nor start with {PAD_LAYER_PREFIX:?}",
                format::METADATA_KEY
            )));
        }
        if self.names.contains(name) {
            return Err(invalid(
                "a layer of this name was already added".to_string(),
            ));
        }
        let declared = shape
            .iter()
            .try_fold(1u64, |p, &d| p.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size_bytes()))
            .ok_or_else(|| invalid(format!("shape {shape:?} of {dtype} overflows 64 bits")))?;
        let mut seen = std::collections::HashSet::new();
        for (key, _) in attributes {
            if !seen.insert(*key) {
                return Err(invalid(format!("attribute {key:?} given twice")));
            }
        }
        let file = self
            .file
            .as_mut()
            .expect("a builder's file is open until write_temp");
        let temp_path = &self.temp_path;
        let io = |operation, e| RegionError::io(temp_path, operation, e);
        // Each layer starts at a multiple of its element size: pad with a
        // hidden U8 tensor when it would not.
        let misalignment = self.data_bytes % dtype.size_bytes();
        if misalignment != 0 {
            let pad = dtype.size_bytes() - misalignment;
            file.seek(SeekFrom::Start(HEADER_RESERVE_BYTES + self.data_bytes))
                .map_err(|e| io("seeking in the temporary file", e))?;
            file.write_all(&vec![0u8; pad as usize])
                .map_err(|e| io("writing padding", e))?;
            self.tensors.push(Added {
                name: format!("{PAD_LAYER_PREFIX}{}", self.pads),
                dtype: Dtype::U8,
                shape: vec![pad],
                begin: self.data_bytes,
                end: self.data_bytes + pad,
                checksum: None,
                attributes: Vec::new(),
            });
            self.pads += 1;
            self.data_bytes += pad;
        }
        let begin = self.data_bytes;
        file.seek(SeekFrom::Start(HEADER_RESERVE_BYTES + begin))
            .map_err(|e| io("seeking in the temporary file", e))?;
        let mut hasher = Xxh3::new();
        let mut piece = vec![0u8; STREAM_PIECE_BYTES.min(declared as usize).max(1)];
        let mut written = 0u64;
        loop {
            let got = match reader.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("reading the layer's bytes", e)),
            };
            if written + got as u64 > declared {
                return Err(self.refuse_layer(
                    begin,
                    invalid(format!(
                        "more than the {declared} bytes its shape {shape:?} of {dtype} holds"
                    )),
                ));
            }
            hasher.update(&piece[..got]);
            let file = self.file.as_mut().expect("open");
            file.write_all(&piece[..got])
                .map_err(|e| RegionError::io(&self.temp_path, "writing the layer", e))?;
            written += got as u64;
        }
        if written != declared {
            return Err(self.refuse_layer(
                begin,
                invalid(format!(
                    "{written} bytes given, its shape {shape:?} of {dtype} holds {declared}"
                )),
            ));
        }
        let mut attributes: Vec<(String, String)> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes.sort();
        self.names.insert(name.to_string());
        self.tensors.push(Added {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            begin,
            end: begin + declared,
            checksum: Some(hasher.digest()),
            attributes,
        });
        self.data_bytes = begin + declared;
        Ok(())
    }

    /// Undoes a refused layer's partial write (the file is cut back to the
    /// data before it), returning `error`.
    fn refuse_layer(&mut self, begin: u64, error: RegionError) -> RegionError {
        if let Some(file) = self.file.as_mut() {
            let _ = file.set_len(HEADER_RESERVE_BYTES + begin);
        }
        self.data_bytes = begin;
        error
    }

    /// Layers added so far (padding left out).
    pub fn layer_count(&self) -> usize {
        self.tensors
            .iter()
            .filter(|t| !t.name.starts_with(PAD_LAYER_PREFIX))
            .count()
    }

    /// Writes the header and syncs the temporary file: the region is
    /// complete but not yet visible at its destination.
    pub fn write_temp(mut self) -> Result<PendingRegion, RegionError> {
        let mut file = self
            .file
            .take()
            .expect("a builder's file is open until write_temp");
        let written: Vec<WrittenTensor<'_>> = self
            .tensors
            .iter()
            .map(|t| WrittenTensor {
                name: &t.name,
                dtype: t.dtype,
                shape: &t.shape,
                begin: t.begin,
                end: t.end,
                checksum: t.checksum,
                attributes: &t.attributes,
            })
            .collect();
        let header = format::encode(&written, &self.metadata, HEADER_RESERVE_BYTES);
        let temp_path = self.temp_path.clone();
        let io = |operation, e| RegionError::io(&temp_path, operation, e);
        if header.len() as u64 == HEADER_RESERVE_BYTES {
            file.set_len(HEADER_RESERVE_BYTES + self.data_bytes)
                .map_err(|e| io("sizing the temporary file", e))?;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| io("seeking in the temporary file", e))?;
            file.write_all(&header)
                .map_err(|e| io("writing the header", e))?;
        } else {
            // The header outgrew the reservation: a second temporary file
            // gets the header, then the data moved behind it.
            let moved_path = temp_path_for(&self.destination);
            let mut moved = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&moved_path)
                .map_err(|e| {
                    RegionError::io(&moved_path, "creating the temporary region file", e)
                })?;
            let result = (|| {
                moved.write_all(&header)?;
                file.seek(SeekFrom::Start(HEADER_RESERVE_BYTES))?;
                let copied = std::io::copy(&mut (&mut file).take(self.data_bytes), &mut moved)?;
                if copied != self.data_bytes {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("moved {copied} of {} data bytes", self.data_bytes),
                    ));
                }
                Ok(())
            })();
            if let Err(e) = result {
                let _ = fs::remove_file(&moved_path);
                return Err(RegionError::io(
                    &moved_path,
                    "moving the data behind a large header",
                    e,
                ));
            }
            drop(file);
            let _ = fs::remove_file(&self.temp_path);
            self.temp_path = moved_path;
            file = moved;
        }
        file.sync_all()
            .map_err(|e| RegionError::io(&self.temp_path, "syncing the temporary file", e))?;
        Ok(PendingRegion {
            temp_path: std::mem::take(&mut self.temp_path),
            destination: std::mem::take(&mut self.destination),
        })
    }

    /// [`RegionBuilder::write_temp`] then [`PendingRegion::commit`].
    pub fn finish(self) -> Result<PathBuf, RegionError> {
        self.write_temp()?.commit()
    }
}

impl Drop for RegionBuilder {
    fn drop(&mut self) {
        // An abandoned builder leaves nothing behind.
        if !self.temp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// A complete region in its temporary file, not yet at its destination.
/// Dropping it removes the temporary file.
#[derive(Debug)]
pub struct PendingRegion {
    temp_path: PathBuf,
    destination: PathBuf,
}

impl PendingRegion {
    /// The temporary file.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Where [`PendingRegion::commit`] puts it.
    pub fn destination(&self) -> &Path {
        &self.destination
    }

    /// Maps the temporary file (for example to verify it before commit).
    pub fn open(&self) -> Result<Region, RegionError> {
        Region::open(&self.temp_path)
    }

    /// Renames the file into place and syncs the directory: from here on,
    /// readers opening the destination see the new file.
    pub fn commit(mut self) -> Result<PathBuf, RegionError> {
        fs::rename(&self.temp_path, &self.destination)
            .map_err(|e| RegionError::io(&self.destination, "renaming the region into place", e))?;
        self.temp_path = PathBuf::new();
        let directory = match self.destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&directory)
            .and_then(|d| d.sync_all())
            .map_err(|e| RegionError::io(&directory, "syncing the directory", e))?;
        Ok(std::mem::take(&mut self.destination))
    }
}

impl Drop for PendingRegion {
    fn drop(&mut self) {
        if !self.temp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// Writes `region`'s layers as a plain safetensors file at `destination`:
/// no Strata metadata, no padding tensors, the data right after the header
/// (padded to 8 bytes, as the safetensors writer does); the region's other
/// metadata is kept. Written to a temporary file, synced, renamed.
pub fn export_plain(region: &Region, destination: &Path) -> Result<(), RegionError> {
    let temp_path = temp_path_for(destination);
    let io = |operation, e| RegionError::io(&temp_path, operation, e);
    let mut offset = 0u64;
    let mut object = serde_json::Map::new();
    if !region.header().other_metadata.is_empty() {
        let metadata: serde_json::Map<String, serde_json::Value> = region
            .header()
            .other_metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        object.insert(format::METADATA_KEY.into(), metadata.into());
    }
    for layer in region.layers() {
        object.insert(
            layer.name.clone(),
            serde_json::json!({
                "dtype": layer.dtype.name(),
                "shape": layer.shape,
                "data_offsets": [offset, offset + layer.len_bytes()],
            }),
        );
        offset += layer.len_bytes();
    }
    let mut json = serde_json::Value::Object(object).to_string();
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(' ');
    }
    let result = (|| -> Result<(), RegionError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| io("creating the temporary file", e))?;
        file.write_all(&(json.len() as u64).to_le_bytes())
            .and_then(|()| file.write_all(json.as_bytes()))
            .map_err(|e| io("writing the header", e))?;
        for index in 0..region.layer_count() {
            // Verified before it is copied out.
            let layer = region.layer_at(index)?;
            file.write_all(layer.bytes())
                .map_err(|e| io("writing a layer", e))?;
        }
        file.sync_all().map_err(|e| io("syncing", e))?;
        fs::rename(&temp_path, destination)
            .map_err(|e| RegionError::io(destination, "renaming into place", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp_path);
    }
    result
}
