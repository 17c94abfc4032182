//! Mapping between tokio's clock and the core's [`Instant`].
//!
//! RPC deadlines are produced on the runtime's clock and consumed by the
//! transport, so both must agree on the origin. Rather than make users pair
//! values correctly, every [`TokioRuntime`](crate::TokioRuntime) in the
//! process (the transport's included, see
//! [`TokioConnector`](crate::TokioConnector)) shares one origin, captured
//! when the first of them is constructed.

use std::sync::OnceLock;
use std::time::Duration;

use tikv_core::time::Instant;

static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();

/// Fixes the origin (idempotent). Called from the constructors, so the
/// origin is never later than the first `Instant` handed out.
pub(crate) fn init() {
    origin();
}

fn origin() -> tokio::time::Instant {
    tokio::time::Instant::from_std(*ORIGIN.get_or_init(std::time::Instant::now))
}

/// The core's view of a tokio instant. Saturates at the origin (a paused
/// test clock may lag behind it) and at [`Instant::MAX`].
pub(crate) fn from_tokio(t: tokio::time::Instant) -> Instant {
    let nanos = t.saturating_duration_since(origin()).as_nanos();
    Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Tokio's view of a core instant; `None` for [`Instant::MAX`] ("never") or
/// an instant tokio cannot represent.
pub(crate) fn to_tokio(t: Instant) -> Option<tokio::time::Instant> {
    if t == Instant::MAX {
        return None;
    }
    origin().checked_add(Duration::from_nanos(t.as_nanos()))
}

/// Tokio's view of a core instant for a timer: an instant tokio cannot
/// represent (or [`Instant::MAX`]) becomes one decades away, which is as
/// good as never.
pub(crate) fn to_tokio_or_far(t: Instant) -> tokio::time::Instant {
    const DECADES: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    to_tokio(t).unwrap_or_else(|| tokio::time::Instant::now() + DECADES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_saturates() {
        init();
        let t = tokio::time::Instant::now() + Duration::from_millis(1500);
        let core = from_tokio(t);
        assert_eq!(to_tokio(core), Some(t), "{core}");
        assert_eq!(to_tokio(Instant::MAX), None);
        assert!(to_tokio_or_far(Instant::MAX) > t + Duration::from_secs(3600 * 24 * 365));
        let before_origin = origin() - Duration::from_secs(1);
        assert_eq!(from_tokio(before_origin), Instant::ZERO);
    }
}
