//! Spill records: one tensor (or byte blob) as a self-describing, verified
//! unit of bytes.
//!
//! A record is a fixed [`HEADER_LEN_BYTES`]-byte little-endian header
//! followed by the stored payload (raw, lz4 or zstd). The header carries a
//! magic, a format version, the codec, the checksum algorithm and value, the
//! raw and stored lengths, the dtype and the shape, and ends with an xxh3-64
//! of the header bytes before it, so a corrupt header is caught before any
//! length in it is trusted. The payload checksum is computed over the
//! *stored* bytes, so corruption is caught before decompression. Every byte
//! is documented in `docs/disk-format.md` ("Spill records").
//!
//! This module is pure encode/decode with no I/O; the extent store writes the
//! bytes to a device and names the extent in [`RecordLocation`] so errors say
//! where the bad record lives.
//!
//! ```
//! use strata_disk::record::{
//!     decode, encode, ChecksumKind, Codec, CodecPolicy, Dtype, RecordLocation, RecordMeta,
//! };
//!
//! let values: Vec<u8> = [1.5f32; 256].iter().flat_map(|v| v.to_le_bytes()).collect();
//! let meta = RecordMeta { dtype: Dtype::F32, shape: vec![16, 16] };
//! let bytes = encode(&values, &meta, CodecPolicy::Auto, ChecksumKind::Xxh3).unwrap();
//! // Repetitive data compresses, so Auto picked lz4.
//! assert!(bytes.len() < values.len());
//!
//! let location = RecordLocation { start_block: 1234, len_blocks: 8 };
//! let record = decode(&bytes, location).unwrap();
//! assert_eq!(record.payload, values);
//! assert_eq!(record.meta, meta);
//! assert_eq!(record.codec, Codec::Lz4);
//!
//! // One flipped bit anywhere is an error, never wrong bytes.
//! let mut corrupt = bytes.clone();
//! corrupt[bytes.len() - 1] ^= 0x10;
//! assert!(decode(&corrupt, location).is_err());
//! ```

use std::fmt;

// ---------------------------------------------------------------------------
// Layout constants
// ---------------------------------------------------------------------------

/// The first 8 bytes of every spill record.
pub const MAGIC: [u8; 8] = *b"STRSPIL1";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Maximum number of dimensions of a record's shape.
pub const SHAPE_RANK_MAX: usize = 8;
/// Size of the fixed header in bytes; the stored payload starts here.
pub const HEADER_LEN_BYTES: usize = 128;

/// Byte offset of the magic (8 bytes).
pub const OFFSET_MAGIC: usize = 0;
/// Byte offset of the format version (u16).
pub const OFFSET_VERSION: usize = 8;
/// Byte offset of the header flags (u16, must be 0 in version 1).
pub const OFFSET_FLAGS: usize = 10;
/// Byte offset of the codec id (u8, see [`Codec::id`]).
pub const OFFSET_CODEC_ID: usize = 12;
/// Byte offset of the checksum algorithm id (u8, see [`ChecksumKind::id`]).
pub const OFFSET_CHECKSUM_ID: usize = 13;
/// Byte offset of the dtype id (u8, see [`Dtype::id`]).
pub const OFFSET_DTYPE_ID: usize = 14;
/// Byte offset of the rank (u8, at most [`SHAPE_RANK_MAX`]).
pub const OFFSET_RANK: usize = 15;
/// Byte offset of the codec level (i32; the zstd level, 0 for other codecs).
pub const OFFSET_CODEC_LEVEL: usize = 16;
/// Byte offset of 4 reserved bytes (must be 0).
pub const OFFSET_RESERVED_A: usize = 20;
/// Byte offset of the raw (decompressed) payload length (u64).
pub const OFFSET_RAW_LEN: usize = 24;
/// Byte offset of the stored (on-disk) payload length (u64).
pub const OFFSET_STORED_LEN: usize = 32;
/// Byte offset of the payload checksum over the stored bytes (u64; crc32c is
/// zero-extended).
pub const OFFSET_PAYLOAD_CHECKSUM: usize = 40;
/// Byte offset of the shape: [`SHAPE_RANK_MAX`] u64 dimensions, unused ones 0.
pub const OFFSET_SHAPE: usize = 48;
/// Byte offset of 8 reserved bytes (must be 0).
pub const OFFSET_RESERVED_B: usize = 112;
/// Byte offset of the header checksum: xxh3-64 (seed 0) of bytes
/// `0..OFFSET_HEADER_CHECKSUM`.
pub const OFFSET_HEADER_CHECKSUM: usize = 120;

