//! The gRPC face: the same [`Cluster`] served over tonic on loopback.
//!
//! One listener per PD member (the `PD`, `Keyspace` and `MetaStorage`
//! services share it; `MetaStorage` serves `Get` over an empty store) and
//! two per store: gRPC (the `Tikv` service and gRPC health) and the status
//! address (HTTP `/status` and `/config`, whose address the store reports
//! to PD as TiKV's `status-addr`). Every unary method forwards to
//! [`Cluster::handle_kv`] / [`Cluster::handle_pd`]; the `Tso` stream answers
//! each request message with one response, in order, and ends with the
//! error status PD would send. Methods the model does not serve answer
//! `Unimplemented` (the generated default stubs).
//!
//! `PessimisticLock` waits here for a conflicting lock: the model parks it
//! ([`crate::lock_wait`]); every command that may release a lock wakes the
//! parked calls, which collect their answers from the model, and a parked
//! call fires the model's lock-wait deadlines on the wall clock.
//! `BatchCommands` follows TiKV's `src/server/service/kv.rs`: every entry of
//! an inbound message is handled (here synchronously, by
//! [`Cluster::handle_kv`]) and the answers go back in one
//! `BatchCommandsResponse` per inbound message, under the same request ids,
//! with a `transport_layer_load` of 0 (the model has no thread pool to
//! load); a `PessimisticLock` entry that waits for a lock answers later in
//! a message of its own, so it holds up none of its message's other
//! entries. An `Empty` entry is echoed with its `test_id`; an entry this
//! model does not execute (coprocessor, GC, import, flush, ...)
//! gets its own response type carrying an error
//! (`TikvService::unserved_entry`), and an entry without a command an
//! answer without one, as TiKV answers requests it cannot parse. A
//! transport fault from the model (a stopped store, an injected error) ends
//! the stream with that status, so every request on it fails, as when a
//! real store's stream breaks. [`SimServer::batch_stats`] counts messages
//! and requests, so tests can see that batching happened.
//!
//! Time: the model clock is the wall time elapsed since [`SimServer::start`],
//! mapped explicitly onto [`tikv_core::time::Instant`] (the only place that
//! reads a clock).
//!
//! Stopping a store closes its listener and kills its open connections (the
//! sockets are dropped, so clients see resets and then refused connections,
//! like a crashed TiKV, and its gRPC health probe fails to connect);
//! starting it again listens on the same address.
//!
//! A slow store ([`Cluster::set_store_latency`]) waits its latency before
//! it handles each unary TiKV request and each `BatchCommands` message (so
//! a stream's later messages queue behind it, as on a store whose disk
//! stalls); its health probe still answers at once, as TiKV's does. Every
//! answered probe is counted ([`Cluster::health_check_count`]). A
//! black-holed store ([`Cluster::set_store_black_hole`]) accepts
//! connections and requests but answers nothing, probes included, until
//! the black hole ends.
//!
//! Forwarding follows TiKV's `kv.rs`: a call carrying the
//! `tikv-forwarded-host` metadata is served by the store at that address,
//! whose answer comes back through the store that received it (a unary
//! call as `forward_unary` does, a `BatchCommands` stream as a whole, as
//! TiKV forwards the stream to the host); the receiving store counts it
//! ([`Cluster::forwarded_count`]). TiKV forwards over its own gRPC
//! connection to the leader's store; here the hand-over is in-process, to
//! that store's service. A client cut off from one store
//! ([`Cluster::cut_client_from_store`]) gets `UNAVAILABLE` for every call
//! to it, health probes included (a simplification of a partition, whose
//! connections would be refused or time out: the client sees the same
//! send failure), while calls forwarded to it are served.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tikv_core::rpc::batch::{from_batch_cmd, response_to_batch};
use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse, RpcError};
use tikv_core::time::Instant;
use tikv_proto::health::health_check_response::ServingStatus;
use tikv_proto::health::health_server::{Health, HealthServer};
use tikv_proto::health::{HealthCheckRequest, HealthCheckResponse};
use tikv_proto::keyspacepb::keyspace_server::{Keyspace, KeyspaceServer};
use tikv_proto::meta_storagepb::meta_storage_server::{MetaStorage, MetaStorageServer};
use tikv_proto::pdpb::pd_server::{Pd, PdServer};
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;
use tikv_proto::tikvpb::batch_commands_response::Response as RespEntry;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as RespCmd;
use tikv_proto::tikvpb::tikv_server::{Tikv, TikvServer};
use tikv_proto::tikvpb::{BatchCommandsEmptyResponse, BatchCommandsRequest, BatchCommandsResponse};
use tikv_proto::{coprocessor, keyspacepb, kvrpcpb, meta_storagepb, pdpb};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::codegen::BoxStream;
use tonic::transport::server::{Connected, Router, TcpConnectInfo};
use tonic::{Request, Response, Status};

use crate::Cluster;
use crate::lock_wait::{KvAnswer, LockWaitToken};
use crate::tls::ServerTls;

/// Where to listen. Missing entries listen on `127.0.0.1:0` (an ephemeral port).
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// One address per PD member, by member index.
    pub pd_addrs: Vec<SocketAddr>,
    /// Store id → address.
    pub store_addrs: BTreeMap<u64, SocketAddr>,
    /// Extra latency of every `Tso` answer (a PD farther away than
    /// loopback), for benchmarks; zero by default.
    pub tso_latency: Duration,
    /// Serve TLS on every PD and store listener (PD members then advertise
    /// `https://` URLs); cleartext when unset.
    pub tls: Option<ServerTls>,
}

