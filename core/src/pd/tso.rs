//! Timestamp oracle: batching timestamp requests onto PD's `Tso` stream.

use std::collections::VecDeque;
use std::sync::Arc;

use tikv_proto::pdpb;

use crate::backoff::Backoffer;
use crate::error::Error;
use crate::op::Operation;
use crate::pd::PdCall;
use crate::rng::Rng;
use crate::rpc::{PdRequest, PdResponse, Request, Response, Rpc, RpcError, RpcId, Target};
use crate::time::Instant;
use crate::view::ClusterView;

use super::{LOGICAL_BITS, Timestamp};

/// Whether a read at some timestamp may run (client-go `ValidateReadTS`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReadTsVerdict {
    /// PD has handed the timestamp out already: no later commit can take a
    /// smaller one, so the read is stable.
    Safe,
    /// Not known to be handed out: compare with a fresh timestamp from PD.
    AskPd,
}

/// Judges a read at `read_ts` given a timestamp PD is known to have handed
/// out (`handed_out`: the newest seen, or a fresh one). `u64::MAX` means
/// "the latest" and is allowed, as in client-go; the values between
/// `i64::MAX` and it are refused as the mistakes they are.
///
/// ```
/// use tikv_core::pd::{ReadTsVerdict, Timestamp, judge_read_ts};
/// let ts = Timestamp::from_version;
/// assert_eq!(judge_read_ts(ts(10), Some(ts(12))), Ok(ReadTsVerdict::Safe));
/// assert_eq!(judge_read_ts(ts(13), Some(ts(12))), Ok(ReadTsVerdict::AskPd));
/// assert_eq!(judge_read_ts(Timestamp::MAX, None), Ok(ReadTsVerdict::Safe));
/// assert!(judge_read_ts(ts(u64::MAX - 1), Some(ts(12))).is_err());
/// ```
pub fn judge_read_ts(
    read_ts: Timestamp,
    handed_out: Option<Timestamp>,
) -> Result<ReadTsVerdict, Error> {
    if read_ts == Timestamp::MAX {
        return Ok(ReadTsVerdict::Safe);
    }
    if read_ts.version() >= i64::MAX as u64 {
        return Err(Error::InvalidArgument(format!("read ts {read_ts} is not a TSO timestamp")));
    }
    Ok(if handed_out.is_some_and(|ts| read_ts <= ts) {
        ReadTsVerdict::Safe
    } else {
        ReadTsVerdict::AskPd
    })
}

/// Most timestamps asked for in one `Tso` round (PD's client uses 10,000,
/// `defaultMaxTSOBatchSize`).
pub const MAX_TSO_BATCH: usize = 10_000;

/// The consecutive timestamps one round hands out, in order: `count`
/// logical values ending at PD's answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TsoBatch {
    first: Timestamp,
    count: u32,
}

impl TsoBatch {
    /// How many timestamps the batch holds (the round's caller count).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch is empty (never, for a served round).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`-th timestamp, for the `i`-th caller of the round.
    pub fn get(&self, i: usize) -> Option<Timestamp> {
        // Consecutive logical values of one millisecond: `judge` checked
        // that the last of them fits in the logical bits.
        (i < self.len()).then(|| Timestamp::from_version(self.first.version() + i as u64))
    }

    /// The first (smallest) timestamp.
    pub fn first(&self) -> Timestamp {
        self.first
    }

    /// The last (largest) timestamp: PD's answer.
    pub fn last(&self) -> Timestamp {
        Timestamp::from_version(self.first.version() + u64::from(self.count.max(1)) - 1)
    }

