//! Fair ("aggressive") locking: the bookkeeping of client-go's
//! `aggressiveLockingContext` (`txnkv/transaction/txn.go`), which TiDB uses
//! to retry a pessimistic statement without giving up the locks it took.
//!
//! While a session is open, single-key lock calls lock in TiKV's
//! `WakeUpModeForceLock`: a request woken after waiting takes the lock even
//! over a newer write (`LockedWithConflict`, with that write's ts and the
//! newest value) instead of failing with a write conflict. The keys locked
//! are recorded here rather than in the transaction's buffer. When the
//! caller retries its statement ([`FairLocking::retry`]), this attempt's
//! locks become the previous attempt's: a key the next attempt locks again
//! is taken over without an RPC when nothing it needs changed
//! ([`FairLocking::reuse`]); the rest are rolled back. [`FairLocking::done`]
//! hands the final attempt's locks to the buffer, with the `for_update_ts`
//! each lock actually carries (checked by TiKV at prewrite as
//! `for_update_ts_constraints`); [`FairLocking::cancel`] rolls them all back.
//!
//! Pure bookkeeping: the caller sends the lock and rollback requests.
//!
//! ```
//! use tikv_core::key::Key;
//! use tikv_core::pd::Timestamp;
//! use tikv_core::time::Instant;
//! use tikv_core::txn::fair_locking::{FairLocking, Reuse};
//! use tikv_core::txn::pessimistic::{LockOptions, ReturnedValue};
//!
//! let ts = Timestamp::from_version;
//! let mut fair = FairLocking::start(Instant::ZERO);
//! // The first attempt locks "k" over a newer write committed at 15.
//! let taken = ReturnedValue { locked_with_conflict_ts: ts(15), exists: true, ..Default::default() };
//! fair.record(Key::from("k"), taken, &LockOptions::new(), ts(10));
//! // The statement is retried; nothing to roll back yet.
//! assert_eq!(fair.retry(Instant::ZERO), (vec![], false));
//! // The retry locks "k" again at a fresh for_update_ts: no RPC needed.
//! let reuse = fair.reuse(&Key::from("k"), &LockOptions::new(), ts(20), Instant::ZERO);
//! assert!(matches!(reuse, Ok(Reuse::Held(_))));
//! let done = fair.done();
//! assert_eq!(done.locked[0].actual_for_update_ts, ts(15));
//! assert!(done.rollback.is_empty());
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Error;
use crate::key::Key;
use crate::pd::Timestamp;
use crate::time::Instant;
use crate::txn::commit::MAX_LOCK_TTL;
use crate::txn::pessimistic::{LockOptions, ReturnedValue};

/// A key locked during a fair-locking session (client-go
/// `tempLockBufferEntry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FairLockedKey {
    /// The key.
    pub key: Key,
    /// What the lock call returned for it.
    pub value: ReturnedValue,
    /// The call asked for the value.
    pub has_return_value: bool,
    /// The call asked whether the key exists.
    pub has_check_existence: bool,
    /// The `for_update_ts` the lock carries in TiKV: the call's, or the
    /// newer write's it was taken over.
    pub actual_for_update_ts: Timestamp,
}

impl FairLockedKey {
    /// Whether the key exists as far as the calls that locked it know
    /// (a key locked without reading it is taken to exist, as client-go
    /// does).
    pub fn exists(&self) -> bool {
        !(self.has_return_value || self.has_check_existence) || self.value.exists
    }

    /// client-go `trySkipLockingOnRetry`: whether a retry that locks this
    /// key again with `options` can keep the previous attempt's lock, and
    /// if so, the entry as the retry sees it.
    fn reusable(mut self, options: &LockOptions) -> Option<FairLockedKey> {
        if self.value.locked_with_conflict_ts != Timestamp::ZERO {
            // The retry runs at a for_update_ts past the conflict: the
            // lock now counts as taken normally.
            self.value.locked_with_conflict_ts = Timestamp::ZERO;
        } else if (options.return_values && !self.has_return_value)
            || (!options.return_values && options.check_existence && !self.has_check_existence)
        {
            // The retry needs more than the previous attempt read.
            return None;
        }
        if !options.return_values {
            self.has_return_value = false;
            self.value.value = Default::default();
        }
        if !options.check_existence {
            self.has_check_existence = false;
            self.value.exists = true;
        }
        Some(self)
    }
}

