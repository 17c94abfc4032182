//! Model-level tests of TiKV's pessimistic semantics: lock waiting (legacy
//! and force-lock wake-up), the deadlock detector, pessimistic rollback,
//! and the pessimistic parts of acquire and prewrite.

use bytes::Bytes;
use tikv_core::rpc::{KvRequest, KvResponse};
use tikv_core::time::Instant;
use tikv_proto::kvrpcpb::{self, Op};
use tikv_sim::{Cluster, ClusterConfig, KvAnswer, LockWaitToken};

const T0: Instant = Instant::ZERO;

/// A V1 txn cluster split at `m`: keys below and above are in two regions.
fn cluster() -> Cluster {
    Cluster::new(ClusterConfig {
        split_keys: vec![b"m".to_vec()],
        v1_txn: true,
        ..ClusterConfig::default()
    })
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

/// The leader store of `key`'s region and a context for it.
fn route(c: &Cluster, key: &[u8]) -> (u64, kvrpcpb::Context) {
    let id = c.region_for_region_key(&c.txn_region_key(key)).expect("a region").id;
    (c.leader_of(id).unwrap().store_id, c.context_for(id).unwrap())
}

fn send_at(c: &Cluster, key: &[u8], mut req: KvRequest, now: Instant) -> KvResponse {
    let (store, ctx) = route(c, key);
    *req.context_mut() = ctx;
    c.handle_kv(store, req, now).expect("leader is up")
}

fn send(c: &Cluster, key: &[u8], req: KvRequest) -> KvResponse {
    send_at(c, key, req, T0)
}

fn lock_req(keys: &[&[u8]], start: u64, for_update: u64) -> kvrpcpb::PessimisticLockRequest {
    kvrpcpb::PessimisticLockRequest {
        mutations: keys
            .iter()
            .map(|k| kvrpcpb::Mutation {
                op: Op::PessimisticLock as i32,
                key: b(k),
                ..Default::default()
            })
            .collect(),
        primary_lock: b(keys[0]),
        start_version: start,
        for_update_ts: for_update,
        lock_ttl: 3000,
        wait_timeout: -1,
        ..Default::default()
    }
}

fn force(mut r: kvrpcpb::PessimisticLockRequest) -> kvrpcpb::PessimisticLockRequest {
    r.wake_up_mode = kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32;
    r
}

/// A lock request answered at once.
fn lock(c: &Cluster, r: kvrpcpb::PessimisticLockRequest) -> kvrpcpb::PessimisticLockResponse {
    let key = r.mutations[0].key.clone();
    match send(c, &key, KvRequest::PessimisticLock(Box::new(r))) {
        KvResponse::PessimisticLock(p) => {
            assert!(p.region_error.is_none(), "{:?}", p.region_error);
            *p
        }
        other => panic!("{other:?}"),
    }
}

/// A lock request that may wait, sent at `now`.
fn lock_waiting(c: &Cluster, r: kvrpcpb::PessimisticLockRequest, now: Instant) -> KvAnswer {
    let key = r.mutations[0].key.clone();
    let (store, ctx) = route(c, &key);
    let mut req = KvRequest::PessimisticLock(Box::new(r));
    *req.context_mut() = ctx;
    c.handle_kv_waiting(store, req, now).expect("leader is up")
}

fn parked(a: KvAnswer) -> LockWaitToken {
    match a {
        KvAnswer::Waiting(t) => t,
        KvAnswer::Ready(r) => panic!("answered at once: {r:?}"),
    }
}

fn ready(a: KvAnswer) -> kvrpcpb::PessimisticLockResponse {
    match a {
        KvAnswer::Ready(KvResponse::PessimisticLock(p)) => *p,
        other => panic!("{other:?}"),
    }
}

fn prewrite_put(c: &Cluster, key: &[u8], value: &[u8], start: u64) {
    let r = kvrpcpb::PrewriteRequest {
        mutations: vec![kvrpcpb::Mutation {
            op: Op::Put as i32,
            key: b(key),
            value: b(value),
            ..Default::default()
        }],
        primary_lock: b(key),
        start_version: start,
        lock_ttl: 3000,
        txn_size: 1,
        ..Default::default()
    };
    let KvResponse::Prewrite(p) = send(c, key, KvRequest::Prewrite(Box::new(r))) else { panic!() };
    assert!(p.errors.is_empty() && p.region_error.is_none(), "{p:?}");
}

fn commit(c: &Cluster, key: &[u8], start: u64, commit_ts: u64) {
    let r = kvrpcpb::CommitRequest {
        keys: vec![b(key)],
        start_version: start,
        commit_version: commit_ts,
        ..Default::default()
    };
    let KvResponse::Commit(p) = send(c, key, KvRequest::Commit(Box::new(r))) else { panic!() };
    assert!(p.error.is_none() && p.region_error.is_none(), "{p:?}");
}

fn put(c: &Cluster, key: &[u8], value: &[u8], start: u64, commit_ts: u64) {
    prewrite_put(c, key, value, start);
    commit(c, key, start, commit_ts);
}

fn pessimistic_rollback(c: &Cluster, route_key: &[u8], keys: &[&[u8]], start: u64, fu: u64) {
    let r = kvrpcpb::PessimisticRollbackRequest {
        keys: keys.iter().map(|k| b(k)).collect(),
        start_version: start,
        for_update_ts: fu,
        ..Default::default()
    };
    let KvResponse::PessimisticRollback(p) =
        send(c, route_key, KvRequest::PessimisticRollback(Box::new(r)))
    else {
        panic!()
    };
    assert!(p.errors.is_empty() && p.region_error.is_none(), "{p:?}");
}

/// (key, start ts, for_update_ts, lock type) of every lock.
fn locks(c: &Cluster) -> Vec<(Vec<u8>, u64, u64, i32)> {
    c.locks()
        .into_iter()
        .map(|l| (l.key.to_vec(), l.lock_version, l.lock_for_update_ts, l.lock_type))
        .collect()
}

const PL: i32 = Op::PessimisticLock as i32;

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

#[test]
fn a_legacy_waiter_is_held_then_woken_by_the_commit_with_a_write_conflict() {
    let c = cluster();
    prewrite_put(&c, b"k", b"v", 10);
    let mut r = lock_req(&[b"k"], 20, 20);
    r.wait_timeout = 0;
    let token = parked(lock_waiting(&c, r, T0));
    assert_eq!(c.lock_waiters(), 1);
    assert!(c.take_lock_wait_answer(token).is_none(), "still held");
    commit(&c, b"k", 10, 15);
    let woken = c.take_lock_wait_answer(token).expect("woken by the commit");
    let conflict = woken.errors[0].conflict.clone().expect("a write conflict");
    assert_eq!(
        (conflict.start_ts, conflict.conflict_ts, conflict.conflict_commit_ts),
        (20, 10, 15)
    );
    assert_eq!(conflict.reason, kvrpcpb::write_conflict::Reason::PessimisticRetry as i32);
    assert_eq!(&conflict.key[..], b"k");
    assert!(c.take_lock_wait_answer(token).is_none(), "answered once");
    assert_eq!(c.lock_waiters(), 0);
    // The woken legacy request did not lock.
    assert!(c.locks().is_empty());
}

#[test]
fn waiters_are_woken_in_start_ts_order_and_the_rest_after_the_delay() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"k"], 10, 10)).errors.is_empty());
    let mut r30 = lock_req(&[b"k"], 30, 30);
    r30.wait_timeout = 0;
    let mut r20 = lock_req(&[b"k"], 20, 20);
    r20.wait_timeout = 0;
    let t30 = parked(lock_waiting(&c, r30, T0));
    let t20 = parked(lock_waiting(&c, r20, T0));
    pessimistic_rollback(&c, b"k", &[b"k"], 10, 10);
    // The smaller start_ts goes first, with no commit ts (a rollback).
    let first = c.take_lock_wait_answer(t20).expect("the head is woken");
    assert_eq!(first.errors[0].conflict.as_ref().unwrap().conflict_commit_ts, 0);
    assert!(c.take_lock_wait_answer(t30).is_none(), "the others wait for the delay");
    assert_eq!(c.next_lock_wait_deadline(), Some(ms(20)));
    c.advance_lock_waits(ms(19));
    assert!(c.take_lock_wait_answer(t30).is_none());
    c.advance_lock_waits(ms(20));
    let second = c.take_lock_wait_answer(t30).expect("woken after the delay");
    assert_eq!(second.errors[0].conflict.as_ref().unwrap().conflict_ts, 10);
}

