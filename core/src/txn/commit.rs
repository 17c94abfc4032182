//! Committing an optimistic transaction: two-phase commit, async commit and
//! one-phase commit (client-go `twoPhaseCommitter`).
//!
//! 1. **Prewrite** every mutation, grouped by region in batches of at most
//!    16 KiB ([`TXN_COMMIT_BATCH_SIZE`]), all batches in parallel. Locks met
//!    are resolved (for write) and the locked keys prewritten again; a lock
//!    of a newer transaction is an immediate write conflict (optimistic
//!    transactions never wait for younger ones).
//! 2. **Decide the commit ts.** 1PC: TiKV committed the single batch at
//!    `one_pc_commit_ts`. Async commit: the transaction is committed once
//!    every prewrite succeeded, at the largest returned `min_commit_ts`.
//!    Otherwise (or when TiKV declined either mode) a fresh TSO timestamp.
//! 3. **Commit the primary** (2PC only). Its success is the commit point. An
//!    answer that never came makes the outcome undetermined; a primary lock
//!    already gone (rolled back by a resolver) is a definite failure.
//!    `CommitTsExpired` fetches a newer commit ts and retries.
//! 4. Then [`Committer::take_follow_up`] hands the runtime what runs in
//!    the background: the secondaries' commit ([`commit_keys`]) or, on a
//!    definite failure, the rollback of the prewritten keys
//!    ([`rollback_keys`]).

use std::sync::Arc;

use tikv_proto::kvrpcpb;
use tikv_proto::kvrpcpb::prewrite_request::PessimisticAction;

use crate::backoff::{BackoffKind, Backoffer, KindSleeps};
use crate::error::Error;
use crate::exec_details::{RequestDetail, RequestTimer, TimedAnswer};
use crate::key::{Key, Value};
use crate::lock::{Lock, ResolveLocks, ResolveOptions};
use crate::op::{IdMap, Operation, StepEvent, StepSlot};
use crate::pd::{GetTimestamp, Timestamp};
use crate::route::fanout::{KeyFanout, KeyPlan, Point, PointPlan};
use crate::rpc::{KvRequest, KvResponse, RequestTags, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant};
use crate::txn::membuffer::{BufferedValue, KeyFlags, MemBuffer};
use crate::view::ClusterView;

/// client-go `kv.TxnCommitBatchSize`: a prewrite/commit batch closes once
/// its keys (and values, for prewrite) reach 16 KiB.
pub const TXN_COMMIT_BATCH_SIZE: usize = 16 * 1024;
/// Default lock TTL (client-go `defaultLockTTL`), milliseconds.
pub const DEFAULT_LOCK_TTL: u64 = 3_000;
/// Largest computed lock TTL (client-go `ManagedLockTTL`), milliseconds.
pub const MAX_LOCK_TTL: u64 = 20_000;
/// client-go `AsyncCommit.KeysLimit`.
pub const ASYNC_COMMIT_KEYS_LIMIT: usize = 256;
/// client-go `AsyncCommit.TotalKeySizeLimit`.
pub const ASYNC_COMMIT_KEY_SIZE_LIMIT: usize = 4 * 1024;
/// client-go `TTLRefreshedTxnSize`: transactions at least this large keep
/// their primary lock alive with heartbeats while they commit.
pub const TTL_REFRESHED_TXN_SIZE: usize = 32 * 1024 * 1024;
/// Heartbeat period: half of `ManagedLockTTL` (client-go).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(MAX_LOCK_TTL / 2);
/// client-go stops heartbeats after this many consecutive failures.
pub const MAX_HEARTBEAT_FAILURES: u32 = 10;
/// client-go `MaxTxnTTL`: a transaction's lock is not kept alive longer.
pub const MAX_TXN_TTL: Duration = Duration::from_secs(3600);
/// client-go `AsyncCommit.SafeWindow`, milliseconds.
pub const ASYNC_COMMIT_SAFE_WINDOW_MS: i64 = 2_000;
/// client-go refuses to chase a `CommitTsExpired` whose `min_commit_ts` is
/// more than an hour past the attempted commit ts (`3600000 << 18`).
pub const MAX_COMMIT_TS_PUSH: u64 = 3_600_000 << 18;

/// The longest a transaction may run from its start to its commit ts:
/// 24 h (client-go `MaxTxnTimeUse`). Past it GC may already have
/// collected what the transaction read.
pub const MAX_TXN_TIME_USE: Duration = Duration::from_secs(24 * 60 * 60);

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    /// `Put`, `Del`, `Lock`, `SharedLock`, `Insert` or `CheckNotExists`.
    pub op: kvrpcpb::Op,
    /// The key.
    pub key: Key,
    /// The value (empty unless `Put`/`Insert`).
    pub value: Value,
    /// What TiKV checks of the key's pessimistic lock at prewrite (only
    /// sent by a pessimistic transaction): `DoPessimisticCheck` for a key
    /// this transaction locked pessimistically, `DoConstraintCheck` for a
    /// lazily checked unique key, `SkipPessimisticCheck` otherwise.
    pub pessimistic_action: PessimisticAction,
}

impl Mutation {
    pub(crate) fn to_proto(&self) -> kvrpcpb::Mutation {
        kvrpcpb::Mutation {
            op: self.op as i32,
            key: self.key.to_bytes(),
            value: self.value.clone(),
            ..Default::default()
        }
    }
}

/// The mutations of an optimistic transaction's buffer (client-go
/// `initKeysAndMutations`): a value is `Put` (`Insert` if the key was
/// presumed absent), a tombstone `Del` (`CheckNotExists` if presumed absent:
/// "delete a key that must not exist" only checks), a flag-only key that was
/// locked is `Lock`. Keys are in order; the primary is the first key whose
/// mutation writes a lock (`CheckNotExists` does not).
pub fn mutations_from_buffer(buffer: &MemBuffer) -> (Vec<Mutation>, Option<Key>) {
    buffer_mutations(buffer, false)
}

/// The mutations of a pessimistic transaction's buffer (client-go
/// `initKeysAndMutations` with `isPessimistic`): as
/// [`mutations_from_buffer`], except that a tombstone of a presumed-absent
/// key is a `Del` (its pessimistic lock already checked), a tombstone of a
/// key this transaction inserted is dropped, or a `Lock` if the key is
/// locked; a key only locked in share mode is a `SharedLock` (never the
/// primary; async commit and 1PC are then off); each mutation carries its
/// [`PessimisticAction`]. The primary (when the transaction has none from
/// its locks) is chosen as for optimistic transactions.
pub fn pessimistic_mutations_from_buffer(buffer: &MemBuffer) -> (Vec<Mutation>, Option<Key>) {
    buffer_mutations(buffer, true)
}

