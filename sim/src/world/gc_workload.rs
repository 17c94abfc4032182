//! The GC world: the transactional world plus one more client, the GC
//! client, which runs client-go's GC tasks on the real core machines while
//! the other clients transact under the world's faults:
//!
//! - **GC rounds** ([`tikv_core::gc::Gc`], client-go `KVStore.GC`): the safe
//!   point is what an application keeping a list of its active
//!   transactions may pass (client-go's contract for `GC`): a seeded lag
//!   behind the current time, and below the start ts of every transaction
//!   whose requests may still land. A client that crashed counts until its
//!   last request's deadline passed; after that its locks are GC's to
//!   resolve.
//! - **Readers at old timestamps**: load the txn safe point from PD
//!   (`GetGCState`, [`LoadTxnSafePoint`]), refuse a read below it
//!   ([`check_visibility`], client-go `CheckVisibility`), then read every
//!   key ([`SnapshotBatchGet`]). A reader either picks a ts at or above
//!   every safe point a round asked for (it must be served, correctly) or
//!   one below the txn safe point (it must be refused with
//!   `TxnAbortedByGc`).
//! - **`delete_range`** ([`tikv_core::gc::delete_range`]) over a scratch
//!   range no transaction touches, split across regions: the world first
//!   writes committed versions and a crashed writer's lock there directly
//!   into the stores, then the GC client deletes the range.
//!
//! The GC client starts at a seeded instant before the heal and runs its
//! tasks through the faults, the settling (while crashed writers' locks
//! expire) and the quiescence reads, until the audit. It runs one task at
//! a time and starts the next only once every request of the previous one
//! is past its deadline, so a late request of a round never lands in the
//! scratch range after its deletion.
//!
//! Checks (on top of the transactional world's):
//! - every `AdvanceGCSafePoint` the stores apply keeps every read at or
//!   above the safe point unchanged (no committed data at or above it lost,
//!   the newest version at or below it kept) and touches no lock;
//! - no lock at or below a round's safe point survives the round;
//! - a reader below the txn safe point is never served, and a served
//!   reader saw exactly the committed data at its ts (checked against every
//!   version ever committed, which the world records before each
//!   collection);
//! - a completed `delete_range` left no lock, record or value in its range.
//!
//! Snapshot isolation is still checked over every transaction: the fates of
//! transactions whose records GC collected come from the recorded versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tikv_core::backoff::Backoffer;
use tikv_core::error::Error;
use tikv_core::gc::{
    Gc, GcOutcome, LoadTxnSafePoint, RANGE_TASK_CONCURRENCY, check_visibility, delete_range,
};
use tikv_core::key::{Key, KeyRange, KvPair};
use tikv_core::op::{Operation, StepEvent, StepSlot};
use tikv_core::pd::Timestamp;
use tikv_core::range_task::RangeTaskStat;
use tikv_core::rpc::{KvRequest, KvResponse, Response, Rpc, RpcError, RpcId};
use tikv_core::time::{Duration, Instant};
use tikv_core::txn::snapshot::{ReadOptions, SnapshotBatchGet};
use tikv_core::view::ClusterView;

use super::workload::{Finished, erase_with};
use super::{Bug, Task, TxnPhase, World};
use crate::Cluster;
use crate::mvcc::{LockType, MvccStore, Write, WriteKind, txn_key};
use tikv_core::rng::Rng;

/// The scratch range `delete_range` empties: keys `s0`, `s1`, ... sort
/// after every transactional key (`a`, `l`, `r`).
const SCRATCH_PREFIX: &[u8] = b"s";
/// Where the world splits the scratch range, so it spans two regions.
pub(crate) const SCRATCH_SPLIT: &[u8] = b"s2";
/// The first key after the scratch range.
const SCRATCH_END: &[u8] = b"t";

/// The scratch range `delete_range` empties.
pub(crate) fn scratch_range() -> KeyRange {
    KeyRange::new(Key::from(SCRATCH_PREFIX.to_vec()), Key::from(SCRATCH_END.to_vec()))
}

fn is_scratch(user_key: &[u8]) -> bool {
    user_key.starts_with(SCRATCH_PREFIX)
}

/// What one GC-client task reports.
pub(crate) enum GcFinished {
    Round(Result<GcOutcome, Error>),
    Read(Result<Vec<KvPair>, Error>),
    DeleteRange(Result<RangeTaskStat, Error>),
}

