//! HTTP/2 connections: dialling, the per-address pool, and the tower service
//! the tonic stubs call through.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::future::{self, Either};
use http::uri::{Authority, Scheme, Uri};
use hyper::client::conn::http2::{Builder, SendRequest};
use tikv_core::rpc::RpcError;
use tikv_grpc::{ConnId, tls};
use tonic::body::Body;

use crate::rt::{AsyncIoTimer, AsyncStdExecutor, FuturesIo};
use tikv_grpc::TransportConfig;

/// One HTTP/2 connection as a `tower_service::Service`, which is what the
/// tonic stubs (`TikvClient<S>`, `PdClient<S>`, ...) accept. Cloning shares
/// the connection: HTTP/2 multiplexes concurrent calls on it.
#[derive(Clone, Debug)]
pub struct Channel {
    send: SendRequest<Body>,
    authority: Authority,
    scheme: Scheme,
}

impl Channel {
    /// Whether the connection is gone (its task ended: peer closed or reset
    /// it, a protocol error, a keepalive timeout).
    fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

/// The future of one request on a [`Channel`].
pub(crate) type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>,
>;

impl tower_service::Service<http::Request<Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        // HTTP/2 has no per-connection backpressure at this level: hyper's
        // own `poll_ready` only reports a closed connection. Reporting that
        // from `call` instead keeps its cause: the stubs turn a readiness
        // error into a bare `Unknown` status, but a call error into a status
        // whose source says what broke.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> ResponseFuture {
        // The stubs send an origin-less path; HTTP/2 needs `:scheme` and
        // `:authority` as well (servers reject requests without them).
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        Box::pin(self.send.send_request(request))
    }
}

/// A parsed target address: `host:port`, `http://host:port` or
/// `https://host:port`.
#[derive(Debug)]
struct Address {
    authority: Authority,
    host: String,
    port: u16,
}

fn invalid(addr: &str, why: impl std::fmt::Display) -> RpcError {
    RpcError::Unavailable(format!("invalid address {addr:?}: {why}"))
}

impl Address {
    fn parse(addr: &str) -> Result<Address, RpcError> {
        let text = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
        let uri: Uri = text.parse().map_err(|e| invalid(addr, e))?;
        match uri.scheme_str() {
            // Whether an `https` address gets TLS is `dial`'s decision.
            Some("http" | "https") => {}
            other => return Err(invalid(addr, format!("unsupported scheme {other:?}"))),
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid(addr, "no host"))?;
        let port = authority.port_u16().ok_or_else(|| invalid(addr, "no port"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Address { authority, host, port })
    }

    /// The socket addresses to try, in order. IP literals resolve without
    /// I/O; names go through async-std's resolver (a blocking lookup on its
    /// thread pool).
    async fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addrs =
            async_std::net::ToSocketAddrs::to_socket_addrs(&(self.host.as_str(), self.port))
                .await?;
        Ok(addrs.collect())
    }
}

/// Opens a TCP connection to `addr`, with TLS configured a TLS session over
/// it (the certificates read now, so files rotated on disk take effect on
/// the next connection, as client-go reloads them on each handshake),
/// performs the HTTP/2 handshake and spawns the connection's task, all
/// within the configured connect timeout.
async fn dial(addr: &str, config: &TransportConfig) -> Result<Channel, RpcError> {
    tls::check_scheme(addr, config)?;
    let address = Address::parse(addr)?;
    let connect = async {
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
        for socket_addr in address.resolve().await? {
            match async_io::Async::<TcpStream>::connect(socket_addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    };
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        RpcError::Unavailable(format!("{what} {addr}: {e}"))
    };
    let handshake = async {
        let stream = connect.await.map_err(|e| unavailable("connect to", &e))?;
        stream
            .get_ref()
            .set_nodelay(config.tcp_nodelay)
            .map_err(|e| unavailable("set TCP_NODELAY on", &e))?;
        let Some(tls_config) = &config.tls else {
            return http2(stream, Scheme::HTTP, &address, config)
                .await
                .map_err(|e| unavailable("HTTP/2 handshake with", &e));
        };
        let client = tls::client_config(tls_config)?;
        let name = tls::server_name(tls_config, &address.host)?;
        let connector = futures_rustls::TlsConnector::from(client.config.clone());
        let stream =
            connector.connect(name, stream).await.map_err(|e| match tls::tls_failure(&e) {
                Some(why) => RpcError::Tls(format!("handshake with {addr}: {why}")),
                None => unavailable("TLS handshake with", &e),
            })?;
        client.check_handshake()?;
        http2(stream, Scheme::HTTPS, &address, config)
            .await
            .map_err(|e| unavailable("HTTP/2 handshake with", &e))
    };
    let timer = async_io::Timer::after(config.connect_timeout);
    match future::select(std::pin::pin!(handshake), timer).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => Err(RpcError::Unavailable(format!(
            "connect to {addr}: timed out after {:?}",
            config.connect_timeout
        ))),
    }
}

