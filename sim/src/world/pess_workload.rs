//! The pessimistic workload: which transaction a client runs next, and
//! [`PessProgram`], which runs a pessimistic transaction the way the
//! driver's `Transaction` does (`lock_keys`/`get_for_update`, then
//! `commit`), on the real core machines:
//!
//! - a start ts from the client's oracle;
//! - per lock call, a fresh `for_update_ts` from the oracle, then
//!   `AcquirePessimisticLocks` returning the keys' values, waiting as the
//!   transaction's [`LockWait`] says; a write conflict (a newer commit than
//!   the `for_update_ts`) locks again at a fresh one, as the driver's
//!   statement retry does; `Deadlock`, `LockWaitTimeout`,
//!   `LockAcquireFailAndNoWaitSet` and any other error end the transaction,
//!   whose locks are then rolled back (the failed call's follow-up, and the
//!   rollback the driver runs when a transaction is dropped);
//! - in share mode (some increments, after their exclusive calls), one
//!   call taking shared locks on other counters, then reading them at its
//!   `for_update_ts` as TiDB reads after `LOCK IN SHARE MODE` (TiKV
//!   returns no value for a share a retried request already holds): the
//!   reads are recorded in [`TxnRun::shared`], the keys committed as
//!   `SharedLock` mutations (lock-only, never the primary);
//! - with fair locking (some counter increments), each single-key call in
//!   TiKV's `WakeUpModeForceLock`: a lock taken over a newer write
//!   (`LockedWithConflict`) counts that write's commit ts as the key's
//!   `for_update_ts`, and the prewrite checks it
//!   (`for_update_ts_constraints`), as client-go's aggressive locking does;
//! - the TTL manager (`KeepAlive`) from the first lock on, beside the rest,
//!   as the driver spawns it;
//! - the `Committer` in pessimistic mode at the largest `for_update_ts`
//!   (2PC, async commit or 1PC as the seed chose), then its follow-up in the
//!   background.
//!
//! Bank reads (every account in one snapshot) run as the transactional
//! world's read-only programs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tikv_core::error::Error;
use tikv_core::key::Key;
use tikv_core::lock::PessimisticRollbackPlan;
use tikv_core::op::{IdMap, Operation};
use tikv_core::pd::{GetTimestamp, Timestamp};
use tikv_core::rng::Rng;
use tikv_core::route::fanout::KeyFanout;
use tikv_core::rpc::{RequestTags, Response, Rpc, RpcError, RpcId};
use tikv_core::time::{Duration, Instant};
use tikv_core::txn::commit::{
    CommitOptions, Committer, KeepAlive, KeysPlan, pessimistic_mutations_from_buffer,
};
use tikv_core::txn::membuffer::{FlagsOp, MemBuffer};
use tikv_core::txn::pessimistic::{
    AcquireOutcome, AcquirePessimisticLocks, AcquireRequest, LockOptions, LockWait,
    rollback_pessimistic_locks,
};
use tikv_core::txn::snapshot::{ReadOptions, SnapshotBatchGet};
use tikv_core::view::ClusterView;

use super::Bug;
use super::faults::TxnParams;
use super::txn_history::{
    LockedRead, PessKind, TxnKind, TxnOutcome, TxnRun, TxnWrite, account, balance_value,
    counter_value, parse_balance, parse_counter, register,
};
use super::txn_workload::{TxnSpec, pick_read_method};
use super::workload::{Finished, SimOp};

/// How many times a lock call that met a newer write locks again at a
/// fresh `for_update_ts` before the transaction gives up (the driver's
/// `PESSIMISTIC_LOCK_MAX_RETRIES` is TiDB's 256; contention in a run is
/// bounded, so fewer suffice and keep runs short).
const LOCK_RETRIES: u32 = 32;

