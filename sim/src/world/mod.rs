//! The deterministic world: several simulated clients run operations of the
//! real core against one [`Cluster`] over a faulty simulated network, in
//! virtual time, and the run is checked afterwards.
//!
//! Three workloads ([`Workload`]):
//! - **raw**: raw gets, puts, deletes, CAS, batch operations and scans,
//!   checked for per-key linearizability ([`linearizability`]);
//! - **txn**: transactions on the real transactional
//!   machines: a start ts from the simulated PD's TSO, snapshot reads that
//!   resolve the locks they meet, the `Committer` with 2PC, async commit or
//!   1PC as the seed chooses per transaction, and the background commit of
//!   secondaries / cleanup of failed transactions. Bank transfers,
//!   list-append transactions and register puts/inserts/deletes run
//!   concurrently; clients crash mid-commit and leave their locks behind.
//!   Checked for snapshot isolation and the bank invariant ([`si`]), with an
//!   Elle-style list-append checker ([`elle`]), and for liveness (every lock
//!   is resolved in the end);
//! - **pessimistic**: pessimistic transactions (`pess_workload`): locked
//!   bank transfers and counter increments that lock with `get_for_update`
//!   before they write, waiting, waiting with a timeout or not at all, in
//!   orders that deadlock; bank reads; clients that crash holding
//!   pessimistic locks. Lock requests that meet a lock wait in the
//!   cluster's lock manager ([`crate::lock_wait`]): the world parks them,
//!   advances their timeouts and delayed wake-ups on its clock, and sends
//!   their answers (woken, timed out, deadlock) back over the network; a
//!   wait whose caller gave up (its deadline passed, the call ended, the
//!   client crashed) is cancelled, as a closed gRPC call is. Checked for
//!   snapshot isolation with the pessimistic guarantee ([`si`]), the bank
//!   invariant, lost updates and deadlock victims ([`pessimistic`]), and
//!   liveness (no lock and no parked request left after the audit).
//! - **gc**: the transactional workload plus a GC client
//!   (`gc_workload`): GC rounds on the real `Gc` machine while the others
//!   transact and crash, readers at old timestamps that check the txn safe
//!   point first, and `delete_range` over a scratch range. Checked for no
//!   committed data at or above a safe point lost, no lock at or below it
//!   left after a round, readers below the txn safe point refused and the
//!   others served the committed data, and an empty range after
//!   `delete_range`; then as the transactional world.
//!
//! One seeded generator ([`Rng`]) decides everything; one event queue
//! ordered by `(instant, sequence number)` holds every pending delivery,
//! deadline, timer and fault; time jumps to the next event. Nothing reads a
//! clock, spawns a thread or iterates a hash map, so a seed replays
//! byte for byte ([`run`] twice gives the same [`Report::trace`]).
//!
//! What the world does to messages (all drawn from the seed's [`Plan`]):
//! - every RPC an operation emits travels to its server with a latency of
//!   `min + uniform(jitter)` plus, with a small chance, a slow tail (so
//!   messages reorder unless the jitter is zero);
//! - requests may be lost before the server sees them, and responses lost
//!   *after* the server applied the request: the client then gets
//!   `DeadlineExceeded`, and that is how undetermined outcomes arise;
//! - responses may arrive twice (the operation must ignore the second);
//! - partitions cut a client from a store or a PD member for a while;
//! - the world enforces each RPC's deadline: an RPC not answered by then is
//!   fed `RpcError::DeadlineExceeded`, exactly once, and a later answer is
//!   discarded. A server refuses a request that reaches it after its
//!   deadline (gRPC propagates deadlines), so a write can only take effect
//!   before its deadline;
//! - faults from the plan: split, merge, leader transfer, store down and
//!   back, busy store (`ServerIsBusy`), slow store (its answers leave 20 to
//!   300 ms late for a while, and the health feedback they carry reports
//!   it, so the clients' views mark the store slow as client-go's do), PD
//!   leader change, stale PD, and the partitions above. At [`Plan::heal_at`] everything heals and the network
//!   turns reliable (latency stays); once the clients' store probes had
//!   time to find healed stores again ([`QUIET_GRACE`]), they run a few more
//!   operations (the quiescence phase), which must succeed;
//! - (txn) a client may crash while one of its transactions commits: after
//!   a seeded number of further inputs (so after some prewrites, after the
//!   primary's commit, during the secondaries or during an async commit), or
//!   right at the commit point before any secondary is sent. Its machines
//!   are dropped, requests already on the wire still arrive, and the client
//!   restarts with empty caches. The transaction is undetermined.
//!
//! Transactional quiescence: after the heal, once every client finished its
//! transactions and every lock's TTL has passed, each client runs
//! [`QUIET_OPS`] reads of every key (they resolve what crashed and
//! undetermined transactions left). Then the audit: the clock jumps past
//! every TTL, a fresh client reads every key, the locks no read meets (a
//! `LockKeys` lock) are resolved as GC's lock resolution would, and the
//! lock CF must be empty.
//!
//! Checks after the run ([`Report::violations`]): the workload's checkers
//! and liveness (every operation ends within its bound, quiescence
//! operations succeed within [`QUIET_BOUND`], no operation stalls).
//!
//! - **pipelined**: the transactional workload with pipelined DML
//!   transactions beside it (`pipelined_workload`): several flushed
//!   generations each, reads of their own writes through memory and
//!   `BufferBatchGet`, the primary's commit then the flushed range's
//!   resolution, clients crashing mid-flush, after the primary's commit and
//!   during the resolution. Checked for atomicity (all or nothing committed
//!   and visible), then as the transactional world.
//!
//! Deliberately broken worlds ([`Bug`]) prove the checkers can fail.

pub mod elle;
pub mod faults;
pub(crate) mod gc_workload;
pub mod history;
pub mod linearizability;
mod own_reads;
pub(crate) mod pess_workload;
pub mod pessimistic;
pub(crate) mod pipelined_workload;
pub mod si;
pub mod txn_history;
pub(crate) mod txn_workload;
pub(crate) mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use tikv_core::codec::{ApiCodec, Mode};
use tikv_core::config::{BackoffBudgets, Config};
use tikv_core::error::Error;
use tikv_core::lock::{Lock, ResolveLocks, ResolveOptions};
use tikv_core::pd::{
    DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT, PdState, Timestamp, TsoBatcher, TsoRoundCallers, TsoRoundEnd,
};
use tikv_core::raw::RawOptions;
use tikv_core::rng::Rng;
use tikv_core::route::store_health::{HEALTH_CHECK_INTERVAL, ProbeStores, on_health_feedback};
use tikv_core::rpc::{
    KvRequest, KvResponse, PdRequest, PdResponse, Request, Response, Rpc, RpcError, RpcId, Target,
};
use tikv_core::time::{Duration, Instant};
use tikv_core::txn::commit::CommitOptions;
use tikv_core::view::ClusterView;
use tikv_proto::kvrpcpb::HealthFeedback;

use crate::mvcc::SharedLockFlaw;
use crate::net::{Endpoint, Network, Recovery};
use crate::{Cluster, ClusterConfig, KvAnswer, LockWaitToken, WriteKind};
pub use faults::{Fault, PD_MEMBERS, Plan, Swarm, TxnParams};
pub use gc_workload::GcStats;
use gc_workload::GcWorld;
use history::{
    Entry, History, KeyId, OkValue, OpKind, Outcome, Val, key_bytes, parse_key, parse_value,
};
pub use pipelined_workload::PipeStats;
use txn_history::{Micro, TxnHistory, TxnKind, TxnOutcome, parse_list, parse_list_value};
use txn_workload::{TxnProgram, TxnSpec};
use workload::{Finished, OracleWaiter, SimOp};

/// Every raw operation must end (success or typed error) within this much
/// virtual time of its invocation. The raw backoff budget is 40 s of sleep
/// (client-go's 20 s at weight 2); RPC waits come on top of it.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(120);
/// Quiet operations must succeed within this much time.
pub const QUIET_BOUND: Duration = Duration::from_secs(30);
/// Quiet operations each client runs.
pub const QUIET_OPS: usize = 2;
/// Raw operations must succeed (the quiet check) from this long after the
/// heal: a store a client found unreachable during the faults stays so
/// until its next probe round (one every [`HEALTH_CHECK_INTERVAL`], each
/// probe with the same deadline), and until then a request whose replicas
/// are all out of reach backs off `BoRegionMiss` as client-go's does, which
/// the worlds' small budgets need not outlast.
pub const QUIET_GRACE: Duration = HEALTH_CHECK_INTERVAL.saturating_mul(2);
/// The run is cut off (a liveness failure) this long after the heal.
const HARD_STOP: Duration = Duration::from_secs(900);
/// The transactional world waits for clients and lock TTLs after the heal.
const TXN_HARD_STOP: Duration = Duration::from_secs(3600);
/// And after this many events.
const MAX_EVENTS: u64 = 5_000_000;

/// Which workload a world runs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// Raw key-value operations, checked for linearizability.
    #[default]
    Raw,
    /// Transactions, checked for snapshot isolation, the bank invariant and
    /// list-append anomalies.
    Txn,
    /// Pessimistic transactions with lock waiting and deadlocks, checked
    /// for snapshot isolation with the pessimistic guarantee, the bank
    /// invariant, lost updates and deadlock victims ([`pessimistic`]).
    Pessimistic,
    /// The transactional workload with GC rounds, readers at old
    /// timestamps and `delete_range` running beside it, checked for what
    /// GC must keep, resolve, refuse and delete, and as [`Workload::Txn`].
    Gc,
    /// The transactional workload with pipelined DML transactions beside
    /// it, checked for their atomicity and as [`Workload::Txn`].
    Pipelined,
}

/// A deliberately broken world, to show the checkers catch real bugs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Raw: a store applies some raw puts but answers them with an error,
    /// so the client reports a definite failure for a write that happened.
    PutAppliedButReportedFailed,
    /// Raw: stores answer raw gets from a copy of the data taken early in
    /// the run.
    StaleReads,
    /// Txn: 2PC commits the secondaries before the primary (the commit
    /// point), so a transaction whose primary then fails is half committed.
    SecondariesBeforePrimary,
    /// Txn: snapshot reads skip lock resolution and read through locks
    /// (read-committed isolation), missing commits not yet resolved.
    ReadThroughLocks,
    /// Txn: a transaction is reported committed as soon as the primary's
    /// `Commit` is sent, before TiKV confirmed it.
    SuccessBeforePrimaryCommit,
    /// Pessimistic: a transaction reads its keys at its start ts before
    /// locking them and computes its writes from those reads instead of
    /// the values the locks returned.
    ReadBeforeLock,
    /// Pessimistic: when TiKV answers a deadlock to the request that closed
    /// a cycle, the world also fails the other members' parked waits with
    /// it, so one cycle has several victims.
    DeadlockBothVictims,
    /// Pessimistic: a store grants a shared lock over another
    /// transaction's exclusive lock.
    ShareOverExclusive,
    /// Pessimistic: a store grants an exclusive lock over other
    /// transactions' shared locks.
    ExclusiveOverShares,
    /// Pessimistic: a shared holder's commit writes its record but leaves
    /// its share on the key.
    CommitKeepsShare,
    /// GC: the stores collect garbage up to the current time instead of
    /// the GC safe point, dropping versions reads above it still need.
    GcCollectsPastSafePoint,
    /// GC: readers at old timestamps skip the txn safe point check and
    /// read whatever GC left.
    SkipVisibilityCheck,
    /// GC: the GC client's `ScanLock` answers come back without their
    /// locks, so rounds resolve nothing.
    ScanLockMissesLocks,
    /// GC: `DeleteRange` beyond the range's first region is acknowledged
    /// but not applied.
    DeleteRangeNotApplied,
    /// Pipelined: the committed transaction's flushed range is resolved
    /// at a commit ts later than the primary's.
    PipelinedResolvesAtTheWrongTs,
    /// Pipelined: the second generation is reported flushed without being
    /// sent.
    PipelinedSkipsAGeneration,
    /// Pipelined: stores refuse every `ResolveLock` of a pipelined
    /// transaction, so nobody can resolve its locks.
    PipelinedResolveRefused,
    /// Pipelined: a transaction is reported committed as soon as its
    /// primary's `Commit` is sent, before TiKV answered.
    PipelinedCommittedBeforeThePrimary,
}

