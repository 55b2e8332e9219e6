//! The planner: tile shapes for a contraction so that its working set fits
//! the memory budget, and the complete, deterministic schedule of tile steps.
//!
//! Pure logic: no I/O, no allocation from the pool. The executor turns the
//! schedule into chunk reads and GEMM calls.
//!
//! # Memory model
//!
//! Each step multiplies one tile of A by one tile of B into one output tile
//! (an accumulator, in the compute type). The operand tiles are packed into
//! contiguous compute-type buffers, one source chunk at a time, so a step
//! holds: the accumulator, the two packed tiles, and at least one source
//! chunk. Whatever is left of the budget caches source chunks (for reuse
//! across steps and for prefetch). The planner keeps at least
//! [`CACHE_SHARE_MIN_PERCENT`] of the budget, and never less than
//! [`CACHE_CHUNKS_MIN`] of the largest source chunk, for that cache.
//!
//! # Tile choice
//!
//! Reads of A repeat once per tile along the labels A lacks (the free labels
//! of B), and the other way round, so the free labels want large tiles;
//! contracted and batch labels cost no extra reads. The planner starts with
//! whole free labels, contracted labels at [`CONTRACTED_TILE_TARGET`]
//! elements (the GEMM's efficient depth) and batch labels at their chunk
//! length, then shrinks the free label whose shrinking adds the fewest
//! bytes read, until the working set fits. Only when every free label is
//! down to one element are contracted, then batch labels shrunk. A budget
//! that cannot hold the smallest working set is refused with the bytes it
//! needs.
//!
//! Tiles are multiples of a label's *quantum*, the least common multiple of
//! the chunk lengths of the inputs along it (when that is not longer than
//! the label), so a tile reads whole chunks; below one quantum, tiles halve.
//!
//! ```
//! use strata_ooc::einsum::EinsumSpec;
//! use strata_ooc::plan::{plan_contraction, OperandChunks, PlanRequest};
//!
//! let contraction = EinsumSpec::matmul().bind(&[4096, 4096], &[4096, 4096]).unwrap();
//! let request = PlanRequest {
//!     contraction: &contraction,
//!     a: OperandChunks { chunk_shape: vec![512, 512], element_bytes: 4 },
//!     b: OperandChunks { chunk_shape: vec![512, 512], element_bytes: 4 },
//!     compute_element_bytes: 4,
//!     output_element_bytes: 4,
//!     output_is_compute_type: true,
//!     budget_bytes: 32 << 20,
//! };
//! let plan = plan_contraction(&request).unwrap();
//! assert!(plan.memory.total_bytes() <= 32 << 20);
//! // Every output element is produced by exactly one run of steps.
//! assert_eq!(plan.steps().filter(|s| s.first).count() as u64, plan.output_tiles());
//! ```

use std::fmt;

use crate::bufmgr::pool_block_bytes;
use crate::einsum::{Contraction, LabelRole};

/// Depth (contracted elements) the planner aims for per step: long enough
/// for the GEMM kernel to run near its peak, short enough to leave room for
/// wide output tiles.
pub const CONTRACTED_TILE_TARGET: u64 = 512;
/// Share of the budget kept for the chunk cache and prefetch.
pub const CACHE_SHARE_MIN_PERCENT: u64 = 25;
/// The cache holds at least this many of the largest source chunk (one being
/// packed, one being prefetched).
pub const CACHE_CHUNKS_MIN: u64 = 2;

/// Threads that load chunks at once: the compute thread and the prefetcher.
pub const LOADING_THREADS: u64 = 2;
/// The GEMM kernel's depth block: it packs at most this many contracted
/// elements of a row of A and of a column of B at a time (faer's x86 kernel
/// uses `min(depth, 512)`). Its packing buffers are memory the job holds
/// outside the pool, so the plan counts them against the budget.
pub const KERNEL_DEPTH_BLOCK: u64 = 512;

