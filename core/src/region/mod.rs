//! The region cache and the store table (client-go's `internal/locate`).
//!
//! Every operation of a client routes its keys through one shared
//! [`RegionCache`] and resolves store addresses through one shared
//! [`StoreTable`]. Both are `Send + Sync`, meant to live in an `Arc`, and keep
//! their critical sections short: a lookup takes a read lock (its own
//! thread's shard of it), clones an `Arc` and releases the lock; TTL extension, leader switches and invalidation are
//! atomics on the [`Region`] itself, so they never take the cache's lock.
//!
//! Regions are cached with their keys already decoded to user keys: the API
//! codec (V1/V2 keyspaces) runs before [`RegionCache::insert`], so everything
//! here compares plain user keys.
//!
//! What a caller does on a miss is not decided here: a lookup returns `None`
//! (missing, invalidated or expired, as client-go's `searchCachedRegionByKey`
//! plus `checkRegionCacheTTL`), the caller asks PD and inserts the answer.

mod cache;
mod health;
mod index;
mod lookups;
mod store;
mod ttl;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use smallvec::SmallVec;
use tikv_proto::metapb;

use crate::error::Error;
use crate::key::{Key, KeyRange};
use crate::time::Instant;

pub use cache::{EpochNotMatchAction, GroupResult, RangeGroupResult, RegionCache, RegionGroup};
pub use health::{
    Liveness, SLOW_SCORE_THRESHOLD, STORE_RE_RESOLVE_INTERVAL, SlowScore, StoreHealth,
};
pub use lookups::LookupCounts;
pub use store::{ResolveState, StoreInfo, StoreListChanges, StoreTable};

/// A region's identity at one epoch: client-go's `RegionVerID`.
///
/// Two cached entries with the same `id` but a different `conf_ver` or
/// `version` are different regions as far as routing is concerned: TiKV
/// answers `EpochNotMatch` to a request stamped with the older one.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionVerId {
    /// The region id.
    pub id: u64,
    /// The configuration version (bumped by membership changes).
    pub conf_ver: u64,
    /// The version (bumped by splits and merges).
    pub version: u64,
}

impl RegionVerId {
    /// The identity of a region as PD or TiKV describes it; a missing epoch
    /// reads as zeros (such a region is refused by the cache anyway).
    pub fn of(meta: &metapb::Region) -> RegionVerId {
        let epoch = meta.region_epoch.unwrap_or_default();
        RegionVerId { id: meta.id, conf_ver: epoch.conf_ver, version: epoch.version }
    }
}

impl fmt::Display for RegionVerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "region {} (conf_ver {}, version {})", self.id, self.conf_ver, self.version)
    }
}

impl fmt::Debug for RegionVerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a cached region was invalidated (client-go's `InvalidReason`).
///
/// The reason is kept on the entry: a region invalidated for
/// [`InvalidReason::NoLeader`] makes the next inserted version of the same
/// region start at the following peer instead of PD's (possibly stale)
/// leader, as client-go's `insertRegionToCache` does.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum InvalidReason {
    /// TiKV reported that the region has no leader (client-go `NoLeader`).
    NoLeader = 1,
    /// The store does not have the region (`RegionNotFound`).
    RegionNotFound = 2,
    /// The cached epoch is stale (`EpochNotMatch`).
    EpochNotMatch = 3,
    /// A leader hint named a store with no peer in the cached region, or the
    /// store is gone from PD (client-go `StoreNotFound`).
    StoreNotFound = 4,
    /// TiKV answered `StoreNotMatch`: the address we used now belongs to
    /// another store (client-go invalidates with `Other` and re-checks the store).
    StoreNotMatch = 5,
    /// Anything else: replaced by a newer overlapping region, send failure, ...
    Other = 6,
}

