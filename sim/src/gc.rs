//! Garbage collection: PD's GC states and the stores' side of GC.
//!
//! PD side, following `pkg/gc/gc_state_manager.go` and `server/gc_service.go`
//! of `tikv/pd`: per keyspace a txn safe point, a GC safe point and GC
//! barriers with a TTL. Keyspaces without keyspace-level GC
//! (`gc_management_type` ≠ `keyspace_level`, the default) share the null
//! keyspace's state: the user APIs (`GetGCState`, `SetGCBarrier`,
//! `DeleteGCBarrier`) are redirected to it, the GC-managing ones
//! (`AdvanceTxnSafePoint`, `AdvanceGCSafePoint`) refuse with
//! `ErrGCOnInvalidKeyspace`. Every failure is a header error of type
//! `UNKNOWN` carrying PD's error text.
//!
//! Store side, following TiKV: MVCC GC as the write-CF compaction filter
//! does it (`src/server/gc_worker/compaction_filter.rs`), `DeleteRange`
//! (`Storage::delete_range` + raftstore's apply checks) and
//! `UnsafeDestroyRange` (`GcWorker::unsafe_destroy_range`).

use std::collections::BTreeMap;

use tikv_core::time::{Duration, Instant};
use tikv_proto::{kvrpcpb, pdpb};

use crate::cluster::{State, check_key_in_region, key_not_in_region};
use crate::mvcc::{MvccStore, WriteKind, txn_key};

/// PD's `NullKeyspaceID`: the global (unified GC) scope.
pub(crate) const NULL_KEYSPACE_ID: u32 = u32::MAX;

/// PD's `ValidKeyspaceIDMask`: ids with higher bits set mean the null keyspace.
const VALID_KEYSPACE_ID_MASK: u32 = 0x00ff_ffff;

/// PD's `GCWorkerServiceSafePointID`: reserved for old TiDB's service safe point.
const GC_WORKER_BARRIER_ID: &str = "gc_worker";

/// One GC barrier (`endpoint.GCBarrier`): blocks the txn safe point at `ts`
/// until it expires (`None`: never).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GcBarrier {
    pub(crate) ts: u64,
    pub(crate) expires_at: Option<Instant>,
}

impl GcBarrier {
    /// `GCBarrier.IsExpired`: strictly after the expiration time.
    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now > at)
    }

    /// `gcBarrierToProto`: the TTL left, rounded down, `i64::MAX` for never.
    fn info(&self, id: &str, now: Instant) -> pdpb::GcBarrierInfo {
        let ttl_seconds = match self.expires_at {
            None => i64::MAX,
            Some(at) => {
                i64::try_from(at.saturating_duration_since(now).as_secs()).unwrap_or(i64::MAX)
            }
        };
        pdpb::GcBarrierInfo { barrier_id: id.to_owned(), barrier_ts: self.ts, ttl_seconds }
    }

    /// `GCBarrier.String`, with the expiration as model time.
    fn describe(&self, id: &str) -> String {
        let expiration = match self.expires_at {
            None => "<nil>".to_owned(),
            Some(at) => at.to_string(),
        };
        format!(
            "GCBarrier {{ BarrierID: {id:?}, BarrierTS: {}, ExpirationTime: {expiration:?} }}",
            self.ts
        )
    }
}

/// The GC state of one keyspace (or of the null keyspace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GcState {
    pub(crate) txn_safe_point: u64,
    pub(crate) gc_safe_point: u64,
    /// By barrier id (PD lists them in key order, as etcd stores them).
    pub(crate) barriers: BTreeMap<String, GcBarrier>,
}

/// Every keyspace's GC state, by keyspace id ([`NULL_KEYSPACE_ID`] for the
/// unified one); a keyspace never written to is all zeros.
#[derive(Clone, Debug, Default)]
pub(crate) struct GcStates {
    by_keyspace: BTreeMap<u32, GcState>,
}

impl GcStates {
    pub(crate) fn get(&self, keyspace_id: u32) -> GcState {
        self.by_keyspace.get(&keyspace_id).cloned().unwrap_or_default()
    }

