//! The contract every protocol state machine follows.
//!
//! An [`Operation`] is driven by a runtime (the driver loop, the simulator, a
//! fuzzer) with this loop, after every input:
//!
//! 1. drain [`Operation::poll_rpc`] and send each RPC;
//! 2. check [`Operation::poll_result`]: when it is `Some`, the operation is over;
//! 3. read [`Operation::poll_timeout`] and arm one timer for it.
//!
//! Inputs are [`Operation::start`] (once), [`Operation::on_response`] for each
//! RPC outcome (exactly one per emitted RPC id, in any order), and
//! [`Operation::on_timeout`] whenever the armed instant is reached (spurious
//! early calls are no-ops). Every input carries `now`, which must not go
//! backwards; when a timer fires, pass the current time, not the deadline.
//!
//! Operations nest: a parent keeps children and maps their RPC ids onto its
//! own (see [`IdMap`]). Most composite machines run one child at a time (a
//! read, then a lock resolution, then a sleep, then the read again): they
//! keep it in a [`StepSlot`], which does the plumbing (id mapping, dropping
//! late answers of earlier steps, folding the child's backoff sleeps into the
//! parent's budget, a built-in sleep), so the machine keeps only its
//! decisions.

use crate::backoff::Backoffer;
use crate::error::Error;
use crate::rpc::{Response, Rpc, RpcError, RpcId};
use crate::time::Instant;

/// A sans-IO protocol state machine producing one result.
pub trait Operation {
    /// What the operation returns on success.
    type Output;

    /// Begins the operation.
    fn start(&mut self, now: Instant);

    /// The next RPC to send, if any.
    fn poll_rpc(&mut self) -> Option<Rpc>;

    /// Feeds the outcome of an RPC previously emitted under `id`. Unknown ids
    /// (for example a duplicated response) are ignored.
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant);

    /// Called when the instant from [`Operation::poll_timeout`] has passed.
    fn on_timeout(&mut self, now: Instant);

    /// The one instant at which the operation next wants [`Operation::on_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;

    /// The result, once; `None` while the operation is still running.
    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>>;

    /// The budget this operation slept against, if it backs off: a parent
    /// running it as a step folds its sleeps into its own budget once it is
    /// done (client-go passes one `Backoffer` down through nested calls).
    fn backoff_spent(&self) -> Option<&Backoffer> {
        None
    }

    /// RPCs this operation sent whose answers were lost (a transport error
    /// or a deadline): a store may have applied them. A parent whose
    /// outcome depends on it (a commit) reads it from the child instead of
    /// inspecting requests.
    fn lost_answers(&self) -> u32 {
        0
    }
}