    /// Every timestamp, in order.
    pub fn iter(&self) -> impl Iterator<Item = Timestamp> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// How a round ended, for its callers.
#[derive(Clone, Debug, PartialEq)]
pub enum TsoRoundEnd<W> {
    /// Each caller with its timestamp, in caller order.
    Served(Vec<(W, Timestamp)>),
    /// PD's answer was valid but not above a timestamp another round handed
    /// out while this one was in flight (two rounds overtook each other,
    /// e.g. across a reconnect): the callers went back to the head of the
    /// queue, in their order, for the next round, so handed-out timestamps
    /// stay strictly increasing without failing anyone.
    Requeued,
    /// The round failed; every caller gets this error.
    Failed(Vec<W>, Error),
}

/// The timestamp oracle's client side: callers queue for a timestamp,
/// waiting callers become `Tso` rounds, several rounds may be in flight,
/// and handed-out timestamps are strictly increasing, also across stream
/// reconnects and PD leader changes.
///
/// A runtime (the driver's TSO task, the simulated world) owns one per
/// client and answers every [`Request::Timestamp`] with it; `W` is how it
/// reaches a caller again (a channel, an operation's RPC id). Every decision
/// is here:
///
/// 1. [`TsoBatcher::enqueue`] queues a caller;
/// 2. whenever callers wait, [`TsoBatcher::poll_round`] gives a [`TsoRound`]
///    for up to [`MAX_TSO_BATCH`] of them (the oldest first; callers that
///    gave up meanwhile are dropped and cost no timestamp), unless
///    `max_in_flight` rounds are already out: then the callers keep waiting
///    and join the next round together. No deliberate wait, as PD's client
///    by default (`MaxTSOBatchWaitInterval` 0);
/// 3. the runtime executes the round (a [`PdCall`], so discovery and
///    failover are the same as for any PD request);
/// 4. [`TsoBatcher::finish_round`] judges the answer and says what the
///    round's callers get ([`TsoRoundEnd`]); a served round also becomes
///    the client's low-resolution "now" ([`ClusterView::last_ts`]).
///
/// Monotonicity (PD's `tsoDispatcher.checkMonotonicity`): an answer not
/// above the newest timestamp handed out *before its round was sent* means
/// PD went backwards (a new leader without a fence); PD's client panics,
/// here the round fails with [`Error::MalformedResponse`]. An answer above
/// that but not above one handed out *since* (a round sent later, answered
/// first) is fine as a TSO but would break the handed-out order, so the
/// round is asked again ([`TsoRoundEnd::Requeued`]).
///
/// [`Request::Timestamp`]: crate::rpc::Request::Timestamp
#[derive(Debug)]
pub struct TsoBatcher<W> {
    view: Arc<ClusterView>,
    rng: Rng,
    max_in_flight: usize,
    in_flight: usize,
    last: Option<Timestamp>,
    queue: VecDeque<W>,
}

/// One `Tso` round for `count` callers; yields PD's answer.
#[derive(Debug)]
pub struct TsoRound {
    call: PdCall,
    count: u32,
}

/// The callers of a round in flight and what [`TsoBatcher::finish_round`]
/// needs to judge its answer.
#[derive(Debug)]
pub struct TsoRoundCallers<W> {
    callers: Vec<W>,
    /// The newest timestamp handed out when the round was sent.
    floor: Option<Timestamp>,
}

impl<W> TsoRoundCallers<W> {
    /// The callers, oldest first.
    pub fn callers(&self) -> &[W] {
        &self.callers
    }

    /// How many callers the round serves.
    pub fn len(&self) -> usize {
        self.callers.len()
    }

    /// Whether the round serves nobody (never, for a round that was sent).
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }
}

impl<W> TsoBatcher<W> {
    /// The batcher of the client seen through `view`: rounds have the PD
    /// timeout per RPC and the TSO backoff budget, and at most
    /// `tso_max_rounds_in_flight` (at least 1) are out at once (see
    /// [`DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT`](crate::config::DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT)).
    pub fn new(view: Arc<ClusterView>, seed: u64) -> TsoBatcher<W> {
        let max_in_flight = view.config.tso_max_rounds_in_flight.max(1);
        TsoBatcher {
            view,
            rng: Rng::new(seed),
            max_in_flight,
            in_flight: 0,
            last: None,
            queue: VecDeque::new(),
        }
    }

    /// Queues a caller for a timestamp.
    pub fn enqueue(&mut self, caller: W) {
        self.queue.push_back(caller);
    }

