//! The one generic loop that drives a sans-IO [`Operation`] to its result.

use std::collections::{BTreeSet, HashMap};
use std::task::{Context, Poll};

use futures::future::{AbortHandle, Abortable, BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tikv_core::error::Error;
use tikv_core::op::Operation;
use tikv_core::rpc::{Response, Rpc, RpcError, RpcId};
use tikv_core::time::{Instant, earliest};

use crate::observe::RpcObserver;
use crate::{Runtime, Transport};

/// Runs `op` to completion in the caller's task and returns its result.
///
/// This is the contract of [`Operation`] turned into a loop:
///
/// 1. `op.start(rt.now())`;
/// 2. after every input: drain `poll_rpc` and hand each RPC to `transport`
///    (all in flight concurrently), return if `poll_result` is ready, and arm
///    one timer at the earlier of `poll_timeout` and the nearest RPC deadline;
/// 3. wait for whichever comes first: an RPC outcome (fed with
///    `on_response(id, result, rt.now())`) or the timer. When the clock has
///    reached an RPC's deadline and the transport has not answered, that call
///    is dropped (which cancels it) and the operation gets
///    `Err(RpcError::DeadlineExceeded)` for it; when it has reached
///    `poll_timeout`, the operation gets `on_timeout(rt.now())`. A call the
///    transport bounds itself ([`Transport::enforces_deadline`]) is left to
///    it: no timer is armed for its deadline.
///
/// The clock is compared with the deadlines before the timer is polled
/// (quinn's rule): an elapsed timer may still report `Pending` under an
/// executor's cooperative budget, and the loop must not depend on it.
///
/// RPCs still in flight when the result is ready are dropped (cancelled).
/// An operation that is not finished but has nothing in flight and no timeout
/// could never make progress; rather than hang, `execute` returns
/// [`Error::Internal`] for it (this is a bug in the operation).
///
/// ```
/// use futures::future::{self, BoxFuture, FutureExt};
/// use tikv_core::op::Operation;
/// use tikv_core::rpc::{Response, Rpc, RpcError, RpcId, Target, Request};
/// use tikv_core::time::{Duration, Instant};
/// use tikv_core::Error;
/// use tikv_driver::{execute, Runtime, Transport};
///
/// /// Sleeps until t+5ms, then returns the time it woke up.
/// struct Nap { woke: Option<Instant> }
/// impl Operation for Nap {
///     type Output = Instant;
///     fn start(&mut self, _now: Instant) {}
///     fn poll_rpc(&mut self) -> Option<Rpc> { None }
///     fn on_response(&mut self, _: RpcId, _: Result<Response, RpcError>, _: Instant) {}
///     fn on_timeout(&mut self, now: Instant) { self.woke = Some(now) }
///     fn poll_timeout(&self) -> Option<Instant> {
///         self.woke.is_none().then_some(Instant::from_millis(5))
///     }
///     fn poll_result(&mut self) -> Option<Result<Instant, Error>> { self.woke.map(Ok) }
/// }
///
/// /// A runtime whose timers jump the clock forward (virtual time).
/// #[derive(Clone, Default)]
/// struct Virtual(std::sync::Arc<std::sync::Mutex<Instant>>);
/// impl Runtime for Virtual {
///     fn now(&self) -> Instant { *self.0.lock().unwrap() }
///     fn sleep_until(&self, at: Instant) -> BoxFuture<'static, ()> {
///         let clock = self.0.clone();
///         async move {
///             let mut now = clock.lock().unwrap();
///             *now = (*now).max(at);
///         }
///         .boxed()
///     }
///     fn spawn(&self, _fut: BoxFuture<'static, ()>) {}
/// }
///
/// struct NoNetwork;
/// impl Transport for NoNetwork {
///     fn call(&self, _: &Target, _: Request, _: Instant)
///         -> BoxFuture<'static, Result<Response, RpcError>> {
///         future::pending().boxed()
///     }
/// }
///
/// let rt = Virtual::default();
/// let woke = futures::executor::block_on(execute(Nap { woke: None }, &rt, &NoNetwork));
/// assert_eq!(woke, Ok(Instant::from_millis(5)));
/// ```
pub async fn execute<O, R, T>(op: O, rt: &R, transport: &T) -> Result<O::Output, Error>
where
    O: Operation,
    R: Runtime,
    T: Transport + ?Sized,
{
    execute_from(op, rt, transport, rt.now()).await.0
}

/// [`execute`] started at `now` (the caller's reading of the clock),
/// returning with the result the clock's reading it was produced at, so a
/// caller timing the operation reads the clock no more than the loop does.
pub(crate) async fn execute_from<O, R, T>(
    mut op: O,
    rt: &R,
    transport: &T,
    mut now: Instant,
) -> (Result<O::Output, Error>, Instant)
where
    O: Operation,
    R: Runtime,
    T: Transport + ?Sized,
{
    let mut calls = Calls::default();
    let mut timer = Timer::default();
    // The clock is read once per wake-up: the code between two waits does
    // no I/O and never sleeps, so one reading stamps the input, every RPC
    // of the drain that follows it, and the deadline checks.
    op.start(now);
    loop {
        while let Some(rpc) = op.poll_rpc() {
            calls.launch(rpc, transport, now);
        }
        if let Some(result) = op.poll_result() {
            return (result, now);
        }

        // Inputs that are already due are fed before waiting, one at a time,
        // so the operation's outputs are drained after each of them.
        if let Some((id, observer)) = calls.expire_one(now) {
            let result = Err(RpcError::DeadlineExceeded);
            observer.answered(&result, now);
            op.on_response(id, result, now);
            continue;
        }
        let op_deadline = op.poll_timeout();
        if op_deadline.is_some_and(|d| d <= now) {
            op.on_timeout(now);
            continue;
        }

        let wake_at = earliest(op_deadline, calls.next_deadline());
        if calls.is_idle() && wake_at.is_none() {
            let stalled = "operation stalled: no RPC in flight, no timer and no result";
            return (Err(Error::Internal(stalled.into())), now);
        }
        timer.arm(wake_at, rt);

        // `None` is the timer: deadlines are re-checked against a fresh
        // `now` at the top.
        let event = futures::future::poll_fn(|cx| poll_event(cx, &mut calls, &mut timer)).await;
        now = rt.now();
        if let Some((id, result, observer)) = event {
            observer.answered(&result, now);
            op.on_response(id, result, now);
        }
    }
}

/// An RPC outcome, with what the loop reports about it.
type Outcome = (RpcId, Result<Response, RpcError>, RpcObserver);

/// What woke the loop: an RPC outcome, or `None` for the timer.
///
/// Responses win over the timer when both are ready: a response that made it
/// in time should not be reported as a deadline miss.
fn poll_event(cx: &mut Context<'_>, calls: &mut Calls, timer: &mut Timer) -> Poll<Option<Outcome>> {
    if let Poll::Ready(outcome) = calls.poll_next(cx) {
        return Poll::Ready(Some(outcome));
    }
    if timer.poll(cx).is_ready() {
        return Poll::Ready(None);
    }
    Poll::Pending
}

type CallFuture = BoxFuture<'static, Result<Response, RpcError>>;

type ManyFuture =
    BoxFuture<'static, (u64, Result<Result<Response, RpcError>, futures::future::Aborted>)>;

/// The RPCs in flight. Each call gets a private sequence number, so a
/// machine that (wrongly) reuses an RPC id cannot confuse the bookkeeping.
///
/// Most operations have one RPC in flight at a time (a point read or write
/// and its retries), so the first call lives in an inline slot and is
/// polled directly; only the calls started while it is busy go to the
/// general set. The slot saves the set's per-call bookkeeping (a task
/// allocation in `FuturesUnordered`, a boxed wrapper, an abort handle, a map
/// entry and a deadline-set node per call, plus the set's own allocations
/// per operation).
#[derive(Default)]
struct Calls {
    next_seq: u64,
    single: Option<SingleCall>,
    /// Created by the first call that finds the slot busy.
    many: Option<ManyCalls>,
}

/// The call in the inline slot. Dropping it drops (cancels) the
/// transport's future.
struct SingleCall {
    seq: u64,
    id: RpcId,
    /// When the loop expires the call: [`Instant::MAX`] for one the
    /// transport bounds itself.
    deadline: Instant,
    call: CallFuture,
    observer: RpcObserver,
}

/// The calls beyond the first.
#[derive(Default)]
struct ManyCalls {
    futures: FuturesUnordered<ManyFuture>,
    /// Live calls by sequence number. Only looked up, never iterated, so hash
    /// order cannot influence anything.
    live: HashMap<u64, LiveCall>,
    /// Live calls ordered by deadline (ties by launch order), for expiry.
    deadlines: BTreeSet<(Instant, u64)>,
}

struct LiveCall {
    id: RpcId,
    deadline: Instant,
    abort: AbortHandle,
    observer: RpcObserver,
}

impl Calls {
    fn launch<T: Transport + ?Sized>(&mut self, rpc: Rpc, transport: &T, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let observer = RpcObserver::sent(&rpc, seq, now);
        // A call the transport bounds itself needs no expiry here: the
        // transport resolves it with `DeadlineExceeded` at its deadline.
        let deadline = if transport.enforces_deadline(&rpc.target, &rpc.request) {
            Instant::MAX
        } else {
            rpc.deadline
        };
        let call = {
            // Transport-level events (batching, reconnects) land in the
            // RPC's span; a disabled span costs no wrapper.
            let _entered = observer.span().enter();
            transport.call(&rpc.target, rpc.request, rpc.deadline)
        };
        let call = if observer.span().is_disabled() {
            call
        } else {
            tracing::Instrument::instrument(call, observer.span().clone()).boxed()
        };
        if self.single.is_none() {
            self.single = Some(SingleCall { seq, id: rpc.id, deadline, call, observer });
            return;
        }
        let many = self.many.get_or_insert_with(ManyCalls::default);
        let (abort, registration) = AbortHandle::new_pair();
        many.futures.push(Abortable::new(call, registration).map(move |r| (seq, r)).boxed());
        many.live.insert(seq, LiveCall { id: rpc.id, deadline, abort, observer });
        many.deadlines.insert((deadline, seq));
    }

    /// True when no call is waiting for an answer (aborted calls that have
    /// not been polled out yet do not count).
    fn is_idle(&self) -> bool {
        self.single.is_none() && self.many.as_ref().is_none_or(|m| m.live.is_empty())
    }

    /// `(deadline, seq)` of the live call that expires first.
    fn first_deadline(&self) -> Option<(Instant, u64)> {
        let single = self.single.as_ref().map(|c| (c.deadline, c.seq));
        let many = self.many.as_ref().and_then(|m| m.deadlines.first().copied());
        match (single, many) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The nearest deadline of a live call. [`Instant::MAX`] means "no
    /// deadline", so it never arms the timer.
    fn next_deadline(&self) -> Option<Instant> {
        self.first_deadline().map(|(d, _)| d).filter(|&d| d != Instant::MAX)
    }

    /// Drops the live call with the earliest deadline if that deadline has
    /// passed, returning its RPC id.
    fn expire_one(&mut self, now: Instant) -> Option<(RpcId, RpcObserver)> {
        let (deadline, seq) = self.first_deadline()?;
        if deadline > now || deadline == Instant::MAX {
            return None;
        }
        if self.single.as_ref().is_some_and(|c| c.seq == seq) {
            // Dropping the future cancels the call.
            return self.single.take().map(|c| (c.id, c.observer));
        }
        let many = self.many.as_mut()?;
        many.deadlines.pop_first();
        let call = many.live.remove(&seq)?;
        // Aborting wakes the future, which then resolves to `Aborted` and is
        // discarded; the transport's future is dropped with it.
        call.abort.abort();
        Some((call.id, call.observer))
    }

    /// The next outcome of a live call.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Some(single) = self.single.as_mut()
            && let Poll::Ready(result) = single.call.poll_unpin(cx)
            && let Some(single) = self.single.take()
        {
            return Poll::Ready((single.id, result, single.observer));
        }
        let Some(many) = self.many.as_mut() else {
            return Poll::Pending;
        };
        loop {
            match many.futures.poll_next_unpin(cx) {
                Poll::Ready(Some((seq, Ok(result)))) => {
                    if let Some(call) = many.live.remove(&seq) {
                        many.deadlines.remove(&(call.deadline, seq));
                        return Poll::Ready((call.id, result, call.observer));
                    }
                }
                // An expired call: its outcome was already reported.
                Poll::Ready(Some((_, Err(_aborted)))) => {}
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The loop's single timer, re-created only when its instant changes.
#[derive(Default)]
struct Timer {
    at: Option<Instant>,
    sleep: Option<BoxFuture<'static, ()>>,
}

impl Timer {
    fn arm<R: Runtime>(&mut self, at: Option<Instant>, rt: &R) {
        if self.at != at || (at.is_some() && self.sleep.is_none()) {
            self.at = at;
            self.sleep = at.map(|at| rt.sleep_until(at));
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => {
                let ready = sleep.poll_unpin(cx);
                if ready.is_ready() {
                    self.sleep = None;
                }
                ready
            }
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
