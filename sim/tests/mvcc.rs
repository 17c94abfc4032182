//! Model-level tests of the transactional commands: percolator 2PC, async
//! commit, 1PC, lock resolution and reads that meet locks.

use bytes::Bytes;
use tikv_core::rpc::{KvRequest, KvResponse};
use tikv_core::time::{Duration, Instant};
use tikv_proto::kvrpcpb::{self, Op};
use tikv_sim::{ApiVersion, Cluster, ClusterConfig, WriteKind};

const T0: Instant = Instant::ZERO;

/// A V1 txn cluster split at `m` (memcomparable boundary).
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

fn region_id(c: &Cluster, key: &[u8]) -> u64 {
    c.region_for_region_key(&c.txn_region_key(key)).expect("a region").id
}

/// Sends to the leader of the region holding `key`, with a fresh context
/// (`tweak` may change it).
fn send_ctx(
    c: &Cluster,
    key: &[u8],
    mut req: KvRequest,
    now: Instant,
    tweak: impl FnOnce(&mut kvrpcpb::Context),
) -> KvResponse {
    let id = region_id(c, key);
    let mut ctx = c.context_for(id).unwrap();
    tweak(&mut ctx);
    *req.context_mut() = ctx;
    let store = c.leader_of(id).unwrap().store_id;
    c.handle_kv(store, req, now).expect("leader is up")
}

fn send(c: &Cluster, key: &[u8], req: KvRequest) -> KvResponse {
    send_ctx(c, key, req, T0, |_| {})
}

fn m(op: Op, key: &[u8], value: &[u8]) -> kvrpcpb::Mutation {
    kvrpcpb::Mutation { op: op as i32, key: b(key), value: b(value), ..Default::default() }
}

fn prewrite_req(
    muts: Vec<kvrpcpb::Mutation>,
    primary: &[u8],
    start: u64,
) -> kvrpcpb::PrewriteRequest {
    kvrpcpb::PrewriteRequest {
        mutations: muts,
        primary_lock: b(primary),
        start_version: start,
        lock_ttl: 3000,
        txn_size: 1,
        ..Default::default()
    }
}

fn prewrite(c: &Cluster, r: kvrpcpb::PrewriteRequest) -> kvrpcpb::PrewriteResponse {
    let key = r.mutations[0].key.clone();
    match send(c, &key, KvRequest::Prewrite(Box::new(r))) {
        KvResponse::Prewrite(p) => {
            assert!(p.region_error.is_none(), "{:?}", p.region_error);
            *p
        }
        other => panic!("{other:?}"),
    }
}

fn commit(c: &Cluster, keys: &[&[u8]], start: u64, commit_ts: u64) -> kvrpcpb::CommitResponse {
    let r = kvrpcpb::CommitRequest {
        keys: keys.iter().map(|k| b(k)).collect(),
        start_version: start,
        commit_version: commit_ts,
        ..Default::default()
    };
    match send(c, keys[0], KvRequest::Commit(Box::new(r))) {
        KvResponse::Commit(p) => *p,
        other => panic!("{other:?}"),
    }
}

fn get_ctx(
    c: &Cluster,
    key: &[u8],
    ts: u64,
    tweak: impl FnOnce(&mut kvrpcpb::Context),
) -> kvrpcpb::GetResponse {
    let r = kvrpcpb::GetRequest { key: b(key), version: ts, ..Default::default() };
    match send_ctx(c, key, KvRequest::Get(Box::new(r)), T0, tweak) {
        KvResponse::Get(g) => *g,
        other => panic!("{other:?}"),
    }
}

fn get(c: &Cluster, key: &[u8], ts: u64) -> kvrpcpb::GetResponse {
    get_ctx(c, key, ts, |_| {})
}

fn value(c: &Cluster, key: &[u8], ts: u64) -> Option<Vec<u8>> {
    let g = get(c, key, ts);
    assert!(g.error.is_none(), "{:?}", g.error);
    (!g.not_found).then(|| g.value.to_vec())
}

