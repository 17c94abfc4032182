//! GC and range administration (client-go `tikv/gc.go`,
//! `txnkv/rangetask/delete_range.go`).
//!
//! - [`LocksInRange`]: every lock at or below a timestamp in a range, region
//!   by region (`ScanLock` pages of [`GC_SCAN_LOCK_LIMIT`]), either
//!   collected ([`scan_locks`]) or resolved as GC resolves them
//!   ([`resolve_locks_for_range`], client-go `ResolveLocksForRange`).
//! - [`Gc`]: client-go `KVStore.GC`: advance the txn safe point (PD keeps it
//!   behind GC barriers), resolve every lock at or below the safe point it
//!   reached over the whole key space with the range-task runner, then
//!   advance the GC safe point to it.
//! - [`delete_range`]: TiKV `DeleteRange` region by region through the
//!   range-task runner, or only notify (`notify_only`).
//! - [`UnsafeDestroyRange`]: `UnsafeDestroyRange` to every store that is not
//!   a tombstone nor TiFlash, all at once, errors gathered per store.
//! - The read visibility check (client-go `KVStore.CheckVisibility`): a
//!   [`TxnSafePointCache`] the runtime keeps fresh with
//!   [`LoadTxnSafePoint`], and [`check_visibility`] refusing reads below
//!   the txn safe point.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tikv_proto::{kvrpcpb, metapb, pdpb};

use crate::backoff::{BackoffKind, Backoffer};
use crate::error::Error;
use crate::key::{Key, KeyRange};
use crate::lock::{Lock, ResolveLocks, ResolveOptions, ResolveOutcome};
use crate::op::{IdMap, Operation, StepEvent, StepSlot};
use crate::pd::{PdCall, Timestamp};
use crate::range_task::{RangeTaskHandler, RangeTaskRunner, RangeTaskStat};
use crate::route::walk::{RangePlan, RangeWalk};
use crate::rpc::{
    KvRequest, KvResponse, PdRequest, PdResponse, Request, Response, Rpc, RpcError, RpcId, Target,
};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// Locks asked for per `ScanLock` (client-go `GCScanLockLimit`, half the
/// resolver's 2048-entry cache).
pub const GC_SCAN_LOCK_LIMIT: u32 = 1024;

/// Budget for scanning and resolving one region's locks (client-go
/// `gcResolveLockMaxBackoff`, 100 s, renewed per region).
const GC_RESOLVE_LOCK_BUDGET: Duration = Duration::from_secs(100);

/// Budget for one task's `DeleteRange` walk (client-go's
/// `locateRegionMaxBackoff`, 20 s).
const DELETE_RANGE_BUDGET: Duration = Duration::from_secs(20);

/// Budget for the PD calls of a GC round and the range split.
const GC_PD_BUDGET: Duration = Duration::from_secs(20);

/// Per-store timeout of `UnsafeDestroyRange` (client-go
/// `unsafeDestroyRangeTimeout`, 5 minutes).
pub const UNSAFE_DESTROY_RANGE_TIMEOUT: Duration = Duration::from_secs(300);

/// Regions per task and tasks at once for GC's lock resolution and
/// `delete_range` (client-go's runner default of 128 regions per task;
/// `KVStore.GC`'s default concurrency 8).
pub const RANGE_TASK_REGIONS: usize = 128;
/// See [`RANGE_TASK_REGIONS`].
pub const RANGE_TASK_CONCURRENCY: usize = 8;

fn unexpected(resp: &KvResponse) -> Error {
    Error::malformed(format!("unexpected {} response", resp.name()))
}

// ---------------------------------------------------------------- locks

/// `ScanLock` on the first region of its range: the region's part of the
/// range and the locks found there.
struct ScanLockPlan {
    max_ts: Timestamp,
    limit: u32,
    timeout: Duration,
    found: Option<(KeyRange, Vec<Lock>)>,
}

