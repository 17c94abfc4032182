//! The loop against a manual clock and a transport the test answers by hand.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::channel::oneshot;
use futures::executor::LocalPool;
use futures::future::{self, BoxFuture, FutureExt};
use futures::task::LocalSpawnExt;
use tikv_core::error::Error;
use tikv_core::op::Operation;
use tikv_core::rpc::{KvRequest, KvResponse, Request, Response, Rpc, RpcError, RpcId, Target};
use tikv_core::time::{Duration, Instant};

use crate::{Runtime, Transport, execute};

/// `tikv-proto` is not a dependency: the message types are inferred from
/// the core's enums.
fn raw_get() -> Request {
    Request::Kv(KvRequest::RawGet(Default::default()))
}

fn raw_get_response() -> Response {
    Response::Kv(KvResponse::RawGet(Default::default()))
}

// ---------------------------------------------------------------- runtime

/// A runtime whose clock moves only when the test says so.
#[derive(Clone, Default)]
pub(crate) struct ManualRuntime {
    inner: Arc<Mutex<ManualInner>>,
}

#[derive(Default)]
struct ManualInner {
    now: Instant,
    sleepers: Vec<Waker>,
    /// Every instant passed to `sleep_until`, in order.
    armed: Vec<Instant>,
    spawned: Vec<BoxFuture<'static, ()>>,
}

