//! [`GrpcTransport`]: the driver's transport over tonic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tikv_core::rpc::batch::is_batchable;
use tikv_core::rpc::{PdRequest, PdResponse, Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_driver::Transport;
use tonic::transport::{Channel, Endpoint};

use crate::clock;
use tikv_grpc::ConnId;
use tikv_grpc::batch::{BatchConns, ChannelSource};
use tikv_grpc::dispatch::{call_kv, call_pd, pd_client};
use tikv_grpc::tso;

use crate::TokioRuntime;

pub use tikv_grpc::TransportConfig;

/// tonic's endpoint for `addr` with `config`'s settings.
fn endpoint(config: &TransportConfig, addr: &str) -> Result<Endpoint, RpcError> {
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| RpcError::Unavailable(format!("invalid address {addr:?}: {e}")))?;
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        // client-go's PermitWithoutStream: detect a dead store before
        // the next request has to.
        .keep_alive_while_idle(true)
        .tcp_nodelay(config.tcp_nodelay)
        .initial_stream_window_size(config.initial_stream_window_size)
        .initial_connection_window_size(config.initial_connection_window_size))
}

/// `tikv_driver::Transport` over gRPC: TiKV's `Tikv` service and PD's `PD`
/// and `Keyspace` services.
///
/// One HTTP/2 channel per address, created on first use and cached (a
/// channel multiplexes concurrent calls and reconnects by itself). Each
/// unary call's deadline is sent as `grpc-timeout` and enforced locally by a
/// timer; a `BatchCommands` request's by the batch collector. PD's TSO
/// requests go over one long-lived bidirectional stream per PD address,
/// several rounds in flight, answers matched in order (`tikv_grpc::tso`); a
/// stream that fails is dropped, its rounds in flight report
/// `RpcError::Unavailable`, and the next round opens a new one.
///
/// With [`TransportConfig::batch_commands`] (the default), TiKV requests
/// that have a batch form ride `BatchCommands` streams instead, one on each
/// of [`TransportConfig::batch_streams_per_store`] connections per store
/// (the first shared with unary calls), batched by one
/// `tikv_core::rpc::batch::BatchCollector` per store (client-go's policy),
/// which hands whole messages to the streams in turn (`tikv_grpc::batch`);
/// a broken stream fails its in-flight requests with a retryable
/// `RpcError::Unavailable` and is re-created after a backoff, while the
/// other streams carry the traffic (with every stream down, requests go
/// unary).
///
/// Cloning is cheap and shares the channels. Calls must run inside a tokio
/// runtime.
#[derive(Clone, Debug)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    config: TransportConfig,
    /// By address and connection number: 0 serves unary calls and the
    /// first batch stream, the others one batch stream each.
    channels: Mutex<HashMap<ConnId, Channel>>,
    pub(crate) tso: tso::Streams,
    batch: BatchConns,
    /// Spawns the batch streams' tasks on the caller's runtime.
    rt: TokioRuntime,
}

