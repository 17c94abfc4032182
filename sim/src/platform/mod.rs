//! The public clients under deterministic simulation: test an application
//! built on `RawClient`/`TransactionClient` against leader moves, splits,
//! lost answers, partitions and outages, with a seed that replays it.
//!
//! [`simulate`] runs an async closure on a single-threaded executor in
//! virtual time: time moves only when every task is idle, straight to the
//! next timer or message, so a 10 s backoff costs nothing. The clients are
//! the driver's own ([`RawClient`], [`TransactionClient`] are
//! `tikv_driver::RawClient<SimPlatform>` and
//! `tikv_driver::TransactionClient<SimPlatform>`: the generic types that
//! `tikv_tokio::RawClient` and `tikv_async_std::RawClient` fill in with
//! their runtimes), so code written generically over
//! `P: tikv_driver::Platform` runs unchanged here and in production.
//! Their messages travel over the seeded world's network model
//! ([`crate::net`]: latency with a slow tail, reordering, loss before and
//! after the server applied a request, duplicates, partitions) to the
//! in-process [`Cluster`], and with [`SimConfig::chaos`] the seed also draws
//! a fault schedule as the world's does ([`Plan`]: splits, merges, leader
//! moves, stores stopping, busy stores, slow stores, PD leader changes, a
//! stale PD, partitions), healed at [`Sim::heal_at`]. Every TiKV answer
//! carries its store's health feedback ([`Cluster::health_feedback`]) to
//! the client's sink, as the gRPC transport's `BatchCommands` answers do,
//! so a slow store ([`Cluster::set_store_latency`], whose answers leave
//! late) is marked slow by the clients that hear from it.
//!
//! ```
//! use tikv_sim::platform::{simulate, SimConfig};
//!
//! let report = simulate(7, SimConfig::default(), |sim| async move {
//!     let txns = sim.txn_client().await?;
//!     let mut txn = txns.begin().await?;
//!     txn.put("alice", "10")?;
//!     txn.commit().await?;
//!     // Ten virtual seconds, no wall time.
//!     sim.sleep(std::time::Duration::from_secs(10)).await;
//!     let snapshot = txns.snapshot(txns.current_timestamp().await?);
//!     let value = snapshot.get("alice").await?;
//!     assert_eq!(value.as_deref(), Some(&b"10"[..]));
//!     Ok::<_, tikv_sim::platform::Error>(())
//! });
//! let report = report.unwrap_or_else(|failure| panic!("{failure}"));
//! // The same seed replays byte for byte.
//! let again = simulate(7, SimConfig::default(), |sim| async move {
//!     let txns = sim.txn_client().await?;
//!     let mut txn = txns.begin().await?;
//!     txn.put("alice", "10")?;
//!     txn.commit().await?;
//!     sim.sleep(std::time::Duration::from_secs(10)).await;
//!     let snapshot = txns.snapshot(txns.current_timestamp().await?);
//!     snapshot.get("alice").await?;
//!     Ok::<_, tikv_sim::platform::Error>(())
//! });
//! assert_eq!(again.unwrap().trace_hash, report.trace_hash);
//! ```
//!
//! Determinism: nothing here reads a clock, spawns a thread or draws OS
//! randomness. Tasks run in wake order, timers fire in deadline order (ties
//! in the order they were armed), messages are delivered in the order the
//! seeded network decides; clients built with [`Sim::config`] (or
//! [`Sim::raw_client`] / [`Sim::txn_client`]) have their random seed pinned
//! from the simulation's. Every message (its full content), delivery, timer
//! and fault is folded into [`SimReport::trace_hash`], with the cluster's
//! final data, so two runs can be compared; [`SimConfig::trace`] keeps the
//! readable lines too.
//!
//! A run fails ([`SimFailure`], which names the seed) when the closure
//! returns `Err` or panics (also in a spawned task), when it deadlocks
//! (every task idle, nothing scheduled, the closure not finished), or
//! when it passes [`SimConfig::time_limit`] of virtual time or
//! [`SimConfig::max_events`]. [`sweep`] runs many seeds and returns the
//! failures.
//!
//! The seeded world's own workloads also run here, through the public
//! clients, checked by the world's checkers: [`run_raw_world`] (per-key
//! linearizability) and [`run_txn_world`] (snapshot isolation, honest
//! outcomes, the bank total, list-append anomalies; clients crash
//! mid-commit as in the core-level world) and [`run_pess_world`] (the
//! pessimistic workload: snapshot isolation with the pessimistic
//! guarantee, the bank total, lost counter updates, deadlock victims)
//! and [`run_gc_world`] (the transactional workload beside a GC client
//! running GC rounds, old-ts readers and `delete_range` through the
//! public client, checked by the core-level GC world's checkers too),
//! [`run_stale_world`] (writers transacting while readers read
//! stale snapshots and replica reads of each type off lagging followers,
//! each read checked against the committed state at its timestamp),
//! and [`run_pipelined_world`] (pipelined DML transactions of several
//! generations beside the transactional workload, clients crashing
//! mid-flush, in the commit and during the range's resolution, checked
//! for atomicity too),
//! so the driver's code paths
//! (its TSO task, background secondaries and cleanups, store refresh,
//! scanners) meet the same faults as the core machines.
//!
//! Crashes: [`Sim::spawn_process`] runs a future as a process, a crash
//! domain like one application server; the clients it builds and every
//! task it or they spawn (through the driver's `Runtime::spawn`: the TSO
//! task, store refresh, secondary commits and cleanups, keep-alives)
//! belong to it, and [`Sim::crash`] drops them all at once, mid-commit if
//! need be; what the process would spawn afterwards (a dropped
//! transaction's cleanup) is dropped too. A fault schedule can crash
//! processes as well: [`Fault::CrashProcess`] through [`Sim::fault`] or
//! at a virtual instant through [`Sim::fault_at`], naming a process or
//! letting the seed pick a live client process. Its requests on the wire still
//! arrive; other clients resolve the locks it left.
//!
//! Pessimistic transactions wait for each other in the stores as in TiKV:
//! a `PessimisticLock` that meets a lock is parked in the cluster's lock
//! manager ([`crate::lock_wait`]) until the lock is released, its wait
//! times out or it closes a deadlock, all on the virtual clock; a parked
//! request whose caller stopped waiting (its deadline passed, its call
//! dropped) leaves the queues and the wait-for graph.
//!
//! Limits: clients built with an unpinned `Config::rng_seed` draw their
//! seed from the process's entropy and break replay: build them from
//! [`Sim::config`].

