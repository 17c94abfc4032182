//! Pessimistic locking (client-go `actionPessimisticLock` and
//! `actionPessimisticRollback`, driven from `KVTxn.lockKeys`).
//!
//! [`AcquirePessimisticLocks`] locks a set of keys at a `for_update_ts`:
//!
//! 1. **The primary first.** When the call locks the transaction's primary
//!    (or chooses it: the smallest key, when the transaction has none yet),
//!    the primary's batch (the keys of its cached region, up to 16 KiB; the
//!    primary alone if its region is not cached) is locked before any other
//!    key, so a secondary lock never exists without its primary, as in
//!    client-go.
//! 2. **The other keys**, grouped by region, in parallel.
//! 3. **Answers.** A `KeyIsLocked` whose lock was updated in the last
//!    [`SKIP_RESOLVE_THRESHOLD_MS`] belongs to a live transaction: the batch
//!    is sent again at once (TiKV does the waiting). An older lock goes to
//!    the resolver, without a backoff sleep (TiKV already waited); a lock
//!    still alive after that ends a no-wait call with
//!    [`Error::LockAcquireFailAndNoWaitSet`] and a call past its wait limit
//!    with [`Error::LockWaitTimeout`]. `Deadlock`, `WriteConflict`
//!    (a newer write than `for_update_ts`), `AlreadyExist` and any other key
//!    error end the call.
//! 4. **Failure.** The keys of the failed call are rolled back
//!    (`PessimisticRollback` at the call's `for_update_ts`), handed to the
//!    runtime as [`AcquirePessimisticLocks::take_follow_up`] (client-go's
//!    `asyncPessimisticRollback`). A single key that failed with a write
//!    conflict or `AlreadyExist` was not locked and needs none.
//!
//! TiKV's legacy wake-up mode (`WakeUpModeNormal`) is the default: a
//! request that waited and was woken answers a write conflict. A call of
//! one key may ask for `WakeUpModeForceLock` (client-go's fair locking): the
//! woken request takes the lock over a newer write and reports it as
//! `LockedWithConflict`; the failed call's rollback then covers that
//! write's ts.

use std::sync::Arc;

use tikv_proto::kvrpcpb;

use crate::backoff::{Backoffer, KindSleeps};
use crate::error::Error;
use crate::exec_details::{RequestDetail, RequestTimer};
use crate::key::{Key, Value};
use crate::lock::{
    Lock, PessimisticRollbackPlan, ResolveLocks, ResolveOptions, ResolveOutcome,
    pessimistic_rollback,
};
use crate::op::{Operation, StepEvent, StepSlot};
use crate::pd::Timestamp;
use crate::route::fanout::{KeyFanout, KeyPlan};
use crate::rpc::{KvRequest, KvResponse, RequestTags, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant};
use crate::txn::commit::{MAX_LOCK_TTL, TXN_COMMIT_BATCH_SIZE};
use crate::view::ClusterView;

/// client-go `skipResolveThresholdMs`: a lock updated this recently
/// belongs to a transaction that is very likely alive; it is not resolved.
pub const SKIP_RESOLVE_THRESHOLD_MS: u64 = 300;

/// `wait_timeout` of a request that must not wait (client-go `LockNoWait`).
pub const LOCK_NO_WAIT: i64 = -1;

/// `wait_timeout` of a request that waits as long as TiKV allows
/// (client-go `LockAlwaysWait`; TiKV caps it by its `wait-for-lock-timeout`).
pub const LOCK_ALWAYS_WAIT: i64 = i64::MAX;

/// How long a lock request waits for other transactions' locks
/// (client-go `LockCtx.LockWaitTime`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once with [`Error::LockAcquireFailAndNoWaitSet`].
    NoWait,
    /// Wait until the lock is released (client-go's default).
    #[default]
    Always,
    /// Wait at most this long in total, then fail with
    /// [`Error::LockWaitTimeout`].
    Timeout(Duration),
}

impl LockWait {
    /// The request's `wait_timeout`, `waited` into the call (client-go
    /// `calculateEffectiveWaitTime`: the time left, no-wait once none is).
    pub fn wait_timeout_ms(self, waited: Duration) -> i64 {
        match self {
            LockWait::NoWait => LOCK_NO_WAIT,
            LockWait::Always => LOCK_ALWAYS_WAIT,
            LockWait::Timeout(limit) => match limit.checked_sub(waited) {
                Some(left) if !left.is_zero() => {
                    i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1)
                }
                _ => LOCK_NO_WAIT,
            },
        }
    }

    /// Whether a call still blocked `waited` into it gives up, and how.
    fn gives_up(self, waited: Duration) -> Option<Error> {
        match self {
            LockWait::NoWait => Some(Error::LockAcquireFailAndNoWaitSet),
            LockWait::Always => None,
            LockWait::Timeout(limit) if waited >= limit => Some(Error::LockWaitTimeout),
            LockWait::Timeout(_) => None,
        }
    }
}

