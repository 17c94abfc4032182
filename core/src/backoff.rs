//! Backoff, as client-go's `config/retry` does it.
//!
//! [`BackoffKind`] is the table of backoff types (base, cap, jitter, the error
//! reported when the budget runs out). [`Backoffer`] is the per-operation
//! state: attempt counters per kind, total sleep against a budget, and the
//! "dominant kind" rule that picks the error on exhaustion.

use std::fmt;

use crate::time::Duration;

/// How a sleep is randomised (client-go `retry.NoJitter` .. `DecorrJitter`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// `min(cap, base * 2^n)`.
    None,
    /// Uniform in `[0, min(cap, base * 2^n))`.
    Full,
    /// Half fixed, half random: `v/2 + rand[0, v/2)`.
    Equal,
    /// Decorrelated: `min(cap, base + rand[0, last * 3 - base))`.
    Decorrelated,
}

/// The kinds of backoff client-go knows (`retry.BoTiKVRPC`, ...), each with its
/// schedule and the error class reported when it dominated an exhausted budget.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackoffKind {
    /// Send failures to TiKV (`BoTiKVRPC`): 100ms..2s, equal jitter.
    TikvRpc,
    /// Waiting on alive locks in writes (`BoTxnLock`): 100ms..3s, equal jitter.
    TxnLock,
    /// Waiting on locks in reads (`BoTxnLockFast`): 10ms..3s, equal jitter.
    TxnLockFast,
    /// PD calls (`BoPDRPC`): 500ms..3s, equal jitter.
    PdRpc,
    /// Region errors and cache misses (`BoRegionMiss`): 2ms..500ms, no jitter.
    RegionMiss,
    /// Leader elections, merges, read-index (`BoRegionScheduling`): 2ms..500ms, no jitter.
    RegionScheduling,
    /// `ServerIsBusy` (`BoTiKVServerBusy`): 2s..10s, equal jitter; excluded from the budget.
    ServerBusy,
    /// `DiskFull` (`BoTiKVDiskFull`): 500ms..5s, no jitter.
    DiskFull,
    /// `RecoveryInProgress` (`BoRegionRecoveryInProgress`): 100ms..10s, equal jitter.
    RegionRecoveryInProgress,
    /// `CheckTxnStatus` answered `TxnNotFound` (`BoTxnNotFound`): 2ms..500ms, no jitter.
    TxnNotFound,
    /// `StaleCommand` without a replica selector (`BoStaleCmd`): 2ms..1s, no jitter.
    StaleCommand,
    /// `MaxTimestampNotSynced` (`BoMaxTsNotSynced`): 2ms..500ms, no jitter.
    MaxTsNotSynced,
    /// `RegionNotInitialized` (`BoMaxRegionNotInitialized`): 2ms..1s, no jitter.
    RegionNotInitialized,
    /// Commit-wait-until-TSO polling (`BoCommitTSLag`): 2ms..500ms, no jitter.
    CommitTsLag,
}

impl BackoffKind {
    /// Every kind, for tables and tests.
    pub const ALL: [BackoffKind; 14] = [
        BackoffKind::TikvRpc,
        BackoffKind::TxnLock,
        BackoffKind::TxnLockFast,
        BackoffKind::PdRpc,
        BackoffKind::RegionMiss,
        BackoffKind::RegionScheduling,
        BackoffKind::ServerBusy,
        BackoffKind::DiskFull,
        BackoffKind::RegionRecoveryInProgress,
        BackoffKind::TxnNotFound,
        BackoffKind::StaleCommand,
        BackoffKind::MaxTsNotSynced,
        BackoffKind::RegionNotInitialized,
        BackoffKind::CommitTsLag,
    ];

    /// `(base, cap, jitter)` of this kind, from client-go `config/retry/config.go`.
    pub fn schedule(self) -> (Duration, Duration, Jitter) {
        let ms = Duration::from_millis;
        match self {
            BackoffKind::TikvRpc => (ms(100), ms(2000), Jitter::Equal),
            BackoffKind::TxnLock => (ms(100), ms(3000), Jitter::Equal),
            BackoffKind::TxnLockFast => (ms(10), ms(3000), Jitter::Equal),
            BackoffKind::PdRpc => (ms(500), ms(3000), Jitter::Equal),
            BackoffKind::RegionMiss => (ms(2), ms(500), Jitter::None),
            BackoffKind::RegionScheduling => (ms(2), ms(500), Jitter::None),
            BackoffKind::ServerBusy => (ms(2000), ms(10000), Jitter::Equal),
            BackoffKind::DiskFull => (ms(500), ms(5000), Jitter::None),
            BackoffKind::RegionRecoveryInProgress => (ms(100), ms(10000), Jitter::Equal),
            BackoffKind::TxnNotFound => (ms(2), ms(500), Jitter::None),
            BackoffKind::StaleCommand => (ms(2), ms(1000), Jitter::None),
            BackoffKind::MaxTsNotSynced => (ms(2), ms(500), Jitter::None),
            BackoffKind::RegionNotInitialized => (ms(2), ms(1000), Jitter::None),
            BackoffKind::CommitTsLag => (ms(2), ms(500), Jitter::None),
        }
    }