const _: () = assert!(CACHE_SHARE_MIN_PERCENT < 100);
const _: () = assert!(CACHE_CHUNKS_MIN >= 1);

/// How one input is chunked and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperandChunks {
    /// Chunk shape (one length per axis, as in the spec's labels).
    pub chunk_shape: Vec<u64>,
    /// Bytes per stored element.
    pub element_bytes: u64,
}

/// Everything the planner needs.
#[derive(Clone, Debug)]
pub struct PlanRequest<'a> {
    /// The bound spec.
    pub contraction: &'a Contraction,
    /// The first input's chunking.
    pub a: OperandChunks,
    /// The second input's chunking.
    pub b: OperandChunks,
    /// Bytes per element of the compute type (4 for f32, 8 for f64).
    pub compute_element_bytes: u64,
    /// Bytes per element of the output's stored type.
    pub output_element_bytes: u64,
    /// Whether the output is stored in the compute type itself (no
    /// conversion on the way out).
    pub output_is_compute_type: bool,
    /// The memory budget for the whole job.
    pub budget_bytes: u64,
}

/// Why no plan was made.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// An operand's chunk shape does not match its rank, or has a zero.
    BadChunkShape {
        /// `"A"` or `"B"`.
        operand: &'static str,
        /// The chunk shape given.
        chunk_shape: Vec<u64>,
        /// The operand's rank.
        rank: usize,
    },
    /// A label has length zero: the output would be empty.
    EmptyAxis {
        /// The label.
        label: char,
    },
    /// Even the smallest working set does not fit.
    BudgetTooSmall {
        /// The budget given.
        budget_bytes: u64,
        /// The smallest budget that runs the job.
        needed_bytes: u64,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::BadChunkShape {
                operand,
                chunk_shape,
                rank,
            } => write!(
                f,
                "operand {operand}: chunk shape {chunk_shape:?} does not fit an array of rank {rank} (one nonzero length per axis)"
            ),
            PlanError::EmptyAxis { label } => {
                write!(f, "label {label:?} has length 0; nothing to compute")
            }
            PlanError::BudgetTooSmall {
                budget_bytes,
                needed_bytes,
            } => write!(
                f,
                "memory budget of {budget_bytes} bytes is too small for this job: its smallest working set needs {needed_bytes} bytes"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// Where the budget goes, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The output tile's accumulator.
    pub accumulator_bytes: u64,
    /// The packed A tile.
    pub packed_a_bytes: u64,
    /// The packed B tile.
    pub packed_b_bytes: u64,
    /// Staging of a finished output tile on its way out as whole output
    /// chunks: reordered to the output's axes when the accumulator's order
    /// differs, each chunk copied out (in the compute type when it must
    /// then be converted) and stored.
    pub staging_bytes: u64,
    /// When an input is stored in another type than the compute type: one
    /// stored chunk per loading thread to convert from.
    pub conversion_bytes: u64,
    /// The GEMM kernel's own packing buffers, at most one depth block of
    /// the A tile and of the B tile ([`KERNEL_DEPTH_BLOCK`]): not taken from
    /// the pool (the kernel allocates them itself, once per calling thread),
    /// but resident while the job runs, so the budget leaves room for them.
    pub kernel_workspace_bytes: u64,
    /// The chunk cache (reuse and prefetch): the rest of the budget.
    pub cache_bytes: u64,
}

impl MemoryPlan {
    /// Bytes held by tiles (everything but the cache), the kernel's
    /// workspace included.
    pub fn tile_bytes(&self) -> u64 {
        self.accumulator_bytes
            + self.packed_a_bytes
            + self.packed_b_bytes
            + self.staging_bytes
            + self.conversion_bytes
            + self.kernel_workspace_bytes
    }

    /// Every byte of the plan.
    pub fn total_bytes(&self) -> u64 {
        self.tile_bytes() + self.cache_bytes
    }
}

/// A label's tile: its length per step and how many tiles cover it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelTile {
    /// The label.
    pub label: u8,
    /// Its role.
    pub role: LabelRole,
    /// Its length.
    pub len: u64,
    /// Elements per tile (the last tile may be shorter).
    pub tile: u64,
    /// The label's quantum: the least common multiple of the inputs' chunk
    /// lengths along it (or the longest, when that multiple exceeds the
    /// label). Tiles at least this long are whole multiples of it.
    pub quantum: u64,
}

