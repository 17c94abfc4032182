//! Each request variant to its generated stub method.

use std::time::Duration;

use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse, RpcError};
use tikv_proto::health::health_client::HealthClient;
use tikv_proto::health::{HealthCheckRequest, HealthCheckResponse};
use tikv_proto::keyspacepb::keyspace_client::KeyspaceClient;
use tikv_proto::kvrpcpb;
use tikv_proto::pdpb::pd_client::PdClient;
use tikv_proto::tikvpb::tikv_client::TikvClient;

use crate::status::to_rpc_error;
use crate::{GrpcChannel, MessageLimits};

/// A tonic request carrying the caller's deadline as `grpc-timeout`, so the
/// server can stop working on a call nobody waits for.
pub fn grpc_request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// The gRPC metadata that asks a TiKV store to forward a request to the
/// store at its value (TiKV's `FORWARD_METADATA_KEY`, client-go's
/// `ForwardMetadataKey`).
pub const FORWARD_METADATA_KEY: &str = "tikv-forwarded-host";

/// Adds `tikv-forwarded-host: host` to `request` when `host` is given: the
/// store it is sent to forwards it to the store at `host`. An address that
/// cannot be a metadata value (not visible ASCII) is refused as
/// [`RpcError::Unavailable`], as if the proxy could not reach it.
pub fn forward_to<T>(request: &mut tonic::Request<T>, host: Option<&str>) -> Result<(), RpcError> {
    if let Some(host) = host {
        let value = tonic::metadata::MetadataValue::try_from(host).map_err(|_| {
            RpcError::Unavailable(format!("forwarded host {host:?} is not a metadata value"))
        })?;
        request.metadata_mut().insert(FORWARD_METADATA_KEY, value);
    }
    Ok(())
}

/// A `PD` client over `channel` with `limits`.
pub fn pd_client<C: GrpcChannel>(channel: C, limits: MessageLimits) -> PdClient<C> {
    PdClient::new(channel)
        .max_decoding_message_size(limits.decoding)
        .max_encoding_message_size(limits.encoding)
}

macro_rules! kv_dispatch {
    ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        /// Sends one TiKV request with the matching `Tikv` method; with a
        /// `forwarded_host`, the store forwards it there ([`forward_to`]).
        pub async fn call_kv<C: GrpcChannel>(
            channel: C,
            limits: MessageLimits,
            request: KvRequest,
            timeout: Option<Duration>,
            forwarded_host: Option<&str>,
        ) -> Result<KvResponse, RpcError> {
            let mut client = TikvClient::new(channel)
                .max_decoding_message_size(limits.decoding)
                .max_encoding_message_size(limits.encoding);
            match request {
                $(
                    KvRequest::$variant(r) => {
                        let mut request = grpc_request(*r, timeout);
                        forward_to(&mut request, forwarded_host)?;
                        client
                            .$method(request)
                            .await
                            .map(|resp| KvResponse::$variant(Box::new(resp.into_inner())))
                            .map_err(to_rpc_error)
                    }
                )*
            }
        }
    };
}
tikv_core::for_each_kv_rpc!(kv_dispatch);

/// Sends TiKV's `GetStoreSafeTS` (a store-wide call, outside the region
/// requests of `for_each_kv_rpc!`).
pub async fn call_store_safe_ts<C: GrpcChannel>(
    channel: C,
    limits: MessageLimits,
    request: kvrpcpb::StoreSafeTsRequest,
    timeout: Option<Duration>,
) -> Result<kvrpcpb::StoreSafeTsResponse, RpcError> {
    TikvClient::new(channel)
        .max_decoding_message_size(limits.decoding)
        .max_encoding_message_size(limits.encoding)
        .get_store_safe_ts(grpc_request(request, timeout))
        .await
        .map(tonic::Response::into_inner)
        .map_err(to_rpc_error)
}

/// Sends gRPC's health `Check` for the server as a whole (service `""`),
/// as client-go's liveness probe does (`invokeKVStatusAPI`).
pub async fn call_health_check<C: GrpcChannel>(
    channel: C,
    limits: MessageLimits,
    timeout: Option<Duration>,
) -> Result<HealthCheckResponse, RpcError> {
    HealthClient::new(channel)
        .max_decoding_message_size(limits.decoding)
        .max_encoding_message_size(limits.encoding)
        .check(grpc_request(HealthCheckRequest::default(), timeout))
        .await
        .map(tonic::Response::into_inner)
        .map_err(to_rpc_error)
}

/// The client for a PD-side service named in `for_each_pd_rpc!`.
macro_rules! pd_service_client {
    (pdpb, $channel:expr, $limits:expr) => {
        pd_client($channel, $limits)
    };
    (keyspacepb, $channel:expr, $limits:expr) => {
        KeyspaceClient::new($channel)
            .max_decoding_message_size($limits.decoding)
            .max_encoding_message_size($limits.encoding)
    };
}

macro_rules! pd_dispatch {
    ($(($variant:ident, $svc:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        /// Sends one unary PD request with the matching `PD`/`Keyspace`
        /// method. `Tso` is not unary (see [`crate::tso`]) and is refused.
        pub async fn call_pd<C: GrpcChannel>(
            channel: C,
            limits: MessageLimits,
            request: PdRequest,
            timeout: Option<Duration>,
        ) -> Result<PdResponse, RpcError> {
            match request {
                $(
                    PdRequest::$variant(r) => pd_service_client!($svc, channel, limits)
                        .$method(grpc_request(*r, timeout))
                        .await
                        .map(|resp| PdResponse::$variant(Box::new(resp.into_inner())))
                        .map_err(to_rpc_error),
                )*
                PdRequest::Tso(_) => Err(RpcError::Mismatch),
            }
        }
    };
}
tikv_core::for_each_pd_rpc!(pd_dispatch);