impl Bug {
    /// The workload the broken variant applies to.
    pub fn workload(self) -> Workload {
        match self {
            Bug::PutAppliedButReportedFailed | Bug::StaleReads => Workload::Raw,
            Bug::SecondariesBeforePrimary
            | Bug::ReadThroughLocks
            | Bug::SuccessBeforePrimaryCommit => Workload::Txn,
            Bug::ReadBeforeLock
            | Bug::DeadlockBothVictims
            | Bug::ShareOverExclusive
            | Bug::ExclusiveOverShares
            | Bug::CommitKeepsShare => Workload::Pessimistic,
            Bug::GcCollectsPastSafePoint
            | Bug::SkipVisibilityCheck
            | Bug::ScanLockMissesLocks
            | Bug::DeleteRangeNotApplied => Workload::Gc,
            Bug::PipelinedResolvesAtTheWrongTs
            | Bug::PipelinedSkipsAGeneration
            | Bug::PipelinedResolveRefused
            | Bug::PipelinedCommittedBeforeThePrimary => Workload::Pipelined,
        }
    }
}

/// How to run one world.
#[derive(Clone, Debug, Default)]
pub struct WorldConfig {
    /// The seed: decides the plan (unless given) and every choice in the run.
    pub seed: u64,
    /// Record a readable trace in [`Report::trace`].
    pub trace: bool,
    /// Break the world on purpose (its workload must be [`Bug::workload`]).
    pub bug: Option<Bug>,
    /// Use this plan instead of drawing one from the seed (fuzzing). A plan
    /// with [`Plan::txn`] runs the transactional workload.
    pub plan: Option<Plan>,
    /// The workload (when the plan is drawn from the seed).
    pub workload: Workload,
}

impl WorldConfig {
    /// A raw-workload config for `seed` with everything else default.
    pub fn seed(seed: u64) -> WorldConfig {
        WorldConfig { seed, ..WorldConfig::default() }
    }

    /// A transactional-workload config for `seed`.
    pub fn txn(seed: u64) -> WorldConfig {
        WorldConfig { seed, workload: Workload::Txn, ..WorldConfig::default() }
    }

    /// A pessimistic-workload config for `seed`.
    pub fn pess(seed: u64) -> WorldConfig {
        WorldConfig { seed, workload: Workload::Pessimistic, ..WorldConfig::default() }
    }

    /// A GC-workload config for `seed`.
    pub fn gc(seed: u64) -> WorldConfig {
        WorldConfig { seed, workload: Workload::Gc, ..WorldConfig::default() }
    }

    /// A pipelined-workload config for `seed`.
    pub fn pipelined(seed: u64) -> WorldConfig {
        WorldConfig { seed, workload: Workload::Pipelined, ..WorldConfig::default() }
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// RPCs emitted by operations.
    pub rpcs: u64,
    /// Operations (raw) or transactions (txn) run.
    pub ops: usize,
    /// Successful operations / committed transactions.
    pub ok: usize,
    /// Definitely failed operations / transactions.
    pub failed: usize,
    /// Undetermined operations / transactions.
    pub undetermined: usize,
    /// Faults applied.
    pub faults: usize,
    /// Client crashes (txn).
    pub crashes: usize,
    /// Locks the audit found left behind and resolved as GC would (txn:
    /// `LockKeys` locks, which no read meets).
    pub swept_locks: usize,
    /// Lock-resolution RPCs sent (`CheckTxnStatus`, `CheckSecondaryLocks`,
    /// `ResolveLock`).
    pub resolver_rpcs: u64,
    /// `CheckSecondaryLocks` RPCs sent (async-commit recovery).
    pub secondary_checks: u64,
    /// Timestamp needs of operations, answered by their client's oracle.
    pub timestamp_needs: u64,
    /// `Tso` rounds the oracles sent, and those of them that served more
    /// than one need at once (batching).
    pub tso_rounds: (u64, u64),
    /// Transactions undetermined because their client crashed mid-commit
    /// that were found (committed, rolled back or never written) at the end.
    pub crashed_resolved: (usize, usize),
    /// (pessimistic) Lock requests parked in TiKV's lock manager.
    pub lock_waits: u64,
    /// (pessimistic) Transactions that failed as a deadlock's victim.
    pub deadlocks: usize,
    /// (pessimistic) Locks fair locking took over a newer write
    /// (`LockedWithConflict`).
    pub locked_with_conflict: usize,
    /// (pessimistic) Transactions whose client crashed while they held
    /// pessimistic locks (before committing): those whose locks other
    /// clients resolved during the run, and those with locks left for the
    /// audit's sweep (on keys nobody locked again).
    pub crashed_lock_holders: (usize, usize),
    /// (pessimistic) Lock calls that gave up waiting
    /// (`LockWaitTimeout`, `LockAcquireFailAndNoWaitSet`).
    pub lock_wait_failures: usize,
    /// (pessimistic) The most transactions seen sharing one key's lock at
    /// once.
    pub shared_lock_peak: usize,
    /// Requests a store forwarded to the store at their
    /// `tikv-forwarded-host` for a client cut off from it.
    pub forwarded: u64,
    /// Answers a slow store sent late ([`Fault::StoreLatency`]).
    pub late_answers: u64,
    /// Times TiKV's health feedback turned a client's view of a store slow
    /// (its slow score at client-go's threshold of 80).
    pub slow_marks: u64,
    /// Virtual time at the end of the run.
    pub end: Instant,
    /// Longest operation.
    pub max_op: Duration,
    /// Keys whose linearizability search was cut off.
    pub unknown_keys: usize,
    /// (gc) What the GC client did.
    pub gc: GcStats,
    /// (pipelined) What the pipelined transactions did.
    pub pipelined: PipeStats,
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The workload it ran.
    pub workload: Workload,
    /// The plan it ran.
    pub plan: Plan,
    /// Every raw operation (raw workload).
    pub history: History,
    /// Every transaction (txn workload).
    pub txn_history: TxnHistory,
    /// Checker failures (the workload's checkers, final state, liveness).
    pub violations: Vec<String>,
    /// Counters.
    pub stats: Stats,
    /// The readable trace (empty unless [`WorldConfig::trace`]).
    pub trace: String,
}

impl Report {
    /// True when no checker failed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A failure message naming the seed, the plan and the violations.
    pub fn failure(&self) -> String {
        let test = match self.workload {
            Workload::Raw => "seeds_pass",
            Workload::Txn => "txn_seeds_pass",
            Workload::Pessimistic => "pess_seeds_pass",
            Workload::Gc => "gc_seeds_pass",
            Workload::Pipelined => "pipelined_seeds_pass",
        };
        format!(
            "simulation failed ({:?} workload): rerun with TIKV_SIM_SEED={} \
             (cargo test -p tikv-tests --test simulation {test} -- --nocapture)\n{}\n{}",
            self.workload,
            self.seed,
            self.plan,
            self.violations.join("\n")
        )
    }
}

/// Whether the clients of seed `seed`'s drawn plan forward
/// ([`Swarm::forwarding`]; half of the seeds). Drawn from a stream of its
/// own so that the seed's other draws do not depend on it.
pub fn draws_forwarding(seed: u64) -> bool {
    const FORWARDING_STREAM: u64 = 0xf0a2_d1f6_0000_0001;
    Rng::new(seed ^ FORWARDING_STREAM).gen_ratio(1, 2)
}

/// Runs one world to the end and checks it.
pub fn run(cfg: WorldConfig) -> Report {
    let mut rng = Rng::new(cfg.seed);
    let workload = cfg.bug.map_or(cfg.workload, Bug::workload);
    let plan = match cfg.plan.clone() {
        Some(p) => p,
        None => {
            let mut plan = match workload {
                Workload::Txn | Workload::Gc => Plan::draw_txn(&mut rng),
                Workload::Pipelined => pipelined_workload::draw_plan(&mut rng),
                Workload::Pessimistic => Plan::draw_pess(&mut rng),
                Workload::Raw => Plan::draw(&mut rng),
            };
            plan.draw_own_streams(cfg.seed);
            plan
        }
    };
    let mut world = World::new(cfg, plan, rng);
    world.run();
    if world.txn.is_some() {
        world.audit();
    }
    world.finish()
}

enum Event {
    /// The client starts its next operation.
    Issue(usize),
    /// A request reaches its server.
    Arrive { client: usize, op: u64, rpc: Rpc },
    /// A response reaches its client.
    Respond {
        client: usize,
        op: u64,
        id: RpcId,
        result: Result<Response, RpcError>,
        duplicate: bool,
        /// The serving store's health feedback, which TiKV carries on its
        /// `BatchCommands` answers.
        feedback: Option<HealthFeedback>,
    },
    /// An RPC's deadline.
    Deadline { client: usize, op: u64, id: RpcId },
    /// An operation's timer.
    Timer { client: usize, op: u64 },
    /// A planned fault strikes.
    Fault(Fault),
    /// A fault ends (a store comes back, a partition heals, PD catches up).
    Recover(Recovery),
    /// Take the stale copy for [`Bug::StaleReads`].
    StaleCopy,
    /// Everything heals; quiescence begins.
    HealAll,
    /// (txn) Every client is done and every lock expired: quiescence reads.
    QuietStart,
    /// The client's oracle sends rounds for its waiting timestamp needs.
    OracleRounds(usize),
    /// (pessimistic) A lock-wait timeout or delayed wake-up is due.
    LockWaits,
}

/// A `PessimisticLock` request parked in the cluster's lock manager: whose
/// it is, so its answer goes back over the network when it comes.
struct Parked {
    client: usize,
    op: u64,
    id: RpcId,
    endpoint: Endpoint,
    /// The store whose lock manager holds it.
    store: u64,
    start_ts: u64,
}

struct Flight {
    deadline: Instant,
    write: bool,
}

/// What a task's history entry is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Task {
    /// A raw operation (index into [`Report::history`]).
    Raw,
    /// A transaction (index into [`Report::txn_history`]).
    Txn,
    /// The audit's lock sweep.
    Sweep,
    /// A task of the GC world's GC client (`gc_workload`).
    Gc,
    /// A round of the client's timestamp oracle (no history entry).
    TsoRound,
    /// A round of the process's store health probes (no history entry).
    Probe,
}

