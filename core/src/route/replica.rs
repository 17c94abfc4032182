//! The replica selector: which peer of a region each attempt of a
//! [`RegionCall`](super::sender::RegionCall) goes to (client-go's
//! `replicaSelector`, `internal/locate/replica_selector.go`).
//!
//! One selector lives as long as one call on one cached region. It keeps,
//! per peer, the attempts made, the time they took and what the peer
//! answered (flags), and decides from them:
//!
//! - **leader reads** ([`ReplicaReadType::Leader`]) go to the cached leader
//!   while it is a candidate (reachable, fewer than 10 attempts and 50 s,
//!   no `NotLeader` or deadline answer, not suspected of having lost its
//!   leadership); otherwise followers are tried once each *with leader
//!   semantics*, so that one of them names the new leader;
//! - **replica reads** (follower, mixed, learner, prefer-leader) score every
//!   candidate peer (not slow, labels match, preferred leader, normal peer,
//!   not attempted: high bit to low) and pick the best, at random among
//!   ties; `replica_read` is set only when the target is not the leader;
//! - peers on TiFlash stores are never chosen: TiKV requests go to TiKV
//!   stores only (client-go keeps separate access lists for the two).
//!
//! With a busy threshold (load-based replica read), a leader read whose
//! leader's store reported a read queue longer than the threshold goes to
//! an idle follower as a replica read instead.
//!
//! A **stale read** ([`ReplicaRead::stale`]) is a mixed read whose first
//! attempt carries `Context.stale_read`: the best replica (labels matched)
//! serves it from its own data if its safe ts has reached the read ts.
//! Otherwise it answers `DataIsNotReady`, and, as client-go's
//! `nextForReplicaReadMixed` does, the second attempt is a normal read on
//! the leader and later ones are replica reads (a follower that was not
//! ready gets one more try), unless the leader could not serve (a deadline
//! or busy answer), in which case they stay stale reads.
//!
//! Store health ([`crate::region::StoreHealth`]) shapes every pick, as in
//! client-go: a replica whose store is unreachable, or whose store's epoch
//! moved since the region captured it (a send there failed), is no
//! candidate; a leader is a candidate only while its store is reachable. A
//! send failure is followed by a liveness probe of the store, as client-go
//! probes synchronously; one not answered `SERVING` marks the store
//! unreachable and bumps its epoch ([`ReplicaSelector::on_send_failure`]),
//! so every region
//! cached before skips that store until it is loaded again, which a stale
//! replica on a reachable store (or a stale leader) asks for by expiring
//! the region. The background probes ([`crate::route::store_health`]) make
//! the store reachable again once it answers. A slow store (slow score at
//! 80 or more) loses the *not slow* score bit, and prefer-leader reads do
//! not consider slow followers at all nor prefer a slow leader.
//!
//! With **forwarding** on ([`ReplicaSelector::set_forwarding`], client-go's
//! `EnableForwarding`), a leader read or write whose leader's store is not
//! reachable from the client, while no peer said it lost the leadership,
//! still goes to the leader, through a reachable follower's store that
//! forwards it (client-go `ReplicaSelectLeaderWithProxyStrategy`; TiKV
//! reads the `tikv-forwarded-host` metadata). The proxy that served last
//! is remembered on the region and tried first by the next calls; each
//! other follower serves as proxy once per call; once none is left the
//! leader's store epoch is bumped and the region reloaded. A failed send
//! to the leader then marks its store unreachable without giving up on
//! the leader, and a failed send through a proxy gives up on the proxy.

use smallvec::SmallVec;
use tikv_proto::metapb;

use crate::region::{InvalidReason, Liveness, Region, ResolveState, StoreTable};
use crate::rng::Rng;
use crate::time::{Duration, Instant};

/// Where a read may be served (client-go `kv.ReplicaReadType`). Writes
/// always go to the leader whatever the read type.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReplicaReadType {
    /// The leader only (TiKV's default).
    #[default]
    Leader,
    /// Followers (and learners); the leader only when no follower is left.
    Follower,
    /// Leader and followers alike, at random.
    Mixed,
    /// Learners; voters only when no learner is left.
    Learner,
    /// The leader unless it is slow, else a follower.
    PreferLeader,
}

impl ReplicaReadType {
    /// True for every type but [`ReplicaReadType::Leader`].
    pub fn is_follower_read(self) -> bool {
        self != ReplicaReadType::Leader
    }
}

/// How a read chooses its replica: the read type and the store labels to
/// prefer (client-go's `WithMatchLabels`: a store matches when it carries
/// every one of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaRead {
    /// The read type.
    pub read_type: ReplicaReadType,
    /// Labels a preferred store carries (`zone`, `host`, ...); empty: no
    /// preference.
    pub labels: Vec<metapb::StoreLabel>,
    /// Stores to prefer, by id (client-go `WithMatchStores`); a store
    /// matches when it is one of them and carries the labels. Empty: no
    /// preference.
    pub store_ids: Vec<u64>,
    /// Load-based replica read (client-go `BusyThresholdMs`, TiDB's
    /// `tidb_load_based_replica_read_threshold`): a leader read tells TiKV
    /// to refuse it with `ServerIsBusy` when its read queue is longer than
    /// this, and goes to an idle follower when the leader's store said so
    /// recently. Zero: off.
    pub busy_threshold: Duration,
    /// A stale read (client-go `EnableStaleWithMixedReplicaRead`): the
    /// first attempt carries `Context.stale_read` and goes to the best
    /// replica, which serves the snapshot read at its ts from its own data
    /// when its safe ts has reached it. Only transactional snapshot reads
    /// (`Get`, `BatchGet`, `Scan`) are sent stale; set with
    /// [`ReplicaRead::stale`].
    pub stale_read: bool,
}

