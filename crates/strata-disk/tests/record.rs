//! Spill records: round trips over every codec, checksum and dtype; the auto
//! codec choice; single-bit corruption anywhere is always an error; every
//! truncation is a typed error; exact errors for malformed headers.

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use strata_disk::record::{
    decode, decode_into, encode, encode_into, parse_header, ChecksumKind, Codec, CodecPolicy,
    Dtype, RecordError, RecordLocation, RecordMeta, AUTO_SAMPLE_BYTES, FORMAT_VERSION,
    HEADER_LEN_BYTES, OFFSET_CHECKSUM_ID, OFFSET_CODEC_ID, OFFSET_CODEC_LEVEL, OFFSET_DTYPE_ID,
    OFFSET_FLAGS, OFFSET_HEADER_CHECKSUM, OFFSET_MAGIC, OFFSET_RANK, OFFSET_RAW_LEN,
    OFFSET_RESERVED_A, OFFSET_RESERVED_B, OFFSET_SHAPE, OFFSET_STORED_LEN, OFFSET_VERSION,
    RAW_LEN_MAX_BYTES, SHAPE_RANK_MAX, ZSTD_LEVEL_SMALL,
};

const LOCATION: RecordLocation = RecordLocation {
    start_block: 1234,
    len_blocks: 8,
};

const POLICIES: [CodecPolicy; 4] = [
    CodecPolicy::None,
    CodecPolicy::Fast,
    CodecPolicy::Small,
    CodecPolicy::Auto,
];
const CHECKSUMS: [ChecksumKind; 2] = [ChecksumKind::Xxh3, ChecksumKind::Crc32c];

