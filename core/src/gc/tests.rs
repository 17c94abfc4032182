//! Scripted runs of GC's machines over the fake cluster (it does not model
//! transactions, so `ScanLock`, `CheckTxnStatus`, `ResolveLock`,
//! `DeleteRange` and `UnsafeDestroyRange` answers are scripted).

use tikv_proto::kvrpcpb;

use super::*;
use crate::testing::{FakeCluster, Fault, drive, view};

/// The timestamp with version `v`.
fn ts(v: u64) -> Timestamp {
    Timestamp::from_version(v)
}

fn lock_info(key: &str, ts: u64) -> kvrpcpb::LockInfo {
    kvrpcpb::LockInfo {
        key: key.as_bytes().to_vec().into(),
        primary_lock: key.as_bytes().to_vec().into(),
        lock_version: ts,
        lock_ttl: 3000,
        txn_size: 1,
        lock_type: kvrpcpb::Op::Put as i32,
        ..Default::default()
    }
}

fn scan_answer(c: &mut FakeCluster, locks: Vec<kvrpcpb::LockInfo>) {
    let resp = kvrpcpb::ScanLockResponse { locks, ..Default::default() };
    c.fault("scan_lock", Fault::Respond(Box::new(KvResponse::ScanLock(Box::new(resp)))));
}

fn scan_requests(c: &FakeCluster) -> Vec<(String, String, u32, u64)> {
    c.received
        .iter()
        .filter_map(|r| match r {
            KvRequest::ScanLock(s) => Some((
                String::from_utf8_lossy(&s.start_key).into_owned(),
                String::from_utf8_lossy(&s.end_key).into_owned(),
                s.limit,
                s.max_version,
            )),
            _ => None,
        })
        .collect()
}

/// Locks are collected region by region up to the limit; each page asks
/// for what is left, within the region's part of the range.
#[test]
fn scan_locks_pages_region_by_region_up_to_the_limit() {
    let mut c = FakeCluster::new(&["m"]);
    scan_answer(&mut c, vec![lock_info("a", 5), lock_info("b", 6)]);
    scan_answer(&mut c, vec![lock_info("n", 7)]);
    let (log, result) = drive(scan_locks(&view(), KeyRange::all(), ts(10), 3), &mut c);
    let outcome = result.unwrap();
    let keys: Vec<&[u8]> = outcome.locks.iter().map(|l| l.key.as_bytes()).collect();
    assert_eq!(keys, [&b"a"[..], b"b", b"n"], "{log}");
    assert_eq!(
        scan_requests(&c),
        [("".into(), "m".into(), 3, 10), ("m".into(), "".into(), 1, 10)],
        "the second page asks for the one lock left"
    );
    // The limit was reached inside the second region: it is not counted done.
    assert_eq!(outcome.stat.completed_regions, 1);
}

/// A full page (GC_SCAN_LOCK_LIMIT locks) in one region is resolved, then
/// the same region is scanned again from just after its last lock.
#[test]
fn a_full_page_rescans_the_same_region_after_its_last_lock() {
    let mut c = FakeCluster::new(&[]);
    let page: Vec<kvrpcpb::LockInfo> = (0..GC_SCAN_LOCK_LIMIT)
        .map(|i| kvrpcpb::LockInfo {
            primary_lock: b"k0000".to_vec().into(),
            ..lock_info(&format!("k{i:04}"), 5)
        })
        .collect();
    scan_answer(&mut c, page);
    scan_answer(&mut c, vec![]);
    let committed = kvrpcpb::CheckTxnStatusResponse { commit_version: 6, ..Default::default() };
    c.fault(
        "check_txn_status",
        Fault::Respond(Box::new(KvResponse::CheckTxnStatus(Box::new(committed)))),
    );
    for _ in 0..4 {
        c.fault("resolve_lock", Fault::Respond(Box::new(KvResponse::ResolveLock(Box::default()))));
    }
    let (log, result) =
        drive(resolve_locks_for_range(&view(), KeyRange::new("", "z"), ts(10)), &mut c);
    assert_eq!(result.unwrap().stat.completed_regions, 1, "{log}");
    let scans = scan_requests(&c);
    assert_eq!(scans.len(), 2, "{scans:?}");
    assert_eq!(scans[1].0, "k1023\0", "the next page starts after the last lock");
    let resolved: usize = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::ResolveLock(r) => Some(r.keys.len()),
            _ => None,
        })
        .sum();
    assert_eq!(resolved, GC_SCAN_LOCK_LIMIT as usize, "every lock of the page resolved");
}

