//! RPC vocabulary shared by the core and the runtimes.
//!
//! A machine asks for an RPC by emitting an [`Rpc`]: an id it chose, a
//! [`Target`] (PD or a store), a typed [`Request`] and a deadline. The runtime
//! sends it and feeds back `Result<Response, RpcError>` under the same id.
//! Requests are a typed enum over the kvproto messages (client-go's `tikvrpc`
//! idea), so routing code can stamp the `kvrpcpb::Context` and read the region
//! error of any TiKV response without knowing which command it is.
//!
//! Every variant of the four message enums ([`KvRequest`], [`KvResponse`],
//! [`PdRequest`], [`PdResponse`]) holds its message in a `Box`. A kvproto
//! message is large inline (a request's `Context` is over 500 bytes, a
//! response's `errorpb::Error` 600, the largest response over 2 KB), and a
//! message changes hands many times between its construction and the
//! transport (plan → sender → fan-out → driver → transport → batch
//! collector, and back): unboxed, each hand-off would copy the size of the
//! largest variant, a large share of the client's CPU. Boxed, each hand-off
//! moves a pointer, for one allocation per message. `From<message>` builds the enum from a bare message.

pub mod batch;
pub mod region_error;
mod tags;

pub use crate::error::RpcError;
pub use tags::{RequestSource, RequestTags};

use std::fmt;
use std::sync::Arc;

use tikv_proto::{errorpb, keyspacepb, kvrpcpb, pdpb};

use crate::pd::timestamp::Timestamp;
use crate::time::Instant;

/// Calls `$m!` with the list of TiKV unary RPCs the client speaks:
/// `(Variant, tonic_method, RequestType, ResponseType)`, types relative to
/// `tikv_proto::kvrpcpb`. Runtimes and the simulator use it to generate their
/// dispatch tables, so a new RPC is added in one place
/// ([`kv_rpc_table!`](crate::kv_rpc_table)).
#[macro_export]
macro_rules! for_each_kv_rpc {
    ($m:ident) => {
        $crate::kv_rpc_table! { @all $m }
    };
}

/// Calls `$m!` like [`for_each_kv_rpc!`](crate::for_each_kv_rpc) with only
/// the RPCs addressed to a region, whose response carries `region_error`.
/// The others go to a store as a whole (`BroadcastTxnStatus`, whose
/// response has no fields, and `GetHealthFeedback`, whose `region_error`
/// TiKV never sets).
#[macro_export]
macro_rules! for_each_region_kv_rpc {
    ($m:ident) => {
        $crate::kv_rpc_table! { @region $m }
    };
}