impl LabelTile {
    /// Tiles along the label.
    pub fn count(&self) -> u64 {
        self.len.div_ceil(self.tile)
    }

    /// Chunk length of the output along the label: the quantum, or the
    /// tile when shorter. Divides every tile but a label's last one, so an
    /// output tile is written as whole chunks, the size of the inputs'.
    pub fn output_chunk(&self) -> u64 {
        self.quantum.min(self.tile)
    }

    /// The element range of tile `index`.
    pub fn range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index * self.tile;
        start..(start + self.tile).min(self.len)
    }
}

/// A plan: one tile per label, the memory it takes, and the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TilePlan {
    /// Every distinct label's tile, in the contraction's label order.
    pub tiles: Vec<LabelTile>,
    /// The memory breakdown.
    pub memory: MemoryPlan,
    /// Bytes the plan reads from the inputs if nothing is reused between
    /// steps (the cache can only lower it).
    pub read_bytes_no_reuse: u64,
    /// Bytes of the two inputs (the least any plan must read).
    pub input_bytes: u64,
}

/// One step: accumulate A-tile × B-tile into an output tile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Tile index of every label, in [`TilePlan::tiles`] order.
    pub tile_index: Vec<u64>,
    /// First step of its output tile: the accumulator starts from zero.
    pub first: bool,
    /// Last step of its output tile: the tile is complete and is written.
    pub last: bool,
}

impl TilePlan {
    /// The tile of `label`.
    pub fn tile(&self, label: u8) -> Option<LabelTile> {
        self.tiles.iter().copied().find(|t| t.label == label)
    }

    /// Number of output tiles.
    pub fn output_tiles(&self) -> u64 {
        self.tiles
            .iter()
            .filter(|t| t.role != LabelRole::Contracted)
            .map(LabelTile::count)
            .product()
    }

    /// Steps per output tile (tiles of the contracted labels).
    pub fn steps_per_output_tile(&self) -> u64 {
        self.tiles
            .iter()
            .filter(|t| t.role == LabelRole::Contracted)
            .map(LabelTile::count)
            .product()
    }

    /// The schedule, in execution order: output tiles with batch labels
    /// outermost, then free-A, then free-B labels; the contracted tiles
    /// innermost. The free-B sweep reverses direction on every other pass
    /// and the contracted sweep on every other output tile, so the tiles
    /// used last are used again first (a cache keeps them).
    pub fn steps(&self) -> impl Iterator<Item = Step> + '_ {
        let outer: Vec<usize> = [LabelRole::Batch, LabelRole::FreeA, LabelRole::FreeB]
            .iter()
            .flat_map(|&role| {
                self.tiles
                    .iter()
                    .enumerate()
                    .filter(move |(_, t)| t.role == role)
                    .map(|(i, _)| i)
            })
            .collect();
        let inner: Vec<usize> = (0..self.tiles.len())
            .filter(|&i| self.tiles[i].role == LabelRole::Contracted)
            .collect();
        let free_b_start = outer
            .iter()
            .position(|&i| self.tiles[i].role == LabelRole::FreeB)
            .unwrap_or(outer.len());
        let output_tiles = self.output_tiles();
        let inner_steps = self.steps_per_output_tile();
        (0..output_tiles).flat_map(move |out_ordinal| {
            let mut index = vec![0u64; self.tiles.len()];
            let counts: Vec<u64> = outer.iter().map(|&i| self.tiles[i].count()).collect();
            let digits = mixed_radix(out_ordinal, &counts);
            // Snake over free-B: reverse when the tiles before it (batch,
            // free-A) form an odd ordinal.
            let prefix_ordinal = ordinal(&digits[..free_b_start], &counts[..free_b_start]);
            for (position, (&label_index, &digit)) in outer.iter().zip(&digits).enumerate() {
                let reverse = position >= free_b_start && prefix_ordinal % 2 == 1;
                index[label_index] = if reverse {
                    counts[position] - 1 - digit
                } else {
                    digit
                };
            }
            let inner_counts: Vec<u64> = inner.iter().map(|&i| self.tiles[i].count()).collect();
            let inner = inner.clone();
            (0..inner_steps).map(move |inner_ordinal| {
                let reversed = out_ordinal % 2 == 1;
                let ordinal_in_sweep = if reversed {
                    inner_steps - 1 - inner_ordinal
                } else {
                    inner_ordinal
                };
                let mut step_index = index.clone();
                for (&label_index, digit) in inner
                    .iter()
                    .zip(mixed_radix(ordinal_in_sweep, &inner_counts))
                {
                    step_index[label_index] = digit;
                }
                Step {
                    tile_index: step_index,
                    first: inner_ordinal == 0,
                    last: inner_ordinal + 1 == inner_steps,
                }
            })
        })
    }
}