impl ReplicaRead {
    /// Leader reads, the default.
    pub fn leader() -> ReplicaRead {
        ReplicaRead::default()
    }

    /// Reads of `read_type` without label preference.
    pub fn of(read_type: ReplicaReadType) -> ReplicaRead {
        ReplicaRead { read_type, ..ReplicaRead::default() }
    }

    /// Stale reads: the read type becomes [`ReplicaReadType::Mixed`] and
    /// the first attempt carries `Context.stale_read` (client-go
    /// `EnableStaleWithMixedReplicaRead`); labels given before or after
    /// pick the replica to prefer.
    pub fn stale() -> ReplicaRead {
        ReplicaRead {
            read_type: ReplicaReadType::Mixed,
            stale_read: true,
            ..ReplicaRead::default()
        }
    }

    /// Moves leader reads to idle followers while the leader's read queue
    /// is longer than `threshold` (see [`ReplicaRead::busy_threshold`]).
    pub fn with_busy_threshold(mut self, threshold: Duration) -> ReplicaRead {
        self.busy_threshold = threshold;
        self
    }

    /// Prefers stores carrying label `key=value` (in addition to any
    /// label given before).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> ReplicaRead {
        self.labels.push(metapb::StoreLabel { key: key.into(), value: value.into() });
        self
    }

    /// Prefers the store with id `store_id` (with any given before; see
    /// [`ReplicaRead::store_ids`]).
    pub fn with_store(mut self, store_id: u64) -> ReplicaRead {
        self.store_ids.push(store_id);
        self
    }
}

/// client-go's `maxReplicaAttempt`: attempts on the leader before the
/// selector gives up on it.
const MAX_REPLICA_ATTEMPTS: u32 = 10;
/// client-go's `maxReplicaAttemptTime`: time spent on the leader's attempts
/// before the selector gives up on it (two 30 s read timeouts exceed it).
const MAX_REPLICA_ATTEMPT_TIME: Duration = Duration::from_secs(50);
/// client-go's `leaderBusyProbeThreshold`: `ServerIsBusy` answers without
/// an estimated wait from the cached leader after which a follower is
/// probed with a leader read (tikv/client-go#2028: a wedged read pool
/// rejects before raft, so the store never says it lost its leadership).
const LEADER_BUSY_PROBE_THRESHOLD: u32 = 2;

/// What a peer answered within this call (client-go's replica flags).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct Flags(u8);

impl Flags {
    /// A read with a short, configurable timeout ran out of time there.
    const DEADLINE: u8 = 1;
    /// A stale read found its safe ts behind (`DataIsNotReady`).
    const DATA_NOT_READY: u8 = 1 << 1;
    /// It answered `NotLeader`.
    const NOT_LEADER: u8 = 1 << 2;
    /// It answered `ServerIsBusy` and the call moved on without sleeping.
    const SERVER_BUSY: u8 = 1 << 3;
    /// The cached leader kept answering `ServerIsBusy` without a wait.
    const SUSPECT_NOT_LEADER: u8 = 1 << 4;
    /// A send to it failed: the stand-in for client-go's stale store epoch.
    const UNREACHABLE: u8 = 1 << 5;
    /// Its store is a TiFlash store or removed from the cluster: never a
    /// target of a TiKV request (client-go builds its TiKV access list
    /// without them).
    const EXCLUDED: u8 = 1 << 6;

    fn has(self, f: u8) -> bool {
        self.0 & f != 0
    }
}

/// What the store table said about a peer's store at the last pick.
#[derive(Copy, Clone, Debug)]
struct StoreView {
    /// The store's epoch moved since the region captured it (client-go
    /// `isEpochStale`).
    epoch_stale: bool,
    liveness: Liveness,
    slow: bool,
}

impl Default for StoreView {
    fn default() -> StoreView {
        StoreView { epoch_stale: false, liveness: Liveness::Reachable, slow: false }
    }
}

/// The selector's record of one peer (client-go's `replica`).
#[derive(Clone, Debug, Default)]
struct Replica {
    attempts: u32,
    attempted_time: Duration,
    flags: Flags,
    store: StoreView,
}

impl Replica {
    fn is_exhausted(&self, max_attempts: u32, max_time: Option<Duration>) -> bool {
        self.attempts >= max_attempts || max_time.is_some_and(|t| self.attempted_time >= t)
    }

    fn has(&self, f: u8) -> bool {
        self.flags.has(f)
    }

    fn add(&mut self, f: u8) {
        self.flags.0 |= f;
    }

    fn remove(&mut self, f: u8) {
        self.flags.0 &= !f;
    }
}

/// The score bits of client-go's `storeSelectionScore`, high to low.
mod score {
    pub(super) const NOT_SLOW: u8 = 1 << 4;
    pub(super) const LABEL_MATCHES: u8 = 1 << 3;
    pub(super) const PREFER_LEADER: u8 = 1 << 2;
    pub(super) const NORMAL_PEER: u8 = 1 << 1;
    pub(super) const NOT_ATTEMPTED: u8 = 1;
}

