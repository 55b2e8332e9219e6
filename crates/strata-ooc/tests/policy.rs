//! Eviction policies against naive models, on exact small cases, and on
//! traces against Belady's optimum.

use std::collections::HashSet;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_ooc::policy::sim::{belady_hits, simulate, SimError, SimStats};
use strata_ooc::policy::trace::{loop_trace, scan_trace, zipf_trace, MatmulTiles};
use strata_ooc::policy::{
    ChunkKey, EvictionPolicy, LruPolicy, MinPolicy, PolicyError, S3FifoPolicy, SievePolicy,
    S3FIFO_FREQ_MAX, S3FIFO_GHOST_PERCENT, S3FIFO_PROMOTE_FREQ_MIN, S3FIFO_SMALL_PERCENT,
};

fn keys(ids: &[u64]) -> Vec<ChunkKey> {
    ids.iter().copied().map(ChunkKey).collect()
}

/// The result of a call, without the details a model does not reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    AlreadyResident,
    NotResident,
}

fn outcome(result: Result<(), PolicyError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok,
        Err(PolicyError::AlreadyResident { .. }) => Outcome::AlreadyResident,
        Err(PolicyError::NotResident { .. }) => Outcome::NotResident,
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// A slow, obviously correct implementation of one policy.
trait Model {
    fn contains(&self, key: ChunkKey) -> bool;
    fn len(&self) -> usize;
    fn insert(&mut self, key: ChunkKey);
    fn hit(&mut self, key: ChunkKey);
    fn remove(&mut self, key: ChunkKey);
    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey>;

    fn checked_insert(&mut self, key: ChunkKey) -> Outcome {
        if self.contains(key) {
            return Outcome::AlreadyResident;
        }
        self.insert(key);
        Outcome::Ok
    }
    fn checked_hit(&mut self, key: ChunkKey) -> Outcome {
        if !self.contains(key) {
            return Outcome::NotResident;
        }
        self.hit(key);
        Outcome::Ok
    }
    fn checked_remove(&mut self, key: ChunkKey) -> Outcome {
        if !self.contains(key) {
            return Outcome::NotResident;
        }
        self.remove(key);
        Outcome::Ok
    }
}

/// LRU: a vector, least recently used first.
#[derive(Default)]
struct NaiveLru {
    order: Vec<ChunkKey>,
}

impl Model for NaiveLru {
    fn contains(&self, key: ChunkKey) -> bool {
        self.order.contains(&key)
    }
    fn len(&self) -> usize {
        self.order.len()
    }
    fn insert(&mut self, key: ChunkKey) {
        self.order.push(key);
    }
    fn hit(&mut self, key: ChunkKey) {
        self.remove(key);
        self.order.push(key);
    }
    fn remove(&mut self, key: ChunkKey) {
        self.order.retain(|&resident| resident != key);
    }
    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        let slot = self.order.iter().position(|&key| evictable(key))?;
        Some(self.order.remove(slot))
    }
}

/// SIEVE: a vector, oldest first, with visited bits; the hand names a key
/// (`None`: the oldest).
#[derive(Default)]
struct NaiveSieve {
    queue: Vec<(ChunkKey, bool)>,
    hand: Option<ChunkKey>,
}

impl NaiveSieve {
    fn slot(&self, key: ChunkKey) -> usize {
        self.queue.iter().position(|&(k, _)| k == key).unwrap()
    }
}

impl Model for NaiveSieve {
    fn contains(&self, key: ChunkKey) -> bool {
        self.queue.iter().any(|&(k, _)| k == key)
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
    fn insert(&mut self, key: ChunkKey) {
        self.queue.push((key, false));
    }
    fn hit(&mut self, key: ChunkKey) {
        let slot = self.slot(key);
        self.queue[slot].1 = true;
    }
    fn remove(&mut self, key: ChunkKey) {
        let slot = self.slot(key);
        if self.hand == Some(key) {
            self.hand = self.queue.get(slot + 1).map(|&(k, _)| k);
        }
        self.queue.remove(slot);
    }
    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        let n = self.queue.len();
        if n == 0 {
            return None;
        }
        let mut slot = self.hand.map_or(0, |key| self.slot(key));
        for _ in 0..2 * n {
            let (key, visited) = self.queue[slot];
            if !evictable(key) {
                slot = (slot + 1) % n;
            } else if visited {
                self.queue[slot].1 = false;
                slot = (slot + 1) % n;
            } else {
                self.remove(key);
                self.hand = self.queue.get(slot).map(|&(k, _)| k);
                return Some(key);
            }
        }
        self.hand = Some(self.queue[slot].0);
        None
    }
}

/// S3-FIFO: vectors, oldest first.
#[derive(Default)]
struct NaiveS3Fifo {
    small: Vec<(ChunkKey, u8)>,
    main: Vec<(ChunkKey, u8)>,
    ghost: Vec<ChunkKey>,
}

impl NaiveS3Fifo {
    fn find(&mut self, key: ChunkKey) -> Option<&mut (ChunkKey, u8)> {
        self.small
            .iter_mut()
            .chain(self.main.iter_mut())
            .find(|(k, _)| *k == key)
    }

