//! `BatchCommands` streams: the runtime half of `tikv_core::rpc::batch`,
//! written once for every runtime (spawning and timers come from a
//! `tikv_driver::Runtime`, the HTTP/2 channel is any [`GrpcChannel`]).
//!
//! Per store address (and forwarded host: requests a store forwards to
//! another ride streams of their own opened with the `tikv-forwarded-host`
//! metadata, as client-go's `batchCommandsClient` keeps one stream per
//! forwarded host and TiKV forwards a whole stream), one [`BatchCollector`] (behind a mutex held only for
//! the collector's own bookkeeping, never across I/O) over
//! [`TransportConfig::batch_streams_per_store`] long-lived bidirectional
//! `BatchCommands` streams, one per HTTP/2 connection (client-go's
//! `batchConn` over its `batchCommandsClients`), driven by:
//! - one **driver** task that receives callers' requests, pushes them into
//!   the collector, writes the messages it emits to the stream it names,
//!   arms its timer (batch waits and request deadlines), opens a stream on
//!   each slot it asks for, and sends its fallbacks as unary calls;
//! - one **receiver** task per stream that reads answer messages, hands
//!   the health feedback TiKV carries on them to the installed sink
//!   ([`BatchConns::set_health_feedback_sink`]), feeds them to the
//!   collector and hands each answer to its caller; when the
//!   stream ends or fails it reports the break (requests sent on it fail
//!   with the retryable `Unavailable("batch stream broken: ..")`).
//!
//! Every policy decision (what to batch, when to flush, which stream takes
//! a message, ids, deadlines, re-creation backoff, what falls back to
//! unary, when the streams are idle) is the collector's. Once the collector
//! is idle ([`TransportConfig::batch_idle_timeout`]) the driver ends,
//! closing the streams; the next request starts a new driver.
//!
//! Timer resolution: runtime timers are coarse (tokio's ticks every 1 ms),
//! far coarser than the 100 µs batch wait, so a wait shorter than a
//! millisecond is done by yielding to the executor (the callers producing
//! requests run meanwhile) and checking the clock again, not by sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::{self, BoxFuture, Either};
use futures::{FutureExt, StreamExt};
use tikv_core::rpc::batch::{BatchCollector, BatchConfig, StreamGen};
use tikv_core::rpc::{KvRequest, KvResponse, RpcError};
use tikv_core::time::Instant;
use tikv_driver::{HealthFeedbackSink, Runtime};
use tikv_proto::tikvpb::BatchCommandsRequest;
use tonic::codegen::http::uri::PathAndQuery;

use crate::batch_codec::BatchCodec;
use crate::dispatch::{call_kv, forward_to};
use crate::status::to_rpc_error;
use crate::{GrpcChannel, MessageLimits, TransportConfig};

type Reply = oneshot::Sender<Result<KvResponse, RpcError>>;

/// A caller's request on its way to the driver task.
struct Entry {
    request: KvRequest,
    deadline: Instant,
    arrived: Instant,
    reply: Reply,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({:?})", self.request)
    }
}

/// The `BatchCommands` streams of one transport: per store address, one
/// collector over [`TransportConfig::batch_streams_per_store`] connections'
/// streams.
#[derive(Debug, Default)]
pub struct BatchConns {
    /// hashbrown's hasher, not std's SipHash: this map is looked up on
    /// every call, and SipHash costs a few hundred instructions per lookup.
    /// Only looked up, never iterated.
    by_addr: Mutex<hashbrown::HashMap<StreamKey, mpsc::UnboundedSender<Entry>>>,
    /// Where the receivers hand TiKV's health feedback
    /// ([`BatchConns::set_health_feedback_sink`]).
    feedback_sink: Arc<FeedbackSinkSlot>,
}

/// The streams' address and the forwarded host their requests are for.
type StreamKey = (Arc<str>, Option<Arc<str>>);

