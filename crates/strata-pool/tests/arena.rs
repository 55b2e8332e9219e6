//! Tests of the large-block arena map: hand-worked placement, splitting and
//! coalescing; the oversize rule; exact errors; a seeded random sequence
//! against a naive per-granule model; and the "batch size N then N+1" trace.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_pool::arena::{
    arena_bytes_for, ArenaConfig, ArenaError, ArenaId, ArenaMap, ArenaStats, BlockInfo, FreedBlock,
    LargeBlock, ARENA_GROWTH_DIVISOR, ARENA_PROPOSAL_BYTES_MAX, ARENA_ROUND_BYTES,
    GRANULE_BYTES_DEFAULT, OVERSIZE_SLACK_BYTES_DEFAULT,
};

const G: u64 = GRANULE_BYTES_DEFAULT;
const MIB: u64 = 1 << 20;

fn default_map() -> ArenaMap {
    ArenaMap::new(ArenaConfig::default()).expect("the default config is valid")
}

fn block(arena: ArenaId, offset_bytes: u64, len_bytes: u64) -> LargeBlock {
    LargeBlock {
        arena,
        offset_bytes,
        len_bytes,
    }
}

fn free_blocks(map: &ArenaMap, arena: ArenaId) -> Vec<(u64, u64)> {
    map.free_blocks_in(arena).collect()
}