const _: () = assert!(OFFSET_MAGIC + MAGIC.len() == OFFSET_VERSION);
const _: () = assert!(OFFSET_VERSION + 2 == OFFSET_FLAGS);
const _: () = assert!(OFFSET_FLAGS + 2 == OFFSET_CODEC_ID);
const _: () = assert!(OFFSET_CODEC_ID + 1 == OFFSET_CHECKSUM_ID);
const _: () = assert!(OFFSET_CHECKSUM_ID + 1 == OFFSET_DTYPE_ID);
const _: () = assert!(OFFSET_DTYPE_ID + 1 == OFFSET_RANK);
const _: () = assert!(OFFSET_RANK + 1 == OFFSET_CODEC_LEVEL);
const _: () = assert!(OFFSET_CODEC_LEVEL + 4 == OFFSET_RESERVED_A);
const _: () = assert!(OFFSET_RESERVED_A + 4 == OFFSET_RAW_LEN);
const _: () = assert!(OFFSET_RAW_LEN + 8 == OFFSET_STORED_LEN);
const _: () = assert!(OFFSET_STORED_LEN + 8 == OFFSET_PAYLOAD_CHECKSUM);
const _: () = assert!(OFFSET_PAYLOAD_CHECKSUM + 8 == OFFSET_SHAPE);
const _: () = assert!(OFFSET_SHAPE + 8 * SHAPE_RANK_MAX == OFFSET_RESERVED_B);
const _: () = assert!(OFFSET_RESERVED_B + 8 == OFFSET_HEADER_CHECKSUM);
const _: () = assert!(OFFSET_HEADER_CHECKSUM + 8 == HEADER_LEN_BYTES);
// The rank is stored in a u8.
const _: () = assert!(SHAPE_RANK_MAX <= u8::MAX as usize);

/// Largest raw payload a record may hold. A record is one tensor; 1 TiB is
/// far beyond any tensor the memory tier holds, and the bound keeps a decoder
/// from being asked to allocate an absurd buffer from a header whose checksum
/// happened to pass.
pub const RAW_LEN_MAX_BYTES: u64 = 1 << 40;
// Lengths must fit in usize for the buffers that hold them (64-bit targets).
const _: () = assert!(RAW_LEN_MAX_BYTES <= usize::MAX as u64);

/// The zstd level [`CodecPolicy::Small`] uses: zstd's own default, a good
/// ratio at a few hundred MB/s.
pub const ZSTD_LEVEL_SMALL: i32 = 3;
const _: () = assert!(ZSTD_LEVEL_SMALL >= 1 && ZSTD_LEVEL_SMALL <= 22);

/// [`CodecPolicy::Auto`] samples this many evenly spaced pieces of a payload.
pub const AUTO_SAMPLE_PIECES: usize = 16;
/// Size of one sample piece in bytes.
pub const AUTO_SAMPLE_PIECE_BYTES: usize = 4096;
/// Total sample size; payloads no larger are compressed whole instead of
/// sampled (the sample would be the whole payload anyway).
pub const AUTO_SAMPLE_BYTES: usize = AUTO_SAMPLE_PIECES * AUTO_SAMPLE_PIECE_BYTES;
const _: () = assert!(AUTO_SAMPLE_BYTES == 64 * 1024);
const _: () = assert!(AUTO_SAMPLE_PIECES >= 2);
/// [`CodecPolicy::Auto`] keeps lz4 output only if it is at least this many
/// percent smaller than the raw bytes (on the sample, then on the whole);
/// otherwise the payload is stored raw, so incompressible data costs only
/// the sample's compression.
pub const AUTO_MIN_SAVING_PERCENT: u64 = 10;
const _: () = assert!(AUTO_MIN_SAVING_PERCENT > 0 && AUTO_MIN_SAVING_PERCENT < 100);

// ---------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------

/// How the payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Raw bytes; stored length equals raw length.
    None,
    /// lz4 block format (`lz4_flex::block`), no size prefix (the header has it).
    Lz4,
    /// One zstd frame at the given compression level.
    Zstd {
        /// The zstd compression level used by the writer (informational on read).
        level: i32,
    },
}

impl Codec {
    /// Id stored in the header: 0 none, 1 lz4, 2 zstd.
    pub const fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd { .. } => 2,
        }
    }

    /// The level stored in the header: the zstd level, 0 otherwise.
    pub const fn level(self) -> i32 {
        match self {
            Codec::Zstd { level } => level,
            Codec::None | Codec::Lz4 => 0,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::None => write!(f, "none"),
            Codec::Lz4 => write!(f, "lz4"),
            Codec::Zstd { level } => write!(f, "zstd level {level}"),
        }
    }
}

/// Checksum algorithm over the stored payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChecksumKind {
    /// xxh3-64, seed 0 (the default: fastest, 64 bits).
    #[default]
    Xxh3,
    /// crc32c (Castagnoli), stored zero-extended to 64 bits; guaranteed to
    /// catch every burst error of up to 32 bits.
    Crc32c,
}

impl ChecksumKind {
    /// Id stored in the header: 0 xxh3, 1 crc32c.
    pub const fn id(self) -> u8 {
        match self {
            ChecksumKind::Xxh3 => 0,
            ChecksumKind::Crc32c => 1,
        }
    }

