//! Scripted-event tests of snapshot reads meeting locks.

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use super::*;
use crate::pd::Timestamp;
use crate::testing::{FakeCluster, Fault, drive, view};

/// The version of a timestamp at `physical_ms`, as the wire carries it.
fn ts(physical_ms: i64) -> u64 {
    ts_at(physical_ms).version()
}

/// The timestamp at `physical_ms`.
fn ts_at(physical_ms: i64) -> Timestamp {
    Timestamp::compose(physical_ms, 0)
}

fn respond(resp: KvResponse) -> Fault {
    Fault::Respond(Box::new(resp))
}

fn locked(key: &str, txn_ms: i64, ttl: u64) -> kvrpcpb::KeyError {
    kvrpcpb::KeyError {
        locked: Some(kvrpcpb::LockInfo {
            primary_lock: "p".into(),
            key: key.to_string().into(),
            lock_version: ts(txn_ms),
            lock_ttl: ttl,
            txn_size: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn get_value(v: &str) -> Fault {
    respond(KvResponse::Get(Box::new(kvrpcpb::GetResponse {
        value: v.to_string().into(),
        ..Default::default()
    })))
}

fn status(ttl: u64, commit: u64) -> Fault {
    respond(KvResponse::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
        lock_ttl: ttl,
        commit_version: commit,
        ..Default::default()
    })))
}

/// A lock of a transaction committed before the read: resolved, then the
/// read is retried with the transaction in `committed_locks`.
#[test]
fn get_resolves_a_committed_lock_and_reads_through_it() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "kv_get",
        respond(KvResponse::Get(Box::new(kvrpcpb::GetResponse {
            error: Some(locked("k", 800, 3000)),
            ..Default::default()
        }))),
    );
    c.fault("check_txn_status", status(0, ts(900)));
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault("kv_get", get_value("v"));
    let op = SnapshotGet::new(view(), Key::from("k"), ts_at(950), ReadOptions::default());
    let (log, result) = drive(op, &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v")));
    let gets: Vec<_> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Get(g) => g.context.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(gets.len(), 2);
    assert!(gets[0].committed_locks.is_empty());
    assert_eq!(gets[1].committed_locks, vec![ts(800)]);
    insta::assert_snapshot!(log);
}

/// A lock of a live transaction: wait (BoTxnLockFast, capped by the lock's
/// remaining TTL), ask again; the second time the lock is gone.
#[test]
fn get_waits_out_a_live_lock() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "kv_get",
        respond(KvResponse::Get(Box::new(kvrpcpb::GetResponse {
            error: Some(locked("k", 995, 20)),
            ..Default::default()
        }))),
    );
    // 995 ms + 20 ms TTL, PD says 1000 ms: 15 ms left, so the first sleep
    // (10 ms base, equal jitter) is at most 15 ms.
    c.fault("check_txn_status", status(20, 0));
    c.fault("kv_get", get_value("v2"));
    let op = SnapshotGet::new(view(), Key::from("k"), ts_at(999), ReadOptions::default());
    let (log, result) = drive(op, &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v2")));
    insta::assert_snapshot!(log);
}

/// A batch read where one key is locked by a rolled-back transaction: only
/// that key is read again, skipping the transaction.
#[test]
fn batch_get_rereads_only_locked_keys() {
    let mut c = FakeCluster::new(&[]);
    let pair = |k: &str, v: &str| kvrpcpb::KvPair {
        key: k.to_string().into(),
        value: v.to_string().into(),
        ..Default::default()
    };
    let mut locked_pair = pair("b", "");
    locked_pair.error = Some(locked("b", 100, 10));
    c.fault(
        "kv_batch_get",
        respond(KvResponse::BatchGet(Box::new(kvrpcpb::BatchGetResponse {
            pairs: vec![pair("a", "1"), locked_pair, pair("c", "3")],
            ..Default::default()
        }))),
    );
    c.fault("check_txn_status", status(0, 0));
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault(
        "kv_batch_get",
        respond(KvResponse::BatchGet(Box::new(kvrpcpb::BatchGetResponse {
            pairs: vec![pair("b", "2")],
            ..Default::default()
        }))),
    );
    let keys = ["c", "a", "b", "d"].map(Key::from).to_vec();
    let op = SnapshotBatchGet::new(view(), keys, ts_at(950), ReadOptions::default());
    let (log, result) = drive(op, &mut c);
    let got: Vec<_> = result.unwrap().into_iter().map(|p| (p.key, p.value)).collect();
    assert_eq!(
        got,
        vec![
            (Key::from("a"), Bytes::from("1")),
            (Key::from("b"), Bytes::from("2")),
            (Key::from("c"), Bytes::from("3")),
        ]
    );
    let retry = c.received.iter().rev().find_map(|r| match r {
        KvRequest::BatchGet(g) => Some(g.clone()),
        _ => None,
    });
    let retry = retry.expect("a second batch get");
    assert_eq!(retry.keys, vec![Bytes::from("b")]);
    assert_eq!(retry.context.expect("context").resolved_locks, vec![ts(100)]);
    insta::assert_snapshot!(log);
}

