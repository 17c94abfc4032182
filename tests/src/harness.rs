//! Runtime harnesses (tokio, async-std, the simulated platform), and the
//! simulated cluster's server thread on either bed: the simulator's own PD,
//! or a real PD with the stores joined to it. Under the simulated platform
//! the simulation itself serves the in-process bed's cluster.

use std::collections::BTreeMap;
use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use tikv_core::time::Instant;
use tikv_driver::Platform;
use tikv_sim::join::{JoinError, JoinOptions, JoinedCluster};
use tikv_sim::platform::{Sim, SimConfig, simulate};
use tikv_sim::real_pd::{RealPd, get_json, http, post};
use tikv_sim::server::{BatchStats, ServerError, ServerOptions, SimServer};
use tikv_sim::tls::ServerTls;
use tikv_sim::{Cluster, ClusterConfig, SimError};

use crate::pd_view::{all_replicated, converge, hex};

/// What a suite needs from a runtime: the client platform to test, a way to
/// run a test body to completion, and a timer.
pub trait Harness: 'static {
    /// The platform the suite's `RawClient<Platform>` runs on.
    type Platform: Platform;

    /// Runs `test` to completion on this runtime, from a plain thread.
    fn block_on<F: Future>(test: F) -> F::Output;

    /// Sleeps on this runtime's timer.
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;

    /// Runs `task` on this runtime's executor, beside the test; the
    /// returned future yields its output (and fails the test if it panicked).
    /// Called from within [`Harness::block_on`].
    fn spawn<T: Send + 'static>(
        task: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> + Send;
}

/// The tokio client (`tikv_tokio::Tokio`) on a two-worker multi-thread
/// runtime, as a typical tokio application runs it.
#[derive(Debug)]
pub struct TokioHarness;

impl Harness for TokioHarness {
    type Platform = tikv_tokio::Tokio;

    fn block_on<F: Future>(test: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Boxed: a suite's future is large in debug builds, and test
        // threads have small stacks.
        rt.block_on(Box::pin(test))
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn spawn<T: Send + 'static>(
        task: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        let handle = tokio::spawn(task);
        async move { handle.await.expect("spawned task") }
    }
}

/// The async-std client (`tikv_async_std::AsyncStd`) under
/// `async_std::task::block_on`.
#[derive(Debug)]
pub struct AsyncStdHarness;

impl Harness for AsyncStdHarness {
    type Platform = tikv_async_std::AsyncStd;

    fn block_on<F: Future>(test: F) -> F::Output {
        // Boxed: see `TokioHarness::block_on`.
        async_std::task::block_on(Box::pin(test))
    }

    async fn sleep(duration: Duration) {
        async_io::Timer::after(duration).await;
    }

    fn spawn<T: Send + 'static>(
        task: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        async_std::task::spawn(task)
    }
}

/// The simulated platform (`tikv_sim::platform::SimPlatform`): a test body
/// runs under [`simulate`] with a fixed seed and no drawn faults, on its
/// single-threaded executor in virtual time, and its clients reach the
/// simulation's in-process cluster through the simulated network (reliable:
/// fixed latency, nothing lost). [`SimHandle::start`] serves the body's
/// cluster to the simulation instead of over gRPC. A failing body fails the
/// test with the simulation's report.
#[derive(Debug)]
pub struct SimPlatformHarness;

impl SimPlatformHarness {
    /// The seed every body runs with (there are no drawn faults, so it only
    /// picks the clients' random seeds and the network's draws).
    pub const SEED: u64 = 1;

    fn sim() -> Sim {
        Sim::current().expect("SimPlatformHarness: called outside its block_on (no simulation)")
    }
}

impl Harness for SimPlatformHarness {
    type Platform = tikv_sim::platform::SimPlatform;

