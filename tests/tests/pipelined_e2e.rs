//! Pipelined DML transactions (`TransactionClient::begin_pipelined`) under
//! both runtimes, each on both beds (the in-process simulator and a real PD
//! with simulated stores joined to it), and on the simulated platform:
//! buffers spilled to TiKV in several generations and read back, a reader
//! meeting the live pipelined locks, commit, rollback and drop, the status
//! broadcast to every store, and
//! client-go's restrictions.

use std::time::Duration;

use tikv_driver::{
    Error, FlushThresholds, KvPair, PipelinedOptions, Platform, Timestamp, TransactionOptions,
};
use tikv_sim::{CachedTxnState, ClusterConfig};
use tikv_tests::Harness;
use tikv_tests::harness::{Bed, SimHandle};

type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

macro_rules! pipelined_suite {
    ($harness:ty, $bed:ident) => {
        #[test]
        fn spills_generations_reads_its_own_writes_and_commits() {
            <$harness as Harness>::block_on(
                super::spills_generations_reads_its_own_writes_and_commits::<$harness>(Bed::$bed),
            );
        }
        #[test]
        fn a_reader_meets_live_pipelined_locks_without_waiting() {
            <$harness as Harness>::block_on(
                super::a_reader_meets_live_pipelined_locks_without_waiting::<$harness>(Bed::$bed),
            );
        }
        #[test]
        fn rollback_drop_and_a_failed_flush_leave_no_lock() {
            <$harness as Harness>::block_on(
                super::rollback_drop_and_a_failed_flush_leave_no_lock::<$harness>(Bed::$bed),
            );
        }
        #[test]
        fn commit_and_rollback_broadcast_the_status_to_every_store() {
            <$harness as Harness>::block_on(
                super::commit_and_rollback_broadcast_the_status_to_every_store::<$harness>(
                    Bed::$bed,
                ),
            );
        }
        #[test]
        fn client_go_restrictions_are_refused() {
            <$harness as Harness>::block_on(super::client_go_restrictions_are_refused::<$harness>(
                Bed::$bed,
            ));
        }
    };
}

mod on_tokio {
    use super::*;
    pipelined_suite!(tikv_tests::harness::TokioHarness, InProcess);
}

mod on_async_std {
    use super::*;
    pipelined_suite!(tikv_tests::harness::AsyncStdHarness, InProcess);
}

mod on_tokio_real_pd {
    use super::*;
    pipelined_suite!(tikv_tests::harness::TokioHarness, RealPd);
}

mod on_async_std_real_pd {
    use super::*;
    pipelined_suite!(tikv_tests::harness::AsyncStdHarness, RealPd);
}

/// On the simulated platform, in virtual time (`tests/platform_e2e.rs` has
/// the other suites).
mod on_sim_platform {
    use super::*;
    pipelined_suite!(tikv_tests::harness::SimPlatformHarness, InProcess);
}

async fn start<H: Harness>(bed: Bed) -> (SimHandle, TransactionClient<H>) {
    let config =
        ClusterConfig { v1_txn: true, split_keys: vec![b"m".to_vec()], ..Default::default() };
    let server = SimHandle::start(bed, config).await;
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    (server, client)
}

/// Thresholds small enough that a few dozen keys spill a generation.
fn small() -> PipelinedOptions {
    let thresholds = FlushThresholds { min_keys: 16, min_bytes: 1, force_bytes: 64 << 10 };
    PipelinedOptions::default().with_flush_thresholds(thresholds).with_resolve_concurrency(2)
}

async fn commit_init<P: Platform>(
    client: &tikv_driver::TransactionClient<P>,
    pairs: &[(&str, &str)],
) {
    let mut txn = client.begin().await.expect("begin");
    for (k, v) in pairs {
        txn.put(k.to_string(), v.to_string()).expect("put");
    }
    txn.commit().await.expect("init");
}

