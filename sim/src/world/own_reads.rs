//! Read-your-writes in the transactional world: after buffering its writes
//! and before committing them, a transaction reads its keys again as the
//! driver's `Transaction` does, through core's merge of the buffer over
//! snapshot reads (`tikv_core::txn::union`). The SI checker then holds
//! every such read against the transaction's own writes over its snapshot.
//!
//! [`OwnRead`] runs the same snapshot machines as the first reads
//! (`SnapshotGet` per key, one `SnapshotBatchGet`, or `SnapshotScan`
//! batches), asking only what the merge asks for. Forward scans page
//! through the snapshot two pairs at a time, so merges cross batches;
//! reverse scans use the limit rule (limit plus buffered deletes per
//! batch).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tikv_core::error::Error;
use tikv_core::key::{Key, KeyRange, KvPair, ScanSpec};
use tikv_core::op::{IdMap, Operation};
use tikv_core::pd::Timestamp;
use tikv_core::rpc::{Response, Rpc, RpcError, RpcId};
use tikv_core::time::Instant;
use tikv_core::txn::membuffer::MemBuffer;
use tikv_core::txn::snapshot::{ReadOptions, SnapshotBatchGet, SnapshotGet, SnapshotScan};
use tikv_core::txn::union::{PointRead, UnionBatchGet, UnionScan, UnionStep, read_point};
use tikv_core::view::ClusterView;

use super::txn_history::ReadMethod;

/// Snapshot pairs per batch of a forward own-read scan: small, so the
/// world's scans over at most a few dozen keys cross batches.
const FORWARD_BATCH: u32 = 2;

/// Which keys an own read covers.
#[derive(Clone, Debug)]
pub(crate) enum OwnReadKeys {
    /// These keys, by point or batch reads.
    Points(Vec<Key>),
    /// Every key in this range (the listed keys are the ones the run has
    /// there; each reads absent unless the scan returns it).
    Range(KeyRange, Vec<Key>),
}

/// The snapshot read in flight.
enum Child {
    Get(Box<SnapshotGet>, Key),
    BatchGet(Box<SnapshotBatchGet>, UnionBatchGet),
    Scan(Box<SnapshotScan>),
    Idle,
}

macro_rules! each_child {
    ($child:expr, $op:ident => $body:expr, $other:expr) => {
        match $child {
            Child::Get($op, _) => $body,
            Child::BatchGet($op, _) => $body,
            Child::Scan($op) => $body,
            Child::Idle => $other,
        }
    };
}

/// What each key read (`None`: absent), by key.
pub(crate) type OwnReads = Vec<(String, Option<String>)>;

/// A transaction's reads of its own keys over its buffer; yields what each
/// key read (`None`: absent), by key.
pub(crate) struct OwnRead {
    view: Arc<ClusterView>,
    start_ts: u64,
    opts: ReadOptions,
    buffer: MemBuffer,
    method: ReadMethod,
    /// Point keys still to read one by one ([`ReadMethod::Get`]).
    pending: VecDeque<Key>,
    scan: Option<UnionScan>,
    found: BTreeMap<String, Option<String>>,
    child: Child,
    /// Bumped per child, so a late answer to a finished child is dropped.
    generation: u64,
    ids: IdMap<u64>,
    result: Option<Result<OwnReads, Error>>,
}

impl OwnRead {
    pub(crate) fn new(
        view: Arc<ClusterView>,
        start_ts: u64,
        opts: ReadOptions,
        buffer: MemBuffer,
        method: ReadMethod,
        keys: OwnReadKeys,
    ) -> OwnRead {
        let mut found = BTreeMap::new();
        let (pending, scan) = match keys {
            OwnReadKeys::Points(keys) => (keys.into(), None),
            OwnReadKeys::Range(range, keys) => {
                for k in &keys {
                    found.insert(text(k.as_bytes()), None);
                }
                let scan = if method == ReadMethod::ScanReverse {
                    let limit = u32::try_from(keys.len()).unwrap_or(u32::MAX).saturating_add(1);
                    UnionScan::with_limit(&buffer, range, true, limit)
                } else {
                    UnionScan::new(range, false, FORWARD_BATCH)
                };
                (VecDeque::new(), Some(scan))
            }
        };
        OwnRead {
            view,
            start_ts,
            opts,
            buffer,
            method,
            pending,
            scan,
            found,
            child: Child::Idle,
            generation: 0,
            ids: IdMap::new(),
            result: None,
        }
    }

    fn set_child(&mut self, child: Child, now: Instant) {
        self.generation += 1;
        self.child = child;
        each_child!(&mut self.child, op => op.start(now), {});
    }