    /// The kind with header id `id`, if known.
    pub const fn from_id(id: u8) -> Option<ChecksumKind> {
        match id {
            0 => Some(ChecksumKind::Xxh3),
            1 => Some(ChecksumKind::Crc32c),
            _ => None,
        }
    }

    /// The checksum of `bytes` as stored in the header.
    pub fn compute(self, bytes: &[u8]) -> u64 {
        match self {
            ChecksumKind::Xxh3 => xxhash_rust::xxh3::xxh3_64(bytes),
            ChecksumKind::Crc32c => u64::from(crc32c::crc32c(bytes)),
        }
    }
}

impl fmt::Display for ChecksumKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChecksumKind::Xxh3 => write!(f, "xxh3"),
            ChecksumKind::Crc32c => write!(f, "crc32c"),
        }
    }
}

/// Which codec [`encode`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CodecPolicy {
    /// Always store raw.
    None,
    /// Always lz4 (fast; the caller knows the data compresses).
    Fast,
    /// Always zstd at [`ZSTD_LEVEL_SMALL`] (smaller, slower).
    Small,
    /// lz4 if a sample and then the whole payload shrink by at least
    /// [`AUTO_MIN_SAVING_PERCENT`], raw otherwise.
    #[default]
    Auto,
}

/// Element type of a record's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// Untyped bytes; the shape is informational and not checked against the
    /// length.
    Bytes,
    /// Unsigned 8-bit integers.
    U8,
    /// Signed 32-bit integers.
    I32,
    /// Signed 64-bit integers.
    I64,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
}

impl Dtype {
    /// Every dtype, in id order.
    pub const ALL: [Dtype; 8] = [
        Dtype::Bytes,
        Dtype::U8,
        Dtype::I32,
        Dtype::I64,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F32,
        Dtype::F64,
    ];

    /// Id stored in the header (its index in [`Dtype::ALL`]).
    pub const fn id(self) -> u8 {
        match self {
            Dtype::Bytes => 0,
            Dtype::U8 => 1,
            Dtype::I32 => 2,
            Dtype::I64 => 3,
            Dtype::F16 => 4,
            Dtype::BF16 => 5,
            Dtype::F32 => 6,
            Dtype::F64 => 7,
        }
    }

    /// The dtype with header id `id`, if known.
    pub const fn from_id(id: u8) -> Option<Dtype> {
        if (id as usize) < Dtype::ALL.len() {
            Some(Dtype::ALL[id as usize])
        } else {
            None
        }
    }

    /// Size of one element in bytes (1 for [`Dtype::Bytes`]).
    pub const fn size_bytes(self) -> u64 {
        match self {
            Dtype::Bytes | Dtype::U8 => 1,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// What a record says about its payload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordMeta {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first; at most [`SHAPE_RANK_MAX`]. Unless the
    /// dtype is [`Dtype::Bytes`], their product times the element size must
    /// equal the raw payload length (rank 0 is a scalar: one element).
    pub shape: Vec<u64>,
}

/// Where a record lives, named in errors. Plain data supplied by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecordLocation {
    /// First block of the extent holding the record.
    pub start_block: u64,
    /// Length of the extent in blocks.
    pub len_blocks: u64,
}

impl fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "extent {}+{} blocks", self.start_block, self.len_blocks)
    }
}

/// A parsed and validated header (everything except the payload checksum,
/// which needs the payload).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    /// Dtype and shape.
    pub meta: RecordMeta,
    /// How the payload is stored.
    pub codec: Codec,
    /// Checksum algorithm of the payload.
    pub checksum_kind: ChecksumKind,
    /// Decompressed payload length.
    pub raw_len_bytes: u64,
    /// Stored payload length (follows the header).
    pub stored_len_bytes: u64,
    /// Checksum of the stored payload bytes.
    pub payload_checksum: u64,
}

impl RecordHeader {
    /// Header plus stored payload: the bytes a reader needs for the record.
    pub fn record_len_bytes(&self) -> u64 {
        HEADER_LEN_BYTES as u64 + self.stored_len_bytes
    }

