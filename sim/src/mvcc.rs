//! MVCC storage for transactional data: TiKV's three column families and the
//! reads and writes every transactional command is built from.
//!
//! - lock CF: at most one lock per key (`txn_types::Lock`), or the shared
//!   pessimistic locks of several transactions on it
//!   (`txn_types::SharedLocks`: one sub-lock per holder, pessimistic until
//!   the holder prewrites it as a `Lock`, and a shrink-only flag set when
//!   an exclusive request meets them, after which no new holder joins).
//!   The model keeps the two kinds in two maps; a key is in at most one.
//!   Reads ignore shared locks, as `check_ts_conflict` does.
//! - write CF: per key, records by commit ts (`txn_types::Write`): Put,
//!   Delete, Lock and Rollback (a rollback is stored at `commit_ts ==
//!   start_ts`, as TiKV does, so a late prewrite finds it).
//! - default CF: values by `(key, start_ts)`.
//!
//! Keys are stored in region key space: the request key (in API V2 with its
//! `x` + keyspace prefix) memcomparable-encoded, TiKV's `Key::from_raw`, so
//! txn keys compare against region boundaries exactly as in TiKV. Each entry
//! also keeps the request key to answer with.
//!
//! The readers follow TiKV's `PointGetter` (`src/storage/mvcc/reader/point_getter.rs`),
//! `Lock::check_ts_conflict` (`components/txn_types/src/lock.rs`) and
//! `MvccReader::get_txn_commit_record`.

use std::collections::BTreeMap;

use bytes::Bytes;
use tikv_core::key::memcomparable;
use tikv_proto::kvrpcpb;

/// Bits of a TSO timestamp below the physical part.
const LOGICAL_BITS: u32 = 18;

/// The physical part (milliseconds) of a TSO timestamp (`TimeStamp::physical`).
pub(crate) fn physical(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// A TSO timestamp with the given physical milliseconds and logical 0.
pub(crate) fn compose_ts(physical_ms: u64) -> u64 {
    physical_ms << LOGICAL_BITS
}

/// Request key → region key space for txn data (`Key::from_raw`).
pub(crate) fn txn_key(key: &[u8]) -> Vec<u8> {
    memcomparable::encode_bytes(key)
}

/// The kind of a lock (`txn_types::LockType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockType {
    Put,
    Delete,
    Lock,
    Pessimistic,
}

impl LockType {
    /// `LockType::into` the wire `Op` used in `LockInfo.lock_type`.
    fn op(self) -> kvrpcpb::Op {
        match self {
            LockType::Put => kvrpcpb::Op::Put,
            LockType::Delete => kvrpcpb::Op::Del,
            LockType::Lock => kvrpcpb::Op::Lock,
            LockType::Pessimistic => kvrpcpb::Op::PessimisticLock,
        }
    }
}

/// One lock-CF entry (`txn_types::Lock`), with the request key it locks.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Lock {
    pub(crate) user_key: Bytes,
    pub(crate) lock_type: LockType,
    pub(crate) primary: Bytes,
    pub(crate) ts: u64,
    pub(crate) ttl: u64,
    pub(crate) for_update_ts: u64,
    pub(crate) txn_size: u64,
    pub(crate) min_commit_ts: u64,
    pub(crate) use_async_commit: bool,
    pub(crate) secondaries: Vec<Bytes>,
    /// The flush generation of a pipelined transaction's lock (0 for every
    /// other lock): a flush of an older generation leaves it alone.
    pub(crate) generation: u64,
}

impl Lock {
    /// `Lock::into_lock_info`.
    pub(crate) fn info(&self) -> kvrpcpb::LockInfo {
        kvrpcpb::LockInfo {
            primary_lock: self.primary.clone(),
            lock_version: self.ts,
            key: self.user_key.clone(),
            lock_ttl: self.ttl,
            txn_size: self.txn_size,
            lock_type: self.lock_type.op() as i32,
            lock_for_update_ts: self.for_update_ts,
            use_async_commit: self.use_async_commit,
            min_commit_ts: self.min_commit_ts,
            secondaries: self.secondaries.clone(),
            ..Default::default()
        }
    }

