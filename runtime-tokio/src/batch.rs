//! `BatchCommands` streams: the runtime half of `tikv_core::rpc::batch`.
//!
//! Per store address, one long-lived bidirectional `BatchCommands` stream on
//! the address's cached channel, driven by two tasks around one
//! [`BatchCollector`] (behind a mutex held only for the collector's own
//! bookkeeping, never across I/O):
//! - the **driver** task receives callers' requests, pushes them into the
//!   collector, writes the messages it emits, arms its timer (batch waits
//!   and request deadlines), opens a new stream when it asks for one, and
//!   sends its fallbacks as unary calls;
//! - one **receiver** task per stream reads answer messages, feeds them to
//!   the collector and hands each answer to its caller; when the stream
//!   ends or fails it reports the break (sent requests fail with the
//!   retryable `Unavailable("batch stream broken: ..")`).
//!
//! Every policy decision (what to batch, when to flush, ids, deadlines,
//! re-creation backoff, what falls back to unary) is the collector's.
//!
//! Timer resolution: tokio's timer has a 1 ms granularity, far coarser than
//! the 100 µs batch wait, so a wait shorter than that is done by yielding
//! to the scheduler (the callers producing requests run meanwhile) and
//! checking the clock, rather than by sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tikv_core::rpc::batch::{BatchCollector, BatchConfig, StreamGen};
use tikv_core::rpc::{KvRequest, KvResponse, RpcError};
use tikv_core::time::Instant;
use tikv_proto::tikvpb::BatchCommandsRequest;
use tikv_proto::tikvpb::tikv_client::TikvClient;
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::transport::Channel;

use crate::clock;
use tikv_grpc::dispatch::call_kv;
use tikv_grpc::status::to_rpc_error;

use crate::transport::TransportConfig;

type Reply = oneshot::Sender<Result<KvResponse, RpcError>>;

/// A caller's request on its way to the driver task.
struct Entry {
    request: KvRequest,
    deadline: Instant,
    arrived: Instant,
    reply: Reply,
}

/// The `BatchCommands` connections of one transport, by store address.
#[derive(Debug, Default)]
pub(crate) struct BatchConns {
    by_addr: Mutex<HashMap<Arc<str>, mpsc::UnboundedSender<Entry>>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({:?})", self.request)
    }
}

/// State shared by the driver and receiver tasks of one address.
struct Shared {
    collector: Mutex<BatchCollector<Reply>>,
    /// Receiver → driver: the collector changed state (stream ready or
    /// broken) and has output only the driver handles.
    wake: Notify,
    channel: Channel,
    config: Arc<TransportConfig>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BatchCollector<Reply>> {
        self.collector.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn now() -> Instant {
    clock::from_tokio(tokio::time::Instant::now())
}

impl BatchConns {
    /// Sends `request` over `addr`'s stream (or, as the collector decides,
    /// unary) and waits for its answer. `channel` gives the address's
    /// channel, asked for only when the address has no stream driver yet.
    pub(crate) async fn call(
        &self,
        addr: &Arc<str>,
        channel: impl Fn() -> Result<Channel, RpcError>,
        config: &TransportConfig,
        request: KvRequest,
        deadline: Instant,
    ) -> Result<KvResponse, RpcError> {
        let (reply, answer) = oneshot::channel();
        let mut entry = Entry { request, deadline, arrived: now(), reply };
        // Twice at most: a driver whose runtime has shut down is replaced
        // by one on the caller's runtime.
        for _ in 0..2 {
            let sender = self.sender(addr, &channel, config)?;
            match sender.send(entry) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(RpcError::Unavailable("batch stream closed".into()))
                    });
                }
                Err(mpsc::error::SendError(back)) => {
                    entry = back;
                    let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
                    if map.get(addr).is_some_and(|s| s.same_channel(&sender)) {
                        map.remove(addr);
                    }
                }
            }
        }
        Err(RpcError::Unavailable("batch stream driver is gone".into()))
    }

    fn sender(
        &self,
        addr: &Arc<str>,
        channel: &impl Fn() -> Result<Channel, RpcError>,
        config: &TransportConfig,
    ) -> Result<mpsc::UnboundedSender<Entry>, RpcError> {
        let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = map.get(addr) {
            return Ok(sender.clone());
        }
        let channel = channel()?;
        let (sender, entries) = mpsc::unbounded_channel();
        let batch = BatchConfig::default().policy(config.batch_policy);
        let shared = Arc::new(Shared {
            collector: Mutex::new(BatchCollector::new(batch)),
            wake: Notify::new(),
            channel,
            config: Arc::new(config.clone()),
        });
        tokio::spawn(drive(shared, entries));
        map.insert(addr.clone(), sender.clone());
        Ok(sender)
    }
}

