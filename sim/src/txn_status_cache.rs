//! TiKV's txn status cache as `BroadcastTxnStatus` fills it
//! (`src/storage/txn/txn_status_cache.rs`, `Storage::update_txn_status_cache`).
//!
//! Each store keeps its own: what a client broadcast reaches only the
//! stores it was sent to. TiKV splits it in two: a *large* part for
//! ongoing transactions whose `min_commit_ts` is past their start ts
//! (pipelined ones pushed by heartbeats), and a *normal* part for the
//! rest; a lookup asks the large part first. The model keeps the same
//! two parts and the same update rules. What reads it is TiKV's
//! resolved-ts worker ([`crate::Cluster`]'s resolved-ts rounds): a
//! pipelined transaction's locks hold a region's resolved ts at its
//! cached `min_commit_ts` (its start ts when not cached), and not at all
//! once it is cached as committed or rolled back.
//!
//! Simplified: entries are never evicted by age or capacity (TiKV keeps
//! them at least 30 s, in a bounded LRU), and TiKV's own inserts of
//! committed transactions (for stale prewrites of pessimistic ones, which
//! the model does not need) are left out.

use std::collections::BTreeMap;

use tikv_proto::kvrpcpb;

/// A transaction's state in a store's cache (TiKV `TxnState`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CachedTxnState {
    /// Running; it commits after `min_commit_ts` at the earliest.
    Ongoing {
        /// At least the start ts.
        min_commit_ts: u64,
    },
    /// Committed at `commit_ts`.
    Committed {
        /// Its commit ts.
        commit_ts: u64,
    },
    /// Rolled back.
    RolledBack,
}

impl CachedTxnState {
    /// TiKV's `TxnState::from_ts`.
    fn of(status: &kvrpcpb::TxnStatus) -> CachedTxnState {
        if status.rolled_back {
            CachedTxnState::RolledBack
        } else if status.commit_ts == 0 {
            CachedTxnState::Ongoing { min_commit_ts: status.start_ts.max(status.min_commit_ts) }
        } else {
            CachedTxnState::Committed { commit_ts: status.commit_ts }
        }
    }
}

/// One store's cache, by start ts.
#[derive(Debug, Default)]
pub(crate) struct TxnStatusCache {
    large: BTreeMap<u64, CachedTxnState>,
    normal: BTreeMap<u64, CachedTxnState>,
}

impl TxnStatusCache {
    /// One `TxnStatus` of a `BroadcastTxnStatus`
    /// (`update_txn_status_cache`): a completed transaction leaves the
    /// large part, then the state is upserted.
    pub(crate) fn apply(&mut self, status: &kvrpcpb::TxnStatus) {
        let state = CachedTxnState::of(status);
        if status.is_completed {
            self.large.remove(&status.start_ts);
        }
        self.upsert(status.start_ts, state);
    }

    /// TiKV's `TxnStatusCache::upsert`: an ongoing state past the start ts
    /// goes to the large part and only ever raises `min_commit_ts`; any
    /// other goes to the normal part and also updates the large part's
    /// entry, if there is one. A committed or rolled-back entry is final.
    fn upsert(&mut self, start_ts: u64, state: CachedTxnState) {
        match state {
            CachedTxnState::Ongoing { min_commit_ts } if min_commit_ts > start_ts => {
                match self.large.get_mut(&start_ts) {
                    Some(CachedTxnState::Ongoing { min_commit_ts: old }) => {
                        *old = (*old).max(min_commit_ts);
                    }
                    Some(_) => {}
                    None => {
                        self.large.insert(start_ts, state);
                    }
                }
            }
            _ => {
                match self.normal.get_mut(&start_ts) {
                    Some(old @ CachedTxnState::Ongoing { .. }) => *old = state,
                    Some(_) => {}
                    None => {
                        self.normal.insert(start_ts, state);
                    }
                }
                if let Some(old @ CachedTxnState::Ongoing { .. }) = self.large.get_mut(&start_ts) {
                    *old = state;
                }
            }
        }
    }

    /// TiKV's `TxnStatusCache::get`: the large part first.
    pub(crate) fn get(&self, start_ts: u64) -> Option<CachedTxnState> {
        self.large.get(&start_ts).or_else(|| self.normal.get(&start_ts)).copied()
    }

    /// TiKV resolved-ts `Resolver::lookup_min_commit_ts` then
    /// `oldest_transaction` for a large transaction: the bound its locks
    /// put on a region's resolved ts (`min_commit_ts - 1`, the start ts
    /// standing in when not cached), `None` once it is decided.
    pub(crate) fn resolved_ts_bound(&self, start_ts: u64) -> Option<u64> {
        match self.get(start_ts) {
            None => Some(start_ts.saturating_sub(1)),
            Some(CachedTxnState::Ongoing { min_commit_ts }) => {
                Some(min_commit_ts.saturating_sub(1))
            }
            Some(CachedTxnState::Committed { .. } | CachedTxnState::RolledBack) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        start_ts: u64,
        min: u64,
        commit: u64,
        rolled_back: bool,
        done: bool,
    ) -> kvrpcpb::TxnStatus {
        kvrpcpb::TxnStatus {
            start_ts,
            min_commit_ts: min,
            commit_ts: commit,
            rolled_back,
            is_completed: done,
        }
    }

    /// The update rules of TiKV's cache: `min_commit_ts` only rises, a
    /// decided state is final, completion leaves only the normal part.
    #[test]
    fn updates_follow_tikv() {
        let mut c = TxnStatusCache::default();
        assert_eq!(c.resolved_ts_bound(10), Some(9), "not cached: the start ts");
        c.apply(&status(10, 20, 0, false, false));
        assert_eq!(c.get(10), Some(CachedTxnState::Ongoing { min_commit_ts: 20 }));
        c.apply(&status(10, 15, 0, false, false));
        assert_eq!(c.get(10), Some(CachedTxnState::Ongoing { min_commit_ts: 20 }), "never lowered");
        assert_eq!(c.resolved_ts_bound(10), Some(19));
        c.apply(&status(10, 20, 30, false, false));
        assert_eq!(c.get(10), Some(CachedTxnState::Committed { commit_ts: 30 }));
        assert_eq!(c.resolved_ts_bound(10), None);
        c.apply(&status(10, 40, 0, false, false));
        assert_eq!(c.get(10), Some(CachedTxnState::Committed { commit_ts: 30 }), "final");
        c.apply(&status(10, 0, 30, false, true));
        assert!(c.large.is_empty(), "completed: out of the large part");
        assert_eq!(c.get(10), Some(CachedTxnState::Committed { commit_ts: 30 }));

        c.apply(&status(50, 0, 0, true, false));
        assert_eq!(c.get(50), Some(CachedTxnState::RolledBack));
        assert_eq!(c.resolved_ts_bound(50), None);
    }
}