fn buffer_mutations(buffer: &MemBuffer, pessimistic: bool) -> (Vec<Mutation>, Option<Key>) {
    let mut out = Vec::with_capacity(buffer.len());
    for (key, entry) in buffer.iter::<std::ops::RangeFull>(..) {
        let flags = entry.flags;
        let locked = flags.contains(KeyFlags::KEY_LOCKED);
        let presumed_absent = flags.has_presume_key_not_exists();
        let (op, value) = match entry.value {
            Some(BufferedValue::Put(v)) if presumed_absent => (kvrpcpb::Op::Insert, v.clone()),
            Some(BufferedValue::Put(v)) => (kvrpcpb::Op::Put, v.clone()),
            Some(BufferedValue::Delete) if presumed_absent && !pessimistic => {
                (kvrpcpb::Op::CheckNotExists, Value::new())
            }
            Some(BufferedValue::Delete)
                if pessimistic && flags.contains(KeyFlags::NEWLY_INSERTED) =>
            {
                if !locked {
                    continue;
                }
                (kvrpcpb::Op::Lock, Value::new())
            }
            Some(BufferedValue::Delete) => (kvrpcpb::Op::Del, Value::new()),
            // client-go `getLockTypeFromFlags`.
            None if locked && flags.contains(KeyFlags::KEY_LOCKED_IN_SHARE_MODE) => {
                (kvrpcpb::Op::SharedLock, Value::new())
            }
            None if locked => (kvrpcpb::Op::Lock, Value::new()),
            None => continue,
        };
        let pessimistic_action = if pessimistic && locked {
            PessimisticAction::DoPessimisticCheck
        } else if flags.contains(KeyFlags::NEED_CONSTRAINT_CHECK_IN_PREWRITE) {
            PessimisticAction::DoConstraintCheck
        } else {
            PessimisticAction::SkipPessimisticCheck
        };
        out.push(Mutation { op, key: Key::from(key.to_vec()), value, pessimistic_action });
    }
    // Neither a check nor a shared lock can be the primary (client-go).
    let primary = out
        .iter()
        .find(|m| !matches!(m.op, kvrpcpb::Op::CheckNotExists | kvrpcpb::Op::SharedLock))
        .map(|m| m.key.clone());
    (out, primary)
}

/// client-go `txnLockTTL`: 3 s, or for transactions of 16 KiB and more
/// `6000 × sqrt(MiB)` ms clamped to [3 s, 20 s]; plus the time the
/// transaction has been running.
pub fn lock_ttl(size_bytes: usize, elapsed: Duration) -> u64 {
    let mut ttl = DEFAULT_LOCK_TTL;
    if size_bytes >= TXN_COMMIT_BATCH_SIZE {
        let mib = size_bytes as f64 / (1024.0 * 1024.0);
        let computed = (6000.0 * mib.sqrt()) as u64;
        ttl = computed.clamp(DEFAULT_LOCK_TTL, MAX_LOCK_TTL);
    }
    ttl + elapsed.as_millis() as u64
}

/// How a transaction commits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitOptions {
    /// Try async commit (client-go `SetEnableAsyncCommit`), if eligible.
    pub async_commit: bool,
    /// Try 1PC (client-go `SetEnable1PC`), if everything fits one batch.
    pub one_pc: bool,
    /// Skip the extra TSO that makes async commit / 1PC linearizable
    /// (client-go `SetCausalConsistency`).
    pub causal_consistency: bool,
    /// `Prewrite.assertion_level`.
    pub assertion_level: kvrpcpb::AssertionLevel,
    /// Transactions at least this large (key + value bytes) send
    /// `TxnHeartBeat`s on their primary while committing; `None` means
    /// client-go's [`TTL_REFRESHED_TXN_SIZE`].
    pub heartbeat_threshold: Option<usize>,
    /// Priority, request source and resource group of every request of the
    /// commit (client-go copies the transaction's into each prewrite and
    /// commit context). [`commit_keys`] and [`rollback_keys`] take them with
    /// [`KeyFanout::with_tags`].
    pub tags: RequestTags,
    /// When the driver splits and scatters crowded regions before the
    /// prewrite ([`crate::split::PreSplit`]).
    pub pre_split: crate::split::PreSplitThresholds,
}

impl CommitOptions {
    /// Tries async commit when the transaction is eligible.
    pub fn with_async_commit(mut self, enabled: bool) -> CommitOptions {
        self.async_commit = enabled;
        self
    }

    /// Tries 1PC when every mutation fits one batch.
    pub fn with_one_pc(mut self, enabled: bool) -> CommitOptions {
        self.one_pc = enabled;
        self
    }

    /// Skips the extra TSO round of async commit / 1PC.
    pub fn with_causal_consistency(mut self, enabled: bool) -> CommitOptions {
        self.causal_consistency = enabled;
        self
    }

    /// Sets `Prewrite.assertion_level`.
    pub fn with_assertion_level(mut self, level: kvrpcpb::AssertionLevel) -> CommitOptions {
        self.assertion_level = level;
        self
    }

    /// Sends heartbeats on the primary while committing transactions of at
    /// least `bytes` (`None`: client-go's [`TTL_REFRESHED_TXN_SIZE`]).
    pub fn with_heartbeat_threshold(mut self, bytes: Option<usize>) -> CommitOptions {
        self.heartbeat_threshold = bytes;
        self
    }

    /// Stamps `tags` into every request of the commit.
    pub fn with_tags(mut self, tags: RequestTags) -> CommitOptions {
        self.tags = tags;
        self
    }

    /// Splits and scatters a region before the prewrite when it would get
    /// at least `thresholds.detect_mutations` mutations (client-go's
    /// pre-split of large transactions; 100,000 by default).
    pub fn with_pre_split(mut self, thresholds: crate::split::PreSplitThresholds) -> CommitOptions {
        self.pre_split = thresholds;
        self
    }
}

/// How the commit went through.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Prewrite, then the primary's commit.
    TwoPhase,
    /// Committed when every prewrite succeeded.
    AsyncCommit,
    /// TiKV committed the single batch during prewrite.
    OnePhase,
}

/// A successful commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The commit timestamp.
    pub commit_ts: Timestamp,
    /// How it committed.
    pub mode: CommitMode,
    /// Keys whose locks still need a `Commit` (secondaries in 2PC; every
    /// key in async commit). Committing them is an optimisation (readers
    /// would resolve them) and runs in the background.
    pub keys_to_commit: Vec<Key>,
}

/// How a commit went (client-go `util.CommitDetails`): where its time went,
/// phase by phase, and how much it wrote. Each phase sums its steps,
/// retries included; the backoff sleeps between steps are in `backoff`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitDetails {
    /// Waiting for the timestamp that makes an async commit / 1PC
    /// linearizable (client-go `GetLatestTsTime`).
    pub get_latest_ts: Duration,
    /// Prewriting, every round (client-go `PrewriteTime`).
    pub prewrite: Duration,
    /// Resolving locks the prewrite met (client-go `ResolveLock.ResolveLockTime`).
    pub resolve_lock: Duration,
    /// Waiting for the commit timestamp (client-go `GetCommitTsTime`).
    pub get_commit_ts: Duration,
    /// Committing the primary (client-go `CommitTime`; the secondaries'
    /// commit runs in the background after the result).
    pub commit: Duration,
    /// Backoff sleeps of the prewrite and commit budgets.
    pub backoff: Duration,
    /// The same sleeps by kind (client-go `PrewriteBackoffTypes` and
    /// `CommitBackoffTypes`, with counts and times), in
    /// [`BackoffKind::ALL`] order, a kind slept on in both phases once.
    pub backoff_by_kind: Vec<KindSleeps>,
    /// Keys written, locks included (client-go `WriteKeys`).
    pub write_keys: usize,
    /// Key + value bytes written (client-go `WriteSize`).
    pub write_size: usize,
    /// `Prewrite` requests built, retries included (client-go
    /// `PrewriteReqNum`).
    pub prewrite_requests: usize,
    /// The slowest `Prewrite` answered without a region or key error
    /// (client-go `Mu.SlowestPrewrite`). Each attempt is timed on its own,
    /// where client-go's time also covers the retries its sender makes
    /// after region errors.
    pub slowest_prewrite: Option<RequestDetail>,
    /// The primary's `Commit` in two-phase commit, its last attempt
    /// answered without a region error (client-go `Mu.CommitPrimary`).
    pub commit_primary: Option<RequestDetail>,
}

