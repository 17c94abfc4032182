//! What the transactional world's clients did: one [`TxnEntry`] per
//! transaction, with its start timestamp, what it read (at that timestamp),
//! what it wrote, and an honest [`TxnOutcome`].
//!
//! The key space has three families, each driven by its own workload and
//! checked by its own checker on top of the snapshot-isolation one:
//! - accounts `a0..` hold bank balances, `"{balance}:t{txn}"` (the writer's
//!   entry id makes every written value unique); an absent account holds
//!   [`INITIAL_BALANCE`];
//! - lists `l0..` hold comma-separated unique elements appended by
//!   list-append transactions (Elle's workload); absent means empty;
//! - registers `r0..` hold unique values `x{n}` put, inserted and deleted;
//!   in the pessimistic world they are counters instead,
//!   `"{count}:t{txn}"`, absent meaning 0.
//!
//! Every family has at most ten keys, so a key's wire order is its index
//! order.

use std::fmt;

use tikv_core::time::Instant;
use tikv_core::txn::commit::CommitMode;
use tikv_core::txn::pessimistic::LockWait;

/// The balance of an account nobody has written yet.
pub const INITIAL_BALANCE: u64 = 100;

/// How many keys of each family a run has.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TxnKeys {
    /// Accounts `a0..a{accounts}`.
    pub accounts: u32,
    /// Lists `l0..l{lists}`.
    pub lists: u32,
    /// Registers `r0..r{registers}`.
    pub registers: u32,
}

impl TxnKeys {
    /// All keys of the run.
    pub fn total(&self) -> u32 {
        self.accounts + self.lists + self.registers
    }

    /// The key with this index (accounts first, then lists, then registers):
    /// the order of their wire forms.
    pub fn key(&self, index: u32) -> String {
        if index < self.accounts {
            account(index)
        } else if index < self.accounts + self.lists {
            list(index - self.accounts)
        } else {
            register(index - self.accounts - self.lists)
        }
    }

    /// Every key of the run, in wire order.
    pub fn all(&self) -> Vec<String> {
        (0..self.total()).map(|i| self.key(i)).collect()
    }

    /// Every account key, in order.
    pub fn account_keys(&self) -> Vec<String> {
        (0..self.accounts).map(account).collect()
    }
}

/// The wire form of account `i`.
pub fn account(i: u32) -> String {
    format!("a{i}")
}

/// The wire form of list `i`.
pub fn list(i: u32) -> String {
    format!("l{i}")
}

/// The wire form of register `i`.
pub fn register(i: u32) -> String {
    format!("r{i}")
}

/// The list index of a list key.
pub fn parse_list(key: &str) -> Option<u32> {
    key.strip_prefix('l')?.parse().ok()
}

/// An account value: the balance and the writing transaction.
pub fn balance_value(balance: u64, writer: usize) -> String {
    format!("{balance}:t{writer}")
}

/// The balance an account value holds (`None` for anything malformed).
/// Absent accounts hold [`INITIAL_BALANCE`].
pub fn parse_balance(value: Option<&str>) -> Option<u64> {
    match value {
        None => Some(INITIAL_BALANCE),
        Some(v) => v.split_once(':')?.0.parse().ok(),
    }
}

/// A counter value (pessimistic world): the count and the writing
/// transaction.
pub fn counter_value(count: u64, writer: usize) -> String {
    format!("{count}:t{writer}")
}

/// The count a counter value holds (`None` for anything malformed).
/// Absent counters hold 0.
pub fn parse_counter(value: Option<&str>) -> Option<u64> {
    match value {
        None => Some(0),
        Some(v) => v.split_once(':')?.0.parse().ok(),
    }
}

/// A list element that is not a number: a read returned bytes no append
/// wrote. It never matches an append, so the list checker reports it.
pub const GARBAGE: u32 = u32::MAX;

/// The elements of a list value (absent is empty).
pub fn parse_list_value(value: Option<&str>) -> Vec<u32> {
    match value {
        None => Vec::new(),
        Some(v) => v
            .split(',')
            .map(|e| e.parse().ok().filter(|&e| e != GARBAGE).unwrap_or(GARBAGE))
            .collect(),
    }
}

