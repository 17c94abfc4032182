//! Lock waiting for `AcquirePessimisticLock`, following TiKV's lock wait
//! queues (`src/storage/lock_manager/lock_waiting_queue.rs`), waiter
//! manager (`src/server/lock_manager/waiter_manager.rs`) and the scheduler's
//! wake-up (`Scheduler::on_release_locks`), as explicit model state so the
//! model stays deterministic and synchronous:
//!
//! - A request that meets another transaction's lock and may wait
//!   (`wait_timeout >= 0`) is parked: [`crate::Cluster::handle_kv_waiting`]
//!   answers [`KvAnswer::Waiting`] with a [`LockWaitToken`]. Waiters queue
//!   per key, ordered by `start_ts` (then arrival), as TiKV's priority
//!   queue orders them. Before parking, the deadlock detector (the
//!   `deadlock` module, TiKV's `DetectTable`) checks the new wait (unless
//!   `is_first_lock`, which TiKV skips: a transaction holding no lock
//!   closes no cycle); a cycle answers `Deadlock` at once.
//! - After every command, a key whose blocking lock is gone wakes the head
//!   of its queue. Legacy mode (`WakeUpModeNormal`): the head answers a
//!   `WriteConflict` (reason `PessimisticRetry`, the releasing
//!   transaction's commit ts on the key or 0 for a rollback), and the
//!   waiters queued before that wake-up follow after [`WAKE_UP_DELAY`]
//!   (`delayed_notify_all`, even if the key was locked again meanwhile):
//!   legacy ones with the same conflict, up to the first force-lock one,
//!   which resumes.
//!   Force-lock mode (`WakeUpModeForceLock`): the head resumes
//!   (`AcquirePessimisticLockResumed`) and locks the key, even over a newer
//!   commit (`LockedWithConflict`); meeting a lock again, it keeps waiting.
//!   The waiters left behind now wait for the new holder
//!   (`update_lock_wait`); a force-lock waiter's new wait is checked for
//!   deadlocks again.
//! - A waiter whose deadline passes answers `KeyIsLocked` with the lock it
//!   waited for and `duration_to_last_update_ms` (`cancel_for_timeout`).
//! - Shared locks: a request blocked by a key's shared locks waits for all
//!   of them (the key is released when its last holder commits or rolls
//!   back, and the wake-up names that holder); its wait-for edges go to
//!   every holder. An exclusive request that first meets them is not
//!   parked: it marks them shrink-only and answers `KeyIsLocked` (TiKV's
//!   `NotInShrinkMode` path), so only its retry waits.
//!
//! Time is the caller's: it calls [`crate::Cluster::advance_lock_waits`]
//! with its clock (wall time in the gRPC face, virtual time in a
//! simulation) at [`crate::Cluster::next_lock_wait_deadline`], and collects
//! the answers of woken waiters with
//! [`crate::Cluster::take_lock_wait_answer`].

use std::collections::{BTreeMap, BTreeSet};

use tikv_core::rpc::KvResponse;
use tikv_core::time::{Duration, Instant};
use tikv_proto::kvrpcpb;

use crate::cluster::State;
use crate::deadlock::{self, WaitEdge};
use crate::mvcc::{TxnRecord, WriteKind};
use crate::txn::{Acquired, failed_lock_response, force_lock};

/// TiKV's `pessimistic-txn.wait-for-lock-timeout` default: the ceiling of
/// every lock wait.
pub const WAIT_FOR_LOCK_TIMEOUT: Duration = Duration::from_millis(1000);

/// TiKV's `pessimistic-txn.wake-up-delay-duration` default: how long the
/// other waiters of a key wait after its head was woken in legacy mode.
pub const WAKE_UP_DELAY: Duration = Duration::from_millis(20);

/// How long a request may wait (`WaitTimeout::from_encoded`, then
/// `into_duration_with_ceiling`): negative is no wait, 0 the ceiling,
/// otherwise the request's milliseconds up to the ceiling.
pub fn lock_wait_timeout(encoded: i64) -> Option<Duration> {
    match u64::try_from(encoded) {
        Err(_) => None,
        Ok(0) => Some(WAIT_FOR_LOCK_TIMEOUT),
        Ok(ms) => Some(Duration::from_millis(ms).min(WAIT_FOR_LOCK_TIMEOUT)),
    }
}

/// Names one parked `PessimisticLock` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockWaitToken(u64);