mod exec;
mod raw_world;
mod stale_world;
mod txn_world;

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use futures::future::{FutureExt, RemoteHandle};
use tikv_core::config::Config;
use tikv_core::rng::Rng;
use tikv_core::time::{Duration, Instant};
use tikv_driver::Platform;

use crate::net::Network;
use crate::world::{Fault, PD_MEMBERS, Plan, Swarm};
use crate::{Cluster, ClusterConfig};
use exec::{Limits, Shared, Stuck};
pub use exec::{SimRuntime, SimTransport};
pub use raw_world::{RawWorldStats, run_raw_world};
pub use stale_world::{StaleWorldStats, run_stale_world};
pub use txn_world::{
    TxnWorldStats, run_gc_world, run_pess_world, run_pipelined_world, run_txn_world,
};

/// The client error type (re-exported so a closure can name it).
pub use tikv_core::Error;

/// The RawKV client on the simulated platform.
pub type RawClient = tikv_driver::RawClient<SimPlatform>;
/// The transactional client on the simulated platform.
pub type TransactionClient = tikv_driver::TransactionClient<SimPlatform>;
/// A transaction on the simulated platform.
pub type Transaction = tikv_driver::Transaction<SimPlatform>;
/// A read-only snapshot on the simulated platform.
pub type Snapshot = tikv_driver::Snapshot<SimPlatform>;