#[test]
fn the_delayed_wake_up_comes_even_if_the_key_was_locked_again() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"k"], 10, 10)).errors.is_empty());
    let mut r30 = lock_req(&[b"k"], 30, 30);
    r30.wait_timeout = 500;
    let t30 = parked(lock_waiting(&c, r30, T0));
    let mut r20 = lock_req(&[b"k"], 20, 20);
    r20.wait_timeout = 0;
    let t20 = parked(lock_waiting(&c, r20, T0));
    pessimistic_rollback(&c, b"k", &[b"k"], 10, 10);
    assert!(c.take_lock_wait_answer(t20).is_some());
    // The woken txn locks again before the delay is over; 30 is still
    // told to retry (TiKV's `delayed_notify_all` does not look at the key).
    assert!(lock(&c, lock_req(&[b"k"], 20, 21)).errors.is_empty());
    c.advance_lock_waits(ms(19));
    assert!(c.take_lock_wait_answer(t30).is_none());
    c.advance_lock_waits(ms(20));
    let woken = c.take_lock_wait_answer(t30).expect("the delayed wake-up");
    assert_eq!(woken.errors[0].conflict.as_ref().unwrap().conflict_ts, 10);
}

#[test]
fn a_waiter_left_behind_waits_for_the_resumed_holder() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"k"], 10, 10)).errors.is_empty());
    // 20 (force-lock, the head) and 30 (legacy) wait for 10.
    let mut r20 = force(lock_req(&[b"k"], 20, 20));
    r20.wait_timeout = 0;
    let t20 = parked(lock_waiting(&c, r20, T0));
    let mut r30 = lock_req(&[b"k"], 30, 30);
    r30.wait_timeout = 500;
    let t30 = parked(lock_waiting(&c, r30, T0));
    pessimistic_rollback(&c, b"k", &[b"k"], 10, 10);
    // 20 resumed and took the key; no delayed wake-up for a resumed head.
    assert!(c.take_lock_wait_answer(t20).unwrap().errors.is_empty());
    assert_eq!(locks(&c), vec![(b"k".to_vec(), 20, 20, PL)]);
    assert_eq!(c.next_lock_wait_deadline(), Some(ms(500)));
    c.advance_lock_waits(ms(500));
    let timed_out = c.take_lock_wait_answer(t30).expect("timed out");
    let locked = timed_out.errors[0].locked.clone().unwrap();
    // 30 now waited for 20, since the release at t = 0.
    assert_eq!(locked.lock_version, 20);
    assert_eq!(locked.duration_to_last_update_ms, 500);
}

