//! The timestamp oracle: a background task that answers every timestamp
//! need of a client's operations ([`Request::Timestamp`]) and of
//! [`Oracle::get_timestamp`] from one core [`TsoBatcher`], which batches the
//! waiting callers into PD `Tso` rounds, several in flight at once. Every
//! decision (batch size, callers that gave up, requeue order, monotonicity)
//! is the batcher's; this task only keeps the channels and runs the rounds.

use std::sync::Arc;
use std::task::Poll;

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{AbortHandle, Abortable, BoxFuture, FutureExt};
use futures::stream::FuturesUnordered;
use tikv_core::Error;
use tikv_core::pd::{Timestamp, TsoBatcher, TsoRound, TsoRoundCallers, TsoRoundEnd};
use tikv_core::rpc::{PdResponse, Request, Response, RpcError, Target};
use tikv_core::time::Instant;

use crate::{HealthFeedbackSink, Runtime, Transport, execute, observe};

type Waiter = oneshot::Sender<Result<Timestamp, Error>>;

/// A handle on the client's TSO task. Dropping every handle, or
/// [`Oracle::stop`], ends the task.
#[derive(Clone, Debug)]
pub(crate) struct Oracle {
    requests: mpsc::UnboundedSender<Waiter>,
    task: AbortHandle,
}

impl Oracle {
    /// Spawns the TSO task on `rt`; its rounds go out through `transport`.
    pub(crate) fn start<R: Runtime, T: Transport>(
        batcher: TsoBatcher<Waiter>,
        rt: R,
        transport: Arc<T>,
    ) -> Oracle {
        let (requests, rx) = mpsc::unbounded();
        let task_rt = rt.clone();
        let (task, registration) = AbortHandle::new_pair();
        let run = Abortable::new(run(batcher, task_rt, transport, rx), registration);
        rt.spawn(Box::pin(async move {
            let _ = run.await;
        }));
        Oracle { requests, task }
    }

    /// Ends the task now: callers waiting for a timestamp, and later ones,
    /// get [`Error::Closed`].
    pub(crate) fn stop(&self) {
        self.task.abort();
        self.requests.close_channel();
    }

    /// A fresh timestamp, strictly greater than every one handed out before.
    pub(crate) async fn get_timestamp(&self) -> Result<Timestamp, Error> {
        let asked = std::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        self.requests.unbounded_send(tx).map_err(|_| Error::Closed)?;
        let answer = rx.await.map_err(|_| Error::Closed)?;
        metrics::histogram!(observe::names::TSO_WAIT).record(asked.elapsed().as_secs_f64());
        answer
    }
}

/// What woke the TSO task.
enum Event<D> {
    Caller(Waiter),
    RoundDone(D),
    Closed,
}

