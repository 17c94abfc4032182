//! Stale and replica reads through the public `TransactionClient`
//! ([`run_stale_world`]): writer clients commit the transactional world's
//! transactions (bank transfers, list appends, register writes, crashing
//! mid-commit as drawn) while reader clients read every key from
//! snapshots served off the leader, under the seed's faults:
//!
//! - **stale reads** (`TransactionClient::stale_snapshot`, client-go
//!   `KVSnapshot.SetIsStalenessReadOnly`): "as of a moment ago"
//!   (`stale_snapshot_ago`), at the client's `min_safe_ts`, and at an
//!   arbitrary older timestamp the reader saw before;
//! - **replica reads** (`Snapshot::with_replica_read`) of each
//!   [`ReplicaReadType`] at a fresh timestamp.
//!
//! Followers lag: from seeded instants in the fault window a store's peers
//! stop advancing their safe ts for a while
//! ([`crate::Cluster::set_safe_ts_lagging`]), so stale reads above it are
//! refused with `DataIsNotReady` and go to the leader, as client-go's do.
//!
//! Checks, against the committed state the commit records give (the
//! snapshot-isolation checker's model, [`si::Committed`]; undetermined
//! writers count as the write CF resolved them):
//! - the writers' history passes the transactional world's checkers
//!   (snapshot isolation, the bank total, Elle's list-append anomalies);
//! - a read at `ts` returns exactly the state committed at or below `ts`.
//!   One exception follows TiKV: a stale read does not push `max_ts`
//!   (`prepare_snap_ctx`), so when it reaches a replica whose safe ts is
//!   below `ts` and is served (by the leader) before an async-commit or
//!   1PC prewrite arrives, that transaction may still commit at or below
//!   `ts`. Commits at or below the cluster's `max_ts` when the read was
//!   issued are out of that race; above it, each key's value may be any
//!   version committed in between, and the read is left out of the bank
//!   check (counted as [`StaleWorldStats::unpinned_stale_reads`]);
//! - every stale and replica-read snapshot of all accounts sums to the
//!   bank's total;
//! - a replica read is linearizable (served after the leader's read
//!   index): a transaction reported committed before the read's
//!   timestamp was fetched has a commit ts at or below it, and the read
//!   sees it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tikv_core::key::{Key, KeyRange};
use tikv_core::pd::Timestamp;
use tikv_core::rng::Rng;
use tikv_core::time::{Duration, Instant};
use tikv_driver::{GLOBAL_TXN_SCOPE, ReplicaRead, ReplicaReadType};

use super::txn_world::{
    self, Record, World, audit, commit_fates, connect, final_data, spawn_clients, sweep_locks_left,
};
use super::{Error, Sim, SimConfig, SimFailure, SimReport, Snapshot, simulate};
use crate::cluster::FollowerReadBug;
use crate::world::txn_history::{
    INITIAL_BALANCE, ReadMethod, TxnHistory, TxnKeys, TxnOutcome, parse_balance,
};
use crate::world::txn_workload;
use crate::world::{TxnParams, elle, elle_history, scaled_budgets, si};

/// What a passing run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaleWorldStats {
    /// Writer transactions run (including the audit's full read).
    pub txns: usize,
    /// Their committed, failed and undetermined counts.
    pub outcomes: (usize, usize, usize),
    /// Writer clients crashed (each replaced by a fresh one).
    pub crashes: usize,
    /// Stale-read snapshots read whole (each key checked): as of a moment
    /// ago, at the min safe ts, at an older ts the reader saw.
    pub stale_reads: [usize; 3],
    /// Of those, reads at a ts above the cluster's `max_ts` when issued: a
    /// stale read does not push `max_ts` (TiKV's `prepare_snap_ctx`), so
    /// an async-commit or 1PC prewrite arriving after the leader served
    /// it may still commit at or below its ts. Each key of such a read is
    /// checked to hold a version committed between that `max_ts` and its
    /// ts, and the read is left out of the bank check.
    pub unpinned_stale_reads: usize,
    /// Replica-read snapshots read whole: follower, mixed, learner and
    /// prefer-leader reads.
    pub replica_reads: [usize; 4],
    /// Snapshot reads that failed (budget spent under the faults).
    pub failed_reads: usize,
    /// Stale-read requests followers served from their own data.
    pub follower_stale_reads: u64,
    /// Stale-read requests refused with `DataIsNotReady` (each then
    /// retried on the leader).
    pub data_not_ready: u64,
    /// Read requests with `replica_read` set (sent off the leader).
    pub replica_read_requests: u64,
}