    /// Callers queued and not yet in a round.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// The next round to send, for the oldest waiting callers (at most
    /// [`MAX_TSO_BATCH`]) for which `gave_up` is false; `None` when nobody
    /// waits or `max_in_flight` rounds are out. Every round returned must be
    /// finished with [`TsoBatcher::finish_round`].
    pub fn poll_round(
        &mut self,
        mut gave_up: impl FnMut(&W) -> bool,
    ) -> Option<(TsoRound, TsoRoundCallers<W>)> {
        while self.in_flight < self.max_in_flight && !self.queue.is_empty() {
            let take = self.queue.len().min(MAX_TSO_BATCH);
            let callers: Vec<W> = self.queue.drain(..take).filter(|w| !gave_up(w)).collect();
            if callers.is_empty() {
                continue;
            }
            self.in_flight += 1;
            let count = callers.len() as u32;
            let request =
                PdRequest::Tso(Box::new(pdpb::TsoRequest { count, ..Default::default() }));
            let config = &self.view.config;
            let backoffer = Backoffer::new(config.budget(config.backoff.tso), self.rng.fork());
            let call = PdCall::new(self.view.pd.clone(), request, config.pd_timeout, backoffer);
            return Some((TsoRound { call, count }, TsoRoundCallers { callers, floor: self.last }));
        }
        None
    }

    /// Judges a round's answer (see the type's docs), frees its slot and
    /// says what its callers get. PD answers with the last timestamp of the
    /// batch; the batch is the `count` consecutive logical values ending
    /// there. `now` is when the answer arrived.
    pub fn finish_round(
        &mut self,
        round: TsoRoundCallers<W>,
        outcome: Result<PdResponse, Error>,
        now: Instant,
    ) -> TsoRoundEnd<W> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let TsoRoundCallers { callers, floor } = round;
        match judge(callers.len() as u32, floor, outcome) {
            Ok(batch) if self.last.is_some_and(|last| batch.first <= last) => {
                for w in callers.into_iter().rev() {
                    self.queue.push_front(w);
                }
                TsoRoundEnd::Requeued
            }
            Ok(batch) => {
                self.last = Some(batch.last());
                self.view.last_ts.observe(batch.last(), now);
                TsoRoundEnd::Served(callers.into_iter().zip(batch.iter()).collect())
            }
            Err(e) => TsoRoundEnd::Failed(callers, e),
        }
    }

    /// Rounds started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The most rounds in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The last timestamp handed out, if any (client-go keeps it as the
    /// low-resolution timestamp between refreshes).
    pub fn last(&self) -> Option<Timestamp> {
        self.last
    }
}

/// The batch a round's answer hands out, or why it cannot be trusted.
fn judge(
    count: u32,
    floor: Option<Timestamp>,
    outcome: Result<PdResponse, Error>,
) -> Result<TsoBatch, Error> {
    let PdResponse::Tso(resp) = outcome? else {
        return Err(Error::malformed("TSO round answered by another method"));
    };
    if resp.count != count {
        return Err(Error::malformed(format!(
            "TSO returned {} timestamps, {count} asked",
            resp.count
        )));
    }
    let Some(ts) = resp.timestamp else {
        return Err(Error::malformed("TSO response without a timestamp"));
    };
    let first_logical = ts.logical.saturating_sub(i64::from(count) - 1);
    if ts.physical < 0 || first_logical < 0 || ts.logical >= 1 << LOGICAL_BITS {
        return Err(Error::malformed(format!("TSO returned an invalid timestamp {ts:?}")));
    }
    let first = Timestamp::compose(ts.physical, first_logical);
    if let Some(floor) = floor
        && first <= floor
    {
        return Err(Error::malformed(format!(
            "TSO went backwards: {first:#} after {floor:#} (PD leader change without a fence?)"
        )));
    }
    Ok(TsoBatch { first, count })
}

impl TsoRound {
    /// How many timestamps the round asks for.
    pub fn count(&self) -> u32 {
        self.count
    }
}

