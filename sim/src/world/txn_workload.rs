//! The transactional workload: which transaction a client runs next, and
//! [`TxnProgram`], which runs one the way the driver's `Transaction` does,
//! on the real core machines: a start ts from the client's oracle
//! (`GetTimestamp`, answered by the world's per-process `TsoBatcher`),
//! snapshot reads (`SnapshotGet`, `SnapshotBatchGet`, `SnapshotScan`,
//! resolving the locks they meet), the writes buffered in a `MemBuffer` and
//! read back through core's read-your-writes merge ([`super::own_reads`]),
//! the `Committer` (2PC, async commit or 1PC as the seed chose), then, in
//! the background, the committer's follow-up: the secondaries' commit or
//! the cleanup of a failed transaction.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tikv_core::error::Error;
use tikv_core::key::{Key, KeyRange, KvPair, ScanSpec, Value};
use tikv_core::op::{IdMap, Operation};
use tikv_core::pd::{GetTimestamp, Timestamp};
use tikv_core::rng::Rng;
use tikv_core::route::fanout::KeyFanout;
use tikv_core::rpc::{KvRequest, Request, Response, Rpc, RpcError, RpcId};
use tikv_core::time::{Duration, Instant};
use tikv_core::txn::commit::{
    CommitMode, CommitOptions, Committer, KeysPlan, commit_keys, mutations_from_buffer,
};
use tikv_core::txn::membuffer::{FlagsOp, MemBuffer};
use tikv_core::txn::snapshot::{ReadOptions, SnapshotBatchGet, SnapshotGet, SnapshotScan};
use tikv_core::view::ClusterView;
use tikv_proto::kvrpcpb;

use super::Bug;
use super::faults::TxnParams;
use super::own_reads::{OwnRead, OwnReadKeys, OwnReads};
use super::txn_history::{
    Micro, ReadMethod, RegOp, TxnEntry, TxnKeys, TxnKind, TxnOutcome, TxnRun, TxnWrite, account,
    balance_value, list, list_value, parse_balance, parse_list_value, register, register_value,
};
use super::workload::{Finished, SimOp};

/// What a client's next transaction is and how it runs.
#[derive(Clone, Debug)]
pub(crate) struct TxnSpec {
    pub(crate) kind: TxnKind,
    pub(crate) read_method: ReadMethod,
    pub(crate) opts: CommitOptions,
}

impl TxnSpec {
    /// Its history entry, number `id`, as client `client` starts it at
    /// `invoke`: pending, nothing done yet.
    pub(crate) fn entry(&self, id: usize, client: usize, invoke: Instant) -> TxnEntry {
        TxnEntry {
            id,
            client,
            kind: self.kind.clone(),
            read_method: self.read_method,
            async_commit: self.opts.async_commit,
            one_pc: self.opts.one_pc,
            causal: self.opts.causal_consistency,
            invoke,
            end: None,
            run: TxnRun::default(),
            outcome: TxnOutcome::Pending,
            crashed: false,
        }
    }
}

