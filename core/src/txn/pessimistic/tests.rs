//! Scripted-event tests of pessimistic locking: every answer TiKV can give
//! a lock request, scripted.

use std::fmt::Write;

use bytes::Bytes;
use tikv_proto::{deadlock, kvrpcpb};

use super::*;
use crate::rpc::{Request, Target};
use crate::testing::{FakeCluster, Fault, drive, view};

/// The timestamp at `physical_ms` (the fake PD's clock reads 1000 ms).
fn ts_at(physical_ms: i64) -> Timestamp {
    Timestamp::compose(physical_ms, 0)
}

fn keys(ks: &[&str]) -> Vec<Key> {
    ks.iter().map(|k| Key::from(k.to_string())).collect()
}

fn request(ks: &[&str], primary: Option<&str>, options: LockOptions) -> AcquireRequest {
    AcquireRequest {
        start_ts: ts_at(500),
        for_update_ts: ts_at(900),
        primary: primary.map(|p| Key::from(p.to_string())),
        keys: keys(ks),
        presumed_absent: Vec::new(),
        txn_elapsed: Duration::from_millis(40),
        options,
        force_lock: false,
        tags: RequestTags::default(),
    }
}

fn acquire(ks: &[&str], primary: Option<&str>, options: LockOptions) -> AcquirePessimisticLocks {
    AcquirePessimisticLocks::new(view(), request(ks, primary, options))
}

fn respond(resp: KvResponse) -> Fault {
    Fault::Respond(Box::new(resp))
}

fn lock_ok() -> Fault {
    respond(KvResponse::PessimisticLock(Default::default()))
}

fn lock_values(values: &[&str], not_founds: &[bool]) -> Fault {
    respond(KvResponse::PessimisticLock(Box::new(kvrpcpb::PessimisticLockResponse {
        values: values.iter().map(|v| Bytes::from(v.to_string())).collect(),
        not_founds: not_founds.to_vec(),
        ..Default::default()
    })))
}

fn lock_error(e: kvrpcpb::KeyError) -> Fault {
    respond(KvResponse::PessimisticLock(Box::new(kvrpcpb::PessimisticLockResponse {
        errors: vec![e],
        ..Default::default()
    })))
}

