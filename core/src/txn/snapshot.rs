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
use crate::key::KeyRange;
use crate::key::{Key, KvPair, Value};
use crate::lock::{Lock, ResolveLocks, ResolveOptions, ResolveOutcome};
use crate::op::{IdMap, Operation};
use crate::route::fanout::{KeyFanout, KeyPlan, Point, PointPlan};
use crate::route::walk::{RangePlan, RangeWalk};
use crate::rpc::{KvRequest, KvResponse, RequestTags, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// Keys per `BatchGet` request (client-go `batchGetSize`... 5120).
pub const BATCH_GET_SIZE: usize = 5120;

/// Read options of a snapshot (client-go `KVSnapshot` setters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// `Context.isolation_level` (SI by default; RC reads the latest
    /// committed data and ignores locks).
    pub isolation_level: kvrpcpb::IsolationLevel,
    /// `Context.not_fill_cache`: do not pollute TiKV's block cache.
    pub not_fill_cache: bool,
    /// Priority, request source and resource group of every request,
    /// lock resolution included.
    pub tags: RequestTags,
}

/// What a snapshot read has learned about locks so far: transactions it may
/// skip and ones it may read through. Kept across retries of one read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LockSets {
    resolved: Vec<u64>,
    committed: Vec<u64>,
}