    /// True for kinds whose sleeps do not count against the operation budget
    /// (client-go excludes `ServerIsBusy` sleeps and caps them separately).
    pub fn excluded_from_budget(self) -> bool {
        matches!(self, BackoffKind::ServerBusy)
    }

    /// The error class reported when this kind dominated an exhausted budget
    /// (client-go's `ErrTiKVServerTimeout`, `ErrRegionUnavailable`, ...).
    pub fn exhausted_error(self) -> ExhaustedClass {
        match self {
            BackoffKind::TikvRpc => ExhaustedClass::TikvServerTimeout,
            BackoffKind::TxnLock | BackoffKind::TxnLockFast | BackoffKind::TxnNotFound => {
                ExhaustedClass::ResolveLockTimeout
            }
            BackoffKind::PdRpc => ExhaustedClass::PdServerTimeout,
            BackoffKind::RegionMiss | BackoffKind::RegionScheduling => {
                ExhaustedClass::RegionUnavailable
            }
            BackoffKind::ServerBusy => ExhaustedClass::TikvServerBusy,
            BackoffKind::DiskFull => ExhaustedClass::TikvDiskFull,
            BackoffKind::RegionRecoveryInProgress => ExhaustedClass::RegionRecoveryInProgress,
            BackoffKind::StaleCommand => ExhaustedClass::TikvStaleCommand,
            BackoffKind::MaxTsNotSynced => ExhaustedClass::TikvMaxTimestampNotSynced,
            BackoffKind::RegionNotInitialized => ExhaustedClass::RegionNotInitialized,
            BackoffKind::CommitTsLag => ExhaustedClass::CommitTsLag,
        }
    }
}

impl fmt::Display for BackoffKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What an exhausted backoff budget means to the caller (client-go's error
/// sentinels for each backoff type).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExhaustedClass {
    /// `ErrTiKVServerTimeout`: TiKV did not answer.
    TikvServerTimeout,
    /// `ErrResolveLockTimeout`: a lock was not resolved in time.
    ResolveLockTimeout,
    /// `ErrPDServerTimeout`: PD did not answer.
    PdServerTimeout,
    /// `ErrRegionUnavailable`: the region kept moving or had no leader.
    RegionUnavailable,
    /// `ErrTiKVServerBusy`.
    TikvServerBusy,
    /// `ErrTiKVDiskFull`.
    TikvDiskFull,
    /// `ErrRegionRecoveryInProgress`.
    RegionRecoveryInProgress,
    /// `ErrTiKVStaleCommand`.
    TikvStaleCommand,
    /// `ErrTiKVMaxTimestampNotSynced`.
    TikvMaxTimestampNotSynced,
    /// `ErrRegionNotInitialized`.
    RegionNotInitialized,
    /// `ErrCommitTSLag`.
    CommitTsLag,
}

/// How many backoff reasons a [`Backoffer`] remembers for its exhaustion
/// error (client-go `MaxRecordBackoffErrCount`).
pub const MAX_RECORDED_ERRORS: usize = 3;

/// The separate ceiling on sleeps excluded from the budget (`ServerBusy`):
/// client-go's `isSleepExcluded` limit of 10 minutes.
pub const EXCLUDED_SLEEP_LIMIT: Duration = Duration::from_secs(600);

/// client-go's `BackOffWeight` default (`kv.DefBackOffWeight`).
pub const DEFAULT_BACKOFF_WEIGHT: u32 = 2;

/// A budget of `budget_ms` milliseconds scaled by `weight`, as client-go's
/// `NewBackofferWithVars` does with `BackOffWeight` (default 2).
///
/// Like client-go, the weight is not applied when the product would exceed
/// `i32::MAX` milliseconds, and a zero budget stays zero. A zero weight (a
/// division by zero in client-go) leaves the budget unweighted.
///
/// ```
/// use tikv_core::backoff::weighted;
/// use tikv_core::time::Duration;
/// assert_eq!(weighted(20_000, 2), Duration::from_secs(40));
/// ```
pub fn weighted(budget_ms: u64, weight: u32) -> Duration {
    let weight = u64::from(weight);
    let ms = if budget_ms > 0 && weight > 0 && i32::MAX as u64 / weight >= budget_ms {
        budget_ms * weight
    } else {
        budget_ms
    };
    Duration::from_millis(ms)
}

fn saturating_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// client-go `expo`: `min(cap, base * 2^n)`, saturating instead of going
/// through floating point.
fn expo(base: u64, cap: u64, n: u32) -> u64 {
    let scaled = if n >= 64 { u64::MAX } else { base.saturating_mul(1u64 << n) };
    scaled.min(cap)
}

/// The state client-go keeps inside each kind's backoff closure
/// (`newBackoffFn`): how many sleeps it computed and the last uncapped one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct ExpoState {
    attempt: u32,
    last_sleep_ms: u64,
}

