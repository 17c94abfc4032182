//! The region cache: which region holds a key, at which epoch, led by whom.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use hashbrown::HashTable;
use tikv_proto::metapb;

use super::index::RegionTree;
use super::lookups::{LookupCounters, LookupCounts};
use super::ttl::TtlPolicy;
use super::{InsertError, InvalidReason, Region, RegionRef, RegionVerId};
use crate::key::{Key, KeyRange};
use crate::time::{Duration, Instant};

/// The shared region cache (client-go's `RegionCache`, without the PD side:
/// loading is the caller's job).
///
/// Internally a B+tree keyed by **start key** (see `index.rs`: nodes compare
/// fixed-width key fingerprints, so a lookup rarely touches a key's bytes)
/// plus an id index, behind one reader-writer lock sharded per thread
/// (`crossbeam_utils::sync::ShardedLock`): a lookup writes only its own
/// shard's reader count, so readers on different cores do not bounce one
/// cache line, while an insert locks every shard. Start keys are used, as
/// client-go's `SortedRegions` does, because the empty start key already
/// sorts first, while the empty end key (unbounded) would need a wrapper to
/// sort last; the lookup is the same "greatest start `<=` key, then check the
/// end". Cached regions never overlap: [`RegionCache::insert`] removes every
/// overlapping entry, so at most one candidate has to be checked per lookup.
///
/// Invalidated and expired entries stay in the index (lookups skip them) until a
/// newer region replaces them or [`RegionCache::evict_expired`] drops them: the
/// invalidation reason is still needed when the replacement arrives (see
/// [`InvalidReason::NoLeader`]).
///
/// Measured with `cargo bench -p tikv-core --bench region_cache` (numbers
/// in that file), against the previous `RwLock<BTreeMap>` of `Arc`s side by
/// side: random lookups 2.4-5x faster (100k and 1M regions, 1 and 2 readers,
/// with and without concurrent inserts), cached lookups 2x, the full-range
/// walk 5x, and half the memory per region (~280-305 resident bytes).
pub struct RegionCache {
    index: ShardedLock<Index>,
    ttl: TtlPolicy,
    lookups: LookupCounters,
}

/// Regions a [`RegionCache::group_ranges_by_region`] walk visits per read
/// lock, so that a long walk does not hold off inserts (which take every shard).
const WALK_BATCH: usize = 128;

#[derive(Default)]
struct Index {
    by_start: RegionTree,
    /// The one cached version of each region id (client-go's
    /// `latestVersions` + `regions`, merged because overlapping versions are
    /// never kept side by side here). A table of the regions themselves,
    /// hashed by id, rather than a map from id: 8 bytes a slot instead of 16.
    by_id: HashTable<RegionRef>,
}

/// splitmix64's finalizer: region ids are sequential, the table wants all
/// bits mixed. Fixed, so runs are reproducible.
fn id_hash(id: u64) -> u64 {
    let mut z = id;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Index {
    /// The cached region whose `[start, end)` contains `key`.
    fn find(&self, key: &[u8]) -> Option<&RegionRef> {
        let (r, joined) = self.by_start.find_le(key)?;
        // Joined: the end is the next start, which is above `key`.
        (joined || r.contains(key)).then_some(r)
    }

    /// The cached region holding the keys just below `key` (client-go's
    /// `SearchByKey(key, isEndKey=true)`).
    fn find_by_end(&self, key: &[u8]) -> Option<&RegionRef> {
        let r = if key.is_empty() { self.by_start.last()? } else { self.by_start.find_lt(key)? };
        r.contains_by_end(key).then_some(r)
    }

    fn get_id(&self, id: u64) -> Option<&RegionRef> {
        self.by_id.find(id_hash(id), |r| r.ver.id == id)
    }

    /// Every cached region overlapping `[start, end)`, in key order.
    fn overlapping(&self, start: &Key, end: &Key) -> Vec<RegionRef> {
        let mut out = Vec::new();
        // The region starting before `start` overlaps if it reaches past it.
        // (client-go only scans from `start`, leaving such a region behind.)
        if let Some(r) = self.by_start.find_lt(start.as_bytes())
            && (r.end.is_empty() || r.end > *start)
        {
            out.push(r.clone());
        }
        for (r, _) in self.by_start.iter_from_ge(start.as_bytes()) {
            if !end.is_empty() && r.start >= *end {
                break;
            }
            out.push(r.clone());
        }
        out
    }

    /// Adds `r`, which overlaps nothing cached and whose id is not cached.
    fn insert(&mut self, r: RegionRef) {
        self.by_start.insert(r.clone());
        let joined = r.end.is_empty() || self.by_start.get(r.end.as_bytes()).is_some();
        self.by_start.set_joined(r.start.as_bytes(), joined);
        self.by_start.set_joined_before(r.start.as_bytes(), |prev| prev.end == r.start);
        self.by_id.insert_unique(id_hash(r.ver.id), r, |r| id_hash(r.ver.id));
    }

    /// Removes `r` from both indexes, only where the slot still holds `r` itself.
    fn remove(&mut self, r: &RegionRef) {
        let start = r.start.as_bytes();
        if self.by_start.get(start).is_some_and(|x| Arc::ptr_eq(x, r)) {
            self.by_start.remove(start);
            // The previous region now borders a gap (or nothing).
            self.by_start.set_joined_before(start, |_| false);
        }
        if let Ok(slot) = self.by_id.find_entry(id_hash(r.ver.id), |x| Arc::ptr_eq(x, r)) {
            slot.remove();
        }
    }
}

/// What the caller should do after `EpochNotMatch` (the answer of
/// [`RegionCache::on_epoch_not_match`], client-go's `OnRegionEpochNotMatch`
/// combined with `MayBackoffForRegionError`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EpochNotMatchAction {
    /// TiKV's epoch for the region is older than ours (TiKV has not applied
    /// the split/conf change yet): back off `BoRegionMiss` and resend the
    /// same request. The cache is unchanged.
    BackoffAndRetry,
    /// TiKV sent no current regions: the region was invalidated; back off
    /// `BoRegionMiss` (client-go treats this as a "fake" epoch error), then
    /// relocate the keys through PD.
    BackoffAndRelocate,
    /// The current regions were cached and the stale one invalidated:
    /// re-split the keys over the cache and resend at once, without backoff.
    RelocateNow,
}

