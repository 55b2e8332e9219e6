//! NPY files as chunked arrays.
//!
//! Format (numpy's `NEP 1` / `numpy.lib.format`): the magic `\x93NUMPY`, a
//! major and minor version byte, the header length (`u16` little-endian in
//! version 1, `u32` in versions 2 and 3), then the header: a Python dict
//! literal with `descr`, `fortran_order` and `shape`, padded with spaces and
//! ending in `\n` so the data starts on a 64-byte boundary. The data follows
//! in C order. Versions 1, 2 and 3 are read (3 only differs in allowing
//! UTF-8 in the header); version 1 is written, byte for byte as `np.save`
//! writes it (including the spaces it leaves for the first axis to grow).
//!
//! Refused clearly: `fortran_order: True`, big-endian `descr`s, structured
//! or other dtypes, scalars (shape `()`), and `bf16` (NPY has no name for
//! it).
//!
//! An NPY file has no chunks; [`NpyArray::open`] takes the chunk shape to
//! present. Chunks spanning whole trailing dimensions are one contiguous
//! byte range; others are read and written as row segments. Reads use a
//! memory map ([`NpyReadMode::Mapped`]) or positional reads
//! ([`NpyReadMode::Positional`]).
//!
//! The incomplete rule: [`NpyArray::create`] writes to `<path>.partial`;
//! [`ChunkSink::finish`] syncs it and renames it to `<path>`. So an NPY file
//! at the final path is always complete; a `.partial` file left behind is
//! an interrupted write.
//!
//! ```
//! use strata_array::chunk::{read_chunk_vec, write_chunk_from, ChunkSink};
//! use strata_array::dtype::DataType;
//! use strata_array::meta::ArrayMeta;
//! use strata_array::npy::{NpyArray, NpyReadMode};
//!
//! let dir = std::env::temp_dir().join(format!("strata-npy-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("x.npy");
//! # let _ = std::fs::remove_file(&path);
//! let meta = ArrayMeta::new(vec![2, 3], vec![1, 3], DataType::F64).unwrap();
//! let writer = NpyArray::create(&path, meta).unwrap();
//! write_chunk_from(&writer, &[0, 0], &mut Vec::new(), &[1.0f64, 2.0, 3.0]).unwrap();
//! write_chunk_from(&writer, &[1, 0], &mut Vec::new(), &[4.0f64, 5.0, 6.0]).unwrap();
//! writer.finish().unwrap();
//!
//! let array = NpyArray::open(&path, vec![2, 2], NpyReadMode::Positional).unwrap();
//! assert_eq!(read_chunk_vec::<f64>(&array, &[0, 1]).unwrap(), vec![3.0, 6.0]);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;

use crate::chunk::{check_chunk_buffer, ChunkSink, ChunkSource};
use crate::dtype::{DataType, ALL_DATA_TYPES};
use crate::error::ArrayError;
use crate::meta::{for_each_run, ArrayMeta, RANK_MAX};

/// The first six bytes of every NPY file.
pub const MAGIC: [u8; 6] = *b"\x93NUMPY";
/// Bytes before the header text in version 1 (magic, version, `u16` length).
pub const PREFIX_V1_BYTES: usize = 10;
/// Bytes before the header text in versions 2 and 3 (`u32` length).
pub const PREFIX_V2_BYTES: usize = 12;
/// numpy aligns the data start (prefix plus header) to this many bytes.
pub const DATA_ALIGN_BYTES: usize = 64;
/// numpy leaves room in the header for the growing axis to reach this many
/// digits (`GROWTH_AXIS_MAX_DIGITS`), so appending writers can rewrite it in
/// place; matching it makes our files byte-identical to `np.save`'s.
pub const GROWTH_AXIS_DIGITS_MAX: usize = 21;
/// Longest header text read: numpy's default `max_header_size` for
/// `np.load`, beyond which it refuses a header as untrusted.
pub const HEADER_TEXT_MAX_BYTES: usize = 10_000;
const _: () = assert!(PREFIX_V1_BYTES == MAGIC.len() + 2 + 2);
const _: () = assert!(PREFIX_V2_BYTES == MAGIC.len() + 2 + 4);
const _: () = assert!(HEADER_TEXT_MAX_BYTES <= u16::MAX as usize);
// The longest header we write (RANK_MAX dims of 20 digits, ", " each, the
// fixed keys and the growth padding) fits version 1 and the read limit.
const _: () = assert!(
    PREFIX_V1_BYTES + 80 + RANK_MAX * 22 + GROWTH_AXIS_DIGITS_MAX + DATA_ALIGN_BYTES
        <= HEADER_TEXT_MAX_BYTES
);

