//! [`TokioConnector`]: tonic's channels, tokio's timer and spawner for the
//! shared [`tikv_grpc::GrpcTransport`].

use std::collections::HashMap;
use std::future::{self, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tikv_core::config::TlsConfig;
use tikv_core::rpc::RpcError;
use tikv_core::time::Instant;
use tikv_grpc::{ConnId, Connector, TransportConfig, tls};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::{TokioRuntime, clock};

/// `tikv_driver::Transport` over gRPC on tokio: [`tikv_grpc::GrpcTransport`]
/// with tonic's HTTP/2 channels (see there for paths, deadlines and error
/// rules). Calls must run inside a tokio runtime. The transport's stream
/// tasks and channel workers live on the runtime current when it was built
/// (a client's: the one it connected on), or, when built outside a runtime,
/// on the runtime of the call that starts them.
///
/// Instants count from an origin shared with every
/// [`TokioRuntime`](crate::TokioRuntime) of the process, so deadlines made
/// by one are understood by the other.
pub type GrpcTransport = tikv_grpc::GrpcTransport<TokioConnector>;

/// The tokio side of [`GrpcTransport`]: one tonic channel per address and
/// connection number, created on first use and cached (a channel
/// multiplexes concurrent calls and reconnects by itself), client-go's dial
/// and keepalive settings, tokio's timer and spawner.
#[derive(Debug)]
pub struct TokioConnector {
    channels: Mutex<HashMap<ConnId, Channel>>,
    rt: TokioRuntime,
}

impl Default for TokioConnector {
    fn default() -> Self {
        TokioConnector::on(TokioRuntime::new())
    }
}

impl TokioConnector {
    /// A connector whose tasks and channels live where `rt` spawns.
    pub(crate) fn on(rt: TokioRuntime) -> TokioConnector {
        TokioConnector { channels: Mutex::new(HashMap::new()), rt }
    }

    /// The cached channel, created lazily: `connect_lazy` dials on the first
    /// request, so the lock is never held across I/O.
    fn cached(
        &self,
        addr: &Arc<str>,
        conn: usize,
        config: &TransportConfig,
    ) -> Result<Channel, RpcError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (addr.clone(), conn);
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        tls::check_scheme(addr, config)?;
        // tonic spawns the channel's worker onto the current runtime.
        let _on_runtime = self.rt.enter();
        let channel = match &config.tls {
            Some(tls) => {
                endpoint(config, &https(addr))?.connect_with_connector_lazy(TlsConnector {
                    tls: tls.clone(),
                    nodelay: config.tcp_nodelay,
                })
            }
            None => endpoint(config, addr)?.connect_lazy(),
        };
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}

impl Connector for TokioConnector {
    type Channel = Channel;
    type Runtime = TokioRuntime;
    type Sleep = tokio::time::Sleep;

    fn runtime(&self) -> &TokioRuntime {
        &self.rt
    }

    fn sleep_until(&self, deadline: Instant) -> tokio::time::Sleep {
        tokio::time::sleep_until(clock::to_tokio_or_far(deadline))
    }

    fn channel(
        &self,
        addr: &Arc<str>,
        conn: usize,
        config: &TransportConfig,
    ) -> impl Future<Output = Result<Channel, RpcError>> + Send {
        future::ready(self.cached(addr, conn, config))
    }
}

/// tonic's endpoint for `addr` with `config`'s settings.
fn endpoint(config: &TransportConfig, addr: &str) -> Result<Endpoint, RpcError> {
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| RpcError::Unavailable(format!("invalid address {addr:?}: {e}")))?;
    let endpoint = endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(config.tcp_nodelay)
        .initial_stream_window_size(config.initial_stream_window_size)
        .initial_connection_window_size(config.initial_connection_window_size);
    if config.keepalive_interval.is_zero() {
        // A zero interval turns pings off (`TransportConfig::keepalive_interval`).
        return Ok(endpoint);
    }
    Ok(endpoint
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        // client-go's PermitWithoutStream: detect a dead store before
        // the next request has to.
        .keep_alive_while_idle(true))
}

/// `addr` with the `https` scheme, which the requests then carry.
fn https(addr: &str) -> String {
    let bare = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    format!("https://{bare}")
}

/// Opens a TCP connection and a TLS session over it (tokio-rustls) for
/// tonic's channel, which asks again for every new connection: the
/// certificates are read each time, so files rotated on disk take effect
/// on the next connection (client-go reloads them on each handshake).
#[derive(Clone, Debug)]
struct TlsConnector {
    tls: TlsConfig,
    nodelay: bool,
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, nodelay) = (self.tls.clone(), self.nodelay);
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let port = uri.port_u16().unwrap_or(443);
            let client = tls::client_config(&tls)?;
            let name = tls::server_name(&tls, host)?;
            let bare_host = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((bare_host, port)).await?;
            tcp.set_nodelay(nodelay)?;
            let connector = tokio_rustls::TlsConnector::from(client.config.clone());
            let stream = connector.connect(name, tcp).await?;
            client.check_handshake()?;
            Ok(TokioIo::new(stream))
        })
    }
}
