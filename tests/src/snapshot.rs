//! The snapshot suite: snapshot reads over loopback gRPC meeting the locks
//! of committed, rolled-back, live and crashed transactions. Writers are
//! driven directly against the simulated cluster, so the reader is the
//! client under test.
//!
//! [`snapshot_suite!`](crate::snapshot_suite) stamps the tests out as
//! `#[test]`s for one [`Harness`] and [`Bed`]: on a real PD the writer
//! still reaches the stores directly, and the reader routes through PD.

use std::time::Duration;

use tikv_core::rpc::{KvRequest, KvResponse};
use tikv_driver::KvPair;
use tikv_proto::kvrpcpb;
use tikv_sim::ClusterConfig;

use crate::harness::{Bed, Harness, SimHandle};

/// The client type under test.
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

/// Stamps out the snapshot suite as `#[test]` functions running on the
/// given [`Harness`](crate::Harness) and [`Bed`](crate::harness::Bed)
/// variant (`InProcess` when left out). Every test of
/// [`snapshot`](crate::snapshot) is listed here once.
///
/// ```text
/// tikv_tests::snapshot_suite!(tikv_tests::harness::TokioHarness);
/// tikv_tests::snapshot_suite!(tikv_tests::harness::TokioHarness, RealPd);
/// ```
#[macro_export]
macro_rules! snapshot_suite {
    (@each $harness:ty, $bed:ident; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on(
                    $crate::snapshot::$name::<$harness>($crate::harness::Bed::$bed),
                );
            }
        )*
    };
    ($harness:ty) => {
        $crate::snapshot_suite!($harness, InProcess);
    };
    ($harness:ty, $bed:ident) => {
        $crate::snapshot_suite!(@each $harness, $bed;
            reads_see_committed_data_and_resolve_locks_of_every_kind,
            read_committed_reads_past_live_locks,
        );
    };
}

/// A writer that speaks percolator to the simulated cluster directly (also
/// the GC suite's crashed writers).
pub(crate) struct Writer<'a> {
    pub(crate) server: &'a SimHandle,
}

