//! Pessimistic lock waiting over gRPC: a `PessimisticLock` is really held by
//! the server until another connection's command releases the lock, and a
//! deadlock across two regions is answered at once with TiKV's `Deadlock`.

use std::time::Duration;

use bytes::Bytes;
use tikv_proto::kvrpcpb;
use tikv_proto::tikvpb::tikv_client::TikvClient;
use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};
use tonic::transport::{Channel, Endpoint};

/// A V1 txn cluster split at `m`, served over gRPC.
async fn serve() -> (Cluster, SimServer) {
    let cluster = Cluster::new(ClusterConfig {
        split_keys: vec![b"m".to_vec()],
        v1_txn: true,
        ..ClusterConfig::default()
    });
    let server = SimServer::start(cluster.clone(), ServerOptions::default()).await.unwrap();
    (cluster, server)
}

/// A new connection to the leader of `key`'s region, and its context.
async fn connect(
    cluster: &Cluster,
    server: &SimServer,
    key: &[u8],
) -> (TikvClient<Channel>, kvrpcpb::Context) {
    let region = cluster.region_for_region_key(&cluster.txn_region_key(key)).unwrap();
    let leader = cluster.leader_of(region.id).unwrap();
    let addr = server.store_addr(leader.store_id).await.unwrap();
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    (TikvClient::new(channel), cluster.context_for(region.id).unwrap())
}

fn lock_req(
    ctx: &kvrpcpb::Context,
    key: &'static [u8],
    primary: &'static [u8],
    start: u64,
) -> kvrpcpb::PessimisticLockRequest {
    kvrpcpb::PessimisticLockRequest {
        context: Some(ctx.clone()),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::PessimisticLock as i32,
            key: Bytes::from_static(key),
            ..Default::default()
        }],
        primary_lock: Bytes::from_static(primary),
        start_version: start,
        for_update_ts: start,
        lock_ttl: 3000,
        wait_timeout: 0,
        ..Default::default()
    }
}

