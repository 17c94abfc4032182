//! The transaction suite: optimistic transactions over loopback gRPC
//! against the simulated cluster in API V1 txn mode: read-your-writes,
//! conflicts, inserts, async commit and 1PC, a large transaction over many
//! regions with a split and leader moves during the commit, concurrent bank
//! transfers, lazy scans, and reads at a future timestamp; pessimistic
//! transactions: contended counters, no-wait and bounded waits, locks
//! released by rollback and by drop, shared locks held by several
//! transactions at once, fair locking, and the lock calls' statistics.
//!
//! Each test is an `async fn` generic over the [`Harness`] that takes the
//! [`Bed`] to run on; [`txn_suite!`](crate::txn_suite) stamps them out as
//! `#[test]`s for one runtime and bed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tikv_driver::{Error, KvPair, LockOptions, TransactionOptions};
use tikv_sim::ClusterConfig;

use crate::harness::{Bed, Harness, SimHandle};

/// The client type under test.
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

/// Stamps out the transaction suite as `#[test]` functions running on the
/// given [`Harness`](crate::Harness) and [`Bed`](crate::harness::Bed)
/// variant (`InProcess` when left out). Every test of
/// [`txn`](crate::txn) is listed here once.
///
/// ```text
/// tikv_tests::txn_suite!(tikv_tests::harness::TokioHarness);
/// tikv_tests::txn_suite!(tikv_tests::harness::TokioHarness, RealPd);
/// ```
#[macro_export]
macro_rules! txn_suite {
    (@each $harness:ty, $bed:ident; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on(
                    $crate::txn::$name::<$harness>($crate::harness::Bed::$bed),
                );
            }
        )*
    };
    ($harness:ty) => {
        $crate::txn_suite!($harness, InProcess);
    };
    ($harness:ty, $bed:ident) => {
        $crate::txn_suite!(@each $harness, $bed;
            writes_commit_conflict_and_read_back,
            a_large_transaction_over_many_regions_survives_splits_during_commit,
            bank_transfers_keep_the_total,
            lazy_scans_page_across_regions_and_merge_the_transaction_buffer,
            reads_at_a_future_timestamp_are_refused,
            close_waits_for_background_commits_then_refuses_calls,
            pessimistic_counters_lose_no_update,
            pessimistic_locks_hold_until_rolled_back_or_dropped,
            a_pessimistic_deadlock_fails_one_side_and_the_other_commits,
            lock_keys_details_report_real_lock_calls,
            shared_locks_are_held_together_and_released_one_by_one,
            begin_at_a_chosen_ts_checkpoints_and_introspection,
            fair_locking_takes_contended_locks_over_newer_writes_and_reuses_them,
            interceptors_see_change_and_refuse_store_rpcs,
            exec_details_sum_what_each_read_processed,
        );
    };
}

async fn start<H: Harness>(
    bed: Bed,
    split_keys: Vec<Vec<u8>>,
) -> (SimHandle, TransactionClient<H>) {
    let config = ClusterConfig { v1_txn: true, split_keys, ..Default::default() };
    let server = SimHandle::start(bed, config).await;
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    (server, client)
}

fn s(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Read-your-writes, a merged scan before commit, write conflicts (also
/// through `lock_keys`), inserts, async commit and 1PC.
pub async fn writes_commit_conflict_and_read_back<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed, vec![b"g".to_vec(), b"p".to_vec()]).await;

    // Read-your-writes and a merged scan before commit.
    let mut t = client.begin().await.expect("begin");
    t.put("a", "1").expect("put");
    t.put("h", "2").expect("put");
    t.put("q", "3").expect("put");
    assert_eq!(t.get("h").await.expect("get").as_deref(), Some(&b"2"[..]));
    t.delete("q").expect("delete");
    assert_eq!(t.get("q").await.expect("get"), None);
    assert_eq!(
        t.scan(.., 10).await.expect("scan"),
        vec![KvPair::new("a", "1"), KvPair::new("h", "2")]
    );
    let c1 = t.commit().await.expect("commit");

    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(
        snap.scan(.., 10).await.expect("scan"),
        vec![KvPair::new("a", "1"), KvPair::new("h", "2")]
    );
    let before = client.snapshot(tikv_driver::Timestamp::from_version(c1.version() - 1));
    assert_eq!(before.get("a").await.expect("get"), None, "invisible before the commit ts");

    // Two writers of one key: the first to commit wins, the other conflicts.
    let mut w1 = client.begin().await.expect("begin");
    let mut w2 = client.begin().await.expect("begin");
    w1.put("h", "w1").expect("put");
    w2.put("h", "w2").expect("put");
    w1.commit().await.expect("first committer wins");
    match w2.commit().await {
        Err(Error::WriteConflict { key, .. }) => assert_eq!(key, tikv_driver::Key::from("h")),
        other => panic!("expected a write conflict, got {other:?}"),
    }
    // The loser left no lock behind (rolled back in the background or
    // never prewritten): a fresh read is not blocked.
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("h").await.expect("get").as_deref(), Some(&b"w1"[..]));

    // Optimistic lock_keys: a key read and locked but written by another
    // transaction meanwhile makes the commit conflict.
    let mut reader = client.begin().await.expect("begin");
    let _ = reader.get("a").await.expect("get");
    reader.lock_keys(["a"], LockOptions::new()).await.expect("lock");
    reader.put("z", "derived from a").expect("put");
    let mut writer = client.begin().await.expect("begin");
    writer.put("a", "changed").expect("put");
    writer.commit().await.expect("commit");
    assert!(matches!(reader.commit().await, Err(Error::WriteConflict { .. })));

    // Insert of an existing key.
    let mut ins = client.begin().await.expect("begin");
    ins.insert("a", "again").expect("insert");
    assert!(matches!(ins.commit().await, Err(Error::KeyExists(_))));
    let mut ins = client.begin().await.expect("begin");
    ins.insert("new", "fresh").expect("insert");
    ins.commit().await.expect("insert of an absent key");

    // Async commit and 1PC happy paths.
    let mut ac = client
        .begin_with_options(TransactionOptions::default().with_async_commit())
        .await
        .expect("begin");
    ac.put("b", "async").expect("put");
    ac.put("x", "async").expect("put");
    let ac_ts = ac.commit().await.expect("async commit");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    // Async commit's commit ts is the fresh TSO + 1 (or TiKV's max ts + 1),
    // which a later TSO may equal: visible either way, since reads see
    // commits at or below their ts.
    assert!(snap.timestamp().version() >= ac_ts.version());
    assert_eq!(snap.get("x").await.expect("get").as_deref(), Some(&b"async"[..]));
    assert_eq!(snap.get("b").await.expect("get").as_deref(), Some(&b"async"[..]));

    let mut one = client
        .begin_with_options(TransactionOptions::default().with_one_pc())
        .await
        .expect("begin");
    one.put("c", "1pc").expect("put");
    one.put("d", "1pc").expect("put");
    one.commit().await.expect("1pc");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("d").await.expect("get").as_deref(), Some(&b"1pc"[..]));
    assert!(
        server.cluster().locks().is_empty() || {
            // Background secondary commits may still be in flight; give them a moment.
            H::sleep(std::time::Duration::from_millis(200)).await;
            server.cluster().locks().is_empty()
        }
    );
    server.shutdown().await;
}

