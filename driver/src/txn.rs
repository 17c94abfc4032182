//! The transactional client: timestamps, snapshot reads, and optimistic
//! or pessimistic transactions committed with 2PC, async commit or 1PC.

use std::sync::Arc;

use tikv_core::Error;
use tikv_core::codec::Mode;
use tikv_core::config::Config;
use tikv_core::key::{Key, KeyRange, KvPair, ScanSpec, Value};
use tikv_core::pd::Timestamp;
use tikv_core::route::replica::ReplicaRead;
use tikv_core::rpc::{RequestSource, RequestTags};
use tikv_core::split::{PreSplit, PreSplitOutcome, PreSplitThresholds};
use tikv_core::txn::commit::{
    CommitDetails, CommitOptions, Committer, KeepAlive, Mutation, mutations_from_buffer,
    pessimistic_mutations_from_buffer,
};
use tikv_core::txn::fair_locking::{FairLocking, Reuse};
use tikv_core::txn::membuffer::{Checkpoint, FlagsOp, KeyFlags, MemBuffer};
use tikv_core::txn::pessimistic::{
    AcquireOutcome, AcquirePessimisticLocks, AcquireRequest, LockKeysDetails, LockOptions,
    ReturnedValue, rollback_pessimistic_locks,
};
use tikv_core::txn::snapshot::{ReadOptions, SnapshotBatchGet, SnapshotGet, SnapshotScan};
use tikv_core::txn::union::{PointRead, UnionBatchGet, UnionScan, read_point};
use tikv_proto::kvrpcpb;

use crate::client::{ClientCore, Platform};
use crate::interceptor::{Interceptors, RpcInterceptor};
use crate::observe;
use crate::scanner::{DEFAULT_SCAN_BATCH_SIZE, Scanner, TxnScanner};
use crate::{Background, Runtime};

/// A client for transactional data (client-go's `txnkv.Client`).
///
/// Cheap to clone; clones share connections, caches and background tasks.
/// Offers [`TransactionClient::current_timestamp`], read-only [`Snapshot`]s
/// (point, batch and range reads that resolve the locks they meet) and
/// optimistic [`Transaction`]s ([`TransactionClient::begin`]).
pub struct TransactionClient<P: Platform> {
    pub(crate) core: Arc<ClientCore<P>>,
    /// Around every store RPC of this handle, its transactions and
    /// snapshots included.
    pub(crate) interceptors: Interceptors,
}

impl<P: Platform> Clone for TransactionClient<P> {
    fn clone(&self) -> Self {
        TransactionClient { core: self.core.clone(), interceptors: self.interceptors.clone() }
    }
}

impl<P: Platform> std::fmt::Debug for TransactionClient<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionClient").field("pd", &self.core.view.pd.endpoints()).finish()
    }
}

impl<P: Platform> TransactionClient<P> {
    /// Connects to the cluster behind these PD endpoints (API V1).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo<P: Platform>() -> Result<(), Error> {
    /// // With a runtime crate: `tikv_tokio::TransactionClient::connect([...])`.
    /// let client = TransactionClient::<P>::connect(["10.0.0.1:2379", "10.0.0.2:2379"]).await?;
    /// let mut txn = client.begin().await?;
    /// txn.put("k", "v")?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<S: Into<String>>(
        pd_endpoints: impl IntoIterator<Item = S>,
    ) -> Result<Self, Error> {
        Self::connect_with_config(Config::default().with_pd_endpoints(pd_endpoints)).await
    }

    /// Connects with an explicit configuration.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo<P: Platform>() -> Result<(), Error> {
    /// use std::time::Duration;
    /// use tikv_driver::Config;
    ///
    /// let config = Config::default()
    ///     .with_pd_endpoints(["127.0.0.1:2379"])
    ///     .with_connect_timeout(Duration::from_secs(3))
    ///     .with_pd_timeout(Duration::from_secs(5));
    /// let client = TransactionClient::<P>::connect_with_config(config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_config(config: Config) -> Result<Self, Error> {
        let core = ClientCore::<P>::connect(config, Mode::Txn).await?;
        Ok(TransactionClient { core: Arc::new(core), interceptors: Interceptors::default() })
    }

    /// A handle whose store RPCs, those of its transactions and snapshots
    /// included, go through `interceptor` after the ones already added
    /// (client-go's `RPCInterceptor`; see [`crate::interceptor`]). Other
    /// handles are unaffected.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::interceptor::interceptor_fn;
    /// let traced = client.with_interceptor(interceptor_fn("log", |rpc, next| {
    ///     eprintln!("{} to store {}", rpc.request.name(), rpc.store_id);
    ///     next.run(rpc)
    /// }));
    /// let mut txn = traced.begin().await?;
    /// txn.put("k", "v")?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub fn with_interceptor(&self, interceptor: impl RpcInterceptor) -> Self {
        TransactionClient {
            core: self.core.clone(),
            interceptors: self.interceptors.with(interceptor),
        }
    }

    /// A fresh timestamp from PD's TSO, strictly greater than every
    /// timestamp this client handed out before (client-go
    /// `KVStore.CurrentTimestamp`). Concurrent callers share TSO rounds.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let first = client.current_timestamp().await?;
    /// let second = client.current_timestamp().await?;
    /// assert!(second > first);
    /// # Ok(()) }
    /// ```
    pub async fn current_timestamp(&self) -> Result<Timestamp, Error> {
        self.core.timestamp().await
    }

    /// Closes the client and every clone of it (client-go `KVStore.Close`):
    /// later calls (its transactions' and snapshots' included) fail with
    /// [`Error::Closed`], the store refresh and TSO tasks stop, and the
    /// background work of earlier commits (secondary commits, rollbacks) is
    /// waited for, at most `wait`. Returns how many of those were still
    /// running then: they go on in the runtime, and any lock they leave is
    /// resolved by later readers.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) {
    /// use std::time::Duration;
    /// let unfinished = client.close(Duration::from_secs(5)).await;
    /// assert_eq!(unfinished, 0, "every secondary commit finished");
    /// # }
    /// ```
    pub async fn close(&self, wait: std::time::Duration) -> usize {
        self.core.close(wait).await
    }

    /// The PD cluster id.
    ///
    /// ```no_run
    /// # use tikv_driver::{Platform, TransactionClient};
    /// # fn demo(client: TransactionClient<impl Platform>) {
    /// println!("connected to cluster {}", client.cluster_id());
    /// # }
    /// ```
    pub fn cluster_id(&self) -> u64 {
        self.core.view.pd.cluster_id()
    }

    /// Starts an optimistic transaction at a fresh timestamp.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let mut txn = client.begin().await?;
    /// if txn.get("greeting").await?.is_none() {
    ///     txn.put("greeting", "hello")?;
    /// }
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin(&self) -> Result<Transaction<P>, Error> {
        self.begin_with_options(TransactionOptions::default()).await
    }

    /// Starts a transaction with explicit options.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::TransactionOptions;
    /// let options = TransactionOptions::default().with_async_commit().with_one_pc();
    /// let mut txn = client.begin_with_options(options).await?;
    /// txn.put("k", "v")?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<Transaction<P>, Error> {
        let start = self.current_timestamp().await?;
        Ok(self.transaction_at(start, options))
    }

    /// Starts a transaction at a start timestamp the caller chose (client-go
    /// `Begin(tikv.WithStartTS(ts))`), e.g. one from another client or an
    /// earlier [`current_timestamp`](Self::current_timestamp), to read as
    /// of it and commit after it.
    ///
    /// Fails with [`Error::TxnAbortedByGc`] when `start_ts` is below the
    /// txn safe point: GC may already have removed versions it would read
    /// (client-go checks the same on every read). A start ts PD has not
    /// issued yet is refused by the first read
    /// ([`Error::FutureReadTs`]), as client-go's read-ts validation does.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::TransactionOptions;
    /// let ts = client.current_timestamp().await?;
    /// // ... later, a transaction that reads as of `ts`:
    /// let txn = client.begin_at(ts, TransactionOptions::default()).await?;
    /// assert_eq!(txn.start_timestamp(), ts);
    /// # Ok(()) }
    /// ```
    pub async fn begin_at(
        &self,
        start_ts: Timestamp,
        options: TransactionOptions,
    ) -> Result<Transaction<P>, Error> {
        self.core.check_visibility(start_ts).await?;
        Ok(self.transaction_at(start_ts, options))
    }

    fn transaction_at(&self, start: Timestamp, options: TransactionOptions) -> Transaction<P> {
        Transaction {
            core: self.core.clone(),
            interceptors: self.interceptors.clone(),
            start_ts: start,
            started: self.core.rt.now(),
            buffer: MemBuffer::new(),
            options,
            finished: false,
            primary: None,
            for_update_ts: Timestamp::ZERO,
            keep_alive: None,
            fair: None,
            max_locked_with_conflict_ts: Timestamp::ZERO,
            for_update_ts_checks: Default::default(),
            lock_details: LockKeysDetails::default(),
        }
    }

    /// A read-only view of the data as of `ts` (client-go
    /// `KVStore.GetSnapshot`).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let snapshot = client.snapshot(client.current_timestamp().await?);
    /// let value = snapshot.get("k").await?;
    /// # Ok(()) }
    /// ```
    pub fn snapshot(&self, ts: Timestamp) -> Snapshot<P> {
        Snapshot {
            core: self.core.clone(),
            ts,
            opts: ReadOptions::default(),
            interceptors: self.interceptors.clone(),
        }
    }

    /// A snapshot at `ts` whose reads are stale reads
    /// ([`Snapshot::with_stale_read`]): served by the nearest replica from
    /// its own data when its safe ts has reached `ts`, else by the leader.
    /// Pick `ts` at or below [`min_safe_ts`](Self::min_safe_ts) for reads
    /// no replica refuses, or with [`stale_timestamp`](Self::stale_timestamp).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use std::time::Duration;
    /// // One timestamp, 10 s ago, for several stale reads alike.
    /// let ts = client.stale_timestamp(Duration::from_secs(10)).await?;
    /// let a = client.stale_snapshot(ts).get("a").await?;
    /// let b = client.stale_snapshot(ts).get("b").await?;
    /// # Ok(()) }
    /// ```
    pub fn stale_snapshot(&self, ts: Timestamp) -> Snapshot<P> {
        self.snapshot(ts).with_stale_read()
    }

    /// A stale-read snapshot of the data as it was `ago` before now (TiDB's
    /// `AS OF TIMESTAMP NOW() - INTERVAL ...`): [`stale_snapshot`] at
    /// [`stale_timestamp`]`(ago)`.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use std::time::Duration;
    /// let snapshot = client.stale_snapshot_ago(Duration::from_secs(5)).await?;
    /// let value = snapshot.get("k".to_owned()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// [`stale_snapshot`]: Self::stale_snapshot
    /// [`stale_timestamp`]: Self::stale_timestamp
    pub async fn stale_snapshot_ago(&self, ago: std::time::Duration) -> Result<Snapshot<P>, Error> {
        Ok(self.stale_snapshot(self.stale_timestamp(ago).await?))
    }

    /// The timestamp `ago` before a fresh one from PD (client-go
    /// `GetStaleTimestamp`; logical part zero).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use std::time::Duration;
    /// let now = client.current_timestamp().await?;
    /// let ten_seconds_ago = client.stale_timestamp(Duration::from_secs(10)).await?;
    /// assert!(ten_seconds_ago < now);
    /// # Ok(()) }
    /// ```
    pub async fn stale_timestamp(&self, ago: std::time::Duration) -> Result<Timestamp, Error> {
        let fresh = self.current_timestamp().await?;
        tikv_core::safe_ts::stale_timestamp(fresh, ago)
    }

    /// The min safe ts of `txn_scope` (client-go `KVStore.GetMinSafeTS`):
    /// [`GLOBAL_TXN_SCOPE`](crate::GLOBAL_TXN_SCOPE) for every store, or a
    /// `zone` label value for the stores carrying it. A stale read at or
    /// below it is served by any replica in the scope. Refreshed in the
    /// background every 2 s from each store's `GetStoreSafeTS`; zero until
    /// every store of the scope has answered once.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::{GLOBAL_TXN_SCOPE, Timestamp};
    /// let safe = client.min_safe_ts(GLOBAL_TXN_SCOPE);
    /// if safe != Timestamp::ZERO {
    ///     // Any replica serves a stale read at `safe` from its own data.
    ///     let value = client.stale_snapshot(safe).get("k").await?;
    /// }
    /// let in_zone = client.min_safe_ts("us-east-1a");
    /// # Ok(()) }
    /// ```
    pub fn min_safe_ts(&self, txn_scope: &str) -> Timestamp {
        self.core.safe_ts.min_safe_ts(txn_scope)
    }
}

