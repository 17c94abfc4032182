//! The range-task runner (client-go `txnkv/rangetask.RangeTaskRunner`).
//!
//! A range is cut into tasks of `regions_per_task` consecutive regions each,
//! in key order, from the region cache (one PD `BatchScanRegions` round per
//! 128 uncached regions, one `GetRegion` per region from a PD without it).
//! Up to `concurrency` tasks run at once; each is an operation the
//! [`RangeTaskHandler`] builds for the task's key range. The first task that
//! fails ends the run with its error and drops every other task (client-go
//! cancels the run's context). Tasks cover key ranges, not regions: a region
//! that split or moved under a running task is the task's to re-locate (the
//! handlers built on [`crate::route::walk::RangeWalk`] re-locate the rest of
//! their range after a region error, so the remaining range is re-split
//! along the regions as they are now).
//!
//! Progress (regions counted by the split, regions the tasks reported done
//! or failed) is kept in a shared [`RangeTaskProgress`] the caller may read
//! from anywhere while the run goes on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::backoff::Backoffer;
use crate::error::Error;
use crate::key::{Key, KeyRange};
use crate::op::{IdMap, Operation, StepEvent, StepSlot};
use crate::pd::{LoadRegions, LocateBy, LocateRegion};
use crate::region::RegionRef;
use crate::rpc::{Response, Rpc, RpcError, RpcId};
use crate::time::Instant;
use crate::view::ClusterView;

/// Regions loaded per PD round while splitting (client-go's range tasks
/// load 128 regions at a time).
const REGIONS_PER_LOAD: usize = 128;

/// What one task, or a whole run, did (client-go `RangeTaskStat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeTaskStat {
    /// Regions handled.
    pub completed_regions: u64,
    /// Regions the task gave up on without failing the run.
    pub failed_regions: u64,
}

/// Builds the operation for one task.
pub trait RangeTaskHandler {
    /// The operation handling one task's range.
    type Task: Operation<Output = RangeTaskStat> + Send + 'static;

    /// The operation for the task covering `range` (about
    /// `regions_per_task` regions; the first starts at the run's start, the
    /// last ends at the run's end).
    fn task(&mut self, range: KeyRange) -> Self::Task;
}

/// A run's progress, shared with whoever watches it.
#[derive(Debug, Default)]
pub struct RangeTaskProgress {
    regions_found: AtomicU64,
    split_done: AtomicBool,
    regions_done: AtomicU64,
    regions_failed: AtomicU64,
    tasks_done: AtomicU64,
}

/// One reading of a [`RangeTaskProgress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeTaskProgressSnapshot {
    /// Regions the split has counted so far.
    pub regions_found: u64,
    /// The region total, once the split has reached the range's end.
    pub regions_total: Option<u64>,
    /// Regions the finished tasks handled.
    pub regions_done: u64,
    /// Regions the finished tasks gave up on.
    pub regions_failed: u64,
    /// Tasks finished.
    pub tasks_done: u64,
}

impl RangeTaskProgress {
    /// The counters now.
    pub fn snapshot(&self) -> RangeTaskProgressSnapshot {
        let regions_found = self.regions_found.load(Ordering::Relaxed);
        RangeTaskProgressSnapshot {
            regions_found,
            regions_total: self.split_done.load(Ordering::Relaxed).then_some(regions_found),
            regions_done: self.regions_done.load(Ordering::Relaxed),
            regions_failed: self.regions_failed.load(Ordering::Relaxed),
            tasks_done: self.tasks_done.load(Ordering::Relaxed),
        }
    }
}

/// What the split's PD lookups report.
enum Lookup {
    Loaded(Result<Vec<RegionRef>, Error>),
    Located(Result<RegionRef, Error>),
}

/// Where the split stands.
#[derive(Debug)]
struct Split {
    /// The next key to locate; `None` once the range's end is reached.
    cursor: Option<Key>,
    /// Where the task being assembled starts.
    task_start: Key,
    regions_in_task: usize,
    /// The cursor a batch load last ran for: a miss right after it is
    /// located alone (PD had nothing usable for that key in the batch).
    loaded_at: Option<Key>,
    /// PD refused `BatchScanRegions` (an old PD): locate one region at a time.
    no_batch_load: bool,
}