fn check_txn_status(
    c: &Cluster,
    r: kvrpcpb::CheckTxnStatusRequest,
    now: Instant,
) -> kvrpcpb::CheckTxnStatusResponse {
    let key = r.primary_key.clone();
    match send_ctx(c, &key, KvRequest::CheckTxnStatus(Box::new(r)), now, |_| {}) {
        KvResponse::CheckTxnStatus(s) => *s,
        other => panic!("{other:?}"),
    }
}

/// Prewrites and commits `key = value` in one transaction.
fn put(c: &Cluster, key: &[u8], value: &[u8], start: u64, commit_ts: u64) {
    let p = prewrite(c, prewrite_req(vec![m(Op::Put, key, value)], key, start));
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let r = commit(c, &[key], start, commit_ts);
    assert!(r.error.is_none(), "{:?}", r.error);
}

#[test]
fn prewrite_commit_read_at_various_ts() {
    let c = cluster();
    let p =
        prewrite(&c, prewrite_req(vec![m(Op::Put, b"a", b"1"), m(Op::Put, b"b", b"2")], b"a", 10));
    assert!(p.errors.is_empty());
    assert_eq!(p.min_commit_ts, 0, "2PC has no min_commit_ts in the response");
    assert_eq!(c.locks().len(), 2);
    assert!(commit(&c, &[b"a", b"b"], 10, 20).error.is_none());
    assert!(c.locks().is_empty());
    assert_eq!(value(&c, b"a", 19), None);
    assert_eq!(value(&c, b"a", 20).as_deref(), Some(&b"1"[..]));
    assert_eq!(value(&c, b"b", 100).as_deref(), Some(&b"2"[..]));
    // A later delete hides the value from then on only.
    let p = prewrite(&c, prewrite_req(vec![m(Op::Del, b"a", b"")], b"a", 30));
    assert!(p.errors.is_empty());
    assert!(commit(&c, &[b"a"], 30, 40).error.is_none());
    assert_eq!(value(&c, b"a", 39).as_deref(), Some(&b"1"[..]));
    assert_eq!(value(&c, b"a", 40), None);
    let rec = c.commit_record(b"a", 30).unwrap();
    assert_eq!((rec.kind, rec.commit_ts), (WriteKind::Delete, 40));
    assert_eq!(c.mvcc_snapshot(25).len(), 2);
    assert_eq!(c.mvcc_snapshot(45).keys().collect::<Vec<_>>(), vec![&b"b".to_vec()]);
    // Commit is idempotent; need_commit_ts reports the commit ts.
    let again = commit(&c, &[b"a"], 30, 40);
    assert!(again.error.is_none());
    let g = {
        let r = kvrpcpb::GetRequest {
            key: b(b"b"),
            version: 50,
            need_commit_ts: true,
            ..Default::default()
        };
        match send(&c, b"b", KvRequest::Get(Box::new(r))) {
            KvResponse::Get(g) => g,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(g.commit_ts, 20);
}

#[test]
fn write_conflict_and_already_exist() {
    let c = cluster();
    put(&c, b"k", b"v1", 10, 20);
    // A txn that started before the commit conflicts.
    let p = prewrite(&c, prewrite_req(vec![m(Op::Put, b"k", b"v2")], b"k", 15));
    let conflict = p.errors[0].conflict.as_ref().expect("write conflict");
    assert_eq!(
        (conflict.start_ts, conflict.conflict_ts, conflict.conflict_commit_ts),
        (15, 10, 20)
    );
    assert_eq!(&conflict.key[..], b"k");
    assert_eq!(&conflict.primary[..], b"k");
    assert!(c.locks().is_empty(), "a failed prewrite leaves nothing");
    // Insert on an existing key.
    let p = prewrite(&c, prewrite_req(vec![m(Op::Insert, b"k", b"v3")], b"k", 30));
    assert_eq!(&p.errors[0].already_exist.as_ref().unwrap().key[..], b"k");
    // CheckNotExists passes on a missing key and writes no lock.
    let p = prewrite(&c, prewrite_req(vec![m(Op::CheckNotExists, b"new", b"")], b"new", 30));
    assert!(p.errors.is_empty());
    assert!(c.locks().is_empty());
}

#[test]
fn reader_meets_lock_resolved_and_committed_locks() {
    let c = cluster();
    put(&c, b"k", b"old", 5, 6);
    let p = prewrite(
        &c,
        prewrite_req(vec![m(Op::Put, b"k", b"new"), m(Op::Put, b"k2", b"x")], b"k", 10),
    );
    assert!(p.errors.is_empty());
    // A read below the lock ts does not see it.
    assert_eq!(value(&c, b"k", 9).as_deref(), Some(&b"old"[..]));
    let g = get(&c, b"k", 11);
    let info = g.error.unwrap().locked.expect("key is locked");
    assert_eq!(
        (info.lock_version, &info.primary_lock[..], &info.key[..]),
        (10, &b"k"[..], &b"k"[..])
    );
    assert_eq!((info.lock_ttl, info.txn_size, info.lock_type), (3000, 1, Op::Put as i32));
    // resolved_locks: read past the lock.
    let g = get_ctx(&c, b"k", 11, |ctx| ctx.resolved_locks = vec![10]);
    assert_eq!(&g.value[..], b"old");
    // committed_locks: read the lock's value.
    let g = get_ctx(&c, b"k", 11, |ctx| ctx.committed_locks = vec![10]);
    assert_eq!(&g.value[..], b"new");
    // Reads raised max_ts.
    assert_eq!(c.max_ts(), 11);
    // BatchGet: locked key as an error pair.
    let r = kvrpcpb::BatchGetRequest {
        keys: vec![b(b"k"), b(b"zz")],
        version: 11,
        ..Default::default()
    };
    let KvResponse::BatchGet(bg) = send(&c, b"k", KvRequest::BatchGet(Box::new(r))) else {
        panic!()
    };
    assert!(bg.region_error.is_some(), "zz lives in the other region");
    let r = kvrpcpb::BatchGetRequest {
        keys: vec![b(b"k"), b(b"k2")],
        version: 11,
        ..Default::default()
    };
    let KvResponse::BatchGet(bg) = send(&c, b"k", KvRequest::BatchGet(Box::new(r))) else {
        panic!()
    };
    assert_eq!(bg.pairs.len(), 2);
    assert!(bg.pairs.iter().all(|p| p.error.as_ref().is_some_and(|e| e.locked.is_some())));
}

#[test]
fn scan_forward_reverse_with_locks() {
    let c = cluster();
    for (i, k) in [&b"a"[..], b"b", b"c", b"d"].iter().enumerate() {
        put(&c, k, &[b'0' + i as u8], 10 + 2 * i as u64, 11 + 2 * i as u64);
    }
    let p = prewrite(&c, prewrite_req(vec![m(Op::Put, b"c", b"locked")], b"c", 50));
    assert!(p.errors.is_empty());
    let scan = |start: &[u8], end: &[u8], limit: u32, reverse: bool, key_only: bool| {
        let r = kvrpcpb::ScanRequest {
            start_key: b(start),
            end_key: b(end),
            limit,
            version: 100,
            reverse,
            key_only,
            ..Default::default()
        };
        match send(&c, b"a", KvRequest::Scan(Box::new(r))) {
            KvResponse::Scan(s) => s,
            other => panic!("{other:?}"),
        }
    };
    let s = scan(b"a", b"", 10, false, false);
    let keys: Vec<_> = s.pairs.iter().map(|p| p.key.to_vec()).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
    assert!(s.pairs[2].error.as_ref().unwrap().locked.is_some());
    assert_eq!(&s.pairs[1].value[..], b"1");
    let s = scan(b"a", b"c", 10, false, true);
    assert_eq!(s.pairs.len(), 2);
    assert!(s.pairs[0].value.is_empty(), "key_only");
    // Reverse from below "d" down to "b" inclusive.
    let s = scan(b"d", b"b", 10, true, false);
    let keys: Vec<_> = s.pairs.iter().map(|p| p.key.to_vec()).collect();
    assert_eq!(keys, vec![b"c".to_vec(), b"b".to_vec()]);
    let s = scan(b"a", b"", 2, false, false);
    assert_eq!(s.pairs.len(), 2);
}

#[test]
fn check_txn_status_ttl_expiry_in_physical_domain() {
    let c = cluster();
    let start = c.current_ts(T0);
    let mut r = prewrite_req(vec![m(Op::Put, b"p", b"v")], b"p", start);
    r.lock_ttl = 1000;
    r.min_commit_ts = start + 1;
    assert!(prewrite(&c, r).errors.is_empty());
    let status = |now: Instant, caller: u64| {
        check_txn_status(
            &c,
            kvrpcpb::CheckTxnStatusRequest {
                primary_key: b(b"p"),
                lock_ts: start,
                caller_start_ts: caller,
                current_ts: c.current_ts(now),
                ..Default::default()
            },
            now,
        )
    };
    // Alive: 1000 ms after start exactly is not yet expired (TiKV compares strictly).
    let caller = c.current_ts(T0 + Duration::from_millis(500));
    let s = status(T0 + Duration::from_millis(1000), caller);
    assert_eq!(s.lock_ttl, 1000);
    assert_eq!(s.action, kvrpcpb::Action::MinCommitTsPushed as i32);
    let info = s.lock_info.expect("lock info");
    assert!(info.min_commit_ts > caller);
    assert_eq!(c.locks()[0].min_commit_ts, info.min_commit_ts, "the push is persisted");
    // Expired: rolled back.
    let s = status(T0 + Duration::from_millis(1001), 0);
    assert_eq!(s.action, kvrpcpb::Action::TtlExpireRollback as i32);
    assert!(c.locks().is_empty());
    assert_eq!(c.commit_record(b"p", start).unwrap().kind, WriteKind::Rollback);
    // Rolled back already: no action, commit_version 0.
    let s = status(T0 + Duration::from_millis(2000), 0);
    assert_eq!((s.action, s.commit_version, s.lock_ttl), (0, 0, 0));
    assert!(s.error.is_none());
}

#[test]
fn check_txn_status_committed_missing_and_primary_mismatch() {
    let c = cluster();
    put(&c, b"p", b"v", 10, 20);
    let req = |lock_ts: u64, rollback: bool| kvrpcpb::CheckTxnStatusRequest {
        primary_key: b(b"p"),
        lock_ts,
        current_ts: 1 << 40,
        rollback_if_not_exist: rollback,
        ..Default::default()
    };
    assert_eq!(check_txn_status(&c, req(10, false), T0).commit_version, 20);
    let s = check_txn_status(&c, req(30, false), T0);
    let nf = s.error.unwrap().txn_not_found.unwrap();
    assert_eq!((nf.start_ts, &nf.primary_key[..]), (30, &b"p"[..]));
    let s = check_txn_status(&c, req(30, true), T0);
    assert_eq!(s.action, kvrpcpb::Action::LockNotExistRollback as i32);
    assert_eq!(c.commit_record(b"p", 30).unwrap().kind, WriteKind::Rollback);
    // verify_is_primary on a secondary lock.
    let p = prewrite(&c, prewrite_req(vec![m(Op::Put, b"s", b"v")], b"p", 40));
    assert!(p.errors.is_empty());
    let mut r = req(40, false);
    r.primary_key = b(b"s");
    r.verify_is_primary = true;
    let s = check_txn_status(&c, r, T0);
    let mismatch = s.error.unwrap().primary_mismatch.unwrap();
    assert_eq!(&mismatch.lock_info.unwrap().primary_lock[..], b"p");
}

#[test]
fn rollback_protects_against_late_prewrite() {
    let c = cluster();
    let r = kvrpcpb::BatchRollbackRequest {
        keys: vec![b(b"k")],
        start_version: 10,
        ..Default::default()
    };
    let KvResponse::BatchRollback(rb) = send(&c, b"k", KvRequest::BatchRollback(Box::new(r)))
    else {
        panic!()
    };
    assert!(rb.error.is_none());
    let p = prewrite(&c, prewrite_req(vec![m(Op::Put, b"k", b"v")], b"k", 10));
    let conflict = p.errors[0].conflict.as_ref().expect("self rolled back");
    assert_eq!(conflict.reason, kvrpcpb::write_conflict::Reason::SelfRolledBack as i32);
    // Commit after rollback: the lock is gone.
    let r = commit(&c, &[b"k"], 10, 20);
    assert!(r.error.unwrap().txn_lock_not_found.is_some());
    // Rolling back a committed txn fails; Cleanup reports the commit ts.
    put(&c, b"j", b"v", 30, 40);
    let r = kvrpcpb::BatchRollbackRequest {
        keys: vec![b(b"j")],
        start_version: 30,
        ..Default::default()
    };
    let KvResponse::BatchRollback(rb) = send(&c, b"j", KvRequest::BatchRollback(Box::new(r)))
    else {
        panic!()
    };
    assert!(rb.error.unwrap().abort.contains("Committed"));
    let r = kvrpcpb::CleanupRequest { key: b(b"j"), start_version: 30, ..Default::default() };
    let KvResponse::Cleanup(cl) = send(&c, b"j", KvRequest::Cleanup(Box::new(r))) else { panic!() };
    assert_eq!(cl.commit_version, 40);
}

#[test]
fn commit_ts_expired_and_lock_not_found() {
    let c = cluster();
    let mut r = prewrite_req(vec![m(Op::Put, b"k", b"v")], b"k", 10);
    r.min_commit_ts = 50;
    assert!(prewrite(&c, r).errors.is_empty());
    let e = commit(&c, &[b"k"], 10, 40).error.unwrap().commit_ts_expired.unwrap();
    assert_eq!((e.start_ts, e.attempted_commit_ts, e.min_commit_ts), (10, 40, 50));
    assert!(commit(&c, &[b"k"], 10, 50).error.is_none());
    let e = commit(&c, &[b"x"], 60, 70).error.unwrap();
    assert_eq!(&e.txn_lock_not_found.unwrap().key[..], b"x");
}

#[test]
fn async_commit_and_check_secondary_locks() {
    let c = cluster();
    // A read at 100 pushes max_ts.
    assert_eq!(value(&c, b"a", 100), None);
    let mut r = prewrite_req(vec![m(Op::Put, b"a", b"1"), m(Op::Put, b"b", b"2")], b"a", 50);
    r.use_async_commit = true;
    r.secondaries = vec![b(b"b")];
    r.min_commit_ts = 51;
    let p = prewrite(&c, r);
    assert!(p.errors.is_empty());
    assert_eq!(p.min_commit_ts, 101, "max(max_ts + 1, start_ts + 1, min_commit_ts)");
    let locks = c.locks();
    assert!(locks.iter().all(|l| l.use_async_commit && l.min_commit_ts == 101));
    assert_eq!(locks[0].secondaries, vec![b(b"b")], "the primary lists the secondaries");
    assert!(locks[1].secondaries.is_empty());
    // CheckTxnStatus reports the async-commit lock without touching it.
    let s = check_txn_status(
        &c,
        kvrpcpb::CheckTxnStatusRequest {
            primary_key: b(b"a"),
            lock_ts: 50,
            current_ts: u64::MAX >> 1,
            ..Default::default()
        },
        T0,
    );
    assert!(s.lock_info.unwrap().use_async_commit);
    assert_eq!(c.locks().len(), 2);
    let csl = |keys: Vec<Bytes>| {
        let r =
            kvrpcpb::CheckSecondaryLocksRequest { keys, start_version: 50, ..Default::default() };
        match send(&c, b"a", KvRequest::CheckSecondaryLocks(Box::new(r))) {
            KvResponse::CheckSecondaryLocks(r) => r,
            other => panic!("{other:?}"),
        }
    };
    let r = csl(vec![b(b"a"), b(b"b")]);
    assert_eq!((r.locks.len(), r.commit_ts), (2, 0));
    // The client crashed after committing one key: recover the commit ts.
    assert!(commit(&c, &[b"b"], 50, 101).error.is_none());
    let r = csl(vec![b(b"a"), b(b"b")]);
    assert_eq!(r.commit_ts, 101);
    // Resolve the rest with that commit ts.
    let r = kvrpcpb::ResolveLockRequest {
        start_version: 50,
        commit_version: 101,
        ..Default::default()
    };
    let KvResponse::ResolveLock(rl) = send(&c, b"a", KvRequest::ResolveLock(Box::new(r))) else {
        panic!()
    };
    assert!(rl.error.is_none());
    assert!(c.locks().is_empty());
    assert_eq!(value(&c, b"a", 200).as_deref(), Some(&b"1"[..]));
    // A missing secondary is rolled back (protected) by CheckSecondaryLocks.
    let r = kvrpcpb::CheckSecondaryLocksRequest {
        keys: vec![b(b"c")],
        start_version: 300,
        ..Default::default()
    };
    let KvResponse::CheckSecondaryLocks(r) =
        send(&c, b"c", KvRequest::CheckSecondaryLocks(Box::new(r)))
    else {
        panic!()
    };
    assert_eq!((r.locks.len(), r.commit_ts), (0, 0));
    assert_eq!(c.commit_record(b"c", 300).unwrap().kind, WriteKind::Rollback);
}

#[test]
fn commit_ts_too_large_falls_back_to_2pc() {
    let c = cluster();
    assert_eq!(value(&c, b"a", 1000), None);
    let mut r = prewrite_req(vec![m(Op::Put, b"a", b"1")], b"a", 50);
    r.use_async_commit = true;
    r.max_commit_ts = 500;
    let p = prewrite(&c, r);
    assert!(p.errors.is_empty());
    assert_eq!(p.min_commit_ts, 0);
    assert!(!c.locks()[0].use_async_commit);
    let mut r = prewrite_req(vec![m(Op::Put, b"b", b"1")], b"b", 60);
    r.try_one_pc = true;
    r.max_commit_ts = 500;
    let p = prewrite(&c, r);
    assert_eq!(p.one_pc_commit_ts, 0);
    assert_eq!(c.locks().len(), 2, "fell back: a lock instead of a commit record");
}

#[test]
fn one_pc_writes_commit_records() {
    let c = cluster();
    assert_eq!(value(&c, b"a", 70), None);
    let mut r = prewrite_req(
        vec![m(Op::Put, b"a", b"1"), m(Op::Del, b"b", b""), m(Op::Lock, b"c", b"")],
        b"a",
        50,
    );
    r.try_one_pc = true;
    let p = prewrite(&c, r);
    assert!(p.errors.is_empty());
    assert_eq!(p.one_pc_commit_ts, 71);
    assert!(c.locks().is_empty());
    assert_eq!(c.commit_record(b"a", 50).unwrap().commit_ts, 71);
    assert_eq!(c.commit_record(b"c", 50).unwrap().kind, WriteKind::Lock);
    assert_eq!(value(&c, b"a", 71).as_deref(), Some(&b"1"[..]));
    assert_eq!(value(&c, b"a", 70), None);
}

/// TiKV's `check_committed_record_on_err`: a prewrite retried after its
/// transaction committed (its first answer was lost) meets its own commit
/// record, writes nothing and succeeds with the commit ts, reported as the
/// 1PC commit ts (1PC) or `min_commit_ts` (async commit); plain 2PC gets
/// zeros. Another transaction's newer commit on the key does not change
/// that, but a rolled-back transaction still conflicts.
#[test]
fn a_prewrite_retried_after_the_commit_succeeds_with_the_commit_ts() {
    let c = cluster();
    let muts = || vec![m(Op::Put, b"a", b"1"), m(Op::Put, b"b", b"2")];
    let mut r = prewrite_req(muts(), b"a", 50);
    r.try_one_pc = true;
    let first = prewrite(&c, r.clone());
    assert_eq!(first.one_pc_commit_ts, 51);
    let retry = prewrite(&c, r.clone());
    assert!(retry.errors.is_empty(), "{:?}", retry.errors);
    assert_eq!((retry.one_pc_commit_ts, retry.min_commit_ts), (51, 0));
    // A newer transaction overwrites `a`, then the retry comes again.
    put(&c, b"a", b"9", 60, 61);
    let late = prewrite(&c, r.clone());
    assert!(late.errors.is_empty(), "{:?}", late.errors);
    assert_eq!(late.one_pc_commit_ts, 51);
    assert!(c.locks().is_empty(), "nothing written: {:?}", c.locks());
    assert_eq!(value(&c, b"a", 70).as_deref(), Some(&b"9"[..]));
    // The same retry as async commit reports the commit ts as min_commit_ts.
    let mut r2 = r.clone();
    r2.try_one_pc = false;
    r2.use_async_commit = true;
    r2.secondaries = vec![b(b"b")];
    let async_retry = prewrite(&c, r2);
    assert_eq!((async_retry.min_commit_ts, async_retry.one_pc_commit_ts), (51, 0));
    // ... and as plain 2PC it answers zeros, writing nothing.
    let mut r3 = r;
    r3.try_one_pc = false;
    let plain = prewrite(&c, r3);
    assert!(plain.errors.is_empty() && plain.min_commit_ts == 0 && plain.one_pc_commit_ts == 0);
    assert!(c.locks().is_empty());
    // A rolled-back transaction's retry is still refused.
    let rolled = prewrite_req(vec![m(Op::Put, b"x", b"1")], b"x", 80);
    let cleanup = kvrpcpb::BatchRollbackRequest {
        keys: vec![b(b"x")],
        start_version: 80,
        ..Default::default()
    };
    let _ = send(&c, b"x", KvRequest::from(cleanup));
    let refused = prewrite(&c, rolled);
    assert!(
        refused.errors.first().and_then(|e| e.conflict.as_ref()).is_some(),
        "{:?}",
        refused.errors
    );
}

#[test]
fn resolve_lock_by_keys_region_wide_and_txn_infos() {
    let c = cluster();
    for (start, key) in [(10u64, &b"a"[..]), (20, b"b"), (30, b"c"), (40, b"d")] {
        assert!(
            prewrite(&c, prewrite_req(vec![m(Op::Put, key, b"v")], key, start)).errors.is_empty()
        );
    }
    let resolve = |r: kvrpcpb::ResolveLockRequest| match send(
        &c,
        b"a",
        KvRequest::ResolveLock(Box::new(r)),
    ) {
        KvResponse::ResolveLock(rl) => rl,
        other => panic!("{other:?}"),
    };
    // By keys: commit "a".
    let rl = resolve(kvrpcpb::ResolveLockRequest {
        start_version: 10,
        commit_version: 15,
        keys: vec![b(b"a")],
        ..Default::default()
    });
    assert!(rl.error.is_none());
    assert_eq!(c.commit_record(b"a", 10).unwrap().commit_ts, 15);
    // Region-wide: roll back txn 20.
    let rl = resolve(kvrpcpb::ResolveLockRequest { start_version: 20, ..Default::default() });
    assert!(rl.error.is_none());
    assert_eq!(c.commit_record(b"b", 20).unwrap().kind, WriteKind::Rollback);
    // Batch: commit 30, roll back 40.
    let rl = resolve(kvrpcpb::ResolveLockRequest {
        txn_infos: vec![
            kvrpcpb::TxnInfo { txn: 30, status: 35, ..Default::default() },
            kvrpcpb::TxnInfo { txn: 40, status: 0, ..Default::default() },
        ],
        ..Default::default()
    });
    assert!(rl.error.is_none());
    assert!(c.locks().is_empty());
    let snap = c.mvcc_snapshot(100);
    assert_eq!(snap.keys().cloned().collect::<Vec<_>>(), vec![b"a".to_vec(), b"c".to_vec()]);
}

#[test]
fn heartbeat_and_scan_lock() {
    let c = cluster();
    let p =
        prewrite(&c, prewrite_req(vec![m(Op::Put, b"a", b"1"), m(Op::Put, b"b", b"2")], b"a", 10));
    assert!(p.errors.is_empty());
    assert!(prewrite(&c, prewrite_req(vec![m(Op::Put, b"c", b"3")], b"c", 30)).errors.is_empty());
    let hb = |ttl: u64, start: u64| {
        let r = kvrpcpb::TxnHeartBeatRequest {
            primary_lock: b(b"a"),
            start_version: start,
            advise_lock_ttl: ttl,
            ..Default::default()
        };
        match send(&c, b"a", KvRequest::TxnHeartBeat(Box::new(r))) {
            KvResponse::TxnHeartBeat(h) => h,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(hb(5000, 10).lock_ttl, 5000);
    assert_eq!(hb(100, 10).lock_ttl, 5000, "ttl never shrinks");
    assert!(hb(100, 11).error.unwrap().txn_not_found.is_some());
    let scan_lock = |max_version: u64, limit: u32| {
        let r = kvrpcpb::ScanLockRequest { max_version, limit, ..Default::default() };
        match send(&c, b"a", KvRequest::ScanLock(Box::new(r))) {
            KvResponse::ScanLock(s) => s.locks,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(scan_lock(20, 0).len(), 2);
    assert_eq!(scan_lock(30, 0).len(), 3);
    assert_eq!(scan_lock(30, 1).len(), 1);
    assert_eq!(scan_lock(5, 0).len(), 0);
}

#[test]
fn pessimistic_lock_prewrite_and_rollback() {
    let c = cluster();
    put(&c, b"k", b"v0", 5, 6);
    let lock = |start: u64, for_update: u64| {
        let r = kvrpcpb::PessimisticLockRequest {
            mutations: vec![m(Op::PessimisticLock, b"k", b"")],
            primary_lock: b(b"k"),
            start_version: start,
            for_update_ts: for_update,
            lock_ttl: 3000,
            return_values: true,
            ..Default::default()
        };
        match send(&c, b"k", KvRequest::PessimisticLock(Box::new(r))) {
            KvResponse::PessimisticLock(p) => p,
            other => panic!("{other:?}"),
        }
    };
    let p = lock(10, 10);
    assert!(p.errors.is_empty());
    assert_eq!(p.values, vec![b(b"v0")]);
    assert_eq!(c.locks()[0].lock_type, Op::PessimisticLock as i32);
    // Another txn: no waiting, KeyIsLocked at once.
    assert!(lock(11, 11).errors[0].locked.is_some());
    // A pessimistic lock does not block readers.
    assert_eq!(value(&c, b"k", 100).as_deref(), Some(&b"v0"[..]));
    let mut r = prewrite_req(vec![m(Op::Put, b"k", b"v1")], b"k", 10);
    r.for_update_ts = 10;
    r.pessimistic_actions =
        vec![kvrpcpb::prewrite_request::PessimisticAction::DoPessimisticCheck as i32];
    assert!(prewrite(&c, r).errors.is_empty());
    assert_eq!(c.locks()[0].lock_type, Op::Put as i32);
    assert!(commit(&c, &[b"k"], 10, 12).error.is_none());
    // Lock then roll back pessimistically.
    assert!(lock(20, 20).errors.is_empty());
    let r = kvrpcpb::PessimisticRollbackRequest {
        keys: vec![b(b"k")],
        start_version: 20,
        for_update_ts: 20,
        ..Default::default()
    };
    let KvResponse::PessimisticRollback(pr) =
        send(&c, b"k", KvRequest::PessimisticRollback(Box::new(r)))
    else {
        panic!()
    };
    assert!(pr.errors.is_empty());
    assert!(c.locks().is_empty());
    // A for_update_ts below the latest commit conflicts.
    let e = lock(8, 8).errors.remove(0);
    assert_eq!(e.conflict.unwrap().conflict_commit_ts, 12);
}

#[test]
fn region_checks_and_key_mode() {
    let c = cluster();
    // "z" is not in the region of "a": a region error, nothing written.
    let r = prewrite_req(vec![m(Op::Put, b"a", b"1"), m(Op::Put, b"z", b"2")], b"a", 10);
    let KvResponse::Prewrite(p) = send(&c, b"a", KvRequest::Prewrite(Box::new(r))) else {
        panic!()
    };
    assert!(p.region_error.unwrap().key_not_in_region.is_some());
    assert!(c.locks().is_empty());
    // V1 txn boundaries are memcomparable.
    let regions = c.regions();
    assert_eq!(regions[0].end_key.to_vec(), c.txn_region_key(b"m"));

    let v2 = Cluster::new(ClusterConfig {
        api_version: ApiVersion::V2,
        split_keys: vec![b"x\0\0\0m".to_vec()],
        ..ClusterConfig::default()
    });
    let p = prewrite(&v2, prewrite_req(vec![m(Op::Put, b"x\0\0\0a", b"1")], b"x\0\0\0a", 10));
    assert!(p.errors.is_empty());
    let p = prewrite(&v2, prewrite_req(vec![m(Op::Put, b"r\0\0\0a", b"1")], b"r\0\0\0a", 10));
    assert!(p.errors[0].abort.contains("Key mode mismatched"));
    assert_eq!(v2.locks().len(), 1);
}
