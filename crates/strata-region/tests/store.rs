//! The region store: directory loading with graceful degradation, the
//! layer index, proto regions crystallized under 128 concurrent readers,
//! crash safety at every step, memory levels and eviction, dump_state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use strata_region::store::CrystallizeStep;
use strata_region::{Dtype, PressureLevel, RegionBuilder, RegionStore, StoreError, StoreLimits};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("strata-store-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    fn files(&self) -> Vec<String> {
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

/// Deterministic bytes of layer `name` (so any reader can check a payload).
fn payload(name: &str, len: usize) -> Vec<u8> {
    let seed = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
    (0..len)
        .map(|i| (seed.wrapping_mul(i as u64 + 1) >> 24) as u8)
        .collect()
}

fn write_region(dir: &TempDir, file: &str, layers: &[(&str, usize)]) {
    let mut builder = RegionBuilder::create(dir.0.join(file)).unwrap();
    for (name, len) in layers {
        builder.add_blob(name, &payload(name, *len), &[]).unwrap();
    }
    builder.finish().unwrap();
}

const LIMIT: u64 = 1 << 30;

#[test]
fn a_directory_loads_with_bad_files_skipped_and_reported() {
    let dir = TempDir::new("load");
    write_region(&dir, "text.region", &[("tokens", 1000), ("ids", 10)]);
    write_region(&dir, "image.safetensors", &[("pixels", 4096)]);
    std::fs::write(
        dir.0.join("broken.region"),
        b"\x0a\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    std::fs::write(dir.0.join("notes.txt"), b"ignored").unwrap();
    std::fs::write(dir.0.join(".text.region.tmp-1-0"), b"a crashed build").unwrap();
    let store = RegionStore::open_dir(&dir.0, StoreLimits::new(LIMIT)).unwrap();
    store.check_invariants();
    let errors = store.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].0.ends_with("broken.region") && errors[0].1.contains("bad header"),
        "{errors:?}"
    );
    let tokens = store.layer("text", "tokens").unwrap();
    assert_eq!(tokens.bytes(), payload("tokens", 1000).as_slice());
    assert!(!tokens.is_heap());
    assert_eq!(store.layer("image", "pixels").unwrap().bytes().len(), 4096);
    assert!(matches!(
        store.layer("text", "nope"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.layer("broken", "x"),
        Err(StoreError::NotFound { .. })
    ));
    // Ids: stable, O(1), batch lookups against one snapshot.
    let ids = store.lookup_many(&[
        ("text", "ids"),
        ("image", "pixels"),
        ("text", "zz"),
        ("zz", "ids"),
    ]);
    assert!(
        ids[0].is_some() && ids[1].is_some() && ids[2].is_none() && ids[3].is_none(),
        "{ids:?}"
    );
    assert_eq!(
        store.layer_by_id(ids[0].unwrap()).unwrap().bytes(),
        payload("ids", 10).as_slice()
    );
    assert_eq!(store.lookup("text", "ids"), ids[0]);
    // A corrupt layer is reported on access, the others still read.
    let state = store.dump_state();
    assert_eq!(state["regions"].as_array().unwrap().len(), 2, "{state}");
    assert_eq!(state["errors"].as_array().unwrap().len(), 1);
    assert_eq!(state["level"], "normal");
}

#[test]
fn reload_picks_up_new_changed_and_vanished_files_while_readers_keep_theirs() {
    let dir = TempDir::new("reload");
    write_region(&dir, "a.region", &[("x", 100)]);
    let store = RegionStore::open_dir(&dir.0, StoreLimits::new(LIMIT)).unwrap();
    let held = store.layer("a", "x").unwrap();
    let id = store.lookup("a", "x").unwrap();
    write_region(&dir, "b.region", &[("y", 50)]);
    std::fs::remove_file(dir.0.join("a.region")).unwrap();
    store.reload().unwrap();
    assert_eq!(
        store.layer("b", "y").unwrap().bytes(),
        payload("y", 50).as_slice()
    );
    assert!(store.layer("a", "x").is_err(), "a vanished");
    assert_eq!(
        held.bytes(),
        payload("x", 100).as_slice(),
        "a reader keeps its mapping"
    );
    // The file comes back, changed: the same id serves the new bytes.
    let mut builder = RegionBuilder::create(dir.0.join("a.region")).unwrap();
    builder.add_blob("x", b"new bytes", &[]).unwrap();
    builder.finish().unwrap();
    store.reload().unwrap();
    assert_eq!(store.lookup("a", "x"), Some(id));
    assert_eq!(store.layer_by_id(id).unwrap().bytes(), b"new bytes");
    store.check_invariants();
}

#[test]
fn proto_layers_read_at_once_and_crystallize_under_128_readers() {
    let dir = TempDir::new("crystal");
    write_region(&dir, "base.region", &[("w", 64 << 10)]);
    let store = Arc::new(RegionStore::open_dir(&dir.0, StoreLimits::new(LIMIT)).unwrap());
    store.create_proto("ctx").unwrap();
    let names: Vec<String> = (0..8).map(|n| format!("layer{n}")).collect();
    for name in &names {
        store
            .add_proto_layer(
                "ctx",
                name,
                Dtype::U8,
                &[50_000],
                payload(name, 50_000),
                &[("kind", "context")],
            )
            .unwrap();
    }
    assert!(store.layer("ctx", "layer0").unwrap().is_heap());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mapped_reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..128)
        .map(|t| {
            let (store, stop, reads, mapped_reads, names) = (
                Arc::clone(&store),
                Arc::clone(&stop),
                Arc::clone(&reads),
                Arc::clone(&mapped_reads),
                names.clone(),
            );
            std::thread::spawn(move || {
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    let name = &names[n % names.len()];
                    let layer = store
                        .layer("ctx", name)
                        .unwrap_or_else(|e| panic!("reader {t}: {e}"));
                    // Either version, never torn.
                    assert_eq!(
                        layer.bytes(),
                        payload(name, 50_000).as_slice(),
                        "reader {t} {name}"
                    );
                    if !layer.is_heap() {
                        mapped_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    let base = store.layer("base", "w").unwrap();
                    assert_eq!(base.bytes().len(), 64 << 10);
                    reads.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    while reads.load(Ordering::Relaxed) < 2_000 {
        std::thread::yield_now();
    }
    let heap_before = store.used_bytes().0;
    assert_eq!(heap_before, 8 * 50_000);
    let held_heap = store.layer("ctx", "layer3").unwrap();
    let path = store.crystallize("ctx").unwrap();
    assert!(path.ends_with("ctx.region"));
    // Reloads while readers read.
    for _ in 0..5 {
        store.reload().unwrap();
    }
    let after = reads.load(Ordering::Relaxed);
    while reads.load(Ordering::Relaxed) < after + 2_000 || mapped_reads.load(Ordering::Relaxed) == 0
    {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    assert!(held_heap.is_heap(), "a reader's heap version stays valid");
    assert_eq!(held_heap.bytes(), payload("layer3", 50_000).as_slice());
    assert_eq!(
        store.used_bytes().0,
        0,
        "the store holds no heap bytes after crystallizing"
    );
    let layer = store.layer("ctx", "layer3").unwrap();
    assert!(!layer.is_heap());
    // A fresh store over the directory sees the crystallized region.
    let fresh = RegionStore::open_dir(&dir.0, StoreLimits::new(LIMIT)).unwrap();
    assert!(fresh.errors().is_empty(), "{:?}", fresh.errors());
    assert_eq!(
        fresh.layer("ctx", "layer7").unwrap().bytes(),
        payload("layer7", 50_000).as_slice()
    );
    store.check_invariants();
}

#[test]
fn a_crash_at_every_step_of_crystallization_leaves_a_loadable_store() {
    for step in [
        CrystallizeStep::Written,
        CrystallizeStep::Verified,
        CrystallizeStep::Renamed,
    ] {
        let dir = TempDir::new(&format!("crash-{step:?}"));
        write_region(&dir, "base.region", &[("w", 1000)]);
        let store = RegionStore::open_dir(&dir.0, StoreLimits::new(LIMIT)).unwrap();
        store.create_proto("p").unwrap();
        store
            .add_proto_layer("p", "a", Dtype::F32, &[4], payload("a", 16), &[])
            .unwrap();
        match store.crystallize_until("p", step) {
            Err(StoreError::Interrupted { step: got }) => assert_eq!(got, step),
            other => panic!("{step:?}: {other:?}"),
        }
        // The running store still serves the proto's previous state.
        let layer = store.layer("p", "a").unwrap();
        assert!(layer.is_heap(), "{step:?}");
        assert_eq!(layer.bytes(), payload("a", 16).as_slice());
        // What a restart finds: either no region p (before the rename), or
        // the complete one; never a partial file under a region name.
        let restarted = RegionStore::open_dir(&dir.0, StoreLimits::new(LIMIT)).unwrap();
        assert!(
            restarted.errors().is_empty(),
            "{step:?}: {:?}",
            restarted.errors()
        );
        assert_eq!(
            restarted.layer("base", "w").unwrap().bytes(),
            payload("w", 1000).as_slice()
        );
        match step {
            CrystallizeStep::Renamed => {
                assert_eq!(
                    restarted.layer("p", "a").unwrap().bytes(),
                    payload("a", 16).as_slice()
                )
            }
            _ => {
                assert!(restarted.layer("p", "a").is_err(), "{step:?}");
                assert!(
                    dir.files().iter().any(|f| f.starts_with(".p.region.tmp")),
                    "{step:?}: {:?}",
                    dir.files()
                );
            }
        }
    }
}

#[test]
fn memory_levels_warn_evict_cold_mappings_and_reject_heap_layers() {
    let dir = TempDir::new("limits");
    // Each region maps 4 KiB of header plus its data.
    for name in ["r0", "r1", "r2", "r3"] {
        write_region(&dir, &format!("{name}.region"), &[("data", 60 << 10)]);
    }
    let region_bytes = std::fs::metadata(dir.0.join("r0.region")).unwrap().len();
    // The limit: 4 regions are 85-95% of it.
    let limit = region_bytes * 4 * 100 / 90;
    let store = RegionStore::open_dir(&dir.0, StoreLimits::new(limit)).unwrap();
    // Loading passed 85%: the coldest regions were unmapped until below it.
    let (_, mapped) = store.used_bytes();
    assert!(mapped < limit * 85 / 100, "mapped {mapped}, limit {limit}");
    // One region unmapped: 3/4 of 90% is below the warning level.
    assert_eq!(store.evictions(), 1);
    assert_eq!(store.pressure(), PressureLevel::Normal);
    // An unmapped region reads again (mapped on demand), its bytes intact.
    for name in ["r0", "r1", "r2", "r3"] {
        assert_eq!(
            store.layer(name, "data").unwrap().bytes(),
            payload("data", 60 << 10).as_slice(),
            "{name}"
        );
    }
    // Held regions are never unmapped: hold all four, then the level stays
    // at eviction with nothing evictable.
    let held: Vec<_> = ["r0", "r1", "r2", "r3"]
        .iter()
        .map(|n| store.layer(n, "data").unwrap())
        .collect();
    assert_eq!(
        store.pressure(),
        PressureLevel::Evict,
        "all four mapped and held"
    );
    store.create_proto("heap").unwrap();
    let big = (limit / 100 * 10) as usize;
    match store.add_proto_layer(
        "heap",
        "too-big",
        Dtype::U8,
        &[big as u64],
        vec![0; big],
        &[],
    ) {
        Err(StoreError::OverLimit {
            requested_bytes,
            limit_bytes,
            ..
        }) => {
            assert_eq!((requested_bytes, limit_bytes), (big as u64, limit));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        store.layer("heap", "too-big").is_err(),
        "a refused layer changes nothing"
    );
    drop(held);
    let state = store.dump_state();
    assert_eq!(state["limit_bytes"], limit);
    assert!(state["evictions"].as_u64().unwrap() >= 1);
    store.check_invariants();
}

#[test]
fn proto_misuse_is_refused_with_clear_errors() {
    let dir = TempDir::new("misuse");
    write_region(&dir, "file.region", &[("x", 1)]);
    let store = RegionStore::open_dir(&dir.0, StoreLimits::new(LIMIT)).unwrap();
    assert!(matches!(
        store.create_proto("file"),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.create_proto(".hidden"),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.add_proto_layer("file", "y", Dtype::U8, &[1], vec![0], &[]),
        Err(StoreError::Conflict { .. })
    ));
    store.create_proto("p").unwrap();
    assert!(store
        .add_proto_layer("p", "bad", Dtype::F32, &[2], vec![0; 7], &[])
        .is_err());
    store
        .add_proto_layer("p", "ok", Dtype::U8, &[1], vec![9], &[])
        .unwrap();
    assert!(matches!(
        store.add_proto_layer("p", "ok", Dtype::U8, &[1], vec![9], &[]),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.crystallize("file"),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.crystallize("missing"),
        Err(StoreError::NotFound { .. })
    ));
    store.crystallize("p").unwrap();
    assert!(matches!(
        store.crystallize("p"),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.layer("p", "ok").unwrap().bytes(), &[9]);
}