/// Callers join the batcher's queue; whenever it has room, a round leaves
/// at once for the oldest of them, so callers that arrive while every round
/// is out wait together for the next free slot: batching needs no
/// deliberate delay. Rounds run concurrently; each one's answer is judged by
/// the batcher when it completes.
async fn run<R: Runtime, T: Transport>(
    mut batcher: TsoBatcher<Waiter>,
    rt: R,
    transport: Arc<T>,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
) {
    let mut rounds = FuturesUnordered::new();
    let mut open = true;
    loop {
        // Everyone already in the channel joins before a round leaves.
        while open {
            match rx.try_recv() {
                Ok(w) => batcher.enqueue(w),
                Err(mpsc::TryRecvError::Closed) => open = false,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        while let Some((round, callers)) = batcher.poll_round(|w| w.is_canceled()) {
            metrics::histogram!(observe::names::TSO_BATCH_SIZE).record(callers.len() as f64);
            rounds.push(run_round(round, callers, rt.clone(), transport.clone()));
        }
        let event = futures::future::poll_fn(|cx| {
            if let Poll::Ready(Some(done)) = rounds.poll_next_unpin(cx) {
                return Poll::Ready(Event::RoundDone(done));
            }
            if open {
                return match rx.poll_next_unpin(cx) {
                    Poll::Ready(Some(w)) => Poll::Ready(Event::Caller(w)),
                    Poll::Ready(None) => Poll::Ready(Event::Closed),
                    Poll::Pending => Poll::Pending,
                };
            }
            if rounds.is_empty() { Poll::Ready(Event::Closed) } else { Poll::Pending }
        })
        .await;
        match event {
            Event::Caller(w) => batcher.enqueue(w),
            Event::Closed if rounds.is_empty() && batcher.waiting() == 0 => return,
            Event::Closed => open = false,
            Event::RoundDone((callers, outcome)) => {
                match batcher.finish_round(callers, outcome, rt.now()) {
                    TsoRoundEnd::Served(served) => {
                        for (w, ts) in served {
                            let _ = w.send(Ok(ts));
                        }
                    }
                    TsoRoundEnd::Requeued => {}
                    TsoRoundEnd::Failed(waiters, e) => {
                        // Each waiter gets the error; the log says why a
                        // whole round of them failed at once.
                        tracing::warn!(
                            target: "tikv_driver",
                            callers = waiters.len(),
                            error = %e,
                            "TSO round failed"
                        );
                        for w in waiters {
                            let _ = w.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// Executes one round, keeping its callers for the answer.
async fn run_round<R: Runtime, T: Transport>(
    round: TsoRound,
    callers: TsoRoundCallers<Waiter>,
    rt: R,
    transport: Arc<T>,
) -> (TsoRoundCallers<Waiter>, Result<PdResponse, Error>) {
    let outcome = execute(round, &rt, &*transport).await;
    (callers, outcome)
}

/// What a client's operations send through: their timestamp needs
/// ([`Target::Oracle`]) to the client's oracle, so concurrent operations
/// share its batched rounds and every timestamp the client uses comes from
/// one strictly increasing sequence; everything else to the network.
pub(crate) struct ClientTransport<T> {
    network: T,
    oracle: Oracle,
}

impl<T> ClientTransport<T> {
    pub(crate) fn new(network: T, oracle: Oracle) -> Self {
        ClientTransport { network, oracle }
    }
}

impl<T: Transport> Transport for ClientTransport<T> {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        match (target, &request) {
            (Target::Oracle, Request::Timestamp) => {
                let oracle = self.oracle.clone();
                async move {
                    match oracle.get_timestamp().await {
                        Ok(ts) => Ok(Response::Timestamp(ts)),
                        Err(e) => Err(RpcError::NoTimestamp(Box::new(e))),
                    }
                }
                .boxed()
            }
            (Target::Oracle, _) | (_, Request::Timestamp) => {
                futures::future::ready(Err(RpcError::NotNetwork(request.name()))).boxed()
            }
            _ => self.network.call(target, request, deadline),
        }
    }

    fn set_health_feedback_sink(&self, sink: HealthFeedbackSink) {
        self.network.set_health_feedback_sink(sink)
    }

    fn enforces_deadline(&self, target: &Target, request: &Request) -> bool {
        // The oracle's own calls are bounded by its TSO machinery, not by
        // the caller's deadline.
        !matches!(target, Target::Oracle) && self.network.enforces_deadline(target, request)
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
    use tikv_core::rpc::PdRequest;
    use tikv_core::time::Duration;
    use tikv_core::view::ClusterView;
    use tikv_proto::pdpb;

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

    /// A manual runtime, a client view whose PD leader is known, and a
    /// batcher allowing `max_in_flight` rounds.
    fn setup(max_in_flight: usize) -> (ManualRuntime, Arc<ClusterView>, TsoBatcher<Waiter>) {
        let pd_state = Arc::new(PdState::new(["pd1:2379"]));
        pd_state.set_leader("pd1:2379".into());
        let config = Config::default()
            .with_pd_endpoints(["pd1:2379"])
            .with_tso_max_rounds_in_flight(max_in_flight);
        let view = Arc::new(ClusterView::new(config, ApiCodec::v1(Mode::Txn), pd_state));
        let batcher = TsoBatcher::new(view.clone(), 1);
        (ManualRuntime::default(), view, batcher)
    }

    /// Twenty operations asking for a timestamp at once share the TSO
    /// task's single round, and each gets a distinct one; the network is
    /// never asked for a timestamp need.
    #[test]
    fn operations_timestamps_join_the_batched_rounds() {
        let (rt, view, batcher) = setup(1);
        let pd = Arc::new(Pd::default());
        let oracle = Oracle::start(batcher, rt.clone(), pd.clone());
        let client = ClientTransport::new(pd.clone(), oracle);

        let calls: Vec<_> = (0..20)
            .map(|_| client.call(&Target::Oracle, Request::Timestamp, Instant::MAX))
            .collect();
        let misrouted =
            client.call(&Target::Pd { addr: "pd1:2379".into() }, Request::Timestamp, Instant::MAX);

        let mut pool = LocalPool::new();
        for task in rt.take_spawned() {
            pool.spawner().spawn_local(task).unwrap();
        }
        let answers = pool.run_until(futures::future::join_all(calls));
        let logicals: Vec<i64> = answers
            .into_iter()
            .map(|a| match a {
                Ok(Response::Timestamp(ts)) => ts.logical(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(pd.rounds.load(Ordering::SeqCst), 1, "one round for all twenty");
        let misrouted = pool.run_until(misrouted);
        assert_eq!(misrouted.map(|_| ()), Err(RpcError::NotNetwork("timestamp")));
        assert_eq!(logicals, (1..=20).collect::<Vec<i64>>());
        // The newest is also the low-resolution timestamp now.
        let newest = Timestamp::compose(100, 20);
        assert_eq!(view.last_ts.fresh(rt.now(), Duration::from_secs(1)), Some(newest));
    }

    type HeldReply = oneshot::Sender<Result<Response, RpcError>>;

    /// PD's TSO holding every answer until the test releases it.
    #[derive(Default)]
    struct HeldPd {
        asked: Mutex<Vec<(u32, HeldReply)>>,
    }

    impl HeldPd {
        fn counts(&self) -> Vec<u32> {
            self.asked.lock().unwrap().iter().map(|(c, _)| *c).collect()
        }

        /// Answers the oldest held round with `count` timestamps ending at
        /// `100.logical`.
        fn release_oldest(&self, logical: i64) {
            let (count, reply) = self.asked.lock().unwrap().remove(0);
            let response = pdpb::TsoResponse {
                header: None,
                count,
                timestamp: Some(pdpb::Timestamp { physical: 100, logical, suffix_bits: 0 }),
            };
            let _ = reply.send(Ok(Response::Pd(PdResponse::Tso(Box::new(response)))));
        }
    }

    impl Transport for HeldPd {
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
            let (tx, rx) = oneshot::channel();
            self.asked.lock().unwrap().push((r.count, tx));
            rx.map(|r| r.unwrap_or(Err(RpcError::Canceled))).boxed()
        }
    }

    /// With two rounds allowed in flight, the first two callers each get a
    /// round at once (no waiting for company); the five that arrive while
    /// both are out wait and leave together in the round the first answer
    /// frees. Every caller gets a distinct timestamp, in order.
    #[test]
    fn rounds_pipeline_and_callers_coalesce_while_all_are_out() {
        let (rt, _view, batcher) = setup(2);
        let pd = Arc::new(HeldPd::default());
        let oracle = Oracle::start(batcher, rt.clone(), pd.clone());
        let mut pool = LocalPool::new();
        for task in rt.take_spawned() {
            pool.spawner().spawn_local(task).unwrap();
        }
        let answers = Arc::new(Mutex::new(Vec::new()));
        let spawner = pool.spawner();
        let call = |n: usize| {
            let (oracle, answers) = (oracle.clone(), answers.clone());
            let task = async move {
                let ts = oracle.get_timestamp().await.expect("timestamp");
                answers.lock().unwrap().push((n, ts.logical()));
            };
            spawner.spawn_local(task).unwrap();
        };
        call(0);
        pool.run_until_stalled();
        call(1);
        pool.run_until_stalled();
        assert_eq!(pd.counts(), [1, 1], "two rounds out, one caller each");
        (2..7).for_each(call);
        pool.run_until_stalled();
        assert_eq!(pd.counts(), [1, 1], "both slots busy: the five wait");
        pd.release_oldest(1);
        pool.run_until_stalled();
        assert_eq!(pd.counts(), [1, 5], "the freed slot takes all five");
        pd.release_oldest(2);
        pd.release_oldest(7);
        pool.run_until_stalled();
        let mut got = answers.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, (0..7).map(|n| (n, n as i64 + 1)).collect::<Vec<_>>());
    }
}
