//! Array geometry: shape, chunk shape, dtype, and the regular chunk grid.
//!
//! The grid has `ceil(shape[d] / chunk_shape[d])` chunks along dimension `d`.
//! Chunks at the upper edge are *ragged*: their actual shape is clipped to the
//! array, `min(chunk_shape[d], shape[d] - origin[d])`. Every buffer this crate
//! exchanges holds exactly the ragged shape, in C order.
//!
//! Zero-length dimensions are allowed (numpy and Zarr both allow them): the
//! grid then has zero chunks along that dimension, so the array has no
//! chunks and every grid index is out of the grid. Chunk dimensions must be
//! nonzero.
//!
//! ```
//! use strata_array::dtype::DataType;
//! use strata_array::meta::ArrayMeta;
//!
//! let meta = ArrayMeta::new(vec![10, 7], vec![4, 4], DataType::F32).unwrap();
//! assert_eq!(meta.grid_shape(), vec![3, 2]);
//! assert_eq!(meta.chunk_count(), 6);
//! assert_eq!(meta.chunk_shape_at(&[2, 1]), vec![2, 3]); // ragged corner
//! assert_eq!(meta.chunk_len_bytes_at(&[2, 1]), 2 * 3 * 4);
//! assert_eq!(meta.grid_index_to_linear(&[2, 1]), 5);
//! assert_eq!(meta.linear_to_grid_index(5), vec![2, 1]);
//! ```

use std::fmt;

use crate::dtype::DataType;

/// Most dimensions an array may have: numpy 2's `NPY_MAXDIMS`.
pub const RANK_MAX: usize = 64;

/// Largest chunk, in bytes. A chunk is one buffer in memory; 1 TiB is far
/// beyond any chunk the engine holds, and the bound keeps a corrupt header
/// from asking for an absurd allocation.
pub const CHUNK_LEN_MAX_BYTES: u64 = 1 << 40;
// Chunk lengths must fit in usize (64-bit targets).
const _: () = assert!(CHUNK_LEN_MAX_BYTES <= usize::MAX as u64);

/// Why a shape, chunk shape or grid index was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaError {
    /// Rank 0 (a scalar) or more than [`RANK_MAX`] dimensions.
    Rank {
        /// The rank given.
        rank: usize,
    },
    /// The chunk shape has a different rank from the array shape.
    RankMismatch {
        /// The array shape.
        shape: Vec<u64>,
        /// The chunk shape.
        chunk_shape: Vec<u64>,
    },
    /// A chunk dimension is zero.
    ZeroChunkDim {
        /// The chunk shape.
        chunk_shape: Vec<u64>,
    },
    /// The number of elements of the array overflows `u64` bytes.
    TooLarge {
        /// The array shape.
        shape: Vec<u64>,
        /// The element type.
        dtype: DataType,
    },
    /// One chunk is larger than [`CHUNK_LEN_MAX_BYTES`].
    ChunkTooLarge {
        /// The chunk shape.
        chunk_shape: Vec<u64>,
        /// The element type.
        dtype: DataType,
    },
    /// A shard shape of the wrong rank, or not a whole multiple of the
    /// chunk shape in every dimension.
    ShardShape {
        /// The shard shape.
        shard_shape: Vec<u64>,
        /// The (inner) chunk shape.
        chunk_shape: Vec<u64>,
    },
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Rank { rank } => {
                write!(f, "rank {rank} is not supported (expected 1..={RANK_MAX})")
            }
            MetaError::RankMismatch { shape, chunk_shape } => write!(
                f,
                "chunk shape {chunk_shape:?} has rank {} but array shape {shape:?} has rank {}",
                chunk_shape.len(),
                shape.len()
            ),
            MetaError::ZeroChunkDim { chunk_shape } => {
                write!(f, "chunk shape {chunk_shape:?} has a zero dimension")
            }
            MetaError::TooLarge { shape, dtype } => {
                write!(f, "array shape {shape:?} of {dtype} overflows u64 bytes")
            }
            MetaError::ChunkTooLarge { chunk_shape, dtype } => write!(
                f,
                "chunk shape {chunk_shape:?} of {dtype} exceeds {CHUNK_LEN_MAX_BYTES} bytes"
            ),
            MetaError::ShardShape {
                shard_shape,
                chunk_shape,
            } => write!(
                f,
                "shard shape {shard_shape:?} is not a nonzero whole multiple of chunk shape \
                 {chunk_shape:?} in every dimension"
            ),
        }
    }
}

impl std::error::Error for MetaError {}