#[test]
fn a_wait_times_out_with_key_is_locked_and_no_wait_answers_at_once() {
    let c = cluster();
    prewrite_put(&c, b"k", b"v", 10);
    // wait_timeout < 0: no wait.
    let r = ready(lock_waiting(&c, lock_req(&[b"k"], 20, 20), T0));
    assert_eq!(r.errors[0].locked.as_ref().unwrap().lock_version, 10);
    assert_eq!(c.lock_waiters(), 0);
    // 100 ms from t = 5 ms.
    let mut req = lock_req(&[b"k"], 20, 20);
    req.wait_timeout = 100;
    let token = parked(lock_waiting(&c, req, ms(5)));
    assert_eq!(c.next_lock_wait_deadline(), Some(ms(105)));
    c.advance_lock_waits(ms(104));
    assert!(c.take_lock_wait_answer(token).is_none());
    c.advance_lock_waits(ms(105));
    let r = c.take_lock_wait_answer(token).expect("timed out");
    let locked = r.errors[0].locked.clone().expect("KeyIsLocked");
    assert_eq!((locked.lock_version, &locked.key[..]), (10, &b"k"[..]));
    assert_eq!(locked.duration_to_last_update_ms, 0, "the wait never changed");
    assert_eq!(c.lock_waiters(), 0);
    assert_eq!(c.next_lock_wait_deadline(), None);
    // 0 is TiKV's default ceiling, and larger values are capped by it.
    let mut req = lock_req(&[b"k"], 20, 20);
    req.wait_timeout = 60_000;
    let token = parked(lock_waiting(&c, req, T0));
    assert_eq!(c.next_lock_wait_deadline(), Some(ms(1000)));
    c.cancel_lock_wait(token);
    assert_eq!(c.lock_waiters(), 0);
}

#[test]
fn a_force_lock_waiter_locks_over_the_newer_commit() {
    let c = cluster();
    prewrite_put(&c, b"k", b"v1", 10);
    let mut r = force(lock_req(&[b"k"], 20, 20));
    r.wait_timeout = 0;
    let token = parked(lock_waiting(&c, r, T0));
    commit(&c, b"k", 10, 25);
    let resp = c.take_lock_wait_answer(token).expect("resumed");
    assert!(resp.errors.is_empty(), "{:?}", resp.errors);
    let res = &resp.results[0];
    assert_eq!(
        res.r#type,
        kvrpcpb::PessimisticLockKeyResultType::LockResultLockedWithConflict as i32
    );
    assert_eq!(res.locked_with_conflict_ts, 25);
    assert_eq!((&res.value[..], res.existence), (&b"v1"[..], true));
    // The lock carries the conflicting commit ts as its for_update_ts.
    assert_eq!(locks(&c), vec![(b"k".to_vec(), 20, 25, PL)]);
}