impl RangePlan for ScanLockPlan {
    type Output = Option<(KeyRange, Vec<Lock>)>;
    fn build(&mut self, part: &KeyRange) -> KvRequest {
        KvRequest::ScanLock(Box::new(kvrpcpb::ScanLockRequest {
            max_version: self.max_ts.version(),
            start_key: part.start.to_bytes(),
            end_key: part.end.to_bytes(),
            limit: self.limit,
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, part: &KeyRange, response: KvResponse) -> Result<bool, Error> {
        let KvResponse::ScanLock(r) = response else {
            return Err(unexpected(&response));
        };
        if let Some(e) = r.error {
            return Err(Error::KeyError(Box::new(e)));
        }
        let locks = r.locks.iter().flat_map(Lock::from_info).collect();
        self.found = Some((part.clone(), locks));
        // One region per walk: the caller decides what follows.
        Ok(false)
    }
    fn finish(self) -> Self::Output {
        self.found
    }
}

/// What [`LocksInRange`] found or did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocksInRangeOutcome {
    /// The locks found (only when collecting, at most the asked limit).
    pub locks: Vec<Lock>,
    /// Regions finished (and, when resolving, cleared of locks at or below
    /// the timestamp).
    pub stat: RangeTaskStat,
}

enum LockEvent {
    Scanned(Result<Option<(KeyRange, Vec<Lock>)>, Error>),
    Resolved(Result<ResolveOutcome, Error>),
}

/// Locks at or below `max_ts` in a range, region by region (module docs).
pub struct LocksInRange {
    view: Arc<ClusterView>,
    end: Key,
    cursor: Key,
    max_ts: Timestamp,
    /// Collect up to this many locks; `None`: resolve them instead.
    collect: Option<usize>,
    /// The region part being handled and how many locks its scan returned.
    current: Option<(KeyRange, Vec<Lock>)>,
    step: StepSlot<LockEvent>,
    budget: Backoffer,
    outcome: LocksInRangeOutcome,
    started: bool,
    result: Option<Result<LocksInRangeOutcome, Error>>,
}

impl std::fmt::Debug for LocksInRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocksInRange")
            .field("cursor", &self.cursor)
            .field("end", &self.end)
            .field("max_ts", &self.max_ts)
            .finish()
    }
}

/// Up to `limit` locks with a start ts at or below `max_ts` in `range`, in
/// key order.
pub fn scan_locks(
    view: &Arc<ClusterView>,
    range: KeyRange,
    max_ts: Timestamp,
    limit: usize,
) -> LocksInRange {
    LocksInRange::new(view, range, max_ts, Some(limit))
}

/// Resolves every lock with a start ts at or below `max_ts` in `range`
/// (client-go `ResolveLocksForRange`): the transactions behind them are
/// committed or rolled back for good, as GC needs before it collects.
pub fn resolve_locks_for_range(
    view: &Arc<ClusterView>,
    range: KeyRange,
    max_ts: Timestamp,
) -> LocksInRange {
    LocksInRange::new(view, range, max_ts, None)
}

impl LocksInRange {
    fn new(
        view: &Arc<ClusterView>,
        range: KeyRange,
        max_ts: Timestamp,
        collect: Option<usize>,
    ) -> LocksInRange {
        LocksInRange {
            view: view.clone(),
            end: range.end,
            cursor: range.start,
            max_ts,
            collect,
            current: None,
            step: StepSlot::new(),
            budget: view.backoffer(GC_RESOLVE_LOCK_BUDGET),
            outcome: LocksInRangeOutcome::default(),
            started: false,
            result: None,
        }
    }

    fn finish(&mut self, result: Result<(), Error>) {
        self.step.clear();
        self.result = Some(result.map(|()| std::mem::take(&mut self.outcome)));
    }

    fn scan(&mut self, now: Instant) {
        let range = KeyRange { start: self.cursor.clone(), end: self.end.clone() };
        if range.is_empty() {
            self.finish(Ok(()));
            return;
        }
        let limit = self.page_limit();
        if limit == 0 {
            self.finish(Ok(()));
            return;
        }
        let plan = ScanLockPlan {
            max_ts: self.max_ts,
            limit,
            timeout: self.view.config.read_timeout_medium,
            found: None,
        };
        let walk = RangeWalk::new(self.view.clone(), plan, range, false, self.budget.fork());
        self.step.start(walk, LockEvent::Scanned, now);
    }