    fn evict_small(
        &mut self,
        evictable: &mut dyn FnMut(ChunkKey) -> bool,
        total: usize,
        small_target: usize,
    ) -> Option<ChunkKey> {
        let mut pinned_run = 0;
        while !self.small.is_empty() {
            let (key, freq) = self.small.remove(0);
            if !evictable(key) {
                self.small.push((key, freq));
                pinned_run += 1;
                if pinned_run >= self.small.len() {
                    return None;
                }
                continue;
            }
            pinned_run = 0;
            if freq >= S3FIFO_PROMOTE_FREQ_MIN {
                self.main.push((key, 0));
                if self.main.len() > total - small_target {
                    if let Some(victim) = self.evict_main(evictable) {
                        return Some(victim);
                    }
                }
                continue;
            }
            self.ghost.push(key);
            let ghost_max = (total * S3FIFO_GHOST_PERCENT / 100).max(1);
            while self.ghost.len() > ghost_max {
                self.ghost.remove(0);
            }
            return Some(key);
        }
        None
    }

    fn evict_main(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        let mut pinned_run = 0;
        while !self.main.is_empty() {
            let (key, freq) = self.main.remove(0);
            if !evictable(key) {
                self.main.push((key, freq));
                pinned_run += 1;
                if pinned_run >= self.main.len() {
                    return None;
                }
                continue;
            }
            pinned_run = 0;
            if freq > 0 {
                self.main.push((key, freq - 1));
                continue;
            }
            return Some(key);
        }
        None
    }
}

impl Model for NaiveS3Fifo {
    fn contains(&self, key: ChunkKey) -> bool {
        self.small.iter().chain(&self.main).any(|&(k, _)| k == key)
    }
    fn len(&self) -> usize {
        self.small.len() + self.main.len()
    }
    fn insert(&mut self, key: ChunkKey) {
        if let Some(slot) = self.ghost.iter().position(|&k| k == key) {
            self.ghost.remove(slot);
            self.main.push((key, 0));
        } else {
            self.small.push((key, 0));
        }
    }
    fn hit(&mut self, key: ChunkKey) {
        let entry = self.find(key).unwrap();
        entry.1 = (entry.1 + 1).min(S3FIFO_FREQ_MAX);
    }
    fn remove(&mut self, key: ChunkKey) {
        self.small.retain(|&(k, _)| k != key);
        self.main.retain(|&(k, _)| k != key);
    }
    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        let total = self.len();
        if total == 0 {
            return None;
        }
        let small_target = (total * S3FIFO_SMALL_PERCENT / 100).max(1);
        if self.small.len() >= small_target || self.main.is_empty() {
            self.evict_small(evictable, total, small_target)
                .or_else(|| self.evict_main(evictable))
        } else {
            self.evict_main(evictable)
                .or_else(|| self.evict_small(evictable, total, small_target))
        }
    }
}

/// Plan-aware MIN: next uses found by scanning the schedule, the scheduled
/// residents in a vector, and a real fallback policy (tested on its own)
/// for the rest.
struct NaiveMin {
    schedule: Vec<ChunkKey>,
    position: usize,
    scheduled: Vec<ChunkKey>,
    fallback: Box<dyn EvictionPolicy>,
}

impl NaiveMin {
    fn new(fallback: Box<dyn EvictionPolicy>) -> Self {
        NaiveMin {
            schedule: Vec::new(),
            position: 0,
            scheduled: Vec::new(),
            fallback,
        }
    }

    fn next_use(&self, key: ChunkKey) -> Option<usize> {
        self.schedule[self.position..]
            .iter()
            .position(|&k| k == key)
            .map(|offset| self.position + offset)
    }

    fn set_schedule(&mut self, schedule: &[ChunkKey], resident_keys: &[ChunkKey]) {
        let mut old: Vec<(usize, ChunkKey)> = self
            .scheduled
            .iter()
            .map(|&key| (self.next_use(key).unwrap(), key))
            .collect();
        old.sort();
        self.schedule = schedule.to_vec();
        self.position = 0;
        let mut firsts: Vec<ChunkKey> = Vec::new();
        for &key in schedule {
            if !firsts.contains(&key) {
                firsts.push(key);
            }
        }
        for key in firsts {
            if resident_keys.contains(&key) && self.fallback.contains(key) {
                self.fallback.on_remove(key).unwrap();
                self.scheduled.push(key);
            }
        }
        for &(_, key) in old.iter().rev() {
            if self.next_use(key).is_none() {
                self.scheduled.retain(|&k| k != key);
                self.fallback.on_insert(key).unwrap();
            }
        }
    }

    fn access(&mut self, key: ChunkKey) {
        let in_fallback = self.fallback.contains(key);
        if self.schedule.get(self.position) == Some(&key) {
            self.position += 1;
        }
        if in_fallback {
            self.fallback.on_hit(key).unwrap();
            return;
        }
        self.scheduled.retain(|&k| k != key);
        if self.next_use(key).is_some() {
            self.scheduled.push(key);
        } else {
            self.fallback.on_insert(key).unwrap();
        }
    }
}

