//! Streaming elementwise operations against a naive in-memory reference,
//! over every op, dtypes, shapes with ragged edge chunks, inputs chunked
//! differently, and budgets from the smallest working set up; plus the
//! failure modes.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_array::chunk::{decode_elements, encode_elements, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::error::ArrayError;
use strata_array::mem::MemArray;
use strata_array::meta::ArrayMeta;
use strata_ooc::contract::{Engine, PolicyKind, RunConfig};
use strata_ooc::map::{MapJob, MapOp};
use strata_ooc::stream::StreamError;
use strata_pool::budget::MemoryPool;

/// Unit roundoff of the compute type of `dtype` (f64 for f64, i64 and i32).
fn compute_roundoff(dtype: DataType) -> f64 {
    if matches!(dtype, DataType::F64 | DataType::I64 | DataType::I32) {
        f64::EPSILON / 2.0
    } else {
        f64::from(f32::EPSILON) / 2.0
    }
}

/// Values exactly representable in `dtype` (and in its compute type);
/// never zero, so quotients are finite.
fn random_values(rng: &mut SmallRng, dtype: DataType, count: usize) -> Vec<f64> {
    (0..count)
        .map(|_| {
            let v = match dtype {
                DataType::U8 => f64::from(rng.gen_range(0u8..=255)),
                DataType::I32 | DataType::I64 => f64::from(rng.gen_range(-100_000i32..100_000)),
                DataType::F16 | DataType::BF16 => f64::from(rng.gen_range(-128i32..128)) / 64.0,
                DataType::F32 => f64::from(rng.gen_range(-1.0f32..1.0)),
                _ => rng.gen_range(-1.0f64..1.0),
            };
            if v == 0.0 {
                1.0
            } else {
                v
            }
        })
        .collect()
}

fn mem_array(
    name: &str,
    shape: &[u64],
    chunks: &[u64],
    dtype: DataType,
    values: &[f64],
) -> MemArray {
    let meta = ArrayMeta::new(shape.to_vec(), chunks.to_vec(), dtype).unwrap();
    let mut bytes = vec![0u8; values.len() * dtype.size_bytes()];
    encode_elements::<f64>(dtype, values, &mut bytes);
    MemArray::from_bytes(name, meta, bytes).unwrap()
}

/// The naive operation in f64 on element `i` of the inputs.
fn naive(op: MapOp, inputs: &[Vec<f64>], i: usize) -> f64 {
    let a = inputs[0][i];
    match op {
        MapOp::Add => a + inputs[1][i],
        MapOp::Sub => a - inputs[1][i],
        MapOp::Mul => a * inputs[1][i],
        MapOp::Div => a / inputs[1][i],
        MapOp::Min => a.min(inputs[1][i]),
        MapOp::Max => a.max(inputs[1][i]),
        MapOp::Fma => a.mul_add(inputs[1][i], inputs[2][i]),
        MapOp::Scale { scale, offset } => a.mul_add(scale, offset),
        _ => unreachable!("{op:?}"),
    }
}

/// The smallest budget the job accepts, from the refusal of a 1-byte one.
fn needed_budget(op: MapOp, inputs: &[&dyn ChunkSource], out: DataType) -> u64 {
    match MapJob::new(op, inputs, out, 1) {
        Err(StreamError::BudgetTooSmall { needed_bytes, .. }) => needed_bytes,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a 1-byte budget was accepted"),
    }
}