/// A consistent read-only view at one timestamp. Reads that meet locks of
/// other transactions resolve them (committed: read through; rolled back or
/// committed later: skip; alive: wait, bounded by the lock's TTL and the read
/// budget).
pub struct Snapshot<P: Platform> {
    pub(crate) core: Arc<ClientCore<P>>,
    pub(crate) ts: Timestamp,
    pub(crate) opts: ReadOptions,
    pub(crate) interceptors: Interceptors,
}

impl<P: Platform> Clone for Snapshot<P> {
    fn clone(&self) -> Self {
        Snapshot {
            core: self.core.clone(),
            ts: self.ts,
            opts: self.opts.clone(),
            interceptors: self.interceptors.clone(),
        }
    }
}

impl<P: Platform> std::fmt::Debug for Snapshot<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("ts", &self.ts).finish()
    }
}

impl<P: Platform> Snapshot<P> {
    /// The snapshot's timestamp.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let ts = client.current_timestamp().await?;
    /// assert_eq!(client.snapshot(ts).timestamp(), ts);
    /// # Ok(()) }
    /// ```
    pub fn timestamp(&self) -> Timestamp {
        self.ts
    }

    /// Reads at low priority / without filling TiKV's cache / with another
    /// isolation level (`kvrpcpb::Context` fields).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::ReadOptions;
    /// // A full scan that should not evict hot data from TiKV's block cache.
    /// let snapshot = client
    ///     .snapshot(client.current_timestamp().await?)
    ///     .with_read_options(ReadOptions::default().with_not_fill_cache(true));
    /// let pairs = snapshot.scan(.., 1000).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_read_options(mut self, opts: ReadOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Reads from the replicas `read` chooses (client-go
    /// `KVSnapshot.SetReplicaRead` and `SetMatchStoreLabels`): followers,
    /// learners, the leader or a mix, preferring stores with its labels.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::{ReplicaRead, ReplicaReadType};
    /// let snapshot = client
    ///     .snapshot(client.current_timestamp().await?)
    ///     .with_replica_read(ReplicaRead::of(ReplicaReadType::Follower));
    /// let value = snapshot.get("k").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_replica_read(mut self, read: ReplicaRead) -> Self {
        self.opts.replica_read = read;
        self
    }

    /// Reads as stale reads (client-go `KVSnapshot.SetIsStalenessReadOnly`,
    /// TiDB's `AS OF TIMESTAMP`): each read goes first to the best replica
    /// (labels given with [`with_replica_read`](Self::with_replica_read)
    /// before are kept), which serves it from its own data if its safe ts
    /// has reached the snapshot's timestamp and otherwise answers
    /// `DataIsNotReady`; the read then goes to the leader as a normal read.
    /// A read that meets a lock reads from the leader after resolving it.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use std::time::Duration;
    /// use tikv_driver::ReplicaRead;
    /// let ts = client.stale_timestamp(Duration::from_secs(5)).await?;
    /// // Preferring a replica in the local zone.
    /// let snapshot = client
    ///     .snapshot(ts)
    ///     .with_replica_read(ReplicaRead::leader().with_label("zone", "us-east-1a"))
    ///     .with_stale_read();
    /// let value = snapshot.get("k").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_stale_read(mut self) -> Self {
        let labels = std::mem::take(&mut self.opts.replica_read.labels);
        self.opts.replica_read = labels
            .into_iter()
            .fold(ReplicaRead::stale(), |read, l| read.with_label(l.key, l.value));
        self
    }

    /// The value of `key` at the snapshot, `None` if it did not exist.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// if let Some(value) = snapshot.get("k").await? {
    ///     println!("k = {value:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        let op = SnapshotGet::new(self.core.view.clone(), key.into(), self.ts, self.opts.clone());
        self.run("snapshot_get", op).await
    }

    /// Whether `key` existed at the snapshot.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// if !snapshot.key_exists("user/42").await? {
    ///     println!("no user 42 at {}", snapshot.timestamp());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn key_exists(&self, key: impl Into<Key>) -> Result<bool, Error> {
        Ok(self.get(key).await?.is_some())
    }

    /// The pairs among `keys` that existed at the snapshot, sorted by key.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// for pair in snapshot.batch_get(["a", "b", "c"]).await? {
    ///     println!("{pair:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<KvPair>, Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        let op = SnapshotBatchGet::new(self.core.view.clone(), keys, self.ts, self.opts.clone());
        self.run("snapshot_batch_get", op).await
    }

    /// Up to `limit` pairs in `range` at the snapshot, in ascending order.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// for pair in snapshot.scan("user/".."user0", 100).await? {
    ///     println!("{pair:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn scan(&self, range: impl Into<KeyRange>, limit: u32) -> Result<Vec<KvPair>, Error> {
        self.scan_inner(range.into(), ScanSpec::forward(limit)).await
    }

    /// Like [`Snapshot::scan`], keys only (values are not sent).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// let keys = snapshot.scan_keys("user/".."user0", 100).await?;
    /// # Ok(()) }
    /// ```
    pub async fn scan_keys(
        &self,
        range: impl Into<KeyRange>,
        limit: u32,
    ) -> Result<Vec<Key>, Error> {
        let pairs = self.scan_inner(range.into(), ScanSpec::forward(limit).keys_only()).await?;
        Ok(pairs.into_iter().map(|p| p.key).collect())
    }

    /// Up to `limit` pairs in `range` at the snapshot, in descending order.
    /// In API V1 the range needs a bounded end (client-go cannot locate
    /// "the last region" either).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// // The greatest key of the range and its value.
    /// let last = snapshot.scan_reverse("log/".."log0", 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn scan_reverse(
        &self,
        range: impl Into<KeyRange>,
        limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        self.scan_inner(range.into(), ScanSpec::reverse(limit)).await
    }

    /// A lazy ascending scan of `range`, fetched in batches of
    /// [`DEFAULT_SCAN_BATCH_SIZE`](crate::DEFAULT_SCAN_BATCH_SIZE) (client-go `KVSnapshot.Iter`).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// let mut rows = snapshot.scan_iter("user/".."user0");
    /// while let Some(pair) = rows.next().await? {
    ///     println!("{pair:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn scan_iter(&self, range: impl Into<KeyRange>) -> Scanner<P> {
        Scanner::new(self.clone(), range.into(), false)
    }

    /// A lazy descending scan of `range` (client-go
    /// `KVSnapshot.IterReverse`). In API V1 the range needs a bounded end.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// // The newest ten entries, in one request.
    /// let newest =
    ///     snapshot.scan_reverse_iter("log/".."log0").with_batch_size(10).collect(10).await?;
    /// # Ok(()) }
    /// ```
    pub fn scan_reverse_iter(&self, range: impl Into<KeyRange>) -> Scanner<P> {
        Scanner::new(self.clone(), range.into(), true)
    }

    async fn scan_inner(&self, range: KeyRange, spec: ScanSpec) -> Result<Vec<KvPair>, Error> {
        let op = SnapshotScan::new(self.core.view.clone(), range, spec, self.ts, self.opts.clone());
        self.run("snapshot_scan", op).await
    }

    /// Runs a read of this snapshot after checking its timestamp
    /// (client-go validates the read ts of every read request, and checks
    /// it against the txn safe point).
    pub(crate) async fn run<O: tikv_core::op::Operation>(
        &self,
        kind: &'static str,
        op: O,
    ) -> Result<O::Output, Error> {
        self.core.validate_read_ts(self.ts).await?;
        self.core.check_visibility(self.ts).await?;
        self.core.run(kind, op, &self.interceptors).await
    }

    /// This snapshot with its store RPCs going through `interceptor` after
    /// the ones already set (client-go `KVSnapshot.AddRPCInterceptor`).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::ExecDetailsCollector;
    /// let details = ExecDetailsCollector::new();
    /// let snapshot =
    ///     client.snapshot(client.current_timestamp().await?).with_interceptor(details.clone());
    /// snapshot.scan("a".."z", 100).await?;
    /// println!("{:?}", details.take());
    /// # Ok(()) }
    /// ```
    pub fn with_interceptor(mut self, interceptor: impl RpcInterceptor) -> Self {
        self.interceptors = self.interceptors.with(interceptor);
        self
    }
}