impl Model for NaiveMin {
    fn contains(&self, key: ChunkKey) -> bool {
        self.scheduled.contains(&key) || self.fallback.contains(key)
    }
    fn len(&self) -> usize {
        self.scheduled.len() + self.fallback.len()
    }
    fn insert(&mut self, key: ChunkKey) {
        self.access(key);
    }
    fn hit(&mut self, key: ChunkKey) {
        self.access(key);
    }
    fn remove(&mut self, key: ChunkKey) {
        if self.scheduled.contains(&key) {
            self.scheduled.retain(|&k| k != key);
        } else {
            self.fallback.on_remove(key).unwrap();
        }
    }
    fn victim(&mut self, evictable: &mut dyn FnMut(ChunkKey) -> bool) -> Option<ChunkKey> {
        if let Some(key) = self.fallback.victim(evictable) {
            return Some(key);
        }
        let mut best: Option<(usize, ChunkKey)> = None;
        for &key in &self.scheduled {
            let next = self.next_use(key).unwrap();
            if best.is_none_or(|(farthest, _)| next > farthest) && evictable(key) {
                best = Some((next, key));
            }
        }
        let (_, key) = best?;
        self.scheduled.retain(|&k| k != key);
        Some(key)
    }
}

const KEY_UNIVERSE: u64 = 24;
const RESIDENT_SOFT_MAX: usize = 16;

fn random_pins(rng: &mut SmallRng, policy_keys: &[ChunkKey]) -> HashSet<ChunkKey> {
    let pin_probability = [0.0, 0.3, 0.7, 1.0][rng.gen_range(0..4)];
    policy_keys
        .iter()
        .copied()
        .filter(|_| rng.gen_bool(pin_probability))
        .collect()
}

/// One random operation on both, compared; returns the resident keys.
fn random_op(
    rng: &mut SmallRng,
    policy: &mut dyn EvictionPolicy,
    model: &mut dyn Model,
    context: &str,
) {
    let key = ChunkKey(rng.gen_range(0..KEY_UNIVERSE));
    let choice = if policy.len() > RESIDENT_SOFT_MAX {
        3
    } else {
        rng.gen_range(0..4)
    };
    match choice {
        0 => assert_eq!(
            outcome(policy.on_insert(key)),
            model.checked_insert(key),
            "{context}: insert {key}"
        ),
        1 => assert_eq!(
            outcome(policy.on_hit(key)),
            model.checked_hit(key),
            "{context}: hit {key}"
        ),
        2 => {
            if rng.gen_bool(0.5) {
                assert_eq!(
                    outcome(policy.on_remove(key)),
                    model.checked_remove(key),
                    "{context}: remove {key}"
                )
            } else {
                // Insert if absent, else hit: the common access.
                let expected = if model.contains(key) {
                    model.checked_hit(key)
                } else {
                    model.checked_insert(key)
                };
                let actual = if policy.contains(key) {
                    policy.on_hit(key)
                } else {
                    policy.on_insert(key)
                };
                assert_eq!(outcome(actual), expected, "{context}: access {key}");
            }
        }
        _ => {
            let universe: Vec<ChunkKey> = (0..KEY_UNIVERSE).map(ChunkKey).collect();
            let pins = random_pins(rng, &universe);
            let actual = policy.victim(&mut |key| !pins.contains(&key));
            let expected = model.victim(&mut |key| !pins.contains(&key));
            assert_eq!(actual, expected, "{context}: victim with pins {pins:?}");
            if let Some(victim) = actual {
                assert!(
                    !pins.contains(&victim),
                    "{context}: evicted pinned {victim}"
                );
                assert!(
                    !policy.contains(victim),
                    "{context}: {victim} still resident"
                );
            }
        }
    }
    assert_eq!(policy.len(), model.len(), "{context}: lengths");
    for key in (0..KEY_UNIVERSE).map(ChunkKey) {
        assert_eq!(
            policy.contains(key),
            model.contains(key),
            "{context}: residency of {key}"
        );
    }
    policy.check_invariants();
}

const MODEL_SEEDS: u64 = 30;
const MODEL_OPS: usize = 1500;

/// Makes a fresh policy and its model.
type PolicyAndModel = fn() -> (Box<dyn EvictionPolicy>, Box<dyn Model>);

fn against_model(make: PolicyAndModel) {
    for seed in 0..MODEL_SEEDS {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut policy, mut model) = make();
        for op in 0..MODEL_OPS {
            let context = format!("{} seed {seed} op {op}", policy.name());
            random_op(&mut rng, policy.as_mut(), model.as_mut(), &context);
        }
    }
}

#[test]
fn lru_matches_model() {
    against_model(|| (Box::new(LruPolicy::new()), Box::new(NaiveLru::default())));
}

#[test]
fn sieve_matches_model() {
    against_model(|| {
        (
            Box::new(SievePolicy::new()),
            Box::new(NaiveSieve::default()),
        )
    });
}

#[test]
fn s3fifo_matches_model() {
    against_model(|| {
        (
            Box::new(S3FifoPolicy::new()),
            Box::new(NaiveS3Fifo::default()),
        )
    });
}