/// Runs a [`RangeTaskHandler`] over a range (module docs).
pub struct RangeTaskRunner<H: RangeTaskHandler> {
    view: Arc<ClusterView>,
    handler: H,
    range: KeyRange,
    regions_per_task: usize,
    split: Split,
    lookup: StepSlot<Lookup>,
    /// Tasks cut but not started: at most `concurrency` wait, as client-go's
    /// task channel holds.
    pending: VecDeque<KeyRange>,
    /// One slot per concurrent task.
    workers: Vec<StepSlot<Result<RangeTaskStat, Error>>>,
    /// Parent id → slot: 0 is the lookup, `i + 1` worker `i`.
    ids: IdMap<usize>,
    backoffer: Backoffer,
    progress: Arc<RangeTaskProgress>,
    stat: RangeTaskStat,
    started: bool,
    result: Option<Result<RangeTaskStat, Error>>,
}

impl<H: RangeTaskHandler> std::fmt::Debug for RangeTaskRunner<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeTaskRunner")
            .field("range", &self.range)
            .field("split", &self.split)
            .field("pending", &self.pending.len())
            .field("stat", &self.stat)
            .finish()
    }
}

impl<H: RangeTaskHandler> RangeTaskRunner<H> {
    /// Runs `handler` over `range` in tasks of `regions_per_task` regions,
    /// `concurrency` at a time (both at least 1); `backoffer` is the split's
    /// budget for PD lookups (each task brings its own).
    pub fn new(
        view: Arc<ClusterView>,
        handler: H,
        range: KeyRange,
        regions_per_task: usize,
        concurrency: usize,
        backoffer: Backoffer,
    ) -> Self {
        let split = Split {
            cursor: Some(range.start.clone()),
            task_start: range.start.clone(),
            regions_in_task: 0,
            loaded_at: None,
            no_batch_load: false,
        };
        RangeTaskRunner {
            view,
            handler,
            range,
            regions_per_task: regions_per_task.max(1),
            split,
            lookup: StepSlot::new(),
            pending: VecDeque::new(),
            workers: (0..concurrency.max(1)).map(|_| StepSlot::new()).collect(),
            ids: IdMap::new(),
            backoffer,
            progress: Arc::new(RangeTaskProgress::default()),
            stat: RangeTaskStat::default(),
            started: false,
            result: None,
        }
    }

    /// The run's progress counters, to read while it runs.
    pub fn progress(&self) -> Arc<RangeTaskProgress> {
        self.progress.clone()
    }

    fn fail(&mut self, e: Error) {
        self.lookup.clear();
        for w in &mut self.workers {
            w.clear();
        }
        self.pending.clear();
        self.split.cursor = None;
        self.result = Some(Err(e));
    }

    /// Counts `region` into the task being assembled and moves the cursor
    /// past it.
    fn count_region(&mut self, region: &RegionRef) {
        self.split.regions_in_task += 1;
        self.progress.regions_found.fetch_add(1, Ordering::Relaxed);
        let end = region.end_key().clone();
        let last = end.is_empty() || (!self.range.end.is_empty() && end >= self.range.end);
        if last {
            let start = std::mem::take(&mut self.split.task_start);
            self.pending.push_back(KeyRange { start, end: self.range.end.clone() });
            self.split.cursor = None;
            self.progress.split_done.store(true, Ordering::Relaxed);
            return;
        }
        if self.split.regions_in_task >= self.regions_per_task {
            let start = std::mem::replace(&mut self.split.task_start, end.clone());
            self.pending.push_back(KeyRange { start, end: end.clone() });
            self.split.regions_in_task = 0;
        }
        self.split.cursor = Some(end);
    }

    /// Cuts tasks from the cache until `concurrency` wait or a PD lookup is
    /// needed.
    fn split_more(&mut self, now: Instant) {
        while self.result.is_none()
            && self.lookup.is_idle()
            && self.pending.len() < self.workers.len()
        {
            let Some(cursor) = self.split.cursor.clone() else {
                return;
            };
            if let Some(region) = self.view.regions.locate_key(cursor.as_bytes(), now) {
                self.count_region(&region);
                continue;
            }
            let budget = self.backoffer.fork();
            if self.split.no_batch_load || self.split.loaded_at.as_ref() == Some(&cursor) {
                let locate = LocateRegion::new(self.view.clone(), LocateBy::Key(cursor), budget);
                self.lookup.start(locate, Lookup::Located, now);
            } else {
                let rest = KeyRange { start: cursor.clone(), end: self.range.end.clone() };
                let load = LoadRegions::new(self.view.clone(), &rest, REGIONS_PER_LOAD, budget);
                self.split.loaded_at = Some(cursor);
                self.lookup.start(load, Lookup::Loaded, now);
            }
        }
    }