    /// `Lock::check_ts_conflict` under snapshot isolation (`bypass_locks` =
    /// the context's `resolved_locks`): does this lock block a read at `ts`?
    pub(crate) fn blocks_read(&self, ts: u64, bypass: &[u64]) -> bool {
        if self.ts > ts || matches!(self.lock_type, LockType::Lock | LockType::Pessimistic) {
            return false;
        }
        // A pushed min_commit_ts means the txn will commit after `ts`.
        if self.min_commit_ts > ts {
            return false;
        }
        if bypass.contains(&self.ts) {
            return false;
        }
        // A max-ts point read of the primary of a non-async-commit txn reads
        // the latest committed version and ignores the lock.
        !(ts == u64::MAX && self.user_key == self.primary && !self.use_async_commit)
    }
}

/// The shared pessimistic locks on one key (`txn_types::SharedLocks`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SharedLocks {
    pub(crate) user_key: Bytes,
    /// No new holder may join (`SharedLocksFlags::SHRINK_ONLY`): set when an
    /// exclusive lock request meets the key, so that it is not starved.
    pub(crate) shrink_only: bool,
    /// start ts → that holder's sub-lock (`Pessimistic`, or `Lock` once
    /// prewritten with `Op::SharedLock`).
    pub(crate) holders: BTreeMap<u64, Lock>,
}

/// A deliberate break of the shared-lock rules, for proving the simulation
/// world's checkers can fail (never set outside those tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedLockFlaw {
    /// A share request is granted over another transaction's exclusive lock.
    ShareOverExclusive,
    /// An exclusive request is granted over other transactions' shares.
    ExclusiveOverShares,
    /// A holder's commit writes its `Lock` record but leaves its sub-lock
    /// (until the commit is applied again, by a resolver that meets it).
    CommitKeepsShare,
}

/// One shared-locked key as a checker sees it ([`crate::Cluster::shared_locked_keys`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedKeyLocks {
    /// The txn request key.
    pub key: Vec<u8>,
    /// The start ts of every holder of a share.
    pub holders: Vec<u64>,
    /// The start ts of the exclusive lock on the key too, if any (TiKV
    /// never lets one coexist with shares).
    pub exclusive: Option<u64>,
    /// Holders whose commit or rollback record of this key is written,
    /// yet whose share is still there (TiKV removes the share first).
    pub settled: Vec<u64>,
}

impl SharedLocks {
    /// `SharedLocks::into_lock_info`: lock type `SharedLock`, the key, and
    /// one `LockInfo` per holder in `shared_lock_infos` (nothing else set).
    pub(crate) fn info(&self) -> kvrpcpb::LockInfo {
        self.info_of(self.holders.values())
    }

    /// The same answer carrying only the given holders (`ScanLock` filters
    /// sub-locks by ts and truncates them to its limit).
    pub(crate) fn info_of<'a>(&self, holders: impl Iterator<Item = &'a Lock>) -> kvrpcpb::LockInfo {
        kvrpcpb::LockInfo {
            key: self.user_key.clone(),
            lock_type: kvrpcpb::Op::SharedLock as i32,
            shared_lock_infos: holders.map(Lock::info).collect(),
            ..Default::default()
        }
    }
}

/// The kind of a write-CF record (`txn_types::WriteType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A committed value.
    Put,
    /// A committed deletion.
    Delete,
    /// A committed lock-only mutation (no data change).
    Lock,
    /// A rollback marker, stored at `commit_ts == start_ts`.
    Rollback,
}

/// One write-CF record as test helpers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    /// What the record says.
    pub kind: WriteKind,
    /// The transaction's start ts.
    pub start_ts: u64,
    /// The ts the record is stored at (its commit ts; `start_ts` for rollbacks).
    pub commit_ts: u64,
    /// TiKV's `has_overlapped_rollback`: another transaction's rollback at
    /// this ts was folded into this record.
    pub overlapped_rollback: bool,
}

/// One write-CF record (`txn_types::Write`, without short values or GC fences).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Write {
    pub(crate) kind: WriteKind,
    pub(crate) start_ts: u64,
    pub(crate) overlapped_rollback: bool,
}

