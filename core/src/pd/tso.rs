//! Timestamp oracle: batching timestamp requests onto PD's `Tso` stream.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use tikv_proto::pdpb;

use crate::backoff::Backoffer;
use crate::error::Error;
use crate::op::Operation;
use crate::pd::{PdCall, PdState};
use crate::rng::Rng;
use crate::rpc::{PdRequest, PdResponse, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant};

/// Bits of the logical part of a TSO timestamp (`oracle.ComposeTS`).
pub const LOGICAL_BITS: u32 = 18;

/// A PD timestamp: physical milliseconds and an 18-bit logical counter.
///
/// ```
/// use tikv_core::pd::Timestamp;
/// let ts = Timestamp { physical: 1000, logical: 5 };
/// assert_eq!(ts.version(), (1000 << 18) | 5);
/// assert_eq!(Timestamp::from_version(ts.version()), ts);
/// ```
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch, as PD's clock saw them.
    pub physical: i64,
    /// Logical counter within the millisecond.
    pub logical: i64,
}

impl Timestamp {
    /// The `u64` form TiKV uses (`physical << 18 | logical`).
    pub fn version(self) -> u64 {
        ((self.physical.max(0) as u64) << LOGICAL_BITS)
            | (self.logical.max(0) as u64 & ((1 << LOGICAL_BITS) - 1))
    }

    /// Splits a `u64` version into its parts.
    pub fn from_version(v: u64) -> Timestamp {
        Timestamp {
            physical: (v >> LOGICAL_BITS) as i64,
            logical: (v & ((1 << LOGICAL_BITS) - 1)) as i64,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical, self.logical)
    }
}

/// Identifies one caller waiting for a timestamp; chosen by the driver.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TsoWaiter(pub u64);

/// Most timestamps asked for in one `Tso` round (PD's client uses 10,000).
pub const MAX_TSO_BATCH: usize = 10_000;

/// Coalesces timestamp requests: while one round is out, new callers queue;
/// when it returns, everything queued (up to [`MAX_TSO_BATCH`]) goes in the
/// next round. No deliberate wait is added, as PD's client does by default.
///
/// A long-lived machine (not an [`Operation`]): callers [`TsoBatcher::push`],
/// the driver drains [`TsoBatcher::poll_rpc`], feeds responses and timeouts,
/// and hands out [`TsoBatcher::poll_done`] results. Each round is a
/// [`PdCall`], so leader discovery and failover are the same as for any PD
/// request. Timestamps handed out are strictly increasing, also across
/// leader changes: a round that would go backwards fails its callers.
#[derive(Debug)]
pub struct TsoBatcher {
    pd: Arc<PdState>,
    timeout: Duration,
    budget: Duration,
    rng: Rng,
    queue: VecDeque<TsoWaiter>,
    round: Option<(PdCall, Vec<TsoWaiter>)>,
    last: Option<Timestamp>,
    done: VecDeque<(TsoWaiter, Result<Timestamp, Error>)>,
}

impl TsoBatcher {
    /// A batcher whose rounds have `timeout` per RPC and `budget` of retries.
    pub fn new(pd: Arc<PdState>, timeout: Duration, budget: Duration, seed: u64) -> TsoBatcher {
        TsoBatcher {
            pd,
            timeout,
            budget,
            rng: Rng::new(seed),
            queue: VecDeque::new(),
            round: None,
            last: None,
            done: VecDeque::new(),
        }
    }

    /// Queues a caller; starts a round if none is out.
    pub fn push(&mut self, waiter: TsoWaiter, now: Instant) {
        self.queue.push_back(waiter);
        self.maybe_start(now);
    }

    /// Callers waiting (queued or in the round in flight).
    pub fn pending(&self) -> usize {
        self.queue.len() + self.round.as_ref().map_or(0, |(_, w)| w.len())
    }

    fn maybe_start(&mut self, now: Instant) {
        if self.round.is_some() || self.queue.is_empty() {
            return;
        }
        let n = self.queue.len().min(MAX_TSO_BATCH);
        let waiters: Vec<TsoWaiter> = self.queue.drain(..n).collect();
        let request = PdRequest::Tso(pdpb::TsoRequest { count: n as u32, ..Default::default() });
        let backoffer = Backoffer::new(self.budget, self.rng.fork());
        let mut call = PdCall::new(self.pd.clone(), request, self.timeout, backoffer);
        call.start(now);
        self.round = Some((call, waiters));
        self.check_round(now);
    }

    /// The next RPC to send.
    pub fn poll_rpc(&mut self) -> Option<Rpc> {
        self.round.as_mut().and_then(|(call, _)| call.poll_rpc())
    }

