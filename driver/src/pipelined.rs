//! Pipelined DML transactions (client-go's pipelined `KVTxn`, TiDB's bulk
//! DML): writes are flushed to TiKV as locks while the transaction runs, a
//! generation at a time, so its size is not bounded by the client's memory;
//! the commit commits the primary and resolves the flushed range in the
//! background.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::channel::oneshot;
use tikv_core::Error;
use tikv_core::key::{Key, KvPair, Value};
use tikv_core::pd::Timestamp;
use tikv_core::range_task::RangeTaskRunner;
use tikv_core::rpc::RequestTags;
use tikv_core::time::Duration;
use tikv_core::txn::pipelined::{
    BROADCAST_GRACE_PERIOD, BroadcastTxnStatus, Flush, FlushGeneration, FlushRequest, FlushStart,
    FlushThresholds, FlushThrottle, LocalRead, PipelinedBuffer, PipelinedCommit,
    PipelinedCommitRequest, PipelinedKeepAlive, PipelinedTxnStatus, RESOLVE_FLUSHED_CONCURRENCY,
    ResolveFlushedHandler, TxnStatusUpdate, buffer_batch_get, resolve_flushed,
};
use tikv_proto::kvrpcpb;

use crate::client::{ClientCore, Platform};
use crate::interceptor::{Interceptors, RpcInterceptor};
use crate::observe;
use crate::txn::{Snapshot, TransactionClient, TransactionOptions};
use crate::{Background, Runtime};

/// TiDB's default flush concurrency of a pipelined transaction
/// (`tidb_pipelined_flush_concurrency`).
pub const DEFAULT_FLUSH_CONCURRENCY: usize = 128;

/// Options of a pipelined transaction (client-go `PipelinedTxnOptions`).
/// Build with [`Default::default`] and the `with_` methods.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PipelinedOptions {
    /// Region batches of a generation flushed at once (at least 1).
    pub flush_concurrency: usize,
    /// Regions resolved at once when the transaction commits or rolls back
    /// (at least 1).
    pub resolve_concurrency: usize,
    /// The share of time spent sleeping before each background flush, in
    /// `[0, 1)` (client-go `WriteThrottleRatio`: sleep / (sleep + flush
    /// time) = ratio, flush time by its moving average; 0 never sleeps;
    /// [`FlushThrottle`]). The writer feels it when it reaches the next
    /// flush while the delayed one is still in flight.
    pub write_throttle_ratio: f64,
    /// When the buffer is handed off to be flushed (client-go's thresholds
    /// by default; small ones make tests spill several generations).
    pub flush_thresholds: FlushThresholds,
}

impl Default for PipelinedOptions {
    fn default() -> Self {
        PipelinedOptions {
            flush_concurrency: DEFAULT_FLUSH_CONCURRENCY,
            resolve_concurrency: RESOLVE_FLUSHED_CONCURRENCY,
            write_throttle_ratio: 0.0,
            flush_thresholds: FlushThresholds::default(),
        }
    }
}

impl PipelinedOptions {
    /// Flushes up to `n` region batches of a generation at once.
    ///
    /// ```
    /// let options = tikv_driver::PipelinedOptions::default().with_flush_concurrency(64);
    /// assert_eq!(options.flush_concurrency, 64);
    /// ```
    pub fn with_flush_concurrency(mut self, n: usize) -> Self {
        self.flush_concurrency = n;
        self
    }

    /// Resolves up to `n` regions at once at commit or rollback.
    ///
    /// ```
    /// let options = tikv_driver::PipelinedOptions::default().with_resolve_concurrency(4);
    /// assert_eq!(options.resolve_concurrency, 4);
    /// ```
    pub fn with_resolve_concurrency(mut self, n: usize) -> Self {
        self.resolve_concurrency = n;
        self
    }