/// One step of client-go's `newBackoffFn`: the sleep in milliseconds for
/// this attempt, before any per-call cap. Advances `state`.
fn next_sleep_ms(
    base_ms: u64,
    cap_ms: u64,
    jitter: Jitter,
    state: &mut ExpoState,
    rng: &mut crate::rng::Rng,
) -> u64 {
    let sleep = match jitter {
        Jitter::None => expo(base_ms, cap_ms, state.attempt),
        Jitter::Full => rng.gen_range(0, expo(base_ms, cap_ms, state.attempt)),
        Jitter::Equal => {
            let v = expo(base_ms, cap_ms, state.attempt);
            v / 2 + rng.gen_range(0, v / 2)
        }
        Jitter::Decorrelated => {
            let spread = state.last_sleep_ms.saturating_mul(3).saturating_sub(base_ms);
            cap_ms.min(base_ms.saturating_add(rng.gen_range(0, spread)))
        }
    };
    state.attempt = state.attempt.saturating_add(1);
    state.last_sleep_ms = sleep;
    sleep
}

/// The sleeps of one backoff kind in a budget (client-go keeps the same
/// per type: `backoffTimes` and `backoffSleepMS`; its `CommitDetails`
/// lists the types slept on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindSleeps {
    /// What was backed off on.
    pub kind: BackoffKind,
    /// How many sleeps.
    pub sleeps: u32,
    /// Their total.
    pub slept: Duration,
}

impl KindSleeps {
    /// Adds `more` into `total`, one entry per kind, kept in
    /// [`BackoffKind::ALL`] order (summing the budgets of several phases or
    /// calls, as client-go appends their backoff types).
    pub fn add_into(total: &mut Vec<KindSleeps>, more: impl IntoIterator<Item = KindSleeps>) {
        for sleeps in more {
            match total.iter_mut().find(|s| s.kind == sleeps.kind) {
                Some(same) => {
                    same.sleeps += sleeps.sleeps;
                    same.slept += sleeps.slept;
                }
                None => total.push(sleeps),
            }
        }
        total.sort_by_key(|s| s.kind as usize);
    }
}

/// Per-kind accounting of a [`Backoffer`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KindStats {
    /// Backoffs taken (client-go `backoffTimes`).
    times: u32,
    /// Cumulative sleep in ms (client-go `backoffSleepMS`).
    sleep_ms: u64,
    /// The exponential schedule; `None` until first used, and reset by
    /// [`Backoffer::fork`] and [`Backoffer::reset`] as client-go drops its
    /// `fn` map there.
    expo: Option<ExpoState>,
}

type KindTable = [KindStats; BackoffKind::ALL.len()];

/// Per-operation backoff state, following client-go's `retry.Backoffer`.
///
/// Each call to [`Backoffer::backoff`] returns how long to sleep (the core
/// never sleeps itself: the caller arms a timer) or, once the budget is
/// spent, the error to give up with. Sleeps are whole milliseconds, as in
/// client-go.
///
/// Budget rules (client-go `BackoffWithCfgAndMaxSleep`):
/// - the sum of sleeps of kinds not [excluded](BackoffKind::excluded_from_budget)
///   must stay below the budget; the call that finds it reached fails;
/// - excluded sleeps (`ServerBusy`) have their own ceiling,
///   [`EXCLUDED_SLEEP_LIMIT`] (and at least the budget);
/// - on failure the error class is the one of the kind that slept the longest.
///
/// A zero budget fails the first backoff (no retries at all). Note that
/// client-go treats `maxSleep == 0` as "unchecked"; use
/// [`Backoffer::unbounded`] for that.
///
/// ```
/// use tikv_core::backoff::{BackoffKind, Backoffer};
/// use tikv_core::rng::Rng;
/// use tikv_core::time::Duration;
/// let mut bo = Backoffer::new(Duration::from_millis(5), Rng::new(1));
/// assert_eq!(bo.backoff(BackoffKind::RegionMiss, "epoch").unwrap(), Duration::from_millis(2));
/// assert_eq!(bo.backoff(BackoffKind::RegionMiss, "epoch").unwrap(), Duration::from_millis(4));
/// assert!(bo.backoff(BackoffKind::RegionMiss, "epoch").is_err()); // 6ms >= 5ms
/// ```
#[derive(Clone, Debug)]
pub struct Backoffer {
    budget_ms: u64,
    total_ms: u64,
    excluded_ms: u64,
    /// Per-kind stats, allocated by the first backoff. Almost every
    /// operation finishes without one, and each creates, forks, moves and
    /// merges backoffers: boxed, the table is not copied with every move.
    kinds: Option<Box<KindTable>>,
    /// The last [`MAX_RECORDED_ERRORS`] reasons, oldest first (allocated by
    /// the first one).
    errors: std::collections::VecDeque<String>,
    /// How many reasons were ever recorded (decides which side's errors win
    /// in [`Backoffer::merge_from`]).
    errors_seen: u64,
    rng: crate::rng::Rng,
}