/// Lets a runtime drive an operation it keeps, to ask it more after the
/// result (e.g. `Committer::take_follow_up`).
impl<O: Operation + ?Sized> Operation for &mut O {
    type Output = O::Output;
    fn start(&mut self, now: Instant) {
        (**self).start(now)
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        (**self).poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        (**self).on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        (**self).on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>> {
        (**self).poll_result()
    }
    fn backoff_spent(&self) -> Option<&Backoffer> {
        (**self).backoff_spent()
    }
    fn lost_answers(&self) -> u32 {
        (**self).lost_answers()
    }
}

impl<O: Operation + ?Sized> Operation for Box<O> {
    type Output = O::Output;
    fn start(&mut self, now: Instant) {
        (**self).start(now)
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        (**self).poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        (**self).on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        (**self).on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>> {
        (**self).poll_result()
    }
    fn backoff_spent(&self) -> Option<&Backoffer> {
        (**self).backoff_spent()
    }
    fn lost_answers(&self) -> u32 {
        (**self).lost_answers()
    }
}

/// A child that was handed its parent's own backoffer (not a fork) and
/// hands it back beside its result, which it always yields as `Ok`.
///
/// A range walk passes one backoffer from step to step, as client-go's scan
/// loop passes one `Backoffer` to every region: the per-kind schedules keep
/// growing across regions instead of restarting with each fork. `take` is
/// how the child gives its backoffer up once it is over.
pub struct HandBack<O> {
    op: O,
    take: fn(&mut O) -> Option<Backoffer>,
}

impl<O> HandBack<O> {
    /// Wraps `op`, which holds the parent's backoffer until `take` returns it.
    pub fn new(op: O, take: fn(&mut O) -> Option<Backoffer>) -> HandBack<O> {
        HandBack { op, take }
    }
}

impl<O: Operation> Operation for HandBack<O> {
    type Output = (Result<O::Output, Error>, Option<Backoffer>);
    fn start(&mut self, now: Instant) {
        self.op.start(now)
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.op.poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.op.on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        self.op.on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.op.poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>> {
        let result = self.op.poll_result()?;
        Some(Ok((result, (self.take)(&mut self.op))))
    }
    fn lost_answers(&self) -> u32 {
        self.op.lost_answers()
    }
}

/// The four inputs of an [`Operation`] that keeps its current child in a
/// [`StepSlot`] at `self.<path>` and moves on in its own `check(now)`:
/// each input goes to the slot, and after an answer of the current step or
/// a timer firing, `check` takes what happened. A machine writes only its
/// `start`, `poll_result` and decisions.
///
/// ```text
/// impl Operation for Gc {
///     type Output = GcOutcome;
///     fn start(&mut self, now: Instant) { ... }
///     forward_step_inputs!(step);
///     fn poll_result(&mut self) -> Option<Result<GcOutcome, Error>> { ... }
/// }
/// ```
macro_rules! forward_step_inputs {
    ($($slot:ident).+) => {
        fn poll_rpc(&mut self) -> Option<$crate::rpc::Rpc> {
            self.$($slot).+.poll_rpc()
        }

        fn on_response(
            &mut self,
            id: $crate::rpc::RpcId,
            response: Result<$crate::rpc::Response, $crate::rpc::RpcError>,
            now: $crate::time::Instant,
        ) {
            if self.$($slot).+.on_response(id, response, now) {
                self.check(now);
            }
        }

        fn on_timeout(&mut self, now: $crate::time::Instant) {
            self.$($slot).+.on_timeout(now);
            self.check(now);
        }

        fn poll_timeout(&self) -> Option<$crate::time::Instant> {
            self.$($slot).+.poll_timeout()
        }
    };
}
pub(crate) use forward_step_inputs;

/// What a [`StepSlot`] reports to its machine.
#[derive(Debug, PartialEq)]
pub enum StepEvent<D> {
    /// The step's child finished; its outcome as the machine mapped it.
    Done(D),
    /// The step's sleep is over.
    Woke,
}

/// A child operation whose outcome the machine turns into its own event
/// type `D` (so children with different outputs share one slot).
trait StepChild<D>: Send {
    fn start(&mut self, now: Instant);
    fn poll_rpc(&mut self) -> Option<Rpc>;
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant);
    fn on_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    /// The mapped outcome (once), with the sleeps the child spent and its
    /// lost answers.
    fn poll_done(&mut self) -> Option<(D, Option<&Backoffer>, u32)>;
}

struct Mapped<O, F> {
    op: O,
    map: Option<F>,
}

impl<D, O, F> StepChild<D> for Mapped<O, F>
where
    O: Operation + Send,
    F: FnOnce(Result<O::Output, Error>) -> D + Send,
{
    fn start(&mut self, now: Instant) {
        self.op.start(now)
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.op.poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.op.on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        self.op.on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.op.poll_timeout()
    }
    fn poll_done(&mut self) -> Option<(D, Option<&Backoffer>, u32)> {
        // Checked before taking the result: a finished child reports once.
        let map = self.map.take()?;
        match self.op.poll_result() {
            Some(result) => Some((map(result), self.op.backoff_spent(), self.op.lost_answers())),
            None => {
                self.map = Some(map);
                None
            }
        }
    }
}

enum StepState<D> {
    Idle,
    Child(Box<dyn StepChild<D>>),
    Sleep(Instant),
    Woke,
}

/// The current step of a composite machine: one child operation or one
/// sleep at a time, `D` being the machine's own event type.
///
/// - [`StepSlot::start`] replaces the step with a child (boxed once) whose
///   result `map` turns into a `D`; [`StepSlot::sleep_until`] with a sleep.
///   Every RPC of a step carries the step's number, so answers that arrive
///   for an earlier step (after a retry replaced it) are dropped here.
/// - The machine forwards its four inputs ([`StepSlot::poll_rpc`],
///   [`StepSlot::on_response`], [`StepSlot::on_timeout`],
///   [`StepSlot::poll_timeout`]) and, after each, asks
///   [`StepSlot::poll_event`] what happened, passing the budget the
///   finished child's sleeps count against.
///
/// ```
/// use tikv_core::backoff::Backoffer;
/// use tikv_core::op::{StepEvent, StepSlot};
/// use tikv_core::rng::Rng;
/// use tikv_core::time::{Duration, Instant};
///
/// let mut budget = Backoffer::new(Duration::from_secs(1), Rng::new(1));
/// let mut step: StepSlot<&'static str> = StepSlot::new();
/// step.sleep_until(Instant::from_millis(5));
/// assert_eq!(step.poll_timeout(), Some(Instant::from_millis(5)));
/// step.on_timeout(Instant::from_millis(4));
/// assert_eq!(step.poll_event(Some(&mut budget)), None, "not yet");
/// step.on_timeout(Instant::from_millis(5));
/// assert_eq!(step.poll_event(Some(&mut budget)), Some(StepEvent::Woke));
/// assert!(step.is_idle());
/// ```
pub struct StepSlot<D> {
    ids: IdMap<u64>,
    number: u64,
    state: StepState<D>,
    /// The lost answers of the step that finished last.
    lost_answers: u32,
}

impl<D> std::fmt::Debug for StepSlot<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            StepState::Idle => "idle",
            StepState::Child(_) => "child",
            StepState::Sleep(_) => "sleep",
            StepState::Woke => "woke",
        };
        f.debug_struct("StepSlot").field("number", &self.number).field("state", &state).finish()
    }
}