#[test]
fn force_lock_without_waiting_results_per_key() {
    let c = cluster();
    put(&c, b"k", b"v", 10, 15);
    // Newer commit than for_update_ts: locked with conflict at once.
    let r = lock(&c, force(lock_req(&[b"k"], 12, 12)));
    assert!(r.errors.is_empty());
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].locked_with_conflict_ts, 15);
    // Again with the old for_update_ts: the lock's is newer, reported again.
    let r = lock(&c, force(lock_req(&[b"k"], 12, 12)));
    assert_eq!(r.results[0].locked_with_conflict_ts, 15);
    // Another txn, no wait: LockResultFailed beside the KeyIsLocked error.
    let r = lock(&c, force(lock_req(&[b"k"], 30, 30)));
    assert_eq!(r.results[0].r#type, kvrpcpb::PessimisticLockKeyResultType::LockResultFailed as i32);
    assert_eq!(r.errors[0].locked.as_ref().unwrap().lock_version, 12);
    // Without a conflict: a normal result, existence with return_values.
    let mut req = force(lock_req(&[b"n"], 30, 30));
    req.return_values = true;
    let r = lock(&c, req);
    assert_eq!(r.results[0].r#type, kvrpcpb::PessimisticLockKeyResultType::LockResultNormal as i32);
    assert!(!r.results[0].existence);
    assert!(r.values.is_empty() && r.not_founds.is_empty(), "no legacy fields");
    // More than one key is refused.
    let r = lock(&c, force(lock_req(&[b"a", b"b"], 40, 40)));
    assert!(r.errors[0].abort.contains("multiple keys"), "{:?}", r.errors);
}

#[test]
fn a_deadlock_across_two_regions_answers_the_wait_chain() {
    let c = cluster();
    assert_ne!(route(&c, b"a").1.region_id, route(&c, b"z").1.region_id);
    assert!(lock(&c, lock_req(&[b"a"], 10, 10)).errors.is_empty());
    assert!(lock(&c, lock_req(&[b"z"], 20, 20)).errors.is_empty());
    // 10 waits for 20 on z.
    let mut r = lock_req(&[b"z"], 10, 10);
    r.primary_lock = b(b"a");
    r.wait_timeout = 0;
    let t10 = parked(lock_waiting(&c, r, T0));
    // 20 waiting for 10 on a closes the cycle: Deadlock at once.
    let mut r = lock_req(&[b"a"], 20, 20);
    r.primary_lock = b(b"z");
    r.wait_timeout = 0;
    let resp = ready(lock_waiting(&c, r.clone(), T0));
    let dl = resp.errors[0].deadlock.clone().expect("a deadlock");
    assert_eq!((dl.lock_ts, &dl.lock_key[..]), (10, &b"a"[..]));
    let chain: Vec<(u64, u64, &[u8])> =
        dl.wait_chain.iter().map(|e| (e.txn, e.wait_for_txn, &e.key[..])).collect();
    assert_eq!(chain, vec![(10, 20, &b"z"[..]), (20, 10, &b"a"[..])]);
    // The hash names the key of the wait that closed the cycle (z).
    assert_eq!(dl.deadlock_key_hash, dl.wait_chain[0].key_hash);
    assert_ne!(dl.wait_chain[0].key_hash, dl.wait_chain[1].key_hash);
    assert!(c.take_lock_wait_answer(t10).is_none(), "the other side keeps waiting");
    assert_eq!(c.lock_waiters(), 1);
    // Once 10 stops waiting (timeout), its edge is gone: 20 may wait.
    c.advance_lock_waits(ms(1000));
    assert!(c.take_lock_wait_answer(t10).unwrap().errors[0].locked.is_some());
    let t20 = parked(lock_waiting(&c, r.clone(), ms(1000)));
    c.cancel_lock_wait(t20);
    // A request marked as the transaction's first lock is not checked
    // (TiKV skips detection then).
    let mut r10 = lock_req(&[b"z"], 10, 10);
    r10.wait_timeout = 0;
    let _t10 = parked(lock_waiting(&c, r10, ms(1000)));
    r.is_first_lock = true;
    let _t20 = parked(lock_waiting(&c, r, ms(1000)));
    assert_eq!(c.lock_waiters(), 2);
}

#[test]
fn pessimistic_rollback_without_keys_scans_the_region() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"a", b"b"], 10, 10)).errors.is_empty());
    // b's lock moves to for_update_ts 30, above the rollback's.
    assert!(lock(&c, lock_req(&[b"b"], 10, 30)).errors.is_empty());
    assert!(lock(&c, lock_req(&[b"c"], 11, 11)).errors.is_empty());
    assert!(lock(&c, lock_req(&[b"z"], 10, 10)).errors.is_empty());
    prewrite_put(&c, b"d", b"v", 10);
    pessimistic_rollback(&c, b"a", &[], 10, 20);
    // Only a: b is newer, c another txn's, d a prewrite lock, z another region.
    assert_eq!(
        locks(&c),
        vec![
            (b"b".to_vec(), 10, 30, PL),
            (b"c".to_vec(), 11, 11, PL),
            (b"d".to_vec(), 10, 0, Op::Put as i32),
            (b"z".to_vec(), 10, 10, PL),
        ]
    );
    // No rollback record: the txn may lock a again.
    assert!(c.commit_record(b"a", 10).is_none());
    pessimistic_rollback(&c, b"z", &[], 10, 30);
    pessimistic_rollback(&c, b"a", &[], 10, 30);
    assert_eq!(locks(&c).len(), 2);
}

#[test]
fn pessimistic_rollback_without_keys_wakes_the_waiters() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"k"], 10, 10)).errors.is_empty());
    let mut r = lock_req(&[b"k"], 20, 20);
    r.wait_timeout = 0;
    let token = parked(lock_waiting(&c, r, T0));
    pessimistic_rollback(&c, b"k", &[], 10, 10);
    let woken = c.take_lock_wait_answer(token).expect("woken");
    assert_eq!(woken.errors[0].conflict.as_ref().unwrap().conflict_ts, 10);
}

#[test]
fn prewrite_checks_for_update_ts_constraints() {
    let c = cluster();
    put(&c, b"k", b"v", 5, 15);
    // Force-locked at 15 though the client asked at 12.
    assert_eq!(lock(&c, force(lock_req(&[b"k"], 12, 12))).results[0].locked_with_conflict_ts, 15);
    let prewrite = |expected: u64| {
        let r = kvrpcpb::PrewriteRequest {
            mutations: vec![kvrpcpb::Mutation {
                op: Op::Put as i32,
                key: b(b"k"),
                value: b(b"v2"),
                ..Default::default()
            }],
            primary_lock: b(b"k"),
            start_version: 12,
            for_update_ts: 15,
            lock_ttl: 3000,
            pessimistic_actions: vec![
                kvrpcpb::prewrite_request::PessimisticAction::DoPessimisticCheck as i32,
            ],
            for_update_ts_constraints: vec![kvrpcpb::prewrite_request::ForUpdateTsConstraint {
                index: 0,
                expected_for_update_ts: expected,
            }],
            ..Default::default()
        };
        let KvResponse::Prewrite(p) = send(&c, b"k", KvRequest::Prewrite(Box::new(r))) else {
            panic!()
        };
        *p
    };
    let p = prewrite(12);
    assert!(p.errors[0].abort.starts_with("PessimisticLockNotFound"), "{:?}", p.errors);
    assert_eq!(locks(&c), vec![(b"k".to_vec(), 12, 15, PL)], "nothing written");
    // The matching constraint: the pessimistic lock becomes the prewrite lock.
    assert!(prewrite(15).errors.is_empty());
    assert_eq!(locks(&c), vec![(b"k".to_vec(), 12, 15, Op::Put as i32)]);
}