/// The one table behind [`for_each_kv_rpc!`](crate::for_each_kv_rpc) and
/// [`for_each_region_kv_rpc!`](crate::for_each_region_kv_rpc): region RPCs
/// first, then store RPCs.
#[doc(hidden)]
#[macro_export]
macro_rules! kv_rpc_table {
    (@all $m:ident [$($region:tt)*] [$($store:tt)*]) => {
        $m! { $($region)* $($store)* }
    };
    (@region $m:ident [$($region:tt)*] [$($store:tt)*]) => {
        $m! { $($region)* }
    };
    (@$which:ident $m:ident) => {
        $crate::kv_rpc_table! { @$which $m
        [
            (Get, kv_get, GetRequest, GetResponse),
            (Scan, kv_scan, ScanRequest, ScanResponse),
            (Prewrite, kv_prewrite, PrewriteRequest, PrewriteResponse),
            (PessimisticLock, kv_pessimistic_lock, PessimisticLockRequest, PessimisticLockResponse),
            (PessimisticRollback, kv_pessimistic_rollback, PessimisticRollbackRequest, PessimisticRollbackResponse),
            (TxnHeartBeat, kv_txn_heart_beat, TxnHeartBeatRequest, TxnHeartBeatResponse),
            (CheckTxnStatus, kv_check_txn_status, CheckTxnStatusRequest, CheckTxnStatusResponse),
            (CheckSecondaryLocks, kv_check_secondary_locks, CheckSecondaryLocksRequest, CheckSecondaryLocksResponse),
            (Commit, kv_commit, CommitRequest, CommitResponse),
            (Cleanup, kv_cleanup, CleanupRequest, CleanupResponse),
            (BatchGet, kv_batch_get, BatchGetRequest, BatchGetResponse),
            (BatchRollback, kv_batch_rollback, BatchRollbackRequest, BatchRollbackResponse),
            (ScanLock, kv_scan_lock, ScanLockRequest, ScanLockResponse),
            (ResolveLock, kv_resolve_lock, ResolveLockRequest, ResolveLockResponse),
            (DeleteRange, kv_delete_range, DeleteRangeRequest, DeleteRangeResponse),
            (Flush, kv_flush, FlushRequest, FlushResponse),
            (BufferBatchGet, kv_buffer_batch_get, BufferBatchGetRequest, BufferBatchGetResponse),
            (RawGet, raw_get, RawGetRequest, RawGetResponse),
            (RawBatchGet, raw_batch_get, RawBatchGetRequest, RawBatchGetResponse),
            (RawPut, raw_put, RawPutRequest, RawPutResponse),
            (RawBatchPut, raw_batch_put, RawBatchPutRequest, RawBatchPutResponse),
            (RawDelete, raw_delete, RawDeleteRequest, RawDeleteResponse),
            (RawBatchDelete, raw_batch_delete, RawBatchDeleteRequest, RawBatchDeleteResponse),
            (RawScan, raw_scan, RawScanRequest, RawScanResponse),
            (RawDeleteRange, raw_delete_range, RawDeleteRangeRequest, RawDeleteRangeResponse),
            (RawBatchScan, raw_batch_scan, RawBatchScanRequest, RawBatchScanResponse),
            (RawGetKeyTtl, raw_get_key_ttl, RawGetKeyTtlRequest, RawGetKeyTtlResponse),
            (RawCompareAndSwap, raw_compare_and_swap, RawCasRequest, RawCasResponse),
            (RawChecksum, raw_checksum, RawChecksumRequest, RawChecksumResponse),
            (SplitRegion, split_region, SplitRegionRequest, SplitRegionResponse),
            (UnsafeDestroyRange, unsafe_destroy_range, UnsafeDestroyRangeRequest, UnsafeDestroyRangeResponse),
        ]
        [
            (BroadcastTxnStatus, broadcast_txn_status, BroadcastTxnStatusRequest, BroadcastTxnStatusResponse),
            (GetHealthFeedback, get_health_feedback, GetHealthFeedbackRequest, GetHealthFeedbackResponse),
        ]
        }
    };
}

/// Calls `$m!` with the list of PD unary RPCs:
/// `(Variant, service, tonic_method, Request, Response)` where `service` is
/// `pdpb` (the `PD` service) or `keyspacepb` (the `Keyspace` service).
#[macro_export]
macro_rules! for_each_pd_rpc {
    ($m:ident) => {
        $m! {
            (GetMembers, pdpb, get_members, GetMembersRequest, GetMembersResponse),
            (GetClusterInfo, pdpb, get_cluster_info, GetClusterInfoRequest, GetClusterInfoResponse),
            (GetRegion, pdpb, get_region, GetRegionRequest, GetRegionResponse),
            (GetPrevRegion, pdpb, get_prev_region, GetRegionRequest, GetRegionResponse),
            (GetRegionById, pdpb, get_region_by_id, GetRegionByIdRequest, GetRegionResponse),
            (ScanRegions, pdpb, scan_regions, ScanRegionsRequest, ScanRegionsResponse),
            (BatchScanRegions, pdpb, batch_scan_regions, BatchScanRegionsRequest, BatchScanRegionsResponse),
            (GetStore, pdpb, get_store, GetStoreRequest, GetStoreResponse),
            (GetAllStores, pdpb, get_all_stores, GetAllStoresRequest, GetAllStoresResponse),
            (GetGcState, pdpb, get_gc_state, GetGcStateRequest, GetGcStateResponse),
            (AdvanceTxnSafePoint, pdpb, advance_txn_safe_point, AdvanceTxnSafePointRequest, AdvanceTxnSafePointResponse),
            (AdvanceGcSafePoint, pdpb, advance_gc_safe_point, AdvanceGcSafePointRequest, AdvanceGcSafePointResponse),
            (UpdateGcSafePoint, pdpb, update_gc_safe_point, UpdateGcSafePointRequest, UpdateGcSafePointResponse),
            (SetGcBarrier, pdpb, set_gc_barrier, SetGcBarrierRequest, SetGcBarrierResponse),
            (DeleteGcBarrier, pdpb, delete_gc_barrier, DeleteGcBarrierRequest, DeleteGcBarrierResponse),
            (ScatterRegion, pdpb, scatter_region, ScatterRegionRequest, ScatterRegionResponse),
            (GetOperator, pdpb, get_operator, GetOperatorRequest, GetOperatorResponse),
            (LoadKeyspace, keyspacepb, load_keyspace, LoadKeyspaceRequest, LoadKeyspaceResponse),
        }
    };
}

