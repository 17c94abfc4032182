//! The pessimistic world's own checkers, on top of snapshot isolation with
//! the pessimistic guarantee ([`super::si`]) and the bank invariant.
//!
//! **Counters** ([`check_counters`]): every increment locks its counter,
//! reads it under the lock and writes `count + 1` tagged with its id. In
//! the write CF's commit order the committed increments of a counter must
//! have written 1, 2, 3, ... (two that wrote the same count lost an
//! update), their number lies between the increments reported committed
//! and those plus the undetermined ones, and the final value is that
//! number.
//!
//! **Deadlocks** ([`check_deadlocks`]): TiKV's detector answers a cycle
//! to the one request that closed it; the others keep waiting (and get the
//! lock once the victim's locks are rolled back, or time out). So every
//! reported wait chain is a cycle through its victim, and no cycle has two
//! victims.
//!
//! **Shared locks** (`SharedLockMonitor`, [`check_shared_reads`]): after
//! every request the stores serve, the world looks at every key locked in
//! share mode (TiKV's `SharedLocks`): no exclusive lock may sit beside the
//! shares (so neither kind was granted over the other), and no holder whose
//! commit or rollback record of the key is written may still hold its share
//! (a settled holder releases). The most holders seen on one key at once
//! shows shares were really shared. The audit then finds no lock at all
//! (the world's liveness check), crashed holders' shares included. Every
//! value read under a share equals the committed value at the lock's
//! `for_update_ts`, and nobody committed a write to the key between that
//! and the holder's commit: a share protects a read as an exclusive lock
//! protects a write.

use std::collections::{BTreeMap, BTreeSet};

use crate::mvcc::SharedKeyLocks;

use super::si::{Fates, KeyFate};
use super::txn_history::{TxnHistory, TxnOutcome, TxnWrite, parse_counter};

/// No lost or phantom increment on any of `counters` (module docs).
/// `final_data` is the committed data at the end, by key.
pub fn check_counters(
    history: &TxnHistory,
    fates: &Fates,
    counters: &[String],
    final_data: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for counter in counters {
        // (commit ts, txn, count written) of the committed increments.
        let mut committed: Vec<(u64, usize, Option<u64>)> = Vec::new();
        let (mut reported, mut undetermined) = (0usize, 0usize);
        for e in &history.entries {
            let Some(written) = e.run.writes.iter().find_map(|(k, w)| match w {
                TxnWrite::Put(v) if k == counter => Some(v),
                _ => None,
            }) else {
                continue;
            };
            match e.outcome {
                TxnOutcome::Committed { .. } => reported += 1,
                TxnOutcome::Undetermined(_) | TxnOutcome::Pending => undetermined += 1,
                TxnOutcome::Failed(_) => {}
            }
            let fate = fates
                .get(&e.id)
                .and_then(|keys| keys.iter().find(|(k, _)| k == counter).map(|(_, f)| *f));
            if let Some(KeyFate::Committed { commit_ts, .. }) = fate {
                committed.push((commit_ts, e.id, parse_counter(Some(written))));
            }
        }
        committed.sort();
        for (i, (commit_ts, txn, count)) in committed.iter().enumerate() {
            let want = i as u64 + 1;
            if *count != Some(want) {
                out.push(format!(
                    "{counter}: txn {txn} committed at {commit_ts} wrote count {count:?}, but it is \
                     increment #{want} in commit order (lost update or double count)"
                ));
            }
        }
        let n = committed.len();
        if n < reported || n > reported + undetermined {
            out.push(format!(
                "{counter}: {n} increments committed, but {reported} were reported committed \
                 and {undetermined} undetermined"
            ));
        }
        let last = parse_counter(final_data.get(counter).map(String::as_str));
        if last != Some(n as u64) {
            out.push(format!(
                "{counter}: the final value is {:?} after {n} committed increments",
                final_data.get(counter)
            ));
        }
    }
    out
}

