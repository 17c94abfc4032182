//! The transactional client. So far: timestamps and snapshot reads;
//! transactions and the commit protocols come with issue #3.

use std::sync::Arc;

use tikv_core::Error;
use tikv_core::codec::Mode;
use tikv_core::config::Config;
use tikv_core::key::{Key, KeyRange, KvPair, Value};
use tikv_core::pd::Timestamp;
use tikv_core::txn::snapshot::{ReadOptions, SnapshotBatchGet, SnapshotGet, SnapshotScan};

use crate::client::{ClientCore, Platform};

/// A client for transactional data (client-go's `txnkv.Client`).
///
/// Cheap to clone; clones share connections, caches and background tasks.
/// Today it offers [`TransactionClient::current_timestamp`] and read-only
/// [`Snapshot`]s (point, batch and range reads that resolve the locks they
/// meet); `begin` and the commit protocols are being built (issue #3) and
/// are not part of the API until they work.
pub struct TransactionClient<P: Platform> {
    core: Arc<ClientCore<P>>,
}

impl<P: Platform> Clone for TransactionClient<P> {
    fn clone(&self) -> Self {
        TransactionClient { core: self.core.clone() }
    }
}

impl<P: Platform> std::fmt::Debug for TransactionClient<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionClient").field("pd", &self.core.view.pd.endpoints()).finish()
    }
}

impl<P: Platform> TransactionClient<P> {
    /// Connects to the cluster behind these PD endpoints (API V1).
    pub async fn connect<S: Into<String>>(
        pd_endpoints: impl IntoIterator<Item = S>,
    ) -> Result<Self, Error> {
        Self::connect_with_config(Config::default().with_pd_endpoints(pd_endpoints)).await
    }

    /// Connects with an explicit configuration.
    pub async fn connect_with_config(config: Config) -> Result<Self, Error> {
        let core = ClientCore::<P>::connect(config, Mode::Txn).await?;
        Ok(TransactionClient { core: Arc::new(core) })
    }

    /// A fresh timestamp from PD's TSO, strictly greater than every
    /// timestamp this client handed out before (client-go
    /// `KVStore.CurrentTimestamp`). Concurrent callers share TSO rounds.
    pub async fn current_timestamp(&self) -> Result<Timestamp, Error> {
        self.core.oracle.get_timestamp().await
    }

    /// The PD cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.core.view.pd.cluster_id()
    }

    /// A read-only view of the data as of `ts` (client-go
    /// `KVStore.GetSnapshot`).
    pub fn snapshot(&self, ts: Timestamp) -> Snapshot<P> {
        Snapshot { core: self.core.clone(), ts: ts.version(), opts: ReadOptions::default() }
    }
}

/// A consistent read-only view at one timestamp. Reads that meet locks of
/// other transactions resolve them (committed: read through; rolled back or
/// committed later: skip; alive: wait, bounded by the lock's TTL and the read
/// budget).
pub struct Snapshot<P: Platform> {
    core: Arc<ClientCore<P>>,
    ts: u64,
    opts: ReadOptions,
}

impl<P: Platform> std::fmt::Debug for Snapshot<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("ts", &Timestamp::from_version(self.ts)).finish()
    }
}

impl<P: Platform> Snapshot<P> {
    /// The snapshot's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        Timestamp::from_version(self.ts)
    }

    /// Reads at low priority / without filling TiKV's cache / with another
    /// isolation level (`kvrpcpb::Context` fields).
    pub fn with_read_options(mut self, opts: ReadOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The value of `key` at the snapshot, `None` if it did not exist.
    pub async fn get(&self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        let op = SnapshotGet::new(self.core.view.clone(), key.into(), self.ts, self.opts.clone());
        self.core.run(op).await
    }

    /// Whether `key` existed at the snapshot.
    pub async fn key_exists(&self, key: impl Into<Key>) -> Result<bool, Error> {
        Ok(self.get(key).await?.is_some())
    }

    /// The pairs among `keys` that existed at the snapshot, sorted by key.
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<KvPair>, Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        let op = SnapshotBatchGet::new(self.core.view.clone(), keys, self.ts, self.opts.clone());
        self.core.run(op).await
    }

    /// Up to `limit` pairs in `range` at the snapshot, in ascending order.
    pub async fn scan(&self, range: impl Into<KeyRange>, limit: u32) -> Result<Vec<KvPair>, Error> {
        self.scan_inner(range.into(), limit, false, false).await
    }

    /// Like [`Snapshot::scan`], keys only (values are not sent).
    pub async fn scan_keys(
        &self,
        range: impl Into<KeyRange>,
        limit: u32,
    ) -> Result<Vec<Key>, Error> {
        let pairs = self.scan_inner(range.into(), limit, true, false).await?;
        Ok(pairs.into_iter().map(|p| p.key).collect())
    }

    /// Up to `limit` pairs in `range` at the snapshot, in descending order.
    /// In API V1 the range needs a bounded end (client-go cannot locate
    /// "the last region" either).
    pub async fn scan_reverse(
        &self,
        range: impl Into<KeyRange>,
        limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        self.scan_inner(range.into(), limit, false, true).await
    }

    async fn scan_inner(
        &self,
        range: KeyRange,
        limit: u32,
        key_only: bool,
        reverse: bool,
    ) -> Result<Vec<KvPair>, Error> {
        let op = SnapshotScan::new(
            self.core.view.clone(),
            range,
            limit,
            key_only,
            reverse,
            self.ts,
            self.opts.clone(),
        );
        self.core.run(op).await
    }
}