/// Picks a client's next transaction. `next_value` hands out fresh list
/// elements and register values.
pub(crate) fn pick(rng: &mut Rng, params: &TxnParams, next_value: &mut u32) -> TxnSpec {
    let keys = params.keys;
    let mut fresh = || {
        *next_value += 1;
        *next_value
    };
    let mut weights = Vec::new();
    if keys.accounts >= 2 {
        weights.push((0, 30));
        weights.push((1, 10));
    }
    if keys.lists > 0 {
        weights.push((2, 35));
    }
    if keys.registers > 0 {
        weights.push((3, 25));
    }
    let total: u64 = weights.iter().map(|w| w.1).sum();
    let mut roll = rng.gen_range(0, total.max(1));
    let mut which = 1;
    for (k, w) in weights {
        if roll < w {
            which = k;
            break;
        }
        roll -= w;
    }
    let kind = match which {
        0 => {
            let from = rng.gen_range(0, u64::from(keys.accounts)) as u32;
            let to =
                (from + 1 + rng.gen_range(0, u64::from(keys.accounts) - 1) as u32) % keys.accounts;
            TxnKind::Transfer { from, to, amount: rng.gen_range(1, 51) }
        }
        1 => TxnKind::BankRead,
        2 => {
            let n = rng.gen_range(1, 5);
            let mut ops = Vec::new();
            for _ in 0..n {
                let k = rng.gen_range(0, u64::from(keys.lists)) as u32;
                match rng.gen_range(0, 3) {
                    0 => ops.push(Micro::Read(k, None)),
                    // Read-modify-write, as Elle's lost-update check wants.
                    1 => {
                        ops.push(Micro::Read(k, None));
                        ops.push(Micro::Append(k, fresh()));
                    }
                    _ => ops.push(Micro::Append(k, fresh())),
                }
            }
            TxnKind::Lists { ops, lock_reads: rng.gen_ratio(1, 4) }
        }
        _ => {
            let n = rng.gen_range(1, u64::from(keys.registers).min(3) + 1);
            let mut ops = Vec::new();
            let mut used = Vec::new();
            for _ in 0..n {
                let k = rng.gen_range(0, u64::from(keys.registers)) as u32;
                if used.contains(&k) {
                    continue;
                }
                used.push(k);
                ops.push(match rng.gen_range(0, 100) {
                    0..30 => RegOp::Read(k),
                    30..60 => RegOp::Put(k, fresh()),
                    60..75 => RegOp::Delete(k),
                    _ => RegOp::Insert(k, fresh()),
                });
            }
            TxnKind::Registers(ops)
        }
    };
    let read_method = pick_read_method(rng);
    let async_commit = rng.gen_ratio(params.async_commit_permille, 1000);
    let one_pc = rng.gen_ratio(params.one_pc_permille, 1000);
    let opts = CommitOptions::default()
        .with_async_commit(async_commit)
        .with_one_pc(one_pc)
        .with_causal_consistency((async_commit || one_pc) && rng.gen_ratio(1, 5))
        // Now and then a transaction keeps its primary alive with
        // heartbeats (client-go does it for large ones only).
        .with_heartbeat_threshold(rng.gen_ratio(1, 10).then_some(0));
    TxnSpec { kind, read_method, opts }
}

/// How a read is done, drawn from the seed.
pub(crate) fn pick_read_method(rng: &mut Rng) -> ReadMethod {
    match rng.gen_range(0, 10) {
        0..3 => ReadMethod::Get,
        3..7 => ReadMethod::BatchGet,
        7..9 => ReadMethod::Scan,
        _ => ReadMethod::ScanReverse,
    }
}

/// The keys a transaction reads from its snapshot, in wire order.
pub(crate) fn read_set(kind: &TxnKind, keys: &TxnKeys) -> Vec<String> {
    let mut set: Vec<String> = match kind {
        TxnKind::Transfer { from, to, .. } => vec![account(*from), account(*to)],
        TxnKind::BankRead => keys.account_keys(),
        // Appends read the list too (an append is read-modify-write).
        TxnKind::Lists { ops, .. } => ops
            .iter()
            .map(|op| match op {
                Micro::Read(k, _) | Micro::Append(k, _) => list(*k),
            })
            .collect(),
        TxnKind::Registers(ops) => ops
            .iter()
            .filter_map(|op| match op {
                RegOp::Read(k) => Some(register(*k)),
                _ => None,
            })
            .collect(),
        TxnKind::FullRead => keys.all(),
        // Run by the pessimistic world's own program.
        TxnKind::Pessimistic(_) => Vec::new(),
    };
    set.sort();
    set.dedup();
    set
}

/// The keys a transaction reads again over its own writes: those it read
/// and those it writes; a scan covers every key of the run between the
/// first and the last of them.
fn own_read_keys(
    kind: &TxnKind,
    method: ReadMethod,
    reads_wanted: &[String],
    keys: &TxnKeys,
) -> OwnReadKeys {
    let mut set: Vec<String> = reads_wanted.to_vec();
    if let TxnKind::Registers(ops) = kind {
        set.extend(ops.iter().filter_map(|op| match op {
            RegOp::Read(_) => None,
            RegOp::Put(k, _) | RegOp::Delete(k) | RegOp::Insert(k, _) => Some(register(*k)),
        }));
    }
    set.sort();
    set.dedup();
    match (method, set.first(), set.last()) {
        (ReadMethod::Scan | ReadMethod::ScanReverse, Some(first), Some(last)) => {
            let range = KeyRange::new(Key::from(first.clone()), Key::from(last.clone()).next_key());
            let covered =
                keys.all().into_iter().filter(|k| k >= first && k <= last).map(Key::from).collect();
            OwnReadKeys::Range(range, covered)
        }
        _ => OwnReadKeys::Points(set.into_iter().map(Key::from).collect()),
    }
}