/// The write-CF records of one key.
#[derive(Clone, Debug, Default)]
pub(crate) struct Versions {
    pub(crate) user_key: Bytes,
    /// commit ts → record.
    pub(crate) by_commit: BTreeMap<u64, Write>,
}

/// What the write CF says about one transaction on one key
/// (`TxnCommitRecord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxnRecord {
    /// A record of this transaction (committed, or a rollback).
    Single { commit_ts: u64, write: Write },
    /// Another transaction's record at `commit_ts == start_ts` carries this
    /// transaction's rollback.
    OverlappedRollback,
    /// Nothing; `overlapped` says another transaction's record sits at
    /// `commit_ts == start_ts` (a rollback must be folded into it).
    None { overlapped: bool },
}

/// The three column families plus the concurrency manager's `max_ts`.
#[derive(Clone, Debug, Default)]
pub(crate) struct MvccStore {
    pub(crate) locks: BTreeMap<Vec<u8>, Lock>,
    /// Keys locked in share mode (never also in `locks`).
    pub(crate) shared: BTreeMap<Vec<u8>, SharedLocks>,
    /// The transaction (start ts, commit ts or 0) whose share release
    /// unlocked a key, for the lock waiters' wake-up (TiKV's
    /// `ReleasedLock` of the last `unlock_key`); taken by the wake-up.
    pub(crate) shared_released: BTreeMap<Vec<u8>, (u64, u64)>,
    pub(crate) writes: BTreeMap<Vec<u8>, Versions>,
    pub(crate) values: BTreeMap<Vec<u8>, BTreeMap<u64, Bytes>>,
    /// `ConcurrencyManager::max_ts`: the largest ts any read has used.
    pub(crate) max_ts: u64,
    /// A deliberately broken shared-lock rule (checker tests only).
    pub(crate) shared_lock_flaw: Option<SharedLockFlaw>,
}

impl MvccStore {
    /// `ConcurrencyManager::update_max_ts`: `u64::MAX` (read latest) is ignored.
    pub(crate) fn update_max_ts(&mut self, ts: u64) {
        if ts != u64::MAX && ts > self.max_ts {
            self.max_ts = ts;
        }
    }

    /// The newest write record of a key (`seek_write(key, MAX)`).
    pub(crate) fn latest_write(&self, key: &[u8]) -> Option<(u64, Write)> {
        self.writes.get(key)?.by_commit.iter().next_back().map(|(c, w)| (*c, *w))
    }

    /// The newest Put/Delete record with `commit_ts <= ts`, skipping Lock and
    /// Rollback records (`PointGetter::load_data`).
    pub(crate) fn data_write(&self, key: &[u8], ts: u64) -> Option<(u64, Write)> {
        let versions = self.writes.get(key)?;
        versions
            .by_commit
            .range(..=ts)
            .rev()
            .find(|(_, w)| matches!(w.kind, WriteKind::Put | WriteKind::Delete))
            .map(|(c, w)| (*c, *w))
    }

    /// The committed value visible at `ts` and its commit ts.
    pub(crate) fn committed_value(&self, key: &[u8], ts: u64) -> Option<(Bytes, u64)> {
        let (commit_ts, w) = self.data_write(key, ts)?;
        if w.kind != WriteKind::Put {
            return None;
        }
        let value = self.values.get(key).and_then(|v| v.get(&w.start_ts)).cloned()?;
        Some((value, commit_ts))
    }

    /// The value a transaction wrote at `start_ts` (default CF).
    pub(crate) fn value_of(&self, key: &[u8], start_ts: u64) -> Option<Bytes> {
        self.values.get(key).and_then(|v| v.get(&start_ts)).cloned()
    }

    /// `MvccReader::get_txn_commit_record`: walks the key's records from the
    /// newest down to `commit_ts == start_ts` looking for this transaction.
    pub(crate) fn txn_record(&self, key: &[u8], start_ts: u64) -> TxnRecord {
        let Some(versions) = self.writes.get(key) else {
            return TxnRecord::None { overlapped: false };
        };
        for (&commit_ts, w) in versions.by_commit.range(start_ts..).rev() {
            if w.start_ts == start_ts {
                return TxnRecord::Single { commit_ts, write: *w };
            }
            if commit_ts == start_ts {
                return if w.overlapped_rollback {
                    TxnRecord::OverlappedRollback
                } else {
                    TxnRecord::None { overlapped: true }
                };
            }
        }
        TxnRecord::None { overlapped: false }
    }