    fn block_on<F: Future>(test: F) -> F::Output {
        // Boxed: see `TokioHarness::block_on`.
        let test = Box::pin(test);
        let run = simulate(SimPlatformHarness::SEED, SimConfig::default(), |_sim| async move {
            Ok::<_, std::convert::Infallible>(test.await)
        });
        match run {
            Ok(report) => report.output,
            Err(failure) => panic!("{failure}"),
        }
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        SimPlatformHarness::sim().sleep(duration)
    }

    fn spawn<T: Send + 'static>(
        task: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        // The handle resumes the task's panic when awaited.
        SimPlatformHarness::sim().spawn(task)
    }
}

/// The name of the simulated cluster's thread.
pub const SIM_THREAD: &str = "sim-server";

/// Where a suite's cluster runs: which PD serves it and how topology
/// changes reach its stores. The stores are the simulator's on both beds,
/// served on the [`SIM_THREAD`]; a suite body takes the bed as an argument
/// and runs unchanged on either (the suites' macros stamp each test out
/// once per runtime and bed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bed {
    /// The simulator's own PD model in-process (`tikv_sim::server`):
    /// splits and leader moves are made in the model directly.
    InProcess,
    /// A real PD ([`tikv_sim::real_pd`], one per test, about a second to
    /// start) with three simulated stores joined to it
    /// ([`tikv_sim::join`]): PD's schedulers are off, its replica checker
    /// and its own keyspace splits are on; splits and leader moves are PD
    /// operators (its HTTP API), carried out by the stores and waited for
    /// until PD's region view equals the stores'.
    RealPd,
}

/// A step a suite asked of a bed that cannot carry it out. Suites match on
/// it and say what they check instead, so nothing is skipped silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotOnThisBed {
    /// The bed.
    pub bed: Bed,
    /// The step, in words.
    pub step: &'static str,
    /// Why the bed cannot do it.
    pub why: &'static str,
}

impl std::fmt::Display for NotOnThisBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} cannot {}: {}", self.bed, self.step, self.why)
    }
}

/// Why a bed did not carry out a step.
#[derive(Debug)]
pub enum BedError {
    /// The bed cannot do this at all.
    NotOnThisBed(NotOnThisBed),
    /// The in-process model refused (no such region, a split at a boundary, ...).
    Sim(SimError),
    /// A store listener failed.
    Server(ServerError),
    /// The joined stores failed towards the real PD.
    Join(JoinError),
    /// The real PD refused an operator, or its view never showed the change.
    Pd(String),
}

impl std::fmt::Display for BedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BedError::NotOnThisBed(e) => write!(f, "{e}"),
            BedError::Sim(e) => write!(f, "{e}"),
            BedError::Server(e) => write!(f, "{e}"),
            BedError::Join(e) => write!(f, "{e}"),
            BedError::Pd(e) => write!(f, "real PD: {e}"),
        }
    }
}

impl std::error::Error for BedError {}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    StopStore(u64, Reply<Result<(), BedError>>),
    StartStore(u64, Reply<Result<(), BedError>>),
    BatchStats(Reply<BatchStats>),
    Now(Reply<Instant>),
    /// Real PD: split at these region keys through PD's operators.
    Split(Vec<Vec<u8>>, Reply<Result<(), BedError>>),
    /// Real PD: move a region's leader to a store through PD's operator.
    TransferLeader(u64, u64, Reply<Result<(), BedError>>),
    Shutdown,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::StopStore(id, _) => write!(f, "StopStore({id})"),
            Command::StartStore(id, _) => write!(f, "StartStore({id})"),
            Command::BatchStats(_) => write!(f, "BatchStats"),
            Command::Now(_) => write!(f, "Now"),
            Command::Split(keys, _) => write!(f, "Split({keys:?})"),
            Command::TransferLeader(region, store, _) => {
                write!(f, "TransferLeader({region} -> {store})")
            }
            Command::Shutdown => write!(f, "Shutdown"),
        }
    }
}

/// How long a real PD may take to show a change the stores made.
const CONVERGE_WITHIN: Duration = Duration::from_secs(20);

