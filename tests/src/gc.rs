//! The GC and region-administration suite: GC rounds, GC barriers, lock
//! scans and resolution over ranges, reads refused below the txn safe
//! point, `delete_range`, `unsafe_destroy_range`, and region splits and
//! scatters, through the transactional client over loopback gRPC against
//! the simulated cluster (whose PD keeps GC states and scatter operators as
//! PD does and whose stores collect garbage below the GC safe point).
//! Crashed writers are driven directly against the cluster.
//!
//! [`gc_suite!`](crate::gc_suite) stamps the tests out as `#[test]`s for
//! one [`Harness`].

use tikv_core::rpc::{PdRequest, PdResponse};
use tikv_driver::{Error, Platform, Timestamp};
use tikv_proto::pdpb;
use tikv_sim::{ClusterConfig, WriteKind};

use crate::harness::{Bed, Harness, SimHandle};
use crate::snapshot::Writer;

/// The client type under test.
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

/// Stamps out the GC suite as `#[test]` functions running on the given
/// [`Harness`](crate::Harness). Every test of [`gc`](crate::gc) is listed
/// here once.
///
/// ```text
/// tikv_tests::gc_suite!(tikv_tests::harness::TokioHarness);
/// ```
#[macro_export]
macro_rules! gc_suite {
    ($harness:ty) => {
        $crate::gc_suite!(@each $harness;
            gc_resolves_every_old_lock_and_collects_old_versions,
            gc_stops_at_a_gc_barrier,
            locks_are_scanned_and_resolved_over_a_range,
            delete_range_deletes_and_notify_only_does_not,
            unsafe_destroy_range_empties_the_range_and_names_failed_stores,
            reads_below_the_txn_safe_point_are_refused,
            split_and_scatter_regions,
            a_large_transaction_is_pre_split_and_scattered_before_its_prewrite,
        );
    };
    (@each $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on($crate::gc::$name::<$harness>());
            }
        )*
    };
}

/// The suite runs on the in-process bed: it plants crashed writers and GC
/// barriers straight into the model.
async fn start<H: Harness>() -> (SimHandle, TransactionClient<H>) {
    let config = ClusterConfig {
        v1_txn: true,
        split_keys: vec![b"g".to_vec(), b"p".to_vec()],
        ..Default::default()
    };
    let server = SimHandle::start(Bed::InProcess, config).await;
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    (server, client)
}

async fn put<P: Platform>(
    client: &tikv_driver::TransactionClient<P>,
    pairs: &[(&str, Option<&str>)],
) {
    let mut txn = client.begin().await.expect("begin");
    for (k, v) in pairs {
        match v {
            Some(v) => txn.put(k.to_string(), v.to_string()).expect("put"),
            None => txn.delete(k.to_string()).expect("delete"),
        }
    }
    txn.commit().await.expect("commit");
}