    /// After a region's scan (and resolution): the same region again from
    /// just after its last lock when the page was full (client-go goes on
    /// from the last lock's key), else the next region.
    fn advance(&mut self, limit_reached: bool, now: Instant) {
        let Some((part, locks)) = self.current.take() else {
            return;
        };
        match locks.last() {
            Some(last) if limit_reached => self.cursor = last.key.next_key(),
            _ => {
                self.outcome.stat.completed_regions += 1;
                if part.end.is_empty() || (!self.end.is_empty() && part.end >= self.end) {
                    self.finish(Ok(()));
                    return;
                }
                self.cursor = part.end;
                // A fresh budget per region, as client-go's loop makes.
                self.budget = self.view.backoffer(GC_RESOLVE_LOCK_BUDGET);
            }
        }
        self.scan(now);
    }

    fn on_scanned(&mut self, found: Option<(KeyRange, Vec<Lock>)>, limit: u32, now: Instant) {
        let Some((part, locks)) = found else {
            self.finish(Ok(()));
            return;
        };
        let full = locks.len() >= limit as usize;
        if self.collect.is_some() {
            self.outcome.locks.extend(locks.iter().cloned());
            self.current = Some((part, locks));
            self.advance(full, now);
            return;
        }
        if locks.is_empty() {
            self.current = Some((part, locks));
            self.advance(false, now);
            return;
        }
        // GC's resolution (client-go `BatchResolveLocks`) asks each
        // primary with `current_ts` = max: every transaction at or below
        // the safe point is over, so TiKV rolls back what is not committed.
        // TTL 0 makes the resolver do exactly that.
        let forced: Vec<Lock> = locks.iter().cloned().map(|l| Lock { ttl: 0, ..l }).collect();
        let opts = ResolveOptions {
            caller_start_ts: Timestamp::ZERO,
            for_read: false,
            lite: false,
            ..Default::default()
        };
        let resolve = ResolveLocks::new(self.view.clone(), forced, opts, self.budget.fork());
        self.current = Some((part, locks));
        self.step.start(resolve, LockEvent::Resolved, now);
    }

    fn page_limit(&self) -> u32 {
        match self.collect {
            Some(n) => u32::try_from(n.saturating_sub(self.outcome.locks.len()))
                .unwrap_or(u32::MAX)
                .min(GC_SCAN_LOCK_LIMIT),
            None => GC_SCAN_LOCK_LIMIT,
        }
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.budget)) {
            match event {
                StepEvent::Done(LockEvent::Scanned(Ok(found))) => {
                    let limit = self.page_limit();
                    self.on_scanned(found, limit, now);
                }
                StepEvent::Done(LockEvent::Resolved(Ok(outcome))) => {
                    if outcome.ms_before_expired > 0 {
                        // Some transaction is still alive (it should not be
                        // at or below a safe point): wait, then scan again.
                        let reason = "locks still alive after resolving";
                        match self.budget.backoff(BackoffKind::TxnLock, reason) {
                            Ok(sleep) => {
                                self.current = None;
                                self.step.sleep_until(now + sleep);
                            }
                            Err(e) => self.finish(Err(e)),
                        }
                        continue;
                    }
                    let full = self
                        .current
                        .as_ref()
                        .is_some_and(|(_, l)| l.len() >= GC_SCAN_LOCK_LIMIT as usize);
                    self.advance(full, now);
                }
                StepEvent::Woke => self.scan(now),
                StepEvent::Done(LockEvent::Scanned(Err(e)) | LockEvent::Resolved(Err(e))) => {
                    self.finish(Err(e))
                }
            }
        }
    }
}

