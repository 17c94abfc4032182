//! The timestamp oracle: a background task that batches callers into PD
//! `Tso` rounds (core's [`TsoBatcher`]).

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use tikv_core::Error;
use tikv_core::pd::{MAX_TSO_BATCH, Timestamp, TsoBatcher};
use tikv_core::view::ClusterView;

use crate::{Runtime, Transport, execute};

type Waiter = oneshot::Sender<Result<Timestamp, Error>>;

/// A handle on the client's TSO task. Dropping every handle ends the task.
#[derive(Clone, Debug)]
pub(crate) struct Oracle {
    requests: mpsc::UnboundedSender<Waiter>,
}

impl Oracle {
    /// Spawns the TSO task on `rt`.
    pub(crate) fn start<R: Runtime, T: Transport>(
        batcher: TsoBatcher,
        view: Arc<ClusterView>,
        rt: R,
        transport: Arc<T>,
    ) -> Oracle {
        let (requests, rx) = mpsc::unbounded();
        let task_rt = rt.clone();
        rt.spawn(Box::pin(run(batcher, view, task_rt, transport, rx)));
        Oracle { requests }
    }

    /// A fresh timestamp, strictly greater than every one handed out before.
    pub(crate) async fn get_timestamp(&self) -> Result<Timestamp, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests.unbounded_send(tx).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

/// One round at a time: wait for a caller, take everyone else already
/// waiting (up to the batch limit), ask PD once, answer them all in order.
/// Callers arriving during a round wait in the channel for the next one, so
/// batching needs no deliberate delay.
async fn run<R: Runtime, T: Transport>(
    mut batcher: TsoBatcher,
    view: Arc<ClusterView>,
    rt: R,
    transport: Arc<T>,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
) {
    while let Some(first) = rx.next().await {
        let mut waiters = vec![first];
        while waiters.len() < MAX_TSO_BATCH {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        // Callers that gave up meanwhile do not cost a timestamp.
        waiters.retain(|w| !w.is_canceled());
        if waiters.is_empty() {
            continue;
        }
        let round = batcher.start_round(waiters.len());
        let count = round.count();
        let outcome = execute(round, &rt, &*transport).await;
        match batcher.finish_round(count, outcome) {
            Ok(timestamps) => {
                // The newest timestamp doubles as the low-resolution "now"
                // of lock TTL checks (client-go's `lastTS`).
                if let Some(last) = timestamps.last() {
                    view.last_ts.observe(last.version(), rt.now());
                }
                for (w, ts) in waiters.into_iter().zip(timestamps) {
                    let _ = w.send(Ok(ts));
                }
            }
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }
}