/// `value` as digits of the mixed radix `counts` (most significant first).
fn mixed_radix(mut value: u64, counts: &[u64]) -> Vec<u64> {
    let mut digits = vec![0; counts.len()];
    for (digit, &count) in digits.iter_mut().zip(counts).rev() {
        *digit = value % count;
        value /= count;
    }
    digits
}

/// The inverse of [`mixed_radix`].
fn ordinal(digits: &[u64], counts: &[u64]) -> u64 {
    digits
        .iter()
        .zip(counts)
        .fold(0, |value, (&digit, &count)| value * count + digit)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Plans `request`; see the module documentation.
pub fn plan_contraction(request: &PlanRequest<'_>) -> Result<TilePlan, PlanError> {
    let contraction = request.contraction;
    let spec = &contraction.spec;
    for (operand, labels, chunks) in [("A", &spec.a, &request.a), ("B", &spec.b, &request.b)] {
        if chunks.chunk_shape.len() != labels.len() || chunks.chunk_shape.contains(&0) {
            return Err(PlanError::BadChunkShape {
                operand,
                chunk_shape: chunks.chunk_shape.clone(),
                rank: labels.len(),
            });
        }
    }
    if let Some(empty) = contraction.labels.iter().find(|l| l.len == 0) {
        return Err(PlanError::EmptyAxis {
            label: empty.label as char,
        });
    }
    let quantum: Vec<u64> = contraction
        .labels
        .iter()
        .map(|info| {
            let chunk_lens = spec
                .a
                .iter()
                .zip(&request.a.chunk_shape)
                .chain(spec.b.iter().zip(&request.b.chunk_shape))
                .filter(|(&l, _)| l == info.label)
                .map(|(_, &c)| c.min(info.len));
            let (lcm, max) = chunk_lens.fold((1u64, 1u64), |(lcm, max), c| {
                (lcm.saturating_mul(c / gcd(lcm, c)), max.max(c))
            });
            if lcm <= info.len {
                lcm
            } else {
                max
            }
        })
        .collect();
    let mut tiles: Vec<LabelTile> = contraction
        .labels
        .iter()
        .zip(&quantum)
        .map(|(info, &q)| LabelTile {
            label: info.label,
            role: info.role,
            len: info.len,
            quantum: q,
            tile: match info.role {
                LabelRole::FreeA | LabelRole::FreeB => info.len,
                LabelRole::Contracted => round_up(CONTRACTED_TILE_TARGET.max(q), q).min(info.len),
                LabelRole::Batch => q.min(info.len),
            },
        })
        .collect();
    let model = CostModel::new(request);
    loop {
        if let Some(memory) = model.fits(&tiles) {
            return Ok(TilePlan {
                read_bytes_no_reuse: model.read_bytes(&tiles),
                input_bytes: model.input_bytes(),
                tiles,
                memory,
            });
        }
        // Free labels first, by fewest extra bytes read; then contracted;
        // then batch. Ties go to the longest tile.
        let mut best: Option<(usize, u64, u64)> = None;
        for role_group in [
            &[LabelRole::FreeA, LabelRole::FreeB][..],
            &[LabelRole::Contracted],
            &[LabelRole::Batch],
        ] {
            for (i, t) in tiles.iter().enumerate() {
                if !role_group.contains(&t.role) || t.tile == 1 {
                    continue;
                }
                let smaller = shrink(t.tile, quantum[i]);
                let mut trial = tiles.clone();
                trial[i].tile = smaller;
                let reads = model.read_bytes(&trial);
                let better = match best {
                    None => true,
                    Some((_, best_reads, best_tile)) => {
                        reads < best_reads || (reads == best_reads && t.tile > best_tile)
                    }
                };
                if better {
                    best = Some((i, reads, t.tile));
                }
            }
            if best.is_some() {
                break;
            }
        }
        match best {
            Some((i, _, _)) => tiles[i].tile = shrink(tiles[i].tile, quantum[i]),
            None => {
                return Err(PlanError::BudgetTooSmall {
                    budget_bytes: request.budget_bytes,
                    needed_bytes: model.needed_bytes(&tiles),
                })
            }
        }
    }
}

/// The next smaller tile: one quantum less while above a quantum (so tiles
/// stay whole chunks), then halving.
fn shrink(tile: u64, quantum: u64) -> u64 {
    if tile > quantum {
        // Keep a multiple of the quantum: a ragged whole-label tile first
        // rounds down to one.
        let whole = tile / quantum * quantum;
        if whole < tile {
            whole
        } else {
            // Shrink by a quarter, in quanta, so big tiles do not take
            // thousands of steps to shrink.
            let quanta = tile / quantum;
            (quanta - (quanta / 4).max(1)) * quantum
        }
    } else {
        (tile / 2).max(1)
    }
}

/// Bytes of one full chunk of `chunks` at `element_bytes` per element.
fn chunk_bytes(chunks: &OperandChunks, element_bytes: u64) -> u64 {
    chunks
        .chunk_shape
        .iter()
        .fold(element_bytes, |p, &l| p.saturating_mul(l))
}

fn round_up(value: u64, multiple: u64) -> u64 {
    value.div_ceil(multiple) * multiple
}

/// The sizes the planner weighs.
struct CostModel<'a> {
    request: &'a PlanRequest<'a>,
}