/// The installed health feedback sink, if any; shared with every
/// address's receivers, so a sink installed after the streams opened still
/// gets their feedback.
#[derive(Default)]
struct FeedbackSinkSlot(Mutex<Option<HealthFeedbackSink>>);

impl FeedbackSinkSlot {
    fn set(&self, sink: HealthFeedbackSink) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(sink);
    }

    fn get(&self) -> Option<HealthFeedbackSink> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl std::fmt::Debug for FeedbackSinkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let installed = if self.get().is_some() { "installed" } else { "none" };
        write!(f, "FeedbackSinkSlot({installed})")
    }
}

/// Where a batch connection gets its HTTP/2 channel. It is asked again for
/// every new stream and every unary fallback, so a runtime whose channels do
/// not reconnect by themselves (`tikv-async-std` redials through its pool)
/// hands out a live one; tonic's channel reconnects and is handed out as is.
pub type ChannelSource<C> = Arc<dyn Fn() -> BoxFuture<'static, Result<C, RpcError>> + Send + Sync>;

/// State shared by the driver and receiver tasks of one address.
struct Shared<C, R> {
    feedback_sink: Arc<FeedbackSinkSlot>,
    collector: Mutex<BatchCollector<Reply>>,
    /// Receiver → driver: the collector changed state (stream ready or
    /// broken) and has output only the driver handles.
    wake: mpsc::UnboundedSender<()>,
    /// One channel source per stream slot; unary fallbacks use slot 0's.
    channels: Vec<ChannelSource<C>>,
    /// The store the streams' requests are forwarded to, if any.
    forwarded_host: Option<Arc<str>>,
    rt: R,
    config: TransportConfig,
    /// The address's pending-requests gauge, set under the collector's lock.
    pending: tikv_driver::PendingRequests,
}

impl<C, R> Shared<C, R> {
    fn lock(&self) -> MutexGuard<'_, BatchCollector<Reply>> {
        self.collector.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BatchConns {
    /// Installs the sink every stream's receiver hands TiKV's health
    /// feedback to as it arrives (`tikv_driver::Transport::set_health_feedback_sink`),
    /// replacing any earlier one.
    pub fn set_health_feedback_sink(&self, sink: HealthFeedbackSink) {
        self.feedback_sink.set(sink);
    }

    /// Sends `request` over one of `addr`'s streams (or, as its collector
    /// decides, unary) and waits for its answer; with a forwarded host,
    /// over `addr`'s streams to that host. The first call for an address
    /// and host spawns its tasks on `rt`, getting the channel of stream
    /// slot `n` from `source(n)` (each `n` must be a separate HTTP/2
    /// connection). `now` is the caller's clock reading, taken just before
    /// (the time the request joins the queue, for its batch wait).
    pub async fn call<C: GrpcChannel + Sync, R: Runtime>(
        &self,
        rt: &R,
        (addr, forwarded_host): (&Arc<str>, Option<&Arc<str>>),
        source: impl Fn(usize) -> ChannelSource<C>,
        config: &TransportConfig,
        request: KvRequest,
        (deadline, now): (Instant, Instant),
    ) -> Result<KvResponse, RpcError>
    where
        C::Future: Send,
    {
        let (reply, answer) = oneshot::channel();
        let mut entry = Entry { request, deadline, arrived: now, reply };
        // Twice at most: a driver whose executor has shut down (its task
        // dropped, so its queue closed) is replaced by one spawned now.
        let key: StreamKey = (addr.clone(), forwarded_host.cloned());
        for _ in 0..2 {
            let sender = self.sender(rt, &key, &source, config);
            match sender.unbounded_send(entry) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(RpcError::Unavailable("batch stream closed".into()))
                    });
                }
                Err(e) => {
                    entry = e.into_inner();
                    let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
                    if map.get(&key).is_some_and(|s| s.same_receiver(&sender)) {
                        map.remove(&key);
                    }
                }
            }
        }
        Err(RpcError::Unavailable("batch stream driver is gone".into()))
    }

    fn sender<C: GrpcChannel + Sync, R: Runtime>(
        &self,
        rt: &R,
        key: &StreamKey,
        source: &impl Fn(usize) -> ChannelSource<C>,
        config: &TransportConfig,
    ) -> mpsc::UnboundedSender<Entry>
    where
        C::Future: Send,
    {
        let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = map.get(key) {
            return sender.clone();
        }
        let (addr, forwarded_host) = key;
        let (sender, entries) = mpsc::unbounded();
        let (wake, woken) = mpsc::unbounded();
        let streams = config.batch_streams_per_store.max(1);
        let batch = BatchConfig::default()
            .policy(config.batch_policy)
            .streams(streams)
            .idle_timeout(config.batch_idle_timeout);
        let shared = Arc::new(Shared {
            feedback_sink: self.feedback_sink.clone(),
            collector: Mutex::new(BatchCollector::new(batch)),
            wake,
            channels: (0..streams).map(source).collect(),
            forwarded_host: forwarded_host.clone(),
            rt: rt.clone(),
            config: config.clone(),
            pending: match forwarded_host {
                None => tikv_driver::PendingRequests::of(addr),
                Some(host) => {
                    tikv_driver::PendingRequests::of(&format!("{addr} forwarding to {host}"))
                }
            },
        });
        rt.spawn(drive(shared, entries, woken).boxed());
        map.insert(key.clone(), sender.clone());
        sender
    }
}

