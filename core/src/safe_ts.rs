//! Safe ts: how far behind the present a stale read must stay (client-go
//! `KVStore.safeTSMap` / `minSafeTS`, `tikv/kv.go`).
//!
//! Every TiKV peer keeps a safe ts (its region's resolved ts as far as the
//! peer has applied): a stale read at or below it is served from the
//! peer's own data, above it the peer answers `DataIsNotReady`. A store's
//! safe ts is the smallest of its peers'. The client keeps one per store in
//! a [`SafeTsTable`], refreshed every [`SAFE_TS_UPDATE_INTERVAL`] by an
//! [`UpdateSafeTs`] round that the runtime runs in the background, and
//! derives the min safe ts per txn scope: [`GLOBAL_TXN_SCOPE`] over every
//! store, and one scope per value of the stores' [`DC_LABEL_KEY`] label.
//! A stale read at or below `min_safe_ts(scope)` is served by any replica
//! in the scope without falling back to its leader.
//!
//! client-go first asks PD's HTTP API for the cluster's (or each store's)
//! min resolved ts and sends TiKV's `GetStoreSafeTS` only where PD cannot
//! tell. This client has no PD HTTP client and PD's gRPC service has no
//! read of the min resolved ts (stores only report it), so every round asks
//! the stores.
//!
//! [`stale_timestamp`] turns a fresh timestamp into one `ago` in the past
//! (client-go `oracle.GetStaleTimestamp`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::op::Operation;
use crate::pd::Timestamp;
use crate::rpc::{Request, Response, Rpc, RpcError, RpcId, Target};
use crate::time::{Duration, Instant};
use crate::view::ClusterView;

/// client-go's `safeTSUpdateInterval`: how often the per-store safe ts is
/// refreshed.
pub const SAFE_TS_UPDATE_INTERVAL: Duration = Duration::from_secs(2);

/// client-go's `oracle.GlobalTxnScope`: the scope of every store.
pub const GLOBAL_TXN_SCOPE: &str = "global";

/// client-go's `DCLabelKey`: stores carrying this label form a txn scope
/// named by its value.
pub const DC_LABEL_KEY: &str = "zone";

/// The safe ts of each store and the min safe ts of each txn scope, as the
/// last [`UpdateSafeTs`] rounds found them.
#[derive(Debug, Default)]
pub struct SafeTsTable {
    inner: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    stores: BTreeMap<u64, Timestamp>,
    scopes: BTreeMap<String, Timestamp>,
}

impl SafeTsTable {
    /// An empty table: every min safe ts is zero until a round answers.
    pub fn new() -> SafeTsTable {
        SafeTsTable::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The safe ts `store_id` last reported, if it ever answered.
    pub fn store_safe_ts(&self, store_id: u64) -> Option<Timestamp> {
        self.lock().stores.get(&store_id).copied()
    }

    /// client-go `GetMinSafeTS`: the min safe ts of `txn_scope`
    /// ([`GLOBAL_TXN_SCOPE`], or a [`DC_LABEL_KEY`] value); zero when
    /// unknown.
    pub fn min_safe_ts(&self, txn_scope: &str) -> Timestamp {
        self.lock().scopes.get(txn_scope).copied().unwrap_or(Timestamp::ZERO)
    }

    /// Records `safe_ts` for `store_id` unless it is below what the store
    /// reported before (client-go skips such an answer: a store restarted
    /// or a peer moved may report less for a while) or is `u64::MAX`
    /// (client-go's `setSafeTS` refuses it). True when recorded.
    pub fn record_store(&self, store_id: u64, safe_ts: Timestamp) -> bool {
        if safe_ts == Timestamp::MAX {
            return false;
        }
        let mut known = self.lock();
        let entry = known.stores.entry(store_id).or_insert(Timestamp::ZERO);
        if *entry > safe_ts {
            return false;
        }
        *entry = safe_ts;
        true
    }

    /// client-go `updateMinSafeTS`: the scope's min over `stores`, counting
    /// only stores with a non-zero safe ts, and zero when one of them never
    /// answered (its safe ts is unknown, so nothing is safe) or none did.
    pub fn update_scope(&self, txn_scope: &str, stores: &[u64]) {
        let mut known = self.lock();
        let mut min: Option<Timestamp> = None;
        let mut unknown = stores.is_empty();
        for store in stores {
            match known.stores.get(store) {
                None => unknown = true,
                Some(ts) if ts.is_zero() => {}
                Some(ts) => min = Some(min.map_or(*ts, |m| m.min(*ts))),
            }
        }
        let min = if unknown { Timestamp::ZERO } else { min.unwrap_or(Timestamp::ZERO) };
        known.scopes.insert(txn_scope.to_owned(), min);
    }
}

/// What one [`UpdateSafeTs`] round did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SafeTsRound {
    /// Stores whose answer was recorded.
    pub recorded: Vec<u64>,
    /// Stores whose answer was older than the one recorded before.
    pub skipped: Vec<u64>,
    /// Stores that did not answer, with why.
    pub failed: Vec<(u64, RpcError)>,
}