impl Operation for TsoRound {
    type Output = PdResponse;
    fn start(&mut self, now: Instant) {
        self.call.start(now)
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.call.poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.call.on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        self.call.on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.call.poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<PdResponse, Error>> {
        self.call.poll_result()
    }
}

/// One fresh timestamp for an operation (a commit ts, a min-commit-ts
/// bound, "now" for lock TTL checks): a leaf that sends
/// [`Request::Timestamp`] to [`Target::Oracle`] and yields the answer.
///
/// The runtime answers from the client's [`TsoBatcher`], so concurrent
/// operations share its rounds and every timestamp a client uses comes
/// from one strictly increasing sequence (PD's client batches every caller
/// of a process the same way). The round already retried within the TSO
/// budget, so an oracle failure ends this operation with the round's error.
///
/// [`Request::Timestamp`]: crate::rpc::Request::Timestamp
/// [`Target::Oracle`]: crate::rpc::Target::Oracle
#[derive(Debug, Default)]
pub struct GetTimestamp {
    outbox: Option<Rpc>,
    waiting: bool,
    result: Option<Result<Timestamp, Error>>,
}

impl GetTimestamp {
    /// The RPC id of the one request.
    const ID: RpcId = RpcId(1);

    /// A request for one timestamp.
    pub fn new() -> GetTimestamp {
        GetTimestamp::default()
    }
}

impl Operation for GetTimestamp {
    type Output = Timestamp;

    fn start(&mut self, _now: Instant) {
        if self.waiting || self.result.is_some() {
            return;
        }
        self.waiting = true;
        // No deadline of its own: the oracle's round is bounded by its
        // per-RPC timeout and the TSO budget.
        self.outbox = Some(Rpc {
            id: Self::ID,
            target: Target::Oracle,
            request: Request::Timestamp,
            deadline: Instant::MAX,
        });
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.outbox.take()
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, _now: Instant) {
        if id != Self::ID || !self.waiting {
            return;
        }
        self.waiting = false;
        self.result = Some(match response {
            Ok(Response::Timestamp(ts)) => Ok(ts),
            Ok(other) => Err(Error::malformed(format!("timestamp answered by {}", other.name()))),
            Err(RpcError::NoTimestamp(e)) => Err(*e),
            Err(e) => Err(Error::Rpc(e)),
        });
    }

    fn on_timeout(&mut self, _now: Instant) {}

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn poll_result(&mut self) -> Option<Result<Timestamp, Error>> {
        self.result.take()
    }
}

/// Why a TSO stream's answer cannot be trusted; the stream must be closed
/// and every round in flight on it failed (retryably).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TsoStreamError {
    /// An answer arrived with no request outstanding (PD's client: "tsoStream
    /// timing order broken").
    #[error("answer with no request outstanding")]
    Unsolicited,
    /// The answer's count is not the oldest outstanding request's: answers
    /// are out of order or wrong (PD's client: `ErrTSOLength`).
    #[error("answer for {answered} timestamps, the oldest request asked {asked}")]
    CountMismatch {
        /// What the oldest outstanding request asked for.
        asked: u32,
        /// What the answer carries.
        answered: u32,
    },
    /// The answer carries no timestamp.
    #[error("answer without a timestamp")]
    NoTimestamp,
    /// The answer's range does not start above the previous answer's end:
    /// one PD leader answers a stream in increasing order, so the answers
    /// were reordered or the server went backwards.
    #[error("answer starting at {first:#} after {previous:#} on the same stream")]
    NotIncreasing {
        /// The end of the previous answer.
        previous: Timestamp,
        /// The start of this one.
        first: Timestamp,
    },
}

/// The order of one TSO stream: PD answers the requests of a stream one by
/// one, in the order they were sent, so several rounds may be in flight and
/// each answer belongs to the oldest outstanding request. The runtime glue
/// records every request sent and checks every answer here before handing
/// it to its round; an error means the stream is broken.
#[derive(Debug, Default)]
pub struct TsoStreamOrder {
    /// The counts of outstanding requests, oldest first.
    asked: std::collections::VecDeque<u32>,
    /// The end of the previous answer.
    previous: Option<Timestamp>,
}

impl TsoStreamOrder {
    /// Records a request for `count` timestamps sent on the stream.
    pub fn on_send(&mut self, count: u32) {
        self.asked.push_back(count);
    }

