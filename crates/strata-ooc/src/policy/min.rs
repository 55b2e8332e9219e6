//! Plan-aware MIN (Belady): evict the key whose next scheduled use is
//! farthest away.

use std::collections::{BTreeSet, HashMap};

use super::{ChunkKey, EvictionPolicy, PolicyError};

const NAME: &str = "min";

/// "Never used again by the schedule" in [`MinPolicy`]'s next-use links.
const NEVER: usize = usize::MAX;

/// Belady's MIN over a schedule the engine hands over, with an online
/// fallback policy for everything the schedule does not order.
///
/// [`set_schedule`](Self::set_schedule) gives the complete future access
/// sequence. The manager then reports every access in order: a miss as
/// [`on_insert`](EvictionPolicy::on_insert), a hit as
/// [`on_hit`](EvictionPolicy::on_hit). An access to the key at the
/// schedule's current position is *on schedule* and advances the position;
/// any other access is *off schedule* and leaves the position where it is
/// (a chunk read ahead of its turn, or a use the planner did not foresee).
///
/// Resident keys fall into two groups:
///
/// - keys with a scheduled use at or after the position, ordered by that
///   next use in a `BTreeSet` (next uses are distinct positions, so the
///   order is total and deterministic);
/// - keys the schedule never uses again (including every key once the
///   schedule is exhausted, or all of them when there is none), held by the
///   fallback policy, which orders them among themselves. A key joins the
///   fallback (as an insert) at the access that consumed its last scheduled
///   use.
///
/// The victim is the fallback's victim if it has an evictable key (never
/// used again = infinitely far), else the evictable key whose next use is
/// farthest. So on a trace that follows the schedule, with nothing pinned,
/// the hit count is Belady's optimum; with no schedule, or once it is
/// exhausted and the residents have been replaced, the policy behaves like
/// its fallback. If the engine departs from its plan, it should hand over
/// the remaining schedule again: a departed schedule only goes stale, it
/// never breaks an invariant.
///
/// The victim may be asked for before the missing key is reported (as the
/// simulator does) or after it; either way the new key's next use counts.
///
/// Costs: O(log n) per call plus the fallback's cost and the pinned keys
/// passed over; [`set_schedule`](Self::set_schedule) is O(schedule + n log n).
/// Memory: two words per scheduled access and a map entry per scheduled key.
///
/// ```
/// use strata_ooc::policy::{ChunkKey, EvictionPolicy, LruPolicy, MinPolicy};
///
/// let [a, b, c] = [ChunkKey(1), ChunkKey(2), ChunkKey(3)];
/// let mut min = MinPolicy::new(Box::new(LruPolicy::new()));
/// min.set_schedule(&[a, b, c, a, b, a]);
/// min.on_insert(a)?;
/// min.on_insert(b)?;
/// // Room for two: c comes next; b is used again at position 4, a at 3.
/// assert_eq!(min.victim(&mut |_| true), Some(b));
/// min.on_insert(c)?; // c is never used again: the fallback holds it
/// assert_eq!(min.next_use(c), None);
/// assert_eq!(min.victim(&mut |_| true), Some(c));
/// # Ok::<(), strata_ooc::policy::PolicyError>(())
/// ```
#[derive(Debug)]
pub struct MinPolicy {
    fallback: Box<dyn EvictionPolicy>,
    schedule: Vec<ChunkKey>,
    /// For each position, the next position of the same key, or [`NEVER`].
    next_same: Vec<usize>,
    /// Accesses of the schedule consumed so far.
    position: usize,
    /// Every key with a scheduled use at or after `position`: the first one.
    upcoming: HashMap<ChunkKey, usize>,
    /// Resident keys with a scheduled future use, as (next use, key).
    by_next_use: BTreeSet<(usize, ChunkKey)>,
}

impl MinPolicy {
    /// A policy with no schedule: until [`set_schedule`](Self::set_schedule),
    /// every decision is the fallback's.
    ///
    /// # Panics
    ///
    /// If `fallback` already holds keys (the two groups would disagree).
    pub fn new(fallback: Box<dyn EvictionPolicy>) -> Self {
        assert!(
            fallback.is_empty(),
            "{NAME}: the fallback {} already holds {} keys",
            fallback.name(),
            fallback.len()
        );
        MinPolicy {
            fallback,
            schedule: Vec::new(),
            next_same: Vec::new(),
            position: 0,
            upcoming: HashMap::new(),
            by_next_use: BTreeSet::new(),
        }
    }