/// How a reader chose its snapshot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum How {
    /// `stale_snapshot_ago(ago)`.
    StaleAgo(std::time::Duration),
    /// A stale read at the client's min safe ts.
    StaleAtMinSafeTs,
    /// A stale read at a timestamp the reader saw earlier.
    StaleOlder,
    /// A replica read of this type at a fresh timestamp.
    Replica(ReplicaReadType),
}

impl How {
    fn is_stale(self) -> bool {
        !matches!(self, How::Replica(_))
    }
}

/// One whole-snapshot read that succeeded.
#[derive(Clone, Debug)]
struct ReadRecord {
    reader: usize,
    how: How,
    method: ReadMethod,
    ts: u64,
    /// When the reader asked for a fresh timestamp (replica reads).
    fetched_at: Instant,
    /// The cluster's `max_ts` when the read was issued.
    max_ts: u64,
    values: BTreeMap<String, Option<String>>,
}

/// The readers' shared state: their random source and what they read.
struct ReadLog {
    rng: Rng,
    reads: Vec<ReadRecord>,
    failed_reads: usize,
}

fn lock(log: &Mutex<ReadLog>) -> std::sync::MutexGuard<'_, ReadLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the stale-read world with `seed` through the public client and
/// checks it; a violation fails the run. Writers commit the
/// transactional world's transactions (crashing mid-commit as drawn)
/// while readers read every key from stale snapshots
/// (`stale_snapshot_ago`, at `min_safe_ts`, at an older ts they saw) and
/// replica reads of each `ReplicaReadType` at fresh timestamps, under the
/// seed's faults, with stores' safe ts lagging for seeded spells. Checked:
/// the writers' history as the transactional world's; every read returns
/// the state committed at its ts (but see
/// [`StaleWorldStats::unpinned_stale_reads`]) and the bank total; a
/// replica read sees every transaction reported committed before its ts
/// was fetched (its commit ts at or below it).
///
/// # Errors
///
/// The [`SimFailure`] of a run a checker rejects, whose audit fails, or
/// that failed as any simulation can.
pub fn run_stale_world(
    seed: u64,
    config: SimConfig,
) -> Result<SimReport<StaleWorldStats>, SimFailure> {
    simulate(seed, config, move |sim| async move { stale_world(sim, None).await })
}

/// [`run_stale_world`] on a cluster whose followers break their read rule
/// as `bug` says.
#[cfg(test)]
fn run_broken_stale_world(
    seed: u64,
    bug: FollowerReadBug,
) -> Result<SimReport<StaleWorldStats>, SimFailure> {
    simulate(seed, SimConfig::chaos(), move |sim| async move { stale_world(sim, Some(bug)).await })
}

