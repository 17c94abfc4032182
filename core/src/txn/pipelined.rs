//! The write buffer of a pipelined DML transaction (client-go's
//! `unionstore.PipelinedMemDB`): writes go to a mutable [`MemBuffer`];
//! once it holds enough, it is handed off as the next *generation* to be
//! flushed to TiKV as locks (`Flush`) while the transaction keeps writing
//! into a fresh one. At most one generation is in flight; reads look at the
//! mutable buffer, then the one being flushed, then (for keys in neither)
//! what earlier flushes wrote, read back with `BufferBatchGet` and cached
//! until the next flush.
//!
//! Pure bookkeeping: the caller sends the `Flush` and `BufferBatchGet`
//! requests and reports their outcome.
//!
//! ```
//! use tikv_core::txn::pipelined::{FlushStart, FlushThresholds, LocalRead, PipelinedBuffer};
//!
//! // Tiny thresholds for the example; the defaults are client-go's.
//! let thresholds = FlushThresholds { min_keys: 2, min_bytes: 1, force_bytes: 1 << 20 };
//! let mut buffer = PipelinedBuffer::new(thresholds);
//! buffer.put(b"a", "1")?;
//! assert!(!buffer.flush_due());
//! buffer.put(b"b", "2")?;
//! let FlushStart::Started(flush) = buffer.start_flush(false)? else { unreachable!() };
//! assert_eq!((flush.generation, flush.mutations.len()), (1, 2));
//! // Still readable while it is being flushed.
//! assert_eq!(buffer.get_local(b"a"), LocalRead::Put("1".into()));
//! buffer.flush_finished(Ok(()))?;
//! // Now only TiKV has it: the caller reads it back with BufferBatchGet.
//! assert_eq!(buffer.get_local(b"a"), LocalRead::NotInMemory);
//! # Ok::<(), tikv_core::Error>(())
//! ```

use std::collections::BTreeMap;

use crate::Error;
use crate::key::{Key, Value};
use crate::txn::commit::{Mutation, mutations_from_buffer};
use crate::txn::membuffer::{BufferedValue, FlagsOp, KeyFlags, MemBuffer};

/// When the mutable buffer is handed off to be flushed (client-go's
/// `MinFlushKeys`, `MinFlushMemSize`, `ForceFlushMemSizeThreshold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushThresholds {
    /// Keys the buffer must hold, with at least `min_bytes`, to be flushed.
    pub min_keys: usize,
    /// Memory the buffer must hold to be flushed.
    pub min_bytes: usize,
    /// Memory at which the buffer is flushed whatever its key count, and
    /// at which the writer waits for the flush in flight rather than grow.
    pub force_bytes: usize,
}

impl Default for FlushThresholds {
    /// client-go's: 10,000 keys and 16 MiB, or 128 MiB.
    fn default() -> FlushThresholds {
        FlushThresholds { min_keys: 10_000, min_bytes: 16 << 20, force_bytes: 128 << 20 }
    }
}

/// What the buffer holds for a key in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalRead {
    /// Written with this value.
    Put(Value),
    /// Deleted.
    Deleted,
    /// Not in memory: an earlier flush may have written it
    /// ([`PipelinedBuffer::cached_flushed`], else `BufferBatchGet`), or the
    /// snapshot answers.
    NotInMemory,
}

/// One generation handed off to be flushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flush {
    /// Its generation (1 for the first flush; TiKV keeps a key's lock of the
    /// newest generation).
    pub generation: u64,
    /// Its mutations, in key order (client-go builds them as an
    /// optimistic transaction's).
    pub mutations: Vec<Mutation>,
}

/// What [`PipelinedBuffer::start_flush`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushStart {
    /// Nothing to flush yet (or nothing at all).
    NotDue,
    /// A flush is in flight: wait for it ([`PipelinedBuffer::flush_finished`])
    /// and call again (client-go's writer blocks on it here).
    WaitForFlushInFlight,
    /// This generation is to be flushed now.
    Started(Flush),
}