/// 10,000 keys over ≥ 100 regions in one transaction, with splits and
/// leader transfers while it commits; every key is visible afterwards.
pub async fn a_large_transaction_over_many_regions_survives_splits_during_commit<H: Harness>(
    bed: Bed,
) {
    let key = |i: u32| format!("k{i:05}");
    let splits: Vec<Vec<u8>> = (1..100).map(|i| key(i * 100).into_bytes()).collect();
    let (server, client) = start::<H>(bed, splits).await;
    assert!(server.cluster().regions().len() >= 100);

    let mut t = client.begin().await.expect("begin");
    for i in 0..10_000 {
        t.put(key(i), format!("v{i}")).expect("put");
    }
    let cluster = server.cluster().clone();
    let topology = server.topology().clone();
    let chaos = H::spawn(async move {
        for i in 0..20u32 {
            topology.split(key(i * 100 + 50).as_bytes()).await.expect("split during the commit");
            let regions = cluster.regions();
            if let Some(region) = regions.get(i as usize)
                && let Some(leader) = cluster.leader_of(region.id)
                && let Some(p) = region.peers.iter().find(|p| p.store_id != leader.store_id)
            {
                topology.transfer_leader(region.id, p.store_id).await.expect("leader transfer");
            }
            H::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    t.commit().await.expect("commit");
    chaos.await;

    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    let all = snap.scan(.., 10_240).await.expect("scan");
    assert_eq!(all.len(), 10_000);
    assert_eq!(all[1234], KvPair::new(key(1234), "v1234"));
    server.shutdown().await;
}

/// Concurrent transfers between accounts; every snapshot sees the same total.
pub async fn bank_transfers_keep_the_total<H: Harness>(bed: Bed) {
    const ACCOUNTS: u64 = 8;
    const TOTAL: u64 = ACCOUNTS * 100;
    let (server, client) = start::<H>(bed, vec![b"acct3".to_vec(), b"acct6".to_vec()]).await;
    let mut init = client.begin().await.expect("begin");
    for a in 0..ACCOUNTS {
        init.put(format!("acct{a}"), "100").expect("put");
    }
    init.commit().await.expect("init");

    let committed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let client = client.clone();
            let committed = committed.clone();
            H::spawn(async move {
                for i in 0..15u64 {
                    let from = (w * 7 + i * 3) % ACCOUNTS;
                    let to = (from + 1 + i % (ACCOUNTS - 1)) % ACCOUNTS;
                    let mut t = client.begin().await.expect("begin");
                    let read = |v: Option<tikv_driver::Value>| -> u64 {
                        s(&v.expect("account exists")).parse().expect("number")
                    };
                    let a = read(t.get(format!("acct{from}")).await.expect("get"));
                    let b = read(t.get(format!("acct{to}")).await.expect("get"));
                    let amount = (i % 5) + 1;
                    if a < amount {
                        continue;
                    }
                    t.put(format!("acct{from}"), (a - amount).to_string()).expect("put");
                    t.put(format!("acct{to}"), (b + amount).to_string()).expect("put");
                    match t.commit().await {
                        Ok(_) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::WriteConflict { .. }) => {}
                        Err(e) => panic!("transfer failed: {e}"),
                    }
                }
            })
        })
        .collect();
    let auditor = {
        let client = client.clone();
        H::spawn(async move {
            for _ in 0..20 {
                let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
                let pairs = snap.scan("acct".."acct~", 100).await.expect("scan");
                let total: u64 = pairs.iter().map(|p| s(&p.value).parse::<u64>().expect("n")).sum();
                assert_eq!(total, TOTAL, "a snapshot saw money appear or vanish");
                H::sleep(std::time::Duration::from_millis(3)).await;
            }
        })
    };
    for w in workers {
        w.await;
    }
    auditor.await;
    assert!(committed.load(Ordering::Relaxed) > 0, "some transfers committed");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    let pairs = snap.scan("acct".."acct~", 100).await.expect("scan");
    assert_eq!(pairs.iter().map(|p| s(&p.value).parse::<u64>().expect("n")).sum::<u64>(), TOTAL);
    server.shutdown().await;
}

