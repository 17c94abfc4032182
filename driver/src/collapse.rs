//! Request collapsing (client-go's `reqCollapse`): concurrent identical
//! requests of a client share one RPC. Which requests qualify is the core's
//! rule ([`CollapseKey`]); this transport wrapper only keeps the table of
//! calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::future::{BoxFuture, FutureExt, WeakShared};
use tikv_core::rpc::{CollapseKey, Request, Response, RpcError, Target};
use tikv_core::time::Instant;

use crate::{HealthFeedbackSink, Transport};

type Call = BoxFuture<'static, Result<Response, RpcError>>;
/// Weak, so that a call every caller dropped is dropped (cancelled) too,
/// as [`Transport::call`] promises, and a later caller sends afresh
/// instead of resuming it, perhaps past its deadline.
type InFlight = Mutex<HashMap<CollapseKey, WeakShared<Call>>>;

/// A [`Transport`] that sends a collapsible request once while an identical
/// one is in flight, handing every caller the same answer.
///
/// The first caller's request (and deadline) is the one sent; a later caller
/// whose own deadline is earlier is still cut off on time by
/// [`execute`](crate::execute). The call goes on while any caller waits
/// for it (the one that sent it may be dropped), and is dropped with the
/// last. The entry leaves the table when the shared call completes or is
/// dropped, so a request made after that is sent afresh.
///
/// Clones share the table: the client's store prober holds one, so its
/// liveness probes and those of failed calls are one per store address.
pub(crate) struct Collapsing<T> {
    inner: Arc<T>,
    in_flight: Arc<InFlight>,
}

impl<T> Clone for Collapsing<T> {
    fn clone(&self) -> Self {
        Collapsing { inner: self.inner.clone(), in_flight: self.in_flight.clone() }
    }
}

impl<T> Collapsing<T> {
    pub(crate) fn new(inner: Arc<T>) -> Collapsing<T> {
        Collapsing { inner, in_flight: Arc::default() }
    }
}

impl<T: Transport> Transport for Collapsing<T> {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        let Some(key) = CollapseKey::of(target, &request) else {
            return self.inner.call(target, request, deadline);
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(call) = in_flight.get(&key).and_then(WeakShared::upgrade) {
            return call.boxed();
        }
        // Calls every caller dropped leave dead entries behind.
        in_flight.retain(|_, call| call.upgrade().is_some());
        let call = self.inner.call(target, request, deadline);
        let table: Weak<InFlight> = Arc::downgrade(&self.in_flight);
        let done_key = key.clone();
        let shared = async move {
            let result = call.await;
            if let Some(table) = table.upgrade() {
                table.lock().unwrap_or_else(|e| e.into_inner()).remove(&done_key);
            }
            result
        }
        .boxed()
        .shared();
        if let Some(weak) = shared.downgrade() {
            in_flight.insert(key, weak);
        }
        shared.boxed()
    }

    fn set_health_feedback_sink(&self, sink: HealthFeedbackSink) {
        self.inner.set_health_feedback_sink(sink)
    }

    /// A collapsible request may wait on another caller's call, sent with
    /// that caller's (later) deadline: only the others are bounded by the
    /// inner transport.
    fn enforces_deadline(&self, target: &Target, request: &Request) -> bool {
        CollapseKey::of(target, request).is_none() && self.inner.enforces_deadline(target, request)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::channel::oneshot;
    use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse};
    use tikv_proto::health::HealthCheckResponse;
    use tikv_proto::health::health_check_response::ServingStatus;
    use tikv_proto::{kvrpcpb, pdpb};

    use super::*;

    /// Counts calls; each answers when the test releases it.
    #[derive(Default)]
    struct Gated {
        calls: AtomicUsize,
        gates: Mutex<Vec<oneshot::Sender<()>>>,
        /// Claims to bound its calls by their deadlines.
        bounds_calls: bool,
    }

    impl Transport for Gated {
        fn call(
            &self,
            _: &Target,
            request: Request,
            _: Instant,
        ) -> BoxFuture<'static, Result<Response, RpcError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = oneshot::channel();
            self.gates.lock().unwrap().push(tx);
            async move {
                rx.await.map_err(|_| RpcError::Unavailable("gate dropped".into()))?;
                Ok(match request {
                    Request::Kv(kv) => Response::Kv(kv.response_template()),
                    Request::Pd(_) => Response::Pd(PdResponse::GetRegion(Default::default())),
                    Request::HealthCheck => Response::HealthCheck(HealthCheckResponse {
                        status: ServingStatus::Serving as i32,
                    }),
                    Request::Timestamp | Request::StoreSafeTs(_) => {
                        return Err(RpcError::NotNetwork("not collapsed here"));
                    }
                })
            }
            .boxed()
        }

