//! [`GrpcTransport`]: the driver's transport over gRPC, generic over the
//! runtime's [`Connector`].

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{self, BoxFuture, Either, FutureExt};
use tikv_core::rpc::batch::is_batchable;
use tikv_core::rpc::{PdRequest, PdResponse, Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_driver::{Runtime, Transport};

use crate::batch::{BatchConns, ChannelSource};
use crate::dispatch::{call_health_check, call_kv, call_pd, call_store_safe_ts, pd_client};
use crate::{GrpcChannel, MessageLimits, TransportConfig, tso};

/// What a runtime crate supplies to [`GrpcTransport`]: HTTP/2 channels, and
/// through its [`Runtime`] the clock (the conversion from
/// `tikv_core::time::Instant` to its own instants is the runtime's) and
/// spawning, plus a timer the transport can hold inline in a call.
pub trait Connector: fmt::Debug + Send + Sync + 'static {
    /// An HTTP/2 connection the generated stubs run over; cloning shares it.
    type Channel: GrpcChannel<Future: Send> + Sync;
    /// The clock deadlines are on, and the spawner of the TSO and
    /// `BatchCommands` streams' tasks.
    type Runtime: Runtime;
    /// A timer; what it yields is ignored.
    type Sleep: Future + Send;

    /// The runtime the transport's tasks and clock come from.
    fn runtime(&self) -> &Self::Runtime;

    /// A timer firing at `deadline` on [`Connector::runtime`]'s clock.
    /// Never called with [`Instant::MAX`]; an instant the runtime's clock
    /// cannot represent may fire never.
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;

    /// HTTP/2 connection number `conn` to `addr`, opened with `config`'s
    /// settings. Each number is its own connection (0 serves unary calls and
    /// the first `BatchCommands` stream). Asked on every unary call and on
    /// every stream start, so it must hand out a usable connection each
    /// time: a cached one that reconnects by itself, or a redialled one
    /// after it broke.
    fn channel(
        &self,
        addr: &Arc<str>,
        conn: usize,
        config: &TransportConfig,
    ) -> impl Future<Output = Result<Self::Channel, RpcError>> + Send;
}

/// `tikv_driver::Transport` over gRPC: TiKV's `Tikv` service and PD's `PD`
/// and `Keyspace` services, on the HTTP/2 connections of a [`Connector`].
///
/// - **Unary calls** go over connection 0 of their address. The deadline is
///   sent as `grpc-timeout` and enforced locally by one timer, so a peer that
///   never answers (or a stuck connect) cannot hold the caller.
/// - **`BatchCommands`**: with [`TransportConfig::batch_commands`] (the
///   default), TiKV requests that have a batch form ride long-lived
///   streams instead, one on each of
///   [`TransportConfig::batch_streams_per_store`] connections per store,
///   batched by one core `BatchCollector` per store ([`crate::batch`]). The
///   collector fails a request at its deadline, so these calls arm no timer
///   of their own: one timer per call. A broken stream fails its in-flight
///   requests with a retryable `RpcError::Unavailable` and is re-created
///   after a backoff while the other streams carry the traffic; with every
///   stream down, requests go unary. The health feedback TiKV carries on
///   the streams' answers goes to the sink installed with
///   [`Transport::set_health_feedback_sink`] as each answer arrives.
/// - **TSO**: PD's `Tso` requests go over one long-lived stream per PD
///   address, several rounds in flight, answers matched in order
///   ([`crate::tso`]); a stream that fails is dropped, its rounds report
///   `RpcError::Unavailable`, and the next round opens a new one.
///
/// Outcomes, the same under every runtime:
/// - a call whose deadline has passed before it starts, whose timer fires,
///   or that fails in any way once its deadline has passed, is
///   `RpcError::DeadlineExceeded`: the server enforcing `grpc-timeout`
///   (tonic answers `CANCELLED`, a client layer "Timeout expired") or a
///   connection torn down at that moment can beat the timer by a hair, and
///   the caller, like client-go's (whose context is done by then), needs to
///   know the deadline is why;
/// - an answer of another RPC than the request's is `RpcError::Mismatch`.
///
/// Cloning is cheap and shares the connections and streams. The streams'
/// tasks hold the transport weakly: dropping the last clone lets its
/// connections close.
pub struct GrpcTransport<C: Connector> {
    inner: Arc<Inner<C>>,
}