#[test]
fn default_config_values() {
    let config = ArenaConfig::default();
    assert_eq!(config.granule_bytes, 4096);
    assert_eq!(config.oversize_threshold_bytes, None);
    assert_eq!(config.oversize_slack_bytes, 20 * MIB);
    assert_eq!(OVERSIZE_SLACK_BYTES_DEFAULT, 20 * MIB);
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn best_fit_takes_smallest_block_then_lowest_arena_and_offset() {
    let mut map = default_map();
    let a0 = map.add_arena(8 * G).unwrap();
    let a1 = map.add_arena(4 * G).unwrap();
    let a2 = map.add_arena(4 * G).unwrap();
    assert_eq!((a0, a1, a2), (ArenaId(0), ArenaId(1), ArenaId(2)));
    // 4G blocks in a1 and a2 tie; a1 is lower. The remainder splits off at the end.
    assert_eq!(map.alloc(3 * G, 1).unwrap(), Some(block(a1, 0, 3 * G)));
    assert_eq!(free_blocks(&map, a1), vec![(3 * G, G)]);
    // The 1G remainder is now the best fit for 1 byte (rounded up to one granule).
    assert_eq!(map.alloc(1, 2).unwrap(), Some(block(a1, 3 * G, G)));
    assert_eq!(free_blocks(&map, a1), vec![]);
    // Exact fit: no remainder.
    assert_eq!(map.alloc(4 * G, 3).unwrap(), Some(block(a2, 0, 4 * G)));
    // Only a0 is large enough.
    assert_eq!(map.alloc(5 * G, 4).unwrap(), Some(block(a0, 0, 5 * G)));
    assert_eq!(map.alloc(4 * G, 5).unwrap(), None);
    // Two free blocks in one arena: the smaller wins even at a higher offset.
    assert_eq!(
        map.free(a0, 0).unwrap(),
        FreedBlock {
            len_bytes: 5 * G,
            tag: 4
        }
    );
    let mid = map.alloc(2 * G, 6).unwrap().unwrap();
    assert_eq!(mid, block(a0, 0, 2 * G));
    assert_eq!(free_blocks(&map, a0), vec![(2 * G, 6 * G)]);
    let stats = map.stats();
    assert_eq!(stats.arenas, 3);
    assert_eq!(stats.arena_bytes, 16 * G);
    assert_eq!(stats.allocated_bytes, 10 * G);
    assert_eq!(stats.allocated_blocks, 4);
    assert_eq!(stats.free_blocks, 1);
    map.check_invariants();
}

#[test]
fn split_rounds_to_granule_and_leaves_remainder_at_end() {
    let mut map = default_map();
    let arena = map.add_arena(10 * G).unwrap();
    let first = map.alloc(G + 1, 9).unwrap().unwrap();
    assert_eq!(first, block(arena, 0, 2 * G));
    assert_eq!(
        map.block_at(arena, 0),
        Some(BlockInfo {
            len_bytes: 2 * G,
            allocated: true,
            tag: 9
        })
    );
    assert_eq!(
        map.block_at(arena, 2 * G),
        Some(BlockInfo {
            len_bytes: 8 * G,
            allocated: false,
            tag: 0
        })
    );
    assert_eq!(map.block_at(arena, G), None, "not a block start");
    assert_eq!(map.block_at(ArenaId(7), 0), None, "unknown arena");
    assert_eq!(map.tail_free_bytes(arena), 8 * G);
    map.check_invariants();
}

/// Four 1-granule blocks A B C D filling a 4-granule arena.
fn four_blocks() -> (ArenaMap, ArenaId) {
    let mut map = default_map();
    let arena = map.add_arena(4 * G).unwrap();
    for i in 0..4 {
        assert_eq!(
            map.alloc(G, i as u32).unwrap(),
            Some(block(arena, i * G, G))
        );
    }
    assert_eq!(map.stats().free_bytes, 0);
    (map, arena)
}

#[test]
fn coalesce_with_left_neighbour() {
    let (mut map, arena) = four_blocks();
    map.free(arena, G).unwrap(); // B
    assert_eq!(
        map.free(arena, 2 * G).unwrap(),
        FreedBlock {
            len_bytes: G,
            tag: 2
        }
    ); // C
    assert_eq!(free_blocks(&map, arena), vec![(G, 2 * G)]);
    assert_eq!(map.block_at(arena, 2 * G), None, "C merged into B");
    assert_eq!(map.stats().free_blocks, 1);
    map.check_invariants();
}

#[test]
fn coalesce_with_right_neighbour() {
    let (mut map, arena) = four_blocks();
    map.free(arena, 2 * G).unwrap(); // C
    assert_eq!(
        map.free(arena, G).unwrap(),
        FreedBlock {
            len_bytes: G,
            tag: 1
        }
    ); // B
    assert_eq!(free_blocks(&map, arena), vec![(G, 2 * G)]);
    assert_eq!(map.stats().largest_free_bytes, 2 * G);
    map.check_invariants();
}

#[test]
fn coalesce_with_both_neighbours_and_at_arena_edges() {
    let (mut map, arena) = four_blocks();
    map.free(arena, 0).unwrap(); // A: no free neighbour, at the arena start
    map.free(arena, 2 * G).unwrap(); // C: B is allocated, so no merge
    assert_eq!(free_blocks(&map, arena), vec![(0, G), (2 * G, G)]);
    let stats = map.stats();
    assert_eq!(stats.free_blocks, 2);
    assert_eq!(stats.fragmentation, 0.5);
    assert_eq!(stats.inactive_split_bytes, 2 * G);
    map.free(arena, G).unwrap(); // B: both neighbours free
    assert_eq!(free_blocks(&map, arena), vec![(0, 3 * G)]);
    assert_eq!(map.tail_free_bytes(arena), 0);
    map.free(arena, 3 * G).unwrap(); // D: left neighbour free, at the arena end
    assert_eq!(free_blocks(&map, arena), vec![(0, 4 * G)]);
    let stats = map.stats();
    assert_eq!(stats.free_blocks, 1);
    assert_eq!(stats.fragmentation, 0.0);
    assert_eq!(
        stats.inactive_split_bytes, 0,
        "a wholly free arena is not inactive-split"
    );
    assert_eq!(map.empty_arenas(), vec![arena]);
    map.check_invariants();
}

#[test]
fn coalescing_stays_inside_one_arena() {
    let mut map = default_map();
    let a0 = map.add_arena(2 * G).unwrap();
    let a1 = map.add_arena(2 * G).unwrap();
    map.alloc(2 * G, 0).unwrap().unwrap();
    let b = map.alloc(G, 0).unwrap().unwrap();
    assert_eq!(b, block(a1, 0, G));
    map.free(a0, 0).unwrap();
    assert_eq!(free_blocks(&map, a0), vec![(0, 2 * G)]);
    assert_eq!(free_blocks(&map, a1), vec![(G, G)]);
    assert_eq!(map.stats().largest_free_bytes, 2 * G);
    assert_eq!(map.stats().inactive_split_bytes, G);
    map.check_invariants();
}

#[test]
fn extend_merges_free_tail_or_appends_free_block() {
    let mut map = default_map();
    let arena = map.add_arena(4 * G).unwrap();
    map.alloc(G, 0).unwrap().unwrap();
    map.extend_arena(arena, 2 * G).unwrap();
    assert_eq!(map.arena_len(arena), Some(6 * G));
    assert_eq!(free_blocks(&map, arena), vec![(G, 5 * G)]);
    assert_eq!(map.tail_free_bytes(arena), 5 * G);
    map.alloc(5 * G, 0).unwrap().unwrap();
    assert_eq!(map.tail_free_bytes(arena), 0);
    map.extend_arena(arena, 3 * G).unwrap();
    assert_eq!(free_blocks(&map, arena), vec![(6 * G, 3 * G)]);
    let stats = map.stats();
    assert_eq!(stats.arena_bytes, 9 * G);
    assert_eq!(stats.inactive_split_bytes, 3 * G);
    map.check_invariants();
}

#[test]
fn remove_arena_only_when_wholly_free_and_ids_are_not_reused() {
    let mut map = default_map();
    let a0 = map.add_arena(4 * G).unwrap();
    let a1 = map.add_arena(8 * G).unwrap();
    let b = map.alloc(3 * G, 0).unwrap().unwrap();
    assert_eq!(b.arena, a0);
    assert_eq!(map.empty_arenas(), vec![a1]);
    let before = map.stats();
    assert_eq!(
        map.remove_arena(a0),
        Err(ArenaError::ArenaInUse {
            arena: a0,
            allocated_bytes: 3 * G
        })
    );
    assert_eq!(map.stats(), before, "a refused removal changes nothing");
    assert_eq!(map.remove_arena(a1), Ok(8 * G));
    assert_eq!(map.arena_len(a1), None);
    assert_eq!(
        map.remove_arena(a1),
        Err(ArenaError::UnknownArena { arena: a1 })
    );
    map.free(a0, 0).unwrap();
    assert_eq!(map.remove_arena(a0), Ok(4 * G));
    let stats = map.stats();
    assert_eq!(
        (stats.arenas, stats.arena_bytes, stats.free_blocks),
        (0, 0, 0)
    );
    assert_eq!(map.add_arena(G), Ok(ArenaId(2)));
    assert_eq!(map.arena_ids().collect::<Vec<_>>(), vec![ArenaId(2)]);
    map.check_invariants();
}

fn oversize_map(threshold_bytes: u64, slack_bytes: u64) -> ArenaMap {
    ArenaMap::new(ArenaConfig {
        granule_bytes: G,
        oversize_threshold_bytes: Some(threshold_bytes),
        oversize_slack_bytes: slack_bytes,
    })
    .unwrap()
}

#[test]
fn oversize_block_is_not_split_and_serves_only_oversize_requests_within_slack() {
    let mut map = oversize_map(8 * G, 2 * G);
    let big = map.add_arena(20 * G).unwrap();
    assert_eq!(
        map.alloc(G, 0).unwrap(),
        None,
        "below threshold: never an oversize block"
    );
    assert_eq!(
        map.alloc(8 * G, 0).unwrap(),
        None,
        "20G exceeds 8G by more than the slack"
    );
    assert_eq!(
        map.alloc(17 * G, 0).unwrap(),
        None,
        "3G over: outside the 2G slack"
    );
    let before = map.stats();
    assert_eq!(before.free_bytes, 20 * G);
    // 18G + 1 byte rounds to 19G; the whole 20G block is handed out, 1G wasted.
    let b = map.alloc(18 * G + 1, 5).unwrap().unwrap();
    assert_eq!(b, block(big, 0, 20 * G));
    let stats = map.stats();
    assert_eq!(stats.oversize_waste_bytes, G);
    assert_eq!(stats.allocated_bytes, 20 * G);
    assert_eq!(stats.free_blocks, 0);
    map.check_invariants();
    assert_eq!(
        map.free(big, 0).unwrap(),
        FreedBlock {
            len_bytes: 20 * G,
            tag: 5
        }
    );
    assert_eq!(map.stats().oversize_waste_bytes, 0);
    map.check_invariants();
}

#[test]
fn oversize_requests_take_the_smallest_block_and_small_requests_the_small_blocks() {
    let mut map = oversize_map(8 * G, 2 * G);
    let a0 = map.add_arena(11 * G).unwrap();
    let a1 = map.add_arena(10 * G).unwrap();
    let a2 = map.add_arena(7 * G).unwrap();
    // An exact threshold request: 10G is the smallest fit, but 2G over is within the slack.
    assert_eq!(map.alloc(8 * G, 1).unwrap(), Some(block(a1, 0, 10 * G)));
    assert_eq!(map.stats().oversize_waste_bytes, 2 * G);
    // Below the threshold: only the 7G block qualifies, and it is split.
    assert_eq!(map.alloc(3 * G, 2).unwrap(), Some(block(a2, 0, 3 * G)));
    assert_eq!(free_blocks(&map, a2), vec![(3 * G, 4 * G)]);
    assert_eq!(
        map.alloc(5 * G, 3).unwrap(),
        None,
        "11G is oversize, 4G too small"
    );
    // An oversize request exactly fitting takes the 11G block with no waste.
    assert_eq!(map.alloc(11 * G, 4).unwrap(), Some(block(a0, 0, 11 * G)));
    assert_eq!(map.stats().oversize_waste_bytes, 2 * G);
    map.check_invariants();
    // Free space that coalesces past the threshold becomes oversize.
    map.free(a2, 0).unwrap();
    map.extend_arena(a2, G).unwrap();
    assert_eq!(free_blocks(&map, a2), vec![(0, 8 * G)]);
    assert_eq!(map.alloc(G, 0).unwrap(), None);
    assert_eq!(map.alloc(9 * G, 5).unwrap(), None, "8G is too small");
    assert_eq!(map.alloc(7 * G, 5).unwrap(), None, "7G < threshold");
    assert_eq!(map.alloc(8 * G, 5).unwrap(), Some(block(a2, 0, 8 * G)));
    map.check_invariants();
}

#[test]
fn bad_configs_are_rejected() {
    let bad_granule = |granule_bytes| ArenaConfig {
        granule_bytes,
        ..ArenaConfig::default()
    };
    for granule_bytes in [0, 3, 4097, u64::MAX] {
        let err = ArenaMap::new(bad_granule(granule_bytes)).unwrap_err();
        assert!(
            matches!(err, ArenaError::BadConfig { value_bytes, .. } if value_bytes == granule_bytes),
            "granule {granule_bytes}: {err:?}"
        );
    }
    assert_eq!(bad_granule(1).validate(), Ok(()));
    for threshold_bytes in [0, G / 2, G + 1] {
        let config = ArenaConfig {
            oversize_threshold_bytes: Some(threshold_bytes),
            ..ArenaConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert!(
            matches!(err, ArenaError::BadConfig { value_bytes, .. } if value_bytes == threshold_bytes),
            "threshold {threshold_bytes}: {err:?}"
        );
        assert!(
            err.to_string().contains(&threshold_bytes.to_string()),
            "{err}"
        );
    }
}

/// The largest granule multiple: overflows any nonempty total.
const HUGE_ALIGNED_BYTES: u64 = !(G - 1);

/// Each arena's id, length and free blocks.
type ArenaLayout = Vec<(ArenaId, u64, Vec<(u64, u64)>)>;

/// Everything observable about a map, to show a refused call changed nothing.
fn snapshot(map: &ArenaMap) -> (ArenaStats, ArenaLayout) {
    let arenas = map
        .arena_ids()
        .map(|id| (id, map.arena_len(id).unwrap(), free_blocks(map, id)))
        .collect();
    (map.stats(), arenas)
}

#[test]
fn errors_are_exact_and_change_nothing() {
    let mut map = default_map();
    let arena = map.add_arena(8 * G).unwrap();
    let b = map.alloc(2 * G, 3).unwrap().unwrap();
    map.alloc(G, 4).unwrap().unwrap();
    let before = snapshot(&map);
    let unknown = ArenaId(9);
    let cases: Vec<(&str, Result<(), ArenaError>, ArenaError)> = vec![
        ("alloc 0", map.alloc(0, 0).map(drop), ArenaError::ZeroSize),
        (
            "alloc max",
            map.alloc(u64::MAX, 0).map(drop),
            ArenaError::SizeOverflow {
                requested_bytes: u64::MAX,
            },
        ),
        ("add 0", map.add_arena(0).map(drop), ArenaError::ZeroSize),
        (
            "add unaligned",
            map.add_arena(G + 1).map(drop),
            ArenaError::NotGranuleMultiple {
                bytes: G + 1,
                granule_bytes: G,
            },
        ),
        (
            "add overflowing the total",
            map.add_arena(HUGE_ALIGNED_BYTES).map(drop),
            ArenaError::SizeOverflow {
                requested_bytes: HUGE_ALIGNED_BYTES,
            },
        ),
        ("extend 0", map.extend_arena(arena, 0), ArenaError::ZeroSize),
        (
            "extend unaligned",
            map.extend_arena(arena, 100),
            ArenaError::NotGranuleMultiple {
                bytes: 100,
                granule_bytes: G,
            },
        ),
        (
            "extend overflowing",
            map.extend_arena(arena, HUGE_ALIGNED_BYTES),
            ArenaError::SizeOverflow {
                requested_bytes: HUGE_ALIGNED_BYTES,
            },
        ),
        (
            "extend unknown",
            map.extend_arena(unknown, G),
            ArenaError::UnknownArena { arena: unknown },
        ),
        (
            "free unknown",
            map.free(unknown, 0).map(drop),
            ArenaError::UnknownArena { arena: unknown },
        ),
        (
            "free mid-block",
            map.free(arena, G).map(drop),
            ArenaError::NotAllocated {
                arena,
                offset_bytes: G,
            },
        ),
        (
            "free a free block",
            map.free(arena, 3 * G).map(drop),
            ArenaError::NotAllocated {
                arena,
                offset_bytes: 3 * G,
            },
        ),
        (
            "free past the end",
            map.free(arena, 100 * G).map(drop),
            ArenaError::NotAllocated {
                arena,
                offset_bytes: 100 * G,
            },
        ),
        (
            "remove unknown",
            map.remove_arena(unknown).map(drop),
            ArenaError::UnknownArena { arena: unknown },
        ),
        (
            "remove in use",
            map.remove_arena(arena).map(drop),
            ArenaError::ArenaInUse {
                arena,
                allocated_bytes: 3 * G,
            },
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, Err(want.clone()), "{what}");
        assert!(!want.to_string().is_empty());
    }
    assert_eq!(snapshot(&map), before, "refused calls changed the map");
    // A double free is refused after the first free succeeded.
    map.free(arena, b.offset_bytes).unwrap();
    let after_free = snapshot(&map);
    assert_eq!(
        map.free(arena, b.offset_bytes),
        Err(ArenaError::NotAllocated {
            arena,
            offset_bytes: 0
        })
    );
    assert_eq!(snapshot(&map), after_free, "a double free changed the map");
    assert_eq!(map.tail_free_bytes(unknown), 0);
    assert_eq!(free_blocks(&map, unknown), vec![]);
    map.check_invariants();
}

#[test]
fn error_messages_carry_the_numbers() {
    let arena = ArenaId(3);
    let msg = ArenaError::ArenaInUse {
        arena,
        allocated_bytes: 12345,
    }
    .to_string();
    assert!(msg.contains("arena 3") && msg.contains("12345"), "{msg}");
    let msg = ArenaError::NotAllocated {
        arena,
        offset_bytes: 8192,
    }
    .to_string();
    assert!(msg.contains("arena 3") && msg.contains("8192"), "{msg}");
    let msg = ArenaError::SizeOverflow {
        requested_bytes: 77,
    }
    .to_string();
    assert!(msg.contains("77"), "{msg}");
}

#[test]
fn arena_bytes_for_rounds_and_grows() {
    assert_eq!(ARENA_ROUND_BYTES, 2 * MIB);
    assert_eq!(ARENA_GROWTH_DIVISOR, 16);
    assert_eq!(arena_bytes_for(1, 0), 2 * MIB);
    assert_eq!(arena_bytes_for(2 * MIB, 0), 2 * MIB);
    assert_eq!(arena_bytes_for(2 * MIB + 1, 0), 4 * MIB);
    // The growth term: a sixteenth of what exists, rounded up.
    assert_eq!(arena_bytes_for(MIB, 160 * MIB), 10 * MIB);
    assert_eq!(arena_bytes_for(MIB, 161 * MIB), 12 * MIB);
    // The request dominates when larger.
    assert_eq!(arena_bytes_for(100 * MIB + 1, 160 * MIB), 102 * MIB);
    // Saturates instead of overflowing.
    assert_eq!(arena_bytes_for(u64::MAX, 0), ARENA_PROPOSAL_BYTES_MAX);
    assert_eq!(ARENA_PROPOSAL_BYTES_MAX, u64::MAX - (2 * MIB - 1));
    assert_eq!(
        arena_bytes_for(0, u64::MAX),
        (u64::MAX / 16 + 1).next_multiple_of(2 * MIB)
    );
}

// ---------------------------------------------------------------------------
// Naive model: one cell per granule.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Free,
    /// Part of the allocated block starting at this cell index.
    Used(usize),
}

struct ModelArena {
    id: u32,
    cells: Vec<Cell>,
}

struct Model {
    config: ArenaConfig,
    arenas: Vec<ModelArena>,
    next_id: u32,
    /// (arena, offset) -> (tag, waste bytes) of live blocks.
    live: BTreeMap<(u32, u64), (u32, u64)>,
}

impl Model {
    fn new(config: ArenaConfig) -> Self {
        Model {
            config,
            arenas: Vec::new(),
            next_id: 0,
            live: BTreeMap::new(),
        }
    }

    fn g(&self) -> u64 {
        self.config.granule_bytes
    }

    fn arena(&self, id: ArenaId) -> Option<&ModelArena> {
        self.arenas.iter().find(|a| a.id == id.0)
    }

    /// Maximal runs of free cells as (offset bytes, len bytes).
    fn free_runs(&self, arena: &ModelArena) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < arena.cells.len() {
            if arena.cells[i] == Cell::Free {
                let start = i;
                while i < arena.cells.len() && arena.cells[i] == Cell::Free {
                    i += 1;
                }
                runs.push((start as u64 * self.g(), (i - start) as u64 * self.g()));
            } else {
                i += 1;
            }
        }
        runs
    }

    fn alloc(&mut self, size_bytes: u64, tag: u32) -> Result<Option<LargeBlock>, ArenaError> {
        if size_bytes == 0 {
            return Err(ArenaError::ZeroSize);
        }
        let g = self.g();
        let len =
            size_bytes
                .checked_add(g - 1)
                .map(|v| v / g * g)
                .ok_or(ArenaError::SizeOverflow {
                    requested_bytes: size_bytes,
                })?;
        let oversize_request = self
            .config
            .oversize_threshold_bytes
            .is_some_and(|t| len >= t);
        let mut best: Option<(u64, u32, u64)> = None;
        for arena in &self.arenas {
            for (offset, run_len) in self.free_runs(arena) {
                let allowed = run_len >= len
                    && match self.config.oversize_threshold_bytes {
                        None => true,
                        Some(t) if oversize_request => {
                            run_len >= t && run_len - len <= self.config.oversize_slack_bytes
                        }
                        Some(t) => run_len < t,
                    };
                if allowed && best.is_none_or(|b| (run_len, arena.id, offset) < b) {
                    best = Some((run_len, arena.id, offset));
                }
            }
        }
        let Some((run_len, id, offset)) = best else {
            return Ok(None);
        };
        let handed = if oversize_request { run_len } else { len };
        let arena = self.arenas.iter_mut().find(|a| a.id == id).unwrap();
        let start = (offset / g) as usize;
        for cell in &mut arena.cells[start..start + (handed / g) as usize] {
            *cell = Cell::Used(start);
        }
        self.live.insert((id, offset), (tag, handed - len));
        Ok(Some(block(ArenaId(id), offset, handed)))
    }

    fn free(&mut self, id: ArenaId, offset_bytes: u64) -> Result<FreedBlock, ArenaError> {
        let g = self.g();
        let Some(arena) = self.arenas.iter_mut().find(|a| a.id == id.0) else {
            return Err(ArenaError::UnknownArena { arena: id });
        };
        let Some((tag, _)) = self.live.remove(&(id.0, offset_bytes)) else {
            return Err(ArenaError::NotAllocated {
                arena: id,
                offset_bytes,
            });
        };
        let start = (offset_bytes / g) as usize;
        let mut i = start;
        while i < arena.cells.len() && arena.cells[i] == Cell::Used(start) {
            arena.cells[i] = Cell::Free;
            i += 1;
        }
        Ok(FreedBlock {
            len_bytes: (i - start) as u64 * g,
            tag,
        })
    }

    fn check_len(&self, bytes: u64) -> Result<(), ArenaError> {
        if bytes == 0 {
            Err(ArenaError::ZeroSize)
        } else if !bytes.is_multiple_of(self.g()) {
            Err(ArenaError::NotGranuleMultiple {
                bytes,
                granule_bytes: self.g(),
            })
        } else {
            Ok(())
        }
    }

    fn add_arena(&mut self, len_bytes: u64) -> Result<ArenaId, ArenaError> {
        self.check_len(len_bytes)?;
        let id = self.next_id;
        self.next_id += 1;
        self.arenas.push(ModelArena {
            id,
            cells: vec![Cell::Free; (len_bytes / self.g()) as usize],
        });
        Ok(ArenaId(id))
    }

    fn extend_arena(&mut self, id: ArenaId, additional_bytes: u64) -> Result<(), ArenaError> {
        if self.arena(id).is_none() {
            return Err(ArenaError::UnknownArena { arena: id });
        }
        self.check_len(additional_bytes)?;
        let cells = (additional_bytes / self.g()) as usize;
        let arena = self.arenas.iter_mut().find(|a| a.id == id.0).unwrap();
        arena.cells.extend(std::iter::repeat_n(Cell::Free, cells));
        Ok(())
    }

    fn allocated_bytes_in(&self, arena: &ModelArena) -> u64 {
        arena.cells.iter().filter(|c| **c != Cell::Free).count() as u64 * self.g()
    }

    fn remove_arena(&mut self, id: ArenaId) -> Result<u64, ArenaError> {
        let Some(arena) = self.arena(id) else {
            return Err(ArenaError::UnknownArena { arena: id });
        };
        let allocated_bytes = self.allocated_bytes_in(arena);
        if allocated_bytes > 0 {
            return Err(ArenaError::ArenaInUse {
                arena: id,
                allocated_bytes,
            });
        }
        let len = arena.cells.len() as u64 * self.g();
        self.arenas.retain(|a| a.id != id.0);
        Ok(len)
    }

    fn block_at(&self, id: ArenaId, offset_bytes: u64) -> Option<BlockInfo> {
        let arena = self.arena(id)?;
        if let Some(&(tag, _)) = self.live.get(&(id.0, offset_bytes)) {
            let start = (offset_bytes / self.g()) as usize;
            let cells = arena.cells[start..]
                .iter()
                .take_while(|c| **c == Cell::Used(start))
                .count();
            return Some(BlockInfo {
                len_bytes: cells as u64 * self.g(),
                allocated: true,
                tag,
            });
        }
        self.free_runs(arena)
            .into_iter()
            .find(|&(offset, _)| offset == offset_bytes)
            .map(|(_, len_bytes)| BlockInfo {
                len_bytes,
                allocated: false,
                tag: 0,
            })
    }

    fn stats(&self) -> ArenaStats {
        let mut stats = ArenaStats {
            arenas: self.arenas.len() as u64,
            arena_bytes: 0,
            allocated_bytes: 0,
            free_bytes: 0,
            allocated_blocks: self.live.len() as u64,
            free_blocks: 0,
            largest_free_bytes: 0,
            inactive_split_bytes: 0,
            oversize_waste_bytes: self.live.values().map(|&(_, waste)| waste).sum(),
            fragmentation: 0.0,
        };
        for arena in &self.arenas {
            let len = arena.cells.len() as u64 * self.g();
            let allocated = self.allocated_bytes_in(arena);
            stats.arena_bytes += len;
            stats.allocated_bytes += allocated;
            if allocated > 0 {
                stats.inactive_split_bytes += len - allocated;
            }
            for (_, run_len) in self.free_runs(arena) {
                stats.free_blocks += 1;
                stats.largest_free_bytes = stats.largest_free_bytes.max(run_len);
            }
        }
        stats.free_bytes = stats.arena_bytes - stats.allocated_bytes;
        if stats.free_bytes > 0 {
            stats.fragmentation = 1.0 - stats.largest_free_bytes as f64 / stats.free_bytes as f64;
        }
        stats
    }

    /// Compares every observable of `map` with the model.
    fn compare(&self, map: &ArenaMap, ctx: &str) {
        map.check_invariants();
        assert_eq!(map.stats(), self.stats(), "{ctx}: stats");
        let ids: Vec<ArenaId> = self.arenas.iter().map(|a| ArenaId(a.id)).collect();
        assert_eq!(map.arena_ids().collect::<Vec<_>>(), ids, "{ctx}: arena ids");
        let empty: Vec<ArenaId> = self
            .arenas
            .iter()
            .filter(|a| self.allocated_bytes_in(a) == 0)
            .map(|a| ArenaId(a.id))
            .collect();
        assert_eq!(map.empty_arenas(), empty, "{ctx}: empty arenas");
        for arena in &self.arenas {
            let id = ArenaId(arena.id);
            let runs = self.free_runs(arena);
            assert_eq!(
                map.arena_len(id),
                Some(arena.cells.len() as u64 * self.g()),
                "{ctx}: len of {id}"
            );
            assert_eq!(free_blocks(map, id), runs, "{ctx}: free blocks of {id}");
            let tail = match runs.last() {
                Some(&(offset, len)) if offset + len == arena.cells.len() as u64 * self.g() => len,
                _ => 0,
            };
            assert_eq!(map.tail_free_bytes(id), tail, "{ctx}: tail of {id}");
        }
        for (&(id, offset), &(tag, _)) in &self.live {
            let info = map.block_at(ArenaId(id), offset);
            assert_eq!(
                info,
                self.block_at(ArenaId(id), offset),
                "{ctx}: block {id}@{offset}"
            );
            assert_eq!(
                info.map(|i| (i.allocated, i.tag)),
                Some((true, tag)),
                "{ctx}"
            );
        }
    }
}