/// Options of a transaction (client-go's per-transaction setters), built
/// from the default with the `with_*` methods:
///
/// ```
/// use tikv_driver::{RequestSource, TransactionOptions};
///
/// let opts = TransactionOptions::default()
///     .with_pessimistic()
///     .with_request_source(RequestSource::external("Update"));
/// assert!(opts.pessimistic && !opts.commit.async_commit);
/// ```
///
/// The option structs are `#[non_exhaustive]`, so new options are not a
/// breaking change; a struct literal does not compile outside the crate:
///
/// ```compile_fail,E0639
/// let opts = tikv_driver::TransactionOptions { pessimistic: true, ..Default::default() };
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransactionOptions {
    /// How the commit goes through (async commit, 1PC, causal consistency,
    /// assertion level).
    pub commit: CommitOptions,
    /// How reads are done (priority, isolation level, cache).
    pub read: ReadOptions,
    /// Lock keys as they are locked ([`Transaction::lock_keys`],
    /// [`Transaction::get_for_update`]) instead of at commit (client-go
    /// `SetPessimistic`).
    pub pessimistic: bool,
}

impl TransactionOptions {
    /// Replaces the commit options whole.
    ///
    /// ```
    /// use tikv_driver::{CommitOptions, TransactionOptions};
    /// let commit = CommitOptions::default().with_async_commit(true).with_one_pc(true);
    /// let opts = TransactionOptions::default().with_commit_options(commit);
    /// assert!(opts.commit.async_commit && opts.commit.one_pc);
    /// ```
    pub fn with_commit_options(mut self, commit: CommitOptions) -> Self {
        self.commit = commit;
        self
    }

    /// Replaces the read options whole.
    ///
    /// ```
    /// use tikv_driver::{ReadOptions, TransactionOptions};
    /// let read = ReadOptions::default().with_not_fill_cache(true);
    /// let opts = TransactionOptions::default().with_read_options(read);
    /// assert!(opts.read.not_fill_cache);
    /// ```
    pub fn with_read_options(mut self, read: ReadOptions) -> Self {
        self.read = read;
        self
    }

    /// A pessimistic transaction (client-go `SetPessimistic(true)`): keys
    /// are locked in TiKV when [`Transaction::lock_keys`] or
    /// [`Transaction::get_for_update`] is called, so a commit does not fail
    /// on a write conflict on them.
    ///
    /// ```
    /// use tikv_driver::TransactionOptions;
    /// let opts = TransactionOptions::default().with_pessimistic();
    /// assert!(opts.pessimistic);
    /// ```
    pub fn with_pessimistic(mut self) -> Self {
        self.pessimistic = true;
        self
    }

    /// Tries async commit (client-go `SetEnableAsyncCommit`).
    ///
    /// ```
    /// use tikv_driver::TransactionOptions;
    /// let opts = TransactionOptions::default().with_async_commit();
    /// assert!(opts.commit.async_commit && !opts.commit.one_pc);
    /// ```
    pub fn with_async_commit(mut self) -> Self {
        self.commit.async_commit = true;
        self
    }

    /// Tries one-phase commit (client-go `SetEnable1PC`).
    ///
    /// ```
    /// use tikv_driver::TransactionOptions;
    /// // 1PC where the mutations fit one region, async commit otherwise.
    /// let opts = TransactionOptions::default().with_one_pc().with_async_commit();
    /// assert!(opts.commit.one_pc && opts.commit.async_commit);
    /// ```
    pub fn with_one_pc(mut self) -> Self {
        self.commit.one_pc = true;
        self
    }

    /// Skips the extra TSO round that makes async commit / 1PC linearizable
    /// (client-go `SetCausalConsistency(true)`).
    ///
    /// ```
    /// use tikv_driver::TransactionOptions;
    /// let opts = TransactionOptions::default().with_async_commit().with_causal_consistency();
    /// assert!(opts.commit.causal_consistency);
    /// ```
    pub fn with_causal_consistency(mut self) -> Self {
        self.commit.causal_consistency = true;
        self
    }

    /// How strictly TiKV checks the assertions the mutations carry
    /// (client-go `SetAssertionLevel`; `Off` by default).
    ///
    /// ```
    /// use tikv_driver::TransactionOptions;
    /// use tikv_driver::proto::kvrpcpb::AssertionLevel;
    /// let opts = TransactionOptions::default().with_assertion_level(AssertionLevel::Strict);
    /// assert_eq!(opts.commit.assertion_level, AssertionLevel::Strict);
    /// ```
    pub fn with_assertion_level(mut self, level: kvrpcpb::AssertionLevel) -> Self {
        self.commit.assertion_level = level;
        self
    }

    /// Splits and scatters a region before the prewrite when it would get
    /// at least `thresholds.detect_mutations` of the transaction's
    /// mutations (client-go's pre-split of large transactions: 100,000
    /// mutations, cut every 32 MiB, by default).
    ///
    /// ```
    /// use tikv_driver::{PreSplitThresholds, TransactionOptions};
    /// // Pre-split a region that would get 10,000 mutations, every 16 MiB.
    /// let thresholds = PreSplitThresholds::new(10_000, 16 << 20);
    /// let opts = TransactionOptions::default().with_pre_split(thresholds);
    /// assert_eq!(opts.commit.pre_split.detect_mutations, 10_000);
    /// ```
    pub fn with_pre_split(mut self, thresholds: PreSplitThresholds) -> Self {
        self.commit.pre_split = thresholds;
        self
    }

    /// Serves the transaction's snapshot reads from the replicas `read`
    /// chooses (client-go `KVTxn.GetSnapshot().SetReplicaRead`); locks and
    /// the commit always go to the leaders.
    ///
    /// ```
    /// use tikv_driver::{ReplicaRead, ReplicaReadType, TransactionOptions};
    /// let read = ReplicaRead::of(ReplicaReadType::Follower);
    /// let opts = TransactionOptions::default().with_replica_read(read);
    /// assert_eq!(opts.read.replica_read.read_type, ReplicaReadType::Follower);
    /// ```
    pub fn with_replica_read(mut self, read: ReplicaRead) -> Self {
        self.read.replica_read = read;
        self
    }

    /// Schedules every request of the transaction at `priority` in TiKV
    /// (client-go `SetPriority`).
    ///
    /// ```
    /// use tikv_driver::TransactionOptions;
    /// use tikv_driver::proto::kvrpcpb::CommandPri;
    /// let opts = TransactionOptions::default().with_priority(CommandPri::Low);
    /// assert_eq!(opts.read.tags.priority, CommandPri::Low);
    /// assert_eq!(opts.commit.tags.priority, CommandPri::Low);
    /// ```
    pub fn with_priority(self, priority: kvrpcpb::CommandPri) -> Self {
        self.with_tags(|t| t.priority = priority)
    }