#[test]
fn lock_only_if_exists_needs_return_values_and_locks_existing_keys() {
    let c = cluster();
    put(&c, b"a", b"va", 5, 6);
    let mut r = lock_req(&[b"a", b"b"], 10, 10);
    r.lock_only_if_exists = true;
    let e = lock(&c, r.clone());
    assert!(e.errors[0].abort.starts_with("LockIfExistsFailed"), "{:?}", e.errors);
    assert!(c.locks().is_empty());
    r.return_values = true;
    let ok = lock(&c, r);
    assert!(ok.errors.is_empty(), "{:?}", ok.errors);
    assert_eq!(ok.values, vec![b(b"va"), Bytes::new()]);
    assert_eq!(ok.not_founds, vec![false, true]);
    assert_eq!(locks(&c), vec![(b"a".to_vec(), 10, 10, PL)]);
}

#[test]
fn acquire_answers_existence_and_refuses_its_own_prewrite_lock() {
    let c = cluster();
    put(&c, b"a", b"va", 5, 6);
    let mut r = lock_req(&[b"a", b"b"], 10, 10);
    r.check_existence = true;
    let resp = lock(&c, r);
    assert!(resp.values.is_empty(), "existence only");
    assert_eq!(resp.not_founds, vec![false, true]);
    prewrite_put(&c, b"c", b"v", 10);
    let e = lock(&c, lock_req(&[b"c"], 10, 10));
    assert!(e.errors[0].abort.starts_with("LockTypeNotMatch"), "{:?}", e.errors);
}

/// Waiting keeps what the deterministic face answers: `handle_kv` never
/// parks, whatever the request's `wait_timeout`.
#[test]
fn handle_kv_never_waits() {
    let c = cluster();
    prewrite_put(&c, b"k", b"v", 10);
    let mut r = lock_req(&[b"k"], 20, 20);
    r.wait_timeout = 0;
    assert!(lock(&c, r).errors[0].locked.is_some());
    assert_eq!(c.lock_waiters(), 0);
}

#[test]
fn a_force_lock_waiter_whose_key_changes_hands_into_a_cycle_is_told_deadlock() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"k"], 10, 10)).errors.is_empty());
    assert!(lock(&c, lock_req(&[b"j"], 30, 30)).errors.is_empty());
    // 30 (force-lock) and 12 (legacy, the head) wait for 10 on k.
    let mut r = force(lock_req(&[b"k"], 30, 30));
    r.wait_timeout = 0;
    let t30 = parked(lock_waiting(&c, r, T0));
    let mut r = lock_req(&[b"k"], 12, 12);
    r.wait_timeout = 0;
    let t12 = parked(lock_waiting(&c, r, T0));
    pessimistic_rollback(&c, b"k", &[b"k"], 10, 10);
    assert!(c.take_lock_wait_answer(t12).is_some());
    // 15 waits for 30 on j, then takes the free k: 30 now waits for 15.
    let mut r = lock_req(&[b"j"], 15, 15);
    r.wait_timeout = 0;
    let _t15 = parked(lock_waiting(&c, r, T0));
    assert!(lock(&c, lock_req(&[b"k"], 15, 15)).errors.is_empty());
    let resp = c.take_lock_wait_answer(t30).expect("the new wait closes a cycle");
    let dl = resp.errors[0].deadlock.clone().expect("a deadlock");
    assert_eq!(dl.lock_ts, 15);
    let chain: Vec<(u64, u64)> = dl.wait_chain.iter().map(|e| (e.txn, e.wait_for_txn)).collect();
    assert_eq!(chain, vec![(15, 30), (30, 15)]);
    assert_eq!(
        resp.results[0].r#type,
        kvrpcpb::PessimisticLockKeyResultType::LockResultFailed as i32
    );
    assert_eq!(c.lock_waiters(), 1);
}

#[test]
fn a_blocked_request_writes_nothing_while_it_waits() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"k"], 10, 10)).errors.is_empty());
    // 20 locks a and k; k is held, so a is not locked either.
    let mut r = lock_req(&[b"a", b"k"], 20, 20);
    r.wait_timeout = 0;
    let token = parked(lock_waiting(&c, r, T0));
    assert_eq!(locks(&c), vec![(b"k".to_vec(), 10, 10, PL)]);
    commit(&c, b"k", 10, 12);
    let woken = c.take_lock_wait_answer(token).expect("woken");
    let conflict = woken.errors[0].conflict.clone().expect("a write conflict");
    assert_eq!((&conflict.key[..], conflict.conflict_commit_ts), (&b"k"[..], 12));
    assert!(c.locks().is_empty());
}

/// The resolver's way out of an expired pessimistic lock
/// (`CheckTxnStatus` with `resolving_pessimistic_lock`) releases it like any
/// other command and wakes its waiters.
#[test]
fn resolving_an_expired_pessimistic_lock_wakes_its_waiters() {
    let c = cluster();
    let start = c.current_ts(T0);
    let mut r = lock_req(&[b"k"], start, start);
    r.lock_ttl = 100;
    assert!(lock(&c, r).errors.is_empty());
    let mut r = lock_req(&[b"k"], start + 1, start + 1);
    r.wait_timeout = 0;
    let token = parked(lock_waiting(&c, r, T0));
    let check = kvrpcpb::CheckTxnStatusRequest {
        primary_key: b(b"k"),
        lock_ts: start,
        caller_start_ts: start + 1,
        current_ts: c.current_ts(ms(500)),
        resolving_pessimistic_lock: true,
        ..Default::default()
    };
    let KvResponse::CheckTxnStatus(s) =
        send_at(&c, b"k", KvRequest::CheckTxnStatus(Box::new(check)), ms(500))
    else {
        panic!()
    };
    assert_eq!(s.action, kvrpcpb::Action::TtlExpirePessimisticRollback as i32);
    let woken = c.take_lock_wait_answer(token).expect("woken by the resolution");
    assert_eq!(woken.errors[0].conflict.as_ref().unwrap().conflict_ts, start);
}

