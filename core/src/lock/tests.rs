//! Scripted-event tests of the lock resolver: each transaction fate and
//! each recovery path, with the primary's answers scripted.

use std::fmt::Write;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use super::*;
use crate::config::Config;
use crate::pd::Timestamp;
use crate::testing::{FakeCluster, Fault, drive, view, view_with};

/// A start ts at `physical_ms` (the fake PD's clock reads 1000 ms).
/// The version of a timestamp at `physical_ms`, as the wire carries it.
fn ts(physical_ms: i64) -> u64 {
    ts_at(physical_ms).version()
}

/// The timestamp at `physical_ms`.
fn ts_at(physical_ms: i64) -> Timestamp {
    Timestamp::compose(physical_ms, 0)
}

fn lock(key: &str, txn_ms: i64, ttl: u64) -> Lock {
    Lock {
        key: Key::from(key.to_string()),
        primary: Key::from("p"),
        txn_id: ts_at(txn_ms),
        ttl,
        txn_size: 1,
        lock_type: kvrpcpb::Op::Put,
        use_async_commit: false,
        for_update_ts: Timestamp::ZERO,
        min_commit_ts: Timestamp::ZERO,
        is_txn_file: false,
    }
}

fn status(ttl: u64, commit: u64, action: kvrpcpb::Action) -> Fault {
    Fault::Respond(Box::new(KvResponse::CheckTxnStatus(Box::new(
        kvrpcpb::CheckTxnStatusResponse {
            lock_ttl: ttl,
            commit_version: commit,
            action: action as i32,
            ..Default::default()
        },
    ))))
}

fn ok(resp: KvResponse) -> Fault {
    Fault::Respond(Box::new(resp))
}

fn run(c: &mut FakeCluster, locks: Vec<Lock>, for_read: bool) -> (String, ResolveOutcome) {
    let v = view();
    let opts =
        ResolveOptions { caller_start_ts: ts_at(950), for_read, lite: false, ..Default::default() };
    let bo = v.backoffer(Duration::from_secs(40));
    let (log, result) = drive(ResolveLocks::new(v, locks, opts, bo), c);
    (log, result.expect("resolved"))
}

#[test]
fn every_transaction_fate() {
    let mut out = String::new();
    let mut case = |name: &str, c: &mut FakeCluster, locks: Vec<Lock>, for_read: bool| {
        let (log, outcome) = run(c, locks, for_read);
        let _ = writeln!(out, "== {name}\n{log}=> {outcome:?}");
        outcome
    };

    // Committed before the reader: cleaned up, readable through the lock.
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", status(0, ts(900) + 1, kvrpcpb::Action::NoAction));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    let o = case("committed before the reader", &mut c, vec![lock("k", 800, 3000)], true);
    assert_eq!(o.access_locks, vec![ts_at(800)]);
    assert!(o.ignore_locks.is_empty() && o.ms_before_expired == 0);

    // Committed after the reader: skipped.
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", status(0, ts(990), kvrpcpb::Action::NoAction));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    let o = case("committed after the reader", &mut c, vec![lock("k", 800, 3000)], true);
    assert_eq!(o.ignore_locks, vec![ts_at(800)]);

    // Rolled back (the TTL expired): skipped.
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", status(0, 0, kvrpcpb::Action::TtlExpireRollback));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    let o = case("rolled back", &mut c, vec![lock("k", 100, 500)], true);
    assert_eq!(o.ignore_locks, vec![ts_at(100)]);

    // Alive, writer: wait until it expires (started at 900 ms with 3 s TTL,
    // PD says it is 1000 ms now: 2900 ms left).
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", status(3000, 0, kvrpcpb::Action::NoAction));
    let o = case("alive, for write", &mut c, vec![lock("k", 900, 3000)], false);
    assert_eq!(o.ms_before_expired, 2900);

    // Alive but its min_commit_ts was pushed past the reader: skipped.
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", status(3000, 0, kvrpcpb::Action::MinCommitTsPushed));
    let o = case("alive, pushed past the reader", &mut c, vec![lock("k", 900, 3000)], true);
    assert_eq!(o.ignore_locks, vec![ts_at(900)]);
    assert_eq!(o.ms_before_expired, 0);

    // The primary has no trace and the lock expired: ask again with
    // rollback_if_not_exist, which rolls the transaction back.
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "check_txn_status",
        ok(KvResponse::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
            error: Some(kvrpcpb::KeyError {
                txn_not_found: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        }))),
    );
    c.fault("check_txn_status", status(0, 0, kvrpcpb::Action::LockNotExistRollback));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    let o = case("txn not found, lock expired", &mut c, vec![lock("k", 100, 500)], true);
    assert_eq!(o.ignore_locks, vec![ts_at(100)]);

    // A large transaction is resolved region-wide, once per region.
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", status(0, 0, kvrpcpb::Action::TtlExpireRollback));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    let mut big = vec![lock("a", 100, 500), lock("b", 100, 500)];
    for l in &mut big {
        l.txn_size = 1000;
    }
    let o = case("large transaction, two locks in one region", &mut c, big, true);
    assert_eq!(o.ignore_locks, vec![ts_at(100)]);

    // A pessimistic lock of a rolled-back transaction: pessimistic rollback.
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", status(0, 0, kvrpcpb::Action::TtlExpirePessimisticRollback));
    c.fault("pessimistic_rollback", ok(KvResponse::PessimisticRollback(Default::default())));
    let mut pl = lock("k", 100, 500);
    pl.lock_type = kvrpcpb::Op::PessimisticLock;
    let o = case("pessimistic lock", &mut c, vec![pl], true);
    assert_eq!(o.ignore_locks, vec![ts_at(100)]);

    insta::assert_snapshot!(out);
}

