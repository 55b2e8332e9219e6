//! The memory budget: exact errors and messages, greedy and fair semantics on
//! hand-worked cases, RAII frees, seeded random sequences against a naive
//! model of each pool, and threads hammering the pools while an observer
//! checks `reserved() <= limit`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_pool::budget::{
    format_bytes, BudgetError, ConsumerId, ConsumerUsage, FairPool, FairShare, GreedyPool,
    MemoryConsumer, MemoryPool, Reservation, TrackConsumersPool, UnboundedPool,
};

const MIB: u64 = 1 << 20;

fn seed() -> u64 {
    std::env::var("STRATA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00b0_d6e7)
}

fn consumer(pool: &Arc<dyn MemoryPool>, name: &str, can_spill: bool) -> Reservation {
    MemoryConsumer::new(name)
        .with_can_spill(can_spill)
        .register(pool)
}

#[test]
fn format_bytes_picks_the_unit_and_rounds_to_a_tenth() {
    let cases = [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1048514, "1023.9 KiB"), // 1023.94 KiB
        (1048575, "1.0 MiB"),    // 1023.999 KiB would print as 1024.0 KiB
        (64 * MIB, "64.0 MiB"),
        (1280, "1.3 KiB"), // 1.25: a tie rounds up
        (1536 * MIB, "1.5 GiB"),
        (1 << 60, "1.0 EiB"),
        (u64::MAX, "16.0 EiB"),
    ];
    for (bytes, text) in cases {
        assert_eq!(format_bytes(bytes), text, "bytes {bytes}");
    }
}

#[test]
fn reservation_is_send_and_sync_and_ids_are_unique() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Reservation>();
    send_sync::<Arc<dyn MemoryPool>>();
    let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedPool::new());
    let a = consumer(&pool, "same", false);
    let b = consumer(&pool, "same", false);
    assert_ne!(a.consumer().id(), b.consumer().id());
    assert_eq!(a.consumer().name(), b.consumer().name());
    assert!(Arc::ptr_eq(a.pool(), &pool));
}

#[test]
fn tracked_greedy_refusal_names_the_top_consumers() {
    let tracked = Arc::new(TrackConsumersPool::new(GreedyPool::new(512 * MIB), 2));
    let pool: Arc<dyn MemoryPool> = tracked.clone();
    let prefetch = consumer(&pool, "prefetch", true);
    let panels = consumer(&pool, "matmul-panels", false);
    let scratch = consumer(&pool, "scratch", false);
    prefetch.try_grow(256 * MIB).unwrap();
    panels.try_grow(128 * MIB).unwrap();
    scratch.try_grow(96 * MIB).unwrap();
    let error = panels.try_grow(64 * MIB).unwrap_err();
    assert_eq!(
        error,
        BudgetError::Exhausted {
            consumer: "matmul-panels".into(),
            requested_bytes: 64 * MIB,
            held_bytes: 128 * MIB,
            available_bytes: 32 * MIB,
            limit_bytes: 512 * MIB,
            fair_share: None,
            top_consumers: vec![
                ("prefetch".into(), 256 * MIB),
                ("matmul-panels".into(), 128 * MIB)
            ],
        }
    );
    assert_eq!(
        error.to_string(),
        "failed to reserve 64.0 MiB for consumer 'matmul-panels' (holds 128.0 MiB): 32.0 MiB of \
         the 512.0 MiB limit available; top consumers: prefetch 256.0 MiB, matmul-panels 128.0 MiB"
    );
    // The refusal changed nothing; exactly the 32 MiB left still fits.
    assert_eq!((pool.reserved(), panels.size()), (480 * MIB, 128 * MIB));
    panels.try_grow(32 * MIB).unwrap();
    assert_eq!(pool.reserved(), 512 * MIB);
    assert_eq!(pool.overcommit_bytes(), 0);
    pool.check_invariants();
    let top = tracked.top_consumers(3);
    let names: Vec<&str> = top.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["prefetch", "matmul-panels", "scratch"]);
    assert_eq!(
        top[0],
        ConsumerUsage {
            id: prefetch.consumer().id(),
            name: "prefetch".into(),
            can_spill: true,
            current_bytes: 256 * MIB,
            peak_bytes: 256 * MIB,
        }
    );
    assert_eq!(tracked.peak_bytes(), 512 * MIB);
}