macro_rules! kv_enums {
    ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        /// A request to a TiKV store; variants are boxed (module docs).
        #[derive(Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum KvRequest {
            $($variant(Box<kvrpcpb::$req>),)*
        }

        /// A response from a TiKV store; variants are boxed (module docs).
        #[derive(Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum KvResponse {
            $($variant(Box<kvrpcpb::$resp>),)*
        }

        impl KvRequest {
            /// The command name (the tonic method), for logs and transcripts.
            pub fn name(&self) -> &'static str {
                match self { $(KvRequest::$variant(_) => stringify!($method),)* }
            }

            /// The request's `kvrpcpb::Context`, created if absent.
            pub fn context_mut(&mut self) -> &mut kvrpcpb::Context {
                match self { $(KvRequest::$variant(r) => r.context.get_or_insert_with(Default::default),)* }
            }

            /// The request's context, if set.
            pub fn context(&self) -> Option<&kvrpcpb::Context> {
                match self { $(KvRequest::$variant(r) => r.context.as_ref(),)* }
            }
        }

        impl KvResponse {
            /// The command name (the tonic method).
            pub fn name(&self) -> &'static str {
                match self { $(KvResponse::$variant(_) => stringify!($method),)* }
            }

            /// True if this response answers a request of the same command.
            pub fn matches(&self, req: &KvRequest) -> bool {
                match (self, req) {
                    $((KvResponse::$variant(_), KvRequest::$variant(_)) => true,)*
                    _ => false,
                }
            }
        }

        impl KvRequest {
            /// An empty response of the matching command (for `matches` and
            /// for fabricating region errors in tests).
            pub fn response_template(&self) -> KvResponse {
                match self { $(KvRequest::$variant(_) => KvResponse::$variant(Default::default()),)* }
            }
        }

        $(
            impl From<kvrpcpb::$req> for KvRequest {
                fn from(r: kvrpcpb::$req) -> KvRequest { KvRequest::$variant(Box::new(r)) }
            }

            impl From<kvrpcpb::$resp> for KvResponse {
                fn from(r: kvrpcpb::$resp) -> KvResponse { KvResponse::$variant(Box::new(r)) }
            }
        )*
    };
}
for_each_kv_rpc!(kv_enums);

macro_rules! kv_region_errors {
    ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        impl KvResponse {
            /// The region error carried by the response, if any (never for
            /// a store RPC, whose response has no such field).
            pub fn region_error(&self) -> Option<&errorpb::Error> {
                match self {
                    $(KvResponse::$variant(r) => r.region_error.as_ref(),)*
                    _ => None,
                }
            }

            /// Removes and returns the region error.
            pub fn take_region_error(&mut self) -> Option<errorpb::Error> {
                self.region_error_mut().and_then(Option::take)
            }

            /// The response's `region_error` field; `None` for a store RPC
            /// (for the codec and for fabricating region errors).
            pub fn region_error_mut(&mut self) -> Option<&mut Option<errorpb::Error>> {
                match self {
                    $(KvResponse::$variant(r) => Some(&mut r.region_error),)*
                    _ => None,
                }
            }
        }
    };
}
for_each_region_kv_rpc!(kv_region_errors);

impl KvRequest {
    /// Whether TiKV serves the command from a snapshot without writing, so
    /// a follower or learner may serve it with `Context.replica_read` (after
    /// a read index on the leader): the point, batch and range reads, raw
    /// and transactional (client-go's `isReadReq` plus the raw reads).
    pub fn is_snapshot_read(&self) -> bool {
        matches!(
            self,
            KvRequest::Get(_)
                | KvRequest::BatchGet(_)
                | KvRequest::Scan(_)
                | KvRequest::RawGet(_)
                | KvRequest::RawBatchGet(_)
                | KvRequest::RawScan(_)
                | KvRequest::RawBatchScan(_)
                | KvRequest::RawGetKeyTtl(_)
        )
    }

