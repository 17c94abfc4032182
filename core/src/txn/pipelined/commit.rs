//! Committing a pipelined transaction, and its heartbeats (client-go
//! `commitFlushedMutations`, the pipelined cleanup, and `keepAlive` with
//! `isPipelinedTxn`).
//!
//! Commit: the last generation is flushed, a commit ts is fetched, and only
//! the primary is committed: that commit decides the transaction. The rest
//! of the flushed range is then resolved region by region in the background
//! ([`resolve_flushed`] with the commit ts, [`PipelinedCommit::take_follow_up`]);
//! a failure that leaves nothing committed hands back the same resolution
//! with a zero commit ts (a rollback), and an undetermined primary commit
//! hands back nothing: readers resolve the locks through the primary.
//!
//! Rollback is the resolution alone, with a zero commit ts
//! ([`resolve_flushed`] with [`Timestamp::ZERO`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tikv_proto::kvrpcpb;

use crate::Error;
use crate::key::Key;
use crate::op::{IdMap, Operation, StepEvent, StepSlot, forward_step_inputs};
use crate::pd::{GetTimestamp, Timestamp};
use crate::range_task::RangeTaskRunner;
use crate::route::fanout::Point;
use crate::rpc::{RequestTags, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant};
use crate::txn::commit::{
    CommitPlan, HEARTBEAT_INTERVAL, HeartbeatPlan, MAX_COMMIT_TS_PUSH, MAX_HEARTBEAT_FAILURES,
    MAX_LOCK_TTL, Mutation,
};
use crate::view::ClusterView;

use super::{
    BroadcastTxnStatus, FlushGeneration, FlushRequest, ResolveFlushedHandler, TxnStatusUpdate,
    resolve_flushed,
};

/// How often a keep-alive waiting for its primary's lock looks again
/// ([`PipelinedKeepAlive::after_primary_written`]).
pub const PRIMARY_WRITTEN_POLL: Duration = Duration::from_millis(500);

/// How long a pipelined transaction's heartbeats go on at most (client-go
/// `MaxPipelinedTxnTTL`, 24 h): past it the primary may expire.
pub const MAX_PIPELINED_TXN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What a pipelined commit needs besides its last generation.
#[derive(Clone, Debug)]
pub struct PipelinedCommitRequest {
    /// The transaction's start ts.
    pub start_ts: Timestamp,
    /// Its primary key (the first key of its first generation).
    pub primary: Key,
    /// The smallest and largest key any generation flushed, the last one
    /// included ([`super::PipelinedBuffer::flushed_range`]).
    pub flushed_range: (Key, Key),
    /// Region batches of the last generation flushed at once
    /// ([`FlushGeneration::with_concurrency`]).
    pub flush_concurrency: usize,
    /// Regions resolved at once afterwards.
    pub resolve_concurrency: usize,
    /// Priority, request source and resource group of every request.
    pub tags: RequestTags,
}

/// What a step of the commit produced.
enum Step {
    Flushed(Result<(), Error>),
    Timestamp(Result<Timestamp, Error>),
    Primary(Box<Result<Result<Vec<Key>, kvrpcpb::KeyError>, Error>>),
}

/// The commit of a pipelined transaction (module docs). Its output is the
/// commit ts; errors are definite unless [`Error::Undetermined`].
pub struct PipelinedCommit {
    view: Arc<ClusterView>,
    req: PipelinedCommitRequest,
    /// The last generation's flush, run first.
    last_flush: Option<FlushGeneration>,
    step: StepSlot<Step>,
    commit_backoffer: crate::backoff::Backoffer,
    commit_ts: Timestamp,
    /// A primary `Commit` was sent whose answer never came.
    lost_answer: bool,
    follow_up: Option<RangeTaskRunner<ResolveFlushedHandler>>,
    started: bool,
    result: Option<Result<Timestamp, Error>>,
}

impl std::fmt::Debug for PipelinedCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelinedCommit")
            .field("start_ts", &self.req.start_ts)
            .field("commit_ts", &self.commit_ts)
            .finish()
    }
}

