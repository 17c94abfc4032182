//! Client configuration, with client-go's defaults.
//!
//! Every default names the client-go constant it comes from, so a reader can
//! check it against the Go client. Build a config with
//! `Config::default().with_...(..)`:
//!
//! ```
//! use tikv_core::config::Config;
//! use tikv_core::codec::ApiVersion;
//! use tikv_core::time::Duration;
//! let cfg = Config::default()
//!     .with_pd_endpoints(["127.0.0.1:2379"])
//!     .with_api_version(ApiVersion::V2)
//!     .with_keyspace("tenant1");
//! // Budgets are weighted by `backoff_weight` (client-go `BackOffWeight`, 2).
//! assert_eq!(cfg.budget(cfg.backoff.prewrite), Duration::from_secs(80));
//! ```
//!
//! The transport's settings are a [`TransportConfig`] in
//! [`Config::transport`], so every one of them reaches the runtime crate.

use crate::backoff::{self, Backoffer};
use crate::codec::ApiVersion;
use crate::rng::Rng;
use crate::rpc::batch::BatchPolicy;
use crate::time::Duration;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Per-operation backoff budgets, before weighting (client-go's
/// `*MaxBackoff` constants, in milliseconds there). Apply
/// [`Config::budget`] to get the budget of a `Backoffer`, except where a
/// field says it is used unweighted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackoffBudgets {
    /// TSO requests: 15s (`transaction.TsoMaxBackoff`).
    pub tso: Duration,
    /// Every RawKV operation: 20s (`rawkv.rawkvMaxBackoff`).
    pub raw: Duration,
    /// Snapshot point get: 20s (`txnsnapshot.getMaxBackoff`).
    pub get: Duration,
    /// Snapshot batch get: 20s (`txnsnapshot.batchGetMaxBackoff`).
    pub batch_get: Duration,
    /// One scanner batch: 20s (`txnsnapshot.scannerNextMaxBackoff`).
    pub scan: Duration,
    /// Prewrite: 40s (`transaction.PrewriteMaxBackoff`).
    pub prewrite: Duration,
    /// Commit of the primary batch: 40s (`transaction.CommitMaxBackoff`).
    pub commit: Duration,
    /// Commit of secondary batches: 41s (`transaction.CommitSecondaryMaxBackoff`).
    pub commit_secondary: Duration,
    /// Cleanup (rollback) after a failed commit: 20s (`transaction.cleanupMaxBackoff`).
    pub cleanup: Duration,
    /// Acquiring pessimistic locks: 20s (`transaction.pessimisticLockMaxBackoff`).
    pub pessimistic_lock: Duration,
    /// Pessimistic rollback: 20s (`transaction.pessimisticRollbackMaxBackoff`).
    pub pessimistic_rollback: Duration,
    /// Transaction heartbeats (TTL keep-alive): 20s (`transaction.keepAliveMaxBackoff`).
    pub txn_heartbeat: Duration,
    /// `CheckTxnStatus` from the lock resolver: 20s, used **unweighted**
    /// (`txnlock.getTxnStatusMaxBackoff` with plain `NewBackoffer`).
    pub get_txn_status: Duration,
    /// Resolving locks in the background for async-commit: 40s, used
    /// **unweighted** (`txnlock.asyncResolveLockMaxBackoff`).
    pub async_resolve_lock: Duration,
    /// GC lock resolution, per region: 100s (`tikv.gcResolveLockMaxBackoff`).
    pub gc_resolve_lock: Duration,
    /// Delete-range task, per region: 100s (`rangetask.deleteRangeOneRegionMaxBackoff`).
    pub delete_range_region: Duration,
    /// Region splitting, per split key: 20s (`tikv.splitRegionBackoff`).
    pub split_region: Duration,
    /// Region splitting, ceiling over all keys: 120s (`tikv.maxSplitRegionsBackoff`).
    pub split_region_max: Duration,
    /// Waiting for scatter to finish: 120s (`tikv.waitScatterRegionFinishBackoff`).
    pub wait_scatter: Duration,
    /// Broadcasting transaction status: 10s (`transaction.broadcastMaxBackoff`).
    pub txn_status_broadcast: Duration,
    /// Loading regions for range tasks and cache refreshes: 20s
    /// (`rangetask.locateRegionMaxBackoff`, the region cache's refresh loop).
    pub locate_region: Duration,
    /// Pipelined-DML flush: 20s (`KVTxn` flush backoffer in `txn.go`).
    pub pipelined_flush: Duration,
}

