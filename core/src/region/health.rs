//! Store health: what the client believes about each store's liveness and
//! speed (client-go's `livenessState`, store `epoch` and
//! `StoreHealthStatus`, `internal/locate/store_cache.go` and
//! `slow_score.go`).
//!
//! - **Liveness** ([`Liveness`]): a store is reachable until a send to it
//!   fails and a liveness probe right then does not answer `SERVING`; it
//!   is then unreachable until a gRPC health probe answers `SERVING` (the
//!   probe schedule is [`crate::route::store_health`]).
//! - **Epoch**: a counter bumped once per failure seen by a region's
//!   replica (client-go's `invalidateReplicaStore` compares-and-swaps it
//!   from the epoch the region captured). A cached region whose captured
//!   epoch differs holds a stale replica there: the selector does not choose
//!   it until the region is loaded again.
//! - **Slow score** ([`SlowScore`]): client-go's client-side score, 1
//!   (healthy) to 100, fed with request latencies and moved once per tick;
//!   and TiKV's own score carried on `BatchCommands` health feedback,
//!   asked for afresh with `GetHealthFeedback` when it is not refreshed for
//!   15 s, and decaying linearly if that brings nothing. Either at 80 or above
//!   makes the store slow, which the replica selector scores down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::time::{Duration, Instant};

/// client-go's `livenessState`: what the last send or health probe said
/// about a store.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Liveness {
    /// Answers requests (every store starts so).
    Reachable = 0,
    /// A health probe (the one after a failed send, or a background one)
    /// did not answer `SERVING`: the store is probed every second until it
    /// does.
    Unreachable = 1,
    /// The health probe answered without a verdict (`UNKNOWN`): the store
    /// stays a replica candidate but not a leader candidate, and is probed
    /// again.
    Unknown = 2,
}

impl Liveness {
    fn from_u8(v: u8) -> Liveness {
        match v {
            1 => Liveness::Unreachable,
            2 => Liveness::Unknown,
            _ => Liveness::Reachable,
        }
    }
}

/// client-go's `slowScoreInitVal`: the score of a healthy store.
const SLOW_SCORE_INIT: u64 = 1;
/// client-go's `slowScoreThreshold` (and `tikvSlowScoreSlowThreshold`): a
/// score at or above it makes the store slow.
pub const SLOW_SCORE_THRESHOLD: u64 = 80;
/// client-go's `slowScoreMax`.
const SLOW_SCORE_MAX: u64 = 100;
/// client-go's `slowScoreInitTimeoutInUs`: the assumed average latency
/// before any tick.
const SLOW_SCORE_INIT_TIMECOST_US: u64 = 500_000;
/// client-go's `slowScoreMaxTimeoutInUs`: one request this slow (a whole
/// transaction's timeout) makes the store slow at once.
const SLOW_SCORE_MAX_TIMECOST_US: u64 = 30_000_000;
/// client-go's `slidingWindowSize`.
const SLIDING_WINDOW: usize = 10;

/// client-go's `CountSlidingWindow`: the average of the last
/// [`SLIDING_WINDOW`] values.
#[derive(Clone, Debug, Default)]
struct Window {
    avg: u64,
    sum: u64,
    history: VecDeque<u64>,
}

impl Window {
    /// Adds `value`; returns its gradient against the previous average
    /// (client-go's `Append`: a tiny positive value when there is no
    /// previous average or the value equals it).
    fn append(&mut self, value: u64) -> f64 {
        let prev = self.avg;
        if self.history.len() < SLIDING_WINDOW {
            self.sum += value;
        } else if let Some(oldest) = self.history.pop_front() {
            self.sum = self.sum - oldest + value;
        }
        self.history.push_back(value);
        self.avg = self.sum / self.history.len() as u64;
        if prev > 0 && value != prev { (value as f64 - prev as f64) / prev as f64 } else { 1e-6 }
    }
}