/// What [`FairLocking::reuse`] decided for a key the current attempt locks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// The previous attempt's lock stands for this attempt too: no RPC; the
    /// value is what the caller asked for.
    Held(ReturnedValue),
    /// Lock it.
    Lock,
}

/// What [`FairLocking::done`] hands back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FairLockingDone {
    /// The final attempt's locks, sorted: the transaction holds them now,
    /// and its prewrite must find each with its `actual_for_update_ts`.
    pub locked: Vec<FairLockedKey>,
    /// Locks of the previous attempt the final one did not need: roll them
    /// back.
    pub rollback: Vec<Key>,
    /// The largest `locked_with_conflict_ts` of the session: rollbacks of
    /// its locks need a `for_update_ts` at least this.
    pub max_locked_with_conflict_ts: Timestamp,
    /// The primary was chosen during the session and the final attempt
    /// locked nothing: the transaction has no primary any more (and its
    /// heartbeats stop).
    pub reset_primary: bool,
}

/// One fair-locking session of a pessimistic transaction.
#[derive(Clone, Debug)]
pub struct FairLocking {
    /// This attempt's locks.
    current: BTreeMap<Key, FairLockedKey>,
    /// The previous attempt's locks this attempt has not locked again.
    previous: BTreeMap<Key, FairLockedKey>,
    /// The primary chosen by this attempt, if it chose one.
    primary: Option<Key>,
    /// The primary chosen by the previous attempt, if it chose one.
    last_primary: Option<Key>,
    /// Some attempt of this session chose the transaction's primary.
    primary_from_session: bool,
    attempt_started: Instant,
    last_attempt_started: Instant,
    max_locked_with_conflict_ts: Timestamp,
}

impl FairLocking {
    /// Opens a session at `now` (client-go `StartAggressiveLocking`).
    pub fn start(now: Instant) -> FairLocking {
        FairLocking {
            current: BTreeMap::new(),
            previous: BTreeMap::new(),
            primary: None,
            last_primary: None,
            primary_from_session: false,
            attempt_started: now,
            last_attempt_started: now,
            max_locked_with_conflict_ts: Timestamp::ZERO,
        }
    }

    /// Whether this attempt holds `key`'s lock.
    pub fn holds(&self, key: &Key) -> bool {
        self.current.contains_key(key)
    }

    /// Whether this attempt holds any lock.
    pub fn holds_any(&self) -> bool {
        !self.current.is_empty()
    }

    /// Every key of the session whose lock may be held: this attempt's and
    /// the previous attempt's not yet rolled back.
    pub fn held_keys(&self) -> impl Iterator<Item = &Key> {
        self.current.keys().chain(self.previous.keys())
    }

    /// The largest `locked_with_conflict_ts` seen so far.
    pub fn max_locked_with_conflict_ts(&self) -> Timestamp {
        self.max_locked_with_conflict_ts
    }

    /// The primary the current attempt should choose among the keys it is
    /// about to lock (client-go `selectPrimaryForPessimisticLock`): the
    /// previous attempt's if it is among them, else the first. Records it.
    pub fn choose_primary(&mut self, sorted_keys: &[Key]) -> Option<Key> {
        let chosen = match &self.last_primary {
            Some(last) if sorted_keys.binary_search(last).is_ok() => last.clone(),
            _ => sorted_keys.first()?.clone(),
        };
        self.primary = Some(chosen.clone());
        self.primary_from_session = true;
        Some(chosen)
    }

    /// Whether the current attempt changed the primary the previous one
    /// chose (client-go `resetTTLManagerForAggressiveLockingMode`: the
    /// heartbeats must move to the new primary).
    pub fn primary_changed(&self) -> bool {
        self.primary.is_some() && self.primary != self.last_primary
    }