/// How [`NpyArray`] reads the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyReadMode {
    /// Map the file and copy chunks out of the mapping.
    Mapped,
    /// Read each chunk with positional reads (`pread`).
    Positional,
}

/// What an NPY header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version, major and minor.
    pub version: (u8, u8),
    /// The element type.
    pub dtype: DataType,
    /// The array shape.
    pub shape: Vec<u64>,
    /// Byte offset of the first element.
    pub data_offset_bytes: u64,
}

/// A value of the Python literal subset NPY headers use.
#[derive(Clone, Debug, PartialEq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<PyValue>),
    List(Vec<PyValue>),
}

struct PyParser<'a> {
    text: &'a [u8],
    at: usize,
}

impl PyParser<'_> {
    fn skip_space(&mut self) {
        while self.at < self.text.len() && self.text[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        match self.peek() {
            Some(found) if found == byte => {
                self.at += 1;
                Ok(())
            }
            found => Err(format!(
                "expected {:?} at header byte {}, found {:?}",
                byte as char,
                self.at,
                found.map(|b| b as char)
            )),
        }
    }

    fn value(&mut self) -> Result<PyValue, String> {
        match self.peek() {
            Some(quote @ (b'\'' | b'"')) => {
                self.at += 1;
                let start = self.at;
                while self.at < self.text.len() && self.text[self.at] != quote {
                    self.at += 1;
                }
                if self.at == self.text.len() {
                    return Err(format!("unterminated string at header byte {start}"));
                }
                let text = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
                self.at += 1;
                Ok(PyValue::Str(text))
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.at += 1;
                        break;
                    }
                    items.push(self.value()?);
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(found) if found == close => {}
                        found => {
                            return Err(format!(
                                "expected ',' or {:?} at header byte {}, found {:?}",
                                close as char,
                                self.at,
                                found.map(|b| b as char)
                            ))
                        }
                    }
                }
                Ok(if open == b'(' {
                    PyValue::Tuple(items)
                } else {
                    PyValue::List(items)
                })
            }
            Some(b'0'..=b'9') => {
                let start = self.at;
                while self.at < self.text.len() && self.text[self.at].is_ascii_digit() {
                    self.at += 1;
                }
                let digits = std::str::from_utf8(&self.text[start..self.at]).unwrap_or("");
                // Python 2 wrote long integers with an L suffix.
                if self.text.get(self.at) == Some(&b'L') {
                    self.at += 1;
                }
                digits
                    .parse()
                    .map(PyValue::Int)
                    .map_err(|_| format!("integer {digits} at header byte {start} overflows u64"))
            }
            _ => {
                for (word, value) in [("True", true), ("False", false)] {
                    if self.text[self.at..].starts_with(word.as_bytes()) {
                        self.at += word.len();
                        return Ok(PyValue::Bool(value));
                    }
                }
                Err(format!("unexpected value at header byte {}", self.at))
            }
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, PyValue)>, String> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.at += 1;
                break;
            }
            let PyValue::Str(key) = self.value()? else {
                return Err(format!(
                    "dict key at header byte {} is not a string",
                    self.at
                ));
            };
            self.expect(b':')?;
            let value = self.value()?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {}
                found => {
                    return Err(format!(
                        "expected ',' or '}}' at header byte {}, found {:?}",
                        self.at,
                        found.map(|b| b as char)
                    ))
                }
            }
        }
        if self.peek().is_some() {
            return Err(format!(
                "trailing bytes after the dict at header byte {}",
                self.at
            ));
        }
        Ok(entries)
    }
}

fn corrupt(name: &str, detail: impl Into<String>) -> ArrayError {
    ArrayError::CorruptMetadata {
        array: name.to_string(),
        detail: detail.into(),
    }
}

