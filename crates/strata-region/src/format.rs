//! The region header: parsed strictly, and written.
//!
//! Layout (see `docs/region-format.md`): `u64` little-endian header length
//! `N`; `N` bytes of JSON (one object: `"__metadata__"` → string map, and
//! per layer `{"dtype", "shape", "data_offsets": [begin, end]}` with offsets
//! relative to the data); then the data, which starts at byte `8 + N`.
//! Strata pads the JSON with spaces so that `8 + N` is a multiple of
//! [`DATA_ALIGN_BYTES`]; the parser accepts any `N` (plain safetensors
//! files pad to 8 bytes only).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::RegionError;
use crate::region::NameHasherBuilder;

/// The format version this crate writes and reads (`strata.format`).
pub const FORMAT_VERSION: u32 = 1;
/// Strata starts the data section at a multiple of this many bytes.
pub const DATA_ALIGN_BYTES: u64 = 4096;
/// Bytes of the header-length field.
pub const HEADER_LEN_FIELD_BYTES: u64 = 8;
/// The largest header accepted (the safetensors limit).
pub const HEADER_BYTES_MAX: u64 = 100_000_000;
/// The metadata entry of the header.
pub const METADATA_KEY: &str = "__metadata__";
/// Metadata key of the format version.
pub const FORMAT_KEY: &str = "strata.format";
/// Metadata key prefix of a layer's checksum (`strata.xxh3.<layer>`: 16 hex
/// digits of the xxh3-64 of its bytes).
pub const CHECKSUM_KEY_PREFIX: &str = "strata.xxh3.";
/// Metadata key prefix of a layer's attributes (`strata.attrs.<layer>`: a
/// JSON object of strings, itself stored as a string).
pub const ATTRS_KEY_PREFIX: &str = "strata.attrs.";
/// Names of the padding tensors Strata inserts so every layer starts at a
/// multiple of its element size (safetensors allows no gaps between
/// tensors). They are `U8` and hidden from [`crate::Region`]'s layers.
pub const PAD_LAYER_PREFIX: &str = "__strata_pad_";

const _: () =
    assert!(DATA_ALIGN_BYTES.is_power_of_two() && DATA_ALIGN_BYTES > HEADER_LEN_FIELD_BYTES);

/// Element types: every safetensors dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// Booleans, one byte each.
    Bool,
    /// Unsigned 8-bit integers (byte blobs are 1-D `U8`).
    U8,
    /// Signed 8-bit integers.
    I8,
    /// 8-bit floats, 5-bit exponent.
    F8E5M2,
    /// 8-bit floats, 4-bit exponent.
    F8E4M3,
    /// Unsigned 16-bit integers.
    U16,
    /// Signed 16-bit integers.
    I16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Unsigned 32-bit integers.
    U32,
    /// Signed 32-bit integers.
    I32,
    /// IEEE single precision.
    F32,
    /// Unsigned 64-bit integers.
    U64,
    /// Signed 64-bit integers.
    I64,
    /// IEEE double precision.
    F64,
}

/// Every dtype, in the order of their names in error messages.
pub const ALL_DTYPES: [Dtype; 15] = [
    Dtype::Bool,
    Dtype::U8,
    Dtype::I8,
    Dtype::F8E5M2,
    Dtype::F8E4M3,
    Dtype::U16,
    Dtype::I16,
    Dtype::F16,
    Dtype::BF16,
    Dtype::U32,
    Dtype::I32,
    Dtype::F32,
    Dtype::U64,
    Dtype::I64,
    Dtype::F64,
];

impl Dtype {
    /// The safetensors name (`"F32"`).
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::U16 => "U16",
            Dtype::I16 => "I16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::F32 => "F32",
            Dtype::U64 => "U64",
            Dtype::I64 => "I64",
            Dtype::F64 => "F64",
        }
    }

    /// The dtype of a safetensors name.
    pub fn from_name(name: &str) -> Option<Dtype> {
        ALL_DTYPES.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub const fn size_bytes(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One layer as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Its name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<u64>,
    /// First byte, relative to the data section.
    pub begin: u64,
    /// One past the last byte, relative to the data section.
    pub end: u64,
    /// The recorded xxh3-64 of its bytes, if any.
    pub checksum: Option<u64>,
    /// Its attributes, sorted by key.
    pub attributes: Vec<(String, String)>,
}

impl LayerEntry {
    /// Bytes of the layer.
    pub fn len_bytes(&self) -> u64 {
        self.end - self.begin
    }
}

/// A parsed, validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `N`, the JSON's length in bytes.
    pub header_bytes: u64,
    /// Where the data starts in the file: `8 + N`.
    pub data_start: u64,
    /// Bytes of the data section.
    pub data_bytes: u64,
    /// The layers in file order (padding tensors left out).
    pub layers: Vec<LayerEntry>,
    /// `strata.format`, when the file carries one.
    pub format_version: Option<u32>,
    /// Metadata entries that are not Strata's, sorted by key.
    pub other_metadata: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTensor<'a> {
    #[serde(borrow)]
    pub(crate) dtype: Cow<'a, str>,
    pub(crate) shape: Vec<u64>,
    pub(crate) data_offsets: [u64; 2],
}