/// Why the server could not start or restart a listener.
#[derive(Debug)]
pub enum ServerError {
    /// Binding a listener failed.
    Bind(SocketAddr, io::Error),
    /// No store with this id in the cluster.
    NoSuchStore(u64),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::NoSuchStore(id) => write!(f, "no store {id}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// Maps wall time since server start onto the model clock.
#[derive(Clone, Copy, Debug)]
struct WallClock(std::time::Instant);

impl WallClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// The gRPC status a model transport error becomes.
fn to_status(e: RpcError) -> Status {
    match e {
        RpcError::Unavailable(m) => Status::unavailable(m),
        RpcError::DeadlineExceeded => Status::deadline_exceeded("deadline exceeded"),
        RpcError::Canceled => Status::cancelled("canceled"),
        RpcError::Decode(m) => Status::internal(m),
        RpcError::Unimplemented(m) => Status::unimplemented(m),
        RpcError::Status { code, message } => Status::new(tonic::Code::from_i32(code), message),
        RpcError::Mismatch => Status::internal("response does not match the request"),
        RpcError::NoTimestamp(e) => Status::unavailable(e.to_string()),
        RpcError::NotNetwork(m) => Status::invalid_argument(format!("{m} is not a network call")),
        RpcError::Tls(m) => Status::unavailable(m),
        RpcError::Rejected(m) => Status::permission_denied(m),
    }
}

/// A `PessimisticLock` answered now or parked by the model.
enum Started {
    Done(KvResponse),
    Parked(ParkedLock),
}

/// A parked `PessimisticLock`. Dropping it before its answer (a closed
/// connection drops the call) makes the model forget the wait.
struct ParkedLock {
    svc: TikvService,
    token: LockWaitToken,
}

impl ParkedLock {
    /// Holds the call until the model has its answer: woken by a command
    /// of any connection, or by a deadline this task fires on the wall
    /// clock.
    async fn answer(self) -> KvResponse {
        let svc = &self.svc;
        let mut notified = std::pin::pin!(svc.released.notified());
        loop {
            notified.as_mut().enable();
            if let Some(resp) = svc.cluster.take_lock_wait_answer(self.token) {
                return KvResponse::PessimisticLock(Box::new(resp));
            }
            let next = svc.cluster.next_lock_wait_deadline();
            let sleep = next.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(svc.clock.now())
            });
            tokio::select! {
                () = notified.as_mut() => {}
                () = tokio::time::sleep(sleep) => {
                    svc.cluster.advance_lock_waits(svc.clock.now());
                    svc.released.notify_waiters();
                }
            }
            notified.set(svc.released.notified());
        }
    }
}

impl Drop for ParkedLock {
    fn drop(&mut self) {
        self.svc.cluster.cancel_lock_wait(self.token);
    }
}

/// Where a `BatchCommands` stream's answers go.
type Answers = futures::channel::mpsc::UnboundedSender<Result<BatchCommandsResponse, Status>>;

/// Store-side admin RPCs that need PD: the joined mode's stores split
/// through the real PD (`AskBatchSplit`, see [`crate::join`]); with the
/// model's own PD, [`Cluster::handle_kv`] serves them.
pub(crate) trait StoreAdmin: Send + Sync + std::fmt::Debug {
    /// TiKV's `SplitRegion` on `store_id`.
    fn split_region(
        &self,
        store_id: u64,
        req: kvrpcpb::SplitRegionRequest,
    ) -> Pin<Box<dyn Future<Output = kvrpcpb::SplitRegionResponse> + Send + '_>>;
}

/// The requests the stores have seen (all stores together): on `BatchCommands`
/// streams and as unary calls.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// `BatchCommands` streams opened.
    pub streams: u64,
    /// `BatchCommandsRequest` messages received.
    pub messages: u64,
    /// Entries in them (requests, probes included).
    pub requests: u64,
    /// Requests that came as unary calls instead (every TiKV method but
    /// `BatchCommands` and the store-level ones).
    pub unary: u64,
}

#[derive(Debug, Default)]
struct BatchCounters {
    streams: AtomicU64,
    messages: AtomicU64,
    requests: AtomicU64,
    unary: AtomicU64,
}

/// The `Tikv` service of one store.
#[derive(Clone, Debug)]
struct TikvService {
    cluster: Cluster,
    store_id: u64,
    clock: WallClock,
    /// Woken after every command that may release a lock (shared by all
    /// stores: a lock waited for on one store may be released through another
    /// after a leader change).
    released: Arc<Notify>,
    counters: Arc<BatchCounters>,
    admin: Option<Arc<dyn StoreAdmin>>,
    /// The store that received the call and forwards it to this one.
    forwarded_by: Option<u64>,
}

/// The metadata asking a store to forward a call (TiKV's
/// `FORWARD_METADATA_KEY`).
const FORWARD_METADATA_KEY: &str = "tikv-forwarded-host";

impl TikvService {
    /// The service that serves a call arriving at this store with
    /// `metadata` (module docs): the forwarded host's store if the call
    /// names one, else this store unless the client is cut off from it.
    fn serving(&self, metadata: &tonic::metadata::MetadataMap) -> Result<TikvService, Status> {
        let Some(host) = metadata.get(FORWARD_METADATA_KEY) else {
            if self.cluster.is_client_cut(self.store_id) {
                return Err(Status::unavailable(format!(
                    "store {} is cut off from the client",
                    self.store_id
                )));
            }
            return Ok(self.clone());
        };
        let host = host
            .to_str()
            .map_err(|_| Status::invalid_argument("tikv-forwarded-host is not ASCII"))?;
        let store_id = self
            .cluster
            .forward_target(self.store_id, host)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(TikvService { store_id, forwarded_by: Some(self.store_id), ..self.clone() })
    }

    /// This store's health feedback ([`Cluster::health_feedback`]), as
    /// TiKV attaches it to `BatchCommands` answers. TiKV attaches feedback
    /// at most once per `health_feedback_interval` (1 s); this model to
    /// every answer message.
    fn health_feedback(&self) -> kvrpcpb::HealthFeedback {
        self.cluster.health_feedback(self.store_id)
    }