    pub(crate) fn put_write(&mut self, key: &[u8], user_key: &Bytes, commit_ts: u64, w: Write) {
        let versions = self.writes.entry(key.to_vec()).or_default();
        versions.user_key = user_key.clone();
        versions.by_commit.insert(commit_ts, w);
    }

    /// Writes this transaction's rollback record for a key: a Rollback at
    /// `commit_ts == start_ts`, or, when another transaction committed at
    /// exactly that ts, the `has_overlapped_rollback` flag on its record
    /// (`make_rollback` with an overlapped write). All rollbacks are kept
    /// (protected); none are collapsed.
    pub(crate) fn write_rollback(&mut self, key: &[u8], user_key: &Bytes, start_ts: u64) {
        if let Some(w) = self.writes.get_mut(key).and_then(|v| v.by_commit.get_mut(&start_ts)) {
            if w.start_ts != start_ts {
                w.overlapped_rollback = true;
            }
            return;
        }
        let w = Write { kind: WriteKind::Rollback, start_ts, overlapped_rollback: false };
        self.put_write(key, user_key, start_ts, w);
    }

    /// `rollback_lock`: drops the lock and its value and leaves a rollback
    /// record (unless the key already has a record of this transaction).
    pub(crate) fn rollback_lock(&mut self, key: &[u8], lock: &Lock) {
        if let TxnRecord::None { .. } = self.txn_record(key, lock.ts) {
            if let Some(v) = self.values.get_mut(key).filter(|_| lock.lock_type == LockType::Put) {
                v.remove(&lock.ts);
            }
            self.write_rollback(key, &lock.user_key, lock.ts);
        }
        self.locks.remove(key);
    }

    /// `actions::commit`: turns this transaction's lock into a commit record.
    pub(crate) fn commit(
        &mut self,
        key: &[u8],
        user_key: &Bytes,
        start_ts: u64,
        commit_ts: u64,
    ) -> Result<(), Box<kvrpcpb::KeyError>> {
        match self.locks.get(key) {
            Some(lock) if lock.ts == start_ts => {
                if commit_ts < lock.min_commit_ts {
                    return Err(Box::new(kvrpcpb::KeyError {
                        commit_ts_expired: Some(kvrpcpb::CommitTsExpired {
                            start_ts,
                            attempted_commit_ts: commit_ts,
                            key: user_key.clone(),
                            min_commit_ts: lock.min_commit_ts,
                        }),
                        ..Default::default()
                    }));
                }
                // A leftover pessimistic lock is committed as a Lock record.
                let kind = match lock.lock_type {
                    LockType::Put => WriteKind::Put,
                    LockType::Delete => WriteKind::Delete,
                    LockType::Lock | LockType::Pessimistic => WriteKind::Lock,
                };
                // Another transaction's rollback at this ts is kept as the flag.
                let overlapped = self
                    .writes
                    .get(key)
                    .and_then(|v| v.by_commit.get(&commit_ts))
                    .is_some_and(|w| w.kind == WriteKind::Rollback || w.overlapped_rollback);
                let user_key = lock.user_key.clone();
                self.locks.remove(key);
                let w = Write { kind, start_ts, overlapped_rollback: overlapped };
                self.put_write(key, &user_key, commit_ts, w);
                Ok(())
            }
            _ if self.shared.get(key).is_some_and(|s| s.holders.contains_key(&start_ts)) => {
                self.commit_share(key, start_ts, commit_ts)
            }
            _ => match self.txn_record(key, start_ts) {
                TxnRecord::Single { write, .. } if write.kind != WriteKind::Rollback => Ok(()),
                _ => Err(Box::new(kvrpcpb::KeyError {
                    retryable: format!(
                        "TxnLockNotFound {{ start_ts: {start_ts}, commit_ts: {commit_ts}, key: {} }}",
                        crate::cluster::hex(user_key)
                    ),
                    txn_lock_not_found: Some(kvrpcpb::TxnLockNotFound { key: user_key.clone() }),
                    ..Default::default()
                })),
            },
        }
    }