/// What the server thread serves.
enum Served {
    InProcess(SimServer),
    RealPd { pd: String, joined: JoinedCluster },
}

impl Served {
    fn server(&self) -> &SimServer {
        match self {
            Served::InProcess(server) => server,
            Served::RealPd { joined, .. } => joined.server(),
        }
    }

    async fn stop_store(&self, store_id: u64) -> Result<(), BedError> {
        match self {
            Served::InProcess(server) => {
                server.stop_store(store_id).await.map_err(BedError::Server)
            }
            Served::RealPd { joined, .. } => {
                joined.stop_store(store_id).await.map_err(BedError::Join)
            }
        }
    }

    async fn start_store(&self, store_id: u64) -> Result<(), BedError> {
        match self {
            Served::InProcess(server) => {
                server.start_store(store_id).await.map_err(BedError::Server)
            }
            Served::RealPd { joined, .. } => {
                joined.start_store(store_id).await.map_err(BedError::Join)
            }
        }
    }

    async fn split(&self, region_keys: &[Vec<u8>]) -> Result<(), BedError> {
        match self {
            Served::InProcess(_) => Err(BedError::Pd("no real PD on this bed".into())),
            Served::RealPd { pd, joined } => pd_split(pd, joined.cluster(), region_keys).await,
        }
    }

    async fn transfer_leader(&self, region_id: u64, store_id: u64) -> Result<(), BedError> {
        match self {
            Served::InProcess(_) => Err(BedError::Pd("no real PD on this bed".into())),
            Served::RealPd { pd, joined } => {
                pd_transfer_leader(pd, joined.cluster(), region_id, store_id).await
            }
        }
    }

    async fn shutdown(self) {
        match self {
            Served::InProcess(server) => server.shutdown().await,
            Served::RealPd { joined, .. } => joined.shutdown().await,
        }
    }
}

/// One operator through PD's HTTP API.
fn pd_operator(pd: &str, body: &str) -> Result<(), BedError> {
    match http(pd, "POST", "/pd/api/v1/operators", Some(body)) {
        (200, _) => Ok(()),
        (status, answer) => Err(BedError::Pd(format!("operator {body}: {status} {answer}"))),
    }
}

/// Splits at `region_keys` (region key space) with one `split-region`
/// operator (policy `usekey`) per region they fall in, as an operator
/// posted to PD's HTTP API does, then waits until PD shows every boundary.
/// A key that is a boundary already needs nothing.
async fn pd_split(pd: &str, cluster: &Cluster, region_keys: &[Vec<u8>]) -> Result<(), BedError> {
    let mut by_region: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for key in region_keys {
        let region = cluster
            .region_for_region_key(key)
            .ok_or_else(|| BedError::Pd(format!("no region holds {}", hex(key))))?;
        if region.start_key[..] != key[..] {
            by_region.entry(region.id).or_default().push(format!("\"{}\"", hex(key)));
        }
    }
    for (region_id, keys) in &by_region {
        pd_operator(
            pd,
            &format!(
                r#"{{"name":"split-region","region_id":{region_id},"policy":"usekey","keys":[{}]}}"#,
                keys.join(",")
            ),
        )?;
    }
    let wanted: Vec<String> = region_keys.iter().map(|k| hex(k)).collect();
    converge(pd, cluster, CONVERGE_WITHIN, |regions| {
        wanted.iter().all(|k| regions.iter().any(|r| r.start == *k))
    })
    .await
    .map_err(BedError::Pd)
}

