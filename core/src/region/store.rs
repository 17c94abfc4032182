//! The store table: store id → address, labels and resolve state
//! (client-go's `store_cache.go`, without the PD calls and health loops).
//!
//! [`StoreTable::apply_store_list`] is the decision half of the periodic
//! store refresh; the PD half is [`crate::pd::RefreshStores`].

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use hashbrown::HashMap;

use tikv_proto::metapb;

use super::health::{Liveness, StoreHealth};
use crate::error::Error;
use crate::time::{Duration, Instant};

/// Where a store stands in client-go's resolve life cycle.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResolveState {
    /// Not known yet: the caller must fetch it from PD (`GetStore`).
    Unresolved = 0,
    /// Address and labels are known and usable.
    Resolved = 1,
    /// A request to it failed (or TiKV answered `StoreNotMatch`): its address
    /// must be fetched from PD again before use.
    NeedCheck = 2,
    /// This [`StoreInfo`] was replaced by a newer one (address or labels
    /// changed): holders should look the store up again (client-go's former
    /// `deleted` state).
    Deleted = 3,
    /// The store is removed from the cluster: regions with a peer on it are
    /// out of date and requests must not go there.
    Tombstone = 4,
}

impl ResolveState {
    fn from_u8(v: u8) -> ResolveState {
        match v {
            1 => ResolveState::Resolved,
            2 => ResolveState::NeedCheck,
            3 => ResolveState::Deleted,
            4 => ResolveState::Tombstone,
            _ => ResolveState::Unresolved,
        }
    }
}

impl fmt::Display for ResolveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResolveState::Unresolved => "unresolved",
            ResolveState::Resolved => "resolved",
            ResolveState::NeedCheck => "needCheck",
            ResolveState::Deleted => "deleted",
            ResolveState::Tombstone => "tombstone",
        })
    }
}

/// A store as PD described it, plus the client's view of it.
///
/// The metadata fields are immutable; a change of address or labels installs
/// a new `StoreInfo` and marks this one [`ResolveState::Deleted`].
pub struct StoreInfo {
    /// The store id.
    pub id: u64,
    /// The gRPC address (empty only for a tombstone that was never
    /// resolved). Shared: every request to the store carries a clone.
    pub address: Arc<str>,
    /// PD's state (`Up`, `Offline`, `Tombstone`).
    pub state: metapb::StoreState,
    /// The store's labels (zone, host, `engine=tiflash`, ...).
    pub labels: Vec<metapb::StoreLabel>,
    resolve_state: AtomicU8,
    health: StoreHealth,
    /// TiKV's last estimate of its read pool's queueing time, in
    /// milliseconds, and when it was received (nanoseconds of [`Instant`]):
    /// client-go's `loadStats`.
    estimated_wait_ms: AtomicU32,
    wait_reported_at: AtomicU64,
}

impl StoreInfo {
    fn new(store: metapb::Store, resolve_state: ResolveState) -> StoreInfo {
        StoreInfo {
            id: store.id,
            state: store.state(),
            address: store.address.into(),
            labels: store.labels,
            resolve_state: AtomicU8::new(resolve_state as u8),
            health: StoreHealth::default(),
            estimated_wait_ms: AtomicU32::new(0),
            wait_reported_at: AtomicU64::new(0),
        }
    }

    /// The current resolve state.
    pub fn resolve_state(&self) -> ResolveState {
        ResolveState::from_u8(self.resolve_state.load(Ordering::Acquire))
    }

    fn set_resolve_state(&self, s: ResolveState) {
        self.resolve_state.store(s as u8, Ordering::Release);
    }

    /// Moves `from` → `to`; false if the state was something else.
    fn change_resolve_state(&self, from: ResolveState, to: ResolveState) -> bool {
        self.resolve_state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// True if the store is removed from the cluster.
    pub fn is_tombstone(&self) -> bool {
        self.resolve_state() == ResolveState::Tombstone
    }

    /// The value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|l| l.key == key).map(|l| l.value.as_str())
    }

    /// True for TiFlash stores (label `engine=tiflash` or `tiflash_compute`,
    /// as client-go's `GetStoreTypeByMeta`).
    pub fn is_tiflash(&self) -> bool {
        matches!(self.label("engine"), Some("tiflash" | "tiflash_compute"))
    }

    /// Records TiKV's estimate of its read queue (`ServerIsBusy.estimated_wait_ms`)
    /// as of `now` (client-go `updateServerLoadStats`).
    pub fn record_estimated_wait(&self, wait_ms: u32, now: Instant) {
        self.wait_reported_at.store(now.as_nanos(), Ordering::Release);
        self.estimated_wait_ms.store(wait_ms, Ordering::Release);
    }

