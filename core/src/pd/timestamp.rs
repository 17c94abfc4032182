//! TSO timestamps as values: what PD hands out and the newest one a client
//! has seen. Plain data under the machines that fetch them
//! ([`crate::pd::GetTimestamp`], [`crate::pd::TsoBatcher`]), so the RPC
//! vocabulary and the shared view can name them.

use std::fmt;

use crate::time::{Duration, Instant};

/// Bits of the logical part of a TSO timestamp (`oracle.ComposeTS`).
pub const LOGICAL_BITS: u32 = 18;

/// A PD timestamp: physical milliseconds and an 18-bit logical counter.
///
/// ```
/// use tikv_core::pd::Timestamp;
/// let ts = Timestamp { physical: 1000, logical: 5 };
/// assert_eq!(ts.version(), (1000 << 18) | 5);
/// assert_eq!(Timestamp::from_version(ts.version()), ts);
/// ```
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch, as PD's clock saw them.
    pub physical: i64,
    /// Logical counter within the millisecond.
    pub logical: i64,
}

impl Timestamp {
    /// The `u64` form TiKV uses (`physical << 18 | logical`).
    pub fn version(self) -> u64 {
        ((self.physical.max(0) as u64) << LOGICAL_BITS)
            | (self.logical.max(0) as u64 & ((1 << LOGICAL_BITS) - 1))
    }

    /// Splits a `u64` version into its parts.
    pub fn from_version(v: u64) -> Timestamp {
        Timestamp {
            physical: (v >> LOGICAL_BITS) as i64,
            logical: (v & ((1 << LOGICAL_BITS) - 1)) as i64,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical, self.logical)
    }
}

/// The newest timestamp a client has seen and when it arrived: client-go's
/// low-resolution timestamp (`pdOracle.lastTS`, refreshed every 2 s by its
/// updater and by every timestamp it fetches). The lock resolver uses it as
/// "now" for TTL checks instead of asking PD each time. A stale value only
/// makes locks look alive longer, never expired early, so it is safe; it is
/// used only while younger than a bound, after which a fresh timestamp is
/// fetched (and recorded), so resolution never waits on a frozen clock.
#[derive(Debug, Default)]
pub struct LastTimestamp {
    seen: std::sync::Mutex<Option<(u64, Instant)>>,
}

impl LastTimestamp {
    /// Records `ts`, obtained at `now`, if it is the newest seen.
    pub fn observe(&self, ts: u64, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_none_or(|(last, _)| ts > last) {
            *seen = Some((ts, now));
        }
    }

    /// The newest timestamp seen, however old: every timestamp up to it has
    /// been handed out by PD.
    pub fn newest(&self) -> Option<u64> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).map(|(ts, _)| ts)
    }

    /// The newest timestamp, if it arrived less than `max_age` before `now`.
    pub fn fresh(&self, now: Instant, max_age: Duration) -> Option<u64> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.filter(|&(_, at)| now.saturating_duration_since(at) < max_age).map(|(ts, _)| ts)
    }
}
