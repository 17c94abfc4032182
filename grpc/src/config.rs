//! Transport settings shared by the runtime crates.

use std::time::Duration;

use tikv_core::rpc::batch::BatchPolicy;

use crate::MessageLimits;

/// Connection settings of a runtime crate's `GrpcTransport` (`tikv-tokio`
/// and `tikv-async-std` take the same). The defaults are client-go's
/// (`internal/client/conn_pool.go`, `config/client.go`).
///
/// ```
/// use std::time::Duration;
/// use tikv_grpc::TransportConfig;
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
    /// Send TiKV requests that have a batch form over one long-lived
    /// `BatchCommands` stream per store, as client-go does; the others,
    /// and all requests while a stream cannot be established, go unary.
    /// Default on; off sends every request unary.
    pub batch_commands: bool,
    /// How long the stream's collector waits for more requests before
    /// sending a short batch. Default [`BatchPolicy::Standard`], client-go's.
    pub batch_policy: BatchPolicy,
    /// `BatchCommands` streams per store, each on its own HTTP/2 connection;
    /// the store's one collector hands whole messages to them in turn.
    /// Default 4 (client-go's
    /// `GrpcConnectionCount`): TiKV serves each connection on one of its
    /// gRPC threads, so several spread a busy client over them.
    pub batch_streams_per_store: usize,
    /// A store's `BatchCommands` streams are closed after this long without
    /// a request queued or in flight, and reopened by the next request
    /// (client-go recycles a `batchConn` idle for `idleTimeout`, 3 min), so
    /// a client does not hold streams to stores it no longer talks to.
    /// Default 3 min.
    pub batch_idle_timeout: Duration,
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
            batch_streams_per_store: 4,
            batch_idle_timeout: Duration::from_secs(180),
        }
    }
}

impl TransportConfig {
    /// The message size limits for the generated clients.
    pub fn limits(&self) -> MessageLimits {
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

    /// Sets [`TransportConfig::batch_streams_per_store`] (at least 1).
    pub fn batch_streams_per_store(mut self, n: usize) -> Self {
        self.batch_streams_per_store = n.max(1);
        self
    }

    /// Sets [`TransportConfig::batch_idle_timeout`].
    pub fn batch_idle_timeout(mut self, timeout: Duration) -> Self {
        self.batch_idle_timeout = timeout;
        self
    }

    /// Sets the HTTP/2 initial stream and connection windows.
    pub fn window_sizes(mut self, stream: u32, connection: u32) -> Self {
        self.initial_stream_window_size = stream;
        self.initial_connection_window_size = connection;
        self
    }
}
