//! The seeded world's raw workload through the public `RawClient`: the
//! same operation mix ([`crate::world`]'s generator), run by several
//! clients on the simulated platform under the seed's faults, and checked
//! by the same per-key linearizability checker.
//!
//! What differs from the core-level world: the driver runs the operations
//! (its retries, request collapsing, TSO and store-refresh tasks), and the
//! RPCs are out of sight, so the history is less precise. Every write may
//! have been applied more than once ([`MAX_SILENT_COPIES`]) and up to one
//! `read_timeout_medium` after it returned (the last RPC it sent before
//! returning expires by then, and the simulated stores refuse expired
//! requests).
//!
//! [`MAX_SILENT_COPIES`]: crate::world::linearizability::MAX_SILENT_COPIES

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tikv_core::config::BackoffBudgets;
use tikv_core::key::{Key, KeyRange, KvPair};
use tikv_core::rng::Rng;
use tikv_core::time::{Duration, Instant};

use super::{Error, RawClient, Sim, SimConfig, SimFailure, SimReport, simulate};
use crate::world::history::{
    Entry, History, KeyId, OkValue, OpKind, Outcome, Val, key_bytes, parse_key, parse_value,
    value_bytes,
};
use crate::world::linearizability::{self, MAX_SILENT_COPIES};
use crate::world::{QUIET_BOUND, is_definite, workload};

/// What a passing run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawWorldStats {
    /// Operations run (including the reads after the heal).
    pub ops: usize,
    /// Successful, failed and undetermined operations.
    pub outcomes: (usize, usize, usize),
    /// Keys whose linearizability search was cut off.
    pub unknown_keys: usize,
}

/// The run's shared record: the history and the generator choosing ops.
struct Record {
    rng: Rng,
    history: History,
    next_value: Val,
    recent: Vec<(KeyId, Val)>,
}

/// Runs the raw workload with `seed` through the public client and checks
/// it; a violation fails the run (its reason lists them).
///
/// # Errors
///
/// The [`SimFailure`] of a run whose history is not linearizable, whose
/// operations after the heal failed, or that failed as any simulation can.
pub fn run_raw_world(seed: u64, config: SimConfig) -> Result<SimReport<RawWorldStats>, SimFailure> {
    simulate(seed, config, move |sim| async move { raw_world(sim).await })
}

