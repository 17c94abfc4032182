//! The stale-read suite: transactional snapshots read as stale reads
//! (`TransactionClient::stale_snapshot`, `stale_snapshot_ago`) over
//! loopback gRPC, against the simulated stores' safe ts, with the stores
//! counting the stale reads each served or refused
//! ([`tikv_sim::Cluster::stale_read_count`]) and the plain reads that
//! reached them ([`tikv_sim::Cluster::kv_request_count`]).
//!
//! [`stale_read_suite!`](crate::stale_read_suite) stamps the tests out as
//! `#[test]`s for one [`Harness`] and [`Bed`]. On both beds the stores'
//! safe ts advance about every second (in process as the model observes
//! requests, joined to a real PD by the joined mode's resolved-ts loop),
//! and the client refreshes its min safe ts every 2 s.

use std::time::{Duration, Instant};

use tikv_driver::{GLOBAL_TXN_SCOPE, Timestamp};
use tikv_sim::{Cluster, ClusterConfig};

use crate::harness::{Bed, Harness, SimHandle};

/// The client type under test.
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

/// Stamps out the stale-read suite as `#[test]` functions running on the
/// given [`Harness`](crate::Harness) and [`Bed`](crate::harness::Bed)
/// variant (`InProcess` when left out). Every test of
/// [`stale_read`](crate::stale_read) is listed here once.
///
/// ```text
/// tikv_tests::stale_read_suite!(tikv_tests::harness::TokioHarness);
/// tikv_tests::stale_read_suite!(tikv_tests::harness::TokioHarness, RealPd);
/// ```
#[macro_export]
macro_rules! stale_read_suite {
    (@each $harness:ty, $bed:ident; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on(
                    $crate::stale_read::$name::<$harness>($crate::harness::Bed::$bed),
                );
            }
        )*
    };
    ($harness:ty) => {
        $crate::stale_read_suite!($harness, InProcess);
    };
    ($harness:ty, $bed:ident) => {
        $crate::stale_read_suite!(@each $harness, $bed;
            stale_reads_at_the_min_safe_ts_are_served_by_followers,
            a_stale_read_above_a_followers_safe_ts_falls_back_to_the_leader,
            stale_reads_never_see_data_newer_than_their_ts,
        );
    };
}

/// Reads per snapshot: the first attempt of a stale read goes to a replica
/// picked at random among the three, so with this many some reach a
/// follower whatever the seed (all on the leader: one chance in 3^12).
const READS: usize = 12;

/// How long the min safe ts may take to pass a timestamp: a store round
/// every second, a client round every 2 s, on a loaded machine.
const SAFE_TS_WAIT: Duration = Duration::from_secs(20);

/// The region holding transactional key `key`, and its leader's store.
fn txn_region(cluster: &Cluster, key: &[u8]) -> (u64, u64) {
    let region =
        cluster.region_for_region_key(&cluster.txn_region_key(key)).expect("a region holds it");
    let leader = cluster.leader_of(region.id).expect("a leader").store_id;
    (region.id, leader)
}

