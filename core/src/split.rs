//! Region splitting and scattering (client-go `tikv/split_region.go`).
//!
//! - [`SplitRegions`]: the split keys grouped by region, at most 2048 per
//!   `SplitRegion` request to the region's leader (region errors re-group
//!   what is left); the new regions are every region a response lists but
//!   the last (the one that kept the original's right end); with `scatter`,
//!   each new region is then handed to PD's `ScatterRegion`, one at a time.
//! - [`scatter_regions`]: PD's `ScatterRegion` for regions by id.
//! - [`WaitScatterFinish`]: polls PD's `GetOperator` until the region has no
//!   running `scatter-region` operator.
//! - [`PreSplit`]: before a large prewrite, splits and scatters each region
//!   that would get too many of its mutations (client-go `groupMutations`
//!   and `preSplitRegion`).

use std::collections::VecDeque;
use std::sync::Arc;

use tikv_proto::{kvrpcpb, pdpb};

use crate::backoff::{BackoffKind, Backoffer};
use crate::error::Error;
use crate::key::Key;
use crate::op::{Operation, StepEvent, StepSlot};
use crate::pd::{LocateBy, LocateRegion, PdCall};
use crate::region::{InvalidReason, RegionRef, RegionVerId};
use crate::route::fanout::{KeyFanout, KeyPlan};
use crate::rpc::{KvRequest, KvResponse, PdRequest, PdResponse};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// Split keys per `SplitRegion` request (client-go `splitBatchRegionLimit`).
const SPLIT_BATCH_LIMIT: usize = 2048;

/// Budget per split key, and the most for one call (client-go
/// `splitRegionBackoff` 20 s, `maxSplitRegionsBackoff` 120 s).
const SPLIT_BUDGET_PER_KEY: Duration = Duration::from_secs(20);
const SPLIT_BUDGET_MAX: Duration = Duration::from_secs(120);

/// Default budget for waiting on a scatter (client-go
/// `waitScatterRegionFinishBackoff`, 120 s).
pub const WAIT_SCATTER_BUDGET: Duration = Duration::from_secs(120);

/// PD's description of a scatter operator.
const SCATTER_OPERATOR_DESC: &[u8] = b"scatter-region";

/// `SplitRegion` per region batch, collecting the new regions' ids.
struct SplitPlan {
    timeout: Duration,
    new_regions: Vec<u64>,
}

