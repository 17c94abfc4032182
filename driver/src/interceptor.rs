//! RPC interceptors: user hooks around every request to a TiKV store
//! (client-go's `interceptor.RPCInterceptor`).
//!
//! An interceptor sees each store RPC before it is sent, may change it (tag
//! its context), delay it, answer or refuse it itself, and sees the outcome
//! after. Interceptors chain: the first added is the outermost. They are set
//! per client ([`RawClient::with_interceptor`],
//! [`TransactionClient::with_interceptor`]) and per transaction or snapshot
//! ([`Transaction::add_interceptor`], [`Snapshot::with_interceptor`]); the
//! background work of a transaction (secondary commits, rollbacks,
//! heartbeats) goes through its interceptors too, as client-go copies the
//! interceptor into the background context. PD requests and timestamps are
//! not intercepted, as in client-go.
//!
//! A resource-control hook fits here: the request carries its resource
//! group in `Context.resource_control_context`, and the response the
//! details TiKV reports, so an interceptor can charge request units before
//! sending and after the answer.
//!
//! [`RawClient::with_interceptor`]: crate::RawClient::with_interceptor
//! [`TransactionClient::with_interceptor`]: crate::TransactionClient::with_interceptor
//! [`Transaction::add_interceptor`]: crate::Transaction::add_interceptor
//! [`Snapshot::with_interceptor`]: crate::Snapshot::with_interceptor

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
/// What an interceptor handles, re-exported so users need no `tikv-core`.
pub use tikv_core::rpc::{KvRequest, KvResponse, RpcError};
use tikv_core::rpc::{Request, Response, Target};
pub use tikv_core::time::Instant;

use crate::{HealthFeedbackSink, Transport};

/// One request to a TiKV store, as an interceptor sees it.
#[derive(Debug)]
pub struct StoreRpc {
    /// The store's id.
    pub store_id: u64,
    /// The store's address.
    pub addr: Arc<str>,
    /// The address of the store the request is for, when this store only
    /// forwards it there (`tikv-forwarded-host`, see
    /// `tikv_core::config::Config::enable_forwarding`).
    pub forwarded_host: Option<Arc<str>>,
    /// The request; an interceptor may change it (e.g. its `Context`).
    pub request: KvRequest,
    /// When the client stops waiting for the answer.
    pub deadline: Instant,
}

/// What an interceptor answers: the store's response or why there is none.
pub type StoreRpcFuture = BoxFuture<'static, Result<KvResponse, RpcError>>;

/// A hook around every store RPC (client-go `RPCInterceptor`).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use futures::FutureExt;
/// use tikv_driver::interceptor::{Next, RpcInterceptor, StoreRpc, StoreRpcFuture};
///
/// /// Counts the requests each client sends.
/// struct Count(Arc<AtomicUsize>);
///
/// impl RpcInterceptor for Count {
///     fn name(&self) -> &str {
///         "count"
///     }
///     fn intercept(&self, rpc: StoreRpc, next: Next) -> StoreRpcFuture {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         next.run(rpc)
///     }
/// }
/// ```
pub trait RpcInterceptor: Send + Sync + 'static {
    /// The interceptor's name: a chain holds one interceptor per name, the
    /// one added last (client-go's `RPCInterceptorChain.Link`).
    fn name(&self) -> &str;

    /// Handles one RPC: pass it on with [`Next::run`] (changed or not) and
    /// return that future, possibly wrapped to see or change the outcome;
    /// or return an answer without calling `next`. To refuse the request
    /// and end the operation, return [`RpcError::Rejected`]; other errors
    /// are handled as transport failures (retried with backoff).
    fn intercept(&self, rpc: StoreRpc, next: Next) -> StoreRpcFuture;
}

/// An interceptor made of a name and a closure.
///
/// ```
/// use futures::FutureExt;
/// use tikv_driver::interceptor::{RpcInterceptor, interceptor_fn};
///
/// // Tags every request with a resource group.
/// let tag = interceptor_fn("tag", |mut rpc, next| {
///     let ctx = rpc.request.context_mut();
///     ctx.resource_control_context.get_or_insert_with(Default::default).resource_group_name =
///         "batch".into();
///     next.run(rpc)
/// });
/// assert_eq!(tag.name(), "tag");
/// ```
pub fn interceptor_fn<F>(name: impl Into<String>, f: F) -> impl RpcInterceptor
where
    F: Fn(StoreRpc, Next) -> StoreRpcFuture + Send + Sync + 'static,
{
    FnInterceptor { name: name.into(), f }
}

