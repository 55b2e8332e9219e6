//! Fuzz target: an arbitrary capacity and sequence of operations on a
//! `BlockBitmap` (and its `BlockCache`), each result checked against a naive
//! model with one state per block: exact positions (next-fit cursor, hints),
//! exact error values, exact cache magazine contents, counts and statistics.
//! `check_invariants()` runs every few operations and at the end.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use strata_bitmap::{
    BitmapError, Block, BlockBitmap, Extent, MAGAZINE_REFILL_BLOCKS, MAGAZINE_WORDS, WORD_BITS,
};

/// Capacities are `1..=CAPACITY_MAX`: several chunks, cheap to model.
const CAPACITY_MAX: u64 = 5000;
/// Full invariant checks every this many operations.
const INVARIANTS_EVERY: usize = 16;

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u16,
    ops: Vec<Op>,
}

/// A block position: anywhere, near the end, past the end.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pos {
    At(u16),
    FromEnd(u8),
    PastEnd(u8),
    Max,
}

impl Pos {
    fn resolve(self, cap: u64) -> u64 {
        match self {
            Pos::At(x) => x as u64 % (cap + 2),
            Pos::FromEnd(x) => cap.saturating_sub(1 + x as u64),
            Pos::PastEnd(x) => cap + x as u64,
            Pos::Max => u64::MAX,
        }
    }
}

/// An extent length: small, large, edge values.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u8),
    Large(u16),
    Zero,
    FreeTotal,
    LongestRun,
    Max,
}