    /// Waits the store's latency ([`Cluster::set_store_latency`]), after
    /// any black hole ([`wait_out_black_hole`]).
    async fn slow_down(&self) {
        wait_out_black_hole(&self.cluster, self.store_id).await;
        let latency = self.cluster.store_latency(self.store_id);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// A unary TiKV request: the store's latency, then the request.
    async fn call(&self, req: KvRequest) -> Result<KvResponse, Status> {
        self.slow_down().await;
        self.handle(req).await
    }

    /// One request, without the store's latency (a `BatchCommands` entry:
    /// its message waited it once for all its entries).
    async fn handle(&self, req: KvRequest) -> Result<KvResponse, Status> {
        if let KvRequest::PessimisticLock(r) = req {
            return Ok(match self.start_lock(*r)? {
                Started::Done(resp) => resp,
                Started::Parked(parked) => parked.answer().await,
            });
        }
        if let (KvRequest::SplitRegion(r), Some(admin)) = (&req, &self.admin) {
            if !self.cluster.is_store_running(self.store_id) {
                return Err(Status::unavailable(format!("store {} is stopped", self.store_id)));
            }
            let resp = admin.split_region(self.store_id, (**r).clone()).await;
            return Ok(KvResponse::SplitRegion(Box::new(resp)));
        }
        let releases =
            !matches!(req, KvRequest::Get(_) | KvRequest::BatchGet(_) | KvRequest::Scan(_));
        let resp = self.cluster.handle_kv(self.store_id, req, self.clock.now());
        if releases {
            self.released.notify_waiters();
        }
        resp.map_err(to_status)
    }

    /// Starts a `PessimisticLock` with TiKV's lock waiting, as the model
    /// keeps it ([`crate::lock_wait`]): answered now, or parked until
    /// [`ParkedLock::answer`].
    fn start_lock(&self, r: kvrpcpb::PessimisticLockRequest) -> Result<Started, Status> {
        let answer = self.cluster.handle_kv_waiting(
            self.store_id,
            KvRequest::PessimisticLock(Box::new(r)),
            self.clock.now(),
        );
        // Taking a key changes what its waiters wait for, which may answer
        // one (a force-lock waiter's new wait can close a cycle).
        self.released.notify_waiters();
        Ok(match answer.map_err(to_status)? {
            KvAnswer::Ready(resp) => Started::Done(resp),
            KvAnswer::Waiting(token) => Started::Parked(ParkedLock { svc: self.clone(), token }),
        })
    }

    /// Answers one inbound message (module docs): `None` when every entry
    /// is a parked `PessimisticLock`, each of which answers in a message of
    /// its own through `late` once woken, as TiKV answers entries
    /// independently.
    async fn batch(
        &self,
        req: BatchCommandsRequest,
        late: &Answers,
    ) -> Result<Option<BatchCommandsResponse>, Status> {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        self.counters.requests.fetch_add(req.requests.len() as u64, Ordering::Relaxed);
        match self.forwarded_by {
            Some(proxy) => self.cluster.count_forwarded(proxy, req.requests.len() as u64),
            // A stream the client opened before the cut breaks at its next
            // message.
            None if self.cluster.is_client_cut(self.store_id) => {
                return Err(Status::unavailable(format!(
                    "store {} is cut off from the client",
                    self.store_id
                )));
            }
            None => {}
        }
        self.slow_down().await;
        let mut responses = Vec::with_capacity(req.requests.len());
        let mut request_ids = Vec::with_capacity(req.requests.len());
        for (entry, id) in req.requests.into_iter().zip(req.request_ids) {
            let cmd = match entry.cmd {
                // TiKV answers an entry it cannot parse (no command, or one
                // newer than its kvproto) with an empty response.
                None => None,
                Some(cmd) => match self.unserved_entry(&cmd) {
                    Some(answer) => Some(answer),
                    None => match from_batch_cmd(cmd) {
                        Ok(KvRequest::PessimisticLock(r)) => match self.start_lock(*r)? {
                            Started::Done(resp) => response_to_batch(resp),
                            Started::Parked(parked) => {
                                let late = late.clone();
                                tokio::spawn(async move {
                                    let cmd = response_to_batch(parked.answer().await);
                                    let _ = late.unbounded_send(Ok(BatchCommandsResponse {
                                        responses: vec![RespEntry { cmd }],
                                        request_ids: vec![id],
                                        transport_layer_load: 0,
                                        ..Default::default()
                                    }));
                                });
                                continue;
                            }
                        },
                        Ok(request) => response_to_batch(self.handle(request).await?),
                        Err(ReqCmd::Empty(empty)) => {
                            Some(RespCmd::Empty(Box::new(BatchCommandsEmptyResponse {
                                test_id: empty.test_id,
                            })))
                        }
                        Err(_) => None,
                    },
                },
            };
            responses.push(RespEntry { cmd });
            request_ids.push(id);
        }
        if responses.is_empty() {
            return Ok(None);
        }
        Ok(Some(BatchCommandsResponse {
            responses,
            request_ids,
            transport_layer_load: 0,
            health_feedback: Some(self.health_feedback()),
            ..Default::default()
        }))
    }

    /// The answer to a `BatchCommands` entry the model does not execute:
    /// TiKV serves every command, so the client gets the response type it
    /// asked for, carrying an error in that response's own error field (an
    /// answer without a command is client-go's "Unknown command response").
    /// `None` for the commands the model executes and `Empty`.
    fn unserved_entry(&self, cmd: &ReqCmd) -> Option<RespCmd> {
        let why = |name: &str| format!("{name} is not implemented by the simulator");
        let key_error = |name: &str| kvrpcpb::KeyError { abort: why(name), ..Default::default() };
        Some(match cmd {
            ReqCmd::Import(_) => RespCmd::Import(Box::new(kvrpcpb::ImportResponse {
                error: why("Import"),
                ..Default::default()
            })),
            ReqCmd::Gc(_) => RespCmd::Gc(Box::new(kvrpcpb::GcResponse {
                error: Some(key_error("GC")),
                ..Default::default()
            })),
            ReqCmd::Coprocessor(_) => RespCmd::Coprocessor(Box::new(coprocessor::Response {
                other_error: why("Coprocessor"),
                ..Default::default()
            })),
            ReqCmd::RawCoprocessor(_) => {
                RespCmd::RawCoprocessor(Box::new(kvrpcpb::RawCoprocessorResponse {
                    error: why("RawCoprocessor"),
                    ..Default::default()
                }))
            }
            ReqCmd::FlashbackToVersion(_) => {
                RespCmd::FlashbackToVersion(Box::new(kvrpcpb::FlashbackToVersionResponse {
                    error: why("FlashbackToVersion"),
                    ..Default::default()
                }))
            }
            ReqCmd::PrepareFlashbackToVersion(_) => RespCmd::PrepareFlashbackToVersion(Box::new(
                kvrpcpb::PrepareFlashbackToVersionResponse {
                    error: why("PrepareFlashbackToVersion"),
                    ..Default::default()
                },
            )),
            _ => return None,
        })
    }

    /// One answer message per inbound message; the first error ends the
    /// stream with its status. Messages are handled concurrently (TiKV runs
    /// every entry on its own), so a `PessimisticLock` waiting for a lock
    /// does not hold up the commit that would release it on the same
    /// stream; answers go out as they are ready.
    fn batch_stream(
        &self,
        mut inbound: tonic::Streaming<BatchCommandsRequest>,
    ) -> BoxStream<BatchCommandsResponse> {
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<BatchCommandsResponse, Status>>();
        let svc = self.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(req)) => {
                        let (svc, tx) = (svc.clone(), tx.clone());
                        tokio::spawn(async move {
                            match svc.batch(req, &tx).await {
                                Ok(None) => {}
                                Ok(Some(resp)) => {
                                    let _ = tx.unbounded_send(Ok(resp));
                                }
                                Err(status) => {
                                    let _ = tx.unbounded_send(Err(status));
                                }
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.unbounded_send(Err(status));
                        break;
                    }
                }
            }
        });
        let out = futures::stream::unfold(Some(rx), |state| async move {
            let mut rx = state?;
            match futures::StreamExt::next(&mut rx).await? {
                Ok(resp) => Some((Ok(resp), Some(rx))),
                // The first error ends the stream, as a broken TiKV stream does.
                Err(status) => Some((Err(status), None)),
            }
        });
        Box::pin(out)
    }
}