    /// Labels every request with who sent it (client-go
    /// `SetRequestSourceType` and friends), for TiKV's metrics and
    /// resource control.
    ///
    /// ```
    /// use tikv_driver::{RequestSource, TransactionOptions};
    /// let source = RequestSource::internal("stats");
    /// let opts = TransactionOptions::default().with_request_source(source);
    /// assert_eq!(opts.commit.tags.request_source, Some(RequestSource::internal("stats")));
    /// ```
    pub fn with_request_source(self, source: RequestSource) -> Self {
        self.with_tags(|t| t.request_source = Some(source.clone()))
    }

    /// Charges every request to this resource group (client-go
    /// `SetResourceGroupName`).
    ///
    /// ```
    /// use tikv_driver::TransactionOptions;
    /// let opts = TransactionOptions::default().with_resource_group_name("batch");
    /// assert_eq!(opts.read.tags.resource_group_name.as_deref(), Some("batch"));
    /// ```
    pub fn with_resource_group_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with_tags(|t| t.resource_group_name = Some(name.clone()))
    }

    /// Attaches opaque bytes TiKV attributes resource usage to (client-go
    /// `SetResourceGroupTag`).
    ///
    /// ```
    /// use tikv_driver::TransactionOptions;
    /// let opts = TransactionOptions::default().with_resource_group_tag("plan-digest");
    /// assert_eq!(&opts.commit.tags.resource_group_tag[..], b"plan-digest");
    /// ```
    pub fn with_resource_group_tag(self, tag: impl Into<bytes::Bytes>) -> Self {
        let tag = tag.into();
        self.with_tags(|t| t.resource_group_tag = tag.clone())
    }

    /// The tags live in both the read and the commit options (reads and the
    /// commit are separate operations); the builders keep them equal.
    fn with_tags(mut self, set: impl Fn(&mut RequestTags)) -> Self {
        set(&mut self.read.tags);
        set(&mut self.commit.tags);
        self
    }
}

/// A transaction (client-go `KVTxn`): reads see the snapshot at its start
/// timestamp plus its own writes; writes are buffered and sent at
/// [`Transaction::commit`].
///
/// An optimistic transaction sends nothing before commit, so dropping it
/// leaves nothing behind. A pessimistic one
/// ([`TransactionOptions::with_pessimistic`]) holds the locks it took
/// until it commits or rolls back; dropping it without either rolls them
/// back in the background.
#[must_use = "a transaction writes nothing until committed; dropped, its locks are rolled back"]
pub struct Transaction<P: Platform> {
    core: Arc<ClientCore<P>>,
    /// Around every store RPC of the transaction, its background work
    /// included.
    interceptors: Interceptors,
    start_ts: Timestamp,
    started: tikv_core::time::Instant,
    pub(crate) buffer: MemBuffer,
    options: TransactionOptions,
    finished: bool,
    /// The primary of a pessimistic transaction, chosen by its first lock.
    primary: Option<Key>,
    /// The newest `for_update_ts` its locks were taken at (zero before the
    /// first).
    for_update_ts: Timestamp,
    /// Heartbeats on the primary from the first lock (client-go's TTL
    /// manager); dropping it stops them.
    keep_alive: Option<Background>,
    /// The open fair-locking session, if any.
    fair: Option<FairLocking>,
    /// The largest ts of a write a fair lock was taken over: rollbacks
    /// need a `for_update_ts` at least this, and a key locked again is
    /// read at least at it.
    max_locked_with_conflict_ts: Timestamp,
    /// The `for_update_ts` each fairly locked key's lock carries, checked
    /// by TiKV at prewrite (client-go `forUpdateTSChecks`).
    for_update_ts_checks: std::collections::BTreeMap<Key, Timestamp>,
    /// Every pessimistic lock call's details, merged.
    lock_details: LockKeysDetails,
}

impl<P: Platform> std::fmt::Debug for Transaction<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("start_ts", &self.start_ts)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl<P: Platform> Transaction<P> {
    /// The start timestamp.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let txn = client.begin().await?;
    /// println!("reading as of {}", txn.start_timestamp());
    /// # Ok(()) }
    /// ```
    pub fn start_timestamp(&self) -> Timestamp {
        self.start_ts
    }

    /// Whether the transaction is pessimistic
    /// ([`TransactionOptions::with_pessimistic`]).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::TransactionOptions;
    /// let options = TransactionOptions::default().with_pessimistic();
    /// let txn = client.begin_with_options(options).await?;
    /// assert!(txn.is_pessimistic());
    /// # Ok(()) }
    /// ```
    pub fn is_pessimistic(&self) -> bool {
        self.options.pessimistic
    }

    /// The newest `for_update_ts` this pessimistic transaction locked at
    /// (client-go `GetForUpdateTS`); zero before its first lock and in an
    /// optimistic transaction.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::{Timestamp, TransactionOptions};
    /// let options = TransactionOptions::default().with_pessimistic();
    /// let mut txn = client.begin_with_options(options).await?;
    /// assert_eq!(txn.for_update_timestamp(), Timestamp::ZERO);
    /// txn.get_for_update("k").await?;
    /// assert!(txn.for_update_timestamp() > txn.start_timestamp());
    /// # Ok(()) }
    /// ```
    pub fn for_update_timestamp(&self) -> Timestamp {
        self.for_update_ts
    }

    /// The number of keys buffered: writes, and keys only locked or marked
    /// (client-go `KVTxn.Len`).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let mut txn = client.begin().await?;
    /// txn.put("a", "1")?;
    /// txn.delete("b")?;
    /// assert_eq!(txn.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Whether nothing is buffered (see [`len`](Self::len)).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let mut txn = client.begin().await?;
    /// assert!(txn.is_empty());
    /// txn.put("k", "v")?;
    /// assert!(!txn.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The bytes of keys and values buffered (client-go `KVTxn.Size`, what
    /// the transaction size limits count).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let mut txn = client.begin().await?;
    /// txn.put("key", "value")?;
    /// assert_eq!(txn.size(), 8);
    /// # Ok(()) }
    /// ```
    pub fn size(&self) -> usize {
        self.buffer.size()
    }

    /// Whether committing would write nothing: no write and no lock
    /// buffered (client-go `KVTxn.IsReadOnly`). Committing a read-only
    /// transaction sends nothing.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let mut txn = client.begin().await?;
    /// let value = txn.get("k").await?;
    /// assert!(txn.is_read_only());
    /// txn.put("k", "v")?;
    /// assert!(!txn.is_read_only());
    /// # Ok(()) }
    /// ```
    pub fn is_read_only(&self) -> bool {
        !self.buffer.dirty()
    }

    /// Marks the buffered writes' current state, to return to with
    /// [`revert_to_checkpoint`](Self::revert_to_checkpoint) (client-go's
    /// memdb `Checkpoint`, what TiDB's `SAVEPOINT` uses).
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// let mut txn = client.begin().await?;
    /// txn.put("a", "1")?;
    /// let savepoint = txn.checkpoint();
    /// txn.put("a", "2")?;
    /// txn.put("b", "2")?;
    /// txn.revert_to_checkpoint(savepoint)?;
    /// assert_eq!(txn.get("a").await?.as_deref(), Some(&b"1"[..]));
    /// # Ok(()) }
    /// ```
    pub fn checkpoint(&mut self) -> Checkpoint {
        self.buffer.checkpoint()
    }

    /// Undoes every buffered write since `checkpoint` (client-go
    /// `RevertToCheckpoint`). Pessimistic locks taken since stay held until
    /// the transaction ends, as TiDB's `ROLLBACK TO SAVEPOINT` keeps them:
    /// a key locked but no longer written commits as a lock only.
    /// Fails with [`Error::StaleCheckpoint`] if the buffer was already
    /// reverted past `checkpoint`.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let mut txn = client.begin().await?;
    /// txn.put("a", "1")?;
    /// let savepoint = txn.checkpoint();
    /// txn.delete("a")?;
    /// txn.revert_to_checkpoint(savepoint)?;
    /// assert!(txn.key_exists("a").await?);
    /// # Ok(()) }
    /// ```
    pub fn revert_to_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<(), Error> {
        self.check_active()?;
        self.buffer.revert_to_checkpoint(checkpoint)
    }

    /// Sends this transaction's store RPCs from now on, its reads, locks,
    /// commit and background work, through `interceptor` after the ones
    /// already added (client-go `KVTxn.AddRPCInterceptor`); one of the same
    /// name is replaced.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::ExecDetailsCollector;
    /// let details = ExecDetailsCollector::new();
    /// let mut txn = client.begin().await?;
    /// txn.add_interceptor(details.clone());
    /// txn.put("k", "v")?;
    /// txn.commit().await?;
    /// println!("{:?}", details.details());
    /// # Ok(()) }
    /// ```
    pub fn add_interceptor(&mut self, interceptor: impl RpcInterceptor) {
        self.interceptors = self.interceptors.with(interceptor);
    }

    fn check_active(&self) -> Result<(), Error> {
        if self.finished {
            return Err(Error::InvalidArgument("the transaction is already finished".into()));
        }
        Ok(())
    }

    pub(crate) fn snapshot(&self) -> Snapshot<P> {
        Snapshot {
            core: self.core.clone(),
            ts: self.start_ts,
            opts: self.options.read.clone(),
            interceptors: self.interceptors.clone(),
        }
    }

