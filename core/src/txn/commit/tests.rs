//! Scripted-event tests of the committer: each protocol path and each
//! error path, with TiKV's answers scripted.

use std::fmt::Write;

use bytes::Bytes;
use tikv_proto::{errorpb, kvrpcpb};

use super::*;
use crate::testing::{FakeCluster, Fault, drive, view};

/// The version of a timestamp at `physical_ms`, as the wire carries it.
fn ts(physical_ms: i64) -> u64 {
    ts_at(physical_ms).version()
}

/// The timestamp at `physical_ms`.
fn ts_at(physical_ms: i64) -> Timestamp {
    Timestamp::compose(physical_ms, 0)
}

fn put(k: &str) -> Mutation {
    Mutation {
        op: kvrpcpb::Op::Put,
        key: Key::from(k.to_string()),
        value: Bytes::from("v"),
        pessimistic_action: PessimisticAction::SkipPessimisticCheck,
    }
}

fn respond(resp: KvResponse) -> Fault {
    Fault::Respond(Box::new(resp))
}

fn prewrite_ok(min_commit_ts: u64, one_pc: u64) -> Fault {
    respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
        min_commit_ts,
        one_pc_commit_ts: one_pc,
        ..Default::default()
    })))
}

fn commit_ok() -> Fault {
    respond(KvResponse::Commit(Default::default()))
}

/// The keys of each `Commit` the cluster received, in order.
fn commits_received(c: &FakeCluster) -> Vec<Vec<Bytes>> {
    c.received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Commit(cm) => Some(cm.keys.clone()),
            _ => None,
        })
        .collect()
}

/// How many mutations every `Prewrite` the cluster received carried.
fn mutations_prewritten(c: &FakeCluster) -> usize {
    c.received
        .iter()
        .map(|r| match r {
            KvRequest::Prewrite(p) => p.mutations.len(),
            _ => 0,
        })
        .sum()
}

fn committer(keys: &[&str], opts: CommitOptions) -> Committer {
    let v = view();
    Committer::new(
        v,
        ts_at(500),
        Key::from(keys[0].to_string()),
        keys.iter().map(|k| put(k)).collect(),
        Duration::from_millis(10),
        opts,
    )
}

#[test]
fn two_phase_commit_prewrites_every_region_then_commits_the_primary() {
    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let (log, result) = drive(committer(&["a", "b", "x"], CommitOptions::default()), &mut c);
    let outcome = result.expect("committed");
    assert_eq!(outcome.mode, CommitMode::TwoPhase);
    assert!(outcome.commit_ts > ts_at(500));
    // b shares the primary's region, so it was committed with it.
    assert_eq!(outcome.keys_to_commit, vec![Key::from("x")]);
    // client-go's `MaxWriteExecutionTime`, not the 30 s RPC timeout.
    for r in &c.received {
        let limit = r.context().map_or(0, |ctx| ctx.max_execution_duration_ms);
        assert_eq!(limit, 20_000, "{} carries {limit} ms", r.name());
    }
    let commits = commits_received(&c);
    assert_eq!(
        commits,
        vec![vec![Bytes::from("a"), Bytes::from("b")]],
        "only the primary's batch (client-go `primaryBatch`), synchronously"
    );
    insta::assert_snapshot!(log);
}

#[test]
fn async_commit_is_committed_at_the_largest_min_commit_ts() {
    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(ts(1000) + 7, 0));
    c.fault("prewrite", prewrite_ok(ts(1000) + 9, 0));
    let opts = CommitOptions { async_commit: true, ..Default::default() };
    let (log, result) = drive(committer(&["a", "x"], opts), &mut c);
    let outcome = result.expect("committed");
    assert_eq!(outcome.mode, CommitMode::AsyncCommit);
    assert_eq!(outcome.commit_ts, Timestamp::from_version(ts(1000) + 9));
    assert_eq!(outcome.keys_to_commit.len(), 2, "every key is committed in the background");
    let prewrites: Vec<_> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Prewrite(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let primary_batch = prewrites.iter().find(|p| p.mutations[0].key == "a").expect("primary");
    assert!(primary_batch.use_async_commit);
    assert_eq!(primary_batch.secondaries, vec![Bytes::from("x")]);
    assert!(primary_batch.min_commit_ts > ts(1000), "min_commit_ts from a fresh TSO");
    insta::assert_snapshot!(log);
}