/// The buffer holding `writes`.
fn buffer_writes(writes: &BTreeMap<String, BufferOp>) -> Result<MemBuffer, Error> {
    let mut buffer = MemBuffer::new();
    for (k, op) in writes {
        match op {
            BufferOp::Put(v) => buffer.set(k.as_bytes(), Value::from(v.clone()))?,
            BufferOp::Insert(v) => buffer.set_with_flags(
                k.as_bytes(),
                Value::from(v.clone()),
                &[FlagsOp::SetPresumeKeyNotExists],
            )?,
            BufferOp::Delete => buffer.delete(k.as_bytes())?,
            BufferOp::Lock => buffer.update_flags(k.as_bytes(), &[FlagsOp::SetKeyLocked])?,
        }
    }
    Ok(buffer)
}

/// A buffered write with its buffer operation.
#[derive(Clone, Debug)]
pub(crate) enum BufferOp {
    Put(String),
    Insert(String),
    Delete,
    Lock,
}

/// Computes the writes of `kind` from its snapshot reads, filling in list
/// read results. `id` goes into account values.
pub(crate) fn plan_writes(
    kind: &mut TxnKind,
    reads: &BTreeMap<String, Option<String>>,
    id: usize,
) -> BTreeMap<String, BufferOp> {
    let mut writes = BTreeMap::new();
    let read = |k: &str| reads.get(k).cloned().flatten();
    match kind {
        TxnKind::Transfer { from, to, amount } => {
            let (a, b) = (account(*from), account(*to));
            if let (Some(x), Some(y)) =
                (parse_balance(read(&a).as_deref()), parse_balance(read(&b).as_deref()))
                && x >= *amount
            {
                writes.insert(a, BufferOp::Put(balance_value(x - *amount, id)));
                writes.insert(b, BufferOp::Put(balance_value(y + *amount, id)));
            }
        }
        TxnKind::BankRead | TxnKind::FullRead | TxnKind::Pessimistic(_) => {}
        TxnKind::Lists { ops, lock_reads } => {
            let mut state: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            let mut appended = Vec::new();
            for op in ops.iter_mut() {
                match op {
                    Micro::Read(k, result) => {
                        let cur = state
                            .entry(*k)
                            .or_insert_with(|| parse_list_value(read(&list(*k)).as_deref()));
                        *result = Some(cur.clone());
                    }
                    Micro::Append(k, e) => {
                        state
                            .entry(*k)
                            .or_insert_with(|| parse_list_value(read(&list(*k)).as_deref()))
                            .push(*e);
                        appended.push(*k);
                    }
                }
            }
            for (k, elements) in &state {
                if appended.contains(k) {
                    writes.insert(list(*k), BufferOp::Put(list_value(elements)));
                } else if *lock_reads {
                    writes.insert(list(*k), BufferOp::Lock);
                }
            }
        }
        TxnKind::Registers(ops) => {
            for op in ops.iter() {
                match op {
                    RegOp::Read(_) => {}
                    RegOp::Put(k, v) => {
                        writes.insert(register(*k), BufferOp::Put(register_value(*v)));
                    }
                    RegOp::Delete(k) => {
                        writes.insert(register(*k), BufferOp::Delete);
                    }
                    RegOp::Insert(k, v) => {
                        writes.insert(register(*k), BufferOp::Insert(register_value(*v)));
                    }
                }
            }
        }
    }
    writes
}

/// Whose RPC an id is: the current step (by number) or the broken
/// variant's early secondary commit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Tag {
    Step(u64),
    Early,
}

