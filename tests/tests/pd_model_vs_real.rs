//! The simulator's own PD model against the real PD (`shared/pd/`, with
//! `tikv_sim::join` stores) on the same questions: where their answers
//! differ in shape, the model is wrong. Values that are each cluster's own
//! (ids, addresses, timestamps) are compared by kind only. The GC-states
//! API (safe points, barriers, their errors) is compared answer by answer
//! over one conversation.
//!
//! The real PD answers `LoadKeyspace` with `EntryNotFound` until the
//! keyspace's region boundaries are split (PD's `CheckKeyspaceRegionBound`:
//! clients must not use a keyspace before that); the model does not model
//! keyspace bounds and answers at once, so the keyspace is compared once
//! PD's split is done.

use std::time::Duration;

use tikv_proto::keyspacepb::LoadKeyspaceRequest;
use tikv_proto::keyspacepb::keyspace_client::KeyspaceClient;
use tikv_proto::pdpb::pd_client::PdClient;
use tikv_proto::pdpb::{
    AdvanceGcSafePointRequest, AdvanceTxnSafePointRequest, DeleteGcBarrierRequest,
    GetAllStoresRequest, GetGcStateRequest, GetMembersRequest, GetRegionRequest, GetStoreRequest,
    KeyspaceScope, RequestHeader, ResponseHeader, SetGcBarrierRequest, keyspace_scope,
};
use tikv_sim::ClusterConfig;
use tikv_sim::join::{JoinOptions, JoinedCluster};
use tikv_sim::real_pd::{RealPd, get_json};
use tikv_tests::harness::{Bed, SimHandle};
use tonic::transport::Channel;

/// What one PD answered, reduced to what both must agree on.
#[derive(Debug, PartialEq)]
struct Answers {
    members_have_a_leader: bool,
    /// Per store: (state, has an address, has a version, has a status address).
    stores: Vec<(i32, bool, bool, bool)>,
    first_region_has_a_leader_among_its_peers: bool,
    unknown_store: (bool, Option<i32>),
    null_keyspace_gc: (u64, u64),
    /// The DEFAULT keyspace's (name, state).
    default_keyspace: Option<(String, i32)>,
}

/// `LoadKeyspace("DEFAULT")` at `addr`: (name, state), `None` on an error.
async fn load_default_keyspace(channel: Channel, cluster_id: u64) -> Option<(String, i32)> {
    let request = LoadKeyspaceRequest {
        header: Some(RequestHeader { cluster_id, ..Default::default() }),
        name: "DEFAULT".into(),
        ..Default::default()
    };
    let answer = KeyspaceClient::new(channel).load_keyspace(request).await.ok()?.into_inner();
    answer.keyspace.map(|k| (k.name, k.state))
}

