//! Request collapsing (client-go's `reqCollapse`): concurrent identical
//! requests of a client share one RPC. Which requests qualify is the core's
//! rule ([`CollapseKey`]); this transport wrapper only keeps the table of
//! calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::future::{BoxFuture, FutureExt, Shared};
use tikv_core::rpc::{CollapseKey, Request, Response, RpcError, Target};
use tikv_core::time::Instant;

use crate::{HealthFeedbackSink, Transport};

type SharedCall = Shared<BoxFuture<'static, Result<Response, RpcError>>>;
type InFlight = Mutex<HashMap<CollapseKey, SharedCall>>;

/// A [`Transport`] that sends a collapsible request once while an identical
/// one is in flight, handing every caller the same answer.
///
/// The first caller's request (and deadline) is the one sent; a later caller
/// whose own deadline is earlier is still cut off on time by
/// [`execute`](crate::execute). The entry leaves the table when the shared
/// call completes, so a request made after that is sent afresh.
pub(crate) struct Collapsing<T> {
    inner: Arc<T>,
    in_flight: Arc<InFlight>,
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
        if let Some(call) = in_flight.get(&key) {
            return call.clone().boxed();
        }
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
        in_flight.insert(key, shared.clone());
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
                    Request::Timestamp | Request::StoreSafeTs(_) | Request::HealthCheck => {
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