/// `KeyIsLocked` on `key` by txn 300 ms (primary "q"), last updated
/// `updated_ms` ago (0: unknown).
fn locked(key: &str, updated_ms: u64) -> Fault {
    lock_error(kvrpcpb::KeyError {
        locked: Some(kvrpcpb::LockInfo {
            key: Bytes::from(key.to_string()),
            primary_lock: Bytes::from("q"),
            lock_version: ts_at(300).version(),
            lock_ttl: 3_000,
            lock_type: kvrpcpb::Op::PessimisticLock as i32,
            lock_for_update_ts: ts_at(310).version(),
            duration_to_last_update_ms: updated_ms,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `CheckTxnStatus`: alive (`ttl` > 0) or rolled back (`ttl` 0).
fn status(ttl: u64) -> Fault {
    respond(KvResponse::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
        lock_ttl: ttl,
        action: if ttl == 0 {
            kvrpcpb::Action::TtlExpirePessimisticRollback as i32
        } else {
            kvrpcpb::Action::NoAction as i32
        },
        ..Default::default()
    })))
}

fn lock_requests(c: &FakeCluster) -> Vec<kvrpcpb::PessimisticLockRequest> {
    c.received
        .iter()
        .filter_map(|r| match r {
            KvRequest::PessimisticLock(p) => Some((**p).clone()),
            _ => None,
        })
        .collect()
}

fn mutation_keys(r: &kvrpcpb::PessimisticLockRequest) -> Vec<Bytes> {
    r.mutations.iter().map(|m| m.key.clone()).collect()
}

fn names(c: &FakeCluster) -> Vec<&'static str> {
    c.received.iter().map(|r| r.name()).collect()
}

/// The keys and `for_update_ts` of the rollback a failed call hands back,
/// driven against `c`.
fn run_follow_up(
    op: &mut AcquirePessimisticLocks,
    c: &mut FakeCluster,
) -> Option<(Vec<Bytes>, u64)> {
    let follow_up = op.take_follow_up()?;
    let before = c.received.len();
    c.fault("pessimistic_rollback", respond(KvResponse::PessimisticRollback(Default::default())));
    let (_, result) = drive(follow_up, c);
    result.expect("rolled back");
    let mut rolled = Vec::new();
    let mut for_update_ts = 0;
    for r in &c.received[before..] {
        if let KvRequest::PessimisticRollback(r) = r {
            rolled.extend(r.keys.iter().cloned());
            for_update_ts = r.for_update_ts;
        }
    }
    Some((rolled, for_update_ts))
}

/// The first lock call of a transaction chooses its smallest key as the
/// primary and locks it alone, then the other keys region by region; the
/// requests carry client-go's fields.
#[test]
fn the_primary_is_locked_first_then_the_rest_by_region() {
    let mut c = FakeCluster::new(&["m"]);
    for _ in 0..3 {
        c.fault("pessimistic_lock", lock_ok());
    }
    let op = acquire(&["x", "b", "a", "b"], None, LockOptions::new());
    let (log, result) = drive(op, &mut c);
    let outcome = result.expect("locked");
    assert_eq!(outcome.assigned_primary, Some(Key::from("a")));
    assert_eq!(outcome.locked, keys(&["a", "b", "x"]));
    assert!(outcome.values.is_empty(), "nothing was asked");
    let reqs = lock_requests(&c);
    assert_eq!(reqs.len(), 3);
    assert_eq!(mutation_keys(&reqs[0]), vec![Bytes::from("a")], "the primary alone, first");
    let mut rest: Vec<_> = reqs[1..].iter().flat_map(mutation_keys).collect();
    rest.sort();
    assert_eq!(rest, vec![Bytes::from("b"), Bytes::from("x")]);
    for r in &reqs {
        assert_eq!(r.primary_lock, Bytes::from("a"));
        assert_eq!(r.start_version, ts_at(500).version());
        assert_eq!(r.for_update_ts, ts_at(900).version());
        assert_eq!(r.min_commit_ts, ts_at(900).version() + 1, "for_update_ts + 1");
        assert_eq!(r.wait_timeout, LOCK_ALWAYS_WAIT);
        assert!(!r.is_first_lock, "several keys");
        assert!(r.mutations.iter().all(|m| m.op == kvrpcpb::Op::PessimisticLock as i32));
    }
    // ManagedLockTTL + the transaction's age (40 ms at the call's start,
    // then 1 ms more per RPC).
    assert_eq!(reqs[0].lock_ttl, 20_040);
    assert!(reqs[1].lock_ttl > reqs[0].lock_ttl, "the TTL grows with the age");
    insta::assert_snapshot!(log);
}

/// A single key as the transaction's first lock is its primary and marks
/// `is_first_lock`; a call under an existing primary locks its keys in
/// one round; values and existence come back per key, sorted.
#[test]
fn values_and_existence_come_back_per_key() {
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", lock_ok());
    let (_, result) = drive(acquire(&["k"], None, LockOptions::new()), &mut c);
    assert_eq!(result.expect("locked").assigned_primary, Some(Key::from("k")));
    assert!(lock_requests(&c)[0].is_first_lock);

    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", lock_values(&["1", ""], &[false, true]));
    let op = acquire(&["b", "a"], Some("p"), LockOptions::new().return_values());
    let (_, result) = drive(op, &mut c);
    let outcome = result.expect("locked");
    assert_eq!(outcome.assigned_primary, None, "the transaction had a primary");
    assert_eq!(
        outcome.values,
        vec![
            (
                Key::from("a"),
                ReturnedValue { value: Bytes::from("1"), exists: true, ..Default::default() }
            ),
            (
                Key::from("b"),
                ReturnedValue { value: Bytes::new(), exists: false, ..Default::default() }
            ),
        ]
    );
    let reqs = lock_requests(&c);
    assert_eq!(reqs.len(), 1, "no key of the call is the primary: one round");
    assert!(reqs[0].return_values && !reqs[0].is_first_lock);
    assert_eq!(reqs[0].primary_lock, Bytes::from("p"));

    // Existence only; an old TiKV that ignores it answers nothing.
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", lock_values(&[], &[true]));
    let (_, result) =
        drive(acquire(&["a"], Some("p"), LockOptions::new().check_existence()), &mut c);
    assert_eq!(
        result.expect("locked").values,
        vec![(
            Key::from("a"),
            ReturnedValue { value: Bytes::new(), exists: false, ..Default::default() }
        )]
    );
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", lock_ok());
    let (_, result) =
        drive(acquire(&["a"], Some("p"), LockOptions::new().check_existence()), &mut c);
    assert!(result.expect("locked").values.is_empty(), "existence unknown");
}

/// Lock-only-if-exists needs returned values and, over several keys, a
/// primary locked before; a key found absent is not locked, and a primary
/// it would have been is not kept.
#[test]
fn lock_only_if_exists_locks_the_existing_keys() {
    let mut c = FakeCluster::new(&[]);
    let (_, result) =
        drive(acquire(&["a"], None, LockOptions::new().lock_only_if_exists()), &mut c);
    assert!(matches!(result, Err(Error::InvalidArgument(_))), "{result:?}");
    let opts = LockOptions::new().lock_only_if_exists().return_values();
    let (_, result) = drive(acquire(&["a", "b"], None, opts.clone()), &mut c);
    assert!(matches!(result, Err(Error::InvalidArgument(_))), "{result:?}");
    assert!(c.received.is_empty(), "refused before sending");

    c.fault("pessimistic_lock", lock_values(&[""], &[true]));
    let (_, result) = drive(acquire(&["a"], None, opts.clone()), &mut c);
    let outcome = result.expect("answered");
    assert_eq!((outcome.assigned_primary, outcome.locked), (None, vec![]));
    assert!(lock_requests(&c)[0].lock_only_if_exists);

    c.fault("pessimistic_lock", lock_values(&["1", ""], &[false, true]));
    let (_, result) = drive(acquire(&["a", "b"], Some("p"), opts), &mut c);
    assert_eq!(result.expect("answered").locked, keys(&["a"]));
}

/// A lock updated in the last 300 ms is waited on again at once; an older
/// one goes to the resolver, and the batch is locked again, with no sleep,
/// once it is gone.
#[test]
fn recent_locks_are_waited_on_and_old_ones_resolved() {
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", locked("a", 120));
    c.fault("pessimistic_lock", locked("a", 0));
    c.fault("check_txn_status", status(0));
    c.fault("pessimistic_rollback", respond(KvResponse::PessimisticRollback(Default::default())));
    c.fault("pessimistic_lock", lock_ok());
    let (log, result) = drive(acquire(&["a", "b"], Some("p"), LockOptions::new()), &mut c);
    assert_eq!(result.expect("locked").locked, keys(&["a", "b"]));
    assert_eq!(
        names(&c),
        vec![
            "kv_pessimistic_lock",
            "kv_pessimistic_lock",
            "kv_check_txn_status",
            "kv_pessimistic_rollback",
            "kv_pessimistic_lock",
        ]
    );
    let reqs = lock_requests(&c);
    assert!(reqs.iter().all(|r| mutation_keys(r).len() == 2), "the whole batch each time");
    assert!(!log.contains("timer"), "no sleep:\n{log}");
    insta::assert_snapshot!(log);
}

/// A lock still alive after resolving fails a no-wait call at once and a
/// call past its wait limit with a timeout; a recent lock fails a no-wait
/// call without resolving. The keys are rolled back at the call's
/// `for_update_ts`.
#[test]
fn a_live_lock_fails_no_wait_and_timed_calls() {
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", locked("a", 0));
    c.fault("check_txn_status", status(3_000));
    let mut op = acquire(&["a"], Some("p"), LockOptions::new().no_wait());
    let (_, result) = drive(&mut op, &mut c);
    assert_eq!(result, Err(Error::LockAcquireFailAndNoWaitSet));
    assert_eq!(lock_requests(&c)[0].wait_timeout, LOCK_NO_WAIT);
    let rollback = run_follow_up(&mut op, &mut c);
    assert_eq!(rollback, Some((vec![Bytes::from("a")], ts_at(900).version())));

    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", locked("a", 50));
    let (_, result) = drive(acquire(&["a"], Some("p"), LockOptions::new().no_wait()), &mut c);
    assert_eq!(result, Err(Error::LockAcquireFailAndNoWaitSet));
    assert_eq!(names(&c), vec!["kv_pessimistic_lock"], "a recent lock is not resolved");

    // 5 ms allowed: the first round is sent with 5, the second with what
    // is left, then the limit is reached.
    let mut c = FakeCluster::new(&[]);
    for _ in 0..4 {
        c.fault("pessimistic_lock", locked("a", 0));
        c.fault("check_txn_status", status(3_000));
    }
    let opts = LockOptions::new().wait_timeout(Duration::from_millis(5));
    let (log, result) = drive(acquire(&["a"], Some("p"), opts), &mut c);
    assert_eq!(result, Err(Error::LockWaitTimeout), "{log}");
    let waits: Vec<i64> = lock_requests(&c).iter().map(|r| r.wait_timeout).collect();
    assert_eq!(waits[0], 5);
    assert!(waits.windows(2).all(|w| w[1] < w[0]), "the time left shrinks: {waits:?}");
}

fn deadlock_error(hash: u64) -> kvrpcpb::KeyError {
    kvrpcpb::KeyError {
        deadlock: Some(kvrpcpb::Deadlock {
            lock_ts: ts_at(300).version(),
            lock_key: Bytes::from("b"),
            deadlock_key_hash: hash,
            wait_chain: vec![deadlock::WaitForEntry {
                txn: ts_at(300).version(),
                wait_for_txn: ts_at(500).version(),
                key_hash: hash,
                key: Bytes::from("b"),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A deadlock is a typed error with its wait chain, retryable when the
/// cycle closed on one of the call's keys; the call's keys are rolled back.
#[test]
fn a_deadlock_is_typed_and_rolls_the_call_back() {
    let hash_b = fingerprint64(b"b").expect("short key");
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", lock_error(deadlock_error(hash_b)));
    let mut op = acquire(&["a", "b"], Some("p"), LockOptions::new());
    let (_, result) = drive(&mut op, &mut c);
    match result {
        Err(Error::Deadlock { lock_ts, lock_key, deadlock_key_hash, wait_chain, retryable }) => {
            assert_eq!((lock_ts, lock_key), (ts_at(300), Key::from("b")));
            assert_eq!(deadlock_key_hash, hash_b);
            assert_eq!(wait_chain.len(), 1);
            assert!(retryable, "the cycle closed on a key of this call");
        }
        other => panic!("expected a deadlock, got {other:?}"),
    }
    let rollback = run_follow_up(&mut op, &mut c);
    assert_eq!(rollback, Some((vec![Bytes::from("a"), Bytes::from("b")], ts_at(900).version())));

    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", lock_error(deadlock_error(fingerprint64(b"zz").unwrap_or(0))));
    let (_, result) = drive(acquire(&["a", "b"], Some("p"), LockOptions::new()), &mut c);
    assert!(matches!(result, Err(Error::Deadlock { retryable: false, .. })), "{result:?}");
}

/// A write conflict reports the newer write's commit ts; a single key it
/// refused was not locked and needs no rollback, several keys do. An
/// existing key refused by a not-exist assertion, a malformed answer and
/// any other key error end the call too.
#[test]
fn write_conflicts_and_other_errors_end_the_call() {
    let conflict = || {
        lock_error(kvrpcpb::KeyError {
            conflict: Some(kvrpcpb::WriteConflict {
                start_ts: ts_at(500).version(),
                conflict_ts: ts_at(700).version(),
                key: Bytes::from("a"),
                primary: Bytes::from("q"),
                conflict_commit_ts: ts_at(950).version(),
                reason: kvrpcpb::write_conflict::Reason::PessimisticRetry as i32,
            }),
            ..Default::default()
        })
    };
    let mut out = String::new();
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", conflict());
    let mut op = acquire(&["a"], Some("p"), LockOptions::new());
    let (_, result) = drive(&mut op, &mut c);
    match &result {
        Err(Error::WriteConflict { conflict_commit_ts, conflict_ts, .. }) => {
            assert_eq!((*conflict_ts, *conflict_commit_ts), (ts_at(700), ts_at(950)));
        }
        other => panic!("expected a write conflict, got {other:?}"),
    }
    assert_eq!(run_follow_up(&mut op, &mut c), None, "one key, not locked");

    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", conflict());
    let mut op = acquire(&["a", "b"], Some("p"), LockOptions::new());
    let _ = drive(&mut op, &mut c);
    assert!(run_follow_up(&mut op, &mut c).is_some(), "several keys: rolled back");

    let cases: Vec<(&str, Fault)> = vec![
        (
            "already exists",
            lock_error(kvrpcpb::KeyError {
                already_exist: Some(kvrpcpb::AlreadyExist { key: Bytes::from("a") }),
                ..Default::default()
            }),
        ),
        (
            "per-key results in the legacy mode",
            respond(KvResponse::PessimisticLock(Box::new(kvrpcpb::PessimisticLockResponse {
                results: vec![Default::default()],
                ..Default::default()
            }))),
        ),
        ("values missing", lock_values(&[], &[])),
        ("abort", lock_error(kvrpcpb::KeyError { abort: "boom".into(), ..Default::default() })),
    ];
    for (name, fault) in cases {
        let mut c = FakeCluster::new(&[]);
        c.fault("pessimistic_lock", fault);
        let mut op = acquire(&["a"], Some("p"), LockOptions::new().return_values());
        let (_, result) = drive(&mut op, &mut c);
        let rolled_back = run_follow_up(&mut op, &mut c).is_some();
        let _ = writeln!(out, "{name}: {result:?} (rolled back: {rolled_back})");
        assert!(result.is_err(), "{name}");
    }
    insta::assert_snapshot!(out);
}

/// A region error sends the batch again to the region's new leader, with
/// the same request.
#[test]
fn region_errors_retry_the_batch() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "pessimistic_lock",
        Fault::Region(Box::new(tikv_proto::errorpb::Error {
            message: "server is busy".into(),
            server_is_busy: Some(Default::default()),
            ..Default::default()
        })),
    );
    c.fault("pessimistic_lock", lock_ok());
    let (_, result) = drive(acquire(&["a"], Some("p"), LockOptions::new()), &mut c);
    assert_eq!(result.expect("locked").locked, keys(&["a"]));
    let reqs = lock_requests(&c);
    assert_eq!(reqs.len(), 2);
    assert_eq!(mutation_keys(&reqs[0]), mutation_keys(&reqs[1]));
}

/// farmhash `Fingerprint64` on the reference values (up to 32 bytes, the
/// lengths where it and `Hash64` agree).
#[test]
fn fingerprint64_matches_farmhash() {
    let golden: &[(u64, &str)] = &[
        (0xb345_4265_b6df_75e3, "a"),
        (0xaa8d_6e52_42ad_a51e, "ab"),
        (0x24a5_b3a0_74e7_f369, "abc"),
        (0x1a55_02de_4a1f_8101, "abcd"),
        (0xc22f_4663_e54e_04d4, "abcde"),
        (0xc329_379e_6a03_c2cd, "abcdef"),
        (0x3c40_c92b_1ccb_7355, "abcdefg"),
        (0xfee9_d229_90c8_2909, "abcdefgh"),
        (0x332c_8ed4_dae5_ba42, "abcdefghi"),
        (0x8a3a_bb6a_5f3f_b7fb, "abcdefghij"),
        (0x8eb3_808d_1ccf_c779, "Nepal premier won't resign."),
        (0x80d7_3b84_3ba5_7db8, "size:  a.out:  bad magic"),
    ];
    for (want, s) in golden {
        assert_eq!(fingerprint64(s.as_bytes()), Some(*want), "{s:?}");
    }
    assert!(fingerprint64(&[7u8; 40]).is_some());
    assert_eq!(fingerprint64(&[7u8; 65]), None, "longer keys are not hashed");
}

/// Shared locks: taken with `SharedPessimisticLock` under a primary locked
/// before, refused as a first lock; a shared lock met is resolved holder by
/// holder, each by its own last update.
#[test]
fn shared_locks_need_a_primary_and_resolve_each_holder() {
    let mut c = FakeCluster::new(&[]);
    let (_, result) = drive(acquire(&["a"], None, LockOptions::new().in_share_mode()), &mut c);
    assert!(matches!(result, Err(Error::InvalidArgument(_))), "{result:?}");
    assert!(c.received.is_empty());

    let holder = |txn_ms: i64, updated_ms: u64| kvrpcpb::LockInfo {
        key: Bytes::from("a"),
        primary_lock: Bytes::from("q"),
        lock_version: ts_at(txn_ms).version(),
        lock_ttl: 3_000,
        lock_type: kvrpcpb::Op::SharedPessimisticLock as i32,
        duration_to_last_update_ms: updated_ms,
        ..Default::default()
    };
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "pessimistic_lock",
        lock_error(kvrpcpb::KeyError {
            locked: Some(kvrpcpb::LockInfo {
                key: Bytes::from("a"),
                // The wrapper's own update time is not the holders'.
                duration_to_last_update_ms: 10,
                shared_lock_infos: vec![holder(300, 50), holder(310, 0)],
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    c.fault("check_txn_status", status(0));
    c.fault("pessimistic_rollback", respond(KvResponse::PessimisticRollback(Default::default())));
    c.fault("pessimistic_lock", lock_ok());
    let (_, result) = drive(acquire(&["a"], Some("p"), LockOptions::new().in_share_mode()), &mut c);
    assert_eq!(result.expect("locked").locked, keys(&["a"]));
    let checked: Vec<u64> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::CheckTxnStatus(s) => Some(s.lock_ts),
            _ => None,
        })
        .collect();
    assert_eq!(checked, vec![ts_at(310).version()], "only the holder not updated recently");
    let reqs = lock_requests(&c);
    assert!(
        reqs.iter()
            .flat_map(|r| &r.mutations)
            .all(|m| m.op == kvrpcpb::Op::SharedPessimisticLock as i32)
    );
}

fn force_result(
    kind: kvrpcpb::PessimisticLockKeyResultType,
    value: &str,
    conflict: u64,
) -> kvrpcpb::PessimisticLockKeyResult {
    kvrpcpb::PessimisticLockKeyResult {
        r#type: kind as i32,
        value: Bytes::from(value.to_string()),
        existence: !value.is_empty(),
        locked_with_conflict_ts: conflict,
        ..Default::default()
    }
}

fn force_answer(
    results: Vec<kvrpcpb::PessimisticLockKeyResult>,
    errors: Vec<kvrpcpb::KeyError>,
) -> Fault {
    respond(KvResponse::PessimisticLock(Box::new(kvrpcpb::PessimisticLockResponse {
        results,
        errors,
        ..Default::default()
    })))
}

fn forced(ks: &[&str], options: LockOptions) -> AcquirePessimisticLocks {
    AcquirePessimisticLocks::new(
        view(),
        AcquireRequest { force_lock: true, ..request(ks, Some("p"), options) },
    )
}

/// `WakeUpModeForceLock` (fair locking of one key): a normal result carries
/// the value asked for; a key locked over a newer write reports that
/// write's ts (always, values asked or not); a failed result on a lock is
/// resolved and retried as in the legacy mode. Several keys use the legacy
/// mode.
#[test]
fn force_lock_mode_reports_locks_taken_over_newer_writes() {
    use kvrpcpb::PessimisticLockKeyResultType::*;
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", force_answer(vec![force_result(LockResultNormal, "1", 0)], vec![]));
    let (_, result) = drive(forced(&["a"], LockOptions::new().return_values()), &mut c);
    let outcome = result.expect("locked");
    assert_eq!(outcome.values[0].1.value, Bytes::from("1"));
    assert_eq!(outcome.max_locked_with_conflict_ts, Timestamp::ZERO);
    assert_eq!(
        lock_requests(&c)[0].wake_up_mode,
        kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32
    );

    let mut c = FakeCluster::new(&[]);
    let conflict = ts_at(950).version();
    c.fault(
        "pessimistic_lock",
        force_answer(vec![force_result(LockResultLockedWithConflict, "2", conflict)], vec![]),
    );
    let (_, result) = drive(forced(&["a"], LockOptions::new()), &mut c);
    let outcome = result.expect("locked");
    assert_eq!(outcome.locked, keys(&["a"]));
    assert_eq!(outcome.max_locked_with_conflict_ts, ts_at(950));
    assert_eq!(
        outcome.values,
        vec![(
            Key::from("a"),
            ReturnedValue {
                value: Bytes::from("2"),
                exists: true,
                locked_with_conflict_ts: ts_at(950),
                already_locked: false,
            }
        )]
    );

    let mut c = FakeCluster::new(&[]);
    let failed_on_lock = |updated_ms| {
        let Fault::Respond(resp) = locked("a", updated_ms) else { unreachable!() };
        let KvResponse::PessimisticLock(r) = *resp else { unreachable!() };
        force_answer(vec![force_result(LockResultFailed, "", 0)], r.errors)
    };
    c.fault("pessimistic_lock", failed_on_lock(100));
    c.fault("pessimistic_lock", failed_on_lock(0));
    c.fault("check_txn_status", status(0));
    c.fault("pessimistic_rollback", respond(KvResponse::PessimisticRollback(Default::default())));
    c.fault("pessimistic_lock", force_answer(vec![force_result(LockResultNormal, "", 0)], vec![]));
    let (_, result) = drive(forced(&["a"], LockOptions::new()), &mut c);
    assert_eq!(result.expect("locked").locked, keys(&["a"]));
    assert_eq!(
        names(&c),
        vec![
            "kv_pessimistic_lock",
            "kv_pessimistic_lock",
            "kv_check_txn_status",
            "kv_pessimistic_rollback",
            "kv_pessimistic_lock",
        ]
    );

    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", lock_ok());
    let (_, result) = drive(forced(&["a", "b"], LockOptions::new()), &mut c);
    result.expect("locked");
    assert_eq!(
        lock_requests(&c)[0].wake_up_mode,
        kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeNormal as i32,
        "several keys: the legacy mode"
    );
}

/// Force-lock answers that break the protocol are errors, not panics
/// (client-go panics on some): no result, several results, a lock met with
/// a successful result, an unknown result type.
#[test]
fn malformed_force_lock_answers_are_errors() {
    use kvrpcpb::PessimisticLockKeyResultType::*;
    let Fault::Respond(resp) = locked("a", 0) else { unreachable!() };
    let KvResponse::PessimisticLock(r) = *resp else { unreachable!() };
    let cases = vec![
        ("no result", force_answer(vec![], vec![])),
        (
            "two results",
            force_answer(
                vec![force_result(LockResultNormal, "", 0), force_result(LockResultNormal, "", 0)],
                vec![],
            ),
        ),
        ("locked but normal", force_answer(vec![force_result(LockResultNormal, "", 0)], r.errors)),
        (
            "unknown type",
            force_answer(
                vec![kvrpcpb::PessimisticLockKeyResult { r#type: 9, ..Default::default() }],
                vec![],
            ),
        ),
    ];
    for (name, fault) in cases {
        let mut c = FakeCluster::new(&[]);
        c.fault("pessimistic_lock", fault);
        let (_, result) = drive(forced(&["a"], LockOptions::new()), &mut c);
        assert!(matches!(result, Err(Error::MalformedResponse(_))), "{name}: {result:?}");
    }
}

/// With the primary's region cached, the keys of that region go with the
/// primary in the first batch; the other regions' keys follow.
#[test]
fn the_primary_batch_holds_the_keys_of_its_region() {
    let mut c = FakeCluster::new(&["m"]);
    let v = view();
    c.data.insert(b"a".to_vec(), Bytes::from("0"));
    let _ = drive(crate::raw::get(&v, Key::from("a"), &Default::default()), &mut c);
    c.received.clear();
    c.fault("pessimistic_lock", lock_ok());
    c.fault("pessimistic_lock", lock_ok());
    let op = AcquirePessimisticLocks::new(v, request(&["x", "b", "a"], None, LockOptions::new()));
    let (_, result) = drive(op, &mut c);
    assert_eq!(result.expect("locked").locked, keys(&["a", "b", "x"]));
    let batches: Vec<_> = lock_requests(&c).iter().map(mutation_keys).collect();
    assert_eq!(batches, vec![vec![Bytes::from("a"), Bytes::from("b")], vec![Bytes::from("x")]]);
}

/// Keys the transaction presumes absent are locked with a `NotExist`
/// assertion; TiKV's `AlreadyExist` ends the call.
#[test]
fn presumed_absent_keys_assert_not_exist() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "pessimistic_lock",
        lock_error(kvrpcpb::KeyError {
            already_exist: Some(kvrpcpb::AlreadyExist { key: Bytes::from("b") }),
            ..Default::default()
        }),
    );
    let req = AcquireRequest {
        presumed_absent: keys(&["b"]),
        ..request(&["a", "b"], Some("p"), LockOptions::new())
    };
    let (_, result) = drive(AcquirePessimisticLocks::new(view(), req), &mut c);
    assert_eq!(result, Err(Error::KeyExists(Key::from("b"))));
    let assertions: Vec<i32> = lock_requests(&c)[0].mutations.iter().map(|m| m.assertion).collect();
    assert_eq!(
        assertions,
        vec![kvrpcpb::Assertion::None as i32, kvrpcpb::Assertion::NotExist as i32]
    );
}

// ------------------------------------------------------ lock statistics

/// Runs `op` like [`drive`], but each store RPC takes `latency(rpc)` (a
/// lock request TiKV holds while it waits for another transaction's lock
/// takes as long as that wait) and PD answers at once.
fn drive_timed<O: Operation>(
    mut op: O,
    c: &mut FakeCluster,
    mut latency: impl FnMut(&Rpc) -> Duration,
) -> Result<O::Output, Error> {
    let mut now = Instant::ZERO;
    op.start(now);
    for _ in 0..1_000 {
        let mut sent = Vec::new();
        while let Some(rpc) = op.poll_rpc() {
            sent.push(rpc);
        }
        if let Some(result) = op.poll_result() {
            return result;
        }
        if let Some(rpc) = sent.into_iter().next() {
            if matches!(rpc.target, Target::Store { .. }) {
                now += latency(&rpc);
            }
            let response = c.handle(&rpc);
            op.on_response(rpc.id, response, now);
        } else if let Some(t) = op.poll_timeout() {
            now = now.max(t);
            op.on_timeout(now);
        } else {
            panic!("stalled");
        }
    }
    panic!("did not finish");
}

/// The first lock request of a call.
fn is_first_lock_request(rpc: &Rpc, seen: &mut u32) -> bool {
    if matches!(rpc.request, Request::Kv(KvRequest::PessimisticLock(_))) {
        *seen += 1;
        return *seen == 1;
    }
    false
}

/// A lock wait then success (client-go's `LockKeysDetails` of one
/// `LockKeys`): TiKV holds the first request 500 ms on a live lock, the
/// batch goes again and locks. Both requests count in the RPC count and
/// time; only the successful one can be the slowest, with its region,
/// store and exec details; the call's time spans both.
#[test]
fn lock_details_count_a_lock_wait_then_success() {
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", locked("a", 120));
    c.fault(
        "pessimistic_lock",
        respond(KvResponse::PessimisticLock(Box::new(kvrpcpb::PessimisticLockResponse {
            exec_details_v2: Some(kvrpcpb::ExecDetailsV2 {
                write_detail: Some(kvrpcpb::WriteDetail {
                    pessimistic_lock_wait_nanos: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }))),
    );
    let mut op = acquire(&["a", "b"], Some("p"), LockOptions::new());
    let mut seen = 0;
    let result = drive_timed(&mut op, &mut c, |rpc| {
        let wait = is_first_lock_request(rpc, &mut seen);
        Duration::from_millis(if wait { 500 } else { 2 })
    });
    assert_eq!(result.expect("locked").locked, keys(&["a", "b"]));
    let d = op.details();
    assert_eq!(d.total, Duration::from_millis(502));
    assert_eq!((d.keys, d.regions), (2, 1));
    assert_eq!((d.lock_rpc_count, d.lock_rpc_time), (2, Duration::from_millis(502)));
    assert_eq!((d.lock_wait_retries, d.statement_retries), (1, 0));
    assert_eq!((d.resolve_lock, d.backoff), (Duration::ZERO, Duration::ZERO));
    assert!(d.backoff_by_kind.is_empty());
    assert_eq!((d.aggressive_lock_new, d.locked_with_conflict), (0, 0), "not a fair lock");
    let slowest = d.slowest.expect("a request succeeded");
    assert_eq!(slowest.time, Duration::from_millis(2), "the waited request failed: not counted");
    assert_eq!(slowest.region_id, 1);
    assert_eq!(c.stores.get(&slowest.store_id), Some(&slowest.store_addr));
    assert_eq!(slowest.exec_details.requests, 1);
    assert_eq!(slowest.exec_details.write.scheduler_pessimistic_lock_wait, Duration::from_nanos(7));
}

/// An old lock is resolved before the batch goes again: the resolve's
/// RPCs count in `resolve_lock`, not in the lock RPCs.
#[test]
fn lock_details_time_the_resolve_of_an_old_lock() {
    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", locked("a", 0));
    c.fault("check_txn_status", status(0));
    c.fault("pessimistic_rollback", respond(KvResponse::PessimisticRollback(Default::default())));
    c.fault("pessimistic_lock", lock_ok());
    let mut op = acquire(&["a"], Some("p"), LockOptions::new());
    let result = drive_timed(&mut op, &mut c, |rpc| match &rpc.request {
        Request::Kv(KvRequest::PessimisticLock(_)) => Duration::from_millis(10),
        _ => Duration::from_millis(3),
    });
    result.expect("locked");
    let d = op.details();
    // Check the txn status, roll its lock back: 3 ms each (its timestamp
    // from PD at once).
    assert_eq!(d.resolve_lock, Duration::from_millis(6));
    assert_eq!((d.lock_rpc_count, d.lock_rpc_time), (2, Duration::from_millis(20)));
    assert_eq!(d.lock_wait_retries, 1);
    assert_eq!(d.total, Duration::from_millis(26));
}

/// A call that fails still reports what it did (client-go fills the
/// stats before returning the error): a write conflict answered the only
/// request, so nothing succeeded.
#[test]
fn lock_details_are_filled_on_failure() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "pessimistic_lock",
        lock_error(kvrpcpb::KeyError {
            conflict: Some(kvrpcpb::WriteConflict {
                start_ts: ts_at(500).version(),
                conflict_ts: ts_at(700).version(),
                key: Bytes::from("a"),
                conflict_commit_ts: ts_at(950).version(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    let mut op = acquire(&["a"], Some("p"), LockOptions::new());
    let (_, result) = drive(&mut op, &mut c);
    assert!(matches!(result, Err(Error::WriteConflict { .. })));
    let d = op.details();
    assert_eq!((d.keys, d.lock_rpc_count), (1, 1));
    // The call located the key's region first (three PD RPCs).
    assert_eq!((d.lock_rpc_time, d.total), (Duration::from_millis(1), Duration::from_millis(4)));
    assert_eq!(d.regions, 1, "the region answered, with a key error");
    assert_eq!(d.slowest, None, "no request succeeded");
    assert_eq!(d.lock_wait_retries, 0);
}

/// A region error relocates the batch after a backoff: the sleep shows in
/// `backoff` and by kind (client-go `BackoffTypes`), every attempt in the
/// RPC count; the region counts once.
#[test]
fn lock_details_report_region_error_backoff_by_kind() {
    let mut c = FakeCluster::new(&[]);
    for _ in 0..2 {
        c.fault(
            "pessimistic_lock",
            Fault::Region(Box::new(tikv_proto::errorpb::Error {
                message: "key not in region".into(),
                key_not_in_region: Some(Default::default()),
                ..Default::default()
            })),
        );
    }
    c.fault("pessimistic_lock", lock_ok());
    let mut op = acquire(&["a"], Some("p"), LockOptions::new());
    let (log, result) = drive(&mut op, &mut c);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let d = op.details();
    assert_eq!(d.lock_rpc_count, 3, "{log}");
    assert_eq!(d.regions, 1);
    assert!(!d.backoff.is_zero(), "{log}");
    let by_kind: Vec<_> = d.backoff_by_kind.iter().map(|k| (k.kind, k.sleeps)).collect();
    assert_eq!(by_kind, [(crate::backoff::BackoffKind::RegionMiss, 2)], "{log}");
    assert_eq!(d.backoff_by_kind[0].slept, d.backoff);
    assert!(d.total >= d.backoff + d.lock_rpc_time, "the sleeps are in the call's time");
}

/// Fair locking (force-lock mode): the key counts as a new fair lock, and
/// as locked with conflict when it was taken over a newer write; a normal
/// call counts neither.
#[test]
fn lock_details_count_fair_locks_and_conflicts() {
    use kvrpcpb::PessimisticLockKeyResultType::*;
    let conflict = ts_at(950).version();
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "pessimistic_lock",
        force_answer(vec![force_result(LockResultLockedWithConflict, "2", conflict)], vec![]),
    );
    let mut op = forced(&["a"], LockOptions::new());
    let (_, result) = drive(&mut op, &mut c);
    result.expect("locked");
    let d = op.details();
    assert_eq!((d.aggressive_lock_new, d.locked_with_conflict), (1, 1));
    assert!(d.slowest.is_some(), "a locked-with-conflict answer is a success");

    let mut c = FakeCluster::new(&[]);
    c.fault("pessimistic_lock", force_answer(vec![force_result(LockResultNormal, "", 0)], vec![]));
    let mut op = forced(&["a"], LockOptions::new());
    drive(&mut op, &mut c).1.expect("locked");
    assert_eq!((op.details().aggressive_lock_new, op.details().locked_with_conflict), (1, 0));
}

/// Merging sums the calls and keeps the slower request, backoff kinds
/// summed per kind (client-go `Merge`).
#[test]
fn lock_details_merge_sums_and_keeps_the_slowest() {
    use crate::backoff::BackoffKind;
    let sleeps = |kind, n, ms| KindSleeps { kind, sleeps: n, slept: Duration::from_millis(ms) };
    let slow = |ms, region_id| RequestDetail {
        time: Duration::from_millis(ms),
        region_id,
        ..Default::default()
    };
    let mut a = LockKeysDetails {
        keys: 1,
        lock_rpc_count: 2,
        backoff: Duration::from_millis(4),
        backoff_by_kind: vec![sleeps(BackoffKind::RegionMiss, 2, 4)],
        slowest: Some(slow(9, 1)),
        ..Default::default()
    };
    let b = LockKeysDetails {
        keys: 2,
        statement_retries: 1,
        backoff: Duration::from_millis(5),
        backoff_by_kind: vec![
            sleeps(BackoffKind::TikvRpc, 1, 2),
            sleeps(BackoffKind::RegionMiss, 1, 3),
        ],
        slowest: Some(slow(5, 2)),
        ..Default::default()
    };
    a.merge(&b);
    assert_eq!((a.keys, a.lock_rpc_count, a.statement_retries), (3, 2, 1));
    assert_eq!(a.backoff, Duration::from_millis(9));
    let mut expected =
        vec![sleeps(BackoffKind::RegionMiss, 3, 7), sleeps(BackoffKind::TikvRpc, 1, 2)];
    expected.sort_by_key(|s| s.kind as usize);
    assert_eq!(a.backoff_by_kind, expected);
    assert_eq!(a.slowest.as_ref().map(|s| s.region_id), Some(1), "the slower one stays");
    a.merge(&LockKeysDetails { slowest: Some(slow(12, 3)), ..Default::default() });
    assert_eq!(a.slowest.map(|s| s.region_id), Some(3));
}