/// Stale reads served and refused per store, for failure messages.
fn counts(cluster: &Cluster) -> String {
    cluster
        .store_ids()
        .into_iter()
        .map(|s| {
            format!(
                "store{s}: {} stale served / {} refused / {} kv_get without replica_read",
                cluster.stale_read_count(s, true),
                cluster.stale_read_count(s, false),
                cluster.kv_request_count(s, "kv_get", Some(false))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until the client's global min safe ts has passed `ts`; returns it.
async fn min_safe_ts_past<H: Harness>(client: &TransactionClient<H>, ts: Timestamp) -> Timestamp {
    let deadline = Instant::now() + SAFE_TS_WAIT;
    loop {
        let min = client.min_safe_ts(GLOBAL_TXN_SCOPE);
        if min > ts {
            return min;
        }
        assert!(
            Instant::now() < deadline,
            "min safe ts still {min} after {SAFE_TS_WAIT:?}, waiting for {ts}"
        );
        H::sleep(Duration::from_millis(100)).await;
    }
}

/// Commits `key = value` in a transaction of its own; returns the commit
/// ts.
async fn put<H: Harness>(client: &TransactionClient<H>, key: &str, value: &str) -> Timestamp {
    let mut txn = client.begin().await.expect("begin");
    txn.put(key.to_owned(), value.to_owned()).expect("put");
    txn.commit().await.expect("commit")
}

/// The client's min safe ts advances with the stores' resolved ts; a stale
/// snapshot at it is served by followers from their own data (no
/// `DataIsNotReady`, no fallback to the leader) and sees the commit below
/// it.
pub async fn stale_reads_at_the_min_safe_ts_are_served_by_followers<H: Harness>(bed: Bed) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let committed = put::<H>(&client, "s1", "x").await;
    let first = min_safe_ts_past::<H>(&client, committed).await;
    let later = min_safe_ts_past::<H>(&client, first).await;
    assert!(later > first, "the min safe ts advances");

    let (_, leader) = txn_region(&cluster, b"s1");
    let snapshot = client.stale_snapshot(later);
    for _ in 0..READS {
        assert_eq!(snapshot.get("s1").await.expect("get").as_deref(), Some(&b"x"[..]));
    }
    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    let on_followers: u64 = followers.iter().map(|s| cluster.stale_read_count(*s, true)).sum();
    let on_leader = cluster.stale_read_count(leader, true);
    assert_eq!(on_followers + on_leader, READS as u64, "{}", counts(&cluster));
    assert!(on_followers > 0, "followers serve stale reads: {}", counts(&cluster));
    let refused: u64 = followers.iter().map(|s| cluster.stale_read_count(*s, false)).sum();
    assert_eq!(refused, 0, "every follower's safe ts had passed: {}", counts(&cluster));
    assert_eq!(cluster.kv_request_count(leader, "kv_get", None), on_leader, "{}", counts(&cluster));
    server.shutdown().await;
}

/// Followers whose safe ts lag answer `DataIsNotReady`; each such read is
/// retried on the leader as a normal read and returns the latest commit.
pub async fn a_stale_read_above_a_followers_safe_ts_falls_back_to_the_leader<H: Harness>(bed: Bed) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let (_, leader) = txn_region(&cluster, b"s2");
    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    for s in &followers {
        cluster.set_safe_ts_lagging(*s, true);
    }
    put::<H>(&client, "s2", "old").await;
    put::<H>(&client, "s2", "new").await;
    let now = client.current_timestamp().await.expect("ts");
    let snapshot = client.stale_snapshot(now);
    for _ in 0..READS {
        let got = snapshot.get("s2").await.expect("get");
        assert_eq!(got.as_deref(), Some(&b"new"[..]), "{}", counts(&cluster));
    }
    let refused: u64 = followers.iter().map(|s| cluster.stale_read_count(*s, false)).sum();
    let served: u64 = followers.iter().map(|s| cluster.stale_read_count(*s, true)).sum();
    assert_eq!(served, 0, "lagging followers serve nothing: {}", counts(&cluster));
    assert!(refused > 0, "some first attempts went to a follower: {}", counts(&cluster));
    // Each refusal is followed by a normal read on the leader; the rest
    // went to the leader as stale reads and were served there.
    let leader_plain = cluster.kv_request_count(leader, "kv_get", Some(false));
    assert_eq!(leader_plain, READS as u64, "{}", counts(&cluster));
    assert_eq!(
        cluster.stale_read_count(leader, true),
        READS as u64 - refused,
        "{}",
        counts(&cluster)
    );
    server.shutdown().await;
}

/// A stale read returns the data as of its timestamp, whoever serves it:
/// a later commit stays invisible, an earlier one is seen, and a snapshot
/// "as of N seconds ago" sees what was committed before then.
pub async fn stale_reads_never_see_data_newer_than_their_ts<H: Harness>(bed: Bed) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    put::<H>(&client, "s3", "v1").await;
    let between = client.current_timestamp().await.expect("ts");
    let committed = put::<H>(&client, "s3", "v2").await;
    assert!(committed > between);
    min_safe_ts_past::<H>(&client, committed).await;
    let at_between = client.stale_snapshot(between);
    let after = client.stale_snapshot(client.min_safe_ts(GLOBAL_TXN_SCOPE));
    for _ in 0..READS {
        let old = at_between.get("s3").await.expect("get");
        assert_eq!(old.as_deref(), Some(&b"v1"[..]), "{}", counts(&cluster));
        let new = after.get("s3").await.expect("get");
        assert_eq!(new.as_deref(), Some(&b"v2"[..]), "{}", counts(&cluster));
    }
    let batch = at_between.batch_get(["s3", "s4"]).await.expect("batch");
    assert_eq!(batch.len(), 1);
    assert_eq!(&batch[0].value[..], b"v1");
    let scanned = after.scan("s3".."s4", 10).await.expect("scan");
    assert_eq!(scanned.len(), 1);
    assert_eq!(&scanned[0].value[..], b"v2");

    // As of an hour ago the key did not exist; as of a moment after the
    // commit it did.
    let hour_ago = client.stale_snapshot_ago(Duration::from_secs(3600)).await.expect("snapshot");
    assert_eq!(hour_ago.get("s3").await.expect("get"), None);
    H::sleep(Duration::from_millis(1500)).await;
    let second_ago = client.stale_snapshot_ago(Duration::from_secs(1)).await.expect("snapshot");
    assert!(second_ago.timestamp() > committed);
    let got = second_ago.get("s3").await.expect("get");
    assert_eq!(got.as_deref(), Some(&b"v2"[..]));
    server.shutdown().await;
}