#[test]
fn untracked_greedy_refusal_has_no_consumer_list() {
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyPool::new(1000));
    let a = consumer(&pool, "a", false);
    let b = consumer(&pool, "b", false);
    a.try_grow(700).unwrap();
    b.try_grow(200).unwrap();
    let error = b.try_grow(101).unwrap_err();
    assert_eq!(
        error,
        BudgetError::Exhausted {
            consumer: "b".into(),
            requested_bytes: 101,
            held_bytes: 200,
            available_bytes: 100,
            limit_bytes: 1000,
            fair_share: None,
            top_consumers: vec![],
        }
    );
    assert_eq!(
        error.to_string(),
        "failed to reserve 101 B for consumer 'b' (holds 200 B): 100 B of the 1000 B limit available"
    );
    b.try_grow(100).unwrap();
    assert_eq!(
        a.try_grow(1).unwrap_err().to_string(),
        "failed to reserve 1 B for consumer 'a' (holds 700 B): 0 B of the 1000 B limit available"
    );
    // Zero bytes always succeed, even on a full pool.
    a.try_grow(0).unwrap();
    assert_eq!(pool.reserved(), 1000);
}

#[test]
fn shrink_too_large_is_refused_and_changes_nothing() {
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyPool::new(10 * MIB));
    let r = consumer(&pool, "decoder", false);
    r.try_grow(3 * MIB).unwrap();
    let error = r.shrink(3 * MIB + 1).unwrap_err();
    assert_eq!(
        error,
        BudgetError::ShrinkTooLarge {
            consumer: "decoder".into(),
            shrink_bytes: 3 * MIB + 1,
            held_bytes: 3 * MIB,
        }
    );
    assert_eq!(
        error.to_string(),
        "cannot shrink consumer 'decoder' by 3.0 MiB (3145729 bytes): it holds 3.0 MiB (3145728 bytes)"
    );
    assert_eq!((r.size(), pool.reserved()), (3 * MIB, 3 * MIB));
    r.shrink(MIB).unwrap();
    assert_eq!((r.size(), pool.reserved()), (2 * MIB, 2 * MIB));
    // try_resize both ways, and a refused one changes nothing.
    r.try_resize(9 * MIB).unwrap();
    assert_eq!((r.size(), pool.reserved()), (9 * MIB, 9 * MIB));
    let error = r.try_resize(11 * MIB).unwrap_err();
    assert!(
        matches!(error, BudgetError::Exhausted { requested_bytes, held_bytes, available_bytes, .. }
            if (requested_bytes, held_bytes, available_bytes) == (2 * MIB, 9 * MIB, MIB)),
        "{error:?}"
    );
    assert_eq!((r.size(), pool.reserved()), (9 * MIB, 9 * MIB));
    r.try_resize(MIB).unwrap();
    assert_eq!((r.size(), pool.reserved()), (MIB, MIB));
    assert_eq!(r.free(), MIB);
    assert_eq!(r.free(), 0);
    assert_eq!((r.size(), pool.reserved()), (0, 0));
}

#[test]
fn grow_may_overcommit_and_the_pool_reports_it() {
    for pool in [
        Arc::new(GreedyPool::new(100)) as Arc<dyn MemoryPool>,
        Arc::new(FairPool::new(100)),
        Arc::new(TrackConsumersPool::new(GreedyPool::new(100), 4)),
    ] {
        let r = consumer(&pool, "mapped", false);
        r.try_grow(80).unwrap();
        r.grow(50);
        assert_eq!(
            (pool.reserved(), pool.overcommit_bytes(), r.size()),
            (130, 30, 130),
            "{pool:?}"
        );
        let error = r.try_grow(1).unwrap_err();
        assert!(
            matches!(
                error,
                BudgetError::Exhausted {
                    available_bytes: 0,
                    held_bytes: 130,
                    ..
                }
            ),
            "{pool:?}: {error:?}"
        );
        r.shrink(40).unwrap();
        assert_eq!(
            (pool.reserved(), pool.overcommit_bytes()),
            (90, 0),
            "{pool:?}"
        );
        pool.check_invariants();
        drop(r);
        assert_eq!(pool.reserved(), 0, "{pool:?}");
    }
    let unbounded: Arc<dyn MemoryPool> = Arc::new(UnboundedPool::new());
    let r = consumer(&unbounded, "any", true);
    r.try_grow(u64::MAX / 2).unwrap();
    assert_eq!((unbounded.limit(), unbounded.overcommit_bytes()), (None, 0));
}