/// What [`crate::Cluster::handle_kv_waiting`] did with a request.
#[derive(Debug)]
pub enum KvAnswer {
    /// Answered now.
    Ready(KvResponse),
    /// A `PessimisticLock` parked until a wake-up or its timeout; its answer
    /// comes from [`crate::Cluster::take_lock_wait_answer`].
    Waiting(LockWaitToken),
}

/// One parked request.
#[derive(Debug)]
struct Waiter {
    store: u64,
    req: kvrpcpb::PessimisticLockRequest,
    /// The waited key in region key space.
    key: Vec<u8>,
    /// The lock it waits for (updated when the key changes hands).
    lock: kvrpcpb::LockInfo,
    deadline: Instant,
    /// When `lock` last changed (`last_updated_time`), for the timeout's
    /// `duration_to_last_update_ms`.
    last_updated: Option<Instant>,
    /// The key's legacy wake-up count when it was queued: a delayed
    /// wake-up wakes only the waiters queued before it.
    wake_up_index: u64,
}

/// The wait queue of one key.
#[derive(Debug, Default)]
struct KeyQueue {
    /// (start_ts, token): the smallest start_ts is woken first.
    queue: BTreeSet<(u64, u64)>,
    /// The ts of the lock the queue is blocked by; 0 while the key is
    /// unlocked (after a legacy wake-up).
    holder: u64,
    /// Legacy wake-ups so far (`legacy_wake_up_index`).
    wake_ups: u64,
    /// The last release: (start_ts, commit_ts) for delayed legacy answers.
    last_conflict: (u64, u64),
}

/// A scheduled `delayed_notify_all` (at most one per key: a later legacy
/// wake-up postpones it, as `handle_delayed_wake_up` does).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DelayedWakeUp {
    due: Instant,
    key: Vec<u8>,
}

/// All lock waits of the cluster.
#[derive(Debug, Default)]
pub(crate) struct LockWaits {
    next_token: u64,
    waiters: BTreeMap<u64, Waiter>,
    keys: BTreeMap<Vec<u8>, KeyQueue>,
    delayed: BTreeSet<DelayedWakeUp>,
    answers: BTreeMap<u64, kvrpcpb::PessimisticLockResponse>,
}

impl LockWaits {
    /// The wait-for edges, in token order: one per waiter but those sent
    /// as a transaction's first lock, which TiKV never registers with the
    /// detector; `except` leaves one waiter out.
    fn edges(&self, except: Option<u64>) -> Vec<WaitEdge> {
        self.waiters
            .iter()
            .filter(|(t, w)| Some(**t) != except && !w.req.is_first_lock)
            .flat_map(|(_, w)| edges_of(w))
            .collect()
    }

    /// Removes a waiter from its key's queue (the queue goes when empty).
    fn unqueue(&mut self, token: u64) -> Option<Waiter> {
        let w = self.waiters.remove(&token)?;
        if let Some(q) = self.keys.get_mut(&w.key) {
            q.queue.remove(&(w.req.start_version, token));
            if q.queue.is_empty() {
                self.keys.remove(&w.key);
            }
        }
        Some(w)
    }
}

/// The wait-for edges of a waiter: to the lock's transaction, or to every
/// holder of the shared locks it waits for (TiKV's detector registers one
/// wait-for entry per shared holder).
fn edges_of(w: &Waiter) -> Vec<WaitEdge> {
    let edge = |wait_for_txn| WaitEdge {
        txn: w.req.start_version,
        wait_for_txn,
        key: w.lock.key.clone(),
        resource_group_tag: w
            .req
            .context
            .as_ref()
            .map(|c| c.resource_group_tag.clone())
            .unwrap_or_default(),
    };
    if w.lock.lock_type == kvrpcpb::Op::SharedLock as i32 {
        w.lock.shared_lock_infos.iter().map(|h| edge(h.lock_version)).collect()
    } else {
        vec![edge(w.lock.lock_version)]
    }
}

/// The first deadlock the waiter's new edges close.
fn detect_any(edges: &[WaitEdge], w: &Waiter) -> Option<deadlock::Cycle> {
    edges_of(w).iter().find_map(|new| deadlock::detect(edges, new))
}

/// [`KeyQueue::holder`] for the key's current lock: the shared locks of a
/// key count as one holder while any transaction holds a share.
const SHARED_HOLDER: u64 = u64::MAX;

fn holder_of(lock: &kvrpcpb::LockInfo) -> u64 {
    if lock.lock_type == kvrpcpb::Op::SharedLock as i32 { SHARED_HOLDER } else { lock.lock_version }
}