/// An async-commit transaction whose primary lock expired: the secondaries
/// decide. All still locked → committed at the largest min_commit_ts, and
/// every key is resolved with it.
#[test]
fn expired_async_commit_is_recovered_from_its_secondaries() {
    let mut c = FakeCluster::new(&["m"]);
    let primary_lock = kvrpcpb::LockInfo {
        primary_lock: "p".into(),
        key: "p".into(),
        lock_version: ts(100),
        lock_ttl: 500,
        use_async_commit: true,
        min_commit_ts: ts(100) + 5,
        secondaries: vec!["a".into(), "z".into()],
        ..Default::default()
    };
    c.fault(
        "check_txn_status",
        ok(KvResponse::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
            lock_ttl: 500,
            lock_info: Some(primary_lock.clone()),
            ..Default::default()
        }))),
    );
    let secondary = |key: &str, min: u64| kvrpcpb::LockInfo {
        key: key.to_string().into(),
        use_async_commit: true,
        min_commit_ts: min,
        ..primary_lock.clone()
    };
    // Two regions: [a, p) and [z] split at "m" — "a" and "p" in the first.
    c.fault(
        "check_secondary_locks",
        ok(KvResponse::CheckSecondaryLocks(Box::new(kvrpcpb::CheckSecondaryLocksResponse {
            locks: vec![secondary("a", ts(100) + 7), secondary("p", ts(100) + 5)],
            ..Default::default()
        }))),
    );
    c.fault(
        "check_secondary_locks",
        ok(KvResponse::CheckSecondaryLocks(Box::new(kvrpcpb::CheckSecondaryLocksResponse {
            locks: vec![secondary("z", ts(100) + 9)],
            ..Default::default()
        }))),
    );
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    let mut l = lock("a", 100, 500);
    l.use_async_commit = true;
    let (log, outcome) = run(&mut c, vec![l], true);
    // Committed at the largest min_commit_ts (100 ms + 9), before the
    // reader (950 ms): readable through the locks.
    assert_eq!(outcome.access_locks, vec![ts_at(100)]);
    assert!(outcome.ignore_locks.is_empty());
    insta::assert_snapshot!(log);
}

#[test]
fn determined_outcomes_are_cached_and_alive_ones_are_not() {
    let cache = TxnStatusCache::default();
    cache.insert(Timestamp::from_version(1), &TxnStatus { ttl: 10, ..Default::default() });
    assert_eq!(cache.get(Timestamp::from_version(1)), None);
    cache.insert(
        Timestamp::from_version(2),
        &TxnStatus { commit_ts: Timestamp::from_version(5), ..Default::default() },
    );
    assert!(cache.get(Timestamp::from_version(2)).is_some_and(|s| s.is_committed()));
    for id in 10..10 + TXN_STATUS_CACHE_SIZE as u64 {
        cache.insert(Timestamp::from_version(id), &TxnStatus::default());
    }
    assert_eq!(cache.get(Timestamp::from_version(2)), None, "oldest evicted first");
    assert!(cache.get(Timestamp::from_version(10 + TXN_STATUS_CACHE_SIZE as u64 - 1)).is_some());
}