        fn enforces_deadline(&self, _: &Target, _: &Request) -> bool {
            self.bounds_calls
        }
    }

    fn resolve(region_id: u64, keys: Vec<bytes::Bytes>) -> Request {
        Request::Kv(KvRequest::ResolveLock(Box::new(kvrpcpb::ResolveLockRequest {
            context: Some(kvrpcpb::Context { region_id, ..Default::default() }),
            start_version: 100,
            commit_version: 0,
            keys,
            ..Default::default()
        })))
    }

    #[test]
    fn identical_region_wide_resolves_share_one_call_while_it_is_in_flight() {
        let inner = Arc::new(Gated::default());
        let collapsing = Collapsing::new(inner.clone());
        let store = Target::Store { store_id: 1, addr: "s1".into(), forwarded_host: None };
        let at = Instant::MAX;

        let a = collapsing.call(&store, resolve(7, vec![]), at);
        let b = collapsing.call(&store, resolve(7, vec![]), at);
        // Another region, a lite resolve: sent on their own.
        let c = collapsing.call(&store, resolve(8, vec![]), at);
        let d = collapsing.call(&store, resolve(7, vec!["k".into()]), at);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);

        for gate in inner.gates.lock().unwrap().drain(..) {
            gate.send(()).unwrap();
        }
        let answers = futures::executor::block_on(futures::future::join_all([a, b, c, d]));
        for answer in answers {
            assert!(matches!(answer, Ok(Response::Kv(KvResponse::ResolveLock(_)))), "{answer:?}");
        }

        // Done: the next identical request is sent again.
        let e = collapsing.call(&store, resolve(7, vec![]), at);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        inner.gates.lock().unwrap().drain(..).for_each(|g| g.send(()).unwrap());
        assert!(futures::executor::block_on(e).is_ok());
    }

    /// A collapsed caller waits on a call sent with another caller's
    /// deadline, so only requests that are never collapsed keep the inner
    /// transport's bound.
    #[test]
    fn only_requests_never_collapsed_are_bounded_by_the_inner_transport() {
        let store = Target::Store { store_id: 1, addr: "s1".into(), forwarded_host: None };
        let get = Request::Kv(KvRequest::RawGet(Box::default()));
        let bounding = Collapsing::new(Arc::new(Gated { bounds_calls: true, ..Gated::default() }));
        assert!(bounding.enforces_deadline(&store, &get));
        assert!(!bounding.enforces_deadline(&store, &resolve(7, vec![])));
        let unbounded = Collapsing::new(Arc::new(Gated::default()));
        assert!(!unbounded.enforces_deadline(&store, &get));
    }

    #[test]
    fn a_failed_shared_call_fails_every_caller_and_is_not_remembered() {
        let inner = Arc::new(Gated::default());
        let collapsing = Collapsing::new(inner.clone());
        let store = Target::Store { store_id: 1, addr: "s1".into(), forwarded_host: None };
        let a = collapsing.call(&store, resolve(7, vec![]), Instant::MAX);
        let b = collapsing.call(&store, resolve(7, vec![]), Instant::MAX);
        inner.gates.lock().unwrap().clear(); // the network drops the call
        let (a, b) = futures::executor::block_on(futures::future::join(a, b));
        assert!(a.is_err() && b.is_err());
        let _c = collapsing.call(&store, resolve(7, vec![]), Instant::MAX);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    /// Concurrent misses for one key (and lookups of one store) ask PD once.
    #[test]
    fn identical_pd_region_and_store_reads_share_one_call() {
        let inner = Arc::new(Gated::default());
        let collapsing = Collapsing::new(inner.clone());
        let pd = Target::Pd { addr: "pd1:2379".into() };
        let other_pd = Target::Pd { addr: "pd2:2379".into() };
        let region = |key: &'static str| {
            Request::Pd(PdRequest::GetRegion(Box::new(pdpb::GetRegionRequest {
                region_key: key.into(),
                ..Default::default()
            })))
        };
        let store = |id| {
            Request::Pd(PdRequest::GetStore(Box::new(pdpb::GetStoreRequest {
                store_id: id,
                ..Default::default()
            })))
        };
        let calls = vec![
            collapsing.call(&pd, region("k1"), Instant::MAX),
            collapsing.call(&pd, region("k1"), Instant::MAX), // shared
            collapsing.call(&pd, region("k2"), Instant::MAX),
            collapsing.call(&other_pd, region("k1"), Instant::MAX),
            collapsing.call(&pd, store(4), Instant::MAX),
            collapsing.call(&pd, store(4), Instant::MAX), // shared
            collapsing.call(&pd, store(5), Instant::MAX),
        ];
        assert_eq!(inner.calls.load(Ordering::SeqCst), 5);
        inner.gates.lock().unwrap().drain(..).for_each(|g| g.send(()).unwrap());
        let answers = futures::executor::block_on(futures::future::join_all(calls));
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    }

    /// client-go's `livenessSf`: concurrent liveness probes of one store
    /// address (failed calls', the prober's) share one health `Check`; the
    /// probe of another store is its own. The caller that sent the shared
    /// probe may be dropped: the probe goes on and answers the others. Once
    /// answered, the next probe is sent afresh.
    #[test]
    fn liveness_probes_of_one_store_share_one_check_even_if_its_sender_is_dropped() {
        let inner = Arc::new(Gated::default());
        let collapsing = Collapsing::new(inner.clone());
        let prober = collapsing.clone();
        let store = |id: u64| Target::Store {
            store_id: id,
            addr: format!("s{id}").into(),
            forwarded_host: None,
        };
        let first = collapsing.call(&store(1), Request::HealthCheck, Instant::MAX);
        let second = collapsing.call(&store(1), Request::HealthCheck, Instant::MAX);
        let round = prober.call(&store(1), Request::HealthCheck, Instant::MAX);
        let other = collapsing.call(&store(2), Request::HealthCheck, Instant::MAX);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "one check per store");
        drop(first);
        inner.gates.lock().unwrap().drain(..).for_each(|g| g.send(()).unwrap());
        let answers =
            futures::executor::block_on(futures::future::join_all([second, round, other]));
        for answer in answers {
            assert!(
                matches!(&answer, Ok(Response::HealthCheck(r)) if r.status == ServingStatus::Serving as i32),
                "{answer:?}"
            );
        }
        let again = collapsing.call(&store(1), Request::HealthCheck, Instant::MAX);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "answered: sent afresh");
        inner.gates.lock().unwrap().drain(..).for_each(|g| g.send(()).unwrap());
        assert!(futures::executor::block_on(again).is_ok());
    }

    /// A shared call every caller dropped is dropped with them (the
    /// network call cancelled): the next identical request is sent afresh,
    /// not handed the abandoned one.
    #[test]
    fn a_call_every_caller_dropped_is_not_shared_later() {
        let inner = Arc::new(Gated::default());
        let collapsing = Collapsing::new(inner.clone());
        let store = Target::Store { store_id: 1, addr: "s1".into(), forwarded_host: None };
        let a = collapsing.call(&store, Request::HealthCheck, Instant::MAX);
        let b = collapsing.call(&store, Request::HealthCheck, Instant::MAX);
        drop((a, b));
        assert!(
            inner.gates.lock().unwrap().iter().all(|g| g.is_canceled()),
            "the network call is cancelled"
        );
        let c = collapsing.call(&store, Request::HealthCheck, Instant::MAX);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "sent afresh");
        assert_eq!(collapsing.in_flight.lock().unwrap().len(), 1, "the dead entry is gone");
        inner.gates.lock().unwrap().drain(..).for_each(|g| {
            let _ = g.send(());
        });
        assert!(futures::executor::block_on(c).is_ok());
    }

    /// Records the health feedback sinks installed on it.
    #[derive(Default)]
    struct SinkRecorder {
        sinks: AtomicUsize,
    }

    impl Transport for SinkRecorder {
        fn call(
            &self,
            _: &Target,
            _: Request,
            _: Instant,
        ) -> BoxFuture<'static, Result<Response, RpcError>> {
            futures::future::ready(Err(RpcError::NotNetwork("no calls here"))).boxed()
        }

        fn set_health_feedback_sink(&self, _: HealthFeedbackSink) {
            self.sinks.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A sink installed through the client's wrapping transports reaches
    /// the network transport beneath them, which is the one that receives
    /// TiKV's feedback.
    #[test]
    fn health_feedback_sinks_pass_through_the_wrappers() {
        let network = Arc::new(SinkRecorder::default());
        let sink: HealthFeedbackSink = Arc::new(|_, _| {});
        Collapsing::new(network.clone()).set_health_feedback_sink(sink.clone());
        let intercepted = crate::interceptor::Intercepted {
            chain: crate::interceptor::Interceptors::default(),
            transport: network.clone(),
        };
        intercepted.set_health_feedback_sink(sink);
        assert_eq!(network.sinks.load(Ordering::SeqCst), 2);
    }
}
