//! Telling every TiKV store what became of a pipelined transaction
//! (client-go `broadcastToAllStores`, TiKV's `BroadcastTxnStatus`).
//!
//! TiKV keeps the statuses it is told in its txn status cache; its
//! resolved-ts worker reads a large transaction's `min_commit_ts` from it
//! instead of holding the region's resolved ts at the transaction's start
//! ts, and stops waiting for a transaction the cache says is committed or
//! rolled back. The broadcast is best effort: one request per live TiKV
//! store the client knows (not TiFlash, not a tombstone), no retry, every
//! failure reported per store (client-go logs it and goes on).

use std::collections::VecDeque;
use std::sync::Arc;

use tikv_proto::kvrpcpb;

use crate::Error;
use crate::pd::Timestamp;
use crate::region::ResolveState;
use crate::rpc::{
    KvRequest, KvResponse, Request, RequestTags, Response, Rpc, RpcError, RpcId, Target,
};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// Per-store timeout of a broadcast (client-go `broadcastRpcTimeout`).
pub const BROADCAST_TIMEOUT: Duration = Duration::from_secs(5);

/// Stores asked at once (client-go `broadcastMaxConcurrency`).
pub const BROADCAST_CONCURRENCY: usize = 10;

/// How long after the flushed locks are resolved the completion is
/// broadcast (client-go `broadcastGracePeriod`): TiKV then drops the
/// transaction from its large-transaction cache, and a follower that has
/// not caught up with the resolution yet still finds it there meanwhile.
pub const BROADCAST_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// One transaction's status as broadcast (kvproto `TxnStatus`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TxnStatusUpdate {
    /// The transaction's start ts.
    pub start_ts: Timestamp,
    /// The primary's `min_commit_ts` as last pushed (zero: unknown).
    pub min_commit_ts: Timestamp,
    /// The commit ts once committed, zero otherwise.
    pub commit_ts: Timestamp,
    /// Whether it was rolled back.
    pub rolled_back: bool,
    /// Whether every lock is resolved: TiKV forgets the transaction.
    pub is_completed: bool,
}

impl TxnStatusUpdate {
    /// Still running, committable at `min_commit_ts` at the earliest (after
    /// a heartbeat pushed the primary there).
    pub fn ongoing(start_ts: Timestamp, min_commit_ts: Timestamp) -> TxnStatusUpdate {
        TxnStatusUpdate {
            start_ts,
            min_commit_ts,
            commit_ts: Timestamp::ZERO,
            rolled_back: false,
            is_completed: false,
        }
    }

    /// The primary is committed at `commit_ts`; secondaries may still be
    /// locked.
    pub fn committed(
        start_ts: Timestamp,
        min_commit_ts: Timestamp,
        commit_ts: Timestamp,
    ) -> TxnStatusUpdate {
        TxnStatusUpdate { commit_ts, ..TxnStatusUpdate::ongoing(start_ts, min_commit_ts) }
    }

    /// Rolled back; `is_completed` when no lock was ever flushed.
    pub fn rolled_back(
        start_ts: Timestamp,
        min_commit_ts: Timestamp,
        is_completed: bool,
    ) -> TxnStatusUpdate {
        TxnStatusUpdate {
            rolled_back: true,
            is_completed,
            ..TxnStatusUpdate::ongoing(start_ts, min_commit_ts)
        }
    }

