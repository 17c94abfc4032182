//! [`TokioConnector`]: tonic's channels, tokio's timer and spawner for the
//! shared [`tikv_grpc::GrpcTransport`].

use std::collections::HashMap;
use std::future::{self, Future};
use std::sync::{Arc, Mutex, PoisonError};

use tikv_core::rpc::RpcError;
use tikv_core::time::Instant;
use tikv_grpc::{ConnId, Connector, TransportConfig};
use tonic::transport::{Channel, Endpoint};

use crate::{TokioRuntime, clock};

/// `tikv_driver::Transport` over gRPC on tokio: [`tikv_grpc::GrpcTransport`]
/// with tonic's HTTP/2 channels (see there for paths, deadlines and error
/// rules). Calls must run inside a tokio runtime; the transport's stream
/// tasks are spawned onto the runtime of the call that starts them.
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
        TokioConnector { channels: Mutex::new(HashMap::new()), rt: TokioRuntime::current() }
    }
}

impl TokioConnector {
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
        let channel = endpoint(config, addr)?.connect_lazy();
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