/// What the driver does with the collector's output outside the lock.
#[derive(Default)]
struct Outputs {
    done: Vec<(Reply, Result<KvResponse, RpcError>)>,
    unary: Vec<(KvRequest, Reply, Instant)>,
}

impl Outputs {
    fn deliver<C: GrpcChannel + Sync, R: Runtime>(&mut self, shared: &Shared<C, R>)
    where
        C::Future: Send,
    {
        for (reply, result) in self.done.drain(..) {
            // The caller may have given up; nothing to do then.
            let _ = reply.send(result);
        }
        for (request, reply, deadline) in self.unary.drain(..) {
            let channel = (shared.channels[0])();
            let limits = MessageLimits::of(&shared.config);
            let rt = shared.rt.clone();
            let forwarded_host = shared.forwarded_host.clone();
            shared.rt.spawn(
                async move {
                    let call = async {
                        let channel = channel.await?;
                        let timeout = (deadline != Instant::MAX)
                            .then(|| deadline.saturating_duration_since(rt.now()));
                        let host = forwarded_host.as_deref();
                        call_kv(channel, limits, request, timeout, host).await
                    };
                    // The transport arms no timer for a stream request (the
                    // collector holds its deadline); once handed out here it
                    // is this task's to end at the deadline, even if the
                    // peer never answers.
                    let result = if deadline == Instant::MAX {
                        call.await
                    } else {
                        let timer = rt.sleep_until(deadline);
                        match future::select(std::pin::pin!(call), timer).await {
                            Either::Left((result, _)) => result,
                            Either::Right(_) => Err(RpcError::DeadlineExceeded),
                        }
                    };
                    let _ = reply.send(result);
                }
                .boxed(),
            );
        }
    }
}

/// What woke the driver.
enum Wake {
    /// A request arrived (already pushed into the collector).
    Entry,
    Closed,
    Nudged,
    Timer,
}

