//! The replica-read suite: raw and snapshot reads with a
//! [`ReplicaReadType`] over loopback gRPC, with the simulated stores
//! counting what reaches each of them
//! ([`tikv_sim::Cluster::kv_request_count`]).
//!
//! [`replica_suite!`](crate::replica_suite) stamps the tests out as
//! `#[test]`s for one [`Harness`] and [`Bed`]. Learner and TiFlash stores
//! come from [`ClusterConfig::learner_stores`], which only the in-process
//! PD serves: on a real PD those two tests say so ([`NotOnThisBed`]) and
//! check the plain three-voter layout instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tikv_driver::interceptor::{Next, RpcInterceptor, StoreRpc, StoreRpcFuture};
use tikv_driver::{Config, KvPair, ReplicaRead, ReplicaReadType, TransactionOptions, Value};
use tikv_sim::{Cluster, ClusterConfig};

use crate::harness::{Bed, Harness, NotOnThisBed, SimHandle};

/// The client types under test.
type RawClient<H> = tikv_driver::RawClient<<H as Harness>::Platform>;
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

/// Stamps out the replica-read suite as `#[test]` functions running on the
/// given [`Harness`](crate::Harness) and [`Bed`](crate::harness::Bed)
/// variant (`InProcess` when left out). Every test of
/// [`replica`](crate::replica) is listed here once.
///
/// ```text
/// tikv_tests::replica_suite!(tikv_tests::harness::TokioHarness);
/// tikv_tests::replica_suite!(tikv_tests::harness::TokioHarness, RealPd);
/// ```
#[macro_export]
macro_rules! replica_suite {
    (@each $harness:ty, $bed:ident; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on(
                    $crate::replica::$name::<$harness>($crate::harness::Bed::$bed),
                );
            }
        )*
    };
    ($harness:ty) => {
        $crate::replica_suite!($harness, InProcess);
    };
    ($harness:ty, $bed:ident) => {
        $crate::replica_suite!(@each $harness, $bed;
            follower_reads_land_on_followers_and_writes_on_the_leader,
            learner_reads_land_on_learners,
            a_dead_leader_does_not_stop_follower_reads,
            tiflash_peers_are_never_chosen,
            a_down_store_is_skipped_until_its_health_probe_answers,
            a_slow_leader_is_avoided_by_prefer_leader_and_mixed_reads,
            a_busy_leader_sends_reads_with_a_busy_threshold_to_idle_followers,
            a_recovered_slow_leader_is_asked_for_feedback_and_preferred_again,
            a_leader_cut_off_from_the_client_is_reached_through_a_proxy,
            without_forwarding_a_leader_cut_off_from_the_client_is_not_reached,
        );
    };
}

/// Reads per handle in each test: enough that a read landing on the wrong
/// store would show.
const READS: usize = 12;

/// The region holding raw key `key` (region key space), and its leader's
/// store. On a real PD the key space is split at PD's own boundaries, so
/// each test keeps its keys in one region and asks for that one.
fn region_of(cluster: &Cluster, region_key: &[u8]) -> (u64, u64) {
    let region = cluster.region_for_region_key(region_key).expect("a region holds every key");
    let leader = cluster.leader_of(region.id).expect("a leader").store_id;
    (region.id, leader)
}

/// [`region_of`] a raw key.
fn raw_region(cluster: &Cluster, key: &[u8]) -> (u64, u64) {
    region_of(cluster, &cluster.region_key(key))
}