impl Default for BackoffBudgets {
    fn default() -> BackoffBudgets {
        BackoffBudgets {
            tso: secs(15),
            raw: secs(20),
            get: secs(20),
            batch_get: secs(20),
            scan: secs(20),
            prewrite: secs(40),
            commit: secs(40),
            commit_secondary: secs(41),
            cleanup: secs(20),
            pessimistic_lock: secs(20),
            pessimistic_rollback: secs(20),
            txn_heartbeat: secs(20),
            get_txn_status: secs(20),
            async_resolve_lock: secs(40),
            gc_resolve_lock: secs(100),
            delete_range_region: secs(100),
            split_region: secs(20),
            split_region_max: secs(120),
            wait_scatter: secs(120),
            txn_status_broadcast: secs(10),
            locate_region: secs(20),
            pipelined_flush: secs(20),
        }
    }
}

/// Settings of the gRPC transport (`tikv_grpc::GrpcTransport`, which both
/// runtime crates use). Plain data: the runtime crate's `Platform::build`
/// hands [`Config::transport`] to its transport whole. The defaults are
/// client-go's (`internal/client/conn_pool.go`, `config/client.go`).
///
/// ```
/// use tikv_core::config::{Config, TransportConfig};
/// use tikv_core::time::Duration;
///
/// let transport = TransportConfig::default()
///     .connect_timeout(Duration::from_secs(2))
///     .keepalive(Duration::from_secs(20), Duration::from_secs(5))
///     .batch_streams_per_store(2);
/// let config = Config::default().with_transport(transport);
/// assert_eq!(config.transport.connect_timeout, Duration::from_secs(2));
/// assert_eq!(config.transport.keepalive_timeout, Duration::from_secs(5));
/// assert_eq!(config.transport.batch_streams_per_store, 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Limit on establishing a connection (name lookup, TCP connect and
    /// HTTP/2 handshake): 5s (client-go `client.dialTimeout`).
    pub connect_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings, sent also while idle; zero
    /// disables them: 10s (client-go `TiKVClient.GrpcKeepAliveTime`).
    pub keepalive_interval: Duration,
    /// How long to wait for a ping's answer before the connection is
    /// declared dead: 3s (client-go `TiKVClient.GrpcKeepAliveTimeout`).
    pub keepalive_timeout: Duration,
    /// Disable Nagle's algorithm: requests are small and latency-bound. Default on.
    pub tcp_nodelay: bool,
    /// Largest response accepted. Default unlimited, as client-go.
    pub max_decoding_message_size: usize,
    /// Largest request sent. Default unlimited (the server enforces its own).
    pub max_encoding_message_size: usize,
    /// HTTP/2 initial stream window: 128 MiB (client-go's
    /// `DefGrpcInitialWindowSize`).
    pub initial_stream_window_size: u32,
    /// HTTP/2 initial connection window: 128 MiB (client-go's
    /// `DefGrpcInitialConnWindowSize`).
    pub initial_connection_window_size: u32,
    /// Send TiKV requests that have a batch form over long-lived
    /// `BatchCommands` streams per store, as client-go does; the others,
    /// and all requests while a stream cannot be established, go unary.
    /// Default on; off sends every request unary.
    pub batch_commands: bool,
    /// How long a store's batch collector waits for more requests before
    /// sending a short batch. Default [`BatchPolicy::Standard`], client-go's.
    pub batch_policy: BatchPolicy,
    /// `BatchCommands` streams per store, each on its own HTTP/2 connection;
    /// the store's one collector hands whole messages to them in turn.
    /// Default 4 (client-go's `GrpcConnectionCount`): TiKV serves each
    /// connection on one of its gRPC threads, so several spread a busy
    /// client over them.
    pub batch_streams_per_store: usize,
    /// A store's `BatchCommands` streams are closed after this long without
    /// a request queued or in flight, and reopened by the next request
    /// (client-go recycles a `batchConn` idle for `idleTimeout`), so a
    /// client does not hold streams to stores it no longer talks to: 3 min.
    pub batch_idle_timeout: Duration,
    /// TLS for every connection, PD and stores alike (client-go's one
    /// `config.Security` for the whole cluster). Default none: cleartext,
    /// and an `https://` address is refused with `RpcError::Tls`.
    pub tls: Option<TlsConfig>,
}