async fn stale_world(sim: Sim, bug: Option<FollowerReadBug>) -> Result<StaleWorldStats, String> {
    let cluster = sim.cluster();
    cluster.set_follower_read_bug(bug);
    let mut rng = Rng::new(sim.seed() ^ 0x7374_616c_6520_7264);
    let keys = TxnKeys {
        accounts: rng.gen_range(2, 6) as u32,
        lists: rng.gen_range(1, 4) as u32,
        registers: rng.gen_range(0, 3) as u32,
    };
    let params = TxnParams {
        keys,
        crash_permille: match rng.gen_range(0, 3) {
            0 => 0,
            _ => rng.gen_range(20, 200),
        },
        async_commit_permille: rng.gen_range(0, 700),
        one_pc_permille: rng.gen_range(0, 600),
        budget_permille: match rng.gen_range(0, 4) {
            0..3 => 1000,
            _ => rng.gen_range(50, 500),
        },
    };
    let writers = rng.gen_range(2, 4) as usize;
    let readers = rng.gen_range(1, 3) as usize;
    let txns_each = rng.gen_range(4, 12) as usize;
    let reads_each = rng.gen_range(4, 10) as usize;
    let heal_at = sim.heal_at().unwrap_or(Instant::ZERO);
    let window = heal_at.saturating_duration_since(Instant::ZERO);
    let think = (window * 2 / txns_each as u32).max(Duration::from_millis(10));
    let read_think = (window * 2 / reads_each as u32).max(Duration::from_millis(200));
    let budgets = scaled_budgets(params.budget_permille);
    // Lagging followers: a store's peers keep their safe ts for a while.
    let stores = cluster.store_ids();
    for _ in 0..rng.gen_range(1, 4) {
        let store = stores[rng.gen_range(0, stores.len() as u64) as usize];
        let from = rng.gen_duration(window * 3 / 2);
        let lasts = Duration::from_millis(rng.gen_range(500, 4000));
        let (sim2, cluster) = (sim.clone(), cluster.clone());
        sim.spawn(async move {
            sim2.sleep(from).await;
            sim2.log(format!("store {store}'s peers stop advancing their safe ts for {lasts:?}"));
            cluster.set_safe_ts_lagging(store, true);
            sim2.sleep(lasts).await;
            cluster.set_safe_ts_lagging(store, false);
        })
        .forget();
    }
    // Readers draw from a source of their own, so the writers' draws are
    // the transactional world's.
    let log = Arc::new(Mutex::new(ReadLog {
        rng: Rng::new(rng.next_u64()),
        reads: Vec::new(),
        failed_reads: 0,
    }));
    let record =
        Arc::new(Mutex::new(Record::new(World::Txn, rng, params, writers, txns_each, think)));
    // The transactional world's clients are the writers.
    let mut tasks = spawn_clients(&sim, &record, writers, &budgets);
    for r in 0..readers {
        let (log, budgets) = (log.clone(), budgets.clone());
        // Readers do not crash; a process of their own keeps their
        // clients' background tasks apart all the same.
        let worker = reader(sim.clone(), log, keys, r, budgets, reads_each, read_think);
        let process = sim.spawn_process(worker);
        tasks.push(sim.spawn(async move {
            process.join().await.unwrap_or_else(|| Err(format!("reader {r} crashed")))
        }));
    }
    for t in tasks {
        t.await?;
    }
    if sim.now() < heal_at {
        sim.sleep_until(heal_at).await;
    }
    for s in &stores {
        cluster.set_safe_ts_lagging(*s, false);
    }
    let (auditor, audit) = audit(&sim, &record, writers).await?;
    let mut violations = Vec::new();
    violations.extend(sweep_locks_left(&auditor, &cluster).await);
    let record = txn_world::lock(&record);
    let log = lock(&log);
    let history = &record.history;
    if !matches!(history.entries[audit].outcome, TxnOutcome::Committed { .. }) {
        violations
            .push(format!("liveness: the audit read ended {:?}", history.entries[audit].outcome));
    }
    let fates = commit_fates(history, &cluster, None);
    let final_data = final_data(&cluster);
    violations
        .extend(si::check(history, &fates, &final_data).into_iter().map(|v| format!("si: {v}")));
    violations.extend(si::check_bank(history, &keys.account_keys(), &final_data));
    violations
        .extend(elle::check(&elle_history(history)).into_iter().map(|a| format!("elle: {a}")));
    let committed = si::Committed::new(history, &fates);
    violations.extend(check_reads(&log.reads, history, &committed, &keys));
    if !violations.is_empty() {
        return Err(violations.join("\n"));
    }
    let stores = cluster.store_ids();
    let replica_read_requests = stores
        .iter()
        .flat_map(|s| {
            ["kv_get", "kv_batch_get", "kv_scan"]
                .map(|cmd| cluster.kv_request_count(*s, cmd, Some(true)))
        })
        .sum();
    let (ok, failed, undetermined, _) = history.counts();
    let (mut stale_reads, mut replica_reads) = ([0; 3], [0; 4]);
    for r in &log.reads {
        match r.how {
            How::StaleAgo(_) => stale_reads[0] += 1,
            How::StaleAtMinSafeTs => stale_reads[1] += 1,
            How::StaleOlder => stale_reads[2] += 1,
            How::Replica(ReplicaReadType::Follower) => replica_reads[0] += 1,
            How::Replica(ReplicaReadType::Mixed) => replica_reads[1] += 1,
            How::Replica(ReplicaReadType::Learner) => replica_reads[2] += 1,
            How::Replica(_) => replica_reads[3] += 1,
        }
    }
    Ok(StaleWorldStats {
        txns: history.entries.len(),
        outcomes: (ok, failed, undetermined),
        crashes: record.crashes,
        stale_reads,
        unpinned_stale_reads: log
            .reads
            .iter()
            .filter(|r| r.how.is_stale() && r.max_ts < r.ts)
            .count(),
        replica_reads,
        failed_reads: log.failed_reads,
        follower_stale_reads: cluster.follower_stale_read_count(),
        data_not_ready: stores.iter().map(|s| cluster.stale_read_count(*s, false)).sum(),
        replica_read_requests,
    })
}