#[test]
fn drop_frees_and_unregisters() {
    let tracked = Arc::new(TrackConsumersPool::new(FairPool::new(1000), 4));
    let pool: Arc<dyn MemoryPool> = tracked.clone();
    let a = consumer(&pool, "a", true);
    let b = consumer(&pool, "b", false);
    a.try_grow(300).unwrap();
    b.try_grow(200).unwrap();
    assert_eq!(tracked.inner().spillable_consumers(), 1);
    drop(a);
    assert_eq!(pool.reserved(), 200);
    assert_eq!(tracked.inner().spillable_consumers(), 0);
    assert_eq!(tracked.inner().fair_share_bytes(), None);
    let top = tracked.top_consumers(10);
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(top[0].name, "b");
    assert_eq!(tracked.peak_bytes(), 500); // the pool's peak outlives its consumers
    drop(b);
    assert_eq!(pool.reserved(), 0);
    assert!(tracked.top_consumers(10).is_empty());
    pool.check_invariants();
}

#[test]
fn fair_share_follows_registrations_and_unspillable_growth() {
    let fair = Arc::new(FairPool::new(100));
    let pool: Arc<dyn MemoryPool> = fair.clone();
    let index = consumer(&pool, "index", false);
    index.try_grow(40).unwrap();
    assert_eq!(fair.fair_share_bytes(), None);
    let sort = consumer(&pool, "sort", true);
    assert_eq!(fair.fair_share_bytes(), Some(60));
    let join = consumer(&pool, "join", true);
    assert_eq!(fair.fair_share_bytes(), Some(30)); // (100 - 40) / 2
    let error = sort.try_grow(31).unwrap_err();
    assert_eq!(
        error,
        BudgetError::Exhausted {
            consumer: "sort".into(),
            requested_bytes: 31,
            held_bytes: 0,
            available_bytes: 30,
            limit_bytes: 100,
            fair_share: Some(FairShare {
                share_bytes: 30,
                spillable_consumers: 2,
                unspillable_bytes: 40,
            }),
            top_consumers: vec![],
        }
    );
    sort.try_grow(30).unwrap();
    // A third spillable consumer: the share drops to 20, sort is above it.
    let scan = consumer(&pool, "scan", true);
    assert_eq!(fair.fair_share_bytes(), Some(20));
    scan.try_grow(20).unwrap();
    assert!(matches!(
        sort.try_grow(1),
        Err(BudgetError::Exhausted {
            available_bytes: 0,
            held_bytes: 30,
            fair_share: Some(FairShare {
                share_bytes: 20,
                ..
            }),
            ..
        })
    ));
    join.try_grow(10).unwrap(); // within its share, 10 of the limit left
    assert_eq!(pool.reserved(), 100);
    assert_eq!(join.free(), 10);
    drop(scan);
    assert_eq!(fair.fair_share_bytes(), Some(30));
    assert!(
        sort.try_grow(1).is_err(),
        "sort holds its whole share of 30"
    );
    // Unspillable consumers take what is left of the whole limit, not a share.
    index.try_grow(30).unwrap();
    assert_eq!((fair.unspillable_bytes(), fair.spillable_bytes()), (70, 30));
    assert_eq!(fair.fair_share_bytes(), Some(15));
    assert!(index.try_grow(1).is_err(), "the limit is full");
    // join is within its share of 15 but the limit is full: a plain refusal.
    assert_eq!(
        join.try_grow(10).unwrap_err(),
        BudgetError::Exhausted {
            consumer: "join".into(),
            requested_bytes: 10,
            held_bytes: 0,
            available_bytes: 0,
            limit_bytes: 100,
            fair_share: None,
            top_consumers: vec![],
        }
    );
    // sort spills down to below its share; join then fits.
    sort.shrink(20).unwrap();
    join.try_grow(15).unwrap();
    assert_eq!(fair.held_bytes(join.consumer().id()), Some(15));
    assert_eq!(pool.reserved(), 95);
    pool.check_invariants();
    drop((index, sort, join));
    assert_eq!((pool.reserved(), fair.spillable_consumers()), (0, 0));
}