/// Moves a region's leader to `store_id` with PD's `transfer-leader`
/// operator and waits until PD shows it there.
async fn pd_transfer_leader(
    pd: &str,
    cluster: &Cluster,
    region_id: u64,
    store_id: u64,
) -> Result<(), BedError> {
    let region =
        cluster.region(region_id).ok_or(BedError::Sim(SimError::NoSuchRegion(region_id)))?;
    if !region.peers.iter().any(|p| p.store_id == store_id) {
        return Err(BedError::Sim(SimError::NoPeerOnStore { region_id, store_id }));
    }
    if cluster.leader_of(region_id).is_some_and(|p| p.store_id == store_id) {
        return Ok(());
    }
    pd_operator(
        pd,
        &format!(
            r#"{{"name":"transfer-leader","region_id":{region_id},"to_store_id":{store_id}}}"#
        ),
    )?;
    converge(pd, cluster, CONVERGE_WITHIN, |regions| {
        regions.iter().any(|r| r.id == region_id && r.leader_store == store_id)
    })
    .await
    .map_err(BedError::Pd)
}

/// Makes a fresh real PD deterministic for tests, as `join_pd` does: no
/// balancing, merging or hot-region scheduling; its replica checker, its
/// own keyspace splits and operators posted to its HTTP API stay on.
fn limit_schedulers(pd: &str) {
    post(
        pd,
        "/pd/api/v1/config",
        r#"{"leader-schedule-limit":0,"region-schedule-limit":0,"merge-schedule-limit":0,"hot-region-schedule-limit":0}"#,
    );
}

/// Removes PD's schedulers (PD lists them once the cluster is bootstrapped).
fn remove_schedulers(pd: &str) -> Result<(), String> {
    for name in get_json(pd, "/pd/api/v1/schedulers").items() {
        let (status, body) =
            http(pd, "DELETE", &format!("/pd/api/v1/schedulers/{}", name.str()), None);
        if status != 200 {
            return Err(format!("remove PD's scheduler {name:?}: {status} {body}"));
        }
    }
    Ok(())
}

/// Joins `config.stores` simulated stores to the real PD at `pd`, waits
/// until PD has split at its keyspace boundaries and replicated every
/// region three times, then splits at `config.split_keys` through PD.
async fn join_real_pd(pd: &str, config: ClusterConfig) -> Result<JoinedCluster, String> {
    if config.stores != 3 {
        return Err(format!(
            "the real-PD bed runs 3 stores (PD's max-replicas), not {}",
            config.stores
        ));
    }
    let mut opts = JoinOptions::new(pd, config.stores);
    // Changes are reported at once; the periodic report only repairs a
    // report lost with a broken stream.
    opts.region_heartbeat_interval = Duration::from_secs(2);
    let split_keys = config.split_keys.clone();
    let joined = JoinedCluster::start(config, opts).await.map_err(|e| e.to_string())?;
    remove_schedulers(pd)?;
    converge(pd, joined.cluster(), CONVERGE_WITHIN, all_replicated)
        .await
        .map_err(|e| format!("after bootstrap: {e}"))?;
    let region_keys: Vec<Vec<u8>> =
        split_keys.iter().map(|k| joined.cluster().boundary_key(k)).collect();
    pd_split(pd, joined.cluster(), &region_keys)
        .await
        .map_err(|e| format!("initial splits: {e}"))?;
    Ok(joined)
}

/// Topology changes on a served cluster, through the bed's PD: cloneable,
/// so a task spawned beside the test can change the topology while the
/// test runs. Each change returns once clients routing through PD can see
/// it.
#[derive(Clone, Debug)]
pub struct Topology {
    bed: Bed,
    cluster: Cluster,
    commands: mpsc::UnboundedSender<Command>,
}

impl Topology {
    /// The bed the cluster runs on.
    pub fn bed(&self) -> Bed {
        self.bed
    }

    async fn command<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> T {
        let (reply, answer) = oneshot::channel();
        self.commands.unbounded_send(make(reply)).expect("sim-server thread alive");
        answer.await.expect("sim-server thread answered")
    }

