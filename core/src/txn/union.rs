//! Read-your-writes: a transaction's reads see its own buffered writes over
//! its snapshot (client-go's `KVUnionStore` and `UnionIter`,
//! `internal/unionstore`).
//!
//! Pure and sans-IO: these types decide what the buffer answers, which
//! snapshot reads are still needed, and how their answers merge with the
//! buffer. Whoever runs the transaction (the driver's `Transaction`, the
//! simulated world) runs the snapshot operations they ask for
//! ([`SnapshotGet`](crate::txn::snapshot::SnapshotGet),
//! [`SnapshotBatchGet`](crate::txn::snapshot::SnapshotBatchGet),
//! [`SnapshotScan`](crate::txn::snapshot::SnapshotScan)) and feeds the
//! answers back.
//!
//! The rules, as client-go's:
//! - a buffered put answers with its value, over whatever the snapshot has;
//! - a buffered delete hides the snapshot's value (the key reads absent);
//! - a key that only carries flags (locked by `LockKeys`, not written) is
//!   no write: the snapshot answers.
//!
//! The buffer must not change while a merge is in progress: the merge keeps
//! a cursor into it between calls.

use std::collections::VecDeque;
use std::ops::Bound;

use crate::key::{Key, KeyRange, KvPair, Value};
use crate::txn::membuffer::{BufferedValue, MemBuffer};
use crate::txn::snapshot::range_after_page;

/// What the buffer says about one key a transaction reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PointRead {
    /// The transaction wrote this value.
    Put(Value),
    /// The transaction deleted the key: it reads absent.
    Deleted,
    /// No buffered write (or only flags): the snapshot answers.
    Snapshot,
}

/// The buffer's answer for `key` (client-go's `KVUnionStore.Get`: the
/// memory buffer first, the snapshot on "not found").
pub fn read_point(buffer: &MemBuffer, key: &[u8]) -> PointRead {
    match buffer.get(key).and_then(|e| e.value) {
        Some(BufferedValue::Put(v)) => PointRead::Put(v.clone()),
        Some(BufferedValue::Delete) => PointRead::Deleted,
        None => PointRead::Snapshot,
    }
}

/// A batch get split between the buffer and the snapshot: the pairs the
/// buffer answers now, and the keys to read from the snapshot
/// ([`UnionBatchGet::snapshot_keys`]); [`UnionBatchGet::merge`] combines
/// the snapshot's answer with the buffer's.
#[derive(Clone, Debug)]
pub struct UnionBatchGet {
    from_buffer: Vec<KvPair>,
    snapshot_keys: Vec<Key>,
}

impl UnionBatchGet {
    /// Splits `keys` (in any order, duplicates allowed) by what the buffer
    /// knows of each.
    pub fn new(buffer: &MemBuffer, keys: impl IntoIterator<Item = Key>) -> UnionBatchGet {
        let mut from_buffer = Vec::new();
        let mut snapshot_keys = Vec::new();
        for key in keys {
            match read_point(buffer, key.as_bytes()) {
                PointRead::Put(value) => from_buffer.push(KvPair { key, value }),
                PointRead::Deleted => {}
                PointRead::Snapshot => snapshot_keys.push(key),
            }
        }
        UnionBatchGet { from_buffer, snapshot_keys }
    }

    /// The keys the snapshot must be asked for, in the caller's order
    /// (possibly none).
    pub fn snapshot_keys(&self) -> &[Key] {
        &self.snapshot_keys
    }

    /// Takes the keys the snapshot must be asked for.
    pub fn take_snapshot_keys(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.snapshot_keys)
    }

    /// The pairs that exist for the transaction, sorted by key, one per
    /// key: the buffer's puts plus the snapshot's answer for the other keys.
    pub fn merge(self, snapshot: Vec<KvPair>) -> Vec<KvPair> {
        let mut out = self.from_buffer;
        out.extend(snapshot);
        // Stable: on a repeated key the buffer's pair (pushed first) stays.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        out
    }
}

/// The next snapshot batch a [`UnionScan`] needs: scan `range` in the
/// scan's direction for up to `limit` pairs, then pass them to
/// [`UnionScan::on_snapshot_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotBatch {
    /// What the batch must cover: the part of the scan's range the earlier
    /// batches did not.
    pub range: KeyRange,
    /// How many pairs to ask for.
    pub limit: u32,
}

/// What a [`UnionScan`] yields next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnionStep {
    /// The next pair of the merged scan.
    Pair(KvPair),
    /// The merge cannot go on without the next snapshot batch.
    Fetch(SnapshotBatch),
    /// The scan is over (end of range, or the limit reached).
    End,
}

/// A scan as the transaction sees it: ordered snapshot batches merged with
/// the buffer's ordered writes, forward or in reverse (client-go's
/// `UnionIter` over a `Scanner` and a memdb iterator).
///
/// Drive it with [`UnionScan::poll`]: on [`UnionStep::Fetch`], run the
/// snapshot scan it describes and hand the pairs to
/// [`UnionScan::on_snapshot_batch`]; a failed snapshot scan leaves the
/// merge where it was, so the same fetch may be tried again.
///
/// Each poll compares the next buffered write with the snapshot's next
/// pair, as `UnionIter.updateCur` does: the smaller key (larger in reverse)
/// goes first; on equal keys the buffer's write wins and the snapshot pair
/// is dropped; a buffered delete yields nothing. The snapshot is paged as
/// client-go's `Scanner` pages it ([`range_after_page`]).
#[derive(Clone, Debug)]
pub struct UnionScan {
    range: KeyRange,
    reverse: bool,
    batch_size: u32,
    /// Pairs still to yield; `usize::MAX` for a lazy scan.
    limit: usize,
    /// What the snapshot still has to scan; `None` once it is exhausted.
    snapshot_rest: Option<KeyRange>,
    /// Snapshot pairs fetched and not merged yet, in scan order.
    fetched: VecDeque<KvPair>,
    /// The last buffered key merged; the next lies beyond it.
    buffer_cursor: Option<Key>,
    /// The limit of the batch asked for last, which tells a short batch
    /// (the snapshot is exhausted) from a full one.
    asked: u32,
}