    /// Sleeps before each flush so that sleeping takes `ratio` of the
    /// writer's time (`[0, 1)`).
    ///
    /// ```
    /// // Leave TiKV half the time: a flush waits as long as flushes take.
    /// let options = tikv_driver::PipelinedOptions::default().with_write_throttle_ratio(0.5);
    /// assert_eq!(options.write_throttle_ratio, 0.5);
    /// ```
    pub fn with_write_throttle_ratio(mut self, ratio: f64) -> Self {
        self.write_throttle_ratio = ratio;
        self
    }

    /// Flushes at these thresholds instead of client-go's.
    ///
    /// ```
    /// use tikv_driver::{FlushThresholds, PipelinedOptions};
    /// // Smaller generations: flush at 1,000 keys and 1 MiB, force at 8 MiB.
    /// let thresholds = FlushThresholds { min_keys: 1_000, min_bytes: 1 << 20, force_bytes: 8 << 20 };
    /// let options = PipelinedOptions::default().with_flush_thresholds(thresholds);
    /// assert_eq!(options.flush_thresholds.force_bytes, 8 << 20);
    /// ```
    pub fn with_flush_thresholds(mut self, thresholds: FlushThresholds) -> Self {
        self.flush_thresholds = thresholds;
        self
    }

    /// client-go's checks in `NewTiKVTxn`.
    fn validate(&self) -> Result<(), Error> {
        if self.flush_concurrency == 0 {
            return Err(Error::InvalidArgument(
                "pipelined txn flush concurrency should be greater than 0".into(),
            ));
        }
        if self.resolve_concurrency == 0 {
            return Err(Error::InvalidArgument(
                "pipelined txn resolve lock concurrency should be greater than 0".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.write_throttle_ratio) {
            return Err(Error::InvalidArgument(format!(
                "invalid write throttle ratio: {}",
                self.write_throttle_ratio
            )));
        }
        Ok(())
    }
}

/// How far a pipelined transaction has got
/// ([`PipelinedTransaction::progress`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelinedProgress {
    /// Generations handed off to be flushed.
    pub generations: u64,
    /// Keys handed to flushes (a key written in several generations counts
    /// once per generation).
    pub flushed_keys: usize,
    /// Bytes (keys and values) handed to flushes.
    pub flushed_bytes: usize,
    /// Whether a flush is in flight.
    pub flushing: bool,
    /// Keys in memory not handed off yet.
    pub buffered_keys: usize,
    /// Memory the write buffers hold (what the thresholds keep bounded).
    pub memory_bytes: usize,
    /// Heartbeats TiKV accepted on the primary.
    pub heartbeats: u64,
}

/// What a background flush reports.
struct FlushOutcome {
    result: Result<(), Error>,
    took: Duration,
}

impl<P: Platform> TransactionClient<P> {
    /// Starts a pipelined DML transaction at a fresh timestamp (client-go
    /// `Begin(tikv.WithPipelinedTxn(..))`): its writes are flushed to TiKV
    /// as locks while it runs, so it can write more than fits in memory.
    ///
    /// `options` gives priority, tags, assertion level and read options;
    /// client-go's restrictions are refused with
    /// [`Error::Unsupported`]: a pessimistic, async-commit or 1PC
    /// transaction cannot be pipelined. Invalid `pipelined` options are
    /// [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// for i in 0..1_000_000u32 {
    ///     txn.put(format!("key{i:08}"), "value").await?;
    /// }
    /// println!("{:?}", txn.progress());
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin_pipelined(
        &self,
        options: TransactionOptions,
        pipelined: PipelinedOptions,
    ) -> Result<PipelinedTransaction<P>, Error> {
        if options.pessimistic {
            return Err(Error::Unsupported("a pipelined transaction cannot be pessimistic".into()));
        }
        if options.commit.async_commit || options.commit.one_pc {
            return Err(Error::Unsupported(
                "a pipelined transaction cannot use async commit or 1PC".into(),
            ));
        }
        pipelined.validate()?;
        let start_ts = self.current_timestamp().await?;
        Ok(PipelinedTransaction {
            core: self.core.clone(),
            interceptors: self.interceptors.clone(),
            start_ts,
            started: self.core.rt.now(),
            buffer: PipelinedBuffer::new(pipelined.flush_thresholds),
            options,
            throttle: FlushThrottle::new(pipelined.write_throttle_ratio),
            pipelined,
            primary: None,
            in_flight: None,
            failed: None,
            keep_alive: None,
            status: None,
            finished: false,
        })
    }
}

/// A pipelined DML transaction ([`TransactionClient::begin_pipelined`]):
/// writes go to memory and, once enough is buffered, are flushed to TiKV as
/// the transaction's locks in the background while it keeps writing (one
/// generation in flight; a writer that reaches the force threshold waits
/// for it). Reads see its own writes: memory first, then what it flushed
/// (read back with `BufferBatchGet`), then the snapshot at its start.
///
/// The first flush starts heartbeats on the primary, which also push its
/// `min_commit_ts` so readers at older timestamps are not held up.
/// [`commit`](Self::commit) flushes the rest and commits the primary; the
/// other locks are resolved region by region in the background.
/// [`rollback`](Self::rollback), or dropping the transaction, rolls every
/// flushed lock back the same way. No range scans (client-go's pipelined
/// buffer has no iterator either).
///
/// Every store is told the transaction's status in the background
/// (TiKV's `BroadcastTxnStatus`, which feeds its resolved-ts worker): the
/// `min_commit_ts` after each heartbeat, the commit ts once the primary is
/// committed or the rollback, and the completion
/// [`BROADCAST_GRACE_PERIOD`] after the flushed locks are resolved. None
/// of it is waited for or can fail a call.
#[must_use = "a transaction writes nothing until committed; dropped, its locks are rolled back"]
pub struct PipelinedTransaction<P: Platform> {
    core: Arc<ClientCore<P>>,
    /// Around every store RPC of the transaction, its background flushes
    /// and resolution included.
    interceptors: Interceptors,
    start_ts: Timestamp,
    /// When `start_ts` came (the lock TTL of each flush counts from here).
    started: tikv_core::time::Instant,
    buffer: PipelinedBuffer,
    options: TransactionOptions,
    pipelined: PipelinedOptions,
    /// The first key of the first generation.
    primary: Option<Key>,
    in_flight: Option<oneshot::Receiver<FlushOutcome>>,
    /// The error a flush ended with: the transaction can only roll back.
    failed: Option<Error>,
    keep_alive: Option<Background>,
    status: Option<Arc<PipelinedTxnStatus>>,
    /// The write throttle, fed with each flush's time.
    throttle: FlushThrottle,
    finished: bool,
}

impl<P: Platform> std::fmt::Debug for PipelinedTransaction<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelinedTransaction")
            .field("start_ts", &self.start_ts)
            .field("generation", &self.buffer.generation())
            .finish()
    }
}

