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
    RawClient, Scanner, Snapshot, Tokio, Transaction, TransactionClient, TxnScanner,
};
pub use runtime::TokioRuntime;
pub use tikv_driver::{
    ApiVersion, BackoffBudgets, CasOutcome, ColumnFamily, Config, DEFAULT_SCAN_BATCH_SIZE, Error,
    Key, KeyRange, KvPair, LockOptions, LockWait, RawChecksum, ReadOptions, RequestSource,
    RequestTags, ReturnedValue, Timestamp, TransactionOptions, Value,
};
pub use tikv_grpc::TransportConfig;
