//! Snapshot reads at a timestamp (client-go `txnsnapshot.KVSnapshot`), with
//! lock handling: a read that meets a lock resolves it for reading (lite),
//! then retries, skipping transactions found rolled back or committed after
//! the read (`resolved_locks`) and reading through those committed before it
//! (`committed_locks`); a lock of a live transaction is waited out with
//! `BoTxnLockFast`, each sleep capped at the lock's remaining TTL.

use std::sync::Arc;

use tikv_proto::kvrpcpb;

use crate::backoff::{BackoffKind, Backoffer};
use crate::error::Error;
use crate::key::{Key, KeyRange, KvPair, ScanSpec, Value};
use crate::lock::{Lock, ResolveLocks, ResolveOptions, ResolveOutcome};
use crate::op::{Operation, StepEvent, StepSlot};
use crate::pd::Timestamp;
use crate::route::fanout::{KeyFanout, KeyPlan, Point, PointPlan};
use crate::route::replica::ReplicaRead;
use crate::route::walk::{RangePlan, RangeWalk};
use crate::rpc::{KvRequest, KvResponse, RequestTags};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// Keys per `BatchGet` request (client-go `batchGetSize`... 5120).
pub const BATCH_GET_SIZE: usize = 5120;

/// Read options of a snapshot (client-go `KVSnapshot` setters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOptions {
    /// `Context.isolation_level` (SI by default; RC reads the latest
    /// committed data and ignores locks).
    pub isolation_level: kvrpcpb::IsolationLevel,
    /// `Context.not_fill_cache`: do not pollute TiKV's block cache.
    pub not_fill_cache: bool,
    /// Priority, request source and resource group of every request,
    /// lock resolution included.
    pub tags: RequestTags,
    /// Which replica serves the reads (client-go `KVSnapshot.SetReplicaRead`
    /// and `SetMatchStoreLabels`). TiKV serves a replica read after a read
    /// index on the leader, so it sees every commit before the read began;
    /// lock resolution always goes to the leaders.
    pub replica_read: ReplicaRead,
}

impl ReadOptions {
    /// Reads at `level` (`Si` by default; `Rc` reads the latest committed
    /// data and ignores locks).
    pub fn with_isolation_level(mut self, level: kvrpcpb::IsolationLevel) -> ReadOptions {
        self.isolation_level = level;
        self
    }

    /// Asks TiKV not to fill its block cache with what the reads touch
    /// (client-go `KVSnapshot.SetNotFillCache`).
    pub fn with_not_fill_cache(mut self, not_fill_cache: bool) -> ReadOptions {
        self.not_fill_cache = not_fill_cache;
        self
    }

    /// Stamps `tags` into every request of the reads.
    pub fn with_tags(mut self, tags: RequestTags) -> ReadOptions {
        self.tags = tags;
        self
    }

    /// Serves the reads from the replicas `read` chooses.
    pub fn with_replica_read(mut self, read: ReplicaRead) -> ReadOptions {
        self.replica_read = read;
        self
    }
}

/// What a snapshot read has learned about locks so far: transactions it may
/// skip and ones it may read through. Kept across retries of one read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LockSets {
    /// Start ts versions, as `Context` carries them.
    resolved: Vec<u64>,
    committed: Vec<u64>,
}

impl LockSets {
    fn absorb(&mut self, outcome: &ResolveOutcome) {
        for t in &outcome.ignore_locks {
            if !self.resolved.contains(&t.version()) {
                self.resolved.push(t.version());
            }
        }
        for t in &outcome.access_locks {
            if !self.committed.contains(&t.version()) {
                self.committed.push(t.version());
            }
        }
    }

    fn context(&self, opts: &ReadOptions) -> kvrpcpb::Context {
        let mut ctx = kvrpcpb::Context {
            resolved_locks: self.resolved.clone(),
            committed_locks: self.committed.clone(),
            isolation_level: opts.isolation_level as i32,
            not_fill_cache: opts.not_fill_cache,
            ..Default::default()
        };
        opts.tags.stamp(&mut ctx);
        ctx
    }
}

