//! [`TokioRuntime`]: the driver's runtime on tokio.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::{self, BoxFuture, FutureExt};
use tikv_core::time::Instant;
use tikv_driver::Runtime;
use tokio::runtime::Handle;

use crate::clock;

/// `tikv_driver::Runtime` on tokio: tokio's clock (so `tokio::time::pause`
/// works in tests), `tokio::time::sleep_until` and `spawn`.
///
/// Instants count from an origin shared by every `TokioRuntime` and
/// [`GrpcTransport`](crate::GrpcTransport) of the process, so deadlines made
/// by one are understood by the other.
///
/// ```
/// use tikv_core::time::Duration;
/// use tikv_driver::Runtime;
/// use tikv_tokio::TokioRuntime;
///
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() {
///     let rt = TokioRuntime::new();
///     let start = rt.now();
///     rt.sleep_until(start + Duration::from_millis(5)).await;
///     assert!(rt.now() >= start + Duration::from_millis(5));
/// }
/// ```
///
/// Tokio drops the tasks of a runtime that shuts down. A `TokioRuntime`
/// notices (a task it spawned was dropped unfinished) and from then on
/// reports [`is_shut_down`](Runtime::is_shut_down), so a client whose
/// background tasks died with the runtime it connected on fails its calls
/// at once with `Error::RuntimeShutDown`. Clones share that state.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: Option<Handle>,
    /// Set when a spawned task was dropped before it finished.
    tasks_lost: Arc<AtomicBool>,
    /// The runtime this one owns ([`TokioRuntime::dedicated`]), shut down
    /// when the last clone is dropped.
    owned: Option<Arc<OwnedRuntime>>,
}

/// A tokio runtime shut down without waiting when dropped: the last clone
/// of a dedicated [`TokioRuntime`] may be dropped inside an async context,
/// even on one of the runtime's own workers, where a blocking shutdown
/// panics or deadlocks.
#[derive(Debug)]
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Marks the runtime's tasks lost if dropped before [`TaskGuard::finish`]:
/// tokio drops unfinished tasks only when their runtime shuts down (the
/// tasks here are detached: no `JoinHandle::abort`).
struct TaskGuard(Option<Arc<AtomicBool>>);

impl TaskGuard {
    fn finish(mut self) {
        self.0 = None;
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        // A task that panicked did not lose its runtime.
        if let Some(lost) = self.0.as_ref().filter(|_| !std::thread::panicking()) {
            lost.store(true, Ordering::Release);
        }
    }
}

impl TokioRuntime {
    /// A runtime that spawns onto the tokio runtime current at construction,
    /// or, when constructed outside one, onto the runtime current at each
    /// `spawn` call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tikv_driver::Runtime;
    /// let rt = tikv_tokio::TokioRuntime::new();
    /// assert!(!rt.is_shut_down());
    /// # }
    /// ```
    pub fn new() -> TokioRuntime {
        clock::init();
        TokioRuntime { handle: Handle::try_current().ok(), tasks_lost: Arc::default(), owned: None }
    }

