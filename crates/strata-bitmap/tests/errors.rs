//! Exact error values of [`BlockBitmap`], [`SharedBitmap`] and the image
//! decoder: every refusal names the right kind, the first offending block
//! or byte offset and the figures, and changes nothing.

use std::ops::Range;

use strata_bitmap::{
    BitmapError, Block, BlockBitmap, Extent, ImageError, SharedBitmap, CAPACITY_BLOCKS_MAX,
    CHUNK_BLOCKS, CHUNK_WORDS, IMAGE_HEADER_BYTES, IMAGE_MAGIC, IMAGE_VERSION, WORD_BITS,
};
use xxhash_rust::xxh3::xxh3_64;

/// Byte layout of an image (see `docs/bitmap-format.md`).
const OFFSET_VERSION: usize = 8;
const OFFSET_FLAGS: usize = 12;
const OFFSET_CAPACITY: usize = 16;
const OFFSET_RESERVED: usize = 24;
const OFFSET_FREE: usize = 32;
const OFFSET_RANGE_COUNT: usize = 40;
const OFFSET_WORD_COUNT: usize = 48;
const RANGE_BYTES: usize = 16;
const WORD_BYTES: usize = 8;
const CHECKSUM_BYTES: usize = 8;
const HEADER: usize = IMAGE_HEADER_BYTES as usize;

/// Capacity of the reference image: two chunks, the second partly past the end.
const IMAGE_CAPACITY: u64 = 1000;

fn assert_unchanged(bitmap: &BlockBitmap, before: &[u8], what: &str) {
    assert!(
        bitmap.to_bytes() == before,
        "{what}: a refused operation changed the bitmap"
    );
}

/// A bitmap of `capacity` blocks with blocks `0..allocated` handed out.
fn with_allocated(capacity: u64, allocated: u64) -> BlockBitmap {
    let mut bitmap = BlockBitmap::new(capacity).unwrap();
    if allocated > 0 {
        assert_eq!(
            bitmap.alloc_extent(allocated),
            Some(Extent {
                start: 0,
                len: allocated
            })
        );
    }
    bitmap
}

#[test]
fn capacity_errors() {
    assert_eq!(BlockBitmap::new(0).unwrap_err(), BitmapError::CapacityZero);
    for requested in [CAPACITY_BLOCKS_MAX + 1, CAPACITY_BLOCKS_MAX * 2, u64::MAX] {
        let want = BitmapError::CapacityTooLarge {
            requested_blocks: requested,
            max_blocks: CAPACITY_BLOCKS_MAX,
        };
        assert_eq!(BlockBitmap::new(requested).unwrap_err(), want);
        assert_eq!(SharedBitmap::new(requested).err(), Some(want.clone()));
        assert_eq!(
            SharedBitmap::with_shards(requested, 4).err(),
            Some(want.clone())
        );
        let msg = want.to_string();
        assert!(
            msg.contains(&requested.to_string()) && msg.contains(&CAPACITY_BLOCKS_MAX.to_string()),
            "{msg}"
        );
    }
    assert_eq!(SharedBitmap::new(0).err(), Some(BitmapError::CapacityZero));
    assert_eq!(
        SharedBitmap::with_shards(0, 3).err(),
        Some(BitmapError::CapacityZero)
    );
    // The smallest capacity works.
    let mut one = BlockBitmap::new(1).unwrap();
    assert_eq!(one.alloc(), Some(Block(0)));
    assert_eq!(one.alloc(), None);
}

