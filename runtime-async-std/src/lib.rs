//! The TiKV client on async-std, and on smol.
//!
//! The same client as `tikv-tokio`, with no tokio runtime anywhere: timers
//! and sockets are async-io's, background tasks run on async-std's executor,
//! and gRPC is the tonic-generated stubs over hyper's HTTP/2 client. Most
//! users need only [`RawClient`] or [`TransactionClient`]:
//!
//! ```no_run
//! # fn main() -> Result<(), tikv_async_std::Error> {
//! async_std::task::block_on(async {
//!     let client = tikv_async_std::RawClient::connect(["127.0.0.1:2379"]).await?;
//!     client.put("hello", "world").await?;
//!     assert_eq!(client.get("hello").await?.as_deref(), Some(&b"world"[..]));
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # smol
//!
//! async-std is discontinued upstream in favour of smol. This crate is built
//! on async-io, the reactor and timers both share, so it serves smol
//! applications unchanged: the client's futures can be awaited on smol's
//! executor (`examples/smol.rs` runs the quickstart that way). Background
//! work (HTTP/2 connection tasks, the store refresher) runs on async-std's
//! global executor, which is a plain thread pool over the same async-io
//! reactor and needs no setup.
//!
//! ```no_run
//! # fn main() -> Result<(), tikv_async_std::Error> {
//! smol::block_on(async {
//!     let client = tikv_async_std::RawClient::connect(["127.0.0.1:2379"]).await?;
//!     client.put("hello", "smol").await?;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # Underneath
//!
//! - [`AsyncStdRuntime`]: `tikv_driver::Runtime` over the monotonic clock,
//!   async-io's timers and async-std's spawner.
//! - [`GrpcTransport`]: `tikv_driver::Transport` over gRPC, the transport
//!   of `tikv-grpc` written once for every runtime (per-call deadlines, the
//!   PD TSO stream, TiKV's `BatchCommands` streams) over an
//!   [`AsyncStdConnector`]: hyper 1.x HTTP/2 client connections on
//!   `async_io::Async<TcpStream>`, wrapped as a tower service for the tonic
//!   stubs (one per address and connection number, redialled after it
//!   breaks, client-go's dial and keepalive settings), async-io's timer and
//!   async-std's spawner.
//! - [`AsyncStd`]: the `tikv_driver::Platform` pairing them; its `build`
//!   hands the transport the whole `Config::transport` ([`TransportConfig`]).
//!
//! Nothing in this crate's public API names tonic, hyper or a runtime type:
//! errors come back as `tikv_core::rpc::RpcError`.
//!
//! ```no_run
//! use tikv_core::rpc::{PdRequest, Request, Target};
//! use tikv_core::time::Duration;
//! use tikv_driver::{Runtime, Transport};
//! use tikv_async_std::{AsyncStdRuntime, GrpcTransport, TransportConfig};
//!
//! # async fn demo() {
//! let rt = AsyncStdRuntime::new();
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
mod conn;
mod connector;
mod platform;
mod rt;
mod runtime;

pub use connector::{AsyncStdConnector, GrpcTransport};
pub use platform::{
    AsyncStd, PipelinedTransaction, RawClient, Scanner, Snapshot, Transaction, TransactionClient,
    TxnScanner,
};
pub use runtime::AsyncStdRuntime;
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