/// The knobs of client-go's `ReplicaSelectMixedStrategy`.
#[derive(Copy, Clone, Debug, Default)]
struct Mixed {
    /// The leader scores as a normal peer (mixed, prefer-leader).
    try_leader: bool,
    /// The leader scores above every follower (prefer-leader).
    prefer_leader: bool,
    /// Only learners score as normal peers (learner reads).
    learner_only: bool,
    /// Match the selector's labels.
    match_labels: bool,
    /// Only idle followers: stores whose read queue is within this and
    /// that did not answer `ServerIsBusy` (zero: any).
    busy_threshold: Duration,
}

/// What the selector decided for the next attempt.
#[derive(Clone, PartialEq, Eq)]
pub enum Pick {
    /// Send to the peer at this index of the region's peers.
    Send {
        /// Index into [`Region::peers`].
        peer: usize,
        /// Set `Context.replica_read` (the target is not the leader and
        /// the request is served as a replica read).
        replica_read: bool,
        /// Set `Context.stale_read`: the target serves the read from its
        /// own data at the read ts, or answers `DataIsNotReady`.
        stale_read: bool,
        /// Send to this peer's store instead, which forwards the request
        /// to the target's store (`tikv-forwarded-host`).
        proxy: Option<usize>,
    },
    /// The selector needs to know this store (its address, labels and
    /// engine) before it can decide: load it from PD and ask again.
    Resolve(u64),
    /// No candidate is left. The region is invalidated unless a deadline
    /// answer was seen (then only this call gives up, as client-go's fast
    /// retry without invalidation).
    Exhausted,
}

/// A pick without a proxy prints without one: the proxy shows only where
/// forwarding happens.
impl std::fmt::Debug for Pick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pick::Send { peer, replica_read, stale_read, proxy } => {
                let mut d = f.debug_struct("Send");
                d.field("peer", peer)
                    .field("replica_read", replica_read)
                    .field("stale_read", stale_read);
                if let Some(p) = proxy {
                    d.field("proxy", p);
                }
                d.finish()
            }
            Pick::Resolve(store) => f.debug_tuple("Resolve").field(store).finish(),
            Pick::Exhausted => f.write_str("Exhausted"),
        }
    }
}

/// What to do after a `NotLeader` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotLeaderStep {
    /// No leader named: back off `BoRegionScheduling`, then pick again.
    Backoff,
    /// Retry at once; `Some(store)`: the cached leader moved to this store
    /// (the cache's copy should follow).
    Retry(Option<u64>),
}

/// What to do after a `ServerIsBusy` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusyStep {
    /// Try another replica at once; the `BoTiKVServerBusy` sleep is
    /// deferred until the call returns to this store or runs out of
    /// candidates.
    FastRetry,
    /// Back off `BoTiKVServerBusy` and retry (a leader read whose leader is
    /// still a good candidate).
    Backoff,
}

/// The replica selector of one call (client-go `replicaSelector`).
#[derive(Clone, Debug)]
pub struct ReplicaSelector {
    read_type: ReplicaReadType,
    /// Answers' latencies feed the stores' slow scores (prefer-leader
    /// reads).
    records_latency: bool,
    /// The call is a stale read (client-go's `isStaleRead`).
    stale_read: bool,
    /// Whether the request carries `Context.stale_read` now: client-go
    /// keeps it on the request and changes it only where a pick decides
    /// (a leader read keeps what the last pick set).
    stale_flag: bool,
    /// Calls of [`ReplicaSelector::next`] so far (client-go's `attempts`).
    attempts: u32,
    labels: Vec<metapb::StoreLabel>,
    store_ids: Vec<u64>,
    /// Zero once no idle replica was left (client-go drops the threshold
    /// and reads from the leader then).
    busy_threshold: Duration,
    /// One per peer of the region, same order.
    replicas: SmallVec<[Replica; 3]>,
    /// The peer of the last [`Pick::Send`].
    target: Option<usize>,
    /// The peer the last [`Pick::Send`] goes through to reach the target
    /// (client-go's `proxy`).
    proxy: Option<usize>,
    /// Unreachable leaders are reached through a follower's store.
    forwarding: bool,
    /// `ServerIsBusy` answers without a wait from the cached leader, the
    /// peer id they were counted for, and whether a probe was fired.
    leader_busy_count: u32,
    leader_busy_peer: u64,
    leader_busy_probed: bool,
    /// Stores with a deferred `BoTiKVServerBusy` sleep (client-go's
    /// `pendingBackoffs`, which only ever hold that kind).
    pending_busy: SmallVec<[u64; 2]>,
    /// The region was invalidated by `RegionNotFound` from a follower, but
    /// this call may still try the leader once.
    retry_invalidated: bool,
    rng: Rng,
}

impl ReplicaSelector {
    /// A selector for a call on `region`, reading as `read` says; `rng`
    /// breaks ties between equally good replicas.
    pub fn new(region: &Region, read: &ReplicaRead, rng: Rng) -> ReplicaSelector {
        ReplicaSelector {
            read_type: read.read_type,
            records_latency: read.read_type == ReplicaReadType::PreferLeader,
            stale_read: read.stale_read,
            stale_flag: read.stale_read,
            attempts: 0,
            labels: read.labels.clone(),
            store_ids: read.store_ids.clone(),
            busy_threshold: read.busy_threshold,
            replicas: region.peers().iter().map(|_| Replica::default()).collect(),
            target: None,
            proxy: None,
            forwarding: false,
            leader_busy_count: 0,
            leader_busy_peer: 0,
            leader_busy_probed: false,
            pending_busy: SmallVec::new(),
            retry_invalidated: false,
            rng,
        }
    }