/// Lazy scans (client-go `Iter`/`IterReverse`/`UnionIter`): pages of a
/// chosen size across 20 regions, forward and reverse, keys only, early
/// stops that send nothing more, and a transaction's own writes merged in.
pub async fn lazy_scans_page_across_regions_and_merge_the_transaction_buffer<H: Harness>(bed: Bed) {
    use std::collections::BTreeMap;

    use futures::StreamExt;

    let splits: Vec<Vec<u8>> = (1..20).map(|i| format!("k{:03}", i * 10).into_bytes()).collect();
    let (server, client) = start::<H>(bed, splits).await;
    let mut model = BTreeMap::new();
    let mut t = client.begin().await.expect("begin");
    for i in 0..200 {
        let (k, v) = (format!("k{i:03}"), format!("v{i}"));
        t.put(k.clone(), v.clone()).expect("put");
        model.insert(k, v);
    }
    t.commit().await.expect("commit");
    let pairs = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let strings = |ps: Vec<KvPair>| -> Vec<(String, String)> {
        ps.into_iter().map(|p| (s(p.key.as_bytes()), s(&p.value))).collect()
    };

    let snapshot = client.snapshot(client.current_timestamp().await.expect("ts"));
    let all = snapshot.scan_iter("k".."l").with_batch_size(7).collect(usize::MAX).await;
    assert_eq!(strings(all.expect("forward")), pairs(&model));
    let all = snapshot.scan_reverse_iter("k".."l").with_batch_size(7).collect(usize::MAX).await;
    let mut reversed = pairs(&model);
    reversed.reverse();
    assert_eq!(strings(all.expect("reverse")), reversed);

    // A batch size that divides the range exactly still ends cleanly.
    let sub = snapshot.scan_iter("k050".."k060").with_batch_size(5).collect(100).await;
    assert_eq!(strings(sub.expect("sub-range")).len(), 10);

    // Keys only.
    let keys = snapshot.scan_iter("k100".."k105").key_only().collect(100).await.expect("keys");
    assert_eq!(
        keys.iter().map(|p| s(p.key.as_bytes())).collect::<Vec<_>>(),
        ["k100", "k101", "k102", "k103", "k104"]
    );
    assert!(keys.iter().all(|p| p.value.is_empty()));

    // Laziness: the first pair costs one page (a request or two), reading
    // everything costs one per region at least.
    let before = server.batch_stats().await.requests;
    let mut scanner = snapshot.scan_iter("k".."l").with_batch_size(4);
    let first = scanner.next().await.expect("next").expect("a pair");
    assert_eq!(s(first.key.as_bytes()), "k000");
    let after_first = server.batch_stats().await.requests;
    assert!(after_first - before <= 2, "first page cost {} requests", after_first - before);
    let rest: Vec<_> = scanner.into_stream().collect().await;
    assert_eq!(rest.len(), 199);
    let rest_cost = server.batch_stats().await.requests - after_first;
    assert!(rest_cost >= 20, "the rest cost {rest_cost} requests");

    // A transaction's view: buffered puts (new and overwriting), deletes
    // (existing and not), a lock-only key, all merged with the snapshot.
    let mut t = client.begin().await.expect("begin");
    let mut view = model.clone();
    for (k, v) in [("k0005", "new"), ("k010", "over"), ("k199x", "tail"), ("j", "outside")] {
        t.put(k, v).expect("put");
        view.insert(k.to_string(), v.to_string());
    }
    for k in ["k020", "k021", "k0999", "k150"] {
        t.delete(k).expect("delete");
        view.remove(k);
    }
    t.lock_keys(["k030"], LockOptions::new()).await.expect("lock");
    view.remove("j");
    let got = t.scan_iter("k".."l").with_batch_size(3).collect(usize::MAX).await;
    assert_eq!(strings(got.expect("merged forward")), pairs(&view));
    let got = t.scan_reverse_iter("k".."l").with_batch_size(3).collect(usize::MAX).await;
    let mut reversed = pairs(&view);
    reversed.reverse();
    assert_eq!(strings(got.expect("merged reverse")), reversed);
    // The limited scans agree with the lazy ones.
    let first_five: Vec<_> = pairs(&view).into_iter().take(5).collect();
    assert_eq!(strings(t.scan("k".."l", 5).await.expect("scan")), first_five);
    let last_five: Vec<_> = reversed.into_iter().take(5).collect();
    assert_eq!(strings(t.scan_reverse("k".."l", 5).await.expect("scan reverse")), last_five);
    t.rollback().await.expect("rollback");
}

/// A snapshot at a timestamp PD has not handed out yet is refused
/// (client-go's `ValidateReadTS`); one at a timestamp obtained elsewhere but
/// already handed out reads fine.
pub async fn reads_at_a_future_timestamp_are_refused<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed, Vec::new()).await;
    let now = client.current_timestamp().await.expect("ts");
    let future = tikv_driver::Timestamp::compose(now.physical() + 3_600_000, 0);
    match client.snapshot(future).get("k").await {
        Err(Error::FutureReadTs { read_ts, current_ts }) => {
            assert_eq!(read_ts, future);
            assert!(current_ts > now && current_ts < read_ts);
        }
        other => panic!("expected FutureReadTs, got {other:?}"),
    }
    // Another client's fresh timestamp is newer than anything this one has
    // seen: checked against PD, and fine.
    let other = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let theirs = other.current_timestamp().await.expect("ts");
    assert_eq!(client.snapshot(theirs).get("k").await.expect("read"), None);
}

/// `close` waits for the secondaries' commit that a commit left running in
/// the background (slowed here by a busy store), then stops the client:
/// later calls of the client, its clones and its snapshots fail with
/// `Error::Closed`.
pub async fn close_waits_for_background_commits_then_refuses_calls<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed, vec![b"g".to_vec()]).await;
    let secondary_region = {
        let cluster = server.cluster();
        cluster.region_for_region_key(&cluster.txn_region_key(b"h")).expect("region").id
    };
    let busy = tikv_proto::errorpb::Error {
        message: "server is busy".into(),
        server_is_busy: Some(Default::default()),
        ..Default::default()
    };
    let filter = tikv_sim::Filter::any().command("kv_commit").region(secondary_region);
    server.cluster().inject_region_error(filter, busy, 1);

    let mut t = client.begin().await.expect("begin");
    t.put("a", "1").expect("put");
    t.put("h", "2").expect("put");
    t.commit().await.expect("the primary's commit is the commit point");
    let clone = client.clone();
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(client.close(std::time::Duration::from_secs(30)).await, 0, "nothing left running");
    assert!(server.cluster().locks().is_empty(), "the secondary was committed before close ended");

    assert!(matches!(client.current_timestamp().await, Err(Error::Closed)));
    assert!(matches!(clone.begin().await, Err(Error::Closed)));
    assert!(matches!(snap.get("a").await, Err(Error::Closed)));
    server.shutdown().await;
}

fn pessimistic() -> TransactionOptions {
    TransactionOptions::default().with_pessimistic()
}

/// Pessimistic read-modify-write of one counter from four workers at once:
/// `get_for_update` locks the counter before reading it, so every commit
/// succeeds and no increment is lost.
pub async fn pessimistic_counters_lose_no_update<H: Harness>(bed: Bed) {
    const WORKERS: u64 = 4;
    const INCREMENTS: u64 = 8;
    let (server, client) = start::<H>(bed, vec![]).await;
    let mut init = client.begin().await.expect("begin");
    init.put("counter", "0").expect("put");
    init.commit().await.expect("init");

    // A client per worker: the simulator answers the requests of one
    // BatchCommands stream in order, so a lock request waiting there would
    // hold up the commit that releases the lock it waits for.
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let pd = server.pd_addrs();
            H::spawn(async move {
                let client = TransactionClient::<H>::connect(pd).await.expect("connect");
                for _ in 0..INCREMENTS {
                    let mut t = client.begin_with_options(pessimistic()).await.expect("begin");
                    let v = t.get_for_update("counter").await.expect("get_for_update");
                    let n: u64 = s(&v.expect("the counter exists")).parse().expect("number");
                    t.put("counter", (n + 1).to_string()).expect("put");
                    t.commit().await.expect("a pessimistic commit does not conflict");
                }
            })
        })
        .collect();
    for w in workers {
        w.await;
    }
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    let total = s(&snap.get("counter").await.expect("get").expect("exists"));
    assert_eq!(total, (WORKERS * INCREMENTS).to_string(), "an increment was lost");
    server.shutdown().await;
}