    pub(crate) fn get_mut(&mut self, keyspace_id: u32) -> &mut GcState {
        self.by_keyspace.entry(keyspace_id).or_default()
    }
}

/// `getKeyspaceID`: no scope is the null keyspace; a scope naming the
/// keyspace by identity reads as id 0, as `GetKeyspaceId` does.
fn scope_keyspace_id(scope: Option<&pdpb::KeyspaceScope>) -> u32 {
    match scope {
        None => NULL_KEYSPACE_ID,
        Some(s) => match s.keyspace {
            Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(id)) => id,
            _ => 0,
        },
    }
}

/// Go's `time.Duration.String` for whole seconds (PD's invalid-TTL text).
fn go_duration(seconds: i64) -> String {
    if seconds == 0 {
        return "0s".to_owned();
    }
    let sign = if seconds < 0 { "-" } else { "" };
    let s = seconds.unsigned_abs();
    let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sign}{sec}s"),
        (0, _) => format!("{sign}{m}m{sec}s"),
        _ => format!("{sign}{h}h{m}m{sec}s"),
    }
}

/// The keyspace id of a txn request key in API V2 (`x` + 3-byte id), if any.
fn key_keyspace_id(user_key: &[u8]) -> Option<u32> {
    match user_key {
        [b'x', a, b, c, ..] => Some(u32::from_be_bytes([0, *a, *b, *c])),
        _ => None,
    }
}

/// TiKV's write-CF compaction filter run to completion on every key
/// `in_scope` accepts: versions committed after `safe_point` stay; of the
/// others, Lock and Rollback records are dropped, the newest Put is kept
/// (with everything older dropped), and a Delete is dropped with everything
/// older (the deleted key's tombstone is collected). Dropped Puts take their
/// default-CF value with them. Locks are never touched.
pub(crate) fn collect_garbage(
    mvcc: &mut MvccStore,
    safe_point: u64,
    in_scope: impl Fn(&[u8]) -> bool,
) {
    let mut emptied = Vec::new();
    for (key, versions) in mvcc.writes.iter_mut() {
        if !in_scope(&versions.user_key) {
            continue;
        }
        let mut remove_older = false;
        let mut dropped = Vec::new();
        for (&commit_ts, w) in versions.by_commit.range(..=safe_point).rev() {
            if remove_older {
                dropped.push(commit_ts);
                continue;
            }
            match w.kind {
                WriteKind::Lock | WriteKind::Rollback => dropped.push(commit_ts),
                WriteKind::Put => remove_older = true,
                WriteKind::Delete => {
                    remove_older = true;
                    dropped.push(commit_ts);
                }
            }
        }
        for commit_ts in dropped {
            let Some(w) = versions.by_commit.remove(&commit_ts) else { continue };
            if let Some(values) = mvcc.values.get_mut(key).filter(|_| w.kind == WriteKind::Put) {
                values.remove(&w.start_ts);
            }
        }
        if versions.by_commit.is_empty() {
            emptied.push(key.clone());
        }
    }
    for key in emptied {
        mvcc.writes.remove(&key);
        if mvcc.values.get(&key).is_some_and(BTreeMap::is_empty) {
            mvcc.values.remove(&key);
        }
    }
}

/// Drops every lock, write record and value in `[start, end)` (region key
/// space): a `DeleteRange` modify on the three data CFs.
fn delete_txn_data(mvcc: &mut MvccStore, start: &[u8], end: &[u8]) {
    if start >= end {
        return;
    }
    let range = start.to_vec()..end.to_vec();
    let in_range = |k: &Vec<u8>| range.contains(k);
    mvcc.locks.retain(|k, _| !in_range(k));
    mvcc.shared.retain(|k, _| !in_range(k));
    mvcc.writes.retain(|k, _| !in_range(k));
    mvcc.values.retain(|k, _| !in_range(k));
}