impl State {
    /// `AcquirePessimisticLock` that may wait; `now` starts its timeout.
    pub(crate) fn pessimistic_lock_waiting(
        &mut self,
        store: u64,
        r: kvrpcpb::PessimisticLockRequest,
        now: Instant,
    ) -> KvAnswer {
        let Some(wait) = lock_wait_timeout(r.wait_timeout) else {
            return KvAnswer::Ready(KvResponse::PessimisticLock(Box::new(
                self.kv_pessimistic_lock(store, r),
            )));
        };
        let token = self.lock_waits.next_token;
        self.lock_waits.next_token += 1;
        match self.run_or_park(token, store, r, now + wait, now) {
            Some(resp) => KvAnswer::Ready(KvResponse::PessimisticLock(Box::new(resp))),
            None => KvAnswer::Waiting(LockWaitToken(token)),
        }
    }

    /// Runs the request; parks it under `token` when it meets a lock (then
    /// `None`), unless the wait would deadlock.
    fn run_or_park(
        &mut self,
        token: u64,
        store: u64,
        r: kvrpcpb::PessimisticLockRequest,
        deadline: Instant,
        now: Instant,
    ) -> Option<kvrpcpb::PessimisticLockResponse> {
        let (key, lock) = match self.acquire_pessimistic_lock(store, &r) {
            Acquired::Answer(resp) => return Some(*resp),
            Acquired::Blocked { key, lock } => (key, lock),
        };
        if deadline <= now {
            let e = kvrpcpb::KeyError { locked: Some(lock), ..Default::default() };
            return Some(failed_lock_response(&r, e));
        }
        let queue = self.lock_waits.keys.entry(key.clone()).or_default();
        queue.holder = holder_of(&lock);
        let wake_up_index = queue.wake_ups;
        let waiter =
            Waiter { store, req: r, key, lock, deadline, last_updated: None, wake_up_index };
        if !waiter.req.is_first_lock
            && let Some(cycle) = detect_any(&self.lock_waits.edges(None), &waiter)
        {
            if self.lock_waits.keys.get(&waiter.key).is_some_and(|q| q.queue.is_empty()) {
                self.lock_waits.keys.remove(&waiter.key);
            }
            return Some(deadlock_response(&waiter, cycle));
        }
        let queue = self.lock_waits.keys.entry(waiter.key.clone()).or_default();
        queue.queue.insert((waiter.req.start_version, token));
        self.lock_waits.waiters.insert(token, waiter);
        None
    }

    /// Wakes the waiters of every key whose blocking lock is gone (called
    /// after every command; nothing to do without waiters).
    pub(crate) fn wake_lock_waiters(&mut self, now: Instant) {
        let shared_released = std::mem::take(&mut self.mvcc.shared_released);
        if self.lock_waits.keys.is_empty() {
            return;
        }
        let keys: Vec<Vec<u8>> = self.lock_waits.keys.keys().cloned().collect();
        for key in keys {
            let current = self.current_lock(&key).map(|info| (holder_of(&info), info));
            let Some(q) = self.lock_waits.keys.get_mut(&key) else { continue };
            match (q.holder, current) {
                (held, Some((ts, _))) if held == ts => continue,
                // Unlocked after a legacy wake-up, now taken: the waiters
                // wait for the new holder.
                (0, Some((ts, info))) => {
                    q.holder = ts;
                    self.update_lock_wait(&key, &info, now);
                }
                (0, None) => {}
                // The last share left: the wake-up names the transaction
                // whose commit or rollback released it.
                (SHARED_HOLDER, _) => {
                    let (start_ts, commit_ts) =
                        shared_released.get(&key).copied().unwrap_or_default();
                    self.on_lock_released(&key, start_ts, commit_ts, now);
                }
                (released, _) => {
                    let commit_ts = match self.mvcc.txn_record(&key, released) {
                        TxnRecord::Single { commit_ts, write }
                            if write.kind != WriteKind::Rollback =>
                        {
                            commit_ts
                        }
                        _ => 0,
                    };
                    self.on_lock_released(&key, released, commit_ts, now);
                }
            }
        }
    }

    /// The lock on a key now: an exclusive lock or the key's shared locks.
    fn current_lock(&self, key: &[u8]) -> Option<kvrpcpb::LockInfo> {
        match self.mvcc.locks.get(key) {
            Some(l) => Some(l.info()),
            None => self.mvcc.shared.get(key).map(|s| s.info()),
        }
    }