/// The driver task of one address; ends when the transport is dropped.
async fn drive<C: GrpcChannel + Sync, R: Runtime>(
    shared: Arc<Shared<C, R>>,
    mut entries: mpsc::UnboundedReceiver<Entry>,
    mut woken: mpsc::UnboundedReceiver<()>,
) where
    C::Future: Send,
{
    // The writing half of each slot's current stream.
    let mut streams: Vec<Option<mpsc::UnboundedSender<BatchCommandsRequest>>> =
        (0..shared.channels.len()).map(|_| None).collect();
    let mut out = Outputs::default();
    let mut sleep: Option<(Instant, BoxFuture<'static, ()>)> = None;
    // Recycling: the queue is closed, the driver ends once what was
    // already sent to it is answered.
    let mut closing = false;
    loop {
        let timeout = {
            let mut c = shared.lock();
            let now = shared.rt.now();
            c.on_timeout(now);
            while let Some(slot) = c.wants_stream(now) {
                let generation = c.open_stream(slot, now);
                let (tx, rx) = mpsc::unbounded();
                streams[slot] = Some(tx);
                shared.rt.spawn(receive(shared.clone(), generation, rx).boxed());
            }
            loop {
                let oldest = c.oldest_queued();
                let Some((stream, batch)) = c.poll_batch(now) else { break };
                if let Some(oldest) = oldest
                    && !is_probe(&batch)
                {
                    let wait = now.saturating_duration_since(oldest);
                    tikv_driver::record_batch(batch.requests.len(), wait);
                }
                // A failed write means the stream is gone; its receiver
                // reports the break.
                if let Some(tx) = &streams[stream.slot] {
                    let _ = tx.unbounded_send(batch);
                }
            }
            while let Some(done) = c.poll_completion() {
                out.done.push(done);
            }
            while let Some(f) = c.poll_fallback() {
                out.unary.push((f.request, f.waiter, f.deadline));
            }
            shared.pending.set(c.pending());
            (c.poll_timeout(), c.pending() == 0, c.is_idle(now))
        };
        let (timeout, drained, idle) = timeout;
        out.deliver(&shared);

        let now = shared.rt.now();
        // Idle for the whole timeout: close the queue, so callers holding
        // this driver's sender find it closed and spawn a new driver
        // (`BatchConns::call`); serve any request that slipped in before
        // the close, then end, dropping the streams.
        if closing && drained {
            return;
        }
        if !closing && idle {
            entries.close();
            closing = true;
            while let Ok(entry) = entries.try_recv() {
                push(&shared, entry);
            }
            continue;
        }
        let soon = timeout.is_some_and(|at| at.saturating_duration_since(now) < SHORT_WAIT);
        if soon {
            // A sub-millisecond batch wait: let the callers run, then look
            // again (module docs).
            YieldOnce(false).await;
        } else {
            if sleep.as_ref().map(|(at, _)| Some(*at)) != Some(timeout) {
                sleep = timeout.map(|at| (at, shared.rt.sleep_until(at)));
            }
            let wake = futures::future::poll_fn(|cx| {
                if !closing && let Poll::Ready(entry) = entries.poll_next_unpin(cx) {
                    return Poll::Ready(match entry {
                        Some(entry) => {
                            push(&shared, entry);
                            Wake::Entry
                        }
                        None => Wake::Closed,
                    });
                }
                if let Poll::Ready(Some(())) = woken.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Nudged);
                }
                if let Some((_, timer)) = sleep.as_mut()
                    && timer.poll_unpin(cx).is_ready()
                {
                    return Poll::Ready(Wake::Timer);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Closed => return,
                Wake::Timer => sleep = None,
                Wake::Entry | Wake::Nudged => {}
            }
        }
        // Take everything already queued (client-go's non-blocking sweep),
        // and the nudges that came with it.
        if !closing {
            loop {
                match entries.try_recv() {
                    Ok(entry) => push(&shared, entry),
                    Err(mpsc::TryRecvError::Closed) => return,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
        }
        while woken.try_recv().is_ok() {}
    }
}

/// A stream's first message, which carries no caller's request.
fn is_probe(batch: &BatchCommandsRequest) -> bool {
    use tikv_proto::tikvpb::batch_commands_request::request::Cmd;
    matches!(batch.requests.as_slice(), [r] if matches!(r.cmd, Some(Cmd::Empty(_))))
}

/// Waits shorter than this are done by yielding (module docs).
const SHORT_WAIT: Duration = Duration::from_millis(1);

/// Returns `Pending` once (after waking itself), then `Ready`: lets every
/// other ready task of the executor run before the driver looks again.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn push<C, R>(shared: &Shared<C, R>, entry: Entry) {
    shared.lock().push(entry.request, entry.reply, entry.deadline, entry.arrived);
}

/// Reads one stream's answers until it ends, then reports the break.
async fn receive<C: GrpcChannel + Sync, R: Runtime>(
    shared: Arc<Shared<C, R>>,
    generation: StreamGen,
    requests: mpsc::UnboundedReceiver<BatchCommandsRequest>,
) where
    C::Future: Send,
{
    let limits = MessageLimits::of(&shared.config);
    let mut done = Vec::new();
    let opened = match (shared.channels[generation.slot])().await {
        Ok(channel) => {
            // The generated stub's call with our codec (`batch_codec`).
            let mut grpc = tonic::client::Grpc::new(channel)
                .max_decoding_message_size(limits.decoding)
                .max_encoding_message_size(limits.encoding);
            // The service's error type need not be `Send`: turn it into a
            // message before the next await.
            let ready = grpc.ready().await.map_err(|e| {
                RpcError::Unavailable(format!("BatchCommands: channel not ready: {}", e.into()))
            });
            match ready {
                Ok(()) => {
                    let path = PathAndQuery::from_static("/tikvpb.Tikv/BatchCommands");
                    let mut request = tonic::IntoStreamingRequest::into_streaming_request(requests);
                    match forward_to(&mut request, shared.forwarded_host.as_deref()) {
                        Ok(()) => {
                            grpc.streaming(request, path, BatchCodec).await.map_err(to_rpc_error)
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    // A stream the store ends is routine (the driver closes idle streams);
    // one that fails is news (INFO), not a failure of anyone's request:
    // its requests are retried by their operations, which warn if they
    // fail in the end.
    let mut failed = true;
    let reason = match opened {
        Err(e) => e.to_string(),
        Ok(response) => {
            let mut answers = response.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(message)) => {
                        let now = shared.rt.now();
                        // client-go's `batchRecvLoop`: TiKV's slow score,
                        // which rides on the stream's answers now and then,
                        // is recorded before the answers are handed out, so
                        // their callers' next choice already sees it.
                        if let Some(feedback) = message.health_feedback
                            && let Some(sink) = shared.feedback_sink.get()
                        {
                            sink(feedback, now);
                        }
                        let changed = {
                            let mut c = shared.lock();
                            let before = c.slot_state(generation.slot);
                            c.on_response(generation, message, now);
                            while let Some(d) = c.poll_completion() {
                                done.push(d);
                            }
                            shared.pending.set(c.pending());
                            c.slot_state(generation.slot) != before
                        };
                        for (reply, result) in done.drain(..) {
                            let _ = reply.send(result);
                        }
                        if changed {
                            let _ = shared.wake.unbounded_send(());
                        }
                    }
                    Ok(None) => {
                        failed = false;
                        break "closed by the store".to_owned();
                    }
                    Err(status) => break to_rpc_error(status).to_string(),
                }
            }
        }
    };
    if failed {
        tracing::info!(
            target: "tikv_driver",
            slot = generation.slot,
            generation = generation.generation,
            reason = %reason,
            "BatchCommands stream failed"
        );
    } else {
        tracing::debug!(target: "tikv_driver", slot = generation.slot, "BatchCommands stream ended");
    }
    {
        let mut c = shared.lock();
        c.on_stream_broken(generation, &reason, shared.rt.now());
        while let Some(d) = c.poll_completion() {
            done.push(d);
        }
        shared.pending.set(c.pending());
    }
    for (reply, result) in done.drain(..) {
        let _ = reply.send(result);
    }
    // Fallbacks and the next stream are the driver's.
    let _ = shared.wake.unbounded_send(());
}
