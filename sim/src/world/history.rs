//! What the world's clients did: one [`Entry`] per operation, with its
//! invocation and completion in virtual time and an honest [`Outcome`].
//!
//! Keys and values are small integers: key `i` is the bytes `k{i}` and value
//! `v` the bytes `v{v}` (every write in a run writes a fresh value, so a read
//! tells exactly which write it saw).

use std::fmt;

use tikv_core::time::Instant;

/// A key of the workload's key space (`k{index}` on the wire).
pub type KeyId = u32;
/// A value written by the workload (`v{id}` on the wire). Unique per write.
pub type Val = u32;

/// A value read back that no write of the workload could have produced
/// (not of the form `v{n}`): it never matches a write, so the checker
/// reports it.
pub const CORRUPT: Val = Val::MAX;

/// The wire form of a key.
pub fn key_bytes(k: KeyId) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

/// The key a wire key names, if it is one of the workload's.
pub fn parse_key(bytes: &[u8]) -> Option<KeyId> {
    std::str::from_utf8(bytes.strip_prefix(b"k")?).ok()?.parse().ok()
}

/// The wire form of a value.
pub fn value_bytes(v: Val) -> Vec<u8> {
    format!("v{v}").into_bytes()
}

/// The value a wire value names; [`CORRUPT`] for anything else.
pub fn parse_value(bytes: &[u8]) -> Val {
    bytes
        .strip_prefix(b"v")
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .filter(|&v| v != CORRUPT)
        .unwrap_or(CORRUPT)
}

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `raw::get`.
    Get(KeyId),
    /// `raw::batch_get`.
    BatchGet(Vec<KeyId>),
    /// `raw::put`.
    Put(KeyId, Val),
    /// `raw::batch_put`.
    BatchPut(Vec<(KeyId, Val)>),
    /// `raw::delete`.
    Delete(KeyId),
    /// `raw::compare_and_swap` (atomic mode).
    Cas {
        /// The key.
        key: KeyId,
        /// Expected current value (`None`: must not exist).
        expected: Option<Val>,
        /// Value to write.
        new: Val,
    },
    /// Forward `raw::scan` of `[k{start}, k{end})` (wire order), at most `limit` pairs.
    Scan {
        /// First key (inclusive).
        start: KeyId,
        /// Last key (exclusive).
        end: KeyId,
        /// Pair limit.
        limit: u32,
    },
}

impl OpKind {
    /// True for operations that may change data.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            OpKind::Put(..) | OpKind::BatchPut(_) | OpKind::Delete(_) | OpKind::Cas { .. }
        )
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Get(k) => write!(f, "get k{k}"),
            OpKind::BatchGet(ks) => write!(f, "batch_get {ks:?}"),
            OpKind::Put(k, v) => write!(f, "put k{k}=v{v}"),
            OpKind::BatchPut(kvs) => write!(f, "batch_put {kvs:?}"),
            OpKind::Delete(k) => write!(f, "delete k{k}"),
            OpKind::Cas { key, expected, new } => {
                write!(f, "cas k{key} {} -> v{new}", show(*expected))
            }
            OpKind::Scan { start, end, limit } => {
                write!(f, "scan [k{start}, k{end}) limit {limit}")
            }
        }
    }
}

/// Formats an optional value (`-` for absent).
pub fn show(v: Option<Val>) -> String {
    match v {
        Some(v) => format!("v{v}"),
        None => "-".to_string(),
    }
}

/// What a successful operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OkValue {
    /// Writes without a result.
    Unit,
    /// A single read.
    Value(Option<Val>),
    /// Found pairs (batch get, scan), in the order returned.
    Pairs(Vec<(KeyId, Val)>),
    /// Compare-and-swap result.
    Cas {
        /// The value before the call.
        previous: Option<Val>,
        /// Whether the new value was written.
        succeeded: bool,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still running (only seen if the run stopped early: a liveness failure).
    Pending,
    /// Succeeded with this result.
    Ok(OkValue),
    /// Failed definitely: the client knows it had no effect (a server-side
    /// error answer, an invalid argument).
    Fail(String),
    /// Failed without knowing whether a write took effect (timeouts,
    /// exhausted backoff, `Error::Undetermined`): "maybe happened".
    Undetermined(String),
}

/// One operation of one client.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Index in the history.
    pub id: usize,
    /// The client that ran it.
    pub client: usize,
    /// What it asked for.
    pub kind: OpKind,
    /// When it was started.
    pub invoke: Instant,
    /// When it returned (`None` while pending).
    pub end: Option<Instant>,
    /// How it ended.
    pub outcome: Outcome,
    /// Store write RPCs of this operation whose answer the client never saw
    /// (deadline exceeded, or still in flight when it returned): each may
    /// have been applied, so the write may have taken effect more than once.
    pub unacked_writes: u32,
    /// The latest instant at which one of its write RPCs could still be
    /// applied: the world's servers refuse requests past their deadline,
    /// so this is the largest deadline of its write RPCs (at least `end`).
    pub effect_until: Instant,
}

/// The record of a run.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Every operation, in invocation order.
    pub entries: Vec<Entry>,
}

impl History {
    /// Records an invocation and returns its id.
    pub fn invoke(&mut self, client: usize, kind: OpKind, now: Instant) -> usize {
        let id = self.entries.len();
        self.entries.push(Entry {
            id,
            client,
            kind,
            invoke: now,
            end: None,
            outcome: Outcome::Pending,
            unacked_writes: 0,
            effect_until: now,
        });
        id
    }

    /// Counts of (ok, fail, undetermined, pending) outcomes.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for e in &self.entries {
            match e.outcome {
                Outcome::Ok(_) => c.0 += 1,
                Outcome::Fail(_) => c.1 += 1,
                Outcome::Undetermined(_) => c.2 += 1,
                Outcome::Pending => c.3 += 1,
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
        assert_eq!(parse_key(&key_bytes(12)), Some(12));
        assert_eq!(parse_key(b"x1"), None);
        assert_eq!(parse_value(&value_bytes(7)), 7);
        assert_eq!(parse_value(b"garbage"), CORRUPT);
        assert_eq!(parse_value(format!("v{CORRUPT}").as_bytes()), CORRUPT);
    }
}