impl Len {
    fn resolve(self, model: &Model) -> u64 {
        match self {
            Len::Small(x) => 1 + (x as u64 % 16),
            Len::Large(x) => x as u64,
            Len::Zero => 0,
            Len::FreeTotal => model.free,
            Len::LongestRun => model.largest_run(),
            Len::Max => u64::MAX,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc,
    AllocNear(Pos),
    AllocExtent(Len),
    AllocExtentNear(Len, Pos),
    TryAlloc,
    TryAllocExtent(Len),
    Free(Pos),
    FreeHeld(u16),
    FreeHeldPart(u16, u16, u16),
    FreeExtent(Pos, Len),
    Reserve(Pos, Len),
    ReserveRange(Pos, Pos),
    Stats,
    Probe(Pos),
    RoundTrip,
    Cache(Vec<CacheOp>),
}

#[derive(Arbitrary, Debug)]
enum CacheOp {
    Alloc,
    Free(Pos),
    FreeMine(u16),
    Drain,
    Bitmap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Allocated,
    Reserved,
}

struct Model {
    states: Vec<State>,
    free: u64,
    allocated: u64,
    reserved: u64,
    cursor: u64,
}

impl Model {
    fn new(cap: u64) -> Self {
        Model {
            states: vec![State::Free; cap as usize],
            free: cap,
            allocated: 0,
            reserved: 0,
            cursor: 0,
        }
    }

    fn cap(&self) -> u64 {
        self.states.len() as u64
    }

    fn state(&self, b: u64) -> State {
        self.states[b as usize]
    }

    fn set(&mut self, b: u64, s: State) {
        for (state, delta) in [(self.states[b as usize], u64::MAX), (s, 1)] {
            let c = match state {
                State::Free => &mut self.free,
                State::Allocated => &mut self.allocated,
                State::Reserved => &mut self.reserved,
            };
            *c = c.wrapping_add(delta);
        }
        self.states[b as usize] = s;
    }

    fn first_in(&self, start: u64, end: u64, s: State) -> Option<u64> {
        (start..end).find(|&b| self.states[b as usize] == s)
    }

    fn first_free_wrapping(&self, hint: u64) -> Option<u64> {
        let hint = if hint >= self.cap() { 0 } else { hint };
        self.first_in(hint, self.cap(), State::Free)
            .or_else(|| self.first_in(0, hint, State::Free))
    }

    fn find_run(&self, from: u64, len: u64) -> Option<u64> {
        let mut run = 0;
        for b in from..self.cap() {
            run = if self.state(b) == State::Free {
                run + 1
            } else {
                0
            };
            if run == len {
                return Some(b + 1 - len);
            }
        }
        None
    }

    fn extent_near(&self, len: u64, hint: u64) -> Option<u64> {
        if len == 0 || len > self.free {
            return None;
        }
        let hint = if hint >= self.cap() { 0 } else { hint };
        self.find_run(hint, len).or_else(|| self.find_run(0, len))
    }

    fn largest_run(&self) -> u64 {
        let (mut best, mut run) = (0, 0);
        for &s in &self.states {
            run = if s == State::Free { run + 1 } else { 0 };
            best = best.max(run);
        }
        best
    }

    fn advance_cursor(&mut self, end: u64) {
        self.cursor = if end >= self.cap() { 0 } else { end };
    }

    fn check_range(&self, start: u64, len: u64) -> Result<u64, BitmapError> {
        if len == 0 {
            return Err(BitmapError::ZeroLength);
        }
        match start.checked_add(len) {
            Some(end) if end <= self.cap() => Ok(end),
            _ => Err(BitmapError::OutOfRange {
                block: start.max(self.cap()),
                capacity_blocks: self.cap(),
            }),
        }
    }

    fn expect_free(&self, b: u64) -> Result<(), BitmapError> {
        if b >= self.cap() {
            return Err(BitmapError::OutOfRange {
                block: b,
                capacity_blocks: self.cap(),
            });
        }
        match self.state(b) {
            State::Free => Err(BitmapError::NotAllocated { block: b }),
            State::Reserved => Err(BitmapError::Reserved { block: b }),
            State::Allocated => Ok(()),
        }
    }

    fn expect_free_extent(&self, e: Extent) -> Result<(), BitmapError> {
        let end = self.check_range(e.start, e.len)?;
        if let Some(block) = self.first_in(e.start, end, State::Free) {
            return Err(BitmapError::NotAllocated { block });
        }
        if let Some(block) = self.first_in(e.start, end, State::Reserved) {
            return Err(BitmapError::Reserved { block });
        }
        Ok(())
    }

    fn expect_reserve(&self, start: u64, end: u64) -> Result<(), BitmapError> {
        if start >= end {
            return Err(BitmapError::ZeroLength);
        }
        let end = self.check_range(start, end - start)?;
        match self.first_in(start, end, State::Allocated) {
            Some(block) => Err(BitmapError::ReserveInUse { block }),
            None => Ok(()),
        }
    }

    fn reserved_ranges(&self) -> Vec<std::ops::Range<u64>> {
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for b in 0..self.cap() {
            if self.state(b) == State::Reserved {
                match out.last_mut() {
                    Some(r) if r.end == b => r.end = b + 1,
                    _ => out.push(b..b + 1),
                }
            }
        }
        out
    }
}

/// Exact model of a `BlockCache` magazine (see tests/model.rs).
#[derive(Default)]
struct Magazine {
    words: Vec<(u64, u64)>,
}

impl Magazine {
    fn cached(&self) -> u64 {
        self.words.iter().map(|w| w.1.count_ones() as u64).sum()
    }

    fn refill(&mut self, m: &mut Model) -> bool {
        let mut claimed = 0;
        while self.words.len() < MAGAZINE_WORDS && claimed < MAGAZINE_REFILL_BLOCKS {
            let Some(first) = m.first_free_wrapping(m.cursor) else {
                break;
            };
            m.advance_cursor(first + 1);
            let word = first / WORD_BITS;
            let mut mask = 0u64;
            for bit in 0..WORD_BITS {
                let b = word * WORD_BITS + bit;
                if b < m.cap() && m.state(b) == State::Free {
                    m.set(b, State::Allocated);
                    mask |= 1 << bit;
                }
            }
            self.words.push((word, mask));
            claimed += mask.count_ones() as u64;
        }
        self.words.reverse();
        !self.words.is_empty()
    }

    fn alloc(&mut self, m: &mut Model) -> Option<u64> {
        loop {
            if self.words.is_empty() && !self.refill(m) {
                return None;
            }
            let (word, mask) = self.words.last_mut()?;
            if *mask != 0 {
                let bit = mask.trailing_zeros() as u64;
                *mask &= *mask - 1;
                return Some(*word * WORD_BITS + bit);
            }
            self.words.pop();
        }
    }

    fn free(&mut self, m: &mut Model, b: u64) -> Result<(), BitmapError> {
        if b >= m.cap() {
            return Err(BitmapError::OutOfRange {
                block: b,
                capacity_blocks: m.cap(),
            });
        }
        let bit = 1u64 << (b % WORD_BITS);
        if let Some(entry) = self.words.iter_mut().find(|w| w.0 == b / WORD_BITS) {
            if entry.1 & bit != 0 {
                return Err(BitmapError::NotAllocated { block: b });
            }
            if m.state(b) == State::Reserved {
                return Err(BitmapError::Reserved { block: b });
            }
            entry.1 |= bit;
            return Ok(());
        }
        m.expect_free(b)?;
        m.set(b, State::Free);
        Ok(())
    }

    fn drain(&mut self, m: &mut Model) {
        for (word, mask) in self.words.drain(..) {
            for bit in (0..WORD_BITS).filter(|bit| mask >> bit & 1 == 1) {
                m.set(word * WORD_BITS + bit, State::Free);
            }
        }
    }
}

fn check_counts(bm: &BlockBitmap, m: &Model, i: usize) {
    assert_eq!(bm.free_blocks(), m.free, "op {i}: free_blocks");
    assert_eq!(
        bm.allocated_blocks(),
        m.allocated,
        "op {i}: allocated_blocks"
    );
    assert_eq!(bm.reserved_blocks(), m.reserved, "op {i}: reserved_blocks");
}

fn take(m: &mut Model, held: &mut Vec<Extent>, e: Extent, i: usize) {
    assert!(
        (e.start..e.end()).all(|b| b < m.cap() && m.state(b) == State::Free),
        "op {i}: handed out {e:?}, not all free"
    );
    for b in e.blocks() {
        m.set(b, State::Allocated);
    }
    m.advance_cursor(e.end());
    held.push(e);
}

fn run(input: Input) {
    let cap = 1 + input.capacity as u64 % CAPACITY_MAX;
    let mut bm = BlockBitmap::new(cap).expect("valid capacity");
    let mut m = Model::new(cap);
    let mut held: Vec<Extent> = Vec::new();
    for (i, op) in input.ops.into_iter().enumerate() {
        match op {
            Op::Alloc | Op::AllocNear(_) => {
                let (want, got) = match op {
                    Op::AllocNear(p) => {
                        let h = p.resolve(cap);
                        (m.first_free_wrapping(h), bm.alloc_near(h))
                    }
                    _ => (m.first_free_wrapping(m.cursor), bm.alloc()),
                };
                assert_eq!(got, want.map(Block), "op {i}: {op:?}");
                if let Some(b) = want {
                    take(&mut m, &mut held, Extent { start: b, len: 1 }, i);
                }
            }
            Op::AllocExtent(len) | Op::AllocExtentNear(len, _) => {
                let len = len.resolve(&m);
                let (want, got) = match op {
                    Op::AllocExtentNear(_, p) => {
                        let h = p.resolve(cap);
                        (m.extent_near(len, h), bm.alloc_extent_near(len, h))
                    }
                    _ => (m.extent_near(len, m.cursor), bm.alloc_extent(len)),
                };
                let want = want.map(|start| Extent { start, len });
                assert_eq!(got, want, "op {i}: {op:?} len {len}");
                if let Some(e) = want {
                    take(&mut m, &mut held, e, i);
                }
            }
            Op::TryAlloc => {
                let got = bm.try_alloc();
                match m.first_free_wrapping(m.cursor) {
                    Some(b) => {
                        assert_eq!(got, Ok(Block(b)), "op {i}");
                        take(&mut m, &mut held, Extent { start: b, len: 1 }, i);
                    }
                    None => assert_eq!(
                        got,
                        Err(BitmapError::NoSpace {
                            requested_blocks: 1,
                            free_blocks: 0,
                            largest_free_run_blocks: 0
                        }),
                        "op {i}"
                    ),
                }
            }
            Op::TryAllocExtent(len) => {
                let len = len.resolve(&m);
                let want = if len == 0 {
                    Err(BitmapError::ZeroLength)
                } else {
                    m.extent_near(len, m.cursor)
                        .map(|start| Extent { start, len })
                        .ok_or(BitmapError::NoSpace {
                            requested_blocks: len,
                            free_blocks: m.free,
                            largest_free_run_blocks: m.largest_run(),
                        })
                };
                assert_eq!(bm.try_alloc_extent(len), want, "op {i}: len {len}");
                if let Ok(e) = want {
                    take(&mut m, &mut held, e, i);
                }
            }
            Op::Free(p) => {
                let b = p.resolve(cap);
                let want = m.expect_free(b);
                assert_eq!(bm.free(Block(b)), want, "op {i}: free({b})");
                if want.is_ok() {
                    m.set(b, State::Free);
                }
            }
            Op::FreeHeld(k) | Op::FreeHeldPart(k, _, _) if !held.is_empty() => {
                let e = held.swap_remove(k as usize % held.len());
                let e = match op {
                    Op::FreeHeldPart(_, a, l) => {
                        let start = e.start + a as u64 % e.len;
                        let len = 1 + l as u64 % (e.end() - start);
                        if start > e.start {
                            held.push(Extent {
                                start: e.start,
                                len: start - e.start,
                            });
                        }
                        if start + len < e.end() {
                            held.push(Extent {
                                start: start + len,
                                len: e.end() - start - len,
                            });
                        }
                        Extent { start, len }
                    }
                    _ => e,
                };
                let want = m.expect_free_extent(e);
                assert_eq!(
                    bm.free_extent(e),
                    want,
                    "op {i}: free_extent({e:?}) of a held extent"
                );
                if want.is_ok() {
                    e.blocks().for_each(|b| m.set(b, State::Free));
                }
            }
            Op::FreeHeld(_) | Op::FreeHeldPart(..) => {}
            Op::FreeExtent(p, len) => {
                let e = Extent {
                    start: p.resolve(cap),
                    len: len.resolve(&m),
                };
                let before = bm.to_bytes();
                let want = m.expect_free_extent(e);
                assert_eq!(bm.free_extent(e), want, "op {i}: free_extent({e:?})");
                match want {
                    Ok(()) => e.blocks().for_each(|b| m.set(b, State::Free)),
                    Err(_) => assert!(
                        bm.to_bytes() == before,
                        "op {i}: refused free_extent changed the image"
                    ),
                }
            }
            Op::Reserve(..) | Op::ReserveRange(..) => {
                let (start, end) = match op {
                    Op::Reserve(p, len) => {
                        let start = p.resolve(cap);
                        (start, start.saturating_add(len.resolve(&m)))
                    }
                    Op::ReserveRange(a, b) => (a.resolve(cap), b.resolve(cap)),
                    _ => unreachable!(),
                };
                let before = bm.to_bytes();
                let want = m.expect_reserve(start, end);
                assert_eq!(
                    bm.reserve(start..end),
                    want,
                    "op {i}: reserve({start}..{end})"
                );
                match want {
                    Ok(()) => {
                        for b in start..end {
                            if m.state(b) == State::Free {
                                m.set(b, State::Reserved);
                            }
                        }
                        assert_eq!(bm.reserved(), &m.reserved_ranges()[..], "op {i}: ranges");
                    }
                    Err(_) => assert!(
                        bm.to_bytes() == before,
                        "op {i}: refused reserve changed the image"
                    ),
                }
            }
            Op::Stats => {
                let s = bm.stats();
                assert_eq!(s.capacity_blocks, cap);
                assert_eq!(
                    (s.free_blocks, s.allocated_blocks, s.reserved_blocks),
                    (m.free, m.allocated, m.reserved),
                    "op {i}: stats counts"
                );
                assert_eq!(
                    s.largest_free_run_blocks,
                    m.largest_run(),
                    "op {i}: largest run"
                );
            }
            Op::Probe(p) => {
                let b = p.resolve(cap);
                let s = (b < cap).then(|| m.state(b));
                assert_eq!(
                    bm.is_free(b),
                    s == Some(State::Free),
                    "op {i}: is_free({b})"
                );
                assert_eq!(
                    bm.is_allocated(b),
                    s == Some(State::Allocated),
                    "op {i}: is_allocated({b})"
                );
                assert_eq!(
                    bm.is_reserved(b),
                    s == Some(State::Reserved),
                    "op {i}: is_reserved({b})"
                );
            }
            Op::RoundTrip => {
                let bytes = bm.to_bytes();
                let back = BlockBitmap::from_bytes(&bytes).expect("own image decodes");
                back.check_invariants();
                assert!(back.to_bytes() == bytes, "op {i}: image round trip");
                bm = back;
                m.cursor = 0; // the cursor is not part of the image
            }
            Op::Cache(cache_ops) => {
                let mut mag = Magazine::default();
                let mut mine: Vec<u64> = Vec::new();
                let mut cache = bm.cache();
                for (j, cop) in cache_ops.into_iter().enumerate() {
                    match cop {
                        CacheOp::Alloc => {
                            let want = mag.alloc(&mut m);
                            assert_eq!(cache.alloc(), want.map(Block), "op {i}.{j}: cache alloc");
                            mine.extend(want);
                        }
                        CacheOp::Free(p) => {
                            let b = p.resolve(cap);
                            let want = mag.free(&mut m, b);
                            assert_eq!(cache.free(Block(b)), want, "op {i}.{j}: cache free({b})");
                            if want.is_ok() {
                                mine.retain(|&x| x != b);
                            }
                        }
                        CacheOp::FreeMine(k) if !mine.is_empty() => {
                            // Not removed from `mine`: a later pick is a double free.
                            let b = mine[k as usize % mine.len()];
                            let want = mag.free(&mut m, b);
                            assert_eq!(cache.free(Block(b)), want, "op {i}.{j}: cache free({b})");
                            if want.is_ok() {
                                mine.retain(|&x| x != b);
                            }
                        }
                        CacheOp::FreeMine(_) => {}
                        CacheOp::Drain => {
                            cache.drain();
                            mag.drain(&mut m);
                        }
                        CacheOp::Bitmap => {
                            mag.drain(&mut m);
                            check_counts(cache.bitmap(), &m, i);
                        }
                    }
                    assert_eq!(
                        cache.cached_blocks(),
                        mag.cached(),
                        "op {i}.{j}: cached_blocks"
                    );
                }
                drop(cache);
                mag.drain(&mut m);
                held.extend(mine.into_iter().map(|start| Extent { start, len: 1 }));
            }
        }
        check_counts(&bm, &m, i);
        if i % INVARIANTS_EVERY == 0 {
            bm.check_invariants();
        }
    }
    bm.check_invariants();
    assert_eq!(
        bm.largest_free_run_blocks(),
        m.largest_run(),
        "final largest run"
    );
}

fuzz_target!(|input: Input| run(input));