/// TiKV neither checks nor registers a wait sent as the transaction's first
/// lock (such a transaction holds nothing another could wait for).
#[test]
fn a_first_lock_wait_is_left_out_of_the_graph() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"a"], 10, 10)).errors.is_empty());
    assert!(lock(&c, lock_req(&[b"z"], 20, 20)).errors.is_empty());
    let mut r = lock_req(&[b"z"], 10, 10);
    r.wait_timeout = 0;
    r.is_first_lock = true;
    let _t10 = parked(lock_waiting(&c, r, T0));
    let mut r = lock_req(&[b"a"], 20, 20);
    r.wait_timeout = 0;
    let _t20 = parked(lock_waiting(&c, r, T0));
    assert_eq!(c.lock_waiters(), 2, "no edge from 10: no cycle seen");
}

// Shared pessimistic locks (`SharedLocks` in TiKV's lock CF).

/// A share-mode lock request on `keys` whose primary is `primary` (a
/// shared-locked key is never a primary).
fn share_req(keys: &[&[u8]], primary: &[u8], start: u64) -> kvrpcpb::PessimisticLockRequest {
    let mut r = lock_req(keys, start, start);
    for m in &mut r.mutations {
        m.op = Op::SharedPessimisticLock as i32;
    }
    r.primary_lock = b(primary);
    r
}

/// The holders (start ts) of the key's shared locks, in ts order.
fn holders(c: &Cluster, key: &[u8]) -> Vec<u64> {
    let info = c.locks().into_iter().find(|l| &l.key[..] == key).expect("the key is locked");
    assert_eq!(info.lock_type, Op::SharedLock as i32, "{info:?}");
    let mut ts: Vec<u64> = info.shared_lock_infos.iter().map(|h| h.lock_version).collect();
    ts.sort();
    ts
}

fn prewrite(c: &Cluster, key: &[u8], r: kvrpcpb::PrewriteRequest) -> kvrpcpb::PrewriteResponse {
    let KvResponse::Prewrite(p) = send(c, key, KvRequest::Prewrite(Box::new(r))) else { panic!() };
    *p
}

/// A pessimistic prewrite of the share `start` holds on `key`.
fn share_prewrite(key: &[u8], primary: &[u8], start: u64) -> kvrpcpb::PrewriteRequest {
    kvrpcpb::PrewriteRequest {
        mutations: vec![kvrpcpb::Mutation {
            op: Op::SharedLock as i32,
            key: b(key),
            ..Default::default()
        }],
        pessimistic_actions: vec![
            kvrpcpb::prewrite_request::PessimisticAction::DoPessimisticCheck as i32,
        ],
        primary_lock: b(primary),
        start_version: start,
        for_update_ts: start,
        lock_ttl: 3000,
        txn_size: 1,
        ..Default::default()
    }
}

fn scan_lock(c: &Cluster, max_version: u64, limit: u32) -> Vec<kvrpcpb::LockInfo> {
    let r = kvrpcpb::ScanLockRequest { max_version, limit, ..Default::default() };
    let KvResponse::ScanLock(p) = send(c, b"a", KvRequest::ScanLock(Box::new(r))) else { panic!() };
    assert!(p.error.is_none() && p.region_error.is_none(), "{p:?}");
    p.locks
}

#[test]
fn share_holders_do_not_block_each_other_or_readers() {
    let c = cluster();
    put(&c, b"k", b"v", 1, 2);
    assert!(lock(&c, share_req(&[b"k"], b"p1", 10)).errors.is_empty());
    assert!(lock(&c, share_req(&[b"k"], b"p2", 20)).errors.is_empty());
    // Locking again at a newer for_update_ts only refreshes the share.
    let mut again = share_req(&[b"k"], b"p1", 10);
    again.for_update_ts = 12;
    assert!(lock(&c, again).errors.is_empty());
    assert_eq!(holders(&c, b"k"), vec![10, 20]);
    let info = c.locks().remove(0);
    assert_eq!(
        (info.lock_version, &info.primary_lock[..]),
        (0, &b""[..]),
        "only holders carry them"
    );
    let h10 = info.shared_lock_infos.iter().find(|h| h.lock_version == 10).unwrap();
    assert_eq!(
        (&h10.primary_lock[..], h10.lock_for_update_ts, h10.lock_type),
        (&b"p1"[..], 12, PL)
    );
    // Reads ignore shared locks (`check_ts_conflict`).
    let get = kvrpcpb::GetRequest { key: b(b"k"), version: 30, ..Default::default() };
    let KvResponse::Get(g) = send(&c, b"k", KvRequest::Get(Box::new(get))) else { panic!() };
    assert!(g.error.is_none(), "{g:?}");
    assert_eq!(&g.value[..], b"v");
}

