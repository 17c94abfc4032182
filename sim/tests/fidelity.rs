//! Where the simulated stores must answer as TiKV stores do, found by
//! running foreign clients against them: gRPC health, the status address
//! (`/status`, `/config`), `SplitRegion` with the simulator's own PD, API V1
//! with TTL, `BatchCommands` entries the model does not execute, and one V1
//! cluster serving raw and transactional keys.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use tikv_core::key::memcomparable;
use tikv_core::rpc::{KvRequest, KvResponse};
use tikv_core::time::Instant;
use tikv_proto::health::HealthCheckRequest;
use tikv_proto::health::health_check_response::ServingStatus;
use tikv_proto::health::health_client::HealthClient;
use tikv_proto::pdpb::{self, pd_client::PdClient};
use tikv_proto::tikvpb::BatchCommandsRequest;
use tikv_proto::tikvpb::batch_commands_request::Request as ReqEntry;
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as RespCmd;
use tikv_proto::tikvpb::tikv_client::TikvClient;
use tikv_proto::{coprocessor, kvrpcpb};
use tikv_sim::real_pd::http;
use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};
use tonic::transport::{Channel, Endpoint};

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn get(addr: String, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || http(&addr, "GET", path, None)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_serve_grpc_health_and_a_status_address_reported_to_pd() {
    let cluster = Cluster::new(ClusterConfig { enable_ttl: true, ..ClusterConfig::default() });
    let server = SimServer::start(cluster.clone(), ServerOptions::default()).await.unwrap();
    let cluster_id = cluster.config().cluster_id;
    let mut pd = PdClient::new(channel(&server.pd_addrs()[0]).await);
    for id in cluster.store_ids() {
        let addr = server.store_addr(id).await.unwrap();
        let mut health = HealthClient::new(channel(&addr).await);
        let resp = health.check(HealthCheckRequest::default()).await.unwrap().into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "store {id}");
        let unknown = HealthCheckRequest { service: "no.such.Service".into() };
        assert_eq!(health.check(unknown).await.unwrap_err().code(), tonic::Code::NotFound);

        let status_addr = server.store_status_addr(id).await.unwrap();
        assert_ne!(status_addr, addr);
        assert_eq!(get(status_addr.clone(), "/status").await.0, 200);
        let (code, body) = get(status_addr.clone(), "/config").await;
        assert_eq!(code, 200);
        assert!(body.contains(r#""storage":{"api-version":1,"enable-ttl":true}"#), "{body}");
        assert_eq!(get(status_addr.clone(), "/metrics-nope").await.0, 404);

        // The in-process PD's store list carries it, as PutStore does with a real PD.
        let header = Some(pdpb::RequestHeader { cluster_id, ..Default::default() });
        let store = pd
            .get_store(pdpb::GetStoreRequest { header, store_id: id })
            .await
            .unwrap()
            .into_inner()
            .store
            .unwrap();
        assert_eq!(store.status_address, status_addr);
    }
    // A stopped store's status server is gone with it, and comes back.
    let status_addr = server.store_status_addr(1).await.unwrap();
    server.stop_store(1).await.unwrap();
    assert!(std::net::TcpStream::connect(&status_addr).is_err());
    server.start_store(1).await.unwrap();
    assert_eq!(get(status_addr, "/status").await.0, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_commands_answer_every_entry_with_its_response_type() {
    let cluster = Cluster::new(ClusterConfig::default());
    let server = SimServer::start(cluster.clone(), ServerOptions::default()).await.unwrap();
    let region = cluster.regions()[0].clone();
    let leader = cluster.leader_of(region.id).unwrap();
    let ctx = cluster.context_for(region.id);
    let mut kv = TikvClient::new(channel(&server.store_addr(leader.store_id).await.unwrap()).await);
    let entry = |cmd| ReqEntry { cmd: Some(cmd) };
    let req = BatchCommandsRequest {
        requests: vec![
            entry(ReqCmd::Coprocessor(Box::new(coprocessor::Request {
                context: ctx.clone(),
                ..Default::default()
            }))),
            entry(ReqCmd::DeleteRange(Box::new(kvrpcpb::DeleteRangeRequest {
                context: ctx.clone(),
                ..Default::default()
            }))),
            entry(ReqCmd::Gc(Box::new(kvrpcpb::GcRequest { context: ctx.clone(), safe_point: 1 }))),
            entry(ReqCmd::GetHealthFeedback(Box::new(kvrpcpb::GetHealthFeedbackRequest {
                context: ctx.clone(),
            }))),
            entry(ReqCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
                context: ctx.clone(),
                key: "k".into(),
                ..Default::default()
            }))),
            ReqEntry { cmd: None },
        ],
        request_ids: vec![1, 2, 3, 4, 5, 6],
        ..Default::default()
    };
    let mut stream =
        kv.batch_commands(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(resp.request_ids, vec![1, 2, 3, 4, 5, 6]);
    let cmds: Vec<Option<RespCmd>> = resp.responses.into_iter().map(|r| r.cmd).collect();
    match &cmds[0] {
        Some(RespCmd::Coprocessor(r)) => assert!(r.other_error.contains("Coprocessor"), "{r:?}"),
        other => panic!("coprocessor answered {other:?}"),
    }
    match &cmds[1] {
        // Served: an empty range is TiKV's invalid delete range command.
        Some(RespCmd::DeleteRange(r)) => {
            assert!(r.error.starts_with("invalid delete range command"), "{r:?}")
        }
        other => panic!("delete range answered {other:?}"),
    }
    match &cmds[2] {
        Some(RespCmd::Gc(r)) => assert!(r.error.as_ref().is_some_and(|e| !e.abort.is_empty())),
        other => panic!("gc answered {other:?}"),
    }
    match &cmds[3] {
        Some(RespCmd::GetHealthFeedback(r)) => {
            assert_eq!(r.health_feedback.as_ref().unwrap().store_id, leader.store_id)
        }
        other => panic!("health feedback answered {other:?}"),
    }
    match &cmds[4] {
        Some(RespCmd::RawGet(r)) => assert!(r.not_found && r.error.is_empty(), "{r:?}"),
        other => panic!("raw get answered {other:?}"),
    }
    // An entry TiKV cannot parse gets its empty answer (kv.rs, `None`).
    assert!(cmds[5].is_none());
    server.shutdown().await;
}

fn split(c: &Cluster, key: &[u8], keys: &[&[u8]], raw: bool) -> kvrpcpb::SplitRegionResponse {
    let region = if raw {
        c.region_for_region_key(key).unwrap()
    } else {
        c.region_for_region_key(&memcomparable::encode_bytes(key)).unwrap()
    };
    let leader = c.leader_of(region.id).unwrap();
    let req = kvrpcpb::SplitRegionRequest {
        context: c.context_for(region.id),
        split_keys: keys.iter().map(|k| k.to_vec().into()).collect(),
        is_raw_kv: raw,
        ..Default::default()
    };
    match c.handle_kv(leader.store_id, KvRequest::SplitRegion(Box::new(req)), Instant::ZERO) {
        Ok(KvResponse::SplitRegion(r)) => *r,
        other => panic!("SplitRegion answered {other:?}"),
    }
}

#[test]
#[allow(deprecated)]
fn split_region_rpc_splits_with_the_in_process_pd() {
    let c = Cluster::new(ClusterConfig { v1_txn: true, ..ClusterConfig::default() });
    let before = c.regions()[0].clone();
    // Txn keys: memcomparable in region key space; TiKV's batch split keeps
    // the rightmost range in the original region and bumps every version.
    let r = split(&c, b"a", &[b"m", b"f"], false);
    assert!(r.region_error.is_none(), "{r:?}");
    let ends: Vec<Vec<u8>> = r.regions.iter().map(|g| g.end_key.to_vec()).collect();
    assert_eq!(
        ends,
        vec![memcomparable::encode_bytes(b"f"), memcomparable::encode_bytes(b"m"), vec![]]
    );
    assert_eq!(r.regions[2].id, before.id);
    assert!(r.regions.iter().all(|g| g.region_epoch.unwrap().version == 3));
    assert_eq!(c.regions().len(), 3, "the model's PD sees the split");
    // Raw keys as sent; a two-way split also fills `left`/`right`.
    let r = split(&c, b"z", &[b"z"], true);
    assert!(r.region_error.is_none(), "{r:?}");
    assert_eq!(r.left.unwrap().end_key.to_vec(), b"z".to_vec());
    assert_eq!(r.right.unwrap().start_key.to_vec(), b"z".to_vec());
    // A stale epoch is a region error, as raftstore's check answers.
    let stale = kvrpcpb::SplitRegionRequest {
        context: Some(kvrpcpb::Context {
            region_epoch: before.region_epoch,
            ..c.context_for(before.id).unwrap()
        }),
        split_keys: vec!["x".into()],
        ..Default::default()
    };
    let leader = c.leader_of(before.id).unwrap().store_id;
    match c.handle_kv(leader, KvRequest::SplitRegion(Box::new(stale)), Instant::ZERO) {
        Ok(KvResponse::SplitRegion(r)) => {
            assert!(r.region_error.unwrap().epoch_not_match.is_some())
        }
        other => panic!("{other:?}"),
    }
}

fn raw_put(c: &Cluster, key: &str, ttl: u64) -> kvrpcpb::RawPutResponse {
    let region = c.region_for_region_key(key.as_bytes()).unwrap();
    let req = kvrpcpb::RawPutRequest {
        context: c.context_for(region.id),
        key: key.to_owned().into(),
        value: "v".into(),
        ttl,
        ..Default::default()
    };
    let store = c.leader_of(region.id).unwrap().store_id;
    match c.handle_kv(store, KvRequest::RawPut(Box::new(req)), Instant::ZERO) {
        Ok(KvResponse::RawPut(r)) => *r,
        other => panic!("{other:?}"),
    }
}

fn raw_ttl(c: &Cluster, key: &str) -> kvrpcpb::RawGetKeyTtlResponse {
    let region = c.region_for_region_key(key.as_bytes()).unwrap();
    let req = kvrpcpb::RawGetKeyTtlRequest {
        context: c.context_for(region.id),
        key: key.to_owned().into(),
        ..Default::default()
    };
    let store = c.leader_of(region.id).unwrap().store_id;
    match c.handle_kv(store, KvRequest::RawGetKeyTtl(Box::new(req)), Instant::ZERO) {
        Ok(KvResponse::RawGetKeyTtl(r)) => *r,
        other => panic!("{other:?}"),
    }
}

fn prewrite(c: &Cluster, key: &[u8]) -> kvrpcpb::PrewriteResponse {
    let region = c.region_for_region_key(&memcomparable::encode_bytes(key)).unwrap();
    let req = kvrpcpb::PrewriteRequest {
        context: c.context_for(region.id),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: key.to_vec().into(),
            value: "v".into(),
            ..Default::default()
        }],
        primary_lock: key.to_vec().into(),
        start_version: 10,
        lock_ttl: 3000,
        ..Default::default()
    };
    let store = c.leader_of(region.id).unwrap().store_id;
    match c.handle_kv(store, KvRequest::Prewrite(Box::new(req)), Instant::ZERO) {
        Ok(KvResponse::Prewrite(r)) => *r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn api_v1_with_ttl_enabled_serves_raw_ttls_and_refuses_txn() {
    let ttl = Cluster::new(ClusterConfig { enable_ttl: true, ..ClusterConfig::default() });
    let put = raw_put(&ttl, "k", 100);
    assert!(put.error.is_empty() && put.region_error.is_none(), "{put:?}");
    let got = raw_ttl(&ttl, "k");
    assert!(got.error.is_empty() && !got.not_found, "{got:?}");
    assert!(got.ttl > 0 && got.ttl <= 100, "{got:?}");
    assert!(raw_ttl(&ttl, "no-ttl").not_found);
    assert!(raw_put(&ttl, "plain", 0).error.is_empty());
    assert_eq!(raw_ttl(&ttl, "plain").ttl, 0);
    // `check_ttl_valid`: with TTL enabled, one TTL per pair (or one for all).
    let batch = |ttls: Vec<u64>| {
        let region = ttl.region_for_region_key(b"b").unwrap();
        let req = kvrpcpb::RawBatchPutRequest {
            context: ttl.context_for(region.id),
            pairs: ["b1", "b2", "b3"]
                .iter()
                .map(|k| kvrpcpb::KvPair {
                    key: k.to_string().into(),
                    value: "v".into(),
                    ..Default::default()
                })
                .collect(),
            ttls,
            ..Default::default()
        };
        let store = ttl.leader_of(region.id).unwrap().store_id;
        match ttl.handle_kv(store, KvRequest::RawBatchPut(Box::new(req)), Instant::ZERO) {
            Ok(KvResponse::RawBatchPut(r)) => r.error,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(batch(vec![10]), "");
    assert_eq!(batch(vec![10, 20, 30]), "");
    assert!(batch(vec![10, 20]).contains("length of ttls"));
    // `Storage::check_api_version`: a V1ttl storage serves raw commands only.
    let refused = prewrite(&ttl, b"t");
    let abort = refused.errors[0].abort.clone();
    assert!(abort.contains("storage: V1ttl, request: V1"), "{abort}");

    // Without the setting, V1 refuses TTLs as before and serves txn.
    let plain = Cluster::new(ClusterConfig::default());
    assert!(raw_put(&plain, "k", 100).error.contains("ttl is not enabled"));
    assert!(!raw_ttl(&plain, "k").error.is_empty());
    assert!(prewrite(&plain, b"t").errors.is_empty());
}

/// The `tikv-sim` process, killed when dropped.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One V1 `tikv-sim` (no mode flag) serves a raw client and a txn client:
/// its region boundaries decode as memcomparable keys (client-go's txn mode
/// decodes every boundary and fails on raw ones), and raw and txn writes
/// land on the same cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_v1_sim_serves_raw_and_txn_keys() {
    let mut sim = Sim(Command::new(env!("CARGO_BIN_EXE_tikv-sim"))
        .args(["--pd", "127.0.0.1:0", "--regions", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tikv-sim"));
    let mut out = BufReader::new(sim.0.stdout.take().expect("stdout"));
    let (mut pd_addr, mut statuses) = (String::new(), 0);
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).expect("read stdout") > 0, "tikv-sim exited early");
        if let Some(addr) = line.strip_prefix("pd 0: ") {
            pd_addr = addr.trim().to_owned();
        }
        if line.starts_with("status ") {
            statuses += 1;
        }
        if line.trim() == "ready" {
            break;
        }
    }
    assert_eq!(statuses, 3, "every store prints its status address");
    let mut pd = PdClient::new(channel(&pd_addr).await);
    let members = pd.get_members(pdpb::GetMembersRequest::default()).await.unwrap().into_inner();
    let header = Some(pdpb::RequestHeader {
        cluster_id: members.header.unwrap().cluster_id,
        ..Default::default()
    });
    let regions = pd
        .scan_regions(pdpb::ScanRegionsRequest { header: header.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .regions;
    assert_eq!(regions.len(), 4);
    for r in &regions {
        let meta = r.region.as_ref().unwrap();
        for key in [&meta.start_key, &meta.end_key] {
            if !key.is_empty() {
                assert!(memcomparable::decode_bytes(key).is_ok(), "boundary {key:?} is not txn");
            }
        }
    }
    for (key, region_key) in [
        (b"\x90raw".to_vec(), b"\x90raw".to_vec()),
        (b"\x90txn".to_vec(), memcomparable::encode_bytes(b"\x90txn")),
    ] {
        let r = pd
            .get_region(pdpb::GetRegionRequest {
                header: header.clone(),
                region_key: region_key.clone().into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (meta, leader) = (r.region.unwrap(), r.leader.unwrap());
        let store_id = leader.store_id;
        let store = pd
            .get_store(pdpb::GetStoreRequest { header: header.clone(), store_id })
            .await
            .unwrap()
            .into_inner()
            .store
            .unwrap();
        let mut kv = TikvClient::new(channel(&store.address).await);
        let ctx = Some(kvrpcpb::Context {
            region_id: meta.id,
            region_epoch: meta.region_epoch,
            peer: Some(leader),
            ..Default::default()
        });
        if region_key == key {
            let put = kvrpcpb::RawPutRequest {
                context: ctx.clone(),
                key: key.clone().into(),
                value: "raw".into(),
                ..Default::default()
            };
            let resp = kv.raw_put(put).await.unwrap().into_inner();
            assert!(resp.error.is_empty() && resp.region_error.is_none(), "{resp:?}");
        } else {
            let pre = kvrpcpb::PrewriteRequest {
                context: ctx.clone(),
                mutations: vec![kvrpcpb::Mutation {
                    op: kvrpcpb::Op::Put as i32,
                    key: key.clone().into(),
                    value: "txn".into(),
                    ..Default::default()
                }],
                primary_lock: key.clone().into(),
                start_version: 10,
                lock_ttl: 3000,
                ..Default::default()
            };
            let resp = kv.kv_prewrite(pre).await.unwrap().into_inner();
            assert!(resp.errors.is_empty() && resp.region_error.is_none(), "{resp:?}");
            let commit = kvrpcpb::CommitRequest {
                context: ctx.clone(),
                keys: vec![key.clone().into()],
                start_version: 10,
                commit_version: 11,
                ..Default::default()
            };
            let resp = kv.kv_commit(commit).await.unwrap().into_inner();
            assert!(resp.error.is_none() && resp.region_error.is_none(), "{resp:?}");
            let get = kvrpcpb::GetRequest {
                context: ctx.clone(),
                key: key.clone().into(),
                version: 12,
                ..Default::default()
            };
            let resp = kv.kv_get(get).await.unwrap().into_inner();
            assert_eq!(&resp.value[..], b"txn", "{resp:?}");
        }
    }
}
