//! The store health probes: client-go's health-check loop
//! (`startHealthCheckLoop` and `requestLiveness`, `store_cache.go`) and its
//! periodic health tick (`checkAndUpdateStoreHealthStatus`,
//! `region_cache.go`), as one round the runtime runs every
//! [`HEALTH_CHECK_INTERVAL`].
//!
//! A store becomes unreachable when a send to it fails and the liveness
//! probe the region sender sends it right then ([`liveness_of`]) does not
//! answer `SERVING` ([`super::replica::ReplicaSelector::on_send_failure`]).
//! Each
//! [`ProbeStores`] round sends gRPC's health `Check` to every TiKV store
//! that is not reachable, each bounded by [`LIVENESS_TIMEOUT`]: `SERVING`
//! makes it reachable again (the probing of it ends), `UNKNOWN` leaves its
//! liveness unknown, anything else (no answer, `NOT_SERVING`) keeps it
//! unreachable, so it is asked again a second later. Probes of one store
//! address, the round's and failed calls', share one in flight (client-go's
//! `livenessSf`; [`crate::rpc::CollapseKey`]). The round also ticks
//! the stores' slow scores once a quarter of the store refresh interval has
//! passed since the last tick (client-go ticks every 15 s by default).
//!
//! TiKV's own slow score arrives on `BatchCommands` answers, and
//! [`on_health_feedback`] records it the moment it arrives, outside the
//! rounds (client-go's `onHealthFeedback`). A store that sent a score above
//! 1 and has not refreshed it for 15 s (it is no longer sent requests, say
//! because it is slow) is asked for fresh feedback by the round that ticks:
//! TiKV's `GetHealthFeedback`, bounded by [`HEALTH_FEEDBACK_TIMEOUT`]. Its
//! answer is recorded as any feedback; only when none comes (or the store
//! is not reachable) does the stale score decay (client-go's
//! `updateTiKVServerSideSlowScoreOnTick`).
//!
//! client-go also re-resolves an unreachable store from PD every 30 s and
//! stops probing a removed one; here the periodic store refresh marks
//! removed stores tombstones, which rounds skip.

use std::collections::BTreeMap;
use std::sync::Arc;

use tikv_proto::health::health_check_response::ServingStatus;
use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::op::Operation;
use crate::region::{Liveness, StoreInfo};
use crate::rpc::{KvRequest, KvResponse, Request, Response, Rpc, RpcError, RpcId, Target};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// client-go's health-check loop period: an unreachable store is probed
/// this often until it answers.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// client-go's `storeLivenessTimeout`: how long one probe may take.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);

/// client-go's `getHealthFeedbackTimeout`: how long one `GetHealthFeedback`
/// may take.
pub const HEALTH_FEEDBACK_TIMEOUT: Duration = Duration::from_secs(2);

/// What one [`ProbeStores`] round found, by store id (each list in the
/// order the stores were asked).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeRound {
    /// Answered `SERVING`: reachable again.
    pub reachable: Vec<u64>,
    /// Answered without a verdict (`UNKNOWN`, `SERVICE_UNKNOWN`).
    pub unknown: Vec<u64>,
    /// Did not answer, or answered `NOT_SERVING`: still unreachable.
    pub unreachable: Vec<(u64, String)>,
    /// The slow scores ticked in this round.
    pub ticked: bool,
    /// Asked for fresh health feedback (TiKV's score of them had gone 15 s
    /// without a refresh) and answered with some.
    pub feedback: Vec<u64>,
    /// Asked for fresh health feedback and answered with none, or not at
    /// all: their TiKV-side score decayed.
    pub feedback_failed: Vec<(u64, String)>,
    /// Not reachable for [`crate::region::STORE_RE_RESOLVE_INTERVAL`] since
    /// PD was last asked about them: the runtime re-resolves each from PD
    /// ([`crate::pd::ResolveStore::again`]), as client-go's health-check
    /// loop does, so a store that moved is found at its new address and a
    /// removed one is no longer probed.
    pub re_resolve: Vec<u64>,
}

/// What one RPC of a round asks.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Ask {
    /// gRPC's health `Check`: is the store alive?
    Liveness,
    /// TiKV's `GetHealthFeedback`: its slow score now.
    Feedback,
}