struct Inner<C: Connector> {
    config: TransportConfig,
    connector: C,
    tso: tso::Streams,
    batch: BatchConns,
}

impl<C: Connector> Clone for GrpcTransport<C> {
    fn clone(&self) -> Self {
        GrpcTransport { inner: self.inner.clone() }
    }
}

impl<C: Connector> fmt::Debug for GrpcTransport<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("config", &self.inner.config)
            .field("connector", &self.inner.connector)
            .finish_non_exhaustive()
    }
}

impl<C: Connector> GrpcTransport<C> {
    /// A transport over `connector`'s connections, with no connection yet.
    pub fn with_connector(connector: C, config: TransportConfig) -> Self {
        GrpcTransport {
            inner: Arc::new(Inner {
                config,
                connector,
                tso: tso::Streams::default(),
                batch: BatchConns::default(),
            }),
        }
    }

    /// A transport over a default connector, with no connection yet.
    pub fn new(config: TransportConfig) -> Self
    where
        C: Default,
    {
        GrpcTransport::with_connector(C::default(), config)
    }

    /// The configuration the transport was built with.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// The connector the transport's connections come from.
    pub fn connector(&self) -> &C {
        &self.inner.connector
    }
}

impl<C: Connector + Default> Default for GrpcTransport<C> {
    fn default() -> Self {
        GrpcTransport::new(TransportConfig::default())
    }
}

impl<C: Connector> Inner<C> {
    /// Whether `request` rides a `BatchCommands` stream.
    fn rides_stream(&self, request: &Request) -> bool {
        self.config.batch_commands && matches!(request, Request::Kv(r) if is_batchable(r))
    }
}

impl<C: Connector> Transport for GrpcTransport<C> {
    fn set_health_feedback_sink(&self, sink: tikv_driver::HealthFeedbackSink) {
        self.inner.batch.set_health_feedback_sink(sink);
    }

    /// Every path bounds its calls: a stream request's deadline is held by
    /// its collector, and every other call arms one timer here.
    fn enforces_deadline(&self, _target: &Target, _request: &Request) -> bool {
        true
    }

    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        let inner = self.inner.clone();
        let Some(addr) = target.addr().cloned() else {
            // Timestamp needs are the client's own oracle's, never sent.
            return future::ready(Err(RpcError::NotNetwork(request.name()))).boxed();
        };
        let forwarded_host = match target {
            Target::Store { forwarded_host, .. } => forwarded_host.clone(),
            Target::Pd { .. } | Target::Oracle => None,
        };
        async move {
            let rt = inner.connector.runtime();
            let now = rt.now();
            if deadline <= now {
                return Err(RpcError::DeadlineExceeded);
            }
            let timeout =
                (deadline != Instant::MAX).then(|| deadline.saturating_duration_since(now));
            let name = request.name();
            // The collector enforces a stream request's deadline; only the
            // other paths need a timer here.
            let timed = deadline != Instant::MAX && !inner.rides_stream(&request);
            let to = Destination { addr: &addr, forwarded_host: forwarded_host.as_ref() };
            let call = dispatch(&inner, to, request, (deadline, now), timeout);
            let result = if timed {
                let timer = inner.connector.sleep_until(deadline);
                match future::select(std::pin::pin!(call), std::pin::pin!(timer)).await {
                    Either::Left((result, _)) => result,
                    Either::Right(_) => Err(RpcError::DeadlineExceeded),
                }
            } else {
                call.await
            };
            let response = blame_deadline(result, || rt.now() >= deadline)?;
            if response.name() != name {
                return Err(RpcError::Mismatch);
            }
            Ok(response)
        }
        .boxed()
    }
}

/// The transport's deadline rule ([`GrpcTransport`]): a failure once the
/// deadline has passed is the deadline's, whatever error it arrived as.
fn blame_deadline<T>(
    result: Result<T, RpcError>,
    deadline_passed: impl FnOnce() -> bool,
) -> Result<T, RpcError> {
    match result {
        Err(e) if e != RpcError::DeadlineExceeded && deadline_passed() => {
            Err(RpcError::DeadlineExceeded)
        }
        other => other,
    }
}