struct FnInterceptor<F> {
    name: String,
    f: F,
}

impl<F> RpcInterceptor for FnInterceptor<F>
where
    F: Fn(StoreRpc, Next) -> StoreRpcFuture + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn intercept(&self, rpc: StoreRpc, next: Next) -> StoreRpcFuture {
        (self.f)(rpc, next)
    }
}

/// An ordered chain of interceptors, cheap to clone (shared). The default
/// is empty, and an empty chain costs nothing per RPC.
#[derive(Clone, Default)]
pub struct Interceptors {
    chain: Arc<[Arc<dyn RpcInterceptor>]>,
}

impl std::fmt::Debug for Interceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.chain.iter().map(|i| i.name())).finish()
    }
}

impl Interceptors {
    /// True when there is no interceptor.
    ///
    /// ```
    /// use tikv_driver::interceptor::{Interceptors, interceptor_fn};
    /// assert!(Interceptors::default().is_empty());
    /// let chain = Interceptors::default().with(interceptor_fn("log", |rpc, next| next.run(rpc)));
    /// assert!(!chain.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// The names, outermost first.
    ///
    /// ```
    /// use tikv_driver::interceptor::{Interceptors, interceptor_fn};
    /// let chain = Interceptors::default()
    ///     .with(interceptor_fn("auth", |rpc, next| next.run(rpc)))
    ///     .with(interceptor_fn("log", |rpc, next| next.run(rpc)));
    /// assert_eq!(chain.names(), ["auth", "log"]);
    /// ```
    pub fn names(&self) -> Vec<&str> {
        self.chain.iter().map(|i| i.name()).collect()
    }

    /// This chain with `interceptor` added innermost; one of the same name
    /// already in the chain is removed first (client-go's `Link`).
    ///
    /// ```
    /// use tikv_driver::interceptor::{Interceptors, interceptor_fn};
    /// let chain = Interceptors::default()
    ///     .with(interceptor_fn("a", |rpc, next| next.run(rpc)))
    ///     .with(interceptor_fn("b", |rpc, next| next.run(rpc)))
    ///     // Replaces the first "a", and comes last.
    ///     .with(interceptor_fn("a", |rpc, next| next.run(rpc)));
    /// assert_eq!(chain.names(), ["b", "a"]);
    /// ```
    pub fn with(&self, interceptor: impl RpcInterceptor) -> Interceptors {
        self.with_shared(Arc::new(interceptor))
    }

    fn with_shared(&self, interceptor: Arc<dyn RpcInterceptor>) -> Interceptors {
        let mut chain: Vec<_> =
            self.chain.iter().filter(|i| i.name() != interceptor.name()).cloned().collect();
        chain.push(interceptor);
        Interceptors { chain: chain.into() }
    }

    /// This chain followed by `inner`'s interceptors (a transaction's
    /// chain inside its client's), one per name, the inner one winning.
    ///
    /// ```
    /// use tikv_driver::interceptor::{Interceptors, RpcInterceptor, interceptor_fn};
    /// fn pass(name: &'static str) -> impl RpcInterceptor {
    ///     interceptor_fn(name, |rpc, next| next.run(rpc))
    /// }
    /// let client = Interceptors::default().with(pass("a")).with(pass("b"));
    /// let txn = Interceptors::default().with(pass("b")).with(pass("c"));
    /// assert_eq!(client.then(&txn).names(), ["a", "b", "c"]);
    /// ```
    pub fn then(&self, inner: &Interceptors) -> Interceptors {
        if inner.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return inner.clone();
        }
        inner.chain.iter().fold(self.clone(), |acc, i| acc.with_shared(i.clone()))
    }
}