struct Running {
    /// Global operation number (events of finished operations are ignored).
    seq: u64,
    task: Task,
    entry: usize,
    op: Box<dyn SimOp>,
    inflight: BTreeMap<RpcId, Flight>,
    timer_at: Option<Instant>,
    unacked: u32,
    effect_until: Instant,
    /// The result was taken; the task is now a background tail.
    reported: bool,
    /// A crash was considered for this transaction's commit.
    crash_drawn: bool,
    /// The latest deadline of the RPCs it sent: none lands after it.
    last_deadline: Instant,
}

/// When a client crashes (txn).
#[derive(Copy, Clone, Debug)]
struct CrashPlan {
    /// After this many more inputs to the client's tasks.
    after_inputs: u32,
    /// Or right when its transaction reports committed, before the
    /// secondaries are sent.
    at_commit_point: bool,
}

struct Client {
    /// Shared by the clients of one process.
    view: Arc<ClusterView>,
    /// The first client of this client's process.
    process: usize,
    /// On a process's first client: answers the timestamp needs
    /// ([`Target::Oracle`]) of every operation of the process, as the
    /// driver's TSO task does: the same core batcher, its rounds sent to
    /// the simulated PD over the simulated network (as tasks of this
    /// client). `None` on the other clients, and while the world borrows it.
    oracle: Option<TsoBatcher<OracleWaiter>>,
    running: Option<Running>,
    /// Tasks whose result was reported that still work (secondaries).
    tails: Vec<Running>,
    issued: usize,
    crash: Option<CrashPlan>,
    /// On a process's first client: when its next store health probe round
    /// may start (the driver's prober runs one every second).
    next_probe_at: Instant,
}

/// The transactional world's state.
struct TxnWorld {
    params: TxnParams,
    history: TxnHistory,
    next_value: u32,
    phase: TxnPhase,
    /// Index of the audit client in `World::clients`.
    auditor: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum TxnPhase {
    /// Before the heal.
    Active,
    /// Healed; waiting for clients to finish and locks to expire.
    Settling,
    /// Quiescence reads.
    Quiet,
    /// The final audit.
    Audit,
}

struct World {
    seed: u64,
    workload: Workload,
    /// (pessimistic) Parked lock requests, and when the lock manager next
    /// has a timeout or delayed wake-up due.
    parked: BTreeMap<LockWaitToken, Parked>,
    /// (pessimistic) The shared-lock rules, watched after every request.
    shared_locks: pessimistic::SharedLockMonitor,
    lock_wait_timer: Option<Instant>,
    rng: Rng,
    now: Instant,
    queue: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    cluster: Cluster,
    plan: Plan,
    opts: RawOptions,
    clients: Vec<Client>,
    history: History,
    txn: Option<TxnWorld>,
    /// (gc) The GC client and its checks' state.
    gc: Option<GcWorld>,
    /// (pipelined) The pipelined transactions' records.
    pipe: Option<pipelined_workload::PipeWorld>,
    /// Message fates, partitions and faults.
    net: Network,
    trace: Option<String>,
    bug: Option<Bug>,
    stale: Option<BTreeMap<Vec<u8>, Vec<u8>>>,
    next_value: Val,
    recent: Vec<(KeyId, Val)>,
    next_op: u64,
    violations: Vec<String>,
    stats: Stats,
}

fn is_write(req: &Request) -> bool {
    matches!(
        req,
        Request::Kv(
            KvRequest::RawPut(_)
                | KvRequest::RawBatchPut(_)
                | KvRequest::RawDelete(_)
                | KvRequest::RawBatchDelete(_)
                | KvRequest::RawCompareAndSwap(_)
                | KvRequest::RawDeleteRange(_)
        )
    )
}

fn summarize(result: &Result<Response, RpcError>) -> String {
    match result {
        Err(e) => format!("error: {e}"),
        Ok(Response::Pd(r)) => match r.pd_error() {
            Some(e) => format!("{} pd error: {}", r.name(), e.message),
            None => format!("{} ok", r.name()),
        },
        Ok(Response::Kv(r)) => match r.region_error() {
            Some(e) => format!("{} region error: {}", r.name(), e.message),
            None => format!("{} ok", r.name()),
        },
        Ok(Response::Timestamp(ts)) => format!("timestamp {ts}"),
        Ok(Response::StoreSafeTs(r)) => format!("safe ts {}", r.safe_ts),
        Ok(Response::HealthCheck(r)) => format!("health {:?}", r.status()),
    }
}

/// Definite failures: the server refused the command itself, or the client
/// refused to send it. Anything else may hide an applied write.
pub(crate) fn is_definite(e: &Error) -> bool {
    matches!(
        e,
        Error::Server(_)
            | Error::KeyError(_)
            | Error::InvalidArgument(_)
            | Error::ScanLimitExceeded { .. }
            | Error::Unsupported(_)
    )
}

/// How long a transaction may take: three times the backoff budgets of
/// the phases it can go through (TSO, read, TSO for async commit/1PC,
/// prewrite, TSO for the commit ts, the primary's commit), since RPC
/// waits come on top of the sleeps, as for raw operations.
pub(crate) fn txn_liveness_bound(params: &TxnParams, pessimistic: bool) -> Duration {
    let config = Config::default();
    let b = scaled_budgets(params.budget_permille);
    let read = b.get.max(b.batch_get).max(b.scan);
    let sum = 3 * b.tso + read + b.prewrite + b.commit;
    let bound = config.budget(sum) * 3 + Duration::from_secs(30);
    if !pessimistic {
        return bound;
    }
    // Lock calls wait for other transactions' locks, a crashed
    // client's until their TTL (20 s past their transaction's age)
    // runs out, and several calls, each with a TSO round.
    let lock_ttl = Duration::from_millis(tikv_core::txn::commit::MAX_LOCK_TTL);
    bound + config.budget(b.pessimistic_lock) * 3 + lock_ttl * 4
}

/// client-go's transactional backoff budgets scaled to `permille`.
pub(crate) fn scaled_budgets(permille: u64) -> BackoffBudgets {
    let s = |x: Duration| x * permille as u32 / 1000;
    let mut b = BackoffBudgets::default();
    for budget in [
        &mut b.tso,
        &mut b.get,
        &mut b.batch_get,
        &mut b.scan,
        &mut b.prewrite,
        &mut b.commit,
        &mut b.commit_secondary,
        &mut b.cleanup,
        &mut b.txn_heartbeat,
        &mut b.get_txn_status,
        &mut b.async_resolve_lock,
        &mut b.locate_region,
        &mut b.pessimistic_lock,
        &mut b.pessimistic_rollback,
    ] {
        *budget = s(*budget);
    }
    b
}

impl World {
    fn new(cfg: WorldConfig, plan: Plan, mut rng: Rng) -> World {
        let swarm = &plan.swarm;
        let txn_keys = plan.txn.as_ref().map(|t| t.keys);
        let split_keys = match txn_keys {
            Some(k) => swarm.splits.iter().map(|&i| k.key(i).into_bytes()).collect(),
            None => swarm.splits.iter().map(|&k| key_bytes(k)).collect(),
        };
        let cluster = Cluster::new(ClusterConfig {
            stores: swarm.stores,
            split_keys,
            seed: rng.next_u64(),
            pd_members: PD_MEMBERS,
            v1_txn: txn_keys.is_some(),
            ..ClusterConfig::default()
        });
        let pd_urls: Vec<String> =
            (0..PD_MEMBERS).map(|i| format!("http://pd-{i}.sim:2379")).collect();
        let txn_budgets = plan.txn.as_ref().map(|t| scaled_budgets(t.budget_permille));
        let workload = cfg.bug.map_or(cfg.workload, Bug::workload);
        let timeout = rpc_timeout(workload);
        // Transactional clients run in processes of one to three, which
        // share a view and a timestamp oracle as the transactions of one
        // application share its client: their timestamp needs meet in the
        // oracle's rounds (pipelined 1, 2 or 4 deep), and a crash takes
        // the whole process down.
        let mut clients: Vec<Client> = Vec::with_capacity(swarm.clients + 1);
        while clients.len() < swarm.clients {
            let (size, depth) = match plan.txn {
                Some(_) => (1 + rng.gen_range(0, 3) as usize, 1 << rng.gen_range(0, 3)),
                None => (1, DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT),
            };
            let seed = rng.next_u64();
            let view = new_view(&pd_urls, seed, swarm, txn_budgets.clone(), depth, timeout);
            let lead = clients.len();
            for _ in 0..size.min(swarm.clients - lead) {
                clients.push(Client::new(view.clone(), lead));
            }
        }
        let txn = plan.txn.clone().map(|params| {
            // The auditor: a fresh client with client-go's budgets.
            let seed = rng.next_u64();
            let budgets = Some(BackoffBudgets::default());
            let view =
                new_view(&pd_urls, seed, swarm, budgets, DEFAULT_TSO_MAX_ROUNDS_IN_FLIGHT, timeout);
            clients.push(Client::new(view, clients.len()));
            TxnWorld {
                params,
                history: TxnHistory::default(),
                next_value: 0,
                phase: TxnPhase::Active,
                auditor: clients.len() - 1,
            }
        });
        let flaw = match cfg.bug {
            Some(Bug::ShareOverExclusive) => Some(SharedLockFlaw::ShareOverExclusive),
            Some(Bug::ExclusiveOverShares) => Some(SharedLockFlaw::ExclusiveOverShares),
            Some(Bug::CommitKeepsShare) => Some(SharedLockFlaw::CommitKeepsShare),
            _ => None,
        };
        if let Some(flaw) = flaw {
            cluster.break_shared_locks(flaw);
        }
        let net = Network::new(plan.swarm.clone(), pd_urls);
        let mut world = World {
            seed: cfg.seed,
            workload,
            parked: BTreeMap::new(),
            shared_locks: pessimistic::SharedLockMonitor::default(),
            lock_wait_timer: None,
            rng,
            now: Instant::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            cluster,
            plan,
            opts: RawOptions::default().with_atomic(true),
            clients,
            history: History::default(),
            txn,
            gc: None,
            pipe: None,
            net,
            trace: cfg.trace.then(String::new),
            bug: cfg.bug,
            stale: None,
            next_value: 0,
            recent: Vec::new(),
            next_op: 0,
            violations: Vec::new(),
            stats: Stats::default(),
        };
        if world.trace.is_some() {
            let header = format!("seed {}\n{}", world.seed, world.plan);
            world.log(header);
        }
        for c in 0..world.plan.swarm.clients {
            let start = Instant::ZERO + world.rng.gen_duration(world.plan.swarm.think);
            world.schedule(start, Event::Issue(c));
        }
        if workload == Workload::Gc {
            world.add_gc_client(timeout);
        }
        for (at, fault) in world.plan.faults.clone() {
            world.schedule(at, Event::Fault(fault));
        }
        world.schedule(world.plan.heal_at, Event::HealAll);
        if world.bug == Some(Bug::StaleReads) {
            let at = Instant::ZERO + (world.plan.heal_at - Instant::ZERO) / 4;
            world.schedule(at, Event::StaleCopy);
        }
        world
    }