    /// Splits the region holding the request key `key` at it (mapped into
    /// region key space as [`Cluster::split`] maps it). In-process: in the
    /// model. Real PD: PD's `split-region` operator, which the region's
    /// leader carries out through `AskBatchSplit`.
    pub async fn split(&self, key: &[u8]) -> Result<(), BedError> {
        match self.bed {
            Bed::InProcess => self.cluster.split(key).map(drop).map_err(BedError::Sim),
            Bed::RealPd => {
                let region_key = self.cluster.boundary_key(key);
                let at_boundary = self
                    .cluster
                    .region_for_region_key(&region_key)
                    .is_some_and(|r| r.start_key[..] == region_key[..]);
                if at_boundary {
                    return Err(BedError::Sim(SimError::SplitAtBoundary(region_key)));
                }
                self.command(|reply| Command::Split(vec![region_key], reply)).await
            }
        }
    }

    /// Moves leadership of `region_id` to its peer on `store_id`.
    /// In-process: in the model. Real PD: PD's `transfer-leader` operator.
    pub async fn transfer_leader(&self, region_id: u64, store_id: u64) -> Result<(), BedError> {
        match self.bed {
            Bed::InProcess => {
                self.cluster.transfer_leader(region_id, store_id).map_err(BedError::Sim)
            }
            Bed::RealPd => {
                self.command(|reply| Command::TransferLeader(region_id, store_id, reply)).await
            }
        }
    }

    /// Makes PD member `member` the leader (clients holding the old leader
    /// are refused and rediscover). In-process only: the real PD of
    /// `shared/pd` is a single member, and the joined stores follow one PD
    /// endpoint.
    pub async fn change_pd_leader(&self, member: usize) -> Result<(), BedError> {
        match self.bed {
            Bed::InProcess => self.cluster.set_pd_leader(member).map_err(BedError::Sim),
            Bed::RealPd => Err(BedError::NotOnThisBed(NotOnThisBed {
                bed: Bed::RealPd,
                step: "change the PD leader",
                why: "the real PD is a single member and the joined stores follow one PD \
                      endpoint (see tikv_sim::join)",
            })),
        }
    }
}

/// A simulated cluster on a [`Bed`], its stores (and, in-process, its PD)
/// served on their own thread ([`SIM_THREAD`]) with a private tokio
/// current-thread runtime, driven from any runtime through channels.
/// Dropping the handle (or [`SimHandle::shutdown`]) stops the server, joins
/// the thread and stops the real PD.
#[derive(Debug)]
pub struct SimHandle {
    topology: Topology,
    pd_addrs: Vec<String>,
    thread: Option<JoinHandle<()>>,
    real_pd: Option<RealPd>,
    /// The simulation serving the cluster instead of the server thread
    /// (under [`SimPlatformHarness`]).
    platform: Option<Sim>,
}

impl SimHandle {
    /// Starts serving a cluster built from `config` on `bed` and waits
    /// until clients can use it: in-process, once it listens; on a real PD,
    /// once PD has the stores, every region replicated three times and the
    /// `split_keys` applied (`split_keys`, API version and encoding are
    /// honoured; PD allocates the store and region ids, `pd_members` is
    /// one, and `config.stores` must be 3, PD's default `max-replicas`, for
    /// every region to be replicated).
    ///
    /// Inside a simulation (a body run by [`SimPlatformHarness`]) the
    /// simulation serves the cluster instead (in-process bed only): see
    /// [`tikv_sim::platform::Sim::replace_cluster`].
    ///
    /// # Panics
    ///
    /// When the cluster cannot start (a test failure), and on [`Bed::RealPd`]
    /// when the real PD is missing beside the checkout
    /// ([`tikv_sim::real_pd::shared_pd_dir`]): such a test fails, never skips.
    /// Inside a simulation, on [`Bed::RealPd`] and when a client was built
    /// before.
    pub async fn start(bed: Bed, config: ClusterConfig) -> SimHandle {
        SimHandle::launch(bed, config, ServerOptions::default()).await
    }

    /// Starts serving a cluster built from `config` in-process with TLS on
    /// every PD and store listener (see [`SimHandle::start`]). TLS runs on
    /// the in-process bed only: the real PD of the other bed is started
    /// without certificates.
    pub async fn start_tls(config: ClusterConfig, tls: ServerTls) -> SimHandle {
        let opts = ServerOptions { tls: Some(tls), ..ServerOptions::default() };
        SimHandle::launch(Bed::InProcess, config, opts).await
    }

