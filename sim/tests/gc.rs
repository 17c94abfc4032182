//! Model-level tests of GC: PD's GC states (safe points, barriers with a
//! TTL, keyspace redirection), MVCC GC in the stores, `ScanLock` paging,
//! `DeleteRange` and `UnsafeDestroyRange`.

use bytes::Bytes;
use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse};
use tikv_core::time::{Duration, Instant};
use tikv_proto::kvrpcpb::{self, Op};
use tikv_proto::pdpb;
use tikv_sim::{Cluster, ClusterConfig, WriteKind};

const T0: Instant = Instant::ZERO;

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

fn header(c: &Cluster) -> Option<pdpb::RequestHeader> {
    Some(pdpb::RequestHeader { cluster_id: c.config().cluster_id, ..Default::default() })
}

fn scope(keyspace_id: u32) -> Option<pdpb::KeyspaceScope> {
    Some(pdpb::KeyspaceScope {
        keyspace: Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(keyspace_id)),
    })
}

fn pd(c: &Cluster, req: PdRequest, now: Instant) -> PdResponse {
    c.handle_pd(0, req, now).expect("the leader answers")
}

fn error_message(h: &Option<pdpb::ResponseHeader>) -> Option<String> {
    h.as_ref().and_then(|h| h.error.as_ref()).map(|e| {
        assert_eq!(e.r#type, pdpb::ErrorType::Unknown as i32);
        e.message.clone()
    })
}

fn gc_state(c: &Cluster, keyspace_id: Option<u32>, now: Instant) -> pdpb::GetGcStateResponse {
    let req = pdpb::GetGcStateRequest {
        header: header(c),
        keyspace_scope: keyspace_id.and_then(scope),
        ..Default::default()
    };
    match pd(c, PdRequest::GetGcState(Box::new(req)), now) {
        PdResponse::GetGcState(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn advance_txn(
    c: &Cluster,
    keyspace_id: Option<u32>,
    target: u64,
    now: Instant,
) -> pdpb::AdvanceTxnSafePointResponse {
    let req = pdpb::AdvanceTxnSafePointRequest {
        header: header(c),
        keyspace_scope: keyspace_id.and_then(scope),
        target,
    };
    match pd(c, PdRequest::AdvanceTxnSafePoint(Box::new(req)), now) {
        PdResponse::AdvanceTxnSafePoint(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn advance_gc(
    c: &Cluster,
    keyspace_id: Option<u32>,
    target: u64,
) -> pdpb::AdvanceGcSafePointResponse {
    let req = pdpb::AdvanceGcSafePointRequest {
        header: header(c),
        keyspace_scope: keyspace_id.and_then(scope),
        target,
    };
    match pd(c, PdRequest::AdvanceGcSafePoint(Box::new(req)), T0) {
        PdResponse::AdvanceGcSafePoint(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn set_barrier(
    c: &Cluster,
    id: &str,
    ts: u64,
    ttl_seconds: i64,
    now: Instant,
) -> pdpb::SetGcBarrierResponse {
    let req = pdpb::SetGcBarrierRequest {
        header: header(c),
        keyspace_scope: None,
        barrier_id: id.to_owned(),
        barrier_ts: ts,
        ttl_seconds,
    };
    match pd(c, PdRequest::SetGcBarrier(Box::new(req)), now) {
        PdResponse::SetGcBarrier(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn delete_barrier(c: &Cluster, id: &str) -> pdpb::DeleteGcBarrierResponse {
    let req = pdpb::DeleteGcBarrierRequest {
        header: header(c),
        keyspace_scope: None,
        barrier_id: id.to_owned(),
    };
    match pd(c, PdRequest::DeleteGcBarrier(Box::new(req)), T0) {
        PdResponse::DeleteGcBarrier(r) => *r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn txn_safe_point_stops_at_live_barriers_and_never_goes_back() {
    let c = cluster();
    let r = advance_txn(&c, None, 100, T0);
    assert_eq!(error_message(&r.header), None);
    assert_eq!((r.old_txn_safe_point, r.new_txn_safe_point), (0, 100));
    assert!(r.blocker_description.is_empty());

    let r = advance_txn(&c, None, 50, T0);
    assert_eq!(
        error_message(&r.header).as_deref(),
        Some(
            "[PD:gc:ErrDecreasingTxnSafePoint]trying to update txn safe point to a smaller value, current value: 100, given: 50"
        )
    );

    // A barrier behind the txn safe point is refused; one ahead blocks it.
    let r = set_barrier(&c, "br", 99, 10, T0);
    assert!(error_message(&r.header).unwrap().contains("ErrGCBarrierTSBehindTxnSafePoint"));
    let r = set_barrier(&c, "br", 150, 10, T0);
    assert_eq!(error_message(&r.header), None);
    assert_eq!(
        r.new_barrier_info,
        Some(pdpb::GcBarrierInfo { barrier_id: "br".into(), barrier_ts: 150, ttl_seconds: 10 })
    );
    let r = advance_txn(&c, None, 200, T0);
    assert_eq!((r.old_txn_safe_point, r.new_txn_safe_point), (100, 150));
    assert!(
        r.blocker_description.starts_with("GCBarrier { BarrierID: \"br\", BarrierTS: 150"),
        "{}",
        r.blocker_description
    );

    // The state lists the barrier with the TTL left, rounded down.
    let s = gc_state(&c, None, Instant::from_millis(2_500)).gc_state.unwrap();
    assert_eq!((s.txn_safe_point, s.gc_safe_point, s.is_keyspace_level_gc), (150, 0, false));
    assert_eq!(s.gc_barriers.len(), 1);
    assert_eq!(s.gc_barriers[0].ttl_seconds, 7);

    // Exactly at the expiration it still blocks; strictly after, it is gone.
    let at_expiry = Instant::from_millis(10_000);
    assert_eq!(advance_txn(&c, None, 200, at_expiry).new_txn_safe_point, 150);
    let after = Instant::from_millis(10_001);
    let r = advance_txn(&c, None, 200, after);
    assert_eq!(r.new_txn_safe_point, 200);
    assert!(gc_state(&c, None, after).gc_state.unwrap().gc_barriers.is_empty());
}

#[test]
fn barrier_ids_ttls_and_deletion() {
    let c = cluster();
    let r = set_barrier(&c, "gc_worker", 1, 10, T0);
    assert!(error_message(&r.header).unwrap().contains("ErrReservedGCBarrierID"));
    let r = set_barrier(&c, "", 1, 10, T0);
    assert_eq!(
        error_message(&r.header).as_deref(),
        Some("[PD:common:ErrInvalidArgument]invalid argument for barrierID: ")
    );
    let r = set_barrier(&c, "x", 1, 0, T0);
    assert_eq!(
        error_message(&r.header).as_deref(),
        Some("[PD:common:ErrInvalidArgument]invalid argument for ttl: 0s")
    );
    let r = set_barrier(&c, "x", 1, -90, T0);
    assert!(error_message(&r.header).unwrap().ends_with("ttl: -1m30s"));

    // A huge TTL never expires.
    let r = set_barrier(&c, "forever", 5, i64::MAX, T0);
    assert_eq!(r.new_barrier_info.unwrap().ttl_seconds, i64::MAX);
    let far = Instant::from_millis(u64::MAX / 2_000_000);
    assert_eq!(advance_txn(&c, None, 10, far).new_txn_safe_point, 5);

    let r = delete_barrier(&c, "forever");
    assert_eq!(r.deleted_barrier_info.unwrap().barrier_ts, 5);
    assert_eq!(delete_barrier(&c, "forever").deleted_barrier_info, None);
    assert_eq!(advance_txn(&c, None, 10, far).new_txn_safe_point, 10);
}

#[test]
fn gc_safe_point_follows_the_txn_safe_point() {
    let c = cluster();
    advance_txn(&c, None, 100, T0);
    let r = advance_gc(&c, None, 101);
    assert_eq!(
        error_message(&r.header).as_deref(),
        Some(
            "[PD:gc:ErrGCSafePointExceedsTxnSafePoint]trying to update GC safe point to a too large value that exceeds the txn safe point, current value: 0, given: 101, current txn safe point: 100"
        )
    );
    let r = advance_gc(&c, None, 80);
    assert_eq!((r.old_gc_safe_point, r.new_gc_safe_point), (0, 80));
    assert!(
        error_message(&advance_gc(&c, None, 70).header)
            .unwrap()
            .contains("ErrDecreasingGCSafePoint")
    );
    let s = gc_state(&c, None, T0).gc_state.unwrap();
    assert_eq!((s.txn_safe_point, s.gc_safe_point), (100, 80));
}

/// The deprecated `UpdateGCSafePoint` (client-go's `KVStore.GC` ends with
/// it) is PD's compatible advance: a smaller target answers the current
/// value without an error, one past the txn safe point fails the call, and
/// an accepted one collects as `AdvanceGCSafePoint` does.
#[test]
fn update_gc_safe_point_is_the_compatible_advance() {
    let c = cluster();
    write(&c, Op::Put, b"a", b"a10", 9, 10);
    write(&c, Op::Put, b"a", b"a20", 19, 20);
    advance_txn(&c, None, 100, T0);
    let update = |target: u64| {
        let req = pdpb::UpdateGcSafePointRequest { header: header(&c), safe_point: target };
        c.handle_pd(0, PdRequest::UpdateGcSafePoint(Box::new(req)), T0)
    };
    match update(101) {
        Err(tikv_core::rpc::RpcError::Status { code: 2, message }) => {
            assert!(message.contains("ErrGCSafePointExceedsTxnSafePoint"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match update(50) {
        Ok(PdResponse::UpdateGcSafePoint(r)) => {
            assert_eq!((error_message(&r.header), r.new_safe_point), (None, 50));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.write_records(b"a"), vec![(20, WriteKind::Put)]);
    match update(0) {
        Ok(PdResponse::UpdateGcSafePoint(r)) => assert_eq!(r.new_safe_point, 50),
        other => panic!("{other:?}"),
    }
    let s = gc_state(&c, None, T0).gc_state.unwrap();
    assert_eq!((s.txn_safe_point, s.gc_safe_point), (100, 50));
}

#[test]
fn keyspaces_without_keyspace_level_gc_share_the_unified_state() {
    let c = cluster();
    c.add_keyspace("ks1", 1).unwrap();
    c.add_keyspace("ks2", 2).unwrap();
    assert!(c.enable_keyspace_level_gc("ks2"));
    advance_txn(&c, None, 100, T0);

    // User API on ks1 reads the null keyspace; the managing API refuses.
    let s = gc_state(&c, Some(1), T0).gc_state.unwrap();
    assert_eq!(s.keyspace_scope, scope(u32::MAX));
    assert_eq!((s.txn_safe_point, s.is_keyspace_level_gc), (100, false));
    assert_eq!(
        error_message(&advance_txn(&c, Some(1), 200, T0).header).as_deref(),
        Some(
            "[PD:gc:ErrGCOnInvalidKeyspace]trying to manage GC in keyspace ks1 (id: 1) where keyspace level GC is not enabled"
        )
    );
    // ks2 has its own state.
    let r = advance_txn(&c, Some(2), 40, T0);
    assert_eq!(r.new_txn_safe_point, 40);
    let s = gc_state(&c, Some(2), T0).gc_state.unwrap();
    assert_eq!((s.txn_safe_point, s.is_keyspace_level_gc), (40, true));
    assert_eq!(gc_state(&c, None, T0).gc_state.unwrap().txn_safe_point, 100);
    // Unknown keyspace ids are errors; ids above the valid range mean null.
    assert!(
        error_message(&gc_state(&c, Some(7), T0).header).unwrap().contains("ErrKeyspaceNotFound")
    );
    assert_eq!(gc_state(&c, Some(0x0100_0000), T0).gc_state.unwrap().txn_safe_point, 100);
}

// ---- stores ----

fn send(c: &Cluster, key: &[u8], mut req: KvRequest) -> KvResponse {
    let id = c.region_for_region_key(&c.txn_region_key(key)).expect("a region").id;
    *req.context_mut() = c.context_for(id).unwrap();
    let store = c.leader_of(id).unwrap().store_id;
    c.handle_kv(store, req, T0).expect("leader is up")
}

fn prewrite(c: &Cluster, op: Op, key: &[u8], value: &[u8], start: u64) {
    let r = kvrpcpb::PrewriteRequest {
        mutations: vec![kvrpcpb::Mutation {
            op: op as i32,
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
    match send(c, key, r.into()) {
        KvResponse::Prewrite(p) => {
            assert!(p.region_error.is_none() && p.errors.is_empty(), "{p:?}")
        }
        other => panic!("{other:?}"),
    }
}

fn commit(c: &Cluster, key: &[u8], start: u64, commit_ts: u64) {
    let r = kvrpcpb::CommitRequest {
        keys: vec![b(key)],
        start_version: start,
        commit_version: commit_ts,
        ..Default::default()
    };
    match send(c, key, r.into()) {
        KvResponse::Commit(p) => assert!(p.region_error.is_none() && p.error.is_none(), "{p:?}"),
        other => panic!("{other:?}"),
    }
}

fn write(c: &Cluster, op: Op, key: &[u8], value: &[u8], start: u64, commit_ts: u64) {
    prewrite(c, op, key, value, start);
    commit(c, key, start, commit_ts);
}

fn rollback(c: &Cluster, key: &[u8], start: u64) {
    let r = kvrpcpb::BatchRollbackRequest {
        keys: vec![b(key)],
        start_version: start,
        ..Default::default()
    };
    match send(c, key, r.into()) {
        KvResponse::BatchRollback(p) => {
            assert!(p.region_error.is_none() && p.error.is_none(), "{p:?}")
        }
        other => panic!("{other:?}"),
    }
}

fn value(c: &Cluster, key: &[u8], ts: u64) -> Option<Vec<u8>> {
    let r = kvrpcpb::GetRequest { key: b(key), version: ts, ..Default::default() };
    match send(c, key, r.into()) {
        KvResponse::Get(g) => {
            assert!(g.error.is_none() && g.region_error.is_none(), "{g:?}");
            (!g.not_found).then(|| g.value.to_vec())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mvcc_gc_keeps_the_newest_version_at_or_below_the_safe_point() {
    let c = cluster();
    // a: put 10, put 20, lock 30, rollback 35, put 50 (above the safe point).
    write(&c, Op::Put, b"a", b"a10", 9, 10);
    write(&c, Op::Put, b"a", b"a20", 19, 20);
    write(&c, Op::Lock, b"a", b"", 29, 30);
    rollback(&c, b"a", 35);
    write(&c, Op::Put, b"a", b"a50", 49, 50);
    // b: put 10, delete 20: the tombstone and everything below go.
    write(&c, Op::Put, b"b", b"b10", 9, 10);
    write(&c, Op::Del, b"b", b"", 19, 20);
    // n (other region): delete 10, put 60 above: the put stays.
    write(&c, Op::Del, b"n", b"", 9, 10);
    write(&c, Op::Put, b"n", b"n60", 59, 60);
    // z: a lock at 15 survives GC untouched.
    prewrite(&c, Op::Put, b"z", b"z15", 15);

    advance_txn(&c, None, 40, T0);
    advance_gc(&c, None, 40);

    assert_eq!(c.write_records(b"a"), vec![(50, WriteKind::Put), (20, WriteKind::Put)]);
    assert_eq!(value(&c, b"a", 40).as_deref(), Some(&b"a20"[..]));
    assert_eq!(value(&c, b"a", 60).as_deref(), Some(&b"a50"[..]));
    // Below the safe point the older versions are gone (TiKV answers the
    // same: the data is collected; refusing such reads is the client's job).
    assert_eq!(value(&c, b"a", 15), None);
    assert!(c.write_records(b"b").is_empty());
    assert_eq!(value(&c, b"b", 15), None);
    assert_eq!(c.write_records(b"n"), vec![(60, WriteKind::Put)]);
    assert_eq!(c.locks().len(), 1);
    assert_eq!(c.locks()[0].lock_version, 15);
}

#[test]
fn keyspace_level_gc_collects_only_its_keyspace() {
    let c = Cluster::new(ClusterConfig {
        api_version: tikv_sim::ApiVersion::V2,
        ..ClusterConfig::default()
    });
    c.add_keyspace("ks1", 1).unwrap();
    assert!(c.enable_keyspace_level_gc("ks1"));
    let ks1_key = b"x\0\0\x01k";
    let default_key = b"x\0\0\0k";
    for key in [&ks1_key[..], &default_key[..]] {
        write(&c, Op::Put, key, b"v1", 9, 10);
        write(&c, Op::Put, key, b"v2", 19, 20);
    }
    advance_txn(&c, Some(1), 30, T0);
    advance_gc(&c, Some(1), 30);
    assert_eq!(c.write_records(ks1_key), vec![(20, WriteKind::Put)]);
    assert_eq!(c.write_records(default_key).len(), 2);
    advance_txn(&c, None, 30, T0);
    advance_gc(&c, None, 30);
    assert_eq!(c.write_records(default_key), vec![(20, WriteKind::Put)]);
}

fn scan_lock(c: &Cluster, start: &[u8], max_version: u64, limit: u32) -> Vec<(Vec<u8>, u64)> {
    let r =
        kvrpcpb::ScanLockRequest { start_key: b(start), max_version, limit, ..Default::default() };
    match send(c, start, r.into()) {
        KvResponse::ScanLock(s) => {
            assert!(s.region_error.is_none() && s.error.is_none(), "{s:?}");
            s.locks.iter().map(|l| (l.key.to_vec(), l.lock_version)).collect()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn scan_lock_pages_by_limit_and_start_key_within_the_region() {
    let c = cluster();
    for (i, key) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
        prewrite(&c, Op::Put, *key, b"v", 10 + i as u64);
    }
    prewrite(&c, Op::Put, b"n", b"v", 5);
    assert_eq!(scan_lock(&c, b"", 100, 2), vec![(b"a".to_vec(), 10), (b"b".to_vec(), 11)]);
    // The next page starts just after the last key seen.
    assert_eq!(scan_lock(&c, b"b\0", 100, 2), vec![(b"c".to_vec(), 12), (b"d".to_vec(), 13)]);
    // max_version filters; the region's end bounds the scan.
    assert_eq!(scan_lock(&c, b"", 11, 0), vec![(b"a".to_vec(), 10), (b"b".to_vec(), 11)]);
    assert_eq!(scan_lock(&c, b"n", 100, 0), vec![(b"n".to_vec(), 5)]);
}

fn delete_range(
    c: &Cluster,
    route: &[u8],
    start: &[u8],
    end: &[u8],
    notify_only: bool,
) -> kvrpcpb::DeleteRangeResponse {
    let r = kvrpcpb::DeleteRangeRequest {
        start_key: b(start),
        end_key: b(end),
        notify_only,
        ..Default::default()
    };
    match send(c, route, r.into()) {
        KvResponse::DeleteRange(d) => *d,
        other => panic!("{other:?}"),
    }
}

#[test]
fn delete_range_removes_every_cf_in_the_region_range() {
    let c = cluster();
    write(&c, Op::Put, b"a", b"1", 9, 10);
    write(&c, Op::Put, b"c", b"1", 9, 10);
    prewrite(&c, Op::Put, b"b", b"lock", 20);
    write(&c, Op::Put, b"n", b"1", 9, 10);

    let notify = delete_range(&c, b"a", b"a", b"c", true);
    assert!(notify.region_error.is_none() && notify.error.is_empty());
    assert_eq!(value(&c, b"a", 30).as_deref(), Some(&b"1"[..]));

    let r = delete_range(&c, b"a", b"a", b"c", false);
    assert!(r.region_error.is_none() && r.error.is_empty(), "{r:?}");
    assert_eq!(value(&c, b"a", 30), None);
    assert!(c.locks().is_empty());
    assert_eq!(value(&c, b"c", 30).as_deref(), Some(&b"1"[..]));

    // The end may not pass the region's end; start must be below end.
    let r = delete_range(&c, b"a", b"a", b"z", false);
    assert!(r.region_error.unwrap().key_not_in_region.is_some());
    let r = delete_range(&c, b"a", b"c", b"a", false);
    assert!(r.error.starts_with("invalid delete range command"), "{}", r.error);
    assert_eq!(value(&c, b"n", 30).as_deref(), Some(&b"1"[..]));
}

#[test]
fn unsafe_destroy_range_needs_no_region_and_empties_the_range() {
    let c = cluster();
    write(&c, Op::Put, b"a", b"1", 9, 10);
    write(&c, Op::Put, b"n", b"1", 9, 10);
    prewrite(&c, Op::Put, b"p", b"lock", 20);
    write(&c, Op::Put, b"x", b"1", 9, 10);
    let store = c.store_ids()[0];
    let destroy = |start: &[u8], end: &[u8]| {
        let r = kvrpcpb::UnsafeDestroyRangeRequest {
            start_key: b(start),
            end_key: b(end),
            ..Default::default()
        };
        match c.handle_kv(store, r.into(), T0 + Duration::from_millis(1)).unwrap() {
            KvResponse::UnsafeDestroyRange(d) => *d,
            other => panic!("{other:?}"),
        }
    };
    assert!(!destroy(b"", b"z").error.is_empty());
    let r = destroy(b"b", b"q");
    assert!(r.region_error.is_none() && r.error.is_empty(), "{r:?}");
    assert_eq!(value(&c, b"a", 30).as_deref(), Some(&b"1"[..]));
    assert_eq!(value(&c, b"n", 30), None);
    assert!(c.locks().is_empty());
    assert_eq!(value(&c, b"x", 30).as_deref(), Some(&b"1"[..]));
}

// ---- PD scatter (not GC, but PD's other administrative state) ----

#[test]
fn scatter_operators_run_over_model_time_then_move_the_leader() {
    let c = cluster();
    let region = c.regions()[0].clone();
    let leader = c.leader_of(region.id).unwrap().store_id;
    let get = |now: Instant| {
        let req = pdpb::GetOperatorRequest { header: header(&c), region_id: region.id };
        match pd(&c, PdRequest::GetOperator(Box::new(req)), now) {
            PdResponse::GetOperator(r) => *r,
            other => panic!("{other:?}"),
        }
    };
    let none = get(T0);
    let e = none.header.unwrap().error.unwrap();
    assert_eq!(
        (e.r#type, e.message.as_str()),
        (pdpb::ErrorType::RegionNotFound as i32, "Not Found")
    );

    let req = pdpb::ScatterRegionRequest {
        header: header(&c),
        regions_id: vec![region.id, 999],
        ..Default::default()
    };
    let r = match pd(&c, PdRequest::ScatterRegion(Box::new(req)), T0) {
        PdResponse::ScatterRegion(r) => *r,
        other => panic!("{other:?}"),
    };
    assert_eq!((r.finished_percentage, r.failed_regions_id), (50, vec![999]));
    let running = get(T0 + tikv_sim::scatter::SCATTER_DURATION - Duration::from_millis(1));
    assert_eq!(running.status, pdpb::OperatorStatus::Running as i32);
    assert_eq!(&running.desc[..], b"scatter-region");
    assert_eq!(c.leader_of(region.id).unwrap().store_id, leader, "nothing moved yet");
    let done = get(T0 + tikv_sim::scatter::SCATTER_DURATION);
    assert_eq!(done.status, pdpb::OperatorStatus::Success as i32);
    assert_ne!(c.leader_of(region.id).unwrap().store_id, leader, "the leader moved");
}