    /// The read queue TiKV estimated, minus the time since it said so
    /// (client-go `EstimatedWaitTime`): zero once that much time passed.
    pub fn estimated_wait(&self, now: Instant) -> Duration {
        let wait = Duration::from_millis(u64::from(self.estimated_wait_ms.load(Ordering::Acquire)));
        let at = Instant::from_nanos(self.wait_reported_at.load(Ordering::Acquire));
        wait.saturating_sub(now.saturating_duration_since(at))
    }

    /// False after [`StoreTable::mark_unreachable`], until marked reachable
    /// (a health probe answered `SERVING`).
    pub fn is_reachable(&self) -> bool {
        self.health.liveness() == Liveness::Reachable
    }

    /// The store's liveness, epoch and slow scores.
    pub fn health(&self) -> &StoreHealth {
        &self.health
    }
}

impl fmt::Debug for StoreInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "store {} {:?} {:?} {}",
            self.id,
            self.address,
            self.state,
            self.resolve_state()
        )?;
        for l in &self.labels {
            write!(f, " {}={}", l.key, l.value)?;
        }
        match self.health.liveness() {
            Liveness::Reachable => {}
            Liveness::Unreachable => f.write_str(" unreachable")?,
            Liveness::Unknown => f.write_str(" liveness-unknown")?,
        }
        Ok(())
    }
}

/// What [`StoreTable::apply_store_list`] did with PD's store list, by
/// store id (each list sorted).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreListChanges {
    /// Stores the table did not know, now [`ResolveState::Resolved`].
    pub added: Vec<u64>,
    /// Stores whose address, labels or state changed: a new entry replaced
    /// the old one, which holders see as [`ResolveState::Deleted`].
    pub updated: Vec<u64>,
    /// Stores listed as before (an entry waiting for a check is
    /// [`ResolveState::Resolved`] again).
    pub unchanged: Vec<u64>,
    /// Stores PD lists as tombstones, now [`ResolveState::Tombstone`].
    pub tombstoned: Vec<u64>,
    /// Usable stores PD no longer lists: marked [`ResolveState::NeedCheck`],
    /// so their next use asks PD about them (`GetStore`), which tells a
    /// removed store from a listing gap.
    pub unlisted: Vec<u64>,
    /// Stores PD describes badly (id 0, no address), skipped; requests to
    /// them resolve them again on demand.
    pub refused: Vec<(u64, Error)>,
}

/// The shared store table.
///
/// `get` only hands out stores a request may use now (or tombstones, so the
/// caller can drop the peer instead of asking PD again and again); a store
/// that is unknown or needs a reload reads as `None`, and the caller fetches
/// it from PD and [`StoreTable::insert`]s the answer.
#[derive(Default)]
pub struct StoreTable {
    stores: RwLock<HashMap<u64, Arc<StoreInfo>>>,
    /// When the stores' health last ticked, in nanoseconds of [`Instant`]
    /// plus one (zero: never).
    health_ticked_at: AtomicU64,
}

impl StoreTable {
    /// An empty table.
    pub fn new() -> StoreTable {
        StoreTable::default()
    }

    /// Records PD's answer for a store, as client-go's `initByStoreMeta` /
    /// `reResolve`:
    /// - a tombstone is recorded as [`ResolveState::Tombstone`] (a previous
    ///   entry is marked tombstone too, so holders see it);
    /// - a live store with an empty address is refused
    ///   ([`Error::MalformedResponse`], as client-go's "empty store address")
    ///   and the previous entry, if any, is left as it was;
    /// - a store whose address, labels and state are unchanged keeps its
    ///   entry, which becomes [`ResolveState::Resolved`] again;
    /// - otherwise a new entry replaces the old one, which is marked
    ///   [`ResolveState::Deleted`].
    ///
    /// Store id 0 is refused: PD never assigns it.
    pub fn insert(&self, store: metapb::Store) -> Result<Arc<StoreInfo>, Error> {
        if store.id == 0 {
            return Err(Error::malformed("store with id 0"));
        }
        let tombstone = store.state() == metapb::StoreState::Tombstone;
        if !tombstone && store.address.is_empty() {
            return Err(Error::malformed(format_args!("store {} has an empty address", store.id)));
        }
        let mut stores = self.stores.write().unwrap_or_else(PoisonError::into_inner);
        let old = stores.get(&store.id).cloned();
        if let Some(old) = &old
            && !tombstone
            && *old.address == *store.address
            && old.labels == store.labels
            && old.state == store.state()
            && matches!(old.resolve_state(), ResolveState::Resolved | ResolveState::NeedCheck)
        {
            old.set_resolve_state(ResolveState::Resolved);
            return Ok(old.clone());
        }
        let (new_state, old_state) = if tombstone {
            (ResolveState::Tombstone, ResolveState::Tombstone)
        } else {
            (ResolveState::Resolved, ResolveState::Deleted)
        };
        let info = Arc::new(StoreInfo::new(store, new_state));
        stores.insert(info.id, info.clone());
        drop(stores);
        if let Some(old) = old {
            old.set_resolve_state(old_state);
        }
        Ok(info)
    }

