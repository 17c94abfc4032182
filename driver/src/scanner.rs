//! Lazy range iteration (client-go `KVSnapshot.Iter`/`IterReverse` and the
//! transaction's `UnionIter`): pairs are fetched a batch at a time as the
//! caller consumes them, so a scan over a large range holds one batch in
//! memory, and stopping early costs no further requests.

use std::collections::VecDeque;
use std::ops::Bound;

use tikv_core::Error;
use tikv_core::key::{Key, KeyRange, KvPair, Value};
use tikv_core::txn::membuffer::BufferedValue;
use tikv_core::txn::snapshot::{SnapshotScan, range_after_page};

use crate::client::Platform;
use crate::txn::{Snapshot, Transaction};

/// Pairs per request of a [`Scanner`] unless set otherwise (client-go's
/// `scanBatchSize`).
pub const DEFAULT_SCAN_BATCH_SIZE: u32 = 256;

/// A lazy scan of a range at a snapshot, ascending or descending; from
/// [`Snapshot::scan_iter`] / [`Snapshot::scan_reverse_iter`].
///
/// Each batch is one snapshot scan (with the usual lock handling) of up to
/// `batch_size` pairs, starting where the previous one ended. A failed
/// [`Scanner::next`] leaves the position unchanged, so it may be called again.
///
/// ```no_run
/// # use tikv_driver::{Error, Platform, TransactionClient};
/// # async fn demo<P: Platform>(client: TransactionClient<P>) -> Result<(), Error> {
/// let snapshot = client.snapshot(client.current_timestamp().await?);
/// let mut rows = snapshot.scan_iter("user/".."user0").with_batch_size(1024);
/// while let Some(pair) = rows.next().await? {
///     println!("{:?}", pair.key);
/// }
/// # Ok(()) }
/// ```
pub struct Scanner<P: Platform> {
    snapshot: Snapshot<P>,
    /// What is still to be read: the batches so far have consumed the rest.
    remaining: KeyRange,
    reverse: bool,
    key_only: bool,
    batch_size: u32,
    fetched: VecDeque<KvPair>,
    exhausted: bool,
}

impl<P: Platform> std::fmt::Debug for Scanner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("remaining", &self.remaining)
            .field("reverse", &self.reverse)
            .field("batch_size", &self.batch_size)
            .field("buffered", &self.fetched.len())
            .finish()
    }
}

impl<P: Platform> Scanner<P> {
    pub(crate) fn new(snapshot: Snapshot<P>, range: KeyRange, reverse: bool) -> Scanner<P> {
        Scanner {
            snapshot,
            exhausted: range.is_empty(),
            remaining: range,
            reverse,
            key_only: false,
            batch_size: DEFAULT_SCAN_BATCH_SIZE,
            fetched: VecDeque::new(),
        }
    }

    /// Fetches up to `n` pairs per request (at least 1).
    pub fn with_batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Fetches keys only; the pairs' values are empty.
    pub fn key_only(mut self) -> Self {
        self.key_only = true;
        self
    }

    /// The next pair, `None` at the end of the range.
    pub async fn next(&mut self) -> Result<Option<KvPair>, Error> {
        if self.fetched.is_empty() && !self.exhausted {
            self.fetch().await?;
        }
        Ok(self.fetched.pop_front())
    }

    /// The next pair without consuming it.
    pub(crate) async fn peek(&mut self) -> Result<Option<&KvPair>, Error> {
        if self.fetched.is_empty() && !self.exhausted {
            self.fetch().await?;
        }
        Ok(self.fetched.front())
    }

    /// Collects up to `limit` pairs.
    pub async fn collect(self, limit: usize) -> Result<Vec<KvPair>, Error> {
        collect_pairs(self, limit).await
    }