/// Picks a client's next transaction in the pessimistic world.
pub(crate) fn pick(rng: &mut Rng, params: &TxnParams) -> TxnSpec {
    let keys = params.keys;
    let wait = match rng.gen_range(0, 10) {
        0..5 => LockWait::Always,
        5..8 => LockWait::Timeout(Duration::from_millis(rng.gen_range(10, 1500))),
        _ => LockWait::NoWait,
    };
    let kind = match rng.gen_range(0, 100) {
        0..35 if keys.accounts >= 2 => {
            let from = rng.gen_range(0, u64::from(keys.accounts)) as u32;
            let to =
                (from + 1 + rng.gen_range(0, u64::from(keys.accounts) - 1) as u32) % keys.accounts;
            TxnKind::Pessimistic(PessKind::Transfer {
                from,
                to,
                amount: rng.gen_range(1, 51),
                one_call: rng.gen_ratio(1, 3),
                wait,
            })
        }
        35..85 if keys.registers >= 1 => {
            let first = rng.gen_range(0, u64::from(keys.registers)) as u32;
            let mut counters = vec![first];
            if keys.registers >= 2 && rng.gen_ratio(1, 3) {
                let second = (first + 1 + rng.gen_range(0, u64::from(keys.registers) - 1) as u32)
                    % keys.registers;
                counters.push(second);
            }
            let fair = rng.gen_ratio(1, 2);
            TxnKind::Pessimistic(PessKind::Increment { counters, wait, fair, shared: Vec::new() })
        }
        _ => TxnKind::BankRead,
    };
    let async_commit = rng.gen_ratio(params.async_commit_permille, 1000);
    let one_pc = rng.gen_ratio(params.one_pc_permille, 1000);
    let opts = CommitOptions::default()
        .with_async_commit(async_commit)
        .with_one_pc(one_pc)
        .with_causal_consistency((async_commit || one_pc) && rng.gen_ratio(1, 5));
    TxnSpec { kind, read_method: pick_read_method(rng), opts }
}

/// [`pick`], then in the core-level world some increments also read a
/// counter under a shared lock (client-go's `LockCtx.InShareMode`), so
/// shares meet other shares, exclusive locks and deadlocks.
pub(crate) fn pick_with_shares(rng: &mut Rng, params: &TxnParams) -> TxnSpec {
    let mut spec = pick(rng, params);
    let registers = params.keys.registers;
    if let TxnKind::Pessimistic(PessKind::Increment { counters, fair: false, shared, .. }) =
        &mut spec.kind
        && registers > counters.len() as u32
        && rng.gen_ratio(1, 2)
    {
        // Mostly the lowest free counter, so that shares meet.
        let free: Vec<u32> = (0..registers).filter(|r| !counters.contains(r)).collect();
        let first = match rng.gen_ratio(3, 4) {
            true => free[0],
            false => free[rng.gen_range(0, free.len() as u64) as usize],
        };
        shared.push(first);
        if free.len() >= 2 && rng.gen_ratio(1, 4) {
            let other = free[rng.gen_range(0, free.len() as u64) as usize];
            if !shared.contains(&other) {
                shared.push(other);
            }
        }
    }
    spec
}

/// Whose RPC an id is: the current step (by number) or a machine running
/// beside it (by number).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tag {
    Step(u64),
    Side(u64),
}

enum Step {
    /// The start ts, or the `for_update_ts` of the next lock call.
    Timestamp(GetTimestamp),
    /// [`Bug::ReadBeforeLock`]: the keys read at the start ts first.
    StaleRead(Box<SnapshotBatchGet>),
    /// The keys of a shared-lock call, read at its `for_update_ts`.
    SharedRead(Box<SnapshotBatchGet>),
    Lock(Box<AcquirePessimisticLocks>),
    Commit(Box<Committer>),
    /// After the result: the committer's follow-up.
    Tail(Box<KeyFanout<KeysPlan>>),
    Done,
}

macro_rules! each_step {
    ($step:expr, $op:ident => $body:expr, $other:expr) => {
        match $step {
            Step::Timestamp($op) => $body,
            Step::StaleRead($op) => $body,
            Step::SharedRead($op) => $body,
            Step::Lock($op) => $body,
            Step::Commit($op) => $body,
            Step::Tail($op) => $body,
            Step::Done => $other,
        }
    };
}