impl State {
    /// `redirectKeyspace`: the keyspace whose GC state a request works on.
    fn redirect_gc_keyspace(&self, keyspace_id: u32, user_api: bool) -> Result<u32, String> {
        if keyspace_id & !VALID_KEYSPACE_ID_MASK != 0 {
            return Ok(NULL_KEYSPACE_ID);
        }
        let meta = self.pd.keyspaces.values().find(|m| {
            m.keyspace == Some(tikv_proto::keyspacepb::keyspace_meta::Keyspace::Id(keyspace_id))
        });
        let Some(meta) = meta else {
            return Err("[PD:keyspace:ErrKeyspaceNotFound]keyspace does not exist".to_owned());
        };
        if meta.config.get("gc_management_type").map(String::as_str) == Some("keyspace_level") {
            return Ok(keyspace_id);
        }
        if user_api {
            return Ok(NULL_KEYSPACE_ID);
        }
        Err(format!(
            "[PD:gc:ErrGCOnInvalidKeyspace]trying to manage GC in keyspace {} (id: {keyspace_id}) where keyspace level GC is not enabled",
            meta.name
        ))
    }

    /// Keyspace ids with keyspace-level GC: their keys are outside the
    /// unified GC's reach.
    fn keyspace_level_gc_ids(&self) -> Vec<u32> {
        self.pd
            .keyspaces
            .values()
            .filter(|m| {
                m.config.get("gc_management_type").map(String::as_str) == Some("keyspace_level")
            })
            .filter_map(|m| match m.keyspace {
                Some(tikv_proto::keyspacepb::keyspace_meta::Keyspace::Id(id)) => Some(id),
                _ => None,
            })
            .collect()
    }

    fn gc_error(&self, message: String) -> Option<pdpb::ResponseHeader> {
        self.error_header(pdpb::ErrorType::Unknown, &message)
    }

