//! The write buffer of a pipelined DML transaction (client-go's
//! `unionstore.PipelinedMemDB`): writes go to a mutable [`MemBuffer`];
//! once it holds enough, it is handed off as the next *generation* to be
//! flushed to TiKV as locks (`Flush`) while the transaction keeps writing
//! into a fresh one. At most one generation is in flight; reads look at the
//! mutable buffer, then the one being flushed, then (for keys in neither)
//! what earlier flushes wrote, read back with `BufferBatchGet` and cached
//! until the next flush.
//!
//! Pure bookkeeping: the caller sends the `Flush` and `BufferBatchGet`
//! requests and reports their outcome.
//!
//! ```
//! use tikv_core::txn::pipelined::{FlushStart, FlushThresholds, LocalRead, PipelinedBuffer};
//!
//! // Tiny thresholds for the example; the defaults are client-go's.
//! let thresholds = FlushThresholds { min_keys: 2, min_bytes: 1, force_bytes: 1 << 20 };
//! let mut buffer = PipelinedBuffer::new(thresholds);
//! buffer.put(b"a", "1")?;
//! assert!(!buffer.flush_due());
//! buffer.put(b"b", "2")?;
//! let FlushStart::Started(flush) = buffer.start_flush(false)? else { unreachable!() };
//! assert_eq!((flush.generation, flush.mutations.len()), (1, 2));
//! // Still readable while it is being flushed.
//! assert_eq!(buffer.get_local(b"a"), LocalRead::Put("1".into()));
//! buffer.flush_finished(Ok(()))?;
//! // Now only TiKV has it: the caller reads it back with BufferBatchGet.
//! assert_eq!(buffer.get_local(b"a"), LocalRead::NotInMemory);
//! # Ok::<(), tikv_core::Error>(())
//! ```

mod broadcast;
mod commit;

pub use broadcast::{
    BROADCAST_CONCURRENCY, BROADCAST_GRACE_PERIOD, BROADCAST_TIMEOUT, BroadcastOutcome,
    BroadcastTxnStatus, TxnStatusUpdate,
};
pub use commit::{
    MAX_PIPELINED_TXN_TTL, PRIMARY_WRITTEN_POLL, PipelinedCommit, PipelinedCommitRequest,
    PipelinedKeepAlive, PipelinedTxnStatus,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tikv_proto::kvrpcpb;

use crate::Error;
use crate::backoff::{BackoffKind, Backoffer};
use crate::key::KeyRange;
use crate::key::{Key, KvPair, Value};
use crate::lock::{Lock, ResolveLocks, ResolveOptions};
use crate::op::{Operation, StepEvent, StepSlot, forward_step_inputs};
use crate::pd::Timestamp;
use crate::range_task::{RangeTaskHandler, RangeTaskRunner, RangeTaskStat};
use crate::route::fanout::{KeyFanout, KeyPlan};
use crate::route::walk::{RangePlan, RangeWalk};
use crate::rpc::{KvRequest, KvResponse, RequestTags};
use crate::time::{Duration, Instant};
use crate::txn::commit::{
    DEFAULT_LOCK_TTL, MAX_LOCK_TTL, Mutation, TXN_COMMIT_BATCH_SIZE, mutations_from_buffer,
};
use crate::txn::membuffer::{BufferedValue, FlagsOp, KeyFlags, MemBuffer};
use crate::txn::snapshot::BATCH_GET_SIZE;
use crate::view::ClusterView;

/// When the mutable buffer is handed off to be flushed (client-go's
/// `MinFlushKeys`, `MinFlushMemSize`, `ForceFlushMemSizeThreshold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushThresholds {
    /// Keys the buffer must hold, with at least `min_bytes`, to be flushed.
    pub min_keys: usize,
    /// Memory the buffer must hold to be flushed.
    pub min_bytes: usize,
    /// Memory at which the buffer is flushed whatever its key count, and
    /// at which the writer waits for the flush in flight rather than grow.
    pub force_bytes: usize,
}

impl Default for FlushThresholds {
    /// client-go's: 10,000 keys and 16 MiB, or 128 MiB.
    fn default() -> FlushThresholds {
        FlushThresholds { min_keys: 10_000, min_bytes: 16 << 20, force_bytes: 128 << 20 }
    }
}

/// What the buffer holds for a key in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalRead {
    /// Written with this value.
    Put(Value),
    /// Deleted.
    Deleted,
    /// Not in memory: an earlier flush may have written it
    /// ([`PipelinedBuffer::cached_flushed`], else `BufferBatchGet`), or the
    /// snapshot answers.
    NotInMemory,
}

/// One generation handed off to be flushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flush {
    /// Its generation (1 for the first flush; TiKV keeps a key's lock of the
    /// newest generation).
    pub generation: u64,
    /// Its mutations, in key order (client-go builds them as an
    /// optimistic transaction's).
    pub mutations: Vec<Mutation>,
}

/// What [`PipelinedBuffer::start_flush`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushStart {
    /// Nothing to flush yet (or nothing at all).
    NotDue,
    /// A flush is in flight: wait for it ([`PipelinedBuffer::flush_finished`])
    /// and call again (client-go's writer blocks on it here).
    WaitForFlushInFlight,
    /// This generation is to be flushed now.
    Started(Flush),
}

/// A pipelined transaction's write buffer; see the [module docs](self).
#[derive(Debug)]
pub struct PipelinedBuffer {
    current: MemBuffer,
    /// The generation being flushed, readable until its flush finishes.
    flushing: Option<MemBuffer>,
    generation: u64,
    flushed_keys: usize,
    flushed_bytes: usize,
    /// The smallest and largest keys handed to a flush: the range to
    /// resolve at commit.
    flushed_range: Option<(Key, Key)>,
    /// Values of flushed keys read back since the last flush (`None`: not
    /// written by the transaction).
    flushed_reads: BTreeMap<Key, Option<Value>>,
    thresholds: FlushThresholds,
}

impl PipelinedBuffer {
    /// An empty buffer flushing at `thresholds`.
    pub fn new(thresholds: FlushThresholds) -> PipelinedBuffer {
        PipelinedBuffer {
            current: MemBuffer::new(),
            flushing: None,
            generation: 0,
            flushed_keys: 0,
            flushed_bytes: 0,
            flushed_range: None,
            flushed_reads: BTreeMap::new(),
            thresholds,
        }
    }

    /// Buffers `key = value`.
    pub fn put(&mut self, key: &[u8], value: impl Into<Value>) -> Result<(), Error> {
        self.current.set(key, value)
    }

