//! Scripted-event tests of the committer: each protocol path and each
//! error path, with TiKV's answers scripted.

use std::fmt::Write;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use super::*;
use crate::testing::{FakeCluster, Fault, drive, view};

fn ts(physical_ms: i64) -> u64 {
    Timestamp { physical: physical_ms, logical: 0 }.version()
}

fn put(k: &str) -> Mutation {
    Mutation { op: kvrpcpb::Op::Put, key: Key::from(k.to_string()), value: Bytes::from("v") }
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

fn committer(keys: &[&str], opts: CommitOptions) -> Committer {
    let v = view();
    Committer::new(
        v,
        ts(500),
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
    assert!(outcome.commit_ts > ts(500));
    assert_eq!(outcome.keys_to_commit, vec![Key::from("b"), Key::from("x")]);
    let commits: Vec<_> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Commit(cm) => Some(cm.keys.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(commits, vec![vec![Bytes::from("a")]], "only the primary, synchronously");
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
    assert_eq!(outcome.commit_ts, ts(1000) + 9);
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
        ts(500),
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
    let committer =
        Committer::new(v, ts(500), Key::from("a"), vec![put("a"), put("b")], Duration::ZERO, opts);
    let (_, result) = drive(committer, &mut c);
    let outcome = result.expect("committed");
    assert_eq!((outcome.mode, outcome.commit_ts), (CommitMode::OnePhase, ts(1000) + 3));
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
        matches!(result, Err(Error::WriteConflict { conflict_ts, .. }) if conflict_ts == ts(600))
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
        matches!(result, Err(Error::WriteConflict { conflict_ts, .. }) if conflict_ts == ts(900))
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
    let (_, result) = drive(committer(&["a", "b"], CommitOptions::default()), &mut c);
    result.expect("committed");
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
        assert_eq!(ctx.request_source, "external_Update", "{}", req.name());
        let group = ctx.resource_control_context.as_ref().map(|r| r.resource_group_name.as_str());
        assert_eq!(group, Some("rg1"), "{}", req.name());
        assert_eq!(&ctx.resource_group_tag[..], b"tag", "{}", req.name());
    }
}