/// The wire form of a list (`None` for the empty list, which is never
/// written: appends make lists non-empty).
pub fn list_value(elements: &[u32]) -> String {
    elements.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The wire form of register value `n`.
pub fn register_value(n: u32) -> String {
    format!("x{n}")
}

/// One micro-operation of a list-append transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Micro {
    /// Read list `l{0}`; the elements seen (own earlier appends included),
    /// once executed.
    Read(u32, Option<Vec<u32>>),
    /// Append the unique element `{1}` to list `l{0}`.
    Append(u32, u32),
}

/// One operation of a register transaction (each on a distinct key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// Read the register.
    Read(u32),
    /// Put value `x{1}`.
    Put(u32, u32),
    /// Delete it.
    Delete(u32),
    /// Insert value `x{1}`: the commit fails with `KeyExists` if it exists.
    Insert(u32, u32),
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnKind {
    /// Move `amount` from account `from` to account `to` if `from` holds
    /// that much (reads both, writes both).
    Transfer {
        /// Account index.
        from: u32,
        /// Account index.
        to: u32,
        /// How much.
        amount: u64,
    },
    /// Read every account in one snapshot.
    BankRead,
    /// List-append micro-operations; with `lock_reads`, lists read but not
    /// appended to are locked (optimistic `LockKeys`) at commit.
    Lists {
        /// The micro-operations, in order.
        ops: Vec<Micro>,
        /// Lock the read-only lists.
        lock_reads: bool,
    },
    /// Register operations.
    Registers(Vec<RegOp>),
    /// Read every key (the quiescence phase and the final audit).
    FullRead,
    /// A pessimistic transaction (the pessimistic world).
    Pessimistic(PessKind),
}

/// What a pessimistic transaction does. Every key it writes it first locks
/// with `get_for_update` (a `PessimisticLock` returning the value) at a
/// fresh `for_update_ts`, waiting as `wait` says, and computes its write
/// from the value the lock returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PessKind {
    /// Move `amount` from account `from` to account `to` if `from` holds
    /// that much (both locked; only locked when it does not). With
    /// `one_call` both accounts are locked in one call; otherwise `from`
    /// first, then `to`, so two transfers the other way round may deadlock.
    Transfer {
        /// Account index.
        from: u32,
        /// Account index.
        to: u32,
        /// How much.
        amount: u64,
        /// Both accounts in one lock call.
        one_call: bool,
        /// How the locks wait.
        wait: LockWait,
    },
    /// Add one to each of these counters, locking them one call at a time
    /// in this order (two counters in opposite orders may deadlock).
    Increment {
        /// Counter indices (the register family), distinct.
        counters: Vec<u32>,
        /// How the locks wait.
        wait: LockWait,
        /// Fair locking (client-go's aggressive locking of one key): each
        /// call locks in TiKV's `WakeUpModeForceLock`, so a woken or
        /// conflicting request takes the lock over a newer write
        /// (`LockedWithConflict`) instead of failing, and the prewrite
        /// checks each such lock's `for_update_ts`.
        fair: bool,
        /// Counters (none of `counters`) read under shared locks, in one
        /// call after the increments' locks (the primary is exclusive, as
        /// client-go requires); never with `fair` (client-go refuses shared
        /// locks in fair locking). They are read, not written.
        shared: Vec<u32>,
    },
}

impl PessKind {
    /// The lock calls, in order: the keys of each.
    pub fn lock_calls(&self) -> Vec<Vec<String>> {
        match self {
            PessKind::Transfer { from, to, one_call: true, .. } => {
                vec![vec![account(*from), account(*to)]]
            }
            PessKind::Transfer { from, to, .. } => vec![vec![account(*from)], vec![account(*to)]],
            PessKind::Increment { counters, .. } => {
                counters.iter().map(|c| vec![register(*c)]).collect()
            }
        }
    }

    /// The keys of its shared-lock call, if it makes one (after every call
    /// of [`PessKind::lock_calls`]).
    pub fn shared_keys(&self) -> Vec<String> {
        match self {
            PessKind::Increment { shared, .. } => shared.iter().map(|c| register(*c)).collect(),
            PessKind::Transfer { .. } => Vec::new(),
        }
    }

