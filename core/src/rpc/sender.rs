//! The retrying sender for one region: client-go's `RegionRequestSender`
//! on the leader-only path.

use std::sync::Arc;

use crate::backoff::{BackoffKind, Backoffer};
use crate::error::Error;
use crate::op::Operation;
use crate::pd::ResolveStore;
use crate::region::{EpochNotMatchAction, InvalidReason, RegionRef};
use crate::rpc::region_error::{RegionErrorAction, classify};
use crate::rpc::{KvRequest, KvResponse, Request, Response, Rpc, RpcError, RpcId, Target};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// How a [`RegionCall`] ended when it did not fail.
#[derive(Debug)]
pub enum RegionOutcome {
    /// TiKV answered without a region error; keys are decoded to user keys.
    Response(KvResponse),
    /// The cached region was wrong (split, merged, moved). The cache has been
    /// updated or invalidated; the caller must locate its keys again and
    /// rebuild the request (re-splitting a batch if the keys now span
    /// several regions).
    Relocate,
}

/// Consecutive retries without a sleep (leader switches) after which the
/// sender backs off anyway, so two replicas naming each other as leader
/// cannot make it spin (client-go bounds this through per-replica attempt
/// counts in its replica selector).
const MAX_RETRIES_WITHOUT_BACKOFF: u32 = 10;

