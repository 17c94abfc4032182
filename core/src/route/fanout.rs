//! Multi-key requests: group keys by region, split into batches, send the
//! batches in parallel, and re-split whatever comes back as `Relocate`.
//!
//! This is the shape almost every client-go write and batch read follows
//! (`groupKeysByRegion` → `appendBatchMutationsBySize` → send → on region
//! error re-locate; if the batch still fits one region retry it, otherwise
//! re-group), written once and parameterised by a [`KeyPlan`].

use std::collections::VecDeque;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::backoff::Backoffer;
use crate::error::Error;
use crate::key::Key;
use crate::op::{IdMap, Operation};
use crate::pd::{LocateBy, LocateRegion};
use crate::region::RegionRef;
use crate::route::replica::ReplicaRead;
use crate::route::sender::{RegionCall, RegionOutcome};
use crate::rpc::{KvRequest, KvResponse, RequestTags, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant, earliest};
use crate::view::ClusterView;

/// What a multi-key operation sends and how it merges the answers.
pub trait KeyPlan {
    /// One unit of work (a key, a key-value pair, a mutation...).
    type Item;
    /// The operation's result.
    type Output;

    /// The key that decides the item's region.
    fn key(item: &Self::Item) -> &Key;
    /// The item's size for the batch byte limit.
    fn size(item: &Self::Item) -> usize;
    /// `(max items, max bytes)` per request; a batch closes when either is
    /// reached (a single oversized item still forms a batch).
    fn batch_limits(&self) -> (usize, usize);
    /// The request for one batch, all in one region, sorted by key; called
    /// for every attempt, so a retry carries what the plan knows then.
    fn build(&mut self, batch: &[Self::Item]) -> KvRequest;
    /// Per-attempt RPC timeout.
    fn timeout(&self) -> Duration;
    /// Takes a successful response for `batch`.
    fn merge(&mut self, batch: Vec<Self::Item>, response: KvResponse) -> Result<(), Error>;
    /// `batch`, for which at least one request was built, comes back to be
    /// located and built again (its region was wrong); `maybe_applied` says
    /// an attempt lost its answer, so a store may have applied the request
    /// nonetheless.
    fn relocated(&mut self, _batch: &[Self::Item], _maybe_applied: bool) {}
    /// Produces the result once every batch has been merged.
    fn finish(self) -> Self::Output;
}

enum Child<I> {
    /// Boxed: inline, the call would make every move of the fan-out (into
    /// the driver's future, in and out of the children) copy the call's
    /// few hundred bytes, which costs more than the one allocation.
    Call(Box<RegionCall>, Vec<I>),
    Locate(Box<LocateRegion>),
}

/// Children by index; the first lives inline.
type Children<I> = SmallVec<[Option<Child<I>>; 1]>;

/// A FIFO of child indexes whose first entry lives inline, so an operation
/// with one child at a time never allocates for it.
#[derive(Debug, Default)]
struct ReadyQueue {
    first: Option<usize>,
    rest: VecDeque<usize>,
}

impl ReadyQueue {
    fn push_back(&mut self, idx: usize) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(idx);
        } else {
            self.rest.push_back(idx);
        }
    }

    fn front(&self) -> Option<usize> {
        self.first.or_else(|| self.rest.front().copied())
    }

    fn pop_front(&mut self) -> Option<usize> {
        self.first.take().or_else(|| self.rest.pop_front())
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }
}

/// Runs a [`KeyPlan`] over a set of items.
pub struct KeyFanout<P: KeyPlan> {
    view: Arc<ClusterView>,
    plan: Option<P>,
    /// Items not yet sent (no cached region, or handed back by `Relocate`),
    /// sorted by key.
    pending: Vec<P::Item>,
    children: Children<P::Item>,
    /// Children that may have RPCs to hand out, so `poll_rpc` does not scan
    /// every child ever started (a batch can have thousands).
    ready: ReadyQueue,
    live: usize,
    locating: bool,
    ids: IdMap<usize>,
    backoffer: Backoffer,
    /// The backoffer of the last batch handed back by `Relocate`. Its items'
    /// next attempt continues with it, so repeated region errors back off
    /// exponentially, as client-go's batch loop does with one backoffer;
    /// a fresh fork would restart every sleep at its base. Boxed, as the
    /// tags and the replica read below: rarely set, and the fan-out moves
    /// with every operation (into the driver's future, in and out of a
    /// parent), so its size is copied each time.
    relocated: Option<Box<Backoffer>>,
    started: bool,
    /// Stamped into every request built (priority, source, resource
    /// group); none: the defaults.
    tags: Option<Box<RequestTags>>,
    /// Where the region calls send; none: the leader.
    replica_read: Option<Box<ReplicaRead>>,
    /// Attempts whose answer was lost (see [`KeyFanout::lost_answers`]).
    lost_answers: u32,
    result: Option<Result<P::Output, Error>>,
}

