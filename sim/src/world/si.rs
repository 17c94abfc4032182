//! The snapshot-isolation checker and the bank checker for transactional
//! histories.
//!
//! **Fates.** After the run (quiescence, then an audit that reads every key
//! and resolves every leftover lock), the write CF says what became of each
//! transaction on each key it wrote ([`KeyFate`]). The checker holds that
//! against what the client reported:
//! - a transaction reported committed at `c` has a commit record at `c` of
//!   the right kind on every key it wrote;
//! - one reported failed has a commit record on none;
//! - an undetermined one (lost answer, crashed client) is resolved one way
//!   or the other on all its keys: committed at one ts everywhere, or
//!   nowhere.
//!
//! **The model.** The committed state at any timestamp is rebuilt from those
//! commit records alone (the writes each transaction tried, at its commit
//! ts). Then:
//! - every snapshot read equals the model at the reader's start ts (no
//!   stale, dirty, lost or phantom value; reads of transactions that later
//!   failed are checked too, since TiKV's snapshot reads are consistent
//!   regardless of the reader's fate);
//! - every read a transaction makes over its own buffered writes
//!   (read-your-writes, core's merge) sees its puts, not its deleted keys,
//!   and the model at its start ts for the keys it did not write;
//! - first committer wins: no two committed writers of a key overlap
//!   (`start_ts < other's commit_ts` in both directions), except that a
//!   pessimistic transaction's write of a key it locked is checked from its
//!   lock: **the pessimistic guarantee**, no other transaction committed
//!   the key after the lock's `for_update_ts` and before this commit, and
//!   the value the transaction read under the lock equals the model at
//!   that `for_update_ts`; together, the value read with `get_for_update`
//!   is the value the commit overwrote;
//! - real time: a transaction that started after another reported its
//!   commit (linearizable modes, i.e. not causal consistency) has a start ts
//!   at least that commit ts, so it sees it;
//! - the final committed data equals the model's latest state.
//!
//! **Bank.** Transfers move money between accounts; every snapshot read of
//! all accounts sums to the initial total, and so does the final data.

use std::collections::BTreeMap;

use super::txn_history::{
    INITIAL_BALANCE, TxnEntry, TxnHistory, TxnKind, TxnOutcome, TxnWrite, parse_balance,
};
use crate::WriteKind;

/// What the write CF holds for one transaction on one key at the end.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KeyFate {
    /// A commit record of this kind at `commit_ts`.
    Committed {
        /// Its commit timestamp.
        commit_ts: u64,
        /// What the record says.
        kind: WriteKind,
    },
    /// A rollback record.
    RolledBack,
    /// No record and no lock: the prewrite never reached the key.
    Absent,
}

/// Per history entry (that has writes), the fate of each key it wrote.
pub type Fates = BTreeMap<usize, Vec<(String, KeyFate)>>;

/// One committed write in the model.
#[derive(Clone, Debug)]
struct Version {
    commit_ts: u64,
    start_ts: u64,
    txn: usize,
    write: TxnWrite,
    /// The `for_update_ts` of the writer's pessimistic lock on the key.
    locked_at: Option<u64>,
}

fn expected_kind(w: &TxnWrite) -> WriteKind {
    match w {
        TxnWrite::Put(_) => WriteKind::Put,
        TxnWrite::Delete => WriteKind::Delete,
        TxnWrite::Lock => WriteKind::Lock,
    }
}