/// Runs `op` on inputs of `shape`, chunked as `chunks` (one per input), at
/// budgets from the smallest up, against the naive reference.
fn check(
    op: MapOp,
    shape: &[u64],
    chunks: &[&[u64]],
    dtype: DataType,
    out_dtype: DataType,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let count = shape.iter().product::<u64>() as usize;
    let values: Vec<Vec<f64>> = (0..op.arity())
        .map(|_| random_values(&mut rng, dtype, count))
        .collect();
    let arrays: Vec<MemArray> = (0..op.arity())
        .map(|n| mem_array(["a", "b", "c"][n], shape, chunks[n], dtype, &values[n]))
        .collect();
    let inputs: Vec<&dyn ChunkSource> = arrays.iter().map(|a| a as &dyn ChunkSource).collect();
    let u = compute_roundoff(dtype);
    let u_out = compute_roundoff(out_dtype);
    let exact = matches!(op, MapOp::Min | MapOp::Max);
    let needed = needed_budget(op, &inputs, out_dtype);
    let context = format!("{op:?} {dtype}->{out_dtype} {shape:?} chunks {chunks:?} seed {seed}");
    for (round, budget_bytes) in [needed, needed + needed / 2, needed * 4, 16 << 20]
        .into_iter()
        .enumerate()
    {
        let job = MapJob::new(op, &inputs, out_dtype, budget_bytes)
            .unwrap_or_else(|e| panic!("{context} budget {budget_bytes}: {e}"));
        if budget_bytes == needed && shape == [64, 64] {
            let tile: u64 = job.output_meta().chunk_shape().iter().product();
            assert!(
                tile < 64 * 64,
                "{context}: tiles of {tile} elements at the smallest budget"
            );
        }
        if budget_bytes == 16 << 20 {
            assert_eq!(
                job.output_meta().chunk_shape(),
                chunks[0],
                "{context}: tiled like a"
            );
        }
        let out = MemArray::zeroed("out", job.output_meta());
        let engine = Engine::new(budget_bytes).unwrap();
        let config = RunConfig {
            budget_bytes,
            policy: PolicyKind::ALL[round % PolicyKind::ALL.len()],
            prefetch: round % 2 == 1 || budget_bytes > needed,
            gemm_threads: 1,
        };
        let report = job
            .run(&engine, &out, &config, &mut |_| {})
            .unwrap_or_else(|e| panic!("{context} budget {budget_bytes}: {e}"));
        assert!(out.is_complete(), "{context}");
        assert!(
            report.peak_reserved_bytes <= budget_bytes,
            "{context}: peak reserved {} > budget {budget_bytes}",
            report.peak_reserved_bytes
        );
        assert_eq!(engine.budget().reserved(), 0, "{context}: all returned");
        assert_eq!(
            report.written_bytes,
            out.to_bytes().len() as u64,
            "{context}"
        );
        let mut got = vec![0.0f64; count];
        decode_elements::<f64>(out_dtype, &out.to_bytes(), &mut got);
        for (i, &got) in got.iter().enumerate() {
            let want = naive(op, &values, i);
            // One rounding in the compute type (the reference rounds once
            // in f64), one in the store.
            let bound = if exact {
                0.0
            } else {
                (u + f64::EPSILON) * want.abs() * (1.0 + u_out) + u_out * want.abs()
            };
            assert!(
                (want - got).abs() <= bound,
                "{context} budget {budget_bytes}: element {i}: want {want}, got {got}, bound {bound}"
            );
        }
    }
}

const SHAPE_2D: &[u64] = &[45, 70];
const A_CHUNKS_2D: &[u64] = &[16, 32];
const B_CHUNKS_2D: &[u64] = &[7, 70];
const C_CHUNKS_2D: &[u64] = &[45, 9];

#[test]
fn every_binary_op_matches_naive_at_every_budget() {
    for (o, op) in MapOp::BINARY.into_iter().enumerate() {
        check(
            op,
            SHAPE_2D,
            &[A_CHUNKS_2D, B_CHUNKS_2D],
            DataType::F32,
            DataType::F32,
            100 + o as u64,
        );
        // Same chunking, and a 3-d shape with ragged chunks both ways.
        check(
            op,
            SHAPE_2D,
            &[A_CHUNKS_2D, A_CHUNKS_2D],
            DataType::F32,
            DataType::F64,
            110 + o as u64,
        );
        check(
            op,
            &[3, 20, 30],
            &[&[2, 7, 16], &[3, 6, 5]],
            DataType::F32,
            DataType::F32,
            120 + o as u64,
        );
        // One big chunk: at the smallest budgets the tiles shrink below it.
        check(
            op,
            &[64, 64],
            &[&[64, 64], &[64, 64]],
            DataType::F32,
            DataType::F32,
            130 + o as u64,
        );
    }
}