/// A JSON string borrowed from the header when it has no escapes, owned
/// when it has (serde's own `Cow` impl always copies).
pub(crate) struct CowStr<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// The `__metadata__` map, its strings borrowed where possible.
pub(crate) struct RawMetadata<'a>(pub(crate) Vec<(CowStr<'a>, CowStr<'a>)>);

impl<'de> Deserialize<'de> for RawMetadata<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetadataVisitor;
        impl<'de> Visitor<'de> for MetadataVisitor {
            type Value = RawMetadata<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<CowStr<'de>, CowStr<'de>>()? {
                    entries.push(entry);
                }
                Ok(RawMetadata(entries))
            }
        }
        deserializer.deserialize_map(MetadataVisitor)
    }
}

pub(crate) struct RawHeader<'a> {
    pub(crate) metadata: Option<RawMetadata<'a>>,
    pub(crate) metadata_twice: bool,
    pub(crate) tensors: Vec<(Cow<'a, str>, RawTensor<'a>)>,
}

impl<'de> Deserialize<'de> for RawHeader<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = RawHeader<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tensors and an optional __metadata__ map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut header = RawHeader {
                    metadata: None,
                    metadata_twice: false,
                    tensors: Vec::with_capacity(map.size_hint().unwrap_or(0)),
                };
                while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                    if key == METADATA_KEY {
                        header.metadata_twice |= header.metadata.is_some();
                        header.metadata = Some(map.next_value()?);
                    } else {
                        let tensor = map.next_value()?;
                        header.tensors.push((key, tensor));
                    }
                }
                Ok(header)
            }
        }
        deserializer.deserialize_map(HeaderVisitor)
    }
}

/// Byte offset in the file of serde_json's (line, column) in the header.
fn json_error_offset(json: &[u8], error: &serde_json::Error) -> u64 {
    let (line, column) = (error.line(), error.column());
    let mut offset = 0usize;
    let mut current = 1usize;
    while current < line && offset < json.len() {
        if json[offset] == b'\n' {
            current += 1;
        }
        offset += 1;
    }
    HEADER_LEN_FIELD_BYTES + (offset + column.saturating_sub(1)).min(json.len()) as u64
}