/// Parses the header at the start of `file_start` (the first bytes of an
/// NPY file, at least up to the end of the header). `name` is used in
/// errors.
pub fn parse_header(name: &str, file_start: &[u8]) -> Result<NpyHeader, ArrayError> {
    if file_start.len() < PREFIX_V1_BYTES || file_start[..MAGIC.len()] != MAGIC {
        return Err(ArrayError::NotFound {
            array: name.to_string(),
            detail: format!(
                "not an NPY file: the first bytes are {:?}, expected the magic \\x93NUMPY",
                &file_start[..file_start.len().min(MAGIC.len())]
            ),
        });
    }
    let version = (file_start[6], file_start[7]);
    let (prefix, text_len) = match version.0 {
        1 => (
            PREFIX_V1_BYTES,
            usize::from(u16::from_le_bytes([file_start[8], file_start[9]])),
        ),
        2 | 3 => {
            if file_start.len() < PREFIX_V2_BYTES {
                return Err(corrupt(name, "file ends inside the NPY prefix"));
            }
            let len =
                u32::from_le_bytes([file_start[8], file_start[9], file_start[10], file_start[11]]);
            (PREFIX_V2_BYTES, len as usize)
        }
        _ => {
            return Err(ArrayError::UnsupportedLayout {
                array: name.to_string(),
                detail: format!(
                    "NPY format version {}.{} (expected 1.0, 2.0 or 3.0)",
                    version.0, version.1
                ),
            })
        }
    };
    if text_len > HEADER_TEXT_MAX_BYTES {
        return Err(corrupt(
            name,
            format!("header of {text_len} bytes exceeds the limit of {HEADER_TEXT_MAX_BYTES}"),
        ));
    }
    if file_start.len() < prefix + text_len {
        return Err(corrupt(
            name,
            format!(
                "file of {} bytes ends inside the header, which needs {}",
                file_start.len(),
                prefix + text_len
            ),
        ));
    }
    let text = &file_start[prefix..prefix + text_len];
    let entries = PyParser { text, at: 0 }.dict().map_err(|detail| {
        corrupt(
            name,
            format!("header {:?}: {detail}", String::from_utf8_lossy(text)),
        )
    })?;
    let lookup = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| corrupt(name, format!("header has no {key:?} key")))
    };
    let descr = match lookup("descr")? {
        PyValue::Str(descr) => descr.clone(),
        other => {
            return Err(ArrayError::UnsupportedDtype {
                array: name.to_string(),
                found: format!("{other:?}"),
                expected: supported_descrs(),
            })
        }
    };
    let dtype = match DataType::from_numpy_descr(&descr) {
        Some(dtype) => dtype,
        None if descr.starts_with('>') => {
            return Err(ArrayError::UnsupportedLayout {
                array: name.to_string(),
                detail: format!("big-endian descr {descr:?} (expected little-endian, '<')"),
            })
        }
        None => {
            return Err(ArrayError::UnsupportedDtype {
                array: name.to_string(),
                found: descr,
                expected: supported_descrs(),
            })
        }
    };
    match lookup("fortran_order")? {
        PyValue::Bool(false) => {}
        PyValue::Bool(true) => {
            return Err(ArrayError::UnsupportedLayout {
                array: name.to_string(),
                detail: "fortran_order is True (expected C order; save with np.ascontiguousarray)"
                    .to_string(),
            })
        }
        other => {
            return Err(corrupt(
                name,
                format!("fortran_order is {other:?}, expected a bool"),
            ))
        }
    }
    let shape = match lookup("shape")? {
        PyValue::Tuple(items) => items
            .iter()
            .map(|item| match item {
                PyValue::Int(dim) => Ok(*dim),
                other => Err(corrupt(
                    name,
                    format!("shape entry {other:?} is not an integer"),
                )),
            })
            .collect::<Result<Vec<u64>, ArrayError>>()?,
        other => {
            return Err(corrupt(
                name,
                format!("shape is {other:?}, expected a tuple"),
            ))
        }
    };
    if shape.is_empty() {
        return Err(ArrayError::UnsupportedLayout {
            array: name.to_string(),
            detail: "a scalar (shape ()); expected rank 1 or more".to_string(),
        });
    }
    Ok(NpyHeader {
        version,
        dtype,
        shape,
        data_offset_bytes: (prefix + text_len) as u64,
    })
}

fn supported_descrs() -> String {
    let names: Vec<&str> = ALL_DATA_TYPES
        .iter()
        .filter_map(|d| d.numpy_descr())
        .collect();
    names.join(", ")
}