#[test]
fn fair_refusal_message_explains_the_share() {
    let tracked = Arc::new(TrackConsumersPool::new(FairPool::new(512 * MIB), 3));
    let pool: Arc<dyn MemoryPool> = tracked.clone();
    let index = consumer(&pool, "index", false);
    let sort = consumer(&pool, "sort", true);
    let _join = consumer(&pool, "join", true);
    index.try_grow(128 * MIB).unwrap();
    sort.try_grow(160 * MIB).unwrap();
    let error = sort.try_grow(64 * MIB).unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to reserve 64.0 MiB for consumer 'sort' (holds 160.0 MiB): 32.0 MiB of its fair \
         share of 192.0 MiB available (the 512.0 MiB limit less 128.0 MiB held by unspillable \
         consumers, split among 2 spillable consumers); top consumers: sort 160.0 MiB, index 128.0 MiB"
    );
    pool.check_invariants();
}

#[test]
#[should_panic(expected = "shrink of 1 bytes exceeds the 0 bytes reserved")]
fn a_pool_shrunk_past_zero_outside_a_reservation_panics() {
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyPool::new(10));
    let r = consumer(&pool, "r", false);
    pool.shrink(&r, 1);
}

// ---------------------------------------------------------------------------
// Seeded random sequences against a naive model.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    Unbounded,
    Greedy,
    Fair,
}

struct ModelConsumer {
    id: ConsumerId,
    name: String,
    can_spill: bool,
    held_bytes: u64,
    peak_bytes: u64,
}

/// What a pool should do, computed the slow, obvious way.
struct Model {
    policy: Policy,
    limit_bytes: u64,
    top_n: Option<usize>,
    consumers: Vec<ModelConsumer>,
    peak_bytes: u64,
}

impl Model {
    fn reserved_bytes(&self) -> u64 {
        self.consumers.iter().map(|c| c.held_bytes).sum()
    }

    fn unspillable_bytes(&self) -> u64 {
        self.consumers
            .iter()
            .filter(|c| !c.can_spill)
            .map(|c| c.held_bytes)
            .sum()
    }

    fn spillable_consumers(&self) -> u64 {
        self.consumers.iter().filter(|c| c.can_spill).count() as u64
    }

    fn share_bytes(&self) -> Option<u64> {
        let n = self.spillable_consumers();
        (n > 0).then(|| self.limit_bytes.saturating_sub(self.unspillable_bytes()) / n)
    }

    /// Live consumers largest first, ties by id.
    fn ranked(&self) -> Vec<&ModelConsumer> {
        let mut ranked: Vec<&ModelConsumer> = self.consumers.iter().collect();
        ranked.sort_by_key(|c| (std::cmp::Reverse(c.held_bytes), c.id));
        ranked
    }

    fn try_grow(&self, i: usize, bytes: u64) -> Result<(), BudgetError> {
        let c = &self.consumers[i];
        if bytes == 0 || self.policy == Policy::Unbounded {
            return Ok(());
        }
        let left_bytes = self.limit_bytes.saturating_sub(self.reserved_bytes());
        let mut refusal = None;
        if self.policy == Policy::Fair && c.can_spill {
            let share_bytes = self.share_bytes().unwrap();
            if c.held_bytes + bytes > share_bytes {
                let available_bytes = share_bytes.saturating_sub(c.held_bytes).min(left_bytes);
                refusal = Some((
                    available_bytes,
                    Some(FairShare {
                        share_bytes,
                        spillable_consumers: self.spillable_consumers(),
                        unspillable_bytes: self.unspillable_bytes(),
                    }),
                ));
            }
        }
        if refusal.is_none() && bytes > left_bytes {
            refusal = Some((left_bytes, None));
        }
        match refusal {
            None => Ok(()),
            Some((available_bytes, fair_share)) => Err(BudgetError::Exhausted {
                consumer: c.name.clone(),
                requested_bytes: bytes,
                held_bytes: c.held_bytes,
                available_bytes,
                limit_bytes: self.limit_bytes,
                fair_share,
                top_consumers: match self.top_n {
                    None => vec![],
                    Some(n) => self
                        .ranked()
                        .into_iter()
                        .filter(|c| c.held_bytes > 0)
                        .take(n)
                        .map(|c| (c.name.clone(), c.held_bytes))
                        .collect(),
                },
            }),
        }
    }

    fn add(&mut self, i: usize, bytes: u64) {
        let c = &mut self.consumers[i];
        c.held_bytes += bytes;
        c.peak_bytes = c.peak_bytes.max(c.held_bytes);
        self.peak_bytes = self.peak_bytes.max(self.reserved_bytes());
    }
}

