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

use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests {
    use tikv_core::time::Instant;
    use tikv_core::txn::commit::CommitMode;

    use super::*;
    use crate::WriteKind;
    use crate::world::txn_history::{
        PessKind, ReadMethod, TxnEntry, TxnKind, TxnRun, counter_value,
    };

    fn increment(id: usize, start_ts: u64, count: u64, outcome: TxnOutcome) -> TxnEntry {
        TxnEntry {
            id,
            client: 0,
            kind: TxnKind::Pessimistic(PessKind::Increment {
                counters: vec![0],
                wait: Default::default(),
                fair: false,
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
