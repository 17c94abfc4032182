//! The core's typed errors.
//!
//! Every failure a caller can see is a variant here: nothing from the network
//! becomes a panic. Variants name the client-go error they correspond to where
//! one exists.

use std::fmt;

use tikv_proto::{errorpb, kvrpcpb};

use crate::backoff::{BackoffKind, ExhaustedClass};
use crate::pd::timestamp::Timestamp;
use crate::time::Duration;

/// Result alias for the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the TiKV client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A backoff budget ran out (client-go's `ErrTiKVServerTimeout`,
    /// `ErrRegionUnavailable`, `ErrPDServerTimeout`, ... chosen by the kind
    /// that slept the longest).
    #[error(
        "{class:?}: {kind} backoff exhausted after sleeping {total_sleep:?}; last errors: {last_errors:?}"
    )]
    BackoffExhausted {
        /// The error class of the dominant kind.
        class: ExhaustedClass,
        /// The kind with the largest cumulative sleep.
        kind: BackoffKind,
        /// Total time slept (budgeted kinds only).
        total_sleep: Duration,
        /// The last few reasons given for backing off (client-go keeps 3).
        last_errors: Vec<String>,
    },
    /// TiKV returned a region error that is not retried (e.g.
    /// `RaftEntryTooLarge`, `FlashbackNotPrepared`).
    #[error("region error: {}", .0.message)]
    Region(Box<errorpb::Error>),
    /// A transport error that is not retried.
    #[error("rpc error: {0}")]
    Rpc(RpcError),
    /// PD answered with an error header.
    #[error("PD error {code}: {message}")]
    Pd {
        /// `pdpb::ErrorType` as a number.
        code: i32,
        /// PD's message.
        message: String,
    },
    /// PD has no reachable leader among the known members.
    #[error("no PD leader reachable: {0}")]
    NoPdLeader(String),
    /// TiKV returned a key error.
    #[error("key error: {0:?}")]
    KeyError(Box<kvrpcpb::KeyError>),
    /// TiKV returned an error string in the response body (raw commands).
    #[error("TiKV error: {0}")]
    Server(String),
    /// The caller passed an invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A scan asked for more than the server's limit
    /// (client-go's `ErrMaxScanLimitExceeded`).
    #[error("scan limit {limit} exceeds the maximum {max}")]
    ScanLimitExceeded {
        /// What was asked.
        limit: u32,
        /// The maximum allowed.
        max: u32,
    },
    /// A response did not have the shape the protocol requires.
    #[error("malformed response: {0}")]
    MalformedResponse(String),
    /// The feature or mode is not supported by this client.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The keyspace does not exist or is not enabled.
    #[error("keyspace {name:?}: {reason}")]
    Keyspace {
        /// The keyspace name asked for.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The outcome of a write is unknown: it may or may not have been applied
    /// (client-go's `ErrResultUndetermined`). Only that: every other failure
    /// is definite.
    #[error("result undetermined: {0}")]
    Undetermined(String),
    /// A bug in the client: a protocol machine broke its contract (e.g. it
    /// stalled with no RPC in flight, no timer and no result). Whatever it
    /// had sent may or may not have been applied.
    #[error("internal error (a client bug): {0}")]
    Internal(String),
    /// Another transaction wrote a key this one wrote, after this one
    /// started (client-go `ErrWriteConflict`).
    #[error(
        "write conflict on {key:?}: txn {start_ts} vs txn committed or locked at {conflict_ts} (primary {primary:?})"
    )]
    WriteConflict {
        /// This transaction's start ts.
        start_ts: Timestamp,
        /// The conflicting transaction's commit ts (or start ts, for a lock).
        conflict_ts: Timestamp,
        /// The key.
        key: crate::key::Key,
        /// The conflicting transaction's primary key.
        primary: crate::key::Key,
        /// The commit ts of the newer write a pessimistic lock met (TiKV's
        /// `conflict_commit_ts`, zero when unknown): locking again with a
        /// `for_update_ts` at or above it gets past this conflict.
        conflict_commit_ts: Timestamp,
    },
    /// A pessimistic lock request would close a cycle of transactions
    /// waiting for each other's locks; TiKV's deadlock detector chose this
    /// one to fail (client-go `ErrDeadlock`). The locks the request took are
    /// rolled back.
    #[error("deadlock: waiting for txn {lock_ts} on {lock_key:?} (retryable: {retryable})")]
    Deadlock {
        /// The start ts of the transaction holding the lock waited for.
        lock_ts: Timestamp,
        /// The key waited for.
        lock_key: crate::key::Key,
        /// TiKV's hash (farmhash `Fingerprint64`) of the key that closed
        /// the cycle.
        deadlock_key_hash: u64,
        /// The cycle, as TiKV's detector reports it.
        wait_chain: Vec<tikv_proto::deadlock::WaitForEntry>,
        /// The key that closed the cycle is one this request was locking:
        /// retrying the statement (after its locks are rolled back) may
        /// succeed (client-go `IsRetryable`).
        retryable: bool,
    },
    /// A pessimistic lock is still held by another transaction after the
    /// wait the caller allowed (client-go `ErrLockWaitTimeout`).
    #[error("lock wait timeout")]
    LockWaitTimeout,
    /// A no-wait pessimistic lock met another transaction's live lock
    /// (client-go `ErrLockAcquireFailAndNoWaitSet`).
    #[error("lock acquire failed and no wait is set")]
    LockAcquireFailAndNoWaitSet,
    /// An inserted key already exists (client-go `ErrKeyExist`).
    #[error("key {0:?} already exists")]
    KeyExists(crate::key::Key),
    /// TiKV found an assertion on a key violated (client-go
    /// `ErrAssertionFailed`).
    #[error("assertion failed: {0:?}")]
    AssertionFailed(Box<kvrpcpb::KeyError>),
    /// A shared pessimistic lock of this transaction is gone (TiKV's
    /// `KeyError.shared_lock_lost`, e.g. rolled back by a resolver after
    /// it expired): the transaction cannot commit the key as locked.
    #[error("shared lock of transaction {start_ts:?} on key {key:?} was lost")]
    SharedLockLost {
        /// The key locked in share mode.
        key: crate::key::Key,
        /// The transaction that held the share.
        start_ts: Timestamp,
    },
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// The async runtime the client's background tasks and connections
    /// live on (the one current when it connected) has shut down, taking
    /// them with it: every call fails with this at once rather than waiting
    /// on tasks that no longer exist. Connect from a runtime that lives as
    /// long as the client.
    #[error(
        "the runtime the client connected on has shut down; connect from a runtime that outlives the client"
    )]
    RuntimeShutDown,
    /// A key is longer than the transaction buffer accepts
    /// (client-go's `ErrKeyTooLarge`, limit `MaxKeyLen` = 65535 bytes).
    #[error("key of {size} bytes exceeds the maximum key length {limit}")]
    KeyTooLarge {
        /// The key's length.
        size: usize,
        /// The maximum allowed.
        limit: usize,
    },
    /// One key plus its value is larger than the configured entry limit
    /// (client-go's `ErrEntryTooLarge`, set with `SetEntrySizeLimit`).
    #[error("entry of {size} bytes exceeds the entry size limit {limit}")]
    EntryTooLarge {
        /// Key length plus value length.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The transaction's buffer would grow past its configured total size
    /// (client-go's `ErrTxnTooLarge`).
    #[error("transaction buffer of {size} bytes would exceed the limit {limit}")]
    TxnTooLarge {
        /// The size the buffer would have had.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A staging handle was released or cleaned up out of LIFO order, or
    /// released after it had already been closed (client-go panics with
    /// "cannot release staging buffer" / "cannot cleanup staging buffer").
    #[error("staging handle {handle} used out of order: {open} stagings open")]
    StagingOrder {
        /// Depth of the handle (1 = outermost staging).
        handle: u32,
        /// How many stagings are open.
        open: u32,
    },
    /// A checkpoint can no longer be reverted to: it belongs to a staging
    /// that was closed, or the buffer was rolled back below it.
    #[error("checkpoint is no longer valid")]
    StaleCheckpoint,
    /// The transaction ran longer than a transaction may (client-go's
    /// "txn takes too much time", `MaxTxnTimeUse`): refused before its
    /// commit point, so nothing of it is committed.
    #[error("txn {start_ts} ran past the {limit:?} limit (at ts {now_ts})")]
    TxnTooLong {
        /// The transaction's start ts.
        start_ts: Timestamp,
        /// The timestamp at which it was found too old.
        now_ts: Timestamp,
        /// The limit.
        limit: Duration,
    },
    /// A read at a timestamp PD has not handed out yet (client-go's
    /// `ErrFutureTSRead` from `ValidateReadTS`): a later commit could get a
    /// smaller timestamp and appear under the read, breaking isolation.
    #[error("read ts {read_ts} is ahead of PD's current ts {current_ts}")]
    FutureReadTs {
        /// The timestamp the read asked for.
        read_ts: Timestamp,
        /// PD's timestamp when it was checked.
        current_ts: Timestamp,
    },
    /// The read's timestamp is below the txn safe point: GC may already
    /// have collected what it would read (client-go `ErrTxnAbortedByGC`,
    /// whose text this keeps).
    #[error(
        "GC life time is shorter than transaction duration, transaction start ts is {start_ts}, txn safe point is {txn_safe_point}"
    )]
    TxnAbortedByGc {
        /// The timestamp of the refused read.
        start_ts: Timestamp,
        /// The txn safe point it is below.
        txn_safe_point: Timestamp,
    },
}

