//! The admin commands a TiKV store applies to its regions when PD asks (or
//! the store itself decides): batch splits with ids PD allocated, conf
//! changes, leader transfers, and the region report a leader sends PD.
//! Used by the joined mode (`join`), where a real PD drives the topology;
//! the simulator's own PD mode changes topology through
//! [`Cluster::split`] / [`Cluster::transfer_leader`] instead.
//!
//! Each command follows raftstore: the epoch checks of
//! `admin_cmd_epoch_lookup` (conf changes check `conf_ver`, splits check
//! `version` as `validate_split_region` does, leader transfers check
//! nothing), `exec_batch_split` (the original region keeps the rightmost
//! range, every resulting region gets `version + count`),
//! `exec_change_peer` / `apply_conf_change` / `apply_leave_joint` (role
//! changes and `conf_ver` increments), and the proposal check that a leader
//! never removes or demotes itself. A refused command changes nothing and
//! comes back as a [`Refusal`] text for the log, as TiKV logs and drops a
//! failed admin command that PD sent.

use std::collections::BTreeMap;

use bytes::Bytes;
use tikv_proto::{errorpb, kvrpcpb, metapb, pdpb};

use crate::cluster::{FIRST_LEADER_TERM, FollowerReadBug, Region, State, Store, hex};
use crate::mvcc::LockType;
use crate::{Cluster, ClusterConfig};
use tikv_core::rpc::RpcError;
use tikv_core::time::Instant;

/// Why a store did not carry out an admin command (logged; PD times the
/// operator out, as it does when TiKV drops one).
pub(crate) type Refusal = String;

/// The store version a joined store registers with when none is given: a
/// plain semver, as PD derives the cluster version from the lowest store
/// version and refuses splits below 2.1.0.
pub const DEFAULT_STORE_VERSION: &str = "8.5.0";

/// raft-rs's `ConfChangeKind::confchange_kind`: how many changes a
/// `ChangePeerV2` carries decides how it is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConfChangeKind {
    /// One change (or a v1 `ChangePeer`): applied directly.
    Simple,
    /// Several changes: the region enters a joint configuration.
    EnterJoint,
}

/// What a region's leader sends PD in a `RegionHeartbeat`.
#[derive(Clone, Debug)]
pub(crate) struct RegionReport {
    /// The store that holds the leader (its heartbeat stream carries the report).
    pub(crate) leader_store: u64,
    /// The request, without a header.
    pub(crate) request: pdpb::RegionHeartbeatRequest,
}

fn is_voter(p: &metapb::Peer) -> bool {
    matches!(
        metapb::PeerRole::try_from(p.role),
        Ok(metapb::PeerRole::Voter | metapb::PeerRole::IncomingVoter)
    )
}