/// A machine running beside the transaction's steps.
enum Side {
    /// The TTL manager of the primary lock.
    KeepAlive(Box<KeepAlive>),
    /// A pessimistic rollback (a failed call's, or the transaction's).
    Rollback(Box<KeyFanout<PessimisticRollbackPlan>>),
}

macro_rules! each_side {
    ($side:expr, $op:ident => $body:expr) => {
        match $side {
            Side::KeepAlive($op) => $body,
            Side::Rollback($op) => $body,
        }
    };
}

/// One pessimistic transaction of a simulated client. See the module docs.
pub(crate) struct PessProgram {
    view: Arc<ClusterView>,
    id: usize,
    kind: PessKind,
    opts: CommitOptions,
    bug: Option<Bug>,
    run: TxnRun,
    /// Lock calls still to make, each with whether it is in share mode.
    calls: VecDeque<(Vec<Key>, bool)>,
    /// The call being made, whether in share mode, and how many times it
    /// met a newer write.
    call: Vec<Key>,
    call_shared: bool,
    conflicts: u32,
    /// The `for_update_ts` of the call being made.
    for_update_ts: Timestamp,
    max_for_update_ts: Timestamp,
    primary: Option<Key>,
    /// Keys this transaction holds exclusive locks on, and the values it
    /// read.
    values: BTreeMap<Key, Option<String>>,
    /// Keys it holds shared locks on, and the values it read.
    shared_values: BTreeMap<Key, Option<String>>,
    /// Keys locked over a newer write (fair locking), with that write's
    /// commit ts: the lock's `for_update_ts`, checked at prewrite.
    constraints: Vec<(Key, Timestamp)>,
    /// [`Bug::ReadBeforeLock`]: the values read at the start ts.
    stale: BTreeMap<Key, Option<String>>,
    began: Instant,
    step: Step,
    epoch: u64,
    sides: BTreeMap<u64, Side>,
    next_side: u64,
    keep_alive: Option<u64>,
    ids: IdMap<Tag>,
    /// Outer ids in flight, by owner, so the ones nobody waits for any
    /// more can be named ([`SimOp::abandoned`]).
    outstanding: BTreeMap<RpcId, Tag>,
    abandoned: Vec<RpcId>,
    result: Option<(TxnRun, TxnOutcome)>,
    reported: bool,
}

impl PessProgram {
    pub(crate) fn new(
        view: Arc<ClusterView>,
        id: usize,
        kind: PessKind,
        opts: CommitOptions,
        bug: Option<Bug>,
    ) -> PessProgram {
        let to_keys = |keys: Vec<String>| keys.into_iter().map(Key::from).collect::<Vec<Key>>();
        let mut calls: VecDeque<(Vec<Key>, bool)> =
            kind.lock_calls().into_iter().map(|keys| (to_keys(keys), false)).collect();
        let shared = kind.shared_keys();
        if !shared.is_empty() {
            calls.push_back((to_keys(shared), true));
        }
        PessProgram {
            view,
            id,
            kind,
            opts,
            bug,
            run: TxnRun::default(),
            calls,
            call: Vec::new(),
            call_shared: false,
            conflicts: 0,
            for_update_ts: Timestamp::ZERO,
            max_for_update_ts: Timestamp::ZERO,
            primary: None,
            values: BTreeMap::new(),
            shared_values: BTreeMap::new(),
            constraints: Vec::new(),
            stale: BTreeMap::new(),
            began: Instant::ZERO,
            step: Step::Done,
            epoch: 0,
            sides: BTreeMap::new(),
            next_side: 0,
            keep_alive: None,
            ids: IdMap::new(),
            outstanding: BTreeMap::new(),
            abandoned: Vec::new(),
            result: None,
            reported: false,
        }
    }

    fn set_step(&mut self, step: Step, now: Instant) {
        self.abandon(Tag::Step(self.epoch));
        self.epoch += 1;
        self.step = step;
        each_step!(&mut self.step, op => op.start(now), {});
        self.check(now);
    }

