//! `strata stats` and the end of `strata demo`: the pool's and the
//! process's figures as a readable table, or as one JSON document.

use std::sync::Arc;

use serde_json::{json, Value};
use strata_pool::budget::{format_bytes, FairPool, MemoryConsumer, MemoryPool, TrackConsumersPool};
use strata_pool::pressure::{PressureMonitor, PressureThresholds};
use strata_pool::sysmem;
use strata_pool::{HybridPool, PoolConfig, PoolStats, StatBytes, TrackingStats};

/// Budget of the demo's pool workload.
const DEMO_BUDGET_BYTES: u64 = 256 << 20;
/// Tiles each demo consumer allocates per round.
const DEMO_TILES_PER_ROUND: u64 = 48;
/// Rounds of the demo workload.
const DEMO_ROUNDS: u64 = 8;
/// Call sites shown from the sampled profile.
const PROFILE_SITES_SHOWN: usize = 5;

/// A consumer's name, current and peak bytes.
type ConsumerFigures = (String, u64, u64);
/// Reserved bytes, limit, and the top consumers of a budget.
type BudgetFigures = (u64, u64, Vec<ConsumerFigures>);

/// Everything `strata stats` reports.
pub struct Snapshot {
    pool: Option<PoolStats>,
    budget: Option<BudgetFigures>,
    tracking: TrackingStats,
    profile: Option<String>,
}

/// A short pool workload, like the engine's: three consumers (input
/// panels, an output tile, a spillable prefetcher) under a fair budget
/// allocate tiles of mixed sizes through the hybrid pool, free most of them,
/// and leave the rest live. Returns the figures at the end.
pub fn demo_workload(tracking: TrackingStats) -> Result<Snapshot, String> {
    let pool = HybridPool::new(PoolConfig::default()).map_err(|e| e.to_string())?;
    let tracked = Arc::new(TrackConsumersPool::new(FairPool::new(DEMO_BUDGET_BYTES), 3));
    let budget: Arc<dyn MemoryPool> = tracked.clone();
    let panels = MemoryConsumer::new("input-panels").register(&budget);
    let output = MemoryConsumer::new("output-tile").register(&budget);
    let prefetch = MemoryConsumer::new("prefetch")
        .with_can_spill(true)
        .register(&budget);
    let mut held = Vec::new();
    for round in 0..DEMO_ROUNDS {
        for tile in 0..DEMO_TILES_PER_ROUND {
            let size = 4096 << ((round + tile) % 9); // 4 KiB .. 1 MiB
            for (reservation, scale) in [(&panels, 2), (&output, 1), (&prefetch, 3)] {
                match pool.alloc_charged(size * scale, 64, reservation) {
                    Ok(block) => held.push(block),
                    // The prefetcher is refused past its fair share: the
                    // engine would spill or wait; the demo just moves on.
                    Err(strata_pool::PoolError::Budget(_)) => {}
                    Err(error) => return Err(error.to_string()),
                }
            }
        }
        // Keep every fourth block: the rest are done with.
        let mut index = 0;
        held.retain(|_| {
            index += 1;
            index % 4 == 0
        });
    }
    let stats = pool.stats();
    pool.check_invariants();
    let consumers = tracked
        .top_consumers(3)
        .into_iter()
        .map(|c| (c.name, c.current_bytes, c.peak_bytes))
        .collect();
    let budget_figures = (budget.reserved(), DEMO_BUDGET_BYTES, consumers);
    let profile = pool.profiler().profile();
    let mut profile_text = format!(
        "sampled profile: {} samples, estimated {} allocated in total (± {})\n",
        profile.totals.sampled_count,
        format_bytes(profile.totals.estimated_total_bytes as u64),
        format_bytes(profile.totals.total_bytes_std_error as u64),
    );
    for site in profile.sites.iter().take(PROFILE_SITES_SHOWN) {
        profile_text.push_str(&format!(
            "  {:>10} live (± {}), {:>10} total  {}\n",
            format_bytes(site.estimates.estimated_live_bytes as u64),
            format_bytes(site.estimates.live_bytes_std_error as u64),
            format_bytes(site.estimates.estimated_total_bytes as u64),
            site.site
        ));
    }
    drop(held);
    Ok(Snapshot {
        pool: Some(stats),
        budget: Some(budget_figures),
        tracking,
        profile: Some(profile_text),
    })
}

/// The process's own figures, with no workload.
pub fn process_only(tracking: TrackingStats) -> Snapshot {
    Snapshot {
        pool: None,
        budget: None,
        tracking,
        profile: None,
    }
}

fn stat_json(stat: &StatBytes) -> Value {
    json!({
        "current_bytes": stat.current_bytes,
        "peak_bytes": stat.peak_bytes,
        "allocated_total_bytes": stat.allocated_total_bytes,
        "freed_total_bytes": stat.freed_total_bytes,
    })
}