enum Step {
    Timestamp(GetTimestamp),
    Get {
        op: Box<SnapshotGet>,
        key: Key,
        rest: VecDeque<Key>,
    },
    BatchGet(Box<SnapshotBatchGet>),
    Scan(Box<SnapshotScan>),
    /// Its keys read again over its buffered writes (see `own_reads`).
    OwnRead(Box<OwnRead>),
    Commit(Box<Committer>),
    /// After the result: secondaries' commit or a failed transaction's
    /// cleanup, in the background.
    Tail(Box<KeyFanout<KeysPlan>>),
    Done,
}

macro_rules! each_step {
    ($step:expr, $op:ident => $body:expr, $other:expr) => {
        match $step {
            Step::Timestamp($op) => $body,
            Step::Get { op: $op, .. } => $body,
            Step::BatchGet($op) => $body,
            Step::Scan($op) => $body,
            Step::OwnRead($op) => $body,
            Step::Commit($op) => $body,
            Step::Tail($op) => $body,
            Step::Done => $other,
        }
    };
}

/// One transaction of a simulated client. See the module docs.
pub(crate) struct TxnProgram {
    view: Arc<ClusterView>,
    id: usize,
    kind: TxnKind,
    read_method: ReadMethod,
    opts: CommitOptions,
    read_opts: ReadOptions,
    /// Keys a scan covers (every key of the run between the first and the
    /// last key read); empty for point reads.
    scan_keys: Vec<String>,
    reads_wanted: Vec<String>,
    /// What the read of its own writes covers, and whether it is done.
    own_read_keys: OwnReadKeys,
    own_read_done: bool,
    found: BTreeMap<String, Option<String>>,
    run: TxnRun,
    primary: Option<Key>,
    secondaries: Vec<Key>,
    began: Instant,
    step: Step,
    epoch: u64,
    ids: IdMap<Tag>,
    bug: Option<Bug>,
    /// [`Bug::SecondariesBeforePrimary`]: the primary's first `Commit`,
    /// held back (with its timeout) while the secondaries commit first.
    held: Option<(Rpc, Duration)>,
    early: Option<Box<KeyFanout<KeysPlan>>>,
    early_done: bool,
    result: Option<(TxnRun, TxnOutcome)>,
    reported: bool,
}

impl TxnProgram {
    pub(crate) fn new(
        view: Arc<ClusterView>,
        id: usize,
        spec: TxnSpec,
        keys: &TxnKeys,
        bug: Option<Bug>,
    ) -> TxnProgram {
        let reads_wanted = read_set(&spec.kind, keys);
        let scan_keys = match (spec.read_method, reads_wanted.first(), reads_wanted.last()) {
            (ReadMethod::Scan | ReadMethod::ScanReverse, Some(first), Some(last)) => {
                keys.all().into_iter().filter(|k| k >= first && k <= last).collect()
            }
            _ => Vec::new(),
        };
        let own_read_keys = own_read_keys(&spec.kind, spec.read_method, &reads_wanted, keys);
        // The broken variant reads at read-committed isolation, which
        // ignores locks: it neither waits for nor resolves them.
        let read_opts =
            ReadOptions::default().with_isolation_level(if bug == Some(Bug::ReadThroughLocks) {
                kvrpcpb::IsolationLevel::Rc
            } else {
                kvrpcpb::IsolationLevel::Si
            });
        TxnProgram {
            view,
            id,
            kind: spec.kind,
            read_method: spec.read_method,
            opts: spec.opts,
            read_opts,
            scan_keys,
            reads_wanted,
            own_read_keys,
            own_read_done: false,
            found: BTreeMap::new(),
            run: TxnRun::default(),
            primary: None,
            secondaries: Vec::new(),
            began: Instant::ZERO,
            step: Step::Done,
            epoch: 0,
            ids: IdMap::new(),
            bug,
            held: None,
            early: None,
            early_done: false,
            result: None,
            reported: false,
        }
    }

    fn set_step(&mut self, step: Step, now: Instant) {
        self.epoch += 1;
        self.step = step;
        each_step!(&mut self.step, op => op.start(now), {});
        self.check(now);
    }

    fn report(&mut self, outcome: TxnOutcome) {
        if !self.reported {
            self.reported = true;
            self.result = Some((self.run.clone(), outcome));
        }
    }

