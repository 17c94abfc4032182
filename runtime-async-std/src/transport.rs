//! [`GrpcTransport`]: the driver's transport over hyper HTTP/2 and the
//! tonic stubs.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture, Either, FutureExt};
use tikv_core::rpc::batch::is_batchable;
use tikv_core::rpc::{PdRequest, PdResponse, Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_driver::Transport;

use crate::clock;
use crate::conn::{Channel, Pool, remaining};
use tikv_grpc::batch::{BatchConns, ChannelSource};
use tikv_grpc::dispatch::{call_kv, call_pd, pd_client};
use tikv_grpc::tso;

use crate::AsyncStdRuntime;

pub use tikv_grpc::TransportConfig;

/// `tikv_driver::Transport` over gRPC: TiKV's `Tikv` service and PD's `PD`
/// and `Keyspace` services, with the tonic-generated stubs running over
/// hyper HTTP/2 client connections on async-io TCP streams. No tokio runtime
/// is involved.
///
/// One HTTP/2 connection per address, dialled on first use (within
/// [`TransportConfig::connect_timeout`]) and shared by every concurrent
/// call; a connection that breaks is replaced on the next call. Each call's
/// deadline is sent as `grpc-timeout` and enforced locally with an async-io
/// timer. PD's TSO requests go over one long-lived bidirectional stream per
/// PD address, several rounds in flight, answers matched in order
/// (`tikv_grpc::tso`); a stream that fails is dropped, its rounds in flight
/// report `RpcError::Unavailable`, and the next round opens a new one.
///
/// With [`TransportConfig::batch_commands`] (the default), TiKV requests
/// that have a batch form ride `BatchCommands` streams instead, one on each
/// of [`TransportConfig::batch_streams_per_store`] connections per store
/// (the first shared with unary calls), batched by one core
/// `BatchCollector` per store that hands whole messages to the streams in
/// turn (`tikv_grpc::batch`, the same code as `tikv-tokio`'s); a broken
/// stream fails its in-flight requests with a retryable
/// `RpcError::Unavailable` and is re-created, on a redialled connection,
/// after a backoff.
///
/// Cloning is cheap and shares the connections. Dropping the last clone
/// closes them. Calls can be awaited on any executor (async-std, smol, a
/// plain `block_on`): connection tasks run on async-std's executor and I/O
/// on async-io's reactor.
#[derive(Clone, Debug)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: TransportConfig,
    pool: Pool,
    tso: tso::Streams,
    batch: BatchConns,
    rt: AsyncStdRuntime,
}

impl GrpcTransport {
    /// A transport with no connection yet.
    pub fn new(config: TransportConfig) -> GrpcTransport {
        clock::init();
        GrpcTransport {
            inner: Arc::new(Inner {
                config,
                pool: Pool::default(),
                tso: tso::Streams::default(),
                batch: BatchConns::default(),
                rt: AsyncStdRuntime::new(),
            }),
        }
    }

    /// The configuration the transport was built with.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }
}

impl Default for GrpcTransport {
    fn default() -> Self {
        GrpcTransport::new(TransportConfig::default())
    }
}

impl Transport for GrpcTransport {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        let inner = self.inner.clone();
        let Some(addr) = target.addr().cloned() else {
            return futures::future::ready(Err(RpcError::NotNetwork(request.name()))).boxed();
        };
        async move {
            let core_deadline = deadline;
            let deadline = clock::to_std(deadline);
            let timeout = deadline.map(remaining);
            if timeout == Some(Duration::ZERO) {
                return Err(RpcError::DeadlineExceeded);
            }
            let name = request.name();
            let call = dispatch(&inner, &addr, request, core_deadline, timeout);
            let response = match deadline {
                // Enforced here as well as by the server: a peer that never
                // answers (or a stuck dial) must not hold the caller.
                Some(at) => {
                    match future::select(std::pin::pin!(call), async_io::Timer::at(at)).await {
                        Either::Left((Err(RpcError::Canceled), _))
                            if std::time::Instant::now() >= at =>
                        {
                            // Servers enforcing `grpc-timeout` may answer
                            // CANCELLED just before our own timer fires.
                            // It is our deadline.
                            return Err(RpcError::DeadlineExceeded);
                        }
                        Either::Left((result, _)) => result?,
                        Either::Right(_) => return Err(RpcError::DeadlineExceeded),
                    }
                }
                None => call.await?,
            };
            if response.name() != name {
                return Err(RpcError::Mismatch);
            }
            Ok(response)
        }
        .boxed()
    }
}

async fn dispatch(
    inner: &Arc<Inner>,
    addr: &Arc<str>,
    request: Request,
    deadline: Instant,
    timeout: Option<Duration>,
) -> Result<Response, RpcError> {
    match request {
        Request::Kv(request) if inner.config.batch_commands && is_batchable(&request) => {
            let source = |conn| pooled_channel(inner, addr, conn);
            let call = inner.batch.call(&inner.rt, addr, source, &inner.config, request, deadline);
            call.await.map(Response::Kv)
        }
        Request::Kv(request) => {
            let channel = inner.pool.channel(addr, 0, &inner.config).await?;
            call_kv(channel, inner.config.limits(), request, timeout).await.map(Response::Kv)
        }
        Request::Pd(PdRequest::Tso(request)) => {
            let channel = inner.pool.channel(addr, 0, &inner.config).await?;
            let client = || pd_client(channel, inner.config.limits());
            inner
                .tso
                .round(&inner.rt, addr, client, *request)
                .await
                .map(|r| Response::Pd(PdResponse::Tso(Box::new(r))))
        }
        Request::Timestamp => Err(RpcError::NotNetwork("timestamp")),
        Request::Pd(request) => {
            let channel = inner.pool.channel(addr, 0, &inner.config).await?;
            call_pd(channel, inner.config.limits(), request, timeout).await.map(Response::Pd)
        }
    }
}

/// Batch connection `conn` of `addr` takes its HTTP/2 connection from the
/// pool each time it opens a stream or falls back to unary, so a broken
/// connection is redialled. The source holds the transport weakly: the
/// stream tasks must not keep a dropped transport alive.
fn pooled_channel(inner: &Arc<Inner>, addr: &Arc<str>, conn: usize) -> ChannelSource<Channel> {
    let (inner, addr) = (Arc::downgrade(inner), addr.clone());
    Arc::new(move || {
        let (inner, addr) = (inner.clone(), addr.clone());
        async move {
            let inner =
                inner.upgrade().ok_or_else(|| RpcError::Unavailable("transport dropped".into()))?;
            inner.pool.channel(&addr, conn, &inner.config).await
        }
        .boxed()
    })
}
