//! The seeded world's transactional workload through the public
//! `TransactionClient`: the same transactions (bank transfers and reads,
//! list appends, register puts/inserts/deletes, with 2PC, async commit or
//! 1PC as drawn), run by several clients on the simulated platform under
//! the seed's faults, and checked by the same checkers: snapshot
//! isolation against the model rebuilt from the cluster's commit records,
//! honest outcomes, the bank total and Elle's list-append anomalies.
//!
//! Each client runs in a process of its own ([`Sim::spawn_process`]); as
//! in the core-level world, with the seed's crash rate a client crashes
//! while one of its transactions commits (a drawn delay after the commit
//! began: during prewrite, at the commit point, among the secondaries, or
//! just after), its background tasks (TSO, store refresh, secondary
//! commits) dying with it; the transaction is undetermined and a fresh
//! client with empty caches takes over the rest of its work.
//!
//! What differs from the core-level world: the driver runs the
//! transactions (its TSO task, background secondaries and cleanups,
//! store refresh), reads of a transaction's own writes are not recorded,
//! and the commit mode that went through is not visible (outcomes carry
//! none).
//!
//! [`run_gc_world`] adds a GC client to the transactional workload: GC
//! rounds, old-ts readers and `delete_range` through the public client,
//! checked by the core-level GC world's checkers as well.
//!
//! [`run_pipelined_world`] runs pipelined DML transactions
//! (`TransactionClient::begin_pipelined`, several generations each) beside
//! the transactional workload, clients crashing mid-flush, in the commit
//! and while the flushed range is resolved, checked by the core-level
//! pipelined world's atomicity check as well ([`pipelined`]).
//!
//! [`run_pess_world`] runs the pessimistic world's workload the same way
//! (locked transfers and counter increments through `lock_keys` with the
//! drawn wait policy, fair locking for some increments, bank reads), each
//! client's lock requests waiting in the stores' lock manager in virtual
//! time, checked by the pessimistic world's checkers: snapshot isolation
//! with the pessimistic guarantee (a value read under a lock is the one
//! committed at the lock's `for_update_ts`, taken from
//! `Transaction::for_update_timestamp` after the call, or the write fair
//! locking took it over), the bank total, no lost or phantom counter
//! increment, one victim per deadlock. A drawn crash strikes either during
//! the commit, as in the transactional world, or while the client holds
//! pessimistic locks before committing (a drawn delay after its first
//! lock call returned: among its later lock calls and their waits, or in
//! its commit); the others' lock calls then wait for those locks until
//! their TTL runs out, and resolve them. Every transaction must end within
//! the core-level world's liveness bound (an abandoned lock never blocks
//! progress for good), and the audit's sweep finds what no one met.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tikv_core::key::{Key, KeyRange};
use tikv_core::rng::Rng;
use tikv_core::time::{Duration, Instant};

use super::exec::GcChecks;
use super::{
    Error, Sim, SimConfig, SimFailure, SimReport, Transaction, TransactionClient, simulate,
};
use crate::WriteKind;
use crate::world::GcStats;
use crate::world::pess_workload;
use crate::world::pipelined_workload::{self, PipeSpec, PipeStats};
use crate::world::txn_history::{
    LockedRead, PessKind, ReadMethod, TxnHistory, TxnKeys, TxnKind, TxnOutcome, TxnRun, TxnWrite,
    account, balance_value, counter_value, parse_balance, parse_counter, register,
};
use crate::world::txn_workload::{self, BufferOp, TxnSpec};
use crate::world::{
    TxnParams, elle, elle_history, pessimistic, scaled_budgets, si, txn_liveness_bound,
};
use tikv_core::txn::commit::CommitOptions;
use tikv_driver::{LockOptions, TransactionOptions};

mod gc;
mod pipelined;

/// A deliberate flaw, for tests to show the checkers catch it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum Flaw {
    /// (pipelined) A flaw of the pipelined clients.
    Pipelined(pipelined::PipeFlaw),
    /// (GC world) A flaw of the GC client.
    Gc(gc::GcFlaw),
}

/// Which workload a run draws its transactions from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum World {
    /// The transactional world's (`txn_workload`).
    Txn,
    /// The pessimistic world's (`pess_workload`).
    Pess,
    /// The transactional world's, with a GC client beside it ([`gc`]).
    Gc,
    /// The pipelined world's (`pipelined_workload`): the transactional
    /// world's with pipelined transactions beside them ([`pipelined`]).
    Pipelined,
}