/// Where a call goes: the address, and the store that address forwards a
/// TiKV request to, if any.
#[derive(Clone, Copy)]
struct Destination<'a> {
    addr: &'a Arc<str>,
    forwarded_host: Option<&'a Arc<str>>,
}

/// Sends `request` on the path its kind takes. The stream path is the hot
/// one: it asks the connector for a channel only to start a stream, and the
/// other paths' futures (a tonic unary call is kilobytes of state) are
/// boxed so they do not inflate every call's future, which is moved into
/// its box on each call.
async fn dispatch<C: Connector>(
    inner: &Arc<Inner<C>>,
    to: Destination<'_>,
    request: Request,
    (deadline, now): (Instant, Instant),
    timeout: Option<Duration>,
) -> Result<Response, RpcError> {
    let limits = MessageLimits::of(&inner.config);
    let rt = inner.connector.runtime();
    let addr = to.addr;
    match request {
        Request::Kv(request) if inner.config.batch_commands && is_batchable(&request) => {
            let source = |conn| stream_channel(inner, addr, conn);
            let call = inner.batch.call(
                rt,
                (addr, to.forwarded_host),
                source,
                &inner.config,
                request,
                (deadline, now),
            );
            call.await.map(Response::Kv)
        }
        Request::Kv(request) => Box::pin(async move {
            let channel = inner.connector.channel(addr, 0, &inner.config).await?;
            call_kv(channel, limits, request, timeout, to.forwarded_host.map(|h| &**h)).await
        })
        .await
        .map(Response::Kv),
        Request::Pd(PdRequest::Tso(request)) => Box::pin(async move {
            let channel = inner.connector.channel(addr, 0, &inner.config).await?;
            let client = || pd_client(channel, limits);
            inner.tso.round(rt, addr, client, *request).await
        })
        .await
        .map(|r| Response::Pd(PdResponse::Tso(Box::new(r)))),
        Request::Timestamp => Err(RpcError::NotNetwork("timestamp")),
        Request::StoreSafeTs(request) => Box::pin(async move {
            let channel = inner.connector.channel(addr, 0, &inner.config).await?;
            call_store_safe_ts(channel, limits, *request, timeout).await
        })
        .await
        .map(|r| Response::StoreSafeTs(Box::new(r))),
        Request::HealthCheck => Box::pin(async move {
            let channel = inner.connector.channel(addr, 0, &inner.config).await?;
            call_health_check(channel, limits, timeout).await
        })
        .await
        .map(Response::HealthCheck),
        Request::Pd(request) => Box::pin(async move {
            let channel = inner.connector.channel(addr, 0, &inner.config).await?;
            call_pd(channel, limits, request, timeout).await
        })
        .await
        .map(Response::Pd),
    }
}