    /// The header's on-disk bytes, header checksum included. The meta must be
    /// valid (as it is in any header from [`encode_into`] or
    /// [`parse_header`]).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN_BYTES] {
        assert!(
            self.meta.shape.len() <= SHAPE_RANK_MAX,
            "rank {} exceeds SHAPE_RANK_MAX {SHAPE_RANK_MAX}",
            self.meta.shape.len()
        );
        let mut header = [0u8; HEADER_LEN_BYTES];
        header[OFFSET_MAGIC..OFFSET_MAGIC + MAGIC.len()].copy_from_slice(&MAGIC);
        put_u16(&mut header, OFFSET_VERSION, FORMAT_VERSION);
        put_u16(&mut header, OFFSET_FLAGS, 0);
        header[OFFSET_CODEC_ID] = self.codec.id();
        header[OFFSET_CHECKSUM_ID] = self.checksum_kind.id();
        header[OFFSET_DTYPE_ID] = self.meta.dtype.id();
        header[OFFSET_RANK] = self.meta.shape.len() as u8;
        header[OFFSET_CODEC_LEVEL..OFFSET_CODEC_LEVEL + 4]
            .copy_from_slice(&self.codec.level().to_le_bytes());
        put_u64(&mut header, OFFSET_RAW_LEN, self.raw_len_bytes);
        put_u64(&mut header, OFFSET_STORED_LEN, self.stored_len_bytes);
        put_u64(&mut header, OFFSET_PAYLOAD_CHECKSUM, self.payload_checksum);
        for (index, dim) in self.meta.shape.iter().enumerate() {
            put_u64(&mut header, OFFSET_SHAPE + 8 * index, *dim);
        }
        let header_checksum = xxhash_rust::xxh3::xxh3_64(&header[..OFFSET_HEADER_CHECKSUM]);
        put_u64(&mut header, OFFSET_HEADER_CHECKSUM, header_checksum);
        header
    }
}

/// A verified, decompressed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Dtype and shape.
    pub meta: RecordMeta,
    /// How the payload was stored.
    pub codec: Codec,
    /// Checksum algorithm the payload was verified with.
    pub checksum_kind: ChecksumKind,
    /// The raw payload.
    pub payload: Vec<u8>,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a record could not be encoded or decoded. A refused [`encode_into`]
/// leaves the output as it was; a refused decode returns no bytes.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The first 8 bytes are not [`MAGIC`].
    BadMagic {
        /// Where the record was read from.
        location: RecordLocation,
        /// The bytes found.
        found: [u8; 8],
    },
    /// A format version this build cannot read.
    UnsupportedVersion {
        /// Where the record was read from.
        location: RecordLocation,
        /// Version in the header.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The header's bytes do not match its checksum.
    HeaderChecksum {
        /// Where the record was read from.
        location: RecordLocation,
        /// Checksum stored in the header.
        expected: u64,
        /// xxh3-64 computed over the header bytes.
        actual: u64,
    },
    /// The stored payload does not match its checksum.
    PayloadChecksum {
        /// Where the record was read from.
        location: RecordLocation,
        /// Algorithm named in the header.
        kind: ChecksumKind,
        /// Checksum stored in the header.
        expected: u64,
        /// Checksum computed over the stored bytes.
        actual: u64,
    },
    /// Fewer bytes than the header (or the header's stored length) needs.
    Truncated {
        /// Where the record was read from.
        location: RecordLocation,
        /// Bytes the record needs.
        needed_bytes: u64,
        /// Bytes given.
        available_bytes: u64,
    },
    /// Codec id not known to this build.
    UnknownCodec {
        /// The id found.
        id: u8,
    },
    /// Checksum algorithm id not known to this build.
    UnknownChecksum {
        /// The id found.
        id: u8,
    },
    /// Dtype id not known to this build.
    UnknownDtype {
        /// The id found.
        id: u8,
    },
    /// More dimensions than [`SHAPE_RANK_MAX`].
    RankTooLarge {
        /// Rank asked for or found.
        rank: u64,
        /// [`SHAPE_RANK_MAX`].
        max: u64,
    },
    /// Shape times element size does not equal the raw length (or overflows).
    ShapeMismatch {
        /// The raw payload length.
        raw_bytes: u64,
        /// The shape.
        shape: Vec<u64>,
        /// The dtype.
        dtype: Dtype,
    },
    /// A header field holds a value version 1 never writes (non-zero flags or
    /// reserved bytes, unused shape slots, a level for a codec without one,
    /// or a raw record whose stored and raw lengths differ).
    InvalidHeader {
        /// Where the record was read from.
        location: RecordLocation,
        /// The field's name as in `docs/disk-format.md`.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// The codec failed to compress (should not happen with the output
    /// bounds used; reported rather than hidden).
    Compress {
        /// The codec.
        codec: Codec,
        /// The codec's message.
        detail: String,
    },
    /// The checksum matched but the codec rejected the stored bytes (the
    /// writer was broken, or a collision).
    Decompress {
        /// Where the record was read from.
        location: RecordLocation,
        /// The codec.
        codec: Codec,
        /// The codec's message.
        detail: String,
    },
    /// Decompression produced a different length than the header's raw length.
    LengthMismatch {
        /// Raw length in the header.
        expected_raw: u64,
        /// Bytes decompression produced.
        actual: u64,
    },
    /// The raw payload exceeds [`RAW_LEN_MAX_BYTES`].
    TooLarge {
        /// The raw length asked for or found.
        raw_bytes: u64,
        /// [`RAW_LEN_MAX_BYTES`].
        max_bytes: u64,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::BadMagic { location, found } => write!(
                f,
                "not a spill record at {location}: magic {found:02x?}, expected {MAGIC:02x?}"
            ),
            RecordError::UnsupportedVersion {
                location,
                found,
                supported,
            } => write!(
                f,
                "spill record at {location} has format version {found}, this build reads {supported}"
            ),
            RecordError::HeaderChecksum {
                location,
                expected,
                actual,
            } => write!(
                f,
                "header checksum mismatch in spill record at {location}: xxh3 expected \
                 {expected:#018x}, found {actual:#018x}"
            ),
            RecordError::PayloadChecksum {
                location,
                kind,
                expected,
                actual,
            } => write!(
                f,
                "checksum mismatch in spill record at {location}: {kind} expected \
                 {expected:#018x}, found {actual:#018x}"
            ),
            RecordError::Truncated {
                location,
                needed_bytes,
                available_bytes,
            } => write!(
                f,
                "spill record at {location} truncated: needs {needed_bytes} bytes, \
                 {available_bytes} available"
            ),
            RecordError::UnknownCodec { id } => write!(f, "unknown spill record codec id {id}"),
            RecordError::UnknownChecksum { id } => {
                write!(f, "unknown spill record checksum algorithm id {id}")
            }
            RecordError::UnknownDtype { id } => write!(f, "unknown spill record dtype id {id}"),
            RecordError::RankTooLarge { rank, max } => {
                write!(f, "shape rank {rank} exceeds the maximum of {max}")
            }
            RecordError::ShapeMismatch {
                raw_bytes,
                shape,
                dtype,
            } => write!(
                f,
                "shape {shape:?} of {dtype:?} ({} bytes per element) does not describe \
                 {raw_bytes} raw bytes",
                dtype.size_bytes()
            ),
            RecordError::InvalidHeader {
                location,
                field,
                value,
            } => write!(
                f,
                "spill record at {location}: header field {field} holds invalid value {value:#x}"
            ),
            RecordError::Compress { codec, detail } => {
                write!(f, "{codec} compression failed: {detail}")
            }
            RecordError::Decompress {
                location,
                codec,
                detail,
            } => write!(
                f,
                "{codec} decompression of spill record at {location} failed: {detail}"
            ),
            RecordError::LengthMismatch {
                expected_raw,
                actual,
            } => write!(
                f,
                "spill record decompressed to {actual} bytes, header says {expected_raw}"
            ),
            RecordError::TooLarge {
                raw_bytes,
                max_bytes,
            } => write!(
                f,
                "spill record payload of {raw_bytes} bytes exceeds the maximum of {max_bytes}"
            ),
        }
    }
}

