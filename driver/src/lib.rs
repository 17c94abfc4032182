//! The one generic async layer of the TiKV client.
//!
//! The protocol lives in `tikv-core` as sans-IO state machines
//! ([`Operation`]). This crate is the glue that runs them on a real executor,
//! written once for every runtime:
//!
//! - [`Runtime`]: a clock, a timer and a spawner (tokio, smol, a test clock).
//! - [`Transport`]: sends one typed [`Request`] to a [`Target`] and returns
//!   the typed [`Response`] or an [`RpcError`] (gRPC, a simulator, a script).
//! - [`execute`]: the loop that drives one operation to its result in the
//!   caller's task, sending its RPCs concurrently and arming one timer.
//! - [`spawn_periodic`] / [`Background`]: long-lived periodic work (store
//!   refresh, TSO) that stops when its handle is dropped.
//!
//! The crate names no runtime crate: `tikv-tokio` and `tikv-async-std` provide
//! the implementations of the two traits.
//!
//! [`Operation`]: tikv_core::op::Operation
//! [`Request`]: tikv_core::rpc::Request
//! [`Response`]: tikv_core::rpc::Response
//! [`RpcError`]: tikv_core::rpc::RpcError
//! [`Target`]: tikv_core::rpc::Target

#![forbid(unsafe_code)]

mod admin;
mod background;
mod client;
mod collapse;
mod exec_details;
mod execute;
pub mod interceptor;
mod observe;
mod oracle;
mod pipelined;
mod raw;
mod safe_ts;
mod scanner;
mod store_health;
mod traits;
mod txn;

pub use background::{Background, spawn_periodic};
pub use client::Platform;
pub use exec_details::ExecDetailsCollector;
pub use execute::execute;
pub use observe::{PendingRequests, describe_metrics, names as metric_names, record_batch};
pub use pipelined::{
    DEFAULT_FLUSH_CONCURRENCY, PipelinedOptions, PipelinedProgress, PipelinedTransaction,
};
pub use raw::{CasOutcome, RawChecksum, RawClient};
pub use scanner::{DEFAULT_SCAN_BATCH_SIZE, Scanner, TxnScanner};
pub use tikv_core::exec_details::{
    ExecDetails, RequestDetail, ScanDetail, TimeDetail, WriteDetail,
};
pub use tikv_core::txn::commit::{CommitDetails, CommitOptions};
pub use tikv_core::txn::membuffer::Checkpoint;
pub use tikv_core::txn::pessimistic::{LockKeysDetails, LockOptions, LockWait, ReturnedValue};
pub use tikv_core::txn::pipelined::FlushThresholds;
pub use tikv_core::txn::snapshot::ReadOptions;
pub use traits::{HealthFeedbackSink, Runtime, Transport};
pub use txn::{
    PESSIMISTIC_LOCK_MAX_RETRIES, Snapshot, Transaction, TransactionClient, TransactionOptions,
};

pub use tikv_core::Error;
pub use tikv_core::backoff::{BackoffKind, ExhaustedClass};
pub use tikv_core::codec::ApiVersion;
pub use tikv_core::config::{BackoffBudgets, Config, TaskRuntime};
pub use tikv_core::error::RpcError;
pub use tikv_core::gc::GcOutcome;
pub use tikv_core::key::{Key, KeyRange, KvPair, Value};
pub use tikv_core::lock::Lock;
pub use tikv_core::pd::Timestamp;
pub use tikv_core::range_task::RangeTaskStat;
pub use tikv_core::raw::ColumnFamily;
pub use tikv_core::route::replica::{ReplicaRead, ReplicaReadType};
pub use tikv_core::rpc::{RequestSource, RequestTags};
pub use tikv_core::safe_ts::GLOBAL_TXN_SCOPE;
pub use tikv_core::split::{PreSplitThresholds, SplitRegionsOutcome};
/// The kvproto messages some errors carry (e.g. [`Error::KeyError`]'s
/// `kvrpcpb::KeyError`), so matching on them needs no direct dependency on
/// `tikv-proto` at a matching version.
pub use tikv_proto as proto;

/// Re-exported so runtime crates and tests need not depend on `futures` to
/// name the boxed future type of the traits.
pub use futures::future::BoxFuture;