    /// Applies PD's list of stores (`GetAllStores` without tombstones), as
    /// client-go's store-list updater and store re-resolve together decide:
    /// - each listed store goes through [`StoreTable::insert`]: unknown ones
    ///   are added, changed addresses or labels replace the entry (holders
    ///   of the old one see it deleted and look the store up again, which
    ///   moves requests to the new address), tombstones are recorded, and
    ///   badly described stores are skipped;
    /// - a usable store missing from a non-empty list is marked for a check
    ///   (client-go re-resolves such a store with `GetStore` and marks it a
    ///   tombstone if PD says it is gone; here the next request that needs
    ///   it does that). An empty list says nothing about any store (a
    ///   cluster always has some), so it invalidates nothing.
    pub fn apply_store_list(&self, stores: Vec<metapb::Store>) -> StoreListChanges {
        let mut changes = StoreListChanges::default();
        let mut listed = Vec::with_capacity(stores.len());
        for store in stores {
            let id = store.id;
            listed.push(id);
            let old = self.entry(id);
            match self.insert(store) {
                Err(e) => changes.refused.push((id, e)),
                Ok(info) if info.is_tombstone() => changes.tombstoned.push(id),
                Ok(info) => match old {
                    None => changes.added.push(id),
                    Some(old) if Arc::ptr_eq(&old, &info) => changes.unchanged.push(id),
                    Some(_) => changes.updated.push(id),
                },
            }
        }
        if !listed.is_empty() {
            listed.sort_unstable();
            for info in self.all() {
                if listed.binary_search(&info.id).is_err()
                    && info.change_resolve_state(ResolveState::Resolved, ResolveState::NeedCheck)
                {
                    changes.unlisted.push(info.id);
                }
            }
        }
        for ids in [
            &mut changes.added,
            &mut changes.updated,
            &mut changes.unchanged,
            &mut changes.tombstoned,
        ] {
            ids.sort_unstable();
        }
        changes.refused.sort_by_key(|r| r.0);
        changes
    }