/// Where batch connection `conn` of `addr` gets its channel: from the
/// connector, each time it opens a stream or falls back to unary (so a
/// connector that redials hands out a live connection). It holds the
/// transport weakly: the stream tasks must not keep a dropped transport's
/// connections alive.
fn stream_channel<C: Connector>(
    inner: &Arc<Inner<C>>,
    addr: &Arc<str>,
    conn: usize,
) -> ChannelSource<C::Channel> {
    let (inner, addr): (Weak<Inner<C>>, _) = (Arc::downgrade(inner), addr.clone());
    Arc::new(move || {
        let (inner, addr) = (inner.clone(), addr.clone());
        async move {
            let inner =
                inner.upgrade().ok_or_else(|| RpcError::Unavailable("transport dropped".into()))?;
            inner.connector.channel(&addr, conn, &inner.config).await
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use futures::channel::oneshot;
    use tikv_core::rpc::KvRequest;
    use tonic::codegen::http;

    use super::*;

    /// A clock from process start, timers and tasks on plain threads: just
    /// enough runtime to drive the transport without a runtime crate.
    #[derive(Clone, Debug)]
    struct ThreadRuntime(std::time::Instant);

    impl Runtime for ThreadRuntime {
        fn now(&self) -> Instant {
            Instant::from_nanos(u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX))
        }
        fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
            if deadline == Instant::MAX {
                return future::pending().boxed();
            }
            let wait = deadline.saturating_duration_since(self.now());
            let (fired, timer) = oneshot::channel();
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                let _ = fired.send(());
            });
            timer.map(drop).boxed()
        }
        fn spawn(&self, task: BoxFuture<'static, ()>) {
            std::thread::spawn(move || futures::executor::block_on(task));
        }
    }

    /// A channel whose every request is refused, as by a dead peer.
    #[derive(Clone, Debug)]
    struct Refused;

    impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Refused {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::io::Error;
        type Future = future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _request: http::Request<tonic::body::Body>) -> Self::Future {
            let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
            future::ready(Err(refused))
        }
    }

    /// Counts the timers the transport arms.
    #[derive(Debug)]
    struct Counting {
        rt: ThreadRuntime,
        timers: AtomicUsize,
    }

    impl Connector for Counting {
        type Channel = Refused;
        type Runtime = ThreadRuntime;
        type Sleep = BoxFuture<'static, ()>;

        fn runtime(&self) -> &ThreadRuntime {
            &self.rt
        }
        fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
            self.timers.fetch_add(1, Ordering::SeqCst);
            self.rt.sleep_until(deadline)
        }
        fn channel(
            &self,
            _addr: &Arc<str>,
            _conn: usize,
            _config: &TransportConfig,
        ) -> impl Future<Output = Result<Refused, RpcError>> + Send {
            future::ready(Ok(Refused))
        }
    }

    /// Sends a `RawGet` with a deadline 2 s away; the timers armed and the
    /// outcome.
    fn raw_get_over(config: TransportConfig) -> (usize, Result<Response, RpcError>) {
        let connector =
            Counting { rt: ThreadRuntime(std::time::Instant::now()), timers: AtomicUsize::new(0) };
        let transport = GrpcTransport::with_connector(connector, config);
        let deadline = transport.connector().rt.now() + Duration::from_secs(2);
        let target =
            Target::Store { store_id: 1, addr: "127.0.0.1:1".into(), forwarded_host: None };
        let request = Request::Kv(KvRequest::RawGet(Box::default()));
        let result = futures::executor::block_on(transport.call(&target, request, deadline));
        (transport.connector().timers.load(Ordering::SeqCst), result)
    }

    #[test]
    fn one_timer_per_call_the_stream_enforces_its_own() {
        let (timers, result) = raw_get_over(TransportConfig::default().batch_commands(false));
        assert_eq!(timers, 1, "a unary call arms its timer");
        assert!(matches!(result, Err(RpcError::Unavailable(_))), "{result:?}");

        // On the stream path the collector holds the deadline: no timer here
        // (the request ends unary after the stream fails to open, or at its
        // deadline, either way without one).
        let (timers, result) = raw_get_over(TransportConfig::default());
        assert_eq!(timers, 0, "a stream request arms none");
        assert!(
            matches!(result, Err(RpcError::Unavailable(_) | RpcError::DeadlineExceeded)),
            "{result:?}"
        );
    }

    #[test]
    fn a_failure_after_the_deadline_is_the_deadlines() {
        let late = || true;
        let early = || false;
        let canceled: Result<(), _> = Err(RpcError::Canceled);
        assert_eq!(blame_deadline(canceled.clone(), late), Err(RpcError::DeadlineExceeded));
        let status = Err::<(), _>(RpcError::Status { code: 13, message: "boom".into() });
        assert_eq!(blame_deadline(status.clone(), late), Err(RpcError::DeadlineExceeded));
        let down = Err::<(), _>(RpcError::Unavailable("reset".into()));
        assert_eq!(blame_deadline(down, late), Err(RpcError::DeadlineExceeded));
        // Before the deadline every error keeps its kind.
        assert_eq!(blame_deadline(canceled, early), Err(RpcError::Canceled));
        assert_eq!(blame_deadline(status.clone(), early), status);
        // An answer is an answer, however late.
        assert_eq!(blame_deadline(Ok(7), late), Ok(7));
    }
}