    /// Checks an answer against the oldest outstanding request, which it
    /// completes. An answer carrying a PD error header is the oldest
    /// request's (its round reports the error) and is not checked further.
    pub fn on_answer(&mut self, answer: &pdpb::TsoResponse) -> Result<(), TsoStreamError> {
        let asked = self.asked.pop_front().ok_or(TsoStreamError::Unsolicited)?;
        if answer.header.as_ref().is_some_and(|h| h.error.is_some()) {
            return Ok(());
        }
        if answer.count != asked {
            return Err(TsoStreamError::CountMismatch { asked, answered: answer.count });
        }
        let ts = answer.timestamp.as_ref().ok_or(TsoStreamError::NoTimestamp)?;
        let first =
            Timestamp::compose(ts.physical, ts.logical.saturating_sub(i64::from(asked) - 1));
        if let Some(previous) = self.previous
            && first <= previous
        {
            return Err(TsoStreamError::NotIncreasing { previous, first });
        }
        self.previous = Some(Timestamp::compose(ts.physical, ts.logical));
        Ok(())
    }

    /// Requests sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.asked.len()
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use super::*;
    use crate::codec::{ApiCodec, Mode};
    use crate::config::Config;
    use crate::pd::PdState;

    /// client-go's `ValidateReadTS` rule at its edges.
    #[test]
    fn read_timestamps_are_judged_against_what_pd_handed_out() {
        let ts = Timestamp::from_version;
        assert_eq!(judge_read_ts(ts(5), None), Ok(ReadTsVerdict::AskPd), "nothing seen yet");
        assert_eq!(
            judge_read_ts(ts(5), Some(ts(5))),
            Ok(ReadTsVerdict::Safe),
            "exactly handed out"
        );
        assert_eq!(judge_read_ts(ts(6), Some(ts(5))), Ok(ReadTsVerdict::AskPd), "ahead of it");
        assert_eq!(
            judge_read_ts(Timestamp::MAX, Some(ts(5))),
            Ok(ReadTsVerdict::Safe),
            "the latest"
        );
        assert!(matches!(
            judge_read_ts(ts(i64::MAX as u64), Some(ts(5))),
            Err(Error::InvalidArgument(_))
        ));
    }

    fn tso_answer(count: u32, physical: i64, logical: i64) -> pdpb::TsoResponse {
        pdpb::TsoResponse {
            header: None,
            count,
            timestamp: Some(pdpb::Timestamp { physical, logical, suffix_bits: 0 }),
        }
    }

    fn tso_response(count: u32, physical: i64, logical: i64) -> Result<Response, RpcError> {
        Ok(Response::Pd(PdResponse::Tso(Box::new(tso_answer(count, physical, logical)))))
    }

    fn batcher(max_in_flight: usize) -> TsoBatcher<u32> {
        let pd = Arc::new(PdState::new(["pd1:2379"]));
        pd.set_leader("pd1:2379".into());
        let config = Config::default()
            .with_pd_endpoints(["pd1:2379"])
            .with_tso_max_rounds_in_flight(max_in_flight);
        let view = Arc::new(ClusterView::new(config, ApiCodec::v1(Mode::Txn), pd));
        TsoBatcher::new(view, 1)
    }

    /// A round in flight in a [`Script`]: its name, machine, callers and RPC.
    type Flight = (char, TsoRound, TsoRoundCallers<u32>, Rpc);

    /// A script of a client whose callers queue in a batcher with rounds in
    /// flight; every step is written to a transcript.
    struct Script {
        b: TsoBatcher<u32>,
        next_caller: u32,
        rounds: Vec<Flight>,
        next_name: char,
        log: String,
    }

    impl Script {
        fn new(max_in_flight: usize) -> Script {
            Script {
                b: batcher(max_in_flight),
                next_caller: 0,
                rounds: Vec::new(),
                next_name: 'A',
                log: String::new(),
            }
        }

        /// `n` callers arrive; rounds start while the batcher allows.
        fn arrive(&mut self, n: usize) {
            for _ in 0..n {
                self.b.enqueue(self.next_caller);
                self.next_caller += 1;
            }
            writeln!(self.log, "+{n} callers (waiting {})", self.b.waiting()).unwrap();
            self.dispatch();
        }