    fn log(&mut self, line: impl AsRef<str>) {
        if let Some(t) = &mut self.trace {
            let _ = writeln!(t, "{} {}", self.now, line.as_ref());
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), event);
    }

    fn chance(&mut self, permille: u64) -> bool {
        self.net.chance(&mut self.rng, permille)
    }

    fn hard_stop(&self) -> Instant {
        self.plan.heal_at + if self.txn.is_some() { TXN_HARD_STOP } else { HARD_STOP }
    }

    fn run(&mut self) {
        let stop_at = self.hard_stop();
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = at;
            self.stats.events += 1;
            if at > stop_at || self.stats.events > MAX_EVENTS {
                self.violations.push(format!(
                    "liveness: the run did not quiesce (stopped at {at} after {} events)",
                    self.stats.events
                ));
                self.queue.clear();
                break;
            }
            self.handle(event);
        }
        self.stats.end = self.now;
        for (i, c) in self.clients.iter().enumerate() {
            if let Some(r) = &c.running {
                let what = match r.task {
                    Task::Raw => self.history.entries[r.entry].kind.to_string(),
                    _ => "a transaction".into(),
                };
                self.violations
                    .push(format!("liveness: client {i} op{} ({what}) never finished", r.entry));
            }
            for t in &c.tails {
                self.violations.push(match t.task {
                    Task::TsoRound => format!("liveness: client {i}'s oracle round never finished"),
                    Task::Probe => format!("liveness: client {i}'s store probe never finished"),
                    _ => format!(
                        "liveness: client {i} txn {} never finished its background work",
                        t.entry
                    ),
                });
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Issue(c) => self.issue(c),
            Event::Arrive { client, op, rpc } => self.arrive(client, op, rpc),
            Event::Respond { client, op, id, result, duplicate, feedback } => {
                if let Some(feedback) = feedback {
                    self.health_feedback(client, &feedback);
                }
                let Some(r) = self.running_mut(client, op) else {
                    self.log(format!("c{client} response {id} for a finished operation dropped"));
                    return;
                };
                let known = r.inflight.remove(&id).is_some();
                let entry = r.entry;
                if !known && !duplicate {
                    self.log(format!("c{client} op{entry} late response {id} dropped"));
                    return;
                }
                let what = if known { "recv" } else { "recv duplicate" };
                self.log(format!("c{client} op{entry} {what} {id} {}", summarize(&result)));
                self.feed(client, op, |o, now| o.on_response(id, result, now));
            }
            Event::Deadline { client, op, id } => {
                // The call's deadline passed: gRPC cancels it, and TiKV
                // drops a parked lock request with it.
                self.cancel_parked(|p| p.client == client && p.op == op && p.id == id);
                let Some(r) = self.running_mut(client, op) else { return };
                let Some(flight) = r.inflight.remove(&id) else { return };
                if flight.write {
                    r.unacked += 1;
                }
                let entry = r.entry;
                self.log(format!("c{client} op{entry} deadline exceeded {id}"));
                self.feed(client, op, |o, now| {
                    o.on_response(id, Err(RpcError::DeadlineExceeded), now)
                });
            }
            Event::Timer { client, op } => {
                let now = self.now;
                let Some(r) = self.running_mut(client, op) else { return };
                if r.op.poll_timeout().is_none_or(|t| t > now) {
                    return;
                }
                r.timer_at = None;
                self.feed(client, op, |o, now| o.on_timeout(now));
            }
            Event::Fault(f) => self.fault(f),
            Event::Recover(recovery) => {
                if let Some(line) = self.net.recover(&self.cluster, recovery) {
                    self.log(line);
                }
            }
            Event::StaleCopy => {
                self.stale = Some(self.cluster.raw_snapshot("default"));
                self.log("bug: stores keep a stale copy for reads from now on");
            }
            Event::HealAll => self.heal_all(),
            Event::QuietStart => self.quiet_start(),
            Event::OracleRounds(c) => self.oracle_rounds(c),
            Event::LockWaits => {
                if self.lock_wait_timer == Some(self.now) {
                    self.lock_wait_timer = None;
                    self.cluster.advance_lock_waits(self.now);
                    self.collect_lock_answers();
                }
            }
        }
    }

    fn running_mut(&mut self, client: usize, op: u64) -> Option<&mut Running> {
        let c = &mut self.clients[client];
        if c.running.as_ref().is_some_and(|r| r.seq == op) {
            return c.running.as_mut();
        }
        c.tails.iter_mut().find(|r| r.seq == op)
    }

    /// Takes task `op` of client `c` out of its slot; `true` if it was the
    /// foreground operation.
    fn take_task(&mut self, c: usize, op: u64) -> Option<(Running, bool)> {
        let client = &mut self.clients[c];
        if client.running.as_ref().is_some_and(|r| r.seq == op) {
            return client.running.take().map(|r| (r, true));
        }
        let i = client.tails.iter().position(|r| r.seq == op)?;
        Some((client.tails.remove(i), false))
    }

    fn active_ops(&self) -> usize {
        self.plan.swarm.ops_per_client
    }

    fn issue(&mut self, c: usize) {
        if self.gc.as_ref().is_some_and(|g| g.client == c) {
            self.gc_issue();
            return;
        }
        if self.txn.is_some() {
            self.issue_txn(c);
            return;
        }
        let quiet = self.now >= self.quiet_from();
        let budget = self.active_ops() + if quiet { QUIET_OPS } else { 0 };
        // Two wake-ups may race (the heal and a completion): one operation
        // at a time per client.
        if self.clients[c].issued >= budget || self.clients[c].running.is_some() {
            return;
        }
        self.clients[c].issued += 1;
        let keys = self.plan.swarm.keys;
        let kind = workload::pick(&mut self.rng, keys, &mut self.next_value, &self.recent);
        match &kind {
            OpKind::Put(k, v) | OpKind::Cas { key: k, new: v, .. } => self.recent.push((*k, *v)),
            OpKind::BatchPut(kvs) => self.recent.extend(kvs.iter().copied()),
            _ => {}
        }
        let entry = self.history.invoke(c, kind.clone(), self.now);
        self.stats.ops += 1;
        self.log(format!("c{c} op{entry} invoke {kind}"));
        match workload::build(&self.clients[c].view, &kind, &self.opts) {
            Ok(op) => self.launch(c, Task::Raw, entry, op),
            Err(e) => {
                self.history.entries[entry].end = Some(self.now);
                self.history.entries[entry].outcome = Outcome::Fail(e.to_string());
                self.next_issue(c);
            }
        }
    }

    /// Starts `op` as client `c`'s foreground operation.
    fn launch(&mut self, c: usize, task: Task, entry: usize, op: Box<dyn SimOp>) {
        let r = self.start_task(task, entry, op);
        let seq = r.seq;
        self.clients[c].running = Some(r);
        self.pump(c, seq);
    }

    /// Starts `op` as a new task with a fresh sequence number.
    fn start_task(&mut self, task: Task, entry: usize, mut op: Box<dyn SimOp>) -> Running {
        op.start(self.now);
        self.next_op += 1;
        Running {
            seq: self.next_op,
            task,
            entry,
            op,
            inflight: BTreeMap::new(),
            timer_at: None,
            unacked: 0,
            effect_until: self.now,
            reported: false,
            crash_drawn: false,
            last_deadline: self.now,
        }
    }

    fn issue_txn(&mut self, c: usize) {
        let Some(t) = self.txn.as_ref() else { return };
        let phase = t.phase;
        // After the heal, clients finish their transactions (on a reliable
        // network) before the quiescence reads.
        let budget = match phase {
            TxnPhase::Active | TxnPhase::Settling => self.active_ops(),
            TxnPhase::Quiet => self.active_ops() + QUIET_OPS,
            TxnPhase::Audit => return,
        };
        if self.clients[c].issued >= budget || self.clients[c].running.is_some() {
            return;
        }
        self.clients[c].issued += 1;
        let spec = if phase == TxnPhase::Quiet {
            self.full_read_spec()
        } else if self.workload == Workload::Pipelined {
            self.pipe_issue(c);
            return;
        } else if self.workload == Workload::Pessimistic {
            let Some(t) = self.txn.as_ref() else { return };
            pess_workload::pick_with_shares(&mut self.rng, &t.params)
        } else {
            let Some(t) = self.txn.as_mut() else { return };
            txn_workload::pick(&mut self.rng, &t.params, &mut t.next_value)
        };
        self.launch_txn(c, spec);
    }

    fn full_read_spec(&mut self) -> TxnSpec {
        TxnSpec {
            kind: TxnKind::FullRead,
            read_method: txn_workload::pick_read_method(&mut self.rng),
            opts: CommitOptions::default(),
        }
    }

    fn launch_txn(&mut self, c: usize, spec: TxnSpec) {
        self.launch_txn_with(c, spec, None);
    }

    /// Starts transaction `spec` on client `c`; pipelined as `pipe` says.
    fn launch_txn_with(
        &mut self,
        c: usize,
        spec: TxnSpec,
        pipe: Option<pipelined_workload::PipeSpec>,
    ) {
        let Some(t) = self.txn.as_mut() else { return };
        let entry = t.history.entries.len();
        t.history.entries.push(spec.entry(entry, c, self.now));
        let keys = t.params.keys;
        self.stats.ops += 1;
        let o = &spec.opts;
        let mode = match (o.async_commit, o.one_pc, o.causal_consistency) {
            (false, false, _) => "2pc",
            (true, false, false) => "async",
            (true, false, true) => "async causal",
            (false, true, false) => "1pc",
            (false, true, true) => "1pc causal",
            (true, true, false) => "async+1pc",
            (true, true, true) => "async+1pc causal",
        };
        self.log(format!(
            "c{c} txn{entry} invoke {} ({:?} reads, {mode})",
            spec.kind, spec.read_method
        ));
        let bug = self.bug;
        let view = self.clients[c].view.clone();
        let op: Box<dyn SimOp> = match (pipe, spec.kind) {
            (Some(pipe), _) => self.pipe_program(c, entry, pipe),
            (None, TxnKind::Pessimistic(kind)) => {
                Box::new(pess_workload::PessProgram::new(view, entry, kind, spec.opts, bug))
            }
            (None, kind) => {
                let spec = TxnSpec { kind, ..spec };
                Box::new(TxnProgram::new(view, entry, spec, &keys, bug))
            }
        };
        self.launch(c, Task::Txn, entry, op);
    }

