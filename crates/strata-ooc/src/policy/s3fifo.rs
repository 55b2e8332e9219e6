//! S3-FIFO (Yang et al., SOSP '23).

use std::collections::{HashMap, HashSet, VecDeque};

use super::list::{List, Slab};
use super::{ChunkKey, EvictionPolicy, PolicyError};

const NAME: &str = "s3-fifo";

/// Share of the resident keys the small FIFO is meant to hold, in percent.
pub const S3FIFO_SMALL_PERCENT: usize = 10;
/// Ghost FIFO capacity as a share of the resident keys, in percent: sized
/// like the main FIFO.
pub const S3FIFO_GHOST_PERCENT: usize = 100 - S3FIFO_SMALL_PERCENT;
/// Largest access frequency a key records (a 2-bit counter).
pub const S3FIFO_FREQ_MAX: u8 = 3;
/// A key leaving the small FIFO moves to the main FIFO if it was accessed
/// at least this often while there; otherwise it is evicted.
pub const S3FIFO_PROMOTE_FREQ_MIN: u8 = 1;
/// The ghost deque is compacted once it holds more than this many entries
/// per live ghost key (entries go stale when their key is inserted again).
const GHOST_STALE_FACTOR: usize = 2;
/// Stale ghost entries tolerated on top of the factor, so tiny ghosts do
/// not compact on every insertion.
const GHOST_STALE_SLACK: usize = 16;

const _: () = assert!(0 < S3FIFO_SMALL_PERCENT && S3FIFO_SMALL_PERCENT < 100);
const _: () = assert!(0 < S3FIFO_PROMOTE_FREQ_MIN && S3FIFO_PROMOTE_FREQ_MIN <= S3FIFO_FREQ_MAX);
const _: () = assert!(GHOST_STALE_FACTOR >= 1);

const SMALL: u8 = 0;
const MAIN: u8 = 1;

/// S3-FIFO: a small FIFO that filters one-hit wonders, a main FIFO with
/// 2-bit frequencies (CLOCK-like reinsertion), and a ghost FIFO of keys
/// recently evicted from the small FIFO.
///
/// - Insert: into the main FIFO if the key is in the ghost (it was evicted
///   from small too early), else into the small FIFO; frequency 0.
/// - Hit: frequency + 1, at most [`S3FIFO_FREQ_MAX`]. Nothing moves.
/// - Victim: from the small FIFO when it holds at least
///   [`S3FIFO_SMALL_PERCENT`] of the resident keys (or main is empty), else
///   from the main FIFO. Small: the oldest key moves to main (frequency
///   reset to 0) if its frequency reached [`S3FIFO_PROMOTE_FREQ_MIN`],
///   otherwise it is the victim and enters the ghost; a promotion that
///   pushes main past its share takes the victim from main instead. Main:
///   the oldest key with frequency > 0 is reinserted at the newest end with
///   frequency − 1, one with frequency 0 is the victim.
///
/// The policy counts entries and has no capacity of its own: the shares are
/// taken of the resident keys at the time of the victim call (a full cache),
/// and the ghost keeps the newest [`S3FIFO_GHOST_PERCENT`] of that many keys.
///
/// Pinned keys: a pinned key at the old end of its FIFO is reinserted at
/// the new end of the same FIFO with its frequency unchanged (passed over
/// like a CLOCK hand passes a page in use). If one FIFO holds only pinned
/// keys, the victim comes from the other; `None` when every key is pinned.
/// Each call is O(1) amortized plus the pinned keys passed over.
#[derive(Debug, Default)]
pub struct S3FifoPolicy {
    slab: Slab,
    small: List,
    main: List,
    index: HashMap<ChunkKey, usize>,
    /// Ghost keys and the sequence number of their live entry in `ghost_order`.
    ghost: HashMap<ChunkKey, u64>,
    /// Ghost entries, oldest first; an entry whose sequence number is not
    /// its key's in `ghost` is stale.
    ghost_order: VecDeque<(ChunkKey, u64)>,
    ghost_sequence: u64,
    /// Resident keys read ahead and not accessed since: they entered with
    /// one access counted, and their first real access adds none.
    ahead: HashSet<ChunkKey>,
}

impl S3FifoPolicy {
    /// An empty policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys in the small FIFO.
    pub fn small_len(&self) -> usize {
        self.small.len()
    }

    /// Keys in the main FIFO.
    pub fn main_len(&self) -> usize {
        self.main.len()
    }

