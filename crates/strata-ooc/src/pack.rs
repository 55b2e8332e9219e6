//! Moving elements between source chunks, packed tiles and output chunks:
//! pure index arithmetic over C-order buffers.
//!
//! A *packed* tile is a C-order block whose axes are a list of labels; a
//! chunk is a C-order block whose axes carry an operand's labels. Packing
//! copies the part of a chunk that falls inside a tile. A label the chunk
//! does not have is broadcast (the chunk is constant along it); a label the
//! chunk has on two axes takes the chunk's diagonal.

use std::ops::Range;

/// Strides (in elements) of a C-order block of `shape`.
pub fn c_strides(shape: &[u64]) -> Vec<u64> {
    let mut strides = vec![1u64; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

/// A block of an array: per-axis element ranges and the labels of its axes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledBlock<'a> {
    /// Label of each axis.
    pub labels: &'a [u8],
    /// Element range of each axis in the array.
    pub ranges: Vec<Range<u64>>,
}

impl LabeledBlock<'_> {
    /// The block's shape.
    pub fn shape(&self) -> Vec<u64> {
        self.ranges.iter().map(|r| r.end - r.start).collect()
    }
}

/// Copies from `chunk` (a C-order block of the operand) into `packed` (a
/// C-order block over `tile.labels`) every element of the tile that the
/// chunk holds. Returns the number of elements written (0 if they do not
/// meet).
///
/// For each tile label the copied range is the tile's range intersected
/// with the chunk's range on every chunk axis with that label (none:
/// broadcast over the whole tile range).
pub fn pack_chunk<T: Copy>(
    chunk: &[T],
    chunk_block: &LabeledBlock<'_>,
    packed: &mut [T],
    tile: &LabeledBlock<'_>,
) -> u64 {
    let chunk_strides = c_strides(&chunk_block.shape());
    let tile_strides = c_strides(&tile.shape());
    debug_assert_eq!(
        chunk.len() as u64,
        chunk_block.shape().iter().product::<u64>(),
        "chunk buffer length against its block {chunk_block:?}"
    );
    debug_assert_eq!(
        packed.len() as u64,
        tile.shape().iter().product::<u64>(),
        "packed buffer length against its tile {tile:?}"
    );
    // Per tile label: the range to copy, and the chunk stride of one step
    // along it (summed over repeated axes; 0 when broadcast).
    let mut ranges = Vec::with_capacity(tile.labels.len());
    let mut source_strides = Vec::with_capacity(tile.labels.len());
    for (label, tile_range) in tile.labels.iter().zip(&tile.ranges) {
        let mut range = tile_range.clone();
        let mut stride = 0u64;
        for (axis, chunk_label) in chunk_block.labels.iter().enumerate() {
            if chunk_label == label {
                let axis_range = &chunk_block.ranges[axis];
                range = range.start.max(axis_range.start)..range.end.min(axis_range.end);
                stride += chunk_strides[axis];
            }
        }
        if range.start >= range.end {
            return 0;
        }
        ranges.push(range);
        source_strides.push(stride);
    }
    // Offsets of each range's first element.
    let mut source_base = 0u64;
    for (axis, chunk_label) in chunk_block.labels.iter().enumerate() {
        let position = tile
            .labels
            .iter()
            .position(|l| l == chunk_label)
            .unwrap_or_else(|| panic!("chunk label {} is not in the tile", *chunk_label as char));
        source_base +=
            (ranges[position].start - chunk_block.ranges[axis].start) * chunk_strides[axis];
    }
    let target_base: u64 = ranges
        .iter()
        .zip(&tile.ranges)
        .zip(&tile_strides)
        .map(|((r, t), s)| (r.start - t.start) * s)
        .sum();
    let rank = ranges.len();
    let inner_len = (ranges[rank - 1].end - ranges[rank - 1].start) as usize;
    let inner_source_stride = source_strides[rank - 1] as usize;
    let outer_shape: Vec<u64> = ranges[..rank - 1].iter().map(|r| r.end - r.start).collect();
    let outer_count: u64 = outer_shape.iter().product();
    let mut digits = vec![0u64; rank - 1];
    for _ in 0..outer_count {
        let source: u64 = source_base
            + digits
                .iter()
                .zip(&source_strides)
                .map(|(d, s)| d * s)
                .sum::<u64>();
        let target: u64 = target_base
            + digits
                .iter()
                .zip(&tile_strides)
                .map(|(d, s)| d * s)
                .sum::<u64>();
        let (source, target) = (source as usize, target as usize);
        let out = &mut packed[target..target + inner_len];
        match inner_source_stride {
            1 => out.copy_from_slice(&chunk[source..source + inner_len]),
            0 => out.fill(chunk[source]),
            stride => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = chunk[source + i * stride];
                }
            }
        }
        // Odometer over the outer axes.
        for axis in (0..rank - 1).rev() {
            digits[axis] += 1;
            if digits[axis] < outer_shape[axis] {
                break;
            }
            digits[axis] = 0;
        }
    }
    (outer_count as usize * inner_len) as u64
}

