//! The timestamp oracle: a background task that batches callers into PD
//! `Tso` rounds (core's [`TsoBatcher`]).

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{BoxFuture, FutureExt};
use tikv_core::Error;
use tikv_core::pd::{MAX_TSO_BATCH, Timestamp, TsoBatcher};
use tikv_core::rpc::{PdRequest, PdResponse, Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_core::view::ClusterView;
use tikv_proto::pdpb;

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

/// Routes the `Tso` requests operations make (a commit timestamp, a
/// min-commit-ts bound, "now" for lock checks) through the client's TSO task,
/// so concurrent committers share its batched rounds instead of each taking
/// a round of its own on PD's stream, and every timestamp the client uses
/// comes from one strictly increasing sequence (PD's client batches every
/// caller of a process the same way). Everything else goes to `inner`.
///
/// The TSO task's own rounds use the unwrapped transport.
pub(crate) struct OracleRouted<T> {
    inner: Arc<T>,
    oracle: Oracle,
}

impl<T> OracleRouted<T> {
    pub(crate) fn new(inner: Arc<T>, oracle: Oracle) -> Self {
        OracleRouted { inner, oracle }
    }
}

impl<T: Transport> Transport for OracleRouted<T> {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        match &request {
            Request::Pd(PdRequest::Tso(r)) if r.count == 1 => {
                let oracle = self.oracle.clone();
                async move {
                    // The TSO task already retried within its budget; what
                    // it could not get is reported as unavailable, which the
                    // caller's PD call backs off on like any PD failure.
                    let ts = oracle
                        .get_timestamp()
                        .await
                        .map_err(|e| RpcError::Unavailable(format!("TSO: {e}")))?;
                    Ok(Response::Pd(PdResponse::Tso(Box::new(pdpb::TsoResponse {
                        header: None,
                        count: 1,
                        timestamp: Some(pdpb::Timestamp {
                            physical: ts.physical,
                            logical: ts.logical,
                            suffix_bits: 0,
                        }),
                    }))))
                }
                .boxed()
            }
            _ => self.inner.call(target, request, deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use tikv_core::codec::{ApiCodec, Mode};
    use tikv_core::config::Config;
    use tikv_core::pd::PdState;
    use tikv_core::time::Duration;

    use super::*;
    use crate::execute::tests::ManualRuntime;

    /// PD's TSO: counts rounds, answers `count` consecutive timestamps.
    #[derive(Default)]
    struct Pd {
        rounds: AtomicU32,
        logical: Mutex<i64>,
    }

    impl Transport for Pd {
        fn call(
            &self,
            _: &Target,
            request: Request,
            _: Instant,
        ) -> BoxFuture<'static, Result<Response, RpcError>> {
            let Request::Pd(PdRequest::Tso(r)) = request else {
                return futures::future::ready(Err(RpcError::Unavailable("not PD's TSO".into())))
                    .boxed();
            };
            self.rounds.fetch_add(1, Ordering::SeqCst);
            let mut logical = self.logical.lock().unwrap();
            *logical += i64::from(r.count);
            let response = pdpb::TsoResponse {
                header: None,
                count: r.count,
                timestamp: Some(pdpb::Timestamp {
                    physical: 100,
                    logical: *logical,
                    suffix_bits: 0,
                }),
            };
            futures::future::ready(Ok(Response::Pd(PdResponse::Tso(Box::new(response))))).boxed()
        }
    }

    /// Twenty operations asking for a timestamp at once share the TSO
    /// task's single round, and each gets a distinct one.
    #[test]
    fn operations_timestamps_join_the_batched_rounds() {
        let rt = ManualRuntime::default();
        let pd_state = Arc::new(PdState::new(["pd1:2379"]));
        pd_state.set_leader("pd1:2379".into());
        let config = Config::default().with_pd_endpoints(["pd1:2379"]);
        let view = Arc::new(ClusterView::new(config, ApiCodec::v1(Mode::Txn), pd_state.clone()));
        let batcher = TsoBatcher::new(pd_state, Duration::from_secs(3), Duration::from_secs(30), 1);
        let pd = Arc::new(Pd::default());
        let oracle = Oracle::start(batcher, view.clone(), rt.clone(), pd.clone());
        let routed = OracleRouted::new(pd.clone(), oracle);

        let target = Target::Pd { addr: "pd1:2379".into() };
        let tso = || {
            Request::Pd(PdRequest::Tso(Box::new(pdpb::TsoRequest {
                count: 1,
                ..Default::default()
            })))
        };
        let calls: Vec<_> = (0..20).map(|_| routed.call(&target, tso(), Instant::MAX)).collect();

        let mut pool = LocalPool::new();
        for task in rt.take_spawned() {
            pool.spawner().spawn_local(task).unwrap();
        }
        let answers = pool.run_until(futures::future::join_all(calls));
        let logicals: Vec<i64> = answers
            .into_iter()
            .map(|a| match a {
                Ok(Response::Pd(PdResponse::Tso(r))) => r.timestamp.unwrap().logical,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(pd.rounds.load(Ordering::SeqCst), 1, "one round for all twenty");
        assert_eq!(logicals, (1..=20).collect::<Vec<i64>>());
        // The newest is also the low-resolution timestamp now.
        let newest = Timestamp { physical: 100, logical: 20 }.version();
        assert_eq!(view.last_ts.fresh(rt.now(), Duration::from_secs(1)), Some(newest));
    }
}
