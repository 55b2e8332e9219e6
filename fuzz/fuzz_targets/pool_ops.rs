//! Fuzz target: an arbitrary sequence of allocations and frees on a
//! `HybridPool` (small, large and sampled blocks; handles, the allocator
//! interface and the raw API; double frees and foreign pointers through the
//! checked paths), checked against a naive model: every live block's bytes
//! stay intact and no two overlap, the pool's counters equal the model's,
//! refused operations change nothing, and `check_invariants()` holds.

#![no_main]

use std::alloc::Layout;
use std::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use strata_pool::sampling::{ProfileConfig, ProfileLevel};
use strata_pool::{HybridPool, PoolConfig, PoolError};

/// Live blocks at most (keeps a run's memory small).
const LIVE_MAX: usize = 256;
/// Full invariant checks every this many operations.
const INVARIANTS_EVERY: usize = 32;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Tiny(u8),
    Small(u16),
    Medium(u16),
    Large(u8),
}

impl Size {
    fn bytes(self) -> u64 {
        match self {
            Size::Tiny(n) => u64::from(n) + 1,
            Size::Small(n) => u64::from(n) + 1,
            Size::Medium(n) => u64::from(n) * 16 + 1,
            Size::Large(n) => (1 << 20) + u64::from(n) * 40_000 + 7,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc { size: Size, align_shift: u8 },
    AllocRaw { size: Size, align_shift: u8 },
    Free { index: u16 },
    DoubleFreeRaw,
    ForeignFreeRaw { offset: u8 },
    Release,
}

#[derive(Arbitrary, Debug)]
struct Input {
    sample_every_byte: bool,
    ops: Vec<Op>,
}

/// How a live block was allocated, and so how it must be freed.
enum Via {
    Allocator,
    Raw { align: u64 },
}

struct Live {
    addr: usize,
    len: usize,
    block_bytes: u64,
    tag: u8,
    via: Via,
}

fn fill(addr: usize, len: usize, tag: u8) {
    // SAFETY: the block is live, `len` bytes long and owned by the target.
    unsafe { std::ptr::write_bytes(addr as *mut u8, tag, len) };
}

fn intact(live: &Live) -> bool {
    // SAFETY: as in `fill`; the bytes were written by `fill`.
    let bytes = unsafe { std::slice::from_raw_parts(live.addr as *const u8, live.len) };
    bytes.iter().all(|&b| b == live.tag)
}

fuzz_target!(|input: Input| {
    let pool = HybridPool::new(PoolConfig {
        profile: ProfileConfig {
            level: if input.sample_every_byte { ProfileLevel::Sampled } else { ProfileLevel::Off },
            mean_bytes: 4096,
            history_events_max: 0,
            seed: 1,
        },
        slab_region_bytes: 1 << 30,
        arena_virtual_bytes: 1 << 30,
        sample_region_bytes: 1 << 26,
        ..PoolConfig::default()
    })
    .expect("a pool with valid settings");
    let mut live: Vec<Live> = Vec::new();
    let mut freed_raw: Option<(NonNull<u8>, u64, u64)> = None;
    let (mut allocated_bytes, mut requested_bytes) = (0u64, 0u64);
    let mut next_tag = 1u8;
    for (step, op) in input.ops.iter().enumerate() {
        match *op {
            Op::Alloc { size, align_shift } | Op::AllocRaw { size, align_shift } => {
                if live.len() >= LIVE_MAX {
                    continue;
                }
                let raw = matches!(op, Op::AllocRaw { .. });
                let len = size.bytes();
                let align = 1u64 << (align_shift % 13);
                let (addr, block_bytes) = if raw {
                    let ptr = pool.alloc_raw(len, align).expect("raw allocation");
                    // Raw blocks are never sampled: their block is their class
                    // or their rounded arena length.
                    let block = strata_pool::size_class::class_for(len, align)
                        .map(strata_pool::size_class::class_size_bytes)
                        .unwrap_or_else(|| len.next_multiple_of(4096));
                    (ptr.as_ptr() as usize, block)
                } else {
                    let layout = Layout::from_size_align(len as usize, align as usize).unwrap();
                    let before = pool.stats().allocated.current_bytes;
                    let ptr = (&pool).allocate(layout).expect("allocation");
                    let after = pool.stats().allocated.current_bytes;
                    (ptr.as_ptr() as *mut u8 as usize, after - before)
                };
                assert_eq!(addr as u64 % align, 0, "step {step}: alignment {align}");
                assert!(block_bytes >= len, "step {step}: block {block_bytes} < {len}");
                fill(addr, len as usize, next_tag);
                allocated_bytes += block_bytes;
                requested_bytes += len;
                live.push(Live {
                    addr,
                    len: len as usize,
                    block_bytes,
                    tag: next_tag,
                    via: if raw { Via::Raw { align } } else { Via::Allocator },
                });
                next_tag = next_tag.wrapping_add(1).max(1);
            }
            Op::Free { index } => {
                if live.is_empty() {
                    continue;
                }
                let victim = live.swap_remove(usize::from(index) % live.len());
                assert!(intact(&victim), "step {step}: block at {:#x} overwritten", victim.addr);
                let ptr = NonNull::new(victim.addr as *mut u8).unwrap();
                match victim.via {
                    Via::Allocator => {
                        let layout = Layout::from_size_align(victim.len, 1).unwrap();
                        // SAFETY: allocated by this pool with this size; freed once.
                        unsafe { (&pool).deallocate(ptr, layout) };
                    }
                    Via::Raw { align } => {
                        // SAFETY: as above, through the raw API.
                        unsafe { pool.free_raw(ptr, victim.len as u64, align) }.expect("raw free");
                        freed_raw = Some((ptr, victim.len as u64, align));
                    }
                }
                allocated_bytes -= victim.block_bytes;
                requested_bytes -= victim.len as u64;
            }
            Op::DoubleFreeRaw => {
                if let Some((ptr, len, align)) = freed_raw {
                    // Only meaningful while no live raw block reuses the address.
                    if live.iter().all(|l| l.addr != ptr.as_ptr() as usize) {
                        let before = pool.stats();
                        // SAFETY: refused: the block is already free.
                        let result = unsafe { pool.free_raw(ptr, len, align) };
                        assert!(matches!(result, Err(PoolError::DoubleFree { .. })), "step {step}: {result:?}");
                        assert_eq!(pool.stats().allocated, before.allocated);
                    }
                }
            }
            Op::ForeignFreeRaw { offset } => {
                let mut local = [0u8; 300];
                let ptr = NonNull::new(local.as_mut_ptr().wrapping_add(usize::from(offset))).unwrap();
                // SAFETY: refused: not a block of this pool.
                let result = unsafe { pool.free_raw(ptr, 8, 1) };
                assert!(matches!(result, Err(PoolError::ForeignPointer { .. })), "step {step}: {result:?}");
            }
            Op::Release => {
                pool.release_unused();
            }
        }
        let stats = pool.stats();
        assert_eq!(stats.allocated.current_bytes, allocated_bytes, "step {step}");
        assert_eq!(stats.requested.current_bytes, requested_bytes, "step {step}");
        assert_eq!(stats.refused_frees, 0, "step {step}");
        if step % INVARIANTS_EVERY == 0 {
            let mut ranges: Vec<(usize, usize)> =
                live.iter().map(|l| (l.addr, l.addr + l.len)).collect();
            ranges.sort_unstable();
            for pair in ranges.windows(2) {
                assert!(pair[0].1 <= pair[1].0, "step {step}: blocks overlap: {pair:?}");
            }
            pool.check_invariants();
        }
    }
    for block in &live {
        assert!(intact(block), "block at {:#x} overwritten", block.addr);
    }
    for block in live.drain(..) {
        let ptr = NonNull::new(block.addr as *mut u8).unwrap();
        match block.via {
            Via::Allocator => {
                let layout = Layout::from_size_align(block.len, 1).unwrap();
                // SAFETY: allocated by this pool with this size; freed once.
                unsafe { (&pool).deallocate(ptr, layout) };
            }
            // SAFETY: as above, through the raw API.
            Via::Raw { align } => unsafe { pool.free_raw(ptr, block.len as u64, align) }.expect("raw free"),
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.allocated.current_bytes, 0);
    assert_eq!(pool.profiler().live_samples(), 0);
    pool.check_invariants();
});