impl InvalidReason {
    fn from_u8(v: u8) -> Option<InvalidReason> {
        Some(match v {
            1 => InvalidReason::NoLeader,
            2 => InvalidReason::RegionNotFound,
            3 => InvalidReason::EpochNotMatch,
            4 => InvalidReason::StoreNotFound,
            5 => InvalidReason::StoreNotMatch,
            6 => InvalidReason::Other,
            _ => return None,
        })
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why [`RegionCache::insert`] refused a region.
///
/// Converts into [`Error::MalformedResponse`] for callers that just propagate
/// it; callers that load regions from PD should match
/// [`InsertError::Stale`] and reload from the PD leader, as client-go does
/// when a PD follower hands out an old region.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The region has no epoch: it cannot be stamped on a request.
    #[error("region {id} has no epoch")]
    MissingEpoch {
        /// The region id.
        id: u64,
    },
    /// The region has no peer a request could be sent to (client-go's
    /// "no available peers").
    #[error("region {id} has no usable peer")]
    NoPeers {
        /// The region id.
        id: u64,
    },
    /// The start key is not below the (bounded) end key.
    #[error("region {id} has an empty or inverted range [{start}, {end})")]
    InvertedRange {
        /// The region id.
        id: u64,
        /// The start key.
        start: Key,
        /// The end key.
        end: Key,
    },
    /// The region is older than a cached one with the same id or an
    /// overlapping range (client-go's stale-region check); the cache is
    /// unchanged.
    #[error("{offered} is older than the cached {cached}")]
    Stale {
        /// The region that was offered.
        offered: RegionVerId,
        /// The newer cached region that made it stale.
        cached: RegionVerId,
    },
}

impl From<InsertError> for Error {
    fn from(e: InsertError) -> Error {
        Error::MalformedResponse(e.to_string())
    }
}

/// A shared handle on a cached region. Lookups hand these out instead of
/// cloning regions; leader switches and invalidation made through any handle
/// are seen by all.
pub type RegionRef = Arc<Region>;

/// Invalid-reason slot value meaning "still valid".
const VALID: u8 = 0;

/// The peers of a region, inline up to the usual three replicas.
type Peers = SmallVec<[metapb::Peer; 3]>;

/// A store epoch slot not captured yet.
const EPOCH_UNSET: u32 = u32::MAX;

/// The proxy slot of a region whose requests are not forwarded.
const NO_PROXY: u32 = u32::MAX;

/// A cached region: PD's metadata with keys decoded to user keys, plus the
/// mutable routing state client-go keeps next to it (current leader, TTL,
/// invalidation).
///
/// Only what routing needs is kept (about 200 bytes plus the two keys, so a
/// million cached regions stay within ~300 MB): the identity, the two keys (copied into
/// buffers of their own, so a cached region never pins a whole PD response)
/// and the peers, inline up to three. `repr(C)` puts the fields every lookup
/// reads (TTL, invalidation) first, on the cache line of the `Arc` counts.
#[repr(C)]
pub struct Region {
    /// TTL deadline in nanoseconds of [`Instant`] (client-go's `ttl`).
    expires_at: AtomicU64,
    /// [`VALID`] or an [`InvalidReason`] discriminant.
    invalid: AtomicU8,
    /// Index into `peers` of the peer requests go to (client-go's
    /// `workTiKVIdx`). Always `< peers.len()`; atomic so a `NotLeader`
    /// hint can move it without replacing the region.
    leader: AtomicU32,
    ver: RegionVerId,
    start: Key,
    end: Key,
    peers: Peers,
    /// Per peer, the epoch of its store when this region first routed to
    /// it (client-go's `storeEpochs`, taken at insert there; here at the
    /// first use, since the cache does not consult the store table). A
    /// store whose epoch moved since had a failure: the replica is stale.
    store_epochs: SmallVec<[AtomicU32; 3]>,
    /// Index into `peers` of the follower that last forwarded a request to
    /// an unreachable leader (client-go's `proxyTiKVIdx`), or [`NO_PROXY`].
    proxy: AtomicU32,
}

impl Region {
    /// Validates PD's (decoded) region and builds a cache entry.
    ///
    /// As client-go's `newRegion`: witness peers are dropped unless they are
    /// the leader (a witness serves neither reads nor writes), and the leader
    /// index defaults to the first peer when the leader is unknown or not
    /// among the peers. Peers on tombstone stores are not filtered here: the
    /// cache does not consult the [`StoreTable`]; the replica selector skips them.
    fn new(meta: metapb::Region, leader: Option<&metapb::Peer>) -> Result<Region, InsertError> {
        let id = meta.id;
        if meta.region_epoch.is_none() {
            return Err(InsertError::MissingEpoch { id });
        }
        let start = Key::from(meta.start_key.to_vec());
        let end = Key::from(meta.end_key.to_vec());
        if !end.is_empty() && start >= end {
            return Err(InsertError::InvertedRange { id, start, end });
        }
        let is_leader = |p: &metapb::Peer| leader.is_some_and(|l| same_peer(p, l));
        let peers: Peers =
            meta.peers.iter().filter(|p| !p.is_witness || is_leader(p)).cloned().collect();
        // More peers than a u32 counts cannot be decoded from a message that fits in memory;
        // refusing them keeps the leader index narrow without a panic path.
        if peers.is_empty() || u32::try_from(peers.len()).is_err() {
            return Err(InsertError::NoPeers { id });
        }
        let leader_idx = peers.iter().position(is_leader).unwrap_or(0) as u32;
        Ok(Region {
            expires_at: AtomicU64::new(0),
            invalid: AtomicU8::new(VALID),
            leader: AtomicU32::new(leader_idx),
            ver: RegionVerId::of(&meta),
            store_epochs: peers.iter().map(|_| AtomicU32::new(EPOCH_UNSET)).collect(),
            proxy: AtomicU32::new(NO_PROXY),
            start,
            end,
            peers,
        })
    }