#[test]
fn fma_and_scale_match_naive() {
    check(
        MapOp::Fma,
        SHAPE_2D,
        &[A_CHUNKS_2D, B_CHUNKS_2D, C_CHUNKS_2D],
        DataType::F32,
        DataType::F32,
        200,
    );
    check(
        MapOp::Fma,
        &[64],
        &[&[10], &[64], &[7]],
        DataType::F64,
        DataType::F64,
        201,
    );
    let scale = MapOp::Scale {
        scale: 0.375,
        offset: -2.5,
    };
    check(
        scale,
        SHAPE_2D,
        &[A_CHUNKS_2D],
        DataType::F32,
        DataType::F32,
        202,
    );
    check(
        scale,
        &[5, 6, 7, 4],
        &[&[2, 6, 3, 3]],
        DataType::F16,
        DataType::F64,
        203,
    );
}

#[test]
fn every_dtype_matches_naive() {
    for (d, dtype) in [
        DataType::F64,
        DataType::I32,
        DataType::U8,
        DataType::F16,
        DataType::I64,
        DataType::BF16,
    ]
    .into_iter()
    .enumerate()
    {
        let compute_dtype = if compute_roundoff(dtype) < 1e-10 {
            DataType::F64
        } else {
            DataType::F32
        };
        for (o, op) in MapOp::BINARY.into_iter().enumerate() {
            // Min and max are exact in the inputs' own type.
            let out = if matches!(op, MapOp::Min | MapOp::Max) {
                dtype
            } else {
                compute_dtype
            };
            check(
                op,
                SHAPE_2D,
                &[A_CHUNKS_2D, B_CHUNKS_2D],
                dtype,
                out,
                300 + 10 * d as u64 + o as u64,
            );
        }
        check(
            MapOp::Fma,
            &[20, 9],
            &[&[8, 4], &[20, 1], &[3, 9]],
            dtype,
            compute_dtype,
            390 + d as u64,
        );
    }
}

#[test]
fn integer_sums_store_exactly_in_integer_outputs() {
    // Sums of i32 values below 2^23 are exact in f32 and in i64.
    check(
        MapOp::Add,
        SHAPE_2D,
        &[A_CHUNKS_2D, B_CHUNKS_2D],
        DataType::I32,
        DataType::I64,
        400,
    );
    check(
        MapOp::Max,
        SHAPE_2D,
        &[A_CHUNKS_2D, B_CHUNKS_2D],
        DataType::U8,
        DataType::I32,
        401,
    );
}

/// Runs `op` on small inputs within 1 MiB, returning the output.
fn run_small(op: MapOp, inputs: &[&dyn ChunkSource], out_dtype: DataType) -> MemArray {
    let job = MapJob::new(op, inputs, out_dtype, 1 << 20).unwrap();
    let out = MemArray::zeroed("out", job.output_meta());
    job.run(
        &Engine::new(1 << 20).unwrap(),
        &out,
        &RunConfig::with_budget(1 << 20),
        &mut |_| {},
    )
    .unwrap();
    out
}

#[test]
fn large_i32_values_add_exactly() {
    // 2^24 + 1 and its neighbours are not f32 values: computed in f32 the sum
    // would come back rounded. i32 computes in f64, so it is exact.
    let big = f64::from((1i32 << 24) + 1);
    let a_values = [big, -big, big + 2.0, f64::from(i32::MAX) - 1.0];
    let b_values = [2.0, -2.0, 1_000_000_007.0 - big - 2.0, 1.0];
    let a = mem_array("a", &[4], &[3], DataType::I32, &a_values);
    let b = mem_array("b", &[4], &[2], DataType::I32, &b_values);
    let out = run_small(MapOp::Add, &[&a, &b], DataType::I32);
    let mut got = vec![0f64; 4];
    decode_elements::<f64>(DataType::I32, &out.to_bytes(), &mut got);
    let want: Vec<f64> = a_values.iter().zip(&b_values).map(|(x, y)| x + y).collect();
    assert_eq!(got, want);
}