macro_rules! tikv_methods {
    ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        #[tonic::async_trait]
        impl Tikv for TikvService {
            $(
                async fn $method(
                    &self,
                    request: Request<kvrpcpb::$req>,
                ) -> Result<Response<kvrpcpb::$resp>, Status> {
                    self.counters.unary.fetch_add(1, Ordering::Relaxed);
                    let svc = self.serving(request.metadata())?;
                    if let Some(proxy) = svc.forwarded_by {
                        self.cluster.count_forwarded(proxy, 1);
                    }
                    match svc.call(KvRequest::$variant(Box::new(request.into_inner()))).await? {
                        KvResponse::$variant(r) => Ok(Response::new(*r)),
                        _ => Err(Status::internal("response does not match the request")),
                    }
                }
            )*

            async fn batch_commands(
                &self,
                request: Request<tonic::Streaming<BatchCommandsRequest>>,
            ) -> Result<Response<BoxStream<BatchCommandsResponse>>, Status> {
                let svc = self.serving(request.metadata())?;
                Ok(Response::new(svc.batch_stream(request.into_inner())))
            }

            /// TiKV's `GetStoreSafeTS`: the smallest safe ts of this store's
            /// peers in the key range ([`Cluster::get_store_safe_ts`]).
            async fn get_store_safe_ts(
                &self,
                request: Request<kvrpcpb::StoreSafeTsRequest>,
            ) -> Result<Response<kvrpcpb::StoreSafeTsResponse>, Status> {
                if self.cluster.is_client_cut(self.store_id) {
                    return Err(Status::unavailable("cut off from the client"));
                }
                self.cluster
                    .get_store_safe_ts(self.store_id, &request.into_inner(), self.clock.now())
                    .map(Response::new)
                    .map_err(|e| Status::unavailable(e.to_string()))
            }
        }
    };
}
tikv_core::for_each_kv_rpc!(tikv_methods);

/// The `PD` and `Keyspace` services of one PD member.
#[derive(Clone, Debug)]
struct PdService {
    cluster: Cluster,
    member: usize,
    clock: WallClock,
    /// Unary requests served by every member (all but `Tso`).
    unary_calls: Arc<AtomicU64>,
    tso_latency: Duration,
}

impl PdService {
    fn call(&self, req: PdRequest) -> Result<PdResponse, Status> {
        self.cluster.handle_pd(self.member, req, self.clock.now()).map_err(to_status)
    }

    fn unary(&self, req: PdRequest) -> Result<PdResponse, Status> {
        self.unary_calls.fetch_add(1, Ordering::Relaxed);
        self.call(req)
    }

    /// One response per request message, in order; the first error ends the
    /// stream with its status (PD's `Tso` returns the error from the handler).
    fn tso_stream(
        &self,
        inbound: tonic::Streaming<pdpb::TsoRequest>,
    ) -> BoxStream<pdpb::TsoResponse> {
        if !self.tso_latency.is_zero() {
            return self.delayed_tso_stream(inbound);
        }
        let svc = self.clone();
        let out = futures::stream::unfold(Some(inbound), move |state| {
            let svc = svc.clone();
            async move {
                let mut inbound = state?;
                match inbound.message().await {
                    Ok(Some(req)) => match svc.call(PdRequest::Tso(Box::new(req))) {
                        Ok(PdResponse::Tso(r)) => Some((Ok(*r), Some(inbound))),
                        Ok(_) => Some((
                            Err(Status::internal("response does not match the request")),
                            None,
                        )),
                        Err(status) => Some((Err(status), None)),
                    },
                    Ok(None) => None,
                    Err(status) => Some((Err(status), None)),
                }
            }
        });
        Box::pin(out)
    }
}