    /// Decides whether `key`, which this attempt locks with `options` at
    /// `for_update_ts`, needs a lock RPC (client-go
    /// `filterAggressiveLockedKeys`). A previous attempt's lock is taken
    /// over when the primary did not change, it read what this call needs,
    /// and it is recent enough not to have expired (`MAX_LOCK_TTL` since
    /// that attempt started).
    pub fn reuse(
        &mut self,
        key: &Key,
        options: &LockOptions,
        for_update_ts: Timestamp,
        now: Instant,
    ) -> Result<Reuse, Error> {
        let Some(last) = self.previous.remove(key) else { return Ok(Reuse::Lock) };
        if for_update_ts < last.value.locked_with_conflict_ts {
            return Err(Error::InvalidArgument(format!(
                "fair locking retried at for_update_ts {for_update_ts}, before the previous \
                 attempt's lock over a write at {}",
                last.value.locked_with_conflict_ts
            )));
        }
        // The previous attempt's locks point at the transaction's primary
        // unless this attempt chose another one.
        let primary_unchanged = self.primary.is_none() || self.primary == self.last_primary;
        let recent = now.saturating_duration_since(self.last_attempt_started)
            < Duration::from_millis(MAX_LOCK_TTL);
        if !primary_unchanged || !recent {
            return Ok(Reuse::Lock);
        }
        match last.reusable(options) {
            Some(entry) => {
                let value = entry.value.clone();
                self.current.insert(key.clone(), entry);
                Ok(Reuse::Held(value))
            }
            None => Ok(Reuse::Lock),
        }
    }

    /// Records `key` locked by this attempt at `for_update_ts` with
    /// `options`, as the lock call returned it.
    pub fn record(
        &mut self,
        key: Key,
        value: ReturnedValue,
        options: &LockOptions,
        for_update_ts: Timestamp,
    ) {
        let conflict = value.locked_with_conflict_ts;
        self.max_locked_with_conflict_ts = self.max_locked_with_conflict_ts.max(conflict);
        let entry = FairLockedKey {
            key: key.clone(),
            value,
            has_return_value: options.return_values,
            has_check_existence: options.check_existence,
            actual_for_update_ts: for_update_ts.max(conflict),
        };
        self.current.insert(key, entry);
    }

    /// A lock call of this attempt failed: its keys' locks were rolled back
    /// by the call, and a primary it chose is not one any more.
    pub fn forget(&mut self, keys: &[Key], max_locked_with_conflict_ts: Timestamp) {
        self.max_locked_with_conflict_ts =
            self.max_locked_with_conflict_ts.max(max_locked_with_conflict_ts);
        for key in keys {
            self.current.remove(key);
            self.previous.remove(key);
        }
        if self.primary.as_ref().is_some_and(|p| keys.contains(p)) {
            self.primary = None;
        }
    }

    /// The statement is retried (client-go `RetryAggressiveLocking`): the
    /// previous attempt's locks that this attempt did not take over are
    /// returned to be rolled back, and this attempt's become the previous
    /// ones. A primary this attempt chose stays locked (its heartbeats go
    /// on) but must be chosen again by the next attempt: the second value
    /// says the transaction has no primary until then.
    pub fn retry(&mut self, now: Instant) -> (Vec<Key>, bool) {
        let rollback = std::mem::take(&mut self.previous).into_keys().collect();
        let unset_primary = self.primary.is_some();
        self.last_primary = self.primary.take();
        self.last_attempt_started = self.attempt_started;
        self.attempt_started = now;
        self.previous = std::mem::take(&mut self.current);
        (rollback, unset_primary)
    }

    /// Ends the session keeping the final attempt's locks (client-go
    /// `DoneAggressiveLocking`).
    pub fn done(self) -> FairLockingDone {
        FairLockingDone {
            reset_primary: self.primary_from_session && self.current.is_empty(),
            rollback: self.previous.into_keys().collect(),
            locked: self.current.into_values().collect(),
            max_locked_with_conflict_ts: self.max_locked_with_conflict_ts,
        }
    }

