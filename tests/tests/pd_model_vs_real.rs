//! The simulator's own PD model against the real PD (`shared/pd/`, with
//! `tikv_sim::join` stores) on the same questions: where their answers
//! differ in shape, the model is wrong. Values that are each cluster's own
//! (ids, addresses, timestamps) are compared by kind only.
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
    GetAllStoresRequest, GetGcStateRequest, GetMembersRequest, GetRegionRequest, GetStoreRequest,
    KeyspaceScope, RequestHeader, ResponseHeader, keyspace_scope,
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

    let sim = SimHandle::start(Bed::InProcess, ClusterConfig::default()).await;
    let model = ask(&sim.pd_addrs()[0]).await;
    assert_eq!(model, real, "the model PD differs from the real PD (left: model)");
    joined.shutdown().await;
    drop(pd);
}
