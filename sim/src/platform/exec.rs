//! The virtual-time executor and the simulated network it drives.
//!
//! One [`Shared`] value holds the whole simulation: the task table and its
//! ready queue, the clock, the event queue (timers, messages on the wire,
//! faults), the [`Network`], the [`Cluster`] and the trace. The loop in
//! [`Shared::run`] polls ready tasks in wake order until none is ready, then
//! pops the earliest event (ties by scheduling order), moves the clock to it
//! and carries it out. Nothing is ever polled while the state's lock is held,
//! so tasks may spawn, sleep, call and wake freely.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};

use futures::future::{self, BoxFuture, FutureExt};
use tikv_core::region::SLOW_SCORE_THRESHOLD;
use tikv_core::rng::Rng;
use tikv_core::rpc::Target;
use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse, Request, Response, RpcError};
use tikv_core::time::{Duration, Instant};
use tikv_driver::{HealthFeedbackSink, Runtime, Transport};
use tikv_proto::kvrpcpb::HealthFeedback;

use crate::net::{Endpoint, Network, Recovery};
use crate::world::Fault;
use crate::world::gc_workload::{GcStats, GcWorld, after_collection};
use crate::{Cluster, KvAnswer, LockWaitToken};

use super::SimStats;

/// The task id of the user's main future (never in the task table: it
/// need not be `Send`).
pub(crate) const MAIN: u64 = 0;

/// The process of the user's closure and of what it spawns outside any
/// process of its own (it never crashes).
pub(crate) const ROOT: u64 = 0;

/// Everything one simulation owns.
pub(crate) struct Shared {
    state: Mutex<State>,
}