impl Error {
    /// A malformed-response error with a message.
    pub fn malformed(msg: impl fmt::Display) -> Error {
        Error::MalformedResponse(msg.to_string())
    }

    /// TiKV's `WriteConflict` key error as [`Error::WriteConflict`] (client-go
    /// `NewErrWriteConflictWithArgs`).
    pub fn write_conflict(c: &kvrpcpb::WriteConflict) -> Error {
        Error::WriteConflict {
            start_ts: Timestamp::from_version(c.start_ts),
            conflict_ts: Timestamp::from_version(c.conflict_ts),
            key: c.key.clone().into(),
            primary: c.primary.clone().into(),
            conflict_commit_ts: Timestamp::from_version(c.conflict_commit_ts),
        }
    }

    /// The write may or may not have been applied (client-go's
    /// `IsErrorUndetermined`): retrying it blindly could apply it twice, so
    /// callers check (read back) before deciding.
    pub fn is_undetermined(&self) -> bool {
        matches!(self, Error::Undetermined(_))
    }

    /// A key error from TiKV: typed when it names a condition this client
    /// has a variant for ([`Error::SharedLockLost`]), else
    /// [`Error::KeyError`] as it came.
    pub fn from_key_error(e: kvrpcpb::KeyError) -> Error {
        match &e.shared_lock_lost {
            Some(lost) => Error::SharedLockLost {
                key: lost.key.clone().into(),
                start_ts: Timestamp::from_version(lost.start_ts),
            },
            None => Error::KeyError(Box::new(e)),
        }
    }

