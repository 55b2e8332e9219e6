//! Criterion benches for the hybrid pool, beside the `strata bench pool`
//! suite: the same alloc+free churn (1024 live blocks, log-uniform sizes
//! 16 B..=1 MiB) on one thread, on the pool with accounting on and off and
//! on mimalloc and the system allocator. One iteration is
//! [`STEPS_PER_ITER`] steps. Run with `cargo bench -p strata-bench --bench pool`.

use std::alloc::System;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mimalloc::MiMalloc;
use strata_bench::churn::{ChurnPlan, ChurnSizes, ChurnWorker, RawAlloc, ViaGlobalAlloc};
use strata_pool::sampling::{ProfileConfig, ProfileLevel};
use strata_pool::{HybridPool, PoolConfig};

const SEED: u64 = 0x5354_5241_5441_0004;
const SLOTS: usize = 1024;
/// Steps in the plan; iterations cycle through it.
const PLAN_STEPS: usize = 1 << 16;
/// Steps timed per iteration.
const STEPS_PER_ITER: usize = 256;

const _: () = assert!(PLAN_STEPS.is_multiple_of(STEPS_PER_ITER));

/// Fills the working set, then times iterations of `STEPS_PER_ITER` steps,
/// cycling through the plan; checks and frees everything at the end.
fn churn_on<A: RawAlloc>(c: &mut Criterion, name: &str, allocator: &A, plan: &ChurnPlan) {
    let mut worker = ChurnWorker::fill(allocator, plan).expect("fill");
    let mut chunks = plan.steps().chunks_exact(STEPS_PER_ITER).cycle();
    let mut group = c.benchmark_group("churn 16 B..1 MiB, 1 thread");
    group.throughput(Throughput::Elements(STEPS_PER_ITER as u64));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.bench_function(name, |b| {
        b.iter(|| {
            let chunk = chunks.next().expect("cycle never ends");
            worker.run(chunk).expect("churn verified");
        })
    });
    group.finish();
    worker.drain().expect("every block intact");
}

fn pool_config(accounting: bool) -> PoolConfig {
    PoolConfig {
        accounting,
        profile: ProfileConfig {
            level: ProfileLevel::Off,
            ..ProfileConfig::default()
        },
        ..PoolConfig::default()
    }
}

fn churn(c: &mut Criterion) {
    let plan = ChurnPlan::generate(SEED, SLOTS, PLAN_STEPS, ChurnSizes::FULL);
    let pool = HybridPool::new(pool_config(true)).expect("pool");
    churn_on(c, "pool", &pool, &plan);
    let stats = pool.stats();
    assert_eq!(stats.allocated.current_bytes, 0, "{stats}");
    assert_eq!(stats.alloc_count, stats.free_count, "{stats}");
    let pool = HybridPool::new(pool_config(false)).expect("pool");
    churn_on(c, "pool, accounting off", &pool, &plan);
    churn_on(c, "mimalloc", &ViaGlobalAlloc(&MiMalloc), &plan);
    churn_on(c, "system", &ViaGlobalAlloc(&System), &plan);
}

// The macro generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, churn);
}
use group::benches;
criterion_main!(benches);