#[test]
fn double_free_and_never_allocated() {
    let mut bitmap = BlockBitmap::new(200).unwrap();
    let a = bitmap.alloc().unwrap();
    let b = bitmap.alloc().unwrap();
    assert_eq!((a, b), (Block(0), Block(1)));
    assert_eq!(bitmap.free(a), Ok(()));
    let before = bitmap.to_bytes();
    assert_eq!(bitmap.free(a), Err(BitmapError::NotAllocated { block: 0 }));
    assert_eq!(
        bitmap.free(Block(150)),
        Err(BitmapError::NotAllocated { block: 150 })
    );
    assert_unchanged(&bitmap, &before, "double free");
    assert_eq!(bitmap.allocated_blocks(), 1);
    // Extents: the first free block is named.
    let e = bitmap.alloc_extent(10).unwrap();
    assert_eq!(e, Extent { start: 2, len: 10 });
    assert_eq!(bitmap.free_extent(e), Ok(()));
    let before = bitmap.to_bytes();
    assert_eq!(
        bitmap.free_extent(e),
        Err(BitmapError::NotAllocated { block: 2 })
    );
    // 1 is allocated, 2.. free: the first free block of the request is 2.
    assert_eq!(
        bitmap.free_extent(Extent { start: 1, len: 5 }),
        Err(BitmapError::NotAllocated { block: 2 })
    );
    assert_unchanged(&bitmap, &before, "double free of an extent");
    let msg = BitmapError::NotAllocated { block: 2 }.to_string();
    assert!(
        msg.contains("block 2") && msg.contains("not allocated"),
        "{msg}"
    );
}

#[test]
fn freeing_reserved_blocks() {
    let mut bitmap = with_allocated(300, 10);
    bitmap.reserve(10..20).unwrap();
    let before = bitmap.to_bytes();
    assert_eq!(
        bitmap.free(Block(10)),
        Err(BitmapError::Reserved { block: 10 })
    );
    assert_eq!(
        bitmap.free(Block(19)),
        Err(BitmapError::Reserved { block: 19 })
    );
    // Allocated 5..10 then reserved 10..15: the first reserved block.
    assert_eq!(
        bitmap.free_extent(Extent { start: 5, len: 10 }),
        Err(BitmapError::Reserved { block: 10 })
    );
    // Reserved 10..20 then free 20..: a free block is reported before a
    // reserved one, even when the reserved one comes first.
    assert_eq!(
        bitmap.free_extent(Extent { start: 8, len: 20 }),
        Err(BitmapError::NotAllocated { block: 20 })
    );
    assert_unchanged(&bitmap, &before, "freeing reserved blocks");
    assert_eq!(bitmap.allocated_blocks(), 10);
    assert_eq!(bitmap.reserved_blocks(), 10);
    let msg = BitmapError::Reserved { block: 19 }.to_string();
    assert!(msg.contains("19") && msg.contains("reserved"), "{msg}");
}

#[test]
fn out_of_range_blocks_extents_and_ranges() {
    const CAP: u64 = 100;
    let mut bitmap = with_allocated(CAP, CAP);
    let before = bitmap.to_bytes();
    let oor = |block| {
        Err(BitmapError::OutOfRange {
            block,
            capacity_blocks: CAP,
        })
    };
    assert_eq!(bitmap.free(Block(CAP)), oor(CAP));
    assert_eq!(bitmap.free(Block(CAP + 7)), oor(CAP + 7));
    assert_eq!(bitmap.free(Block(u64::MAX)), oor(u64::MAX));
    // The first block past the end is named.
    assert_eq!(
        bitmap.free_extent(Extent {
            start: CAP - 1,
            len: 2
        }),
        oor(CAP)
    );
    assert_eq!(
        bitmap.free_extent(Extent {
            start: 0,
            len: CAP + 1
        }),
        oor(CAP)
    );
    assert_eq!(
        bitmap.free_extent(Extent {
            start: CAP + 5,
            len: 1
        }),
        oor(CAP + 5)
    );
    // start + len overflows u64.
    assert_eq!(
        bitmap.free_extent(Extent {
            start: 5,
            len: u64::MAX
        }),
        oor(CAP)
    );
    assert_eq!(
        bitmap.free_extent(Extent {
            start: u64::MAX,
            len: 2
        }),
        oor(u64::MAX)
    );
    assert_eq!(
        bitmap.free_extent(Extent {
            start: u64::MAX - 1,
            len: u64::MAX
        }),
        oor(u64::MAX - 1)
    );
    assert_eq!(bitmap.reserve(CAP - 1..CAP + 1), oor(CAP));
    assert_eq!(bitmap.reserve(CAP..CAP + 1), oor(CAP));
    assert_eq!(bitmap.reserve(u64::MAX - 1..u64::MAX), oor(u64::MAX - 1));
    // Out-of-range blocks are in no state.
    assert!(!bitmap.is_free(CAP) && !bitmap.is_allocated(CAP) && !bitmap.is_reserved(CAP));
    assert_unchanged(&bitmap, &before, "out of range");
    let msg = BitmapError::OutOfRange {
        block: 123,
        capacity_blocks: CAP,
    }
    .to_string();
    assert!(msg.contains("123") && msg.contains("100"), "{msg}");
    // A hint past the end means block 0.
    let mut bitmap = BlockBitmap::new(CAP).unwrap();
    assert_eq!(bitmap.alloc_near(CAP), Some(Block(0)));
    assert_eq!(bitmap.alloc_near(u64::MAX), Some(Block(1)));
    assert_eq!(
        bitmap.alloc_extent_near(3, u64::MAX),
        Some(Extent { start: 2, len: 3 })
    );
}

