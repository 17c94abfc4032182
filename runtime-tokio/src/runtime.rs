//! [`TokioRuntime`]: the driver's runtime on tokio.

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
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: Option<Handle>,
}

impl TokioRuntime {
    /// A runtime that spawns onto the tokio runtime current at construction,
    /// or, when constructed outside one, onto the runtime current at each
    /// `spawn` call.
    pub fn new() -> TokioRuntime {
        clock::init();
        TokioRuntime { handle: Handle::try_current().ok() }
    }

    /// A runtime that always spawns onto the tokio runtime current at the
    /// `spawn` call (the transport's background tasks follow their callers).
    pub(crate) fn current() -> TokioRuntime {
        clock::init();
        TokioRuntime { handle: None }
    }

    /// A runtime that spawns onto `handle`, wherever it is called from.
    pub fn with_handle(handle: Handle) -> TokioRuntime {
        clock::init();
        TokioRuntime { handle: Some(handle) }
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
        // need to stop it use `tikv_driver::Background`.
        match &self.handle {
            Some(handle) => drop(handle.spawn(fut)),
            None => drop(tokio::spawn(fut)),
        }
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
}
