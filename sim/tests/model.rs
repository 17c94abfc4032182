//! Model-level tests: every raw command, TTL on the model clock, region
//! errors, injections, PD lookups and TSO.

use bytes::Bytes;
use tikv_core::key::memcomparable;
use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse, RpcError};
use tikv_core::time::{Duration, Instant};
use tikv_proto::{errorpb, keyspacepb, kvrpcpb, metapb, pdpb};
use tikv_sim::{ApiVersion, Cluster, ClusterConfig, Filter, RandomRegionError};

const T0: Instant = Instant::ZERO;

fn v1() -> Cluster {
    Cluster::new(ClusterConfig { split_keys: vec![b"m".to_vec()], ..ClusterConfig::default() })
}

fn v2() -> Cluster {
    Cluster::new(ClusterConfig {
        api_version: ApiVersion::V2,
        split_keys: vec![b"r\0\0\0m".to_vec()],
        ..ClusterConfig::default()
    })
}

/// The region holding a request key.
fn region_of(c: &Cluster, key: &[u8]) -> metapb::Region {
    c.region_for_region_key(&c.region_key(key)).expect("every key has a region")
}

/// Sends to the leader of the region holding `key`, with a fresh context.
fn send(c: &Cluster, key: &[u8], mut req: KvRequest, now: Instant) -> KvResponse {
    let region = region_of(c, key);
    *req.context_mut() = c.context_for(region.id).unwrap();
    let store = c.leader_of(region.id).unwrap().store_id;
    c.handle_kv(store, req, now).expect("leader is up")
}

fn put(c: &Cluster, key: &[u8], value: &[u8], ttl: u64, now: Instant) -> kvrpcpb::RawPutResponse {
    let req = kvrpcpb::RawPutRequest {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        ttl,
        ..Default::default()
    };
    match send(c, key, req.into(), now) {
        KvResponse::RawPut(r) => *r,
        other => panic!("unexpected {other:?}"),
    }
}

