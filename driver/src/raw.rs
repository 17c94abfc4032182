//! The public RawKV client.

use std::sync::Arc;
use std::time::Duration;

use tikv_core::Error;
use tikv_core::codec::Mode;
use tikv_core::config::Config;
use tikv_core::key::{Key, KeyRange, KvPair, ScanSpec, Value};
use tikv_core::op::Operation;
use tikv_core::raw::{self, ColumnFamily, PutItem, RawOptions};
use tikv_core::route::replica::ReplicaRead;

use crate::client::{ClientCore, Platform};
use crate::interceptor::{Interceptors, RpcInterceptor};

pub use tikv_core::raw::{CasOutcome, RawChecksum};

/// A RawKV client (client-go's `rawkv.Client`): a key-value store with no
/// transactions, addressed by key, over every region of the cluster.
///
/// Cheap to clone; clones share connections, caches and background tasks.
/// `with_cf` and `with_atomic_for_cas` return a handle with other options on
/// the same client.
///
/// ```no_run
/// # async fn demo<P: tikv_driver::Platform>() -> Result<(), tikv_driver::Error> {
/// // A runtime crate names the platform: `tikv_tokio::RawClient` is `RawClient<Tokio>`.
/// let client = tikv_driver::RawClient::<P>::connect(["127.0.0.1:2379"]).await?;
/// client.put("k", "v").await?;
/// assert_eq!(client.get("k").await?.as_deref(), Some(&b"v"[..]));
/// let pairs = client.scan("a".."z", 10).await?;
/// # let _ = pairs;
/// # Ok(()) }
/// ```
pub struct RawClient<P: Platform> {
    core: Arc<ClientCore<P>>,
    opts: RawOptions,
    interceptors: Interceptors,
}

impl<P: Platform> Clone for RawClient<P> {
    fn clone(&self) -> Self {
        RawClient {
            core: self.core.clone(),
            opts: self.opts.clone(),
            interceptors: self.interceptors.clone(),
        }
    }
}

impl<P: Platform> std::fmt::Debug for RawClient<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("pd", &self.core.view.pd.endpoints())
            .field("opts", &self.opts)
            .finish()
    }
}

/// Whole seconds for a TTL, rounded up so a sub-second TTL is not "forever".
fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

