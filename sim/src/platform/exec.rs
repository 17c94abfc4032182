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
use tikv_core::rng::Rng;
use tikv_core::rpc::Target;
use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse, Request, Response, RpcError};
use tikv_core::time::{Duration, Instant};
use tikv_driver::{Runtime, Transport};

use crate::Cluster;
use crate::net::{Endpoint, Network, Recovery};
use crate::world::Fault;

use super::SimStats;

/// The task id of the user's main future (never in the task table: it
/// need not be `Send`).
pub(crate) const MAIN: u64 = 0;

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
    /// Spawned tasks; `None` while one is being polled.
    tasks: BTreeMap<u64, Option<BoxFuture<'static, ()>>>,
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
}

enum Event {
    /// A sleep's deadline.
    Timer(Weak<Slot<()>>),
    /// A request reaches its server.
    Arrive(Box<Arrival>),
    /// An answer reaches its client.
    Answer { call: u64, reply: Weak<Slot<Reply>>, result: Reply, duplicate: bool },
    /// A call's deadline: the transport stops waiting.
    CallDeadline { call: u64, reply: Weak<Slot<Reply>> },
    /// A planned fault strikes.
    Fault(Fault),
    /// A fault ends.
    Recover(Recovery),
    /// Every fault heals and the network turns reliable.
    Heal,
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
        let mut text = String::new();
        let _ = write!(text, "{} {line}", self.now);
        for b in text.bytes() {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if let Some(t) = &mut self.trace {
            t.push_str(&text);
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
            Event::Answer { call, reply, result, duplicate } => {
                let slot = reply.upgrade()?;
                let summary = summarize(&result);
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
        }
    }

    fn fault(&mut self, fault: &Fault) {
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
        let body = request_debug(&request);
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
        let now = self.now;
        let result = match (endpoint, a.request) {
            (Some(Endpoint::Pd(m)), Request::Pd(req)) => {
                self.cluster.handle_pd(m, req, now).map(Response::Pd)
            }
            (Some(Endpoint::Store(s)), Request::Kv(req)) => {
                self.cluster.handle_kv(s, req, now).map(Response::Kv)
            }
            (Some(Endpoint::Store(s)), Request::StoreSafeTs(req)) => self
                .cluster
                .get_store_safe_ts(s, &req, now)
                .map(|r| Response::StoreSafeTs(Box::new(r))),
            _ => Err(RpcError::Unavailable(format!("no server at {:?}", a.target))),
        };
        let body = response_debug(&result);
        self.log(format_args!("server: #{call} -> {body}"));
        let Some(delay) = self.net.answer_delay(&mut self.rng, a.client, endpoint) else {
            self.stats.lost += 1;
            self.log(format_args!("net: answer #{call} lost"));
            return;
        };
        let at = self.now + delay.first;
        if let Some(duplicate) = delay.duplicate {
            self.stats.duplicates += 1;
            let event = Event::Answer {
                call,
                reply: a.reply.clone(),
                result: result.clone(),
                duplicate: true,
            };
            self.schedule(at + duplicate, event);
        }
        self.schedule(at, Event::Answer { call, reply: a.reply, result, duplicate: false });
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
            ready: VecDeque::new(),
            queued: BTreeSet::new(),
            next_task: MAIN + 1,
            clients: 0,
            next_call: 0,
            hash: 0xcbf2_9ce4_8422_2325,
            trace: trace.then(String::new),
            stats: SimStats::default(),
            heal_at: None,
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

    pub(crate) fn next_u64(&self) -> u64 {
        self.lock().rng.next_u64()
    }

    pub(crate) fn register_client(&self) -> usize {
        let mut st = self.lock();
        st.clients += 1;
        let n = st.clients - 1;
        st.log(format_args!("client c{n} built"));
        n
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
        self.lock().fault(fault);
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

    fn spawn(self: &Arc<Self>, fut: BoxFuture<'static, ()>) {
        let mut st = self.lock();
        let id = st.next_task;
        st.next_task += 1;
        st.stats.tasks += 1;
        st.tasks.insert(id, Some(fut));
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
        let Some(mut fut) = self.lock().tasks.get_mut(&id).and_then(Option::take) else {
            return;
        };
        let waker = self.waker(id);
        let done = fut.as_mut().poll(&mut Context::from_waker(&waker)).is_ready();
        let mut st = self.lock();
        if done {
            st.tasks.remove(&id);
        } else if let Some(slot) = st.tasks.get_mut(&id) {
            *slot = Some(fut);
        }
    }

    /// Every task is idle: the clock moves to the next event.
    fn step(&self, limits: Limits) -> Step {
        let waker = {
            let mut st = self.lock();
            let event = match st.next_event(limits) {
                Ok(event) => event,
                Err(stuck) => return Step::Stuck(stuck),
            };
            st.handle(event)
        };
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
        self.shared.spawn(fut);
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
}

/// A sleep of `d` on the simulation's clock.
pub(crate) fn sleep(shared: &Arc<Shared>, d: Duration) -> BoxFuture<'static, ()> {
    let at = shared.now().saturating_add(d);
    shared.sleep_until(at)
}

pub(crate) fn spawn(shared: &Arc<Shared>, fut: BoxFuture<'static, ()>) {
    shared.spawn(fut);
}

fn summarize(result: &Reply) -> String {
    match result {
        Err(e) => format!("error: {e}"),
        Ok(r) => response_name(r).to_owned(),
    }
}

fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Kv(r) => r.name(),
        Response::Pd(r) => r.name(),
        Response::Timestamp(_) => "timestamp",
        Response::StoreSafeTs(_) => "get_store_safe_ts",
    }
}

// The full content of every message goes into the trace hash, so two runs
// with equal hashes exchanged byte-identical messages.
macro_rules! kv_debug {
    ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        fn kv_request_debug(r: &KvRequest) -> String {
            match r { $(KvRequest::$variant(m) => format!("{m:?}"),)* }
        }
        fn kv_response_debug(r: &KvResponse) -> String {
            match r { $(KvResponse::$variant(m) => format!("{m:?}"),)* }
        }
    };
}
tikv_core::for_each_kv_rpc!(kv_debug);

macro_rules! pd_debug {
    ($(($variant:ident, $service:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        fn pd_request_debug(r: &PdRequest) -> String {
            match r { $(PdRequest::$variant(m) => format!("{m:?}"),)* PdRequest::Tso(m) => format!("{m:?}") }
        }
        fn pd_response_debug(r: &PdResponse) -> String {
            match r { $(PdResponse::$variant(m) => format!("{m:?}"),)* PdResponse::Tso(m) => format!("{m:?}") }
        }
    };
}
tikv_core::for_each_pd_rpc!(pd_debug);

fn request_debug(r: &Request) -> String {
    match r {
        Request::Kv(r) => kv_request_debug(r),
        Request::Pd(r) => pd_request_debug(r),
        Request::Timestamp => "timestamp".into(),
        Request::StoreSafeTs(m) => format!("{m:?}"),
    }
}

fn response_debug(r: &Reply) -> String {
    match r {
        Err(e) => format!("error: {e}"),
        Ok(Response::Kv(r)) => kv_response_debug(r),
        Ok(Response::Pd(r)) => pd_response_debug(r),
        Ok(Response::Timestamp(ts)) => format!("timestamp {ts}"),
        Ok(Response::StoreSafeTs(m)) => format!("{m:?}"),
    }
}