    /// Replaces the schedule with `schedule`, the complete future access
    /// sequence from now on (position 0), and regroups the resident keys:
    /// keys the new schedule uses leave the fallback; keys it never uses
    /// join it, farthest old next use first.
    pub fn set_schedule(&mut self, schedule: &[ChunkKey]) {
        self.schedule = schedule.to_vec();
        self.next_same = vec![NEVER; schedule.len()];
        self.upcoming = HashMap::new();
        for (position, &key) in schedule.iter().enumerate().rev() {
            if let Some(later) = self.upcoming.insert(key, position) {
                self.next_same[position] = later;
            }
        }
        self.position = 0;

        // Fallback keys the new schedule uses, in order of first use.
        for (position, &key) in schedule.iter().enumerate() {
            if self.upcoming[&key] == position && self.fallback.contains(key) {
                self.fallback_do(key, |fallback, key| fallback.on_remove(key));
                self.by_next_use.insert((position, key));
            }
        }
        // Keys ordered by the old schedule: those the new one never uses go
        // to the fallback, least valuable (farthest) first.
        let old: Vec<(usize, ChunkKey)> =
            std::mem::take(&mut self.by_next_use).into_iter().collect();
        for &(_, key) in old.iter().rev() {
            match self.upcoming.get(&key) {
                Some(&next) => {
                    self.by_next_use.insert((next, key));
                }
                None => self.fallback_do(key, |fallback, key| fallback.on_insert(key)),
            }
        }
    }

    /// Accesses of the schedule consumed so far.
    pub fn schedule_position(&self) -> usize {
        self.position
    }

    /// Accesses in the schedule.
    pub fn schedule_len(&self) -> usize {
        self.schedule.len()
    }

    /// The position of `key`'s next scheduled use (at or after the current
    /// position), if the schedule uses it again. Resident or not.
    pub fn next_use(&self, key: ChunkKey) -> Option<usize> {
        self.upcoming.get(&key).copied()
    }

    /// The fallback policy (it holds the resident keys with no scheduled use).
    pub fn fallback(&self) -> &dyn EvictionPolicy {
        self.fallback.as_ref()
    }

    /// Runs `call` on the fallback; the fallback refusing it means the
    /// groups disagree with it.
    fn fallback_do(
        &mut self,
        key: ChunkKey,
        call: impl FnOnce(&mut dyn EvictionPolicy, ChunkKey) -> Result<(), PolicyError>,
    ) {
        if let Err(error) = call(self.fallback.as_mut(), key) {
            panic!(
                "{NAME}: fallback {} out of step on {key} (position {} of {}): {error}",
                self.fallback.name(),
                self.position,
                self.schedule.len()
            );
        }
    }

    /// One access (an insert when `inserting`, else a hit).
    fn access(&mut self, key: ChunkKey, inserting: bool) -> Result<(), PolicyError> {
        let resident = self.contains(key);
        if inserting && resident {
            return Err(PolicyError::AlreadyResident {
                key,
                policy: NAME,
                resident_entries: self.len(),
            });
        }
        if !inserting && !resident {
            return Err(PolicyError::NotResident {
                key,
                policy: NAME,
                resident_entries: self.len(),
            });
        }
        let old_next = self.upcoming.get(&key).copied();
        if self.schedule.get(self.position) == Some(&key) {
            debug_assert_eq!(old_next, Some(self.position), "{NAME}: {key} on schedule");
            let later = self.next_same[self.position];
            self.position += 1;
            if later == NEVER {
                self.upcoming.remove(&key);
            } else {
                self.upcoming.insert(key, later);
            }
        }
        let new_next = self.upcoming.get(&key).copied();
        match (resident, old_next, new_next) {
            // Already in the fallback: a plain hit there.
            (true, None, _) => self.fallback_do(key, |fallback, key| fallback.on_hit(key)),
            (true, Some(old), next) => {
                self.by_next_use.remove(&(old, key));
                match next {
                    Some(next) => {
                        self.by_next_use.insert((next, key));
                    }
                    None => self.fallback_do(key, |fallback, key| fallback.on_insert(key)),
                }
            }
            (false, _, Some(next)) => {
                self.by_next_use.insert((next, key));
            }
            (false, _, None) => self.fallback_do(key, |fallback, key| fallback.on_insert(key)),
        }
        Ok(())
    }
}