impl<P: Platform> PipelinedTransaction<P> {
    /// Sends this transaction's store RPCs from now on, its background
    /// flushes and resolution included, through `interceptor` after the
    /// ones already added (client-go `KVTxn.AddRPCInterceptor`).
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// let details = tikv_driver::ExecDetailsCollector::new();
    /// txn.add_interceptor(details.clone()); // sums what TiKV reports on each flush
    /// # Ok(()) }
    /// ```
    pub fn add_interceptor(&mut self, interceptor: impl RpcInterceptor) {
        self.interceptors = self.interceptors.with(interceptor);
    }

    /// The start timestamp.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// println!("started at {:?}", txn.start_timestamp());
    /// # Ok(()) }
    /// ```
    pub fn start_timestamp(&self) -> Timestamp {
        self.start_ts
    }

    /// The primary key, once the first generation was handed off.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// assert!(txn.primary_key().is_none(), "nothing flushed yet");
    /// txn.put("k", "v").await?;
    /// txn.flush(true).await?; // hand the buffer off now
    /// assert!(txn.primary_key().is_some());
    /// # Ok(()) }
    /// ```
    pub fn primary_key(&self) -> Option<&Key> {
        self.primary.as_ref()
    }

    /// Generations, keys and bytes flushed so far, and what memory holds.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// for i in 0..100_000 {
    ///     txn.put(format!("row/{i:08}"), "payload").await?;
    /// }
    /// let p = txn.progress();
    /// println!("{} generations, {} keys flushed, {} in memory", p.generations, p.flushed_keys, p.buffered_keys);
    /// # Ok(()) }
    /// ```
    pub fn progress(&self) -> PipelinedProgress {
        let (flushed_keys, flushed_bytes) = self.buffer.flushed();
        PipelinedProgress {
            generations: self.buffer.generation(),
            flushed_keys,
            flushed_bytes,
            flushing: self.buffer.is_flushing(),
            buffered_keys: self.buffer.len(),
            memory_bytes: self.buffer.mem(),
            heartbeats: self.status.as_ref().map_or(0, |s| s.beats()),
        }
    }

