//! The deterministic cluster model: PD's directory, the stores, the regions
//! and their leaders, raw storage, and fault injection.
//!
//! Everything here is plain data behind one mutex. Time comes in as the `now`
//! argument of every request ([`tikv_core::time::Instant`]), randomness from
//! the seed in [`ClusterConfig`]; no clock or OS randomness is read, so a
//! simulation that feeds the same requests at the same instants sees the same
//! answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse, RpcError};
use tikv_core::time::Instant;
use tikv_proto::{errorpb, keyspacepb, kvrpcpb, metapb};

use crate::lock_wait::KvAnswer;
use crate::txn_status_cache::CachedTxnState;

use tikv_core::key::memcomparable;

/// The storage API version of the whole cluster (TiKV's `storage.api-version`):
/// V1 stores raw keys as sent with raw region boundaries and no TTL; V2 keys
/// carry a mode prefix (`r` raw, `x` txn) and keyspace id, region boundaries
/// are memcomparable-encoded, and TTL is enabled. The same type as the
/// client's, so a test names one enum.
pub use tikv_core::codec::ApiVersion;

/// How to build a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The cluster id PD puts in every response header and checks in requests.
    pub cluster_id: u64,
    /// Number of TiKV stores (ids `1..=stores`). At least 1.
    pub stores: usize,
    /// Storage API version; requests of the other version are rejected as
    /// TiKV's `check_api_version` does.
    pub api_version: ApiVersion,
    /// Initial split keys in request form (what a client puts in `RawPut.key`;
    /// for API V2 including the `r` + keyspace prefix). They are mapped into
    /// region key space like raw data (see [`Cluster::region_key`]).
    pub split_keys: Vec<Vec<u8>>,
    /// Seeds the model's PRNG (leader placement, PD member ids).
    pub seed: u64,
    /// Number of PD members; member 0 starts as leader. At least 1.
    pub pd_members: usize,
    /// TSO physical time (Unix milliseconds) at model instant zero. TTLs are
    /// measured on the same clock (`(base + now) / 1000` seconds).
    pub tso_base_ms: u64,
    /// API V1 only: region boundaries from [`ClusterConfig::split_keys`] and
    /// [`Cluster::split`] are memcomparable-encoded, as PD's own splits and
    /// TiDB-style deployments have them and as clients in txn mode expect
    /// (client-go decodes every boundary in txn mode). Either way a V1 cluster
    /// serves both key spaces, as TiKV does: raw keys are compared with the
    /// boundaries as sent, txn keys memcomparable-encoded; raw clients do not
    /// decode boundaries, so they work with both layouts. Off, boundaries are
    /// the raw bytes (the seeded world's raw runs). API V2 always encodes
    /// boundaries and ignores this.
    pub v1_txn: bool,
    /// API V1 only: TiKV's `storage.enable-ttl`, which makes the storage
    /// `V1ttl`: raw writes may carry a TTL and `RawGetKeyTTL` answers, and
    /// transactional commands are refused (`Storage::check_api_version`
    /// allows only raw commands on a `V1ttl` storage). API V2 always has TTL.
    pub enable_ttl: bool,
    /// Stores beyond the `stores` voters, one per entry with the entry's
    /// labels (`("engine", "tiflash")` makes a TiFlash store), each holding
    /// a learner peer of every initial region (PD's `AddLearner`, so those
    /// regions start at `conf_ver` 2). Learners never lead; they serve
    /// replica reads. Their ids follow the voters' stores. In-process PD
    /// only: joined to a real PD, PD places the replicas.
    pub learner_stores: Vec<Vec<(String, String)>>,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            cluster_id: 7_000_000_000_000_000_001,
            stores: 3,
            api_version: ApiVersion::V1,
            split_keys: Vec::new(),
            seed: 0,
            pd_members: 1,
            // 2025-01-01T00:00:00Z: a plausible wall-clock origin so that
            // clients deriving wall time from TSO see sane values.
            tso_base_ms: 1_735_689_600_000,
            v1_txn: false,
            enable_ttl: false,
            learner_stores: Vec::new(),
        }
    }
}

/// Selects the requests an injected fault applies to. Unset fields match
/// anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only requests to this store (for PD faults: this member index).
    pub store_id: Option<u64>,
    /// Only requests whose context names this region.
    pub region_id: Option<u64>,
    /// Only this command (the tonic method name, e.g. `raw_get`, `get_region`, `tso`).
    pub command: Option<String>,
}

impl Filter {
    /// Matches every request.
    pub fn any() -> Filter {
        Filter::default()
    }

    /// Restricts to one store (or PD member index).
    pub fn store(mut self, store_id: u64) -> Filter {
        self.store_id = Some(store_id);
        self
    }

    /// Restricts to one region.
    pub fn region(mut self, region_id: u64) -> Filter {
        self.region_id = Some(region_id);
        self
    }

    /// Restricts to one command name.
    pub fn command(mut self, name: &str) -> Filter {
        self.command = Some(name.to_owned());
        self
    }

    fn matches(&self, store_id: u64, region_id: u64, command: &str) -> bool {
        self.store_id.is_none_or(|s| s == store_id)
            && self.region_id.is_none_or(|r| r == region_id)
            && self.command.as_deref().is_none_or(|c| c == command)
    }
}

/// A topology operation the model refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// No region with this id.
    NoSuchRegion(u64),
    /// No store with this id.
    NoSuchStore(u64),
    /// No PD member with this index.
    NoSuchPdMember(usize),
    /// The split key is already a region boundary.
    SplitAtBoundary(Vec<u8>),
    /// The two regions are not adjacent (or are the same region).
    NotAdjacent(u64, u64),
    /// The store holds no peer of the region.
    NoPeerOnStore {
        /// The region.
        region_id: u64,
        /// The store.
        store_id: u64,
    },
    /// A learner cannot lead the region.
    LearnerCannotLead {
        /// The region.
        region_id: u64,
        /// The learner's store.
        store_id: u64,
    },
    /// A keyspace with this name or id exists already.
    KeyspaceExists(String),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::NoSuchRegion(id) => write!(f, "no region {id}"),
            SimError::NoSuchStore(id) => write!(f, "no store {id}"),
            SimError::NoSuchPdMember(i) => write!(f, "no PD member {i}"),
            SimError::SplitAtBoundary(k) => {
                write!(f, "key {} is already a region boundary", hex(k))
            }
            SimError::NotAdjacent(a, b) => write!(f, "regions {a} and {b} are not adjacent"),
            SimError::NoPeerOnStore { region_id, store_id } => {
                write!(f, "region {region_id} has no peer on store {store_id}")
            }
            SimError::LearnerCannotLead { region_id, store_id } => {
                write!(f, "the peer of region {region_id} on store {store_id} is a learner")
            }
            SimError::KeyspaceExists(name) => write!(f, "keyspace {name} exists"),
        }
    }
}

impl std::error::Error for SimError {}

/// Upper-case hex, as TiKV's `log_wrappers` prints keys in error messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The region errors [`Cluster::set_region_error_rate`] draws from: what a
/// busy, changing cluster sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomRegionError {
    /// `NotLeader` naming the current leader (a follower that just learned
    /// it): the client updates the leader and retries.
    NotLeader,
    /// `ServerIsBusy`: client-go backs off `BoTiKVServerBusy` (2 s to 10 s)
    /// before retrying the leader, so even a small share of these dominates
    /// latency.
    ServerIsBusy,
    /// `EpochNotMatch` carrying the current region, as TiKV always sends
    /// it: the client replaces its cache entry and retries.
    EpochNotMatch,
}

/// SplitMix64: a tiny, well-mixed PRNG; all model randomness comes from it.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// One region as the model knows it: TiKV's metadata plus the leader.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Region {
    pub(crate) meta: metapb::Region,
    /// The store whose peer leads the region.
    pub(crate) leader_store: u64,
    /// The leader's raft term, as TiKV reports it to PD in region
    /// heartbeats (PD ignores a report with a lower term than it has seen).
    pub(crate) term: u64,
}

/// The term of a region's first leader in TiKV: peers start at
/// `RAFT_INIT_LOG_TERM` (5) and the first election raises it by one.
pub(crate) const FIRST_LEADER_TERM: u64 = 6;

/// How often the in-process model advances resolved ts: TiKV reports its
/// min resolved ts every 1 s (`report-min-resolved-ts-interval`), and the
/// joined mode's default interval is the same, so stale reads a second or
/// more in the past are served by followers.
pub(crate) const DEFAULT_RESOLVED_TS_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(1);

impl Region {
    pub(crate) fn peer_on(&self, store_id: u64) -> Option<&metapb::Peer> {
        self.meta.peers.iter().find(|p| p.store_id == store_id)
    }

    pub(crate) fn leader(&self) -> Option<metapb::Peer> {
        self.peer_on(self.leader_store).copied()
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        key >= &self.meta.start_key[..]
            && (self.meta.end_key.is_empty() || key < &self.meta.end_key[..])
    }

