//! The pipelined world: the transactional world (optimistic transfers,
//! list appends, register writes and bank readers with 2PC, async commit
//! or 1PC) with pipelined DML transactions beside them, run the way the
//! driver's `PipelinedTransaction` runs one, on the real core machines:
//!
//! - a start ts from the client's oracle; a pipelined transfer reads its
//!   two accounts from the snapshot first;
//! - writes go to a [`PipelinedBuffer`] with tiny seeded flush thresholds
//!   (client-go's are 10,000 keys and 16 MiB), so one transaction hands
//!   off several generations; each is flushed in the background by a
//!   [`FlushGeneration`] while the writer goes on (one flush in flight; a
//!   buffer at its force threshold waits for it, as client-go's writer
//!   does); the writer pauses between writes, now and then for seconds,
//!   so the heartbeats ([`PipelinedKeepAlive`], from the first flushed
//!   generation on) push the primary's `min_commit_ts` and broadcast it;
//! - the transaction reads its keys back in the middle and at the end
//!   through memory, the generation in flight, `BufferBatchGet` for what
//!   earlier generations flushed, then the snapshot;
//! - [`PipelinedCommit`] flushes the last generation and commits the
//!   primary only; in the background its follow-up resolves the flushed
//!   range region by region with the commit ts (a rollback with commit ts
//!   zero after a definite failure), the status is broadcast, and the
//!   completion is broadcast after the grace period.
//!
//! Clients crash under the world's plan: the crash is drawn when the first
//! generation starts flushing and lands after a seeded number of inputs,
//! so mid-flush, in the commit, at the commit point (right after the
//! primary's commit) or during the range resolution. Other clients then
//! meet the flushed locks: readers push a live transaction's
//! `min_commit_ts` or resolve an expired one through its primary,
//! optimistic writers wait for them, flushes of other pipelined
//! transactions resolve them.
//!
//! Checked by the transactional world's checkers (snapshot isolation with
//! honest outcomes: a transaction whose primary commit lost its answer is
//! undetermined and the write CF decides; read-your-writes; the bank; no
//! lock left after the audit) and by [`check_atomicity`]: a pipelined
//! transaction's writes are all committed at one ts or none, and no
//! snapshot sees some of them without the others.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tikv_core::error::Error;
use tikv_core::key::{Key, KvPair, Value};
use tikv_core::op::{IdMap, Operation};
use tikv_core::pd::{GetTimestamp, Timestamp};
use tikv_core::range_task::RangeTaskRunner;
use tikv_core::rng::Rng;
use tikv_core::route::fanout::KeyFanout;
use tikv_core::rpc::{KvRequest, KvResponse, Request, RequestTags, Response, Rpc, RpcError, RpcId};
use tikv_core::time::{Duration, Instant};
use tikv_core::txn::commit::CommitMode;
use tikv_core::txn::pipelined::{
    BROADCAST_GRACE_PERIOD, BroadcastTxnStatus, BufferBatchGetPlan, Flush, FlushGeneration,
    FlushRequest, FlushStart, FlushThresholds, LocalRead, PipelinedBuffer, PipelinedCommit,
    PipelinedCommitRequest, PipelinedKeepAlive, PipelinedTxnStatus, RESOLVE_FLUSHED_CONCURRENCY,
    ResolveFlushedHandler, TxnStatusUpdate, buffer_batch_get, resolve_flushed,
};
use tikv_core::txn::snapshot::{ReadOptions, SnapshotBatchGet};
use tikv_core::view::ClusterView;
use tikv_proto::kvrpcpb;

use super::faults::{Plan, TxnParams};
use super::si::{Fates, KeyFate};
use super::txn_history::{
    RegOp, TxnHistory, TxnKind, TxnOutcome, TxnRun, TxnWrite, account, balance_value,
    parse_balance, register, register_value,
};
use super::txn_workload::{self, TxnSpec};
use super::workload::{Finished, SimOp};
use super::{Bug, World};
use crate::WriteKind;

/// Chance (in 100) that a client's next transaction is pipelined.
const PIPELINED_SHARE: u64 = 40;

/// Draws the pipelined world's plan: the transactional world's, with at
/// least three registers for the pipelined transactions to spread their
/// generations over.
pub(crate) fn draw_plan(rng: &mut Rng) -> Plan {
    let mut plan = Plan::draw_txn(rng);
    if let Some(t) = plan.txn.as_mut() {
        t.keys.registers = t.keys.registers.max(3 + rng.gen_range(0, 3) as u32);
        // Pipelined transactions keep their locks alive past the crash
        // chance of short ones: crash often enough to land in each stage.
        t.crash_permille = t.crash_permille.max(rng.gen_range(50, 300));
    }
    plan.swarm.keys = plan.txn.as_ref().map_or(plan.swarm.keys, |t| t.keys.total());
    // A pipelined transaction costs several of the others (generations,
    // broadcasts to every store, the range's resolution): fewer per client
    // keep a sweep of 10,000 seeds as quick as the other worlds'.
    plan.swarm.ops_per_client = plan.swarm.ops_per_client.min(rng.gen_range(2, 6) as usize);
    plan
}

/// One write of a pipelined transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PipeWrite {
    Put(String),
    /// Fails the flush with `KeyExists` if the key exists.
    Insert(String),
    Delete,
}

/// A pipelined transaction: what it writes, in order, and when it reads
/// its keys back.
#[derive(Clone, Debug)]
pub(crate) struct PipeSpec {
    /// Read both accounts, then move `amount` if `from` holds it: `from`'s
    /// write first, `to`'s last, so they land in different generations.
    pub(crate) transfer: Option<(u32, u32, u64)>,
    /// Register writes in order; a register may be written again in a
    /// later generation.
    pub(crate) writes: Vec<(String, PipeWrite)>,
    /// The writer's pause after each write (the transfer's included).
    pub(crate) pauses: Vec<Duration>,
    /// After this many writes, read `mid_reads` back.
    pub(crate) mid_at: usize,
    pub(crate) mid_reads: Vec<String>,
    /// Read back after the last write.
    pub(crate) end_reads: Vec<String>,
    pub(crate) thresholds: FlushThresholds,
}

/// What a client runs next in the pipelined world.
pub(crate) enum Pick {
    Normal(TxnSpec),
    Pipelined(TxnSpec, PipeSpec),
}

