//! A cache simulator over access traces, and Belady's optimum computed
//! offline, to measure policies against each other and against the bound.
//!
//! ```
//! use strata_ooc::policy::sim::{belady_hits, simulate};
//! use strata_ooc::policy::trace::loop_trace;
//! use strata_ooc::policy::LruPolicy;
//!
//! // A loop over 10 keys in a cache of 5: LRU always evicts the key needed next.
//! let trace = loop_trace(10, 4);
//! let lru = simulate(&mut LruPolicy::new(), &trace, 5, &mut |_| false)?;
//! assert_eq!((lru.hits, lru.misses), (0, 40));
//! assert_eq!(belady_hits(&trace, 5)?, 15);
//! # Ok::<(), strata_ooc::policy::sim::SimError>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{ChunkKey, EvictionPolicy};

/// What a simulation counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Accesses that found their key resident.
    pub hits: u64,
    /// Accesses that had to insert their key.
    pub misses: u64,
    /// Keys evicted to make room.
    pub evictions: u64,
    /// Misses inserted over capacity because every resident key was pinned.
    pub overfull_inserts: u64,
}

impl SimStats {
    /// Hits over accesses (0 for an empty trace).
    pub fn hit_ratio(&self) -> f64 {
        let accesses = self.hits + self.misses;
        if accesses == 0 {
            0.0
        } else {
            self.hits as f64 / accesses as f64
        }
    }
}

/// A simulation that cannot run.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// A cache must hold at least one entry.
    ZeroCapacity,
    /// The policy must start empty (the simulator tracks residency itself).
    PolicyNotEmpty {
        /// The policy's name.
        policy: &'static str,
        /// Keys it holds.
        resident_entries: usize,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::ZeroCapacity => {
                write!(f, "a simulated cache needs a capacity of at least 1 entry")
            }
            SimError::PolicyNotEmpty {
                policy,
                resident_entries,
            } => write!(
                f,
                "the {policy} policy must start empty, it holds {resident_entries} keys"
            ),
        }
    }
}

impl std::error::Error for SimError {}

/// Runs `trace` through a cache of `capacity_entries` entries ordered by
/// `policy`, as the buffer manager would: a hit is reported with
/// `on_hit`; a miss first evicts victims until there is room (keys for
/// which `pinned` is true are not evictable), then reports `on_insert`. If
/// everything resident is pinned, the key is inserted over capacity and
/// counted in [`SimStats::overfull_inserts`].
///
/// The simulator checks the policy as it goes and panics, with the values,
/// if the policy evicts a pinned or non-resident key, refuses a valid call,
/// or disagrees about the number of resident keys.
pub fn simulate(
    policy: &mut dyn EvictionPolicy,
    trace: &[ChunkKey],
    capacity_entries: usize,
    pinned: &mut dyn FnMut(ChunkKey) -> bool,
) -> Result<SimStats, SimError> {
    if capacity_entries == 0 {
        return Err(SimError::ZeroCapacity);
    }
    if !policy.is_empty() {
        return Err(SimError::PolicyNotEmpty {
            policy: policy.name(),
            resident_entries: policy.len(),
        });
    }
    let name = policy.name();
    let mut resident: HashSet<ChunkKey> = HashSet::new();
    let mut stats = SimStats::default();
    for (position, &key) in trace.iter().enumerate() {
        if resident.contains(&key) {
            stats.hits += 1;
            if let Err(error) = policy.on_hit(key) {
                panic!("{name}: hit at access {position} refused: {error}");
            }
            continue;
        }
        stats.misses += 1;
        while resident.len() >= capacity_entries {
            let Some(victim) = policy.victim(&mut |candidate| !pinned(candidate)) else {
                stats.overfull_inserts += 1;
                break;
            };
            assert!(
                !pinned(victim),
                "{name}: evicted pinned {victim} at access {position}"
            );
            assert!(
                resident.remove(&victim),
                "{name}: evicted {victim}, which is not resident, at access {position}"
            );
            stats.evictions += 1;
        }
        if let Err(error) = policy.on_insert(key) {
            panic!("{name}: insert at access {position} refused: {error}");
        }
        resident.insert(key);
        assert_eq!(
            policy.len(),
            resident.len(),
            "{name}: holds {} keys, {} resident after access {position}",
            policy.len(),
            resident.len()
        );
    }
    Ok(stats)
}

/// The hits of Belady's MIN on `trace` with `capacity_entries` entries:
/// on a miss with a full cache, evict the resident key whose next use is
/// farthest (or that is never used again). Every key is admitted (demand
/// paging), as in [`simulate`]. Computed offline, independently of
/// [`MinPolicy`](super::MinPolicy): a table of next uses and a linear scan
/// of the residents per eviction, O(trace × capacity).
pub fn belady_hits(trace: &[ChunkKey], capacity_entries: usize) -> Result<u64, SimError> {
    if capacity_entries == 0 {
        return Err(SimError::ZeroCapacity);
    }
    // next_use[i]: the next access to trace[i]'s key after i (trace.len() = never).
    let mut next_use = vec![trace.len(); trace.len()];
    let mut seen_at: HashMap<ChunkKey, usize> = HashMap::new();
    for (position, &key) in trace.iter().enumerate().rev() {
        if let Some(later) = seen_at.insert(key, position) {
            next_use[position] = later;
        }
    }
    // (key, its next use) for each resident key.
    let mut cache: Vec<(ChunkKey, usize)> = Vec::with_capacity(capacity_entries);
    let mut hits = 0;
    for (position, &key) in trace.iter().enumerate() {
        if let Some(slot) = cache.iter().position(|&(resident, _)| resident == key) {
            hits += 1;
            cache[slot].1 = next_use[position];
            continue;
        }
        if cache.len() == capacity_entries {
            let farthest = (0..cache.len())
                .max_by_key(|&slot| cache[slot].1)
                .expect("a full cache of at least one entry");
            cache.swap_remove(farthest);
        }
        cache.push((key, next_use[position]));
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LruPolicy;

    #[test]
    fn counts_and_ratio() {
        let trace = [1, 2, 1, 3, 1, 2].map(ChunkKey);
        // LRU with 2 entries: 1 2 | 1 hit | 3 evicts 2 | 1 hit | 2 evicts 3.
        let stats = simulate(&mut LruPolicy::new(), &trace, 2, &mut |_| false).unwrap();
        assert_eq!(
            stats,
            SimStats {
                hits: 2,
                misses: 4,
                evictions: 2,
                overfull_inserts: 0
            }
        );
        assert_eq!(stats.hit_ratio(), 2.0 / 6.0);
        assert_eq!(SimStats::default().hit_ratio(), 0.0);
        // Belady: at 3, evict 2 (next use 5) rather than 1 (next use 4): the same 2 hits.
        assert_eq!(belady_hits(&trace, 2), Ok(2));
        assert_eq!(belady_hits(&trace, 3), Ok(3));
        assert_eq!(belady_hits(&[], 3), Ok(0));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            SimError::PolicyNotEmpty {
                policy: "sieve",
                resident_entries: 4
            }
            .to_string(),
            "the sieve policy must start empty, it holds 4 keys"
        );
        assert_eq!(
            SimError::ZeroCapacity.to_string(),
            "a simulated cache needs a capacity of at least 1 entry"
        );
    }
}