/// What a passing run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnWorldStats {
    /// Transactions run (including the final full read).
    pub txns: usize,
    /// Committed, failed and undetermined transactions.
    pub outcomes: (usize, usize, usize),
    /// Clients crashed (each then replaced by a fresh one).
    pub crashes: usize,
    /// (pessimistic) Transactions that failed as a deadlock's victim.
    pub deadlock_victims: usize,
    /// (GC world) The GC client's work.
    pub gc: GcStats,
    /// (pipelined) What the pipelined transactions did; a crash after the
    /// commit returned counts as during the range's resolution.
    pub pipelined: PipeStats,
    /// (pessimistic) Transactions whose client crashed while they held
    /// pessimistic locks, before their commit began: those whose locks
    /// were gone before the audit's sweep (other clients' lock calls and
    /// reads resolved them once their TTL ran out), and those with locks
    /// left for the sweep (on keys nobody locked again).
    pub crashed_lock_holders: (usize, usize),
}

/// Where a drawn crash strikes a transaction.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// (pessimistic) A lock call returned: the client holds pessimistic
    /// locks and has not begun to commit.
    Locked,
    /// (pipelined) A generation was handed to a flush: the client crashes
    /// among the flushes and later writes, or in the commit.
    Flushed,
    /// Its commit began.
    Committing,
    /// (pipelined) Its commit returned: the driver resolves the flushed
    /// range in the background.
    Committed,
}

/// Whether a transaction goes on after a step.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[must_use]
pub(super) enum Halt {
    Go,
    /// Its process crashed in the step: the task is dropped when it
    /// yields, and must send nothing more before.
    Crashed,
}

impl Halt {
    async fn wait_if_crashed(self) {
        if self == Halt::Crashed {
            std::future::pending::<()>().await;
        }
    }
}

/// A crash drawn for one transaction: `after` this long from the first
/// time it reaches `stage`, its process crashes.
#[derive(Copy, Clone, Debug)]
struct CrashPlan {
    stage: Stage,
    after: Duration,
}

/// The transactional clients' shared state: their random source, the
/// transactions left to run and the history the checkers read.
pub(super) struct Record {
    world: World,
    rng: Rng,
    pub(super) params: TxnParams,
    pub(super) history: TxnHistory,
    next_value: u32,
    /// Transactions each client finished (a replacement goes on from there).
    done: Vec<usize>,
    pub(super) crashes: usize,
    /// Transactions per client, and the longest pause before each.
    txns_each: usize,
    think: Duration,
    /// (GC world) The GC checks and how long after its end a
    /// transaction's requests may still land.
    gc: Option<(Arc<GcChecks>, Duration)>,
    /// (GC world) The GC client stops after its task in flight.
    gc_stop: bool,
    /// (pipelined) The pipelined transactions' records.
    pipe: pipelined::PipeState,
    flaw: Option<Flaw>,
}

impl Record {
    /// The state of `clients` clients of `world`, each to run `txns_each`
    /// transactions drawn with `params`, pausing up to `think` before each.
    pub(super) fn new(
        world: World,
        rng: Rng,
        params: TxnParams,
        clients: usize,
        txns_each: usize,
        think: Duration,
    ) -> Record {
        Record {
            world,
            rng,
            params,
            history: TxnHistory::default(),
            next_value: 0,
            done: vec![0; clients],
            crashes: 0,
            txns_each,
            think,
            gc: None,
            gc_stop: false,
            pipe: pipelined::PipeState::default(),
            flaw: None,
        }
    }
}

/// Runs the transactional workload with `seed` through the public client
/// and checks it; a violation fails the run (its reason lists them).
///
/// # Errors
///
/// The [`SimFailure`] of a run a checker rejects, whose final read fails,
/// or that failed as any simulation can.
pub fn run_txn_world(seed: u64, config: SimConfig) -> Result<SimReport<TxnWorldStats>, SimFailure> {
    run_world(seed, config, World::Txn, None)
}

fn run_world(
    seed: u64,
    config: SimConfig,
    world: World,
    flaw: Option<Flaw>,
) -> Result<SimReport<TxnWorldStats>, SimFailure> {
    simulate(seed, config, move |sim| async move { txn_world(sim, world, flaw).await })
}

/// Runs the pessimistic workload with `seed` through the public client
/// and checks it (see the module docs); a violation fails the run.
///
/// # Errors
///
/// As [`run_txn_world`].
pub fn run_pess_world(
    seed: u64,
    config: SimConfig,
) -> Result<SimReport<TxnWorldStats>, SimFailure> {
    run_world(seed, config, World::Pess, None)
}

/// Runs the GC world with `seed` through the public client and checks it:
/// the transactional workload (its clients crashing as drawn) beside a GC
/// client running GC rounds (`TransactionClient::gc`) at safe points below
/// every live transaction, readers at old timestamps (refused below the txn
/// safe point, else served exactly the committed data) and `delete_range`
/// over a seeded scratch range, checked by the transactional world's
/// checkers and the core-level GC world's (every collection keeps the reads
/// at or above its safe point and every lock; no lock at or below a
/// completed round's safe point survives it). A violation fails the run.
///
/// # Errors
///
/// As [`run_txn_world`].
pub fn run_gc_world(seed: u64, config: SimConfig) -> Result<SimReport<TxnWorldStats>, SimFailure> {
    run_world(seed, config, World::Gc, None)
}