/// Picks a client's next transaction.
pub(crate) fn pick(rng: &mut Rng, params: &TxnParams, next_value: &mut u32) -> Pick {
    if !rng.gen_ratio(PIPELINED_SHARE, 100) {
        return Pick::Normal(txn_workload::pick(rng, params, next_value));
    }
    let keys = params.keys;
    let mut fresh = || {
        *next_value += 1;
        *next_value
    };
    let transfer = (keys.accounts >= 2 && rng.gen_ratio(1, 2)).then(|| {
        let from = rng.gen_range(0, u64::from(keys.accounts)) as u32;
        let to = (from + 1 + rng.gen_range(0, u64::from(keys.accounts) - 1) as u32) % keys.accounts;
        (from, to, rng.gen_range(1, 51))
    });
    let n = rng.gen_range(2, 9) as usize;
    let mut writes: Vec<(String, PipeWrite)> = Vec::new();
    // One transaction in eight inserts a register it does not otherwise
    // write: the flush fails with `KeyExists` if it exists.
    let insert = rng.gen_ratio(1, 8).then(|| rng.gen_range(0, u64::from(keys.registers)) as u32);
    for _ in 0..n {
        let k = rng.gen_range(0, u64::from(keys.registers)) as u32;
        if Some(k) == insert {
            continue;
        }
        let w = if rng.gen_ratio(1, 6) {
            PipeWrite::Delete
        } else {
            PipeWrite::Put(register_value(fresh()))
        };
        writes.push((register(k), w));
    }
    if let Some(k) = insert {
        let at = rng.gen_range(0, writes.len() as u64 + 1) as usize;
        writes.insert(at, (register(k), PipeWrite::Insert(register_value(fresh()))));
    }
    let total = writes.len() + if transfer.is_some() { 2 } else { 0 };
    // Mostly quick writers; one in six pauses for seconds, so heartbeats
    // beat and readers meet its locks alive.
    let slow = rng.gen_ratio(1, 6);
    let pauses = (0..total)
        .map(|_| match (slow, rng.gen_range(0, 4)) {
            (_, 0) => Duration::ZERO,
            (true, _) => Duration::from_millis(rng.gen_range(300, 2500)),
            (false, _) => Duration::from_millis(rng.gen_range(1, 40)),
        })
        .collect();
    let all = keys.all();
    let some_keys = |rng: &mut Rng| -> Vec<String> {
        let mut ks: Vec<String> = all.iter().filter(|_| rng.gen_ratio(1, 2)).cloned().collect();
        ks.sort();
        ks
    };
    let mid_reads = some_keys(rng);
    let end_reads = some_keys(rng);
    let thresholds = FlushThresholds {
        min_keys: rng.gen_range(1, 4) as usize,
        min_bytes: 1,
        // Now and then the force threshold: the writer waits for the
        // flush in flight instead of growing the buffer.
        force_bytes: if rng.gen_ratio(1, 4) { 1 } else { usize::MAX },
    };
    let mut final_ops: BTreeMap<u32, RegOp> = BTreeMap::new();
    for (k, w) in &writes {
        let i: u32 = k[1..].parse().unwrap_or(0);
        let v = |s: &str| s[1..].parse().unwrap_or(0);
        final_ops.insert(
            i,
            match w {
                PipeWrite::Put(s) => RegOp::Put(i, v(s)),
                PipeWrite::Insert(s) => RegOp::Insert(i, v(s)),
                PipeWrite::Delete => RegOp::Delete(i),
            },
        );
    }
    let kind = match transfer {
        Some((from, to, amount)) => TxnKind::Transfer { from, to, amount },
        None => TxnKind::Registers(final_ops.into_values().collect()),
    };
    let spec = TxnSpec {
        kind,
        read_method: super::txn_history::ReadMethod::BatchGet,
        opts: Default::default(),
    };
    let mid_at = rng.gen_range(0, total as u64 + 1) as usize;
    Pick::Pipelined(
        spec,
        PipeSpec { transfer, writes, pauses, mid_at, mid_reads, end_reads, thresholds },
    )
}

/// Where a pipelined transaction was when it last moved (its stage when
/// its client crashed).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Stage {
    #[default]
    Writing,
    /// A generation was flushing (or had been flushed) before the commit.
    Flushed,
    /// The commit (last flush, commit ts, the primary's commit) ran.
    Committing,
    /// The result was reported; the range resolution and broadcasts ran.
    Resolving,
    Done,
}

/// What one pipelined transaction did, shared between its program and the
/// world (the program is dropped when its client crashes).
#[derive(Clone, Debug, Default)]
pub(crate) struct PipeRecord {
    pub(crate) start_ts: Option<u64>,
    pub(crate) stage: Stage,
    pub(crate) generations: u64,
    pub(crate) buffer_gets: u64,
    pub(crate) beats: u64,
}

type Records = Rc<RefCell<BTreeMap<usize, PipeRecord>>>;

/// Counters of the pipelined world.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipeStats {
    /// Pipelined transactions run, and those committed.
    pub txns: (usize, usize),
    /// Generations handed to a flush.
    pub generations: u64,
    /// Pipelined transactions that flushed more than one generation.
    pub multi_generation: usize,
    /// `BufferBatchGet` reads of own flushed writes.
    pub buffer_gets: u64,
    /// Heartbeats TiKV accepted.
    pub beats: u64,
    /// Pipelined transactions whose client crashed: while writing and
    /// flushing, in the commit, after the primary's commit (at the commit
    /// point or during the range resolution).
    pub crashed: (usize, usize, usize),
}

/// The pipelined world's state: which transactions are pipelined and what
/// they did.
#[derive(Default)]
pub(crate) struct PipeWorld {
    records: Records,
}

impl PipeWorld {
    fn start_ts_of_pipelined(&self) -> BTreeSet<u64> {
        self.records.borrow().values().filter_map(|r| r.start_ts).collect()
    }
}

/// The planned writes as the checker sees them: the last write of each
/// key, in key order.
pub(crate) fn final_writes(plan: &[(String, PipeWrite)]) -> Vec<(String, TxnWrite)> {
    let mut last: BTreeMap<String, TxnWrite> = BTreeMap::new();
    for (k, w) in plan {
        last.insert(
            k.clone(),
            match w {
                PipeWrite::Put(v) | PipeWrite::Insert(v) => TxnWrite::Put(v.clone()),
                PipeWrite::Delete => TxnWrite::Delete,
            },
        );
    }
    last.into_iter().collect()
}

/// Transaction `id`'s transfer `(from, to, amount)` read `pairs` of its two
/// accounts: if `from` holds the amount, its write goes first in `plan`
/// and `to`'s last, so they land in different generations. Returns the
/// reads as the history records them.
pub(crate) fn plan_transfer(
    (from, to, amount): (u32, u32, u64),
    id: usize,
    pairs: &[KvPair],
    plan: &mut Vec<(String, PipeWrite)>,
) -> Vec<(String, Option<String>)> {
    let (a, b) = (account(from), account(to));
    let mut found: BTreeMap<String, Option<String>> =
        [(a.clone(), None), (b.clone(), None)].into_iter().collect();
    for p in pairs {
        found.insert(text(p.key.as_bytes()), Some(text(&p.value)));
    }
    let bal = |k: &str| parse_balance(found.get(k).cloned().flatten().as_deref());
    if let (Some(x), Some(y)) = (bal(&a), bal(&b))
        && x >= amount
    {
        plan.insert(0, (a, PipeWrite::Put(balance_value(x - amount, id))));
        plan.push((b, PipeWrite::Put(balance_value(y + amount, id))));
    }
    found.into_iter().collect()
}

/// What a pipelined transaction may take beyond the transactional
/// liveness bound: it also flushes generations (each with its own budget)
/// and its writer pauses between writes.
pub(crate) fn liveness_extra() -> Duration {
    let flush =
        tikv_core::config::Config::default().budget(tikv_core::txn::pipelined::FLUSH_BUDGET);
    flush * 3 + Duration::from_secs(30)
}