impl std::error::Error for RecordError {}

// ---------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------

/// Encodes `payload` as a record: header plus stored payload.
pub fn encode(
    payload: &[u8],
    meta: &RecordMeta,
    policy: CodecPolicy,
    checksum_kind: ChecksumKind,
) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    encode_into(payload, meta, policy, checksum_kind, &mut out)?;
    Ok(out)
}

/// Appends the record for `payload` to `out` and returns its header. The
/// payload is compressed straight into `out` after the header (no staging
/// copy); reuse `out` across calls to avoid reallocating. On error `out` is
/// unchanged.
pub fn encode_into(
    payload: &[u8],
    meta: &RecordMeta,
    policy: CodecPolicy,
    checksum_kind: ChecksumKind,
    out: &mut Vec<u8>,
) -> Result<RecordHeader, RecordError> {
    let raw_len_bytes = payload.len() as u64;
    if raw_len_bytes > RAW_LEN_MAX_BYTES {
        return Err(RecordError::TooLarge {
            raw_bytes: raw_len_bytes,
            max_bytes: RAW_LEN_MAX_BYTES,
        });
    }
    check_meta(meta, raw_len_bytes)?;

    let record_start = out.len();
    let payload_start = record_start + HEADER_LEN_BYTES;
    // Placeholder header, overwritten once the checksum is known.
    out.resize(payload_start, 0);
    let codec = match store_payload(payload, policy, out, payload_start) {
        Ok(codec) => codec,
        Err(error) => {
            out.truncate(record_start);
            return Err(error);
        }
    };
    let stored = &out[payload_start..];
    let header = RecordHeader {
        meta: meta.clone(),
        codec,
        checksum_kind,
        raw_len_bytes,
        stored_len_bytes: stored.len() as u64,
        payload_checksum: checksum_kind.compute(stored),
    };
    out[record_start..payload_start].copy_from_slice(&header.to_bytes());
    Ok(header)
}

