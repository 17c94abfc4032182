//! Deadlock detection over the wait-for graph of all waiting
//! `AcquirePessimisticLock` requests, following TiKV's `DetectTable`
//! (`src/server/lock_manager/deadlock.rs`). TiKV runs one detector, on the
//! leader of the first region, for the whole cluster; the model keeps one
//! graph for all regions and stores, derived from the current waiters, so an
//! edge goes away exactly when its waiter is woken, times out or is
//! cancelled (TiKV's `CleanUpWaitFor`), and no edge expires on its own.

use std::collections::BTreeMap;

use bytes::Bytes;
use tikv_proto::deadlock::WaitForEntry;

/// One wait-for edge: transaction `txn` waits for a lock of `wait_for_txn`
/// on `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WaitEdge {
    pub(crate) txn: u64,
    pub(crate) wait_for_txn: u64,
    /// The waited key, as the request sent it (raw).
    pub(crate) key: Bytes,
    pub(crate) resource_group_tag: Bytes,
}

impl WaitEdge {
    fn entry(&self) -> WaitForEntry {
        WaitForEntry {
            txn: self.txn,
            wait_for_txn: self.wait_for_txn,
            key_hash: key_hash(&self.key),
            key: self.key.clone(),
            resource_group_tag: self.resource_group_tag.clone(),
            ..Default::default()
        }
    }
}

/// A deadlock found by [`detect`]: TiKV's `deadlock_key_hash` and wait chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cycle {
    /// The hash of the key whose wait closes the cycle back to the detecting
    /// transaction.
    pub(crate) deadlock_key_hash: u64,
    /// From the waited-for transaction round to the new edge, which is last.
    pub(crate) wait_chain: Vec<WaitForEntry>,
}

/// TiKV's `Key::gen_hash`: FarmHash's fingerprint of the raw key.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    crate::farmhash::fingerprint64(key)
}

/// `DetectTable::detect` for the new edge `new` over the existing `edges`:
/// `None` when adding it closes no cycle (or the same wait is already
/// registered), else the cycle as TiKV reports it (`do_detect`, then
/// `handle_detect_locally` appending the detecting edge).
pub(crate) fn detect(edges: &[WaitEdge], new: &WaitEdge) -> Option<Cycle> {
    if edges.iter().any(|e| e.txn == new.txn && e.wait_for_txn == new.wait_for_txn) {
        return None;
    }
    // Outgoing edges per txn, in the order given (deterministic).
    let mut out: BTreeMap<u64, Vec<&WaitEdge>> = BTreeMap::new();
    for e in edges {
        out.entry(e.txn).or_default().push(e);
    }
    // Depth-first from the waited-for txn; `pred` remembers the edge each
    // vertex was reached by, as TiKV's `pushed` map does.
    let start = new.wait_for_txn;
    let mut pred: BTreeMap<u64, Option<&WaitEdge>> = BTreeMap::from([(start, None)]);
    let mut stack = vec![start];
    while let Some(curr) = stack.pop() {
        for e in out.get(&curr).map(Vec::as_slice).unwrap_or_default() {
            if e.wait_for_txn == new.txn {
                // `generate_wait_chain`: walk back to `start`, then reverse.
                let mut chain = vec![e.entry()];
                let mut at = curr;
                while let Some(Some(p)) = pred.get(&at) {
                    chain.push(p.entry());
                    at = p.txn;
                }
                chain.reverse();
                chain.push(new.entry());
                return Some(Cycle { deadlock_key_hash: key_hash(&e.key), wait_chain: chain });
            }
            if let std::collections::btree_map::Entry::Vacant(v) = pred.entry(e.wait_for_txn) {
                v.insert(Some(e));
                stack.push(e.wait_for_txn);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(txn: u64, wait_for_txn: u64, key: &'static [u8]) -> WaitEdge {
        WaitEdge {
            txn,
            wait_for_txn,
            key: Bytes::from_static(key),
            resource_group_tag: Bytes::new(),
        }
    }

    fn pairs(c: &Cycle) -> Vec<(u64, u64, &[u8])> {
        c.wait_chain.iter().map(|e| (e.txn, e.wait_for_txn, &e.key[..])).collect()
    }

    #[test]
    fn no_cycle_without_a_path_back() {
        let edges = [edge(1, 2, b"a"), edge(2, 3, b"b")];
        assert_eq!(detect(&edges, &edge(4, 1, b"c")), None);
        assert_eq!(detect(&edges, &edge(3, 4, b"c")), None);
    }

    #[test]
    fn two_party_cycle_reports_the_chain_ending_with_the_new_edge() {
        let edges = [edge(10, 20, b"b")];
        let c = detect(&edges, &edge(20, 10, b"a")).expect("a deadlock");
        assert_eq!(pairs(&c), vec![(10, 20, &b"b"[..]), (20, 10, &b"a"[..])]);
        // The key closing the cycle is the existing wait's key.
        assert_eq!(c.deadlock_key_hash, key_hash(b"b"));
        assert_eq!(c.wait_chain[0].key_hash, key_hash(b"b"));
    }

    #[test]
    fn longer_cycle_follows_the_path_in_order() {
        let edges = [edge(1, 2, b"k2"), edge(2, 3, b"k3"), edge(3, 9, b"x"), edge(3, 4, b"k4")];
        let c = detect(&edges, &edge(4, 1, b"k1")).expect("a deadlock");
        assert_eq!(
            pairs(&c),
            vec![(1, 2, &b"k2"[..]), (2, 3, &b"k3"[..]), (3, 4, &b"k4"[..]), (4, 1, &b"k1"[..])]
        );
        assert_eq!(c.deadlock_key_hash, key_hash(b"k4"));
    }

    #[test]
    fn an_already_registered_wait_is_not_a_deadlock() {
        let edges = [edge(1, 2, b"a"), edge(2, 1, b"b")];
        assert_eq!(detect(&edges, &edge(1, 2, b"c")), None);
    }
}
