//! The async-std platform: the public client types with the runtime filled in.

use tikv_core::Error;
use tikv_core::config::Config;
use tikv_driver::Platform;

use crate::{AsyncStdRuntime, GrpcTransport};

/// Marker type selecting async-io/async-std and hyper for the generic
/// clients of `tikv-driver`. Users rarely name it: use [`RawClient`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStd;

impl Platform for AsyncStd {
    type Runtime = AsyncStdRuntime;
    type Transport = GrpcTransport;

    fn build(config: &Config) -> Result<(AsyncStdRuntime, GrpcTransport), Error> {
        Ok((AsyncStdRuntime::new(), GrpcTransport::new(config.transport.clone())))
    }
}

/// The RawKV client on async-std (and smol).
///
/// ```no_run
/// # async fn demo() -> Result<(), tikv_async_std::Error> {
/// let client = tikv_async_std::RawClient::connect(["127.0.0.1:2379"]).await?;
/// client.put("key", "value").await?;
/// assert_eq!(client.get("key").await?.as_deref(), Some(&b"value"[..]));
/// # Ok(()) }
/// ```
pub type RawClient = tikv_driver::RawClient<AsyncStd>;

/// The transactional client on async-std (see `tikv_driver::TransactionClient`).
pub type TransactionClient = tikv_driver::TransactionClient<AsyncStd>;

/// A read-only snapshot on async-std (see `tikv_driver::Snapshot`).
pub type Snapshot = tikv_driver::Snapshot<AsyncStd>;

/// An optimistic transaction on async-std (see `tikv_driver::Transaction`).
pub type Transaction = tikv_driver::Transaction<AsyncStd>;

/// A pipelined DML transaction on async-std (see
/// `tikv_driver::PipelinedTransaction`).
pub type PipelinedTransaction = tikv_driver::PipelinedTransaction<AsyncStd>;

/// A lazy snapshot scan ([`tikv_driver::Scanner`]) on AsyncStd.
pub type Scanner = tikv_driver::Scanner<AsyncStd>;

/// A lazy transactional scan ([`tikv_driver::TxnScanner`]) on AsyncStd.
pub type TxnScanner<'a> = tikv_driver::TxnScanner<'a, AsyncStd>;
