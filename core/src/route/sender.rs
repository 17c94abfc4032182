//! The retrying sender for one region: client-go's `RegionRequestSender`
//! with its replica selector ([`super::replica`]).

use std::sync::Arc;

use tikv_proto::{kvrpcpb, metapb};

use crate::backoff::{BackoffKind, Backoffer};
use crate::error::Error;
use crate::op::Operation;
use crate::pd::ResolveStore;
use crate::region::Liveness;
use crate::region::{EpochNotMatchAction, InvalidReason, RegionRef};
use crate::route::replica::{BusyStep, NotLeaderStep, Pick, ReplicaRead, ReplicaSelector};
use crate::route::store_health::{LIVENESS_TIMEOUT, liveness_of};
use crate::rpc::region_error::{RegionErrorAction, classify};
use crate::rpc::{KvRequest, KvResponse, Request, Response, Rpc, RpcError, RpcId, Target};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// How a [`RegionCall`] ended when it did not fail.
#[derive(Debug)]
pub enum RegionOutcome {
    /// TiKV answered without a region error; keys are decoded to user keys.
    Response(KvResponse),
    /// The cached region was wrong (split, merged, moved), or no replica of
    /// it is left to try. The cache has been updated or invalidated; the
    /// caller must locate its keys again and rebuild the request
    /// (re-splitting a batch if the keys now span several regions).
    Relocate,
}

/// Consecutive retries without a sleep (leader switches, fast retries on
/// other replicas) after which the sender backs off anyway, so two replicas
/// naming each other as leader cannot make it spin.
const MAX_RETRIES_WITHOUT_BACKOFF: u32 = 10;

/// client-go's `ReadTimeoutShort`: a read whose timeout is shorter was
/// given a configurable timeout, and running out of it moves the read to
/// another replica at once (`isReadReqConfigurableTimeout`).
const READ_TIMEOUT_SHORT: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Phase {
    Idle,
    Resolving(Box<ResolveStore>),
    /// An attempt is decided (waiting in `RegionCall::due` for its
    /// request) or in flight.
    Sending {
        id: RpcId,
        store_id: u64,
        sent_at: Instant,
        /// The store the request went to: the peer's, or its proxy's.
        via: u64,
    },
    /// A send failed: the store it went to is asked whether it is alive
    /// before the selector gives up on it (client-go `checkLiveness`).
    CheckingLiveness {
        id: RpcId,
        /// The store asked.
        via: u64,
        /// Why the send failed, for the backoff that follows.
        failure: String,
    },
    Sleeping {
        until: Instant,
        then: AfterSleep,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AfterSleep {
    /// Pick a replica again.
    Retry,
    Relocate,
    /// Send to the replica already picked (the sleep was one deferred for
    /// its store).
    Send {
        peer: usize,
        replica_read: bool,
        stale_read: bool,
        proxy: Option<usize>,
    },
}

/// One try of a [`RegionCall`]: where it goes and the routing its request's
/// `kvrpcpb::Context` must carry. The parent builds the request for every
/// attempt from its own state ([`RegionCall::poll_rpc`]), as a QUIC sender
/// rebuilds a retransmission from what is still unacknowledged rather than
/// keeping the sent packet: nothing keeps a copy of the request for retries.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    id: RpcId,
    /// The peer asked: the one the replica selector picked.
    pub peer: metapb::Peer,
    /// The peer's store address.
    pub addr: Arc<str>,
    /// A retry of the same request (TiKV's `is_retry_request`).
    pub is_retry: bool,
    /// Served as a replica read (`Context.replica_read`): the peer is not
    /// the leader and the request is a snapshot read.
    pub replica_read: bool,
    /// Served as a stale read (`Context.stale_read`): the peer reads its
    /// own data at the read ts, or answers `DataIsNotReady`. Only
    /// transactional snapshot reads are sent so.
    pub stale_read: bool,
    /// `Context.busy_threshold_ms` of a snapshot read (load-based replica
    /// read); zero otherwise.
    pub busy_threshold_ms: u32,
    /// When the runtime gives up on the attempt.
    pub deadline: Instant,
    /// The store the request is sent to when the peer's store is not
    /// reachable from the client: it forwards the request to `addr`
    /// (`tikv-forwarded-host`, client-go's `RPCContext.ProxyAddr`).
    pub proxy: Option<Proxy>,
    region_id: u64,
    epoch: metapb::RegionEpoch,
    cluster_id: u64,
    timeout_ms: u64,
}

/// A store that forwards an [`Attempt`] to the peer's store (client-go's
/// `RPCContext.ProxyStore`, `ProxyAddr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy's store id.
    pub store_id: u64,
    /// The proxy's store address, which the request is sent to.
    pub addr: Arc<str>,
}

