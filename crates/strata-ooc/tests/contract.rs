//! The contraction executor against a naive einsum, over dtypes, shapes,
//! chunkings (ragged edges included), budgets down to the smallest working
//! set, and every eviction policy; plus its failure modes.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_array::chunk::{encode_elements, ChunkSource};
use strata_array::dtype::DataType;
use strata_array::error::ArrayError;
use strata_array::mem::MemArray;
use strata_array::meta::ArrayMeta;
use strata_ooc::bufmgr::OocError;
use strata_ooc::contract::{ContractionJob, Engine, PolicyKind, RunConfig};
use strata_ooc::einsum::EinsumSpec;
use strata_pool::budget::MemoryPool;

/// Unit roundoff of the compute type.
fn unit_roundoff(dtype: DataType) -> f64 {
    if matches!(dtype, DataType::F64 | DataType::I64) {
        f64::EPSILON / 2.0
    } else {
        f64::from(f32::EPSILON) / 2.0
    }
}

/// Values exactly representable in `dtype`, as f64.
fn random_values(rng: &mut SmallRng, dtype: DataType, count: usize) -> Vec<f64> {
    (0..count)
        .map(|_| match dtype {
            DataType::U8 => f64::from(rng.gen_range(0u8..16)),
            DataType::I32 | DataType::I64 => f64::from(rng.gen_range(-8i32..8)),
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

/// Naive einsum in f64, with the sum of |terms| per output element.
fn naive(
    spec: &EinsumSpec,
    a: &[f64],
    a_shape: &[u64],
    b: &[f64],
    b_shape: &[u64],
) -> (Vec<f64>, Vec<f64>) {
    let c = spec.bind(a_shape, b_shape).unwrap();
    let sizes: Vec<u64> = c.labels.iter().map(|l| l.len).collect();
    let position = |label: u8| c.labels.iter().position(|l| l.label == label).unwrap();
    let offset = |labels: &[u8], shape: &[u64], index: &[u64]| -> usize {
        labels
            .iter()
            .zip(shape)
            .fold(0u64, |o, (&l, &n)| o * n + index[position(l)]) as usize
    };
    let out_shape = c.output_shape();
    let out_len: u64 = out_shape.iter().product();
    let mut out = vec![0.0; out_len as usize];
    let mut magnitude = vec![0.0; out_len as usize];
    let total: u64 = sizes.iter().product();
    let mut index = vec![0u64; sizes.len()];
    for _ in 0..total {
        let term = a[offset(&spec.a, a_shape, &index)] * b[offset(&spec.b, b_shape, &index)];
        let o = offset(&spec.output, &out_shape, &index);
        out[o] += term;
        magnitude[o] += term.abs();
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < sizes[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    (out, magnitude)
}

struct Case {
    spec: &'static str,
    a_shape: &'static [u64],
    a_chunks: &'static [u64],
    b_shape: &'static [u64],
    b_chunks: &'static [u64],
}

const CASES: &[Case] = &[
    Case {
        spec: "ij,jk->ik",
        a_shape: &[45, 70],
        a_chunks: &[16, 32],
        b_shape: &[70, 33],
        b_chunks: &[32, 8],
    },
    Case {
        spec: "ij,jk->ik",
        a_shape: &[64, 64],
        a_chunks: &[64, 64],
        b_shape: &[64, 64],
        b_chunks: &[64, 64],
    },
    Case {
        spec: "bij,bjk->bik",
        a_shape: &[3, 20, 30],
        a_chunks: &[2, 7, 16],
        b_shape: &[3, 30, 9],
        b_chunks: &[1, 16, 4],
    },
    Case {
        spec: "ji,kj->ik",
        a_shape: &[40, 25],
        a_chunks: &[16, 16],
        b_shape: &[19, 40],
        b_chunks: &[8, 16],
    },
    Case {
        spec: "ixj,jk->ki",
        a_shape: &[12, 5, 20],
        a_chunks: &[5, 2, 8],
        b_shape: &[20, 11],
        b_chunks: &[8, 4],
    },
    Case {
        spec: "bij,bkj->bki",
        a_shape: &[2, 9, 14],
        a_chunks: &[1, 4, 8],
        b_shape: &[2, 6, 14],
        b_chunks: &[2, 3, 7],
    },
    Case {
        spec: "ii,ik->k",
        a_shape: &[18, 18],
        a_chunks: &[5, 7],
        b_shape: &[18, 6],
        b_chunks: &[4, 6],
    },
];

fn check_case(
    case: &Case,
    a_dtype: DataType,
    b_dtype: DataType,
    out_dtype: DataType,
    policy: PolicyKind,
    seed: u64,
) {
    let spec = EinsumSpec::parse(case.spec).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let a_values = random_values(
        &mut rng,
        a_dtype,
        case.a_shape.iter().product::<u64>() as usize,
    );
    let b_values = random_values(
        &mut rng,
        b_dtype,
        case.b_shape.iter().product::<u64>() as usize,
    );
    let a = mem_array("A", case.a_shape, case.a_chunks, a_dtype, &a_values);
    let b = mem_array("B", case.b_shape, case.b_chunks, b_dtype, &b_values);
    let (expected, magnitude) = naive(&spec, &a_values, case.a_shape, &b_values, case.b_shape);
    let contracted: u64 = spec
        .bind(case.a_shape, case.b_shape)
        .unwrap()
        .labels
        .iter()
        .filter(|l| l.role == strata_ooc::einsum::LabelRole::Contracted)
        .map(|l| l.len)
        .product();
    let u = unit_roundoff(a_dtype).max(unit_roundoff(b_dtype));
    let out_u = if out_dtype == DataType::F64 {
        f64::EPSILON / 2.0
    } else {
        f64::from(f32::EPSILON) / 2.0
    };
    // Find the smallest budget, then run at several budgets above it.
    let needed = match ContractionJob::new(&spec, &a, &b, out_dtype, 1 << 10) {
        Err(OocError::Plan { detail }) => {
            let digits: String = detail
                .split("needs ")
                .nth(1)
                .unwrap_or_else(|| panic!("seed {seed}: {detail}"))
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse::<u64>().unwrap()
        }
        Ok(job) => job.plan().memory.total_bytes(),
        Err(e) => panic!("seed {seed}: {e}"),
    };
    for budget_bytes in [needed, needed * 3 / 2, needed * 4, 64 << 20] {
        let job = ContractionJob::new(&spec, &a, &b, out_dtype, budget_bytes)
            .unwrap_or_else(|e| panic!("{} seed {seed} budget {budget_bytes}: {e}", case.spec));
        let out = MemArray::zeroed("C", job.output_meta());
        let engine = Engine::new(budget_bytes).unwrap();
        let config = RunConfig {
            budget_bytes,
            policy,
            prefetch: budget_bytes > needed,
            gemm_threads: 2,
        };
        let report = job
            .run(&engine, &out, &config, &mut |_| {})
            .unwrap_or_else(|e| panic!("{} seed {seed} budget {budget_bytes}: {e}", case.spec));
        assert!(out.is_complete());
        assert!(
            report.peak_reserved_bytes <= budget_bytes,
            "{} seed {seed}: peak reserved {} > budget {budget_bytes}",
            case.spec,
            report.peak_reserved_bytes
        );
        assert_eq!(
            engine.budget().reserved(),
            0,
            "everything returned after the run"
        );
        let mut values = vec![0.0f64; expected.len()];
        let bytes = out.to_bytes();
        strata_array::chunk::decode_elements::<f64>(out_dtype, &bytes, &mut values);
        for (i, ((&want, &got), &mag)) in expected.iter().zip(&values).zip(&magnitude).enumerate() {
            // Summation bound gamma_K * sum|terms| plus one rounding of the
            // result to the output type.
            let k = contracted as f64;
            let gamma = k * u / (1.0 - k * u);
            let bound = gamma * mag + out_u * want.abs() * 2.0 + f64::MIN_POSITIVE;
            assert!(
                (want - got).abs() <= bound,
                "{} {a_dtype}x{b_dtype}->{out_dtype} {policy:?} seed {seed} budget {budget_bytes}: element {i}: want {want}, got {got}, bound {bound}",
                case.spec
            );
        }
    }
}

#[test]
fn every_spec_matches_naive_einsum_at_every_budget() {
    for (n, case) in CASES.iter().enumerate() {
        check_case(
            case,
            DataType::F32,
            DataType::F32,
            DataType::F32,
            PolicyKind::Min,
            100 + n as u64,
        );
    }
}

#[test]
fn dtypes_convert_on_load_and_store() {
    let case = &CASES[0];
    for (n, (a, b, out)) in [
        (DataType::F64, DataType::F64, DataType::F64),
        (DataType::F16, DataType::BF16, DataType::F32),
        (DataType::I32, DataType::U8, DataType::F64),
        (DataType::I64, DataType::F32, DataType::F64),
    ]
    .into_iter()
    .enumerate()
    {
        check_case(case, a, b, out, PolicyKind::Min, 200 + n as u64);
    }
}

#[test]
fn every_policy_gives_the_same_result() {
    for policy in PolicyKind::ALL {
        check_case(
            &CASES[2],
            DataType::F32,
            DataType::F32,
            DataType::F32,
            policy,
            300,
        );
    }
}

#[test]
fn too_small_budget_says_what_it_needs() {
    let spec = EinsumSpec::matmul();
    let a = mem_array(
        "A",
        &[64, 64],
        &[32, 32],
        DataType::F32,
        &vec![1.0; 64 * 64],
    );
    let b = mem_array(
        "B",
        &[64, 64],
        &[32, 32],
        DataType::F32,
        &vec![1.0; 64 * 64],
    );
    let Err(error) = ContractionJob::new(&spec, &a, &b, DataType::F32, 1000) else {
        panic!("a 1000-byte budget cannot hold two 4 KiB chunks");
    };
    let text = error.to_string();
    assert!(
        text.contains("too small") && text.contains("needs"),
        "{text}"
    );
}

#[test]
fn shape_mismatch_names_the_arrays() {
    let spec = EinsumSpec::matmul();
    let a = mem_array("left.zarr", &[8, 5], &[8, 5], DataType::F32, &[0.0; 40]);
    let b = mem_array("right.zarr", &[6, 8], &[6, 8], DataType::F32, &[0.0; 48]);
    let Err(error) = ContractionJob::new(&spec, &a, &b, DataType::F32, 1 << 20) else {
        panic!("5 != 6");
    };
    let text = error.to_string();
    assert!(
        text.contains("left.zarr") && text.contains("right.zarr") && text.contains("'j'"),
        "{text}"
    );
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
        "failing"
    }
    fn read_chunk(&self, grid_index: &[u64], out: &mut [u8]) -> Result<(), ArrayError> {
        if grid_index == self.bad.as_slice() {
            return Err(ArrayError::CorruptChunk {
                array: "failing".into(),
                chunk: grid_index.to_vec(),
                detail: "crc32c mismatch (injected)".into(),
            });
        }
        self.inner.read_chunk(grid_index, out)
    }
}

#[test]
fn failing_source_chunk_leaves_the_destination_incomplete() {
    let spec = EinsumSpec::matmul();
    let a = Failing {
        inner: mem_array("A", &[32, 32], &[8, 8], DataType::F32, &vec![1.0; 1024]),
        bad: vec![3, 2],
    };
    let b = mem_array("B", &[32, 32], &[8, 8], DataType::F32, &vec![1.0; 1024]);
    let job = ContractionJob::new(&spec, &a, &b, DataType::F32, 64 << 10).unwrap();
    let out = MemArray::zeroed("C", job.output_meta());
    let engine = Engine::new(64 << 10).unwrap();
    let config = RunConfig {
        budget_bytes: 64 << 10,
        policy: PolicyKind::Lru,
        prefetch: true,
        gemm_threads: 1,
    };
    let error = job.run(&engine, &out, &config, &mut |_| {}).unwrap_err();
    assert!(matches!(error, OocError::Source { .. }), "{error}");
    assert!(error.to_string().contains("[3, 2]"), "{error}");
    assert!(!out.is_complete());
    assert_eq!(engine.budget().reserved(), 0);
}

#[test]
fn large_chunks_at_tight_budgets_stay_within_the_budget() {
    let spec = EinsumSpec::matmul();
    let n = 1024u64;
    let mut rng = SmallRng::seed_from_u64(7);
    let values = random_values(&mut rng, DataType::F32, (n * n) as usize);
    let a = mem_array("A", &[n, n], &[256, 256], DataType::F32, &values);
    let b = mem_array("B", &[n, n], &[256, 256], DataType::F32, &values);
    for budget_bytes in [2u64 << 20, 3 << 20, 4 << 20, 6 << 20] {
        let job = ContractionJob::new(&spec, &a, &b, DataType::F32, budget_bytes).unwrap();
        let out = MemArray::zeroed("C", job.output_meta());
        let engine = Engine::new(budget_bytes).unwrap();
        let config = RunConfig {
            budget_bytes,
            policy: PolicyKind::Min,
            prefetch: true,
            gemm_threads: 2,
        };
        let report = job
            .run(&engine, &out, &config, &mut |_| {})
            .unwrap_or_else(|e| panic!("budget {budget_bytes}: {e}\nplan {:?}", job.plan()));
        assert!(report.peak_reserved_bytes <= budget_bytes);
    }
}
