//! The raw register/set workload: which operation a client runs next, and
//! a type-erased wrapper so operations with different outputs share one
//! driving loop.

use std::sync::Arc;

use tikv_core::error::Error;
use tikv_core::key::{Key, KeyRange, KvPair, ScanSpec};
use tikv_core::op::Operation;
use tikv_core::pd::TsoRoundCallers;
use tikv_core::raw::{self, PutItem, RawOptions};
use tikv_core::rng::Rng;
use tikv_core::rpc::{PdResponse, Response, Rpc, RpcError, RpcId};
use tikv_core::time::Instant;
use tikv_core::view::ClusterView;

use super::history::{KeyId, OkValue, OpKind, Val, key_bytes, parse_key, parse_value, value_bytes};
use super::txn_history::{TxnOutcome, TxnRun};

/// What a finished task reports.
pub(crate) enum Finished {
    /// A raw operation's result.
    Raw(Result<OkValue, Error>),
    /// A transaction: what it did and how it ended.
    Txn(Box<(TxnRun, TxnOutcome)>),
    /// The audit's lock sweep: how many locks were still alive.
    Sweep(Result<u64, Error>),
    /// A task of the GC world's GC client.
    Gc(Box<super::gc_workload::GcFinished>),
    /// A round of a client's timestamp oracle: its callers and PD's answer.
    Tso(Box<FinishedRound>),
    /// A round of store health probes (its verdicts are in the view).
    Probed,
}

/// A timestamp need waiting in a process's oracle: the client, its task and
/// the RPC id.
pub(crate) type OracleWaiter = (usize, u64, RpcId);

/// A finished oracle round: its callers and PD's answer.
pub(crate) type FinishedRound = (TsoRoundCallers<OracleWaiter>, Result<PdResponse, Error>);

/// An [`Operation`] of the world: a raw operation with its output already
/// turned into an [`OkValue`], or a transaction program.
pub(crate) trait SimOp {
    fn start(&mut self, now: Instant);
    fn poll_rpc(&mut self, now: Instant) -> Option<Rpc>;
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant);
    fn on_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    /// The result, once.
    fn poll_result(&mut self) -> Option<Finished>;
    /// False while work continues after the result (a transaction commits
    /// its secondaries, or cleans up, in the background).
    fn is_done(&self) -> bool {
        true
    }
    /// True while a transaction is in its commit phase (a client crash then
    /// leaves its locks behind).
    fn committing(&self) -> bool {
        false
    }
    /// What a transaction has done so far (for a client that crashes).
    fn progress(&self) -> Option<TxnRun> {
        None
    }
    /// RPCs in flight that the operation no longer waits for (a machine
    /// that ended or was dropped): the client cancels them, as the driver
    /// does by dropping their futures, so a server drops a parked lock
    /// request of theirs.
    fn abandoned(&mut self) -> Vec<RpcId> {
        Vec::new()
    }
}

struct Erased<O, F> {
    op: O,
    /// Taken with the result: an operation reports once.
    map: Option<F>,
}