/// The header `np.save` writes for a C-order array of `dtype` and `shape`
/// (format version 1.0), padded so the data starts on a 64-byte boundary.
/// `None` for a dtype NPY cannot name (`bf16`).
pub fn encode_header(dtype: DataType, shape: &[u64]) -> Option<Vec<u8>> {
    let descr = dtype.numpy_descr()?;
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut text =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    if let Some(first) = dims.first() {
        text.push_str(&" ".repeat(GROWTH_AXIS_DIGITS_MAX.saturating_sub(first.len())));
    }
    // Pad with spaces so prefix + text + '\n' is a multiple of the alignment.
    let unpadded = PREFIX_V1_BYTES + text.len() + 1;
    text.push_str(&" ".repeat(unpadded.next_multiple_of(DATA_ALIGN_BYTES) - unpadded));
    text.push('\n');
    assert!(
        text.len() <= HEADER_TEXT_MAX_BYTES,
        "header of {} bytes for shape {shape:?}",
        text.len()
    );
    let mut bytes = Vec::with_capacity(PREFIX_V1_BYTES + text.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    debug_assert!(
        bytes.len().is_multiple_of(DATA_ALIGN_BYTES),
        "{} bytes",
        bytes.len()
    );
    Some(bytes)
}

#[derive(Debug)]
enum Backing {
    Mapped(Mmap),
    File(File),
}

/// An NPY file read as a chunked array.
#[derive(Debug)]
pub struct NpyArray {
    name: String,
    meta: ArrayMeta,
    header: NpyHeader,
    backing: Backing,
}

fn io_error(
    name: &str,
    chunk: Option<&[u64]>,
    operation: &'static str,
    source: std::io::Error,
) -> ArrayError {
    ArrayError::Io {
        array: name.to_string(),
        chunk: chunk.map(<[u64]>::to_vec),
        operation,
        source,
    }
}

impl NpyArray {
    /// Opens the NPY file at `path`, presenting it in chunks of
    /// `chunk_shape` (same rank as the file's shape).
    pub fn open(
        path: impl AsRef<Path>,
        chunk_shape: Vec<u64>,
        mode: NpyReadMode,
    ) -> Result<NpyArray, ArrayError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArrayError::NotFound {
                    array: name,
                    detail: "no such file".to_string(),
                })
            }
            Err(error) => return Err(io_error(&name, None, "opening the NPY file", error)),
        };
        let file_len = file
            .metadata()
            .map_err(|e| io_error(&name, None, "reading the file length", e))?
            .len();
        let mut start = Vec::new();
        (&mut file)
            .take((PREFIX_V2_BYTES + HEADER_TEXT_MAX_BYTES) as u64)
            .read_to_end(&mut start)
            .map_err(|e| io_error(&name, None, "reading the NPY header", e))?;
        let header = parse_header(&name, &start)?;
        let meta =
            ArrayMeta::new(header.shape.clone(), chunk_shape, header.dtype).map_err(|source| {
                ArrayError::InvalidMeta {
                    array: name.clone(),
                    source,
                }
            })?;
        let data_end = header.data_offset_bytes + meta.len_bytes();
        if file_len < data_end {
            return Err(corrupt(
                &name,
                format!(
                    "file is {file_len} bytes but header (shape {:?}, {}) needs {data_end}",
                    header.shape, header.dtype
                ),
            ));
        }
        let backing = match mode {
            NpyReadMode::Positional => Backing::File(file),
            NpyReadMode::Mapped => {
                // SAFETY: the mapping is read-only and private to this value.
                // A concurrent writer truncating the file could fault reads;
                // NPY inputs are treated as immutable while open, as numpy's
                // own `mmap_mode='r'` does.
                let map = unsafe { Mmap::map(&file) }
                    .map_err(|e| io_error(&name, None, "mapping the NPY file", e))?;
                Backing::Mapped(map)
            }
        };
        Ok(NpyArray {
            name,
            meta,
            header,
            backing,
        })
    }

    /// What the header says.
    pub fn header(&self) -> &NpyHeader {
        &self.header
    }

    /// Creates `<path>.partial` for writing an array of `meta` (its chunk
    /// shape is the one [`ChunkSink::write_chunk`] uses); `finish` renames it
    /// to `path`. Refuses if `path` exists, or if the dtype is `bf16`.
    pub fn create(path: impl AsRef<Path>, meta: ArrayMeta) -> Result<NpyWriter, ArrayError> {
        let final_path = path.as_ref().to_path_buf();
        let name = final_path.display().to_string();
        let Some(header) = encode_header(meta.dtype(), meta.shape()) else {
            return Err(ArrayError::UnsupportedDtype {
                array: name,
                found: meta.dtype().numpy_name().to_string(),
                expected: supported_descrs(),
            });
        };
        if final_path.exists() {
            return Err(ArrayError::AlreadyExists { array: name });
        }
        let mut partial_name = final_path.file_name().unwrap_or_default().to_os_string();
        partial_name.push(".partial");
        let partial_path = final_path.with_file_name(partial_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial_path)
            .map_err(|e| io_error(&name, None, "creating the .partial NPY file", e))?;
        file.write_all_at(&header, 0)
            .map_err(|e| io_error(&name, None, "writing the NPY header", e))?;
        let data_offset_bytes = header.len() as u64;
        file.set_len(data_offset_bytes + meta.len_bytes())
            .map_err(|e| io_error(&name, None, "sizing the NPY file", e))?;
        Ok(NpyWriter {
            name,
            meta,
            final_path,
            partial_path,
            file,
            data_offset_bytes,
            finished: AtomicBool::new(false),
        })
    }
}

