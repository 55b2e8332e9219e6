//! Fuzz target: an arbitrary capacity and sequence of operations on a
//! `BlockBitmap` (and its `BlockCache`), each result checked against a naive
//! model with one state per block: exact positions (next-fit cursor, hints),
//! exact error values, exact cache magazine contents, counts and statistics.
//! `check_invariants()` runs every few operations and at the end.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use strata_bitmap::{Block, BlockBitmap, Extent};

/// The naive model, shared with `crates/strata-bitmap/tests/model.rs`.
#[path = "../../crates/strata-bitmap/tests/support/model.rs"]
mod naive;

use naive::{MagazineModel, Model, State};

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
        (e.start..e.end()).all(|b| b < m.capacity() && m.state(b) == State::Free),
        "op {i}: handed out {e:?}, not all free"
    );
    m.hand_out(e);
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
                match m.expect_try_alloc() {
                    Ok(b) => {
                        assert_eq!(got, Ok(Block(b)), "op {i}");
                        take(&mut m, &mut held, Extent { start: b, len: 1 }, i);
                    }
                    Err(e) => assert_eq!(got, Err(e), "op {i}"),
                }
            }
            Op::TryAllocExtent(len) => {
                let len = len.resolve(&m);
                let want = m.expect_try_alloc_extent(len);
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
                    m.set_range(e.blocks(), State::Free);
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
                    Ok(()) => m.set_range(e.blocks(), State::Free),
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
                let want = m.expect_reserve(&(start..end));
                assert_eq!(
                    bm.reserve(start..end),
                    want,
                    "op {i}: reserve({start}..{end})"
                );
                match want {
                    Ok(()) => {
                        m.apply_reserve(start..end);
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
                let mut mag = MagazineModel::default();
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
                        mag.cached_blocks(),
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