    fn next_issue(&mut self, c: usize) {
        if let Some(t) = &self.txn {
            match t.phase {
                TxnPhase::Active | TxnPhase::Settling
                    if self.clients[c].issued < self.active_ops() =>
                {
                    let think = self.rng.gen_duration(self.plan.swarm.think);
                    self.schedule(self.now + think, Event::Issue(c));
                }
                // Done before the heal: wait for it.
                TxnPhase::Active => {}
                TxnPhase::Settling => self.maybe_settle(),
                TxnPhase::Quiet => {
                    let think = self.rng.gen_duration(self.plan.swarm.think);
                    self.schedule(self.now + think, Event::Issue(c));
                }
                TxnPhase::Audit => {}
            }
            return;
        }
        let quiet = self.now >= self.quiet_from();
        let active_done = self.clients[c].issued >= self.active_ops();
        let think = self.rng.gen_duration(self.plan.swarm.think);
        // After its active operations a client waits for the quiet phase.
        let at = if active_done && !quiet { self.quiet_from() } else { self.now + think };
        self.schedule(at, Event::Issue(c));
    }

    /// Feeds one input to task `op` of client `c`, then drains its outputs.
    fn feed(&mut self, c: usize, op: u64, input: impl FnOnce(&mut dyn SimOp, Instant)) {
        let now = self.now;
        if let Some(r) = self.running_mut(c, op) {
            input(&mut *r.op, now);
        }
        self.pump(c, op);
        self.crash_tick(c);
    }

    /// Runs the driver's store health prober for client `c`'s process: at
    /// most one round a second, started only when a store of the process's
    /// view is not known reachable (a round asks only those), so worlds
    /// with every store answering never send a probe.
    fn maybe_probe_stores(&mut self, c: usize) {
        let p = self.clients[c].process;
        if self.now < self.clients[p].next_probe_at {
            return;
        }
        self.clients[p].next_probe_at = self.now + HEALTH_CHECK_INTERVAL;
        let probe = ProbeStores::new(self.clients[p].view.clone());
        if !probe.has_stores_to_ask() {
            return;
        }
        self.log(format!("c{p} probes the stores it cannot reach"));
        // A round's outcome is in the view; nobody waits for it.
        let op = workload::erase_with(probe, |_| Finished::Probed);
        let mut r = self.start_task(Task::Probe, usize::MAX, op);
        r.crash_drawn = true;
        let seq = r.seq;
        self.clients[p].tails.push(r);
        self.pump(p, seq);
    }

    /// Drains a task: sends its RPCs, records its result, moves it to the
    /// background or drops it when done, or re-arms its timer.
    fn pump(&mut self, c: usize, op: u64) {
        self.maybe_probe_stores(c);
        let Some((mut r, foreground)) = self.take_task(c, op) else { return };
        let now = self.now;
        if !r.reported
            && let Some(finished) = r.op.poll_result()
        {
            r.reported = true;
            let committed = matches!(&finished, Finished::Txn(t) if matches!(t.1, TxnOutcome::Committed { .. }));
            self.complete(c, &r, finished);
            if committed && self.clients[c].crash.is_some_and(|p| p.at_commit_point) {
                // Crash at the commit point: nothing after it is sent.
                self.crash(c, Some(r));
                return;
            }
        }
        while let Some(rpc) = r.op.poll_rpc(now) {
            self.send(c, &mut r, rpc);
        }
        let abandoned = r.op.abandoned();
        if !abandoned.is_empty() {
            let seq = r.seq;
            for id in &abandoned {
                r.inflight.remove(id);
            }
            self.cancel_parked(|p| p.client == c && p.op == seq && abandoned.contains(&p.id));
        }
        // A late result (a tail's) would be dropped; the op reports once.
        if !r.reported
            && let Some(finished) = r.op.poll_result()
        {
            r.reported = true;
            self.complete(c, &r, finished);
        }
        if r.reported && r.op.is_done() {
            if r.task == Task::Txn && !foreground {
                self.log(format!("c{c} txn{} background work done", r.entry));
            }
            if let (Task::Txn, Some(g)) = (r.task, self.gc.as_mut()) {
                g.txn_quiet(r.entry, r.last_deadline);
            }
            let seq = r.seq;
            self.cancel_parked(|p| p.client == c && p.op == seq);
            return;
        }
        if r.task == Task::Txn && !r.crash_drawn && r.op.committing() {
            r.crash_drawn = true;
            self.draw_crash(c);
        }
        let t = r.op.poll_timeout();
        if t != r.timer_at {
            r.timer_at = t;
            if let Some(t) = t {
                self.schedule(t, Event::Timer { client: c, op: r.seq });
            }
        }
        if r.inflight.is_empty() && t.is_none() {
            let entry = r.entry;
            self.violations.push(format!(
                "liveness: client {c} task {entry} stalled (no RPC in flight, no timer, no result)"
            ));
            if !r.reported {
                r.reported = true;
                let finished = match r.task {
                    Task::Raw => Finished::Raw(Err(Error::Internal("stalled".into()))),
                    Task::Txn => Finished::Txn(Box::new((
                        r.op.progress().unwrap_or_default(),
                        TxnOutcome::Undetermined("stalled".into()),
                    ))),
                    Task::Sweep => Finished::Sweep(Err(Error::Internal("stalled".into()))),
                    Task::Gc => gc_workload::stalled(r.entry),
                    // Its callers stall in turn and are reported as such.
                    Task::TsoRound => return,
                    // A probe that cannot finish leaves its stores unreachable:
                    // the operations needing them report it.
                    Task::Probe => return,
                };
                self.complete(c, &r, finished);
            }
            return;
        }
        if r.reported || !foreground {
            self.clients[c].tails.push(r);
        } else {
            self.clients[c].running = Some(r);
        }
    }

    fn send(&mut self, c: usize, r: &mut Running, rpc: Rpc) {
        if rpc.target == Target::Oracle {
            // Local to the client: queued in its oracle, answered when a
            // round is. The round leaves from an event of its own, once
            // this task is back in its slot (a caller that gave up is then
            // seen as such).
            r.inflight.insert(rpc.id, Flight { deadline: rpc.deadline, write: false });
            self.stats.timestamp_needs += 1;
            self.log(format!("c{c} op{} needs a timestamp ({})", r.entry, rpc.id));
            let lead = self.clients[c].process;
            if let Some(oracle) = self.clients[lead].oracle.as_mut() {
                oracle.enqueue((c, r.seq, rpc.id));
            }
            self.schedule(self.now, Event::OracleRounds(lead));
            return;
        }
        self.stats.rpcs += 1;
        match &rpc.request {
            Request::Kv(KvRequest::CheckTxnStatus(_) | KvRequest::ResolveLock(_)) => {
                self.stats.resolver_rpcs += 1;
            }
            Request::Kv(KvRequest::CheckSecondaryLocks(_)) => {
                self.stats.resolver_rpcs += 1;
                self.stats.secondary_checks += 1;
            }
            _ => {}
        }
        let write = is_write(&rpc.request);
        if write {
            r.effect_until = r.effect_until.max(rpc.deadline);
        }
        r.inflight.insert(rpc.id, Flight { deadline: rpc.deadline, write });
        self.log(format!(
            "c{c} op{} send {} {} -> {:?} deadline {}",
            r.entry,
            rpc.id,
            rpc.request.name(),
            rpc.target,
            rpc.deadline
        ));
        if rpc.deadline != Instant::MAX {
            r.last_deadline = r.last_deadline.max(rpc.deadline);
            self.schedule(rpc.deadline, Event::Deadline { client: c, op: r.seq, id: rpc.id });
        }
        let Some(delay) = self.net.request_delay(&mut self.rng) else {
            self.log(format!("net: request {} of c{c} lost", rpc.id));
            return;
        };
        self.schedule(self.now + delay, Event::Arrive { client: c, op: r.seq, rpc });
    }

    fn arrive(&mut self, c: usize, op: u64, rpc: Rpc) {
        let id = rpc.id;
        if self.now > rpc.deadline {
            self.log(format!("server: request {id} of c{c} arrived after its deadline, refused"));
            return;
        }
        let endpoint = self.net.endpoint(&rpc.target);
        if self.net.is_cut(c, endpoint) {
            self.log(format!("net: request {id} of c{c} lost in a partition"));
            return;
        }
        let served = match Network::serving(&self.cluster, &rpc.target, endpoint) {
            Ok(served) => served,
            Err(e) => {
                self.respond(c, op, id, endpoint, None, Err(e));
                return;
            }
        };
        if let (Some(proxy), Some(Endpoint::Store(to))) = (served.forwarded_by, served.at) {
            self.stats.forwarded += 1;
            self.log(format!("server: store {proxy} forwards {id} of c{c} to {to}"));
        }
        let served_at = served.at;
        // The store that handles a TiKV request: its latency and health
        // feedback go with the answer.
        let kv_store = match (served_at, &rpc.request) {
            (Some(Endpoint::Store(s)), Request::Kv(_)) => Some(s),
            _ => None,
        };
        let result = match (served_at, rpc.request) {
            (Some(Endpoint::Pd(m)), Request::Pd(req)) => {
                let collection = match &req {
                    PdRequest::AdvanceGcSafePoint(r) => self.gc_before_collection(r.target),
                    _ => None,
                };
                let result = self.cluster.handle_pd(m, req, self.now).map(Response::Pd);
                if let Some(before) = collection {
                    self.gc_after_collection(before);
                }
                result
            }
            (Some(Endpoint::Store(s)), Request::Kv(req))
                if self.workload == Workload::Pessimistic =>
            {
                let start_ts = match &req {
                    KvRequest::PessimisticLock(r) => r.start_version,
                    _ => 0,
                };
                let answer = self.cluster.handle_kv_waiting(s, req, self.now);
                let result = match answer {
                    Ok(KvAnswer::Ready(resp)) => Ok(resp),
                    Ok(KvAnswer::Waiting(token)) => {
                        self.stats.lock_waits += 1;
                        self.log(format!("server: c{c} {id} waits for a lock ({token:?})"));
                        // The answer goes back the way the request came.
                        let endpoint = endpoint.unwrap_or(Endpoint::Store(s));
                        let parked = Parked { client: c, op, id, endpoint, store: s, start_ts };
                        self.parked.insert(token, parked);
                        self.collect_lock_answers();
                        return;
                    }
                    Err(e) => Err(e),
                };
                if let Ok(KvResponse::PessimisticLock(r)) = &result {
                    self.on_lock_answer(start_ts, r);
                }
                self.collect_lock_answers();
                result.map(Response::Kv)
            }
            (Some(Endpoint::Store(s)), Request::Kv(req)) => {
                self.pipe_serve_kv(c, s, req).map(Response::Kv)
            }
            // gRPC health: a running store is SERVING; a stopped one does
            // not answer.
            (Some(Endpoint::Store(s)), Request::HealthCheck)
                if self.cluster.is_store_running(s) =>
            {
                self.cluster.count_health_check(s);
                Ok(Response::HealthCheck(tikv_proto::health::HealthCheckResponse {
                    status: tikv_proto::health::health_check_response::ServingStatus::Serving
                        as i32,
                }))
            }
            _ => Err(RpcError::Unavailable(format!("no server at {:?}", rpc.target))),
        };
        self.respond(c, op, id, endpoint, kv_store, result);
    }