/// Parses and validates the header of a whole region file held in `file`
/// (`path` only names it in errors). Never panics and never reads outside
/// `file`.
pub fn parse(path: &Path, file: &[u8]) -> Result<Header, RegionError> {
    let file_bytes = file.len() as u64;
    let header_error = |offset: u64, detail: String| RegionError::Header {
        path: path.to_path_buf(),
        offset,
        detail,
    };
    let layer_error = |layer: &str, detail: String| RegionError::Layer {
        path: path.to_path_buf(),
        layer: layer.to_string(),
        detail,
    };
    if file_bytes < HEADER_LEN_FIELD_BYTES {
        return Err(RegionError::Truncated {
            path: path.to_path_buf(),
            needed_bytes: HEADER_LEN_FIELD_BYTES,
            file_bytes,
        });
    }
    let mut field = [0u8; HEADER_LEN_FIELD_BYTES as usize];
    field.copy_from_slice(&file[..HEADER_LEN_FIELD_BYTES as usize]);
    let header_bytes = u64::from_le_bytes(field);
    if header_bytes > HEADER_BYTES_MAX {
        return Err(header_error(
            0,
            format!("the header length field says {header_bytes} bytes, more than the {HEADER_BYTES_MAX} allowed"),
        ));
    }
    let data_start = HEADER_LEN_FIELD_BYTES + header_bytes;
    if data_start > file_bytes {
        return Err(RegionError::Truncated {
            path: path.to_path_buf(),
            needed_bytes: data_start,
            file_bytes,
        });
    }
    let json = &file[HEADER_LEN_FIELD_BYTES as usize..data_start as usize];
    if json.first() != Some(&b'{') {
        return Err(header_error(
            HEADER_LEN_FIELD_BYTES,
            format!(
                "the header must be a JSON object starting with '{{', found {:?}",
                json.first().map(|&b| b as char)
            ),
        ));
    }
    let raw: RawHeader<'_> = match crate::scan::scan(json) {
        Some(raw) => raw,
        None => serde_json::from_slice(json)
            .map_err(|e| header_error(json_error_offset(json, &e), format!("invalid JSON: {e}")))?,
    };
    if raw.metadata_twice {
        return Err(header_error(
            HEADER_LEN_FIELD_BYTES,
            format!("{METADATA_KEY} appears twice"),
        ));
    }
    let data_bytes = file_bytes - data_start;
    // Name -> position in `all`: duplicate names, and where metadata lands.
    let mut names: HashMap<&str, usize, NameHasherBuilder> =
        HashMap::with_capacity_and_hasher(raw.tensors.len(), NameHasherBuilder::default());
    let mut all = Vec::with_capacity(raw.tensors.len());
    for (name, tensor) in &raw.tensors {
        let name: &str = name;
        if names.insert(name, all.len()).is_some() {
            return Err(layer_error(name, "appears twice in the header".to_string()));
        }
        let dtype = Dtype::from_name(&tensor.dtype).ok_or_else(|| {
            layer_error(
                name,
                format!(
                    "unknown dtype {:?} (expected one of {})",
                    tensor.dtype,
                    ALL_DTYPES.map(Dtype::name).join(", ")
                ),
            )
        })?;
        let [begin, end] = tensor.data_offsets;
        if begin > end {
            return Err(layer_error(
                name,
                format!("data_offsets [{begin}, {end}] run backwards"),
            ));
        }
        if end > data_bytes {
            return Err(layer_error(
                name,
                format!(
                    "data_offsets [{begin}, {end}] end past the data, which has {data_bytes} bytes (file bytes {}..{}, the file has {file_bytes})",
                    data_start + begin,
                    data_start + end
                ),
            ));
        }
        let elements = tensor
            .shape
            .iter()
            .try_fold(1u64, |product, &d| product.checked_mul(d));
        let expected = elements.and_then(|n| n.checked_mul(dtype.size_bytes()));
        if expected != Some(end - begin) {
            return Err(layer_error(
                name,
                format!(
                    "shape {:?} of {dtype} needs {} bytes, data_offsets [{begin}, {end}] hold {}",
                    tensor.shape,
                    expected.map_or("more than 2^64".to_string(), |b| b.to_string()),
                    end - begin
                ),
            ));
        }
        if name.starts_with(PAD_LAYER_PREFIX) && (dtype != Dtype::U8 || tensor.shape.len() != 1) {
            return Err(layer_error(
                name,
                format!(
                    "a padding tensor must be 1-D U8, found {dtype} {:?}",
                    tensor.shape
                ),
            ));
        }
        all.push((name, dtype, &tensor.shape, begin, end));
    }
    // The data is covered exactly, in order, with no overlap and no gap
    // (as safetensors requires).
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| (all[i].3, all[i].4));
    let mut covered = 0u64;
    let mut previous: Option<&str> = None;
    for &i in &order {
        let (name, _, _, begin, end) = all[i];
        if begin < covered {
            return Err(layer_error(
                name,
                format!(
                    "data_offsets [{begin}, {end}] overlap layer {:?}, which ends at {covered}",
                    previous.unwrap_or("")
                ),
            ));
        }
        if begin > covered {
            return Err(layer_error(
                name,
                format!(
                    "data_offsets [{begin}, {end}] leave a gap after byte {covered} of the data"
                ),
            ));
        }
        covered = end;
        previous = Some(name);
    }
    if covered != data_bytes {
        return Err(header_error(
            data_start + covered,
            format!(
                "the layers cover {covered} bytes of data, the file has {data_bytes} after the header"
            ),
        ));
    }
    // Strata's metadata.
    let mut format_version = None;
    let mut checksums: Vec<Option<u64>> = vec![None; all.len()];
    let mut attributes: Vec<Option<Vec<(String, String)>>> = vec![None; all.len()];
    let mut other_metadata = Vec::new();
    let no_metadata = Vec::new();
    let metadata = raw.metadata.as_ref().map_or(&no_metadata, |m| &m.0);
    for (CowStr(key), CowStr(value)) in metadata {
        let (key, value): (&str, &str) = (key, value);
        let bad = |detail: String| {
            header_error(
                HEADER_LEN_FIELD_BYTES,
                format!("{METADATA_KEY} entry {key:?}: {detail}"),
            )
        };
        let twice = || bad("appears twice".to_string());
        if key == FORMAT_KEY {
            let version: u32 = value
                .parse()
                .map_err(|_| bad(format!("{value:?} is not a version number")))?;
            if version == 0 || version > FORMAT_VERSION {
                return Err(bad(format!(
                    "format version {version}; this reader knows 1 to {FORMAT_VERSION}"
                )));
            }
            if format_version.replace(version).is_some() {
                return Err(twice());
            }
        } else if let Some(layer) = key.strip_prefix(CHECKSUM_KEY_PREFIX) {
            let &index = names
                .get(layer)
                .ok_or_else(|| bad("names no layer of the file".to_string()))?;
            let valid = value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit());
            let checksum = u64::from_str_radix(value, 16).ok().filter(|_| valid);
            let checksum =
                checksum.ok_or_else(|| bad(format!("{value:?} is not 16 hexadecimal digits")))?;
            if checksums[index].replace(checksum).is_some() {
                return Err(twice());
            }
        } else if let Some(layer) = key.strip_prefix(ATTRS_KEY_PREFIX) {
            let &index = names
                .get(layer)
                .ok_or_else(|| bad("names no layer of the file".to_string()))?;
            let map: HashMap<String, String> = serde_json::from_str(value)
                .map_err(|e| bad(format!("not a JSON object of strings: {e}")))?;
            let mut pairs: Vec<(String, String)> = map.into_iter().collect();
            pairs.sort();
            if attributes[index].replace(pairs).is_some() {
                return Err(twice());
            }
        } else {
            other_metadata.push((key.to_string(), value.to_string()));
        }
    }
    other_metadata.sort();
    if let Some(pair) = other_metadata.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(header_error(
            HEADER_LEN_FIELD_BYTES,
            format!("{METADATA_KEY} entry {:?}: appears twice", pair[0].0),
        ));
    }
    let layers = order
        .iter()
        .filter(|&&i| !all[i].0.starts_with(PAD_LAYER_PREFIX))
        .map(|&i| {
            let (name, dtype, shape, begin, end) = all[i];
            LayerEntry {
                name: name.to_string(),
                dtype,
                shape: shape.clone(),
                begin,
                end,
                checksum: checksums[i],
                attributes: attributes[i].take().unwrap_or_default(),
            }
        })
        .collect();
    Ok(Header {
        header_bytes,
        data_start,
        data_bytes,
        layers,
        format_version,
        other_metadata,
    })
}