    /// A runtime that spawns onto `handle`, wherever it is called from:
    /// background work lives on a long-lived runtime while callers run on
    /// others.
    ///
    /// ```
    /// use tikv_driver::Runtime;
    /// let long_lived = tokio::runtime::Builder::new_multi_thread()
    ///     .worker_threads(1)
    ///     .enable_all()
    ///     .build()?;
    /// let rt = tikv_tokio::TokioRuntime::with_handle(long_lived.handle().clone());
    /// // Called outside any tokio runtime, the task still runs on `long_lived`.
    /// let (done, ran) = std::sync::mpsc::channel();
    /// rt.spawn(Box::pin(async move { done.send(()).unwrap() }));
    /// ran.recv()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_handle(handle: Handle) -> TokioRuntime {
        clock::init();
        TokioRuntime { handle: Some(handle), tasks_lost: Arc::default(), owned: None }
    }

    /// A runtime on threads of its own: a multi-thread tokio runtime with
    /// `worker_threads` workers (at least 1) named `tikv-client`, shut down
    /// when the last clone is dropped. Timers are registered with it too,
    /// so its clients' calls can be awaited from any executor.
    ///
    /// Clients get one with [`Config::with_dedicated_runtime`](tikv_core::config::Config::with_dedicated_runtime).
    ///
    /// ```
    /// use tikv_core::time::Duration;
    /// use tikv_driver::Runtime;
    ///
    /// let rt = tikv_tokio::TokioRuntime::dedicated(1)?;
    /// // Awaited outside any tokio runtime.
    /// futures::executor::block_on(rt.sleep_until(rt.now() + Duration::from_millis(1)));
    /// # Ok::<(), tikv_core::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `Error::Internal` when the operating system refuses the threads.
    pub fn dedicated(worker_threads: usize) -> Result<TokioRuntime, tikv_core::Error> {
        clock::init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("tikv-client")
            .enable_all()
            .build()
            .map_err(|e| {
                tikv_core::Error::Internal(format!("cannot start the client's runtime: {e}"))
            })?;
        Ok(TokioRuntime {
            handle: Some(rt.handle().clone()),
            tasks_lost: Arc::default(),
            owned: Some(Arc::new(OwnedRuntime(Some(rt)))),
        })
    }

    /// Makes the runtime this one spawns onto current for the guard's life,
    /// so that what tokio spawns by itself meanwhile (tonic's channel
    /// workers) lives there too.
    pub(crate) fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.handle.as_ref().map(Handle::enter)
    }
}

impl Default for TokioRuntime {
    fn default() -> Self {
        TokioRuntime::new()
    }
}

impl Runtime for TokioRuntime {
    fn now(&self) -> Instant {
        clock::from_tokio(tokio::time::Instant::now())
    }

    /// # Panics
    ///
    /// When the returned future is polled outside a tokio runtime with the
    /// time driver enabled (tokio's own rule).
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        // A dedicated runtime's timer serves callers on any executor; the
        // others use the caller's runtime, which may outlive the handle's.
        let _timer_home = self.owned.as_ref().and_then(|_| self.enter());
        match clock::to_tokio(deadline) {
            Some(at) => tokio::time::sleep_until(at).boxed(),
            None => future::pending().boxed(),
        }
    }

    /// # Panics
    ///
    /// When the runtime was built without a handle and this is called
    /// outside a tokio runtime (tokio's own rule for `tokio::spawn`).
    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        // The JoinHandle is dropped: the task is detached, and callers that
        // need to stop it use `tikv_driver::Background` (which ends the
        // future normally, so the guard stays quiet).
        let guard = TaskGuard(Some(self.tasks_lost.clone()));
        let fut = async move {
            fut.await;
            guard.finish();
        };
        match &self.handle {
            Some(handle) => drop(handle.spawn(fut)),
            None => drop(tokio::spawn(fut)),
        }
    }

    fn is_shut_down(&self) -> bool {
        self.tasks_lost.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleeps_on_tokios_clock() {
        let rt = TokioRuntime::new();
        let start = rt.now();
        rt.sleep_until(start + Duration::from_secs(30)).await;
        let slept = rt.now() - start;
        assert!(slept >= Duration::from_secs(30), "{slept:?}");
        assert!(slept < Duration::from_secs(31), "{slept:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn instant_max_never_fires() {
        let rt = TokioRuntime::new();
        let never = rt.sleep_until(Instant::MAX);
        let r = tokio::time::timeout(Duration::from_secs(3600), never).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn spawns_onto_the_current_runtime() {
        let rt = TokioRuntime::new();
        let (tx, rx) = futures::channel::oneshot::channel();
        rt.spawn(
            async move {
                tx.send(7).unwrap();
            }
            .boxed(),
        );
        assert_eq!(rx.await, Ok(7));
    }

    #[test]
    fn a_runtime_that_shut_down_with_a_task_unfinished_is_reported() {
        let tokio_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let rt = TokioRuntime::with_handle(tokio_rt.handle().clone());
        // A task that ends, and one that panics: neither loses the runtime.
        rt.spawn(async {}.boxed());
        rt.spawn(async { panic!("a task's own panic") }.boxed());
        tokio_rt.block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
        assert!(!rt.is_shut_down());
        // One that never ends dies with the runtime.
        rt.spawn(future::pending().boxed());
        drop(tokio_rt);
        assert!(rt.is_shut_down());
        assert!(rt.clone().is_shut_down(), "clones share the state");
    }
}