/// `command` requests per store, as `store:count` (replica reads, then
/// leader-semantics ones), for failure messages.
fn counts(cluster: &Cluster, command: &str) -> String {
    cluster
        .store_ids()
        .into_iter()
        .map(|s| {
            format!(
                "store{s}: {} replica / {} plain",
                cluster.kv_request_count(s, command, Some(true)),
                cluster.kv_request_count(s, command, Some(false))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Raw follower reads (point, batch, scan) are served by followers with
/// `replica_read`; the same handle's writes go to the leader without it; a
/// transaction's snapshot reads with follower reads see its commit and go
/// to followers too, its prewrite and commit to the leader.
pub async fn follower_reads_land_on_followers_and_writes_on_the_leader<H: Harness>(bed: Bed) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let (_, leader) = raw_region(&cluster, b"k");
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let follower = raw.with_replica_read(ReplicaRead::of(ReplicaReadType::Follower));
    for i in 0..READS {
        follower.put(format!("k{i:02}"), format!("v{i}")).await.expect("put");
    }
    for i in 0..READS {
        let got = follower.get(format!("k{i:02}")).await.expect("get");
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    let pairs = follower.batch_get(["k00", "k05", "k99"]).await.expect("batch_get");
    assert_eq!(pairs, vec![KvPair::new("k00", "v0"), KvPair::new("k05", "v5")]);
    let scanned = follower.scan("k".."l", 100).await.expect("scan");
    assert_eq!(scanned.len(), READS);

    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    for (command, n) in [("raw_get", READS as u64), ("raw_batch_get", 1), ("raw_scan", 1)] {
        let on_followers: u64 =
            followers.iter().map(|s| cluster.kv_request_count(*s, command, Some(true))).sum();
        assert_eq!(on_followers, n, "{command}: {}", counts(&cluster, command));
        assert_eq!(
            cluster.kv_request_count(leader, command, None),
            0,
            "{command}: {}",
            counts(&cluster, command)
        );
    }
    assert_eq!(
        cluster.kv_request_count(leader, "raw_put", Some(false)),
        READS as u64,
        "raw_put: {}",
        counts(&cluster, "raw_put")
    );
    for s in &followers {
        assert_eq!(cluster.kv_request_count(*s, "raw_put", None), 0, "no write to a follower");
    }

    // Transactional: the commit goes to the leader, the follower reads of
    // a later snapshot see it.
    let (_, leader) = region_of(&cluster, &cluster.txn_region_key(b"t1"));
    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    let txn_client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let opts =
        TransactionOptions::default().with_replica_read(ReplicaRead::of(ReplicaReadType::Follower));
    let mut txn = txn_client.begin_with_options(opts).await.expect("begin");
    txn.put("t1", "x").expect("put");
    txn.commit().await.expect("commit");
    let ts = txn_client.current_timestamp().await.expect("ts");
    let snap =
        txn_client.snapshot(ts).with_replica_read(ReplicaRead::of(ReplicaReadType::Follower));
    for _ in 0..READS {
        assert_eq!(snap.get("t1").await.expect("get").as_deref(), Some(&b"x"[..]));
    }
    let on_followers: u64 =
        followers.iter().map(|s| cluster.kv_request_count(*s, "kv_get", Some(true))).sum();
    assert_eq!(on_followers, READS as u64, "kv_get: {}", counts(&cluster, "kv_get"));
    assert_eq!(cluster.kv_request_count(leader, "kv_get", None), 0);
    assert!(cluster.kv_request_count(leader, "kv_prewrite", Some(false)) > 0);
    for s in &followers {
        assert_eq!(cluster.kv_request_count(*s, "kv_prewrite", None), 0);
        assert_eq!(cluster.kv_request_count(*s, "kv_commit", None), 0);
    }
    server.shutdown().await;
}

/// A learner peer serves every learner read; nothing else reaches it.
pub async fn learner_reads_land_on_learners<H: Harness>(bed: Bed) {
    if bed == Bed::RealPd {
        not_on_real_pd("add a learner peer");
        return follower_reads_land_on_followers_and_writes_on_the_leader::<H>(bed).await;
    }
    let config = ClusterConfig {
        learner_stores: vec![vec![("zone".into(), "z4".into())]],
        ..ClusterConfig::default()
    };
    let server = SimHandle::start(bed, config).await;
    let cluster = server.cluster().clone();
    let learner_store = 4;
    let region = cluster.regions().into_iter().next().expect("one region");
    assert!(region.peers.iter().any(|p| p.store_id == learner_store), "{region:?}");
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    let learner = raw.with_replica_read(ReplicaRead::of(ReplicaReadType::Learner));
    for _ in 0..READS {
        assert_eq!(learner.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(
        cluster.kv_request_count(learner_store, "raw_get", Some(true)),
        READS as u64,
        "{}",
        counts(&cluster, "raw_get")
    );
    assert_eq!(cluster.kv_request_count(learner_store, "raw_put", None), 0);
    // Voters serve none of them.
    let voters: u64 = cluster
        .store_ids()
        .into_iter()
        .filter(|s| *s != learner_store)
        .map(|s| cluster.kv_request_count(s, "raw_get", None))
        .sum();
    assert_eq!(voters, 0, "{}", counts(&cluster, "raw_get"));
    server.shutdown().await;
}

/// The leader's store dies (the model elects a new leader at once): follower
/// reads go on being served by the live replicas without error, and a
/// leader read finds the new leader; the dead store is sent nothing more
/// than the attempt that found it down.
pub async fn a_dead_leader_does_not_stop_follower_reads<H: Harness>(bed: Bed) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let (region, old_leader) = raw_region(&cluster, b"k");
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    // Warm the cache: the client believes in the old leader.
    assert_eq!(raw.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    server.stop_store(old_leader).await.expect("stop the leader's store");
    let new_leader = cluster.leader_of(region).expect("a new leader").store_id;
    assert_ne!(new_leader, old_leader);

    let follower = raw.with_replica_read(ReplicaRead::of(ReplicaReadType::Follower));
    for _ in 0..READS {
        assert_eq!(follower.get("k").await.expect("follower get").as_deref(), Some(&b"v"[..]));
    }
    let served: u64 = cluster
        .store_ids()
        .into_iter()
        .filter(|s| *s != old_leader)
        .map(|s| cluster.kv_request_count(s, "raw_get", Some(true)))
        .sum();
    assert_eq!(served, READS as u64, "{}", counts(&cluster, "raw_get"));
    // A leader read of the same client gets past the dead store too.
    assert_eq!(raw.get("k").await.expect("leader get").as_deref(), Some(&b"v"[..]));
    assert!(cluster.kv_request_count(new_leader, "raw_get", Some(false)) >= 1);
    server.shutdown().await;
}

/// A region with a TiFlash learner (store labelled `engine=tiflash`):
/// leader, follower, mixed, prefer-leader and learner reads, and a leader
/// read whose leader died, never send it anything.
pub async fn tiflash_peers_are_never_chosen<H: Harness>(bed: Bed) {
    if bed == Bed::RealPd {
        not_on_real_pd("add a TiFlash store and learner");
        return a_dead_leader_does_not_stop_follower_reads::<H>(bed).await;
    }
    let config = ClusterConfig {
        learner_stores: vec![vec![("engine".into(), "tiflash".into())]],
        ..ClusterConfig::default()
    };
    let server = SimHandle::start(bed, config).await;
    let cluster = server.cluster().clone();
    let (region, _) = raw_region(&cluster, b"k");
    let tiflash = 4;
    // The peers are stores 1, 2, 3 and then the TiFlash learner: with the
    // leader on store 3, "the next peer" after it is the TiFlash one.
    let leader = 3;
    server.topology().transfer_leader(region, leader).await.expect("transfer leader");
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    for read_type in [
        ReplicaReadType::Leader,
        ReplicaReadType::Follower,
        ReplicaReadType::Mixed,
        ReplicaReadType::PreferLeader,
        ReplicaReadType::Learner,
    ] {
        let handle = raw.with_replica_read(ReplicaRead::of(read_type));
        for _ in 0..READS {
            let got = handle.get("k").await.unwrap_or_else(|e| panic!("{read_type:?}: {e}"));
            assert_eq!(got.as_deref(), Some(&b"v"[..]), "{read_type:?}");
        }
    }
    // The leader dies: the leader read moves on to the TiKV followers only.
    server.stop_store(leader).await.expect("stop the leader's store");
    for _ in 0..READS {
        assert_eq!(raw.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    }
    for command in ["raw_get", "raw_put"] {
        assert_eq!(
            cluster.kv_request_count(tiflash, command, None),
            0,
            "{command}: {}",
            counts(&cluster, command)
        );
    }
    server.shutdown().await;
}

/// Counts the requests the client sends to each store (answered or not),
/// so a test sees attempts on a store that is down.
#[derive(Clone, Debug, Default)]
struct StoreAttempts(Arc<Mutex<BTreeMap<u64, u64>>>);

impl StoreAttempts {
    fn to(&self, store_id: u64) -> u64 {
        self.0.lock().unwrap().get(&store_id).copied().unwrap_or(0)
    }
}

impl RpcInterceptor for StoreAttempts {
    fn name(&self) -> &str {
        "store-attempts"
    }

    fn intercept(&self, rpc: StoreRpc, next: Next) -> StoreRpcFuture {
        *self.0.lock().unwrap().entry(rpc.store_id).or_default() += 1;
        next.run(rpc)
    }
}

/// A client whose stores' health ticks every half second (a quarter of
/// its store refresh interval), so a store marked slow by a failure is
/// trusted again within a test's patience.
async fn fast_health_client<H: Harness>(server: &SimHandle) -> RawClient<H> {
    let config = Config::default()
        .with_pd_endpoints(server.pd_addrs())
        .with_store_refresh_interval(Duration::from_secs(2));
    RawClient::<H>::connect_with_config(config).await.expect("connect")
}

/// Store health end to end (client-go's liveness probes and store
/// epochs): a follower's store goes down; the one follower read that finds
/// it down moves to the other follower, and every later read skips the
/// down store without trying it (no failed send, no backoff); once the
/// store is back, the client's health probe (gRPC `Check`, every second)
/// finds it serving and reads preferring it land there again.
pub async fn a_down_store_is_skipped_until_its_health_probe_answers<H: Harness>(bed: Bed) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let (_, leader) = raw_region(&cluster, b"k");
    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    let (down, other) = (followers[0], followers[1]);
    let raw = fast_health_client::<H>(&server).await;
    raw.put("k", "v").await.expect("put");
    let attempts = StoreAttempts::default();
    let reads = raw
        .with_replica_read(ReplicaRead::of(ReplicaReadType::Follower).with_store(down))
        .with_interceptor(attempts.clone());
    assert_eq!(reads.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    assert_eq!(cluster.kv_request_count(down, "raw_get", Some(true)), 1, "the preferred store");

    server.stop_store(down).await.expect("stop a follower's store");
    let tried = attempts.to(down);
    for _ in 0..READS {
        assert_eq!(reads.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(attempts.to(down) - tried, 1, "only the first read tried the down store");
    assert_eq!(
        cluster.kv_request_count(other, "raw_get", Some(true)),
        READS as u64,
        "{}",
        counts(&cluster, "raw_get")
    );

    let probes = cluster.health_check_count(down);
    server.start_store(down).await.expect("restart the store");
    let served = cluster.kv_request_count(down, "raw_get", Some(true));
    let give_up = Instant::now() + Duration::from_secs(20);
    while cluster.kv_request_count(down, "raw_get", Some(true)) == served {
        assert!(Instant::now() < give_up, "never used again: {}", counts(&cluster, "raw_get"));
        assert_eq!(reads.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
        H::sleep(Duration::from_millis(100)).await;
    }
    assert!(cluster.health_check_count(down) > probes, "the client probed it");
    server.shutdown().await;
}

/// The leader's store slows down (150 ms a request): the slow score TiKV
/// sends with its `BatchCommands` answers reaches the client's store
/// health as the first slow answer arrives, with no probe round between
/// (client-go's `onHealthFeedback`), so every later prefer-leader read goes
/// to the followers (client-go's prefer-leader: a slow leader is not
/// preferred) and mixed reads avoid it too (not slow scores first). On
/// the simulated network the store's answers leave late and carry the same
/// feedback.
pub async fn a_slow_leader_is_avoided_by_prefer_leader_and_mixed_reads<H: Harness>(bed: Bed) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let (_, leader) = raw_region(&cluster, b"k");
    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    let on_followers = |cluster: &Cluster| -> u64 {
        followers.iter().map(|s| cluster.kv_request_count(*s, "raw_get", Some(true))).sum()
    };
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    let prefer = raw.with_replica_read(ReplicaRead::of(ReplicaReadType::PreferLeader));
    for _ in 0..READS {
        assert_eq!(prefer.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(
        cluster.kv_request_count(leader, "raw_get", Some(false)),
        READS as u64,
        "a healthy leader serves prefer-leader reads: {}",
        counts(&cluster, "raw_get")
    );
    assert_eq!(on_followers(&cluster), 0);

    cluster.set_store_latency(leader, Duration::from_millis(150));
    let on_leader = cluster.kv_request_count(leader, "raw_get", None);
    // The leader serves the first read, whose answer says it is slow; a
    // probe round (every second) would let it serve several 150 ms reads.
    for _ in 0..READS {
        assert_eq!(prefer.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(
        cluster.kv_request_count(leader, "raw_get", None) - on_leader,
        1,
        "only the read whose answer carried the slow score: {}",
        counts(&cluster, "raw_get")
    );
    assert!(on_followers(&cluster) >= READS as u64 - 1, "{}", counts(&cluster, "raw_get"));
    let on_leader = on_leader + 1;
    let mixed = raw.with_replica_read(ReplicaRead::of(ReplicaReadType::Mixed));
    for handle in [&prefer, &mixed] {
        for _ in 0..READS {
            assert_eq!(handle.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
        }
    }
    assert_eq!(
        cluster.kv_request_count(leader, "raw_get", None),
        on_leader,
        "the slow leader is sent no more reads: {}",
        counts(&cluster, "raw_get")
    );
    server.shutdown().await;
}

/// Load-based replica read (client-go `BusyThresholdMs`): the leader's
/// read pool has an estimated wait (TiKV's `check_busy_threshold`, modelled
/// by [`Cluster::set_store_read_wait`]) above a snapshot's busy threshold.
/// The first get reaches the leader, which refuses it with `ServerIsBusy`
/// carrying its wait; the client keeps the wait on the store and retries at
/// once at an idle follower as a replica read, and every later get, batch
/// get and scan goes straight to a follower. Without a threshold, or with
/// one above the wait, the leader serves them. With every replica over the
/// threshold, a fresh client's first get is refused by the leader and both
/// followers and then served by the leader with the threshold dropped
/// (client-go's `nextForReplicaReadLeader`), and its later gets go to the
/// leader without a threshold at once.
pub async fn a_busy_leader_sends_reads_with_a_busy_threshold_to_idle_followers<H: Harness>(
    bed: Bed,
) {
    // Long enough that the client's aging estimate outlasts the test.
    const WAIT: Duration = Duration::from_secs(60);
    let busy = ReplicaRead::leader().with_busy_threshold(Duration::from_millis(50));
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let (region, leader) = region_of(&cluster, &cluster.txn_region_key(b"t1"));
    for key in [&b"t2"[..], b"t3"] {
        assert_eq!(region_of(&cluster, &cluster.txn_region_key(key)).0, region, "one region");
    }
    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    let count = |stores: &[u64], command: &str, replica_read: Option<bool>| -> u64 {
        stores.iter().map(|s| cluster.kv_request_count(*s, command, replica_read)).sum()
    };
    let txn_client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let mut txn = txn_client.begin().await.expect("begin");
    txn.put("t1", "x").expect("put");
    txn.put("t2", "y").expect("put");
    txn.commit().await.expect("commit");
    let ts = txn_client.current_timestamp().await.expect("ts");
    let expect_get = |got: Option<Value>| assert_eq!(got.as_deref(), Some(&b"x"[..]));

    cluster.set_store_read_wait(leader, WAIT);
    let snap = txn_client.snapshot(ts).with_replica_read(busy.clone());
    for _ in 0..READS {
        expect_get(snap.get("t1").await.expect("get"));
    }
    let pairs = vec![KvPair::new("t1", "x"), KvPair::new("t2", "y")];
    assert_eq!(snap.batch_get(["t1", "t2"]).await.expect("batch_get"), pairs);
    assert_eq!(snap.scan("t1".."t3", 10).await.expect("scan"), pairs);
    assert_eq!(
        count(&[leader], "kv_get", None),
        1,
        "only the first get reached the busy leader: {}",
        counts(&cluster, "kv_get")
    );
    assert_eq!(count(&followers, "kv_get", Some(true)), READS as u64);
    for command in ["kv_batch_get", "kv_scan"] {
        assert_eq!(count(&[leader], command, None), 0, "{command}: {}", counts(&cluster, command));
        assert_eq!(count(&followers, command, Some(true)), 1, "{}", counts(&cluster, command));
    }

    // No threshold, or one above the wait: the leader serves every get.
    let above = ReplicaRead::leader().with_busy_threshold(2 * WAIT);
    for read in [ReplicaRead::leader(), above] {
        let before = (count(&[leader], "kv_get", Some(false)), count(&followers, "kv_get", None));
        let snap = txn_client.snapshot(ts).with_replica_read(read.clone());
        for _ in 0..READS {
            expect_get(snap.get("t1").await.expect("get"));
        }
        assert_eq!(
            count(&[leader], "kv_get", Some(false)) - before.0,
            READS as u64,
            "{read:?}: {}",
            counts(&cluster, "kv_get")
        );
        assert_eq!(count(&followers, "kv_get", None), before.1, "{read:?}");
    }

    // Every replica busy: a client that knows no wait yet.
    for f in &followers {
        cluster.set_store_read_wait(*f, WAIT);
    }
    let fresh = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    let on_leader = |c: &Cluster| c.kv_request_count(leader, "kv_get", Some(false));
    let on_followers = || count(&followers, "kv_get", None);
    let before = (on_leader(&cluster), on_followers());
    let snap = fresh.snapshot(ts).with_replica_read(busy);
    expect_get(snap.get("t1").await.expect("get"));
    assert_eq!(
        (on_leader(&cluster) - before.0, on_followers() - before.1),
        (2, 2),
        "refused by the leader and each follower, then served by the leader: {}",
        counts(&cluster, "kv_get")
    );
    for _ in 1..READS {
        expect_get(snap.get("t1").await.expect("get"));
    }
    assert_eq!(
        (on_leader(&cluster) - before.0, on_followers() - before.1),
        (READS as u64 + 1, 2),
        "the later gets go to the leader alone: {}",
        counts(&cluster, "kv_get")
    );
    assert_eq!(count(&followers, "kv_get", Some(false)), 0, "followers only see replica reads");
    server.shutdown().await;
}

/// client-go's active health feedback: the leader's store is slow for a
/// moment, long enough for one answer to say so; prefer-leader reads then
/// avoid it, so no answer of it says it recovered. Once its TiKV-side score
/// has gone 15 s without a refresh, the health tick asks it with
/// `GetHealthFeedback`, whose answer (healthy) clears it, and prefer-leader
/// reads land on it again. Left to decay instead (1/3 a second after those
/// 15 s), a score of 100 would keep it slow for a minute.
pub async fn a_recovered_slow_leader_is_asked_for_feedback_and_preferred_again<H: Harness>(
    bed: Bed,
) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    let cluster = server.cluster().clone();
    let (_, leader) = raw_region(&cluster, b"k");
    let raw = fast_health_client::<H>(&server).await;
    raw.put("k", "v").await.expect("put");
    let prefer = raw.with_replica_read(ReplicaRead::of(ReplicaReadType::PreferLeader));
    cluster.set_store_latency(leader, Duration::from_millis(150));
    for _ in 0..READS {
        assert_eq!(prefer.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(
        cluster.kv_request_count(leader, "raw_get", Some(false)),
        1,
        "only the read whose answer carried the slow score: {}",
        counts(&cluster, "raw_get")
    );
    cluster.set_store_latency(leader, Duration::ZERO);
    // The bed's clock: virtual on the simulated platform.
    let recovered = server.now().await;
    let asked = cluster.kv_request_count(leader, "get_health_feedback", None);
    let give_up = recovered + Duration::from_secs(40);
    while cluster.kv_request_count(leader, "raw_get", Some(false)) == 1 {
        assert!(
            server.now().await < give_up,
            "the recovered leader was never preferred again: {}",
            counts(&cluster, "raw_get")
        );
        assert_eq!(prefer.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
        H::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster.kv_request_count(leader, "get_health_feedback", None) > asked,
        "the client asked the leader's store for its health feedback"
    );
    // A minute of decay from 100 would be needed to get below 80.
    assert!(server.now().await.saturating_duration_since(recovered) < Duration::from_secs(40));
    server.shutdown().await;
}

/// The stores' forwarded requests, summed.
fn forwarded(cluster: &Cluster) -> u64 {
    cluster.store_ids().into_iter().map(|s| cluster.forwarded_count(s)).sum()
}

/// Under the simulated platform the stores are reached over the simulated
/// network, which has no client-only partition and no forwarding: says so
/// and checks that the leader serves a write and a read unforwarded.
async fn no_cut_on_simulated_network<H: Harness>(server: SimHandle, bed: Bed) {
    let skip = NotOnThisBed {
        bed,
        step: "cut the client off from one store",
        why: "the simulated network has no client-only partition and forwards nothing",
    };
    eprintln!("{skip}; checking that the leader serves requests unforwarded instead");
    let cluster = server.cluster().clone();
    let raw = RawClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    assert_eq!(raw.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
    assert_eq!(forwarded(&cluster), 0);
    server.shutdown().await;
}

/// Forwarding on (client-go `EnableForwarding`): the client is cut off
/// from the leader's store only, which stays the leader. The first request
/// fails to reach it, and from then on every write and read goes through a
/// follower's store with `tikv-forwarded-host` (over `BatchCommands`, then
/// unary): the leader serves them all, the followers forward them and
/// serve none themselves. Once the cut heals, the client's health probe
/// finds the leader again and requests go to it directly.
pub async fn a_leader_cut_off_from_the_client_is_reached_through_a_proxy<H: Harness>(bed: Bed) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    if server.on_simulated_network() {
        return no_cut_on_simulated_network::<H>(server, bed).await;
    }
    let cluster = server.cluster().clone();
    let (region, leader) = raw_region(&cluster, b"k");
    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    let config = Config::default()
        .with_pd_endpoints(server.pd_addrs())
        .with_store_refresh_interval(Duration::from_secs(2))
        .with_forwarding(true);
    let raw = RawClient::<H>::connect_with_config(config.clone()).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    assert_eq!(raw.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));

    cluster.cut_client_from_store(leader);
    let (gets, puts) = (
        cluster.kv_request_count(leader, "raw_get", Some(false)),
        cluster.kv_request_count(leader, "raw_put", Some(false)),
    );
    for i in 0..READS {
        let value = format!("v{i}");
        raw.put("k", value.clone()).await.expect("put through a proxy");
        let got = raw.get("k").await.expect("get through a proxy");
        assert_eq!(got.as_deref(), Some(value.as_bytes()));
    }
    assert_eq!(
        cluster.kv_request_count(leader, "raw_get", Some(false)) - gets,
        READS as u64,
        "the leader served every read: {}",
        counts(&cluster, "raw_get")
    );
    assert_eq!(cluster.kv_request_count(leader, "raw_put", Some(false)) - puts, READS as u64);
    for f in &followers {
        assert_eq!(
            cluster.kv_request_count(*f, "raw_get", None),
            0,
            "{}",
            counts(&cluster, "raw_get")
        );
        assert_eq!(cluster.kv_request_count(*f, "raw_put", None), 0);
    }
    assert!(forwarded(&cluster) >= 2 * READS as u64, "forwarded: {}", forwarded(&cluster));
    assert_eq!(cluster.leader_of(region).expect("a leader").store_id, leader, "still the leader");

    // Unary calls are forwarded the same way.
    let mut transport = config.transport.clone();
    transport.batch_commands = false;
    let unary = config.with_transport(transport);
    let unary_raw = RawClient::<H>::connect_with_config(unary).await.expect("connect");
    let before = forwarded(&cluster);
    assert_eq!(unary_raw.get("k").await.expect("unary get").as_deref(), Some(&b"v11"[..]));
    assert!(forwarded(&cluster) > before, "the unary get was forwarded");

    cluster.heal_client_to_store(leader);
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let before = forwarded(&cluster);
        assert_eq!(raw.get("k").await.expect("get").as_deref(), Some(&b"v11"[..]));
        if forwarded(&cluster) == before {
            break;
        }
        assert!(Instant::now() < give_up, "still forwarded after the cut healed");
        H::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}

/// Forwarding off (the default, as client-go's): the same cut sends the
/// client to the followers with leader semantics; each names the leader it
/// cannot reach, so a read is not served while the cut holds: it is still
/// retrying after 3 s (neither answered nor failed). Nothing is
/// forwarded and the leader stays the leader; once the cut heals and the
/// health probe finds the leader, reads are served again.
pub async fn without_forwarding_a_leader_cut_off_from_the_client_is_not_reached<H: Harness>(
    bed: Bed,
) {
    let server = SimHandle::start(bed, ClusterConfig::default()).await;
    if server.on_simulated_network() {
        return no_cut_on_simulated_network::<H>(server, bed).await;
    }
    let cluster = server.cluster().clone();
    let (region, leader) = raw_region(&cluster, b"k");
    let followers: Vec<u64> = cluster.store_ids().into_iter().filter(|s| *s != leader).collect();
    let config = Config::default()
        .with_pd_endpoints(server.pd_addrs())
        .with_store_refresh_interval(Duration::from_secs(2));
    let raw = RawClient::<H>::connect_with_config(config).await.expect("connect");
    raw.put("k", "v").await.expect("put");
    cluster.cut_client_from_store(leader);
    let on_followers = |c: &Cluster| -> u64 {
        followers.iter().map(|f| c.kv_request_count(*f, "raw_get", Some(false))).sum()
    };
    let leader_gets = cluster.kv_request_count(leader, "raw_get", None);
    let get = Box::pin(raw.get("k"));
    let patience = Box::pin(H::sleep(Duration::from_secs(3)));
    if let futures::future::Either::Left((outcome, _)) =
        futures::future::select(get, patience).await
    {
        panic!("answered while the cut holds: {outcome:?}");
    }
    assert!(on_followers(&cluster) >= 1, "tried the followers: {}", counts(&cluster, "raw_get"));
    assert_eq!(cluster.kv_request_count(leader, "raw_get", None), leader_gets);
    assert_eq!(forwarded(&cluster), 0);
    assert_eq!(cluster.leader_of(region).expect("a leader").store_id, leader);

    cluster.heal_client_to_store(leader);
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let get = Box::pin(raw.get("k"));
        let patience = Box::pin(H::sleep(Duration::from_secs(2)));
        if let futures::future::Either::Left((Ok(got), _)) =
            futures::future::select(get, patience).await
        {
            assert_eq!(got.as_deref(), Some(&b"v"[..]));
            break;
        }
        assert!(Instant::now() < give_up, "never served after the cut healed");
    }
    server.shutdown().await;
}

/// Says which step the real-PD bed cannot take (the test then checks the
/// plain three-voter layout instead).
fn not_on_real_pd(step: &'static str) {
    let skip = NotOnThisBed {
        bed: Bed::RealPd,
        step,
        why: "peers added to the model directly are unknown to the real PD",
    };
    eprintln!("{skip}; checking the three-voter layout instead");
}