    /// How its lock calls wait.
    pub fn wait(&self) -> LockWait {
        match self {
            PessKind::Transfer { wait, .. } | PessKind::Increment { wait, .. } => *wait,
        }
    }
}

impl fmt::Display for PessKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wait = |w: &LockWait| match w {
            LockWait::NoWait => "no wait".to_string(),
            LockWait::Always => "wait".to_string(),
            LockWait::Timeout(d) => format!("wait {d:?}"),
        };
        match self {
            PessKind::Transfer { from, to, amount, one_call, wait: w } => write!(
                f,
                "locked transfer {amount} a{from}->a{to} ({}, {})",
                if *one_call { "one call" } else { "from first" },
                wait(w)
            ),
            PessKind::Increment { counters, wait: w, fair, shared } => {
                let names: Vec<String> = counters.iter().map(|c| format!("r{c}")).collect();
                let fair = if *fair { ", fair" } else { "" };
                write!(f, "increment {} ({}{fair})", names.join(" then "), wait(w))?;
                if !shared.is_empty() {
                    let names: Vec<String> = shared.iter().map(|c| format!("r{c}")).collect();
                    write!(f, " sharing {}", names.join(" "))?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for TxnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnKind::Transfer { from, to, amount } => write!(f, "transfer {amount} a{from}->a{to}"),
            TxnKind::BankRead => write!(f, "bank read"),
            TxnKind::Lists { ops, lock_reads } => {
                write!(f, "lists [")?;
                for (i, op) in ops.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    match op {
                        Micro::Read(k, None) => write!(f, "r l{k}")?,
                        Micro::Read(k, Some(v)) => write!(f, "r l{k}={v:?}")?,
                        Micro::Append(k, e) => write!(f, "a l{k}+{e}")?,
                    }
                }
                write!(f, "]{}", if *lock_reads { " lock reads" } else { "" })
            }
            TxnKind::Registers(ops) => {
                write!(f, "registers [")?;
                for (i, op) in ops.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    match op {
                        RegOp::Read(k) => write!(f, "r r{k}")?,
                        RegOp::Put(k, v) => write!(f, "put r{k}=x{v}")?,
                        RegOp::Delete(k) => write!(f, "del r{k}")?,
                        RegOp::Insert(k, v) => write!(f, "ins r{k}=x{v}")?,
                    }
                }
                write!(f, "]")
            }
            TxnKind::FullRead => write!(f, "full read"),
            TxnKind::Pessimistic(k) => write!(f, "{k}"),
        }
    }
}

/// How a transaction's snapshot reads are done.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReadMethod {
    /// One `SnapshotGet` per key, one after another.
    Get,
    /// One `SnapshotBatchGet`.
    BatchGet,
    /// A `SnapshotScan` over the range covering the keys (every key in the
    /// range is read).
    Scan,
    /// The same scan in reverse.
    ScanReverse,
}

/// A buffered write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnWrite {
    /// Put (or insert) this value.
    Put(String),
    /// Delete the key.
    Delete,
    /// Lock the key without changing it (optimistic `LockKeys`).
    Lock,
}

impl fmt::Display for TxnWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnWrite::Put(v) => write!(f, "={v}"),
            TxnWrite::Delete => write!(f, " deleted"),
            TxnWrite::Lock => write!(f, " locked"),
        }
    }
}

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Still running (only seen if the run stopped early: a liveness failure).
    Pending,
    /// Committed at `commit_ts`; `mode` is `None` for a read-only transaction
    /// (it "commits" at its start ts without writing).
    Committed {
        /// The commit timestamp.
        commit_ts: u64,
        /// How the commit went through.
        mode: Option<CommitMode>,
    },
    /// Failed definitely: it never took effect.
    Failed(String),
    /// Failed without knowing whether it took effect (the primary's commit,
    /// an async-commit or 1PC prewrite lost its answer, or the client crashed
    /// while committing).
    Undetermined(String),
}

