//! The naive model of a [`strata_bitmap::BlockBitmap`] and its
//! [`strata_bitmap::BlockCache`] magazine, shared by `tests/model.rs` and
//! the fuzz target `fuzz/fuzz_targets/ops.rs` (each includes this file with
//! `#[path = ...] mod naive;`). Plain std and `strata_bitmap` only.
//!
//! The model keeps one state per block, the three counters and the next-fit
//! cursor, and predicts every result exactly: the position a next-fit or
//! hinted allocation returns, the error value (kind and first offending
//! block) of a refused operation, and the blocks a magazine claims and
//! hands out.

// Each includer uses a different subset of the model.
#![allow(dead_code)]

use std::ops::Range;

use strata_bitmap::{BitmapError, Extent, MAGAZINE_REFILL_BLOCKS, MAGAZINE_WORDS, WORD_BITS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Free,
    Allocated,
    Reserved,
}

/// The naive model: one state per block, the counters, and the next-fit cursor.
pub struct Model {
    states: Vec<State>,
    pub free: u64,
    pub allocated: u64,
    pub reserved: u64,
    pub cursor: u64,
}

impl Model {
    pub fn new(capacity: u64) -> Self {
        Model {
            states: vec![State::Free; capacity as usize],
            free: capacity,
            allocated: 0,
            reserved: 0,
            cursor: 0,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.states.len() as u64
    }

    pub fn state(&self, block: u64) -> State {
        self.states[block as usize]
    }

    fn counter(&mut self, state: State) -> &mut u64 {
        match state {
            State::Free => &mut self.free,
            State::Allocated => &mut self.allocated,
            State::Reserved => &mut self.reserved,
        }
    }

    pub fn set(&mut self, block: u64, state: State) {
        let old = self.states[block as usize];
        *self.counter(old) -= 1;
        *self.counter(state) += 1;
        self.states[block as usize] = state;
    }

    pub fn set_range(&mut self, range: Range<u64>, state: State) {
        for block in range {
            self.set(block, state);
        }
    }

    /// First block of `start..end` in `state`.
    pub fn first_in(&self, start: u64, end: u64, state: State) -> Option<u64> {
        (start..end).find(|&b| self.states[b as usize] == state)
    }

    pub fn all_in(&self, range: Range<u64>, state: State) -> bool {
        range.clone().all(|b| self.states[b as usize] == state)
    }

    /// First free block at or after `hint`, wrapping to the first from 0.
    pub fn first_free_wrapping(&self, hint: u64) -> Option<u64> {
        let hint = if hint >= self.capacity() { 0 } else { hint };
        self.first_in(hint, self.capacity(), State::Free)
            .or_else(|| self.first_in(0, hint, State::Free))
    }

    /// Leftmost `s >= from` with `s..s + len` all free (`None` for `len == 0`).
    pub fn find_run(&self, from: u64, len: u64) -> Option<u64> {
        let mut run = 0u64;
        for b in from..self.capacity() {
            if self.states[b as usize] == State::Free {
                run += 1;
                if run == len {
                    return Some(b + 1 - len);
                }
            } else {
                run = 0;
            }
        }
        None
    }

    /// Where `alloc_extent_near(len, hint)` must put its extent.
    pub fn extent_near(&self, len: u64, hint: u64) -> Option<u64> {
        if len == 0 || len > self.free {
            return None;
        }
        let hint = if hint >= self.capacity() { 0 } else { hint };
        self.find_run(hint, len).or_else(|| self.find_run(0, len))
    }

    pub fn largest_run(&self) -> u64 {
        let (mut best, mut run) = (0u64, 0u64);
        for &s in &self.states {
            run = if s == State::Free { run + 1 } else { 0 };
            best = best.max(run);
        }
        best
    }

    pub fn reserved_ranges(&self) -> Vec<Range<u64>> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for (b, &s) in self.states.iter().enumerate() {
            if s != State::Reserved {
                continue;
            }
            let b = b as u64;
            match ranges.last_mut() {
                Some(last) if last.end == b => last.end = b + 1,
                _ => ranges.push(b..b + 1),
            }
        }
        ranges
    }

    /// The cursor after handing out blocks ending at `end`.
    pub fn advance_cursor(&mut self, end: u64) {
        self.cursor = if end >= self.capacity() { 0 } else { end };
    }

    /// The bitmap handed out `extent`: allocated, and the cursor moves past it.
    pub fn hand_out(&mut self, extent: Extent) {
        self.set_range(extent.blocks(), State::Allocated);
        self.advance_cursor(extent.end());
    }

    /// An accepted `reserve(range)`: its free blocks become reserved.
    pub fn apply_reserve(&mut self, range: Range<u64>) {
        for b in range {
            if self.state(b) == State::Free {
                self.set(b, State::Reserved);
            }
        }
    }

    /// `try_alloc()`: the next-fit block, or `NoSpace` (on a full bitmap).
    pub fn expect_try_alloc(&self) -> Result<u64, BitmapError> {
        self.first_free_wrapping(self.cursor)
            .ok_or(BitmapError::NoSpace {
                requested_blocks: 1,
                free_blocks: 0,
                largest_free_run_blocks: 0,
            })
    }