fn show(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// The model: per key, committed versions in commit-ts order.
struct Model {
    keys: BTreeMap<String, Vec<Version>>,
}

impl Model {
    /// The value of `key` at `ts` and the version that wrote it.
    fn at(&self, key: &str, ts: u64) -> (Option<String>, Option<&Version>) {
        let Some(versions) = self.keys.get(key) else {
            return (None, None);
        };
        for v in versions.iter().rev().filter(|v| v.commit_ts <= ts) {
            match &v.write {
                TxnWrite::Put(x) => return (Some(x.clone()), Some(v)),
                TxnWrite::Delete => return (None, Some(v)),
                TxnWrite::Lock => {}
            }
        }
        (None, None)
    }
}

/// Checks the fates against the reported outcomes; returns the model's
/// versions (built from the fates).
fn check_fates(history: &TxnHistory, fates: &Fates, out: &mut Vec<String>) -> Model {
    let mut model = Model { keys: BTreeMap::new() };
    for e in &history.entries {
        let Some(start_ts) = e.run.start_ts else { continue };
        let Some(keys) = fates.get(&e.id) else { continue };
        let writes: BTreeMap<&str, &TxnWrite> =
            e.run.writes.iter().map(|(k, w)| (k.as_str(), w)).collect();
        let committed: Vec<(&str, u64, WriteKind)> = keys
            .iter()
            .filter_map(|(k, f)| match f {
                KeyFate::Committed { commit_ts, kind } => Some((k.as_str(), *commit_ts, *kind)),
                _ => None,
            })
            .collect();
        let describe =
            || keys.iter().map(|(k, f)| format!("{k}: {f:?}")).collect::<Vec<_>>().join(", ");
        match &e.outcome {
            TxnOutcome::Committed { commit_ts, mode } => {
                if committed.len() != keys.len() || committed.iter().any(|c| c.1 != *commit_ts) {
                    out.push(format!(
                        "outcome: txn {} ({}) was reported committed at {commit_ts} ({mode:?}), but its keys say {}",
                        e.id,
                        e.kind,
                        describe()
                    ));
                }
            }
            TxnOutcome::Failed(why) => {
                if !committed.is_empty() {
                    out.push(format!(
                        "outcome: txn {} ({}) was reported failed ({why}), but its keys say {}",
                        e.id,
                        e.kind,
                        describe()
                    ));
                }
            }
            TxnOutcome::Undetermined(_) | TxnOutcome::Pending => {
                let first = committed.first().map(|c| c.1);
                let consistent = committed.is_empty()
                    || (committed.len() == keys.len()
                        && committed.iter().all(|c| Some(c.1) == first));
                if !consistent {
                    out.push(format!(
                        "resolution: undetermined txn {} ({}{}) was resolved inconsistently: {}",
                        e.id,
                        e.kind,
                        if e.crashed { ", client crashed" } else { "" },
                        describe()
                    ));
                }
            }
        }
        for (k, commit_ts, kind) in committed {
            let Some(&w) = writes.get(k) else {
                out.push(format!(
                    "model: txn {} has a commit record on {k}, which it never wrote",
                    e.id
                ));
                continue;
            };
            if kind != expected_kind(w) {
                out.push(format!(
                    "model: txn {} wrote {k}{w} but its commit record is a {kind:?}",
                    e.id
                ));
            }
            if commit_ts <= start_ts {
                out.push(format!(
                    "model: txn {} committed {k} at {commit_ts}, not after its start ts {start_ts}",
                    e.id
                ));
            }
            let locked_at = e.run.locked.iter().find(|l| l.key == k).map(|l| l.for_update_ts);
            model.keys.entry(k.to_string()).or_default().push(Version {
                commit_ts,
                start_ts,
                txn: e.id,
                write: (*w).clone(),
                locked_at,
            });
        }
    }
    for versions in model.keys.values_mut() {
        versions.sort_by_key(|v| (v.commit_ts, v.txn));
    }
    model
}

/// First committer wins, per key.
/// The committed state the fates give: the model [`check`] holds
/// snapshot reads against, for checkers of reads made outside the
/// history's transactions (stale and replica reads). Fates that disagree
/// with the outcomes are [`check`]'s to report.
pub struct Committed(Model);

impl Committed {
    /// The model of `history` with `fates`.
    pub fn new(history: &TxnHistory, fates: &Fates) -> Committed {
        Committed(check_fates(history, fates, &mut Vec::new()))
    }

    /// The value of `key` at `ts`, and the writer of that version (its
    /// history id and commit ts).
    pub fn at(&self, key: &str, ts: u64) -> (Option<String>, Option<(usize, u64)>) {
        let (value, by) = self.0.at(key, ts);
        (value, by.map(|v| (v.txn, v.commit_ts)))
    }

    /// The commit timestamps of `key`'s versions in `(after, up_to]`.
    pub fn commits_between(&self, key: &str, after: u64, up_to: u64) -> Vec<u64> {
        let versions = self.0.keys.get(key).map_or(&[][..], Vec::as_slice);
        versions.iter().map(|v| v.commit_ts).filter(|c| *c > after && *c <= up_to).collect()
    }
}

fn check_write_conflicts(model: &Model, out: &mut Vec<String>) {
    for (k, versions) in &model.keys {
        for pair in versions.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.commit_ts == b.commit_ts {
                out.push(format!(
                    "write conflict: txns {} and {} both committed {k} at {}",
                    a.txn, b.txn, a.commit_ts
                ));
            } else if let Some(f) = b.locked_at {
                // TiKV refuses a pessimistic lock below a newer commit.
                if a.commit_ts > f {
                    out.push(format!(
                        "pessimistic: txn {} locked {k} at for_update_ts {f} and committed it at {}, but txn {} committed {k} at {} in between (lost update)",
                        b.txn, b.commit_ts, a.txn, a.commit_ts
                    ));
                }
            } else if b.start_ts < a.commit_ts {
                out.push(format!(
                    "write conflict: txn {} (start {}) and txn {} (commit {}) both committed {k} \
                     though they overlap (lost update)",
                    b.txn, b.start_ts, a.txn, a.commit_ts
                ));
            }
        }
    }
}