async fn read_now<P: Platform>(
    client: &tikv_driver::TransactionClient<P>,
    key: &str,
) -> Option<String> {
    let snapshot = client.snapshot(client.current_timestamp().await.expect("ts"));
    let value = snapshot.get(key.to_string()).await.expect("read");
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Waits (at most 10 s) until no lock of transaction `start` is left.
async fn until_no_lock_of<H: Harness>(server: &SimHandle, start: Timestamp) {
    for _ in 0..500 {
        if server.cluster().locks().iter().all(|l| l.lock_version != start.version()) {
            return;
        }
        H::sleep(Duration::from_millis(20)).await;
    }
    panic!("locks of {start} left: {:?}", server.cluster().locks());
}

/// Waits (at most `secs`) until every store's txn status cache holds
/// `want` for transaction `start`.
async fn until_every_store_caches<H: Harness>(
    server: &SimHandle,
    start: Timestamp,
    want: CachedTxnState,
    secs: u64,
) {
    let stores = server.cluster().store_ids();
    for _ in 0..secs * 50 {
        let cached: Vec<_> = stores
            .iter()
            .map(|&id| server.cluster().cached_txn_status(id, start.version()))
            .collect();
        if cached.iter().all(|c| *c == Some(want)) {
            return;
        }
        H::sleep(Duration::from_millis(20)).await;
    }
    let cached: Vec<_> =
        stores.iter().map(|&id| server.cluster().cached_txn_status(id, start.version())).collect();
    panic!("stores {stores:?} cache {cached:?} for {start}, want {want:?}");
}

fn broadcasts(server: &SimHandle) -> Vec<u64> {
    let c = server.cluster();
    c.store_ids().iter().map(|&id| c.kv_request_count(id, "broadcast_txn_status", None)).collect()
}

fn s(v: Option<tikv_driver::Value>) -> Option<String> {
    v.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// 200 keys over two regions spill many generations; the transaction reads
/// its own writes from memory, from the flush in flight and from TiKV
/// (`BufferBatchGet`, a flushed delete included) and the snapshot for the
/// rest; the commit commits the primary and the flushed range is resolved
/// in the background.
pub async fn spills_generations_reads_its_own_writes_and_commits<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed).await;
    commit_init(&client, &[("a005", "old"), ("z010", "old"), ("b-untouched", "keep")]).await;

    let mut txn =
        client.begin_pipelined(TransactionOptions::default(), small()).await.expect("begin");
    for i in 0..100 {
        txn.put(format!("a{i:03}"), format!("v{i}")).await.expect("put");
        txn.put(format!("z{i:03}"), format!("v{i}")).await.expect("put");
        if i % 10 == 9 {
            // Lets the flush in flight end, so the next is handed off
            // rather than the buffer growing to the force threshold.
            txn.flush_wait().await.expect("flushed");
        }
    }
    txn.flush(true).await.expect("flush");
    txn.flush_wait().await.expect("flushed");
    let progress = txn.progress();
    assert!(progress.generations >= 5, "{progress:?}");
    assert_eq!((progress.flushed_keys, progress.buffered_keys), (200, 0), "{progress:?}");
    assert!(progress.flushed_bytes >= 200 * 6 && !progress.flushing, "{progress:?}");
    assert_eq!(txn.primary_key(), Some(&tikv_driver::Key::from("a000")));

    // Flushed keys are read back from TiKV; the rest from the snapshot.
    assert_eq!(s(txn.get("a003").await.expect("get")).as_deref(), Some("v3"));
    assert_eq!(s(txn.get("b-untouched").await.expect("get")).as_deref(), Some("keep"));
    assert_eq!(txn.get("nope").await.expect("get"), None);
    // Written again: memory first; then flushed again, a delete read back
    // as a delete.
    txn.put("a004", "new").await.expect("put");
    txn.delete("z010").await.expect("delete");
    assert_eq!(s(txn.get("a004").await.expect("get")).as_deref(), Some("new"));
    assert_eq!(txn.get("z010").await.expect("get"), None);
    txn.flush(true).await.expect("flush");
    txn.flush_wait().await.expect("flushed");
    let pairs = txn.batch_get(["a004", "a001", "b-untouched", "z010", "nope"]).await.expect("get");
    assert_eq!(
        pairs,
        vec![
            KvPair::new("a001", "v1"),
            KvPair::new("a004", "new"),
            KvPair::new("b-untouched", "keep")
        ]
    );
    // Others still read the committed values.
    assert_eq!(read_now(&client, "a005").await.as_deref(), Some("old"));

    let start = txn.start_timestamp();
    let commit_ts = txn.commit().await.expect("commit");
    assert!(commit_ts > start);
    let snapshot = client.snapshot(client.current_timestamp().await.expect("ts"));
    let all = snapshot.scan("a".to_string().."zz".to_string(), 1000).await.expect("scan");
    assert_eq!(all.len(), 200, "199 written and b-untouched");
    assert!(all.contains(&KvPair::new("a004", "new")) && all.contains(&KvPair::new("a005", "v5")));
    assert!(!all.iter().any(|p| p.key == tikv_driver::Key::from("z010")));
    // Before the commit's ts nothing of it is visible.
    let before = client.snapshot(Timestamp::from_version(commit_ts.version() - 1));
    assert_eq!(s(before.get("a005").await.expect("get")).as_deref(), Some("old"));
    assert_eq!(before.get("a006").await.expect("get"), None);
    until_no_lock_of::<H>(&server, start).await;
    server.shutdown().await;
}

