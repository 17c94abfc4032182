//! Properties of the transactional machines over arbitrary answers: the
//! lock resolver ([`lock_resolver`]) and the committer ([`committer`]).
//!
//! The fuzzer plays TiKV and PD with typed but otherwise arbitrary answers
//! (statuses, commit timestamps, lock infos, key errors, region errors,
//! transport errors, duplicates, deadlines, time jumps); the harness keeps
//! what it said about each transaction (its *evidence*) and checks that the
//! machine only acts on what it was told:
//! - the resolver commits a lock (`ResolveLock` with a commit ts, or a
//!   reader reading through it) only at a commit ts some answer gave, rolls
//!   one back only if an answer said so, and lets a reader skip a lock only
//!   if it was rolled back, committed after the reader or pushed past it;
//! - the committer reports a commit only if the primary's `Commit` was
//!   acknowledged (2PC) at that ts, or every prewrite answer made it an
//!   async commit at that ts, or TiKV reported that 1PC commit ts; it
//!   reports "undetermined" only when an answer that mattered was lost; a
//!   definite failure never follows an acknowledged or lost primary commit;
//! - neither sleeps past its budget (plus one capped sleep), panics, storms
//!   or stalls.
//!
//! `ServerIsBusy` is not among the region errors here: its sleeps are
//! excluded from budgets (up to ten minutes), which would hide a budget
//! overrun.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use tikv_core::codec::{ApiCodec, Mode};
use tikv_core::config::Config;
use tikv_core::error::Error;
use tikv_core::key::Key;
use tikv_core::lock::{Lock, ResolveLocks, ResolveOptions};
use tikv_core::pd::{PdState, Timestamp};
use tikv_core::rpc::{KvRequest, KvResponse, Request, Response, Rpc, RpcError};
use tikv_core::time::Duration;
use tikv_core::txn::commit::{CommitMode, CommitOptions, Committer, Mutation};
use tikv_core::view::ClusterView;
use tikv_proto::kvrpcpb;

use super::{Driven, Fed, PD, answer_in, drive_with, region_error, set_region_error, small_key};

/// The longest single sleep of any backoff kind (`BoServerBusy` and
/// `BoTxnLockFast` cap at 10 s): the budget check happens before a sleep,
/// so the last one may overshoot by this much.
const MAX_ONE_SLEEP: Duration = Duration::from_secs(10);

fn txn_view(seed: u64) -> Arc<ClusterView> {
    let config = Config::default().with_pd_endpoints([PD]).with_rng_seed(seed);
    let pd = Arc::new(PdState::new(config.pd_endpoints.clone()));
    Arc::new(ClusterView::new(config, ApiCodec::v1(Mode::Txn), pd))
}

/// A timestamp near PD's clock (physical 1000–1020 ms), from a small set so
/// that transactions and commit timestamps collide.
fn ts(u: &mut Unstructured<'_>) -> Result<u64> {
    let physical = 1000 + i64::from(u.int_in_range(0..=20u8)?);
    Ok(Timestamp::compose(physical, i64::from(u.int_in_range(0..=3u8)?)).version())
}

/// What the fuzzer said about each transaction (by start ts).
#[derive(Default, Debug)]
struct Evidence {
    /// Commit timestamps answered (`CheckTxnStatus`, `CheckSecondaryLocks`).
    committed: BTreeMap<u64, BTreeSet<u64>>,
    /// Said rolled back: status with neither TTL nor commit ts, a
    /// secondary lock missing, or a primary mismatch.
    rolled_back: BTreeSet<u64>,
    /// Said alive with `min_commit_ts` pushed past the caller.
    pushed: BTreeSet<u64>,
    /// `min_commit_ts` values handed out in lock infos: async-commit
    /// recovery commits at the largest of them.
    min_commit_ts: BTreeMap<u64, BTreeSet<u64>>,
    /// Every secondary answered locked: async-commit recovery may commit.
    all_locked: BTreeSet<u64>,
    /// The primary had no trace (`TxnNotFound`).
    not_found: BTreeSet<u64>,
}