/// What a lock call asks for (client-go `kv.LockCtx`), built like:
///
/// ```
/// use tikv_core::time::Duration;
/// use tikv_core::txn::pessimistic::{LockOptions, LockWait};
///
/// let opts = LockOptions::new().wait_timeout(Duration::from_millis(50)).return_values();
/// assert_eq!(opts.wait, LockWait::Timeout(Duration::from_millis(50)));
/// assert!(opts.return_values && !opts.check_existence);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// How long to wait for other transactions' locks.
    pub wait: LockWait,
    /// Return each key's latest committed value.
    pub return_values: bool,
    /// Return whether each key exists.
    pub check_existence: bool,
    /// Lock only the keys that exist (needs `return_values`, as in
    /// client-go).
    pub lock_only_if_exists: bool,
    /// Take shared locks (`SharedPessimisticLock`): other transactions may
    /// share them, none may lock the keys exclusively. As in client-go, a
    /// shared lock is never the primary (the transaction must have locked
    /// one exclusively before) and is never upgraded.
    pub in_share_mode: bool,
}

impl LockOptions {
    /// Waits as long as TiKV allows; returns nothing.
    pub fn new() -> LockOptions {
        LockOptions::default()
    }

    /// Waits for other transactions' locks as `wait` says.
    pub fn with_wait(mut self, wait: LockWait) -> LockOptions {
        self.wait = wait;
        self
    }

    /// Fails at once on a live lock.
    pub fn no_wait(mut self) -> LockOptions {
        self.wait = LockWait::NoWait;
        self
    }

    /// Waits at most `limit` for locks in total.
    pub fn wait_timeout(mut self, limit: Duration) -> LockOptions {
        self.wait = LockWait::Timeout(limit);
        self
    }

    /// Returns the keys' values.
    pub fn return_values(mut self) -> LockOptions {
        self.return_values = true;
        self
    }

    /// Returns whether the keys exist.
    pub fn check_existence(mut self) -> LockOptions {
        self.check_existence = true;
        self
    }

    /// Locks only the keys that exist.
    pub fn lock_only_if_exists(mut self) -> LockOptions {
        self.lock_only_if_exists = true;
        self
    }

    /// Takes shared locks.
    pub fn in_share_mode(mut self) -> LockOptions {
        self.in_share_mode = true;
        self
    }
}

/// One lock call of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireRequest {
    /// The transaction's start ts.
    pub start_ts: Timestamp,
    /// The ts the locks are taken at: a key written after it conflicts.
    pub for_update_ts: Timestamp,
    /// The transaction's primary, if it has one; otherwise this call
    /// chooses its smallest key.
    pub primary: Option<Key>,
    /// The keys to lock (any order, duplicates allowed), none of them
    /// locked by this transaction yet.
    pub keys: Vec<Key>,
    /// Keys of `keys` the transaction presumes absent (it inserts them):
    /// their lock requests assert `NotExist`, so TiKV refuses to lock an
    /// existing one with `AlreadyExist` (client-go
    /// `HasPresumeKeyNotExists`).
    pub presumed_absent: Vec<Key>,
    /// How long the transaction has been running (lock TTLs count from its
    /// start).
    pub txn_elapsed: Duration,
    /// What the call asks for.
    pub options: LockOptions,
    /// Lock in TiKV's `WakeUpModeForceLock` (client-go's fair locking of a
    /// single key): a request woken after waiting takes the lock even over
    /// a newer write, answering `LockedWithConflict` with that write's ts,
    /// instead of failing with a write conflict. Only for one key; calls
    /// of several keys use the legacy mode.
    pub force_lock: bool,
    /// Priority, request source and resource group of every request.
    pub tags: RequestTags,
}

/// A key's value as the lock call read it (client-go `kv.ReturnedValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReturnedValue {
    /// The latest committed value (empty unless values were asked for or
    /// the key does not exist).
    pub value: Value,
    /// Whether the key exists.
    pub exists: bool,
    /// In `WakeUpModeForceLock`, the commit ts of a write newer than the
    /// call's `for_update_ts` that the lock was taken over (zero if none):
    /// the value is as of that write, and the transaction must count its
    /// `for_update_ts` on this key from it.
    pub locked_with_conflict_ts: Timestamp,
    /// The transaction held the key's lock before the call, which read
    /// nothing for it (client-go `AlreadyLocked`): the caller reads it
    /// another way.
    pub already_locked: bool,
}

/// A successful lock call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcquireOutcome {
    /// The primary this call chose and locked (`None` if the transaction
    /// had one, or if a lock-only-if-exists call found it absent and so did
    /// not lock it).
    pub assigned_primary: Option<Key>,
    /// The keys that hold this transaction's lock now, sorted.
    pub locked: Vec<Key>,
    /// Per key, sorted, when values or existence were asked for, or when
    /// a key was locked with a conflict.
    pub values: Vec<(Key, ReturnedValue)>,
    /// The largest `locked_with_conflict_ts` of the call (zero if none):
    /// rolling these locks back needs a `for_update_ts` at least this.
    pub max_locked_with_conflict_ts: Timestamp,
}

