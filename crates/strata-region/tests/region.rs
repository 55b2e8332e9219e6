//! Region files: round trips of every dtype and blob size, the safetensors
//! crate and Python package on both sides, malformed and truncated files,
//! checksums, concurrency of first access, and publishing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_region::format::{self, ALL_DTYPES, DATA_ALIGN_BYTES};
use strata_region::{Dtype, Region, RegionBuilder, RegionError, Verification};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("strata-region-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A layer as added: name, dtype, shape, bytes, attributes.
type Expected = (String, Dtype, Vec<u64>, Vec<u8>, Vec<(String, String)>);

fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.gen()).collect()
}

fn safetensors_dtype(dtype: Dtype) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match dtype {
        Dtype::Bool => S::BOOL,
        Dtype::U8 => S::U8,
        Dtype::I8 => S::I8,
        Dtype::F8E5M2 => S::F8_E5M2,
        Dtype::F8E4M3 => S::F8_E4M3,
        Dtype::U16 => S::U16,
        Dtype::I16 => S::I16,
        Dtype::F16 => S::F16,
        Dtype::BF16 => S::BF16,
        Dtype::U32 => S::U32,
        Dtype::I32 => S::I32,
        Dtype::F32 => S::F32,
        Dtype::U64 => S::U64,
        Dtype::I64 => S::I64,
        Dtype::F64 => S::F64,
    }
}