/// A reader at a newer timestamp meets the flushed locks of a live
/// pipelined transaction: it reads the committed values past them (the
/// resolver pushes the primary's `min_commit_ts`) instead of waiting for a
/// transaction that may run for long, and the transaction still commits.
pub async fn a_reader_meets_live_pipelined_locks_without_waiting<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed).await;
    commit_init(&client, &[("k1", "old"), ("x1", "old")]).await;
    let mut txn =
        client.begin_pipelined(TransactionOptions::default(), small()).await.expect("begin");
    for key in ["k1", "k2", "x1", "x2"] {
        txn.put(key, "new").await.expect("put");
    }
    txn.flush(true).await.expect("flush");
    txn.flush_wait().await.expect("flushed");
    assert_eq!(server.cluster().locks().len(), 4);

    let began = std::time::Instant::now();
    let reader = client.snapshot(client.current_timestamp().await.expect("ts"));
    let pairs = reader.batch_get(["k1", "k2", "x1", "x2"]).await.expect("read");
    assert_eq!(pairs, vec![KvPair::new("k1", "old"), KvPair::new("x1", "old")]);
    assert!(began.elapsed() < Duration::from_secs(3), "waited {:?}", began.elapsed());

    let commit_ts = txn.commit().await.expect("commit after the push");
    assert!(commit_ts > reader.timestamp());
    assert_eq!(read_now(&client, "x2").await.as_deref(), Some("new"));
    // The old reader still reads as of its timestamp.
    assert_eq!(s(reader.get("k1").await.expect("get")).as_deref(), Some("old"));
    server.shutdown().await;
}

/// Rollback rolls every flushed generation back; a dropped transaction
/// does so in the background; a flush that fails (an insert of an
/// existing key) fails the commit, and its locks are rolled back too.
pub async fn rollback_drop_and_a_failed_flush_leave_no_lock<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed).await;
    commit_init(&client, &[("a010", "old"), ("z010", "old")]).await;
    let key = |i: u32| if i.is_multiple_of(2) { format!("a{i:03}") } else { format!("z{i:03}") };

    let mut rolled_back =
        client.begin_pipelined(TransactionOptions::default(), small()).await.expect("begin");
    for i in 0..80 {
        rolled_back.put(key(i), format!("v{i}")).await.expect("put");
        if i % 20 == 19 {
            rolled_back.flush_wait().await.expect("flushed");
        }
    }
    assert!(rolled_back.progress().generations >= 2);
    let start = rolled_back.start_timestamp();
    rolled_back.rollback().await.expect("rollback");
    assert!(server.cluster().locks().iter().all(|l| l.lock_version != start.version()));
    assert_eq!(read_now(&client, "a010").await.as_deref(), Some("old"));
    assert_eq!(read_now(&client, "a012").await, None);

    let mut dropped =
        client.begin_pipelined(TransactionOptions::default(), small()).await.expect("begin");
    for i in 0..80 {
        dropped.put(key(i), format!("v{i}")).await.expect("put");
        if i % 20 == 19 {
            dropped.flush_wait().await.expect("flushed");
        }
    }
    let start = dropped.start_timestamp();
    drop(dropped);
    until_no_lock_of::<H>(&server, start).await;
    assert_eq!(read_now(&client, "z011").await, None);
    assert_eq!(read_now(&client, "z010").await.as_deref(), Some("old"));

    let mut failing =
        client.begin_pipelined(TransactionOptions::default(), small()).await.expect("begin");
    for i in 0..40 {
        failing.put(key(i), format!("v{i}")).await.expect("put");
        if i % 20 == 19 {
            failing.flush_wait().await.expect("flushed");
        }
    }
    failing.insert("z010", "again").await.expect("buffered");
    let start = failing.start_timestamp();
    match failing.commit().await {
        Err(Error::KeyExists(key)) => assert_eq!(key, tikv_driver::Key::from("z010")),
        other => panic!("expected KeyExists, got {other:?}"),
    }
    until_no_lock_of::<H>(&server, start).await;
    assert_eq!(read_now(&client, "a002").await, None);
    server.shutdown().await;
}