fn fallbacks() -> [fn() -> Box<dyn EvictionPolicy>; 3] {
    [
        || Box::new(LruPolicy::new()),
        || Box::new(SievePolicy::new()),
        || Box::new(S3FifoPolicy::new()),
    ]
}

fn random_schedule(rng: &mut SmallRng) -> Vec<ChunkKey> {
    let length = rng.gen_range(0..160);
    let distinct = rng.gen_range(1..KEY_UNIVERSE);
    (0..length)
        .map(|_| ChunkKey(rng.gen_range(0..distinct)))
        .collect()
}

/// MIN against its model: mostly on-schedule accesses, with off-schedule
/// accesses, removals, refused calls, pinned victims and schedule changes.
#[test]
fn min_matches_model() {
    for make_fallback in fallbacks() {
        for seed in 0..MODEL_SEEDS {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut policy = MinPolicy::new(make_fallback());
            let mut model = NaiveMin::new(make_fallback());
            let fallback_name = policy.fallback().name();
            for op in 0..MODEL_OPS {
                let context = format!("min/{fallback_name} seed {seed} op {op}");
                let roll = rng.gen_range(0..100);
                if roll < 3 {
                    let schedule = random_schedule(&mut rng);
                    let resident: Vec<ChunkKey> = (0..KEY_UNIVERSE)
                        .map(ChunkKey)
                        .filter(|&key| policy.contains(key))
                        .collect();
                    policy.set_schedule(&schedule);
                    model.set_schedule(&schedule, &resident);
                } else if roll < 50 && policy.len() <= RESIDENT_SOFT_MAX {
                    // The next scheduled access, if any.
                    let Some(&key) = model.schedule.get(model.position) else {
                        continue;
                    };
                    let (actual, expected) = if policy.contains(key) {
                        (policy.on_hit(key), model.checked_hit(key))
                    } else {
                        (policy.on_insert(key), model.checked_insert(key))
                    };
                    assert_eq!(outcome(actual), expected, "{context}: scheduled {key}");
                } else {
                    random_op(&mut rng, &mut policy, &mut model, &context);
                }
                assert_eq!(
                    policy.schedule_position(),
                    model.position,
                    "{context}: position"
                );
                for key in (0..KEY_UNIVERSE).map(ChunkKey) {
                    assert_eq!(
                        policy.next_use(key),
                        model.next_use(key),
                        "{context}: next use of {key}"
                    );
                }
                policy.check_invariants();
            }
        }
    }
}

/// With no schedule (never set, or set empty), MIN is its fallback.
#[test]
fn min_without_schedule_is_its_fallback() {
    for make_fallback in fallbacks() {
        for seed in 0..MODEL_SEEDS {
            for set_empty in [false, true] {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut min = MinPolicy::new(make_fallback());
                if set_empty {
                    min.set_schedule(&[]);
                }
                let mut bare = make_fallback();
                for op in 0..MODEL_OPS {
                    let context = format!("min/{} seed {seed} op {op}", bare.name());
                    let key = ChunkKey(rng.gen_range(0..KEY_UNIVERSE));
                    match rng.gen_range(0..4) {
                        0 => assert_eq!(min.on_insert(key).is_ok(), bare.on_insert(key).is_ok()),
                        1 => assert_eq!(min.on_hit(key).is_ok(), bare.on_hit(key).is_ok()),
                        2 => assert_eq!(min.on_remove(key).is_ok(), bare.on_remove(key).is_ok()),
                        _ => {
                            let universe: Vec<ChunkKey> = (0..KEY_UNIVERSE).map(ChunkKey).collect();
                            let pins = random_pins(&mut rng, &universe);
                            assert_eq!(
                                min.victim(&mut |k| !pins.contains(&k)),
                                bare.victim(&mut |k| !pins.contains(&k)),
                                "{context}: victim"
                            );
                        }
                    }
                    assert_eq!(min.len(), bare.len(), "{context}: length");
                    min.check_invariants();
                }
            }
        }
    }
}

/// One access through a cache of `capacity` entries; returns the victims.
fn access(
    policy: &mut dyn EvictionPolicy,
    key: ChunkKey,
    capacity: usize,
    context: &str,
) -> Vec<ChunkKey> {
    if policy.contains(key) {
        policy.on_hit(key).unwrap();
        return Vec::new();
    }
    let mut victims = Vec::new();
    while policy.len() >= capacity {
        victims.push(policy.victim(&mut |_| true).expect(context));
    }
    policy.on_insert(key).unwrap();
    victims
}