impl<P: KeyPlan> std::fmt::Debug for KeyFanout<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFanout")
            .field("pending", &self.pending.len())
            .field("live", &self.live)
            .finish()
    }
}

impl<P: KeyPlan> KeyFanout<P> {
    /// Prepares `plan` over `items` (any order; they are sorted by key,
    /// stably, so equal keys keep their relative order).
    pub fn new(
        view: Arc<ClusterView>,
        plan: P,
        mut items: Vec<P::Item>,
        backoffer: Backoffer,
    ) -> Self {
        items.sort_by(|a, b| P::key(a).cmp(P::key(b)));
        KeyFanout {
            view,
            plan: Some(plan),
            pending: items,
            children: SmallVec::new(),
            ready: ReadyQueue::default(),
            live: 0,
            locating: false,
            ids: IdMap::new(),
            backoffer,
            relocated: None,
            started: false,
            tags: None,
            replica_read: None,
            lost_answers: 0,
            result: None,
        }
    }

    /// Requests this fan-out sent whose answer was lost (a transport error
    /// or deadline): a store may have applied each of them. Attempts
    /// answered with a region error were not applied; attempts abandoned
    /// when the fan-out failed are not counted (their answers are dropped).
    /// A parent whose outcome depends on whether a write may have landed
    /// (client-go's undetermined errors) reads it once the fan-out is over.
    pub fn lost_answers(&self) -> u32 {
        self.lost_answers
    }

    /// Stamps `tags` into the context of every request this fan-out sends.
    pub fn with_tags(mut self, tags: &RequestTags) -> Self {
        self.tags = (!tags.is_empty()).then(|| Box::new(tags.clone()));
        self
    }

    /// Sends as a replica read as `read` says (snapshot reads only: see
    /// [`RegionCall::with_replica_read`]).
    pub fn with_replica_read(mut self, read: &ReplicaRead) -> Self {
        self.set_replica_read(read);
        self
    }

    /// [`KeyFanout::with_replica_read`] in place, for a caller that holds
    /// the fan-out already: no move of the whole operation in and out.
    pub fn set_replica_read(&mut self, read: &ReplicaRead) {
        self.replica_read = (*read != ReplicaRead::leader()).then(|| Box::new(read.clone()));
    }

    /// The backoffer with every finished child's sleeps folded in: a
    /// parent running fan-outs one after another merges it back, so the
    /// sleeps of its steps add up against one budget, as client-go's
    /// sequential steps share one `Backoffer`.
    pub fn backoffer(&self) -> &Backoffer {
        &self.backoffer
    }

    fn fail(&mut self, e: Error) {
        if self.result.is_none() {
            self.result = Some(Err(e));
        }
        for child in self.children.iter().flatten() {
            if let Child::Call(call, _) = child {
                self.lost_answers += call.lost_answers();
            }
        }
        self.children.clear();
        self.ready.clear();
        self.live = 0;
        self.pending.clear();
    }

    fn add_child(&mut self, mut child: Child<P::Item>, now: Instant) {
        match &mut child {
            Child::Call(call, _) => call.start(now),
            Child::Locate(locate) => locate.start(now),
        }
        self.children.push(Some(child));
        self.live += 1;
        let idx = self.children.len() - 1;
        self.ready.push_back(idx);
        self.check_child(idx, now);
    }

