//! The `BatchCommands` batching policy: one [`BatchCollector`] per store.
//!
//! TiKV's `BatchCommands` RPC is a bidirectional stream on which every
//! message carries many requests, each tagged with a client-chosen id, and
//! every answer message carries responses under the same ids. client-go
//! sends nearly all point requests this way (`internal/client/client_batch.go`,
//! `conn_batch.go`); with tonic it is the difference between ~85K and
//! ~350K+ ops/s on one connection (`perf-reliability-anchors.md` §3.3).
//!
//! The collector is the whole protocol, without I/O: requests are
//! [`push`](BatchCollector::push)ed with the time they arrived; the runtime
//! drains [`poll_batch`](BatchCollector::poll_batch) (messages to write),
//! [`poll_completion`](BatchCollector::poll_completion) (answers for
//! waiters) and [`poll_fallback`](BatchCollector::poll_fallback) (requests
//! to send as unary calls instead), arms one timer at
//! [`poll_timeout`](BatchCollector::poll_timeout), and feeds back
//! responses, stream failures and timer firings. The waiter type `W` is the
//! runtime's (a oneshot sender, a test label); the collector only moves it.
//!
//! Decisions, each client-go's:
//! - **What rides the stream**: a request whose command has a
//!   `BatchCommandsRequest.Request` oneof case ([`to_batch_cmd`]); the rest
//!   (`RawGetKeyTtl`, `RawCompareAndSwap`, `RawChecksum`, `SplitRegion`,
//!   `UnsafeDestroyRange`) stay unary, as `tikvrpc.ToBatchCommandsRequest`
//!   refuses them.
//! - **When to flush**: at most [`MAX_BATCH_SIZE`] (128, client-go's
//!   `MaxBatchSize`) requests per message. Everything queued goes at once
//!   unless the "standard" turbo policy (client-go's default
//!   `batch-policy`, cg#1411) predicts more arrivals: it keeps an EWMA
//!   (weight 0.2) of the gap between a batch's first request and the latest
//!   request before it, each gap capped at 5 x 100 µs; when the estimate is
//!   below 80 µs it waits up to 100 µs for an EWMA-sized batch (the average
//!   of recent batch sizes, rounded up from .8), or, when that many are
//!   already queued, 1 µs for more (client-go yields its send loop once for
//!   a last non-blocking fetch). See [`BatchPolicy`].
//! - **Ids**: increasing per collector, never reused, so a late answer to
//!   an abandoned request can never complete another one. Answers with an
//!   unknown id (expired, or from a server bug) are dropped and counted.
//! - **Deadlines**: every request has one; [`on_timeout`](BatchCollector::on_timeout)
//!   fails the expired ones with [`RpcError::DeadlineExceeded`] whether
//!   queued or sent (client-go's per-entry timer), which also frees their slot.
//! - **Streams**: one collector per store, one queue and one wait policy,
//!   over [`BatchConfig::streams`] streams (one per HTTP/2 connection;
//!   client-go's `GrpcConnectionCount` is 4); each message goes whole to
//!   the next ready stream in turn (client-go's `batchConn.getClientAndSend`
//!   round-robin), so spreading load over connections does not shrink
//!   batches.
//! - **Stream life**: a new stream first carries a probe (an `Empty`
//!   request, which TiKV echoes) and requests queue until an answer shows
//!   a stream works. A stream that breaks fails every request sent on it
//!   with the retryable `RpcError::Unavailable("batch stream broken: ...")`
//!   (client-go fails the pending entries of the broken stream); requests
//!   not yet written wait for the other streams, or, when none is left,
//!   are handed back as fallbacks to send unary. Until a slot's next
//!   attempt (backoff 100 ms doubling to 2 s, `BoTiKVRPC`'s range) it takes
//!   nothing; with every slot down, new requests fall back to unary too, so
//!   a store that rejects the stream, or an older server without it, is
//!   still served.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;

use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as RespCmd;
use tikv_proto::tikvpb::{
    BatchCommandsEmptyRequest, BatchCommandsRequest, BatchCommandsResponse, batch_commands_request,
};