/// client-go's `SlowScoreStat`: the client-side slow score of one store.
///
/// Latencies are summed per tick ([`SlowScore::record`]); each tick
/// ([`SlowScore::tick`]) compares the tick's request count and average
/// latency with their sliding averages. Fewer requests that each took
/// longer (a store that slows down serves less) multiply the score by the
/// latency gradient over the count gradient (at most 5.43) plus one;
/// anything else lowers it by 1 to 3 towards 1.
#[derive(Clone, Debug)]
pub struct SlowScore {
    score: u64,
    /// Zero until the first request or tick (client-go's uninitialised
    /// state).
    avg_timecost_us: u64,
    interval_timecost_us: u64,
    interval_count: u64,
    timecost_window: Window,
    count_window: Window,
}

impl Default for SlowScore {
    fn default() -> SlowScore {
        SlowScore {
            score: SLOW_SCORE_INIT,
            avg_timecost_us: 0,
            interval_timecost_us: 0,
            interval_count: 0,
            timecost_window: Window::default(),
            count_window: Window::default(),
        }
    }
}

impl SlowScore {
    /// The score, 1 to 100.
    pub fn score(&self) -> u64 {
        self.score
    }

    /// True at [`SLOW_SCORE_THRESHOLD`] or above.
    pub fn is_slow(&self) -> bool {
        self.score >= SLOW_SCORE_THRESHOLD
    }

    /// client-go `recordSlowScoreStat`: one request took `took`.
    pub fn record(&mut self, took: Duration) {
        self.interval_count += 1;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if self.avg_timecost_us == 0 {
            self.score = SLOW_SCORE_INIT;
            self.avg_timecost_us = SLOW_SCORE_INIT_TIMECOST_US;
            self.interval_timecost_us = us;
            return;
        }
        if us >= SLOW_SCORE_MAX_TIMECOST_US {
            self.score = SLOW_SCORE_MAX;
            return;
        }
        self.interval_timecost_us = self.interval_timecost_us.saturating_add(us);
    }

    /// client-go `markAlreadySlow`: the store failed or answered busy.
    pub fn mark_slow(&mut self) {
        self.score = SLOW_SCORE_MAX;
    }

    /// client-go `updateSlowScore`: one tick of the score.
    pub fn tick(&mut self) {
        if self.avg_timecost_us == 0 {
            self.score = SLOW_SCORE_INIT;
            self.avg_timecost_us = SLOW_SCORE_INIT_TIMECOST_US;
            return;
        }
        let (mut count_gradient, mut timecost_gradient) = (1.0f64, 1.0f64);
        if let Some(interval_avg) = self.interval_timecost_us.checked_div(self.interval_count) {
            count_gradient = self.count_window.append(self.interval_count);
            timecost_gradient = self.timecost_window.append(interval_avg);
        }
        if count_gradient + 0.1 <= 1e-9 && timecost_gradient - 0.1 >= 1e-9 {
            let ratio = (timecost_gradient / count_gradient).abs().min(5.43);
            let risen = (self.score as f64 * ratio + 1.0).min(SLOW_SCORE_MAX as f64).ceil();
            self.score = risen as u64;
        } else {
            let cost = (1.0 + count_gradient.abs()).min(2.71).max(SLOW_SCORE_INIT as f64).ceil();
            let cost = cost as u64;
            self.score = if self.score <= SLOW_SCORE_INIT + cost {
                SLOW_SCORE_INIT
            } else {
                self.score - cost
            };
        }
        self.avg_timecost_us = self.timecost_window.avg;
        self.interval_timecost_us = 0;
        self.interval_count = 0;
    }
}

/// client-go's `tikvSlowScoreDecayRate`: TiKV's score falls by this much
/// per second while no feedback refreshes it.
const TIKV_SCORE_DECAY_PER_SEC: f64 = 20.0 / 60.0;
/// client-go's `tikvSlowScoreUpdateInterval`: feedback closer than this to
/// the last change is dropped.
const TIKV_SCORE_UPDATE_INTERVAL: Duration = Duration::from_millis(100);
/// client-go's `storeReResolveInterval`: how often the health probes ask
/// PD about a store that stays unreachable.
pub const STORE_RE_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// client-go's `tikvSlowScoreActiveUpdateInterval`: TiKV's score starts to
/// decay once not refreshed for this long.
const TIKV_SCORE_STALE_AFTER: Duration = Duration::from_secs(15);