/// One round of client-go's `updateSafeTS` (without the PD path, see the
/// module docs): `GetStoreSafeTS` over the whole key range to every known
/// TiKV store at once, each answer recorded in the [`SafeTsTable`], then
/// the min safe ts of every txn scope recomputed. A store that does not
/// answer keeps its last value; the round itself never fails.
///
/// TiFlash stores are left out (client-go asks them too, at their peer
/// address, for TiFlash stale reads, which this client does not send), and
/// so are removed stores.
#[derive(Debug)]
pub struct UpdateSafeTs {
    table: Arc<SafeTsTable>,
    timeout: Duration,
    /// Stores still to ask.
    to_send: Vec<(u64, Arc<str>)>,
    /// Stores asked and not yet answered, by RPC id.
    in_flight: BTreeMap<RpcId, u64>,
    /// Each scope and the stores it spans.
    scopes: BTreeMap<String, Vec<u64>>,
    deadline: Option<Instant>,
    round: SafeTsRound,
    result: Option<Result<SafeTsRound, Error>>,
}

impl UpdateSafeTs {
    /// A round over the stores `view` knows, recording into `table`; each
    /// store is given the short read timeout (client-go's
    /// `ReadTimeoutShort`).
    pub fn new(view: &ClusterView, table: Arc<SafeTsTable>) -> UpdateSafeTs {
        let mut to_send = Vec::new();
        let mut scopes: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut stores = view.stores.all();
        stores.sort_by_key(|s| s.id);
        for store in stores {
            if store.is_tiflash() || store.is_tombstone() || store.address.is_empty() {
                continue;
            }
            to_send.push((store.id, store.address.clone()));
            scopes.entry(GLOBAL_TXN_SCOPE.to_owned()).or_default().push(store.id);
            if let Some(zone) = store.label(DC_LABEL_KEY) {
                scopes.entry(zone.to_owned()).or_default().push(store.id);
            }
        }
        UpdateSafeTs {
            table,
            timeout: view.config.read_timeout_short,
            to_send,
            in_flight: BTreeMap::new(),
            scopes,
            deadline: None,
            round: SafeTsRound::default(),
            result: None,
        }
    }

    fn check(&mut self) {
        if self.result.is_some() || !self.to_send.is_empty() || !self.in_flight.is_empty() {
            return;
        }
        for (scope, stores) in &self.scopes {
            self.table.update_scope(scope, stores);
        }
        self.result = Some(Ok(std::mem::take(&mut self.round)));
    }
}

impl Operation for UpdateSafeTs {
    type Output = SafeTsRound;

    fn start(&mut self, now: Instant) {
        self.deadline = Some(now + self.timeout);
        self.check();
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        let deadline = self.deadline?;
        let (store_id, addr) = self.to_send.pop()?;
        let id = RpcId(store_id);
        self.in_flight.insert(id, store_id);
        let request = kvrpcpb::StoreSafeTsRequest { key_range: Some(kvrpcpb::KeyRange::default()) };
        Some(Rpc {
            id,
            target: Target::Store { store_id, addr, forwarded_host: None },
            request: Request::StoreSafeTs(Box::new(request)),
            deadline,
        })
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, _now: Instant) {
        let Some(store_id) = self.in_flight.remove(&id) else {
            return;
        };
        match response {
            Ok(Response::StoreSafeTs(r)) => {
                if self.table.record_store(store_id, Timestamp::from_version(r.safe_ts)) {
                    self.round.recorded.push(store_id);
                } else {
                    self.round.skipped.push(store_id);
                }
            }
            Ok(_) => self.round.failed.push((store_id, RpcError::Mismatch)),
            Err(e) => self.round.failed.push((store_id, e)),
        }
        self.check();
    }

    fn on_timeout(&mut self, _now: Instant) {}

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn poll_result(&mut self) -> Option<Result<SafeTsRound, Error>> {
        self.result.take()
    }
}

/// client-go `GetStaleTimestamp`: the timestamp `ago` before `fresh` (a
/// timestamp just taken from PD), its logical part zero. Refused when
/// `ago` reaches back to or before the epoch of PD's clock.
pub fn stale_timestamp(fresh: Timestamp, ago: Duration) -> Result<Timestamp, Error> {
    let ago_ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    let physical = fresh.physical();
    if ago_ms >= physical {
        return Err(Error::InvalidArgument(format!(
            "a stale timestamp {ago:?} ago is before the epoch of {fresh}"
        )));
    }
    Ok(Timestamp::compose(physical - ago_ms, 0))
}

#[cfg(test)]
mod tests;
