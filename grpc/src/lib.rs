//! The gRPC transport of the TiKV client, written once for every runtime.
//!
//! `tikv-tokio` (tonic's own channel) and `tikv-async-std` (hyper HTTP/2 on
//! async-io) differ only in how they open an HTTP/2 connection, spawn a
//! task, arm a timer and read the clock. That is a [`Connector`], about a
//! hundred lines in each runtime crate (the idea of quinn's `Runtime`
//! trait, with the timer as an associated type so a call's timer is not a
//! separate allocation). Everything above it is here:
//! - [`GrpcTransport`]: `tikv_driver::Transport` over a connector: which
//!   path a request takes (unary, a `BatchCommands` stream, the TSO stream),
//!   its deadline (sent as `grpc-timeout`, enforced locally by one timer)
//!   and the rules that turn outcomes into `RpcError`s;
//! - [`dispatch`]: each `KvRequest`/`PdRequest` variant to its generated
//!   stub method (from `for_each_kv_rpc!` / `for_each_pd_rpc!`, so a new RPC
//!   is listed in one place);
//! - [`status`]: gRPC statuses to the core's `RpcError`;
//! - [`tso`]: PD's TSO stream, one per PD address;
//! - [`batch`]: `BatchCommands` streams, one collector per store, around the
//!   core's batch collector;
//! - [`tls`]: the client's TLS configuration and TLS failures, for the
//!   runtimes' handshakes.
//!
//! The settings are `tikv_core::config::TransportConfig` (re-exported here
//! as [`TransportConfig`]), carried by the client's `Config`, so every one
//! of them reaches the transport through `Platform::build`.

#![forbid(unsafe_code)]

pub mod batch;
mod batch_codec;
pub mod dispatch;
pub mod status;
pub mod tls;
mod transport;
pub mod tso;

pub use tikv_core::config::{PemSource, TlsConfig, TransportConfig};
pub use transport::{Connector, GrpcTransport};

use tonic::codegen::{Body, Bytes, StdError};

/// An HTTP/2 channel the generated tonic clients can run over: what the
/// stubs require of their `T`, named once.
pub trait GrpcChannel:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> GrpcChannel for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// One HTTP/2 connection of a transport: the peer's address and a
/// connection number (0 carries unary calls and the first `BatchCommands`
/// stream; see [`TransportConfig::batch_streams_per_store`]).
pub type ConnId = (std::sync::Arc<str>, usize);

/// Message size limits for the generated clients (client-go sets an
/// unlimited receive size).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MessageLimits {
    /// Largest message accepted from the server.
    pub decoding: usize,
    /// Largest message sent.
    pub encoding: usize,
}

impl MessageLimits {
    /// The limits `config` sets.
    pub fn of(config: &TransportConfig) -> MessageLimits {
        MessageLimits {
            decoding: config.max_decoding_message_size,
            encoding: config.max_encoding_message_size,
        }
    }
}