#[derive(Debug)]
enum Phase {
    Idle,
    Resolving(Box<ResolveStore>),
    Sending {
        id: RpcId,
        store_id: u64,
    },
    /// A retry is due and the request was sent away: the parent supplies a
    /// fresh one ([`RegionCall::supply_request`]).
    AwaitingRequest {
        peer: tikv_proto::metapb::Peer,
        addr: Arc<str>,
        now: Instant,
    },
    Sleeping {
        until: Instant,
        then: AfterSleep,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AfterSleep {
    Retry,
    Relocate,
}

/// Sends one request to the leader of one region and handles everything
/// TiKV can answer, following client-go's region-error table
/// ([`crate::rpc::region_error`]):
///
/// - stamps the `kvrpcpb::Context` (region id, epoch, peer, API version,
///   keyspace, cluster id, retry flag, max execution duration);
/// - resolves the leader's store address through PD when it is unknown;
/// - on a send failure backs off `BoTiKVRPC` and tries the next peer (a
///   follower answers `NotLeader` with the new leader once one is elected);
/// - on a region error switches leader, backs off and retries, or hands the
///   request back as [`RegionOutcome::Relocate`] after updating the cache.
///
/// The request is encoded with the client's API codec once, at construction,
/// and the response decoded before it is returned.
#[derive(Debug)]
pub struct RegionCall {
    view: Arc<ClusterView>,
    region: RegionRef,
    /// `None` once sent in rebuild mode, until the parent supplies the next.
    request: Option<Result<KvRequest, Error>>,
    /// The command, for matching the answer once the request is sent away.
    command: &'static str,
    /// Rebuild mode ([`RegionCall::rebuilding`]): attempts send the request
    /// itself instead of a copy.
    rebuild: bool,
    timeout: Duration,
    backoffer: Option<Backoffer>,
    peer_offset: usize,
    attempts: u32,
    quick_retries: u32,
    lost_answers: u32,
    next_id: u64,
    phase: Phase,
    outbox: Option<Rpc>,
    result: Option<Result<RegionOutcome, Error>>,
}

impl RegionCall {
    /// A call of `request` (user keys) on `region`, each attempt bounded by
    /// `timeout`, retries bounded by `backoffer`.
    pub fn new(
        view: Arc<ClusterView>,
        region: RegionRef,
        mut request: KvRequest,
        timeout: Duration,
        backoffer: Backoffer,
    ) -> RegionCall {
        let command = request.name();
        let request = view.codec.encode_request(&mut request).map(|()| request);
        RegionCall {
            view,
            region,
            request: Some(request),
            command,
            rebuild: false,
            timeout,
            backoffer: Some(backoffer),
            peer_offset: 0,
            attempts: 0,
            quick_retries: 0,
            lost_answers: 0,
            next_id: 0,
            phase: Phase::Idle,
            outbox: None,
            result: None,
        }
    }

    /// Rebuild mode: every attempt sends the request itself rather than a
    /// copy kept for retries (the copy was an allocation and a deep clone of
    /// the message per call, issue #7's profile). When a retry is due, the
    /// call waits, emitting nothing, until the parent, which can build the
    /// request again, hands it over with [`RegionCall::supply_request`]
    /// (check [`RegionCall::needs_request`] after every input).
    pub fn rebuilding(mut self) -> RegionCall {
        self.rebuild = true;
        self
    }

    /// True when a retry waits for [`RegionCall::supply_request`].
    pub fn needs_request(&self) -> bool {
        matches!(self.phase, Phase::AwaitingRequest { .. })
    }

    /// Hands over the request (user keys, as given to [`RegionCall::new`])
    /// for the retry that waits for it; the retry is sent at the instant it
    /// became due. Ignored when no retry waits.
    pub fn supply_request(&mut self, mut request: KvRequest) {
        let Phase::AwaitingRequest { peer, addr, now } =
            std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return;
        };
        self.request = Some(self.view.codec.encode_request(&mut request).map(|()| request));
        self.send(peer, addr, now);
    }

    /// The region this call targets.
    pub fn region(&self) -> &RegionRef {
        &self.region
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

    /// Picks the peer to talk to: the cached leader, rotated by
    /// `peer_offset` after failures.
    fn target_peer(&self) -> Option<tikv_proto::metapb::Peer> {
        let peers = self.region.peers();
        if peers.is_empty() {
            return None;
        }
        peers.get((self.region.leader_index() + self.peer_offset) % peers.len()).cloned()
    }

    fn attempt(&mut self, now: Instant) {
        let Some(peer) = self.target_peer() else {
            self.view.regions.invalidate(self.region.ver_id(), InvalidReason::NoLeader);
            self.finish(Ok(RegionOutcome::Relocate));
            return;
        };
        match self.view.stores.get(peer.store_id) {
            Some(store) if !store.address.is_empty() && !store.is_tombstone() => {
                self.send(peer, store.address.as_str().into(), now)
            }
            _ => {
                let Some(backoffer) = self.backoffer.take() else {
                    return;
                };
                let mut resolve =
                    Box::new(ResolveStore::new(self.view.clone(), peer.store_id, backoffer));
                resolve.start(now);
                self.phase = Phase::Resolving(resolve);
                self.check_resolve(now);
            }
        }
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
                match self.target_peer() {
                    Some(peer) => self.send(peer, store.address.as_str().into(), now),
                    None => self.finish(Ok(RegionOutcome::Relocate)),
                }
            }
            Ok(_) | Err(_) => {
                // The store is gone or PD cannot name it: the region info is
                // stale. Re-locate after a region-miss backoff.
                self.view.regions.invalidate(self.region.ver_id(), InvalidReason::Other);
                self.sleep_then(
                    BackoffKind::RegionMiss,
                    "store of the leader cannot be resolved",
                    AfterSleep::Relocate,
                    now,
                );
            }
        }
    }