#[test]
fn nan_propagates_through_min_and_max() {
    let a = mem_array(
        "a",
        &[4],
        &[3],
        DataType::F32,
        &[f64::NAN, 1.0, 2.0, f64::INFINITY],
    );
    let b = mem_array("b", &[4], &[2], DataType::F32, &[0.0, f64::NAN, 3.0, 1.0]);
    for (op, want) in [(MapOp::Min, [2.0, 1.0]), (MapOp::Max, [3.0, f64::INFINITY])] {
        let out = run_small(op, &[&a, &b], DataType::F64);
        let mut got = [0.0; 4];
        decode_elements::<f64>(DataType::F64, &out.to_bytes(), &mut got);
        assert!(got[0].is_nan() && got[1].is_nan(), "{op:?}: {got:?}");
        assert_eq!(got[2..], want, "{op:?}");
    }
}

#[test]
fn mismatched_inputs_are_refused_naming_both() {
    let a = mem_array("left.zarr", &[8, 5], &[4, 5], DataType::F32, &[1.0; 40]);
    let wide = mem_array("wide.zarr", &[8, 6], &[4, 3], DataType::F32, &[1.0; 48]);
    let double = mem_array("double.npy", &[8, 5], &[8, 5], DataType::F64, &[1.0; 40]);
    let Err(error) = MapJob::new(MapOp::Add, &[&a, &wide], DataType::F32, 1 << 20) else {
        panic!("[8, 5] + [8, 6] accepted");
    };
    let text = error.to_string();
    assert!(matches!(error, StreamError::ShapeMismatch { .. }), "{text}");
    assert!(
        text.contains("left.zarr") && text.contains("wide.zarr") && text.contains("[8, 6]"),
        "{text}"
    );
    let Err(error) = MapJob::new(MapOp::Fma, &[&a, &a, &double], DataType::F32, 1 << 20) else {
        panic!("float32 * float32 + float64 accepted");
    };
    let text = error.to_string();
    assert!(matches!(error, StreamError::DtypeMismatch { .. }), "{text}");
    assert!(
        text.contains("left.zarr") && text.contains("double.npy") && text.contains("float64"),
        "{text}"
    );
    let Err(error) = MapJob::new(MapOp::Fma, &[&a, &a], DataType::F32, 1 << 20) else {
        panic!("fma of two accepted");
    };
    assert!(
        matches!(
            error,
            StreamError::Arity {
                expected: 3,
                found: 2,
                ..
            }
        ),
        "{error}"
    );
    // A destination of another shape or type is refused before anything runs.
    let job = MapJob::new(MapOp::Sub, &[&a, &a], DataType::F32, 1 << 20).unwrap();
    let out = MemArray::zeroed(
        "out.zarr",
        ArrayMeta::new(vec![8, 5], vec![4, 5], DataType::F64).unwrap(),
    );
    let error = job
        .run(
            &Engine::new(1 << 20).unwrap(),
            &out,
            &RunConfig::with_budget(1 << 20),
            &mut |_| {},
        )
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, StreamError::Destination { .. }), "{text}");
    assert!(
        text.contains("out.zarr") && text.contains("left.zarr") && text.contains("float64"),
        "{text}"
    );
    assert!(!out.is_complete());
}