impl GrpcTransport {
    /// A transport with no connection yet.
    pub fn new(config: TransportConfig) -> GrpcTransport {
        clock::init();
        GrpcTransport {
            inner: Arc::new(Inner {
                config,
                channels: Mutex::new(HashMap::new()),
                tso: tso::Streams::default(),
                batch: BatchConns::default(),
                rt: TokioRuntime::current(),
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

impl Inner {
    /// The cached channel `conn` of `addr` (each its own HTTP/2
    /// connection), created lazily: `connect_lazy` dials on the first
    /// request, so the lock is never held across I/O.
    fn channel(&self, addr: &Arc<str>, conn: usize) -> Result<Channel, RpcError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (addr.clone(), conn);
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let channel = endpoint(&self.config, addr)?.connect_lazy();
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    /// The channel source of batch connection `conn` of `addr`. tonic's
    /// channel reconnects by itself, so the streams reuse it.
    fn stream_channel(&self, addr: &Arc<str>, conn: usize) -> ChannelSource<Channel> {
        let channel = self.channel(addr, conn);
        Arc::new(move || {
            let channel = channel.clone();
            async move { channel }.boxed()
        })
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
            let deadline = clock::to_tokio(deadline);
            let timeout =
                deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            if timeout == Some(Duration::ZERO) {
                return Err(RpcError::DeadlineExceeded);
            }
            let name = request.name();
            // A request for the stream needs no timer of its own: the batch
            // collector fails it at its deadline (the stream's driver task
            // keeps one timer for all of its requests), and `execute`
            // enforces the deadline too. One timer per call, not two
            // (issue #7's profile).
            let stream_enforced = inner.config.batch_commands
                && matches!(&request, Request::Kv(r) if is_batchable(r));
            let call = dispatch(&inner, &addr, request, core_deadline, timeout);
            let result = match deadline.filter(|_| !stream_enforced) {
                // Enforced here as well as by the server: a peer that never
                // answers (or a stuck connect) must not hold the caller.
                Some(at) => match tokio::time::timeout_at(at, call).await {
                    Ok(result) => result,
                    Err(_elapsed) => return Err(RpcError::DeadlineExceeded),
                },
                None => call.await,
            };
            let response = match result {
                Ok(response) => response,
                // tonic enforces `grpc-timeout` as well: its client answers
                // "Timeout expired", a tonic server CANCELLED, and either can
                // beat our own timer (or the collector's) by a hair. A
                // failure once the deadline has passed is the deadline's.
                Err(_) if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) => {
                    return Err(RpcError::DeadlineExceeded);
                }
                Err(e) => return Err(e),
            };
            if response.name() != name {
                return Err(RpcError::Mismatch);
            }
            Ok(response)
        }
        .boxed()
    }
}

/// Sends `request` on the path its kind takes. The stream path is the hot
/// one: it looks the channel up only to start a store's stream, and the
/// other paths' futures (a tonic unary call is kilobytes of state) are
/// boxed so they do not inflate every call's future, which is moved into
/// its box on each call.
async fn dispatch(
    inner: &Inner,
    addr: &Arc<str>,
    request: Request,
    deadline: Instant,
    timeout: Option<Duration>,
) -> Result<Response, RpcError> {
    match request {
        Request::Kv(request) if inner.config.batch_commands && is_batchable(&request) => {
            // The channel is looked up only to start a connection's stream.
            let source = |conn| inner.stream_channel(addr, conn);
            let call = inner.batch.call(&inner.rt, addr, source, &inner.config, request, deadline);
            call.await.map(Response::Kv)
        }
        Request::Kv(request) => {
            let channel = inner.channel(addr, 0)?;
            Box::pin(call_kv(channel, inner.config.limits(), request, timeout))
                .await
                .map(Response::Kv)
        }
        Request::Pd(PdRequest::Tso(request)) => {
            let channel = inner.channel(addr, 0)?;
            let client = || pd_client(channel, inner.config.limits());
            Box::pin(inner.tso.round(&inner.rt, addr, client, *request))
                .await
                .map(|r| Response::Pd(PdResponse::Tso(Box::new(r))))
        }
        Request::Timestamp => Err(RpcError::NotNetwork("timestamp")),
        Request::Pd(request) => {
            let channel = inner.channel(addr, 0)?;
            Box::pin(call_pd(channel, inner.config.limits(), request, timeout))
                .await
                .map(Response::Pd)
        }
    }
}

#[cfg(test)]
mod tests {
    use tikv_core::rpc::KvRequest;

    use super::*;

    /// Every call moves its future into a box: the stream path's future
    /// must not carry the unary paths' state (it was 6.4 KB with them).
    #[test]
    fn a_call_future_stays_small() {
        let transport = GrpcTransport::default();
        let target = Target::Store { store_id: 1, addr: "127.0.0.1:1".into() };
        let request = Request::Kv(KvRequest::RawGet(Default::default()));
        let call = transport.call(&target, request, Instant::MAX);
        let size = std::mem::size_of_val(&*call);
        assert!(size <= 1024, "GrpcTransport::call future: {size} bytes");
    }
}