impl<'a> CostModel<'a> {
    fn new(request: &'a PlanRequest<'a>) -> Self {
        CostModel { request }
    }

    /// Product of tiles over the distinct labels of `labels` plus those with
    /// `extra_role`.
    fn elements(&self, tiles: &[LabelTile], labels: &[u8], extra_role: Option<LabelRole>) -> u64 {
        tiles
            .iter()
            .filter(|t| labels.contains(&t.label) || Some(t.role) == extra_role)
            .fold(1u64, |product, t| product.saturating_mul(t.tile))
    }

    /// Staging of a finished tile: the tile reordered to the output's axes
    /// (only when the accumulator's order, batch then free A then free B,
    /// differs from the output's), one output chunk of it in the compute
    /// type (only when the output is stored in another type), and that
    /// chunk in the stored type.
    fn staging_bytes(&self, tiles: &[LabelTile], output_elements: u64) -> u64 {
        let spec = &self.request.contraction.spec;
        let bytes = self.request.compute_element_bytes;
        let accumulator_order: Vec<u8> = [LabelRole::Batch, LabelRole::FreeA, LabelRole::FreeB]
            .iter()
            .flat_map(|&role| {
                tiles
                    .iter()
                    .filter(move |t| t.role == role)
                    .map(|t| t.label)
            })
            .collect();
        let reorder_bytes = if accumulator_order == spec.output {
            0
        } else {
            output_elements.saturating_mul(bytes)
        };
        let chunk_elements = tiles
            .iter()
            .filter(|t| spec.output.contains(&t.label))
            .fold(1u64, |product, t| product.saturating_mul(t.output_chunk()));
        let convert_bytes = if self.request.output_is_compute_type {
            0
        } else {
            chunk_elements.saturating_mul(bytes)
        };
        pool_block_bytes(
            reorder_bytes
                .saturating_add(convert_bytes)
                .saturating_add(chunk_elements.saturating_mul(self.request.output_element_bytes)),
        )
    }