    /// The remaining pairs as a `futures::Stream`; it ends after the first
    /// error.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<KvPair, Error>> {
        futures::stream::unfold(Some(self), |scanner| async move {
            let mut scanner = scanner?;
            match scanner.next().await {
                Ok(Some(pair)) => Some((Ok(pair), Some(scanner))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    async fn fetch(&mut self) -> Result<(), Error> {
        let op = SnapshotScan::new(
            self.snapshot.core.view.clone(),
            self.remaining.clone(),
            self.batch_size,
            self.key_only,
            self.reverse,
            self.snapshot.ts,
            self.snapshot.opts.clone(),
        );
        let batch = self.snapshot.run(op).await?;
        match range_after_page(&self.remaining, &batch, self.batch_size, self.reverse) {
            Some(rest) => self.remaining = rest,
            None => self.exhausted = true,
        }
        self.fetched.extend(batch);
        Ok(())
    }
}

/// A lazy scan of a range as a transaction sees it: the snapshot's pairs
/// merged with the transaction's own writes (buffered puts win, buffered
/// deletes hide), client-go's `UnionIter`. From
/// [`Transaction::scan_iter`] / [`Transaction::scan_reverse_iter`]; it
/// borrows the transaction, so the buffer cannot change under it.
pub struct TxnScanner<'a, P: Platform> {
    txn: &'a Transaction<P>,
    snapshot: Scanner<P>,
    /// The last buffered key merged; the next one lies beyond it.
    buffer_cursor: Option<Key>,
    range: KeyRange,
    reverse: bool,
}

impl<P: Platform> std::fmt::Debug for TxnScanner<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnScanner").field("snapshot", &self.snapshot).finish()
    }
}

impl<'a, P: Platform> TxnScanner<'a, P> {
    pub(crate) fn new(
        txn: &'a Transaction<P>,
        snapshot: Scanner<P>,
        range: KeyRange,
        reverse: bool,
    ) -> Self {
        TxnScanner { txn, snapshot, buffer_cursor: None, range, reverse }
    }

    /// Fetches up to `n` snapshot pairs per request (at least 1).
    pub fn with_batch_size(mut self, n: u32) -> Self {
        self.snapshot = self.snapshot.with_batch_size(n);
        self
    }

    /// The next buffered write in the scan direction: a put's value or
    /// `None` for a delete. Entries carrying only flags (locked keys) are
    /// not writes and are skipped.
    fn next_buffered(&self) -> Option<(Key, Option<Value>)> {
        let start = Bound::Included(self.range.start.as_bytes());
        let end = if self.range.end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(self.range.end.as_bytes())
        };
        let cursor = self.buffer_cursor.as_ref().map(|k| Bound::Excluded(k.as_bytes()));
        let buffer = &self.txn.buffer;
        let mut entries = if self.reverse {
            buffer.iter_rev((start, cursor.unwrap_or(end)))
        } else {
            buffer.iter((cursor.unwrap_or(start), end))
        };
        entries.find_map(|(key, entry)| match entry.value {
            Some(BufferedValue::Put(v)) => Some((Key::from(key.to_vec()), Some(v.clone()))),
            Some(BufferedValue::Delete) => Some((Key::from(key.to_vec()), None)),
            None => None,
        })
    }

    /// The next pair, `None` at the end of the range.
    pub async fn next(&mut self) -> Result<Option<KvPair>, Error> {
        loop {
            let buffered = self.next_buffered();
            let from_snapshot = self.snapshot.peek().await?.map(|p| p.key.clone());
            let take_buffered = match (&buffered, &from_snapshot) {
                (None, None) => return Ok(None),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((b, _)), Some(s)) => {
                    if b == s {
                        // The transaction's own write shadows the snapshot's.
                        self.snapshot.next().await?;
                        true
                    } else {
                        (b < s) != self.reverse
                    }
                }
            };
            if !take_buffered {
                return self.snapshot.next().await;
            }
            let Some((key, value)) = buffered else { continue };
            self.buffer_cursor = Some(key.clone());
            if let Some(value) = value {
                return Ok(Some(KvPair { key, value }));
            }
            // A buffered delete: nothing to yield, look further.
        }
    }

    /// Collects up to `limit` pairs.
    pub async fn collect(self, limit: usize) -> Result<Vec<KvPair>, Error> {
        collect_pairs(self, limit).await
    }
}

/// One pair at a time: what collecting needs from either scanner.
trait NextPair {
    async fn next_pair(&mut self) -> Result<Option<KvPair>, Error>;
}

impl<P: Platform> NextPair for Scanner<P> {
    async fn next_pair(&mut self) -> Result<Option<KvPair>, Error> {
        self.next().await
    }
}

impl<P: Platform> NextPair for TxnScanner<'_, P> {
    async fn next_pair(&mut self) -> Result<Option<KvPair>, Error> {
        self.next().await
    }
}

/// Up to `limit` pairs from `source`.
async fn collect_pairs(mut source: impl NextPair, limit: usize) -> Result<Vec<KvPair>, Error> {
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(pair) = source.next_pair().await?
    {
        out.push(pair);
    }
    Ok(out)
}