/// TiKV's own slow score of a store, as its health feedback last said
/// (client-go `StoreHealthStatus.tikvSideSlowScore`).
#[derive(Clone, Copy, Debug, Default)]
struct TikvScore {
    score: u64,
    updated_at: Option<Instant>,
}

/// The health of one store (held by its [`super::StoreInfo`]).
#[derive(Debug)]
pub struct StoreHealth {
    liveness: AtomicU8,
    /// When the probe rounds last asked PD about the store while it was
    /// not reachable, in nanoseconds of [`Instant`] plus one; zero while
    /// it is reachable ([`StoreHealth::pd_re_resolve_due`]).
    pd_checked_at: AtomicU64,
    epoch: AtomicU32,
    /// Either score at the threshold (kept in step with both, so the
    /// selector reads one atomic).
    slow: AtomicBool,
    scores: Mutex<(SlowScore, TikvScore)>,
}

impl Default for StoreHealth {
    fn default() -> StoreHealth {
        StoreHealth {
            liveness: AtomicU8::new(Liveness::Reachable as u8),
            pd_checked_at: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
            slow: AtomicBool::new(false),
            scores: Mutex::new((SlowScore::default(), TikvScore::default())),
        }
    }
}

impl StoreHealth {
    fn scores(&self) -> MutexGuard<'_, (SlowScore, TikvScore)> {
        self.scores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_slow(&self, scores: &(SlowScore, TikvScore)) {
        let slow = scores.0.is_slow() || scores.1.score >= SLOW_SCORE_THRESHOLD;
        self.slow.store(slow, Ordering::Release);
    }

    /// The store's liveness.
    pub fn liveness(&self) -> Liveness {
        Liveness::from_u8(self.liveness.load(Ordering::Acquire))
    }

    /// Sets the liveness (a failed send, or a health probe's verdict).
    pub fn set_liveness(&self, liveness: Liveness) {
        self.liveness.store(liveness as u8, Ordering::Release);
        if liveness == Liveness::Reachable {
            self.pd_checked_at.store(0, Ordering::Release);
        }
    }