    /// Groups the pending items by cached region and sends them; starts a
    /// locate for the first item without a cached region.
    fn plan_batches(&mut self, now: Instant) {
        if self.result.is_some() {
            return;
        }
        let Some(plan) = self.plan.as_ref() else {
            return;
        };
        let (max_count, max_bytes) = plan.batch_limits();
        let max_count = max_count.max(1);
        let timeout = plan.timeout();
        // One item (every point operation): its call, or its region's
        // locate, at once, as the grouping below would make them.
        if let [item] = self.pending.as_slice() {
            match self.view.regions.locate_key(P::key(item).as_bytes(), now) {
                Some(region) => {
                    let items = std::mem::take(&mut self.pending);
                    let call = self.region_call(region, items, timeout);
                    self.add_child(call, now);
                }
                None => self.locate_pending(now),
            }
            self.maybe_finish();
            return;
        }
        let mut items = std::mem::take(&mut self.pending);
        // Cut the sorted items into runs, each a batch for one region or a
        // stretch without a cached region: `(first index, region)`.
        let mut runs: SmallVec<[(usize, Option<RegionRef>); 2]> = SmallVec::new();
        let mut region: Option<RegionRef> = None;
        let (mut batch_len, mut batch_bytes) = (0usize, 0usize);
        for (i, item) in items.iter().enumerate() {
            let key = P::key(item).as_bytes();
            let same = matches!(&region, Some(r) if r.contains(key));
            if !same {
                region = self.view.regions.locate_key(key, now);
                let unrouted_run_continues = region.is_none()
                    && runs.last().is_some_and(|(_, r): &(usize, Option<RegionRef>)| r.is_none());
                if !unrouted_run_continues {
                    runs.push((i, region.clone()));
                }
                (batch_len, batch_bytes) = (0, 0);
                if region.is_none() {
                    continue;
                }
            }
            let size = P::size(item);
            if batch_len > 0 && (batch_len >= max_count || batch_bytes + size > max_bytes) {
                runs.push((i, region.clone()));
                (batch_len, batch_bytes) = (0, 0);
            }
            batch_len += 1;
            batch_bytes += size;
        }
        // Split from the back, so the first run keeps the items' own vector:
        // a one-batch operation (every point read and write) moves it into
        // its batch without allocating.
        let mut batches: SmallVec<[(RegionRef, Vec<P::Item>); 1]> = SmallVec::new();
        let mut unrouted_runs: SmallVec<[Vec<P::Item>; 1]> = SmallVec::new();
        for (start, region) in runs.into_iter().rev() {
            let run = if start == 0 { std::mem::take(&mut items) } else { items.split_off(start) };
            match region {
                Some(region) => batches.push((region, run)),
                None => unrouted_runs.push(run),
            }
        }
        let unrouted: Vec<P::Item> = match unrouted_runs.len() {
            0 => Vec::new(),
            1 => unrouted_runs.pop().unwrap_or_default(),
            _ => unrouted_runs.into_iter().rev().flatten().collect(),
        };
        let calls: SmallVec<[Child<P::Item>; 1]> = batches
            .into_iter()
            .rev()
            .map(|(region, items)| self.region_call(region, items, timeout))
            .collect();
        self.pending = unrouted;
        self.locate_pending(now);
        for call in calls {
            self.add_child(call, now);
        }
        self.maybe_finish();
    }

    /// Starts locating the first pending item's region, unless nothing is
    /// pending or a locate runs already (its answer routes them all).
    fn locate_pending(&mut self, now: Instant) {
        let Some(first) = self.pending.first() else {
            return;
        };
        if self.locating {
            return;
        }
        let key = P::key(first).clone();
        self.locating = true;
        let locate =
            LocateRegion::new(self.view.clone(), LocateBy::Key(key), self.backoffer.fork());
        self.add_child(Child::Locate(Box::new(locate)), now);
    }