    /// `pop_for_waking_up` and the wake-up of the popped head.
    fn on_lock_released(&mut self, key: &[u8], start_ts: u64, commit_ts: u64, now: Instant) {
        let Some(q) = self.lock_waits.keys.get_mut(key) else { return };
        q.last_conflict = (start_ts, commit_ts);
        q.holder = 0;
        // Heads that resume and fail leave the key free: the next one goes.
        while let Some(&(_, token)) = self.lock_waits.keys.get(key).and_then(|q| q.queue.first()) {
            let Some(w) = self.lock_waits.unqueue(token) else { break };
            if force_lock(&w.req) {
                self.resume(token, w, now);
            } else {
                let e = crate::txn::pessimistic_retry(&w.req, &w.lock.key, start_ts, commit_ts);
                self.lock_waits.answers.insert(token, lock_error_response(e));
                if let Some(q) = self.lock_waits.keys.get_mut(key) {
                    q.wake_ups += 1;
                    self.lock_waits.delayed.retain(|d| d.key != key);
                    self.lock_waits
                        .delayed
                        .insert(DelayedWakeUp { due: now + WAKE_UP_DELAY, key: key.to_vec() });
                }
                break;
            }
            if self.current_lock(key).is_some() {
                break;
            }
        }
        if let Some(info) = self.current_lock(key)
            && let Some(q) = self.lock_waits.keys.get_mut(key)
        {
            q.holder = holder_of(&info);
            self.update_lock_wait(key, &info, now);
        }
    }

    /// `AcquirePessimisticLockResumed`: runs a woken force-lock request
    /// again; meeting a lock, it waits again under the same token.
    fn resume(&mut self, token: u64, w: Waiter, now: Instant) {
        if let Some(resp) = self.run_or_park(token, w.store, w.req, w.deadline, now) {
            self.lock_waits.answers.insert(token, resp);
        }
    }

    /// `update_lock_wait`: the waiters of `key` now wait for `lock`. A
    /// force-lock waiter's new wait is checked for deadlocks again
    /// (`handle_update_wait_for`; legacy waiters are not).
    fn update_lock_wait(&mut self, key: &[u8], lock: &kvrpcpb::LockInfo, now: Instant) {
        let Some(q) = self.lock_waits.keys.get(key) else { return };
        let tokens: Vec<u64> = q.queue.iter().map(|(_, t)| *t).collect();
        for token in tokens {
            let Some(w) = self.lock_waits.waiters.get_mut(&token) else { continue };
            if w.lock.lock_version == lock.lock_version {
                continue;
            }
            w.lock = lock.clone();
            w.last_updated = Some(now);
            if !force_lock(&w.req) || w.req.is_first_lock {
                continue;
            }
            let new = edges_of(w);
            let edges = self.lock_waits.edges(Some(token));
            if let Some(cycle) = new.iter().find_map(|e| deadlock::detect(&edges, e))
                && let Some(w) = self.lock_waits.unqueue(token)
            {
                self.lock_waits.answers.insert(token, deadlock_response(&w, cycle));
            }
        }
    }

    /// Fires the delayed wake-ups and timeouts due at `now`.
    pub(crate) fn advance_lock_waits(&mut self, now: Instant) {
        while let Some(d) = self.lock_waits.delayed.first().filter(|d| d.due <= now).cloned() {
            self.lock_waits.delayed.remove(&d);
            self.delayed_notify_all(&d.key, now);
        }
        let mut due: Vec<(Instant, u64)> = self
            .lock_waits
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(t, w)| (w.deadline, *t))
            .collect();
        due.sort_unstable();
        for (_, token) in due {
            if let Some(w) = self.lock_waits.unqueue(token) {
                // `cancel_for_timeout`: how long ago the wait last changed
                // (at least 1 ms), 0 when it never did.
                let mut lock = w.lock;
                lock.duration_to_last_update_ms = w.last_updated.map_or(0, |t| {
                    let ms = now.saturating_duration_since(t).as_millis();
                    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
                });
                let e = kvrpcpb::KeyError { locked: Some(lock), ..Default::default() };
                self.lock_waits.answers.insert(token, failed_lock_response(&w.req, e));
            }
        }
    }

    /// `delayed_notify_all`: in queue order, the waiters queued before the
    /// key's latest legacy wake-up are woken, legacy ones with the last
    /// release's conflict, up to the first force-lock one, which resumes
    /// (whether or not the key was locked again meanwhile).
    fn delayed_notify_all(&mut self, key: &[u8], now: Instant) {
        let Some(q) = self.lock_waits.keys.get(key) else { return };
        let (start_ts, commit_ts) = q.last_conflict;
        let latest = q.wake_ups;
        let tokens: Vec<u64> = q.queue.iter().map(|(_, t)| *t).collect();
        for token in tokens {
            if self.lock_waits.waiters.get(&token).is_none_or(|w| w.wake_up_index >= latest) {
                break;
            }
            let Some(w) = self.lock_waits.unqueue(token) else { break };
            if force_lock(&w.req) {
                self.resume(token, w, now);
                break;
            }
            let e = crate::txn::pessimistic_retry(&w.req, &w.lock.key, start_ts, commit_ts);
            self.lock_waits.answers.insert(token, lock_error_response(e));
        }
    }

    /// The earliest pending timeout or delayed wake-up.
    pub(crate) fn next_lock_wait_deadline(&self) -> Option<Instant> {
        let timeout = self.lock_waits.waiters.values().map(|w| w.deadline).min();
        let delayed = self.lock_waits.delayed.first().map(|d| d.due);
        tikv_core::time::earliest(timeout, delayed)
    }

    /// The answer of a woken or timed-out waiter, once.
    pub(crate) fn take_lock_wait_answer(
        &mut self,
        token: LockWaitToken,
    ) -> Option<kvrpcpb::PessimisticLockResponse> {
        self.lock_waits.answers.remove(&token.0)
    }

    /// Forgets a waiter whose caller gave up (its edges go with it).
    pub(crate) fn cancel_lock_wait(&mut self, token: LockWaitToken) {
        self.lock_waits.unqueue(token.0);
        self.lock_waits.answers.remove(&token.0);
    }

    /// How many requests are parked.
    pub(crate) fn lock_waiters(&self) -> usize {
        self.lock_waits.waiters.len()
    }
}