/// Every read equals the model at the reader's start ts.
fn check_reads(history: &TxnHistory, model: &Model, out: &mut Vec<String>) {
    for e in &history.entries {
        let Some(ts) = e.run.start_ts else { continue };
        for (k, seen) in &e.run.reads {
            let (want, by) = model.at(k, ts);
            if *seen != want {
                let writer = match by {
                    Some(v) => format!("txn {} at {}", v.txn, v.commit_ts),
                    None => "nobody".into(),
                };
                out.push(format!(
                    "read: txn {} ({}, {:?}) read {k}={} at {ts}; committed then: {} (written by {writer})",
                    e.id,
                    e.kind,
                    e.outcome,
                    show(seen),
                    show(&want)
                ));
            }
        }
    }
}

/// Every value a pessimistic transaction read under its lock equals the
/// model at the lock's `for_update_ts`.
fn check_locked_reads(history: &TxnHistory, model: &Model, out: &mut Vec<String>) {
    for e in &history.entries {
        for l in &e.run.locked {
            let (want, by) = model.at(&l.key, l.for_update_ts);
            if l.value != want {
                let writer = match by {
                    Some(v) => format!("txn {} at {}", v.txn, v.commit_ts),
                    None => "nobody".into(),
                };
                out.push(format!(
                    "pessimistic: txn {} ({}, {:?}) read {}={} under its lock at for_update_ts {}; committed then: {} (written by {writer})",
                    e.id,
                    e.kind,
                    e.outcome,
                    l.key,
                    show(&l.value),
                    l.for_update_ts,
                    show(&want)
                ));
            }
        }
    }
}

/// Every read a transaction made over its own buffered writes sees those
/// writes over its snapshot (client-go's `KVUnionStore`): its put's value,
/// absent after its delete, and the model at its start ts for keys it did
/// not write or only locked.
fn check_own_reads(history: &TxnHistory, model: &Model, out: &mut Vec<String>) {
    for e in &history.entries {
        let Some(ts) = e.run.start_ts else { continue };
        let writes: BTreeMap<&str, &TxnWrite> =
            e.run.writes.iter().map(|(k, w)| (k.as_str(), w)).collect();
        for (k, seen) in &e.run.own_reads {
            let want = match writes.get(k.as_str()) {
                Some(TxnWrite::Put(v)) => Some(v.clone()),
                Some(TxnWrite::Delete) => None,
                Some(TxnWrite::Lock) | None => model.at(k, ts).0,
            };
            if *seen != want {
                let own = writes.get(k.as_str()).map_or("nothing".into(), |w| format!("{k}{w}"));
                out.push(format!(
                    "read-your-writes: txn {} ({}, {:?}) read {k}={} at {ts} over its writes; \
                     it wrote {own}, so it should see {}",
                    e.id,
                    e.kind,
                    e.outcome,
                    show(seen),
                    show(&want)
                ));
            }
        }
    }
}