fn random_config(rng: &mut SmallRng) -> ArenaConfig {
    let granule_bytes = [1u64, 64, 4096][rng.gen_range(0..3)];
    let oversize_threshold_bytes = if rng.gen_bool(0.5) {
        Some(granule_bytes * rng.gen_range(4..=16))
    } else {
        None
    };
    ArenaConfig {
        granule_bytes,
        oversize_threshold_bytes,
        // Not a granule multiple on purpose: the rule must still hold.
        oversize_slack_bytes: granule_bytes * rng.gen_range(0..=4)
            + rng.gen_range(0..granule_bytes),
    }
}

/// How often each outcome happened, to show the sequences reach every case.
#[derive(Debug, Default)]
struct Outcomes {
    placed: u64,
    placed_oversize_with_waste: u64,
    no_fit: u64,
    alloc_refused: u64,
    freed: u64,
    free_refused: u64,
    extended: u64,
    extend_refused: u64,
    added: u64,
    removed: u64,
    remove_refused_in_use: u64,
}

fn run_model_sequence(seed: u64, steps: usize, outcomes: &mut Outcomes) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let config = random_config(&mut rng);
    let g = config.granule_bytes;
    let mut map = ArenaMap::new(config).unwrap();
    let mut model = Model::new(config);
    for step in 0..steps {
        let op = rng.gen_range(0..100);
        let ctx;
        if op < 40 {
            let size = match rng.gen_range(0..50) {
                0 => 0,
                1 => u64::MAX - rng.gen_range(0..g),
                _ => rng.gen_range(1..=24 * g),
            };
            let tag = rng.gen();
            ctx = format!("seed {seed} step {step}: alloc({size}, {tag}) {config:?}");
            let waste_before = map.stats().oversize_waste_bytes;
            let got = map.alloc(size, tag);
            assert_eq!(got, model.alloc(size, tag), "{ctx}");
            match got {
                Ok(Some(_)) if map.stats().oversize_waste_bytes > waste_before => {
                    outcomes.placed_oversize_with_waste += 1
                }
                Ok(Some(_)) => outcomes.placed += 1,
                Ok(None) => outcomes.no_fit += 1,
                Err(_) => outcomes.alloc_refused += 1,
            }
        } else if op < 70 {
            let live: Vec<(u32, u64)> = model.live.keys().copied().collect();
            let (id, offset) = if !live.is_empty() && rng.gen_bool(0.9) {
                live[rng.gen_range(0..live.len())]
            } else {
                // Anything: a free block, a mid-block offset, an unknown arena.
                (
                    rng.gen_range(0..model.next_id + 2),
                    rng.gen_range(0..48) * g / 2,
                )
            };
            ctx = format!("seed {seed} step {step}: free({id}, {offset})");
            let got = map.free(ArenaId(id), offset);
            assert_eq!(got, model.free(ArenaId(id), offset), "{ctx}");
            match got {
                Ok(_) => outcomes.freed += 1,
                Err(_) => outcomes.free_refused += 1,
            }
        } else if op < 82 {
            let id = ArenaId(rng.gen_range(0..model.next_id + 1));
            let bytes = match rng.gen_range(0..20) {
                0 => 0,
                1 => g * rng.gen_range(1..8) + g / 2,
                _ => g * rng.gen_range(1..=12),
            };
            ctx = format!("seed {seed} step {step}: extend({id}, {bytes})");
            let got = map.extend_arena(id, bytes);
            assert_eq!(got, model.extend_arena(id, bytes), "{ctx}");
            match got {
                Ok(()) => outcomes.extended += 1,
                Err(_) => outcomes.extend_refused += 1,
            }
        } else if op < 92 {
            if model.arenas.len() >= 6 {
                continue;
            }
            let bytes = match rng.gen_range(0..20) {
                0 => 0,
                1 => g * rng.gen_range(1..8) + g / 2,
                _ => g * rng.gen_range(1..=40),
            };
            ctx = format!("seed {seed} step {step}: add_arena({bytes})");
            let got = map.add_arena(bytes);
            assert_eq!(got, model.add_arena(bytes), "{ctx}");
            outcomes.added += u64::from(got.is_ok());
        } else {
            let id = ArenaId(rng.gen_range(0..model.next_id + 1));
            ctx = format!("seed {seed} step {step}: remove_arena({id})");
            let got = map.remove_arena(id);
            assert_eq!(got, model.remove_arena(id), "{ctx}");
            match got {
                Ok(_) => outcomes.removed += 1,
                Err(ArenaError::ArenaInUse { .. }) => outcomes.remove_refused_in_use += 1,
                Err(_) => {}
            }
        }
        model.compare(&map, &ctx);
    }
}