        fn dispatch(&mut self) {
            while let Some((mut round, callers)) = self.b.poll_round(|_| false) {
                round.start(Instant::ZERO);
                let rpc = round.poll_rpc().expect("a round sends at once");
                let Request::Pd(PdRequest::Tso(req)) = &rpc.request else {
                    panic!("a round sends Tso, not {:?}", rpc.request)
                };
                assert!(matches!(rpc.target, Target::Pd { .. }));
                assert_eq!(req.count as usize, callers.len());
                let name = self.next_name;
                self.next_name = char::from(self.next_name as u8 + 1);
                writeln!(
                    self.log,
                    "  round {name} sent: Tso count={} (in flight {}, waiting {})",
                    req.count,
                    self.b.in_flight(),
                    self.b.waiting()
                )
                .unwrap();
                self.rounds.push((name, round, callers, rpc));
            }
        }

        /// Round `name` gets `answer`; its end is logged, a requeue puts
        /// its callers back, and waiting callers may start rounds.
        fn answer(&mut self, name: char, answer: Result<Response, RpcError>) -> TsoRoundEnd<u32> {
            let at = self.rounds.iter().position(|(n, ..)| *n == name).expect("round in flight");
            let (_, mut round, callers, rpc) = self.rounds.remove(at);
            let shown = match &answer {
                Ok(Response::Pd(PdResponse::Tso(r))) => match &r.timestamp {
                    Some(ts) => format!("count={} ts={}.{}", r.count, ts.physical, ts.logical),
                    None => format!("count={} no timestamp", r.count),
                },
                Ok(other) => other.name().to_string(),
                Err(e) => format!("error {e}"),
            };
            round.on_response(rpc.id, answer, Instant::ZERO);
            let outcome = round.poll_result().expect("one answer ends the round");
            let count = callers.len();
            let end = self.b.finish_round(callers, outcome, Instant::ZERO);
            let said = match &end {
                TsoRoundEnd::Served(served) => {
                    let all: Vec<String> = served.iter().map(|(_, t)| format!("{t:#}")).collect();
                    format!("served [{}]", all.join(", "))
                }
                TsoRoundEnd::Requeued => format!("requeued {count} callers"),
                TsoRoundEnd::Failed(_, e) => format!("failed: {e}"),
            };
            writeln!(self.log, "round {name} answered {shown}: {said}").unwrap();
            self.dispatch();
            end
        }
    }

    /// Callers arriving while every round is out wait and go together into
    /// the round that the next answer frees; up to `max_in_flight` rounds
    /// are out at once, and no caller waits for a round to fill.
    #[test]
    fn rounds_pipeline_up_to_the_limit_and_coalesce_the_rest() {
        let mut s = Script::new(2);
        s.arrive(1);
        s.arrive(3);
        s.arrive(2);
        s.arrive(5);
        s.answer('A', tso_response(1, 100, 1));
        s.answer('B', tso_response(3, 100, 4));
        s.arrive(1);
        s.answer('C', tso_response(7, 100, 11));
        s.answer('D', tso_response(1, 101, 0));
        assert_eq!(s.b.in_flight(), 0);
        assert_eq!(s.b.last(), Some(Timestamp::compose(101, 0)));
        insta::assert_snapshot!(s.log);
    }

    /// Rounds answered out of their sending order (driver scheduling, or a
    /// round retried on a new stream) still hand out strictly increasing
    /// timestamps: the late, lower answer is asked again rather than handed
    /// out or failed. An answer below what was handed out before the round
    /// was even sent is PD going backwards, and fails the round (PD's
    /// client panics on it).
    #[test]
    fn overtaken_rounds_are_asked_again_and_backwards_answers_fail() {
        let mut s = Script::new(3);
        s.arrive(2);
        s.arrive(1);
        s.answer('B', tso_response(1, 100, 9));
        let end = s.answer('A', tso_response(2, 100, 8));
        assert_eq!(end, TsoRoundEnd::Requeued);
        // The requeued callers keep their order and are served first.
        let end = s.answer('C', tso_response(2, 100, 11));
        let TsoRoundEnd::Served(served) = end else { panic!("{end:?}") };
        assert_eq!(
            served.iter().map(|(c, t)| (*c, t.logical())).collect::<Vec<_>>(),
            [(0, 10), (1, 11)]
        );
        s.arrive(1);
        let end = s.answer('D', tso_response(1, 99, 500));
        assert!(
            matches!(end, TsoRoundEnd::Failed(c, Error::MalformedResponse(m)) if c == [3] && m.contains("backwards"))
        );
        insta::assert_snapshot!(s.log);
    }