impl Cluster {
    /// The model of stores that join a real PD: the stores `store_ids`
    /// (ids PD allocated), running `version`, and either the bootstrap region
    /// (`Some((region_id, peer_id))`: the whole key space, one voter on the
    /// first store, epoch `{conf_ver: 1, version: 1}`, as TiKV bootstraps)
    /// or no region at all (joining a cluster another process bootstrapped).
    /// `cfg.cluster_id` should be PD's; `cfg.stores`, `cfg.split_keys` and
    /// `cfg.pd_members` are ignored.
    pub(crate) fn joined(
        cfg: ClusterConfig,
        store_ids: &[u64],
        version: &str,
        bootstrap: Option<(u64, u64)>,
    ) -> Cluster {
        let cfg = ClusterConfig {
            stores: store_ids.len().max(1),
            split_keys: Vec::new(),
            pd_members: 1,
            ..cfg
        };
        let cluster = Cluster::new(cfg);
        {
            let mut st = cluster.lock();
            // The joined mode's own loop takes the rounds, with PD's TSO.
            st.resolved_ts_interval = None;
            st.stores.clear();
            st.regions.clear();
            st.region_ids.clear();
            // Ids from the model's own allocator never reach PD; keep them
            // far from PD's so a stray one cannot collide.
            st.next_id = 1 << 62;
            for &id in store_ids {
                let meta = metapb::Store {
                    id,
                    state: metapb::StoreState::Up as i32,
                    node_state: metapb::NodeState::Serving as i32,
                    version: version.to_owned(),
                    ..Default::default()
                };
                st.stores.insert(id, Store { meta, running: true });
            }
            if let (Some((region_id, peer_id)), Some(&first)) = (bootstrap, store_ids.first()) {
                let meta = metapb::Region {
                    id: region_id,
                    region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
                    peers: vec![metapb::Peer {
                        id: peer_id,
                        store_id: first,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                st.insert_region(Region { meta, leader_store: first, term: FIRST_LEADER_TERM });
            }
        }
        cluster
    }

    /// Maps a split key given as a request key into region key space, as
    /// [`Cluster::split`] and [`ClusterConfig::split_keys`] map it: raw in
    /// API V1, memcomparable-encoded for a V1 txn cluster and in API V2.
    /// What a split of the joined stores (PD's `split-region` operator,
    /// [`crate::join::JoinedCluster::split`]) needs for the same boundary.
    pub fn boundary_key(&self, key: &[u8]) -> Vec<u8> {
        self.lock().boundary_enc(key)
    }

    /// A store's metadata as the model holds it.
    pub(crate) fn store_meta(&self, store_id: u64) -> Option<metapb::Store> {
        self.lock().stores.get(&store_id).map(|s| s.meta.clone())
    }

    /// Number of regions with a peer on the store (`StoreStats.region_count`).
    pub(crate) fn region_count_on(&self, store_id: u64) -> u32 {
        let st = self.lock();
        let n = st.regions.values().filter(|r| r.peer_on(store_id).is_some()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Region ids in key order.
    pub(crate) fn region_ids(&self) -> Vec<u64> {
        self.lock().regions.values().map(|r| r.meta.id).collect()
    }

    /// The leader's report of a region (TiKV's `HeartbeatTask`): the region,
    /// its leader peer and term, and rough sizes of the data in its range
    /// (raw entries, and committed versions of transactional keys).
    pub(crate) fn region_report(&self, region_id: u64) -> Option<RegionReport> {
        let st = self.lock();
        let region = st.region_by_id(region_id)?;
        let leader = region.leader()?;
        let (mut keys, mut bytes) = (0u64, 0u64);
        for cf in &st.data {
            let start = region.meta.start_key.to_vec();
            let range = cf.range(start..);
            for (k, e) in range {
                if !region.meta.end_key.is_empty() && k[..] >= region.meta.end_key[..] {
                    break;
                }
                keys += 1;
                bytes += (k.len() + e.value.len()) as u64;
            }
        }
        let start = region.meta.start_key.to_vec();
        let in_region =
            |k: &Vec<u8>| region.meta.end_key.is_empty() || k[..] < region.meta.end_key[..];
        for (k, versions) in st.mvcc.writes.range(start.clone()..).take_while(|(k, _)| in_region(k))
        {
            keys += versions.by_commit.len() as u64;
            bytes += (k.len() * versions.by_commit.len()) as u64;
        }
        for (_, values) in st.mvcc.values.range(start..).take_while(|(k, _)| in_region(k)) {
            bytes += values.values().map(|v| v.len() as u64).sum::<u64>();
        }
        Some(RegionReport {
            leader_store: region.leader_store,
            request: pdpb::RegionHeartbeatRequest {
                region: Some(region.meta.clone()),
                leader: Some(leader),
                term: region.term,
                approximate_size: bytes,
                approximate_keys: keys,
                approximate_kv_size: bytes,
                ..Default::default()
            },
        })
    }

    /// `validate_split_region` (see [`State::validate_split`]).
    pub(crate) fn validate_split(
        &self,
        store_id: u64,
        region_id: u64,
        epoch: Option<metapb::RegionEpoch>,
        keys: &[Bytes],
    ) -> Result<(metapb::Region, Vec<Bytes>), Refusal> {
        self.lock().validate_split(store_id, region_id, epoch, keys)
    }

    /// `exec_batch_split` (see [`State::apply_batch_split`]).
    pub(crate) fn apply_batch_split(
        &self,
        region_id: u64,
        expected: Option<metapb::RegionEpoch>,
        keys: &[Bytes],
        ids: &[pdpb::SplitId],
    ) -> Result<Vec<metapb::Region>, Refusal> {
        self.lock().apply_batch_split(region_id, expected, keys, ids)
    }

    /// A conf change PD sent to `store_id`'s peer (`ChangePeer` as
    /// [`ConfChangeKind::Simple`], `ChangePeerV2` with its kind), after
    /// raftstore's checks: the peer leads, `conf_ver` matches, the leader is
    /// neither removed nor demoted, no duplicate or missing peer. `conf_ver`
    /// grows by the number of changes.
    pub(crate) fn change_peers(
        &self,
        store_id: u64,
        region_id: u64,
        epoch: Option<metapb::RegionEpoch>,
        changes: &[pdpb::ChangePeer],
        kind: ConfChangeKind,
    ) -> Result<(), Refusal> {
        use metapb::PeerRole;
        use tikv_proto::eraftpb::ConfChangeType;
        let mut st = self.lock();
        let region = st.leader_region(store_id, region_id)?;
        st.check_conf_ver(region, epoch)?;
        let mut meta = region.meta.clone();
        let leader_store = region.leader_store;
        if meta.peers.iter().any(|p| {
            matches!(
                PeerRole::try_from(p.role),
                Ok(PeerRole::IncomingVoter | PeerRole::DemotingVoter)
            )
        }) {
            return Err(format!("region {region_id} is still in a joint configuration"));
        }
        for change in changes {
            let peer = change.peer.unwrap_or_default();
            let ty = ConfChangeType::try_from(change.change_type)
                .map_err(|_| format!("unknown conf change type {}", change.change_type))?;
            if peer.store_id == leader_store && ty != ConfChangeType::AddNode {
                return Err(format!(
                    "ignore remove leader or demote leader (region {region_id}, peer {})",
                    peer.id
                ));
            }
            if ty != ConfChangeType::RemoveNode && !st.stores.contains_key(&peer.store_id) {
                // A store of another process (or none): no raft messages or
                // snapshots reach it from here, so it could never serve.
                return Err(format!(
                    "store {} is not one of this simulator's stores (peer {} of region {region_id})",
                    peer.store_id, peer.id
                ));
            }
            let existing = meta.peers.iter().position(|p| p.store_id == peer.store_id);
            match (existing, ty) {
                (None, ConfChangeType::AddNode) => {
                    let role = match kind {
                        ConfChangeKind::Simple => PeerRole::Voter,
                        ConfChangeKind::EnterJoint => PeerRole::IncomingVoter,
                    };
                    meta.peers.push(metapb::Peer { role: role as i32, ..peer });
                }
                (None, ConfChangeType::AddLearnerNode) => {
                    meta.peers.push(metapb::Peer { role: PeerRole::Learner as i32, ..peer });
                }
                (None, ConfChangeType::RemoveNode) => {
                    return Err(format!("remove missing peer {} from region {region_id}", peer.id));
                }
                (Some(i), ConfChangeType::AddNode | ConfChangeType::AddLearnerNode) => {
                    let have = meta.peers[i];
                    let role = PeerRole::try_from(have.role).unwrap_or(PeerRole::Voter);
                    let new_role = match (role, ty, kind) {
                        _ if have.id != peer.id => None,
                        (PeerRole::Learner, ConfChangeType::AddNode, ConfChangeKind::Simple) => {
                            Some(PeerRole::Voter)
                        }
                        (
                            PeerRole::Learner,
                            ConfChangeType::AddNode,
                            ConfChangeKind::EnterJoint,
                        ) => Some(PeerRole::IncomingVoter),
                        (
                            PeerRole::Voter,
                            ConfChangeType::AddLearnerNode,
                            ConfChangeKind::Simple,
                        ) => Some(PeerRole::Learner),
                        (
                            PeerRole::Voter,
                            ConfChangeType::AddLearnerNode,
                            ConfChangeKind::EnterJoint,
                        ) => Some(PeerRole::DemotingVoter),
                        _ => None,
                    };
                    let Some(new_role) = new_role else {
                        return Err(format!(
                            "can't add duplicated peer {} to region {region_id} (store {} has peer {})",
                            peer.id, peer.store_id, have.id
                        ));
                    };
                    meta.peers[i].role = new_role as i32;
                }
                (Some(i), ConfChangeType::RemoveNode) => {
                    let have = meta.peers[i];
                    if kind == ConfChangeKind::EnterJoint && have.role == PeerRole::Voter as i32 {
                        return Err(format!(
                            "can not remove voter {} directly from region {region_id}",
                            have.id
                        ));
                    }
                    if have.id != peer.id {
                        return Err(format!(
                            "remove unmatched peer: expect {}, get {} (region {region_id})",
                            peer.id, have.id
                        ));
                    }
                    meta.peers.remove(i);
                }
            }
        }
        let mut e = meta.region_epoch.unwrap_or_default();
        e.conf_ver += changes.len() as u64;
        meta.region_epoch = Some(e);
        st.replace_region_meta(meta);
        Ok(())
    }

    /// `apply_leave_joint`: incoming voters become voters, demoting voters
    /// learners, `conf_ver` grows by their number. TiKV's leader proposes it
    /// by itself right after entering the joint state; PD's empty
    /// `ChangePeerV2` asks for it too. Returns false when the region is not
    /// in a joint configuration (nothing to do).
    pub(crate) fn leave_joint(
        &self,
        store_id: u64,
        region_id: u64,
        epoch: Option<metapb::RegionEpoch>,
    ) -> Result<bool, Refusal> {
        use metapb::PeerRole;
        let mut st = self.lock();
        let region = st.leader_region(store_id, region_id)?;
        st.check_conf_ver(region, epoch)?;
        let mut meta = region.meta.clone();
        let mut changed = 0;
        for p in &mut meta.peers {
            match PeerRole::try_from(p.role) {
                Ok(PeerRole::IncomingVoter) => p.role = PeerRole::Voter as i32,
                Ok(PeerRole::DemotingVoter) => p.role = PeerRole::Learner as i32,
                _ => continue,
            }
            changed += 1;
        }
        if changed == 0 {
            return Ok(false);
        }
        let mut e = meta.region_epoch.unwrap_or_default();
        e.conf_ver += changed;
        meta.region_epoch = Some(e);
        st.replace_region_meta(meta);
        Ok(true)
    }

    /// A `TransferLeader` PD sent to `store_id`'s peer: leadership moves to
    /// `peer` (or, when PD names several candidates, the first voter of
    /// `peers`), whose election raises the term. No epoch check, as in
    /// raftstore. Returns the new leader's store.
    pub(crate) fn transfer_leader_from(
        &self,
        store_id: u64,
        region_id: u64,
        peer: Option<metapb::Peer>,
        peers: &[metapb::Peer],
    ) -> Result<u64, Refusal> {
        let mut st = self.lock();
        let region = st.leader_region(store_id, region_id)?;
        let candidates = peer.iter().chain(peers.iter());
        let target = candidates
            .filter(|want| want.store_id != store_id)
            .find_map(|want| {
                region.meta.peers.iter().find(|p| p.id == want.id && p.store_id == want.store_id)
            })
            .copied()
            .ok_or(format!("no peer of region {region_id} to transfer its leader to"))?;
        if !is_voter(&target) {
            return Err(format!(
                "cannot transfer leader of region {region_id} to learner {}",
                target.id
            ));
        }
        let r = st.region_by_id_mut(region_id).ok_or(format!("region {region_id} is gone"))?;
        r.leader_store = target.store_id;
        r.term += 1;
        Ok(target.store_id)
    }
}

impl Cluster {
    /// One round of TiKV's resolved-ts worker with `ts` fresh from PD's TSO:
    /// `max_ts` rises to `ts` (the concurrency manager's `update_max_ts`, so
    /// no later commit lands at or below it), and every region's resolved ts
    /// becomes `min(ts, oldest prewrite lock start_ts in the region)`
    /// (`Resolver::resolve`; pessimistic locks do not hold it back), never
    /// going backwards. A pipelined transaction's lock (generation > 0, a
    /// large transaction to the resolver) holds it at the bound the
    /// leader's txn status cache gives instead (`oldest_transaction`:
    /// cached `min_commit_ts - 1`, or start ts - 1, or nothing once the
    /// cache says committed or rolled back). Returns, per store, the minimum over the regions it
    /// holds a peer of: what the store reports in `ReportMinResolvedTS`
    /// (stores without regions are left out).
    pub(crate) fn advance_resolved_ts(&self, ts: u64) -> BTreeMap<u64, u64> {
        self.lock().advance_resolved_ts(ts)
    }

    /// Runs the in-process model's resolved-ts rounds every `interval`
    /// (`None`: never; the joined mode drives its own). A round is taken
    /// when a request that depends on safe ts (a stale read,
    /// `GetStoreSafeTS`) arrives after it is due, with a timestamp from the
    /// model's PD, as TiKV's worker takes one from PD.
    pub fn set_resolved_ts_interval(&self, interval: Option<std::time::Duration>) {
        self.lock().resolved_ts_interval = interval;
    }

    /// Makes the peers on `store_id` stop (or resume) advancing their safe
    /// ts: a follower that fell behind in applying, which answers stale
    /// reads above its safe ts with `DataIsNotReady`.
    pub fn set_safe_ts_lagging(&self, store_id: u64, lagging: bool) {
        let mut st = self.lock();
        if lagging {
            st.lagging_stores.insert(store_id);
        } else {
            st.lagging_stores.remove(&store_id);
        }
    }

    /// Stale reads that reached `store_id` and were `served` from its own
    /// data (`false`: refused with `DataIsNotReady`).
    pub fn stale_read_count(&self, store_id: u64, served: bool) -> u64 {
        self.lock().stale_reads.get(&(store_id, served)).copied().unwrap_or(0)
    }

    /// Stale reads a follower or learner served from its own data (not
    /// the leader, not refused).
    pub fn follower_stale_read_count(&self) -> u64 {
        self.lock().follower_stale_reads
    }

    /// Breaks the followers' read rule as `bug` says (`None`: TiKV's
    /// rules), for tests showing that a checker catches it.
    pub fn set_follower_read_bug(&self, bug: Option<FollowerReadBug>) {
        self.lock().follower_read_bug = bug;
    }
}

impl State {
    /// [`Cluster::advance_resolved_ts`] under the lock.
    pub(crate) fn advance_resolved_ts(&mut self, ts: u64) -> BTreeMap<u64, u64> {
        let st = self;
        st.mvcc.update_max_ts(ts);
        let mut resolved = BTreeMap::new();
        for region in st.regions.values() {
            let start = region.meta.start_key.to_vec();
            let cache = st.txn_status_caches.get(&region.leader_store);
            let oldest_lock = st
                .mvcc
                .locks
                .range(start..)
                .take_while(|(k, _)| {
                    region.meta.end_key.is_empty() || k[..] < region.meta.end_key[..]
                })
                .filter(|(_, l)| l.lock_type != LockType::Pessimistic)
                .filter_map(|(_, l)| match cache {
                    _ if l.generation == 0 => Some(l.ts),
                    Some(cache) => cache.resolved_ts_bound(l.ts),
                    None => Some(l.ts.saturating_sub(1)),
                })
                .min();
            let now = oldest_lock.map_or(ts, |l| l.min(ts));
            let before = st.resolved_ts.get(&region.meta.id).copied().unwrap_or(0);
            resolved.insert(region.meta.id, before.max(now));
        }
        let mut peer_safe_ts = BTreeMap::new();
        let mut per_store: BTreeMap<u64, u64> = BTreeMap::new();
        for region in st.regions.values() {
            let id = region.meta.id;
            for p in &region.meta.peers {
                let before = st.peer_safe_ts.get(&(id, p.store_id)).copied().unwrap_or(0);
                let ts =
                    if st.lagging_stores.contains(&p.store_id) { before } else { resolved[&id] };
                peer_safe_ts.insert((id, p.store_id), ts);
                let min = per_store.entry(p.store_id).or_insert(u64::MAX);
                *min = (*min).min(ts);
            }
        }
        st.resolved_ts = resolved;
        st.peer_safe_ts = peer_safe_ts;
        per_store
    }

    /// The in-process rounds of [`Cluster::set_resolved_ts_interval`]: one
    /// at `now` if due, with a fresh timestamp from the model's PD.
    pub(crate) fn advance_resolved_ts_if_due(&mut self, now: Instant) {
        let Some(interval) = self.resolved_ts_interval else { return };
        if self.last_resolved_round.is_some_and(|at| now.saturating_duration_since(at) < interval) {
            return;
        }
        let request = pdpb::TsoRequest {
            header: Some(pdpb::RequestHeader {
                cluster_id: self.cfg.cluster_id,
                ..Default::default()
            }),
            count: 1,
            ..Default::default()
        };
        let leader = self.pd.leader;
        let Ok(resp) = self.tso(leader, request, now) else { return };
        let Some(ts) = resp.timestamp else { return };
        let physical = u64::try_from(ts.physical).unwrap_or(0);
        let logical = u64::try_from(ts.logical).unwrap_or(0);
        self.advance_resolved_ts((physical << 18) | logical);
        self.last_resolved_round = Some(now);
    }

    /// The safe ts of the peer of `region_id` on `store_id` (0 until a
    /// round reached it).
    pub(crate) fn peer_safe_ts(&self, region_id: u64, store_id: u64) -> u64 {
        self.peer_safe_ts.get(&(region_id, store_id)).copied().unwrap_or(0)
    }

    /// TiKV's `check_stale_read_safe` for a stale read at `read_ts` on
    /// `store_id` (the region checks passed): a follower whose safe ts is
    /// behind refuses with `DataIsNotReady`; the leader serves it anyway
    /// (TiKV falls back to a lease read on a valid leader,
    /// tikv/tikv#15726). Counts the outcome.
    pub(crate) fn check_stale_read(
        &mut self,
        store_id: u64,
        region: &metapb::Region,
        read_ts: u64,
        now: Instant,
    ) -> Result<(), Box<errorpb::Error>> {
        self.advance_resolved_ts_if_due(now);
        let leader = self.region_by_id(region.id).map(|r| r.leader_store);
        let safe_ts = self.peer_safe_ts(region.id, store_id);
        let broken = self.follower_read_bug == Some(FollowerReadBug::StaleAboveSafeTs);
        if leader == Some(store_id) || read_ts <= safe_ts || broken {
            *self.stale_reads.entry((store_id, true)).or_default() += 1;
            if leader != Some(store_id) {
                self.follower_stale_reads += 1;
            }
            return Ok(());
        }
        *self.stale_reads.entry((store_id, false)).or_default() += 1;
        let peer_id = region.peers.iter().find(|p| p.store_id == store_id).map_or(0, |p| p.id);
        Err(Box::new(errorpb::Error {
            message: format!(
                "peer {peer_id} of region {} is not ready for a stale read at {read_ts}: safe ts {safe_ts}",
                region.id
            ),
            data_is_not_ready: Some(errorpb::DataIsNotReady {
                region_id: region.id,
                peer_id,
                safe_ts,
            }),
            ..Default::default()
        }))
    }
}

impl Cluster {
    /// TiKV's `GetStoreSafeTS` RPC on `store_id` at `now`
    /// ([`Cluster::store_safe_ts`] over the request's key range, after the
    /// in-process resolved-ts round if one is due); a stopped or unknown
    /// store does not answer.
    pub fn get_store_safe_ts(
        &self,
        store_id: u64,
        req: &kvrpcpb::StoreSafeTsRequest,
        now: Instant,
    ) -> Result<kvrpcpb::StoreSafeTsResponse, RpcError> {
        if !self.is_store_running(store_id) {
            return Err(RpcError::Unavailable(format!("store {store_id} is stopped")));
        }
        self.lock().advance_resolved_ts_if_due(now);
        let range = req.key_range.clone().unwrap_or_default();
        let safe_ts = self.store_safe_ts(store_id, &range.start_key, &range.end_key);
        Ok(kvrpcpb::StoreSafeTsResponse { safe_ts })
    }

    /// TiKV's `GetStoreSafeTS`: the smallest safe ts of the store's peers
    /// whose regions overlap `[start, end)` (empty end: unbounded; an empty
    /// range: the whole store), 0 when none.
    pub fn store_safe_ts(&self, store_id: u64, start: &[u8], end: &[u8]) -> u64 {
        let st = self.lock();
        st.regions
            .values()
            .filter(|r| r.peer_on(store_id).is_some())
            .filter(|r| {
                (end.is_empty() || &r.meta.start_key[..] < end)
                    && (r.meta.end_key.is_empty() || &r.meta.end_key[..] > start)
            })
            .map(|r| st.peer_safe_ts(r.meta.id, store_id))
            .min()
            .unwrap_or(0)
    }
}

impl State {
    /// The keys of TiKV's `SplitRegion` RPC in region key space
    /// (`future_split_region`): the deprecated `split_key` if set, else
    /// `split_keys`; raw keys (`is_raw_kv`) are mapped like raw data
    /// (`encode_raw_key`), the others memcomparable-encoded as txn keys.
    #[allow(deprecated)]
    pub(crate) fn split_request_keys(&self, req: &kvrpcpb::SplitRegionRequest) -> Vec<Bytes> {
        let keys = if req.split_key.is_empty() {
            req.split_keys.clone()
        } else {
            vec![req.split_key.clone()]
        };
        keys.iter()
            .map(|k| {
                Bytes::from(if req.is_raw_kv {
                    self.enc(k)
                } else {
                    tikv_core::key::memcomparable::encode_bytes(k)
                })
            })
            .collect()
    }

    /// TiKV's `SplitRegion` RPC served with the model's own PD: raftstore's
    /// checks (region errors), `validate_split_region`, then the batch split
    /// with ids allocated as PD's `AskBatchSplit` would, which that PD sees
    /// at once. A refused split answers a message-only region error
    /// "failed to split: ...", as in the joined mode (`join`'s
    /// `StoreAdmin::split_region`, which asks the real PD instead).
    #[allow(deprecated)]
    pub(crate) fn kv_split_region(
        &mut self,
        store_id: u64,
        req: kvrpcpb::SplitRegionRequest,
    ) -> kvrpcpb::SplitRegionResponse {
        let mut resp = kvrpcpb::SplitRegionResponse::default();
        if let Err(e) = self.check_region(store_id, req.context.as_ref(), false) {
            resp.region_error = Some(*e);
            return resp;
        }
        let keys = self.split_request_keys(&req);
        let ctx = req.context.unwrap_or_default();
        let split = self.validate_split(store_id, ctx.region_id, ctx.region_epoch, &keys).and_then(
            |(region, keys)| {
                let ids: Vec<pdpb::SplitId> = keys
                    .iter()
                    .map(|_| pdpb::SplitId {
                        new_region_id: self.alloc_id(),
                        new_peer_ids: region.peers.iter().map(|_| self.alloc_id()).collect(),
                    })
                    .collect();
                self.apply_batch_split(ctx.region_id, region.region_epoch, &keys, &ids)
            },
        );
        match split {
            Ok(regions) => {
                if let [left, right] = &regions[..] {
                    resp.left = Some(left.clone());
                    resp.right = Some(right.clone());
                }
                resp.regions = regions;
            }
            Err(e) => {
                resp.region_error = Some(errorpb::Error {
                    message: format!("failed to split: {e}"),
                    ..Default::default()
                });
            }
        }
        resp
    }

    /// `validate_split_region` on `store_id`'s peer: the peer leads the
    /// region, the epoch's version is current, the keys are non-empty and
    /// inside the region. Returns the region and the keys sorted, without
    /// duplicates or the region's start key (`exec_batch_split` refuses keys
    /// that do not increase from the start key).
    pub(crate) fn validate_split(
        &self,
        store_id: u64,
        region_id: u64,
        epoch: Option<metapb::RegionEpoch>,
        keys: &[Bytes],
    ) -> Result<(metapb::Region, Vec<Bytes>), Refusal> {
        let st = self;
        let region = st.leader_region(store_id, region_id)?;
        let current = region.meta.region_epoch.unwrap_or_default();
        if let Some(epoch) = epoch
            && epoch.version != current.version
        {
            return Err(format!(
                "epoch changed {current:?} != {epoch:?}, retry later (split of region {region_id})"
            ));
        }
        if keys.is_empty() {
            return Err(format!("no split key is specified (region {region_id})"));
        }
        let mut sorted: Vec<Bytes> = Vec::with_capacity(keys.len());
        for key in keys {
            if key.is_empty() {
                return Err(format!("split key should not be empty (region {region_id})"));
            }
            if !region.contains(key) {
                return Err(format!(
                    "split key {} is not in region {region_id} [{}, {})",
                    hex(key),
                    hex(&region.meta.start_key),
                    hex(&region.meta.end_key)
                ));
            }
            sorted.push(key.clone());
        }
        sorted.sort();
        sorted.dedup();
        sorted.retain(|k| *k != region.meta.start_key);
        if sorted.is_empty() {
            return Err(format!("every split key is region {region_id}'s start key"));
        }
        Ok((region.meta.clone(), sorted))
    }

    /// `exec_batch_split` with `right_derive_when_split` (TiKV's default):
    /// keys `k1 < .. < kn` cut the region into `[start, k1)`, ..,
    /// `[kn-1, kn)`, which become new regions with the ids PD allocated in
    /// `ids` (peer ids in the order of the region's peers), and `[kn, end)`,
    /// which the original region keeps; every one gets `version + n`. The
    /// new regions' leaders are on the original leader's store (their peers
    /// there campaign first), at TiKV's first term. `expected` is the epoch
    /// the split was validated against: a region changed in between is
    /// refused. Returns every resulting region in key order.
    pub(crate) fn apply_batch_split(
        &mut self,
        region_id: u64,
        expected: Option<metapb::RegionEpoch>,
        keys: &[Bytes],
        ids: &[pdpb::SplitId],
    ) -> Result<Vec<metapb::Region>, Refusal> {
        let st = self;
        let old =
            st.region_by_id(region_id).cloned().ok_or(format!("region {region_id} is gone"))?;
        let current = old.meta.region_epoch.unwrap_or_default();
        if expected.is_some_and(|e| e.version != current.version) {
            return Err(format!("region {region_id} changed while PD allocated split ids"));
        }
        if ids.len() < keys.len() {
            return Err(format!(
                "PD allocated {} ids for {} split keys of region {region_id}",
                ids.len(),
                keys.len()
            ));
        }
        if let Some(bad) = ids.iter().find(|i| i.new_peer_ids.len() != old.meta.peers.len()) {
            return Err(format!(
                "PD allocated {} peer ids for region {} with {} peers",
                bad.new_peer_ids.len(),
                bad.new_region_id,
                old.meta.peers.len()
            ));
        }
        let n = keys.len() as u64;
        let epoch =
            metapb::RegionEpoch { conf_ver: current.conf_ver, version: current.version + n };
        let mut out = Vec::with_capacity(keys.len() + 1);
        let mut start = old.meta.start_key.clone();
        st.regions.remove(&old.meta.start_key[..]);
        for (key, id) in keys.iter().zip(ids) {
            let peers = old
                .meta
                .peers
                .iter()
                .zip(&id.new_peer_ids)
                .map(|(p, &new_id)| metapb::Peer { id: new_id, ..*p })
                .collect();
            let meta = metapb::Region {
                id: id.new_region_id,
                start_key: start.clone(),
                end_key: key.clone(),
                region_epoch: Some(epoch),
                peers,
                ..old.meta.clone()
            };
            out.push(meta.clone());
            st.insert_region(Region {
                meta,
                leader_store: old.leader_store,
                term: FIRST_LEADER_TERM,
            });
            start = key.clone();
        }
        let derived =
            metapb::Region { start_key: start, region_epoch: Some(epoch), ..old.meta.clone() };
        out.push(derived.clone());
        st.insert_region(Region { meta: derived, ..old });
        Ok(out)
    }

    /// The region, if `store_id`'s peer of it is the leader (admin commands
    /// are proposed by the leader; a follower answers NotLeader).
    fn leader_region(&self, store_id: u64, region_id: u64) -> Result<&Region, Refusal> {
        let region = self.region_by_id(region_id).ok_or(format!("region {region_id} not found"))?;
        if region.leader_store != store_id {
            return Err(format!(
                "store {store_id} is not the leader of region {region_id} (store {} is)",
                region.leader_store
            ));
        }
        Ok(region)
    }

    /// `check_region_epoch` for commands that check `conf_ver` only.
    fn check_conf_ver(
        &self,
        region: &Region,
        epoch: Option<metapb::RegionEpoch>,
    ) -> Result<(), Refusal> {
        let current = region.meta.region_epoch.unwrap_or_default();
        match epoch {
            Some(e) if e.conf_ver != current.conf_ver => Err(format!(
                "epoch not match: region {} is at {current:?}, the command carries {e:?}",
                region.meta.id
            )),
            _ => Ok(()),
        }
    }

    /// Replaces a region's metadata in place (its range is unchanged).
    fn replace_region_meta(&mut self, meta: metapb::Region) {
        if let Some(r) = self.region_by_id_mut(meta.id) {
            r.meta = meta;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_core::rpc::KvResponse;
    use tikv_proto::eraftpb::ConfChangeType;

    const STORES: [u64; 3] = [1, 2, 3];

    /// The bootstrap layout: region 10 over everything, voter 11 on store 1.
    fn bootstrapped() -> Cluster {
        Cluster::joined(ClusterConfig::default(), &STORES, DEFAULT_STORE_VERSION, Some((10, 11)))
    }

    fn epoch(conf_ver: u64, version: u64) -> Option<metapb::RegionEpoch> {
        Some(metapb::RegionEpoch { conf_ver, version })
    }

    fn change(ty: ConfChangeType, id: u64, store_id: u64) -> pdpb::ChangePeer {
        pdpb::ChangePeer {
            peer: Some(metapb::Peer { id, store_id, ..Default::default() }),
            change_type: ty as i32,
        }
    }

    fn roles(c: &Cluster, region: u64) -> Vec<(u64, u64, metapb::PeerRole)> {
        c.region(region)
            .unwrap()
            .peers
            .iter()
            .map(|p| (p.id, p.store_id, metapb::PeerRole::try_from(p.role).unwrap()))
            .collect()
    }

    #[test]
    fn bootstrap_layout_is_one_region_with_one_voter() {
        let c = bootstrapped();
        let regions = c.regions();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].id, 10);
        assert!(regions[0].start_key.is_empty() && regions[0].end_key.is_empty());
        assert_eq!(regions[0].region_epoch, epoch(1, 1));
        let report = c.region_report(10).unwrap();
        assert_eq!(report.leader_store, 1);
        assert_eq!(report.request.term, FIRST_LEADER_TERM);
        assert_eq!(report.request.leader.unwrap().id, 11);
        assert_eq!(c.store_meta(2).unwrap().version, "8.5.0");
        assert_eq!(c.region_count_on(1), 1);
        assert_eq!(c.region_count_on(2), 0);
    }

    #[test]
    fn batch_split_keeps_the_rightmost_range_and_bumps_versions_by_count() {
        let c = bootstrapped();
        let keys = [Bytes::from_static(b"m"), Bytes::from_static(b"c"), Bytes::from_static(b"m")];
        let (region, sorted) = c.validate_split(1, 10, epoch(1, 1), &keys).unwrap();
        assert_eq!(sorted, vec![Bytes::from_static(b"c"), Bytes::from_static(b"m")]);
        let ids = [
            pdpb::SplitId { new_region_id: 20, new_peer_ids: vec![21] },
            pdpb::SplitId { new_region_id: 30, new_peer_ids: vec![31] },
        ];
        let out = c.apply_batch_split(10, region.region_epoch, &sorted, &ids).unwrap();
        let spans: Vec<(u64, &[u8], &[u8])> =
            out.iter().map(|r| (r.id, &r.start_key[..], &r.end_key[..])).collect();
        assert_eq!(spans, vec![(20, &b""[..], &b"c"[..]), (30, b"c", b"m"), (10, b"m", b"")]);
        assert!(out.iter().all(|r| r.region_epoch == epoch(1, 3)));
        assert_eq!(c.region(20).unwrap().peers[0].id, 21);
        assert_eq!(c.leader_of(30).unwrap().store_id, 1);
        // The old epoch is now stale: a second split with it is refused.
        assert!(c.validate_split(1, 10, epoch(1, 1), &[Bytes::from_static(b"t")]).is_err());
        // Keys outside the region, or only its start key, are refused.
        assert!(c.validate_split(1, 20, epoch(1, 3), &[Bytes::from_static(b"x")]).is_err());
        assert!(c.validate_split(1, 30, epoch(1, 3), &[Bytes::from_static(b"c")]).is_err());
        // Only the leader proposes.
        assert!(c.validate_split(2, 10, epoch(1, 3), &[Bytes::from_static(b"t")]).is_err());
        // Too few ids from PD change nothing.
        assert!(c.apply_batch_split(10, epoch(1, 3), &[Bytes::from_static(b"t")], &[]).is_err());
        assert_eq!(c.regions().len(), 3);
    }

    #[test]
    fn conf_changes_follow_raftstore() {
        use metapb::PeerRole::*;
        let c = bootstrapped();
        let simple = ConfChangeKind::Simple;
        c.change_peers(
            1,
            10,
            epoch(1, 1),
            &[change(ConfChangeType::AddLearnerNode, 12, 2)],
            simple,
        )
        .unwrap();
        assert_eq!(roles(&c, 10), vec![(11, 1, Voter), (12, 2, Learner)]);
        assert_eq!(c.region(10).unwrap().region_epoch, epoch(2, 1));
        // A stale conf_ver is refused; the version is not checked.
        let promote = [change(ConfChangeType::AddNode, 12, 2)];
        assert!(c.change_peers(1, 10, epoch(1, 1), &promote, simple).is_err());
        c.change_peers(1, 10, epoch(2, 9), &promote, simple).unwrap();
        assert_eq!(roles(&c, 10), vec![(11, 1, Voter), (12, 2, Voter)]);
        // Duplicates, missing peers and removing the leader are refused.
        assert!(c.change_peers(1, 10, epoch(3, 1), &promote, simple).is_err());
        let missing = [change(ConfChangeType::RemoveNode, 13, 3)];
        assert!(c.change_peers(1, 10, epoch(3, 1), &missing, simple).is_err());
        let leader = [change(ConfChangeType::RemoveNode, 11, 1)];
        assert!(c.change_peers(1, 10, epoch(3, 1), &leader, simple).is_err());
        // A store this process does not run cannot get a peer.
        let elsewhere = [change(ConfChangeType::AddLearnerNode, 14, 4)];
        assert!(c.change_peers(1, 10, epoch(3, 1), &elsewhere, simple).is_err());
        // A follower store does not apply PD's commands.
        let learner = [change(ConfChangeType::AddLearnerNode, 13, 3)];
        assert!(c.change_peers(2, 10, epoch(3, 1), &learner, simple).is_err());
        c.change_peers(1, 10, epoch(3, 1), &learner, simple).unwrap();
        // Joint: promote 13, demote 12; conf_ver += 2, then leaving += 2.
        let joint =
            [change(ConfChangeType::AddNode, 13, 3), change(ConfChangeType::AddLearnerNode, 12, 2)];
        c.change_peers(1, 10, epoch(4, 1), &joint, ConfChangeKind::EnterJoint).unwrap();
        assert_eq!(
            roles(&c, 10),
            vec![(11, 1, Voter), (12, 2, DemotingVoter), (13, 3, IncomingVoter)]
        );
        assert_eq!(c.region(10).unwrap().region_epoch, epoch(6, 1));
        assert!(c.change_peers(1, 10, epoch(6, 1), &missing, simple).is_err(), "still joint");
        assert!(c.leave_joint(1, 10, epoch(6, 1)).unwrap());
        assert_eq!(roles(&c, 10), vec![(11, 1, Voter), (12, 2, Learner), (13, 3, Voter)]);
        assert_eq!(c.region(10).unwrap().region_epoch, epoch(8, 1));
        assert!(!c.leave_joint(1, 10, epoch(8, 1)).unwrap(), "nothing to leave");
        // Removing a voter inside a joint change is refused.
        let remove_voter =
            [change(ConfChangeType::RemoveNode, 13, 3), change(ConfChangeType::AddNode, 12, 2)];
        assert!(
            c.change_peers(1, 10, epoch(8, 1), &remove_voter, ConfChangeKind::EnterJoint).is_err()
        );
        let remove_learner = [change(ConfChangeType::RemoveNode, 12, 2)];
        c.change_peers(1, 10, epoch(8, 1), &remove_learner, simple).unwrap();
        assert_eq!(roles(&c, 10), vec![(11, 1, Voter), (13, 3, Voter)]);
    }

    /// A pipelined lock holds the resolved ts at start ts - 1 until the
    /// leader's txn status cache knows better: at the broadcast
    /// `min_commit_ts - 1`, not at all once it is committed (TiKV's
    /// resolver for large transactions).
    #[test]
    fn pipelined_locks_hold_the_resolved_ts_where_the_txn_status_cache_says() {
        use tikv_proto::kvrpcpb;
        let c = bootstrapped();
        let flush = kvrpcpb::FlushRequest {
            context: c.context_for(10),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: "k".into(),
                value: "v".into(),
                ..Default::default()
            }],
            primary_key: "k".into(),
            start_ts: 100,
            generation: 1,
            lock_ttl: 3000,
            ..Default::default()
        };
        let resp = c.handle_kv(1, flush.into(), tikv_core::time::Instant::ZERO).unwrap();
        assert!(resp.region_error().is_none(), "{}", resp.name());
        assert_eq!(c.locks().len(), 1);
        assert_eq!(c.advance_resolved_ts(200), BTreeMap::from([(1, 99)]), "not cached");
        let broadcast = |store: u64, min_commit_ts: u64, commit_ts: u64| {
            let req = kvrpcpb::BroadcastTxnStatusRequest {
                txn_status: vec![kvrpcpb::TxnStatus {
                    start_ts: 100,
                    min_commit_ts,
                    commit_ts,
                    ..Default::default()
                }],
                ..Default::default()
            };
            c.handle_kv(store, req.into(), tikv_core::time::Instant::ZERO).unwrap();
        };
        broadcast(2, 150, 0);
        assert_eq!(c.advance_resolved_ts(200), BTreeMap::from([(1, 99)]), "not the leader's cache");
        broadcast(1, 150, 0);
        assert_eq!(c.advance_resolved_ts(200), BTreeMap::from([(1, 149)]));
        broadcast(1, 150, 180);
        assert_eq!(c.advance_resolved_ts(300), BTreeMap::from([(1, 300)]), "committed");
    }

    #[test]
    fn resolved_ts_is_held_back_by_locks_and_never_goes_back() {
        use tikv_proto::kvrpcpb;
        let c = bootstrapped();
        let prewrite = kvrpcpb::PrewriteRequest {
            context: c.context_for(10),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: "k".into(),
                value: "v".into(),
                ..Default::default()
            }],
            primary_lock: "k".into(),
            start_version: 100,
            lock_ttl: 3000,
            ..Default::default()
        };
        let resp = c.handle_kv(1, prewrite.into(), tikv_core::time::Instant::ZERO).unwrap();
        assert!(resp.region_error().is_none());
        assert_eq!(c.locks().len(), 1);
        assert_eq!(c.advance_resolved_ts(50), BTreeMap::from([(1, 50)]));
        assert_eq!(c.advance_resolved_ts(200), BTreeMap::from([(1, 100)]), "the lock holds it");
        assert!(c.max_ts() >= 200, "no commit may land at or below a resolved ts");
        assert_eq!(c.store_safe_ts(1, b"", b""), 100);
        assert_eq!(c.store_safe_ts(2, b"", b""), 0, "store 2 holds no peer");
        c.change_peers(
            1,
            10,
            epoch(1, 1),
            &[change(ConfChangeType::AddLearnerNode, 12, 2)],
            ConfChangeKind::Simple,
        )
        .unwrap();
        assert_eq!(c.advance_resolved_ts(80), BTreeMap::from([(1, 100), (2, 100)]), "monotonic");
        // Committed, the key counts in the region's approximate size.
        assert_eq!(c.region_report(10).unwrap().request.approximate_keys, 0);
        let commit = kvrpcpb::CommitRequest {
            context: c.context_for(10),
            start_version: 100,
            keys: vec!["k".into()],
            commit_version: 250,
            ..Default::default()
        };
        let resp = c.handle_kv(1, commit.into(), tikv_core::time::Instant::ZERO).unwrap();
        assert!(resp.region_error().is_none());
        assert!(c.locks().is_empty());
        let report = c.region_report(10).unwrap().request;
        assert_eq!(report.approximate_keys, 1);
        assert!(report.approximate_size > 1, "key and value bytes");
    }

    #[test]
    fn leader_transfer_raises_the_term_and_needs_a_voter() {
        let c = bootstrapped();
        let simple = ConfChangeKind::Simple;
        c.change_peers(
            1,
            10,
            epoch(1, 1),
            &[change(ConfChangeType::AddLearnerNode, 12, 2)],
            simple,
        )
        .unwrap();
        let to = |id, store_id| Some(metapb::Peer { id, store_id, ..Default::default() });
        assert!(c.transfer_leader_from(1, 10, to(12, 2), &[]).is_err(), "a learner");
        assert!(c.transfer_leader_from(1, 10, to(99, 3), &[]).is_err(), "no such peer");
        c.change_peers(1, 10, epoch(2, 1), &[change(ConfChangeType::AddNode, 12, 2)], simple)
            .unwrap();
        assert!(c.transfer_leader_from(2, 10, to(12, 2), &[]).is_err(), "not the leader");
        assert_eq!(c.transfer_leader_from(1, 10, None, &[to(12, 2).unwrap()]), Ok(2));
        let report = c.region_report(10).unwrap();
        assert_eq!((report.leader_store, report.request.term), (2, FIRST_LEADER_TERM + 1));
        // The model's region errors follow: store 1 now answers NotLeader.
        let ctx = c.context_for(10).unwrap();
        assert_eq!(ctx.peer.unwrap().store_id, 2);
    }

    /// The in-process model's safe ts: rounds as requests observe it,
    /// followers refusing stale reads above their safe ts, the leader
    /// serving them, a live lock holding it back, a lagging store.
    #[test]
    fn stale_reads_follow_each_peers_safe_ts() {
        let c = Cluster::new(ClusterConfig { v1_txn: true, ..ClusterConfig::default() });
        let region = c.regions()[0].clone();
        let leader = c.leader_of(region.id).unwrap();
        let follower = *region.peers.iter().find(|p| p.store_id != leader.store_id).unwrap();
        let get = |peer: metapb::Peer, version: u64, at_ms: u64| {
            let mut context = c.context_for(region.id).unwrap();
            context.peer = Some(peer);
            context.stale_read = true;
            let req = kvrpcpb::GetRequest {
                context: Some(context),
                key: "k".into(),
                version,
                ..Default::default()
            };
            let resp = c.handle_kv(peer.store_id, req.into(), Instant::from_millis(at_ms)).unwrap();
            resp.region_error().and_then(|e| e.data_is_not_ready).map(|d| d.safe_ts)
        };
        let safe_ts_at = |store: u64, at_ms: u64| {
            let req = kvrpcpb::StoreSafeTsRequest::default();
            c.get_store_safe_ts(store, &req, Instant::from_millis(at_ms)).unwrap().safe_ts
        };
        // The first request takes a round: the safe ts is a fresh TSO.
        let first = safe_ts_at(follower.store_id, 0);
        assert!(first > 0);
        assert_eq!(get(follower, first, 10), None, "at the safe ts: served");
        assert_eq!(get(follower, first + 1, 20), Some(first), "above it: DataIsNotReady");
        assert_eq!(get(leader, first + 1, 30), None, "the leader serves it anyway");
        assert_eq!(c.stale_read_count(follower.store_id, true), 1);
        assert_eq!(c.stale_read_count(follower.store_id, false), 1);
        // No round before the interval has passed; then one.
        assert_eq!(safe_ts_at(follower.store_id, 500), first);
        let second = safe_ts_at(follower.store_id, 1_000);
        assert!(second > first + 1, "{second} after {first}");
        assert_eq!(get(follower, first + 1, 1_010), None);
        assert_eq!(c.follower_stale_read_count(), 2, "the leader's are not counted");

        // A live lock holds the safe ts at its start ts.
        let lock_ts = second + 5;
        let prewrite = kvrpcpb::PrewriteRequest {
            context: c.context_for(region.id),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: "k".into(),
                value: "v".into(),
                ..Default::default()
            }],
            primary_lock: "k".into(),
            start_version: lock_ts,
            lock_ttl: 3000,
            ..Default::default()
        };
        let resp =
            c.handle_kv(leader.store_id, prewrite.into(), Instant::from_millis(1_020)).unwrap();
        assert!(resp.region_error().is_none());
        assert_eq!(safe_ts_at(follower.store_id, 2_100), lock_ts, "never past a live lock");

