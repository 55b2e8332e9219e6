//! Free-run summaries of chunks and the segment forest over them.
//!
//! Pure logic, no I/O. A [`RunSummary`] describes the free blocks of a span
//! of the bitmap by three numbers: the free run touching its start
//! (`prefix`), the free run touching its end (`suffix`) and the longest free
//! run anywhere inside it (`best`). Two adjacent spans combine in O(1), so a
//! tree of summaries over the chunks answers "where is the
//! first run of at least `len` free blocks at or after block `b`" in
//! O(log chunks) and keeps the global longest run at its root.

use crate::{CHUNK_BLOCKS, CHUNK_WORDS};

/// Free-run summary of a span of blocks. Invariant: `prefix, suffix <= best
/// <= span length`, and `prefix == span length` iff the span is all free (then
/// all three equal the length).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Free blocks at the start of the span.
    pub prefix: u32,
    /// Free blocks at the end of the span.
    pub suffix: u32,
    /// Longest free run inside the span.
    pub best: u32,
}

/// Longest run of set bits in `word`, by galloping then bisecting on
/// "positions where a run of at least `n` starts" (`y & (y >> s)` extends
/// every run start by `s` when `s <= n`): O(log run) steps, no per-run loop.
#[inline]
pub fn longest_ones(word: u64) -> u32 {
    if word == u64::MAX {
        return 64;
    }
    if word == 0 {
        return 0;
    }
    let mut y = word; // starts of runs of length >= n
    let mut n = 1u32;
    while n < 64 {
        let z = y & (y >> n);
        if z == 0 {
            break;
        }
        y = z;
        n *= 2;
    }
    // Runs of length n exist, none of length 2n: bisect the remainder.
    let mut step = n / 2;
    while step > 0 {
        let z = y & (y >> step);
        if z != 0 {
            y = z;
            n += step;
        }
        step /= 2;
    }
    n
}

/// Bits of `word` where a run of at least `len` (1..=64) set bits starts
/// and lies wholly inside the word.
#[inline]
fn run_starts(word: u64, len: u32) -> u64 {
    let mut y = word;
    let mut n = 1u32;
    while n < len && y != 0 {
        let s = n.min(len - n);
        y &= y >> s;
        n += s;
    }
    y
}

/// Summary of one chunk whose bits are set where blocks are free.
#[inline]
pub fn summarize_chunk(words: &[u64; CHUNK_WORDS]) -> RunSummary {
    let mut prefix = 0u32;
    let mut prefix_open = true;
    let mut run = 0u32; // free run ending at the current position
    let mut best = 0u32;
    for &w in words {
        if w == u64::MAX {
            run += 64;
            if prefix_open {
                prefix += 64;
            }
            best = best.max(run);
            continue;
        }
        let low = w.trailing_ones();
        if prefix_open {
            prefix += low;
            prefix_open = false;
        }
        best = best.max(run + low).max(longest_ones(w));
        run = w.leading_ones();
    }
    best = best.max(run);
    RunSummary {
        prefix,
        suffix: run,
        best,
    }
}

/// Leftmost run of at least `len` set bits lying wholly inside the chunk and
/// starting at bit `from` or later. Returns the starting bit.
pub fn find_run_in_chunk(words: &[u64; CHUNK_WORDS], from: u32, len: u32) -> Option<u32> {
    if len == 0 || from >= CHUNK_BLOCKS as u32 {
        return None;
    }
    let first = (from / 64) as usize;
    // Free run ending at the end of the previous word, counted from `from`.
    let mut carry = 0u32;
    for (i, &raw) in words.iter().enumerate().skip(first) {
        let base = i as u32 * 64;
        let w = if i == first {
            raw & (u64::MAX << (from % 64))
        } else {
            raw
        };
        if carry > 0 && carry + w.trailing_ones() >= len {
            return Some(base - carry);
        }
        if len <= 64 {
            let starts = run_starts(w, len);
            if starts != 0 {
                return Some(base + starts.trailing_zeros());
            }
        }
        carry = if w == u64::MAX {
            carry + 64
        } else {
            w.leading_ones()
        };
    }
    None
}