    /// Every lock resolved: committed at `commit_ts`, or rolled back when
    /// `commit_ts` is zero (client-go sends no `min_commit_ts` then).
    pub fn completed(start_ts: Timestamp, commit_ts: Timestamp) -> TxnStatusUpdate {
        TxnStatusUpdate {
            start_ts,
            min_commit_ts: Timestamp::ZERO,
            commit_ts,
            rolled_back: commit_ts == Timestamp::ZERO,
            is_completed: true,
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> kvrpcpb::TxnStatus {
        kvrpcpb::TxnStatus {
            start_ts: self.start_ts.version(),
            min_commit_ts: self.min_commit_ts.version(),
            commit_ts: self.commit_ts.version(),
            rolled_back: self.rolled_back,
            is_completed: self.is_completed,
        }
    }
}

/// What a broadcast reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BroadcastOutcome {
    /// Stores that took the status, by id.
    pub delivered: Vec<u64>,
    /// Stores that did not, with why, by id.
    pub failed: Vec<(u64, String)>,
}

/// Sends `BroadcastTxnStatus` to every live TiKV store in the client's store
/// table (client-go `GetStoresByType(TiKV)`: resolved stores only, so no
/// tombstone and none awaiting a check), [`BROADCAST_CONCURRENCY`] at a
/// time, each with [`BROADCAST_TIMEOUT`]. It never fails: failures are in
/// its [`BroadcastOutcome`].
pub struct BroadcastTxnStatus {
    view: Arc<ClusterView>,
    statuses: Vec<TxnStatusUpdate>,
    tags: RequestTags,
    /// Stores not asked yet, by id.
    pending: VecDeque<(u64, Arc<str>)>,
    outbox: VecDeque<Rpc>,
    /// RPC id → store id, for every request in flight.
    in_flight: Vec<(RpcId, u64)>,
    next_id: u64,
    outcome: BroadcastOutcome,
    started: bool,
    result: Option<Result<BroadcastOutcome, Error>>,
}

impl std::fmt::Debug for BroadcastTxnStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastTxnStatus")
            .field("statuses", &self.statuses)
            .field("pending", &self.pending.len())
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl BroadcastTxnStatus {
    /// Broadcasts `statuses`, each request stamped with `tags` (request
    /// source, resource group) as client-go stamps its broadcasts.
    pub fn new(
        view: Arc<ClusterView>,
        statuses: Vec<TxnStatusUpdate>,
        tags: RequestTags,
    ) -> BroadcastTxnStatus {
        BroadcastTxnStatus {
            view,
            statuses,
            tags,
            pending: VecDeque::new(),
            outbox: VecDeque::new(),
            in_flight: Vec::new(),
            next_id: 0,
            outcome: BroadcastOutcome::default(),
            started: false,
            result: None,
        }
    }

    fn request(&self) -> KvRequest {
        let mut request = KvRequest::from(kvrpcpb::BroadcastTxnStatusRequest {
            context: None,
            txn_status: self.statuses.iter().map(TxnStatusUpdate::to_proto).collect(),
        });
        let ctx = request.context_mut();
        self.view.codec.stamp_context(ctx);
        self.tags.stamp(ctx);
        request
    }

    fn send_more(&mut self, now: Instant) {
        while self.in_flight.len() < BROADCAST_CONCURRENCY {
            let Some((store_id, addr)) = self.pending.pop_front() else { break };
            self.next_id += 1;
            let id = RpcId(self.next_id);
            self.in_flight.push((id, store_id));
            self.outbox.push_back(Rpc {
                id,
                target: Target::Store { store_id, addr, forwarded_host: None },
                request: Request::Kv(self.request()),
                deadline: now + BROADCAST_TIMEOUT,
            });
        }
        if self.pending.is_empty() && self.in_flight.is_empty() && self.result.is_none() {
            let mut outcome = std::mem::take(&mut self.outcome);
            outcome.delivered.sort_unstable();
            outcome.failed.sort_by_key(|f| f.0);
            self.result = Some(Ok(outcome));
        }
    }
}

impl crate::op::Operation for BroadcastTxnStatus {
    type Output = BroadcastOutcome;

    fn start(&mut self, now: Instant) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        self.pending = self
            .view
            .stores
            .all()
            .into_iter()
            .filter(|s| {
                s.resolve_state() == ResolveState::Resolved
                    && !s.is_tiflash()
                    && s.state != tikv_proto::metapb::StoreState::Tombstone
            })
            .map(|s| (s.id, s.address.clone()))
            .collect();
        self.send_more(now);
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.outbox.pop_front()
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some(i) = self.in_flight.iter().position(|(rpc, _)| *rpc == id) else { return };
        let (_, store_id) = self.in_flight.swap_remove(i);
        match response {
            Ok(Response::Kv(KvResponse::BroadcastTxnStatus(_))) => {
                self.outcome.delivered.push(store_id)
            }
            Ok(other) => self.outcome.failed.push((store_id, format!("answered {}", other.name()))),
            Err(e) => self.outcome.failed.push((store_id, e.to_string())),
        }
        self.send_more(now);
    }

    fn on_timeout(&mut self, _now: Instant) {}

    fn poll_timeout(&self) -> Option<Instant> {
        // Each RPC carries its deadline; the transport enforces it.
        None
    }

    fn poll_result(&mut self) -> Option<Result<BroadcastOutcome, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use tikv_proto::metapb;

    use super::*;
    use crate::rpc::RequestSource;
    use crate::testing::{FakeCluster, Fault, drive, view};

