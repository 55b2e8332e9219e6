//! Streaming reductions against a naive in-memory reference, over every
//! op, dtypes, shapes with ragged edge chunks, axes sets and budgets from
//! the smallest working set up; chunk-shape independence of sums; and the
//! failure modes.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_array::chunk::{decode_elements, encode_elements, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::error::ArrayError;
use strata_array::mem::MemArray;
use strata_array::meta::ArrayMeta;
use strata_ooc::contract::{Engine, PolicyKind, Progress, RunConfig};
use strata_ooc::reduce::{ReduceJob, ReduceOp};
use strata_ooc::stream::StreamError;
use strata_pool::budget::MemoryPool;

/// Unit roundoff of the compute type of `dtype` (f64 for f64 and i64).
fn compute_roundoff(dtype: DataType) -> f64 {
    if matches!(dtype, DataType::F64 | DataType::I64) {
        f64::EPSILON / 2.0
    } else {
        f64::from(f32::EPSILON) / 2.0
    }
}

/// Unit roundoff of storing into `dtype` (0 for the exact cases here).
fn store_roundoff(dtype: DataType) -> f64 {
    match dtype {
        DataType::F64 => f64::EPSILON / 2.0,
        DataType::F32 => f64::from(f32::EPSILON) / 2.0,
        DataType::F16 => 2f64.powi(-11),
        DataType::BF16 => 2f64.powi(-8),
        _ => 0.5, // integers round to nearest: checked separately
    }
}