/// Writes the stored form of `payload` to `out[payload_start..]` (`out` is
/// exactly `payload_start` long on entry) and returns the codec used.
fn store_payload(
    payload: &[u8],
    policy: CodecPolicy,
    out: &mut Vec<u8>,
    payload_start: usize,
) -> Result<Codec, RecordError> {
    match policy {
        CodecPolicy::None => {
            out.extend_from_slice(payload);
            Ok(Codec::None)
        }
        CodecPolicy::Fast => {
            append_lz4(payload, out, payload_start)?;
            Ok(Codec::Lz4)
        }
        CodecPolicy::Small => {
            append_zstd(payload, ZSTD_LEVEL_SMALL, out, payload_start)?;
            Ok(Codec::Zstd {
                level: ZSTD_LEVEL_SMALL,
            })
        }
        CodecPolicy::Auto => {
            // Small payloads are their own sample: compress once, decide once.
            if payload.len() > AUTO_SAMPLE_BYTES && !sample_shrinks(payload)? {
                out.extend_from_slice(payload);
                return Ok(Codec::None);
            }
            append_lz4(payload, out, payload_start)?;
            let stored_len = (out.len() - payload_start) as u64;
            if saves_enough(payload.len() as u64, stored_len) {
                Ok(Codec::Lz4)
            } else {
                out.truncate(payload_start);
                out.extend_from_slice(payload);
                Ok(Codec::None)
            }
        }
    }
}

/// True if `stored_len` is at least [`AUTO_MIN_SAVING_PERCENT`] below `raw_len`.
fn saves_enough(raw_len: u64, stored_len: u64) -> bool {
    // raw_len <= 2^40, so the products cannot overflow.
    stored_len * 100 <= raw_len * (100 - AUTO_MIN_SAVING_PERCENT) && stored_len < raw_len
}

/// Compresses [`AUTO_SAMPLE_PIECES`] evenly spaced pieces of `payload`
/// (longer than [`AUTO_SAMPLE_BYTES`]) with lz4 and says whether they shrink
/// enough.
fn sample_shrinks(payload: &[u8]) -> Result<bool, RecordError> {
    debug_assert!(payload.len() > AUTO_SAMPLE_BYTES, "len {}", payload.len());
    let last_start = payload.len() - AUTO_SAMPLE_PIECE_BYTES;
    let mut sample = Vec::with_capacity(AUTO_SAMPLE_BYTES);
    for piece in 0..AUTO_SAMPLE_PIECES {
        let start = last_start / (AUTO_SAMPLE_PIECES - 1) * piece;
        sample.extend_from_slice(&payload[start..start + AUTO_SAMPLE_PIECE_BYTES]);
    }
    let mut compressed = Vec::new();
    append_lz4(&sample, &mut compressed, 0)?;
    Ok(saves_enough(sample.len() as u64, compressed.len() as u64))
}

fn append_lz4(payload: &[u8], out: &mut Vec<u8>, payload_start: usize) -> Result<(), RecordError> {
    out.resize(
        payload_start + lz4_flex::block::get_maximum_output_size(payload.len()),
        0,
    );
    match lz4_flex::block::compress_into(payload, &mut out[payload_start..]) {
        Ok(stored_len) => {
            out.truncate(payload_start + stored_len);
            Ok(())
        }
        Err(error) => Err(RecordError::Compress {
            codec: Codec::Lz4,
            detail: error.to_string(),
        }),
    }
}

fn append_zstd(
    payload: &[u8],
    level: i32,
    out: &mut Vec<u8>,
    payload_start: usize,
) -> Result<(), RecordError> {
    out.resize(
        payload_start + zstd::zstd_safe::compress_bound(payload.len()),
        0,
    );
    match zstd::bulk::compress_to_buffer(payload, &mut out[payload_start..], level) {
        Ok(stored_len) => {
            out.truncate(payload_start + stored_len);
            Ok(())
        }
        Err(error) => Err(RecordError::Compress {
            codec: Codec::Zstd { level },
            detail: error.to_string(),
        }),
    }
}

/// Checks rank and, unless the dtype is [`Dtype::Bytes`], that the shape
/// describes exactly `raw_len_bytes`.
fn check_meta(meta: &RecordMeta, raw_len_bytes: u64) -> Result<(), RecordError> {
    if meta.shape.len() > SHAPE_RANK_MAX {
        return Err(RecordError::RankTooLarge {
            rank: meta.shape.len() as u64,
            max: SHAPE_RANK_MAX as u64,
        });
    }
    if meta.dtype == Dtype::Bytes {
        return Ok(());
    }
    let described_bytes = meta
        .shape
        .iter()
        .try_fold(meta.dtype.size_bytes(), |product, dim| {
            product.checked_mul(*dim)
        });
    if described_bytes == Some(raw_len_bytes) {
        Ok(())
    } else {
        Err(RecordError::ShapeMismatch {
            raw_bytes: raw_len_bytes,
            shape: meta.shape.clone(),
            dtype: meta.dtype,
        })
    }
}

// ---------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------