    /// Whether the command writes: TiKV gets
    /// [`Config::max_write_execution_time`] as its max execution duration
    /// instead of the RPC timeout (client-go sets `MaxWriteExecutionTime`
    /// on prewrite, commit, cleanup, pessimistic lock and rollback, lock
    /// resolution, heartbeats, flushes and the raw writes). A raw `Put` is
    /// a write here too; client-go leaves it at the RPC timeout.
    ///
    /// [`Config::max_write_execution_time`]: crate::config::Config::max_write_execution_time
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            KvRequest::Prewrite(_)
                | KvRequest::PessimisticLock(_)
                | KvRequest::PessimisticRollback(_)
                | KvRequest::TxnHeartBeat(_)
                | KvRequest::CheckSecondaryLocks(_)
                | KvRequest::Commit(_)
                | KvRequest::Cleanup(_)
                | KvRequest::BatchRollback(_)
                | KvRequest::ResolveLock(_)
                | KvRequest::DeleteRange(_)
                | KvRequest::Flush(_)
                | KvRequest::RawPut(_)
                | KvRequest::RawBatchPut(_)
                | KvRequest::RawDelete(_)
                | KvRequest::RawBatchDelete(_)
                | KvRequest::RawDeleteRange(_)
                | KvRequest::RawCompareAndSwap(_)
        )
    }
}

/// Lets one macro arm stamp the cluster id on every PD request: kvproto's
/// `GetClusterInfoRequest` carries a `ResponseHeader` where all others carry a
/// `RequestHeader`.
trait ClusterIdHeader {
    fn set_cluster_id(&mut self, cluster_id: u64);
}

impl ClusterIdHeader for pdpb::RequestHeader {
    fn set_cluster_id(&mut self, cluster_id: u64) {
        self.cluster_id = cluster_id;
    }
}

impl ClusterIdHeader for pdpb::ResponseHeader {
    fn set_cluster_id(&mut self, cluster_id: u64) {
        self.cluster_id = cluster_id;
    }
}

macro_rules! pd_enums {
    ($(($variant:ident, $svc:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        /// A unary request to PD (the `PD` and `Keyspace` services);
        /// variants are boxed (module docs).
        #[derive(Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum PdRequest {
            $($variant(Box<$svc::$req>),)*
            /// One round on the TSO stream.
            Tso(Box<pdpb::TsoRequest>),
        }

        /// A response from PD; variants are boxed (module docs).
        #[derive(Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum PdResponse {
            $($variant(Box<$svc::$resp>),)*
            /// One round on the TSO stream.
            Tso(Box<pdpb::TsoResponse>),
        }

        impl PdRequest {
            /// Sets the request header's cluster id (PD refuses a mismatching
            /// non-zero id; zero is accepted while the id is unknown).
            pub fn set_cluster_id(&mut self, cluster_id: u64) {
                match self {
                    $(PdRequest::$variant(r) => {
                        r.header.get_or_insert_with(Default::default).set_cluster_id(cluster_id)
                    })*
                    PdRequest::Tso(r) => {
                        r.header.get_or_insert_with(Default::default).set_cluster_id(cluster_id)
                    }
                }
            }

            /// The method name, for logs and transcripts.
            pub fn name(&self) -> &'static str {
                match self { $(PdRequest::$variant(_) => stringify!($method),)* PdRequest::Tso(_) => "tso" }
            }
        }

        impl PdResponse {
            /// The method name.
            pub fn name(&self) -> &'static str {
                match self { $(PdResponse::$variant(_) => stringify!($method),)* PdResponse::Tso(_) => "tso" }
            }
        }
    };
}
for_each_pd_rpc!(pd_enums);

