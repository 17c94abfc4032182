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
use crate::op::{IdMap, Operation};
use crate::pd::{LoadRegions, LocateBy, LocateRegion};
use crate::region::RegionRef;
use crate::route::sender::{RegionCall, RegionOutcome};
use crate::rpc::{KvRequest, KvResponse, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// What a range operation sends per region and how it merges.
pub trait RangePlan {
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

enum Step {
    Idle,
    Load(Box<LoadRegions>),
    Locate(Box<LocateRegion>),
    Call(Box<RegionCall>, KeyRange),
    Done,
}

/// Walks `range` forward or in reverse, one region at a time.
pub struct RangeWalk<P: RangePlan> {
    view: Arc<ClusterView>,
    plan: Option<P>,
    range: KeyRange,
    reverse: bool,
    /// Forward: the next start key. Reverse: the next (exclusive) upper end;
    /// empty means unbounded.
    cursor: Key,
    step: Step,
    backoffer: Option<Backoffer>,
    /// Counts children; RPC ids carry it so a late answer meant for an
    /// earlier child is dropped rather than fed to the current one.
    epoch: u64,
    ids: IdMap<u64>,
    /// PD refused `BatchScanRegions` (an old PD): locate one region at a time.
    no_batch_load: bool,
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
            step: Step::Idle,
            backoffer: Some(backoffer),
            epoch: 0,
            ids: IdMap::new(),
            no_batch_load: false,
            result: None,
        }
    }

    fn locate_by(&self) -> LocateBy {
        if self.reverse {
            LocateBy::EndKey(self.cursor.clone())
        } else {
            LocateBy::Key(self.cursor.clone())
        }
    }

    fn finish(&mut self, result: Result<(), Error>) {
        self.step = Step::Done;
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
        self.epoch += 1;
        if !self.reverse && !self.no_batch_load {
            let rest = KeyRange { start: self.cursor.clone(), end: self.range.end.clone() };
            let mut load =
                Box::new(LoadRegions::new(self.view.clone(), &rest, REGIONS_PER_LOAD, backoffer));
            load.start(now);
            self.step = Step::Load(load);
        } else {
            let mut locate =
                Box::new(LocateRegion::new(self.view.clone(), self.locate_by(), backoffer));
            locate.start(now);
            self.step = Step::Locate(locate);
        }
        self.check(now);
    }

    /// After a batch load: the cursor's region is cached now, or (PD had
    /// nothing usable for it) it is located alone.
    fn after_load(&mut self, now: Instant) {
        if let Some(region) = self.view.regions.locate_key(self.cursor.as_bytes(), now) {
            self.send(region, now);
            return;
        }
        let Some(backoffer) = self.backoffer.take() else {
            return;
        };
        self.epoch += 1;
        let mut locate =
            Box::new(LocateRegion::new(self.view.clone(), self.locate_by(), backoffer));
        locate.start(now);
        self.step = Step::Locate(locate);
        self.check(now);
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
        let (Some(plan), Some(backoffer)) = (self.plan.as_ref(), self.backoffer.take()) else {
            return;
        };
        self.epoch += 1;
        let mut call =
            Box::new(RegionCall::new(self.view.clone(), region, plan.timeout(), backoffer));
        call.start(now);
        self.step = Step::Call(call, part);
        self.check(now);
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

    fn check(&mut self, now: Instant) {
        match &mut self.step {
            Step::Load(load) => {
                let Some(outcome) = load.poll_result() else {
                    return;
                };
                self.backoffer = load.take_backoffer();
                self.step = Step::Idle;
                match outcome {
                    Ok(_) => self.after_load(now),
                    Err(Error::Rpc(RpcError::Unimplemented(_))) => {
                        self.no_batch_load = true;
                        self.after_load(now);
                    }
                    Err(e) => self.finish(Err(e)),
                }
            }
            Step::Locate(locate) => {
                let Some(outcome) = locate.poll_result() else {
                    return;
                };
                self.backoffer = locate.take_backoffer();
                self.step = Step::Idle;
                match outcome {
                    Ok(region) => self.send(region, now),
                    Err(e) => self.finish(Err(e)),
                }
            }
            Step::Call(call, part) => {
                let Some(outcome) = call.poll_result() else {
                    return;
                };
                self.backoffer = call.take_backoffer();
                let part = std::mem::take(part);
                self.step = Step::Idle;
                match outcome {
                    Ok(RegionOutcome::Response(resp)) => {
                        let more = match self.plan.as_mut() {
                            Some(plan) => plan.merge(&part, resp),
                            None => Ok(false),
                        };
                        match more {
                            Ok(true) if !self.advance(&part) => self.next_region(now),
                            Ok(_) => self.finish(Ok(())),
                            Err(e) => self.finish(Err(e)),
                        }
                    }
                    Ok(RegionOutcome::Relocate) => self.next_region(now),
                    Err(e) => self.finish(Err(e)),
                }
            }
            Step::Idle | Step::Done => {}
        }
    }
}

impl<P: RangePlan> Operation for RangeWalk<P> {
    type Output = P::Output;

    fn start(&mut self, now: Instant) {
        if matches!(self.step, Step::Idle) && self.result.is_none() {
            self.next_region(now);
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        let rpc = match &mut self.step {
            Step::Load(l) => l.poll_rpc(),
            Step::Locate(l) => l.poll_rpc(),
            Step::Call(c, part) => {
                let plan = self.plan.as_mut()?;
                match c.poll_rpc(|_attempt| plan.build(part))? {
                    Ok(rpc) => Some(rpc),
                    Err(e) => {
                        self.backoffer = c.take_backoffer();
                        self.finish(Err(e));
                        return None;
                    }
                }
            }
            _ => None,
        }?;
        Some(self.ids.wrap(self.epoch, rpc))
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((epoch, id)) = self.ids.take(id) else {
            return;
        };
        if epoch != self.epoch {
            return;
        }
        match &mut self.step {
            Step::Load(l) => l.on_response(id, response, now),
            Step::Locate(l) => l.on_response(id, response, now),
            Step::Call(c, _) => c.on_response(id, response, now),
            _ => return,
        }
        self.check(now);
    }

    fn on_timeout(&mut self, now: Instant) {
        match &mut self.step {
            Step::Load(l) => l.on_timeout(now),
            Step::Locate(l) => l.on_timeout(now),
            Step::Call(c, _) => c.on_timeout(now),
            _ => return,
        }
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.step {
            Step::Load(l) => l.poll_timeout(),
            Step::Locate(l) => l.poll_timeout(),
            Step::Call(c, _) => c.poll_timeout(),
            _ => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<P::Output, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        self.backoffer.as_ref()
    }
}
