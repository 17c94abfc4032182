//! [`GrpcTransport`]: the driver's transport over tonic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tikv_core::rpc::batch::{BatchPolicy, is_batchable};
use tikv_core::rpc::{PdRequest, PdResponse, Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_driver::Transport;
use tonic::transport::{Channel, Endpoint};

use crate::batch::BatchConns;
use crate::clock;
use tikv_grpc::MessageLimits;
use tikv_grpc::dispatch::{call_kv, call_pd, pd_client};
use tikv_grpc::tso;

/// Connection settings of a [`GrpcTransport`]. The defaults are client-go's
/// (`internal/client/conn_pool.go`, `config/client.go`).
///
/// ```
/// use std::time::Duration;
/// use tikv_tokio::TransportConfig;
///
/// let config = TransportConfig::default()
///     .connect_timeout(Duration::from_secs(2))
///     .keepalive(Duration::from_secs(20), Duration::from_secs(5));
/// assert_eq!(config.connect_timeout, Duration::from_secs(2));
/// assert_eq!(config.keepalive_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Limit on establishing a connection (TCP and HTTP/2 handshake). Default 5s.
    pub connect_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings, sent also while idle. Default 10s.
    pub keepalive_interval: Duration,
    /// How long to wait for a ping's answer before the connection is
    /// declared dead. Default 3s.
    pub keepalive_timeout: Duration,
    /// Disable Nagle's algorithm: requests are small and latency-bound. Default on.
    pub tcp_nodelay: bool,
    /// Largest response accepted. Default unlimited, as client-go.
    pub max_decoding_message_size: usize,
    /// Largest request sent. Default unlimited (the server enforces its own).
    pub max_encoding_message_size: usize,
    /// HTTP/2 initial stream window. Default 128 MiB (client-go's
    /// `DefGrpcInitialWindowSize`).
    pub initial_stream_window_size: u32,
    /// HTTP/2 initial connection window. Default 128 MiB.
    pub initial_connection_window_size: u32,
    /// Send TiKV requests that have a batch form over one long-lived
    /// `BatchCommands` stream per store, as client-go does; the others,
    /// and all requests while a stream cannot be established, go unary.
    /// Default on; off sends every request unary.
    pub batch_commands: bool,
    /// How long the stream's collector waits for more requests before
    /// sending a short batch. Default [`BatchPolicy::Standard`], client-go's.
    pub batch_policy: BatchPolicy,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(3),
            tcp_nodelay: true,
            max_decoding_message_size: usize::MAX,
            max_encoding_message_size: usize::MAX,
            initial_stream_window_size: 128 << 20,
            initial_connection_window_size: 128 << 20,
            batch_commands: true,
            batch_policy: BatchPolicy::Standard,
        }
    }
}

impl TransportConfig {
    /// The message size limits for the generated clients.
    pub(crate) fn limits(&self) -> MessageLimits {
        MessageLimits {
            decoding: self.max_decoding_message_size,
            encoding: self.max_encoding_message_size,
        }
    }

    /// Sets [`TransportConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the keepalive ping interval and its answer timeout.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Sets [`TransportConfig::tcp_nodelay`].
    pub fn tcp_nodelay(mut self, enabled: bool) -> Self {
        self.tcp_nodelay = enabled;
        self
    }

    /// Sets the largest response and request message sizes.
    pub fn max_message_sizes(mut self, decoding: usize, encoding: usize) -> Self {
        self.max_decoding_message_size = decoding;
        self.max_encoding_message_size = encoding;
        self
    }

    /// Sets [`TransportConfig::batch_commands`].
    pub fn batch_commands(mut self, enabled: bool) -> Self {
        self.batch_commands = enabled;
        self
    }

    /// Sets [`TransportConfig::batch_policy`].
    pub fn batch_policy(mut self, policy: BatchPolicy) -> Self {
        self.batch_policy = policy;
        self
    }

    /// Sets the HTTP/2 initial stream and connection windows.
    pub fn window_sizes(mut self, stream: u32, connection: u32) -> Self {
        self.initial_stream_window_size = stream;
        self.initial_connection_window_size = connection;
        self
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, RpcError> {
        let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| RpcError::Unavailable(format!("invalid address {addr:?}: {e}")))?;
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            // client-go's PermitWithoutStream: detect a dead store before
            // the next request has to.
            .keep_alive_while_idle(true)
            .tcp_nodelay(self.tcp_nodelay)
            .initial_stream_window_size(self.initial_stream_window_size)
            .initial_connection_window_size(self.initial_connection_window_size))
    }
}

/// `tikv_driver::Transport` over gRPC: TiKV's `Tikv` service and PD's `PD`
/// and `Keyspace` services.
///
/// One HTTP/2 channel per address, created on first use and cached (a
/// channel multiplexes concurrent calls and reconnects by itself). Each
/// call's deadline is sent as `grpc-timeout` and enforced locally. PD's TSO
/// requests go over one long-lived bidirectional stream per PD address, one
/// round at a time; a stream that fails is dropped, the failed round reports
/// `RpcError::Unavailable`, and the next round opens a new one.
///
/// With [`TransportConfig::batch_commands`] (the default), TiKV requests
/// that have a batch form ride one `BatchCommands` stream per store,
/// batched by `tikv_core::rpc::batch::BatchCollector` (client-go's policy);
/// a broken stream fails its in-flight requests with a retryable
/// `RpcError::Unavailable` and is re-created after a backoff, during which
/// requests go unary.
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
    channels: Mutex<HashMap<Arc<str>, Channel>>,
    pub(crate) tso: tso::Streams,
    batch: BatchConns,
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
    /// The cached channel for `addr`, created lazily: `connect_lazy` dials on
    /// the first request, so the lock is never held across I/O.
    fn channel(&self, addr: &Arc<str>) -> Result<Channel, RpcError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self.config.endpoint(addr)?.connect_lazy();
        channels.insert(addr.clone(), channel.clone());
        Ok(channel)
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
        let addr = match target {
            Target::Pd { addr } | Target::Store { addr, .. } => addr.clone(),
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
            let call = dispatch(&inner, &addr, request, core_deadline, timeout);
            let response = match deadline {
                // Enforced here as well as by the server: a peer that never
                // answers (or a stuck connect) must not hold the caller.
                Some(at) => match tokio::time::timeout_at(at, call).await {
                    Ok(Err(RpcError::Canceled)) if tokio::time::Instant::now() >= at => {
                        // tonic servers enforce `grpc-timeout` by answering
                        // CANCELLED ("Timeout expired"); that answer can beat
                        // our own timer by a hair. It is our deadline.
                        return Err(RpcError::DeadlineExceeded);
                    }
                    Ok(result) => result?,
                    Err(_elapsed) => return Err(RpcError::DeadlineExceeded),
                },
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
        Request::Kv(request) if inner.config.batch_commands && is_batchable(&request) => inner
            .batch
            .call(addr, || inner.channel(addr), &inner.config, request, deadline)
            .await
            .map(Response::Kv),
        Request::Kv(request) => {
            let channel = inner.channel(addr)?;
            Box::pin(call_kv(channel, inner.config.limits(), request, timeout))
                .await
                .map(Response::Kv)
        }
        Request::Pd(PdRequest::Tso(request)) => {
            let channel = inner.channel(addr)?;
            let client = || pd_client(channel, inner.config.limits());
            Box::pin(inner.tso.round(addr, client, *request))
                .await
                .map(|r| Response::Pd(PdResponse::Tso(Box::new(r))))
        }
        Request::Pd(request) => {
            let channel = inner.channel(addr)?;
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