impl ManualRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, ManualInner> {
        self.inner.lock().unwrap()
    }

    /// Moves the clock to `t` and wakes every sleeper (each re-checks).
    pub(crate) fn advance_to(&self, t: Instant) {
        let wakers = {
            let mut inner = self.lock();
            assert!(t >= inner.now, "the test clock must not go backwards");
            inner.now = t;
            std::mem::take(&mut inner.sleepers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Futures handed to `spawn`, for the test to run on its own executor.
    pub(crate) fn take_spawned(&self) -> Vec<BoxFuture<'static, ()>> {
        std::mem::take(&mut self.lock().spawned)
    }

    fn armed(&self) -> Vec<Instant> {
        self.lock().armed.clone()
    }
}

struct Sleep {
    rt: ManualRuntime,
    at: Instant,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.rt.lock();
        if inner.now >= self.at {
            Poll::Ready(())
        } else {
            inner.sleepers.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl Runtime for ManualRuntime {
    fn now(&self) -> Instant {
        self.lock().now
    }
    fn sleep_until(&self, at: Instant) -> BoxFuture<'static, ()> {
        self.lock().armed.push(at);
        Sleep { rt: self.clone(), at }.boxed()
    }
    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        self.lock().spawned.push(fut);
    }
}

// -------------------------------------------------------------- transport

/// A transport that records calls and lets the test answer each by hand.
#[derive(Clone, Default)]
struct ScriptedTransport {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Claims to bound its calls by their deadlines
    /// ([`Transport::enforces_deadline`]).
    bounds_calls: bool,
}

struct Call {
    target: Target,
    request: &'static str,
    deadline: Instant,
    reply: Option<oneshot::Sender<Result<Response, RpcError>>>,
}

impl ScriptedTransport {
    fn len(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
    fn summary(&self, i: usize) -> (Target, &'static str, Instant) {
        let calls = self.calls.lock().unwrap();
        (calls[i].target.clone(), calls[i].request, calls[i].deadline)
    }
    fn answer(&self, i: usize, result: Result<Response, RpcError>) {
        let reply = self.calls.lock().unwrap()[i].reply.take().expect("answered twice");
        reply.send(result).expect("the loop dropped a call it should still wait for");
    }
    /// True once the loop dropped the call's future (it gave up on it).
    fn dropped(&self, i: usize) -> bool {
        self.calls.lock().unwrap()[i].reply.as_ref().is_none_or(|r| r.is_canceled())
    }
}

impl Transport for ScriptedTransport {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        let (tx, rx) = oneshot::channel();
        self.calls.lock().unwrap().push(Call {
            target: target.clone(),
            request: request.name(),
            deadline,
            reply: Some(tx),
        });
        rx.map(|r| r.unwrap_or(Err(RpcError::Canceled))).boxed()
    }

    fn enforces_deadline(&self, _: &Target, _: &Request) -> bool {
        self.bounds_calls
    }
}

// -------------------------------------------------------------- operation

/// An input the operation saw, as it saw it.
#[derive(Clone, Debug, PartialEq)]
enum Input {
    Start(Instant),
    Response(RpcId, Result<&'static str, RpcError>, Instant),
    Timeout(Instant),
}

fn store(id: u64) -> Target {
    Target::Store { store_id: id, addr: format!("store{id}:20160").into(), forwarded_host: None }
}

/// Sends two RPCs at start; once both are settled it asks for a timer 50ms
/// later, and finishes when that fires. The result is the log of inputs.
#[derive(Default)]
struct Script {
    log: Vec<Input>,
    outbox: Vec<Rpc>,
    settled: usize,
    wake_at: Option<Instant>,
    done: bool,
    /// The two RPCs' deadlines (ms after start); 50 and 100 when unset.
    deadlines_ms: Option<[u64; 2]>,
}

impl Operation for Script {
    type Output = Vec<Input>;

    fn start(&mut self, now: Instant) {
        self.log.push(Input::Start(now));
        let [first, second] = self.deadlines_ms.unwrap_or([50, 100]);
        for (id, store_id, ms) in [(1, 1, first), (2, 2, second)] {
            self.outbox.push(Rpc {
                id: RpcId(id),
                target: store(store_id),
                request: raw_get(),
                deadline: now + Duration::from_millis(ms),
            });
        }
        // Drained in emission order.
        self.outbox.reverse();
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.outbox.pop()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.log.push(Input::Response(id, response.map(|r| r.name()), now));
        self.settled += 1;
        if self.settled == 2 {
            self.wake_at = Some(now + Duration::from_millis(50));
        }
    }
    fn on_timeout(&mut self, now: Instant) {
        self.log.push(Input::Timeout(now));
        if self.wake_at.is_some_and(|at| now >= at) {
            self.done = true;
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        if self.done { None } else { self.wake_at }
    }
    fn poll_result(&mut self) -> Option<Result<Vec<Input>, Error>> {
        self.done.then(|| Ok(std::mem::take(&mut self.log)))
    }
}

type Slot<T> = Rc<RefCell<Option<Result<T, Error>>>>;

/// Spawns `execute(op)` on a local pool; the result lands in the slot.
fn spawn_execute<O>(
    pool: &LocalPool,
    op: O,
    rt: &ManualRuntime,
    transport: &ScriptedTransport,
) -> Slot<O::Output>
where
    O: Operation + 'static,
{
    let slot: Slot<O::Output> = Rc::new(RefCell::new(None));
    let out = slot.clone();
    let (rt, transport) = (rt.clone(), transport.clone());
    pool.spawner()
        .spawn_local(async move {
            let result = execute(op, &rt, &transport).await;
            *out.borrow_mut() = Some(result);
        })
        .unwrap();
    slot
}

#[test]
fn answered_call_stuck_call_then_timer() {
    let rt = ManualRuntime::default();
    let transport = ScriptedTransport::default();
    let mut pool = LocalPool::new();
    let result = spawn_execute(&pool, Script::default(), &rt, &transport);

    pool.run_until_stalled();
    assert_eq!(transport.len(), 2, "both RPCs are in flight at once");
    assert_eq!(transport.summary(0), (store(1), "raw_get", Instant::from_millis(50)));
    assert_eq!(transport.summary(1), (store(2), "raw_get", Instant::from_millis(100)));
    assert_eq!(rt.armed().last(), Some(&Instant::from_millis(50)), "timer at the nearest deadline");

    rt.advance_to(Instant::from_millis(10));
    transport.answer(0, Ok(raw_get_response()));
    pool.run_until_stalled();
    assert_eq!(rt.armed().last(), Some(&Instant::from_millis(100)), "re-armed for the stuck call");
    assert!(!transport.dropped(1));

    // The clock overshoots the deadline: the input carries the current time.
    rt.advance_to(Instant::from_millis(105));
    pool.run_until_stalled();
    assert!(transport.dropped(1), "the stuck call is cancelled at its deadline");
    assert_eq!(rt.armed().last(), Some(&Instant::from_millis(155)), "the operation's timer");

    rt.advance_to(Instant::from_millis(150));
    pool.run_until_stalled();
    assert!(result.borrow().is_none(), "woken early, the loop waits again");

    rt.advance_to(Instant::from_millis(170));
    pool.run_until_stalled();
    let log = result.borrow_mut().take().expect("finished").expect("succeeded");
    assert_eq!(
        log,
        vec![
            Input::Start(Instant::ZERO),
            Input::Response(RpcId(1), Ok("raw_get"), Instant::from_millis(10)),
            Input::Response(RpcId(2), Err(RpcError::DeadlineExceeded), Instant::from_millis(105)),
            Input::Timeout(Instant::from_millis(170)),
        ]
    );
    assert_eq!(transport.len(), 2, "no RPC was sent twice");
}

/// The first call rides the loop's inline slot and the second its general
/// set: expiry follows deadlines across both, whichever holds the call.
#[test]
fn calls_expire_in_deadline_order_wherever_they_are_held() {
    let rt = ManualRuntime::default();
    let transport = ScriptedTransport::default();
    let mut pool = LocalPool::new();
    let op = Script { deadlines_ms: Some([100, 50]), ..Script::default() };
    let result = spawn_execute(&pool, op, &rt, &transport);
    pool.run_until_stalled();
    assert_eq!(transport.len(), 2);
    assert_eq!(rt.armed().last(), Some(&Instant::from_millis(50)), "the later call's deadline");

    rt.advance_to(Instant::from_millis(60));
    pool.run_until_stalled();
    assert!(transport.dropped(1) && !transport.dropped(0), "only the second call expired");
    assert_eq!(rt.armed().last(), Some(&Instant::from_millis(100)));

    rt.advance_to(Instant::from_millis(100));
    pool.run_until_stalled();
    assert!(transport.dropped(0), "the first call expires at its own deadline");
    rt.advance_to(Instant::from_millis(150));
    pool.run_until_stalled();
    let log = result.borrow_mut().take().expect("finished").expect("succeeded");
    assert_eq!(
        log,
        vec![
            Input::Start(Instant::ZERO),
            Input::Response(RpcId(2), Err(RpcError::DeadlineExceeded), Instant::from_millis(60)),
            Input::Response(RpcId(1), Err(RpcError::DeadlineExceeded), Instant::from_millis(100)),
            Input::Timeout(Instant::from_millis(150)),
        ]
    );
}

/// A transport that bounds its own calls gets no timer per call: the loop
/// waits for its `DeadlineExceeded`, and a timer is armed only for the
/// operation's own timeout.
#[test]
fn calls_a_transport_bounds_itself_arm_no_timer() {
    let rt = ManualRuntime::default();
    let transport = ScriptedTransport { bounds_calls: true, ..ScriptedTransport::default() };
    let mut pool = LocalPool::new();
    let result = spawn_execute(&pool, Script::default(), &rt, &transport);
    pool.run_until_stalled();
    assert_eq!(transport.len(), 2);
    assert_eq!(rt.armed(), vec![], "no timer for the calls' deadlines");

    // Past both deadlines, the loop still waits for the transport.
    rt.advance_to(Instant::from_millis(120));
    pool.run_until_stalled();
    assert!(!transport.dropped(0) && !transport.dropped(1));
    assert!(result.borrow().is_none());

    transport.answer(0, Ok(raw_get_response()));
    transport.answer(1, Err(RpcError::DeadlineExceeded));
    pool.run_until_stalled();
    assert_eq!(rt.armed(), vec![Instant::from_millis(170)], "only the operation's timer");
    rt.advance_to(Instant::from_millis(170));
    pool.run_until_stalled();
    let log = result.borrow_mut().take().expect("finished").expect("succeeded");
    assert_eq!(
        log,
        vec![
            Input::Start(Instant::ZERO),
            Input::Response(RpcId(1), Ok("raw_get"), Instant::from_millis(120)),
            Input::Response(RpcId(2), Err(RpcError::DeadlineExceeded), Instant::from_millis(120)),
            Input::Timeout(Instant::from_millis(170)),
        ]
    );
}

#[test]
fn transport_errors_are_fed_back_unchanged() {
    let rt = ManualRuntime::default();
    let transport = ScriptedTransport::default();
    let mut pool = LocalPool::new();
    let result = spawn_execute(&pool, Script::default(), &rt, &transport);
    pool.run_until_stalled();

    // Answered out of order; the second with an error.
    rt.advance_to(Instant::from_millis(3));
    transport.answer(1, Err(RpcError::Unavailable("refused".into())));
    pool.run_until_stalled();
    rt.advance_to(Instant::from_millis(4));
    transport.answer(0, Ok(raw_get_response()));
    pool.run_until_stalled();
    rt.advance_to(Instant::from_millis(54));
    pool.run_until_stalled();

    let log = result.borrow_mut().take().expect("finished").expect("succeeded");
    assert_eq!(
        log,
        vec![
            Input::Start(Instant::ZERO),
            Input::Response(
                RpcId(2),
                Err(RpcError::Unavailable("refused".into())),
                Instant::from_millis(3)
            ),
            Input::Response(RpcId(1), Ok("raw_get"), Instant::from_millis(4)),
            Input::Timeout(Instant::from_millis(54)),
        ]
    );
}

/// Sends one RPC with no deadline and finishes on its first timer.
struct GiveUp {
    sent: bool,
    finished: bool,
}

impl Operation for GiveUp {
    type Output = &'static str;
    fn start(&mut self, _now: Instant) {}
    fn poll_rpc(&mut self) -> Option<Rpc> {
        if self.sent {
            return None;
        }
        self.sent = true;
        Some(Rpc { id: RpcId(7), target: store(1), request: raw_get(), deadline: Instant::MAX })
    }
    fn on_response(&mut self, _: RpcId, _: Result<Response, RpcError>, _: Instant) {
        panic!("the response was never sent");
    }
    fn on_timeout(&mut self, _now: Instant) {
        self.finished = true;
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Some(Instant::from_millis(20))
    }
    fn poll_result(&mut self) -> Option<Result<&'static str, Error>> {
        self.finished.then_some(Ok("gave up"))
    }
}

#[test]
fn finishing_cancels_calls_in_flight() {
    let rt = ManualRuntime::default();
    let transport = ScriptedTransport::default();
    let mut pool = LocalPool::new();
    let result = spawn_execute(&pool, GiveUp { sent: false, finished: false }, &rt, &transport);
    pool.run_until_stalled();
    assert_eq!(transport.len(), 1);
    assert_eq!(rt.armed(), vec![Instant::from_millis(20)], "Instant::MAX arms no timer");

    rt.advance_to(Instant::from_millis(20));
    pool.run_until_stalled();
    assert_eq!(result.borrow_mut().take(), Some(Ok("gave up")));
    assert!(transport.dropped(0));
}

/// Never sends anything, never asks for a timer, never finishes.
struct Stuck;

impl Operation for Stuck {
    type Output = ();
    fn start(&mut self, _now: Instant) {}
    fn poll_rpc(&mut self) -> Option<Rpc> {
        None
    }
    fn on_response(&mut self, _: RpcId, _: Result<Response, RpcError>, _: Instant) {}
    fn on_timeout(&mut self, _now: Instant) {}
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        None
    }
}

#[test]
fn a_stalled_operation_is_an_error_not_a_hang() {
    let rt = ManualRuntime::default();
    let result = futures::executor::block_on(execute(Stuck, &rt, &ScriptedTransport::default()));
    assert!(matches!(result, Err(Error::Internal(_))), "{result:?}");
}

/// Fans out `n` RPCs and collects the ids it was answered under.
struct FanOut {
    n: u64,
    next: u64,
    seen: Vec<RpcId>,
}

impl Operation for FanOut {
    type Output = Vec<RpcId>;
    fn start(&mut self, _now: Instant) {}
    fn poll_rpc(&mut self) -> Option<Rpc> {
        (self.next < self.n).then(|| {
            self.next += 1;
            Rpc {
                id: RpcId(self.next),
                target: store(self.next),
                request: raw_get(),
                deadline: Instant::from_millis(1),
            }
        })
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, _: Instant) {
        assert!(response.is_ok());
        self.seen.push(id);
    }
    fn on_timeout(&mut self, _now: Instant) {}
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_result(&mut self) -> Option<Result<Vec<RpcId>, Error>> {
        (self.seen.len() as u64 == self.n).then(|| Ok(std::mem::take(&mut self.seen)))
    }
}

/// Answers every call at once.
struct Echo;

impl Transport for Echo {
    fn call(
        &self,
        _: &Target,
        _: Request,
        _: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        future::ready(Ok(raw_get_response())).boxed()
    }
}

#[test]
fn runs_with_block_on_and_a_trait_object_transport() {
    let rt = ManualRuntime::default();
    let transport: Arc<dyn Transport> = Arc::new(Echo);
    let op = FanOut { n: 5, next: 0, seen: Vec::new() };
    let mut seen = futures::executor::block_on(execute(op, &rt, &*transport)).unwrap();
    seen.sort();
    assert_eq!(seen, (1..=5).map(RpcId).collect::<Vec<_>>());
}