/// Runs the pipelined world with `seed` through the public client and
/// checks it: pipelined transactions (`TransactionClient::begin_pipelined`
/// with tiny flush thresholds, so each flushes several generations; they
/// read their writes back, and commit, roll back or are dropped) beside
/// the transactional workload, clients crashing mid-flush, in the commit
/// and while the flushed range is resolved, checked by the transactional
/// world's checkers and the core-level pipelined world's atomicity check
/// (all of a pipelined transaction's writes committed at one ts or none;
/// no reader sees some without the others). A violation fails the run.
///
/// # Errors
///
/// As [`run_txn_world`].
pub fn run_pipelined_world(
    seed: u64,
    config: SimConfig,
) -> Result<SimReport<TxnWorldStats>, SimFailure> {
    run_world(seed, config, World::Pipelined, None)
}

async fn txn_world(sim: Sim, world: World, flaw: Option<Flaw>) -> Result<TxnWorldStats, String> {
    let mut rng = Rng::new(sim.seed() ^ 0x7478_6e20_776f_726c);
    // The pessimistic world's keys (as `Plan::draw_pess`): accounts and
    // counters, no lists.
    let mut keys = match world {
        World::Txn | World::Gc | World::Pipelined => TxnKeys {
            accounts: rng.gen_range(2, 6) as u32,
            lists: rng.gen_range(1, 5) as u32,
            registers: rng.gen_range(0, 4) as u32,
        },
        World::Pess => TxnKeys {
            accounts: rng.gen_range(2, 5) as u32,
            lists: 0,
            registers: rng.gen_range(1, 4) as u32,
        },
    };
    let mut params = TxnParams {
        keys,
        crash_permille: match rng.gen_range(0, 4) {
            0 => 0,
            1 => rng.gen_range(1, 100),
            _ => rng.gen_range(100, 400),
        },
        async_commit_permille: rng.gen_range(0, 700),
        one_pc_permille: rng.gen_range(0, 600),
        budget_permille: match rng.gen_range(0, 4) {
            0 | 1 => 1000,
            2 => rng.gen_range(5, 50),
            _ => rng.gen_range(50, 500),
        },
    };
    if world == World::Pipelined {
        // As the core-level pipelined world's plan: registers for the
        // generations to spread over, and crashes often enough to land in
        // each stage.
        keys.registers = keys.registers.max(3 + rng.gen_range(0, 3) as u32);
        params.keys = keys;
        params.crash_permille = params.crash_permille.max(rng.gen_range(50, 300));
    }
    let clients = rng.gen_range(2, 5) as usize;
    let txns_each = match world {
        // A pipelined transaction costs several of the others.
        World::Pipelined => rng.gen_range(3, 8) as usize,
        _ => rng.gen_range(4, 16) as usize,
    };
    let heal_at = sim.heal_at().unwrap_or(Instant::ZERO);
    let think = (heal_at.saturating_duration_since(Instant::ZERO) * 2 / txns_each as u32)
        .max(Duration::from_millis(10));
    let budgets = scaled_budgets(params.budget_permille);
    let record = Arc::new(Mutex::new(Record {
        flaw,
        ..Record::new(world, rng, params, clients, txns_each, think)
    }));
    let gc_client = (world == World::Gc).then(|| gc::start(&sim, &record, &keys));
    if world == World::Pipelined {
        pipelined::split(&sim);
    }
    for t in spawn_clients(&sim, &record, clients, &budgets) {
        t.await?;
    }
    if sim.now() < heal_at {
        sim.sleep_until(heal_at).await;
    }
    // The GC client finishes its task in flight and stops before the audit.
    if let Some(gc_client) = gc_client {
        lock(&record).gc_stop = true;
        gc_client.await?;
    }
    let cluster = sim.cluster();
    let (auditor, audit) = audit(&sim, &record, clients).await?;
    let mut violations = Vec::new();
    // Clients that crashed holding pessimistic locks before committing:
    // are their locks gone already (resolved by the others), or left for
    // the sweep below?
    let crashed_lock_holders = {
        let left = cluster.locks();
        let r = lock(&record);
        let holders = r
            .history
            .entries
            .iter()
            .filter(|e| e.crashed && !e.run.locked.is_empty() && e.run.writes.is_empty());
        holders.fold((0, 0), |(resolved, swept), e| {
            let ts = e.run.start_ts.unwrap_or_default();
            if left.iter().any(|l| l.lock_version == ts) {
                (resolved, swept + 1)
            } else {
                (resolved + 1, swept)
            }
        })
    };
    violations.extend(sweep_locks_left(&auditor, &cluster).await);
    let record = lock(&record);
    let history = &record.history;
    if !matches!(history.entries[audit].outcome, TxnOutcome::Committed { .. }) {
        violations
            .push(format!("liveness: the audit read ended {:?}", history.entries[audit].outcome));
    }
    // No lock a crashed client abandoned holds anyone up for longer than
    // its TTL allows: every transaction ends within the core-level world's
    // bound.
    let mut bound = txn_liveness_bound(&record.params, world == World::Pess);
    if world == World::Pipelined {
        bound += pipelined_workload::liveness_extra();
    }
    for e in &history.entries {
        let took = e.end.unwrap_or(e.invoke).saturating_duration_since(e.invoke);
        if took > bound {
            violations.push(format!(
                "liveness: txn {} ({}) took {took:?} (bound {bound:?})",
                e.id, e.kind
            ));
        }
    }
    let gc_checks = record.gc.as_ref().map(|(checks, _)| checks.clone());
    let mut gc_stats = GcStats::default();
    if let Some(checks) = &gc_checks {
        let g = &mut *checks.lock();
        g.world.finish(&cluster, &mut g.violations);
        violations.append(&mut g.violations);
        gc_stats = g.stats.clone();
    }
    let fates = commit_fates(history, &cluster, gc_checks.as_deref());
    let final_data = final_data(&cluster);
    violations
        .extend(si::check(history, &fates, &final_data).into_iter().map(|v| format!("si: {v}")));
    violations.extend(si::check_bank(history, &keys.account_keys(), &final_data));
    let pipelined = record.pipe.finish(history, &fates, &mut violations);
    match world {
        World::Txn | World::Gc | World::Pipelined => violations
            .extend(elle::check(&elle_history(history)).into_iter().map(|a| format!("elle: {a}"))),
        World::Pess => {
            let counters: Vec<String> = (0..keys.registers).map(register).collect();
            violations.extend(
                pessimistic::check_counters(history, &fates, &counters, &final_data)
                    .into_iter()
                    .map(|v| format!("counters: {v}")),
            );
            violations.extend(
                pessimistic::check_deadlocks(history).into_iter().map(|v| format!("deadlock: {v}")),
            );
        }
    }
    if !violations.is_empty() {
        return Err(violations.join("\n"));
    }
    let (ok, failed, undetermined, _) = history.counts();
    Ok(TxnWorldStats {
        txns: history.entries.len(),
        outcomes: (ok, failed, undetermined),
        crashes: record.crashes,
        deadlock_victims: history.entries.iter().filter(|e| !e.run.deadlock.is_empty()).count(),
        crashed_lock_holders,
        gc: gc_stats,
        pipelined,
    })
}

