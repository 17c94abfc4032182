//! PD's TSO stream: one long-lived bidirectional stream per PD address,
//! with several rounds in flight on it.
//!
//! PD answers a stream's requests one by one, in order, so a round is
//! "send a `TsoRequest`, take the next answer not yet taken". A round
//! appends its reply slot and sends its request under one lock, so slots
//! queue in sending order; one reader task per stream takes each answer,
//! checks it against the oldest outstanding request with core's
//! [`TsoStreamOrder`] (count, strictly increasing) and hands it to that
//! slot. How many rounds are in flight is the core batcher's decision; this
//! module only moves frames.
//!
//! A stream breaks when PD ends it, on a transport error, on an answer that
//! fails the order check, or when a round is abandoned before its answer
//! (its caller's deadline passed: the stream is presumed stuck, as PD's
//! client cancels a stream whose RPC times out). A broken stream fails
//! every round in flight with the retryable `RpcError::Unavailable`, is
//! closed, and the next round opens a new one, so a late answer can never
//! be read as another round's.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::FutureExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{self, Either};
use tikv_core::pd::TsoStreamOrder;
use tikv_core::rpc::RpcError;
use tikv_driver::Runtime;
use tikv_proto::pdpb::pd_client::PdClient;
use tikv_proto::pdpb::{TsoRequest, TsoResponse};

use crate::GrpcChannel;
use crate::status::to_rpc_error;

type Reply = oneshot::Sender<Result<TsoResponse, RpcError>>;

/// The TSO streams of one transport, by PD address.
#[derive(Debug, Default)]
pub struct Streams {
    by_addr: Mutex<HashMap<Arc<str>, Arc<Stream>>>,
}

/// One open (or opening) stream.
struct Stream {
    state: Mutex<State>,
}

struct State {
    /// The request stream the call reads; `None` once broken.
    requests: Option<mpsc::UnboundedSender<TsoRequest>>,
    order: TsoStreamOrder,
    /// The reply slots of the outstanding requests, oldest first.
    replies: VecDeque<Reply>,
    /// Dropped to stop the reader task when the stream breaks on our side.
    stop: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TsoStream")
    }
}

fn broken(what: impl fmt::Display) -> RpcError {
    RpcError::Unavailable(format!("tso stream: {what}"))
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_broken(&self) -> bool {
        self.lock().requests.is_none()
    }

    /// Closes the stream and fails every round in flight on it.
    fn break_with(&self, why: &RpcError) {
        let replies = {
            let mut state = self.lock();
            state.requests = None;
            state.stop = None;
            std::mem::take(&mut state.replies)
        };
        for reply in replies {
            let _ = reply.send(Err(why.clone()));
        }
    }

    /// Queues `request` with its reply slot, in sending order.
    fn send(&self, request: TsoRequest, reply: Reply) -> Result<(), Reply> {
        let mut state = self.lock();
        let count = request.count;
        let Some(requests) = &state.requests else { return Err(reply) };
        if requests.unbounded_send(request).is_err() {
            return Err(reply);
        }
        state.order.on_send(count);
        state.replies.push_back(reply);
        Ok(())
    }

    /// Takes one answer: checks it and hands it to the oldest round.
    fn deliver(&self, answer: TsoResponse) -> Result<(), RpcError> {
        let reply = {
            let mut state = self.lock();
            state.order.on_answer(&answer).map_err(broken)?;
            state.replies.pop_front()
        };
        // The order check found a request outstanding, so a slot is there.
        if let Some(reply) = reply {
            let _ = reply.send(Ok(answer));
        }
        Ok(())
    }
}

/// Breaks the stream if the round is dropped before its answer.
struct Abandon<'a>(Option<&'a Stream>);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(stream) = self.0.take() {
            stream.break_with(&broken("a round was abandoned (deadline)"));
        }
    }
}

impl Streams {
    /// One round on `addr`'s stream, opening it (with `client()`, its
    /// reader task spawned on `rt`) if there is none or it broke.
    pub async fn round<C, R>(
        &self,
        rt: &R,
        addr: &Arc<str>,
        client: impl FnOnce() -> PdClient<C>,
        request: TsoRequest,
    ) -> Result<TsoResponse, RpcError>
    where
        C: GrpcChannel,
        C::Future: Send,
        R: Runtime,
    {
        let (reply, answer) = oneshot::channel();
        let stream = {
            let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(addr) {
                Some(stream) if !stream.is_broken() => stream.clone(),
                _ => {
                    let stream = open(rt, client());
                    map.insert(addr.clone(), stream.clone());
                    stream
                }
            }
        };
        // A stream that broke since it was looked up refuses the request;
        // the round reports it like any break and is retried by its caller.
        if stream.send(request, reply).is_err() {
            return Err(broken("closed"));
        }
        let mut abandon = Abandon(Some(&stream));
        let result = answer.await.unwrap_or_else(|_| Err(broken("closed")));
        abandon.0 = None;
        result
    }
}

/// A new stream whose reader task (spawned on `rt`) makes the call.
///
/// Requests may be queued before the call is made, and must be: some
/// servers (grpc-go, i.e. PD) send response headers only with the first
/// response, and the stub's call resolves on the headers.
fn open<C, R>(rt: &R, mut client: PdClient<C>) -> Arc<Stream>
where
    C: GrpcChannel,
    C::Future: Send,
    R: Runtime,
{
    let (requests, outgoing) = mpsc::unbounded();
    let (stop, stopped) = oneshot::channel::<()>();
    let stream = Arc::new(Stream {
        state: Mutex::new(State {
            requests: Some(requests),
            order: TsoStreamOrder::default(),
            replies: VecDeque::new(),
            stop: Some(stop),
        }),
    });
    // The reader holds the stream weakly: dropping the transport drops the
    // stream, whose dropped `stop` ends the reader and the call.
    let reader = Arc::downgrade(&stream);
    rt.spawn(
        async move {
            let read = async {
                let mut responses = match client.tso(outgoing).await {
                    Ok(response) => response.into_inner(),
                    Err(status) => return broken(to_rpc_error(status)),
                };
                loop {
                    let answer = match responses.message().await {
                        Ok(Some(answer)) => answer,
                        Ok(None) => return broken("closed by PD"),
                        Err(status) => return broken(to_rpc_error(status)),
                    };
                    let Some(stream) = reader.upgrade() else { return broken("dropped") };
                    if let Err(why) = stream.deliver(answer) {
                        return why;
                    }
                }
            };
            // The stream fails, or our side broke it (dropping `stop`).
            if let Either::Left((why, _)) = future::select(Box::pin(read), stopped).await
                && let Some(stream) = reader.upgrade()
            {
                stream.break_with(&why);
            }
        }
        .boxed(),
    );
    stream
}