impl Backoffer {
    /// A backoffer that may sleep `budget` in total (excluded kinds aside).
    /// The budget is used as given: apply the weight with [`weighted`] (or
    /// `Config::budget`) first, as client-go's `NewBackofferWithVars` does.
    pub fn new(budget: Duration, rng: crate::rng::Rng) -> Backoffer {
        Backoffer {
            budget_ms: saturating_millis(budget),
            total_ms: 0,
            excluded_ms: 0,
            kinds: None,
            errors: std::collections::VecDeque::new(),
            errors_seen: 0,
            rng,
        }
    }

    /// A backoffer without a budget (client-go's `NewBackoffer(ctx, 0)`,
    /// used for loops that must retry until cancelled, such as recreating a
    /// batch stream). Each kind's sleeps still grow up to its cap.
    pub fn unbounded(rng: crate::rng::Rng) -> Backoffer {
        Backoffer::new(Duration::MAX, rng)
    }

    /// Records `reason` and returns the sleep for the next retry of `kind`,
    /// or the exhaustion error.
    pub fn backoff(
        &mut self,
        kind: BackoffKind,
        reason: impl fmt::Display,
    ) -> crate::Result<Duration> {
        self.backoff_inner(kind, None, &reason)
    }

    /// As [`Backoffer::backoff`], but this sleep is at most `cap`; the
    /// schedule still advances as if uncapped (client-go's
    /// `BackoffWithMaxSleepTxnLockFast`, which caps lock waits at the lock's
    /// remaining TTL).
    pub fn backoff_capped(
        &mut self,
        kind: BackoffKind,
        cap: Duration,
        reason: impl fmt::Display,
    ) -> crate::Result<Duration> {
        self.backoff_inner(kind, Some(saturating_millis(cap)), &reason)
    }

    fn backoff_inner(
        &mut self,
        kind: BackoffKind,
        cap_ms: Option<u64>,
        reason: &dyn fmt::Display,
    ) -> crate::Result<Duration> {
        self.record(reason.to_string());
        let budget_exceeded = self.budgeted_ms() >= self.budget_ms;
        let excluded_exceeded = kind.excluded_from_budget()
            && self.excluded_ms >= saturating_millis(EXCLUDED_SLEEP_LIMIT)
            && self.excluded_ms >= self.budget_ms;
        if budget_exceeded || excluded_exceeded {
            return Err(self.exhausted(kind));
        }

        let (base, cap, jitter) = kind.schedule();
        // client-go raises bases below 2ms to 2 (its `rand.Intn` would panic).
        let base_ms = saturating_millis(base).max(2);
        let cap_ms_kind = saturating_millis(cap);
        let stats = &mut self.kinds.get_or_insert_with(Box::default)[kind as usize];
        let state = stats.expo.get_or_insert(ExpoState { attempt: 0, last_sleep_ms: base_ms });
        let sleep = next_sleep_ms(base_ms, cap_ms_kind, jitter, state, &mut self.rng);
        let real = cap_ms.map_or(sleep, |c| sleep.min(c));

        stats.times = stats.times.saturating_add(1);
        stats.sleep_ms = stats.sleep_ms.saturating_add(real);
        self.total_ms = self.total_ms.saturating_add(real);
        if kind.excluded_from_budget() {
            self.excluded_ms = self.excluded_ms.saturating_add(real);
        }
        Ok(Duration::from_millis(real))
    }

    fn record(&mut self, reason: String) {
        if self.errors.len() == MAX_RECORDED_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(reason);
        self.errors_seen += 1;
    }

    fn budgeted_ms(&self) -> u64 {
        self.total_ms.saturating_sub(self.excluded_ms)
    }

    /// The budgeted kind with the largest cumulative sleep (client-go
    /// `longestSleepCfg`); ties go to the earlier kind in
    /// [`BackoffKind::ALL`] so the choice never depends on map order. When no
    /// budgeted kind slept, `current` (client-go then returns the caller's
    /// own error).
    pub fn dominant_kind(&self, current: BackoffKind) -> BackoffKind {
        let mut best: Option<(BackoffKind, u64)> = None;
        for kind in BackoffKind::ALL {
            let slept = self.kind_stats(kind).sleep_ms;
            if kind.excluded_from_budget() || slept == 0 {
                continue;
            }
            if best.is_none_or(|(_, b)| slept > b) {
                best = Some((kind, slept));
            }
        }
        best.map_or(current, |(k, _)| k)
    }

    fn exhausted(&self, current: BackoffKind) -> crate::Error {
        let kind = self.dominant_kind(current);
        crate::Error::BackoffExhausted {
            class: kind.exhausted_error(),
            kind,
            total_sleep: Duration::from_millis(self.budgeted_ms()),
            last_errors: self.errors.iter().cloned().collect(),
        }
    }

    /// Everything slept so far, excluded kinds included (client-go
    /// `GetTotalSleep`).
    pub fn total_sleep(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }

    /// The part of [`Backoffer::total_sleep`] spent on excluded kinds.
    pub fn excluded_sleep(&self) -> Duration {
        Duration::from_millis(self.excluded_ms)
    }

    /// The sleep counted against the budget.
    pub fn budgeted_sleep(&self) -> Duration {
        Duration::from_millis(self.budgeted_ms())
    }