    /// Reads as `read` says from now on.
    pub fn set_read(&mut self, read: &ReplicaRead) {
        self.read_type = read.read_type;
        self.records_latency = read.read_type == ReplicaReadType::PreferLeader;
        self.stale_read = read.stale_read;
        self.stale_flag = read.stale_read;
        self.labels.clone_from(&read.labels);
        self.store_ids.clone_from(&read.store_ids);
        self.busy_threshold = read.busy_threshold;
    }

    /// Reaches leaders the client cannot reach through a follower's store
    /// (client-go `EnableForwarding`); off by default.
    pub fn set_forwarding(&mut self, on: bool) {
        self.forwarding = on;
    }

    /// The busy threshold the next request carries
    /// (`Context.busy_threshold_ms`); zero once dropped.
    pub fn busy_threshold(&self) -> Duration {
        self.busy_threshold
    }

    /// The read type now in force: a replica read falls back to leader
    /// reads once a `NotLeader` names a usable leader, a `RegionNotFound`
    /// comes from a follower, or a follower is in flashback.
    pub fn read_type(&self) -> ReplicaReadType {
        self.read_type
    }

    /// The peer index of the last [`Pick::Send`].
    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// Chooses the next attempt's peer (client-go `replicaSelector.next`);
    /// `now` ages the read queues stores reported.
    pub fn next(&mut self, region: &Region, stores: &StoreTable, now: Instant) -> Pick {
        if self.retry_invalidated {
            self.retry_invalidated = false;
        } else if region.is_invalidated() {
            return Pick::Exhausted;
        }
        // A store lookup is no attempt: the pick is made again once the
        // store is known.
        self.attempts += 1;
        let pick = self.pick(region, stores, now);
        if matches!(pick, Pick::Resolve(_)) {
            self.attempts -= 1;
        }
        pick
    }

    fn pick(&mut self, region: &Region, stores: &StoreTable, now: Instant) -> Pick {
        self.target = None;
        self.proxy = None;
        self.observe_stores(region, stores);
        // A replica read scores every peer by its store, so every store
        // must be known first; a leader read looks up only the store it
        // picks (one lookup on the hot path).
        if self.read_type.is_follower_read() {
            for (i, peer) in region.peers().iter().enumerate() {
                match stores.get(peer.store_id) {
                    Some(store) if store.is_tiflash() || store.is_tombstone() => {
                        self.replicas[i].add(Flags::EXCLUDED)
                    }
                    Some(_) => {}
                    None if !self.replicas[i].has(Flags::EXCLUDED) => {
                        return Pick::Resolve(peer.store_id);
                    }
                    None => {}
                }
            }
        }
        // Each round either decides or excludes one more peer found on a
        // TiFlash or removed store, so this ends.
        loop {
            let picked = match self.read_type {
                ReplicaReadType::Leader => self.next_for_leader_read(region, stores, now),
                _ => self.next_for_replica_read(region, stores, now),
            };
            let Some((peer, replica_read)) = picked else {
                return Pick::Exhausted;
            };
            let proxy = self.proxy;
            let mut usable = true;
            for i in std::iter::once(peer).chain(proxy) {
                let store_id = region.peers()[i].store_id;
                match stores.get(store_id) {
                    None => return Pick::Resolve(store_id),
                    Some(store) if store.is_tiflash() || store.is_tombstone() => {
                        self.replicas[i].add(Flags::EXCLUDED);
                        usable = false;
                    }
                    Some(_) => {}
                }
            }
            if usable {
                // client-go `buildRPCContext` counts an attempt on both.
                self.replicas[peer].attempts += 1;
                if let Some(p) = proxy {
                    self.replicas[p].attempts += 1;
                }
                self.target = Some(peer);
                return Pick::Send { peer, replica_read, stale_read: self.stale_flag, proxy };
            }
            self.proxy = None;
        }
    }

    /// Reads each peer's store health for this pick. A stale replica on a
    /// reachable, resolved store, or a stale leader, asks for the region to
    /// be loaded again at its next lookup (client-go's delayed reload); this
    /// call goes on with it.
    fn observe_stores(&mut self, region: &Region, stores: &StoreTable) {
        let leader = region.leader_index();
        let mut reload = false;
        for (i, peer) in region.peers().iter().enumerate() {
            let Some(store) = stores.get_any(peer.store_id) else {
                self.replicas[i].store = StoreView::default();
                continue;
            };
            let health = store.health();
            let epoch = health.epoch();
            let captured = region.capture_store_epoch(i, epoch).unwrap_or(epoch);
            let view = StoreView {
                epoch_stale: captured != epoch,
                liveness: health.liveness(),
                slow: health.is_slow(),
            };
            if view.epoch_stale
                && ((view.liveness == Liveness::Reachable
                    && store.resolve_state() == ResolveState::Resolved)
                    || i == leader)
            {
                reload = true;
            }
            self.replicas[i].store = view;
        }
        if reload {
            region.expire();
        }
    }

