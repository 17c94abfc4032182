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
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let max_ts = client.current_timestamp().await?;
    /// for lock in client.scan_locks("a".."z", max_ts, 100).await? {
    ///     println!("{} locked by txn {} (primary {})", lock.key, lock.txn_id, lock.primary);
    /// }
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use std::time::Duration;
    /// // The locks of transactions that started more than 10 minutes ago.
    /// let max_ts = client.stale_timestamp(Duration::from_secs(600)).await?;
    /// let stat = client.resolve_locks_for_range("a".."z", max_ts).await?;
    /// println!("{} regions resolved, {} given up", stat.completed_regions, stat.failed_regions);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use std::time::Duration;
    /// // Keep 10 minutes of history (TiDB's default `tidb_gc_life_time`).
    /// let safe_point = client.stale_timestamp(Duration::from_secs(600)).await?;
    /// let outcome = client.gc(safe_point).await?;
    /// if let Some(blocker) = &outcome.blocker {
    ///     println!("held back at {} by {blocker}", outcome.safe_point);
    /// }
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// // Every version of every key starting with `tmp/`.
    /// let stat = client.delete_range("tmp/".."tmp0").await?;
    /// println!("{} regions cleared", stat.completed_regions);
    /// # Ok(()) }
    /// ```
    pub async fn delete_range(&self, range: impl Into<KeyRange>) -> Result<RangeTaskStat, Error> {
        self.delete_range_inner(range.into(), false).await
    }

    /// Like [`TransactionClient::delete_range`], but TiKV deletes nothing and
    /// only notifies its observers (client-go's `notifyOnly` task).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let stat = client.delete_range_notify_only("tmp/".."tmp0").await?;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// // The range of a table that was dropped and is past the GC safe point.
    /// client.unsafe_destroy_range("table/42/".."table/420").await?;
    /// # Ok(()) }
    /// ```
    pub async fn unsafe_destroy_range(&self, range: impl Into<KeyRange>) -> Result<(), Error> {
        self.run("unsafe_destroy_range", UnsafeDestroyRange::new(&self.core.view, range.into()))
            .await
    }

    /// Splits regions at `keys` (client-go `KVStore.SplitRegions`: TiKV
    /// `SplitRegion` to each region's leader, up to 2048 keys a request)
    /// and, with `scatter`, asks PD to scatter every new region. The
    /// outcome lists the new regions; a failed scatter is reported beside
    /// them (the splits stand).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let outcome = client.split_regions(["user/4", "user/8"], true).await?;
    /// println!("new regions {:?}", outcome.region_ids);
    /// if let Some(e) = &outcome.scatter_error {
    ///     println!("split, but not scattered: {e}");
    /// }
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let split = client.split_regions(["user/4", "user/8"], false).await?;
    /// let failed = client.scatter_regions(split.region_ids).await?;
    /// if !failed.is_empty() {
    ///     println!("regions {failed:?} stay where they are");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn scatter_regions(&self, region_ids: Vec<u64>) -> Result<Vec<u64>, Error> {
        match self.run("scatter_regions", scatter_regions(&self.core.view, region_ids)).await? {
            PdResponse::ScatterRegion(r) => Ok(r.failed_regions_id),
            other => Err(Error::malformed(format!("unexpected PD {}", other.name()))),
        }
    }

    /// Waits until PD has no running scatter for `region_id` (client-go
    /// `WaitScatterRegionFinish`, up to 2 minutes of polling).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let split = client.split_regions(["user/4", "user/8"], true).await?;
    /// for region_id in split.region_ids {
    ///     client.wait_scatter_finish(region_id).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_scatter_finish(&self, region_id: u64) -> Result<(), Error> {
        let op = WaitScatterFinish::new(&self.core.view, region_id, WAIT_SCATTER_BUDGET);
        self.run("wait_scatter_finish", op).await
    }
}