/// How lock calls went (client-go `util.LockKeysDetails`, which
/// `LockKeys` fills in `LockCtx.Stats`, on failure too): where their time
/// went and what they sent. [`AcquirePessimisticLocks::details`] gives one
/// call's; [`LockKeysDetails::merge`] sums calls as client-go's `Merge`
/// does (TiDB merges every lock call of a statement, retries included).
///
/// ```
/// use tikv_core::time::Duration;
/// use tikv_core::txn::pessimistic::LockKeysDetails;
///
/// let mut first = LockKeysDetails::default();
/// first.keys = 2;
/// first.lock_rpc_time = Duration::from_millis(3);
/// let mut statement = LockKeysDetails::default();
/// statement.merge(&first);
/// statement.merge(&first);
/// assert_eq!(statement.keys, 4);
/// assert_eq!(statement.lock_rpc_time, Duration::from_millis(6));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockKeysDetails {
    /// Wall time of the calls (client-go `TotalTime`).
    pub total: Duration,
    /// Regions the keys were locked in: the distinct regions of the lock
    /// requests answered without a region error (client-go `RegionNum`).
    pub regions: usize,
    /// Keys the calls set out to lock, keys the transaction held already
    /// left out (client-go `LockKeys`; a fair-locking call counts the keys
    /// it takes over too).
    pub keys: usize,
    /// `PessimisticLock` requests answered, or lost in transport
    /// (client-go `LockRPCCount`).
    pub lock_rpc_count: u64,
    /// Their time from send to answer, summed over parallel requests too
    /// (client-go `LockRPCTime`); it includes the time TiKV held a request
    /// waiting for another transaction's lock.
    pub lock_rpc_time: Duration,
    /// Lock attempts redone at a fresh `for_update_ts` after a newer write
    /// (TiDB's statement retry; client-go's `RetryCount`, which `Merge`
    /// bumps for each attempt merged into a statement).
    pub statement_retries: u32,
    /// Lock requests sent again after meeting another transaction's lock
    /// (waited on in TiKV, or resolved first).
    pub lock_wait_retries: u32,
    /// Resolving the locks met (client-go `ResolveLock.ResolveLockTime`).
    pub resolve_lock: Duration,
    /// Backoff sleeps (client-go `BackoffTime`).
    pub backoff: Duration,
    /// The same sleeps by kind, in [`BackoffKind::ALL`] order (client-go
    /// `Mu.BackoffTypes`, with counts and times).
    ///
    /// [`BackoffKind::ALL`]: crate::backoff::BackoffKind::ALL
    pub backoff_by_kind: Vec<KindSleeps>,
    /// Keys fair locking locked with an RPC (client-go
    /// `AggressiveLockNewCount`).
    pub aggressive_lock_new: usize,
    /// Keys fair locking took over from the statement's previous attempt
    /// without an RPC (client-go `AggressiveLockDerivedCount`).
    pub aggressive_lock_derived: usize,
    /// Keys locked over a write newer than the `for_update_ts` (client-go
    /// `LockedWithConflictCount`).
    pub locked_with_conflict: usize,
    /// The slowest lock request that succeeded (client-go
    /// `Mu.SlowestReqTotalTime`, `SlowestRegion`, `SlowestStoreAddr`,
    /// `SlowestExecDetails`).
    pub slowest: Option<RequestDetail>,
}

impl LockKeysDetails {
    /// Adds `other` (client-go `LockKeysDetails.Merge`): counts and times
    /// add up, the slowest request is the slower of the two.
    pub fn merge(&mut self, other: &LockKeysDetails) {
        self.total += other.total;
        self.regions += other.regions;
        self.keys += other.keys;
        self.lock_rpc_count += other.lock_rpc_count;
        self.lock_rpc_time += other.lock_rpc_time;
        self.statement_retries += other.statement_retries;
        self.lock_wait_retries += other.lock_wait_retries;
        self.resolve_lock += other.resolve_lock;
        self.backoff += other.backoff;
        KindSleeps::add_into(&mut self.backoff_by_kind, other.backoff_by_kind.iter().copied());
        self.aggressive_lock_new += other.aggressive_lock_new;
        self.aggressive_lock_derived += other.aggressive_lock_derived;
        self.locked_with_conflict += other.locked_with_conflict;
        RequestDetail::keep_slowest(&mut self.slowest, other.slowest.as_ref());
    }
}

