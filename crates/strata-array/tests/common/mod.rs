//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use strata_array::chunk::{ChunkSink, ChunkSource};
use strata_array::meta::ArrayMeta;

/// A directory removed on drop, unique per process and call.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "strata-array-test-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Random bytes for the whole array (C order), from `seed`.
pub fn random_array_bytes(meta: &ArrayMeta, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; meta.len_bytes() as usize];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// The bytes of chunk `grid_index` cut out of a whole C-order array, by
/// plain index arithmetic (the naive model the crate's run logic is
/// checked against).
pub fn naive_chunk(meta: &ArrayMeta, whole: &[u8], grid_index: &[u64]) -> Vec<u8> {
    let size = meta.dtype().size_bytes();
    let region = meta.chunk_region(grid_index);
    let rank = meta.rank();
    let count: u64 = region.shape.iter().product();
    let mut out = Vec::with_capacity(count as usize * size);
    let mut local = vec![0u64; rank];
    for _ in 0..count {
        let mut linear = 0u64;
        for ((&len, &start), &offset) in meta.shape().iter().zip(&region.start).zip(&local) {
            linear = linear * len + start + offset;
        }
        let at = linear as usize * size;
        out.extend_from_slice(&whole[at..at + size]);
        for d in (0..rank).rev() {
            local[d] += 1;
            if local[d] < region.shape[d] {
                break;
            }
            local[d] = 0;
        }
    }
    out
}

/// Writes every chunk of `whole` to `sink` (in reverse grid order, so
/// sinks cannot rely on order) and finishes it.
pub fn write_all_chunks(sink: &dyn ChunkSink, whole: &[u8]) {
    let meta = sink.meta().clone();
    let mut indices: Vec<Vec<u64>> = meta.grid_indices().collect();
    indices.reverse();
    for grid_index in indices {
        let chunk = naive_chunk(&meta, whole, &grid_index);
        sink.write_chunk(&grid_index, &chunk).unwrap();
    }
    sink.finish().unwrap();
}

/// Asserts every chunk of `source` equals the naive cut of `whole`.
pub fn assert_chunks_equal(source: &dyn ChunkSource, whole: &[u8], context: &str) {
    let meta = source.meta().clone();
    for grid_index in meta.grid_indices() {
        let expected = naive_chunk(&meta, whole, &grid_index);
        let mut got = vec![0xAAu8; expected.len()];
        source.read_chunk(&grid_index, &mut got).unwrap();
        assert!(
            got == expected,
            "{context}: chunk {grid_index:?} of {:?} differs",
            meta.shape()
        );
    }
}