impl KeyPlan for SplitPlan {
    type Item = Key;
    type Output = Vec<u64>;
    fn key(item: &Key) -> &Key {
        item
    }
    fn size(item: &Key) -> usize {
        item.len()
    }
    fn batch_limits(&self) -> (usize, usize) {
        (SPLIT_BATCH_LIMIT, usize::MAX)
    }
    fn build(&mut self, batch: &[Key]) -> KvRequest {
        KvRequest::SplitRegion(Box::new(kvrpcpb::SplitRegionRequest {
            split_keys: batch.iter().map(Key::to_bytes).collect(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn merge(&mut self, _batch: Vec<Key>, response: KvResponse) -> Result<(), Error> {
        let KvResponse::SplitRegion(r) = response else {
            return Err(Error::malformed(format!("unexpected {}", response.name())));
        };
        if let Some(e) = r.errors.into_iter().next() {
            return Err(Error::KeyError(Box::new(e)));
        }
        // The last region keeps the original's end: it is not new.
        let n = r.regions.len().saturating_sub(1);
        self.new_regions.extend(r.regions.iter().take(n).map(|region| region.id));
        Ok(())
    }
    fn finish(self) -> Vec<u64> {
        self.new_regions
    }
}

/// What [`SplitRegions`] did.
#[derive(Debug, Default)]
pub struct SplitRegionsOutcome {
    /// The ids of the regions the splits created.
    pub region_ids: Vec<u64>,
    /// The first scatter that failed, if asked to scatter (the splits stand).
    pub scatter_error: Option<Error>,
}

enum SplitEvent {
    Split(Result<Vec<u64>, Error>),
    Scattered(Result<PdResponse, Error>),
}

/// client-go `KVStore.SplitRegions` (module docs).
pub struct SplitRegions {
    view: Arc<ClusterView>,
    keys: Vec<Key>,
    scatter: bool,
    to_scatter: VecDeque<u64>,
    step: StepSlot<SplitEvent>,
    budget: Backoffer,
    outcome: SplitRegionsOutcome,
    started: bool,
    result: Option<Result<SplitRegionsOutcome, Error>>,
}

impl std::fmt::Debug for SplitRegions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitRegions")
            .field("keys", &self.keys.len())
            .field("scatter", &self.scatter)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl SplitRegions {
    /// Splits at `keys` (user keys), then scatters the new regions if
    /// `scatter`.
    pub fn new(view: &Arc<ClusterView>, keys: Vec<Key>, scatter: bool) -> SplitRegions {
        let per_key =
            SPLIT_BUDGET_PER_KEY.saturating_mul(u32::try_from(keys.len()).unwrap_or(u32::MAX));
        SplitRegions {
            view: view.clone(),
            keys,
            scatter,
            to_scatter: VecDeque::new(),
            step: StepSlot::new(),
            budget: view.backoffer(per_key.min(SPLIT_BUDGET_MAX)),
            outcome: SplitRegionsOutcome::default(),
            started: false,
            result: None,
        }
    }

    fn scatter_next(&mut self, now: Instant) {
        let Some(region_id) = self.to_scatter.pop_front() else {
            self.step.clear();
            self.result = Some(Ok(std::mem::take(&mut self.outcome)));
            return;
        };
        let request = PdRequest::ScatterRegion(Box::new(pdpb::ScatterRegionRequest {
            regions_id: vec![region_id],
            ..Default::default()
        }));
        let call = PdCall::new(
            self.view.pd.clone(),
            request,
            self.view.config.pd_timeout,
            self.budget.fork(),
        );
        self.step.start(call, SplitEvent::Scattered, now);
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.budget)) {
            match event {
                StepEvent::Done(SplitEvent::Split(Ok(ids))) => {
                    self.outcome.region_ids = ids.clone();
                    if self.scatter {
                        self.to_scatter = ids.into();
                    }
                    self.scatter_next(now);
                }
                StepEvent::Done(SplitEvent::Split(Err(e))) => {
                    self.step.clear();
                    self.result = Some(Err(e));
                }
                StepEvent::Done(SplitEvent::Scattered(outcome)) => {
                    let failure = match outcome {
                        Ok(PdResponse::ScatterRegion(r)) if r.failed_regions_id.is_empty() => None,
                        Ok(PdResponse::ScatterRegion(r)) => Some(Error::Pd {
                            code: pdpb::ErrorType::RegionNotFound as i32,
                            message: format!(
                                "scatter failed for regions {:?}",
                                r.failed_regions_id
                            ),
                        }),
                        Ok(other) => {
                            Some(Error::malformed(format!("unexpected PD {}", other.name())))
                        }
                        Err(e) => Some(e),
                    };
                    if let Some(e) = failure
                        && self.outcome.scatter_error.is_none()
                    {
                        self.outcome.scatter_error = Some(e);
                    }
                    self.scatter_next(now);
                }
                StepEvent::Woke => {}
            }
        }
    }
}

impl Operation for SplitRegions {
    type Output = SplitRegionsOutcome;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let plan =
            SplitPlan { timeout: self.view.config.read_timeout_short, new_regions: Vec::new() };
        let mut keys = std::mem::take(&mut self.keys);
        // client-go groups split keys with `equalRegionStartKey`: a key
        // that already starts a region needs no split (TiKV would refuse
        // it). Regions the cache knows are checked here; the fan-out
        // locates the rest.
        keys.retain(|k| {
            self.view.regions.locate_key(k.as_bytes(), now).is_none_or(|r| r.start_key() != k)
        });
        let fanout = KeyFanout::new(self.view.clone(), plan, keys, self.budget.fork());
        self.step.start(fanout, SplitEvent::Split, now);
        self.check(now);
    }

    crate::op::forward_step_inputs!(step);

    fn poll_result(&mut self) -> Option<Result<SplitRegionsOutcome, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.budget)
    }
}

/// PD's `ScatterRegion` for `region_ids` in one call (PD's `regions_id`
/// form, what client-go's `ScatterRegions` sends); the answer carries the
/// finished percentage and the regions PD could not scatter.
pub fn scatter_regions(view: &Arc<ClusterView>, region_ids: Vec<u64>) -> PdCall {
    let request = PdRequest::ScatterRegion(Box::new(pdpb::ScatterRegionRequest {
        regions_id: region_ids,
        ..Default::default()
    }));
    let budget = view.backoffer(view.config.budget(view.config.backoff.locate_region));
    PdCall::new(view.pd.clone(), request, view.config.pd_timeout, budget)
}

/// client-go `KVStore.WaitScatterRegionFinish` (module docs): done when PD
/// reports no running scatter operator for the region (none at all is
/// PD's "Not Found", which counts as done); a running one is polled again
/// after a `RegionMiss` backoff, until the budget runs out.
pub struct WaitScatterFinish {
    view: Arc<ClusterView>,
    region_id: u64,
    step: StepSlot<Result<PdResponse, Error>>,
    budget: Backoffer,
    started: bool,
    result: Option<Result<(), Error>>,
}

impl std::fmt::Debug for WaitScatterFinish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitScatterFinish").field("region_id", &self.region_id).finish()
    }
}