#[test]
fn scan_lock_reports_the_holders_below_its_version_within_its_limit() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"a"], 5, 5)).errors.is_empty());
    for ts in [10, 20, 30] {
        assert!(lock(&c, share_req(&[b"k"], b"p", ts)).errors.is_empty());
    }
    let all = scan_lock(&c, 100, 0);
    assert_eq!(all.len(), 2);
    assert_eq!((&all[0].key[..], all[0].lock_version), (&b"a"[..], 5));
    assert_eq!((&all[1].key[..], all[1].lock_type), (&b"k"[..], Op::SharedLock as i32));
    assert_eq!(all[1].shared_lock_infos.len(), 3);
    let below = scan_lock(&c, 20, 0);
    let ts: Vec<u64> = below[1].shared_lock_infos.iter().map(|h| h.lock_version).collect();
    assert_eq!(ts, vec![10, 20], "sub-locks above max_version are left out");
    let limited = scan_lock(&c, 100, 2);
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[1].shared_lock_infos.len(), 1, "holders count against the limit");
    assert!(scan_lock(&c, 7, 0).iter().all(|l| &l.key[..] != b"k"), "no holder at or below 7");
}

#[test]
fn an_exclusive_request_makes_the_shares_shrink_only_then_waits_for_all_of_them() {
    let c = cluster();
    assert!(lock(&c, share_req(&[b"k"], b"p1", 10)).errors.is_empty());
    assert!(lock(&c, share_req(&[b"k"], b"p2", 20)).errors.is_empty());
    // The first exclusive request is answered at once with the shares,
    // even though it may wait (TiKV's `NotInShrinkMode`).
    let mut x = lock_req(&[b"k"], 30, 30);
    x.wait_timeout = 0;
    let first = ready(lock_waiting(&c, x.clone(), T0));
    let locked = first.errors[0].locked.clone().expect("KeyIsLocked");
    assert_eq!(locked.lock_type, Op::SharedLock as i32);
    assert_eq!(locked.shared_lock_infos.len(), 2);
    // Shrink-only: a new holder is refused, the present ones stay.
    let late = lock(&c, share_req(&[b"k"], b"p4", 40));
    assert_eq!(late.errors[0].locked.as_ref().unwrap().lock_type, Op::SharedLock as i32);
    assert_eq!(holders(&c, b"k"), vec![10, 20]);
    // The retry waits for every holder.
    let token = parked(lock_waiting(&c, x.clone(), T0));
    let p = prewrite(&c, b"k", share_prewrite(b"k", b"p1", 10));
    assert!(p.errors.is_empty(), "{p:?}");
    commit(&c, b"k", 10, 15);
    assert_eq!(holders(&c, b"k"), vec![20], "only the committer's share left");
    assert!(c.take_lock_wait_answer(token).is_none(), "one holder is left");
    let rec = c.commit_record(b"k", 10).expect("a commit record");
    assert_eq!((rec.kind, rec.commit_ts), (tikv_sim::WriteKind::Lock, 15));
    pessimistic_rollback(&c, b"k", &[b"k"], 20, 20);
    let woken = c.take_lock_wait_answer(token).expect("woken by the last release");
    let conflict = woken.errors[0].conflict.clone().expect("a legacy wake-up");
    assert_eq!((conflict.conflict_ts, conflict.conflict_commit_ts), (20, 0));
    assert!(c.locks().is_empty());
    let mut retry = lock_req(&[b"k"], 30, 31);
    retry.wait_timeout = 0;
    assert!(ready(lock_waiting(&c, retry, T0)).errors.is_empty());
    // A share request now waits for the exclusive lock.
    let r = lock(&c, share_req(&[b"k"], b"p5", 50));
    assert_eq!(r.errors[0].locked.as_ref().unwrap().lock_version, 30);
}

#[test]
fn prewrite_turns_only_its_own_share_into_a_lock() {
    let c = cluster();
    assert!(lock(&c, share_req(&[b"k"], b"p1", 10)).errors.is_empty());
    assert!(lock(&c, share_req(&[b"k"], b"p2", 20)).errors.is_empty());
    // Another transaction's write meets the shares.
    let mut other = share_prewrite(b"k", b"k", 40);
    other.mutations[0].op = Op::Put as i32;
    other.pessimistic_actions = vec![];
    other.for_update_ts = 0;
    let p = prewrite(&c, b"k", other);
    assert_eq!(p.errors[0].locked.as_ref().unwrap().lock_type, Op::SharedLock as i32);
    // A holder must prewrite its share as `SharedLock`, in 2PC.
    let mut wrong_op = share_prewrite(b"k", b"p1", 10);
    wrong_op.mutations[0].op = Op::Lock as i32;
    assert!(prewrite(&c, b"k", wrong_op).errors[0].abort.contains("use Op::SharedLock"));
    let mut one_pc = share_prewrite(b"k", b"p1", 10);
    one_pc.try_one_pc = true;
    assert!(prewrite(&c, b"k", one_pc).errors[0].abort.contains("one-phase commit"));
    let mut async_commit = share_prewrite(b"k", b"p1", 10);
    async_commit.use_async_commit = true;
    async_commit.secondaries = vec![b(b"k")];
    assert!(prewrite(&c, b"k", async_commit).errors[0].abort.contains("async-commit"));
    // No share, no shared prewrite.
    let none = prewrite(&c, b"k", share_prewrite(b"k", b"p3", 30));
    assert!(none.errors[0].abort.starts_with("PessimisticLockNotFound"), "{none:?}");
    let p = prewrite(&c, b"k", share_prewrite(b"k", b"p1", 10));
    assert!(p.errors.is_empty(), "{p:?}");
    let info = c.locks().remove(0);
    let kinds: Vec<(u64, i32)> =
        info.shared_lock_infos.iter().map(|h| (h.lock_version, h.lock_type)).collect();
    assert!(kinds.contains(&(10, Op::Lock as i32)) && kinds.contains(&(20, PL)), "{kinds:?}");
    // Rolling back one holder leaves the other and a rollback record.
    let rb = kvrpcpb::BatchRollbackRequest {
        keys: vec![b(b"k")],
        start_version: 10,
        ..Default::default()
    };
    let KvResponse::BatchRollback(r) = send(&c, b"k", KvRequest::BatchRollback(Box::new(rb)))
    else {
        panic!()
    };
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(holders(&c, b"k"), vec![20]);
    assert_eq!(c.commit_record(b"k", 10).unwrap().kind, tikv_sim::WriteKind::Rollback);
    // Another holder's commit record newer than this holder's start does
    // not make its share look lost.
    assert!(lock(&c, share_req(&[b"k"], b"p3", 30)).errors.is_empty());
    assert!(prewrite(&c, b"k", share_prewrite(b"k", b"p3", 30)).errors.is_empty());
    commit(&c, b"k", 30, 35);
    let p = prewrite(&c, b"k", share_prewrite(b"k", b"p2", 20));
    assert!(p.errors.is_empty(), "{p:?}");
    commit(&c, b"k", 20, 40);
    assert!(c.locks().is_empty());
    assert_eq!(c.commit_record(b"k", 20).unwrap().commit_ts, 40);
}