    /// Sends a server's answer back to client `c` over the network, through
    /// `endpoint` (where the request came in). An answer store `kv_store`
    /// gave to a TiKV request leaves it late by the store's latency
    /// ([`Fault::StoreLatency`]) and carries its health feedback.
    fn respond(
        &mut self,
        c: usize,
        op: u64,
        id: RpcId,
        endpoint: Option<Endpoint>,
        kv_store: Option<u64>,
        result: Result<Response, RpcError>,
    ) {
        self.log(format!("server: c{c} {id} -> {}", summarize(&result)));
        let (late, feedback) = match kv_store {
            Some(s) if result.is_ok() => {
                (self.cluster.store_latency(s), Some(self.cluster.health_feedback(s)))
            }
            _ => (Duration::ZERO, None),
        };
        let Some(delay) = self.net.answer_delay(&mut self.rng, c, endpoint, late) else {
            self.log(format!("net: response {id} to c{c} lost"));
            return;
        };
        if !late.is_zero() {
            self.stats.late_answers += 1;
            self.log(format!("server: the answer to {id} of c{c} leaves {late:?} late"));
        }
        let at = self.now + delay.first;
        if let Some(duplicate) = delay.duplicate {
            let again = at + duplicate;
            let result = result.clone();
            let event = Event::Respond { client: c, op, id, result, duplicate: true, feedback };
            self.schedule(again, event);
        }
        let event = Event::Respond { client: c, op, id, result, duplicate: false, feedback };
        self.schedule(at, event);
    }

    /// TiKV's health feedback reaches client `c`: its view records the
    /// store's slow score as the driver's sink does
    /// ([`on_health_feedback`]); a store the feedback turns slow is counted.
    fn health_feedback(&mut self, c: usize, feedback: &HealthFeedback) {
        let view = self.clients[c].view.clone();
        let slow = |v: &ClusterView| {
            v.stores.get_any(feedback.store_id).is_some_and(|s| s.health().is_slow())
        };
        let was_slow = slow(&view);
        on_health_feedback(&view, feedback, self.now);
        if !was_slow && slow(&view) {
            self.stats.slow_marks += 1;
            self.log(format!(
                "c{c} marks store {} slow (TiKV slow score {})",
                feedback.store_id, feedback.slow_score
            ));
        }
    }

    /// (pessimistic) Sends the answers of the parked lock requests that were
    /// woken, timed out or failed since, and keeps the lock manager's
    /// timer armed.
    fn collect_lock_answers(&mut self) {
        self.shared_locks.observe(&self.cluster.shared_locked_keys());
        let tokens: Vec<LockWaitToken> = self.parked.keys().copied().collect();
        for token in tokens {
            let Some(resp) = self.cluster.take_lock_wait_answer(token) else { continue };
            let Some(p) = self.parked.remove(&token) else { continue };
            self.log(format!("server: c{} {} stops waiting ({token:?})", p.client, p.id));
            self.on_lock_answer(p.start_ts, &resp);
            let result = Ok(Response::Kv(KvResponse::PessimisticLock(Box::new(resp))));
            self.respond(p.client, p.op, p.id, Some(p.endpoint), Some(p.store), result);
        }
        let next = self.cluster.next_lock_wait_deadline();
        if next != self.lock_wait_timer {
            self.lock_wait_timer = next;
            if let Some(at) = next {
                self.schedule(at, Event::LockWaits);
            }
        }
    }

    /// (pessimistic) Drops the parked lock requests `which` picks (their
    /// callers went away); they leave TiKV's wait queues and wait-for graph.
    fn cancel_parked(&mut self, which: impl Fn(&Parked) -> bool) {
        if self.parked.is_empty() {
            return;
        }
        let tokens: Vec<LockWaitToken> =
            self.parked.iter().filter(|(_, p)| which(p)).map(|(t, _)| *t).collect();
        for token in tokens {
            self.parked.remove(&token);
            self.cluster.cancel_lock_wait(token);
            self.log(format!("server: lock wait {token:?} cancelled by its caller"));
        }
        self.collect_lock_answers();
    }