    /// Starts waiting tasks on idle workers.
    fn dispatch(&mut self, now: Instant) {
        for i in 0..self.workers.len() {
            if self.result.is_some() || self.pending.is_empty() {
                return;
            }
            if self.workers[i].is_idle() {
                let Some(range) = self.pending.pop_front() else { return };
                let task = self.handler.task(range);
                self.workers[i].start(task, |r| r, now);
            }
        }
    }

    /// Handles whatever finished, then splits and dispatches, until nothing
    /// more happens at `now`.
    fn check(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            if let Some(event) = self.lookup.poll_event(Some(&mut self.backoffer)) {
                moved = true;
                match event {
                    StepEvent::Done(Lookup::Loaded(Ok(_))) | StepEvent::Woke => {}
                    StepEvent::Done(Lookup::Loaded(Err(Error::Rpc(RpcError::Unimplemented(
                        _,
                    ))))) => self.split.no_batch_load = true,
                    StepEvent::Done(Lookup::Located(Ok(region))) => self.count_region(&region),
                    StepEvent::Done(Lookup::Loaded(Err(e)) | Lookup::Located(Err(e))) => {
                        self.fail(e);
                        return;
                    }
                }
            }
            for i in 0..self.workers.len() {
                let Some(event) = self.workers[i].poll_event(None) else { continue };
                moved = true;
                match event {
                    StepEvent::Done(Ok(stat)) => {
                        self.stat.completed_regions += stat.completed_regions;
                        self.stat.failed_regions += stat.failed_regions;
                        let p = &self.progress;
                        p.regions_done.fetch_add(stat.completed_regions, Ordering::Relaxed);
                        p.regions_failed.fetch_add(stat.failed_regions, Ordering::Relaxed);
                        p.tasks_done.fetch_add(1, Ordering::Relaxed);
                    }
                    StepEvent::Done(Err(e)) => {
                        self.fail(e);
                        return;
                    }
                    StepEvent::Woke => {}
                }
            }
            let waiting = self.pending.len();
            self.split_more(now);
            self.dispatch(now);
            moved |= self.pending.len() != waiting;
            if self.split.cursor.is_none()
                && self.pending.is_empty()
                && self.lookup.is_idle()
                && self.workers.iter().all(StepSlot::is_idle)
            {
                self.result = Some(Ok(self.stat));
                return;
            }
            if !moved {
                return;
            }
        }
    }
}

impl<H: RangeTaskHandler> Operation for RangeTaskRunner<H> {
    type Output = RangeTaskStat;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        if self.range.is_empty() {
            self.progress.split_done.store(true, Ordering::Relaxed);
            self.result = Some(Ok(RangeTaskStat::default()));
            return;
        }
        self.check(now);
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        if let Some(rpc) = self.lookup.poll_rpc() {
            return Some(self.ids.wrap(0, rpc));
        }
        for i in 0..self.workers.len() {
            if let Some(rpc) = self.workers[i].poll_rpc() {
                return Some(self.ids.wrap(i + 1, rpc));
            }
        }
        None
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((index, child_id)) = self.ids.take(id) else { return };
        let delivered = match index.checked_sub(1) {
            None => self.lookup.on_response(child_id, response, now),
            Some(worker) => {
                self.workers.get_mut(worker).is_some_and(|w| w.on_response(child_id, response, now))
            }
        };
        if delivered {
            self.check(now);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.lookup.on_timeout(now);
        for w in &mut self.workers {
            w.on_timeout(now);
        }
        self.check(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        std::iter::once(self.lookup.poll_timeout())
            .chain(self.workers.iter().map(StepSlot::poll_timeout))
            .flatten()
            .min()
    }

    fn poll_result(&mut self) -> Option<Result<RangeTaskStat, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.backoffer)
    }
}

#[cfg(test)]
mod tests;