/// farmhash's `Fingerprint64` (TiKV hashes keys with it in the deadlock
/// detector; client-go compares `Deadlock.deadlock_key_hash` with it) for
/// keys of at most 64 bytes; `None` for longer ones.
pub fn fingerprint64(s: &[u8]) -> Option<u64> {
    const K0: u64 = 0xc3a5_c85c_97cb_3127;
    const K1: u64 = 0xb492_b66f_be98_f273;
    const K2: u64 = 0x9ae1_6a3b_2f90_404f;
    let fetch64 = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let fetch32 = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&s[i..i + 4]);
        u64::from(u32::from_le_bytes(b))
    };
    let shift_mix = |v: u64| v ^ (v >> 47);
    let len16 = |u: u64, v: u64, mul: u64| {
        let a = shift_mix((u ^ v).wrapping_mul(mul));
        shift_mix((v ^ a).wrapping_mul(mul)).wrapping_mul(mul)
    };
    let len = s.len();
    let mul = K2.wrapping_add(2 * len as u64);
    Some(match len {
        0 => K2,
        1..=3 => {
            let y = u32::from(s[0]).wrapping_add(u32::from(s[len >> 1]) << 8);
            let z = (len as u32).wrapping_add(u32::from(s[len - 1]) << 2);
            shift_mix(u64::from(y).wrapping_mul(K2) ^ u64::from(z).wrapping_mul(K0))
                .wrapping_mul(K2)
        }
        4..=7 => len16((len as u64).wrapping_add(fetch32(0) << 3), fetch32(len - 4), mul),
        8..=16 => {
            let a = fetch64(0).wrapping_add(K2);
            let b = fetch64(len - 8);
            let c = b.rotate_right(37).wrapping_mul(mul).wrapping_add(a);
            let d = a.rotate_right(25).wrapping_add(b).wrapping_mul(mul);
            len16(c, d, mul)
        }
        17..=32 => {
            let a = fetch64(0).wrapping_mul(K1);
            let b = fetch64(8);
            let c = fetch64(len - 8).wrapping_mul(mul);
            let d = fetch64(len - 16).wrapping_mul(K2);
            len16(
                a.wrapping_add(b).rotate_right(43).wrapping_add(c.rotate_right(30)).wrapping_add(d),
                a.wrapping_add(b.wrapping_add(K2).rotate_right(18)).wrapping_add(c),
                mul,
            )
        }
        33..=64 => {
            let a = fetch64(0).wrapping_mul(K2);
            let b = fetch64(8);
            let c = fetch64(len - 8).wrapping_mul(mul);
            let d = fetch64(len - 16).wrapping_mul(K2);
            let y =
                a.wrapping_add(b).rotate_right(43).wrapping_add(c.rotate_right(30)).wrapping_add(d);
            let z =
                len16(y, a.wrapping_add(b.wrapping_add(K2).rotate_right(18)).wrapping_add(c), mul);
            let e = fetch64(16).wrapping_mul(mul);
            let f = fetch64(24);
            let g = y.wrapping_add(fetch64(len - 32)).wrapping_mul(mul);
            let h = z.wrapping_add(fetch64(len - 24)).wrapping_mul(mul);
            len16(
                e.wrapping_add(f).rotate_right(43).wrapping_add(g.rotate_right(30)).wrapping_add(h),
                e.wrapping_add(f.wrapping_add(a).rotate_right(18)).wrapping_add(g),
                mul,
            )
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------- plans

/// `PessimisticLock` batches of one round.
#[derive(Debug)]
struct LockPlan {
    start_ts: Timestamp,
    for_update_ts: Timestamp,
    primary: Key,
    lock_ttl: u64,
    wait_timeout: i64,
    is_first_lock: bool,
    force_lock: bool,
    /// Sorted.
    presumed_absent: Arc<[Key]>,
    options: LockOptions,
    timeout: Duration,
    // Results.
    values: Vec<(Key, ReturnedValue)>,
    /// Keys of batches that met locks, to be locked again.
    retry: Vec<Key>,
    /// The locks met that are old enough to resolve.
    locks: Vec<Lock>,
    error: Option<Error>,
    /// The key that closed a deadlock cycle, when TiKV names it.
    deadlock_key: Option<Key>,
}

impl KeyPlan for LockPlan {
    type Item = Key;
    type Output = LockPlan;
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (usize::MAX, TXN_COMMIT_BATCH_SIZE)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        let op = if self.options.in_share_mode {
            kvrpcpb::Op::SharedPessimisticLock
        } else {
            kvrpcpb::Op::PessimisticLock
        };
        KvRequest::PessimisticLock(Box::new(kvrpcpb::PessimisticLockRequest {
            mutations: batch
                .iter()
                .map(|k| kvrpcpb::Mutation {
                    op: op as i32,
                    key: k.to_bytes(),
                    assertion: if self.presumed_absent.binary_search(k).is_ok() {
                        kvrpcpb::Assertion::NotExist as i32
                    } else {
                        kvrpcpb::Assertion::None as i32
                    },
                    ..Default::default()
                })
                .collect(),
            primary_lock: self.primary.to_bytes(),
            start_version: self.start_ts.version(),
            lock_ttl: self.lock_ttl,
            for_update_ts: self.for_update_ts.version(),
            is_first_lock: self.is_first_lock,
            wait_timeout: self.wait_timeout,
            return_values: self.options.return_values,
            // client-go `forUpdateTS + 1`.
            min_commit_ts: self.for_update_ts.next().version(),
            check_existence: self.options.check_existence,
            lock_only_if_exists: self.options.lock_only_if_exists,
            wake_up_mode: if self.force_lock {
                kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32
            } else {
                kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeNormal as i32
            },
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::PessimisticLock(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if self.force_lock {
            return self.merge_force_lock(batch, *r);
        }
        if !r.results.is_empty() {
            // client-go: the legacy mode answers in `values`/`not_founds`.
            return Err(Error::malformed("pessimistic lock response corrupted: per-key results"));
        }
        if r.errors.is_empty() {
            self.merge_values(batch, &r)?;
            return Ok(());
        }
        if self.take_key_errors(&r.errors) {
            // TiKV locks a batch all or nothing: the whole batch goes again.
            self.retry.extend(batch);
        }
        Ok(())
    }
    fn finish(self) -> LockPlan {
        self
    }
}

impl LockPlan {
    /// Takes a response's key errors (client-go
    /// `handleKeyErrorForResolve`): fatal ones become the call's error,
    /// locks old enough are kept for the resolver. Whether a lock was met.
    fn take_key_errors(&mut self, errors: &[kvrpcpb::KeyError]) -> bool {
        let mut retry = false;
        for e in errors {
            if let Some(exists) = &e.already_exist {
                self.error.get_or_insert(Error::KeyExists(exists.key.clone().into()));
            } else if let Some(d) = &e.deadlock {
                if !d.deadlock_key.is_empty() {
                    self.deadlock_key = Some(d.deadlock_key.clone().into());
                }
                self.error.get_or_insert(Error::Deadlock {
                    lock_ts: Timestamp::from_version(d.lock_ts),
                    lock_key: d.lock_key.clone().into(),
                    deadlock_key_hash: d.deadlock_key_hash,
                    wait_chain: d.wait_chain.clone(),
                    // Decided over all the call's keys once it is over.
                    retryable: false,
                });
            } else if let Some(info) = &e.locked {
                retry = true;
                // A shared lock wraps its holders' locks, each with its own
                // last update (client-go resolves them one by one).
                let held = if info.shared_lock_infos.is_empty() {
                    std::slice::from_ref(info)
                } else {
                    &info.shared_lock_infos[..]
                };
                for info in held {
                    let recent = info.duration_to_last_update_ms > 0
                        && info.duration_to_last_update_ms < SKIP_RESOLVE_THRESHOLD_MS;
                    if !recent {
                        self.locks.extend(Lock::from_info(info));
                    }
                }
            } else if let Some(c) = &e.conflict {
                self.error.get_or_insert(Error::write_conflict(c));
            } else {
                self.error.get_or_insert(Error::from_key_error(e.clone()));
            }
        }
        retry
    }

    /// A `WakeUpModeForceLock` answer for one key (client-go
    /// `handlePessimisticLockResponseForceLockMode`): `results` say whether
    /// the key was locked, normally or over a newer write, or failed on the
    /// lock in `errors`.
    fn merge_force_lock(
        &mut self,
        batch: Vec<Key>,
        r: kvrpcpb::PessimisticLockResponse,
    ) -> Result<(), Error> {
        use kvrpcpb::PessimisticLockKeyResultType as ResultType;
        if batch.len() != 1 || r.results.len() > 1 {
            return Err(Error::malformed(format!(
                "force-lock answer of {} results for {} keys",
                r.results.len(),
                batch.len()
            )));
        }
        // A shared lock met fails the key whatever the result says.
        let mut failed = r
            .errors
            .iter()
            .any(|e| e.locked.as_ref().is_some_and(|l| !l.shared_lock_infos.is_empty()));
        let met_lock = self.take_key_errors(&r.errors);
        if self.error.is_some() {
            return Ok(());
        }
        let Some(result) = r.results.into_iter().next() else {
            return Err(Error::malformed("pessimistic lock response corrupted: no result"));
        };
        let key = batch.into_iter().next().unwrap_or_default();
        match ResultType::try_from(result.r#type) {
            Ok(ResultType::LockResultNormal) => {
                if self.options.return_values || self.options.check_existence {
                    let value =
                        if self.options.return_values { result.value } else { Value::new() };
                    let returned =
                        ReturnedValue { value, exists: result.existence, ..Default::default() };
                    self.values.push((key.clone(), returned));
                }
            }
            Ok(ResultType::LockResultLockedWithConflict) => {
                let returned = ReturnedValue {
                    value: result.value,
                    exists: result.existence,
                    locked_with_conflict_ts: Timestamp::from_version(
                        result.locked_with_conflict_ts,
                    ),
                    already_locked: false,
                };
                self.values.push((key.clone(), returned));
            }
            Ok(ResultType::LockResultFailed) => failed = true,
            Err(_) => {
                return Err(Error::malformed(format!(
                    "unknown lock result type {}",
                    result.r#type
                )));
            }
        }
        if failed {
            // Resolved (or, for recently updated locks, waited on again) and
            // retried as in the legacy mode.
            self.retry.push(key);
        } else if met_lock {
            // client-go: a locked key must come with a failed result.
            return Err(Error::malformed(
                "pessimistic lock response corrupted: locked but not failed",
            ));
        }
        Ok(())
    }

    /// The values and existence a successful batch returned, key by key in
    /// the batch's order (client-go's `handlePessimisticLockResponseNormalMode`).
    fn merge_values(
        &mut self,
        batch: Vec<Key>,
        r: &kvrpcpb::PessimisticLockResponse,
    ) -> Result<(), Error> {
        let (values, existence) = (self.options.return_values, self.options.check_existence);
        // An old TiKV that ignores `check_existence` returns nothing: the
        // existence is then unknown, as in client-go.
        let unsupported = !values && existence && r.not_founds.is_empty();
        if !(values || existence) || unsupported {
            return Ok(());
        }
        if r.not_founds.len() != batch.len() || (values && r.values.len() != batch.len()) {
            return Err(Error::malformed(format!(
                "pessimistic lock of {} keys answered {} values and {} not-founds",
                batch.len(),
                r.values.len(),
                r.not_founds.len()
            )));
        }
        for (i, key) in batch.into_iter().enumerate() {
            let value = if values { r.values[i].clone() } else { Value::new() };
            let exists = !r.not_founds[i];
            let returned = ReturnedValue { value, exists, ..Default::default() };
            self.values.push((key, returned));
        }
        Ok(())
    }
}

/// [`pessimistic_rollback`] with its own budget (client-go
/// `pessimisticRollbackMaxBackoff`, 20 s), for a runtime to run in the
/// background: after a failed lock call, at `rollback()`, or when a
/// pessimistic transaction is dropped.
pub fn rollback_pessimistic_locks(
    view: &Arc<ClusterView>,
    start_ts: Timestamp,
    for_update_ts: Timestamp,
    keys: Vec<Key>,
    tags: &RequestTags,
) -> KeyFanout<PessimisticRollbackPlan> {
    let budget = view.config.budget(view.config.backoff.pessimistic_rollback);
    pessimistic_rollback(view, start_ts, for_update_ts, keys, view.backoffer(budget))
        .with_tags(tags)
}

// ---------------------------------------------------------------- the machine

/// What a step of the lock call produced.
enum Done {
    Locked(Box<Result<LockPlan, Error>>),
    Resolved(Result<ResolveOutcome, Error>),
}

/// Locks keys pessimistically. See the module docs for the protocol.
pub struct AcquirePessimisticLocks {
    view: Arc<ClusterView>,
    req: AcquireRequest,
    /// The primary the locks point at.
    primary: Key,
    /// This call chose the primary.
    assigned_primary: bool,
    /// Every key of the call, sorted and deduplicated.
    all_keys: Vec<Key>,
    /// Keys still to lock after the primary.
    rest: Vec<Key>,
    /// Keys of the round being locked or resolved for.
    pending: Vec<Key>,
    values: Vec<(Key, ReturnedValue)>,
    /// The key that closed a deadlock cycle, when TiKV named it.
    deadlock_key: Option<Key>,
    max_locked_with_conflict_ts: Timestamp,
    /// The request's presumed-absent keys, sorted, shared by every round.
    presumed_absent: Arc<[Key]>,
    started: Option<Instant>,
    step: StepSlot<Done>,
    backoffer: Backoffer,
    result: Option<Result<AcquireOutcome, Error>>,
    follow_up: Option<KeyFanout<PessimisticRollbackPlan>>,
    /// What the call did so far; the backoff is read from `backoffer`.
    details: LockKeysDetails,
    /// The latest instant the machine was fed: RPCs polled after an input
    /// leave at it.
    clock: Instant,
    /// Lock requests sent and not answered yet.
    in_flight: RequestTimer,
    /// Regions whose lock requests were answered without a region error.
    answered_regions: Vec<u64>,
    /// When the running resolve step started.
    resolve_started: Option<Instant>,
}

impl std::fmt::Debug for AcquirePessimisticLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquirePessimisticLocks")
            .field("start_ts", &self.req.start_ts)
            .field("for_update_ts", &self.req.for_update_ts)
            .field("keys", &self.all_keys.len())
            .finish()
    }
}

impl AcquirePessimisticLocks {
    /// Prepares the lock call `req`.
    pub fn new(view: Arc<ClusterView>, mut req: AcquireRequest) -> AcquirePessimisticLocks {
        let mut all_keys = std::mem::take(&mut req.keys);
        all_keys.sort();
        all_keys.dedup();
        let assigned_primary = req.primary.is_none();
        let primary = match &req.primary {
            Some(p) => p.clone(),
            None => all_keys.first().cloned().unwrap_or_default(),
        };
        let budget = view.config.budget(view.config.backoff.pessimistic_lock);
        let backoffer = view.backoffer(budget);
        let mut presumed_absent = std::mem::take(&mut req.presumed_absent);
        presumed_absent.sort();
        let presumed_absent: Arc<[Key]> = presumed_absent.into();
        AcquirePessimisticLocks {
            view,
            req,
            primary,
            assigned_primary,
            rest: Vec::new(),
            pending: Vec::new(),
            all_keys,
            values: Vec::new(),
            deadlock_key: None,
            max_locked_with_conflict_ts: Timestamp::ZERO,
            presumed_absent,
            started: None,
            step: StepSlot::new(),
            backoffer,
            result: None,
            follow_up: None,
            details: LockKeysDetails::default(),
            clock: Instant::ZERO,
            in_flight: RequestTimer::default(),
            answered_regions: Vec::new(),
            resolve_started: None,
        }
    }

    /// What the call did so far (complete once the result is out, whether
    /// it locked or failed): client-go's `LockKeysDetails` of one
    /// `LockKeys` call at one `for_update_ts`.
    pub fn details(&self) -> LockKeysDetails {
        LockKeysDetails {
            regions: self.answered_regions.len(),
            backoff: self.backoffer.total_sleep(),
            backoff_by_kind: self.backoffer.sleeps_by_kind().collect(),
            ..self.details.clone()
        }
    }

    /// Notes a lock request leaving, to time it.
    fn note_sent(&mut self, rpc: &Rpc) {
        self.in_flight.sent(rpc, self.clock, |r| matches!(r, KvRequest::PessimisticLock(_)));
    }

    /// Counts a lock request's answer (client-go counts every `SendReq`
    /// in `LockRPCCount`/`LockRPCTime` and keeps the slowest successful
    /// one with its exec details, `MergeReqDetails`).
    fn note_answer(&mut self, id: RpcId, response: &Result<Response, RpcError>, now: Instant) {
        let Some(answer) = self.in_flight.answered(id, now) else {
            return;
        };
        self.details.lock_rpc_count += 1;
        self.details.lock_rpc_time += answer.time;
        let Ok(Response::Kv(response @ KvResponse::PessimisticLock(lock))) = response else {
            return;
        };
        if response.region_error().is_some() {
            return;
        }
        if !self.answered_regions.contains(&answer.region_id) {
            self.answered_regions.push(answer.region_id);
        }
        let failed = !lock.errors.is_empty()
            || lock.results.iter().any(|r| {
                r.r#type == kvrpcpb::PessimisticLockKeyResultType::LockResultFailed as i32
            });
        if !failed && answer.is_slower_than(self.details.slowest.as_ref()) {
            self.details.slowest = Some(answer.detail(response));
        }
    }

    /// Ends the call's clock (every result is set while handling an input
    /// at `clock`).
    fn stop_clock(&mut self) {
        let started = self.started.unwrap_or(self.clock);
        self.details.total = self.clock.saturating_duration_since(started);
    }

    /// The rollback of the failed call's keys, for the runtime to run
    /// (client-go's `asyncPessimisticRollback`; a retryable deadlock waits
    /// for it before the statement is retried). `None` on success, before
    /// the result, or when nothing may have been locked.
    pub fn take_follow_up(&mut self) -> Option<KeyFanout<PessimisticRollbackPlan>> {
        self.follow_up.take()
    }

    fn waited(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started.unwrap_or(now))
    }

    fn fail(&mut self, mut e: Error) {
        self.step.clear();
        if let Error::Deadlock { deadlock_key_hash, retryable, .. } = &mut e {
            // client-go `hashInKeys`: the cycle closed on one of this
            // call's keys, so retrying the statement may get through.
            *retryable = self.all_keys.iter().any(|k| {
                self.deadlock_key.as_ref() == Some(k)
                    || fingerprint64(k.as_bytes()) == Some(*deadlock_key_hash)
            });
        }
        // A single key refused for a write conflict or an existing value
        // was not locked (client-go `keyMayBeLocked`).
        let key_may_be_locked = !matches!(e, Error::WriteConflict { .. } | Error::KeyExists(_));
        if self.all_keys.len() > 1 || key_may_be_locked {
            // client-go: a lock taken over a newer write carries that
            // write's ts as its for_update_ts.
            let for_update_ts = self.req.for_update_ts.max(self.max_locked_with_conflict_ts);
            self.follow_up = Some(rollback_pessimistic_locks(
                &self.view,
                self.req.start_ts,
                for_update_ts,
                self.all_keys.clone(),
                &self.req.tags,
            ));
        }
        self.stop_clock();
        self.result = Some(Err(e));
    }

    /// Sends a round of lock requests for `pending`.
    fn lock(&mut self, now: Instant) {
        let waited = self.waited(now);
        let age = self.req.txn_elapsed + waited;
        let plan = LockPlan {
            start_ts: self.req.start_ts,
            for_update_ts: self.req.for_update_ts,
            primary: self.primary.clone(),
            // client-go: `ManagedLockTTL` plus the transaction's age.
            lock_ttl: MAX_LOCK_TTL + age.as_millis() as u64,
            wait_timeout: self.req.options.wait.wait_timeout_ms(waited),
            // client-go: only a transaction's first lock call of one key
            // (TiKV then may answer without waiting for the write to apply).
            is_first_lock: self.assigned_primary && self.all_keys.len() == 1,
            force_lock: self.req.force_lock && self.all_keys.len() == 1,
            presumed_absent: self.presumed_absent.clone(),
            options: self.req.options.clone(),
            timeout: self.view.config.read_timeout_short,
            values: Vec::new(),
            retry: Vec::new(),
            locks: Vec::new(),
            error: None,
            deadlock_key: None,
        };
        let keys = self.pending.clone();
        let op = KeyFanout::new(self.view.clone(), plan, keys, self.backoffer.fork())
            .with_tags(&self.req.tags);
        self.step.start(op, |outcome| Done::Locked(Box::new(outcome)), now);
    }

    fn after_lock(&mut self, plan: LockPlan, now: Instant) {
        for (_, v) in &plan.values {
            self.max_locked_with_conflict_ts =
                self.max_locked_with_conflict_ts.max(v.locked_with_conflict_ts);
        }
        self.values.extend(plan.values);
        if let Some(e) = plan.error {
            self.deadlock_key = plan.deadlock_key;
            self.fail(e);
            return;
        }
        if !plan.retry.is_empty() {
            self.pending = plan.retry;
            if plan.locks.is_empty() {
                // Only recently updated locks: their holders are alive, so
                // go back to waiting in TiKV, unless the call may not.
                self.retry_or_give_up(now);
                return;
            }
            self.resolve_started = Some(now);
            let opts = ResolveOptions {
                // client-go resolves with caller ts 0: a lock call pushes no
                // transaction's min_commit_ts.
                caller_start_ts: Timestamp::ZERO,
                for_read: false,
                lite: false,
                tags: self.req.tags.clone(),
            };
            let resolve =
                ResolveLocks::new(self.view.clone(), plan.locks, opts, self.backoffer.fork());
            self.step.start(resolve, Done::Resolved, now);
            return;
        }
        if !self.rest.is_empty() {
            self.pending = std::mem::take(&mut self.rest);
            self.lock(now);
            return;
        }
        self.finish();
    }

    fn retry_or_give_up(&mut self, now: Instant) {
        match self.req.options.wait.gives_up(self.waited(now)) {
            Some(e) => self.fail(e),
            None => self.lock_again(now),
        }
    }

    /// Sends the keys that met locks again.
    fn lock_again(&mut self, now: Instant) {
        self.details.lock_wait_retries += 1;
        self.lock(now);
    }

    fn after_resolve(&mut self, outcome: Result<ResolveOutcome, Error>, now: Instant) {
        if let Some(started) = self.resolve_started.take() {
            self.details.resolve_lock += now.saturating_duration_since(started);
        }
        match outcome {
            Err(e) => self.fail(e),
            // Still blocked by a live lock: TiKV already waited, so no
            // sleep here (client-go); give up if the call may not wait.
            Ok(o) if o.ms_before_expired > 0 => self.retry_or_give_up(now),
            Ok(_) => self.lock_again(now),
        }
    }

    fn finish(&mut self) {
        self.step.clear();
        let mut values = std::mem::take(&mut self.values);
        values.sort_by(|a, b| a.0.cmp(&b.0));
        let mut locked = self.all_keys.clone();
        if self.req.options.lock_only_if_exists {
            // TiKV locks only the keys that exist (the values tell which).
            locked.retain(|k| {
                values.binary_search_by(|(v, _)| v.cmp(k)).is_ok_and(|i| values[i].1.exists)
            });
        }
        let assigned_primary =
            (self.assigned_primary && locked.contains(&self.primary)).then(|| self.primary.clone());
        let max_locked_with_conflict_ts = self.max_locked_with_conflict_ts;
        if self.req.force_lock && self.all_keys.len() == 1 {
            // client-go `collectAggressiveLockingStats`: a fair lock call's
            // keys, and those it took over a newer write.
            self.details.aggressive_lock_new += locked.len();
            self.details.locked_with_conflict +=
                values.iter().filter(|(_, v)| !v.locked_with_conflict_ts.is_zero()).count();
        }
        self.stop_clock();
        self.result = Some(Ok(AcquireOutcome {
            assigned_primary,
            locked,
            values,
            max_locked_with_conflict_ts,
        }));
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.backoffer)) {
            match event {
                StepEvent::Woke => self.lock(now),
                StepEvent::Done(Done::Locked(outcome)) => match *outcome {
                    Ok(plan) => self.after_lock(plan, now),
                    Err(e) => self.fail(e),
                },
                StepEvent::Done(Done::Resolved(outcome)) => self.after_resolve(outcome, now),
            }
        }
    }
}

impl Operation for AcquirePessimisticLocks {
    type Output = AcquireOutcome;

    fn start(&mut self, now: Instant) {
        if self.started.is_some() {
            return;
        }
        self.started = Some(now);
        self.clock = now;
        let opts = &self.req.options;
        if opts.lock_only_if_exists && !opts.return_values {
            // client-go `ErrLockOnlyIfExistsNoReturnValue`.
            self.result =
                Some(Err(Error::InvalidArgument("lock_only_if_exists needs return_values".into())));
            return;
        }
        if opts.lock_only_if_exists && self.assigned_primary && self.all_keys.len() > 1 {
            // client-go `ErrLockOnlyIfExistsNoPrimaryKey`: a key that does
            // not exist is not locked, so it cannot be the primary.
            self.result = Some(Err(Error::InvalidArgument(
                "lock_only_if_exists on several keys needs a primary locked before".into(),
            )));
            return;
        }
        if opts.in_share_mode && self.assigned_primary {
            // client-go: "pessimistic lock in share mode requires primary
            // key to be selected".
            self.result = Some(Err(Error::InvalidArgument(
                "a shared lock needs a primary locked exclusively before".into(),
            )));
            return;
        }
        if self.all_keys.is_empty() {
            self.finish();
            return;
        }
        self.details.keys = self.all_keys.len();
        let keys = self.all_keys.clone();
        if !keys.contains(&self.primary) {
            self.pending = keys;
        } else {
            // client-go locks the primary's batch first: the primary with
            // the keys of its region, up to a batch's size. Without a cached
            // region for it, the primary goes alone.
            let region = self.view.regions.locate_key(self.primary.as_bytes(), now);
            let mut bytes = self.primary.len();
            for key in keys {
                let joins = key != self.primary
                    && region.as_ref().is_some_and(|r| r.contains(key.as_bytes()))
                    && bytes + key.len() <= TXN_COMMIT_BATCH_SIZE;
                if key == self.primary || joins {
                    bytes += if joins { key.len() } else { 0 };
                    self.pending.push(key);
                } else {
                    self.rest.push(key);
                }
            }
        }
        self.lock(now);
    }

    // The step's inputs, forwarded as `forward_step_inputs!` does, with
    // the lock requests timed on their way for the details.
    fn poll_rpc(&mut self) -> Option<Rpc> {
        let rpc = self.step.poll_rpc()?;
        self.note_sent(&rpc);
        Some(rpc)
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.clock = now;
        self.note_answer(id, &response, now);
        if self.step.on_response(id, response, now) {
            self.check(now);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.clock = now;
        self.step.on_timeout(now);
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.step.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<AcquireOutcome, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.backoffer)
    }
}

#[cfg(test)]
mod tests;
