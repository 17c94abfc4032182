//! Simulated stores that join a real PD (`tikv-sim --join-pd HOST:PORT`),
//! speaking to it as TiKV's `pd_client` and raftstore's PD worker do.
//!
//! [`JoinedCluster::start`] does what a TiKV store does when it starts
//! (measured sequence in `shared/pd/README.md`; TiKV's
//! `components/server/src/node.rs` and `raftstore/src/store/worker/pd.rs`):
//! `GetMembers` for the cluster id, `IsBootstrapped`, `AllocID` for every
//! store (and, on a fresh PD, the first region and its peer), `Bootstrap`
//! with the first store and a region covering the whole key space with one
//! voter on it, then `PutStore` for every store (semver version, its own
//! loopback address), a first `StoreHeartbeat` each, and one
//! `RegionHeartbeat` stream per store. Afterwards:
//! - every store heartbeats every [`JoinOptions::store_heartbeat_interval`]
//!   (TiKV: 10 s) with its region count and a large, mostly free disk;
//! - the leader of every region reports it (region, leader peer, term,
//!   approximate size and keys of its data) on its store's stream every
//!   [`JoinOptions::region_heartbeat_interval`] (TiKV: 60 s) and at once
//!   after every change;
//! - operators PD sends back on a store's stream are carried out by that
//!   store's peer (the simulator's `admin` module holds raftstore's checks)
//!   and the result is reported: `ChangePeer` and `ChangePeerV2` (add
//!   learner, promote, demote, remove; a joint change is entered, reported,
//!   left at once, as TiKV's leader does, and reported again),
//!   `TransferLeader` (the term rises; the new leader reports on its own
//!   stream), and `SplitRegion` with policy `USEKEY` (`AskBatchSplit` for
//!   ids, the split applied as `exec_batch_split` does, `ReportBatchSplit`,
//!   a heartbeat for every resulting region). PD's own splits at the
//!   keyspace boundaries right after bootstrap arrive this way, and so do a
//!   client's `SplitRegions` / `ScatterRegion` sent to PD;
//! - [`JoinedCluster::split`] is a store-initiated split (TiKV's split
//!   checker), through the same `AskBatchSplit` path; so is TiKV's
//!   `SplitRegion` RPC on a store (a client's pre-split), whose answer
//!   carries every resulting region;
//! - every [`JoinOptions::resolved_ts_interval`] the stores take a TSO from
//!   PD, advance every region's resolved ts (held back by the oldest
//!   prewrite lock in it) and report each store's minimum with
//!   `ReportMinResolvedTS`; `GetStoreSafeTS` on a store answers the minimum
//!   safe ts of its peers;
//! - [`JoinedCluster::stop_store`] silences a store towards PD (no
//!   heartbeats, reports or operators) until it restarts.
//!
//! What the joined mode cannot do towards PD (each refused operator is
//! logged on stderr as `tikv-sim: ... refused ...` and kept in
//! [`JoinedCluster::refusals`]; PD then times the operator out):
//! - `Merge` operators (PD's merge checker; turn it off with
//!   `merge-schedule-limit = 0`), `SplitRegion` with the `SCAN` or
//!   `APPROXIMATE` policy (no half-split: there is no size-based split
//!   checker), `BatchSwitchWitness` (no witnesses). `ChangeSplit` (auto
//!   split on/off) is ignored: the model never splits by itself.
//! - Joining an already bootstrapped cluster registers the stores and
//!   heartbeats them, but they hold no region: regions whose leaders live
//!   in another process cannot be replicated here (no raft messages or
//!   snapshots between processes), so a conf change that would put a peer
//!   on a store of another process is refused.
//! - One PD endpoint, no PD leader failover or member discovery (TiKV's
//!   `pd_client` follows the leader among several); meant for the
//!   single-node PD of `shared/pd/`.
//! - Resolved ts: every replica applies at once, so a follower's safe ts is
//!   the leader's resolved ts (no `CheckLeader` rounds), and one interval
//!   does TiKV's advance (20 s) and report (1 s).
//! - Approximate sizes are rough (key and value bytes, no engine
//!   overhead); no buckets, no down or pending peers (every replica applies
//!   at once), no read/write flow statistics (report intervals are
//!   empty), no hot-region data, no store labels or status address, no
//!   graceful shutdown, PD's `NodeState` answer is ignored, no unsafe
//!   recovery.
//! - A broken heartbeat stream is reopened after a short pause; reports
//!   made while it was down are lost until the next periodic heartbeat.
//!
//! The stores serve the model over gRPC as [`SimServer`]'s stores do (it
//! serves no PD here); clients get regions, stores, TSO and members from PD
//! itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tikv_proto::pdpb::pd_client::PdClient;
use tikv_proto::{errorpb, kvrpcpb, metapb, pdpb};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::admin::{ConfChangeKind, DEFAULT_STORE_VERSION, Refusal};
use crate::server::{ServerError, ServerOptions, SimServer, StoreAdmin};
use crate::{Cluster, ClusterConfig};