/// Where a PEM document comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file, read again for every new connection (client-go reloads its
    /// certificates on each handshake), so certificates rotated on disk are
    /// used by the next connection without a restart.
    File(std::path::PathBuf),
    /// PEM text held in memory.
    Pem(Vec<u8>),
}

impl PemSource {
    /// A PEM file, read on each new connection.
    pub fn file(path: impl Into<std::path::PathBuf>) -> PemSource {
        PemSource::File(path.into())
    }

    /// PEM text in memory.
    pub fn pem(text: impl Into<Vec<u8>>) -> PemSource {
        PemSource::Pem(text.into())
    }
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::File(path) => f.debug_tuple("File").field(path).finish(),
            // May hold a private key: never printed.
            PemSource::Pem(text) => write!(f, "Pem({} bytes)", text.len()),
        }
    }
}

/// TLS settings of the client's connections (client-go's `config.Security`:
/// `ClusterSSLCA`, `ClusterSSLCert`, `ClusterSSLKey`).
///
/// The server's certificate must chain to [`TlsConfig::ca`] and name the
/// host the client dials (or [`TlsConfig::server_name`]); a client
/// certificate is presented when the server asks (mutual TLS).
///
/// ```
/// use tikv_core::config::{Config, PemSource, TlsConfig, TransportConfig};
///
/// let tls = TlsConfig::new(PemSource::file("/etc/tikv/ca.pem"))
///     .identity(PemSource::file("/etc/tikv/client.pem"), PemSource::file("/etc/tikv/client-key.pem"));
/// let config = Config::default().with_transport(TransportConfig::default().tls(tls));
/// assert!(config.transport.tls.is_some());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The certificate authorities the servers' certificates must chain to.
    pub ca: PemSource,
    /// The client's certificate chain, presented for mutual TLS.
    pub cert: Option<PemSource>,
    /// The private key of [`TlsConfig::cert`].
    pub key: Option<PemSource>,
    /// The name the servers' certificates must carry, instead of the host
    /// of the address dialled (for certificates issued to one cluster name
    /// while the client dials IPs).
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Verifies servers against `ca`; no client certificate.
    pub fn new(ca: PemSource) -> TlsConfig {
        TlsConfig { ca, cert: None, key: None, server_name: None }
    }

    /// Presents `cert` (with its private `key`) to servers that ask for one.
    pub fn identity(mut self, cert: PemSource, key: PemSource) -> TlsConfig {
        self.cert = Some(cert);
        self.key = Some(key);
        self
    }

    /// Sets [`TlsConfig::server_name`].
    pub fn server_name(mut self, name: impl Into<String>) -> TlsConfig {
        self.server_name = Some(name.into());
        self
    }
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            connect_timeout: secs(5),
            keepalive_interval: secs(10),
            keepalive_timeout: secs(3),
            tcp_nodelay: true,
            max_decoding_message_size: usize::MAX,
            max_encoding_message_size: usize::MAX,
            initial_stream_window_size: 128 << 20,
            initial_connection_window_size: 128 << 20,
            batch_commands: true,
            batch_policy: BatchPolicy::Standard,
            batch_streams_per_store: 4,
            batch_idle_timeout: secs(180),
            tls: None,
        }
    }
}

impl TransportConfig {
    /// Sets [`TransportConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the keepalive ping interval and its answer timeout.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Sets [`TransportConfig::tcp_nodelay`].
    pub fn tcp_nodelay(mut self, enabled: bool) -> Self {
        self.tcp_nodelay = enabled;
        self
    }

    /// Sets the largest response and request message sizes.
    pub fn max_message_sizes(mut self, decoding: usize, encoding: usize) -> Self {
        self.max_decoding_message_size = decoding;
        self.max_encoding_message_size = encoding;
        self
    }

    /// Sets the HTTP/2 initial stream and connection windows.
    pub fn window_sizes(mut self, stream: u32, connection: u32) -> Self {
        self.initial_stream_window_size = stream;
        self.initial_connection_window_size = connection;
        self
    }

