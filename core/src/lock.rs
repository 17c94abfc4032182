//! The lock resolver (client-go `txnlock.LockResolver`).
//!
//! A reader or writer that meets another transaction's lock asks the lock's
//! primary for the transaction's fate (`CheckTxnStatus`), then:
//! - the transaction is alive: report how long until its lock expires (the
//!   caller backs off, capped by that), or for a reader whose timestamp the
//!   primary's `min_commit_ts` was pushed past, ignore the lock;
//! - committed or rolled back: clean the lock up (`ResolveLock` for the key,
//!   or for the whole region when the transaction is large;
//!   `PessimisticRollback` for a pessimistic lock), and tell a reader whether
//!   it may read through the lock (committed after it: ignore; committed
//!   before it: access the committed value);
//! - async commit with an expired primary: find the outcome from the
//!   secondaries (`CheckSecondaryLocks`) and resolve every key.
//!
//! Determined outcomes are cached per client (client-go keeps 2048).

use std::collections::VecDeque;
use std::sync::Arc;

use tikv_proto::kvrpcpb;

use crate::backoff::{BackoffKind, Backoffer};
use crate::error::Error;
use crate::key::Key;
use crate::op::{Operation, StepEvent, StepSlot};
use crate::pd::{GetTimestamp, Timestamp};
use crate::route::fanout::{KeyFanout, KeyPlan, Point, PointPlan};
use crate::rpc::{KvRequest, KvResponse, RequestTags};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

pub mod status;

pub use status::{Lock, TXN_STATUS_CACHE_SIZE, TxnStatus, TxnStatusCache};

/// client-go's `ResolveLockLiteThreshold`: transactions with fewer keys are
/// resolved key by key, larger ones region-wide.
pub const RESOLVE_LITE_THRESHOLD: u64 = 512;

/// What the caller learns from resolving.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolveOutcome {
    /// Milliseconds until the earliest still-alive lock expires; 0 if none
    /// is alive (the caller retries at once).
    pub ms_before_expired: u64,
    /// Transactions whose locks a reader may skip (`Context.resolved_locks`):
    /// rolled back, committed after the reader, or pushed past it.
    pub ignore_locks: Vec<Timestamp>,
    /// Transactions committed before the reader, whose values it may read
    /// through their locks (`Context.committed_locks`).
    pub access_locks: Vec<Timestamp>,
}

/// Options of [`ResolveLocks`] (client-go `ResolveLocksOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolveOptions {
    /// The start ts of the reader or writer that met the locks.
    pub caller_start_ts: Timestamp,
    /// A reader: locks it may skip or read through are reported.
    pub for_read: bool,
    /// Resolve key by key even for large transactions.
    pub lite: bool,
    /// Stamped into every request (client-go takes the caller's request
    /// source and resource group from its context).
    pub tags: RequestTags,
}

// ---------------------------------------------------------------- plans

/// `CheckTxnStatus` on the primary.
#[derive(Debug)]
struct CheckStatusPlan {
    lock: Lock,
    caller_start_ts: Timestamp,
    current_ts: Timestamp,
    rollback_if_not_exist: bool,
    force_sync_commit: bool,
    outcome: Option<Result<TxnStatus, StatusError>>,
}

/// The answers of `CheckTxnStatus` that change what the resolver does.
#[derive(Clone, Debug)]
enum StatusError {
    TxnNotFound,
    PrimaryMismatch,
    Other(Error),
}