type UsageProbe = Box<dyn Fn() -> (Vec<ConsumerUsage>, u64)>;
type ShareProbe = Box<dyn Fn() -> Option<u64>>;

/// A pool under test with the probes its kind has.
struct Subject {
    pool: Arc<dyn MemoryPool>,
    tracker: Option<UsageProbe>,
    fair_share: Option<ShareProbe>,
}

fn subject(policy: Policy, limit_bytes: u64, top_n: Option<usize>) -> Subject {
    match (policy, top_n) {
        (Policy::Unbounded, None) => Subject {
            pool: Arc::new(UnboundedPool::new()),
            tracker: None,
            fair_share: None,
        },
        (Policy::Greedy, None) => Subject {
            pool: Arc::new(GreedyPool::new(limit_bytes)),
            tracker: None,
            fair_share: None,
        },
        (Policy::Fair, None) => {
            let fair = Arc::new(FairPool::new(limit_bytes));
            let probe = fair.clone();
            Subject {
                pool: fair,
                tracker: None,
                fair_share: Some(Box::new(move || probe.fair_share_bytes())),
            }
        }
        (Policy::Greedy, Some(n)) => {
            let tracked = Arc::new(TrackConsumersPool::new(GreedyPool::new(limit_bytes), n));
            let probe = tracked.clone();
            Subject {
                pool: tracked,
                tracker: Some(Box::new(move || {
                    (probe.top_consumers(usize::MAX), probe.peak_bytes())
                })),
                fair_share: None,
            }
        }
        (Policy::Fair, Some(n)) => {
            let tracked = Arc::new(TrackConsumersPool::new(FairPool::new(limit_bytes), n));
            let (probe, share_probe) = (tracked.clone(), tracked.clone());
            Subject {
                pool: tracked,
                tracker: Some(Box::new(move || {
                    (probe.top_consumers(usize::MAX), probe.peak_bytes())
                })),
                fair_share: Some(Box::new(move || share_probe.inner().fair_share_bytes())),
            }
        }
        (Policy::Unbounded, Some(_)) => unreachable!("not a case"),
    }
}

fn check_against_model(subject: &Subject, model: &Model, live: &[Reservation], context: &str) {
    let pool = &subject.pool;
    pool.check_invariants();
    let reserved_bytes = model.reserved_bytes();
    assert_eq!(pool.reserved(), reserved_bytes, "{context}: reserved");
    if model.policy != Policy::Unbounded {
        assert_eq!(pool.limit(), Some(model.limit_bytes), "{context}: limit");
        assert_eq!(
            pool.overcommit_bytes(),
            reserved_bytes.saturating_sub(model.limit_bytes),
            "{context}: overcommit"
        );
    }
    for (r, c) in live.iter().zip(&model.consumers) {
        assert_eq!(
            (r.consumer().id(), r.size()),
            (c.id, c.held_bytes),
            "{context}: size of '{}'",
            c.name
        );
    }
    if let Some(fair_share) = &subject.fair_share {
        assert_eq!(fair_share(), model.share_bytes(), "{context}: fair share");
    }
    if let Some(tracker) = &subject.tracker {
        let (top, peak_bytes) = tracker();
        let want: Vec<ConsumerUsage> = model
            .ranked()
            .into_iter()
            .map(|c| ConsumerUsage {
                id: c.id,
                name: c.name.clone(),
                can_spill: c.can_spill,
                current_bytes: c.held_bytes,
                peak_bytes: c.peak_bytes,
            })
            .collect();
        assert_eq!(top, want, "{context}: top consumers");
        assert_eq!(peak_bytes, model.peak_bytes, "{context}: pool peak");
    }
}