/// One tensor as the builder writes it into the header.
pub(crate) struct WrittenTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [u64],
    pub begin: u64,
    pub end: u64,
    pub checksum: Option<u64>,
    pub attributes: &'a [(String, String)],
}

/// The header bytes (length field and JSON, padded with spaces) for
/// `tensors`, such that the data starts at a multiple of
/// [`DATA_ALIGN_BYTES`] and at least at `data_start_min`.
pub(crate) fn encode(
    tensors: &[WrittenTensor<'_>],
    extra_metadata: &[(String, String)],
    data_start_min: u64,
) -> Vec<u8> {
    let mut metadata = serde_json::Map::new();
    for (key, value) in extra_metadata {
        metadata.insert(key.clone(), value.clone().into());
    }
    metadata.insert(FORMAT_KEY.into(), FORMAT_VERSION.to_string().into());
    let mut object = serde_json::Map::new();
    for tensor in tensors {
        if let Some(checksum) = tensor.checksum {
            metadata.insert(
                format!("{CHECKSUM_KEY_PREFIX}{}", tensor.name),
                format!("{checksum:016x}").into(),
            );
        }
        if !tensor.attributes.is_empty() {
            let attrs: serde_json::Map<String, serde_json::Value> = tensor
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            metadata.insert(
                format!("{ATTRS_KEY_PREFIX}{}", tensor.name),
                serde_json::Value::Object(attrs).to_string().into(),
            );
        }
        object.insert(
            tensor.name.to_string(),
            serde_json::json!({
                "dtype": tensor.dtype.name(),
                "shape": tensor.shape,
                "data_offsets": [tensor.begin, tensor.end],
            }),
        );
    }
    let mut json = String::from("{\"");
    json.push_str(METADATA_KEY);
    json.push_str("\":");
    json.push_str(&serde_json::Value::Object(metadata).to_string());
    for (name, value) in &object {
        json.push(',');
        json.push_str(&serde_json::Value::String(name.clone()).to_string());
        json.push(':');
        json.push_str(&value.to_string());
    }
    json.push('}');
    let unpadded = HEADER_LEN_FIELD_BYTES + json.len() as u64;
    let data_start = unpadded
        .max(data_start_min)
        .next_multiple_of(DATA_ALIGN_BYTES);
    let header_bytes = data_start - HEADER_LEN_FIELD_BYTES;
    let mut out = Vec::with_capacity(data_start as usize);
    out.extend_from_slice(&header_bytes.to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out.resize(data_start as usize, b' ');
    out
}