    /// The GEMM kernel's packing buffers for one call on a tile: one depth
    /// block of the A tile's rows and of the B tile's columns (the kernel is
    /// called once per batch element, so batch labels do not count).
    fn kernel_workspace_bytes(&self, tiles: &[LabelTile]) -> u64 {
        let role_elements = |role: LabelRole| {
            tiles
                .iter()
                .filter(|t| t.role == role)
                .fold(1u64, |product, t| product.saturating_mul(t.tile))
        };
        let depth = role_elements(LabelRole::Contracted).min(KERNEL_DEPTH_BLOCK);
        role_elements(LabelRole::FreeA)
            .saturating_add(role_elements(LabelRole::FreeB))
            .saturating_mul(depth)
            .saturating_mul(self.request.compute_element_bytes)
    }

    fn memory(&self, tiles: &[LabelTile]) -> MemoryPlan {
        let spec = &self.request.contraction.spec;
        let bytes = self.request.compute_element_bytes;
        let output_elements = self.elements(tiles, &spec.output, None);
        let conversion_bytes = [&self.request.a, &self.request.b]
            .iter()
            .filter(|c| c.element_bytes != bytes)
            .map(|c| chunk_bytes(c, c.element_bytes))
            .max()
            .unwrap_or(0);
        // Every figure is the pool block the buffer takes (its size class
        // or page-rounded length), which is what the budget is charged.
        MemoryPlan {
            accumulator_bytes: pool_block_bytes(output_elements.saturating_mul(bytes)),
            staging_bytes: self.staging_bytes(tiles, output_elements),
            conversion_bytes: if conversion_bytes == 0 {
                0
            } else {
                LOADING_THREADS.saturating_mul(pool_block_bytes(conversion_bytes))
            },
            // A packed tile spans its own labels plus the contracted labels
            // only B has (A is constant along them).
            packed_a_bytes: pool_block_bytes(
                self.elements(tiles, &spec.a, Some(LabelRole::Contracted))
                    .saturating_mul(bytes),
            ),
            packed_b_bytes: pool_block_bytes(
                self.elements(tiles, &spec.b, Some(LabelRole::Contracted))
                    .saturating_mul(bytes),
            ),
            kernel_workspace_bytes: self.kernel_workspace_bytes(tiles),
            cache_bytes: 0,
        }
    }

    /// The cache the plan needs at least: [`CACHE_CHUNKS_MIN`] of the
    /// largest source chunk.
    fn cache_min_bytes(&self) -> u64 {
        // The cache holds chunks converted to the compute type.
        let bytes = self.request.compute_element_bytes;
        CACHE_CHUNKS_MIN.saturating_mul(pool_block_bytes(
            chunk_bytes(&self.request.a, bytes).max(chunk_bytes(&self.request.b, bytes)),
        ))
    }

    /// The memory plan if `tiles` fit the budget.
    fn fits(&self, tiles: &[LabelTile]) -> Option<MemoryPlan> {
        let mut memory = self.memory(tiles);
        let budget = self.request.budget_bytes;
        let cache_min = self
            .cache_min_bytes()
            .max(budget / 100 * CACHE_SHARE_MIN_PERCENT);
        let needed = memory.tile_bytes().saturating_add(cache_min);
        if needed > budget {
            return None;
        }
        memory.cache_bytes = budget - memory.tile_bytes();
        Some(memory)
    }

