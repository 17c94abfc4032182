use std::fmt::Write as _;

use bytes::Bytes;
use tikv_proto::{apipb, errorpb, keyspacepb, kvrpcpb, metapb};

use super::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", Key::from(bytes.to_vec()))
}

fn v2(mode: Mode, id: u32) -> ApiCodec {
    ApiCodec::v2(mode, id).unwrap()
}

#[test]
fn keyspace_id_bounds() {
    let max = v2(Mode::Raw, MAX_KEYSPACE_ID);
    assert_eq!(max.prefix(), b"r\xff\xff\xff");
    // The last raw keyspace ends where the 's' prefix starts.
    assert_eq!(max.keyspace_range().unwrap().end.as_bytes(), b"s\x00\x00\x00");
    assert!(matches!(ApiCodec::v2(Mode::Txn, MAX_KEYSPACE_ID + 1), Err(Error::InvalidArgument(_))));
    assert!(ApiCodec::v2(Mode::Txn, u32::MAX).is_err());
    let c = v2(Mode::Txn, 0x01_0203);
    assert_eq!(c.prefix(), b"x\x01\x02\x03");
    assert_eq!(
        c.keyspace_range().unwrap(),
        KeyRange::new(&b"x\x01\x02\x03"[..], &b"x\x01\x02\x04"[..])
    );
    assert_eq!(ApiCodec::v1(Mode::Txn).keyspace_range(), None);
    assert_eq!(ApiCodec::v1(Mode::Raw).prefix(), b"");
}

fn meta(
    name: &str,
    state: keyspacepb::KeyspaceState,
    ks: Option<keyspacepb::keyspace_meta::Keyspace>,
) -> keyspacepb::KeyspaceMeta {
    keyspacepb::KeyspaceMeta {
        name: name.into(),
        state: state as i32,
        keyspace: ks,
        ..Default::default()
    }
}