impl Evidence {
    /// Could the resolver know `txn` committed at `commit_ts`?
    fn commit_at(&self, txn: u64, commit_ts: u64) -> bool {
        self.committed.get(&txn).is_some_and(|c| c.contains(&commit_ts))
            || (self.all_locked.contains(&txn)
                && self.min_commit_ts.get(&txn).is_some_and(|m| m.contains(&commit_ts)))
    }

    fn commit_timestamps(&self, txn: u64) -> BTreeSet<u64> {
        let mut all = self.committed.get(&txn).cloned().unwrap_or_default();
        if self.all_locked.contains(&txn) {
            all.extend(self.min_commit_ts.get(&txn).into_iter().flatten());
        }
        all
    }
}

fn lock_info(
    u: &mut Unstructured<'_>,
    txn: u64,
    key: Bytes,
    ev: &mut Evidence,
) -> Result<kvrpcpb::LockInfo> {
    let min_commit_ts = if u.ratio(1, 4)? { 0 } else { ts(u)? };
    if min_commit_ts > 0 {
        ev.min_commit_ts.entry(txn).or_default().insert(min_commit_ts);
    }
    let mut secondaries = Vec::new();
    for _ in 0..u.int_in_range(0..=2u8)? {
        secondaries.push(small_key(u)?);
    }
    Ok(kvrpcpb::LockInfo {
        primary_lock: small_key(u)?,
        lock_version: txn,
        key,
        lock_ttl: if u.ratio(1, 3)? { 0 } else { u.int_in_range(1..=20_000)? },
        txn_size: if u.ratio(1, 4)? { 1000 } else { 1 },
        lock_type: *u.choose(&[
            kvrpcpb::Op::Put,
            kvrpcpb::Op::Del,
            kvrpcpb::Op::Lock,
            kvrpcpb::Op::PessimisticLock,
        ])? as i32,
        use_async_commit: u.ratio(1, 2)?,
        min_commit_ts,
        secondaries,
        ..Default::default()
    })
}

fn key_error(u: &mut Unstructured<'_>) -> Result<kvrpcpb::KeyError> {
    let mut e = kvrpcpb::KeyError::default();
    match u.int_in_range(0..=3u8)? {
        0 => e.abort = "fuzz".into(),
        1 => e.retryable = "fuzz".into(),
        2 => e.txn_lock_not_found = Some(Default::default()),
        _ => e.commit_ts_too_large = Some(Default::default()),
    }
    Ok(e)
}