    /// The smallest budget that fits `tiles` (used for the error message,
    /// with the smallest tiles).
    fn needed_bytes(&self, tiles: &[LabelTile]) -> u64 {
        let tile_bytes = self.memory(tiles).tile_bytes();
        // The cache share is a percentage of the budget itself.
        let with_share = (tile_bytes * 100).div_ceil(100 - CACHE_SHARE_MIN_PERCENT);
        tile_bytes
            .saturating_add(self.cache_min_bytes())
            .max(with_share)
    }

    fn operand_bytes(&self, labels: &[u8], element_bytes: u64) -> u64 {
        let contraction = self.request.contraction;
        labels.iter().fold(element_bytes, |p, &l| {
            p.saturating_mul(contraction.size(l).expect("bound label"))
        })
    }

    fn input_bytes(&self) -> u64 {
        let spec = &self.request.contraction.spec;
        self.operand_bytes(&spec.a, self.request.a.element_bytes)
            .saturating_add(self.operand_bytes(&spec.b, self.request.b.element_bytes))
    }

    /// Bytes read with no reuse between steps: each input once per tile of
    /// the free labels it lacks.
    fn read_bytes(&self, tiles: &[LabelTile]) -> u64 {
        let spec = &self.request.contraction.spec;
        let passes = |role: LabelRole| -> u64 {
            tiles
                .iter()
                .filter(|t| t.role == role)
                .map(LabelTile::count)
                .product()
        };
        self.operand_bytes(&spec.a, self.request.a.element_bytes)
            .saturating_mul(passes(LabelRole::FreeB))
            .saturating_add(
                self.operand_bytes(&spec.b, self.request.b.element_bytes)
                    .saturating_mul(passes(LabelRole::FreeA)),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::einsum::EinsumSpec;

    fn request<'a>(c: &'a Contraction, a: &[u64], b: &[u64], budget_bytes: u64) -> PlanRequest<'a> {
        PlanRequest {
            contraction: c,
            a: OperandChunks {
                chunk_shape: a.to_vec(),
                element_bytes: 4,
            },
            b: OperandChunks {
                chunk_shape: b.to_vec(),
                element_bytes: 4,
            },
            compute_element_bytes: 4,
            output_element_bytes: 4,
            output_is_compute_type: true,
            budget_bytes,
        }
    }