    /// Sets [`TransportConfig::batch_commands`].
    pub fn batch_commands(mut self, enabled: bool) -> Self {
        self.batch_commands = enabled;
        self
    }

    /// Sets [`TransportConfig::batch_policy`].
    pub fn batch_policy(mut self, policy: BatchPolicy) -> Self {
        self.batch_policy = policy;
        self
    }

    /// Sets [`TransportConfig::batch_streams_per_store`] (at least 1).
    pub fn batch_streams_per_store(mut self, n: usize) -> Self {
        self.batch_streams_per_store = n.max(1);
        self
    }

    /// Sets [`TransportConfig::tls`]: every connection uses TLS.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets [`TransportConfig::batch_idle_timeout`].
    pub fn batch_idle_timeout(mut self, timeout: Duration) -> Self {
        self.batch_idle_timeout = timeout;
        self
    }
}

/// Where a client runs its background work: the TSO stream, the store
/// refresh and health probes, the `BatchCommands` streams and connections,
/// secondary commits and rollbacks.
///
/// It matters on tokio, whose runtimes drop their tasks when they shut
/// down. async-std and smol run every task on one global executor that
/// outlives its callers, so there both choices behave alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskRuntime {
    /// The runtime that calls `connect`. A client whose connect-time runtime
    /// shut down fails its calls at once with `Error::RuntimeShutDown`;
    /// connect from a runtime that lives as long as the client.
    #[default]
    Connecting,
    /// A runtime of the client's own with this many worker threads (at
    /// least 1), shut down when the client, its transactions and its
    /// snapshots are gone. The client then serves callers on any runtime,
    /// short-lived ones and non-tokio executors included, at the cost of a
    /// thread hop between the caller and the client's tasks.
    Dedicated {
        /// Worker threads of the client's runtime.
        worker_threads: usize,
    },
}