/// Counters of the GC client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// GC rounds that completed, and those that failed (under faults).
    pub rounds: (usize, usize),
    /// Locks at or below a round's safe point when it started (crashed
    /// writers' locks for GC to resolve), summed over completed rounds.
    pub locks_below_safe_point: usize,
    /// Write records the stores collected.
    pub collected_versions: usize,
    /// Readers below the txn safe point that were refused with
    /// `TxnAbortedByGc`.
    pub reads_refused: usize,
    /// Readers at or above every safe point that were served.
    pub reads_served: usize,
    /// Readers that failed otherwise (budgets under faults).
    pub reads_failed: usize,
    /// `delete_range` calls that completed, and those that failed.
    pub delete_ranges: (usize, usize),
}

/// One write-CF record as the world remembers it, with its value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    kind: WriteKind,
    start_ts: u64,
    overlapped_rollback: bool,
    value: Option<Bytes>,
}

/// Every transactional key's records, by request key, then commit ts.
type Versions = BTreeMap<Vec<u8>, BTreeMap<u64, Version>>;

/// What the world captures just before the stores collect garbage.
pub(crate) struct BeforeCollection {
    target: u64,
    versions: Versions,
    locks: Vec<(Vec<u8>, u64)>,
}

/// A reader at an old timestamp.
struct Reader {
    read_ts: u64,
    /// The txn safe point was above `read_ts` when it began.
    refusal_expected: bool,
    /// The keys read and what it got (if served).
    keys: Vec<String>,
    served: Option<BTreeMap<String, Vec<u8>>>,
    done: bool,
}

/// The GC client and what the checks need.
pub(crate) struct GcWorld {
    /// Index of the GC client in `World::clients`.
    pub(crate) client: usize,
    tasks_left: usize,
    /// Every version ever seen (merged before each collection and at the
    /// end): the full history the readers are checked against.
    seen: Versions,
    /// Per transaction entry: when its last request's deadline passed
    /// (set once its tasks are done or its client crashed).
    quiet_at: BTreeMap<usize, Instant>,
    /// The highest safe point a round asked for.
    target_max: u64,
    readers: Vec<Reader>,
    /// The running round's safe point.
    round: Option<u64>,
    /// No request of the GC client's earlier tasks lands after this.
    settled_at: Instant,
}

impl GcWorld {
    pub(crate) fn new(client: usize, tasks: usize) -> GcWorld {
        GcWorld {
            client,
            tasks_left: tasks,
            seen: Versions::new(),
            quiet_at: BTreeMap::new(),
            target_max: 0,
            readers: Vec::new(),
            round: None,
            settled_at: Instant::ZERO,
        }
    }

    /// Transaction `entry`'s tasks are gone; none of its requests lands
    /// after `last_deadline`.
    pub(crate) fn txn_quiet(&mut self, entry: usize, last_deadline: Instant) {
        let at = self.quiet_at.entry(entry).or_insert(last_deadline);
        *at = (*at).max(last_deadline);
    }

    /// The highest safe point a round asked for.
    pub(crate) fn target_max(&self) -> u64 {
        self.target_max
    }

    /// A round towards `safe_point` begins.
    pub(crate) fn round_began(&mut self, safe_point: u64) {
        self.target_max = self.target_max.max(safe_point);
        self.round = Some(safe_point);
    }

    /// A reader at `read_ts` of `keys` begins (`refusal_expected`: below
    /// the txn safe point); returns its number.
    pub(crate) fn reader_began(
        &mut self,
        read_ts: u64,
        refusal_expected: bool,
        keys: Vec<String>,
    ) -> usize {
        self.readers.push(Reader { read_ts, refusal_expected, keys, served: None, done: false });
        self.readers.len() - 1
    }

