//! The TiKV client on tokio.
//!
//! Most users need only [`RawClient`] or [`TransactionClient`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tikv_tokio::Error> {
//! let raw = tikv_tokio::RawClient::connect(["127.0.0.1:2379"]).await?;
//! raw.put("hello", "world").await?;
//!
//! let txns = tikv_tokio::TransactionClient::connect(["127.0.0.1:2379"]).await?;
//! let mut txn = txns.begin().await?;
//! txn.put("k", "v")?;
//! let commit_ts = txn.commit().await?;
//! # let _ = commit_ts;
//! # Ok(()) }
//! ```
//!
//! Errors are matched with this crate's paths alone (the kvproto messages
//! some carry are re-exported as [`proto`]), or classified with
//! [`Error::is_retryable`], [`Error::is_undetermined`],
//! [`Error::is_write_conflict`]:
//!
//! ```no_run
//! use tikv_tokio::{Error, RpcError};
//!
//! # async fn demo(client: tikv_tokio::RawClient) {
//! match client.get("k").await {
//!     Ok(value) => println!("{value:?}"),
//!     Err(Error::Rpc(RpcError::DeadlineExceeded)) => println!("slow store"),
//!     Err(Error::KeyError(e)) => {
//!         let e: &tikv_tokio::proto::kvrpcpb::KeyError = &e;
//!         println!("TiKV refused: {e:?}")
//!     }
//!     Err(e) if e.is_retryable() => println!("try again later: {e}"),
//!     Err(e) => println!("failed: {e}"),
//! }
//! # }
//! ```
//!
//! TLS (and mutual TLS) for PD and every store, as client-go's
//! `config.Security`; the certificate files are read again for every new
//! connection:
//!
//! ```no_run
//! use tikv_tokio::{Config, PemSource, TlsConfig};
//!
//! # async fn demo() -> Result<(), tikv_tokio::Error> {
//! let tls = TlsConfig::new(PemSource::file("/etc/tikv/ca.pem"))
//!     .identity(PemSource::file("/etc/tikv/client.pem"), PemSource::file("/etc/tikv/client-key.pem"));
//! let config = Config::default().with_pd_endpoints(["https://pd-0:2379"]).with_tls(tls);
//! let client = tikv_tokio::RawClient::connect_with_config(config).await?;
//! # let _ = client; Ok(()) }
//! ```
//!
//! Underneath:
//! - [`TokioRuntime`]: `tikv_driver::Runtime` over tokio's clock, timers and
//!   spawner.
//! - [`GrpcTransport`]: `tikv_driver::Transport` over gRPC, the transport
//!   of `tikv-grpc` written once for every runtime (per-call deadlines, the
//!   PD TSO stream, TiKV's `BatchCommands` streams) over a
//!   [`TokioConnector`]: tonic's HTTP/2 channels (one cached per address
//!   and connection number, client-go's dial and keepalive settings),
//!   tokio's timer and spawner.
//! - [`Tokio`]: the `tikv_driver::Platform` pairing them; its `build` hands
//!   the transport the whole `Config::transport` ([`TransportConfig`]).
//!
//! Nothing in this crate's public API names tonic or hyper: errors come back
//! as `tikv_core::rpc::RpcError`.
//!
//! ```no_run
//! use tikv_core::rpc::{PdRequest, Request, Target};
//! use tikv_core::time::Duration;
//! use tikv_driver::{Runtime, Transport};
//! use tikv_tokio::{GrpcTransport, TokioRuntime, TransportConfig};
//!
//! # async fn demo() {
//! let rt = TokioRuntime::new();
//! let transport = GrpcTransport::new(TransportConfig::default());
//! let pd = Target::Pd { addr: "127.0.0.1:2379".into() };
//! let deadline = rt.now() + Duration::from_secs(3);
//! let members = transport
//!     .call(&pd, Request::Pd(PdRequest::GetMembers(Default::default())), deadline)
//!     .await;
//! println!("{members:?}");
//! # }
//! ```

#![forbid(unsafe_code)]

mod clock;
mod connector;
mod platform;
mod runtime;

pub use connector::{GrpcTransport, TokioConnector};
pub use platform::{
    PipelinedTransaction, RawClient, Scanner, Snapshot, Tokio, Transaction, TransactionClient,
    TxnScanner,
};
pub use runtime::TokioRuntime;
/// RPC interceptors: user hooks around every store RPC.
pub use tikv_driver::interceptor;
pub use tikv_driver::{
    ApiVersion, BackoffBudgets, BackoffKind, CasOutcome, Checkpoint, ColumnFamily, CommitDetails,
    Config, DEFAULT_SCAN_BATCH_SIZE, Error, ExecDetails, ExecDetailsCollector, ExhaustedClass,
    FlushThresholds, GLOBAL_TXN_SCOPE, GcOutcome, Key, KeyRange, KvPair, Lock, LockKeysDetails,
    LockOptions, LockWait, PipelinedOptions, PipelinedProgress, PreSplitThresholds, RangeTaskStat,
    RawChecksum, ReadOptions, ReplicaRead, ReplicaReadType, RequestDetail, RequestSource,
    RequestTags, ReturnedValue, RpcError, SplitRegionsOutcome, TaskRuntime, Timestamp,
    TransactionOptions, Value, describe_metrics, metric_names, proto,
};
pub use tikv_grpc::{PemSource, TlsConfig, TransportConfig};
