//! The tonic glue both runtime crates share, written once.
//!
//! `tikv-tokio` (tonic's own channel) and `tikv-async-std` (hyper HTTP/2 on
//! async-io) differ only in how they open an HTTP/2 connection. Everything
//! above that is here, generic over the channel ([`GrpcChannel`]):
//! - [`dispatch`]: each `KvRequest`/`PdRequest` variant to its generated
//!   stub method (from `for_each_kv_rpc!` / `for_each_pd_rpc!`, so a new RPC
//!   is listed in one place);
//! - [`status`]: gRPC statuses to the core's `RpcError`;
//! - [`tso`]: PD's TSO stream, one per PD address;
//! - [`batch`]: `BatchCommands` streams, one per store, around the core's
//!   batch collector;
//! - [`TransportConfig`]: the connection settings both runtimes take.

#![forbid(unsafe_code)]

pub mod batch;
mod batch_codec;
mod config;
pub mod dispatch;
pub mod status;
pub mod tso;

pub use config::TransportConfig;

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