impl Operation for LocksInRange {
    type Output = LocksInRangeOutcome;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        self.scan(now);
        self.check(now);
    }

    crate::op::forward_step_inputs!(step);

    fn poll_result(&mut self) -> Option<Result<LocksInRangeOutcome, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.budget)
    }
}

/// One GC task: [`LocksInRange`] resolving, reporting its regions.
#[derive(Debug)]
pub struct ResolveLocksTask(LocksInRange);

impl Operation for ResolveLocksTask {
    type Output = RangeTaskStat;
    fn start(&mut self, now: Instant) {
        self.0.start(now)
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.0.poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.0.on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        self.0.on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<RangeTaskStat, Error>> {
        self.0.poll_result().map(|r| r.map(|o| o.stat))
    }
}

/// GC's range-task handler: resolve locks at or below the safe point.
#[derive(Debug)]
pub struct ResolveLocksHandler {
    view: Arc<ClusterView>,
    safe_point: Timestamp,
}

impl RangeTaskHandler for ResolveLocksHandler {
    type Task = ResolveLocksTask;
    fn task(&mut self, range: KeyRange) -> ResolveLocksTask {
        ResolveLocksTask(resolve_locks_for_range(&self.view, range, self.safe_point))
    }
}

// ---------------------------------------------------------------- GC

/// What a GC round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// The safe point reached: the txn and GC safe points now (below the
    /// asked one when a GC barrier held the txn safe point back).
    pub safe_point: Timestamp,
    /// PD's description of the barrier that held it back, if one did.
    pub blocker: Option<String>,
    /// Regions whose locks were resolved.
    pub resolved_regions: u64,
}

enum GcEvent {
    TxnSafePoint(Result<PdResponse, Error>),
    Resolved(Result<RangeTaskStat, Error>),
    GcSafePoint(Result<PdResponse, Error>),
}

/// client-go `KVStore.GC` (module docs). The safe points are the null
/// keyspace's (client-go asks for `NullKeyspaceID`'s controller): the
/// unified GC, which PD applies to every keyspace without its own GC.
pub struct Gc {
    view: Arc<ClusterView>,
    target: Timestamp,
    concurrency: usize,
    step: StepSlot<GcEvent>,
    budget: Backoffer,
    outcome: GcOutcome,
    started: bool,
    result: Option<Result<GcOutcome, Error>>,
}

impl std::fmt::Debug for Gc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gc").field("target", &self.target).field("outcome", &self.outcome).finish()
    }
}

impl Gc {
    /// A GC round towards `safe_point`, resolving locks with `concurrency`
    /// tasks at once.
    pub fn new(view: &Arc<ClusterView>, safe_point: Timestamp, concurrency: usize) -> Gc {
        Gc {
            view: view.clone(),
            target: safe_point,
            concurrency,
            step: StepSlot::new(),
            budget: view.backoffer(GC_PD_BUDGET),
            outcome: GcOutcome::default(),
            started: false,
            result: None,
        }
    }

    fn pd_call(&mut self, request: PdRequest) -> PdCall {
        PdCall::new(self.view.pd.clone(), request, self.view.config.pd_timeout, self.budget.fork())
    }