/// Starts `clients` client supervisors: each runs its client's
/// transactions in a process; when that crashes, its transaction in flight
/// is undetermined and a new process goes on with the rest. The tasks end
/// with the clients' work.
pub(super) fn spawn_clients(
    sim: &Sim,
    record: &Arc<Mutex<Record>>,
    clients: usize,
    budgets: &tikv_core::config::BackoffBudgets,
) -> Vec<futures::future::RemoteHandle<Result<(), String>>> {
    (0..clients)
        .map(|c| {
            let (sim2, record, budgets) = (sim.clone(), record.clone(), budgets.clone());
            sim.spawn(async move {
                loop {
                    let worker = client_process(sim2.clone(), record.clone(), c, budgets.clone());
                    let process = sim2.spawn_process(worker);
                    match process.join().await {
                        Some(result) => return result,
                        None => crashed(&sim2, &record, c),
                    }
                }
            })
        })
        .collect()
}

/// The audit: past every lock's TTL, a fresh client with client-go's
/// budgets reads every key (resolving what failed transactions left) as
/// client number `c`. Returns the auditor and the read's history entry,
/// which must have committed.
pub(super) async fn audit(
    sim: &Sim,
    record: &Arc<Mutex<Record>>,
    c: usize,
) -> Result<(TransactionClient, usize), String> {
    let expire = locks_expire_at(sim);
    if expire > sim.now() {
        sim.sleep_until(expire).await;
    }
    let (world, keys) = {
        let r = lock(record);
        (r.world, r.params.keys)
    };
    let auditor = connect(sim, world, None).await?;
    let full = {
        let r = &mut *lock(record);
        TxnSpec {
            kind: TxnKind::FullRead,
            read_method: txn_workload::pick_read_method(&mut r.rng),
            opts: Default::default(),
        }
    };
    let audit = run_txn(sim, &auditor, record, c, full, None, &keys, None).await;
    Ok((auditor, audit))
}