#[test]
fn declined_async_commit_and_one_pc_fall_back_to_two_phase() {
    let mut out = String::new();
    // Async commit declined (min_commit_ts 0 on one batch).
    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(ts(1000), 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let opts = CommitOptions { async_commit: true, ..Default::default() };
    let (log, result) = drive(committer(&["a", "x"], opts), &mut c);
    assert_eq!(result.expect("committed").mode, CommitMode::TwoPhase);
    let _ = writeln!(out, "== async commit declined\n{log}");

    // 1PC declined: the region must be cached for 1PC to be tried.
    let mut c = FakeCluster::new(&[]);
    let v = view();
    c.data.insert(b"a".to_vec(), Bytes::from("0"));
    let _ = drive(crate::raw::get(&v, Key::from("a"), &Default::default()), &mut c);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let opts = CommitOptions { one_pc: true, ..Default::default() };
    let committer = Committer::new(
        v,
        ts_at(500),
        Key::from("a"),
        vec![put("a"), put("b")],
        Duration::from_millis(10),
        opts,
    );
    let (log, result) = drive(committer, &mut c);
    assert_eq!(result.expect("committed").mode, CommitMode::TwoPhase);
    let first = c.received.iter().find_map(|r| match r {
        KvRequest::Prewrite(p) => Some(p.try_one_pc),
        _ => None,
    });
    assert_eq!(first, Some(true), "1PC was tried");
    let _ = writeln!(out, "== 1PC declined\n{log}");
    insta::assert_snapshot!(out);
}

#[test]
fn one_pc_commits_in_the_prewrite() {
    let mut c = FakeCluster::new(&[]);
    let v = view();
    c.data.insert(b"a".to_vec(), Bytes::from("0"));
    let _ = drive(crate::raw::get(&v, Key::from("a"), &Default::default()), &mut c);
    c.fault("prewrite", prewrite_ok(0, ts(1000) + 3));
    let opts = CommitOptions { one_pc: true, ..Default::default() };
    let committer = Committer::new(
        v,
        ts_at(500),
        Key::from("a"),
        vec![put("a"), put("b")],
        Duration::ZERO,
        opts,
    );
    let (_, result) = drive(committer, &mut c);
    let outcome = result.expect("committed");
    assert_eq!(
        (outcome.mode, outcome.commit_ts),
        (CommitMode::OnePhase, Timestamp::from_version(ts(1000) + 3))
    );
    assert!(outcome.keys_to_commit.is_empty());
}

#[test]
fn errors_are_definite_or_undetermined_as_the_protocol_says() {
    let mut out = String::new();

    // A write conflict in prewrite: definite failure.
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                conflict: Some(kvrpcpb::WriteConflict {
                    start_ts: ts(500),
                    conflict_ts: ts(600),
                    key: "a".into(),
                    primary: "q".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    let (_, result) = drive(committer(&["a"], CommitOptions::default()), &mut c);
    assert!(
        matches!(result, Err(Error::WriteConflict { conflict_ts, .. }) if conflict_ts == ts_at(600))
    );

    // A lock of an older transaction: resolved (it is rolled back), then
    // the key is prewritten again.
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo {
                    primary_lock: "p".into(),
                    key: "a".into(),
                    lock_version: ts(100),
                    lock_ttl: 10,
                    txn_size: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    c.fault(
        "check_txn_status",
        respond(KvResponse::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
            action: kvrpcpb::Action::TtlExpireRollback as i32,
            ..Default::default()
        }))),
    );
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let (log, result) = drive(committer(&["a"], CommitOptions::default()), &mut c);
    result.expect("committed after resolving the old lock");
    let _ = writeln!(out, "== prewrite meets an old lock\n{log}");

    // A lock of a newer transaction: immediate write conflict.
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo {
                    primary_lock: "p".into(),
                    key: "a".into(),
                    lock_version: ts(900),
                    lock_ttl: 3000,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    let (_, result) = drive(committer(&["a"], CommitOptions::default()), &mut c);
    assert!(
        matches!(result, Err(Error::WriteConflict { conflict_ts, .. }) if conflict_ts == ts_at(900))
    );

    // CommitTsExpired: a newer commit ts, then success.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault(
        "kv_commit",
        respond(KvResponse::Commit(Box::new(kvrpcpb::CommitResponse {
            error: Some(kvrpcpb::KeyError {
                commit_ts_expired: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        }))),
    );
    c.fault("kv_commit", commit_ok());
    let (log, result) = drive(committer(&["a"], CommitOptions::default()), &mut c);
    result.expect("committed at a newer ts");
    let _ = writeln!(out, "== commit ts expired\n{log}");

    // The primary's commit never answers: undetermined.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(0, 0));
    for _ in 0..1000 {
        c.fault("kv_commit", Fault::Rpc(RpcError::DeadlineExceeded));
    }
    let (_, result) = drive(committer(&["a"], CommitOptions::default()), &mut c);
    assert!(matches!(result, Err(Error::Undetermined(_))), "{result:?}");

    // The primary's lock is gone (a resolver rolled it back): definite.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault(
        "kv_commit",
        respond(KvResponse::Commit(Box::new(kvrpcpb::CommitResponse {
            error: Some(kvrpcpb::KeyError {
                txn_lock_not_found: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        }))),
    );
    let (_, result) = drive(committer(&["a"], CommitOptions::default()), &mut c);
    assert!(matches!(&result, Err(Error::KeyError(e)) if e.txn_lock_not_found.is_some()));

    // An async-commit prewrite that never answers: undetermined.
    let mut c = FakeCluster::new(&[]);
    for _ in 0..1000 {
        c.fault("prewrite", Fault::Rpc(RpcError::DeadlineExceeded));
    }
    let opts = CommitOptions { async_commit: true, ..Default::default() };
    let (_, result) = drive(committer(&["a"], opts), &mut c);
    assert!(matches!(result, Err(Error::Undetermined(_))), "{result:?}");
    insta::assert_snapshot!(out);
}

#[test]
fn mutations_follow_the_buffer() {
    let mut b = MemBuffer::new();
    b.set(b"a", Bytes::from("1")).unwrap();
    b.delete(b"b").unwrap();
    b.set_with_flags(
        b"c",
        Bytes::from("3"),
        &[crate::txn::membuffer::FlagsOp::SetPresumeKeyNotExists],
    )
    .unwrap();
    b.delete_with_flags(b"0", &[crate::txn::membuffer::FlagsOp::SetPresumeKeyNotExists]).unwrap();
    b.update_flags(b"d", &[crate::txn::membuffer::FlagsOp::SetKeyLocked]).unwrap();
    let (m, primary) = mutations_from_buffer(&b);
    let ops: Vec<_> =
        m.iter().map(|m| (String::from_utf8_lossy(m.key.as_bytes()).into_owned(), m.op)).collect();
    assert_eq!(
        ops,
        vec![
            ("0".into(), kvrpcpb::Op::CheckNotExists),
            ("a".into(), kvrpcpb::Op::Put),
            ("b".into(), kvrpcpb::Op::Del),
            ("c".into(), kvrpcpb::Op::Insert),
            ("d".into(), kvrpcpb::Op::Lock),
        ]
    );
    assert_eq!(
        primary,
        Some(Key::from("a")),
        "CheckNotExists writes no lock, so it is not the primary"
    );
}

#[test]
fn lock_ttl_grows_with_size_and_age() {
    assert_eq!(lock_ttl(100, Duration::ZERO), 3_000);
    assert_eq!(lock_ttl(100, Duration::from_millis(500)), 3_500);
    assert_eq!(lock_ttl(4 * 1024 * 1024, Duration::ZERO), 12_000);
    assert_eq!(lock_ttl(1 << 30, Duration::ZERO), 20_000);
}

/// A large transaction that waits a long time in prewrite (another
/// transaction's live lock) keeps its own primary alive with heartbeats.
#[test]
fn large_transactions_send_heartbeats_while_committing() {
    let mut c = FakeCluster::new(&[]);
    let locked = || {
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo {
                    primary_lock: "p".into(),
                    key: "b".into(),
                    lock_version: ts(400),
                    lock_ttl: 600_000,
                    txn_size: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })))
    };
    let alive = || {
        respond(KvResponse::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
            lock_ttl: 600_000,
            ..Default::default()
        })))
    };
    for _ in 0..15 {
        c.fault("prewrite", locked());
        c.fault("check_txn_status", alive());
    }
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    for _ in 0..10 {
        c.fault("txn_heart_beat", respond(KvResponse::TxnHeartBeat(Default::default())));
    }
    let opts = CommitOptions { heartbeat_threshold: Some(0), ..Default::default() };
    let (log, result) = drive(committer(&["a", "b"], opts), &mut c);
    result.expect("committed once the other lock was gone");
    let beats: Vec<_> =
        log.lines().filter(|l| l.contains("send") && l.contains("txn_heart_beat")).collect();
    assert!(beats.len() >= 2, "heartbeats every 10 s while waiting:\n{log}");
    assert!(beats[0].starts_with("t+10."), "{}", beats[0]);
    assert!(beats[1].starts_with("t+20."), "{}", beats[1]);
    let hb = c.received.iter().find_map(|r| match r {
        KvRequest::TxnHeartBeat(h) => Some(h.clone()),
        _ => None,
    });
    let hb = hb.expect("a heartbeat");
    assert_eq!(&hb.primary_lock[..], b"a");
    assert!(hb.advise_lock_ttl >= MAX_LOCK_TTL + 10_000, "age + 20 s: {}", hb.advise_lock_ttl);

    // A small transaction sends none.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let (log, result) = drive(committer(&["a"], CommitOptions::default()), &mut c);
    result.expect("committed");
    assert!(!log.contains("txn_heart_beat"));
}

/// TiKV writes nothing for a prewrite in which any key is locked, so after
/// resolving, the whole batch is prewritten again — not only the locked key
/// (found by the bank-transfer e2e test: the primary was never locked and
/// its commit found no lock).
#[test]
fn a_partly_locked_batch_is_prewritten_again_whole() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo {
                    primary_lock: "p".into(),
                    key: "b".into(),
                    lock_version: ts(100),
                    lock_ttl: 10,
                    txn_size: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    c.fault(
        "check_txn_status",
        respond(KvResponse::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
            action: kvrpcpb::Action::TtlExpireRollback as i32,
            ..Default::default()
        }))),
    );
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let mut op = committer(&["a", "b"], CommitOptions::default());
    let (log, result) = drive(&mut op, &mut c);
    result.expect("committed");
    // client-go's CommitDetails: each phase timed across its rounds.
    let details = op.details();
    assert_eq!((details.write_keys, details.prewrite_requests), (2, 2), "{log}");
    assert_eq!(details.write_size, 2 * ("a".len() + "v".len()), "{details:?}");
    assert!(details.prewrite > Duration::ZERO, "{details:?}");
    assert!(details.resolve_lock > Duration::ZERO, "{details:?}");
    assert!(details.get_commit_ts > Duration::ZERO && details.commit > Duration::ZERO);
    assert_eq!(details.get_latest_ts, Duration::ZERO, "2PC takes no extra timestamp");
    let prewrites: Vec<Vec<Bytes>> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Prewrite(p) => Some(p.mutations.iter().map(|m| m.key.clone()).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(prewrites.len(), 2);
    assert_eq!(prewrites[1], vec![Bytes::from("a"), Bytes::from("b")]);
}

