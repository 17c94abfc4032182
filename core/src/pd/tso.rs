//! Timestamp oracle: batching timestamp requests onto PD's `Tso` stream.

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

/// The newest timestamp a client has seen and when it arrived: client-go's
/// low-resolution timestamp (`pdOracle.lastTS`, refreshed every 2 s by its
/// updater and by every timestamp it fetches). The lock resolver uses it as
/// "now" for TTL checks instead of asking PD each time. A stale value only
/// makes locks look alive longer, never expired early, so it is safe; it is
/// used only while younger than a bound, after which a fresh timestamp is
/// fetched (and recorded), so resolution never waits on a frozen clock.
#[derive(Debug, Default)]
pub struct LastTimestamp {
    seen: std::sync::Mutex<Option<(u64, Instant)>>,
}

impl LastTimestamp {
    /// Records `ts`, obtained at `now`, if it is the newest seen.
    pub fn observe(&self, ts: u64, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_none_or(|(last, _)| ts > last) {
            *seen = Some((ts, now));
        }
    }

    /// The newest timestamp seen, however old: every timestamp up to it has
    /// been handed out by PD.
    pub fn newest(&self) -> Option<u64> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).map(|(ts, _)| ts)
    }

    /// The newest timestamp, if it arrived less than `max_age` before `now`.
    pub fn fresh(&self, now: Instant, max_age: Duration) -> Option<u64> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.filter(|&(_, at)| now.saturating_duration_since(at) < max_age).map(|(ts, _)| ts)
    }
}

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
/// use tikv_core::pd::{ReadTsVerdict, judge_read_ts};
/// assert_eq!(judge_read_ts(10, Some(12)), Ok(ReadTsVerdict::Safe));
/// assert_eq!(judge_read_ts(13, Some(12)), Ok(ReadTsVerdict::AskPd));
/// assert_eq!(judge_read_ts(u64::MAX, None), Ok(ReadTsVerdict::Safe));
/// assert!(judge_read_ts(u64::MAX - 1, Some(12)).is_err());
/// ```
pub fn judge_read_ts(read_ts: u64, handed_out: Option<u64>) -> Result<ReadTsVerdict, Error> {
    if read_ts == u64::MAX {
        return Ok(ReadTsVerdict::Safe);
    }
    if read_ts >= i64::MAX as u64 {
        return Err(Error::InvalidArgument(format!("read ts {read_ts} is not a TSO timestamp")));
    }
    Ok(if handed_out.is_some_and(|ts| read_ts <= ts) {
        ReadTsVerdict::Safe
    } else {
        ReadTsVerdict::AskPd
    })
}

/// Most timestamps asked for in one `Tso` round (PD's client uses 10,000).
pub const MAX_TSO_BATCH: usize = 10_000;

/// The timestamp oracle's client side: batches of callers become `Tso`
/// rounds, and handed-out timestamps are strictly increasing, also across
/// PD leader changes (a round that would go backwards fails its callers).
///
/// The driver owns one per client. While a round is out, new callers queue
/// (in the driver's channel); when it returns, everything queued, up to
/// [`MAX_TSO_BATCH`], goes into the next round — no deliberate wait, as PD's
/// client does by default:
///
/// 1. [`TsoBatcher::start_round`] for `n` waiting callers gives a
///    [`TsoRound`] operation (a [`PdCall`], so discovery and failover are
///    the same as for any PD request);
/// 2. the driver executes it;
/// 3. [`TsoBatcher::finish_round`] with [`TsoRound::count`] checks the
///    answer and returns `n` timestamps in order.
#[derive(Debug)]
pub struct TsoBatcher {
    pd: Arc<PdState>,
    timeout: Duration,
    budget: Duration,
    rng: Rng,
    last: Option<Timestamp>,
}

/// One `Tso` round for `count` callers; yields PD's answer.
#[derive(Debug)]
pub struct TsoRound {
    call: PdCall,
    count: u32,
}

impl TsoBatcher {
    /// A batcher whose rounds have `timeout` per RPC and `budget` of retries.
    pub fn new(pd: Arc<PdState>, timeout: Duration, budget: Duration, seed: u64) -> TsoBatcher {
        TsoBatcher { pd, timeout, budget, rng: Rng::new(seed), last: None }
    }

    /// A round for `count` callers (clamped to 1..=[`MAX_TSO_BATCH`]).
    pub fn start_round(&mut self, count: usize) -> TsoRound {
        let count = count.clamp(1, MAX_TSO_BATCH) as u32;
        let request = PdRequest::Tso(Box::new(pdpb::TsoRequest { count, ..Default::default() }));
        let backoffer = Backoffer::new(self.budget, self.rng.fork());
        TsoRound { call: PdCall::new(self.pd.clone(), request, self.timeout, backoffer), count }
    }