/// The `tikv_driver::Platform` of the simulation: [`SimRuntime`] and
/// [`SimTransport`]. Its `build` works only inside [`simulate`] (on the
/// simulation's thread), where each client built gets the next client
/// number on the simulated network.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimPlatform;

thread_local! {
    /// The simulation running on this thread (inside [`simulate`]).
    static CURRENT: std::cell::RefCell<Option<Sim>> = const { std::cell::RefCell::new(None) };
}

impl Platform for SimPlatform {
    type Runtime = SimRuntime;
    type Transport = SimTransport;

    fn build(_config: &Config) -> Result<(SimRuntime, SimTransport), Error> {
        let shared = CURRENT
            .with(|c| c.borrow().as_ref().map(|sim| sim.shared.clone()))
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "simulated clients are built inside tikv_sim::platform::simulate only".into(),
                )
            })?;
        let (client, process) = shared.register_client();
        Ok((SimRuntime { shared: shared.clone(), process }, SimTransport { shared, client }))
    }
}

/// How to run a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Draw a troubled universe from the seed, as the seeded world does:
    /// network latency with a tail, reordering, losses, duplicates, and a
    /// fault schedule, all healed at [`Sim::heal_at`]. Off, the network is
    /// reliable (fixed latency) and only the closure's own faults happen.
    pub chaos: bool,
    /// Keep the readable trace in the report (the hash is always kept).
    pub trace: bool,
    /// The run fails when the virtual clock would pass this.
    pub time_limit: Duration,
    /// The run fails after this many events.
    pub max_events: u64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            chaos: false,
            trace: false,
            time_limit: Duration::from_secs(3600),
            max_events: 10_000_000,
        }
    }
}

impl SimConfig {
    /// The default configuration with [`SimConfig::chaos`] on.
    pub fn chaos() -> SimConfig {
        SimConfig { chaos: true, ..SimConfig::default() }
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events carried out (timers, deliveries, faults).
    pub events: u64,
    /// Timers fired.
    pub timers: u64,
    /// RPCs the clients sent.
    pub rpcs: u64,
    /// Requests and answers the network lost.
    pub lost: u64,
    /// Answers the network duplicated.
    pub duplicates: u64,
    /// Faults applied.
    pub faults: u64,
    /// Tasks spawned (by the closure and by the clients).
    pub tasks: u64,
    /// `PessimisticLock` requests that waited in a store's lock manager.
    pub lock_waits: u64,
    /// Requests a store forwarded to the store at their
    /// `tikv-forwarded-host`.
    pub forwarded: u64,
    /// Answers a slow store sent late ([`Fault::StoreLatency`]).
    pub late_answers: u64,
    /// Health feedback deliveries that reported a slow store (a TiKV slow
    /// score at client-go's threshold of 80), each handed to its client's
    /// sink.
    pub slow_feedback: u64,
}

/// A successful run.
#[derive(Debug)]
pub struct SimReport<T> {
    /// The seed that replays it.
    pub seed: u64,
    /// What the closure returned.
    pub output: T,
    /// Hash of every trace line (messages with their content, deliveries,
    /// timers, faults) and the cluster's final data.
    pub trace_hash: u64,
    /// The readable trace (empty unless [`SimConfig::trace`]).
    pub trace: String,
    /// Virtual time at the end.
    pub end: Instant,
    /// Counters.
    pub stats: SimStats,
}

/// A failed run; its `Display` names the seed to replay.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed that reproduces the failure.
    pub seed: u64,
    /// What went wrong.
    pub reason: String,
    /// As [`SimReport::trace_hash`].
    pub trace_hash: u64,
    /// As [`SimReport::trace`].
    pub trace: String,
    /// Virtual time of the failure.
    pub end: Instant,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation failed with seed {} at virtual time {}: {}\n\
             replay: run simulate({}, ..) again (add SimConfig::trace to see every message)",
            self.seed, self.end, self.reason, self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

/// The closure's handle on the simulation: the cluster, faults, the
/// virtual clock, clients and tasks.
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Shared>,
    seed: u64,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sim(seed {}, now {})", self.seed, self.now())
    }
}