/// Each writing transaction's fate per key, from the cluster's commit
/// records (or, for records GC collected, what `gc` saw before).
pub(super) fn commit_fates(
    history: &TxnHistory,
    cluster: &crate::Cluster,
    gc: Option<&GcChecks>,
) -> si::Fates {
    let mut fates = si::Fates::new();
    for e in &history.entries {
        let Some(start_ts) = e.run.start_ts else { continue };
        if e.run.writes.is_empty() {
            continue;
        }
        let per_key = e
            .run
            .writes
            .iter()
            .map(|(k, _)| {
                let fate = match cluster.commit_record(k.as_bytes(), start_ts) {
                    Some(r) if r.kind == WriteKind::Rollback => si::KeyFate::RolledBack,
                    Some(r) => si::KeyFate::Committed { commit_ts: r.commit_ts, kind: r.kind },
                    None => gc
                        .and_then(|g| g.lock().world.seen_fate(k.as_bytes(), start_ts))
                        .unwrap_or(si::KeyFate::Absent),
                };
                (k.clone(), fate)
            })
            .collect();
        fates.insert(e.id, per_key);
    }
    fates
}

/// The cluster's latest committed data, as text.
pub(super) fn final_data(cluster: &crate::Cluster) -> BTreeMap<String, String> {
    cluster
        .mvcc_snapshot(u64::MAX)
        .into_iter()
        .map(|(k, v)| {
            (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned())
        })
        .collect()
}

/// Client `c`'s work in its process: a client of its own, then the
/// transactions `c` has left; with the seed's crash rate, its process
/// crashes during a transaction's commit or (pessimistic) while it holds
/// the transaction's locks.
async fn client_process(
    sim: Sim,
    record: Arc<Mutex<Record>>,
    c: usize,
    budgets: tikv_core::config::BackoffBudgets,
) -> Result<(), String> {
    let world = lock(&record).world;
    let client = connect(&sim, world, Some(budgets)).await?;
    let keys = lock(&record).params.keys;
    let (txns_each, think) = {
        let r = lock(&record);
        (r.txns_each, r.think)
    };
    while lock(&record).done[c] < txns_each {
        let pause = lock(&record).rng.gen_duration(think);
        sim.sleep(pause).await;
        let (spec, pipe, crash) = {
            let r = &mut *lock(&record);
            let (spec, pipe) = match world {
                World::Txn | World::Gc => {
                    (txn_workload::pick(&mut r.rng, &r.params, &mut r.next_value), None)
                }
                World::Pess => (pess_workload::pick(&mut r.rng, &r.params), None),
                World::Pipelined => {
                    match pipelined_workload::pick(&mut r.rng, &r.params, &mut r.next_value) {
                        pipelined_workload::Pick::Normal(spec) => (spec, None),
                        pipelined_workload::Pick::Pipelined(spec, pipe) => {
                            let ending = pipelined::draw_ending(&mut r.rng);
                            (spec, Some((pipe, ending)))
                        }
                    }
                }
            };
            let crash = r.rng.gen_ratio(r.params.crash_permille, 1000);
            // A pessimistic client may also die holding its locks before
            // committing (the core-level world's crash from the first lock
            // on): the delay then lands among its later lock calls, their
            // waits, or its commit. A pipelined transaction's client dies
            // mid-flush, in the commit, or after it while the flushed range
            // is resolved.
            let stage = if crash && world == World::Pess && r.rng.gen_ratio(1, 2) {
                Stage::Locked
            } else if crash && pipe.is_some() {
                [Stage::Flushed, Stage::Committing, Stage::Committed]
                    [r.rng.gen_range(0, 3) as usize]
            } else {
                Stage::Committing
            };
            // Half of the crashes holding locks strike at once: between a
            // lock call and the next step, nothing more sent.
            let at_once = stage == Stage::Locked && r.rng.gen_ratio(1, 2);
            let plan = crash.then(|| {
                let after = match stage {
                    _ if at_once => 0,
                    // The resolution's requests are on the wire within a
                    // round trip of the commit's return: at once, or
                    // among its first answers.
                    Stage::Committed if r.rng.gen_ratio(1, 2) => 0,
                    Stage::Committed => r.rng.gen_range(0, 3_000),
                    // A pipelined commit (the last flush, a timestamp, the
                    // primary's commit) takes a few round trips too.
                    Stage::Committing if pipe.is_some() => r.rng.gen_range(0, 3_000),
                    _ => r.rng.gen_range(0, 40_000),
                };
                CrashPlan { stage, after: Duration::from_micros(after) }
            });
            (spec, pipe, plan)
        };
        run_txn(&sim, &client, &record, c, spec, pipe, &keys, crash).await;
        lock(&record).done[c] += 1;
    }
    Ok(())
}