    fn finish(&mut self, result: Result<(), Error>) {
        self.step.clear();
        self.result = Some(result.map(|()| std::mem::take(&mut self.outcome)));
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.budget)) {
            match event {
                StepEvent::Done(GcEvent::TxnSafePoint(Ok(PdResponse::AdvanceTxnSafePoint(r)))) => {
                    // PD never moves the txn safe point past a live barrier.
                    let reached = Timestamp::from_version(r.new_txn_safe_point);
                    self.outcome.safe_point = reached.min(self.target);
                    if reached < self.target {
                        self.outcome.blocker = Some(r.blocker_description.clone());
                    }
                    let handler = ResolveLocksHandler {
                        view: self.view.clone(),
                        safe_point: self.outcome.safe_point,
                    };
                    let runner = RangeTaskRunner::new(
                        self.view.clone(),
                        handler,
                        KeyRange::all(),
                        RANGE_TASK_REGIONS,
                        self.concurrency,
                        self.budget.fork(),
                    );
                    self.step.start(runner, GcEvent::Resolved, now);
                }
                StepEvent::Done(GcEvent::Resolved(Ok(stat))) => {
                    self.outcome.resolved_regions = stat.completed_regions;
                    let request =
                        PdRequest::AdvanceGcSafePoint(Box::new(pdpb::AdvanceGcSafePointRequest {
                            target: self.outcome.safe_point.version(),
                            ..Default::default()
                        }));
                    let call = self.pd_call(request);
                    self.step.start(call, GcEvent::GcSafePoint, now);
                }
                StepEvent::Done(GcEvent::GcSafePoint(Ok(PdResponse::AdvanceGcSafePoint(_)))) => {
                    self.finish(Ok(()))
                }
                StepEvent::Done(
                    GcEvent::TxnSafePoint(Err(e))
                    | GcEvent::Resolved(Err(e))
                    | GcEvent::GcSafePoint(Err(e)),
                ) => self.finish(Err(e)),
                StepEvent::Done(
                    GcEvent::TxnSafePoint(Ok(other)) | GcEvent::GcSafePoint(Ok(other)),
                ) => self.finish(Err(Error::malformed(format!("unexpected PD {}", other.name())))),
                StepEvent::Woke => {}
            }
        }
    }
}

impl Operation for Gc {
    type Output = GcOutcome;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let request = PdRequest::AdvanceTxnSafePoint(Box::new(pdpb::AdvanceTxnSafePointRequest {
            target: self.target.version(),
            ..Default::default()
        }));
        let call = self.pd_call(request);
        self.step.start(call, GcEvent::TxnSafePoint, now);
        self.check(now);
    }

    crate::op::forward_step_inputs!(step);

    fn poll_result(&mut self) -> Option<Result<GcOutcome, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.budget)
    }
}

// ---------------------------------------------------------------- delete range

/// TiKV's `DeleteRange` for one region's part (client-go
/// `DeleteRangeTask.sendReqOnRange`), counting regions.
#[derive(Debug)]
pub struct DeleteRangePlan {
    notify_only: bool,
    timeout: Duration,
    regions: u64,
}