/// Shape, chunk shape and element type of a chunked array, validated.
///
/// Invariants (checked by [`ArrayMeta::new`] and [`ArrayMeta::check_invariants`]):
/// `1 <= rank <= RANK_MAX`, `chunk_shape.len() == shape.len()`,
/// every `chunk_shape[d] >= 1`, `prod(shape) * size` fits in `u64`,
/// `prod(chunk_shape) * size <= CHUNK_LEN_MAX_BYTES`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArrayMeta {
    shape: Vec<u64>,
    chunk_shape: Vec<u64>,
    dtype: DataType,
}

/// The elements of one chunk inside its array: `start` is the chunk's origin
/// and `shape` its ragged shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRegion {
    /// Index of the chunk's first element along each dimension.
    pub start: Vec<u64>,
    /// The chunk's actual (ragged) shape.
    pub shape: Vec<u64>,
}

impl ArrayMeta {
    /// Validates and builds the geometry.
    pub fn new(
        shape: Vec<u64>,
        chunk_shape: Vec<u64>,
        dtype: DataType,
    ) -> Result<ArrayMeta, MetaError> {
        if shape.is_empty() || shape.len() > RANK_MAX {
            return Err(MetaError::Rank { rank: shape.len() });
        }
        if chunk_shape.len() != shape.len() {
            return Err(MetaError::RankMismatch { shape, chunk_shape });
        }
        if chunk_shape.contains(&0) {
            return Err(MetaError::ZeroChunkDim { chunk_shape });
        }
        let size = dtype.size_bytes() as u64;
        if checked_product(&shape)
            .and_then(|n| n.checked_mul(size))
            .is_none()
        {
            return Err(MetaError::TooLarge { shape, dtype });
        }
        let chunk_len_bytes = checked_product(&chunk_shape).and_then(|n| n.checked_mul(size));
        if chunk_len_bytes.is_none_or(|len| len > CHUNK_LEN_MAX_BYTES) {
            return Err(MetaError::ChunkTooLarge { chunk_shape, dtype });
        }
        let meta = ArrayMeta {
            shape,
            chunk_shape,
            dtype,
        };
        meta.check_invariants();
        Ok(meta)
    }

    /// Panics (printing the values) if an invariant of the type is broken.
    pub fn check_invariants(&self) {
        assert!(
            !self.shape.is_empty() && self.shape.len() <= RANK_MAX,
            "rank {} outside 1..={RANK_MAX}",
            self.shape.len()
        );
        assert_eq!(
            self.shape.len(),
            self.chunk_shape.len(),
            "shape {:?} vs chunk shape {:?}",
            self.shape,
            self.chunk_shape
        );
        assert!(
            !self.chunk_shape.contains(&0),
            "zero chunk dim in {:?}",
            self.chunk_shape
        );
        let chunk_len = checked_product(&self.chunk_shape)
            .and_then(|n| n.checked_mul(self.dtype.size_bytes() as u64));
        assert!(
            chunk_len.is_some_and(|len| len <= CHUNK_LEN_MAX_BYTES),
            "chunk {:?} of {} too large: {chunk_len:?}",
            self.chunk_shape,
            self.dtype
        );
    }

    /// The array shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The regular (full) chunk shape.
    pub fn chunk_shape(&self) -> &[u64] {
        &self.chunk_shape
    }

