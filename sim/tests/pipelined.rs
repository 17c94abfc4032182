//! Model-level tests of pipelined DML's commands: `Flush` (TiKV's
//! `prewrite_with_generation`) and `BufferBatchGet`, and a pipelined
//! transaction committed the way client-go commits it (the primary, then a
//! region-wide `ResolveLock` with the commit ts).

use bytes::Bytes;
use tikv_core::rpc::{KvRequest, KvResponse};
use tikv_core::time::Instant;
use tikv_proto::kvrpcpb::{self, Op};
use tikv_sim::{CachedTxnState, Cluster, ClusterConfig};

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

/// Sends `req` to the leader of the region holding `key`.
fn send(c: &Cluster, key: &[u8], mut req: KvRequest) -> KvResponse {
    let id = c.region_for_region_key(&c.txn_region_key(key)).expect("a region").id;
    *req.context_mut() = c.context_for(id).unwrap();
    let store = c.leader_of(id).unwrap().store_id;
    c.handle_kv(store, req, T0).expect("leader is up")
}

fn m(op: Op, key: &[u8], value: &[u8]) -> kvrpcpb::Mutation {
    kvrpcpb::Mutation { op: op as i32, key: b(key), value: b(value), ..Default::default() }
}

fn flush(
    c: &Cluster,
    start: u64,
    generation: u64,
    mutations: Vec<kvrpcpb::Mutation>,
) -> kvrpcpb::FlushResponse {
    let key = mutations[0].key.clone();
    let req = kvrpcpb::FlushRequest {
        mutations,
        primary_key: b(b"a"),
        start_ts: start,
        generation,
        lock_ttl: 20_000,
        ..Default::default()
    };
    match send(c, &key, req.into()) {
        KvResponse::Flush(r) => {
            assert!(r.region_error.is_none(), "{:?}", r.region_error);
            *r
        }
        other => panic!("{other:?}"),
    }
}