#[test]
fn from_keyspace_meta() {
    use keyspacepb::KeyspaceState;
    use keyspacepb::keyspace_meta::Keyspace;
    let c = ApiCodec::from_keyspace_meta(
        Mode::Txn,
        &meta("ks1", KeyspaceState::Enabled, Some(Keyspace::Id(7))),
    )
    .unwrap();
    assert_eq!(c.keyspace_id(), Some(7));
    assert_eq!(c.keyspace_name(), Some("ks1"));
    assert_eq!(c.api_version(), ApiVersion::V2);
    assert_eq!(c.prefix(), b"x\x00\x00\x07");

    // An unset oneof is keyspace 0 (Go's GetId() on nil).
    let c = ApiCodec::from_keyspace_meta(Mode::Raw, &meta("DEFAULT", KeyspaceState::Enabled, None))
        .unwrap();
    assert_eq!(c.keyspace_id(), Some(0));

    for state in [KeyspaceState::Disabled, KeyspaceState::Archived, KeyspaceState::Tombstone] {
        match ApiCodec::from_keyspace_meta(Mode::Txn, &meta("old", state, Some(Keyspace::Id(3)))) {
            Err(Error::Keyspace { name, reason }) => {
                assert_eq!(name, "old");
                assert!(reason.contains(&format!("{state:?}")), "{reason}");
            }
            other => panic!("{state:?}: {other:?}"),
        }
    }
    let mut unknown = meta("odd", KeyspaceState::Enabled, Some(Keyspace::Id(3)));
    unknown.state = 42;
    assert!(matches!(
        ApiCodec::from_keyspace_meta(Mode::Txn, &unknown),
        Err(Error::Keyspace { .. })
    ));

    // API V3 identities are refused, even with a valid-looking id.
    let v3 = meta(
        "ns-ks",
        KeyspaceState::Enabled,
        Some(Keyspace::KeyspaceIdentity(apipb::KeyspaceIdentity {
            namespace_id: 1,
            keyspace_id: 5,
        })),
    );
    assert!(matches!(ApiCodec::from_keyspace_meta(Mode::Txn, &v3), Err(Error::Unsupported(_))));

    let big = meta("big", KeyspaceState::Enabled, Some(Keyspace::Id(MAX_KEYSPACE_ID + 1)));
    assert!(matches!(
        ApiCodec::from_keyspace_meta(Mode::Txn, &big),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn api_version_mapping() {
    assert_eq!(kvrpcpb::ApiVersion::from(ApiVersion::V1), kvrpcpb::ApiVersion::V1);
    assert_eq!(kvrpcpb::ApiVersion::from(ApiVersion::V2), kvrpcpb::ApiVersion::V2);
    assert_eq!(ApiVersion::try_from(kvrpcpb::ApiVersion::V1ttl).unwrap(), ApiVersion::V1);
    assert_eq!(ApiVersion::try_from(kvrpcpb::ApiVersion::V2).unwrap(), ApiVersion::V2);
    assert!(matches!(ApiVersion::try_from(kvrpcpb::ApiVersion::V3), Err(Error::Unsupported(_))));
}

#[test]
fn keys_and_ranges() {
    let c = v2(Mode::Raw, 1);
    assert_eq!(c.encode_key(&Key::from("k")).as_bytes(), b"r\x00\x00\x01k");
    assert_eq!(c.encode_key(&Key::EMPTY).as_bytes(), b"r\x00\x00\x01");
    assert_eq!(
        c.encode_range(&KeyRange::new("a", "")),
        KeyRange::new(&b"r\x00\x00\x01a"[..], &b"r\x00\x00\x02"[..])
    );
    assert_eq!(
        c.encode_range(&KeyRange::all()),
        KeyRange::new(&b"r\x00\x00\x01"[..], &b"r\x00\x00\x02"[..])
    );
    assert_eq!(
        c.encode_range(&KeyRange::new("a", "c")),
        KeyRange::new(&b"r\x00\x00\x01a"[..], &b"r\x00\x00\x01c"[..])
    );
    assert_eq!(c.decode_key(b"r\x00\x00\x01k").unwrap(), Key::from("k"));
    assert_eq!(c.decode_key(b"").unwrap(), Key::EMPTY);
    for bad in [&b"r\x00\x00\x02k"[..], b"x\x00\x00\x01k", b"r\x00", b"k"] {
        assert!(matches!(c.decode_key(bad), Err(Error::MalformedResponse(_))), "{bad:?}");
    }
    // V1 is the identity.
    let c1 = ApiCodec::v1(Mode::Raw);
    assert_eq!(c1.encode_key(&Key::from("k")), Key::from("k"));
    assert_eq!(c1.encode_range(&KeyRange::new("a", "")), KeyRange::new("a", ""));
    assert_eq!(c1.decode_key(b"r\x00\x00\x02k").unwrap().as_bytes(), b"r\x00\x00\x02k");
}

#[test]
fn region_keys_for_pd() {
    let mc = memcomparable::encode_bytes;
    assert_eq!(ApiCodec::v1(Mode::Raw).encode_region_key(&Key::from("k")), b"k");
    assert_eq!(ApiCodec::v1(Mode::Txn).encode_region_key(&Key::from("k")), mc(b"k"));
    assert_eq!(v2(Mode::Txn, 2).encode_region_key(&Key::from("k")), mc(b"x\x00\x00\x02k"));
    assert_eq!(
        ApiCodec::v1(Mode::Txn).encode_region_range(&KeyRange::new("a", "")),
        (mc(b"a"), vec![])
    );
    assert_eq!(
        v2(Mode::Raw, 2).encode_region_range(&KeyRange::new("a", "")),
        (mc(b"r\x00\x00\x02a"), mc(b"r\x00\x00\x03"))
    );
}

fn region(start: &[u8], end: &[u8]) -> metapb::Region {
    metapb::Region {
        id: 9,
        start_key: Bytes::copy_from_slice(start),
        end_key: Bytes::copy_from_slice(end),
        ..Default::default()
    }
}

fn enc(k: &[u8]) -> Vec<u8> {
    if k.is_empty() { Vec::new() } else { memcomparable::encode_bytes(k) }
}

#[test]
fn region_decoding_and_clamping() {
    let mut out = String::new();
    let cases: &[(&str, &[u8], &[u8])] = &[
        ("whole cluster", b"", b""),
        ("inside", b"x\x00\x00\x05a", b"x\x00\x00\x05m"),
        ("inside to end", b"x\x00\x00\x05m", b"x\x00\x00\x06"),
        ("starts before", b"x\x00\x00\x04zz", b"x\x00\x00\x05c"),
        ("ends after", b"x\x00\x00\x05c", b"x\x00\x00\x07"),
        ("covers keyspace", b"r", b"y"),
        ("starts at prefix", b"x\x00\x00\x05", b"x\x00\x00\x05c"),
        ("below", b"r\x00\x00\x05a", b"x\x00\x00\x05"),
        ("above", b"x\x00\x00\x06", b""),
        ("raw keyspace", b"r\x00\x00\x05a", b"r\x00\x00\x05z"),
    ];
    let c = v2(Mode::Txn, 5);
    for (name, start, end) in cases {
        let r = c.decode_region(region(&enc(start), &enc(end))).unwrap();
        let res = match r {
            Some(r) => format!("[{}, {})", show(&r.start_key), show(&r.end_key)),
            None => "outside keyspace".into(),
        };
        writeln!(out, "{name:<18} [{}, {}) -> {res}", show(start), show(end)).unwrap();
    }
    insta::assert_snapshot!(out);

    // V1 txn decodes memcomparable keys; V1 raw keeps them.
    let wire = region(&enc(b"a"), &enc(b"b"));
    let r = ApiCodec::v1(Mode::Txn).decode_region(wire.clone()).unwrap().unwrap();
    assert_eq!((&r.start_key[..], &r.end_key[..]), (&b"a"[..], &b"b"[..]));
    let r = ApiCodec::v1(Mode::Raw).decode_region(wire.clone()).unwrap().unwrap();
    assert_eq!(r, wire);
    // Malformed boundaries are errors in every memcomparable mode.
    for codec in [ApiCodec::v1(Mode::Txn), v2(Mode::Raw, 1)] {
        let bad = region(b"abc", b"");
        assert!(matches!(codec.decode_region(bad), Err(Error::MalformedResponse(_))));
    }
    assert!(ApiCodec::v1(Mode::Raw).decode_region(region(b"abc", b"")).is_ok());
}

#[test]
fn stamp_context() {
    let mut ctx = kvrpcpb::Context::default();
    ApiCodec::v1(Mode::Raw).stamp_context(&mut ctx);
    assert_eq!(ctx.api_version, kvrpcpb::ApiVersion::V1 as i32);
    assert_eq!(ctx.keyspace, Some(kvrpcpb::context::Keyspace::KeyspaceId(NULL_KEYSPACE_ID)));
    assert_eq!(ctx.keyspace_name, "");

    let mut ctx = kvrpcpb::Context::default();
    v2(Mode::Txn, 12).with_keyspace_name("tenant").stamp_context(&mut ctx);
    assert_eq!(ctx.api_version, kvrpcpb::ApiVersion::V2 as i32);
    assert_eq!(ctx.keyspace, Some(kvrpcpb::context::Keyspace::KeyspaceId(12)));
    assert_eq!(ctx.keyspace_name, "tenant");
    // V1 ignores a name: it has no keyspace.
    assert_eq!(ApiCodec::v1(Mode::Txn).with_keyspace_name("x").keyspace_name(), None);
}

fn mutation(k: &str) -> kvrpcpb::Mutation {
    kvrpcpb::Mutation { key: b(k), value: b("v"), ..Default::default() }
}

fn krange(s: &str, e: &str) -> kvrpcpb::KeyRange {
    kvrpcpb::KeyRange { start_key: b(s), end_key: b(e) }
}

/// One request of every variant, with every key field set to user keys
/// (ranges in several shapes).
fn sample_requests() -> Vec<KvRequest> {
    use kvrpcpb::*;
    let keys = || vec![b("k1"), b("k2")];
    vec![
        GetRequest { key: b("k"), ..Default::default() }.into(),
        ScanRequest { start_key: b("a"), end_key: b(""), ..Default::default() }.into(),
        ScanRequest { start_key: b("z"), end_key: b("a"), reverse: true, ..Default::default() }
            .into(),
        ScanRequest { start_key: b(""), end_key: b("a"), reverse: true, ..Default::default() }
            .into(),
        PrewriteRequest {
            mutations: vec![mutation("m1"), mutation("m2")],
            primary_lock: b("m1"),
            secondaries: vec![b("m2")],
            ..Default::default()
        }
        .into(),
        PessimisticLockRequest {
            mutations: vec![mutation("m")],
            primary_lock: b("p"),
            ..Default::default()
        }
        .into(),
        PessimisticRollbackRequest { keys: keys(), ..Default::default() }.into(),
        TxnHeartBeatRequest { primary_lock: b("p"), ..Default::default() }.into(),
        CheckTxnStatusRequest { primary_key: b("p"), ..Default::default() }.into(),
        CheckSecondaryLocksRequest { keys: keys(), ..Default::default() }.into(),
        CommitRequest { keys: keys(), primary_key: b("p"), ..Default::default() }.into(),
        CommitRequest { keys: keys(), primary_key: b(""), ..Default::default() }.into(),
        CleanupRequest { key: b("k"), ..Default::default() }.into(),
        BatchGetRequest { keys: keys(), ..Default::default() }.into(),
        BatchRollbackRequest { keys: keys(), ..Default::default() }.into(),
        ScanLockRequest { start_key: b(""), end_key: b(""), ..Default::default() }.into(),
        ResolveLockRequest { keys: keys(), ..Default::default() }.into(),
        DeleteRangeRequest { start_key: b("a"), end_key: b("b"), ..Default::default() }.into(),
        FlushRequest { mutations: vec![mutation("m")], primary_key: b("p"), ..Default::default() }
            .into(),
        BufferBatchGetRequest { keys: keys(), ..Default::default() }.into(),
        RawGetRequest { key: b("k"), ..Default::default() }.into(),
        RawBatchGetRequest { keys: keys(), ..Default::default() }.into(),
        RawPutRequest { key: b("k"), value: b("v"), ..Default::default() }.into(),
        RawBatchPutRequest {
            pairs: vec![KvPair { key: b("k1"), value: b("v"), ..Default::default() }],
            ..Default::default()
        }
        .into(),
        RawDeleteRequest { key: b("k"), ..Default::default() }.into(),
        RawBatchDeleteRequest { keys: keys(), ..Default::default() }.into(),
        RawScanRequest { start_key: b("a"), end_key: b("c"), ..Default::default() }.into(),
        RawScanRequest { start_key: b(""), end_key: b("c"), reverse: true, ..Default::default() }
            .into(),
        RawDeleteRangeRequest { start_key: b("a"), end_key: b(""), ..Default::default() }.into(),
        RawBatchScanRequest {
            ranges: vec![krange("a", "b"), krange("c", "")],
            ..Default::default()
        }
        .into(),
        RawBatchScanRequest { ranges: vec![krange("", "b")], reverse: true, ..Default::default() }
            .into(),
        RawGetKeyTtlRequest { key: b("k"), ..Default::default() }.into(),
        RawCasRequest {
            key: b("k"),
            value: b("v"),
            previous_value: b("old"),
            ..Default::default()
        }
        .into(),
        RawChecksumRequest { ranges: vec![krange("a", "")], ..Default::default() }.into(),
        SplitRegionRequest { split_keys: keys(), ..Default::default() }.into(),
        SplitRegionRequest { split_key: b("s"), ..Default::default() }.into(),
        UnsafeDestroyRangeRequest { start_key: b("a"), end_key: b("b"), ..Default::default() }
            .into(),
        BroadcastTxnStatusRequest {
            txn_status: vec![TxnStatus { start_ts: 5, commit_ts: 6, ..Default::default() }],
            ..Default::default()
        }
        .into(),
        GetHealthFeedbackRequest::default().into(),
    ]
}

/// Every key-bearing field of a request, by name: the oracle for "all keys
/// are encoded". Values (`value`, `previous_value`) are listed to show they
/// are left alone.
fn request_fields(req: &KvRequest) -> Vec<(&'static str, Bytes)> {
    let mut f: Vec<(&'static str, Bytes)> = Vec::new();
    let mut keys =
        |name: &'static str, ks: &[Bytes]| f.extend(ks.iter().map(|k| (name, k.clone())));
    match req {
        KvRequest::Get(r) => keys("key", std::slice::from_ref(&r.key)),
        KvRequest::Scan(r) => keys("range", &[r.start_key.clone(), r.end_key.clone()]),
        KvRequest::Prewrite(r) => {
            keys("mutation", &r.mutations.iter().map(|m| m.key.clone()).collect::<Vec<_>>());
            keys("primary", std::slice::from_ref(&r.primary_lock));
            keys("secondary", &r.secondaries);
        }
        KvRequest::PessimisticLock(r) => {
            keys("mutation", &r.mutations.iter().map(|m| m.key.clone()).collect::<Vec<_>>());
            keys("primary", std::slice::from_ref(&r.primary_lock));
        }
        KvRequest::PessimisticRollback(r) => keys("keys", &r.keys),
        KvRequest::TxnHeartBeat(r) => keys("primary", std::slice::from_ref(&r.primary_lock)),
        KvRequest::CheckTxnStatus(r) => keys("primary", std::slice::from_ref(&r.primary_key)),
        KvRequest::CheckSecondaryLocks(r) => keys("keys", &r.keys),
        KvRequest::Commit(r) => {
            keys("keys", &r.keys);
            keys("primary?", std::slice::from_ref(&r.primary_key));
        }
        KvRequest::Cleanup(r) => keys("key", std::slice::from_ref(&r.key)),
        KvRequest::BatchGet(r) => keys("keys", &r.keys),
        KvRequest::BatchRollback(r) => keys("keys", &r.keys),
        KvRequest::ScanLock(r) => keys("range", &[r.start_key.clone(), r.end_key.clone()]),
        KvRequest::ResolveLock(r) => keys("keys", &r.keys),
        KvRequest::DeleteRange(r) => keys("range", &[r.start_key.clone(), r.end_key.clone()]),
        KvRequest::Flush(r) => {
            keys("mutation", &r.mutations.iter().map(|m| m.key.clone()).collect::<Vec<_>>());
            keys("primary?", std::slice::from_ref(&r.primary_key));
        }
        KvRequest::BufferBatchGet(r) => keys("keys", &r.keys),
        KvRequest::RawGet(r) => keys("key", std::slice::from_ref(&r.key)),
        KvRequest::RawBatchGet(r) => keys("keys", &r.keys),
        KvRequest::RawPut(r) => {
            keys("key", std::slice::from_ref(&r.key));
            keys("=value", std::slice::from_ref(&r.value));
        }
        KvRequest::RawBatchPut(r) => {
            keys("pair", &r.pairs.iter().map(|p| p.key.clone()).collect::<Vec<_>>());
            keys("=value", &r.pairs.iter().map(|p| p.value.clone()).collect::<Vec<_>>());
        }
        KvRequest::RawDelete(r) => keys("key", std::slice::from_ref(&r.key)),
        KvRequest::RawBatchDelete(r) => keys("keys", &r.keys),
        KvRequest::RawScan(r) => keys("range", &[r.start_key.clone(), r.end_key.clone()]),
        KvRequest::RawDeleteRange(r) => keys("range", &[r.start_key.clone(), r.end_key.clone()]),
        KvRequest::RawBatchScan(r) => keys(
            "range",
            &r.ranges
                .iter()
                .flat_map(|r| [r.start_key.clone(), r.end_key.clone()])
                .collect::<Vec<_>>(),
        ),
        KvRequest::RawGetKeyTtl(r) => keys("key", std::slice::from_ref(&r.key)),
        KvRequest::RawCompareAndSwap(r) => {
            keys("key", std::slice::from_ref(&r.key));
            keys("=previous", std::slice::from_ref(&r.previous_value));
        }
        KvRequest::RawChecksum(r) => keys(
            "range",
            &r.ranges
                .iter()
                .flat_map(|r| [r.start_key.clone(), r.end_key.clone()])
                .collect::<Vec<_>>(),
        ),
        KvRequest::SplitRegion(r) => {
            keys("split_keys", &r.split_keys);
            keys("split_key?", std::slice::from_ref(&r.split_key));
        }
        // Timestamps only, or nothing.
        KvRequest::BroadcastTxnStatus(_) | KvRequest::GetHealthFeedback(_) => {}
        KvRequest::UnsafeDestroyRange(r) => {
            keys("range", &[r.start_key.clone(), r.end_key.clone()])
        }
    }
    f
}

fn is_reverse(req: &KvRequest) -> bool {
    match req {
        KvRequest::Scan(r) => r.reverse,
        KvRequest::RawScan(r) => r.reverse,
        KvRequest::RawBatchScan(r) => r.reverse,
        _ => false,
    }
}

#[test]
fn every_request_variant_is_encoded() {
    let codec = v2(Mode::Txn, 3).with_keyspace_name("ks");
    let prefix = codec.prefix().to_vec();
    let end = codec.keyspace_range().unwrap().end;
    let mut out = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for original in sample_requests() {
        let mut req = original.clone();
        codec.encode_request(&mut req).unwrap();
        seen.insert(req.name());
        let ctx = req.context().unwrap();
        assert_eq!(ctx.api_version, kvrpcpb::ApiVersion::V2 as i32);
        assert_eq!(ctx.keyspace, Some(kvrpcpb::context::Keyspace::KeyspaceId(3)));
        assert_eq!(ctx.keyspace_name, "ks");
        let before = request_fields(&original);
        let after = request_fields(&req);
        assert_eq!(before.len(), after.len());
        let mut line =
            format!("{}{}:", req.name(), if is_reverse(&req) { " (reverse)" } else { "" });
        for ((name, old), (_, new)) in before.iter().zip(&after) {
            write!(line, " {name}={}->{}", show(old), show(new)).unwrap();
            if name.starts_with('=') {
                assert_eq!(old, new, "values are not keys");
            } else if name.ends_with('?') && old.is_empty() {
                assert!(new.is_empty(), "unset optional key stays unset");
            } else {
                assert!(
                    new.starts_with(&prefix) || new[..] == end.as_bytes()[..],
                    "{}: {name} not encoded: {new:?}",
                    req.name()
                );
            }
        }
        writeln!(out, "{line}").unwrap();
    }
    // Every variant of KvRequest appears in the table.
    macro_rules! names {
        ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
            [$(stringify!($method)),*]
        };
    }
    let all: std::collections::BTreeSet<_> = crate::for_each_kv_rpc!(names).into_iter().collect();
    assert_eq!(seen, all);
    insta::assert_snapshot!(out);
}

#[test]
fn v1_requests_only_get_a_context() {
    for mode in [Mode::Raw, Mode::Txn] {
        let codec = ApiCodec::v1(mode);
        for original in sample_requests() {
            let mut req = original.clone();
            codec.encode_request(&mut req).unwrap();
            assert_eq!(request_fields(&req), request_fields(&original));
            let ctx = req.context().unwrap();
            assert_eq!(ctx.api_version, kvrpcpb::ApiVersion::V1 as i32);
            assert_eq!(
                ctx.keyspace,
                Some(kvrpcpb::context::Keyspace::KeyspaceId(NULL_KEYSPACE_ID))
            );
        }
    }
}

fn p(k: &str) -> Bytes {
    let mut v = b"x\x00\x00\x03".to_vec();
    v.extend_from_slice(k.as_bytes());
    Bytes::from(v)
}

fn lock(k: &str) -> kvrpcpb::LockInfo {
    kvrpcpb::LockInfo {
        key: p(k),
        primary_lock: p("primary"),
        secondaries: vec![p("s1")],
        shared_lock_infos: vec![kvrpcpb::LockInfo {
            key: p(k),
            primary_lock: p("p2"),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn key_error() -> kvrpcpb::KeyError {
    use kvrpcpb::*;
    KeyError {
        locked: Some(lock("locked")),
        conflict: Some(WriteConflict { key: p("c"), primary: p("cp"), ..Default::default() }),
        already_exist: Some(AlreadyExist { key: p("ae") }),
        deadlock: Some(Deadlock {
            lock_key: p("lk"),
            deadlock_key: p("dk"),
            wait_chain: vec![tikv_proto::deadlock::WaitForEntry {
                key: p("w"),
                ..Default::default()
            }],
            ..Default::default()
        }),
        commit_ts_expired: Some(CommitTsExpired { key: p("cte"), ..Default::default() }),
        txn_not_found: Some(TxnNotFound { primary_key: p("tnf"), ..Default::default() }),
        assertion_failed: Some(AssertionFailed { key: p("af"), ..Default::default() }),
        primary_mismatch: Some(PrimaryMismatch { lock_info: Some(lock("pm")) }),
        txn_lock_not_found: Some(TxnLockNotFound { key: p("tlnf") }),
        lock_upgrade_conflict: Some(LockUpgradeConflict { key: p("luc"), ..Default::default() }),
        shared_lock_lost: Some(SharedLockLost { key: p("sll"), ..Default::default() }),
        debug_info: Some(DebugInfo {
            mvcc_info: vec![MvccDebugInfo {
                key: p("dbg"),
                mvcc: Some(MvccInfo {
                    lock: Some(MvccLock {
                        primary: p("mp"),
                        secondaries: vec![p("ms")],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }],
        }),
        ..Default::default()
    }
}

fn pairs() -> Vec<kvrpcpb::KvPair> {
    vec![
        kvrpcpb::KvPair { key: p("a"), value: b("x\x00\x00\x03not-a-key"), ..Default::default() },
        kvrpcpb::KvPair { key: p("b"), error: Some(key_error()), ..Default::default() },
    ]
}

fn region_error() -> errorpb::Error {
    let enc = |k: &[u8]| Bytes::from(memcomparable::encode_bytes(k));
    errorpb::Error {
        key_not_in_region: Some(errorpb::KeyNotInRegion {
            key: p("knr"),
            region_id: 1,
            start_key: enc(b"x\x00\x00\x03a"),
            end_key: enc(b"x\x00\x00\x04"),
        }),
        epoch_not_match: Some(errorpb::EpochNotMatch {
            current_regions: vec![
                region(&enc(b"x\x00\x00\x02"), &enc(b"x\x00\x00\x03")),
                region(&enc(b"x\x00\x00\x03"), &enc(b"x\x00\x00\x03m")),
                region(&enc(b"x\x00\x00\x03m"), &[]),
            ],
        }),
        ..Default::default()
    }
}

/// One response of every variant with every key-bearing field filled with
/// keyspace-encoded keys, and a region error.
fn sample_responses() -> Vec<KvResponse> {
    use kvrpcpb::*;
    let re = || Some(region_error());
    let ke = || Some(key_error());
    let regions = || {
        vec![region(
            &memcomparable::encode_bytes(b"x\x00\x00\x03a"),
            &memcomparable::encode_bytes(b"x\x00\x00\x03b"),
        )]
    };
    vec![
        KvResponse::Get(Box::new(GetResponse {
            region_error: re(),
            error: ke(),
            ..Default::default()
        })),
        KvResponse::Scan(Box::new(ScanResponse {
            region_error: re(),
            pairs: pairs(),
            error: ke(),
        })),
        KvResponse::Prewrite(Box::new(PrewriteResponse {
            region_error: re(),
            errors: vec![key_error()],
            ..Default::default()
        })),
        KvResponse::PessimisticLock(Box::new(PessimisticLockResponse {
            region_error: re(),
            errors: vec![key_error()],
            ..Default::default()
        })),
        KvResponse::PessimisticRollback(Box::new(PessimisticRollbackResponse {
            region_error: re(),
            errors: vec![key_error()],
            ..Default::default()
        })),
        KvResponse::TxnHeartBeat(Box::new(TxnHeartBeatResponse {
            region_error: re(),
            error: ke(),
            ..Default::default()
        })),
        KvResponse::CheckTxnStatus(Box::new(CheckTxnStatusResponse {
            region_error: re(),
            error: ke(),
            lock_info: Some(lock("cts")),
            ..Default::default()
        })),
        KvResponse::CheckSecondaryLocks(Box::new(CheckSecondaryLocksResponse {
            region_error: re(),
            error: ke(),
            locks: vec![lock("csl")],
            ..Default::default()
        })),
        KvResponse::Commit(Box::new(CommitResponse {
            region_error: re(),
            error: ke(),
            ..Default::default()
        })),
        KvResponse::Cleanup(Box::new(CleanupResponse {
            region_error: re(),
            error: ke(),
            ..Default::default()
        })),
        KvResponse::BatchGet(Box::new(BatchGetResponse {
            region_error: re(),
            pairs: pairs(),
            error: ke(),
            ..Default::default()
        })),
        KvResponse::BatchRollback(Box::new(BatchRollbackResponse {
            region_error: re(),
            error: ke(),
            ..Default::default()
        })),
        KvResponse::ScanLock(Box::new(ScanLockResponse {
            region_error: re(),
            error: ke(),
            locks: vec![lock("sl")],
            ..Default::default()
        })),
        KvResponse::ResolveLock(Box::new(ResolveLockResponse {
            region_error: re(),
            error: ke(),
            ..Default::default()
        })),
        KvResponse::DeleteRange(Box::new(DeleteRangeResponse {
            region_error: re(),
            ..Default::default()
        })),
        KvResponse::Flush(Box::new(FlushResponse {
            region_error: re(),
            errors: vec![key_error()],
            ..Default::default()
        })),
        KvResponse::BufferBatchGet(Box::new(BufferBatchGetResponse {
            region_error: re(),
            error: ke(),
            pairs: pairs(),
            ..Default::default()
        })),
        KvResponse::RawGet(Box::new(RawGetResponse { region_error: re(), ..Default::default() })),
        KvResponse::RawBatchGet(Box::new(RawBatchGetResponse {
            region_error: re(),
            pairs: pairs(),
        })),
        KvResponse::RawPut(Box::new(RawPutResponse { region_error: re(), ..Default::default() })),
        KvResponse::RawBatchPut(Box::new(RawBatchPutResponse {
            region_error: re(),
            ..Default::default()
        })),
        KvResponse::RawDelete(Box::new(RawDeleteResponse {
            region_error: re(),
            ..Default::default()
        })),
        KvResponse::RawBatchDelete(Box::new(RawBatchDeleteResponse {
            region_error: re(),
            ..Default::default()
        })),
        KvResponse::RawScan(Box::new(RawScanResponse { region_error: re(), kvs: pairs() })),
        KvResponse::RawDeleteRange(Box::new(RawDeleteRangeResponse {
            region_error: re(),
            ..Default::default()
        })),
        KvResponse::RawBatchScan(Box::new(RawBatchScanResponse {
            region_error: re(),
            kvs: pairs(),
        })),
        KvResponse::RawGetKeyTtl(Box::new(RawGetKeyTtlResponse {
            region_error: re(),
            ..Default::default()
        })),
        KvResponse::RawCompareAndSwap(Box::new(RawCasResponse {
            region_error: re(),
            ..Default::default()
        })),
        KvResponse::RawChecksum(Box::new(RawChecksumResponse {
            region_error: re(),
            ..Default::default()
        })),
        KvResponse::SplitRegion(Box::new(SplitRegionResponse {
            region_error: re(),
            left: regions().pop(),
            right: regions().pop(),
            regions: regions(),
            errors: vec![key_error()],
        })),
        KvResponse::UnsafeDestroyRange(Box::new(UnsafeDestroyRangeResponse {
            region_error: re(),
            ..Default::default()
        })),
    ]
}

/// Collects every `Bytes` in a message's Debug output that still carries the
/// keyspace prefix, excluding values. prost prints byte fields as `b"..."`.
fn leftover_prefixes(resp: &KvResponse) -> usize {
    let dbg = match resp {
        KvResponse::Get(r) => format!("{r:?}"),
        KvResponse::Scan(r) => format!("{r:?}"),
        KvResponse::Prewrite(r) => format!("{r:?}"),
        KvResponse::PessimisticLock(r) => format!("{r:?}"),
        KvResponse::PessimisticRollback(r) => format!("{r:?}"),
        KvResponse::TxnHeartBeat(r) => format!("{r:?}"),
        KvResponse::CheckTxnStatus(r) => format!("{r:?}"),
        KvResponse::CheckSecondaryLocks(r) => format!("{r:?}"),
        KvResponse::Commit(r) => format!("{r:?}"),
        KvResponse::Cleanup(r) => format!("{r:?}"),
        KvResponse::BatchGet(r) => format!("{r:?}"),
        KvResponse::BatchRollback(r) => format!("{r:?}"),
        KvResponse::ScanLock(r) => format!("{r:?}"),
        KvResponse::ResolveLock(r) => format!("{r:?}"),
        KvResponse::DeleteRange(r) => format!("{r:?}"),
        KvResponse::Flush(r) => format!("{r:?}"),
        KvResponse::BufferBatchGet(r) => format!("{r:?}"),
        KvResponse::RawGet(r) => format!("{r:?}"),
        KvResponse::RawBatchGet(r) => format!("{r:?}"),
        KvResponse::RawPut(r) => format!("{r:?}"),
        KvResponse::RawBatchPut(r) => format!("{r:?}"),
        KvResponse::RawDelete(r) => format!("{r:?}"),
        KvResponse::RawBatchDelete(r) => format!("{r:?}"),
        KvResponse::RawScan(r) => format!("{r:?}"),
        KvResponse::RawDeleteRange(r) => format!("{r:?}"),
        KvResponse::RawBatchScan(r) => format!("{r:?}"),
        KvResponse::RawGetKeyTtl(r) => format!("{r:?}"),
        KvResponse::RawCompareAndSwap(r) => format!("{r:?}"),
        KvResponse::RawChecksum(r) => format!("{r:?}"),
        KvResponse::SplitRegion(r) => format!("{r:?}"),
        KvResponse::UnsafeDestroyRange(r) => format!("{r:?}"),
        KvResponse::BroadcastTxnStatus(r) => format!("{r:?}"),
        KvResponse::GetHealthFeedback(r) => format!("{r:?}"),
    };
    // The one value that looks like a key is allowed to stay.
    dbg.matches("x\\0\\0\\x03").count() - dbg.matches("x\\0\\0\\x03not-a-key").count()
}

#[test]
fn every_response_variant_is_decoded() {
    let codec = v2(Mode::Txn, 3);
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    for original in sample_responses() {
        let mut resp = original.clone();
        assert!(leftover_prefixes(&original) > 0 || resp.region_error().is_some());
        codec.decode_response(&mut resp).unwrap();
        seen.insert(resp.name());
        assert_eq!(leftover_prefixes(&resp), 0, "{}: {resp:?}", resp.name());
        let re = resp.region_error().unwrap();
        let knr = re.key_not_in_region.as_ref().unwrap();
        assert_eq!(
            (&knr.key[..], &knr.start_key[..], &knr.end_key[..]),
            (&b"knr"[..], &b"a"[..], &b""[..])
        );
        let regions = &re.epoch_not_match.as_ref().unwrap().current_regions;
        assert_eq!(regions.len(), 2, "the region outside the keyspace is dropped");
        writeln!(
            out,
            "{}: {} prefixed fields decoded or dropped; epoch_not_match {}",
            resp.name(),
            leftover_prefixes(&original),
            regions
                .iter()
                .map(|r| format!("[{}, {})", show(&r.start_key), show(&r.end_key)))
                .collect::<Vec<_>>()
                .join(" ")
        )
        .unwrap();
    }
    macro_rules! names {
        ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
            [$(stringify!($method)),*]
        };
    }
    let all: std::collections::BTreeSet<_> =
        crate::for_each_region_kv_rpc!(names).into_iter().collect();
    assert_eq!(seen, all);
    insta::assert_snapshot!(out);

    // Spot-check a few decoded fields precisely.
    let mut scan = sample_responses().swap_remove(1);
    codec.decode_response(&mut scan).unwrap();
    let KvResponse::Scan(scan) = scan else { panic!() };
    assert_eq!(&scan.pairs[0].key[..], b"a");
    assert_eq!(&scan.pairs[0].value[..], b"x\x00\x00\x03not-a-key");
    let e = scan.error.unwrap();
    let locked = e.locked.unwrap();
    assert_eq!((&locked.key[..], &locked.primary_lock[..]), (&b"locked"[..], &b"primary"[..]));
    assert_eq!(&locked.shared_lock_infos[0].primary_lock[..], b"p2");
    let conflict = e.conflict.unwrap();
    assert_eq!((&conflict.key[..], &conflict.primary[..]), (&b"c"[..], &b"cp"[..]));
}

#[test]
fn responses_with_foreign_keys_are_malformed() {
    let codec = v2(Mode::Txn, 3);
    let foreign = Bytes::from_static(b"x\x00\x00\x04a");
    let mut cases: Vec<KvResponse> = vec![
        KvResponse::RawScan(Box::new(kvrpcpb::RawScanResponse {
            kvs: vec![kvrpcpb::KvPair { key: foreign.clone(), ..Default::default() }],
            ..Default::default()
        })),
        KvResponse::Get(Box::new(kvrpcpb::GetResponse {
            error: Some(kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo { key: foreign.clone(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        })),
        KvResponse::Commit(Box::new(kvrpcpb::CommitResponse {
            region_error: Some(errorpb::Error {
                key_not_in_region: Some(errorpb::KeyNotInRegion {
                    key: foreign.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
        KvResponse::Commit(Box::new(kvrpcpb::CommitResponse {
            region_error: Some(errorpb::Error {
                epoch_not_match: Some(errorpb::EpochNotMatch {
                    current_regions: vec![region(b"\x01\x02", b"")],
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
        KvResponse::SplitRegion(Box::new(kvrpcpb::SplitRegionResponse {
            regions: vec![region(&memcomparable::encode_bytes(b"y"), &[])],
            ..Default::default()
        })),
    ];
    for resp in &mut cases {
        let name = resp.name();
        assert!(matches!(codec.decode_response(resp), Err(Error::MalformedResponse(_))), "{name}");
    }
}

#[test]
fn v1_responses() {
    let enc = |k: &[u8]| Bytes::from(memcomparable::encode_bytes(k));
    let make = || {
        KvResponse::Get(Box::new(kvrpcpb::GetResponse {
            region_error: Some(errorpb::Error {
                key_not_in_region: Some(errorpb::KeyNotInRegion {
                    key: b("k"),
                    region_id: 1,
                    start_key: enc(b"a"),
                    end_key: Bytes::new(),
                }),
                epoch_not_match: Some(errorpb::EpochNotMatch {
                    current_regions: vec![region(&enc(b"a"), &enc(b"b")), region(&enc(b"b"), b"")],
                }),
                ..Default::default()
            }),
            error: Some(kvrpcpb::KeyError {
                locked: Some(kvrpcpb::LockInfo { key: b("x\x00\x00\x03k"), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }))
    };
    // Txn: region boundaries decoded, nothing dropped, keys untouched.
    let mut resp = make();
    ApiCodec::v1(Mode::Txn).decode_response(&mut resp).unwrap();
    let KvResponse::Get(r) = &resp else { panic!() };
    let re = r.region_error.as_ref().unwrap();
    let knr = re.key_not_in_region.as_ref().unwrap();
    assert_eq!(
        (&knr.key[..], &knr.start_key[..], &knr.end_key[..]),
        (&b"k"[..], &b"a"[..], &b""[..])
    );
    let regions = &re.epoch_not_match.as_ref().unwrap().current_regions;
    assert_eq!(regions.len(), 2);
    assert_eq!((&regions[1].start_key[..], &regions[1].end_key[..]), (&b"b"[..], &b""[..]));
    assert_eq!(&r.error.as_ref().unwrap().locked.as_ref().unwrap().key[..], b"x\x00\x00\x03k");
    // Raw: the identity.
    let mut resp = make();
    ApiCodec::v1(Mode::Raw).decode_response(&mut resp).unwrap();
    assert!(resp == make());
    // Txn: split results are decoded too.
    let mut split = KvResponse::SplitRegion(Box::new(kvrpcpb::SplitRegionResponse {
        regions: vec![region(&enc(b"a"), &enc(b"m")), region(&enc(b"m"), b"")],
        ..Default::default()
    }));
    ApiCodec::v1(Mode::Txn).decode_response(&mut split).unwrap();
    let KvResponse::SplitRegion(s) = split else { panic!() };
    assert_eq!(&s.regions[0].end_key[..], b"m");
    assert_eq!(&s.regions[1].start_key[..], b"m");
}

/// A store RPC's response has no keys and no region error field: decoded
/// as it is.
#[test]
fn a_store_rpc_response_decodes_unchanged() {
    let codec = v2(Mode::Txn, 3);
    let mut resp = KvResponse::BroadcastTxnStatus(Box::default());
    codec.decode_response(&mut resp).unwrap();
    assert!(resp == KvResponse::BroadcastTxnStatus(Box::default()));
    assert!(resp.region_error().is_none());
    assert!(resp.region_error_mut().is_none());
}