    fn store(id: u64, engine: Option<&str>, state: metapb::StoreState) -> metapb::Store {
        metapb::Store {
            id,
            address: format!("store{id}:20160"),
            state: state as i32,
            labels: engine
                .map(|e| metapb::StoreLabel { key: "engine".into(), value: e.into() })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    /// One request per live TiKV store (TiFlash, tombstones and stores
    /// awaiting a check left out), at most ten at once, each carrying the
    /// statuses and the tags; failures are reported per store, never as
    /// an error.
    #[test]
    fn every_live_tikv_store_is_told_and_failures_are_reported_per_store() {
        let view = view();
        for id in 1..=12 {
            view.stores.insert(store(id, None, metapb::StoreState::Up)).unwrap();
        }
        view.stores.insert(store(13, Some("tiflash"), metapb::StoreState::Up)).unwrap();
        view.stores.insert(store(14, None, metapb::StoreState::Tombstone)).unwrap();
        view.stores.insert(store(15, None, metapb::StoreState::Up)).unwrap();
        view.stores.invalidate(15);
        let mut c = FakeCluster::new(&[]);
        c.fault(
            "broadcast_txn_status",
            Fault::Rpc(RpcError::Unavailable("store 1 is down".into())),
        );
        c.fault(
            "broadcast_txn_status",
            Fault::Respond(Box::new(KvResponse::Commit(Box::default()))),
        );
        let start = Timestamp::compose(500, 0);
        let statuses = vec![
            TxnStatusUpdate::committed(
                start,
                Timestamp::compose(600, 0),
                Timestamp::compose(700, 0),
            ),
            TxnStatusUpdate::completed(Timestamp::compose(400, 0), Timestamp::ZERO),
        ];
        let tags = RequestTags::default()
            .with_request_source(RequestSource::external("bulk"))
            .with_resource_group_name("rg");
        let op = BroadcastTxnStatus::new(view.clone(), statuses, tags);
        let (log, result) = drive(op, &mut c);
        let outcome = result.unwrap();
        assert_eq!(outcome.delivered, (3..=12).collect::<Vec<_>>(), "{log}");
        assert_eq!(outcome.failed.len(), 2, "{log}");
        assert_eq!(outcome.failed[0].0, 1);
        assert!(outcome.failed[0].1.contains("store 1 is down"), "{:?}", outcome.failed);
        assert_eq!(outcome.failed[1], (2, "answered kv_commit".to_string()));
        // Ten go out before the first answer; the rest as answers come.
        let first_recv = log.lines().position(|l| l.contains(" recv ")).unwrap();
        let sends_before = log.lines().take(first_recv).filter(|l| l.contains(" send ")).count();
        assert_eq!(sends_before, BROADCAST_CONCURRENCY, "{log}");
        let sent: Vec<_> = c.received.iter().collect();
        assert_eq!(sent.len(), 12, "{log}");
        let KvRequest::BroadcastTxnStatus(r) = sent[0] else { panic!("{:?}", sent[0]) };
        let ctx = r.context.as_ref().unwrap();
        assert_eq!(ctx.resource_control_context.as_ref().unwrap().resource_group_name, "rg");
        assert_eq!(ctx.request_source, "external_bulk");
        assert_eq!(
            r.txn_status,
            vec![
                kvrpcpb::TxnStatus {
                    start_ts: start.version(),
                    min_commit_ts: Timestamp::compose(600, 0).version(),
                    commit_ts: Timestamp::compose(700, 0).version(),
                    rolled_back: false,
                    is_completed: false,
                },
                kvrpcpb::TxnStatus {
                    start_ts: Timestamp::compose(400, 0).version(),
                    min_commit_ts: 0,
                    commit_ts: 0,
                    rolled_back: true,
                    is_completed: true,
                },
            ]
        );
        insta::assert_snapshot!(log);
    }

    /// No store known: done at once, nothing sent.
    #[test]
    fn no_known_store_means_nothing_to_send() {
        let mut c = FakeCluster::new(&[]);
        let status = TxnStatusUpdate::ongoing(Timestamp::compose(1, 0), Timestamp::compose(2, 0));
        let op = BroadcastTxnStatus::new(view(), vec![status], RequestTags::default());
        let (log, result) = drive(op, &mut c);
        assert_eq!(result.unwrap(), BroadcastOutcome::default(), "{log}");
        assert!(c.received.is_empty());
    }
}