impl PipelinedCommit {
    /// Commits the transaction `req` describes, flushing `last` first (the
    /// generation [`super::PipelinedBuffer::start_flush`] handed off with
    /// `force`, if it had anything): `flush` carries its generation.
    pub fn new(
        view: Arc<ClusterView>,
        req: PipelinedCommitRequest,
        last: Option<(FlushRequest, Vec<Mutation>)>,
    ) -> PipelinedCommit {
        let last_flush = last.map(|(flush, mutations)| {
            FlushGeneration::new(view.clone(), flush, mutations)
                .with_concurrency(req.flush_concurrency)
        });
        let budget = view.config.budget(view.config.backoff.commit);
        let commit_backoffer = view.backoffer(budget);
        PipelinedCommit {
            view,
            req,
            last_flush,
            step: StepSlot::new(),
            commit_backoffer,
            commit_ts: Timestamp::ZERO,
            lost_answer: false,
            follow_up: None,
            started: false,
            result: None,
        }
    }

    /// The background work once the commit has ended: the flushed range
    /// resolved with the commit ts after a success, rolled back after a
    /// definite failure; nothing after an undetermined one.
    pub fn take_follow_up(&mut self) -> Option<RangeTaskRunner<ResolveFlushedHandler>> {
        self.follow_up.take()
    }

    fn finish(&mut self, result: Result<Timestamp, Error>) {
        let commit_ts = match &result {
            Ok(ts) => Some(*ts),
            Err(Error::Undetermined(_)) => None,
            // client-go's cleanup of a pipelined transaction: every flushed
            // lock rolled back, region by region.
            Err(_) => Some(Timestamp::ZERO),
        };
        self.follow_up = commit_ts.map(|ts| {
            resolve_flushed(
                &self.view,
                self.req.flushed_range.clone(),
                self.req.start_ts,
                ts,
                self.req.resolve_concurrency,
            )
        });
        self.result = Some(result);
    }

    fn tso(&mut self, now: Instant) {
        self.step.start(GetTimestamp::new(), Step::Timestamp, now);
    }

    fn commit_primary(&mut self, now: Instant) {
        let plan = CommitPlan::primary_alone(self.req.start_ts, self.commit_ts);
        let op = Point::fanout(
            &self.view,
            plan,
            self.req.primary.clone(),
            self.view.config.read_timeout_short,
            self.commit_backoffer.fork(),
        )
        .with_tags(&self.req.tags);
        self.step.start(op, |outcome| Step::Primary(Box::new(outcome)), now);
    }

    fn after_tso(&mut self, outcome: Result<Timestamp, Error>, now: Instant) {
        match outcome {
            Ok(ts) if ts <= self.req.start_ts => self.finish(Err(Error::malformed(format!(
                "commit ts {ts} not after start ts {}",
                self.req.start_ts
            )))),
            Ok(ts) => {
                self.commit_ts = ts;
                self.commit_primary(now);
            }
            // Nothing is committed before the primary's commit.
            Err(e) => self.finish(Err(e)),
        }
    }