struct State {
    now: Instant,
    rng: Rng,
    net: Network,
    cluster: Cluster,
    /// Pending events by `(instant, scheduling order)`.
    events: BTreeMap<(Instant, u64), Event>,
    next_seq: u64,
    /// Spawned tasks: their process and future (`None` while polled).
    tasks: BTreeMap<u64, (u64, Option<BoxFuture<'static, ()>>)>,
    /// The process of the task being polled ([`ROOT`] for the closure).
    current_process: u64,
    next_process: u64,
    /// Crashed processes: whatever they or their clients spawn is dropped.
    crashed: BTreeSet<u64>,
    /// Processes that built a client ([`Fault::CrashProcess`]`(None)`
    /// picks among the live ones).
    client_processes: BTreeSet<u64>,
    /// The GC world's checks, run around every `AdvanceGCSafePoint`.
    gc_checks: Option<Arc<GcChecks>>,
    /// Tasks a crash took out of the table, dropped once the state's lock
    /// is released (their drops may spawn, and are refused).
    graveyard: Vec<BoxFuture<'static, ()>>,
    /// Woken tasks in wake order, each at most once.
    ready: VecDeque<u64>,
    queued: BTreeSet<u64>,
    next_task: u64,
    /// Clients built so far (their numbers are the network's client ids).
    clients: usize,
    next_call: u64,
    /// FNV-1a over every trace line.
    hash: u64,
    trace: Option<String>,
    stats: SimStats,
    /// When the drawn fault schedule heals.
    heal_at: Option<Instant>,
    /// `PessimisticLock` requests parked in the cluster's lock manager.
    parked: BTreeMap<LockWaitToken, Parked>,
    /// When the lock manager's next timeout or delayed wake-up is due
    /// (armed as an [`Event::LockWaits`]).
    lock_wait_timer: Option<Instant>,
    /// Each client's health feedback sink
    /// ([`Transport::set_health_feedback_sink`]), by client number.
    feedback_sinks: BTreeMap<usize, HealthFeedbackSink>,
    /// Feedback that arrived, handed to its sink once the state's lock is
    /// released (a sink takes the client's own locks).
    arrived_feedback: Vec<(HealthFeedbackSink, HealthFeedback, Instant)>,
}

/// The GC world's checker state (the core-level GC world's
/// [`GcWorld`]), shared by the GC client's tasks and the executor, which
/// runs the collection checks when PD applies `AdvanceGCSafePoint`. Its
/// lock is taken after the state's, never the other way round.
pub(crate) struct GcChecks {
    inner: Mutex<GcCheckState>,
}

/// What [`GcChecks`] guards.
pub(crate) struct GcCheckState {
    pub(crate) world: GcWorld,
    pub(crate) stats: GcStats,
    pub(crate) violations: Vec<String>,
}

impl GcChecks {
    pub(crate) fn new() -> Arc<GcChecks> {
        let state = GcCheckState {
            world: GcWorld::new(0, 0),
            stats: GcStats::default(),
            violations: vec![],
        };
        Arc::new(GcChecks { inner: Mutex::new(state) })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, GcCheckState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A parked lock request: where its answer goes once the lock manager
/// gives one.
struct Parked {
    call: u64,
    client: usize,
    endpoint: Option<Endpoint>,
    /// The store whose lock manager holds it.
    store: u64,
    reply: Weak<Slot<Reply>>,
}

enum Event {
    /// A sleep's deadline.
    Timer(Weak<Slot<()>>),
    /// A request reaches its server.
    Arrive(Box<Arrival>),
    /// An answer reaches its client, with the health feedback of the store
    /// that gave it (TiKV carries it on `BatchCommands` answers).
    Answer {
        call: u64,
        client: usize,
        reply: Weak<Slot<Reply>>,
        result: Reply,
        duplicate: bool,
        feedback: Option<HealthFeedback>,
    },
    /// A call's deadline: the transport stops waiting.
    CallDeadline { call: u64, reply: Weak<Slot<Reply>> },
    /// A planned fault strikes.
    Fault(Fault),
    /// A fault ends.
    Recover(Recovery),
    /// Every fault heals and the network turns reliable.
    Heal,
    /// The lock manager's timeouts and delayed wake-ups fall due.
    LockWaits,
}

struct Arrival {
    call: u64,
    client: usize,
    target: Target,
    request: Request,
    deadline: Instant,
    reply: Weak<Slot<Reply>>,
}

type Reply = Result<Response, RpcError>;

/// A one-shot value a future waits for (a timer's firing, a call's answer).
pub(crate) struct Slot<T> {
    inner: Mutex<SlotState<T>>,
}

enum SlotState<T> {
    Waiting(Option<Waker>),
    Ready(T),
    Taken,
}

impl<T> Slot<T> {
    fn new() -> Arc<Slot<T>> {
        Arc::new(Slot { inner: Mutex::new(SlotState::Waiting(None)) })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills a waiting slot; returns the waker to wake (after the caller
    /// released its own locks), or `Err(value)` when the slot was already
    /// filled.
    fn fill(&self, value: T) -> Result<Option<Waker>, T> {
        let mut inner = self.lock();
        match &mut *inner {
            SlotState::Waiting(waker) => {
                let waker = waker.take();
                *inner = SlotState::Ready(value);
                Ok(waker)
            }
            _ => Err(value),
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut inner = self.lock();
        match std::mem::replace(&mut *inner, SlotState::Taken) {
            SlotState::Ready(value) => Poll::Ready(value),
            SlotState::Waiting(_) => {
                *inner = SlotState::Waiting(Some(cx.waker().clone()));
                Poll::Pending
            }
            // Polled after completion: stay pending, as a fused future would.
            SlotState::Taken => Poll::Pending,
        }
    }
}

/// Waits for a [`Slot`] (keeping it alive, so its event is not skipped).
struct SlotFuture<T>(Arc<Slot<T>>);

impl<T> Future for SlotFuture<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.0.poll_take(cx)
    }
}

/// Wakes a task by putting it on the ready queue.
struct TaskWaker {
    id: u64,
    shared: Weak<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().make_ready(self.id);
        }
    }
}

/// How [`Shared::run`] ended without the main future finishing.
pub(crate) enum Stuck {
    /// Every task idle, the main future pending, nothing scheduled.
    Deadlock,
    /// The virtual time limit or the event limit was reached.
    Limit(String),
}

/// What the main loop does next.
enum Step {
    Progress,
    Stuck(Stuck),
}

/// The limits of one run.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) time: Instant,
    pub(crate) events: u64,
}

impl State {
    fn make_ready(&mut self, id: u64) {
        if self.queued.insert(id) {
            self.ready.push_back(id);
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.next_seq += 1;
        self.events.insert((at.max(self.now), self.next_seq), event);
    }

    fn log(&mut self, line: std::fmt::Arguments<'_>) {
        // Streamed into the hash (and the kept trace): every message's
        // full content is formatted, so no line is built on the side.
        let mut sink = TraceSink { hash: &mut self.hash, text: self.trace.as_mut() };
        let _ = write!(sink, "{} {line}", self.now);
        if let Some(t) = &mut self.trace {
            t.push('\n');
        }
    }

    /// Carries out `event` at the current instant; returns a waker to wake
    /// once the lock is released.
    fn handle(&mut self, event: Event) -> Option<Waker> {
        match event {
            Event::Timer(slot) => {
                let slot = slot.upgrade()?;
                self.stats.timers += 1;
                self.log(format_args!("timer"));
                slot.fill(()).ok().flatten()
            }
            Event::Arrive(arrival) => {
                self.arrive(*arrival);
                None
            }
            Event::Answer { call, client, reply, result, duplicate, feedback } => {
                let slot = reply.upgrade()?;
                if let Some(feedback) = feedback {
                    self.feedback_arrived(client, feedback);
                }
                let summary = Summary::of(&result);
                match slot.fill(result) {
                    Ok(waker) => {
                        self.log(format_args!("recv #{call} {summary}"));
                        waker
                    }
                    Err(_) => {
                        let what = if duplicate { "duplicate" } else { "late answer" };
                        self.log(format_args!("recv #{call}: {what} dropped"));
                        None
                    }
                }
            }
            Event::CallDeadline { call, reply } => {
                let slot = reply.upgrade()?;
                let waker = slot.fill(Err(RpcError::DeadlineExceeded)).ok()?;
                // The client stopped waiting: TiKV drops a parked request
                // whose caller's deadline passed.
                self.cancel_parked(|p| p.call == call);
                self.log(format_args!("deadline exceeded #{call}"));
                waker
            }
            Event::Fault(fault) => {
                self.fault(&fault);
                None
            }
            Event::Recover(recovery) => {
                if let Some(line) = self.net.recover(&self.cluster, recovery) {
                    self.log(format_args!("{line}"));
                }
                None
            }
            Event::Heal => {
                self.net.heal(&self.cluster);
                self.log(format_args!("heal: all faults healed, network reliable"));
                None
            }
            Event::LockWaits => {
                if self.lock_wait_timer == Some(self.now) {
                    self.lock_wait_timer = None;
                    self.cluster.advance_lock_waits(self.now);
                    self.collect_lock_answers();
                }
                None
            }
        }
    }

    /// Sends the answers of the parked lock requests that were woken,
    /// timed out or failed, drops those whose caller went away, and keeps
    /// the lock manager's timer armed.
    fn collect_lock_answers(&mut self) {
        if !self.parked.is_empty() {
            // A call future dropped (its transaction abandoned, its client
            // gone) is a closed connection to TiKV.
            self.cancel_parked(|p| p.reply.strong_count() == 0);
            let tokens: Vec<LockWaitToken> = self.parked.keys().copied().collect();
            for token in tokens {
                let Some(resp) = self.cluster.take_lock_wait_answer(token) else { continue };
                let Some(p) = self.parked.remove(&token) else { continue };
                self.log(format_args!("server: #{} stops waiting ({token:?})", p.call));
                let result = Ok(Response::Kv(KvResponse::PessimisticLock(Box::new(resp))));
                self.answer(p.call, p.client, p.endpoint, Some(p.store), p.reply, result);
            }
        }
        let next = self.cluster.next_lock_wait_deadline();
        if next != self.lock_wait_timer {
            self.lock_wait_timer = next;
            if let Some(at) = next {
                self.schedule(at, Event::LockWaits);
            }
        }
    }

    /// Takes the parked requests `which` picks out of the lock manager's
    /// queues and wait-for graph.
    fn cancel_parked(&mut self, which: impl Fn(&Parked) -> bool) {
        let tokens: Vec<LockWaitToken> =
            self.parked.iter().filter(|(_, p)| which(p)).map(|(t, _)| *t).collect();
        for token in tokens {
            self.parked.remove(&token);
            self.cluster.cancel_lock_wait(token);
            self.log(format_args!("server: lock wait {token:?} cancelled by its caller"));
        }
    }

    fn fault(&mut self, fault: &Fault) {
        if let Fault::CrashProcess(which) = fault {
            self.stats.faults += 1;
            let outcome = match which.or_else(|| self.pick_live_client_process()) {
                Some(p) if p != ROOT => {
                    self.crash(p);
                    format!("process p{p} crashed")
                }
                _ => "no live client process".into(),
            };
            self.log(format_args!("fault: {fault}: {outcome}"));
            return;
        }
        if self.net.is_calm() {
            return;
        }
        self.stats.faults += 1;
        let cluster = self.cluster.clone();
        // A split lands on a key the workload wrote: the k-th (modulo) of
        // every raw and transactional key stored now, in key order.
        let split_key = |k: u32| {
            let mut keys: BTreeSet<Vec<u8>> = cluster.raw_snapshot("default").into_keys().collect();
            keys.extend(cluster.mvcc_snapshot(u64::MAX).into_keys());
            let n = keys.len();
            (n > 0).then(|| keys.into_iter().nth(k as usize % n)).flatten()
        };
        let (outcome, recovery) = self.net.apply_fault(&self.cluster, fault, split_key);
        if let Some((after, recovery)) = recovery {
            self.schedule(self.now + after, Event::Recover(recovery));
        }
        self.log(format_args!("fault: {fault}: {outcome}"));
    }

    /// A live process (not crashed, with a task left) that built a
    /// client, drawn from the seeded generator.
    fn pick_live_client_process(&mut self) -> Option<u64> {
        let live: Vec<u64> = self
            .client_processes
            .iter()
            .copied()
            .filter(|p| !self.crashed.contains(p))
            .filter(|p| self.tasks.values().any(|(q, _)| q == p))
            .collect();
        if live.is_empty() {
            return None;
        }
        let i = self.rng.gen_range(0, live.len() as u64) as usize;
        Some(live[i])
    }

    /// Crashes `process`: its tasks go to the graveyard (dropped once the
    /// lock is released), and whatever it spawns later is refused.
    fn crash(&mut self, process: u64) {
        if process == ROOT || !self.crashed.insert(process) {
            return;
        }
        let ids: Vec<u64> =
            self.tasks.iter().filter(|(_, (p, _))| *p == process).map(|(id, _)| *id).collect();
        self.log(format_args!("crash: process p{process} and its {} tasks", ids.len()));
        // A task crashing its own process is being polled (its future is
        // out of the table): it is dropped when its poll returns.
        for id in ids {
            if let Some((_, Some(fut))) = self.tasks.remove(&id) {
                self.graveyard.push(fut);
            }
        }
    }

    fn send(
        &mut self,
        client: usize,
        target: &Target,
        request: Request,
        deadline: Instant,
        reply: &Arc<Slot<Reply>>,
    ) -> Option<Waker> {
        self.next_call += 1;
        let call = self.next_call;
        self.stats.rpcs += 1;
        let body = RequestDebug(&request);
        self.log(format_args!(
            "send #{call} c{client} {} -> {target:?} deadline {deadline} {body}",
            request.name()
        ));
        if *target == Target::Oracle {
            let e = RpcError::Unavailable("the simulated network has no local oracle".into());
            return reply.fill(Err(e)).ok().flatten();
        }
        let weak = Arc::downgrade(reply);
        if deadline != Instant::MAX {
            self.schedule(deadline, Event::CallDeadline { call, reply: weak.clone() });
        }
        let Some(delay) = self.net.request_delay(&mut self.rng) else {
            self.stats.lost += 1;
            self.log(format_args!("net: request #{call} lost"));
            return None;
        };
        let arrival =
            Arrival { call, client, target: target.clone(), request, deadline, reply: weak };
        self.schedule(self.now + delay, Event::Arrive(Box::new(arrival)));
        None
    }

    fn arrive(&mut self, a: Arrival) {
        let call = a.call;
        if self.now > a.deadline {
            self.log(format_args!("server: request #{call} arrived after its deadline, refused"));
            return;
        }
        let endpoint = self.net.endpoint(&a.target);
        if self.net.is_cut(a.client, endpoint) {
            self.stats.lost += 1;
            self.log(format_args!("net: request #{call} lost in a partition"));
            return;
        }
        let served = match Network::serving(&self.cluster, &a.target, endpoint) {
            Ok(served) => served,
            Err(e) => {
                self.answer(call, a.client, endpoint, None, a.reply, Err(e));
                return;
            }
        };
        if let (Some(proxy), Some(Endpoint::Store(to))) = (served.forwarded_by, served.at) {
            self.stats.forwarded += 1;
            self.log(format_args!("server: store {proxy} forwards #{call} to {to}"));
        }
        let served_at = served.at;
        // The store that handles a TiKV request: its latency and health
        // feedback go with the answer.
        let kv_store = match (served_at, &a.request) {
            (Some(Endpoint::Store(s)), Request::Kv(_)) => Some(s),
            _ => None,
        };
        let now = self.now;
        let result = match (served_at, a.request) {
            (Some(Endpoint::Pd(m)), Request::Pd(req)) => {
                // The GC world checks every collection the stores apply.
                let before = match (&req, &self.gc_checks) {
                    (PdRequest::AdvanceGcSafePoint(r), Some(checks)) => {
                        Some(checks.lock().world.before_collection(&self.cluster, r.target))
                    }
                    _ => None,
                };
                let result = self.cluster.handle_pd(m, req, now).map(Response::Pd);
                if let (Some(before), Some(checks)) = (before, &self.gc_checks) {
                    let checks = &mut *checks.lock();
                    after_collection(
                        &self.cluster,
                        before,
                        &mut checks.stats,
                        &mut checks.violations,
                    );
                }
                result
            }
            (Some(Endpoint::Store(s)), Request::Kv(req)) => {
                // TiKV's lock manager: a lock request that meets a lock
                // waits in the store (in virtual time) until the lock is
                // released, its wait times out, or it closes a deadlock.
                let result = match self.cluster.handle_kv_waiting(s, req, now) {
                    Ok(KvAnswer::Waiting(token)) => {
                        self.stats.lock_waits += 1;
                        self.log(format_args!("server: #{call} waits for a lock ({token:?})"));
                        let parked =
                            Parked { call, client: a.client, endpoint, store: s, reply: a.reply };
                        self.parked.insert(token, parked);
                        self.collect_lock_answers();
                        return;
                    }
                    Ok(KvAnswer::Ready(resp)) => Ok(Response::Kv(resp)),
                    Err(e) => Err(e),
                };
                // The request may have released locks others wait for.
                self.collect_lock_answers();
                result
            }
            (Some(Endpoint::Store(s)), Request::StoreSafeTs(req)) => self
                .cluster
                .get_store_safe_ts(s, &req, now)
                .map(|r| Response::StoreSafeTs(Box::new(r))),
            // gRPC health: a running store is SERVING; a stopped one does
            // not answer (as its closed listener on the gRPC face).
            (Some(Endpoint::Store(s)), Request::HealthCheck)
                if self.cluster.is_store_running(s) =>
            {
                self.cluster.count_health_check(s);
                Ok(Response::HealthCheck(tikv_proto::health::HealthCheckResponse {
                    status: tikv_proto::health::health_check_response::ServingStatus::Serving
                        as i32,
                }))
            }
            _ => Err(RpcError::Unavailable(format!("no server at {:?}", a.target))),
        };
        self.answer(call, a.client, endpoint, kv_store, a.reply, result);
    }

    /// Sends a server's answer to `call` back over the network, through
    /// `endpoint` (where the request came in). An answer store `kv_store`
    /// gave to a TiKV request leaves it late by the store's latency
    /// ([`Fault::StoreLatency`]) and carries its health feedback.
    fn answer(
        &mut self,
        call: u64,
        client: usize,
        endpoint: Option<Endpoint>,
        kv_store: Option<u64>,
        reply: Weak<Slot<Reply>>,
        result: Reply,
    ) {
        self.log(format_args!("server: #{call} -> {}", ReplyDebug(&result)));
        let (late, feedback) = match kv_store {
            Some(s) if result.is_ok() => {
                (self.cluster.store_latency(s), Some(self.cluster.health_feedback(s)))
            }
            _ => (Duration::ZERO, None),
        };
        let Some(delay) = self.net.answer_delay(&mut self.rng, client, endpoint, late) else {
            self.stats.lost += 1;
            self.log(format_args!("net: answer #{call} lost"));
            return;
        };
        if !late.is_zero() {
            self.stats.late_answers += 1;
            self.log(format_args!("server: the answer to #{call} leaves {late:?} late"));
        }
        let at = self.now + delay.first;
        if let Some(duplicate) = delay.duplicate {
            self.stats.duplicates += 1;
            let event = Event::Answer {
                call,
                client,
                reply: reply.clone(),
                result: result.clone(),
                duplicate: true,
                feedback,
            };
            self.schedule(at + duplicate, event);
        }
        let event = Event::Answer { call, client, reply, result, duplicate: false, feedback };
        self.schedule(at, event);
    }

    /// TiKV's health feedback reaches `client`: handed to its sink (once
    /// the state's lock is released), as the gRPC transport hands what
    /// arrives on a `BatchCommands` stream.
    fn feedback_arrived(&mut self, client: usize, feedback: HealthFeedback) {
        if feedback.slow_score >= SLOW_SCORE_THRESHOLD as i32 {
            self.stats.slow_feedback += 1;
            self.log(format_args!(
                "c{client} hears store {} is slow (score {})",
                feedback.store_id, feedback.slow_score
            ));
        }
        if let Some(sink) = self.feedback_sinks.get(&client) {
            self.arrived_feedback.push((sink.clone(), feedback, self.now));
        }
    }

    /// Pops the next live event: dead timers and answers nobody waits for
    /// are skipped without moving the clock.
    fn next_event(&mut self, limits: Limits) -> Result<Event, Stuck> {
        loop {
            let Some(((at, _), event)) = self.events.pop_first() else {
                return Err(Stuck::Deadlock);
            };
            let dead = match &event {
                Event::Timer(slot) => slot.strong_count() == 0,
                Event::Answer { reply, .. } | Event::CallDeadline { reply, .. } => {
                    reply.strong_count() == 0
                }
                _ => false,
            };
            if dead {
                continue;
            }
            if at > limits.time {
                return Err(Stuck::Limit(format!("virtual time limit {} reached", limits.time)));
            }
            if self.stats.events >= limits.events {
                return Err(Stuck::Limit(format!("event limit {} reached", limits.events)));
            }
            self.now = at;
            self.stats.events += 1;
            return Ok(event);
        }
    }
}

impl Shared {
    pub(crate) fn new(
        seed: u64,
        rng: Rng,
        net: Network,
        cluster: Cluster,
        trace: bool,
    ) -> Arc<Shared> {
        let state = State {
            now: Instant::ZERO,
            rng,
            net,
            cluster,
            events: BTreeMap::new(),
            next_seq: 0,
            tasks: BTreeMap::new(),
            current_process: ROOT,
            next_process: ROOT + 1,
            crashed: BTreeSet::new(),
            client_processes: BTreeSet::new(),
            graveyard: Vec::new(),
            gc_checks: None,
            ready: VecDeque::new(),
            queued: BTreeSet::new(),
            next_task: MAIN + 1,
            clients: 0,
            next_call: 0,
            hash: 0xcbf2_9ce4_8422_2325,
            trace: trace.then(String::new),
            stats: SimStats::default(),
            heal_at: None,
            parked: BTreeMap::new(),
            lock_wait_timer: None,
            feedback_sinks: BTreeMap::new(),
            arrived_feedback: Vec::new(),
        };
        let shared = Arc::new(Shared { state: Mutex::new(state) });
        shared.lock().log(format_args!("seed {seed}"));
        shared
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock is a bug of this module; the state is
        // still consistent enough to report it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now(&self) -> Instant {
        self.lock().now
    }

