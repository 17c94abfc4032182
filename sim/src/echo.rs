//! The echo cluster (benchmark B1): a store and a PD that do no
//! work, served over gRPC like [`crate::server`].
//!
//! The simulated cluster (`tikv-sim`) runs a real MVCC model behind every
//! request, so against it a fast client is soon bounded by the server's
//! single core. To see what the client itself costs, the benchmark also runs
//! every cell against this server, whose answers are canned:
//! - the `Tikv` service answers `BatchCommands` inline, one response message
//!   per inbound message under the same request ids (as TiKV's
//!   `BatchCommands` does), and the unary `RawGet` / `RawPut` / `Get` calls:
//!   a get returns a value of the configured length, a put succeeds, a
//!   `RawBatchGet` returns every key with that value, an `Empty` entry echoes
//!   its `test_id`, and anything else gets an entry without a command (TiKV's
//!   answer to a request it cannot parse);
//! - the `PD` service knows one store and one region covering the whole key
//!   space (led by that store), hands out timestamps from the wall clock,
//!   and answers `MetaStorage.Get` with an empty store, so our client,
//!   client-go and tikv-client 0.4 all start against it unchanged.
//!
//! A minimal client on one stream against this server is the "stream echo"
//! of `perf-reliability-anchors.md` §3.3: the ceiling the targets
//! are ratios to. [`EchoCounters`] counts stream messages and entries, so
//! the benchmark can report the average batch size its clients achieved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tikv_proto::meta_storagepb::meta_storage_server::{MetaStorage, MetaStorageServer};
use tikv_proto::pdpb::pd_server::{Pd, PdServer};
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;
use tikv_proto::tikvpb::batch_commands_response::Response as RespEntry;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as RespCmd;
use tikv_proto::tikvpb::tikv_server::{Tikv, TikvServer};
use tikv_proto::tikvpb::{BatchCommandsEmptyResponse, BatchCommandsRequest, BatchCommandsResponse};
use tikv_proto::{kvrpcpb, meta_storagepb, metapb, pdpb};
use tokio::net::TcpListener;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// The echo cluster's id (any fixed value; clients learn it from `GetMembers`).
pub const CLUSTER_ID: u64 = 0x6563_686f;
/// The one store's id.
pub const STORE_ID: u64 = 1;
/// The one region's id.
pub const REGION_ID: u64 = 2;
/// The one region's only peer, on [`STORE_ID`].
const PEER_ID: u64 = 3;

/// What the `BatchCommands` streams have received (all streams together).
#[derive(Debug, Default)]
pub struct EchoCounters {
    /// Streams opened.
    pub streams: AtomicU64,
    /// `BatchCommandsRequest` messages received.
    pub messages: AtomicU64,
    /// Entries in them.
    pub entries: AtomicU64,
}

impl EchoCounters {
    /// `(streams, messages, entries)` so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.streams.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }
}

/// The canned store.
#[derive(Clone, Debug)]
struct EchoTikv {
    value: Bytes,
    counters: Arc<EchoCounters>,
}

impl EchoTikv {
    /// The answer to one entry.
    fn answer(&self, cmd: Option<ReqCmd>) -> Option<RespCmd> {
        Some(match cmd? {
            ReqCmd::RawGet(_) => RespCmd::RawGet(Box::new(kvrpcpb::RawGetResponse {
                value: self.value.clone(),
                ..Default::default()
            })),
            ReqCmd::RawPut(_) => RespCmd::RawPut(Box::default()),
            ReqCmd::RawBatchGet(r) => RespCmd::RawBatchGet(Box::new(self.batch_get(*r))),
            ReqCmd::Get(_) => RespCmd::Get(Box::new(kvrpcpb::GetResponse {
                value: self.value.clone(),
                ..Default::default()
            })),
            ReqCmd::Empty(e) => {
                RespCmd::Empty(Box::new(BatchCommandsEmptyResponse { test_id: e.test_id }))
            }
            _ => return None,
        })
    }