    /// client-go `nextForReplicaReadLeader`.
    fn next_for_leader_read(
        &mut self,
        region: &Region,
        stores: &StoreTable,
        now: Instant,
    ) -> Option<(usize, bool)> {
        let leader = region.leader_index();
        if self.forwarding {
            let r = &self.replicas[leader];
            if r.store.liveness == Liveness::Reachable || r.has(Flags::NOT_LEADER) {
                region.set_proxy_index(None);
            } else {
                self.proxy = Some(self.pick_proxy(region, stores, leader)?);
                return Some((leader, false));
            }
        }
        if self.is_leader_candidate(leader) && !self.replicas[leader].has(Flags::SUSPECT_NOT_LEADER)
        {
            if !self.busy_threshold.is_zero() {
                let leader_store = region.peers()[leader].store_id;
                let queue =
                    stores.get(leader_store).map_or(Duration::ZERO, |s| s.estimated_wait(now));
                if queue > self.busy_threshold || self.replicas[leader].has(Flags::SERVER_BUSY) {
                    // The leader is busy: an idle replica serves the read.
                    let idle = Mixed { busy_threshold: self.busy_threshold, ..Mixed::default() };
                    if let Some(target) = self.mixed(region, stores, now, idle) {
                        return Some((target, true));
                    }
                    // Every replica is busy: the leader it is, without
                    // the threshold.
                    self.busy_threshold = Duration::ZERO;
                }
            }
            return Some((leader, false));
        }
        // Followers with leader semantics: one of them names the leader.
        let target = self.mixed(region, stores, now, Mixed::default())?;
        // A read whose leader ran out of its short timeout is served by the
        // follower itself rather than bounced back.
        let replica_read = target != leader && self.replicas[leader].has(Flags::DEADLINE);
        if replica_read {
            self.stale_flag = false;
        }
        Some((target, replica_read))
    }

    /// client-go `ReplicaSelectLeaderWithProxyStrategy.next`: the proxy
    /// that served last if it is still a candidate, else the first one in
    /// peer order. With none left, the leader's store is taken for failed
    /// (its epoch bumped from the one the region captured) and the region
    /// is reloaded at its next lookup: `None`, the call ends.
    fn pick_proxy(&mut self, region: &Region, stores: &StoreTable, leader: usize) -> Option<usize> {
        let remembered = region.proxy_index().filter(|&i| self.is_proxy_candidate(i, leader));
        let proxy = remembered
            .or_else(|| (0..self.replicas.len()).find(|&i| self.is_proxy_candidate(i, leader)));
        if proxy.is_none() {
            if let Some(store) = stores.get_any(region.peers()[leader].store_id) {
                let health = store.health();
                let captured = region.capture_store_epoch(leader, health.epoch()).unwrap_or(0);
                health.on_send_failure(captured);
            }
            region.set_proxy_index(None);
            region.expire();
        }
        proxy
    }

    /// client-go `ReplicaSelectLeaderWithProxyStrategy.isCandidate`: a
    /// follower not tried in this call whose store is reachable and whose
    /// epoch has not moved (and, here, not a TiFlash or removed store).
    fn is_proxy_candidate(&self, i: usize, leader: usize) -> bool {
        let r = &self.replicas[i];
        i != leader
            && r.attempts == 0
            && r.store.liveness == Liveness::Reachable
            && !r.store.epoch_stale
            && !r.has(Flags::UNREACHABLE)
            && !r.has(Flags::EXCLUDED)
    }

    /// client-go `nextForReplicaReadMixed`.
    fn next_for_replica_read(
        &mut self,
        region: &Region,
        stores: &StoreTable,
        now: Instant,
    ) -> Option<(usize, bool)> {
        let leader = region.leader_index();
        // The second attempt of a stale read (the first was refused or
        // failed) is a normal read on the leader, unless the leader served
        // the first attempt itself.
        if self.stale_read
            && self.attempts == 2
            && self.is_leader_candidate(leader)
            && !self.replicas[leader].has(Flags::SUSPECT_NOT_LEADER)
            && !self.replicas[leader].is_exhausted(1, None)
        {
            self.stale_flag = false;
            return Some((leader, false));
        }
        let strategy = Mixed {
            try_leader: matches!(
                self.read_type,
                ReplicaReadType::Mixed | ReplicaReadType::PreferLeader
            ),
            prefer_leader: self.read_type == ReplicaReadType::PreferLeader,
            learner_only: self.read_type == ReplicaReadType::Learner,
            match_labels: true,
            busy_threshold: Duration::ZERO,
        };
        let target = self.mixed(region, stores, now, strategy)?;
        if !self.stale_read {
            return Some((target, target != leader));
        }
        // A retry, or a first pick on a replica that does not match the
        // labels, is a replica read once the leader has been tried and did
        // not fail for lack of time or capacity; otherwise a stale read.
        let peer = &region.peers()[target];
        let stale = !((self.attempts != 1
            || (target != leader && !self.store_matches(peer.store_id, stores)))
            && self.can_send_replica_read(leader));
        self.stale_flag = stale;
        Some((target, !stale))
    }

    /// client-go `ReplicaSelectMixedStrategy.canSendReplicaRead`: after a
    /// stale read, a replica read needs the leader tried and not failed by
    /// a deadline or a busy answer.
    fn can_send_replica_read(&self, leader: usize) -> bool {
        let r = &self.replicas[leader];
        !(r.attempts == 0 || r.has(Flags::DEADLINE) || r.has(Flags::SERVER_BUSY))
    }

    /// client-go `isLeaderCandidate`.
    fn is_leader_candidate(&self, leader: usize) -> bool {
        let r = &self.replicas[leader];
        !(r.has(Flags::UNREACHABLE)
            || r.store.liveness != Liveness::Reachable
            || r.store.epoch_stale
            || r.has(Flags::EXCLUDED)
            || r.is_exhausted(MAX_REPLICA_ATTEMPTS, Some(MAX_REPLICA_ATTEMPT_TIME))
            || r.has(Flags::DEADLINE)
            || r.has(Flags::NOT_LEADER))
    }