    /// `GetGCState`, without global GC barriers (none are modelled): the
    /// list is present, empty, when asked for.
    pub(crate) fn get_gc_state(
        &self,
        r: &pdpb::GetGcStateRequest,
        now: Instant,
    ) -> pdpb::GetGcStateResponse {
        let id = match self.redirect_gc_keyspace(scope_keyspace_id(r.keyspace_scope.as_ref()), true)
        {
            Ok(id) => id,
            Err(e) => {
                return pdpb::GetGcStateResponse { header: self.gc_error(e), ..Default::default() };
            }
        };
        let state = self.pd.gc.get(id);
        let gc_barriers = if r.exclude_gc_barriers {
            Vec::new()
        } else {
            state
                .barriers
                .iter()
                .filter(|(name, _)| name.as_str() != GC_WORKER_BARRIER_ID)
                .map(|(name, b)| b.info(name, now))
                .collect()
        };
        pdpb::GetGcStateResponse {
            header: self.header(),
            gc_state: Some(pdpb::GcState {
                keyspace_scope: Some(pdpb::KeyspaceScope {
                    keyspace: Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(id)),
                }),
                is_keyspace_level_gc: id != NULL_KEYSPACE_ID,
                txn_safe_point: state.txn_safe_point,
                gc_safe_point: state.gc_safe_point,
                gc_barriers,
            }),
            global_gc_barriers: r
                .include_global_gc_barriers
                .then(pdpb::GlobalGcBarriersInfo::default),
        }
    }

    /// `AdvanceTxnSafePoint`: the txn safe point moves towards `target` but
    /// never past a live GC barrier (expired ones are deleted on the way),
    /// and never backwards (a smaller target is an error).
    pub(crate) fn advance_txn_safe_point(
        &mut self,
        r: &pdpb::AdvanceTxnSafePointRequest,
        now: Instant,
    ) -> pdpb::AdvanceTxnSafePointResponse {
        let id =
            match self.redirect_gc_keyspace(scope_keyspace_id(r.keyspace_scope.as_ref()), false) {
                Ok(id) => id,
                Err(e) => {
                    return pdpb::AdvanceTxnSafePointResponse {
                        header: self.gc_error(e),
                        ..Default::default()
                    };
                }
            };
        let state = self.pd.gc.get_mut(id);
        let old = state.txn_safe_point;
        if r.target < old {
            let message = format!(
                "[PD:gc:ErrDecreasingTxnSafePoint]trying to update txn safe point to a smaller value, current value: {old}, given: {}",
                r.target
            );
            return pdpb::AdvanceTxnSafePointResponse {
                header: self.gc_error(message),
                ..Default::default()
            };
        }
        state.barriers.retain(|_, b| !b.is_expired(now));
        let mut min_blocker = r.target;
        let mut blocker = String::new();
        for (name, b) in &state.barriers {
            if b.ts < min_blocker {
                min_blocker = b.ts;
                blocker = b.describe(name);
            }
        }
        let new = old.max(min_blocker);
        state.txn_safe_point = new;
        pdpb::AdvanceTxnSafePointResponse {
            header: self.header(),
            old_txn_safe_point: old,
            new_txn_safe_point: new,
            blocker_description: blocker,
        }
    }

    /// `AdvanceGCSafePoint`: never backwards, never past the txn safe point.
    /// The stores then collect garbage below it at once (TiKV's GC worker
    /// polls the safe point and its compaction filter drops versions
    /// lazily; the model does both immediately).
    pub(crate) fn advance_gc_safe_point(
        &mut self,
        r: &pdpb::AdvanceGcSafePointRequest,
    ) -> pdpb::AdvanceGcSafePointResponse {
        let id =
            match self.redirect_gc_keyspace(scope_keyspace_id(r.keyspace_scope.as_ref()), false) {
                Ok(id) => id,
                Err(e) => {
                    return pdpb::AdvanceGcSafePointResponse {
                        header: self.gc_error(e),
                        ..Default::default()
                    };
                }
            };
        let state = self.pd.gc.get(id);
        let old = state.gc_safe_point;
        let error = if r.target < old {
            Some(format!(
                "[PD:gc:ErrDecreasingGCSafePoint]trying to update GC safe point to a smaller value, current value: {old}, given: {}",
                r.target
            ))
        } else if r.target > state.txn_safe_point {
            Some(format!(
                "[PD:gc:ErrGCSafePointExceedsTxnSafePoint]trying to update GC safe point to a too large value that exceeds the txn safe point, current value: {old}, given: {}, current txn safe point: {}",
                r.target, state.txn_safe_point
            ))
        } else {
            None
        };
        if let Some(e) = error {
            return pdpb::AdvanceGcSafePointResponse {
                header: self.gc_error(e),
                ..Default::default()
            };
        }
        self.pd.gc.get_mut(id).gc_safe_point = r.target;
        let keyspace_level = self.keyspace_level_gc_ids();
        let in_scope = |user_key: &[u8]| match key_keyspace_id(user_key) {
            Some(ks) if keyspace_level.contains(&ks) => ks == id,
            _ => id == NULL_KEYSPACE_ID,
        };
        collect_garbage(&mut self.mvcc, r.target, in_scope);
        pdpb::AdvanceGcSafePointResponse {
            header: self.header(),
            old_gc_safe_point: old,
            new_gc_safe_point: r.target,
        }
    }

    /// The deprecated `UpdateGCSafePoint`, which client-go's `KVStore.GC`
    /// still ends with: PD's `CompatibleUpdateGCSafePoint` on the null
    /// keyspace. A smaller target changes nothing and answers the current
    /// GC safe point (callers pass 0 to read it); a target past the txn
    /// safe point fails the call with a gRPC error, as PD returns its
    /// error instead of a header; otherwise as `AdvanceGCSafePoint`.
    pub(crate) fn update_gc_safe_point(
        &mut self,
        r: &pdpb::UpdateGcSafePointRequest,
    ) -> Result<pdpb::UpdateGcSafePointResponse, tikv_core::rpc::RpcError> {
        let old = self.pd.gc.get(NULL_KEYSPACE_ID).gc_safe_point;
        if r.safe_point < old {
            return Ok(pdpb::UpdateGcSafePointResponse {
                header: self.header(),
                new_safe_point: old,
            });
        }
        let advance =
            pdpb::AdvanceGcSafePointRequest { target: r.safe_point, ..Default::default() };
        let answer = self.advance_gc_safe_point(&advance);
        if let Some(e) = answer.header.and_then(|h| h.error) {
            return Err(tikv_core::rpc::RpcError::Status {
                code: 2, // gRPC Unknown: PD's errors carry no other code
                message: e.message,
            });
        }
        Ok(pdpb::UpdateGcSafePointResponse { header: self.header(), new_safe_point: r.safe_point })
    }

    /// `SetGCBarrier`: a positive TTL (`i64::MAX`-ish TTLs never expire),
    /// not the reserved or empty id, not behind the txn safe point.
    pub(crate) fn set_gc_barrier(
        &mut self,
        r: &pdpb::SetGcBarrierRequest,
        now: Instant,
    ) -> pdpb::SetGcBarrierResponse {
        let fail = |st: &State, e: String| pdpb::SetGcBarrierResponse {
            header: st.gc_error(e),
            ..Default::default()
        };
        if r.ttl_seconds <= 0 {
            let e = format!(
                "[PD:common:ErrInvalidArgument]invalid argument for ttl: {}",
                go_duration(r.ttl_seconds)
            );
            return fail(self, e);
        }
        let id = match self.redirect_gc_keyspace(scope_keyspace_id(r.keyspace_scope.as_ref()), true)
        {
            Ok(id) => id,
            Err(e) => return fail(self, e),
        };
        if let Err(e) = check_barrier_id(&r.barrier_id) {
            return fail(self, e);
        }
        let txn_safe_point = self.pd.gc.get(id).txn_safe_point;
        if r.barrier_ts < txn_safe_point {
            let e = format!(
                "[PD:gc:ErrGCBarrierTSBehindTxnSafePoint]trying to set a GC barrier on ts {} which is already behind the txn safe point {txn_safe_point}",
                r.barrier_ts
            );
            return fail(self, e);
        }
        // `SaturatingStdDurationFromSeconds`: a TTL beyond Go's largest
        // duration (about 292 years) never expires.
        const MAX_GO_DURATION_SECONDS: i64 = i64::MAX / 1_000_000_000;
        let expires_at = (r.ttl_seconds < MAX_GO_DURATION_SECONDS)
            .then(|| now.saturating_add(Duration::from_secs(r.ttl_seconds.unsigned_abs())));
        let barrier = GcBarrier { ts: r.barrier_ts, expires_at };
        let info = barrier.info(&r.barrier_id, now);
        self.pd.gc.get_mut(id).barriers.insert(r.barrier_id.clone(), barrier);
        pdpb::SetGcBarrierResponse { header: self.header(), new_barrier_info: Some(info) }
    }

    /// `DeleteGCBarrier`: answers the deleted barrier, or none if absent.
    pub(crate) fn delete_gc_barrier(
        &mut self,
        r: &pdpb::DeleteGcBarrierRequest,
        now: Instant,
    ) -> pdpb::DeleteGcBarrierResponse {
        let fail = |st: &State, e: String| pdpb::DeleteGcBarrierResponse {
            header: st.gc_error(e),
            ..Default::default()
        };
        let id = match self.redirect_gc_keyspace(scope_keyspace_id(r.keyspace_scope.as_ref()), true)
        {
            Ok(id) => id,
            Err(e) => return fail(self, e),
        };
        if let Err(e) = check_barrier_id(&r.barrier_id) {
            return fail(self, e);
        }
        let deleted = self.pd.gc.get_mut(id).barriers.remove(&r.barrier_id);
        pdpb::DeleteGcBarrierResponse {
            header: self.header(),
            deleted_barrier_info: deleted.map(|b| b.info(&r.barrier_id, now)),
        }
    }

    /// `kv_delete_range` (`Storage::delete_range` applied by raftstore's
    /// `handle_delete_range`): the request keys are encoded
    /// (`Key::from_raw`), `start < end`, the start in the region and the end
    /// not past it; then every CF's data in the range is deleted, unless
    /// `notify_only` (TiKV then only notifies observers such as TiFlash).
    pub(crate) fn kv_delete_range(
        &mut self,
        store: u64,
        r: kvrpcpb::DeleteRangeRequest,
    ) -> kvrpcpb::DeleteRangeResponse {
        let mut resp = kvrpcpb::DeleteRangeResponse::default();
        let region = match self.txn_region(
            store,
            "delete_range",
            &r.context,
            [&r.start_key[..], &r.end_key[..]],
            false,
        ) {
            Ok(region) => region,
            Err(crate::txn::Fail::Region(e)) => {
                resp.region_error = Some(*e);
                return resp;
            }
            Err(crate::txn::Fail::Key(e)) => {
                resp.error = e.abort;
                return resp;
            }
        };
        let (start, end) = (txn_key(&r.start_key), txn_key(&r.end_key));
        if start >= end {
            resp.error =
                format!("invalid delete range command, start_key: {:?}, end_key: {:?}", start, end);
            return resp;
        }
        if let Err(e) = check_key_in_region(&start, &region) {
            resp.region_error = Some(*e);
            return resp;
        }
        if !region.end_key.is_empty() && end > region.end_key.to_vec() {
            resp.region_error = Some(key_not_in_region(&end, &region));
            return resp;
        }
        if !r.notify_only {
            delete_txn_data(&mut self.mvcc, &start, &end);
        }
        resp
    }

    /// `unsafe_destroy_range` (`GcWorker::unsafe_destroy_range`): every
    /// CF's data in the encoded range is deleted on this store with no
    /// region check. TiKV asserts both keys are non-empty (a crash); the
    /// model answers an error instead. All stores share one copy of the
    /// data in the model, so one store's destroy empties the range for all.
    pub(crate) fn kv_unsafe_destroy_range(
        &mut self,
        r: kvrpcpb::UnsafeDestroyRangeRequest,
    ) -> kvrpcpb::UnsafeDestroyRangeResponse {
        let mut resp = kvrpcpb::UnsafeDestroyRangeResponse::default();
        if r.start_key.is_empty() || r.end_key.is_empty() {
            resp.error = "unsafe destroy range needs a non-empty start and end key".to_owned();
            return resp;
        }
        delete_txn_data(&mut self.mvcc, &txn_key(&r.start_key), &txn_key(&r.end_key));
        resp
    }
}