/// Process, system and pressure figures (read from /proc on Linux).
fn system_json() -> Value {
    let process = sysmem::read_process_memory().ok();
    let meminfo = sysmem::read_meminfo().ok();
    let cgroup = sysmem::read_cgroup_memory().ok().flatten();
    let readings = sysmem::system_readings();
    let monitor = PressureMonitor::new(PressureThresholds::default())
        .expect("the default thresholds are valid");
    let level = monitor.observe(&readings);
    json!({
        "process": process.map(|p| json!({"rss_bytes": p.rss_bytes, "peak_rss_bytes": p.peak_rss_bytes})),
        "system": meminfo.map(|m| json!({"total_bytes": m.total_bytes, "available_bytes": m.available_bytes})),
        "cgroup": cgroup.map(|c| json!({"max_bytes": c.max_bytes, "current_bytes": c.current_bytes})),
        "pressure": level.to_string(),
    })
}

/// The snapshot as one JSON document.
pub fn to_json(snapshot: &Snapshot) -> Value {
    let pool = snapshot.pool.as_ref().map(|s| {
        json!({
            "device": s.device.to_string(),
            "allocated": stat_json(&s.allocated),
            "requested": stat_json(&s.requested),
            "reserved": stat_json(&s.reserved),
            "active_bytes": s.active_bytes,
            "cached_bytes": s.cached_bytes,
            "inactive_split_bytes": s.inactive_split_bytes,
            "free_bytes": s.free_bytes,
            "fragmentation": s.fragmentation,
            "alloc_count": s.alloc_count,
            "free_count": s.free_count,
            "slabs": s.slabs,
            "arenas": s.arenas,
            "refused_frees": s.refused_frees,
        })
    });
    let budget = snapshot
        .budget
        .as_ref()
        .map(|(reserved, limit, consumers)| {
            json!({
                "reserved_bytes": reserved,
                "limit_bytes": limit,
                "top_consumers": consumers.iter().map(|(name, current, peak)| json!({
                    "name": name, "current_bytes": current, "peak_bytes": peak
                })).collect::<Vec<_>>(),
            })
        });
    let t = &snapshot.tracking;
    json!({
        "pool": pool,
        "budget": budget,
        "heap": {
            "allocated": stat_json(&t.allocated),
            "alloc_count": t.alloc_count,
            "free_count": t.free_count,
            "threads": t.threads,
            "live_samples": t.live_samples,
        },
        "machine": system_json(),
    })
}

/// The snapshot as text tables.
pub fn to_text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    if let Some(stats) = &snapshot.pool {
        out.push_str(&stats.to_string());
        out.push('\n');
    }
    if let Some((reserved, limit, consumers)) = &snapshot.budget {
        out.push_str(&format!(
            "budget: {} of {} reserved\n",
            format_bytes(*reserved),
            format_bytes(*limit)
        ));
        for (name, current, peak) in consumers {
            out.push_str(&format!(
                "  {name:<15} {:>12} now, {:>12} peak\n",
                format_bytes(*current),
                format_bytes(*peak)
            ));
        }
        out.push('\n');
    }
    if let Some(profile) = &snapshot.profile {
        out.push_str(profile);
        out.push('\n');
    }
    let t = &snapshot.tracking;
    out.push_str(&format!(
        "process heap (TrackingAllocator<mimalloc>): {} live, {} peak, {} allocations, {} frees, {} live samples\n",
        format_bytes(t.allocated.current_bytes),
        format_bytes(t.allocated.peak_bytes),
        t.alloc_count,
        t.free_count,
        t.live_samples
    ));
    let machine = system_json();
    if let Some(process) = machine["process"].as_object() {
        out.push_str(&format!(
            "process: rss {}, peak rss {}\n",
            format_bytes(process["rss_bytes"].as_u64().unwrap_or(0)),
            format_bytes(process["peak_rss_bytes"].as_u64().unwrap_or(0))
        ));
    }
    if let Some(system) = machine["system"].as_object() {
        out.push_str(&format!(
            "system: {} available of {}\n",
            format_bytes(system["available_bytes"].as_u64().unwrap_or(0)),
            format_bytes(system["total_bytes"].as_u64().unwrap_or(0))
        ));
    }
    if let Some(cgroup) = machine["cgroup"].as_object() {
        out.push_str(&format!(
            "cgroup: {} used, limit {}\n",
            format_bytes(cgroup["current_bytes"].as_u64().unwrap_or(0)),
            cgroup["max_bytes"]
                .as_u64()
                .map_or_else(|| "none".to_owned(), format_bytes)
        ));
    }
    out.push_str(&format!(
        "memory pressure: {}\n",
        machine["pressure"].as_str().unwrap_or("unknown")
    ));
    out
}