/// client-go's `CommitDetails` lists the backoff types slept on; ours
/// counts and times each kind, over the prewrite and commit budgets.
#[test]
fn commit_details_break_the_backoff_down_by_kind() {
    let mut c = FakeCluster::new(&[]);
    let busy = |phase: &str| errorpb::Error {
        message: format!("busy at {phase}"),
        server_is_busy: Some(Default::default()),
        ..Default::default()
    };
    c.fault("prewrite", Fault::Region(Box::new(busy("prewrite"))));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", Fault::Region(Box::new(busy("commit"))));
    c.fault("kv_commit", commit_ok());
    let mut op = committer(&["a"], CommitOptions::default());
    let (log, result) = drive(&mut op, &mut c);
    result.expect("committed");
    let details = op.details();
    let [busy] = details.backoff_by_kind[..] else {
        panic!("one kind slept on: {details:?}\n{log}");
    };
    assert_eq!((busy.kind, busy.sleeps), (BackoffKind::ServerBusy, 2), "{log}");
    assert!(busy.slept > Duration::ZERO);
    assert_eq!(busy.slept, details.backoff, "every sleep is of that kind");
}

#[test]
fn every_request_of_a_commit_carries_the_transaction_tags() {
    let mut c = FakeCluster::new(&["m"]);
    // A lock met at prewrite brings the resolver's requests in too.
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo {
                    primary_lock: "p".into(),
                    key: "b".into(),
                    lock_version: ts(100),
                    lock_ttl: 10,
                    txn_size: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    c.fault(
        "check_txn_status",
        respond(KvResponse::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
            action: kvrpcpb::Action::TtlExpireRollback as i32,
            ..Default::default()
        }))),
    );
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let tags = RequestTags {
        priority: kvrpcpb::CommandPri::High,
        request_source: Some(crate::rpc::RequestSource::external("Update")),
        resource_group_name: Some("rg1".into()),
        resource_group_tag: Bytes::from_static(b"tag"),
    };
    let opts = CommitOptions { tags, ..Default::default() };
    let (_, result) = drive(committer(&["a", "b", "x"], opts), &mut c);
    result.expect("committed");
    let names: Vec<&str> = c.received.iter().map(KvRequest::name).collect();
    for needed in ["kv_prewrite", "kv_check_txn_status", "kv_resolve_lock", "kv_commit"] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
    for req in &c.received {
        let ctx = req.context().expect("stamped");
        assert_eq!(ctx.priority, kvrpcpb::CommandPri::High as i32, "{}", req.name());
        // client-go patchRequestSource: the replica in front, and a retry
        // names the first attempt's read type too.
        let source = ctx.request_source.as_str();
        assert!(
            source == "leader_external_Update" || source == "retry_leader_leader_external_Update",
            "{}: {source}",
            req.name()
        );
        let group = ctx.resource_control_context.as_ref().map(|r| r.resource_group_name.as_str());
        assert_eq!(group, Some("rg1"), "{}", req.name());
        assert_eq!(&ctx.resource_group_tag[..], b"tag", "{}", req.name());
    }
}

/// Caches the region of `a` in a fresh view (1PC is only tried when every
/// key is in one cached region).
fn view_with_a_cached(c: &mut FakeCluster) -> Arc<ClusterView> {
    let v = view();
    c.data.insert(b"a".to_vec(), Bytes::from("0"));
    let _ = drive(crate::raw::get(&v, Key::from("a"), &Default::default()), c);
    v
}

fn one_pc_committer(v: Arc<ClusterView>) -> Committer {
    let opts = CommitOptions { one_pc: true, ..Default::default() };
    Committer::new(v, ts_at(500), Key::from("a"), vec![put("a"), put("b")], Duration::ZERO, opts)
}

fn prewrites(c: &FakeCluster) -> Vec<(Vec<Bytes>, bool)> {
    c.received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Prewrite(p) => {
                Some((p.mutations.iter().map(|m| m.key.clone()).collect(), p.try_one_pc))
            }
            _ => None,
        })
        .collect()
}

/// A 1PC prewrite sent again after a region error still asks for 1PC, as
/// client-go's retried single batch does: if an earlier attempt committed
/// the transaction, only a 1PC request is answered with its commit ts
/// (TiKV's `check_committed_record_on_err`); a plain one looks like a
/// fresh 2PC lock, and the commit would report a ts of its own.
/// (Found by the transactional simulation, seed 865.)
#[test]
fn a_retried_one_pc_prewrite_asks_for_one_pc_again() {
    let mut out = String::new();
    let mut c = FakeCluster::new(&[]);
    let v = view_with_a_cached(&mut c);
    let epoch = errorpb::Error {
        message: "epoch not match".into(),
        epoch_not_match: Some(Default::default()),
        ..Default::default()
    };
    c.fault("prewrite", Fault::Region(Box::new(epoch.clone())));
    c.fault("prewrite", prewrite_ok(0, ts(1000) + 3));
    let (log, result) = drive(one_pc_committer(v), &mut c);
    let outcome = result.expect("committed");
    assert_eq!(
        (outcome.mode, outcome.commit_ts),
        (CommitMode::OnePhase, Timestamp::from_version(ts(1000) + 3))
    );
    let sent = prewrites(&c);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|(_, one_pc)| *one_pc), "every attempt asks for 1PC: {sent:?}");
    let _ = writeln!(out, "== retried after a region error\n{log}");

    // The first attempt's answer is lost, then the keys move to two
    // regions: the two 2PC answers cannot tell whether the lost attempt
    // committed the transaction, at a ts nobody reports. Undetermined,
    // and no commit is sent.
    let mut c = FakeCluster::new(&[]);
    let v = view_with_a_cached(&mut c);
    // (The leader answers the liveness probe that follows the deadline,
    // so it stays a candidate: the retry goes to it,
    // which applies the split and refuses the old epoch; one re-split
    // batch then meets the scripted EpochNotMatch once more.)
    c.fault("prewrite", Fault::Rpc(RpcError::DeadlineExceeded));
    c.fault("prewrite", Fault::SplitAt(b"b".to_vec()));
    c.fault("prewrite", Fault::Region(Box::new(epoch.clone())));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    let (log, result) = drive(one_pc_committer(v), &mut c);
    assert!(matches!(&result, Err(Error::Undetermined(_))), "{result:?}");
    let sent = prewrites(&c);
    assert!(sent.iter().any(|(keys, one_pc)| keys.len() == 1 && !one_pc), "{sent:?}");
    assert!(!c.received.iter().any(|r| matches!(r, KvRequest::Commit(_))), "no commit");
    let _ = writeln!(out, "== lost answer, then split\n{log}");

    // Split without a lost 1PC answer (the first attempt met the new
    // epoch): nothing was committed, so 2PC goes on.
    let mut c = FakeCluster::new(&[]);
    let v = view_with_a_cached(&mut c);
    c.fault("prewrite", Fault::SplitAt(b"b".to_vec()));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let (log, result) = drive(one_pc_committer(v), &mut c);
    let outcome = result.expect("committed with 2PC");
    assert_eq!(outcome.mode, CommitMode::TwoPhase);
    let _ = writeln!(out, "== split after a region error\n{log}");
    insta::assert_snapshot!(out);
}

