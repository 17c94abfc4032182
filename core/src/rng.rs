//! A small seeded pseudo-random generator for the core.
//!
//! The core may not touch OS randomness (a rerun with the same seed must make
//! the same decisions), so every random choice (backoff jitter, replica
//! shuffling, simulator faults) draws from an [`Rng`] that was seeded from the
//! config. The generator is xoshiro256** with its state filled by splitmix64,
//! the combination the xoshiro authors recommend; it is fast, has a 2^256 - 1
//! period and passes the usual statistical batteries. It is not meant for
//! cryptography.
//!
//! ```
//! use tikv_core::rng::Rng;
//! use tikv_core::time::Duration;
//! let mut a = Rng::new(7);
//! let mut b = Rng::new(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! let d = a.gen_duration(Duration::from_millis(10));
//! assert!(d < Duration::from_millis(10));
//! ```

use crate::time::Duration;

/// One step of splitmix64: advances `state` and returns a well-mixed output.
/// Used to expand a 64-bit seed into xoshiro's 256-bit state, so that close
/// seeds (0, 1, 2, ...) still give unrelated streams.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic xoshiro256** generator seeded through splitmix64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let s =
            [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        // splitmix64 is a bijection of its counter, so four consecutive
        // outputs are never all zero (the one state xoshiro cannot leave).
        Rng { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.s;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// A uniform value in `[lo, hi)`; `lo` when the range is empty (`hi <= lo`).
    ///
    /// Unbiased (Lemire's multiply-and-reject), so jitter distributions are
    /// exactly uniform even for spans that do not divide 2^64.
    pub fn gen_range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        let mut m = u128::from(self.next_u64()) * u128::from(span);
        // Low halves below `2^64 mod span` belong to an over-represented
        // bucket; redraw them.
        if (m as u64) < span {
            let threshold = span.wrapping_neg() % span;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(span);
            }
        }
        lo + (m >> 64) as u64
    }

    /// A uniform duration in `[0, max)` with nanosecond resolution; zero when
    /// `max` is zero. Durations beyond `u64::MAX` nanoseconds (584 years) are
    /// treated as that bound.
    pub fn gen_duration(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.gen_range(0, nanos))
    }

    /// True with probability `numerator / denominator` (false when the
    /// denominator is zero). Integer-only, so runs replay bit for bit on
    /// every platform.
    pub fn gen_ratio(&mut self, numerator: u64, denominator: u64) -> bool {
        denominator > 0 && self.gen_range(0, denominator) < numerator
    }

    /// An independent child generator, derived deterministically from this
    /// one (the parent advances by one draw). Used where client-go forks work
    /// into parallel batches, so each batch has its own stream and the
    /// outcome does not depend on how the batches interleave.
    pub fn fork(&mut self) -> Rng {
        // Re-seeding through splitmix64 decorrelates the child from the
        // parent's subsequent outputs.
        Rng::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = Rng::new(43);
        let zs: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
        assert_ne!(xs, zs);
    }

    #[test]
    fn reference_vector() {
        // splitmix64(0) first output is a published constant; pinning it
        // guards the seeding against accidental changes (which would change
        // every recorded simulator seed).
        let mut sm = 0u64;
        assert_eq!(splitmix64(&mut sm), 0xe220_a839_7b1d_cdaf);
        // xoshiro256** with state [1, 2, 3, 4]: first outputs from the
        // reference implementation.
        let mut r = Rng { s: [1, 2, 3, 4] };
        assert_eq!(r.next_u64(), 11520);
        assert_eq!(r.next_u64(), 0);
        assert_eq!(r.next_u64(), 1509978240);
        assert_eq!(r.next_u64(), 1215971899390074240);
    }

    #[test]
    fn fork_is_deterministic_and_independent() {
        let mut p1 = Rng::new(9);
        let mut p2 = Rng::new(9);
        let mut c1 = p1.fork();
        let mut c2 = p2.fork();
        let a: Vec<u64> = (0..50).map(|_| c1.next_u64()).collect();
        let b: Vec<u64> = (0..50).map(|_| c2.next_u64()).collect();
        assert_eq!(a, b, "forks of equal parents are equal");
        let parent: Vec<u64> = (0..50).map(|_| p1.next_u64()).collect();
        assert_ne!(a, parent, "child differs from the parent's continuation");
        // Two successive forks differ from each other.
        let mut d1 = p2.fork();
        let mut d2 = p2.fork();
        assert_ne!(d1.next_u64(), d2.next_u64());
        // Drawing from a child does not move the parent.
        let mut q1 = Rng::new(5);
        let mut q2 = Rng::new(5);
        let mut child = q1.fork();
        let _ = q2.fork();
        for _ in 0..10 {
            child.next_u64();
        }
        assert_eq!(q1.next_u64(), q2.next_u64());
    }

    #[test]
    fn range_bounds() {
        let mut r = Rng::new(1);
        assert_eq!(r.gen_range(5, 5), 5);
        assert_eq!(r.gen_range(7, 3), 7);
        assert_eq!(r.gen_range(0, 1), 0);
        let mut seen = [false; 10];
        for _ in 0..2000 {
            let v = r.gen_range(10, 20);
            assert!((10..20).contains(&v));
            seen[(v - 10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "every value of a small range is hit");
        for _ in 0..1000 {
            let v = r.gen_range(u64::MAX - 3, u64::MAX);
            assert!((u64::MAX - 3..u64::MAX).contains(&v));
            let w = r.gen_range(0, u64::MAX);
            assert!(w < u64::MAX);
        }
    }

    #[test]
    fn range_is_roughly_uniform() {
        let mut r = Rng::new(2024);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[r.gen_range(0, 3) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "counts {counts:?}");
        }
    }

    #[test]
    fn durations_and_ratios() {
        let mut r = Rng::new(3);
        assert_eq!(r.gen_duration(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_millis(3);
        for _ in 0..1000 {
            assert!(r.gen_duration(max) < max);
        }
        assert!(r.gen_duration(Duration::MAX) < Duration::MAX);
        assert!(!r.gen_ratio(1, 0));
        assert!(!r.gen_ratio(0, 5));
        assert!(r.gen_ratio(5, 5));
        let hits = (0..10_000).filter(|_| r.gen_ratio(1, 4)).count();
        assert!((2_200..2_800).contains(&hits), "hits {hits}");
    }
}