use super::{KvRequest, KvResponse, RpcError};
use crate::time::{Duration, Instant};

/// client-go's `MaxBatchSize` default: requests per `BatchCommandsRequest`.
pub const MAX_BATCH_SIZE: usize = 128;

/// client-go's turbo wait `t` (100 µs).
const TURBO_WAIT: Duration = Duration::from_micros(100);
/// How long a collector whose predicted batch is already queued still
/// waits: client-go's send loop then makes one more non-blocking fetch
/// after yielding once (`runtime.Gosched` in `fetchMorePendingRequests`),
/// so that callers about to send join the batch. A runtime spends a wait
/// this short yielding (see `tikv_grpc::batch`).
const YIELD_WAIT: Duration = Duration::from_micros(1);
/// client-go's `BatchWaitSize` default: the initial batch-size estimate.
const DEFAULT_BATCH_WAIT_SIZE: u64 = 8;
/// Fixed-point scale of the batch-size EWMA (thousandths of a request), so
/// the policy is integer arithmetic and transcripts are exact.
const MILLI: u64 = 1000;
/// First backoff before re-creating a broken stream (`BoTiKVRPC` base).
const REOPEN_BASE: Duration = Duration::from_millis(100);
/// Largest backoff before re-creating a broken stream (`BoTiKVRPC` cap).
const REOPEN_CAP: Duration = Duration::from_secs(2);

macro_rules! batch_conversions {
    (batch: [$($b:ident),* $(,)?], unary: [$($u:ident),* $(,)?] $(,)?) => {
        /// The stream form of `request`, or the request back if its command
        /// has no `BatchCommandsRequest` case and must be sent unary.
        ///
        /// ```
        /// use tikv_core::rpc::KvRequest;
        /// use tikv_core::rpc::batch::to_batch_cmd;
        ///
        /// assert!(to_batch_cmd(KvRequest::RawGet(Default::default())).is_ok());
        /// assert!(to_batch_cmd(KvRequest::RawChecksum(Default::default())).is_err());
        /// ```
        // The error carries the request back so the caller can still send it.
        pub fn to_batch_cmd(request: KvRequest) -> Result<ReqCmd, KvRequest> {
            match request {
                $(KvRequest::$b(r) => Ok(ReqCmd::$b(r)),)*
                $(KvRequest::$u(_) => Err(request),)*
            }
        }

        /// True if `request` can ride a `BatchCommands` stream.
        pub fn is_batchable(request: &KvRequest) -> bool {
            match request {
                $(KvRequest::$b(_) => true,)*
                $(KvRequest::$u(_) => false,)*
            }
        }

        /// The typed request inside a stream entry (the server side), or the
        /// entry back for commands this client does not model (`Empty`,
        /// `Coprocessor`, ...).
        pub fn from_batch_cmd(cmd: ReqCmd) -> Result<KvRequest, ReqCmd> {
            match cmd {
                $(ReqCmd::$b(r) => Ok(KvRequest::$b(r)),)*
                other => Err(other),
            }
        }

        /// The stream form of a response (the server side); `None` for the
        /// commands that have no batch case.
        pub fn response_to_batch(response: KvResponse) -> Option<RespCmd> {
            match response {
                $(KvResponse::$b(r) => Some(RespCmd::$b(r)),)*
                $(KvResponse::$u(_) => None,)*
            }
        }

        /// The typed response inside a stream entry; `None` if the entry is
        /// not a response to any request this client sends on the stream.
        /// Both forms box the message, so only the box moves.
        pub fn response_from_batch(cmd: RespCmd) -> Option<KvResponse> {
            match cmd {
                $(RespCmd::$b(r) => Some(KvResponse::$b(r)),)*
                _ => None,
            }
        }
    };
}