    /// The call of one batch: `items` in `region`.
    fn region_call(
        &mut self,
        region: RegionRef,
        items: Vec<P::Item>,
        timeout: Duration,
    ) -> Child<P::Item> {
        let backoffer = match self.relocated.take() {
            // The relocated batch keeps its own schedule (so its sleeps
            // keep growing) but takes in what was slept since it was
            // handed back, e.g. by the locate that found its new region:
            // the budget counts every sleep (a PD outage during that
            // locate must not let the operation sleep past its budget).
            Some(mut bo) => {
                bo.merge_from(&self.backoffer);
                *bo
            }
            None => self.backoffer.fork(),
        };
        // The fan-out keeps the items and builds each attempt's request
        // from them (`poll_rpc`). A new call reads from the leader
        // already: only another read is set (which copies the call and its
        // preferences).
        let mut call = RegionCall::new(self.view.clone(), region, timeout, backoffer);
        if let Some(read) = &self.replica_read {
            call = call.with_replica_read(read);
        }
        Child::Call(Box::new(call), items)
    }

    fn maybe_finish(&mut self) {
        if self.result.is_none()
            && self.live == 0
            && self.pending.is_empty()
            && let Some(plan) = self.plan.take()
        {
            self.result = Some(Ok(plan.finish()));
        }
    }

    /// Collects a finished child, if `idx` has finished.
    fn check_child(&mut self, idx: usize, now: Instant) {
        let Some(slot) = self.children.get_mut(idx) else {
            return;
        };
        /// A finished child's outcome.
        enum Finished {
            Call(Result<RegionOutcome, Error>),
            Locate(Result<(), Error>),
        }
        let finished = match slot {
            Some(Child::Call(call, _)) => call.poll_result().map(Finished::Call),
            Some(Child::Locate(locate)) => {
                locate.poll_result().map(|outcome| Finished::Locate(outcome.map(drop)))
            }
            None => None,
        };
        let Some(finished) = finished else {
            return;
        };
        let Some(child) = slot.take() else {
            return;
        };
        self.live -= 1;
        match (child, finished) {
            (Child::Call(mut call, items), Finished::Call(outcome)) => {
                self.lost_answers += call.lost_answers();
                let child_backoffer = call.take_backoffer();
                if let Some(bo) = &child_backoffer {
                    self.backoffer.merge_from(bo);
                }
                match outcome {
                    Ok(RegionOutcome::Response(resp)) => {
                        let merged = match self.plan.as_mut() {
                            Some(plan) => plan.merge(items, resp),
                            None => Ok(()),
                        };
                        if let Err(e) = merged {
                            self.fail(e);
                            return;
                        }
                        self.maybe_finish();
                    }
                    Ok(RegionOutcome::Relocate) => {
                        if let Some(plan) = self.plan.as_mut()
                            && call.attempts() > 0
                        {
                            plan.relocated(&items, call.lost_answers() > 0);
                        }
                        if let Some(bo) = child_backoffer {
                            let longer = self
                                .relocated
                                .as_ref()
                                .is_none_or(|kept| kept.total_sleep() <= bo.total_sleep());
                            if longer {
                                self.relocated = Some(Box::new(bo));
                            }
                        }
                        self.requeue(items);
                        self.plan_batches(now);
                    }
                    Err(e) => self.fail(e),
                }
            }
            (Child::Locate(mut locate), Finished::Locate(outcome)) => {
                self.locating = false;
                if let Some(bo) = locate.take_backoffer() {
                    self.backoffer.merge_from(&bo);
                }
                match outcome {
                    // The region is cached now: route what was waiting.
                    Ok(()) => self.plan_batches(now),
                    Err(e) => self.fail(e),
                }
            }
            // A child's outcome is of its own kind.
            (Child::Call(..), Finished::Locate(_)) | (Child::Locate(_), Finished::Call(_)) => {}
        }
    }

    /// Puts items back into the sorted pending list.
    fn requeue(&mut self, mut items: Vec<P::Item>) {
        items.append(&mut self.pending);
        items.sort_by(|a, b| P::key(a).cmp(P::key(b)));
        self.pending = items;
    }
}

impl<P: KeyPlan> Operation for KeyFanout<P> {
    type Output = P::Output;