/// A commit reported before another transaction began is visible to it
/// (not promised under causal consistency).
fn check_real_time(history: &TxnHistory, out: &mut Vec<String>) {
    let mut began: Vec<&TxnEntry> =
        history.entries.iter().filter(|e| e.run.start_ts.is_some()).collect();
    began.sort_by_key(|e| (e.invoke, e.id));
    // suffix[i]: the entry with the smallest start ts among began[i..].
    let mut suffix: Vec<Option<&TxnEntry>> = vec![None; began.len() + 1];
    for i in (0..began.len()).rev() {
        suffix[i] = match suffix[i + 1] {
            Some(m) if m.run.start_ts <= began[i].run.start_ts => Some(m),
            _ => Some(began[i]),
        };
    }
    for e in &history.entries {
        let TxnOutcome::Committed { commit_ts, mode: Some(_) } = e.outcome else { continue };
        let Some(end) = e.end else { continue };
        if e.causal {
            continue;
        }
        let i = began.partition_point(|b| b.invoke <= end);
        if let Some(later) = suffix[i]
            && later.run.start_ts.is_some_and(|s| s < commit_ts)
        {
            out.push(format!(
                "real time: txn {} reported its commit at {commit_ts} at {end}, but txn {} began \
                 later (at {}) with start ts {:?}",
                e.id, later.id, later.invoke, later.run.start_ts
            ));
        }
    }
}

/// Runs every snapshot-isolation check. `final_data` is the committed data
/// at the end (latest versions, locks ignored), by key.
pub fn check(
    history: &TxnHistory,
    fates: &Fates,
    final_data: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let model = check_fates(history, fates, &mut out);
    check_write_conflicts(&model, &mut out);
    check_reads(history, &model, &mut out);
    check_locked_reads(history, &model, &mut out);
    check_own_reads(history, &model, &mut out);
    check_real_time(history, &mut out);
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    for k in model.keys.keys() {
        if let (Some(v), _) = model.at(k, u64::MAX) {
            latest.insert(k.clone(), v);
        }
    }
    for (k, v) in final_data {
        if latest.get(k) != Some(v) {
            out.push(format!(
                "final state: {k}={v} in the store, the committed transactions say {}",
                show(&latest.get(k).cloned())
            ));
        }
    }
    for (k, v) in &latest {
        if !final_data.contains_key(k) {
            out.push(format!("final state: {k} is missing from the store; the model says {v}"));
        }
    }
    out
}

/// The bank invariant: every read of all `accounts` sums to the initial
/// total, balances are well-formed, and the final data keeps the total.
pub fn check_bank(
    history: &TxnHistory,
    accounts: &[String],
    final_data: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let total = INITIAL_BALANCE * accounts.len() as u64;
    let sum = |get: &dyn Fn(&str) -> Option<Option<String>>| -> Result<Option<u64>, String> {
        let mut s = 0u64;
        for a in accounts {
            let Some(v) = get(a) else { return Ok(None) };
            match parse_balance(v.as_deref()) {
                Some(b) => s += b,
                None => return Err(format!("{a}={v:?} is not a balance")),
            }
        }
        Ok(Some(s))
    };
    for e in &history.entries {
        let reads: BTreeMap<&str, &Option<String>> =
            e.run.reads.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for (k, v) in &reads {
            if k.starts_with('a') && parse_balance(v.as_deref()).is_none() {
                out.push(format!("bank: txn {} read {k}={v:?}, not a balance", e.id));
            }
        }
        if !matches!(e.kind, TxnKind::BankRead | TxnKind::FullRead) {
            continue;
        }
        match sum(&|a| reads.get(a).map(|v| (*v).clone())) {
            Ok(Some(s)) if s != total => out.push(format!(
                "bank: txn {} ({}) read a total of {s} at {:?}, not {total}: {:?}",
                e.id,
                e.kind,
                e.run.start_ts,
                accounts.iter().map(|a| (a, reads.get(a.as_str()))).collect::<Vec<_>>()
            )),
            Ok(_) => {}
            Err(why) => out.push(format!("bank: txn {}: {why}", e.id)),
        }
    }
    match sum(&|a| Some(final_data.get(a).cloned())) {
        Ok(Some(s)) if s != total => {
            out.push(format!("bank: the final data holds a total of {s}, not {total}"))
        }
        Ok(_) => {}
        Err(why) => out.push(format!("bank: final data: {why}")),
    }
    out
}

#[cfg(test)]
mod tests {
    use tikv_core::time::Instant;
    use tikv_core::txn::commit::CommitMode;

    use super::*;
    use crate::world::txn_history::{ReadMethod, TxnRun};

