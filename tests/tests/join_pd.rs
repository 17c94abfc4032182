//! Simulated stores joined to a real PD (`tikv_sim::join`, what
//! `tikv-sim --join-pd` runs): PD's view of stores and regions matches the
//! simulator's through PD's own splits and replica additions, a PD-driven
//! split, leader transfer, peer removal and scatter (PD's HTTP operator
//! API), a store-initiated split, a store crash and restart, and a second
//! process joining; the stores' resolved ts reaches PD. Our clients (raw and
//! transactional) route through the real PD and read and write correctly
//! across all of them, checked against a model.
//!
//! The real PD comes from `shared/pd/` beside the checkout
//! ([`tikv_sim::real_pd`]); without it the test fails with a message
//! saying so.

use std::collections::BTreeMap;
use std::time::Duration;

use tikv_core::key::memcomparable::encode_bytes;
use tikv_proto::kvrpcpb::{self, SplitRegionRequest};
use tikv_proto::metapb::{Peer, RegionEpoch};
use tikv_proto::tikvpb::tikv_client::TikvClient;
use tikv_sim::ClusterConfig;
use tikv_sim::join::{JoinOptions, JoinedCluster};
use tikv_sim::real_pd::{RealPd, get_json, http, post};
use tikv_tests::pd_view::{self, RegionView, all_replicated, hex};
use tikv_tokio::{RawClient, TransactionClient};

/// Waits until PD's region view equals the stores' and `done` holds.
async fn converge(
    pd: &str,
    joined: &JoinedCluster,
    what: &str,
    done: impl Fn(&[RegionView]) -> bool,
) {
    let converged = pd_view::converge(pd, joined.cluster(), Duration::from_secs(20), done).await;
    if let Err(e) = converged {
        panic!("{what}: {e}\n  refusals: {:?}", joined.refusals());
    }
}

async fn check_raw(client: &RawClient, model: &BTreeMap<Vec<u8>, Vec<u8>>, when: &str) {
    for (k, v) in model {
        let got = client.get(k.clone()).await.unwrap_or_else(|e| panic!("{when}: get {k:?}: {e}"));
        assert_eq!(got.as_deref(), Some(&v[..]), "{when}: raw key {k:?}");
    }
}

async fn check_txn(client: &TransactionClient, model: &BTreeMap<Vec<u8>, Vec<u8>>, when: &str) {
    let snapshot = client.begin().await.unwrap_or_else(|e| panic!("{when}: begin: {e}"));
    for (k, v) in model {
        let got =
            snapshot.get(k.clone()).await.unwrap_or_else(|e| panic!("{when}: txn get {k:?}: {e}"));
        assert_eq!(got.as_deref(), Some(&v[..]), "{when}: txn key {k:?}");
    }
    snapshot.rollback().await.unwrap_or_else(|e| panic!("{when}: rollback: {e}"));
}

