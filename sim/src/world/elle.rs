//! An Elle-style checker for list-append histories (Kingsbury & Alvaro,
//! "Elle: Inferring Isolation Anomalies from Experimental Observations").
//!
//! Transactions append unique elements to lists and read whole lists.
//! Because every element is unique and lists only grow, a read names the
//! exact version it saw, and the longest read of a key gives that key's
//! version order. From it the checker infers, between committed
//! transactions:
//! - **ww** `T1 → T2`: T2 appended the element right after T1's;
//! - **wr** `T1 → T2`: T2 read a version whose last element T1 appended;
//! - **rw** `T1 → T2`: T1 read a version and T2 appended the next element.
//!
//! It reports, each only when the history proves it:
//! - **G0** (write cycle): a cycle of ww edges;
//! - **G1a** (aborted read): a committed transaction read an element
//!   appended by a transaction that definitely failed;
//! - **G1b** (intermediate read): a committed transaction read a version
//!   ending in an element that its appender followed with another append to
//!   the same list;
//! - **G1c** (cyclic information flow): a cycle of ww and wr edges with at
//!   least one wr edge;
//! - **G-single** (read skew): a cycle with exactly one rw edge, the rest ww
//!   or wr; snapshot isolation forbids it;
//! - **lost update**: two committed transactions read the same version of a
//!   list and both appended to it;
//! - incompatible orders (two reads of a list where neither is a prefix of
//!   the other), duplicate elements, elements nobody appended (garbage), and
//!   reads inconsistent with the transaction's own earlier appends.
//!
//! Cycles with two or more rw edges (G2, write skew) are allowed under
//! snapshot isolation and are not reported.
//!
//! Which transactions committed: those reported committed; a transaction
//! with an unknown outcome counts as committed once a committed transaction
//! read one of its elements (it cannot have been rolled back then), and is
//! left out otherwise; a definitely failed one is aborted. Reads of
//! transactions not known to have committed are not used (Adya's
//! anomalies are about committed transactions).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use super::txn_history::{GARBAGE, Micro};

/// What the history says about a transaction's fate.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Reported committed.
    Committed,
    /// Definitely failed.
    Aborted,
    /// Unknown (undetermined, crashed).
    Unknown,
}

/// One list-append transaction: its micro-operations, reads with results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElleTxn {
    /// An id for reports (the history entry).
    pub id: usize,
    /// Its fate as reported.
    pub status: Status,
    /// Appends and reads in order; reads without a result are ignored.
    pub ops: Vec<Micro>,
}

/// The anomaly classes the checker reports.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// A cycle of write-write dependencies.
    G0,
    /// A committed transaction read an aborted transaction's write.
    G1a,
    /// A committed transaction read an intermediate version.
    G1b,
    /// A cycle of write-write and write-read dependencies.
    G1c,
    /// A cycle with exactly one anti-dependency (read skew).
    GSingle,
    /// Two committed transactions appended to the same version they read.
    LostUpdate,
    /// Two reads of a list that no single version order explains.
    IncompatibleOrder,
    /// A read listed an element twice.
    DuplicateElements,
    /// A read listed an element that no transaction appended.
    GarbageRead,
    /// A read disagreed with the transaction's own earlier reads/appends.
    Internal,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// The class.
    pub kind: AnomalyKind,
    /// What was seen, naming transactions by id.
    pub description: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.description)
    }
}

/// Dependency kinds between committed transactions.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dep {
    Ww,
    Wr,
    Rw,
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dep::Ww => "ww",
            Dep::Wr => "wr",
            Dep::Rw => "rw",
        })
    }
}

/// Reports per class at most this many findings (a broken run finds
/// thousands).
const MAX_PER_KIND: usize = 5;

/// A read as the checker uses it: the version the transaction's snapshot
/// showed (own appends stripped) and the full list it saw.
struct ReadView {
    txn: usize,
    key: u32,
    /// The snapshot's version (the list minus the transaction's own appends).
    snapshot: Vec<u32>,
    /// The whole list read (the snapshot plus own appends so far).
    full: Vec<u32>,
}

struct Checker<'a> {
    txns: &'a [ElleTxn],
    /// (key, element) → (txn index, position among its appends to the key).
    appender: BTreeMap<(u32, u32), usize>,
    /// Per txn and key: its appended elements in order.
    appends: Vec<BTreeMap<u32, Vec<u32>>>,
    committed: Vec<bool>,
    found: Vec<Anomaly>,
}