/// How often, and how far apart, a split asks PD again while PD does not
/// know the region yet (50 × 100 ms: PD hears a new region's heartbeat
/// within a few hundred milliseconds).
const ASK_SPLIT_TRIES: u32 = 50;
const ASK_SPLIT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// How the stores join PD.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// PD's client address, `host:port`.
    pub pd: String,
    /// Number of stores to start. At least 1.
    pub stores: usize,
    /// The version every store registers (semver; PD refuses splits below 2.1.0).
    pub store_version: String,
    /// How often each store sends `StoreHeartbeat` (TiKV: 10 s; PD marks a
    /// store disconnected after 20 s without one).
    pub store_heartbeat_interval: Duration,
    /// How often each region's leader reports it without a change (TiKV's
    /// `pd-heartbeat-tick-interval`: 60 s).
    pub region_heartbeat_interval: Duration,
    /// How often the stores advance their resolved ts (a TSO from PD, see
    /// [`Cluster::store_safe_ts`]) and send `ReportMinResolvedTS`. TiKV
    /// reports every 1 s (`report-min-resolved-ts-interval`) but advances
    /// every 20 s (`resolved-ts.advance-ts-interval`); one interval does
    /// both here, 1 s by default, so stale reads see a fresh safe ts.
    pub resolved_ts_interval: Duration,
    /// How long to wait for PD to answer at start.
    pub connect_timeout: Duration,
}

