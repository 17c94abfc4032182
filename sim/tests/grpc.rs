//! gRPC smoke test: a `SimServer` in-process, driven through the
//! tonic-generated clients.

use std::time::Duration;

use tikv_proto::kvrpcpb;
use tikv_proto::pdpb::{self, pd_client::PdClient};
use tikv_proto::tikvpb::tikv_client::TikvClient;
use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};
use tonic::transport::{Channel, Endpoint};

async fn channel(url: String) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url)?.connect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_pd_tso_and_raw_kv_and_stops_stores() {
    let cluster = Cluster::new(ClusterConfig { pd_members: 2, ..ClusterConfig::default() });
    let server = SimServer::start(cluster.clone(), ServerOptions::default()).await.unwrap();
    let pd_addrs = server.pd_addrs();
    assert_eq!(pd_addrs.len(), 2);

    // GetMembers on the follower: members carry the real listening URLs.
    let mut pd1 = PdClient::new(channel(format!("http://{}", pd_addrs[1])).await.unwrap());
    let members = pd1.get_members(pdpb::GetMembersRequest::default()).await.unwrap().into_inner();
    let cluster_id = members.header.unwrap().cluster_id;
    assert_eq!(cluster_id, cluster.config().cluster_id);
    let leader_url = members.leader.unwrap().client_urls[0].clone();
    assert_eq!(leader_url, format!("http://{}", pd_addrs[0]));
    let header = Some(pdpb::RequestHeader { cluster_id, ..Default::default() });
    // The follower refuses leader-only calls with Unavailable "not leader".
    let err = pd1
        .get_region(pdpb::GetRegionRequest { header: header.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::Unavailable, "not leader"));

    // TSO stream on the leader: one response per request, increasing.
    let mut pd = PdClient::new(channel(leader_url).await.unwrap());
    let reqs: Vec<pdpb::TsoRequest> = (1..=3)
        .map(|n| pdpb::TsoRequest { header: header.clone(), count: n, ..Default::default() })
        .collect();
    let mut stream = pd.tso(futures::stream::iter(reqs)).await.unwrap().into_inner();
    let mut last = (0, 0);
    for n in 1..=3 {
        let resp = stream.message().await.unwrap().unwrap();
        assert_eq!(resp.count, n);
        let ts = resp.timestamp.unwrap();
        assert!((ts.physical, ts.logical) > last);
        last = (ts.physical, ts.logical);
    }
    assert!(stream.message().await.unwrap().is_none(), "stream ends with the requests");

    // Route a RawPut/RawGet with what PD says.
    let region = pd
        .get_region(pdpb::GetRegionRequest {
            header: header.clone(),
            region_key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let leader = region.leader.unwrap();
    let meta = region.region.unwrap();
    let store = pd
        .get_store(pdpb::GetStoreRequest { header: header.clone(), store_id: leader.store_id })
        .await
        .unwrap()
        .into_inner()
        .store
        .unwrap();
    assert_eq!(Some(store.address.clone()), server.store_addr(leader.store_id).await);
    let ctx = kvrpcpb::Context {
        region_id: meta.id,
        region_epoch: meta.region_epoch,
        peer: Some(leader),
        ..Default::default()
    };
    let mut kv = TikvClient::new(channel(format!("http://{}", store.address)).await.unwrap());
    let put = kvrpcpb::RawPutRequest {
        context: Some(ctx.clone()),
        key: "k".into(),
        value: "v".into(),
        ..Default::default()
    };
    let resp = kv.raw_put(put).await.unwrap().into_inner();
    assert!(resp.region_error.is_none() && resp.error.is_empty(), "{resp:?}");
    let get = kvrpcpb::RawGetRequest {
        context: Some(ctx.clone()),
        key: "k".into(),
        ..Default::default()
    };
    let resp = kv.raw_get(get.clone()).await.unwrap().into_inner();
    assert_eq!(&resp.value[..], b"v");
    // Unsupported methods answer Unimplemented.
    let err = kv.mvcc_get_by_key(kvrpcpb::MvccGetByKeyRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    // Transactional reads are served (an empty V1 raw cluster has no txn data).
    let txn_get = kvrpcpb::GetRequest {
        context: Some(ctx.clone()),
        key: "k".into(),
        version: 10,
        ..Default::default()
    };
    let resp = kv.kv_get(txn_get).await.unwrap().into_inner();
    assert!(resp.not_found && resp.error.is_none() && resp.region_error.is_none(), "{resp:?}");

    // Crash the store: the open connection fails, new ones are refused.
    server.stop_store(leader.store_id).await.unwrap();
    assert!(!cluster.is_store_running(leader.store_id));
    let err = tokio::time::timeout(Duration::from_secs(10), kv.raw_get(get.clone()))
        .await
        .unwrap()
        .unwrap_err();
    // Depending on whether the client saw the reset before sending, tonic
    // reports a broken connection as Unavailable, as Cancelled ("connection
    // closed") or as Unknown ("broken pipe" while writing); all are
    // transport failures, and the client's transport maps them so.
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        "{err:?}"
    );
    assert!(channel(format!("http://{}", store.address)).await.is_err());

    // Restart on the same address; the leader moved away meanwhile.
    server.start_store(leader.store_id).await.unwrap();
    let mut kv = TikvClient::new(channel(format!("http://{}", store.address)).await.unwrap());
    let resp = kv.raw_get(get).await.unwrap().into_inner();
    assert!(resp.region_error.unwrap().not_leader.is_some());

    server.shutdown().await;
}

/// TiKV's lock waiting for `PessimisticLock`: a waiter is woken by the
/// release with a `PessimisticRetry` write conflict, times out with the
/// `KeyIsLocked`, and a negative `wait_timeout` does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pessimistic_lock_waits_for_release() {
    let cluster = Cluster::new(ClusterConfig { v1_txn: true, ..ClusterConfig::default() });
    let server = SimServer::start(cluster.clone(), ServerOptions::default()).await.unwrap();
    let region = cluster.regions()[0].clone();
    let leader = cluster.leader_of(region.id).unwrap();
    let addr = server.store_addr(leader.store_id).await.unwrap();
    let mut kv = TikvClient::new(channel(format!("http://{addr}")).await.unwrap());
    let ctx = cluster.context_for(region.id);
    let lock_req = |start: u64, wait_timeout: i64| kvrpcpb::PessimisticLockRequest {
        context: ctx.clone(),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::PessimisticLock as i32,
            key: "k".into(),
            ..Default::default()
        }],
        primary_lock: "k".into(),
        start_version: start,
        for_update_ts: start,
        lock_ttl: 3000,
        wait_timeout,
        ..Default::default()
    };
    let held = kv.kv_pessimistic_lock(lock_req(10, -1)).await.unwrap().into_inner();
    assert!(held.errors.is_empty(), "{:?}", held.errors);

    // No wait: KeyIsLocked at once.
    let t = std::time::Instant::now();
    let r = kv.kv_pessimistic_lock(lock_req(20, -1)).await.unwrap().into_inner();
    assert_eq!(r.errors[0].locked.as_ref().unwrap().lock_version, 10);
    assert!(t.elapsed() < Duration::from_millis(500));

    // Wait, then time out: KeyIsLocked after the request's timeout.
    let t = std::time::Instant::now();
    let r = kv.kv_pessimistic_lock(lock_req(20, 150)).await.unwrap().into_inner();
    assert_eq!(r.errors[0].locked.as_ref().unwrap().lock_version, 10);
    assert!(t.elapsed() >= Duration::from_millis(150), "{:?}", t.elapsed());

    // Wait, woken by the holder's rollback: a write conflict without a commit ts.
    let mut kv2 = kv.clone();
    let rollback = kvrpcpb::PessimisticRollbackRequest {
        context: ctx.clone(),
        keys: vec!["k".into()],
        start_version: 10,
        for_update_ts: 10,
    };
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        kv2.kv_pessimistic_rollback(rollback).await.unwrap().into_inner()
    });
    let t = std::time::Instant::now();
    let r = kv.kv_pessimistic_lock(lock_req(20, 0)).await.unwrap().into_inner();
    let waited = t.elapsed();
    assert!(releaser.await.unwrap().errors.is_empty());
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_millis(1000), "woken before the default timeout: {waited:?}");
    let conflict = r.errors[0].conflict.clone().expect("a write conflict");
    assert_eq!((conflict.start_ts, conflict.conflict_ts, conflict.conflict_commit_ts), (20, 10, 0));
    assert_eq!(conflict.reason, kvrpcpb::write_conflict::Reason::PessimisticRetry as i32);
    // The woken request did not lock; retrying it does.
    assert!(cluster.locks().is_empty());
    let r = kv.kv_pessimistic_lock(lock_req(20, 0)).await.unwrap().into_inner();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_storage_get_reads_an_empty_store_on_every_member() {
    use tikv_proto::meta_storagepb::{self, meta_storage_client::MetaStorageClient};
    let cluster = Cluster::new(ClusterConfig { pd_members: 2, ..ClusterConfig::default() });
    let server = SimServer::start(cluster.clone(), ServerOptions::default()).await.unwrap();
    for addr in server.pd_addrs() {
        let mut ms = MetaStorageClient::new(channel(format!("http://{addr}")).await.unwrap());
        // What PD clients ask at startup: the router service's registry prefix.
        let key = format!("/ms/{}/router/registry/", cluster.config().cluster_id);
        let mut range_end = key.clone().into_bytes();
        *range_end.last_mut().unwrap() += 1;
        let r = ms
            .get(meta_storagepb::GetRequest {
                key: key.into_bytes().into(),
                range_end: range_end.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let header = r.header.unwrap();
        assert_eq!(
            (header.cluster_id, header.error, header.revision),
            (cluster.config().cluster_id, None, 1)
        );
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 0, false));
    }
    server.shutdown().await;
}