/// `cancel_for_deadlock`: the lock waited for and the cycle.
fn deadlock_response(w: &Waiter, cycle: deadlock::Cycle) -> kvrpcpb::PessimisticLockResponse {
    let e = kvrpcpb::KeyError {
        deadlock: Some(kvrpcpb::Deadlock {
            lock_ts: w.lock.lock_version,
            lock_key: w.lock.key.clone(),
            deadlock_key_hash: cycle.deadlock_key_hash,
            wait_chain: cycle.wait_chain,
            ..Default::default()
        }),
        ..Default::default()
    };
    failed_lock_response(&w.req, e)
}

/// A legacy waiter's answer: the error alone.
fn lock_error_response(e: kvrpcpb::KeyError) -> kvrpcpb::PessimisticLockResponse {
    kvrpcpb::PessimisticLockResponse { errors: vec![e], ..Default::default() }
}

/// The waiting face of the model (module docs).
impl crate::Cluster {
    /// [`crate::Cluster::handle_kv`], except that a `PessimisticLock` which
    /// meets another transaction's lock and may wait is parked instead of
    /// answered `KeyIsLocked`: its answer comes later from
    /// [`crate::Cluster::take_lock_wait_answer`], after a release (woken
    /// by any later command) or its timeout
    /// ([`crate::Cluster::advance_lock_waits`]). `now` is the model time
    /// the wait starts at.
    pub fn handle_kv_waiting(
        &self,
        store_id: u64,
        req: tikv_core::rpc::KvRequest,
        now: Instant,
    ) -> Result<KvAnswer, tikv_core::rpc::RpcError> {
        let mut st = self.lock();
        let answer = st.handle_kv_answer(store_id, req, now, true);
        st.wake_lock_waiters(now);
        answer
    }

    /// The answer of a parked request once it is woken, times out or
    /// deadlocks on resuming (then the token is spent); `None` while it
    /// waits (or for an unknown token).
    pub fn take_lock_wait_answer(
        &self,
        token: LockWaitToken,
    ) -> Option<kvrpcpb::PessimisticLockResponse> {
        self.lock().take_lock_wait_answer(token)
    }

    /// Fires every lock-wait timeout and delayed wake-up due at model time
    /// `now`.
    pub fn advance_lock_waits(&self, now: Instant) {
        self.lock().advance_lock_waits(now);
    }

    /// When [`crate::Cluster::advance_lock_waits`] next has something to
    /// do; `None` without waiters.
    pub fn next_lock_wait_deadline(&self) -> Option<Instant> {
        self.lock().next_lock_wait_deadline()
    }

    /// Drops a parked request whose caller went away (a closed connection):
    /// it leaves its queue and the wait-for graph.
    pub fn cancel_lock_wait(&self, token: LockWaitToken) {
        self.lock().cancel_lock_wait(token);
    }

    /// How many `PessimisticLock` requests are parked.
    pub fn lock_waiters(&self) -> usize {
        self.lock().lock_waiters()
    }
}