impl Attempt {
    /// Where the request goes: the peer's store, or the proxy's with the
    /// peer's store address as the forwarded host.
    pub fn target(&self) -> Target {
        match &self.proxy {
            None => Target::Store {
                store_id: self.peer.store_id,
                addr: self.addr.clone(),
                forwarded_host: None,
            },
            Some(proxy) => Target::Store {
                store_id: proxy.store_id,
                addr: proxy.addr.clone(),
                forwarded_host: Some(self.addr.clone()),
            },
        }
    }

    /// Writes the attempt's routing into `ctx`: region id, epoch, peer,
    /// cluster id, retry and replica-read flags, busy threshold, and the
    /// RPC timeout as the max execution duration when the request did not
    /// set one (client-go fills it so).
    pub fn stamp(&self, ctx: &mut kvrpcpb::Context) {
        ctx.region_id = self.region_id;
        ctx.region_epoch = Some(self.epoch);
        ctx.peer = Some(self.peer);
        ctx.cluster_id = self.cluster_id;
        ctx.is_retry_request = self.is_retry;
        ctx.replica_read = self.replica_read;
        ctx.stale_read = self.stale_read;
        ctx.busy_threshold_ms = self.busy_threshold_ms;
        if ctx.max_execution_duration_ms == 0 {
            ctx.max_execution_duration_ms = self.timeout_ms;
        }
    }
}

/// Sends one request to one region and handles everything TiKV can answer,
/// following client-go's region-error table ([`crate::rpc::region_error`]):
///
/// - the [`ReplicaSelector`] decides each [`Attempt`]'s peer: the leader
///   for leader reads and every write, a follower or learner for replica
///   reads ([`RegionCall::with_replica_read`]), never a TiFlash store; the
///   parent builds the request for it, which the call stamps (region id,
///   epoch, peer, replica read, API version, keyspace, cluster id, retry
///   flag, max execution duration) and encodes with the client's API codec;
/// - resolves a store's address through PD when it is unknown;
/// - on a send failure backs off `BoTiKVRPC` and tries another peer (a
///   follower answers `NotLeader` with the new leader once one is elected);
/// - on a region error switches leader, backs off and retries, retries
///   another replica at once, or hands the request back as
///   [`RegionOutcome::Relocate`] after updating the cache.
///
/// The response is decoded before it is returned. The call runs like an
/// [`Operation`], except that [`RegionCall::poll_rpc`] takes the builder of
/// the request.
#[derive(Debug)]
pub struct RegionCall {
    view: Arc<ClusterView>,
    region: RegionRef,
    selector: ReplicaSelector,
    /// The command of the last request built, for matching its answer.
    command: &'static str,
    /// The last request built is a snapshot read.
    snapshot_read: bool,
    /// The last request built went out as a replica read.
    sent_replica_read: bool,
    /// The last request built went out as a stale read.
    sent_stale_read: bool,
    /// The read type of the first attempt as its request source names it
    /// (client-go's `req.ReadType`: `leader`, `follower`, `stale_leader`,
    /// `stale_follower`), which retries repeat.
    first_read_type: &'static str,
    timeout: Duration,
    backoffer: Option<Backoffer>,
    /// The store resolved last, so a store PD describes but the table
    /// refuses ends the call instead of being resolved forever.
    last_resolved: Option<u64>,
    attempts: u32,
    quick_retries: u32,
    lost_answers: u32,
    next_id: u64,
    phase: Phase,
    /// The attempt decided and not yet built.
    due: Option<Attempt>,
    /// The liveness probe decided and not yet sent.
    due_probe: Option<Rpc>,
    result: Option<Result<RegionOutcome, Error>>,
}