    /// The value of `key`: this transaction's own write if any, else the
    /// snapshot's (core's [`read_point`]).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.put("k", "mine")?;
    /// assert_eq!(txn.get("k").await?.as_deref(), Some(&b"mine"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        let key = key.into();
        match read_point(&self.buffer, key.as_bytes()) {
            PointRead::Put(v) => Ok(Some(v)),
            PointRead::Deleted => Ok(None),
            PointRead::Snapshot => self.snapshot().get(key).await,
        }
    }

    /// Whether `key` exists for this transaction.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.delete("k")?;
    /// assert!(!txn.key_exists("k").await?);
    /// # Ok(()) }
    /// ```
    pub async fn key_exists(&self, key: impl Into<Key>) -> Result<bool, Error> {
        Ok(self.get(key).await?.is_some())
    }

    /// The pairs among `keys` that exist for this transaction, sorted: the
    /// buffer answers the keys it wrote, the snapshot the others (core's
    /// [`UnionBatchGet`]).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.put("a", "1")?;
    /// let pairs = txn.batch_get(["a", "b"]).await?;
    /// assert_eq!(pairs[0].key.as_bytes(), b"a");
    /// # Ok(()) }
    /// ```
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<KvPair>, Error> {
        let mut get = UnionBatchGet::new(&self.buffer, keys.into_iter().map(Into::into));
        let from_snapshot = self.snapshot().batch_get(get.take_snapshot_keys()).await?;
        Ok(get.merge(from_snapshot))
    }

    /// Up to `limit` pairs in `range` for this transaction, ascending.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.put("user/3", "carol")?;
    /// // The snapshot's users and the one written above, in key order.
    /// let users = txn.scan("user/".."user0", 100).await?;
    /// assert!(users.iter().any(|p| p.key.as_bytes() == b"user/3"));
    /// # Ok(()) }
    /// ```
    pub async fn scan(&self, range: impl Into<KeyRange>, limit: u32) -> Result<Vec<KvPair>, Error> {
        self.scan_merged(range.into(), limit, false).await
    }

    /// Up to `limit` pairs in `range` for this transaction, descending.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// // The greatest key of the range as this transaction sees it.
    /// let last = txn.scan_reverse("log/".."log0", 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn scan_reverse(
        &self,
        range: impl Into<KeyRange>,
        limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        self.scan_merged(range.into(), limit, true).await
    }

    /// A lazy ascending scan of `range` as this transaction sees it: the
    /// snapshot merged with the transaction's own writes (client-go's
    /// `UnionIter`), fetched in batches of [`DEFAULT_SCAN_BATCH_SIZE`](crate::DEFAULT_SCAN_BATCH_SIZE).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.delete("user/2")?;
    /// let mut rows = txn.scan_iter("user/".."user0");
    /// while let Some(pair) = rows.next().await? {
    ///     assert_ne!(pair.key.as_bytes(), b"user/2");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn scan_iter(&self, range: impl Into<KeyRange>) -> TxnScanner<'_, P> {
        TxnScanner::new(self, UnionScan::new(range.into(), false, DEFAULT_SCAN_BATCH_SIZE))
    }

    /// A lazy descending scan of `range` as this transaction sees it.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// let newest = txn.scan_reverse_iter("log/".."log0").collect(10).await?;
    /// # Ok(()) }
    /// ```
    pub fn scan_reverse_iter(&self, range: impl Into<KeyRange>) -> TxnScanner<'_, P> {
        TxnScanner::new(self, UnionScan::new(range.into(), true, DEFAULT_SCAN_BATCH_SIZE))
    }

    /// The first `limit` pairs of the merged scan, batched as core's
    /// [`UnionScan::with_limit`] decides.
    async fn scan_merged(
        &self,
        range: KeyRange,
        limit: u32,
        reverse: bool,
    ) -> Result<Vec<KvPair>, Error> {
        let union = UnionScan::with_limit(&self.buffer, range, reverse, limit);
        TxnScanner::new(self, union).collect(limit as usize).await
    }

    /// Buffers `key = value`.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.put("k", "v")?;
    /// txn.put(b"binary-key", vec![0u8, 1, 2])?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub fn put(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> Result<(), Error> {
        self.check_active()?;
        let key = key.into();
        self.buffer.set(key.as_bytes(), value.into())
    }

    /// Buffers `key = value`, requiring that the key does not exist yet
    /// (checked by TiKV at prewrite: `Error::KeyExists` otherwise).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.insert("user/42", "alice")?;
    /// if let Err(e) = txn.commit().await {
    ///     if e.is_key_exists() {
    ///         println!("user 42 exists already");
    ///     } else {
    ///         return Err(e);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn insert(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> Result<(), Error> {
        self.check_active()?;
        let key = key.into();
        self.buffer.set_with_flags(key.as_bytes(), value.into(), &[FlagsOp::SetPresumeKeyNotExists])
    }

    /// Buffers a delete of `key`.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.delete("k")?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub fn delete(&mut self, key: impl Into<Key>) -> Result<(), Error> {
        self.check_active()?;
        let key = key.into();
        self.buffer.delete(key.as_bytes())
    }

    /// Locks `keys` (client-go `LockKeys`).
    ///
    /// In a pessimistic transaction the keys are locked in TiKV now, at a
    /// fresh `for_update_ts`, as `options` says (waiting, values,
    /// existence, lock-only-if-exists, share mode); keys this transaction
    /// already locked are skipped, and a key it locked in share mode cannot
    /// be locked exclusively (client-go refuses the upgrade too). The
    /// returned values are the ones asked for, per key, sorted; a key
    /// locked before is marked `already_locked` (with values asked for,
    /// as client-go). A newer write than the `for_update_ts`
    /// makes the call lock again at a fresh one (TiDB's statement retry, up
    /// to [`PESSIMISTIC_LOCK_MAX_RETRIES`] times); [`Error::Deadlock`],
    /// [`Error::LockWaitTimeout`] and [`Error::LockAcquireFailAndNoWaitSet`]
    /// end it, and whatever it locked is rolled back.
    ///
    /// In an optimistic transaction the keys are only marked: the commit
    /// fails with a write conflict if another transaction wrote them after
    /// this one started, even though this one does not write them.
    ///
    /// [`lock_keys_with_details`](Self::lock_keys_with_details) also tells
    /// how the call went.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use std::time::Duration;
    /// use tikv_driver::{LockOptions, TransactionOptions};
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// // Wait up to 500 ms for other transactions' locks; return the values.
    /// let options = LockOptions::new().wait_timeout(Duration::from_millis(500)).return_values();
    /// for (key, returned) in txn.lock_keys(["job/1", "job/2"], options).await? {
    ///     println!("{key:?}: {:?}", returned.value);
    /// }
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock_keys(
        &mut self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
        options: LockOptions,
    ) -> Result<Vec<(Key, ReturnedValue)>, Error> {
        self.lock_keys_with_details(keys, options).await.0
    }

    /// [`lock_keys`](Self::lock_keys), also telling how the call went
    /// (client-go's `LockKeysDetails`, filled in `LockCtx.Stats`), whatever
    /// the outcome: its time, the regions and keys it locked, its lock
    /// requests (how many, their time, the slowest with its region, store
    /// and TiKV's exec details), the lock waits and statement retries, the
    /// time resolving locks and backing off, and fair locking's counts.
    /// A call that redoes its lock at a fresh `for_update_ts` after a newer
    /// write sums its attempts, as client-go's `Merge` does (so `keys`
    /// counts each attempt's keys). An optimistic transaction sends
    /// nothing and reports empty details. The same details are summed
    /// over the transaction's lock calls in
    /// [`lock_keys_details`](Self::lock_keys_details).
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{LockOptions, TransactionOptions};
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// let (locked, details) = txn.lock_keys_with_details(["a", "b"], LockOptions::new()).await;
    /// println!(
    ///     "{} keys in {} regions in {:?}: {} lock RPCs ({:?}), {} statement retries",
    ///     details.keys, details.regions, details.total,
    ///     details.lock_rpc_count, details.lock_rpc_time, details.statement_retries,
    /// );
    /// if let Some(slowest) = &details.slowest {
    ///     println!("slowest {:?} on region {} at {}", slowest.time, slowest.region_id, slowest.store_addr);
    /// }
    /// locked?;
    /// # Ok(()) }
    /// ```
    pub async fn lock_keys_with_details(
        &mut self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
        options: LockOptions,
    ) -> (Result<Vec<(Key, ReturnedValue)>, Error>, LockKeysDetails) {
        let mut details = LockKeysDetails::default();
        if !self.options.pessimistic {
            return (self.lock_keys_optimistic(keys), details);
        }
        let started = self.core.rt.now();
        let locked = self.lock_keys_reporting(keys, options, &mut details).await;
        details.total = self.core.rt.now().saturating_duration_since(started);
        self.lock_details.merge(&details);
        (locked, details)
    }

    /// Every pessimistic lock call's [`LockKeysDetails`] so far, summed
    /// (client-go merges each `LockKeys`'s `LockCtx.Stats`): the calls of
    /// [`lock_keys`](Self::lock_keys), [`get_for_update`](Self::get_for_update)
    /// and [`batch_get_for_update`](Self::batch_get_for_update), failed
    /// ones included.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{LockOptions, TransactionOptions};
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// txn.lock_keys(["a"], LockOptions::new()).await?;
    /// txn.get_for_update("b").await?;
    /// let sum = txn.lock_keys_details();
    /// println!("{} lock RPCs, {:?} waiting in them", sum.lock_rpc_count, sum.lock_rpc_time);
    /// # Ok(()) }
    /// ```
    pub fn lock_keys_details(&self) -> &LockKeysDetails {
        &self.lock_details
    }

    /// An optimistic transaction's lock: a mark checked at commit.
    fn lock_keys_optimistic(
        &mut self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<(Key, ReturnedValue)>, Error> {
        self.check_active()?;
        for key in keys.into_iter().map(Into::into) {
            self.buffer.update_flags(key.as_bytes(), &[FlagsOp::SetKeyLocked])?;
        }
        Ok(Vec::new())
    }

    async fn lock_keys_reporting(
        &mut self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
        options: LockOptions,
        details: &mut LockKeysDetails,
    ) -> Result<Vec<(Key, ReturnedValue)>, Error> {
        self.check_active()?;
        let mut keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        keys.sort();
        keys.dedup();
        if self.fair.is_some() {
            if options.in_share_mode {
                return Err(Error::InvalidArgument(
                    "shared locks are not supported in fair locking".into(),
                ));
            }
            if keys.len() > 1 {
                // client-go: fair locking applies to single-key calls; a
                // call of several keys ends the session as `done` does and
                // locks normally.
                self.done_fair_locking()?;
            }
        }
        let shared = |k: &Key| {
            self.buffer
                .get(k.as_bytes())
                .is_some_and(|e| e.flags.contains(KeyFlags::KEY_LOCKED_IN_SHARE_MODE))
        };
        if !options.in_share_mode && keys.iter().any(shared) {
            // client-go: "upgrading a shared lock to an exclusive lock is
            // not supported".
            return Err(Error::InvalidArgument(
                "a key locked in share mode cannot be locked exclusively".into(),
            ));
        }
        for key in keys.iter().filter(|k| self.is_locked(k)) {
            // client-go: a key locked before and found to exist, now
            // inserted, already exists.
            let flags = self.buffer.get(key.as_bytes()).map(|e| e.flags).unwrap_or_default();
            if flags.contains(KeyFlags::NEED_CHECK_EXISTS)
                && flags.contains(KeyFlags::KEY_LOCKED_VAL_EXIST)
            {
                return Err(Error::KeyExists(key.clone()));
            }
        }
        let held_by_fair = |k: &Key| self.fair.as_ref().is_some_and(|f| f.holds(k));
        let (held, keys): (Vec<Key>, Vec<Key>) =
            keys.into_iter().partition(|k| self.is_locked(k) || held_by_fair(k));
        let mut values = Vec::new();
        if options.return_values {
            let marker = ReturnedValue { already_locked: true, ..Default::default() };
            values.extend(held.into_iter().map(|k| (k, marker.clone())));
        }
        if !keys.is_empty() {
            let mut attempts = 0;
            let locked = loop {
                attempts += 1;
                if attempts > 1 {
                    details.statement_retries += 1;
                }
                let for_update_ts = self.core.oracle.get_timestamp().await?;
                let attempt = if self.fair.is_some() {
                    self.acquire_fair(keys.clone(), for_update_ts, &options, details).await
                } else {
                    self.acquire(keys.clone(), for_update_ts, &options, details).await
                };
                match attempt {
                    Err(Error::WriteConflict { .. }) if attempts < PESSIMISTIC_LOCK_MAX_RETRIES => {
                    }
                    other => break other?,
                }
            };
            values.extend(locked);
        }
        values.sort_by(|a, b| a.0.cmp(&b.0));
        values.dedup_by(|a, b| a.0 == b.0);
        Ok(values)
    }

    /// Whether this pessimistic transaction holds a lock on `key`.
    fn is_locked(&self, key: &Key) -> bool {
        self.buffer.get(key.as_bytes()).is_some_and(|e| e.flags.contains(KeyFlags::KEY_LOCKED))
    }

    /// One lock call at `for_update_ts` (client-go `lockKeys`), recorded
    /// in the buffer.
    async fn acquire(
        &mut self,
        keys: Vec<Key>,
        for_update_ts: Timestamp,
        options: &LockOptions,
        details: &mut LockKeysDetails,
    ) -> Result<Vec<(Key, ReturnedValue)>, Error> {
        let outcome = self.send_lock(keys, for_update_ts, options, false, details).await?;
        for key in &outcome.locked {
            // client-go: a key locked without reading it is taken to exist.
            let exists = match outcome.values.binary_search_by(|(k, _)| k.cmp(key)) {
                Ok(i) => outcome.values[i].1.exists,
                Err(_) => true,
            };
            let value_flag = if exists {
                FlagsOp::SetKeyLockedValueExists
            } else {
                FlagsOp::SetKeyLockedValueNotExists
            };
            let mode = if options.in_share_mode {
                FlagsOp::SetKeyLockedInShareMode
            } else {
                FlagsOp::SetKeyLockedInExclusiveMode
            };
            self.buffer.update_flags(
                key.as_bytes(),
                &[FlagsOp::SetKeyLocked, FlagsOp::DelNeedCheckExists, value_flag, mode],
            )?;
        }
        Ok(outcome.values)
    }

    /// One lock call of a single key in a fair-locking session: taken over
    /// from the previous attempt when it can be, else locked in TiKV's
    /// force-lock mode; recorded in the session, not the buffer.
    async fn acquire_fair(
        &mut self,
        keys: Vec<Key>,
        for_update_ts: Timestamp,
        options: &LockOptions,
        details: &mut LockKeysDetails,
    ) -> Result<Vec<(Key, ReturnedValue)>, Error> {
        let now = self.core.rt.now();
        let Some(fair) = self.fair.as_mut() else {
            return Err(Error::InvalidArgument("no fair locking session".into()));
        };
        let [key] = keys.as_slice() else {
            return Err(Error::InvalidArgument("fair locking locks one key per call".into()));
        };
        let assigned = self.primary.is_none();
        if assigned {
            fair.choose_primary(std::slice::from_ref(key));
        }
        if let Reuse::Held(value) = fair.reuse(key, options, for_update_ts, now)? {
            // client-go counts a key taken over among the call's keys and
            // as derived (`filterAggressiveLockedKeys`).
            details.keys += 1;
            details.aggressive_lock_derived += 1;
            if assigned {
                // The previous attempt's primary, still kept alive.
                self.primary = Some(key.clone());
            }
            self.for_update_ts = self.for_update_ts.max(for_update_ts);
            let asked = options.return_values || options.check_existence;
            return Ok(if asked { vec![(key.clone(), value)] } else { Vec::new() });
        }
        let result = self.send_lock(keys.clone(), for_update_ts, options, true, details).await;
        let Some(fair) = self.fair.as_mut() else {
            return Err(Error::InvalidArgument("no fair locking session".into()));
        };
        match result {
            Ok(outcome) => {
                for locked in &outcome.locked {
                    let value = match outcome.values.binary_search_by(|(k, _)| k.cmp(locked)) {
                        Ok(i) => outcome.values[i].1.clone(),
                        Err(_) => ReturnedValue::default(),
                    };
                    fair.record(locked.clone(), value, options, for_update_ts);
                }
                self.max_locked_with_conflict_ts =
                    self.max_locked_with_conflict_ts.max(outcome.max_locked_with_conflict_ts);
                Ok(outcome.values)
            }
            Err(e) => {
                // The call rolled its key back (its follow-up).
                fair.forget(&keys, Timestamp::ZERO);
                Err(e)
            }
        }
    }

    /// Sends one lock call at `for_update_ts` and handles what follows it:
    /// the rollback of a failed call, the keys presumed absent, and the
    /// heartbeats once the primary is locked. The call's details are
    /// merged into `details`.
    async fn send_lock(
        &mut self,
        keys: Vec<Key>,
        for_update_ts: Timestamp,
        options: &LockOptions,
        force_lock: bool,
        details: &mut LockKeysDetails,
    ) -> Result<AcquireOutcome, Error> {
        let presumed_absent: Vec<Key> = keys
            .iter()
            .filter(|k| {
                let entry = self.buffer.get(k.as_bytes());
                entry.is_some_and(|e| e.flags.has_presume_key_not_exists())
            })
            .cloned()
            .collect();
        let req = AcquireRequest {
            start_ts: self.start_ts,
            for_update_ts,
            primary: self.primary.clone(),
            keys,
            presumed_absent: presumed_absent.clone(),
            txn_elapsed: self.core.rt.now().saturating_duration_since(self.started),
            options: options.clone(),
            force_lock,
            tags: self.options.commit.tags.clone(),
        };
        let mut op = AcquirePessimisticLocks::new(self.core.view.clone(), req);
        let result = self.core.run("txn_lock_keys", &mut op, &self.interceptors).await;
        details.merge(&op.details());
        self.for_update_ts = self.for_update_ts.max(for_update_ts);
        if let Some(rollback) = op.take_follow_up() {
            if matches!(result, Err(Error::Deadlock { retryable: true, .. })) {
                // client-go waits for the rollback before a retryable
                // deadlock is retried, so the other transaction gets the
                // keys; the rollback's own failure changes nothing.
                let rolled_back =
                    self.core.run("pessimistic_rollback", rollback, &self.interceptors).await;
                observe::background_result("pessimistic_rollback", &rolled_back);
            } else {
                self.core.spawn_op("pessimistic_rollback", rollback, &self.interceptors);
            }
        }
        if result.is_err() {
            // client-go unmarks the keys it presumed absent when locking
            // them failed.
            for key in &presumed_absent {
                self.buffer.update_flags(key.as_bytes(), &[FlagsOp::DelPresumeKeyNotExists])?;
            }
        }
        let outcome = result?;
        if let Some(primary) = outcome.assigned_primary.clone() {
            // client-go starts the TTL manager once the primary is locked.
            let elapsed = self.core.rt.now().saturating_duration_since(self.started);
            let keep_alive = KeepAlive::new(
                self.core.view.clone(),
                self.start_ts,
                primary.clone(),
                elapsed,
                self.options.commit.tags.clone(),
            );
            let keep_alive =
                self.core.spawn_op_until_dropped("txn_keep_alive", keep_alive, &self.interceptors);
            self.keep_alive = Some(keep_alive);
            self.primary = Some(primary);
        }
        Ok(outcome)
    }

    /// Opens a fair ("aggressive") locking session (client-go
    /// `StartAggressiveLocking`, TiDB's fair locking): until
    /// [`done_fair_locking`](Self::done_fair_locking) or
    /// [`cancel_fair_locking`](Self::cancel_fair_locking), each
    /// single-key [`lock_keys`](Self::lock_keys) (and `get_for_update`)
    /// locks in TiKV's force-lock mode: a request that waited for another
    /// transaction takes the lock when it is released even if that
    /// transaction wrote the key, and returns the newest value with
    /// [`ReturnedValue::locked_with_conflict_ts`] set, instead of failing
    /// with a write conflict. Waiters are woken in order, so contended keys
    /// are served fairly and no work is thrown away.
    ///
    /// A caller whose statement must be redone (it read something older
    /// than such a value) calls [`retry_fair_locking`](Self::retry_fair_locking)
    /// and runs it again: keys it locks again keep their locks without an
    /// RPC; the ones it no longer needs are released at the next retry or
    /// at done. A lock call of several keys ends the session as done does.
    /// Only for pessimistic transactions; shared locks are refused while a
    /// session is open.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::TransactionOptions;
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// txn.start_fair_locking()?;
    /// let n = txn.get_for_update("counter").await?; // waits, then the newest value
    /// let n: u64 = n.map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0));
    /// txn.done_fair_locking()?;
    /// txn.put("counter", (n + 1).to_string())?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub fn start_fair_locking(&mut self) -> Result<(), Error> {
        self.check_active()?;
        if !self.options.pessimistic {
            return Err(Error::InvalidArgument(
                "fair locking needs a pessimistic transaction".into(),
            ));
        }
        if self.fair.is_some() {
            return Err(Error::InvalidArgument("a fair locking session is already open".into()));
        }
        self.fair = Some(FairLocking::start(self.core.rt.now()));
        Ok(())
    }

    /// Whether a fair-locking session is open.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::TransactionOptions;
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// txn.start_fair_locking()?;
    /// assert!(txn.is_fair_locking());
    /// txn.cancel_fair_locking()?;
    /// assert!(!txn.is_fair_locking());
    /// # Ok(()) }
    /// ```
    pub fn is_fair_locking(&self) -> bool {
        self.fair.is_some()
    }

    /// Ends the current attempt of the fair-locking session and starts the
    /// next (client-go `RetryAggressiveLocking`): the locks this attempt
    /// took are kept for the next one to take over; those of the attempt
    /// before that the current one did not take over are rolled back in
    /// the background.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::TransactionOptions;
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// txn.start_fair_locking()?;
    /// let first = txn.get_for_update("queue/head").await?;
    /// // The statement saw something it must redo (as TiDB retries a
    /// // statement): the next attempt takes the lock over without an RPC.
    /// txn.retry_fair_locking()?;
    /// let again = txn.get_for_update("queue/head").await?;
    /// txn.done_fair_locking()?;
    /// # let _ = (first, again);
    /// # Ok(()) }
    /// ```
    pub fn retry_fair_locking(&mut self) -> Result<(), Error> {
        self.check_active()?;
        let now = self.core.rt.now();
        let Some(fair) = self.fair.as_mut() else {
            return Err(Error::InvalidArgument("no fair locking session".into()));
        };
        let (rollback, unset_primary) = fair.retry(now);
        if unset_primary {
            // Chosen again by the next attempt; its heartbeats go on
            // meanwhile (client-go `resetPrimary(true)`).
            self.primary = None;
        }
        self.spawn_rollback(rollback);
        Ok(())
    }

    /// Ends the fair-locking session keeping the final attempt's locks as
    /// if they were taken normally (client-go `DoneAggressiveLocking`); the
    /// previous attempt's unneeded locks are rolled back in the
    /// background. The prewrite checks that each key's lock still carries
    /// the `for_update_ts` it was taken at.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::TransactionOptions;
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// txn.start_fair_locking()?;
    /// txn.get_for_update("seat/12").await?;
    /// txn.done_fair_locking()?; // the lock is now an ordinary pessimistic lock
    /// txn.put("seat/12", "taken")?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub fn done_fair_locking(&mut self) -> Result<(), Error> {
        self.check_active()?;
        let Some(fair) = self.fair.take() else {
            return Err(Error::InvalidArgument("no fair locking session".into()));
        };
        let done = fair.done();
        if done.reset_primary {
            // The primary chosen during the session is not locked any more.
            self.primary = None;
            self.keep_alive = None;
        }
        self.max_locked_with_conflict_ts =
            self.max_locked_with_conflict_ts.max(done.max_locked_with_conflict_ts);
        for locked in &done.locked {
            let value_flag = if locked.exists() {
                FlagsOp::SetKeyLockedValueExists
            } else {
                FlagsOp::SetKeyLockedValueNotExists
            };
            self.buffer.update_flags(
                locked.key.as_bytes(),
                &[
                    FlagsOp::SetKeyLocked,
                    FlagsOp::DelNeedCheckExists,
                    value_flag,
                    FlagsOp::SetKeyLockedInExclusiveMode,
                ],
            )?;
            self.for_update_ts_checks
                .entry(locked.key.clone())
                .or_insert(locked.actual_for_update_ts);
        }
        self.spawn_rollback(done.rollback);
        Ok(())
    }

    /// Ends the fair-locking session giving up every lock it took
    /// (client-go `CancelAggressiveLocking`), rolled back in the
    /// background.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::TransactionOptions;
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// txn.start_fair_locking()?;
    /// if txn.get_for_update("seat/12").await?.is_some() {
    ///     txn.cancel_fair_locking()?; // taken: release what the session locked
    /// }
    /// # Ok(()) }
    /// ```
    pub fn cancel_fair_locking(&mut self) -> Result<(), Error> {
        self.check_active()?;
        let Some(fair) = self.fair.take() else {
            return Err(Error::InvalidArgument("no fair locking session".into()));
        };
        self.max_locked_with_conflict_ts =
            self.max_locked_with_conflict_ts.max(fair.max_locked_with_conflict_ts());
        let (keys, lost_primary) = fair.cancel();
        if lost_primary {
            self.primary = None;
            self.keep_alive = None;
        }
        self.spawn_rollback(keys);
        Ok(())
    }

    /// The `for_update_ts` a rollback of this transaction's locks needs:
    /// the newest any of them carries.
    fn rollback_for_update_ts(&self) -> Timestamp {
        let fair = self.fair.as_ref().map_or(Timestamp::ZERO, |f| f.max_locked_with_conflict_ts());
        self.for_update_ts.max(self.max_locked_with_conflict_ts).max(fair)
    }

    /// Rolls `keys`' pessimistic locks back in the background (client-go
    /// `asyncPessimisticRollback`).
    fn spawn_rollback(&self, keys: Vec<Key>) {
        if keys.is_empty() {
            return;
        }
        let op = rollback_pessimistic_locks(
            &self.core.view,
            self.start_ts,
            self.rollback_for_update_ts(),
            keys,
            &self.options.commit.tags,
        );
        self.core.spawn_op("fair_locking_rollback", op, &self.interceptors);
    }

    /// Locks `key` and returns its latest committed value, or this
    /// transaction's own write of it (`SELECT ... FOR UPDATE`). A key this
    /// transaction locked before is read at the newest `for_update_ts`,
    /// which no other transaction can have written past while the lock is
    /// held. In an optimistic transaction: [`Transaction::get`] plus an
    /// optimistic lock.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::TransactionOptions;
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// let balance = txn.get_for_update("account/7").await?; // others wait for us now
    /// let balance: i64 = balance.map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0));
    /// txn.put("account/7", (balance - 10).to_string())?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_for_update(&mut self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        let key = key.into();
        let mut pairs = self.batch_get_for_update([key]).await?;
        Ok(pairs.pop().map(|p| p.value))
    }

    /// Locks `keys` and returns the pairs among them that exist, sorted, as
    /// [`Transaction::get_for_update`] reads them.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::TransactionOptions;
    /// let mut txn = client.begin_with_options(TransactionOptions::default().with_pessimistic()).await?;
    /// for pair in txn.batch_get_for_update(["account/7", "account/8"]).await? {
    ///     println!("{:?} = {:?}", pair.key, pair.value);
    /// }
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_get_for_update(
        &mut self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<KvPair>, Error> {
        let mut keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        keys.sort();
        keys.dedup();
        if !self.options.pessimistic {
            self.lock_keys(keys.clone(), LockOptions::new()).await?;
            return self.batch_get(keys).await;
        }
        let locked = self.lock_keys(keys.clone(), LockOptions::new().return_values()).await?;
        let mut read_again = Vec::new();
        let mut out = Vec::new();
        for key in keys {
            match read_point(&self.buffer, key.as_bytes()) {
                PointRead::Put(v) => out.push(KvPair::new(key, v)),
                PointRead::Deleted => {}
                PointRead::Snapshot => match locked.binary_search_by(|(k, _)| k.cmp(&key)) {
                    Ok(i) if locked[i].1.already_locked => read_again.push(key),
                    Ok(i) if locked[i].1.exists => {
                        out.push(KvPair::new(key, locked[i].1.value.clone()))
                    }
                    Ok(_) => {}
                    // Not locked (lock-only-if-exists never applies here).
                    Err(_) => {}
                },
            }
        }
        if !read_again.is_empty() {
            // A key locked over a newer write is read at least at that
            // write; holding the lock, any later ts reads the same.
            let snapshot = Snapshot {
                core: self.core.clone(),
                ts: self.for_update_ts.max(self.max_locked_with_conflict_ts),
                opts: self.options.read.clone(),
                interceptors: self.interceptors.clone(),
            };
            out.extend(snapshot.batch_get(read_again).await?);
            out.sort_by(|a, b| a.key.cmp(&b.key));
        }
        Ok(out)
    }

    /// The keys this pessimistic transaction holds locks on.
    fn locked_keys(&self) -> Vec<Key> {
        self.buffer
            .iter::<std::ops::RangeFull>(..)
            .filter(|(_, e)| e.flags.contains(KeyFlags::KEY_LOCKED))
            .map(|(k, _)| Key::from(k.to_vec()))
            .collect()
    }

    /// The rollback of this pessimistic transaction's locks, if it holds
    /// any (client-go `rollbackPessimisticLocks`).
    fn pessimistic_rollback(&self) -> Option<impl tikv_core::op::Operation<Output = ()> + use<P>> {
        if !self.options.pessimistic {
            return None;
        }
        let mut keys = self.locked_keys();
        if let Some(fair) = &self.fair {
            keys.extend(fair.held_keys().cloned());
        }
        if keys.is_empty() {
            return None;
        }
        Some(rollback_pessimistic_locks(
            &self.core.view,
            self.start_ts,
            self.rollback_for_update_ts(),
            keys,
            &self.options.commit.tags,
        ))
    }

    /// Commits; returns the commit timestamp.
    ///
    /// Errors are definite unless they are [`Error::Undetermined`]: then the
    /// transaction may or may not have committed (the primary's commit, or
    /// an async-commit/1PC prewrite, lost its answer). On a definite failure
    /// the prewritten locks are rolled back in the background.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// let mut txn = client.begin().await?;
    /// txn.put("k", "v")?;
    /// match txn.commit().await {
    ///     Ok(commit_ts) => println!("committed at {commit_ts}"),
    ///     Err(e) if e.is_undetermined() => println!("may or may not have committed: {e}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn commit(self) -> Result<Timestamp, Error> {
        self.commit_with_details().await.0
    }

    /// [`commit`](Self::commit), also telling where the commit's time went
    /// and what it wrote (client-go's `CommitDetails`), whatever the
    /// outcome. A transaction with nothing to write reports empty details.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// let mut txn = client.begin().await?;
    /// txn.put("k", "v")?;
    /// let (committed, details) = txn.commit_with_details().await;
    /// committed?;
    /// println!("prewrite {:?}, commit {:?}, {} keys", details.prewrite, details.commit, details.write_keys);
    /// # Ok(()) }
    /// ```
    pub async fn commit_with_details(self) -> (Result<Timestamp, Error>, CommitDetails) {
        let mut details = CommitDetails::default();
        let committed = self.commit_reporting(&mut details).await;
        (committed, details)
    }

    async fn commit_reporting(mut self, details: &mut CommitDetails) -> Result<Timestamp, Error> {
        self.check_active()?;
        if let Some(fair) = &self.fair {
            if fair.holds_any() {
                // client-go refuses too; dropped, the transaction rolls
                // every lock back.
                return Err(Error::InvalidArgument(
                    "commit with a fair locking session holding locks: done or cancel it first"
                        .into(),
                ));
            }
            self.cancel_fair_locking()?;
        }
        self.finished = true;
        let (mutations, primary) = if self.options.pessimistic {
            let (mutations, first) = pessimistic_mutations_from_buffer(&self.buffer);
            // The locks point at the primary chosen by the first lock.
            (mutations, self.primary.clone().or(first))
        } else {
            mutations_from_buffer(&self.buffer)
        };
        let Some(primary) = primary else {
            // Nothing to write: a read-only transaction commits at its start.
            return Ok(self.start_ts);
        };
        let written = observe::WriteSize::of(&mutations);
        self.pre_split(&mutations).await;
        let elapsed = self.core.rt.now().saturating_duration_since(self.started);
        let mut committer = Committer::new(
            self.core.view.clone(),
            self.start_ts,
            primary,
            mutations,
            elapsed,
            self.options.commit.clone(),
        );
        if self.options.pessimistic {
            // A transaction that locked nothing prewrites at its start ts.
            committer = committer.pessimistic(self.for_update_ts.max(self.start_ts));
            if !self.for_update_ts_checks.is_empty() {
                let checks = std::mem::take(&mut self.for_update_ts_checks);
                committer = committer.for_update_ts_constraints(checks.into_iter().collect());
            }
        }
        let started = self.core.rt.now();
        let result = self
            .core
            .run_with_budgets(
                "txn_commit",
                &mut committer,
                |c, report| c.budgets().for_each(&mut *report),
                &self.interceptors,
            )
            .await;
        observe::commit_finished(
            &written,
            self.core.rt.now().saturating_duration_since(started),
            &result,
        );
        // The commit settled the primary's fate: no more heartbeats.
        self.keep_alive = None;
        if let Some(follow_up) = committer.take_follow_up() {
            // Secondary commits after a success, the rollback of the
            // prewritten locks after a definite failure.
            let task = if result.is_ok() { "secondary_commit" } else { "commit_cleanup" };
            self.core.spawn_op(task, follow_up, &self.interceptors);
        }
        *details = committer.details();
        result.map(|outcome| outcome.commit_ts)
    }

    /// Splits and scatters the regions that would get too many of the
    /// mutations (client-go's pre-split in `groupMutations`); a failure is
    /// logged and the commit goes on over the regions there are.
    async fn pre_split(&self, mutations: &[Mutation]) {
        if mutations.len() < self.options.commit.pre_split.detect_mutations {
            return;
        }
        let keys = mutations.iter().map(|m| (m.key.clone(), m.key.len() + m.value.len())).collect();
        let op = PreSplit::new(&self.core.view, keys, self.options.commit.pre_split);
        let outcome = self.core.run("txn_pre_split", op, &self.interceptors).await;
        let failure = match outcome {
            Ok(PreSplitOutcome { error: Some(e), .. }) | Err(e) => Err(e),
            Ok(_) => Ok(()),
        };
        observe::background_result("txn_pre_split", &failure);
    }

    /// Abandons the transaction. Nothing was sent for an optimistic
    /// transaction before commit, so there is nothing to undo; a
    /// pessimistic one's locks are rolled back (client-go `Rollback`), and
    /// the rollback's error, if any, is returned (its locks then expire
    /// with their TTL, no longer kept alive).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::TransactionOptions;
    /// let options = TransactionOptions::default().with_pessimistic();
    /// let mut txn = client.begin_with_options(options).await?;
    /// let Some(stock) = txn.get_for_update("stock").await? else {
    ///     // No such item: release the lock now rather than at its TTL.
    ///     return txn.rollback().await;
    /// };
    /// let left: u64 = String::from_utf8_lossy(&stock).parse().unwrap_or(0);
    /// txn.put("stock", left.saturating_sub(1).to_string())?;
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.check_active()?;
        self.finished = true;
        self.keep_alive = None;
        match self.pessimistic_rollback() {
            Some(op) => self.core.run("txn_rollback", op, &self.interceptors).await,
            None => Ok(()),
        }
    }
}

/// client-go leaves retrying a pessimistic statement that met a newer write
/// to TiDB, which retries it up to `pessimistic-txn.max-retry-count` (256)
/// times; [`Transaction::lock_keys`] does the same.
pub const PESSIMISTIC_LOCK_MAX_RETRIES: u32 = 256;

impl<P: Platform> Drop for Transaction<P> {
    /// A pessimistic transaction dropped without commit or rollback rolls
    /// its locks back in the background, so none outlives it.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.keep_alive = None;
        if let Some(op) = self.pessimistic_rollback() {
            self.core.spawn_op("dropped_txn_rollback", op, &self.interceptors);
        }
    }
}