    /// The primary's commit answered (as the 2PC committer reads it).
    fn after_primary(
        &mut self,
        outcome: Result<Result<Vec<Key>, kvrpcpb::KeyError>, Error>,
        now: Instant,
    ) {
        match outcome {
            Ok(Ok(_)) => self.finish(Ok(self.commit_ts)),
            Ok(Err(e))
                if e.commit_ts_expired.as_ref().is_some_and(|x| {
                    x.min_commit_ts.saturating_sub(x.attempted_commit_ts) > MAX_COMMIT_TS_PUSH
                }) =>
            {
                self.finish(Err(Error::KeyError(Box::new(e))))
            }
            // The heartbeats or a reader pushed the primary's min_commit_ts
            // past the commit ts: commit at a newer one.
            Ok(Err(e)) if e.commit_ts_expired.is_some() => self.tso(now),
            // Refused (the lock is gone and no commit record: rolled back
            // by a resolver, or any other key error): nothing committed.
            Ok(Err(e)) => self.finish(Err(Error::KeyError(Box::new(e)))),
            Err(e) if self.lost_answer => self.finish(Err(Error::Undetermined(format!(
                "commit of primary {:?} of pipelined txn {} at {}: {e}",
                self.req.primary, self.req.start_ts, self.commit_ts
            )))),
            // No Commit reached TiKV: nothing committed.
            Err(e) => self.finish(Err(e)),
        }
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(Some(&mut self.commit_backoffer)) {
            match event {
                StepEvent::Woke => self.tso(now),
                StepEvent::Done(Step::Flushed(Ok(()))) => self.tso(now),
                StepEvent::Done(Step::Flushed(Err(e))) => self.finish(Err(e)),
                StepEvent::Done(Step::Timestamp(outcome)) => self.after_tso(outcome, now),
                StepEvent::Done(Step::Primary(outcome)) => {
                    self.lost_answer |= self.step.lost_answers() > 0;
                    self.after_primary(*outcome, now);
                }
            }
        }
    }
}

impl Operation for PipelinedCommit {
    type Output = Timestamp;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        match self.last_flush.take() {
            Some(flush) => self.step.start(flush, Step::Flushed, now),
            None => self.tso(now),
        }
        self.check(now);
    }

    forward_step_inputs!(step);

    fn poll_result(&mut self) -> Option<Result<Timestamp, Error>> {
        if self.result.is_some() {
            self.step.clear();
        }
        self.result.take()
    }

    fn backoff_spent(&self) -> Option<&crate::backoff::Backoffer> {
        Some(&self.commit_backoffer)
    }
}

// ---------------------------------------------------------------- heartbeats

/// What a pipelined transaction's heartbeats have done, shared with the
/// transaction.
#[derive(Debug, Default)]
pub struct PipelinedTxnStatus {
    min_commit_ts: AtomicU64,
    beats: AtomicU64,
    stopped: AtomicBool,
}

impl PipelinedTxnStatus {
    /// The `min_commit_ts` the primary's lock was last pushed to (zero
    /// before the first beat).
    pub fn min_commit_ts(&self) -> Timestamp {
        Timestamp::from_version(self.min_commit_ts.load(Ordering::Relaxed))
    }