    /// The element type.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements of the whole array.
    pub fn element_count(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes of the whole array, uncompressed.
    pub fn len_bytes(&self) -> u64 {
        self.element_count() * self.dtype.size_bytes() as u64
    }

    /// Number of chunks along each dimension: `ceil(shape / chunk_shape)`.
    pub fn grid_shape(&self) -> Vec<u64> {
        self.shape
            .iter()
            .zip(&self.chunk_shape)
            .map(|(&len, &chunk)| len.div_ceil(chunk))
            .collect()
    }

    /// Number of chunks in the grid.
    pub fn chunk_count(&self) -> u64 {
        self.grid_shape().iter().product()
    }

    /// True if `grid_index` has the array's rank and lies inside the grid.
    pub fn contains_grid_index(&self, grid_index: &[u64]) -> bool {
        grid_index.len() == self.rank()
            && grid_index
                .iter()
                .zip(self.grid_shape())
                .all(|(&index, grid)| index < grid)
    }

    /// The actual (ragged) shape of the chunk at `grid_index`.
    ///
    /// Panics if the index is outside the grid (check with
    /// [`contains_grid_index`](Self::contains_grid_index)).
    pub fn chunk_shape_at(&self, grid_index: &[u64]) -> Vec<u64> {
        self.chunk_region(grid_index).shape
    }

    /// Number of elements of the chunk at `grid_index` (ragged). Panics
    /// outside the grid.
    pub fn chunk_element_count_at(&self, grid_index: &[u64]) -> u64 {
        self.chunk_shape_at(grid_index).iter().product()
    }

    /// Bytes of the chunk at `grid_index` (ragged). Panics outside the grid.
    pub fn chunk_len_bytes_at(&self, grid_index: &[u64]) -> usize {
        // Fits: bounded by the full chunk, at most CHUNK_LEN_MAX_BYTES.
        (self.chunk_element_count_at(grid_index) * self.dtype.size_bytes() as u64) as usize
    }

    /// Bytes of one full (not ragged) chunk.
    pub fn full_chunk_len_bytes(&self) -> usize {
        let elements: u64 = self.chunk_shape.iter().product();
        (elements * self.dtype.size_bytes() as u64) as usize
    }

    /// The elements the chunk at `grid_index` covers. Panics outside the grid.
    pub fn chunk_region(&self, grid_index: &[u64]) -> ChunkRegion {
        assert!(
            self.contains_grid_index(grid_index),
            "grid index {grid_index:?} outside grid {:?}",
            self.grid_shape()
        );
        let start: Vec<u64> = grid_index
            .iter()
            .zip(&self.chunk_shape)
            .map(|(&index, &chunk)| index * chunk)
            .collect();
        let shape = start
            .iter()
            .zip(&self.chunk_shape)
            .zip(&self.shape)
            .map(|((&origin, &chunk), &len)| chunk.min(len - origin))
            .collect();
        ChunkRegion { start, shape }
    }

    /// The C-order (row-major) linear number of a grid index. Panics
    /// outside the grid.
    pub fn grid_index_to_linear(&self, grid_index: &[u64]) -> u64 {
        assert!(
            self.contains_grid_index(grid_index),
            "grid index {grid_index:?} outside grid {:?}",
            self.grid_shape()
        );
        let mut linear = 0;
        for (&index, grid) in grid_index.iter().zip(self.grid_shape()) {
            linear = linear * grid + index;
        }
        linear
    }

    /// The grid index of a C-order linear chunk number. Panics if
    /// `linear >= chunk_count()`.
    pub fn linear_to_grid_index(&self, linear: u64) -> Vec<u64> {
        let count = self.chunk_count();
        assert!(
            linear < count,
            "linear chunk {linear} >= chunk count {count}"
        );
        let grid = self.grid_shape();
        let mut index = vec![0; grid.len()];
        let mut rest = linear;
        for d in (0..grid.len()).rev() {
            index[d] = rest % grid[d];
            rest /= grid[d];
        }
        index
    }

    /// Every grid index, in C order.
    pub fn grid_indices(&self) -> impl Iterator<Item = Vec<u64>> + '_ {
        (0..self.chunk_count()).map(|linear| self.linear_to_grid_index(linear))
    }
}

fn checked_product(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Calls `visit(outer_offset, region_offset, len)` for each maximal run of
/// elements of `region` that is contiguous both in the C-order array of
/// `outer_shape` and in the C-order region itself; offsets and lengths count
/// elements. Runs come in increasing order of both offsets and cover the
/// region exactly once.
///
/// Trailing dimensions that the region spans whole merge into one run, so a
/// chunk of whole rows is a single run.
///
/// Panics if the region does not fit inside `outer_shape`.
pub fn for_each_run(
    outer_shape: &[u64],
    region: &ChunkRegion,
    mut visit: impl FnMut(u64, u64, u64),
) {
    let rank = outer_shape.len();
    assert!(
        region.start.len() == rank && region.shape.len() == rank,
        "region {region:?} vs outer shape {outer_shape:?}"
    );
    for d in 0..rank {
        assert!(
            region.start[d] + region.shape[d] <= outer_shape[d],
            "region {region:?} exceeds outer shape {outer_shape:?} in dimension {d}"
        );
    }
    if region.shape.contains(&0) {
        return;
    }
    // `merged` is the first dimension of the run: every dimension after it is
    // spanned whole, so the run covers region.shape[merged] rows of them.
    let mut merged = rank - 1;
    while merged > 0 && region.shape[merged] == outer_shape[merged] {
        merged -= 1;
    }
    let run_len: u64 = region.shape[merged..].iter().product();
    // Element strides of the outer array in C order.
    let mut strides = vec![1u64; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * outer_shape[d + 1];
    }
    let outer_base: u64 = (0..rank).map(|d| region.start[d] * strides[d]).sum();
    let run_count: u64 = region.shape[..merged].iter().product();
    // Walk the prefix dimensions 0..merged like an odometer.
    let mut counter = vec![0u64; merged];
    for run in 0..run_count {
        let outer_offset = outer_base
            + counter
                .iter()
                .zip(&strides)
                .map(|(&c, &s)| c * s)
                .sum::<u64>();
        visit(outer_offset, run * run_len, run_len);
        for d in (0..merged).rev() {
            counter[d] += 1;
            if counter[d] < region.shape[d] {
                break;
            }
            counter[d] = 0;
        }
    }
}