/// A key error to the caller, except locks, which the read resolves.
fn split_key_error(e: kvrpcpb::KeyError) -> Result<Vec<Lock>, Error> {
    match &e.locked {
        Some(info) => Ok(Lock::from_info(info)),
        None => Err(Error::KeyError(Box::new(e))),
    }
}

// ---------------------------------------------------------------- plans

/// `Get` of one key.
#[derive(Debug)]
struct GetPlan {
    ts: Timestamp,
    opts: ReadOptions,
    locks: LockSets,
    value: Option<Value>,
    met: Vec<Lock>,
}

impl PointPlan for GetPlan {
    type Output = (Option<Value>, Vec<Lock>);
    fn build(&mut self, key: &Key) -> KvRequest {
        KvRequest::Get(Box::new(kvrpcpb::GetRequest {
            context: Some(self.locks.context(&self.opts)),
            key: key.to_bytes(),
            version: self.ts.version(),
            ..Default::default()
        }))
    }
    fn merge(&mut self, response: KvResponse) -> Result<(), Error> {
        let KvResponse::Get(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if let Some(e) = r.error {
            self.met = split_key_error(e)?;
            return Ok(());
        }
        self.value = if r.not_found { None } else { Some(r.value) };
        Ok(())
    }
    fn finish(self) -> (Option<Value>, Vec<Lock>) {
        (self.value, self.met)
    }
}

/// `BatchGet` of many keys; locked keys are collected for a retry.
#[derive(Debug)]
struct BatchGetPlan {
    ts: Timestamp,
    opts: ReadOptions,
    locks: LockSets,
    timeout: Duration,
    found: Vec<KvPair>,
    met: Vec<Lock>,
    retry: Vec<Key>,
}

impl KeyPlan for BatchGetPlan {
    type Item = Key;
    type Output = BatchGetPlan;
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (BATCH_GET_SIZE, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        KvRequest::BatchGet(Box::new(kvrpcpb::BatchGetRequest {
            context: Some(self.locks.context(&self.opts)),
            keys: batch.iter().map(Key::to_bytes).collect(),
            version: self.ts.version(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::BatchGet(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if let Some(e) = r.error {
            // A response-level lock: the whole batch is retried after it is
            // resolved (client-go does the same).
            self.met.extend(split_key_error(e)?);
            self.retry.extend(batch);
            return Ok(());
        }
        for pair in r.pairs {
            match pair.error {
                Some(e) => {
                    self.met.extend(split_key_error(e)?);
                    self.retry.push(pair.key.into());
                }
                None => self.found.push(KvPair { key: pair.key.into(), value: pair.value }),
            }
        }
        Ok(())
    }
    fn finish(self) -> BatchGetPlan {
        self
    }
}

// ---------------------------------------------------------------- machines

/// What a read machine's step produced: the read's output, or the
/// resolution of the locks it met.
enum ReadEvent<T> {
    Read(Result<T, Error>),
    Resolved(Result<ResolveOutcome, Error>),
}

/// What a read machine does next, as the shared loop decided.
enum ReadNext<T> {
    /// Take in a finished read's output.
    Merge(T),
    /// Read again (the locks met are resolved, or the wait for a live one
    /// is over).
    ReadAgain,
    /// The read failed.
    Fail(Error),
}

/// The shared retry loop of a point, batch or range read: read; if locks
/// were met, resolve them; back off if some transaction is still alive;
/// read again with the learned lock sets. It holds the machine's one step.
struct ReadLoop<T> {
    view: Arc<ClusterView>,
    ts: Timestamp,
    opts: ReadOptions,
    locks: LockSets,
    backoffer: Backoffer,
    started: bool,
    step: StepSlot<ReadEvent<T>>,
}

impl<T: Send + 'static> ReadLoop<T> {
    fn new(view: Arc<ClusterView>, ts: Timestamp, opts: ReadOptions) -> ReadLoop<T> {
        let budget = view.config.budget(view.config.backoff.get);
        let backoffer = view.backoffer(budget);
        ReadLoop {
            view,
            ts,
            opts,
            locks: LockSets::default(),
            backoffer,
            started: false,
            step: StepSlot::new(),
        }
    }

    /// True the first time only: a machine starts once.
    fn begin(&mut self) -> bool {
        !std::mem::replace(&mut self.started, true)
    }

    /// Runs `op` as the read step.
    fn start_read<O>(&mut self, op: O, now: Instant)
    where
        O: Operation<Output = T> + Send + 'static,
    {
        self.step.start(op, ReadEvent::Read, now);
    }

    /// Starts resolving the locks a read met.
    fn start_resolve(&mut self, met: Vec<Lock>, now: Instant) {
        // A stale read that met a lock reads from the leader from now on
        // (client-go `DisableStaleReadMeetLock`).
        if self.opts.replica_read.stale_read {
            self.opts.replica_read = ReplicaRead::leader();
        }
        let opts = ResolveOptions {
            caller_start_ts: self.ts,
            for_read: true,
            lite: true,
            tags: self.opts.tags.clone(),
        };
        let resolve = ResolveLocks::new(self.view.clone(), met, opts, self.backoffer.fork());
        self.step.start(resolve, ReadEvent::Resolved, now);
    }

    /// The next decision once a step is over (`None` while it runs or
    /// sleeps). A finished step's sleeps count against the read's budget
    /// (client-go passes one `Backoffer` through a read's retries and
    /// resolutions).
    fn poll_next(&mut self, now: Instant) -> Option<ReadNext<T>> {
        loop {
            let next = match self.step.poll_event(Some(&mut self.backoffer))? {
                StepEvent::Done(ReadEvent::Read(Ok(out))) => ReadNext::Merge(out),
                StepEvent::Done(ReadEvent::Resolved(Ok(outcome))) => {
                    match self.after_resolve(&outcome, now) {
                        Ok(None) => ReadNext::ReadAgain,
                        Ok(Some(until)) => {
                            self.step.sleep_until(until);
                            continue;
                        }
                        Err(e) => ReadNext::Fail(e),
                    }
                }
                StepEvent::Done(ReadEvent::Read(Err(e)) | ReadEvent::Resolved(Err(e))) => {
                    ReadNext::Fail(e)
                }
                StepEvent::Woke => ReadNext::ReadAgain,
            };
            return Some(next);
        }
    }

    /// After resolving: sleep if a transaction is alive, else retry now.
    fn after_resolve(
        &mut self,
        outcome: &ResolveOutcome,
        now: Instant,
    ) -> Result<Option<Instant>, Error> {
        self.locks.absorb(outcome);
        if outcome.ms_before_expired == 0 {
            return Ok(None);
        }
        let cap = Duration::from_millis(outcome.ms_before_expired);
        let sleep = self.backoffer.backoff_capped(
            BackoffKind::TxnLockFast,
            cap,
            format!("read at {} waits for a live lock", self.ts),
        )?;
        Ok(Some(now + sleep))
    }
}

/// The four inputs of a read machine go to its loop's step; the machine's
/// `check` then makes its decisions.
macro_rules! read_machine_inputs {
    () => {
        crate::op::forward_step_inputs!(lp.step);

        fn backoff_spent(&self) -> Option<&Backoffer> {
            Some(&self.lp.backoffer)
        }
    };
}

/// A point read of one key at a snapshot timestamp.
pub struct SnapshotGet {
    lp: ReadLoop<(Option<Value>, Vec<Lock>)>,
    key: Key,
    result: Option<Result<Option<Value>, Error>>,
}

impl std::fmt::Debug for SnapshotGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotGet").field("key", &self.key).field("ts", &self.lp.ts).finish()
    }
}

impl SnapshotGet {
    /// Reads `key` as of `ts`.
    pub fn new(view: Arc<ClusterView>, key: Key, ts: Timestamp, opts: ReadOptions) -> SnapshotGet {
        SnapshotGet { lp: ReadLoop::new(view, ts, opts), key, result: None }
    }

    fn read(&mut self, now: Instant) {
        let plan = GetPlan {
            ts: self.lp.ts,
            opts: self.lp.opts.clone(),
            locks: self.lp.locks.clone(),
            value: None,
            met: Vec::new(),
        };
        let timeout = self.lp.view.config.read_timeout_short;
        let op =
            Point::fanout(&self.lp.view, plan, self.key.clone(), timeout, self.lp.backoffer.fork())
                .with_replica_read(&self.lp.opts.replica_read);
        self.lp.start_read(op, now);
    }

    fn finish(&mut self, result: Result<Option<Value>, Error>) {
        self.lp.step.clear();
        self.result = Some(result);
    }

    fn check(&mut self, now: Instant) {
        while let Some(next) = self.lp.poll_next(now) {
            match next {
                ReadNext::Merge((value, met)) if met.is_empty() => self.finish(Ok(value)),
                ReadNext::Merge((_, met)) => self.lp.start_resolve(met, now),
                ReadNext::ReadAgain => self.read(now),
                ReadNext::Fail(e) => self.finish(Err(e)),
            }
        }
    }
}

impl Operation for SnapshotGet {
    type Output = Option<Value>;

    fn start(&mut self, now: Instant) {
        if self.lp.begin() {
            self.read(now);
            self.check(now);
        }
    }

    read_machine_inputs!();

    fn poll_result(&mut self) -> Option<Result<Option<Value>, Error>> {
        self.result.take()
    }
}

/// A batch read at a snapshot timestamp: the pairs that exist, sorted by key.
/// Locked keys are resolved and read again; keys already read are not.
pub struct SnapshotBatchGet {
    lp: ReadLoop<BatchGetPlan>,
    pending: Vec<Key>,
    found: Vec<KvPair>,
    result: Option<Result<Vec<KvPair>, Error>>,
}

impl std::fmt::Debug for SnapshotBatchGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBatchGet")
            .field("pending", &self.pending.len())
            .field("ts", &self.lp.ts)
            .finish()
    }
}

impl SnapshotBatchGet {
    /// Reads `keys` as of `ts`.
    pub fn new(
        view: Arc<ClusterView>,
        mut keys: Vec<Key>,
        ts: Timestamp,
        opts: ReadOptions,
    ) -> Self {
        keys.sort();
        keys.dedup();
        let mut lp = ReadLoop::new(view, ts, opts);
        lp.backoffer = {
            let budget = lp.view.config.budget(lp.view.config.backoff.batch_get);
            lp.view.backoffer(budget)
        };
        SnapshotBatchGet { lp, pending: keys, found: Vec::new(), result: None }
    }