/// Values exactly representable in `dtype` (and in its compute type).
fn random_values(rng: &mut SmallRng, dtype: DataType, count: usize) -> Vec<f64> {
    (0..count)
        .map(|_| match dtype {
            DataType::U8 => f64::from(rng.gen_range(0u8..=255)),
            DataType::I32 | DataType::I64 => f64::from(rng.gen_range(-100_000i32..100_000)),
            // Multiples of 1/64 in [-2, 2): exact in f16 and bf16.
            DataType::F16 | DataType::BF16 => f64::from(rng.gen_range(-128i32..128)) / 64.0,
            DataType::F32 => f64::from(rng.gen_range(-1.0f32..1.0)),
            _ => rng.gen_range(-1.0f64..1.0),
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

/// The naive reduction in f64 (exact for these inputs up to f64
/// rounding): per output element (kept axes, C order) the result, the sum
/// of |x| and the number of terms.
fn naive(values: &[f64], shape: &[u64], axes: &[usize], op: ReduceOp) -> (Vec<f64>, Vec<f64>, u64) {
    let rank = shape.len();
    let kept: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
    let out_len: u64 = kept.iter().map(|&d| shape[d]).product();
    let count: u64 = axes.iter().map(|&d| shape[d]).product();
    let mut out = vec![
        match op {
            ReduceOp::Min => f64::INFINITY,
            ReduceOp::Max => f64::NEG_INFINITY,
            _ => 0.0,
        };
        out_len as usize
    ];
    let mut magnitude = vec![0.0; out_len as usize];
    let mut index = vec![0u64; rank];
    for &x in values {
        let o = kept.iter().fold(0u64, |o, &d| o * shape[d] + index[d]) as usize;
        match op {
            ReduceOp::Min => out[o] = out[o].min(x),
            ReduceOp::Max => out[o] = out[o].max(x),
            _ => out[o] += x,
        }
        magnitude[o] += x.abs();
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    if op == ReduceOp::Mean {
        out.iter_mut().for_each(|v| *v /= count as f64);
    }
    (out, magnitude, count)
}

/// The smallest budget the job accepts, from the refusal of a 1-byte one.
fn needed_budget(source: &dyn ChunkSource, op: ReduceOp, axes: &[usize], out: DataType) -> u64 {
    match ReduceJob::new(source, op, axes, false, out, 1) {
        Err(StreamError::BudgetTooSmall {
            budget_bytes,
            needed_bytes,
        }) => {
            assert_eq!(budget_bytes, 1);
            needed_bytes
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a 1-byte budget was accepted"),
    }
}

struct Case {
    shape: &'static [u64],
    chunks: &'static [u64],
    axes_sets: &'static [&'static [usize]],
}

const CASES: &[Case] = &[
    Case {
        shape: &[45, 70],
        chunks: &[16, 32],
        axes_sets: &[&[], &[0], &[1], &[0, 1]],
    },
    Case {
        shape: &[3, 20, 30],
        chunks: &[2, 7, 16],
        axes_sets: &[&[1], &[0, 2], &[2], &[0, 1, 2]],
    },
    // One big chunk: with no axis reduced the accumulators of a whole
    // chunk do not fit the smallest budget, so tiles shrink and the chunk
    // is read once per tile.
    Case {
        shape: &[64, 48],
        chunks: &[64, 48],
        axes_sets: &[&[], &[0], &[1]],
    },
    Case {
        shape: &[64],
        chunks: &[10],
        axes_sets: &[&[], &[0]],
    },
    Case {
        shape: &[5, 6, 7, 4],
        chunks: &[2, 6, 3, 3],
        axes_sets: &[&[3], &[0, 2], &[1, 3]],
    },
];

/// Runs `op` over `axes` at several budgets from the smallest up and
/// checks every output element against the naive reference.
fn check(
    case_shape: &[u64],
    chunks: &[u64],
    dtype: DataType,
    axes: &[usize],
    op: ReduceOp,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let values = random_values(&mut rng, dtype, case_shape.iter().product::<u64>() as usize);
    let source = mem_array("x", case_shape, chunks, dtype, &values);
    // Min and max are exact in the input's own type; sums go to the
    // compute type's.
    let out_dtype = match op {
        ReduceOp::Min | ReduceOp::Max => dtype,
        _ if compute_roundoff(dtype) < 1e-10 => DataType::F64,
        _ => DataType::F32,
    };
    let (expected, magnitude, count) = naive(&values, case_shape, axes, op);
    let u = compute_roundoff(dtype);
    let u_out = store_roundoff(out_dtype);
    let needed = needed_budget(&source, op, axes, out_dtype);
    let context = format!("{op:?} {dtype} {case_shape:?}/{chunks:?} axes {axes:?} seed {seed}");
    for (round, budget_bytes) in [needed, needed + needed / 2, needed * 4, 16 << 20]
        .into_iter()
        .enumerate()
    {
        let job = ReduceJob::new(&source, op, axes, false, out_dtype, budget_bytes)
            .unwrap_or_else(|e| panic!("{context} budget {budget_bytes}: {e}"));
        assert_eq!(job.memory().total_bytes(), budget_bytes, "{context}");
        let out = MemArray::zeroed("out", job.output_meta());
        let engine = Engine::new(budget_bytes).unwrap();
        let config = RunConfig {
            budget_bytes,
            policy: PolicyKind::ALL[round % PolicyKind::ALL.len()],
            prefetch: round % 2 == 0 || budget_bytes > needed,
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
        assert!(
            engine.budget().peak_bytes() <= budget_bytes,
            "{context}: pool peak {} > budget {budget_bytes}",
            engine.budget().peak_bytes()
        );
        assert_eq!(engine.budget().reserved(), 0, "{context}: all returned");
        assert!(report.read_bytes >= report.input_bytes, "{context}");
        let mut got = vec![0.0f64; expected.len()];
        decode_elements::<f64>(out_dtype, &out.to_bytes(), &mut got);
        for (i, ((&want, &got), &mag)) in expected.iter().zip(&got).zip(&magnitude).enumerate() {
            let bound = match op {
                ReduceOp::Min | ReduceOp::Max => 0.0,
                _ => {
                    // Compensated summation, then (mean) a division, then
                    // the store.
                    let n = count as f64;
                    let sum_bound = (2.0 * u + 4.0 * n * u * u) * mag;
                    let scaled = if op == ReduceOp::Mean {
                        sum_bound / n
                    } else {
                        sum_bound
                    };
                    let divide = if op == ReduceOp::Mean {
                        u * want.abs()
                    } else {
                        0.0
                    };
                    (scaled + divide) * (1.0 + u_out) + u_out * want.abs() + f64::MIN_POSITIVE
                }
            };
            assert!(
                (want - got).abs() <= bound,
                "{context} budget {budget_bytes}: element {i}: want {want}, got {got}, bound {bound}"
            );
        }
    }
}

#[test]
fn every_op_and_axes_set_matches_naive_at_every_budget() {
    for (n, case) in CASES.iter().enumerate() {
        for (a, axes) in case.axes_sets.iter().enumerate() {
            for (o, op) in ReduceOp::ALL.into_iter().enumerate() {
                check(
                    case.shape,
                    case.chunks,
                    DataType::F32,
                    axes,
                    op,
                    1000 + 100 * n as u64 + 10 * a as u64 + o as u64,
                );
            }
        }
    }
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
        for (o, op) in ReduceOp::ALL.into_iter().enumerate() {
            check(
                &[45, 70],
                &[16, 32],
                dtype,
                &[1],
                op,
                2000 + 10 * d as u64 + o as u64,
            );
            check(
                &[3, 20, 30],
                &[2, 7, 16],
                dtype,
                &[0, 2],
                op,
                2500 + 10 * d as u64 + o as u64,
            );
        }
    }
}

/// Runs a job at `budget_bytes` and returns the output as f64.
fn run_to_vec(
    source: &dyn ChunkSource,
    op: ReduceOp,
    axes: &[usize],
    keepdims: bool,
    out_dtype: DataType,
    budget_bytes: u64,
) -> (Vec<f64>, ArrayMeta) {
    let job = ReduceJob::new(source, op, axes, keepdims, out_dtype, budget_bytes).unwrap();
    let out = MemArray::zeroed("out", job.output_meta());
    let engine = Engine::new(budget_bytes).unwrap();
    job.run(
        &engine,
        &out,
        &RunConfig::with_budget(budget_bytes),
        &mut |_| {},
    )
    .unwrap();
    let meta = job.output_meta();
    let mut values = vec![0.0; meta.element_count() as usize];
    decode_elements::<f64>(out_dtype, &out.to_bytes(), &mut values);
    (values, meta)
}

#[test]
fn tiles_shrink_under_a_small_budget() {
    let source = mem_array("x", &[64, 48], &[64, 48], DataType::F32, &[0.5; 64 * 48]);
    let needed = needed_budget(&source, ReduceOp::Sum, &[], DataType::F32);
    let job = ReduceJob::new(&source, ReduceOp::Sum, &[], false, DataType::F32, needed).unwrap();
    let tiles: u64 = job.tile_shape().iter().product();
    assert!(
        tiles < 64 * 48,
        "tile {:?} at the smallest budget {needed}",
        job.tile_shape()
    );
    let tile_count = (64 * 48u64).div_ceil(tiles);
    let out = MemArray::zeroed("out", job.output_meta());
    let engine = Engine::new(needed).unwrap();
    let config = RunConfig {
        prefetch: false,
        ..RunConfig::with_budget(needed)
    };
    let report = job.run(&engine, &out, &config, &mut |_| {}).unwrap();
    assert_eq!(report.tiles_written, job.output_meta().chunk_count());
    assert!(
        tile_count > 1 && report.accesses >= tile_count,
        "{report:?}"
    );
    assert!(report.peak_reserved_bytes <= needed, "{report:?}");
    let mut got = vec![0f32; 64 * 48];
    decode_elements::<f32>(DataType::F32, &out.to_bytes(), &mut got);
    assert!(got.iter().all(|&v| v == 0.5));
}

#[test]
fn keepdims_keeps_reduced_axes_at_length_one() {
    let mut rng = SmallRng::seed_from_u64(3000);
    let shape = [6, 5, 9];
    let values = random_values(&mut rng, DataType::F32, 270);
    let source = mem_array("x", &shape, &[4, 2, 4], DataType::F32, &values);
    let (dropped, dropped_meta) = run_to_vec(
        &source,
        ReduceOp::Max,
        &[0, 2],
        false,
        DataType::F32,
        1 << 20,
    );
    let (kept, kept_meta) = run_to_vec(
        &source,
        ReduceOp::Max,
        &[0, 2],
        true,
        DataType::F32,
        1 << 20,
    );
    assert_eq!(dropped_meta.shape(), &[5]);
    assert_eq!(dropped_meta.chunk_shape(), &[2]);
    assert_eq!(kept_meta.shape(), &[1, 5, 1]);
    assert_eq!(kept_meta.chunk_shape(), &[1, 2, 1]);
    assert_eq!(dropped, kept);
    // Every axis reduced: a one-element array.
    let (all, all_meta) = run_to_vec(
        &source,
        ReduceOp::Min,
        &[0, 1, 2],
        false,
        DataType::F32,
        1 << 20,
    );
    assert_eq!(all_meta.shape(), &[1]);
    let (all_kept, all_kept_meta) = run_to_vec(
        &source,
        ReduceOp::Min,
        &[2, 0, 1],
        true,
        DataType::F32,
        1 << 20,
    );
    assert_eq!(all_kept_meta.shape(), &[1, 1, 1]);
    let want = values.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!((all[0], all_kept[0]), (want, want));
}

#[test]
fn sums_do_not_depend_on_chunk_shape() {
    // 60 000 terms near 1 in f32: a plain running sum drifts far past the
    // compensated bound, a compensated one stays inside it whatever the
    // chunking (which only reorders the terms).
    let seed = 4000;
    let mut rng = SmallRng::seed_from_u64(seed);
    let shape = [200u64, 300];
    let values: Vec<f64> = (0..60_000)
        .map(|_| f64::from(rng.gen_range(0.5f32..1.5)))
        .collect();
    let exact: f64 = values.iter().sum(); // f64: error ~1e-12, far below the f32 bound
    let magnitude: f64 = values.iter().map(|v| v.abs()).sum();
    let u = f64::from(f32::EPSILON) / 2.0;
    let n = values.len() as f64;
    let bound = (2.0 * u + 4.0 * n * u * u) * magnitude;
    let plain = values.iter().fold(0f32, |s, &v| s + v as f32);
    assert!(
        (f64::from(plain) - exact).abs() > 4.0 * bound,
        "seed {seed}: a plain f32 sum ({plain}, exact {exact}) should drift beyond the bound {bound}"
    );
    let mut sums = Vec::new();
    for chunks in [[200, 300], [7, 13], [64, 1], [1, 300], [33, 299]] {
        let source = mem_array("x", &shape, &chunks, DataType::F32, &values);
        let (all, _) = run_to_vec(
            &source,
            ReduceOp::Sum,
            &[0, 1],
            false,
            DataType::F64,
            1 << 20,
        );
        assert!(
            (all[0] - exact).abs() <= bound,
            "seed {seed} chunks {chunks:?}: sum {}, exact {exact}, bound {bound}",
            all[0]
        );
        // Per-row sums too (axis 1), against their own bounds.
        let (rows, _) = run_to_vec(&source, ReduceOp::Sum, &[1], false, DataType::F64, 1 << 20);
        for (r, &row) in rows.iter().enumerate() {
            let terms = &values[r * 300..(r + 1) * 300];
            let want: f64 = terms.iter().sum();
            let mag: f64 = terms.iter().map(|v| v.abs()).sum();
            let row_bound = (2.0 * u + 4.0 * 300.0 * u * u) * mag;
            assert!(
                (row - want).abs() <= row_bound,
                "seed {seed} chunks {chunks:?} row {r}: {row} vs {want}"
            );
        }
        sums.push((chunks, all[0]));
    }
    for (chunks, sum) in &sums {
        assert!(
            (sum - sums[0].1).abs() <= 2.0 * bound,
            "seed {seed}: chunks {chunks:?} sum {sum} vs chunks {:?} sum {}",
            sums[0].0,
            sums[0].1
        );
    }
}

#[test]
fn too_small_budget_says_what_it_needs() {
    let source = mem_array("x", &[64, 64], &[32, 32], DataType::F16, &vec![1.0; 4096]);
    let needed = needed_budget(&source, ReduceOp::Sum, &[0], DataType::F32);
    let Err(error) = ReduceJob::new(
        &source,
        ReduceOp::Sum,
        &[0],
        false,
        DataType::F32,
        needed - 1,
    ) else {
        panic!("a budget one byte below the smallest working set ({needed}) was accepted");
    };
    assert!(
        matches!(error, StreamError::BudgetTooSmall { needed_bytes, .. } if needed_bytes == needed),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains(&needed.to_string()) && text.contains("too small"),
        "{text}"
    );
    let job = ReduceJob::new(&source, ReduceOp::Sum, &[0], false, DataType::F32, needed).unwrap();
    // The smallest working set still caches two whole chunks (one in use,
    // one read ahead) in the compute type.
    assert!(
        job.memory().cache_bytes >= 2 * 32 * 32 * 4,
        "{:?}",
        job.memory()
    );
    // A run whose budget differs from the plan's is refused.
    let engine = Engine::new(needed * 2).unwrap();
    let out = MemArray::zeroed("out", job.output_meta());
    let error = job
        .run(
            &engine,
            &out,
            &RunConfig::with_budget(needed * 2),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(
        matches!(error, StreamError::BudgetChanged { .. }),
        "{error}"
    );
    assert!(!out.is_complete());
}

#[test]
fn bad_axes_are_refused() {
    let source = mem_array("x.zarr", &[4, 4], &[2, 2], DataType::F32, &[0.0; 16]);
    for (axes, repeated_want) in [
        (&[2usize][..], false),
        (&[1, 1][..], true),
        (&[0, 7][..], false),
    ] {
        let Err(error) =
            ReduceJob::new(&source, ReduceOp::Sum, axes, false, DataType::F32, 1 << 20)
        else {
            panic!("axes {axes:?} accepted");
        };
        assert!(
            matches!(error, StreamError::BadAxis { repeated, rank: 2, .. } if repeated == repeated_want),
            "axes {axes:?}: {error}"
        );
        assert!(error.to_string().contains("x.zarr"), "{error}");
    }
}

#[test]
fn destination_mismatch_names_both_arrays() {
    let source = mem_array("input.zarr", &[8, 6], &[4, 3], DataType::F32, &[1.0; 48]);
    let job = ReduceJob::new(&source, ReduceOp::Sum, &[0], false, DataType::F32, 1 << 20).unwrap();
    let engine = Engine::new(1 << 20).unwrap();
    for meta in [
        ArrayMeta::new(vec![8], vec![3], DataType::F32).unwrap(),
        ArrayMeta::new(vec![6], vec![3], DataType::F64).unwrap(),
    ] {
        let out = MemArray::zeroed("sum.zarr", meta);
        let error = job
            .run(&engine, &out, &RunConfig::with_budget(1 << 20), &mut |_| {})
            .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, StreamError::Destination { .. }), "{text}");
        assert!(
            text.contains("sum.zarr") && text.contains("input.zarr"),
            "{text}"
        );
        assert!(!out.is_complete());
    }
}

#[test]
fn nan_and_infinity_propagate() {
    let mut values = vec![1.0; 12];
    values[5] = f64::NAN; // row 1
    values[9] = f64::INFINITY; // row 2
    let source = mem_array("x", &[3, 4], &[2, 3], DataType::F32, &values);
    let (min, _) = run_to_vec(&source, ReduceOp::Min, &[1], false, DataType::F32, 1 << 20);
    let (max, _) = run_to_vec(&source, ReduceOp::Max, &[1], false, DataType::F32, 1 << 20);
    let (sum, _) = run_to_vec(&source, ReduceOp::Sum, &[1], false, DataType::F32, 1 << 20);
    assert_eq!((min[0], max[0], sum[0]), (1.0, 1.0, 4.0));
    assert!(
        min[1].is_nan() && max[1].is_nan() && sum[1].is_nan(),
        "{min:?} {max:?} {sum:?}"
    );
    assert_eq!(
        (min[2], max[2], sum[2]),
        (1.0, f64::INFINITY, f64::INFINITY)
    );
}

#[test]
fn progress_and_report_count_chunks_and_tiles() {
    let source = mem_array("x", &[10, 9], &[3, 4], DataType::U8, &[7.0; 90]);
    let budget_bytes = 1 << 20;
    let job = ReduceJob::new(
        &source,
        ReduceOp::Sum,
        &[0],
        false,
        DataType::F64,
        budget_bytes,
    )
    .unwrap();
    let out = MemArray::zeroed("out", job.output_meta());
    let engine = Engine::new(budget_bytes).unwrap();
    let config = RunConfig {
        prefetch: false,
        ..RunConfig::with_budget(budget_bytes)
    };
    let mut seen: Vec<Progress> = Vec::new();
    let report = job
        .run(&engine, &out, &config, &mut |p| seen.push(p))
        .unwrap();
    // 4 x 3 input chunks, each read once; 3 output chunks of 4, 4 and 1.
    assert_eq!(report.accesses, 12);
    assert_eq!(report.tiles_written, 3);
    assert_eq!(report.read_bytes, 90);
    assert_eq!(report.input_bytes, 90);
    assert_eq!(report.written_bytes, 9 * 8);
    assert_eq!(report.cache.misses, 12);
    assert_eq!(
        seen.iter()
            .map(|p| (p.steps_done, p.tiles_written))
            .collect::<Vec<_>>(),
        [(4, 1), (8, 2), (12, 3)]
    );
    assert!(seen.iter().all(|p| p.steps_total == 12));
    let mut sums = [0.0; 9];
    decode_elements::<f64>(DataType::F64, &out.to_bytes(), &mut sums);
    assert_eq!(sums, [70.0; 9]);
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
        let source = Failing {
            inner: mem_array("x", &[32, 32], &[8, 8], DataType::F16, &vec![1.0; 1024]),
            bad: vec![3, 2],
        };
        let job =
            ReduceJob::new(&source, ReduceOp::Mean, &[1], false, DataType::F32, 1 << 20).unwrap();
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
            text.contains("[3, 2]") && text.contains("failing.zarr"),
            "{text}"
        );
        assert!(!out.is_complete(), "prefetch {prefetch}");
        assert_eq!(engine.budget().reserved(), 0, "prefetch {prefetch}");
    }
}

/// The read-ahead thread may be descheduled while it still holds a chunk
/// it has published; the compute thread can use and evict that chunk
/// meanwhile. Many runs at once at a tight budget, with LRU (which evicts
/// exactly such a chunk), must still never exceed the budget.
#[test]
fn read_ahead_stays_within_the_budget_under_contention() {
    let mut rng = SmallRng::seed_from_u64(5000);
    let values = random_values(&mut rng, DataType::F32, 45 * 70);
    let source = mem_array("x", &[45, 70], &[16, 32], DataType::F32, &values);
    let needed = needed_budget(&source, ReduceOp::Sum, &[0], DataType::F32);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for budget_bytes in (0..100).map(|i| needed + (i % 3) * 4096) {
                    let job = ReduceJob::new(
                        &source,
                        ReduceOp::Sum,
                        &[0],
                        false,
                        DataType::F32,
                        budget_bytes,
                    )
                    .unwrap();
                    let out = MemArray::zeroed("out", job.output_meta());
                    let engine = Engine::new(budget_bytes).unwrap();
                    let config = RunConfig {
                        budget_bytes,
                        policy: PolicyKind::Lru,
                        prefetch: true,
                        gemm_threads: 1,
                    };
                    if let Err(e) = job.run(&engine, &out, &config, &mut |_| {}) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("budget {budget_bytes}: {e}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "seed 5000: {} of 400 runs failed, first: {}",
        failures.len(),
        failures[0]
    );
}