/// Once the schedule is exhausted, MIN over LRU orders by the recency of
/// every access, scheduled ones included: exactly a bare LRU that saw the
/// same accesses and the same evictions.
#[test]
fn min_after_its_schedule_is_lru() {
    for seed in 0..MODEL_SEEDS {
        let mut rng = SmallRng::seed_from_u64(seed);
        let schedule = zipf_trace(40, 0.8, 400, seed).unwrap();
        let later: Vec<ChunkKey> = (0..600).map(|_| ChunkKey(rng.gen_range(0..60))).collect();
        let capacity = rng.gen_range(2..20);
        let mut min = MinPolicy::new(Box::new(LruPolicy::new()));
        min.set_schedule(&schedule);
        let mut mirror = LruPolicy::new();
        for (step, &key) in schedule.iter().chain(&later).enumerate() {
            let context = format!("seed {seed} capacity {capacity} step {step}");
            let exhausted = step >= schedule.len();
            if mirror.contains(key) {
                mirror.on_hit(key).unwrap();
            } else {
                mirror.on_insert(key).unwrap();
            }
            // The mirror holds one more key (the new one) while MIN evicts.
            let victims = access(&mut min, key, capacity, &context);
            for victim in victims {
                if exhausted {
                    let expected = mirror.victim(&mut |k| k != key);
                    assert_eq!(Some(victim), expected, "{context}: victim");
                } else {
                    mirror.on_remove(victim).unwrap();
                }
            }
            min.check_invariants();
        }
        assert_eq!(min.schedule_position(), schedule.len(), "seed {seed}");
    }
}

/// Once the schedule is exhausted and its keys are gone, MIN runs a new
/// trace exactly as a fresh fallback does.
#[test]
fn min_with_exhausted_schedule_equals_fallback() {
    for make_fallback in fallbacks() {
        for seed in 0..10 {
            let schedule = zipf_trace(30, 1.0, 300, seed).unwrap();
            let later: Vec<ChunkKey> = zipf_trace(50, 0.9, 1000, seed + 100)
                .unwrap()
                .into_iter()
                .map(|key| ChunkKey(key.0 + 1000))
                .collect();
            for capacity in [3, 8, 20] {
                let context = format!("seed {seed} capacity {capacity}");
                let mut min = MinPolicy::new(make_fallback());
                min.set_schedule(&schedule);
                simulate(&mut min, &schedule, capacity, &mut |_| false).unwrap();
                assert_eq!(min.schedule_position(), schedule.len(), "{context}");
                for key in 0..30 {
                    let _ = min.on_remove(ChunkKey(key));
                }
                assert!(min.is_empty(), "{context}: {} left", min.len());
                let after = simulate(&mut min, &later, capacity, &mut |_| false).unwrap();
                let mut bare = make_fallback();
                let expected = simulate(bare.as_mut(), &later, capacity, &mut |_| false).unwrap();
                assert_eq!(after, expected, "{} {context}", bare.name());
            }
        }
    }
}

#[test]
fn lru_order_is_exact() {
    let mut lru = LruPolicy::new();
    for key in keys(&[1, 2, 3, 4]) {
        lru.on_insert(key).unwrap();
    }
    lru.on_hit(ChunkKey(2)).unwrap();
    lru.on_hit(ChunkKey(1)).unwrap();
    // Order now 3, 4, 2, 1; 3 pinned is passed over and keeps its place.
    assert_eq!(lru.victim(&mut |k| k != ChunkKey(3)), Some(ChunkKey(4)));
    let order: Vec<Option<ChunkKey>> = (0..4).map(|_| lru.victim(&mut |_| true)).collect();
    assert_eq!(
        order,
        [
            Some(ChunkKey(3)),
            Some(ChunkKey(2)),
            Some(ChunkKey(1)),
            None
        ]
    );
}

/// A B C, hit B, then D and E miss with room for three, C hit in between.
/// SIEVE: D evicts A (hand stops at B); after C's hit, E clears B and C and
/// evicts D, the newest key. LRU evicts A, then B.
#[test]
fn sieve_hand_differs_from_lru() {
    let trace = keys(&[1, 2, 3, 2, 4, 3, 5]);
    let mut sieve_victims = Vec::new();
    let mut lru_victims = Vec::new();
    let (mut sieve, mut lru) = (SievePolicy::new(), LruPolicy::new());
    for &key in &trace {
        sieve_victims.extend(access(&mut sieve, key, 3, "sieve"));
        lru_victims.extend(access(&mut lru, key, 3, "lru"));
        sieve.check_invariants();
    }
    assert_eq!(sieve_victims, keys(&[1, 4]));
    assert_eq!(lru_victims, keys(&[1, 2]));
}

/// A pinned key is passed over with its bit untouched; with every key
/// pinned there is no victim and nothing changes.
#[test]
fn sieve_pins() {
    let mut sieve = SievePolicy::new();
    for key in keys(&[1, 2, 3]) {
        sieve.on_insert(key).unwrap();
    }
    sieve.on_hit(ChunkKey(2)).unwrap();
    assert_eq!(sieve.victim(&mut |_| false), None);
    assert_eq!(sieve.len(), 3);
    // 1 pinned: the hand passes it, clears 2, evicts 3.
    assert_eq!(sieve.victim(&mut |k| k != ChunkKey(1)), Some(ChunkKey(3)));
    // The hand wraps to 1 (unvisited), then 2 (cleared).
    assert_eq!(sieve.victim(&mut |_| true), Some(ChunkKey(1)));
    assert_eq!(sieve.victim(&mut |_| true), Some(ChunkKey(2)));
    sieve.check_invariants();
}

