//! The tokio platform: the public client types with the runtime filled in.

use tikv_core::Error;
use tikv_core::config::{Config, TaskRuntime};
use tikv_driver::Platform;

use crate::connector::TokioConnector;
use crate::{GrpcTransport, TokioRuntime};

/// Marker type selecting tokio and tonic for the generic clients of
/// `tikv-driver`. Users rarely name it: use [`RawClient`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

impl Platform for Tokio {
    type Runtime = TokioRuntime;
    type Transport = GrpcTransport;

    fn build(config: &Config) -> Result<(TokioRuntime, GrpcTransport), Error> {
        // One runtime for the client's tasks and its transport's, so that
        // the transport's dying with it is seen as the client's.
        let rt = match config.task_runtime {
            TaskRuntime::Dedicated { worker_threads } => TokioRuntime::dedicated(worker_threads)?,
            _ => TokioRuntime::new(),
        };
        let connector = TokioConnector::on(rt.clone());
        Ok((rt, GrpcTransport::with_connector(connector, config.transport.clone())))
    }
}

/// The RawKV client on tokio.
///
/// ```no_run
/// # async fn demo() -> Result<(), tikv_tokio::Error> {
/// let client = tikv_tokio::RawClient::connect(["127.0.0.1:2379"]).await?;
/// client.put("key", "value").await?;
/// assert_eq!(client.get("key").await?.as_deref(), Some(&b"value"[..]));
/// # Ok(()) }
/// ```
pub type RawClient = tikv_driver::RawClient<Tokio>;

/// The transactional client on tokio: timestamps, snapshot reads and
/// optimistic transactions (see `tikv_driver::TransactionClient`).
///
/// ```no_run
/// # async fn demo() -> Result<(), tikv_tokio::Error> {
/// let client = tikv_tokio::TransactionClient::connect(["127.0.0.1:2379"]).await?;
/// let ts = client.current_timestamp().await?;
/// println!("{ts}");
/// # Ok(()) }
/// ```
pub type TransactionClient = tikv_driver::TransactionClient<Tokio>;

/// A read-only snapshot on tokio (see `tikv_driver::Snapshot`).
pub type Snapshot = tikv_driver::Snapshot<Tokio>;

/// An optimistic transaction on tokio (see `tikv_driver::Transaction`).
pub type Transaction = tikv_driver::Transaction<Tokio>;

/// A pipelined DML transaction on tokio (see
/// `tikv_driver::PipelinedTransaction`).
pub type PipelinedTransaction = tikv_driver::PipelinedTransaction<Tokio>;

/// A lazy snapshot scan ([`tikv_driver::Scanner`]) on Tokio.
pub type Scanner = tikv_driver::Scanner<Tokio>;

/// A lazy transactional scan ([`tikv_driver::TxnScanner`]) on Tokio.
pub type TxnScanner<'a> = tikv_driver::TxnScanner<'a, Tokio>;
