//! The pipelined world through the public client
//! ([`super::run_pipelined_world`]): the transactional world's clients
//! run, beside their normal transactions, pipelined DML transactions
//! drawn as the core-level pipelined world draws them
//! ([`crate::world::pipelined_workload`]), each through
//! `TransactionClient::begin_pipelined` with tiny flush thresholds so it
//! hands off several generations:
//!
//! - a transfer reads its two accounts first (`batch_get`, from the
//!   snapshot), then writes `from` first and `to` last, so the two land in
//!   different generations;
//! - the writer pauses between writes (for seconds now and then, so the
//!   heartbeats push the primary's `min_commit_ts` and readers meet live
//!   flushed locks), and reads keys back in the middle and at the end
//!   through the public reads (memory, `BufferBatchGet`, the snapshot);
//! - most commit; some roll back, some are dropped (the driver rolls
//!   their flushed locks back in the background).
//!
//! With the seed's crash rate a client crashes in one of three stages: a
//! drawn delay after its transaction's first generation was handed to a
//! flush (mid-flush, among its later writes and flushes), into its commit
//! (the last flush, the primary's commit), or after the commit returned,
//! while the driver resolves the flushed range in the background. The
//! keys are split into three regions, so that resolution takes several
//! steps; the trace names the crashes that struck it midway (the primary
//! committed, flushed locks left), which readers and the audit then
//! resolve through the primary.
//!
//! Checked by the transactional world's checkers (snapshot isolation with
//! honest outcomes, read-your-writes for the read-backs, the bank, Elle,
//! no lock left after the audit, the liveness bound plus the pipelined
//! extra) and the core-level pipelined world's [`check_atomicity`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tikv_core::time::Duration;
use tikv_driver::interceptor::{KvRequest, Next, RpcInterceptor, StoreRpc, StoreRpcFuture};
use tikv_driver::{KvPair, PipelinedOptions, TransactionOptions};

use super::{Flaw, Halt, Record, Sim, Stage, TransactionClient, lock};
use crate::platform::SimPlatform;
use crate::world::pipelined_workload::{
    PipeRecord, PipeSpec, PipeStats, PipeWrite, Stage as PipeStage, check_atomicity, final_writes,
    plan_transfer, tally,
};
use crate::world::si::Fates;
use crate::world::txn_history::{TxnHistory, TxnOutcome, TxnRun, account};
use crate::{Cluster, WriteKind};

/// A deliberate flaw of the pipelined clients, for tests to show the
/// checkers catch it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) enum PipeFlaw {
    /// The flushed range is resolved at a commit ts one above the
    /// primary's (the core-level world's `PipelinedResolvesAtTheWrongTs`,
    /// here by rewriting the transaction's `ResolveLock` requests).
    ResolvesAtTheWrongTs,
}

/// How a pipelined transaction ends once written.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    Commit,
    Rollback,
    Drop,
}

/// The pipelined transactions' records, shared by the clients.
#[derive(Default)]
pub(super) struct PipeState {
    records: BTreeMap<usize, PipeRecord>,
    /// Entries a client crash struck (their record's stage says where).
    struck: BTreeSet<usize>,
}

impl PipeState {
    /// A crash struck entry `id`'s client, if `id` is pipelined. Returns
    /// how many of its flushed locks are left in `cluster` if its primary
    /// is committed (the crash cuts the range's resolution short), else 0.
    pub(super) fn crash_struck(&mut self, id: usize, cluster: &Cluster) -> usize {
        let Some(ts) = self.records.get(&id).and_then(|r| r.start_ts) else { return 0 };
        self.struck.insert(id);
        let locks: Vec<_> = cluster.locks().into_iter().filter(|l| l.lock_version == ts).collect();
        let Some(primary) = locks.first().map(|l| l.primary_lock.clone()) else { return 0 };
        match cluster.commit_record(&primary, ts) {
            Some(r) if r.kind != WriteKind::Rollback => locks.len(),
            _ => 0,
        }
    }

