//! PD's TSO stream: one long-lived bidirectional stream per PD address.
//!
//! A round is one `TsoRequest` sent and the next `TsoResponse` read. Rounds
//! on one stream are serialised (an async mutex per address), so responses
//! pair with requests by order. Pipelining several rounds is a later step.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc;
use tikv_core::rpc::RpcError;
use tikv_proto::pdpb::pd_client::PdClient;
use tikv_proto::pdpb::{TsoRequest, TsoResponse};
use tonic::Streaming;

use crate::GrpcChannel;
use crate::status::to_rpc_error;

type Slot = Arc<futures::lock::Mutex<Option<Stream>>>;

/// The TSO streams of one transport, by PD address.
#[derive(Debug, Default)]
pub struct Streams {
    by_addr: Mutex<HashMap<Arc<str>, Slot>>,
}

/// An open stream: the sending half of the request stream the call is
/// reading, and the response stream.
struct Stream {
    requests: mpsc::UnboundedSender<TsoRequest>,
    responses: Streaming<TsoResponse>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TsoStream")
    }
}

fn broken(what: impl fmt::Display) -> RpcError {
    RpcError::Unavailable(format!("tso stream: {what}"))
}

impl Streams {
    fn slot(&self, addr: &Arc<str>) -> Slot {
        let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(addr.clone()).or_default().clone()
    }

    /// One round on `addr`'s stream, opening it (with `client()`) if there
    /// is none.
    ///
    /// The stream is taken out of its slot for the duration of the round and
    /// put back only after a complete round. So a stream whose round failed,
    /// or whose round was abandoned midway (the caller dropped this future at
    /// its deadline), is closed rather than reused: its late response can
    /// never be read as the answer to the next round.
    pub async fn round<C: GrpcChannel>(
        &self,
        addr: &Arc<str>,
        client: impl FnOnce() -> PdClient<C>,
        request: TsoRequest,
    ) -> Result<TsoResponse, RpcError> {
        let slot = self.slot(addr);
        let mut guard = slot.lock().await;
        let mut stream = match guard.take() {
            Some(stream) => {
                stream.requests.unbounded_send(request).map_err(|_| broken("closed"))?;
                stream
            }
            None => Stream::open(client(), request).await?,
        };
        let response = match stream.responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(broken("closed by PD")),
            Err(status) => return Err(broken(to_rpc_error(status))),
        };
        *guard = Some(stream);
        Ok(response)
    }
}

impl Stream {
    /// Opens a stream whose first message is `first`.
    ///
    /// The request is queued before the call is made because some servers
    /// (grpc-go, i.e. PD) send response headers only with the first response,
    /// and the stub's call resolves on the headers.
    async fn open<C: GrpcChannel>(
        mut client: PdClient<C>,
        first: TsoRequest,
    ) -> Result<Stream, RpcError> {
        let (requests, outgoing) = mpsc::unbounded();
        requests.unbounded_send(first).map_err(|_| broken("closed"))?;
        let responses = client.tso(outgoing).await.map_err(to_rpc_error)?.into_inner();
        Ok(Stream { requests, responses })
    }
}