    /// The start ts below which a round's safe point stays for the
    /// readers that must be served (`u64::MAX`: none running).
    pub(crate) fn readers_floor(&self) -> u64 {
        self.readers
            .iter()
            .filter(|r| !r.done && !r.refusal_expected)
            .map(|r| r.read_ts)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The running round ended with `result`: a completed round left no
    /// lock at or below the safe point it reached, which is the one asked
    /// for unless a barrier held it back.
    pub(crate) fn round_done(
        &mut self,
        cluster: &Cluster,
        result: &Result<GcOutcome, Error>,
        stats: &mut GcStats,
        violations: &mut Vec<String>,
    ) {
        let asked = self.round.take().unwrap_or_default();
        let Ok(outcome) = result else {
            stats.rounds.1 += 1;
            return;
        };
        stats.rounds.0 += 1;
        let sp = outcome.safe_point.version();
        if sp != asked && outcome.blocker.is_none() {
            violations.push(format!(
                "gc: a round asked for safe point {asked} reached {sp} with no barrier"
            ));
        }
        for l in cluster.locks() {
            if l.lock_version <= sp {
                violations.push(format!(
                    "gc: txn {}'s lock on {:?} survived the round at safe point {sp}",
                    l.lock_version,
                    String::from_utf8_lossy(&l.key)
                ));
            }
        }
    }

    /// Reader `entry` ended with `result` (PD's txn safe point is
    /// `pd_txn_safe_point` now): one below the txn safe point must have
    /// been refused by it, one above served (checked at the end).
    pub(crate) fn reader_done(
        &mut self,
        entry: usize,
        result: Result<Vec<KvPair>, Error>,
        pd_txn_safe_point: u64,
        stats: &mut GcStats,
        violations: &mut Vec<String>,
    ) {
        let Some(reader) = self.readers.get_mut(entry) else { return };
        reader.done = true;
        let read_ts = reader.read_ts;
        match result {
            Ok(pairs) => {
                if reader.refusal_expected {
                    violations.push(format!(
                        "gc: reader{entry} at ts {read_ts} below the txn safe point was served \
                         (txn safe point now {pd_txn_safe_point})"
                    ));
                }
                reader.served = Some(
                    pairs
                        .into_iter()
                        .map(|p| {
                            (
                                String::from_utf8_lossy(p.key.as_bytes()).into_owned(),
                                p.value.to_vec(),
                            )
                        })
                        .collect(),
                );
                stats.reads_served += 1;
            }
            Err(Error::TxnAbortedByGc { txn_safe_point, .. }) => {
                if !reader.refusal_expected || txn_safe_point.version() <= read_ts {
                    violations.push(format!(
                        "gc: reader{entry} at ts {read_ts} refused by txn safe point {}",
                        txn_safe_point.version()
                    ));
                }
                stats.reads_refused += 1;
            }
            Err(_) => stats.reads_failed += 1,
        }
    }

    /// Just before the stores apply `AdvanceGCSafePoint(target)`: what the
    /// checks compare against, merged into the versions seen.
    pub(crate) fn before_collection(&mut self, cluster: &Cluster, target: u64) -> BeforeCollection {
        let (versions, locks) = {
            let st = cluster.lock();
            let locks = st.mvcc.locks.iter().map(|(k, l)| (k.clone(), l.ts)).collect();
            (versions_of(&st.mvcc), locks)
        };
        merge(&mut self.seen, &versions);
        BeforeCollection { target, versions, locks }
    }

    /// The end-of-run check: every served reader saw exactly the data
    /// committed at its ts, by every version ever seen.
    pub(crate) fn finish(&mut self, cluster: &Cluster, violations: &mut Vec<String>) {
        let current = versions_of(&cluster.lock().mvcc);
        merge(&mut self.seen, &current);
        for (i, r) in self.readers.iter().enumerate() {
            let Some(served) = &r.served else { continue };
            for key in &r.keys {
                let expected =
                    visible(self.seen.get(key.as_bytes()), r.read_ts).map(|v| v.to_vec());
                let got = served.get(key).cloned();
                if got != expected {
                    violations.push(format!(
                        "gc: reader{i} at ts {} read {key}={:?}, the committed versions say {:?}",
                        r.read_ts,
                        got.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        expected.map(|v| String::from_utf8_lossy(&v).into_owned())
                    ));
                }
            }
        }
    }

    /// What the records say about transaction `start_ts` on `key`, from
    /// every version seen (for transactions whose records GC collected).
    pub(crate) fn seen_fate(&self, key: &[u8], start_ts: u64) -> Option<super::si::KeyFate> {
        let versions = self.seen.get(key)?;
        if versions.get(&start_ts).is_some_and(|v| v.overlapped_rollback && v.start_ts != start_ts)
        {
            return Some(super::si::KeyFate::RolledBack);
        }
        let (&commit_ts, v) = versions.iter().find(|(_, v)| v.start_ts == start_ts)?;
        Some(match v.kind {
            WriteKind::Rollback => super::si::KeyFate::RolledBack,
            kind => super::si::KeyFate::Committed { commit_ts, kind },
        })
    }
}

/// The transactional keys' records in `mvcc`, values included.
fn versions_of(mvcc: &MvccStore) -> Versions {
    let mut out = Versions::new();
    for (key, versions) in &mvcc.writes {
        if is_scratch(&versions.user_key) {
            continue;
        }
        let records = out.entry(versions.user_key.to_vec()).or_default();
        for (&commit_ts, w) in &versions.by_commit {
            let value = match w.kind {
                WriteKind::Put => mvcc.values.get(key).and_then(|vs| vs.get(&w.start_ts)).cloned(),
                _ => None,
            };
            records.insert(commit_ts, version(w, value));
        }
    }
    out
}

fn version(w: &Write, value: Option<Bytes>) -> Version {
    Version {
        kind: w.kind,
        start_ts: w.start_ts,
        overlapped_rollback: w.overlapped_rollback,
        value,
    }
}

/// What a read at `ts` sees of one key's records: the newest Put or
/// Delete at or below `ts` (TiKV's `PointGetter`), as the value or none.
fn visible(records: Option<&BTreeMap<u64, Version>>, ts: u64) -> Option<&Bytes> {
    let records = records?;
    let newest = records
        .range(..=ts)
        .rev()
        .find(|(_, v)| matches!(v.kind, WriteKind::Put | WriteKind::Delete))?;
    newest.1.value.as_ref().filter(|_| newest.1.kind == WriteKind::Put)
}

/// A reader at an old timestamp (module docs): the txn safe point from
/// PD, client-go's visibility rule, then a snapshot read of every key.
/// [`Bug::SkipVisibilityCheck`] reads without the first two steps.
struct OldRead {
    view: Arc<ClusterView>,
    keys: Vec<Key>,
    read_ts: Timestamp,
    step: StepSlot<ReadStep>,
    started: bool,
    skip_check: bool,
    result: Option<Result<Vec<KvPair>, Error>>,
}

enum ReadStep {
    Loaded(Result<Timestamp, Error>),
    Read(Result<Vec<KvPair>, Error>),
}

impl OldRead {
    fn read(&mut self, now: Instant) {
        let op = SnapshotBatchGet::new(
            self.view.clone(),
            self.keys.clone(),
            self.read_ts,
            ReadOptions::default(),
        );
        self.step.start(op, ReadStep::Read, now);
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(None::<&mut Backoffer>) {
            match event {
                StepEvent::Done(ReadStep::Loaded(Ok(txn_safe_point))) => {
                    match check_visibility(self.read_ts, txn_safe_point) {
                        Ok(()) => self.read(now),
                        Err(e) => self.result = Some(Err(e)),
                    }
                }
                StepEvent::Done(ReadStep::Loaded(Err(e)) | ReadStep::Read(Err(e))) => {
                    self.result = Some(Err(e))
                }
                StepEvent::Done(ReadStep::Read(Ok(pairs))) => self.result = Some(Ok(pairs)),
                StepEvent::Woke => {}
            }
        }
    }
}

impl Operation for OldRead {
    type Output = Vec<KvPair>;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        if self.skip_check {
            self.read(now);
        } else {
            self.step.start(LoadTxnSafePoint::new(&self.view), ReadStep::Loaded, now);
        }
        self.check(now);
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.step.poll_rpc()
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        if self.step.on_response(id, response, now) {
            self.check(now);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.step.on_timeout(now);
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.step.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<Vec<KvPair>, Error>> {
        self.result.take()
    }
}

fn gc_finished(task: GcFinished) -> Finished {
    Finished::Gc(Box::new(task))
}

/// A stalled GC task's result.
pub(crate) fn stalled(entry: usize) -> Finished {
    let e = Error::Internal("stalled".into());
    // Entry numbers: readers are their index, rounds and deletions MAX - 1
    // and MAX - 2.
    gc_finished(match entry {
        ROUND_ENTRY => GcFinished::Round(Err(e)),
        DELETE_RANGE_ENTRY => GcFinished::DeleteRange(Err(e)),
        _ => GcFinished::Read(Err(e)),
    })
}

const ROUND_ENTRY: usize = usize::MAX - 1;
const DELETE_RANGE_ENTRY: usize = usize::MAX - 2;

impl World {
    fn gc_world(&self) -> Option<&GcWorld> {
        self.gc.as_ref()
    }