    pub(crate) fn cluster(&self) -> Cluster {
        self.lock().cluster.clone()
    }

    pub(crate) fn pd_urls(&self) -> Vec<String> {
        self.lock().net.pd_urls().to_vec()
    }

    /// Whether the run's clients forward through a proxy store
    /// ([`crate::world::Swarm::forwarding`]).
    pub(crate) fn forwarding(&self) -> bool {
        self.lock().net.forwarding()
    }

    /// Serves `cluster` instead of the current one, its PD members at
    /// `pd_urls`; refused once a client was built (it would hold regions,
    /// stores and timestamps of the old cluster).
    pub(crate) fn replace_cluster(
        &self,
        cluster: Cluster,
        pd_urls: Vec<String>,
    ) -> Result<(), Cluster> {
        let mut st = self.lock();
        if st.clients > 0 || !st.parked.is_empty() {
            return Err(cluster);
        }
        st.log(format_args!(
            "cluster replaced: {} stores, {} regions, PD at {pd_urls:?}",
            cluster.store_ids().len(),
            cluster.regions().len()
        ));
        st.cluster = cluster;
        st.net.set_pd_urls(pd_urls);
        Ok(())
    }

    pub(crate) fn next_u64(&self) -> u64 {
        self.lock().rng.next_u64()
    }