    /// Heartbeats TiKV accepted.
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Whether the heartbeats gave up ([`MAX_HEARTBEAT_FAILURES`] failures
    /// in a row, or [`MAX_PIPELINED_TXN_TTL`] reached): client-go then
    /// stops flushing, the transaction can only roll back.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// What a beat's step produced.
enum Beat {
    Timestamp(Result<Timestamp, Error>),
    Sent(Result<bool, Error>),
}

/// A pipelined transaction's TTL manager (client-go `keepAlive` with
/// `isPipelinedTxn`): every [`HEARTBEAT_INTERVAL`] it fetches a timestamp
/// and sends `TxnHeartBeat` on the primary with the transaction's age plus
/// [`MAX_LOCK_TTL`] as TTL and that timestamp as the lock's new
/// `min_commit_ts`, so readers at older timestamps read past its locks
/// instead of waiting for a transaction that may run for hours. After each
/// accepted beat it broadcasts that `min_commit_ts` to every store
/// ([`BroadcastTxnStatus`]) in the background, as client-go does only once
/// the primary holds it (the primary stays the source of truth); a newer
/// broadcast replaces one still in flight. It ends
/// after [`MAX_HEARTBEAT_FAILURES`] failures in a row or at
/// [`MAX_PIPELINED_TXN_TTL`], marking [`PipelinedTxnStatus::stopped`]; its
/// owner drops it when the transaction ends.
#[derive(Debug)]
pub struct PipelinedKeepAlive {
    view: Arc<ClusterView>,
    start_ts: Timestamp,
    primary: Key,
    tags: RequestTags,
    status: Arc<PipelinedTxnStatus>,
    next_at: Instant,
    failures: u32,
    /// The pushed ts of the beat in flight.
    pushing: Timestamp,
    step: StepSlot<Beat>,
    /// The broadcast of the last accepted beat, and its number.
    broadcast: Option<(u64, BroadcastTxnStatus)>,
    broadcasts: u64,
    /// Our RPC id → `None` for the beat's step, or the number of the
    /// broadcast that sent it.
    ids: IdMap<Option<u64>>,
    /// Beats wait until this is set (the primary's lock is written).
    primary_written: Option<Arc<AtomicBool>>,
    result: Option<Result<(), Error>>,
}

impl PipelinedKeepAlive {
    /// Keeps the primary lock of pipelined transaction `start_ts` alive.
    pub fn new(
        view: Arc<ClusterView>,
        start_ts: Timestamp,
        primary: Key,
        tags: RequestTags,
    ) -> PipelinedKeepAlive {
        PipelinedKeepAlive {
            view,
            start_ts,
            primary,
            tags,
            status: Arc::new(PipelinedTxnStatus::default()),
            next_at: Instant::MAX,
            failures: 0,
            pushing: Timestamp::ZERO,
            step: StepSlot::new(),
            broadcast: None,
            broadcasts: 0,
            ids: IdMap::new(),
            primary_written: None,
            result: None,
        }
    }

    /// Beats only once `flag` is set: the keep-alive can then start with
    /// the first generation's flush
    /// ([`super::FlushGeneration::signal_primary_written`]), as client-go
    /// starts it when the primary's batch is written. A beat due earlier is
    /// put off by [`PRIMARY_WRITTEN_POLL`].
    pub fn after_primary_written(mut self, flag: Arc<AtomicBool>) -> PipelinedKeepAlive {
        self.primary_written = Some(flag);
        self
    }

    /// The counters the beats keep, to read while they run.
    pub fn status(&self) -> Arc<PipelinedTxnStatus> {
        self.status.clone()
    }

    fn stop(&mut self) {
        self.status.stopped.store(true, Ordering::Relaxed);
        self.step.clear();
        self.broadcast = None;
        self.result = Some(Ok(()));
    }

    /// Broadcasts the `min_commit_ts` the primary now holds.
    fn broadcast(&mut self, now: Instant) {
        let status = TxnStatusUpdate::ongoing(self.start_ts, self.status.min_commit_ts());
        let mut op = BroadcastTxnStatus::new(self.view.clone(), vec![status], self.tags.clone());
        op.start(now);
        self.broadcasts += 1;
        self.broadcast = Some((self.broadcasts, op));
        self.end_broadcast_if_done();
    }

    /// Drops the broadcast once it is over: failures are tolerated
    /// (client-go logs them); the next beat tells the stores again.
    fn end_broadcast_if_done(&mut self) {
        if let Some((_, op)) = &mut self.broadcast
            && op.poll_result().is_some()
        {
            self.broadcast = None;
        }
    }

    fn failed(&mut self) {
        self.failures += 1;
        if self.failures >= MAX_HEARTBEAT_FAILURES {
            self.stop();
        }
    }

    fn check(&mut self, now: Instant) {
        while let Some(event) = self.step.poll_event(None) {
            match event {
                StepEvent::Woke => {}
                // client-go ends the keep-alive when it cannot get a
                // timestamp; here that counts as a failed beat.
                StepEvent::Done(Beat::Timestamp(Err(_))) => self.failed(),
                StepEvent::Done(Beat::Timestamp(Ok(ts))) => self.send(ts, now),
                StepEvent::Done(Beat::Sent(Ok(true))) => {
                    self.failures = 0;
                    self.status.beats.fetch_add(1, Ordering::Relaxed);
                    self.status.min_commit_ts.fetch_max(self.pushing.version(), Ordering::Relaxed);
                    self.broadcast(now);
                }
                StepEvent::Done(Beat::Sent(_)) => self.failed(),
            }
        }
    }

    /// The beat for `now_ts`: its TTL from the transaction's age by the
    /// TSO, as client-go computes it.
    fn send(&mut self, now_ts: Timestamp, now: Instant) {
        let uptime_ms = now_ts.physical().saturating_sub(self.start_ts.physical());
        let uptime = u64::try_from(uptime_ms).unwrap_or(0);
        if Duration::from_millis(uptime) > MAX_PIPELINED_TXN_TTL {
            self.stop();
            return;
        }
        self.pushing = now_ts;
        let plan = HeartbeatPlan {
            start_ts: self.start_ts,
            advise_lock_ttl: uptime + MAX_LOCK_TTL,
            min_commit_ts: now_ts,
            ok: false,
        };
        let view = &self.view;
        let budget = view.config.budget(view.config.backoff.txn_heartbeat);
        let op = Point::fanout(
            view,
            plan,
            self.primary.clone(),
            view.config.read_timeout_short,
            view.backoffer(budget),
        )
        .with_tags(&self.tags);
        self.step.start(op, Beat::Sent, now);
    }

    fn beat_if_due(&mut self, now: Instant) {
        if self.result.is_some() || !self.step.is_idle() || now < self.next_at {
            return;
        }
        if self.primary_written.as_ref().is_some_and(|f| !f.load(Ordering::Relaxed)) {
            self.next_at = now + PRIMARY_WRITTEN_POLL;
            return;
        }
        self.next_at = now + HEARTBEAT_INTERVAL;
        self.step.start(GetTimestamp::new(), Beat::Timestamp, now);
        self.check(now);
    }
}

impl Operation for PipelinedKeepAlive {
    type Output = ();

    fn start(&mut self, now: Instant) {
        if self.next_at == Instant::MAX {
            self.next_at = now + HEARTBEAT_INTERVAL;
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        if let Some(rpc) = self.step.poll_rpc() {
            return Some(self.ids.wrap(None, rpc));
        }
        let (number, op) = self.broadcast.as_mut()?;
        let rpc = op.poll_rpc()?;
        Some(self.ids.wrap(Some(*number), rpc))
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((child, child_id)) = self.ids.take(id) else { return };
        let Some(number) = child else {
            if self.step.on_response(child_id, response, now) {
                self.check(now);
            }
            return;
        };
        // An answer to a replaced broadcast is dropped.
        if let Some((current, op)) = &mut self.broadcast
            && *current == number
        {
            op.on_response(child_id, response, now);
            self.end_broadcast_if_done();
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.step.on_timeout(now);
        self.check(now);
        self.beat_if_due(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        if self.step.is_idle() { Some(self.next_at) } else { self.step.poll_timeout() }
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use bytes::Bytes;
    use tikv_proto::kvrpcpb;

    use super::*;
    use crate::rpc::{KvRequest, KvResponse};
    use crate::testing::{FakeCluster, Fault, drive, view};
    use crate::txn::pipelined::{FlushStart, FlushThresholds, PipelinedBuffer};

    fn start_ts() -> Timestamp {
        Timestamp::compose(500, 0)
    }

    fn respond(resp: KvResponse) -> Fault {
        Fault::Respond(Box::new(resp))
    }

    fn commit_error(e: kvrpcpb::KeyError) -> Fault {
        respond(KvResponse::from(kvrpcpb::CommitResponse { error: Some(e), ..Default::default() }))
    }

    fn commit_ok() -> Fault {
        respond(KvResponse::Commit(Default::default()))
    }

    fn resolved() -> Fault {
        respond(KvResponse::ResolveLock(Default::default()))
    }

    /// A transaction that flushed `a..=b` before, with `last` still in
    /// memory: the commit's request and its last generation (2).
    fn commit_op(last: &[&str]) -> PipelinedCommit {
        let thresholds = FlushThresholds { min_keys: 1, min_bytes: 1, force_bytes: usize::MAX };
        let mut buffer = PipelinedBuffer::new(thresholds);
        for k in ["a", "b"] {
            buffer.put(k.as_bytes(), "v").unwrap();
        }
        let FlushStart::Started(_) = buffer.start_flush(true).unwrap() else { unreachable!() };
        buffer.flush_finished(Ok(())).unwrap();
        for k in last {
            buffer.put(k.as_bytes(), "w").unwrap();
        }
        let last = match buffer.start_flush(true).unwrap() {
            FlushStart::Started(flush) => Some((
                FlushRequest {
                    start_ts: start_ts(),
                    primary: Key::from("a"),
                    generation: flush.generation,
                    assertion_level: kvrpcpb::AssertionLevel::Off,
                    tags: RequestTags::default(),
                    started_at: Instant::ZERO,
                },
                flush.mutations,
            )),
            _ => None,
        };
        let req = PipelinedCommitRequest {
            start_ts: start_ts(),
            primary: Key::from("a"),
            flushed_range: buffer.flushed_range().cloned().expect("flushed"),
            flush_concurrency: usize::MAX,
            resolve_concurrency: 2,
            tags: RequestTags::default(),
        };
        PipelinedCommit::new(view(), req, last)
    }

    fn sent<T>(c: &FakeCluster, pick: impl Fn(&KvRequest) -> Option<T>) -> Vec<T> {
        c.received.iter().filter_map(pick).collect()
    }

    fn commits(c: &FakeCluster) -> Vec<kvrpcpb::CommitRequest> {
        sent(c, |r| match r {
            KvRequest::Commit(x) => Some((**x).clone()),
            _ => None,
        })
    }

    fn resolves(c: &FakeCluster) -> Vec<kvrpcpb::ResolveLockRequest> {
        sent(c, |r| match r {
            KvRequest::ResolveLock(x) => Some((**x).clone()),
            _ => None,
        })
    }

    /// Runs the follow-up the commit handed back, answering every
    /// `ResolveLock`; the commit ts it resolved with, and the regions.
    fn run_follow_up(op: &mut PipelinedCommit, c: &mut FakeCluster) -> Option<(u64, u64)> {
        let follow_up = op.take_follow_up()?;
        for _ in 0..8 {
            c.fault("resolve_lock", resolved());
        }
        let before = resolves(c).len();
        let (_, result) = drive(follow_up, c);
        let stat = result.expect("resolved");
        let sent = resolves(c);
        let commit_ts: Vec<u64> = sent[before..].iter().map(|r| r.commit_version).collect();
        assert!(commit_ts.windows(2).all(|w| w[0] == w[1]), "one status: {commit_ts:?}");
        Some((commit_ts[0], stat.completed_regions))
    }

    #[test]
    fn the_last_generation_is_flushed_then_only_the_primary_committed() {
        let mut c = FakeCluster::new(&["m"]);
        c.fault("flush", respond(KvResponse::Flush(Default::default())));
        c.fault("flush", respond(KvResponse::Flush(Default::default())));
        c.fault("kv_commit", commit_ok());
        let mut op = commit_op(&["c", "x"]);
        let (log, result) = drive(&mut op, &mut c);
        let commit_ts = result.expect("committed");
        assert!(commit_ts > start_ts());
        let flushes = sent(&c, |r| match r {
            KvRequest::Flush(f) => Some(f.generation),
            _ => None,
        });
        assert_eq!(flushes, vec![2, 2], "the last generation, one request per region");
        let commits = commits(&c);
        assert_eq!(commits.len(), 1);
        assert_eq!(commits[0].keys, vec![Bytes::from("a")], "the primary only");
        assert_eq!(
            (commits[0].start_version, commits[0].commit_version),
            (start_ts().version(), commit_ts.version())
        );
        // The rest of a..=x, both regions, resolved at the commit ts.
        assert_eq!(run_follow_up(&mut op, &mut c), Some((commit_ts.version(), 2)));
        insta::assert_snapshot!(log);
    }

    #[test]
    fn a_pushed_min_commit_ts_commits_at_a_newer_ts() {
        let mut c = FakeCluster::new(&[]);
        let expired = kvrpcpb::KeyError {
            commit_ts_expired: Some(kvrpcpb::CommitTsExpired {
                attempted_commit_ts: 1,
                min_commit_ts: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        c.fault("kv_commit", commit_error(expired));
        c.fault("kv_commit", commit_ok());
        // Nothing left in memory: no flush, straight to the commit ts.
        let mut op = commit_op(&[]);
        let (log, result) = drive(&mut op, &mut c);
        let commit_ts = result.expect("committed");
        let commits = commits(&c);
        assert_eq!(commits.len(), 2);
        assert!(commits[1].commit_version > commits[0].commit_version);
        assert_eq!(commits[1].commit_version, commit_ts.version());
        assert!(!log.contains("kv_flush"), "{log}");
        assert_eq!(run_follow_up(&mut op, &mut c), Some((commit_ts.version(), 1)));
    }

    #[test]
    fn a_refused_primary_commit_or_flush_rolls_the_range_back() {
        let mut out = String::new();
        // The primary's lock is gone (a reader rolled it back): definite.
        let mut c = FakeCluster::new(&[]);
        let not_found = kvrpcpb::KeyError {
            txn_lock_not_found: Some(Default::default()),
            ..Default::default()
        };
        c.fault("kv_commit", commit_error(not_found));
        let mut op = commit_op(&[]);
        let (log, result) = drive(&mut op, &mut c);
        assert!(matches!(result, Err(Error::KeyError(_))), "{result:?}");
        assert_eq!(run_follow_up(&mut op, &mut c), Some((0, 1)), "rolled back");
        let _ = writeln!(out, "== primary refused\n{log}");

        // The last flush fails: nothing is committed, no timestamp taken.
        let mut c = FakeCluster::new(&[]);
        let exists = kvrpcpb::KeyError {
            already_exist: Some(kvrpcpb::AlreadyExist { key: "c".into() }),
            ..Default::default()
        };
        c.fault(
            "flush",
            respond(KvResponse::from(kvrpcpb::FlushResponse {
                errors: vec![exists],
                ..Default::default()
            })),
        );
        let mut op = commit_op(&["c"]);
        let (log, result) = drive(&mut op, &mut c);
        assert!(matches!(result, Err(Error::KeyExists(_))), "{result:?}");
        assert!(commits(&c).is_empty());
        assert!(!log.contains("timestamp"), "{log}");
        assert_eq!(run_follow_up(&mut op, &mut c), Some((0, 1)), "rolled back");
        let _ = writeln!(out, "== last flush failed\n{log}");
        insta::assert_snapshot!(out);
    }

    #[test]
    fn a_lost_primary_commit_answer_is_undetermined_and_resolves_nothing() {
        let mut c = FakeCluster::new(&[]);
        for _ in 0..1000 {
            c.fault("kv_commit", Fault::Rpc(RpcError::DeadlineExceeded));
        }
        let mut op = commit_op(&[]);
        let (_, result) = drive(&mut op, &mut c);
        assert!(matches!(result, Err(Error::Undetermined(_))), "{result:?}");
        assert!(op.take_follow_up().is_none(), "readers resolve through the primary");

        // Every attempt refused with a region error: nothing was applied.
        let budgets = crate::config::BackoffBudgets {
            commit: Duration::from_millis(30),
            ..Default::default()
        };
        let config = crate::config::Config::default()
            .with_pd_endpoints(["pd1:2379"])
            .with_backoff_budgets(budgets);
        let pd = Arc::new(crate::pd::PdState::new(config.pd_endpoints.clone()));
        let codec = crate::codec::ApiCodec::v1(crate::codec::Mode::Raw);
        let v = Arc::new(ClusterView::new(config, codec, pd));
        let req = PipelinedCommitRequest {
            start_ts: start_ts(),
            primary: Key::from("a"),
            flushed_range: (Key::from("a"), Key::from("b")),
            flush_concurrency: usize::MAX,
            resolve_concurrency: 1,
            tags: RequestTags::default(),
        };
        let mut c = FakeCluster::new(&[]);
        for _ in 0..1000 {
            let refused = tikv_proto::errorpb::Error {
                message: "region not found".into(),
                region_not_found: Some(Default::default()),
                ..Default::default()
            };
            c.fault("kv_commit", Fault::Region(Box::new(refused)));
        }
        let mut op = PipelinedCommit::new(v, req, None);
        let (_, result) = drive(&mut op, &mut c);
        assert!(matches!(result, Err(Error::BackoffExhausted { .. })), "{result:?}");
        assert!(op.take_follow_up().is_some(), "a definite failure rolls back");
    }

    fn heartbeat_ok() -> Fault {
        respond(KvResponse::from(kvrpcpb::TxnHeartBeatResponse {
            lock_ttl: 20_000,
            ..Default::default()
        }))
    }

    #[test]
    fn heartbeats_push_min_commit_ts_and_give_up_after_failures_in_a_row() {
        let mut c = FakeCluster::new(&[]);
        c.fault("heart_beat", heartbeat_ok());
        c.fault("heart_beat", heartbeat_ok());
        let refused =
            kvrpcpb::KeyError { txn_not_found: Some(Default::default()), ..Default::default() };
        for _ in 0..MAX_HEARTBEAT_FAILURES {
            c.fault(
                "heart_beat",
                respond(KvResponse::from(kvrpcpb::TxnHeartBeatResponse {
                    error: Some(refused.clone()),
                    ..Default::default()
                })),
            );
        }
        let mut keep_alive =
            PipelinedKeepAlive::new(view(), start_ts(), Key::from("a"), RequestTags::default());
        let status = keep_alive.status();
        let (log, result) = drive(&mut keep_alive, &mut c);
        result.expect("ended by itself");
        assert!(status.stopped());
        assert_eq!(status.beats(), 2);
        let beats = sent(&c, |r| match r {
            KvRequest::TxnHeartBeat(h) => Some((**h).clone()),
            _ => None,
        });
        assert_eq!(beats.len(), 2 + MAX_HEARTBEAT_FAILURES as usize);
        for h in &beats {
            assert_eq!((h.start_version, &h.primary_lock[..]), (start_ts().version(), &b"a"[..]));
            // A fresh timestamp each beat, after the start.
            assert!(h.min_commit_ts > start_ts().version());
            // The age by the TSO (the fake's clock is at 1000 ms; the
            // transaction started at 500 ms) plus the managed TTL.
            assert!(h.advise_lock_ttl >= 500 + MAX_LOCK_TTL, "{}", h.advise_lock_ttl);
        }
        assert!(beats.windows(2).all(|w| w[0].min_commit_ts < w[1].min_commit_ts));
        assert_eq!(status.min_commit_ts().version(), beats[1].min_commit_ts, "the last accepted");
        // Each accepted beat, and only those, is broadcast with the
        // min_commit_ts the primary took.
        let broadcasts = sent(&c, |r| match r {
            KvRequest::BroadcastTxnStatus(b) => Some(b.txn_status.clone()),
            _ => None,
        });
        let pushed: Vec<_> = beats[..2]
            .iter()
            .map(|h| {
                vec![kvrpcpb::TxnStatus {
                    start_ts: start_ts().version(),
                    min_commit_ts: h.min_commit_ts,
                    ..Default::default()
                }]
            })
            .collect();
        assert_eq!(broadcasts, pushed);
        // The first beat after one interval, preceded by its timestamp.
        let first = log.lines().position(|l| l.contains("send #5 kv_txn_heart_beat"));
        assert_eq!(first, Some(9), "{log}");
        assert!(
            log.lines().nth(1).is_some_and(|l| l.starts_with("t+10.0") && l.contains("timestamp"))
        );
        insta::assert_snapshot!(log);
    }
}