async fn write_all(
    raw: &RawClient,
    txn: &TransactionClient,
    raw_model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    txn_model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    round: &str,
) {
    let keys: [&[u8]; 6] = [b"a", b"k", b"k5", b"q", b"x\0\0\0\x05", b"zz"];
    let mut t = txn.begin().await.expect("begin");
    for key in keys {
        let value = [key, b"@", round.as_bytes()].concat();
        raw.put(key.to_vec(), value.clone()).await.unwrap_or_else(|e| panic!("{round}: put: {e}"));
        raw_model.insert(key.to_vec(), value.clone());
        let tkey = [b"t-", key].concat();
        t.put(tkey.clone(), value.clone()).expect("buffered put");
        txn_model.insert(tkey, value);
    }
    t.commit().await.unwrap_or_else(|e| panic!("{round}: commit: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_join_a_real_pd_and_follow_its_changes() {
    let pd = RealPd::start();
    let addr = pd.addr().to_owned();
    // Determinism: no balancing, no merging; the replica checker (adding
    // the missing replicas) and admin operators stay on.
    post(
        &addr,
        "/pd/api/v1/config",
        r#"{"leader-schedule-limit":0,"region-schedule-limit":0,"merge-schedule-limit":0,"hot-region-schedule-limit":0}"#,
    );

    let mut opts = JoinOptions::new(addr.clone(), 3);
    opts.region_heartbeat_interval = Duration::from_secs(5);
    let joined = JoinedCluster::start(ClusterConfig::default(), opts).await.expect("join PD");

    // Three stores, Up, at the addresses the simulator listens on.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stores = get_json(&addr, "/pd/api/v1/stores");
        let up: Vec<(u64, String)> = stores
            .get("stores")
            .items()
            .iter()
            .filter(|s| s.get("store").get("state_name").str() == "Up")
            .map(|s| {
                (s.get("store").get("id").u64(), s.get("store").get("address").str().to_owned())
            })
            .collect();
        let mut expected = Vec::new();
        for id in joined.cluster().store_ids() {
            expected.push((id, joined.server().store_addr(id).await.expect("store address")));
        }
        if up.len() == 3 && up.iter().all(|s| expected.contains(s)) {
            assert!(
                stores
                    .get("stores")
                    .items()
                    .iter()
                    .all(|s| s.get("store").get("version").str() == "8.5.0")
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "stores not Up in PD: {stores:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in get_json(&addr, "/pd/api/v1/schedulers").items() {
        let (status, body) =
            http(&addr, "DELETE", &format!("/pd/api/v1/schedulers/{}", name.str()), None);
        assert_eq!(status, 200, "remove scheduler {name:?}: {body}");
    }

    // PD splits at the DEFAULT keyspace boundaries by itself and adds the
    // missing replicas: at least three regions, three voters each.
    converge(&addr, &joined, "after bootstrap", all_replicated).await;

    let raw = RawClient::connect([addr.clone()]).await.expect("raw client via PD");
    let txn = TransactionClient::connect([addr.clone()]).await.expect("txn client via PD");
    assert_eq!(raw.cluster_id(), joined.cluster_id());
    let (mut raw_model, mut txn_model) = (BTreeMap::new(), BTreeMap::new());
    write_all(&raw, &txn, &mut raw_model, &mut txn_model, "first").await;
    check_raw(&raw, &raw_model, "first").await;
    check_txn(&txn, &txn_model, "first").await;

    // The stores' resolved ts reaches PD (`ReportMinResolvedTS`) and their
    // safe ts (`GetStoreSafeTS`) passes a timestamp taken now.
    let ts0 = txn.current_timestamp().await.expect("a timestamp").version();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reported = get_json(&addr, "/pd/api/v1/min-resolved-ts").get("min_resolved_ts").u64();
        let safe = joined
            .cluster()
            .store_ids()
            .into_iter()
            .map(|s| joined.cluster().store_safe_ts(s, b"", b""))
            .min();
        if reported > ts0 && safe.is_some_and(|s| s > ts0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "min resolved ts {reported}, safe ts {safe:?}, want > {ts0}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A split PD drives (its HTTP operator API, USEKEY): the store asks PD
    // for ids, splits, reports. Boundaries are memcomparable-encoded, as
    // TiDB-style clusters have them: the transactional client decodes
    // region keys, the raw client (API V1) compares raw keys with them.
    let k = encode_bytes(b"k");
    let target = joined.cluster().region_for_region_key(&k).expect("a region holds k");
    post(
        &addr,
        "/pd/api/v1/operators",
        &format!(
            r#"{{"name":"split-region","region_id":{},"policy":"usekey","keys":["{}"]}}"#,
            target.id,
            hex(&k)
        ),
    );
    converge(&addr, &joined, "after PD's split", |regions| {
        regions.iter().any(|r| r.start == hex(&k)) && all_replicated(regions)
    })
    .await;
    let right = joined.cluster().region_for_region_key(&k).expect("the right half");
    assert_eq!(right.start_key, k);
    assert_eq!(right.id, target.id, "the original region keeps the rightmost range");
    assert_eq!(right.region_epoch.unwrap().version, target.region_epoch.unwrap().version + 1);

    // A leader transfer PD drives: the term rises, PD follows, and our
    // client (whose cache names the old leader) follows the stores'
    // NotLeader answers.
    let leader = joined.cluster().leader_of(right.id).expect("a leader").store_id;
    let to =
        joined.cluster().store_ids().into_iter().find(|s| *s != leader).expect("another store");
    post(
        &addr,
        "/pd/api/v1/operators",
        &format!(r#"{{"name":"transfer-leader","region_id":{},"to_store_id":{to}}}"#, right.id),
    );
    converge(&addr, &joined, "after PD's leader transfer", |regions| {
        regions.iter().any(|r| r.id == right.id && r.leader_store == to)
    })
    .await;

    // A peer PD removes (demoted through a joint change, then removed) and
    // its replica checker adds back (learner, then promoted): a new peer id
    // on that store, `conf_ver` up by each step.
    let follower = joined.cluster().store_ids().into_iter().find(|s| *s != to).expect("a follower");
    let old_peer = right.peers.iter().find(|p| p.store_id == follower).expect("a peer").id;
    let old_conf_ver = joined.cluster().region(right.id).unwrap().region_epoch.unwrap().conf_ver;
    post(
        &addr,
        "/pd/api/v1/operators",
        &format!(r#"{{"name":"remove-peer","region_id":{},"store_id":{follower}}}"#, right.id),
    );
    converge(&addr, &joined, "after PD's peer removal and re-addition", |regions| {
        all_replicated(regions)
            && regions.iter().any(|r| {
                r.id == right.id
                    && r.conf_ver >= old_conf_ver + 3
                    && r.peers.iter().any(|p| p.1 == follower && p.0 != old_peer)
            })
    })
    .await;

    // PD's scatter (its HTTP operator API) of every region: with three
    // stores and three replicas it moves leaders.
    for region in joined.cluster().regions() {
        post(
            &addr,
            "/pd/api/v1/operators",
            &format!(r#"{{"name":"scatter-region","region_id":{}}}"#, region.id),
        );
    }
    converge(&addr, &joined, "after PD's scatter", all_replicated).await;

    check_raw(&raw, &raw_model, "after split and transfer").await;
    check_txn(&txn, &txn_model, "after split and transfer").await;
    write_all(&raw, &txn, &mut raw_model, &mut txn_model, "second").await;
    check_raw(&raw, &raw_model, "second").await;
    check_txn(&txn, &txn_model, "second").await;

    // A store-initiated split (AskBatchSplit from the store's side).
    let q = encode_bytes(b"q");
    let regions = joined.split(&q).await.expect("store-initiated split");
    assert_eq!(regions.len(), 2);
    assert_eq!(regions[1].start_key, q);
    converge(&addr, &joined, "after the store's split", |regions| {
        regions.iter().any(|r| r.start == hex(&q))
    })
    .await;
    write_all(&raw, &txn, &mut raw_model, &mut txn_model, "third").await;
    check_raw(&raw, &raw_model, "third").await;
    check_txn(&txn, &txn_model, "third").await;

    // TiKV's `SplitRegion` RPC on a store (a client's pre-split): the
    // stale epoch and a follower are refused with region errors, the leader
    // splits through PD and answers with both halves.
    let n = joined.cluster().region_for_region_key(&encode_bytes(b"n")).expect("a region");
    let leader = joined.cluster().leader_of(n.id).expect("a leader");
    let follower = n.peers.iter().find(|p| p.store_id != leader.store_id).copied().unwrap();
    let stub = |store: u64| {
        let addr = joined.server().store_addr(store);
        async move {
            let addr = addr.await.expect("store address");
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .expect("a store URL")
                .connect()
                .await
                .expect("connect to a store");
            TikvClient::new(channel)
        }
    };
    let split = |peer: Peer, version: u64| SplitRegionRequest {
        context: Some(kvrpcpb::Context {
            region_id: n.id,
            region_epoch: Some(RegionEpoch { version, ..n.region_epoch.unwrap() }),
            peer: Some(peer),
            ..Default::default()
        }),
        split_keys: vec![b"n".to_vec().into()],
        ..Default::default()
    };
    let version = n.region_epoch.unwrap().version;
    let stale = stub(leader.store_id).await.split_region(split(leader, version - 1)).await;
    assert!(stale.unwrap().into_inner().region_error.unwrap().epoch_not_match.is_some());
    let to_follower = stub(follower.store_id).await.split_region(split(follower, version)).await;
    assert!(to_follower.unwrap().into_inner().region_error.unwrap().not_leader.is_some());
    let done = stub(leader.store_id).await.split_region(split(leader, version)).await;
    let done = done.expect("SplitRegion").into_inner();
    assert!(done.region_error.is_none(), "{done:?}");
    assert_eq!(done.regions.len(), 2);
    assert_eq!(done.regions[1].start_key, encode_bytes(b"n"));
    converge(&addr, &joined, "after SplitRegion", |regions| {
        regions.iter().any(|r| r.start == hex(&encode_bytes(b"n")))
    })
    .await;
    check_raw(&raw, &raw_model, "after SplitRegion").await;
    check_txn(&txn, &txn_model, "after SplitRegion").await;

    // A store crash: its leaders move (the model elects at once) and PD
    // learns it from the new leaders' reports; the client follows.
    let crashed = joined.cluster().leader_of(right.id).expect("a leader").store_id;
    joined.stop_store(crashed).await.expect("stop a store");
    converge(&addr, &joined, "after a store crash", |regions| {
        regions.iter().all(|r| r.leader_store != crashed)
    })
    .await;
    check_raw(&raw, &raw_model, "with a store down").await;
    check_txn(&txn, &txn_model, "with a store down").await;
    write_all(&raw, &txn, &mut raw_model, &mut txn_model, "fourth").await;
    joined.start_store(crashed).await.expect("restart the store");
    check_raw(&raw, &raw_model, "after the restart").await;
    check_txn(&txn, &txn_model, "after the restart").await;

    // Another process's stores join the bootstrapped cluster: registered,
    // Up, holding no region.
    let late = JoinedCluster::start(ClusterConfig::default(), JoinOptions::new(addr.clone(), 1))
        .await
        .expect("join a bootstrapped cluster");
    assert!(late.cluster().regions().is_empty());
    let late_store = late.cluster().store_ids()[0];
    assert!(!joined.cluster().store_ids().contains(&late_store), "PD allocated a fresh id");
    let stores = get_json(&addr, "/pd/api/v1/stores");
    let late_state = stores
        .get("stores")
        .items()
        .iter()
        .find(|s| s.get("store").get("id").u64() == late_store)
        .map(|s| s.get("store").get("state_name").str().to_owned());
    assert_eq!(late_state.as_deref(), Some("Up"), "{stores:?}");
    assert_eq!(late.cluster_id(), joined.cluster_id());
    late.shutdown().await;

    assert_eq!(joined.refusals(), Vec::<String>::new(), "no operator was refused");
    let applied = joined.applied_operators();
    eprintln!("operators carried out: {applied:?}");
    // PD's keyspace split and ours; the transfer; peers added, promoted,
    // demoted and removed (PD sends single changes as `ChangePeerV2`).
    for (kind, least) in [("SplitRegion", 2), ("TransferLeader", 1), ("ChangePeerV2", 6)] {
        assert!(
            applied.get(kind).is_some_and(|n| *n >= least),
            "fewer than {least} {kind} operators: {applied:?}"
        );
    }
    joined.shutdown().await;
    drop(pd);
}