impl WaitScatterFinish {
    /// Waits for `region_id`'s scatter, within `budget`.
    pub fn new(view: &Arc<ClusterView>, region_id: u64, budget: Duration) -> WaitScatterFinish {
        WaitScatterFinish {
            view: view.clone(),
            region_id,
            step: StepSlot::new(),
            budget: view.backoffer(budget),
            started: false,
            result: None,
        }
    }

    fn ask(&mut self, now: Instant) {
        let request = PdRequest::GetOperator(Box::new(pdpb::GetOperatorRequest {
            region_id: self.region_id,
            ..Default::default()
        }));
        let call = PdCall::new(
            self.view.pd.clone(),
            request,
            self.view.config.pd_timeout,
            self.budget.fork(),
        );
        self.step.start(call, |r| r, now);
    }

    fn wait(&mut self, reason: String, now: Instant) {
        match self.budget.backoff(BackoffKind::RegionMiss, reason) {
            Ok(sleep) => self.step.sleep_until(now + sleep),
            Err(e) => {
                self.step.clear();
                self.result = Some(Err(e));
            }
        }
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.budget)) {
            match event {
                StepEvent::Woke => self.ask(now),
                StepEvent::Done(Ok(PdResponse::GetOperator(r))) => {
                    let running = r.desc.as_ref() == SCATTER_OPERATOR_DESC
                        && r.status == pdpb::OperatorStatus::Running as i32;
                    if running {
                        self.wait("wait scatter region timeout".into(), now);
                    } else {
                        self.result = Some(Ok(()));
                    }
                }
                StepEvent::Done(Err(Error::Pd { code, .. }))
                    if code == pdpb::ErrorType::RegionNotFound as i32 =>
                {
                    self.result = Some(Ok(()));
                }
                StepEvent::Done(Ok(other)) => {
                    self.result =
                        Some(Err(Error::malformed(format!("unexpected PD {}", other.name()))));
                }
                StepEvent::Done(Err(e)) => self.wait(e.to_string(), now),
            }
        }
    }
}

impl Operation for WaitScatterFinish {
    type Output = ();

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        self.ask(now);
        self.check(now);
    }

    crate::op::forward_step_inputs!(step);

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.budget)
    }
}

/// When a transaction's commit splits regions first (client-go
/// `preSplitDetectThreshold`, `preSplitSizeThreshold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreSplitThresholds {
    /// A region about to get at least this many of the transaction's
    /// mutations is split first: 100,000.
    pub detect_mutations: usize,
    /// Its mutations are cut into pieces of about this many key + value
    /// bytes, each piece a new region: 32 MiB.
    pub split_size: usize,
}

impl Default for PreSplitThresholds {
    fn default() -> PreSplitThresholds {
        PreSplitThresholds { detect_mutations: 100_000, split_size: 32 << 20 }
    }
}

impl PreSplitThresholds {
    /// Splits regions with at least `detect_mutations` mutations into
    /// pieces of `split_size` bytes.
    pub fn new(detect_mutations: usize, split_size: usize) -> PreSplitThresholds {
        PreSplitThresholds { detect_mutations, split_size }
    }
}

/// What [`PreSplit`] did. Its failures are reported, never raised: the
/// commit goes on over whatever regions there are (client-go logs them).
#[derive(Debug, Default, PartialEq)]
pub struct PreSplitOutcome {
    /// Regions that got too many mutations and were split.
    pub regions_split: usize,
    /// The regions the splits created.
    pub new_regions: Vec<u64>,
    /// The first failure: locating, splitting, scattering or waiting.
    pub error: Option<Error>,
}

enum PreSplitEvent {
    Located(Result<RegionRef, Error>),
    Split(Result<SplitRegionsOutcome, Error>),
    Waited(Result<(), Error>),
}

/// client-go's pre-split of a large transaction: the sorted mutation keys
/// are grouped by region (`groupSortedMutationsByRegion`); each group of at
/// least [`PreSplitThresholds::detect_mutations`] is cut every
/// [`PreSplitThresholds::split_size`] bytes; the cuts are split with
/// scatter, each new region's scatter is waited for, and the split regions
/// leave the cache so the prewrite groups over the new ones.
pub struct PreSplit {
    view: Arc<ClusterView>,
    /// Sorted keys with their key + value size.
    keys: Vec<(Key, usize)>,
    thresholds: PreSplitThresholds,
    /// The first key not grouped yet.
    cursor: usize,
    split_keys: Vec<Key>,
    split_regions: Vec<RegionVerId>,
    to_wait: VecDeque<u64>,
    step: StepSlot<PreSplitEvent>,
    budget: Backoffer,
    outcome: PreSplitOutcome,
    started: bool,
    result: Option<Result<PreSplitOutcome, Error>>,
}