/// The answers a txn-mode client gets: PD from the shared generator, TiKV's
/// transactional commands from here, recording evidence in `ev` when
/// `fresh` (a duplicate answer is ignored by the machine, so proves nothing).
fn txn_answer(
    u: &mut Unstructured<'_>,
    rpc: &Rpc,
    fresh: bool,
    fed: &mut Fed,
    ev: &mut Evidence,
) -> Result<Result<Response, RpcError>> {
    let Request::Kv(req) = &rpc.request else {
        return answer_in(u, rpc, fed, true);
    };
    if u.ratio(1, 8)? {
        return Ok(Err(match u.int_in_range(0..=2u8)? {
            0 => RpcError::Unavailable("fuzz".into()),
            1 => RpcError::DeadlineExceeded,
            _ => RpcError::Canceled,
        }));
    }
    let mut scratch = Evidence::default();
    let ev = if fresh { ev } else { &mut scratch };
    let mut resp = req.response_template();
    match (req, &mut resp) {
        (KvRequest::CheckTxnStatus(q), KvResponse::CheckTxnStatus(r)) => {
            let txn = q.lock_ts;
            match u.int_in_range(0..=9u8)? {
                0 => {
                    ev.not_found.insert(txn);
                    r.error = Some(kvrpcpb::KeyError {
                        txn_not_found: Some(Default::default()),
                        ..Default::default()
                    })
                }
                1 => {
                    ev.rolled_back.insert(txn);
                    let info = lock_info(u, txn, q.primary_key.clone(), ev)?;
                    r.error = Some(kvrpcpb::KeyError {
                        primary_mismatch: Some(kvrpcpb::PrimaryMismatch { lock_info: Some(info) }),
                        ..Default::default()
                    })
                }
                2 => r.error = Some(key_error(u)?),
                _ => {
                    r.lock_ttl = if u.ratio(1, 2)? { 0 } else { u.int_in_range(1..=20_000)? };
                    r.commit_version = if u.ratio(1, 2)? { 0 } else { ts(u)? };
                    r.action = *u.choose(&[
                        kvrpcpb::Action::NoAction,
                        kvrpcpb::Action::TtlExpireRollback,
                        kvrpcpb::Action::LockNotExistRollback,
                        kvrpcpb::Action::MinCommitTsPushed,
                        kvrpcpb::Action::TtlExpirePessimisticRollback,
                        kvrpcpb::Action::LockNotExistDoNothing,
                    ])? as i32;
                    if r.lock_ttl == 0 && r.commit_version > 0 {
                        ev.committed.entry(txn).or_default().insert(r.commit_version);
                    }
                    if r.lock_ttl == 0 && r.commit_version == 0 {
                        ev.rolled_back.insert(txn);
                    }
                    if r.action == kvrpcpb::Action::MinCommitTsPushed as i32 {
                        ev.pushed.insert(txn);
                    }
                    if u.ratio(1, 2)? {
                        r.lock_info = Some(lock_info(u, txn, q.primary_key.clone(), ev)?);
                    }
                }
            }
        }
        (KvRequest::CheckSecondaryLocks(q), KvResponse::CheckSecondaryLocks(r)) => {
            let txn = q.start_version;
            if u.ratio(1, 8)? {
                r.error = Some(key_error(u)?);
            } else if u.ratio(1, 3)? {
                r.commit_ts = ts(u)?;
                ev.committed.entry(txn).or_default().insert(r.commit_ts);
            } else {
                for k in &q.keys {
                    if u.ratio(5, 6)? {
                        r.locks.push(lock_info(u, txn, k.clone(), ev)?);
                    }
                }
                if r.locks.len() < q.keys.len() {
                    ev.rolled_back.insert(txn);
                } else {
                    ev.all_locked.insert(txn);
                }
            }
        }
        (KvRequest::ResolveLock(_), KvResponse::ResolveLock(r)) if u.ratio(1, 8)? => {
            r.error = Some(key_error(u)?);
        }
        (KvRequest::PessimisticRollback(_), KvResponse::PessimisticRollback(r))
            if u.ratio(1, 8)? =>
        {
            r.errors = vec![key_error(u)?];
        }
        (KvRequest::Prewrite(q), KvResponse::Prewrite(r)) => match u.int_in_range(0..=9u8)? {
            0 | 1 => {
                let key = q.mutations.first().map(|m| m.key.clone()).unwrap_or_default();
                let other = ts(u)?;
                r.errors.push(kvrpcpb::KeyError {
                    locked: Some(lock_info(u, other, key, ev)?),
                    ..Default::default()
                });
            }
            2 => r.errors.push(kvrpcpb::KeyError {
                conflict: Some(kvrpcpb::WriteConflict {
                    start_ts: q.start_version,
                    conflict_ts: ts(u)?,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            3 => r.errors.push(kvrpcpb::KeyError {
                already_exist: Some(Default::default()),
                ..Default::default()
            }),
            4 => r.errors.push(key_error(u)?),
            _ => {
                if q.use_async_commit && u.ratio(3, 4)? {
                    r.min_commit_ts = ts(u)?;
                }
                if q.try_one_pc && u.ratio(3, 4)? {
                    r.one_pc_commit_ts = ts(u)?;
                }
            }
        },
        (KvRequest::Commit(_), KvResponse::Commit(r)) => match u.int_in_range(0..=5u8)? {
            0 => {
                r.error = Some(kvrpcpb::KeyError {
                    commit_ts_expired: Some(kvrpcpb::CommitTsExpired {
                        min_commit_ts: ts(u)?,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
            1 => r.error = Some(key_error(u)?),
            _ => {}
        },
        (KvRequest::TxnHeartBeat(_), KvResponse::TxnHeartBeat(r)) if u.ratio(1, 4)? => {
            r.error = Some(key_error(u)?);
        }
        _ => {}
    }
    if let Some(e) = region_error(u)?
        && e.server_is_busy.is_none()
    {
        set_region_error(&mut resp, e);
    }
    // Now and then the wrong command altogether.
    if u.ratio(1, 40)? {
        resp = KvResponse::RawChecksum(Default::default());
    }
    Ok(Ok(Response::Kv(resp)))
}

/// A prewrite answer without region or key errors.
fn clean_prewrite(a: &Option<Result<Response, RpcError>>) -> Option<&kvrpcpb::PrewriteResponse> {
    match kv_answer(a) {
        Some(KvResponse::Prewrite(p)) if p.region_error.is_none() && p.errors.is_empty() => Some(p),
        _ => None,
    }
}

fn kv_answer(a: &Option<Result<Response, RpcError>>) -> Option<&KvResponse> {
    match a {
        Some(Ok(Response::Kv(r))) => Some(r),
        _ => None,
    }
}

/// A response TiKV could have acted on: no region error.
fn executed(r: &KvResponse) -> bool {
    r.region_error().is_none()
}

/// The lock resolver fed arbitrary statuses, secondary checks, cleanups,
/// errors, duplicates and time jumps, for arbitrary locks met by a reader or
/// a writer. It commits, rolls back, reads through or skips a lock only as
/// the answers justify, stays within its budget, and never panics, storms
/// or stalls.
pub fn lock_resolver(u: &mut Unstructured<'_>) -> Result<()> {
    let view = txn_view(u.arbitrary()?);
    let mut locks = Vec::new();
    for _ in 0..u.int_in_range(1..=3u8)? {
        let key = small_key(u)?;
        let mut ev = Evidence::default();
        let txn = ts(u)?;
        let info = lock_info(u, txn, key, &mut ev)?;
        locks.extend(Lock::from_info(&info));
    }
    let opts = ResolveOptions {
        caller_start_ts: Timestamp::from_version(ts(u)?),
        for_read: u.arbitrary()?,
        lite: u.arbitrary()?,
        ..Default::default()
    };
    let budget = Duration::from_millis(u.int_in_range(1..=40_000)?);
    let op = ResolveLocks::new(view.clone(), locks.clone(), opts.clone(), view.backoffer(budget));
    let mut fed = Fed { physical: 1000, ..Fed::default() };
    let mut ev = Evidence::default();
    let mut answer = |u: &mut Unstructured<'_>, rpc: &Rpc, fresh: bool| {
        txn_answer(u, rpc, fresh, &mut fed, &mut ev)
    };
    let driven = drive_with(u, op, &mut answer)?;
    check_resolutions(&driven, &ev);
    assert!(
        driven.slept <= budget + MAX_ONE_SLEEP,
        "slept {:?} on a budget of {budget:?}",
        driven.slept
    );
    let Some(Ok(outcome)) = driven.result else { return Ok(()) };
    let caller = opts.caller_start_ts.version();
    for txn in outcome.access_locks.iter().map(|t| t.version()) {
        // Read through: committed at or before the reader.
        assert!(
            ev.commit_timestamps(txn).iter().any(|&c| c <= caller),
            "reads through txn {txn}'s lock, never said committed before {caller}: {ev:?}"
        );
    }
    for txn in outcome.ignore_locks.iter().map(|t| t.version()) {
        // client-go `getTxnStatusFromLock`: a live pessimistic lock whose
        // primary has no trace gets its own TTL as the status, so a TTL-0
        // one ("resolve unconditionally") counts as rolled back.
        let ttl0_pessimistic_gone = ev.not_found.contains(&txn)
            && locks.iter().any(|l| l.txn_id.version() == txn && l.is_pessimistic() && l.ttl == 0);
        let justified = ev.rolled_back.contains(&txn)
            || ev.pushed.contains(&txn)
            || ttl0_pessimistic_gone
            || ev.commit_timestamps(txn).iter().any(|&c| c > caller);
        assert!(justified, "skips txn {txn}'s lock without cause: {ev:?}");
    }
    if outcome.ms_before_expired > 0 {
        assert!(
            locks.iter().any(|l| l.ttl > 0)
                || !ev.committed.is_empty()
                || !ev.rolled_back.is_empty(),
            "waits {} ms for nothing",
            outcome.ms_before_expired
        );
    }
    Ok(())
}

/// Every cleanup the machine sent matches what it was told.
fn check_resolutions(driven: &Driven<impl Sized>, ev: &Evidence) {
    for (rpc, _) in &driven.rpcs {
        match &rpc.request {
            Request::Kv(KvRequest::ResolveLock(r)) if r.commit_version > 0 => assert!(
                ev.commit_at(r.start_version, r.commit_version),
                "resolves txn {} as committed at {}, which no answer said: {ev:?}",
                r.start_version,
                r.commit_version
            ),
            Request::Kv(KvRequest::ResolveLock(r)) => assert!(
                ev.rolled_back.contains(&r.start_version),
                "rolls txn {} back, which no answer said: {ev:?}",
                r.start_version
            ),
            Request::Kv(KvRequest::PessimisticRollback(r)) => assert!(
                ev.rolled_back.contains(&r.start_version)
                    || !ev.commit_timestamps(r.start_version).is_empty(),
                "rolls back txn {}'s pessimistic lock before its fate is known: {ev:?}",
                r.start_version
            ),
            _ => {}
        }
    }
}

/// The committer (2PC, async commit, 1PC) fed arbitrary prewrite and commit
/// answers, lock infos, statuses, errors, duplicates and time jumps. It
/// reports a commit only as the protocol allows, "undetermined" only when an
/// answer that decides the outcome was lost, a definite failure only when
/// nothing could have committed, stays within its budgets, and never
/// panics, storms or stalls.
pub fn committer(u: &mut Unstructured<'_>) -> Result<()> {
    let view = txn_view(u.arbitrary()?);
    let start_ts = ts(u)?;
    let mut keys: Vec<Bytes> = Vec::new();
    for _ in 0..u.int_in_range(1..=4u8)? {
        let k = small_key(u)?;
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort();
    let mutations: Vec<Mutation> = keys
        .iter()
        .map(|k| Mutation {
            op: kvrpcpb::Op::Put,
            key: Key::from(k.clone()),
            value: Bytes::from("v"),
            pessimistic_action: Default::default(),
        })
        .collect();
    let primary = mutations[0].key.clone();
    let opts = CommitOptions::default()
        .with_async_commit(u.arbitrary()?)
        .with_one_pc(u.arbitrary()?)
        .with_causal_consistency(u.arbitrary()?);
    let config = &view.config;
    let budgets = config.backoff.prewrite + config.backoff.commit + config.backoff.tso;
    let op = Committer::new(
        view.clone(),
        Timestamp::from_version(start_ts),
        primary.clone(),
        mutations,
        Duration::from_millis(u.int_in_range(0..=100)?),
        opts.clone(),
    );
    let mut fed = Fed { physical: 1000, ..Fed::default() };
    let mut ev = Evidence::default();
    let mut answer = |u: &mut Unstructured<'_>, rpc: &Rpc, fresh: bool| {
        txn_answer(u, rpc, fresh, &mut fed, &mut ev)
    };
    let driven = drive_with(u, op, &mut answer)?;
    // Sleeps: prewrite rounds (with their lock resolution), the TSO calls
    // and the primary's commit each have one budget.
    let budget = config.budget(budgets) + 3 * MAX_ONE_SLEEP;
    assert!(driven.slept <= budget, "slept {:?} on budgets of {budget:?}", driven.slept);
    let is_primary_commit = |rpc: &Rpc| {
        matches!(&rpc.request, Request::Kv(KvRequest::Commit(c))
            if c.keys.iter().any(|k| k.as_ref() == primary.as_bytes()))
    };
    // Answers to the primary's commit: (commit ts, the answer).
    let primary_commits: Vec<(u64, &Option<Result<Response, RpcError>>)> = driven
        .rpcs
        .iter()
        .filter(|(rpc, _)| is_primary_commit(rpc))
        .map(|(rpc, a)| match &rpc.request {
            Request::Kv(KvRequest::Commit(c)) => (c.commit_version, a),
            _ => (0, a),
        })
        .collect();
    let acked = |commit_ts: u64| {
        primary_commits.iter().any(|(ts, a)| {
            *ts == commit_ts
                && kv_answer(a).is_some_and(|r| {
                    executed(r) && matches!(r, KvResponse::Commit(c) if c.error.is_none())
                })
        })
    };
    let lost = |a: &Option<Result<Response, RpcError>>| matches!(a, Some(Err(_)));
    // Clean prewrite answers: (async min_commit_ts, 1PC commit ts, asked 1PC).
    let prewrites: Vec<(&kvrpcpb::PrewriteRequest, &Option<Result<Response, RpcError>>)> = driven
        .rpcs
        .iter()
        .filter_map(|(rpc, a)| match &rpc.request {
            Request::Kv(KvRequest::Prewrite(p)) => Some((&**p, a)),
            _ => None,
        })
        .collect();
    match &driven.result {
        None => {}
        Some(Ok(outcome)) => match outcome.mode {
            CommitMode::TwoPhase => assert!(
                acked(outcome.commit_ts.version()),
                "reported committed at {} without the primary's commit acknowledged",
                outcome.commit_ts
            ),
            CommitMode::AsyncCommit => {
                assert!(opts.async_commit, "async commit nobody asked for");
                let seen: BTreeSet<u64> = prewrites
                    .iter()
                    .filter_map(|(_, a)| clean_prewrite(a))
                    .map(|p| p.min_commit_ts)
                    .collect();
                assert!(
                    seen.contains(&outcome.commit_ts.version()),
                    "async commit at {}, not a min_commit_ts TiKV gave: {seen:?}",
                    outcome.commit_ts
                );
            }
            CommitMode::OnePhase => {
                assert!(opts.one_pc, "1PC nobody asked for");
                let told = prewrites.iter().any(|(q, a)| {
                    q.try_one_pc
                        && clean_prewrite(a)
                            .is_some_and(|p| p.one_pc_commit_ts == outcome.commit_ts.version())
                });
                assert!(told, "1PC at {}, which TiKV never reported", outcome.commit_ts);
            }
        },
        Some(Err(Error::Undetermined(why))) => {
            let commit_lost = primary_commits.iter().any(|(_, a)| lost(a));
            let prewrite_lost =
                (opts.async_commit || opts.one_pc) && prewrites.iter().any(|(_, a)| lost(a));
            assert!(
                commit_lost || prewrite_lost,
                "undetermined ({why}) though no deciding answer was lost"
            );
        }
        Some(Err(e)) => {
            // A definite failure: the primary's last commit answer (if
            // any) neither acknowledged nor lost.
            if let Some((_, last)) = primary_commits.last() {
                let ok = kv_answer(last).is_some_and(|r| {
                    executed(r) && matches!(r, KvResponse::Commit(c) if c.error.is_none())
                });
                assert!(
                    !ok && !lost(last),
                    "definite failure ({e}) after the primary's commit {last:?}"
                );
            }
            if opts.one_pc {
                let committed = prewrites.iter().any(|(q, a)| {
                    q.try_one_pc && clean_prewrite(a).is_some_and(|p| p.one_pc_commit_ts > 0)
                });
                assert!(!committed, "definite failure ({e}) after TiKV reported a 1PC commit");
            }
        }
    }
    Ok(())
}