impl<D> Default for StepSlot<D> {
    fn default() -> Self {
        StepSlot::new()
    }
}

impl<D> StepSlot<D> {
    /// An idle slot.
    pub fn new() -> StepSlot<D> {
        StepSlot { ids: IdMap::new(), number: 0, state: StepState::Idle, lost_answers: 0 }
    }

    /// Starts `op` as the step (dropping whatever step was running); its
    /// result becomes `map(result)`.
    pub fn start<O, F>(&mut self, op: O, map: F, now: Instant)
    where
        O: Operation + Send + 'static,
        F: FnOnce(Result<O::Output, Error>) -> D + Send + 'static,
        D: 'static,
    {
        self.number += 1;
        let mut child = Box::new(Mapped { op, map: Some(map) });
        child.start(now);
        self.state = StepState::Child(child);
    }

    /// Makes the step a sleep until `until` ([`StepEvent::Woke`] then).
    pub fn sleep_until(&mut self, until: Instant) {
        self.number += 1;
        self.state = StepState::Sleep(until);
    }

    /// Ends the step: nothing runs, late answers are dropped.
    pub fn clear(&mut self) {
        self.number += 1;
        self.state = StepState::Idle;
    }

    /// The lost answers ([`Operation::lost_answers`]) of the child whose
    /// [`StepEvent::Done`] was reported last.
    pub fn lost_answers(&self) -> u32 {
        self.lost_answers
    }

    /// Whether no step runs.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, StepState::Idle)
    }

    /// The step's next RPC, with an id of the parent's.
    pub fn poll_rpc(&mut self) -> Option<Rpc> {
        let StepState::Child(child) = &mut self.state else { return None };
        let rpc = child.poll_rpc()?;
        Some(self.ids.wrap(self.number, rpc))
    }

    /// Feeds an answer to the step that sent it; false if it is not the
    /// current step's (unknown, or an earlier step's late answer).
    pub fn on_response(
        &mut self,
        id: RpcId,
        response: Result<Response, RpcError>,
        now: Instant,
    ) -> bool {
        let Some((number, id)) = self.ids.take(id) else { return false };
        match &mut self.state {
            StepState::Child(child) if number == self.number => {
                child.on_response(id, response, now);
                true
            }
            _ => false,
        }
    }

    /// Passes a timer firing to the child, or ends a sleep that is due.
    pub fn on_timeout(&mut self, now: Instant) {
        match &mut self.state {
            StepState::Child(child) => child.on_timeout(now),
            StepState::Sleep(until) if now >= *until => self.state = StepState::Woke,
            _ => {}
        }
    }

    /// When the step next wants [`StepSlot::on_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            StepState::Child(child) => child.poll_timeout(),
            StepState::Sleep(until) => Some(*until),
            StepState::Idle | StepState::Woke => None,
        }
    }

    /// What happened to the step, once: its child finished (its sleeps
    /// are folded into `budget`, if the machine keeps one for it) or its
    /// sleep ended. The slot is idle after.
    pub fn poll_event(&mut self, budget: Option<&mut Backoffer>) -> Option<StepEvent<D>> {
        let event = match &mut self.state {
            StepState::Child(child) => {
                let (done, spent, lost) = child.poll_done()?;
                if let (Some(budget), Some(spent)) = (budget, spent) {
                    budget.merge_from(spent);
                }
                self.lost_answers = lost;
                StepEvent::Done(done)
            }
            StepState::Woke => StepEvent::Woke,
            StepState::Idle | StepState::Sleep(_) => return None,
        };
        self.state = StepState::Idle;
        Some(event)
    }
}