    /// Buffers `key = value`, requiring that the key does not exist (TiKV
    /// checks it when the key is flushed: `AlreadyExist`).
    pub fn insert(&mut self, key: &[u8], value: impl Into<Value>) -> Result<(), Error> {
        self.current.set_with_flags(key, value, &[FlagsOp::SetPresumeKeyNotExists])
    }

    /// Buffers a delete of `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), Error> {
        self.current.delete(key)
    }

    /// What memory holds for `key`: the mutable buffer first, then the
    /// generation being flushed (client-go `GetLocal`).
    pub fn get_local(&self, key: &[u8]) -> LocalRead {
        let buffers = std::iter::once(&self.current).chain(self.flushing.as_ref());
        for buffer in buffers {
            match buffer.get(key).and_then(|e| e.value) {
                Some(BufferedValue::Put(v)) => return LocalRead::Put(v.clone()),
                Some(BufferedValue::Delete) => return LocalRead::Deleted,
                None => {}
            }
        }
        LocalRead::NotInMemory
    }

    /// A flushed key read back since the last flush: `Some(None)` if the
    /// transaction did not write it, `None` if not read back yet.
    pub fn cached_flushed(&self, key: &[u8]) -> Option<Option<Value>> {
        self.flushed_reads.get(key).cloned()
    }

    /// Remembers what `BufferBatchGet` returned for `key` (`None`: nothing,
    /// the transaction did not write it; a flushed delete comes back as an
    /// empty value) until the next flush.
    pub fn record_flushed_read(&mut self, key: Key, value: Option<Value>) {
        self.flushed_reads.insert(key, value);
    }

    /// Whether the mutable buffer should be handed off now (client-go
    /// `needFlush`): it holds at least `min_keys` keys and `min_bytes`, or
    /// `force_bytes` whatever its keys; while a flush is in flight, only at
    /// `force_bytes`.
    pub fn flush_due(&self) -> bool {
        let mem = self.current.mem();
        let t = &self.thresholds;
        if mem < t.min_bytes || (self.current.len() < t.min_keys && mem < t.force_bytes) {
            return false;
        }
        self.flushing.is_none() || mem >= t.force_bytes
    }

    /// Hands the mutable buffer off as the next generation when a flush is
    /// due or `force`d (client-go `Flush(force)`), unless it is empty. The
    /// reads cached from earlier flushes are dropped either way, as
    /// client-go drops them. Open staging levels are refused.
    pub fn start_flush(&mut self, force: bool) -> Result<FlushStart, Error> {
        self.flushed_reads.clear();
        if self.current.staging_depth() > 0 {
            return Err(Error::InvalidArgument(
                "a pipelined transaction cannot flush with open staging levels".into(),
            ));
        }
        if self.current.is_empty() || !(force || self.flush_due()) {
            return Ok(FlushStart::NotDue);
        }
        if self.flushing.is_some() {
            return Ok(FlushStart::WaitForFlushInFlight);
        }
        if self
            .current
            .iter::<std::ops::RangeFull>(..)
            .any(|(_, e)| e.flags.contains(KeyFlags::KEY_LOCKED_IN_SHARE_MODE))
        {
            return Err(Error::InvalidArgument(
                "shared locks are not supported in a pipelined transaction".into(),
            ));
        }
        let handed_off = std::mem::take(&mut self.current);
        self.generation += 1;
        self.flushed_keys += handed_off.len();
        self.flushed_bytes += handed_off.size();
        let first = handed_off.iter::<std::ops::RangeFull>(..).next().map(|(k, _)| k.to_vec());
        let last = handed_off.iter_rev::<std::ops::RangeFull>(..).next().map(|(k, _)| k.to_vec());
        if let (Some(first), Some(last)) = (first, last) {
            let (first, last) = (Key::from(first), Key::from(last));
            self.flushed_range = Some(match self.flushed_range.take() {
                None => (first, last),
                Some((lo, hi)) => (lo.min(first), hi.max(last)),
            });
        }
        let (mutations, _) = mutations_from_buffer(&handed_off);
        self.flushing = Some(handed_off);
        Ok(FlushStart::Started(Flush { generation: self.generation, mutations }))
    }

    /// The flush in flight ended with `result`, which is handed back: an
    /// error fails the transaction (client-go aborts it).
    pub fn flush_finished(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        self.flushing = None;
        result
    }

    /// Whether a flush is in flight.
    pub fn is_flushing(&self) -> bool {
        self.flushing.is_some()
    }

    /// The newest generation handed off (0 before the first flush).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Keys and bytes handed to flushes so far.
    pub fn flushed(&self) -> (usize, usize) {
        (self.flushed_keys, self.flushed_bytes)
    }

    /// The smallest and largest key handed to a flush: committing or
    /// rolling back resolves the locks in this range, region by region.
    pub fn flushed_range(&self) -> Option<&(Key, Key)> {
        self.flushed_range.as_ref()
    }

    /// Whether the transaction wrote anything (flushed or not).
    pub fn dirty(&self) -> bool {
        self.generation > 0 || self.current.dirty()
    }

    /// Keys in the mutable buffer.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether the mutable buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Approximate heap bytes held in memory (both buffers): what the
    /// thresholds keep bounded.
    pub fn mem(&self) -> usize {
        self.current.mem() + self.flushing.as_ref().map_or(0, MemBuffer::mem)
    }
}

/// Age of the moving average of flush times the write throttle follows
/// (client-go `defaultEWMAAge`).
pub const FLUSH_TIME_EWMA_AGE: f64 = 10.0;

/// The write throttle of a pipelined transaction (client-go
/// `throttlePipelinedTxn`): before each generation's flush, sleep so that
/// sleep / (sleep + flush time) = `ratio`, the flush time taken from a
/// moving average of the flushes so far. client-go calls it inside the
/// flush function, which `PipelinedMemDB.Flush` runs in the background: the
/// sleep delays the flush, and so the writer only once it reaches the next
/// flush with this one still in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct FlushThrottle {
    ratio: f64,
    /// The moving average of flush times in milliseconds; 0 until the first
    /// flush is recorded.
    average_ms: f64,
}

impl FlushThrottle {
    /// A throttle taking `ratio` (in `[0, 1)`; anything else never sleeps, as
    /// client-go logs and skips an invalid ratio) of the writer's time.
    pub fn new(ratio: f64) -> FlushThrottle {
        FlushThrottle { ratio, average_ms: 0.0 }
    }

    /// How long to sleep before the next flush: ratio / (1 − ratio) × the
    /// average flush time, in whole milliseconds as client-go sleeps.
    pub fn sleep_before_flush(&self) -> Duration {
        if !(0.0..1.0).contains(&self.ratio) {
            return Duration::ZERO;
        }
        let sleep_ms = self.ratio / (1.0 - self.ratio) * self.average_ms;
        Duration::from_millis(sleep_ms.max(0.0) as u64)
    }