/// Length of the run of set bits that ends at the chunk's last bit, counting
/// only bits at positions `>= from`.
#[cfg(test)]
pub fn suffix_from(words: &[u64; CHUNK_WORDS], from: u32) -> u32 {
    let mut run = 0u32;
    for (i, &w) in words.iter().enumerate().rev() {
        let base = i as u32 * 64;
        if base + 64 <= from {
            break;
        }
        let masked = if from > base {
            w & (u64::MAX << (from - base))
        } else {
            w
        };
        let ones = masked.leading_ones();
        run += ones;
        if ones < 64 {
            break;
        }
    }
    run
}

/// Children per node of the run tree. 8 keeps siblings within a few cache
/// lines (8 leaves = 64 bytes) and the tree shallow (5 levels at 2^24 blocks).
pub const RUN_TREE_FANOUT: usize = 8;
const FANOUT_SHIFT: u32 = RUN_TREE_FANOUT.trailing_zeros();
const _: () = assert!(RUN_TREE_FANOUT.is_power_of_two());
const _: () = assert!(
    CHUNK_BLOCKS <= u16::MAX as u64,
    "leaf summaries are stored in u16"
);

/// A chunk's summary, packed: `[prefix, suffix, best, 0]`.
type Leaf = [u16; 4];

/// Summary of a span in `u64`, for the internal levels of the tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Free blocks at the start of the span.
    pub prefix: u64,
    /// Free blocks at the end of the span.
    pub suffix: u64,
    /// Longest free run inside the span.
    pub best: u64,
}

fn pack(s: RunSummary) -> Leaf {
    [s.prefix as u16, s.suffix as u16, s.best as u16, 0]
}

fn unpack(l: Leaf) -> Span {
    Span {
        prefix: l[0] as u64,
        suffix: l[1] as u64,
        best: l[2] as u64,
    }
}

/// Combine consecutive children, each `child_len` blocks. A node at the
/// right edge may have fewer than [`RUN_TREE_FANOUT`] children: it is then
/// never all free, and its suffix is the run ending at its last real block.
#[inline]
fn combine(children: impl Iterator<Item = Span>, child_len: u64) -> Span {
    let mut prefix = 0u64;
    let mut prefix_open = true;
    let mut run = 0u64;
    let mut best = 0u64;
    for c in children {
        let all_free = c.prefix == child_len;
        if prefix_open {
            prefix += c.prefix;
            prefix_open = all_free;
        }
        best = best.max(c.best).max(run + c.prefix);
        run = if all_free { run + child_len } else { c.suffix };
    }
    Span {
        prefix,
        suffix: run,
        best,
    }
}

/// An 8-ary tree of free-run summaries over the chunks, stored level by
/// level: `leaves[c]` for chunk `c`, then `levels[k][i]` summarising the
/// children `RUN_TREE_FANOUT * i ..` of the level below. The top level has
/// one node. Invariant: every internal node equals the combination of its
/// children.
#[derive(Clone, Debug)]
pub struct RunTree {
    leaves: Vec<Leaf>,
    levels: Vec<Vec<Span>>,
}

impl RunTree {
    /// A tree over `leaves`, one summary per chunk.
    pub fn new(leaves: &[RunSummary]) -> Self {
        assert!(!leaves.is_empty(), "a run tree needs at least one chunk");
        let mut tree = RunTree {
            leaves: leaves.iter().map(|&l| pack(l)).collect(),
            levels: Vec::new(),
        };
        let mut below = tree.leaves.len();
        while below > 1 || tree.levels.is_empty() {
            let level = tree.levels.len();
            let count = below.div_ceil(RUN_TREE_FANOUT);
            let nodes = (0..count).map(|i| tree.compute(level, i)).collect();
            tree.levels.push(nodes);
            below = count;
        }
        tree
    }