    /// `try_alloc_extent(len)`: the next-fit extent, `ZeroLength` or `NoSpace`.
    pub fn expect_try_alloc_extent(&self, len: u64) -> Result<Extent, BitmapError> {
        if len == 0 {
            return Err(BitmapError::ZeroLength);
        }
        match self.extent_near(len, self.cursor) {
            Some(start) => Ok(Extent { start, len }),
            None => Err(BitmapError::NoSpace {
                requested_blocks: len,
                free_blocks: self.free,
                largest_free_run_blocks: self.largest_run(),
            }),
        }
    }

    /// The range checks shared by extents and reserve ranges.
    pub fn check_range(&self, start: u64, len: u64) -> Result<u64, BitmapError> {
        if len == 0 {
            return Err(BitmapError::ZeroLength);
        }
        match start.checked_add(len) {
            Some(end) if end <= self.capacity() => Ok(end),
            _ => Err(BitmapError::OutOfRange {
                block: start.max(self.capacity()),
                capacity_blocks: self.capacity(),
            }),
        }
    }

    pub fn expect_free(&self, block: u64) -> Result<(), BitmapError> {
        if block >= self.capacity() {
            return Err(BitmapError::OutOfRange {
                block,
                capacity_blocks: self.capacity(),
            });
        }
        match self.state(block) {
            State::Free => Err(BitmapError::NotAllocated { block }),
            State::Reserved => Err(BitmapError::Reserved { block }),
            State::Allocated => Ok(()),
        }
    }

    /// `free_extent`: the first free block is reported first, then the first reserved one.
    pub fn expect_free_extent(&self, extent: Extent) -> Result<(), BitmapError> {
        let end = self.check_range(extent.start, extent.len)?;
        if let Some(block) = self.first_in(extent.start, end, State::Free) {
            return Err(BitmapError::NotAllocated { block });
        }
        if let Some(block) = self.first_in(extent.start, end, State::Reserved) {
            return Err(BitmapError::Reserved { block });
        }
        Ok(())
    }

    pub fn expect_reserve(&self, range: &Range<u64>) -> Result<(), BitmapError> {
        if range.start >= range.end {
            return Err(BitmapError::ZeroLength);
        }
        let end = self.check_range(range.start, range.end - range.start)?;
        match self.first_in(range.start, end, State::Allocated) {
            Some(block) => Err(BitmapError::ReserveInUse { block }),
            None => Ok(()),
        }
    }
}

/// Exact model of a `BlockCache` magazine: a stack of `(word, blocks held)`,
/// the top (last entry) serving allocations. Blocks in the magazine are
/// `Allocated` in the [`Model`] (claimed), but not held by the test.
#[derive(Default)]
pub struct MagazineModel {
    words: Vec<(u64, u64)>,
}

impl MagazineModel {
    pub fn cached_blocks(&self) -> u64 {
        self.words.iter().map(|&(_, m)| m.count_ones() as u64).sum()
    }

    /// Claim every free block of the word holding the first free block at or
    /// after the cursor; the cursor moves one past that first block.
    fn claim_word(model: &mut Model) -> Option<(u64, u64)> {
        let first = model.first_free_wrapping(model.cursor)?;
        model.advance_cursor(first + 1);
        let word = first / WORD_BITS;
        let mut mask = 0u64;
        for bit in 0..WORD_BITS {
            let block = word * WORD_BITS + bit;
            if block < model.capacity() && model.state(block) == State::Free {
                model.set(block, State::Allocated);
                mask |= 1 << bit;
            }
        }
        Some((word, mask))
    }

    fn refill(&mut self, model: &mut Model) -> bool {
        let mut claimed = 0u64;
        while self.words.len() < MAGAZINE_WORDS && claimed < MAGAZINE_REFILL_BLOCKS {
            match Self::claim_word(model) {
                Some((word, mask)) => {
                    self.words.push((word, mask));
                    claimed += mask.count_ones() as u64;
                }
                None => break,
            }
        }
        // The first word claimed (lowest address in a sweep) serves first.
        self.words.reverse();
        !self.words.is_empty()
    }

    pub fn alloc(&mut self, model: &mut Model) -> Option<u64> {
        loop {
            if self.words.is_empty() && !self.refill(model) {
                return None;
            }
            let (word, mask) = self.words.last_mut().expect("refilled");
            if *mask != 0 {
                let bit = mask.trailing_zeros() as u64;
                *mask &= *mask - 1;
                return Some(*word * WORD_BITS + bit);
            }
            self.words.pop();
        }
    }

    pub fn free(&mut self, model: &mut Model, block: u64) -> Result<(), BitmapError> {
        if block >= model.capacity() {
            return Err(BitmapError::OutOfRange {
                block,
                capacity_blocks: model.capacity(),
            });
        }
        let word = block / WORD_BITS;
        let bit = 1u64 << (block % WORD_BITS);
        if let Some(entry) = self.words.iter_mut().find(|(w, _)| *w == word) {
            if entry.1 & bit != 0 {
                return Err(BitmapError::NotAllocated { block });
            }
            if model.state(block) == State::Reserved {
                return Err(BitmapError::Reserved { block });
            }
            entry.1 |= bit; // back in the magazine; still claimed in the bitmap
            return Ok(());
        }
        model.expect_free(block)?;
        model.set(block, State::Free);
        Ok(())
    }

    /// Return every cached block to the bitmap (`drain`, `bitmap()`, drop).
    pub fn drain(&mut self, model: &mut Model) {
        for (word, mask) in self.words.drain(..) {
            for bit in 0..WORD_BITS {
                if mask >> bit & 1 == 1 {
                    model.set(word * WORD_BITS + bit, State::Free);
                }
            }
        }
    }
}