impl<'a> Checker<'a> {
    fn report(&mut self, kind: AnomalyKind, description: String) {
        if self.found.iter().filter(|a| a.kind == kind).count() < MAX_PER_KIND {
            self.found.push(Anomaly { kind, description });
        }
    }

    fn id(&self, t: usize) -> usize {
        self.txns[t].id
    }

    /// Reads of committed transactions, with internal-consistency checks.
    fn reads(&mut self) -> Vec<ReadView> {
        let mut views = Vec::new();
        for (t, txn) in self.txns.iter().enumerate() {
            if !self.committed[t] {
                continue;
            }
            // Per key: own appends so far, and the snapshot seen first.
            let mut own: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            let mut seen: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for op in &txn.ops {
                match op {
                    Micro::Append(k, e) => own.entry(*k).or_default().push(*e),
                    Micro::Read(_, None) => {}
                    Micro::Read(k, Some(list)) => {
                        let mine = own.get(k).map_or(&[][..], Vec::as_slice);
                        let Some(snapshot) = list.strip_suffix(mine) else {
                            self.report(
                                AnomalyKind::Internal,
                                format!(
                                    "txn {} read l{k} = {list:?}, which does not end with its own appends {mine:?}",
                                    txn.id
                                ),
                            );
                            continue;
                        };
                        let later: Vec<u32> = self.appends[t]
                            .get(k)
                            .map(|all| all[mine.len()..].to_vec())
                            .unwrap_or_default();
                        if let Some(&e) = snapshot.iter().find(|e| later.contains(e)) {
                            self.report(
                                AnomalyKind::Internal,
                                format!("txn {} read l{k} = {list:?}, with {e}, which it appends only later", txn.id),
                            );
                            continue;
                        }
                        if let Some(first) = seen.get(k) {
                            if first.as_slice() != snapshot {
                                self.report(
                                    AnomalyKind::Internal,
                                    format!(
                                        "txn {} read l{k} as {first:?} and later as {list:?} (own appends {mine:?})",
                                        txn.id
                                    ),
                                );
                            }
                            continue;
                        }
                        seen.insert(*k, snapshot.to_vec());
                        views.push(ReadView {
                            txn: t,
                            key: *k,
                            snapshot: snapshot.to_vec(),
                            full: list.clone(),
                        });
                    }
                }
            }
        }
        views
    }