/// What `BufferBatchGet` of transaction `start` returns for `keys` (all in
/// one region), as `(key, value)` strings.
fn buffer_get(c: &Cluster, start: u64, keys: &[&str]) -> Vec<(String, String)> {
    let req = kvrpcpb::BufferBatchGetRequest {
        keys: keys.iter().map(|k| b(k.as_bytes())).collect(),
        version: start,
        ..Default::default()
    };
    match send(c, keys[0].as_bytes(), req.into()) {
        KvResponse::BufferBatchGet(r) => {
            assert!(r.region_error.is_none() && r.error.is_none(), "{r:?}");
            let s = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
            r.pairs.iter().map(|p| (s(&p.key), s(&p.value))).collect()
        }
        other => panic!("{other:?}"),
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A snapshot read of `key` at `ts`: its value, or the error.
fn get(c: &Cluster, key: &str, ts: u64) -> Result<Option<String>, Box<kvrpcpb::KeyError>> {
    let req = kvrpcpb::GetRequest { key: b(key.as_bytes()), version: ts, ..Default::default() };
    match send(c, key.as_bytes(), req.into()) {
        KvResponse::Get(r) => match r.error {
            Some(e) => Err(Box::new(e)),
            None if r.not_found => Ok(None),
            None => Ok(Some(String::from_utf8_lossy(&r.value).into_owned())),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn flushes_write_generations_of_locks_read_back_by_buffer_batch_get() {
    let c = cluster();
    let start = 100;
    let r = flush(&c, start, 1, vec![m(Op::Put, b"a", b"1"), m(Op::Put, b"b", b"1")]);
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(buffer_get(&c, start, &["a", "b", "c"]), pairs(&[("a", "1"), ("b", "1")]));

    // A newer generation overwrites; a flushed delete reads back empty.
    let r = flush(&c, start, 2, vec![m(Op::Put, b"a", b"2"), m(Op::Del, b"b", b"")]);
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(buffer_get(&c, start, &["b", "a"]), pairs(&[("a", "2"), ("b", "")]));

    // An older generation arriving late changes nothing.
    let r = flush(&c, start, 1, vec![m(Op::Put, b"a", b"stale")]);
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(buffer_get(&c, start, &["a"]), pairs(&[("a", "2")]));

    // Inserting a key an earlier flush put fails; over a flushed delete it
    // is allowed.
    let r = flush(&c, start, 3, vec![m(Op::Insert, b"a", b"3")]);
    assert!(r.errors[0].already_exist.is_some(), "{r:?}");
    let r = flush(&c, start, 3, vec![m(Op::Insert, b"b", b"3")]);
    assert!(r.errors.is_empty(), "{r:?}");

    // Another transaction's reader meets the pipelined locks, which carry
    // min_commit_ts = start + 1 and an unknown size.
    let e = get(&c, "a", 200).expect_err("locked");
    let lock = e.locked.expect("KeyIsLocked");
    assert_eq!((lock.lock_version, lock.min_commit_ts), (start, start + 1));
    assert_eq!(lock.txn_size, u64::MAX);
    // Another transaction does not see them through BufferBatchGet.
    assert!(buffer_get(&c, 150, &["a", "b"]).is_empty());

    // Generation 0 is refused.
    let r = flush(&c, start, 0, vec![m(Op::Put, b"a", b"x")]);
    assert!(r.errors[0].abort.contains("generation"), "{r:?}");
}

#[test]
fn other_transactions_locks_come_back_per_key_and_the_rest_is_written() {
    let c = cluster();
    // Transaction 50 prewrites "c".
    let req = kvrpcpb::PrewriteRequest {
        mutations: vec![m(Op::Put, b"c", b"other")],
        primary_lock: b(b"c"),
        start_version: 50,
        lock_ttl: 3000,
        txn_size: 1,
        ..Default::default()
    };
    match send(&c, b"c", req.into()) {
        KvResponse::Prewrite(r) => assert!(r.errors.is_empty(), "{r:?}"),
        other => panic!("{other:?}"),
    }
    let r = flush(&c, 100, 1, vec![m(Op::Put, b"a", b"1"), m(Op::Put, b"c", b"1")]);
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert_eq!(r.errors[0].locked.as_ref().map(|l| l.lock_version), Some(50));
    assert_eq!(buffer_get(&c, 100, &["a", "c"]), pairs(&[("a", "1")]));

    // A write committed after the pipelined transaction started conflicts.
    let r = flush(&c, 10, 1, vec![m(Op::Put, b"d", b"1")]);
    assert!(r.errors.is_empty());
    let resolve =
        kvrpcpb::ResolveLockRequest { start_version: 10, commit_version: 20, ..Default::default() };
    match send(&c, b"d", resolve.into()) {
        KvResponse::ResolveLock(r) => assert!(r.error.is_none(), "{r:?}"),
        other => panic!("{other:?}"),
    }
    let r = flush(&c, 15, 1, vec![m(Op::Put, b"d", b"late")]);
    assert!(r.errors[0].conflict.is_some(), "{r:?}");
    assert!(buffer_get(&c, 15, &["d"]).is_empty(), "a failed flush writes nothing");
}

#[test]
fn a_pipelined_commit_is_the_primary_then_a_region_wide_resolve() {
    let c = cluster();
    let start = 100;
    // Keys in both regions (split at "m").
    let r = flush(&c, start, 1, vec![m(Op::Put, b"a", b"1"), m(Op::Put, b"b", b"1")]);
    assert!(r.errors.is_empty());
    let r = flush(&c, start, 1, vec![m(Op::Put, b"x", b"1"), m(Op::Put, b"y", b"1")]);
    assert!(r.errors.is_empty());
    let commit = kvrpcpb::CommitRequest {
        keys: vec![b(b"a")],
        start_version: start,
        commit_version: 110,
        ..Default::default()
    };
    match send(&c, b"a", commit.into()) {
        KvResponse::Commit(r) => assert!(r.error.is_none(), "{r:?}"),
        other => panic!("{other:?}"),
    }
    for key in ["b", "x"] {
        let resolve = kvrpcpb::ResolveLockRequest {
            start_version: start,
            commit_version: 110,
            ..Default::default()
        };
        match send(&c, key.as_bytes(), resolve.into()) {
            KvResponse::ResolveLock(r) => assert!(r.error.is_none(), "{r:?}"),
            other => panic!("{other:?}"),
        }
    }
    for key in ["a", "b", "x", "y"] {
        assert_eq!(get(&c, key, 120).unwrap().as_deref(), Some("1"), "{key}");
        assert_eq!(get(&c, key, 105).unwrap(), None, "{key} before the commit");
    }
    assert!(c.locks().is_empty());
}

/// `TxnHeartBeat` with a `min_commit_ts` pushes a pipelined lock's (TiKV
/// `txn_heart_beat`: only a lock with a generation, not async commit), so
/// readers below it read past the lock; a normal prewrite lock keeps its.
#[test]
fn heartbeats_push_a_pipelined_primary_min_commit_ts() {
    let c = cluster();
    let beat = |key: &[u8], start: u64, min_commit_ts: u64| {
        let req = kvrpcpb::TxnHeartBeatRequest {
            primary_lock: b(key),
            start_version: start,
            advise_lock_ttl: 30_000,
            min_commit_ts,
            ..Default::default()
        };
        match send(&c, key, req.into()) {
            KvResponse::TxnHeartBeat(r) => assert!(r.error.is_none(), "{r:?}"),
            other => panic!("{other:?}"),
        }
    };
    let r = flush(&c, 100, 1, vec![m(Op::Put, b"a", b"1")]);
    assert!(r.errors.is_empty());
    assert!(get(&c, "a", 150).is_err(), "blocks readers above start + 1");
    beat(b"a", 100, 200);
    assert_eq!(get(&c, "a", 150).unwrap(), None, "a reader below min_commit_ts reads past it");
    let lock = get(&c, "a", 250).expect_err("still locked above it").locked.expect("locked");
    assert_eq!((lock.min_commit_ts, lock.lock_ttl), (200, 30_000));

    // A normal prewrite lock keeps its min_commit_ts.
    let req = kvrpcpb::PrewriteRequest {
        mutations: vec![m(Op::Put, b"c", b"1")],
        primary_lock: b(b"c"),
        start_version: 100,
        lock_ttl: 3000,
        txn_size: 1,
        ..Default::default()
    };
    match send(&c, b"c", req.into()) {
        KvResponse::Prewrite(r) => assert!(r.errors.is_empty(), "{r:?}"),
        other => panic!("{other:?}"),
    }
    beat(b"c", 100, 200);
    assert!(get(&c, "c", 150).is_err(), "not pushed");
}

fn broadcast(c: &Cluster, store: u64, status: kvrpcpb::TxnStatus) {
    let req = kvrpcpb::BroadcastTxnStatusRequest { txn_status: vec![status], ..Default::default() };
    match c.handle_kv(store, req.into(), T0).expect("store is up") {
        KvResponse::BroadcastTxnStatus(_) => {}
        other => panic!("{other:?}"),
    }
}

fn txn_status(start_ts: u64, min: u64, commit: u64, rolled_back: bool) -> kvrpcpb::TxnStatus {
    kvrpcpb::TxnStatus {
        start_ts,
        min_commit_ts: min,
        commit_ts: commit,
        rolled_back,
        is_completed: false,
    }
}

/// `BroadcastTxnStatus` fills the receiving store's txn status cache only,
/// with TiKV's rules: `min_commit_ts` never goes down, a decided state is
/// final, and an ongoing status without a push is kept at the start ts.
#[test]
fn broadcasts_fill_each_stores_txn_status_cache_as_tikv_does() {
    let c = cluster();
    let stores = c.store_ids();
    assert!(stores.len() >= 2, "{stores:?}");
    let (told, other) = (stores[0], stores[1]);
    broadcast(&c, told, txn_status(100, 150, 0, false));
    assert_eq!(
        c.cached_txn_status(told, 100),
        Some(CachedTxnState::Ongoing { min_commit_ts: 150 })
    );
    assert_eq!(c.cached_txn_status(other, 100), None, "a broadcast reaches one store");
    broadcast(&c, told, txn_status(100, 120, 0, false));
    assert_eq!(
        c.cached_txn_status(told, 100),
        Some(CachedTxnState::Ongoing { min_commit_ts: 150 }),
        "min_commit_ts only rises"
    );
    broadcast(&c, told, txn_status(100, 150, 170, false));
    assert_eq!(c.cached_txn_status(told, 100), Some(CachedTxnState::Committed { commit_ts: 170 }));
    broadcast(&c, told, txn_status(100, 200, 0, false));
    assert_eq!(c.cached_txn_status(told, 100), Some(CachedTxnState::Committed { commit_ts: 170 }));
    let completed = kvrpcpb::TxnStatus { is_completed: true, ..txn_status(100, 0, 170, false) };
    broadcast(&c, told, completed);
    assert_eq!(c.cached_txn_status(told, 100), Some(CachedTxnState::Committed { commit_ts: 170 }));

    broadcast(&c, other, txn_status(300, 0, 0, false));
    assert_eq!(
        c.cached_txn_status(other, 300),
        Some(CachedTxnState::Ongoing { min_commit_ts: 300 })
    );
    broadcast(&c, other, txn_status(300, 0, 0, true));
    assert_eq!(c.cached_txn_status(other, 300), Some(CachedTxnState::RolledBack));
    assert_eq!(c.kv_request_count(other, "broadcast_txn_status", None), 2);
}