/// GC: the txn safe point stops at the barrier; every lock at or below it
/// is resolved (asked with `current_ts` = max, so TiKV decides its fate for
/// good, then cleaned up); then the GC safe point follows.
#[test]
fn gc_resolves_locks_below_the_safe_point_the_barrier_allows() {
    let mut c = FakeCluster::new(&["m"]);
    c.gc_barrier = Some(50);
    scan_answer(&mut c, vec![lock_info("a", 40)]);
    scan_answer(&mut c, vec![]);
    let committed = kvrpcpb::CheckTxnStatusResponse {
        commit_version: 45,
        action: kvrpcpb::Action::NoAction as i32,
        ..Default::default()
    };
    c.fault(
        "check_txn_status",
        Fault::Respond(Box::new(KvResponse::CheckTxnStatus(Box::new(committed)))),
    );
    c.fault("resolve_lock", Fault::Respond(Box::new(KvResponse::ResolveLock(Box::default()))));

    let (log, result) = drive(Gc::new(&view(), ts(100), 2), &mut c);
    let outcome = result.unwrap();
    assert_eq!(outcome.safe_point, ts(50), "{log}");
    assert_eq!(outcome.blocker.as_deref(), Some("barrier"));
    assert_eq!(outcome.resolved_regions, 2);
    assert_eq!((c.txn_safe_point, c.gc_safe_point), (50, 50));
    assert!(scan_requests(&c).iter().all(|s| s.3 == 50), "scanned below the safe point reached");
    let status = c.received.iter().find_map(|r| match r {
        KvRequest::CheckTxnStatus(s) => Some(s.clone()),
        _ => None,
    });
    let status = status.expect("the primary was asked");
    assert_eq!((status.lock_ts, status.current_ts, status.caller_start_ts), (40, u64::MAX, 0));
    let resolve = c.received.iter().find_map(|r| match r {
        KvRequest::ResolveLock(s) => Some(s.clone()),
        _ => None,
    });
    let resolve = resolve.expect("the lock was resolved");
    assert_eq!((resolve.start_version, resolve.commit_version), (40, 45));
    // The GC safe point moved only after every region was resolved.
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" send "))
        .filter_map(|l| {
            ["advance_txn_safe_point", "kv_scan_lock", "advance_gc_safe_point"]
                .into_iter()
                .find(|m| l.contains(m))
        })
        .collect();
    assert_eq!(order.first(), Some(&"advance_txn_safe_point"));
    assert_eq!(order.last(), Some(&"advance_gc_safe_point"));
}

/// A failing region fails the whole round: the GC safe point stays.
#[test]
fn a_failed_resolution_leaves_the_gc_safe_point_alone() {
    let mut c = FakeCluster::new(&[]);
    let failed = kvrpcpb::ScanLockResponse {
        error: Some(kvrpcpb::KeyError { abort: "io error".into(), ..Default::default() }),
        ..Default::default()
    };
    c.fault("scan_lock", Fault::Respond(Box::new(KvResponse::ScanLock(Box::new(failed)))));
    let (_, result) = drive(Gc::new(&view(), ts(100), 1), &mut c);
    assert!(matches!(result, Err(Error::KeyError(ref e)) if e.abort == "io error"), "{result:?}");
    assert_eq!((c.txn_safe_point, c.gc_safe_point), (100, 0));
}

/// `DeleteRange` goes to every region of the range with the region's part
/// and the `notify_only` flag; an unbounded end is refused up front.
#[test]
fn delete_range_sends_each_region_its_part() {
    let mut c = FakeCluster::new(&["d", "h"]);
    for _ in 0..3 {
        c.fault(
            "kv_delete_range",
            Fault::Respond(Box::new(KvResponse::DeleteRange(Box::default()))),
        );
    }
    let op = delete_range(&view(), KeyRange::new("b", "k"), true, 2).unwrap();
    let (_, result) = drive(op, &mut c);
    assert_eq!(result.unwrap().completed_regions, 3);
    let parts: Vec<(Vec<u8>, Vec<u8>, bool)> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::DeleteRange(d) => {
                Some((d.start_key.to_vec(), d.end_key.to_vec(), d.notify_only))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        parts,
        [
            (b"b".to_vec(), b"d".to_vec(), true),
            (b"d".to_vec(), b"h".to_vec(), true),
            (b"h".to_vec(), b"k".to_vec(), true)
        ]
    );
    assert!(matches!(
        delete_range(&view(), KeyRange::new("b", ""), false, 1),
        Err(Error::InvalidArgument(_))
    ));
}