#[test]
fn too_small_budget_says_what_it_needs() {
    let a = mem_array("a", &[64, 64], &[32, 32], DataType::I32, &[1.0; 4096]);
    let b = mem_array("b", &[64, 64], &[64, 8], DataType::I32, &[1.0; 4096]);
    let needed = needed_budget(MapOp::Mul, &[&a, &b], DataType::F32);
    let Err(error) = MapJob::new(MapOp::Mul, &[&a, &b], DataType::F32, needed - 1) else {
        panic!("a budget below the smallest working set ({needed}) was accepted");
    };
    assert!(
        matches!(error, StreamError::BudgetTooSmall { needed_bytes, budget_bytes } if needed_bytes == needed && budget_bytes == needed - 1),
        "{error}"
    );
    assert!(error.to_string().contains(&needed.to_string()), "{error}");
    let job = MapJob::new(MapOp::Mul, &[&a, &b], DataType::F32, needed).unwrap();
    assert_eq!(job.memory().total_bytes(), needed);
}

/// A source whose chunk `bad` fails.
struct Failing {
    inner: MemArray,
    bad: Vec<u64>,
}

impl ChunkSource for Failing {
    fn meta(&self) -> &ArrayMeta {
        ChunkSource::meta(&self.inner)
    }
    fn name(&self) -> &str {
        "failing.zarr"
    }
    fn read_chunk(&self, grid_index: &[u64], out: &mut [u8]) -> Result<(), ArrayError> {
        if grid_index == self.bad.as_slice() {
            return Err(ArrayError::CorruptChunk {
                array: "failing.zarr".into(),
                chunk: grid_index.to_vec(),
                detail: "crc32c mismatch (injected)".into(),
            });
        }
        self.inner.read_chunk(grid_index, out)
    }
}

#[test]
fn failing_source_chunk_leaves_the_destination_incomplete() {
    for prefetch in [false, true] {
        let a = mem_array("a", &[32, 32], &[8, 8], DataType::F32, &[1.0; 1024]);
        let b = Failing {
            inner: mem_array("b", &[32, 32], &[4, 16], DataType::F32, &[1.0; 1024]),
            bad: vec![5, 1],
        };
        let job = MapJob::new(MapOp::Div, &[&a, &b], DataType::F32, 1 << 20).unwrap();
        let out = MemArray::zeroed("out", job.output_meta());
        let engine = Engine::new(1 << 20).unwrap();
        let config = RunConfig {
            prefetch,
            ..RunConfig::with_budget(1 << 20)
        };
        let error = job.run(&engine, &out, &config, &mut |_| {}).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, StreamError::Engine(_)), "{text}");
        assert!(
            text.contains("[5, 1]") && text.contains("failing.zarr"),
            "{text}"
        );
        assert!(!out.is_complete(), "prefetch {prefetch}");
        assert_eq!(engine.budget().reserved(), 0, "prefetch {prefetch}");
    }
}

#[test]
fn each_chunk_is_read_once_when_chunkings_nest() {
    // b's chunks are whole multiples of a's along each axis... the other
    // way round: a's chunk [16, 32] holds b's [8, 32] twice, so each b
    // chunk meets exactly one output tile.
    let a = mem_array("a", &[32, 64], &[16, 32], DataType::F32, &[2.0; 2048]);
    let b = mem_array("b", &[32, 64], &[8, 32], DataType::F32, &[3.0; 2048]);
    let job = MapJob::new(MapOp::Mul, &[&a, &b], DataType::F32, 1 << 20).unwrap();
    let out = MemArray::zeroed("out", job.output_meta());
    let config = RunConfig {
        prefetch: false,
        ..RunConfig::with_budget(1 << 20)
    };
    let report = job
        .run(&Engine::new(1 << 20).unwrap(), &out, &config, &mut |_| {})
        .unwrap();
    assert_eq!(report.accesses, 4 + 8);
    assert_eq!(report.read_bytes, report.input_bytes);
    assert_eq!(report.tiles_written, 4);
    let mut got = vec![0f32; 2048];
    decode_elements::<f32>(DataType::F32, &out.to_bytes(), &mut got);
    assert!(got.iter().all(|&v| v == 6.0));
}