    /// Blocks covered by one node of internal level `level` (0 = just
    /// above the leaves).
    #[inline]
    fn node_len(level: usize) -> u64 {
        CHUNK_BLOCKS << (FANOUT_SHIFT as usize * (level + 1))
    }

    /// Number of entries in the level below internal level `level`.
    #[inline]
    fn below_len(&self, level: usize) -> usize {
        if level == 0 {
            self.leaves.len()
        } else {
            self.levels[level - 1].len()
        }
    }

    /// Entry `i` of the level below internal level `level`.
    #[inline]
    fn below(&self, level: usize, i: usize) -> Span {
        if level == 0 {
            unpack(self.leaves[i])
        } else {
            self.levels[level - 1][i]
        }
    }

    fn compute(&self, level: usize, node: usize) -> Span {
        let lo = node * RUN_TREE_FANOUT;
        let hi = (lo + RUN_TREE_FANOUT).min(self.below_len(level));
        let child_len = Self::node_len(level) >> FANOUT_SHIFT;
        combine((lo..hi).map(|i| self.below(level, i)), child_len)
    }

    /// The stored summary of chunk `chunk`.
    pub fn leaf(&self, chunk: usize) -> RunSummary {
        let l = self.leaves[chunk];
        RunSummary {
            prefix: l[0] as u32,
            suffix: l[1] as u32,
            best: l[2] as u32,
        }
    }

    /// Replace chunk `chunk`'s summary and fix its ancestors, stopping at
    /// the first ancestor that does not change.
    pub fn update(&mut self, chunk: usize, leaf: RunSummary) {
        let packed = pack(leaf);
        if self.leaves[chunk] == packed {
            return;
        }
        self.leaves[chunk] = packed;
        let mut node = chunk;
        for level in 0..self.levels.len() {
            node >>= FANOUT_SHIFT;
            let span = self.compute(level, node);
            if self.levels[level][node] == span {
                return;
            }
            self.levels[level][node] = span;
        }
    }

    /// `(prefix, suffix, longest)` free runs over the whole tree.
    pub fn totals(&self) -> (u64, u64, u64) {
        let top = self.levels.last().expect("at least one level")[0];
        (top.prefix, top.suffix, top.best)
    }

    /// Longest free run.
    pub fn largest_run(&self) -> u64 {
        self.totals().2
    }

    /// The leftmost run of at least `len` free blocks that starts at or
    /// after the start of chunk `from_chunk`, or uses `carry` free blocks
    /// lying just before that chunk. Returns the run's first block.
    /// `scan_leaf(c)` finds the leftmost run of `len` wholly inside chunk `c`.
    pub fn find(
        &self,
        from_chunk: usize,
        mut carry: u64,
        len: u64,
        scan_leaf: &dyn Fn(usize) -> u64,
    ) -> Option<u64> {
        if from_chunk >= self.leaves.len() {
            return None;
        }
        let search = Search {
            tree: self,
            len,
            scan_leaf,
        };
        search.scan(self.levels.len(), 0, from_chunk, &mut carry)
    }

    /// Check that every internal node equals the combination of its children.
    pub fn check_invariants(&self) {
        for level in 0..self.levels.len() {
            let want = self.below_len(level).div_ceil(RUN_TREE_FANOUT);
            assert_eq!(
                self.levels[level].len(),
                want,
                "run tree level {level} has the wrong node count"
            );
            for node in 0..self.levels[level].len() {
                assert_eq!(
                    self.levels[level][node],
                    self.compute(level, node),
                    "run tree level {level} node {node} disagrees with its children"
                );
            }
        }
        assert_eq!(
            self.levels.last().map(Vec::len),
            Some(1),
            "run tree must end in one root"
        );
    }

