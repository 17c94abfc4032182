//! Transactional commands over [`crate::mvcc::MvccStore`], following TiKV's
//! `src/storage/txn/commands/` and `src/storage/txn/actions/` (each function
//! names the one it follows) and the response shaping of
//! `src/server/service/kv.rs` (`extract_key_error`).
//!
//! Order of checks per command: API version and key mode, then the
//! raftstore checks (`State::check_region`), then every key against the
//! region (`KeyNotInRegion`), then the command. A command that fails with an
//! error other than `KeyIsLocked` leaves no trace (TiKV drops the whole write
//! batch); the model undoes its partial writes with [`Undo`].

use std::collections::BTreeSet;

use bytes::Bytes;
use tikv_proto::{errorpb, kvrpcpb, metapb};

use crate::cluster::{State, check_key_in_region, check_key_seekable, hex};
use crate::mvcc::{
    Lock, LockType, MvccStore, SharedLockFlaw, SharedLocks, TxnRecord, Versions, Write, WriteKind,
    physical, txn_key,
};

/// Why a transactional command did not run (or stopped).
#[derive(Debug)]
pub(crate) enum Fail {
    /// Goes to `region_error`.
    Region(Box<errorpb::Error>),
    /// Goes to the response's key error(s).
    Key(Box<kvrpcpb::KeyError>),
}

impl From<Box<errorpb::Error>> for Fail {
    fn from(e: Box<errorpb::Error>) -> Fail {
        Fail::Region(e)
    }
}

impl From<Box<kvrpcpb::KeyError>> for Fail {
    fn from(e: Box<kvrpcpb::KeyError>) -> Fail {
        Fail::Key(e)
    }
}

impl From<kvrpcpb::KeyError> for Fail {
    fn from(e: kvrpcpb::KeyError) -> Fail {
        Fail::Key(Box::new(e))
    }
}

/// A key error carrying only a message (`extract_key_error`'s fallback).
fn abort(msg: String) -> Fail {
    Fail::Key(Box::new(kvrpcpb::KeyError { abort: msg, ..Default::default() }))
}

fn locked(lock: &Lock) -> kvrpcpb::KeyError {
    locked_info(lock.info())
}

fn locked_info(info: kvrpcpb::LockInfo) -> kvrpcpb::KeyError {
    kvrpcpb::KeyError { locked: Some(info), ..Default::default() }
}

/// The `WriteConflict` key error of a pessimistic lock request (reason
/// `PessimisticRetry`): a newer commit than its `for_update_ts`, or the
/// release of a lock it waited for (`conflict_commit_ts` 0 for a rollback).
pub(crate) fn pessimistic_retry(
    r: &kvrpcpb::PessimisticLockRequest,
    key: &[u8],
    conflict_start_ts: u64,
    conflict_commit_ts: u64,
) -> kvrpcpb::KeyError {
    let start_ts = r.start_version;
    kvrpcpb::KeyError {
        retryable: format!(
            "WriteConflict {{ start_ts: {start_ts}, conflict_start_ts: {conflict_start_ts}, conflict_commit_ts: {conflict_commit_ts}, key: {} }}",
            hex(key)
        ),
        conflict: Some(kvrpcpb::WriteConflict {
            start_ts,
            conflict_ts: conflict_start_ts,
            key: Bytes::copy_from_slice(key),
            primary: r.primary_lock.clone(),
            conflict_commit_ts,
            reason: kvrpcpb::write_conflict::Reason::PessimisticRetry as i32,
        }),
        ..Default::default()
    }
}

/// The lock a prewritten or flushed mutation writes (`None` for
/// `CheckNotExists`, which writes nothing) and whether the key must not
/// exist (`PrewriteMutation::from_mutation`); other ops abort `cmd`.
fn mutation_lock(m: &kvrpcpb::Mutation, cmd: &str) -> Result<(Option<LockType>, bool), Fail> {
    Ok(match kvrpcpb::Op::try_from(m.op).ok() {
        Some(kvrpcpb::Op::Put) => (Some(LockType::Put), false),
        Some(kvrpcpb::Op::Del) => (Some(LockType::Delete), false),
        // A shared pessimistic lock prewritten: its sub-lock becomes a Lock.
        Some(kvrpcpb::Op::Lock | kvrpcpb::Op::SharedLock) => (Some(LockType::Lock), false),
        Some(kvrpcpb::Op::Insert) => (Some(LockType::Put), true),
        Some(kvrpcpb::Op::CheckNotExists) => (None, true),
        _ => return Err(abort(format!("mismatch Op in {cmd} mutations: {}", m.op))),
    })
}

fn txn_not_found(start_ts: u64, key: &Bytes) -> kvrpcpb::KeyError {
    kvrpcpb::KeyError {
        txn_not_found: Some(kvrpcpb::TxnNotFound { start_ts, primary_key: key.clone() }),
        ..Default::default()
    }
}

fn pessimistic_lock_not_found(start_ts: u64, key: &[u8]) -> Fail {
    abort(format!("PessimisticLockNotFound {{ start_ts: {start_ts}, key: {} }}", hex(key)))
}

fn api_name(v: kvrpcpb::ApiVersion) -> &'static str {
    match v {
        kvrpcpb::ApiVersion::V1 => "V1",
        kvrpcpb::ApiVersion::V1ttl => "V1ttl",
        kvrpcpb::ApiVersion::V2 => "V2",
        kvrpcpb::ApiVersion::V3 => "V3",
    }
}

/// Puts a command result into a response with a single `error` field.
macro_rules! fill_one {
    ($resp:ident, $res:expr, |$ok:pat_param| $on_ok:expr) => {
        match $res {
            Ok($ok) => $on_ok,
            Err(Fail::Region(e)) => $resp.region_error = Some(*e),
            Err(Fail::Key(e)) => $resp.error = Some(*e),
        }
    };
}

/// Saved per-key state of the three column families, restored when a
/// command fails half-way.
#[derive(Default)]
pub(crate) struct Undo {
    #[allow(clippy::type_complexity)]
    saved: Vec<(
        Vec<u8>,
        Option<Lock>,
        Option<SharedLocks>,
        Option<Versions>,
        Option<std::collections::BTreeMap<u64, Bytes>>,
    )>,
}

impl Undo {
    /// Remembers `key` as it is now (call before touching it).
    fn save(&mut self, store: &MvccStore, key: &[u8]) {
        self.saved.push((
            key.to_vec(),
            store.locks.get(key).cloned(),
            store.shared.get(key).cloned(),
            store.writes.get(key).cloned(),
            store.values.get(key).cloned(),
        ));
    }

    /// Restores every saved key, newest save first.
    fn restore(self, store: &mut MvccStore) {
        for (key, lock, shared, writes, values) in self.saved.into_iter().rev() {
            match lock {
                Some(l) => store.locks.insert(key.clone(), l),
                None => store.locks.remove(&key),
            };
            match shared {
                Some(s) => store.shared.insert(key.clone(), s),
                None => {
                    store.shared_released.remove(&key);
                    store.shared.remove(&key)
                }
            };
            match writes {
                Some(w) => store.writes.insert(key.clone(), w),
                None => store.writes.remove(&key),
            };
            match values {
                Some(v) => store.values.insert(key, v),
                None => store.values.remove(&key),
            };
        }
    }
}

/// Which one-round commit protocols a prewrite still asks for (TiKV may
/// decline either): what a retried prewrite of a committed transaction
/// reports its commit ts as.
#[derive(Clone, Copy, Debug)]
struct CommitProtocols {
    async_commit: bool,
    one_pc: bool,
}

/// What a prewrite did (TiKV's `PrewriteResult`).
pub(crate) struct Prewritten {
    /// `KeyIsLocked` errors (nothing is written then).
    locked: Vec<kvrpcpb::KeyError>,
    /// The async-commit `min_commit_ts` (0 when not async commit).
    min_commit_ts: u64,
    /// The 1PC commit ts (0 when not committed by 1PC).
    one_pc_commit_ts: u64,
    /// A retry of a committed transaction: what it wrote is discarded.
    discard: bool,
}

/// What `cleanup` found when the key is not locked by the transaction.
enum CleanupErr {
    Committed(u64),
    Key(Box<kvrpcpb::KeyError>),
}

/// `TxnStatus` as `check_txn_status` reports it.
enum TxnStatus {
    RolledBack,
    TtlExpire,
    LockNotExist,
    Committed(u64),
    Uncommitted(Box<Lock>, bool),
    PessimisticRollBack,
    LockNotExistDoNothing,
}

/// The context's read options: isolation level, `resolved_locks`, `committed_locks`.
struct ReadOpts {
    check_locks: bool,
    bypass: Vec<u64>,
    access: Vec<u64>,
}

impl ReadOpts {
    fn from(ctx: &Option<kvrpcpb::Context>) -> ReadOpts {
        let ctx = ctx.clone().unwrap_or_default();
        // RC reads ignore locks (`check_ts_conflict` returns early for
        // `IsolationLevel::Rc`); RCCheckTS is treated as RC.
        let check_locks = ctx.isolation_level == kvrpcpb::IsolationLevel::Si as i32;
        ReadOpts { check_locks, bypass: ctx.resolved_locks, access: ctx.committed_locks }
    }
}