    fn read(&mut self, now: Instant) {
        if self.pending.is_empty() {
            let mut found = std::mem::take(&mut self.found);
            found.sort_by(|a, b| a.key.cmp(&b.key));
            self.finish(Ok(found));
            return;
        }
        let plan = BatchGetPlan {
            ts: self.lp.ts,
            opts: self.lp.opts.clone(),
            locks: self.lp.locks.clone(),
            timeout: self.lp.view.config.read_timeout_medium,
            found: Vec::new(),
            met: Vec::new(),
            retry: Vec::new(),
        };
        let keys = std::mem::take(&mut self.pending);
        let op = KeyFanout::new(self.lp.view.clone(), plan, keys, self.lp.backoffer.fork())
            .with_replica_read(&self.lp.opts.replica_read);
        self.lp.start_read(op, now);
    }

    fn finish(&mut self, result: Result<Vec<KvPair>, Error>) {
        self.lp.step.clear();
        self.result = Some(result);
    }

    fn check(&mut self, now: Instant) {
        while let Some(next) = self.lp.poll_next(now) {
            match next {
                ReadNext::Merge(plan) => {
                    self.found.extend(plan.found);
                    self.pending = plan.retry;
                    if plan.met.is_empty() {
                        self.read(now);
                    } else {
                        self.lp.start_resolve(plan.met, now);
                    }
                }
                ReadNext::ReadAgain => self.read(now),
                ReadNext::Fail(e) => self.finish(Err(e)),
            }
        }
    }
}

impl Operation for SnapshotBatchGet {
    type Output = Vec<KvPair>;