/// Configuration of a TiKV client. Defaults follow client-go.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// PD endpoints (`host:port`, with or without scheme). Default: none.
    pub pd_endpoints: Vec<String>,
    /// API version: V1 (client-go `rawkv`/`txnkv` default `APIVersion_V1`).
    pub api_version: ApiVersion,
    /// Keyspace name for API V2; `None` means the default keyspace
    /// (client-go resolves an empty name to `"DEFAULT"`).
    pub keyspace: Option<String>,
    /// Seed of the core's random generator (backoff jitter, replica order,
    /// region TTL jitter). `None` (the default): the driver seeds it from
    /// entropy at connect, so a fleet of clients spreads its retries as
    /// client-go's per-process random source does; tests and simulations
    /// pin it to replay exactly.
    pub rng_seed: Option<u64>,
    /// Timeout of PD requests: 3s (client-go `PDClient.PDServerTimeout`).
    pub pd_timeout: Duration,
    /// How old the cached newest timestamp may be when the lock resolver
    /// uses it as "now" instead of asking PD: 2s (client-go's oracle
    /// refreshes its low-resolution timestamp every `defaultOracleUpdateInterval`,
    /// 2 s).
    pub low_resolution_ts_max_age: Duration,
    /// Timeout of most TiKV requests: 30s (client-go `client.ReadTimeoutShort`).
    pub read_timeout_short: Duration,
    /// Timeout of requests that may scan (Scan, BatchGet, ScanLock,
    /// DeleteRange): 60s (client-go `client.ReadTimeoutMedium`).
    pub read_timeout_medium: Duration,
    /// `Context.max_execution_duration_ms` of writes: 20s (client-go
    /// `client.MaxWriteExecutionTime` = `ReadTimeoutShort` - 10s).
    pub max_write_execution_time: Duration,
    /// The gRPC transport's settings (connections, keepalive, message
    /// limits, `BatchCommands` streams), handed whole to the runtime crate's
    /// transport.
    pub transport: TransportConfig,
    /// Multiplier of backoff budgets: 2 (client-go `kv.DefBackOffWeight`).
    pub backoff_weight: u32,
    /// Per-operation backoff budgets, unweighted.
    pub backoff: BackoffBudgets,
    /// How long an idle cached region stays valid: 600s (client-go
    /// `locate.regionCacheTTLSec`).
    pub region_cache_ttl: Duration,
    /// Random extra TTL per region, in `[0, jitter)`, so regions loaded
    /// together do not expire together: 60s (client-go
    /// `locate.regionCacheTTLJitterSec`, `SetRegionCacheTTLWithJitter`).
    pub region_cache_ttl_jitter: Duration,
    /// Period of the store-table refresh: 60s (client-go
    /// `config.DefStoresRefreshInterval`).
    pub store_refresh_interval: Duration,
    /// Largest RawKV scan limit: 10240 (client-go `rawkv.MaxRawKVScanLimit`).
    pub max_raw_scan_limit: u32,
    /// Keys per RawKV batch delete request: 512 (client-go `rawkv.rawBatchPairCount`).
    pub raw_batch_pair_count: usize,
    /// Bytes (keys + values) per RawKV batch put request: 16 KiB (client-go
    /// `rawkv.rawBatchPutSize`).
    pub raw_batch_put_size: usize,
    /// Keys per RawKV batch get request: 512 (client-go uses
    /// `rawkv.rawBatchPairCount` for batch gets too).
    pub raw_batch_get_pair_count: usize,
    /// Most `Tso` rounds in flight at once on the TSO stream:
    /// [`DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT`] (PD's client sends
    /// one at a time unless `TSOClientRPCConcurrency` is raised; 1 here
    /// restores that).
    pub tso_max_rounds_in_flight: usize,
    /// Where the client's background tasks run: [`TaskRuntime::Connecting`].
    pub task_runtime: TaskRuntime,
    /// Forward requests for a leader the client cannot reach through a
    /// follower's store that can (gRPC metadata `tikv-forwarded-host`):
    /// off (client-go `EnableForwarding`, TiDB's
    /// `tikv-client.enable-forwarding`). Off, a leader read or write whose
    /// leader is unreachable goes to the followers to find a new leader.
    pub enable_forwarding: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            pd_endpoints: Vec::new(),
            api_version: ApiVersion::V1,
            keyspace: None,
            rng_seed: None,
            pd_timeout: secs(3),
            low_resolution_ts_max_age: secs(2),
            read_timeout_short: secs(30),
            read_timeout_medium: secs(60),
            max_write_execution_time: secs(20),
            transport: TransportConfig::default(),
            backoff_weight: backoff::DEFAULT_BACKOFF_WEIGHT,
            backoff: BackoffBudgets::default(),
            region_cache_ttl: secs(600),
            region_cache_ttl_jitter: secs(60),
            store_refresh_interval: secs(60),
            max_raw_scan_limit: 10240,
            raw_batch_pair_count: 512,
            raw_batch_put_size: 16 * 1024,
            raw_batch_get_pair_count: 512,
            tso_max_rounds_in_flight: DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT,
            task_runtime: TaskRuntime::Connecting,
            enable_forwarding: false,
        }
    }
}

macro_rules! with {
    ($($(#[$doc:meta])* $name:ident: $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Config {
                self.$field = value;
                self
            }
        )*
    };
}