/// Seed from `STRATA_TEST_SEED` if set, else a fixed default; printed by
/// every assertion that uses it.
fn seed(default: u64) -> u64 {
    std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// f32 values of a slowly varying, coarsely quantized signal: typical of
/// activations after quantization, compressible but not trivially.
fn low_entropy_floats(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 4);
    let mut level = 0i32;
    while bytes.len() < len {
        if rng.gen_ratio(1, 16) {
            level += rng.gen_range(-2..=2);
        }
        bytes.extend_from_slice(&(level as f32 * 0.125).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Overwrites the header checksum so a deliberately edited header passes it.
fn reseal(record: &mut [u8]) {
    let checksum = xxhash_rust::xxh3::xxh3_64(&record[..OFFSET_HEADER_CHECKSUM]);
    record[OFFSET_HEADER_CHECKSUM..OFFSET_HEADER_CHECKSUM + 8]
        .copy_from_slice(&checksum.to_le_bytes());
}

fn put_u64(record: &mut [u8], offset: usize, value: u64) {
    record[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn expected_codec(policy: CodecPolicy) -> Option<Codec> {
    match policy {
        CodecPolicy::None => Some(Codec::None),
        CodecPolicy::Fast => Some(Codec::Lz4),
        CodecPolicy::Small => Some(Codec::Zstd {
            level: ZSTD_LEVEL_SMALL,
        }),
        CodecPolicy::Auto => None,
    }
}

#[test]
fn round_trip_every_codec_checksum_dtype() {
    let seed = seed(0x5eed_0001);
    let mut rng = SmallRng::seed_from_u64(seed);
    // Element counts: empty, one, small, and past the auto sample size.
    let element_counts = [0u64, 1, 1000, (AUTO_SAMPLE_BYTES as u64) / 2 + 3];
    let mut round_trips = 0u64;
    for dtype in Dtype::ALL {
        for &elements in &element_counts {
            let len_bytes = (elements * dtype.size_bytes()) as usize;
            let payloads = [
                ("random", random_bytes(&mut rng, len_bytes)),
                ("zeros", vec![0u8; len_bytes]),
                (
                    "low-entropy floats",
                    low_entropy_floats(&mut rng, len_bytes),
                ),
            ];
            // Rank 0 for a scalar, 1-D otherwise, plus a 2-D split when possible.
            let mut shapes = vec![if elements == 1 {
                vec![]
            } else {
                vec![elements]
            }];
            if elements == 1000 {
                shapes.push(vec![10, 100]);
                shapes.push(vec![2, 5, 2, 5, 2, 5, 1, 1]);
            }
            if dtype == Dtype::Bytes {
                shapes.push(vec![]);
            }
            for (payload_name, payload) in &payloads {
                for shape in &shapes {
                    for policy in POLICIES {
                        for checksum in CHECKSUMS {
                            let meta = RecordMeta {
                                dtype,
                                shape: shape.clone(),
                            };
                            let context = format!(
                                "seed {seed}: {dtype:?} {payload_name} {len_bytes} bytes \
                                 shape {shape:?} {policy:?} {checksum:?}"
                            );
                            let bytes = encode(payload, &meta, policy, checksum)
                                .unwrap_or_else(|error| panic!("{context}: encode {error}"));
                            let header = parse_header(&bytes, LOCATION)
                                .unwrap_or_else(|error| panic!("{context}: header {error}"));
                            assert_eq!(header.record_len_bytes(), bytes.len() as u64, "{context}");
                            assert_eq!(header.raw_len_bytes, len_bytes as u64, "{context}");
                            let record = decode(&bytes, LOCATION)
                                .unwrap_or_else(|error| panic!("{context}: decode {error}"));
                            assert!(record.payload == *payload, "{context}: payload differs");
                            assert_eq!(record.meta, meta, "{context}");
                            assert_eq!(record.checksum_kind, checksum, "{context}");
                            assert_eq!(record.codec, header.codec, "{context}");
                            match expected_codec(policy) {
                                Some(codec) => assert_eq!(record.codec, codec, "{context}"),
                                None => assert!(
                                    matches!(record.codec, Codec::None | Codec::Lz4),
                                    "{context}: auto chose {:?}",
                                    record.codec
                                ),
                            }
                            if record.codec == Codec::None {
                                assert_eq!(header.stored_len_bytes, len_bytes as u64, "{context}");
                            }
                            round_trips += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(
        round_trips > 1000,
        "seed {seed}: only {round_trips} round trips"
    );
}

#[test]
fn auto_stores_random_raw_and_compresses_zeros() {
    let seed = seed(0x5eed_0002);
    let mut rng = SmallRng::seed_from_u64(seed);
    for len_bytes in [1usize, 100, 4096, AUTO_SAMPLE_BYTES, 1 << 20] {
        let meta = RecordMeta {
            dtype: Dtype::U8,
            shape: vec![len_bytes as u64],
        };
        let random = random_bytes(&mut rng, len_bytes);
        let bytes = encode(&random, &meta, CodecPolicy::Auto, ChecksumKind::Xxh3).unwrap();
        let header = parse_header(&bytes, LOCATION).unwrap();
        assert_eq!(header.codec, Codec::None, "seed {seed}: len {len_bytes}");
        assert_eq!(
            header.stored_len_bytes, len_bytes as u64,
            "seed {seed}: len {len_bytes}"
        );
        assert_eq!(
            bytes.len(),
            HEADER_LEN_BYTES + len_bytes,
            "seed {seed}: len {len_bytes}"
        );

        let zeros = vec![0u8; len_bytes];
        let bytes = encode(&zeros, &meta, CodecPolicy::Auto, ChecksumKind::Xxh3).unwrap();
        let header = parse_header(&bytes, LOCATION).unwrap();
        if len_bytes >= 100 {
            assert_eq!(header.codec, Codec::Lz4, "len {len_bytes}");
            // lz4 encodes a zero run in a few bytes per 255 plus a fixed ~12.
            assert!(
                header.stored_len_bytes < 16 + len_bytes as u64 / 100,
                "len {len_bytes}: stored {}",
                header.stored_len_bytes
            );
        } else {
            // One byte cannot shrink by 10%.
            assert_eq!(header.codec, Codec::None, "len {len_bytes}");
        }
    }
    // Fast always uses lz4, even where it expands the data.
    let random = random_bytes(&mut rng, 10_000);
    let meta = RecordMeta {
        dtype: Dtype::Bytes,
        shape: vec![],
    };
    let bytes = encode(&random, &meta, CodecPolicy::Fast, ChecksumKind::Xxh3).unwrap();
    assert_eq!(parse_header(&bytes, LOCATION).unwrap().codec, Codec::Lz4);
    assert_eq!(decode(&bytes, LOCATION).unwrap().payload, random);
}

#[test]
fn auto_samples_large_payloads() {
    // Random except for a compressible prefix: a prefix-only sample would
    // say "compress", the evenly spaced sample says "raw".
    let seed = seed(0x5eed_0003);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut payload = random_bytes(&mut rng, 1 << 20);
    payload[..AUTO_SAMPLE_BYTES].fill(0);
    let meta = RecordMeta {
        dtype: Dtype::Bytes,
        shape: vec![],
    };
    let bytes = encode(&payload, &meta, CodecPolicy::Auto, ChecksumKind::Xxh3).unwrap();
    assert_eq!(
        parse_header(&bytes, LOCATION).unwrap().codec,
        Codec::None,
        "seed {seed}"
    );
    // Compressible almost everywhere, one random stretch: lz4.
    let mut payload = vec![7u8; 1 << 20];
    rng.fill_bytes(&mut payload[..AUTO_SAMPLE_BYTES]);
    let bytes = encode(&payload, &meta, CodecPolicy::Auto, ChecksumKind::Xxh3).unwrap();
    assert_eq!(
        parse_header(&bytes, LOCATION).unwrap().codec,
        Codec::Lz4,
        "seed {seed}"
    );
    assert_eq!(decode(&bytes, LOCATION).unwrap().payload, payload);
}

#[test]
fn every_single_bit_flip_is_detected() {
    let seed = seed(0x5eed_0004);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut records = Vec::new();
    let payloads = [
        random_bytes(&mut rng, 2048),
        vec![0u8; 2048],
        low_entropy_floats(&mut rng, 2048),
    ];
    for payload in &payloads {
        for policy in POLICIES {
            for checksum in CHECKSUMS {
                let meta = RecordMeta {
                    dtype: Dtype::F32,
                    shape: vec![16, 32],
                };
                records.push(encode(payload, &meta, policy, checksum).unwrap());
            }
        }
    }
    const TRIALS: u64 = 20_000;
    let mut detected = 0u64;
    for trial in 0..TRIALS {
        let index = rng.gen_range(0..records.len());
        let mut record = records[index].clone();
        let bit = rng.gen_range(0..record.len() * 8);
        record[bit / 8] ^= 1 << (bit % 8);
        let byte = bit / 8;
        let result = decode(&record, LOCATION);
        let context = format!("seed {seed} trial {trial}: record {index}, bit {bit}");
        let error = match result {
            Ok(_) => panic!("{context}: corrupt record decoded Ok"),
            Err(error) => error,
        };
        // The first check that can see the flip reports it.
        let expected_kind = if byte < OFFSET_VERSION {
            matches!(error, RecordError::BadMagic { .. })
        } else if byte < OFFSET_FLAGS {
            matches!(error, RecordError::UnsupportedVersion { .. })
        } else if byte < HEADER_LEN_BYTES {
            matches!(error, RecordError::HeaderChecksum { location, .. } if location == LOCATION)
        } else {
            matches!(error, RecordError::PayloadChecksum { location, .. } if location == LOCATION)
        };
        assert!(expected_kind, "{context}: unexpected error {error:?}");
        detected += 1;
    }
    assert_eq!(detected, TRIALS, "seed {seed}");
    println!("bit flips detected: {detected} of {TRIALS} (seed {seed})");
}

#[test]
fn every_truncation_is_a_typed_error() {
    let seed = seed(0x5eed_0005);
    let mut rng = SmallRng::seed_from_u64(seed);
    let payload = low_entropy_floats(&mut rng, 400);
    let meta = RecordMeta {
        dtype: Dtype::F32,
        shape: vec![100],
    };
    for policy in POLICIES {
        let bytes = encode(&payload, &meta, policy, ChecksumKind::Xxh3).unwrap();
        for len in 0..bytes.len() {
            let needed_bytes = if len < HEADER_LEN_BYTES {
                HEADER_LEN_BYTES
            } else {
                bytes.len()
            } as u64;
            assert_eq!(
                decode(&bytes[..len], LOCATION),
                Err(RecordError::Truncated {
                    location: LOCATION,
                    needed_bytes,
                    available_bytes: len as u64,
                }),
                "seed {seed}: {policy:?} truncated to {len} of {}",
                bytes.len()
            );
        }
        // Padding after the record (block alignment) is ignored.
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 4096, 0xAB);
        assert_eq!(
            decode(&padded, LOCATION).unwrap().payload,
            payload,
            "{policy:?}"
        );
    }
}

/// A valid record of 64 zero bytes compressed with lz4, for header surgery.
fn lz4_zeros_record(dtype: Dtype, shape: Vec<u64>) -> Vec<u8> {
    let bytes = encode(
        &[0u8; 64],
        &RecordMeta { dtype, shape },
        CodecPolicy::Fast,
        ChecksumKind::Xxh3,
    )
    .unwrap();
    assert!(decode(&bytes, LOCATION).is_ok());
    bytes
}

#[test]
fn malformed_headers_give_exact_errors() {
    let good = lz4_zeros_record(Dtype::I64, vec![8]);

    let mut bad = good.clone();
    bad[OFFSET_MAGIC] = b'X';
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::BadMagic {
            location: LOCATION,
            found: *b"XTRSPIL1"
        })
    );

    let mut bad = good.clone();
    bad[OFFSET_VERSION..OFFSET_VERSION + 2].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::UnsupportedVersion {
            location: LOCATION,
            found: 2,
            supported: FORMAT_VERSION
        })
    );

    let mut bad = good.clone();
    bad[OFFSET_CODEC_ID] = 3;
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::UnknownCodec { id: 3 })
    );

    let mut bad = good.clone();
    bad[OFFSET_CHECKSUM_ID] = 2;
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::UnknownChecksum { id: 2 })
    );

    let mut bad = good.clone();
    bad[OFFSET_DTYPE_ID] = 8;
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::UnknownDtype { id: 8 })
    );

    let mut bad = good.clone();
    bad[OFFSET_RANK] = SHAPE_RANK_MAX as u8 + 1;
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::RankTooLarge {
            rank: SHAPE_RANK_MAX as u64 + 1,
            max: SHAPE_RANK_MAX as u64
        })
    );

    // Shape says 9 i64 values, raw length is 64 bytes.
    let mut bad = good.clone();
    put_u64(&mut bad, OFFSET_SHAPE, 9);
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::ShapeMismatch {
            raw_bytes: 64,
            shape: vec![9],
            dtype: Dtype::I64
        })
    );

    // A dimension past the rank must be zero.
    let mut bad = good.clone();
    put_u64(&mut bad, OFFSET_SHAPE + 8, 1);
    reseal(&mut bad);
    assert!(matches!(
        decode(&bad, LOCATION),
        Err(RecordError::InvalidHeader { field, value: 1, .. }) if field.starts_with("shape")
    ));

    for (offset, width, field) in [
        (OFFSET_FLAGS, 2, "flags"),
        (OFFSET_RESERVED_A, 4, "reserved_a"),
        (OFFSET_RESERVED_B, 8, "reserved_b"),
        (OFFSET_CODEC_LEVEL, 4, "codec_level"),
    ] {
        let mut bad = good.clone();
        bad[offset + width - 1] = 0x01;
        reseal(&mut bad);
        let value = 1u64 << (8 * (width - 1));
        assert_eq!(
            decode(&bad, LOCATION),
            Err(RecordError::InvalidHeader {
                location: LOCATION,
                field,
                value
            }),
            "{field}"
        );
    }

    let mut bad = good.clone();
    put_u64(&mut bad, OFFSET_RAW_LEN, RAW_LEN_MAX_BYTES + 1);
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::TooLarge {
            raw_bytes: RAW_LEN_MAX_BYTES + 1,
            max_bytes: RAW_LEN_MAX_BYTES
        })
    );

    let mut bad = good.clone();
    put_u64(&mut bad, OFFSET_STORED_LEN, u64::MAX);
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::InvalidHeader {
            location: LOCATION,
            field: "stored_len",
            value: u64::MAX
        })
    );

    // Header intact, payload checksum wrong: names the extent and both values.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    let error = decode(&bad, LOCATION).unwrap_err();
    let RecordError::PayloadChecksum {
        location,
        kind,
        expected,
        actual,
    } = error.clone()
    else {
        panic!("expected PayloadChecksum, got {error:?}");
    };
    assert_eq!((location, kind), (LOCATION, ChecksumKind::Xxh3));
    assert_ne!(expected, actual);
    assert_eq!(
        error.to_string(),
        format!(
            "checksum mismatch in spill record at extent 1234+8 blocks: xxh3 expected \
             {expected:#018x}, found {actual:#018x}"
        )
    );
}