/// Maps a parent's RPC ids onto `(child, child id)` pairs, so children can
/// choose ids freely. Lookups are by id; nothing iterates the map, so hash
/// order never influences a decision.
///
/// The first few entries live inline (most parents have one or two RPCs in
/// flight at a time, and a hash table would be an allocation per
/// operation); beyond [`IdMap::INLINE`] the rest go to a hash map.
#[derive(Debug, Default)]
pub struct IdMap<C> {
    next: u64,
    inline: smallvec::SmallVec<[(RpcId, C, RpcId); IdMap::<()>::INLINE]>,
    map: hashbrown::HashMap<RpcId, (C, RpcId)>,
}

impl IdMap<()> {
    /// Entries kept inline before the hash map is used.
    pub const INLINE: usize = 4;
}

impl<C: Copy> IdMap<C> {
    /// An empty map.
    pub fn new() -> Self {
        IdMap { next: 0, inline: smallvec::SmallVec::new(), map: hashbrown::HashMap::new() }
    }

    /// Allocates a fresh parent id for nothing in particular (a parent's own RPC).
    pub fn fresh(&mut self) -> RpcId {
        self.next += 1;
        RpcId(self.next)
    }

    /// Rewrites a child's RPC to carry a fresh parent id, remembering the origin.
    pub fn wrap(&mut self, child: C, mut rpc: Rpc) -> Rpc {
        let id = self.fresh();
        if self.inline.len() < IdMap::<()>::INLINE {
            self.inline.push((id, child, rpc.id));
        } else {
            self.map.insert(id, (child, rpc.id));
        }
        rpc.id = id;
        rpc
    }

    /// Resolves (and forgets) a parent id.
    pub fn take(&mut self, id: RpcId) -> Option<(C, RpcId)> {
        match self.inline.iter().position(|&(parent, _, _)| parent == id) {
            // Order inside the inline set does not matter: lookups are by id.
            Some(i) => {
                let (_, child, child_id) = self.inline.swap_remove(i);
                Some((child, child_id))
            }
            None => self.map.remove(&id),
        }
    }

    /// Number of RPCs in flight.
    pub fn in_flight(&self) -> usize {
        self.inline.len() + self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{KvRequest, Request, Target};
    use crate::time::{Duration, Instant};

    fn rpc(id: u64) -> Rpc {
        Rpc {
            id: RpcId(id),
            target: Target::Pd { addr: "pd:2379".into() },
            request: Request::Kv(KvRequest::RawGet(Default::default())),
            deadline: Instant::MAX,
        }
    }

    /// A child that sends one RPC per start and finishes with the answer's
    /// method name, having slept `slept` against its own budget.
    struct Echo {
        bo: Backoffer,
        sent: bool,
        answer: Option<Result<&'static str, Error>>,
    }

    impl Echo {
        fn new(slept: u64) -> Echo {
            let mut bo = Backoffer::new(Duration::from_secs(10), crate::rng::Rng::new(1));
            if slept > 0 {
                bo.backoff_capped(
                    crate::backoff::BackoffKind::TxnLock,
                    Duration::from_millis(slept),
                    "test",
                )
                .expect("within budget");
            }
            Echo { bo, sent: false, answer: None }
        }
    }

    impl Operation for Echo {
        type Output = &'static str;
        fn start(&mut self, _: Instant) {}
        fn poll_rpc(&mut self) -> Option<Rpc> {
            (!std::mem::replace(&mut self.sent, true)).then(|| rpc(7))
        }
        fn on_response(&mut self, id: RpcId, r: Result<Response, RpcError>, _: Instant) {
            assert_eq!(id, RpcId(7), "the child sees its own id");
            self.answer = Some(r.map(|r| r.name()).map_err(Error::Rpc));
        }
        fn on_timeout(&mut self, _: Instant) {}
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_result(&mut self) -> Option<Result<&'static str, Error>> {
            self.answer.take()
        }
        fn backoff_spent(&self) -> Option<&Backoffer> {
            Some(&self.bo)
        }
    }