/// A pessimistic lock blocks other transactions' locks: a no-wait lock
/// fails at once and a bounded wait times out; `rollback` releases the
/// locks, and so does dropping the transaction (well before their 20 s
/// TTL). Values come back from `batch_get_for_update`, and a committed
/// pessimistic write is read back. A shared lock needs a primary and is
/// not upgraded; an inserted key that exists fails its lock.
pub async fn pessimistic_locks_hold_until_rolled_back_or_dropped<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed, vec![b"m".to_vec()]).await;
    let mut init = client.begin().await.expect("begin");
    init.put("a", "1").expect("put");
    init.commit().await.expect("init");

    let mut holder = client.begin_with_options(pessimistic()).await.expect("begin");
    holder.lock_keys(["a", "x"], LockOptions::new()).await.expect("lock two regions");
    let mut other = client.begin_with_options(pessimistic()).await.expect("begin");
    match other.lock_keys(["x"], LockOptions::new().no_wait()).await {
        Err(Error::LockAcquireFailAndNoWaitSet) => {}
        res => panic!("expected a no-wait failure, got {res:?}"),
    }
    let bounded = LockOptions::new().wait_timeout(std::time::Duration::from_millis(200));
    match other.lock_keys(["a"], bounded).await {
        Err(Error::LockWaitTimeout) => {}
        res => panic!("expected a lock wait timeout, got {res:?}"),
    }

    holder.rollback().await.expect("rollback");
    let values = other
        .lock_keys(["a", "x"], LockOptions::new().no_wait().return_values())
        .await
        .expect("released by the rollback");
    assert_eq!(values.len(), 2);
    assert!(values[0].1.exists && values[0].1.value == "1" && !values[1].1.exists);
    drop(other);

    // The dropped transaction's locks are rolled back in the background.
    let mut third = client.begin_with_options(pessimistic()).await.expect("begin");
    let mut pairs = None;
    for _ in 0..100 {
        let mut probe = client.begin_with_options(pessimistic()).await.expect("begin");
        match probe.lock_keys(["a", "x"], LockOptions::new().no_wait()).await {
            Ok(_) => {
                probe.rollback().await.expect("rollback");
                pairs = Some(third.batch_get_for_update(["a", "x", "zz"]).await.expect("lock"));
                break;
            }
            Err(Error::LockAcquireFailAndNoWaitSet) => {
                H::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("probe failed: {e}"),
        }
    }
    let pairs = pairs.expect("the dropped transaction's locks were released within 2 s");
    assert_eq!(pairs, vec![KvPair::new("a", "1")]);
    // A key this transaction already locked is read again, not locked again.
    assert_eq!(third.get_for_update("a").await.expect("get").as_deref(), Some(&b"1"[..]));
    let values =
        third.lock_keys(["zz2", "a"], LockOptions::new().return_values()).await.expect("lock");
    let marks: Vec<_> =
        values.iter().map(|(k, v)| (k.clone(), v.already_locked, v.exists)).collect();
    assert_eq!(
        marks,
        vec![
            (tikv_driver::Key::from("a"), true, false),
            (tikv_driver::Key::from("zz2"), false, false)
        ]
    );
    third.put("a", "3").expect("put");
    third.put("x", "4").expect("put");
    third.commit().await.expect("commit");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(
        snap.scan(.., 10).await.expect("scan"),
        vec![KvPair::new("a", "3"), KvPair::new("x", "4")]
    );

    // Share mode: only under a primary locked before, and never upgraded.
    let mut sharer = client.begin_with_options(pessimistic()).await.expect("begin");
    let shared = LockOptions::new().in_share_mode();
    assert!(matches!(
        sharer.lock_keys(["s"], shared.clone()).await,
        Err(Error::InvalidArgument(_))
    ));
    sharer.lock_keys(["p"], LockOptions::new()).await.expect("the primary");
    sharer.lock_keys(["s"], shared).await.expect("a shared lock");
    assert!(matches!(
        sharer.lock_keys(["s"], LockOptions::new()).await,
        Err(Error::InvalidArgument(_))
    ));
    sharer.rollback().await.expect("rollback");

    // An inserted key is locked asserting it does not exist.
    let mut inserter = client.begin_with_options(pessimistic()).await.expect("begin");
    inserter.insert("a", "again").expect("insert");
    match inserter.lock_keys(["a"], LockOptions::new()).await {
        Err(Error::KeyExists(key)) => assert_eq!(key, tikv_driver::Key::from("a")),
        res => panic!("expected the key to exist, got {res:?}"),
    }
    // A key locked before and found to exist fails its insert at once.
    inserter.lock_keys(["x"], LockOptions::new()).await.expect("lock");
    inserter.insert("x", "again").expect("insert");
    assert!(matches!(
        inserter.lock_keys(["x"], LockOptions::new()).await,
        Err(Error::KeyExists(_))
    ));
    inserter.rollback().await.expect("rollback");
    server.shutdown().await;
}

/// Two pessimistic transactions lock in opposite orders: the lock request
/// that closes the cycle fails at once with `Error::Deadlock` (TiKV's
/// detector, with the wait chain), the victim rolls back, and the other
/// transaction's waiting request then gets its lock and commits.
pub async fn a_pessimistic_deadlock_fails_one_side_and_the_other_commits<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed, vec![b"m".to_vec()]).await;
    // A second client: its lock requests travel on their own streams.
    let other = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let wait = LockOptions::new().wait_timeout(std::time::Duration::from_secs(5));
    let mut a = client.begin_with_options(pessimistic()).await.expect("begin a");
    let mut b = other.begin_with_options(pessimistic()).await.expect("begin b");
    a.lock_keys(["a"], LockOptions::new()).await.expect("a locks a");
    b.lock_keys(["z"], LockOptions::new()).await.expect("b locks z");

    let first = H::spawn({
        let wait = wait.clone();
        async move {
            let locked = a.lock_keys(["z"], wait).await.map(drop);
            (a, locked)
        }
    });
    // Let a's request wait for b's lock before b closes the cycle.
    H::sleep(std::time::Duration::from_millis(300)).await;
    match b.lock_keys(["a"], wait).await {
        Err(Error::Deadlock { wait_chain, .. }) => {
            assert!(!wait_chain.is_empty(), "TiKV's detector names the wait chain");
        }
        other => panic!("expected the cycle's last request to deadlock, got {other:?}"),
    }
    b.rollback().await.expect("the victim rolls back");

    let (mut a, locked) = first.await;
    locked.expect("a gets z once the victim is gone");
    a.put("a", "from a").expect("put");
    a.put("z", "from a").expect("put");
    a.commit().await.expect("the survivor commits");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("z").await.expect("get").as_deref(), Some(&b"from a"[..]));
    server.shutdown().await;
}