    /// Another transaction wrote a key of this one after it started
    /// (client-go's `IsErrWriteConflict`), as a typed error or as TiKV's key
    /// error: a fresh transaction may succeed.
    pub fn is_write_conflict(&self) -> bool {
        match self {
            Error::WriteConflict { .. } => true,
            Error::KeyError(e) => e.conflict.is_some(),
            _ => false,
        }
    }

    /// An inserted key already exists (client-go's `IsErrKeyExist`).
    pub fn is_key_exists(&self) -> bool {
        match self {
            Error::KeyExists(_) => true,
            Error::KeyError(e) => e.already_exist.is_some(),
            _ => false,
        }
    }

    /// Trying the same operation again later (a fresh transaction, for a
    /// transactional one) may succeed, and nothing of the failed attempt
    /// was applied: retry budgets that ran out, unreachable or slow servers,
    /// no PD leader, write conflicts, deadlocks and pessimistic locks not
    /// acquired in time, and key errors TiKV marks retryable.
    /// Undetermined outcomes are not retryable (see
    /// [`Error::is_undetermined`]), nor are bad arguments, malformed answers
    /// or refusals.
    ///
    /// ```
    /// use tikv_core::Error;
    /// assert!(Error::NoPdLeader("all members down".into()).is_retryable());
    /// assert!(!Error::Undetermined("commit lost its answer".into()).is_retryable());
    /// assert!(!Error::InvalidArgument("empty key".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::BackoffExhausted { .. }
            | Error::NoPdLeader(_)
            | Error::WriteConflict { .. }
            | Error::Deadlock { .. }
            | Error::LockWaitTimeout
            | Error::LockAcquireFailAndNoWaitSet
            | Error::SharedLockLost { .. } => true,
            Error::Rpc(e) => matches!(
                e,
                RpcError::Unavailable(_) | RpcError::DeadlineExceeded | RpcError::NoTimestamp(_)
            ),
            Error::KeyError(e) => {
                e.conflict.is_some() || !e.retryable.is_empty() || e.locked.is_some()
            }
            _ => false,
        }
    }
}

impl From<crate::key::memcomparable::MalformedKey> for Error {
    fn from(e: crate::key::memcomparable::MalformedKey) -> Error {
        Error::malformed(e)
    }
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Error {
        Error::Rpc(e)
    }
}