    /// Bytes held by the tree.
    pub fn heap_bytes(&self) -> usize {
        self.leaves.len() * std::mem::size_of::<Leaf>()
            + self
                .levels
                .iter()
                .map(|l| l.len() * std::mem::size_of::<Span>())
                .sum::<usize>()
    }
}

struct Search<'a> {
    tree: &'a RunTree,
    len: u64,
    scan_leaf: &'a dyn Fn(usize) -> u64,
}

impl Search<'_> {
    /// Summary and block length of entry `i` at `depth` (0 = leaves,
    /// `d > 0` = internal level `d - 1`).
    #[inline]
    fn entry(&self, depth: usize, i: usize) -> (Span, u64) {
        if depth == 0 {
            (unpack(self.tree.leaves[i]), CHUNK_BLOCKS)
        } else {
            (self.tree.levels[depth - 1][i], RunTree::node_len(depth - 1))
        }
    }

    fn entry_count(&self, depth: usize) -> usize {
        if depth == 0 {
            self.tree.leaves.len()
        } else {
            self.tree.levels[depth - 1].len()
        }
    }

    /// Check a whole entry (one starting at or after `from`): the run
    /// found in it, or `None` with `carry` moved past it.
    #[inline]
    fn whole(&self, depth: usize, i: usize, carry: &mut u64) -> Option<u64> {
        let (s, node_len) = self.entry(depth, i);
        if *carry + s.prefix >= self.len {
            let lo = (i << (FANOUT_SHIFT as usize * depth)) as u64;
            return Some(lo * CHUNK_BLOCKS - *carry);
        }
        if s.best >= self.len {
            return Some(self.descend(depth, i, *carry));
        }
        *carry = if s.prefix == node_len {
            *carry + node_len
        } else {
            s.suffix
        };
        None
    }

    /// Visit entry `i` at `depth`, restricted to chunks `>= from`, left to
    /// right, carrying the free run that ends just before the visited part.
    /// Whole children are checked in the loop; only the one child that
    /// straddles `from` is recursed into.
    fn scan(&self, depth: usize, i: usize, from: usize, carry: &mut u64) -> Option<u64> {
        let shift = FANOUT_SHIFT as usize * depth;
        let lo = i << shift;
        let width = 1usize << shift;
        if lo >= from {
            return self.whole(depth, i, carry);
        }
        debug_assert!(
            depth > 0 && from < lo + width,
            "scan of an entry wholly before `from`"
        );
        let (s, _) = self.entry(depth, i);
        if s.best < self.len && *carry + s.best < self.len {
            // No run of `len` lies inside this node, and the carry plus any
            // run inside cannot reach `len` either: the only thing that
            // leaves the node is the free run at its end, clipped to `from`.
            let from_block = from as u64 * CHUNK_BLOCKS;
            let end_block = (lo + width) as u64 * CHUNK_BLOCKS;
            let span = end_block - from_block;
            *carry = if s.suffix >= span {
                *carry + span
            } else {
                s.suffix
            };
            return None;
        }
        let child_shift = shift - FANOUT_SHIFT as usize;
        let first = i << FANOUT_SHIFT;
        let last = (first + RUN_TREE_FANOUT).min(self.entry_count(depth - 1));
        // Children wholly before `from` are skipped without reading them.
        let straddling = from >> child_shift;
        if straddling < last {
            if let Some(found) = self.scan(depth - 1, straddling, from, carry) {
                return Some(found);
            }
        }
        for child in straddling + 1..last {
            if let Some(found) = self.whole(depth - 1, child, carry) {
                return Some(found);
            }
        }
        None
    }

    /// Leftmost qualifying run inside entry `i` at `depth`, known to exist.
    fn descend(&self, depth: usize, i: usize, mut carry: u64) -> u64 {
        if depth == 0 {
            return (self.scan_leaf)(i);
        }
        let first = i << FANOUT_SHIFT;
        let last = (first + RUN_TREE_FANOUT).min(self.entry_count(depth - 1));
        let child_shift = FANOUT_SHIFT as usize * (depth - 1);
        for child in first..last {
            let (s, child_len) = self.entry(depth - 1, child);
            if carry + s.prefix >= self.len {
                return ((child << child_shift) as u64) * CHUNK_BLOCKS - carry;
            }
            if s.best >= self.len {
                return self.descend(depth - 1, child, carry);
            }
            carry = if s.prefix == child_len {
                carry + child_len
            } else {
                s.suffix
            };
        }
        unreachable!(
            "run tree promised a run of {} blocks under depth {depth} entry {i}",
            self.len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(bits: &[bool]) -> RunSummary {
        let prefix = bits.iter().take_while(|b| **b).count() as u32;
        let suffix = bits.iter().rev().take_while(|b| **b).count() as u32;
        let mut best = 0;
        let mut run = 0;
        for &b in bits {
            run = if b { run + 1 } else { 0 };
            best = best.max(run);
        }
        RunSummary {
            prefix,
            suffix,
            best,
        }
    }

    fn chunk_bits(words: &[u64; CHUNK_WORDS]) -> Vec<bool> {
        (0..CHUNK_BLOCKS as usize)
            .map(|i| words[i / 64] >> (i % 64) & 1 == 1)
            .collect()
    }

    fn patterns(seed: u64) -> [u64; CHUNK_WORDS] {
        // xorshift mixes of sparse and dense words, including all-ones and zeros.
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut words = [0u64; CHUNK_WORDS];
        for w in &mut words {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = match x % 5 {
                0 => 0,
                1 => u64::MAX,
                2 => x,
                3 => x | x.rotate_left(1) | x.rotate_left(2),
                _ => x & x.rotate_left(3),
            };
        }
        words
    }

    #[test]
    fn chunk_summary_matches_naive() {
        for seed in 0..4000 {
            let words = patterns(seed);
            let bits = chunk_bits(&words);
            assert_eq!(summarize_chunk(&words), naive(&bits), "seed {seed}");
            assert_eq!(summarize_chunk(&words).best, naive(&bits).best);
            for from in [0u32, 1, 63, 64, 200, 511] {
                let want_suffix = bits[from as usize..]
                    .iter()
                    .rev()
                    .take_while(|b| **b)
                    .count() as u32;
                assert_eq!(
                    suffix_from(&words, from),
                    want_suffix,
                    "seed {seed} from {from}"
                );
                for len in [1u32, 2, 7, 64, 65, 300, 512] {
                    // The leftmost start s >= from with len free bits.
                    let want = (from as usize..=CHUNK_BLOCKS as usize - len as usize)
                        .find(|&s| bits[s..s + len as usize].iter().all(|b| *b))
                        .map(|s| s as u32);
                    let got = find_run_in_chunk(&words, from, len);
                    assert_eq!(got, want, "seed {seed} from {from} len {len}");
                }
            }
        }
    }

    #[test]
    fn run_starts_matches_naive() {
        for seed in 0..2000u64 {
            let w = patterns(seed)[seed as usize % CHUNK_WORDS];
            for len in 1..=64u32 {
                let mut want = 0u64;
                for s in 0..=(64 - len) {
                    if (s..s + len).all(|i| w >> i & 1 == 1) {
                        want |= 1 << s;
                    }
                }
                assert_eq!(run_starts(w, len), want, "word {w:#x} len {len}");
            }
        }
    }

    #[test]
    fn longest_ones_matches_naive() {
        for seed in 0..2000u64 {
            let w = patterns(seed)[seed as usize % CHUNK_WORDS];
            let mut best = 0;
            let mut run = 0;
            for i in 0..64 {
                run = if w >> i & 1 == 1 { run + 1 } else { 0 };
                best = best.max(run);
            }
            assert_eq!(longest_ones(w), best, "word {w:#x}");
        }
    }
}