    /// Validates a round's answer and returns its `count` timestamps in
    /// order. PD answers with the last timestamp of the batch; the batch is
    /// the `count` consecutive logical values ending there.
    pub fn finish_round(
        &mut self,
        count: u32,
        outcome: Result<PdResponse, Error>,
    ) -> Result<Vec<Timestamp>, Error> {
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
        let first = Timestamp { physical: ts.physical, logical: ts.logical - i64::from(count) + 1 };
        if first.physical < 0 || first.logical < 0 || ts.logical >= 1 << LOGICAL_BITS {
            return Err(Error::malformed(format!("TSO returned an invalid timestamp {ts:?}")));
        }
        if let Some(prev) = self.last
            && first <= prev
        {
            return Err(Error::malformed(format!(
                "TSO went backwards: {first} after {prev} (PD leader change without a fence?)"
            )));
        }
        self.last = Some(Timestamp { physical: ts.physical, logical: ts.logical });
        Ok((0..i64::from(count))
            .map(|i| Timestamp { physical: first.physical, logical: first.logical + i })
            .collect())
    }

    /// The last timestamp handed out, if any (client-go keeps it as the
    /// low-resolution timestamp between refreshes).
    pub fn last(&self) -> Option<Timestamp> {
        self.last
    }
}

impl TsoRound {
    /// How many timestamps the round asks for (pass it to
    /// [`TsoBatcher::finish_round`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// client-go's `ValidateReadTS` rule at its edges.
    #[test]
    fn read_timestamps_are_judged_against_what_pd_handed_out() {
        assert_eq!(judge_read_ts(5, None), Ok(ReadTsVerdict::AskPd), "nothing seen yet");
        assert_eq!(judge_read_ts(5, Some(5)), Ok(ReadTsVerdict::Safe), "exactly handed out");
        assert_eq!(judge_read_ts(6, Some(5)), Ok(ReadTsVerdict::AskPd), "ahead of it");
        assert_eq!(judge_read_ts(u64::MAX, Some(5)), Ok(ReadTsVerdict::Safe), "the latest");
        assert!(matches!(judge_read_ts(i64::MAX as u64, Some(5)), Err(Error::InvalidArgument(_))));
    }
    use crate::rpc::{Request, Target};

    fn tso_response(count: u32, physical: i64, logical: i64) -> Result<Response, RpcError> {
        Ok(Response::Pd(PdResponse::Tso(Box::new(pdpb::TsoResponse {
            header: None,
            count,
            timestamp: Some(pdpb::Timestamp { physical, logical, suffix_bits: 0 }),
        }))))
    }

    fn batcher() -> TsoBatcher {
        let pd = Arc::new(PdState::new(["pd1:2379"]));
        pd.set_leader("pd1:2379".into());
        TsoBatcher::new(pd, Duration::from_secs(3), Duration::from_secs(30), 1)
    }

    /// Runs one round against a scripted answer.
    fn round(
        b: &mut TsoBatcher,
        callers: usize,
        answer: Result<Response, RpcError>,
    ) -> (Rpc, Result<Vec<Timestamp>, Error>) {
        let mut r = b.start_round(callers);
        r.start(Instant::ZERO);
        let rpc = r.poll_rpc().expect("a round sends at once");
        r.on_response(rpc.id, answer, Instant::ZERO);
        let outcome = r.poll_result().expect("one answer ends the round");
        let result = b.finish_round(r.count(), outcome);
        (rpc, result)
    }

    /// A round for n callers asks PD for n timestamps on the leader's TSO
    /// stream and hands out n consecutive logical values ending at PD's.
    #[test]
    fn a_round_serves_its_callers_consecutive_timestamps() {
        let mut b = batcher();
        let (rpc, ts) = round(&mut b, 4, tso_response(4, 100, 10));
        assert!(matches!(rpc.target, Target::Pd { .. }));
        match &rpc.request {
            Request::Pd(PdRequest::Tso(r)) => assert_eq!(r.count, 4),
            other => panic!("unexpected {other:?}"),
        }
        let shown: Vec<String> = ts.expect("timestamps").iter().map(|t| t.to_string()).collect();
        assert_eq!(shown, ["100.7", "100.8", "100.9", "100.10"]);
        assert_eq!(b.last(), Some(Timestamp { physical: 100, logical: 10 }));
    }

    #[test]
    fn a_round_that_goes_backwards_or_is_malformed_fails_its_callers() {
        let mut b = batcher();
        assert!(round(&mut b, 1, tso_response(1, 100, 5)).1.is_ok());
        let backwards = round(&mut b, 1, tso_response(1, 99, 9)).1;
        assert!(matches!(backwards, Err(Error::MalformedResponse(m)) if m.contains("backwards")));
        let short = round(&mut b, 2, tso_response(1, 200, 1)).1;
        assert!(matches!(short, Err(Error::MalformedResponse(_))));
        let wrong = Ok(Response::Pd(PdResponse::GetMembers(Default::default())));
        assert!(matches!(round(&mut b, 1, wrong).1, Err(Error::MalformedResponse(_))));
        let underflow = round(&mut b, 3, tso_response(3, 300, 1)).1;
        assert!(matches!(underflow, Err(Error::MalformedResponse(_))));
        // A good round after the bad ones still has to beat the last good one.
        assert!(round(&mut b, 1, tso_response(1, 100, 6)).1.is_ok());
    }

    #[test]
    fn rounds_are_clamped_to_the_batch_limit() {
        let mut b = batcher();
        assert_eq!(b.start_round(0).count, 1);
        assert_eq!(b.start_round(MAX_TSO_BATCH * 2).count, MAX_TSO_BATCH as u32);
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