#[test]
fn every_dtype_and_blob_size_round_trips_and_opens_in_the_safetensors_crate() {
    let dir = TempDir::new("roundtrip");
    let seed = 11;
    let mut rng = SmallRng::seed_from_u64(seed);
    let path = dir.join("all.region");
    let mut builder = RegionBuilder::create(&path).unwrap();
    let mut expected: Vec<Expected> = Vec::new();
    // A 3-byte blob first, so later layers need padding to stay aligned.
    for (n, len) in [3usize, 0, 1, 63, 64, 4095, 4096, 4097, (1 << 20) + 3]
        .into_iter()
        .enumerate()
    {
        let bytes = random_bytes(&mut rng, len);
        let name = format!("blob-{n}");
        let value = format!("{len} bytes");
        builder.add_blob(&name, &bytes, &[("len", &value)]).unwrap();
        expected.push((
            name,
            Dtype::U8,
            vec![len as u64],
            bytes,
            vec![("len".into(), value)],
        ));
    }
    for (n, dtype) in ALL_DTYPES.into_iter().enumerate() {
        let shape = vec![3, 1 + n as u64];
        let len = (shape.iter().product::<u64>() * dtype.size_bytes()) as usize;
        let bytes = random_bytes(&mut rng, len);
        let name = format!("t-{}", dtype.name());
        builder
            .add_tensor(&name, dtype, &shape, &bytes, &[("b", "2"), ("a", "1")])
            .unwrap();
        expected.push((
            name,
            dtype,
            shape,
            bytes,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        ));
        // A 1-byte blob between typed tensors forces padding again.
        let odd = format!("odd-{n}");
        builder.add_blob(&odd, &[n as u8], &[]).unwrap();
        expected.push((odd, Dtype::U8, vec![1], vec![n as u8], vec![]));
    }
    builder
        .add_tensor("scalar", Dtype::F64, &[], &2.5f64.to_le_bytes(), &[])
        .unwrap();
    expected.push((
        "scalar".into(),
        Dtype::F64,
        vec![],
        2.5f64.to_le_bytes().to_vec(),
        vec![],
    ));
    assert_eq!(builder.layer_count(), expected.len());
    let published = builder.finish().unwrap();
    assert_eq!(published, path);
    assert_eq!(
        dir.entries(),
        vec!["all.region".to_string()],
        "no temporary file left"
    );

    let region = Region::open(&path).unwrap();
    assert_eq!(region.layer_count(), expected.len());
    assert_eq!(region.header().format_version, Some(format::FORMAT_VERSION));
    assert!(region.header().data_start.is_multiple_of(DATA_ALIGN_BYTES));
    for (name, dtype, shape, bytes, attributes) in &expected {
        let layer = region
            .layer(name)
            .unwrap_or_else(|e| panic!("seed {seed} {name}: {e}"));
        assert_eq!(layer.dtype(), *dtype, "{name}");
        assert_eq!(layer.shape(), shape.as_slice(), "{name}");
        assert_eq!(layer.bytes(), bytes.as_slice(), "seed {seed} {name}");
        assert_eq!(layer.attributes(), attributes.as_slice(), "{name}");
        assert_eq!(layer.verification(), Verification::Verified, "{name}");
        // Every layer starts at a multiple of its element size.
        assert!(
            (layer.bytes().as_ptr() as u64).is_multiple_of(dtype.size_bytes()),
            "{name} misaligned"
        );
    }
    assert_eq!(
        region
            .layer("t-F32")
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .len(),
        3 * 12
    );
    assert_eq!(
        region
            .layer("t-F64")
            .unwrap()
            .as_slice::<f64>()
            .unwrap()
            .len(),
        3 * 15
    );
    assert!(matches!(
        region.layer("t-F32").unwrap().as_slice::<f64>(),
        Err(RegionError::TypedView { .. })
    ));
    region.verify().unwrap();

    // The safetensors crate reads the same file: the same tensors, and the
    // padding tensors only as extra U8 tensors.
    let file = std::fs::read(&path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    for (name, dtype, shape, bytes, _) in &expected {
        let view = tensors
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(view.dtype(), safetensors_dtype(*dtype), "{name}");
        assert_eq!(
            view.shape(),
            shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(view.data(), bytes.as_slice(), "{name}");
    }
    let extra: Vec<String> = tensors
        .names()
        .into_iter()
        .filter(|n| !expected.iter().any(|e| e.0 == **n))
        .map(|n| n.to_string())
        .collect();
    assert!(
        extra
            .iter()
            .all(|n| n.starts_with(format::PAD_LAYER_PREFIX)),
        "{extra:?}"
    );
}

/// The fixtures were written by the Python `safetensors` package
/// (scripts/gen_region_fixtures.py).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/region")
        .join(name)
}

#[test]
fn files_written_by_python_safetensors_open_as_unverified_regions() {
    let region = Region::open(fixture("python_mixed.safetensors")).unwrap();
    assert_eq!(region.header().format_version, None);
    assert_eq!(
        region.header().other_metadata,
        vec![
            ("format".to_string(), "pt".to_string()),
            ("source".to_string(), "gen_region_fixtures.py".to_string())
        ]
    );
    let weights = region.layer("weights").unwrap();
    assert_eq!(weights.verification(), Verification::Unverified);
    assert_eq!(weights.shape(), &[3, 4]);
    let want: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    // Typed where aligned; the bytes always.
    let got: Vec<f32> = weights
        .bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, want);
    let bias: Vec<f64> = region
        .layer("bias")
        .unwrap()
        .bytes()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(bias, [1.5, -2.25]);
    let ids = region.layer("ids").unwrap();
    assert_eq!((ids.dtype(), ids.shape()), (Dtype::I64, &[1u64, 3][..]));
    let ids: Vec<i64> = ids
        .bytes()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ids, [1, -2, 3]);
    let half = region.layer("half").unwrap();
    assert_eq!(half.dtype(), Dtype::F16);
    let half: Vec<u16> = half
        .bytes()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(half, [0x3800, 0xBC00, 0x7BFF]); // 0.5, -1.0, 65504.0
    let empty = region.layer("empty").unwrap();
    assert_eq!((empty.shape(), empty.bytes().len()), (&[0u64, 4][..], 0));
    assert_eq!(region.layer("flags").unwrap().bytes(), &[1, 0, 1]);
    assert_eq!(region.layer("bytes").unwrap().bytes(), b"strata");
    region.verify().unwrap();
    assert_eq!(region.checksums_computed(), 0);

    let scalar = Region::open(fixture("python_scalar.safetensors")).unwrap();
    let value = scalar.layer("scalar").unwrap();
    assert_eq!(value.shape(), &[] as &[u64]);
    assert_eq!(value.bytes(), 3.25f32.to_le_bytes());
}