    /// The RPCs of `owner` still in flight are waited for no more.
    fn abandon(&mut self, owner: Tag) {
        let gone: Vec<RpcId> =
            self.outstanding.iter().filter(|(_, t)| **t == owner).map(|(id, _)| *id).collect();
        for id in gone {
            self.outstanding.remove(&id);
            self.abandoned.push(id);
        }
    }

    fn add_side(&mut self, mut side: Side, now: Instant) -> u64 {
        self.next_side += 1;
        each_side!(&mut side, op => op.start(now));
        self.sides.insert(self.next_side, side);
        self.next_side
    }

    fn stop_keep_alive(&mut self) {
        if let Some(n) = self.keep_alive.take() {
            self.sides.remove(&n);
            self.abandon(Tag::Side(n));
        }
    }

    fn report(&mut self, outcome: TxnOutcome) {
        if !self.reported {
            self.reported = true;
            self.result = Some((self.run.clone(), outcome));
        }
    }

    /// The transaction fails before committing: nothing was written, and
    /// its locks are rolled back (the driver's rollback of a dropped
    /// pessimistic transaction).
    fn fail(&mut self, e: Error, now: Instant) {
        if let Error::Deadlock { wait_chain, .. } = &e {
            self.run.deadlock =
                wait_chain.iter().map(|w| (w.txn, w.wait_for_txn, w.key_hash)).collect();
        }
        self.report(TxnOutcome::Failed(e.to_string()));
        self.stop_keep_alive();
        self.set_step(Step::Done, now);
        let Some(start_ts) = self.run.start_ts else { return };
        let held: Vec<Key> = self.values.keys().chain(self.shared_values.keys()).cloned().collect();
        if self.primary.is_some() && !held.is_empty() {
            let op = rollback_pessimistic_locks(
                &self.view,
                Timestamp::from_version(start_ts),
                self.max_for_update_ts,
                held,
                &RequestTags::default(),
            );
            self.add_side(Side::Rollback(Box::new(op)), now);
        }
    }

    /// The next lock call, or the commit once every call is made.
    fn next_call(&mut self, now: Instant) {
        match self.calls.pop_front() {
            Some((keys, shared)) => {
                self.call = keys;
                self.call_shared = shared;
                self.conflicts = 0;
                self.set_step(Step::Timestamp(GetTimestamp::new()), now);
            }
            None => self.commit(now),
        }
    }

    fn lock(&mut self, for_update_ts: Timestamp, now: Instant) {
        let Some(start_ts) = self.run.start_ts else { return };
        self.for_update_ts = for_update_ts;
        let options = match self.call_shared {
            true => LockOptions::new().in_share_mode().with_wait(self.kind.wait()),
            false => LockOptions::new().return_values().with_wait(self.kind.wait()),
        };
        let req = AcquireRequest {
            start_ts: Timestamp::from_version(start_ts),
            for_update_ts,
            primary: self.primary.clone(),
            keys: self.call.clone(),
            presumed_absent: Vec::new(),
            txn_elapsed: now.saturating_duration_since(self.began),
            options,
            force_lock: !self.call_shared
                && matches!(self.kind, PessKind::Increment { fair: true, .. }),
            tags: RequestTags::default(),
        };
        let op = AcquirePessimisticLocks::new(self.view.clone(), req);
        self.set_step(Step::Lock(Box::new(op)), now);
    }