    fn start(&mut self, now: Instant) {
        if !self.started {
            self.started = true;
            self.plan_batches(now);
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        while let Some(idx) = self.ready.front() {
            let rpc = match self.children.get_mut(idx) {
                // The plan lives until every child is over.
                Some(Some(Child::Call(call, items))) if let Some(plan) = self.plan.as_mut() => {
                    let tags = self.tags.as_deref();
                    match call.poll_rpc(|_attempt| build(plan, tags, items)) {
                        Some(Ok(rpc)) => Some(rpc),
                        Some(Err(e)) => {
                            if let Some(bo) = call.take_backoffer() {
                                self.backoffer.merge_from(&bo);
                            }
                            self.fail(e);
                            return None;
                        }
                        None => None,
                    }
                }
                Some(Some(Child::Locate(locate))) => locate.poll_rpc(),
                _ => None,
            };
            match rpc {
                // Stay at the front: the child may have more to send.
                Some(rpc) => return Some(self.ids.wrap(idx, rpc)),
                None => {
                    self.ready.pop_front();
                }
            }
        }
        None
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((idx, child_id)) = self.ids.take(id) else {
            return;
        };
        match self.children.get_mut(idx) {
            Some(Some(Child::Call(call, _))) => call.on_response(child_id, response, now),
            Some(Some(Child::Locate(locate))) => locate.on_response(child_id, response, now),
            _ => return,
        }
        self.ready.push_back(idx);
        self.check_child(idx, now);
    }

    fn on_timeout(&mut self, now: Instant) {
        // A child that fails here fails the fan-out, which drops every
        // child: the loop re-reads the length each round.
        let mut idx = 0;
        while idx < self.children.len() {
            let due = match &self.children[idx] {
                Some(Child::Call(call, _)) => call.poll_timeout(),
                Some(Child::Locate(locate)) => locate.poll_timeout(),
                None => None,
            };
            if due.is_some_and(|t| t <= now) {
                match &mut self.children[idx] {
                    Some(Child::Call(call, _)) => call.on_timeout(now),
                    Some(Child::Locate(locate)) => locate.on_timeout(now),
                    None => {}
                }
                self.ready.push_back(idx);
                self.check_child(idx, now);
            }
            idx += 1;
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.children.iter().flatten().fold(None, |acc, child| {
            let t = match child {
                Child::Call(call, _) => call.poll_timeout(),
                Child::Locate(locate) => locate.poll_timeout(),
            };
            earliest(acc, t)
        })
    }

    fn poll_result(&mut self) -> Option<Result<P::Output, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.backoffer)
    }

    fn lost_answers(&self) -> u32 {
        self.lost_answers
    }
}

/// The request of `plan` for `items`, with the fan-out's `tags`.
fn build<P: KeyPlan>(plan: &mut P, tags: Option<&RequestTags>, items: &[P::Item]) -> KvRequest {
    let mut request = plan.build(items);
    if let Some(tags) = tags {
        tags.stamp(request.context_mut());
    }
    request
}

/// A single-key command: the key is the only item, one request, one answer.
/// [`Point`] adapts it to [`KeyPlan`], so single-key operations share the
/// fan-out machinery (cache miss, region errors, relocation) with batches.
pub trait PointPlan {
    /// The operation's result.
    type Output;
    /// The request for `key`, built for every attempt.
    fn build(&mut self, key: &Key) -> KvRequest;
    /// Takes the answer.
    fn merge(&mut self, response: KvResponse) -> Result<(), Error>;
    /// The key is about to be located and its request built again after
    /// a sent attempt found its region wrong ([`KeyPlan::relocated`]).
    fn relocated(&mut self, _maybe_applied: bool) {}
    /// The result.
    fn finish(self) -> Self::Output;
}

/// Runs a [`PointPlan`] as a one-item [`KeyPlan`].
#[derive(Debug)]
pub struct Point<P> {
    plan: P,
    timeout: Duration,
}

impl<P: PointPlan> Point<P> {
    /// A fan-out that sends `plan` for `key` to the key's region.
    pub fn fanout(
        view: &Arc<ClusterView>,
        plan: P,
        key: Key,
        timeout: Duration,
        backoffer: Backoffer,
    ) -> KeyFanout<Point<P>> {
        KeyFanout::new(view.clone(), Point { plan, timeout }, vec![key], backoffer)
    }
}