    /// Adds the GC client (a fresh process with client-go's budgets, as
    /// the auditor), splits the scratch range and plans the client's tasks.
    pub(super) fn add_gc_client(&mut self, rpc_timeout: Duration) {
        let seed = self.rng.next_u64();
        let view = super::new_view(
            self.net.pd_urls(),
            seed,
            &self.plan.swarm,
            Some(tikv_core::config::BackoffBudgets::default()),
            tikv_core::pd::DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT,
            rpc_timeout,
        );
        let client = self.clients.len();
        self.clients.push(super::Client::new(view, client));
        if let Err(e) = self.cluster.split(SCRATCH_SPLIT) {
            self.violations.push(format!("gc: the scratch range did not split: {e:?}"));
        }
        let tasks = 4 + self.rng.gen_range(0, 9) as usize;
        self.gc = Some(GcWorld::new(client, tasks));
        let first = self.rng.gen_duration(self.plan.heal_at - Instant::ZERO) / 2;
        self.log(format!("gc: client c{client} runs {tasks} tasks from {first:?}"));
        self.schedule(Instant::ZERO + first, super::Event::Issue(client));
    }

    fn pd_txn_safe_point(&self) -> u64 {
        pd_txn_safe_point(&self.cluster)
    }

    /// The GC client starts its next task (module docs).
    pub(super) fn gc_issue(&mut self) {
        let Some(g) = self.gc_world() else { return };
        let c = g.client;
        // Through the heal and the settling, while crashed writers' locks
        // expire, until the audit.
        let active = self.txn.as_ref().is_some_and(|t| t.phase != TxnPhase::Audit);
        if g.tasks_left == 0 || !active || self.clients[c].running.is_some() {
            return;
        }
        if self.now < g.settled_at {
            let at = g.settled_at + Duration::from_millis(1);
            self.schedule(at, super::Event::Issue(c));
            return;
        }
        if let Some(g) = self.gc.as_mut() {
            g.tasks_left -= 1;
        }
        match self.rng.gen_range(0, 10) {
            0..4 => self.gc_launch_round(c),
            4..8 => self.gc_launch_read(c),
            _ => self.gc_launch_delete_range(c),
        }
    }