impl RegionCall {
    /// A call on `region`, each attempt bounded by `timeout`, retries
    /// bounded by `backoffer`, reading from the leader. The request comes
    /// from the builder given to [`RegionCall::poll_rpc`], once per attempt.
    pub fn new(
        view: Arc<ClusterView>,
        region: RegionRef,
        timeout: Duration,
        backoffer: Backoffer,
    ) -> RegionCall {
        let mut selector =
            ReplicaSelector::new(&region, &ReplicaRead::leader(), view.replica_rng());
        selector.set_forwarding(view.config.enable_forwarding);
        RegionCall {
            view,
            region,
            selector,
            command: "",
            snapshot_read: false,
            sent_replica_read: false,
            sent_stale_read: false,
            first_read_type: "",
            timeout,
            backoffer: Some(backoffer),
            last_resolved: None,
            attempts: 0,
            quick_retries: 0,
            lost_answers: 0,
            next_id: 0,
            phase: Phase::Idle,
            due: None,
            due_probe: None,
            result: None,
        }
    }

    /// Chooses replicas as `read` says. Only snapshot reads
    /// ([`KvRequest::is_snapshot_read`]) are ever sent as replica reads;
    /// any other request to a follower carries leader semantics.
    pub fn with_replica_read(mut self, read: &ReplicaRead) -> RegionCall {
        self.selector.set_read(read);
        self
    }

    /// The next RPC: a PD lookup of a store, a liveness probe of a store a
    /// send failed on, or the request of the attempt due, which `build` makes (user keys, any context fields of its own);
    /// the call stamps the attempt's routing into it and encodes it.
    /// `Some(Err)` when the request cannot be encoded: the call is over
    /// with that error.
    pub fn poll_rpc(
        &mut self,
        build: impl FnOnce(&Attempt) -> KvRequest,
    ) -> Option<Result<Rpc, Error>> {
        if let Phase::Resolving(resolve) = &mut self.phase {
            return resolve.poll_rpc().map(Ok);
        }
        if let Some(probe) = self.due_probe.take() {
            return Some(Ok(probe));
        }
        let mut attempt = self.due.take()?;
        let mut request = build(&attempt);
        if let Err(e) = self.view.codec.encode_request(&mut request) {
            self.phase = Phase::Done;
            return Some(Err(e));
        }
        self.snapshot_read = request.is_snapshot_read();
        attempt.replica_read &= self.snapshot_read;
        if !self.snapshot_read {
            attempt.busy_threshold_ms = 0;
        }
        attempt.stale_read &=
            matches!(request, KvRequest::Get(_) | KvRequest::BatchGet(_) | KvRequest::Scan(_));
        self.sent_replica_read = attempt.replica_read;
        self.sent_stale_read = attempt.stale_read;
        let is_write = request.is_write();
        let ctx = request.context_mut();
        if is_write && ctx.max_execution_duration_ms == 0 {
            let limit = self.view.config.max_write_execution_time;
            ctx.max_execution_duration_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        }
        attempt.stamp(ctx);
        self.patch_request_source(&attempt, ctx);
        self.view.codec.stamp_context(ctx);
        self.command = request.name();
        Some(Ok(Rpc {
            id: attempt.id,
            target: attempt.target(),
            request: Request::Kv(request),
            deadline: attempt.deadline,
        }))
    }