/// One round of the store health probes (see the module docs).
#[derive(Debug)]
pub struct ProbeStores {
    view: Arc<ClusterView>,
    /// RPCs still to send, last first.
    to_send: Vec<(u64, Arc<str>, Ask)>,
    in_flight: BTreeMap<RpcId, (u64, Ask)>,
    next_id: u64,
    /// When the round started (the tick's time).
    started: Option<Instant>,
    round: ProbeRound,
    result: Option<Result<ProbeRound, Error>>,
}

impl ProbeStores {
    /// A round over the TiKV stores of `view` that are not reachable
    /// (TiFlash and removed stores are not probed, as client-go's loop runs
    /// for TiKV stores only).
    pub fn new(view: Arc<ClusterView>) -> ProbeStores {
        let to_send: Vec<(u64, Arc<str>, Ask)> = view
            .stores
            .all()
            .into_iter()
            .filter(|s| {
                s.health().liveness() != Liveness::Reachable
                    && !s.is_tiflash()
                    && !s.is_tombstone()
                    && !s.address.is_empty()
            })
            .map(|s| (s.id, s.address.clone(), Ask::Liveness))
            .rev()
            .collect();
        ProbeStores {
            view,
            to_send,
            in_flight: BTreeMap::new(),
            next_id: 0,
            started: None,
            round: ProbeRound::default(),
            result: None,
        }
    }

    fn check(&mut self) {
        if self.result.is_none() && self.to_send.is_empty() && self.in_flight.is_empty() {
            self.result = Some(Ok(std::mem::take(&mut self.round)));
        }
    }

    /// client-go `updateTiKVServerSideSlowScoreOnTick`: each store whose
    /// TiKV-side score went 15 s without a refresh is asked for fresh
    /// feedback if it is reachable and has an address; the others' scores
    /// decay at once.
    fn ask_for_stale_feedback(&mut self, stale: Vec<Arc<StoreInfo>>, now: Instant) {
        let mut asks = Vec::new();
        for store in stale {
            if store.health().liveness() == Liveness::Reachable
                && !store.is_tombstone()
                && !store.address.is_empty()
            {
                asks.push((store.id, store.address.clone(), Ask::Feedback));
            } else {
                store.health().decay_stale_tikv_score(now);
            }
        }
        // Sent after the liveness probes.
        asks.reverse();
        asks.append(&mut self.to_send);
        self.to_send = asks;
    }

    /// A `GetHealthFeedback` answer from `store_id` arrived at `now`: its
    /// feedback is recorded as any other ([`on_health_feedback`]); then
    /// the store's score decays if it is still stale at the tick (the
    /// answer brought nothing, or was never given).
    fn on_feedback(&mut self, store_id: u64, response: Result<Response, RpcError>, now: Instant) {
        let failed = match response {
            Ok(Response::Kv(KvResponse::GetHealthFeedback(r))) => {
                match (r.region_error, r.health_feedback) {
                    (Some(e), _) => Some(format!("region error: {}", e.message)),
                    (None, Some(feedback)) => {
                        on_health_feedback(&self.view, &feedback, now);
                        None
                    }
                    (None, None) => Some("answered without feedback".to_owned()),
                }
            }
            Ok(other) => Some(format!("answered {}", other.name())),
            Err(e) => Some(e.to_string()),
        };
        match failed {
            None => self.round.feedback.push(store_id),
            Some(why) => self.round.feedback_failed.push((store_id, why)),
        }
        if let (Some(store), Some(tick)) = (self.view.stores.get_any(store_id), self.started) {
            store.health().decay_stale_tikv_score(tick);
        }
    }
}

impl ProbeStores {
    /// Whether the round has a store to ask (one not known reachable);
    /// a round without one only ticks the slow scores (and asks the stores
    /// whose TiKV-side score is stale for feedback, if it ticks).
    pub fn has_stores_to_ask(&self) -> bool {
        !self.to_send.is_empty()
    }
}

impl Operation for ProbeStores {
    type Output = ProbeRound;