    #[test]
    fn plans_fit_and_schedules_cover_every_step_once() {
        // (spec, A shape, B shape, A chunks, B chunks)
        type Case<'a> = (&'a str, &'a [u64], &'a [u64], &'a [u64], &'a [u64]);
        let specs: [Case<'_>; 4] = [
            ("ij,jk->ik", &[300, 200], &[200, 100], &[64, 64], &[64, 32]),
            (
                "bij,bjk->bik",
                &[3, 50, 40],
                &[3, 40, 30],
                &[2, 16, 16],
                &[1, 16, 8],
            ),
            ("ji,kj->ik", &[70, 90], &[33, 70], &[16, 16], &[16, 16]),
            ("ixj,jk->ki", &[20, 5, 30], &[30, 25], &[8, 5, 8], &[8, 8]),
        ];
        for (text, a_shape, b_shape, a_chunks, b_chunks) in specs {
            let c = EinsumSpec::parse(text)
                .unwrap()
                .bind(a_shape, b_shape)
                .unwrap();
            for budget_bytes in [16 << 10, 64 << 10, 1 << 20, 64 << 20] {
                let plan = match plan_contraction(&request(&c, a_chunks, b_chunks, budget_bytes)) {
                    Ok(plan) => plan,
                    Err(PlanError::BudgetTooSmall { needed_bytes, .. }) => {
                        assert!(needed_bytes > budget_bytes, "{text} {budget_bytes}");
                        // The budget it names is enough.
                        let retry =
                            plan_contraction(&request(&c, a_chunks, b_chunks, needed_bytes));
                        assert!(retry.is_ok(), "{text}: needed {needed_bytes}: {retry:?}");
                        continue;
                    }
                    Err(e) => panic!("{text}: {e}"),
                };
                assert!(plan.memory.total_bytes() <= budget_bytes, "{text} {plan:?}");
                let steps: Vec<Step> = plan.steps().collect();
                assert_eq!(
                    steps.len() as u64,
                    plan.output_tiles() * plan.steps_per_output_tile(),
                    "{text}"
                );
                let mut seen = std::collections::HashSet::new();
                for step in &steps {
                    assert!(
                        seen.insert(step.tile_index.clone()),
                        "{text}: repeated {step:?}"
                    );
                    for (t, &i) in plan.tiles.iter().zip(&step.tile_index) {
                        assert!(i < t.count(), "{text}: {step:?}");
                    }
                }
                assert_eq!(
                    steps.iter().filter(|s| s.first).count() as u64,
                    plan.output_tiles()
                );
                assert_eq!(
                    steps.iter().filter(|s| s.last).count() as u64,
                    plan.output_tiles()
                );
            }
        }
    }

    #[test]
    fn matmul_keeps_depth_and_widens_output_tiles() {
        let c = EinsumSpec::matmul()
            .bind(&[4096, 4096], &[4096, 4096])
            .unwrap();
        let plan = plan_contraction(&request(&c, &[512, 512], &[512, 512], 32 << 20)).unwrap();
        let k = plan.tile(b'j').unwrap();
        assert_eq!(k.tile, CONTRACTED_TILE_TARGET, "{plan:?}");
        let (i, j) = (plan.tile(b'i').unwrap().tile, plan.tile(b'k').unwrap().tile);
        assert!(i.is_multiple_of(512) && j.is_multiple_of(512), "{plan:?}");
        assert!(i * j >= 1024 * 1024, "output tiles too small: {plan:?}");
        assert!(plan.read_bytes_no_reuse >= plan.input_bytes);
    }

    #[test]
    fn the_kernels_packing_is_counted_in_the_budget() {
        for (side, depth, budget) in [(4096, 4096, 32u64 << 20), (2048, 300, 8 << 20)] {
            let c = EinsumSpec::matmul()
                .bind(&[side, depth], &[depth, side])
                .unwrap();
            let plan = plan_contraction(&request(&c, &[512, 512], &[512, 512], budget)).unwrap();
            let (i, j, k) = (
                plan.tile(b'i').unwrap().tile,
                plan.tile(b'j').unwrap().tile,
                plan.tile(b'k').unwrap().tile,
            );
            let memory = plan.memory;
            assert_eq!(
                memory.kernel_workspace_bytes,
                (i + k) * j.min(KERNEL_DEPTH_BLOCK) * 4,
                "{plan:?}"
            );
            assert_eq!(memory.total_bytes(), budget, "{plan:?}");
            assert_eq!(
                memory.cache_bytes,
                budget
                    - memory.accumulator_bytes
                    - memory.packed_a_bytes
                    - memory.packed_b_bytes
                    - memory.staging_bytes
                    - memory.conversion_bytes
                    - memory.kernel_workspace_bytes,
                "{plan:?}"
            );
        }
    }

    #[test]
    fn too_small_budget_names_what_it_needs() {
        let c = EinsumSpec::matmul()
            .bind(&[1024, 1024], &[1024, 1024])
            .unwrap();
        let error =
            plan_contraction(&request(&c, &[256, 256], &[256, 256], 512 << 10)).unwrap_err();
        let PlanError::BudgetTooSmall { needed_bytes, .. } = error else {
            panic!("{error}");
        };
        // Two 256 KiB chunks at least.
        assert!(needed_bytes >= 2 * 256 * 256 * 4, "{needed_bytes}");
        assert!(error.to_string().contains("too small"), "{error}");
    }
}