    async fn launch(bed: Bed, config: ClusterConfig, opts: ServerOptions) -> SimHandle {
        if let Some(sim) = Sim::current() {
            return SimHandle::in_simulation(sim, bed, config, opts);
        }
        let real_pd = match bed {
            Bed::InProcess => None,
            Bed::RealPd => {
                // Blocks the test's own thread for about a second.
                let pd = RealPd::start();
                limit_schedulers(pd.addr());
                Some(pd)
            }
        };
        let pd_addr = real_pd.as_ref().map(|pd| pd.addr().to_owned());
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(Cluster, Vec<String>), String>>();
        let (commands, mut command_rx) = mpsc::unbounded::<Command>();
        let thread = std::thread::Builder::new()
            .name(SIM_THREAD.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    // Blocking-pool threads would otherwise take tokio's
                    // default worker name, which the tokio-free checks
                    // look for.
                    .thread_name("sim-server-pool")
                    .build()
                    .expect("sim runtime");
                rt.block_on(async move {
                    let started = match pd_addr {
                        None => {
                            let cluster = Cluster::new(config);
                            SimServer::start(cluster, opts)
                                .await
                                .map(Served::InProcess)
                                .map_err(|e| e.to_string())
                        }
                        Some(pd) => join_real_pd(&pd, config)
                            .await
                            .map(|joined| Served::RealPd { pd, joined }),
                    };
                    let served = match started {
                        Ok(served) => served,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let pd_addrs = match &served {
                        Served::InProcess(server) => server.pd_addrs(),
                        Served::RealPd { pd, .. } => vec![pd.clone()],
                    };
                    let _ = ready_tx.send(Ok((served.server().cluster().clone(), pd_addrs)));
                    while let Some(command) = command_rx.next().await {
                        match command {
                            Command::StopStore(id, reply) => {
                                let _ = reply.send(served.stop_store(id).await);
                            }
                            Command::StartStore(id, reply) => {
                                let _ = reply.send(served.start_store(id).await);
                            }
                            Command::BatchStats(reply) => {
                                let _ = reply.send(served.server().batch_stats());
                            }
                            Command::Now(reply) => {
                                let _ = reply.send(served.server().now());
                            }
                            Command::Split(keys, reply) => {
                                let _ = reply.send(served.split(&keys).await);
                            }
                            Command::TransferLeader(region, store, reply) => {
                                let _ = reply.send(served.transfer_leader(region, store).await);
                            }
                            Command::Shutdown => break,
                        }
                    }
                    served.shutdown().await;
                });
            })
            .expect("spawn the sim-server thread");
        let (cluster, pd_addrs) = match ready_rx.await {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => panic!("simulated cluster on {bed:?} does not start: {e}"),
            Err(_) => panic!("sim-server thread died while starting"),
        };
        SimHandle {
            topology: Topology { bed, cluster, commands },
            pd_addrs,
            thread: Some(thread),
            real_pd,
            platform: None,
        }
    }

    /// Inside a simulation (a body run by [`SimPlatformHarness`]): the
    /// simulation serves a cluster built from `config` to its clients over
    /// the simulated network, at PD addresses it resolves; no thread, no
    /// listener. In-process bed only, without TLS: the real PD and TLS need
    /// real sockets.
    fn in_simulation(sim: Sim, bed: Bed, config: ClusterConfig, opts: ServerOptions) -> SimHandle {
        assert_eq!(bed, Bed::InProcess, "the simulated platform serves the in-process bed only");
        assert!(opts.tls.is_none(), "the simulated platform serves no TLS");
        let cluster = sim.replace_cluster(config).unwrap_or_else(|e| {
            panic!("one simulated cluster per test, started before its clients: {e}")
        });
        // Nobody listens: commands go to the server thread of the other
        // beds, and the in-process topology changes never send one.
        let (commands, _) = mpsc::unbounded();
        SimHandle {
            topology: Topology { bed, cluster, commands },
            pd_addrs: sim.pd_urls(),
            thread: None,
            real_pd: None,
            platform: Some(sim),
        }
    }

