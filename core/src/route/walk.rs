//! Range requests: walk a key range region by region, in order.
//!
//! client-go's raw `Scan`, `ReverseScan`, `DeleteRange` and `Checksum` all
//! loop this way: locate the region at the cursor, send the part of the range
//! inside it, then move the cursor to the region's end (or, in reverse, its
//! start). Written once here, parameterised by a [`RangePlan`].

use std::sync::Arc;

use crate::backoff::Backoffer;
use crate::error::Error;
use crate::key::{Key, KeyRange};
use crate::op::{HandBack, Operation, StepEvent, StepSlot};
use crate::pd::{LoadRegions, LocateBy, LocateRegion};
use crate::region::RegionRef;
use crate::route::replica::ReplicaRead;
use crate::route::sender::{RegionCall, RegionOutcome};
use crate::rpc::{KvRequest, KvResponse, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// What a range operation sends per region and how it merges. A plan is
/// owned data: it travels with each region's call and back.
pub trait RangePlan: Send + 'static {
    /// The operation's result.
    type Output;
    /// The request for `part`, the piece of the range inside one region;
    /// called for every attempt.
    fn build(&mut self, part: &KeyRange) -> KvRequest;
    /// Per-attempt RPC timeout.
    fn timeout(&self) -> Duration;
    /// Takes the response for `part`; returns `false` to stop early (a scan
    /// that reached its limit).
    fn merge(&mut self, part: &KeyRange, response: KvResponse) -> Result<bool, Error>;
    /// The result, once the walk is over.
    fn finish(self) -> Self::Output;
}

/// Regions loaded per PD round on a forward cache miss (client-go's range
/// tasks load 128 regions at a time).
const REGIONS_PER_LOAD: usize = 128;

/// One region's call, carrying the plan that builds its request on every
/// attempt; plan, part and backoffer come back with the outcome.
struct PartCall<P> {
    call: RegionCall,
    plan: Option<P>,
    part: KeyRange,
    /// The request could not be encoded: the call is over.
    unsendable: Option<Error>,
}

/// How a region's call ended, with what it carried.
struct CallEnd<P> {
    plan: P,
    part: KeyRange,
    outcome: Result<RegionOutcome, Error>,
    backoffer: Option<Backoffer>,
}

