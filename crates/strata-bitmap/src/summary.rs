//! The "which chunks have a free block" hierarchy.
//!
//! Level 0 holds one bit per chunk; each level above holds one bit per word
//! of the level below, set iff that word is non-zero. The top level is a
//! single word, so finding the next chunk with a free block from any
//! position costs O(log64 chunks) word reads.

/// Hierarchical set of chunk indices.
#[derive(Clone, Debug)]
pub struct ChunkSummary {
    chunk_count: usize,
    levels: Vec<Vec<u64>>,
}

impl ChunkSummary {
    /// An empty set over `chunk_count` chunks.
    pub fn new(chunk_count: usize) -> Self {
        assert!(chunk_count > 0, "summary over zero chunks");
        let mut levels = Vec::new();
        let mut bits = chunk_count;
        loop {
            let words = bits.div_ceil(64);
            levels.push(vec![0u64; words]);
            if words == 1 {
                break;
            }
            bits = words;
        }
        ChunkSummary {
            chunk_count,
            levels,
        }
    }

    /// Whether chunk `chunk` is in the set.
    #[inline]
    pub fn contains(&self, chunk: usize) -> bool {
        self.levels[0][chunk / 64] >> (chunk % 64) & 1 == 1
    }

    /// Add chunk `chunk`.
    #[inline]
    pub fn insert(&mut self, chunk: usize) {
        let mut pos = chunk;
        for level in &mut self.levels {
            let word = &mut level[pos / 64];
            let was_empty = *word == 0;
            *word |= 1 << (pos % 64);
            if !was_empty {
                return;
            }
            pos /= 64;
        }
    }

    /// Remove chunk `chunk`.
    #[inline]
    pub fn remove(&mut self, chunk: usize) {
        let mut pos = chunk;
        for level in &mut self.levels {
            let word = &mut level[pos / 64];
            *word &= !(1 << (pos % 64));
            if *word != 0 {
                return;
            }
            pos /= 64;
        }
    }

    /// The smallest chunk `>= from` in the set.
    #[inline]
    pub fn next_from(&self, from: usize) -> Option<usize> {
        let mut level = 0;
        let mut pos = from;
        loop {
            let words = &self.levels[level];
            let w = pos / 64;
            if w >= words.len() {
                return None;
            }
            let masked = words[w] & (u64::MAX << (pos % 64));
            if masked != 0 {
                pos = w * 64 + masked.trailing_zeros() as usize;
                break;
            }
            level += 1;
            if level == self.levels.len() {
                return None;
            }
            pos = w + 1;
        }
        while level > 0 {
            level -= 1;
            let word = self.levels[level][pos];
            debug_assert!(
                word != 0,
                "summary level {} word {pos} is empty but marked",
                level
            );
            pos = pos * 64 + word.trailing_zeros() as usize;
        }
        Some(pos)
    }

    /// Check each level against the one below and against `has_free(chunk)`.
    pub fn check_invariants(&self, has_free: impl Fn(usize) -> bool) {
        for chunk in 0..self.levels[0].len() * 64 {
            let want = chunk < self.chunk_count && has_free(chunk);
            assert_eq!(
                self.contains(chunk),
                want,
                "summary bit for chunk {chunk} (chunk_count {}) disagrees with the words",
                self.chunk_count
            );
        }
        for level in 1..self.levels.len() {
            for (i, &below) in self.levels[level - 1].iter().enumerate() {
                let bit = self.levels[level][i / 64] >> (i % 64) & 1 == 1;
                assert_eq!(
                    bit,
                    below != 0,
                    "summary level {level} bit {i} disagrees with level {}",
                    level - 1
                );
            }
            let used = self.levels[level - 1].len();
            for i in used..self.levels[level].len() * 64 {
                let bit = self.levels[level][i / 64] >> (i % 64) & 1 == 1;
                assert!(
                    !bit,
                    "summary level {level} bit {i} set past the level below ({used} words)"
                );
            }
        }
    }

    /// Bytes held by the hierarchy.
    pub fn heap_bytes(&self) -> usize {
        self.levels.iter().map(|l| l.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_from_matches_naive_set() {
        for &n in &[1usize, 63, 64, 65, 4096, 4097, 300_000] {
            let mut s = ChunkSummary::new(n);
            let mut model = vec![false; n];
            let mut x = 0x1234_5678u64 ^ n as u64;
            for step in 0..3000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let c = (x % n as u64) as usize;
                if x & (1 << 40) != 0 {
                    s.insert(c);
                    model[c] = true;
                } else {
                    s.remove(c);
                    model[c] = false;
                }
                let from = ((x >> 20) % n as u64) as usize;
                let want = (from..n).find(|&i| model[i]);
                assert_eq!(s.next_from(from), want, "n {n} step {step} from {from}");
            }
            s.check_invariants(|c| model[c]);
        }
    }
}
