//! Grid geometry against a naive model (seeded random shapes), and element
//! conversion exactness.

mod common;

use common::naive_chunk;
use half::{bf16, f16};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_array::chunk::{decode_elements, encode_elements};
use strata_array::dtype::{ComputeType, DataType, ALL_DATA_TYPES};
use strata_array::mem::MemArray;
use strata_array::meta::ArrayMeta;
use strata_array::ChunkSource;

#[test]
fn grid_geometry_matches_a_naive_model() {
    for seed in 0..200u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let rank = rng.gen_range(1..=4);
        let shape: Vec<u64> = (0..rank).map(|_| rng.gen_range(0..9)).collect();
        let chunk_shape: Vec<u64> = (0..rank).map(|_| rng.gen_range(1..6)).collect();
        let meta = ArrayMeta::new(shape.clone(), chunk_shape.clone(), DataType::I32).unwrap();
        meta.check_invariants();
        let grid: Vec<u64> = shape
            .iter()
            .zip(&chunk_shape)
            .map(|(s, c)| s.div_ceil(*c))
            .collect();
        assert_eq!(meta.grid_shape(), grid, "seed {seed}");
        assert_eq!(
            meta.chunk_count(),
            grid.iter().product::<u64>(),
            "seed {seed}"
        );
        // Chunks tile the array exactly once.
        let mut covered = 0;
        for (linear, grid_index) in meta.grid_indices().enumerate() {
            assert_eq!(
                meta.grid_index_to_linear(&grid_index),
                linear as u64,
                "seed {seed}"
            );
            assert_eq!(
                meta.linear_to_grid_index(linear as u64),
                grid_index,
                "seed {seed}"
            );
            let region = meta.chunk_region(&grid_index);
            for d in 0..rank {
                assert_eq!(
                    region.start[d],
                    grid_index[d] * chunk_shape[d],
                    "seed {seed}"
                );
                assert_eq!(
                    region.shape[d],
                    chunk_shape[d].min(shape[d] - region.start[d]),
                    "seed {seed}"
                );
            }
            covered += meta.chunk_element_count_at(&grid_index);
        }
        assert_eq!(covered, meta.element_count(), "seed {seed}");
        // Chunk reads (run-based) equal the naive element-by-element cut.
        let whole: Vec<u8> = (0..meta.len_bytes())
            .map(|i| (i * 7 + seed) as u8)
            .collect();
        let array = MemArray::from_bytes("m", meta.clone(), whole.clone()).unwrap();
        for grid_index in meta.grid_indices() {
            let mut out = vec![0u8; meta.chunk_len_bytes_at(&grid_index)];
            array.read_chunk(&grid_index, &mut out).unwrap();
            assert_eq!(
                out,
                naive_chunk(&meta, &whole, &grid_index),
                "seed {seed} chunk {grid_index:?}"
            );
        }
        let outside: Vec<u64> = grid.clone();
        assert!(!meta.contains_grid_index(&outside), "seed {seed}");
    }
}

#[test]
fn zero_length_dimensions_have_no_chunks() {
    let meta = ArrayMeta::new(vec![4, 0], vec![2, 3], DataType::F64).unwrap();
    assert_eq!(meta.grid_shape(), vec![2, 0]);
    assert_eq!(meta.chunk_count(), 0);
    assert_eq!(meta.grid_indices().count(), 0);
    assert!(!meta.contains_grid_index(&[0, 0]));
}

