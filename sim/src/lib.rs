//! A simulated TiKV cluster: PD members, stores, regions with leaders, raw
//! storage, MVCC transactional storage, and fault injection.
//!
//! Two faces over one model:
//! - [`Cluster`] is the deterministic model. A simulation calls
//!   [`Cluster::handle_kv`] / [`Cluster::handle_pd`] with typed requests and
//!   the virtual time `now`; nothing reads a clock or OS randomness (the
//!   PRNG is seeded from [`ClusterConfig::seed`]).
//! - `server::SimServer` (feature `server`, on by default) serves the same
//!   cluster over tonic on loopback: one listener per PD member (PD + Keyspace
//!   services) and one per store (Tikv service). Wall-clock time since the
//!   server started is mapped onto the model's [`tikv_core::time::Instant`].
//!   The `tikv-sim` binary wraps it.
//! - `platform` (feature `platform`, on by default) runs applications on
//!   the public clients of `tikv-driver` against the same cluster, on a
//!   virtual-time executor over the seeded world's network and fault model
//!   ([`net`]): `platform::simulate(seed, config, |sim| async move { .. })`.
//! - `join::JoinedCluster` (feature `server`; `tikv-sim --join-pd`) serves
//!   the stores only and joins them to a real PD as TiKV stores do:
//!   bootstrap, `PutStore`, heartbeats, and PD's operators (conf changes,
//!   leader transfers, splits) carried out on the model by the `admin`
//!   module's raftstore rules. What it cannot do towards PD is listed in
//!   `join`'s docs. The in-process PD model stays what the deterministic
//!   world and the unit-level suites use.
//!
//! Semantics follow TiKV and PD (see each module for the functions followed):
//! raftstore's proposal checks and region errors, `Storage::raw_*`, the
//! percolator commands and actions of `src/storage/txn/` (module `txn`, over
//! [`mvcc`]), PD's `grpc_service.go`.
//!
//! # Region errors the model produces by itself
//! - `StoreNotMatch` — the context peer's store id is not this store.
//! - `RegionNotFound` — the store has no peer of the context's region
//!   (unknown id, merged away, or a store that never held it).
//! - `MismatchPeerId` — the context peer id is not this store's peer id.
//! - `NotLeader` with the leader hint — the peer is a follower or learner
//!   (reads with `replica_read`/`stale_read` are served by followers and
//!   learners). A replica read while the leader's store is stopped and no
//!   new leader is elected gets `NotLeader` without a hint (the read index
//!   has no leader to ask).
//! - `DataIsNotReady` — a stale read (`Get`, `BatchGet`, `Scan` with
//!   `stale_read`) on a follower or learner at a ts above that peer's safe
//!   ts (TiKV's `check_stale_read_safe`); the leader serves such a read
//!   itself (TiKV's fallback to a lease read). Each peer's safe ts is its
//!   region's resolved ts (a fresh TSO, held back to the oldest prewrite
//!   lock's start ts, never going back, `max_ts` pushed to it) as of the
//!   last round its store took part in: every peer applies at once, except
//!   on stores made to lag ([`Cluster::set_safe_ts_lagging`]), whose peers
//!   keep their safe ts. With the in-process PD a round is taken when a
//!   stale read or `GetStoreSafeTS` arrives at least 1 s after the last
//!   ([`Cluster::set_resolved_ts_interval`]) rather than on TiKV's own
//!   timer; joined to a real PD, the joined mode's loop takes them. A
//!   stale read does not push `max_ts` (TiKV's `prepare_snap_ctx`), also
//!   when the leader serves it above its safe ts.
//! - `EpochNotMatch` with `current_regions` (the region and its split
//!   siblings, raftstore's `collect_sibling_region`) — stale `version`.
//! - A message-only error `missing epoch!` — context without an epoch.
//! - `KeyNotInRegion` — a key (or a scan's seek key) outside the region.
//!
//! Any other kind (ServerIsBusy, StaleCommand, MaxTimestampNotSynced,
//! ReadIndexNotReady, ProposalInMergingMode, RegionNotInitialized, DiskFull,
//! RecoveryInProgress, FlashbackInProgress/NotPrepared, RaftEntryTooLarge,
//! UndeterminedResult, unknown ones) is injected with
//! [`Cluster::inject_region_error`]; transport failures with
//! [`Cluster::inject_rpc_error`] / [`Cluster::inject_pd_error`] or by stopping
//! a store.
//!
//! # Simplifications (the model differs from TiKV/PD here)
//! - All replicas of a region share one copy of the data and apply instantly:
//!   there is no raft log, no lagging follower, no lost write on leader
//!   change. A store that holds a peer sees the region exactly as it is now
//!   (no follower with an older epoch, no uninitialized peers).
//! - Leader election is instant: stopping a store hands each region it led to
//!   the lowest-id running peer. `transfer_leader` can point a region at a
//!   stopped store to model "leader not yet re-elected".
//! - Raw and transactional commands are executed, and `SplitRegion` (with
//!   the model's own PD the split is applied at once with ids that PD
//!   allocates; joined to a real PD it goes through `AskBatchSplit`);
//!   `DeleteRange` and `UnsafeDestroyRange` act on the transactional data
//!   only (raw data is kept apart, below), and `UnsafeDestroyRange` with an
//!   empty start or end key answers an error where TiKV's assertion stops
//!   the process; pipelined DML's `Flush` (generations, TiKV's
//!   `prewrite_with_generation`) and `BufferBatchGet` (a transaction's own
//!   flushed locks) are executed, and `BroadcastTxnStatus` fills the
//!   store's txn status cache, which the resolved-ts rounds consult for
//!   pipelined locks ([`txn_status_cache`]); coprocessor, GC, import and flashback
//!   entries on a `BatchCommands` stream get their own response type
//!   carrying an error; `GetStoreSafeTS` answers the smallest safe ts of
//!   the store's peers in the key range (0 before the first round).
//! - Every store serves gRPC health (`grpc.health.v1.Health/Check`: SERVING
//!   for the server as a whole, no per-service status, no `Watch`) and a
//!   status address (TiKV's `status-addr`) answering `GET /status` and `GET
//!   /config`; the config holds only `storage.api-version`,
//!   `storage.enable-ttl` and the `server` addresses, not TiKV's full
//!   configuration, and `?full=`, `POST /config`, metrics and the debug
//!   endpoints are not served (404).
//! - Transactions (see [`mvcc`] and the `txn` module): one `max_ts` for the
//!   whole cluster instead of one per TiKV (stronger than TiKV; there is no
//!   `MaxTimestampNotSynced` after a leader change). No latches, no
//!   in-memory pessimistic locks. Lock waiting and deadlock detection are
//!   model state ([`lock_wait`]): [`Cluster::handle_kv_waiting`] parks a
//!   `PessimisticLock` that meets a lock (per-key queues by start ts,
//!   legacy and force-lock wake-up, TiKV's 20 ms delayed wake-up of the
//!   others, `min(wait_timeout, 1 s)` timeouts, one detector for all
//!   regions and stores); [`Cluster::handle_kv`], which the deterministic
//!   world drives, never parks (a lock is answered `KeyIsLocked` at once).
//!   Simplified: detector edges never expire on their own, and a resumed
//!   force-lock waiter keeps its first deadline. Values always live in the
//!   default CF (no short-value inlining); rollback records are all
//!   kept (never collapsed, all protected); no `gc_fence`, no
//!   `last_change`, no txn source, shared locks kept apart from the
//!   exclusive ones (TiKV stores both in the lock CF) and a resumed
//!   force-lock request meeting shares marks them shrink-only as a new
//!   request does (TiKV's resumed one waits without marking), no txn files
//!   (`is_txn_file` ignored), no old values for
//!   CDC. Assertions are checked whenever the level is not `Off` (TiKV's
//!   `Fast` skips them when the previous write is not loaded). `RcCheckTs`
//!   reads are treated as `Rc` (locks ignored). `sample_step` in `Scan` is
//!   ignored. Values returned by `PessimisticLock` are the latest committed
//!   ones. Key errors that TiKV renders with `Debug` (`abort`, `retryable`)
//!   carry a similar but not identical text. Key size limits are not
//!   checked for txn keys.
//! - TTL expiry of a lock follows TiKV's `check_txn_status` exactly:
//!   expired when `physical(lock_ts) + ttl < physical(current_ts)`, with
//!   `current_ts` from the request (tests get one with
//!   [`Cluster::current_ts`]).
//! - API V1 with TTL ([`ClusterConfig::enable_ttl`], TiKV's
//!   `storage.enable-ttl`) is the `V1ttl` storage: raw TTLs and
//!   `RawGetKeyTTL` are served, transactional commands refused. Without it a
//!   V1 cluster rejects nonzero TTLs with TiKV's "ttl is not enabled" text,
//!   and answers `RawGetKeyTTL` with the error "get ttl on non-ttl store"
//!   (TiKV panics there).
//! - `RawBatchPut` ignores the deprecated scalar `ttl` field, as TiKV HEAD does
//!   (only `ttls` is read: none → no TTL, one → for every key).
//! - `for_cas` is accepted and ignored: every command is atomic in the model
//!   anyway (one mutex), so CAS is linearizable with any write.
//! - Keys outside the region are always reported as `KeyNotInRegion` region
//!   errors; TiKV reports some read-side cases through engine errors instead.
//! - Storage errors that TiKV puts in a key error (`RawBatchGet`, scans) carry
//!   the message in `KeyError.abort` (TiKV's wording of the debug form differs).
//! - Raft terms only as numbers PD sees (they rise on every leader change;
//!   `StaleCommand` only by injection). With the simulator's own PD there
//!   are no conf changes after the start (no add/remove peer; `conf_ver`
//!   stays as built); joined to a real PD, conf changes come from PD's operators (peer roles, learners,
//!   joint states as TiKV applies them); with the model's own PD,
//!   [`ClusterConfig::learner_stores`] adds stores (with labels, e.g.
//!   `engine=tiflash`) holding a learner of every initial region. A TiFlash
//!   store is modelled as a store like the others (it answers TiKV
//!   requests as TiKV would), so tests can see whether a client sent it
//!   any ([`Cluster::kv_request_count`]). A replica
//!   read is served from the shared data once the leader's store runs (the
//!   read index always succeeds then). No buckets, no flashback.
//! - The read pool is one number per store, its estimated wait
//!   ([`Cluster::set_store_read_wait`], zero by default), used only by
//!   TiKV's busy-threshold check (reads whose `busy_threshold_ms` is below
//!   it get `ServerIsBusy`); there is no queue, so reads the store accepts
//!   are not delayed by it, and the wait does not grow with load.
//! - TTL time is `(tso_base_ms + now) / 1000` seconds, the same clock as TSO.
//! - TSO: physical time follows the model clock; when the logical counter
//!   would overflow 18 bits the model advances physical by 1 ms instead of
//!   waiting for the next tick; a `count` of 2^18 or more is refused. No
//!   suffix bits, no TSO service split.
//! - PD: no follower handling (followers refuse all but GetMembers and
//!   GetClusterInfo), no forwarding, no rate limits, no heartbeats; a stopped
//!   store stays `Up` in PD. The stale mode freezes the region directory only.
//! - PD's `MetaStorage` (its etcd, over gRPC) serves `Get` only, over an
//!   empty store at revision 1 (no microservice ever registers itself), on
//!   every member.
//! - PD keyspaces: a plain table (DEFAULT, id 0, ENABLED, plus what
//!   [`Cluster::add_keyspace`] adds); keyspace region bounds are not split or
//!   checked, so `LoadKeyspace` answers at once where the real PD answers
//!   `EntryNotFound` until the keyspace's boundaries are split
//!   (`tests/tests/pd_model_vs_real.rs` compares the two after the split).
//! - GC (the `gc` module): PD's GC states per keyspace (txn and GC safe
//!   points, GC barriers with a TTL on the model clock) as PD's
//!   `GCStateManager` keeps them, without global GC barriers, service safe
//!   points or TiDB's min-start-ts keys; a barrier's expiration in a
//!   blocker description is model time. Advancing the GC safe point
//!   collects garbage in the stores at once (TiKV's GC worker polls and its
//!   compaction filter drops versions lazily, so TiKV may still serve some
//!   collected versions for a while); reads below the GC safe point are
//!   served from what is left, as TiKV does (refusing them is the
//!   client's job). [`Cluster::set_gc_safe_points`] sets the unified safe
//!   points directly, without collecting.
//! - PD scatter ([`scatter`]): `ScatterRegion` starts a `scatter-region`
//!   operator per region that finishes after a fixed model time by moving
//!   the region's leader to its next running peer; `GetOperator` reports
//!   it. No placement, no store limits, no groups.
//! - Region boundaries from [`ClusterConfig::split_keys`] and
//!   [`Cluster::split`] are request keys mapped like raw data (identity in V1,
//!   memcomparable in V2), except in a V1 txn cluster
//!   ([`ClusterConfig::v1_txn`]) where they are memcomparable as txn keys
//!   need; [`Cluster::split_region_key`] takes region keys as is. Txn keys are
//!   always memcomparable-encoded in region key space; raw keys are compared
//!   with the boundaries as sent, as TiKV does, so a V1 cluster serves both
//!   key spaces at once (the `tikv-sim` binary always uses memcomparable
//!   boundaries, which client-go's txn mode can decode). Raw and txn data
//!   are kept apart: in TiKV V1 a raw scan of the default CF would also meet
//!   transactional values stored there (values over 255 bytes, under their
//!   encoded key and start ts); here it never does.

// The split rules are the model's in every build; the rest of TiKV's admin
// commands (conf changes, leader transfers, resolved ts) are reached only
// from the joined-PD server, which the deterministic build leaves out.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
mod admin;
pub mod cluster;
pub mod crc64;
mod deadlock;
#[cfg(feature = "server")]
pub mod echo;
mod farmhash;
mod gc;
#[cfg(feature = "server")]
pub mod join;
pub mod lock_wait;
pub mod mvcc;
pub mod net;
mod pd;
#[cfg(feature = "platform")]
pub mod platform;
mod raw;
#[cfg(feature = "server")]
pub mod real_pd;
pub mod scatter;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod tls;
mod txn;
pub mod txn_status_cache;
pub mod world;

pub use admin::DEFAULT_STORE_VERSION;
pub use cluster::{ApiVersion, Cluster, ClusterConfig, Filter, RandomRegionError, SimError};
pub use lock_wait::{KvAnswer, LockWaitToken};
pub use mvcc::{CommitRecord, WriteKind};
pub use txn_status_cache::CachedTxnState;