impl ChunkSource for NpyArray {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_chunk(&self, grid_index: &[u64], out: &mut [u8]) -> Result<(), ArrayError> {
        check_chunk_buffer(&self.name, &self.meta, grid_index, out.len())?;
        let size = self.meta.dtype().size_bytes() as u64;
        let base = self.header.data_offset_bytes;
        let region = self.meta.chunk_region(grid_index);
        let mut result = Ok(());
        for_each_run(self.meta.shape(), &region, |outer, inner, len| {
            if result.is_err() {
                return;
            }
            let (inner, len) = ((inner * size) as usize, (len * size) as usize);
            let offset = base + outer * size;
            let target = &mut out[inner..inner + len];
            match &self.backing {
                Backing::Mapped(map) => {
                    // In bounds: open checked the file holds the whole array.
                    let offset = offset as usize;
                    target.copy_from_slice(&map[offset..offset + len]);
                }
                Backing::File(file) => {
                    if let Err(error) = file.read_exact_at(target, offset) {
                        result = Err(io_error(
                            &self.name,
                            Some(grid_index),
                            "reading the chunk",
                            error,
                        ));
                    }
                }
            }
        });
        result
    }
}

/// Writes an NPY file chunk by chunk; see [`NpyArray::create`].
#[derive(Debug)]
pub struct NpyWriter {
    name: String,
    meta: ArrayMeta,
    final_path: PathBuf,
    partial_path: PathBuf,
    file: File,
    data_offset_bytes: u64,
    finished: AtomicBool,
}

impl NpyWriter {
    /// The path being written until `finish` (`<path>.partial`).
    pub fn partial_path(&self) -> &Path {
        &self.partial_path
    }
}

impl ChunkSink for NpyWriter {
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
        let size = self.meta.dtype().size_bytes() as u64;
        let region = self.meta.chunk_region(grid_index);
        let mut result = Ok(());
        for_each_run(self.meta.shape(), &region, |outer, inner, len| {
            if result.is_err() {
                return;
            }
            let (inner, len) = ((inner * size) as usize, (len * size) as usize);
            let offset = self.data_offset_bytes + outer * size;
            if let Err(error) = self.file.write_all_at(&data[inner..inner + len], offset) {
                result = Err(io_error(
                    &self.name,
                    Some(grid_index),
                    "writing the chunk",
                    error,
                ));
            }
        });
        result
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

impl NpyWriter {
    /// The work of `finish` once the flag is set.
    fn finish_unguarded(&self) -> Result<(), ArrayError> {
        self.file
            .sync_all()
            .map_err(|e| io_error(&self.name, None, "syncing the NPY file", e))?;
        std::fs::rename(&self.partial_path, &self.final_path).map_err(|e| {
            io_error(
                &self.name,
                None,
                "renaming the .partial NPY file into place",
                e,
            )
        })?;
        // Make the rename itself durable.
        if let Some(dir) = self
            .final_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error(&self.name, None, "syncing the directory", e))?;
        }
        Ok(())
    }
}