fn get(c: &Cluster, key: &[u8], now: Instant) -> Option<Vec<u8>> {
    let req = kvrpcpb::RawGetRequest { key: Bytes::copy_from_slice(key), ..Default::default() };
    match send(c, key, req.into(), now) {
        KvResponse::RawGet(r) => {
            assert!(r.region_error.is_none() && r.error.is_empty(), "{r:?}");
            (!r.not_found).then(|| r.value.to_vec())
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn scan(c: &Cluster, route: &[u8], req: kvrpcpb::RawScanRequest) -> kvrpcpb::RawScanResponse {
    match send(c, route, req.into(), T0) {
        KvResponse::RawScan(r) => *r,
        other => panic!("unexpected {other:?}"),
    }
}

fn keys(pairs: &[kvrpcpb::KvPair]) -> Vec<&[u8]> {
    pairs.iter().map(|p| &p.key[..]).collect()
}

fn region_error(resp: &KvResponse) -> errorpb::Error {
    resp.region_error().cloned().expect("a region error")
}

#[test]
fn layout_follows_config() {
    let c = v1();
    let regions = c.regions();
    assert_eq!(regions.len(), 2);
    assert_eq!(&regions[0].end_key[..], b"m");
    assert_eq!(&regions[1].start_key[..], b"m");
    for r in &regions {
        assert_eq!(r.peers.len(), 3);
        let mut stores: Vec<u64> = r.peers.iter().map(|p| p.store_id).collect();
        stores.sort();
        assert_eq!(stores, c.store_ids());
    }
    let one = Cluster::new(ClusterConfig { stores: 1, ..ClusterConfig::default() });
    assert_eq!(one.regions()[0].peers.len(), 1);
    // Same seed, same leaders.
    let leaders = |c: &Cluster| c.regions().iter().map(|r| c.leader_of(r.id)).collect::<Vec<_>>();
    assert_eq!(leaders(&v1()), leaders(&v1()));
}

#[test]
fn put_get_delete_and_column_families() {
    let c = v1();
    assert_eq!(get(&c, b"a", T0), None);
    let r = put(&c, b"a", b"1", 0, T0);
    assert!(r.region_error.is_none() && r.error.is_empty(), "{r:?}");
    assert_eq!(get(&c, b"a", T0), Some(b"1".to_vec()));
    // An existing empty value is found.
    put(&c, b"e", b"", 0, T0);
    assert_eq!(get(&c, b"e", T0), Some(Vec::new()));

    // Column families are separate; unknown ones get TiKV's error string.
    let lock_put = kvrpcpb::RawPutRequest {
        key: "a".into(),
        value: "L".into(),
        cf: "lock".into(),
        ..Default::default()
    };
    send(&c, b"a", lock_put.into(), T0);
    assert_eq!(c.raw_snapshot("lock").get(&b"a"[..]), Some(&b"L".to_vec()));
    assert_eq!(c.raw_snapshot("default").get(&b"a"[..]), Some(&b"1".to_vec()));
    let bad = kvrpcpb::RawGetRequest { key: "a".into(), cf: "nope".into(), ..Default::default() };
    match send(&c, b"a", bad.into(), T0) {
        KvResponse::RawGet(r) => assert_eq!(r.error, "invalid cf name: nope"),
        other => panic!("{other:?}"),
    }

    let del = kvrpcpb::RawDeleteRequest { key: "a".into(), ..Default::default() };
    send(&c, b"a", del.into(), T0);
    assert_eq!(get(&c, b"a", T0), None);
}

#[test]
fn batch_commands() {
    let c = v1();
    let pairs = ["a", "b", "c"]
        .iter()
        .map(|k| kvrpcpb::KvPair {
            key: Bytes::from(*k),
            value: Bytes::from(format!("v{k}")),
            ..Default::default()
        })
        .collect();
    let resp =
        send(&c, b"a", kvrpcpb::RawBatchPutRequest { pairs, ..Default::default() }.into(), T0);
    assert!(resp.region_error().is_none());
    let bg = kvrpcpb::RawBatchGetRequest {
        keys: vec!["a".into(), "zz_missing".into(), "c".into()],
        ..Default::default()
    };
    // "zz_missing" is in the other region: the whole batch is refused.
    assert!(region_error(&send(&c, b"a", bg.into(), T0)).key_not_in_region.is_some());
    let bg = kvrpcpb::RawBatchGetRequest {
        keys: vec!["a".into(), "b0".into(), "c".into()],
        ..Default::default()
    };
    match send(&c, b"a", bg.into(), T0) {
        KvResponse::RawBatchGet(r) => {
            assert_eq!(keys(&r.pairs), vec![&b"a"[..], b"c"]);
            assert_eq!(&r.pairs[1].value[..], b"vc");
        }
        other => panic!("{other:?}"),
    }
    let bd =
        kvrpcpb::RawBatchDeleteRequest { keys: vec!["a".into(), "b".into()], ..Default::default() };
    send(&c, b"a", bd.into(), T0);
    assert_eq!(c.raw_snapshot("").keys().cloned().collect::<Vec<_>>(), vec![b"c".to_vec()]);
}

#[test]
fn batch_put_is_atomic_across_region_boundary() {
    let c = v1();
    let pairs = vec![
        kvrpcpb::KvPair { key: "a".into(), value: "1".into(), ..Default::default() },
        kvrpcpb::KvPair { key: "x".into(), value: "2".into(), ..Default::default() },
    ];
    let resp =
        send(&c, b"a", kvrpcpb::RawBatchPutRequest { pairs, ..Default::default() }.into(), T0);
    let e = region_error(&resp).key_not_in_region.unwrap();
    assert_eq!(&e.key[..], b"x");
    assert!(c.raw_snapshot("").is_empty());
}

#[test]
fn ttl_expires_on_the_model_clock() {
    let c = v2();
    let k = b"r\0\0\0k";
    let resp = put(&c, k, b"v", 10, Instant::from_millis(500));
    assert!(resp.error.is_empty(), "{resp:?}");
    assert_eq!(get(&c, k, Instant::from_millis(9_999)), Some(b"v".to_vec()));
    let ttl_req =
        || kvrpcpb::RawGetKeyTtlRequest { key: Bytes::copy_from_slice(k), ..Default::default() };
    match send(&c, k, ttl_req().into(), Instant::from_millis(4_000)) {
        KvResponse::RawGetKeyTtl(r) => assert_eq!((r.ttl, r.not_found), (6, false)),
        other => panic!("{other:?}"),
    }
    // TTL counts whole seconds from the second of the write: expires at t=10s.
    assert_eq!(get(&c, k, Instant::from_millis(10_000)), None);
    match send(&c, k, ttl_req().into(), Instant::from_millis(10_000)) {
        KvResponse::RawGetKeyTtl(r) => assert!(r.not_found),
        other => panic!("{other:?}"),
    }
    // A key without TTL reports 0.
    put(&c, k, b"v", 0, Instant::from_millis(11_000));
    match send(&c, k, ttl_req().into(), Instant::from_millis(11_000)) {
        KvResponse::RawGetKeyTtl(r) => assert_eq!((r.ttl, r.not_found), (0, false)),
        other => panic!("{other:?}"),
    }
    // Batch put: one TTL applies to all keys; expired keys vanish from scans.
    let pairs = [b"r\0\0\0a", b"r\0\0\0b"]
        .iter()
        .map(|k| kvrpcpb::KvPair {
            key: Bytes::copy_from_slice(*k),
            value: "x".into(),
            ..Default::default()
        })
        .collect();
    let bp = kvrpcpb::RawBatchPutRequest { pairs, ttls: vec![2], ..Default::default() };
    send(&c, b"r\0\0\0a", bp.into(), Instant::from_millis(20_000));
    let sreq = || kvrpcpb::RawScanRequest {
        start_key: "r\0\0\0".into(),
        end_key: "r\0\0\0m".into(),
        limit: 10,
        ..Default::default()
    };
    let live = match send(&c, b"r\0\0\0a", sreq().into(), Instant::from_millis(21_000)) {
        KvResponse::RawScan(r) => r.kvs.len(),
        other => panic!("{other:?}"),
    };
    let later = match send(&c, b"r\0\0\0a", sreq().into(), Instant::from_millis(22_000)) {
        KvResponse::RawScan(r) => r.kvs.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!((live, later), (3, 1));
    // Mismatched ttls length is refused in V2.
    let pairs =
        vec![
            kvrpcpb::KvPair { key: "r\0\0\0c".into(), value: "x".into(), ..Default::default() };
            3
        ];
    let bp = kvrpcpb::RawBatchPutRequest { pairs, ttls: vec![1, 2], ..Default::default() };
    match send(&c, b"r\0\0\0c", bp.into(), T0) {
        KvResponse::RawBatchPut(r) => {
            assert_eq!(r.error, "The length of ttls does not equal to the length of pairs")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn v1_rejects_ttl_and_v2_requests() {
    let c = v1();
    let r = put(&c, b"a", b"v", 5, T0);
    assert_eq!(r.error, "ttl is not enabled, but get put request with ttl");
    assert!(c.raw_snapshot("").is_empty());
    let mut req: KvRequest =
        kvrpcpb::RawGetRequest { key: "a".into(), ..Default::default() }.into();
    let region = region_of(&c, b"a");
    let mut ctx = c.context_for(region.id).unwrap();
    ctx.api_version = kvrpcpb::ApiVersion::V2 as i32;
    *req.context_mut() = ctx;
    match c.handle_kv(c.leader_of(region.id).unwrap().store_id, req, T0).unwrap() {
        KvResponse::RawGet(r) => assert_eq!(
            r.error,
            "Api version in request does not match with TiKV storage, cmd: raw_get, storage: V1, request: V2"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn v2_checks_key_mode_cf_and_encodes_region_keys() {
    let c = v2();
    // Region boundaries are memcomparable-encoded request keys.
    assert_eq!(&c.regions()[0].end_key[..], &memcomparable::encode_bytes(b"r\0\0\0m")[..]);
    let r = put(&c, b"xkey", b"v", 0, T0);
    assert_eq!(
        r.error,
        "Key mode mismatched with the request mode, cmd: raw_put, storage: V2, key: 786B6579"
    );
    let req = kvrpcpb::RawPutRequest {
        key: "r\0\0\0a".into(),
        cf: "default".into(),
        ..Default::default()
    };
    match send(&c, b"r\0\0\0a", req.into(), T0) {
        KvResponse::RawPut(r) => {
            assert_eq!(r.error, "cf is deprecated in API V2, cf name: default")
        }
        other => panic!("{other:?}"),
    }
    // V1 requests to a V2 cluster are refused.
    let region = region_of(&c, b"r\0\0\0a");
    let mut ctx = c.context_for(region.id).unwrap();
    ctx.api_version = 0;
    let req =
        kvrpcpb::RawGetRequest { context: Some(ctx), key: "r\0\0\0a".into(), ..Default::default() };
    match c.handle_kv(c.leader_of(region.id).unwrap().store_id, req.into(), T0).unwrap() {
        KvResponse::RawGet(r) => {
            assert!(r.error.contains("storage: V2, request: V1"), "{}", r.error)
        }
        other => panic!("{other:?}"),
    }
    // A V2 scan needs a bounded range in raw mode.
    let s = kvrpcpb::RawScanRequest { start_key: "r\0\0\0".into(), limit: 1, ..Default::default() };
    let r = scan(&c, b"r\0\0\0a", s);
    assert!(r.kvs[0].error.as_ref().unwrap().abort.contains("Key mode mismatched"));
}

#[test]
fn compare_and_swap() {
    let c = v1();
    let cas = |prev: Option<&str>, value: &str, delete: bool| {
        let req = kvrpcpb::RawCasRequest {
            key: "k".into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            previous_not_exist: prev.is_none(),
            previous_value: Bytes::copy_from_slice(prev.unwrap_or("").as_bytes()),
            delete,
            ..Default::default()
        };
        match send(&c, b"k", req.into(), T0) {
            KvResponse::RawCompareAndSwap(r) => r,
            other => panic!("{other:?}"),
        }
    };
    let r = cas(None, "1", false);
    assert!(r.succeed && r.previous_not_exist);
    let r = cas(None, "2", false);
    assert!(!r.succeed && !r.previous_not_exist);
    assert_eq!(&r.previous_value[..], b"1");
    let r = cas(Some("0"), "2", false);
    assert!(!r.succeed);
    assert_eq!(get(&c, b"k", T0), Some(b"1".to_vec()));
    let r = cas(Some("1"), "2", false);
    assert!(r.succeed);
    assert_eq!(&r.previous_value[..], b"1");
    assert_eq!(get(&c, b"k", T0), Some(b"2".to_vec()));
    let r = cas(Some("2"), "", true);
    assert!(r.succeed);
    assert_eq!(get(&c, b"k", T0), None);
}

#[test]
fn checksum_matches_hand_computed_crc64_xz() {
    let c = v1();
    put(&c, b"a", b"1", 0, T0);
    put(&c, b"bb", b"22", 0, T0);
    put(&c, b"z", b"other region", 0, T0);
    let req = kvrpcpb::RawChecksumRequest {
        ranges: vec![kvrpcpb::KeyRange { start_key: "".into(), end_key: "m".into() }],
        ..Default::default()
    };
    match send(&c, b"a", req.into(), T0) {
        KvResponse::RawChecksum(r) => {
            assert!(r.error.is_empty(), "{}", r.error);
            // crc64xz("a1") ^ crc64xz("bb22"), computed bit by bit outside Rust.
            assert_eq!(r.checksum, 0xe2e2_833b_1f93_ae9a ^ 0x796b_24a4_2a45_64a5);
            assert_eq!(r.checksum, 0x9b89_a79f_35d6_ca3f);
            assert_eq!((r.total_kvs, r.total_bytes), (2, 6));
        }
        other => panic!("{other:?}"),
    }
    let bad = kvrpcpb::RawChecksumRequest { algorithm: 7, ..Default::default() };
    match send(&c, b"a", bad.into(), T0) {
        KvResponse::RawChecksum(r) => assert_eq!(r.error, "unknown checksum algorithm 7"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn scans_forward_reverse_and_batch() {
    let c = v1();
    for k in ["a", "b", "c", "d", "n", "o"] {
        put(&c, k.as_bytes(), k.as_bytes(), 0, T0);
    }
    // Forward: [start, end), limit, key_only; clamped at the region end.
    let r = scan(
        &c,
        b"a",
        kvrpcpb::RawScanRequest {
            start_key: "b".into(),
            limit: 10,
            key_only: true,
            ..Default::default()
        },
    );
    assert_eq!(keys(&r.kvs), vec![&b"b"[..], b"c", b"d"]);
    assert!(r.kvs.iter().all(|p| p.value.is_empty()));
    let r = scan(
        &c,
        b"a",
        kvrpcpb::RawScanRequest {
            start_key: "a".into(),
            end_key: "c".into(),
            limit: 10,
            ..Default::default()
        },
    );
    assert_eq!(keys(&r.kvs), vec![&b"a"[..], b"b"]);
    assert_eq!(&r.kvs[0].value[..], b"a");
    let r = scan(
        &c,
        b"a",
        kvrpcpb::RawScanRequest { start_key: "a".into(), limit: 2, ..Default::default() },
    );
    assert_eq!(keys(&r.kvs), vec![&b"a"[..], b"b"]);
    // Reverse: start_key is the exclusive upper bound, end_key the inclusive lower bound.
    let r = scan(
        &c,
        b"a",
        kvrpcpb::RawScanRequest {
            start_key: "d".into(),
            end_key: "b".into(),
            limit: 10,
            reverse: true,
            ..Default::default()
        },
    );
    assert_eq!(keys(&r.kvs), vec![&b"c"[..], b"b"]);
    // Reverse from the region's end key (allowed: the seek key may equal the end).
    let r = scan(
        &c,
        b"a",
        kvrpcpb::RawScanRequest {
            start_key: "m".into(),
            limit: 2,
            reverse: true,
            ..Default::default()
        },
    );
    assert_eq!(keys(&r.kvs), vec![&b"d"[..], b"c"]);
    // A seek key outside the region is KeyNotInRegion.
    let r = scan(
        &c,
        b"a",
        kvrpcpb::RawScanRequest { start_key: "n".into(), limit: 2, ..Default::default() },
    );
    assert!(r.region_error.unwrap().key_not_in_region.is_some());
    // Batch scan: each_limit per range; an empty end borrows the next start.
    let req = kvrpcpb::RawBatchScanRequest {
        ranges: vec![
            kvrpcpb::KeyRange { start_key: "a".into(), end_key: "".into() },
            kvrpcpb::KeyRange { start_key: "c".into(), end_key: "m".into() },
        ],
        each_limit: 1,
        ..Default::default()
    };
    match send(&c, b"a", req.into(), T0) {
        KvResponse::RawBatchScan(r) => assert_eq!(keys(&r.kvs), vec![&b"a"[..], b"c"]),
        other => panic!("{other:?}"),
    }
    let bad = kvrpcpb::RawBatchScanRequest {
        ranges: vec![kvrpcpb::KeyRange { start_key: "c".into(), end_key: "a".into() }],
        each_limit: 1,
        ..Default::default()
    };
    match send(&c, b"a", bad.into(), T0) {
        KvResponse::RawBatchScan(r) => {
            assert_eq!(r.kvs[0].error.as_ref().unwrap().abort, "Invalid KeyRanges")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn delete_range_stays_in_region() {
    let c = v1();
    for k in ["a", "b", "c", "n"] {
        put(&c, k.as_bytes(), b"v", 0, T0);
    }
    let req = |s: &str, e: &str| kvrpcpb::RawDeleteRangeRequest {
        start_key: Bytes::copy_from_slice(s.as_bytes()),
        end_key: Bytes::copy_from_slice(e.as_bytes()),
        ..Default::default()
    };
    // Past the region end: refused.
    assert!(region_error(&send(&c, b"a", req("a", "z").into(), T0)).key_not_in_region.is_some());
    assert!(region_error(&send(&c, b"a", req("a", "").into(), T0)).key_not_in_region.is_some());
    // Inverted: a message-only region error.
    let e = region_error(&send(&c, b"a", req("c", "a").into(), T0));
    assert!(e.message.starts_with("invalid delete range command"), "{e:?}");
    let resp = send(&c, b"a", req("a", "c").into(), T0);
    assert!(resp.region_error().is_none());
    let left: Vec<Vec<u8>> = c.raw_snapshot("").into_keys().collect();
    assert_eq!(left, vec![b"c".to_vec(), b"n".to_vec()]);
}

#[test]
fn region_errors_from_routing() {
    let c = v1();
    let region = region_of(&c, b"a");
    let leader = c.leader_of(region.id).unwrap();
    let follower = region.peers.iter().find(|p| p.store_id != leader.store_id).copied().unwrap();
    let get_req = |ctx: kvrpcpb::Context| -> KvRequest {
        kvrpcpb::RawGetRequest { context: Some(ctx), key: "a".into(), ..Default::default() }.into()
    };
    let ctx = c.context_for(region.id).unwrap();

    // Follower → NotLeader with the leader hint.
    let mut to_follower = ctx.clone();
    to_follower.peer = Some(follower);
    let e =
        region_error(&c.handle_kv(follower.store_id, get_req(to_follower.clone()), T0).unwrap());
    let nl = e.not_leader.unwrap();
    assert_eq!((nl.region_id, nl.leader), (region.id, Some(leader)));
    // ... but a replica read is served there.
    to_follower.replica_read = true;
    assert!(
        c.handle_kv(follower.store_id, get_req(to_follower), T0).unwrap().region_error().is_none()
    );

    // Context peer on another store → StoreNotMatch.
    let e = region_error(&c.handle_kv(follower.store_id, get_req(ctx.clone()), T0).unwrap());
    let snm = e.store_not_match.unwrap();
    assert_eq!((snm.request_store_id, snm.actual_store_id), (leader.store_id, follower.store_id));

    // Right store, wrong peer id → MismatchPeerId.
    let mut bad_peer = ctx.clone();
    bad_peer.peer = Some(metapb::Peer { id: 9999, ..leader });
    let e = region_error(&c.handle_kv(leader.store_id, get_req(bad_peer), T0).unwrap());
    assert_eq!(e.mismatch_peer_id.unwrap().store_peer_id, leader.id);

    // Unknown region → RegionNotFound.
    let mut unknown = ctx.clone();
    unknown.region_id = 4242;
    let e = region_error(&c.handle_kv(leader.store_id, get_req(unknown), T0).unwrap());
    assert_eq!(e.region_not_found.unwrap().region_id, 4242);

    // No epoch → message-only error.
    let mut no_epoch = ctx.clone();
    no_epoch.region_epoch = None;
    assert_eq!(
        region_error(&c.handle_kv(leader.store_id, get_req(no_epoch), T0).unwrap()).message,
        "missing epoch!"
    );

    // A key of another region → KeyNotInRegion.
    let req: KvRequest = kvrpcpb::RawGetRequest {
        context: Some(ctx.clone()),
        key: "q".into(),
        ..Default::default()
    }
    .into();
    let e =
        region_error(&c.handle_kv(leader.store_id, req, T0).unwrap()).key_not_in_region.unwrap();
    assert_eq!((&e.key[..], e.region_id, &e.end_key[..]), (&b"q"[..], region.id, &b"m"[..]));

    // Another cluster id → INVALID_ARGUMENT status.
    let mut other = ctx.clone();
    other.cluster_id = 1;
    match c.handle_kv(leader.store_id, get_req(other), T0) {
        Err(RpcError::Status { code: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn stale_epoch_after_split_reports_siblings() {
    let c = v1();
    let region = region_of(&c, b"a");
    let old_ctx = c.context_for(region.id).unwrap();
    let (left, right) = c.split(b"f").unwrap();
    assert_eq!(right, region.id, "right half keeps the id (right-derive)");
    let leader = c.leader_of(right).unwrap();
    let req: KvRequest =
        kvrpcpb::RawGetRequest { context: Some(old_ctx), key: "g".into(), ..Default::default() }
            .into();
    let e = region_error(&c.handle_kv(leader.store_id, req, T0).unwrap());
    let current = e.epoch_not_match.unwrap().current_regions;
    let ids: Vec<u64> = current.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![right, left]);
    assert_eq!(current[0].region_epoch.unwrap().version, 2);
    assert_eq!(&current[1].end_key[..], b"f");
    // With a fresh context the request goes through; a left-half key is out of range.
    let ctx = c.context_for(right).unwrap();
    let req: KvRequest =
        kvrpcpb::RawGetRequest { context: Some(ctx), key: "a".into(), ..Default::default() }.into();
    assert!(
        region_error(&c.handle_kv(leader.store_id, req, T0).unwrap()).key_not_in_region.is_some()
    );
    assert!(c.split(b"f").is_err());
}

#[test]
fn merge_and_leader_moves() {
    let c = v1();
    let rs = c.regions();
    let (a, b) = (rs[0].id, rs[1].id);
    let old_ctx = c.context_for(a).unwrap();
    assert_eq!(c.merge(a, b).unwrap(), b);
    let merged = c.region(b).unwrap();
    assert_eq!((&merged.start_key[..], &merged.end_key[..]), (&b""[..], &b""[..]));
    assert_eq!(merged.region_epoch.unwrap().version, 2);
    assert!(c.region(a).is_none());
    // The merged-away region is gone from its stores.
    let store = old_ctx.peer.unwrap().store_id;
    let req: KvRequest =
        kvrpcpb::RawGetRequest { context: Some(old_ctx), key: "a".into(), ..Default::default() }
            .into();
    assert!(region_error(&c.handle_kv(store, req, T0).unwrap()).region_not_found.is_some());
    assert!(c.merge(b, b).is_err());

    // Leader transfer and stopping stores.
    let target = merged
        .peers
        .iter()
        .map(|p| p.store_id)
        .find(|s| *s != c.leader_of(b).unwrap().store_id)
        .unwrap();
    c.transfer_leader(b, target).unwrap();
    assert_eq!(c.leader_of(b).unwrap().store_id, target);
    let ctx = c.context_for(b).unwrap();
    c.stop_store(target).unwrap();
    let req: KvRequest =
        kvrpcpb::RawGetRequest { context: Some(ctx), key: "a".into(), ..Default::default() }.into();
    assert!(matches!(c.handle_kv(target, req.clone(), T0), Err(RpcError::Unavailable(_))));
    let new_leader = c.leader_of(b).unwrap().store_id;
    assert_ne!(new_leader, target, "a running peer took over");
    let e = region_error(&c.handle_kv(new_leader, req, T0).unwrap());
    assert!(e.store_not_match.is_some(), "stale peer in the context");
    c.start_store(target).unwrap();
    assert!(c.is_store_running(target));
}

#[test]
fn injected_errors() {
    let c = v1();
    let region = region_of(&c, b"a");
    let busy = errorpb::Error {
        message: "busy".into(),
        server_is_busy: Some(errorpb::ServerIsBusy {
            reason: "sim".into(),
            backoff_ms: 10,
            ..Default::default()
        }),
        ..Default::default()
    };
    c.inject_region_error(Filter::any().region(region.id).command("raw_get"), busy.clone(), 2);
    let probe = || {
        let req = kvrpcpb::RawGetRequest { key: "a".into(), ..Default::default() };
        send(&c, b"a", req.into(), T0)
    };
    assert_eq!(region_error(&probe()), busy);
    // Other commands are unaffected.
    assert!(put(&c, b"a", b"1", 0, T0).region_error.is_none());
    assert_eq!(region_error(&probe()), busy);
    assert!(probe().region_error().is_none(), "only twice");

    // Any kind, including ones the model never produces itself.
    let kinds = [
        errorpb::Error { stale_command: Some(Default::default()), ..Default::default() },
        errorpb::Error {
            disk_full: Some(errorpb::DiskFull { store_id: vec![1], reason: "full".into() }),
            ..Default::default()
        },
        errorpb::Error {
            undetermined_result: Some(errorpb::UndeterminedResult { message: "?".into() }),
            ..Default::default()
        },
        errorpb::Error { message: "unknown kind".into(), ..Default::default() },
    ];
    for k in &kinds {
        c.inject_region_error(Filter::any(), k.clone(), 1);
        assert_eq!(&region_error(&probe()), k);
    }

    // Transport-level faults on one store.
    let leader = c.leader_of(region.id).unwrap().store_id;
    c.inject_rpc_error(Filter::any().store(leader), RpcError::DeadlineExceeded, 1);
    let req: KvRequest = kvrpcpb::RawGetRequest {
        context: c.context_for(region.id),
        key: "a".into(),
        ..Default::default()
    }
    .into();
    assert_eq!(c.handle_kv(leader, req.clone(), T0), Err(RpcError::DeadlineExceeded));
    assert!(c.handle_kv(leader, req, T0).is_ok());
}

fn pd(c: &Cluster, member: usize, req: PdRequest) -> Result<PdResponse, RpcError> {
    c.handle_pd(member, req, T0)
}

fn header(c: &Cluster) -> Option<pdpb::RequestHeader> {
    Some(pdpb::RequestHeader { cluster_id: c.config().cluster_id, ..Default::default() })
}

fn get_region(c: &Cluster, key: &[u8]) -> pdpb::GetRegionResponse {
    let req = pdpb::GetRegionRequest {
        header: header(c),
        region_key: Bytes::copy_from_slice(key),
        ..Default::default()
    };
    match pd(c, 0, PdRequest::GetRegion(Box::new(req))).unwrap() {
        PdResponse::GetRegion(r) => *r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn pd_region_lookups_follow_splits_and_merges() {
    let c = v1();
    let (left, right) = c.split(b"f").unwrap();
    let r = get_region(&c, b"a");
    assert_eq!(r.region.as_ref().unwrap().id, left);
    assert_eq!(r.leader, c.leader_of(left));
    assert_eq!(r.header.unwrap().cluster_id, c.config().cluster_id);
    assert_eq!(get_region(&c, b"f").region.unwrap().id, right);

    let prev =
        pdpb::GetRegionRequest { header: header(&c), region_key: "g".into(), ..Default::default() };
    match pd(&c, 0, PdRequest::GetPrevRegion(Box::new(prev))).unwrap() {
        PdResponse::GetPrevRegion(r) => assert_eq!(r.region.unwrap().id, left),
        other => panic!("{other:?}"),
    }
    let by_id =
        pdpb::GetRegionByIdRequest { header: header(&c), region_id: right, ..Default::default() };
    match pd(&c, 0, PdRequest::GetRegionById(Box::new(by_id))).unwrap() {
        PdResponse::GetRegionById(r) => assert_eq!(&r.region.unwrap().start_key[..], b"f"),
        other => panic!("{other:?}"),
    }
    let scan = pdpb::ScanRegionsRequest {
        header: header(&c),
        start_key: "b".into(),
        end_key: "".into(),
        limit: 2,
    };
    match pd(&c, 0, PdRequest::ScanRegions(Box::new(scan))).unwrap() {
        PdResponse::ScanRegions(r) => {
            let ids: Vec<u64> = r.regions.iter().map(|x| x.region.as_ref().unwrap().id).collect();
            assert_eq!(ids, vec![left, right]);
            assert_eq!(r.region_metas.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    let batch = pdpb::BatchScanRegionsRequest {
        header: header(&c),
        ranges: vec![
            pdpb::KeyRange { start_key: "a".into(), end_key: "b".into() },
            pdpb::KeyRange { start_key: "c".into(), end_key: "g".into() },
            pdpb::KeyRange { start_key: "n".into(), end_key: "".into() },
        ],
        ..Default::default()
    };
    match pd(&c, 0, PdRequest::BatchScanRegions(Box::new(batch))).unwrap() {
        PdResponse::BatchScanRegions(r) => {
            let ids: Vec<u64> = r.regions.iter().map(|x| x.region.as_ref().unwrap().id).collect();
            let last = c.regions()[2].id;
            assert_eq!(ids, vec![left, right, last]);
        }
        other => panic!("{other:?}"),
    }

    c.merge(left, right).unwrap();
    let r = get_region(&c, b"a");
    assert_eq!(r.region.unwrap().id, right);

    // Stale PD keeps the old view until refreshed.
    c.set_pd_stale(true);
    let (l2, _) = c.split(b"c").unwrap();
    assert_eq!(get_region(&c, b"a").region.unwrap().id, right);
    c.set_pd_stale(false);
    assert_eq!(get_region(&c, b"a").region.unwrap().id, l2);
}

#[test]
fn pd_members_leadership_and_cluster_id() {
    let c = Cluster::new(ClusterConfig { pd_members: 3, ..ClusterConfig::default() });
    let members = |m| match pd(&c, m, PdRequest::GetMembers(Default::default())).unwrap() {
        PdResponse::GetMembers(r) => r,
        other => panic!("{other:?}"),
    };
    let r = members(2);
    assert_eq!(r.members.len(), 3);
    assert_eq!(r.leader.as_ref().unwrap().member_id, r.members[0].member_id);
    assert_eq!(r.header.unwrap().cluster_id, c.config().cluster_id);

    // A follower refuses leader-only calls.
    let req = pdpb::GetRegionRequest { header: header(&c), ..Default::default() };
    assert_eq!(
        pd(&c, 1, PdRequest::GetRegion(Box::new(req.clone()))),
        Err(RpcError::Status { code: 14, message: "not leader".into() })
    );
    c.set_pd_leader(1).unwrap();
    assert!(pd(&c, 1, PdRequest::GetRegion(Box::new(req.clone()))).is_ok());
    assert_eq!(members(0).leader.unwrap().member_id, members(0).members[1].member_id);
    // TSO on a follower fails with PD's "is not leader" text.
    let tso = pdpb::TsoRequest { header: header(&c), count: 1, ..Default::default() };
    match pd(&c, 0, PdRequest::Tso(Box::new(tso))) {
        Err(RpcError::Status { code: 2, message }) => assert!(message.contains("is not leader")),
        other => panic!("{other:?}"),
    }
    // A wrong cluster id is FailedPrecondition.
    let bad = pdpb::GetRegionRequest::default();
    match pd(&c, 1, PdRequest::GetRegion(Box::new(bad))) {
        Err(RpcError::Status { code: 9, message }) => {
            assert!(message.starts_with("mismatch cluster id"))
        }
        other => panic!("{other:?}"),
    }
    assert!(pd(&c, 7, PdRequest::GetMembers(Default::default())).is_err());
    // Injected PD faults.
    c.inject_pd_error(Filter::any().command("get_region"), RpcError::Unavailable("x".into()), 1);
    assert!(pd(&c, 1, PdRequest::GetRegion(Box::new(req.clone()))).is_err());
    assert!(pd(&c, 1, PdRequest::GetRegion(Box::new(req))).is_ok());
}

#[test]
fn pd_stores_keyspaces_and_gc_state() {
    let c = v1();
    let all = |exclude| {
        let req =
            pdpb::GetAllStoresRequest { header: header(&c), exclude_tombstone_stores: exclude };
        match pd(&c, 0, PdRequest::GetAllStores(Box::new(req))).unwrap() {
            PdResponse::GetAllStores(r) => r.stores.iter().map(|s| s.id).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(all(true), vec![1, 2, 3]);
    c.tombstone_store(3).unwrap();
    assert_eq!(all(true), vec![1, 2]);
    assert_eq!(all(false), vec![1, 2, 3]);
    match pd(
        &c,
        0,
        PdRequest::GetStore(Box::new(pdpb::GetStoreRequest { header: header(&c), store_id: 2 })),
    )
    .unwrap()
    {
        PdResponse::GetStore(r) => assert_eq!(r.store.unwrap().address, "store-2.sim:20160"),
        other => panic!("{other:?}"),
    }
    match pd(
        &c,
        0,
        PdRequest::GetStore(Box::new(pdpb::GetStoreRequest { header: header(&c), store_id: 99 })),
    )
    .unwrap()
    {
        PdResponse::GetStore(r) => {
            assert_eq!(r.header.unwrap().error.unwrap().message, "invalid store ID 99, not found");
        }
        other => panic!("{other:?}"),
    }

    let load = |name: &str| {
        let req = keyspacepb::LoadKeyspaceRequest {
            header: header(&c),
            name: name.into(),
            ..Default::default()
        };
        match pd(&c, 0, PdRequest::LoadKeyspace(Box::new(req))).unwrap() {
            PdResponse::LoadKeyspace(r) => r,
            other => panic!("{other:?}"),
        }
    };
    let d = load("DEFAULT").keyspace.unwrap();
    assert_eq!(d.keyspace, Some(keyspacepb::keyspace_meta::Keyspace::Id(0)));
    assert_eq!(d.state, keyspacepb::KeyspaceState::Enabled as i32);
    let missing = load("ks1");
    assert_eq!(
        missing.header.unwrap().error.unwrap().r#type,
        pdpb::ErrorType::EntryNotFound as i32
    );
    c.add_keyspace("ks1", 1).unwrap();
    assert!(c.add_keyspace("again", 1).is_err());
    assert_eq!(
        load("ks1").keyspace.unwrap().keyspace,
        Some(keyspacepb::keyspace_meta::Keyspace::Id(1))
    );

    let gc = || match pd(
        &c,
        0,
        PdRequest::GetGcState(Box::new(pdpb::GetGcStateRequest {
            header: header(&c),
            ..Default::default()
        })),
    )
    .unwrap()
    {
        PdResponse::GetGcState(r) => r.gc_state.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!((gc().txn_safe_point, gc().gc_safe_point), (0, 0));
    c.set_gc_safe_points(10, 5);
    assert_eq!((gc().txn_safe_point, gc().gc_safe_point), (10, 5));
}

#[test]
fn tso_is_monotonic_and_returns_the_last_of_a_batch() {
    let c = v1();
    let base = c.config().tso_base_ms as i64;
    let tso = |count, now| {
        let req = pdpb::TsoRequest { header: header(&c), count, ..Default::default() };
        match c.handle_pd(0, PdRequest::Tso(Box::new(req)), now).unwrap() {
            PdResponse::Tso(r) => {
                assert_eq!(r.count, count);
                let t = r.timestamp.unwrap();
                (t.physical, t.logical)
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(tso(1, T0), (base, 1));
    assert_eq!(tso(10, T0), (base, 11));
    let mut last = (base, 11);
    for ms in [5, 5, 3, 1000, 999] {
        // The clock may even go backwards; timestamps never do.
        let t = tso(3, Instant::from_millis(ms));
        assert!(t > last, "{t:?} after {last:?}");
        last = t;
    }
    assert_eq!(last, (base + 1000, 6));
    // Logical overflow moves physical forward.
    let t = tso(200_000, Instant::from_millis(1000));
    let t2 = tso(200_000, Instant::from_millis(1000));
    assert!(t2 > t && t2.0 == base + 1001);
    let req = pdpb::TsoRequest { header: header(&c), count: 0, ..Default::default() };
    assert!(c.handle_pd(0, PdRequest::Tso(Box::new(req)), T0 + Duration::from_secs(2)).is_err());
    let req = pdpb::TsoRequest { header: header(&c), count: u32::MAX, ..Default::default() };
    assert!(c.handle_pd(0, PdRequest::Tso(Box::new(req)), T0).is_err());
}

/// `set_region_error_rate`: at 1000 per mille every request is refused
/// with one of the asked kinds (each naming the live region, so a client
/// can act on it) and nothing is executed; at 0, or with no kinds, nothing
/// is injected; in between, roughly the asked share.
#[test]
fn random_region_errors_at_a_rate() {
    let c = v1();
    let region = region_of(&c, b"a");
    let all = [
        RandomRegionError::NotLeader,
        RandomRegionError::ServerIsBusy,
        RandomRegionError::EpochNotMatch,
    ];
    c.set_region_error_rate(1000, &all);
    let mut kinds = [0u32; 3];
    for _ in 0..300 {
        let resp = put(&c, b"a", b"1", 0, T0);
        let e = resp.region_error.expect("every request refused");
        if let Some(nl) = &e.not_leader {
            assert_eq!(nl.leader, c.leader_of(region.id));
            kinds[0] += 1;
        } else if e.server_is_busy.is_some() {
            kinds[1] += 1;
        } else if let Some(en) = &e.epoch_not_match {
            assert_eq!(en.current_regions, vec![region.clone()]);
            kinds[2] += 1;
        } else {
            panic!("unexpected kind {e:?}");
        }
    }
    assert!(kinds.iter().all(|&k| k > 50), "all three kinds drawn: {kinds:?}");
    assert!(c.raw_snapshot("default").is_empty(), "nothing was executed");
    c.set_region_error_rate(0, &all);
    assert!(put(&c, b"a", b"1", 0, T0).region_error.is_none());
    c.set_region_error_rate(1000, &[]);
    assert!(put(&c, b"a", b"1", 0, T0).region_error.is_none(), "no kinds: off");
    c.set_region_error_rate(1000, &[RandomRegionError::NotLeader]);
    assert!(put(&c, b"a", b"1", 0, T0).region_error.unwrap().not_leader.is_some());
    c.set_region_error_rate(100, &all);
    let refused = (0..2000).filter(|_| put(&c, b"a", b"1", 0, T0).region_error.is_some()).count();
    assert!((120..=280).contains(&refused), "about 10 %: {refused} of 2000");
}

/// Replica reads: a follower and a learner serve a read with
/// `replica_read` while the leader's store runs, refuse it with `NotLeader`
/// without a hint while it is down and no leader is elected, and refuse a
/// plain read with the leader's name; a learner is never elected; every
/// request reaching a running store is counted.
#[test]
fn replica_reads_need_a_live_leader_and_learners_never_lead() {
    let c = Cluster::new(ClusterConfig {
        learner_stores: vec![vec![("engine".into(), "tiflash".into())]],
        ..ClusterConfig::default()
    });
    put(&c, b"k", b"v", 0, T0);
    let region = region_of(&c, b"k");
    assert_eq!(region.region_epoch.unwrap().conf_ver, 2, "AddLearner bumped conf_ver");
    let learner =
        *region.peers.iter().find(|p| p.role == metapb::PeerRole::Learner as i32).unwrap();
    assert_eq!(learner.store_id, 4);
    let leader = c.leader_of(region.id).unwrap().store_id;
    let follower = region.peers.iter().find(|p| p.store_id != leader && p.store_id != 4).unwrap();
    let read = |store: u64, replica_read: bool| {
        let mut ctx = c.context_for(region.id).unwrap();
        ctx.peer = region.peers.iter().find(|p| p.store_id == store).copied();
        ctx.replica_read = replica_read;
        let req =
            kvrpcpb::RawGetRequest { context: Some(ctx), key: "k".into(), ..Default::default() };
        c.handle_kv(store, req.into(), T0)
    };
    for store in [follower.store_id, 4] {
        match read(store, true).expect("served") {
            KvResponse::RawGet(r) => assert_eq!((r.region_error, &r.value[..]), (None, &b"v"[..])),
            other => panic!("unexpected {other:?}"),
        }
        let plain = read(store, false).expect("answered");
        let hint = region_error(&plain).not_leader.expect("not leader").leader;
        assert_eq!(hint.map(|p| p.store_id), Some(leader));
    }
    assert_eq!(c.kv_request_count(4, "raw_get", Some(true)), 1);
    assert_eq!(c.kv_request_count(4, "raw_get", Some(false)), 1);
    assert_eq!(c.kv_request_count(4, "raw_get", None), 2);

    assert!(c.transfer_leader(region.id, 4).is_err(), "a learner cannot lead");
    // The leader dies and, pointed back at it, is not re-elected: replica
    // reads have no leader to ask for a read index.
    c.stop_store(leader).unwrap();
    let new_leader = c.leader_of(region.id).unwrap().store_id;
    assert_ne!(new_leader, 4, "the learner is not elected");
    assert_ne!(new_leader, leader);
    c.transfer_leader(region.id, leader).unwrap();
    let resp = read(4, true).expect("answered");
    let not_leader = region_error(&resp).not_leader.expect("not leader");
    assert_eq!(not_leader.leader, None, "no hint: no live leader");
}