impl Sim {
    /// The simulation running on this thread: inside [`simulate`]'s
    /// closure and the tasks it spawns, `None` elsewhere. Lets code that
    /// is not handed the [`Sim`] (a test harness's timer, a helper deep in
    /// a test) reach the virtual clock and the executor.
    pub fn current() -> Option<Sim> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Serves a fresh cluster built from `config` instead of the drawn one
    /// (a test's own split keys, API version, store count or PD members),
    /// its PD members at [`Sim::pd_urls`]; returns it. Must come before
    /// the first client is built, which would otherwise hold the old
    /// cluster's regions and timestamps.
    ///
    /// With [`SimConfig::chaos`], the drawn fault schedule still names the
    /// drawn cluster's stores; on the new one a fault naming a store it
    /// lacks changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when a client was built already.
    pub fn replace_cluster(&self, config: ClusterConfig) -> Result<Cluster, Error> {
        let pd_urls = pd_urls(config.pd_members);
        let cluster = Cluster::new(config);
        self.shared.replace_cluster(cluster.clone(), pd_urls).map_err(|_| {
            Error::InvalidArgument(
                "the simulated cluster is replaced before the first client is built".into(),
            )
        })?;
        Ok(cluster)
    }

    /// The PD members' URLs (`http://pd-<i>.sim:2379`), which the
    /// simulated network resolves: the endpoints for a client's `Config`.
    pub fn pd_urls(&self) -> Vec<String> {
        self.shared.pd_urls()
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.shared.now()
    }

    /// Sleeps `d` of virtual time.
    pub fn sleep(&self, d: std::time::Duration) -> impl Future<Output = ()> + Send + use<> {
        exec::sleep(&self.shared, d)
    }

    /// Sleeps until the virtual instant `at`.
    pub fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> + Send + use<> {
        let d = at.saturating_duration_since(self.now());
        exec::sleep(&self.shared, d)
    }

    /// Runs `fut` as a task of its own (a concurrent client of the
    /// application). The handle resolves to its output; dropping the handle
    /// drops the task.
    pub fn spawn<F>(&self, fut: F) -> RemoteHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send,
    {
        let (task, handle) = fut.remote_handle();
        exec::spawn(&self.shared, None, task.boxed());
        handle
    }

