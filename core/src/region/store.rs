//! The store table: store id → address, labels and resolve state
//! (client-go's `store_cache.go`, without the PD calls and health loops).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tikv_proto::metapb;

use crate::error::Error;

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
    /// The gRPC address (empty only for a tombstone that was never resolved).
    pub address: String,
    /// PD's state (`Up`, `Offline`, `Tombstone`).
    pub state: metapb::StoreState,
    /// The store's labels (zone, host, `engine=tiflash`, ...).
    pub labels: Vec<metapb::StoreLabel>,
    resolve_state: AtomicU8,
    reachable: AtomicBool,
}

impl StoreInfo {
    fn new(store: metapb::Store, resolve_state: ResolveState) -> StoreInfo {
        StoreInfo {
            id: store.id,
            state: store.state(),
            address: store.address,
            labels: store.labels,
            resolve_state: AtomicU8::new(resolve_state as u8),
            reachable: AtomicBool::new(true),
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

    /// False after [`StoreTable::mark_unreachable`], until marked reachable.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
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
        if !self.is_reachable() {
            f.write_str(" unreachable")?;
        }
        Ok(())
    }
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
            && old.address == store.address
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
    /// probe); the replica selector avoids unreachable stores.
    pub fn mark_unreachable(&self, id: u64) {
        self.set_reachable(id, false);
    }

    /// Records that store `id` answered again.
    pub fn mark_reachable(&self, id: u64) {
        self.set_reachable(id, true);
    }

    fn set_reachable(&self, id: u64, reachable: bool) {
        let stores = self.stores.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = stores.get(&id) {
            s.reachable.store(reachable, Ordering::Release);
        }
    }

    /// False if store `id` was marked unreachable; unknown stores count as
    /// reachable (nothing says otherwise).
    pub fn is_reachable(&self, id: u64) -> bool {
        let stores = self.stores.read().unwrap_or_else(PoisonError::into_inner);
        stores.get(&id).is_none_or(|s| s.is_reachable())
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
