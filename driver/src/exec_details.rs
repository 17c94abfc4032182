//! Execution details per operation, collected by an interceptor (client-go
//! fills `util.ExecDetails` from each response's `ExecDetailsV2` for the
//! context that asked for them).

use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tikv_core::exec_details::ExecDetails;

use crate::interceptor::{Next, RpcInterceptor, StoreRpc, StoreRpcFuture};

/// Sums the execution details TiKV reports on every store response that
/// passes through it. Add it as an interceptor to whatever should be
/// measured (a transaction, a snapshot, a client handle) and read the sums
/// when it is done; clones share the sums.
///
/// ```no_run
/// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
/// use tikv_driver::ExecDetailsCollector;
///
/// let details = ExecDetailsCollector::new();
/// let ts = client.current_timestamp().await?;
/// let snapshot = client.snapshot(ts).with_interceptor(details.clone());
/// snapshot.batch_get(["a", "b"]).await?;
/// let read = details.take();
/// println!("{} keys processed in {:?}", read.scan.processed_keys, read.time.process);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ExecDetailsCollector {
    sums: Arc<Mutex<ExecDetails>>,
}

impl ExecDetailsCollector {
    /// An empty collector.
    ///
    /// ```
    /// use tikv_driver::{ExecDetails, ExecDetailsCollector};
    /// let details = ExecDetailsCollector::new();
    /// assert_eq!(details.details(), ExecDetails::default());
    /// ```
    pub fn new() -> ExecDetailsCollector {
        ExecDetailsCollector::default()
    }

    /// The sums so far.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::ExecDetailsCollector;
    /// let details = ExecDetailsCollector::new();
    /// let measured = client.with_interceptor(details.clone());
    /// let snapshot = measured.snapshot(measured.current_timestamp().await?);
    /// for key in ["a", "b", "c"] {
    ///     snapshot.get(key).await?;
    ///     println!("{} keys so far", details.details().scan.processed_keys);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn details(&self) -> ExecDetails {
        self.sums.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The sums so far, leaving the collector empty.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, TransactionClient};
    /// # async fn demo(client: TransactionClient<impl Platform>) -> Result<(), Error> {
    /// use tikv_driver::ExecDetailsCollector;
    /// let details = ExecDetailsCollector::new();
    /// let ts = client.current_timestamp().await?;
    /// let snapshot = client.snapshot(ts).with_interceptor(details.clone());
    /// snapshot.get("a").await?;
    /// let first = details.take();
    /// snapshot.get("b").await?;
    /// let second = details.take(); // the second read's alone
    /// # Ok(()) }
    /// ```
    pub fn take(&self) -> ExecDetails {
        std::mem::take(&mut *self.sums.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl RpcInterceptor for ExecDetailsCollector {
    fn name(&self) -> &str {
        "exec_details"
    }

    fn intercept(&self, rpc: StoreRpc, next: Next) -> StoreRpcFuture {
        let sums = self.sums.clone();
        next.run(rpc)
            .map(move |outcome| {
                if let Ok(response) = &outcome {
                    sums.lock().unwrap_or_else(|e| e.into_inner()).merge(response);
                }
                outcome
            })
            .boxed()
    }
}