impl EpochNotMatchAction {
    /// True if the caller should retry without sleeping.
    pub fn retry_without_backoff(self) -> bool {
        self == EpochNotMatchAction::RelocateNow
    }
}

/// Keys that share a region, in input order.
#[derive(Debug)]
pub struct RegionGroup<K> {
    /// The region holding all of `keys`.
    pub region: RegionRef,
    /// The keys, in input order.
    pub keys: Vec<K>,
}

/// The result of [`RegionCache::group_keys_by_region`].
#[derive(Debug)]
pub struct GroupResult<K> {
    /// Groups in input order; for sorted input each region appears once.
    pub groups: Vec<RegionGroup<K>>,
    /// Empty if every key was grouped. Otherwise the first key without a
    /// valid cached region, followed by all later keys (not examined): load
    /// the region of `uncovered[0]` from PD, insert it and group the rest again.
    pub uncovered: Vec<K>,
}

/// The result of [`RegionCache::group_ranges_by_region`].
#[derive(Debug)]
pub struct RangeGroupResult {
    /// Consecutive pieces of the range, each clamped to its region's bounds.
    pub ranges: Vec<(RegionRef, KeyRange)>,
    /// The rest of the range from the first key without a valid cached
    /// region, or `None` if the whole range was covered.
    pub uncovered: Option<KeyRange>,
}

impl RegionCache {
    /// An empty cache whose regions live `ttl` plus a random `[0, ttl_jitter)`
    /// after their last refresh (client-go: 600 s + 60 s). The jitter comes
    /// from a generator seeded with `seed`, so runs are reproducible.
    pub fn new(ttl: Duration, ttl_jitter: Duration, seed: u64) -> RegionCache {
        RegionCache {
            index: ShardedLock::default(),
            ttl: TtlPolicy::new(ttl, ttl_jitter, seed),
            lookups: LookupCounters::default(),
        }
    }

    fn read(&self) -> ShardedLockReadGuard<'_, Index> {
        // A panic elsewhere cannot leave the maps half-updated in a way that
        // breaks lookups (each write is a few map operations), so keep going.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Valid and not expired at `now`; a hit extends the TTL.
    fn usable(&self, r: &Region, now: Instant) -> bool {
        !r.is_invalidated() && self.ttl.check_and_extend(&r.expires_at, now)
    }

    /// The region containing `key`, or `None` if it is not cached, was
    /// invalidated or its TTL expired (the caller then loads it from PD).
    pub fn locate_key(&self, key: &[u8], now: Instant) -> Option<RegionRef> {
        // Checked before the `Arc` is cloned: an unusable region costs no
        // reference-count write.
        self.counted(self.read().find(key).filter(|r| self.usable(r, now)).cloned())
    }