    /// client-go `patchRequestSource`: a request that names its source
    /// gets the replica it is sent to in front, `{read type}_{source}`
    /// with the read type `leader`, `follower`, `stale_leader` or
    /// `stale_follower`; a retry names the first attempt's read type and
    /// this attempt's replica, `retry_{first read type}_{replica}_{source}`
    /// (TiKV's quota limiter keys on the last part).
    fn patch_request_source(&mut self, attempt: &Attempt, ctx: &mut kvrpcpb::Context) {
        if ctx.request_source.is_empty() {
            return;
        }
        let to_leader = attempt.peer.id == self.region.peers()[self.region.leader_index()].id;
        let replica = if to_leader { "leader" } else { "follower" };
        let source = std::mem::take(&mut ctx.request_source);
        if attempt.is_retry && !self.first_read_type.is_empty() {
            ctx.request_source = format!("retry_{}_{replica}_{source}", self.first_read_type);
            return;
        }
        self.first_read_type = match (attempt.stale_read, to_leader) {
            (false, true) => "leader",
            (false, false) => "follower",
            (true, true) => "stale_leader",
            (true, false) => "stale_follower",
        };
        ctx.request_source = format!("{}_{source}", self.first_read_type);
    }

    /// Attempts decided so far (each built and sent, or about to be).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The region this call targets.
    pub fn region(&self) -> &RegionRef {
        &self.region
    }

    /// The replica selector's state, one line (for transcripts).
    pub fn describe_replicas(&self) -> String {
        self.selector.describe(&self.region)
    }

    /// The backoffer, once the call is over (for the parent to merge).
    pub fn take_backoffer(&mut self) -> Option<Backoffer> {
        self.backoffer.take()
    }

    /// Attempts that failed in transport (deadline, unreachable store): the
    /// store may have applied each of them. Attempts answered with a region
    /// error were not applied.
    pub fn lost_answers(&self) -> u32 {
        self.lost_answers
    }

    fn finish(&mut self, result: Result<RegionOutcome, Error>) {
        self.phase = Phase::Done;
        self.result = Some(result);
    }

    /// Makes the cache's entry follow an invalidation of this call's
    /// handle: the cache may hold another handle for the same region
    /// version (re-inserted meanwhile).
    fn sync_invalidation(&self) {
        if let Some(reason) = self.region.invalid_reason() {
            self.view.regions.invalidate(self.region.ver_id(), reason);
        }
    }

    /// Switches the cache's copy of the region to the leader the selector
    /// switched this call's handle to.
    fn follow_leader(&self, store_id: Option<u64>) {
        if let Some(store_id) = store_id {
            self.view.regions.update_leader(self.region.ver_id(), store_id);
        }
    }

    fn attempt(&mut self, now: Instant) {
        let pick = self.selector.next(&self.region, &self.view.stores, now);
        self.sync_invalidation();
        match pick {
            Pick::Exhausted => {
                // client-go `backoffOnNoCandidate`: the deferred busy sleep
                // is taken before the request goes back to be re-located.
                // Otherwise a region-miss sleep, as client-go's callers take
                // for the pseudo `EpochNotMatch` its sender returns when no
                // replica is left (`MayBackoffForRegionError`): a leader
                // the client cannot reach while the followers keep naming
                // it would otherwise be re-located and retried forever
                // without ever spending the budget.
                let (kind, why) = if self.selector.take_any_pending_backoff() {
                    (BackoffKind::ServerBusy, "every replica is busy")
                } else {
                    (BackoffKind::RegionMiss, "no replica left to try")
                };
                self.sleep_then(
                    kind,
                    format!("region {}: {why}", self.region.id()),
                    AfterSleep::Relocate,
                    now,
                );
            }
            Pick::Resolve(store_id) if self.last_resolved == Some(store_id) => {
                self.store_unusable(now);
            }
            Pick::Resolve(store_id) => {
                let Some(backoffer) = self.backoffer.take() else {
                    return;
                };
                let mut resolve =
                    Box::new(ResolveStore::new(self.view.clone(), store_id, backoffer));
                resolve.start(now);
                self.phase = Phase::Resolving(resolve);
                self.check_resolve(now);
            }
            Pick::Send { peer, replica_read, stale_read, proxy } => {
                self.last_resolved = None;
                let store_id = self.region.peers()[peer].store_id;
                if self.selector.take_pending_backoff(store_id) {
                    self.sleep_then(
                        BackoffKind::ServerBusy,
                        format!("store {store_id} was busy"),
                        AfterSleep::Send { peer, replica_read, stale_read, proxy },
                        now,
                    );
                } else {
                    self.send(peer, replica_read, stale_read, proxy, now);
                }
            }
        }
    }