    /// The atomicity check of every pipelined transaction, with the
    /// write CF's `fates`, and the counters.
    pub(super) fn finish(
        &self,
        history: &TxnHistory,
        fates: &Fates,
        violations: &mut Vec<String>,
    ) -> PipeStats {
        let pipelined: BTreeSet<usize> = self.records.keys().copied().collect();
        for v in check_atomicity(history, fates, &pipelined) {
            violations.push(format!("atomicity: {v}"));
        }
        tally(&self.records, history, |entry| self.struck.contains(&entry))
    }
}

/// Splits the keys so a pipelined transaction's flushed range spans
/// regions (accounts, lists and the registers on either side of `r2`):
/// its resolution then takes several steps, which a crash can cut short.
pub(super) fn split(sim: &Sim) {
    for at in [&b"l"[..], b"r2"] {
        if let Err(e) = sim.cluster().split(at) {
            sim.log(format!("no split at {:?}: {e:?}", String::from_utf8_lossy(at)));
        }
    }
}

/// Draws how a pipelined transaction ends: mostly committed.
pub(super) fn draw_ending(rng: &mut tikv_core::rng::Rng) -> Ending {
    match rng.gen_range(0, 8) {
        0 => Ending::Rollback,
        1 => Ending::Drop,
        _ => Ending::Commit,
    }
}

/// Around every store RPC of one pipelined transaction (its background
/// flushes and resolution included): counts its `BufferBatchGet`s and
/// applies the flaw.
struct Watch {
    buffer_gets: Arc<AtomicU64>,
    flaw: Option<PipeFlaw>,
}

impl RpcInterceptor for Watch {
    fn name(&self) -> &str {
        "pipelined-world"
    }

    fn intercept(&self, mut rpc: StoreRpc, next: Next) -> StoreRpcFuture {
        match &mut rpc.request {
            KvRequest::BufferBatchGet(_) => {
                self.buffer_gets.fetch_add(1, Ordering::Relaxed);
            }
            KvRequest::ResolveLock(r)
                if self.flaw == Some(PipeFlaw::ResolvesAtTheWrongTs) && r.commit_version > 0 =>
            {
                r.commit_version += 1;
            }
            _ => {}
        }
        next.run(rpc)
    }
}