/// With a TSO latency, each answer comes that long after its request, in
/// order, and pipelined requests wait out their latencies together: ten
/// requests sent at once are all answered in about one latency, not ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tso_latency_delays_answers_without_serialising_them() {
    let cluster = Cluster::new(ClusterConfig::default());
    let latency = Duration::from_millis(100);
    let opts = ServerOptions { tso_latency: latency, ..ServerOptions::default() };
    let server = SimServer::start(cluster.clone(), opts).await.unwrap();
    let mut pd = PdClient::new(channel(format!("http://{}", server.pd_addrs()[0])).await.unwrap());
    let header =
        Some(pdpb::RequestHeader { cluster_id: cluster.config().cluster_id, ..Default::default() });
    let reqs: Vec<pdpb::TsoRequest> = (1..=10)
        .map(|n| pdpb::TsoRequest { header: header.clone(), count: n, ..Default::default() })
        .collect();
    let started = std::time::Instant::now();
    let mut stream = pd.tso(futures::stream::iter(reqs)).await.unwrap().into_inner();
    for n in 1..=10 {
        assert_eq!(stream.message().await.unwrap().unwrap().count, n, "in order");
    }
    let took = started.elapsed();
    assert!(took >= latency, "{took:?}");
    assert!(took < latency * 3, "latencies overlap: {took:?}");
    assert!(stream.message().await.unwrap().is_none(), "stream ends with the requests");
    server.shutdown().await;
}
