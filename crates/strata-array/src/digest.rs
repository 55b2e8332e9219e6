//! A checksum of an array's contents, independent of how it is chunked or
//! encoded: xxh3-64 of its elements in C order, in the stored dtype,
//! little-endian. Two arrays with equal elements and dtype have equal
//! digests whatever their chunks and codecs, so another program (zarr-python
//! with numpy and the `xxhash` package: `xxh3_64(a[...].astype('<f4').tobytes())`)
//! can check what Strata read.
//!
//! ```
//! use strata_array::digest::content_xxh3;
//! use strata_array::mem::MemArray;
//! use strata_array::meta::ArrayMeta;
//! use strata_array::DataType;
//!
//! let bytes: Vec<u8> = (0u8..24).collect();
//! let by_rows = ArrayMeta::new(vec![2, 3], vec![1, 3], DataType::F32).unwrap();
//! let by_cols = ArrayMeta::new(vec![2, 3], vec![2, 2], DataType::F32).unwrap();
//! let a = MemArray::from_bytes("a", by_rows, bytes.clone()).unwrap();
//! let b = MemArray::from_bytes("b", by_cols, bytes.clone()).unwrap();
//! let digest = content_xxh3(&a).unwrap();
//! assert_eq!(digest, content_xxh3(&b).unwrap());
//! assert_eq!(digest, xxhash_rust::xxh3::xxh3_64(&bytes));
//! ```

use xxhash_rust::xxh3::Xxh3;

use crate::chunk::ChunkSource;
use crate::error::ArrayError;
use crate::meta::for_each_run;

/// The xxh3-64 of `source`'s elements in C order (stored dtype,
/// little-endian bytes).
///
/// Reads one band of chunks at a time (every chunk sharing a grid index
/// along the first axis), so it holds at most one chunk's height of whole
/// rows: `chunk_shape[0] * shape[1..].product()` elements.
pub fn content_xxh3(source: &dyn ChunkSource) -> Result<u64, ArrayError> {
    let meta = source.meta();
    let size = meta.dtype().size_bytes();
    let mut hasher = Xxh3::new();
    if meta.rank() == 0 || meta.shape().contains(&0) {
        return Ok(hasher.digest());
    }
    let grid = meta.grid_shape();
    let row_elements: u64 = meta.shape()[1..].iter().product();
    let mut band = Vec::new();
    let mut chunk = Vec::new();
    for band_index in 0..grid[0] {
        let band_rows = meta.chunk_shape_at(&{
            let mut first = vec![0; meta.rank()];
            first[0] = band_index;
            first
        })[0];
        let band_start = band_index * meta.chunk_shape()[0];
        let mut band_shape = meta.shape().to_vec();
        band_shape[0] = band_rows;
        band.clear();
        band.resize((band_rows * row_elements) as usize * size, 0);
        // Every chunk of the band: grid indices with this first component.
        let per_band: u64 = grid[1..].iter().product();
        for inner in 0..per_band {
            let mut grid_index = vec![band_index; meta.rank()];
            let mut rest = inner;
            for d in (1..meta.rank()).rev() {
                grid_index[d] = rest % grid[d];
                rest /= grid[d];
            }
            chunk.clear();
            chunk.resize(meta.chunk_len_bytes_at(&grid_index), 0);
            source.read_chunk(&grid_index, &mut chunk)?;
            let mut region = meta.chunk_region(&grid_index);
            region.start[0] -= band_start;
            for_each_run(&band_shape, &region, |outer, inner, len| {
                let (outer, inner, len) = (
                    outer as usize * size,
                    inner as usize * size,
                    len as usize * size,
                );
                band[outer..outer + len].copy_from_slice(&chunk[inner..inner + len]);
            });
        }
        hasher.update(&band);
    }
    Ok(hasher.digest())
}