    /// Feeds the outcome of an RPC.
    pub fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        if let Some((call, _)) = self.round.as_mut() {
            call.on_response(id, response, now);
        }
        self.check_round(now);
    }

    /// Called when [`TsoBatcher::poll_timeout`] has passed.
    pub fn on_timeout(&mut self, now: Instant) {
        if let Some((call, _)) = self.round.as_mut() {
            call.on_timeout(now);
        }
        self.check_round(now);
    }

    /// When the batcher next needs [`TsoBatcher::on_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.round.as_ref().and_then(|(call, _)| call.poll_timeout())
    }

    /// A finished caller and its timestamp.
    pub fn poll_done(&mut self) -> Option<(TsoWaiter, Result<Timestamp, Error>)> {
        self.done.pop_front()
    }

    fn check_round(&mut self, now: Instant) {
        let outcome = match self.round.as_mut() {
            Some((call, _)) => call.poll_result(),
            None => return,
        };
        let Some(outcome) = outcome else {
            return;
        };
        let Some((_, waiters)) = self.round.take() else {
            return;
        };
        match outcome.and_then(|r| self.allocate(r, waiters.len())) {
            Ok(first) => {
                for (i, w) in waiters.into_iter().enumerate() {
                    let ts =
                        Timestamp { physical: first.physical, logical: first.logical + i as i64 };
                    self.done.push_back((w, Ok(ts)));
                }
            }
            Err(e) => {
                for w in waiters {
                    self.done.push_back((w, Err(e.clone())));
                }
            }
        }
        self.maybe_start(now);
    }

    /// Validates a round's answer and returns the first timestamp of the
    /// batch (PD returns the last one; the batch is `count` consecutive
    /// logical values ending there).
    fn allocate(&mut self, resp: PdResponse, count: usize) -> Result<Timestamp, Error> {
        let PdResponse::Tso(resp) = resp else {
            return Err(Error::malformed(format!("TSO round answered by {}", resp.name())));
        };
        if resp.count as usize != count {
            return Err(Error::malformed(format!(
                "TSO returned {} timestamps, {count} asked",
                resp.count
            )));
        }
        let Some(ts) = resp.timestamp else {
            return Err(Error::malformed("TSO response without a timestamp"));
        };
        let first = Timestamp { physical: ts.physical, logical: ts.logical - count as i64 + 1 };
        if first.physical < 0 || first.logical < 0 || ts.logical >= 1 << LOGICAL_BITS {
            return Err(Error::malformed(format!("TSO returned an invalid timestamp {ts:?}")));
        }
        let last = Timestamp { physical: ts.physical, logical: ts.logical };
        if let Some(prev) = self.last
            && first <= prev
        {
            return Err(Error::malformed(format!(
                "TSO went backwards: {first} after {prev} (PD leader change without a fence?)"
            )));
        }
        self.last = Some(last);
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use super::*;
    use crate::rpc::Target;

    fn tso_response(count: u32, physical: i64, logical: i64) -> Result<Response, RpcError> {
        Ok(Response::Pd(PdResponse::Tso(pdpb::TsoResponse {
            header: None,
            count,
            timestamp: Some(pdpb::Timestamp { physical, logical, suffix_bits: 0 }),
        })))
    }

    fn batcher() -> TsoBatcher {
        let pd = Arc::new(PdState::new(["pd1:2379"]));
        pd.set_leader("pd1:2379".into());
        TsoBatcher::new(pd, Duration::from_secs(3), Duration::from_secs(30), 1)
    }

    /// Callers arriving while a round is out are coalesced into the next
    /// round; each gets a distinct, increasing timestamp.
    #[test]
    fn rounds_coalesce_waiting_callers() {
        let mut b = batcher();
        let mut log = String::new();
        let now = Instant::ZERO;
        b.push(TsoWaiter(1), now);
        let first = b.poll_rpc().expect("a round starts at once");
        let _ = writeln!(log, "send {:?} to {:?}", first.request, first.target);
        for w in 2..=4 {
            b.push(TsoWaiter(w), now);
        }
        assert!(b.poll_rpc().is_none(), "one round in flight at a time");
        assert_eq!(b.pending(), 4);
        b.on_response(first.id, tso_response(1, 100, 7), now);
        let second = b.poll_rpc().expect("queued callers go in the next round");
        match &second.request {
            crate::rpc::Request::Pd(PdRequest::Tso(r)) => assert_eq!(r.count, 3),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(second.target, Target::Pd { .. }));
        b.on_response(second.id, tso_response(3, 100, 10), now);
        while let Some((w, ts)) = b.poll_done() {
            let _ = writeln!(log, "waiter {} <- {}", w.0, ts.expect("timestamp"));
        }
        insta::assert_snapshot!(log, @r"
        send tso to pd(pd1:2379)
        waiter 1 <- 100.7
        waiter 2 <- 100.8
        waiter 3 <- 100.9
        waiter 4 <- 100.10
        ");
    }

    #[test]
    fn a_round_that_goes_backwards_or_is_malformed_fails_its_callers() {
        let mut b = batcher();
        let now = Instant::ZERO;
        b.push(TsoWaiter(1), now);
        let r = b.poll_rpc().expect("round");
        b.on_response(r.id, tso_response(1, 100, 5), now);
        assert!(b.poll_done().expect("done").1.is_ok());

        b.push(TsoWaiter(2), now);
        let r = b.poll_rpc().expect("round");
        b.on_response(r.id, tso_response(1, 99, 9), now);
        let (w, res) = b.poll_done().expect("done");
        assert_eq!(w, TsoWaiter(2));
        assert!(matches!(res, Err(Error::MalformedResponse(m)) if m.contains("backwards")));

        b.push(TsoWaiter(3), now);
        let r = b.poll_rpc().expect("round");
        b.on_response(r.id, tso_response(2, 200, 1), now);
        assert!(matches!(b.poll_done().expect("done").1, Err(Error::MalformedResponse(_))));

        b.push(TsoWaiter(4), now);
        let r = b.poll_rpc().expect("round");
        let wrong = Ok(Response::Pd(PdResponse::GetMembers(Default::default())));
        b.on_response(r.id, wrong, now);
        assert!(matches!(b.poll_done().expect("done").1, Err(Error::MalformedResponse(_))));
    }

    #[test]
    fn version_packs_physical_and_logical() {
        let ts = Timestamp { physical: 1_700_000_000_000, logical: 3 };
        assert_eq!(Timestamp::from_version(ts.version()), ts);
        assert!(
            Timestamp { physical: 1, logical: 0 }.version()
                > Timestamp { physical: 0, logical: 262_143 }.version()
        );
    }
}