    /// The lowest start ts of a transaction whose requests may still land,
    /// and of a reader that must be served: a round's safe point stays
    /// below it. A transaction still waiting for its start ts will get one
    /// no lower than the TSO clock when it began.
    fn gc_live_floor(&self) -> u64 {
        let (Some(t), Some(g)) = (&self.txn, &self.gc) else { return 0 };
        let mut floor = u64::MAX;
        for e in &t.history.entries {
            if g.quiet_at.get(&e.id).is_some_and(|&at| at < self.now) {
                continue;
            }
            let start = e.run.start_ts.unwrap_or_else(|| self.cluster.current_ts(e.invoke));
            floor = floor.min(start);
        }
        floor.min(g.readers_floor())
    }

    fn gc_launch_round(&mut self, c: usize) {
        let lag_ms = self.rng.gen_range(0, 5000);
        let lag = Duration::from_millis(lag_ms);
        let by_time = self.cluster.current_ts(self.now).saturating_sub(lag_ms << 18);
        let floor = self.gc_live_floor();
        // Strictly below every live start ts: GC rolls back locks at or
        // below the safe point.
        let safe_point = by_time.min(floor.saturating_sub(1));
        let current = self.pd_txn_safe_point();
        if safe_point < current {
            // Nothing new may be collected; the next task comes later.
            self.log(format!(
                "gc: no round (a live transaction at {floor}, txn safe point {current})"
            ));
            self.gc_next(c);
            return;
        }
        let concurrency = 1 + self.rng.gen_range(0, RANGE_TASK_CONCURRENCY as u64) as usize;
        let below = self.cluster.locks().iter().filter(|l| l.lock_version <= safe_point).count();
        self.log(format!(
            "c{c} gc round invoke: safe point {safe_point} (lag {lag:?}, live floor {floor}), \
             {below} locks at or below it, concurrency {concurrency}"
        ));
        if let Some(g) = self.gc.as_mut() {
            g.round_began(safe_point);
        }
        self.stats.gc.locks_below_safe_point += below;
        let view = self.clients[c].view.clone();
        let op = Gc::new(&view, Timestamp::from_version(safe_point), concurrency);
        let op = erase_with(op, |r| gc_finished(GcFinished::Round(r)));
        self.launch(c, Task::Gc, ROUND_ENTRY, op);
    }