    /// Runs `fut` as a new process: a crash domain, like one application
    /// server. The clients it builds and the tasks it and they spawn (a
    /// client's TSO task, store refresh, secondary commits, keep-alives)
    /// belong to it, and [`Sim::crash`] ends them all at once.
    pub fn spawn_process<F>(&self, fut: F) -> Process<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.shared.new_process();
        let (tx, rx) = futures::channel::oneshot::channel();
        let task = async move {
            let _ = tx.send(fut.await);
        };
        exec::spawn(&self.shared, Some(id), task.boxed());
        Process { id: ProcessId(id), output: rx }
    }

    /// The process the calling task belongs to (`None` outside any
    /// process started by [`Sim::spawn_process`]).
    pub fn current_process(&self) -> Option<ProcessId> {
        let id = self.shared.current_process();
        (id != exec::ROOT).then_some(ProcessId(id))
    }

    /// Crashes `process` now, as a machine dies: its tasks and its clients'
    /// background tasks are dropped without running further, and anything
    /// it would spawn later (a dropped transaction's cleanup) is dropped at
    /// once. Its requests already on the wire still reach their servers;
    /// the answers find nobody. Locks it left behind are resolved by other
    /// clients as TiKV's protocol has them.
    pub fn crash(&self, process: ProcessId) {
        self.shared.crash(process.0);
    }

    /// A client configuration for this simulation: the simulated PD
    /// members as endpoints, a random seed drawn from the run's, and
    /// forwarding as the run's plan draws it. Change anything else before
    /// connecting.
    ///
    /// Its PD and read timeouts are shorter than client-go's (1 s, reads 1
    /// and 2 s), as in the seeded world: a lost message costs less of the
    /// fault window, and the protocol does not depend on their size.
    pub fn config(&self) -> Config {
        Config::default()
            .with_pd_endpoints(self.shared.pd_urls())
            .with_rng_seed(self.shared.next_u64())
            .with_pd_timeout(Duration::from_secs(1))
            .with_read_timeout_short(Duration::from_secs(1))
            .with_read_timeout_medium(Duration::from_secs(2))
            .with_forwarding(self.shared.forwarding())
    }

    /// A new RawKV client (the next client number) with [`Sim::config`].
    pub async fn raw_client(&self) -> Result<RawClient, Error> {
        RawClient::connect_with_config(self.config()).await
    }

    /// A new transactional client with [`Sim::config`].
    pub async fn txn_client(&self) -> Result<TransactionClient, Error> {
        TransactionClient::connect_with_config(self.config()).await
    }

    /// The simulated cluster, for direct control (split at a key, move a
    /// leader, stop a store, inject region errors) and inspection.
    pub fn cluster(&self) -> Cluster {
        self.shared.cluster()
    }

    /// Applies a fault now, as the fault schedule does (a
    /// [`Fault::Split`]`(k)` splits at the `k`-th stored key, modulo;
    /// partitions name clients by the order they were built). Nothing
    /// happens once the network is healed, except
    /// [`Fault::CrashProcess`]: it crashes the process with that
    /// [`ProcessId::number`], or (`None`) a live process that built a
    /// client, drawn by the seed, as [`Sim::crash`] does.
    pub fn fault(&self, fault: Fault) {
        self.shared.fault(&fault);
    }

    /// Schedules `fault` at the virtual instant `at` (now, if that has
    /// passed), as the drawn fault schedule's faults are: a user's own
    /// schedule (a leader move at 2 s, a client crash at 5 s), applied
    /// as by [`Sim::fault`] when the clock reaches it, in the order
    /// scheduled among faults due at the same instant.
    pub fn fault_at(&self, at: Instant, fault: Fault) {
        self.shared.schedule_fault(at, fault);
    }

    /// Heals every fault now and turns the network reliable.
    pub fn heal(&self) {
        self.shared.heal();
    }

    /// When the drawn fault schedule heals ([`SimConfig::chaos`]).
    pub fn heal_at(&self) -> Option<Instant> {
        self.shared.heal_at()
    }

    /// Adds a line to the trace (and its hash).
    pub fn log(&self, line: impl AsRef<str>) {
        self.shared.log_user(line.as_ref());
    }
}

/// Names a process started by [`Sim::spawn_process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessId(u64);

impl ProcessId {
    /// Its number (`p<n>` in the trace), as [`Fault::CrashProcess`] names
    /// it.
    pub fn number(self) -> u64 {
        self.0
    }
}

/// A process started by [`Sim::spawn_process`].
#[derive(Debug)]
pub struct Process<T> {
    id: ProcessId,
    output: futures::channel::oneshot::Receiver<T>,
}

impl<T> Process<T> {
    /// Its id, for [`Sim::crash`].
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// Waits for the process: its output, or `None` when it crashed first.
    pub async fn join(self) -> Option<T> {
        self.output.await.ok()
    }
}

/// Restores the thread's previous simulation when a run ends (even by a
/// panic).
struct CurrentGuard(Option<Sim>);

impl CurrentGuard {
    fn enter(sim: Sim) -> CurrentGuard {
        CurrentGuard(CURRENT.with(|c| c.borrow_mut().replace(sim)))
    }
}