#[test]
fn random_sequences_match_the_naive_model() {
    let mut outcomes = Outcomes::default();
    for seed in 0..64 {
        run_model_sequence(0xA7E1_0000 + seed, 1500, &mut outcomes);
    }
    println!("{outcomes:?}");
    let counts = [
        outcomes.placed,
        outcomes.placed_oversize_with_waste,
        outcomes.no_fit,
        outcomes.alloc_refused,
        outcomes.freed,
        outcomes.free_refused,
        outcomes.extended,
        outcomes.extend_refused,
        outcomes.added,
        outcomes.removed,
        outcomes.remove_refused_in_use,
    ];
    assert!(
        counts.iter().all(|&c| c > 0),
        "some outcome never happened: {outcomes:?}"
    );
}

// ---------------------------------------------------------------------------
// The "batch size N then N+1" trace.

/// How the caller grows the map when nothing fits.
#[derive(Clone, Copy, Debug)]
enum Growth {
    /// Extend the last arena by what is missing if its tail is free, else
    /// add an arena of `arena_bytes_for(...)`.
    ExtendFreeTailElseAdd,
    /// Always extend the last arena by what is missing (its virtual range
    /// is reserved large); add an arena only when there is none.
    AlwaysExtendLast,
}

/// Allocates `size_bytes`, growing the map by `growth` if nothing fits.
fn alloc_growing(map: &mut ArenaMap, size_bytes: u64, growth: Growth, ctx: &str) -> LargeBlock {
    if let Some(b) = map.alloc(size_bytes, 0).unwrap() {
        return b;
    }
    let len_bytes = size_bytes.next_multiple_of(map.config().granule_bytes);
    let last = map.arena_ids().last();
    let extend = match (growth, last) {
        (_, None) => None,
        (Growth::ExtendFreeTailElseAdd, Some(id)) if map.tail_free_bytes(id) == 0 => None,
        (_, Some(id)) => Some(id),
    };
    match extend {
        Some(id) => {
            // Nothing fits, so the free tail is shorter than the request.
            let missing_bytes = len_bytes - map.tail_free_bytes(id);
            map.extend_arena(id, missing_bytes).unwrap();
        }
        None => {
            let arena_bytes = arena_bytes_for(size_bytes, map.stats().arena_bytes);
            map.add_arena(arena_bytes).unwrap();
        }
    }
    map.alloc(size_bytes, 0)
        .unwrap()
        .unwrap_or_else(|| panic!("{ctx}: {size_bytes} bytes fit nowhere after growing"))
}