    /// `actions::commit` on a shared-locked key: this transaction's sub-lock
    /// leaves the shared locks and becomes a `Lock` record at `commit_ts`;
    /// a sub-lock never prewritten is dropped without a record (TiKV's
    /// stale pessimistic lock case). The other holders stay.
    fn commit_share(
        &mut self,
        key: &[u8],
        start_ts: u64,
        commit_ts: u64,
    ) -> Result<(), Box<kvrpcpb::KeyError>> {
        let Some(lock) = self.shared.get(key).and_then(|s| s.holders.get(&start_ts)) else {
            return Ok(());
        };
        if commit_ts < lock.min_commit_ts {
            return Err(Box::new(kvrpcpb::KeyError {
                commit_ts_expired: Some(kvrpcpb::CommitTsExpired {
                    start_ts,
                    attempted_commit_ts: commit_ts,
                    key: lock.user_key.clone(),
                    min_commit_ts: lock.min_commit_ts,
                }),
                ..Default::default()
            }));
        }
        let kept = self.shared_lock_flaw == Some(SharedLockFlaw::CommitKeepsShare)
            && lock.lock_type != LockType::Pessimistic
            && matches!(self.txn_record(key, start_ts), TxnRecord::None { .. });
        let lock = if kept {
            lock.clone()
        } else {
            let Some(lock) = self.remove_share(key, start_ts, commit_ts) else { return Ok(()) };
            lock
        };
        if lock.lock_type != LockType::Pessimistic {
            let overlapped = self
                .writes
                .get(key)
                .and_then(|v| v.by_commit.get(&commit_ts))
                .is_some_and(|w| w.kind == WriteKind::Rollback || w.overlapped_rollback);
            let w = Write { kind: WriteKind::Lock, start_ts, overlapped_rollback: overlapped };
            self.put_write(key, &lock.user_key, commit_ts, w);
        }
        Ok(())
    }

    /// Takes one holder's sub-lock out of a key's shared locks; the key is
    /// unlocked when the last one leaves (`commit_ts` 0 for a rollback).
    pub(crate) fn remove_share(
        &mut self,
        key: &[u8],
        start_ts: u64,
        commit_ts: u64,
    ) -> Option<Lock> {
        let shared = self.shared.get_mut(key)?;
        let lock = shared.holders.remove(&start_ts)?;
        if shared.holders.is_empty() {
            self.shared.remove(key);
            self.shared_released.insert(key.to_vec(), (start_ts, commit_ts));
        }
        Some(lock)
    }

    /// `rollback_shared_lock`: drops this transaction's sub-lock and leaves
    /// a rollback record unless the key has a record of it already.
    pub(crate) fn rollback_share(&mut self, key: &[u8], start_ts: u64) {
        if let Some(lock) = self.remove_share(key, start_ts, 0)
            && let TxnRecord::None { .. } = self.txn_record(key, start_ts)
        {
            self.write_rollback(key, &lock.user_key, start_ts);
        }
    }

    /// A snapshot-isolation point read at `ts` (`PointGetter::get`), with the
    /// context's `resolved_locks` (`bypass`) and `committed_locks` (`access`).
    /// Returns the value and its commit ts.
    pub(crate) fn get(
        &self,
        key: &[u8],
        ts: u64,
        check_locks: bool,
        bypass: &[u64],
        access: &[u64],
    ) -> Result<Option<(Bytes, u64)>, Box<kvrpcpb::KeyError>> {
        if let Some(lock) = self.locks.get(key).filter(|l| check_locks && l.blocks_read(ts, bypass))
        {
            // `access_locks`: the lock's txn is known committed (below our
            // ts), so read what it wrote, as `load_data_from_lock` does.
            if access.contains(&lock.ts) {
                return Ok(match lock.lock_type {
                    LockType::Put => self.value_of(key, lock.ts).map(|v| (v, 0)),
                    _ => None,
                });
            }
            return Err(Box::new(kvrpcpb::KeyError {
                locked: Some(lock.info()),
                ..Default::default()
            }));
        }
        Ok(self.committed_value(key, ts))
    }
}