impl LockSets {
    fn absorb(&mut self, outcome: &ResolveOutcome) {
        for t in &outcome.ignore_locks {
            if !self.resolved.contains(t) {
                self.resolved.push(*t);
            }
        }
        for t in &outcome.access_locks {
            if !self.committed.contains(t) {
                self.committed.push(*t);
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
    ts: u64,
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
            version: self.ts,
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
    ts: u64,
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
            version: self.ts,
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

enum Step<F: KeyPlan> {
    Read(Box<KeyFanout<F>>),
    Resolve(Box<ResolveLocks>),
    Sleep(Instant),
    Done,
}

/// The shared retry loop of a point or batch read: read; if locks were met,
/// resolve them; back off if some transaction is still alive; read again
/// with the learned lock sets.
struct ReadLoop {
    view: Arc<ClusterView>,
    ts: u64,
    opts: ReadOptions,
    locks: LockSets,
    backoffer: Backoffer,
    epoch: u64,
    ids: IdMap<u64>,
}

impl ReadLoop {
    fn new(view: Arc<ClusterView>, ts: u64, opts: ReadOptions) -> ReadLoop {
        let budget = view.config.budget(view.config.backoff.get);
        let backoffer = view.backoffer(budget);
        ReadLoop {
            view,
            ts,
            opts,
            locks: LockSets::default(),
            backoffer,
            epoch: 0,
            ids: IdMap::new(),
        }
    }

    fn resolve(&mut self, met: Vec<Lock>) -> ResolveLocks {
        let opts = ResolveOptions {
            caller_start_ts: self.ts,
            for_read: true,
            lite: true,
            tags: self.opts.tags.clone(),
        };
        ResolveLocks::new(self.view.clone(), met, opts, self.backoffer.fork())
    }

    /// A finished step's sleeps count against the read's budget (client-go
    /// passes one `Backoffer` through a read's retries and resolutions).
    fn fold<T>(&mut self, outcome: Option<T>, step: Option<&Backoffer>) -> Option<T> {
        if let (Some(_), Some(bo)) = (&outcome, step) {
            self.backoffer.merge_from(bo);
        }
        outcome
    }

    /// Starts resolving the locks a read met; the machine's next step.
    fn start_resolve<F: KeyPlan>(&mut self, met: Vec<Lock>, now: Instant) -> Step<F> {
        let mut resolve = Box::new(self.resolve(met));
        self.epoch += 1;
        resolve.start(now);
        Step::Resolve(resolve)
    }

    /// A resolve step's progress: `None` while it runs; then the instant to
    /// read again at (`None`: now), or the read's error.
    fn poll_resolve(
        &mut self,
        op: &mut ResolveLocks,
        now: Instant,
    ) -> Option<Result<Option<Instant>, Error>> {
        let outcome = self.fold(op.poll_result(), Some(op.backoffer()))?;
        Some(outcome.and_then(|outcome| self.after_resolve(&outcome, now)))
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

macro_rules! read_machine_plumbing {
    () => {
        fn poll_rpc(&mut self) -> Option<Rpc> {
            let rpc = match &mut self.step {
                Step::Read(op) => op.poll_rpc(),
                Step::Resolve(op) => op.poll_rpc(),
                _ => None,
            }?;
            Some(self.lp.ids.wrap(self.lp.epoch, rpc))
        }

        fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
            let Some((epoch, id)) = self.lp.ids.take(id) else {
                return;
            };
            if epoch != self.lp.epoch {
                return;
            }
            match &mut self.step {
                Step::Read(op) => op.on_response(id, response, now),
                Step::Resolve(op) => op.on_response(id, response, now),
                _ => return,
            }
            self.check(now);
        }

        fn on_timeout(&mut self, now: Instant) {
            match &mut self.step {
                Step::Read(op) => op.on_timeout(now),
                Step::Resolve(op) => op.on_timeout(now),
                Step::Sleep(until) if now >= *until => {
                    self.read(now);
                    return;
                }
                _ => return,
            }
            self.check(now);
        }

        fn poll_timeout(&self) -> Option<Instant> {
            match &self.step {
                Step::Read(op) => op.poll_timeout(),
                Step::Resolve(op) => op.poll_timeout(),
                Step::Sleep(until) => Some(*until),
                Step::Done => None,
            }
        }
    };
}

/// A point read of one key at a snapshot timestamp.
pub struct SnapshotGet {
    lp: ReadLoop,
    key: Key,
    step: Step<Point<GetPlan>>,
    result: Option<Result<Option<Value>, Error>>,
}

impl std::fmt::Debug for SnapshotGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotGet").field("key", &self.key).field("ts", &self.lp.ts).finish()
    }
}

impl SnapshotGet {
    /// Reads `key` as of `ts`.
    pub fn new(view: Arc<ClusterView>, key: Key, ts: u64, opts: ReadOptions) -> SnapshotGet {
        SnapshotGet { lp: ReadLoop::new(view, ts, opts), key, step: Step::Done, result: None }
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
            Point::fanout(&self.lp.view, plan, self.key.clone(), timeout, self.lp.backoffer.fork());
        self.lp.epoch += 1;
        self.step = Step::Read(Box::new(op));
        if let Step::Read(op) = &mut self.step {
            op.start(now);
        }
        self.check(now);
    }

    fn finish(&mut self, result: Result<Option<Value>, Error>) {
        self.step = Step::Done;
        self.result = Some(result);
    }

    fn check(&mut self, now: Instant) {
        match &mut self.step {
            Step::Read(op) => match self.lp.fold(op.poll_result(), Some(op.backoffer())) {
                None => {}
                Some(Err(e)) => self.finish(Err(e)),
                Some(Ok((value, met))) if met.is_empty() => self.finish(Ok(value)),
                Some(Ok((_, met))) => {
                    self.step = self.lp.start_resolve(met, now);
                    self.check(now);
                }
            },
            Step::Resolve(op) => match self.lp.poll_resolve(op, now) {
                None => {}
                Some(Ok(None)) => self.read(now),
                Some(Ok(Some(until))) => self.step = Step::Sleep(until),
                Some(Err(e)) => self.finish(Err(e)),
            },
            Step::Sleep(_) | Step::Done => {}
        }
    }
}

impl Operation for SnapshotGet {
    type Output = Option<Value>;

    fn start(&mut self, now: Instant) {
        if matches!(self.step, Step::Done) && self.result.is_none() {
            self.read(now);
        }
    }

    read_machine_plumbing!();

    fn poll_result(&mut self) -> Option<Result<Option<Value>, Error>> {
        self.result.take()
    }
}

/// A batch read at a snapshot timestamp: the pairs that exist, sorted by key.
/// Locked keys are resolved and read again; keys already read are not.
pub struct SnapshotBatchGet {
    lp: ReadLoop,
    pending: Vec<Key>,
    found: Vec<KvPair>,
    step: Step<BatchGetPlan>,
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
    pub fn new(view: Arc<ClusterView>, mut keys: Vec<Key>, ts: u64, opts: ReadOptions) -> Self {
        keys.sort();
        keys.dedup();
        let mut lp = ReadLoop::new(view, ts, opts);
        lp.backoffer = {
            let budget = lp.view.config.budget(lp.view.config.backoff.batch_get);
            lp.view.backoffer(budget)
        };
        SnapshotBatchGet { lp, pending: keys, found: Vec::new(), step: Step::Done, result: None }
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
        let op = KeyFanout::new(self.lp.view.clone(), plan, keys, self.lp.backoffer.fork());
        self.lp.epoch += 1;
        self.step = Step::Read(Box::new(op));
        if let Step::Read(op) = &mut self.step {
            op.start(now);
        }
        self.check(now);
    }

    fn finish(&mut self, result: Result<Vec<KvPair>, Error>) {
        self.step = Step::Done;
        self.result = Some(result);
    }

    fn check(&mut self, now: Instant) {
        match &mut self.step {
            Step::Read(op) => match self.lp.fold(op.poll_result(), Some(op.backoffer())) {
                None => {}
                Some(Err(e)) => self.finish(Err(e)),
                Some(Ok(plan)) => {
                    self.found.extend(plan.found);
                    self.pending = plan.retry;
                    if plan.met.is_empty() {
                        self.read(now);
                    } else {
                        self.step = self.lp.start_resolve(plan.met, now);
                        self.check(now);
                    }
                }
            },
            Step::Resolve(op) => match self.lp.poll_resolve(op, now) {
                None => {}
                Some(Ok(None)) => self.read(now),
                Some(Ok(Some(until))) => self.step = Step::Sleep(until),
                Some(Err(e)) => self.finish(Err(e)),
            },
            Step::Sleep(_) | Step::Done => {}
        }
    }
}

impl Operation for SnapshotBatchGet {
    type Output = Vec<KvPair>;

    fn start(&mut self, now: Instant) {
        if matches!(self.step, Step::Done) && self.result.is_none() {
            self.read(now);
        }
    }

    read_machine_plumbing!();

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
    ts: u64,
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
            version: self.ts,
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

enum ScanStep {
    Walk(Box<RangeWalk<ScanPlan>>),
    Resolve(Box<ResolveLocks>),
    Sleep(Instant),
    Done,
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
    lp: ReadLoop,
    range: KeyRange,
    limit: usize,
    key_only: bool,
    reverse: bool,
    pairs: Vec<KvPair>,
    step: ScanStep,
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
    /// Scans `range` as of `ts`, at most `limit` pairs.
    pub fn new(
        view: Arc<ClusterView>,
        range: KeyRange,
        limit: u32,
        key_only: bool,
        reverse: bool,
        ts: u64,
        opts: ReadOptions,
    ) -> SnapshotScan {
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
            step: ScanStep::Done,
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
        );
        self.lp.epoch += 1;
        self.step = ScanStep::Walk(Box::new(walk));
        if let ScanStep::Walk(op) = &mut self.step {
            op.start(now);
        }
        self.check(now);
    }

    fn finish(&mut self, result: Result<Vec<KvPair>, Error>) {
        self.step = ScanStep::Done;
        self.result = Some(result);
    }

    fn check(&mut self, now: Instant) {
        match &mut self.step {
            ScanStep::Walk(op) => match self.lp.fold(op.poll_result(), op.backoffer()) {
                None => {}
                Some(Err(e)) => self.finish(Err(e)),
                Some(Ok(pass)) => {
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
                            let mut resolve = Box::new(self.lp.resolve(pass.met));
                            self.lp.epoch += 1;
                            resolve.start(now);
                            self.step = ScanStep::Resolve(resolve);
                            self.check(now);
                        }
                    }
                }
            },
            ScanStep::Resolve(op) => match self.lp.fold(op.poll_result(), Some(op.backoffer())) {
                None => {}
                Some(Err(e)) => self.finish(Err(e)),
                Some(Ok(outcome)) => match self.lp.after_resolve(&outcome, now) {
                    Ok(None) => self.read(now),
                    Ok(Some(until)) => self.step = ScanStep::Sleep(until),
                    Err(e) => self.finish(Err(e)),
                },
            },
            ScanStep::Sleep(_) | ScanStep::Done => {}
        }
    }
}

impl Operation for SnapshotScan {
    type Output = Vec<KvPair>;