#[test]
fn decompressed_length_must_match_header() {
    // Header claims more raw bytes than the lz4 data holds.
    let mut bad = lz4_zeros_record(Dtype::Bytes, vec![]);
    put_u64(&mut bad, OFFSET_RAW_LEN, 100);
    reseal(&mut bad);
    assert_eq!(
        decode(&bad, LOCATION),
        Err(RecordError::LengthMismatch {
            expected_raw: 100,
            actual: 64
        })
    );
    // Header claims fewer: the codec runs out of room.
    let mut bad = lz4_zeros_record(Dtype::Bytes, vec![]);
    put_u64(&mut bad, OFFSET_RAW_LEN, 32);
    reseal(&mut bad);
    assert!(
        matches!(
            decode(&bad, LOCATION),
            Err(RecordError::Decompress {
                location: LOCATION,
                codec: Codec::Lz4,
                ..
            })
        ),
        "{:?}",
        decode(&bad, LOCATION)
    );
    // Same for zstd.
    let mut bad = encode(
        &[0u8; 64],
        &RecordMeta {
            dtype: Dtype::Bytes,
            shape: vec![],
        },
        CodecPolicy::Small,
        ChecksumKind::Crc32c,
    )
    .unwrap();
    put_u64(&mut bad, OFFSET_RAW_LEN, 32);
    reseal(&mut bad);
    assert!(
        matches!(
            decode(&bad, LOCATION),
            Err(RecordError::Decompress {
                codec: Codec::Zstd { .. },
                ..
            })
        ),
        "{:?}",
        decode(&bad, LOCATION)
    );
}