fn region_error(what: &str) -> Fault {
    let mut e = errorpb::Error { message: what.into(), ..Default::default() };
    match what {
        "not leader" => e.not_leader = Some(Default::default()),
        _ => e.region_not_found = Some(Default::default()),
    }
    Fault::Region(Box::new(e))
}

/// Undetermined only when an answer that decides the outcome was lost
/// (client-go sets its undetermined error on RPC errors only): a failed
/// async-commit prewrite or a failed primary commit whose attempts were all
/// refused with region errors is a definite failure; one that lost an
/// answer is undetermined. (Found by the `committer` property.)
#[test]
fn undetermined_only_after_a_lost_answer() {
    let small = |opts: CommitOptions| {
        // Budgets small enough for region errors to exhaust them.
        let budgets = crate::config::BackoffBudgets {
            prewrite: Duration::from_millis(30),
            commit: Duration::from_millis(30),
            ..Default::default()
        };
        let config = crate::config::Config::default()
            .with_pd_endpoints(["pd1:2379"])
            .with_backoff_budgets(budgets);
        let pd = Arc::new(crate::pd::PdState::new(config.pd_endpoints.clone()));
        let codec = crate::codec::ApiCodec::v1(crate::codec::Mode::Raw);
        let v = Arc::new(ClusterView::new(config, codec, pd));
        Committer::new(v, ts_at(500), Key::from("a"), vec![put("a")], Duration::ZERO, opts)
    };
    let mut out = String::new();
    let async_commit = CommitOptions { async_commit: true, ..Default::default() };

    // Async commit, every prewrite refused: definite.
    let mut c = FakeCluster::new(&[]);
    for _ in 0..1000 {
        c.fault("prewrite", region_error("region not found"));
    }
    let (log, result) = drive(small(async_commit.clone()), &mut c);
    assert!(matches!(&result, Err(Error::BackoffExhausted { .. })), "{result:?}");
    let _ = writeln!(out, "== async commit, prewrites refused\n{log}");

    // Async commit, one prewrite answer lost before the refusals: undetermined.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", Fault::Rpc(RpcError::DeadlineExceeded));
    for _ in 0..1000 {
        c.fault("prewrite", region_error("region not found"));
    }
    let (_, result) = drive(small(async_commit), &mut c);
    assert!(matches!(&result, Err(Error::Undetermined(_))), "{result:?}");

    // 2PC, the primary's commit refused until the budget runs out: definite.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(0, 0));
    for _ in 0..1000 {
        c.fault("kv_commit", region_error("region not found"));
    }
    let (log, result) = drive(small(CommitOptions::default()), &mut c);
    assert!(matches!(&result, Err(Error::BackoffExhausted { .. })), "{result:?}");
    let _ = writeln!(out, "== primary commit refused\n{log}");
    insta::assert_snapshot!(out);
}