    /// The region containing the keys just below `key`: its start is `< key`
    /// and its end is `>= key` (or unbounded). An empty `key` means the end of
    /// the key space: the last region. Used by reverse scans (client-go's
    /// `LocateEndKey`).
    pub fn locate_end_key(&self, key: &[u8], now: Instant) -> Option<RegionRef> {
        self.counted(self.read().find_by_end(key).filter(|r| self.usable(r, now)).cloned())
    }

    /// The cached version of region `id`, if valid and not expired.
    pub fn get_by_id(&self, id: u64, now: Instant) -> Option<RegionRef> {
        self.counted(self.read().get_id(id).filter(|r| self.usable(r, now)).cloned())
    }

    /// Counts a lookup's answer as a hit or a miss.
    #[inline]
    fn counted(&self, found: Option<RegionRef>) -> Option<RegionRef> {
        self.lookups.count(found.is_some());
        found
    }

    /// Hits and misses of [`locate_key`](Self::locate_key),
    /// [`locate_end_key`](Self::locate_end_key) and
    /// [`get_by_id`](Self::get_by_id) since the cache was made.
    /// [`group_keys_by_region`](Self::group_keys_by_region) looks up each
    /// key not in the region of the key before it; range walks are not
    /// counted.
    pub fn lookup_counts(&self) -> LookupCounts {
        self.lookups.total()
    }

    /// The cached entry for exactly `ver`, valid or not, without touching its TTL.
    fn get_exact(&self, ver: RegionVerId) -> Option<RegionRef> {
        self.read().get_id(ver.id).filter(|r| r.ver == ver).cloned()
    }

    /// Caches a region from PD (keys already decoded) with its leader, as
    /// client-go's `newRegion` + `insertRegionToCache`.
    ///
    /// - Malformed regions (no epoch, no usable peer, start `>=` bounded end)
    ///   are refused with the matching [`InsertError`].
    /// - A region older than the cached one with the same id (smaller
    ///   `version` or `conf_ver`), or with a smaller `version` than any cached
    ///   region it overlaps, is refused with [`InsertError::Stale`] and the
    ///   cache is unchanged. An error rather than the cached region, because
    ///   the cached one may not contain the key the caller was looking for.
    /// - The same region as cached (same version, range, peers and leader)
    ///   while the cached entry is valid and not expired returns the cached
    ///   handle unchanged: concurrent lookups of one region then share it.
    /// - Otherwise every overlapping entry (and the old version of the same
    ///   id) is dropped and invalidated with [`InvalidReason::Other`], so
    ///   operations still holding them notice; the new region gets a fresh TTL.
    /// - If the old version of the same region was invalidated for
    ///   [`InvalidReason::NoLeader`], the new one starts at the peer after the
    ///   old leader instead of the given leader: PD's leader may be stale
    ///   while the region has no leader (client-go's joint-consensus workaround).
    pub fn insert(
        &self,
        meta: metapb::Region,
        leader: Option<metapb::Peer>,
        now: Instant,
    ) -> Result<RegionRef, InsertError> {
        let region = Region::new(meta, leader.as_ref())?;
        let ver = region.ver;
        let (region, dropped) = {
            let mut index = self.write();
            let same_id = index.get_id(ver.id).cloned();
            if let Some(old) = &same_id
                && (old.ver.version > ver.version || old.ver.conf_ver > ver.conf_ver)
            {
                return Err(InsertError::Stale { offered: ver, cached: old.ver });
            }
            // The region as cached and still live (a concurrent lookup
            // loaded it too): the cached handle stays, so calls holding it
            // go on with it instead of finding it invalidated by an
            // identical copy and re-locating, whose reload would invalidate
            // the others' handles in turn. An expired entry is replaced: its
            // delayed reload wants fresh store-epoch captures.
            if let Some(old) = &same_id
                && old.ver == ver
                && old.start == region.start
                && old.end == region.end
                && old.peers == region.peers
                && old.leader_index() == region.leader_index()
                && !old.is_invalidated()
                && old.expires_at() > now
            {
                return Ok(old.clone());
            }
            let mut dropped = index.overlapping(&region.start, &region.end);
            if let Some(newer) = dropped.iter().find(|r| r.ver.version > ver.version) {
                return Err(InsertError::Stale { offered: ver, cached: newer.ver });
            }
            if let Some(old) = same_id {
                if old.invalid_reason() == Some(InvalidReason::NoLeader) {
                    let next = (old.leader_index() + 1) % region.peers().len();
                    // `next < peers.len()`, which fits a u32 (checked in `Region::new`).
                    region.leader.store(next as u32, Ordering::Release);
                }
                if !dropped.iter().any(|r| Arc::ptr_eq(r, &old)) {
                    dropped.push(old);
                }
            }
            for r in &dropped {
                index.remove(r);
            }
            region.expires_at.store(self.ttl.next_deadline(now), Ordering::Release);
            let region = Arc::new(region);
            index.insert(region.clone());
            (region, dropped)
        };
        // Outside the lock: only atomics, but nothing needs the lock for them.
        for r in &dropped {
            r.invalidate(InvalidReason::Other);
        }
        Ok(region)
    }