    /// client-go `ReplicaSelectMixedStrategy.next`: the best-scoring
    /// candidate, at random among ties.
    fn mixed(
        &mut self,
        region: &Region,
        stores: &StoreTable,
        now: Instant,
        s: Mixed,
    ) -> Option<usize> {
        let leader = region.leader_index();
        let mut best: SmallVec<[usize; 3]> = SmallVec::new();
        let mut best_score = 0u8;
        for (i, peer) in region.peers().iter().enumerate() {
            let is_leader = i == leader;
            if !self.is_candidate(i, is_leader) {
                continue;
            }
            // client-go keeps this for the old prefer-leader selector: a
            // slow follower is no candidate at all.
            if s.prefer_leader && !is_leader && self.replicas[i].store.slow {
                continue;
            }
            if !s.busy_threshold.is_zero()
                && (is_leader
                    || self.replicas[i].has(Flags::SERVER_BUSY)
                    || stores
                        .get(peer.store_id)
                        .is_some_and(|st| st.estimated_wait(now) > s.busy_threshold))
            {
                continue;
            }
            let score = self.score(i, peer, is_leader, stores, s);
            if best.is_empty() || score > best_score {
                best_score = score;
                best.clear();
                best.push(i);
            } else if score == best_score {
                best.push(i);
            }
        }
        match best.len() {
            0 => {}
            1 => return Some(best[0]),
            n => return Some(best[self.rng.gen_range(0, n as u64) as usize]),
        }
        // Looking for an idle replica only: none is no reason to reload.
        if !s.busy_threshold.is_zero() {
            return None;
        }
        // The leader was skipped only as a suspect and nobody else can be
        // probed: back to it, as client-go restores it rather than reload
        // the region for nothing.
        if self.replicas[leader].has(Flags::SUSPECT_NOT_LEADER) {
            self.replicas[leader].remove(Flags::SUSPECT_NOT_LEADER);
            if self.is_leader_candidate(leader) {
                return Some(leader);
            }
        }
        // After a deadline answer the call retries elsewhere without
        // reloading the region.
        if !self.replicas.iter().any(|r| r.has(Flags::DEADLINE)) {
            region.invalidate(InvalidReason::Other);
        }
        None
    }

    /// client-go `ReplicaSelectMixedStrategy.isCandidate`.
    fn is_candidate(&self, i: usize, is_leader: bool) -> bool {
        let r = &self.replicas[i];
        if r.has(Flags::UNREACHABLE)
            || r.has(Flags::EXCLUDED)
            || r.store.epoch_stale
            || r.store.liveness == Liveness::Unreachable
        {
            return false;
        }
        // A follower that was not ready for a stale read may serve the
        // replica read that follows.
        let max_attempts = if r.has(Flags::DATA_NOT_READY) && !is_leader { 2 } else { 1 };
        !r.is_exhausted(max_attempts, None)
    }

    /// client-go `ReplicaSelectMixedStrategy.calculateScore`.
    fn score(
        &self,
        i: usize,
        peer: &metapb::Peer,
        is_leader: bool,
        stores: &StoreTable,
        s: Mixed,
    ) -> u8 {
        let slow = self.replicas[i].store.slow;
        let mut score = if slow { 0 } else { score::NOT_SLOW };
        if !s.match_labels || self.store_matches(peer.store_id, stores) {
            score |= score::LABEL_MATCHES;
        }
        if is_leader {
            if s.prefer_leader {
                // Only a leader that is not slow is preferred.
                score |= if slow { score::NORMAL_PEER } else { score::PREFER_LEADER };
            } else if s.try_leader {
                // With labels to match, the leader wins among equally
                // matching replicas.
                score |=
                    if self.labels.is_empty() { score::NORMAL_PEER } else { score::PREFER_LEADER };
            }
        } else if !s.learner_only || peer.role == metapb::PeerRole::Learner as i32 {
            score |= score::NORMAL_PEER;
        }
        if self.replicas[i].attempts == 0 {
            score |= score::NOT_ATTEMPTED;
        }
        score
    }

    /// client-go `IsStoreMatch && IsLabelsMatch`: the store is one of the
    /// preferred ids (if any) and carries every label.
    fn store_matches(&self, store_id: u64, stores: &StoreTable) -> bool {
        if !self.store_ids.is_empty() && !self.store_ids.contains(&store_id) {
            return false;
        }
        if self.labels.is_empty() {
            return true;
        }
        let Some(store) = stores.get(store_id) else {
            return false;
        };
        self.labels.iter().all(|l| store.label(&l.key) == Some(l.value.as_str()))
    }

    /// How long the last attempt took (client-go `recordAttemptedTime`).
    pub fn record_attempt_time(&mut self, took: Duration) {
        if let Some(t) = self.target {
            let r = &mut self.replicas[t];
            r.attempted_time = r.attempted_time.saturating_add(took);
        }
    }