/// What a transaction did, as far as it got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRun {
    /// Its start timestamp, once PD gave one.
    pub start_ts: Option<u64>,
    /// Snapshot reads at `start_ts`, by key (`None`: absent). Only reads
    /// that completed are recorded.
    pub reads: Vec<(String, Option<String>)>,
    /// The writes it tried to commit, in key order.
    pub writes: Vec<(String, TxnWrite)>,
    /// Its keys read again after buffering its writes, through the
    /// read-your-writes merge, by key (`None`: absent); empty for
    /// transactions that write nothing or did not get that far.
    pub own_reads: Vec<(String, Option<String>)>,
    /// List micro-operations with their results.
    pub micro: Vec<Micro>,
    /// (pessimistic) The keys it locked and read with `get_for_update`.
    pub locked: Vec<LockedRead>,
    /// (pessimistic) The keys it locked in share mode, with the values it
    /// read under those locks (never written: other holders may share
    /// them).
    pub shared: Vec<LockedRead>,
    /// (pessimistic) The wait-for cycle TiKV reported when this
    /// transaction's lock call failed with `Deadlock`, as (waiting txn, txn
    /// waited for, key hash) edges; empty otherwise.
    pub deadlock: Vec<(u64, u64, u64)>,
}

/// A key a pessimistic transaction locked, with the value it read under
/// the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedRead {
    /// The key.
    pub key: String,
    /// The `for_update_ts` of the lock call that took the lock.
    pub for_update_ts: u64,
    /// The value the transaction read for it (`None`: absent).
    pub value: Option<String>,
    /// Fair locking took the lock over a newer write than the call's
    /// `for_update_ts` (`LockedWithConflict`); `for_update_ts` is then that
    /// write's commit ts.
    pub with_conflict: bool,
}

/// One transaction of one client.
#[derive(Clone, Debug)]
pub struct TxnEntry {
    /// Index in the history (also the id written into account values).
    pub id: usize,
    /// The client that ran it.
    pub client: usize,
    /// What it was asked to do.
    pub kind: TxnKind,
    /// How it read.
    pub read_method: ReadMethod,
    /// Async commit requested.
    pub async_commit: bool,
    /// 1PC requested.
    pub one_pc: bool,
    /// Causal consistency requested (no linearizability promise).
    pub causal: bool,
    /// When it was started.
    pub invoke: Instant,
    /// When it returned.
    pub end: Option<Instant>,
    /// What it did.
    pub run: TxnRun,
    /// How it ended.
    pub outcome: TxnOutcome,
    /// Its client crashed while it was committing (its locks stayed behind).
    pub crashed: bool,
}

impl TxnEntry {
    /// True if it wrote nothing (a read-only transaction).
    pub fn read_only(&self) -> bool {
        self.run.writes.is_empty()
    }
}

/// The record of a transactional run.
#[derive(Clone, Debug, Default)]
pub struct TxnHistory {
    /// Every transaction, in invocation order.
    pub entries: Vec<TxnEntry>,
}

impl TxnHistory {
    /// Counts of (committed, failed, undetermined, pending) outcomes.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for e in &self.entries {
            match e.outcome {
                TxnOutcome::Committed { .. } => c.0 += 1,
                TxnOutcome::Failed(_) => c.1 += 1,
                TxnOutcome::Undetermined(_) => c.2 += 1,
                TxnOutcome::Pending => c.3 += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_round_trip() {
        let keys = TxnKeys { accounts: 2, lists: 3, registers: 1 };
        assert_eq!(keys.all(), ["a0", "a1", "l0", "l1", "l2", "r0"]);
        let mut sorted = keys.all();
        sorted.sort();
        assert_eq!(sorted, keys.all(), "index order is wire order");
        assert_eq!(parse_balance(Some(&balance_value(42, 7))), Some(42));
        assert_eq!(parse_balance(None), Some(INITIAL_BALANCE));
        assert_eq!(parse_balance(Some("junk")), None);
        assert_eq!(parse_list_value(Some(&list_value(&[3, 1, 2]))), [3, 1, 2]);
        assert_eq!(parse_list_value(None), Vec::<u32>::new());
        assert_eq!(parse_list_value(Some("1,x")), [1, GARBAGE]);
        assert_eq!(parse_list("l7"), Some(7));
    }
}