    /// A new client of the current process: its number on the network
    /// and its process.
    pub(crate) fn register_client(&self) -> (usize, u64) {
        let mut st = self.lock();
        st.clients += 1;
        let n = st.clients - 1;
        let process = st.current_process;
        if process != ROOT {
            st.client_processes.insert(process);
        }
        st.log(format_args!("client c{n} built in process p{process}"));
        (n, process)
    }

    /// The process of the task being polled.
    pub(crate) fn current_process(&self) -> u64 {
        self.lock().current_process
    }

    /// A new process id.
    pub(crate) fn new_process(&self) -> u64 {
        let mut st = self.lock();
        st.next_process += 1;
        st.next_process - 1
    }

    /// Crashes `process`: its tasks (the application's and its clients'
    /// background tasks) are dropped now, and whatever it would spawn
    /// later is dropped at once. Its requests already on the wire still
    /// reach their servers; their answers find nobody.
    pub(crate) fn crash(&self, process: u64) {
        let dropped = {
            let mut st = self.lock();
            st.crash(process);
            std::mem::take(&mut st.graveyard)
        };
        // Dropped without the lock: drops may spawn (and are refused).
        drop(dropped);
    }
    /// Runs `checks` around every `AdvanceGCSafePoint` PD applies from
    /// now on.
    pub(crate) fn set_gc_checks(&self, checks: Arc<GcChecks>) {
        self.lock().gc_checks = Some(checks);
    }