/// Verifies and decodes the record at the start of `bytes` (bytes after the
/// record, such as block padding, are ignored). Checks, in order: length of
/// the header, magic, version, header checksum, every header field, that
/// the stored payload fits in `bytes`, the payload checksum over the stored
/// bytes, and finally the decompressed length.
pub fn decode(bytes: &[u8], location: RecordLocation) -> Result<DecodedRecord, RecordError> {
    let mut payload = Vec::new();
    let header = decode_into(bytes, location, &mut payload)?;
    Ok(DecodedRecord {
        meta: header.meta,
        codec: header.codec,
        checksum_kind: header.checksum_kind,
        payload,
    })
}

/// Like [`decode`], but appends the verified raw payload to `out` and returns
/// the header. On error `out` is unchanged.
pub fn decode_into(
    bytes: &[u8],
    location: RecordLocation,
    out: &mut Vec<u8>,
) -> Result<RecordHeader, RecordError> {
    let verified = verify(bytes, location)?;
    decompress_into(
        &verified.header,
        &bytes[verified.stored_range.clone()],
        location,
        out,
    )?;
    Ok(verified.header)
}

/// A record whose header and payload checksum passed: the header and where
/// the stored payload lies in the bytes given to [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRecord {
    /// The parsed header.
    pub header: RecordHeader,
    /// Byte range of the stored payload: `HEADER_LEN_BYTES..HEADER_LEN_BYTES
    /// + stored_len`.
    pub stored_range: std::ops::Range<usize>,
}

/// Checks the record at the start of `bytes` without copying it: the header
/// (as [`parse_header`]), that the stored payload fits, and the payload
/// checksum over the stored bytes. These are the checks [`decode`] makes
/// before decompressing, in the same order with the same errors; a raw
/// ([`Codec::None`]) record's payload is then `&bytes[stored_range]`, any
/// other goes through [`decompress_into`].
pub fn verify(bytes: &[u8], location: RecordLocation) -> Result<VerifiedRecord, RecordError> {
    let header = parse_header(bytes, location)?;
    let needed_bytes = header.record_len_bytes();
    if (bytes.len() as u64) < needed_bytes {
        return Err(RecordError::Truncated {
            location,
            needed_bytes,
            available_bytes: bytes.len() as u64,
        });
    }
    // Fits in usize: needed_bytes <= bytes.len().
    let stored_range = HEADER_LEN_BYTES..needed_bytes as usize;
    let actual = header.checksum_kind.compute(&bytes[stored_range.clone()]);
    if actual != header.payload_checksum {
        return Err(RecordError::PayloadChecksum {
            location,
            kind: header.checksum_kind,
            expected: header.payload_checksum,
            actual,
        });
    }
    Ok(VerifiedRecord {
        header,
        stored_range,
    })
}

/// Appends the raw payload of a verified record to `out`: the stored bytes
/// as they are for [`Codec::None`], decompressed otherwise, checked to be
/// exactly `header.raw_len_bytes` long. `stored` are the bytes
/// [`verify`] vouched for. On error `out` is unchanged.
pub fn decompress_into(
    header: &RecordHeader,
    stored: &[u8],
    location: RecordLocation,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let out_start = out.len();
    // raw_len_bytes <= RAW_LEN_MAX_BYTES, which fits in usize.
    let raw_len = header.raw_len_bytes as usize;
    let decompressed = match header.codec {
        Codec::None => {
            out.extend_from_slice(stored);
            Ok(stored.len())
        }
        Codec::Lz4 => {
            out.resize(out_start + raw_len, 0);
            lz4_flex::block::decompress_into(stored, &mut out[out_start..])
                .map_err(|error| error.to_string())
        }
        Codec::Zstd { .. } => {
            out.resize(out_start + raw_len, 0);
            zstd::bulk::decompress_to_buffer(stored, &mut out[out_start..])
                .map_err(|error| error.to_string())
        }
    };
    match decompressed {
        Ok(actual_len) if actual_len == raw_len => Ok(()),
        Ok(actual_len) => {
            out.truncate(out_start);
            Err(RecordError::LengthMismatch {
                expected_raw: header.raw_len_bytes,
                actual: actual_len as u64,
            })
        }
        Err(detail) => {
            out.truncate(out_start);
            Err(RecordError::Decompress {
                location,
                codec: header.codec,
                detail,
            })
        }
    }
}

