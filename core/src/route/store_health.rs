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
//! unreachable, so it is asked again a second later. The round also ticks
//! the stores' slow scores once a quarter of the store refresh interval has
//! passed since the last tick (client-go ticks every 15 s by default).
//!
//! TiKV's own slow score arrives on `BatchCommands` answers, and
//! [`on_health_feedback`] records it the moment it arrives, outside the
//! rounds (client-go's `onHealthFeedback`).
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
use crate::region::Liveness;
use crate::rpc::{Request, Response, Rpc, RpcError, RpcId, Target};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// client-go's health-check loop period: an unreachable store is probed
/// this often until it answers.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// client-go's `storeLivenessTimeout`: how long one probe may take.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);

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
}

/// One round of the store health probes (see the module docs).
#[derive(Debug)]
pub struct ProbeStores {
    view: Arc<ClusterView>,
    /// Stores still to ask, last first.
    to_send: Vec<(u64, Arc<str>)>,
    in_flight: BTreeMap<RpcId, u64>,
    deadline: Option<Instant>,
    round: ProbeRound,
    result: Option<Result<ProbeRound, Error>>,
}

impl ProbeStores {
    /// A round over the TiKV stores of `view` that are not reachable
    /// (TiFlash and removed stores are not probed, as client-go's loop runs
    /// for TiKV stores only).
    pub fn new(view: Arc<ClusterView>) -> ProbeStores {
        let mut to_send: Vec<(u64, Arc<str>)> = view
            .stores
            .all()
            .into_iter()
            .filter(|s| {
                s.health().liveness() != Liveness::Reachable
                    && !s.is_tiflash()
                    && !s.is_tombstone()
                    && !s.address.is_empty()
            })
            .map(|s| (s.id, Arc::from(s.address.as_str())))
            .collect();
        to_send.reverse();
        ProbeStores {
            view,
            to_send,
            in_flight: BTreeMap::new(),
            deadline: None,
            round: ProbeRound::default(),
            result: None,
        }
    }

    fn check(&mut self) {
        if self.result.is_none() && self.to_send.is_empty() && self.in_flight.is_empty() {
            self.result = Some(Ok(std::mem::take(&mut self.round)));
        }
    }
}

impl ProbeStores {
    /// Whether the round has a store to ask (one not known reachable);
    /// a round without one only ticks the slow scores.
    pub fn has_stores_to_ask(&self) -> bool {
        !self.to_send.is_empty()
    }
}

impl Operation for ProbeStores {
    type Output = ProbeRound;

    fn start(&mut self, now: Instant) {
        let tick = self.view.config.store_refresh_interval / 4;
        self.round.ticked = self.view.stores.tick_health(now, tick);
        self.deadline = Some(now + LIVENESS_TIMEOUT);
        self.check();
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        let deadline = self.deadline?;
        let (store_id, addr) = self.to_send.pop()?;
        let id = RpcId(store_id);
        self.in_flight.insert(id, store_id);
        Some(Rpc {
            id,
            target: Target::Store { store_id, addr, forwarded_host: None },
            request: Request::HealthCheck,
            deadline,
        })
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, _now: Instant) {
        let Some(store_id) = self.in_flight.remove(&id) else {
            return;
        };
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
/// `BatchCommands` answer that arrived at `now`, sets that store's TiKV-side
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