/// client-go's `LockKeysDetails` of real lock calls: a call over two
/// regions reports its keys, both regions and its lock requests with the
/// slowest one's region and store; a call that waits on another
/// transaction's lock has the wait in its lock RPC time and, woken by the
/// holder's rollback (TiKV's legacy wake-up answers a write conflict),
/// one statement retry at a fresh `for_update_ts`, its keys counted per
/// attempt; a failed call reports its request too; the transaction's
/// details sum every call, `get_for_update` included.
pub async fn lock_keys_details_report_real_lock_calls<H: Harness>(bed: Bed) {
    use std::time::Duration;
    let (server, client) = start::<H>(bed, vec![b"m".to_vec()]).await;

    let mut holder = client.begin_with_options(pessimistic()).await.expect("begin");
    let (locked, d) = holder.lock_keys_with_details(["a", "x"], LockOptions::new()).await;
    locked.expect("lock two regions");
    assert_eq!((d.keys, d.regions), (2, 2), "{d:?}");
    // The primary alone first, then the other key.
    assert!(d.lock_rpc_count >= 2, "{d:?}");
    assert!(!d.lock_rpc_time.is_zero() && d.total >= d.lock_rpc_time, "{d:?}");
    assert_eq!((d.statement_retries, d.aggressive_lock_new), (0, 0), "{d:?}");
    let slowest = d.slowest.as_ref().expect("the requests succeeded");
    assert!(slowest.region_id != 0 && !slowest.store_addr.is_empty(), "{d:?}");
    assert!(slowest.time <= d.lock_rpc_time);
    assert_eq!(holder.lock_keys_details(), &d, "the transaction's first call");

    let mut waiter = client.begin_with_options(pessimistic()).await.expect("begin");
    let wait = LockOptions::new().wait_timeout(Duration::from_secs(5));
    let waiting = H::spawn(async move {
        let (locked, d) = waiter.lock_keys_with_details(["a"], wait).await;
        (waiter, locked, d)
    });
    // The waiter's request is parked in TiKV's wait queue, then held there
    // at least this long.
    for _ in 0..1_000 {
        if server.cluster().lock_waiters() > 0 {
            break;
        }
        H::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.cluster().lock_waiters(), 1, "the waiter waits for the holder's lock");
    let hold = Duration::from_millis(300);
    H::sleep(hold).await;
    holder.rollback().await.expect("rollback");
    let (mut waiter, locked, d) = waiting.await;
    locked.expect("locked once the holder rolled back");
    assert!(d.lock_rpc_time >= hold, "TiKV held the request: {d:?}");
    assert!(d.total >= d.lock_rpc_time, "{d:?}");
    assert_eq!(d.statement_retries, 1, "woken with a write conflict, locked again: {d:?}");
    assert_eq!(d.keys, 2, "one key, two attempts: {d:?}");
    assert!(d.lock_rpc_count >= 2, "{d:?}");

    assert_eq!(waiter.get_for_update("x").await.expect("get_for_update"), None);
    let summed = waiter.lock_keys_details();
    assert_eq!(summed.keys, 3, "{summed:?}");
    assert!(summed.lock_rpc_count > d.lock_rpc_count, "{summed:?}");
    assert!(summed.total >= d.total);

    let mut refused = client.begin_with_options(pessimistic()).await.expect("begin");
    let (locked, d) = refused.lock_keys_with_details(["a"], LockOptions::new().no_wait()).await;
    assert!(matches!(locked, Err(Error::LockAcquireFailAndNoWaitSet)), "{locked:?}");
    assert!(d.lock_rpc_count >= 1 && d.slowest.is_none(), "{d:?}");
    assert_eq!(refused.lock_keys_details().lock_rpc_count, d.lock_rpc_count);
    refused.rollback().await.expect("rollback");
    waiter.rollback().await.expect("rollback");
    server.shutdown().await;
}

/// The start ts of every holder of `key`'s shared locks, in order (empty
/// when the key holds no shared lock).
fn share_holders(server: &SimHandle, key: &[u8]) -> Vec<u64> {
    let shared = tikv_proto::kvrpcpb::Op::SharedLock as i32;
    let mut holders: Vec<u64> = server
        .cluster()
        .locks()
        .into_iter()
        .filter(|l| &l.key[..] == key && l.lock_type == shared)
        .flat_map(|l| l.shared_lock_infos.into_iter().map(|h| h.lock_version))
        .collect();
    holders.sort();
    holders
}

