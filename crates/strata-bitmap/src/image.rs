//! The serialized bitmap image: a fixed header, the reserved ranges, the
//! words, and an xxh3-64 checksum of everything before it. Byte layout and
//! invariants: `docs/bitmap-format.md`.

use std::ops::Range;

use xxhash_rust::xxh3::Xxh3;

use crate::bitmap::{BlockBitmap, Chunk};
use crate::{ImageError, CHUNK_BLOCKS, CHUNK_WORDS};

/// The first 8 bytes of every image.
pub const IMAGE_MAGIC: [u8; 8] = *b"STRATABM";
/// The format version this build writes and reads.
pub const IMAGE_VERSION: u32 = 1;
/// Bytes before the reserved ranges.
pub const IMAGE_HEADER_BYTES: u64 = 56;
const RANGE_BYTES: u64 = 16;
const WORD_BYTES: u64 = 8;
const CHECKSUM_BYTES: u64 = 8;

/// The figures an image's header carries.
pub(crate) struct ImageHeader {
    pub capacity_blocks: u64,
    pub reserved_blocks: u64,
    pub free_blocks: u64,
}

/// Serialize: header, ranges, then the words of each chunk slice in order.
pub(crate) fn encode<'a>(
    header: ImageHeader,
    ranges: &[Range<u64>],
    chunk_slices: impl Iterator<Item = &'a [Chunk]> + Clone,
) -> Vec<u8> {
    let chunk_count: u64 = chunk_slices.clone().map(|s| s.len() as u64).sum();
    let word_count = chunk_count * CHUNK_WORDS as u64;
    let total = IMAGE_HEADER_BYTES
        + RANGE_BYTES * ranges.len() as u64
        + WORD_BYTES * word_count
        + CHECKSUM_BYTES;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&IMAGE_MAGIC);
    out.extend_from_slice(&IMAGE_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [
        header.capacity_blocks,
        header.reserved_blocks,
        header.free_blocks,
        ranges.len() as u64,
        word_count,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for r in ranges {
        out.extend_from_slice(&r.start.to_le_bytes());
        out.extend_from_slice(&r.end.to_le_bytes());
    }
    for slice in chunk_slices {
        for chunk in slice {
            for w in chunk.words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
    }
    let checksum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    debug_assert_eq!(out.len() as u64, total);
    out
}

fn read_u64(bytes: &[u8], offset: u64) -> u64 {
    let o = offset as usize;
    u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"))
}

fn invalid(offset: u64, reason: String) -> ImageError {
    ImageError::Invalid { offset, reason }
}

/// Parse and fully validate an image. Nothing is built unless every check
/// passes: length, magic, version, checksum, then content invariants.
pub(crate) fn decode(bytes: &[u8]) -> Result<BlockBitmap, ImageError> {
    let actual = bytes.len() as u64;
    if actual < IMAGE_HEADER_BYTES {
        return Err(ImageError::Truncated {
            field: "header",
            offset: 0,
            needed_bytes: IMAGE_HEADER_BYTES,
            actual_bytes: actual,
        });
    }
    let magic: [u8; 8] = bytes[0..8].try_into().expect("8 bytes");
    if magic != IMAGE_MAGIC {
        return Err(ImageError::BadMagic { found: magic });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != IMAGE_VERSION {
        return Err(ImageError::UnsupportedVersion {
            found: version,
            supported: IMAGE_VERSION,
        });
    }
    let flags = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let capacity_blocks = read_u64(bytes, 16);
    let reserved_blocks = read_u64(bytes, 24);
    let free_blocks = read_u64(bytes, 32);
    let range_count = read_u64(bytes, 40);
    let word_count = read_u64(bytes, 48);
    // Sizes come from an untrusted header: compute them without overflow
    // before comparing with the real length.
    let ranges_end = range_count
        .checked_mul(RANGE_BYTES)
        .and_then(|b| b.checked_add(IMAGE_HEADER_BYTES));
    let words_end = word_count
        .checked_mul(WORD_BYTES)
        .zip(ranges_end)
        .and_then(|(w, r)| w.checked_add(r));
    let total = words_end.and_then(|w| w.checked_add(CHECKSUM_BYTES));
    let Some(total) = total else {
        return Err(invalid(
            40,
            format!(
                "range count {range_count} and word count {word_count} overflow the image size"
            ),
        ));
    };
    if actual < total {
        let ranges_end = ranges_end.expect("checked above");
        let words_end = words_end.expect("checked above");
        let (field, offset, needed) = if actual < ranges_end {
            ("reserved ranges", IMAGE_HEADER_BYTES, ranges_end)
        } else if actual < words_end {
            ("bitmap words", ranges_end, words_end)
        } else {
            ("checksum", words_end, total)
        };
        return Err(ImageError::Truncated {
            field,
            offset,
            needed_bytes: needed,
            actual_bytes: actual,
        });
    }
    if actual > total {
        return Err(ImageError::TrailingBytes {
            expected_bytes: total,
            actual_bytes: actual,
        });
    }
    let body = total - CHECKSUM_BYTES;
    let stored = read_u64(bytes, body);
    let mut hasher = Xxh3::new();
    hasher.update(&bytes[..body as usize]);
    let computed = hasher.digest();
    if stored != computed {
        return Err(ImageError::ChecksumMismatch { stored, computed });
    }
    if flags != 0 {
        return Err(invalid(12, format!("unknown flags {flags:#x}")));
    }
    BlockBitmap::check_capacity(capacity_blocks).map_err(|e| invalid(16, e.to_string()))?;
    let chunk_count = capacity_blocks.div_ceil(CHUNK_BLOCKS);
    if word_count != chunk_count * CHUNK_WORDS as u64 {
        return Err(invalid(
            48,
            format!(
                "word count {word_count} does not match capacity {capacity_blocks} \
                 (expected {})",
                chunk_count * CHUNK_WORDS as u64
            ),
        ));
    }
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(range_count as usize);
    let mut range_sum = 0u64;
    for i in 0..range_count {
        let offset = IMAGE_HEADER_BYTES + i * RANGE_BYTES;
        let r = read_u64(bytes, offset)..read_u64(bytes, offset + 8);
        if r.start >= r.end || r.end > capacity_blocks {
            return Err(invalid(
                offset,
                format!("reserved range {r:?} is empty or past capacity {capacity_blocks}"),
            ));
        }
        if let Some(prev) = ranges.last() {
            if prev.end >= r.start {
                return Err(invalid(
                    offset,
                    format!("reserved range {r:?} overlaps, touches or precedes {prev:?}"),
                ));
            }
        }
        range_sum += r.end - r.start;
        ranges.push(r);
    }
    if range_sum != reserved_blocks {
        return Err(invalid(
            24,
            format!("header says {reserved_blocks} reserved blocks, ranges hold {range_sum}"),
        ));
    }
    let words_offset = ranges_end.expect("checked above");
    let mut chunks = Vec::with_capacity(chunk_count as usize);
    let mut popcount = 0u64;
    for c in 0..chunk_count {
        let mut chunk = Chunk {
            words: [0; CHUNK_WORDS],
        };
        for (i, w) in chunk.words.iter_mut().enumerate() {
            *w = read_u64(
                bytes,
                words_offset + (c * CHUNK_WORDS as u64 + i as u64) * WORD_BYTES,
            );
            popcount += w.count_ones() as u64;
        }
        chunks.push(chunk);
    }
    // Bits past the capacity must be clear.
    let tail_start = capacity_blocks;
    let padded = chunk_count * CHUNK_BLOCKS;
    for block in tail_start..padded {
        let (c, w) = (
            (block / CHUNK_BLOCKS) as usize,
            ((block % CHUNK_BLOCKS) / 64) as usize,
        );
        if chunks[c].words[w] >> (block % 64) & 1 == 1 {
            return Err(invalid(
                words_offset + (block / 64) * WORD_BYTES,
                format!("block {block} past capacity {capacity_blocks} is marked free"),
            ));
        }
    }
    if popcount != free_blocks {
        return Err(invalid(
            32,
            format!("header says {free_blocks} free blocks, the words hold {popcount}"),
        ));
    }
    if free_blocks + reserved_blocks > capacity_blocks {
        return Err(invalid(
            24,
            format!(
                "free {free_blocks} + reserved {reserved_blocks} exceed capacity {capacity_blocks}"
            ),
        ));
    }
    for r in &ranges {
        // Word by word: the range's bits must all be clear.
        let mut pos = r.start;
        while pos < r.end {
            let word_start = pos - pos % 64;
            let to = (r.end - word_start).min(64);
            let high = if to == 64 { u64::MAX } else { (1u64 << to) - 1 };
            let mask = high & (u64::MAX << (pos - word_start));
            let (c, w) = (
                (word_start / CHUNK_BLOCKS) as usize,
                ((word_start % CHUNK_BLOCKS) / 64) as usize,
            );
            let free = chunks[c].words[w] & mask;
            if free != 0 {
                let block = word_start + free.trailing_zeros() as u64;
                return Err(invalid(
                    words_offset + (block / 64) * WORD_BYTES,
                    format!("reserved block {block} (range {r:?}) is marked free"),
                ));
            }
            pos = word_start + to;
        }
    }
    Ok(BlockBitmap::from_chunks(capacity_blocks, chunks, ranges))
}

impl BlockBitmap {
    /// Serialize to a checksummed image (see `docs/bitmap-format.md`).
    /// Cached blocks count as allocated, as in [`BlockBitmap::stats`].
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            ImageHeader {
                capacity_blocks: self.capacity_blocks(),
                reserved_blocks: self.reserved_blocks(),
                free_blocks: self.free_blocks(),
            },
            self.reserved_ranges(),
            std::iter::once(self.chunks()),
        )
    }

    /// Rebuild a bitmap from [`BlockBitmap::to_bytes`] output. A truncated,
    /// corrupt or inconsistent image is an [`ImageError`] naming the field
    /// and byte offset; nothing is half-built.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ImageError> {
        decode(bytes)
    }
}