#[test]
fn zero_length_extents_and_ranges() {
    let mut bitmap = with_allocated(100, 50);
    let before = bitmap.to_bytes();
    for start in [0, 10, 99, 100, 1000, u64::MAX] {
        // Zero length wins over out of range.
        assert_eq!(
            bitmap.free_extent(Extent { start, len: 0 }),
            Err(BitmapError::ZeroLength)
        );
        assert_eq!(bitmap.reserve(start..start), Err(BitmapError::ZeroLength));
    }
    // Reversed ranges (written as struct literals: clippy rejects `10..5`).
    assert_eq!(
        bitmap.reserve(Range { start: 10, end: 5 }),
        Err(BitmapError::ZeroLength)
    );
    assert_eq!(
        bitmap.reserve(Range {
            start: u64::MAX,
            end: 0
        }),
        Err(BitmapError::ZeroLength)
    );
    assert_eq!(bitmap.try_alloc_extent(0), Err(BitmapError::ZeroLength));
    assert_eq!(bitmap.alloc_extent(0), None);
    assert_eq!(bitmap.alloc_extent_near(0, 60), None);
    assert_unchanged(&bitmap, &before, "zero length");
    assert!(BitmapError::ZeroLength.to_string().contains("zero"));
}

#[test]
fn full_bitmap() {
    const CAP: u64 = 777;
    let mut bitmap = with_allocated(CAP, CAP);
    let before = bitmap.to_bytes();
    assert_eq!(bitmap.alloc(), None);
    assert_eq!(bitmap.alloc_near(5), None);
    assert_eq!(bitmap.alloc_extent(1), None);
    assert_eq!(bitmap.alloc_extent(2), None);
    let none = |len| BitmapError::NoSpace {
        requested_blocks: len,
        free_blocks: 0,
        largest_free_run_blocks: 0,
    };
    assert_eq!(bitmap.try_alloc(), Err(none(1)));
    assert_eq!(bitmap.try_alloc_extent(1), Err(none(1)));
    assert_eq!(bitmap.try_alloc_extent(3), Err(none(3)));
    assert_eq!(bitmap.try_alloc_extent(u64::MAX), Err(none(u64::MAX)));
    {
        let mut cache = bitmap.cache();
        assert_eq!(cache.alloc(), None);
        assert_eq!(cache.cached_blocks(), 0);
    }
    assert_unchanged(&bitmap, &before, "full bitmap");
    let stats = bitmap.stats();
    assert_eq!((stats.free_blocks, stats.allocated_blocks), (0, CAP));
    assert_eq!(
        (stats.largest_free_run_blocks, stats.fragmentation),
        (0, 0.0)
    );

    // Free 3 and 7..10: 4 blocks free, the longest run 3.
    bitmap.free(Block(3)).unwrap();
    bitmap.free_extent(Extent { start: 7, len: 3 }).unwrap();
    let err = bitmap.try_alloc_extent(4).unwrap_err();
    assert_eq!(
        err,
        BitmapError::NoSpace {
            requested_blocks: 4,
            free_blocks: 4,
            largest_free_run_blocks: 3
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("no run of 4") && msg.contains("4 free") && msg.contains("run 3"),
        "{msg}"
    );
    assert_eq!(bitmap.alloc_extent(4), None);
    assert_eq!(bitmap.alloc_extent_near(4, 0), None);
    assert_eq!(bitmap.stats().fragmentation, 0.25);
    // The free blocks are still handed out exactly: the run, then the single.
    assert_eq!(bitmap.try_alloc_extent(3), Ok(Extent { start: 7, len: 3 }));
    assert_eq!(bitmap.try_alloc(), Ok(Block(3)));
    assert_eq!(bitmap.try_alloc(), Err(none(1)));
    bitmap.check_invariants();
}

#[test]
fn reserve_over_allocated_blocks() {
    let mut bitmap = BlockBitmap::new(5000).unwrap();
    bitmap.reserve(10..20).unwrap();
    bitmap.reserve(200..300).unwrap();
    assert_eq!(bitmap.alloc_near(25), Some(Block(25)));
    assert_eq!(
        bitmap.alloc_extent_near(10, 4000),
        Some(Extent {
            start: 4000,
            len: 10
        })
    );
    assert_eq!(bitmap.alloc_near(310), Some(Block(310)));
    let before = bitmap.to_bytes();
    // The first allocated block of the range is named, past reserved ones.
    assert_eq!(
        bitmap.reserve(0..100),
        Err(BitmapError::ReserveInUse { block: 25 })
    );
    assert_eq!(
        bitmap.reserve(25..26),
        Err(BitmapError::ReserveInUse { block: 25 })
    );
    assert_eq!(
        bitmap.reserve(150..5000),
        Err(BitmapError::ReserveInUse { block: 310 })
    );
    assert_eq!(
        bitmap.reserve(250..320),
        Err(BitmapError::ReserveInUse { block: 310 })
    );
    assert_eq!(
        bitmap.reserve(4005..4006),
        Err(BitmapError::ReserveInUse { block: 4005 })
    );
    assert_eq!(
        bitmap.reserve(3999..4001),
        Err(BitmapError::ReserveInUse { block: 4000 })
    );
    assert_unchanged(&bitmap, &before, "reserve over allocated blocks");
    let msg = BitmapError::ReserveInUse { block: 4005 }.to_string();
    assert!(msg.contains("4005"), "{msg}");

    // Re-reserving reserved blocks is fine and counts nothing twice.
    bitmap.reserve(10..20).unwrap();
    bitmap.reserve(12..15).unwrap();
    assert_eq!(bitmap.reserved_blocks(), 110);
    // Touching and overlapping ranges coalesce.
    bitmap.reserve(20..24).unwrap();
    bitmap.reserve(5..11).unwrap();
    bitmap.reserve(300..305).unwrap();
    assert_eq!(bitmap.reserved(), &[5..24, 200..305]);
    assert_eq!(bitmap.reserved_blocks(), 19 + 105);
    // A reserve spanning two ranges and the gap between them: refused while
    // block 25 is allocated, merges them once it is free.
    assert_eq!(
        bitmap.reserve(20..210),
        Err(BitmapError::ReserveInUse { block: 25 })
    );
    bitmap.free(Block(25)).unwrap();
    bitmap.reserve(20..210).unwrap();
    assert_eq!(bitmap.reserved(), std::slice::from_ref(&(5..305)));
    assert_eq!(bitmap.reserved_blocks(), 300);
    assert_eq!(bitmap.allocated_blocks(), 11);
    bitmap.check_invariants();
}

/// The reference image: reserved ranges, allocated blocks in both chunks.
fn reference_bitmap() -> BlockBitmap {
    let mut bitmap = BlockBitmap::new(IMAGE_CAPACITY).unwrap();
    bitmap.reserve(0..10).unwrap();
    bitmap.reserve(100..164).unwrap();
    assert_eq!(bitmap.alloc_extent(50), Some(Extent { start: 10, len: 50 }));
    assert_eq!(
        bitmap.alloc_extent_near(30, 600),
        Some(Extent {
            start: 600,
            len: 30
        })
    );
    assert_eq!(bitmap.alloc_near(999), Some(Block(999)));
    bitmap
}

fn image() -> Vec<u8> {
    reference_bitmap().to_bytes()
}

fn words_offset(bytes: &[u8]) -> usize {
    HEADER + RANGE_BYTES * get(bytes, OFFSET_RANGE_COUNT) as usize
}

fn get(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

fn put(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Recompute the checksum so only the content is wrong.
fn reseal(bytes: &mut [u8]) {
    let body = bytes.len() - CHECKSUM_BYTES;
    let sum = xxh3_64(&bytes[..body]);
    bytes[body..].copy_from_slice(&sum.to_le_bytes());
}

/// Set or clear block `block`'s bit in an image.
fn set_bit(bytes: &mut [u8], block: u64, free: bool) {
    let offset = words_offset(bytes) + (block / WORD_BITS) as usize * WORD_BYTES;
    let mut word = get(bytes, offset);
    if free {
        word |= 1 << (block % WORD_BITS);
    } else {
        word &= !(1 << (block % WORD_BITS));
    }
    put(bytes, offset, word);
}

fn expect_invalid(bytes: &[u8], offset: u64, mentions: &[&str], what: &str) {
    match BlockBitmap::from_bytes(bytes) {
        Err(ImageError::Invalid {
            offset: got,
            reason,
        }) => {
            assert_eq!(got, offset, "{what}: offset (reason: {reason})");
            for m in mentions {
                assert!(reason.contains(m), "{what}: reason {reason:?} lacks {m:?}");
            }
            let msg = ImageError::Invalid { offset, reason }.to_string();
            assert!(msg.contains(&format!("offset {offset}")), "{what}: {msg}");
        }
        other => panic!(
            "{what}: expected Invalid at offset {offset}, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn image_layout_and_round_trip() {
    let bitmap = reference_bitmap();
    let bytes = bitmap.to_bytes();
    let chunks = IMAGE_CAPACITY.div_ceil(CHUNK_BLOCKS) as usize;
    let words = chunks * CHUNK_WORDS;
    assert_eq!(
        bytes.len(),
        HEADER + 2 * RANGE_BYTES + words * WORD_BYTES + CHECKSUM_BYTES
    );
    assert_eq!(bytes[..8], IMAGE_MAGIC);
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        IMAGE_VERSION
    );
    assert_eq!(get(&bytes, OFFSET_CAPACITY), IMAGE_CAPACITY);
    assert_eq!(get(&bytes, OFFSET_RESERVED), 74);
    assert_eq!(get(&bytes, OFFSET_FREE), IMAGE_CAPACITY - 74 - 81);
    assert_eq!(get(&bytes, OFFSET_RANGE_COUNT), 2);
    assert_eq!(get(&bytes, OFFSET_WORD_COUNT), words as u64);
    let back = BlockBitmap::from_bytes(&bytes).unwrap();
    back.check_invariants();
    assert_eq!(back.to_bytes(), bytes);
    assert_eq!(back.reserved(), &[0..10, 100..164]);
    assert_eq!(back.allocated_blocks(), 81);
    assert!(back.is_allocated(999) && back.is_allocated(10) && back.is_free(60));
}

#[test]
fn image_truncated_at_every_length() {
    let bytes = image();
    let total = bytes.len();
    let ranges_end = HEADER + 2 * RANGE_BYTES;
    let words_end = total - CHECKSUM_BYTES;
    let mut seen = std::collections::BTreeSet::new();
    for len in 0..total {
        let (field, offset, needed) = if len < HEADER {
            ("header", 0, HEADER)
        } else if len < ranges_end {
            ("reserved ranges", HEADER, ranges_end)
        } else if len < words_end {
            ("bitmap words", ranges_end, words_end)
        } else {
            ("checksum", words_end, total)
        };
        let want = ImageError::Truncated {
            field,
            offset: offset as u64,
            needed_bytes: needed as u64,
            actual_bytes: len as u64,
        };
        assert_eq!(
            BlockBitmap::from_bytes(&bytes[..len]).err(),
            Some(want.clone()),
            "length {len}"
        );
        if seen.insert(field) {
            let msg = want.to_string();
            assert!(
                msg.contains(field)
                    && msg.contains(&needed.to_string())
                    && msg.contains(&len.to_string()),
                "{msg}"
            );
        }
    }
    assert_eq!(seen.len(), 4);
    // SharedBitmap reads through the same decoder.
    assert!(matches!(
        SharedBitmap::from_bytes(&bytes[..7]),
        Err(ImageError::Truncated {
            field: "header",
            ..
        })
    ));
}

#[test]
fn image_trailing_bytes() {
    let bytes = image();
    for extra in [1usize, 7, 8, 1000] {
        let mut long = bytes.clone();
        long.resize(bytes.len() + extra, 0);
        let want = ImageError::TrailingBytes {
            expected_bytes: bytes.len() as u64,
            actual_bytes: (bytes.len() + extra) as u64,
        };
        assert_eq!(BlockBitmap::from_bytes(&long).err(), Some(want.clone()));
        let msg = want.to_string();
        assert!(msg.contains(&bytes.len().to_string()), "{msg}");
    }
}

#[test]
fn image_bad_magic_and_version() {
    let bytes = image();
    for i in 0..8 {
        let mut bad = bytes.clone();
        bad[i] ^= 0x20;
        let mut found = IMAGE_MAGIC;
        found[i] ^= 0x20;
        assert_eq!(
            BlockBitmap::from_bytes(&bad).err(),
            Some(ImageError::BadMagic { found }),
            "byte {i}"
        );
    }
    // Too short for a header is truncation, whatever the bytes.
    assert!(matches!(
        BlockBitmap::from_bytes(b"not a bitmap"),
        Err(ImageError::Truncated {
            field: "header",
            ..
        })
    ));
    for version in [0u32, 2, IMAGE_VERSION + 1, u32::MAX] {
        let mut bad = bytes.clone();
        bad[OFFSET_VERSION..OFFSET_VERSION + 4].copy_from_slice(&version.to_le_bytes());
        let want = ImageError::UnsupportedVersion {
            found: version,
            supported: IMAGE_VERSION,
        };
        assert_eq!(BlockBitmap::from_bytes(&bad).err(), Some(want.clone()));
        let msg = want.to_string();
        assert!(msg.contains(&version.to_string()), "{msg}");
        // Resealing does not help: the version is checked first.
        reseal(&mut bad);
        assert_eq!(BlockBitmap::from_bytes(&bad).err(), Some(want));
    }
}

#[test]
fn image_bit_flips_are_caught() {
    let bytes = image();
    let total = bytes.len();
    let body = total - CHECKSUM_BYTES;
    for pos in 0..total {
        for bit in [0u8, 3, 7] {
            let mut bad = bytes.clone();
            bad[pos] ^= 1 << bit;
            let got = BlockBitmap::from_bytes(&bad).err();
            let what = format!("byte {pos} bit {bit}");
            match pos {
                0..=7 => assert!(
                    matches!(got, Some(ImageError::BadMagic { .. })),
                    "{what}: {got:?}"
                ),
                8..=11 => assert!(
                    matches!(got, Some(ImageError::UnsupportedVersion { .. })),
                    "{what}: {got:?}"
                ),
                // The range and word counts size the image: a flip there makes
                // it too short or too long (or overflow).
                40..=55 => assert!(
                    matches!(
                        got,
                        Some(
                            ImageError::Truncated { .. }
                                | ImageError::TrailingBytes { .. }
                                | ImageError::Invalid { offset: 40, .. }
                        )
                    ),
                    "{what}: {got:?}"
                ),
                _ => {
                    let want = ImageError::ChecksumMismatch {
                        stored: get(&bad, body),
                        computed: xxh3_64(&bad[..body]),
                    };
                    assert_eq!(got, Some(want), "{what}");
                }
            }
        }
    }
    let msg = ImageError::ChecksumMismatch {
        stored: 0xabc,
        computed: 0xdef,
    }
    .to_string();
    assert!(
        msg.contains("0000000000000abc") && msg.contains("0000000000000def"),
        "{msg}"
    );
}

#[test]
fn image_size_fields() {
    let bytes = image();
    // A range count whose byte size overflows u64.
    let mut bad = bytes.clone();
    put(&mut bad, OFFSET_RANGE_COUNT, u64::MAX / 8);
    expect_invalid(
        &bad,
        OFFSET_RANGE_COUNT as u64,
        &["overflow"],
        "range count overflow",
    );
    let mut bad = bytes.clone();
    put(&mut bad, OFFSET_WORD_COUNT, u64::MAX / 4);
    expect_invalid(
        &bad,
        OFFSET_RANGE_COUNT as u64,
        &["overflow"],
        "word count overflow",
    );
    // One more range than the image holds: the words end 16 bytes too late.
    let mut bad = bytes.clone();
    put(&mut bad, OFFSET_RANGE_COUNT, 3);
    let ranges_end = (HEADER + 3 * RANGE_BYTES) as u64;
    assert_eq!(
        BlockBitmap::from_bytes(&bad).err(),
        Some(ImageError::Truncated {
            field: "bitmap words",
            offset: ranges_end,
            needed_bytes: ranges_end + 16 * WORD_BYTES as u64,
            actual_bytes: bytes.len() as u64,
        })
    );
    // One range fewer: 16 bytes too many.
    let mut bad = bytes.clone();
    put(&mut bad, OFFSET_RANGE_COUNT, 1);
    assert_eq!(
        BlockBitmap::from_bytes(&bad).err(),
        Some(ImageError::TrailingBytes {
            expected_bytes: bytes.len() as u64 - RANGE_BYTES as u64,
            actual_bytes: bytes.len() as u64,
        })
    );
    // A huge but representable range count.
    let mut bad = bytes.clone();
    put(&mut bad, OFFSET_RANGE_COUNT, 1 << 40);
    assert_eq!(
        BlockBitmap::from_bytes(&bad).err(),
        Some(ImageError::Truncated {
            field: "reserved ranges",
            offset: IMAGE_HEADER_BYTES,
            needed_bytes: IMAGE_HEADER_BYTES + (1 << 44),
            actual_bytes: bytes.len() as u64,
        })
    );
}

#[test]
fn image_inconsistent_content_with_valid_checksum() {
    let bytes = image();
    let words = words_offset(&bytes) as u64;
    let reseal_and = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bad = bytes.clone();
        f(&mut bad);
        reseal(&mut bad);
        bad
    };

    // Unknown flags.
    let bad = reseal_and(&|b| b[OFFSET_FLAGS] = 1);
    expect_invalid(&bad, OFFSET_FLAGS as u64, &["flags"], "flags");

    // Capacity 0 and past the maximum.
    let bad = reseal_and(&|b| put(b, OFFSET_CAPACITY, 0));
    expect_invalid(&bad, OFFSET_CAPACITY as u64, &[], "capacity 0");
    let bad = reseal_and(&|b| put(b, OFFSET_CAPACITY, CAPACITY_BLOCKS_MAX + 1));
    expect_invalid(
        &bad,
        OFFSET_CAPACITY as u64,
        &[&(CAPACITY_BLOCKS_MAX + 1).to_string()],
        "capacity",
    );

    // Word count that does not match the capacity (one chunk more, one less).
    let bad = reseal_and(&|b| put(b, OFFSET_CAPACITY, IMAGE_CAPACITY + CHUNK_BLOCKS));
    expect_invalid(
        &bad,
        OFFSET_WORD_COUNT as u64,
        &["16", "24"],
        "capacity needs more words",
    );
    let bad = reseal_and(&|b| put(b, OFFSET_CAPACITY, CHUNK_BLOCKS));
    expect_invalid(
        &bad,
        OFFSET_WORD_COUNT as u64,
        &["16", "8"],
        "capacity needs fewer words",
    );

    // Reserved ranges: empty, reversed, past capacity, overlapping, touching, unsorted.
    let r0 = HEADER as u64;
    let r1 = (HEADER + RANGE_BYTES) as u64;
    let set_range = |b: &mut Vec<u8>, i: usize, start: u64, end: u64| {
        put(b, HEADER + i * RANGE_BYTES, start);
        put(b, HEADER + i * RANGE_BYTES + 8, end);
    };
    let bad = reseal_and(&|b| set_range(b, 0, 5, 5));
    expect_invalid(&bad, r0, &["5..5"], "empty range");
    let bad = reseal_and(&|b| set_range(b, 1, 164, 100));
    expect_invalid(&bad, r1, &["164..100"], "reversed range");
    let bad = reseal_and(&|b| set_range(b, 1, 100, IMAGE_CAPACITY + 1));
    expect_invalid(&bad, r1, &["1001", "1000"], "range past capacity");
    let bad = reseal_and(&|b| set_range(b, 1, 5, 69));
    expect_invalid(&bad, r1, &["5..69", "0..10"], "overlapping ranges");
    let bad = reseal_and(&|b| set_range(b, 1, 10, 74));
    expect_invalid(&bad, r1, &["10..74", "0..10"], "touching ranges");
    let bad = reseal_and(&|b| {
        set_range(b, 0, 100, 164);
        set_range(b, 1, 0, 10);
    });
    expect_invalid(&bad, r1, &["0..10"], "unsorted ranges");

    // Reserved count that disagrees with the ranges.
    let bad = reseal_and(&|b| put(b, OFFSET_RESERVED, 75));
    expect_invalid(
        &bad,
        OFFSET_RESERVED as u64,
        &["75", "74"],
        "reserved count",
    );

    // Free count that disagrees with the words.
    let free = get(&bytes, OFFSET_FREE);
    let bad = reseal_and(&|b| put(b, OFFSET_FREE, free - 1));
    expect_invalid(
        &bad,
        OFFSET_FREE as u64,
        &[&(free - 1).to_string(), &free.to_string()],
        "free count",
    );

    // A bit past the capacity set (free count kept consistent), in the last
    // word of the bitmap and in a word wholly past the end.
    for block in [IMAGE_CAPACITY, 1010, 1023] {
        let bad = reseal_and(&|b| {
            set_bit(b, block, true);
            put(b, OFFSET_FREE, free + 1);
        });
        let offset = words + (block / WORD_BITS) * WORD_BYTES as u64;
        expect_invalid(&bad, offset, &[&block.to_string()], "tail bit");
    }

    // A reserved block marked free (free count kept consistent).
    for block in [0u64, 9, 100, 127, 128, 163] {
        let bad = reseal_and(&|b| {
            set_bit(b, block, true);
            put(b, OFFSET_FREE, free + 1);
        });
        let offset = words + (block / WORD_BITS) * WORD_BYTES as u64;
        expect_invalid(
            &bad,
            offset,
            &[&format!("block {block} ")],
            "reserved block marked free",
        );
    }

    // The same defect with the free count untouched is still refused.
    let bad = reseal_and(&|b| set_bit(b, 5, true));
    assert!(matches!(
        BlockBitmap::from_bytes(&bad),
        Err(ImageError::Invalid { .. })
    ));

    // An allocated block marked free with the count fixed is a valid image.
    let ok = reseal_and(&|b| {
        set_bit(b, 999, true);
        put(b, OFFSET_FREE, free + 1);
    });
    let back = BlockBitmap::from_bytes(&ok).unwrap();
    assert!(back.is_free(999));
    back.check_invariants();
}

/// Every refusal of a multi-shard bitmap is exact too, and changes nothing.
#[test]
fn shared_bitmap_errors() {
    const SHARD: u64 = strata_bitmap::SHARD_BLOCKS_MIN;
    let cap = 3 * SHARD + 100;
    let shared = SharedBitmap::with_shards(cap, 4).unwrap();
    assert_eq!(shared.shard_count(), 4);
    // Reserve around the first shard boundary; allocate one block in each shard.
    shared.reserve(SHARD - 10..SHARD + 10).unwrap();
    let oor = |block| {
        Err(BitmapError::OutOfRange {
            block,
            capacity_blocks: cap,
        })
    };
    let before = shared.to_bytes();
    assert_eq!(shared.free(Block(cap)), oor(cap));
    assert_eq!(
        shared.free(Block(5)),
        Err(BitmapError::NotAllocated { block: 5 })
    );
    assert_eq!(
        shared.free(Block(SHARD + 3)),
        Err(BitmapError::Reserved { block: SHARD + 3 })
    );
    assert_eq!(
        shared.free_extent(Extent { start: 5, len: 0 }),
        Err(BitmapError::ZeroLength)
    );
    assert_eq!(
        shared.free_extent(Extent {
            start: cap - 1,
            len: 2
        }),
        oor(cap)
    );
    assert_eq!(
        shared.free_extent(Extent {
            start: u64::MAX,
            len: 2
        }),
        oor(u64::MAX)
    );
    assert_eq!(
        shared.free_extent(Extent {
            start: SHARD + 2,
            len: 20
        }),
        Err(BitmapError::NotAllocated { block: SHARD + 10 })
    );
    assert_eq!(shared.reserve(7..7), Err(BitmapError::ZeroLength));
    assert_eq!(shared.reserve(cap..cap + 1), oor(cap));
    assert_eq!(shared.alloc_extent(0), None);
    assert_eq!(shared.alloc_extent(shared.extent_blocks_max() + 1), None);
    assert_eq!(
        shared.to_bytes(),
        before,
        "a refused operation changed the shared bitmap"
    );
    shared.check_invariants();
}
