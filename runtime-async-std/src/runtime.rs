//! [`AsyncStdRuntime`]: the driver's runtime on async-io and async-std.

use futures::future::{self, BoxFuture, FutureExt};
use tikv_core::time::Instant;
use tikv_driver::Runtime;

use crate::clock;

/// `tikv_driver::Runtime` on async-io and async-std: the monotonic clock,
/// `async_io::Timer` for sleeps and `async_std::task::spawn` for background
/// tasks.
///
/// Nothing here needs to run inside a particular executor: async-io's timers
/// are driven by its own reactor (the thread async-io starts, or whichever
/// executor thread is blocked on it), so the runtime serves smol
/// applications as well as async-std ones. Spawned tasks run on async-std's
/// global executor.
///
/// Instants count from an origin shared by every `AsyncStdRuntime` and
/// [`GrpcTransport`](crate::GrpcTransport) of the process, so deadlines made
/// by one are understood by the other.
///
/// ```
/// use tikv_core::time::Duration;
/// use tikv_driver::Runtime;
/// use tikv_async_std::AsyncStdRuntime;
///
/// async_std::task::block_on(async {
///     let rt = AsyncStdRuntime::new();
///     let start = rt.now();
///     rt.sleep_until(start + Duration::from_millis(5)).await;
///     assert!(rt.now() >= start + Duration::from_millis(5));
/// });
/// ```
#[derive(Clone, Debug)]
pub struct AsyncStdRuntime {
    // Private, so a constructor is the only way in and the clock's origin is
    // always fixed before the first instant is handed out.
    _private: (),
}

impl AsyncStdRuntime {
    /// A runtime handle. Cheap; every handle shares async-std's executor and
    /// async-io's reactor.
    ///
    /// ```
    /// use tikv_driver::Runtime;
    /// let rt = tikv_async_std::AsyncStdRuntime::new();
    /// assert!(!rt.is_shut_down()); // async-std's executor never shuts down
    /// ```
    pub fn new() -> AsyncStdRuntime {
        clock::init();
        AsyncStdRuntime { _private: () }
    }
}

impl Default for AsyncStdRuntime {
    fn default() -> Self {
        AsyncStdRuntime::new()
    }
}

impl Runtime for AsyncStdRuntime {
    fn now(&self) -> Instant {
        clock::now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        match clock::to_std(deadline) {
            Some(at) => async_io::Timer::at(at).map(drop).boxed(),
            None => future::pending().boxed(),
        }
    }

    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        // Dropping async-std's JoinHandle detaches the task; callers that
        // need to stop it use `tikv_driver::Background`.
        drop(async_std::task::spawn(fut));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sleeps_until_the_deadline() {
        async_std::task::block_on(async {
            let rt = AsyncStdRuntime::new();
            let start = rt.now();
            rt.sleep_until(start + Duration::from_millis(30)).await;
            let slept = rt.now() - start;
            assert!(slept >= Duration::from_millis(30), "{slept:?}");
            assert!(slept < Duration::from_secs(2), "{slept:?}");
        });
    }

    #[test]
    fn instant_max_never_fires() {
        async_std::task::block_on(async {
            let rt = AsyncStdRuntime::new();
            let never = rt.sleep_until(Instant::MAX);
            let r = async_std::future::timeout(Duration::from_millis(50), never).await;
            assert!(r.is_err());
        });
    }

    #[test]
    fn a_past_deadline_fires_at_once() {
        async_std::task::block_on(async {
            let rt = AsyncStdRuntime::new();
            let started = std::time::Instant::now();
            rt.sleep_until(Instant::ZERO).await;
            assert!(started.elapsed() < Duration::from_millis(500));
        });
    }

    #[test]
    fn spawns_onto_async_std() {
        let rt = AsyncStdRuntime::new();
        let (tx, rx) = futures::channel::oneshot::channel();
        rt.spawn(
            async move {
                tx.send(7).unwrap();
            }
            .boxed(),
        );
        // Not inside any executor: the task must run on async-std's own threads.
        assert_eq!(futures::executor::block_on(rx), Ok(7));
    }
}