    fn fail(&mut self, e: Error) {
        self.step = Step::Done;
        self.report(TxnOutcome::Failed(e.to_string()));
    }

    fn read(&mut self, now: Instant) {
        let Some(start_ts) = self.run.start_ts else { return };
        let keys: Vec<Key> = self.reads_wanted.iter().map(|k| Key::from(k.clone())).collect();
        if keys.is_empty() {
            self.after_reads(now);
            return;
        }
        let view = self.view.clone();
        let opts = self.read_opts.clone();
        let step = match self.read_method {
            ReadMethod::Get => {
                let mut rest: VecDeque<Key> = keys.into();
                let key = rest.pop_front().unwrap_or_default();
                let op =
                    SnapshotGet::new(view, key.clone(), Timestamp::from_version(start_ts), opts);
                Step::Get { op: Box::new(op), key, rest }
            }
            ReadMethod::BatchGet => Step::BatchGet(Box::new(SnapshotBatchGet::new(
                view,
                keys,
                Timestamp::from_version(start_ts),
                opts,
            ))),
            ReadMethod::Scan | ReadMethod::ScanReverse => {
                let first = self.scan_keys.first().cloned().unwrap_or_default();
                let last = self.scan_keys.last().cloned().unwrap_or_default();
                let range = KeyRange::new(Key::from(first), Key::from(last).next_key());
                let limit = self.scan_keys.len() as u32 + 1;
                let reverse = self.read_method == ReadMethod::ScanReverse;
                let spec = ScanSpec { limit, reverse, key_only: false };
                let op =
                    SnapshotScan::new(view, range, spec, Timestamp::from_version(start_ts), opts);
                Step::Scan(Box::new(op))
            }
        };
        self.set_step(step, now);
    }

    /// A batch get (or, `scanned`, a scan) finished: every key it covered
    /// was read, absent unless returned.
    fn after_pairs(&mut self, result: Result<Vec<KvPair>, Error>, scanned: bool, now: Instant) {
        let pairs = match result {
            Ok(pairs) => pairs,
            Err(e) => return self.fail(e),
        };
        let wanted = if scanned { &self.scan_keys } else { &self.reads_wanted };
        for k in wanted.clone() {
            self.found.insert(k, None);
        }
        for p in pairs {
            let key = String::from_utf8_lossy(p.key.as_bytes()).into_owned();
            self.found.insert(key, Some(text(&p.value)));
        }
        self.after_reads(now);
    }

    /// The snapshot is read: compute the writes and commit them.
    fn after_reads(&mut self, now: Instant) {
        self.run.reads = self.found.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if !self.own_read_done && self.read_own_writes(now) {
            return;
        }
        let writes = plan_writes(&mut self.kind, &self.found, self.id);
        if let TxnKind::Lists { ops, .. } = &self.kind {
            self.run.micro = ops.clone();
        }
        self.run.writes = writes
            .iter()
            .map(|(k, op)| {
                let w = match op {
                    BufferOp::Put(v) | BufferOp::Insert(v) => TxnWrite::Put(v.clone()),
                    BufferOp::Delete => TxnWrite::Delete,
                    BufferOp::Lock => TxnWrite::Lock,
                };
                (k.clone(), w)
            })
            .collect();
        let Some(start_ts) = self.run.start_ts else { return };
        let buffer = match buffer_writes(&writes) {
            Ok(buffer) => buffer,
            Err(e) => return self.fail(e),
        };
        let (mutations, primary) = mutations_from_buffer(&buffer);
        let Some(primary) = primary else {
            // Read-only: commits at its start ts without writing.
            self.step = Step::Done;
            self.report(TxnOutcome::Committed { commit_ts: start_ts, mode: None });
            return;
        };
        self.secondaries = mutations
            .iter()
            .filter(|m| m.key != primary && m.op != kvrpcpb::Op::CheckNotExists)
            .map(|m| m.key.clone())
            .collect();
        self.primary = Some(primary.clone());
        let elapsed = now.saturating_duration_since(self.began);
        let committer = Committer::new(
            self.view.clone(),
            Timestamp::from_version(start_ts),
            primary,
            mutations,
            elapsed,
            self.opts.clone(),
        );
        self.set_step(Step::Commit(Box::new(committer)), now);
    }