async fn read<P: Platform>(
    client: &tikv_driver::TransactionClient<P>,
    key: &str,
) -> Option<String> {
    let ts = client.current_timestamp().await.expect("ts");
    let value = client.snapshot(ts).get(key.to_string()).await.expect("read");
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

async fn now_ts<P: Platform>(client: &tikv_driver::TransactionClient<P>) -> u64 {
    client.current_timestamp().await.expect("ts").version()
}

/// Every lock at or below the safe point is resolved, whatever its TTL:
/// a crashed writer's live-looking locks are rolled back, the secondary of
/// a writer whose primary committed is rolled forward. Versions below the
/// safe point are collected except the newest, deleted keys vanish, and
/// the safe points move.
pub async fn gc_resolves_every_old_lock_and_collects_old_versions<H: Harness>() {
    let (server, client) = start::<H>().await;
    put(&client, &[("a", Some("a1")), ("q", Some("q1"))]).await;
    put(&client, &[("a", Some("a2")), ("q", None)]).await;
    let writer = Writer { server: &server };
    // Crashed before committing, with a TTL of an hour.
    let crashed = now_ts(&client).await;
    writer.prewrite(crashed, "b", &[("b", "lost"), ("r", "lost")], 3_600_000).await;
    // Crashed after committing its primary: the secondary must commit.
    let half = now_ts(&client).await;
    writer.prewrite(half, "c", &[("c", "kept"), ("s", "kept")], 3_600_000).await;
    writer.commit(half, half + 1, &["c"]).await;
    let safe_point = client.current_timestamp().await.expect("ts");
    assert_eq!(server.cluster().locks().len(), 3);

    let outcome = client.gc(safe_point).await.expect("gc");
    assert_eq!(outcome.safe_point, safe_point);
    assert_eq!(outcome.blocker, None);
    assert_eq!(outcome.resolved_regions, 3);
    assert!(server.cluster().locks().is_empty(), "{:?}", server.cluster().locks());
    assert_eq!(read(&client, "s").await.as_deref(), Some("kept"));
    assert_eq!(read(&client, "r").await, None);
    assert_eq!(read(&client, "a").await.as_deref(), Some("a2"));
    let a = server.cluster().write_records(b"a");
    assert_eq!(a.len(), 1, "only the newest version below the safe point stays: {a:?}");
    assert_eq!(a[0].1, WriteKind::Put);
    assert!(server.cluster().write_records(b"q").is_empty(), "the deleted key is collected");
    // A second round at the same safe point finds nothing to do and is fine.
    client.gc(safe_point).await.expect("gc again");
    // Going back is refused by PD.
    let back = Timestamp::from_version(safe_point.version() - 1);
    assert!(matches!(client.gc(back).await, Err(Error::Pd { .. })));
}

/// A GC barrier holds the txn safe point back: GC resolves locks only up to
/// the barrier and says which barrier held it.
pub async fn gc_stops_at_a_gc_barrier<H: Harness>() {
    let (server, client) = start::<H>().await;
    let writer = Writer { server: &server };
    let early = now_ts(&client).await;
    writer.prewrite(early, "a", &[("a", "x")], 3_600_000).await;
    let barrier = now_ts(&client).await;
    let late = now_ts(&client).await;
    writer.prewrite(late, "h", &[("h", "y")], 3_600_000).await;
    let cluster = server.cluster();
    let set = pdpb::SetGcBarrierRequest {
        header: Some(pdpb::RequestHeader {
            cluster_id: cluster.config().cluster_id,
            ..Default::default()
        }),
        keyspace_scope: None,
        barrier_id: "backup".into(),
        barrier_ts: barrier,
        ttl_seconds: 3600,
    };
    let answer = cluster
        .handle_pd(0, PdRequest::SetGcBarrier(Box::new(set)), server.now().await)
        .expect("PD answers");
    assert!(
        matches!(answer, PdResponse::SetGcBarrier(r) if r.header.as_ref().is_some_and(|h| h.error.is_none()))
    );

    let outcome = client.gc(client.current_timestamp().await.unwrap()).await.expect("gc");
    assert_eq!(outcome.safe_point.version(), barrier);
    assert!(outcome.blocker.as_deref().is_some_and(|b| b.contains("backup")), "{outcome:?}");
    let left: Vec<u64> = cluster.locks().iter().map(|l| l.lock_version).collect();
    assert_eq!(left, [late], "only the lock above the barrier survives");
}

/// `scan_locks` lists locks at or below a timestamp in key order, up to a
/// limit, across regions; `resolve_locks_for_range` clears one range only.
pub async fn locks_are_scanned_and_resolved_over_a_range<H: Harness>() {
    let (server, client) = start::<H>().await;
    let writer = Writer { server: &server };
    let first = now_ts(&client).await;
    for key in ["a", "h", "q"] {
        writer.prewrite(first, "a", &[(key, "v")], 3_600_000).await;
    }
    let max = client.current_timestamp().await.unwrap();
    let newer = now_ts(&client).await;
    writer.prewrite(newer, "b", &[("b", "v")], 3_600_000).await;

    let all = client.scan_locks(.., max, 10).await.expect("scan");
    let keys: Vec<&[u8]> = all.iter().map(|l| l.key.as_bytes()).collect();
    assert_eq!(keys, [&b"a"[..], b"h", b"q"], "the newer lock is above max_ts");
    let two = client.scan_locks(.., max, 2).await.expect("scan");
    assert_eq!(two.len(), 2);

    let stat = client.resolve_locks_for_range("a".to_string().."i".to_string(), max).await;
    assert_eq!(stat.expect("resolve").completed_regions, 2);
    let left: Vec<Vec<u8>> = server.cluster().locks().iter().map(|l| l.key.to_vec()).collect();
    assert_eq!(left, [b"b".to_vec(), b"q".to_vec()]);
}

/// `delete_range` removes every version in its range region by region;
/// the notify-only variant leaves the data; an unbounded end is refused.
pub async fn delete_range_deletes_and_notify_only_does_not<H: Harness>() {
    let (_server, client) = start::<H>().await;
    put(&client, &[("a", Some("1")), ("c", Some("1")), ("k", Some("1")), ("t", Some("1"))]).await;
    put(&client, &[("c", Some("2"))]).await;

    let stat = client.delete_range_notify_only("b".to_string().."s".to_string()).await;
    assert_eq!(stat.expect("notify").completed_regions, 3);
    assert_eq!(read(&client, "k").await.as_deref(), Some("1"));

    let stat = client.delete_range("b".to_string().."s".to_string()).await;
    assert_eq!(stat.expect("delete").completed_regions, 3);
    for (key, want) in [("a", Some("1")), ("c", None), ("k", None), ("t", Some("1"))] {
        assert_eq!(read(&client, key).await.as_deref(), want, "{key}");
    }
    assert!(matches!(client.delete_range("b".to_string()..).await, Err(Error::InvalidArgument(_))));
}

/// `unsafe_destroy_range` reaches every store; with one store down the
/// error names it.
pub async fn unsafe_destroy_range_empties_the_range_and_names_failed_stores<H: Harness>() {
    let (server, client) = start::<H>().await;
    put(&client, &[("a", Some("1")), ("c", Some("1")), ("k", Some("1")), ("t", Some("1"))]).await;
    client.unsafe_destroy_range("b".to_string().."s".to_string()).await.expect("destroy");
    for (key, want) in [("a", Some("1")), ("c", None), ("k", None), ("t", Some("1"))] {
        assert_eq!(read(&client, key).await.as_deref(), want, "{key}");
    }

    let down = server.cluster().store_ids()[1];
    server.cluster().stop_store(down).expect("stop");
    let err = client.unsafe_destroy_range("a".to_string().."b".to_string()).await;
    let Err(Error::Server(message)) = err else { panic!("{err:?}") };
    assert!(message.contains(&format!("store {down}")), "{message}");
    server.cluster().start_store(down).expect("start");
}

/// Once GC has moved the txn safe point, reads below it are refused
/// (`Error::TxnAbortedByGc`) rather than served from collected data: by
/// the client that ran GC, by a transaction that began before, by
/// `begin_at` a start ts below it, and by a client connected afterwards
/// (it loads the safe point when it connects).
pub async fn reads_below_the_txn_safe_point_are_refused<H: Harness>() {
    let (server, client) = start::<H>().await;
    put(&client, &[("a", Some("1"))]).await;
    let old = client.current_timestamp().await.unwrap();
    let txn = client.begin().await.expect("begin");
    put(&client, &[("a", Some("2"))]).await;
    let safe_point = client.current_timestamp().await.unwrap();
    client.gc(safe_point).await.expect("gc");

    let refused = |r: Result<Option<tikv_driver::Value>, Error>| match r {
        Err(Error::TxnAbortedByGc { start_ts, txn_safe_point }) => {
            assert!(start_ts < txn_safe_point);
            assert_eq!(txn_safe_point, safe_point);
        }
        other => panic!("expected TxnAbortedByGc, got {other:?}"),
    };
    refused(client.snapshot(old).get("a".to_string()).await);
    refused(txn.get("b".to_string()).await);
    match client.begin_at(old, tikv_driver::TransactionOptions::default()).await {
        Err(Error::TxnAbortedByGc { start_ts, .. }) => assert_eq!(start_ts, old),
        other => panic!("begin_at below the txn safe point: want TxnAbortedByGc, got {other:?}"),
    }
    let at =
        client.begin_at(safe_point, Default::default()).await.expect("begin at the safe point");
    assert_eq!(at.get("a".to_string()).await.expect("read").as_deref(), Some(&b"2"[..]));
    let at_safe_point = client.snapshot(safe_point).get("a".to_string()).await.expect("read");
    assert_eq!(at_safe_point.as_deref(), Some(&b"2"[..]));

    let other = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    refused(other.snapshot(old).get("a".to_string()).await);
}

/// `split_regions` splits at every key and names the new regions; with
/// scatter, PD runs a scatter operator per new region, which
/// `wait_scatter_finish` waits out (the model's operator moves the
/// region's leader when it finishes); data keeps working across the new
/// boundaries.
pub async fn split_and_scatter_regions<H: Harness>() {
    let (server, client) = start::<H>().await;
    let cluster = server.cluster();
    assert_eq!(cluster.regions().len(), 3);
    let outcome = client.split_regions(["c".to_string(), "k".to_string()], true).await;
    let outcome = outcome.expect("split");
    assert!(outcome.scatter_error.is_none(), "{outcome:?}");
    assert_eq!(outcome.region_ids.len(), 2, "{outcome:?}");
    assert_eq!(cluster.regions().len(), 5);
    let leaders_before: Vec<u64> =
        outcome.region_ids.iter().map(|id| cluster.leader_of(*id).unwrap().store_id).collect();
    for id in &outcome.region_ids {
        client.wait_scatter_finish(*id).await.expect("scatter finishes");
    }
    let leaders_after: Vec<u64> =
        outcome.region_ids.iter().map(|id| cluster.leader_of(*id).unwrap().store_id).collect();
    assert_ne!(leaders_before, leaders_after, "the scatter moved the leaders");
    // A region never scattered has nothing to wait for.
    let first = cluster.regions()[0].id;
    client.wait_scatter_finish(first).await.expect("no operator");
    // Scattering by id: unknown regions come back as failed.
    let failed = client.scatter_regions(vec![first, 999_999]).await.expect("scatter");
    assert_eq!(failed, [999_999]);
    client.wait_scatter_finish(first).await.expect("scatter finishes");

    put(&client, &[("b", Some("1")), ("d", Some("2")), ("l", Some("3"))]).await;
    assert_eq!(read(&client, "d").await.as_deref(), Some("2"));
    assert_eq!(read(&client, "l").await.as_deref(), Some("3"));
}

/// client-go's pre-split of large transactions (here at a threshold of 40
/// mutations, cut every 200 bytes): the region that would get 120 of the
/// mutations is split before the prewrite and the new regions scattered;
/// the region that gets 3 is left alone; every write commits.
pub async fn a_large_transaction_is_pre_split_and_scattered_before_its_prewrite<H: Harness>() {
    use tikv_driver::{PreSplitThresholds, TransactionOptions};

    let (server, client) = start::<H>().await;
    let cluster = server.cluster();
    assert_eq!(cluster.regions().len(), 3);
    let options = TransactionOptions::default().with_pre_split(PreSplitThresholds::new(40, 200));
    let mut txn = client.begin_with_options(options).await.expect("begin");
    // 120 keys in [g, p), each 10 key + value bytes: cut every 20 keys.
    for i in 0..120 {
        txn.put(format!("h{i:04}"), "v".repeat(5)).expect("put");
    }
    for k in ["a", "b", "q"] {
        txn.put(k.to_string(), "small".to_string()).expect("put");
    }
    txn.commit().await.expect("commit");
    // 120 keys × 10 bytes = 1200 bytes: a cut after every 200 bytes, at
    // the 20th, 40th, ... and 120th key: six new split points.
    let regions = cluster.regions();
    assert_eq!(regions.len(), 3 + 6, "{:?}", regions.iter().map(|r| r.id).collect::<Vec<_>>());
    for i in [0, 19, 20, 77, 119] {
        let key = format!("h{i:04}");
        assert_eq!(read(&client, &key).await.as_deref(), Some("vvvvv"), "{key}");
    }
    assert_eq!(read(&client, "q").await.as_deref(), Some("small"));
}