impl EvictionPolicy for MinPolicy {
    fn on_insert(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        self.access(key, true)
    }

    fn on_hit(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        self.access(key, false)
    }

    fn on_remove(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        if let Some(&next) = self.upcoming.get(&key) {
            if self.by_next_use.remove(&(next, key)) {
                return Ok(());
            }
            return Err(PolicyError::NotResident {
                key,
                policy: NAME,
                resident_entries: self.len(),
            });
        }
        self.fallback
            .on_remove(key)
            .map_err(|_| PolicyError::NotResident {
                key,
                policy: NAME,
                resident_entries: self.len(),
            })
    }

    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        if let Some(key) = self.fallback.victim(evictable) {
            return Some(key);
        }
        let &(next, key) = self
            .by_next_use
            .iter()
            .rev()
            .find(|&&(_, key)| evictable(key))?;
        self.by_next_use.remove(&(next, key));
        Some(key)
    }

    /// Resident without an access: the schedule position stays (the key's
    /// scheduled use is still to come, and is counted when it happens).
    fn on_insert_ahead(&mut self, key: ChunkKey) -> Result<(), PolicyError> {
        if self.contains(key) {
            return Err(PolicyError::AlreadyResident {
                key,
                policy: NAME,
                resident_entries: self.len(),
            });
        }
        match self.upcoming.get(&key) {
            Some(&next) => {
                self.by_next_use.insert((next, key));
            }
            None => self.fallback_do(key, |fallback, key| fallback.on_insert(key)),
        }
        Ok(())
    }

    /// Keys with no scheduled use left first (the fallback's choice), then
    /// the key used farthest away, but only if that is after `incoming`'s
    /// next use; `None` when `incoming` has no scheduled use.
    fn victim_for_prefetch(
        &mut self,
        incoming: ChunkKey,
        evictable: &mut dyn FnMut(ChunkKey) -> bool,
    ) -> Option<ChunkKey> {
        let incoming_next = *self.upcoming.get(&incoming)?;
        if let Some(key) = self.fallback.victim(evictable) {
            return Some(key);
        }
        let &(next, key) = self
            .by_next_use
            .iter()
            .rev()
            .take_while(|&&(next, _)| next > incoming_next)
            .find(|&&(_, key)| evictable(key))?;
        self.by_next_use.remove(&(next, key));
        Some(key)
    }

    fn contains(&self, key: ChunkKey) -> bool {
        match self.upcoming.get(&key) {
            Some(&next) => self.by_next_use.contains(&(next, key)),
            None => self.fallback.contains(key),
        }
    }

    fn len(&self) -> usize {
        self.by_next_use.len() + self.fallback.len()
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn check_invariants(&self) {
        assert_eq!(
            self.next_same.len(),
            self.schedule.len(),
            "{NAME}: {} next-use links for {} accesses",
            self.next_same.len(),
            self.schedule.len()
        );
        assert!(
            self.position <= self.schedule.len(),
            "{NAME}: position {} past the schedule's {} accesses",
            self.position,
            self.schedule.len()
        );
        // Recompute the links and the upcoming uses from scratch.
        let mut expected_upcoming: HashMap<ChunkKey, usize> = HashMap::new();
        for (position, &key) in self.schedule.iter().enumerate().rev() {
            let later = expected_upcoming.insert(key, position).unwrap_or(NEVER);
            assert_eq!(
                self.next_same[position], later,
                "{NAME}: position {position} ({key}) links to {}, next use is {later}",
                self.next_same[position]
            );
            if position == self.position {
                assert_eq!(
                    self.upcoming, expected_upcoming,
                    "{NAME}: upcoming uses at position {position} are wrong"
                );
            }
        }
        if self.position == self.schedule.len() {
            assert!(
                self.upcoming.is_empty(),
                "{NAME}: schedule exhausted, {} keys still have upcoming uses",
                self.upcoming.len()
            );
        }
        for &(next, key) in &self.by_next_use {
            assert_eq!(
                self.upcoming.get(&key),
                Some(&next),
                "{NAME}: {key} is ordered at {next}, its next use is {:?}",
                self.upcoming.get(&key)
            );
        }
        for &key in self.upcoming.keys() {
            assert!(
                !self.fallback.contains(key),
                "{NAME}: {key} has a scheduled use at {:?} but the fallback holds it",
                self.upcoming.get(&key)
            );
        }
        self.fallback.check_invariants();
    }
}