impl<P: RangePlan> Operation for PartCall<P> {
    type Output = CallEnd<P>;
    fn start(&mut self, now: Instant) {
        self.call.start(now)
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        let plan = self.plan.as_mut()?;
        let part = &self.part;
        match self.call.poll_rpc(|_attempt| plan.build(part))? {
            Ok(rpc) => Some(rpc),
            Err(e) => {
                self.unsendable = Some(e);
                None
            }
        }
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.call.on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        self.call.on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.call.poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<CallEnd<P>, Error>> {
        let outcome = match self.unsendable.take() {
            Some(e) => Err(e),
            None => self.call.poll_result()?,
        };
        let plan = self.plan.take()?;
        let part = std::mem::take(&mut self.part);
        Some(Ok(CallEnd { plan, part, outcome, backoffer: self.call.take_backoffer() }))
    }
    fn lost_answers(&self) -> u32 {
        self.call.lost_answers()
    }
}

/// What the walk's current step ended with; every step hands the backoffer
/// back.
enum Done<P> {
    Loaded(Result<Vec<RegionRef>, Error>, Option<Backoffer>),
    Located(Result<RegionRef, Error>, Option<Backoffer>),
    Called(Box<CallEnd<P>>),
    /// A step that ended without its output (cannot happen with the
    /// children above, which always report `Ok`).
    Lost(Error),
}

/// Walks `range` forward or in reverse, one region at a time.
pub struct RangeWalk<P: RangePlan> {
    view: Arc<ClusterView>,
    /// The plan, while no region's call carries it.
    plan: Option<P>,
    range: KeyRange,
    reverse: bool,
    /// Forward: the next start key. Reverse: the next (exclusive) upper end;
    /// empty means unbounded.
    cursor: Key,
    step: StepSlot<Done<P>>,
    /// The walk's backoffer, while no step holds it.
    backoffer: Option<Backoffer>,
    /// The latest time the walk was given, for a step that ends while its
    /// request is built (an unencodable request).
    now: Instant,
    /// PD refused `BatchScanRegions` (an old PD): locate one region at a time.
    no_batch_load: bool,
    /// Where the region calls send (leader unless a replica read).
    replica_read: ReplicaRead,
    started: bool,
    result: Option<Result<P::Output, Error>>,
}

impl<P: RangePlan> std::fmt::Debug for RangeWalk<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeWalk")
            .field("range", &self.range)
            .field("reverse", &self.reverse)
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl<P: RangePlan> RangeWalk<P> {
    /// The walk's backoffer (it passes from step to step; `None` while a
    /// step holds it): a parent folds it back once the walk is over.
    pub fn backoffer(&self) -> Option<&Backoffer> {
        self.backoffer.as_ref()
    }

    /// Walks `range` with `plan`.
    pub fn new(
        view: Arc<ClusterView>,
        plan: P,
        range: KeyRange,
        reverse: bool,
        backoffer: Backoffer,
    ) -> Self {
        let cursor = if reverse { range.end.clone() } else { range.start.clone() };
        RangeWalk {
            view,
            plan: Some(plan),
            range,
            reverse,
            cursor,
            step: StepSlot::new(),
            backoffer: Some(backoffer),
            now: Instant::ZERO,
            no_batch_load: false,
            replica_read: ReplicaRead::leader(),
            started: false,
            result: None,
        }
    }

    /// Sends as a replica read as `read` says (snapshot reads only: see
    /// [`RegionCall::with_replica_read`]).
    pub fn with_replica_read(mut self, read: &ReplicaRead) -> Self {
        self.replica_read.clone_from(read);
        self
    }

    fn locate_by(&self) -> LocateBy {
        if self.reverse {
            LocateBy::EndKey(self.cursor.clone())
        } else {
            LocateBy::Key(self.cursor.clone())
        }
    }

    fn finish(&mut self, result: Result<(), Error>) {
        self.step.clear();
        self.result = Some(match result {
            Ok(()) => match self.plan.take() {
                Some(plan) => Ok(plan.finish()),
                None => return,
            },
            Err(e) => Err(e),
        });
    }

    /// Locates the region at the cursor (from the cache when possible).
    fn next_region(&mut self, now: Instant) {
        if self.range.is_empty() {
            self.finish(Ok(()));
            return;
        }
        let cached = if self.reverse {
            self.view.regions.locate_end_key(self.cursor.as_bytes(), now)
        } else {
            self.view.regions.locate_key(self.cursor.as_bytes(), now)
        };
        if let Some(region) = cached {
            self.send(region, now);
            return;
        }
        let Some(backoffer) = self.backoffer.take() else {
            return;
        };
        if !self.reverse && !self.no_batch_load {
            let rest = KeyRange { start: self.cursor.clone(), end: self.range.end.clone() };
            let load = LoadRegions::new(self.view.clone(), &rest, REGIONS_PER_LOAD, backoffer);
            let load = HandBack::new(load, LoadRegions::take_backoffer);
            self.step.start(load, |r| carried(r, Done::Loaded), now);
        } else {
            self.locate(backoffer, now);
        }
    }

    fn locate(&mut self, backoffer: Backoffer, now: Instant) {
        let locate = LocateRegion::new(self.view.clone(), self.locate_by(), backoffer);
        let locate = HandBack::new(locate, LocateRegion::take_backoffer);
        self.step.start(locate, |r| carried(r, Done::Located), now);
    }

    /// After a batch load: the cursor's region is cached now, or (PD had
    /// nothing usable for it) it is located alone.
    fn after_load(&mut self, now: Instant) {
        if let Some(region) = self.view.regions.locate_key(self.cursor.as_bytes(), now) {
            self.send(region, now);
            return;
        }
        if let Some(backoffer) = self.backoffer.take() {
            self.locate(backoffer, now);
        }
    }

    /// The part of the range inside `region`, starting at the cursor.
    fn part(&self, region: &RegionRef) -> KeyRange {
        let r_start = region.start_key();
        let r_end = region.end_key();
        if self.reverse {
            let start = if r_start > &self.range.start {
                r_start.clone()
            } else {
                self.range.start.clone()
            };
            KeyRange { start, end: self.cursor.clone() }
        } else {
            let end = match (self.range.end.is_empty(), r_end.is_empty()) {
                (true, _) => r_end.clone(),
                (false, true) => self.range.end.clone(),
                (false, false) => std::cmp::min(r_end, &self.range.end).clone(),
            };
            KeyRange { start: self.cursor.clone(), end }
        }
    }

    fn send(&mut self, region: RegionRef, now: Instant) {
        let part = self.part(&region);
        let (Some(plan), Some(backoffer)) = (self.plan.take(), self.backoffer.take()) else {
            return;
        };
        let call = RegionCall::new(self.view.clone(), region, plan.timeout(), backoffer)
            .with_replica_read(&self.replica_read);
        let call = PartCall { call, plan: Some(plan), part, unsendable: None };
        self.step.start(
            call,
            |r| r.map_or_else(Done::Lost, |end| Done::Called(Box::new(end))),
            now,
        );
    }

    /// Moves the cursor past `part`; true if the walk is over.
    fn advance(&mut self, part: &KeyRange) -> bool {
        if self.reverse {
            // Done when this part reached the range's start.
            if part.start <= self.range.start {
                return true;
            }
            self.cursor = part.start.clone();
            false
        } else {
            if part.end.is_empty() || (!self.range.end.is_empty() && part.end >= self.range.end) {
                return true;
            }
            self.cursor = part.end.clone();
            false
        }
    }

    /// Moves on when the current step has finished, until one is running.
    fn check(&mut self, now: Instant) {
        // The backoffer travels through the steps, so nothing is merged here.
        while let Some(event) = self.step.poll_event(None) {
            let StepEvent::Done(done) = event else { continue };
            match done {
                Done::Loaded(outcome, backoffer) => {
                    self.backoffer = backoffer;
                    match outcome {
                        Ok(_) => self.after_load(now),
                        Err(Error::Rpc(RpcError::Unimplemented(_))) => {
                            self.no_batch_load = true;
                            self.after_load(now);
                        }
                        Err(e) => self.finish(Err(e)),
                    }
                }
                Done::Located(outcome, backoffer) => {
                    self.backoffer = backoffer;
                    match outcome {
                        Ok(region) => self.send(region, now),
                        Err(e) => self.finish(Err(e)),
                    }
                }
                Done::Called(end) => {
                    let CallEnd { mut plan, part, outcome, backoffer } = *end;
                    self.backoffer = backoffer;
                    match outcome {
                        Ok(RegionOutcome::Response(resp)) => {
                            let more = plan.merge(&part, resp);
                            self.plan = Some(plan);
                            match more {
                                Ok(true) if !self.advance(&part) => self.next_region(now),
                                Ok(_) => self.finish(Ok(())),
                                Err(e) => self.finish(Err(e)),
                            }
                        }
                        Ok(RegionOutcome::Relocate) => {
                            self.plan = Some(plan);
                            self.next_region(now);
                        }
                        Err(e) => self.finish(Err(e)),
                    }
                }
                Done::Lost(e) => self.finish(Err(e)),
            }
        }
    }
}

/// A handed-back child's outcome as the walk's event.
fn carried<T, P>(
    result: Result<(Result<T, Error>, Option<Backoffer>), Error>,
    done: fn(Result<T, Error>, Option<Backoffer>) -> Done<P>,
) -> Done<P> {
    match result {
        Ok((outcome, backoffer)) => done(outcome, backoffer),
        Err(e) => Done::Lost(e),
    }
}

impl<P: RangePlan> Operation for RangeWalk<P> {
    type Output = P::Output;

    fn start(&mut self, now: Instant) {
        self.now = now;
        if !std::mem::replace(&mut self.started, true) && self.result.is_none() {
            self.next_region(now);
            self.check(now);
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        if let Some(rpc) = self.step.poll_rpc() {
            return Some(rpc);
        }
        // A region's request that cannot be encoded ends its call here.
        self.check(self.now);
        self.step.poll_rpc()
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.now = now;
        if self.step.on_response(id, response, now) {
            self.check(now);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.now = now;
        self.step.on_timeout(now);
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.step.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<P::Output, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        self.backoffer.as_ref()
    }
}