/// Transport-level failure of one RPC, as reported by a runtime (also
/// [`crate::rpc::RpcError`], beside the requests it fails). It lives here,
/// with [`Error`] that wraps it and that it wraps
/// ([`RpcError::NoTimestamp`]), so the vocabulary of failures depends on no
/// other module's.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RpcError {
    /// Could not connect, or the connection broke before a response.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed without a response.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The call was canceled.
    #[error("canceled")]
    Canceled,
    /// The response could not be decoded.
    #[error("decode error: {0}")]
    Decode(String),
    /// The server does not serve the method (gRPC `Unimplemented`): an
    /// older PD or TiKV. Callers with a fallback take it (client-go falls
    /// back from `BatchScanRegions` to `ScanRegions` this way); it is never
    /// a reason to retry or to look for another leader. The status message.
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// The server answered with another gRPC status than OK, one the
    /// transport has no variant of its own for.
    #[error("grpc status {code}: {message}")]
    Status {
        /// The gRPC status code as a number.
        code: i32,
        /// The status message.
        message: String,
    },
    /// The runtime returned a response of another command than the request
    /// (a broken transport or server).
    #[error("response does not match the request")]
    Mismatch,
    /// The client's timestamp oracle could not get a timestamp (its round
    /// already retried within the TSO budget): the error it ended with.
    #[error("no timestamp: {0}")]
    NoTimestamp(Box<Error>),
    /// A network transport was handed a request only the client itself
    /// answers ([`Request::Timestamp`] for [`Target::Oracle`]); the method
    /// name.
    ///
    /// [`Request::Timestamp`]: crate::rpc::Request::Timestamp
    /// [`Target::Oracle`]: crate::rpc::Target::Oracle
    #[error("{0} is not sent over the network")]
    NotNetwork(&'static str),
    /// TLS refused or impossible: the peer's certificate did not verify
    /// (unknown CA, wrong name), the server refused the client's (or its
    /// missing) certificate, the configured certificates could not be read,
    /// or an `https://` address was given without TLS configured. PD calls
    /// end on it at once: every member shares the one TLS configuration, so
    /// the next attempt would fail the same way. To a store it is a send
    /// failure like any other (client-go's `onSendFail`: the next peer is
    /// tried after a backoff), since one store's certificate may be wrong.
    #[error("TLS: {0}")]
    Tls(String),
    /// An RPC interceptor of the caller refused to send the request (its
    /// reason). The request never left the client, and the operation ends
    /// with this error instead of retrying: the hook that refused it would
    /// refuse the retry too. (client-go treats an interceptor's error as a
    /// send failure and retries until the budget runs out; an interceptor
    /// that wants that here returns [`RpcError::Unavailable`].)
    #[error("rejected by an RPC interceptor: {0}")]
    Rejected(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_error(f: impl FnOnce(&mut kvrpcpb::KeyError)) -> Error {
        let mut e = kvrpcpb::KeyError::default();
        f(&mut e);
        Error::KeyError(Box::new(e))
    }

    /// What a caller may do next, per error: the helpers agree with the
    /// variants' documented meaning.
    #[test]
    fn helpers_classify_what_a_caller_may_do_next() {
        let conflict = Error::WriteConflict {
            start_ts: Timestamp::from_version(1),
            conflict_ts: Timestamp::from_version(2),
            conflict_commit_ts: Timestamp::ZERO,
            key: "k".into(),
            primary: "p".into(),
        };
        assert!(conflict.is_write_conflict() && conflict.is_retryable());
        let tikv_conflict = key_error(|e| e.conflict = Some(Default::default()));
        assert!(tikv_conflict.is_write_conflict() && tikv_conflict.is_retryable());
        let exists = key_error(|e| e.already_exist = Some(Default::default()));
        assert!(exists.is_key_exists() && !exists.is_retryable());
        assert!(Error::KeyExists("k".into()).is_key_exists());
        assert!(key_error(|e| e.retryable = "stale".into()).is_retryable());
        assert!(key_error(|e| e.abort = "txn not found".into()).is_retryable().eq(&false));
        assert!(Error::Rpc(RpcError::DeadlineExceeded).is_retryable());
        assert!(!Error::Rpc(RpcError::Decode("junk".into())).is_retryable());
        let undetermined = Error::Undetermined("lost".into());
        assert!(undetermined.is_undetermined() && !undetermined.is_retryable());
        let bug = Error::Internal("stalled".into());
        assert!(!bug.is_undetermined() && !bug.is_retryable());
        assert!(!Error::malformed("x").is_retryable());
        assert!(Error::LockWaitTimeout.is_retryable());
        assert!(Error::LockAcquireFailAndNoWaitSet.is_retryable());
    }

    /// TiKV's `shared_lock_lost` becomes the typed error; other key errors
    /// stay as they came.
    #[test]
    fn a_lost_share_is_typed() {
        let lost = Error::from_key_error(kvrpcpb::KeyError {
            shared_lock_lost: Some(kvrpcpb::SharedLockLost { key: "k".into(), start_ts: 7 }),
            ..Default::default()
        });
        assert_eq!(
            lost,
            Error::SharedLockLost {
                key: crate::key::Key::from("k"),
                start_ts: Timestamp::from_version(7),
            }
        );
        assert!(lost.is_retryable(), "nothing of the transaction was committed");
        let other =
            Error::from_key_error(kvrpcpb::KeyError { abort: "x".into(), ..Default::default() });
        assert!(matches!(other, Error::KeyError(_)));
    }
}