fn run_model(policy: Policy, top_n: Option<usize>, seed: u64, steps: usize) {
    const LIMIT_BYTES: u64 = 1000;
    const CONSUMERS_MAX: usize = 6;
    let mut rng = SmallRng::seed_from_u64(seed);
    let subject = subject(policy, LIMIT_BYTES, top_n);
    let mut model = Model {
        policy,
        limit_bytes: LIMIT_BYTES,
        top_n,
        consumers: Vec::new(),
        peak_bytes: 0,
    };
    let mut live: Vec<Reservation> = Vec::new();
    let mut registered = 0;
    for step in 0..steps {
        let context = format!("seed {seed} policy {policy:?} top_n {top_n:?} step {step}");
        let op = rng.gen_range(0..100);
        if live.is_empty() || (op < 10 && live.len() < CONSUMERS_MAX) {
            let name = format!("c{}", registered % 4); // names repeat on purpose
            registered += 1;
            let can_spill = rng.gen_bool(0.5);
            let r = MemoryConsumer::new(name.clone())
                .with_can_spill(can_spill)
                .register(&subject.pool);
            model.consumers.push(ModelConsumer {
                id: r.consumer().id(),
                name,
                can_spill,
                held_bytes: 0,
                peak_bytes: 0,
            });
            live.push(r);
        } else {
            let i = rng.gen_range(0..live.len());
            let held_bytes = model.consumers[i].held_bytes;
            match op {
                0..=44 => {
                    let bytes = rng.gen_range(0..=LIMIT_BYTES / 3);
                    let want = model.try_grow(i, bytes);
                    let got = live[i].try_grow(bytes);
                    assert_eq!(got, want, "{context}: try_grow({bytes}) by consumer {i}");
                    if got.is_ok() {
                        model.add(i, bytes);
                    }
                }
                45..=47 => {
                    let bytes = rng.gen_range(0..=LIMIT_BYTES / 10);
                    live[i].grow(bytes);
                    model.add(i, bytes);
                }
                48..=74 => {
                    let bytes = rng.gen_range(0..=held_bytes + held_bytes / 4 + 1);
                    let got = live[i].shrink(bytes);
                    if bytes <= held_bytes {
                        assert_eq!(got, Ok(()), "{context}: shrink({bytes}) of {held_bytes}");
                        model.consumers[i].held_bytes -= bytes;
                    } else {
                        let want = BudgetError::ShrinkTooLarge {
                            consumer: model.consumers[i].name.clone(),
                            shrink_bytes: bytes,
                            held_bytes,
                        };
                        assert_eq!(got, Err(want), "{context}: shrink({bytes}) of {held_bytes}");
                    }
                }
                75..=84 => {
                    let new_size_bytes = rng.gen_range(0..=LIMIT_BYTES / 2);
                    let got = live[i].try_resize(new_size_bytes);
                    if new_size_bytes <= held_bytes {
                        assert_eq!(
                            got,
                            Ok(()),
                            "{context}: try_resize({new_size_bytes}) from {held_bytes}"
                        );
                        model.consumers[i].held_bytes = new_size_bytes;
                    } else {
                        let want = model.try_grow(i, new_size_bytes - held_bytes);
                        assert_eq!(
                            got, want,
                            "{context}: try_resize({new_size_bytes}) from {held_bytes}"
                        );
                        if got.is_ok() {
                            model.add(i, new_size_bytes - held_bytes);
                        }
                    }
                }
                85..=91 => {
                    assert_eq!(live[i].free(), held_bytes, "{context}: free");
                    model.consumers[i].held_bytes = 0;
                }
                _ => {
                    drop(live.remove(i));
                    model.consumers.remove(i);
                }
            }
        }
        check_against_model(&subject, &model, &live, &context);
    }
    live.clear();
    assert_eq!(
        subject.pool.reserved(),
        0,
        "seed {seed} policy {policy:?}: all dropped"
    );
    subject.pool.check_invariants();
}

#[test]
fn random_sequences_match_the_model_of_each_pool() {
    const SEEDS: u64 = 4;
    const STEPS: usize = 1500;
    let base = seed();
    for k in 0..SEEDS {
        let seed = base.wrapping_add(k);
        run_model(Policy::Unbounded, None, seed, STEPS);
        run_model(Policy::Greedy, None, seed, STEPS);
        run_model(Policy::Fair, None, seed, STEPS);
        run_model(Policy::Greedy, Some(3), seed, STEPS);
        run_model(Policy::Fair, Some(2), seed, STEPS);
    }
}

// ---------------------------------------------------------------------------
// Concurrency.