/// A small region file to break.
fn small_region(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let path = dir.join("small.region");
    let mut builder = RegionBuilder::create(&path).unwrap();
    builder
        .add_tensor(
            "a",
            Dtype::F32,
            &[2],
            &[0, 0, 128, 63, 0, 0, 0, 64],
            &[("k", "v")],
        )
        .unwrap();
    builder.add_blob("b", b"xyz", &[]).unwrap();
    builder.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn parse(bytes: &[u8]) -> Result<format::Header, RegionError> {
    format::parse(Path::new("test.region"), bytes)
}

#[test]
fn every_truncation_of_a_small_file_is_an_error_never_a_panic() {
    let dir = TempDir::new("truncate");
    let (_, bytes) = small_region(&dir);
    parse(&bytes).unwrap();
    for len in 0..bytes.len() {
        match parse(&bytes[..len]) {
            Err(RegionError::Truncated {
                needed_bytes,
                file_bytes,
                ..
            }) => assert!(
                needed_bytes > file_bytes && file_bytes == len as u64,
                "len {len}"
            ),
            Err(RegionError::Header { .. }) => {
                // Cut inside the data: the layers no longer cover it.
                assert!(len as u64 >= parse(&bytes).unwrap().data_start, "len {len}");
            }
            Err(RegionError::Layer { detail, .. }) => {
                assert!(detail.contains("end past the data"), "len {len}: {detail}");
            }
            other => panic!("len {len}: {other:?}"),
        }
    }
    // One byte too many is refused too.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(parse(&longer), Err(RegionError::Header { .. })));
}

/// Replaces the first `from` in the header JSON with `to` (same length, so
/// the length field stays right) and parses.
fn with_header_edit(bytes: &[u8], from: &str, to: &str) -> Result<format::Header, RegionError> {
    assert_eq!(from.len(), to.len(), "{from} -> {to}");
    let header = parse(bytes).unwrap();
    let json = std::str::from_utf8(&bytes[8..header.data_start as usize]).unwrap();
    let at = json
        .find(from)
        .unwrap_or_else(|| panic!("{from} not in {json}"));
    let mut edited = bytes.to_vec();
    edited[8 + at..8 + at + to.len()].copy_from_slice(to.as_bytes());
    parse(&edited)
}

#[test]
fn every_corrupted_header_field_is_a_clear_error() {
    let dir = TempDir::new("corrupt");
    let (_, bytes) = small_region(&dir);
    let layer = |r: Result<format::Header, RegionError>, want: &str| match r {
        Err(RegionError::Layer { detail, .. }) => assert!(detail.contains(want), "{detail}"),
        other => panic!("expected a layer error with {want:?}: {other:?}"),
    };
    let header = |r: Result<format::Header, RegionError>, want: &str| match r {
        Err(RegionError::Header { detail, .. }) => assert!(detail.contains(want), "{detail}"),
        other => panic!("expected a header error with {want:?}: {other:?}"),
    };
    layer(
        with_header_edit(&bytes, "\"F32\"", "\"F31\""),
        "unknown dtype",
    );
    layer(
        with_header_edit(&bytes, "\"shape\":[2]", "\"shape\":[3]"),
        "needs 12 bytes",
    );
    layer(with_header_edit(&bytes, "[0,8]", "[8,0]"), "run backwards");
    layer(with_header_edit(&bytes, "[0,8]", "[1,9]"), "leave a gap");
    layer(with_header_edit(&bytes, "[8,11]", "[7,10]"), "overlap");
    layer(
        with_header_edit(&bytes, "[8,11]", "[9,12]"),
        "end past the data",
    );
    header(
        with_header_edit(&bytes, "\"strata.format\":\"1\"", "\"strata.format\":\"9\""),
        "format version 9",
    );
    header(
        with_header_edit(&bytes, "\"strata.xxh3.a\":\"", "\"strata.xxh3.c\":\""),
        "names no layer",
    );
    header(
        with_header_edit(&bytes, "\"strata.attrs.a\":\"{", "\"strata.attrs.a\":\"["),
        "not a JSON object",
    );
    header(
        with_header_edit(&bytes, "{\"__metadata__\"", "[\"__metadata__\""),
        "must be a JSON object",
    );
    header(
        with_header_edit(&bytes, "\"data_offsets\"", "\"data_offsetz\""),
        "unknown field",
    );
    header(
        with_header_edit(&bytes, "\"dtype\":\"U8\"", "\"dtype\":true"),
        "invalid JSON",
    );
    // A checksum that is not 16 hex digits.
    let json_end = parse(&bytes).unwrap().data_start as usize;
    let json = std::str::from_utf8(&bytes[8..json_end]).unwrap();
    let at = json.find("\"strata.xxh3.a\":\"").unwrap() + "\"strata.xxh3.a\":\"".len();
    let mut bad = bytes.clone();
    bad[8 + at] = b'g';
    header(parse(&bad), "16 hexadecimal digits");
    // Duplicate layer names.
    layer(
        with_header_edit(&bytes, "\"b\":{", "\"a\":{"),
        "appears twice",
    );
    // A lying length field: longer than the file, and huge.
    let mut lying = bytes.clone();
    lying[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    assert!(matches!(parse(&lying), Err(RegionError::Truncated { .. })));
    lying[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    header(parse(&lying), "more than the");
    // Shorter than the JSON: the JSON is cut.
    lying[..8].copy_from_slice(&20u64.to_le_bytes());
    header(parse(&lying), "invalid JSON");
    // Error messages name the file and the place.
    let error = with_header_edit(&bytes, "\"F32\"", "\"F31\"").unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("test.region") && message.contains("\"a\"") && message.contains("F31"),
        "{message}"
    );
}

#[test]
fn random_byte_corruption_never_panics() {
    let dir = TempDir::new("fuzz");
    let (_, bytes) = small_region(&dir);
    let seed = 99;
    let mut rng = SmallRng::seed_from_u64(seed);
    let data_start = parse(&bytes).unwrap().data_start as usize;
    for round in 0..3000 {
        let mut edited = bytes.clone();
        for _ in 0..rng.gen_range(1..4) {
            // Mostly in the length field and the JSON.
            let at = if rng.gen_bool(0.9) {
                rng.gen_range(0..data_start.min(200))
            } else {
                rng.gen_range(0..edited.len())
            };
            edited[at] = rng.gen();
        }
        let _ = std::panic::catch_unwind(|| parse(&edited))
            .unwrap_or_else(|_| panic!("seed {seed} round {round}: panicked"));
    }
}

#[test]
fn a_flipped_data_bit_is_a_checksum_error_on_access_and_in_verify() {
    let dir = TempDir::new("flip");
    let (path, mut bytes) = small_region(&dir);
    let data_start = parse(&bytes).unwrap().data_start as usize;
    bytes[data_start + 9] ^= 0x10; // inside layer "b"
    std::fs::write(&path, &bytes).unwrap();
    let region = Region::open(&path).unwrap();
    assert_eq!(
        region.layer("a").unwrap().verification(),
        Verification::Verified
    );
    match region.layer("b") {
        Err(RegionError::ChecksumMismatch {
            layer,
            expected,
            actual,
            ..
        }) => {
            assert_eq!(layer, "b");
            assert_ne!(expected, actual);
            assert_eq!(
                actual,
                xxhash_rust::xxh3::xxh3_64(&bytes[data_start + 8..data_start + 11])
            );
        }
        other => panic!("{other:?}"),
    }
    // Asked again: the same error, not recomputed.
    assert!(region.layer("b").is_err());
    let errors = region.verify().unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("\"b\" is corrupt"),
        "{}",
        errors[0]
    );
    assert_eq!(region.checksums_computed(), 2);
}

#[test]
fn first_accesses_from_many_threads_compute_each_checksum_once() {
    let dir = TempDir::new("threads");
    let path = dir.join("many.region");
    let mut builder = RegionBuilder::create(&path).unwrap();
    let mut rng = SmallRng::seed_from_u64(5);
    let layers = 24;
    for n in 0..layers {
        builder
            .add_blob(&format!("l{n}"), &random_bytes(&mut rng, 300_000), &[])
            .unwrap();
    }
    builder.finish().unwrap();
    let region = Arc::new(Region::open(&path).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let region = Arc::clone(&region);
            std::thread::spawn(move || {
                for n in 0..layers {
                    let name = format!("l{}", (n + t) % layers);
                    let layer = region.layer(&name).unwrap();
                    assert_eq!(layer.verification(), Verification::Verified);
                    assert_eq!(layer.bytes().len(), 300_000);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(region.checksums_computed(), layers as u64);
}

#[test]
fn a_header_larger_than_the_reservation_moves_the_data_once() {
    let dir = TempDir::new("big-header");
    let path = dir.join("wide.region");
    let mut builder = RegionBuilder::create(&path).unwrap();
    let count = 1500; // about 150 header bytes each: past 64 KiB
    for n in 0..count {
        let name = format!("layer-with-a-long-name-{n:06}");
        builder
            .add_tensor(
                &name,
                Dtype::I32,
                &[2],
                &[n as u8, 0, 0, 0, 7, 0, 0, 0],
                &[("n", &n.to_string())],
            )
            .unwrap();
    }
    builder.finish().unwrap();
    assert_eq!(dir.entries(), vec!["wide.region".to_string()]);
    let region = Region::open(&path).unwrap();
    assert!(region.header().data_start > strata_region::builder::HEADER_RESERVE_BYTES);
    assert_eq!(region.layer_count(), count);
    for n in [0, 1, count / 2, count - 1] {
        let layer = region
            .layer(&format!("layer-with-a-long-name-{n:06}"))
            .unwrap();
        assert_eq!(layer.as_slice::<i32>().unwrap(), &[(n % 256) as i32, 7]);
        assert_eq!(layer.attribute("n"), Some(n.to_string().as_str()));
    }
    assert_eq!(
        region.layer_index("layer-with-a-long-name-000010"),
        Some(10)
    );
}

#[test]
fn refused_layers_change_nothing_and_abandoned_builds_leave_nothing() {
    let dir = TempDir::new("refuse");
    let path = dir.join("r.region");
    std::fs::write(&path, b"the old file").unwrap();
    let mut builder = RegionBuilder::create(&path).unwrap();
    builder.add_blob("kept", b"1234", &[]).unwrap();
    let short = builder.add_from_reader("short", Dtype::F32, &[4], &[0u8; 15][..], &[]);
    assert!(
        matches!(short, Err(RegionError::InvalidLayer { ref detail, .. }) if detail.contains("15 bytes given")),
        "{short:?}"
    );
    let long = builder.add_from_reader("long", Dtype::F32, &[4], &[0u8; 17][..], &[]);
    assert!(
        matches!(long, Err(RegionError::InvalidLayer { .. })),
        "{long:?}"
    );
    for bad in ["", "__metadata__", "__strata_pad_0", "kept"] {
        assert!(
            matches!(
                builder.add_blob(bad, b"", &[]),
                Err(RegionError::InvalidLayer { .. })
            ),
            "{bad}"
        );
    }
    assert!(builder
        .add_blob("dup-attr", b"", &[("a", "1"), ("a", "2")])
        .is_err());
    assert_eq!(builder.layer_count(), 1);
    // Written but not committed: the destination still holds the old file.
    let pending = builder.write_temp().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"the old file");
    let staged = pending.open().unwrap();
    assert_eq!(staged.layer("kept").unwrap().bytes(), b"1234");
    assert_eq!(staged.layer_count(), 1);
    drop(staged);
    drop(pending);
    assert_eq!(
        dir.entries(),
        vec!["r.region".to_string()],
        "the temporary file is gone"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"the old file");
    // An abandoned builder leaves nothing either.
    let mut builder = RegionBuilder::create(dir.join("other.region")).unwrap();
    builder.add_blob("x", b"x", &[]).unwrap();
    drop(builder);
    assert_eq!(dir.entries(), vec!["r.region".to_string()]);
}

#[test]
fn typed_views_refuse_misaligned_layers_of_foreign_files() {
    // A safetensors file (not written by Strata) with an F32 tensor at
    // data offset 3: its bytes cannot be viewed as f32 in place.
    let dir = TempDir::new("misaligned");
    let path = dir.join("foreign.safetensors");
    // Written by hand: the safetensors crate's writer would sort the F32
    // tensor first. The file is still one its reader accepts.
    let floats: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut json = String::from(
        r#"{"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}}"#,
    );
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(' ');
    }
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    file.extend_from_slice(&[1, 2, 3]);
    file.extend_from_slice(&floats);
    safetensors::SafeTensors::deserialize(&file).unwrap();
    std::fs::write(&path, &file).unwrap();
    let region = Region::open(&path).unwrap();
    let b = region.layer("b").unwrap();
    assert_eq!(b.bytes(), floats.as_slice());
    match b.as_slice::<f32>() {
        Err(RegionError::TypedView { layer, detail }) => {
            assert_eq!(layer, "b");
            assert!(detail.contains("alignment 4"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        region.layer("nope"),
        Err(RegionError::NotFound { .. })
    ));
}

#[test]
fn access_hints_are_accepted() {
    let dir = TempDir::new("hints");
    let (path, _) = small_region(&dir);
    let region = Region::open(&path).unwrap();
    for hint in [
        strata_region::AccessHint::Sequential,
        strata_region::AccessHint::Random,
        strata_region::AccessHint::WillNeed,
    ] {
        region.advise(hint).unwrap();
        region.advise_layer("a", hint).unwrap();
    }
    // Huge pages are best effort: refused or not, never a panic.
    let _ = region.advise(strata_region::AccessHint::HugePages);
    assert!(matches!(
        region.advise_layer("zz", strata_region::AccessHint::Random),
        Err(RegionError::NotFound { .. })
    ));
}