/// Reader `r`: `reads` whole-snapshot reads, each a stale read or a
/// replica read as drawn.
async fn reader(
    sim: Sim,
    log: Arc<Mutex<ReadLog>>,
    keys: TxnKeys,
    r: usize,
    budgets: tikv_core::config::BackoffBudgets,
    reads: usize,
    think: Duration,
) -> Result<(), String> {
    let client = connect(&sim, World::Txn, Some(budgets)).await?;
    let keys = keys.all();
    // Timestamps this reader saw, for reads at an older one.
    let mut seen: Vec<u64> = Vec::new();
    for _ in 0..reads {
        let (pause, how, method, pick) = {
            let g = &mut *lock(&log);
            let how = match g.rng.gen_range(0, 8) {
                0 | 1 => How::StaleAgo(std::time::Duration::from_millis(g.rng.gen_range(0, 3000))),
                2 => How::StaleAtMinSafeTs,
                3 => How::StaleOlder,
                4 => How::Replica(ReplicaReadType::Follower),
                5 => How::Replica(ReplicaReadType::Mixed),
                6 => How::Replica(ReplicaReadType::Learner),
                _ => How::Replica(ReplicaReadType::PreferLeader),
            };
            let pause = g.rng.gen_duration(think);
            (pause, how, txn_workload::pick_read_method(&mut g.rng), g.rng.next_u64())
        };
        sim.sleep(pause).await;
        let fetched_at = sim.now();
        let snapshot: Result<Snapshot, Error> = match how {
            How::StaleAgo(ago) => client.stale_snapshot_ago(ago).await,
            How::StaleAtMinSafeTs => {
                let ts = client.min_safe_ts(GLOBAL_TXN_SCOPE);
                if ts == Timestamp::ZERO {
                    // Not every store answered yet.
                    continue;
                }
                Ok(client.stale_snapshot(ts))
            }
            How::StaleOlder => match seen.get(pick as usize % seen.len().max(1)) {
                Some(ts) => Ok(client.stale_snapshot(Timestamp::from_version(*ts))),
                None => continue,
            },
            How::Replica(read_type) => client
                .current_timestamp()
                .await
                .map(|ts| client.snapshot(ts).with_replica_read(ReplicaRead::of(read_type))),
        };
        let Ok(snapshot) = snapshot else {
            lock(&log).failed_reads += 1;
            continue;
        };
        let ts = snapshot.timestamp().version();
        seen.push(ts);
        let max_ts = sim.cluster().max_ts();
        match read_all(&snapshot, method, &keys).await {
            Ok(values) => lock(&log).reads.push(ReadRecord {
                reader: r,
                how,
                method,
                ts,
                fetched_at,
                max_ts,
                values,
            }),
            Err(_) => lock(&log).failed_reads += 1,
        }
    }
    Ok(())
}

/// Every key of the run from `snapshot`, with `method`.
async fn read_all(
    snapshot: &Snapshot,
    method: ReadMethod,
    keys: &[String],
) -> Result<BTreeMap<String, Option<String>>, Error> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut found: BTreeMap<String, Option<String>> =
        keys.iter().map(|k| (k.clone(), None)).collect();
    match method {
        ReadMethod::Get => {
            for k in keys {
                let v = snapshot.get(k.clone()).await?;
                found.insert(k.clone(), v.map(|v| text(&v)));
            }
        }
        ReadMethod::BatchGet => {
            for p in snapshot.batch_get(keys.iter().cloned()).await? {
                found.insert(text(p.key.as_bytes()), Some(text(&p.value)));
            }
        }
        ReadMethod::Scan | ReadMethod::ScanReverse => {
            let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
                return Ok(found);
            };
            let range = KeyRange::new(Key::from(first.clone()), Key::from(last.clone()).next_key());
            for p in snapshot.scan(range, keys.len() as u32 + 1).await? {
                found.insert(text(p.key.as_bytes()), Some(text(&p.value)));
            }
        }
    }
    Ok(found)
}

