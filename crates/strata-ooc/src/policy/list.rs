//! Intrusive doubly linked lists of keys over one slab of nodes.
//!
//! Several lists may share a slab (S3-FIFO moves a node from its small
//! queue to its main queue without reallocating it). Indices stay valid
//! until the node is released; released slots are reused.

use std::collections::HashSet;

use super::ChunkKey;

/// "No node": the end of a list, or no hand.
pub(crate) const NIL: usize = usize::MAX;

/// One key and the per-key state of its policy.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) key: ChunkKey,
    /// SIEVE: visited bit; S3-FIFO: access frequency.
    pub(crate) count: u8,
    /// S3-FIFO: which queue holds the node.
    pub(crate) queue: u8,
    newer: usize,
    older: usize,
}

/// Storage for the nodes of one or more lists.
#[derive(Debug, Default)]
pub(crate) struct Slab {
    nodes: Vec<Node>,
    free: Vec<usize>,
}

impl Slab {
    /// Stores an unlinked node and returns its index.
    pub(crate) fn insert(&mut self, key: ChunkKey, count: u8, queue: u8) -> usize {
        let node = Node {
            key,
            count,
            queue,
            newer: NIL,
            older: NIL,
        };
        match self.free.pop() {
            Some(index) => {
                self.nodes[index] = node;
                index
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    /// Releases an unlinked node's slot.
    pub(crate) fn release(&mut self, index: usize) {
        debug_assert!(
            self.nodes[index].newer == NIL && self.nodes[index].older == NIL,
            "slab: releasing node {index} while it is linked"
        );
        self.free.push(index);
    }

    pub(crate) fn get(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index]
    }

    /// Nodes stored and not released.
    pub(crate) fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Checks the free list (no duplicates, in bounds) and that no released
    /// slot is among `linked`; `linked` holds every node of every list.
    pub(crate) fn check(&self, linked: &HashSet<usize>, owner: &str) {
        let mut free = HashSet::with_capacity(self.free.len());
        for &index in &self.free {
            assert!(
                index < self.nodes.len(),
                "{owner}: free slot {index} out of bounds ({} nodes)",
                self.nodes.len()
            );
            assert!(free.insert(index), "{owner}: slot {index} freed twice");
            assert!(
                !linked.contains(&index),
                "{owner}: slot {index} is both free and linked"
            );
        }
        assert_eq!(
            linked.len(),
            self.live(),
            "{owner}: {} linked nodes, {} live slots ({} nodes, {} free)",
            linked.len(),
            self.live(),
            self.nodes.len(),
            self.free.len()
        );
    }
}

/// A list from its newest to its oldest node.
#[derive(Debug)]
pub(crate) struct List {
    newest: usize,
    oldest: usize,
    len: usize,
}

impl Default for List {
    fn default() -> Self {
        List {
            newest: NIL,
            oldest: NIL,
            len: 0,
        }
    }
}

fn some(index: usize) -> Option<usize> {
    (index != NIL).then_some(index)
}

impl List {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn oldest(&self) -> Option<usize> {
        some(self.oldest)
    }

    /// The next node toward the newest end.
    pub(crate) fn newer(&self, slab: &Slab, index: usize) -> Option<usize> {
        some(slab.get(index).newer)
    }

    /// Links an unlinked node as the newest.
    pub(crate) fn push_newest(&mut self, slab: &mut Slab, index: usize) {
        let old_newest = self.newest;
        {
            let node = slab.get_mut(index);
            debug_assert!(
                node.newer == NIL && node.older == NIL,
                "list: node {index} already linked"
            );
            node.older = old_newest;
        }
        if old_newest == NIL {
            self.oldest = index;
        } else {
            slab.get_mut(old_newest).newer = index;
        }
        self.newest = index;
        self.len += 1;
    }

    /// Unlinks a node of this list.
    pub(crate) fn unlink(&mut self, slab: &mut Slab, index: usize) {
        let (newer, older) = {
            let node = slab.get_mut(index);
            let links = (node.newer, node.older);
            node.newer = NIL;
            node.older = NIL;
            links
        };
        if newer == NIL {
            debug_assert_eq!(self.newest, index, "list: node {index} is not the newest");
            self.newest = older;
        } else {
            slab.get_mut(newer).older = older;
        }
        if older == NIL {
            debug_assert_eq!(self.oldest, index, "list: node {index} is not the oldest");
            self.oldest = newer;
        } else {
            slab.get_mut(older).newer = newer;
        }
        self.len -= 1;
    }

    /// Walks the list from oldest to newest, checking every link and the
    /// length; returns the node indices in that order.
    pub(crate) fn check(&self, slab: &Slab, owner: &str) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.len);
        let mut previous = NIL;
        let mut current = self.oldest;
        while current != NIL {
            assert!(
                order.len() < self.len,
                "{owner}: list longer than its length {} (cycle?)",
                self.len
            );
            let node = slab.get(current);
            assert_eq!(
                node.older, previous,
                "{owner}: node {current} ({}) links back to {} instead of {previous}",
                node.key, node.older
            );
            order.push(current);
            previous = current;
            current = node.newer;
        }
        assert_eq!(
            previous, self.newest,
            "{owner}: walk ended at {previous}, newest is {}",
            self.newest
        );
        assert_eq!(
            order.len(),
            self.len,
            "{owner}: walked {} nodes, length says {}",
            order.len(),
            self.len
        );
        order
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Random pushes and unlinks against a `VecDeque`, two lists sharing
    /// one slab, nodes moving between them.
    #[test]
    fn lists_match_a_deque() {
        let mut state = 0x1234_5678_u64;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let mut slab = Slab::default();
        let mut lists = [List::default(), List::default()];
        // Newest first, as (node, key).
        let mut models: [VecDeque<(usize, u64)>; 2] = [VecDeque::new(), VecDeque::new()];
        for step in 0..5000_u64 {
            let which = next(2);
            match next(3) {
                0 => {
                    let node = slab.insert(ChunkKey(step), 0, 0);
                    lists[which].push_newest(&mut slab, node);
                    models[which].push_front((node, step));
                }
                choice if !models[which].is_empty() => {
                    let slot = next(models[which].len());
                    let (node, key) = models[which].remove(slot).unwrap();
                    lists[which].unlink(&mut slab, node);
                    if choice == 1 {
                        slab.release(node);
                    } else {
                        lists[1 - which].push_newest(&mut slab, node);
                        models[1 - which].push_front((node, key));
                    }
                }
                _ => {}
            }
            let mut linked = HashSet::new();
            for (list, model) in lists.iter().zip(&models) {
                let order = list.check(&slab, "test");
                let expected: Vec<usize> = model.iter().rev().map(|&(node, _)| node).collect();
                assert_eq!(order, expected, "step {step}");
                for &(node, key) in model {
                    assert_eq!(slab.get(node).key, ChunkKey(key), "step {step}");
                }
                assert_eq!(list.oldest(), expected.first().copied(), "step {step}");
                linked.extend(order);
            }
            slab.check(&linked, "test");
        }
    }

    #[test]
    #[should_panic(expected = "linked nodes")]
    fn check_catches_a_leaked_node() {
        let mut slab = Slab::default();
        let mut list = List::default();
        let node = slab.insert(ChunkKey(1), 0, 0);
        list.push_newest(&mut slab, node);
        slab.insert(ChunkKey(2), 0, 0); // never linked, never released
        let linked: HashSet<usize> = list.check(&slab, "test").into_iter().collect();
        slab.check(&linked, "test");
    }
}