    pub(crate) fn schedule_fault(&self, at: Instant, fault: Fault) {
        self.lock().schedule(at, Event::Fault(fault));
    }

    pub(crate) fn schedule_heal(&self, at: Instant) {
        let mut st = self.lock();
        st.heal_at = Some(at);
        st.schedule(at, Event::Heal);
    }

    pub(crate) fn heal_at(&self) -> Option<Instant> {
        self.lock().heal_at
    }

    /// Applies `fault` now.
    pub(crate) fn fault(&self, fault: &Fault) {
        let dropped = {
            let mut st = self.lock();
            st.fault(fault);
            std::mem::take(&mut st.graveyard)
        };
        drop(dropped);
    }

    /// Heals everything now.
    pub(crate) fn heal(&self) {
        let mut st = self.lock();
        let cluster = st.cluster.clone();
        st.net.heal(&cluster);
        st.log(format_args!("heal: all faults healed by the user, network reliable"));
    }

    pub(crate) fn log_user(&self, line: &str) {
        self.lock().log(format_args!("user: {line}"));
    }

    pub(crate) fn log_line(&self, line: &str) {
        self.lock().log(format_args!("{line}"));
    }

    pub(crate) fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// The trace hash, with the cluster's final data folded in.
    pub(crate) fn finish_trace(&self) -> (u64, String) {
        let mut st = self.lock();
        let raw = st.cluster.raw_snapshot("default");
        let mvcc = st.cluster.mvcc_snapshot(u64::MAX);
        let locks = st.cluster.locks().len();
        st.log(format_args!("end: raw {raw:?}; txn {mvcc:?}; {locks} locks"));
        (st.hash, st.trace.clone().unwrap_or_default())
    }