impl<P: PointPlan> KeyPlan for Point<P> {
    type Item = Key;
    type Output = P::Output;
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (1, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        // The fan-out never builds an empty batch.
        self.plan.build(batch.first().unwrap_or(&Key::EMPTY))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        self.plan.merge(response)
    }
    fn relocated(&mut self, _batch: &[Key], maybe_applied: bool) {
        self.plan.relocated(maybe_applied);
    }
    fn finish(self) -> P::Output {
        self.plan.finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tikv_proto::{errorpb, kvrpcpb};

    use super::*;
    use crate::testing::{FakeCluster, Fault, drive, view};

    /// `RawBatchPut` of every key, recording what the fan-out asks of it.
    #[derive(Default)]
    struct RecordingPut {
        builds: u32,
        relocated: Vec<bool>,
    }

    impl KeyPlan for RecordingPut {
        type Item = Key;
        type Output = (u32, Vec<bool>);
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
            self.builds += 1;
            let pairs = batch
                .iter()
                .map(|k| kvrpcpb::KvPair {
                    key: k.to_bytes(),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                })
                .collect();
            KvRequest::from(kvrpcpb::RawBatchPutRequest { pairs, ..Default::default() })
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(2)
        }
        fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
            match response {
                KvResponse::RawBatchPut(_) => Ok(()),
                other => Err(Error::malformed(other.name())),
            }
        }
        fn relocated(&mut self, _batch: &[Key], maybe_applied: bool) {
            self.relocated.push(maybe_applied);
        }
        fn finish(self) -> (u32, Vec<bool>) {
            (self.builds, self.relocated)
        }
    }

    fn put(view: &Arc<ClusterView>, keys: &[&'static str]) -> KeyFanout<RecordingPut> {
        let keys = keys.iter().map(|k| Key::from(*k)).collect();
        KeyFanout::new(
            view.clone(),
            RecordingPut::default(),
            keys,
            view.backoffer(Duration::from_secs(20)),
        )
    }

    fn server_is_busy() -> Fault {
        Fault::Region(Box::new(errorpb::Error {
            message: "busy".into(),
            server_is_busy: Some(Default::default()),
            ..Default::default()
        }))
    }

    /// Every attempt gets a request built from the plan's state, and a
    /// retry says so in its context.
    #[test]
    fn each_attempt_builds_its_request() {
        let mut c = FakeCluster::new(&[]);
        let v = view();
        c.fault("raw_batch_put", server_is_busy());
        let mut op = put(&v, &["a"]);
        let (log, result) = drive(&mut op, &mut c);
        let (builds, relocated) = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        assert_eq!(builds, 2, "{log}");
        assert!(relocated.is_empty());
        let retries: Vec<bool> = c
            .received
            .iter()
            .filter(|r| matches!(r, KvRequest::RawBatchPut(_)))
            .map(|r| r.context().is_some_and(|ctx| ctx.is_retry_request))
            .collect();
        assert_eq!(retries, [false, true]);
        assert_eq!(op.lost_answers(), 0, "a region error is an answer: nothing applied");
    }

    /// A point operation looks its key's region up once per planning: on
    /// an empty cache the planning misses, the locate misses too (it looks
    /// again before asking PD) and the planning after it hits; once cached,
    /// one hit.
    #[test]
    fn a_point_operation_looks_its_region_up_once_per_planning() {
        let mut c = FakeCluster::new(&[]);
        let v = view();
        let before = v.regions.lookup_counts();
        let (log, result) = drive(put(&v, &["a"]), &mut c);
        result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        let first = v.regions.lookup_counts().since(before);
        assert_eq!((first.hits, first.misses), (1, 2), "{log}");
        let (log, result) = drive(put(&v, &["a"]), &mut c);
        result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        let both = v.regions.lookup_counts().since(before);
        assert_eq!((both.hits, both.misses), (2, 2), "{log}");
    }

    /// Two batches asleep until the same instant: the first woken runs out
    /// of budget there and fails the fan-out, which drops every batch; the
    /// other, due at that instant too, is not woken any more.
    #[test]
    fn a_batch_failing_in_a_wake_up_drops_the_others_due_then() {
        let mut c = FakeCluster::new(&["m"]);
        let v = view();
        let _ = drive(put(&v, &["a", "z"]), &mut c);
        for _ in 0..2 {
            let not_leader = errorpb::Error {
                message: "no leader".into(),
                not_leader: Some(Default::default()),
                ..Default::default()
            };
            c.fault("raw_batch_put", Fault::Region(Box::new(not_leader)));
        }
        // Room for one 2 ms sleep, not for a second (a backoffer refuses a
        // sleep once what it slept reaches its budget).
        let keys = vec![Key::from("a"), Key::from("z")];
        let mut op = KeyFanout::new(
            v.clone(),
            RecordingPut::default(),
            keys,
            v.backoffer(Duration::from_millis(2)),
        );
        // Both batches are answered at the same instant, so both sleep
        // (`BoRegionScheduling`, 2 ms) until the same one.
        let mut now = Instant::ZERO;
        op.start(now);
        let mut sent = Vec::new();
        while let Some(rpc) = op.poll_rpc() {
            sent.push(rpc);
        }
        assert_eq!(sent.len(), 2, "{sent:?}");
        now += Duration::from_millis(1);
        for rpc in &sent {
            op.on_response(rpc.id, c.handle(rpc), now);
        }
        assert!(op.poll_rpc().is_none());
        // Meanwhile both regions are dropped from the cache: on waking each
        // batch finds no replica left and needs a second sleep.
        for region in v.regions.snapshot() {
            v.regions.invalidate(region.ver_id(), crate::region::InvalidReason::Other);
        }
        now = op.poll_timeout().expect("both batches sleep");
        op.on_timeout(now);
        match op.poll_result() {
            Some(Err(Error::BackoffExhausted { .. })) => {}
            other => panic!("expected exhaustion, got {other:?}"),
        }
        assert!(op.poll_timeout().is_none(), "nothing left to wake");
    }

    /// A transport failure may have been applied; the fan-out reports it
    /// once it is over, even when the attempt was retried successfully.
    #[test]
    fn lost_answers_are_reported() {
        let mut c = FakeCluster::new(&["m"]);
        let v = view();
        c.fault("raw_batch_put", Fault::Rpc(RpcError::DeadlineExceeded));
        let mut op = put(&v, &["a", "z"]);
        let (log, result) = drive(&mut op, &mut c);
        let (builds, _) = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        // Two batches; the one that lost its answer (a deadline: the
        // leader answers its liveness probe and stays a candidate) retries
        // on the leader after a backoff.
        assert_eq!(builds, 3, "{log}");
        assert_eq!(op.lost_answers(), 1, "{log}");
    }

    /// When one batch fails, the lost answers of the batches still running
    /// are reported too: the parent decides at that moment.
    #[test]
    fn a_failed_fan_out_reports_the_lost_answers_of_live_batches() {
        let mut c = FakeCluster::new(&["m"]);
        let v = view();
        // The first batch's request loses its answer (and sleeps before its
        // retry); the second's meets an error that is not retried.
        c.fault("raw_batch_put", Fault::Rpc(RpcError::Unavailable("reset".into())));
        c.fault(
            "raw_batch_put",
            Fault::Region(Box::new(errorpb::Error {
                message: "too large".into(),
                raft_entry_too_large: Some(Default::default()),
                ..Default::default()
            })),
        );
        let mut op = put(&v, &["a", "z"]);
        let (log, result) = drive(&mut op, &mut c);
        assert!(matches!(result, Err(Error::Region(_))), "{log}");
        assert_eq!(op.lost_answers(), 1, "{log}");
    }

    /// A batch handed back tells the plan whether an attempt may have
    /// applied; one handed back before any request was built is not
    /// reported.
    #[test]
    fn relocated_batches_say_whether_they_may_have_applied() {
        let mut c = FakeCluster::new(&[]);
        let v = view();
        c.fault("raw_batch_put", Fault::Rpc(RpcError::DeadlineExceeded));
        c.fault("raw_batch_put", Fault::SplitAt(b"m".to_vec()));
        let mut op = put(&v, &["a", "z"]);
        let (log, result) = drive(&mut op, &mut c);
        let (_, relocated) = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        assert_eq!(relocated, [true], "{log}");
        assert_eq!(op.lost_answers(), 1, "{log}");
    }
}