/// The reads' checks (module docs).
fn check_reads(
    reads: &[ReadRecord],
    history: &TxnHistory,
    committed: &si::Committed,
    keys: &TxnKeys,
) -> Vec<String> {
    let mut out = Vec::new();
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let accounts = keys.account_keys();
    let total = INITIAL_BALANCE * accounts.len() as u64;
    for (n, read) in reads.iter().enumerate() {
        let what = match read.how {
            How::Replica(t) => format!("replica read #{n} ({t:?}, reader {})", read.reader),
            how => format!("stale read #{n} ({how:?}, reader {})", read.reader),
        };
        let check = if read.how.is_stale() { "stale read" } else { "replica read" };
        // Commits at or below this are out of the race a stale read leaves
        // open (module docs); a replica read pushes `max_ts` itself.
        let pinned = if read.how.is_stale() { read.max_ts.min(read.ts) } else { read.ts };
        for (k, seen) in &read.values {
            let (want, by) = committed.at(k, read.ts);
            let allowed = std::iter::once(committed.at(k, pinned).0).chain(
                committed
                    .commits_between(k, pinned, read.ts)
                    .into_iter()
                    .map(|c| committed.at(k, c).0),
            );
            if !allowed.into_iter().any(|v| v == *seen) {
                let writer = by.map_or("nobody".into(), |(txn, c)| format!("txn {txn} at {c}"));
                out.push(format!(
                    "{check}: {what} read {k}={} at {} ({:?}); committed then: {} (written by {writer})",
                    show(seen),
                    read.ts,
                    read.method,
                    show(&want)
                ));
            }
        }
        if pinned == read.ts {
            let sum: Option<u64> = accounts
                .iter()
                .map(|a| parse_balance(read.values.get(a).cloned().flatten().as_deref()))
                .sum();
            if sum != Some(total) {
                out.push(format!(
                    "{check} bank: {what} read a total of {sum:?} at {}, not {total}",
                    read.ts
                ));
            }
        }
        // Linearizable replica reads: what was reported committed before
        // the timestamp was fetched is at or below it (and so seen above;
        // an async-commit or 1PC commit ts is `max_ts + 1`, which the next
        // TSO may equal).
        if !read.how.is_stale() {
            for e in &history.entries {
                let TxnOutcome::Committed { commit_ts, .. } = e.outcome else { continue };
                if e.run.writes.is_empty() || e.end.is_none_or(|end| end >= read.fetched_at) {
                    continue;
                }
                if commit_ts > read.ts {
                    out.push(format!(
                        "replica read: {what} at {} was fetched at {} after txn {} reported its \
                         commit at {commit_ts}",
                        read.ts, read.fetched_at, e.id
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_and_replica_reads_are_served_off_the_leader_and_exact() {
        let mut totals = StaleWorldStats::default();
        for seed in 0..30 {
            let report =
                run_stale_world(seed, SimConfig::chaos()).unwrap_or_else(|f| panic!("{f}"));
            let s = report.output;
            for (total, n) in totals.stale_reads.iter_mut().zip(s.stale_reads) {
                *total += n;
            }
            for (total, n) in totals.replica_reads.iter_mut().zip(s.replica_reads) {
                *total += n;
            }
            totals.follower_stale_reads += s.follower_stale_reads;
            totals.data_not_ready += s.data_not_ready;
            totals.replica_read_requests += s.replica_read_requests;
        }
        // Every kind of read was made and checked.
        assert!(totals.stale_reads.iter().all(|n| *n > 0), "{totals:?}");
        assert!(totals.replica_reads.iter().all(|n| *n > 0), "{totals:?}");
        assert!(totals.follower_stale_reads > 0, "followers serve stale reads: {totals:?}");
        assert!(totals.data_not_ready > 0, "lagging followers refuse some: {totals:?}");
        assert!(totals.replica_read_requests > 0, "replica reads go off the leader: {totals:?}");
    }

    #[test]
    fn the_same_seed_replays_the_same_trace() {
        let a = run_stale_world(3, SimConfig::chaos()).unwrap_or_else(|f| panic!("{f}"));
        let b = run_stale_world(3, SimConfig::chaos()).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((a.trace_hash, &a.output, &a.stats), (b.trace_hash, &b.output, &b.stats));
        let c = run_stale_world(4, SimConfig::chaos()).unwrap_or_else(|f| panic!("{f}"));
        assert_ne!(a.trace_hash, c.trace_hash);
    }

    /// The first failure of a small sweep of the broken world.
    fn broken_sweep(bug: FollowerReadBug) -> String {
        (0..10)
            .find_map(|seed| run_broken_stale_world(seed, bug).err())
            .map(|f| f.reason)
            .unwrap_or_else(|| panic!("no seed caught {bug:?}"))
    }

    #[test]
    fn a_follower_serving_stale_reads_above_its_safe_ts_is_caught() {
        let reason = broken_sweep(FollowerReadBug::StaleAboveSafeTs);
        assert!(reason.contains("stale read: stale read #"), "{reason}");
    }

    #[test]
    fn a_replica_read_without_the_read_index_is_caught() {
        let reason = broken_sweep(FollowerReadBug::ReplicaReadWithoutReadIndex);
        assert!(reason.contains("replica read: replica read #"), "{reason}");
    }
}