    fn batch_get(&self, r: kvrpcpb::RawBatchGetRequest) -> kvrpcpb::RawBatchGetResponse {
        let pairs = r
            .keys
            .into_iter()
            .map(|key| kvrpcpb::KvPair { key, value: self.value.clone(), ..Default::default() })
            .collect();
        kvrpcpb::RawBatchGetResponse { pairs, ..Default::default() }
    }

    fn answer_message(&self, req: BatchCommandsRequest) -> BatchCommandsResponse {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        self.counters.entries.fetch_add(req.requests.len() as u64, Ordering::Relaxed);
        let responses = req
            .requests
            .into_iter()
            .map(|entry| RespEntry { cmd: self.answer(entry.cmd) })
            .collect();
        BatchCommandsResponse { responses, request_ids: req.request_ids, ..Default::default() }
    }
}

#[tonic::async_trait]
impl Tikv for EchoTikv {
    async fn raw_get(
        &self,
        _request: Request<kvrpcpb::RawGetRequest>,
    ) -> Result<Response<kvrpcpb::RawGetResponse>, Status> {
        Ok(Response::new(kvrpcpb::RawGetResponse {
            value: self.value.clone(),
            ..Default::default()
        }))
    }

    async fn raw_put(
        &self,
        _request: Request<kvrpcpb::RawPutRequest>,
    ) -> Result<Response<kvrpcpb::RawPutResponse>, Status> {
        Ok(Response::new(kvrpcpb::RawPutResponse::default()))
    }