    /// Invalidates the cached region `ver` (client-go's
    /// `InvalidateCachedRegionWithReason`). Does nothing if the cache holds
    /// another version of it, or nothing at all. An operation that holds the
    /// [`RegionRef`] can call [`Region::invalidate`] directly instead.
    pub fn invalidate(&self, ver: RegionVerId, reason: InvalidReason) {
        if let Some(r) = self.get_exact(ver) {
            r.invalidate(reason);
        }
    }

    /// Applies a `NotLeader` hint (client-go's `UpdateLeader`): makes the peer
    /// on `leader_store_id` the leader of region `ver` and returns true. If the
    /// region has no peer on that store, the cached region is out of date: it
    /// is invalidated ([`InvalidReason::StoreNotFound`]) and false is returned.
    /// Also false if `ver` is no longer cached.
    pub fn update_leader(&self, ver: RegionVerId, leader_store_id: u64) -> bool {
        let Some(r) = self.get_exact(ver) else { return false };
        if r.switch_leader_to_store(leader_store_id) {
            true
        } else {
            r.invalidate(InvalidReason::StoreNotFound);
            false
        }
    }

    /// Handles `EpochNotMatch` from `responding_store` for a request stamped
    /// with `ver` (client-go's `OnRegionEpochNotMatch`); `current_regions`
    /// are TiKV's regions, keys already decoded by the caller.
    ///
    /// - No regions: invalidate `ver` ([`InvalidReason::EpochNotMatch`]),
    ///   answer [`EpochNotMatchAction::BackoffAndRelocate`].
    /// - TiKV's copy of the same region is older than `ver` (smaller
    ///   `conf_ver` or `version`): change nothing, answer
    ///   [`EpochNotMatchAction::BackoffAndRetry`].
    /// - Otherwise cache every region (leader: the peer on
    ///   `responding_store`, since that store answered with the region's
    ///   current epoch), invalidate `ver` unless it is among them, answer
    ///   [`EpochNotMatchAction::RelocateNow`]. Malformed or stale regions in
    ///   the list are skipped: one bad entry must not stop the others.
    pub fn on_epoch_not_match(
        &self,
        ver: RegionVerId,
        current_regions: Vec<metapb::Region>,
        responding_store: u64,
        now: Instant,
    ) -> EpochNotMatchAction {
        if current_regions.is_empty() {
            self.invalidate(ver, InvalidReason::EpochNotMatch);
            return EpochNotMatchAction::BackoffAndRelocate;
        }
        let tikv_behind = current_regions.iter().any(|m| {
            let theirs = RegionVerId::of(m);
            m.id == ver.id && (theirs.conf_ver < ver.conf_ver || theirs.version < ver.version)
        });
        if tikv_behind {
            return EpochNotMatchAction::BackoffAndRetry;
        }
        if !current_regions.iter().any(|m| RegionVerId::of(m) == ver) {
            // Before inserting, so the reason recorded is EpochNotMatch rather
            // than the Other that replacement would give.
            self.invalidate(ver, InvalidReason::EpochNotMatch);
        }
        for meta in current_regions {
            let leader = meta.peers.iter().find(|p| p.store_id == responding_store).cloned();
            // Refused entries are skipped on purpose (see above).
            let _ = self.insert(meta, leader, now);
        }
        EpochNotMatchAction::RelocateNow
    }