impl PdService {
    /// The `Tso` stream with each answer held back [`ServerOptions::tso_latency`]
    /// after its request arrived: answers stay in order, and the latencies
    /// of pipelined requests overlap as they do on a network. Timed by a
    /// thread per stream, because tokio's timer ticks every millisecond,
    /// coarser than the sub-millisecond latencies benchmarks ask for.
    fn delayed_tso_stream(
        &self,
        mut inbound: tonic::Streaming<pdpb::TsoRequest>,
    ) -> BoxStream<pdpb::TsoResponse> {
        type Answer = Result<pdpb::TsoResponse, Status>;
        let latency = self.tso_latency;
        let (out, answers) = tokio::sync::mpsc::unbounded_channel::<Answer>();
        let (line, due) = std::sync::mpsc::channel::<(std::time::Instant, Answer)>();
        std::thread::spawn(move || {
            for (at, answer) in due {
                std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
                if out.send(answer).is_err() {
                    return;
                }
            }
        });
        let svc = self.clone();
        tokio::spawn(async move {
            loop {
                let answer = match inbound.message().await {
                    Ok(Some(req)) => match svc.call(PdRequest::Tso(Box::new(req))) {
                        Ok(PdResponse::Tso(r)) => Ok(*r),
                        Ok(_) => Err(Status::internal("response does not match the request")),
                        Err(status) => Err(status),
                    },
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                // The first error ends the stream, as in `tso_stream`.
                let last = answer.is_err();
                if line.send((std::time::Instant::now() + latency, answer)).is_err() || last {
                    return;
                }
            }
        });
        let out = futures::stream::unfold(answers, |mut answers| async move {
            answers.recv().await.map(|answer| (answer, answers))
        });
        Box::pin(out)
    }
}

/// Holds a call while its store is black-holed
/// ([`Cluster::set_store_black_hole`]): the connection stays up and the
/// request is read, its answer waits (polled every few milliseconds, as a
/// black hole is a benchmark's and a test's fault, not the model's).
async fn wait_out_black_hole(cluster: &Cluster, store_id: u64) {
    while cluster.is_store_black_holed(store_id) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// gRPC's health service on every store, as TiKV registers it: the server
/// as a whole (service `""`) is SERVING while the store runs (a stopped
/// store's listener is closed, so the probe fails to connect); any other
/// service name is unknown (`NOT_FOUND`, as gRPC's health servers answer).
/// client-go probes it after an RPC error before it marks the store
/// unreachable.
#[derive(Clone, Debug)]
struct HealthService {
    cluster: Cluster,
    store_id: u64,
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if self.cluster.is_client_cut(self.store_id) {
            return Err(Status::unavailable(format!(
                "store {} is cut off from the client",
                self.store_id
            )));
        }
        let service = request.into_inner().service;
        if !service.is_empty() {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        wait_out_black_hole(&self.cluster, self.store_id).await;
        self.cluster.count_health_check(self.store_id);
        Ok(Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }
}

/// The body of TiKV's status server `GET /config` for this cluster: the
/// configuration as TiKV serialises it (`TikvConfig`, kebab-case names),
/// reduced to what the model has: `storage.api-version`,
/// `storage.enable-ttl` (what client-go reads to learn the API version), and
/// the store's addresses under `server`.
fn config_json(cluster: &Cluster, addr: SocketAddr, status_addr: SocketAddr) -> String {
    let cfg = cluster.config();
    let api_version = match cfg.api_version {
        crate::ApiVersion::V1 => 1,
        crate::ApiVersion::V2 => 2,
    };
    let enable_ttl = cfg.enable_ttl || api_version == 2;
    format!(
        "{{\"server\":{{\"addr\":\"{addr}\",\"advertise-addr\":\"{addr}\",\
\"status-addr\":\"{status_addr}\",\"advertise-status-addr\":\"{status_addr}\"}},\
\"storage\":{{\"api-version\":{api_version},\"enable-ttl\":{enable_ttl}}}}}"
    )
}

/// Answers one HTTP/1.1 connection of a store's status server: `GET
/// /status` (200, empty body, as TiKV's liveness answer), `GET /config`
/// ([`config_json`]), 404 otherwise; one request per connection.
async fn serve_status_connection(mut conn: TcpStream, cluster: Cluster, addr: SocketAddr) {
    let Ok(status_addr) = conn.local_addr() else { return };
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // The request head ends with an empty line; 16 KiB is plenty for a GET.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/status") => ("200 OK", String::new()),
        ("GET", "/config") => ("200 OK", config_json(&cluster, addr, status_addr)),
        _ => ("404 Not Found", String::new()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// A store's status server (TiKV's `status-addr`): accepts until aborted.
fn serve_status(listener: TcpListener, cluster: Cluster, addr: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_status_connection(conn, cluster.clone(), addr));
        }
    })
}

/// Stops a status server and waits until its listener is closed (an
/// aborted task's future, which owns the listener, is dropped before its
/// handle resolves).
async fn stop_status(status: JoinHandle<()>) {
    status.abort();
    let _ = status.await;
}

/// Sorts the PD RPC list into the `PD` and `Keyspace` services and emits one
/// trait impl for each (a trait impl cannot be split across blocks).
macro_rules! pd_split {
    (@acc [$($p:tt)*] [$($k:tt)*] ($v:ident, pdpb, $m:ident, $rq:ident, $rs:ident) $($rest:tt)*) => {
        pd_split!(@acc [$($p)* ($v, $m, $rq, $rs)] [$($k)*] $($rest)*);
    };
    (@acc [$($p:tt)*] [$($k:tt)*] ($v:ident, keyspacepb, $m:ident, $rq:ident, $rs:ident) $($rest:tt)*) => {
        pd_split!(@acc [$($p)*] [$($k)* ($v, $m, $rq, $rs)] $($rest)*);
    };
    (@acc [$(($pv:ident, $pm:ident, $prq:ident, $prs:ident))*] [$(($kv:ident, $km:ident, $krq:ident, $krs:ident))*]) => {
        #[tonic::async_trait]
        impl Pd for PdService {
            $(
                async fn $pm(&self, request: Request<pdpb::$prq>) -> Result<Response<pdpb::$prs>, Status> {
                    match self.unary(PdRequest::$pv(Box::new(request.into_inner())))? {
                        PdResponse::$pv(r) => Ok(Response::new(*r)),
                        _ => Err(Status::internal("response does not match the request")),
                    }
                }
            )*

            async fn tso(
                &self,
                request: Request<tonic::Streaming<pdpb::TsoRequest>>,
            ) -> Result<Response<BoxStream<pdpb::TsoResponse>>, Status> {
                Ok(Response::new(self.tso_stream(request.into_inner())))
            }
        }

        #[tonic::async_trait]
        impl Keyspace for PdService {
            $(
                async fn $km(&self, request: Request<keyspacepb::$krq>) -> Result<Response<keyspacepb::$krs>, Status> {
                    match self.unary(PdRequest::$kv(Box::new(request.into_inner())))? {
                        PdResponse::$kv(r) => Ok(Response::new(*r)),
                        _ => Err(Status::internal("response does not match the request")),
                    }
                }
            )*
        }
    };
}

/// PD's `MetaStorage` `Get` (PD's `MetaStorageServer.Get`: an etcd range
/// read answered with the cluster id and the store's revision). The model
/// has no etcd: its meta storage is empty, as a PD's is when no
/// microservice (router, TSO, resource manager) has registered itself, so
/// every range reads no keys, at revision 1 (etcd's first). PD clients call
/// it at startup to discover microservices; without it client-go's PD
/// client retries for 5 s before it gives up on the router service.
/// Served by every member (it reads etcd directly, without a leader check).
#[tonic::async_trait]
impl MetaStorage for PdService {
    async fn get(
        &self,
        _request: Request<meta_storagepb::GetRequest>,
    ) -> Result<Response<meta_storagepb::GetResponse>, Status> {
        Ok(Response::new(empty_meta_storage_get(self.cluster.config().cluster_id)))
    }
}

/// The answer of an empty meta storage to any range read: no keys, at
/// revision 1 (etcd's first).
pub(crate) fn empty_meta_storage_get(cluster_id: u64) -> meta_storagepb::GetResponse {
    meta_storagepb::GetResponse {
        header: Some(meta_storagepb::ResponseHeader { cluster_id, error: None, revision: 1 }),
        kvs: Vec::new(),
        more: false,
        count: 0,
    }
}

macro_rules! pd_methods {
    ($(($variant:ident, $svc:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        pd_split!(@acc [] [] $(($variant, $svc, $method, $req, $resp))*);
    };
}
tikv_core::for_each_pd_rpc!(pd_methods);

/// An accepted connection, cleartext or TLS.
enum ServedStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ServedStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            ServedStream::Plain(s) => s,
            ServedStream::Tls(s) => s.get_ref().0,
        }
    }
}