// Every `KvRequest` variant is listed once: adding one to `for_each_kv_rpc!`
// fails to compile until it is sorted here. The unary list is client-go's
// (no batch case in kvproto for these commands).
batch_conversions! {
    batch: [
        Get, Scan, Prewrite, PessimisticLock, PessimisticRollback, TxnHeartBeat,
        CheckTxnStatus, CheckSecondaryLocks, Commit, Cleanup, BatchGet, BatchRollback,
        ScanLock, ResolveLock, DeleteRange, Flush, BufferBatchGet, RawGet, RawBatchGet,
        RawPut, RawBatchPut, RawDelete, RawBatchDelete, RawScan, RawDeleteRange, RawBatchScan,
        BroadcastTxnStatus, GetHealthFeedback,
    ],
    unary: [RawGetKeyTtl, RawCompareAndSwap, RawChecksum, SplitRegion, UnsafeDestroyRange],
}

/// How long a collector waits for more requests before flushing a short
/// batch (client-go's `batch-policy`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BatchPolicy {
    /// Never wait: send whatever is queued (client-go's `basic`, the
    /// behaviour before TiDB v8.3).
    Basic,
    /// Wait up to 100 µs, only while requests arrive less than 80 µs apart
    /// on average (client-go's `standard`, the default).
    Standard,
    /// Always wait up to 100 µs for 8 requests (client-go's `positive`).
    Positive,
}

/// Settings of a [`BatchCollector`]. Defaults are client-go's.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Most requests per message, at least 1. Default [`MAX_BATCH_SIZE`] (128).
    pub max_batch_size: usize,
    /// The wait policy. Default [`BatchPolicy::Standard`].
    pub policy: BatchPolicy,
    /// Streams (one per HTTP/2 connection) the collector spreads whole
    /// messages over, at least 1. Default 1; client-go's
    /// `GrpcConnectionCount` is 4.
    pub streams: usize,
    /// After this long with nothing queued or in flight the collector is
    /// idle ([`BatchCollector::is_idle`]) and the runtime closes its
    /// streams (client-go recycles a `batchConn` idle for `idleTimeout`,
    /// 3 min). Default `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: MAX_BATCH_SIZE,
            policy: BatchPolicy::Standard,
            streams: 1,
            idle_timeout: None,
        }
    }
}

impl BatchConfig {
    /// Sets [`BatchConfig::policy`].
    pub fn policy(mut self, policy: BatchPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets [`BatchConfig::max_batch_size`] (at least 1).
    pub fn max_batch_size(mut self, size: usize) -> Self {
        self.max_batch_size = size.max(1);
        self
    }

    /// Sets [`BatchConfig::streams`] (at least 1).
    pub fn streams(mut self, n: usize) -> Self {
        self.streams = n.max(1);
        self
    }

    /// Sets [`BatchConfig::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }
}

/// Where one of a collector's streams is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// No stream. It may be opened at its reopen time, when requests are
    /// queued ([`BatchCollector::wants_stream`]); until then requests
    /// fall back to unary if no other stream can take them.
    Down,
    /// A stream was opened; its probe is unanswered. Requests queue.
    Probing,
    /// The stream answered; requests flow.
    Ready,
}

/// Counters of one collector, for metrics and tests.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// `BatchCommandsRequest` messages emitted (probes excluded).
    pub batches: u64,
    /// Requests sent in them.
    pub requests: u64,
    /// Responses matched to a waiting request.
    pub responses: u64,
    /// Responses whose id matched nothing (expired, failed, or bogus).
    pub unknown_responses: u64,
    /// Requests failed by their deadline.
    pub expired: u64,
    /// Requests failed because their stream broke.
    pub broken: u64,
    /// Requests handed back for unary sending.
    pub fallbacks: u64,
    /// Streams opened.
    pub streams_opened: u64,
}

/// Identifies one stream of a collector: its slot (which connection) and
/// the generation of the stream on that slot, so events from a replaced
/// stream are ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamGen {
    /// The slot, `0..BatchConfig::streams`.
    pub slot: usize,
    /// Streams opened on this slot so far, this one included.
    pub generation: u64,
}

