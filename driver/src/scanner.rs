//! Lazy range iteration (client-go `KVSnapshot.Iter`/`IterReverse` and the
//! transaction's `UnionIter`): pairs are fetched a batch at a time as the
//! caller consumes them, so a scan over a large range holds one batch in
//! memory, and stopping early costs no further requests.

use std::collections::VecDeque;

use tikv_core::Error;
use tikv_core::key::{KeyRange, KvPair, ScanSpec};
use tikv_core::txn::snapshot::{SnapshotScan, range_after_page};
use tikv_core::txn::union::{UnionScan, UnionStep};

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
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// // Large rows: fewer of them per request.
    /// let mut rows = snapshot.scan_iter("blob/".."blob0").with_batch_size(16);
    /// while let Some(pair) = rows.next().await? {
    ///     println!("{} bytes", pair.value.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn with_batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Fetches keys only; the pairs' values are empty.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// let mut keys = snapshot.scan_iter("user/".."user0").key_only();
    /// while let Some(pair) = keys.next().await? {
    ///     assert!(pair.value.is_empty());
    ///     println!("{}", pair.key);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn key_only(mut self) -> Self {
        self.key_only = true;
        self
    }

    /// The next pair, `None` at the end of the range.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// let mut rows = snapshot.scan_iter("user/".."user0");
    /// while let Some(pair) = rows.next().await? {
    ///     println!("{pair:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Result<Option<KvPair>, Error> {
        if self.fetched.is_empty() && !self.exhausted {
            self.fetch().await?;
        }
        Ok(self.fetched.pop_front())
    }

    /// Collects up to `limit` pairs.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// let first_ten = snapshot.scan_iter("user/".."user0").collect(10).await?;
    /// assert!(first_ten.len() <= 10);
    /// # Ok(()) }
    /// ```
    pub async fn collect(self, limit: usize) -> Result<Vec<KvPair>, Error> {
        collect_pairs(self, limit).await
    }

    /// The remaining pairs as a `futures::Stream`; it ends after the first
    /// error.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Snapshot};
    /// # async fn demo(snapshot: Snapshot<impl Platform>) -> Result<(), Error> {
    /// use futures::TryStreamExt;
    /// let stream = snapshot.scan_iter("user/".."user0").key_only().into_stream();
    /// let keys: Vec<_> = stream.map_ok(|pair| pair.key).try_collect().await?;
    /// # Ok(()) }
    /// ```
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
        let spec =
            ScanSpec { limit: self.batch_size, reverse: self.reverse, key_only: self.key_only };
        let op = SnapshotScan::new(
            self.snapshot.core.view.clone(),
            self.remaining.clone(),
            spec,
            self.snapshot.ts,
            self.snapshot.opts.clone(),
        );
        let batch = self.snapshot.run("snapshot_scan", op).await?;
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
///
/// The merge is core's [`UnionScan`]; this only runs the snapshot scans it
/// asks for. A failed [`TxnScanner::next`] leaves the position unchanged.
pub struct TxnScanner<'a, P: Platform> {
    txn: &'a Transaction<P>,
    snapshot: Snapshot<P>,
    union: UnionScan,
}

impl<P: Platform> std::fmt::Debug for TxnScanner<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnScanner").field("union", &self.union).finish()
    }
}

impl<'a, P: Platform> TxnScanner<'a, P> {
    pub(crate) fn new(txn: &'a Transaction<P>, union: UnionScan) -> Self {
        TxnScanner { txn, snapshot: txn.snapshot(), union }
    }

    /// Fetches up to `n` snapshot pairs per request (at least 1).
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// // Fewer, larger requests for a long scan.
    /// let pairs = txn.scan_iter("user/".."user0").with_batch_size(1024).collect(5000).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_batch_size(mut self, n: u32) -> Self {
        self.union.set_batch_size(n);
        self
    }

    /// The next pair, `None` at the end of the range.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// txn.put("user/9", "zoe")?;
    /// let mut rows = txn.scan_iter("user/".."user0");
    /// while let Some(pair) = rows.next().await? {
    ///     println!("{pair:?}"); // `user/9 => zoe` among them
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Result<Option<KvPair>, Error> {
        loop {
            match self.union.poll(&self.txn.buffer) {
                UnionStep::Pair(pair) => return Ok(Some(pair)),
                UnionStep::End => return Ok(None),
                UnionStep::Fetch(batch) => {
                    let spec = ScanSpec {
                        limit: batch.limit,
                        reverse: self.union.is_reverse(),
                        key_only: false,
                    };
                    let op = SnapshotScan::new(
                        self.snapshot.core.view.clone(),
                        batch.range,
                        spec,
                        self.snapshot.ts,
                        self.snapshot.opts.clone(),
                    );
                    let pairs = self.snapshot.run("txn_scan", op).await?;
                    self.union.on_snapshot_batch(pairs);
                }
            }
        }
    }

    /// Collects up to `limit` pairs.
    ///
    /// ```no_run
    /// # use tikv_driver::{Error, Platform, Transaction};
    /// # async fn demo(mut txn: Transaction<impl Platform>) -> Result<(), Error> {
    /// let first_ten = txn.scan_iter("user/".."user0").collect(10).await?;
    /// assert!(first_ten.len() <= 10);
    /// # Ok(()) }
    /// ```
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