    /// (pessimistic) A lock request of transaction `start_ts` was answered.
    /// [`Bug::DeadlockBothVictims`] answers the same deadlock to the parked
    /// requests of the cycle's other transactions.
    fn on_lock_answer(
        &mut self,
        start_ts: u64,
        resp: &tikv_proto::kvrpcpb::PessimisticLockResponse,
    ) {
        if self.bug != Some(Bug::DeadlockBothVictims) {
            return;
        }
        let Some(chain) = resp.errors.iter().find_map(|e| e.deadlock.as_ref()) else { return };
        let others: Vec<u64> =
            chain.wait_chain.iter().map(|w| w.txn).filter(|&t| t != start_ts).collect();
        let victims: Vec<LockWaitToken> = self
            .parked
            .iter()
            .filter(|(_, p)| others.contains(&p.start_ts))
            .map(|(t, _)| *t)
            .collect();
        for token in victims {
            let Some(p) = self.parked.remove(&token) else { continue };
            self.cluster.cancel_lock_wait(token);
            let copy = tikv_proto::kvrpcpb::PessimisticLockResponse {
                errors: vec![tikv_proto::kvrpcpb::KeyError {
                    deadlock: Some(chain.clone()),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let result = Ok(Response::Kv(KvResponse::PessimisticLock(Box::new(copy))));
            self.respond(p.client, p.op, p.id, Some(p.endpoint), Some(p.store), result);
        }
    }

    fn serve_kv(&mut self, store: u64, req: KvRequest) -> Result<KvResponse, RpcError> {
        let stale_key = match (&req, &self.stale) {
            (KvRequest::RawGet(g), Some(_)) => Some(g.key.to_vec()),
            _ => None,
        };
        let is_put = matches!(req, KvRequest::RawPut(_));
        let mut resp = self.cluster.handle_kv(store, req, self.now)?;
        if resp.region_error().is_some() {
            return Ok(resp);
        }
        match (&mut resp, self.bug) {
            (KvResponse::RawPut(r), Some(Bug::PutAppliedButReportedFailed))
                if is_put && r.error.is_empty() && self.rng.gen_ratio(1, 3) =>
            {
                r.error = "bug: applied, reported failed".into();
            }
            (KvResponse::RawGet(r), Some(Bug::StaleReads)) if r.error.is_empty() => {
                if let (Some(k), Some(copy)) = (stale_key, &self.stale) {
                    match copy.get(&k) {
                        Some(v) => {
                            r.value = v.clone().into();
                            r.not_found = false;
                        }
                        None => {
                            r.value = Default::default();
                            r.not_found = true;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(resp)
    }

    /// Sends a round for the waiting timestamp needs of the process whose
    /// first client is `c`, while its oracle allows; a need whose task has
    /// finished or stopped waiting costs no timestamp.
    fn oracle_rounds(&mut self, c: usize) {
        let Some(mut oracle) = self.clients[c].oracle.take() else { return };
        let mut rounds = Vec::new();
        {
            let clients = &self.clients;
            let waiting = |&(client, op, id): &OracleWaiter| {
                let client = &clients[client];
                let task = client.running.iter().chain(&client.tails).find(|r| r.seq == op);
                task.is_some_and(|r| r.inflight.contains_key(&id))
            };
            while let Some(round) = oracle.poll_round(|w| !waiting(w)) {
                rounds.push(round);
            }
        }
        self.clients[c].oracle = Some(oracle);
        for (round, callers) in rounds {
            self.log(format!("c{c} oracle: Tso round for {} callers", callers.len()));
            self.stats.tso_rounds.0 += 1;
            self.stats.tso_rounds.1 += u64::from(callers.len() > 1);
            let op = workload::erase_with(round, move |outcome| {
                Finished::Tso(Box::new((callers, outcome)))
            });
            // A background task of the process, never a crash point itself.
            let mut r = self.start_task(Task::TsoRound, usize::MAX, op);
            r.crash_drawn = true;
            let seq = r.seq;
            self.clients[c].tails.push(r);
            self.pump(c, seq);
        }
    }

    /// Hands a finished oracle round's timestamps (or its error) to the
    /// waiting operations, at once: the oracle is in the client's process.
    fn oracle_answers(
        &mut self,
        c: usize,
        callers: TsoRoundCallers<OracleWaiter>,
        outcome: Result<PdResponse, Error>,
    ) {
        let Some(oracle) = self.clients[c].oracle.as_mut() else { return };
        let answers: Vec<(OracleWaiter, Result<Response, RpcError>)> =
            match oracle.finish_round(callers, outcome, self.now) {
                TsoRoundEnd::Served(served) => {
                    served.into_iter().map(|(w, ts)| (w, Ok(Response::Timestamp(ts)))).collect()
                }
                TsoRoundEnd::Requeued => Vec::new(),
                TsoRoundEnd::Failed(waiters, e) => waiters
                    .into_iter()
                    .map(|w| (w, Err(RpcError::NoTimestamp(Box::new(e.clone())))))
                    .collect(),
            };
        for ((client, op, id), result) in answers {
            let event = Event::Respond { client, op, id, result, duplicate: false, feedback: None };
            self.schedule(self.now, event);
        }
        self.schedule(self.now, Event::OracleRounds(c));
    }

    /// Records a task's result.
    fn complete(&mut self, c: usize, r: &Running, finished: Finished) {
        match finished {
            Finished::Tso(round) => {
                let (callers, outcome) = *round;
                self.oracle_answers(c, callers, outcome);
                return;
            }
            Finished::Probed => return,
            Finished::Raw(result) => self.complete_raw(c, r, result),
            Finished::Txn(t) => self.complete_txn(c, r, *t),
            Finished::Gc(task) => {
                self.gc_complete(c, r.entry, r.last_deadline, *task);
                return;
            }
            Finished::Sweep(result) => {
                match &result {
                    Ok(0) => {}
                    Ok(alive) => self.violations.push(format!(
                        "liveness: the audit's lock sweep found locks alive {alive} ms past every TTL"
                    )),
                    Err(e) => self.violations.push(format!("liveness: the audit's lock sweep failed: {e}")),
                }
                self.log(format!("audit: lock sweep: {result:?}"));
            }
        }
        if r.task != Task::Sweep {
            self.next_issue(c);
        }
    }

    fn complete_raw(&mut self, c: usize, r: &Running, result: Result<OkValue, Error>) {
        let now = self.now;
        let unanswered_writes = r.inflight.values().filter(|f| f.write).count() as u32;
        let effect_until = r
            .inflight
            .values()
            .filter(|f| f.write)
            .map(|f| f.deadline)
            .fold(r.effect_until.max(now), Instant::max);
        let quiet = self.history.entries[r.entry].invoke >= self.quiet_from();
        let e: &mut Entry = &mut self.history.entries[r.entry];
        e.end = Some(now);
        e.unacked_writes = r.unacked + unanswered_writes;
        e.effect_until = effect_until;
        e.outcome = match result {
            Ok(v) => Outcome::Ok(v),
            Err(err) if is_definite(&err) => Outcome::Fail(err.to_string()),
            Err(err) => Outcome::Undetermined(err.to_string()),
        };
        let took = now - e.invoke;
        let line = format!("c{c} op{} {} after {took:?}: {:?}", e.id, e.kind, e.outcome);
        let mut problems = Vec::new();
        if took > LIVENESS_BOUND {
            problems.push(format!("liveness: op{} ({}) took {took:?}", e.id, e.kind));
        }
        if quiet && (took > QUIET_BOUND || !matches!(e.outcome, Outcome::Ok(_))) {
            problems.push(format!(
                "liveness: op{} ({}) after the heal ended {:?} after {took:?}",
                e.id, e.kind, e.outcome
            ));
        }
        match e.outcome {
            Outcome::Ok(_) => self.stats.ok += 1,
            Outcome::Fail(_) => self.stats.failed += 1,
            _ => self.stats.undetermined += 1,
        }
        self.stats.max_op = self.stats.max_op.max(took);
        self.violations.extend(problems);
        self.log(line);
    }

    fn complete_txn(
        &mut self,
        c: usize,
        r: &Running,
        (run, outcome): (txn_history::TxnRun, TxnOutcome),
    ) {
        let now = self.now;
        let bound = self.txn_bound();
        let Some(t) = self.txn.as_mut() else { return };
        let quiet = matches!(t.phase, TxnPhase::Quiet | TxnPhase::Audit);
        let e = &mut t.history.entries[r.entry];
        e.end = Some(now);
        e.run = run;
        e.outcome = outcome;
        let took = now - e.invoke;
        let line = format!(
            "c{c} txn{} {} after {took:?}: start {:?} {:?}",
            e.id, e.kind, e.run.start_ts, e.outcome
        );
        let mut problems = Vec::new();
        if took > bound {
            problems.push(format!(
                "liveness: txn {} ({}) took {took:?} (bound {bound:?})",
                e.id, e.kind
            ));
        }
        if quiet && (took > QUIET_BOUND || !matches!(e.outcome, TxnOutcome::Committed { .. })) {
            problems.push(format!(
                "liveness: txn {} ({}) after the heal ended {:?} after {took:?}",
                e.id, e.kind, e.outcome
            ));
        }
        match &e.outcome {
            TxnOutcome::Committed { .. } => self.stats.ok += 1,
            TxnOutcome::Failed(why) => {
                self.stats.failed += 1;
                let gave_up = why == &Error::LockWaitTimeout.to_string()
                    || why == &Error::LockAcquireFailAndNoWaitSet.to_string();
                self.stats.lock_wait_failures += usize::from(gave_up);
            }
            _ => self.stats.undetermined += 1,
        }
        self.stats.deadlocks += usize::from(!e.run.deadlock.is_empty());
        self.stats.locked_with_conflict += e.run.locked.iter().filter(|l| l.with_conflict).count();
        self.stats.max_op = self.stats.max_op.max(took);
        self.violations.extend(problems);
        self.log(line);
    }

    fn txn_bound(&self) -> Duration {
        let Some(t) = &self.txn else { return LIVENESS_BOUND };
        let bound = txn_liveness_bound(&t.params, self.workload == Workload::Pessimistic);
        if self.workload == Workload::Pipelined {
            return bound + pipelined_workload::liveness_extra();
        }
        bound
    }

    /// (txn) Arms a crash for client `c`'s transaction that started
    /// committing, with the plan's chance.
    fn draw_crash(&mut self, c: usize) {
        let Some(t) = &self.txn else { return };
        if t.phase != TxnPhase::Active || c >= self.plan.swarm.clients {
            return;
        }
        let p = t.params.crash_permille;
        if self.clients[c].crash.is_some() || !self.chance(p) {
            return;
        }
        let plan = CrashPlan {
            after_inputs: self.rng.gen_range(0, 12) as u32,
            at_commit_point: self.rng.gen_ratio(1, 4),
        };
        self.log(format!("c{c} will crash: {plan:?}"));
        self.clients[c].crash = Some(plan);
    }

    fn crash_tick(&mut self, c: usize) {
        let Some(plan) = self.clients[c].crash.as_mut() else { return };
        if plan.after_inputs > 0 {
            plan.after_inputs -= 1;
            return;
        }
        self.crash(c, None);
    }

    /// Drops every machine of client `c` (and `extra`, a task already taken
    /// out of its slot); the client restarts with empty caches.
    /// The whole process of client `c` goes down, its other clients too.
    fn crash(&mut self, c: usize, extra: Option<Running>) {
        self.stats.crashes += 1;
        let lead = self.clients[c].process;
        let members: Vec<usize> =
            (0..self.clients.len()).filter(|&m| self.clients[m].process == lead).collect();
        // The process's connections close: TiKV drops its parked requests.
        self.cancel_parked(|p| members.contains(&p.client));
        let mut extra = extra;
        let mut restart_issue = Vec::new();
        for &m in &members {
            if self.drop_tasks(m, if m == c { extra.take() } else { None }) {
                restart_issue.push(m);
            }
        }
        let seed = self.rng.next_u64();
        let budgets = self.txn.as_ref().map(|t| scaled_budgets(t.params.budget_permille));
        let depth = self.clients[c].view.config.tso_max_rounds_in_flight;
        let timeout = rpc_timeout(self.workload);
        let view = new_view(self.net.pd_urls(), seed, &self.plan.swarm, budgets, depth, timeout);
        for &m in &members {
            self.clients[m].restart(view.clone(), m);
        }
        for m in restart_issue {
            self.next_issue(m);
        }
    }

    /// Drops every machine of client `c` (and `extra`, a task already taken
    /// out of its slot) in a crash of its process; true if its foreground
    /// transaction was cut short.
    fn drop_tasks(&mut self, c: usize, extra: Option<Running>) -> bool {
        let client = &mut self.clients[c];
        client.crash = None;
        let mut dropped: Vec<Running> = client.tails.drain(..).collect();
        dropped.extend(client.running.take());
        dropped.extend(extra);
        let now = self.now;
        let mut notes = Vec::new();
        let mut finished_foreground = false;
        if let Some(t) = self.txn.as_mut() {
            for r in dropped.iter().filter(|r| r.task == Task::Txn) {
                if let Some(g) = self.gc.as_mut() {
                    g.txn_quiet(r.entry, r.last_deadline.max(now));
                }
                let e = &mut t.history.entries[r.entry];
                e.crashed = true;
                if !r.reported {
                    e.run = r.op.progress().unwrap_or_default();
                    let when = if r.op.committing() { " while committing" } else { "" };
                    e.outcome = TxnOutcome::Undetermined(format!("the client crashed{when}"));
                    e.end = Some(now);
                    self.stats.undetermined += 1;
                    finished_foreground = true;
                }
                notes.push(format!("txn{} ({:?})", e.id, e.outcome));
            }
        }
        self.log(format!("c{c} CRASH: drops {}; restarts with empty caches", notes.join(", ")));
        finished_foreground
    }

    fn fault(&mut self, fault: Fault) {
        if self.net.is_calm() {
            return;
        }
        self.stats.faults += 1;
        let txn_keys = self.txn.as_ref().map(|t| t.params.keys);
        let split_key = |k: u32| {
            Some(match txn_keys {
                Some(keys) => keys.key(k).into_bytes(),
                None => key_bytes(k),
            })
        };
        let (outcome, recovery) = self.net.apply_fault(&self.cluster, &fault, split_key);
        if let Some((after, recovery)) = recovery {
            self.schedule(self.now + after, Event::Recover(recovery));
        }
        self.log(format!("fault: {fault}: {outcome}"));
    }

    fn heal_all(&mut self) {
        self.net.heal(&self.cluster);
        self.log("heal: all faults healed, network reliable; quiescence begins");
        if let Some(t) = self.txn.as_mut() {
            t.phase = TxnPhase::Settling;
            for c in &mut self.clients {
                c.crash = None;
            }
            self.maybe_settle();
            return;
        }
        for c in 0..self.clients.len() {
            if self.clients[c].running.is_none() {
                self.schedule(self.quiet_from(), Event::Issue(c));
            }
        }
    }

    /// (raw) When the quiet phase's operations begin: [`QUIET_GRACE`]
    /// after the heal.
    fn quiet_from(&self) -> Instant {
        self.plan.heal_at + QUIET_GRACE
    }

    /// The instant after which every lock in the cluster has expired
    /// (TiKV's rule: `physical(lock_ts) + ttl < physical(current_ts)`), on
    /// the world's clock.
    fn locks_expire_at(&self) -> Instant {
        let base = self.cluster.config().tso_base_ms;
        self.cluster
            .locks()
            .iter()
            .map(|l| {
                let expiry_ms = (l.lock_version >> 18).saturating_add(l.lock_ttl).saturating_add(1);
                Instant::from_millis(expiry_ms.saturating_sub(base))
            })
            .fold(self.now, Instant::max)
    }

    /// (txn) Once every client finished its transactions after the heal,
    /// wait for every lock's TTL, then start the quiescence reads.
    fn maybe_settle(&mut self) {
        let Some(t) = &self.txn else { return };
        if t.phase != TxnPhase::Settling {
            return;
        }
        let clients = self.plan.swarm.clients;
        let ops = self.active_ops();
        // A client with transactions left has its next one scheduled.
        if self.clients[..clients].iter().any(|c| c.running.is_some() || c.issued < ops) {
            return;
        }
        let at = self.locks_expire_at();
        self.log(format!("settle: every client is done; quiescence reads at {at}"));
        self.schedule(at, Event::QuietStart);
    }

    fn quiet_start(&mut self) {
        let at = self.locks_expire_at();
        if at > self.now {
            // Requests still on the wire at the heal took locks since.
            self.schedule(at, Event::QuietStart);
            return;
        }
        let Some(t) = self.txn.as_mut() else { return };
        if t.phase != TxnPhase::Settling {
            return;
        }
        t.phase = TxnPhase::Quiet;
        self.log("quiet: every lock expired; quiescence reads begin");
        for c in 0..self.plan.swarm.clients {
            self.schedule(self.now, Event::Issue(c));
        }
    }

    /// Drives the queue until it is empty (the audit's steps).
    fn drain(&mut self) {
        self.run();
    }

    /// (txn) The audit: past every TTL, a fresh client reads every key;
    /// locks no read meets are resolved as GC would; none may remain.
    fn audit(&mut self) {
        let Some(t) = self.txn.as_mut() else { return };
        t.phase = TxnPhase::Audit;
        let auditor = t.auditor;
        let expire = self.locks_expire_at();
        if expire > self.now {
            self.log(format!("audit: the clock jumps to {expire}, past every lock's TTL"));
            self.now = expire;
        }
        let spec = self.full_read_spec();
        self.log("audit: reading every key");
        self.launch_txn(auditor, spec);
        self.drain();
        if self.workload == Workload::Pessimistic {
            self.shared_locks.observe(&self.cluster.shared_locked_keys());
        }
        let left: Vec<Lock> = self.cluster.locks().iter().flat_map(Lock::from_info).collect();
        if let Some(t) = &self.txn {
            let holders = t
                .history
                .entries
                .iter()
                .filter(|e| e.crashed && !e.run.locked.is_empty() && e.run.writes.is_empty());
            for e in holders {
                let ts = e.run.start_ts.unwrap_or_default();
                if left.iter().any(|l| l.txn_id.version() == ts) {
                    self.stats.crashed_lock_holders.1 += 1;
                } else {
                    self.stats.crashed_lock_holders.0 += 1;
                }
            }
        }
        for l in &left {
            // A read of every key meets every Put/Delete lock at or below
            // its ts and resolves it; only `LockKeys` locks stay unseen.
            // Reads pass pessimistic locks too (TiKV ignores them).
            let unseen = match l.lock_type {
                tikv_proto::kvrpcpb::Op::Lock => true,
                tikv_proto::kvrpcpb::Op::PessimisticLock => self.workload == Workload::Pessimistic,
                _ => false,
            };
            if !unseen {
                self.violations.push(format!(
                    "liveness: the audit read left txn {}'s {:?} lock on {:?}",
                    l.txn_id, l.lock_type, l.key
                ));
            }
        }
        if !left.is_empty() {
            self.stats.swept_locks = left.len();
            self.log(format!("audit: resolving {} locks no read met, as GC would", left.len()));
            let view = self.clients[auditor].view.clone();
            let caller = self
                .txn
                .as_ref()
                .and_then(|t| t.history.entries.last())
                .and_then(|e| e.run.start_ts)
                .unwrap_or(u64::MAX);
            let budget = view.config.budget(view.config.backoff.gc_resolve_lock);
            let opts = ResolveOptions {
                caller_start_ts: Timestamp::from_version(caller),
                for_read: false,
                lite: true,
                ..Default::default()
            };
            let op = ResolveLocks::new(view.clone(), left, opts, view.backoffer(budget));
            let op =
                workload::erase_with(op, |r: Result<tikv_core::lock::ResolveOutcome, Error>| {
                    Finished::Sweep(r.map(|o| o.ms_before_expired))
                });
            self.launch(auditor, Task::Sweep, usize::MAX, op);
            self.drain();
        }
        for l in self.cluster.locks() {
            self.violations.push(format!(
                "liveness: a lock of txn {} on {:?} was never resolved",
                l.lock_version,
                String::from_utf8_lossy(&l.key)
            ));
        }
        if !self.parked.is_empty() || self.cluster.lock_waiters() > 0 {
            self.violations.push(format!(
                "liveness: {} lock requests still wait in TiKV after the audit ({} unanswered)",
                self.cluster.lock_waiters(),
                self.parked.len()
            ));
        }
    }

    fn finish(mut self) -> Report {
        if let Some(t) = self.txn.take() {
            return self.finish_txn(t);
        }
        // Idle clients were woken at the heal; one whose active operations
        // were still running then has scheduled itself since.
        let snapshot = self.cluster.raw_snapshot("default");
        let mut finals: BTreeMap<KeyId, Val> = BTreeMap::new();
        for (k, v) in &snapshot {
            match parse_key(k) {
                Some(k) if k < self.plan.swarm.keys => {
                    finals.insert(k, parse_value(v));
                }
                _ => self.violations.push(format!("final state: unexpected key {k:?}")),
            }
        }
        let at = self.now + Duration::from_nanos(1);
        let per_key =
            linearizability::project(&self.history, Some((&finals, at, self.plan.swarm.keys)));
        let verdict = linearizability::check(&per_key);
        for (_, why) in verdict.violations {
            self.violations.push(format!("linearizability: {why}"));
        }
        self.stats.unknown_keys = verdict.unknown.len();
        let (_, _, _, pending) = self.history.counts();
        debug_assert!(pending == 0 || !self.violations.is_empty());
        let finals: Vec<String> = finals.iter().map(|(k, v)| format!("k{k}=v{v}")).collect();
        self.into_report(Workload::Raw, TxnHistory::default(), format!("{finals:?}"))
    }

    /// The report, after a trace line with the counters and final data.
    fn into_report(
        mut self,
        workload: Workload,
        txn_history: TxnHistory,
        finals: String,
    ) -> Report {
        if self.trace.is_some() {
            let summary = format!(
                "end: {:?}; final data {finals}; {} violations",
                self.stats,
                self.violations.len()
            );
            self.log(summary);
        }
        Report {
            seed: self.seed,
            workload,
            plan: self.plan,
            history: self.history,
            txn_history,
            violations: self.violations,
            stats: self.stats,
            trace: self.trace.unwrap_or_default(),
        }
    }

    fn finish_txn(mut self, t: TxnWorld) -> Report {
        self.gc_finish();
        let keys = t.params.keys;
        // What became of every transaction on every key it wrote.
        let mut fates = si::Fates::new();
        for e in &t.history.entries {
            let Some(start_ts) = e.run.start_ts else { continue };
            if e.run.writes.is_empty() {
                continue;
            }
            let per_key: Vec<(String, si::KeyFate)> = e
                .run
                .writes
                .iter()
                .map(|(k, _)| {
                    let fate = match self.cluster.commit_record(k.as_bytes(), start_ts) {
                        Some(r) if r.kind == WriteKind::Rollback => si::KeyFate::RolledBack,
                        Some(r) => si::KeyFate::Committed { commit_ts: r.commit_ts, kind: r.kind },
                        // GC may have collected the record: the world saw
                        // it before.
                        None => self
                            .gc
                            .as_ref()
                            .and_then(|g| g.seen_fate(k.as_bytes(), start_ts))
                            .unwrap_or(si::KeyFate::Absent),
                    };
                    (k.clone(), fate)
                })
                .collect();
            if e.crashed && matches!(e.outcome, TxnOutcome::Undetermined(_)) {
                let committed =
                    |f: &(String, si::KeyFate)| matches!(f.1, si::KeyFate::Committed { .. });
                if per_key.iter().all(committed) {
                    self.stats.crashed_resolved.0 += 1;
                } else if !per_key.iter().any(committed) {
                    self.stats.crashed_resolved.1 += 1;
                }
            }
            fates.insert(e.id, per_key);
        }
        let final_data: BTreeMap<String, String> = self
            .cluster
            .mvcc_snapshot(u64::MAX)
            .into_iter()
            .map(|(k, v)| {
                (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned())
            })
            .collect();
        for v in si::check(&t.history, &fates, &final_data) {
            self.violations.push(format!("si: {v}"));
        }
        for v in si::check_bank(&t.history, &keys.account_keys(), &final_data) {
            self.violations.push(v);
        }
        self.pipe_finish(&t.history, &fates);
        if self.workload == Workload::Pessimistic {
            let counters: Vec<String> = (0..keys.registers).map(txn_history::register).collect();
            for v in pessimistic::check_counters(&t.history, &fates, &counters, &final_data) {
                self.violations.push(format!("counters: {v}"));
            }
            for v in pessimistic::check_deadlocks(&t.history) {
                self.violations.push(format!("deadlock: {v}"));
            }
            let monitored = self.shared_locks.violations();
            let reads = pessimistic::check_shared_reads(&t.history, &fates);
            for v in monitored.into_iter().chain(reads) {
                self.violations.push(format!("shared: {v}"));
            }
            self.stats.shared_lock_peak = self.shared_locks.peak_holders;
        } else {
            for a in elle::check(&elle_history(&t.history)) {
                self.violations.push(format!("elle: {a}"));
            }
        }
        let (_, _, _, pending) = t.history.counts();
        debug_assert!(pending == 0 || !self.violations.is_empty());
        let workload = self.workload;
        self.into_report(workload, t.history, format!("{final_data:?}"))
    }
}

impl Client {
    /// Client number `me` of the process whose first client is `process`.
    fn new(view: Arc<ClusterView>, process: usize) -> Client {
        let mut client = Client {
            view,
            process,
            oracle: None,
            running: None,
            tails: Vec::new(),
            issued: 0,
            crash: None,
            next_probe_at: Instant::ZERO,
        };
        client.restart(client.view.clone(), process);
        client
    }

    /// The process restarted (or started): a new view, and on its first
    /// client a new oracle.
    fn restart(&mut self, view: Arc<ClusterView>, me: usize) {
        self.oracle = (me == self.process).then(|| oracle_for(&view));
        self.view = view;
    }
}

/// The timestamp oracle of a client with `view`.
fn oracle_for(view: &Arc<ClusterView>) -> TsoBatcher<OracleWaiter> {
    TsoBatcher::new(view.clone(), view.config.seed() ^ 0x7150_0a11)
}

/// A client's view of the cluster (a fresh process: empty caches). Short
/// deadlines keep runs small in virtual time; the protocol logic does not
/// depend on their size.
fn new_view(
    pd_urls: &[String],
    seed: u64,
    swarm: &Swarm,
    txn_budgets: Option<BackoffBudgets>,
    tso_rounds_in_flight: usize,
    read_timeout_short: Duration,
) -> Arc<ClusterView> {
    let mode = if txn_budgets.is_some() { Mode::Txn } else { Mode::Raw };
    let mut budgets = txn_budgets.unwrap_or_default();
    budgets.raw = swarm.raw_budget;
    let config = Config::default()
        .with_backoff_budgets(budgets)
        .with_pd_endpoints(pd_urls.to_vec())
        .with_rng_seed(seed)
        .with_pd_timeout(Duration::from_secs(1))
        .with_read_timeout_short(read_timeout_short)
        .with_read_timeout_medium(Duration::from_secs(2))
        .with_tso_max_rounds_in_flight(tso_rounds_in_flight)
        .with_forwarding(swarm.forwarding);
    let pd = Arc::new(PdState::new(config.pd_endpoints.clone()));
    Arc::new(ClusterView::new(config, ApiCodec::v1(mode), pd))
}

/// The short RPC timeout of a world's clients. A pessimistic lock request
/// may wait in TiKV up to its `wait-for-lock-timeout` (1 s), so the
/// pessimistic world's calls get 2 s (client-go's 30 s `ReadTimeoutShort`
/// is as far above TiKV's ceiling): the answer then comes from TiKV, as
/// `KeyIsLocked`, rather than from the deadline.
fn rpc_timeout(workload: Workload) -> Duration {
    match workload {
        Workload::Pessimistic => Duration::from_secs(2),
        Workload::Raw | Workload::Txn | Workload::Gc | Workload::Pipelined => {
            Duration::from_secs(1)
        }
    }
}

/// The list-append view of a transactional history, for [`elle::check`]:
/// list transactions with their micro-operations, and every full read's
/// lists as reads.
pub(crate) fn elle_history(history: &TxnHistory) -> Vec<elle::ElleTxn> {
    let mut out = Vec::new();
    for e in &history.entries {
        let status = match e.outcome {
            TxnOutcome::Committed { .. } => elle::Status::Committed,
            TxnOutcome::Failed(_) => elle::Status::Aborted,
            TxnOutcome::Undetermined(_) | TxnOutcome::Pending => elle::Status::Unknown,
        };
        let ops = match &e.kind {
            TxnKind::Lists { ops, .. } => {
                if e.run.micro.is_empty() {
                    ops.clone()
                } else {
                    e.run.micro.clone()
                }
            }
            TxnKind::FullRead => e
                .run
                .reads
                .iter()
                .filter_map(|(k, v)| {
                    Some(Micro::Read(parse_list(k)?, Some(parse_list_value(v.as_deref()))))
                })
                .collect(),
            _ => continue,
        };
        out.push(elle::ElleTxn { id: e.id, status, ops });
    }
    out
}