impl PdResponse {
    /// The response header, if the message has one and it is set.
    pub fn header(&self) -> Option<&pdpb::ResponseHeader> {
        match self {
            PdResponse::GetMembers(r) => r.header.as_ref(),
            PdResponse::GetClusterInfo(r) => r.header.as_ref(),
            PdResponse::GetRegion(r)
            | PdResponse::GetPrevRegion(r)
            | PdResponse::GetRegionById(r) => r.header.as_ref(),
            PdResponse::ScanRegions(r) => r.header.as_ref(),
            PdResponse::BatchScanRegions(r) => r.header.as_ref(),
            PdResponse::GetStore(r) => r.header.as_ref(),
            PdResponse::GetAllStores(r) => r.header.as_ref(),
            PdResponse::GetGcState(r) => r.header.as_ref(),
            PdResponse::AdvanceTxnSafePoint(r) => r.header.as_ref(),
            PdResponse::AdvanceGcSafePoint(r) => r.header.as_ref(),
            PdResponse::UpdateGcSafePoint(r) => r.header.as_ref(),
            PdResponse::SetGcBarrier(r) => r.header.as_ref(),
            PdResponse::DeleteGcBarrier(r) => r.header.as_ref(),
            PdResponse::ScatterRegion(r) => r.header.as_ref(),
            PdResponse::GetOperator(r) => r.header.as_ref(),
            PdResponse::Tso(r) => r.header.as_ref(),
            PdResponse::LoadKeyspace(r) => r.header.as_ref(),
        }
    }

    /// The PD error in the header, if any (`type != OK`).
    pub fn pd_error(&self) -> Option<&pdpb::Error> {
        self.header()
            .and_then(|h| h.error.as_ref())
            .filter(|e| e.r#type != pdpb::ErrorType::Ok as i32)
    }
}

/// A request to TiKV or PD, or for a timestamp.
#[derive(Clone, PartialEq)]
pub enum Request {
    /// To a TiKV store.
    Kv(KvRequest),
    /// To PD.
    Pd(PdRequest),
    /// One fresh timestamp, sent to [`Target::Oracle`]: the runtime answers
    /// it from the client's timestamp oracle (a [`TsoBatcher`] whose rounds
    /// every waiting operation shares), never from the network directly.
    /// Build it with [`GetTimestamp`].
    ///
    /// [`TsoBatcher`]: crate::pd::TsoBatcher
    /// [`GetTimestamp`]: crate::pd::GetTimestamp
    Timestamp,
    /// TiKV's `GetStoreSafeTS` to one store: a store-wide call without a
    /// region context, so outside [`KvRequest`].
    StoreSafeTs(Box<kvrpcpb::StoreSafeTsRequest>),
    /// gRPC's health `Check` (`grpc.health.v1.Health/Check`) of the server
    /// as a whole, to one store: client-go's liveness probe
    /// (`invokeKVStatusAPI`).
    HealthCheck,
}

/// A response from TiKV or PD, or a timestamp.
#[derive(Clone, PartialEq)]
pub enum Response {
    /// From a TiKV store.
    Kv(KvResponse),
    /// From PD.
    Pd(PdResponse),
    /// The answer to [`Request::Timestamp`].
    Timestamp(Timestamp),
    /// The answer to [`Request::StoreSafeTs`].
    StoreSafeTs(Box<kvrpcpb::StoreSafeTsResponse>),
    /// The answer to [`Request::HealthCheck`].
    HealthCheck(tikv_proto::health::HealthCheckResponse),
}

impl Request {
    /// The method name.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Kv(r) => r.name(),
            Request::Pd(r) => r.name(),
            Request::Timestamp => "timestamp",
            Request::StoreSafeTs(_) => "get_store_safe_ts",
            Request::HealthCheck => "health_check",
        }
    }
}

/// Identifies a request whose answer any identical concurrent request may
/// share, so a transport can send it once (client-go's `reqCollapse`, and
/// the deduplication of concurrent region misses).
///
/// Three kinds qualify:
/// - region-wide `ResolveLock`, as in client-go: many readers meeting locks
///   of one large transaction in one region would each send the same
///   request, and TiKV's answer (resolved, or a region error each caller
///   handles itself) does not depend on who asked. Lite resolves (with keys)
///   and GC's batch resolves (with `txn_infos`) are never collapsed;
/// - PD reads of one region or store (`GetRegion`, `GetPrevRegion`,
///   `GetRegionByID`, `GetStore`, `GetAllStores`) to one PD member: every
///   operation that misses the cache for the same key at once, or meets the
///   same unknown store, would otherwise ask PD separately;
/// - liveness probes ([`Request::HealthCheck`]) of one store address, as
///   client-go's `requestLiveness` shares one probe per address through its
///   `livenessSf` singleflight: every call whose send failed on a store
///   asks whether it is alive, and the background probe round asks too,
///   so concurrent failures on a store that went down probe it once. A
///   caller whose own deadline comes first is still cut off then, and the
///   probe goes on for the others if the caller that sent it is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CollapseKey(Collapsible);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Collapsible {
    ResolveLock { store_id: u64, region_id: u64, start_ts: u64, commit_ts: u64, is_async: bool },
    Region { pd: Arc<str>, key: bytes::Bytes, prev: bool, buckets: bool },
    RegionById { pd: Arc<str>, id: u64, buckets: bool },
    Store { pd: Arc<str>, id: u64 },
    AllStores { pd: Arc<str>, exclude_tombstones: bool },
    Liveness { addr: Arc<str> },
}