/// The rest of the chain after an interceptor, ending at the transport.
pub struct Next {
    chain: Interceptors,
    /// The index of the next interceptor to run.
    at: usize,
    transport: Arc<dyn Transport>,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next").field("remaining", &(self.chain.chain.len() - self.at)).finish()
    }
}

impl Next {
    /// Passes `rpc` on to the next interceptor, or sends it.
    ///
    /// ```
    /// use futures::FutureExt;
    /// use tikv_driver::interceptor::{RpcInterceptor, interceptor_fn};
    /// // Sends the request on, then looks at the answer.
    /// let timed = interceptor_fn("timed", |rpc, next| {
    ///     let (store, sent) = (rpc.store_id, std::time::Instant::now());
    ///     next.run(rpc)
    ///         .map(move |outcome| {
    ///             println!("store {store} answered in {:?}", sent.elapsed());
    ///             outcome
    ///         })
    ///         .boxed()
    /// });
    /// assert_eq!(timed.name(), "timed");
    /// ```
    pub fn run(self, rpc: StoreRpc) -> StoreRpcFuture {
        match self.chain.chain.get(self.at).cloned() {
            Some(interceptor) => {
                let next = Next { at: self.at + 1, ..self };
                interceptor.intercept(rpc, next)
            }
            None => {
                let target = Target::Store {
                    store_id: rpc.store_id,
                    addr: rpc.addr,
                    forwarded_host: rpc.forwarded_host,
                };
                let call = self.transport.call(&target, Request::Kv(rpc.request), rpc.deadline);
                call.map(|outcome| match outcome? {
                    Response::Kv(response) => Ok(response),
                    Response::Pd(_)
                    | Response::Timestamp(_)
                    | Response::StoreSafeTs(_)
                    | Response::HealthCheck(_) => Err(RpcError::Mismatch),
                })
                .boxed()
            }
        }
    }
}

/// A transport whose store RPCs go through a chain of interceptors first.
pub(crate) struct Intercepted {
    pub(crate) chain: Interceptors,
    pub(crate) transport: Arc<dyn Transport>,
}