/// Runs batches N = 1..=32 of one tensor of `factor * N` MiB per factor,
/// all allocated (in the factors' order, rotated by N when `rotate`), then
/// all freed. Returns (arena bytes at the end, peak allocated bytes); no
/// arena is ever removed, so the final arena bytes are the peak reserved.
fn n_then_n_plus_one(factors_mib: &[u64], rotate: bool, growth: Growth) -> (u64, u64) {
    let mut map = default_map();
    let mut peak_allocated_bytes = 0;
    for n in 1..=32u64 {
        let mut sizes: Vec<u64> = factors_mib.iter().map(|f| f * n * MIB).collect();
        if rotate {
            sizes.rotate_left(n as usize % factors_mib.len());
        }
        let mut blocks = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let ctx = format!("{growth:?} rotate {rotate} N={n} tensor {i}");
            blocks.push(alloc_growing(&mut map, size, growth, &ctx));
            peak_allocated_bytes = peak_allocated_bytes.max(map.stats().allocated_bytes);
        }
        for b in blocks {
            map.free(b.arena, b.offset_bytes).unwrap();
        }
        map.check_invariants();
        assert_eq!(map.stats().allocated_bytes, 0);
        assert_eq!(map.empty_arenas().len() as u64, map.stats().arenas);
    }
    (map.stats().arena_bytes, peak_allocated_bytes)
}