/// Promotion to main, a promotion that overfills main, the ghost, and
/// readmission from the ghost into main, step by step.
#[test]
fn s3fifo_queues_are_exact() {
    let mut s3 = S3FifoPolicy::new();
    for key in keys(&[1, 2, 3, 4, 5]) {
        s3.on_insert(key).unwrap();
        s3.on_hit(key).unwrap();
    }
    // Small holds all 5 (target 1): 1..4 move to main; 5 overfills main
    // (share 4), whose oldest, 1, has frequency 0 since its move: evicted,
    // not into the ghost.
    assert_eq!(s3.victim(&mut |_| true), Some(ChunkKey(1)));
    assert_eq!((s3.small_len(), s3.main_len(), s3.ghost_len()), (0, 4, 0));
    s3.on_insert(ChunkKey(1)).unwrap();
    s3.on_hit(ChunkKey(2)).unwrap();
    // Small holds 1 >= target 1: 1 was never hit there: evicted to the ghost.
    assert_eq!(s3.victim(&mut |_| true), Some(ChunkKey(1)));
    assert!(s3.in_ghost(ChunkKey(1)));
    s3.on_insert(ChunkKey(1)).unwrap();
    assert_eq!((s3.small_len(), s3.main_len(), s3.ghost_len()), (0, 5, 0));
    // Main: 2 has frequency 1: reinserted with 0; 3 goes.
    assert_eq!(s3.victim(&mut |_| true), Some(ChunkKey(3)));
    assert_eq!(s3.victim(&mut |_| true), Some(ChunkKey(4)));
    s3.check_invariants();
}

/// A one-shot scan through S3-FIFO does not flush a hot set from main;
/// through LRU it does.
#[test]
fn s3fifo_resists_scans() {
    let hot: Vec<ChunkKey> = loop_trace(8, 10);
    let mut trace = hot.clone();
    trace.extend(scan_trace(1000, 200));
    trace.extend(&hot);
    let s3 = simulate(&mut S3FifoPolicy::new(), &trace, 10, &mut |_| false).unwrap();
    let lru = simulate(&mut LruPolicy::new(), &trace, 10, &mut |_| false).unwrap();
    // The hot set's second round: LRU misses all 8 keys once more, S3-FIFO none.
    assert_eq!(lru.hits, 72 + 72, "lru {lru:?}");
    assert_eq!(s3.hits, 72 + 80, "s3-fifo {s3:?}");
}

#[test]
fn refused_calls_change_nothing() {
    let mut policies: Vec<Box<dyn EvictionPolicy>> = vec![
        Box::new(LruPolicy::new()),
        Box::new(SievePolicy::new()),
        Box::new(S3FifoPolicy::new()),
        Box::new(MinPolicy::new(Box::new(LruPolicy::new()))),
    ];
    for policy in &mut policies {
        let name = policy.name();
        policy.on_insert(ChunkKey(7)).unwrap();
        assert_eq!(
            policy.on_insert(ChunkKey(7)),
            Err(PolicyError::AlreadyResident {
                key: ChunkKey(7),
                policy: name,
                resident_entries: 1
            })
        );
        for result in [policy.on_hit(ChunkKey(8)), policy.on_remove(ChunkKey(8))] {
            assert_eq!(
                result,
                Err(PolicyError::NotResident {
                    key: ChunkKey(8),
                    policy: name,
                    resident_entries: 1
                })
            );
        }
        assert_eq!(policy.len(), 1, "{name}");
        policy.check_invariants();
        assert_eq!(policy.victim(&mut |_| true), Some(ChunkKey(7)), "{name}");
        assert_eq!(policy.victim(&mut |_| true), None, "{name}");
    }
    let message = PolicyError::NotResident {
        key: ChunkKey(8),
        policy: "lru",
        resident_entries: 3,
    }
    .to_string();
    assert_eq!(message, "lru: chunk 8 is not resident (3 resident)");
}

/// Traces with their working set (distinct keys).
fn belady_traces(seed: u64) -> Vec<(String, Vec<ChunkKey>)> {
    let mut mixed = loop_trace(15, 3);
    mixed.extend(scan_trace(100, 60));
    mixed.extend(loop_trace(15, 3));
    mixed.extend(zipf_trace(20, 1.0, 200, seed).unwrap());
    let matmul = |m, n, k| MatmulTiles::new(m, n, k).unwrap().trace();
    vec![
        ("loop 20x6".into(), loop_trace(20, 6)),
        ("scan 50".into(), scan_trace(0, 50)),
        ("loops around a scan".into(), mixed),
        ("zipf 0.8".into(), zipf_trace(60, 0.8, 1500, seed).unwrap()),
        ("zipf 1.2".into(), zipf_trace(60, 1.2, 1500, seed).unwrap()),
        ("matmul 4x5x6".into(), matmul(4, 5, 6)),
        ("matmul 6x6x3".into(), matmul(6, 6, 3)),
    ]
}

const CAPACITY_PERCENTS: [usize; 5] = [10, 20, 30, 40, 50];