impl State {
    /// `Storage::check_api_version` for txn commands: the request must speak
    /// the storage's API version and, in V2, every key must be in txn mode
    /// (`x` prefix).
    fn txn_api<'a>(
        &self,
        cmd: &str,
        ctx: &Option<kvrpcpb::Context>,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), Fail> {
        let v = ctx.as_ref().map_or(0, |c| c.api_version);
        let req = kvrpcpb::ApiVersion::try_from(v).unwrap_or(kvrpcpb::ApiVersion::V1);
        let storage = self.storage_api();
        match (storage, req) {
            (kvrpcpb::ApiVersion::V1, kvrpcpb::ApiVersion::V1) => Ok(()),
            (kvrpcpb::ApiVersion::V2, kvrpcpb::ApiVersion::V2) => {
                for key in keys {
                    if key.first() != Some(&b'x') {
                        return Err(abort(format!(
                            "Key mode mismatched with the request mode, cmd: {cmd}, storage: V2, key: {}",
                            hex(key)
                        )));
                    }
                }
                Ok(())
            }
            _ => Err(abort(format!(
                "Api version in request does not match with TiKV storage, cmd: {cmd}, storage: {}, request: {}",
                api_name(storage),
                api_name(req)
            ))),
        }
    }

    /// API check, then raftstore's checks; returns the region.
    pub(crate) fn txn_region<'a>(
        &self,
        store: u64,
        cmd: &str,
        ctx: &Option<kvrpcpb::Context>,
        keys: impl IntoIterator<Item = &'a [u8]>,
        read_only: bool,
    ) -> Result<metapb::Region, Fail> {
        self.txn_api(cmd, ctx, keys)?;
        Ok(self.check_region(store, ctx.as_ref(), read_only)?)
    }

    /// `cleanup` (`actions/cleanup.rs`): rolls back this transaction's lock,
    /// or, with no lock, leaves a rollback record unless the key is committed.
    /// A nonzero `current_ts` refuses to roll back a live lock.
    fn cleanup(
        &mut self,
        key: &[u8],
        user_key: &Bytes,
        start_ts: u64,
        current_ts: u64,
    ) -> Result<(), CleanupErr> {
        match self.mvcc.locks.get(key).cloned() {
            Some(lock) if lock.ts == start_ts => {
                if current_ts != 0
                    && physical(lock.ts).saturating_add(lock.ttl) >= physical(current_ts)
                {
                    return Err(CleanupErr::Key(Box::new(locked(&lock))));
                }
                self.mvcc.rollback_lock(key, &lock);
                Ok(())
            }
            // This transaction's share of a shared-locked key (`cleanup`'s
            // `rollback_shared_lock`), refused while it lives.
            None if let Some((expiry, info)) = self.share_of(key, start_ts) => {
                if current_ts != 0 && expiry >= physical(current_ts) {
                    return Err(CleanupErr::Key(Box::new(locked_info(info))));
                }
                self.mvcc.rollback_share(key, start_ts);
                Ok(())
            }
            _ => match self.mvcc.txn_record(key, start_ts) {
                TxnRecord::Single { commit_ts, write } if write.kind != WriteKind::Rollback => {
                    Err(CleanupErr::Committed(commit_ts))
                }
                TxnRecord::Single { .. } | TxnRecord::OverlappedRollback => Ok(()),
                TxnRecord::None { .. } => {
                    self.mvcc.write_rollback(key, user_key, start_ts);
                    Ok(())
                }
            },
        }
    }

    /// This transaction's share of a shared-locked key: when it expires
    /// (physical ms) and the key's `SharedLock` info.
    fn share_of(&self, key: &[u8], start_ts: u64) -> Option<(u64, kvrpcpb::LockInfo)> {
        let shared = self.mvcc.shared.get(key)?;
        let lock = shared.holders.get(&start_ts)?;
        Some((physical(lock.ts).saturating_add(lock.ttl), shared.info()))
    }

    fn committed_error(start_ts: u64, commit_ts: u64, key: &[u8]) -> Fail {
        abort(format!(
            "Committed {{ start_ts: {start_ts}, commit_ts: {commit_ts}, key: {} }}",
            hex(key)
        ))
    }

    /// TiKV's `prepare_snap_ctx`: a snapshot read at `read_ts` pushes
    /// `max_ts` to it (no later async-commit or 1PC commit lands at or
    /// below it), except a stale read, which is below the safe ts and so
    /// below `max_ts` already (served by a leader above its safe ts, TiKV
    /// skips the push all the same).
    fn push_max_ts_for_read(&mut self, ctx: &Option<kvrpcpb::Context>, read_ts: u64) {
        if !ctx.as_ref().is_some_and(|c| c.stale_read) {
            self.mvcc.update_max_ts(read_ts);
        }
    }

    pub(crate) fn kv_get(&mut self, store: u64, r: kvrpcpb::GetRequest) -> kvrpcpb::GetResponse {
        let mut resp = kvrpcpb::GetResponse::default();
        let res = (|| {
            let region = self.txn_region(store, "get", &r.context, [&r.key[..]], true)?;
            let key = txn_key(&r.key);
            check_key_in_region(&key, &region)?;
            // Every snapshot read but a stale one pushes max_ts
            // (`prepare_snap_ctx`).
            self.push_max_ts_for_read(&r.context, r.version);
            let o = ReadOpts::from(&r.context);
            Ok(self.mvcc.get(&key, r.version, o.check_locks, &o.bypass, &o.access)?)
        })();
        fill_one!(resp, res, |v| match v {
            Some((value, commit_ts)) => {
                resp.value = value;
                if r.need_commit_ts {
                    resp.commit_ts = commit_ts;
                }
            }
            None => resp.not_found = true,
        });
        resp
    }

    pub(crate) fn kv_batch_get(
        &mut self,
        store: u64,
        r: kvrpcpb::BatchGetRequest,
    ) -> kvrpcpb::BatchGetResponse {
        let mut resp = kvrpcpb::BatchGetResponse::default();
        let res = (|| {
            let keys = r.keys.iter().map(|k| &k[..]);
            let region = self.txn_region(store, "batch_get", &r.context, keys, true)?;
            let mut encoded = Vec::new();
            for k in &r.keys {
                let key = txn_key(k);
                check_key_in_region(&key, &region)?;
                encoded.push(key);
            }
            self.push_max_ts_for_read(&r.context, r.version);
            let o = ReadOpts::from(&r.context);
            let mut pairs = Vec::new();
            // Locked keys come back as pairs with an error; missing keys are
            // left out (`Storage::batch_get`).
            for (k, key) in r.keys.iter().zip(&encoded) {
                match self.mvcc.get(key, r.version, o.check_locks, &o.bypass, &o.access) {
                    Ok(Some((value, commit_ts))) => pairs.push(kvrpcpb::KvPair {
                        key: k.clone(),
                        value,
                        commit_ts: if r.need_commit_ts { commit_ts } else { 0 },
                        ..Default::default()
                    }),
                    Ok(None) => {}
                    Err(e) => pairs.push(kvrpcpb::KvPair {
                        key: k.clone(),
                        error: Some(*e),
                        ..Default::default()
                    }),
                }
            }
            Ok(pairs)
        })();
        fill_one!(resp, res, |pairs| resp.pairs = pairs);
        resp
    }

    /// Region keys of locks and write records in `[lower, upper)`.
    fn txn_keys_in(&self, lower: &[u8], upper: Option<&[u8]>) -> BTreeSet<Vec<u8>> {
        use std::ops::Bound;
        if upper.is_some_and(|u| u <= lower) {
            return BTreeSet::new();
        }
        let range = || (Bound::Included(lower), upper.map_or(Bound::Unbounded, Bound::Excluded));
        let mut keys: BTreeSet<Vec<u8>> =
            self.mvcc.locks.range::<[u8], _>(range()).map(|(k, _)| k.clone()).collect();
        keys.extend(self.mvcc.writes.range::<[u8], _>(range()).map(|(k, _)| k.clone()));
        keys
    }

    /// The request key for a region key (locks and writes both know it).
    fn user_key_of(&self, key: &[u8]) -> Bytes {
        self.mvcc
            .locks
            .get(key)
            .map(|l| l.user_key.clone())
            .or_else(|| self.mvcc.writes.get(key).map(|v| v.user_key.clone()))
            .unwrap_or_default()
    }

    /// `Storage::scan` with the forward/backward scanners: forward scans
    /// `[start_key, end_key)`, reverse scans `[end_key, start_key)` from the
    /// top; bounds are clamped to the region and the seek key must be in it.
    /// Locked keys are returned as error pairs and count toward `limit`.
    pub(crate) fn kv_scan(&mut self, store: u64, r: kvrpcpb::ScanRequest) -> kvrpcpb::ScanResponse {
        let mut resp = kvrpcpb::ScanResponse::default();
        let res = (|| {
            let mut api_keys = vec![&r.start_key[..]];
            if !r.end_key.is_empty() {
                api_keys.push(&r.end_key[..]);
            }
            let region = self.txn_region(store, "scan", &r.context, api_keys, true)?;
            let region_end = (!region.end_key.is_empty()).then(|| region.end_key.to_vec());
            let (lower, upper) = if r.reverse {
                let upper = if r.start_key.is_empty() {
                    region_end
                } else {
                    let s = txn_key(&r.start_key);
                    check_key_seekable(&s, &region)?;
                    Some(s)
                };
                let lower = if r.end_key.is_empty() {
                    region.start_key.to_vec()
                } else {
                    txn_key(&r.end_key).max(region.start_key.to_vec())
                };
                (lower, upper)
            } else {
                let lower = txn_key(&r.start_key);
                check_key_seekable(&lower, &region)?;
                let upper = match (r.end_key.is_empty(), region_end) {
                    (true, e) => e,
                    (false, None) => Some(txn_key(&r.end_key)),
                    (false, Some(e)) => Some(txn_key(&r.end_key).min(e)),
                };
                (lower, upper)
            };
            self.push_max_ts_for_read(&r.context, r.version);
            let o = ReadOpts::from(&r.context);
            let keys = self.txn_keys_in(&lower, upper.as_deref());
            let ordered: Box<dyn Iterator<Item = &Vec<u8>>> =
                if r.reverse { Box::new(keys.iter().rev()) } else { Box::new(keys.iter()) };
            let mut pairs = Vec::new();
            for key in ordered {
                if pairs.len() >= r.limit as usize {
                    break;
                }
                match self.mvcc.get(key, r.version, o.check_locks, &o.bypass, &o.access) {
                    Ok(Some((value, _))) => pairs.push(kvrpcpb::KvPair {
                        key: self.user_key_of(key),
                        value: if r.key_only { Bytes::new() } else { value },
                        ..Default::default()
                    }),
                    Ok(None) => {}
                    Err(e) => pairs.push(kvrpcpb::KvPair {
                        key: self.user_key_of(key),
                        error: Some(*e),
                        ..Default::default()
                    }),
                }
            }
            Ok(pairs)
        })();
        fill_one!(resp, res, |pairs| resp.pairs = pairs);
        resp
    }

    /// `commands::Prewrite` over `actions::prewrite`.
    pub(crate) fn kv_prewrite(
        &mut self,
        store: u64,
        r: kvrpcpb::PrewriteRequest,
    ) -> kvrpcpb::PrewriteResponse {
        let mut resp = kvrpcpb::PrewriteResponse::default();
        let mut undo = Undo::default();
        match self.prewrite(store, &r, &mut undo) {
            Ok(done) => {
                // "Skip write stage if some keys are locked"; a retry of a
                // committed transaction writes nothing either (`txn.clear()`).
                if !done.locked.is_empty() || done.discard {
                    undo.restore(&mut self.mvcc);
                }
                resp.errors = done.locked;
                resp.min_commit_ts = done.min_commit_ts;
                resp.one_pc_commit_ts = done.one_pc_commit_ts;
            }
            Err(Fail::Region(e)) => {
                undo.restore(&mut self.mvcc);
                resp.region_error = Some(*e);
            }
            Err(Fail::Key(e)) => {
                undo.restore(&mut self.mvcc);
                resp.errors = vec![*e];
            }
        }
        resp
    }

    /// `Prewrite::prewrite` and `write_result`.
    fn prewrite(
        &mut self,
        store: u64,
        r: &kvrpcpb::PrewriteRequest,
        undo: &mut Undo,
    ) -> Result<Prewritten, Fail> {
        let keys = r.mutations.iter().map(|m| &m.key[..]);
        let region = self.txn_region(store, "prewrite", &r.context, keys, false)?;
        let mut encoded = Vec::with_capacity(r.mutations.len());
        for m in &r.mutations {
            let key = txn_key(&m.key);
            check_key_in_region(&key, &region)?;
            encoded.push(key);
        }
        let start_ts = r.start_version;
        let pessimistic = r.for_update_ts != 0;
        let is_retry = r.context.as_ref().is_some_and(|c| c.is_retry_request);
        let mut async_commit = r.use_async_commit;
        let mut one_pc = r.try_one_pc;
        // The primary carries the secondaries only when there are any.
        let async_pk = (!r.secondaries.is_empty()).then_some(&r.primary_lock);
        let mut final_min_commit_ts = 0u64;
        let mut lock_errors = Vec::new();
        let mut assertion_failure = None;
        let mut written: Vec<(Vec<u8>, Bytes)> = Vec::new();
        let expected_for_update_ts: std::collections::BTreeMap<usize, u64> = r
            .for_update_ts_constraints
            .iter()
            .map(|c| (c.index as usize, c.expected_for_update_ts))
            .collect();

        for (i, (m, key)) in r.mutations.iter().zip(&encoded).enumerate() {
            let (lock_type, should_not_exist) = mutation_lock(m, "prewrite")?;
            let action = r
                .pessimistic_actions
                .get(i)
                .and_then(|a| kvrpcpb::prewrite_request::PessimisticAction::try_from(*a).ok())
                .unwrap_or(kvrpcpb::prewrite_request::PessimisticAction::SkipPessimisticCheck);
            use kvrpcpb::prewrite_request::PessimisticAction as PA;
            let need_min_commit_ts = async_commit || one_pc;
            if should_not_exist {
                self.mvcc.update_max_ts(start_ts);
            }

            // `check_lock`.
            let mut lock_amended = false;
            let mut pessimistic_locked = None;
            let is_shared = m.op == kvrpcpb::Op::SharedLock as i32;
            // The prewrite turns this transaction's sub-lock of the key's
            // shared locks into a `Lock`, leaving the other holders alone.
            let mut prewrites_share = false;
            if let Some(shared) = self.mvcc.shared.get(key) {
                match shared.holders.get(&start_ts) {
                    None if is_shared => return Err(pessimistic_lock_not_found(start_ts, &m.key)),
                    None => {
                        lock_errors.push(locked_info(shared.info()));
                        continue;
                    }
                    Some(_) if !is_shared => {
                        return Err(abort(
                            "use Op::SharedLock to prewrite on a shared lock".to_owned(),
                        ));
                    }
                    Some(lock) if lock.lock_type == LockType::Pessimistic => {
                        if expected_for_update_ts
                            .get(&i)
                            .is_some_and(|&ts| ts != lock.for_update_ts)
                        {
                            return Err(pessimistic_lock_not_found(start_ts, &m.key));
                        }
                        pessimistic_locked = Some(lock.for_update_ts);
                        prewrites_share = true;
                    }
                    // A duplicated prewrite (shared locks never use async commit).
                    Some(_) => continue,
                }
            }
            match self.mvcc.locks.get(key) {
                // A shared lock prewrite meeting an exclusive lock, even its own.
                Some(lock) if is_shared => {
                    lock_errors.push(locked(lock));
                    continue;
                }
                // Its own share was found above (a key is in one map only).
                None if prewrites_share => {}
                None if is_shared && action == PA::DoPessimisticCheck => {
                    return Err(pessimistic_lock_not_found(start_ts, &m.key));
                }
                Some(lock) if lock.ts != start_ts => {
                    if let Some(done) = self.committed_retry(
                        key,
                        start_ts,
                        CommitProtocols { async_commit, one_pc },
                    ) {
                        return Ok(done);
                    }
                    if action == PA::DoPessimisticCheck {
                        return Err(pessimistic_lock_not_found(start_ts, &m.key));
                    }
                    lock_errors.push(locked(lock));
                    continue;
                }
                Some(lock) if lock.lock_type == LockType::Pessimistic => {
                    if !pessimistic {
                        return Err(abort(format!(
                            "LockTypeNotMatch {{ start_ts: {start_ts}, key: {}, pessimistic: true }}",
                            hex(&m.key)
                        )));
                    }
                    // `for_update_ts_constraints`: a lock taken in force-lock
                    // mode at another for_update_ts than the client knows
                    // counts as lost (`LockForUpdateTsMismatch`).
                    if expected_for_update_ts.get(&i).is_some_and(|&ts| ts != lock.for_update_ts) {
                        return Err(pessimistic_lock_not_found(start_ts, &m.key));
                    }
                    pessimistic_locked = Some(lock.for_update_ts);
                }
                Some(lock) => {
                    // Duplicated prewrite: keep the lock; report its
                    // min_commit_ts if it is an async-commit lock.
                    let ts = if lock.use_async_commit { lock.min_commit_ts } else { 0 };
                    if need_min_commit_ts {
                        if ts == 0 {
                            async_commit = false;
                            one_pc = false;
                            final_min_commit_ts = 0;
                        } else {
                            final_min_commit_ts = final_min_commit_ts.max(ts);
                        }
                    }
                    continue;
                }
                None if action == PA::DoPessimisticCheck => {
                    // `amend_pessimistic_lock`.
                    if self.mvcc.latest_write(key).is_some_and(|(c, _)| c >= start_ts) {
                        if let Some(done) = self.committed_retry(
                            key,
                            start_ts,
                            CommitProtocols { async_commit, one_pc },
                        ) {
                            return Ok(done);
                        }
                        return Err(pessimistic_lock_not_found(start_ts, &m.key));
                    }
                    lock_amended = true;
                }
                None => {}
            }

            // `check_for_newer_version` unless constraint checks are skipped.
            let skip_constraint_check = if pessimistic {
                match action {
                    PA::DoPessimisticCheck => true,
                    PA::SkipPessimisticCheck => !is_retry,
                    PA::DoConstraintCheck => false,
                }
            } else {
                r.skip_constraint_check
            };
            if !skip_constraint_check
                && pessimistic_locked.is_none()
                && let Err(e) =
                    self.check_for_newer_version(r, key, &m.key, action, should_not_exist)
            {
                // A write conflict with a newer commit, or a missing
                // pessimistic lock, may be this transaction's own commit:
                // a retry after it committed succeeds.
                let own_commit_possible = matches!(&e, Fail::Key(k)
                    if k.conflict.as_ref().is_some_and(|c| c.conflict_commit_ts > start_ts)
                        || k.abort.starts_with("PessimisticLockNotFound"));
                if own_commit_possible
                    && let Some(done) = self.committed_retry(
                        key,
                        start_ts,
                        CommitProtocols { async_commit, one_pc },
                    )
                {
                    return Ok(done);
                }
                return Err(e);
            }
            if !lock_amended && let Err(e) = self.check_assertion(r, key, m) {
                assertion_failure.get_or_insert(e);
            }

            let Some(lock_type) = lock_type else {
                // CheckNotExists writes nothing.
                if need_min_commit_ts {
                    let ts = r.min_commit_ts.max(start_ts.saturating_add(1));
                    final_min_commit_ts = final_min_commit_ts.max(ts);
                }
                continue;
            };

            // `write_lock`.
            let for_update_ts = match pessimistic_locked {
                Some(ts) => ts.max(r.for_update_ts),
                None => r.for_update_ts,
            };
            let mut lock = Lock {
                user_key: m.key.clone(),
                lock_type,
                primary: r.primary_lock.clone(),
                ts: start_ts,
                ttl: r.lock_ttl,
                for_update_ts,
                txn_size: r.txn_size,
                min_commit_ts: r.min_commit_ts,
                use_async_commit: false,
                secondaries: Vec::new(),
                generation: 0,
            };
            if async_commit {
                lock.use_async_commit = true;
                if async_pk == Some(&m.key) {
                    lock.secondaries = r.secondaries.clone();
                }
            }
            let mut too_large = false;
            if async_commit || one_pc {
                // `async_commit_timestamps`.
                let ts = self.mvcc.max_ts.max(start_ts).max(for_update_ts).saturating_add(1);
                let ts = ts.max(lock.min_commit_ts);
                if r.max_commit_ts != 0 && ts > r.max_commit_ts {
                    too_large = true;
                    lock.use_async_commit = false;
                    lock.secondaries = Vec::new();
                } else {
                    lock.min_commit_ts = ts;
                    final_min_commit_ts = final_min_commit_ts.max(ts);
                }
            }
            undo.save(&self.mvcc, key);
            if prewrites_share {
                // `write_lock`'s safety checks for a shared lock.
                if one_pc {
                    return Err(abort(
                        "shared lock prewrite is incompatible with one-phase commit".to_owned(),
                    ));
                }
                if lock.use_async_commit {
                    return Err(abort(
                        "shared lock prewrite cannot use async-commit, falling back to 2PC"
                            .to_owned(),
                    ));
                }
                if let Some(shared) = self.mvcc.shared.get_mut(key) {
                    shared.holders.insert(start_ts, lock);
                }
                continue;
            }
            if lock_type == LockType::Put {
                self.mvcc.values.entry(key.clone()).or_default().insert(start_ts, m.value.clone());
            }
            self.mvcc.locks.insert(key.clone(), lock);
            written.push((key.clone(), m.key.clone()));
            if too_large {
                // CommitTsTooLarge: unless this is a retry of a committed
                // transaction, fall back to 2PC for the rest.
                if let Some(done) =
                    self.committed_retry(key, start_ts, CommitProtocols { async_commit, one_pc })
                {
                    return Ok(done);
                }
                async_commit = false;
                one_pc = false;
                final_min_commit_ts = 0;
            }
        }
        if let Some(e) = assertion_failure {
            return Err(e);
        }
        if !lock_errors.is_empty() {
            let min = if async_commit { final_min_commit_ts } else { 0 };
            return Ok(Prewritten {
                locked: lock_errors,
                min_commit_ts: min,
                one_pc_commit_ts: 0,
                discard: false,
            });
        }
        let mut one_pc_commit_ts = 0;
        if one_pc && final_min_commit_ts != 0 {
            // `one_pc_commit` / `handle_1pc_locks`: the locks become commit
            // records at the final min_commit_ts right away.
            for (key, user_key) in &written {
                self.mvcc.commit(key, user_key, start_ts, final_min_commit_ts)?;
            }
            one_pc_commit_ts = final_min_commit_ts;
        }
        let min_commit_ts = if async_commit { final_min_commit_ts } else { 0 };
        Ok(Prewritten { locked: Vec::new(), min_commit_ts, one_pc_commit_ts, discard: false })
    }

    /// `commands::Flush` (pipelined DML): each mutation is prewritten as an
    /// optimistic lock of the pipelined transaction at `generation`
    /// (`prewrite_with_generation`). A key the transaction flushed before is
    /// overwritten by a newer generation and left alone by an older one
    /// (`GenerationOutOfOrder`); inserting a key an earlier flush put fails
    /// with `AlreadyExist`; an assertion is checked on a key's first flush
    /// only. Locks of other transactions come back as `KeyIsLocked` per key
    /// while the rest is written; any other error fails the whole request
    /// and writes nothing. The locks carry `min_commit_ts = start_ts + 1`
    /// and an unknown (maximal) transaction size, as TiKV writes them.
    pub(crate) fn kv_flush(
        &mut self,
        store: u64,
        r: kvrpcpb::FlushRequest,
    ) -> kvrpcpb::FlushResponse {
        let mut resp = kvrpcpb::FlushResponse::default();
        let mut undo = Undo::default();
        match self.flush(store, &r, &mut undo) {
            Ok(locked) => resp.errors = locked,
            Err(Fail::Region(e)) => {
                undo.restore(&mut self.mvcc);
                resp.region_error = Some(*e);
            }
            Err(Fail::Key(e)) => {
                undo.restore(&mut self.mvcc);
                resp.errors = vec![*e];
            }
        }
        resp
    }

    fn flush(
        &mut self,
        store: u64,
        r: &kvrpcpb::FlushRequest,
        undo: &mut Undo,
    ) -> Result<Vec<kvrpcpb::KeyError>, Fail> {
        let keys = r.mutations.iter().map(|m| &m.key[..]);
        let region = self.txn_region(store, "flush", &r.context, keys, false)?;
        if r.generation == 0 {
            return Err(abort("generation should be greater than 0 for Flush requests".into()));
        }
        let mut encoded = Vec::with_capacity(r.mutations.len());
        for m in &r.mutations {
            let key = txn_key(&m.key);
            check_key_in_region(&key, &region)?;
            encoded.push(key);
        }
        let start_ts = r.start_ts;
        // The checks shared with an optimistic prewrite read these fields.
        let as_prewrite = kvrpcpb::PrewriteRequest {
            start_version: start_ts,
            primary_lock: r.primary_key.clone(),
            assertion_level: r.assertion_level,
            ..Default::default()
        };
        let no_protocols = CommitProtocols { async_commit: false, one_pc: false };
        let mut lock_errors = Vec::new();
        let mut assertion_failure = None;
        for (m, key) in r.mutations.iter().zip(&encoded) {
            let (lock_type, should_not_exist) = mutation_lock(m, "flush")?;
            if should_not_exist {
                self.mvcc.update_max_ts(start_ts);
            }
            let mut subsequent_flush = false;
            // A flush is a prewrite: other transactions' shares block it.
            if let Some(shared) = self.mvcc.shared.get(key) {
                lock_errors.push(locked_info(shared.info()));
                continue;
            }
            match self.mvcc.locks.get(key) {
                Some(lock) if lock.ts != start_ts => {
                    if self.committed_retry(key, start_ts, no_protocols).is_some() {
                        // This transaction already committed: a late flush.
                        return Ok(Vec::new());
                    }
                    lock_errors.push(locked(lock));
                    continue;
                }
                Some(lock) if lock.lock_type == LockType::Pessimistic => {
                    return Err(abort(format!(
                        "LockTypeNotMatch {{ start_ts: {start_ts}, key: {}, pessimistic: true }}",
                        hex(&m.key)
                    )));
                }
                Some(lock) if lock.generation >= r.generation => {
                    // `GenerationOutOfOrder`: an older flush arriving late.
                    continue;
                }
                Some(lock) if should_not_exist && lock.lock_type == LockType::Put => {
                    return Err(kvrpcpb::KeyError {
                        already_exist: Some(kvrpcpb::AlreadyExist { key: m.key.clone() }),
                        ..Default::default()
                    }
                    .into());
                }
                Some(_) => subsequent_flush = true,
                None => {}
            }
            if let Err(e) = self.check_for_newer_version(
                &as_prewrite,
                key,
                &m.key,
                kvrpcpb::prewrite_request::PessimisticAction::SkipPessimisticCheck,
                should_not_exist,
            ) {
                let newer_commit = matches!(&e, Fail::Key(k)
                    if k.conflict.as_ref().is_some_and(|c| c.conflict_commit_ts > start_ts));
                if newer_commit && self.committed_retry(key, start_ts, no_protocols).is_some() {
                    return Ok(Vec::new());
                }
                return Err(e);
            }
            if !subsequent_flush && let Err(e) = self.check_assertion(&as_prewrite, key, m) {
                assertion_failure.get_or_insert(e);
            }
            let Some(lock_type) = lock_type else { continue };
            undo.save(&self.mvcc, key);
            let values = self.mvcc.values.entry(key.clone()).or_default();
            if lock_type == LockType::Put {
                values.insert(start_ts, m.value.clone());
            } else {
                // An earlier generation's value is not this one's.
                values.remove(&start_ts);
            }
            self.mvcc.locks.insert(
                key.clone(),
                Lock {
                    user_key: m.key.clone(),
                    lock_type,
                    primary: r.primary_key.clone(),
                    ts: start_ts,
                    ttl: r.lock_ttl,
                    for_update_ts: 0,
                    txn_size: u64::MAX,
                    min_commit_ts: start_ts.saturating_add(1),
                    use_async_commit: false,
                    secondaries: Vec::new(),
                    generation: r.generation,
                },
            );
        }
        if let Some(e) = assertion_failure {
            return Err(e);
        }
        Ok(lock_errors)
    }

    /// `Storage::buffer_batch_get`: a pipelined transaction reads back what
    /// it flushed, from its own locks only (other transactions' locks and
    /// committed data are not consulted). A flushed delete comes back as a
    /// pair with an empty value, as client-go's membuffer holds it; keys
    /// without a lock of the transaction are left out.
    pub(crate) fn kv_buffer_batch_get(
        &mut self,
        store: u64,
        r: kvrpcpb::BufferBatchGetRequest,
    ) -> kvrpcpb::BufferBatchGetResponse {
        let mut resp = kvrpcpb::BufferBatchGetResponse::default();
        let res = (|| {
            let keys = r.keys.iter().map(|k| &k[..]);
            let region = self.txn_region(store, "buffer_batch_get", &r.context, keys, true)?;
            let mut wanted: Vec<&Bytes> = r.keys.iter().collect();
            wanted.sort();
            wanted.dedup();
            let mut pairs = Vec::new();
            for k in wanted {
                let key = txn_key(k);
                check_key_in_region(&key, &region)?;
                let Some(lock) = self.mvcc.locks.get(&key).filter(|l| l.ts == r.version) else {
                    continue;
                };
                let value = match lock.lock_type {
                    LockType::Delete => Bytes::new(),
                    LockType::Put => {
                        match self.mvcc.values.get(&key).and_then(|v| v.get(&r.version)) {
                            Some(v) => v.clone(),
                            None => continue,
                        }
                    }
                    LockType::Lock | LockType::Pessimistic => {
                        return Err(abort(format!(
                            "unexpected {:?} lock of pipelined transaction {} on {}",
                            lock.lock_type,
                            r.version,
                            hex(k)
                        )));
                    }
                };
                pairs.push(kvrpcpb::KvPair { key: k.clone(), value, ..Default::default() });
            }
            Ok(pairs)
        })();
        fill_one!(resp, res, |pairs| resp.pairs = pairs);
        resp
    }

    /// `check_committed_record_on_err`: a prewrite that met a conflict on a
    /// key this transaction already committed (a retry after the commit) is
    /// answered as a success carrying the commit ts, as `min_commit_ts` for
    /// async commit and `one_pc_commit_ts` for 1PC, and writes nothing.
    fn committed_retry(
        &self,
        key: &[u8],
        start_ts: u64,
        protocols: CommitProtocols,
    ) -> Option<Prewritten> {
        let CommitProtocols { async_commit, one_pc } = protocols;
        match self.mvcc.txn_record(key, start_ts) {
            TxnRecord::Single { commit_ts, write } if write.kind != WriteKind::Rollback => {
                Some(Prewritten {
                    locked: Vec::new(),
                    min_commit_ts: if async_commit { commit_ts } else { 0 },
                    one_pc_commit_ts: if one_pc { commit_ts } else { 0 },
                    discard: true,
                })
            }
            _ => None,
        }
    }

    /// `PrewriteMutation::check_for_newer_version` and `check_data_constraint`.
    fn check_for_newer_version(
        &self,
        r: &kvrpcpb::PrewriteRequest,
        key: &[u8],
        user_key: &Bytes,
        action: kvrpcpb::prewrite_request::PessimisticAction,
        should_not_exist: bool,
    ) -> Result<(), Fail> {
        use kvrpcpb::prewrite_request::PessimisticAction as PA;
        use kvrpcpb::write_conflict::Reason;
        let start_ts = r.start_version;
        let conflict = |w: &Write, commit_ts: u64, reason: Reason| -> Fail {
            kvrpcpb::KeyError {
                retryable: format!(
                    "WriteConflict {{ start_ts: {start_ts}, conflict_start_ts: {}, conflict_commit_ts: {commit_ts}, key: {}, primary: {}, reason: {reason:?} }}",
                    w.start_ts,
                    hex(user_key),
                    hex(&r.primary_lock)
                ),
                conflict: Some(kvrpcpb::WriteConflict {
                    start_ts,
                    conflict_ts: w.start_ts,
                    key: user_key.clone(),
                    primary: r.primary_lock.clone(),
                    conflict_commit_ts: commit_ts,
                    reason: reason as i32,
                }),
                ..Default::default()
            }
            .into()
        };
        let Some(versions) = self.mvcc.writes.get(key) else {
            return Ok(());
        };
        for (&commit_ts, w) in versions.by_commit.iter().rev() {
            if commit_ts == start_ts && (w.kind == WriteKind::Rollback || w.overlapped_rollback) {
                return Err(conflict(w, commit_ts, Reason::SelfRolledBack));
            }
            if r.for_update_ts == 0 {
                if commit_ts > start_ts {
                    return Err(conflict(w, commit_ts, Reason::Optimistic));
                }
            } else {
                if action == PA::DoConstraintCheck && commit_ts > start_ts {
                    return Err(conflict(w, commit_ts, Reason::LazyUniquenessCheck));
                }
                if commit_ts > r.for_update_ts {
                    if w.kind == WriteKind::Rollback {
                        continue;
                    }
                    return Err(pessimistic_lock_not_found(start_ts, user_key));
                }
            }
            // `check_data_constraint`: the newest data version must not be a Put.
            if should_not_exist
                && self
                    .mvcc
                    .data_write(key, u64::MAX)
                    .is_some_and(|(_, d)| d.kind == WriteKind::Put)
            {
                return Err(kvrpcpb::KeyError {
                    already_exist: Some(kvrpcpb::AlreadyExist { key: user_key.clone() }),
                    ..Default::default()
                }
                .into());
            }
            return Ok(());
        }
        Ok(())
    }

    /// `PrewriteMutation::check_assertion`: with assertions enabled, `Exist`
    /// needs the newest data version to be a Put and `NotExist` needs it not
    /// to be.
    fn check_assertion(
        &self,
        r: &kvrpcpb::PrewriteRequest,
        key: &[u8],
        m: &kvrpcpb::Mutation,
    ) -> Result<(), Fail> {
        if r.assertion_level == kvrpcpb::AssertionLevel::Off as i32
            || m.assertion == kvrpcpb::Assertion::None as i32
        {
            return Ok(());
        }
        let newest = self.mvcc.data_write(key, u64::MAX);
        let exists = newest.is_some_and(|(_, w)| w.kind == WriteKind::Put);
        let ok = if m.assertion == kvrpcpb::Assertion::Exist as i32 { exists } else { !exists };
        if ok {
            return Ok(());
        }
        let (existing_commit_ts, existing_start_ts) =
            newest.map_or((0, 0), |(c, w)| (c, w.start_ts));
        Err(kvrpcpb::KeyError {
            assertion_failed: Some(kvrpcpb::AssertionFailed {
                start_ts: r.start_version,
                key: m.key.clone(),
                assertion: m.assertion,
                existing_start_ts,
                existing_commit_ts,
            }),
            ..Default::default()
        }
        .into())
    }

    /// `commands::Commit`.
    pub(crate) fn kv_commit(
        &mut self,
        store: u64,
        r: kvrpcpb::CommitRequest,
    ) -> kvrpcpb::CommitResponse {
        let mut resp = kvrpcpb::CommitResponse::default();
        let mut undo = Undo::default();
        let res = (|| {
            let keys = r.keys.iter().map(|k| &k[..]);
            let region = self.txn_region(store, "commit", &r.context, keys, false)?;
            let mut encoded = Vec::new();
            for k in &r.keys {
                let key = txn_key(k);
                check_key_in_region(&key, &region)?;
                encoded.push(key);
            }
            if r.commit_version <= r.start_version {
                return Err(abort(format!(
                    "invalid transaction tso with start_ts:{}, commit_ts:{}",
                    r.start_version, r.commit_version
                )));
            }
            for (k, key) in r.keys.iter().zip(&encoded) {
                undo.save(&self.mvcc, key);
                self.mvcc.commit(key, k, r.start_version, r.commit_version)?;
            }
            Ok(())
        })();
        if res.is_err() {
            undo.restore(&mut self.mvcc);
        }
        fill_one!(resp, res, |()| resp.commit_version = r.commit_version);
        resp
    }

    /// `commands::Rollback`: `cleanup` with protected rollbacks per key.
    pub(crate) fn kv_batch_rollback(
        &mut self,
        store: u64,
        r: kvrpcpb::BatchRollbackRequest,
    ) -> kvrpcpb::BatchRollbackResponse {
        let mut resp = kvrpcpb::BatchRollbackResponse::default();
        let mut undo = Undo::default();
        let res = (|| {
            let keys = r.keys.iter().map(|k| &k[..]);
            let region = self.txn_region(store, "batch_rollback", &r.context, keys, false)?;
            let mut encoded = Vec::new();
            for k in &r.keys {
                let key = txn_key(k);
                check_key_in_region(&key, &region)?;
                encoded.push(key);
            }
            for (k, key) in r.keys.iter().zip(&encoded) {
                undo.save(&self.mvcc, key);
                match self.cleanup(key, k, r.start_version, 0) {
                    Ok(()) => {}
                    Err(CleanupErr::Committed(c)) => {
                        return Err(Self::committed_error(r.start_version, c, k));
                    }
                    Err(CleanupErr::Key(e)) => return Err(e.into()),
                }
            }
            Ok(())
        })();
        if res.is_err() {
            undo.restore(&mut self.mvcc);
        }
        fill_one!(resp, res, |()| {});
        resp
    }

    /// `commands::Cleanup`: a committed key answers its commit ts.
    pub(crate) fn kv_cleanup(
        &mut self,
        store: u64,
        r: kvrpcpb::CleanupRequest,
    ) -> kvrpcpb::CleanupResponse {
        let mut resp = kvrpcpb::CleanupResponse::default();
        let res = (|| {
            let region = self.txn_region(store, "cleanup", &r.context, [&r.key[..]], false)?;
            let key = txn_key(&r.key);
            check_key_in_region(&key, &region)?;
            match self.cleanup(&key, &r.key, r.start_version, r.current_ts) {
                Ok(()) => Ok(0),
                Err(CleanupErr::Committed(c)) => Ok(c),
                Err(CleanupErr::Key(e)) => Err(e.into()),
            }
        })();
        fill_one!(resp, res, |c| resp.commit_version = c);
        resp
    }

    /// `commands::CheckTxnStatus`.
    pub(crate) fn kv_check_txn_status(
        &mut self,
        store: u64,
        r: kvrpcpb::CheckTxnStatusRequest,
    ) -> kvrpcpb::CheckTxnStatusResponse {
        let mut resp = kvrpcpb::CheckTxnStatusResponse::default();
        let res = (|| {
            let region = self.txn_region(
                store,
                "check_txn_status",
                &r.context,
                [&r.primary_key[..]],
                false,
            )?;
            let key = txn_key(&r.primary_key);
            check_key_in_region(&key, &region)?;
            let mut new_max_ts = r.lock_ts;
            if r.current_ts != u64::MAX {
                new_max_ts = new_max_ts.max(r.current_ts);
            }
            if r.caller_start_ts != u64::MAX {
                new_max_ts = new_max_ts.max(r.caller_start_ts);
            }
            self.mvcc.update_max_ts(new_max_ts);
            // A shared-locked key is never a transaction's primary: TiKV
            // refuses the request (whatever transactions hold the key).
            if let Some(shared) = self.mvcc.shared.get(&key) {
                let mut info = shared.info();
                info.key = r.primary_key.clone();
                return Err(kvrpcpb::KeyError {
                    primary_mismatch: Some(kvrpcpb::PrimaryMismatch { lock_info: Some(info) }),
                    ..Default::default()
                }
                .into());
            }
            match self.mvcc.locks.get(&key).cloned() {
                Some(lock) if lock.ts == r.lock_ts => {
                    self.check_txn_status_lock_exists(&r, &key, lock)
                }
                _ => self.check_txn_status_missing_lock(&r, &key),
            }
        })();
        fill_one!(resp, res, |status| match status {
            TxnStatus::RolledBack => {}
            TxnStatus::TtlExpire => resp.action = kvrpcpb::Action::TtlExpireRollback as i32,
            TxnStatus::LockNotExist => resp.action = kvrpcpb::Action::LockNotExistRollback as i32,
            TxnStatus::Committed(c) => resp.commit_version = c,
            TxnStatus::Uncommitted(lock, pushed) => {
                if pushed {
                    resp.action = kvrpcpb::Action::MinCommitTsPushed as i32;
                }
                resp.lock_ttl = lock.ttl;
                resp.lock_info = Some(lock.info());
            }
            TxnStatus::PessimisticRollBack => {
                resp.action = kvrpcpb::Action::TtlExpirePessimisticRollback as i32;
            }
            TxnStatus::LockNotExistDoNothing => {
                resp.action = kvrpcpb::Action::LockNotExistDoNothing as i32;
            }
        });
        resp
    }

    /// `check_txn_status_lock_exists`.
    fn check_txn_status_lock_exists(
        &mut self,
        r: &kvrpcpb::CheckTxnStatusRequest,
        key: &[u8],
        mut lock: Lock,
    ) -> Result<TxnStatus, Fail> {
        if r.verify_is_primary && lock.primary != r.primary_key {
            if !r.resolving_pessimistic_lock && lock.lock_type == LockType::Pessimistic {
                // An invalid pessimistic primary: unlock it and answer as if missing.
                let status = self.check_txn_status_missing_lock(r, key)?;
                self.mvcc.locks.remove(key);
                return Ok(status);
            }
            return Err(kvrpcpb::KeyError {
                primary_mismatch: Some(kvrpcpb::PrimaryMismatch { lock_info: Some(lock.info()) }),
                ..Default::default()
            }
            .into());
        }
        // Async-commit locks are never rolled back or pushed here; that is
        // ResolveLock's job after CheckSecondaryLocks.
        if lock.use_async_commit && !r.force_sync_commit {
            return Ok(TxnStatus::Uncommitted(Box::new(lock), false));
        }
        // TTL in the physical domain of TSO, strictly as TiKV compares.
        let expired = physical(lock.ts).saturating_add(lock.ttl) < physical(r.current_ts);
        if expired {
            if lock.lock_type == LockType::Pessimistic && r.resolving_pessimistic_lock {
                self.mvcc.locks.remove(key);
                return Ok(TxnStatus::PessimisticRollBack);
            }
            self.mvcc.rollback_lock(key, &lock);
            return Ok(TxnStatus::TtlExpire);
        }
        if lock.min_commit_ts != 0
            && r.caller_start_ts != u64::MAX
            && r.caller_start_ts >= lock.min_commit_ts
        {
            lock.min_commit_ts = r.caller_start_ts.saturating_add(1).max(r.current_ts);
            self.mvcc.locks.insert(key.to_vec(), lock.clone());
        }
        let pushed = (r.caller_start_ts != 0 && lock.min_commit_ts > r.caller_start_ts)
            || r.caller_start_ts == u64::MAX;
        Ok(TxnStatus::Uncommitted(Box::new(lock), pushed))
    }

    /// `check_txn_status_missing_lock`.
    fn check_txn_status_missing_lock(
        &mut self,
        r: &kvrpcpb::CheckTxnStatusRequest,
        key: &[u8],
    ) -> Result<TxnStatus, Fail> {
        match self.mvcc.txn_record(key, r.lock_ts) {
            TxnRecord::Single { write, .. } if write.kind == WriteKind::Rollback => {
                Ok(TxnStatus::RolledBack)
            }
            TxnRecord::Single { commit_ts, .. } => Ok(TxnStatus::Committed(commit_ts)),
            TxnRecord::OverlappedRollback => Ok(TxnStatus::RolledBack),
            TxnRecord::None { .. } => {
                if !r.rollback_if_not_exist {
                    return Err(txn_not_found(r.lock_ts, &r.primary_key).into());
                }
                if r.resolving_pessimistic_lock {
                    return Ok(TxnStatus::LockNotExistDoNothing);
                }
                self.mvcc.write_rollback(key, &r.primary_key, r.lock_ts);
                Ok(TxnStatus::LockNotExist)
            }
        }
    }

    /// `commands::CheckSecondaryLocks`.
    pub(crate) fn kv_check_secondary_locks(
        &mut self,
        store: u64,
        r: kvrpcpb::CheckSecondaryLocksRequest,
    ) -> kvrpcpb::CheckSecondaryLocksResponse {
        let mut resp = kvrpcpb::CheckSecondaryLocksResponse::default();
        let res = (|| {
            let keys = r.keys.iter().map(|k| &k[..]);
            let region =
                self.txn_region(store, "check_secondary_locks", &r.context, keys, false)?;
            let mut encoded = Vec::new();
            for k in &r.keys {
                let key = txn_key(k);
                check_key_in_region(&key, &region)?;
                encoded.push(key);
            }
            let start_ts = r.start_version;
            let mut locks = Vec::new();
            for (k, key) in r.keys.iter().zip(&encoded) {
                match self.mvcc.locks.get(key).cloned() {
                    Some(lock) if lock.ts == start_ts => {
                        if lock.lock_type != LockType::Pessimistic {
                            locks.push(lock.info());
                            continue;
                        }
                        // A pessimistic lock was never prewritten: the txn
                        // cannot have committed; roll the key back.
                        self.mvcc.locks.remove(key);
                        self.mvcc.write_rollback(key, k, start_ts);
                        return Ok((Vec::new(), 0));
                    }
                    _ => match self.mvcc.txn_record(key, start_ts) {
                        TxnRecord::Single { commit_ts, write }
                            if write.kind != WriteKind::Rollback =>
                        {
                            return Ok((Vec::new(), commit_ts));
                        }
                        TxnRecord::Single { .. } | TxnRecord::OverlappedRollback => {
                            return Ok((Vec::new(), 0));
                        }
                        TxnRecord::None { .. } => {
                            // Protect against a late prewrite of this key.
                            self.mvcc.write_rollback(key, k, start_ts);
                            return Ok((Vec::new(), 0));
                        }
                    },
                }
            }
            Ok((locks, 0))
        })();
        fill_one!(resp, res, |(locks, commit_ts)| {
            resp.locks = locks;
            resp.commit_ts = commit_ts;
        });
        resp
    }

    /// `commands::ResolveLock` (region-wide, by `txn_infos` or one txn) and
    /// `commands::ResolveLockLite` (with `keys`).
    pub(crate) fn kv_resolve_lock(
        &mut self,
        store: u64,
        r: kvrpcpb::ResolveLockRequest,
    ) -> kvrpcpb::ResolveLockResponse {
        let mut resp = kvrpcpb::ResolveLockResponse::default();
        let mut undo = Undo::default();
        let res = (|| {
            let keys = r.keys.iter().map(|k| &k[..]);
            let region = self.txn_region(store, "resolve_lock", &r.context, keys, false)?;
            let status: Vec<(u64, u64)> = if r.txn_infos.is_empty() {
                vec![(r.start_version, r.commit_version)]
            } else {
                r.txn_infos.iter().map(|t| (t.txn, t.status)).collect()
            };
            if let Some(&(s, c)) = status.iter().find(|(s, c)| *c != 0 && c <= s) {
                return Err(abort(format!(
                    "invalid transaction tso with start_ts:{s}, commit_ts:{c}"
                )));
            }
            if !r.keys.is_empty() {
                let mut encoded = Vec::new();
                for k in &r.keys {
                    let key = txn_key(k);
                    check_key_in_region(&key, &region)?;
                    encoded.push(key);
                }
                for (k, key) in r.keys.iter().zip(&encoded) {
                    undo.save(&self.mvcc, key);
                    if r.commit_version == 0 {
                        match self.cleanup(key, k, r.start_version, 0) {
                            Ok(()) => {}
                            Err(CleanupErr::Committed(c)) => {
                                return Err(Self::committed_error(r.start_version, c, k));
                            }
                            Err(CleanupErr::Key(e)) => return Err(e.into()),
                        }
                    } else {
                        self.mvcc.commit(key, k, r.start_version, r.commit_version)?;
                    }
                }
                return Ok(());
            }
            let end = (!region.end_key.is_empty()).then_some(&region.end_key[..]);
            let range = (
                std::ops::Bound::Included(&region.start_key[..]),
                end.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            );
            let todo: Vec<(Vec<u8>, Lock, u64)> = self
                .mvcc
                .locks
                .range::<[u8], _>(range)
                .filter_map(|(k, l)| {
                    status.iter().find(|(s, _)| *s == l.ts).map(|(_, c)| (k.clone(), l.clone(), *c))
                })
                .collect();
            // The shared-locked keys where a resolved transaction holds a
            // share: only that share is committed or rolled back.
            let shares: Vec<(Vec<u8>, Bytes, u64, u64)> = self
                .mvcc
                .shared
                .range::<[u8], _>(range)
                .flat_map(|(k, sh)| {
                    status
                        .iter()
                        .filter(|(s, _)| sh.holders.contains_key(s))
                        .map(|(s, c)| (k.clone(), sh.user_key.clone(), *s, *c))
                })
                .collect();
            for (key, lock, commit_ts) in todo {
                undo.save(&self.mvcc, &key);
                if commit_ts == 0 {
                    self.mvcc.rollback_lock(&key, &lock);
                } else {
                    self.mvcc.commit(&key, &lock.user_key, lock.ts, commit_ts)?;
                }
            }
            for (key, user_key, start_ts, commit_ts) in shares {
                undo.save(&self.mvcc, &key);
                if commit_ts == 0 {
                    self.mvcc.rollback_share(&key, start_ts);
                } else {
                    self.mvcc.commit(&key, &user_key, start_ts, commit_ts)?;
                }
            }
            Ok(())
        })();
        if res.is_err() {
            undo.restore(&mut self.mvcc);
        }
        fill_one!(resp, res, |()| {});
        resp
    }

    /// `commands::TxnHeartBeat`.
    pub(crate) fn kv_txn_heart_beat(
        &mut self,
        store: u64,
        r: kvrpcpb::TxnHeartBeatRequest,
    ) -> kvrpcpb::TxnHeartBeatResponse {
        let mut resp = kvrpcpb::TxnHeartBeatResponse::default();
        let res = (|| {
            let keys = [&r.primary_lock[..]];
            let region = self.txn_region(store, "txn_heart_beat", &r.context, keys, false)?;
            let key = txn_key(&r.primary_lock);
            check_key_in_region(&key, &region)?;
            match self.mvcc.locks.get_mut(&key) {
                Some(lock) if lock.ts == r.start_version => {
                    if lock.ttl < r.advise_lock_ttl {
                        lock.ttl = r.advise_lock_ttl;
                    }
                    // TiKV pushes min_commit_ts only for a pipelined
                    // (generation > 0), non-async-commit lock.
                    if !lock.use_async_commit
                        && lock.generation > 0
                        && lock.min_commit_ts < r.min_commit_ts
                    {
                        lock.min_commit_ts = r.min_commit_ts;
                    }
                    Ok(lock.ttl)
                }
                _ => Err(txn_not_found(r.start_version, &r.primary_lock).into()),
            }
        })();
        fill_one!(resp, res, |ttl| resp.lock_ttl = ttl);
        resp
    }

    /// `commands::ScanLock` (`MvccReader::scan_locks`): locks with
    /// `ts <= max_version` in `[start_key, end_key)` of the region; a zero
    /// `limit` means no limit.
    pub(crate) fn kv_scan_lock(
        &mut self,
        store: u64,
        r: kvrpcpb::ScanLockRequest,
    ) -> kvrpcpb::ScanLockResponse {
        let mut resp = kvrpcpb::ScanLockResponse::default();
        let res = (|| {
            let mut api_keys = vec![&r.start_key[..]];
            if !r.end_key.is_empty() {
                api_keys.push(&r.end_key[..]);
            }
            let region = self.txn_region(store, "scan_lock", &r.context, api_keys, true)?;
            let lower = txn_key(&r.start_key).max(region.start_key.to_vec());
            check_key_seekable(&lower, &region)?;
            let upper = match (r.end_key.is_empty(), region.end_key.is_empty()) {
                (true, true) => None,
                (true, false) => Some(region.end_key.to_vec()),
                (false, true) => Some(txn_key(&r.end_key)),
                (false, false) => Some(txn_key(&r.end_key).min(region.end_key.to_vec())),
            };
            self.mvcc.update_max_ts(r.max_version);
            if upper.as_ref().is_some_and(|u| *u <= lower) {
                return Ok(Vec::new());
            }
            let range = (
                std::ops::Bound::Included(&lower[..]),
                upper.as_deref().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            );
            let limit = if r.limit == 0 { usize::MAX } else { r.limit as usize };
            // Both lock kinds in key order. A shared-locked key answers one
            // `SharedLock` info with its holders at or below `max_version`,
            // each counted against the limit and the last key's holders cut
            // to what is left of it (`scan_locks_from_storage`).
            let exclusive = self.mvcc.locks.range::<[u8], _>(range).map(|(k, l)| (k, Ok(l)));
            let shared = self.mvcc.shared.range::<[u8], _>(range).map(|(k, s)| (k, Err(s)));
            let mut by_key: Vec<_> = exclusive.chain(shared).collect();
            by_key.sort_by(|a, b| a.0.cmp(b.0));
            let mut locks = Vec::new();
            let mut count = 0usize;
            for (_, entry) in by_key {
                if count >= limit {
                    break;
                }
                match entry {
                    Ok(l) if l.ts <= r.max_version => {
                        locks.push(l.info());
                        count += 1;
                    }
                    Ok(_) => {}
                    Err(s) => {
                        let holders: Vec<&Lock> = s
                            .holders
                            .values()
                            .filter(|l| l.ts <= r.max_version)
                            .take(limit - count)
                            .collect();
                        if !holders.is_empty() {
                            count += holders.len();
                            locks.push(s.info_of(holders.into_iter()));
                        }
                    }
                }
            }
            Ok(locks)
        })();
        fill_one!(resp, res, |locks| resp.locks = locks);
        resp
    }

    /// `commands::AcquirePessimisticLock` answered at once: a conflicting
    /// lock is reported as `KeyIsLocked` without waiting (what TiKV answers
    /// a request with `wait_timeout < 0`). Waiting is
    /// [`crate::Cluster::handle_kv_waiting`]'s part.
    pub(crate) fn kv_pessimistic_lock(
        &mut self,
        store: u64,
        r: kvrpcpb::PessimisticLockRequest,
    ) -> kvrpcpb::PessimisticLockResponse {
        match self.acquire_pessimistic_lock(store, &r) {
            Acquired::Answer(resp) => *resp,
            Acquired::Blocked { lock, .. } => failed_lock_response(
                &r,
                kvrpcpb::KeyError { locked: Some(lock), ..Default::default() },
            ),
        }
    }

    /// `commands::AcquirePessimisticLock` (`process_write`): every key or
    /// none is locked; meeting another transaction's lock stops the command
    /// with nothing written and reports that lock, so the caller may answer
    /// `KeyIsLocked` or wait for it.
    pub(crate) fn acquire_pessimistic_lock(
        &mut self,
        store: u64,
        r: &kvrpcpb::PessimisticLockRequest,
    ) -> Acquired {
        let mut undo = Undo::default();
        let res = self.pessimistic_lock(store, r, &mut undo);
        let mut resp = kvrpcpb::PessimisticLockResponse::default();
        match res {
            Ok(results) => {
                if force_lock(r) {
                    resp.results = results.into_iter().map(LockKeyResult::into_pb).collect();
                } else {
                    let (values, not_founds) = LockKeyResult::into_legacy(results);
                    resp.values = values;
                    resp.not_founds = not_founds;
                }
            }
            Err(Fail::Region(e)) => {
                undo.restore(&mut self.mvcc);
                resp.region_error = Some(*e);
            }
            Err(Fail::Key(e)) => {
                undo.restore(&mut self.mvcc);
                if let Some(lock) = e.locked {
                    let key = txn_key(&lock.key);
                    // An exclusive request meeting shared locks not yet
                    // shrink-only marks them so (that much is written) and
                    // answers `KeyIsLocked` at once (TiKV's
                    // `NotInShrinkMode`): its retry waits for the holders.
                    let exclusive = r.mutations.iter().any(|m| {
                        m.key == lock.key && m.op != kvrpcpb::Op::SharedPessimisticLock as i32
                    });
                    if let Some(shared) = self.mvcc.shared.get_mut(&key)
                        && exclusive
                        && !shared.shrink_only
                    {
                        shared.shrink_only = true;
                        return Acquired::Answer(Box::new(failed_lock_response(
                            r,
                            locked_info(lock),
                        )));
                    }
                    return Acquired::Blocked { key, lock };
                }
                // Key errors other than a lock end the whole request, in
                // both modes (`future_acquire_pessimistic_lock`).
                resp.errors = vec![*e];
            }
        }
        Acquired::Answer(Box::new(resp))
    }

    fn pessimistic_lock(
        &mut self,
        store: u64,
        r: &kvrpcpb::PessimisticLockRequest,
        undo: &mut Undo,
    ) -> Result<Vec<LockKeyResult>, Fail> {
        let keys = r.mutations.iter().map(|m| &m.key[..]);
        let region = self.txn_region(store, "acquire_pessimistic_lock", &r.context, keys, false)?;
        let mut encoded = Vec::new();
        for m in &r.mutations {
            let key = txn_key(&m.key);
            check_key_in_region(&key, &region)?;
            encoded.push(key);
        }
        let allow_lock_with_conflict = force_lock(r);
        if allow_lock_with_conflict && r.mutations.len() > 1 {
            return Err(abort(
                "multiple keys in a single request with allowed_lock_with_conflict set is not allowed"
                    .to_owned(),
            ));
        }
        let mut results = Vec::new();
        for (m, key) in r.mutations.iter().zip(&encoded) {
            results.push(self.lock_one_key(r, m, key, allow_lock_with_conflict, undo)?);
        }
        Ok(results)
    }

    /// `actions::acquire_pessimistic_lock` for one key, exclusive or in
    /// share mode (`Op::SharedPessimisticLock`).
    fn lock_one_key(
        &mut self,
        r: &kvrpcpb::PessimisticLockRequest,
        m: &kvrpcpb::Mutation,
        key: &[u8],
        allow_lock_with_conflict: bool,
        undo: &mut Undo,
    ) -> Result<LockKeyResult, Fail> {
        let start_ts = r.start_version;
        if r.lock_only_if_exists && !r.return_values {
            return Err(abort(format!(
                "LockIfExistsFailed {{ start_ts: {start_ts}, key: {} }}",
                hex(&m.key)
            )));
        }
        let should_not_exist = m.assertion == kvrpcpb::Assertion::NotExist as i32;
        if r.return_values || r.check_existence || should_not_exist {
            self.mvcc.update_max_ts(r.for_update_ts);
        }
        let already_exist = || -> Fail {
            kvrpcpb::KeyError {
                already_exist: Some(kvrpcpb::AlreadyExist { key: m.key.clone() }),
                ..Default::default()
            }
            .into()
        };
        let mut for_update_ts = r.for_update_ts;
        // Holding a lock of this transaction (or none) nothing commits on
        // the key after its latest write, so the latest committed value is
        // the one at `for_update_ts`.
        let value = self.mvcc.committed_value(key, u64::MAX).map(|(v, _)| v);
        let is_shared = m.op == kvrpcpb::Op::SharedPessimisticLock as i32;
        let flaw = self.mvcc.shared_lock_flaw;
        if let Some(shared) = self.mvcc.shared.get(key)
            && (is_shared || flaw != Some(SharedLockFlaw::ExclusiveOverShares))
        {
            if !is_shared || (shared.shrink_only && !shared.holders.contains_key(&start_ts)) {
                // An exclusive request waits for every holder (the caller
                // marks the key shrink-only first); a new holder may not
                // join a shrink-only key. There is no upgrade of a share.
                return Err(locked_info(shared.info()).into());
            }
            if let Some(lock) = shared.holders.get(&start_ts) {
                // `handle_existing_shared_lock`: a newer for_update_ts
                // refreshes the sub-lock; no value is loaded for it.
                if for_update_ts > lock.for_update_ts {
                    undo.save(&self.mvcc, key);
                    let lock = Lock {
                        primary: r.primary_lock.clone(),
                        ttl: r.lock_ttl,
                        for_update_ts,
                        min_commit_ts: r.min_commit_ts,
                        ..lock.clone()
                    };
                    if let Some(shared) = self.mvcc.shared.get_mut(key) {
                        shared.holders.insert(start_ts, lock);
                    }
                }
                return Ok(LockKeyResult::new(r, None, None));
            }
        }
        match self.mvcc.locks.get(key).cloned() {
            // A share request waits for any exclusive lock, its own included.
            Some(lock)
                if is_shared
                    && !(flaw == Some(SharedLockFlaw::ShareOverExclusive)
                        && lock.ts != start_ts) =>
            {
                return Err(locked(&lock).into());
            }
            Some(_) if is_shared => {}
            Some(lock) if lock.ts != start_ts => return Err(locked(&lock).into()),
            Some(lock) if lock.lock_type != LockType::Pessimistic => {
                return Err(abort(format!(
                    "LockTypeNotMatch {{ start_ts: {start_ts}, key: {}, pessimistic: false }}",
                    hex(&m.key)
                )));
            }
            Some(mut lock) => {
                // `handle_existing_exclusive_lock`: a force-lock request
                // older than the lock reports the lock's for_update_ts.
                let conflict_ts = (allow_lock_with_conflict && for_update_ts < lock.for_update_ts)
                    .then_some(lock.for_update_ts);
                if let Some(ts) = conflict_ts {
                    for_update_ts = ts;
                }
                if should_not_exist && value.is_some() {
                    let newer = self.mvcc.data_write(key, u64::MAX);
                    if let Some((c, w)) = newer.filter(|(c, _)| *c > r.for_update_ts) {
                        return Err(pessimistic_retry(r, &m.key, w.start_ts, c).into());
                    }
                    return Err(already_exist());
                }
                if for_update_ts > lock.for_update_ts {
                    undo.save(&self.mvcc, key);
                    lock.for_update_ts = for_update_ts;
                    self.mvcc.locks.insert(key.to_vec(), lock);
                }
                return Ok(LockKeyResult::new(r, conflict_ts, value));
            }
            None => {}
        }
        let mut conflict = None;
        if let Some((commit_ts, w)) = self.mvcc.latest_write(key)
            && commit_ts > for_update_ts
        {
            if !allow_lock_with_conflict {
                return Err(pessimistic_retry(r, &m.key, w.start_ts, commit_ts).into());
            }
            // Force-lock mode locks anyway, at the conflicting commit ts.
            conflict = Some((w.start_ts, commit_ts));
            for_update_ts = commit_ts;
        }
        match self.mvcc.txn_record(key, start_ts) {
            TxnRecord::Single { write, .. } if write.kind == WriteKind::Rollback => {
                return Err(abort(format!(
                    "PessimisticLockRolledBack {{ start_ts: {start_ts}, key: {} }}",
                    hex(&m.key)
                )));
            }
            TxnRecord::OverlappedRollback => {
                return Err(abort(format!(
                    "PessimisticLockRolledBack {{ start_ts: {start_ts}, key: {} }}",
                    hex(&m.key)
                )));
            }
            _ => {}
        }
        if should_not_exist && value.is_some() {
            // A newer version that fails the check asks for a retry instead.
            if let Some((s, c)) = conflict {
                return Err(pessimistic_retry(r, &m.key, s, c).into());
            }
            return Err(already_exist());
        }
        let lock = Lock {
            user_key: m.key.clone(),
            lock_type: LockType::Pessimistic,
            primary: r.primary_lock.clone(),
            ts: start_ts,
            ttl: r.lock_ttl,
            for_update_ts,
            txn_size: 0,
            min_commit_ts: r.min_commit_ts,
            use_async_commit: false,
            secondaries: Vec::new(),
            generation: 0,
        };
        if is_shared {
            // Joins the key's holders (or starts them), whatever
            // `lock_only_if_exists` says, as TiKV does.
            undo.save(&self.mvcc, key);
            let shared = self.mvcc.shared.entry(key.to_vec()).or_insert_with(|| SharedLocks {
                user_key: m.key.clone(),
                shrink_only: false,
                holders: Default::default(),
            });
            shared.holders.insert(start_ts, lock);
        } else if !r.lock_only_if_exists || value.is_some() {
            undo.save(&self.mvcc, key);
            self.mvcc.locks.insert(key.to_vec(), lock);
        } else if let Some((s, c)) = conflict {
            return Err(pessimistic_retry(r, &m.key, s, c).into());
        }
        Ok(LockKeyResult::new(r, conflict.map(|(_, c)| c), value))
    }

    /// `commands::PessimisticRollback`: drops this transaction's pessimistic
    /// locks with `for_update_ts <=` the request's, on the given keys or,
    /// with no keys, on every key of the region
    /// (`PessimisticRollbackReadPhase` scanning the region's locks). No
    /// rollback record is written (`unlock_key`).
    pub(crate) fn kv_pessimistic_rollback(
        &mut self,
        store: u64,
        r: kvrpcpb::PessimisticRollbackRequest,
    ) -> kvrpcpb::PessimisticRollbackResponse {
        let mut resp = kvrpcpb::PessimisticRollbackResponse::default();
        let res = (|| {
            let keys = r.keys.iter().map(|k| &k[..]);
            let region = self.txn_region(store, "pessimistic_rollback", &r.context, keys, false)?;
            let drops = |l: &Lock| {
                l.ts == r.start_version
                    && l.lock_type == LockType::Pessimistic
                    && l.for_update_ts <= r.for_update_ts
            };
            let mut encoded = Vec::new();
            for k in &r.keys {
                let key = txn_key(k);
                check_key_in_region(&key, &region)?;
                encoded.push(key);
            }
            if r.keys.is_empty() {
                let end = (!region.end_key.is_empty()).then_some(&region.end_key[..]);
                let range = (
                    std::ops::Bound::Included(&region.start_key[..]),
                    end.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
                );
                let exclusive = self.mvcc.locks.range::<[u8], _>(range).filter(|(_, l)| drops(l));
                let shared = self
                    .mvcc
                    .shared
                    .range::<[u8], _>(range)
                    .filter(|(_, s)| s.holders.get(&r.start_version).is_some_and(drops));
                let mut keys: Vec<Vec<u8>> = exclusive
                    .map(|(k, _)| k.clone())
                    .chain(shared.map(|(k, _)| k.clone()))
                    .collect();
                keys.sort();
                encoded = keys;
            }
            for key in &encoded {
                if self.mvcc.locks.get(key).is_some_and(drops) {
                    self.mvcc.locks.remove(key);
                }
                // Only this transaction's share of a shared-locked key.
                let share = self.mvcc.shared.get(key).and_then(|s| s.holders.get(&r.start_version));
                if share.is_some_and(drops) {
                    self.mvcc.remove_share(key, r.start_version, 0);
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => {}
            Err(Fail::Region(e)) => resp.region_error = Some(*e),
            Err(Fail::Key(e)) => resp.errors = vec![*e],
        }
        resp
    }
}

/// Is this request in the force-lock wake-up mode (TiKV's
/// `allow_lock_with_conflict`)?
pub(crate) fn force_lock(r: &kvrpcpb::PessimisticLockRequest) -> bool {
    r.wake_up_mode == kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32
}

/// The answer to a lock request that failed with `e` as a whole (no wait, a
/// timeout, a deadlock): in force-lock mode the key's result is
/// `LockResultFailed` beside the error (`PessimisticLockResults::into_pb`).
pub(crate) fn failed_lock_response(
    r: &kvrpcpb::PessimisticLockRequest,
    e: kvrpcpb::KeyError,
) -> kvrpcpb::PessimisticLockResponse {
    let mut resp = kvrpcpb::PessimisticLockResponse { errors: vec![e], ..Default::default() };
    if force_lock(r) {
        resp.results = vec![kvrpcpb::PessimisticLockKeyResult {
            r#type: kvrpcpb::PessimisticLockKeyResultType::LockResultFailed as i32,
            ..Default::default()
        }];
    }
    resp
}

/// What `AcquirePessimisticLock` did.
pub(crate) enum Acquired {
    /// The answer (locked, or failed with an error other than a lock).
    Answer(Box<kvrpcpb::PessimisticLockResponse>),
    /// Met another transaction's lock on `key` (region key space); nothing
    /// was written.
    Blocked { key: Vec<u8>, lock: kvrpcpb::LockInfo },
}

/// One key's result (TiKV's `PessimisticLockKeyResult`, successes only).
enum LockKeyResult {
    Empty,
    Value(Option<Bytes>),
    Existence(bool),
    LockedWithConflict { value: Option<Bytes>, conflict_ts: u64 },
}

impl LockKeyResult {
    /// `PessimisticLockKeyResult::new_success`.
    fn new(
        r: &kvrpcpb::PessimisticLockRequest,
        conflict_ts: Option<u64>,
        value: Option<Bytes>,
    ) -> LockKeyResult {
        match conflict_ts {
            Some(conflict_ts) => LockKeyResult::LockedWithConflict { value, conflict_ts },
            None if r.return_values => LockKeyResult::Value(value),
            None if r.check_existence => LockKeyResult::Existence(value.is_some()),
            None => LockKeyResult::Empty,
        }
    }

    /// `PessimisticLockResults::into_pb` (force-lock mode).
    fn into_pb(self) -> kvrpcpb::PessimisticLockKeyResult {
        use kvrpcpb::PessimisticLockKeyResultType as T;
        let (t, value, existence, ts) = match self {
            LockKeyResult::Empty => (T::LockResultNormal, None, false, 0),
            LockKeyResult::Value(v) => {
                let exists = v.is_some();
                (T::LockResultNormal, v, exists, 0)
            }
            LockKeyResult::Existence(e) => (T::LockResultNormal, None, e, 0),
            LockKeyResult::LockedWithConflict { value, conflict_ts } => {
                let exists = value.is_some();
                (T::LockResultLockedWithConflict, value, exists, conflict_ts)
            }
        };
        kvrpcpb::PessimisticLockKeyResult {
            r#type: t as i32,
            value: value.unwrap_or_default(),
            existence,
            locked_with_conflict_ts: ts,
            ..Default::default()
        }
    }

    /// `PessimisticLockResults::into_legacy_values_and_not_founds`: values
    /// only when asked for, `not_founds` when values or existence were.
    fn into_legacy(results: Vec<LockKeyResult>) -> (Vec<Bytes>, Vec<bool>) {
        let mut values = Vec::new();
        let mut not_founds = Vec::new();
        for res in results {
            match res {
                LockKeyResult::Value(v) => {
                    not_founds.push(v.is_none());
                    values.push(v.unwrap_or_default());
                }
                LockKeyResult::Existence(e) => not_founds.push(!e),
                // Legacy mode never locks with conflict.
                LockKeyResult::Empty | LockKeyResult::LockedWithConflict { .. } => {}
            }
        }
        (values, not_founds)
    }
}