const FACTORS_MIB: [u64; 4] = [3, 5, 7, 11];

#[test]
fn batch_n_then_n_plus_one_stays_within_ten_percent() {
    const RATIO_MAX: f64 = 1.10;
    let (arena_bytes, peak_bytes) =
        n_then_n_plus_one(&FACTORS_MIB, false, Growth::ExtendFreeTailElseAdd);
    // The last batch: 32 * (3 + 5 + 7 + 11) MiB.
    assert_eq!(peak_bytes, 32 * 26 * MIB);
    let ratio = arena_bytes as f64 / peak_bytes as f64;
    println!(
        "N then N+1, extend a free tail else add: arena {} MiB / peak allocated {} MiB = {ratio:.4}",
        arena_bytes / MIB,
        peak_bytes / MIB
    );
    assert!(
        ratio <= RATIO_MAX,
        "arena {arena_bytes} / peak {peak_bytes} = {ratio} > {RATIO_MAX}"
    );
}

#[test]
fn batch_n_then_n_plus_one_in_one_growing_arena_reserves_exactly_the_peak() {
    // One arena, wholly free after each batch: each batch carves its
    // tensors from offset 0 and the arena grows to exactly the largest batch.
    for rotate in [false, true] {
        let (arena_bytes, peak_bytes) =
            n_then_n_plus_one(&FACTORS_MIB, rotate, Growth::AlwaysExtendLast);
        assert_eq!(
            (arena_bytes, peak_bytes),
            (32 * 26 * MIB, 32 * 26 * MIB),
            "rotate {rotate}"
        );
    }
}