/// A request handed back to be sent as a unary call.
#[derive(Debug)]
pub struct Fallback<W> {
    /// The request, as pushed.
    pub request: KvRequest,
    /// Its waiter.
    pub waiter: W,
    /// Its deadline.
    pub deadline: Instant,
}

#[derive(Debug)]
struct Queued<W> {
    request: KvRequest,
    waiter: W,
    deadline: Instant,
    /// When it was pushed, for [`BatchCollector::oldest_queued`].
    arrived: Instant,
}

#[derive(Debug)]
struct InFlight<W> {
    waiter: W,
    /// The command, to check the answer against.
    name: &'static str,
    /// The slot it was written to.
    slot: usize,
}

/// A decided wait for more requests.
#[derive(Copy, Clone, Debug)]
struct Wait {
    until: Instant,
    size: usize,
}

/// One stream slot (one HTTP/2 connection's stream).
#[derive(Debug)]
struct Slot {
    state: StreamState,
    generation: u64,
    /// When `Down`: no new stream before this instant.
    reopen_at: Instant,
    /// Consecutive failed streams (no probe answered), for the backoff.
    failures: u32,
    probe: Option<u64>,
    probe_pending: bool,
}

/// The batching state machine of one store's `BatchCommands` streams
/// (module docs): one queue and one wait policy, whole messages handed to
/// the ready streams in turn (client-go's `batchConn`, one per store, over
/// its `batchCommandsClients`).
///
/// ```
/// use tikv_core::rpc::KvRequest;
/// use tikv_core::rpc::batch::{BatchCollector, BatchConfig};
/// use tikv_core::time::Instant;
///
/// let mut c = BatchCollector::<&str>::new(BatchConfig::default());
/// let t = Instant::from_millis(1);
/// c.push(KvRequest::RawGet(Default::default()), "a", Instant::from_millis(100), t);
/// let slot = c.wants_stream(t).unwrap();
/// let stream = c.open_stream(slot, t);
/// let (_, probe) = c.poll_batch(t).unwrap(); // the handshake goes first
/// // ... the server echoes the probe, then requests flow:
/// # let answer = tikv_proto::tikvpb::BatchCommandsResponse {
/// #     request_ids: probe.request_ids.clone(),
/// #     responses: vec![Default::default()],
/// #     ..Default::default()
/// # };
/// c.on_response(stream, answer, t);
/// let (on, batch) = c.poll_batch(t).unwrap();
/// assert_eq!((on, batch.requests.len()), (stream, 1));
/// ```
#[derive(Debug)]
pub struct BatchCollector<W> {
    config: BatchConfig,
    slots: Vec<Slot>,
    /// The slot after the one that took the last message.
    next_slot: usize,
    queue: VecDeque<Queued<W>>,
    /// Requests written and not yet answered, by id. Only looked up and
    /// removed, never iterated in hash order (a broken stream sorts the
    /// ids it fails), so the hash order decides nothing.
    in_flight: HashMap<u64, InFlight<W>>,
    /// `(deadline, id)` of the requests written, earliest first. Entries
    /// whose request was answered stay until they reach the top, where
    /// [`prune_deadlines`](Self::prune_deadlines) drops them, so the top is
    /// always the earliest deadline still in flight. A hash map and a heap
    /// cost a fraction of two B-trees per request; ids are never reused,
    /// so a stale entry cannot name a later request.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    /// Arrival of the latest request pushed (client-go's `latestReqArriveTime`).
    latest_arrival: Option<Instant>,
    /// Arrival of the current head of the queue, and the gap before it.
    head_gap: Option<Duration>,
    /// EWMA of head arrival gaps in nanoseconds; 0 = no sample yet.
    est_gap_nanos: u64,
    /// EWMA of flushed batch sizes, in thousandths.
    avg_size_milli: u64,
    wait: Option<Wait>,
    decided: bool,
    completions: VecDeque<(W, Result<KvResponse, RpcError>)>,
    fallbacks: VecDeque<Fallback<W>>,
    stats: BatchStats,
    /// The latest event that pushed or answered a request (idleness);
    /// `None` before the first request.
    last_active: Option<Instant>,
}