/// The URLs of `members` simulated PD members.
fn pd_urls(members: usize) -> Vec<String> {
    (0..members).map(|i| format!("http://pd-{i}.sim:2379")).collect()
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// A network without trouble: fixed latency, no loss.
fn reliable_swarm() -> Swarm {
    Swarm {
        clients: 0,
        ops_per_client: 0,
        keys: 0,
        stores: 3,
        splits: Vec::new(),
        latency_min: Duration::from_micros(200),
        latency_jitter: Duration::ZERO,
        tail_permille: 0,
        tail: Duration::ZERO,
        drop_request_permille: 0,
        drop_response_permille: 0,
        duplicate_permille: 0,
        think: Duration::ZERO,
        raw_budget: Duration::ZERO,
        forwarding: false,
    }
}

/// Runs `body` in a simulation seeded with `seed` (see the module docs).
///
/// # Errors
///
/// A [`SimFailure`] naming the seed when the closure fails, panics,
/// deadlocks or runs past the limits.
pub fn simulate<F, Fut, T, E>(
    seed: u64,
    config: SimConfig,
    body: F,
) -> Result<SimReport<T>, SimFailure>
where
    F: FnOnce(Sim) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    let mut rng = Rng::new(seed);
    // The transactional world's universe: its fault window (0.5 to 7 s) is
    // long enough for an application's clients to connect and work in it.
    let plan = config.chaos.then(|| {
        let mut plan = Plan::draw_txn(&mut rng);
        plan.draw_own_streams(seed);
        plan
    });
    let swarm = plan.as_ref().map_or_else(reliable_swarm, |p| p.swarm.clone());
    let cluster = Cluster::new(ClusterConfig {
        stores: swarm.stores,
        seed: rng.next_u64(),
        pd_members: PD_MEMBERS,
        v1_txn: true,
        ..ClusterConfig::default()
    });
    let net = Network::new(swarm, pd_urls(PD_MEMBERS));
    let shared = Shared::new(seed, rng, net, cluster, config.trace);
    if let Some(plan) = plan {
        shared.log_line(&format!("plan: {plan}"));
        for (at, fault) in plan.faults {
            shared.schedule_fault(at, fault);
        }
        shared.schedule_heal(plan.heal_at);
    }
    let limits =
        Limits { time: Instant::ZERO.saturating_add(config.time_limit), events: config.max_events };
    let sim = Sim { shared: shared.clone(), seed };
    let guard = CurrentGuard::enter(sim.clone());
    let outcome = catch_unwind(AssertUnwindSafe(|| shared.run(body(sim), limits)));
    shared.shutdown();
    drop(guard);
    let end = shared.now();
    let stats = shared.stats();
    let (trace_hash, trace) = shared.finish_trace();
    let fail = |reason: String| SimFailure { seed, reason, trace_hash, trace: trace.clone(), end };
    match outcome {
        Ok(Ok(Ok(output))) => Ok(SimReport { seed, output, trace_hash, trace, end, stats }),
        Ok(Ok(Err(e))) => Err(fail(format!("the closure returned an error: {e}"))),
        Ok(Err(Stuck::Deadlock)) => Err(fail(
            "deadlock: every task is idle, nothing is scheduled, and the closure has not finished"
                .into(),
        )),
        Ok(Err(Stuck::Limit(why))) => Err(fail(why)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic".into());
            Err(fail(format!("panicked: {msg}")))
        }
    }
}

/// Runs `body` for every seed in `seeds` and returns the failures, in seed
/// order.
pub fn sweep<F, Fut, T, E>(
    seeds: std::ops::Range<u64>,
    config: &SimConfig,
    body: F,
) -> Vec<SimFailure>
where
    F: Fn(Sim) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    seeds.filter_map(|seed| simulate(seed, config.clone(), &body).err()).collect()
}