impl CommitDetails {
    /// Records a timed `Prewrite` or primary `Commit` answer.
    fn note_answer(&mut self, answer: &TimedAnswer, response: &KvResponse) {
        if response.region_error().is_some() {
            return;
        }
        match response {
            KvResponse::Prewrite(p)
                if p.errors.is_empty() && answer.is_slower_than(self.slowest_prewrite.as_ref()) =>
            {
                self.slowest_prewrite = Some(answer.detail(response));
            }
            KvResponse::Commit(_) => self.commit_primary = Some(answer.detail(response)),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- plans

/// `Prewrite` batches.
#[derive(Debug)]
struct PrewritePlan {
    start_ts: Timestamp,
    /// A pessimistic transaction's `for_update_ts`; zero for an optimistic
    /// one.
    for_update_ts: Timestamp,
    /// Keys whose pessimistic lock must carry exactly this `for_update_ts`
    /// (sorted by key).
    for_update_ts_constraints: Arc<[(Key, Timestamp)]>,
    primary: Key,
    lock_ttl: u64,
    min_commit_ts: Timestamp,
    max_commit_ts: Timestamp,
    async_commit: bool,
    /// All keys but the primary, for the primary's batch in async commit.
    secondaries: Vec<Key>,
    /// Try 1PC. Only a batch holding every mutation asks for it, on every
    /// attempt (client-go keeps `TryOnePc` in a retried single-batch
    /// request): 1PC must never commit part of a transaction, and a retry
    /// of a 1PC prewrite that already committed must ask for 1PC again to
    /// be told the commit ts (TiKV's `check_committed_record_on_err`).
    one_pc: bool,
    /// Mutations in the whole transaction.
    total: usize,
    /// 1PC requests built that may have committed the transaction: neither
    /// answered nor handed back unapplied (carried over rounds).
    one_pc_unanswered: u32,
    /// A batch without 1PC was built while a 1PC request was unanswered
    /// (the keys moved to several regions): its answer cannot tell a fresh
    /// 2PC lock from "already committed by the lost 1PC attempt".
    split_after_one_pc: bool,
    assertion_level: kvrpcpb::AssertionLevel,
    timeout: Duration,
    // Results.
    met: Vec<Lock>,
    retry: Vec<Mutation>,
    error: Option<Error>,
    assertion_error: Option<Error>,
    min_commit_ts_seen: Vec<Timestamp>,
    one_pc_commit_ts: Vec<Timestamp>,
    /// Requests built, for [`CommitDetails::prewrite_requests`].
    requests: usize,
}

impl KeyPlan for PrewritePlan {
    type Item = Mutation;
    type Output = PrewritePlan;
    fn key(item: &Mutation) -> &Key {
        &item.key
    }
    fn size(item: &Mutation) -> usize {
        item.key.len() + item.value.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (usize::MAX, TXN_COMMIT_BATCH_SIZE)
    }
    fn build(&mut self, batch: &[Mutation]) -> KvRequest {
        self.requests += 1;
        let has_primary = batch.iter().any(|m| m.key == self.primary);
        let try_one_pc = self.one_pc && batch.len() == self.total;
        if try_one_pc {
            self.one_pc_unanswered += 1;
        } else if self.one_pc && self.one_pc_unanswered > 0 {
            self.split_after_one_pc = true;
        }
        KvRequest::Prewrite(Box::new(kvrpcpb::PrewriteRequest {
            mutations: batch.iter().map(Mutation::to_proto).collect(),
            primary_lock: self.primary.to_bytes(),
            start_version: self.start_ts.version(),
            lock_ttl: self.lock_ttl,
            txn_size: batch.len() as u64,
            min_commit_ts: self.min_commit_ts.version(),
            max_commit_ts: self.max_commit_ts.version(),
            use_async_commit: self.async_commit,
            secondaries: if self.async_commit && has_primary {
                self.secondaries.iter().map(Key::to_bytes).collect()
            } else {
                Vec::new()
            },
            try_one_pc,
            assertion_level: self.assertion_level as i32,
            for_update_ts: self.for_update_ts.version(),
            pessimistic_actions: if self.for_update_ts.is_zero() {
                Vec::new()
            } else {
                batch.iter().map(|m| m.pessimistic_action as i32).collect()
            },
            for_update_ts_constraints: batch
                .iter()
                .enumerate()
                .filter_map(|(index, m)| {
                    let constraints = &self.for_update_ts_constraints;
                    let at = constraints.binary_search_by(|(k, _)| k.cmp(&m.key)).ok()?;
                    Some(kvrpcpb::prewrite_request::ForUpdateTsConstraint {
                        index: index as u32,
                        expected_for_update_ts: constraints[at].1.version(),
                    })
                })
                .collect(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn relocated(&mut self, batch: &[Mutation], maybe_applied: bool) {
        if self.one_pc && batch.len() == self.total && !maybe_applied {
            // Refused with a region error on every attempt: not applied.
            self.one_pc_unanswered = self.one_pc_unanswered.saturating_sub(1);
        }
    }
    fn merge(&mut self, batch: Vec<Mutation>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::Prewrite(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if self.one_pc && batch.len() == self.total {
            // The answer to a 1PC request: TiKV decided.
            self.one_pc_unanswered = self.one_pc_unanswered.saturating_sub(1);
        }
        let mut locked_keys: Vec<Key> = Vec::new();
        for e in r.errors {
            if let Some(info) = &e.locked {
                for lock in Lock::from_info(info) {
                    if lock.txn_id > self.start_ts && self.for_update_ts.is_zero() {
                        // client-go: an optimistic transaction meeting a
                        // newer transaction's lock conflicts at once (a
                        // pessimistic one holds its keys' locks, so what it
                        // meets is resolved like any other lock).
                        self.error.get_or_insert(Error::WriteConflict {
                            start_ts: self.start_ts,
                            conflict_ts: lock.txn_id,
                            key: lock.key.clone(),
                            primary: lock.primary.clone(),
                            conflict_commit_ts: Timestamp::ZERO,
                        });
                    }
                    locked_keys.push(lock.key.clone());
                    self.met.push(lock);
                }
            } else if let Some(c) = &e.conflict {
                self.error.get_or_insert(Error::write_conflict(c));
            } else if let Some(a) = &e.already_exist {
                self.error.get_or_insert(Error::KeyExists(a.key.clone().into()));
            } else if e.assertion_failed.is_some() {
                // Held back: reported only if nothing else failed.
                self.assertion_error.get_or_insert(Error::AssertionFailed(Box::new(e)));
            } else {
                self.error.get_or_insert(Error::from_key_error(e));
            }
        }
        if !locked_keys.is_empty() {
            // TiKV writes nothing for a prewrite in which any key is locked
            // ("skip write stage if some keys are locked"), so the whole
            // batch is sent again once the locks are resolved, as client-go
            // does. Retrying only the locked keys would leave the others
            // without a lock, and a commit built on them would be wrong.
            self.retry.extend(batch);
            return Ok(());
        }
        self.min_commit_ts_seen.push(Timestamp::from_version(r.min_commit_ts));
        self.one_pc_commit_ts.push(Timestamp::from_version(r.one_pc_commit_ts));
        Ok(())
    }
    fn finish(self) -> PrewritePlan {
        self
    }
}

/// `Commit` of the primary key at a commit ts, with the secondaries
/// that share its region in the same request (client-go commits the
/// primary's whole batch first: `batched.primaryBatch`).
#[derive(Debug)]
pub(crate) struct CommitPlan {
    pub(crate) start_ts: Timestamp,
    pub(crate) commit_ts: Timestamp,
    /// The secondaries sent with the primary, all in the primary's region
    /// as the cache had it when the plan was made. Dropped once a sent
    /// attempt finds the region wrong: the primary is then retried alone,
    /// so no secondary is ever committed before the primary (they go with
    /// the others after it).
    pub(crate) with: Vec<Key>,
    pub(crate) outcome: Option<Result<(), kvrpcpb::KeyError>>,
}

impl CommitPlan {
    /// The primary's commit, alone.
    pub(crate) fn primary_alone(start_ts: Timestamp, commit_ts: Timestamp) -> CommitPlan {
        CommitPlan { start_ts, commit_ts, with: Vec::new(), outcome: None }
    }
}

impl PointPlan for CommitPlan {
    /// On success, the secondaries committed with the primary.
    type Output = Result<Vec<Key>, kvrpcpb::KeyError>;
    fn build(&mut self, key: &Key) -> KvRequest {
        let mut keys = Vec::with_capacity(1 + self.with.len());
        keys.push(key.to_bytes());
        keys.extend(self.with.iter().map(Key::to_bytes));
        KvRequest::Commit(Box::new(kvrpcpb::CommitRequest {
            keys,
            start_version: self.start_ts.version(),
            commit_version: self.commit_ts.version(),
            ..Default::default()
        }))
    }
    fn merge(&mut self, response: KvResponse) -> Result<(), Error> {
        let KvResponse::Commit(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        self.outcome = Some(match r.error {
            Some(e) => Err(e),
            None => Ok(()),
        });
        Ok(())
    }
    fn relocated(&mut self, _maybe_applied: bool) {
        // A lost answer may have committed them with the primary: their
        // commit after the primary's is then a repeat, which TiKV answers
        // as a success.
        self.with.clear();
    }
    fn finish(self) -> Result<Vec<Key>, kvrpcpb::KeyError> {
        self.outcome.unwrap_or(Ok(())).map(|()| self.with)
    }
}

/// The secondaries client-go's batching puts in the primary's commit
/// request: of `keys` (sorted, the primary among them), those
/// `in_region` (the primary's cached region), cut in key order into batches of
/// [`TXN_COMMIT_BATCH_SIZE`] key bytes (a batch takes keys while its size
/// is below the limit: `appendBatchMutationsBySize` with the commit's
/// `keySize`), the batch holding the primary, less the primary.
pub(crate) fn primary_batch_secondaries(
    keys: &[Key],
    primary: &Key,
    in_region: impl Fn(&Key) -> bool,
) -> Vec<Key> {
    let mut batch: Vec<&Key> = Vec::new();
    let (mut size, mut has_primary) = (0usize, false);
    for key in keys.iter().filter(|k| in_region(k)) {
        if size >= TXN_COMMIT_BATCH_SIZE {
            if has_primary {
                break;
            }
            batch.clear();
            size = 0;
        }
        size += key.len();
        has_primary |= key == primary;
        batch.push(key);
    }
    if !has_primary {
        return Vec::new();
    }
    batch.into_iter().filter(|k| *k != primary).cloned().collect()
}

/// `TxnHeartBeat` on the primary: extends the primary lock's TTL.
#[derive(Debug)]
pub(crate) struct HeartbeatPlan {
    pub(crate) start_ts: Timestamp,
    pub(crate) advise_lock_ttl: u64,
    /// Pushes the lock's `min_commit_ts` (a pipelined transaction's beats
    /// do; zero leaves it).
    pub(crate) min_commit_ts: Timestamp,
    pub(crate) ok: bool,
}

impl PointPlan for HeartbeatPlan {
    type Output = bool;
    fn build(&mut self, key: &Key) -> KvRequest {
        KvRequest::TxnHeartBeat(Box::new(kvrpcpb::TxnHeartBeatRequest {
            primary_lock: key.to_bytes(),
            start_version: self.start_ts.version(),
            advise_lock_ttl: self.advise_lock_ttl,
            min_commit_ts: self.min_commit_ts.version(),
            ..Default::default()
        }))
    }
    fn merge(&mut self, response: KvResponse) -> Result<(), Error> {
        let KvResponse::TxnHeartBeat(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        self.ok = r.error.is_none();
        Ok(())
    }
    fn finish(self) -> bool {
        self.ok
    }
}

/// The TTL manager (client-go `ttlManager.keepAlive`): while a large
/// transaction commits, every [`HEARTBEAT_INTERVAL`] it asks TiKV to extend
/// the primary lock's TTL to the transaction's age plus [`MAX_LOCK_TTL`], so
/// readers do not roll it back as abandoned. It ends by itself after
/// [`MAX_HEARTBEAT_FAILURES`] failures in a row or at [`MAX_TXN_TTL`]; its
/// owner drops it when the commit ends.
#[derive(Debug)]
pub struct KeepAlive {
    view: Arc<ClusterView>,
    start_ts: Timestamp,
    primary: Key,
    tags: RequestTags,
    /// The transaction's age when the keep-alive started.
    elapsed_at_start: Duration,
    started: Instant,
    next_at: Instant,
    failures: u32,
    /// The beat in flight (each with a budget of its own).
    beat: StepSlot<Result<bool, Error>>,
    result: Option<Result<(), Error>>,
}

impl KeepAlive {
    /// Keeps the primary lock of the transaction that started at
    /// `start_ts`, now `elapsed` old, alive.
    pub fn new(
        view: Arc<ClusterView>,
        start_ts: Timestamp,
        primary: Key,
        elapsed: Duration,
        tags: RequestTags,
    ) -> KeepAlive {
        KeepAlive {
            view,
            start_ts,
            primary,
            tags,
            elapsed_at_start: elapsed,
            started: Instant::ZERO,
            next_at: Instant::MAX,
            failures: 0,
            beat: StepSlot::new(),
            result: None,
        }
    }

    /// A beat's answer: a success resets the failure count.
    fn check(&mut self) {
        let Some(StepEvent::Done(outcome)) = self.beat.poll_event(None) else { return };
        if matches!(outcome, Ok(true)) {
            self.failures = 0;
        } else {
            self.failures += 1;
            if self.failures >= MAX_HEARTBEAT_FAILURES {
                self.result = Some(Ok(()));
            }
        }
    }

    /// Sends the next beat once it is due and none is in flight.
    fn beat_if_due(&mut self, now: Instant) {
        if self.result.is_some() || !self.beat.is_idle() || now < self.next_at {
            return;
        }
        let age = self.elapsed_at_start + now.saturating_duration_since(self.started);
        if age >= MAX_TXN_TTL {
            self.result = Some(Ok(()));
            return;
        }
        let plan = HeartbeatPlan {
            start_ts: self.start_ts,
            advise_lock_ttl: age.as_millis() as u64 + MAX_LOCK_TTL,
            min_commit_ts: Timestamp::ZERO,
            ok: false,
        };
        let view = &self.view;
        let budget = view.config.budget(view.config.backoff.txn_heartbeat);
        let op = Point::fanout(
            view,
            plan,
            self.primary.clone(),
            view.config.read_timeout_short,
            view.backoffer(budget),
        )
        .with_tags(&self.tags);
        self.beat.start(op, |outcome| outcome, now);
        self.next_at = now + HEARTBEAT_INTERVAL;
        self.check();
    }
}

impl Operation for KeepAlive {
    type Output = ();

    fn start(&mut self, now: Instant) {
        if self.next_at == Instant::MAX {
            self.started = now;
            self.next_at = now + HEARTBEAT_INTERVAL;
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.beat.poll_rpc()
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        if self.beat.on_response(id, response, now) {
            self.check();
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.beat.on_timeout(now);
        self.check();
        self.beat_if_due(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        if self.beat.is_idle() { Some(self.next_at) } else { self.beat.poll_timeout() }
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }
}

/// `Commit` or `BatchRollback` of many keys, for the background phases.
#[derive(Debug)]
pub struct KeysPlan {
    start_ts: Timestamp,
    /// `Some(ts)`: commit at ts; `None`: roll back.
    commit_ts: Option<Timestamp>,
    timeout: Duration,
}

impl KeyPlan for KeysPlan {
    type Item = Key;
    type Output = ();
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
        let keys = batch.iter().map(Key::to_bytes).collect();
        match self.commit_ts {
            Some(commit_ts) => KvRequest::Commit(Box::new(kvrpcpb::CommitRequest {
                keys,
                start_version: self.start_ts.version(),
                commit_version: commit_ts.version(),
                ..Default::default()
            })),
            None => KvRequest::BatchRollback(Box::new(kvrpcpb::BatchRollbackRequest {
                keys,
                start_version: self.start_ts.version(),
                ..Default::default()
            })),
        }
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let error = match response {
            KvResponse::Commit(r) => r.error,
            KvResponse::BatchRollback(r) => r.error,
            other => return Err(Error::malformed(format!("unexpected {}", other.name()))),
        };
        match error {
            Some(e) => Err(Error::from_key_error(e)),
            None => Ok(()),
        }
    }
    fn finish(self) {}
}

/// Commits `keys` at `commit_ts` (the secondaries after the primary, or
/// every key of an async-commit transaction). Budget: client-go's 41 s.
pub fn commit_keys(
    view: &Arc<ClusterView>,
    start_ts: Timestamp,
    commit_ts: Timestamp,
    keys: Vec<Key>,
) -> KeyFanout<KeysPlan> {
    let plan =
        KeysPlan { start_ts, commit_ts: Some(commit_ts), timeout: view.config.read_timeout_short };
    let budget = view.config.budget(view.config.backoff.commit_secondary);
    KeyFanout::new(view.clone(), plan, keys, view.backoffer(budget))
}

/// Rolls back the prewritten `keys` of a transaction that failed
/// (`BatchRollback`, client-go's cleanup; budget 20 s).
pub fn rollback_keys(
    view: &Arc<ClusterView>,
    start_ts: Timestamp,
    keys: Vec<Key>,
) -> KeyFanout<KeysPlan> {
    let plan = KeysPlan { start_ts, commit_ts: None, timeout: view.config.read_timeout_short };
    let budget = view.config.budget(view.config.backoff.cleanup);
    KeyFanout::new(view.clone(), plan, keys, view.backoffer(budget))
}

// ---------------------------------------------------------------- the machine

/// What a step of the commit produced.
/// The large outcomes are boxed: the enum moves with every event.
enum Done {
    Prewrite(Box<Result<PrewritePlan, Error>>),
    Resolved(Result<crate::lock::ResolveOutcome, Error>),
    Timestamp(Result<Timestamp, Error>),
    CommitPrimary(Box<Result<Result<Vec<Key>, kvrpcpb::KeyError>, Error>>),
}

/// What the next TSO answer is for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum TsoFor {
    /// A fresh min_commit_ts for a linearizable async commit / 1PC.
    MinCommitTs,
    /// The commit ts of 2PC.
    CommitTs,
}

/// Commits a transaction's mutations. See the module docs for the protocol.
pub struct Committer {
    view: Arc<ClusterView>,
    start_ts: Timestamp,
    /// Zero unless [`Committer::pessimistic`].
    for_update_ts: Timestamp,
    /// See [`Committer::for_update_ts_constraints`].
    for_update_ts_constraints: Arc<[(Key, Timestamp)]>,
    primary: Key,
    pending: Vec<Mutation>,
    /// Every mutation's key, in order.
    all_keys: Vec<Key>,
    /// The keys whose prewrite leaves a lock to commit: all but the
    /// `CheckNotExists` ones (client-go's `stripNoNeedCommitKeys`; nor are
    /// they an async commit's secondaries, `asyncSecondaries`: a resolver
    /// checking one would find no lock and roll the transaction back).
    commit_keys: Vec<Key>,
    opts: CommitOptions,
    lock_ttl: u64,
    max_commit_ts: Timestamp,
    async_commit: bool,
    one_pc: bool,
    min_commit_ts: Timestamp,
    min_commit_ts_seen: Vec<Timestamp>,
    one_pc_seen: Vec<Timestamp>,
    /// 1PC requests whose answer never came (see `PrewritePlan`).
    one_pc_unanswered: u32,
    /// The 1PC attempt may have committed at a ts we cannot learn.
    one_pc_uncertain: bool,
    /// A `Prewrite` RPC of any round lost its answer (transport error or
    /// deadline), as the prewrite fan-outs report: a store may have applied
    /// it, so a failed async-commit/1PC prewrite is undetermined
    /// (client-go's `setUndeterminedErr` on an RPC error).
    prewrite_lost_answer: bool,
    /// A `Commit` of the primary, in any round, lost its answer: it may have
    /// been applied (client-go's `setUndeterminedErr` on the primary's RPC
    /// error).
    commit_lost_answer: bool,
    /// The budget of the primary's commit, shared by its retries with newer
    /// commit timestamps (`CommitTsExpired`), as client-go keeps one `bo`.
    commit_backoffer: Option<Backoffer>,
    assertion_error: Option<Error>,
    tso_for: TsoFor,
    commit_ts: Timestamp,
    started: bool,
    step: StepSlot<Done>,
    backoffer: Backoffer,
    /// The step's and the keep-alive's RPCs under one id space.
    ids: IdMap<Child>,
    heartbeat: Option<KeepAlive>,
    /// Keep-alives started so far: a late answer to an earlier one is
    /// dropped.
    heartbeats: u64,
    heartbeat_wanted: bool,
    elapsed: Duration,
    result: Option<Result<CommitOutcome, Error>>,
    /// What must run after the result ([`Committer::take_follow_up`]).
    follow_up: Option<KeyFanout<KeysPlan>>,
    /// When the running step started, for [`CommitDetails`].
    step_started: Instant,
    details: CommitDetails,
    /// The latest instant the machine was fed: RPCs polled after an input
    /// leave at it.
    clock: Instant,
    /// `Prewrite` and `Commit` requests in flight, for
    /// [`CommitDetails::slowest_prewrite`] and [`CommitDetails::commit_primary`].
    timer: RequestTimer,
}

/// Whose RPC an id belongs to: the step (whose slot drops late answers of
/// earlier steps) or a keep-alive (by its number).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Child {
    Step,
    Heartbeat(u64),
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("start_ts", &self.start_ts)
            .field("primary", &self.primary)
            .field("keys", &self.all_keys.len())
            .finish()
    }
}

impl Committer {
    /// Commits `mutations` (with their `primary`) of the transaction that
    /// started at `start_ts` and has been running for `elapsed`.
    pub fn new(
        view: Arc<ClusterView>,
        start_ts: Timestamp,
        primary: Key,
        mutations: Vec<Mutation>,
        elapsed: Duration,
        opts: CommitOptions,
    ) -> Committer {
        let size: usize = mutations.iter().map(|m| m.key.len() + m.value.len()).sum();
        let key_size: usize = mutations.iter().map(|m| m.key.len()).sum();
        let all_keys: Vec<Key> = mutations.iter().map(|m| m.key.clone()).collect();
        let all_keys_len = all_keys.len();
        let commit_keys = mutations
            .iter()
            .filter(|m| m.op != kvrpcpb::Op::CheckNotExists)
            .map(|m| m.key.clone())
            .collect();
        // client-go checkAsyncCommit / checkOnePC; neither with shared
        // locks.
        let shared_locks = mutations.iter().any(|m| m.op == kvrpcpb::Op::SharedLock);
        let async_commit = opts.async_commit
            && !shared_locks
            && mutations.len() <= ASYNC_COMMIT_KEYS_LIMIT
            && key_size <= ASYNC_COMMIT_KEY_SIZE_LIMIT;
        // Refined in `start` against the region cache.
        let one_pc = opts.one_pc && !shared_locks && size <= TXN_COMMIT_BATCH_SIZE;
        let max_commit_ts = Timestamp::compose(
            start_ts.physical() + elapsed.as_millis() as i64 + ASYNC_COMMIT_SAFE_WINDOW_MS,
            0,
        );
        let budget = view.config.budget(view.config.backoff.prewrite);
        let backoffer = view.backoffer(budget);
        let opts_threshold = opts.heartbeat_threshold.unwrap_or(TTL_REFRESHED_TXN_SIZE);
        Committer {
            lock_ttl: lock_ttl(size, elapsed),
            view,
            start_ts,
            for_update_ts: Timestamp::ZERO,
            for_update_ts_constraints: Arc::new([]),
            primary,
            pending: mutations,
            all_keys,
            commit_keys,
            opts,
            max_commit_ts,
            async_commit,
            one_pc,
            min_commit_ts: start_ts.next(),
            min_commit_ts_seen: Vec::new(),
            one_pc_seen: Vec::new(),
            one_pc_unanswered: 0,
            one_pc_uncertain: false,
            prewrite_lost_answer: false,
            commit_lost_answer: false,
            commit_backoffer: None,
            assertion_error: None,
            tso_for: TsoFor::CommitTs,
            commit_ts: Timestamp::ZERO,
            started: false,
            step: StepSlot::new(),
            backoffer,
            ids: IdMap::new(),
            heartbeat: None,
            heartbeats: 0,
            heartbeat_wanted: size >= opts_threshold,
            elapsed,
            result: None,
            follow_up: None,
            step_started: Instant::ZERO,
            details: CommitDetails {
                write_keys: all_keys_len,
                write_size: size,
                ..CommitDetails::default()
            },
            clock: Instant::ZERO,
            timer: RequestTimer::default(),
        }
    }

    /// Commits as a pessimistic transaction whose locks were taken at
    /// `for_update_ts` (client-go with `isPessimistic`): every prewrite
    /// carries it and each mutation's [`PessimisticAction`], its
    /// `min_commit_ts` is above it, and a newer transaction's lock met is
    /// resolved rather than a conflict. Async commit and 1PC stay as
    /// eligible as for an optimistic transaction. (client-go also raises a
    /// pessimistic async commit's TTL past `max_commit_ts`, tidb#33641; the
    /// TTL, at least [`DEFAULT_LOCK_TTL`] plus the age, is always past the
    /// [`ASYNC_COMMIT_SAFE_WINDOW_MS`] plus the age already.)
    pub fn pessimistic(mut self, for_update_ts: Timestamp) -> Committer {
        self.for_update_ts = for_update_ts;
        self.min_commit_ts = self.min_commit_ts.max(for_update_ts.next());
        self
    }

    /// Makes TiKV check, at prewrite, that the pessimistic lock of each of
    /// these keys carries exactly this `for_update_ts` (client-go's
    /// `forUpdateTSConstraints`, set by fair locking, where a key's lock may
    /// have been taken over a newer write at that write's ts): a lock lost
    /// and taken again meanwhile fails the prewrite instead of committing a
    /// value computed from an older read.
    pub fn for_update_ts_constraints(
        mut self,
        mut constraints: Vec<(Key, Timestamp)>,
    ) -> Committer {
        constraints.sort_by(|a, b| a.0.cmp(&b.0));
        self.for_update_ts_constraints = constraints.into();
        self
    }

    fn finish(&mut self, result: Result<CommitOutcome, Error>) {
        self.step.clear();
        self.heartbeat = None;
        self.follow_up = self.follow_up_of(&result);
        self.result = Some(result);
    }

    /// What the transaction still owes the cluster once its outcome is
    /// known (client-go's `twoPhaseCommitter.execute` epilogue): committed
    /// with keys still locked, their commit; a definite failure, the
    /// rollback of every key it may have prewritten (client-go's cleanup);
    /// an undetermined outcome, nothing: the locks stay for readers to
    /// resolve, since rolling back a transaction that may have committed
    /// would be wrong.
    fn follow_up_of(&self, result: &Result<CommitOutcome, Error>) -> Option<KeyFanout<KeysPlan>> {
        let op = match result {
            Ok(outcome) if outcome.keys_to_commit.is_empty() => return None,
            Ok(outcome) => commit_keys(
                &self.view,
                self.start_ts,
                outcome.commit_ts,
                outcome.keys_to_commit.clone(),
            ),
            Err(Error::Undetermined(_)) => return None,
            Err(_) => rollback_keys(&self.view, self.start_ts, self.all_keys.clone()),
        };
        Some(op.with_tags(&self.opts.tags))
    }

    /// The budgets the commit slept against, for runtimes that report
    /// backoff: the prewrite phase's (its rounds and lock waits), then the
    /// primary commit's once that phase began. Each sleep is in one of them.
    pub fn budgets(&self) -> impl Iterator<Item = &Backoffer> {
        std::iter::once(&self.backoffer).chain(self.commit_backoffer.as_ref())
    }

    /// Where the commit's time went so far, and what it wrote (complete
    /// once the result is out).
    pub fn details(&self) -> CommitDetails {
        let backoff = self.budgets().map(Backoffer::total_sleep).sum();
        let mut backoff_by_kind: Vec<KindSleeps> = Vec::new();
        KindSleeps::add_into(
            &mut backoff_by_kind,
            self.budgets().flat_map(Backoffer::sleeps_by_kind),
        );
        CommitDetails { backoff, backoff_by_kind, ..self.details.clone() }
    }

    /// The operation to run in the background after the result: the
    /// secondaries' commit, or the rollback of a definitely failed
    /// transaction (see `follow_up_of`); `None` if there is nothing to do
    /// or the result is not out yet. Runtimes run it without waiting and
    /// do not wait for its outcome (they log a failure): readers resolve
    /// whatever it leaves.
    pub fn take_follow_up(&mut self) -> Option<KeyFanout<KeysPlan>> {
        self.follow_up.take()
    }

    /// Starts the TTL manager with the first prewrite (client-go starts it
    /// once the primary is prewritten; an early beat that finds no lock yet
    /// counts as one failure).
    fn start_heartbeat(&mut self, now: Instant) {
        if self.heartbeat_wanted && self.heartbeat.is_none() {
            let mut keep_alive = KeepAlive::new(
                self.view.clone(),
                self.start_ts,
                self.primary.clone(),
                self.elapsed,
                self.opts.tags.clone(),
            );
            keep_alive.start(now);
            self.heartbeats += 1;
            self.heartbeat = Some(keep_alive);
        }
    }

    /// Drops the keep-alive once it ended by itself.
    fn check_heartbeat(&mut self) {
        if self.heartbeat.as_mut().is_some_and(|hb| hb.poll_result().is_some()) {
            self.heartbeat = None;
        }
    }

    fn tso(&mut self, purpose: TsoFor, now: Instant) {
        self.tso_for = purpose;
        self.step_started = now;
        self.step.start(GetTimestamp::new(), Done::Timestamp, now);
    }

    fn prewrite(&mut self, now: Instant) {
        let secondaries =
            self.commit_keys.iter().filter(|k| **k != self.primary).cloned().collect();
        let plan = PrewritePlan {
            start_ts: self.start_ts,
            for_update_ts: self.for_update_ts,
            for_update_ts_constraints: self.for_update_ts_constraints.clone(),
            primary: self.primary.clone(),
            lock_ttl: self.lock_ttl,
            min_commit_ts: self.min_commit_ts,
            max_commit_ts: if self.async_commit || self.one_pc {
                self.max_commit_ts
            } else {
                Timestamp::ZERO
            },
            async_commit: self.async_commit,
            secondaries,
            one_pc: self.one_pc,
            total: self.all_keys.len(),
            one_pc_unanswered: self.one_pc_unanswered,
            split_after_one_pc: false,
            assertion_level: self.opts.assertion_level,
            timeout: self.view.config.read_timeout_short,
            met: Vec::new(),
            retry: Vec::new(),
            error: None,
            assertion_error: None,
            min_commit_ts_seen: Vec::new(),
            one_pc_commit_ts: Vec::new(),
            requests: 0,
        };
        self.start_heartbeat(now);
        let items = std::mem::take(&mut self.pending);
        let op = KeyFanout::new(self.view.clone(), plan, items, self.backoffer.fork())
            .with_tags(&self.opts.tags);
        self.step_started = now;
        self.step.start(op, |outcome| Done::Prewrite(Box::new(outcome)), now);
    }

    /// An error while prewriting. Under async commit or 1PC a prewrite
    /// whose answer never came may already have committed the transaction.
    fn prewrite_failed(&mut self, e: Error) {
        let maybe_committed = (self.async_commit || self.one_pc)
            && self.prewrite_lost_answer
            && matches!(e, Error::BackoffExhausted { .. } | Error::Rpc(_) | Error::Undetermined(_));
        if maybe_committed {
            self.finish(Err(Error::Undetermined(format!(
                "async-commit/1PC prewrite of txn {} lost its answer: {e}",
                self.start_ts
            ))));
        } else {
            self.finish(Err(e));
        }
    }

    fn after_prewrite(&mut self, plan: PrewritePlan, now: Instant) {
        self.one_pc_unanswered = plan.one_pc_unanswered;
        self.one_pc_uncertain |= plan.split_after_one_pc;
        if let Some(e) = plan.error {
            self.finish(Err(e));
            return;
        }
        self.assertion_error = self.assertion_error.take().or(plan.assertion_error);
        self.min_commit_ts_seen.extend(plan.min_commit_ts_seen);
        self.one_pc_seen.extend(plan.one_pc_commit_ts);
        if !plan.met.is_empty() {
            self.pending = plan.retry;
            let opts = ResolveOptions {
                caller_start_ts: self.start_ts,
                for_read: false,
                lite: false,
                tags: self.opts.tags.clone(),
            };
            let resolve =
                ResolveLocks::new(self.view.clone(), plan.met, opts, self.backoffer.fork());
            self.step_started = now;
            self.step.start(resolve, Done::Resolved, now);
            return;
        }
        if let Some(e) = self.assertion_error.take() {
            self.finish(Err(e));
            return;
        }
        // Every mutation is prewritten.
        if self.one_pc {
            match self.one_pc_seen.as_slice() {
                [ts] if !ts.is_zero() => {
                    let commit_ts = *ts;
                    self.finish(Ok(CommitOutcome {
                        commit_ts,
                        mode: CommitMode::OnePhase,
                        keys_to_commit: Vec::new(),
                    }));
                    return;
                }
                // A 1PC attempt lost its answer and the keys then went out
                // in several batches: TiKV answers those alike whether it
                // wrote 2PC locks or finds the transaction committed by
                // that attempt, at a ts a 2PC commit would not report.
                _ if self.one_pc_uncertain => {
                    self.finish(Err(Error::Undetermined(format!(
                        "a 1PC prewrite of txn {} lost its answer before its keys moved to \
                         several regions: it may have committed",
                        self.start_ts
                    ))));
                    return;
                }
                // TiKV declined 1PC: the locks are ordinary prewrite
                // locks; commit them with 2PC.
                _ => self.one_pc = false,
            }
        }
        if self.async_commit {
            if self.min_commit_ts_seen.iter().all(|ts| !ts.is_zero()) {
                let commit_ts = self.min_commit_ts_seen.iter().copied().max().unwrap_or_default();
                self.finish(Ok(CommitOutcome {
                    commit_ts,
                    mode: CommitMode::AsyncCommit,
                    keys_to_commit: self.commit_keys.clone(),
                }));
                return;
            }
            // TiKV declined async commit (min_commit_ts 0): fall back.
            self.async_commit = false;
        }
        self.tso(TsoFor::CommitTs, now);
    }

    fn commit_primary(&mut self, now: Instant) {
        let with = match self.view.regions.locate_key(self.primary.as_bytes(), now) {
            Some(region) => primary_batch_secondaries(&self.commit_keys, &self.primary, |k| {
                region.contains(k.as_bytes())
            }),
            None => Vec::new(),
        };
        let plan =
            CommitPlan { start_ts: self.start_ts, commit_ts: self.commit_ts, with, outcome: None };
        let view = &self.view;
        let bo = self
            .commit_backoffer
            .get_or_insert_with(|| view.backoffer(view.config.budget(view.config.backoff.commit)))
            .fork();
        let op = Point::fanout(
            &self.view,
            plan,
            self.primary.clone(),
            self.view.config.read_timeout_short,
            bo,
        )
        .with_tags(&self.opts.tags);
        self.step_started = now;
        self.step.start(op, |outcome| Done::CommitPrimary(Box::new(outcome)), now);
    }

    /// Moves on when the step has finished, until one is running. The
    /// prewrite rounds' and resolutions' sleeps add up against the prewrite
    /// budget; once the primary's commit has a budget of its own, every
    /// later step (commit retries and their timestamps) spends that one.
    fn check(&mut self, now: Instant) {
        loop {
            let budget = match &mut self.commit_backoffer {
                Some(bo) => bo,
                None => &mut self.backoffer,
            };
            let Some(event) = self.step.poll_event(Some(budget)) else { return };
            let took = now.saturating_duration_since(self.step_started);
            match &event {
                StepEvent::Done(Done::Prewrite(plan)) => {
                    self.details.prewrite += took;
                    if let Ok(plan) = plan.as_ref() {
                        self.details.prewrite_requests += plan.requests;
                    }
                }
                StepEvent::Done(Done::Resolved(_)) => self.details.resolve_lock += took,
                StepEvent::Done(Done::Timestamp(_)) => match self.tso_for {
                    TsoFor::MinCommitTs => self.details.get_latest_ts += took,
                    TsoFor::CommitTs => self.details.get_commit_ts += took,
                },
                StepEvent::Done(Done::CommitPrimary(_)) => self.details.commit += took,
                StepEvent::Woke => {}
            }
            match event {
                StepEvent::Woke => self.prewrite(now),
                StepEvent::Done(Done::Prewrite(outcome)) => {
                    self.prewrite_lost_answer |= self.step.lost_answers() > 0;
                    match *outcome {
                        Ok(plan) => self.after_prewrite(plan, now),
                        Err(e) => self.prewrite_failed(e),
                    }
                }
                StepEvent::Done(Done::Resolved(outcome)) => self.after_resolve(outcome, now),
                StepEvent::Done(Done::Timestamp(outcome)) => self.after_tso(outcome, now),
                StepEvent::Done(Done::CommitPrimary(outcome)) => {
                    self.commit_lost_answer |= self.step.lost_answers() > 0;
                    self.after_commit_primary(*outcome, now);
                }
            }
        }
    }

    fn after_resolve(&mut self, outcome: Result<crate::lock::ResolveOutcome, Error>, now: Instant) {
        match outcome {
            Err(e) => self.finish(Err(e)),
            Ok(outcome) if outcome.ms_before_expired > 0 => {
                let cap = Duration::from_millis(outcome.ms_before_expired);
                match self.backoffer.backoff_capped(
                    BackoffKind::TxnLock,
                    cap,
                    format!("prewrite of txn {} waits for a live lock", self.start_ts),
                ) {
                    Ok(sleep) => self.step.sleep_until(now + sleep),
                    Err(e) => self.finish(Err(e)),
                }
            }
            Ok(_) => self.prewrite(now),
        }
    }

    fn after_tso(&mut self, outcome: Result<Timestamp, Error>, now: Instant) {
        match outcome {
            Ok(ts) => match self.tso_for {
                TsoFor::MinCommitTs => {
                    self.min_commit_ts = self.min_commit_ts.max(ts.next());
                    self.prewrite(now);
                }
                TsoFor::CommitTs => {
                    if ts <= self.start_ts {
                        self.finish(Err(Error::malformed(format!(
                            "commit ts {ts} not after start ts {}",
                            self.start_ts
                        ))));
                        return;
                    }
                    let ran_ms = ts.physical().saturating_sub(self.start_ts.physical());
                    let ran = Duration::from_millis(u64::try_from(ran_ms).unwrap_or(0));
                    if ran >= MAX_TXN_TIME_USE {
                        // client-go checks the same after the commit ts,
                        // before the primary's commit: nothing is
                        // committed yet, so the failure is definite.
                        self.finish(Err(self.too_long(ts)));
                        return;
                    }
                    self.commit_ts = ts;
                    self.commit_primary(now);
                }
            },
            Err(e) => self.finish(Err(e)),
        }
    }

    /// The transaction ran past [`MAX_TXN_TIME_USE`] by `now_ts`.
    fn too_long(&self, now_ts: Timestamp) -> Error {
        Error::TxnTooLong { start_ts: self.start_ts, now_ts, limit: MAX_TXN_TIME_USE }
    }

    fn after_commit_primary(
        &mut self,
        outcome: Result<Result<Vec<Key>, kvrpcpb::KeyError>, Error>,
        now: Instant,
    ) {
        match outcome {
            Ok(Ok(committed_with)) => {
                // `committed_with` is sorted, as `commit_keys`.
                let keys = self
                    .commit_keys
                    .iter()
                    .filter(|k| **k != self.primary && committed_with.binary_search(k).is_err())
                    .cloned()
                    .collect();
                let commit_ts = self.commit_ts;
                self.finish(Ok(CommitOutcome {
                    commit_ts,
                    mode: CommitMode::TwoPhase,
                    keys_to_commit: keys,
                }));
            }
            Ok(Err(e))
                if e.commit_ts_expired.as_ref().is_some_and(|x| {
                    x.min_commit_ts.saturating_sub(x.attempted_commit_ts) > MAX_COMMIT_TS_PUSH
                }) =>
            {
                // client-go: "2PC MinCommitTS is too large"; TiKV
                // refused the commit, nothing was committed.
                self.finish(Err(Error::KeyError(Box::new(e))));
            }
            Ok(Err(e)) if e.commit_ts_expired.is_some() => {
                // The lock's min_commit_ts was pushed past our commit ts
                // by a reader: commit at a newer timestamp.
                self.tso(TsoFor::CommitTs, now);
            }
            Ok(Err(e)) if e.txn_lock_not_found.is_some() => {
                // The primary's lock is gone and there is no commit
                // record: a resolver rolled the transaction back.
                self.finish(Err(Error::KeyError(Box::new(e))));
            }
            Ok(Err(e)) => self.finish(Err(Error::from_key_error(e))),
            Err(e) if self.commit_lost_answer => {
                // The commit point's answer is unknown: a Commit that was
                // sent may have been applied.
                self.finish(Err(Error::Undetermined(format!(
                    "commit of primary {:?} of txn {} at {}: {e}",
                    self.primary, self.start_ts, self.commit_ts
                ))));
            }
            // Every Commit sent was refused (region errors) or none was
            // sent (the region could not be located): nothing committed.
            Err(e) => self.finish(Err(e)),
        }
    }
}

impl Operation for Committer {
    type Output = CommitOutcome;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        self.clock = now;
        if self.pending.is_empty() {
            self.finish(Ok(CommitOutcome {
                commit_ts: self.start_ts,
                mode: CommitMode::TwoPhase,
                keys_to_commit: Vec::new(),
            }));
            return;
        }
        if self.elapsed >= MAX_TXN_TIME_USE {
            // Refused before anything is written: under async commit or
            // 1PC the prewrite itself would be the commit point.
            self.finish(Err(self.too_long(self.start_ts)));
            self.follow_up = None; // nothing was written to roll back
            return;
        }
        if self.one_pc {
            // client-go checkOnePC: only when everything fits one batch, so
            // only if every key is in one cached region (1PC must cover the
            // whole transaction in a single request).
            let first =
                self.all_keys.first().and_then(|k| self.view.regions.locate_key(k.as_bytes(), now));
            self.one_pc = match first {
                Some(region) => self.all_keys.iter().all(|k| region.contains(k.as_bytes())),
                None => false,
            };
        }
        if (self.async_commit || self.one_pc) && !self.opts.causal_consistency {
            // client-go: a linearizable async commit / 1PC takes
            // min_commit_ts from a TSO timestamp fetched after the caller
            // decided to commit.
            self.tso(TsoFor::MinCommitTs, now);
        } else {
            self.prewrite(now);
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        if let Some(rpc) = self.step.poll_rpc() {
            let rpc = self.ids.wrap(Child::Step, rpc);
            // Only the primary's `Commit` is sent from here: the
            // secondaries' commit is the follow-up.
            self.timer.sent(&rpc, self.clock, |r| {
                matches!(r, KvRequest::Prewrite(_) | KvRequest::Commit(_))
            });
            return Some(rpc);
        }
        let rpc = self.heartbeat.as_mut()?.poll_rpc()?;
        Some(self.ids.wrap(Child::Heartbeat(self.heartbeats), rpc))
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.clock = now;
        if let Some(answer) = self.timer.answered(id, now)
            && let Ok(Response::Kv(kv)) = &response
        {
            self.details.note_answer(&answer, kv);
        }
        let Some((child, id)) = self.ids.take(id) else {
            return;
        };
        match child {
            Child::Heartbeat(n) => {
                if n == self.heartbeats
                    && let Some(hb) = self.heartbeat.as_mut()
                {
                    hb.on_response(id, response, now);
                    self.check_heartbeat();
                }
            }
            Child::Step => {
                if self.step.on_response(id, response, now) {
                    self.check(now);
                }
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.clock = now;
        if let Some(hb) = self.heartbeat.as_mut() {
            hb.on_timeout(now);
            self.check_heartbeat();
        }
        self.step.on_timeout(now);
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let heartbeat = self.heartbeat.as_ref().and_then(|hb| hb.poll_timeout());
        crate::time::earliest(self.step.poll_timeout(), heartbeat)
    }

    fn poll_result(&mut self) -> Option<Result<CommitOutcome, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests;