    /// The store of the picked replica is gone or PD cannot name it: the
    /// region info is stale. Re-locate after a region-miss backoff.
    fn store_unusable(&mut self, now: Instant) {
        self.region.invalidate(InvalidReason::Other);
        self.view.regions.invalidate(self.region.ver_id(), InvalidReason::Other);
        self.sleep_then(
            BackoffKind::RegionMiss,
            "store of the replica cannot be resolved",
            AfterSleep::Relocate,
            now,
        );
    }

    fn check_resolve(&mut self, now: Instant) {
        let Phase::Resolving(resolve) = &mut self.phase else {
            return;
        };
        let Some(outcome) = resolve.poll_result() else {
            return;
        };
        self.backoffer = resolve.take_backoffer();
        self.phase = Phase::Idle;
        match outcome {
            Ok(store) if !store.address.is_empty() && !store.is_tombstone() => {
                self.last_resolved = Some(store.id);
                self.attempt(now);
            }
            Ok(_) | Err(_) => self.store_unusable(now),
        }
    }

    fn send(
        &mut self,
        peer: usize,
        replica_read: bool,
        stale_read: bool,
        proxy: Option<usize>,
        now: Instant,
    ) {
        let store_addr = |store_id: u64| -> Option<Arc<str>> {
            match self.view.stores.get(store_id) {
                Some(store) if !store.address.is_empty() && !store.is_tombstone() => {
                    Some(store.address.clone())
                }
                _ => None,
            }
        };
        let peer = self.region.peers()[peer];
        let store_id = peer.store_id;
        let proxy = match proxy.map(|p| self.region.peers()[p].store_id) {
            None => Ok(None),
            Some(id) => store_addr(id).map(|addr| Some(Proxy { store_id: id, addr })).ok_or(()),
        };
        let (Some(addr), Ok(proxy)) = (store_addr(store_id), proxy) else {
            self.store_unusable(now);
            return;
        };
        let via = proxy.as_ref().map_or(store_id, |p| p.store_id);
        self.next_id += 1;
        let id = RpcId(self.next_id);
        self.due = Some(Attempt {
            id,
            peer,
            addr,
            is_retry: self.attempts > 0,
            replica_read,
            stale_read,
            busy_threshold_ms: u32::try_from(self.selector.busy_threshold().as_millis())
                .unwrap_or(u32::MAX),
            deadline: now + self.timeout,
            proxy,
            region_id: self.region.id(),
            epoch: self.region.epoch(),
            cluster_id: self.view.pd.cluster_id(),
            timeout_ms: self.timeout.as_millis() as u64,
        });
        self.attempts += 1;
        self.phase = Phase::Sending { id, store_id, sent_at: now, via };
    }