    pub(crate) fn version(&self) -> u64 {
        self.meta.region_epoch.map_or(0, |e| e.version)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Store {
    pub(crate) meta: metapb::Store,
    pub(crate) running: bool,
}

/// One raw value with its expiry (TiKV's `RawValue`).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The key as the client sent it (what checksums and scans return).
    pub(crate) user_key: Bytes,
    pub(crate) value: Bytes,
    /// Unix seconds at which the key disappears (`ttl_to_expire_ts`).
    pub(crate) expire_ts: Option<u64>,
}

impl Entry {
    pub(crate) fn visible(&self, now_secs: u64) -> bool {
        self.expire_ts.is_none_or(|e| e > now_secs)
    }
}

/// The column families raw requests may name in API V1.
pub(crate) const CFS: [&str; 3] = ["default", "lock", "write"];

#[derive(Clone, Debug)]
pub(crate) struct Injection<T> {
    pub(crate) filter: Filter,
    pub(crate) what: T,
    pub(crate) remaining: u32,
}

/// PD's own state.
#[derive(Clone, Debug)]
pub(crate) struct PdState {
    pub(crate) members: Vec<tikv_proto::pdpb::Member>,
    pub(crate) leader: usize,
    /// Last timestamp handed out: (physical ms, logical).
    pub(crate) tso: (i64, i64),
    /// When set, PD answers region queries from this frozen copy.
    pub(crate) stale_regions: Option<BTreeMap<Vec<u8>, Region>>,
    pub(crate) keyspaces: BTreeMap<String, keyspacepb::KeyspaceMeta>,
    /// GC states by keyspace (`gc`).
    pub(crate) gc: crate::gc::GcStates,
    /// Each region's latest operator (`scatter`).
    pub(crate) operators: BTreeMap<u64, crate::scatter::Operator>,
}

/// The whole model. Methods live here, in `raw.rs` and in `pd.rs`.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) cfg: ClusterConfig,
    pub(crate) next_id: u64,
    pub(crate) rng: SplitMix64,
    pub(crate) stores: BTreeMap<u64, Store>,
    /// Regions keyed by start key (region key space).
    pub(crate) regions: BTreeMap<Vec<u8>, Region>,
    /// Region id → start key.
    pub(crate) region_ids: BTreeMap<u64, Vec<u8>>,
    /// Raw data per column family, keyed by the key in region key space.
    pub(crate) data: [BTreeMap<Vec<u8>, Entry>; 3],
    /// Transactional data (lock/write/default CFs) and max_ts, separate from
    /// raw data as TiKV keeps the two key spaces apart.
    pub(crate) mvcc: crate::mvcc::MvccStore,
    pub(crate) pd: PdState,
    pub(crate) region_errors: Vec<Injection<errorpb::Error>>,
    pub(crate) rpc_errors: Vec<Injection<RpcError>>,
    pub(crate) pd_errors: Vec<Injection<RpcError>>,
    /// Per mille of TiKV requests answered with a random region error of
    /// one of these kinds ([`Cluster::set_region_error_rate`]).
    pub(crate) region_error_per_mille: u32,
    pub(crate) region_error_kinds: Vec<RandomRegionError>,
    /// The latest instant any request carried (for test helpers that need "now").
    pub(crate) last_now: Instant,
    /// Region id → its resolved ts (TiKV's resolved-ts worker); a region
    /// without an entry has 0. Advanced by the joined mode's rounds, or
    /// with the in-process PD by rounds taken as requests observe it
    /// ([`Cluster::set_resolved_ts_interval`]).
    pub(crate) resolved_ts: BTreeMap<u64, u64>,
    /// (region id, store id) → the safe ts of that peer: the region's
    /// resolved ts as of the last round the peer's store took part in
    /// (stores in [`State::lagging_stores`] do not).
    pub(crate) peer_safe_ts: BTreeMap<(u64, u64), u64>,
    /// Stores whose peers' safe ts stand still: followers that fell behind
    /// in applying ([`Cluster::set_safe_ts_lagging`]).
    pub(crate) lagging_stores: std::collections::BTreeSet<u64>,
    /// In-process PD: a resolved-ts round is due this long after the last
    /// one; `None` in the joined mode, whose own loop drives the rounds.
    pub(crate) resolved_ts_interval: Option<std::time::Duration>,
    /// When the last in-process round ran.
    pub(crate) last_resolved_round: Option<Instant>,
    /// Stale reads per (store, served): served from the peer's own data,
    /// or refused with `DataIsNotReady` ([`Cluster::stale_read_count`]).
    pub(crate) stale_reads: BTreeMap<(u64, bool), u64>,
    /// Stale reads a follower or learner served from its own data
    /// ([`Cluster::follower_stale_read_count`]).
    pub(crate) follower_stale_reads: u64,
    /// A deliberately broken follower-read rule ([`Cluster::set_follower_read_bug`]).
    pub(crate) follower_read_bug: Option<FollowerReadBug>,
    /// Store id → its txn status cache, filled by `BroadcastTxnStatus`
    /// ([`crate::txn_status_cache`]).
    pub(crate) txn_status_caches: BTreeMap<u64, crate::txn_status_cache::TxnStatusCache>,
    /// Parked `PessimisticLock` requests ([`crate::lock_wait`]).
    pub(crate) lock_waits: crate::lock_wait::LockWaits,
    /// TiKV requests that reached a running store, by (store, command,
    /// `Context.replica_read`) ([`Cluster::kv_request_count`]).
    pub(crate) kv_requests: BTreeMap<(u64, &'static str, bool), u64>,
    /// Extra time each store's gRPC face takes to answer a TiKV request (a
    /// slow disk or an overloaded store), by store ([`Cluster::set_store_latency`]).
    pub(crate) store_latency: BTreeMap<u64, std::time::Duration>,
    /// Each store's read pool's estimated wait, by store
    /// ([`Cluster::set_store_read_wait`]).
    pub(crate) read_wait: BTreeMap<u64, std::time::Duration>,
    /// The last health feedback sequence number sent (any store).
    pub(crate) feedback_seq: u64,
    /// Stores whose gRPC face takes connections but answers nothing
    /// ([`Cluster::set_store_black_hole`]).
    pub(crate) black_holes: BTreeSet<u64>,
    /// gRPC health `Check` calls each store answered ([`Cluster::health_check_count`]).
    pub(crate) health_checks: BTreeMap<u64, u64>,
    /// Stores the client is cut off from ([`Cluster::cut_client_from_store`]).
    pub(crate) client_cut: std::collections::BTreeSet<u64>,
    /// TiKV requests each store forwarded to another (`tikv-forwarded-host`,
    /// [`Cluster::forwarded_count`]).
    pub(crate) forwarded: BTreeMap<u64, u64>,
}

/// A simulated TiKV cluster: PD members and stores over one shared model.
///
/// Cheap to clone; all clones drive the same cluster. Every method takes the
/// lock briefly and never blocks otherwise.
///
/// ```
/// use tikv_core::time::Instant;
/// use tikv_proto::kvrpcpb;
/// use tikv_sim::{Cluster, ClusterConfig};
///
/// let cluster = Cluster::new(ClusterConfig::default());
/// let region = cluster.regions()[0].clone();
/// let leader = cluster.leader_of(region.id).unwrap();
/// let ctx = cluster.context_for(region.id).unwrap();
/// let put = kvrpcpb::RawPutRequest {
///     context: Some(ctx),
///     key: "k".into(),
///     value: "v".into(),
///     ..Default::default()
/// };
/// let resp = cluster.handle_kv(leader.store_id, put.into(), Instant::ZERO).unwrap();
/// assert!(resp.region_error().is_none());
/// assert_eq!(cluster.raw_snapshot("default").get(&b"k"[..]), Some(&b"v".to_vec()));
/// ```
#[derive(Clone, Debug)]
pub struct Cluster {
    state: Arc<Mutex<State>>,
}

impl Cluster {
    /// Builds a cluster: `cfg.stores` stores, one region per gap between the
    /// split keys, up to three peers per region on distinct stores, a leader
    /// per region chosen by the seeded PRNG.
    pub fn new(cfg: ClusterConfig) -> Cluster {
        Cluster { state: Arc::new(Mutex::new(State::new(cfg))) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can only come from a bug in the
        // model; keep serving the (consistent between requests) state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one TiKV request arriving at `store_id` at model time `now`:
    /// the deterministic face a simulation drives directly.
    ///
    /// Transport faults (`inject_rpc_error`, stopped or unknown stores) come
    /// back as `Err`; everything TiKV reports in-band (region errors, `error`
    /// strings, key errors) comes back inside the response.
    pub fn handle_kv(
        &self,
        store_id: u64,
        req: KvRequest,
        now: Instant,
    ) -> Result<KvResponse, RpcError> {
        let mut st = self.lock();
        let resp = st.handle_kv(store_id, req, now);
        st.wake_lock_waiters(now);
        resp
    }

    /// Handles one PD request (unary, or one round of the TSO stream) arriving
    /// at PD member `member` at model time `now`.
    pub fn handle_pd(
        &self,
        member: usize,
        req: PdRequest,
        now: Instant,
    ) -> Result<PdResponse, RpcError> {
        self.lock().handle_pd(member, req, now)
    }

    /// What store `store_id`'s txn status cache holds for transaction
    /// `start_ts` (TiKV `TxnStatusCache::get`), as `BroadcastTxnStatus`
    /// left it.
    pub fn cached_txn_status(&self, store_id: u64, start_ts: u64) -> Option<CachedTxnState> {
        self.lock().txn_status_caches.get(&store_id).and_then(|c| c.get(start_ts))
    }

    /// How many `command` requests (the method name, e.g. `raw_get`,
    /// `kv_get`) reached store `store_id` while it was running, whatever
    /// the answer; `replica_read` counts only those with
    /// `Context.replica_read` set (`Some(true)`), only those without
    /// (`Some(false)`), or both (`None`).
    pub fn kv_request_count(
        &self,
        store_id: u64,
        command: &str,
        replica_read: Option<bool>,
    ) -> u64 {
        self.lock()
            .kv_requests
            .iter()
            .filter(|((s, c, rr), _)| {
                *s == store_id && *c == command && replica_read.is_none_or(|want| want == *rr)
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// How many requests of any command reached any store while it was
    /// running (the sum of every [`Cluster::kv_request_count`]).
    pub fn kv_request_total(&self) -> u64 {
        self.lock().kv_requests.values().sum()
    }

    /// The cluster's configuration.
    pub fn config(&self) -> ClusterConfig {
        self.lock().cfg.clone()
    }

    /// Maps a request key (raw, as a client sends it) into region key space:
    /// unchanged in API V1, memcomparable-encoded in API V2 (TiKV's
    /// `encode_raw_key`).
    pub fn region_key(&self, key: &[u8]) -> Vec<u8> {
        self.lock().enc(key)
    }

    /// Splits the region containing the request key `key` at it (mapped with
    /// [`Cluster::region_key`]). Returns `(left_id, right_id)`.
    pub fn split(&self, key: &[u8]) -> Result<(u64, u64), SimError> {
        let mut st = self.lock();
        let k = st.boundary_enc(key);
        st.split_region_key(&k)
    }

    /// Splits at a key already in region key space. As TiKV does with
    /// `right-derive-when-split` (its default), the right half keeps the
    /// region id and the left half gets a new region id and new peer ids from
    /// PD's allocator; both halves get `version + 1`. Returns `(left_id, right_id)`.
    pub fn split_region_key(&self, region_key: &[u8]) -> Result<(u64, u64), SimError> {
        self.lock().split_region_key(region_key)
    }

    /// Merges region `source` into the adjacent region `target` (either side),
    /// as TiKV's commit-merge does: the target takes the union range and
    /// version `max(source, target) + 1`; the source disappears. Returns the
    /// surviving (target) id.
    pub fn merge(&self, source: u64, target: u64) -> Result<u64, SimError> {
        self.lock().merge(source, target)
    }

    /// Moves leadership of `region_id` to its peer on `store_id` (the store
    /// may be stopped: that models a leader nobody can reach yet).
    pub fn transfer_leader(&self, region_id: u64, store_id: u64) -> Result<(), SimError> {
        self.lock().transfer_leader(region_id, store_id)
    }

    /// Stops a store: its `handle_kv` fails with `RpcError::Unavailable`.
    /// Regions it led elect (instantly) the lowest-id running peer, if any.
    pub fn stop_store(&self, store_id: u64) -> Result<(), SimError> {
        self.lock().stop_store(store_id)
    }

    /// Restarts a stopped store. Leadership does not move back.
    pub fn start_store(&self, store_id: u64) -> Result<(), SimError> {
        let mut st = self.lock();
        let store = st.stores.get_mut(&store_id).ok_or(SimError::NoSuchStore(store_id))?;
        store.running = true;
        Ok(())
    }

    /// Marks a store tombstone (PD `NodeState::Removed`) and stops it.
    pub fn tombstone_store(&self, store_id: u64) -> Result<(), SimError> {
        let mut st = self.lock();
        st.stop_store(store_id)?;
        if let Some(s) = st.stores.get_mut(&store_id) {
            s.meta.state = metapb::StoreState::Tombstone as i32;
            s.meta.node_state = metapb::NodeState::Removed as i32;
        }
        Ok(())
    }

    /// Sets the address PD reports for a store (the gRPC server registers
    /// its real listening address here).
    pub fn set_store_address(&self, store_id: u64, addr: &str) -> Result<(), SimError> {
        let mut st = self.lock();
        let store = st.stores.get_mut(&store_id).ok_or(SimError::NoSuchStore(store_id))?;
        store.meta.address = addr.to_owned();
        store.meta.peer_address = addr.to_owned();
        Ok(())
    }

    /// Sets a store's status address (TiKV's `status-addr`), which PD's
    /// store list reports.
    pub fn set_store_status_address(&self, store_id: u64, addr: &str) -> Result<(), SimError> {
        let mut st = self.lock();
        let store = st.stores.get_mut(&store_id).ok_or(SimError::NoSuchStore(store_id))?;
        store.meta.status_address = addr.to_owned();
        Ok(())
    }

    /// Sets the client URL GetMembers reports for a PD member.
    pub fn set_pd_member_url(&self, member: usize, url: &str) -> Result<(), SimError> {
        let mut st = self.lock();
        let m = st.pd.members.get_mut(member).ok_or(SimError::NoSuchPdMember(member))?;
        m.client_urls = vec![url.to_owned()];
        m.peer_urls = vec![url.to_owned()];
        Ok(())
    }

    /// Makes `member` the PD leader; the others answer as PD followers do.
    pub fn set_pd_leader(&self, member: usize) -> Result<(), SimError> {
        let mut st = self.lock();
        if member >= st.pd.members.len() {
            return Err(SimError::NoSuchPdMember(member));
        }
        st.pd.leader = member;
        Ok(())
    }

    /// The current PD leader's index.
    pub fn pd_leader(&self) -> usize {
        self.lock().pd.leader
    }

    /// With `true`, PD freezes its region view: it keeps answering region
    /// queries with the regions and leaders as they are now, while stores
    /// move on (PD lagging behind heartbeats). `false` refreshes it.
    pub fn set_pd_stale(&self, stale: bool) {
        let mut st = self.lock();
        st.pd.stale_regions = stale.then(|| st.regions.clone());
    }

    /// Adds an ENABLED keyspace to PD's keyspace table.
    pub fn add_keyspace(&self, name: &str, id: u32) -> Result<(), SimError> {
        let mut st = self.lock();
        let taken = st.pd.keyspaces.values().any(
            |m| matches!(m.keyspace, Some(keyspacepb::keyspace_meta::Keyspace::Id(i)) if i == id),
        );
        if taken || st.pd.keyspaces.contains_key(name) {
            return Err(SimError::KeyspaceExists(name.to_owned()));
        }
        st.pd.keyspaces.insert(name.to_owned(), keyspace_meta(name, id));
        Ok(())
    }

    /// Sets the null keyspace's safe points (the unified GC's) directly,
    /// without collecting garbage.
    pub fn set_gc_safe_points(&self, txn_safe_point: u64, gc_safe_point: u64) {
        let mut st = self.lock();
        let state = st.pd.gc.get_mut(crate::gc::NULL_KEYSPACE_ID);
        state.txn_safe_point = txn_safe_point;
        state.gc_safe_point = gc_safe_point;
    }

    /// The next `times` requests matching `filter` get `error` as their
    /// region error instead of being executed (ServerIsBusy, StaleCommand,
    /// DiskFull, any kind, including ones with only a message).
    pub fn inject_region_error(&self, filter: Filter, error: errorpb::Error, times: u32) {
        self.lock().region_errors.push(Injection { filter, what: error, remaining: times });
    }

    /// The next `times` TiKV requests matching `filter` fail at the transport
    /// level with `error`.
    pub fn inject_rpc_error(&self, filter: Filter, error: RpcError, times: u32) {
        self.lock().rpc_errors.push(Injection { filter, what: error, remaining: times });
    }

    /// The next `times` PD requests matching `filter` (its `store_id` is the
    /// member index; `region_id` is ignored) fail with `error`.
    pub fn inject_pd_error(&self, filter: Filter, error: RpcError, times: u32) {
        self.lock().pd_errors.push(Injection { filter, what: error, remaining: times });
    }

    /// Region errors at random (benchmark B9, `sim-faults`): from now on each
    /// TiKV request to an existing region is answered, with probability
    /// `per_mille / 1000` and instead of being executed, with a region error
    /// of one of `kinds`, drawn uniformly (see [`RandomRegionError`]). 0 or
    /// no kinds turns it off. Draws come from the model's seeded generator.
    pub fn set_region_error_rate(&self, per_mille: u32, kinds: &[RandomRegionError]) {
        let mut st = self.lock();
        st.region_error_per_mille = if kinds.is_empty() { 0 } else { per_mille.min(1000) };
        st.region_error_kinds = kinds.to_vec();
    }

    /// Drops every pending injection.
    pub fn clear_injections(&self) {
        let mut st = self.lock();
        st.region_errors.clear();
        st.rpc_errors.clear();
        st.pd_errors.clear();
    }

    /// Visible raw data of a column family (`""` means `default`), keyed by the
    /// key as clients sent it, at the latest instant any request carried.
    pub fn raw_snapshot(&self, cf: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let st = self.lock();
        let now = st.ttl_now(st.last_now);
        let idx = CFS.iter().position(|c| *c == cf).unwrap_or(0);
        st.data[idx]
            .values()
            .filter(|e| e.visible(now))
            .map(|e| (e.user_key.to_vec(), e.value.to_vec()))
            .collect()
    }

    /// All regions in key order, as the stores see them (not PD's possibly
    /// stale view).
    pub fn regions(&self) -> Vec<metapb::Region> {
        self.lock().regions.values().map(|r| r.meta.clone()).collect()
    }

    /// One region's metadata.
    pub fn region(&self, region_id: u64) -> Option<metapb::Region> {
        let st = self.lock();
        st.region_by_id(region_id).map(|r| r.meta.clone())
    }

    /// The region containing a key in region key space.
    pub fn region_for_region_key(&self, region_key: &[u8]) -> Option<metapb::Region> {
        self.lock().region_containing(region_key).map(|r| r.meta.clone())
    }

    /// The leader peer of a region.
    pub fn leader_of(&self, region_id: u64) -> Option<metapb::Peer> {
        self.lock().region_by_id(region_id).and_then(Region::leader)
    }

    /// A `kvrpcpb::Context` addressed to the region's current leader with the
    /// current epoch and the cluster's API version: what a client with a fresh
    /// region cache would send.
    pub fn context_for(&self, region_id: u64) -> Option<kvrpcpb::Context> {
        let st = self.lock();
        let region = st.region_by_id(region_id)?;
        Some(kvrpcpb::Context {
            region_id,
            region_epoch: region.meta.region_epoch,
            peer: region.leader(),
            api_version: kvrpcpb::ApiVersion::from(st.cfg.api_version) as i32,
            ..Default::default()
        })
    }

    /// Store ids, ascending.
    pub fn store_ids(&self) -> Vec<u64> {
        self.lock().stores.keys().copied().collect()
    }

    /// Makes store `store_id` slow: its gRPC face waits `latency` (wall
    /// time) before it handles each TiKV request, and each `BatchCommands`
    /// message, as a store with a slow disk answers late. Zero: no delay.
    /// The model itself ([`Cluster::handle_kv`]) does not wait.
    pub fn set_store_latency(&self, store_id: u64, latency: std::time::Duration) {
        let mut st = self.lock();
        if latency.is_zero() {
            st.store_latency.remove(&store_id);
        } else {
            st.store_latency.insert(store_id, latency);
        }
    }

    /// The latency set by [`Cluster::set_store_latency`] (zero by default).
    pub fn store_latency(&self, store_id: u64) -> std::time::Duration {
        self.lock().store_latency.get(&store_id).copied().unwrap_or_default()
    }

    /// Ends every [`Cluster::set_store_latency`].
    pub fn clear_store_latencies(&self) {
        self.lock().store_latency.clear();
    }

    /// Loads store `store_id`'s read pool: TiKV's estimate of how long a
    /// read waits in its queue (`ReadPoolHandle::get_estimated_wait_duration`)
    /// becomes `wait`. A read-pool command whose `Context.busy_threshold_ms`
    /// is set and below `wait` is refused with `ServerIsBusy` carrying
    /// `estimated_wait_ms` (load-based replica read; TiKV's
    /// `check_busy_threshold`, on leaders and followers alike, before any
    /// region check). Only the estimate is modelled:
    /// reads the store accepts are not delayed by it
    /// ([`Cluster::set_store_latency`] slows a store). Zero: an idle pool.
    pub fn set_store_read_wait(&self, store_id: u64, wait: std::time::Duration) {
        let mut st = self.lock();
        if wait.is_zero() {
            st.read_wait.remove(&store_id);
        } else {
            st.read_wait.insert(store_id, wait);
        }
    }

    /// The wait set by [`Cluster::set_store_read_wait`] (zero by default).
    pub fn store_read_wait(&self, store_id: u64) -> std::time::Duration {
        self.lock().read_wait.get(&store_id).copied().unwrap_or_default()
    }

    /// Store `store_id`'s health feedback now, as its gRPC face attaches it
    /// to `BatchCommands` answers and the seeded worlds' network to every
    /// TiKV answer: raftstore's slow score, here 1 plus the store's added
    /// latency in milliseconds ([`Cluster::set_store_latency`]), capped at
    /// 100.
    pub fn health_feedback(&self, store_id: u64) -> kvrpcpb::HealthFeedback {
        self.lock().health_feedback(store_id)
    }

    /// Black-holes store `store_id` (`on`) or ends it: its gRPC face still
    /// accepts connections and reads requests but answers none of them, the
    /// health probe included, until the black hole ends (then the held
    /// requests are answered), as a TiKV whose process hangs or whose
    /// answers are dropped on the way. The model is untouched: the store
    /// keeps its leaders, as when only the path to the client is cut.
    pub fn set_store_black_hole(&self, store_id: u64, on: bool) {
        let mut st = self.lock();
        if on {
            st.black_holes.insert(store_id);
        } else {
            st.black_holes.remove(&store_id);
        }
    }

    /// Whether [`Cluster::set_store_black_hole`] holds the store's answers.
    pub fn is_store_black_holed(&self, store_id: u64) -> bool {
        self.lock().black_holes.contains(&store_id)
    }

    /// Counts a gRPC health `Check` answered by store `store_id`.
    pub(crate) fn count_health_check(&self, store_id: u64) {
        *self.lock().health_checks.entry(store_id).or_default() += 1;
    }

    /// gRPC health `Check` calls store `store_id`'s gRPC face answered
    /// (a client's liveness probes).
    pub fn health_check_count(&self, store_id: u64) -> u64 {
        self.lock().health_checks.get(&store_id).copied().unwrap_or(0)
    }

    /// Cuts the client off from store `store_id` while the store keeps
    /// running and leading (a partition between the client and that store
    /// only): its gRPC face refuses every call that comes from a client,
    /// health probes included, with `UNAVAILABLE`; requests other stores
    /// forward to it are still served.
    pub fn cut_client_from_store(&self, store_id: u64) {
        self.lock().client_cut.insert(store_id);
    }

    /// Ends [`Cluster::cut_client_from_store`] for `store_id`.
    pub fn heal_client_to_store(&self, store_id: u64) {
        self.lock().client_cut.remove(&store_id);
    }

    /// True while the client is cut off from store `store_id`.
    pub fn is_client_cut(&self, store_id: u64) -> bool {
        self.lock().client_cut.contains(&store_id)
    }

    /// TiKV's forwarding (`kv.rs`): store `proxy` received a request
    /// carrying `tikv-forwarded-host: host` and hands it, over the
    /// cluster's own network, to the store at that address, whose id this
    /// returns (counted as forwarded by `proxy`). A stopped receiver
    /// refuses it, as it refuses any request; so does one asked to forward
    /// to an address no store has.
    pub fn forward(&self, proxy: u64, host: &str) -> Result<u64, RpcError> {
        let mut st = self.lock();
        let to = forward_target(&st, proxy, host)?;
        *st.forwarded.entry(proxy).or_default() += 1;
        Ok(to)
    }

    /// Where [`Cluster::forward`] hands a request, without counting it: a
    /// `BatchCommands` stream is forwarded whole and its entries counted
    /// as they come ([`Cluster::count_forwarded`]).
    #[cfg(feature = "server")]
    pub(crate) fn forward_target(&self, proxy: u64, host: &str) -> Result<u64, RpcError> {
        forward_target(&self.lock(), proxy, host)
    }

    /// Counts `n` TiKV requests store `store_id` forwarded to another.
    #[cfg(feature = "server")]
    pub(crate) fn count_forwarded(&self, store_id: u64, n: u64) {
        *self.lock().forwarded.entry(store_id).or_default() += n;
    }

    /// TiKV requests store `store_id`'s gRPC face forwarded to another
    /// store (`tikv-forwarded-host`), each entry of a forwarded
    /// `BatchCommands` stream counted.
    pub fn forwarded_count(&self, store_id: u64) -> u64 {
        self.lock().forwarded.get(&store_id).copied().unwrap_or(0)
    }

    /// The store whose address is `addr`.
    pub fn store_at(&self, addr: &str) -> Option<u64> {
        self.lock().stores.iter().find(|(_, s)| s.meta.address == addr).map(|(id, _)| *id)
    }

    /// True if the store exists and is running.
    pub fn is_store_running(&self, store_id: u64) -> bool {
        self.lock().stores.get(&store_id).is_some_and(|s| s.running)
    }

    /// Number of PD members.
    pub fn pd_member_count(&self) -> usize {
        self.lock().pd.members.len()
    }
}

/// TiKV's forwarding decision ([`Cluster::forward`]): a running `proxy`
/// hands the request to the store at `host`.
fn forward_target(st: &State, proxy: u64, host: &str) -> Result<u64, RpcError> {
    if !st.stores.get(&proxy).is_some_and(|s| s.running) {
        return Err(RpcError::Unavailable(format!("store {proxy} is stopped")));
    }
    let to = st.stores.iter().find(|(_, s)| s.meta.address == host).map(|(id, _)| *id);
    to.ok_or_else(|| RpcError::Unavailable(format!("no store at {host}")))
}

pub(crate) fn keyspace_meta(name: &str, id: u32) -> keyspacepb::KeyspaceMeta {
    keyspacepb::KeyspaceMeta {
        name: name.to_owned(),
        state: keyspacepb::KeyspaceState::Enabled as i32,
        keyspace: Some(keyspacepb::keyspace_meta::Keyspace::Id(id)),
        ..Default::default()
    }
}

/// Puts a region error into any TiKV response that has the field (a store
/// RPC's has none: it is left as it is).
pub(crate) fn set_region_error(resp: &mut KvResponse, err: errorpb::Error) {
    if let Some(field) = resp.region_error_mut() {
        *field = Some(err);
    }
}

/// Why a raw command did not run: a region error (goes to `region_error`) or
/// a storage error (goes to the response's `error` string or key error).
#[derive(Debug)]
pub(crate) enum Reject {
    Region(Box<errorpb::Error>),
    Other(String),
}

impl From<Box<errorpb::Error>> for Reject {
    fn from(e: Box<errorpb::Error>) -> Reject {
        Reject::Region(e)
    }
}

impl From<errorpb::Error> for Reject {
    fn from(e: errorpb::Error) -> Reject {
        Reject::Region(Box::new(e))
    }
}

impl State {
    fn new(cfg: ClusterConfig) -> State {
        let mut cfg = cfg;
        cfg.stores = cfg.stores.max(1);
        cfg.pd_members = cfg.pd_members.max(1);
        let mut rng = SplitMix64(cfg.seed);
        let members = (0..cfg.pd_members)
            .map(|i| tikv_proto::pdpb::Member {
                name: format!("pd-{i}"),
                member_id: rng.next_u64(),
                peer_urls: vec![format!("http://pd-{i}.sim:2380")],
                client_urls: vec![format!("http://pd-{i}.sim:2379")],
                binary_version: "8.5.0-sim".to_owned(),
                ..Default::default()
            })
            .collect();
        let mut keyspaces = BTreeMap::new();
        keyspaces.insert("DEFAULT".to_owned(), keyspace_meta("DEFAULT", 0));
        let mut st = State {
            next_id: 1,
            rng,
            stores: BTreeMap::new(),
            regions: BTreeMap::new(),
            region_ids: BTreeMap::new(),
            data: Default::default(),
            mvcc: Default::default(),
            pd: PdState {
                members,
                leader: 0,
                tso: (0, 0),
                stale_regions: None,
                keyspaces,
                gc: Default::default(),
                operators: BTreeMap::new(),
            },
            region_errors: Vec::new(),
            rpc_errors: Vec::new(),
            pd_errors: Vec::new(),
            region_error_per_mille: 0,
            region_error_kinds: Vec::new(),
            last_now: Instant::ZERO,
            resolved_ts: BTreeMap::new(),
            peer_safe_ts: BTreeMap::new(),
            lagging_stores: Default::default(),
            resolved_ts_interval: Some(DEFAULT_RESOLVED_TS_INTERVAL),
            last_resolved_round: None,
            stale_reads: BTreeMap::new(),
            follower_stale_reads: 0,
            follower_read_bug: None,
            txn_status_caches: BTreeMap::new(),
            lock_waits: Default::default(),
            kv_requests: BTreeMap::new(),
            read_wait: BTreeMap::new(),
            store_latency: BTreeMap::new(),
            feedback_seq: 0,
            black_holes: BTreeSet::new(),
            health_checks: BTreeMap::new(),
            client_cut: Default::default(),
            forwarded: BTreeMap::new(),
            cfg,
        };
        for _ in 0..st.cfg.stores {
            let id = st.alloc_id();
            let meta = metapb::Store {
                id,
                address: format!("store-{id}.sim:20160"),
                peer_address: format!("store-{id}.sim:20160"),
                state: metapb::StoreState::Up as i32,
                node_state: metapb::NodeState::Serving as i32,
                version: "8.5.0-sim".to_owned(),
                ..Default::default()
            };
            st.stores.insert(id, Store { meta, running: true });
        }
        let store_ids: Vec<u64> = st.stores.keys().copied().collect();
        let mut learner_store_ids = Vec::new();
        for labels in st.cfg.learner_stores.clone() {
            let id = st.alloc_id();
            let meta = metapb::Store {
                id,
                address: format!("store-{id}.sim:20160"),
                peer_address: format!("store-{id}.sim:20160"),
                state: metapb::StoreState::Up as i32,
                node_state: metapb::NodeState::Serving as i32,
                version: "8.5.0-sim".to_owned(),
                labels: labels
                    .into_iter()
                    .map(|(key, value)| metapb::StoreLabel { key, value })
                    .collect(),
                ..Default::default()
            };
            st.stores.insert(id, Store { meta, running: true });
            learner_store_ids.push(id);
        }
        let mut bounds: Vec<Vec<u8>> =
            st.cfg.split_keys.iter().map(|k| st.boundary_enc(k)).collect();
        bounds.retain(|k| !k.is_empty());
        bounds.sort();
        bounds.dedup();
        let replicas = store_ids.len().min(3);
        let mut start = Vec::new();
        for (i, end) in bounds.into_iter().map(Some).chain([None]).enumerate() {
            let region_id = st.alloc_id();
            let peers: Vec<metapb::Peer> = (0..replicas)
                .map(|j| metapb::Peer {
                    id: st.alloc_id(),
                    store_id: store_ids[(i + j) % store_ids.len()],
                    ..Default::default()
                })
                .collect();
            let leader_store = peers[st.rng.below(peers.len())].store_id;
            let mut peers = peers;
            for &store_id in &learner_store_ids {
                peers.push(metapb::Peer {
                    id: st.alloc_id(),
                    store_id,
                    role: metapb::PeerRole::Learner as i32,
                    ..Default::default()
                });
            }
            let end_key = end.clone().unwrap_or_default();
            let conf_ver = 1 + learner_store_ids.len() as u64;
            let meta = metapb::Region {
                id: region_id,
                start_key: start.clone().into(),
                end_key: end_key.clone().into(),
                region_epoch: Some(metapb::RegionEpoch { conf_ver, version: 1 }),
                peers,
                ..Default::default()
            };
            st.insert_region(Region { meta, leader_store, term: FIRST_LEADER_TERM });
            start = end_key;
        }
        st
    }

    pub(crate) fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Request key → region key space (TiKV's `F::encode_raw_key(key, None)`).
    pub(crate) fn enc(&self, key: &[u8]) -> Vec<u8> {
        match self.cfg.api_version {
            ApiVersion::V1 => key.to_vec(),
            ApiVersion::V2 => memcomparable::encode_bytes(key),
        }
    }

    /// A region boundary given as a request key → region key space: like raw
    /// data, except that a V1 txn cluster ([`ClusterConfig::v1_txn`]) uses
    /// memcomparable boundaries as txn keys need.
    pub(crate) fn boundary_enc(&self, key: &[u8]) -> Vec<u8> {
        if self.cfg.api_version == ApiVersion::V1 && self.cfg.v1_txn {
            memcomparable::encode_bytes(key)
        } else {
            self.enc(key)
        }
    }

    /// The storage's API version as TiKV names it (`V1ttl` for API V1 with
    /// [`ClusterConfig::enable_ttl`]).
    pub(crate) fn storage_api(&self) -> kvrpcpb::ApiVersion {
        match self.cfg.api_version {
            ApiVersion::V1 if self.cfg.enable_ttl => kvrpcpb::ApiVersion::V1ttl,
            v => kvrpcpb::ApiVersion::from(v),
        }
    }

    /// Seconds on TiKV's TTL clock (`ttl_current_ts`), derived from the model clock.
    pub(crate) fn ttl_now(&self, now: Instant) -> u64 {
        self.cfg.tso_base_ms.saturating_add(now.as_nanos() / 1_000_000) / 1000
    }

    pub(crate) fn insert_region(&mut self, region: Region) {
        let start = region.meta.start_key.to_vec();
        self.region_ids.insert(region.meta.id, start.clone());
        self.regions.insert(start, region);
    }

    pub(crate) fn region_by_id(&self, id: u64) -> Option<&Region> {
        self.region_ids.get(&id).and_then(|k| self.regions.get(k))
    }

    pub(crate) fn region_by_id_mut(&mut self, id: u64) -> Option<&mut Region> {
        let key = self.region_ids.get(&id)?;
        self.regions.get_mut(key)
    }

    pub(crate) fn region_containing(&self, key: &[u8]) -> Option<&Region> {
        containing(&self.regions, key)
    }

    pub(crate) fn split_region_key(&mut self, key: &[u8]) -> Result<(u64, u64), SimError> {
        let Some(old) = self.region_containing(key).cloned() else {
            return Err(SimError::SplitAtBoundary(key.to_vec()));
        };
        if key.is_empty() || old.meta.start_key == key {
            return Err(SimError::SplitAtBoundary(key.to_vec()));
        }
        let epoch = old.meta.region_epoch.unwrap_or_default();
        let new_epoch =
            metapb::RegionEpoch { conf_ver: epoch.conf_ver, version: epoch.version + 1 };
        let left_id = self.alloc_id();
        let left_peers: Vec<metapb::Peer> =
            old.meta.peers.iter().map(|p| metapb::Peer { id: self.alloc_id(), ..*p }).collect();
        let left = Region {
            meta: metapb::Region {
                id: left_id,
                start_key: old.meta.start_key.clone(),
                end_key: Bytes::copy_from_slice(key),
                region_epoch: Some(new_epoch),
                peers: left_peers,
                ..old.meta.clone()
            },
            leader_store: old.leader_store,
            term: FIRST_LEADER_TERM,
        };
        let right = Region {
            meta: metapb::Region {
                start_key: Bytes::copy_from_slice(key),
                region_epoch: Some(new_epoch),
                ..old.meta.clone()
            },
            leader_store: old.leader_store,
            term: old.term,
        };
        self.regions.remove(&old.meta.start_key[..]);
        let right_id = right.meta.id;
        self.insert_region(left);
        self.insert_region(right);
        Ok((left_id, right_id))
    }

    fn merge(&mut self, source: u64, target: u64) -> Result<u64, SimError> {
        let src = self.region_by_id(source).cloned().ok_or(SimError::NoSuchRegion(source))?;
        let tgt = self.region_by_id(target).cloned().ok_or(SimError::NoSuchRegion(target))?;
        let (start, end) = if src.meta.end_key == tgt.meta.start_key && !src.meta.end_key.is_empty()
        {
            (src.meta.start_key.clone(), tgt.meta.end_key.clone())
        } else if tgt.meta.end_key == src.meta.start_key && !tgt.meta.end_key.is_empty() {
            (tgt.meta.start_key.clone(), src.meta.end_key.clone())
        } else {
            return Err(SimError::NotAdjacent(source, target));
        };
        self.regions.remove(&src.meta.start_key[..]);
        self.regions.remove(&tgt.meta.start_key[..]);
        self.region_ids.remove(&source);
        let epoch = tgt.meta.region_epoch.unwrap_or_default();
        let mut merged = tgt;
        merged.meta.start_key = start;
        merged.meta.end_key = end;
        merged.meta.region_epoch = Some(metapb::RegionEpoch {
            conf_ver: epoch.conf_ver,
            version: epoch.version.max(src.version()) + 1,
        });
        self.insert_region(merged);
        Ok(target)
    }

    pub(crate) fn transfer_leader(
        &mut self,
        region_id: u64,
        store_id: u64,
    ) -> Result<(), SimError> {
        let region = self.region_by_id_mut(region_id).ok_or(SimError::NoSuchRegion(region_id))?;
        match region.peer_on(store_id) {
            None => return Err(SimError::NoPeerOnStore { region_id, store_id }),
            Some(p) if is_learner(p) => {
                return Err(SimError::LearnerCannotLead { region_id, store_id });
            }
            Some(_) => {}
        }
        if region.leader_store != store_id {
            // The new leader won an election: a higher term.
            region.term += 1;
        }
        region.leader_store = store_id;
        Ok(())
    }

    fn stop_store(&mut self, store_id: u64) -> Result<(), SimError> {
        let store = self.stores.get_mut(&store_id).ok_or(SimError::NoSuchStore(store_id))?;
        store.running = false;
        let running: Vec<u64> =
            self.stores.values().filter(|s| s.running).map(|s| s.meta.id).collect();
        for region in self.regions.values_mut() {
            if region.leader_store != store_id {
                continue;
            }
            let mut candidates: Vec<u64> = region
                .meta
                .peers
                .iter()
                .filter(|p| !is_learner(p))
                .map(|p| p.store_id)
                .filter(|s| running.contains(s))
                .collect();
            candidates.sort_unstable();
            if let Some(&s) = candidates.first() {
                region.leader_store = s;
                region.term += 1;
            }
        }
        Ok(())
    }

    /// A draw for [`Cluster::set_region_error_rate`].
    fn random_region_error(&mut self, region_id: u64) -> Option<errorpb::Error> {
        if self.region_error_per_mille == 0
            || self.rng.below(1000) >= self.region_error_per_mille as usize
        {
            return None;
        }
        let kind = self.region_error_kinds[self.rng.below(self.region_error_kinds.len())];
        let region = self.region_ids.get(&region_id).and_then(|start| self.regions.get(start))?;
        let mut err = errorpb::Error::default();
        match kind {
            RandomRegionError::NotLeader => {
                err.message = "injected: not leader".into();
                err.not_leader = Some(errorpb::NotLeader { region_id, leader: region.leader() });
            }
            RandomRegionError::ServerIsBusy => {
                err.message = "injected: server is busy".into();
                err.server_is_busy =
                    Some(errorpb::ServerIsBusy { reason: "injected".into(), ..Default::default() });
            }
            RandomRegionError::EpochNotMatch => {
                err.message = "injected: epoch not match".into();
                err.epoch_not_match =
                    Some(errorpb::EpochNotMatch { current_regions: vec![region.meta.clone()] });
            }
        }
        Some(err)
    }

    /// Takes one use of the first matching injection.
    fn take_injection<T: Clone>(
        list: &mut Vec<Injection<T>>,
        store: u64,
        region: u64,
        cmd: &str,
    ) -> Option<T> {
        let i = list
            .iter()
            .position(|inj| inj.remaining > 0 && inj.filter.matches(store, region, cmd))?;
        list[i].remaining -= 1;
        let what = list[i].what.clone();
        if list[i].remaining == 0 {
            list.remove(i);
        }
        Some(what)
    }

    pub(crate) fn take_pd_injection(&mut self, member: usize, cmd: &str) -> Option<RpcError> {
        let list = &mut self.pd_errors;
        let i = list.iter().position(|inj| {
            inj.remaining > 0
                && inj.filter.store_id.is_none_or(|s| s == member as u64)
                && inj.filter.command.as_deref().is_none_or(|c| c == cmd)
        })?;
        list[i].remaining -= 1;
        let what = list[i].what.clone();
        if list[i].remaining == 0 {
            list.remove(i);
        }
        Some(what)
    }

    fn handle_kv(
        &mut self,
        store_id: u64,
        req: KvRequest,
        now: Instant,
    ) -> Result<KvResponse, RpcError> {
        match self.handle_kv_answer(store_id, req, now, false)? {
            KvAnswer::Ready(resp) => Ok(resp),
            // Without `may_wait` nothing parks.
            KvAnswer::Waiting(_) => Err(RpcError::Canceled),
        }
    }

    /// One TiKV request; with `may_wait` a `PessimisticLock` that meets a
    /// lock may park ([`crate::lock_wait`]).
    pub(crate) fn handle_kv_answer(
        &mut self,
        store_id: u64,
        req: KvRequest,
        now: Instant,
        may_wait: bool,
    ) -> Result<KvAnswer, RpcError> {
        self.last_now = self.last_now.max(now);
        let cmd = req.name();
        let ctx = req.context().cloned().unwrap_or_default();
        if let Some(e) = Self::take_injection(&mut self.rpc_errors, store_id, ctx.region_id, cmd) {
            return Err(e);
        }
        match self.stores.get(&store_id) {
            None => return Err(RpcError::Unavailable(format!("store {store_id} does not exist"))),
            Some(s) if !s.running => {
                return Err(RpcError::Unavailable(format!("store {store_id} is stopped")));
            }
            Some(_) => {}
        }
        *self.kv_requests.entry((store_id, cmd, ctx.replica_read)).or_default() += 1;
        // TiKV's `reject_if_cluster_id_mismatch!`: a gRPC INVALID_ARGUMENT status.
        if ctx.cluster_id > 0 && ctx.cluster_id != self.cfg.cluster_id {
            return Err(RpcError::Status {
                code: 3,
                message: "the cluster id of the request does not match the TiKV cluster".to_owned(),
            });
        }
        if let Some(err) = self.check_busy_threshold(store_id, &req, &ctx) {
            let mut resp = req.response_template();
            set_region_error(&mut resp, err);
            return Ok(KvAnswer::Ready(resp));
        }
        // A store RPC (`BroadcastTxnStatus`) has no region to fail on.
        let regional = req.response_template().region_error_mut().is_some();
        if let Some(err) = regional
            .then(|| Self::take_injection(&mut self.region_errors, store_id, ctx.region_id, cmd))
            .flatten()
        {
            let mut resp = req.response_template();
            set_region_error(&mut resp, err);
            return Ok(KvAnswer::Ready(resp));
        }
        if let Some(err) = regional.then(|| self.random_region_error(ctx.region_id)).flatten() {
            let mut resp = req.response_template();
            set_region_error(&mut resp, err);
            return Ok(KvAnswer::Ready(resp));
        }
        // A stale read passes the region checks, then TiKV's safe-ts check
        // (`check_stale_read_safe`); the region checks' own errors are left
        // to the command.
        if let (true, Some(read_ts)) = (ctx.stale_read, stale_read_ts(&req))
            && let Ok(region) = self.check_region(store_id, Some(&ctx), true)
            && let Err(err) = self.check_stale_read(store_id, &region, read_ts, now)
        {
            let mut resp = req.response_template();
            set_region_error(&mut resp, *err);
            return Ok(KvAnswer::Ready(resp));
        }
        let req = self.read_as_broken_follower(store_id, &ctx, req);
        let now_secs = self.ttl_now(now);
        let get_key_len = match &req {
            KvRequest::Get(r) => r.key.len(),
            _ => 0,
        };
        let resp = match req {
            KvRequest::RawGet(r) => {
                KvResponse::RawGet(Box::new(self.raw_get(store_id, *r, now_secs)))
            }
            KvRequest::RawBatchGet(r) => {
                KvResponse::RawBatchGet(Box::new(self.raw_batch_get(store_id, *r, now_secs)))
            }
            KvRequest::RawPut(r) => {
                KvResponse::RawPut(Box::new(self.raw_put(store_id, *r, now_secs)))
            }
            KvRequest::RawBatchPut(r) => {
                KvResponse::RawBatchPut(Box::new(self.raw_batch_put(store_id, *r, now_secs)))
            }
            KvRequest::RawDelete(r) => {
                KvResponse::RawDelete(Box::new(self.raw_delete(store_id, *r)))
            }
            KvRequest::RawBatchDelete(r) => {
                KvResponse::RawBatchDelete(Box::new(self.raw_batch_delete(store_id, *r)))
            }
            KvRequest::RawDeleteRange(r) => {
                KvResponse::RawDeleteRange(Box::new(self.raw_delete_range(store_id, *r)))
            }
            KvRequest::RawScan(r) => {
                KvResponse::RawScan(Box::new(self.raw_scan(store_id, *r, now_secs)))
            }
            KvRequest::RawBatchScan(r) => {
                KvResponse::RawBatchScan(Box::new(self.raw_batch_scan(store_id, *r, now_secs)))
            }
            KvRequest::RawGetKeyTtl(r) => {
                KvResponse::RawGetKeyTtl(Box::new(self.raw_get_key_ttl(store_id, *r, now_secs)))
            }
            KvRequest::RawCompareAndSwap(r) => {
                KvResponse::RawCompareAndSwap(Box::new(self.raw_cas(store_id, *r, now_secs)))
            }
            KvRequest::RawChecksum(r) => {
                KvResponse::RawChecksum(Box::new(self.raw_checksum(store_id, *r, now_secs)))
            }
            KvRequest::Get(r) => KvResponse::Get(Box::new(self.kv_get(store_id, *r))),
            KvRequest::BatchGet(r) => {
                KvResponse::BatchGet(Box::new(self.kv_batch_get(store_id, *r)))
            }
            KvRequest::Scan(r) => KvResponse::Scan(Box::new(self.kv_scan(store_id, *r))),
            KvRequest::Prewrite(r) => {
                KvResponse::Prewrite(Box::new(self.kv_prewrite(store_id, *r)))
            }
            KvRequest::Commit(r) => KvResponse::Commit(Box::new(self.kv_commit(store_id, *r))),
            KvRequest::BatchRollback(r) => {
                KvResponse::BatchRollback(Box::new(self.kv_batch_rollback(store_id, *r)))
            }
            KvRequest::Cleanup(r) => KvResponse::Cleanup(Box::new(self.kv_cleanup(store_id, *r))),
            KvRequest::CheckTxnStatus(r) => {
                KvResponse::CheckTxnStatus(Box::new(self.kv_check_txn_status(store_id, *r)))
            }
            KvRequest::CheckSecondaryLocks(r) => KvResponse::CheckSecondaryLocks(Box::new(
                self.kv_check_secondary_locks(store_id, *r),
            )),
            KvRequest::ResolveLock(r) => {
                KvResponse::ResolveLock(Box::new(self.kv_resolve_lock(store_id, *r)))
            }
            KvRequest::TxnHeartBeat(r) => {
                KvResponse::TxnHeartBeat(Box::new(self.kv_txn_heart_beat(store_id, *r)))
            }
            KvRequest::Flush(r) => KvResponse::Flush(Box::new(self.kv_flush(store_id, *r))),
            KvRequest::BufferBatchGet(r) => {
                KvResponse::BufferBatchGet(Box::new(self.kv_buffer_batch_get(store_id, *r)))
            }
            KvRequest::ScanLock(r) => {
                KvResponse::ScanLock(Box::new(self.kv_scan_lock(store_id, *r)))
            }
            KvRequest::PessimisticLock(r) if may_wait => {
                return Ok(self.pessimistic_lock_waiting(store_id, *r, now));
            }
            KvRequest::PessimisticLock(r) => {
                KvResponse::PessimisticLock(Box::new(self.kv_pessimistic_lock(store_id, *r)))
            }
            KvRequest::PessimisticRollback(r) => KvResponse::PessimisticRollback(Box::new(
                self.kv_pessimistic_rollback(store_id, *r),
            )),
            KvRequest::DeleteRange(r) => {
                KvResponse::DeleteRange(Box::new(self.kv_delete_range(store_id, *r)))
            }
            KvRequest::UnsafeDestroyRange(r) => {
                KvResponse::UnsafeDestroyRange(Box::new(self.kv_unsafe_destroy_range(*r)))
            }
            KvRequest::SplitRegion(r) => {
                KvResponse::SplitRegion(Box::new(self.kv_split_region(store_id, *r)))
            }
            // TiKV's `GetHealthFeedback`: this store's feedback, whatever
            // regions it holds.
            KvRequest::GetHealthFeedback(_) => {
                KvResponse::GetHealthFeedback(Box::new(kvrpcpb::GetHealthFeedbackResponse {
                    region_error: None,
                    health_feedback: Some(self.health_feedback(store_id)),
                }))
            }
            // TiKV's `update_txn_status_cache`; the answer has no fields.
            KvRequest::BroadcastTxnStatus(r) => {
                let cache = self.txn_status_caches.entry(store_id).or_default();
                r.txn_status.iter().for_each(|status| cache.apply(status));
                KvResponse::BroadcastTxnStatus(Box::default())
            }
        };
        Ok(KvAnswer::Ready(with_read_details(resp, get_key_len)))
    }

    /// TiKV's `ReadPoolHandle::check_busy_threshold`, which `Storage` runs
    /// for the reads it queues in the read pool (`get`, `batch_get`,
    /// `scan`, `buffer_batch_get` and the raw `get`, `batch_get`, `scan`,
    /// `batch_scan`, `get_key_ttl`; coprocessor requests too, not modelled)
    /// before queueing them, so ahead of every region check and on leaders
    /// and followers alike: with `busy_threshold_ms` set and the pool's
    /// estimated wait above it, the read is refused with a region error
    /// that has only `ServerIsBusy { reason, estimated_wait_ms }` (TiKV
    /// leaves `applied_index` unset and the message empty).
    fn check_busy_threshold(
        &self,
        store_id: u64,
        req: &KvRequest,
        ctx: &kvrpcpb::Context,
    ) -> Option<errorpb::Error> {
        let read_pool = matches!(
            req,
            KvRequest::Get(_)
                | KvRequest::BatchGet(_)
                | KvRequest::Scan(_)
                | KvRequest::BufferBatchGet(_)
                | KvRequest::RawGet(_)
                | KvRequest::RawBatchGet(_)
                | KvRequest::RawScan(_)
                | KvRequest::RawBatchScan(_)
                | KvRequest::RawGetKeyTtl(_)
        );
        if !read_pool || ctx.busy_threshold_ms == 0 {
            return None;
        }
        let wait = *self.read_wait.get(&store_id)?;
        if wait <= std::time::Duration::from_millis(u64::from(ctx.busy_threshold_ms)) {
            return None;
        }
        Some(errorpb::Error {
            server_is_busy: Some(errorpb::ServerIsBusy {
                reason: "estimated wait time exceeds threshold".to_owned(),
                estimated_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// raftstore's proposal checks, in TiKV's order: store id
    /// (`check_store_id`), region present on this store (`RegionNotFound`),
    /// peer id (`check_peer_id`), leadership (`NotLeader`, skipped for reads
    /// with `replica_read`/`stale_read`), then the epoch version
    /// (`check_region_epoch`; normal requests do not check `conf_ver`).
    pub(crate) fn check_region(
        &self,
        store_id: u64,
        ctx: Option<&kvrpcpb::Context>,
        read_only: bool,
    ) -> Result<metapb::Region, Box<errorpb::Error>> {
        let default_ctx = kvrpcpb::Context::default();
        let ctx = ctx.unwrap_or(&default_ctx);
        let peer = ctx.peer.unwrap_or_default();
        if peer.store_id != store_id {
            return Err(Box::new(errorpb::Error {
                message: format!("to store id {}, mine {}", peer.store_id, store_id),
                store_not_match: Some(errorpb::StoreNotMatch {
                    request_store_id: peer.store_id,
                    actual_store_id: store_id,
                }),
                ..Default::default()
            }));
        }
        let region_id = ctx.region_id;
        let Some((region, my_peer)) =
            self.region_by_id(region_id).and_then(|r| r.peer_on(store_id).map(|p| (r, *p)))
        else {
            return Err(Box::new(errorpb::Error {
                message: format!("region {region_id} not found"),
                region_not_found: Some(errorpb::RegionNotFound { region_id }),
                ..Default::default()
            }));
        };
        if peer.id != my_peer.id {
            return Err(Box::new(errorpb::Error {
                message: format!("mismatch peer id {} != {}", peer.id, my_peer.id),
                mismatch_peer_id: Some(errorpb::MismatchPeerId {
                    request_peer_id: peer.id,
                    store_peer_id: my_peer.id,
                }),
                ..Default::default()
            }));
        }
        let follower_read_ok = read_only && (ctx.replica_read || ctx.stale_read);
        // A replica read first asks the leader for a read index (TiKV's
        // `Peer::read_index`); with the leader's store down and no new
        // leader elected the follower knows no leader, and raftstore
        // answers `NotLeader` without a hint.
        let leader_alive = self.stores.get(&region.leader_store).is_some_and(|s| s.running);
        if region.leader_store != store_id && ctx.replica_read && read_only && !leader_alive {
            return Err(Box::new(errorpb::Error {
                message: format!("peer is not leader for region {region_id}, leader may None"),
                not_leader: Some(errorpb::NotLeader { region_id, leader: None }),
                ..Default::default()
            }));
        }
        if region.leader_store != store_id && !follower_read_ok {
            let leader = region.leader();
            return Err(Box::new(errorpb::Error {
                message: format!(
                    "peer is not leader for region {region_id}, leader may {leader:?}"
                ),
                not_leader: Some(errorpb::NotLeader { region_id, leader }),
                ..Default::default()
            }));
        }
        let Some(from) = ctx.region_epoch else {
            return Err(Box::new(errorpb::Error {
                message: "missing epoch!".to_owned(),
                ..Default::default()
            }));
        };
        let current = region.meta.region_epoch.unwrap_or_default();
        if from.version != current.version {
            let mut current_regions = vec![region.meta.clone()];
            self.collect_sibling_regions(region, from.version, &mut current_regions);
            return Err(Box::new(errorpb::Error {
                message: format!(
                    "EpochNotMatch current epoch of region {} is conf_ver: {} version: {}, but you sent conf_ver: {} version: {}",
                    region_id, current.conf_ver, current.version, from.conf_ver, from.version
                ),
                epoch_not_match: Some(errorpb::EpochNotMatch { current_regions }),
                ..Default::default()
            }));
        }
        Ok(region.meta.clone())
    }

    /// raftstore's `collect_sibling_region` with `right_derive_when_split`:
    /// walks left from the region, collecting up to `current - requested`
    /// regions (at most 10, `MAX_REGIONS_IN_ERROR`) that a split may have
    /// produced, so a client with an old epoch learns the new layout.
    fn collect_sibling_regions(
        &self,
        region: &Region,
        requested: u64,
        out: &mut Vec<metapb::Region>,
    ) {
        const MAX_REGIONS_IN_ERROR: usize = 10;
        let mut max_version = region.version();
        if requested >= max_version {
            return;
        }
        let mut collect = max_version - requested;
        let siblings = self.regions.range(..region.meta.start_key.to_vec()).rev();
        for (_, r) in siblings.take(MAX_REGIONS_IN_ERROR) {
            collect -= 1;
            if r.version() >= max_version {
                collect += r.version() - max_version;
                max_version = r.version();
            }
            out.push(r.meta.clone());
            if collect == 0 {
                return;
            }
        }
    }
}

/// True for a learner peer (it never leads, it serves replica reads).
pub(crate) fn is_learner(peer: &metapb::Peer) -> bool {
    peer.role == metapb::PeerRole::Learner as i32
}

/// The region of `regions` (keyed by start key) that contains `key`.
pub(crate) fn containing<'a>(
    regions: &'a BTreeMap<Vec<u8>, Region>,
    key: &[u8],
) -> Option<&'a Region> {
    regions
        .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
        .next_back()
        .map(|(_, r)| r)
        .filter(|r| r.contains(key))
}

/// raftstore's `check_key_in_region` (`[start, end)`).
pub(crate) fn check_key_in_region(
    key: &[u8],
    region: &metapb::Region,
) -> Result<(), Box<errorpb::Error>> {
    let inside =
        key >= &region.start_key[..] && (region.end_key.is_empty() || key < &region.end_key[..]);
    if inside { Ok(()) } else { Err(Box::new(key_not_in_region(key, region))) }
}

/// raftstore's `check_key_in_region_inclusive` (`[start, end]`), used when
/// seeking an iterator (`RegionIterator::should_seekable`).
pub(crate) fn check_key_seekable(
    key: &[u8],
    region: &metapb::Region,
) -> Result<(), Box<errorpb::Error>> {
    let inside =
        key >= &region.start_key[..] && (region.end_key.is_empty() || key <= &region.end_key[..]);
    if inside { Ok(()) } else { Err(Box::new(key_not_in_region(key, region))) }
}

pub(crate) fn key_not_in_region(key: &[u8], region: &metapb::Region) -> errorpb::Error {
    errorpb::Error {
        message: format!(
            "key {} is not in region key range [{}, {}) for region {}",
            hex(key),
            hex(&region.start_key),
            hex(&region.end_key),
            region.id
        ),
        key_not_in_region: Some(errorpb::KeyNotInRegion {
            key: Bytes::copy_from_slice(key),
            region_id: region.id,
            start_key: region.start_key.clone(),
            end_key: region.end_key.clone(),
        }),
        ..Default::default()
    }
}

/// TiKV's `ExecDetailsV2.scan_detail_v2` on point reads: the versions read
/// and their bytes (key + value; `get_key_len` is a `Get`'s key, which its
/// answer does not carry). The model has no engine timings to report, so
/// the time and write details stay empty.
fn with_read_details(mut resp: KvResponse, get_key_len: usize) -> KvResponse {
    let read = |pairs: &mut dyn Iterator<Item = usize>| {
        let (count, bytes) = pairs.fold((0u64, 0u64), |(n, b), size| (n + 1, b + size as u64));
        Some(kvrpcpb::ExecDetailsV2 {
            scan_detail_v2: Some(kvrpcpb::ScanDetailV2 {
                processed_versions: count,
                processed_versions_size: bytes,
                total_versions: count,
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    match &mut resp {
        KvResponse::Get(r) if r.region_error.is_none() && r.error.is_none() => {
            let size = (!r.not_found).then_some(get_key_len + r.value.len());
            r.exec_details_v2 = read(&mut size.into_iter());
        }
        KvResponse::BatchGet(r) if r.region_error.is_none() => {
            let mut sizes =
                r.pairs.iter().filter(|p| p.error.is_none()).map(|p| p.key.len() + p.value.len());
            r.exec_details_v2 = read(&mut sizes);
        }
        _ => {}
    }
    resp
}

/// A follower read rule broken on purpose, for tests that show a checker
/// catches it ([`Cluster::set_follower_read_bug`]). The model's replicas
/// share one copy of the data; a broken follower reads the data as its own
/// applied state held it: what was committed at or below its safe ts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FollowerReadBug {
    /// A follower serves a stale read above its safe ts (no
    /// `DataIsNotReady`) from its applied state.
    StaleAboveSafeTs,
    /// A follower serves a replica read from its applied state without
    /// waiting for the leader's read index to be applied.
    ReplicaReadWithoutReadIndex,
}

impl State {
    /// Store `store_id`'s health feedback: raftstore's slow score, 1
    /// (healthy) to 100. TiKV raises it as its disk inspections time out;
    /// here it is 1 plus the store's added latency in milliseconds
    /// ([`Cluster::set_store_latency`]), capped at 100 (a store 80 ms
    /// slower or more reads as slow). Sequence numbers count feedback
    /// across all stores.
    pub(crate) fn health_feedback(&mut self, store_id: u64) -> kvrpcpb::HealthFeedback {
        let latency = self.store_latency.get(&store_id).copied().unwrap_or_default();
        let slow_score = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX).min(99) + 1;
        self.feedback_seq += 1;
        kvrpcpb::HealthFeedback {
            store_id,
            feedback_seq_no: self.feedback_seq,
            slow_score: slow_score as i32,
        }
    }

    /// [`FollowerReadBug`]: a snapshot read (`Get`, `BatchGet`, `Scan`)
    /// that a broken follower serves reads at its safe ts instead of the
    /// request's ts when that is lower.
    fn read_as_broken_follower(
        &self,
        store_id: u64,
        ctx: &kvrpcpb::Context,
        mut req: KvRequest,
    ) -> KvRequest {
        let broken = match self.follower_read_bug {
            None => false,
            Some(FollowerReadBug::StaleAboveSafeTs) => ctx.stale_read,
            Some(FollowerReadBug::ReplicaReadWithoutReadIndex) => ctx.replica_read,
        };
        // Checked in this order so that a sound cluster pays one match.
        if !broken || self.region_by_id(ctx.region_id).is_none_or(|r| r.leader_store == store_id) {
            return req;
        }
        let applied = self.peer_safe_ts(ctx.region_id, store_id);
        match &mut req {
            KvRequest::Get(r) => r.version = r.version.min(applied),
            KvRequest::BatchGet(r) => r.version = r.version.min(applied),
            KvRequest::Scan(r) => r.version = r.version.min(applied),
            _ => {}
        }
        req
    }
}

/// The read ts of a request TiKV serves as a stale read (client-go sets
/// `stale_read` on these only).
fn stale_read_ts(req: &KvRequest) -> Option<u64> {
    match req {
        KvRequest::Get(r) => Some(r.version),
        KvRequest::BatchGet(r) => Some(r.version),
        KvRequest::Scan(r) => Some(r.version),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Sends `req` to store `store` addressed to the peer there, with
    /// `busy_threshold_ms` and `replica_read` set in its context.
    fn send(
        c: &Cluster,
        store: u64,
        mut req: KvRequest,
        busy_threshold_ms: u32,
        replica_read: bool,
    ) -> KvResponse {
        let region = c.regions()[0].clone();
        let mut ctx = c.context_for(region.id).unwrap();
        ctx.peer = region.peers.iter().find(|p| p.store_id == store).copied();
        ctx.busy_threshold_ms = busy_threshold_ms;
        ctx.replica_read = replica_read;
        *req.context_mut() = ctx;
        c.handle_kv(store, req, Instant::ZERO).expect("the store is up")
    }

    fn raw_get() -> KvRequest {
        kvrpcpb::RawGetRequest { key: "k".into(), ..Default::default() }.into()
    }

    /// The `ServerIsBusy` TiKV's read pool answers with, if that is the
    /// answer.
    fn busy(resp: &KvResponse) -> Option<errorpb::ServerIsBusy> {
        let err = resp.region_error()?;
        let busy = err.server_is_busy.clone()?;
        let only_busy = errorpb::Error { server_is_busy: Some(busy.clone()), ..Default::default() };
        assert_eq!(err, &only_busy, "nothing but ServerIsBusy");
        Some(busy)
    }

    fn served(resp: &KvResponse) -> bool {
        resp.region_error().is_none()
    }

    #[test]
    fn reads_with_a_busy_threshold_below_the_read_wait_are_refused_on_every_replica() {
        let c = Cluster::new(ClusterConfig::default());
        let region = c.regions()[0].clone();
        let leader = c.leader_of(region.id).unwrap().store_id;
        let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
        let put =
            kvrpcpb::RawPutRequest { key: "k".into(), value: "v".into(), ..Default::default() };
        assert!(served(&send(&c, leader, put.clone().into(), 0, false)));
        c.set_store_read_wait(leader, Duration::from_millis(100));
        c.set_store_read_wait(follower, Duration::from_millis(30));
        assert_eq!(c.store_read_wait(leader), Duration::from_millis(100));

        let refused = send(&c, leader, raw_get(), 50, false);
        let err = busy(&refused).expect("a leader read over the threshold is refused");
        assert_eq!(err.estimated_wait_ms, 100);
        assert_eq!(err.reason, "estimated wait time exceeds threshold");
        assert_eq!(err.applied_index, 0);
        // At or above the wait, or without a threshold, the read is served.
        for threshold in [0, 100, 200] {
            let resp = send(&c, leader, raw_get(), threshold, false);
            match &resp {
                KvResponse::RawGet(r) => assert_eq!(&r.value[..], b"v", "{threshold}"),
                other => panic!("{other:?}"),
            }
        }
        // A follower is checked alike: busy above its own wait, idle below.
        assert!(served(&send(&c, follower, raw_get(), 50, true)));
        let err = busy(&send(&c, follower, raw_get(), 20, true)).expect("follower over 20 ms");
        assert_eq!(err.estimated_wait_ms, 30);
        // Ahead of raftstore's checks: a follower read without
        // `replica_read` (NotLeader) is refused by the read pool first.
        assert!(busy(&send(&c, follower, raw_get(), 20, false)).is_some());
        assert!(
            send(&c, follower, raw_get(), 0, false).region_error().unwrap().not_leader.is_some()
        );
        // Writes do not go through the read pool.
        assert!(served(&send(&c, leader, put.into(), 50, false)));
        // Every read-pool command is checked, transactional ones too.
        let txn_reads: [KvRequest; 4] = [
            kvrpcpb::GetRequest { key: "t".into(), version: 10, ..Default::default() }.into(),
            kvrpcpb::BatchGetRequest { keys: vec!["t".into()], version: 10, ..Default::default() }
                .into(),
            kvrpcpb::ScanRequest {
                start_key: "t".into(),
                limit: 1,
                version: 10,
                ..Default::default()
            }
            .into(),
            kvrpcpb::RawScanRequest { start_key: "a".into(), limit: 1, ..Default::default() }
                .into(),
        ];
        for req in txn_reads {
            let name = req.name();
            assert!(busy(&send(&c, leader, req.clone(), 50, false)).is_some(), "{name}");
            assert!(served(&send(&c, leader, req, 0, false)), "{name}");
        }
        let lock = kvrpcpb::ScanLockRequest { max_version: 10, limit: 1, ..Default::default() };
        assert!(served(&send(&c, leader, lock.into(), 50, false)), "scan_lock is not pooled");
        // An idle pool again.
        c.set_store_read_wait(leader, Duration::ZERO);
        assert!(served(&send(&c, leader, raw_get(), 50, false)));
        assert_eq!(c.store_read_wait(leader), Duration::ZERO);
    }
}