    fn entry(
        id: usize,
        start_ts: u64,
        reads: &[(&str, Option<&str>)],
        writes: &[(&str, &str)],
    ) -> TxnEntry {
        TxnEntry {
            id,
            client: 0,
            kind: TxnKind::Registers(Vec::new()),
            read_method: ReadMethod::Get,
            async_commit: false,
            one_pc: false,
            causal: false,
            invoke: Instant::from_millis(start_ts),
            end: Some(Instant::from_millis(start_ts + 1)),
            run: TxnRun {
                start_ts: Some(start_ts),
                reads: reads.iter().map(|(k, v)| (k.to_string(), v.map(String::from))).collect(),
                writes: writes
                    .iter()
                    .map(|(k, v)| (k.to_string(), TxnWrite::Put(v.to_string())))
                    .collect(),
                micro: Vec::new(),
                own_reads: Vec::new(),
                locked: Vec::new(),
                shared: Vec::new(),
                deadlock: Vec::new(),
            },
            outcome: TxnOutcome::Committed { commit_ts: start_ts, mode: None },
            crashed: false,
        }
    }

    fn committed(mut e: TxnEntry, commit_ts: u64, fates: &mut Fates) -> TxnEntry {
        e.outcome = TxnOutcome::Committed { commit_ts, mode: Some(CommitMode::TwoPhase) };
        e.end = Some(Instant::from_millis(commit_ts));
        let kf = KeyFate::Committed { commit_ts, kind: WriteKind::Put };
        fates.insert(e.id, e.run.writes.iter().map(|(k, _)| (k.clone(), kf)).collect());
        e
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_consistent_history_passes_and_bad_ones_are_named() {
        let mut fates = Fates::new();
        let t0 = committed(entry(0, 10, &[("r0", None)], &[("r0", "x1")]), 20, &mut fates);
        let t1 = committed(entry(1, 30, &[("r0", Some("x1"))], &[("r0", "x2")]), 40, &mut fates);
        let t2 = entry(2, 50, &[("r0", Some("x2"))], &[]);
        let good = TxnHistory { entries: vec![t0.clone(), t1.clone(), t2.clone()] };
        assert_eq!(check(&good, &fates, &data(&[("r0", "x2")])), Vec::<String>::new());

        // A stale read.
        let stale = entry(2, 50, &[("r0", Some("x1"))], &[]);
        let h = TxnHistory { entries: vec![t0.clone(), t1.clone(), stale] };
        let v = check(&h, &fates, &data(&[("r0", "x2")]));
        assert!(v.len() == 1 && v[0].starts_with("read:"), "{v:?}");

        // Reads over its own writes: its put, its delete, and the snapshot
        // (at its start ts) for a key it did not write.
        let mut own = entry(3, 50, &[], &[("r1", "x5")]);
        own.run.writes.push(("r2".into(), TxnWrite::Delete));
        own.run.writes.push(("r3".into(), TxnWrite::Lock));
        own.run.own_reads = vec![
            ("r0".into(), Some("x2".into())),
            ("r1".into(), Some("x5".into())),
            ("r2".into(), None),
            ("r3".into(), None),
        ];
        let mut fates5 = fates.clone();
        fates5.insert(3, vec![("r1".into(), KeyFate::Absent), ("r2".into(), KeyFate::Absent)]);
        own.outcome = TxnOutcome::Failed("conflict".into());
        let h = TxnHistory { entries: vec![t0.clone(), t1.clone(), own.clone()] };
        assert_eq!(check(&h, &fates5, &data(&[("r0", "x2")])), Vec::<String>::new());
        // Not seeing its own put, seeing a key it deleted, or a stale value
        // under its own write set: each named.
        for (i, bad) in [None, Some("x9"), Some("x1")].into_iter().enumerate() {
            let mut e = own.clone();
            e.run.own_reads[[1, 2, 0][i]].1 = bad.map(String::from);
            let h = TxnHistory { entries: vec![t0.clone(), t1.clone(), e] };
            let v = check(&h, &fates5, &data(&[("r0", "x2")]));
            assert!(v.len() == 1 && v[0].starts_with("read-your-writes:"), "{v:?}");
        }

        // A lost update: txn 1 started before txn 0 committed.
        let mut fates2 = Fates::new();
        let a = committed(entry(0, 10, &[], &[("r0", "x1")]), 20, &mut fates2);
        let b = committed(entry(1, 15, &[], &[("r0", "x2")]), 25, &mut fates2);
        let v = check(&TxnHistory { entries: vec![a, b] }, &fates2, &data(&[("r0", "x2")]));
        assert!(v.iter().any(|v| v.contains("lost update")), "{v:?}");

        // Reported committed, but rolled back.
        let mut fates3 = fates.clone();
        fates3.insert(1, vec![("r0".into(), KeyFate::RolledBack)]);
        let v = check(&good, &fates3, &data(&[("r0", "x1")]));
        assert!(v.iter().any(|v| v.starts_with("outcome:")), "{v:?}");

        // Undetermined and half committed.
        let mut u = entry(3, 60, &[], &[("r1", "x3"), ("r2", "x4")]);
        u.outcome = TxnOutcome::Undetermined("lost".into());
        let mut fates4 = Fates::new();
        fates4.insert(
            3,
            vec![
                ("r1".into(), KeyFate::Committed { commit_ts: 70, kind: WriteKind::Put }),
                ("r2".into(), KeyFate::RolledBack),
            ],
        );
        let v = check(&TxnHistory { entries: vec![u] }, &fates4, &data(&[("r1", "x3")]));
        assert!(v.iter().any(|v| v.starts_with("resolution:")), "{v:?}");

        // A later transaction that does not see a reported commit.
        let late = entry(2, 35, &[], &[]);
        let mut late = late;
        late.invoke = Instant::from_millis(45);
        let h = TxnHistory { entries: vec![t0, t1, late] };
        let v = check(&h, &fates, &data(&[("r0", "x2")]));
        assert!(v.iter().any(|v| v.starts_with("real time:")), "{v:?}");
    }

    /// A pessimistic writer of `r0` that locked it at `for_update_ts` and
    /// read `seen` under the lock.
    fn locked(mut e: TxnEntry, for_update_ts: u64, seen: Option<&str>) -> TxnEntry {
        e.run.locked = vec![crate::world::txn_history::LockedRead {
            key: "r0".into(),
            for_update_ts,
            value: seen.map(String::from),
            with_conflict: false,
        }];
        e
    }

    #[test]
    fn the_pessimistic_guarantee_is_checked_from_the_lock() {
        // Txn 1 started before txn 0 committed, but locked r0 after it and
        // read its value: no lost update, though optimistically it would be.
        let mut fates = Fates::new();
        let a = committed(entry(0, 10, &[], &[("r0", "x1")]), 20, &mut fates);
        let b =
            committed(locked(entry(1, 15, &[], &[("r0", "x2")]), 22, Some("x1")), 25, &mut fates);
        let good = TxnHistory { entries: vec![a.clone(), b] };
        assert_eq!(check(&good, &fates, &data(&[("r0", "x2")])), Vec::<String>::new());

        // It read something else under the lock than what was committed.
        let b = committed(locked(entry(1, 15, &[], &[("r0", "x2")]), 22, None), 25, &mut fates);
        let v = check(&TxnHistory { entries: vec![a.clone(), b] }, &fates, &data(&[("r0", "x2")]));
        assert!(v.len() == 1 && v[0].starts_with("pessimistic: txn 1"), "{v:?}");

        // Its lock predates txn 0's commit: txn 0 wrote under its lock.
        let b = committed(locked(entry(1, 15, &[], &[("r0", "x2")]), 18, None), 25, &mut fates);
        let v = check(&TxnHistory { entries: vec![a, b] }, &fates, &data(&[("r0", "x2")]));
        assert!(v.len() == 1 && v[0].contains("in between (lost update)"), "{v:?}");
    }

    #[test]
    fn bank_totals() {
        let mut read = entry(0, 10, &[("a0", Some("150:t1")), ("a1", Some("50:t1"))], &[]);
        read.kind = TxnKind::BankRead;
        let accounts = vec!["a0".to_string(), "a1".to_string()];
        let h = TxnHistory { entries: vec![read.clone()] };
        let fin = data(&[("a0", "150:t1"), ("a1", "50:t1")]);
        assert_eq!(check_bank(&h, &accounts, &fin), Vec::<String>::new());
        read.run.reads[1].1 = None;
        let h = TxnHistory { entries: vec![read] };
        let v = check_bank(&h, &accounts, &data(&[("a0", "150:t1")]));
        assert_eq!(v.len(), 2, "{v:?}");
    }
}