    /// Spawns `fut` in `process` (the current one when `None`); refused
    /// (dropped) when that process crashed.
    fn spawn_in(self: &Arc<Self>, process: Option<u64>, fut: BoxFuture<'static, ()>) {
        let mut st = self.lock();
        let process = process.unwrap_or(st.current_process);
        if st.crashed.contains(&process) {
            drop(st);
            drop(fut);
            return;
        }
        let id = st.next_task;
        st.next_task += 1;
        st.stats.tasks += 1;
        st.tasks.insert(id, (process, Some(fut)));
        st.make_ready(id);
    }

    fn sleep_until(self: &Arc<Self>, deadline: Instant) -> BoxFuture<'static, ()> {
        if deadline == Instant::MAX {
            return future::pending().boxed();
        }
        let slot = Slot::new();
        let mut st = self.lock();
        if deadline <= st.now {
            return future::ready(()).boxed();
        }
        st.schedule(deadline, Event::Timer(Arc::downgrade(&slot)));
        SlotFuture(slot).boxed()
    }

    fn call(
        &self,
        client: usize,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Reply> {
        let reply = Slot::new();
        let waker = self.lock().send(client, target, request, deadline, &reply);
        if let Some(waker) = waker {
            waker.wake();
        }
        SlotFuture(reply).boxed()
    }

    fn set_health_feedback_sink(&self, client: usize, sink: HealthFeedbackSink) {
        self.lock().feedback_sinks.insert(client, sink);
    }

    fn waker(self: &Arc<Self>, id: u64) -> Waker {
        Waker::from(Arc::new(TaskWaker { id, shared: Arc::downgrade(self) }))
    }

    /// Polls `main` and every task it spawns until `main` finishes, or
    /// the run gets stuck.
    pub(crate) fn run<F: Future>(
        self: &Arc<Self>,
        main: F,
        limits: Limits,
    ) -> Result<F::Output, Stuck> {
        let mut main = std::pin::pin!(main);
        let main_waker = self.waker(MAIN);
        self.lock().make_ready(MAIN);
        loop {
            while let Some(id) = self.pop_ready() {
                if id == MAIN {
                    let mut cx = Context::from_waker(&main_waker);
                    if let Poll::Ready(out) = main.as_mut().poll(&mut cx) {
                        return Ok(out);
                    }
                } else {
                    self.poll_task(id);
                }
            }
            match self.step(limits) {
                Step::Progress => {}
                Step::Stuck(stuck) => return Err(stuck),
            }
        }
    }

    fn pop_ready(&self) -> Option<u64> {
        let mut st = self.lock();
        let id = st.ready.pop_front()?;
        st.queued.remove(&id);
        Some(id)
    }

    fn poll_task(self: &Arc<Self>, id: u64) {
        let (process, mut fut) = {
            let mut st = self.lock();
            let Some((process, Some(fut))) = st.tasks.get_mut(&id).map(|(p, f)| (*p, f.take()))
            else {
                return;
            };
            st.current_process = process;
            (process, fut)
        };
        let waker = self.waker(id);
        let done = fut.as_mut().poll(&mut Context::from_waker(&waker)).is_ready();
        let mut st = self.lock();
        st.current_process = ROOT;
        if done || st.crashed.contains(&process) {
            st.tasks.remove(&id);
            drop(st);
            drop(fut);
        } else if let Some((_, slot)) = st.tasks.get_mut(&id) {
            *slot = Some(fut);
        }
    }

    /// Every task is idle: the clock moves to the next event.
    fn step(&self, limits: Limits) -> Step {
        let (waker, dropped, feedback) = {
            let mut st = self.lock();
            let event = match st.next_event(limits) {
                Ok(event) => event,
                Err(stuck) => return Step::Stuck(stuck),
            };
            let waker = st.handle(event);
            (waker, std::mem::take(&mut st.graveyard), std::mem::take(&mut st.arrived_feedback))
        };
        // A scheduled crash's tasks, dropped without the lock.
        drop(dropped);
        // Before the answer it came with is handed out.
        for (sink, feedback, at) in feedback {
            sink(feedback, at);
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        Step::Progress
    }

    /// Drops every task (and what their drops spawn), breaking the cycle
    /// between the tasks and the runtime handles they hold.
    pub(crate) fn shutdown(&self) {
        for _ in 0..16 {
            let tasks = std::mem::take(&mut self.lock().tasks);
            if tasks.is_empty() {
                break;
            }
            drop(tasks);
        }
        let mut st = self.lock();
        st.tasks.clear();
        st.events.clear();
        st.ready.clear();
        st.queued.clear();
    }
}

/// `tikv_driver::Runtime` on the simulation's executor and virtual clock.
#[derive(Clone)]
pub struct SimRuntime {
    pub(crate) shared: Arc<Shared>,
    /// The process of the client it serves.
    pub(crate) process: u64,
}

impl std::fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimRuntime(now {})", self.shared.now())
    }
}

impl Runtime for SimRuntime {
    fn now(&self) -> Instant {
        self.shared.now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        self.shared.sleep_until(deadline)
    }

    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        // A client's background tasks belong to the process that built it.
        self.shared.spawn_in(Some(self.process), fut);
    }
}