    /// A send to the target failed and the liveness probe of the store it
    /// went to did not answer `SERVING` (client-go `onSendFailure` when
    /// `checkLiveness` is not reachable, then `invalidateReplicaStore`):
    /// the peer is no candidate for the rest of the call, its store takes
    /// the probed `liveness` (the background probes take over), and the
    /// store's epoch is bumped from the one this region captured, which
    /// makes the store slow and every region cached before skip it.
    ///
    /// With forwarding on, a failed send straight to the leader of a leader
    /// read whose store is unreachable only marks it so: the next pick
    /// reaches it through a proxy (client-go returns early from
    /// `onSendFailure` so). A failed send through a proxy gives up on the
    /// proxy instead, and the region forgets it.
    pub fn on_send_failure(&mut self, region: &Region, stores: &StoreTable, liveness: Liveness) {
        let Some(t) = self.target else {
            return;
        };
        if self.forwarding
            && liveness == Liveness::Unreachable
            && self.proxy.is_none()
            && self.read_type == ReplicaReadType::Leader
            && t == region.leader_index()
            && region.peers().len() > 1
        {
            if let Some(store) = stores.get_any(region.peers()[t].store_id) {
                store.health().set_liveness(liveness);
            }
            return;
        }
        let t = match self.proxy {
            Some(p) => {
                if region.proxy_index() == Some(p) {
                    region.set_proxy_index(None);
                }
                p
            }
            None => t,
        };
        self.replicas[t].add(Flags::UNREACHABLE);
        let store_id = region.peers()[t].store_id;
        if let Some(store) = stores.get_any(store_id) {
            let health = store.health();
            health.set_liveness(liveness);
            let captured = region.capture_store_epoch(t, health.epoch()).unwrap_or(0);
            health.on_send_failure(captured);
        }
    }

    /// The target answered after `took`: recorded into its store's slow
    /// score for prefer-leader reads, as client-go records only those
    /// (`recordClientSideSlowScoreStat` in `sendReqToRegion`).
    pub fn record_latency(&self, region: &Region, stores: &StoreTable, took: Duration) {
        if self.records_latency
            && let Some(t) = self.target
            && let Some(store) = stores.get_any(region.peers()[t].store_id)
        {
            store.health().record_latency(took);
        }
    }

    /// A read with a short configurable timeout ran out of it on the
    /// target (client-go `onReadReqConfigurableTimeout`): retry another
    /// replica at once.
    pub fn on_deadline_exceeded(&mut self) {
        self.flag_target(Flags::DEADLINE);
    }

    /// The target answered `DataIsNotReady` (client-go `onDataIsNotReady`).
    pub fn on_data_is_not_ready(&mut self) {
        self.flag_target(Flags::DATA_NOT_READY);
    }

    fn flag_target(&mut self, f: u8) {
        if let Some(t) = self.target {
            self.replicas[t].add(f);
        }
    }

    /// The answer was a success: if it came from a peer that is not the
    /// cached leader and served the request as the leader (neither a
    /// replica read nor a stale read was sent), that peer is
    /// the leader now (client-go `onSendSuccess`). Returns its store when
    /// the cached leader moved.
    ///
    /// A request forwarded through a proxy makes the region remember the
    /// proxy for the next calls (client-go `setProxyStoreIdx`).
    pub fn on_success(&mut self, region: &Region, sent_as_replica_read: bool) -> Option<u64> {
        if self.proxy.is_some() {
            region.set_proxy_index(self.proxy);
        }
        let t = self.target?;
        if t == region.leader_index() || sent_as_replica_read {
            return None;
        }
        let store_id = region.peers()[t].store_id;
        region.switch_leader_to_store(store_id).then_some(store_id)
    }

    /// The target answered `NotLeader` naming `leader` (or nobody): client-go
    /// `onNotLeader`.
    pub fn on_not_leader(
        &mut self,
        region: &Region,
        leader: Option<&metapb::Peer>,
    ) -> NotLeaderStep {
        self.flag_target(Flags::NOT_LEADER);
        let Some(leader) = leader.filter(|l| l.store_id != 0) else {
            return NotLeaderStep::Backoff;
        };
        let Some(i) =
            region.peers().iter().position(|p| p.id == leader.id && p.store_id == leader.store_id)
        else {
            // The leader is not in the cached version: reload the region.
            region.invalidate(InvalidReason::StoreNotFound);
            return NotLeaderStep::Retry(None);
        };
        // A hibernated region elects no new leader until a follower hears
        // from a client: do not go back to an unreachable one.
        if self.replicas[i].has(Flags::UNREACHABLE) {
            return NotLeaderStep::Retry(None);
        }
        // client-go `onUpdateLeader`: one more chance for a replica already
        // worn out (each follower is tried once, so this cannot loop).
        let r = &mut self.replicas[i];
        if r.is_exhausted(MAX_REPLICA_ATTEMPTS, Some(MAX_REPLICA_ATTEMPT_TIME)) {
            r.attempts = MAX_REPLICA_ATTEMPTS - 1;
            r.attempted_time = Duration::ZERO;
        }
        r.remove(Flags::NOT_LEADER | Flags::SUSPECT_NOT_LEADER);
        region.switch_leader_to_store(leader.store_id);
        if self.is_leader_candidate(i) {
            self.read_type = ReplicaReadType::Leader;
        }
        NotLeaderStep::Retry(Some(leader.store_id))
    }