    /// The bed the cluster runs on.
    pub fn bed(&self) -> Bed {
        self.topology.bed
    }

    /// True under [`SimPlatformHarness`]: the stores are reached over the
    /// simulated network, not their gRPC face.
    pub fn on_simulated_network(&self) -> bool {
        self.platform.is_some()
    }

    /// The model the stores serve: to read their state (regions, locks,
    /// data) and to inject store faults, on either bed. Topology changes go
    /// through [`SimHandle::topology`] instead, so they reach a real PD.
    pub fn cluster(&self) -> &Cluster {
        &self.topology.cluster
    }

    /// Topology changes through the bed's PD.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// PD member addresses (`host:port`).
    pub fn pd_addrs(&self) -> Vec<String> {
        self.pd_addrs.clone()
    }

    /// Stops the real PD and starts it again on its address and data
    /// ([`RealPd::restart`]): clients and the joined stores lose their
    /// streams and must reconnect; PD keeps its cluster, regions and TSO
    /// window. The in-process PD model has no restart (it keeps no state
    /// apart from the cluster it serves): [`BedError::NotOnThisBed`] there.
    ///
    /// Blocks the calling thread while PD restarts (about a second).
    pub async fn restart_pd(&mut self) -> Result<(), BedError> {
        match &mut self.real_pd {
            Some(pd) => {
                pd.restart();
                Ok(())
            }
            None => Err(BedError::NotOnThisBed(NotOnThisBed {
                bed: self.topology.bed,
                step: "restart PD",
                why: "the simulator's PD model lives in the cluster it serves and has no \
                      process to restart",
            })),
        }
    }

    /// Crashes a store: see [`SimServer::stop_store`] (and, on a real PD,
    /// [`JoinedCluster::stop_store`]: the new leaders report to PD).
    pub async fn stop_store(&self, store_id: u64) -> Result<(), BedError> {
        if self.platform.is_some() {
            // The model answers a stopped store's requests as unreachable.
            return self.cluster().stop_store(store_id).map_err(BedError::Sim);
        }
        self.topology.command(|reply| Command::StopStore(store_id, reply)).await
    }

    /// Restarts a stopped store on its address: see [`SimServer::start_store`].
    pub async fn start_store(&self, store_id: u64) -> Result<(), BedError> {
        if self.platform.is_some() {
            return self.cluster().start_store(store_id).map_err(BedError::Sim);
        }
        self.topology.command(|reply| Command::StartStore(store_id, reply)).await
    }

    /// What the stores' `BatchCommands` streams have received so far: see
    /// [`SimServer::batch_stats`].
    ///
    ///
    /// Under [`SimPlatformHarness`] the simulated network carries each
    /// request as a message of its own on no stream: `requests` and
    /// `messages` both count every request the stores received, `streams`
    /// and `unary` are zero.
    pub async fn batch_stats(&self) -> BatchStats {
        if self.platform.is_some() {
            let requests = self.cluster().kv_request_total();
            return BatchStats { streams: 0, messages: requests, requests, unary: 0 };
        }
        self.topology.command(Command::BatchStats).await
    }

    /// The model instant corresponding to now: see [`SimServer::now`]
    /// (the virtual clock under [`SimPlatformHarness`]).
    pub async fn now(&self) -> Instant {
        if let Some(sim) = &self.platform {
            return sim.now();
        }
        self.topology.command(Command::Now).await
    }

    /// Stops every listener, joins the server thread and stops the real PD.
    pub async fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // A `Topology` clone may outlive the handle: ask the thread to
            // stop rather than wait for every sender to go.
            let _ = self.topology.commands.unbounded_send(Command::Shutdown);
            let _ = thread.join();
        }
        self.real_pd = None;
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
