//! The two seams between the generic driver and a concrete executor/network.

use std::sync::Arc;

use futures::future::BoxFuture;
use tikv_core::rpc::{Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_proto::kvrpcpb;

/// A clock, a timer and a spawner: everything the driver needs from an
/// async executor.
///
/// Implementations are cheap handles (`Clone`), shared by every operation and
/// background task of a client.
///
/// ```
/// use futures::future::{self, BoxFuture, FutureExt};
/// use tikv_core::time::Instant;
/// use tikv_driver::Runtime;
///
/// /// A runtime whose clock never moves and whose timers fire at once.
/// #[derive(Clone)]
/// struct Frozen;
///
/// impl Runtime for Frozen {
///     fn now(&self) -> Instant {
///         Instant::ZERO
///     }
///     fn sleep_until(&self, _deadline: Instant) -> BoxFuture<'static, ()> {
///         future::ready(()).boxed()
///     }
///     fn spawn(&self, fut: BoxFuture<'static, ()>) {
///         // A real runtime hands `fut` to its executor; this one just drops it.
///         drop(fut);
///     }
/// }
/// assert_eq!(Frozen.now(), Instant::ZERO);
/// ```
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The current monotonic time. The origin is chosen by the runtime; it
    /// must stay the same for the runtime's lifetime and for the
    /// [`Transport`] it is paired with, since RPC deadlines are expressed on
    /// this clock.
    fn now(&self) -> Instant;

    /// A future that completes at (or after) `deadline` on this runtime's
    /// clock. [`Instant::MAX`] means "never".
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;

    /// Runs `fut` to completion in the background.
    fn spawn(&self, fut: BoxFuture<'static, ()>);

    /// True once the executor behind [`spawn`](Self::spawn) has shut down
    /// and dropped tasks it was running: the client's background tasks are
    /// gone, and its calls fail with [`Error::RuntimeShutDown`] instead of
    /// waiting on them. Executors that never drop unfinished tasks (a
    /// global one) keep the default.
    ///
    /// [`Error::RuntimeShutDown`]: tikv_core::Error::RuntimeShutDown
    fn is_shut_down(&self) -> bool {
        false
    }
}

/// Sends typed requests to TiKV stores and PD servers.
///
/// Connection management (one channel per address, reconnects, keepalive,
/// the TSO stream) is the transport's business; callers see one call per
/// request. A transport must never panic on what the network sends: every
/// failure is an [`RpcError`].
///
/// `deadline` is on the clock of the [`Runtime`] the transport is paired
/// with. A transport should stop waiting by then (and tell the server, e.g.
/// with gRPC's `grpc-timeout`), and [`execute`](crate::execute) enforces it
/// too unless the transport says it does ([`Transport::enforces_deadline`]),
/// so a stuck transport cannot stall an operation.
///
/// ```
/// use futures::future::{self, BoxFuture, FutureExt};
/// use tikv_core::rpc::{Request, Response, RpcError, Target};
/// use tikv_core::time::Instant;
/// use tikv_driver::Transport;
///
/// /// A transport for a cluster that is never reachable.
/// struct Offline;
///
/// impl Transport for Offline {
///     fn call(
///         &self,
///         target: &Target,
///         _request: Request,
///         _deadline: Instant,
///     ) -> BoxFuture<'static, Result<Response, RpcError>> {
///         future::ready(Err(RpcError::Unavailable(format!("{target:?} is offline")))).boxed()
///     }
/// }
/// ```
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to `target` and resolves with its response.
    ///
    /// The returned future owns everything it needs (`'static`), so callers
    /// can run many calls concurrently and drop the ones they give up on;
    /// dropping the future cancels the call.
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>>;

    /// Installs `sink`, which the transport then calls with each health
    /// feedback TiKV carries on its answers
    /// (`BatchCommandsResponse.health_feedback`) as it arrives, before the
    /// answers it came with are handed out, and with the time of arrival on
    /// the paired [`Runtime`]'s clock (client-go's
    /// `ClientEventListener.OnHealthFeedback`, which its region cache
    /// installs when the store opens). A later call replaces the sink. The
    /// default drops it: a transport without `BatchCommands` streams
    /// receives no feedback.
    fn set_health_feedback_sink(&self, _sink: HealthFeedbackSink) {}

    /// True when the future [`call`](Transport::call) returns for `request`
    /// resolves by its deadline on its own (with
    /// [`RpcError::DeadlineExceeded`] at the latest), so
    /// [`execute`](crate::execute) arms no timer of its own for the call.
    /// A `BatchCommands` stream's collector already holds every request's
    /// deadline; a second timer per call would duplicate it. The default,
    /// false, keeps `execute`'s timer: a wrapper that may hold a request
    /// back (an interceptor, a shared call with another caller's deadline)
    /// must answer false for it.
    fn enforces_deadline(&self, _target: &Target, _request: &Request) -> bool {
        false
    }
}

/// Where a [`Transport`] hands TiKV's health feedback
/// ([`Transport::set_health_feedback_sink`]): called with the feedback and
/// its time of arrival, on the receiving task, so it must be quick and
/// must not block.
pub type HealthFeedbackSink = Arc<dyn Fn(kvrpcpb::HealthFeedback, Instant) + Send + Sync>;

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        (**self).call(target, request, deadline)
    }

    fn set_health_feedback_sink(&self, sink: HealthFeedbackSink) {
        (**self).set_health_feedback_sink(sink)
    }

    fn enforces_deadline(&self, target: &Target, request: &Request) -> bool {
        (**self).enforces_deadline(target, request)
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        (**self).call(target, request, deadline)
    }

    fn set_health_feedback_sink(&self, sink: HealthFeedbackSink) {
        (**self).set_health_feedback_sink(sink)
    }

    fn enforces_deadline(&self, target: &Target, request: &Request) -> bool {
        (**self).enforces_deadline(target, request)
    }
}