#[test]
fn refused_encode_leaves_output_unchanged() {
    let mut out = b"existing".to_vec();
    let error = encode_into(
        &[0u8; 8],
        &RecordMeta {
            dtype: Dtype::F32,
            shape: vec![3],
        },
        CodecPolicy::Auto,
        ChecksumKind::Xxh3,
        &mut out,
    )
    .unwrap_err();
    assert_eq!(
        error,
        RecordError::ShapeMismatch {
            raw_bytes: 8,
            shape: vec![3],
            dtype: Dtype::F32
        }
    );
    let error = encode_into(
        &[],
        &RecordMeta {
            dtype: Dtype::Bytes,
            shape: vec![1; SHAPE_RANK_MAX + 1],
        },
        CodecPolicy::Auto,
        ChecksumKind::Xxh3,
        &mut out,
    )
    .unwrap_err();
    assert_eq!(
        error,
        RecordError::RankTooLarge {
            rank: SHAPE_RANK_MAX as u64 + 1,
            max: SHAPE_RANK_MAX as u64
        }
    );
    // Overflowing shape product is a mismatch, not a panic.
    let error = encode(
        &[0u8; 8],
        &RecordMeta {
            dtype: Dtype::F64,
            shape: vec![u64::MAX, 2],
        },
        CodecPolicy::None,
        ChecksumKind::Xxh3,
    )
    .unwrap_err();
    assert!(
        matches!(error, RecordError::ShapeMismatch { .. }),
        "{error:?}"
    );
    assert_eq!(out, b"existing");
}