impl Config {
    /// Sets the PD endpoints.
    pub fn with_pd_endpoints<S: Into<String>>(
        mut self,
        endpoints: impl IntoIterator<Item = S>,
    ) -> Config {
        self.pd_endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Pins the random seed (a replayable client).
    pub fn with_rng_seed(mut self, seed: u64) -> Config {
        self.rng_seed = Some(seed);
        self
    }

    /// The seed in force: the one set, or 0 for a view built without one
    /// (the driver always sets one before building its view).
    pub fn seed(&self) -> u64 {
        self.rng_seed.unwrap_or(0)
    }

    /// Runs the client's background tasks on a runtime of its own with
    /// `worker_threads` threads (at least 1): see [`TaskRuntime::Dedicated`].
    ///
    /// ```
    /// use tikv_core::config::{Config, TaskRuntime};
    /// let config = Config::default().with_dedicated_runtime(1);
    /// assert_eq!(config.task_runtime, TaskRuntime::Dedicated { worker_threads: 1 });
    /// ```
    pub fn with_dedicated_runtime(mut self, worker_threads: usize) -> Config {
        self.task_runtime = TaskRuntime::Dedicated { worker_threads: worker_threads.max(1) };
        self
    }

    /// Selects a keyspace by name (API V2).
    pub fn with_keyspace(mut self, name: impl Into<String>) -> Config {
        self.keyspace = Some(name.into());
        self
    }

    with! {
        /// Sets the API version.
        with_api_version: api_version: ApiVersion;
        /// Sets the PD request timeout.
        with_pd_timeout: pd_timeout: Duration;
        /// Sets how old a cached timestamp may be for lock TTL checks.
        with_low_resolution_ts_max_age: low_resolution_ts_max_age: Duration;
        /// Sets the short TiKV request timeout.
        with_read_timeout_short: read_timeout_short: Duration;
        /// Sets the medium TiKV request timeout.
        with_read_timeout_medium: read_timeout_medium: Duration;
        /// Sets the write execution limit sent to TiKV.
        with_max_write_execution_time: max_write_execution_time: Duration;
        /// Replaces the transport settings.
        with_transport: transport: TransportConfig;
        /// Sets the backoff budget weight.
        with_backoff_weight: backoff_weight: u32;
        /// Replaces the backoff budgets.
        with_backoff_budgets: backoff: BackoffBudgets;
        /// Sets the region cache TTL.
        with_region_cache_ttl: region_cache_ttl: Duration;
        /// Sets the region cache TTL jitter.
        with_region_cache_ttl_jitter: region_cache_ttl_jitter: Duration;
        /// Sets the store refresh interval.
        with_store_refresh_interval: store_refresh_interval: Duration;
        /// Sets the RawKV scan limit ceiling.
        with_max_raw_scan_limit: max_raw_scan_limit: u32;
        /// Sets the keys per RawKV batch delete.
        with_raw_batch_pair_count: raw_batch_pair_count: usize;
        /// Sets the bytes per RawKV batch put.
        with_raw_batch_put_size: raw_batch_put_size: usize;
        /// Sets the keys per RawKV batch get.
        with_raw_batch_get_pair_count: raw_batch_get_pair_count: usize;
        /// Sets the most TSO rounds in flight at once (at least 1).
        with_tso_max_rounds_in_flight: tso_max_rounds_in_flight: usize;
        /// Turns forwarding through a follower's store on or off
        /// ([`Config::enable_forwarding`]).
        with_forwarding: enable_forwarding: bool;
    }

    /// Sets the transport's TLS ([`TransportConfig::tls`]): every
    /// connection, to PD and to the stores, uses it.
    pub fn with_tls(mut self, tls: TlsConfig) -> Config {
        self.transport.tls = Some(tls);
        self
    }

    /// Sets the transport's connection timeout
    /// ([`TransportConfig::connect_timeout`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Config {
        self.transport.connect_timeout = timeout;
        self
    }

    /// Sets the transport's keepalive ping interval
    /// ([`TransportConfig::keepalive_interval`]).
    pub fn with_keepalive_interval(mut self, interval: Duration) -> Config {
        self.transport.keepalive_interval = interval;
        self
    }

    /// Sets the transport's keepalive answer timeout
    /// ([`TransportConfig::keepalive_timeout`]).
    pub fn with_keepalive_timeout(mut self, timeout: Duration) -> Config {
        self.transport.keepalive_timeout = timeout;
        self
    }

    /// `base` scaled by [`Config::backoff_weight`] (client-go
    /// `NewBackofferWithVars`), with client-go's overflow rule (see
    /// [`backoff::weighted`]).
    pub fn budget(&self, base: Duration) -> Duration {
        let ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        backoff::weighted(ms, self.backoff_weight)
    }

    /// A backoffer with the weighted `base` budget and its own random stream.
    pub fn backoffer(&self, base: Duration, rng: Rng) -> Backoffer {
        Backoffer::new(self.budget(base), rng)
    }

    /// The root random generator, seeded with [`Config::seed`].
    pub fn rng(&self) -> Rng {
        Rng::new(self.seed())
    }

    /// A region's cache TTL: `region_cache_ttl` plus a jitter drawn in
    /// `[0, region_cache_ttl_jitter)` (client-go `nextTTL`).
    pub fn region_ttl(&self, rng: &mut Rng) -> Duration {
        self.region_cache_ttl.saturating_add(rng.gen_duration(self.region_cache_ttl_jitter))
    }
}