/// Forwards one I/O method to whichever stream this is.
macro_rules! either_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ServedStream::Plain($s) => $e,
            ServedStream::Tls($s) => $e,
        }
    };
}

impl AsyncRead for ServedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ServedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either_stream!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A TCP connection that can be killed from outside: once the kill signal
/// fires, reads and writes fail with `ConnectionReset`, hyper drops the
/// connection and the socket closes.
struct KillableStream {
    inner: ServedStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl KillableStream {
    fn new(inner: ServedStream, mut kill: watch::Receiver<bool>) -> KillableStream {
        let killed = Box::pin(async move {
            // An error means the sender is gone: the listener was torn down.
            let _ = kill.wait_for(|k| *k).await;
        });
        KillableStream { inner, killed }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::ConnectionReset, "store stopped")),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for KillableStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.tcp().connect_info()
    }
}

/// One serving listener.
#[derive(Debug)]
struct Running {
    shutdown: oneshot::Sender<()>,
    kill: watch::Sender<bool>,
    join: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, resets every open connection, waits for the server task.
    async fn stop(self) {
        let _ = self.kill.send(true);
        let _ = self.shutdown.send(());
        let mut join = self.join;
        if tokio::time::timeout(Duration::from_secs(5), &mut join).await.is_err() {
            join.abort();
        }
    }
}

fn serve(listener: TcpListener, router: Router, tls: Option<&ServerTls>) -> Running {
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let (kill, kill_rx) = watch::channel(false);
    // TLS handshakes run on tasks of their own, so a slow or refused
    // client holds up no other connection; refused ones are dropped.
    let (accepted, accepted_rx) = tokio::sync::mpsc::channel::<KillableStream>(16);
    let tls = tls.cloned();
    let accept_loop = async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (accepted, kill_rx) = (accepted.clone(), kill_rx.clone());
            let Some(tls) = tls.clone() else {
                let served = KillableStream::new(ServedStream::Plain(stream), kill_rx);
                if accepted.send(served).await.is_err() {
                    return;
                }
                continue;
            };
            tokio::spawn(async move {
                let handshake = tls.acceptor().accept(stream).into_fallible();
                match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                    Ok(Ok(session)) => {
                        tls.accepted(session.get_ref().1);
                        let served = ServedStream::Tls(Box::new(session));
                        let _ = accepted.send(KillableStream::new(served, kill_rx)).await;
                    }
                    Ok(Err((_, mut refused))) => {
                        // The alert is sent. With TLS 1.3 the client may
                        // already be sending requests: closing with them
                        // unread would reset the connection and could
                        // destroy the alert before the client reads it, so
                        // drain until it closes (bounded), as a server
                        // lingering on close does.
                        let mut sink = [0u8; 4096];
                        let drain =
                            async { while refused.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
                        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                    }
                    Err(_) => {}
                }
            });
        }
    };
    let incoming = futures::stream::unfold(accepted_rx, |mut rx| async move {
        let conn = rx.recv().await?;
        Some((Ok::<_, io::Error>(conn), rx))
    });
    let join = tokio::spawn(async move {
        let signal = async {
            let _ = shutdown_rx.await;
        };
        let serving = router.serve_with_incoming_shutdown(incoming, signal);
        let mut serving = std::pin::pin!(serving);
        // The accept loop runs in this task, so the listener is closed by
        // the time the task ends (a restarted store binds the same address).
        // It ends only if the listener breaks; the store is then simply
        // gone once the connections being set up are served.
        tokio::select! {
            _ = &mut serving => {}
            () = accept_loop => {
                let _ = serving.await;
            }
        }
    });
    Running { shutdown, kill, join }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(addr).await.map_err(|e| ServerError::Bind(addr, e))?;
    let local = listener.local_addr().map_err(|e| ServerError::Bind(addr, e))?;
    Ok((listener, local))
}