    /// Before committing a transaction that writes, reads its keys again
    /// through core's read-your-writes merge over the same snapshot; false
    /// if there is nothing to write (or the reads could not start).
    fn read_own_writes(&mut self, now: Instant) -> bool {
        let Some(start_ts) = self.run.start_ts else { return false };
        // The same plan the commit makes next (planning is pure).
        let writes = plan_writes(&mut self.kind.clone(), &self.found, self.id);
        if writes.is_empty() {
            return false;
        }
        let buffer = match buffer_writes(&writes) {
            Ok(buffer) => buffer,
            Err(_) => return false,
        };
        let op = OwnRead::new(
            self.view.clone(),
            start_ts,
            self.read_opts.clone(),
            buffer,
            self.read_method,
            self.own_read_keys.clone(),
        );
        self.set_step(Step::OwnRead(Box::new(op)), now);
        true
    }

    fn after_own_read(&mut self, result: Result<OwnReads, Error>, now: Instant) {
        match result {
            Ok(reads) => {
                self.run.own_reads = reads;
                self.own_read_done = true;
                self.after_reads(now);
            }
            Err(e) => self.fail(e),
        }
    }

    fn tail(&mut self, op: KeyFanout<KeysPlan>, now: Instant) {
        self.set_step(Step::Tail(Box::new(op)), now);
    }

    fn check(&mut self, now: Instant) {
        match &mut self.step {
            Step::Timestamp(op) => match op.poll_result() {
                None => {}
                Some(Ok(ts)) => {
                    self.run.start_ts = Some(ts.version());
                    self.began = now;
                    self.read(now);
                }
                Some(Err(e)) => self.fail(e),
            },
            Step::Get { op, key, rest } => match op.poll_result() {
                None => {}
                Some(Err(e)) => self.fail(e),
                Some(Ok(v)) => {
                    let k = String::from_utf8_lossy(key.as_bytes()).into_owned();
                    self.found.insert(k, v.as_ref().map(text));
                    match rest.pop_front() {
                        Some(next) => {
                            let Some(ts) = self.run.start_ts else { return };
                            let op = SnapshotGet::new(
                                self.view.clone(),
                                next.clone(),
                                Timestamp::from_version(ts),
                                self.read_opts.clone(),
                            );
                            let rest = std::mem::take(rest);
                            self.set_step(Step::Get { op: Box::new(op), key: next, rest }, now);
                        }
                        None => self.after_reads(now),
                    }
                }
            },
            Step::BatchGet(op) => {
                if let Some(result) = op.poll_result() {
                    self.after_pairs(result, false, now);
                }
            }
            Step::Scan(op) => {
                if let Some(result) = op.poll_result() {
                    self.after_pairs(result, true, now);
                }
            }
            Step::OwnRead(op) => {
                if let Some(result) = op.poll_result() {
                    self.after_own_read(result, now);
                }
            }
            Step::Commit(op) => {
                if let Some(result) = op.poll_result() {
                    let follow_up = op.take_follow_up();
                    self.after_commit(result, follow_up, now);
                }
            }
            Step::Tail(op) => {
                if op.poll_result().is_some() {
                    // Secondaries or cleanup done (or given up: readers
                    // resolve what is left).
                    self.step = Step::Done;
                }
            }
            Step::Done => {}
        }
    }

    /// Reports the commit's outcome and runs the committer's follow-up
    /// (the same one the driver spawns) as the transaction's tail.
    fn after_commit(
        &mut self,
        result: Result<tikv_core::txn::commit::CommitOutcome, Error>,
        follow_up: Option<KeyFanout<KeysPlan>>,
        now: Instant,
    ) {
        self.report(match result {
            Ok(outcome) => TxnOutcome::Committed {
                commit_ts: outcome.commit_ts.version(),
                mode: Some(outcome.mode),
            },
            Err(Error::Undetermined(why)) => TxnOutcome::Undetermined(why),
            Err(e) => TxnOutcome::Failed(e.to_string()),
        });
        match follow_up {
            Some(op) => self.tail(op, now),
            None => self.step = Step::Done,
        }
    }