    fn gc_launch_read(&mut self, c: usize) {
        let Some(t) = &self.txn else { return };
        let keys = t.params.keys.all();
        let txn_safe_point = self.pd_txn_safe_point();
        let now_ts = self.cluster.current_ts(self.now);
        let target_max = self.gc_world().map_or(0, |g| g.target_max());
        let origin = self.cluster.current_ts(Instant::ZERO);
        let (read_ts, below) =
            draw_read_ts(&mut self.rng, txn_safe_point, target_max, now_ts, origin);
        let skip_check = self.bug == Some(Bug::SkipVisibilityCheck);
        let Some(g) = self.gc.as_mut() else { return };
        let entry = g.reader_began(read_ts, below, keys.clone());
        self.log(format!(
            "c{c} gc reader{entry} invoke: read ts {read_ts} (txn safe point {txn_safe_point}, \
             asked safe points up to {target_max})"
        ));
        let op = OldRead {
            view: self.clients[c].view.clone(),
            keys: keys.into_iter().map(Key::from).collect(),
            read_ts: Timestamp::from_version(read_ts),
            step: StepSlot::new(),
            started: false,
            skip_check,
            result: None,
        };
        let op = erase_with(op, |r| gc_finished(GcFinished::Read(r)));
        self.launch(c, Task::Gc, entry, op);
    }

    fn gc_launch_delete_range(&mut self, c: usize) {
        let now_ts = self.cluster.current_ts(self.now);
        let versions = seed_scratch(&self.cluster, &mut self.rng, now_ts);
        self.log(format!("c{c} gc delete_range invoke: {versions} scratch versions seeded"));
        let view = self.clients[c].view.clone();
        let range = scratch_range();
        let concurrency = 1 + self.rng.gen_range(0, 2) as usize;
        match delete_range(&view, range, false, concurrency) {
            Ok(op) => {
                let op = erase_with(op, |r| gc_finished(GcFinished::DeleteRange(r)));
                self.launch(c, Task::Gc, DELETE_RANGE_ENTRY, op);
            }
            Err(e) => {
                self.violations.push(format!("gc: delete_range refused a bounded range: {e}"));
                self.gc_next(c);
            }
        }
    }

    /// Schedules the GC client's next task.
    fn gc_next(&mut self, c: usize) {
        let think = Duration::from_millis(100 + self.rng.gen_range(0, 2000));
        self.schedule(self.now + think, super::Event::Issue(c));
    }

    /// A GC-client task ended.
    pub(super) fn gc_complete(
        &mut self,
        c: usize,
        entry: usize,
        last_deadline: Instant,
        task: GcFinished,
    ) {
        if let Some(g) = self.gc.as_mut() {
            g.settled_at = g.settled_at.max(last_deadline);
        }
        match task {
            GcFinished::Round(result) => self.gc_round_done(c, result),
            GcFinished::Read(result) => self.gc_read_done(c, entry, result),
            GcFinished::DeleteRange(result) => self.gc_delete_range_done(c, result),
        }
        self.gc_next(c);
    }

    fn gc_round_done(&mut self, c: usize, result: Result<GcOutcome, Error>) {
        let Some(g) = self.gc.as_mut() else { return };
        let asked = g.round.unwrap_or_default();
        g.round_done(&self.cluster, &result, &mut self.stats.gc, &mut self.violations);
        self.log(format!("c{c} gc round (safe point {asked}) ended: {result:?}"));
    }

    fn gc_read_done(&mut self, c: usize, entry: usize, result: Result<Vec<KvPair>, Error>) {
        let pd_txn_safe_point = self.pd_txn_safe_point();
        let Some(g) = self.gc.as_mut() else { return };
        let read_ts = g.readers.get(entry).map_or(0, |r| r.read_ts);
        let line = format!(
            "c{c} gc reader{entry} at {read_ts} ended: {:?}",
            result.as_ref().map(Vec::len)
        );
        g.reader_done(entry, result, pd_txn_safe_point, &mut self.stats.gc, &mut self.violations);
        self.log(line);
    }

    fn gc_delete_range_done(&mut self, c: usize, result: Result<RangeTaskStat, Error>) {
        self.log(format!("c{c} gc delete_range ended: {result:?}"));
        delete_range_done(&self.cluster, result.is_ok(), &mut self.stats.gc, &mut self.violations);
    }

