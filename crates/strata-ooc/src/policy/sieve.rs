//! SIEVE (Zhang et al., NSDI '24).

use std::collections::{HashMap, HashSet};

use super::list::{List, Slab, NIL};
use super::{ChunkKey, EvictionPolicy, PolicyError};

const NAME: &str = "sieve";

/// SIEVE: a FIFO queue of keys, a visited bit per key and a hand.
///
/// New keys enter at the newest end with the bit clear; a hit sets the bit
/// and moves nothing. To evict, the hand walks from where it stopped last
/// time (at first, the oldest key) toward the newest end, wrapping around
/// to the oldest: a visited key has its bit cleared and is passed, the
/// first unvisited key is evicted, and the hand stays at the next newer
/// key. Keys are never reordered, so survivors keep their place in the
/// queue and new keys sit behind the hand until it wraps.
///
/// Pinned keys: the hand passes over a key that is not evictable and leaves
/// its bit alone (being pinned is neither a visit nor a missed chance).
/// Clearing bits is O(1) amortized; a victim call also pays for the pinned
/// keys the hand passes, and returns `None` after two full turns that found
/// nothing evictable (every key pinned), leaving the hand where it was.
#[derive(Debug)]
pub struct SievePolicy {
    slab: Slab,
    list: List,
    index: HashMap<ChunkKey, usize>,
    /// The node the hand points at; [`NIL`] means the oldest node.
    hand: usize,
}

impl Default for SievePolicy {
    fn default() -> Self {
        SievePolicy {
            slab: Slab::default(),
            list: List::default(),
            index: HashMap::new(),
            hand: NIL,
        }
    }
}

impl SievePolicy {
    /// An empty policy.
    pub fn new() -> Self {
        Self::default()
    }

    fn not_resident(&self, key: ChunkKey) -> PolicyError {
        PolicyError::NotResident {
            key,
            policy: NAME,
            resident_entries: self.index.len(),
        }
    }

    /// The node after `node` in the hand's direction (newer, wrapping to the
    /// oldest).
    fn advance(&self, node: usize) -> usize {
        self.list
            .newer(&self.slab, node)
            .or(self.list.oldest())
            .unwrap_or(NIL)
    }

    /// Unlinks and releases `node`, moving the hand off it first.
    fn drop_node(&mut self, node: usize) {
        if self.hand == node {
            self.hand = self.list.newer(&self.slab, node).unwrap_or(NIL);
        }
        self.list.unlink(&mut self.slab, node);
        self.slab.release(node);
    }
}

impl EvictionPolicy for SievePolicy {
    fn on_insert(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        if self.index.contains_key(&key) {
            return Err(PolicyError::AlreadyResident {
                key,
                policy: NAME,
                resident_entries: self.index.len(),
            });
        }
        let node = self.slab.insert(key, 0, 0);
        self.list.push_newest(&mut self.slab, node);
        self.index.insert(key, node);
        Ok(())
    }

    fn on_hit(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        let Some(&node) = self.index.get(&key) else {
            return Err(self.not_resident(key));
        };
        self.slab.get_mut(node).count = 1;
        Ok(())
    }

    /// Inserted visited: a chunk read ahead has its use still to come, and
    /// unvisited it would be the hand's first choice, ahead of chunks
    /// already used (read-ahead would then evict itself).
    fn on_insert_ahead(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        self.on_insert(key)?;
        let node = self.index[&key];
        self.slab.get_mut(node).count = 1;
        Ok(())
    }

    fn on_remove(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        let Some(node) = self.index.remove(&key) else {
            return Err(self.not_resident(key));
        };
        self.drop_node(node);
        Ok(())
    }

    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        let start = match self.hand {
            NIL => self.list.oldest()?,
            node => node,
        };
        let mut current = start;
        // Turn one clears every unpinned bit, so turn two evicts the first
        // unpinned key it meets; nothing found after two turns means all pinned.
        for _ in 0..2 * self.list.len() {
            let key = self.slab.get(current).key;
            if !evictable(key) {
                current = self.advance(current);
                continue;
            }
            let node = self.slab.get_mut(current);
            if node.count != 0 {
                node.count = 0;
                current = self.advance(current);
                continue;
            }
            self.hand = current;
            self.drop_node(current);
            self.index.remove(&key);
            return Some(key);
        }
        debug_assert_eq!(current, start, "{NAME}: hand did not come full circle");
        self.hand = current;
        None
    }

    fn contains(&self, key: ChunkKey) -> bool {
        self.index.contains_key(&key)
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn check_invariants(&self) {
        let order = self.list.check(&self.slab, NAME);
        assert_eq!(
            order.len(),
            self.index.len(),
            "{NAME}: {} listed, {} indexed",
            order.len(),
            self.index.len()
        );
        for &node in &order {
            let entry = self.slab.get(node);
            assert_eq!(
                self.index.get(&entry.key),
                Some(&node),
                "{NAME}: {} is listed at node {node}, indexed at {:?}",
                entry.key,
                self.index.get(&entry.key)
            );
            assert!(
                entry.count <= 1,
                "{NAME}: {} has visited bit {}",
                entry.key,
                entry.count
            );
        }
        let linked: HashSet<usize> = order.into_iter().collect();
        assert!(
            self.hand == NIL || linked.contains(&self.hand),
            "{NAME}: hand {} points at no listed node",
            self.hand
        );
        self.slab.check(&linked, NAME);
    }
}