    fn start(&mut self, now: Instant) {
        if matches!(self.step, ScanStep::Done) && self.result.is_none() {
            self.read(now);
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        let rpc = match &mut self.step {
            ScanStep::Walk(op) => op.poll_rpc(),
            ScanStep::Resolve(op) => op.poll_rpc(),
            _ => None,
        }?;
        Some(self.lp.ids.wrap(self.lp.epoch, rpc))
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((epoch, id)) = self.lp.ids.take(id) else {
            return;
        };
        if epoch != self.lp.epoch {
            return;
        }
        match &mut self.step {
            ScanStep::Walk(op) => op.on_response(id, response, now),
            ScanStep::Resolve(op) => op.on_response(id, response, now),
            _ => return,
        }
        self.check(now);
    }

    fn on_timeout(&mut self, now: Instant) {
        match &mut self.step {
            ScanStep::Walk(op) => op.on_timeout(now),
            ScanStep::Resolve(op) => op.on_timeout(now),
            ScanStep::Sleep(until) if now >= *until => {
                self.read(now);
                return;
            }
            _ => return,
        }
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.step {
            ScanStep::Walk(op) => op.poll_timeout(),
            ScanStep::Resolve(op) => op.poll_timeout(),
            ScanStep::Sleep(until) => Some(*until),
            ScanStep::Done => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<Vec<KvPair>, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests;