    /// Ends the session giving up every lock it took (client-go
    /// `CancelAggressiveLocking`): returns them to be rolled back, and
    /// whether the transaction loses the primary the session chose.
    pub fn cancel(self) -> (Vec<Key>, bool) {
        let keys = self.current.into_keys().chain(self.previous.into_keys()).collect();
        (keys, self.primary_from_session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(v: u64) -> Timestamp {
        Timestamp::from_version(v)
    }

    fn key(k: &str) -> Key {
        Key::from(k)
    }

    fn value(v: &'static str, conflict: u64) -> ReturnedValue {
        ReturnedValue {
            value: v.into(),
            exists: true,
            locked_with_conflict_ts: ts(conflict),
            already_locked: false,
        }
    }

    const T0: Instant = Instant::ZERO;

    #[test]
    fn a_retry_takes_over_the_previous_attempts_locks_without_rpcs() {
        let mut fair = FairLocking::start(T0);
        assert_eq!(fair.choose_primary(&[key("a")]), Some(key("a")));
        fair.record(key("a"), value("1", 0), &LockOptions::new().return_values(), ts(10));
        fair.record(key("b"), value("2", 12), &LockOptions::new(), ts(10));
        assert_eq!(fair.max_locked_with_conflict_ts(), ts(12));
        assert_eq!(fair.retry(T0), (vec![], true), "nothing to roll back; the primary is unset");

        // The retry chooses the same primary: both locks are reused.
        assert_eq!(fair.choose_primary(&[key("a")]), Some(key("a")));
        assert!(!fair.primary_changed());
        let a = fair.reuse(&key("a"), &LockOptions::new().return_values(), ts(20), T0);
        assert_eq!(a.unwrap(), Reuse::Held(value("1", 0)), "the value read before is returned");
        // A lock taken over a write counts as taken normally on the retry.
        let b = fair.reuse(&key("b"), &LockOptions::new(), ts(20), T0);
        assert_eq!(b.unwrap(), Reuse::Held(ReturnedValue { exists: true, ..Default::default() }));

        let done = fair.done();
        assert!(done.rollback.is_empty() && !done.reset_primary);
        let actual: Vec<_> =
            done.locked.iter().map(|l| (l.key.clone(), l.actual_for_update_ts)).collect();
        assert_eq!(actual, vec![(key("a"), ts(10)), (key("b"), ts(12))]);
        assert_eq!(done.max_locked_with_conflict_ts, ts(12));
    }

    #[test]
    fn a_retry_locks_again_what_it_needs_more_of_or_what_may_have_expired() {
        let mut fair = FairLocking::start(T0);
        fair.record(key("a"), value("1", 0), &LockOptions::new(), ts(10));
        fair.record(key("b"), value("2", 0), &LockOptions::new(), ts(10));
        fair.record(key("c"), value("3", 0), &LockOptions::new(), ts(10));
        let later = T0 + Duration::from_millis(10);
        let _ = fair.retry(later);
        // The values were not read before.
        let a = fair.reuse(&key("a"), &LockOptions::new().return_values(), ts(20), later);
        assert_eq!(a.unwrap(), Reuse::Lock);
        // Nor was existence.
        let mut exists = LockOptions::new();
        exists.check_existence = true;
        assert_eq!(fair.reuse(&key("b"), &exists, ts(20), later).unwrap(), Reuse::Lock);
        // A key the previous attempt did not lock.
        assert_eq!(fair.reuse(&key("d"), &LockOptions::new(), ts(20), later).unwrap(), Reuse::Lock);

        // An attempt that started a lock TTL ago may have lost its locks.
        let mut fair = FairLocking::start(T0);
        fair.record(key("a"), value("1", 0), &LockOptions::new(), ts(10));
        let _ = fair.retry(T0);
        let expired = T0 + Duration::from_millis(MAX_LOCK_TTL);
        assert_eq!(
            fair.reuse(&key("a"), &LockOptions::new(), ts(20), expired).unwrap(),
            Reuse::Lock
        );
    }

    #[test]
    fn a_retry_before_the_previous_conflict_is_refused() {
        let mut fair = FairLocking::start(T0);
        fair.record(key("a"), value("1", 15), &LockOptions::new(), ts(10));
        let _ = fair.retry(T0);
        assert!(matches!(
            fair.reuse(&key("a"), &LockOptions::new(), ts(12), T0),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn unneeded_locks_are_rolled_back_at_the_next_retry_or_at_done() {
        let mut fair = FairLocking::start(T0);
        assert_eq!(fair.choose_primary(&[key("a")]), Some(key("a")));
        fair.record(key("a"), value("1", 0), &LockOptions::new(), ts(10));
        fair.record(key("b"), value("2", 0), &LockOptions::new(), ts(10));
        let _ = fair.retry(T0);
        // The second attempt locks another key first: it is the new primary.
        assert_eq!(fair.choose_primary(&[key("c")]), Some(key("c")));
        assert!(fair.primary_changed());
        fair.record(key("c"), value("3", 0), &LockOptions::new(), ts(20));
        // The primary changed: the previous attempt's locks point at the
        // old one, so b is locked again rather than taken over.
        assert_eq!(fair.reuse(&key("b"), &LockOptions::new(), ts(20), T0).unwrap(), Reuse::Lock);
        fair.record(key("b"), value("2", 0), &LockOptions::new(), ts(20));
        // A third attempt: a, unused by the second, is rolled back.
        let (rolled, unset_primary) = fair.retry(T0);
        assert!(unset_primary);
        assert_eq!(rolled, vec![key("a")]);
        let done = fair.done();
        assert_eq!(done.rollback, vec![key("b"), key("c")], "the third attempt locked nothing");
        assert!(done.locked.is_empty());
        assert!(done.reset_primary, "the primary chosen in the session is gone");
    }

    #[test]
    fn the_previous_primary_is_chosen_again_when_it_is_locked_again() {
        let mut fair = FairLocking::start(T0);
        fair.choose_primary(&[key("m")]);
        fair.record(key("m"), value("", 0), &LockOptions::new(), ts(10));
        let _ = fair.retry(T0);
        assert_eq!(fair.choose_primary(&[key("a"), key("m")]), Some(key("m")));
        assert!(!fair.primary_changed());
    }

    #[test]
    fn cancel_rolls_back_every_lock_of_the_session() {
        let mut fair = FairLocking::start(T0);
        fair.choose_primary(&[key("a")]);
        fair.record(key("a"), value("1", 0), &LockOptions::new(), ts(10));
        let _ = fair.retry(T0);
        fair.record(key("b"), value("2", 0), &LockOptions::new(), ts(20));
        let held: Vec<_> = fair.held_keys().cloned().collect();
        assert_eq!(held, vec![key("b"), key("a")]);
        let (mut keys, lost_primary) = fair.cancel();
        keys.sort();
        assert_eq!(keys, vec![key("a"), key("b")]);
        assert!(lost_primary);
    }

    #[test]
    fn a_failed_call_forgets_its_keys_and_the_primary_it_chose() {
        let mut fair = FairLocking::start(T0);
        fair.choose_primary(&[key("a")]);
        fair.forget(&[key("a")], ts(30));
        assert_eq!(fair.max_locked_with_conflict_ts(), ts(30));
        assert!(!fair.holds(&key("a")));
        assert!(!fair.primary_changed(), "no primary chosen any more");
    }

    #[test]
    fn existence_is_known_only_where_it_was_read() {
        let mut fair = FairLocking::start(T0);
        let absent = ReturnedValue::default();
        fair.record(key("read"), absent.clone(), &LockOptions::new().return_values(), ts(1));
        fair.record(key("blind"), absent, &LockOptions::new(), ts(1));
        let done = fair.done();
        let exists: Vec<_> = done.locked.iter().map(|l| (l.key.clone(), l.exists())).collect();
        assert_eq!(exists, vec![(key("blind"), true), (key("read"), false)]);
    }
}