#[test]
fn shared_lock_wrappers_expand_to_their_inner_locks() {
    let inner = |k: &str, v: u64| kvrpcpb::LockInfo {
        key: k.to_string().into(),
        primary_lock: "p".into(),
        lock_version: v,
        ..Default::default()
    };
    let wrapper = kvrpcpb::LockInfo {
        key: "k".into(),
        lock_type: kvrpcpb::Op::SharedLock as i32,
        shared_lock_infos: vec![inner("k", 1), inner("k", 2)],
        ..Default::default()
    };
    let locks = Lock::from_info(&wrapper);
    assert_eq!(locks.iter().map(|l| l.txn_id.version()).collect::<Vec<_>>(), vec![1, 2]);
}

/// TTL checks use the newest timestamp the client has seen while it is
/// younger than `low_resolution_ts_max_age` (client-go's low-resolution
/// timestamp), and fetch (and record) a fresh one from PD once it is older.
#[test]
fn ttl_checks_use_the_recent_low_resolution_timestamp() {
    let resolve_with = |max_age: Duration| {
        let mut c = FakeCluster::new(&[]);
        c.fault("check_txn_status", status(0, 0, kvrpcpb::Action::TtlExpireRollback));
        c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
        let v = view_with(Config::default().with_low_resolution_ts_max_age(max_age));
        c.set_oracle_view(v.clone());
        // Seen at the instant the resolution starts.
        v.last_ts.observe(ts_at(990), Instant::ZERO);
        let opts =
            ResolveOptions { caller_start_ts: ts_at(950), for_read: true, ..Default::default() };
        let bo = v.backoffer(Duration::from_secs(40));
        let op = ResolveLocks::new(v.clone(), vec![lock("k", 800, 10)], opts, bo);
        let (log, result) = drive(op, &mut c);
        result.expect("resolved");
        let current_ts: Vec<u64> = c
            .received
            .iter()
            .filter_map(|r| match r {
                KvRequest::CheckTxnStatus(r) => Some(r.current_ts),
                _ => None,
            })
            .collect();
        let newest = v.last_ts.fresh(Instant::ZERO, Duration::from_secs(1));
        (log.contains(" timestamp -> oracle"), current_ts, newest)
    };
    // Recent enough: used as is, PD is not asked.
    let (asked_pd, current_ts, newest) = resolve_with(Duration::from_secs(2));
    assert!(!asked_pd);
    assert_eq!(current_ts, vec![ts(990)]);
    assert_eq!(newest, Some(ts_at(990)));

    // Too old (any age is, with a zero bound): PD is asked, and its fresh
    // timestamp (the fake PD's clock reads 1000 ms) becomes the newest.
    let (asked_pd, current_ts, newest) = resolve_with(Duration::ZERO);
    assert!(asked_pd);
    assert_eq!(current_ts.len(), 1);
    assert!(current_ts[0] > ts(1000), "{current_ts:?}");
    assert_eq!(newest.map(Timestamp::version), Some(current_ts[0]));
}

/// Several locks of one small transaction are cleaned with one `ResolveLock`
/// per region carrying all their keys (client-go `batchLiteResolveLocks`),
/// after a single `CheckTxnStatus`; another transaction's lock is resolved
/// on its own.
#[test]
fn lite_resolves_of_one_transaction_are_batched_per_region() {
    let mut c = FakeCluster::new(&["m"]);
    c.fault("check_txn_status", status(0, ts(900), kvrpcpb::Action::NoAction));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    c.fault("check_txn_status", status(0, 0, kvrpcpb::Action::TtlExpireRollback));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    let mut other = lock("c", 700, 10);
    other.primary = Key::from("q");
    let locks = vec![lock("a", 800, 10), other, lock("b", 800, 10), lock("x", 800, 10)];
    let (_, outcome) = run(&mut c, locks, true);
    assert_eq!(outcome.access_locks, vec![ts_at(800)]);
    assert_eq!(outcome.ignore_locks, vec![ts_at(700)]);
    let mut resolves: Vec<(u64, Vec<Bytes>)> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::ResolveLock(r) => Some((r.start_version, r.keys.clone())),
            _ => None,
        })
        .collect();
    resolves.sort();
    assert_eq!(
        resolves,
        vec![
            (ts(700), vec![Bytes::from("c")]),
            (ts(800), vec![Bytes::from("a"), Bytes::from("b")]),
            (ts(800), vec![Bytes::from("x")]),
        ]
    );
    let checks = c.received.iter().filter(|r| matches!(r, KvRequest::CheckTxnStatus(_))).count();
    assert_eq!(checks, 2, "one status check per transaction");
}