/// `tikv_driver::Transport` over the simulated network to the in-process
/// cluster, as one client (the network's partitions name clients).
#[derive(Clone)]
pub struct SimTransport {
    pub(crate) shared: Arc<Shared>,
    pub(crate) client: usize,
}

impl std::fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimTransport(client {})", self.client)
    }
}

impl Transport for SimTransport {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        self.shared.call(self.client, target, request, deadline)
    }

    /// Every TiKV answer on the simulated network carries its store's
    /// health feedback, as the `BatchCommands` answers of the gRPC
    /// transport do; `sink` gets it when the answer arrives.
    fn set_health_feedback_sink(&self, sink: HealthFeedbackSink) {
        self.shared.set_health_feedback_sink(self.client, sink);
    }
}

/// A sleep of `d` on the simulation's clock.
pub(crate) fn sleep(shared: &Arc<Shared>, d: Duration) -> BoxFuture<'static, ()> {
    let at = shared.now().saturating_add(d);
    shared.sleep_until(at)
}

pub(crate) fn spawn(shared: &Arc<Shared>, process: Option<u64>, fut: BoxFuture<'static, ()>) {
    shared.spawn_in(process, fut);
}

/// Folds trace text into the FNV-1a hash and, when kept, the trace.
struct TraceSink<'a> {
    hash: &'a mut u64,
    text: Option<&'a mut String>,
}