#[test]
fn lock_resolution_on_a_shared_key_touches_one_holder() {
    let c = cluster();
    let start = c.current_ts(T0);
    let mut r = share_req(&[b"k"], b"p1", start);
    r.lock_ttl = 100;
    assert!(lock(&c, r).errors.is_empty());
    assert!(lock(&c, share_req(&[b"k"], b"p2", start + 1)).errors.is_empty());
    // CheckTxnStatus on a shared-locked key: it cannot be a primary.
    let check = kvrpcpb::CheckTxnStatusRequest {
        primary_key: b(b"k"),
        lock_ts: start,
        caller_start_ts: start + 5,
        current_ts: c.current_ts(ms(500)),
        rollback_if_not_exist: true,
        ..Default::default()
    };
    let KvResponse::CheckTxnStatus(s) =
        send_at(&c, b"k", KvRequest::CheckTxnStatus(Box::new(check)), ms(500))
    else {
        panic!()
    };
    let mismatch = s.error.and_then(|e| e.primary_mismatch).expect("PrimaryMismatch");
    assert_eq!(mismatch.lock_info.unwrap().lock_type, Op::SharedLock as i32);
    // Cleanup of a live share is refused; of an expired one, it goes.
    let cleanup = |current: Instant| {
        let r = kvrpcpb::CleanupRequest {
            key: b(b"k"),
            start_version: start,
            current_ts: c.current_ts(current),
            ..Default::default()
        };
        let KvResponse::Cleanup(p) = send_at(&c, b"k", KvRequest::Cleanup(Box::new(r)), current)
        else {
            panic!()
        };
        *p
    };
    let live = cleanup(ms(50));
    assert_eq!(live.error.unwrap().locked.unwrap().lock_type, Op::SharedLock as i32);
    assert!(cleanup(ms(500)).error.is_none());
    assert_eq!(holders(&c, b"k"), vec![start + 1]);
    // A region-wide ResolveLock commits only the named holder's share.
    assert!(prewrite(&c, b"k", share_prewrite(b"k", b"p2", start + 1)).errors.is_empty());
    let resolve = kvrpcpb::ResolveLockRequest {
        start_version: start + 1,
        commit_version: start + 9,
        ..Default::default()
    };
    let KvResponse::ResolveLock(p) = send(&c, b"k", KvRequest::ResolveLock(Box::new(resolve)))
    else {
        panic!()
    };
    assert!(p.error.is_none(), "{p:?}");
    assert!(c.locks().is_empty());
    assert_eq!(c.commit_record(b"k", start + 1).unwrap().commit_ts, start + 9);
}

#[test]
fn pessimistic_rollback_without_keys_drops_only_that_share() {
    let c = cluster();
    assert!(lock(&c, share_req(&[b"k"], b"p1", 10)).errors.is_empty());
    assert!(lock(&c, share_req(&[b"k"], b"p2", 20)).errors.is_empty());
    pessimistic_rollback(&c, b"k", &[], 20, 20);
    assert_eq!(holders(&c, b"k"), vec![10]);
    assert!(c.commit_record(b"k", 20).is_none(), "a pessimistic rollback writes no record");
}

#[test]
fn waiting_on_shares_closes_a_deadlock_through_any_holder() {
    let c = cluster();
    assert!(lock(&c, lock_req(&[b"a"], 20, 20)).errors.is_empty());
    assert!(lock(&c, share_req(&[b"k"], b"p1", 10)).errors.is_empty());
    assert!(lock(&c, share_req(&[b"k"], b"p3", 30)).errors.is_empty());
    // 10 waits for 20's lock on `a`.
    let mut r10 = lock_req(&[b"a"], 10, 10);
    r10.wait_timeout = 0;
    let _t10 = parked(lock_waiting(&c, r10, T0));
    // 20 waits for the shares of 10 and 30: a cycle through 10.
    let mut r20 = lock_req(&[b"k"], 20, 20);
    r20.wait_timeout = 0;
    assert!(ready(lock_waiting(&c, r20.clone(), T0)).errors[0].locked.is_some(), "shrink-only");
    let answer = ready(lock_waiting(&c, r20, T0));
    let deadlock = answer.errors[0].deadlock.clone().expect("a deadlock");
    assert_eq!(&deadlock.lock_key[..], b"k");
    assert_eq!(c.lock_waiters(), 1);
}