/// Rounds kept in flight on the TSO stream by default: 4, the token count
/// of PD's PARALLEL mode.
///
/// PD's client sends one RPC at a time by default
/// (`defaultTSOClientRPCConcurrency = 1`); its opt-in concurrent modes
/// (`tidb_tso_client_rpc_mode` PARALLEL / PARALLEL-FAST, concurrency 2 / 4)
/// allow twice the concurrency in flight but pace rounds at the estimated
/// RPC latency divided by the concurrency. We never wait deliberately: a
/// round leaves as soon as a caller is waiting and fewer than this many
/// rounds are out, so depth only adds rounds when callers arrive while
/// every round is busy. With one round in flight, callers that come back
/// from a round split into a round of the first one back and a round of the
/// rest, which then waits a whole extra round trip; a second slot takes the
/// rest at once (B8, `tso-bench`: 64 callers at ~0.7 ms RTT, p50 1.4 ms at
/// depth 1 and 0.74 ms at depth 2 or 4).
pub const DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_snapshot() {
        insta::assert_snapshot!(format!("{:#?}", Config::default()));
    }

    #[test]
    fn builder_and_budgets() {
        let cfg = Config::default()
            .with_pd_endpoints(vec!["a:2379".to_string(), "b:2379".to_string()])
            .with_keyspace("ks")
            .with_api_version(ApiVersion::V2)
            .with_rng_seed(9)
            .with_backoff_weight(3)
            .with_read_timeout_short(Duration::from_secs(1));
        assert_eq!(cfg.pd_endpoints, ["a:2379", "b:2379"]);
        assert_eq!(cfg.keyspace.as_deref(), Some("ks"));
        assert_eq!(cfg.api_version, ApiVersion::V2);
        assert_eq!(cfg.read_timeout_short, Duration::from_secs(1));
        assert_eq!(cfg.budget(cfg.backoff.tso), Duration::from_secs(45));
        assert_eq!(cfg.backoffer(cfg.backoff.raw, cfg.rng()).budget(), Duration::from_secs(60));
        assert_eq!(cfg.rng(), Rng::new(9));

        let d = Config::default();
        assert_eq!(d.budget(d.backoff.raw), Duration::from_secs(40));
        assert_eq!(d.budget(d.backoff.commit_secondary), Duration::from_secs(82));
        assert_eq!(d.max_write_execution_time, d.read_timeout_short - Duration::from_secs(10));
    }

    #[test]
    fn transport_settings_are_carried_whole() {
        let cfg = Config::default()
            .with_transport(
                TransportConfig::default()
                    .batch_commands(false)
                    .batch_policy(BatchPolicy::Positive)
                    .batch_streams_per_store(0)
                    .window_sizes(1 << 20, 2 << 20)
                    .max_message_sizes(4 << 20, 8 << 20)
                    .batch_idle_timeout(Duration::from_secs(7)),
            )
            .with_connect_timeout(Duration::from_secs(2))
            .with_keepalive_interval(Duration::from_secs(20))
            .with_keepalive_timeout(Duration::from_secs(4));
        let t = &cfg.transport;
        assert!(!t.batch_commands);
        assert_eq!(t.batch_policy, BatchPolicy::Positive);
        assert_eq!(t.batch_streams_per_store, 1, "at least one stream");
        assert_eq!(
            (t.initial_stream_window_size, t.initial_connection_window_size),
            (1 << 20, 2 << 20)
        );
        assert_eq!((t.max_decoding_message_size, t.max_encoding_message_size), (4 << 20, 8 << 20));
        assert_eq!(t.batch_idle_timeout, Duration::from_secs(7));
        // The single-setting builders change only their field.
        assert_eq!(t.connect_timeout, Duration::from_secs(2));
        assert_eq!(
            (t.keepalive_interval, t.keepalive_timeout),
            (Duration::from_secs(20), Duration::from_secs(4))
        );
        assert!(t.tcp_nodelay);
    }

    #[test]
    fn region_ttl_jitter() {
        let cfg = Config::default();
        let mut rng = cfg.rng();
        let ttls: Vec<Duration> = (0..100).map(|_| cfg.region_ttl(&mut rng)).collect();
        assert!(
            ttls.iter().all(|t| *t >= Duration::from_secs(600) && *t < Duration::from_secs(660))
        );
        assert!(ttls.iter().any(|t| *t != ttls[0]), "jitter varies");
        let fixed = cfg.with_region_cache_ttl_jitter(Duration::ZERO);
        assert_eq!(fixed.region_ttl(&mut rng), Duration::from_secs(600));
    }
}