async fn raw_world(sim: Sim) -> Result<RawWorldStats, String> {
    let mut rng = Rng::new(sim.seed() ^ 0x7261_7720_776f_726c);
    let keys = rng.gen_range(3, 9) as u32;
    let clients = rng.gen_range(2, 5) as usize;
    let ops = rng.gen_range(6, 20) as usize;
    // Small raw backoff budgets, as the world draws them, make operations
    // give up: that is how failed and undetermined outcomes arise.
    let raw_budget = match rng.gen_range(0, 4) {
        0 | 1 => Duration::from_secs(20),
        2 => Duration::from_millis(rng.gen_range(5, 100)),
        _ => Duration::from_millis(rng.gen_range(100, 3000)),
    };
    let heal_at = sim.heal_at().unwrap_or(Instant::ZERO);
    let think = (heal_at.saturating_duration_since(Instant::ZERO) * 2 / ops as u32)
        .max(Duration::from_millis(10));
    let record = Arc::new(Mutex::new(Record {
        rng,
        history: History::default(),
        next_value: 0,
        recent: Vec::new(),
    }));
    let slack = sim.config().read_timeout_medium;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let raw = connect(&sim, raw_budget).await?;
        let (sim2, record) = (sim.clone(), record.clone());
        tasks.push(sim.spawn(async move {
            for _ in 0..ops {
                let pause = lock(&record).rng.gen_duration(think);
                sim2.sleep(pause).await;
                let kind = {
                    let r = &mut *lock(&record);
                    let kind = workload::pick(&mut r.rng, keys, &mut r.next_value, &r.recent);
                    match &kind {
                        OpKind::Put(k, v) | OpKind::Cas { key: k, new: v, .. } => {
                            r.recent.push((*k, *v));
                        }
                        OpKind::BatchPut(kvs) => r.recent.extend(kvs.iter().copied()),
                        _ => {}
                    }
                    kind
                };
                run_op(&sim2, &raw, &record, c, kind, slack).await;
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    if sim.now() < heal_at {
        sim.sleep_until(heal_at).await;
    }
    // After the heal every client reads every key, and must succeed.
    let quiet_from = sim.now();
    let reader = connect(&sim, Duration::from_secs(20)).await?;
    for k in 0..keys {
        run_op(&sim, &reader, &record, clients, OpKind::Get(k), slack).await;
    }
    // Past the last instant any write could take effect, the final data.
    let last = lock(&record).history.entries.iter().map(|e| e.effect_until).max();
    if let Some(last) = last {
        sim.sleep_until(last + Duration::from_millis(1)).await;
    }
    let at = sim.now();
    let mut finals: BTreeMap<KeyId, Val> = BTreeMap::new();
    let mut violations = Vec::new();
    for (k, v) in sim.cluster().raw_snapshot("default") {
        match parse_key(&k) {
            Some(k) if k < keys => drop(finals.insert(k, parse_value(&v))),
            _ => violations.push(format!("final state: unexpected key {k:?}")),
        }
    }
    let record = lock(&record);
    let history = &record.history;
    for e in &history.entries {
        let quiet = e.invoke >= quiet_from;
        let took = e.end.map(|end| end.saturating_duration_since(e.invoke));
        if quiet && (!matches!(e.outcome, Outcome::Ok(_)) || took > Some(QUIET_BOUND)) {
            violations.push(format!(
                "liveness: op{} ({}) after the heal ended {:?} after {took:?}",
                e.id, e.kind, e.outcome
            ));
        }
    }
    let per_key = linearizability::project(history, Some((&finals, at, keys)));
    let verdict = linearizability::check(&per_key);
    for (_, why) in verdict.violations {
        violations.push(format!("linearizability: {why}"));
    }
    if !violations.is_empty() {
        return Err(violations.join("\n"));
    }
    let (ok, failed, undetermined, _) = history.counts();
    Ok(RawWorldStats {
        ops: history.entries.len(),
        outcomes: (ok, failed, undetermined),
        unknown_keys: verdict.unknown.len(),
    })
}

fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client in atomic mode (CAS is linearizable with every write); the
/// connection is retried while PD is out of reach.
async fn connect(sim: &Sim, raw_budget: Duration) -> Result<RawClient, String> {
    for _ in 0..100 {
        let mut budgets = BackoffBudgets::default();
        budgets.raw = raw_budget;
        match RawClient::connect_with_config(sim.config().with_backoff_budgets(budgets)).await {
            Ok(raw) => return Ok(raw.with_atomic_for_cas()),
            Err(_) => sim.sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    Err("no client could connect in 100 attempts".into())
}

fn key(k: KeyId) -> Key {
    Key::from(key_bytes(k))
}

/// Runs `kind` on `raw` as client `c` and records it.
async fn run_op(
    sim: &Sim,
    raw: &RawClient,
    record: &Mutex<Record>,
    c: usize,
    kind: OpKind,
    slack: Duration,
) {
    let entry = lock(record).history.invoke(c, kind.clone(), sim.now());
    let result: Result<OkValue, Error> = match &kind {
        OpKind::Get(k) => {
            raw.get(key(*k)).await.map(|v| OkValue::Value(v.map(|v| parse_value(&v))))
        }
        OpKind::BatchGet(ks) => {
            raw.batch_get(ks.iter().map(|k| key(*k))).await.map(workload::pairs)
        }
        OpKind::Put(k, v) => raw.put(key(*k), value_bytes(*v)).await.map(|()| OkValue::Unit),
        OpKind::BatchPut(kvs) => {
            let pairs = kvs.iter().map(|&(k, v)| KvPair::new(key(k), value_bytes(v)));
            raw.batch_put(pairs).await.map(|()| OkValue::Unit)
        }
        OpKind::Delete(k) => raw.delete(key(*k)).await.map(|()| OkValue::Unit),
        OpKind::Cas { key: k, expected, new } => raw
            .compare_and_swap(key(*k), expected.map(|v| value_bytes(v).into()), value_bytes(*new))
            .await
            .map(|o| OkValue::Cas {
                previous: o.previous.map(|v| parse_value(&v)),
                succeeded: o.succeeded,
            }),
        OpKind::Scan { start, end, limit } => {
            raw.scan(KeyRange::new(key(*start), key(*end)), *limit).await.map(workload::pairs)
        }
    };
    let now = sim.now();
    let r = &mut *lock(record);
    let e: &mut Entry = &mut r.history.entries[entry];
    e.end = Some(now);
    if kind.is_write() {
        e.unacked_writes = MAX_SILENT_COPIES;
        e.effect_until = now + slack;
    }
    e.outcome = match result {
        Ok(v) => Outcome::Ok(v),
        Err(err) if is_definite(&err) => Outcome::Fail(err.to_string()),
        Err(err) => Outcome::Undetermined(err.to_string()),
    };
}