/// Every deadlock was reported to exactly one victim, a member of its cycle
/// (module docs).
pub fn check_deadlocks(history: &TxnHistory) -> Vec<String> {
    let mut out = Vec::new();
    let mut victims: BTreeMap<Vec<(u64, u64, u64)>, Vec<usize>> = BTreeMap::new();
    for e in history.entries.iter().filter(|e| !e.run.deadlock.is_empty()) {
        let chain = &e.run.deadlock;
        let waiters: Vec<u64> = chain.iter().map(|w| w.0).collect();
        let closed = chain.iter().all(|w| waiters.contains(&w.1));
        if !closed || !e.run.start_ts.is_some_and(|ts| waiters.contains(&ts)) {
            out.push(format!(
                "txn {} (start {:?}) was reported a deadlock whose wait chain {chain:?} is not a \
                 cycle through it",
                e.id, e.run.start_ts
            ));
        }
        let mut cycle = chain.clone();
        cycle.sort();
        victims.entry(cycle).or_default().push(e.id);
    }
    for (cycle, txns) in victims {
        if txns.len() > 1 {
            out.push(format!("the cycle {cycle:?} was reported to several victims: txns {txns:?}"));
        }
    }
    out
}

/// Watches the shared-locked keys during a run (module docs).
#[derive(Debug, Default)]
pub(crate) struct SharedLockMonitor {
    violations: BTreeSet<String>,
    /// The most holders one key had at once.
    pub(crate) peak_holders: usize,
}

impl SharedLockMonitor {
    /// Checks the shared-locked keys as they are now.
    pub(crate) fn observe(&mut self, keys: &[SharedKeyLocks]) {
        for k in keys {
            let key = String::from_utf8_lossy(&k.key);
            self.peak_holders = self.peak_holders.max(k.holders.len());
            if let Some(x) = k.exclusive {
                self.violations.insert(format!(
                    "txn {x} holds an exclusive lock on {key} while txns {:?} hold shared locks \
                     on it",
                    k.holders
                ));
            }
            for t in &k.settled {
                self.violations.insert(format!(
                    "txn {t} still holds a shared lock on {key} after its commit or rollback \
                     record of it was written"
                ));
            }
        }
    }

    /// What it saw broken, in order.
    pub(crate) fn violations(&self) -> Vec<String> {
        self.violations.iter().cloned().collect()
    }
}