impl Writer<'_> {
    async fn send(&self, key: &[u8], mut req: KvRequest) -> KvResponse {
        let cluster = self.server.cluster();
        let region = cluster
            .region_for_region_key(&cluster.txn_region_key(key))
            .expect("a region holds every key");
        let ctx = cluster.context_for(region.id).expect("context");
        let store = ctx.peer.as_ref().map(|p| p.store_id).expect("leader");
        *req.context_mut() = ctx;
        cluster.handle_kv(store, req, self.server.now().await).expect("served")
    }

    pub(crate) async fn prewrite(
        &self,
        start_ts: u64,
        primary: &str,
        keys: &[(&str, &str)],
        ttl: u64,
    ) {
        // One request per key: keys may live in different regions.
        for (k, v) in keys {
            let req = kvrpcpb::PrewriteRequest {
                mutations: vec![kvrpcpb::Mutation {
                    op: kvrpcpb::Op::Put as i32,
                    key: k.to_string().into(),
                    value: v.to_string().into(),
                    ..Default::default()
                }],
                primary_lock: primary.to_string().into(),
                start_version: start_ts,
                lock_ttl: ttl,
                txn_size: keys.len() as u64,
                // client-go always sends start_ts + 1; TiKV pushes a lock's
                // min_commit_ts for readers only when it is set.
                min_commit_ts: start_ts + 1,
                ..Default::default()
            };
            match self.send(k.as_bytes(), req.into()).await {
                KvResponse::Prewrite(r) => assert!(r.errors.is_empty(), "{:?}", r.errors),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// An async-commit prewrite: the primary's lock lists the secondaries.
    async fn prewrite_async(&self, start_ts: u64, primary: &str, keys: &[(&str, &str)], ttl: u64) {
        let secondaries: Vec<_> =
            keys.iter().filter(|(k, _)| *k != primary).map(|(k, _)| k.to_string().into()).collect();
        for (k, v) in keys {
            let req = kvrpcpb::PrewriteRequest {
                mutations: vec![kvrpcpb::Mutation {
                    op: kvrpcpb::Op::Put as i32,
                    key: k.to_string().into(),
                    value: v.to_string().into(),
                    ..Default::default()
                }],
                primary_lock: primary.to_string().into(),
                start_version: start_ts,
                lock_ttl: ttl,
                txn_size: keys.len() as u64,
                min_commit_ts: start_ts + 1,
                max_commit_ts: start_ts + (60_000 << 18),
                use_async_commit: true,
                secondaries: if *k == primary { secondaries.clone() } else { Vec::new() },
                ..Default::default()
            };
            match self.send(k.as_bytes(), req.into()).await {
                KvResponse::Prewrite(r) => {
                    assert!(r.errors.is_empty(), "{:?}", r.errors);
                    assert!(r.min_commit_ts > 0, "TiKV accepted async commit");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    pub(crate) async fn commit(&self, start_ts: u64, commit_ts: u64, keys: &[&str]) {
        for k in keys {
            let req = kvrpcpb::CommitRequest {
                keys: vec![k.to_string().into()],
                start_version: start_ts,
                commit_version: commit_ts,
                ..Default::default()
            };
            match self.send(k.as_bytes(), req.into()).await {
                KvResponse::Commit(r) => assert!(r.error.is_none(), "{:?}", r.error),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

async fn start<H: Harness>(bed: Bed) -> (SimHandle, TransactionClient<H>) {
    let config = ClusterConfig {
        v1_txn: true,
        split_keys: vec![b"g".to_vec(), b"p".to_vec()],
        ..Default::default()
    };
    let server = SimHandle::start(bed, config).await;
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    (server, client)
}

/// Snapshot reads meet committed data and the locks of committed,
/// rolled-back, crashed (plain and async-commit) and live writers.
pub async fn reads_see_committed_data_and_resolve_locks_of_every_kind<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed).await;
    let w = Writer { server: &server };
    let ts = || async { client.current_timestamp().await.expect("ts").version() };

    // A committed transaction over three regions.
    let t1 = ts().await;
    w.prewrite(t1, "a", &[("a", "a1"), ("h", "h1"), ("q", "q1")], 3000).await;
    let c1 = ts().await;
    w.commit(t1, c1, &["a", "h", "q"]).await;
    let before = client.snapshot(tikv_driver::Timestamp::from_version(t1));
    assert_eq!(before.get("a").await.expect("get"), None, "not visible before its commit");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("h").await.expect("get").as_deref(), Some(&b"h1"[..]));
    assert_eq!(
        snap.batch_get(["q", "a", "zz", "h"]).await.expect("batch_get"),
        vec![KvPair::new("a", "a1"), KvPair::new("h", "h1"), KvPair::new("q", "q1")]
    );
    assert!(!snap.key_exists("zz").await.expect("exists"));

    // A writer that crashed after committing its primary: the secondary's
    // lock is resolved as committed and the reader sees the new value.
    let t2 = ts().await;
    w.prewrite(t2, "a", &[("a", "a2"), ("h", "h2")], 3000).await;
    let c2 = ts().await;
    w.commit(t2, c2, &["a"]).await;
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("h").await.expect("get").as_deref(), Some(&b"h2"[..]));
    assert!(
        server.cluster().locks().iter().all(|l| l.lock_version != t2),
        "the reader cleaned the committed transaction's lock up"
    );

    // A writer that crashed after prewrite (short TTL). Once the TTL has
    // passed, a reader rolls the transaction back through its primary,
    // cleans the lock up and reads the old value.
    let t3 = ts().await;
    w.prewrite(t3, "h", &[("h", "h3"), ("q", "q3")], 200).await;
    H::sleep(Duration::from_millis(300)).await;
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("q").await.expect("get").as_deref(), Some(&b"q1"[..]));
    assert_eq!(snap.get("h").await.expect("get").as_deref(), Some(&b"h2"[..]));
    assert!(
        server.cluster().locks().iter().all(|l| l.lock_version != t3),
        "the crashed transaction's locks are gone"
    );
    let primary = server.cluster().commit_record(b"h", t3).expect("a rollback record");
    assert!(format!("{primary:?}").contains("Rollback"), "{primary:?}");

    // Scans cross the three regions and read through or past the locks
    // they meet: plant a crashed writer's lock on "b" (expired TTL).
    let t5 = ts().await;
    w.prewrite(t5, "b", &[("b", "b5")], 1).await;
    H::sleep(Duration::from_millis(20)).await;
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    let all = snap.scan(.., 100).await.expect("scan");
    let keys: Vec<_> = all.iter().map(|p| p.key.clone()).collect();
    assert_eq!(keys, ["a", "h", "q"].map(tikv_driver::Key::from));
    let back = snap.scan_reverse("a".."z", 2).await.expect("reverse scan");
    assert_eq!(back, vec![KvPair::new("q", "q1"), KvPair::new("h", "h2")]);
    assert_eq!(snap.scan_keys("b".."r", 10).await.expect("keys").len(), 2);

    // An async-commit writer that crashed after prewriting every key: it is
    // committed (every prewrite succeeded). Once its TTL passed, a reader
    // recovers the commit ts from the secondaries and reads the values.
    let t6 = ts().await;
    w.prewrite_async(t6, "h", &[("h", "h6"), ("q", "q6")], 100).await;
    H::sleep(Duration::from_millis(200)).await;
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("q").await.expect("get").as_deref(), Some(&b"q6"[..]));
    assert_eq!(snap.get("h").await.expect("get").as_deref(), Some(&b"h6"[..]));
    assert!(
        server.cluster().locks().iter().all(|l| l.lock_version != t6),
        "the async-commit transaction's locks are resolved"
    );

    // A live transaction started after the reader: its locks do not block
    // the reader (the lock's ts is above the read ts, TiKV skips it).
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    let t4 = ts().await;
    w.prewrite(t4, "a", &[("a", "a4")], 60_000).await;
    assert_eq!(snap.get("a").await.expect("get").as_deref(), Some(&b"a2"[..]));

    // A reader after it meets the live lock; its TTL is long, so the read
    // pushes the lock's min_commit_ts and reads past it.
    let later = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(later.get("a").await.expect("get").as_deref(), Some(&b"a2"[..]));
    server.shutdown().await;
}

/// A read-committed snapshot (`ReadOptions::isolation_level`) reads the
/// newest committed value past a live lock and leaves the lock alone, as
/// TiKV skips lock checks for RC reads; a snapshot-isolation read of the
/// same key pushes the lock's `min_commit_ts` to read past it.
pub async fn read_committed_reads_past_live_locks<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed).await;
    let w = Writer { server: &server };
    let ts = || async { client.current_timestamp().await.expect("ts").version() };
    let t1 = ts().await;
    w.prewrite(t1, "a", &[("a", "a1")], 3000).await;
    let c1 = ts().await;
    w.commit(t1, c1, &["a"]).await;
    let t2 = ts().await;
    w.prewrite(t2, "a", &[("a", "a2")], 60_000).await;
    let lock_min_commit =
        || server.cluster().locks().iter().find(|l| l.lock_version == t2).map(|l| l.min_commit_ts);

    let rc = tikv_driver::ReadOptions::default()
        .with_isolation_level(kvrpcpb::IsolationLevel::Rc)
        .with_not_fill_cache(true);
    let snap = client.snapshot(client.current_timestamp().await.expect("ts")).with_read_options(rc);
    assert_eq!(snap.get("a").await.expect("RC get").as_deref(), Some(&b"a1"[..]));
    assert_eq!(snap.batch_get(["a"]).await.expect("RC batch_get"), vec![KvPair::new("a", "a1")]);
    assert_eq!(lock_min_commit(), Some(t2 + 1), "an RC read leaves the lock alone");

    let si = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(si.get("a").await.expect("SI get").as_deref(), Some(&b"a1"[..]));
    assert!(
        lock_min_commit().is_some_and(|m| m > t2 + 1),
        "an SI read pushes the live lock past itself"
    );
    server.shutdown().await;
}
