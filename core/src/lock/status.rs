//! What is known of a lock and of its transaction's fate: the vocabulary
//! the resolver ([`crate::lock::ResolveLocks`]) works in, and the per-client
//! cache of determined outcomes that [`crate::view::ClusterView`] holds.
//!
//! Plain data with no machine in it, so the shared view can hold the cache
//! without depending on the resolver, which routes its requests through the
//! view.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tikv_proto::kvrpcpb;

use crate::key::Key;
use crate::pd::timestamp::Timestamp;

/// How many determined transaction outcomes a client remembers.
pub const TXN_STATUS_CACHE_SIZE: usize = 2048;

/// A lock met on a key (from `kvrpcpb::LockInfo`, keys already decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// The locked key.
    pub key: Key,
    /// The primary key of the lock's transaction.
    pub primary: Key,
    /// The transaction's start timestamp, which identifies it.
    pub txn_id: Timestamp,
    /// Lock TTL in milliseconds (from the transaction's start, physical).
    pub ttl: u64,
    /// Keys the transaction wrote in this region (decides lite resolving).
    pub txn_size: u64,
    /// What kind of lock (`Put`, `Del`, `Lock`, `PessimisticLock`, ...).
    pub lock_type: kvrpcpb::Op,
    /// The transaction uses async commit.
    pub use_async_commit: bool,
    /// For pessimistic locks, the lock's `for_update_ts`.
    pub for_update_ts: Timestamp,
    /// The lock's `min_commit_ts` (async commit).
    pub min_commit_ts: Timestamp,
    /// Left by a file-based transaction: TiKV needs the flag on
    /// `CheckTxnStatus` and `ResolveLock` (client-go forwards it; it writes
    /// no such transactions itself, nor do we).
    pub is_txn_file: bool,
}

impl Lock {
    /// The locks described by `info`: one, or the inner locks of a shared
    /// lock wrapper (client-go expands them before resolving).
    pub fn from_info(info: &kvrpcpb::LockInfo) -> Vec<Lock> {
        // A wrapper with no holders left (ScanLock filters them) is no lock.
        if info.lock_type == kvrpcpb::Op::SharedLock as i32 || !info.shared_lock_infos.is_empty() {
            return info.shared_lock_infos.iter().flat_map(Lock::from_info).collect();
        }
        vec![Lock {
            key: info.key.clone().into(),
            primary: info.primary_lock.clone().into(),
            txn_id: Timestamp::from_version(info.lock_version),
            ttl: info.lock_ttl,
            txn_size: info.txn_size,
            lock_type: kvrpcpb::Op::try_from(info.lock_type).unwrap_or(kvrpcpb::Op::Put),
            use_async_commit: info.use_async_commit,
            for_update_ts: Timestamp::from_version(info.lock_for_update_ts),
            min_commit_ts: Timestamp::from_version(info.min_commit_ts),
            is_txn_file: info.is_txn_file,
        }]
    }

    /// A pessimistic lock (acquired by `PessimisticLock`, not prewritten).
    pub fn is_pessimistic(&self) -> bool {
        matches!(self.lock_type, kvrpcpb::Op::PessimisticLock | kvrpcpb::Op::SharedPessimisticLock)
    }

    /// Milliseconds until the lock expires at `current_ts`, or 0 if it has
    /// (client-go `oracle.UntilExpired`: TTLs count in the physical domain
    /// from the lock's start timestamp).
    pub fn ms_until_expired(&self, ttl: u64, current_ts: Timestamp) -> u64 {
        let start = self.txn_id.physical().max(0) as u64;
        let now = current_ts.physical().max(0) as u64;
        start.saturating_add(ttl).saturating_sub(now)
    }
}

/// A transaction's fate as its primary reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TxnStatus {
    /// Remaining lock TTL; non-zero means the transaction is alive.
    pub ttl: u64,
    /// Commit timestamp; zero with `ttl == 0` means rolled back.
    pub commit_ts: Timestamp,
    /// What `CheckTxnStatus` did.
    pub action: kvrpcpb::Action,
    /// The primary's lock, when it is still locked (async commit needs it).
    pub primary_lock: Option<kvrpcpb::LockInfo>,
}

impl TxnStatus {
    /// Committed at `commit_ts`.
    pub fn is_committed(&self) -> bool {
        self.ttl == 0 && !self.commit_ts.is_zero()
    }
    /// Rolled back.
    pub fn is_rolled_back(&self) -> bool {
        self.ttl == 0 && self.commit_ts.is_zero()
    }
}

/// The client's cache of determined outcomes (committed or rolled back),
/// FIFO-evicted. Shared by all operations of a client.
#[derive(Debug, Default)]
pub struct TxnStatusCache {
    inner: Mutex<(HashMap<Timestamp, TxnStatus>, VecDeque<Timestamp>)>,
}

impl TxnStatusCache {
    /// The cached outcome of `txn_id`.
    pub fn get(&self, txn_id: Timestamp) -> Option<TxnStatus> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.get(&txn_id).cloned()
    }

    /// Remembers a determined outcome; alive transactions are not cached.
    pub fn insert(&self, txn_id: Timestamp, status: &TxnStatus) {
        if status.ttl != 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *inner;
        if map.insert(txn_id, status.clone()).is_none() {
            order.push_back(txn_id);
            while order.len() > TXN_STATUS_CACHE_SIZE {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }
}
