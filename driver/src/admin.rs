//! Administrative calls on the transactional client (client-go `tikv/gc.go`,
//! `txnkv/rangetask`, `tikv/split_region.go`): lock scans and resolution
//! over ranges, GC rounds, `DeleteRange`, `UnsafeDestroyRange`, region
//! splits and scatters. The machines are core's [`tikv_core::gc`] and
//! [`tikv_core::split`]; this file only runs them.

use tikv_core::Error;
use tikv_core::gc::{self, GcOutcome, RANGE_TASK_CONCURRENCY, UnsafeDestroyRange};
use tikv_core::key::{Key, KeyRange};
use tikv_core::lock::Lock;
use tikv_core::op::Operation;
use tikv_core::pd::Timestamp;
use tikv_core::range_task::RangeTaskStat;
use tikv_core::rpc::PdResponse;
use tikv_core::split::{
    SplitRegions, SplitRegionsOutcome, WAIT_SCATTER_BUDGET, WaitScatterFinish, scatter_regions,
};

use crate::Runtime;
use crate::client::Platform;
use crate::txn::TransactionClient;

impl<P: Platform> TransactionClient<P> {
    /// Runs `op` with this handle's interceptors.
    async fn run<O: Operation>(&self, kind: &'static str, op: O) -> Result<O::Output, Error> {
        self.core.run(kind, op, &self.interceptors).await
    }

    /// Up to `limit` locks in `range` whose transactions started at or
    /// before `max_ts`, in key order (TiKV `ScanLock`, region by region).
    pub async fn scan_locks(
        &self,
        range: impl Into<KeyRange>,
        max_ts: Timestamp,
        limit: usize,
    ) -> Result<Vec<Lock>, Error> {
        let op = gc::scan_locks(&self.core.view, range.into(), max_ts, limit);
        Ok(self.run("scan_locks", op).await?.locks)
    }

    /// Resolves every lock in `range` whose transaction started at or
    /// before `max_ts` (client-go `ResolveLocksForRange`): each such
    /// transaction is committed or rolled back for good, as GC needs.
    pub async fn resolve_locks_for_range(
        &self,
        range: impl Into<KeyRange>,
        max_ts: Timestamp,
    ) -> Result<RangeTaskStat, Error> {
        let op = gc::resolve_locks_for_range(&self.core.view, range.into(), max_ts);
        Ok(self.run("resolve_locks_for_range", op).await?.stat)
    }

    /// One GC round towards `safe_point` (client-go `KVStore.GC`): advances
    /// the txn safe point (PD holds it behind GC barriers), resolves every
    /// lock at or below the safe point reached over the whole key space
    /// (8 tasks of 128 regions at a time), then advances the GC safe point
    /// to it, after which the stores may collect versions below it.
    pub async fn gc(&self, safe_point: Timestamp) -> Result<GcOutcome, Error> {
        let op = gc::Gc::new(&self.core.view, safe_point, RANGE_TASK_CONCURRENCY);
        let outcome = self.run("gc", op).await?;
        if self.core.view.codec.keyspace_id().is_none() {
            // The round moved the unified txn safe point this client's
            // reads are checked against: no need to wait for the poller.
            self.core.txn_safe_point.update(outcome.safe_point, self.core.rt.now());
        }
        Ok(outcome)
    }

    /// Deletes every version of every key in `range` (client-go
    /// `DeleteRangeTask`; not transactional, and `range` needs a bounded end).
    pub async fn delete_range(&self, range: impl Into<KeyRange>) -> Result<RangeTaskStat, Error> {
        self.delete_range_inner(range.into(), false).await
    }

    /// Like [`TransactionClient::delete_range`], but TiKV deletes nothing and
    /// only notifies its observers (client-go's `notifyOnly` task).
    pub async fn delete_range_notify_only(
        &self,
        range: impl Into<KeyRange>,
    ) -> Result<RangeTaskStat, Error> {
        self.delete_range_inner(range.into(), true).await
    }

    async fn delete_range_inner(
        &self,
        range: KeyRange,
        notify_only: bool,
    ) -> Result<RangeTaskStat, Error> {
        let op = gc::delete_range(&self.core.view, range, notify_only, RANGE_TASK_CONCURRENCY)?;
        self.run("delete_range", op).await
    }

    /// Destroys every version of every key in `range` on every store that
    /// is neither a tombstone nor TiFlash, all at once, bypassing Raft
    /// (client-go `KVStore.UnsafeDestroyRange`, 5 minutes per store). Only
    /// for ranges no one reads or writes any more; the error lists every
    /// store that failed.
    pub async fn unsafe_destroy_range(&self, range: impl Into<KeyRange>) -> Result<(), Error> {
        self.run("unsafe_destroy_range", UnsafeDestroyRange::new(&self.core.view, range.into()))
            .await
    }

    /// Splits regions at `keys` (client-go `KVStore.SplitRegions`: TiKV
    /// `SplitRegion` to each region's leader, up to 2048 keys a request)
    /// and, with `scatter`, asks PD to scatter every new region. The
    /// outcome lists the new regions; a failed scatter is reported beside
    /// them (the splits stand).
    pub async fn split_regions(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
        scatter: bool,
    ) -> Result<SplitRegionsOutcome, Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        self.run("split_regions", SplitRegions::new(&self.core.view, keys, scatter)).await
    }

    /// Asks PD to scatter the regions `region_ids` (client-go
    /// `ScatterRegions`); returns the ids PD could not scatter (empty when
    /// every region got its operator).
    pub async fn scatter_regions(&self, region_ids: Vec<u64>) -> Result<Vec<u64>, Error> {
        match self.run("scatter_regions", scatter_regions(&self.core.view, region_ids)).await? {
            PdResponse::ScatterRegion(r) => Ok(r.failed_regions_id),
            other => Err(Error::malformed(format!("unexpected PD {}", other.name()))),
        }
    }

    /// Waits until PD has no running scatter for `region_id` (client-go
    /// `WaitScatterRegionFinish`, up to 2 minutes of polling).
    pub async fn wait_scatter_finish(&self, region_id: u64) -> Result<(), Error> {
        let op = WaitScatterFinish::new(&self.core.view, region_id, WAIT_SCATTER_BUDGET);
        self.run("wait_scatter_finish", op).await
    }
}