    /// The broken variants' interception of the primary's `Commit`.
    fn intercept(&mut self, rpc: Rpc, now: Instant) -> Option<Rpc> {
        let Some(primary) = &self.primary else { return Some(rpc) };
        let Request::Kv(KvRequest::Commit(c)) = &rpc.request else { return Some(rpc) };
        if !c.keys.iter().any(|k| k.as_ref() == primary.as_bytes()) {
            return Some(rpc);
        }
        let commit_ts = c.commit_version;
        match self.bug {
            Some(Bug::SuccessBeforePrimaryCommit) => {
                self.report(TxnOutcome::Committed { commit_ts, mode: Some(CommitMode::TwoPhase) });
                Some(rpc)
            }
            Some(Bug::SecondariesBeforePrimary) if !self.early_done && self.held.is_none() => {
                let Some(start_ts) = self.run.start_ts else { return Some(rpc) };
                let timeout = rpc.deadline.saturating_duration_since(now);
                self.held = Some((rpc, timeout));
                let mut op = commit_keys(
                    &self.view,
                    Timestamp::from_version(start_ts),
                    Timestamp::from_version(commit_ts),
                    self.secondaries.clone(),
                );
                op.start(now);
                self.early = Some(Box::new(op));
                self.check_early();
                None
            }
            _ => Some(rpc),
        }
    }

    fn check_early(&mut self) {
        if let Some(op) = self.early.as_mut()
            && op.poll_result().is_some()
        {
            self.early = None;
            self.early_done = true;
        }
    }

    fn committing_step(&self) -> bool {
        matches!(self.step, Step::Commit(_))
    }
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(v).into_owned()
}

impl SimOp for TxnProgram {
    fn start(&mut self, now: Instant) {
        self.set_step(Step::Timestamp(GetTimestamp::new()), now);
    }

    fn poll_rpc(&mut self, now: Instant) -> Option<Rpc> {
        loop {
            if let Some(rpc) = self.early.as_mut().and_then(|op| op.poll_rpc()) {
                return Some(self.ids.wrap(Tag::Early, rpc));
            }
            if self.early_done
                && let Some((mut rpc, timeout)) = self.held.take()
            {
                // Released after the secondaries: a fresh deadline, as if
                // sent now.
                rpc.deadline = now + timeout;
                return Some(self.ids.wrap(Tag::Step(self.epoch), rpc));
            }
            let rpc = each_step!(&mut self.step, op => op.poll_rpc(), None)?;
            if self.bug.is_some() && self.committing_step() {
                // Held back (or not): look at every source again.
                let Some(rpc) = self.intercept(rpc, now) else { continue };
                return Some(self.ids.wrap(Tag::Step(self.epoch), rpc));
            }
            return Some(self.ids.wrap(Tag::Step(self.epoch), rpc));
        }
    }

    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        let Some((tag, id)) = self.ids.take(id) else { return };
        match tag {
            Tag::Early => {
                if let Some(op) = self.early.as_mut() {
                    op.on_response(id, response, now);
                }
                self.check_early();
            }
            Tag::Step(epoch) if epoch == self.epoch => {
                each_step!(&mut self.step, op => op.on_response(id, response, now), {});
                self.check(now);
            }
            Tag::Step(_) => {}
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if let Some(op) = self.early.as_mut() {
            if op.poll_timeout().is_some_and(|t| t <= now) {
                op.on_timeout(now);
            }
            self.check_early();
        }
        if each_step!(&self.step, op => op.poll_timeout(), None).is_some_and(|t| t <= now) {
            each_step!(&mut self.step, op => op.on_timeout(now), {});
            self.check(now);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let step = each_step!(&self.step, op => op.poll_timeout(), None);
        let early = self.early.as_ref().and_then(|op| op.poll_timeout());
        tikv_core::time::earliest(step, early)
    }

    fn poll_result(&mut self) -> Option<Finished> {
        self.result.take().map(|(run, outcome)| Finished::Txn(Box::new((run, outcome))))
    }

    fn is_done(&self) -> bool {
        matches!(self.step, Step::Done) && self.early.is_none() && self.held.is_none()
    }

    fn committing(&self) -> bool {
        self.committing_step()
    }

    fn progress(&self) -> Option<TxnRun> {
        Some(self.run.clone())
    }
}