    /// Groups `keys` by cached region in one pass: a key is compared with the
    /// current region's bounds and the cache is searched (log of the number
    /// of regions) only when a key falls outside it. Stops at the first key
    /// with no valid cached region and returns it and the rest in
    /// [`GroupResult::uncovered`].
    ///
    /// Keys should be sorted: unsorted keys are grouped correctly, but a
    /// region may then appear in several groups.
    pub fn group_keys_by_region<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        now: Instant,
    ) -> GroupResult<K> {
        let mut groups: Vec<RegionGroup<K>> = Vec::new();
        let mut keys = keys.into_iter();
        while let Some(key) = keys.next() {
            if let Some(g) = groups.last_mut()
                && g.region.contains(key.as_ref())
            {
                g.keys.push(key);
                continue;
            }
            match self.locate_key(key.as_ref(), now) {
                Some(region) => groups.push(RegionGroup { region, keys: vec![key] }),
                None => {
                    let mut uncovered = vec![key];
                    uncovered.extend(keys);
                    return GroupResult { groups, uncovered };
                }
            }
        }
        GroupResult { groups, uncovered: Vec::new() }
    }

    /// Splits `range` into per-region pieces, each clamped to its region's
    /// bounds, in key order. Stops at the first key with no valid cached
    /// region and returns the rest of the range in
    /// [`RangeGroupResult::uncovered`]. An empty range gives no pieces.
    pub fn group_ranges_by_region(&self, range: &KeyRange, now: Instant) -> RangeGroupResult {
        let mut ranges = Vec::new();
        if range.is_empty() {
            return RangeGroupResult { ranges, uncovered: None };
        }
        let mut cursor = range.start.clone();
        // One walk along the index per batch (client-go's batched B-tree
        // visit, cg#1410) instead of one search per region.
        loop {
            let index = self.read();
            let mut entries = index.by_start.iter_from_le(cursor.as_bytes());
            // True when the previous region's end is known to be the next start.
            let mut adjacent = false;
            for _ in 0..WALK_BATCH {
                let (region, joined) = match entries.next() {
                    Some((r, joined))
                        if (adjacent || r.contains(cursor.as_bytes())) && self.usable(r, now) =>
                    {
                        (r, joined)
                    }
                    _ => {
                        let uncovered = KeyRange { start: cursor, end: range.end.clone() };
                        return RangeGroupResult { ranges, uncovered: Some(uncovered) };
                    }
                };
                // The piece ends at whichever of the two ends comes first.
                let last =
                    region.end.is_empty() || (!range.end.is_empty() && range.end <= region.end);
                let end = if last { range.end.clone() } else { region.end.clone() };
                ranges.push((region.clone(), KeyRange { start: cursor, end: end.clone() }));
                if last {
                    return RangeGroupResult { ranges, uncovered: None };
                }
                cursor = end;
                // Joined: the next entry starts at `cursor`, so it holds it.
                adjacent = joined;
            }
        }
    }

    /// Drops entries that are invalidated or whose TTL passed at `now`
    /// (client-go's GC round, done in one pass here). Returns how many.
    pub fn evict_expired(&self, now: Instant) -> usize {
        let now_ns = now.as_nanos();
        let mut index = self.write();
        let dead: Vec<RegionRef> = index
            .by_start
            .iter()
            .map(|(r, _)| r)
            .filter(|r| r.is_invalidated() || r.expires_at.load(Ordering::Acquire) < now_ns)
            .cloned()
            .collect();
        for r in &dead {
            index.remove(r);
        }
        dead.len()
    }

    /// Number of cached entries, including invalidated or expired ones not
    /// yet replaced or evicted.
    pub fn len(&self) -> usize {
        self.read().by_start.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.read().by_start.len() == 0
    }

    /// Drops every entry. Handles held by operations stay usable: they fail
    /// at TiKV with a region error and relocate.
    pub fn clear(&self) {
        *self.write() = Index::default();
    }

    /// Every cached entry in key order (valid or not), for diagnostics.
    pub fn snapshot(&self) -> Vec<RegionRef> {
        self.read().by_start.iter().map(|(r, _)| r.clone()).collect()
    }
}

#[cfg(test)]
impl RegionCache {
    /// Panics if the two indexes disagree, cached ranges overlap, or a
    /// joined bit is wrong.
    pub(super) fn check_invariants(&self) {
        let index = self.read();
        index.by_start.check();
        assert_eq!(index.by_start.len(), index.by_id.len(), "one entry per id");
        let entries: Vec<_> = index.by_start.iter().collect();
        for (i, (r, joined)) in entries.iter().enumerate() {
            assert!(index.get_id(r.ver.id).is_some_and(|x| Arc::ptr_eq(x, r)));
            match entries.get(i + 1) {
                Some((next, _)) => {
                    assert!(!r.end.is_empty() && r.end <= next.start, "{r:?} overlaps {next:?}");
                    assert_eq!(*joined, r.end == next.start, "joined bit of {r:?}");
                }
                None => assert_eq!(*joined, r.end.is_empty(), "joined bit of {r:?}"),
            }
        }
    }
}

impl std::fmt::Debug for RegionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}
