//! The RawKV end-to-end suite ([`tikv_tests::raw`]) on the async-std client,
//! on both beds (the in-process simulator and a real PD with simulated
//! stores joined to it), and the proof that the async-std client runs
//! without any tokio runtime.
//!
//! This is a test binary of its own (a process of its own), so no tokio
//! harness runs beside it: the only tokio runtime in the process is the
//! simulated cluster's, on the "sim-server" thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tikv_core::rpc::{Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_driver::{Config, Error, Platform, Runtime, Transport};
use tikv_tests::Harness;
use tikv_tests::harness::{AsyncStdHarness, Bed, SIM_THREAD};

tikv_tests::raw_suite!(tikv_tests::harness::AsyncStdHarness);

mod real_pd {
    tikv_tests::raw_suite!(tikv_tests::harness::AsyncStdHarness, RealPd);
}

// ------------------------------------------------------------------ checks

/// Checks made from inside the client, and how many of them found a tokio
/// runtime.
static CHECKS: AtomicUsize = AtomicUsize::new(0);
static TOKIO_SEEN: AtomicUsize = AtomicUsize::new(0);

/// Records whether a tokio runtime is reachable from the calling thread.
fn check() {
    CHECKS.fetch_add(1, Ordering::SeqCst);
    if tokio::runtime::Handle::try_current().is_ok() {
        TOKIO_SEEN.fetch_add(1, Ordering::SeqCst);
    }
}

/// `fut`, checked on every poll: wherever the executor runs it, it must not
/// be inside a tokio runtime.
fn checked<T: Send + 'static>(fut: BoxFuture<'static, T>) -> BoxFuture<'static, T> {
    let mut fut = fut;
    futures::future::poll_fn(move |cx| {
        check();
        fut.poll_unpin(cx)
    })
    .boxed()
}

/// `AsyncStdRuntime` with every clock read, timer and spawned task checked.
#[derive(Clone)]
struct CheckedRuntime(tikv_async_std::AsyncStdRuntime);

impl Runtime for CheckedRuntime {
    fn now(&self) -> Instant {
        check();
        self.0.now()
    }
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        check();
        checked(self.0.sleep_until(deadline))
    }
    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        check();
        self.0.spawn(checked(fut));
    }
}

/// `GrpcTransport` with every call checked while it runs.
struct CheckedTransport(tikv_async_std::GrpcTransport);

impl Transport for CheckedTransport {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        check();
        checked(self.0.call(target, request, deadline))
    }
}

/// The async-std platform, checked.
struct NoTokio;

impl Platform for NoTokio {
    type Runtime = CheckedRuntime;
    type Transport = CheckedTransport;

    fn build(config: &Config) -> Result<(CheckedRuntime, CheckedTransport), Error> {
        let (rt, transport) = tikv_async_std::AsyncStd::build(config)?;
        Ok((CheckedRuntime(rt), CheckedTransport(transport)))
    }
}

/// The async-std harness with the checked platform.
struct NoTokioHarness;

impl Harness for NoTokioHarness {
    type Platform = NoTokio;

    fn block_on<F: std::future::Future>(test: F) -> F::Output {
        AsyncStdHarness::block_on(Box::pin(checked_local(test)))
    }

    fn sleep(duration: Duration) -> impl std::future::Future<Output = ()> + Send {
        AsyncStdHarness::sleep(duration)
    }

    fn spawn<T: Send + 'static>(
        task: impl std::future::Future<Output = T> + Send + 'static,
    ) -> impl std::future::Future<Output = T> + Send {
        AsyncStdHarness::spawn(checked(task.boxed()))
    }
}

/// The test body itself, checked on every poll too.
async fn checked_local<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    futures::future::poll_fn(|cx| {
        check();
        fut.as_mut().poll(cx)
    })
    .await
}

/// This process's thread names (Linux: `/proc/self/task/*/comm`, which
/// holds at most 15 bytes of a name).
fn thread_names() -> Vec<String> {
    let dir = std::fs::read_dir("/proc/self/task").expect("procfs");
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// Samples the thread list every few milliseconds until stopped; returns
/// every name seen.
fn watch_threads(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen: Vec<String> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for name in thread_names() {
                if !seen.contains(&name) {
                    seen.push(name);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

#[test]
fn the_async_std_client_runs_without_a_tokio_runtime() {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_threads(stop.clone());

    // Three suite tests (the model run has splits, leader moves and a store
    // outage; the client's store refresher runs in the background) on the
    // checked platform, the model run on the real PD too.
    NoTokioHarness::block_on(tikv_tests::raw::column_families_are_separate::<NoTokioHarness>(
        Bed::InProcess,
    ));
    NoTokioHarness::block_on(tikv_tests::raw::injected_region_errors_are_retried_or_reported::<
        NoTokioHarness,
    >(Bed::InProcess));
    for bed in [Bed::InProcess, Bed::RealPd] {
        NoTokioHarness::block_on(
            tikv_tests::raw::raw_operations_match_a_model_through_splits_leader_moves_and_an_outage::<
                NoTokioHarness,
            >(bed),
        );
    }

    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().expect("watcher");
    let checks = CHECKS.load(Ordering::SeqCst);
    assert!(checks > 1000, "the client was exercised: {checks} checks");
    assert_eq!(TOKIO_SEEN.load(Ordering::SeqCst), 0, "a tokio runtime was current");
    // The sim server ran (its thread was seen), and nothing else started a
    // tokio runtime: no worker threads with tokio's default name.
    assert!(seen.iter().any(|n| n == SIM_THREAD), "{seen:?}");
    assert!(seen.iter().any(|n| n.starts_with("async-std")), "{seen:?}");
    assert!(!seen.iter().any(|n| n.starts_with("tokio")), "{seen:?}");
}
