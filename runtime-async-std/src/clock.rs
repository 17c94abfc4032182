//! Mapping between the monotonic clock and the core's [`Instant`].
//!
//! RPC deadlines are produced on the runtime's clock and consumed by the
//! transport, so both must agree on the origin. Every
//! [`AsyncStdRuntime`](crate::AsyncStdRuntime) and
//! [`GrpcTransport`](crate::GrpcTransport) in the process shares one origin,
//! captured when the first of them is constructed.

use std::sync::OnceLock;
use std::time::Duration;

use tikv_core::time::Instant;

static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();

/// Fixes the origin (idempotent). Called from the constructors, so the
/// origin is never later than the first `Instant` handed out.
pub(crate) fn init() {
    origin();
}

fn origin() -> std::time::Instant {
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// The core's view of the current time.
pub(crate) fn now() -> Instant {
    from_std(std::time::Instant::now())
}

/// The core's view of a std instant. Saturates at the origin and at
/// [`Instant::MAX`].
pub(crate) fn from_std(t: std::time::Instant) -> Instant {
    let nanos = t.saturating_duration_since(origin()).as_nanos();
    Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The std view of a core instant; `None` for [`Instant::MAX`] ("never") or
/// an instant std cannot represent.
pub(crate) fn to_std(t: Instant) -> Option<std::time::Instant> {
    if t == Instant::MAX {
        return None;
    }
    origin().checked_add(Duration::from_nanos(t.as_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_saturates() {
        init();
        let t = std::time::Instant::now() + Duration::from_millis(1500);
        let core = from_std(t);
        assert_eq!(to_std(core), Some(t), "{core}");
        assert_eq!(to_std(Instant::MAX), None);
        if let Some(before_origin) = origin().checked_sub(Duration::from_secs(1)) {
            assert_eq!(from_std(before_origin), Instant::ZERO);
        }
    }
}