impl PointPlan for CheckStatusPlan {
    type Output = Result<TxnStatus, StatusError>;
    fn build(&mut self, key: &Key) -> KvRequest {
        KvRequest::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusRequest {
            primary_key: key.to_bytes(),
            lock_ts: self.lock.txn_id.version(),
            caller_start_ts: self.caller_start_ts.version(),
            current_ts: self.current_ts.version(),
            rollback_if_not_exist: self.rollback_if_not_exist,
            force_sync_commit: self.force_sync_commit,
            resolving_pessimistic_lock: self.lock.is_pessimistic(),
            verify_is_primary: true,
            is_txn_file: self.lock.is_txn_file,
            ..Default::default()
        }))
    }
    fn merge(&mut self, response: KvResponse) -> Result<(), Error> {
        let KvResponse::CheckTxnStatus(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        self.outcome = Some(match r.error {
            Some(e) if e.txn_not_found.is_some() => Err(StatusError::TxnNotFound),
            Some(e) if e.primary_mismatch.is_some() => Err(StatusError::PrimaryMismatch),
            Some(e) => Err(StatusError::Other(Error::KeyError(Box::new(e)))),
            None => Ok(TxnStatus {
                ttl: r.lock_ttl,
                commit_ts: Timestamp::from_version(r.commit_version),
                action: kvrpcpb::Action::try_from(r.action).unwrap_or(kvrpcpb::Action::NoAction),
                primary_lock: r.lock_info,
            }),
        });
        Ok(())
    }
    fn finish(self) -> Result<TxnStatus, StatusError> {
        self.outcome
            .unwrap_or(Err(StatusError::Other(Error::malformed("no CheckTxnStatus answer"))))
    }
}

/// `CheckSecondaryLocks` over the keys of an async-commit transaction.
#[derive(Debug)]
struct SecondariesPlan {
    txn_id: Timestamp,
    timeout: Duration,
    locks: Vec<kvrpcpb::LockInfo>,
    commit_ts: Timestamp,
    missing: bool,
    checked: usize,
}

