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