/// What the driver does with the collector's output outside the lock.
#[derive(Default)]
struct Outputs {
    done: Vec<(Reply, Result<KvResponse, RpcError>)>,
    unary: Vec<(KvRequest, Reply, Instant)>,
}

impl Outputs {
    fn deliver(&mut self, shared: &Shared) {
        for (reply, result) in self.done.drain(..) {
            // The caller may have given up; nothing to do then.
            let _ = reply.send(result);
        }
        for (request, reply, deadline) in self.unary.drain(..) {
            let channel = shared.channel.clone();
            let config = shared.config.clone();
            tokio::spawn(async move {
                let timeout = clock::to_tokio(deadline)
                    .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
                let result = call_kv(channel, config.limits(), request, timeout).await;
                let _ = reply.send(result);
            });
        }
    }
}

/// The driver task of one address; ends when the transport is dropped.
async fn drive(shared: Arc<Shared>, mut entries: mpsc::UnboundedReceiver<Entry>) {
    let mut stream: Option<futures::channel::mpsc::UnboundedSender<BatchCommandsRequest>> = None;
    let mut out = Outputs::default();
    loop {
        let timeout = {
            let mut c = shared.lock();
            let now = now();
            c.on_timeout(now);
            if c.wants_stream() {
                let generation = c.open_stream(now);
                let (tx, rx) = futures::channel::mpsc::unbounded();
                stream = Some(tx);
                tokio::spawn(receive(shared.clone(), generation, rx));
            }
            while let Some(batch) = c.poll_batch(now) {
                // A failed write means the stream is gone; its receiver
                // reports the break.
                if let Some(tx) = &stream {
                    let _ = tx.unbounded_send(batch);
                }
            }
            while let Some(done) = c.poll_completion() {
                out.done.push(done);
            }
            while let Some(f) = c.poll_fallback() {
                out.unary.push((f.request, f.waiter, f.deadline));
            }
            c.poll_timeout()
        };
        out.deliver(&shared);

        let wake_at = timeout.and_then(clock::to_tokio);
        let soon = wake_at.is_some_and(|at| {
            at.saturating_duration_since(tokio::time::Instant::now()) < Duration::from_millis(1)
        });
        if soon {
            // A sub-millisecond batch wait: let the callers run, then look
            // again (module docs).
            tokio::task::yield_now().await;
        } else {
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                entry = entries.recv() => match entry {
                    Some(entry) => push(&shared, entry),
                    None => return,
                },
                () = shared.wake.notified() => {}
                () = sleep => {}
            }
        }
        // Take everything already queued (client-go's non-blocking sweep).
        loop {
            match entries.try_recv() {
                Ok(entry) => push(&shared, entry),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
    }
}

fn push(shared: &Shared, entry: Entry) {
    shared.lock().push(entry.request, entry.reply, entry.deadline, entry.arrived);
}

/// Reads one stream's answers until it ends, then reports the break.
async fn receive(
    shared: Arc<Shared>,
    generation: StreamGen,
    requests: futures::channel::mpsc::UnboundedReceiver<BatchCommandsRequest>,
) {
    let config = &shared.config;
    let mut client = TikvClient::new(shared.channel.clone())
        .max_decoding_message_size(config.max_decoding_message_size)
        .max_encoding_message_size(config.max_encoding_message_size);
    let mut done = Vec::new();
    let reason = match client.batch_commands(requests).await {
        Err(status) => to_rpc_error(status).to_string(),
        Ok(response) => {
            let mut answers = response.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(message)) => {
                        let changed = {
                            let mut c = shared.lock();
                            let before = c.state();
                            c.on_response(generation, message, now());
                            while let Some(d) = c.poll_completion() {
                                done.push(d);
                            }
                            c.state() != before
                        };
                        for (reply, result) in done.drain(..) {
                            let _ = reply.send(result);
                        }
                        if changed {
                            shared.wake.notify_one();
                        }
                    }
                    Ok(None) => break "closed by the store".to_owned(),
                    Err(status) => break to_rpc_error(status).to_string(),
                }
            }
        }
    };
    {
        let mut c = shared.lock();
        c.on_stream_broken(generation, &reason, now());
        while let Some(d) = c.poll_completion() {
            done.push(d);
        }
    }
    for (reply, result) in done.drain(..) {
        let _ = reply.send(result);
    }
    // Fallbacks and the next stream are the driver's.
    shared.wake.notify_one();
}