/// Counters of the pipelined transactions `records` of `history`;
/// `crashed(entry)` tells whether a client crash struck it (its stage
/// then says where).
pub(crate) fn tally(
    records: &BTreeMap<usize, PipeRecord>,
    history: &TxnHistory,
    crashed: impl Fn(usize) -> bool,
) -> PipeStats {
    let mut stats = PipeStats::default();
    for (&entry, r) in records {
        let e = &history.entries[entry];
        stats.txns.0 += 1;
        stats.txns.1 += usize::from(matches!(e.outcome, TxnOutcome::Committed { .. }));
        stats.generations += r.generations;
        stats.multi_generation += usize::from(r.generations > 1);
        stats.buffer_gets += r.buffer_gets;
        stats.beats += r.beats;
        if crashed(entry) {
            match r.stage {
                Stage::Writing | Stage::Flushed => stats.crashed.0 += 1,
                Stage::Committing => stats.crashed.1 += 1,
                Stage::Resolving | Stage::Done => stats.crashed.2 += 1,
            }
        }
    }
    stats
}

// ------------------------------------------------------------- the program

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Tag {
    Main(u64),
    Flush(u64),
    KeepAlive,
    Resolve,
    Broadcast(u64),
}

enum Main {
    Timestamp(GetTimestamp),
    Snapshot(Box<SnapshotBatchGet>),
    BufferGet(Box<KeyFanout<BufferBatchGetPlan>>),
    Commit(Box<PipelinedCommit>),
}