impl<W> BatchCollector<W> {
    /// A collector with no stream yet.
    pub fn new(config: BatchConfig) -> Self {
        let config = config.max_batch_size(config.max_batch_size).streams(config.streams);
        let slots = (0..config.streams)
            .map(|_| Slot {
                state: StreamState::Down,
                generation: 0,
                reopen_at: Instant::ZERO,
                failures: 0,
                probe: None,
                probe_pending: false,
            })
            .collect();
        BatchCollector {
            config,
            slots,
            next_slot: 0,
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_id: 1,
            latest_arrival: None,
            head_gap: None,
            est_gap_nanos: 0,
            avg_size_milli: DEFAULT_BATCH_WAIT_SIZE * MILLI,
            wait: None,
            decided: false,
            completions: VecDeque::new(),
            fallbacks: VecDeque::new(),
            stats: BatchStats::default(),
            last_active: None,
        }
    }

    /// The best state among the streams: `Ready` if any stream is ready,
    /// else `Probing` if any is starting, else `Down`.
    pub fn state(&self) -> StreamState {
        let any = |state| self.slots.iter().any(|s| s.state == state);
        if any(StreamState::Ready) {
            StreamState::Ready
        } else if any(StreamState::Probing) {
            StreamState::Probing
        } else {
            StreamState::Down
        }
    }

    /// The state of slot `slot` (`Down` for a slot that does not exist).
    pub fn slot_state(&self, slot: usize) -> StreamState {
        self.slots.get(slot).map_or(StreamState::Down, |s| s.state)
    }

    /// The counters.
    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    /// Requests queued or sent and not yet answered.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }

    /// True if some stream is up or starting, or may be opened at `now`.
    fn usable(&self, now: Instant) -> bool {
        self.slots.iter().any(|s| s.state != StreamState::Down || now >= s.reopen_at)
    }

    /// A request arrived at `now`, to be answered through `waiter` by
    /// `deadline`. It queues for the streams, or becomes a fallback when it
    /// cannot ride one (no batch case, or every stream is down and backing
    /// off).
    pub fn push(&mut self, request: KvRequest, waiter: W, deadline: Instant, now: Instant) {
        self.touch(now);
        if !self.usable(now) || !is_batchable(&request) {
            self.stats.fallbacks += 1;
            self.fallbacks.push_back(Fallback { request, waiter, deadline });
            return;
        }
        if self.queue.is_empty() {
            // client-go's head arrival interval: measured from the latest
            // request before this one, only if time moved forward.
            self.head_gap = self
                .latest_arrival
                .map(|latest| now.saturating_duration_since(latest))
                .filter(|gap| !gap.is_zero());
        }
        self.latest_arrival = Some(self.latest_arrival.map_or(now, |l| l.max(now)));
        self.queue.push_back(Queued { request, waiter, deadline, arrived: now });
    }

    /// When the oldest request still queued arrived (`None` when none is):
    /// read before [`poll_batch`](Self::poll_batch), it tells how long the
    /// head of the batch it emits waited (client-go's
    /// `batch_wait_duration`).
    pub fn oldest_queued(&self) -> Option<Instant> {
        self.queue.front().map(|q| q.arrived)
    }

    /// A slot whose stream the runtime should open now (then call
    /// [`open_stream`](Self::open_stream)): requests are queued and the
    /// slot is down past its reopen time. Call until `None`; every slot
    /// opens on the first request, as client-go dials all its connections.
    pub fn wants_stream(&self, now: Instant) -> Option<usize> {
        if self.queue.is_empty() {
            return None;
        }
        self.slots.iter().position(|s| s.state == StreamState::Down && now >= s.reopen_at)
    }