impl RangePlan for DeleteRangePlan {
    type Output = RangeTaskStat;
    fn build(&mut self, part: &KeyRange) -> KvRequest {
        KvRequest::DeleteRange(Box::new(kvrpcpb::DeleteRangeRequest {
            start_key: part.start.to_bytes(),
            end_key: part.end.to_bytes(),
            notify_only: self.notify_only,
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _part: &KeyRange, response: KvResponse) -> Result<bool, Error> {
        let KvResponse::DeleteRange(r) = response else {
            return Err(unexpected(&response));
        };
        if !r.error.is_empty() {
            return Err(Error::Server(r.error));
        }
        self.regions += 1;
        Ok(true)
    }
    fn finish(self) -> RangeTaskStat {
        RangeTaskStat { completed_regions: self.regions, failed_regions: 0 }
    }
}

/// `delete_range`'s range-task handler.
#[derive(Debug)]
pub struct DeleteRangeHandler {
    view: Arc<ClusterView>,
    notify_only: bool,
}

impl RangeTaskHandler for DeleteRangeHandler {
    type Task = RangeWalk<DeleteRangePlan>;
    fn task(&mut self, range: KeyRange) -> RangeWalk<DeleteRangePlan> {
        let plan = DeleteRangePlan {
            notify_only: self.notify_only,
            timeout: self.view.config.read_timeout_medium,
            regions: 0,
        };
        let budget = self.view.backoffer(DELETE_RANGE_BUDGET);
        RangeWalk::new(self.view.clone(), plan, range, false, budget)
    }
}

/// Deletes every version of every key in `range` (client-go
/// `rangetask.DeleteRangeTask`): TiKV `DeleteRange` per region, regions in
/// tasks of [`RANGE_TASK_REGIONS`], `concurrency` tasks at once; with
/// `notify_only` TiKV deletes nothing and only tells its observers. Not
/// transactional: readers at any timestamp see the data gone. The range
/// needs a bounded end: TiKV encodes an empty end key as the smallest key,
/// so the last region's request would be refused.
pub fn delete_range(
    view: &Arc<ClusterView>,
    range: KeyRange,
    notify_only: bool,
    concurrency: usize,
) -> Result<RangeTaskRunner<DeleteRangeHandler>, Error> {
    if range.end.is_empty() && view.codec.keyspace_id().is_none() {
        return Err(Error::InvalidArgument("delete_range needs a bounded end key".into()));
    }
    let handler = DeleteRangeHandler { view: view.clone(), notify_only };
    let budget = view.backoffer(GC_PD_BUDGET);
    Ok(RangeTaskRunner::new(view.clone(), handler, range, RANGE_TASK_REGIONS, concurrency, budget))
}

// ---------------------------------------------------------------- unsafe destroy

/// client-go `GetStoreTypeByMeta(..).IsTiFlashRelatedType()`: the `engine`
/// label names TiFlash.
fn is_tiflash(store: &metapb::Store) -> bool {
    store
        .labels
        .iter()
        .any(|l| l.key == "engine" && (l.value == "tiflash" || l.value == "tiflash_compute"))
}

/// client-go `KVStore.UnsafeDestroyRange` (module docs).
pub struct UnsafeDestroyRange {
    view: Arc<ClusterView>,
    request: kvrpcpb::UnsafeDestroyRangeRequest,
    list: StepSlot<Result<PdResponse, Error>>,
    budget: Backoffer,
    outbox: VecDeque<Rpc>,
    /// Our RPC id → the store asked (`None`: the PD store list), for every
    /// RPC still to answer.
    ids: IdMap<Option<u64>>,
    /// Stores still to answer.
    waiting: usize,
    errors: Vec<String>,
    started: bool,
    result: Option<Result<(), Error>>,
}

impl std::fmt::Debug for UnsafeDestroyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsafeDestroyRange")
            .field("waiting", &self.waiting)
            .field("errors", &self.errors)
            .finish()
    }
}

impl UnsafeDestroyRange {
    /// Destroys `range` on every store.
    pub fn new(view: &Arc<ClusterView>, range: KeyRange) -> UnsafeDestroyRange {
        UnsafeDestroyRange {
            view: view.clone(),
            request: kvrpcpb::UnsafeDestroyRangeRequest {
                start_key: range.start.to_bytes(),
                end_key: range.end.to_bytes(),
                ..Default::default()
            },
            list: StepSlot::new(),
            budget: view.backoffer(GC_PD_BUDGET),
            outbox: VecDeque::new(),
            ids: IdMap::new(),
            waiting: 0,
            errors: Vec::new(),
            started: false,
            result: None,
        }
    }

    fn send_to(&mut self, stores: Vec<metapb::Store>, now: Instant) {
        let mut request = KvRequest::UnsafeDestroyRange(Box::new(self.request.clone()));
        if let Err(e) = self.view.codec.encode_request(&mut request) {
            self.result = Some(Err(e));
            return;
        }
        self.view.codec.stamp_context(request.context_mut());
        if let KvRequest::UnsafeDestroyRange(r) = &request
            && (r.start_key.is_empty() || r.end_key.is_empty())
        {
            // TiKV asserts both keys are set (an empty one stops the store).
            let e = Error::InvalidArgument("unsafe_destroy_range needs both range ends".into());
            self.result = Some(Err(e));
            return;
        }
        let targets = stores
            .into_iter()
            .filter(|s| s.state != metapb::StoreState::Tombstone as i32 && !is_tiflash(s));
        for store in targets {
            let rpc = Rpc {
                id: RpcId(0),
                target: Target::Store {
                    store_id: store.id,
                    addr: store.address.as_str().into(),
                    forwarded_host: None,
                },
                request: Request::Kv(request.clone()),
                deadline: now + UNSAFE_DESTROY_RANGE_TIMEOUT,
            };
            let rpc = self.ids.wrap(Some(store.id), rpc);
            self.waiting += 1;
            self.outbox.push_back(rpc);
        }
        self.check_done();
    }

