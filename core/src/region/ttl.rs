//! Region TTL with jitter, as client-go's `nextTTL` / `checkRegionCacheTTL`.
//!
//! A region is cached with a deadline `now + ttl + rand[0, jitter)`. Each hit
//! extends it, but only once less than `ttl` remains: a hit while the deadline
//! is still inside the jitter window leaves it alone, so a hot region does not
//! rewrite its deadline on every access, and regions loaded together do not
//! all expire (and get reloaded from PD) at the same instant.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::time::{Duration, Instant};

/// TTL parameters and the jitter source shared by all regions of a cache.
pub(super) struct TtlPolicy {
    ttl: u64,
    jitter: u64,
    /// splitmix64 state; advanced atomically so concurrent callers never
    /// draw the same value and a single-threaded run is reproducible.
    state: AtomicU64,
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl TtlPolicy {
    pub(super) fn new(ttl: Duration, jitter: Duration, seed: u64) -> TtlPolicy {
        TtlPolicy { ttl: nanos(ttl), jitter: nanos(jitter), state: AtomicU64::new(seed) }
    }

    /// splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator that
    /// is enough for spreading deadlines.
    fn next_u64(&self) -> u64 {
        let mut z = self.state.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A fresh deadline in `[now + ttl, now + ttl + jitter)` (client-go's `nextTTL`).
    pub(super) fn next_deadline(&self, now: Instant) -> u64 {
        let jitter = if self.jitter > 0 { self.next_u64() % self.jitter } else { 0 };
        now.as_nanos().saturating_add(self.ttl).saturating_add(jitter)
    }

    /// True if the deadline in `expires_at` has not passed at `now`; extends it
    /// when less than `ttl` remains (client-go's `checkRegionCacheTTL`).
    pub(super) fn check_and_extend(&self, expires_at: &AtomicU64, now: Instant) -> bool {
        let now_ns = now.as_nanos();
        let mut fresh = None;
        let mut current = expires_at.load(Ordering::Acquire);
        loop {
            if now_ns > current {
                return false;
            }
            if current > now_ns.saturating_add(self.ttl) {
                // Still inside the jitter window of an earlier extension.
                return true;
            }
            let next = *fresh.get_or_insert_with(|| self.next_deadline(now));
            match expires_at.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}