impl CollapseKey {
    /// The key of `request` to `target`, or `None` if it must be sent as is.
    ///
    /// ```
    /// use tikv_core::rpc::{CollapseKey, KvRequest, Request, Target};
    /// use tikv_proto::kvrpcpb::{Context, ResolveLockRequest};
    ///
    /// let store = Target::Store { store_id: 1, addr: "s1:20160".into(), forwarded_host: None };
    /// let region_wide = |keys: Vec<bytes::Bytes>| {
    ///     Request::Kv(KvRequest::ResolveLock(Box::new(ResolveLockRequest {
    ///         context: Some(Context { region_id: 9, ..Default::default() }),
    ///         start_version: 100,
    ///         commit_version: 120,
    ///         keys,
    ///         ..Default::default()
    ///     })))
    /// };
    /// assert!(CollapseKey::of(&store, &region_wide(vec![])).is_some());
    /// assert!(CollapseKey::of(&store, &region_wide(vec!["k".into()])).is_none());
    /// ```
    pub fn of(target: &Target, request: &Request) -> Option<CollapseKey> {
        let key = match (target, request) {
            // A forwarded request is for another store than the one named.
            (
                Target::Store { store_id, forwarded_host: None, .. },
                Request::Kv(KvRequest::ResolveLock(r)),
            ) => {
                if !r.keys.is_empty() || !r.txn_infos.is_empty() {
                    return None;
                }
                Collapsible::ResolveLock {
                    store_id: *store_id,
                    region_id: r.context.as_ref()?.region_id,
                    start_ts: r.start_version,
                    commit_ts: r.commit_version,
                    is_async: r.is_async,
                }
            }
            (Target::Store { addr, forwarded_host: None, .. }, Request::HealthCheck) => {
                Collapsible::Liveness { addr: addr.clone() }
            }
            (Target::Pd { addr }, Request::Pd(request)) => {
                let pd = addr.clone();
                match request {
                    PdRequest::GetRegion(r) | PdRequest::GetPrevRegion(r) => Collapsible::Region {
                        pd,
                        key: r.region_key.clone(),
                        prev: matches!(request, PdRequest::GetPrevRegion(_)),
                        buckets: r.need_buckets,
                    },
                    PdRequest::GetRegionById(r) => {
                        Collapsible::RegionById { pd, id: r.region_id, buckets: r.need_buckets }
                    }
                    PdRequest::GetStore(r) => Collapsible::Store { pd, id: r.store_id },
                    PdRequest::GetAllStores(r) => Collapsible::AllStores {
                        pd,
                        exclude_tombstones: r.exclude_tombstone_stores,
                    },
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(CollapseKey(key))
    }
}

impl Response {
    /// The method name.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Kv(r) => r.name(),
            Response::Pd(r) => r.name(),
            Response::Timestamp(_) => "timestamp",
            Response::StoreSafeTs(_) => "get_store_safe_ts",
            Response::HealthCheck(_) => "health_check",
        }
    }
}

impl fmt::Debug for KvRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
impl fmt::Debug for KvResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
impl fmt::Debug for PdRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
impl fmt::Debug for PdResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one RPC within one machine; chosen by the machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RpcId(pub u64);

impl fmt::Display for RpcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where an RPC goes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A PD server at this address (`host:port`, with or without scheme).
    Pd {
        /// The PD member's client URL.
        addr: Arc<str>,
    },
    /// A TiKV store.
    Store {
        /// Store id from PD.
        store_id: u64,
        /// The store's address.
        addr: Arc<str>,
        /// The address of the store the request is for when this store
        /// only forwards it there (gRPC metadata `tikv-forwarded-host`,
        /// client-go's `forwardedHost`): the client cannot reach that
        /// store, this one can.
        forwarded_host: Option<Arc<str>>,
    },
    /// The client's own timestamp oracle ([`Request::Timestamp`]): local to
    /// the client, not an address on the network.
    Oracle,
}