/// client-go refuses pipelined with pessimistic mode, async commit and
/// 1PC, and bad concurrency or throttle values.
pub async fn client_go_restrictions_are_refused<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed).await;
    let base = PipelinedOptions::default;
    for options in [
        TransactionOptions::default().with_pessimistic(),
        TransactionOptions::default().with_async_commit(),
        TransactionOptions::default().with_one_pc(),
    ] {
        match client.begin_pipelined(options, base()).await {
            Err(Error::Unsupported(_)) => {}
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    for pipelined in [
        base().with_flush_concurrency(0),
        base().with_resolve_concurrency(0),
        base().with_write_throttle_ratio(1.0),
        base().with_write_throttle_ratio(-0.5),
    ] {
        match client.begin_pipelined(TransactionOptions::default(), pipelined).await {
            Err(Error::InvalidArgument(_)) => {}
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    // A throttled transaction still commits; a read-only one sends nothing.
    let throttled =
        base().with_write_throttle_ratio(0.5).with_flush_thresholds(small().flush_thresholds);
    let mut txn =
        client.begin_pipelined(TransactionOptions::default(), throttled).await.expect("begin");
    for i in 0..40 {
        txn.put(format!("t{i:02}"), "v").await.expect("put");
    }
    txn.commit().await.expect("commit");
    assert_eq!(read_now(&client, "t39").await.as_deref(), Some("v"));
    let read_only =
        client.begin_pipelined(TransactionOptions::default(), base()).await.expect("begin");
    let start = read_only.start_timestamp();
    assert_eq!(read_only.commit().await.expect("commit"), start);
    server.shutdown().await;
}

/// The pipelined transaction's futures are `Send` (checked at compile
/// time, never called), so it runs on multi-threaded runtimes.
macro_rules! pipelined_futures_are_send {
    ($name:ident, $client:ident) => {
        #[allow(dead_code)]
        fn $name(
            client: $client::TransactionClient,
            txn: &mut $client::PipelinedTransaction,
            owned: $client::PipelinedTransaction,
        ) {
            fn is_send<T: Send>(_: T) {}
            is_send(client.begin_pipelined(
                $client::TransactionOptions::default(),
                $client::PipelinedOptions::default(),
            ));
            is_send(txn.put(b"k".to_vec(), b"v".to_vec()));
            is_send(txn.batch_get([b"k".to_vec()]));
            is_send(txn.flush(true));
            is_send(owned.commit());
        }
    };
}

pipelined_futures_are_send!(pipelined_futures_are_send_on_tokio, tikv_tokio);
pipelined_futures_are_send!(pipelined_futures_are_send_on_async_std, tikv_async_std);

/// TiKV's `BroadcastTxnStatus` as client-go sends it: once the primary is
/// committed every store caches the commit ts, and after the grace period
/// after the flushed locks are resolved every store is told again that
/// the transaction is complete; a rollback is cached as rolled back. None
/// of it holds up the caller.
pub async fn commit_and_rollback_broadcast_the_status_to_every_store<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed).await;
    let mut txn =
        client.begin_pipelined(TransactionOptions::default(), small()).await.expect("begin");
    for i in 0..40 {
        txn.put(format!("a{i:02}"), "v").await.expect("put");
        txn.put(format!("z{i:02}"), "v").await.expect("put");
    }
    txn.flush(true).await.expect("flush");
    txn.flush_wait().await.expect("flushed");
    let start = txn.start_timestamp();
    // The bed's clock: virtual on the simulated platform.
    let began = server.now().await;
    let commit_ts = txn.commit().await.expect("commit");
    let took = server.now().await.saturating_duration_since(began);
    assert!(took < Duration::from_secs(4), "the grace period is not waited for");
    let committed = CachedTxnState::Committed { commit_ts: commit_ts.version() };
    until_every_store_caches::<H>(&server, start, committed, 10).await;
    until_no_lock_of::<H>(&server, start).await;
    let after_commit = broadcasts(&server);
    assert!(after_commit.iter().all(|&n| n >= 1), "{after_commit:?}");
    // The completion: one more broadcast to every store, the grace period
    // (5 s) after the resolution, the cache still saying committed.
    let mut completed = false;
    for _ in 0..500 {
        let now = broadcasts(&server);
        if now.iter().zip(&after_commit).all(|(n, before)| n > before) {
            completed = true;
            break;
        }
        H::sleep(Duration::from_millis(20)).await;
    }
    assert!(completed, "{:?} after {after_commit:?}", broadcasts(&server));
    let waited = server.now().await.saturating_duration_since(began);
    assert!(waited >= Duration::from_secs(5), "not before the grace period: {waited:?}");
    until_every_store_caches::<H>(&server, start, committed, 1).await;

    // A rollback of flushed locks.
    let mut txn =
        client.begin_pipelined(TransactionOptions::default(), small()).await.expect("begin");
    for i in 0..20 {
        txn.put(format!("b{i:02}"), "v").await.expect("put");
    }
    txn.flush(true).await.expect("flush");
    txn.flush_wait().await.expect("flushed");
    let start = txn.start_timestamp();
    txn.rollback().await.expect("rollback");
    until_every_store_caches::<H>(&server, start, CachedTxnState::RolledBack, 10).await;
    until_no_lock_of::<H>(&server, start).await;
    server.shutdown().await;
}