/// Runs pipelined transaction `id` (`spec`, ending as `ending`) through
/// the public client; `progress` arms the drawn crash at each stage.
#[allow(clippy::too_many_arguments)]
pub(super) async fn transact(
    sim: &Sim,
    client: &TransactionClient,
    record: &std::sync::Mutex<Record>,
    spec: PipeSpec,
    ending: Ending,
    id: usize,
    run: &mut TxnRun,
    progress: impl FnMut(Stage, &TxnRun) -> Halt,
) -> TxnOutcome {
    let outcome = pipelined_txn(sim, client, record, spec, ending, id, run, progress).await;
    sim.log(format!("txn{id} (pipelined) ended: {outcome:?}"));
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn pipelined_txn(
    sim: &Sim,
    client: &TransactionClient,
    record: &std::sync::Mutex<Record>,
    spec: PipeSpec,
    ending: Ending,
    id: usize,
    run: &mut TxnRun,
    mut progress: impl FnMut(Stage, &TxnRun) -> Halt,
) -> TxnOutcome {
    let flaw = {
        let r = &mut *lock(record);
        r.pipe.records.insert(id, PipeRecord::default());
        match r.flaw {
            Some(Flaw::Pipelined(flaw)) => Some(flaw),
            _ => None,
        }
    };
    let update = |f: &dyn Fn(&mut PipeRecord)| {
        if let Some(p) = lock(record).pipe.records.get_mut(&id) {
            f(p);
        }
    };
    let options = PipelinedOptions::default()
        .with_flush_thresholds(spec.thresholds)
        .with_flush_concurrency(1 + id % 4)
        .with_resolve_concurrency(1 + id % 3);
    let mut txn = match client.begin_pipelined(TransactionOptions::default(), options).await {
        Ok(txn) => txn,
        Err(e) => return TxnOutcome::Failed(e.to_string()),
    };
    let buffer_gets = Arc::new(AtomicU64::new(0));
    txn.add_interceptor(Watch { buffer_gets: buffer_gets.clone(), flaw });
    let start_ts = txn.start_timestamp().version();
    sim.log(format!(
        "txn{id} is pipelined (start ts {start_ts}): {} writes, flush at {} keys, then {ending:?}",
        spec.writes.len(),
        spec.thresholds.min_keys
    ));
    run.start_ts = Some(start_ts);
    update(&|p| p.start_ts = Some(start_ts));
    let mut plan = spec.writes.clone();
    if let Some(transfer) = spec.transfer {
        let accounts = [account(transfer.0), account(transfer.1)];
        match txn.batch_get(accounts).await {
            Ok(pairs) => run.reads = plan_transfer(transfer, id, &pairs, &mut plan),
            Err(e) => return TxnOutcome::Failed(e.to_string()),
        }
    }
    run.writes = final_writes(&plan);
    let observe = |txn: &tikv_driver::PipelinedTransaction<SimPlatform>| {
        let p = txn.progress();
        let gets = buffer_gets.load(Ordering::Relaxed);
        update(&|r| {
            r.generations = p.generations;
            r.beats = p.heartbeats;
            r.buffer_gets = gets;
            if p.generations > 0 {
                r.stage = r.stage.max_stage(PipeStage::Flushed);
            }
        });
        p.generations
    };
    for i in 0..=plan.len() {
        let mid = (i == spec.mid_at).then_some(&spec.mid_reads);
        let end = (i == plan.len()).then_some(&spec.end_reads);
        for keys in [mid, end].into_iter().flatten().filter(|keys| !keys.is_empty()) {
            let result = txn.batch_get(keys.iter().cloned()).await;
            observe(&txn);
            match result {
                Ok(pairs) => record_own_reads(run, keys, &plan[i..], &pairs),
                Err(e) => return TxnOutcome::Failed(format!("reading back: {e}")),
            }
        }
        let Some((key, write)) = plan.get(i).cloned() else { break };
        let written = match write {
            PipeWrite::Put(v) => txn.put(key, v).await,
            PipeWrite::Insert(v) => txn.insert(key, v).await,
            PipeWrite::Delete => txn.delete(key).await,
        };
        let generations = observe(&txn);
        // Dropped, the transaction rolls back what it flushed.
        if let Err(e) = written {
            return TxnOutcome::Failed(format!("writing: {e}"));
        }
        if generations > 0 {
            progress(Stage::Flushed, run).wait_if_crashed().await;
        }
        let pause = spec.pauses.get(i).copied().unwrap_or_default();
        if pause > Duration::ZERO {
            sim.sleep(pause).await;
        }
    }
    sim.log(format!(
        "txn{id} (pipelined) wrote {} generations: {ending:?}",
        txn.progress().generations
    ));
    match ending {
        Ending::Commit => {
            update(&|r| r.stage = r.stage.max_stage(PipeStage::Committing));
            progress(Stage::Committing, run).wait_if_crashed().await;
            let result = txn.commit().await;
            update(&|r| r.stage = r.stage.max_stage(PipeStage::Resolving));
            // The flushed range is resolved in the background now.
            progress(Stage::Committed, run).wait_if_crashed().await;
            match result {
                Ok(ts) => TxnOutcome::Committed { commit_ts: ts.version(), mode: None },
                Err(e) if e.is_undetermined() => TxnOutcome::Undetermined(e.to_string()),
                Err(e) => TxnOutcome::Failed(e.to_string()),
            }
        }
        Ending::Rollback => {
            update(&|r| r.stage = r.stage.max_stage(PipeStage::Resolving));
            // Its error only means the locks are left to expire: nothing
            // commits either way.
            let result = txn.rollback().await;
            TxnOutcome::Failed(format!("rolled back: {result:?}"))
        }
        Ending::Drop => {
            update(&|r| r.stage = r.stage.max_stage(PipeStage::Resolving));
            drop(txn);
            TxnOutcome::Failed("dropped".into())
        }
    }
}

/// Records the values read back for `keys` (found: `pairs`), leaving out
/// the keys written again `later` (the checker holds a read-back against
/// the transaction's last write of a key).
fn record_own_reads(
    run: &mut TxnRun,
    keys: &[String],
    later: &[(String, PipeWrite)],
    pairs: &[KvPair],
) {
    let later: BTreeSet<&String> = later.iter().map(|(k, _)| k).collect();
    for k in keys.iter().filter(|k| !later.contains(k)) {
        let found = pairs.iter().find(|p| p.key.as_bytes() == k.as_bytes());
        let value = found.map(|p| String::from_utf8_lossy(&p.value).into_owned());
        run.own_reads.push((k.clone(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Flaw, World, run_world};
    use super::*;
    use crate::platform::{SimConfig, run_pipelined_world};

    #[test]
    fn seeds_pass_and_exercise_every_stage() {
        let mut sums = PipeStats::default();
        let (mut undetermined, mut rolled_back, mut dropped, mut cut_short) = (0, 0, 0, 0);
        for seed in 0..40 {
            let config = SimConfig { trace: true, ..SimConfig::chaos() };
            let report = run_pipelined_world(seed, config).unwrap_or_else(|f| panic!("{f}"));
            let p = &report.output.pipelined;
            sums.txns.0 += p.txns.0;
            sums.txns.1 += p.txns.1;
            sums.multi_generation += p.multi_generation;
            sums.buffer_gets += p.buffer_gets;
            sums.crashed.0 += p.crashed.0;
            sums.crashed.1 += p.crashed.1;
            sums.crashed.2 += p.crashed.2;
            undetermined += report.output.outcomes.2;
            cut_short += report.trace.matches("mid-resolution").count();
            rolled_back += report.trace.matches("generations: Rollback").count();
            dropped += report.trace.matches("generations: Drop").count();
        }
        // Not vacuous: pipelined transactions committed over several
        // generations, read their flushed writes back, rolled back and
        // were dropped; crashes struck them mid-flush, in the commit and
        // after it.
        assert!(sums.txns.1 > 20 && sums.multi_generation > 20, "{sums:?}");
        assert!(sums.buffer_gets > 20, "{sums:?}");
        assert!(rolled_back > 0 && dropped > 0, "{rolled_back} rolled back, {dropped} dropped");
        let c = sums.crashed;
        assert!(c.0 > 0 && c.1 > 0 && c.2 > 0, "{sums:?}");
        assert!(undetermined > 0);
        // Some crashes after the commit cut the range's resolution short:
        // the audit found their flushed locks.
        assert!(cut_short > 0, "no crash cut a resolution short");
        println!("{sums:?}; {rolled_back} rolled back, {dropped} dropped, {cut_short} cut short");
    }

    #[test]
    fn a_seed_replays_byte_for_byte() {
        let config = SimConfig { trace: true, ..SimConfig::chaos() };
        let a = run_pipelined_world(11, config.clone()).unwrap_or_else(|f| panic!("{f}"));
        let b = run_pipelined_world(11, config).unwrap_or_else(|f| panic!("{f}"));
        assert!(a.trace.contains("is pipelined"), "{}", a.trace);
        assert!(a.trace.contains("kv_flush") && a.trace.contains("kv_buffer_batch_get"));
        assert_eq!(a.trace, b.trace);
        assert_eq!((a.trace_hash, &a.output, &a.stats), (b.trace_hash, &b.output, &b.stats));
    }

    #[test]
    fn atomicity_catches_a_range_resolved_at_the_wrong_commit_ts() {
        let flaw = Some(Flaw::Pipelined(PipeFlaw::ResolvesAtTheWrongTs));
        let failure = (0..50)
            .find_map(|seed| run_world(seed, SimConfig::chaos(), World::Pipelined, flaw).err())
            .expect("the flaw was not caught in 50 seeds");
        assert!(failure.reason.contains("atomicity: pipelined txn"), "{failure}");
        assert!(failure.reason.contains("partly committed"), "{failure}");
        // The failure replays from its seed.
        let again = run_world(failure.seed, SimConfig::chaos(), World::Pipelined, flaw);
        assert_eq!(again.err().map(|f| f.trace_hash), Some(failure.trace_hash));
    }
}