    /// The runtime opened a new stream on `slot`; its first message must be
    /// the probe that [`poll_batch`](Self::poll_batch) returns next. Events
    /// of any earlier stream of that slot are ignored from now on.
    ///
    /// # Panics
    ///
    /// If `slot` is not below [`BatchConfig::streams`] (a runtime bug: it
    /// opens only slots [`wants_stream`](Self::wants_stream) names).
    pub fn open_stream(&mut self, slot: usize, _now: Instant) -> StreamGen {
        let id = self.take_id();
        let s = &mut self.slots[slot];
        s.generation += 1;
        s.state = StreamState::Probing;
        s.probe = Some(id);
        s.probe_pending = true;
        self.stats.streams_opened += 1;
        StreamGen { slot, generation: s.generation }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// The next message to write and the stream to write it on, if the
    /// policy says to send now: probes of new streams first, then batches,
    /// each to the next ready stream in turn. Call until `None` after every
    /// event.
    pub fn poll_batch(&mut self, now: Instant) -> Option<(StreamGen, BatchCommandsRequest)> {
        if let Some(slot) = self.slots.iter().position(|s| s.probe_pending) {
            let s = &mut self.slots[slot];
            s.probe_pending = false;
            let id = s.probe?;
            let empty = BatchCommandsEmptyRequest { test_id: id, delay_time: 0 };
            let probe = BatchCommandsRequest {
                requests: vec![batch_commands_request::Request {
                    cmd: Some(ReqCmd::Empty(Box::new(empty))),
                }],
                request_ids: vec![id],
                client_send_time_ns: 0,
            };
            return Some((StreamGen { slot, generation: s.generation }, probe));
        }
        if self.queue.is_empty() {
            return None;
        }
        let n = self.slots.len();
        let slot = (0..n)
            .map(|i| (self.next_slot + i) % n)
            .find(|&i| self.slots[i].state == StreamState::Ready)?;
        let max = self.config.max_batch_size;
        if self.queue.len() < max {
            if !self.decided {
                self.decided = true;
                self.wait = self.decide_wait(now);
            }
            if let Some(wait) = self.wait
                && now < wait.until
                && self.queue.len() < wait.size
            {
                return None;
            }
        }
        self.next_slot = (slot + 1) % n;
        let message = self.flush(slot);
        Some((StreamGen { slot, generation: self.slots[slot].generation }, message))
    }

    /// client-go's `turboBatchTrigger.needFetchMore` and
    /// `preferredBatchWaitSize`, decided once per batch.
    fn decide_wait(&mut self, now: Instant) -> Option<Wait> {
        let size = match self.config.policy {
            BatchPolicy::Basic => return None,
            BatchPolicy::Positive => DEFAULT_BATCH_WAIT_SIZE as usize,
            BatchPolicy::Standard => {
                // Only a head that followed an earlier request has a gap;
                // the first request after idleness never waits.
                let gap = self.head_gap?;
                let cap = TURBO_WAIT.as_nanos() as u64 * 5;
                let gap = (gap.as_nanos().min(u128::from(cap))) as u64;
                self.est_gap_nanos = if self.est_gap_nanos == 0 {
                    gap
                } else {
                    // w = 0.2
                    (gap + 4 * self.est_gap_nanos) / 5
                };
                // p * t = 0.8 x 100 µs
                if self.est_gap_nanos >= TURBO_WAIT.as_nanos() as u64 * 8 / 10 {
                    return None;
                }
                let whole = self.avg_size_milli / MILLI;
                let frac = self.avg_size_milli % MILLI;
                // q = 0.8: round up from .8
                (whole + u64::from(frac >= 800)) as usize
            }
        };
        if self.queue.len() >= size {
            // Without this, a batch-size estimate that fell to 1 in a quiet
            // spell would stay there under any load: a sender that runs as
            // soon as one request is queued always finds exactly one.
            return Some(Wait { until: now + YIELD_WAIT, size: self.config.max_batch_size });
        }
        Some(Wait { until: now + TURBO_WAIT, size })
    }

    fn flush(&mut self, slot: usize) -> BatchCommandsRequest {
        let n = self.queue.len().min(self.config.max_batch_size);
        let mut requests = Vec::with_capacity(n);
        let mut request_ids = Vec::with_capacity(n);
        for queued in self.queue.drain(..n) {
            let id = self.next_id;
            self.next_id = self.next_id.saturating_add(1);
            let name = queued.request.name();
            // Only batchable requests are queued (`push`).
            let Ok(cmd) = to_batch_cmd(queued.request) else { continue };
            requests.push(batch_commands_request::Request { cmd: Some(cmd) });
            request_ids.push(id);
            self.deadlines.push(Reverse((queued.deadline, id)));
            self.in_flight.insert(id, InFlight { waiter: queued.waiter, name, slot });
        }
        let n = requests.len() as u64;
        self.stats.batches += 1;
        self.stats.requests += n;
        // client-go: avgBatchWaitSize = 0.2 * len + 0.8 * avgBatchWaitSize
        self.avg_size_milli = (n * MILLI + 4 * self.avg_size_milli) / 5;
        self.wait = None;
        self.decided = false;
        // The rest of the queue (beyond max) is a new batch whose head
        // arrived with the others: no gap.
        self.head_gap = None;
        BatchCommandsRequest { requests, request_ids, client_send_time_ns: 0 }
    }

    /// The earliest instant at which the collector has something to do:
    /// the end of a batch wait, a request deadline, or the moment it
    /// becomes idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wait = self.wait.filter(|_| self.state() == StreamState::Ready).map(|w| w.until);
        let in_flight = self.deadlines.peek().map(|Reverse((d, _))| *d);
        let queued = self.queue.iter().map(|q| q.deadline).min();
        [wait, in_flight, queued, self.idle_at()].into_iter().flatten().min()
    }