macro_rules! each_main {
    ($main:expr, $op:ident => $body:expr) => {
        match $main {
            Main::Timestamp($op) => $body,
            Main::Snapshot($op) => $body,
            Main::BufferGet($op) => $body,
            Main::Commit($op) => $body,
        }
    };
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    /// The transfer's snapshot read.
    TransferRead,
    Writing,
    /// Waiting for the flush in flight before the next write, a read-back
    /// or the commit.
    WaitFlush(After),
    /// Reading keys back (`BufferBatchGet`, then the snapshot).
    ReadBack(After),
    Committing,
    /// Failed before the commit: the rollback waits for the flush in
    /// flight.
    RollingBack,
    /// The background end: resolution, broadcasts.
    Tail,
    Done,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum After {
    Write,
    MidRead,
    EndRead,
    Commit,
}

/// One pipelined transaction of a simulated client (module docs).
pub(crate) struct PipelinedProgram {
    view: Arc<ClusterView>,
    id: usize,
    spec: PipeSpec,
    bug: Option<Bug>,
    records: Records,
    buffer: PipelinedBuffer,
    /// The writes in order (the transfer's included, once planned).
    plan: Vec<(String, PipeWrite)>,
    next_write: usize,
    pause_until: Option<Instant>,
    phase: Phase,
    main: Option<Main>,
    epoch: u64,
    flush: Option<(u64, FlushGeneration)>,
    keep_alive: Option<PipelinedKeepAlive>,
    status: Option<Arc<PipelinedTxnStatus>>,
    resolve: Option<RangeTaskRunner<ResolveFlushedHandler>>,
    broadcasts: Vec<(u64, BroadcastTxnStatus)>,
    broadcast_count: u64,
    /// When the completion broadcast goes out (grace period), with the
    /// commit ts.
    complete_at: Option<(Instant, Timestamp)>,
    primary: Option<Key>,
    failed: Option<Error>,
    commit_ts: Timestamp,
    /// Keys being read back, and those of them left for the snapshot.
    reading: Vec<Key>,
    from_snapshot: Vec<Key>,
    read_found: BTreeMap<Key, Option<Value>>,
    ids: IdMap<Tag>,
    run: TxnRun,
    /// When the start ts came: each flush's lock TTL counts from here.
    started_at: Instant,
    result: Option<(TxnRun, TxnOutcome)>,
    reported: bool,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

impl PipelinedProgram {
    pub(crate) fn new(
        view: Arc<ClusterView>,
        id: usize,
        spec: PipeSpec,
        bug: Option<Bug>,
        records: Records,
    ) -> PipelinedProgram {
        records.borrow_mut().insert(id, PipeRecord::default());
        let buffer = PipelinedBuffer::new(spec.thresholds);
        PipelinedProgram {
            view,
            id,
            plan: spec.writes.clone(),
            spec,
            bug,
            records,
            buffer,
            next_write: 0,
            pause_until: None,
            phase: Phase::Start,
            main: None,
            epoch: 0,
            flush: None,
            keep_alive: None,
            status: None,
            resolve: None,
            broadcasts: Vec::new(),
            broadcast_count: 0,
            complete_at: None,
            primary: None,
            failed: None,
            commit_ts: Timestamp::ZERO,
            reading: Vec::new(),
            from_snapshot: Vec::new(),
            read_found: BTreeMap::new(),
            ids: IdMap::new(),
            run: TxnRun::default(),
            started_at: Instant::ZERO,
            result: None,
            reported: false,
        }
    }

    fn record(&self, f: impl FnOnce(&mut PipeRecord)) {
        if let Some(r) = self.records.borrow_mut().get_mut(&self.id) {
            f(r);
        }
    }

    fn start_ts(&self) -> Timestamp {
        Timestamp::from_version(self.run.start_ts.unwrap_or_default())
    }

    fn set_main(&mut self, mut op: Main, now: Instant) {
        self.epoch += 1;
        each_main!(&mut op, o => o.start(now));
        self.main = Some(op);
    }

    fn report(&mut self, outcome: TxnOutcome) {
        if !self.reported {
            self.reported = true;
            self.result = Some((self.run.clone(), outcome));
        }
    }

    /// The planned writes as the checker sees them: the last write of
    /// each key.
    fn final_writes(&self) -> Vec<(String, TxnWrite)> {
        final_writes(&self.plan)
    }

    /// The transfer's reads are in: plan its writes around the registers'.
    fn plan_transfer(&mut self, pairs: Vec<KvPair>) {
        let Some(transfer) = self.spec.transfer else { return };
        self.run.reads = plan_transfer(transfer, self.id, &pairs, &mut self.plan);
    }

    fn begin_writing(&mut self, now: Instant) {
        self.run.writes = self.final_writes();
        self.phase = Phase::Writing;
        self.advance(now);
    }

    fn choose_primary(&mut self, flush: &Flush) {
        if self.primary.is_none() {
            let writes = flush.mutations.iter().find(|m| m.op != kvrpcpb::Op::CheckNotExists);
            self.primary = writes.or(flush.mutations.first()).map(|m| m.key.clone());
        }
    }

    fn flush_request(&self, generation: u64) -> FlushRequest {
        FlushRequest {
            start_ts: self.start_ts(),
            primary: self.primary.clone().unwrap_or_default(),
            generation,
            assertion_level: kvrpcpb::AssertionLevel::Off,
            tags: RequestTags::default(),
            started_at: self.started_at,
        }
    }

    /// Flushes `flush` in the background (the driver's `spawn_flush`).
    fn start_flush(&mut self, flush: Flush, now: Instant) {
        self.choose_primary(&flush);
        let generation = flush.generation;
        self.record(|r| {
            r.generations = generation;
            r.stage = r.stage.max_stage(Stage::Flushed);
        });
        if self.bug == Some(Bug::PipelinedSkipsAGeneration) && generation == 2 {
            // Broken: the generation is reported flushed without a request.
            let _ = self.buffer.flush_finished(Ok(()));
            return;
        }
        let req = self.flush_request(generation);
        let mut op = FlushGeneration::new(self.view.clone(), req, flush.mutations);
        if let Some(written) = self.start_keep_alive(now) {
            op = op.signal_primary_written(written);
        }
        op.start(now);
        self.flush = Some((generation, op));
        self.check_flush();
    }

    /// The flush in flight ended: the first success starts the heartbeats,
    /// a failure fails the transaction.
    fn check_flush(&mut self) {
        let Some((_, op)) = self.flush.as_mut() else { return };
        let Some(result) = op.poll_result() else { return };
        self.flush = None;
        if let Err(e) = self.buffer.flush_finished(result) {
            self.failed.get_or_insert(e);
        }
    }

    /// With the first generation's flush, the heartbeats, which beat once
    /// the primary's lock is written (client-go starts them then); the
    /// flag the flush sets.
    fn start_keep_alive(&mut self, now: Instant) -> Option<Arc<AtomicBool>> {
        if self.keep_alive.is_some() || self.status.is_some() {
            return None;
        }
        let primary = self.primary.clone()?;
        let written = Arc::new(AtomicBool::new(false));
        let mut op = PipelinedKeepAlive::new(
            self.view.clone(),
            self.start_ts(),
            primary,
            RequestTags::default(),
        )
        .after_primary_written(written.clone());
        self.status = Some(op.status());
        op.start(now);
        self.keep_alive = Some(op);
        Some(written)
    }

    fn min_commit_ts(&self) -> Timestamp {
        let start = self.start_ts();
        self.status.as_ref().map_or(start, |s| s.min_commit_ts().max(start))
    }

    fn broadcast(&mut self, status: TxnStatusUpdate, now: Instant) {
        let mut op =
            BroadcastTxnStatus::new(self.view.clone(), vec![status], RequestTags::default());
        op.start(now);
        self.broadcast_count += 1;
        self.broadcasts.push((self.broadcast_count, op));
    }

    /// Writes are refused once a flush failed or the heartbeats stopped.
    fn writable(&self) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.status.as_ref().is_some_and(|s| s.stopped()) {
            return Err(Error::InvalidArgument("the heartbeats stopped".into()));
        }
        Ok(())
    }

    /// A definite failure before the commit: report it and roll back every
    /// flushed lock in the background (the driver's `spawn_rollback`).
    fn fail(&mut self, e: Error, now: Instant) {
        self.failed.get_or_insert(e);
        self.keep_alive = None;
        self.main = None;
        // The flush in flight first: its locks are in the range too (the
        // driver's rollback waits for it, and so does the caller).
        self.phase = Phase::RollingBack;
        self.step(now);
    }

    /// The background end with `commit_ts` (zero: rolled back).
    fn start_tail(&mut self, commit_ts: Timestamp, now: Instant) {
        self.phase = Phase::Tail;
        self.record(|r| r.stage = r.stage.max_stage(Stage::Resolving));
        let Some(range) = self.buffer.flushed_range().cloned() else { return };
        let status = if commit_ts == Timestamp::ZERO {
            TxnStatusUpdate::rolled_back(self.start_ts(), self.min_commit_ts(), false)
        } else {
            TxnStatusUpdate::committed(self.start_ts(), self.min_commit_ts(), commit_ts)
        };
        self.broadcast(status, now);
        let mut op = resolve_flushed(
            &self.view,
            range,
            self.start_ts(),
            commit_ts,
            RESOLVE_FLUSHED_CONCURRENCY,
        );
        op.start(now);
        self.resolve = Some(op);
        self.commit_ts = commit_ts;
    }

    /// Reads `keys` back over the transaction's writes: memory, then the
    /// reads cached since the last flush, then `BufferBatchGet`, then the
    /// snapshot.
    fn read_back(&mut self, keys: Vec<String>, after: After, now: Instant) {
        self.read_found.clear();
        self.reading = keys.into_iter().map(Key::from).collect();
        self.from_snapshot.clear();
        let mut flushed = Vec::new();
        for key in self.reading.clone() {
            match self.buffer.get_local(key.as_bytes()) {
                LocalRead::Put(v) => {
                    self.read_found.insert(key, Some(v));
                }
                LocalRead::Deleted => {
                    self.read_found.insert(key, None);
                }
                LocalRead::NotInMemory => match self.buffer.cached_flushed(key.as_bytes()) {
                    Some(Some(v)) => {
                        let v = (!v.is_empty()).then_some(v);
                        self.read_found.insert(key, v);
                    }
                    Some(None) => self.from_snapshot.push(key),
                    None if self.buffer.generation() > 0 => flushed.push(key),
                    None => self.from_snapshot.push(key),
                },
            }
        }
        self.phase = Phase::ReadBack(after);
        if !flushed.is_empty() {
            self.record(|r| r.buffer_gets += 1);
            let op =
                buffer_batch_get(&self.view, flushed, self.start_ts(), &RequestTags::default());
            self.set_main(Main::BufferGet(Box::new(op)), now);
        } else {
            self.read_snapshot(now);
        }
    }

    fn read_snapshot(&mut self, now: Instant) {
        if self.from_snapshot.is_empty() {
            self.after_read_back(now);
            return;
        }
        let op = SnapshotBatchGet::new(
            self.view.clone(),
            self.from_snapshot.clone(),
            self.start_ts(),
            ReadOptions::default(),
        );
        self.set_main(Main::Snapshot(Box::new(op)), now);
    }

    /// Records what was read back: a key the transaction writes again
    /// later is left out (the checker holds reads against the last write).
    fn after_read_back(&mut self, now: Instant) {
        let Phase::ReadBack(after) = self.phase else { return };
        let later: BTreeSet<&String> =
            self.plan[self.next_write..].iter().map(|(k, _)| k).collect();
        for key in &self.reading {
            let k = text(key.as_bytes());
            if later.contains(&k) {
                continue;
            }
            let v = self.read_found.get(key).cloned().flatten();
            self.run.own_reads.push((k, v.map(|v| text(&v))));
        }
        self.reading.clear();
        self.phase = match after {
            After::EndRead => Phase::WaitFlush(After::Commit),
            _ => Phase::Writing,
        };
        self.advance(now);
    }

    fn commit(&mut self, now: Instant) {
        if let Err(e) = self.writable() {
            return self.fail(e, now);
        }
        let last = match self.buffer.start_flush(true) {
            Ok(FlushStart::Started(flush)) => {
                self.choose_primary(&flush);
                let generation = flush.generation;
                self.record(|r| r.generations = generation);
                Some(flush)
            }
            Ok(_) => None,
            Err(e) => return self.fail(e, now),
        };
        let (Some(primary), Some(range)) =
            (self.primary.clone(), self.buffer.flushed_range().cloned())
        else {
            // Nothing written: read-only, committed at its start.
            self.report(TxnOutcome::Committed { commit_ts: self.start_ts().version(), mode: None });
            self.phase = Phase::Done;
            self.record(|r| r.stage = Stage::Done);
            return;
        };
        self.record(|r| r.stage = r.stage.max_stage(Stage::Committing));
        let req = PipelinedCommitRequest {
            start_ts: self.start_ts(),
            primary,
            flushed_range: range,
            flush_concurrency: 1 + (self.id % 4),
            resolve_concurrency: RESOLVE_FLUSHED_CONCURRENCY,
            tags: RequestTags::default(),
        };
        let last = last.map(|f| (self.flush_request(f.generation), f.mutations));
        let op = PipelinedCommit::new(self.view.clone(), req, last);
        self.phase = Phase::Committing;
        self.set_main(Main::Commit(Box::new(op)), now);
    }

    fn after_commit(
        &mut self,
        op: &mut PipelinedCommit,
        result: Result<Timestamp, Error>,
        now: Instant,
    ) {
        let _ = self.buffer.flush_finished(Ok(()));
        self.keep_alive = None;
        let outcome = match &result {
            Ok(ts) => {
                TxnOutcome::Committed { commit_ts: ts.version(), mode: Some(CommitMode::TwoPhase) }
            }
            Err(Error::Undetermined(why)) => TxnOutcome::Undetermined(why.clone()),
            Err(e) => TxnOutcome::Failed(e.to_string()),
        };
        self.report(outcome);
        match op.take_follow_up() {
            Some(runner) => {
                let commit_ts = result.unwrap_or(Timestamp::ZERO);
                let status = if commit_ts == Timestamp::ZERO {
                    TxnStatusUpdate::rolled_back(self.start_ts(), self.min_commit_ts(), false)
                } else {
                    TxnStatusUpdate::committed(self.start_ts(), self.min_commit_ts(), commit_ts)
                };
                self.phase = Phase::Tail;
                self.record(|r| r.stage = r.stage.max_stage(Stage::Resolving));
                self.broadcast(status, now);
                let mut runner = runner;
                runner.start(now);
                self.resolve = Some(runner);
                self.commit_ts = commit_ts;
            }
            None => {
                self.phase = Phase::Tail;
                self.record(|r| r.stage = r.stage.max_stage(Stage::Resolving));
            }
        }
    }

    /// Moves the transaction on as far as it can go now.
    fn advance(&mut self, now: Instant) {
        self.check_flush();
        if let Some(s) = &self.status {
            let beats = s.beats();
            self.record(|r| r.beats = beats);
        }
        self.check_tail(now);
        loop {
            let before = (self.phase, self.epoch, self.next_write, self.pause_until);
            self.step(now);
            if before == (self.phase, self.epoch, self.next_write, self.pause_until) {
                break;
            }
        }
    }

    fn step(&mut self, now: Instant) {
        match self.phase {
            Phase::Start | Phase::TransferRead | Phase::Committing | Phase::ReadBack(_) => {
                self.check_main(now)
            }
            Phase::Tail => self.check_tail(now),
            Phase::Done => {}
            Phase::WaitFlush(after) => {
                if self.flush.is_some() {
                    return;
                }
                match after {
                    After::Commit => self.commit(now),
                    After::Write => {
                        if let Err(e) = self.writable() {
                            return self.fail(e, now);
                        }
                        self.phase = Phase::Writing;
                        // The buffer was at its force threshold: hand it
                        // off now that the flush in flight is done.
                        self.hand_off(now);
                    }
                    After::MidRead => {
                        let keys = self.spec.mid_reads.clone();
                        self.read_back(keys, After::MidRead, now);
                    }
                    After::EndRead => {
                        let keys = self.spec.end_reads.clone();
                        self.read_back(keys, After::EndRead, now);
                    }
                }
            }
            Phase::Writing => self.write(now),
            Phase::RollingBack => {
                if self.flush.is_none() {
                    let why = self.failed.as_ref().map(Error::to_string).unwrap_or_default();
                    self.report(TxnOutcome::Failed(why));
                    self.start_tail(Timestamp::ZERO, now);
                }
            }
        }
    }

    /// Hands the buffer off if a flush is due.
    fn hand_off(&mut self, now: Instant) {
        if !self.buffer.flush_due() {
            return;
        }
        match self.buffer.start_flush(false) {
            Ok(FlushStart::Started(flush)) => self.start_flush(flush, now),
            Ok(FlushStart::WaitForFlushInFlight) => self.phase = Phase::WaitFlush(After::Write),
            Ok(FlushStart::NotDue) => {}
            Err(e) => self.fail(e, now),
        }
    }

    fn write(&mut self, now: Instant) {
        if self.pause_until.is_some_and(|t| t > now) {
            return;
        }
        self.pause_until = None;
        if let Err(e) = self.writable() {
            return self.fail(e, now);
        }
        if self.next_write == self.spec.mid_at && !self.spec.mid_reads.is_empty() {
            // Once: a read-back in the middle.
            self.spec.mid_at = usize::MAX;
            self.phase = Phase::WaitFlush(After::MidRead);
            // A read need not wait for the flush: it reads the generation
            // in flight from memory.
            let keys = self.spec.mid_reads.clone();
            self.read_back(keys, After::MidRead, now);
            return;
        }
        let Some((key, w)) = self.plan.get(self.next_write).cloned() else {
            let keys = self.spec.end_reads.clone();
            if keys.is_empty() {
                self.phase = Phase::WaitFlush(After::Commit);
            } else {
                self.read_back(keys, After::EndRead, now);
            }
            return;
        };
        let applied = match w {
            PipeWrite::Put(v) => self.buffer.put(key.as_bytes(), v.into_bytes()),
            PipeWrite::Insert(v) => self.buffer.insert(key.as_bytes(), v.into_bytes()),
            PipeWrite::Delete => self.buffer.delete(key.as_bytes()),
        };
        if let Err(e) = applied {
            return self.fail(e, now);
        }
        let pause = self.spec.pauses.get(self.next_write).copied().unwrap_or_default();
        self.next_write += 1;
        self.hand_off(now);
        if pause > Duration::ZERO && self.phase == Phase::Writing {
            self.pause_until = Some(now + pause);
        }
    }

    fn check_main(&mut self, now: Instant) {
        let Some(main) = self.main.as_mut() else {
            if self.phase == Phase::Start {
                self.phase = Phase::TransferRead;
                self.set_main(Main::Timestamp(GetTimestamp::new()), now);
            }
            return;
        };
        match main {
            Main::Timestamp(op) => match op.poll_result() {
                None => {}
                Some(Err(e)) => {
                    self.main = None;
                    self.report(TxnOutcome::Failed(e.to_string()));
                    self.phase = Phase::Done;
                }
                Some(Ok(ts)) => {
                    self.main = None;
                    self.run.start_ts = Some(ts.version());
                    self.started_at = now;
                    self.record(|r| r.start_ts = Some(ts.version()));
                    match self.spec.transfer {
                        Some((from, to, _)) => {
                            let keys = vec![Key::from(account(from)), Key::from(account(to))];
                            let op = SnapshotBatchGet::new(
                                self.view.clone(),
                                keys,
                                ts,
                                ReadOptions::default(),
                            );
                            self.set_main(Main::Snapshot(Box::new(op)), now);
                        }
                        None => self.begin_writing(now),
                    }
                }
            },
            Main::Snapshot(op) => match op.poll_result() {
                None => {}
                Some(Err(e)) => {
                    self.main = None;
                    self.fail(e, now);
                }
                Some(Ok(pairs)) => {
                    self.main = None;
                    if self.phase == Phase::TransferRead {
                        self.plan_transfer(pairs);
                        self.begin_writing(now);
                    } else {
                        for p in pairs {
                            self.read_found.insert(p.key, Some(p.value));
                        }
                        self.after_read_back(now);
                    }
                }
            },
            Main::BufferGet(op) => match op.poll_result() {
                None => {}
                Some(Err(e)) => {
                    self.main = None;
                    self.fail(e, now);
                }
                Some(Ok(found)) => {
                    self.main = None;
                    let asked: Vec<Key> = self
                        .reading
                        .iter()
                        .filter(|k| !self.read_found.contains_key(*k))
                        .filter(|k| !self.from_snapshot.contains(k))
                        .cloned()
                        .collect();
                    for key in asked {
                        match found.binary_search_by(|p| p.key.cmp(&key)) {
                            Ok(i) => {
                                let value = found[i].value.clone();
                                self.buffer.record_flushed_read(key.clone(), Some(value.clone()));
                                self.read_found.insert(key, (!value.is_empty()).then_some(value));
                            }
                            Err(_) => {
                                self.buffer.record_flushed_read(key.clone(), None);
                                self.from_snapshot.push(key);
                            }
                        }
                    }
                    self.read_snapshot(now);
                }
            },
            Main::Commit(op) => {
                let Some(result) = op.poll_result() else { return };
                let Some(Main::Commit(mut op)) = self.main.take() else { return };
                self.after_commit(&mut op, result, now);
            }
        }
    }

    /// The background end: the resolution, then the completion broadcast
    /// after the grace period; broadcasts end on their own.
    fn check_tail(&mut self, now: Instant) {
        self.broadcasts.retain_mut(|(_, op)| op.poll_result().is_none());
        if let Some(op) = self.resolve.as_mut()
            && let Some(result) = op.poll_result()
        {
            self.resolve = None;
            if result.is_ok() {
                self.complete_at = Some((now + BROADCAST_GRACE_PERIOD, self.commit_ts));
            }
        }
        if let Some((at, commit_ts)) = self.complete_at
            && at <= now
        {
            self.complete_at = None;
            self.broadcast(TxnStatusUpdate::completed(self.start_ts(), commit_ts), now);
        }
        if self.phase == Phase::Tail
            && self.resolve.is_none()
            && self.complete_at.is_none()
            && self.broadcasts.is_empty()
            && self.flush.is_none()
        {
            self.phase = Phase::Done;
            self.record(|r| r.stage = Stage::Done);
        }
    }
}

impl Stage {
    pub(crate) fn max_stage(self, other: Stage) -> Stage {
        let rank = |s: Stage| match s {
            Stage::Writing => 0,
            Stage::Flushed => 1,
            Stage::Committing => 2,
            Stage::Resolving => 3,
            Stage::Done => 4,
        };
        if rank(other) > rank(self) { other } else { self }
    }
}

/// [`Bug::PipelinedResolvesAtTheWrongTs`]: how far past the real commit
/// ts the broken resolution commits the flushed range (10 ms).
const WRONG_TS_SHIFT: u64 = 10 << 18;

impl SimOp for PipelinedProgram {
    fn start(&mut self, now: Instant) {
        self.advance(now);
    }

    fn poll_rpc(&mut self, _now: Instant) -> Option<Rpc> {
        if let Some(main) = self.main.as_mut()
            && let Some(rpc) = each_main!(main, op => op.poll_rpc())
        {
            if self.bug == Some(Bug::PipelinedCommittedBeforeThePrimary)
                && let Request::Kv(KvRequest::Commit(c)) = &rpc.request
            {
                // Broken: committed as soon as the primary's commit is sent.
                let outcome = TxnOutcome::Committed {
                    commit_ts: c.commit_version,
                    mode: Some(CommitMode::TwoPhase),
                };
                self.report(outcome);
            }
            return Some(self.ids.wrap(Tag::Main(self.epoch), rpc));
        }
        if let Some((generation, op)) = self.flush.as_mut()
            && let Some(rpc) = op.poll_rpc()
        {
            let tag = Tag::Flush(*generation);
            return Some(self.ids.wrap(tag, rpc));
        }
        if let Some(rpc) = self.keep_alive.as_mut().and_then(|op| op.poll_rpc()) {
            return Some(self.ids.wrap(Tag::KeepAlive, rpc));
        }
        if let Some(mut rpc) = self.resolve.as_mut().and_then(|op| op.poll_rpc()) {
            if self.bug == Some(Bug::PipelinedResolvesAtTheWrongTs)
                && let Request::Kv(KvRequest::ResolveLock(r)) = &mut rpc.request
                && r.commit_version != 0
            {
                r.commit_version += WRONG_TS_SHIFT;
            }
            return Some(self.ids.wrap(Tag::Resolve, rpc));
        }
        for (n, op) in &mut self.broadcasts {
            if let Some(rpc) = op.poll_rpc() {
                let tag = Tag::Broadcast(*n);
                return Some(self.ids.wrap(tag, rpc));
            }
        }
        None
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((tag, id)) = self.ids.take(id) else { return };
        match tag {
            Tag::Main(epoch) if epoch == self.epoch => {
                if let Some(main) = self.main.as_mut() {
                    each_main!(main, op => op.on_response(id, response, now));
                }
            }
            Tag::Main(_) => {}
            Tag::Flush(generation) => {
                if let Some((g, op)) = self.flush.as_mut()
                    && *g == generation
                {
                    op.on_response(id, response, now);
                }
            }
            Tag::KeepAlive => {
                if let Some(op) = self.keep_alive.as_mut() {
                    op.on_response(id, response, now);
                }
            }
            Tag::Resolve => {
                if let Some(op) = self.resolve.as_mut() {
                    op.on_response(id, response, now);
                }
            }
            Tag::Broadcast(n) => {
                if let Some((_, op)) = self.broadcasts.iter_mut().find(|(m, _)| *m == n) {
                    op.on_response(id, response, now);
                }
            }
        }
        self.advance(now);
    }

    fn on_timeout(&mut self, now: Instant) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if let Some(main) = self.main.as_mut()
            && due(each_main!(main, op => op.poll_timeout()))
        {
            each_main!(main, op => op.on_timeout(now));
        }
        if let Some((_, op)) = self.flush.as_mut()
            && due(op.poll_timeout())
        {
            op.on_timeout(now);
        }
        if let Some(op) = self.keep_alive.as_mut()
            && due(op.poll_timeout())
        {
            op.on_timeout(now);
        }
        if let Some(op) = self.resolve.as_mut()
            && due(op.poll_timeout())
        {
            op.on_timeout(now);
        }
        for (_, op) in &mut self.broadcasts {
            if due(op.poll_timeout()) {
                op.on_timeout(now);
            }
        }
        self.advance(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        use tikv_core::time::earliest;
        let mut t = self.main.as_ref().and_then(|m| each_main!(m, op => op.poll_timeout()));
        t = earliest(t, self.flush.as_ref().and_then(|(_, op)| op.poll_timeout()));
        t = earliest(t, self.keep_alive.as_ref().and_then(|op| op.poll_timeout()));
        t = earliest(t, self.resolve.as_ref().and_then(|op| op.poll_timeout()));
        for (_, op) in &self.broadcasts {
            t = earliest(t, op.poll_timeout());
        }
        if self.phase == Phase::Writing {
            t = earliest(t, self.pause_until);
        }
        earliest(t, self.complete_at.map(|(at, _)| at))
    }

    fn poll_result(&mut self) -> Option<Finished> {
        self.result.take().map(|(run, outcome)| Finished::Txn(Box::new((run, outcome))))
    }

    fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// From the first flush on, the transaction has locks in TiKV: a crash
    /// leaves them behind.
    fn committing(&self) -> bool {
        self.buffer.generation() > 0 && !matches!(self.phase, Phase::Tail | Phase::Done)
    }

    fn progress(&self) -> Option<TxnRun> {
        Some(self.run.clone())
    }
}

// ---------------------------------------------------------------- the world

impl World {
    /// (pipelined) Client `c`'s next transaction: pipelined or not.
    pub(super) fn pipe_issue(&mut self, c: usize) {
        let Some(t) = self.txn.as_mut() else { return };
        match pick(&mut self.rng, &t.params, &mut t.next_value) {
            Pick::Normal(spec) => self.launch_txn(c, spec),
            Pick::Pipelined(spec, pipe) => self.launch_txn_with(c, spec, Some(pipe)),
        }
    }

    /// The program of a pipelined transaction (history entry `entry`).
    pub(super) fn pipe_program(
        &mut self,
        c: usize,
        entry: usize,
        pipe: PipeSpec,
    ) -> Box<dyn SimOp> {
        let records = self.pipe.get_or_insert_with(PipeWorld::default).records.clone();
        let t = &pipe.thresholds;
        let writes: Vec<String> = pipe
            .writes
            .iter()
            .map(|(k, w)| match w {
                PipeWrite::Put(v) => format!("{k}={v}"),
                PipeWrite::Insert(v) => format!("{k}:={v}"),
                PipeWrite::Delete => format!("{k} deleted"),
            })
            .collect();
        self.log(format!(
            "c{c} txn{entry} is pipelined: writes [{}], flush at {} keys{}",
            writes.join(" "),
            t.min_keys,
            if t.force_bytes == 1 { ", writer waits for each flush" } else { "" }
        ));
        let view = self.clients[c].view.clone();
        Box::new(PipelinedProgram::new(view, entry, pipe, self.bug, records))
    }

    /// Serves a store request, breaking it as [`Bug::PipelinedResolveRefused`]
    /// says: a `ResolveLock` of a pipelined transaction is refused (a key
    /// error, so its callers fail at once rather than retry).
    pub(super) fn pipe_serve_kv(
        &mut self,
        c: usize,
        store: u64,
        req: KvRequest,
    ) -> Result<KvResponse, RpcError> {
        if self.bug == Some(Bug::PipelinedResolveRefused)
            && let KvRequest::ResolveLock(r) = &req
            && self
                .pipe
                .as_ref()
                .is_some_and(|p| p.start_ts_of_pipelined().contains(&r.start_version))
        {
            let error =
                kvrpcpb::KeyError { abort: "bug: resolve refused".into(), ..Default::default() };
            let resp = kvrpcpb::ResolveLockResponse { error: Some(error), ..Default::default() };
            return Ok(KvResponse::ResolveLock(Box::new(resp)));
        }
        self.gc_serve_kv(c, store, req)
    }

    /// (pipelined) The atomicity check and the counters, after the run.
    pub(super) fn pipe_finish(&mut self, history: &TxnHistory, fates: &Fates) {
        let Some(p) = self.pipe.take() else { return };
        let records = p.records.borrow().clone();
        let stats = tally(&records, history, |entry| history.entries[entry].crashed);
        let pipelined: BTreeSet<usize> = records.keys().copied().collect();
        for v in check_atomicity(history, fates, &pipelined) {
            self.violations.push(format!("atomicity: {v}"));
        }
        self.stats.pipelined = stats;
    }
}

/// Atomicity of the `pipelined` transactions of `history`, from the write
/// CF's `fates`:
/// - every key a pipelined transaction wrote is committed at one ts, or
///   none is (whatever the client reported);
/// - no snapshot saw some of its puts without the others: a reader that
///   read its value on one key read, on every other key it put, its value
///   or a value committed after it.
///
/// Values are unique per write (`x{n}`, `{balance}:t{txn}`), so a value
/// names its writer.
pub(crate) fn check_atomicity(
    history: &TxnHistory,
    fates: &Fates,
    pipelined: &BTreeSet<usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    // (key, value) → the commit ts of that write.
    let mut committed_value: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    // key → commit ts of its committed deletes.
    let mut deleted: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &history.entries {
        let Some(keys) = fates.get(&e.id) else { continue };
        for (k, w) in &e.run.writes {
            let fate = keys.iter().find(|(fk, _)| fk == k).map(|(_, f)| *f);
            match (w, fate) {
                (
                    TxnWrite::Put(v),
                    Some(KeyFate::Committed { commit_ts, kind: WriteKind::Put }),
                ) => {
                    committed_value.insert((k.as_str(), v.as_str()), commit_ts);
                }
                (TxnWrite::Delete, Some(KeyFate::Committed { commit_ts, .. })) => {
                    deleted.entry(k.as_str()).or_default().push(commit_ts);
                }
                _ => {}
            }
        }
    }
    for &id in pipelined {
        let p = &history.entries[id];
        let Some(keys) = fates.get(&id) else { continue };
        let commits: BTreeSet<u64> = keys
            .iter()
            .filter_map(|(_, f)| match f {
                KeyFate::Committed { commit_ts, .. } => Some(*commit_ts),
                _ => None,
            })
            .collect();
        let all_committed = keys.iter().all(|(_, f)| matches!(f, KeyFate::Committed { .. }));
        if commits.len() > 1 || (!commits.is_empty() && !all_committed) {
            let fates: Vec<String> = keys.iter().map(|(k, f)| format!("{k}: {f:?}")).collect();
            out.push(format!(
                "pipelined txn {id} ({:?}) is partly committed: {}",
                p.outcome,
                fates.join(", ")
            ));
        }
        let puts: Vec<(&str, &str)> = p
            .run
            .writes
            .iter()
            .filter_map(|(k, w)| match w {
                TxnWrite::Put(v) => Some((k.as_str(), v.as_str())),
                _ => None,
            })
            .collect();
        if puts.len() < 2 {
            continue;
        }
        let my_commit = commits.iter().next().copied();
        for r in &history.entries {
            if r.id == id {
                continue;
            }
            let reads: BTreeMap<&str, Option<&str>> =
                r.run.reads.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            let Some(seen_on) = puts.iter().find(|(k, v)| reads.get(k) == Some(&Some(*v))) else {
                continue;
            };
            for (k, v) in &puts {
                let Some(&got) = reads.get(k) else { continue };
                if got == Some(*v) {
                    continue;
                }
                let newer = match (got, my_commit) {
                    (Some(g), Some(c)) => committed_value.get(&(*k, g)).is_some_and(|&t| t > c),
                    (None, Some(c)) => deleted.get(k).is_some_and(|ts| ts.iter().any(|&t| t > c)),
                    (_, None) => false,
                };
                if !newer {
                    out.push(format!(
                        "txn {} (start {:?}) saw pipelined txn {id}'s {}={} but read {k}={} \
                         instead of its {v}",
                        r.id,
                        r.run.start_ts,
                        seen_on.0,
                        seen_on.1,
                        got.unwrap_or("-")
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Report, WorldConfig, run};
    use super::*;

    /// The first seed below `limit` whose broken world a checker fails;
    /// it fails the same way twice.
    fn first_caught(bug: Bug, limit: u64) -> Report {
        let cfg = |seed| WorldConfig { seed, bug: Some(bug), ..WorldConfig::default() };
        for seed in 0..limit {
            let report = run(cfg(seed));
            if !report.passed() {
                assert_eq!(report.violations, run(cfg(seed)).violations, "seed {seed} reproduces");
                return report;
            }
        }
        panic!("{bug:?} was not caught in {limit} seeds");
    }

    fn has(report: &Report, prefix: &str) -> bool {
        report.violations.iter().any(|v| v.starts_with(prefix))
    }

    #[test]
    fn seeds_pass_and_exercise_every_stage() {
        let mut sums = PipeStats::default();
        let (mut undetermined, mut crashes) = (0, 0);
        for seed in 0..60 {
            let report = run(WorldConfig::pipelined(seed));
            assert!(report.passed(), "{}", report.failure());
            let p = &report.stats.pipelined;
            sums.txns.0 += p.txns.0;
            sums.txns.1 += p.txns.1;
            sums.multi_generation += p.multi_generation;
            sums.buffer_gets += p.buffer_gets;
            sums.crashed.0 += p.crashed.0;
            sums.crashed.2 += p.crashed.2;
            undetermined += report.stats.undetermined;
            crashes += report.stats.crashes;
        }
        // Not vacuous: pipelined transactions committed over several
        // generations, read their flushed writes back, and crashed both
        // before and after their primary's commit.
        assert!(sums.txns.1 > 20 && sums.multi_generation > 20, "{sums:?}");
        assert!(sums.buffer_gets > 20, "{sums:?}");
        assert!(sums.crashed.0 > 0 && sums.crashed.2 > 0, "{sums:?}");
        assert!(undetermined > 0 && crashes > 0);
    }

    #[test]
    fn a_seed_replays_byte_for_byte() {
        let cfg = WorldConfig { trace: true, ..WorldConfig::pipelined(11) };
        let (a, b) = (run(cfg.clone()), run(cfg));
        assert!(a.trace.contains("is pipelined"), "{}", a.trace);
        assert!(a.trace.contains("kv_flush") && a.trace.contains("kv_buffer_batch_get"));
        assert_eq!(a.trace, b.trace);
        assert_eq!(a.stats, b.stats);
    }

    #[test]
    fn atomicity_catches_a_range_resolved_at_the_wrong_commit_ts() {
        let report = first_caught(Bug::PipelinedResolvesAtTheWrongTs, 100);
        assert!(has(&report, "atomicity: pipelined txn"), "{:?}", report.violations);
        // And snapshot isolation sees the outcome contradicted.
        assert!(has(&report, "si: outcome"), "{:?}", report.violations);
    }

    #[test]
    fn atomicity_catches_a_skipped_generation() {
        let report = first_caught(Bug::PipelinedSkipsAGeneration, 100);
        assert!(has(&report, "atomicity: pipelined txn"), "{:?}", report.violations);
    }

    #[test]
    fn the_audit_catches_pipelined_locks_never_resolved() {
        let report = first_caught(Bug::PipelinedResolveRefused, 100);
        assert!(
            report.violations.iter().any(|v| v.contains("was never resolved")),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn honesty_catches_a_commit_reported_before_the_primary_answered() {
        // Caught only when a primary's commit fails after being reported,
        // which needs its lock to expire first: seed 181 is the first.
        let report = first_caught(Bug::PipelinedCommittedBeforeThePrimary, 300);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.starts_with("si: outcome") && v.contains("reported committed")),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn atomicity_catches_a_reader_that_sees_half_a_transaction() {
        use super::super::txn_history::{ReadMethod, TxnEntry};
        let entry =
            |id: usize, writes: Vec<(&str, &str)>, reads: Vec<(&str, Option<&str>)>| TxnEntry {
                id,
                client: 0,
                kind: TxnKind::BankRead,
                read_method: ReadMethod::BatchGet,
                async_commit: false,
                one_pc: false,
                causal: false,
                invoke: Instant::ZERO,
                end: None,
                run: TxnRun {
                    start_ts: Some(10 + id as u64),
                    reads: reads.into_iter().map(|(k, v)| (k.into(), v.map(Into::into))).collect(),
                    writes: writes
                        .into_iter()
                        .map(|(k, v)| (k.into(), TxnWrite::Put(v.into())))
                        .collect(),
                    ..TxnRun::default()
                },
                outcome: TxnOutcome::Committed { commit_ts: 20, mode: None },
                crashed: false,
            };
        let committed = |ts| KeyFate::Committed { commit_ts: ts, kind: WriteKind::Put };
        let history = TxnHistory {
            entries: vec![
                entry(0, vec![("r0", "x1"), ("r1", "x2")], vec![]),
                // Sees x1 but not x2, and nobody overwrote r1 after it.
                entry(1, vec![], vec![("r0", Some("x1")), ("r1", None)]),
                // Sees x1 and a newer r1: fine.
                entry(2, vec![], vec![("r0", Some("x1")), ("r1", Some("x3"))]),
                entry(3, vec![("r1", "x3")], vec![]),
            ],
        };
        let mut fates = Fates::new();
        fates.insert(0, vec![("r0".into(), committed(20)), ("r1".into(), committed(20))]);
        fates.insert(3, vec![("r1".into(), committed(30))]);
        let pipelined: BTreeSet<usize> = [0].into_iter().collect();
        let out = check_atomicity(&history, &fates, &pipelined);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].starts_with("txn 1 "), "{out:?}");
        // Committed at two timestamps: partly committed.
        fates.insert(0, vec![("r0".into(), committed(20)), ("r1".into(), committed(25))]);
        let out = check_atomicity(&history, &fates, &pipelined);
        assert!(out.iter().any(|v| v.contains("partly committed")), "{out:?}");
    }
}