    /// Keys in the ghost FIFO (not resident).
    pub fn ghost_len(&self) -> usize {
        self.ghost.len()
    }

    /// Whether `key` is in the ghost FIFO.
    pub fn in_ghost(&self, key: ChunkKey) -> bool {
        self.ghost.contains_key(&key)
    }

    fn not_resident(&self, key: ChunkKey) -> PolicyError {
        PolicyError::NotResident {
            key,
            policy: NAME,
            resident_entries: self.index.len(),
        }
    }

    fn queue_mut(&mut self, queue: u8) -> (&mut List, &mut Slab) {
        if queue == SMALL {
            (&mut self.small, &mut self.slab)
        } else {
            (&mut self.main, &mut self.slab)
        }
    }

    /// Moves the oldest node of `queue` to its newest end.
    fn rotate(&mut self, queue: u8, node: usize) {
        let (list, slab) = self.queue_mut(queue);
        list.unlink(slab, node);
        list.push_newest(slab, node);
    }

    /// Unlinks and releases a resident node, returning its key.
    fn evict_node(&mut self, node: usize) -> ChunkKey {
        let entry = self.slab.get(node);
        let (key, queue) = (entry.key, entry.queue);
        let (list, slab) = self.queue_mut(queue);
        list.unlink(slab, node);
        slab.release(node);
        self.index.remove(&key);
        self.ahead.remove(&key);
        key
    }

    fn ghost_push(&mut self, key: ChunkKey, ghost_entries_max: usize) {
        self.ghost_sequence += 1;
        self.ghost.insert(key, self.ghost_sequence);
        self.ghost_order.push_back((key, self.ghost_sequence));
        while self.ghost.len() > ghost_entries_max {
            let (old_key, sequence) = self
                .ghost_order
                .pop_front()
                .expect("ghost: live keys without entries");
            if self.ghost.get(&old_key) == Some(&sequence) {
                self.ghost.remove(&old_key);
            }
        }
        if self.ghost_order.len() > GHOST_STALE_FACTOR * self.ghost.len() + GHOST_STALE_SLACK {
            let ghost = &self.ghost;
            self.ghost_order
                .retain(|(key, sequence)| ghost.get(key) == Some(sequence));
        }
    }

    /// Evicts from the small FIFO; `None` if it holds only pinned keys (or
    /// is emptied by promotions while main holds only pinned keys).
    fn evict_small(
        &mut self,
        evictable: &mut dyn FnMut(ChunkKey) -> bool,
        resident_entries: usize,
        small_target_entries: usize,
    ) -> Option<ChunkKey> {
        let mut pinned_run = 0;
        while let Some(node) = self.small.oldest() {
            let entry = self.slab.get(node);
            let (key, freq) = (entry.key, entry.count);
            if !evictable(key) {
                self.rotate(SMALL, node);
                pinned_run += 1;
                if pinned_run >= self.small.len() {
                    return None;
                }
                continue;
            }
            pinned_run = 0;
            if freq >= S3FIFO_PROMOTE_FREQ_MIN {
                self.small.unlink(&mut self.slab, node);
                let entry = self.slab.get_mut(node);
                entry.count = 0;
                entry.queue = MAIN;
                self.main.push_newest(&mut self.slab, node);
                if self.main.len() > resident_entries - small_target_entries {
                    if let Some(victim) = self.evict_main(evictable) {
                        return Some(victim);
                    }
                }
                continue;
            }
            let key = self.evict_node(node);
            let ghost_entries_max = (resident_entries * S3FIFO_GHOST_PERCENT / 100).max(1);
            self.ghost_push(key, ghost_entries_max);
            return Some(key);
        }
        None
    }

    /// Evicts from the main FIFO; `None` if it holds only pinned keys.
    fn evict_main(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        let mut pinned_run = 0;
        while let Some(node) = self.main.oldest() {
            let key = self.slab.get(node).key;
            if !evictable(key) {
                self.rotate(MAIN, node);
                pinned_run += 1;
                if pinned_run >= self.main.len() {
                    return None;
                }
                continue;
            }
            pinned_run = 0;
            let entry = self.slab.get_mut(node);
            if entry.count > 0 {
                entry.count -= 1;
                self.rotate(MAIN, node);
                continue;
            }
            return Some(self.evict_node(node));
        }
        None
    }
}