impl std::fmt::Write for TraceSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut hash = *self.hash;
        for b in s.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        *self.hash = hash;
        if let Some(t) = &mut self.text {
            t.push_str(s);
        }
        Ok(())
    }
}

/// An answer's name or error, for the line of its delivery.
enum Summary {
    Name(&'static str),
    Error(String),
}

impl Summary {
    fn of(result: &Reply) -> Summary {
        match result {
            Err(e) => Summary::Error(e.to_string()),
            Ok(r) => Summary::Name(response_name(r)),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Summary::Name(name) => f.write_str(name),
            Summary::Error(e) => write!(f, "error: {e}"),
        }
    }
}

fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Kv(r) => r.name(),
        Response::Pd(r) => r.name(),
        Response::Timestamp(_) => "timestamp",
        Response::StoreSafeTs(_) => "get_store_safe_ts",
        Response::HealthCheck(_) => "health_check",
    }
}

// The full content of every message goes into the trace hash, so two runs
// with equal hashes exchanged byte-identical messages.
macro_rules! kv_debug {
    ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        fn kv_request_debug(r: &KvRequest, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match r { $(KvRequest::$variant(m) => write!(f, "{m:?}"),)* }
        }
        fn kv_response_debug(r: &KvResponse, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match r { $(KvResponse::$variant(m) => write!(f, "{m:?}"),)* }
        }
    };
}
tikv_core::for_each_kv_rpc!(kv_debug);

macro_rules! pd_debug {
    ($(($variant:ident, $service:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        fn pd_request_debug(r: &PdRequest, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match r { $(PdRequest::$variant(m) => write!(f, "{m:?}"),)* PdRequest::Tso(m) => write!(f, "{m:?}") }
        }
        fn pd_response_debug(r: &PdResponse, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match r { $(PdResponse::$variant(m) => write!(f, "{m:?}"),)* PdResponse::Tso(m) => write!(f, "{m:?}") }
        }
    };
}
tikv_core::for_each_pd_rpc!(pd_debug);

/// A request's full content.
struct RequestDebug<'a>(&'a Request);

impl std::fmt::Display for RequestDebug<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Request::Kv(r) => kv_request_debug(r, f),
            Request::Pd(r) => pd_request_debug(r, f),
            Request::Timestamp => f.write_str("timestamp"),
            Request::StoreSafeTs(m) => write!(f, "{m:?}"),
            Request::HealthCheck => f.write_str("health check"),
        }
    }
}

/// An answer's full content.
struct ReplyDebug<'a>(&'a Reply);

impl std::fmt::Display for ReplyDebug<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Err(e) => write!(f, "error: {e}"),
            Ok(Response::Kv(r)) => kv_response_debug(r, f),
            Ok(Response::Pd(r)) => pd_response_debug(r, f),
            Ok(Response::Timestamp(ts)) => write!(f, "timestamp {ts}"),
            Ok(Response::StoreSafeTs(m)) => write!(f, "{m:?}"),
            Ok(Response::HealthCheck(m)) => write!(f, "{m:?}"),
        }
    }
}