    /// Feeds a finished flush's time (without the sleep) into the average:
    /// the first one (or any while the average is 0) sets it, later ones
    /// move it by 2 / (age + 1) (client-go's `VariableEWMA`, whose `Set`
    /// ends its warm-up).
    pub fn record_flush(&mut self, took: Duration) {
        let took_ms = took.as_millis() as f64;
        self.average_ms = if self.average_ms == 0.0 {
            took_ms
        } else {
            let decay = 2.0 / (FLUSH_TIME_EWMA_AGE + 1.0);
            self.average_ms * (1.0 - decay) + took_ms * decay
        };
    }

    /// The moving average of flush times so far.
    pub fn average_flush_time(&self) -> Duration {
        Duration::from_secs_f64(self.average_ms / 1e3)
    }
}

/// Budget of one generation's flush, lock resolution included (client-go
/// flushes with a 20 s backoffer).
pub const FLUSH_BUDGET: Duration = Duration::from_secs(20);

/// What a pipelined transaction's flush carries besides its mutations.
#[derive(Clone, Debug)]
pub struct FlushRequest {
    /// The transaction's start ts.
    pub start_ts: Timestamp,
    /// Its primary key (every lock points at it; its region's flush also
    /// starts the heartbeats, which the caller runs).
    pub primary: Key,
    /// The generation being flushed (from 1; see [`Flush::generation`]).
    pub generation: u64,
    /// Assertions TiKV checks on each key's first flush.
    pub assertion_level: kvrpcpb::AssertionLevel,
    /// Priority, request source and resource group of every request.
    pub tags: RequestTags,
    /// When the transaction took its start ts, in the machine's clock:
    /// each flush's lock TTL counts the transaction's age from here
    /// ([`flush_lock_ttl`]).
    pub started_at: Instant,
}

/// The lock TTL of a flush at `now` of a transaction started at
/// `started_at`: client-go's `max(defaultLockTTL, ManagedLockTTL)` plus the
/// transaction's age, as a prewrite's TTL counts it.
///
/// TiKV judges a lock expired by its start ts plus its TTL, and client-go
/// sends the fixed 20 s. A generation flushed more than 20 s after the
/// start (the first one after waiting on other transactions' locks, before
/// the heartbeats begin; a later one rewriting the primary's lock with a
/// shorter TTL than the heartbeats gave it) would write an expired lock
/// that any reader may roll back while the transaction lives. The age
/// keeps it alive as long as the heartbeats would.
pub fn flush_lock_ttl(started_at: Instant, now: Instant) -> u64 {
    let age = now.saturating_duration_since(started_at).as_millis();
    DEFAULT_LOCK_TTL.max(MAX_LOCK_TTL).saturating_add(u64::try_from(age).unwrap_or(u64::MAX))
}

/// `Flush` of one region's batch (client-go `buildPipelinedFlushRequest`),
/// collecting the locks of other transactions met.
struct FlushPlan {
    req: FlushRequest,
    /// [`flush_lock_ttl`] when the round started.
    lock_ttl: u64,
    timeout: Duration,
    met: Vec<Lock>,
    retry: Vec<Mutation>,
    error: Option<Error>,
    /// A batch holding the primary key was flushed without key errors.
    primary_written: bool,
}