    fn fail(&mut self, e: Error) {
        self.child = Child::Idle;
        self.result = Some(Err(e));
    }

    fn finish(&mut self) {
        self.child = Child::Idle;
        let found = std::mem::take(&mut self.found);
        self.result = Some(Ok(found.into_iter().collect()));
    }

    /// Takes the finished child's answer into the merge and starts whatever
    /// the merge needs next, until a child is running or the read is over.
    fn advance(&mut self, now: Instant) {
        while self.result.is_none() {
            match std::mem::replace(&mut self.child, Child::Idle) {
                Child::Idle => {}
                Child::Get(mut op, key) => match op.poll_result() {
                    None => {
                        self.child = Child::Get(op, key);
                        return;
                    }
                    Some(Ok(value)) => {
                        self.found.insert(text(key.as_bytes()), value.as_deref().map(text));
                    }
                    Some(Err(e)) => return self.fail(e),
                },
                Child::BatchGet(mut op, get) => match op.poll_result() {
                    None => {
                        self.child = Child::BatchGet(op, get);
                        return;
                    }
                    Some(Ok(pairs)) => self.record(get.merge(pairs)),
                    Some(Err(e)) => return self.fail(e),
                },
                Child::Scan(mut op) => match op.poll_result() {
                    None => {
                        self.child = Child::Scan(op);
                        return;
                    }
                    Some(Ok(pairs)) => {
                        if let Some(scan) = self.scan.as_mut() {
                            scan.on_snapshot_batch(pairs);
                        }
                    }
                    Some(Err(e)) => return self.fail(e),
                },
            }
            let next = self.next_child();
            match next {
                Some(child) => self.set_child(child, now),
                None => self.finish(),
            }
        }
    }

    /// The next snapshot read the merge needs; `None` when every key is read.
    fn next_child(&mut self) -> Option<Child> {
        let (view, ts, opts) =
            (self.view.clone(), Timestamp::from_version(self.start_ts), self.opts.clone());
        if let Some(scan) = self.scan.as_mut() {
            loop {
                match scan.poll(&self.buffer) {
                    UnionStep::Pair(p) => {
                        self.found.insert(text(p.key.as_bytes()), Some(text(&p.value)));
                    }
                    UnionStep::End => return None,
                    UnionStep::Fetch(batch) => {
                        let reverse = scan.is_reverse();
                        let spec = ScanSpec { limit: batch.limit, reverse, key_only: false };
                        let op = SnapshotScan::new(view, batch.range, spec, ts, opts);
                        return Some(Child::Scan(Box::new(op)));
                    }
                }
            }
        }
        if self.method == ReadMethod::BatchGet {
            let keys: Vec<Key> = self.pending.drain(..).collect();
            if keys.is_empty() {
                return None;
            }
            for k in &keys {
                self.found.insert(text(k.as_bytes()), None);
            }
            let mut get = UnionBatchGet::new(&self.buffer, keys);
            let op = SnapshotBatchGet::new(view, get.take_snapshot_keys(), ts, opts);
            return Some(Child::BatchGet(Box::new(op), get));
        }
        while let Some(key) = self.pending.pop_front() {
            match read_point(&self.buffer, key.as_bytes()) {
                PointRead::Put(v) => {
                    self.found.insert(text(key.as_bytes()), Some(text(&v)));
                }
                PointRead::Deleted => {
                    self.found.insert(text(key.as_bytes()), None);
                }
                PointRead::Snapshot => {
                    let op = SnapshotGet::new(view, key.clone(), ts, opts);
                    return Some(Child::Get(Box::new(op), key));
                }
            }
        }
        None
    }

    fn record(&mut self, pairs: Vec<KvPair>) {
        for p in pairs {
            self.found.insert(text(p.key.as_bytes()), Some(text(&p.value)));
        }
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

impl Operation for OwnRead {
    type Output = OwnReads;

    fn start(&mut self, now: Instant) {
        self.advance(now);
    }

    fn poll_rpc(&mut self) -> Option<Rpc> {
        let rpc = each_child!(&mut self.child, op => op.poll_rpc(), None)?;
        Some(self.ids.wrap(self.generation, rpc))
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((generation, id)) = self.ids.take(id) else { return };
        if generation != self.generation {
            return;
        }
        each_child!(&mut self.child, op => op.on_response(id, response, now), {});
        self.advance(now);
    }

    fn on_timeout(&mut self, now: Instant) {
        each_child!(&mut self.child, op => op.on_timeout(now), {});
        self.advance(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        each_child!(&self.child, op => op.poll_timeout(), None)
    }

    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>> {
        self.result.take()
    }
}