    /// client-go `onSendFail`: a send to the store `via` (the peer's, or
    /// its proxy's) failed. Its liveness is probed first,
    /// as client-go's `checkLiveness` does synchronously: a store that
    /// answers `SERVING` stays a candidate (the request itself failed, or
    /// one connection broke), anything else makes the selector give up on
    /// it. A store already not reachable (another call's probe failed, and
    /// the background probes own it) is not asked again; concurrent probes
    /// of one store share one in flight ([`crate::rpc::CollapseKey`]).
    /// Either way the call then backs off `BoTiKVRPC` and picks again.
    fn check_liveness(&mut self, via: u64, failure: String, now: Instant) {
        let store = self.view.stores.get(via);
        let probe = match &store {
            Some(s) if s.health().liveness() == Liveness::Reachable && !s.address.is_empty() => {
                Some(s.address.clone())
            }
            _ => None,
        };
        let Some(addr) = probe else {
            let liveness = store.map_or(Liveness::Unreachable, |s| s.health().liveness());
            let liveness =
                if liveness == Liveness::Reachable { Liveness::Unreachable } else { liveness };
            self.on_liveness(via, liveness, failure, now);
            return;
        };
        self.next_id += 1;
        let id = RpcId(self.next_id);
        self.due_probe = Some(Rpc {
            id,
            target: Target::Store { store_id: via, addr, forwarded_host: None },
            request: Request::HealthCheck,
            deadline: now + LIVENESS_TIMEOUT,
        });
        self.phase = Phase::CheckingLiveness { id, via, failure };
    }

    /// The store `via` a send failed on was found `liveness`: the selector
    /// gives up on it unless it is reachable; then back off and pick again.
    fn on_liveness(&mut self, via: u64, liveness: Liveness, failure: String, now: Instant) {
        if liveness == Liveness::Reachable {
            self.view.stores.set_liveness(via, Liveness::Reachable);
        } else {
            self.selector.on_send_failure(&self.region, &self.view.stores, liveness);
        }
        self.sleep_then(BackoffKind::TikvRpc, failure, AfterSleep::Retry, now);
    }