    /// The store epoch peer `i` captured, capturing `current` (the store's
    /// epoch now) if it has none yet; `None` for an index out of range.
    pub fn capture_store_epoch(&self, i: usize, current: u32) -> Option<u32> {
        let slot = self.store_epochs.get(i)?;
        let current = if current == EPOCH_UNSET { 0 } else { current };
        Some(
            match slot.compare_exchange(EPOCH_UNSET, current, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => current,
                Err(captured) => captured,
            },
        )
    }

    /// The peer that last forwarded a request to the unreachable leader
    /// (client-go's `proxyTiKVIdx`): the next forwarded calls try it first.
    pub fn proxy_index(&self) -> Option<usize> {
        let i = self.proxy.load(Ordering::Acquire);
        (i != NO_PROXY).then_some(i as usize).filter(|&i| i < self.peers.len())
    }

    /// Remembers peer `i` as the proxy to the leader, or forgets it
    /// (client-go `setProxyStoreIdx`, `unsetProxyStoreIfNeeded`).
    pub fn set_proxy_index(&self, i: Option<usize>) {
        let slot = match i {
            // `peers.len()` fits a u32 (checked in `new`).
            Some(i) if i < self.peers.len() => i as u32,
            _ => NO_PROXY,
        };
        self.proxy.store(slot, Ordering::Release);
    }

    /// Makes the next lookup reload the region from PD while calls holding
    /// it go on (client-go's delayed reload, `needDelayedReloadPending`):
    /// its TTL runs out now.
    pub fn expire(&self) {
        self.expires_at.store(0, Ordering::Release);
    }

    /// PD's metadata as cached (user keys, witness followers removed), rebuilt
    /// on demand: the cache does not keep the message itself.
    pub fn to_meta(&self) -> metapb::Region {
        metapb::Region {
            id: self.ver.id,
            start_key: self.start.to_bytes(),
            end_key: self.end.to_bytes(),
            region_epoch: Some(self.epoch()),
            peers: self.peers.to_vec(),
            ..Default::default()
        }
    }

    /// The region's identity at its epoch.
    pub fn ver_id(&self) -> RegionVerId {
        self.ver
    }

    /// The region id.
    pub fn id(&self) -> u64 {
        self.ver.id
    }

    /// The region's epoch (always present in a cached region).
    pub fn epoch(&self) -> metapb::RegionEpoch {
        metapb::RegionEpoch { conf_ver: self.ver.conf_ver, version: self.ver.version }
    }

    /// The peers requests may be sent to; never empty.
    pub fn peers(&self) -> &[metapb::Peer] {
        &self.peers
    }

    /// Inclusive start key.
    pub fn start_key(&self) -> &Key {
        &self.start
    }