impl std::fmt::Debug for PreSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreSplit")
            .field("keys", &self.keys.len())
            .field("cursor", &self.cursor)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl PreSplit {
    /// Pre-splits for `keys`, sorted, each with its mutation's key + value
    /// size. Fewer keys than the detect threshold send nothing.
    pub fn new(
        view: &Arc<ClusterView>,
        keys: Vec<(Key, usize)>,
        thresholds: PreSplitThresholds,
    ) -> PreSplit {
        PreSplit {
            view: view.clone(),
            keys,
            thresholds,
            cursor: 0,
            split_keys: Vec::new(),
            split_regions: Vec::new(),
            to_wait: VecDeque::new(),
            step: StepSlot::new(),
            budget: view.backoffer(view.config.backoff.locate_region),
            outcome: PreSplitOutcome::default(),
            started: false,
            result: None,
        }
    }

    fn finish(&mut self) {
        self.step.clear();
        self.result = Some(Ok(std::mem::take(&mut self.outcome)));
    }

    fn fail(&mut self, e: Error) {
        self.outcome.error.get_or_insert(e);
        self.finish();
    }

    /// Locates the region of the first key not grouped yet, or splits once
    /// every key is grouped.
    fn locate_next(&mut self, now: Instant) {
        let Some((key, _)) = self.keys.get(self.cursor) else {
            if self.split_keys.is_empty() {
                self.finish();
            } else {
                let keys = std::mem::take(&mut self.split_keys);
                let split = SplitRegions::new(&self.view, keys, true);
                self.step.start(split, PreSplitEvent::Split, now);
            }
            return;
        };
        let locate =
            LocateRegion::new(self.view.clone(), LocateBy::Key(key.clone()), self.budget.fork());
        self.step.start(locate, PreSplitEvent::Located, now);
    }

    /// Takes the keys `region` holds from the cursor on as one group, and
    /// cuts it if it is large (client-go `preSplitRegion`).
    fn group(&mut self, region: &RegionRef) -> Result<(), Error> {
        let rest = &self.keys[self.cursor..];
        let held = rest.partition_point(|(k, _)| region.contains(k.as_bytes()));
        if held == 0 {
            return Err(Error::Internal(format!(
                "region {} located for a key it does not contain",
                region.id()
            )));
        }
        if held >= self.thresholds.detect_mutations {
            let mut size = 0usize;
            let before = self.split_keys.len();
            for (key, bytes) in &rest[..held] {
                size += bytes;
                if size >= self.thresholds.split_size {
                    size = 0;
                    self.split_keys.push(key.clone());
                }
            }
            if self.split_keys.len() > before {
                self.outcome.regions_split += 1;
                self.split_regions.push(region.ver_id());
            }
        }
        self.cursor += held;
        Ok(())
    }

    fn wait_next(&mut self, now: Instant) {
        match self.to_wait.pop_front() {
            Some(region_id) => {
                let wait = WaitScatterFinish::new(&self.view, region_id, WAIT_SCATTER_BUDGET);
                self.step.start(wait, PreSplitEvent::Waited, now);
            }
            None => self.finish(),
        }
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.budget)) {
            match event {
                StepEvent::Done(PreSplitEvent::Located(Ok(region))) => match self.group(&region) {
                    Ok(()) => self.locate_next(now),
                    Err(e) => self.fail(e),
                },
                StepEvent::Done(PreSplitEvent::Located(Err(e))) => self.fail(e),
                StepEvent::Done(PreSplitEvent::Split(Ok(split))) => {
                    // client-go invalidates the split group's region so the
                    // regrouping loads the new ones.
                    for ver in self.split_regions.drain(..) {
                        self.view.regions.invalidate(ver, InvalidReason::Other);
                    }
                    self.outcome.error = split.scatter_error;
                    self.outcome.new_regions = split.region_ids.clone();
                    self.to_wait = split.region_ids.into();
                    self.wait_next(now);
                }
                StepEvent::Done(PreSplitEvent::Split(Err(e))) => self.fail(e),
                StepEvent::Done(PreSplitEvent::Waited(waited)) => {
                    if let Err(e) = waited {
                        self.outcome.error.get_or_insert(e);
                    }
                    self.wait_next(now);
                }
                StepEvent::Woke => {}
            }
        }
    }
}

impl Operation for PreSplit {
    type Output = PreSplitOutcome;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        if self.keys.len() < self.thresholds.detect_mutations {
            self.finish();
            return;
        }
        self.locate_next(now);
        self.check(now);
    }

    crate::op::forward_step_inputs!(step);

    fn poll_result(&mut self) -> Option<Result<PreSplitOutcome, Error>> {
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&Backoffer> {
        Some(&self.budget)
    }
}

#[cfg(test)]
mod tests;