/// Shared pessimistic locks end to end: four transactions lock one key in
/// share mode at once (each under its own primary); another transaction
/// can neither take it (no-wait, bounded wait) nor write it meanwhile; an
/// exclusive locker waits while a rollback, a drop and one commit each
/// release only their own share, and gets the key once the last holder
/// commits. Both committers leave a `Lock` record on the key.
pub async fn shared_locks_are_held_together_and_released_one_by_one<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed, vec![b"m".to_vec()]).await;
    let shared = LockOptions::new().in_share_mode();
    let mut sharers = Vec::new();
    for primary in ["p1", "p2", "p5", "p6"] {
        let mut t = client.begin_with_options(pessimistic()).await.expect("begin");
        t.lock_keys([primary], LockOptions::new()).await.expect("the primary");
        t.lock_keys(["s"], shared.clone()).await.expect("holders do not block each other");
        sharers.push(t);
    }
    let ts: Vec<u64> = sharers.iter().map(|t| t.start_timestamp().version()).collect();
    assert_eq!(share_holders(&server, b"s"), ts);
    let mut t6 = sharers.pop().expect("four");
    let t5 = sharers.pop().expect("three");
    let mut t2 = sharers.pop().expect("two");
    let mut t1 = sharers.pop().expect("one");

    // Nobody else takes or writes the key meanwhile.
    let mut other = client.begin_with_options(pessimistic()).await.expect("begin");
    match other.lock_keys(["s"], LockOptions::new().no_wait()).await {
        Err(Error::LockAcquireFailAndNoWaitSet) => {}
        res => panic!("expected a no-wait failure on the shares, got {res:?}"),
    }
    let bounded = LockOptions::new().wait_timeout(std::time::Duration::from_millis(200));
    match other.lock_keys(["s"], bounded).await {
        Err(Error::LockWaitTimeout) => {}
        res => panic!("expected a lock wait timeout on the shares, got {res:?}"),
    }
    other.rollback().await.expect("rollback");
    let mut writer = client.begin().await.expect("begin");
    writer.put("s", "blind").expect("put");
    let write = H::spawn(async move { writer.commit().await });

    // An exclusive locker waits for every holder.
    let waiter_done = Arc::new(AtomicU64::new(0));
    let mut exclusive = client.begin_with_options(pessimistic()).await.expect("begin");
    let waiting = H::spawn({
        let done = waiter_done.clone();
        async move {
            let wait = LockOptions::new().wait_timeout(std::time::Duration::from_secs(30));
            let locked = exclusive.lock_keys(["s"], wait).await.map(drop);
            done.store(1, Ordering::SeqCst);
            (exclusive, locked)
        }
    });
    H::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(waiter_done.load(Ordering::SeqCst), 0, "four holders");

    // A rollback and a drop release only their own share.
    t5.rollback().await.expect("rollback");
    assert_eq!(share_holders(&server, b"s"), vec![ts[0], ts[1], ts[3]]);
    t6.put("p6", "gone").expect("put");
    drop(t6);
    let mut released = false;
    for _ in 0..100 {
        if share_holders(&server, b"s") == vec![ts[0], ts[1]] {
            released = true;
            break;
        }
        H::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(released, "the dropped transaction's share was released within 2 s");
    H::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(waiter_done.load(Ordering::SeqCst), 0, "two holders left");

    // Both holders commit; the exclusive locker gets the key after the last.
    t1.put("p1", "one").expect("put");
    t1.commit().await.expect("the first holder commits");
    let mut gone = false;
    for _ in 0..100 {
        if share_holders(&server, b"s") == vec![ts[1]] {
            gone = true;
            break;
        }
        H::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "the first holder's share is committed (a background secondary)");
    H::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(waiter_done.load(Ordering::SeqCst), 0, "one holder left");
    t2.put("p2", "two").expect("put");
    t2.commit().await.expect("the second holder commits");
    let (mut exclusive, locked) = waiting.await;
    locked.expect("the exclusive locker gets the key after the last holder");
    assert!(share_holders(&server, b"s").is_empty());
    exclusive.put("s", "exclusive").expect("put");
    exclusive.commit().await.expect("commit");
    for t in [ts[0], ts[1]] {
        let record = server.cluster().commit_record(b"s", t).expect("a record");
        assert_eq!(record.kind, tikv_sim::WriteKind::Lock);
    }
    // The blind write met the shares and then the holders' commit records
    // above its start ts: it fails and writes nothing.
    match write.await {
        Err(e) if e.is_write_conflict() => {}
        res => panic!("a write under shared locks must not commit: {res:?}"),
    }
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("s").await.expect("get").as_deref(), Some(&b"exclusive"[..]));
    assert!(server.cluster().locks().is_empty(), "no lock left");
    server.shutdown().await;
}

/// `begin_at` reads as of the chosen start ts and conflicts with what was
/// committed after it; a checkpoint reverts buffered writes but keeps the
/// pessimistic locks taken since (TiDB's `ROLLBACK TO SAVEPOINT`); the
/// introspection calls follow the buffer.
pub async fn begin_at_a_chosen_ts_checkpoints_and_introspection<H: Harness>(bed: Bed) {
    let (server, client) = start::<H>(bed, vec![b"m".to_vec()]).await;
    let before = client.current_timestamp().await.expect("ts");
    let mut w = client.begin().await.expect("begin");
    w.put("k", "after").expect("put");
    w.commit().await.expect("commit");

    let mut old = client.begin_at(before, TransactionOptions::default()).await.expect("begin_at");
    assert_eq!(old.start_timestamp(), before);
    assert!(old.is_read_only() && old.is_empty());
    assert_eq!(old.get("k").await.expect("get"), None, "reads as of the chosen ts");
    assert!(old.is_read_only(), "a read buffers nothing");
    old.put("k", "stale").expect("put");
    assert!(!old.is_read_only());
    assert_eq!((old.len(), old.size()), (1, "k".len() + "stale".len()));
    match old.commit().await {
        Err(e) if e.is_write_conflict() => {}
        other => panic!("a write over a newer commit: want a write conflict, got {other:?}"),
    }

    // Checkpoints in an optimistic transaction.
    let mut t = client.begin().await.expect("begin");
    t.put("a", "1").expect("put");
    let savepoint = t.checkpoint();
    t.put("a", "2").expect("put");
    t.put("z", "2").expect("put");
    assert_eq!(t.len(), 2);
    t.revert_to_checkpoint(savepoint).expect("revert");
    assert_eq!(t.get("a").await.expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(t.get("z").await.expect("get"), None);
    assert_eq!(t.len(), 1);
    t.commit().await.expect("commit");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("a").await.expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(snap.get("z").await.expect("get"), None);

    // In a pessimistic transaction a lock taken after the checkpoint stays
    // held after the revert, until the transaction commits.
    let mut p = client.begin_with_options(pessimistic()).await.expect("begin");
    assert!(p.is_pessimistic());
    assert_eq!(p.for_update_timestamp(), tikv_driver::Timestamp::ZERO);
    p.lock_keys(["a"], LockOptions::new()).await.expect("lock a");
    let savepoint = p.checkpoint();
    p.put("z", "locked after the savepoint").expect("put");
    p.lock_keys(["z"], LockOptions::new()).await.expect("lock z");
    assert!(p.for_update_timestamp() > p.start_timestamp());
    p.revert_to_checkpoint(savepoint).expect("revert");
    assert_eq!(p.get("z").await.expect("get"), None);
    let mut other = client.begin_with_options(pessimistic()).await.expect("begin");
    match other.lock_keys(["z"], LockOptions::new().no_wait()).await {
        Err(Error::LockAcquireFailAndNoWaitSet) => {}
        res => panic!("z stays locked after the revert, got {res:?}"),
    }
    p.commit().await.expect("commit");
    other.lock_keys(["z"], LockOptions::new().no_wait()).await.expect("z is free after the commit");
    other.rollback().await.expect("rollback");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("z").await.expect("get"), None, "the reverted write is not committed");
    server.shutdown().await;
}