/// Copies the C-order block `source` with axes `source_labels` into the
/// C-order block `target` with axes `target_labels` (a permutation of the
/// same labels), both of `shape` per label.
pub fn permute<T: Copy>(
    source: &[T],
    source_labels: &[u8],
    target: &mut [T],
    target_labels: &[u8],
    len_of: impl Fn(u8) -> u64,
) {
    let ranges: Vec<Range<u64>> = source_labels.iter().map(|&l| 0..len_of(l)).collect();
    let block = LabeledBlock {
        labels: source_labels,
        ranges,
    };
    let tile = LabeledBlock {
        labels: target_labels,
        ranges: target_labels.iter().map(|&l| 0..len_of(l)).collect(),
    };
    let written = pack_chunk(source, &block, target, &tile);
    debug_assert_eq!(written as usize, target.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_transposes_broadcasts_and_takes_diagonals() {
        // A 3x4 chunk "ij" at rows 2..5, cols 4..8 of an array.
        let chunk: Vec<u32> = (0..12).collect();
        let chunk_block = LabeledBlock {
            labels: b"ij",
            ranges: vec![2..5, 4..8],
        };
        // Tile "ji" over cols 5..7, rows 0..4: gets rows 2..4 of the chunk.
        let tile = LabeledBlock {
            labels: b"ji",
            ranges: vec![5..7, 0..4],
        };
        let mut packed = vec![u32::MAX; 8];
        assert_eq!(pack_chunk(&chunk, &chunk_block, &mut packed, &tile), 4);
        // packed[j][i]: j=5 -> col 1, i=2,3 -> rows 0,1 => values 1, 5.
        assert_eq!(
            packed,
            vec![u32::MAX, u32::MAX, 1, 5, u32::MAX, u32::MAX, 2, 6]
        );

        // Broadcast: tile "ikj" with k absent from the chunk.
        let tile = LabeledBlock {
            labels: b"ikj",
            ranges: vec![2..3, 0..2, 4..6],
        };
        let mut packed = vec![0u32; 4];
        assert_eq!(pack_chunk(&chunk, &chunk_block, &mut packed, &tile), 4);
        assert_eq!(packed, vec![0, 1, 0, 1]);

        // Diagonal: a 3x3 chunk "ii" at 0..3 into a tile "i" over 1..3.
        let chunk: Vec<u32> = (0..9).collect();
        let block = LabeledBlock {
            labels: b"ii",
            ranges: vec![0..3, 0..3],
        };
        let tile = LabeledBlock {
            labels: b"i",
            ranges: std::iter::once(1..3).collect(),
        };
        let mut packed = vec![0u32; 2];
        assert_eq!(pack_chunk(&chunk, &block, &mut packed, &tile), 2);
        assert_eq!(packed, vec![4, 8]);
    }

    #[test]
    fn disjoint_chunk_writes_nothing() {
        let chunk = vec![1u8; 4];
        let block = LabeledBlock {
            labels: b"ab",
            ranges: vec![0..2, 0..2],
        };
        let tile = LabeledBlock {
            labels: b"ab",
            ranges: vec![2..4, 0..2],
        };
        let mut packed = vec![0u8; 4];
        assert_eq!(pack_chunk(&chunk, &block, &mut packed, &tile), 0);
        assert_eq!(packed, vec![0; 4]);
    }

    #[test]
    fn permute_matches_naive_transpose() {
        let (a, b, c) = (2u64, 3u64, 4u64);
        let source: Vec<u64> = (0..a * b * c).collect();
        let mut target = vec![0u64; source.len()];
        let len = |l: u8| match l {
            b'a' => a,
            b'b' => b,
            _ => c,
        };
        permute(&source, b"abc", &mut target, b"cab", len);
        for x in 0..a {
            for y in 0..b {
                for z in 0..c {
                    assert_eq!(
                        target[(z * a * b + x * b + y) as usize],
                        x * b * c + y * c + z
                    );
                }
            }
        }
    }
}
