//! [`GrpcTransport`]: the driver's transport over hyper HTTP/2 and the
//! tonic stubs.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture, Either, FutureExt};
use tikv_core::rpc::{PdRequest, PdResponse, Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_driver::Transport;

use crate::clock;
use crate::conn::{Pool, remaining};
use tikv_grpc::MessageLimits;
use tikv_grpc::dispatch::{call_kv, call_pd, pd_client};
use tikv_grpc::tso;

/// Connection settings of a [`GrpcTransport`]. The defaults are client-go's
/// (`internal/client/conn_pool.go`, `config/client.go`), as in `tikv-tokio`.
///
/// ```
/// use std::time::Duration;
/// use tikv_async_std::TransportConfig;
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
    /// Limit on establishing a connection (name lookup, TCP connect and
    /// HTTP/2 handshake). Default 5s.
    pub connect_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings, sent also while idle; zero
    /// disables them. Default 10s.
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

    /// Sets the HTTP/2 initial stream and connection windows.
    pub fn window_sizes(mut self, stream: u32, connection: u32) -> Self {
        self.initial_stream_window_size = stream;
        self.initial_connection_window_size = connection;
        self
    }
}

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
/// PD address, one round at a time; a stream that fails is dropped, the
/// failed round reports `RpcError::Unavailable`, and the next round opens a
/// new one.
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
}

impl GrpcTransport {
    /// A transport with no connection yet.
    pub fn new(config: TransportConfig) -> GrpcTransport {
        clock::init();
        GrpcTransport {
            inner: Arc::new(Inner { config, pool: Pool::default(), tso: tso::Streams::default() }),
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
        let addr = match target {
            Target::Pd { addr } | Target::Store { addr, .. } => addr.clone(),
        };
        async move {
            let deadline = clock::to_std(deadline);
            let timeout = deadline.map(remaining);
            if timeout == Some(Duration::ZERO) {
                return Err(RpcError::DeadlineExceeded);
            }
            let name = request.name();
            let call = dispatch(&inner, &addr, request, timeout);
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
    inner: &Inner,
    addr: &Arc<str>,
    request: Request,
    timeout: Option<Duration>,
) -> Result<Response, RpcError> {
    let channel = inner.pool.channel(addr, &inner.config).await?;
    match request {
        Request::Kv(request) => {
            call_kv(channel, inner.config.limits(), request, timeout).await.map(Response::Kv)
        }
        Request::Pd(PdRequest::Tso(request)) => {
            let client = || pd_client(channel, inner.config.limits());
            inner
                .tso
                .round(addr, client, *request)
                .await
                .map(|r| Response::Pd(PdResponse::Tso(Box::new(r))))
        }
        Request::Pd(request) => {
            call_pd(channel, inner.config.limits(), request, timeout).await.map(Response::Pd)
        }
    }
}