    fn sleep_then(
        &mut self,
        kind: BackoffKind,
        reason: impl std::fmt::Display,
        then: AfterSleep,
        now: Instant,
    ) {
        let Some(backoffer) = self.backoffer.as_mut() else {
            return;
        };
        match backoffer.backoff(kind, reason) {
            Ok(sleep) => {
                self.quick_retries = 0;
                self.phase = Phase::Sleeping { until: now + sleep, then };
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    fn retry_now(&mut self, now: Instant) {
        self.quick_retries += 1;
        if self.quick_retries > MAX_RETRIES_WITHOUT_BACKOFF {
            self.sleep_then(
                BackoffKind::RegionScheduling,
                "too many retries without backoff",
                AfterSleep::Retry,
                now,
            );
        } else {
            self.attempt(now);
        }
    }

    /// client-go `isReadReqConfigurableTimeout`: a snapshot read given a
    /// timeout shorter than the default short read timeout.
    fn has_configurable_read_timeout(&self) -> bool {
        self.snapshot_read && self.timeout < READ_TIMEOUT_SHORT
    }

    fn on_kv_response(&mut self, store_id: u64, mut resp: KvResponse, now: Instant) {
        let Some(region_error) = resp.take_region_error() else {
            let moved = self
                .selector
                .on_success(&self.region, self.sent_replica_read || self.sent_stale_read);
            self.follow_leader(moved);
            let decoded = self.view.codec.decode_response(&mut resp).map(|()| resp);
            self.finish(decoded.map(RegionOutcome::Response));
            return;
        };
        let ver = self.region.ver_id();
        match classify(&region_error) {
            RegionErrorAction::NotLeader(leader) => {
                // The selector switches this call's own handle (the next
                // attempt picks its peer from it); the cache's copy follows.
                let step = self.selector.on_not_leader(&self.region, leader.as_ref());
                self.sync_invalidation();
                match step {
                    NotLeaderStep::Backoff => self.sleep_then(
                        BackoffKind::RegionScheduling,
                        format!("store {store_id}: {}", describe(&region_error)),
                        AfterSleep::Retry,
                        now,
                    ),
                    NotLeaderStep::Retry(moved) => {
                        self.follow_leader(moved);
                        self.retry_now(now);
                    }
                }
            }
            RegionErrorAction::Backoff(kind) => {
                self.sleep_then(
                    kind,
                    format!("store {store_id}: {}", describe(&region_error)),
                    AfterSleep::Retry,
                    now,
                );
            }
            RegionErrorAction::RegionNotFound => {
                let retry_on_leader = self.selector.on_region_not_found(&self.region);
                self.sync_invalidation();
                if retry_on_leader {
                    self.retry_now(now);
                } else {
                    self.sleep_then(
                        BackoffKind::RegionMiss,
                        describe(&region_error),
                        AfterSleep::Relocate,
                        now,
                    );
                }
            }
            RegionErrorAction::ServerIsBusy { deadline: true, .. }
            | RegionErrorAction::DeadlineExceeded
                if self.has_configurable_read_timeout() =>
            {
                self.selector.on_deadline_exceeded();
                self.retry_now(now);
            }
            RegionErrorAction::ServerIsBusy { estimated_wait_ms, .. } => {
                match self.selector.on_server_is_busy(
                    &self.region,
                    &self.view.stores,
                    estimated_wait_ms,
                    now,
                ) {
                    BusyStep::FastRetry => self.retry_now(now),
                    BusyStep::Backoff => self.sleep_then(
                        BackoffKind::ServerBusy,
                        format!("store {store_id}: {}", describe(&region_error)),
                        AfterSleep::Retry,
                        now,
                    ),
                }
            }
            RegionErrorAction::DataIsNotReady => {
                self.selector.on_data_is_not_ready();
                self.retry_now(now);
            }
            RegionErrorAction::FlashbackInProgress => {
                if self.selector.on_flashback_in_progress(&self.region, self.sent_replica_read) {
                    self.retry_now(now);
                } else {
                    self.finish(Err(Error::Region(Box::new(region_error))));
                }
            }
            RegionErrorAction::DeadlineExceeded | RegionErrorAction::TryNextReplica => {
                self.retry_now(now)
            }
            RegionErrorAction::Relocate { invalidate, backoff, invalidate_store } => {
                if let Some(reason) = invalidate {
                    self.region.invalidate(reason);
                    self.view.regions.invalidate(ver, reason);
                }
                if invalidate_store {
                    self.view.stores.invalidate(store_id);
                }
                match backoff {
                    Some(kind) => {
                        self.sleep_then(kind, describe(&region_error), AfterSleep::Relocate, now)
                    }
                    None => self.finish(Ok(RegionOutcome::Relocate)),
                }
            }
            RegionErrorAction::EpochNotMatch(current) => {
                // Regions outside our keyspace (V2) or undecodable ones are
                // dropped, as client-go's codec does.
                let decoded: Vec<_> = current
                    .into_iter()
                    .filter_map(|r| self.view.codec.decode_region(r).ok().flatten())
                    .collect();
                match self.view.regions.on_epoch_not_match(ver, decoded, store_id, now) {
                    // TiKV has not caught up with our epoch yet.
                    EpochNotMatchAction::BackoffAndRetry => self.sleep_then(
                        BackoffKind::RegionMiss,
                        "epoch not match: TiKV behind the cache",
                        AfterSleep::Retry,
                        now,
                    ),
                    EpochNotMatchAction::BackoffAndRelocate => self.sleep_then(
                        BackoffKind::RegionMiss,
                        "epoch not match without current regions",
                        AfterSleep::Relocate,
                        now,
                    ),
                    // client-go's MayBackoffForRegionError: no sleep when
                    // TiKV told us the current regions.
                    EpochNotMatchAction::RelocateNow => self.finish(Ok(RegionOutcome::Relocate)),
                }
            }
            RegionErrorAction::Undetermined => {
                self.finish(Err(Error::Undetermined(format!(
                    "region {} on store {store_id}: {}",
                    ver.id, region_error.message
                ))));
            }
            RegionErrorAction::Fail => self.finish(Err(Error::Region(Box::new(region_error)))),
        }
    }
}

/// A short name for a region error, for backoff reasons.
fn describe(e: &tikv_proto::errorpb::Error) -> String {
    if e.message.is_empty() { format!("{e:?}") } else { e.message.clone() }
}

/// The [`Operation`] inputs and outputs; the output side is
/// [`RegionCall::poll_rpc`], which needs the request's builder.
impl RegionCall {
    /// Begins the call: the first attempt, or the lookup of its store.
    pub fn start(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Idle) && self.result.is_none() {
            self.attempt(now);
        }
    }

    /// Feeds the outcome of an RPC emitted under `id`.
    pub fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        match &mut self.phase {
            Phase::Resolving(resolve) => {
                resolve.on_response(id, response, now);
                self.check_resolve(now);
            }
            Phase::CheckingLiveness { id: expected, via, failure } if *expected == id => {
                let (via, failure) = (*via, std::mem::take(failure));
                self.phase = Phase::Idle;
                let (liveness, _) = liveness_of(response);
                self.on_liveness(via, liveness, failure, now);
            }
            Phase::Sending { id: expected, store_id, sent_at, via } if *expected == id => {
                let (store_id, via) = (*store_id, *via);
                let took = now.saturating_duration_since(*sent_at);
                self.selector.record_attempt_time(took);
                if response.is_ok() {
                    self.selector.record_latency(&self.region, &self.view.stores, took);
                }
                self.phase = Phase::Idle;
                match response {
                    Ok(Response::Kv(resp)) => {
                        let matches = resp.name() == self.command;
                        if matches {
                            self.on_kv_response(store_id, resp, now);
                        } else {
                            self.finish(Err(Error::Rpc(RpcError::Mismatch)));
                        }
                    }
                    Ok(
                        Response::Pd(_)
                        | Response::Timestamp(_)
                        | Response::StoreSafeTs(_)
                        | Response::HealthCheck(_),
                    ) => self.finish(Err(Error::Rpc(RpcError::Mismatch))),
                    // Never sent: not a lost answer, and a retry would be
                    // refused the same way.
                    Err(e @ RpcError::Rejected(_)) => self.finish(Err(Error::Rpc(e))),
                    Err(RpcError::DeadlineExceeded) if self.has_configurable_read_timeout() => {
                        // client-go `onReadReqConfigurableTimeout`: another
                        // replica at once, no backoff, no store invalidation.
                        self.lost_answers += 1;
                        self.selector.on_deadline_exceeded();
                        self.retry_now(now);
                    }
                    Err(e) => {
                        self.lost_answers += 1;
                        let failure = format!("send to store {store_id} failed: {e}");
                        self.check_liveness(via, failure, now);
                    }
                }
            }
            _ => {}
        }
    }

    /// Called once the instant of [`RegionCall::poll_timeout`] has passed.
    pub fn on_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Resolving(resolve) => {
                resolve.on_timeout(now);
                self.check_resolve(now);
            }
            Phase::Sleeping { until, then } if now >= *until => {
                let then = *then;
                self.phase = Phase::Idle;
                match then {
                    AfterSleep::Retry => self.attempt(now),
                    AfterSleep::Relocate => self.finish(Ok(RegionOutcome::Relocate)),
                    AfterSleep::Send { peer, replica_read, stale_read, proxy } => {
                        self.send(peer, replica_read, stale_read, proxy, now)
                    }
                }
            }
            _ => {}
        }
    }

    /// When the call next wants [`RegionCall::on_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Resolving(resolve) => resolve.poll_timeout(),
            Phase::Sleeping { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// The outcome, once.
    pub fn poll_result(&mut self) -> Option<Result<RegionOutcome, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;

    /// What a call hands its parent moves by value on every answer (see
    /// [`crate::rpc`]'s boxed messages): a variant added unboxed fails here.
    #[test]
    fn outcome_stays_small() {
        const WORD: usize = size_of::<usize>();
        assert!(size_of::<RegionOutcome>() <= 2 * WORD, "RegionOutcome");
        let outcome = size_of::<Result<RegionOutcome, Error>>();
        // The largest variant is `Error::WriteConflict` (three timestamps
        // and two keys).
        assert!(outcome <= 12 * WORD, "Result<RegionOutcome, Error>: {outcome}");
    }
}