/// `UnsafeDestroyRange` goes to every live store at once, skipping
/// tombstones; every store's failure is reported, by store.
#[test]
fn unsafe_destroy_range_asks_every_live_store_and_gathers_failures() {
    let mut c = FakeCluster::new(&[]);
    c.tombstones = vec![3];
    let failed =
        kvrpcpb::UnsafeDestroyRangeResponse { error: "disk full".into(), ..Default::default() };
    c.fault(
        "unsafe_destroy_range",
        Fault::Respond(Box::new(KvResponse::UnsafeDestroyRange(Box::new(failed)))),
    );
    c.fault("unsafe_destroy_range", Fault::Rpc(RpcError::Unavailable("store down".into())));
    let (log, result) = drive(UnsafeDestroyRange::new(&view(), KeyRange::new("a", "z")), &mut c);
    let Err(Error::Server(message)) = result else { panic!("{result:?}\n{log}") };
    assert!(message.contains("range failed on store 1: disk full"), "{message}");
    assert!(message.contains("store 2: "), "{message}");
    assert!(!message.contains("store 3"), "{message}");
    let sent = log.lines().filter(|l| l.contains(" send ") && l.contains("unsafe_destroy_range"));
    assert_eq!(sent.count(), 2, "{log}");

    // All well: Ok; empty range ends are refused (TiKV asserts on them).
    let mut c = FakeCluster::new(&[]);
    for _ in 0..3 {
        c.fault(
            "unsafe_destroy_range",
            Fault::Respond(Box::new(KvResponse::UnsafeDestroyRange(Box::default()))),
        );
    }
    let (_, result) = drive(UnsafeDestroyRange::new(&view(), KeyRange::new("a", "z")), &mut c);
    assert!(result.is_ok(), "{result:?}");
    let (_, result) = drive(UnsafeDestroyRange::new(&view(), KeyRange::new("a", "")), &mut c);
    assert!(matches!(result, Err(Error::InvalidArgument(_))), "{result:?}");
}

/// The cache is trusted for 90 s after a load; PD without the GC-states
/// API turns the check off; reads below the txn safe point are refused.
#[test]
fn the_txn_safe_point_cache_ages_and_the_visibility_rule_refuses_old_reads() {
    let cache = TxnSafePointCache::default();
    let t0 = Instant::from_millis(1_000);
    assert_eq!(cache.get(t0), CachedTxnSafePoint::Stale, "never loaded");
    cache.update(ts(50), t0);
    assert_eq!(cache.get(t0 + TXN_SAFE_POINT_MAX_AGE), CachedTxnSafePoint::Fresh(ts(50)));
    let later = t0 + TXN_SAFE_POINT_MAX_AGE + Duration::from_millis(1);
    assert_eq!(cache.get(later), CachedTxnSafePoint::Stale);

    assert!(check_visibility(ts(50), ts(50)).is_ok(), "the safe point itself is still readable");
    assert!(matches!(
        check_visibility(ts(49), ts(50)),
        Err(Error::TxnAbortedByGc { start_ts, txn_safe_point })
            if start_ts == ts(49) && txn_safe_point == ts(50)
    ));

    let failed = Err(Error::Rpc(RpcError::Unavailable("down".into())));
    assert!(cache.record(failed, later).is_err(), "a failed load is the caller's error");
    assert_eq!(cache.get(later), CachedTxnSafePoint::Stale);
    let old_pd = Err(Error::Rpc(RpcError::Unimplemented("GetGCState".into())));
    assert!(cache.record(old_pd, later).is_ok());
    assert_eq!(cache.get(later), CachedTxnSafePoint::Unsupported);
}

/// The load reads the txn safe point from PD's GC state.
#[test]
fn the_txn_safe_point_is_loaded_from_the_gc_state() {
    let mut c = FakeCluster::new(&[]);
    c.txn_safe_point = 77;
    let (log, result) = drive(LoadTxnSafePoint::new(&view()), &mut c);
    assert_eq!(result.unwrap(), ts(77), "{log}");
}
