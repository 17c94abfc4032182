//! TSO timestamps as values: what PD hands out and the newest one a client
//! has seen. Plain data under the machines that fetch them
//! ([`crate::pd::GetTimestamp`], [`crate::pd::TsoBatcher`]), so the RPC
//! vocabulary and the shared view can name them.

use std::fmt;

use crate::time::{Duration, Instant};

/// Bits of the logical part of a TSO timestamp (`oracle.ComposeTS`).
pub const LOGICAL_BITS: u32 = 18;

/// A TSO timestamp: physical milliseconds in the high bits, an 18-bit
/// logical counter in the low ones (`oracle.ComposeTS`), held as the `u64`
/// version TiKV stores beside each value. Start, commit, for-update and
/// read timestamps are all of this type; they meet the wire as
/// [`Timestamp::version`].
///
/// ```
/// use tikv_core::pd::Timestamp;
/// let ts = Timestamp::compose(1000, 5);
/// assert_eq!(ts.version(), (1000 << 18) | 5);
/// assert_eq!((ts.physical(), ts.logical()), (1000, 5));
/// assert_eq!(Timestamp::from_version(ts.version()), ts);
/// assert!(Timestamp::compose(1, 0) > Timestamp::compose(0, 262_143));
/// ```
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The zero timestamp: "none" on the wire (e.g. a commit ts of 0 asks
    /// TiKV to roll back).
    pub const ZERO: Timestamp = Timestamp(0);

    /// The largest version: a read at it sees the newest committed data
    /// (client-go's `math.MaxUint64` read ts).
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// The timestamp with this `u64` version.
    pub const fn from_version(version: u64) -> Timestamp {
        Timestamp(version)
    }

    /// The `u64` form TiKV uses (`physical << 18 | logical`).
    pub const fn version(self) -> u64 {
        self.0
    }

    /// Packs physical milliseconds and a logical counter; negative parts
    /// count as zero and the logical part keeps its low 18 bits.
    pub fn compose(physical: i64, logical: i64) -> Timestamp {
        Timestamp(
            ((physical.max(0) as u64) << LOGICAL_BITS)
                | (logical.max(0) as u64 & ((1 << LOGICAL_BITS) - 1)),
        )
    }

    /// Milliseconds since the Unix epoch, as PD's clock saw them.
    pub const fn physical(self) -> i64 {
        (self.0 >> LOGICAL_BITS) as i64
    }

    /// The logical counter within the millisecond.
    pub const fn logical(self) -> i64 {
        (self.0 & ((1 << LOGICAL_BITS) - 1)) as i64
    }

    /// The next version (TiKV's `start_ts + 1`, the least commit ts after
    /// a start ts); [`Timestamp::MAX`] stays itself.
    pub const fn next(self) -> Timestamp {
        Timestamp(self.0.saturating_add(1))
    }

    /// Whether this is [`Timestamp::ZERO`].
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// Timestamps print as their version, the number TiKV, PD and client-go
/// logs show; the alternate form (`{:#}`) prints `physical.logical`.
///
/// ```
/// use tikv_core::pd::Timestamp;
/// let ts = Timestamp::compose(100, 7);
/// assert_eq!(format!("{ts}"), "26214407");
/// assert_eq!(format!("{ts:#}"), "100.7");
/// ```
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            write!(f, "{}.{}", self.physical(), self.logical())
        } else {
            fmt::Display::fmt(&self.0, f)
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
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
    seen: std::sync::Mutex<Option<(Timestamp, Instant)>>,
}

impl LastTimestamp {
    /// Records `ts`, obtained at `now`, if it is the newest seen.
    pub fn observe(&self, ts: Timestamp, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_none_or(|(last, _)| ts > last) {
            *seen = Some((ts, now));
        }
    }

    /// The newest timestamp seen, however old: every timestamp up to it has
    /// been handed out by PD.
    pub fn newest(&self) -> Option<Timestamp> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).map(|(ts, _)| ts)
    }

    /// The newest timestamp, if it arrived less than `max_age` before `now`.
    pub fn fresh(&self, now: Instant, max_age: Duration) -> Option<Timestamp> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.filter(|&(_, at)| now.saturating_duration_since(at) < max_age).map(|(ts, _)| ts)
    }
}