/// A lost answer counts for the whole commit, not only for the round that
/// lost it: a primary `Commit` whose answer was lost, then retried and told
/// `CommitTsExpired`, may still have committed at the first commit ts, so
/// when the next round is refused until the budget runs out the outcome is
/// undetermined.
#[test]
fn a_lost_answer_of_an_earlier_round_still_counts() {
    let budgets =
        crate::config::BackoffBudgets { commit: Duration::from_secs(2), ..Default::default() };
    let config = crate::config::Config::default()
        .with_pd_endpoints(["pd1:2379"])
        .with_backoff_budgets(budgets);
    let pd = Arc::new(crate::pd::PdState::new(config.pd_endpoints.clone()));
    let codec = crate::codec::ApiCodec::v1(crate::codec::Mode::Raw);
    let v = Arc::new(ClusterView::new(config, codec, pd));
    let committer = Committer::new(
        v,
        ts_at(500),
        Key::from("a"),
        vec![put("a")],
        Duration::ZERO,
        CommitOptions::default(),
    );
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", Fault::Rpc(RpcError::DeadlineExceeded));
    c.fault(
        "kv_commit",
        respond(KvResponse::from(kvrpcpb::CommitResponse {
            error: Some(kvrpcpb::KeyError {
                commit_ts_expired: Some(kvrpcpb::CommitTsExpired {
                    attempted_commit_ts: 1,
                    min_commit_ts: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
    );
    for _ in 0..1000 {
        c.fault("kv_commit", region_error("region not found"));
    }
    let (log, result) = drive(committer, &mut c);
    let commits = c.received.iter().filter(|r| matches!(r, KvRequest::Commit(_))).count();
    assert!(commits > 3, "the second round ran: {log}");
    assert!(matches!(&result, Err(Error::Undetermined(_))), "{result:?}\n{log}");
}

/// client-go does not chase a `CommitTsExpired` whose `min_commit_ts` is
/// more than an hour past the attempted commit ts: definite failure
/// (nothing was committed).
#[test]
fn an_absurd_commit_ts_push_is_refused() {
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault(
        "kv_commit",
        respond(KvResponse::from(kvrpcpb::CommitResponse {
            error: Some(kvrpcpb::KeyError {
                commit_ts_expired: Some(kvrpcpb::CommitTsExpired {
                    attempted_commit_ts: ts(1000),
                    min_commit_ts: ts(1000) + MAX_COMMIT_TS_PUSH + 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
    );
    let (_, result) = drive(committer(&["a"], CommitOptions::default()), &mut c);
    assert!(
        matches!(&result, Err(Error::KeyError(e)) if e.commit_ts_expired.is_some()),
        "{result:?}"
    );
    let commits = c.received.iter().filter(|r| matches!(r, KvRequest::Commit(_))).count();
    assert_eq!(commits, 1, "no retry with a newer commit ts");
}

/// client-go's batch rule (`appendBatchMutationsBySize`), written out
/// independently of ours: keys join a batch while its size is below
/// `limit`, so a batch ends with the key that reaches the limit.
fn client_go_batches(sizes: &[usize], limit: usize) -> usize {
    let (mut batches, mut start) = (0, 0);
    while start < sizes.len() {
        let (mut end, mut size) = (start, 0);
        while end < sizes.len() && size < limit {
            size += sizes[end];
            end += 1;
        }
        batches += 1;
        start = end;
    }
    batches
}

/// Benchmark B7's shape: 10,000 keys of 24 bytes with 128-byte
/// values over 100 regions on 3 stores. Prewrite sends one RPC per 16 KiB
/// (key + value) batch of each region, exactly client-go's count; commit
/// sends the primary's batch (the commit point: the primary with the
/// other keys of its region's batch), then one RPC per other 16 KiB of
/// keys per region. 80 regions hold 75 keys (11,400 bytes: one batch) and
/// 20 hold 200 (30,400 bytes: two batches, 108 keys then 92), so the rule
/// is exercised, not just "one batch per region".
#[test]
fn a_large_commit_sends_client_go_batch_counts() {
    const VALUE_LEN: usize = 128;
    let key = |i: usize| format!("key{i:021}");
    let per_region: Vec<usize> = (0..100).map(|r| if r < 80 { 75 } else { 200 }).collect();
    let total: usize = per_region.iter().sum();
    assert_eq!(total, 10_000);
    let mut split_keys = Vec::new();
    let mut at = 0;
    for n in &per_region[..99] {
        at += n;
        split_keys.push(key(at));
    }
    let splits: Vec<&str> = split_keys.iter().map(String::as_str).collect();
    let mut c = FakeCluster::new(&splits);
    // client-go's counts, region by region.
    let prewrites: usize = per_region
        .iter()
        .map(|&n| client_go_batches(&vec![24 + VALUE_LEN; n], TXN_COMMIT_BATCH_SIZE))
        .sum();
    let secondary_commits: usize =
        per_region.iter().map(|&n| client_go_batches(&vec![24; n], TXN_COMMIT_BATCH_SIZE)).sum();
    assert_eq!((prewrites, secondary_commits), (120, 100), "the reference rule");
    for _ in 0..prewrites {
        c.fault("prewrite", prewrite_ok(0, 0));
    }
    for _ in 0..=secondary_commits {
        c.fault("kv_commit", commit_ok());
    }
    let mutations: Vec<Mutation> = (0..total)
        .map(|i| Mutation {
            op: kvrpcpb::Op::Put,
            key: Key::from(key(i)),
            value: Bytes::from(vec![b'v'; VALUE_LEN]),
            pessimistic_action: PessimisticAction::SkipPessimisticCheck,
        })
        .collect();
    let v = view();
    let committer = Committer::new(
        v.clone(),
        ts_at(500),
        Key::from(key(0)),
        mutations,
        Duration::from_millis(10),
        CommitOptions::default(),
    );
    let (_, result) = drive(committer, &mut c);
    let outcome = result.expect("committed");
    assert_eq!(outcome.mode, CommitMode::TwoPhase);
    let count =
        |c: &FakeCluster, name: &str| c.received.iter().filter(|r| r.name() == name).count();
    assert_eq!(count(&c, "kv_prewrite"), prewrites);
    assert_eq!(count(&c, "kv_commit"), 1, "the primary's batch");
    // The primary's region holds 75 keys: one batch.
    assert_eq!(outcome.keys_to_commit.len(), total - per_region[0]);
    let (_, result) =
        drive(commit_keys(&v, ts_at(500), outcome.commit_ts, outcome.keys_to_commit), &mut c);
    result.expect("secondaries committed");
    assert_eq!(count(&c, "kv_commit"), secondary_commits);
    // Every key of every prewrite went out once.
    let prewritten = mutations_prewritten(&c);
    assert_eq!(prewritten, total);
}

/// The request kind and keys of the follow-up `op` hands back, run against
/// `c` (one region: one batch).
fn follow_up_of(op: &mut Committer, c: &mut FakeCluster) -> Option<(&'static str, Vec<Bytes>)> {
    let follow_up = op.take_follow_up()?;
    assert!(op.take_follow_up().is_none(), "handed back once");
    c.fault("kv_commit", commit_ok());
    c.fault("batch_rollback", respond(KvResponse::BatchRollback(Default::default())));
    let before = c.received.len();
    let (_, result) = drive(follow_up, c);
    result.expect("the follow-up runs");
    let sent: Vec<(&'static str, Vec<Bytes>)> = c.received[before..]
        .iter()
        .map(|r| match r {
            KvRequest::Commit(r) => ("commit", r.keys.clone()),
            KvRequest::BatchRollback(r) => ("rollback", r.keys.clone()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sent.len(), 1, "one region, one batch: {sent:?}");
    sent.into_iter().next()
}

/// What the runtime runs after the result is the committer's decision:
/// the secondaries' commit after 2PC, every key's commit after async
/// commit, nothing after 1PC or an undetermined outcome, and the rollback
/// of every key after a definite failure.
#[test]
fn the_committer_hands_back_its_follow_up() {
    let keys = |ks: &[&str]| ks.iter().map(|k| Bytes::from(k.to_string())).collect::<Vec<_>>();

    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let mut op = committer(&["a", "b", "x", "y"], CommitOptions::default());
    assert!(op.take_follow_up().is_none(), "nothing before the result");
    drive(&mut op, &mut c).1.expect("committed");
    // b went with the primary.
    assert_eq!(follow_up_of(&mut op, &mut c), Some(("commit", keys(&["x", "y"]))));

    // Every key in the primary's batch: nothing is left to commit.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let mut op = committer(&["a", "b", "c"], CommitOptions::default());
    drive(&mut op, &mut c).1.expect("committed");
    assert!(op.take_follow_up().is_none());

    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(ts(1000) + 3, 0));
    let mut op = committer(&["a", "b"], CommitOptions { async_commit: true, ..Default::default() });
    drive(&mut op, &mut c).1.expect("committed");
    assert_eq!(follow_up_of(&mut op, &mut c), Some(("commit", keys(&["a", "b"]))));

    let mut c = FakeCluster::new(&[]);
    let v = view_with_a_cached(&mut c);
    c.fault("prewrite", prewrite_ok(0, ts(1000) + 5));
    let mut op = one_pc_committer(v);
    drive(&mut op, &mut c).1.expect("committed");
    assert_eq!(follow_up_of(&mut op, &mut c), None);

    // An async-commit prewrite lost its answer, then the budget ran out.
    let budgets =
        crate::config::BackoffBudgets { prewrite: Duration::from_millis(30), ..Default::default() };
    let v =
        crate::testing::view_with(crate::config::Config::default().with_backoff_budgets(budgets));
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", Fault::Rpc(RpcError::DeadlineExceeded));
    for _ in 0..1000 {
        c.fault("prewrite", region_error("region not found"));
    }
    let opts = CommitOptions { async_commit: true, ..Default::default() };
    let mut op =
        Committer::new(v, ts_at(500), Key::from("a"), vec![put("a")], Duration::ZERO, opts);
    let outcome = drive(&mut op, &mut c).1;
    assert!(matches!(outcome, Err(Error::Undetermined(_))), "{outcome:?}");
    assert!(op.take_follow_up().is_none(), "locks of a maybe-committed txn stay");

    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                already_exist: Some(kvrpcpb::AlreadyExist { key: "b".into() }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    let mut op = committer(&["a", "b"], CommitOptions::default());
    assert!(matches!(drive(&mut op, &mut c).1, Err(Error::KeyExists(_))));
    assert_eq!(follow_up_of(&mut op, &mut c), Some(("rollback", keys(&["a", "b"]))));
}

/// The keep-alive on its own: a beat every `HEARTBEAT_INTERVAL`, each
/// advising the transaction's age plus `MAX_LOCK_TTL`; it ends by itself
/// after `MAX_HEARTBEAT_FAILURES` failed beats in a row, and once the
/// transaction is `MAX_TXN_TTL` old.
#[test]
fn the_keep_alive_beats_until_it_fails_or_the_transaction_is_too_old() {
    let beat = |error: bool| {
        respond(KvResponse::TxnHeartBeat(Box::new(kvrpcpb::TxnHeartBeatResponse {
            error: error.then(|| kvrpcpb::KeyError { abort: "gone".into(), ..Default::default() }),
            ..Default::default()
        })))
    };
    let advised = |c: &FakeCluster| -> Vec<u64> {
        c.received
            .iter()
            .filter_map(|r| match r {
                KvRequest::TxnHeartBeat(h) => Some(h.advise_lock_ttl),
                _ => None,
            })
            .collect()
    };
    let keep_alive = |elapsed: Duration| {
        KeepAlive::new(view(), ts_at(500), Key::from("p"), elapsed, RequestTags::default())
    };

    // One success resets the count: 1 failure, 1 success, then 10 failures.
    let mut c = FakeCluster::new(&[]);
    c.fault("txn_heart_beat", beat(true));
    c.fault("txn_heart_beat", beat(false));
    for _ in 0..MAX_HEARTBEAT_FAILURES {
        c.fault("txn_heart_beat", beat(true));
    }
    let (_, result) = drive(keep_alive(Duration::from_secs(1)), &mut c);
    result.expect("ends by itself");
    let ttls = advised(&c);
    assert_eq!(ttls.len(), 2 + MAX_HEARTBEAT_FAILURES as usize);
    let interval = HEARTBEAT_INTERVAL.as_millis() as u64;
    for (i, ttl) in ttls.iter().enumerate() {
        // Beat i+1 leaves one interval after the previous one (answers
        // take a millisecond each in the fake).
        let age = 1_000 + (i as u64 + 1) * interval;
        assert!((age + MAX_LOCK_TTL..age + MAX_LOCK_TTL + 50).contains(ttl), "{i}: {ttl}");
    }

    // A transaction 15 s short of the limit: one beat, then the age is up.
    let mut c = FakeCluster::new(&[]);
    c.fault("txn_heart_beat", beat(false));
    c.fault("txn_heart_beat", beat(false));
    let (_, result) = drive(keep_alive(MAX_TXN_TTL - Duration::from_secs(15)), &mut c);
    result.expect("ends by itself");
    assert_eq!(advised(&c).len(), 1);
}

/// client-go's `MaxTxnTimeUse`: a transaction older than 24 h is refused
/// before anything is written, and one whose commit ts comes 24 h after its
/// start fails before its primary's commit, its prewrites rolled back.
#[test]
fn transactions_past_the_time_limit_are_refused_before_the_commit_point() {
    let mut c = FakeCluster::new(&[]);
    let day = MAX_TXN_TIME_USE;
    let mut op = Committer::new(
        view(),
        ts_at(500),
        Key::from("a"),
        vec![put("a")],
        day,
        CommitOptions { async_commit: true, ..Default::default() },
    );
    let result = drive(&mut op, &mut c).1;
    assert!(matches!(result, Err(Error::TxnTooLong { .. })), "{result:?}");
    assert!(c.received.is_empty(), "nothing sent: {:?}", c.received);
    assert!(op.take_follow_up().is_none(), "nothing to roll back");

    let mut c = FakeCluster::new(&[]);
    c.tso_physical = 500 + day.as_millis() as i64;
    c.fault("prewrite", prewrite_ok(0, 0));
    let mut op = committer(&["a", "b"], CommitOptions::default());
    let result = drive(&mut op, &mut c).1;
    assert!(
        matches!(result, Err(Error::TxnTooLong { start_ts, .. }) if start_ts == ts_at(500)),
        "{result:?}"
    );
    assert!(
        !c.received.iter().any(|r| matches!(r, KvRequest::Commit(_))),
        "the primary is never committed"
    );
    assert_eq!(
        follow_up_of(&mut op, &mut c).map(|(kind, _)| kind),
        Some("rollback"),
        "the prewritten keys are rolled back"
    );
}

/// A pessimistic transaction's buffer: the keys it locked carry
/// `DoPessimisticCheck`, a lazily checked unique key `DoConstraintCheck`;
/// a presumed-absent tombstone is a `Del`, a tombstone of a key it
/// inserted is dropped (or a `Lock` if locked).
#[test]
fn pessimistic_mutations_carry_their_checks() {
    use crate::txn::membuffer::FlagsOp;
    let mut b = MemBuffer::new();
    b.set_with_flags(b"a", Bytes::from("1"), &[FlagsOp::SetKeyLocked]).unwrap();
    b.set(b"b", Bytes::from("2")).unwrap();
    b.update_flags(b"c", &[FlagsOp::SetKeyLocked]).unwrap();
    b.delete_with_flags(b"d", &[FlagsOp::SetPresumeKeyNotExists]).unwrap();
    b.delete_with_flags(b"e", &[FlagsOp::SetNewlyInserted]).unwrap();
    b.delete_with_flags(b"f", &[FlagsOp::SetNewlyInserted, FlagsOp::SetKeyLocked]).unwrap();
    b.set_with_flags(
        b"g",
        Bytes::from("7"),
        &[FlagsOp::SetPresumeKeyNotExists, FlagsOp::SetNeedConstraintCheckInPrewrite],
    )
    .unwrap();
    let (m, primary) = pessimistic_mutations_from_buffer(&b);
    let got: Vec<_> = m
        .iter()
        .map(|m| {
            (String::from_utf8_lossy(m.key.as_bytes()).into_owned(), m.op, m.pessimistic_action)
        })
        .collect();
    use PessimisticAction::*;
    assert_eq!(
        got,
        vec![
            ("a".into(), kvrpcpb::Op::Put, DoPessimisticCheck),
            ("b".into(), kvrpcpb::Op::Put, SkipPessimisticCheck),
            ("c".into(), kvrpcpb::Op::Lock, DoPessimisticCheck),
            ("d".into(), kvrpcpb::Op::Del, SkipPessimisticCheck),
            ("f".into(), kvrpcpb::Op::Lock, DoPessimisticCheck),
            ("g".into(), kvrpcpb::Op::Insert, DoConstraintCheck),
        ]
    );
    assert_eq!(primary, Some(Key::from("a")));
    // The optimistic reading of the same buffer is unchanged.
    let (m, _) = mutations_from_buffer(&b);
    let ops: Vec<_> = m.iter().map(|m| m.op).collect();
    assert_eq!(ops[3], kvrpcpb::Op::CheckNotExists);
    assert_eq!(ops.len(), 7, "optimistic keeps every tombstone");
    assert!(m.iter().all(|m| m.pessimistic_action != DoPessimisticCheck));
}

fn pessimistic_put(k: &str) -> Mutation {
    Mutation { pessimistic_action: PessimisticAction::DoPessimisticCheck, ..put(k) }
}

/// A pessimistic commit sends `for_update_ts` and the per-mutation checks,
/// starts `min_commit_ts` above `for_update_ts`, and resolves a newer
/// transaction's lock instead of failing; async commit (with a lock TTL
/// past `max_commit_ts`) and 1PC stay available.
#[test]
fn a_pessimistic_commit_carries_for_update_ts_and_its_checks() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo {
                    primary_lock: "q".into(),
                    key: "b".into(),
                    lock_version: ts(700),
                    lock_ttl: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    c.fault("check_txn_status", respond(KvResponse::CheckTxnStatus(Default::default())));
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let mutations = vec![pessimistic_put("a"), put("b")];
    let committer = Committer::new(
        view(),
        ts_at(500),
        Key::from("a"),
        mutations,
        Duration::from_millis(10),
        CommitOptions::default(),
    )
    .pessimistic(ts_at(900));
    let (log, result) = drive(committer, &mut c);
    assert_eq!(result.expect("committed after resolving").mode, CommitMode::TwoPhase, "{log}");
    let prewrites: Vec<_> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Prewrite(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(prewrites.len(), 2, "the newer lock was resolved, then the batch sent again");
    for p in &prewrites {
        assert_eq!(p.for_update_ts, ts(900));
        assert_eq!(p.min_commit_ts, ts(900) + 1);
        assert_eq!(
            p.pessimistic_actions,
            vec![
                PessimisticAction::DoPessimisticCheck as i32,
                PessimisticAction::SkipPessimisticCheck as i32
            ]
        );
    }

    // Async commit: allowed, with the TTL reaching past max_commit_ts.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(ts(1000) + 5, 0));
    let opts = CommitOptions { async_commit: true, ..Default::default() };
    let committer = Committer::new(
        view(),
        ts_at(500),
        Key::from("a"),
        vec![pessimistic_put("a")],
        Duration::from_millis(10),
        opts,
    )
    .pessimistic(ts_at(900));
    let (_, result) = drive(committer, &mut c);
    assert_eq!(result.expect("committed").mode, CommitMode::AsyncCommit);
    let ttl = c.received.iter().find_map(|r| match r {
        KvRequest::Prewrite(p) => Some(p.lock_ttl),
        _ => None,
    });
    // Past max_commit_ts (start + 10 ms + the 2 s safe window), as
    // client-go requires of a pessimistic async commit.
    assert_eq!(ttl, Some(3_010));

    // 1PC: allowed.
    let mut c = FakeCluster::new(&[]);
    let v = view_with_a_cached(&mut c);
    c.fault("prewrite", prewrite_ok(0, ts(1000) + 3));
    let opts = CommitOptions { one_pc: true, ..Default::default() };
    let committer = Committer::new(
        v,
        ts_at(500),
        Key::from("a"),
        vec![pessimistic_put("a")],
        Duration::ZERO,
        opts,
    )
    .pessimistic(ts_at(900));
    let (_, result) = drive(committer, &mut c);
    assert_eq!(result.expect("committed").mode, CommitMode::OnePhase);
    let first = c.received.iter().find_map(|r| match r {
        KvRequest::Prewrite(p) => Some((p.try_one_pc, p.for_update_ts)),
        _ => None,
    });
    assert_eq!(first, Some((true, ts(900))));
}

/// A key only locked in share mode prewrites a `SharedLock`, which is never
/// the primary and turns async commit and 1PC off (client-go).
#[test]
fn shared_locks_are_not_primaries_and_turn_async_commit_off() {
    use crate::txn::membuffer::FlagsOp;
    let mut b = MemBuffer::new();
    b.update_flags(b"a", &[FlagsOp::SetKeyLocked, FlagsOp::SetKeyLockedInShareMode]).unwrap();
    b.update_flags(b"b", &[FlagsOp::SetKeyLocked]).unwrap();
    let (m, primary) = pessimistic_mutations_from_buffer(&b);
    let ops: Vec<_> = m.iter().map(|m| m.op).collect();
    assert_eq!(ops, vec![kvrpcpb::Op::SharedLock, kvrpcpb::Op::Lock]);
    assert_eq!(primary, Some(Key::from("b")), "a shared lock is never the primary");

    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(ts(1000) + 5, 0));
    c.fault("kv_commit", commit_ok());
    let opts = CommitOptions { async_commit: true, one_pc: true, ..Default::default() };
    let committer =
        Committer::new(view(), ts_at(500), Key::from("b"), m, Duration::from_millis(10), opts)
            .pessimistic(ts_at(900));
    let (_, result) = drive(committer, &mut c);
    assert_eq!(result.expect("committed").mode, CommitMode::TwoPhase);
    let prewrite = c.received.iter().find_map(|r| match r {
        KvRequest::Prewrite(p) => Some((p.use_async_commit, p.try_one_pc)),
        _ => None,
    });
    assert_eq!(prewrite, Some((false, false)));
}

/// `for_update_ts` constraints go with the mutations of their keys, by
/// index within each batch.
#[test]
fn for_update_ts_constraints_follow_their_keys_into_each_batch() {
    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let mutations = vec![pessimistic_put("a"), pessimistic_put("b"), pessimistic_put("x")];
    let committer = Committer::new(
        view(),
        ts_at(500),
        Key::from("a"),
        mutations,
        Duration::from_millis(10),
        CommitOptions::default(),
    )
    .pessimistic(ts_at(900))
    .for_update_ts_constraints(vec![(Key::from("x"), ts_at(950)), (Key::from("b"), ts_at(920))]);
    let (_, result) = drive(committer, &mut c);
    result.expect("committed");
    // Per prewrite: its keys, and its constraints as (index, expected ts).
    type Batch = (Vec<Bytes>, Vec<(u32, u64)>);
    let mut got: Vec<Batch> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Prewrite(p) => Some((
                p.mutations.iter().map(|m| m.key.clone()).collect(),
                p.for_update_ts_constraints
                    .iter()
                    .map(|c| (c.index, c.expected_for_update_ts))
                    .collect(),
            )),
            _ => None,
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (vec![Bytes::from("a"), Bytes::from("b")], vec![(1, ts(920))]),
            (vec![Bytes::from("x")], vec![(0, ts(950))]),
        ]
    );
}

/// A prewrite meeting other transactions' shared locks resolves each
/// holder as its own lock (client-go iterates `shared_lock_infos`), then
/// prewrites again; a share TiKV reports lost is a typed error.
#[test]
fn shared_locks_met_are_resolved_per_holder_and_a_lost_share_is_typed() {
    let holder = |primary: &str, start_ms: i64| kvrpcpb::LockInfo {
        primary_lock: primary.to_string().into(),
        key: "b".into(),
        lock_version: ts(start_ms),
        lock_type: kvrpcpb::Op::PessimisticLock as i32,
        ..Default::default()
    };
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo {
                    key: "b".into(),
                    lock_type: kvrpcpb::Op::SharedLock as i32,
                    shared_lock_infos: vec![holder("q1", 300), holder("q2", 310)],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    for _ in 0..2 {
        c.fault("check_txn_status", respond(KvResponse::CheckTxnStatus(Default::default())));
        // Pessimistic holders found rolled back are pessimistically rolled back.
        let rollback = KvResponse::PessimisticRollback(Default::default());
        c.fault("pessimistic_rollback", respond(rollback));
    }
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let (log, result) = drive(committer(&["a", "b"], CommitOptions::default()), &mut c);
    if let Err(e) = result {
        panic!("not committed after resolving both holders: {e:?}\n{log}");
    }
    let checked: Vec<(Bytes, u64)> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::CheckTxnStatus(s) => Some((s.primary_key.clone(), s.lock_ts)),
            _ => None,
        })
        .collect();
    assert_eq!(
        checked,
        vec![(Bytes::from("q1"), ts(300)), (Bytes::from("q2"), ts(310))],
        "each holder's primary is checked: {log}"
    );

    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![kvrpcpb::KeyError {
                shared_lock_lost: Some(kvrpcpb::SharedLockLost {
                    key: "b".into(),
                    start_ts: ts(500),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))),
    );
    let (log, result) = drive(committer(&["a", "b"], CommitOptions::default()), &mut c);
    match result {
        Err(Error::SharedLockLost { key, start_ts }) => {
            assert_eq!((key, start_ts), (Key::from("b"), ts_at(500)), "{log}");
        }
        other => panic!("{other:?}\n{log}"),
    }
    assert!(!c.received.iter().any(|r| matches!(r, KvRequest::Commit(_))), "nothing committed");
}

/// client-go's `Mu.SlowestPrewrite` and `Mu.CommitPrimary`: the prewrites
/// of both regions go out together and the second answer is the slowest
/// (each answer here takes 1 ms, one after the other); the primary's
/// commit is recorded with its region, store and exec details.
#[test]
fn commit_details_keep_the_slowest_prewrite_and_the_primary_commit() {
    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault(
        "kv_commit",
        respond(KvResponse::Commit(Box::new(kvrpcpb::CommitResponse {
            exec_details_v2: Some(apply_log_details(3)),
            ..Default::default()
        }))),
    );
    let mut op = committer(&["a", "z"], CommitOptions::default());
    let (log, result) = drive(&mut op, &mut c);
    result.expect("committed");
    let d = op.details();
    let slowest = d.slowest_prewrite.expect("prewrites succeeded");
    assert_eq!(slowest.time, Duration::from_millis(2), "the later answer: {log}");
    assert!([1, 2].contains(&slowest.region_id));
    assert_eq!(c.stores.get(&slowest.store_id), Some(&slowest.store_addr));
    assert_eq!(slowest.exec_details.requests, 1);
    let primary = d.commit_primary.expect("two-phase commit");
    assert_eq!(primary.region_id, 1, "the primary `a` is in the first region");
    assert_eq!(primary.time, Duration::from_millis(1));
    assert_eq!(primary.exec_details.write.apply_log, Duration::from_nanos(3));

    // Async commit has no primary commit in the committer.
    let mut c = FakeCluster::new(&[]);
    c.fault("prewrite", prewrite_ok(ts(1000) + 7, 0));
    let mut op = committer(&["a"], CommitOptions::default().with_async_commit(true));
    let (log, result) = drive(&mut op, &mut c);
    assert_eq!(result.expect("committed").mode, CommitMode::AsyncCommit);
    let d = op.details();
    assert!(d.slowest_prewrite.is_some(), "{log}");
    assert_eq!(d.commit_primary, None, "{log}");
}

/// A prewrite refused with a region error is no candidate for the slowest
/// prewrite, even when it took as long as the one that succeeded.
#[test]
fn commit_details_skip_a_prewrite_refused_by_its_region() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "prewrite",
        Fault::Region(Box::new(errorpb::Error {
            message: "busy".into(),
            server_is_busy: Some(Default::default()),
            ..Default::default()
        })),
    );
    c.fault(
        "prewrite",
        respond(KvResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            exec_details_v2: Some(apply_log_details(5)),
            ..Default::default()
        }))),
    );
    c.fault("kv_commit", commit_ok());
    let mut op = committer(&["a"], CommitOptions::default());
    let (log, result) = drive(&mut op, &mut c);
    result.expect("committed");
    let d = op.details();
    assert_eq!(d.prewrite_requests, 2, "{log}");
    let slowest = d.slowest_prewrite.expect("the retry succeeded");
    assert_eq!(slowest.exec_details.with_details, 1, "the successful attempt: {log}");
    assert_eq!(slowest.exec_details.write.apply_log, Duration::from_nanos(5));
}

fn apply_log_details(nanos: u64) -> kvrpcpb::ExecDetailsV2 {
    kvrpcpb::ExecDetailsV2 {
        write_detail: Some(kvrpcpb::WriteDetail { apply_log_nanos: nanos, ..Default::default() }),
        ..Default::default()
    }
}

/// The primary's commit carries the other keys of its region's batch, cut
/// as client-go cuts batches: in key order, a batch taking keys while its
/// key bytes are below `TXN_COMMIT_BATCH_SIZE`.
#[test]
fn the_primary_batch_is_client_go_s_batch_of_the_primary() {
    let below_m = |k: &Key| k.as_bytes() < b"m".as_slice();
    let from_m = |k: &Key| k.as_bytes() >= b"m".as_slice();
    let keys: Vec<Key> = ["a", "b", "c", "n", "x"].iter().map(|k| Key::from(*k)).collect();
    let with = |primary: &str, in_region: &dyn Fn(&Key) -> bool| {
        primary_batch_secondaries(&keys, &Key::from(primary), in_region)
    };
    assert_eq!(with("b", &below_m), vec![Key::from("a"), Key::from("c")]);
    assert_eq!(with("n", &from_m), vec![Key::from("x")]);
    // A primary outside the region takes nobody with it.
    assert!(with("n", &below_m).is_empty());

    // Keys of 6 KiB: batches of three (a batch takes a key while it is
    // below 16 KiB), so [k0 k1 k2] [k3 k4 k5] [k6].
    let big: Vec<Key> =
        (0..7).map(|i| Key::from(format!("k{i}{}", "x".repeat(6 * 1024)))).collect();
    let batch = |p: usize| primary_batch_secondaries(&big, &big[p], |_| true);
    assert_eq!(batch(0), big[1..3].to_vec());
    assert_eq!(batch(4), vec![big[3].clone(), big[5].clone()]);
    assert!(batch(6).is_empty());
}

/// A primary commit that finds its region wrong is retried with the
/// primary alone: the keys it carried are committed after it, with the
/// others, so none is ever committed before the primary.
#[test]
fn a_relocated_primary_commit_is_retried_alone() {
    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", region_error("region not found"));
    c.fault("kv_commit", commit_ok());
    let (_, result) = drive(committer(&["a", "b", "x"], CommitOptions::default()), &mut c);
    let outcome = result.expect("committed");
    let commits = commits_received(&c);
    assert_eq!(
        commits,
        vec![vec![Bytes::from("a"), Bytes::from("b")], vec![Bytes::from("a")]],
        "the batch, then the primary alone"
    );
    assert_eq!(outcome.keys_to_commit, vec![Key::from("b"), Key::from("x")]);
}

/// A `CheckNotExists` key leaves no lock (client-go `stripNoNeedCommitKeys`,
/// `asyncSecondaries`): it is prewritten, but neither committed nor named
/// as an async commit's secondary (a resolver checking it would find no
/// lock and roll the transaction back).
#[test]
fn check_not_exists_keys_are_neither_committed_nor_secondaries() {
    let check =
        |k: &str| Mutation { op: kvrpcpb::Op::CheckNotExists, value: Bytes::new(), ..put(k) };
    let mutations = || vec![put("a"), check("b"), put("c"), check("x")];
    let new = |opts| {
        Committer::new(
            view(),
            ts_at(500),
            Key::from("a"),
            mutations(),
            Duration::from_millis(10),
            opts,
        )
    };
    let keys = |ks: &[&str]| ks.iter().map(|k| Bytes::from(k.to_string())).collect::<Vec<_>>();

    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("prewrite", prewrite_ok(0, 0));
    c.fault("kv_commit", commit_ok());
    let (_, result) = drive(new(CommitOptions::default()), &mut c);
    assert!(result.expect("committed").keys_to_commit.is_empty());
    let prewritten = mutations_prewritten(&c);
    assert_eq!(prewritten, 4, "every key is prewritten");
    let commits = commits_received(&c);
    assert_eq!(commits, vec![keys(&["a", "c"])]);

    let mut c = FakeCluster::new(&["m"]);
    c.fault("prewrite", prewrite_ok(ts(1000) + 3, 0));
    c.fault("prewrite", prewrite_ok(ts(1000) + 3, 0));
    let (_, result) =
        drive(new(CommitOptions { async_commit: true, ..Default::default() }), &mut c);
    let outcome = result.expect("committed");
    assert_eq!(outcome.mode, CommitMode::AsyncCommit);
    assert_eq!(outcome.keys_to_commit, vec![Key::from("a"), Key::from("c")]);
    let secondaries: Vec<_> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Prewrite(p) if !p.secondaries.is_empty() => Some(p.secondaries.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(secondaries, vec![keys(&["c"])]);
}