    fn check_done(&mut self) {
        if self.result.is_some() || !self.list.is_idle() || self.waiting > 0 {
            return;
        }
        self.result = Some(if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Server(format!(
                "[unsafe destroy range] destroy range finished with errors: {:?}",
                self.errors
            )))
        });
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.list.poll_event(Some(&mut self.budget)) {
            match event {
                StepEvent::Done(Ok(PdResponse::GetAllStores(r))) => self.send_to(r.stores, now),
                StepEvent::Done(Ok(other)) => {
                    let e = Error::malformed(format!("unexpected PD {}", other.name()));
                    self.result = Some(Err(e));
                }
                StepEvent::Done(Err(e)) => self.result = Some(Err(e)),
                StepEvent::Woke => {}
            }
        }
    }
}

impl Operation for UnsafeDestroyRange {
    type Output = ();

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let request = PdRequest::GetAllStores(Box::new(pdpb::GetAllStoresRequest {
            exclude_tombstone_stores: true,
            ..Default::default()
        }));
        let call = PdCall::new(
            self.view.pd.clone(),
            request,
            self.view.config.pd_timeout,
            self.budget.fork(),
        );
        self.list.start(call, |r| r, now);
        self.check(now);
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        if self.result.is_some() {
            return None;
        }
        match self.list.poll_rpc() {
            Some(rpc) => Some(self.ids.wrap(None, rpc)),
            None => self.outbox.pop_front(),
        }
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let store_id = match self.ids.take(id) {
            None => return,
            Some((None, list_id)) => {
                if self.list.on_response(list_id, response, now) {
                    self.check(now);
                }
                return;
            }
            Some((Some(store_id), _)) => store_id,
        };
        self.waiting -= 1;
        let failure = match response {
            Ok(Response::Kv(KvResponse::UnsafeDestroyRange(r))) if r.error.is_empty() => None,
            Ok(Response::Kv(KvResponse::UnsafeDestroyRange(r))) => {
                Some(format!("range failed on store {store_id}: {}", r.error))
            }
            Ok(other) => Some(format!("store {store_id} answered {}", other.name())),
            Err(e) => Some(format!("store {store_id}: {e}")),
        };
        if let Some(f) = failure {
            self.errors.push(f);
        }
        self.check_done();
    }

    fn on_timeout(&mut self, now: Instant) {
        self.list.on_timeout(now);
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // Store RPCs carry their own deadline; the transport enforces it.
        self.list.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.budget)
    }
}

// ---------------------------------------------------------------- visibility

/// How often the runtime reloads the txn safe point (client-go
/// `pollTxnSafePointInterval`).
pub const TXN_SAFE_POINT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// A cached txn safe point older than this is not trusted (client-go's
/// `GcStateCacheInterval` of 100 s minus `gcCPUTimeInaccuracyBound` of
/// 10 s): GC may have moved past it since.
pub const TXN_SAFE_POINT_MAX_AGE: Duration = Duration::from_secs(90);

#[derive(Debug, Default)]
struct CachedSafePoint {
    txn_safe_point: Timestamp,
    loaded_at: Option<Instant>,
    /// PD has no GC-states API (PD < 9; client-go then reads the safe
    /// point from etcd, which this client does not): nothing to check.
    unsupported: bool,
}

/// The client's cached txn safe point (client-go's `gcStateCacheMu`).
#[derive(Debug, Default)]
pub struct TxnSafePointCache {
    inner: Mutex<CachedSafePoint>,
}

/// What the cache knows at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachedTxnSafePoint {
    /// Loaded within [`TXN_SAFE_POINT_MAX_AGE`].
    Fresh(Timestamp),
    /// Never loaded, or too old to trust: load it before checking.
    Stale,
    /// PD cannot tell it; reads go unchecked.
    Unsupported,
}