    /// The target answered `ServerIsBusy` with `estimated_wait_ms` at `now`:
    /// client-go `onServerIsBusy`. A wait estimate is kept on the store (the
    /// next reads with a busy threshold avoid it); without one the cached
    /// leader may become a suspect.
    pub fn on_server_is_busy(
        &mut self,
        region: &Region,
        stores: &StoreTable,
        estimated_wait_ms: u32,
        now: Instant,
    ) -> BusyStep {
        let leader = region.leader_index();
        if estimated_wait_ms == 0
            && let Some(t) = self.target
            && let Some(store) = stores.get_any(region.peers()[t].store_id)
        {
            // client-go `markAlreadySlow`: the next replica reads avoid it.
            store.health().mark_slow();
        }
        if estimated_wait_ms != 0 {
            if let Some(t) = self.target {
                if let Some(store) = stores.get(region.peers()[t].store_id) {
                    store.record_estimated_wait(estimated_wait_ms, now);
                }
                if !self.busy_threshold.is_zero() {
                    self.replicas[t].add(Flags::SERVER_BUSY);
                }
            }
        } else if self.read_type == ReplicaReadType::Leader
            && !self.stale_read
            && self.target == Some(leader)
            && !self.leader_busy_probed
        {
            let leader_peer = region.peers()[leader].id;
            if self.leader_busy_peer != leader_peer {
                self.leader_busy_peer = leader_peer;
                self.leader_busy_count = 0;
            }
            self.leader_busy_count += 1;
            if self.leader_busy_count >= LEADER_BUSY_PROBE_THRESHOLD {
                self.replicas[leader].add(Flags::SUSPECT_NOT_LEADER);
                self.leader_busy_probed = true;
            }
        }
        // client-go `canFastRetry`: a leader read whose leader is still a
        // good candidate sleeps and asks the leader again.
        let fast = self.read_type != ReplicaReadType::Leader
            || !self.is_leader_candidate(leader)
            || self.replicas[leader].has(Flags::SERVER_BUSY);
        if !fast {
            return BusyStep::Backoff;
        }
        if let Some(t) = self.target {
            let store_id = region.peers()[t].store_id;
            if !self.pending_busy.contains(&store_id) {
                self.pending_busy.push(store_id);
            }
            self.replicas[t].add(Flags::SERVER_BUSY);
        }
        BusyStep::FastRetry
    }

    /// The target answered `RegionNotFound` (client-go `onRegionNotFound`).
    /// True: retry on the leader once (the region is invalidated for every
    /// other request); false: the region is invalidated, re-locate.
    pub fn on_region_not_found(&mut self, region: &Region) -> bool {
        region.invalidate(InvalidReason::RegionNotFound);
        if self.replicas[region.leader_index()].attempts == 0 {
            self.read_type = ReplicaReadType::Leader;
            self.retry_invalidated = true;
            return true;
        }
        false
    }

    /// The target answered `FlashbackInProgress` (client-go
    /// `onFlashbackInProgress`): a replica read from a follower may retry
    /// on the leader.
    pub fn on_flashback_in_progress(
        &mut self,
        region: &Region,
        sent_as_replica_read: bool,
    ) -> bool {
        if sent_as_replica_read && self.target.is_some_and(|t| t != region.leader_index()) {
            self.read_type = ReplicaReadType::Leader;
            return true;
        }
        false
    }

    /// True once if the call deferred a `BoTiKVServerBusy` sleep for
    /// `store_id`: it sleeps before sending there again (client-go
    /// `backoffOnRetry`).
    pub fn take_pending_backoff(&mut self, store_id: u64) -> bool {
        let before = self.pending_busy.len();
        self.pending_busy.retain(|s| *s != store_id);
        self.pending_busy.len() != before
    }

    /// True if any sleep was deferred; clears them all (client-go
    /// `backoffOnNoCandidate` applies the largest, and there is one kind).
    pub fn take_any_pending_backoff(&mut self) -> bool {
        let any = !self.pending_busy.is_empty();
        self.pending_busy.clear();
        any
    }

    /// One line per peer: attempts, time, flags (for transcripts).
    pub fn describe(&self, region: &Region) -> String {
        let leader = region.leader_index();
        let mut out = format!("{:?}", self.read_type);
        if self.stale_read {
            out.push_str(if self.stale_flag { " stale" } else { " stale(off)" });
        }
        for (i, (peer, r)) in region.peers().iter().zip(&self.replicas).enumerate() {
            out.push_str(&format!(
                " | store{}{}{} attempts={}",
                peer.store_id,
                if i == leader { "(leader)" } else { "" },
                if peer.role == metapb::PeerRole::Learner as i32 { "(learner)" } else { "" },
                r.attempts
            ));
            for (f, name) in [
                (Flags::DEADLINE, "deadline"),
                (Flags::DATA_NOT_READY, "data-not-ready"),
                (Flags::NOT_LEADER, "not-leader"),
                (Flags::SERVER_BUSY, "busy"),
                (Flags::SUSPECT_NOT_LEADER, "suspect"),
                (Flags::UNREACHABLE, "unreachable"),
                (Flags::EXCLUDED, "excluded"),
            ] {
                if r.has(f) {
                    out.push(' ');
                    out.push_str(name);
                }
            }
            if r.store.epoch_stale {
                out.push_str(" epoch-stale");
            }
            match r.store.liveness {
                Liveness::Reachable => {}
                Liveness::Unreachable => out.push_str(" store-unreachable"),
                Liveness::Unknown => out.push_str(" store-liveness-unknown"),
            }
            if r.store.slow {
                out.push_str(" slow");
            }
        }
        if !self.pending_busy.is_empty() {
            out.push_str(&format!(" | pending busy sleeps {:?}", self.pending_busy));
        }
        if let Some(p) = region.proxy_index() {
            out.push_str(&format!(" | proxy store{}", region.peers()[p].store_id));
        }
        out
    }
}

#[cfg(test)]
mod tests;