/// Parses and validates the header at the start of `bytes`: magic, version,
/// header checksum, then every field. Does not look at the payload; use
/// [`RecordHeader::record_len_bytes`] to learn how many bytes to read.
pub fn parse_header(bytes: &[u8], location: RecordLocation) -> Result<RecordHeader, RecordError> {
    if bytes.len() < HEADER_LEN_BYTES {
        return Err(RecordError::Truncated {
            location,
            needed_bytes: HEADER_LEN_BYTES as u64,
            available_bytes: bytes.len() as u64,
        });
    }
    let header = &bytes[..HEADER_LEN_BYTES];
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[OFFSET_MAGIC..OFFSET_MAGIC + MAGIC.len()]);
    if magic != MAGIC {
        return Err(RecordError::BadMagic {
            location,
            found: magic,
        });
    }
    // Before the checksum: another version may place the checksum elsewhere.
    let version = get_u16(header, OFFSET_VERSION);
    if version != FORMAT_VERSION {
        return Err(RecordError::UnsupportedVersion {
            location,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let expected = get_u64(header, OFFSET_HEADER_CHECKSUM);
    let actual = xxhash_rust::xxh3::xxh3_64(&header[..OFFSET_HEADER_CHECKSUM]);
    if expected != actual {
        return Err(RecordError::HeaderChecksum {
            location,
            expected,
            actual,
        });
    }

    let invalid = |field: &'static str, value: u64| RecordError::InvalidHeader {
        location,
        field,
        value,
    };
    let flags = get_u16(header, OFFSET_FLAGS);
    if flags != 0 {
        return Err(invalid("flags", u64::from(flags)));
    }
    let reserved_a = get_u32(header, OFFSET_RESERVED_A);
    if reserved_a != 0 {
        return Err(invalid("reserved_a", u64::from(reserved_a)));
    }
    let reserved_b = get_u64(header, OFFSET_RESERVED_B);
    if reserved_b != 0 {
        return Err(invalid("reserved_b", reserved_b));
    }

    let level = get_u32(header, OFFSET_CODEC_LEVEL) as i32;
    let codec = match header[OFFSET_CODEC_ID] {
        0 => Codec::None,
        1 => Codec::Lz4,
        2 => Codec::Zstd { level },
        id => return Err(RecordError::UnknownCodec { id }),
    };
    if codec.level() != level {
        return Err(invalid("codec_level", u64::from(level as u32)));
    }
    let checksum_id = header[OFFSET_CHECKSUM_ID];
    let checksum_kind = ChecksumKind::from_id(checksum_id)
        .ok_or(RecordError::UnknownChecksum { id: checksum_id })?;
    let dtype_id = header[OFFSET_DTYPE_ID];
    let dtype = Dtype::from_id(dtype_id).ok_or(RecordError::UnknownDtype { id: dtype_id })?;
    let rank = usize::from(header[OFFSET_RANK]);
    if rank > SHAPE_RANK_MAX {
        return Err(RecordError::RankTooLarge {
            rank: rank as u64,
            max: SHAPE_RANK_MAX as u64,
        });
    }
    let shape: Vec<u64> = (0..rank)
        .map(|index| get_u64(header, OFFSET_SHAPE + 8 * index))
        .collect();
    for index in rank..SHAPE_RANK_MAX {
        let dim = get_u64(header, OFFSET_SHAPE + 8 * index);
        if dim != 0 {
            return Err(invalid("shape (unused dimension)", dim));
        }
    }

    let raw_len_bytes = get_u64(header, OFFSET_RAW_LEN);
    if raw_len_bytes > RAW_LEN_MAX_BYTES {
        return Err(RecordError::TooLarge {
            raw_bytes: raw_len_bytes,
            max_bytes: RAW_LEN_MAX_BYTES,
        });
    }
    let stored_len_bytes = get_u64(header, OFFSET_STORED_LEN);
    // A compressed payload is never kept when larger than the bound of its
    // codec; the cap keeps `record_len_bytes` from overflowing.
    if stored_len_bytes > stored_len_max_bytes(raw_len_bytes) {
        return Err(invalid("stored_len", stored_len_bytes));
    }
    if codec == Codec::None && stored_len_bytes != raw_len_bytes {
        return Err(invalid("stored_len", stored_len_bytes));
    }
    let meta = RecordMeta { dtype, shape };
    check_meta(&meta, raw_len_bytes)?;

    Ok(RecordHeader {
        meta,
        codec,
        checksum_kind,
        raw_len_bytes,
        stored_len_bytes,
        payload_checksum: get_u64(header, OFFSET_PAYLOAD_CHECKSUM),
    })
}

/// Largest stored length any codec produces for `raw_len_bytes` (at most
/// [`RAW_LEN_MAX_BYTES`]): the larger of the lz4 and zstd output bounds.
fn stored_len_max_bytes(raw_len_bytes: u64) -> u64 {
    let raw_len = raw_len_bytes as usize;
    let lz4_bound = lz4_flex::block::get_maximum_output_size(raw_len);
    let zstd_bound = zstd::zstd_safe::compress_bound(raw_len);
    lz4_bound.max(zstd_bound) as u64
}

// ---------------------------------------------------------------------------
// Little-endian helpers (offsets are constants within the header)
// ---------------------------------------------------------------------------

fn put_u16(buf: &mut [u8], offset: usize, value: u16) {
    buf[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], offset: usize, value: u64) {
    buf[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u16(buf: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([buf[offset], buf[offset + 1]])
}

fn get_u32(buf: &[u8], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[offset..offset + 4]);
    u32::from_le_bytes(bytes)
}

fn get_u64(buf: &[u8], offset: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[offset..offset + 8]);
    u64::from_le_bytes(bytes)
}