/// Plan-aware MIN on its own schedule reaches Belady's hit count exactly,
/// and no online policy beats it.
#[test]
fn min_equals_belady_on_scheduled_traces() {
    for seed in 0..3 {
        for (label, trace) in belady_traces(seed) {
            let distinct = trace.iter().collect::<HashSet<_>>().len();
            for percent in CAPACITY_PERCENTS {
                let capacity = (distinct * percent / 100).max(1);
                let context = format!("{label} seed {seed} capacity {capacity} ({percent}%)");
                let optimum = belady_hits(&trace, capacity).unwrap();
                for make_fallback in fallbacks() {
                    let mut min = MinPolicy::new(make_fallback());
                    min.set_schedule(&trace);
                    let stats = simulate(&mut min, &trace, capacity, &mut |_| false).unwrap();
                    assert_eq!(
                        stats.hits,
                        optimum,
                        "{context}: min over {}",
                        min.fallback().name()
                    );
                    assert_eq!(stats.hits + stats.misses, trace.len() as u64, "{context}");
                    min.check_invariants();
                    let mut online = make_fallback();
                    let online_stats =
                        simulate(online.as_mut(), &trace, capacity, &mut |_| false).unwrap();
                    assert!(
                        online_stats.hits <= optimum,
                        "{context}: {} hit {} > Belady {optimum}",
                        online.name(),
                        online_stats.hits
                    );
                }
            }
        }
    }
}

/// The offline reference against an exhaustive search of every eviction
/// choice, on tiny traces.
#[test]
fn belady_reference_is_optimal() {
    fn best(trace: &[ChunkKey], resident: &mut Vec<ChunkKey>, capacity: usize) -> u64 {
        let Some((&key, rest)) = trace.split_first() else {
            return 0;
        };
        if resident.contains(&key) {
            return 1 + best(rest, resident, capacity);
        }
        if resident.len() < capacity {
            resident.push(key);
            let hits = best(rest, resident, capacity);
            resident.pop();
            return hits;
        }
        let mut top = 0;
        for slot in 0..resident.len() {
            let evicted = std::mem::replace(&mut resident[slot], key);
            top = top.max(best(rest, resident, capacity));
            resident[slot] = evicted;
        }
        top
    }
    for seed in 0..200 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let length = rng.gen_range(0..11);
        let trace: Vec<ChunkKey> = (0..length).map(|_| ChunkKey(rng.gen_range(0..5))).collect();
        let capacity = rng.gen_range(1..4);
        assert_eq!(
            belady_hits(&trace, capacity).unwrap(),
            best(&trace, &mut Vec::new(), capacity),
            "seed {seed} trace {trace:?} capacity {capacity}"
        );
    }
}

/// The engine's shape: MIN far above the online policies on a matmul
/// schedule (not a timing, a count).
#[test]
fn min_beats_online_policies_on_matmul() {
    let trace = MatmulTiles::new(8, 8, 8).unwrap().trace();
    let capacity = 32; // 25% of the 128 input tiles
    let mut min = MinPolicy::new(Box::new(SievePolicy::new()));
    min.set_schedule(&trace);
    let min_hits = simulate(&mut min, &trace, capacity, &mut |_| false)
        .unwrap()
        .hits;
    assert_eq!(min_hits, belady_hits(&trace, capacity).unwrap());
    for mut online in fallbacks().map(|make| make()) {
        let hits = simulate(online.as_mut(), &trace, capacity, &mut |_| false)
            .unwrap()
            .hits;
        assert!(
            hits < min_hits,
            "{}: {hits} hits, min {min_hits}",
            online.name()
        );
    }
}

/// With pinned keys MIN never evicts one, stays within the optimum (pins
/// only constrain it) and keeps its invariants.
#[test]
fn min_never_evicts_pinned() {
    for (label, trace) in belady_traces(7) {
        let distinct = trace.iter().collect::<HashSet<_>>().len();
        for percent in CAPACITY_PERCENTS {
            let capacity = (distinct * percent / 100).max(1);
            // Fewer pinned keys than entries, so there is always a victim.
            for stride in [1, 3] {
                let pins: HashSet<ChunkKey> = trace
                    .iter()
                    .step_by(stride)
                    .copied()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .take(capacity / 2)
                    .collect();
                let context = format!("{label} capacity {capacity} pins {pins:?}");
                let mut min = MinPolicy::new(Box::new(S3FifoPolicy::new()));
                min.set_schedule(&trace);
                // simulate panics if a pinned key is evicted.
                let stats =
                    simulate(&mut min, &trace, capacity, &mut |key| pins.contains(&key)).unwrap();
                assert_eq!(stats.overfull_inserts, 0, "{context}");
                let optimum = belady_hits(&trace, capacity).unwrap();
                assert!(
                    stats.hits <= optimum,
                    "{context}: {stats:?} vs optimum {optimum}"
                );
                for &key in &pins {
                    assert!(min.contains(key), "{context}: pinned {key} is gone");
                }
                min.check_invariants();
            }
        }
    }
    let mut min = MinPolicy::new(Box::new(LruPolicy::new()));
    let trace = loop_trace(4, 2);
    min.set_schedule(&trace);
    let stats = simulate(&mut min, &trace, 2, &mut |_| true).unwrap();
    assert_eq!(
        stats,
        SimStats {
            hits: 4,
            misses: 4,
            evictions: 0,
            overfull_inserts: 2
        }
    );
}