        // A lagging store's peers stop; the others go on.
        c.set_safe_ts_lagging(follower.store_id, true);
        let rollback = kvrpcpb::BatchRollbackRequest {
            context: c.context_for(region.id),
            start_version: lock_ts,
            keys: vec!["k".into()],
            ..Default::default()
        };
        c.handle_kv(leader.store_id, rollback.into(), Instant::from_millis(2_200)).unwrap();
        let _ = safe_ts_at(leader.store_id, 3_300);
        assert_eq!(safe_ts_at(follower.store_id, 3_300), lock_ts);
        assert!(safe_ts_at(leader.store_id, 3_300) > lock_ts);
        assert_eq!(get(follower, lock_ts + 1, 3_400), Some(lock_ts));
    }

    /// [`FollowerReadBug`]: a broken follower answers a read above its
    /// safe ts from the data committed at or below it, where a correct one
    /// refuses the stale read and serves the replica read in full.
    #[test]
    fn a_broken_follower_reads_the_data_at_its_safe_ts() {
        let c = Cluster::new(ClusterConfig { v1_txn: true, ..ClusterConfig::default() });
        let region = c.regions()[0].clone();
        let leader = c.leader_of(region.id).unwrap();
        let follower = *region.peers.iter().find(|p| p.store_id != leader.store_id).unwrap();
        let at = Instant::from_millis(10);
        let safe_ts = c
            .get_store_safe_ts(follower.store_id, &kvrpcpb::StoreSafeTsRequest::default(), at)
            .unwrap()
            .safe_ts;
        let prewrite = kvrpcpb::PrewriteRequest {
            context: c.context_for(region.id),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: "k".into(),
                value: "v".into(),
                ..Default::default()
            }],
            primary_lock: "k".into(),
            start_version: safe_ts + 1,
            lock_ttl: 3000,
            ..Default::default()
        };
        let commit = kvrpcpb::CommitRequest {
            context: c.context_for(region.id),
            keys: vec!["k".into()],
            start_version: safe_ts + 1,
            commit_version: safe_ts + 2,
            ..Default::default()
        };
        for req in [prewrite.into(), commit.into()] {
            let resp = c.handle_kv(leader.store_id, req, at).unwrap();
            assert!(resp.region_error().is_none());
        }
        // What a read at `safe_ts + 3` on the follower answers: the value,
        // not found, or `DataIsNotReady`.
        let get = |stale: bool| {
            let mut context = c.context_for(region.id).unwrap();
            context.peer = Some(follower);
            context.stale_read = stale;
            context.replica_read = !stale;
            let req = kvrpcpb::GetRequest {
                context: Some(context),
                key: "k".into(),
                version: safe_ts + 3,
                ..Default::default()
            };
            match c.handle_kv(follower.store_id, req.into(), at).unwrap() {
                KvResponse::Get(r) if r.region_error.is_some() => {
                    let not_ready = r.region_error.is_some_and(|e| e.data_is_not_ready.is_some());
                    Err(if not_ready { "DataIsNotReady" } else { "another region error" })
                }
                KvResponse::Get(r) => Ok((!r.not_found).then(|| r.value.to_vec())),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(get(true), Err("DataIsNotReady"));
        assert_eq!(get(false), Ok(Some(b"v".to_vec())));
        c.set_follower_read_bug(Some(FollowerReadBug::StaleAboveSafeTs));
        assert_eq!(get(true), Ok(None), "served from the data at its safe ts");
        assert_eq!(get(false), Ok(Some(b"v".to_vec())));
        c.set_follower_read_bug(Some(FollowerReadBug::ReplicaReadWithoutReadIndex));
        assert_eq!(get(false), Ok(None), "served without waiting for the read index");
        assert_eq!(get(true), Err("DataIsNotReady"));
    }
}
