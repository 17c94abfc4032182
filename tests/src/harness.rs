//! Runtime harnesses and the simulated cluster's server thread.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use tikv_core::time::Instant;
use tikv_driver::Platform;
use tikv_sim::server::{BatchStats, ServerError, ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};

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

/// The name of the simulated cluster's thread.
pub const SIM_THREAD: &str = "sim-server";

type Reply<T> = oneshot::Sender<T>;

enum Command {
    StopStore(u64, Reply<Result<(), ServerError>>),
    StartStore(u64, Reply<Result<(), ServerError>>),
    BatchStats(Reply<BatchStats>),
    Now(Reply<Instant>),
}

/// A [`SimServer`] running on its own thread ([`SIM_THREAD`]) with a
/// private tokio current-thread runtime, driven from any runtime through
/// channels. Dropping the handle (or [`SimHandle::shutdown`]) stops the
/// server and joins the thread.
#[derive(Debug)]
pub struct SimHandle {
    cluster: Cluster,
    pd_addrs: Vec<String>,
    commands: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::StopStore(id, _) => write!(f, "StopStore({id})"),
            Command::StartStore(id, _) => write!(f, "StartStore({id})"),
            Command::BatchStats(_) => write!(f, "BatchStats"),
            Command::Now(_) => write!(f, "Now"),
        }
    }
}

impl SimHandle {
    /// Starts serving a cluster built from `config` and waits until it
    /// listens.
    ///
    /// # Panics
    ///
    /// When the server cannot start (a test failure).
    pub async fn start(config: ClusterConfig) -> SimHandle {
        let cluster = Cluster::new(config);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (commands, mut command_rx) = mpsc::unbounded::<Command>();
        let served = cluster.clone();
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
                    let server = match SimServer::start(served, ServerOptions::default()).await {
                        Ok(server) => server,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(server.pd_addrs()));
                    while let Some(command) = command_rx.next().await {
                        match command {
                            Command::StopStore(id, reply) => {
                                let _ = reply.send(server.stop_store(id).await);
                            }
                            Command::StartStore(id, reply) => {
                                let _ = reply.send(server.start_store(id).await);
                            }
                            Command::BatchStats(reply) => {
                                let _ = reply.send(server.batch_stats());
                            }
                            Command::Now(reply) => {
                                let _ = reply.send(server.now());
                            }
                        }
                    }
                    server.shutdown().await;
                });
            })
            .expect("spawn the sim-server thread");
        let pd_addrs = match ready_rx.await {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(e)) => panic!("simulated cluster does not start: {e}"),
            Err(_) => panic!("sim-server thread died while starting"),
        };
        SimHandle { cluster, pd_addrs, commands: Some(commands), thread: Some(thread) }
    }

    /// The served cluster (for topology changes and injections while serving).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// PD member addresses (`host:port`).
    pub fn pd_addrs(&self) -> Vec<String> {
        self.pd_addrs.clone()
    }

    async fn command<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> T {
        let (reply, answer) = oneshot::channel();
        let commands = self.commands.as_ref().expect("server running");
        commands.unbounded_send(make(reply)).expect("sim-server thread alive");
        answer.await.expect("sim-server thread answered")
    }

    /// Crashes a store: see [`SimServer::stop_store`].
    pub async fn stop_store(&self, store_id: u64) -> Result<(), ServerError> {
        self.command(|reply| Command::StopStore(store_id, reply)).await
    }

    /// Restarts a stopped store on its address: see [`SimServer::start_store`].
    pub async fn start_store(&self, store_id: u64) -> Result<(), ServerError> {
        self.command(|reply| Command::StartStore(store_id, reply)).await
    }

    /// What the stores' `BatchCommands` streams have received so far: see
    /// [`SimServer::batch_stats`].
    pub async fn batch_stats(&self) -> BatchStats {
        self.command(Command::BatchStats).await
    }

    /// The model instant corresponding to now: see [`SimServer::now`].
    pub async fn now(&self) -> Instant {
        self.command(Command::Now).await
    }

    /// Stops every listener and joins the server thread.
    pub async fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Closing the command channel ends the thread's loop; it then shuts
        // the server down and returns.
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