impl Target {
    /// The network address, `None` for [`Target::Oracle`].
    pub fn addr(&self) -> Option<&Arc<str>> {
        match self {
            Target::Pd { addr } | Target::Store { addr, .. } => Some(addr),
            Target::Oracle => None,
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pd { addr } => write!(f, "pd({addr})"),
            Target::Store { store_id, addr, forwarded_host: None } => {
                write!(f, "store{store_id}({addr})")
            }
            Target::Store { store_id, addr, forwarded_host: Some(host) } => {
                write!(f, "store{store_id}({addr}) forwarding to {host}")
            }
            Target::Oracle => f.write_str("oracle"),
        }
    }
}

/// An RPC a machine asks the runtime to send.
#[derive(Clone, PartialEq)]
pub struct Rpc {
    /// Chosen by the machine; the response is fed back under it.
    pub id: RpcId,
    /// Where to send it.
    pub target: Target,
    /// What to send.
    pub request: Request,
    /// When the runtime gives up and reports [`RpcError::DeadlineExceeded`].
    pub deadline: Instant,
}

impl fmt::Debug for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} -> {:?} (deadline {})",
            self.id, self.request, self.target, self.deadline
        )
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use tikv_proto::{kvrpcpb, pdpb};

    use super::*;

    /// The types every request and response passes through by value, with
    /// the bounds they were brought under (module docs). A variant added
    /// unboxed, or a field added to `Rpc`, fails here rather than silently
    /// bringing the copies back.
    #[test]
    fn hot_types_stay_small() {
        const WORD: usize = size_of::<usize>();
        // A tag and a box.
        assert!(size_of::<KvRequest>() <= 2 * WORD, "KvRequest: {}", size_of::<KvRequest>());
        assert!(size_of::<KvResponse>() <= 2 * WORD, "KvResponse: {}", size_of::<KvResponse>());
        assert!(size_of::<PdRequest>() <= 2 * WORD, "PdRequest: {}", size_of::<PdRequest>());
        assert!(size_of::<PdResponse>() <= 2 * WORD, "PdResponse: {}", size_of::<PdResponse>());
        assert!(size_of::<Request>() <= 3 * WORD, "Request: {}", size_of::<Request>());
        assert!(size_of::<Response>() <= 3 * WORD, "Response: {}", size_of::<Response>());
        // Id, target (a tag, a store id, an address and the forwarded
        // host, which keys the transport's streams as the address does),
        // request, deadline.
        assert!(size_of::<Target>() <= 6 * WORD, "Target: {}", size_of::<Target>());
        assert!(size_of::<Rpc>() <= 11 * WORD, "Rpc: {}", size_of::<Rpc>());
        // What the runtime feeds back.
        let fed_back = size_of::<Result<Response, RpcError>>();
        assert!(fed_back <= 4 * WORD, "Result<Response, RpcError>: {fed_back}");
        // The messages themselves are what the boxes keep out of the moves.
        assert!(size_of::<kvrpcpb::RawGetRequest>() > 8 * WORD);
        assert!(size_of::<kvrpcpb::CheckTxnStatusResponse>() > 64 * WORD);
        assert!(size_of::<pdpb::GetStoreResponse>() > 8 * WORD);
    }

    #[test]
    fn messages_convert_into_their_variant() {
        let request = KvRequest::from(kvrpcpb::RawGetRequest {
            key: b"k".to_vec().into(),
            ..Default::default()
        });
        let KvRequest::RawGet(inner) = &request else {
            panic!("wrong variant: {request:?}");
        };
        assert_eq!(&inner.key[..], b"k");
        let response = KvResponse::from(kvrpcpb::RawGetResponse {
            value: b"v".to_vec().into(),
            ..Default::default()
        });
        assert!(response.matches(&request));
        assert!(!KvResponse::from(kvrpcpb::RawPutResponse::default()).matches(&request));
        let KvResponse::RawGet(inner) = response else {
            panic!("wrong variant");
        };
        assert_eq!(&inner.value[..], b"v");
    }
}