    /// Buffers `key = value`; flushes a generation if one is due.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// txn.put("row/1", "a").await?; // may wait while a full buffer is flushed
    /// txn.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> Result<(), Error> {
        self.check_writable()?;
        self.buffer.put(key.into().as_bytes(), value.into())?;
        self.flush(false).await
    }

    /// Buffers `key = value`, requiring that the key does not exist (TiKV
    /// checks when the key is flushed: the flush, and so the transaction,
    /// fails with [`Error::KeyExists`]).
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// txn.insert("user/alice", "1").await?;
    /// match txn.commit().await {
    ///     Err(tikv_driver::Error::KeyExists(_)) => println!("alice was there already"),
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn insert(
        &mut self,
        key: impl Into<Key>,
        value: impl Into<Value>,
    ) -> Result<(), Error> {
        self.check_writable()?;
        self.buffer.insert(key.into().as_bytes(), value.into())?;
        self.flush(false).await
    }

    /// Buffers a delete of `key`; flushes a generation if one is due.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// txn.delete("row/1").await?;
    /// assert_eq!(txn.get("row/1").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn delete(&mut self, key: impl Into<Key>) -> Result<(), Error> {
        self.check_writable()?;
        self.buffer.delete(key.into().as_bytes())?;
        self.flush(false).await
    }

    /// The value of `key` for this transaction.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// txn.put("row/1", "a").await?;
    /// txn.flush(true).await?;
    /// txn.flush_wait().await?;
    /// // No longer in memory: read back from the flushed lock.
    /// assert_eq!(txn.get("row/1").await?.as_deref(), Some(&b"a"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn get(&mut self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        let mut pairs = self.batch_get([key.into()]).await?;
        Ok(pairs.pop().map(|p| p.value))
    }

    /// The pairs among `keys` that exist for this transaction, sorted by
    /// key: its writes in memory, then what it flushed (one
    /// `BufferBatchGet` for the keys not read back since the last flush; a
    /// flushed delete comes back empty), then the snapshot at its start
    /// (which reads past the transaction's own locks: their
    /// `min_commit_ts` is above the start).
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// for pair in txn.batch_get(["row/1", "row/2"]).await? {
    ///     println!("{:?} = {:?}", pair.key, pair.value);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn batch_get(
        &mut self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<KvPair>, Error> {
        self.check_active()?;
        let mut keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        let mut flushed = Vec::new();
        let mut from_snapshot = Vec::new();
        for key in keys {
            match self.buffer.get_local(key.as_bytes()) {
                LocalRead::Put(value) => out.push(KvPair::new(key, value)),
                LocalRead::Deleted => {}
                LocalRead::NotInMemory => match self.buffer.cached_flushed(key.as_bytes()) {
                    Some(Some(value)) if value.is_empty() => {}
                    Some(Some(value)) => out.push(KvPair::new(key, value)),
                    Some(None) => from_snapshot.push(key),
                    None if self.buffer.generation() > 0 => flushed.push(key),
                    None => from_snapshot.push(key),
                },
            }
        }
        if !flushed.is_empty() {
            let op = buffer_batch_get(
                &self.core.view,
                flushed.clone(),
                self.start_ts,
                &self.options.read.tags,
            );
            let found = self.core.run("pipelined_buffer_batch_get", op, &self.interceptors).await?;
            for key in flushed {
                match found.binary_search_by(|p| p.key.cmp(&key)) {
                    Ok(i) => {
                        let value = found[i].value.clone();
                        self.buffer.record_flushed_read(key.clone(), Some(value.clone()));
                        if !value.is_empty() {
                            out.push(KvPair::new(key, value));
                        }
                    }
                    Err(_) => {
                        self.buffer.record_flushed_read(key.clone(), None);
                        from_snapshot.push(key);
                    }
                }
            }
        }
        if !from_snapshot.is_empty() {
            let snapshot = Snapshot {
                core: self.core.clone(),
                ts: self.start_ts,
                opts: self.options.read.clone(),
                interceptors: self.interceptors.clone(),
            };
            out.extend(snapshot.batch_get(from_snapshot).await?);
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Whether `key` exists for this transaction.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// if !txn.key_exists("row/1").await? {
    ///     txn.put("row/1", "first").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn key_exists(&mut self, key: impl Into<Key>) -> Result<bool, Error> {
        Ok(self.get(key).await?.is_some())
    }

    /// Hands the buffer off as the next generation if it is due (or
    /// `force`d), waiting for the flush in flight first if needed; the
    /// generation is flushed in the background.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// txn.put("row/1", "a").await?;
    /// txn.flush(true).await?; // start flushing what is buffered, below the thresholds too
    /// # Ok(()) }
    /// ```
    pub async fn flush(&mut self, force: bool) -> Result<(), Error> {
        self.check_writable()?;
        self.collect_flush(false).await?;
        if !force && !self.buffer.flush_due() {
            return Ok(());
        }
        loop {
            match self.buffer.start_flush(force)? {
                FlushStart::NotDue => return Ok(()),
                FlushStart::WaitForFlushInFlight => self.collect_flush(true).await?,
                FlushStart::Started(flush) => {
                    self.spawn_flush(flush);
                    return Ok(());
                }
            }
        }
    }

    /// Waits for the flush in flight, if any, and returns its error
    /// (client-go `FlushWait`).
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// txn.put("row/1", "a").await?;
    /// txn.flush(true).await?;
    /// txn.flush_wait().await?; // the generation is in TiKV as locks, or its error is here
    /// # Ok(()) }
    /// ```
    pub async fn flush_wait(&mut self) -> Result<(), Error> {
        self.check_active()?;
        self.collect_flush(true).await
    }

    /// Commits; returns the commit timestamp. The last generation is
    /// flushed, then only the primary is committed; the other locks are
    /// resolved in the background (readers resolve any left through the
    /// primary). Errors are definite unless [`Error::Undetermined`] (the
    /// primary's commit lost its answer); after a definite failure every
    /// flushed lock is rolled back in the background.
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// txn.put("row/1", "a").await?;
    /// match txn.commit().await {
    ///     Ok(commit_ts) => println!("committed at {commit_ts:?}"),
    ///     Err(tikv_driver::Error::Undetermined(_)) => println!("unknown: read it back"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn commit(mut self) -> Result<Timestamp, Error> {
        self.check_active()?;
        self.finished = true;
        let last = match self.finish_flushing().await {
            Ok(last) => last,
            Err(e) => {
                self.spawn_rollback();
                return Err(e);
            }
        };
        let (Some(primary), Some(range)) =
            (self.primary.clone(), self.buffer.flushed_range().cloned())
        else {
            // Nothing written: a read-only transaction commits at its start.
            return Ok(self.start_ts);
        };
        let req = PipelinedCommitRequest {
            start_ts: self.start_ts,
            primary,
            flushed_range: range,
            flush_concurrency: self.pipelined.flush_concurrency,
            resolve_concurrency: self.pipelined.resolve_concurrency,
            tags: self.options.commit.tags.clone(),
        };
        let last = last.map(|flush| (self.flush_request(flush.generation), flush.mutations));
        let mut op = PipelinedCommit::new(self.core.view.clone(), req, last);
        let result = self.core.run("pipelined_commit", &mut op, &self.interceptors).await;
        let _ = self.buffer.flush_finished(Ok(()));
        // The commit settled the primary's fate: no more heartbeats.
        self.keep_alive = None;
        if let Some(resolve) = op.take_follow_up() {
            let min_commit_ts = self.min_commit_ts();
            let (task, status, commit_ts) = match &result {
                Ok(ts) => (
                    "pipelined_resolve_commit",
                    TxnStatusUpdate::committed(self.start_ts, min_commit_ts, *ts),
                    *ts,
                ),
                Err(_) => (
                    "pipelined_rollback",
                    TxnStatusUpdate::rolled_back(self.start_ts, min_commit_ts, false),
                    Timestamp::ZERO,
                ),
            };
            self.spawn_broadcast(status);
            let settle = self.settler();
            self.core.spawn_counted(async move {
                let result = settle.core.run(task, resolve, &settle.chain).await;
                observe::background_result(task, &result);
                settle.complete_after_grace(result.is_ok(), commit_ts);
            });
        }
        result
    }

    /// Abandons the transaction: waits for the flush in flight, then rolls
    /// every flushed lock back, region by region (client-go `Rollback` of a
    /// pipelined transaction), and returns the rollback's error, if any
    /// (its locks then expire, no longer kept alive).
    ///
    /// ```no_run
    /// # async fn demo(client: tikv_driver::TransactionClient<impl tikv_driver::Platform>) -> Result<(), tikv_driver::Error> {
    /// use tikv_driver::{PipelinedOptions, TransactionOptions};
    /// let mut txn =
    ///     client.begin_pipelined(TransactionOptions::default(), PipelinedOptions::default()).await?;
    /// txn.put("row/1", "a").await?;
    /// txn.rollback().await?; // nothing of it is ever visible
    /// # Ok(()) }
    /// ```
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.check_active()?;
        self.finished = true;
        // Its outcome changes nothing: what it wrote is in the range.
        let _ = self.collect_flush(true).await;
        self.keep_alive = None;
        let op = self.rollback_op();
        // client-go's `Rollback`: complete at once when nothing was flushed.
        let status =
            TxnStatusUpdate::rolled_back(self.start_ts, self.min_commit_ts(), op.is_none());
        self.spawn_broadcast(status);
        match op {
            Some(op) => {
                let result = self.core.run("pipelined_rollback", op, &self.interceptors).await;
                self.settler().complete_after_grace(result.is_ok(), Timestamp::ZERO);
                result.map(drop)
            }
            None => Ok(()),
        }
    }

    /// The rollback of every flushed lock: the flushed range resolved with
    /// commit ts 0; `None` when nothing was flushed.
    fn rollback_op(&self) -> Option<RangeTaskRunner<ResolveFlushedHandler>> {
        let range = self.buffer.flushed_range().cloned()?;
        Some(resolve_flushed(
            &self.core.view,
            range,
            self.start_ts,
            Timestamp::ZERO,
            self.pipelined.resolve_concurrency,
        ))
    }

    /// The `min_commit_ts` the heartbeats last pushed the primary to (the
    /// start ts before any).
    fn min_commit_ts(&self) -> Timestamp {
        self.status.as_ref().map_or(self.start_ts, |s| s.min_commit_ts().max(self.start_ts))
    }

    fn settler(&self) -> Settler<P> {
        Settler {
            core: self.core.clone(),
            chain: self.interceptors.clone(),
            tags: self.options.commit.tags.clone(),
            start_ts: self.start_ts,
        }
    }

    /// Tells every store `status` in the background.
    fn spawn_broadcast(&self, status: TxnStatusUpdate) {
        let settle = self.settler();
        self.core.spawn_counted(async move { settle.broadcast(status).await });
    }

    fn check_active(&self) -> Result<(), Error> {
        if self.finished {
            return Err(Error::InvalidArgument("the transaction is already finished".into()));
        }
        Ok(())
    }

    /// Writes are refused once a flush failed or the heartbeats gave up
    /// (client-go: "ttl manager is closed"): only a rollback remains.
    fn check_writable(&self) -> Result<(), Error> {
        self.check_active()?;
        self.check_not_failed()
    }

    fn check_not_failed(&self) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.status.as_ref().is_some_and(|s| s.stopped()) {
            return Err(Error::InvalidArgument(
                "the pipelined transaction's heartbeats stopped: it can only roll back".into(),
            ));
        }
        Ok(())
    }

    /// Waits for the flush in flight and hands the rest off as the last
    /// generation (not flushed yet: the commit flushes it).
    async fn finish_flushing(&mut self) -> Result<Option<Flush>, Error> {
        self.check_not_failed()?;
        self.collect_flush(true).await?;
        self.check_not_failed()?;
        match self.buffer.start_flush(true)? {
            FlushStart::Started(flush) => {
                self.choose_primary(&flush);
                Ok(Some(flush))
            }
            FlushStart::NotDue | FlushStart::WaitForFlushInFlight => Ok(None),
        }
    }

    /// The primary is the first key of the first generation that writes
    /// (client-go skips `CheckNotExists`, which leaves no lock).
    fn choose_primary(&mut self, flush: &Flush) {
        if self.primary.is_none() {
            let writes = flush.mutations.iter().find(|m| m.op != kvrpcpb::Op::CheckNotExists);
            self.primary = writes.or(flush.mutations.first()).map(|m| m.key.clone());
        }
    }

    fn flush_request(&self, generation: u64) -> FlushRequest {
        FlushRequest {
            start_ts: self.start_ts,
            primary: self.primary.clone().unwrap_or_default(),
            generation,
            assertion_level: self.options.commit.assertion_level,
            tags: self.options.commit.tags.clone(),
            started_at: self.started,
        }
    }

    /// Flushes `flush` in the background, after the throttle's sleep.
    fn spawn_flush(&mut self, flush: Flush) {
        self.choose_primary(&flush);
        let req = self.flush_request(flush.generation);
        let mut op = FlushGeneration::new(self.core.view.clone(), req, flush.mutations)
            .with_concurrency(self.pipelined.flush_concurrency);
        if let Some(written) = self.start_keep_alive() {
            op = op.signal_primary_written(written);
        }
        // client-go calls throttlePipelinedTxn in the flush goroutine.
        let throttle = self.throttle.sleep_before_flush();
        let (tx, rx) = oneshot::channel();
        let core = self.core.clone();
        let chain = self.interceptors.clone();
        self.core.spawn_counted(async move {
            if throttle > Duration::ZERO {
                core.rt.sleep_until(core.rt.now() + throttle).await;
            }
            let began = core.rt.now();
            let result = core.run("pipelined_flush", op, &chain).await;
            let took = core.rt.now().saturating_duration_since(began);
            // The transaction may be gone: its rollback waits on this.
            let _ = tx.send(FlushOutcome { result, took });
        });
        self.in_flight = Some(rx);
    }

    /// Takes the outcome of the flush in flight, waiting for it if `wait`:
    /// the flush time feeds the throttle's average, a failure fails the
    /// transaction.
    async fn collect_flush(&mut self, wait: bool) -> Result<(), Error> {
        let Some(rx) = self.in_flight.as_mut() else { return Ok(()) };
        let outcome = if wait {
            rx.await
        } else {
            match rx.try_recv() {
                Ok(Some(outcome)) => Ok(outcome),
                Ok(None) => return Ok(()),
                Err(canceled) => Err(canceled),
            }
        };
        self.in_flight = None;
        let outcome = outcome.unwrap_or_else(|_| FlushOutcome {
            result: Err(Error::Internal("a pipelined flush task ended without an answer".into())),
            took: Duration::ZERO,
        });
        self.throttle.record_flush(outcome.took);
        let result = self.buffer.flush_finished(outcome.result);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Heartbeats on the primary, started with the first flush and
    /// beating once the flush has written the primary's lock (client-go
    /// starts the TTL manager when the primary's batch is flushed, while
    /// the rest of the generation may still wait for other locks): the
    /// flag for that flush to set.
    fn start_keep_alive(&mut self) -> Option<Arc<AtomicBool>> {
        let primary = self.primary.clone()?;
        if self.keep_alive.is_some() {
            return None;
        }
        let written = Arc::new(AtomicBool::new(false));
        let keep_alive = PipelinedKeepAlive::new(
            self.core.view.clone(),
            self.start_ts,
            primary,
            self.options.commit.tags.clone(),
        )
        .after_primary_written(written.clone());
        self.status = Some(keep_alive.status());
        self.keep_alive = Some(self.core.spawn_op_until_dropped(
            "pipelined_keep_alive",
            keep_alive,
            &self.interceptors,
        ));
        Some(written)
    }

    /// Rolls every flushed lock back in the background, after the flush in
    /// flight (whose locks are in the range too) has ended.
    fn spawn_rollback(&mut self) {
        self.keep_alive = None;
        let Some(op) = self.rollback_op() else { return };
        let in_flight = self.in_flight.take();
        let status = TxnStatusUpdate::rolled_back(self.start_ts, self.min_commit_ts(), false);
        let settle = self.settler();
        self.core.spawn_counted(async move {
            if let Some(flush) = in_flight {
                let _ = flush.await;
            }
            settle.broadcast(status).await;
            let result = settle.core.run("pipelined_rollback", op, &settle.chain).await;
            observe::background_result("pipelined_rollback", &result);
            settle.complete_after_grace(result.is_ok(), Timestamp::ZERO);
        });
    }
}