impl JoinOptions {
    /// `stores` stores joining the PD at `pd`, with TiKV's heartbeat intervals.
    pub fn new(pd: impl Into<String>, stores: usize) -> JoinOptions {
        JoinOptions {
            pd: pd.into(),
            stores,
            store_version: DEFAULT_STORE_VERSION.to_owned(),
            store_heartbeat_interval: Duration::from_secs(10),
            region_heartbeat_interval: Duration::from_secs(60),
            resolved_ts_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why joining failed.
#[derive(Debug)]
pub enum JoinError {
    /// PD did not answer (address, last error).
    Connect(String, String),
    /// PD answered a call with an error (call, message).
    Pd(&'static str, String),
    /// A store listener could not start.
    Server(ServerError),
    /// The stores refused a topology change (see the simulator's `admin` module).
    Refused(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Connect(addr, e) => write!(f, "cannot reach PD at {addr}: {e}"),
            JoinError::Pd(call, e) => write!(f, "PD {call} failed: {e}"),
            JoinError::Server(e) => write!(f, "{e}"),
            JoinError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

impl std::error::Error for JoinError {}

impl From<ServerError> for JoinError {
    fn from(e: ServerError) -> JoinError {
        JoinError::Server(e)
    }
}

/// The PD connection and what the stores' tasks share.
#[derive(Debug)]
struct Shared {
    pd: PdClient<Channel>,
    cluster_id: u64,
    cluster: Cluster,
    /// Store id → the sending half of its current `RegionHeartbeat` stream.
    streams: Mutex<BTreeMap<u64, mpsc::UnboundedSender<pdpb::RegionHeartbeatRequest>>>,
    refusals: Mutex<Vec<String>>,
    /// Operators carried out, by kind (see [`JoinedCluster::applied_operators`]).
    applied: Mutex<BTreeMap<&'static str, u64>>,
    started: std::time::Instant,
    unix_start_secs: u64,
}

/// A header error of a PD answer, as text.
fn header_error(header: Option<&pdpb::ResponseHeader>) -> Option<String> {
    let err = header?.error.as_ref()?;
    if err.r#type == pdpb::ErrorType::Ok as i32 {
        return None;
    }
    let kind = pdpb::ErrorType::try_from(err.r#type)
        .map(|t| t.as_str_name().to_owned())
        .unwrap_or_else(|_| err.r#type.to_string());
    Some(format!("{kind}: {}", err.message))
}

fn is_already_bootstrapped(header: Option<&pdpb::ResponseHeader>) -> bool {
    header.and_then(|h| h.error.as_ref()).map(|e| e.r#type)
        == Some(pdpb::ErrorType::AlreadyBootstrapped as i32)
}

impl Shared {
    fn header(&self) -> Option<pdpb::RequestHeader> {
        Some(pdpb::RequestHeader { cluster_id: self.cluster_id, ..Default::default() })
    }

    fn pd(&self) -> PdClient<Channel> {
        self.pd.clone()
    }

    fn refused(&self, what: &str, why: &str) {
        let line = format!("{what} refused: {why}");
        eprintln!("tikv-sim: {line}");
        self.refusals.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn applied(&self, kind: &'static str, region_id: u64) {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
        self.report(region_id);
    }

    /// The leader's report of a region on its store's stream.
    fn report(&self, region_id: u64) {
        let Some(report) = self.cluster.region_report(region_id) else {
            return;
        };
        if !self.cluster.is_store_running(report.leader_store) {
            // A leader on a stopped store ("not yet re-elected") is silent.
            return;
        }
        let mut request = report.request;
        request.header = self.header();
        let secs = self.unix_start_secs + self.started.elapsed().as_secs();
        request.interval = Some(pdpb::TimeInterval { start_timestamp: secs, end_timestamp: secs });
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = streams.get(&report.leader_store) {
            // A closed stream is being reopened; the periodic report repeats it.
            let _ = tx.send(request);
        }
    }

    fn report_all(&self) {
        for id in self.cluster.region_ids() {
            self.report(id);
        }
    }

    async fn store_heartbeat(&self, store_id: u64) -> Result<(), JoinError> {
        const CAPACITY: u64 = 1 << 40;
        let used = 1 << 20;
        let now = self.unix_start_secs + self.started.elapsed().as_secs();
        let stats = pdpb::StoreStats {
            store_id,
            capacity: CAPACITY,
            available: CAPACITY - used,
            used_size: used,
            region_count: self.cluster.region_count_on(store_id),
            start_time: u32::try_from(self.unix_start_secs).unwrap_or(u32::MAX),
            interval: Some(pdpb::TimeInterval { start_timestamp: now, end_timestamp: now }),
            ..Default::default()
        };
        let req = pdpb::StoreHeartbeatRequest { header: self.header(), stats: Some(stats) };
        let resp = self
            .pd()
            .store_heartbeat(req)
            .await
            .map_err(|s| JoinError::Pd("StoreHeartbeat", s.message().to_owned()))?
            .into_inner();
        match header_error(resp.header.as_ref()) {
            Some(e) => Err(JoinError::Pd("StoreHeartbeat", e)),
            None => Ok(()),
        }
    }

    /// One timestamp from PD's TSO stream.
    async fn tso(&self) -> Result<u64, String> {
        let req = pdpb::TsoRequest { header: self.header(), count: 1, ..Default::default() };
        let resp = self
            .pd()
            .tso(futures::stream::iter([req]))
            .await
            .map_err(|s| format!("Tso failed: {}", s.message()))?;
        let first = resp.into_inner().next().await;
        match first {
            Some(Ok(r)) => {
                if let Some(e) = header_error(r.header.as_ref()) {
                    return Err(format!("Tso failed: {e}"));
                }
                let ts = r.timestamp.unwrap_or_default();
                let physical = u64::try_from(ts.physical).unwrap_or(0);
                let logical = u64::try_from(ts.logical).unwrap_or(0);
                Ok((physical << 18) | logical)
            }
            Some(Err(s)) => Err(format!("Tso failed: {}", s.message())),
            None => Err("Tso stream ended without an answer".to_owned()),
        }
    }

    /// A resolved-ts round ([`Cluster::store_safe_ts`]) and every store's
    /// `ReportMinResolvedTS` (TiKV's `report_min_resolved_ts`).
    async fn resolved_ts_round(&self) -> Result<(), String> {
        let ts = self.tso().await?;
        let per_store = self.cluster.advance_resolved_ts(ts);
        for (store_id, min_resolved_ts) in per_store {
            if !self.cluster.is_store_running(store_id) {
                continue;
            }
            let req = pdpb::ReportMinResolvedTsRequest {
                header: self.header(),
                store_id,
                min_resolved_ts,
            };
            let resp = self
                .pd()
                .report_min_resolved_ts(req)
                .await
                .map_err(|s| format!("ReportMinResolvedTS failed: {}", s.message()))?
                .into_inner();
            if let Some(e) = header_error(resp.header.as_ref()) {
                return Err(format!("ReportMinResolvedTS failed: {e}"));
            }
        }
        Ok(())
    }

    /// A split of `region_id` at `keys` proposed by `store_id`'s peer:
    /// validated, ids from `AskBatchSplit`, applied, `ReportBatchSplit`, then
    /// every resulting region reported. Returns them in key order.
    async fn split(
        &self,
        store_id: u64,
        region_id: u64,
        epoch: Option<metapb::RegionEpoch>,
        keys: &[Bytes],
        reason: pdpb::SplitReason,
    ) -> Result<Vec<metapb::Region>, Refusal> {
        let (region, keys) = self.cluster.validate_split(store_id, region_id, epoch, keys)?;
        let validated = region.region_epoch;
        let ask = pdpb::AskBatchSplitRequest {
            header: self.header(),
            region: Some(region),
            split_count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
            reason: reason as i32,
        };
        // PD refuses to split a region it has not heard of yet ("region not
        // found": the heartbeat of a region just made by a split is still on
        // its way). TiKV's split checker simply tries again later; so do we,
        // reporting the region again, for a bounded while.
        let mut tries = 0;
        let resp = loop {
            match self.pd().ask_batch_split(ask.clone()).await {
                Ok(resp) => break resp.into_inner(),
                Err(s) if s.message().contains("region not found") && tries < ASK_SPLIT_TRIES => {
                    tries += 1;
                    self.report(region_id);
                    tokio::time::sleep(ASK_SPLIT_RETRY).await;
                }
                Err(s) => return Err(format!("AskBatchSplit failed: {}", s.message())),
            }
        };
        if let Some(e) = header_error(resp.header.as_ref()) {
            return Err(format!("AskBatchSplit failed: {e}"));
        }
        let regions = self.cluster.apply_batch_split(region_id, validated, &keys, &resp.ids)?;
        let report =
            pdpb::ReportBatchSplitRequest { header: self.header(), regions: regions.clone() };
        // PD only logs it; the heartbeats below are what update PD.
        if let Err(s) = self.pd().report_batch_split(report).await {
            eprintln!("tikv-sim: ReportBatchSplit for region {region_id} failed: {}", s.message());
        }
        for r in &regions {
            self.report(r.id);
        }
        Ok(regions)
    }

    /// Carries out one answer PD sent on `store_id`'s heartbeat stream (the
    /// order of raftstore's `schedule_heartbeat_receiver`).
    async fn on_operator(&self, store_id: u64, resp: pdpb::RegionHeartbeatResponse) {
        if let Some(e) = header_error(resp.header.as_ref()) {
            eprintln!("tikv-sim: store {store_id}: region heartbeat error: {e}");
            return;
        }
        if !self.cluster.is_store_running(store_id) {
            // A crashed store receives nothing; PD times the operator out.
            return;
        }
        let region_id = resp.region_id;
        let epoch = resp.region_epoch;
        let what = |op: &str| format!("store {store_id}: {op} of region {region_id}");
        if let Some(cp) = resp.change_peer {
            match self.cluster.change_peers(
                store_id,
                region_id,
                epoch,
                &[cp],
                ConfChangeKind::Simple,
            ) {
                Ok(()) => self.applied("ChangePeer", region_id),
                Err(e) => self.refused(&what("ChangePeer"), &e),
            }
        } else if let Some(v2) = resp.change_peer_v2 {
            let (kind, result) = match v2.changes.len() {
                0 => (
                    "ChangePeerV2 leave joint",
                    self.cluster.leave_joint(store_id, region_id, epoch).map(|_| ()),
                ),
                1 => (
                    "ChangePeerV2",
                    self.cluster.change_peers(
                        store_id,
                        region_id,
                        epoch,
                        &v2.changes,
                        ConfChangeKind::Simple,
                    ),
                ),
                _ => (
                    "ChangePeerV2 joint",
                    self.cluster
                        .change_peers(
                            store_id,
                            region_id,
                            epoch,
                            &v2.changes,
                            ConfChangeKind::EnterJoint,
                        )
                        .and_then(|()| {
                            // Reported in the joint state, then left at once.
                            self.report(region_id);
                            self.cluster.leave_joint(store_id, region_id, None).map(|_| ())
                        }),
                ),
            };
            match result {
                Ok(()) => self.applied(kind, region_id),
                Err(e) => self.refused(&what("ChangePeerV2"), &e),
            }
        } else if let Some(tl) = resp.transfer_leader {
            match self.cluster.transfer_leader_from(store_id, region_id, tl.peer, &tl.peers) {
                Ok(_) => self.applied("TransferLeader", region_id),
                Err(e) => self.refused(&what("TransferLeader"), &e),
            }
        } else if let Some(split) = resp.split_region {
            if split.policy != pdpb::CheckPolicy::Usekey as i32 {
                let policy = pdpb::CheckPolicy::try_from(split.policy)
                    .map(|p| p.as_str_name().to_owned())
                    .unwrap_or_else(|_| split.policy.to_string());
                self.refused(
                    &what("SplitRegion"),
                    &format!("policy {policy} is not modelled (only USEKEY)"),
                );
            } else {
                match self
                    .split(store_id, region_id, epoch, &split.keys, pdpb::SplitReason::Admin)
                    .await
                {
                    // `split` reported every resulting region already.
                    Ok(_) => {
                        *self
                            .applied
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry("SplitRegion")
                            .or_default() += 1
                    }
                    Err(e) => self.refused(&what("SplitRegion"), &e),
                }
            }
        } else if resp.merge.is_some() {
            self.refused(&what("Merge"), "region merge is not modelled in the joined mode");
        } else if resp.switch_witnesses.is_some() {
            self.refused(&what("BatchSwitchWitness"), "witnesses are not modelled");
        }
    }
}

/// TiKV's `SplitRegion` RPC (`src/server/service/kv.rs`): the keys are
/// mapped into region key space (`encode_raw_key` for raw, memcomparable
/// for txn keys), raftstore's checks answer region errors (NotLeader,
/// EpochNotMatch, ...), then the split goes through PD as any other
/// (`Shared::split`); a failed one answers a message-only region error
/// "failed to split: ...".
impl StoreAdmin for Shared {
    // TiKV still reads the deprecated `split_key` and fills `left`/`right`
    // for two-way splits, for older clients.
    #[allow(deprecated)]
    fn split_region(
        &self,
        store_id: u64,
        req: kvrpcpb::SplitRegionRequest,
    ) -> Pin<Box<dyn Future<Output = kvrpcpb::SplitRegionResponse> + Send + '_>> {
        Box::pin(async move {
            let mut resp = kvrpcpb::SplitRegionResponse::default();
            let checked = self.cluster.lock().check_region(store_id, req.context.as_ref(), false);
            if let Err(e) = checked {
                resp.region_error = Some(*e);
                return resp;
            }
            let keys = self.cluster.lock().split_request_keys(&req);
            let ctx = req.context.unwrap_or_default();
            let split = self
                .split(store_id, ctx.region_id, ctx.region_epoch, &keys, pdpb::SplitReason::Admin)
                .await;
            match split {
                Ok(regions) => {
                    if let [left, right] = &regions[..] {
                        resp.left = Some(left.clone());
                        resp.right = Some(right.clone());
                    }
                    resp.regions = regions;
                }
                Err(e) => {
                    resp.region_error = Some(errorpb::Error {
                        message: format!("failed to split: {e}"),
                        ..Default::default()
                    });
                }
            }
            resp
        })
    }
}

/// Stores of a simulated cluster joined to a real PD, serving over gRPC on
/// loopback (module docs). Dropping it stops the heartbeats (the stores then
/// look dead to PD); [`JoinedCluster::shutdown`] also closes the listeners.
#[derive(Debug)]
pub struct JoinedCluster {
    shared: Arc<Shared>,
    server: SimServer,
    tasks: Tasks,
}

/// The heartbeat tasks, aborted when dropped.
#[derive(Debug)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl JoinedCluster {
    /// Joins PD at `opts.pd` with `opts.stores` stores over a model built
    /// from `cfg` (API version, txn encoding, seed; the cluster id becomes
    /// PD's). Must be called inside a tokio runtime.
    pub async fn start(cfg: ClusterConfig, opts: JoinOptions) -> Result<JoinedCluster, JoinError> {
        let started = std::time::Instant::now();
        let unix_start_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (mut pd, cluster_id) = connect(&opts.pd, opts.connect_timeout).await?;
        let header = Some(pdpb::RequestHeader { cluster_id, ..Default::default() });
        let bootstrapped = pd
            .is_bootstrapped(pdpb::IsBootstrappedRequest { header })
            .await
            .map_err(|s| JoinError::Pd("IsBootstrapped", s.message().to_owned()))?
            .into_inner()
            .bootstrapped;
        let stores = opts.stores.max(1);
        let mut store_ids = Vec::with_capacity(stores);
        for _ in 0..stores {
            store_ids.push(alloc_id(&mut pd, cluster_id).await?);
        }
        let bootstrap = if bootstrapped {
            None
        } else {
            Some((alloc_id(&mut pd, cluster_id).await?, alloc_id(&mut pd, cluster_id).await?))
        };
        // TTL time follows the wall clock, the clock of PD's TSO.
        let tso_base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(cfg.tso_base_ms, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let cfg = ClusterConfig { cluster_id, tso_base_ms, ..cfg };
        let cluster = Cluster::joined(cfg, &store_ids, &opts.store_version, bootstrap);
        let shared = Arc::new(Shared {
            pd: pd.clone(),
            cluster_id,
            cluster: cluster.clone(),
            streams: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(Vec::new()),
            applied: Mutex::new(BTreeMap::new()),
            started,
            unix_start_secs,
        });
        // Listen first: PutStore carries the real addresses.
        let server =
            SimServer::start_stores(cluster.clone(), ServerOptions::default(), shared.clone())
                .await?;
        let put_header = || Some(pdpb::RequestHeader { cluster_id, ..Default::default() });
        let registered = |id: u64| {
            cluster.store_meta(id).map(|meta| metapb::Store {
                // TiKV leaves the node state to PD (Preparing, then Serving).
                node_state: metapb::NodeState::Preparing as i32,
                start_timestamp: i64::try_from(unix_start_secs).unwrap_or(i64::MAX),
                ..meta
            })
        };
        if bootstrap.is_some() {
            let req = pdpb::BootstrapRequest {
                header: put_header(),
                store: registered(store_ids[0]),
                region: cluster.regions().first().cloned(),
            };
            let resp = pd
                .bootstrap(req)
                .await
                .map_err(|s| JoinError::Pd("Bootstrap", s.message().to_owned()))?
                .into_inner();
            if is_already_bootstrapped(resp.header.as_ref()) {
                // Another process bootstrapped first: join it without regions.
                cluster.lock().regions.clear();
                cluster.lock().region_ids.clear();
            } else if let Some(e) = header_error(resp.header.as_ref()) {
                return Err(JoinError::Pd("Bootstrap", e));
            }
        }
        for &id in &store_ids {
            let req = pdpb::PutStoreRequest { header: put_header(), store: registered(id) };
            let resp = pd
                .put_store(req)
                .await
                .map_err(|s| JoinError::Pd("PutStore", s.message().to_owned()))?
                .into_inner();
            if let Some(e) = header_error(resp.header.as_ref()) {
                return Err(JoinError::Pd("PutStore", e));
            }
        }
        for &id in &store_ids {
            shared.store_heartbeat(id).await?;
        }
        let mut tasks = Vec::new();
        for &id in &store_ids {
            let (tx, rx) = mpsc::unbounded_channel();
            shared.streams.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
            tasks.push(tokio::spawn(heartbeat_stream(shared.clone(), id, rx)));
        }
        shared.report_all();
        let periodic = shared.clone();
        let store_every = opts.store_heartbeat_interval;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(store_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                for &id in &store_ids {
                    if !periodic.cluster.is_store_running(id) {
                        continue;
                    }
                    if let Err(e) = periodic.store_heartbeat(id).await {
                        eprintln!("tikv-sim: store {id}: {e}");
                    }
                }
            }
        }));
        let periodic = shared.clone();
        let region_every = opts.region_heartbeat_interval;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(region_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                periodic.report_all();
            }
        }));
        let periodic = shared.clone();
        let resolve_every = opts.resolved_ts_interval;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(resolve_every);
            loop {
                tick.tick().await;
                if let Err(e) = periodic.resolved_ts_round().await {
                    eprintln!("tikv-sim: resolved ts: {e}");
                }
            }
        }));
        Ok(JoinedCluster { shared, server, tasks: Tasks(tasks) })
    }

    /// The model the stores serve (its regions are what the stores report).
    pub fn cluster(&self) -> &Cluster {
        &self.shared.cluster
    }

    /// The stores' gRPC server.
    pub fn server(&self) -> &SimServer {
        &self.server
    }

    /// PD's cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.shared.cluster_id
    }

    /// Every operator or split the stores refused so far, as logged.
    pub fn refusals(&self) -> Vec<String> {
        self.shared.refusals.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many operators of each kind PD sent and the stores carried out:
    /// `ChangePeer`, `ChangePeerV2` (one change), `ChangePeerV2 joint`
    /// (entered and left), `ChangePeerV2 leave joint` (PD's explicit leave
    /// step), `TransferLeader`, `SplitRegion`.
    pub fn applied_operators(&self) -> BTreeMap<String, u64> {
        let applied = self.shared.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    /// A store-initiated split (TiKV's split checker) of the region
    /// containing `region_key` (a key in region key space, see
    /// [`Cluster::region_key`]) at that key, proposed by the region's
    /// leader through `AskBatchSplit`. Returns the resulting regions in key
    /// order.
    pub async fn split(&self, region_key: &[u8]) -> Result<Vec<metapb::Region>, JoinError> {
        let region = self
            .shared
            .cluster
            .region_for_region_key(region_key)
            .ok_or_else(|| JoinError::Refused(format!("no region holds {region_key:?}")))?;
        let leader = self
            .shared
            .cluster
            .leader_of(region.id)
            .ok_or_else(|| JoinError::Refused(format!("region {} has no leader", region.id)))?;
        self.shared
            .split(
                leader.store_id,
                region.id,
                region.region_epoch,
                &[Bytes::copy_from_slice(region_key)],
                pdpb::SplitReason::Admin,
            )
            .await
            .map_err(JoinError::Refused)
    }

    /// Crashes a store ([`SimServer::stop_store`]): its leaders move to
    /// the lowest-id running peers, which report to PD at once (higher
    /// term); the stopped store sends no heartbeat until it restarts, so PD
    /// marks it disconnected after 20 s.
    pub async fn stop_store(&self, store_id: u64) -> Result<(), JoinError> {
        self.server.stop_store(store_id).await?;
        self.shared.report_all();
        Ok(())
    }

    /// Restarts a stopped store ([`SimServer::start_store`]) and heartbeats
    /// it at once.
    pub async fn start_store(&self, store_id: u64) -> Result<(), JoinError> {
        self.server.start_store(store_id).await?;
        self.shared.store_heartbeat(store_id).await?;
        self.shared.report_all();
        Ok(())
    }

    /// Stops the heartbeats and the store listeners.
    pub async fn shutdown(self) {
        drop(self.tasks);
        self.shared.streams.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.server.shutdown().await;
    }
}

/// Connects to PD and learns the cluster id (`GetMembers`), retrying until
/// `timeout`: a PD that has just started may not have a leader yet.
async fn connect(addr: &str, timeout: Duration) -> Result<(PdClient<Channel>, u64), JoinError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let fail = |e: String| JoinError::Connect(addr.to_owned(), e);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    let mut last;
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                let mut pd = PdClient::new(channel);
                match pd.get_members(pdpb::GetMembersRequest { header: None }).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        let id = resp.header.as_ref().map_or(0, |h| h.cluster_id);
                        match header_error(resp.header.as_ref()) {
                            None if id != 0 && resp.leader.is_some() => return Ok((pd, id)),
                            None => last = "no leader yet".to_owned(),
                            Some(e) => last = e,
                        }
                    }
                    Err(s) => last = s.message().to_owned(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(last));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn alloc_id(pd: &mut PdClient<Channel>, cluster_id: u64) -> Result<u64, JoinError> {
    let header = Some(pdpb::RequestHeader { cluster_id, ..Default::default() });
    let resp = pd
        .alloc_id(pdpb::AllocIdRequest { header, count: 1 })
        .await
        .map_err(|s| JoinError::Pd("AllocID", s.message().to_owned()))?
        .into_inner();
    if let Some(e) = header_error(resp.header.as_ref()) {
        return Err(JoinError::Pd("AllocID", e));
    }
    Ok(resp.id)
}