impl KeyPlan for SecondariesPlan {
    type Item = Key;
    type Output = SecondariesPlan;
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (usize::MAX, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        KvRequest::CheckSecondaryLocks(Box::new(kvrpcpb::CheckSecondaryLocksRequest {
            keys: batch.iter().map(Key::to_bytes).collect(),
            start_version: self.txn_id.version(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::CheckSecondaryLocks(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if let Some(e) = r.error {
            return Err(Error::KeyError(Box::new(e)));
        }
        if let Some(l) = r.locks.iter().find(|l| l.lock_version != self.txn_id.version()) {
            // client-go `addKeys`: "unexpected timestamp".
            return Err(Error::malformed(format!(
                "CheckSecondaryLocks of txn {} answered a lock of txn {}",
                self.txn_id, l.lock_version
            )));
        }
        if r.commit_ts > 0 {
            let commit_ts = Timestamp::from_version(r.commit_ts);
            if !self.commit_ts.is_zero() && self.commit_ts != commit_ts {
                return Err(Error::malformed(format!(
                    "txn {} reported committed at {} and {}",
                    self.txn_id, self.commit_ts, commit_ts
                )));
            }
            self.commit_ts = commit_ts;
        } else if r.locks.len() < batch.len() {
            // TiKV rolls back (and reports nothing for) a missing lock of an
            // uncommitted transaction.
            self.missing = true;
        }
        self.checked += batch.len();
        self.locks.extend(r.locks);
        Ok(())
    }
    fn finish(self) -> SecondariesPlan {
        self
    }
}

/// `ResolveLock` with keys (lite) or region-wide (no keys). Pessimistic
/// locks are rolled back with [`pessimistic_rollback`].
#[derive(Debug)]
struct CleanupPlan {
    txn_id: Timestamp,
    commit_ts: Timestamp,
    with_keys: bool,
    is_txn_file: bool,
    timeout: Duration,
}

impl KeyPlan for CleanupPlan {
    type Item = Key;
    type Output = ();
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (usize::MAX, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        KvRequest::ResolveLock(Box::new(kvrpcpb::ResolveLockRequest {
            start_version: self.txn_id.version(),
            commit_version: self.commit_ts.version(),
            is_txn_file: self.is_txn_file,
            keys: if self.with_keys {
                batch.iter().map(Key::to_bytes).collect()
            } else {
                Vec::new()
            },
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::ResolveLock(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        match r.error {
            Some(e) => Err(Error::KeyError(Box::new(e))),
            None => Ok(()),
        }
    }
    fn finish(self) {}
}

/// `PessimisticRollback` of keys (client-go `actionPessimisticRollback`):
/// removes the transaction's pessimistic locks on them whose
/// `for_update_ts` is at or below the request's.
#[derive(Debug)]
pub struct PessimisticRollbackPlan {
    start_ts: Timestamp,
    for_update_ts: Timestamp,
    timeout: Duration,
}

impl KeyPlan for PessimisticRollbackPlan {
    type Item = Key;
    type Output = ();
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (usize::MAX, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        KvRequest::PessimisticRollback(Box::new(kvrpcpb::PessimisticRollbackRequest {
            start_version: self.start_ts.version(),
            for_update_ts: self.for_update_ts.version(),
            keys: batch.iter().map(Key::to_bytes).collect(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::PessimisticRollback(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        match r.errors.into_iter().next() {
            Some(e) => Err(Error::KeyError(Box::new(e))),
            None => Ok(()),
        }
    }
    fn finish(self) {}
}

/// Rolls back the pessimistic locks of the transaction `start_ts` on
/// `keys` taken at or below `for_update_ts`, spending `backoffer`.
pub fn pessimistic_rollback(
    view: &Arc<ClusterView>,
    start_ts: Timestamp,
    for_update_ts: Timestamp,
    keys: Vec<Key>,
    backoffer: Backoffer,
) -> KeyFanout<PessimisticRollbackPlan> {
    let plan = PessimisticRollbackPlan {
        start_ts,
        for_update_ts,
        timeout: view.config.read_timeout_short,
    };
    KeyFanout::new(view.clone(), plan, keys, backoffer)
}

// ---------------------------------------------------------------- the machine

/// What a step of the resolution produced.
enum Done {
    /// "Now" for TTL checks.
    Timestamp(Result<Timestamp, Error>),
    /// The current lock's transaction status from its primary.
    Status(Result<Result<TxnStatus, StatusError>, Error>),
    /// The async-commit secondaries' states.
    Secondaries(Result<SecondariesPlan, Error>),
    /// The current lock (and its companions) cleaned up.
    Cleanup(Result<(), Error>),
}

/// The lock being resolved and what is known of it so far.
#[derive(Debug)]
struct Current {
    lock: Lock,
    rollback_if_not_exist: bool,
    force_sync_commit: bool,
    status: TxnStatus,
}

/// Resolves a set of locks met by one request (client-go
/// `LockResolver.ResolveLocksWithOpts`), one lock after another.
pub struct ResolveLocks {
    view: Arc<ClusterView>,
    opts: ResolveOptions,
    locks: VecDeque<Lock>,
    current_ts: Timestamp,
    current: Option<Current>,
    started: bool,
    step: StepSlot<Done>,
    backoffer: Backoffer,
    /// (txn, region) pairs already cleaned region-wide (client-go's
    /// `cleanRegions`): one region-wide `ResolveLock` covers every lock of
    /// that transaction in the region.
    cleaned: Vec<(Timestamp, u64)>,
    ms_before_expired: Option<u64>,
    outcome: ResolveOutcome,
    result: Option<Result<ResolveOutcome, Error>>,
}

impl std::fmt::Debug for ResolveLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveLocks")
            .field("opts", &self.opts)
            .field("pending", &self.locks.len())
            .field("current", &self.current)
            .finish()
    }
}

impl ResolveLocks {
    /// Resolves `locks` for a caller described by `opts`.
    pub fn new(
        view: Arc<ClusterView>,
        locks: Vec<Lock>,
        opts: ResolveOptions,
        backoffer: Backoffer,
    ) -> ResolveLocks {
        ResolveLocks {
            view,
            opts,
            locks: locks.into(),
            current_ts: Timestamp::MAX,
            current: None,
            started: false,
            step: StepSlot::new(),
            backoffer,
            cleaned: Vec::new(),
            ms_before_expired: None,
            outcome: ResolveOutcome::default(),
            result: None,
        }
    }

    /// The budget with every finished step's sleeps folded in (a caller
    /// running this as one of its steps merges it back).
    pub fn backoffer(&self) -> &Backoffer {
        &self.backoffer
    }

    fn timeout(&self) -> Duration {
        self.view.config.read_timeout_short
    }

    fn fail(&mut self, e: Error) {
        self.step.clear();
        self.result = Some(Err(e));
    }

    /// Takes the next lock, or finishes.
    fn next_lock(&mut self, now: Instant) {
        let Some(lock) = self.locks.pop_front() else {
            self.outcome.ms_before_expired = self.ms_before_expired.unwrap_or(0);
            self.step.clear();
            self.result = Some(Ok(std::mem::take(&mut self.outcome)));
            return;
        };
        self.current = Some(Current {
            lock,
            rollback_if_not_exist: false,
            force_sync_commit: false,
            status: TxnStatus::default(),
        });
        if let Some(cur) = &self.current
            && let Some(status) = self.view.txn_status.get(cur.lock.txn_id)
        {
            // Already known to be committed or rolled back: clean this lock
            // up without asking the primary again.
            self.cleanup(status, now);
            return;
        }
        self.check_status(now);
    }

    fn check_status(&mut self, now: Instant) {
        let Some(cur) = &self.current else {
            return;
        };
        let plan = CheckStatusPlan {
            lock: cur.lock.clone(),
            caller_start_ts: self.opts.caller_start_ts,
            // TTL 0 is TiKV's "resolve unconditionally": current_ts = max.
            current_ts: if cur.lock.ttl == 0 { Timestamp::MAX } else { self.current_ts },
            rollback_if_not_exist: cur.rollback_if_not_exist,
            force_sync_commit: cur.force_sync_commit,
            outcome: None,
        };
        let primary = cur.lock.primary.clone();
        let op = Point::fanout(&self.view, plan, primary, self.timeout(), self.backoffer.fork())
            .with_tags(&self.opts.tags);
        self.step.start(op, Done::Status, now);
    }

    fn on_status(&mut self, outcome: Result<TxnStatus, StatusError>, now: Instant) {
        let current_ts = self.current_ts;
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let status = match outcome {
            Ok(status) => status,
            Err(StatusError::TxnNotFound) if cur.rollback_if_not_exist => {
                // TiKV rolls the transaction back instead of answering this
                // (`check_txn_status_missing_lock`); asking again would
                // loop for as long as the server keeps saying it.
                let e = Error::malformed(format!(
                    "txn {} not found although rollback_if_not_exist was set",
                    cur.lock.txn_id
                ));
                self.fail(e);
                return;
            }
            Err(StatusError::TxnNotFound) => {
                // client-go getTxnStatusFromLock: an expired lock whose
                // primary has no trace is rolled back; a live pessimistic
                // lock is treated as alive; otherwise wait for the primary
                // to be written (the prewrite may still be on its way).
                if cur.lock.ms_until_expired(cur.lock.ttl, current_ts) == 0 {
                    cur.rollback_if_not_exist = true;
                    self.check_status(now);
                } else if cur.lock.is_pessimistic() {
                    let status = TxnStatus { ttl: cur.lock.ttl, ..Default::default() };
                    self.record(status, now);
                } else {
                    let reason = format!("txn {} not found at its primary", cur.lock.txn_id);
                    match self.backoffer.backoff(BackoffKind::TxnNotFound, reason) {
                        Ok(sleep) => self.step.sleep_until(now + sleep),
                        Err(e) => self.fail(e),
                    }
                }
                return;
            }
            Err(StatusError::PrimaryMismatch) if cur.lock.is_pessimistic() => {
                // The key is no longer this transaction's primary: its
                // pessimistic lock is stale; just roll it back.
                TxnStatus::default()
            }
            Err(StatusError::PrimaryMismatch) => {
                let e = Error::malformed(format!(
                    "primary mismatch on a non-pessimistic lock of txn {}",
                    cur.lock.txn_id
                ));
                self.fail(e);
                return;
            }
            Err(StatusError::Other(e)) => {
                self.fail(e);
                return;
            }
        };
        self.view.txn_status.insert(cur.lock.txn_id, &status);
        let expired_async_commit = status.primary_lock.as_ref().is_some_and(|l| l.use_async_commit)
            && !cur.force_sync_commit
            && cur.lock.ms_until_expired(status.ttl, current_ts) == 0;
        if status.ttl != 0 && !expired_async_commit {
            self.record(status, now);
        } else if expired_async_commit {
            self.check_secondaries(status, now);
        } else {
            self.cleanup(status, now);
        }
    }

    /// client-go `resolveAsyncCommitLock`: the primary's lock lists the
    /// secondaries; their states decide the outcome.
    fn check_secondaries(&mut self, status: TxnStatus, now: Instant) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(primary) = status.primary_lock.clone() else {
            return;
        };
        let mut keys: Vec<Key> = primary.secondaries.iter().cloned().map(Key::from).collect();
        keys.push(cur.lock.primary.clone());
        let txn_id = cur.lock.txn_id;
        cur.status = status;
        let plan = SecondariesPlan {
            txn_id,
            timeout: self.timeout(),
            locks: Vec::new(),
            commit_ts: Timestamp::ZERO,
            missing: false,
            checked: 0,
        };
        let op = KeyFanout::new(self.view.clone(), plan, keys, self.backoffer.fork())
            .with_tags(&self.opts.tags);
        self.step.start(op, Done::Secondaries, now);
    }

    fn on_secondaries(&mut self, checked: SecondariesPlan, now: Instant) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if checked.locks.iter().any(|l| !l.use_async_commit) {
            // A key was locked by a non-async-commit prewrite: the commit
            // fell back to 2PC; ask the primary again with force_sync_commit.
            cur.force_sync_commit = true;
            self.check_status(now);
            return;
        }
        let primary_min = cur.status.primary_lock.as_ref().map_or(0, |l| l.min_commit_ts);
        let largest_min = Timestamp::from_version(
            checked.locks.iter().map(|l| l.min_commit_ts).fold(primary_min, u64::max),
        );
        let commit_ts = if !checked.commit_ts.is_zero() {
            if checked.commit_ts < largest_min {
                // client-go: "commit TS must be greater or equal to min
                // commit TS".
                let e = Error::malformed(format!(
                    "txn {} reported committed at {} below a lock's min_commit_ts {largest_min}",
                    cur.lock.txn_id, checked.commit_ts
                ));
                self.fail(e);
                return;
            }
            checked.commit_ts
        } else if checked.missing {
            Timestamp::ZERO
        } else if largest_min.is_zero() {
            // Every lock is there, so the transaction committed, but TiKV
            // writes no async-commit lock without a min_commit_ts: the
            // commit ts is unknowable. Rolling back could undo a commit.
            let e = Error::malformed(format!(
                "async-commit locks of txn {} carry no min_commit_ts",
                cur.lock.txn_id
            ));
            self.fail(e);
            return;
        } else {
            largest_min
        };
        let status = TxnStatus { ttl: 0, commit_ts, action: cur.status.action, primary_lock: None };
        self.view.txn_status.insert(cur.lock.txn_id, &status);
        // Resolve every key of the transaction, primary included.
        let mut keys: Vec<Key> = cur
            .status
            .primary_lock
            .as_ref()
            .map(|p| p.secondaries.iter().cloned().map(Key::from).collect())
            .unwrap_or_default();
        keys.push(cur.lock.primary.clone());
        cur.status = status;
        let plan = CleanupPlan {
            txn_id: cur.lock.txn_id,
            commit_ts,
            with_keys: true,
            is_txn_file: cur.lock.is_txn_file,
            timeout: self.timeout(),
        };
        let op = KeyFanout::new(self.view.clone(), plan, keys, self.backoffer.fork())
            .with_tags(&self.opts.tags);
        self.step.start(op, Done::Cleanup, now);
    }

    /// Cleans up the current lock of a determined transaction.
    fn cleanup(&mut self, status: TxnStatus, now: Instant) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        cur.status = status.clone();
        let lock = &cur.lock;
        if lock.is_pessimistic() {
            // client-go: a lock without for_update_ts rolls back any.
            let for_update_ts =
                if lock.for_update_ts.is_zero() { Timestamp::MAX } else { lock.for_update_ts };
            let op = pessimistic_rollback(
                &self.view,
                lock.txn_id,
                for_update_ts,
                vec![lock.key.clone()],
                self.backoffer.fork(),
            )
            .with_tags(&self.opts.tags);
            self.step.start(op, Done::Cleanup, now);
            return;
        }
        let lite = self.opts.lite || lock.txn_size < RESOLVE_LITE_THRESHOLD;
        if !lite {
            let region = self.view.regions.locate_key(lock.key.as_bytes(), now).map(|r| r.id());
            if let Some(region) = region {
                if self.cleaned.contains(&(lock.txn_id, region)) {
                    self.record(status, now);
                    return;
                }
                self.cleaned.push((lock.txn_id, region));
            }
        }
        let plan = CleanupPlan {
            txn_id: lock.txn_id,
            commit_ts: status.commit_ts,
            with_keys: lite,
            is_txn_file: lock.is_txn_file,
            timeout: self.view.config.read_timeout_short,
        };
        let mut keys = vec![lock.key.clone()];
        if lite {
            // client-go's `batchLiteResolveLocks`: the other pending locks of
            // this transaction that would be resolved key by key too ride
            // along, one request per region instead of one per key. Their
            // outcome is the transaction's, filed once for it.
            let (txn_id, lite) = (lock.txn_id, self.opts.lite);
            let mut rest = VecDeque::with_capacity(self.locks.len());
            for l in self.locks.drain(..) {
                let same_fate = l.txn_id == txn_id
                    && !l.is_pessimistic()
                    && (lite || l.txn_size < RESOLVE_LITE_THRESHOLD);
                if same_fate {
                    keys.push(l.key);
                } else {
                    rest.push_back(l);
                }
            }
            self.locks = rest;
        }
        let op = KeyFanout::new(self.view.clone(), plan, keys, self.backoffer.fork())
            .with_tags(&self.opts.tags);
        self.step.start(op, Done::Cleanup, now);
    }

    /// Files the current lock's outcome (client-go's loop at the end of
    /// `resolveLocks`) and moves on.
    fn record(&mut self, status: TxnStatus, now: Instant) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let txn = cur.lock.txn_id;
        let caller = self.opts.caller_start_ts;
        let mut alive = || {
            let ms = cur.lock.ms_until_expired(status.ttl, self.current_ts);
            self.ms_before_expired = Some(self.ms_before_expired.map_or(ms, |m| m.min(ms)));
        };
        if !self.opts.for_read && status.ttl != 0 {
            alive();
        } else if status.action == kvrpcpb::Action::MinCommitTsPushed
            || status.is_rolled_back()
            || (status.is_committed() && status.commit_ts > caller)
        {
            if !self.outcome.ignore_locks.contains(&txn) {
                self.outcome.ignore_locks.push(txn);
            }
        } else if status.is_committed() {
            if !self.outcome.access_locks.contains(&txn) {
                self.outcome.access_locks.push(txn);
            }
        } else {
            alive();
        }
        self.next_lock(now);
    }

    /// Moves on when the current step has finished, until one is running.
    /// Each finished step's sleeps are folded back, so one budget covers the
    /// whole resolution (client-go passes one `Backoffer` through every
    /// step).
    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.backoffer)) {
            match event {
                StepEvent::Woke => self.check_status(now),
                StepEvent::Done(Done::Timestamp(Ok(ts))) => {
                    self.current_ts = ts;
                    self.next_lock(now);
                }
                StepEvent::Done(Done::Status(Ok(status))) => self.on_status(status, now),
                StepEvent::Done(Done::Secondaries(Ok(checked))) => {
                    self.on_secondaries(checked, now)
                }
                StepEvent::Done(Done::Cleanup(Ok(()))) => {
                    let status =
                        self.current.as_ref().map(|c| c.status.clone()).unwrap_or_default();
                    self.record(status, now);
                }
                StepEvent::Done(
                    Done::Timestamp(Err(e))
                    | Done::Status(Err(e))
                    | Done::Secondaries(Err(e))
                    | Done::Cleanup(Err(e)),
                ) => self.fail(e),
            }
        }
    }
}

impl Operation for ResolveLocks {
    type Output = ResolveOutcome;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        if self.locks.iter().any(|l| l.ttl != 0) {
            // "Now" for TTL checks: client-go's low-resolution timestamp,
            // the newest this client has seen, while it is recent; else a
            // fresh one from PD.
            let max_age = self.view.config.low_resolution_ts_max_age;
            if let Some(ts) = self.view.last_ts.fresh(now, max_age) {
                self.current_ts = ts;
                self.next_lock(now);
            } else {
                self.step.start(GetTimestamp::new(), Done::Timestamp, now);
            }
        } else {
            self.next_lock(now);
        }
        self.check(now);
    }

    crate::op::forward_step_inputs!(step);

    fn poll_result(&mut self) -> Option<Result<ResolveOutcome, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.backoffer)
    }
}

#[cfg(test)]
mod tests;