/// What the background end of a pipelined transaction needs once the
/// transaction itself is gone.
struct Settler<P: Platform> {
    core: Arc<ClientCore<P>>,
    chain: Interceptors,
    tags: RequestTags,
    start_ts: Timestamp,
}

impl<P: Platform> Settler<P> {
    /// client-go `broadcastToAllStores`: failures are logged, never
    /// returned.
    async fn broadcast(&self, status: TxnStatusUpdate) {
        let op = BroadcastTxnStatus::new(self.core.view.clone(), vec![status], self.tags.clone());
        match self.core.run("pipelined_broadcast", op, &self.chain).await {
            Ok(outcome) => observe::broadcast_failures(&outcome),
            // A closed client has nobody left to tell.
            Err(Error::Closed) => {}
            Err(e) => observe::background_failed("pipelined_broadcast", &e),
        }
    }

    /// After the flushed locks are resolved (`resolved`), tells every store
    /// the transaction is complete once [`BROADCAST_GRACE_PERIOD`] has
    /// passed (client-go waits so a follower that has not applied the
    /// resolution yet still finds the status). Not counted among the work
    /// `close` waits for: a closing client skips it.
    fn complete_after_grace(self, resolved: bool, commit_ts: Timestamp) {
        if !resolved {
            return;
        }
        let rt = self.core.rt.clone();
        rt.spawn(Box::pin(async move {
            self.core.rt.sleep_until(self.core.rt.now() + BROADCAST_GRACE_PERIOD).await;
            self.broadcast(TxnStatusUpdate::completed(self.start_ts, commit_ts)).await;
        }));
    }
}

impl<P: Platform> Drop for PipelinedTransaction<P> {
    /// A pipelined transaction dropped without commit or rollback rolls its
    /// flushed locks back in the background, so none outlives it.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.spawn_rollback();
        }
    }
}