/// Test and checker helpers over the transactional data.
impl crate::Cluster {
    /// A TSO-domain timestamp for model time `now` (physical = the TSO
    /// clock at `now`, logical 0): what a `current_ts` from PD at that
    /// instant looks like, for `CheckTxnStatus` and `Cleanup`.
    pub fn current_ts(&self, now: tikv_core::time::Instant) -> u64 {
        let base = self.lock().cfg.tso_base_ms;
        compose_ts(base.saturating_add(now.as_nanos() / 1_000_000))
    }

    /// Maps a txn request key (in API V2 with its `x` prefix) into region key
    /// space: memcomparable-encoded (`Key::from_raw`).
    pub fn txn_region_key(&self, key: &[u8]) -> Vec<u8> {
        txn_key(key)
    }

    /// Committed values visible at `read_ts`, keyed by request key; locks
    /// are ignored (a checker's view of what is committed).
    pub fn mvcc_snapshot(&self, read_ts: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let st = self.lock();
        st.mvcc
            .writes
            .iter()
            .filter_map(|(key, versions)| {
                let (value, _) = st.mvcc.committed_value(key, read_ts)?;
                Some((versions.user_key.to_vec(), value.to_vec()))
            })
            .collect()
    }

    /// Every lock in the cluster, in key order, as `LockInfo` (a key's
    /// shared locks as one `SharedLock` info with its holders).
    pub fn locks(&self) -> Vec<kvrpcpb::LockInfo> {
        let st = self.lock();
        let exclusive = st.mvcc.locks.iter().map(|(k, l)| (k, l.info()));
        let shared = st.mvcc.shared.iter().map(|(k, s)| (k, s.info()));
        let mut all: Vec<_> = exclusive.chain(shared).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, info)| info).collect()
    }

    /// How many keys hold a lock (exclusive or shared) in the cluster: what
    /// [`locks`](Self::locks) would list, without building it.
    pub fn lock_count(&self) -> usize {
        let st = self.lock();
        st.mvcc.locks.len() + st.mvcc.shared.len()
    }

    /// Every key locked in share mode, with its holders, any exclusive lock
    /// beside them and the holders already settled on it, in key order: a
    /// checker's view of the shared-lock rules (cheap: only shared keys).
    pub fn shared_locked_keys(&self) -> Vec<SharedKeyLocks> {
        let st = self.lock();
        st.mvcc
            .shared
            .iter()
            .map(|(key, shared)| {
                let settled = shared
                    .holders
                    .keys()
                    .copied()
                    .filter(|&ts| !matches!(st.mvcc.txn_record(key, ts), TxnRecord::None { .. }))
                    .collect();
                SharedKeyLocks {
                    key: shared.user_key.to_vec(),
                    holders: shared.holders.keys().copied().collect(),
                    exclusive: st.mvcc.locks.get(key).map(|l| l.ts),
                    settled,
                }
            })
            .collect()
    }

    /// Breaks one shared-lock rule on purpose, so a checker test can show
    /// the checker notices.
    pub fn break_shared_locks(&self, flaw: SharedLockFlaw) {
        self.lock().mvcc.shared_lock_flaw = Some(flaw);
    }

    /// The write-CF record of transaction `start_ts` on the txn request key
    /// `key`: its commit record, or its rollback; `None` if there is none.
    pub fn commit_record(&self, key: &[u8], start_ts: u64) -> Option<CommitRecord> {
        let st = self.lock();
        match st.mvcc.txn_record(&txn_key(key), start_ts) {
            TxnRecord::Single { commit_ts, write } => Some(CommitRecord {
                kind: write.kind,
                start_ts,
                commit_ts,
                overlapped_rollback: write.overlapped_rollback,
            }),
            TxnRecord::OverlappedRollback => Some(CommitRecord {
                kind: WriteKind::Rollback,
                start_ts,
                commit_ts: start_ts,
                overlapped_rollback: true,
            }),
            TxnRecord::None { .. } => None,
        }
    }

    /// The concurrency manager's `max_ts` (shared by all stores in the model).
    pub fn max_ts(&self) -> u64 {
        self.lock().mvcc.max_ts
    }
}