/// Every value read under a shared lock is the committed value at the
/// lock's `for_update_ts`, and no write of the key committed between that
/// and the holder's commit (module docs).
pub fn check_shared_reads(history: &TxnHistory, fates: &Fates) -> Vec<String> {
    // Per key, the committed puts: (commit ts, txn, value).
    let mut puts: BTreeMap<&str, Vec<(u64, usize, &str)>> = BTreeMap::new();
    for e in &history.entries {
        for (k, w) in &e.run.writes {
            let TxnWrite::Put(v) = w else { continue };
            let fate = fates.get(&e.id).and_then(|f| f.iter().find(|(fk, _)| fk == k));
            if let Some((_, KeyFate::Committed { commit_ts, .. })) = fate {
                puts.entry(k.as_str()).or_default().push((*commit_ts, e.id, v.as_str()));
            }
        }
    }
    for versions in puts.values_mut() {
        versions.sort();
    }
    let mut out = Vec::new();
    for e in history.entries.iter().filter(|e| !e.run.shared.is_empty()) {
        // The holder's commit ts: its written keys' fate, else its outcome.
        let committed_at = fates
            .get(&e.id)
            .and_then(|f| {
                f.iter().find_map(|(_, f)| match f {
                    KeyFate::Committed { commit_ts, .. } => Some(*commit_ts),
                    _ => None,
                })
            })
            .or(match e.outcome {
                TxnOutcome::Committed { commit_ts, .. } => Some(commit_ts),
                _ => None,
            });
        for r in &e.run.shared {
            let versions = puts.get(r.key.as_str()).map(Vec::as_slice).unwrap_or_default();
            let at_lock = versions.iter().rev().find(|(c, _, _)| *c <= r.for_update_ts);
            if r.value.as_deref() != at_lock.map(|(_, _, v)| *v) {
                out.push(format!(
                    "txn {} read {}={:?} under its shared lock at for_update_ts {}, but the \
                     committed value then was {:?}",
                    e.id,
                    r.key,
                    r.value,
                    r.for_update_ts,
                    at_lock.map(|(_, _, v)| *v)
                ));
            }
            let Some(commit_ts) = committed_at else { continue };
            if let Some((c, writer, _)) =
                versions.iter().find(|(c, _, _)| *c > r.for_update_ts && *c < commit_ts)
            {
                out.push(format!(
                    "txn {writer} committed {} at {c} while txn {} held a shared lock on it \
                     (locked at {}, committed at {commit_ts})",
                    r.key, e.id, r.for_update_ts
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tikv_core::time::Instant;
    use tikv_core::txn::commit::CommitMode;

    use super::*;
    use crate::WriteKind;
    use crate::world::txn_history::{
        LockedRead, PessKind, ReadMethod, TxnEntry, TxnKind, TxnRun, counter_value,
    };

    fn increment(id: usize, start_ts: u64, count: u64, outcome: TxnOutcome) -> TxnEntry {
        TxnEntry {
            id,
            client: 0,
            kind: TxnKind::Pessimistic(PessKind::Increment {
                counters: vec![0],
                wait: Default::default(),
                fair: false,
                shared: Vec::new(),
            }),
            read_method: ReadMethod::Get,
            async_commit: false,
            one_pc: false,
            causal: false,
            invoke: Instant::from_millis(start_ts),
            end: Some(Instant::from_millis(start_ts + 1)),
            run: TxnRun {
                start_ts: Some(start_ts),
                writes: vec![("r0".into(), TxnWrite::Put(counter_value(count, id)))],
                ..TxnRun::default()
            },
            outcome,
            crashed: false,
        }
    }

    fn committed(commit_ts: u64) -> TxnOutcome {
        TxnOutcome::Committed { commit_ts, mode: Some(CommitMode::TwoPhase) }
    }

    fn fate(fates: &mut Fates, id: usize, commit_ts: Option<u64>) {
        let f = match commit_ts {
            Some(commit_ts) => KeyFate::Committed { commit_ts, kind: WriteKind::Put },
            None => KeyFate::RolledBack,
        };
        fates.insert(id, vec![("r0".into(), f)]);
    }

    fn final_count(n: u64, writer: usize) -> BTreeMap<String, String> {
        BTreeMap::from([("r0".to_string(), counter_value(n, writer))])
    }

    #[test]
    fn counters_catch_lost_and_phantom_increments() {
        let counters = ["r0".to_string()];
        let mut fates = Fates::new();
        fate(&mut fates, 0, Some(20));
        fate(&mut fates, 1, Some(40));
        fate(&mut fates, 2, Some(60));
        let good = TxnHistory {
            entries: vec![
                increment(0, 10, 1, committed(20)),
                increment(1, 30, 2, committed(40)),
                // Undetermined, then found committed.
                increment(2, 50, 3, TxnOutcome::Undetermined("lost".into())),
            ],
        };
        let v = check_counters(&good, &fates, &counters, &final_count(3, 2));
        assert_eq!(v, Vec::<String>::new());

        // A lost update: two increments read 1 and both wrote 2.
        let mut lost = good.clone();
        lost.entries[2] = increment(2, 50, 2, TxnOutcome::Undetermined("lost".into()));
        let v = check_counters(&lost, &fates, &counters, &final_count(2, 2));
        assert!(v.iter().any(|v| v.contains("lost update")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("final value")), "{v:?}");

        // Reported committed, never committed (and the undetermined one
        // rolled back): one increment where two were promised.
        let mut phantom = fates.clone();
        fate(&mut phantom, 1, None);
        fate(&mut phantom, 2, None);
        let v = check_counters(&good, &phantom, &counters, &final_count(1, 0));
        assert!(v.len() == 1 && v[0].contains("reported committed"), "{v:?}");
    }

    #[test]
    fn the_monitor_catches_mixed_locks_and_kept_shares() {
        let key = |holders: &[u64], exclusive: Option<u64>, settled: &[u64]| SharedKeyLocks {
            key: b"r0".to_vec(),
            holders: holders.to_vec(),
            exclusive,
            settled: settled.to_vec(),
        };
        let mut m = SharedLockMonitor::default();
        m.observe(&[key(&[10, 20], None, &[])]);
        m.observe(&[key(&[20], None, &[])]);
        assert_eq!(m.violations(), Vec::<String>::new());
        assert_eq!(m.peak_holders, 2);

        m.observe(&[key(&[20], Some(30), &[])]);
        m.observe(&[key(&[20], Some(30), &[])]);
        let v = m.violations();
        assert!(v.len() == 1 && v[0].contains("txn 30 holds an exclusive lock on r0"), "{v:?}");

        let mut m = SharedLockMonitor::default();
        m.observe(&[key(&[10, 20], None, &[10])]);
        let v = m.violations();
        assert!(v.len() == 1 && v[0].starts_with("txn 10 still holds a shared lock"), "{v:?}");
    }

    /// A transaction that incremented r1 at `commit_ts` after reading r0
    /// under a share taken at `locked_at`.
    fn sharer(id: usize, locked_at: u64, read: Option<&str>, commit_ts: u64) -> TxnEntry {
        let mut e = increment(id, locked_at - 1, 1, committed(commit_ts));
        e.run.writes = vec![("r1".into(), TxnWrite::Put(counter_value(1, id)))];
        e.run.shared = vec![LockedRead {
            key: "r0".into(),
            for_update_ts: locked_at,
            value: read.map(String::from),
            with_conflict: false,
        }];
        e
    }

    #[test]
    fn shared_reads_are_checked_against_the_commits() {
        let mut fates = Fates::new();
        fate(&mut fates, 0, Some(20));
        let r1 = |commit_ts| {
            vec![("r1".to_string(), KeyFate::Committed { commit_ts, kind: WriteKind::Put })]
        };
        fates.insert(1, r1(40));
        // Txn 0 wrote r0=1 at 20; txn 1 read it under a share at 30..40.
        let first = counter_value(1, 0);
        let good = TxnHistory {
            entries: vec![increment(0, 10, 1, committed(20)), sharer(1, 30, Some(&first), 40)],
        };
        assert_eq!(check_shared_reads(&good, &fates), Vec::<String>::new());

        // The read under the share missed the commit before it.
        let stale = TxnHistory {
            entries: vec![increment(0, 10, 1, committed(20)), sharer(1, 30, None, 40)],
        };
        let v = check_shared_reads(&stale, &fates);
        assert!(v.len() == 1 && v[0].contains("under its shared lock"), "{v:?}");

        // Txn 0 committed r0 at 35, while txn 1 shared it (30..40).
        let mut during = fates.clone();
        fate(&mut during, 0, Some(35));
        let v = check_shared_reads(
            &TxnHistory {
                entries: vec![increment(0, 10, 1, committed(35)), sharer(1, 30, None, 40)],
            },
            &during,
        );
        assert!(v.len() == 1 && v[0].contains("while txn 1 held a shared lock"), "{v:?}");
    }

    fn victim(id: usize, start_ts: u64, chain: &[(u64, u64, u64)]) -> TxnEntry {
        let mut e = increment(id, start_ts, 1, TxnOutcome::Failed("deadlock".into()));
        e.run.writes.clear();
        e.run.deadlock = chain.to_vec();
        e
    }

    #[test]
    fn deadlocks_have_one_victim_in_their_cycle() {
        let cycle = [(10, 20, 7), (20, 10, 8)];
        let one = TxnHistory { entries: vec![victim(0, 10, &cycle)] };
        assert_eq!(check_deadlocks(&one), Vec::<String>::new());

        let reversed = [(20, 10, 8), (10, 20, 7)];
        let both = TxnHistory { entries: vec![victim(0, 10, &cycle), victim(1, 20, &reversed)] };
        let v = check_deadlocks(&both);
        assert!(v.len() == 1 && v[0].contains("several victims"), "{v:?}");

        let outsider = TxnHistory { entries: vec![victim(0, 30, &cycle)] };
        let v = check_deadlocks(&outsider);
        assert!(v.len() == 1 && v[0].contains("not a cycle"), "{v:?}");

        let open = TxnHistory { entries: vec![victim(0, 10, &[(10, 20, 7)])] };
        assert_eq!(check_deadlocks(&open).len(), 1);
    }
}