    fn after_lock(
        &mut self,
        result: Result<AcquireOutcome, Error>,
        follow_up: Option<KeyFanout<PessimisticRollbackPlan>>,
        now: Instant,
    ) {
        if let Some(op) = follow_up {
            // client-go's `asyncPessimisticRollback` of the failed call.
            self.add_side(Side::Rollback(Box::new(op)), now);
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(Error::WriteConflict { .. }) if self.conflicts < LOCK_RETRIES => {
                // Lock again at a fresh for_update_ts (the statement retry).
                self.conflicts += 1;
                self.set_step(Step::Timestamp(GetTimestamp::new()), now);
                return;
            }
            Err(e) => return self.fail(e, now),
        };
        self.max_for_update_ts = self.max_for_update_ts.max(self.for_update_ts);
        if let Some(primary) = outcome.assigned_primary {
            // client-go starts the TTL manager once the primary is locked.
            let elapsed = now.saturating_duration_since(self.began);
            let Some(start_ts) = self.run.start_ts else { return };
            let op = KeepAlive::new(
                self.view.clone(),
                Timestamp::from_version(start_ts),
                primary.clone(),
                elapsed,
                RequestTags::default(),
            );
            self.keep_alive = Some(self.add_side(Side::KeepAlive(Box::new(op)), now));
            self.primary = Some(primary);
        }
        if self.call_shared {
            let keys = self.call.clone();
            let op = SnapshotBatchGet::new(
                self.view.clone(),
                keys,
                self.for_update_ts,
                ReadOptions::default(),
            );
            self.set_step(Step::SharedRead(Box::new(op)), now);
            return;
        }
        for key in std::mem::take(&mut self.call) {
            let (read, conflict_ts) = match outcome.values.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) => {
                    let v = &outcome.values[i].1;
                    (v.exists.then(|| text(&v.value)), v.locked_with_conflict_ts)
                }
                Err(_) => (None, Timestamp::ZERO),
            };
            // Locked over a newer write: the value is as of that write,
            // and the lock's for_update_ts is its commit ts.
            let lock_ts = self.for_update_ts.max(conflict_ts);
            if conflict_ts > self.for_update_ts {
                self.constraints.push((key.clone(), conflict_ts));
                self.max_for_update_ts = self.max_for_update_ts.max(conflict_ts);
            }
            let value = match self.bug {
                Some(Bug::ReadBeforeLock) => self.stale.get(&key).cloned().flatten(),
                _ => read,
            };
            self.run.locked.push(LockedRead {
                key: text(key.as_bytes()),
                for_update_ts: lock_ts.version(),
                value: value.clone(),
                with_conflict: conflict_ts > self.for_update_ts,
            });
            self.values.insert(key, value);
        }
        self.next_call(now);
    }

    /// Every lock is held: computes the writes from the values read under
    /// the locks and commits them.
    fn commit(&mut self, now: Instant) {
        let Some(start_ts) = self.run.start_ts else { return };
        let read = |k: &str| self.values.get(&Key::from(k.to_owned())).cloned().flatten();
        let mut puts: BTreeMap<Key, String> = BTreeMap::new();
        match &self.kind {
            PessKind::Transfer { from, to, amount, .. } => {
                let (a, b) = (account(*from), account(*to));
                if let (Some(x), Some(y)) =
                    (parse_balance(read(&a).as_deref()), parse_balance(read(&b).as_deref()))
                    && x >= *amount
                {
                    puts.insert(Key::from(a), balance_value(x - *amount, self.id));
                    puts.insert(Key::from(b), balance_value(y + *amount, self.id));
                }
            }
            PessKind::Increment { counters, .. } => {
                for c in counters {
                    let k = register(*c);
                    if let Some(n) = parse_counter(read(&k).as_deref()) {
                        puts.insert(Key::from(k), counter_value(n + 1, self.id));
                    }
                }
            }
        }
        let mut buffer = MemBuffer::new();
        let mut writes = Vec::new();
        for (key, value) in &self.values {
            let flags = locked_flags(value.is_some(), FlagsOp::SetKeyLockedInExclusiveMode);
            let mut buffered = buffer.update_flags(key.as_bytes(), &flags);
            let write = match puts.get(key) {
                Some(v) => {
                    buffered = buffered.and_then(|()| buffer.set(key.as_bytes(), v.clone()));
                    TxnWrite::Put(v.clone())
                }
                None => TxnWrite::Lock,
            };
            if let Err(e) = buffered {
                return self.fail(e, now);
            }
            writes.push((text(key.as_bytes()), write));
        }
        for (key, value) in &self.shared_values {
            // Lock-only `SharedLock` mutations; not in `writes`, since
            // several holders commit lock records on the key at once.
            let flags = locked_flags(value.is_some(), FlagsOp::SetKeyLockedInShareMode);
            if let Err(e) = buffer.update_flags(key.as_bytes(), &flags) {
                return self.fail(e, now);
            }
        }
        self.run.writes = writes;
        let (mutations, first) = pessimistic_mutations_from_buffer(&buffer);
        let Some(primary) = self.primary.clone().or(first) else {
            self.report(TxnOutcome::Committed { commit_ts: start_ts, mode: None });
            self.set_step(Step::Done, now);
            return;
        };
        let elapsed = now.saturating_duration_since(self.began);
        let committer = Committer::new(
            self.view.clone(),
            Timestamp::from_version(start_ts),
            primary,
            mutations,
            elapsed,
            self.opts.clone(),
        )
        .pessimistic(self.max_for_update_ts.max(Timestamp::from_version(start_ts)))
        .for_update_ts_constraints(self.constraints.clone());
        self.set_step(Step::Commit(Box::new(committer)), now);
    }

    fn check(&mut self, now: Instant) {
        match &mut self.step {
            Step::Timestamp(op) => match op.poll_result() {
                None => {}
                Some(Err(e)) => self.fail(e, now),
                Some(Ok(ts)) if self.run.start_ts.is_none() => {
                    self.run.start_ts = Some(ts.version());
                    self.began = now;
                    if self.bug == Some(Bug::ReadBeforeLock) {
                        let keys: Vec<Key> =
                            self.calls.iter().flat_map(|(keys, _)| keys).cloned().collect();
                        let op = SnapshotBatchGet::new(
                            self.view.clone(),
                            keys,
                            ts,
                            ReadOptions::default(),
                        );
                        self.set_step(Step::StaleRead(Box::new(op)), now);
                    } else {
                        self.next_call(now);
                    }
                }
                Some(Ok(ts)) => self.lock(ts, now),
            },
            Step::StaleRead(op) => match op.poll_result() {
                None => {}
                Some(Err(e)) => self.fail(e, now),
                Some(Ok(pairs)) => {
                    for key in self.calls.iter().flat_map(|(keys, _)| keys) {
                        self.stale.insert(key.clone(), None);
                    }
                    for p in pairs {
                        self.stale.insert(p.key.clone(), Some(text(&p.value)));
                    }
                    self.next_call(now);
                }
            },
            Step::SharedRead(op) => match op.poll_result() {
                None => {}
                Some(Err(e)) => self.fail(e, now),
                Some(Ok(pairs)) => {
                    for key in std::mem::take(&mut self.call) {
                        let read = pairs.iter().find(|p| p.key == key).map(|p| text(&p.value));
                        let value = match self.bug {
                            Some(Bug::ReadBeforeLock) => self.stale.get(&key).cloned().flatten(),
                            _ => read,
                        };
                        self.run.shared.push(LockedRead {
                            key: text(key.as_bytes()),
                            for_update_ts: self.for_update_ts.version(),
                            value: value.clone(),
                            with_conflict: false,
                        });
                        self.shared_values.insert(key, value);
                    }
                    self.next_call(now);
                }
            },
            Step::Lock(op) => {
                if let Some(result) = op.poll_result() {
                    let follow_up = op.take_follow_up();
                    self.after_lock(result, follow_up, now);
                }
            }
            Step::Commit(op) => {
                if let Some(result) = op.poll_result() {
                    let follow_up = op.take_follow_up();
                    self.report(match result {
                        Ok(outcome) => TxnOutcome::Committed {
                            commit_ts: outcome.commit_ts.version(),
                            mode: Some(outcome.mode),
                        },
                        Err(Error::Undetermined(why)) => TxnOutcome::Undetermined(why),
                        Err(e) => TxnOutcome::Failed(e.to_string()),
                    });
                    // The commit settled the primary's fate: no more beats.
                    self.stop_keep_alive();
                    match follow_up {
                        Some(op) => self.set_step(Step::Tail(Box::new(op)), now),
                        None => self.set_step(Step::Done, now),
                    }
                }
            }
            Step::Tail(op) => {
                if op.poll_result().is_some() {
                    self.set_step(Step::Done, now);
                }
            }
            Step::Done => {}
        }
    }

    /// Drops the side machines that finished.
    fn check_sides(&mut self) {
        let done: Vec<u64> = self
            .sides
            .iter_mut()
            .filter_map(|(n, side)| {
                let finished = match side {
                    Side::KeepAlive(op) => op.poll_result().is_some(),
                    Side::Rollback(op) => op.poll_result().is_some(),
                };
                finished.then_some(*n)
            })
            .collect();
        for n in done {
            self.sides.remove(&n);
            if self.keep_alive == Some(n) {
                self.keep_alive = None;
            }
            self.abandon(Tag::Side(n));
        }
    }

    fn wrap(&mut self, tag: Tag, rpc: Rpc) -> Rpc {
        let rpc = self.ids.wrap(tag, rpc);
        self.outstanding.insert(rpc.id, tag);
        rpc
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

impl SimOp for PessProgram {
    fn start(&mut self, now: Instant) {
        self.set_step(Step::Timestamp(GetTimestamp::new()), now);
    }

    fn poll_rpc(&mut self, _now: Instant) -> Option<Rpc> {
        let sides: Vec<u64> = self.sides.keys().copied().collect();
        for n in sides {
            let rpc = self.sides.get_mut(&n).and_then(|s| each_side!(s, op => op.poll_rpc()));
            if let Some(rpc) = rpc {
                return Some(self.wrap(Tag::Side(n), rpc));
            }
        }
        let rpc = each_step!(&mut self.step, op => op.poll_rpc(), None)?;
        Some(self.wrap(Tag::Step(self.epoch), rpc))
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.outstanding.remove(&id);
        let Some((tag, id)) = self.ids.take(id) else { return };
        match tag {
            Tag::Side(n) => {
                if let Some(side) = self.sides.get_mut(&n) {
                    each_side!(side, op => op.on_response(id, response, now));
                }
                self.check_sides();
            }
            Tag::Step(epoch) if epoch == self.epoch => {
                each_step!(&mut self.step, op => op.on_response(id, response, now), {});
                self.check(now);
            }
            Tag::Step(_) => {}
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        for side in self.sides.values_mut() {
            if each_side!(side, op => op.poll_timeout()).is_some_and(|t| t <= now) {
                each_side!(side, op => op.on_timeout(now));
            }
        }
        self.check_sides();
        if each_step!(&self.step, op => op.poll_timeout(), None).is_some_and(|t| t <= now) {
            each_step!(&mut self.step, op => op.on_timeout(now), {});
            self.check(now);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let step = each_step!(&self.step, op => op.poll_timeout(), None);
        self.sides
            .values()
            .map(|s| each_side!(s, op => op.poll_timeout()))
            .fold(step, tikv_core::time::earliest)
    }

    fn poll_result(&mut self) -> Option<Finished> {
        self.result.take().map(|(run, outcome)| Finished::Txn(Box::new((run, outcome))))
    }

    fn is_done(&self) -> bool {
        matches!(self.step, Step::Done) && self.sides.is_empty()
    }

    fn committing(&self) -> bool {
        // A crash from the first lock on leaves pessimistic locks behind.
        !self.values.is_empty()
            || !self.shared_values.is_empty()
            || matches!(self.step, Step::Commit(_))
    }

    fn progress(&self) -> Option<TxnRun> {
        Some(self.run.clone())
    }

    fn abandoned(&mut self) -> Vec<RpcId> {
        std::mem::take(&mut self.abandoned)
    }
}

/// The membuffer flags of a key the transaction locked (client-go's
/// `LockKeys` sets them): locked, its existence as the lock saw it, and the
/// lock's `mode` (exclusive or shared).
fn locked_flags(exists: bool, mode: FlagsOp) -> [FlagsOp; 4] {
    let exists =
        if exists { FlagsOp::SetKeyLockedValueExists } else { FlagsOp::SetKeyLockedValueNotExists };
    [FlagsOp::SetKeyLocked, FlagsOp::DelNeedCheckExists, exists, mode]
}