/// Waits until the model has `n` parked requests.
async fn parked(cluster: &Cluster, n: usize) {
    for _ in 0..500 {
        if cluster.lock_waiters() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{} parked requests, expected {n}", cluster.lock_waiters());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_force_lock_request_is_woken_by_a_commit_on_another_connection() {
    let (cluster, server) = serve().await;
    let (mut kv1, ctx) = connect(&cluster, &server, b"k").await;
    let (mut kv2, _) = connect(&cluster, &server, b"k").await;
    let prewrite = kvrpcpb::PrewriteRequest {
        context: Some(ctx.clone()),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: "k".into(),
            value: "v1".into(),
            ..Default::default()
        }],
        primary_lock: "k".into(),
        start_version: 10,
        lock_ttl: 3000,
        ..Default::default()
    };
    assert!(kv2.kv_prewrite(prewrite).await.unwrap().into_inner().errors.is_empty());

    let mut req = lock_req(&ctx, b"k", b"k", 20);
    req.wake_up_mode = kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32;
    let waiter = tokio::spawn(async move { kv1.kv_pessimistic_lock(req).await });
    parked(&cluster, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "the request is held while the lock is");

    let commit = kvrpcpb::CommitRequest {
        context: Some(ctx.clone()),
        keys: vec!["k".into()],
        start_version: 10,
        commit_version: 25,
        ..Default::default()
    };
    assert!(kv2.kv_commit(commit).await.unwrap().into_inner().error.is_none());
    let resp = tokio::time::timeout(Duration::from_millis(500), waiter)
        .await
        .expect("woken by the commit, well before the 1 s timeout")
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(resp.errors.is_empty(), "{:?}", resp.errors);
    let res = &resp.results[0];
    assert_eq!(
        res.r#type,
        kvrpcpb::PessimisticLockKeyResultType::LockResultLockedWithConflict as i32
    );
    assert_eq!((res.locked_with_conflict_ts, &res.value[..]), (25, &b"v1"[..]));
    let locks = cluster.locks();
    assert_eq!((locks[0].lock_version, locks[0].lock_for_update_ts), (20, 25));
    assert_eq!(cluster.lock_waiters(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_across_two_regions_is_answered_with_the_wait_chain() {
    let (cluster, server) = serve().await;
    let (mut kv_a, ctx_a) = connect(&cluster, &server, b"a").await;
    let (mut kv_z, ctx_z) = connect(&cluster, &server, b"z").await;
    assert_ne!(ctx_a.region_id, ctx_z.region_id);
    // 10 holds a, 20 holds z.
    let r = kv_a.kv_pessimistic_lock(lock_req(&ctx_a, b"a", b"a", 10)).await.unwrap();
    assert!(r.into_inner().errors.is_empty());
    let r = kv_z.kv_pessimistic_lock(lock_req(&ctx_z, b"z", b"z", 20)).await.unwrap();
    assert!(r.into_inner().errors.is_empty());

    // 10 waits for z (held by the server) ...
    let mut kv_z2 = kv_z.clone();
    let req = lock_req(&ctx_z, b"z", b"a", 10);
    let waiter = tokio::spawn(async move { kv_z2.kv_pessimistic_lock(req).await });
    parked(&cluster, 1).await;
    // ... and 20 asking for a closes the cycle: Deadlock at once.
    let t = std::time::Instant::now();
    let resp =
        kv_a.kv_pessimistic_lock(lock_req(&ctx_a, b"a", b"z", 20)).await.unwrap().into_inner();
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    let dl = resp.errors[0].deadlock.clone().expect("a deadlock");
    assert_eq!((dl.lock_ts, &dl.lock_key[..]), (10, &b"a"[..]));
    let chain: Vec<(u64, u64, &[u8])> =
        dl.wait_chain.iter().map(|e| (e.txn, e.wait_for_txn, &e.key[..])).collect();
    assert_eq!(chain, vec![(10, 20, &b"z"[..]), (20, 10, &b"a"[..])]);
    assert_eq!(dl.deadlock_key_hash, dl.wait_chain[0].key_hash);

    // The victim rolls back (no keys: the region's scan), which wakes 10.
    let rollback = kvrpcpb::PessimisticRollbackRequest {
        context: Some(ctx_z.clone()),
        start_version: 20,
        for_update_ts: 20,
        keys: Vec::new(),
    };
    assert!(kv_z.kv_pessimistic_rollback(rollback).await.unwrap().into_inner().errors.is_empty());
    let woken = tokio::time::timeout(Duration::from_millis(500), waiter)
        .await
        .expect("woken by the rollback")
        .unwrap()
        .unwrap()
        .into_inner();
    let conflict = woken.errors[0].conflict.clone().expect("a write conflict");
    assert_eq!((conflict.start_ts, conflict.conflict_ts, conflict.conflict_commit_ts), (10, 20, 0));
    assert_eq!(cluster.lock_waiters(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_leaves_the_queue() {
    let (cluster, server) = serve().await;
    let (mut kv, ctx) = connect(&cluster, &server, b"k").await;
    let r = kv.kv_pessimistic_lock(lock_req(&ctx, b"k", b"k", 10)).await.unwrap();
    assert!(r.into_inner().errors.is_empty());
    let (mut kv2, _) = connect(&cluster, &server, b"k").await;
    let req = lock_req(&ctx, b"k", b"k", 20);
    let waiter = tokio::spawn(async move { kv2.kv_pessimistic_lock(req).await });
    parked(&cluster, 1).await;
    // The client goes away: the server drops the call and the model the wait.
    waiter.abort();
    parked(&cluster, 0).await;
    server.shutdown().await;
}

/// On a `BatchCommands` stream a parked lock request does not hold up the
/// other entries of its message: the commit batched after it runs, and the
/// woken lock answers in a message of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_lock_wait_answers_apart_from_its_message() {
    use tikv_proto::tikvpb::batch_commands_request::{Request as ReqEntry, request::Cmd as ReqCmd};
    use tikv_proto::tikvpb::batch_commands_response::response::Cmd as RespCmd;
    let (cluster, server) = serve().await;
    let (mut kv, ctx) = connect(&cluster, &server, b"k").await;
    let prewrite = kvrpcpb::PrewriteRequest {
        context: Some(ctx.clone()),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: "k".into(),
            value: "v".into(),
            ..Default::default()
        }],
        primary_lock: "k".into(),
        start_version: 10,
        lock_ttl: 3000,
        ..Default::default()
    };
    assert!(kv.kv_prewrite(prewrite).await.unwrap().into_inner().errors.is_empty());
    let commit = kvrpcpb::CommitRequest {
        context: Some(ctx.clone()),
        keys: vec!["k".into()],
        start_version: 10,
        commit_version: 15,
        ..Default::default()
    };
    let req = tikv_proto::tikvpb::BatchCommandsRequest {
        requests: vec![
            ReqEntry {
                cmd: Some(ReqCmd::PessimisticLock(Box::new(lock_req(&ctx, b"k", b"k", 20)))),
            },
            ReqEntry { cmd: Some(ReqCmd::Commit(Box::new(commit))) },
        ],
        request_ids: vec![7, 8],
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let mut stream =
        kv.batch_commands(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.request_ids, vec![8], "the commit answers first");
    assert!(matches!(&first.responses[0].cmd, Some(RespCmd::Commit(c)) if c.error.is_none()));
    let second = stream.message().await.unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    assert_eq!(second.request_ids, vec![7]);
    let Some(RespCmd::PessimisticLock(lock)) = &second.responses[0].cmd else {
        panic!("{second:?}")
    };
    let conflict = lock.errors[0].conflict.clone().expect("woken by the commit");
    assert_eq!((conflict.start_ts, conflict.conflict_commit_ts), (20, 15));
    server.shutdown().await;
}