#[derive(Debug)]
struct StoreSlot {
    addr: SocketAddr,
    running: Option<Running>,
    /// The status server's address (TiKV's `status-addr`).
    status_addr: SocketAddr,
    /// The status server, while the store runs.
    status: Option<JoinHandle<()>>,
}

/// A [`Cluster`] served over gRPC on loopback.
#[derive(Debug)]
pub struct SimServer {
    cluster: Cluster,
    clock: WallClock,
    released: Arc<Notify>,
    counters: Arc<BatchCounters>,
    pd_unary_calls: Arc<AtomicU64>,
    pd: Vec<(SocketAddr, Running)>,
    stores: tokio::sync::Mutex<BTreeMap<u64, StoreSlot>>,
    admin: Option<Arc<dyn StoreAdmin>>,
    tls: Option<ServerTls>,
}

impl SimServer {
    /// Binds every listener, registers the real addresses in the model (PD
    /// member client URLs, store addresses) and starts serving. Must be called
    /// inside a tokio runtime.
    pub async fn start(cluster: Cluster, opts: ServerOptions) -> Result<SimServer, ServerError> {
        Self::start_serving(cluster, opts, true, None).await
    }

    /// Like [`SimServer::start`], but serves the stores only: the cluster's
    /// PD is elsewhere (a real PD the stores joined, see
    /// [`crate::join::JoinedCluster`]), so [`SimServer::pd_addrs`] is empty;
    /// `admin` carries out the store RPCs that need that PD.
    pub(crate) async fn start_stores(
        cluster: Cluster,
        opts: ServerOptions,
        admin: Arc<dyn StoreAdmin>,
    ) -> Result<SimServer, ServerError> {
        Self::start_serving(cluster, opts, false, Some(admin)).await
    }

    async fn start_serving(
        cluster: Cluster,
        opts: ServerOptions,
        serve_pd: bool,
        admin: Option<Arc<dyn StoreAdmin>>,
    ) -> Result<SimServer, ServerError> {
        let clock = WallClock(std::time::Instant::now());
        let released = Arc::new(Notify::new());
        let counters = Arc::new(BatchCounters::default());
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut stores = BTreeMap::new();
        for id in cluster.store_ids() {
            let want = opts.store_addrs.get(&id).copied().unwrap_or(loopback);
            let (listener, addr) = bind(want).await?;
            // The store's address must be registered before anything can
            // ask PD for it.
            let _ = cluster.set_store_address(id, &addr.to_string());
            let (status_listener, status_addr) = bind(loopback).await?;
            let _ = cluster.set_store_status_address(id, &status_addr.to_string());
            let running = serve(
                listener,
                Self::store_router(&cluster, id, clock, &released, &counters, &admin),
                opts.tls.as_ref(),
            );
            let status = serve_status(status_listener, cluster.clone(), addr);
            stores.insert(
                id,
                StoreSlot { addr, running: Some(running), status_addr, status: Some(status) },
            );
        }
        let mut pd = Vec::new();
        let pd_unary_calls = Arc::new(AtomicU64::new(0));
        let members = if serve_pd { cluster.pd_member_count() } else { 0 };
        for member in 0..members {
            let want = opts.pd_addrs.get(member).copied().unwrap_or(loopback);
            let (listener, addr) = bind(want).await?;
            let scheme = if opts.tls.is_some() { "https" } else { "http" };
            let _ = cluster.set_pd_member_url(member, &format!("{scheme}://{addr}"));
            let svc = PdService {
                cluster: cluster.clone(),
                member,
                clock,
                unary_calls: pd_unary_calls.clone(),
                tso_latency: opts.tso_latency,
            };
            let router = tonic::transport::Server::builder()
                .add_service(PdServer::new(svc.clone()))
                .add_service(KeyspaceServer::new(svc.clone()))
                .add_service(MetaStorageServer::new(svc));
            pd.push((addr, serve(listener, router, opts.tls.as_ref())));
        }
        Ok(SimServer {
            cluster,
            clock,
            released,
            counters,
            pd_unary_calls,
            pd,
            stores: tokio::sync::Mutex::new(stores),
            admin,
            tls: opts.tls,
        })
    }

    fn store_router(
        cluster: &Cluster,
        store_id: u64,
        clock: WallClock,
        released: &Arc<Notify>,
        counters: &Arc<BatchCounters>,
        admin: &Option<Arc<dyn StoreAdmin>>,
    ) -> Router {
        let svc = TikvService {
            cluster: cluster.clone(),
            store_id,
            clock,
            released: released.clone(),
            counters: counters.clone(),
            admin: admin.clone(),
            forwarded_by: None,
        };
        // TiKV takes messages of any size (`max_receive_message_len(-1)`):
        // tonic's 4 MiB default would break a stream carrying a burst of
        // large entries, such as a pipelined flush's batches.
        let tikv = TikvServer::new(svc)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        tonic::transport::Server::builder()
            .add_service(tikv)
            .add_service(HealthServer::new(HealthService { cluster: cluster.clone(), store_id }))
    }

    /// What the stores' `BatchCommands` streams have received so far.
    pub fn batch_stats(&self) -> BatchStats {
        let c = &self.counters;
        BatchStats {
            streams: c.streams.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            unary: c.unary.load(Ordering::Relaxed),
        }
    }

    /// Unary PD requests (everything but `Tso`) all members have served:
    /// region and store lookups, mostly (a benchmark's "no PD storm" check).
    pub fn pd_unary_calls(&self) -> u64 {
        self.pd_unary_calls.load(Ordering::Relaxed)
    }

    /// The served cluster (for topology changes and injections while serving).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The model instant corresponding to now.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// PD member addresses (`host:port`), by member index.
    pub fn pd_addrs(&self) -> Vec<String> {
        self.pd.iter().map(|(a, _)| a.to_string()).collect()
    }