    /// Garbage, duplicates, aborted and intermediate reads.
    fn check_elements(&mut self, views: &[ReadView]) {
        for v in views {
            let reader = self.id(v.txn);
            let mut dup = BTreeSet::new();
            for &e in &v.full {
                if !dup.insert(e) {
                    self.report(
                        AnomalyKind::DuplicateElements,
                        format!("txn {reader} read l{} = {:?}: {e} twice", v.key, v.full),
                    );
                }
                match self.appender.get(&(v.key, e)) {
                    None => {
                        let what = if e == GARBAGE {
                            "a malformed element".into()
                        } else {
                            format!("{e}")
                        };
                        self.report(
                            AnomalyKind::GarbageRead,
                            format!(
                                "txn {reader} read l{} = {:?}: {what} was never appended",
                                v.key, v.full
                            ),
                        );
                    }
                    Some(&w) if self.txns[w].status == Status::Aborted => {
                        let writer = self.id(w);
                        self.report(
                            AnomalyKind::G1a,
                            format!(
                                "txn {reader} read l{} = {:?}, with {e} appended by failed txn {writer}",
                                v.key, v.full
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
            // The snapshot's last element must be its appender's last to
            // this list: a committed version never ends mid-transaction.
            if let Some(&last) = v.snapshot.last()
                && let Some(&w) = self.appender.get(&(v.key, last))
                && w != v.txn
                && let Some(all) = self.appends[w].get(&v.key)
                && all.last() != Some(&last)
            {
                let writer = self.id(w);
                self.report(
                    AnomalyKind::G1b,
                    format!(
                        "txn {reader} read l{} = {:?}, ending in {last}, but txn {writer} appended {all:?}",
                        v.key, v.snapshot
                    ),
                );
            }
        }
    }

    /// The version order of each list: the longest read, if every read is a
    /// prefix of it.
    fn version_orders(&mut self, views: &[ReadView]) -> BTreeMap<u32, Vec<u32>> {
        let mut by_key: BTreeMap<u32, Vec<&Vec<u32>>> = BTreeMap::new();
        for v in views {
            by_key.entry(v.key).or_default().push(&v.full);
        }
        let mut orders = BTreeMap::new();
        for (k, mut lists) in by_key {
            lists.sort_by_key(|l| std::cmp::Reverse(l.len()));
            let longest = lists[0];
            match lists.iter().find(|l| !longest.starts_with(l)) {
                Some(bad) => self.report(
                    AnomalyKind::IncompatibleOrder,
                    format!("l{k} was read as {longest:?} and as {bad:?}"),
                ),
                None => {
                    orders.insert(k, longest.clone());
                }
            }
        }
        orders
    }
}

/// Edges between committed transactions (indices into the input), each
/// with the kinds that relate them and an example key.
type Graph = Vec<BTreeMap<usize, BTreeMap<Dep, u32>>>;

fn add_edge(g: &mut Graph, from: usize, to: usize, dep: Dep, key: u32) {
    if from != to {
        g[from].entry(to).or_default().entry(dep).or_insert(key);
    }
}

/// A shortest path `from → … → to` over edges of the allowed kinds.
fn path(g: &Graph, from: usize, to: usize, allowed: &[Dep]) -> Option<Vec<usize>> {
    let mut prev: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    while let Some(n) = queue.pop_front() {
        if n == to {
            let mut p = vec![to];
            let mut cur = to;
            while cur != from {
                cur = prev[&cur];
                p.push(cur);
            }
            p.reverse();
            return Some(p);
        }
        for (&m, deps) in &g[n] {
            if deps.keys().any(|d| allowed.contains(d)) && seen.insert(m) {
                prev.insert(m, n);
                queue.push_back(m);
            }
        }
    }
    None
}

/// Checks a list-append history; returns the anomalies found (empty for a
/// history consistent with snapshot isolation).
pub fn check(txns: &[ElleTxn]) -> Vec<Anomaly> {
    let mut appender = BTreeMap::new();
    let mut appends: Vec<BTreeMap<u32, Vec<u32>>> = vec![BTreeMap::new(); txns.len()];
    for (t, txn) in txns.iter().enumerate() {
        for op in &txn.ops {
            if let Micro::Append(k, e) = op {
                appender.entry((*k, *e)).or_insert(t);
                appends[t].entry(*k).or_default().push(*e);
            }
        }
    }
    // Committed: reported so, or an unknown one a committed read observed
    // (to a fixpoint: the observer may itself be such a transaction).
    let mut committed: Vec<bool> = txns.iter().map(|t| t.status == Status::Committed).collect();
    loop {
        let mut changed = false;
        for (t, txn) in txns.iter().enumerate() {
            if !committed[t] {
                continue;
            }
            for op in &txn.ops {
                let Micro::Read(k, Some(list)) = op else { continue };
                for e in list {
                    if let Some(&w) = appender.get(&(*k, *e))
                        && txns[w].status == Status::Unknown
                        && !committed[w]
                    {
                        committed[w] = true;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut c = Checker { txns, appender, appends, committed, found: Vec::new() };
    let views = c.reads();
    c.check_elements(&views);
    let orders = c.version_orders(&views);

    let mut g: Graph = vec![BTreeMap::new(); txns.len()];
    let committed_appender = |c: &Checker<'_>, k: u32, e: u32| {
        c.appender.get(&(k, e)).copied().filter(|&w| c.committed[w])
    };
    for (&k, order) in &orders {
        for pair in order.windows(2) {
            if let (Some(a), Some(b)) =
                (committed_appender(&c, k, pair[0]), committed_appender(&c, k, pair[1]))
            {
                add_edge(&mut g, a, b, Dep::Ww, k);
            }
        }
    }
    // Lost updates: (key, version read) → committed transactions that read
    // it and appended to the key.
    let mut rmw: BTreeMap<(u32, Vec<u32>), Vec<usize>> = BTreeMap::new();
    for v in &views {
        if let Some(&last) = v.snapshot.last()
            && let Some(w) = committed_appender(&c, v.key, last)
        {
            add_edge(&mut g, w, v.txn, Dep::Wr, v.key);
        }
        if let Some(order) = orders.get(&v.key)
            && order.starts_with(&v.snapshot)
            && let Some(&next) = order.get(v.snapshot.len())
            && let Some(w) = committed_appender(&c, v.key, next)
        {
            add_edge(&mut g, v.txn, w, Dep::Rw, v.key);
        }
        if c.appends[v.txn].contains_key(&v.key) {
            rmw.entry((v.key, v.snapshot.clone())).or_default().push(v.txn);
        }
    }
    for ((k, version), readers) in &rmw {
        if readers.len() > 1 {
            let ids: Vec<usize> = readers.iter().map(|&t| c.id(t)).collect();
            c.report(
                AnomalyKind::LostUpdate,
                format!("txns {ids:?} all read l{k} = {version:?} and all appended to it"),
            );
        }
    }

    // Cycles: for each edge a → b of the class's closing kind, a path
    // b → … → a over the class's other kinds closes a cycle.
    let mut cycles_seen: BTreeSet<(AnomalyKind, Vec<usize>)> = BTreeSet::new();
    let classes: [(AnomalyKind, Dep, &[Dep]); 3] = [
        (AnomalyKind::G0, Dep::Ww, &[Dep::Ww]),
        (AnomalyKind::G1c, Dep::Wr, &[Dep::Ww, Dep::Wr]),
        (AnomalyKind::GSingle, Dep::Rw, &[Dep::Ww, Dep::Wr]),
    ];
    for (kind, closing, rest) in classes {
        for a in 0..g.len() {
            let targets: Vec<usize> =
                g[a].iter().filter(|(_, d)| d.contains_key(&closing)).map(|(&b, _)| b).collect();
            for b in targets {
                let Some(back) = path(&g, b, a, rest) else { continue };
                let mut members: Vec<usize> = back.clone();
                members.sort_unstable();
                if !cycles_seen.insert((kind, members)) {
                    continue;
                }
                // a -closing-> b -…-> a, spelled with each edge's kind and key.
                let mut text = format!("txn {}", c.id(a));
                let mut hops = vec![(a, b, Some(closing))];
                hops.extend(back.windows(2).map(|w| (w[0], w[1], None)));
                for (x, y, forced) in hops {
                    let deps = &g[x][&y];
                    let (dep, key) = match forced {
                        Some(d) => (d, deps[&d]),
                        None => {
                            let d = *deps.keys().find(|d| rest.contains(d)).unwrap_or(&Dep::Ww);
                            (d, deps.get(&d).copied().unwrap_or_default())
                        }
                    };
                    text.push_str(&format!(" -{dep} l{key}-> txn {}", c.id(y)));
                }
                c.report(kind, text);
            }
        }
    }
    c.found.sort_by_key(|a| a.kind);
    c.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: usize, status: Status, ops: Vec<Micro>) -> ElleTxn {
        ElleTxn { id, status, ops }
    }
    fn r(k: u32, list: &[u32]) -> Micro {
        Micro::Read(k, Some(list.to_vec()))
    }
    fn a(k: u32, e: u32) -> Micro {
        Micro::Append(k, e)
    }
    use Status::{Aborted, Committed, Unknown};

    fn kinds(txns: &[ElleTxn]) -> Vec<AnomalyKind> {
        let mut k: Vec<AnomalyKind> = check(txns).into_iter().map(|a| a.kind).collect();
        k.dedup();
        k
    }

    #[test]
    fn a_serial_history_has_no_anomaly() {
        let h = [
            txn(1, Committed, vec![r(0, &[]), a(0, 1), a(1, 2)]),
            txn(2, Committed, vec![r(0, &[1]), a(0, 3), a(0, 4), r(0, &[1, 3, 4])]),
            txn(3, Aborted, vec![r(1, &[2]), a(1, 9)]),
            // Unknown and never observed: left out.
            txn(4, Unknown, vec![a(1, 8)]),
            // Unknown but observed by txn 6: committed.
            txn(5, Unknown, vec![a(1, 5)]),
            txn(6, Committed, vec![r(0, &[1, 3, 4]), r(1, &[2, 5])]),
        ];
        assert_eq!(check(&h), Vec::new());
    }

    #[test]
    fn write_skew_is_allowed() {
        // Each reads the list the other appends to, before it: two rw edges.
        let h = [
            txn(1, Committed, vec![r(0, &[]), a(1, 1)]),
            txn(2, Committed, vec![r(1, &[]), a(0, 2)]),
            txn(3, Committed, vec![r(0, &[2]), r(1, &[1])]),
        ];
        assert_eq!(check(&h), Vec::new());
    }

    #[test]
    fn flags_g0() {
        // l0 orders 1 before 2, l1 orders 2's write before 1's.
        let h = [
            txn(1, Committed, vec![a(0, 1), a(1, 11)]),
            txn(2, Committed, vec![a(0, 2), a(1, 12)]),
            txn(3, Committed, vec![r(0, &[1, 2]), r(1, &[12, 11])]),
        ];
        assert!(kinds(&h).contains(&AnomalyKind::G0), "{:?}", check(&h));
    }

    #[test]
    fn flags_g1a() {
        let h = [txn(1, Aborted, vec![a(0, 1)]), txn(2, Committed, vec![r(0, &[1])])];
        assert_eq!(kinds(&h), [AnomalyKind::G1a]);
    }

    #[test]
    fn flags_g1b() {
        let h = [txn(1, Committed, vec![a(0, 1), a(0, 2)]), txn(2, Committed, vec![r(0, &[1])])];
        assert_eq!(kinds(&h), [AnomalyKind::G1b]);
    }

    #[test]
    fn flags_g1c() {
        // Each read the other's append: wr both ways.
        let h = [
            txn(1, Committed, vec![a(0, 1), r(1, &[2])]),
            txn(2, Committed, vec![a(1, 2), r(0, &[1])]),
        ];
        assert!(kinds(&h).contains(&AnomalyKind::G1c), "{:?}", check(&h));
        assert!(!kinds(&h).contains(&AnomalyKind::G0));
    }

    #[test]
    fn flags_g_single() {
        // Read skew: txn 1 sees l0 before txn 2 and l1 after it.
        let h = [
            txn(1, Committed, vec![r(0, &[]), r(1, &[2])]),
            txn(2, Committed, vec![a(0, 1), a(1, 2)]),
            txn(3, Committed, vec![r(0, &[1]), r(1, &[2])]),
        ];
        assert_eq!(kinds(&h), [AnomalyKind::GSingle]);
    }

    #[test]
    fn flags_lost_update() {
        let h = [
            txn(1, Committed, vec![r(0, &[]), a(0, 1)]),
            txn(2, Committed, vec![r(0, &[]), a(0, 2)]),
            txn(3, Committed, vec![r(0, &[2])]),
        ];
        assert!(kinds(&h).contains(&AnomalyKind::LostUpdate), "{:?}", check(&h));
    }

    #[test]
    fn flags_incompatible_orders_duplicates_garbage_and_internal_reads() {
        let h = [
            txn(1, Committed, vec![a(0, 1)]),
            txn(2, Committed, vec![a(0, 2)]),
            txn(3, Committed, vec![r(0, &[1, 2])]),
            txn(4, Committed, vec![r(0, &[2, 1])]),
        ];
        assert!(kinds(&h).contains(&AnomalyKind::IncompatibleOrder), "{:?}", check(&h));
        let h = [txn(1, Committed, vec![a(0, 1)]), txn(2, Committed, vec![r(0, &[1, 1])])];
        assert_eq!(kinds(&h), [AnomalyKind::DuplicateElements]);
        let h = [txn(1, Committed, vec![r(0, &[7])])];
        assert_eq!(kinds(&h), [AnomalyKind::GarbageRead]);
        let h = [txn(1, Committed, vec![r(0, &[GARBAGE])])];
        assert_eq!(kinds(&h), [AnomalyKind::GarbageRead]);
        // Its own append is missing from a later read.
        let h = [txn(1, Committed, vec![a(0, 1), r(0, &[])])];
        assert_eq!(kinds(&h), [AnomalyKind::Internal]);
        // Two reads of the same snapshot disagree.
        let h = [txn(1, Committed, vec![a(0, 1)]), txn(2, Committed, vec![r(0, &[]), r(0, &[1])])];
        assert_eq!(kinds(&h), [AnomalyKind::Internal]);
    }

    #[test]
    fn reads_of_transactions_not_known_committed_are_not_used() {
        // The aborted txn 2 "saw" an aborted write: not G1a (it did not commit).
        let h = [txn(1, Aborted, vec![a(0, 1)]), txn(2, Aborted, vec![r(0, &[1])])];
        assert_eq!(check(&h), Vec::new());
    }
}