    #[derive(Debug, PartialEq)]
    enum Event {
        Echoed(Result<&'static str, Error>),
    }

    fn answer() -> Result<Response, RpcError> {
        Ok(Response::Kv(crate::rpc::KvResponse::RawGet(Default::default())))
    }

    /// A step's RPCs carry the parent's ids; its result comes back mapped,
    /// once, with its sleeps folded into the parent's budget; an answer to
    /// a step that was replaced is dropped, and a sleep wakes when due.
    #[test]
    fn a_step_slot_runs_one_child_or_sleep_at_a_time() {
        let mut budget = Backoffer::new(Duration::from_secs(10), crate::rng::Rng::new(2));
        let mut slot: StepSlot<Event> = StepSlot::new();
        let now = Instant::ZERO;

        slot.start(Echo::new(0), Event::Echoed, now);
        let first = slot.poll_rpc().expect("the child's RPC");
        assert!(slot.poll_rpc().is_none());
        // Replaced before it answered: its answer no longer counts.
        slot.start(Echo::new(30), Event::Echoed, now);
        let second = slot.poll_rpc().expect("the new child's RPC");
        assert_ne!(first.id, second.id, "parent ids never repeat");
        assert!(!slot.on_response(first.id, answer(), now), "late answer dropped");
        assert_eq!(slot.poll_event(Some(&mut budget)), None);
        assert!(slot.on_response(second.id, answer(), now));
        assert_eq!(
            slot.poll_event(Some(&mut budget)),
            Some(StepEvent::Done(Event::Echoed(Ok("raw_get"))))
        );
        assert_eq!(slot.poll_event(Some(&mut budget)), None, "reported once");
        assert!(slot.is_idle());
        assert_eq!(budget.total_sleep(), Duration::from_millis(30), "the child's sleeps count");

        slot.sleep_until(Instant::from_millis(5));
        assert_eq!(slot.poll_timeout(), Some(Instant::from_millis(5)));
        slot.on_timeout(Instant::from_millis(5));
        assert_eq!(slot.poll_event(Some(&mut budget)), Some(StepEvent::Woke));

        slot.start(Echo::new(0), Event::Echoed, now);
        let third = slot.poll_rpc().expect("sent");
        slot.clear();
        assert!(!slot.on_response(third.id, answer(), now), "a cleared step hears nothing");
        assert_eq!(slot.poll_event(Some(&mut budget)), None);
    }

    /// Ids resolve to their origin whether they sit inline or in the hash
    /// map, in any order, once each.
    #[test]
    fn id_map_resolves_inline_and_spilled_entries() {
        let mut ids = IdMap::<usize>::new();
        let parents: Vec<RpcId> =
            (0..10).map(|child| ids.wrap(child, rpc(100 + child as u64)).id).collect();
        assert_eq!(ids.in_flight(), 10);
        for &child in &[7usize, 0, 9, 3, 1, 2, 8, 4, 6, 5] {
            assert_eq!(ids.take(parents[child]), Some((child, RpcId(100 + child as u64))));
            assert_eq!(ids.take(parents[child]), None, "an id resolves once");
        }
        assert_eq!(ids.in_flight(), 0);
        // Freed inline room is used again; ids never repeat.
        let again = ids.wrap(42, rpc(5)).id;
        assert!(!parents.contains(&again));
        assert_eq!(ids.take(again), Some((42, RpcId(5))));
    }
}