    /// What is left of the budget (zero once spent).
    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.budget_ms.saturating_sub(self.budgeted_ms()))
    }

    /// The budget this backoffer was given.
    pub fn budget(&self) -> Duration {
        Duration::from_millis(self.budget_ms)
    }

    /// Successful backoffs of `kind` so far (client-go `backoffTimes`).
    pub fn attempts(&self, kind: BackoffKind) -> u32 {
        self.kind_stats(kind).times
    }

    /// True once a backoff of any kind was taken (some
    /// [`Backoffer::attempts`] is above zero): one check instead of one per
    /// kind for the common backoffer that never backed off.
    pub fn has_attempts(&self) -> bool {
        self.kinds.as_ref().is_some_and(|kinds| kinds.iter().any(|k| k.times > 0))
    }

    /// Cumulative sleep of `kind` (client-go `backoffSleepMS`).
    pub fn kind_sleep(&self, kind: BackoffKind) -> Duration {
        Duration::from_millis(self.kind_stats(kind).sleep_ms)
    }

    /// The kinds slept on so far, in [`BackoffKind::ALL`] order.
    pub fn sleeps_by_kind(&self) -> impl Iterator<Item = KindSleeps> + '_ {
        BackoffKind::ALL.into_iter().filter_map(|kind| {
            let sleeps = self.attempts(kind);
            (sleeps > 0).then(|| KindSleeps { kind, sleeps, slept: self.kind_sleep(kind) })
        })
    }

    fn kind_stats(&self, kind: BackoffKind) -> &KindStats {
        const NONE: &KindStats = &KindStats { times: 0, sleep_ms: 0, expo: None };
        self.kinds.as_ref().map_or(NONE, |kinds| &kinds[kind as usize])
    }

    /// The last reasons given, oldest first (at most [`MAX_RECORDED_ERRORS`]).
    pub fn last_errors(&self) -> impl Iterator<Item = &str> {
        self.errors.iter().map(String::as_str)
    }

    /// A child for one of several parallel batches (client-go `Fork`): it
    /// starts with this backoffer's budget, totals, per-kind counters and
    /// errors, and its own forked random stream. As in client-go the child
    /// does not inherit the exponential schedules: its first sleep of each
    /// kind starts again from the base.
    pub fn fork(&mut self) -> Backoffer {
        let mut kinds = self.kinds.clone();
        for k in kinds.iter_mut().flat_map(|table| table.iter_mut()) {
            k.expo = None;
        }
        Backoffer {
            budget_ms: self.budget_ms,
            total_ms: self.total_ms,
            excluded_ms: self.excluded_ms,
            kinds,
            // Cloning an empty deque still costs a call per fork, and
            // almost every fork (one per region call) has no errors yet.
            errors: if self.errors.is_empty() {
                std::collections::VecDeque::new()
            } else {
                self.errors.clone()
            },
            errors_seen: self.errors_seen,
            rng: self.rng.fork(),
        }
    }

    /// Folds a finished child back in (client-go `UpdateUsingForked`).
    ///
    /// client-go overwrites the parent with the child's totals; with several
    /// children merged in any order, taking the maximum of each total gives
    /// the same answer as "the child that slept the longest", which is what
    /// parallel batches cost in wall time. The errors of whichever side
    /// recorded more are kept. The parent's own schedules are unchanged.
    pub fn merge_from(&mut self, child: &Backoffer) {
        self.total_ms = self.total_ms.max(child.total_ms);
        self.excluded_ms = self.excluded_ms.max(child.excluded_ms);
        if let Some(theirs) = &child.kinds {
            let mine = self.kinds.get_or_insert_with(Box::default);
            for (mine, theirs) in mine.iter_mut().zip(theirs.iter()) {
                mine.times = mine.times.max(theirs.times);
                mine.sleep_ms = mine.sleep_ms.max(theirs.sleep_ms);
            }
        }
        if child.errors_seen > self.errors_seen {
            self.errors = child.errors.clone();
            self.errors_seen = child.errors_seen;
        }
    }

    /// Starts a new stage with a new budget (client-go `ResetMaxSleep`):
    /// totals and schedules restart, per-kind history (used to pick the
    /// dominant kind) and recorded errors are kept.
    pub fn reset(&mut self, budget: Duration) {
        self.budget_ms = saturating_millis(budget);
        self.total_ms = 0;
        self.excluded_ms = 0;
        for k in self.kinds.iter_mut().flat_map(|table| table.iter_mut()) {
            k.expo = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::Error;
    use crate::rng::Rng;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn table_matches_client_go() {
        // Spot checks against client-go config/retry/config.go.
        let ms = Duration::from_millis;
        assert_eq!(BackoffKind::TikvRpc.schedule(), (ms(100), ms(2000), Jitter::Equal));
        assert_eq!(BackoffKind::TxnLockFast.schedule(), (ms(10), ms(3000), Jitter::Equal));
        assert_eq!(BackoffKind::ServerBusy.schedule(), (ms(2000), ms(10000), Jitter::Equal));
        assert_eq!(BackoffKind::DiskFull.schedule(), (ms(500), ms(5000), Jitter::None));
        let excluded: Vec<_> =
            BackoffKind::ALL.iter().filter(|k| k.excluded_from_budget()).collect();
        assert_eq!(excluded, [&BackoffKind::ServerBusy]);
        for (i, k) in BackoffKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "ALL is in declaration order");
        }
    }

    #[test]
    fn sleep_sequences_per_kind() {
        let mut out = String::new();
        for kind in BackoffKind::ALL {
            let mut bo = Backoffer::unbounded(Rng::new(2024));
            let (base, cap, jitter) = kind.schedule();
            writeln!(out, "{kind} base={}ms cap={}ms jitter={jitter:?}", ms(base), ms(cap))
                .unwrap();
            for attempt in 0..8 {
                let d = bo.backoff(kind, "x").unwrap();
                let (b, c) = (ms(base).max(2), ms(cap));
                let expo = (b << attempt).min(c);
                // Equal jitter stays in [v/2, v); no jitter is exactly v.
                match jitter {
                    Jitter::None => assert_eq!(ms(d), expo),
                    _ => assert!(ms(d) >= expo / 2 && ms(d) < expo.max(1), "{kind} {d:?}"),
                }
                writeln!(out, "  #{attempt} {}ms (expo {expo}ms)", ms(d)).unwrap();
            }
            assert_eq!(bo.attempts(kind), 8);
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn full_and_decorrelated_jitter() {
        let mut out = String::new();
        for jitter in [Jitter::Full, Jitter::Decorrelated] {
            let mut rng = Rng::new(7);
            let mut st = ExpoState { attempt: 0, last_sleep_ms: 10 };
            let mut line = format!("{jitter:?}:");
            for _ in 0..10 {
                let s = next_sleep_ms(10, 1000, jitter, &mut st, &mut rng);
                match jitter {
                    Jitter::Full => assert!(s < expo(10, 1000, st.attempt - 1)),
                    _ => assert!((10..=1000).contains(&s)),
                }
                write!(line, " {s}").unwrap();
            }
            writeln!(out, "{line}").unwrap();
        }
        insta::assert_snapshot!(out);
    }

    fn describe(r: &crate::Result<Duration>) -> String {
        match r {
            Ok(d) => format!("sleep {}ms", ms(*d)),
            Err(Error::BackoffExhausted { class, kind, total_sleep, last_errors }) => format!(
                "EXHAUSTED class={class:?} kind={kind} total={}ms errors={last_errors:?}",
                ms(*total_sleep)
            ),
            Err(e) => format!("error {e}"),
        }
    }

    #[test]
    fn exhaustion_picks_the_dominant_kind() {
        let mut bo = Backoffer::new(weighted(500, 2), Rng::new(1));
        assert_eq!(bo.budget(), Duration::from_secs(1));
        let mut out = String::new();
        // Two TiKV send failures early, then region misses until the budget
        // runs out: RegionMiss ends up with the most sleep.
        let mut failed = false;
        for i in 0..30 {
            let kind =
                if i == 1 || i == 4 { BackoffKind::TikvRpc } else { BackoffKind::RegionMiss };
            let r = bo.backoff(kind, format_args!("err{i}"));
            writeln!(
                out,
                "{kind:<10} -> {} (budgeted {}ms)",
                describe(&r),
                ms(bo.budgeted_sleep())
            )
            .unwrap();
            if r.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        insta::assert_snapshot!(out);
        match bo.backoff(BackoffKind::TikvRpc, "again") {
            Err(Error::BackoffExhausted { kind, class, last_errors, .. }) => {
                assert_eq!(kind, BackoffKind::RegionMiss);
                assert_eq!(class, ExhaustedClass::RegionUnavailable);
                assert_eq!(last_errors.len(), MAX_RECORDED_ERRORS);
                assert_eq!(last_errors.last().map(String::as_str), Some("again"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dominant_kind_ties_follow_enum_order() {
        let mut bo = Backoffer::unbounded(Rng::new(0));
        // RegionScheduling and RegionMiss have the same fixed schedule.
        bo.backoff(BackoffKind::RegionScheduling, "a").unwrap();
        bo.backoff(BackoffKind::RegionMiss, "b").unwrap();
        assert_eq!(bo.dominant_kind(BackoffKind::PdRpc), BackoffKind::RegionMiss);
        bo.backoff(BackoffKind::RegionScheduling, "c").unwrap();
        assert_eq!(bo.dominant_kind(BackoffKind::PdRpc), BackoffKind::RegionScheduling);
        // ServerBusy never dominates, however long it slept.
        bo.backoff(BackoffKind::ServerBusy, "busy").unwrap();
        assert_eq!(bo.dominant_kind(BackoffKind::PdRpc), BackoffKind::RegionScheduling);
        assert_eq!(
            Backoffer::unbounded(Rng::new(0)).dominant_kind(BackoffKind::PdRpc),
            BackoffKind::PdRpc
        );
    }

    #[test]
    fn server_busy_is_excluded_from_the_budget() {
        let mut bo = Backoffer::new(Duration::from_millis(100), Rng::new(5));
        let mut out = String::new();
        let mut busy_total = 0;
        let mut sleeps = 0;
        // Far more ServerBusy sleep than the 100ms budget is allowed...
        loop {
            let r = bo.backoff(BackoffKind::ServerBusy, "server is busy");
            if sleeps < 5 || r.is_err() {
                writeln!(out, "ServerBusy -> {}", describe(&r)).unwrap();
            } else if sleeps == 5 {
                writeln!(out, "...").unwrap();
            }
            match r {
                Ok(d) => busy_total += ms(d),
                Err(_) => break,
            }
            sleeps += 1;
            assert!(busy_total < 700_000, "excluded sleep must be capped");
        }
        writeln!(out, "{sleeps} ServerBusy sleeps, {busy_total}ms excluded").unwrap();
        // ...until the 10-minute ceiling for excluded sleep.
        assert!(bo.excluded_sleep() >= EXCLUDED_SLEEP_LIMIT);
        assert_eq!(bo.excluded_sleep(), bo.total_sleep());
        assert_eq!(bo.budgeted_sleep(), Duration::ZERO);
        // Budgeted kinds still have their whole budget.
        let r = bo.backoff(BackoffKind::RegionMiss, "miss");
        writeln!(out, "RegionMiss -> {}", describe(&r)).unwrap();
        assert!(r.is_ok());
        insta::assert_snapshot!(out);
    }

    #[test]
    fn exhausted_budget_also_stops_server_busy() {
        let mut bo = Backoffer::new(Duration::from_millis(2), Rng::new(5));
        bo.backoff(BackoffKind::RegionMiss, "miss").unwrap();
        match bo.backoff(BackoffKind::ServerBusy, "busy") {
            Err(Error::BackoffExhausted { kind, class, .. }) => {
                assert_eq!(kind, BackoffKind::RegionMiss);
                assert_eq!(class, ExhaustedClass::RegionUnavailable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn capped_backoff() {
        let mut bo = Backoffer::unbounded(Rng::new(9));
        let mut out = String::new();
        for (i, cap) in [1000u64, 30, 0, 1000, 5, 1000].into_iter().enumerate() {
            let d = bo
                .backoff_capped(BackoffKind::TxnLockFast, Duration::from_millis(cap), "locked")
                .unwrap();
            assert!(ms(d) <= u128::from(cap));
            writeln!(out, "#{i} cap={cap}ms -> {}ms", ms(d)).unwrap();
        }
        // The schedule kept growing under the caps: attempt 6 is in [320, 640).
        let d = bo.backoff(BackoffKind::TxnLockFast, "locked").unwrap();
        assert!((320..640).contains(&ms(d)), "{d:?}");
        writeln!(out, "#6 uncapped -> {}ms", ms(d)).unwrap();
        insta::assert_snapshot!(out);
        // Capped sleeps are what is accounted.
        let mut bo = Backoffer::new(Duration::from_millis(10), Rng::new(9));
        for _ in 0..10 {
            assert_eq!(
                bo.backoff_capped(BackoffKind::TxnLock, Duration::from_millis(1), "l").unwrap(),
                Duration::from_millis(1)
            );
        }
        assert_eq!(bo.budgeted_sleep(), Duration::from_millis(10));
        assert!(bo.backoff_capped(BackoffKind::TxnLock, Duration::from_millis(1), "l").is_err());
    }

    #[test]
    fn zero_budget_means_no_retries() {
        let mut bo = Backoffer::new(Duration::ZERO, Rng::new(1));
        match bo.backoff(BackoffKind::TikvRpc, "connection refused") {
            Err(Error::BackoffExhausted { class, kind, total_sleep, last_errors }) => {
                assert_eq!(kind, BackoffKind::TikvRpc);
                assert_eq!(class, ExhaustedClass::TikvServerTimeout);
                assert_eq!(total_sleep, Duration::ZERO);
                assert_eq!(last_errors, ["connection refused"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(bo.backoff(BackoffKind::ServerBusy, "busy").is_err());
        assert_eq!(bo.total_sleep(), Duration::ZERO);
        assert_eq!(bo.attempts(BackoffKind::TikvRpc), 0);
        assert!(!bo.has_attempts(), "a refused backoff is no attempt");
    }

    #[test]
    fn fork_and_merge() {
        let mut parent = Backoffer::new(Duration::from_secs(10), Rng::new(77));
        assert!(!parent.has_attempts());
        let mut out = String::new();
        for _ in 0..3 {
            parent.backoff(BackoffKind::RegionMiss, "p").unwrap();
        }
        assert!(parent.has_attempts());
        writeln!(out, "parent: total={}ms", ms(parent.total_sleep())).unwrap();
        let at_fork = parent.clone();
        let mut a = parent.fork();
        let mut b = parent.fork();
        assert_eq!(a.total_sleep(), parent.total_sleep());
        assert_eq!(a.attempts(BackoffKind::RegionMiss), 3);
        assert!(a.has_attempts(), "a fork starts with the parent's counters");
        // The child's schedule restarts (client-go Fork drops the closures).
        assert_eq!(a.backoff(BackoffKind::RegionMiss, "a1").unwrap(), Duration::from_millis(2));
        a.backoff(BackoffKind::TikvRpc, "a2").unwrap();
        for i in 0..3 {
            b.backoff(BackoffKind::RegionMiss, format_args!("b{i}")).unwrap();
        }
        b.backoff(BackoffKind::TikvRpc, "b3").unwrap();
        // Independent random streams: the TikvRpc sleeps differ by seed.
        writeln!(
            out,
            "a: total={}ms tikv={}ms",
            ms(a.total_sleep()),
            ms(a.kind_sleep(BackoffKind::TikvRpc))
        )
        .unwrap();
        writeln!(
            out,
            "b: total={}ms tikv={}ms",
            ms(b.total_sleep()),
            ms(b.kind_sleep(BackoffKind::TikvRpc))
        )
        .unwrap();
        let before = parent.clone();
        parent.merge_from(&a);
        parent.merge_from(&b);
        let mut other_order = before.clone();
        other_order.merge_from(&b);
        other_order.merge_from(&a);
        assert_eq!(parent.total_sleep(), other_order.total_sleep());
        assert_eq!(parent.total_sleep(), a.total_sleep().max(b.total_sleep()));
        assert_eq!(parent.attempts(BackoffKind::RegionMiss), 6);
        assert_eq!(parent.last_errors().collect::<Vec<_>>(), ["b1", "b2", "b3"]);
        writeln!(
            out,
            "merged: total={}ms regionMiss={}x tikv={}ms errors={:?}",
            ms(parent.total_sleep()),
            parent.attempts(BackoffKind::RegionMiss),
            ms(parent.kind_sleep(BackoffKind::TikvRpc)),
            parent.last_errors().collect::<Vec<_>>()
        )
        .unwrap();
        // The parent's own schedule continues where it was: attempt 3 = 16ms.
        assert_eq!(
            parent.backoff(BackoffKind::RegionMiss, "p").unwrap(),
            Duration::from_millis(16)
        );
        // Forking is deterministic.
        let mut p2 = at_fork.clone();
        let mut a2 = p2.fork();
        a2.backoff(BackoffKind::RegionMiss, "a1").unwrap();
        assert_eq!(
            a2.backoff(BackoffKind::TikvRpc, "a2").unwrap(),
            a.kind_sleep(BackoffKind::TikvRpc)
        );
        insta::assert_snapshot!(out);
    }

    /// Operations that never back off (nearly all) only create, fork, move
    /// and merge backoffers: those stay small and allocation-free.
    #[test]
    fn per_kind_stats_exist_only_after_a_backoff() {
        let words = std::mem::size_of::<Backoffer>() / std::mem::size_of::<usize>();
        assert!(words <= 16, "Backoffer is {words} words");
        let mut parent = Backoffer::new(Duration::from_secs(1), Rng::new(5));
        let mut quiet = parent.fork();
        parent.merge_from(&quiet);
        assert!(parent.kinds.is_none() && quiet.kinds.is_none());
        assert!(parent.errors.capacity() == 0 && quiet.errors.capacity() == 0);

        // A child that backed off brings its counts into a parent without any.
        let slept = quiet.backoff(BackoffKind::ServerBusy, "busy").unwrap();
        parent.merge_from(&quiet);
        assert_eq!(parent.attempts(BackoffKind::ServerBusy), 1);
        assert_eq!(parent.kind_sleep(BackoffKind::ServerBusy), slept);
        assert_eq!(parent.attempts(BackoffKind::RegionMiss), 0);
        assert_eq!(parent.last_errors().collect::<Vec<_>>(), ["busy"]);
        // And a fork of that parent starts from them.
        assert_eq!(parent.fork().attempts(BackoffKind::ServerBusy), 1);
    }

    #[test]
    fn reset_starts_a_new_stage() {
        let mut bo = Backoffer::new(Duration::from_millis(6), Rng::new(3));
        bo.backoff(BackoffKind::RegionMiss, "a").unwrap();
        bo.backoff(BackoffKind::RegionMiss, "b").unwrap();
        assert!(bo.backoff(BackoffKind::RegionMiss, "c").is_err());
        bo.reset(Duration::from_millis(100));
        assert_eq!(bo.total_sleep(), Duration::ZERO);
        assert_eq!(bo.remaining(), Duration::from_millis(100));
        assert_eq!(bo.backoff(BackoffKind::RegionMiss, "d").unwrap(), Duration::from_millis(2));
        assert_eq!(bo.attempts(BackoffKind::RegionMiss), 3);
    }

    #[test]
    fn weights() {
        assert_eq!(weighted(20_000, 2), Duration::from_secs(40));
        assert_eq!(weighted(15_000, DEFAULT_BACKOFF_WEIGHT), Duration::from_secs(30));
        assert_eq!(weighted(0, 2), Duration::ZERO);
        assert_eq!(weighted(1000, 0), Duration::from_secs(1));
        // Overflowing i32 milliseconds: weight not applied, as client-go.
        assert_eq!(weighted(2_000_000_000, 2), Duration::from_millis(2_000_000_000));
        assert_eq!(weighted(1_000_000_000, 2), Duration::from_millis(2_000_000_000));
    }
}