/// Any other key error is the caller's (typed, not retried).
#[test]
fn other_key_errors_are_returned() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "kv_get",
        respond(KvResponse::Get(Box::new(kvrpcpb::GetResponse {
            error: Some(kvrpcpb::KeyError { abort: "boom".into(), ..Default::default() }),
            ..Default::default()
        }))),
    );
    let op = SnapshotGet::new(view(), Key::from("k"), ts_at(950), ReadOptions::default());
    let (_, result) = drive(op, &mut c);
    assert!(matches!(result, Err(Error::KeyError(e)) if e.abort == "boom"));
}

/// A scan meets a lock in its first region: the pairs before it are kept,
/// the lock (of a rolled-back transaction) is resolved, and the next pass
/// starts at the locked key and continues into the next region.
#[test]
fn scan_resumes_at_a_resolved_lock() {
    let mut c = FakeCluster::new(&["m"]);
    let pair = |k: &str, v: &str| kvrpcpb::KvPair {
        key: k.to_string().into(),
        value: v.to_string().into(),
        ..Default::default()
    };
    let mut locked_pair = pair("c", "");
    locked_pair.error = Some(locked("c", 100, 10));
    c.fault(
        "kv_scan",
        respond(KvResponse::Scan(Box::new(kvrpcpb::ScanResponse {
            pairs: vec![pair("a", "1"), locked_pair, pair("d", "ignored: after the lock")],
            ..Default::default()
        }))),
    );
    c.fault("check_txn_status", status(0, 0));
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault(
        "kv_scan",
        respond(KvResponse::Scan(Box::new(kvrpcpb::ScanResponse {
            pairs: vec![pair("d", "4")],
            ..Default::default()
        }))),
    );
    c.fault(
        "kv_scan",
        respond(KvResponse::Scan(Box::new(kvrpcpb::ScanResponse {
            pairs: vec![pair("x", "24")],
            ..Default::default()
        }))),
    );
    let op = SnapshotScan::new(
        view(),
        KeyRange::all(),
        ScanSpec::forward(10),
        ts_at(950),
        Default::default(),
    );
    let (log, result) = drive(op, &mut c);
    let got: Vec<_> = result.unwrap().into_iter().map(|p| p.key).collect();
    assert_eq!(got, ["a", "d", "x"].map(Key::from));
    let scans: Vec<_> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Scan(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(scans.len(), 3);
    assert_eq!(&scans[1].start_key[..], b"c", "the second pass starts at the locked key");
    assert_eq!(scans[1].context.as_ref().expect("ctx").resolved_locks, vec![ts(100)]);
    assert_eq!(scans[1].limit, 9, "one pair already found");
    insta::assert_snapshot!(log);
}

/// The snapshot's tags reach its reads and the resolver's requests alike.
#[test]
fn reads_and_their_lock_resolution_carry_the_snapshot_tags() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "kv_get",
        respond(KvResponse::Get(Box::new(kvrpcpb::GetResponse {
            error: Some(locked("k", 800, 3000)),
            ..Default::default()
        }))),
    );
    c.fault("check_txn_status", status(0, ts(900)));
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault("kv_get", get_value("v"));
    let opts = ReadOptions {
        tags: RequestTags {
            priority: kvrpcpb::CommandPri::Low,
            resource_group_name: Some("analytics".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let op = SnapshotGet::new(view(), Key::from("k"), ts_at(950), opts);
    let (_, result) = drive(op, &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v")));
    assert_eq!(c.received.len(), 4, "get, check status, resolve, get");
    for req in &c.received {
        let ctx = req.context().expect("stamped");
        assert_eq!(ctx.priority, kvrpcpb::CommandPri::Low as i32, "{}", req.name());
        let group = ctx.resource_control_context.as_ref().map(|r| r.resource_group_name.as_str());
        assert_eq!(group, Some("analytics"), "{}", req.name());
    }
}

/// One budget covers a read's attempts and the lock resolutions between
/// them (client-go passes one `Backoffer` through): region misses before a
/// resolved lock count against the attempts after it.
#[test]
fn a_read_spends_one_budget_across_its_attempts() {
    let region_miss = || {
        Fault::Region(Box::new(tikv_proto::errorpb::Error {
            message: "region not found".into(),
            region_not_found: Some(Default::default()),
            ..Default::default()
        }))
    };
    let mut c = FakeCluster::new(&[]);
    for _ in 0..3 {
        c.fault("kv_get", region_miss());
    }
    c.fault(
        "kv_get",
        respond(KvResponse::from(kvrpcpb::GetResponse {
            error: Some(locked("k", 800, 3000)),
            ..Default::default()
        })),
    );
    c.fault("check_txn_status", status(0, ts(900)));
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    for _ in 0..100 {
        c.fault("kv_get", region_miss());
    }
    // 20 ms at client-go's weight 2: 40 ms of sleep.
    let budgets =
        crate::config::BackoffBudgets { get: Duration::from_millis(20), ..Default::default() };
    let config = crate::config::Config::default()
        .with_pd_endpoints(["pd1:2379"])
        .with_backoff_budgets(budgets);
    let pd = Arc::new(crate::pd::PdState::new(config.pd_endpoints.clone()));
    let codec = crate::codec::ApiCodec::v1(crate::codec::Mode::Raw);
    let v = Arc::new(ClusterView::new(config, codec, pd));
    let op = SnapshotGet::new(v, Key::from("k"), ts_at(950), ReadOptions::default());
    let (log, result) = drive(op, &mut c);
    let Err(Error::BackoffExhausted { total_sleep, .. }) = result else {
        panic!("{result:?}");
    };
    // Exhausted once the whole read slept its budget (plus the last
    // sleep, whose check came before it): not a fresh budget after the lock.
    assert!(total_sleep >= Duration::from_millis(40), "{total_sleep:?}");
    assert!(total_sleep < Duration::from_millis(60), "{total_sleep:?}");
    insta::assert_snapshot!(log);
}

/// The paging rule of lazy scans (`range_after_page`, client-go's
/// `Scanner.getData`).
#[test]
fn pages_continue_after_the_last_key_until_a_short_page() {
    let pair = |k: &str| KvPair { key: Key::from(k.to_string()), value: Value::new() };
    let range = KeyRange::new(Key::from("a"), Key::from("z"));
    let full = [pair("b"), pair("c")];
    // Forward: a full page continues just after its last key.
    let rest = range_after_page(&range, &full, 2, false).expect("more to read");
    assert_eq!(rest, KeyRange::new(Key::from("c").next_key(), Key::from("z")));
    // Reverse: a full page continues below its last (lowest) key, the end
    // being exclusive.
    let down = [pair("y"), pair("x")];
    let rest = range_after_page(&range, &down, 2, true).expect("more to read");
    assert_eq!(rest, KeyRange::new(Key::from("a"), Key::from("x")));
    // A short page, or an empty one, ends the scan.
    assert_eq!(range_after_page(&range, &full[..1], 2, false), None);
    assert_eq!(range_after_page(&range, &[], 2, false), None);
    // A full page that reaches the end of a bounded range ends it too.
    let tight = KeyRange::new(Key::from("a"), Key::from("c").next_key());
    assert_eq!(range_after_page(&tight, &full, 2, false), None);
    let bottom = KeyRange::new(Key::from("x"), Key::from("z"));
    assert_eq!(range_after_page(&bottom, &down, 2, true), None);
    // An unbounded range never runs out by itself.
    let open = KeyRange::new(Key::from("a"), Key::default());
    assert!(range_after_page(&open, &full, 2, false).is_some());
}

/// The read options reach TiKV on every request of the read: isolation
/// level, `not_fill_cache` and the request tags.
#[test]
fn read_options_are_stamped_on_every_request() {
    let mut c = FakeCluster::new(&["m"]);
    c.fault("kv_get", get_value("v"));
    for _ in 0..2 {
        c.fault("kv_batch_get", respond(KvResponse::BatchGet(Default::default())));
    }
    let opts = ReadOptions {
        isolation_level: kvrpcpb::IsolationLevel::Rc,
        not_fill_cache: true,
        ..ReadOptions::default()
    };
    let op = SnapshotGet::new(view(), Key::from("k"), ts_at(950), opts.clone());
    assert_eq!(drive(op, &mut c).1.unwrap(), Some(Bytes::from("v")));
    let keys = vec![Key::from("a"), Key::from("z")];
    drive(SnapshotBatchGet::new(view(), keys, ts_at(950), opts), &mut c).1.expect("batch get");
    let contexts: Vec<_> = c.received.iter().filter_map(|r| r.context().cloned()).collect();
    assert_eq!(contexts.len(), 3, "one get, a batch get per region");
    for ctx in contexts {
        assert_eq!(ctx.isolation_level, kvrpcpb::IsolationLevel::Rc as i32);
        assert!(ctx.not_fill_cache);
    }
}

/// The contexts of the `Get`s a scripted read sent: store, flags and
/// request source, one line each.
fn get_contexts(c: &FakeCluster) -> Vec<String> {
    c.received
        .iter()
        .filter_map(|r| match r {
            KvRequest::Get(g) => g.context.clone(),
            _ => None,
        })
        .map(|ctx| {
            format!(
                "store{} stale_read={} replica_read={} source={}",
                ctx.peer.map_or(0, |p| p.store_id),
                ctx.stale_read,
                ctx.replica_read,
                ctx.request_source
            )
        })
        .collect()
}

fn stale_options() -> ReadOptions {
    ReadOptions {
        replica_read: ReplicaRead::stale(),
        tags: RequestTags {
            request_source: Some(crate::rpc::RequestSource::external("Select")),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// client-go's stale read flow through the region call: the first `Get`
/// is a stale read (`stale_read`, no `replica_read`) named
/// `stale_{replica}_...`; `DataIsNotReady` sends the retry to the leader
/// as a normal read, named `retry_stale_{first replica}_leader_...`
/// (client-go `patchRequestSource`), without a backoff sleep.
#[test]
fn stale_get_not_ready_retries_on_the_leader_with_a_normal_read() {
    let mut c = FakeCluster::new(&[]);
    let not_ready = tikv_proto::errorpb::Error {
        message: "data is not ready".into(),
        data_is_not_ready: Some(tikv_proto::errorpb::DataIsNotReady {
            region_id: 1,
            peer_id: 2,
            safe_ts: ts(900),
        }),
        ..Default::default()
    };
    c.fault("kv_get", Fault::Region(Box::new(not_ready)));
    c.fault("kv_get", get_value("v"));
    let op = SnapshotGet::new(view(), Key::from("k"), ts_at(950), stale_options());
    let (log, result) = drive(op, &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v")));
    let sent = get_contexts(&c);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].contains("stale_read=true replica_read=false source=stale_"), "{sent:?}");
    assert!(
        sent[1].starts_with("store1 stale_read=false replica_read=false source=retry_stale_"),
        "the retry is a normal read on the leader (store 1): {sent:?}"
    );
    assert!(sent[1].ends_with("_leader_external_Select"), "{sent:?}");
    assert!(!log.contains("timer"), "DataIsNotReady is retried without a sleep:\n{log}");
    insta::assert_snapshot!(format!("{log}\n== gets\n{}\n", sent.join("\n")));
}

/// A stale read that meets a lock reads again from the leader without the
/// stale flag once the lock is resolved (client-go
/// `DisableStaleReadMeetLock`).
#[test]
fn stale_get_meeting_a_lock_reads_again_from_the_leader() {
    let mut c = FakeCluster::new(&[]);
    c.fault(
        "kv_get",
        respond(KvResponse::Get(Box::new(kvrpcpb::GetResponse {
            error: Some(locked("k", 800, 3000)),
            ..Default::default()
        }))),
    );
    c.fault("check_txn_status", status(0, ts(900)));
    c.fault("resolve_lock", respond(KvResponse::ResolveLock(Default::default())));
    c.fault("kv_get", get_value("v"));
    let op = SnapshotGet::new(view(), Key::from("k"), ts_at(950), stale_options());
    let (_, result) = drive(op, &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v")));
    let sent = get_contexts(&c);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].contains("stale_read=true"), "{sent:?}");
    assert_eq!(sent[1], "store1 stale_read=false replica_read=false source=leader_external_Select");
}