fn error_type(header: &Option<ResponseHeader>) -> Option<i32> {
    header.as_ref().and_then(|h| h.error.as_ref()).map(|e| e.r#type)
}

fn error_message(header: &Option<ResponseHeader>) -> Option<String> {
    header.as_ref().and_then(|h| h.error.as_ref()).map(|e| format!("{}: {}", e.r#type, e.message))
}

/// One GC-states conversation (PD's `GCStateManager` through `gc_service.go`),
/// each answer reduced to what both must agree on: safe points, error texts,
/// barrier ids and timestamps (TTLs only as "about what was asked", the
/// real PD's clock moves while it answers).
async fn ask_gc(addr: &str) -> Vec<String> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut pd = PdClient::new(channel);
    let members = pd.get_members(GetMembersRequest::default()).await.expect("members").into_inner();
    let cluster_id = members.header.as_ref().map_or(0, |h| h.cluster_id);
    let header = || Some(RequestHeader { cluster_id, ..Default::default() });
    let scope =
        |id: u32| Some(KeyspaceScope { keyspace: Some(keyspace_scope::Keyspace::KeyspaceId(id)) });
    let mut out = Vec::new();
    for (keyspace_scope, target) in [(None, 100), (None, 50), (scope(0), 120)] {
        let r = pd
            .advance_txn_safe_point(AdvanceTxnSafePointRequest {
                header: header(),
                keyspace_scope,
                target,
            })
            .await
            .expect("advance txn safe point")
            .into_inner();
        out.push(format!(
            "advance txn {target}: {:?} {} {} {:?}",
            error_message(&r.header),
            r.old_txn_safe_point,
            r.new_txn_safe_point,
            r.blocker_description
        ));
    }
    for (barrier_id, barrier_ts, ttl_seconds) in
        [("b1", 99, 3600), ("b1", 150, 3600), ("gc_worker", 150, 10), ("", 150, 10), ("b2", 150, 0)]
    {
        let r = pd
            .set_gc_barrier(SetGcBarrierRequest {
                header: header(),
                keyspace_scope: None,
                barrier_id: barrier_id.into(),
                barrier_ts,
                ttl_seconds,
            })
            .await
            .expect("set barrier")
            .into_inner();
        let info = r.new_barrier_info.map(|b| {
            (b.barrier_id, b.barrier_ts, (ttl_seconds - 2..=ttl_seconds).contains(&b.ttl_seconds))
        });
        out.push(format!(
            "set barrier {barrier_id:?} {barrier_ts}: {:?} {info:?}",
            error_message(&r.header)
        ));
    }
    let r = pd
        .advance_txn_safe_point(AdvanceTxnSafePointRequest {
            header: header(),
            keyspace_scope: None,
            target: 200,
        })
        .await
        .expect("advance txn safe point")
        .into_inner();
    // The blocker's expiration time is wall clock on one side, model time on the other.
    let blocker = r.blocker_description.split(", ExpirationTime").next().unwrap_or("").to_owned();
    out.push(format!(
        "blocked: {:?} {} {} {blocker}",
        error_message(&r.header),
        r.old_txn_safe_point,
        r.new_txn_safe_point
    ));
    for target in [151, 120, 110] {
        let r = pd
            .advance_gc_safe_point(AdvanceGcSafePointRequest {
                header: header(),
                keyspace_scope: None,
                target,
            })
            .await
            .expect("advance gc safe point")
            .into_inner();
        out.push(format!(
            "advance gc {target}: {:?} {} {}",
            error_message(&r.header),
            r.old_gc_safe_point,
            r.new_gc_safe_point
        ));
    }
    for keyspace_scope in [None, scope(0)] {
        let r = pd
            .get_gc_state(GetGcStateRequest {
                header: header(),
                keyspace_scope,
                ..Default::default()
            })
            .await
            .expect("gc state")
            .into_inner();
        let s = r.gc_state.unwrap_or_default();
        let barriers: Vec<(String, u64)> =
            s.gc_barriers.into_iter().map(|b| (b.barrier_id, b.barrier_ts)).collect();
        out.push(format!(
            "state: {:?} {:?} {} {} {} {barriers:?}",
            error_message(&r.header),
            s.keyspace_scope,
            s.is_keyspace_level_gc,
            s.txn_safe_point,
            s.gc_safe_point
        ));
    }
    for _ in 0..2 {
        let r = pd
            .delete_gc_barrier(DeleteGcBarrierRequest {
                header: header(),
                keyspace_scope: None,
                barrier_id: "b1".into(),
            })
            .await
            .expect("delete barrier")
            .into_inner();
        let info = r.deleted_barrier_info.map(|b| (b.barrier_id, b.barrier_ts));
        out.push(format!("delete barrier: {:?} {info:?}", error_message(&r.header)));
    }
    let r = pd
        .advance_txn_safe_point(AdvanceTxnSafePointRequest {
            header: header(),
            keyspace_scope: None,
            target: 200,
        })
        .await
        .expect("advance txn safe point")
        .into_inner();
    out.push(format!(
        "unblocked: {:?} {} {}",
        error_message(&r.header),
        r.old_txn_safe_point,
        r.new_txn_safe_point
    ));
    out
}

async fn ask(addr: &str) -> Answers {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut pd = PdClient::new(channel.clone());
    let members = pd.get_members(GetMembersRequest::default()).await.expect("members").into_inner();
    let cluster_id = members.header.as_ref().map_or(0, |h| h.cluster_id);
    let header = || Some(RequestHeader { cluster_id, ..Default::default() });
    let members_have_a_leader =
        cluster_id != 0 && members.leader.is_some_and(|l| !l.client_urls.is_empty());

    let all = pd
        .get_all_stores(GetAllStoresRequest { header: header(), exclude_tombstone_stores: true })
        .await
        .expect("stores")
        .into_inner();
    let mut stores: Vec<(i32, bool, bool, bool)> = all
        .stores
        .iter()
        .map(|s| {
            (s.state, !s.address.is_empty(), !s.version.is_empty(), !s.status_address.is_empty())
        })
        .collect();
    stores.sort();

    let region = pd
        .get_region(GetRegionRequest { header: header(), ..Default::default() })
        .await
        .expect("region")
        .into_inner();
    let first_region_has_a_leader_among_its_peers = match (&region.region, &region.leader) {
        (Some(r), Some(l)) => r.peers.iter().any(|p| p.id == l.id && p.store_id == l.store_id),
        _ => false,
    };

    let unknown = pd
        .get_store(GetStoreRequest { header: header(), store_id: 999_999 })
        .await
        .expect("store")
        .into_inner();
    let unknown_store = (unknown.store.is_some(), error_type(&unknown.header));

    let gc = pd
        .get_gc_state(GetGcStateRequest {
            header: header(),
            keyspace_scope: Some(KeyspaceScope {
                keyspace: Some(keyspace_scope::Keyspace::KeyspaceId(0xffff_ffff)),
            }),
            ..Default::default()
        })
        .await
        .expect("gc state")
        .into_inner();
    let state = gc.gc_state.unwrap_or_default();
    let null_keyspace_gc = (state.txn_safe_point, state.gc_safe_point);

    let default_keyspace = load_default_keyspace(channel, cluster_id).await;
    Answers {
        members_have_a_leader,
        stores,
        first_region_has_a_leader_among_its_peers,
        unknown_store,
        null_keyspace_gc,
        default_keyspace,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_pd_answers_as_the_real_pd_does() {
    let pd = RealPd::start();
    let addr = pd.addr().to_owned();
    let joined = JoinedCluster::start(ClusterConfig::default(), JoinOptions::new(addr.clone(), 3))
        .await
        .expect("join PD");
    // PD learns the stores from their heartbeats.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while get_json(&addr, "/pd/api/v1/stores").get("stores").items().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the stores never reached PD");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And answers for the DEFAULT keyspace once its boundaries are split.
    let channel = Channel::from_shared(format!("http://{addr}")).expect("address");
    let channel = channel.connect().await.expect("connect");
    while load_default_keyspace(channel.clone(), joined.cluster_id()).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "PD never served the DEFAULT keyspace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let real = ask(&addr).await;
    let real_gc = ask_gc(&addr).await;

    let sim = SimHandle::start(Bed::InProcess, ClusterConfig::default()).await;
    let model = ask(&sim.pd_addrs()[0]).await;
    assert_eq!(model, real, "the model PD differs from the real PD (left: model)");
    let model_gc = ask_gc(&sim.pd_addrs()[0]).await;
    for (model, real) in model_gc.iter().zip(&real_gc) {
        assert_eq!(model, real, "the model's GC states differ from the real PD's (left: model)");
    }
    assert_eq!(model_gc.len(), real_gc.len());
    joined.shutdown().await;
    drop(pd);
}
