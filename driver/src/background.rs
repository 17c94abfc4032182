//! Periodic background tasks tied to the lifetime of a handle.

use std::future::Future;

use futures::future::{AbortHandle, Abortable, FutureExt};
use tikv_core::time::Duration;

use crate::Runtime;

/// A background task spawned through a [`Runtime`]; dropping the handle stops
/// it (also in the middle of a run: the running future is dropped).
///
/// Created by [`spawn_periodic`]. A client keeps these for the store refresh,
/// the TSO updater and similar loops, so closing the client ends them.
#[derive(Debug)]
#[must_use = "the task stops as soon as its `Background` handle is dropped"]
pub struct Background {
    abort: AbortHandle,
}

impl Background {
    /// Stops the task now (the same as dropping the handle).
    ///
    /// ```
    /// # use futures::future::{self, BoxFuture, FutureExt};
    /// # use tikv_core::time::Instant;
    /// # /// Drops the tasks it is given (a real runtime runs them).
    /// # #[derive(Clone)]
    /// # struct Idle;
    /// # impl tikv_driver::Runtime for Idle {
    /// #     fn now(&self) -> Instant { Instant::ZERO }
    /// #     fn sleep_until(&self, _: Instant) -> BoxFuture<'static, ()> {
    /// #         future::pending().boxed()
    /// #     }
    /// #     fn spawn(&self, fut: BoxFuture<'static, ()>) { drop(fut) }
    /// # }
    /// # let rt = Idle;
    /// use std::time::Duration;
    /// use tikv_driver::spawn_periodic;
    /// // `rt`: any `tikv_driver::Runtime`.
    /// let refresh = spawn_periodic(&rt, Duration::from_secs(60), || async {});
    /// refresh.stop();
    /// ```
    pub fn stop(self) {}

    /// True once the task was asked to stop.
    ///
    /// ```
    /// # use futures::future::{self, BoxFuture, FutureExt};
    /// # use tikv_core::time::Instant;
    /// # /// Drops the tasks it is given (a real runtime runs them).
    /// # #[derive(Clone)]
    /// # struct Idle;
    /// # impl tikv_driver::Runtime for Idle {
    /// #     fn now(&self) -> Instant { Instant::ZERO }
    /// #     fn sleep_until(&self, _: Instant) -> BoxFuture<'static, ()> {
    /// #         future::pending().boxed()
    /// #     }
    /// #     fn spawn(&self, fut: BoxFuture<'static, ()>) { drop(fut) }
    /// # }
    /// # let rt = Idle;
    /// use std::time::Duration;
    /// use tikv_driver::spawn_periodic;
    /// // `rt`: any `tikv_driver::Runtime`.
    /// let refresh = spawn_periodic(&rt, Duration::from_secs(60), || async {});
    /// assert!(!refresh.is_stopped());
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.abort.is_aborted()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

/// Spawns `task` on `rt` until it ends or the returned handle is dropped.
pub(crate) fn spawn_until_dropped<R, Fut>(rt: &R, task: Fut) -> Background
where
    R: Runtime,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (abort, registration) = AbortHandle::new_pair();
    rt.spawn(Abortable::new(task, registration).map(drop).boxed());
    Background { abort }
}

/// Spawns a task on `rt` that runs `f()` once per `interval` until the
/// returned handle is dropped.
///
/// The first run starts one `interval` after the call (the caller has usually
/// just done the work once itself). Runs never overlap: the next one is
/// scheduled `interval` after the previous one was due, or, if a run
/// overran, `interval` after it ended, so a slow run does not cause a burst
/// of catch-up runs.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use tikv_core::time::Duration;
/// use tikv_driver::{spawn_periodic, Runtime};
///
/// fn refresh_stores<R: Runtime>(rt: &R, refreshes: Arc<AtomicU32>) -> tikv_driver::Background {
///     spawn_periodic(rt, Duration::from_secs(60), move || {
///         let refreshes = refreshes.clone();
///         async move {
///             refreshes.fetch_add(1, Ordering::Relaxed);
///         }
///     })
/// }
/// ```
pub fn spawn_periodic<R, F, Fut>(rt: &R, interval: Duration, mut f: F) -> Background
where
    R: Runtime,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let clock = rt.clone();
    let task = async move {
        let mut due = clock.now() + interval;
        loop {
            clock.sleep_until(due).await;
            f().await;
            // Fixed rate while runs keep up; no catch-up burst after an overrun.
            due += interval;
            let now = clock.now();
            if due <= now {
                due = now + interval;
            }
        }
    };
    spawn_until_dropped(rt, task)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;

    use super::*;
    use crate::execute::tests::ManualRuntime;
    use tikv_core::time::Instant;

    #[test]
    fn runs_once_per_interval_and_stops_when_dropped() {
        let rt = ManualRuntime::default();
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let handle = spawn_periodic(&rt, Duration::from_millis(10), move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut pool = LocalPool::new();
        for task in rt.take_spawned() {
            pool.spawner().spawn_local(task).unwrap();
        }

        pool.run_until_stalled();
        assert_eq!(runs.load(Ordering::SeqCst), 0, "first run waits one interval");
        rt.advance_to(Instant::from_millis(9));
        pool.run_until_stalled();
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        rt.advance_to(Instant::from_millis(10));
        pool.run_until_stalled();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        rt.advance_to(Instant::from_millis(20));
        pool.run_until_stalled();
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        // A long stall: one run, not a burst of three.
        rt.advance_to(Instant::from_millis(55));
        pool.run_until_stalled();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        rt.advance_to(Instant::from_millis(64));
        pool.run_until_stalled();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "next run is due at 65ms");
        rt.advance_to(Instant::from_millis(65));
        pool.run_until_stalled();
        assert_eq!(runs.load(Ordering::SeqCst), 4);

        assert!(!handle.is_stopped());
        drop(handle);
        pool.run_until_stalled();
        rt.advance_to(Instant::from_millis(1000));
        pool.run_until_stalled();
        assert_eq!(runs.load(Ordering::SeqCst), 4, "no run after the handle is dropped");
        // The task itself finished, so nothing is left on the pool.
        assert!(!pool.try_run_one());
    }
}