/// The HTTP/2 client handshake over `io`; spawns the connection's task.
async fn http2<T>(
    io: T,
    scheme: Scheme,
    address: &Address,
    config: &TransportConfig,
) -> Result<Channel, hyper::Error>
where
    T: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(AsyncStdExecutor);
    builder
        .timer(AsyncIoTimer)
        .initial_stream_window_size(config.initial_stream_window_size)
        .initial_connection_window_size(config.initial_connection_window_size);
    if !config.keepalive_interval.is_zero() {
        builder
            .keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_timeout)
            // client-go's PermitWithoutStream: detect a dead store
            // before the next request has to.
            .keep_alive_while_idle(true);
    }
    let (send, connection) = builder.handshake::<_, Body>(FuturesIo::new(io)).await?;
    // The task owns the socket and ends with the connection: when the
    // peer closes it, on a protocol error or keepalive timeout, or once
    // every `SendRequest` clone is dropped (hyper then closes it). Its
    // end is what `SendRequest::is_closed` reports.
    drop(async_std::task::spawn(async move {
        let _ = connection.await;
    }));
    Ok(Channel { send, authority: address.authority.clone(), scheme })
}

/// The connection of one address, and the lock that makes concurrent
/// callers share one dial instead of racing to open several.
#[derive(Debug, Default)]
struct Slot {
    live: Mutex<Option<Channel>>,
    dialing: futures::lock::Mutex<()>,
}

impl Slot {
    /// The open connection, if any; a closed one is dropped so the next
    /// caller redials.
    fn live(&self) -> Option<Channel> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match &*live {
            Some(channel) if !channel.is_closed() => Some(channel.clone()),
            Some(_) => {
                *live = None;
                None
            }
            None => None,
        }
    }
}

/// HTTP/2 connections by address and connection number (0 serves unary
/// calls and the first batch stream, the others a batch stream each), each
/// opened on first use and reopened after it breaks.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    slots: Mutex<HashMap<ConnId, Arc<Slot>>>,
}

impl Pool {
    fn slot(&self, addr: &Arc<str>, conn: usize) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry((addr.clone(), conn)).or_default().clone()
    }

    /// Connection `conn` to `addr`, dialled if there is none or it broke.
    /// No lock is held across I/O but the per-connection dial lock, which
    /// only callers of the same connection wait on.
    pub(crate) async fn channel(
        &self,
        addr: &Arc<str>,
        conn: usize,
        config: &TransportConfig,
    ) -> Result<Channel, RpcError> {
        let slot = self.slot(addr, conn);
        if let Some(channel) = slot.live() {
            return Ok(channel);
        }
        let _dialing = slot.dialing.lock().await;
        // Whoever held the lock before may have dialled already.
        if let Some(channel) = slot.live() {
            return Ok(channel);
        }
        let channel = dial(addr, config).await?;
        *slot.live.lock().unwrap_or_else(PoisonError::into_inner) = Some(channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_scheme() {
        let a = Address::parse("127.0.0.1:2379").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 2379));
        let b = Address::parse("http://pd-0.example:2379").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("pd-0.example", 2379));
        assert_eq!(b.authority.as_str(), "pd-0.example:2379");
        let c = Address::parse("[::1]:20160").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 20160));
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in ["not a uri", "127.0.0.1", "ftp://127.0.0.1:2379", "http://:80/x y"] {
            match Address::parse(bad) {
                Err(RpcError::Unavailable(m)) => assert!(m.contains("invalid address"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn names_resolve() {
        let a = Address::parse("localhost:1").unwrap();
        let addrs = async_std::task::block_on(a.resolve()).unwrap();
        assert!(addrs.iter().all(|s| s.port() == 1 && s.ip().is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }
}
