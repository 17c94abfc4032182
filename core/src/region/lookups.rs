//! Hit and miss counts of region-cache lookups, cheap enough for the
//! lookup path of every request.
//!
//! Every operation looks its keys up in the shared cache, from whichever
//! threads run the callers. One shared counter would bounce its cache line
//! between those cores on every lookup, which the cache's per-thread
//! sharded lock exists to avoid. So each thread counts in its own stripe
//! (a cache-line-padded pair of counters, picked once per thread), and a
//! reader sums the stripes. The counts are monotonic totals; nothing in the
//! client decides anything from them.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Stripes per cache: more than the cores a client usually runs on, so
/// that threads rarely share one.
const STRIPES: usize = 16;

/// How many region-cache lookups found a usable region (hits) and how many
/// did not (misses: nothing cached, invalidated, or past its TTL; the
/// caller then loads the region from PD). client-go counts only the loads
/// (`tikv_client_go_region_cache_operations_total{type="get_region_when_miss"}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LookupCounts {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found no usable region.
    pub misses: u64,
}

impl LookupCounts {
    /// The counts since `earlier` (zero where a count did not grow).
    pub fn since(self, earlier: LookupCounts) -> LookupCounts {
        LookupCounts {
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
        }
    }
}

#[derive(Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The striped counters of one cache.
pub(super) struct LookupCounters {
    stripes: Box<[CachePadded<Stripe>; STRIPES]>,
}

impl Default for LookupCounters {
    fn default() -> LookupCounters {
        LookupCounters { stripes: Box::new(std::array::from_fn(|_| CachePadded::default())) }
    }
}

/// The next stripe handed to a thread that counts for the first time.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, `usize::MAX` until its first count.
    static THREAD_STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_stripe() -> usize {
    THREAD_STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

impl LookupCounters {
    /// Counts one lookup that found a usable region (`hit`) or not.
    #[inline]
    pub(super) fn count(&self, hit: bool) {
        let stripe = &self.stripes[thread_stripe()];
        // Relaxed: a total read later, ordered with nothing else.
        if hit {
            stripe.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            stripe.misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The totals over every stripe.
    pub(super) fn total(&self) -> LookupCounts {
        self.stripes.iter().fold(LookupCounts::default(), |acc, s| LookupCounts {
            hits: acc.hits + s.hits.load(Ordering::Relaxed),
            misses: acc.misses + s.misses.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counters = LookupCounters::default();
        std::thread::scope(|s| {
            for t in 0..(STRIPES + 3) {
                let counters = &counters;
                s.spawn(move || {
                    for i in 0..100 {
                        counters.count(i % (t + 2) != 0);
                    }
                });
            }
        });
        let total = counters.total();
        assert_eq!(total.hits + total.misses, 100 * (STRIPES as u64 + 3));
        let misses: u64 =
            (0..STRIPES + 3).map(|t| (0..100).filter(|i| i % (t + 2) == 0).count() as u64).sum();
        assert_eq!(total.misses, misses);
    }

    #[test]
    fn since_subtracts_and_never_wraps() {
        let now = LookupCounts { hits: 10, misses: 3 };
        assert_eq!(
            now.since(LookupCounts { hits: 4, misses: 3 }),
            LookupCounts { hits: 6, misses: 0 }
        );
        assert_eq!(
            now.since(LookupCounts { hits: 12, misses: 1 }),
            LookupCounts { hits: 0, misses: 2 }
        );
    }
}