    fn start(&mut self, now: Instant) {
        self.round.re_resolve = self
            .to_send
            .iter()
            .rev()
            .filter_map(|&(id, _, _)| self.view.stores.get_any(id))
            .filter(|store| store.health().pd_re_resolve_due(now))
            .map(|store| store.id)
            .collect();
        let tick = self.view.config.store_refresh_interval / 4;
        if let Some(stale) = self.view.stores.tick_health(now, tick) {
            self.round.ticked = true;
            self.ask_for_stale_feedback(stale, now);
        }
        self.started = Some(now);
        self.check();
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        let started = self.started?;
        let (store_id, addr, ask) = self.to_send.pop()?;
        let id = RpcId(self.next_id);
        self.next_id += 1;
        self.in_flight.insert(id, (store_id, ask));
        let (request, timeout) = match ask {
            Ask::Liveness => (Request::HealthCheck, LIVENESS_TIMEOUT),
            Ask::Feedback => (
                Request::Kv(KvRequest::from(kvrpcpb::GetHealthFeedbackRequest::default())),
                HEALTH_FEEDBACK_TIMEOUT,
            ),
        };
        Some(Rpc {
            id,
            target: Target::Store { store_id, addr, forwarded_host: None },
            request,
            deadline: started + timeout,
        })
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((store_id, ask)) = self.in_flight.remove(&id) else {
            return;
        };
        if ask == Ask::Feedback {
            self.on_feedback(store_id, response, now);
            self.check();
            return;
        }
        let (liveness, why) = liveness_of(response);
        if let Some(why) = why {
            self.round.unreachable.push((store_id, why));
        }
        match liveness {
            Liveness::Reachable => self.round.reachable.push(store_id),
            Liveness::Unknown => self.round.unknown.push(store_id),
            Liveness::Unreachable => {}
        }
        self.view.stores.set_liveness(store_id, liveness);
        self.check();
    }

    fn on_timeout(&mut self, _now: Instant) {}

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn poll_result(&mut self) -> Option<Result<ProbeRound, Error>> {
        self.result.take()
    }
}

/// What a health probe's answer says about its store (client-go
/// `invokeKVStatusAPI`): `SERVING` is reachable; `UNKNOWN` and
/// `SERVICE_UNKNOWN` unknown; anything else (an error, `NOT_SERVING`, a
/// status this client does not know) unreachable, with why.
pub fn liveness_of(response: Result<Response, RpcError>) -> (Liveness, Option<String>) {
    let unreachable = |why: String| (Liveness::Unreachable, Some(why));
    match response {
        Ok(Response::HealthCheck(r)) => match ServingStatus::try_from(r.status) {
            Ok(ServingStatus::Serving) => (Liveness::Reachable, None),
            Ok(ServingStatus::Unknown | ServingStatus::ServiceUnknown) => (Liveness::Unknown, None),
            Ok(ServingStatus::NotServing) => unreachable("not serving".into()),
            Err(_) => unreachable(format!("status {}", r.status)),
        },
        Ok(other) => unreachable(format!("answered {}", other.name())),
        Err(e) => unreachable(e.to_string()),
    }
}

/// client-go `onHealthFeedback`: TiKV's `feedback`, carried on a
/// `BatchCommands` answer (or a `GetHealthFeedback` one) that arrived at
/// `now`, sets that store's TiKV-side
/// slow score ([`crate::region::StoreHealth::record_tikv_score`]), which at
/// 80 or above makes the store slow for the replica selector from the next
/// choice on. The feedback's sequence number is not checked, as client-go
/// does not check it (a slow score is a level, not a delta, and the
/// score's own 100 ms update interval drops bursts). A negative score
/// counts as 0. False, and nothing recorded, for a store the table does not
/// know (client-go drops it too).
pub fn on_health_feedback(
    view: &ClusterView,
    feedback: &kvrpcpb::HealthFeedback,
    now: Instant,
) -> bool {
    let Some(store) = view.stores.get_any(feedback.store_id) else {
        return false;
    };
    let score = u64::try_from(feedback.slow_score).unwrap_or(0);
    store.health().record_tikv_score(score, now);
    true
}

#[cfg(test)]
mod tests;