impl<P: Platform> RawClient<P> {
    /// Connects to the cluster behind these PD endpoints with the default
    /// configuration (API V1).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo<P: Platform>() -> Result<(), Error> {
    /// // With a runtime crate: `tikv_tokio::RawClient::connect([...])`.
    /// let client = RawClient::<P>::connect(["10.0.0.1:2379", "10.0.0.2:2379"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<S: Into<String>>(
        pd_endpoints: impl IntoIterator<Item = S>,
    ) -> Result<Self, Error> {
        Self::connect_with_config(Config::default().with_pd_endpoints(pd_endpoints)).await
    }

    /// Connects with an explicit configuration (PD endpoints, API version
    /// and keyspace, timeouts, backoff budgets, ...).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo<P: Platform>() -> Result<(), Error> {
    /// use std::time::Duration;
    /// use tikv_driver::{ApiVersion, Config};
    ///
    /// let config = Config::default()
    ///     .with_pd_endpoints(["127.0.0.1:2379"])
    ///     .with_api_version(ApiVersion::V2)
    ///     .with_keyspace("app")
    ///     .with_pd_timeout(Duration::from_secs(5));
    /// let client = RawClient::<P>::connect_with_config(config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_config(config: Config) -> Result<Self, Error> {
        let core = ClientCore::<P>::connect(config, Mode::Raw).await?;
        Ok(RawClient {
            core: Arc::new(core),
            opts: RawOptions::default(),
            interceptors: Interceptors::default(),
        })
    }

    /// A handle that reads and writes column family `cf`.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::ColumnFamily;
    /// let lock_cf = client.with_cf(ColumnFamily::Lock);
    /// let value = lock_cf.get("k").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_cf(&self, cf: ColumnFamily) -> Self {
        let mut c = self.clone();
        c.opts.cf = cf;
        c
    }

    /// A handle in atomic mode (client-go `SetAtomicForCAS(true)`): writes
    /// are serialised with compare-and-swap by TiKV. Required for
    /// [`RawClient::compare_and_swap`]; mixing atomic and non-atomic writers
    /// on the same keys is not linearizable.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// let atomic = client.with_atomic_for_cas();
    /// let outcome = atomic.compare_and_swap("owner", None, "node-1").await?;
    /// if !outcome.succeeded {
    ///     println!("owned by {:?}", outcome.previous);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn with_atomic_for_cas(&self) -> Self {
        let mut c = self.clone();
        c.opts.atomic = true;
        c
    }

    /// A handle whose reads (`get`, `batch_get`, `get_key_ttl`, scans) are
    /// served by the replicas `read` chooses: followers, learners, the
    /// leader or a mix, preferring stores with its labels. Writes always go
    /// to the leader.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::{ReplicaRead, ReplicaReadType};
    /// let nearby = client.with_replica_read(
    ///     ReplicaRead::of(ReplicaReadType::Follower).with_label("zone", "us-east-1a"),
    /// );
    /// let value = nearby.get("k").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_replica_read(&self, read: ReplicaRead) -> Self {
        let mut c = self.clone();
        c.opts.replica_read = read;
        c
    }

    /// A handle whose requests to the stores go through `interceptor`
    /// after the ones already added (client-go's `RPCInterceptor`; see
    /// [`crate::interceptor`]). Other handles are unaffected.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::interceptor::interceptor_fn;
    /// let traced = client.with_interceptor(interceptor_fn("log", |rpc, next| {
    ///     eprintln!("{} to store {}", rpc.request.name(), rpc.store_id);
    ///     next.run(rpc)
    /// }));
    /// traced.put("k", "v").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_interceptor(&self, interceptor: impl RpcInterceptor) -> Self {
        let mut c = self.clone();
        c.interceptors = c.interceptors.with(interceptor);
        c
    }

    /// Runs `op` with this handle's interceptors. Not itself `async`: the
    /// caller awaits the core's future directly, one nesting (and one move
    /// of the operation) less per call.
    fn run<O: Operation>(
        &self,
        kind: &'static str,
        op: O,
    ) -> impl Future<Output = Result<O::Output, Error>> {
        self.core.run(kind, op, &self.interceptors)
    }

    /// The PD cluster id (0 until PD has answered once).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # fn demo(client: RawClient<impl Platform>) {
    /// println!("connected to cluster {}", client.cluster_id());
    /// # }
    /// ```
    pub fn cluster_id(&self) -> u64 {
        self.core.view.pd.cluster_id()
    }

    /// Closes the client and every clone of it (client-go `Client.Close`):
    /// later calls fail with [`Error::Closed`] and the background tasks
    /// stop. Returns how many background operations were still running
    /// after waiting for them at most `wait` (a raw client starts none).
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::RawClient<impl tikv_driver::Platform>) {
    /// use std::time::Duration;
    /// assert_eq!(client.close(Duration::from_secs(5)).await, 0);
    /// # }
    /// ```
    pub async fn close(&self, wait: Duration) -> usize {
        self.core.close(wait).await
    }

    /// The value of `key`, or `None` if it does not exist (an existing empty
    /// value is `Some(empty)`).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// match client.get("k").await? {
    ///     Some(value) => println!("k = {value:?}"),
    ///     None => println!("k does not exist"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        self.run("raw_get", raw::get(&self.core.view, key.into(), &self.opts)).await
    }

    /// The pairs that exist among `keys`, sorted by key.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// for pair in client.batch_get(["a", "b", "c"]).await? {
    ///     println!("{pair:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<KvPair>, Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        self.run("raw_batch_get", raw::batch_get(&self.core.view, keys, &self.opts)).await
    }

    /// The value of each of `keys`, in their order, `None` where a key does
    /// not exist (client-go `rawkv.Client.BatchGet`, which returns values
    /// aligned with its keys). A key given twice gets its value twice.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::RawClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// let values = client.batch_get_values(["b", "a", "missing"]).await?;
    /// assert_eq!(values.len(), 3);
    /// assert!(values[2].is_none());
    /// # Ok(()) }
    /// ```
    pub async fn batch_get_values(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<Option<Value>>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        // `batch_get` answers in key order: each key is found by binary
        // search.
        let pairs = self.batch_get(keys.iter()).await?;
        Ok(keys
            .iter()
            .map(|key| {
                pairs.binary_search_by(|p| p.key.cmp(key)).ok().map(|i| pairs[i].value.clone())
            })
            .collect())
    }

    /// Writes `key = value`.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// client.put("k", "v").await?;
    /// client.put(b"binary-key", vec![0u8, 1, 2]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, key: impl Into<Key>, value: impl Into<Value>) -> Result<(), Error> {
        self.put_ttl_secs(key.into(), value.into(), 0).await
    }

    /// Writes `key = value`, expiring after `ttl` (needs a TiKV with API V2
    /// or TTL enabled).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// use std::time::Duration;
    /// client.put_with_ttl("session", "token", Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_with_ttl(
        &self,
        key: impl Into<Key>,
        value: impl Into<Value>,
        ttl: Duration,
    ) -> Result<(), Error> {
        self.put_ttl_secs(key.into(), value.into(), ttl_secs(ttl)).await
    }

    async fn put_ttl_secs(&self, key: Key, value: Value, ttl: u64) -> Result<(), Error> {
        let pair = KvPair { key, value };
        self.run("raw_put", raw::put(&self.core.view, pair, ttl, &self.opts)).await
    }

    /// Writes many pairs; a key given twice keeps its last value.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// client.batch_put([("a", "1"), ("b", "2"), ("c", "3")]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_put(
        &self,
        pairs: impl IntoIterator<Item = impl Into<KvPair>>,
    ) -> Result<(), Error> {
        let items = pairs.into_iter().map(|p| PutItem { pair: p.into(), ttl: 0 }).collect();
        self.run("raw_batch_put", raw::batch_put(&self.core.view, items, &self.opts)).await
    }

    /// Writes many pairs, each with its own TTL (`ttls` pairs up with
    /// `pairs` by position and must have the same length).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// use std::time::Duration;
    /// let ttls = [Duration::from_secs(60), Duration::from_secs(3600)];
    /// client.batch_put_with_ttl([("short", "1"), ("long", "2")], ttls).await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_put_with_ttl(
        &self,
        pairs: impl IntoIterator<Item = impl Into<KvPair>>,
        ttls: impl IntoIterator<Item = Duration>,
    ) -> Result<(), Error> {
        let pairs: Vec<KvPair> = pairs.into_iter().map(Into::into).collect();
        let ttls: Vec<u64> = ttls.into_iter().map(ttl_secs).collect();
        if pairs.len() != ttls.len() {
            return Err(Error::InvalidArgument(format!(
                "{} pairs but {} TTLs",
                pairs.len(),
                ttls.len()
            )));
        }
        let items = pairs.into_iter().zip(ttls).map(|(pair, ttl)| PutItem { pair, ttl }).collect();
        self.run("raw_batch_put", raw::batch_put(&self.core.view, items, &self.opts)).await
    }

    /// Deletes `key` (deleting a missing key is not an error).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// client.delete("k").await?;
    /// assert_eq!(client.get("k").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: impl Into<Key>) -> Result<(), Error> {
        self.run("raw_delete", raw::delete(&self.core.view, key.into(), &self.opts)).await
    }

    /// Deletes many keys.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// client.batch_delete(["a", "b", "c"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_delete(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<(), Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        self.run("raw_batch_delete", raw::batch_delete(&self.core.view, keys, &self.opts)).await
    }

    /// Deletes every key in `range`, region by region (not atomic across
    /// regions, as in client-go).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// // Every key starting with `user/`.
    /// client.delete_range("user/".."user0").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_range(&self, range: impl Into<KeyRange>) -> Result<(), Error> {
        self.run("raw_delete_range", raw::delete_range(&self.core.view, range.into(), &self.opts))
            .await
    }

    /// Up to `limit` pairs in `range`, in ascending key order. `limit` may
    /// be at most the configured maximum (10240 by default).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// for pair in client.scan("user/".."user0", 100).await? {
    ///     println!("{pair:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn scan(&self, range: impl Into<KeyRange>, limit: u32) -> Result<Vec<KvPair>, Error> {
        self.scan_inner(range.into(), ScanSpec::forward(limit)).await
    }

    /// Like [`RawClient::scan`], returning keys only (values are not sent).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// let keys = client.scan_keys("user/".."user0", 100).await?;
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

    /// Up to `limit` pairs in `range`, in descending key order. The range
    /// needs a bounded end in API V1 (client-go cannot locate "the last
    /// region" either).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// // The ten greatest keys of the range first.
    /// let latest = client.scan_reverse("log/".."log0", 10).await?;
    /// # Ok(()) }
    /// ```
    pub async fn scan_reverse(
        &self,
        range: impl Into<KeyRange>,
        limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        self.scan_inner(range.into(), ScanSpec::reverse(limit)).await
    }

    /// Like [`RawClient::scan_reverse`], returning keys only.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// let latest_keys = client.scan_reverse_keys("log/".."log0", 10).await?;
    /// # Ok(()) }
    /// ```
    pub async fn scan_reverse_keys(
        &self,
        range: impl Into<KeyRange>,
        limit: u32,
    ) -> Result<Vec<Key>, Error> {
        let pairs = self.scan_inner(range.into(), ScanSpec::reverse(limit).keys_only()).await?;
        Ok(pairs.into_iter().map(|p| p.key).collect())
    }

    async fn scan_inner(&self, range: KeyRange, spec: ScanSpec) -> Result<Vec<KvPair>, Error> {
        let op = raw::scan(&self.core.view, range, spec, &self.opts)?;
        self.run("raw_scan", op).await
    }

    /// Scans several ranges, up to `each_limit` pairs from each, and
    /// returns them range after range.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// let pairs = client.batch_scan(["a".."b", "x".."z"], 10).await?;
    /// assert!(pairs.len() <= 20);
    /// # Ok(()) }
    /// ```
    pub async fn batch_scan(
        &self,
        ranges: impl IntoIterator<Item = impl Into<KeyRange>>,
        each_limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        let mut out = Vec::new();
        for range in ranges {
            out.extend(self.scan_inner(range.into(), ScanSpec::forward(each_limit)).await?);
        }
        Ok(out)
    }

    /// Like [`RawClient::batch_scan`], returning keys only.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// let keys = client.batch_scan_keys(["a".."b", "x".."z"], 10).await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_scan_keys(
        &self,
        ranges: impl IntoIterator<Item = impl Into<KeyRange>>,
        each_limit: u32,
    ) -> Result<Vec<Key>, Error> {
        let mut out = Vec::new();
        for range in ranges {
            let pairs =
                self.scan_inner(range.into(), ScanSpec::forward(each_limit).keys_only()).await?;
            out.extend(pairs.into_iter().map(|p| p.key));
        }
        Ok(out)
    }

    /// The remaining time to live of `key`: `None` if the key does not
    /// exist, `Some(ZERO)` if it never expires.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// match client.get_key_ttl("session").await? {
    ///     None => println!("no such key"),
    ///     Some(ttl) if ttl.is_zero() => println!("never expires"),
    ///     Some(ttl) => println!("expires in {ttl:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_key_ttl(&self, key: impl Into<Key>) -> Result<Option<Duration>, Error> {
        let op = raw::get_key_ttl(&self.core.view, key.into(), &self.opts);
        let ttl = self.run("raw_get_key_ttl", op).await?;
        Ok(ttl.map(Duration::from_secs))
    }

    /// Writes `new_value` if the current value equals `expected` (`None`:
    /// the key must not exist). Returns the previous value and whether the
    /// swap happened. Needs [`RawClient::with_atomic_for_cas`].
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// let atomic = client.with_atomic_for_cas();
    /// let outcome = atomic.compare_and_swap("version", Some("1".into()), "2").await?;
    /// if outcome.succeeded {
    ///     println!("1 -> 2");
    /// } else {
    ///     println!("was {:?}, left unchanged", outcome.previous);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Key>,
        expected: Option<Value>,
        new_value: impl Into<Value>,
    ) -> Result<CasOutcome, Error> {
        let op = raw::compare_and_swap(
            &self.core.view,
            key.into(),
            expected,
            new_value.into(),
            0,
            &self.opts,
        )?;
        self.run("raw_compare_and_swap", op).await
    }

    /// CRC-64 XOR checksum, pair count and byte count over `range`.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, RawClient};
    /// # async fn demo(client: RawClient<impl Platform>) -> Result<(), Error> {
    /// let sum = client.checksum("a".."z").await?;
    /// println!("{} pairs, {} bytes, crc64 {:#x}", sum.total_kvs, sum.total_bytes, sum.crc64_xor);
    /// # Ok(()) }
    /// ```
    pub async fn checksum(&self, range: impl Into<KeyRange>) -> Result<RawChecksum, Error> {
        self.run("raw_checksum", raw::checksum(&self.core.view, range.into())).await
    }
}