    /// Exclusive end key; empty means unbounded.
    pub fn end_key(&self) -> &Key {
        &self.end
    }

    /// `[start, end)` as a range.
    pub fn range(&self) -> KeyRange {
        KeyRange { start: self.start.clone(), end: self.end.clone() }
    }

    /// True if `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_bytes() && (self.end.is_empty() || key < self.end.as_bytes())
    }

    /// True if the keys just below `key` lie in the region: `start < key <= end`
    /// (client-go's `ContainsByEnd`, used by reverse scans). An empty `key`
    /// means "the end of the key space" and only matches the last region.
    pub fn contains_by_end(&self, key: &[u8]) -> bool {
        if key.is_empty() {
            return self.end.is_empty();
        }
        key > self.start.as_bytes() && (self.end.is_empty() || key <= self.end.as_bytes())
    }

    /// Index into [`Region::peers`] of the current leader.
    pub fn leader_index(&self) -> usize {
        self.leader.load(Ordering::Acquire) as usize
    }

    /// The peer requests are routed to: PD's leader, the last `NotLeader`
    /// hint, or the first peer if neither is known (client-go's work peer).
    pub fn leader(&self) -> &metapb::Peer {
        // The index is only ever set to a position in `peers`, which is
        // immutable and non-empty.
        &self.peers[self.leader_index()]
    }

    /// The store holding [`Region::leader`].
    pub fn leader_store_id(&self) -> u64 {
        self.leader().store_id
    }

    /// The peer of this region on `store_id`, if any.
    pub fn peer_on_store(&self, store_id: u64) -> Option<&metapb::Peer> {
        self.peers.iter().find(|p| p.store_id == store_id)
    }

    /// Makes the peer on `store_id` the leader (client-go's
    /// `switchWorkLeaderToPeer`). Returns false, changing nothing, if the
    /// region has no peer there.
    pub fn switch_leader_to_store(&self, store_id: u64) -> bool {
        match self.peers.iter().position(|p| p.store_id == store_id) {
            Some(i) => {
                // `i < peers.len()`, which fits a u32 (checked in `new`).
                self.leader.store(i as u32, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Moves the leader to the peer after `tried` (client-go's
    /// `switchNextTiKVPeer`, for `NotLeader` without a hint). Only moves if the
    /// leader is still `tried`, so concurrent callers that failed on the same
    /// peer advance it once. Returns the leader index afterwards.
    pub fn switch_to_next_peer(&self, tried: usize) -> usize {
        let next = tried.wrapping_add(1) % self.peers.len();
        // No leader index is that large, so such a `tried` is not the leader.
        let Ok(tried) = u32::try_from(tried) else { return self.leader_index() };
        // `next < peers.len()`, which fits a u32 (checked in `new`).
        match self.leader.compare_exchange(tried, next as u32, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => next,
            Err(current) => current as usize,
        }
    }

    /// Marks the region invalid: no lookup returns it again. The first reason
    /// wins (client-go only moves from `Ok`). Returns true if this call
    /// invalidated it.
    pub fn invalidate(&self, reason: InvalidReason) -> bool {
        self.invalid
            .compare_exchange(VALID, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Why the region was invalidated, or `None` while it is valid.
    pub fn invalid_reason(&self) -> Option<InvalidReason> {
        InvalidReason::from_u8(self.invalid.load(Ordering::Acquire))
    }

    /// True once [`Region::invalidate`] was called.
    pub fn is_invalidated(&self) -> bool {
        self.invalid.load(Ordering::Acquire) != VALID
    }

    /// The current TTL deadline: the region counts as expired after it.
    pub fn expires_at(&self) -> Instant {
        Instant::from_nanos(self.expires_at.load(Ordering::Acquire))
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} leader store {}", self.ver, self.range(), self.leader_store_id())?;
        if let Some(reason) = self.invalid_reason() {
            write!(f, " invalid: {reason}")?;
        }
        Ok(())
    }
}

/// client-go's `isSamePeer`: same peer id on the same store.
fn same_peer(a: &metapb::Peer, b: &metapb::Peer) -> bool {
    a.id == b.id && a.store_id == b.store_id
}