    /// When the collector becomes idle if nothing happens meanwhile. Its
    /// timer fires then even with requests pending (an answer does not
    /// wake the runtime); [`on_timeout`](Self::on_timeout) then counts the
    /// pending requests as activity and moves it on.
    fn idle_at(&self) -> Option<Instant> {
        Some(self.last_active? + self.config.idle_timeout?)
    }

    /// Activity at `now` (idleness counts from the latest).
    fn touch(&mut self, now: Instant) {
        self.last_active = Some(self.last_active.map_or(now, |at| at.max(now)));
    }

    /// True when nothing has been queued or in flight for
    /// [`BatchConfig::idle_timeout`]: the runtime should close the streams
    /// (requests that arrive later start a new collector).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.pending() == 0 && self.idle_at().is_some_and(|at| now >= at)
    }

    /// The clock reached `now`: fails every request whose deadline passed.
    /// (A batch whose wait ended is returned by the next `poll_batch`.)
    pub fn on_timeout(&mut self, now: Instant) {
        if self.pending() > 0 {
            // Requests waiting are activity: idleness counts from now.
            self.touch(now);
        }
        // In (deadline, id) order, so the completions come out in it.
        while let Some(&Reverse((deadline, id))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if let Some(entry) = self.in_flight.remove(&id) {
                self.stats.expired += 1;
                self.completions.push_back((entry.waiter, Err(RpcError::DeadlineExceeded)));
            }
        }
        self.prune_deadlines();
        if self.queue.iter().any(|q| q.deadline <= now) {
            let mut kept = VecDeque::with_capacity(self.queue.len());
            for queued in self.queue.drain(..) {
                if queued.deadline <= now {
                    self.stats.expired += 1;
                    self.completions.push_back((queued.waiter, Err(RpcError::DeadlineExceeded)));
                } else {
                    kept.push_back(queued);
                }
            }
            self.queue = kept;
        }
    }

    /// True if `stream` is the current stream of its slot.
    fn is_current(&self, stream: StreamGen) -> bool {
        self.slots.get(stream.slot).is_some_and(|s| s.generation == stream.generation)
    }

    /// A message arrived on stream `stream`. Each response completes the
    /// request with its id; unknown ids (and ids written to another
    /// stream) are counted and dropped; an entry of another command than
    /// the request's becomes [`RpcError::Mismatch`] for that request.
    pub fn on_response(
        &mut self,
        stream: StreamGen,
        response: BatchCommandsResponse,
        now: Instant,
    ) {
        if !self.is_current(stream) {
            return;
        }
        self.touch(now);
        let BatchCommandsResponse { mut responses, request_ids, .. } = response;
        for (i, id) in request_ids.into_iter().enumerate() {
            let slot = &mut self.slots[stream.slot];
            if slot.probe == Some(id) {
                // Any answer to the probe proves the stream works.
                slot.probe = None;
                slot.state = StreamState::Ready;
                slot.failures = 0;
                continue;
            }
            let entry = match self.in_flight.entry(id) {
                Entry::Occupied(entry) if entry.get().slot == stream.slot => entry.remove(),
                _ => {
                    self.stats.unknown_responses += 1;
                    continue;
                }
            };
            self.stats.responses += 1;
            let cmd = responses.get_mut(i).and_then(|r| r.cmd.take());
            let result = match cmd.and_then(response_from_batch) {
                Some(response) if response.name() == entry.name => Ok(response),
                Some(_) | None => Err(RpcError::Mismatch),
            };
            self.completions.push_back((entry.waiter, result));
        }
        self.prune_deadlines();
    }

    /// Drops the answered requests' entries from the top of the deadline
    /// heap, so its top is the earliest deadline still in flight (what
    /// [`poll_timeout`](Self::poll_timeout) reports).
    fn prune_deadlines(&mut self) {
        while let Some(Reverse((_, id))) = self.deadlines.peek() {
            if self.in_flight.contains_key(id) {
                break;
            }
            self.deadlines.pop();
        }
    }

    /// Stream `stream` failed (`reason` for the error message). Every
    /// request sent on it fails with `RpcError::Unavailable("batch stream
    /// broken: {reason}")`, retryable; its slot may open a new stream after
    /// a backoff (100 ms doubling to 2 s per consecutive stream that never
    /// answered its probe). Queued requests stay for the other streams, or
    /// become fallbacks when no stream can take them.
    pub fn on_stream_broken(&mut self, stream: StreamGen, reason: &str, now: Instant) {
        if !self.is_current(stream) || self.slots[stream.slot].state == StreamState::Down {
            return;
        }
        let slot = &mut self.slots[stream.slot];
        if slot.state == StreamState::Probing {
            slot.failures = slot.failures.saturating_add(1);
        }
        let exp = slot.failures.saturating_sub(1).min(16);
        let backoff = REOPEN_BASE.saturating_mul(1 << exp).min(REOPEN_CAP);
        // A stream that worked and broke is retried on the first backoff
        // step, a stream that keeps failing to start on a growing one.
        slot.reopen_at = now + backoff;
        slot.state = StreamState::Down;
        slot.probe = None;
        slot.probe_pending = false;
        let error = RpcError::Unavailable(format!("batch stream broken: {reason}"));
        let mut broken: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, entry)| entry.slot == stream.slot)
            .map(|(id, _)| *id)
            .collect();
        // The waiters hear of it in the order their requests were written,
        // whatever the map's order.
        broken.sort_unstable();
        for id in broken {
            if let Some(entry) = self.in_flight.remove(&id) {
                self.stats.broken += 1;
                self.completions.push_back((entry.waiter, Err(error.clone())));
            }
        }
        self.prune_deadlines();
        if self.slots.iter().all(|s| s.state == StreamState::Down) {
            self.wait = None;
            self.decided = false;
            for queued in self.queue.drain(..) {
                self.stats.fallbacks += 1;
                self.fallbacks.push_back(Fallback {
                    request: queued.request,
                    waiter: queued.waiter,
                    deadline: queued.deadline,
                });
            }
        }
    }

    /// The next answer for a waiter.
    pub fn poll_completion(&mut self) -> Option<(W, Result<KvResponse, RpcError>)> {
        self.completions.pop_front()
    }

    /// The next request to send as a unary call instead.
    pub fn poll_fallback(&mut self) -> Option<Fallback<W>> {
        self.fallbacks.pop_front()
    }
}

#[cfg(test)]
mod tests;