/// Client `c`'s process crashed: its transaction in flight (if any) is
/// undetermined.
fn crashed(sim: &Sim, record: &Mutex<Record>, c: usize) {
    let now = sim.now();
    let r = &mut *lock(record);
    r.crashes += 1;
    for e in r.history.entries.iter_mut().filter(|e| e.client == c) {
        if matches!(e.outcome, TxnOutcome::Pending) {
            e.crashed = true;
            e.end = Some(now);
            e.outcome = TxnOutcome::Undetermined("the client crashed".into());
            // Its attempt is over either way: the replacement goes on.
            r.done[c] += 1;
        }
    }
    sim.log(format!("client c{c} crashed; a new one takes over"));
}

pub(super) fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(|e| e.into_inner())
}

/// The instant after which every lock in the cluster has expired (TiKV's
/// rule: `physical(lock_ts) + ttl < physical(current_ts)`).
pub(super) fn locks_expire_at(sim: &Sim) -> Instant {
    let cluster = sim.cluster();
    let base = cluster.config().tso_base_ms;
    cluster
        .locks()
        .iter()
        .map(|l| {
            let expiry_ms = (l.lock_version >> 18).saturating_add(l.lock_ttl).saturating_add(1);
            Instant::from_millis(expiry_ms.saturating_sub(base))
        })
        .fold(sim.now(), Instant::max)
}