/// Four workers, each with a spillable and an unspillable reservation plus
/// one reservation shared by all, hammer try_grow/shrink/try_resize/free
/// while an observer checks `reserved() <= limit` and the pool's invariants.
fn hammer(pool: Arc<dyn MemoryPool>, seed: u64) {
    const WORKERS: u64 = 4;
    const OPS_PER_WORKER: usize = 20_000;
    let limit_bytes = pool.limit().expect("a bounded pool");
    let shared = consumer(&pool, "shared", true);
    let own: Vec<[Reservation; 2]> = (0..WORKERS)
        .map(|w| {
            [
                consumer(&pool, &format!("spill-{w}"), true),
                consumer(&pool, &format!("pinned-{w}"), false),
            ]
        })
        .collect();
    let done = AtomicBool::new(false);
    let (granted, refused, observations) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Acquire) {
                let reserved_bytes = pool.reserved();
                assert!(
                    reserved_bytes <= limit_bytes,
                    "seed {seed} {pool:?}: reserved {reserved_bytes} > limit {limit_bytes}"
                );
                pool.check_invariants();
                observations.fetch_add(1, Ordering::Relaxed);
            }
        });
        let workers: Vec<_> = own
            .iter()
            .enumerate()
            .map(|(w, mine)| {
                let (shared, granted, refused, observations) =
                    (&shared, &granted, &refused, &observations);
                scope.spawn(move || {
                    // Start only once the observer runs, so it always overlaps
                    // the workers (on a loaded 2-core machine it could
                    // otherwise be scheduled after they finish).
                    while observations.load(Ordering::Relaxed) == 0 {
                        std::thread::yield_now();
                    }
                    let mut rng = SmallRng::seed_from_u64(seed ^ ((w as u64 + 1) * 0x9e37_79b9));
                    for _ in 0..OPS_PER_WORKER {
                        let r = match rng.gen_range(0..5) {
                            0 => shared,
                            k => &mine[k as usize % 2],
                        };
                        let outcome = match rng.gen_range(0..10) {
                            0..=4 => r.try_grow(rng.gen_range(1..=limit_bytes / 6)),
                            5..=7 => {
                                // Another worker may shrink `shared` in between:
                                // then the refusal must say so exactly.
                                let bytes = rng.gen_range(0..=r.size());
                                match r.shrink(bytes) {
                                    Err(BudgetError::ShrinkTooLarge { shrink_bytes, held_bytes, .. }) => {
                                        assert!(
                                            shrink_bytes > held_bytes && std::ptr::eq(r, shared),
                                            "seed {seed}: shrink {shrink_bytes} of {held_bytes} refused"
                                        );
                                        Ok(())
                                    }
                                    other => other,
                                }
                            }
                            8 => r.try_resize(rng.gen_range(0..=limit_bytes / 4)),
                            _ => {
                                r.free();
                                Ok(())
                            }
                        };
                        match outcome {
                            Ok(()) => granted.fetch_add(1, Ordering::Relaxed),
                            Err(BudgetError::Exhausted { .. }) => refused.fetch_add(1, Ordering::Relaxed),
                            Err(e) => panic!("seed {seed}: unexpected {e:?}"),
                        };
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        done.store(true, Ordering::Release);
    });
    let (granted, refused) = (granted.into_inner(), refused.into_inner());
    assert!(
        granted > 0 && refused > 0 && observations.into_inner() > 0,
        "seed {seed} {pool:?}: the run must both fill the pool and succeed ({granted} granted, {refused} refused)"
    );
    // Threads joined, reservations alive: the accounting is exact.
    let sizes_bytes: u64 = shared.size() + own.iter().flatten().map(Reservation::size).sum::<u64>();
    assert_eq!(
        sizes_bytes,
        pool.reserved(),
        "seed {seed} {pool:?}: sum of reservations"
    );
    assert!(pool.reserved() <= limit_bytes, "seed {seed} {pool:?}");
    pool.check_invariants();
    drop(shared);
    drop(own);
    assert_eq!(pool.reserved(), 0, "seed {seed} {pool:?}: all dropped");
    pool.check_invariants();
}

#[test]
fn concurrent_greedy_never_exceeds_its_limit() {
    hammer(Arc::new(GreedyPool::new(10 * MIB)), seed());
}

#[test]
fn concurrent_fair_never_exceeds_its_limit() {
    hammer(Arc::new(FairPool::new(10 * MIB)), seed());
}

#[test]
fn concurrent_tracked_pools_never_exceed_their_limit() {
    let seed = seed();
    let greedy = Arc::new(TrackConsumersPool::new(GreedyPool::new(10 * MIB), 3));
    hammer(greedy.clone(), seed);
    assert!(
        greedy.peak_bytes() <= 10 * MIB,
        "seed {seed}: peak {}",
        greedy.peak_bytes()
    );
    assert!(greedy.peak_bytes() > 0, "seed {seed}");
    hammer(
        Arc::new(TrackConsumersPool::new(FairPool::new(10 * MIB), 3)),
        seed,
    );
}