    /// Wrong answers fail only their round; the slot is freed and later
    /// rounds still have to beat the last good timestamp.
    #[test]
    fn malformed_answers_fail_their_round() {
        let mut s = Script::new(4);
        s.arrive(1);
        assert!(matches!(s.answer('A', tso_response(1, 100, 5)), TsoRoundEnd::Served(_)));
        s.arrive(2);
        s.arrive(1);
        s.arrive(3);
        s.arrive(1);
        s.answer('B', tso_response(1, 200, 1)); // short
        s.answer('C', Ok(Response::Pd(PdResponse::GetMembers(Default::default()))));
        s.answer('D', tso_response(3, 300, 1)); // the first logical would be -1
        s.answer(
            'E',
            Ok(Response::Pd(PdResponse::Tso(Box::new(pdpb::TsoResponse {
                count: 1,
                ..Default::default()
            })))),
        );
        assert_eq!(s.b.in_flight(), 0);
        s.arrive(1);
        assert!(matches!(s.answer('F', tso_response(1, 100, 6)), TsoRoundEnd::Served(_)));
        insta::assert_snapshot!(s.log);
    }

    #[test]
    fn rounds_are_clamped_to_the_batch_limit_and_need_a_caller() {
        let mut b = batcher(1);
        assert!(b.poll_round(|_| false).is_none(), "nobody waits");
        for caller in 0..(MAX_TSO_BATCH * 2) as u32 {
            b.enqueue(caller);
        }
        let (round, callers) = b.poll_round(|_| false).expect("room");
        assert_eq!(round.count(), MAX_TSO_BATCH as u32);
        assert_eq!(callers.len(), MAX_TSO_BATCH);
        assert!(b.poll_round(|_| false).is_none(), "the only slot is taken");
        assert_eq!(b.waiting(), MAX_TSO_BATCH);
        assert_eq!(batcher(0).max_in_flight(), 1, "at least one round");
    }

    /// Callers that gave up before their round left cost no timestamp; a
    /// queue of only such callers sends nothing.
    #[test]
    fn callers_that_gave_up_are_not_asked_for() {
        let mut b = batcher(2);
        for caller in 0..6 {
            b.enqueue(caller);
        }
        let (round, callers) = b.poll_round(|c| c % 2 == 1).expect("room");
        assert_eq!(round.count(), 3);
        assert_eq!(callers.callers, [0, 2, 4]);
        b.enqueue(7);
        assert!(b.poll_round(|_| true).is_none(), "every waiting caller gave up");
        assert_eq!((b.waiting(), b.in_flight()), (0, 1));
    }

    /// A served round becomes the client's low-resolution "now".
    #[test]
    fn a_served_round_is_the_newest_timestamp_seen() {
        let mut b = batcher(1);
        b.enqueue(0);
        b.enqueue(1);
        let (mut round, callers) = b.poll_round(|_| false).expect("room");
        round.start(Instant::ZERO);
        let rpc = round.poll_rpc().expect("sent");
        round.on_response(rpc.id, tso_response(2, 100, 6), Instant::from_millis(3));
        let outcome = round.poll_result().expect("answered");
        let end = b.finish_round(callers, outcome, Instant::from_millis(3));
        assert!(matches!(end, TsoRoundEnd::Served(ref s) if s.len() == 2), "{end:?}");
        let newest = Timestamp::compose(100, 6);
        assert_eq!(b.view.last_ts.newest(), Some(newest));
    }

