//! Least recently used.

use std::collections::{HashMap, HashSet};

use super::list::{List, Slab};
use super::{ChunkKey, EvictionPolicy, PolicyError};

const NAME: &str = "lru";

/// Evicts the least recently used evictable key.
///
/// An intrusive list over a slab, newest (most recently used) first, and a
/// map from key to node: every call is O(1). Pinned keys are passed over
/// where they are, so they keep their recency and the scan costs O(1 + the
/// pinned keys older than the victim).
#[derive(Debug, Default)]
pub struct LruPolicy {
    slab: Slab,
    list: List,
    index: HashMap<ChunkKey, usize>,
}

impl LruPolicy {
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
}

impl EvictionPolicy for LruPolicy {
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
        self.list.unlink(&mut self.slab, node);
        self.list.push_newest(&mut self.slab, node);
        Ok(())
    }

    fn on_remove(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        let Some(node) = self.index.remove(&key) else {
            return Err(self.not_resident(key));
        };
        self.list.unlink(&mut self.slab, node);
        self.slab.release(node);
        Ok(())
    }

    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        let mut current = self.list.oldest();
        while let Some(node) = current {
            let key = self.slab.get(node).key;
            if evictable(key) {
                self.list.unlink(&mut self.slab, node);
                self.slab.release(node);
                self.index.remove(&key);
                return Some(key);
            }
            current = self.list.newer(&self.slab, node);
        }
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
            let key = self.slab.get(node).key;
            assert_eq!(
                self.index.get(&key),
                Some(&node),
                "{NAME}: {key} is listed at node {node}, indexed at {:?}",
                self.index.get(&key)
            );
        }
        let linked: HashSet<usize> = order.into_iter().collect();
        self.slab.check(&linked, NAME);
    }
}