/// Off-schedule accesses (reads ahead of their turn, unforeseen chunks)
/// leave the position alone and break nothing; the scheduled accesses
/// still consume the whole schedule.
#[test]
fn min_off_schedule_accesses() {
    for seed in 0..20 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let schedule = MatmulTiles::new(4, 4, 4).unwrap().trace();
        let mut min = MinPolicy::new(Box::new(SievePolicy::new()));
        min.set_schedule(&schedule);
        let capacity = rng.gen_range(3..12);
        for (step, &key) in schedule.iter().enumerate() {
            let context = format!("seed {seed} capacity {capacity} step {step}");
            if rng.gen_bool(0.3) {
                // A read-ahead of a later scheduled key, or a stranger.
                let extra = if rng.gen_bool(0.5) {
                    schedule[rng.gen_range(step..schedule.len())]
                } else {
                    ChunkKey(500 + rng.gen_range(0..10))
                };
                let before = min.schedule_position();
                if extra != key {
                    access(&mut min, extra, capacity, &context);
                    assert_eq!(
                        min.schedule_position(),
                        before,
                        "{context}: off schedule {extra}"
                    );
                }
                min.check_invariants();
            }
            access(&mut min, key, capacity, &context);
            assert_eq!(min.schedule_position(), step + 1, "{context}");
            min.check_invariants();
        }
        assert!(min.len() <= capacity, "seed {seed}");
    }
}

#[test]
fn simulator_refuses_bad_setups() {
    let trace = loop_trace(3, 2);
    assert_eq!(
        simulate(&mut LruPolicy::new(), &trace, 0, &mut |_| false),
        Err(SimError::ZeroCapacity)
    );
    assert_eq!(belady_hits(&trace, 0), Err(SimError::ZeroCapacity));
    let mut lru = LruPolicy::new();
    lru.on_insert(ChunkKey(1)).unwrap();
    assert_eq!(
        simulate(&mut lru, &trace, 2, &mut |_| false),
        Err(SimError::PolicyNotEmpty {
            policy: "lru",
            resident_entries: 1
        })
    );
}

#[test]
fn min_evicts_for_a_prefetch_only_what_is_needed_after_it() {
    use strata_ooc::policy::{ChunkKey, EvictionPolicy, LruPolicy, MinPolicy};
    let k = ChunkKey;
    // 1 and 2 are used again before 3: reading 3 ahead must evict nothing.
    let mut min = MinPolicy::new(Box::new(LruPolicy::new()));
    min.set_schedule(&[k(1), k(2), k(1), k(2), k(3)]);
    min.on_insert(k(1)).unwrap();
    min.on_insert(k(2)).unwrap();
    assert_eq!(min.victim_for_prefetch(k(3), &mut |_| true), None);
    // A key with no scheduled use is never worth a prefetch.
    assert_eq!(min.victim_for_prefetch(k(9), &mut |_| true), None);
    min.check_invariants();

    // Here 2 is next used after 3: it may go for 3, and 1 (needed first)
    // stays; pinned keys are skipped.
    let mut min = MinPolicy::new(Box::new(LruPolicy::new()));
    min.set_schedule(&[k(1), k(2), k(1), k(3), k(2)]);
    min.on_insert(k(1)).unwrap();
    min.on_insert(k(2)).unwrap();
    assert_eq!(min.victim_for_prefetch(k(3), &mut |key| key != k(2)), None);
    assert_eq!(min.victim_for_prefetch(k(3), &mut |_| true), Some(k(2)));
    assert!(min.contains(k(1)) && !min.contains(k(2)));
    min.check_invariants();

    // Online policies cannot tell: their usual victim.
    let mut lru = LruPolicy::new();
    lru.on_insert(k(1)).unwrap();
    lru.on_insert(k(2)).unwrap();
    assert_eq!(lru.victim_for_prefetch(k(3), &mut |_| true), Some(k(1)));
}

#[test]
fn min_counts_no_access_for_a_chunk_read_ahead() {
    use strata_ooc::policy::{ChunkKey, EvictionPolicy, LruPolicy, MinPolicy};
    let k = ChunkKey;
    let mut min = MinPolicy::new(Box::new(LruPolicy::new()));
    min.set_schedule(&[k(1), k(2), k(3)]);
    min.on_insert(k(1)).unwrap();
    // 2 and 3 read ahead: still to be used, so nothing is "dead" yet.
    min.on_insert_ahead(k(2)).unwrap();
    min.on_insert_ahead(k(3)).unwrap();
    assert_eq!(min.schedule_position(), 1);
    assert_eq!(min.next_use(k(2)), Some(1));
    // 1 is used up (dead): it goes first, then the farthest, 3.
    assert_eq!(min.victim(&mut |_| true), Some(k(1)));
    assert_eq!(min.victim(&mut |_| true), Some(k(3)));
    // The read-ahead chunk's use is counted when it happens.
    min.on_hit(k(2)).unwrap();
    assert_eq!(min.schedule_position(), 2);
    assert!(min.on_insert_ahead(k(2)).is_err(), "already resident");
    min.check_invariants();
}