#[test]
fn encode_into_and_decode_into_append() {
    let payload: Vec<u8> = (0..4000u32).map(|value| (value / 100) as u8).collect();
    let meta = RecordMeta {
        dtype: Dtype::U8,
        shape: vec![40, 100],
    };
    let mut out = b"prefix".to_vec();
    let header = encode_into(
        &payload,
        &meta,
        CodecPolicy::Small,
        ChecksumKind::Crc32c,
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[..6], b"prefix");
    assert_eq!(out.len() as u64, 6 + header.record_len_bytes());
    assert_eq!(
        out[6..6 + HEADER_LEN_BYTES],
        header.to_bytes(),
        "returned header matches the bytes written"
    );
    assert_eq!(
        out[6..],
        encode(&payload, &meta, CodecPolicy::Small, ChecksumKind::Crc32c).unwrap()
    );

    let mut decoded = b"before".to_vec();
    let read_header = decode_into(&out[6..], LOCATION, &mut decoded).unwrap();
    assert_eq!(read_header, header);
    assert_eq!(&decoded[..6], b"before");
    assert_eq!(decoded[6..], payload);
    // A failed decode leaves the output as it was.
    let mut corrupt = out[6..].to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(decode_into(&corrupt, LOCATION, &mut decoded).is_err());
    assert_eq!(decoded.len(), 6 + payload.len());
}