impl UnionScan {
    /// A lazy merged scan of `range` fetching up to `batch_size` snapshot
    /// pairs per batch (at least 1), with no limit.
    pub fn new(range: KeyRange, reverse: bool, batch_size: u32) -> UnionScan {
        UnionScan {
            snapshot_rest: (!range.is_empty()).then(|| range.clone()),
            range,
            reverse,
            batch_size: batch_size.max(1),
            limit: usize::MAX,
            fetched: VecDeque::new(),
            buffer_cursor: None,
            asked: 0,
        }
    }

    /// The first `limit` pairs of the merged scan. Each snapshot batch asks
    /// for `limit` plus the number of buffered deletes in the range, since at
    /// most that many snapshot pairs can be hidden: one batch usually
    /// suffices.
    pub fn with_limit(buffer: &MemBuffer, range: KeyRange, reverse: bool, limit: u32) -> UnionScan {
        let deletes = if range.is_empty() {
            0
        } else {
            buffer.iter(buffer_bounds(&range, None, false)).filter(|(_, e)| e.is_delete()).count()
        };
        let batch = limit.saturating_add(u32::try_from(deletes).unwrap_or(u32::MAX));
        let mut scan = UnionScan::new(range, reverse, batch);
        scan.limit = limit as usize;
        scan
    }

    /// Sets the snapshot batch size (at least 1) for the batches not
    /// fetched yet.
    pub fn set_batch_size(&mut self, batch_size: u32) {
        self.batch_size = batch_size.max(1);
    }

    /// True for a descending scan.
    pub fn is_reverse(&self) -> bool {
        self.reverse
    }

    /// The next step of the merge over `buffer` (the same buffer, unchanged,
    /// at every call).
    pub fn poll(&mut self, buffer: &MemBuffer) -> UnionStep {
        loop {
            if self.limit == 0 {
                return UnionStep::End;
            }
            let buffered = self.next_buffered(buffer);
            let snapshot_key = match self.fetched.front() {
                Some(pair) => Some(&pair.key),
                None => match &self.snapshot_rest {
                    // Nothing can be decided before the snapshot's next
                    // pair is known: it may come before the buffered one.
                    Some(rest) => {
                        self.asked = self.batch_size;
                        return UnionStep::Fetch(SnapshotBatch {
                            range: rest.clone(),
                            limit: self.batch_size,
                        });
                    }
                    None => None,
                },
            };
            let take_buffered = match (&buffered, snapshot_key) {
                (None, None) => return UnionStep::End,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((b, _)), Some(s)) => {
                    if b == s {
                        // The transaction's own write shadows the snapshot's.
                        self.fetched.pop_front();
                        true
                    } else {
                        (b < s) != self.reverse
                    }
                }
            };
            if !take_buffered {
                if let Some(pair) = self.fetched.pop_front() {
                    self.limit -= 1;
                    return UnionStep::Pair(pair);
                }
                continue;
            }
            let Some((key, value)) = buffered else { continue };
            self.buffer_cursor = Some(key.clone());
            if let Some(value) = value {
                self.limit -= 1;
                return UnionStep::Pair(KvPair { key, value });
            }
            // A buffered delete: nothing to yield, look further.
        }
    }

    /// Feeds the snapshot's answer to the last [`UnionStep::Fetch`]: its
    /// pairs in scan order, at most the asked limit.
    pub fn on_snapshot_batch(&mut self, batch: Vec<KvPair>) {
        let Some(rest) = &self.snapshot_rest else { return };
        self.snapshot_rest = range_after_page(rest, &batch, self.asked, self.reverse);
        self.fetched.extend(batch);
    }

    /// The next buffered write in scan order beyond the cursor: a put's
    /// value or `None` for a delete. Flag-only entries are skipped: they
    /// are not writes, so the snapshot answers for them.
    fn next_buffered(&self, buffer: &MemBuffer) -> Option<(Key, Option<Value>)> {
        if self.range.is_empty() {
            return None;
        }
        let bounds = buffer_bounds(&self.range, self.buffer_cursor.as_ref(), self.reverse);
        let mut entries = if self.reverse { buffer.iter_rev(bounds) } else { buffer.iter(bounds) };
        entries.find_map(|(key, entry)| match entry.value {
            Some(BufferedValue::Put(v)) => Some((Key::from(key.to_vec()), Some(v.clone()))),
            Some(BufferedValue::Delete) => Some((Key::from(key.to_vec()), None)),
            None => None,
        })
    }
}

/// The buffer bounds of `range` (an empty end is unbounded), narrowed past
/// `cursor` in the scan direction.
fn buffer_bounds<'a>(
    range: &'a KeyRange,
    cursor: Option<&'a Key>,
    reverse: bool,
) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let start = Bound::Included(range.start.as_bytes());
    let end =
        if range.end.is_empty() { Bound::Unbounded } else { Bound::Excluded(range.end.as_bytes()) };
    match cursor.map(|k| Bound::Excluded(k.as_bytes())) {
        None => (start, end),
        Some(cursor) if reverse => (start, cursor),
        Some(cursor) => (cursor, end),
    }
}

#[cfg(test)]
mod tests;