#[test]
fn dtype_names_and_compute_types() {
    let expected = [
        (DataType::F32, "float32", Some("<f4"), 4, ComputeType::F32),
        (DataType::F64, "float64", Some("<f8"), 8, ComputeType::F64),
        (DataType::I32, "int32", Some("<i4"), 4, ComputeType::F64),
        (DataType::I64, "int64", Some("<i8"), 8, ComputeType::F64),
        (DataType::U8, "uint8", Some("|u1"), 1, ComputeType::F32),
        (DataType::F16, "float16", Some("<f2"), 2, ComputeType::F32),
        (DataType::BF16, "bfloat16", None, 2, ComputeType::F32),
    ];
    for (dtype, name, descr, size, compute) in expected {
        assert_eq!(dtype.numpy_name(), name);
        assert_eq!(dtype.zarr_name(), name);
        assert_eq!(DataType::from_zarr_name(name), Some(dtype));
        assert_eq!(dtype.numpy_descr(), descr);
        if let Some(descr) = descr {
            assert_eq!(DataType::from_numpy_descr(descr), Some(dtype));
        }
        assert_eq!(dtype.size_bytes(), size);
        assert_eq!(dtype.compute_type(), compute);
    }
    assert_eq!(ALL_DATA_TYPES.len(), expected.len());
    assert_eq!(DataType::from_numpy_descr(">f4"), None);
    assert_eq!(DataType::from_numpy_descr("<u1"), Some(DataType::U8));
}

#[test]
fn half_types_convert_exactly_for_every_finite_value() {
    // Every finite f16 and bf16 bit pattern: decode to f32 and f64, encode
    // back, and get the same bits.
    for bits in 0..=u16::MAX {
        for dtype in [DataType::F16, DataType::BF16] {
            let (value, finite) = match dtype {
                DataType::F16 => (
                    f16::from_bits(bits).to_f64(),
                    f16::from_bits(bits).is_finite(),
                ),
                _ => (
                    bf16::from_bits(bits).to_f64(),
                    bf16::from_bits(bits).is_finite(),
                ),
            };
            if !finite {
                continue;
            }
            let stored = bits.to_le_bytes();
            let mut as_f32 = [0f32];
            decode_elements(dtype, &stored, &mut as_f32);
            let mut as_f64 = [0f64];
            decode_elements(dtype, &stored, &mut as_f64);
            assert_eq!(
                f64::from(as_f32[0]).to_bits(),
                value.to_bits(),
                "{dtype} bits {bits:#06x}"
            );
            assert_eq!(
                as_f64[0].to_bits(),
                value.to_bits(),
                "{dtype} bits {bits:#06x}"
            );
            let mut back = [0u8; 2];
            encode_elements(dtype, &as_f32, &mut back);
            assert_eq!(
                u16::from_le_bytes(back),
                bits,
                "{dtype} via f32, bits {bits:#06x}"
            );
            encode_elements(dtype, &as_f64, &mut back);
            assert_eq!(
                u16::from_le_bytes(back),
                bits,
                "{dtype} via f64, bits {bits:#06x}"
            );
        }
    }
}

#[test]
fn encoding_rounds_once_and_saturates_integers() {
    let mut out = [0u8; 4 * 6];
    encode_elements(
        DataType::I32,
        &[2.5f64, 3.5, -2.5, 1e12, -1e12, f64::NAN],
        &mut out,
    );
    let ints: Vec<i32> = out
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(ints, vec![2, 4, -2, i32::MAX, i32::MIN, 0]);
    let mut bytes = [0u8; 4];
    encode_elements(DataType::U8, &[-3.0f32, 255.4, 256.0, 127.5], &mut bytes);
    assert_eq!(bytes, [0, 255, 255, 128]);
    // f64 -> f16 in one rounding: 1 + 2^-11 + 2^-30 is just above the tie
    // between 1 and 1 + 2^-10, so it rounds up; via f32 it would tie to 1.
    let mut half = [0u8; 2];
    encode_elements(
        DataType::F16,
        &[1.0 + 2f64.powi(-11) + 2f64.powi(-30)],
        &mut half,
    );
    assert_eq!(
        f16::from_bits(u16::from_le_bytes(half)).to_f64(),
        1.0 + 2f64.powi(-10)
    );
    // i64 beyond 2^53 rounds to nearest.
    let big = (1i64 << 53) + 1;
    let mut as_f64 = [0f64];
    decode_elements(DataType::I64, &big.to_le_bytes(), &mut as_f64);
    assert_eq!(as_f64[0], (1u64 << 53) as f64);
}