/// The barrier-id checks shared by set and delete.
fn check_barrier_id(barrier_id: &str) -> Result<(), String> {
    if barrier_id == GC_WORKER_BARRIER_ID {
        return Err(format!(
            "[PD:gc:ErrReservedGCBarrierID]trying to set a GC barrier with a barrier ID that is reserved: {barrier_id}"
        ));
    }
    if barrier_id.is_empty() {
        return Err("[PD:common:ErrInvalidArgument]invalid argument for barrierID: ".to_owned());
    }
    Ok(())
}

/// Test helpers over GC.
impl crate::Cluster {
    /// Turns on keyspace-level GC for keyspace `name` (its config's
    /// `gc_management_type = keyspace_level`); false if there is no such keyspace.
    pub fn enable_keyspace_level_gc(&self, name: &str) -> bool {
        let mut st = self.lock();
        match st.pd.keyspaces.get_mut(name) {
            Some(meta) => {
                meta.config.insert("gc_management_type".to_owned(), "keyspace_level".to_owned());
                true
            }
            None => false,
        }
    }

    /// Every write-CF record of the txn request key `key`, newest first, as
    /// (commit ts, kind): what MVCC GC left.
    pub fn write_records(&self, key: &[u8]) -> Vec<(u64, WriteKind)> {
        let st = self.lock();
        st.mvcc
            .writes
            .get(&txn_key(key))
            .map(|v| v.by_commit.iter().rev().map(|(c, w)| (*c, w.kind)).collect())
            .unwrap_or_default()
    }
}