impl KeyPlan for FlushPlan {
    type Item = Mutation;
    type Output = FlushPlan;
    fn key(item: &Mutation) -> &Key {
        &item.key
    }
    /// Keys only: client-go sizes flush batches with `keySize` (its
    /// `doActionOnGroupMutations` uses key + value for prewrites alone).
    fn size(item: &Mutation) -> usize {
        item.key.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (usize::MAX, TXN_COMMIT_BATCH_SIZE)
    }
    fn build(&mut self, batch: &[Mutation]) -> KvRequest {
        KvRequest::Flush(Box::new(kvrpcpb::FlushRequest {
            mutations: batch.iter().map(Mutation::to_proto).collect(),
            primary_key: self.req.primary.to_bytes(),
            start_ts: self.req.start_ts.version(),
            // TiKV writes start_ts + 1 whatever is sent; client-go sends it.
            min_commit_ts: self.req.start_ts.next().version(),
            generation: self.req.generation,
            lock_ttl: self.lock_ttl,
            assertion_level: self.req.assertion_level as i32,
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, batch: Vec<Mutation>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::Flush(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if r.errors.is_empty() && batch.iter().any(|m| m.key == self.req.primary) {
            // client-go starts the heartbeats here (`handleSingleBatch` of
            // the primary's batch), not when the whole generation is in.
            self.primary_written = true;
        }
        let mut locked_keys: Vec<Key> = Vec::new();
        for e in r.errors {
            if let Some(a) = &e.already_exist {
                self.error.get_or_insert(Error::KeyExists(a.key.clone().into()));
            } else if let Some(info) = &e.locked {
                for lock in Lock::from_info(info) {
                    if lock.txn_id > self.req.start_ts {
                        // client-go: a newer transaction's lock means this
                        // optimistic transaction will conflict anyway.
                        self.error.get_or_insert(Error::WriteConflict {
                            start_ts: self.req.start_ts,
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
            } else if e.assertion_failed.is_some() {
                self.error.get_or_insert(Error::AssertionFailed(Box::new(e)));
            } else {
                self.error.get_or_insert(Error::KeyError(Box::new(e)));
            }
        }
        // Unlike a prewrite, TiKV writes the keys that were not locked:
        // only the locked ones are flushed again once resolved.
        self.retry.extend(batch.into_iter().filter(|m| locked_keys.contains(&m.key)));
        Ok(())
    }
    fn finish(self) -> FlushPlan {
        self
    }
}

enum FlushDone {
    Flushed(Box<Result<FlushPlan, Error>>),
    Resolved(Result<crate::lock::ResolveOutcome, Error>),
}

/// Flushes one generation's mutations (client-go `actionPipelinedFlush`):
/// `Flush` per region batch; the locks of other transactions met are
/// resolved (a live one waited on, bounded by its TTL) and their keys
/// flushed again; a newer transaction's lock is a write conflict, a key an
/// insert finds existing is `KeyExists`. Succeeds when every mutation holds
/// the transaction's lock of this generation (or a newer one).
pub struct FlushGeneration {
    view: Arc<ClusterView>,
    req: FlushRequest,
    /// Mutations not flushed yet, in key order (the locked keys of the last
    /// round first).
    pending: Vec<Mutation>,
    /// Batches' worth of bytes sent per round (see
    /// [`FlushGeneration::with_concurrency`]).
    concurrency: usize,
    step: StepSlot<FlushDone>,
    backoffer: Backoffer,
    /// Set once the primary's lock is written (see
    /// [`FlushGeneration::signal_primary_written`]).
    primary_written: Option<Arc<AtomicBool>>,
    started: bool,
    result: Option<Result<(), Error>>,
}

impl std::fmt::Debug for FlushGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushGeneration")
            .field("start_ts", &self.req.start_ts)
            .field("generation", &self.req.generation)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl FlushGeneration {
    /// The flush of `mutations` as `req` says.
    pub fn new(view: Arc<ClusterView>, req: FlushRequest, mutations: Vec<Mutation>) -> Self {
        let backoffer = view.backoffer(view.config.budget(FLUSH_BUDGET));
        FlushGeneration {
            view,
            req,
            pending: mutations,
            concurrency: usize::MAX,
            step: StepSlot::default(),
            backoffer,
            primary_written: None,
            started: false,
            result: None,
        }
    }

    /// Bounds the requests in flight (client-go flushes a generation's
    /// region batches with the transaction's flush concurrency): each round
    /// sends the next `concurrency` batches' worth of mutations in key
    /// order, so at most `concurrency` requests plus one per region
    /// boundary inside that span are in flight. Unbounded by default.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets `flag` as soon as a batch holding the primary key is flushed
    /// without key errors, while the rest of the generation may still wait
    /// for other transactions' locks: client-go starts the heartbeats
    /// right then ([`PipelinedKeepAlive::after_primary_written`]),
    /// so a generation that waits longer than the lock TTL does not let
    /// the primary expire under it.
    pub fn signal_primary_written(mut self, flag: Arc<AtomicBool>) -> Self {
        self.primary_written = Some(flag);
        self
    }

    fn flush(&mut self, now: Instant) {
        let budget = self.concurrency.saturating_mul(TXN_COMMIT_BATCH_SIZE);
        let mut size = 0;
        let take = self
            .pending
            .iter()
            .position(|m| {
                size += <FlushPlan as KeyPlan>::size(m);
                size > budget
            })
            .unwrap_or(self.pending.len())
            .max(1);
        let rest = self.pending.split_off(take.min(self.pending.len()));
        let items = std::mem::replace(&mut self.pending, rest);
        let plan = FlushPlan {
            req: self.req.clone(),
            lock_ttl: flush_lock_ttl(self.req.started_at, now),
            timeout: self.view.config.read_timeout_short,
            met: Vec::new(),
            retry: Vec::new(),
            error: None,
            primary_written: false,
        };
        let op = KeyFanout::new(self.view.clone(), plan, items, self.backoffer.fork())
            .with_tags(&self.req.tags);
        self.step.start(op, |outcome| FlushDone::Flushed(Box::new(outcome)), now);
    }

    fn after_flush(&mut self, plan: FlushPlan, now: Instant) {
        if plan.primary_written
            && let Some(flag) = &self.primary_written
        {
            flag.store(true, Ordering::Relaxed);
        }
        if let Some(e) = plan.error {
            self.result = Some(Err(e));
            return;
        }
        if plan.met.is_empty() {
            if self.pending.is_empty() {
                self.result = Some(Ok(()));
            } else {
                self.flush(now);
            }
            return;
        }
        // The locked keys come from the round just sent, before the rest.
        let mut pending = plan.retry;
        pending.append(&mut self.pending);
        self.pending = pending;
        let opts = ResolveOptions {
            caller_start_ts: self.req.start_ts,
            for_read: false,
            lite: false,
            tags: self.req.tags.clone(),
        };
        let resolve = ResolveLocks::new(self.view.clone(), plan.met, opts, self.backoffer.fork());
        self.step.start(resolve, FlushDone::Resolved, now);
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.backoffer)) {
            match event {
                StepEvent::Woke => self.flush(now),
                StepEvent::Done(FlushDone::Flushed(outcome)) => match *outcome {
                    Ok(plan) => self.after_flush(plan, now),
                    Err(e) => self.result = Some(Err(e)),
                },
                StepEvent::Done(FlushDone::Resolved(Err(e))) => self.result = Some(Err(e)),
                StepEvent::Done(FlushDone::Resolved(Ok(outcome))) => {
                    if outcome.ms_before_expired == 0 {
                        self.flush(now);
                        continue;
                    }
                    let cap = Duration::from_millis(outcome.ms_before_expired);
                    let why = format!(
                        "flush of generation {} of txn {} waits for a live lock",
                        self.req.generation, self.req.start_ts
                    );
                    match self.backoffer.backoff_capped(BackoffKind::TxnLock, cap, why) {
                        Ok(sleep) => self.step.sleep_until(now + sleep),
                        Err(e) => self.result = Some(Err(e)),
                    }
                }
            }
        }
    }
}

impl Operation for FlushGeneration {
    type Output = ();

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        if self.req.generation == 0 {
            self.result =
                Some(Err(Error::InvalidArgument("pipelined flush generations start at 1".into())));
            return;
        }
        if self.pending.is_empty() {
            self.result = Some(Ok(()));
            return;
        }
        self.flush(now);
    }

    forward_step_inputs!(step);

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        if self.result.is_some() {
            self.step.clear();
        }
        self.result.take()
    }
}

/// `BufferBatchGet` per region (client-go `BatchGetWithTier(BufferTier)`):
/// what a pipelined transaction flushed, read from its own locks.
#[derive(Debug)]
pub struct BufferBatchGetPlan {
    start_ts: Timestamp,
    timeout: Duration,
    found: Vec<KvPair>,
}

impl KeyPlan for BufferBatchGetPlan {
    type Item = Key;
    type Output = Vec<KvPair>;
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        // Batched like a snapshot `BatchGet`, as client-go does.
        (BATCH_GET_SIZE, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        KvRequest::BufferBatchGet(Box::new(kvrpcpb::BufferBatchGetRequest {
            keys: batch.iter().map(Key::to_bytes).collect(),
            version: self.start_ts.version(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::BufferBatchGet(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if let Some(e) = r.error {
            return Err(Error::KeyError(Box::new(e)));
        }
        self.found
            .extend(r.pairs.into_iter().map(|p| KvPair { key: p.key.into(), value: p.value }));
        Ok(())
    }
    fn finish(mut self) -> Vec<KvPair> {
        self.found.sort_by(|a, b| a.key.cmp(&b.key));
        self.found
    }
}

/// Reads back what pipelined transaction `start_ts` flushed for `keys`:
/// the pairs its locks hold, sorted, a flushed delete as an empty value
/// ([`PipelinedBuffer::record_flushed_read`] takes them); keys it did not
/// flush are left out.
pub fn buffer_batch_get(
    view: &Arc<ClusterView>,
    mut keys: Vec<Key>,
    start_ts: Timestamp,
    tags: &RequestTags,
) -> KeyFanout<BufferBatchGetPlan> {
    keys.sort();
    keys.dedup();
    let plan = BufferBatchGetPlan {
        start_ts,
        timeout: view.config.read_timeout_medium,
        found: Vec::new(),
    };
    let budget = view.config.budget(view.config.backoff.batch_get);
    KeyFanout::new(view.clone(), plan, keys, view.backoffer(budget)).with_tags(tags)
}

/// Budget of one region's resolution of a pipelined transaction's locks.
pub const RESOLVE_FLUSHED_BUDGET: Duration = Duration::from_secs(20);

/// Regions resolved at once by default (client-go's pipelined
/// `ResolveLockConcurrency`, 8).
pub const RESOLVE_FLUSHED_CONCURRENCY: usize = 8;

/// A region-wide `ResolveLock` of a pipelined transaction's locks in one
/// region (client-go's pipelined resolve handler): committed at
/// `commit_ts`, or rolled back when it is zero.
#[derive(Debug)]
pub struct ResolveFlushedPlan {
    start_ts: Timestamp,
    commit_ts: Timestamp,
    timeout: Duration,
    regions: u64,
}

impl RangePlan for ResolveFlushedPlan {
    type Output = RangeTaskStat;
    fn build(&mut self, _part: &KeyRange) -> KvRequest {
        // No keys: TiKV resolves every lock of the transaction in the
        // region the request is routed to.
        KvRequest::ResolveLock(Box::new(kvrpcpb::ResolveLockRequest {
            start_version: self.start_ts.version(),
            commit_version: self.commit_ts.version(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _part: &KeyRange, response: KvResponse) -> Result<bool, Error> {
        let KvResponse::ResolveLock(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if let Some(e) = r.error {
            return Err(Error::KeyError(Box::new(e)));
        }
        self.regions += 1;
        Ok(true)
    }
    fn finish(self) -> RangeTaskStat {
        RangeTaskStat { completed_regions: self.regions, failed_regions: 0 }
    }
}

/// The range-task handler of [`resolve_flushed`]: one region per task.
#[derive(Debug)]
pub struct ResolveFlushedHandler {
    view: Arc<ClusterView>,
    start_ts: Timestamp,
    commit_ts: Timestamp,
}

impl RangeTaskHandler for ResolveFlushedHandler {
    type Task = RangeWalk<ResolveFlushedPlan>;
    fn task(&mut self, range: KeyRange) -> RangeWalk<ResolveFlushedPlan> {
        let plan = ResolveFlushedPlan {
            start_ts: self.start_ts,
            commit_ts: self.commit_ts,
            timeout: self.view.config.read_timeout_short,
            regions: 0,
        };
        let budget = self.view.backoffer(RESOLVE_FLUSHED_BUDGET);
        RangeWalk::new(self.view.clone(), plan, range, false, budget)
    }
}

/// Resolves every lock a pipelined transaction flushed between `first` and
/// `last` (inclusive; [`PipelinedBuffer::flushed_range`]), region by
/// region, `concurrency` regions at once (client-go
/// `resolveFlushedLocks`): committed at `commit_ts` once the primary is
/// committed, or rolled back with a zero `commit_ts`. A failed region
/// leaves its locks to readers, who resolve them through the primary.
pub fn resolve_flushed(
    view: &Arc<ClusterView>,
    (first, last): (Key, Key),
    start_ts: Timestamp,
    commit_ts: Timestamp,
    concurrency: usize,
) -> RangeTaskRunner<ResolveFlushedHandler> {
    let range = KeyRange::new(first, last.next_key());
    let handler = ResolveFlushedHandler { view: view.clone(), start_ts, commit_ts };
    let budget = view.backoffer(RESOLVE_FLUSHED_BUDGET);
    RangeTaskRunner::new(view.clone(), handler, range, 1, concurrency.max(1), budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> FlushThresholds {
        FlushThresholds { min_keys: 3, min_bytes: 1, force_bytes: usize::MAX }
    }

    fn started(start: FlushStart) -> Flush {
        match start {
            FlushStart::Started(f) => f,
            other => panic!("want a flush, got {other:?}"),
        }
    }

    #[test]
    fn thresholds_follow_client_go_need_flush() {
        // Too few keys, however large.
        let t = FlushThresholds { min_keys: 3, min_bytes: 1, force_bytes: usize::MAX };
        let mut b = PipelinedBuffer::new(t);
        b.put(b"a", vec![0u8; 1 << 16]).unwrap();
        b.put(b"b", "1").unwrap();
        assert!(!b.flush_due());
        b.put(b"c", "1").unwrap();
        assert!(b.flush_due());

        // Enough keys but too little memory.
        let t = FlushThresholds { min_keys: 1, min_bytes: 1 << 30, force_bytes: usize::MAX };
        let mut b = PipelinedBuffer::new(t);
        b.put(b"a", "1").unwrap();
        assert!(!b.flush_due());

        // The force threshold flushes whatever the key count.
        let t = FlushThresholds { min_keys: 1_000, min_bytes: 1, force_bytes: 1 };
        let mut b = PipelinedBuffer::new(t);
        b.put(b"a", "1").unwrap();
        assert!(b.flush_due());
        assert_eq!(FlushThresholds::default().min_keys, 10_000);
    }

    #[test]
    fn the_throttle_sleeps_by_the_moving_average_of_flush_times() {
        let ms = Duration::from_millis;
        // Nothing recorded yet: no sleep, whatever the ratio.
        let mut t = FlushThrottle::new(0.5);
        assert_eq!(t.sleep_before_flush(), Duration::ZERO);
        // The first flush sets the average: sleep / (sleep + 100) = 0.5.
        t.record_flush(ms(100));
        assert_eq!(t.sleep_before_flush(), ms(100));
        // Later ones move it by 2 / 11: 100 + (320 - 100) * 2 / 11 = 140
        // (give or take the float's last bit, which the whole-millisecond
        // sleep may truncate).
        t.record_flush(ms(320));
        let average_ms = t.average_flush_time().as_secs_f64() * 1e3;
        assert!((average_ms - 140.0).abs() < 1e-6, "{average_ms}");
        assert!((ms(139)..=ms(140)).contains(&t.sleep_before_flush()));
        // ratio 0.8: 0.8 / 0.2 × 140 = 560.
        let mut t = FlushThrottle::new(0.8);
        t.record_flush(ms(140));
        assert_eq!(t.sleep_before_flush(), ms(560));
        // A zero-time flush leaves the average unset, so the next sets it.
        let mut t = FlushThrottle::new(0.5);
        t.record_flush(Duration::ZERO);
        t.record_flush(ms(40));
        assert_eq!(t.sleep_before_flush(), ms(40));
        // Ratio 0 never sleeps, nor does an invalid one.
        for ratio in [0.0, 1.0, -0.1] {
            let mut t = FlushThrottle::new(ratio);
            t.record_flush(ms(1_000));
            assert_eq!(t.sleep_before_flush(), Duration::ZERO, "ratio {ratio}");
        }
    }

    #[test]
    fn one_generation_is_in_flight_at_a_time() {
        let mut b = PipelinedBuffer::new(small());
        for k in [b"k1", b"k2", b"k3"] {
            b.put(k, "v").unwrap();
        }
        let first = started(b.start_flush(false).unwrap());
        assert_eq!(first.generation, 1);
        assert!(b.is_flushing());
        for k in [b"k4", b"k5", b"k6"] {
            b.put(k, "v").unwrap();
        }
        // Below the force threshold a second flush is not due yet.
        assert!(!b.flush_due());
        assert_eq!(b.start_flush(false).unwrap(), FlushStart::NotDue);
        // A forced one waits for the first.
        assert_eq!(b.start_flush(true).unwrap(), FlushStart::WaitForFlushInFlight);
        b.flush_finished(Ok(())).unwrap();
        let second = started(b.start_flush(true).unwrap());
        assert_eq!(second.generation, 2);
        assert_eq!(b.flushed(), (6, 6 * 3));
        // Nothing left: nothing to flush.
        b.flush_finished(Ok(())).unwrap();
        assert_eq!(b.start_flush(true).unwrap(), FlushStart::NotDue);
    }

    #[test]
    fn reads_see_memory_then_the_flush_in_flight_then_need_tikv() {
        let mut b = PipelinedBuffer::new(small());
        b.put(b"a", "old").unwrap();
        b.delete(b"b").unwrap();
        b.put(b"c", "1").unwrap();
        let _ = started(b.start_flush(true).unwrap());
        b.put(b"a", "new").unwrap();
        assert_eq!(b.get_local(b"a"), LocalRead::Put("new".into()), "the mutable buffer first");
        assert_eq!(b.get_local(b"b"), LocalRead::Deleted, "then the generation in flight");
        b.flush_finished(Ok(())).unwrap();
        assert_eq!(b.get_local(b"c"), LocalRead::NotInMemory);
        b.record_flushed_read(Key::from("c"), Some("1".into()));
        b.record_flushed_read(Key::from("z"), None);
        assert_eq!(b.cached_flushed(b"c"), Some(Some("1".into())));
        assert_eq!(b.cached_flushed(b"z"), Some(None));
        // Any flush (even one that is not due) drops what was read back.
        assert_eq!(b.start_flush(false).unwrap(), FlushStart::NotDue);
        assert_eq!(b.cached_flushed(b"c"), None);
    }

    #[test]
    fn mutations_ranges_and_errors() {
        let mut b = PipelinedBuffer::new(small());
        b.put(b"m", "1").unwrap();
        b.insert(b"n", "2").unwrap();
        b.delete(b"o").unwrap();
        let flush = started(b.start_flush(true).unwrap());
        let ops: Vec<_> = flush.mutations.iter().map(|m| (m.key.clone(), m.op)).collect();
        use tikv_proto::kvrpcpb::Op;
        assert_eq!(
            ops,
            vec![
                (Key::from("m"), Op::Put),
                (Key::from("n"), Op::Insert),
                (Key::from("o"), Op::Del)
            ]
        );
        assert!(b.dirty());
        assert!(b.flush_finished(Err(Error::InvalidArgument("flush failed".into()))).is_err());
        assert!(!b.is_flushing());
        b.put(b"a", "1").unwrap();
        b.put(b"z", "1").unwrap();
        let _ = started(b.start_flush(true).unwrap());
        assert_eq!(b.flushed_range(), Some(&(Key::from("a"), Key::from("z"))));

        // Open staging levels are refused.
        let mut b = PipelinedBuffer::new(small());
        b.put(b"a", "1").unwrap();
        let _stage = b.current.staging();
        assert!(matches!(b.start_flush(true), Err(Error::InvalidArgument(_))));
    }

    // ------------------------------------------------------- the flush machine

    use crate::testing::{FakeCluster, Fault, drive, view};
    use bytes::Bytes;

    fn start_ts() -> Timestamp {
        Timestamp::compose(500, 0)
    }

    fn flush_op(keys: &[&str], generation: u64) -> FlushGeneration {
        let mut b = PipelinedBuffer::new(small());
        for k in keys {
            b.put(k.as_bytes(), "v").unwrap();
        }
        let mutations = started(b.start_flush(true).unwrap()).mutations;
        let req =
            FlushRequest { primary: Key::from(keys[0].to_string()), generation, ..flush_request() };
        FlushGeneration::new(view(), req, mutations)
    }

    /// Generation 1 of the test transaction, primary `a`.
    fn flush_request() -> FlushRequest {
        FlushRequest {
            start_ts: start_ts(),
            primary: Key::from("a"),
            generation: 1,
            assertion_level: kvrpcpb::AssertionLevel::Off,
            tags: RequestTags::default(),
            started_at: Instant::ZERO,
        }
    }

    fn respond(resp: KvResponse) -> Fault {
        Fault::Respond(Box::new(resp))
    }

    fn flush_ok() -> Fault {
        respond(KvResponse::Flush(Default::default()))
    }

    fn flush_errors(errors: Vec<kvrpcpb::KeyError>) -> Fault {
        respond(KvResponse::Flush(Box::new(kvrpcpb::FlushResponse {
            errors,
            ..Default::default()
        })))
    }

    fn locked(key: &str, lock_version: u64) -> kvrpcpb::KeyError {
        kvrpcpb::KeyError {
            locked: Some(kvrpcpb::LockInfo {
                primary_lock: key.to_string().into(),
                key: key.to_string().into(),
                lock_version,
                lock_ttl: 0,
                txn_size: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn flushes(c: &FakeCluster) -> Vec<kvrpcpb::FlushRequest> {
        c.received
            .iter()
            .filter_map(|r| match r {
                KvRequest::Flush(f) => Some((**f).clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_generation_is_flushed_per_region_carrying_its_generation() {
        let mut c = FakeCluster::new(&["m"]);
        c.fault("flush", flush_ok());
        c.fault("flush", flush_ok());
        let (log, result) = drive(flush_op(&["a", "b", "x"], 3), &mut c);
        result.expect("flushed");
        let sent = flushes(&c);
        assert_eq!(sent.len(), 2, "one request per region");
        for f in &sent {
            assert_eq!((f.generation, f.start_ts), (3, start_ts().version()));
            assert_eq!(f.min_commit_ts, start_ts().version() + 1);
            assert_eq!(&f.primary_key[..], b"a");
            assert_eq!(f.lock_ttl, MAX_LOCK_TTL);
        }
        let keys: Vec<Vec<Bytes>> =
            sent.iter().map(|f| f.mutations.iter().map(|m| m.key.clone()).collect()).collect();
        assert_eq!(keys, vec![vec![Bytes::from("a"), Bytes::from("b")], vec![Bytes::from("x")]]);
        insta::assert_snapshot!(log);
    }

    #[test]
    fn older_locks_are_resolved_and_only_their_keys_flushed_again() {
        let mut c = FakeCluster::new(&[]);
        let older = Timestamp::compose(400, 0).version();
        c.fault("flush", flush_errors(vec![locked("b", older)]));
        // The lock's transaction is found rolled back, and resolved.
        c.fault("check_txn_status", respond(KvResponse::CheckTxnStatus(Default::default())));
        c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
        c.fault("flush", flush_ok());
        let (log, result) = drive(flush_op(&["a", "b", "c"], 1), &mut c);
        result.expect("flushed once the lock was resolved");
        let sent = flushes(&c);
        assert_eq!(sent.len(), 2);
        let retried: Vec<_> = sent[1].mutations.iter().map(|m| m.key.clone()).collect();
        assert_eq!(retried, vec![Bytes::from("b")], "TiKV wrote the others already");
        insta::assert_snapshot!(log);
    }

    #[test]
    fn the_primary_is_signalled_written_before_the_generation_waits_for_locks() {
        // The primary's region answers cleanly; the other key meets an
        // older lock, so the generation goes on resolving it: the flag is
        // set when the primary's batch is in, before the retry is sent.
        let mut c = FakeCluster::new(&["m"]);
        let older = Timestamp::compose(400, 0).version();
        c.fault("flush", flush_ok());
        c.fault("flush", flush_errors(vec![locked("x", older)]));
        c.fault("check_txn_status", respond(KvResponse::CheckTxnStatus(Default::default())));
        c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
        c.fault("flush", flush_ok());
        let flag = Arc::new(AtomicBool::new(false));
        let op = flush_op(&["a", "x"], 1).signal_primary_written(flag.clone());
        let (log, result) = drive(op, &mut c);
        result.expect("flushed");
        assert!(flag.load(Ordering::Relaxed));
        let first_resolve = log.lines().position(|l| l.contains("kv_check_txn_status"));
        assert!(first_resolve.is_some(), "{log}");

        // A batch holding the primary with a key error is not written.
        let mut c = FakeCluster::new(&[]);
        let exists = kvrpcpb::KeyError {
            already_exist: Some(kvrpcpb::AlreadyExist { key: "b".into() }),
            ..Default::default()
        };
        c.fault("flush", flush_errors(vec![exists]));
        let flag = Arc::new(AtomicBool::new(false));
        let op = flush_op(&["a", "b"], 1).signal_primary_written(flag.clone());
        let (_, result) = drive(op, &mut c);
        assert!(result.is_err());
        assert!(!flag.load(Ordering::Relaxed), "no heartbeats for a primary TiKV refused");

        // A generation without the primary never sets it.
        let mut c = FakeCluster::new(&[]);
        c.fault("flush", flush_ok());
        let flag = Arc::new(AtomicBool::new(false));
        let mut op = flush_op(&["b", "c"], 2);
        op.req.primary = Key::from("a");
        let (_, result) = drive(op.signal_primary_written(flag.clone()), &mut c);
        result.expect("flushed");
        assert!(!flag.load(Ordering::Relaxed));
    }

    #[test]
    fn each_flush_round_counts_the_transactions_age_in_its_lock_ttl() {
        // The first round at the start; the retry after resolving the
        // lock met, a few milliseconds later, lives that much longer.
        let mut c = FakeCluster::new(&[]);
        let older = Timestamp::compose(400, 0).version();
        c.fault("flush", flush_errors(vec![locked("b", older)]));
        c.fault("check_txn_status", respond(KvResponse::CheckTxnStatus(Default::default())));
        c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
        c.fault("flush", flush_ok());
        let (log, result) = drive(flush_op(&["a", "b"], 1), &mut c);
        result.expect("flushed");
        let ttls: Vec<u64> = flushes(&c).iter().map(|f| f.lock_ttl).collect();
        let [first, retry] = ttls[..] else { panic!("two rounds: {ttls:?}\n{log}") };
        assert_eq!(first, MAX_LOCK_TTL, "its round began at the start: {log}");
        // The retry round began once the resolve answered, at 6 ms.
        assert_eq!(retry, MAX_LOCK_TTL + 6, "{log}");

        // A generation flushed 25 s after the start is not born expired.
        let started = Instant::ZERO;
        let later = started + Duration::from_secs(25);
        assert_eq!(flush_lock_ttl(started, later), MAX_LOCK_TTL + 25_000);
        assert_eq!(flush_lock_ttl(later, started), MAX_LOCK_TTL, "a clock never runs back");
    }

    #[test]
    fn the_keep_alive_waits_for_the_primary_to_be_written() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut keep_alive =
            PipelinedKeepAlive::new(view(), start_ts(), Key::from("a"), RequestTags::default())
                .after_primary_written(flag.clone());
        let t0 = Instant::ZERO;
        keep_alive.start(t0);
        let first = keep_alive.poll_timeout().expect("a beat is scheduled");
        assert_eq!(first, t0 + crate::txn::commit::HEARTBEAT_INTERVAL);
        keep_alive.on_timeout(first);
        assert!(keep_alive.poll_rpc().is_none(), "no beat before the primary is written");
        let again = keep_alive.poll_timeout().expect("it looks again");
        assert_eq!(again, first + PRIMARY_WRITTEN_POLL);
        flag.store(true, Ordering::Relaxed);
        keep_alive.on_timeout(again);
        let rpc = keep_alive.poll_rpc().expect("the beat's timestamp");
        assert_eq!(rpc.target, crate::rpc::Target::Oracle, "{rpc:?}");
    }

    #[test]
    fn newer_locks_conflicts_and_existing_keys_fail_the_flush() {
        let newer = Timestamp::compose(600, 0).version();
        let mut c = FakeCluster::new(&[]);
        c.fault("flush", flush_errors(vec![locked("b", newer)]));
        let (_, result) = drive(flush_op(&["a", "b"], 1), &mut c);
        assert!(matches!(result, Err(Error::WriteConflict { .. })), "{result:?}");

        let mut c = FakeCluster::new(&[]);
        let exists = kvrpcpb::KeyError {
            already_exist: Some(kvrpcpb::AlreadyExist { key: "b".into() }),
            ..Default::default()
        };
        c.fault("flush", flush_errors(vec![exists]));
        let (_, result) = drive(flush_op(&["a", "b"], 1), &mut c);
        assert!(matches!(result, Err(Error::KeyExists(k)) if k == Key::from("b")));

        // Generation 0 is refused before anything is sent.
        let mut c = FakeCluster::new(&[]);
        let (_, result) = drive(flush_op(&["a"], 0), &mut c);
        assert!(matches!(result, Err(Error::InvalidArgument(_))));
        assert!(c.received.is_empty());
    }

    #[test]
    fn a_bounded_flush_sends_a_batch_worth_at_a_time() {
        let mut c = FakeCluster::new(&[]);
        for _ in 0..3 {
            c.fault("flush", flush_ok());
        }
        // Batches are sized by their keys (client-go `keySize`): large
        // values do not split them, long keys do.
        let long = |c: u8| vec![c; 10 << 10];
        let mut b = PipelinedBuffer::new(small());
        for c in [b'a', b'b', b'c'] {
            b.put(&long(c), vec![b'v'; 10 << 10]).unwrap();
        }
        let mutations = started(b.start_flush(true).unwrap()).mutations;
        let req = FlushRequest { primary: Key::from(long(b'a')), ..flush_request() };
        let op = FlushGeneration::new(view(), req, mutations).with_concurrency(1);
        let (log, result) = drive(op, &mut c);
        result.expect("flushed");
        let keys: Vec<Vec<Bytes>> = flushes(&c)
            .iter()
            .map(|f| f.mutations.iter().map(|m| m.key.clone()).collect())
            .collect();
        // 10 KiB keys: a second would pass the 16 KiB of one batch.
        let one = |c: u8| vec![Bytes::from(long(c))];
        assert_eq!(keys, vec![one(b'a'), one(b'b'), one(b'c')]);
        // One in flight at a time: each sent after the previous answer.
        let events: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("kv_flush"))
            .map(|l| if l.contains(" send ") { "send" } else { "recv" })
            .collect();
        assert_eq!(events, ["send", "recv", "send", "recv", "send", "recv"], "{log}");

        // Short keys with the same 10 KiB values: one batch.
        let mut c = FakeCluster::new(&[]);
        c.fault("flush", flush_ok());
        let mut b = PipelinedBuffer::new(small());
        for k in ["a", "b", "c"] {
            b.put(k.as_bytes(), vec![b'v'; 10 << 10]).unwrap();
        }
        let mutations = started(b.start_flush(true).unwrap()).mutations;
        let req = FlushRequest { primary: Key::from("a"), ..flush_request() };
        let op = FlushGeneration::new(view(), req, mutations).with_concurrency(1);
        drive(op, &mut c).1.expect("flushed");
        assert_eq!(flushes(&c).len(), 1);
    }

    #[test]
    fn the_flushed_range_is_resolved_region_by_region() {
        let mut c = FakeCluster::new(&["g", "m", "t"]);
        for _ in 0..3 {
            c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
        }
        let commit_ts = Timestamp::compose(600, 0);
        let range = (Key::from("b"), Key::from("p"));
        let op = resolve_flushed(&view(), range, start_ts(), commit_ts, 2);
        let (_, result) = drive(op, &mut c);
        assert_eq!(result.expect("resolved").completed_regions, 3, "b..=p spans three regions");
        let resolves: Vec<_> = c
            .received
            .iter()
            .filter_map(|r| match r {
                KvRequest::ResolveLock(r) => Some((**r).clone()),
                _ => None,
            })
            .collect();
        assert_eq!(resolves.len(), 3);
        for r in &resolves {
            assert_eq!(
                (r.start_version, r.commit_version),
                (start_ts().version(), commit_ts.version())
            );
            assert!(r.keys.is_empty(), "region-wide");
        }
        let mut regions: Vec<_> =
            resolves.iter().map(|r| r.context.as_ref().map_or(0, |c| c.region_id)).collect();
        regions.dedup();
        assert_eq!(regions.len(), 3, "one per region");

        // A region's failure fails the run.
        let mut c = FakeCluster::new(&[]);
        let failed = kvrpcpb::ResolveLockResponse {
            error: Some(kvrpcpb::KeyError { abort: "boom".into(), ..Default::default() }),
            ..Default::default()
        };
        c.fault("resolve_lock", respond(KvResponse::ResolveLock(Box::new(failed))));
        let op = resolve_flushed(
            &view(),
            (Key::from("a"), Key::from("a")),
            start_ts(),
            Timestamp::ZERO,
            1,
        );
        let (_, result) = drive(op, &mut c);
        assert!(matches!(result, Err(Error::KeyError(_))), "{result:?}");
    }

    #[test]
    fn flushed_values_are_read_back_per_region() {
        let mut c = FakeCluster::new(&["m"]);
        let answer = |pairs: &[(&str, &str)]| {
            respond(KvResponse::BufferBatchGet(Box::new(kvrpcpb::BufferBatchGetResponse {
                pairs: pairs
                    .iter()
                    .map(|(k, v)| kvrpcpb::KvPair {
                        key: k.to_string().into(),
                        value: v.to_string().into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })))
        };
        c.fault("buffer_batch_get", answer(&[("x", "")]));
        c.fault("buffer_batch_get", answer(&[("a", "1")]));
        let keys = vec![Key::from("x"), Key::from("a"), Key::from("b"), Key::from("a")];
        let op = buffer_batch_get(&view(), keys, start_ts(), &RequestTags::default());
        let (_, result) = drive(op, &mut c);
        let pairs = result.expect("read back");
        assert_eq!(pairs, vec![KvPair::new("a", "1"), KvPair::new("x", "")]);
        let asked: usize = c
            .received
            .iter()
            .map(|r| match r {
                KvRequest::BufferBatchGet(b) => {
                    assert_eq!(b.version, start_ts().version());
                    b.keys.len()
                }
                _ => 0,
            })
            .sum();
        assert_eq!(asked, 3, "each key once");
    }
}