    /// A store's listening address (`host:port`), also while it is stopped.
    pub async fn store_addr(&self, store_id: u64) -> Option<String> {
        self.stores.lock().await.get(&store_id).map(|s| s.addr.to_string())
    }

    /// A store's status server address (`host:port`, TiKV's `status-addr`,
    /// serving `/status` and `/config`), also while it is stopped.
    pub async fn store_status_addr(&self, store_id: u64) -> Option<String> {
        self.stores.lock().await.get(&store_id).map(|s| s.status_addr.to_string())
    }

    /// Crashes a store: the model stops it (its leaders move), the listeners
    /// close and open connections are reset.
    pub async fn stop_store(&self, store_id: u64) -> Result<(), ServerError> {
        let (running, status) = {
            let mut stores = self.stores.lock().await;
            let slot = stores.get_mut(&store_id).ok_or(ServerError::NoSuchStore(store_id))?;
            let _ = self.cluster.stop_store(store_id);
            (slot.running.take(), slot.status.take())
        };
        if let Some(status) = status {
            stop_status(status).await;
        }
        if let Some(r) = running {
            r.stop().await;
        }
        Ok(())
    }

    /// Restarts a stopped store on the same address.
    pub async fn start_store(&self, store_id: u64) -> Result<(), ServerError> {
        let mut stores = self.stores.lock().await;
        let slot = stores.get_mut(&store_id).ok_or(ServerError::NoSuchStore(store_id))?;
        if slot.status.is_none() {
            let (listener, _) = bind(slot.status_addr).await?;
            slot.status = Some(serve_status(listener, self.cluster.clone(), slot.addr));
        }
        if slot.running.is_none() {
            let (listener, _) = bind(slot.addr).await?;
            slot.running = Some(serve(
                listener,
                Self::store_router(
                    &self.cluster,
                    store_id,
                    self.clock,
                    &self.released,
                    &self.counters,
                    &self.admin,
                ),
                self.tls.as_ref(),
            ));
        }
        let _ = self.cluster.start_store(store_id);
        Ok(())
    }

    /// Stops every listener and waits for the server tasks.
    pub async fn shutdown(self) {
        let stores = std::mem::take(&mut *self.stores.lock().await);
        for slot in stores.into_values() {
            if let Some(status) = slot.status {
                stop_status(status).await;
            }
            if let Some(r) = slot.running {
                r.stop().await;
            }
        }
        for (_, r) in self.pd {
            r.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as WallInstant;

    use tikv_proto::health::health_client::HealthClient;
    use tikv_proto::tikvpb::batch_commands_request::Request as ReqEntry;
    use tikv_proto::tikvpb::tikv_client::TikvClient;
    use tonic::transport::{Channel, Endpoint};

    use super::*;
    use crate::ClusterConfig;

    async fn channel(addr: &str) -> Channel {
        Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
    }

    /// The leader's store, a client of it and a raw get for its region.
    async fn leader_client(
        cluster: &Cluster,
        server: &SimServer,
    ) -> (u64, Channel, kvrpcpb::RawGetRequest) {
        let region = cluster.regions()[0].clone();
        let store = cluster.leader_of(region.id).unwrap().store_id;
        let get = kvrpcpb::RawGetRequest {
            context: cluster.context_for(region.id),
            key: "k".into(),
            ..Default::default()
        };
        (store, channel(&server.store_addr(store).await.unwrap()).await, get)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_black_holed_store_takes_connections_and_answers_once_it_ends() {
        let cluster = Cluster::new(ClusterConfig::default());
        let server = SimServer::start(cluster.clone(), ServerOptions::default()).await.unwrap();
        let region = cluster.regions()[0].clone();
        let store = cluster.leader_of(region.id).unwrap().store_id;
        cluster.set_store_black_hole(store, true);
        assert!(cluster.is_store_black_holed(store));
        // Connecting still works: the listener and HTTP/2 are up.
        let (_, chan, get) = leader_client(&cluster, &server).await;
        let mut kv = TikvClient::new(chan.clone());
        let mut health = HealthClient::new(chan);
        let wait = Duration::from_millis(300);
        assert!(tokio::time::timeout(wait, kv.raw_get(get.clone())).await.is_err());
        let probe = tokio::time::timeout(wait, health.check(HealthCheckRequest::default()));
        assert!(probe.await.is_err(), "the health probe is held too");
        let mut batch = kv.clone();
        let held = tokio::spawn(async move { batch.raw_get(get).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished());
        cluster.set_store_black_hole(store, false);
        let answer = tokio::time::timeout(Duration::from_secs(5), held).await;
        assert!(answer.unwrap().unwrap().is_ok(), "the held request is answered");
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_store_waits_once_per_batch_commands_message() {
        let cluster = Cluster::new(ClusterConfig::default());
        let server = SimServer::start(cluster.clone(), ServerOptions::default()).await.unwrap();
        let (store, chan, get) = leader_client(&cluster, &server).await;
        let latency = Duration::from_millis(100);
        cluster.set_store_latency(store, latency);
        let entries = 8;
        let req = BatchCommandsRequest {
            requests: (0..entries)
                .map(|_| ReqEntry { cmd: Some(ReqCmd::RawGet(Box::new(get.clone()))) })
                .collect(),
            request_ids: (1..=entries).collect(),
            ..Default::default()
        };
        let mut kv = TikvClient::new(chan);
        let start = WallInstant::now();
        let mut stream =
            kv.batch_commands(futures::stream::iter(vec![req])).await.unwrap().into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let took = start.elapsed();
        assert_eq!(resp.responses.len(), entries as usize);
        // One latency for the message, not one more per entry (900 ms).
        assert!(took >= latency && took < 4 * latency, "{took:?}");
        assert_eq!(resp.health_feedback.unwrap().slow_score, 100, "1 + 100 ms, capped at 100");
        let start = WallInstant::now();
        kv.raw_get(get).await.unwrap();
        assert!(start.elapsed() >= latency, "a unary request waits the latency");
        server.shutdown().await;
    }
}