impl Transport for Intercepted {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        match (target, request) {
            (Target::Store { store_id, addr, forwarded_host }, Request::Kv(request)) => {
                let rpc = StoreRpc {
                    store_id: *store_id,
                    addr: addr.clone(),
                    forwarded_host: forwarded_host.clone(),
                    request,
                    deadline,
                };
                let next =
                    Next { chain: self.chain.clone(), at: 0, transport: self.transport.clone() };
                next.run(rpc).map(|outcome| outcome.map(Response::Kv)).boxed()
            }
            (target, request) => self.transport.call(target, request, deadline),
        }
    }

    fn set_health_feedback_sink(&self, sink: HealthFeedbackSink) {
        self.transport.set_health_feedback_sink(sink)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future;
    use tikv_proto::kvrpcpb;

    use super::*;

    /// A store that answers every `RawGet` with the resource group the
    /// request carried as its value, and records the calls it got.
    #[derive(Default)]
    struct EchoStore {
        calls: Mutex<Vec<String>>,
    }

    impl Transport for EchoStore {
        fn call(
            &self,
            target: &Target,
            request: Request,
            _deadline: Instant,
        ) -> BoxFuture<'static, Result<Response, RpcError>> {
            let answer = match request {
                Request::Kv(KvRequest::RawGet(r)) => {
                    let group = r
                        .context
                        .and_then(|c| c.resource_control_context)
                        .map(|c| c.resource_group_name)
                        .unwrap_or_default();
                    self.calls.lock().unwrap().push(format!("raw_get to {:?}", target.addr()));
                    Ok(Response::Kv(KvResponse::RawGet(Box::new(kvrpcpb::RawGetResponse {
                        value: group.into(),
                        ..Default::default()
                    }))))
                }
                Request::Pd(_) => {
                    self.calls.lock().unwrap().push("pd".into());
                    Err(RpcError::Unavailable("no PD here".into()))
                }
                _ => Err(RpcError::Mismatch),
            };
            future::ready(answer).boxed()
        }
    }

    fn raw_get() -> Request {
        Request::Kv(KvRequest::RawGet(Box::new(kvrpcpb::RawGetRequest {
            context: Some(Default::default()),
            ..Default::default()
        })))
    }

    fn store_target() -> Target {
        Target::Store { store_id: 1, addr: "s1".into(), forwarded_host: None }
    }

    /// Appends its name to a shared log before and after the call.
    fn logging(name: &'static str, log: Arc<Mutex<Vec<String>>>) -> impl RpcInterceptor {
        interceptor_fn(name, move |rpc, next| {
            log.lock().unwrap().push(format!("{name} before"));
            let log = log.clone();
            next.run(rpc)
                .map(move |outcome| {
                    log.lock().unwrap().push(format!("{name} after"));
                    outcome
                })
                .boxed()
        })
    }

    fn value(outcome: Result<Response, RpcError>) -> Vec<u8> {
        match outcome {
            Ok(Response::Kv(KvResponse::RawGet(r))) => r.value.to_vec(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_chain_runs_outermost_first_and_sees_the_answer_innermost_first() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain =
            Interceptors::default().with(logging("a", log.clone())).with(logging("b", log.clone()));
        assert_eq!(chain.names(), ["a", "b"]);
        let store = Arc::new(EchoStore::default());
        let t = Intercepted { chain, transport: store.clone() };
        let outcome = futures::executor::block_on(t.call(&store_target(), raw_get(), Instant::MAX));
        assert!(outcome.is_ok());
        assert_eq!(*log.lock().unwrap(), ["a before", "b before", "b after", "a after"]);
        assert_eq!(store.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn an_interceptor_can_tag_the_request_and_change_the_answer() {
        let chain = Interceptors::default()
            .with(interceptor_fn("upper", |rpc, next| {
                next.run(rpc)
                    .map(|outcome| {
                        outcome.map(|r| match r {
                            KvResponse::RawGet(mut g) => {
                                g.value = g.value.to_ascii_uppercase().into();
                                KvResponse::RawGet(g)
                            }
                            other => other,
                        })
                    })
                    .boxed()
            }))
            .with(interceptor_fn("tag", |mut rpc, next| {
                let ctx = rpc.request.context_mut();
                ctx.resource_control_context
                    .get_or_insert_with(Default::default)
                    .resource_group_name = "batch".into();
                next.run(rpc)
            }));
        let t = Intercepted { chain, transport: Arc::new(EchoStore::default()) };
        let outcome = futures::executor::block_on(t.call(&store_target(), raw_get(), Instant::MAX));
        assert_eq!(value(outcome), b"BATCH");
    }

    #[test]
    fn an_interceptor_can_refuse_without_sending() {
        let chain = Interceptors::default().with(interceptor_fn("deny", |_rpc, _next| {
            future::ready(Err(RpcError::Rejected("over quota".into()))).boxed()
        }));
        let store = Arc::new(EchoStore::default());
        let t = Intercepted { chain, transport: store.clone() };
        let outcome = futures::executor::block_on(t.call(&store_target(), raw_get(), Instant::MAX));
        assert_eq!(outcome.unwrap_err(), RpcError::Rejected("over quota".into()));
        assert!(store.calls.lock().unwrap().is_empty(), "nothing was sent");
    }

    #[test]
    fn pd_requests_are_not_intercepted() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = Interceptors::default().with(logging("a", log.clone()));
        let store = Arc::new(EchoStore::default());
        let t = Intercepted { chain, transport: store.clone() };
        let pd = Target::Pd { addr: "pd".into() };
        let request = Request::Pd(tikv_core::rpc::PdRequest::GetMembers(Default::default()));
        let _ = futures::executor::block_on(t.call(&pd, request, Instant::MAX));
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(*store.calls.lock().unwrap(), ["pd"]);
    }

    #[test]
    fn a_name_is_kept_once_and_the_inner_chain_wins() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let client =
            Interceptors::default().with(logging("a", log.clone())).with(logging("b", log.clone()));
        let txn =
            Interceptors::default().with(logging("b", log.clone())).with(logging("c", log.clone()));
        assert_eq!(client.then(&txn).names(), ["a", "b", "c"]);
        assert_eq!(client.with(logging("a", log)).names(), ["b", "a"]);
        assert!(client.then(&Interceptors::default()).names() == ["a", "b"]);
    }
}