/// A pipelined transaction's write buffer; see the [module docs](self).
#[derive(Debug)]
pub struct PipelinedBuffer {
    current: MemBuffer,
    /// The generation being flushed, readable until its flush finishes.
    flushing: Option<MemBuffer>,
    generation: u64,
    flushed_keys: usize,
    flushed_bytes: usize,
    /// The smallest and largest keys handed to a flush: the range to
    /// resolve at commit.
    flushed_range: Option<(Key, Key)>,
    /// Values of flushed keys read back since the last flush (`None`: not
    /// written by the transaction).
    flushed_reads: BTreeMap<Key, Option<Value>>,
    thresholds: FlushThresholds,
}

impl PipelinedBuffer {
    /// An empty buffer flushing at `thresholds`.
    pub fn new(thresholds: FlushThresholds) -> PipelinedBuffer {
        PipelinedBuffer {
            current: MemBuffer::new(),
            flushing: None,
            generation: 0,
            flushed_keys: 0,
            flushed_bytes: 0,
            flushed_range: None,
            flushed_reads: BTreeMap::new(),
            thresholds,
        }
    }

    /// Buffers `key = value`.
    pub fn put(&mut self, key: &[u8], value: impl Into<Value>) -> Result<(), Error> {
        self.current.set(key, value)
    }

    /// Buffers `key = value`, requiring that the key does not exist (TiKV
    /// checks it when the key is flushed: `AlreadyExist`).
    pub fn insert(&mut self, key: &[u8], value: impl Into<Value>) -> Result<(), Error> {
        self.current.set_with_flags(key, value, &[FlagsOp::SetPresumeKeyNotExists])
    }