/// A lock left by a file-based transaction carries `is_txn_file` into the
/// status check and the cleanup, as client-go forwards it.
#[test]
fn txn_file_locks_forward_the_flag() {
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", status(0, ts(900), kvrpcpb::Action::NoAction));
    c.fault("resolve_lock", ok(KvResponse::ResolveLock(Default::default())));
    let mut l = lock("k", 800, 10);
    l.is_txn_file = true;
    run(&mut c, vec![l], true);
    let flags: Vec<(&str, bool)> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::CheckTxnStatus(r) => Some(("check", r.is_txn_file)),
            KvRequest::ResolveLock(r) => Some(("resolve", r.is_txn_file)),
            _ => None,
        })
        .collect();
    assert_eq!(flags, [("check", true), ("resolve", true)]);
}

/// Answers TiKV never gives make the resolver fail, not guess: a
/// `TxnNotFound` to a status check that asked to roll back a missing
/// transaction (asking again would loop for as long as the server keeps
/// saying it), secondary locks of another transaction, every async-commit
/// lock present but none with a `min_commit_ts` (rolling back could undo a
/// commit), a commit ts below a lock's `min_commit_ts`. (Found by the
/// `lock_resolver` property.)
#[test]
fn impossible_answers_fail_the_resolution() {
    let resolve = |c: &mut FakeCluster, l: Lock| {
        let v = view();
        let opts = ResolveOptions {
            caller_start_ts: ts_at(950),
            for_read: true,
            lite: false,
            ..Default::default()
        };
        let bo = v.backoffer(Duration::from_secs(40));
        drive(ResolveLocks::new(v, vec![l], opts, bo), c)
    };
    let not_found = || {
        ok(KvResponse::from(kvrpcpb::CheckTxnStatusResponse {
            error: Some(kvrpcpb::KeyError {
                txn_not_found: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        }))
    };
    let mut out = String::new();

    // An expired lock's primary is missing, and stays "not found" even when
    // told to roll it back.
    let mut c = FakeCluster::new(&[]);
    c.fault("check_txn_status", not_found());
    c.fault("check_txn_status", not_found());
    let (log, result) = resolve(&mut c, lock("k", 100, 500));
    assert!(matches!(&result, Err(Error::MalformedResponse(_))), "{result:?}");
    let _ = writeln!(out, "== txn not found despite rollback_if_not_exist\n{log}");

    // Async commit recovery with malformed secondaries.
    let primary_lock = kvrpcpb::LockInfo {
        primary_lock: "p".into(),
        key: "p".into(),
        lock_version: ts(100),
        lock_ttl: 500,
        use_async_commit: true,
        secondaries: vec!["a".into()],
        ..Default::default()
    };
    let recover = |c: &mut FakeCluster, answer: kvrpcpb::CheckSecondaryLocksResponse| {
        c.fault(
            "check_txn_status",
            ok(KvResponse::from(kvrpcpb::CheckTxnStatusResponse {
                lock_ttl: 500,
                lock_info: Some(primary_lock.clone()),
                ..Default::default()
            })),
        );
        c.fault("check_secondary_locks", ok(KvResponse::from(answer)));
        let mut l = lock("a", 100, 500);
        l.use_async_commit = true;
        resolve(c, l)
    };
    let held = |key: &str, version: u64, min: u64| kvrpcpb::LockInfo {
        key: key.to_string().into(),
        lock_version: version,
        min_commit_ts: min,
        ..primary_lock.clone()
    };
    let cases = [
        ("a lock of another txn", vec![held("a", ts(200), 7), held("p", ts(100), 7)], 0),
        ("no min_commit_ts anywhere", vec![held("a", ts(100), 0), held("p", ts(100), 0)], 0),
        ("committed below a min_commit_ts", vec![held("a", ts(100), ts(100) + 9)], ts(100) + 5),
    ];
    for (name, locks, commit_ts) in cases {
        let mut c = FakeCluster::new(&[]);
        let answer =
            kvrpcpb::CheckSecondaryLocksResponse { locks, commit_ts, ..Default::default() };
        let (log, result) = recover(&mut c, answer);
        assert!(matches!(&result, Err(Error::MalformedResponse(_))), "{name}: {result:?}");
        let resolved = c.received.iter().filter(|r| matches!(r, KvRequest::ResolveLock(_))).count();
        assert_eq!(resolved, 0, "{name}: nothing is resolved");
        let _ = writeln!(out, "== {name}\n{log}");
    }
    insta::assert_snapshot!(out);
}

/// `ScanLock` may answer a shared-lock wrapper whose holders were all
/// filtered out: it stands for no lock at all.
#[test]
fn a_shared_lock_wrapper_without_holders_is_no_lock() {
    let wrapper = kvrpcpb::LockInfo {
        key: "k".into(),
        lock_type: kvrpcpb::Op::SharedLock as i32,
        ..Default::default()
    };
    assert!(Lock::from_info(&wrapper).is_empty());
}