impl TxnSafePointCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CachedSafePoint> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a txn safe point PD reported at `now` (client-go
    /// `UpdateTxnSafePointCache`).
    pub fn update(&self, txn_safe_point: Timestamp, now: Instant) {
        let mut c = self.lock();
        c.txn_safe_point = txn_safe_point;
        c.loaded_at = Some(now);
    }

    /// Records that PD has no GC-states API.
    pub fn mark_unsupported(&self) {
        self.lock().unsupported = true;
    }

    /// The cached value as of `now`.
    pub fn get(&self, now: Instant) -> CachedTxnSafePoint {
        let c = self.lock();
        if c.unsupported {
            return CachedTxnSafePoint::Unsupported;
        }
        match c.loaded_at {
            Some(at) if now.saturating_duration_since(at) <= TXN_SAFE_POINT_MAX_AGE => {
                CachedTxnSafePoint::Fresh(c.txn_safe_point)
            }
            _ => CachedTxnSafePoint::Stale,
        }
    }

    /// Feeds a [`LoadTxnSafePoint`] outcome: a value is recorded, PD's
    /// `Unimplemented` marks the API missing; other errors are returned.
    pub fn record(&self, loaded: Result<Timestamp, Error>, now: Instant) -> Result<(), Error> {
        match loaded {
            Ok(txn_safe_point) => {
                self.update(txn_safe_point, now);
                Ok(())
            }
            Err(Error::Rpc(RpcError::Unimplemented(_))) => {
                self.mark_unsupported();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// client-go `CheckVisibility`'s rule: a read at `start_ts` below the txn
/// safe point may meet collected data, so it is refused.
pub fn check_visibility(start_ts: Timestamp, txn_safe_point: Timestamp) -> Result<(), Error> {
    if start_ts < txn_safe_point {
        return Err(Error::TxnAbortedByGc { start_ts, txn_safe_point });
    }
    Ok(())
}

/// Loads the txn safe point from PD's `GetGCState` for the client's
/// keyspace (the null keyspace in API V1; PD answers a keyspace without
/// its own GC with the unified state), barriers left out.
#[derive(Debug)]
pub struct LoadTxnSafePoint {
    call: PdCall,
    result: Option<Result<Timestamp, Error>>,
}

impl LoadTxnSafePoint {
    /// A load for the keyspace `view`'s codec names.
    pub fn new(view: &Arc<ClusterView>) -> LoadTxnSafePoint {
        let keyspace_scope = view.codec.keyspace_id().map(|id| pdpb::KeyspaceScope {
            keyspace: Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(id)),
        });
        let request = PdRequest::GetGcState(Box::new(pdpb::GetGcStateRequest {
            keyspace_scope,
            exclude_gc_barriers: true,
            ..Default::default()
        }));
        let budget = view.backoffer(GC_PD_BUDGET);
        LoadTxnSafePoint {
            call: PdCall::new(view.pd.clone(), request, view.config.pd_timeout, budget),
            result: None,
        }
    }

    fn check(&mut self) {
        let Some(outcome) = self.call.poll_result() else { return };
        self.result = Some(match outcome {
            Ok(PdResponse::GetGcState(r)) => match r.gc_state {
                Some(state) => Ok(Timestamp::from_version(state.txn_safe_point)),
                None => Err(Error::malformed("GetGCState without a GC state")),
            },
            Ok(other) => Err(Error::malformed(format!("unexpected PD {}", other.name()))),
            Err(e) => Err(e),
        });
    }
}

impl Operation for LoadTxnSafePoint {
    type Output = Timestamp;

    fn start(&mut self, now: Instant) {
        self.call.start(now);
        self.check();
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.call.poll_rpc()
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.call.on_response(id, response, now);
        self.check();
    }

    fn on_timeout(&mut self, now: Instant) {
        self.call.on_timeout(now);
        self.check();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.call.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<Timestamp, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(self.call.backoffer())
    }
}

#[cfg(test)]
mod tests;