impl<O, F> SimOp for Erased<O, F>
where
    O: Operation,
    F: FnOnce(Result<O::Output, Error>) -> Finished,
{
    fn start(&mut self, now: Instant) {
        self.op.start(now)
    }
    fn poll_rpc(&mut self, _now: Instant) -> Option<Rpc> {
        self.op.poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.op.on_response(id, response, now)
    }
    fn on_timeout(&mut self, now: Instant) {
        self.op.on_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.op.poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Finished> {
        let map = self.map.take()?;
        match self.op.poll_result() {
            Some(result) => Some(map(result)),
            None => {
                self.map = Some(map);
                None
            }
        }
    }
}

/// Wraps any operation, mapping its result into a [`Finished`].
pub(crate) fn erase_with<O, F>(op: O, map: F) -> Box<dyn SimOp>
where
    O: Operation + 'static,
    F: FnOnce(Result<O::Output, Error>) -> Finished + 'static,
{
    Box::new(Erased { op, map: Some(map) })
}

fn erase<O, F>(op: O, map: F) -> Box<dyn SimOp>
where
    O: Operation + 'static,
    F: FnOnce(O::Output) -> OkValue + 'static,
{
    erase_with(op, move |r: Result<O::Output, Error>| Finished::Raw(r.map(map)))
}

fn key(k: KeyId) -> Key {
    Key::new(key_bytes(k))
}

pub(crate) fn pairs(found: Vec<KvPair>) -> OkValue {
    OkValue::Pairs(
        found
            .into_iter()
            // A key outside the workload's space is reported as a corrupt
            // key 0 read, which no linearization explains.
            .map(|p| (parse_key(p.key.as_bytes()).unwrap_or(0), parse_value(&p.value)))
            .collect(),
    )
}

/// Builds the core operation for `kind`. Construction errors (an invalid
/// argument) are returned as the operation's result.
pub(crate) fn build(
    view: &Arc<ClusterView>,
    kind: &OpKind,
    opts: &RawOptions,
) -> Result<Box<dyn SimOp>, Error> {
    Ok(match kind {
        OpKind::Get(k) => {
            erase(raw::get(view, key(*k), opts), |v: Option<tikv_core::key::Value>| {
                OkValue::Value(v.map(|v| parse_value(&v)))
            })
        }
        OpKind::BatchGet(ks) => {
            erase(raw::batch_get(view, ks.iter().map(|k| key(*k)).collect(), opts), pairs)
        }
        OpKind::Put(k, v) => {
            erase(raw::put(view, KvPair::new(key(*k), value_bytes(*v)), 0, opts), |()| {
                OkValue::Unit
            })
        }
        OpKind::BatchPut(kvs) => {
            let items = kvs
                .iter()
                .map(|&(k, v)| PutItem { pair: KvPair::new(key(k), value_bytes(v)), ttl: 0 })
                .collect();
            erase(raw::batch_put(view, items, opts), |()| OkValue::Unit)
        }
        OpKind::Delete(k) => erase(raw::delete(view, key(*k), opts), |()| OkValue::Unit),
        OpKind::Cas { key: k, expected, new } => erase(
            raw::compare_and_swap(
                view,
                key(*k),
                expected.map(|v| value_bytes(v).into()),
                value_bytes(*new).into(),
                0,
                opts,
            )?,
            |o: raw::CasOutcome| OkValue::Cas {
                previous: o.previous.map(|v| parse_value(&v)),
                succeeded: o.succeeded,
            },
        ),
        OpKind::Scan { start, end, limit } => {
            let range = KeyRange::new(key(*start), key(*end));
            erase(raw::scan(view, range, ScanSpec::forward(*limit), opts)?, pairs)
        }
    })
}

/// Picks a client's next operation. `next_value` hands out fresh values;
/// `recent` are values written lately (CAS expectations drawn from them
/// succeed often enough to matter).
pub(crate) fn pick(
    rng: &mut Rng,
    keys: u32,
    next_value: &mut Val,
    recent: &[(KeyId, Val)],
) -> OpKind {
    let mut fresh = || {
        *next_value += 1;
        *next_value
    };
    let k = rng.gen_range(0, u64::from(keys)) as KeyId;
    match rng.gen_range(0, 100) {
        0..25 => OpKind::Get(k),
        25..45 => OpKind::Put(k, fresh()),
        45..53 => OpKind::Delete(k),
        53..68 => {
            let expected = match rng.gen_range(0, 3) {
                0 => None,
                _ => recent.iter().rev().find(|(rk, _)| *rk == k).map(|&(_, v)| v),
            };
            OpKind::Cas { key: k, expected, new: fresh() }
        }
        68..80 => {
            let mut ks: Vec<KeyId> = (0..keys).filter(|_| rng.gen_ratio(1, 2)).collect();
            if ks.is_empty() {
                ks.push(k);
            }
            OpKind::BatchGet(ks)
        }
        80..90 => {
            let ks: Vec<KeyId> = (0..keys).filter(|_| rng.gen_ratio(1, 2)).collect();
            let mut kvs: Vec<(KeyId, Val)> = ks.into_iter().map(|k| (k, fresh())).collect();
            if kvs.is_empty() {
                kvs.push((k, fresh()));
            }
            OpKind::BatchPut(kvs)
        }
        _ => {
            let start = rng.gen_range(0, u64::from(keys)) as KeyId;
            let end = rng.gen_range(u64::from(start) + 1, u64::from(keys) + 1) as KeyId;
            OpKind::Scan { start, end, limit: rng.gen_range(1, u64::from(keys) + 1) as u32 }
        }
    }
}