/// A transactional client (with `budgets`, else client-go's), retrying
/// the connection while PD is out of reach.
pub(super) async fn connect(
    sim: &Sim,
    world: World,
    budgets: Option<tikv_core::config::BackoffBudgets>,
) -> Result<TransactionClient, String> {
    for _ in 0..100 {
        let mut config = sim.config();
        if world == World::Pess {
            // As the core-level pessimistic world: a lock request may wait
            // in TiKV up to its `wait-for-lock-timeout` (1 s), so its
            // answer comes from TiKV rather than from the call's deadline.
            config = config.with_read_timeout_short(Duration::from_secs(2));
        }
        if let Some(b) = &budgets {
            config = config.with_backoff_budgets(b.clone());
        }
        match TransactionClient::connect_with_config(config).await {
            Ok(client) => return Ok(client),
            Err(_) => sim.sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    Err("no client could connect in 100 attempts".into())
}

/// Runs one transaction as client `c` (pipelined as `pipe` says) and
/// records it; returns its entry. With `crash`, the process running it
/// crashes as planned.
#[allow(clippy::too_many_arguments)]
async fn run_txn(
    sim: &Sim,
    client: &TransactionClient,
    record: &Arc<Mutex<Record>>,
    c: usize,
    spec: TxnSpec,
    pipe: Option<(PipeSpec, pipelined::Ending)>,
    keys: &TxnKeys,
    crash: Option<CrashPlan>,
) -> usize {
    let id = {
        let r = &mut *lock(record);
        let id = r.history.entries.len();
        r.history.entries.push(spec.entry(id, c, sim.now()));
        id
    };
    let mut run = TxnRun::default();
    let mut crash = crash;
    let progress = |stage: Stage, run: &TxnRun| {
        // What a crash from here on leaves for the checkers.
        lock(record).history.entries[id].run = run.clone();
        if let Some(plan) = crash.take_if(|p| p.stage == stage)
            && let Some(process) = sim.current_process()
        {
            if stage == Stage::Locked && plan.after.is_zero() {
                sim.log(format!("client c{c} crashes holding its pessimistic locks"));
                sim.crash(process);
                return Halt::Crashed;
            }
            let (crasher, struck) = (sim.clone(), record.clone());
            let when = match stage {
                Stage::Locked => "after its first pessimistic lock",
                Stage::Flushed => "after its first generation was handed to a flush",
                Stage::Committing => "into this commit",
                Stage::Committed => "after this commit returned",
            };
            sim.log(format!("client c{c} will crash {:?} {when}", plan.after));
            sim.spawn(async move {
                crasher.sleep(plan.after).await;
                let left = lock(&struck).pipe.crash_struck(id, &crasher.cluster());
                if left > 0 {
                    crasher.log(format!(
                        "the crash strikes txn{id} mid-resolution: its primary committed, \
                         {left} flushed locks left"
                    ));
                }
                crasher.crash(process);
            })
            .forget();
        }
        Halt::Go
    };
    let outcome = match pipe {
        Some((pipe, ending)) => {
            pipelined::transact(sim, client, record, pipe, ending, id, &mut run, progress).await
        }
        None => transact(client, spec, keys, id, &mut run, progress).await,
    };
    let r = &mut *lock(record);
    let e = &mut r.history.entries[id];
    e.end = Some(sim.now());
    e.run = run;
    e.outcome = outcome;
    id
}

/// The audit's last step: resolves every lock left in the key space at a
/// fresh timestamp (as GC's lock resolution would; locks no read meets,
/// such as a crashed client's `LockKeys` locks, stay otherwise), then
/// reports each lock still there, and a failed sweep, as a liveness
/// violation.
pub(super) async fn sweep_locks_left(
    auditor: &TransactionClient,
    cluster: &crate::Cluster,
) -> Vec<String> {
    let mut violations = Vec::new();
    match auditor.current_timestamp().await {
        Ok(ts) => {
            if let Err(e) = auditor.resolve_locks_for_range(KeyRange::all(), ts).await {
                violations.push(format!("liveness: resolving the locks left failed: {e}"));
            }
        }
        Err(e) => violations.push(format!("liveness: no timestamp for the lock sweep: {e}")),
    }
    for l in cluster.locks() {
        violations.push(format!(
            "liveness: a lock of txn {} on {:?} was never resolved",
            l.lock_version,
            String::from_utf8_lossy(&l.key)
        ));
    }
    violations
}

pub(super) async fn transact(
    client: &TransactionClient,
    mut spec: TxnSpec,
    keys: &TxnKeys,
    id: usize,
    run: &mut TxnRun,
    mut progress: impl FnMut(Stage, &TxnRun) -> Halt,
) -> TxnOutcome {
    if let TxnKind::Pessimistic(kind) = spec.kind {
        return transact_pessimistic(client, kind, spec.opts, id, run, progress).await;
    }
    let options = TransactionOptions::default().with_commit_options(spec.opts.clone());
    let mut txn = match client.begin_with_options(options).await {
        Ok(txn) => txn,
        // No start ts: nothing was written.
        Err(e) => return TxnOutcome::Failed(e.to_string()),
    };
    let start_ts = txn.start_timestamp().version();
    run.start_ts = Some(start_ts);
    let wanted = txn_workload::read_set(&spec.kind, keys);
    let found = match read(&txn, spec.read_method, &wanted, keys).await {
        Ok(found) => found,
        Err(e) => return TxnOutcome::Failed(e.to_string()),
    };
    run.reads = found.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let writes = txn_workload::plan_writes(&mut spec.kind, &found, id);
    if let TxnKind::Lists { ops, .. } = &spec.kind {
        run.micro = ops.clone();
    }
    run.writes = writes
        .iter()
        .map(|(k, op)| {
            let w = match op {
                BufferOp::Put(v) | BufferOp::Insert(v) => TxnWrite::Put(v.clone()),
                BufferOp::Delete => TxnWrite::Delete,
                BufferOp::Lock => TxnWrite::Lock,
            };
            (k.clone(), w)
        })
        .collect();
    if writes.is_empty() {
        // A read-only transaction "commits" at its start ts.
        let _ = txn.rollback().await;
        return TxnOutcome::Committed { commit_ts: start_ts, mode: None };
    }
    for (k, op) in &writes {
        let buffered = match op {
            BufferOp::Put(v) => txn.put(k.clone(), v.clone()),
            BufferOp::Insert(v) => txn.insert(k.clone(), v.clone()),
            BufferOp::Delete => txn.delete(k.clone()),
            BufferOp::Lock => txn.lock_keys([k.clone()], LockOptions::default()).await.map(drop),
        };
        if let Err(e) = buffered {
            return TxnOutcome::Failed(format!("buffering: {e}"));
        }
    }
    progress(Stage::Committing, run).wait_if_crashed().await;
    match txn.commit().await {
        Ok(ts) => TxnOutcome::Committed { commit_ts: ts.version(), mode: None },
        Err(e) if e.is_undetermined() => TxnOutcome::Undetermined(e.to_string()),
        Err(e) => TxnOutcome::Failed(e.to_string()),
    }
}

/// Reads `wanted` from the transaction's snapshot with `method`; a scan
/// covers (and reports) every key of the run between the first and the
/// last wanted key.
async fn read(
    txn: &Transaction,
    method: ReadMethod,
    wanted: &[String],
    keys: &TxnKeys,
) -> Result<BTreeMap<String, Option<String>>, Error> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut found = BTreeMap::new();
    let (Some(first), Some(last)) = (wanted.first(), wanted.last()) else {
        return Ok(found);
    };
    match method {
        ReadMethod::Get => {
            for k in wanted {
                let v = txn.get(k.clone()).await?;
                found.insert(k.clone(), v.map(|v| text(&v)));
            }
        }
        ReadMethod::BatchGet => {
            for k in wanted {
                found.insert(k.clone(), None);
            }
            for p in txn.batch_get(wanted.iter().cloned()).await? {
                found.insert(text(p.key.as_bytes()), Some(text(&p.value)));
            }
        }
        ReadMethod::Scan | ReadMethod::ScanReverse => {
            let covered: Vec<String> =
                keys.all().into_iter().filter(|k| k >= first && k <= last).collect();
            for k in &covered {
                found.insert(k.clone(), None);
            }
            let range = KeyRange::new(Key::from(first.clone()), Key::from(last.clone()).next_key());
            let limit = covered.len() as u32 + 1;
            let pairs = if method == ReadMethod::Scan {
                txn.scan(range, limit).await?
            } else {
                txn.scan_reverse(range, limit).await?
            };
            for p in pairs {
                found.insert(text(p.key.as_bytes()), Some(text(&p.value)));
            }
        }
    }
    Ok(found)
}

/// One pessimistic transaction through the public API, as the core-level
/// world's `PessProgram` runs it on the machines: its lock calls in order
/// (each `lock_keys` returning the values, waiting as drawn; fair locking
/// for a fair increment), the writes computed from the values read under
/// the locks, then the commit. A failed lock call ends it (dropping the
/// transaction rolls its locks back in the background, as the driver
/// does).
async fn transact_pessimistic(
    client: &TransactionClient,
    kind: PessKind,
    opts: CommitOptions,
    id: usize,
    run: &mut TxnRun,
    mut progress: impl FnMut(Stage, &TxnRun) -> Halt,
) -> TxnOutcome {
    let options = TransactionOptions::default().with_pessimistic().with_commit_options(opts);
    let mut txn = match client.begin_with_options(options).await {
        Ok(txn) => txn,
        Err(e) => return TxnOutcome::Failed(e.to_string()),
    };
    let start_ts = txn.start_timestamp().version();
    run.start_ts = Some(start_ts);
    let fair = matches!(kind, PessKind::Increment { fair: true, .. });
    if fair && let Err(e) = txn.start_fair_locking() {
        return TxnOutcome::Failed(e.to_string());
    }
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut values: BTreeMap<String, Option<String>> = BTreeMap::new();
    for call in kind.lock_calls() {
        let options = LockOptions::new().return_values().with_wait(kind.wait());
        let got = match txn.lock_keys(call.clone(), options).await {
            Ok(got) => got,
            Err(e) => {
                if let Error::Deadlock { wait_chain, .. } = &e {
                    run.deadlock =
                        wait_chain.iter().map(|w| (w.txn, w.wait_for_txn, w.key_hash)).collect();
                }
                return TxnOutcome::Failed(e.to_string());
            }
        };
        // Calls are sequential and each locks at a fresh timestamp: the
        // newest `for_update_ts` is this call's.
        let for_update_ts = txn.for_update_timestamp();
        for key in call {
            let (read, conflict_ts) = match got.iter().find(|(k, _)| k.as_bytes() == key.as_bytes())
            {
                Some((_, v)) => (v.exists.then(|| text(&v.value)), v.locked_with_conflict_ts),
                None => (None, tikv_core::pd::Timestamp::ZERO),
            };
            // Locked over a newer write: the value is as of that write,
            // and the lock counts from its commit ts.
            run.locked.push(LockedRead {
                key: key.clone(),
                for_update_ts: for_update_ts.max(conflict_ts).version(),
                value: read.clone(),
                with_conflict: conflict_ts > for_update_ts,
            });
            values.insert(key, read);
        }
        progress(Stage::Locked, run).wait_if_crashed().await;
    }
    if fair && let Err(e) = txn.done_fair_locking() {
        return TxnOutcome::Failed(e.to_string());
    }
    let read = |k: &str| values.get(k).cloned().flatten();
    let mut puts: BTreeMap<String, String> = BTreeMap::new();
    match &kind {
        PessKind::Transfer { from, to, amount, .. } => {
            let (a, b) = (account(*from), account(*to));
            if let (Some(x), Some(y)) =
                (parse_balance(read(&a).as_deref()), parse_balance(read(&b).as_deref()))
                && x >= *amount
            {
                puts.insert(a, balance_value(x - *amount, id));
                puts.insert(b, balance_value(y + *amount, id));
            }
        }
        PessKind::Increment { counters, .. } => {
            for c in counters {
                let k = register(*c);
                if let Some(n) = parse_counter(read(&k).as_deref()) {
                    puts.insert(k, counter_value(n + 1, id));
                }
            }
        }
    }
    // Every locked key is written: its new value, or its lock alone.
    for key in values.keys() {
        let write = match puts.get(key) {
            Some(v) => {
                if let Err(e) = txn.put(key.clone(), v.clone()) {
                    return TxnOutcome::Failed(format!("buffering: {e}"));
                }
                TxnWrite::Put(v.clone())
            }
            None => TxnWrite::Lock,
        };
        run.writes.push((key.clone(), write));
    }
    progress(Stage::Committing, run).wait_if_crashed().await;
    match txn.commit().await {
        Ok(ts) => TxnOutcome::Committed { commit_ts: ts.version(), mode: None },
        Err(e) if e.is_undetermined() => TxnOutcome::Undetermined(e.to_string()),
        Err(e) => TxnOutcome::Failed(e.to_string()),
    }
}