/// Waits until `key` can be locked by a fresh pessimistic transaction
/// without waiting (a background rollback has landed), then releases it.
async fn until_lockable<H: Harness>(client: &TransactionClient<H>, key: &str) {
    for _ in 0..250 {
        let mut probe = client.begin_with_options(pessimistic()).await.expect("begin");
        let locked = probe.lock_keys([key], LockOptions::new().no_wait()).await;
        probe.rollback().await.expect("rollback");
        match locked {
            Ok(_) => return,
            Err(Error::LockAcquireFailAndNoWaitSet) => {
                H::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("probing {key}: {e:?}"),
        }
    }
    panic!("{key} stayed locked");
}

/// Fair locking (client-go's aggressive locking): a waiter woken after the
/// holder wrote the key takes the lock over that write and gets its value
/// (`locked_with_conflict_ts` set) instead of a write conflict, and
/// commits with the lock's for_update_ts checked at prewrite; a retried
/// attempt takes over the previous attempt's locks without RPCs (shown
/// with lock requests failing meanwhile) and `done` rolls back the ones it
/// no longer needs; `cancel` rolls back everything.
pub async fn fair_locking_takes_contended_locks_over_newer_writes_and_reuses_them<H: Harness>(
    bed: Bed,
) {
    use std::time::Duration;
    let (server, client) = start::<H>(bed, vec![b"m".to_vec()]).await;
    let values = LockOptions::new().return_values().wait_timeout(Duration::from_secs(5));

    let mut holder = client.begin_with_options(pessimistic()).await.expect("begin");
    holder.lock_keys(["k"], LockOptions::new()).await.expect("holder locks k");
    let mut fair = client.begin_with_options(pessimistic()).await.expect("begin");
    assert!(matches!(
        client.begin().await.expect("begin").start_fair_locking(),
        Err(Error::InvalidArgument(_))
    ));
    fair.start_fair_locking().expect("start");
    let waiter = H::spawn({
        let values = values.clone();
        async move {
            let (locked, details) = fair.lock_keys_with_details(["k"], values).await;
            (fair, locked, details)
        }
    });
    H::sleep(Duration::from_millis(300)).await;
    holder.put("k", "from holder").expect("put");
    let holder_commit = holder.commit().await.expect("holder commits");
    let (mut fair, locked, details) = waiter.await;
    let locked = locked.expect("the waiter takes the lock over the holder's write");
    // client-go's fair-locking statistics: a new fair lock, taken with a
    // conflict, without a statement retry.
    assert_eq!(
        (details.aggressive_lock_new, details.locked_with_conflict, details.statement_retries),
        (1, 1, 0),
        "{details:?}"
    );
    assert_eq!(locked.len(), 1);
    let (key, returned) = &locked[0];
    assert_eq!(key, &tikv_driver::Key::from("k"));
    assert_eq!(&returned.value[..], b"from holder", "the newest value, not a conflict");
    assert_eq!(returned.locked_with_conflict_ts, holder_commit);

    // The statement is redone: k and a second key are locked again in the
    // next attempt; lock requests fail meanwhile, so they must be reused.
    fair.lock_keys(["spare"], LockOptions::new()).await.expect("lock spare");
    fair.retry_fair_locking().expect("retry");
    server.cluster().inject_rpc_error(
        tikv_sim::Filter::any().command("kv_pessimistic_lock"),
        tikv_driver::RpcError::Unavailable("lock requests are down".into()),
        1_000_000,
    );
    let (again, details) = fair.lock_keys_with_details(["k"], values.clone()).await;
    let again = again.expect("k is taken over");
    server.cluster().clear_injections();
    assert_eq!(
        (details.keys, details.aggressive_lock_derived, details.lock_rpc_count),
        (1, 1, 0),
        "taken over without an RPC: {details:?}"
    );
    assert_eq!(&again[0].1.value[..], b"from holder");
    assert_eq!(again[0].1.locked_with_conflict_ts, tikv_driver::Timestamp::ZERO);
    fair.done_fair_locking().expect("done");
    assert!(!fair.is_fair_locking());
    // "spare" was not needed by the final attempt: released.
    until_lockable::<H>(&client, "spare").await;
    // k is still held.
    let mut other = client.begin_with_options(pessimistic()).await.expect("begin");
    assert!(matches!(
        other.lock_keys(["k"], LockOptions::new().no_wait()).await,
        Err(Error::LockAcquireFailAndNoWaitSet)
    ));
    other.rollback().await.expect("rollback");
    // A read of k in the transaction sees the holder's write, not its own
    // for_update_ts's older view.
    assert_eq!(fair.get_for_update("k").await.expect("get").as_deref(), Some(&b"from holder"[..]));
    fair.put("k", "from fair").expect("put");
    fair.commit().await.expect("commit with k's for_update_ts checked at prewrite");
    let snap = client.snapshot(client.current_timestamp().await.expect("ts"));
    assert_eq!(snap.get("k").await.expect("get").as_deref(), Some(&b"from fair"[..]));

    // Cancel gives up every lock of the session; a commit with a session
    // holding locks is refused and the dropped transaction releases them.
    let mut cancelled = client.begin_with_options(pessimistic()).await.expect("begin");
    cancelled.start_fair_locking().expect("start");
    cancelled.lock_keys(["c"], LockOptions::new()).await.expect("lock");
    cancelled.cancel_fair_locking().expect("cancel");
    until_lockable::<H>(&client, "c").await;
    cancelled.rollback().await.expect("rollback");
    let mut refused = client.begin_with_options(pessimistic()).await.expect("begin");
    refused.start_fair_locking().expect("start");
    refused.lock_keys(["r"], LockOptions::new()).await.expect("lock");
    assert!(matches!(refused.commit().await, Err(Error::InvalidArgument(_))));
    until_lockable::<H>(&client, "r").await;
    server.shutdown().await;
}

/// RPC interceptors (client-go `RPCInterceptor`): a client's interceptor
/// sees every store RPC of its transactions, the background secondary
/// commit included, and nothing of other handles; a snapshot's interceptor
/// changes what the store is asked; a transaction's interceptor that
/// refuses the prewrite ends the commit at once with `Rejected`, having
/// sent nothing.
pub async fn interceptors_see_change_and_refuse_store_rpcs<H: Harness>(bed: Bed) {
    use futures::FutureExt;
    use tikv_driver::RpcError;
    use tikv_driver::interceptor::{KvRequest, interceptor_fn};

    let (server, client) = start::<H>(bed, vec![b"g".to_vec()]).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let counted = {
        let seen = seen.clone();
        client.with_interceptor(interceptor_fn("count", move |rpc, next| {
            seen.lock().unwrap().push(rpc.request.name().to_string());
            next.run(rpc)
        }))
    };
    let commits = || seen.lock().unwrap().iter().filter(|c| *c == "kv_commit").count();

    // Two regions: the primary's commit in the foreground, the
    // secondary's in the background, both through the interceptor.
    let mut t = counted.begin().await.expect("begin");
    t.put("a", "1").expect("put");
    t.put("h", "2").expect("put");
    t.commit().await.expect("commit");
    for _ in 0..200 {
        if commits() == 2 {
            break;
        }
        H::sleep(std::time::Duration::from_millis(10)).await;
    }
    let names = seen.lock().unwrap().clone();
    assert_eq!(names.iter().filter(|c| *c == "kv_prewrite").count(), 2, "{names:?}");
    assert_eq!(commits(), 2, "primary and secondary commits: {names:?}");

    // The handle without the interceptor is unaffected.
    let before = seen.lock().unwrap().len();
    let mut t = client.begin().await.expect("begin");
    t.put("b", "3").expect("put");
    t.commit().await.expect("commit");
    assert_eq!(seen.lock().unwrap().len(), before, "other handles are not intercepted");

    // A snapshot interceptor that asks for another key than the caller.
    let ts = client.current_timestamp().await.expect("ts");
    let redirected =
        client.snapshot(ts).with_interceptor(interceptor_fn("redirect", |mut rpc, next| {
            if let KvRequest::Get(get) = &mut rpc.request {
                // Same region: the request still goes to the right one.
                get.key = b"b".to_vec().into();
            }
            next.run(rpc)
        }));
    assert_eq!(redirected.get("a").await.expect("get").as_deref(), Some(&b"3"[..]));

    // A refused prewrite: the commit fails at once, nothing reached the
    // stores, so the old value stays readable without waiting for a lock.
    let prewrites = || -> u64 {
        let cluster = server.cluster();
        cluster
            .store_ids()
            .into_iter()
            .map(|s| cluster.kv_request_count(s, "kv_prewrite", None))
            .sum()
    };
    let sent_before = prewrites();
    let mut t = counted.begin().await.expect("begin");
    t.add_interceptor(interceptor_fn("deny", |rpc, next| {
        if matches!(rpc.request, KvRequest::Prewrite(_)) {
            return futures::future::ready(Err(RpcError::Rejected("over quota".into()))).boxed();
        }
        next.run(rpc)
    }));
    t.put("a", "refused").expect("put");
    match t.commit().await {
        Err(Error::Rpc(RpcError::Rejected(reason))) => assert_eq!(reason, "over quota"),
        other => panic!("expected the interceptor's refusal, got {other:?}"),
    }
    assert_eq!(prewrites(), sent_before, "no prewrite left the client");
    let ts = client.current_timestamp().await.expect("ts");
    assert_eq!(client.snapshot(ts).get("a").await.expect("get").as_deref(), Some(&b"1"[..]));
}

/// Execution details (client-go `ExecDetails`): a collector added to a
/// snapshot sums the `ExecDetailsV2` of its reads' answers (the simulator
/// reports the versions a point read processed and their bytes), and a
/// transaction's collector sees its commit's requests.
pub async fn exec_details_sum_what_each_read_processed<H: Harness>(bed: Bed) {
    use tikv_driver::ExecDetailsCollector;

    let (_server, client) = start::<H>(bed, vec![b"g".to_vec()]).await;
    let writes = ExecDetailsCollector::new();
    let mut t = client.begin().await.expect("begin");
    t.add_interceptor(writes.clone());
    for (k, v) in [("a", "1"), ("b", "22"), ("h", "333")] {
        t.put(k, v).expect("put");
    }
    let (committed, commit) = t.commit_with_details().await;
    committed.expect("commit");
    assert_eq!((commit.write_keys, commit.write_size), (3, 3 + 1 + 2 + 3), "{commit:?}");
    assert!(commit.prewrite_requests >= 2, "one per region at least: {commit:?}");
    // client-go's `SlowestPrewrite` and `CommitPrimary`: where they went.
    let slowest = commit.slowest_prewrite.as_ref().expect("the prewrites succeeded");
    assert!(slowest.region_id > 0 && slowest.store_id > 0, "{slowest:?}");
    assert!(!slowest.store_addr.is_empty() && slowest.exec_details.requests == 1, "{slowest:?}");
    let primary = commit.commit_primary.as_ref().expect("a two-phase commit");
    assert!(primary.store_id > 0 && primary.time <= commit.commit, "{primary:?} in {commit:?}");
    // Two prewrites and the primary's commit at least (the secondary's
    // commit runs in the background and may not have answered yet).
    assert!(writes.details().requests >= 3, "{:?}", writes.details());

    let reads = ExecDetailsCollector::new();
    let ts = client.current_timestamp().await.expect("ts");
    let snapshot = client.snapshot(ts).with_interceptor(reads.clone());
    let pairs = snapshot.batch_get(["a", "b", "h", "zz"]).await.expect("batch_get");
    assert_eq!(pairs.len(), 3);
    let d = reads.take();
    // A BatchGet per region (two here, more on the real PD bed, which
    // starts with regions of its own); three versions of key + value bytes.
    assert!(d.with_details >= 2 && d.requests >= d.with_details, "{d:?}");
    assert_eq!((d.scan.processed_keys, d.scan.processed_keys_size), (3, 2 + 3 + 4), "{d:?}");
    assert_eq!(snapshot.get("b").await.expect("get").as_deref(), Some(&b"22"[..]));
    let d = reads.take();
    assert_eq!((d.requests, d.scan.processed_keys, d.scan.processed_keys_size), (1, 1, 3));
    assert_eq!(snapshot.get("nothing").await.expect("get"), None);
    assert_eq!(reads.take().scan.processed_keys, 0, "a missing key processes no version");
}