    /// Buffers a delete of `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), Error> {
        self.current.delete(key)
    }

    /// What memory holds for `key`: the mutable buffer first, then the
    /// generation being flushed (client-go `GetLocal`).
    pub fn get_local(&self, key: &[u8]) -> LocalRead {
        let buffers = std::iter::once(&self.current).chain(self.flushing.as_ref());
        for buffer in buffers {
            match buffer.get(key).and_then(|e| e.value) {
                Some(BufferedValue::Put(v)) => return LocalRead::Put(v.clone()),
                Some(BufferedValue::Delete) => return LocalRead::Deleted,
                None => {}
            }
        }
        LocalRead::NotInMemory
    }

    /// A flushed key read back since the last flush: `Some(None)` if the
    /// transaction did not write it, `None` if not read back yet.
    pub fn cached_flushed(&self, key: &[u8]) -> Option<Option<Value>> {
        self.flushed_reads.get(key).cloned()
    }

    /// Remembers what `BufferBatchGet` returned for `key` (`None`: nothing,
    /// the transaction did not write it; a flushed delete comes back as an
    /// empty value) until the next flush.
    pub fn record_flushed_read(&mut self, key: Key, value: Option<Value>) {
        self.flushed_reads.insert(key, value);
    }

    /// Whether the mutable buffer should be handed off now (client-go
    /// `needFlush`): it holds at least `min_keys` keys and `min_bytes`, or
    /// `force_bytes` whatever its keys; while a flush is in flight, only at
    /// `force_bytes`.
    pub fn flush_due(&self) -> bool {
        let mem = self.current.mem();
        let t = &self.thresholds;
        if mem < t.min_bytes || (self.current.len() < t.min_keys && mem < t.force_bytes) {
            return false;
        }
        self.flushing.is_none() || mem >= t.force_bytes
    }

    /// Hands the mutable buffer off as the next generation when a flush is
    /// due or `force`d (client-go `Flush(force)`), unless it is empty. The
    /// reads cached from earlier flushes are dropped either way, as
    /// client-go drops them. Open staging levels are refused.
    pub fn start_flush(&mut self, force: bool) -> Result<FlushStart, Error> {
        self.flushed_reads.clear();
        if self.current.staging_depth() > 0 {
            return Err(Error::InvalidArgument(
                "a pipelined transaction cannot flush with open staging levels".into(),
            ));
        }
        if self.current.is_empty() || !(force || self.flush_due()) {
            return Ok(FlushStart::NotDue);
        }
        if self.flushing.is_some() {
            return Ok(FlushStart::WaitForFlushInFlight);
        }
        if self
            .current
            .iter::<std::ops::RangeFull>(..)
            .any(|(_, e)| e.flags.contains(KeyFlags::KEY_LOCKED_IN_SHARE_MODE))
        {
            return Err(Error::InvalidArgument(
                "shared locks are not supported in a pipelined transaction".into(),
            ));
        }
        let handed_off = std::mem::take(&mut self.current);
        self.generation += 1;
        self.flushed_keys += handed_off.len();
        self.flushed_bytes += handed_off.size();
        let first = handed_off.iter::<std::ops::RangeFull>(..).next().map(|(k, _)| k.to_vec());
        let last = handed_off.iter_rev::<std::ops::RangeFull>(..).next().map(|(k, _)| k.to_vec());
        if let (Some(first), Some(last)) = (first, last) {
            let (first, last) = (Key::from(first), Key::from(last));
            self.flushed_range = Some(match self.flushed_range.take() {
                None => (first, last),
                Some((lo, hi)) => (lo.min(first), hi.max(last)),
            });
        }
        let (mutations, _) = mutations_from_buffer(&handed_off);
        self.flushing = Some(handed_off);
        Ok(FlushStart::Started(Flush { generation: self.generation, mutations }))
    }

    /// The flush in flight ended with `result`, which is handed back: an
    /// error fails the transaction (client-go aborts it).
    pub fn flush_finished(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        self.flushing = None;
        result
    }

    /// Whether a flush is in flight.
    pub fn is_flushing(&self) -> bool {
        self.flushing.is_some()
    }

    /// The newest generation handed off (0 before the first flush).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Keys and bytes handed to flushes so far.
    pub fn flushed(&self) -> (usize, usize) {
        (self.flushed_keys, self.flushed_bytes)
    }

    /// The smallest and largest key handed to a flush: committing or
    /// rolling back resolves the locks in this range, region by region.
    pub fn flushed_range(&self) -> Option<&(Key, Key)> {
        self.flushed_range.as_ref()
    }

    /// Whether the transaction wrote anything (flushed or not).
    pub fn dirty(&self) -> bool {
        self.generation > 0 || self.current.dirty()
    }

    /// Keys in the mutable buffer.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether the mutable buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Approximate heap bytes held in memory (both buffers): what the
    /// thresholds keep bounded.
    pub fn mem(&self) -> usize {
        self.current.mem() + self.flushing.as_ref().map_or(0, MemBuffer::mem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> FlushThresholds {
        FlushThresholds { min_keys: 3, min_bytes: 1, force_bytes: usize::MAX }
    }

    fn started(start: FlushStart) -> Flush {
        match start {
            FlushStart::Started(f) => f,
            other => panic!("want a flush, got {other:?}"),
        }
    }

    #[test]
    fn thresholds_follow_client_go_need_flush() {
        // Too few keys, however large.
        let t = FlushThresholds { min_keys: 3, min_bytes: 1, force_bytes: usize::MAX };
        let mut b = PipelinedBuffer::new(t);
        b.put(b"a", vec![0u8; 1 << 16]).unwrap();
        b.put(b"b", "1").unwrap();
        assert!(!b.flush_due());
        b.put(b"c", "1").unwrap();
        assert!(b.flush_due());

        // Enough keys but too little memory.
        let t = FlushThresholds { min_keys: 1, min_bytes: 1 << 30, force_bytes: usize::MAX };
        let mut b = PipelinedBuffer::new(t);
        b.put(b"a", "1").unwrap();
        assert!(!b.flush_due());

        // The force threshold flushes whatever the key count.
        let t = FlushThresholds { min_keys: 1_000, min_bytes: 1, force_bytes: 1 };
        let mut b = PipelinedBuffer::new(t);
        b.put(b"a", "1").unwrap();
        assert!(b.flush_due());
        assert_eq!(FlushThresholds::default().min_keys, 10_000);
    }

    #[test]
    fn one_generation_is_in_flight_at_a_time() {
        let mut b = PipelinedBuffer::new(small());
        for k in [b"k1", b"k2", b"k3"] {
            b.put(k, "v").unwrap();
        }
        let first = started(b.start_flush(false).unwrap());
        assert_eq!(first.generation, 1);
        assert!(b.is_flushing());
        for k in [b"k4", b"k5", b"k6"] {
            b.put(k, "v").unwrap();
        }
        // Below the force threshold a second flush is not due yet.
        assert!(!b.flush_due());
        assert_eq!(b.start_flush(false).unwrap(), FlushStart::NotDue);
        // A forced one waits for the first.
        assert_eq!(b.start_flush(true).unwrap(), FlushStart::WaitForFlushInFlight);
        b.flush_finished(Ok(())).unwrap();
        let second = started(b.start_flush(true).unwrap());
        assert_eq!(second.generation, 2);
        assert_eq!(b.flushed(), (6, 6 * 3));
        // Nothing left: nothing to flush.
        b.flush_finished(Ok(())).unwrap();
        assert_eq!(b.start_flush(true).unwrap(), FlushStart::NotDue);
    }

    #[test]
    fn reads_see_memory_then_the_flush_in_flight_then_need_tikv() {
        let mut b = PipelinedBuffer::new(small());
        b.put(b"a", "old").unwrap();
        b.delete(b"b").unwrap();
        b.put(b"c", "1").unwrap();
        let _ = started(b.start_flush(true).unwrap());
        b.put(b"a", "new").unwrap();
        assert_eq!(b.get_local(b"a"), LocalRead::Put("new".into()), "the mutable buffer first");
        assert_eq!(b.get_local(b"b"), LocalRead::Deleted, "then the generation in flight");
        b.flush_finished(Ok(())).unwrap();
        assert_eq!(b.get_local(b"c"), LocalRead::NotInMemory);
        b.record_flushed_read(Key::from("c"), Some("1".into()));
        b.record_flushed_read(Key::from("z"), None);
        assert_eq!(b.cached_flushed(b"c"), Some(Some("1".into())));
        assert_eq!(b.cached_flushed(b"z"), Some(None));
        // Any flush (even one that is not due) drops what was read back.
        assert_eq!(b.start_flush(false).unwrap(), FlushStart::NotDue);
        assert_eq!(b.cached_flushed(b"c"), None);
    }

    #[test]
    fn mutations_ranges_and_errors() {
        let mut b = PipelinedBuffer::new(small());
        b.put(b"m", "1").unwrap();
        b.insert(b"n", "2").unwrap();
        b.delete(b"o").unwrap();
        let flush = started(b.start_flush(true).unwrap());
        let ops: Vec<_> = flush.mutations.iter().map(|m| (m.key.clone(), m.op)).collect();
        use tikv_proto::kvrpcpb::Op;
        assert_eq!(
            ops,
            vec![
                (Key::from("m"), Op::Put),
                (Key::from("n"), Op::Insert),
                (Key::from("o"), Op::Del)
            ]
        );
        assert!(b.dirty());
        assert!(b.flush_finished(Err(Error::InvalidArgument("flush failed".into()))).is_err());
        assert!(!b.is_flushing());
        b.put(b"a", "1").unwrap();
        b.put(b"z", "1").unwrap();
        let _ = started(b.start_flush(true).unwrap());
        assert_eq!(b.flushed_range(), Some(&(Key::from("a"), Key::from("z"))));

        // Open staging levels are refused.
        let mut b = PipelinedBuffer::new(small());
        b.put(b"a", "1").unwrap();
        let _stage = b.current.staging();
        assert!(matches!(b.start_flush(true), Err(Error::InvalidArgument(_))));
    }
}