    /// The leaf asks the oracle once, with no deadline of its own, and
    /// passes on what the oracle answers: a timestamp, the round's typed
    /// error, or a malformed answer.
    #[test]
    fn get_timestamp_asks_the_oracle_once() {
        let ts = Timestamp::compose(5, 1);
        let mut op = GetTimestamp::new();
        op.start(Instant::ZERO);
        let rpc = op.poll_rpc().expect("asks");
        assert_eq!((rpc.target.clone(), rpc.deadline), (Target::Oracle, Instant::MAX));
        assert!(matches!(rpc.request, Request::Timestamp));
        assert!(op.poll_rpc().is_none() && op.poll_timeout().is_none());
        op.start(Instant::ZERO);
        assert!(op.poll_rpc().is_none(), "started once");
        op.on_response(RpcId(99), Ok(Response::Timestamp(ts)), Instant::ZERO);
        assert_eq!(op.poll_result(), None, "not its id");
        op.on_response(rpc.id, Ok(Response::Timestamp(ts)), Instant::ZERO);
        assert_eq!(op.poll_result(), Some(Ok(ts)));

        let failed = |answer: Result<Response, RpcError>| {
            let mut op = GetTimestamp::new();
            op.start(Instant::ZERO);
            let rpc = op.poll_rpc().expect("asks");
            op.on_response(rpc.id, answer, Instant::ZERO);
            op.poll_result().expect("answered").expect_err("an error")
        };
        let pd_down = Error::NoPdLeader("none".into());
        assert_eq!(failed(Err(RpcError::NoTimestamp(Box::new(pd_down.clone())))), pd_down);
        assert_eq!(failed(Err(RpcError::Canceled)), Error::Rpc(RpcError::Canceled));
        let other = Ok(Response::Pd(PdResponse::GetMembers(Default::default())));
        assert!(matches!(failed(other), Error::MalformedResponse(_)));
    }

    /// The stream check: each answer belongs to the oldest request, must
    /// carry its count and must start above the previous answer.
    #[test]
    fn a_stream_answers_its_requests_in_order() {
        let mut order = TsoStreamOrder::default();
        assert_eq!(order.on_answer(&tso_answer(1, 1, 1)), Err(TsoStreamError::Unsolicited));
        order.on_send(2);
        order.on_send(3);
        assert_eq!(order.outstanding(), 2);
        assert_eq!(order.on_answer(&tso_answer(2, 10, 2)), Ok(()));
        // The 3-timestamp answer must start at 10.3 or later.
        assert_eq!(
            order.on_answer(&tso_answer(3, 10, 4)),
            Err(TsoStreamError::NotIncreasing {
                previous: Timestamp::compose(10, 2),
                first: Timestamp::compose(10, 2),
            })
        );
        // A broken stream is dropped; its successor starts afresh.
        let mut order = TsoStreamOrder::default();
        order.on_send(3);
        order.on_send(1);
        // Answers swapped: the count betrays it.
        assert_eq!(
            order.on_answer(&tso_answer(1, 11, 1)),
            Err(TsoStreamError::CountMismatch { asked: 3, answered: 1 })
        );
        let mut order = TsoStreamOrder::default();
        order.on_send(1);
        let mut no_ts = tso_answer(1, 0, 0);
        no_ts.timestamp = None;
        assert_eq!(order.on_answer(&no_ts), Err(TsoStreamError::NoTimestamp));
        // A PD error header belongs to the oldest request, unchecked.
        let mut order = TsoStreamOrder::default();
        order.on_send(5);
        let error = pdpb::TsoResponse {
            header: Some(pdpb::ResponseHeader {
                cluster_id: 1,
                error: Some(pdpb::Error { r#type: 2, message: "not leader".into() }),
            }),
            ..Default::default()
        };
        assert_eq!(order.on_answer(&error), Ok(()));
        assert_eq!(order.outstanding(), 0);
    }

    #[test]
    fn a_batch_lists_consecutive_logicals() {
        let batch = TsoBatch { first: Timestamp::compose(7, 3), count: 3 };
        let all: Vec<Timestamp> = batch.iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(batch.get(2), Some(batch.last()));
        assert_eq!(batch.last(), Timestamp::compose(7, 5));
        assert_eq!(batch.get(3), None);
    }

    #[test]
    fn version_packs_physical_and_logical() {
        let ts = Timestamp::compose(1_700_000_000_000, 3);
        assert_eq!(Timestamp::from_version(ts.version()), ts);
        assert!(Timestamp::compose(1, 0).version() > Timestamp::compose(0, 262_143).version());
    }
}