impl EvictionPolicy for S3FifoPolicy {
    fn on_insert(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        if self.index.contains_key(&key) {
            return Err(PolicyError::AlreadyResident {
                key,
                policy: NAME,
                resident_entries: self.index.len(),
            });
        }
        // Its ghost entry goes stale; the deque drops it later.
        let queue = if self.ghost.remove(&key).is_some() {
            MAIN
        } else {
            SMALL
        };
        let node = self.slab.insert(key, 0, queue);
        let (list, slab) = self.queue_mut(queue);
        list.push_newest(slab, node);
        self.index.insert(key, node);
        Ok(())
    }

    fn on_hit(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        let Some(&node) = self.index.get(&key) else {
            return Err(self.not_resident(key));
        };
        if self.ahead.remove(&key) {
            // Counted when it was read ahead.
            return Ok(());
        }
        let entry = self.slab.get_mut(node);
        entry.count = (entry.count + 1).min(S3FIFO_FREQ_MAX);
        Ok(())
    }

    /// Inserted with one access counted, the access it is read ahead for: a
    /// chunk read ahead has its use still to come, and with none it would
    /// leave the small queue for the ghost before that use (read-ahead would
    /// then evict itself); with one it moves to the main queue instead. Its
    /// first real access then counts nothing more, so it ranks as a chunk
    /// accessed once.
    fn on_insert_ahead(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        self.on_insert(key)?;
        let node = self.index[&key];
        let entry = self.slab.get_mut(node);
        entry.count = entry.count.max(1);
        self.ahead.insert(key);
        Ok(())
    }

    fn on_remove(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        let Some(&node) = self.index.get(&key) else {
            return Err(self.not_resident(key));
        };
        self.evict_node(node);
        Ok(())
    }

    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        let resident_entries = self.index.len();
        if resident_entries == 0 {
            return None;
        }
        let small_target_entries = (resident_entries * S3FIFO_SMALL_PERCENT / 100).max(1);
        if self.small.len() >= small_target_entries || self.main.len() == 0 {
            self.evict_small(evictable, resident_entries, small_target_entries)
                .or_else(|| self.evict_main(evictable))
        } else {
            self.evict_main(evictable)
                .or_else(|| self.evict_small(evictable, resident_entries, small_target_entries))
        }
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
        for key in &self.ahead {
            assert!(
                self.index.contains_key(key),
                "{NAME}: read-ahead key {key} is not resident"
            );
        }
        let mut linked = HashSet::with_capacity(self.index.len());
        for (queue, list, label) in [(SMALL, &self.small, "small"), (MAIN, &self.main, "main")] {
            for node in list.check(&self.slab, NAME) {
                let entry = self.slab.get(node);
                assert_eq!(
                    entry.queue, queue,
                    "{NAME}: {} is in the {label} FIFO but tagged queue {}",
                    entry.key, entry.queue
                );
                assert!(
                    entry.count <= S3FIFO_FREQ_MAX,
                    "{NAME}: {} has frequency {} > {S3FIFO_FREQ_MAX}",
                    entry.key,
                    entry.count
                );
                assert_eq!(
                    self.index.get(&entry.key),
                    Some(&node),
                    "{NAME}: {} is listed at node {node}, indexed at {:?}",
                    entry.key,
                    self.index.get(&entry.key)
                );
                assert!(
                    !self.ghost.contains_key(&entry.key),
                    "{NAME}: {} is both resident and a ghost",
                    entry.key
                );
                linked.insert(node);
            }
        }
        assert_eq!(
            linked.len(),
            self.index.len(),
            "{NAME}: {} listed (small {}, main {}), {} indexed",
            linked.len(),
            self.small.len(),
            self.main.len(),
            self.index.len()
        );
        self.slab.check(&linked, NAME);
        let mut live_entries = 0;
        let mut previous_sequence = 0;
        for &(key, sequence) in &self.ghost_order {
            assert!(
                sequence > previous_sequence && sequence <= self.ghost_sequence,
                "{NAME}: ghost entry {key} has sequence {sequence} after {previous_sequence} (last {})",
                self.ghost_sequence
            );
            previous_sequence = sequence;
            if self.ghost.get(&key) == Some(&sequence) {
                live_entries += 1;
            }
        }
        assert_eq!(
            live_entries,
            self.ghost.len(),
            "{NAME}: {} ghost keys, {live_entries} live entries in the ghost FIFO",
            self.ghost.len()
        );
    }
}