/// One store's `RegionHeartbeat` stream: reports go out from `rx`, PD's
/// operators come back and are carried out in order. A broken stream is
/// reopened (with a new sending half registered) after a pause.
async fn heartbeat_stream(
    shared: Arc<Shared>,
    store_id: u64,
    mut rx: mpsc::UnboundedReceiver<pdpb::RegionHeartbeatRequest>,
) {
    loop {
        let outbound =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|req| (req, rx)) },
            );
        // PD sends headers with its first operator only, so this waits
        // until PD has something to say; reports flow meanwhile.
        match shared.pd().region_heartbeat(outbound).await {
            Ok(resp) => {
                let mut inbound = resp.into_inner();
                while let Some(msg) = inbound.next().await {
                    match msg {
                        Ok(op) => shared.on_operator(store_id, op).await,
                        Err(s) => {
                            eprintln!(
                                "tikv-sim: store {store_id}: heartbeat stream: {}",
                                s.message()
                            );
                            break;
                        }
                    }
                }
            }
            Err(s) => {
                eprintln!("tikv-sim: store {store_id}: heartbeat stream: {}", s.message());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (tx, new_rx) = mpsc::unbounded_channel();
        shared.streams.lock().unwrap_or_else(|e| e.into_inner()).insert(store_id, tx);
        rx = new_rx;
        for id in shared.cluster.region_ids() {
            if shared.cluster.leader_of(id).is_some_and(|p| p.store_id == store_id) {
                shared.report(id);
            }
        }
    }
}