    async fn raw_batch_get(
        &self,
        request: Request<kvrpcpb::RawBatchGetRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchGetResponse>, Status> {
        Ok(Response::new(self.batch_get(request.into_inner())))
    }

    async fn kv_get(
        &self,
        _request: Request<kvrpcpb::GetRequest>,
    ) -> Result<Response<kvrpcpb::GetResponse>, Status> {
        Ok(Response::new(kvrpcpb::GetResponse { value: self.value.clone(), ..Default::default() }))
    }

    /// Each inbound message is answered inline, in order: no task per
    /// message, no queue (the least a server can do per message).
    async fn batch_commands(
        &self,
        request: Request<tonic::Streaming<BatchCommandsRequest>>,
    ) -> Result<Response<BoxStream<BatchCommandsResponse>>, Status> {
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        let svc = self.clone();
        let out = futures::stream::unfold(Some(request.into_inner()), move |state| {
            let svc = svc.clone();
            async move {
                let mut inbound = state?;
                match inbound.message().await {
                    Ok(Some(req)) => Some((Ok(svc.answer_message(req)), Some(inbound))),
                    Ok(None) => None,
                    Err(status) => Some((Err(status), None)),
                }
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// The canned PD: one member, one store, one region.
#[derive(Clone, Debug)]
struct EchoPd {
    pd_url: String,
    store_addr: String,
}

impl EchoPd {
    fn header() -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader { cluster_id: CLUSTER_ID, error: None })
    }

    fn member(&self) -> pdpb::Member {
        pdpb::Member {
            name: "echo-pd".to_owned(),
            member_id: 1,
            peer_urls: vec![self.pd_url.clone()],
            client_urls: vec![self.pd_url.clone()],
            ..Default::default()
        }
    }

    fn peer() -> metapb::Peer {
        metapb::Peer { id: PEER_ID, store_id: STORE_ID, ..Default::default() }
    }

    /// The one region: the whole key space.
    fn region() -> metapb::Region {
        metapb::Region {
            id: REGION_ID,
            region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
            peers: vec![Self::peer()],
            ..Default::default()
        }
    }

    fn region_response() -> pdpb::GetRegionResponse {
        pdpb::GetRegionResponse {
            header: Self::header(),
            region: Some(Self::region()),
            leader: Some(Self::peer()),
            ..Default::default()
        }
    }

    fn store(&self) -> metapb::Store {
        metapb::Store {
            id: STORE_ID,
            address: self.store_addr.clone(),
            peer_address: self.store_addr.clone(),
            state: metapb::StoreState::Up as i32,
            node_state: metapb::NodeState::Serving as i32,
            version: "8.5.0-echo".to_owned(),
            ..Default::default()
        }
    }

    fn pd_region() -> pdpb::Region {
        pdpb::Region {
            region: Some(Self::region()),
            leader: Some(Self::peer()),
            ..Default::default()
        }
    }
}

/// Milliseconds since the Unix epoch (the physical part of a timestamp).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// PD's logical counter width: 18 bits.
const MAX_LOGICAL: i64 = 1 << 18;

#[tonic::async_trait]
impl Pd for EchoPd {
    async fn get_members(
        &self,
        _request: Request<pdpb::GetMembersRequest>,
    ) -> Result<Response<pdpb::GetMembersResponse>, Status> {
        Ok(Response::new(pdpb::GetMembersResponse {
            header: Self::header(),
            members: vec![self.member()],
            leader: Some(self.member()),
            etcd_leader: Some(self.member()),
            ..Default::default()
        }))
    }

    async fn get_cluster_info(
        &self,
        _request: Request<pdpb::GetClusterInfoRequest>,
    ) -> Result<Response<pdpb::GetClusterInfoResponse>, Status> {
        Ok(Response::new(pdpb::GetClusterInfoResponse {
            header: Self::header(),
            service_modes: vec![pdpb::ServiceMode::PdSvcMode as i32],
            tso_urls: Vec::new(),
        }))
    }

    async fn get_region(
        &self,
        _request: Request<pdpb::GetRegionRequest>,
    ) -> Result<Response<pdpb::GetRegionResponse>, Status> {
        Ok(Response::new(Self::region_response()))
    }

    async fn get_prev_region(
        &self,
        _request: Request<pdpb::GetRegionRequest>,
    ) -> Result<Response<pdpb::GetRegionResponse>, Status> {
        // Nothing precedes the region that covers everything.
        Ok(Response::new(pdpb::GetRegionResponse { header: Self::header(), ..Default::default() }))
    }

    async fn get_region_by_id(
        &self,
        request: Request<pdpb::GetRegionByIdRequest>,
    ) -> Result<Response<pdpb::GetRegionResponse>, Status> {
        if request.get_ref().region_id == REGION_ID {
            Ok(Response::new(Self::region_response()))
        } else {
            Ok(Response::new(pdpb::GetRegionResponse {
                header: Self::header(),
                ..Default::default()
            }))
        }
    }

    async fn scan_regions(
        &self,
        _request: Request<pdpb::ScanRegionsRequest>,
    ) -> Result<Response<pdpb::ScanRegionsResponse>, Status> {
        Ok(Response::new(pdpb::ScanRegionsResponse {
            header: Self::header(),
            region_metas: vec![Self::region()],
            leaders: vec![Self::peer()],
            regions: vec![Self::pd_region()],
        }))
    }

    async fn batch_scan_regions(
        &self,
        _request: Request<pdpb::BatchScanRegionsRequest>,
    ) -> Result<Response<pdpb::BatchScanRegionsResponse>, Status> {
        Ok(Response::new(pdpb::BatchScanRegionsResponse {
            header: Self::header(),
            regions: vec![Self::pd_region()],
        }))
    }

    async fn get_store(
        &self,
        request: Request<pdpb::GetStoreRequest>,
    ) -> Result<Response<pdpb::GetStoreResponse>, Status> {
        let store_id = request.get_ref().store_id;
        if store_id != STORE_ID {
            return Err(Status::unknown(format!("invalid store ID {store_id}, not found")));
        }
        Ok(Response::new(pdpb::GetStoreResponse {
            header: Self::header(),
            store: Some(self.store()),
            stats: Some(pdpb::StoreStats { store_id, ..Default::default() }),
        }))
    }

    async fn get_all_stores(
        &self,
        _request: Request<pdpb::GetAllStoresRequest>,
    ) -> Result<Response<pdpb::GetAllStoresResponse>, Status> {
        Ok(Response::new(pdpb::GetAllStoresResponse {
            header: Self::header(),
            stores: vec![self.store()],
        }))
    }

    /// One answer per request, in order: the last timestamp of a block of
    /// `count`, never going back (PD's allocator, without its persistence).
    async fn tso(
        &self,
        request: Request<tonic::Streaming<pdpb::TsoRequest>>,
    ) -> Result<Response<BoxStream<pdpb::TsoResponse>>, Status> {
        let out =
            futures::stream::unfold(Some((request.into_inner(), (0i64, 0i64))), |state| async {
                let (mut inbound, (mut physical, mut logical)) = state?;
                match inbound.message().await {
                    Ok(Some(req)) => {
                        let count = i64::from(req.count);
                        if count == 0 || count >= MAX_LOGICAL {
                            let status = Status::unknown("tso count out of range");
                            return Some((Err(status), None));
                        }
                        let now = wall_ms();
                        if now > physical {
                            (physical, logical) = (now, 0);
                        }
                        if logical + count >= MAX_LOGICAL {
                            (physical, logical) = (physical + 1, 0);
                        }
                        logical += count;
                        let resp = pdpb::TsoResponse {
                            header: Self::header(),
                            count: req.count,
                            timestamp: Some(pdpb::Timestamp { physical, logical, suffix_bits: 0 }),
                        };
                        Some((Ok(resp), Some((inbound, (physical, logical)))))
                    }
                    Ok(None) => None,
                    Err(status) => Some((Err(status), None)),
                }
            });
        Ok(Response::new(Box::pin(out)))
    }
}

/// client-go's PD client reads its microservice registry at startup; like a
/// PD without microservices, the echo PD's store is empty.
#[tonic::async_trait]
impl MetaStorage for EchoPd {
    async fn get(
        &self,
        _request: Request<meta_storagepb::GetRequest>,
    ) -> Result<Response<meta_storagepb::GetResponse>, Status> {
        Ok(Response::new(crate::server::empty_meta_storage_get(CLUSTER_ID)))
    }
}

/// A running echo cluster: PD and store listeners on loopback.
#[derive(Debug)]
pub struct EchoServer {
    /// PD's address.
    pub pd: SocketAddr,
    /// The store's address.
    pub store: SocketAddr,
    /// The store's stream counters.
    pub counters: Arc<EchoCounters>,
}

impl EchoServer {
    /// Binds both listeners (port 0: ephemeral) and serves them on the
    /// current tokio runtime until it shuts down. Gets answer values of
    /// `value_len` bytes.
    pub async fn start(pd: SocketAddr, value_len: usize) -> std::io::Result<EchoServer> {
        let pd_listener = TcpListener::bind(pd).await?;
        let store_listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let (pd, store) = (pd_listener.local_addr()?, store_listener.local_addr()?);
        let counters = Arc::new(EchoCounters::default());
        let tikv =
            EchoTikv { value: Bytes::from(vec![b'v'; value_len]), counters: counters.clone() };
        let pd_svc = EchoPd { pd_url: format!("http://{pd}"), store_addr: store.to_string() };
        let store_router = tonic::transport::Server::builder().add_service(TikvServer::new(tikv));
        let pd_router = tonic::transport::Server::builder()
            .add_service(PdServer::new(pd_svc.clone()))
            .add_service(MetaStorageServer::new(pd_svc));
        tokio::spawn(store_router.serve_with_incoming(incoming(store_listener)));
        tokio::spawn(pd_router.serve_with_incoming(incoming(pd_listener)));
        Ok(EchoServer { pd, store, counters })
    }
}

/// Accepted connections with Nagle off (a benchmark of small messages).
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((conn, listener))
    })
}