    fn send(&mut self, peer: tikv_proto::metapb::Peer, addr: Arc<str>, now: Instant) {
        let mut request = match self.request.take() {
            Some(Ok(request)) if self.rebuild => request,
            Some(Ok(request)) => {
                let copy = request.clone();
                self.request = Some(Ok(request));
                copy
            }
            Some(Err(e)) => {
                self.request = Some(Err(e.clone()));
                self.finish(Err(e));
                return;
            }
            None => {
                self.phase = Phase::AwaitingRequest { peer, addr, now };
                return;
            }
        };
        let store_id = peer.store_id;
        {
            let ctx = request.context_mut();
            ctx.region_id = self.region.id();
            ctx.region_epoch = Some(self.region.epoch());
            ctx.peer = Some(peer);
            ctx.cluster_id = self.view.pd.cluster_id();
            ctx.is_retry_request = self.attempts > 0;
            if ctx.max_execution_duration_ms == 0 {
                // client-go fills it with the RPC timeout when unset.
                ctx.max_execution_duration_ms = self.timeout.as_millis() as u64;
            }
            self.view.codec.stamp_context(ctx);
        }
        self.attempts += 1;
        self.next_id += 1;
        let id = RpcId(self.next_id);
        self.phase = Phase::Sending { id, store_id };
        self.outbox = Some(Rpc {
            id,
            target: Target::Store { store_id, addr },
            request: Request::Kv(request),
            deadline: now + self.timeout,
        });
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

    fn on_kv_response(&mut self, store_id: u64, mut resp: KvResponse, now: Instant) {
        let Some(region_error) = resp.take_region_error() else {
            let decoded = self.view.codec.decode_response(&mut resp).map(|()| resp);
            self.finish(decoded.map(RegionOutcome::Response));
            return;
        };
        let ver = self.region.ver_id();
        match classify(&region_error) {
            RegionErrorAction::SwitchLeader(leader) => {
                // Switch on this call's own handle: the cache may hold
                // another handle for the same region version (re-inserted
                // meanwhile), and the next attempt picks its peer from ours.
                // The cache's copy is switched too, for later operations.
                self.view.regions.update_leader(ver, leader.store_id);
                if self.region.switch_leader_to_store(leader.store_id) {
                    self.peer_offset = 0;
                    self.retry_now(now);
                } else {
                    // The named leader is not a peer we know: the region
                    // changed under us. Re-locate.
                    self.region.invalidate(InvalidReason::StoreNotFound);
                    self.finish(Ok(RegionOutcome::Relocate));
                }
            }
            RegionErrorAction::Backoff { kind, try_next_peer } => {
                if try_next_peer {
                    self.peer_offset += 1;
                }
                self.sleep_then(
                    kind,
                    format!("store {store_id}: {}", describe(&region_error)),
                    AfterSleep::Retry,
                    now,
                );
            }
            RegionErrorAction::Relocate { invalidate, backoff, invalidate_store } => {
                if let Some(reason) = invalidate {
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

impl Operation for RegionCall {
    type Output = RegionOutcome;

    fn start(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Idle) && self.result.is_none() {
            self.attempt(now);
        }
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        if let Phase::Resolving(resolve) = &mut self.phase {
            return resolve.poll_rpc();
        }
        self.outbox.take()
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        match &mut self.phase {
            Phase::Resolving(resolve) => {
                resolve.on_response(id, response, now);
                self.check_resolve(now);
            }
            Phase::Sending { id: expected, store_id } if *expected == id => {
                let store_id = *store_id;
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
                    Ok(Response::Pd(_) | Response::Timestamp(_)) => {
                        self.finish(Err(Error::Rpc(RpcError::Mismatch)))
                    }
                    Err(e) => {
                        // client-go onSendFail: the store may be down. Try the
                        // next peer after a BoTiKVRPC sleep.
                        self.lost_answers += 1;
                        self.peer_offset += 1;
                        self.view.stores.mark_unreachable(store_id);
                        self.sleep_then(
                            BackoffKind::TikvRpc,
                            format!("send to store {store_id} failed: {e}"),
                            AfterSleep::Retry,
                            now,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn on_timeout(&mut self, now: Instant) {
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
                }
            }
            _ => {}
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Resolving(resolve) => resolve.poll_timeout(),
            Phase::Sleeping { until, .. } => Some(*until),
            _ => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<RegionOutcome, Error>> {
        self.result.take()
    }
}