    fn start(&mut self, now: Instant) {
        if self.lp.begin() {
            self.read(now);
            self.check(now);
        }
    }

    read_machine_inputs!();

    fn poll_result(&mut self) -> Option<Result<Vec<KvPair>, Error>> {
        self.result.take()
    }
}

// ---------------------------------------------------------------- scans

/// One pass of a scan over regions: collects pairs in order and stops at
/// the first lock it meets, so the pairs before it are final and the scan
/// can resume at the locked key once the lock is resolved.
#[derive(Debug)]
struct ScanPlan {
    ts: Timestamp,
    opts: ReadOptions,
    locks: LockSets,
    timeout: Duration,
    key_only: bool,
    reverse: bool,
    limit: usize,
    pairs: Vec<KvPair>,
    met: Vec<Lock>,
    /// The key the next pass starts from (inclusive), when stopped at a lock.
    resume_at: Option<Key>,
}

impl RangePlan for ScanPlan {
    type Output = ScanPlan;
    fn build(&mut self, part: &KeyRange) -> KvRequest {
        // As for raw scans, TiKV's reverse scan takes the (exclusive) upper
        // bound in `start_key` and the lower bound in `end_key`.
        let (start_key, end_key) = if self.reverse {
            (part.end.to_bytes(), part.start.to_bytes())
        } else {
            (part.start.to_bytes(), part.end.to_bytes())
        };
        KvRequest::Scan(Box::new(kvrpcpb::ScanRequest {
            context: Some(self.locks.context(&self.opts)),
            start_key,
            end_key,
            limit: u32::try_from(self.limit - self.pairs.len()).unwrap_or(u32::MAX),
            version: self.ts.version(),
            key_only: self.key_only,
            reverse: self.reverse,
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, part: &KeyRange, response: KvResponse) -> Result<bool, Error> {
        let KvResponse::Scan(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if let Some(e) = r.error {
            // A lock for the whole request: resume at the part's first key.
            self.met = split_key_error(e)?;
            self.resume_at = Some(if self.reverse { part.end.clone() } else { part.start.clone() });
            return Ok(false);
        }
        for pair in r.pairs {
            if let Some(e) = pair.error {
                self.met = split_key_error(e)?;
                self.resume_at = Some(pair.key.into());
                return Ok(false);
            }
            if self.pairs.len() >= self.limit {
                break;
            }
            let value = if self.key_only { bytes::Bytes::new() } else { pair.value };
            self.pairs.push(KvPair { key: pair.key.into(), value });
        }
        Ok(self.pairs.len() < self.limit)
    }
    fn finish(self) -> ScanPlan {
        self
    }
}

/// What a paged scan still has to read after one page of a [`SnapshotScan`]
/// over `range` that asked for `page_size` pairs and got `page`; `None`
/// when the scan is over. client-go's `Scanner.getData`: a short page means
/// the range holds no more pairs; otherwise the next page starts just after
/// the page's last key (forward) or ends at it (reverse, the end being
/// exclusive).
pub fn range_after_page(
    range: &KeyRange,
    page: &[KvPair],
    page_size: u32,
    reverse: bool,
) -> Option<KeyRange> {
    let last = page.last()?;
    if page.len() < page_size as usize {
        return None;
    }
    let mut rest = range.clone();
    if reverse {
        rest.end = last.key.clone();
    } else {
        rest.start = last.key.next_key();
    }
    (!rest.is_empty()).then_some(rest)
}

/// A snapshot scan of up to `limit` pairs, forward or in reverse (client-go
/// `KVSnapshot.Iter` / `IterReverse`, collected). A pass walks the regions
/// until it meets a lock; the lock is resolved for reading and the next
/// pass resumes at the locked key with the learned lock sets.
pub struct SnapshotScan {
    lp: ReadLoop<ScanPlan>,
    range: KeyRange,
    limit: usize,
    key_only: bool,
    reverse: bool,
    pairs: Vec<KvPair>,
    result: Option<Result<Vec<KvPair>, Error>>,
}

impl std::fmt::Debug for SnapshotScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotScan")
            .field("range", &self.range)
            .field("reverse", &self.reverse)
            .field("found", &self.pairs.len())
            .finish()
    }
}

impl SnapshotScan {
    /// Scans `range` as of `ts` as `spec` says.
    pub fn new(
        view: Arc<ClusterView>,
        range: KeyRange,
        spec: ScanSpec,
        ts: Timestamp,
        opts: ReadOptions,
    ) -> SnapshotScan {
        let ScanSpec { limit, reverse, key_only } = spec;
        let mut lp = ReadLoop::new(view, ts, opts);
        lp.backoffer = {
            let budget = lp.view.config.budget(lp.view.config.backoff.scan);
            lp.view.backoffer(budget)
        };
        SnapshotScan {
            lp,
            range,
            limit: limit as usize,
            key_only,
            reverse,
            pairs: Vec::new(),
            result: None,
        }
    }

    fn read(&mut self, now: Instant) {
        if self.pairs.len() >= self.limit || self.range.is_empty() {
            let pairs = std::mem::take(&mut self.pairs);
            self.finish(Ok(pairs));
            return;
        }
        let plan = ScanPlan {
            ts: self.lp.ts,
            opts: self.lp.opts.clone(),
            locks: self.lp.locks.clone(),
            timeout: self.lp.view.config.read_timeout_medium,
            key_only: self.key_only,
            reverse: self.reverse,
            limit: self.limit - self.pairs.len(),
            pairs: Vec::new(),
            met: Vec::new(),
            resume_at: None,
        };
        let walk = RangeWalk::new(
            self.lp.view.clone(),
            plan,
            self.range.clone(),
            self.reverse,
            self.lp.backoffer.fork(),
        )
        .with_replica_read(&self.lp.opts.replica_read);
        self.lp.start_read(walk, now);
    }

    fn finish(&mut self, result: Result<Vec<KvPair>, Error>) {
        self.lp.step.clear();
        self.result = Some(result);
    }

    fn check(&mut self, now: Instant) {
        while let Some(next) = self.lp.poll_next(now) {
            match next {
                ReadNext::Merge(pass) => {
                    self.pairs.extend(pass.pairs);
                    match pass.resume_at {
                        None => {
                            let pairs = std::mem::take(&mut self.pairs);
                            self.finish(Ok(pairs));
                        }
                        Some(key) => {
                            // Continue at the locked key: forward, from it
                            // (inclusive); in reverse, up to and including it.
                            if self.reverse {
                                self.range.end = key.next_key();
                            } else {
                                self.range.start = key;
                            }
                            self.lp.start_resolve(pass.met, now);
                        }
                    }
                }
                ReadNext::ReadAgain => self.read(now),
                ReadNext::Fail(e) => self.finish(Err(e)),
            }
        }
    }
}

impl Operation for SnapshotScan {
    type Output = Vec<KvPair>;

    fn start(&mut self, now: Instant) {
        if self.lp.begin() {
            self.read(now);
            self.check(now);
        }
    }

    read_machine_inputs!();

    fn poll_result(&mut self) -> Option<Result<Vec<KvPair>, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests;