    /// The entry of store `id` in any state.
    fn entry(&self, id: u64) -> Option<Arc<StoreInfo>> {
        self.stores.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// The store if it is usable ([`ResolveState::Resolved`]) or known to be
    /// a tombstone; `None` if unknown or invalidated (fetch it from PD).
    pub fn get(&self, id: u64) -> Option<Arc<StoreInfo>> {
        let stores = self.stores.read().unwrap_or_else(PoisonError::into_inner);
        let info = stores.get(&id)?;
        matches!(info.resolve_state(), ResolveState::Resolved | ResolveState::Tombstone)
            .then(|| info.clone())
    }

    /// The resolve state of store `id` ([`ResolveState::Unresolved`] if unknown).
    pub fn resolve_state(&self, id: u64) -> ResolveState {
        let stores = self.stores.read().unwrap_or_else(PoisonError::into_inner);
        stores.get(&id).map_or(ResolveState::Unresolved, |s| s.resolve_state())
    }

    /// Marks store `id` as needing a reload from PD (client-go's
    /// `markStoreNeedCheck`, only from `Resolved`): [`StoreTable::get`]
    /// returns `None` until it is inserted again. Tombstones stay tombstones.
    pub fn invalidate(&self, id: u64) {
        let stores = self.stores.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = stores.get(&id) {
            s.change_resolve_state(ResolveState::Resolved, ResolveState::NeedCheck);
        }
    }

    /// Records that store `id` did not answer (a failed send or liveness
    /// probe); the replica selector avoids unreachable stores and the
    /// health probes ask it until it answers.
    pub fn mark_unreachable(&self, id: u64) {
        self.set_liveness(id, Liveness::Unreachable);
    }

    /// Records that store `id` answered again.
    pub fn mark_reachable(&self, id: u64) {
        self.set_liveness(id, Liveness::Reachable);
    }

    /// Sets the liveness of store `id` (any resolve state).
    pub fn set_liveness(&self, id: u64, liveness: Liveness) {
        if let Some(s) = self.entry(id) {
            s.health.set_liveness(liveness);
        }
    }

    /// The liveness of store `id`; unknown stores count as reachable
    /// (nothing says otherwise).
    pub fn liveness(&self, id: u64) -> Liveness {
        self.entry(id).map_or(Liveness::Reachable, |s| s.health.liveness())
    }

    /// False if store `id` was marked unreachable (or its probe answered
    /// without a verdict); unknown stores count as reachable.
    pub fn is_reachable(&self, id: u64) -> bool {
        self.liveness(id) == Liveness::Reachable
    }

    /// Store `id` in any resolve state, for its health (a store waiting
    /// for a PD check keeps its liveness, epoch and scores).
    pub fn get_any(&self, id: u64) -> Option<Arc<StoreInfo>> {
        self.entry(id)
    }

    /// Ticks every store's health ([`super::StoreHealth::tick`]) if
    /// `interval` has passed since the last tick (or none happened yet),
    /// as client-go's `checkAndUpdateStoreHealthStatus` runs on its own
    /// period. `None` when it did not tick; else the stores whose TiKV-side
    /// score wants fresh feedback, by id.
    pub fn tick_health(&self, now: Instant, interval: Duration) -> Option<Vec<Arc<StoreInfo>>> {
        let last = self.health_ticked_at.load(Ordering::Acquire);
        if last != 0 {
            let at = Instant::from_nanos(last - 1);
            if now.saturating_duration_since(at) < interval {
                return None;
            }
        }
        let stamp = now.as_nanos().saturating_add(1);
        if self
            .health_ticked_at
            .compare_exchange(last, stamp, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another caller ticked meanwhile.
            return None;
        }
        Some(self.all().into_iter().filter(|store| store.health.tick(now)).collect())
    }

    /// Every entry, sorted by id.
    pub fn all(&self) -> Vec<Arc<StoreInfo>> {
        let stores = self.stores.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = stores.values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Number of entries (any state).
    pub fn len(&self) -> usize {
        self.stores.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True if the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.stores.write().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

impl fmt::Debug for StoreTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.all()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(id: u64, address: &str, state: metapb::StoreState, zone: &str) -> metapb::Store {
        metapb::Store {
            id,
            address: address.into(),
            state: state as i32,
            labels: vec![metapb::StoreLabel { key: "zone".into(), value: zone.into() }],
            ..Default::default()
        }
    }

    /// Every branch of a store-list refresh, over a table that knows some
    /// of the stores in every state.
    #[test]
    fn store_list_refresh_adds_updates_tombstones_and_checks_unlisted_stores() {
        use metapb::StoreState::{Tombstone, Up};
        let table = StoreTable::new();
        let first = table.apply_store_list(vec![
            store(1, "tikv-1:20160", Up, "z1"),
            store(2, "tikv-2:20160", Up, "z2"),
            store(3, "tikv-3:20160", Up, "z3"),
            store(4, "tikv-4:20160", Up, "z4"),
        ]);
        assert_eq!(first.added, [1, 2, 3, 4]);
        assert_eq!(first, StoreListChanges { added: vec![1, 2, 3, 4], ..Default::default() });

        let s1 = table.get(1).unwrap();
        table.invalidate(2); // a request to store 2 failed
        let s4 = table.get(4).unwrap();
        let changes = table.apply_store_list(vec![
            store(7, "tikv-7:20160", Up, "z1"),
            store(1, "tikv-1b:20160", Up, "z1"), // moved
            store(2, "tikv-2:20160", Up, "z2"),  // as before
            store(5, "", Tombstone, "z5"),       // listed although tombstone
            store(6, "", Up, "z6"),              // no address
            store(0, "zero:1", Up, "z0"),        // PD never assigns id 0
        ]);
        assert_eq!(changes.added, [7]);
        assert_eq!(changes.updated, [1]);
        assert_eq!(changes.unchanged, [2]);
        assert_eq!(changes.tombstoned, [5]);
        // 3 and 4 are not listed any more; 5 and 6 were never usable.
        assert_eq!(changes.unlisted, [3, 4]);
        let refused: Vec<u64> = changes.refused.iter().map(|r| r.0).collect();
        assert_eq!(refused, [0, 6]);
        assert!(changes.refused.iter().all(|r| matches!(r.1, Error::MalformedResponse(_))));

        assert_eq!(s1.resolve_state(), ResolveState::Deleted, "holders of the old entry move");
        assert_eq!(&*table.get(1).unwrap().address, "tikv-1b:20160");
        assert_eq!(table.resolve_state(2), ResolveState::Resolved, "a listed store is usable");
        assert_eq!(s4.resolve_state(), ResolveState::NeedCheck);
        assert!(table.get(4).is_none(), "an unlisted store is asked about before use");
        assert!(table.get(5).unwrap().is_tombstone());
        assert_eq!(table.resolve_state(6), ResolveState::Unresolved);

        // An empty list invalidates nothing.
        assert_eq!(table.apply_store_list(Vec::new()), StoreListChanges::default());
        assert_eq!(table.resolve_state(7), ResolveState::Resolved);
        // A tombstone stays one when PD stops listing it.
        let again = table.apply_store_list(vec![store(7, "tikv-7:20160", Up, "z1")]);
        assert_eq!(again.unlisted, [1, 2]);
        assert!(table.get(5).unwrap().is_tombstone());
    }
}