    /// client-go's health-check loop asks PD about a store that is not
    /// reachable every [`STORE_RE_RESOLVE_INTERVAL`], counting from when the
    /// loop started (its `lastCheckPDTime`), in case the store moved to
    /// another address or was removed. True when the probe round at `now`
    /// should ask; the first call after the store stopped being reachable
    /// starts the count.
    pub fn pd_re_resolve_due(&self, now: Instant) -> bool {
        let stamp = now.as_nanos().saturating_add(1);
        let last = self.pd_checked_at.load(Ordering::Acquire);
        let due = last != 0
            && now.saturating_duration_since(Instant::from_nanos(last - 1))
                >= STORE_RE_RESOLVE_INTERVAL;
        if last == 0 || due {
            // A round racing another one for the same store asks once.
            let won = self
                .pd_checked_at
                .compare_exchange(last, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            return due && won;
        }
        false
    }

    /// The store's epoch: how many failures regions have seen on it.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// client-go `invalidateReplicaStore`: a send to the store failed for a
    /// replica that captured epoch `seen`. The first such report per epoch
    /// bumps it (every region that captured `seen` now holds a stale
    /// replica there) and marks the store slow; later ones for the same
    /// epoch change nothing. True when this report bumped it.
    pub fn on_send_failure(&self, seen: u32) -> bool {
        // `u32::MAX` marks an epoch a region has not captured yet.
        let next = match seen.wrapping_add(1) {
            u32::MAX => 0,
            n => n,
        };
        let bumped =
            self.epoch.compare_exchange(seen, next, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if bumped {
            let mut scores = self.scores();
            scores.0.mark_slow();
            self.update_slow(&scores);
        }
        bumped
    }

    /// True if either slow score is at the threshold (client-go
    /// `StoreHealthStatus.IsSlow`).
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// The client-side and TiKV-side scores.
    pub fn slow_scores(&self) -> (u64, u64) {
        let scores = self.scores();
        (scores.0.score(), scores.1.score)
    }

    /// client-go `recordClientSideSlowScoreStat`: a request took `took`.
    pub fn record_latency(&self, took: Duration) {
        let mut scores = self.scores();
        scores.0.record(took);
        self.update_slow(&scores);
    }

    /// client-go `markAlreadySlow` (a `ServerIsBusy` without a wait
    /// estimate).
    pub fn mark_slow(&self) {
        let mut scores = self.scores();
        scores.0.mark_slow();
        self.update_slow(&scores);
    }

    /// client-go `updateTiKVServerSideSlowScore`: TiKV's health feedback
    /// said `score` at `now`. A repeated score only refreshes its time; a
    /// change within 100 ms of the last one is dropped.
    pub fn record_tikv_score(&self, score: u64, now: Instant) {
        let mut scores = self.scores();
        let tikv = &mut scores.1;
        if tikv.score == score {
            if score > 1 {
                tikv.updated_at = Some(now);
            }
            return;
        }
        if tikv
            .updated_at
            .is_some_and(|at| now.saturating_duration_since(at) < TIKV_SCORE_UPDATE_INTERVAL)
        {
            return;
        }
        tikv.score = score;
        tikv.updated_at = Some(now);
        self.update_slow(&scores);
    }

    /// client-go `StoreHealthStatus.tick`, first half: moves the
    /// client-side score one tick. True when TiKV's score wants fresh
    /// feedback: the store has sent some, its score is above 1 (a healthy
    /// idle store is left alone) and it has not been refreshed for 15 s.
    /// client-go then asks the store with `GetHealthFeedback` and only
    /// lets the score decay ([`StoreHealth::decay_stale_tikv_score`]) if
    /// that brought nothing newer.
    pub fn tick(&self, now: Instant) -> bool {
        let mut scores = self.scores();
        scores.0.tick();
        self.update_slow(&scores);
        scores.1.is_stale(now)
    }

    /// client-go `updateTiKVServerSideSlowScoreOnTick`, second half: if
    /// TiKV's score is still not refreshed 15 s before the tick at `now`,
    /// it falls linearly by 1/3 a second of staleness (to 1 at least), and
    /// the decayed score counts as refreshed at `now`.
    pub fn decay_stale_tikv_score(&self, now: Instant) {
        let mut scores = self.scores();
        let tikv = &mut scores.1;
        if !tikv.is_stale(now) {
            return;
        }
        let Some(at) = tikv.updated_at else { return };
        let elapsed = now.saturating_duration_since(at);
        let decayed = tikv.score as f64 - TIKV_SCORE_DECAY_PER_SEC * elapsed.as_secs_f64();
        tikv.score = (decayed.round() as u64).max(1);
        tikv.updated_at = Some(now);
        self.update_slow(&scores);
    }
}

impl TikvScore {
    /// Feedback was received, the score is above 1, and its last refresh
    /// is 15 s or more before `now`.
    fn is_stale(&self, now: Instant) -> bool {
        self.score > 1
            && self
                .updated_at
                .is_some_and(|at| now.saturating_duration_since(at) >= TIKV_SCORE_STALE_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A store that serves fewer requests, each slower, climbs past the
    /// threshold within a few ticks; steady traffic and idle ticks bring it
    /// back down by at most 3 a tick (client-go's `updateSlowScore`).
    #[test]
    fn slow_score_rises_when_a_store_slows_and_decays_per_tick() {
        let mut s = SlowScore::default();
        // Steady: 10 requests of 1 ms per tick.
        for _ in 0..5 {
            for _ in 0..10 {
                s.record(ms(1));
            }
            s.tick();
        }
        assert_eq!(s.score(), 1, "a steady store stays healthy");
        // The store slows down: fewer requests, each 50 ms.
        let mut scores = Vec::new();
        for _ in 0..4 {
            for _ in 0..2 {
                s.record(ms(50));
            }
            s.tick();
            scores.push(s.score());
        }
        assert!(scores.windows(2).all(|w| w[1] >= w[0]), "{scores:?}");
        assert!(s.is_slow(), "{scores:?}");
        // Idle ticks: the count gradient is 1, so each tick takes 2 off.
        let before = s.score();
        s.tick();
        assert_eq!(s.score(), before - 2);
        for _ in 0..60 {
            s.tick();
        }
        assert_eq!(s.score(), 1, "decays back to healthy");
        assert!(!s.is_slow());
    }

    /// One request as long as a transaction's timeout makes the store slow
    /// at once; so does a mark (a failed send).
    #[test]
    fn one_very_slow_request_or_a_mark_makes_a_store_slow() {
        let mut s = SlowScore::default();
        s.record(ms(1));
        s.record(Duration::from_secs(30));
        assert_eq!(s.score(), 100);
        let mut t = SlowScore::default();
        t.mark_slow();
        assert!(t.is_slow());
    }

    /// A failure bumps the epoch once per epoch a replica captured, and
    /// makes the store slow.
    #[test]
    fn send_failures_bump_the_epoch_once_per_captured_epoch() {
        let h = StoreHealth::default();
        assert_eq!(h.liveness(), Liveness::Reachable);
        assert!(h.on_send_failure(0));
        assert!(!h.on_send_failure(0), "a second region with the same capture");
        assert_eq!(h.epoch(), 1);
        assert!(h.is_slow());
        assert!(h.on_send_failure(1));
        assert_eq!(h.epoch(), 2);
    }

    /// client-go's health-check loop asks PD about an unreachable store 30 s
    /// after the loop starts and every 30 s after; a store found reachable
    /// starts the count afresh when it next fails.
    #[test]
    fn pd_is_asked_about_an_unreachable_store_every_30_s() {
        let h = StoreHealth::default();
        let t0 = Instant::from_millis(1_000);
        h.set_liveness(Liveness::Unreachable);
        assert!(!h.pd_re_resolve_due(t0), "the first round starts the count");
        assert!(!h.pd_re_resolve_due(t0 + ms(29_999)));
        assert!(h.pd_re_resolve_due(t0 + ms(30_000)));
        assert!(!h.pd_re_resolve_due(t0 + ms(30_000)), "once per interval");
        assert!(!h.pd_re_resolve_due(t0 + ms(59_999)));
        assert!(h.pd_re_resolve_due(t0 + ms(60_000)));
        h.set_liveness(Liveness::Reachable);
        h.set_liveness(Liveness::Unreachable);
        assert!(!h.pd_re_resolve_due(t0 + ms(90_000)), "reachable in between: a new count");
        assert!(h.pd_re_resolve_due(t0 + ms(120_000)));
    }

    /// TiKV's feedback: at 80 the store is slow; an unchanged score keeps
    /// it fresh; unrefreshed for 15 s a tick wants feedback, and without
    /// any the score decays by 1/3 a second.
    #[test]
    fn tikv_feedback_score_makes_a_store_slow_and_decays_when_stale() {
        let h = StoreHealth::default();
        let t0 = Instant::from_millis(1_000);
        h.record_tikv_score(90, t0);
        assert!(h.is_slow());
        // Dropped: within 100 ms of the last change.
        h.record_tikv_score(10, t0 + ms(50));
        assert_eq!(h.slow_scores().1, 90);
        assert!(!h.tick(t0 + ms(14_000)), "fresh enough");
        h.decay_stale_tikv_score(t0 + ms(14_000));
        assert_eq!(h.slow_scores().1, 90, "fresh enough");
        assert!(h.tick(t0 + ms(30_000)), "stale: wants feedback");
        // Fresh feedback (the same score) at 30.5 s keeps it from decaying.
        h.record_tikv_score(90, t0 + ms(30_500));
        h.decay_stale_tikv_score(t0 + ms(30_000));
        assert_eq!(h.slow_scores().1, 90, "refreshed by the feedback");
        assert!(h.tick(t0 + ms(45_500)));
        h.decay_stale_tikv_score(t0 + ms(45_500));
        assert_eq!(h.slow_scores().1, 85, "15 s at 1/3 a second");
        assert!(h.is_slow());
        assert!(!h.tick(t0 + ms(50_000)), "the decay counts as a refresh");
        h.decay_stale_tikv_score(t0 + ms(75_500));
        assert_eq!(h.slow_scores().1, 75);
        assert!(!h.is_slow());
        h.record_tikv_score(1, t0 + ms(76_000));
        assert_eq!(h.slow_scores().1, 1);
    }
}