    /// Just before the stores apply `AdvanceGCSafePoint(target)`: what the
    /// checks compare against, merged into the versions seen.
    pub(super) fn gc_before_collection(&mut self, target: u64) -> Option<BeforeCollection> {
        Some(self.gc.as_mut()?.before_collection(&self.cluster, target))
    }

    /// After the stores applied (or PD refused) `AdvanceGCSafePoint`:
    /// [`after_collection`]'s checks. [`Bug::GcCollectsPastSafePoint`]
    /// makes the stores collect up to the current time first.
    pub(super) fn gc_after_collection(&mut self, before: BeforeCollection) {
        if self.bug == Some(Bug::GcCollectsPastSafePoint) {
            let now_ts = self.cluster.current_ts(self.now);
            crate::gc::collect_garbage(&mut self.cluster.lock().mvcc, now_ts, |_| true);
        }
        after_collection(&self.cluster, before, &mut self.stats.gc, &mut self.violations);
    }

    /// The end-of-run checks: every served reader saw exactly the data
    /// committed at its ts, by every version ever seen.
    pub(super) fn gc_finish(&mut self) {
        let Some(g) = self.gc.as_mut() else { return };
        g.finish(&self.cluster, &mut self.violations);
    }

    /// Serves a store request of client `c`, broken for the GC client by
    /// [`Bug::ScanLockMissesLocks`] (its `ScanLock` answers lose their
    /// locks) and [`Bug::DeleteRangeNotApplied`] (`DeleteRange` beyond the
    /// scratch range's first region is acknowledged but not applied).
    pub(super) fn gc_serve_kv(
        &mut self,
        c: usize,
        store: u64,
        req: KvRequest,
    ) -> Result<KvResponse, RpcError> {
        let gc_client = self.gc.as_ref().is_some_and(|g| g.client == c);
        if gc_client
            && self.bug == Some(Bug::DeleteRangeNotApplied)
            && matches!(&req, KvRequest::DeleteRange(r) if r.start_key.as_ref() != SCRATCH_PREFIX)
        {
            return Ok(KvResponse::DeleteRange(Box::default()));
        }
        let mut resp = self.serve_kv(store, req)?;
        if gc_client
            && self.bug == Some(Bug::ScanLockMissesLocks)
            && let KvResponse::ScanLock(r) = &mut resp
        {
            r.locks.clear();
        }
        Ok(resp)
    }
}

/// The null keyspace's txn safe point as PD holds it now.
pub(crate) fn pd_txn_safe_point(cluster: &Cluster) -> u64 {
    cluster.lock().pd.gc.get(crate::gc::NULL_KEYSPACE_ID).txn_safe_point
}

/// A reader's ts and whether it must be refused: below the txn safe point
/// (refused), or at or above every safe point a round asked for (served),
/// `origin` being the cluster's first ts.
pub(crate) fn draw_read_ts(
    rng: &mut Rng,
    txn_safe_point: u64,
    target_max: u64,
    now_ts: u64,
    origin: u64,
) -> (u64, bool) {
    let below = txn_safe_point > origin && rng.gen_ratio(1, 2);
    let read_ts = if below {
        rng.gen_range(origin, txn_safe_point)
    } else {
        let low = target_max.max(txn_safe_point).max(origin);
        rng.gen_range(low, now_ts.max(low) + 1)
    };
    (read_ts, below)
}

/// Writes the scratch range directly into the stores: a few keys with
/// one to three committed versions each, and sometimes a crashed
/// writer's lock, all older than now.
pub(crate) fn seed_scratch(cluster: &Cluster, rng: &mut Rng, now_ts: u64) -> usize {
    let keys = 2 + rng.gen_range(0, 4);
    let mut plan = Vec::new();
    let mut step = 0u64;
    for i in 0..keys {
        let key = format!("s{i}").into_bytes();
        for _ in 0..1 + rng.gen_range(0, 3) {
            step += 2;
            plan.push((key.clone(), step));
        }
    }
    let lock_on = rng.gen_ratio(1, 2).then(|| rng.gen_range(0, keys));
    let mut st = cluster.lock();
    let mvcc = &mut st.mvcc;
    let ms = |n: u64| n << 18;
    for (key, step) in &plan {
        let rk = txn_key(key);
        let start_ts = now_ts.saturating_sub(ms(1000 + step + 1));
        let commit_ts = now_ts.saturating_sub(ms(1000 + step));
        let user_key = Bytes::from(key.clone());
        let w = Write { kind: WriteKind::Put, start_ts, overlapped_rollback: false };
        mvcc.put_write(&rk, &user_key, commit_ts, w);
        let value = Bytes::from(format!("scratch@{commit_ts}"));
        mvcc.values.entry(rk).or_default().insert(start_ts, value);
    }
    if let Some(i) = lock_on {
        let key = format!("s{i}").into_bytes();
        let lock = crate::mvcc::Lock {
            user_key: Bytes::from(key.clone()),
            lock_type: LockType::Put,
            primary: Bytes::from_static(b"s0"),
            ts: now_ts.saturating_sub(ms(500)),
            ttl: 3000,
            for_update_ts: 0,
            txn_size: 1,
            min_commit_ts: 0,
            use_async_commit: false,
            secondaries: Vec::new(),
            generation: 0,
        };
        let rk = txn_key(&key);
        mvcc.values
            .entry(rk.clone())
            .or_default()
            .insert(lock.ts, Bytes::from_static(b"scratch, never committed"));
        mvcc.locks.insert(rk, lock);
    }
    plan.len()
}

/// A `delete_range` of the scratch range ended (`completed` or not): a
/// completed one left no lock, record or value in it. Then the scratch
/// range is emptied either way (a failed deletion is rerun by its
/// operator; the world does it at once, so no scratch data outlives the
/// task).
pub(crate) fn delete_range_done(
    cluster: &Cluster,
    completed: bool,
    stats: &mut GcStats,
    violations: &mut Vec<String>,
) {
    let (start, end) = (txn_key(SCRATCH_PREFIX), txn_key(SCRATCH_END));
    let mut st = cluster.lock();
    let mvcc = &mut st.mvcc;
    let in_range = |k: &Vec<u8>| *k >= start && *k < end;
    if completed {
        stats.delete_ranges.0 += 1;
        let left = mvcc.locks.keys().filter(|k| in_range(k)).count()
            + mvcc.writes.keys().filter(|k| in_range(k)).count()
            + mvcc.values.keys().filter(|k| in_range(k)).count();
        if left > 0 {
            violations.push(format!(
                "gc: delete_range completed but left {left} keys' locks, records or values \
                 in its range"
            ));
        }
    } else {
        stats.delete_ranges.1 += 1;
    }
    mvcc.locks.retain(|k, _| !in_range(k));
    mvcc.writes.retain(|k, _| !in_range(k));
    mvcc.values.retain(|k, _| !in_range(k));
}

/// After the stores applied (or PD refused) `AdvanceGCSafePoint`: every
/// read at or above the safe point sees what it saw before, and no lock
/// moved.
pub(crate) fn after_collection(
    cluster: &Cluster,
    before: BeforeCollection,
    stats: &mut GcStats,
    violations: &mut Vec<String>,
) {
    let sp = before.target;
    let (after, locks) = {
        let st = cluster.lock();
        let locks: Vec<(Vec<u8>, u64)> =
            st.mvcc.locks.iter().map(|(k, l)| (k.clone(), l.ts)).collect();
        (versions_of(&st.mvcc), locks)
    };
    let count = |v: &Versions| v.values().map(BTreeMap::len).sum::<usize>();
    stats.collected_versions += count(&before.versions).saturating_sub(count(&after));
    if locks != before.locks {
        violations.push(format!("gc: collecting at safe point {sp} changed the locks"));
    }
    for (key, records) in &before.versions {
        let now = after.get(key);
        let reads = std::iter::once(sp).chain(records.range(sp..).map(|(&ts, _)| ts));
        for ts in reads {
            let (was, is) = (visible(Some(records), ts), visible(now, ts));
            if was != is {
                violations.push(format!(
                    "gc: collecting at safe point {sp} changed a read of {:?} at {ts}: \
                     {was:?} before, {is:?} after",
                    String::from_utf8_lossy(key)
                ));
                break;
            }
        }
    }
}

/// Merges `from` into `into`; a later look at a record wins.
fn merge(into: &mut Versions, from: &Versions) {
    for (key, records) in from {
        let mine = into.entry(key.clone()).or_default();
        for (&ts, v) in records {
            mine.insert(ts, v.clone());
        }
    }
}
