//! A per-key linearizability checker for raw register histories
//! (Wing & Gong's search with Lowe's memoisation, as in Knossos/Porcupine).
//!
//! Each operation of the history is projected onto the keys it touches:
//! a batch get or a scan is a read of every key it covers (each key is read
//! at one instant inside the operation's window, which is all a per-key
//! check needs), a batch put is a put of each of its keys. Per key, the
//! search looks for a total order of the projected operations that respects
//! real time (an operation that returned before another was invoked comes
//! first) and register semantics.
//!
//! Uncertainty is modelled, not ignored:
//! - an undetermined write is *optional*: it may take effect once, anywhere
//!   between its invocation and the last instant one of its RPCs could be
//!   applied ([`Entry::effect_until`]), or never;
//! - a write whose RPC went unanswered and was retried may have taken effect
//!   more than once (client-go retries raw writes after a timeout as we do):
//!   each unanswered attempt adds an optional extra copy (at most
//!   [`MAX_SILENT_COPIES`]);
//! - failed and undetermined reads constrain nothing and are dropped.
//!
//! The search is bounded; a key whose search exceeds the bound is reported
//! as [`KeyVerdict::Unknown`] rather than passed or failed.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use tikv_core::time::Instant;

use super::history::{Entry, History, KeyId, OkValue, OpKind, Outcome, Val, show};

/// Extra optional applications modelled per unanswered write attempt, at most.
pub const MAX_SILENT_COPIES: u32 = 2;
/// Operations per key beyond which the search is not attempted.
pub const MAX_OPS_PER_KEY: usize = 128;
/// Search steps per key before giving up with [`KeyVerdict::Unknown`].
pub const MAX_STEPS: u64 = 200_000;

/// One projected operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A read that returned this value.
    Read(Option<Val>),
    /// A put (`Some`) or delete (`None`).
    Write(Option<Val>),
    /// A compare-and-swap; `result` is `(succeeded, previous)` when observed.
    Cas {
        /// Expected value.
        expected: Option<Val>,
        /// New value.
        new: Val,
        /// What the client was told, if anything.
        result: Option<(bool, Option<Val>)>,
    },
}

/// A projected operation with its real-time window.
#[derive(Clone, Debug)]
pub struct KeyOp {
    /// History entry it came from (for reports).
    pub entry: usize,
    /// Invocation.
    pub invoke: Instant,
    /// Latest instant at which it can take effect.
    pub ret: Instant,
    /// What it does.
    pub step: Step,
    /// True if it need not take effect at all.
    pub optional: bool,
}

impl fmt::Display for KeyOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match &self.step {
            Step::Read(v) => format!("read {}", show(*v)),
            Step::Write(v) => format!("write {}", show(*v)),
            Step::Cas { expected, new, result } => format!(
                "cas {} -> v{new} = {}",
                show(*expected),
                match result {
                    Some((ok, prev)) => format!("{ok} (prev {})", show(*prev)),
                    None => "?".into(),
                }
            ),
        };
        let who = if self.entry == usize::MAX {
            "final".to_string()
        } else {
            format!("op{}", self.entry)
        };
        write!(
            f,
            "{who} {step} [{}, {}]{}",
            self.invoke,
            self.ret,
            if self.optional { " optional" } else { "" }
        )
    }
}

/// The checker's answer for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    Violation,
    /// The search was cut off (too many operations or steps).
    Unknown,
}

/// Projects a history onto per-key operation lists. `final_values` (the
/// cluster's data after quiescence) adds one last read per key, so the
/// final state must be one a linearization allows.
pub fn project(
    history: &History,
    final_values: Option<(&BTreeMap<KeyId, Val>, Instant, KeyId)>,
) -> BTreeMap<KeyId, Vec<KeyOp>> {
    let mut per_key: BTreeMap<KeyId, Vec<KeyOp>> = BTreeMap::new();
    for e in &history.entries {
        project_entry(e, &mut per_key);
    }
    if let Some((values, at, keys)) = final_values {
        for k in 0..keys {
            per_key.entry(k).or_default().push(KeyOp {
                entry: usize::MAX,
                invoke: at,
                ret: at,
                step: Step::Read(values.get(&k).copied()),
                optional: false,
            });
        }
    }
    per_key
}

fn project_entry(e: &Entry, out: &mut BTreeMap<KeyId, Vec<KeyOp>>) {
    let end = e.end.unwrap_or(Instant::MAX);
    let mut push = |k: KeyId, ret: Instant, step: Step, optional: bool| {
        out.entry(k).or_default().push(KeyOp { entry: e.id, invoke: e.invoke, ret, step, optional })
    };
    let silent = e.unacked_writes.min(MAX_SILENT_COPIES);
    match (&e.kind, &e.outcome) {
        // Reads: only successful ones say anything.
        (OpKind::Get(k), Outcome::Ok(OkValue::Value(v))) => push(*k, end, Step::Read(*v), false),
        (OpKind::BatchGet(keys), Outcome::Ok(OkValue::Pairs(pairs))) => {
            for k in keys {
                let found = pairs.iter().find(|(pk, _)| pk == k).map(|&(_, v)| v);
                push(*k, end, Step::Read(found), false);
            }
        }
        (OpKind::Scan { start, end: stop, limit }, Outcome::Ok(OkValue::Pairs(pairs))) => {
            // With a full page, keys past the last one returned were not
            // looked at; below it, absence means "not there".
            let covered_to = if pairs.len() >= *limit as usize {
                pairs.last().map_or(*start, |&(k, _)| k + 1)
            } else {
                *stop
            };
            for k in *start..covered_to.min(*stop) {
                let found = pairs.iter().find(|(pk, _)| *pk == k).map(|&(_, v)| v);
                push(k, end, Step::Read(found), false);
            }
        }
        (kind, outcome) if kind.is_write() => {
            let writes: Vec<(KeyId, Step)> = match kind {
                OpKind::Put(k, v) => vec![(*k, Step::Write(Some(*v)))],
                OpKind::BatchPut(kvs) => {
                    kvs.iter().map(|&(k, v)| (k, Step::Write(Some(v)))).collect()
                }
                OpKind::Delete(k) => vec![(*k, Step::Write(None))],
                OpKind::Cas { key, expected, new } => {
                    vec![(*key, Step::Cas { expected: *expected, new: *new, result: None })]
                }
                _ => Vec::new(),
            };
            let (required, extra) = match outcome {
                Outcome::Ok(_) => (true, silent),
                // Definite failure: only attempts the client never heard back
                // from may have landed.
                Outcome::Fail(_) => (false, silent),
                Outcome::Undetermined(_) | Outcome::Pending => (false, silent.max(1)),
            };
            for (k, step) in writes {
                if required {
                    let mut step = step.clone();
                    if let (
                        Step::Cas { result, .. },
                        Outcome::Ok(OkValue::Cas { previous, succeeded }),
                    ) = (&mut step, outcome)
                    {
                        *result = Some((*succeeded, *previous));
                    }
                    push(k, end, step, false);
                }
                let until = if matches!(outcome, Outcome::Pending) {
                    Instant::MAX
                } else {
                    e.effect_until.max(end)
                };
                for _ in 0..extra {
                    push(k, until, step.clone(), true);
                }
            }
        }
        _ => {}
    }
}

/// Applies `step` to register value `v`; `None` if the step cannot happen
/// in that state (a read or CAS result that disagrees with it).
fn apply(step: &Step, v: Option<Val>) -> Option<Option<Val>> {
    match step {
        Step::Read(seen) => (*seen == v).then_some(v),
        Step::Write(w) => Some(*w),
        Step::Cas { expected, new, result } => {
            let matches = *expected == v;
            match result {
                Some((succeeded, previous)) => {
                    if *previous != v || *succeeded != matches {
                        return None;
                    }
                    Some(if matches { Some(*new) } else { v })
                }
                None => Some(if matches { Some(*new) } else { v }),
            }
        }
    }
}

/// Searches for a linearization of one key's operations, starting from an
/// absent key.
pub fn check_key(ops: &[KeyOp]) -> KeyVerdict {
    if ops.len() > MAX_OPS_PER_KEY {
        return KeyVerdict::Unknown;
    }
    let mut ops: Vec<KeyOp> = ops.to_vec();
    // Invocation order makes the search try plausible orders first; ties
    // broken by entry id so the order is total and reproducible.
    ops.sort_by_key(|o| (o.invoke, o.ret, o.entry));
    let mut search = Search { ops: &ops, seen: HashSet::new(), steps: 0 };
    match search.dfs(0, None, Instant::ZERO) {
        Some(true) => KeyVerdict::Linearizable,
        Some(false) => KeyVerdict::Violation,
        None => KeyVerdict::Unknown,
    }
}

struct Search<'a> {
    ops: &'a [KeyOp],
    /// Visited (placed set, value) states. Only membership is asked, so hash
    /// order never affects the search.
    seen: HashSet<(u128, Option<Val>)>,
    steps: u64,
}

impl Search<'_> {
    /// `Some(found)`, or `None` when the step budget ran out.
    fn dfs(&mut self, placed: u128, value: Option<Val>, max_invoke: Instant) -> Option<bool> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return None;
        }
        if !self.seen.insert((placed, value)) {
            return Some(false);
        }
        // The two earliest returns among unplaced required operations: an
        // operation can go next only if no *other* required one returned
        // before it was invoked.
        let mut first: Option<(Instant, usize)> = None;
        let mut second: Option<Instant> = None;
        let mut all_required_placed = true;
        for (i, o) in self.ops.iter().enumerate() {
            if placed & (1 << i) != 0 || o.optional {
                continue;
            }
            all_required_placed = false;
            match first {
                Some((r, _)) if o.ret >= r => {
                    second = Some(second.map_or(o.ret, |s| s.min(o.ret)));
                }
                _ => {
                    if let Some((r, _)) = first {
                        second = Some(second.map_or(r, |s| s.min(r)));
                    }
                    first = Some((o.ret, i));
                }
            }
        }
        if all_required_placed {
            return Some(true);
        }
        for (i, o) in self.ops.iter().enumerate() {
            if placed & (1 << i) != 0 {
                continue;
            }
            let bound = match first {
                Some((_, j)) if j == i => second,
                Some((r, _)) => Some(r),
                None => None,
            };
            if bound.is_some_and(|b| o.invoke > b) {
                // Sorted by invocation: every later op is excluded too.
                break;
            }
            // Something already placed started after this one could take
            // effect: too late for it.
            if o.ret < max_invoke {
                continue;
            }
            let Some(next) = apply(&o.step, value) else { continue };
            if self.dfs(placed | (1 << i), next, max_invoke.max(o.invoke))? {
                return Some(true);
            }
        }
        Some(false)
    }
}

/// The checker's answer for a whole history.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Keys with no linearization, each with a short explanation.
    pub violations: Vec<(KeyId, String)>,
    /// Keys whose search was cut off.
    pub unknown: Vec<KeyId>,
    /// Keys checked.
    pub checked: usize,
}

/// Checks every key of `per_key`.
pub fn check(per_key: &BTreeMap<KeyId, Vec<KeyOp>>) -> Verdict {
    let mut verdict = Verdict::default();
    for (&k, ops) in per_key {
        verdict.checked += 1;
        match check_key(ops) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Unknown => verdict.unknown.push(k),
            KeyVerdict::Violation => {
                let mut sorted = ops.clone();
                sorted.sort_by_key(|o| (o.invoke, o.entry));
                let lines: Vec<String> = sorted.iter().map(|o| format!("  {o}")).collect();
                verdict
                    .violations
                    .push((k, format!("key k{k} has no linearization of:\n{}", lines.join("\n"))));
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(entry: usize, inv: u64, ret: u64, step: Step) -> KeyOp {
        KeyOp {
            entry,
            invoke: Instant::from_millis(inv),
            ret: Instant::from_millis(ret),
            step,
            optional: false,
        }
    }

    #[test]
    fn sequential_register() {
        let ops = vec![
            op(0, 0, 1, Step::Write(Some(1))),
            op(1, 2, 3, Step::Read(Some(1))),
            op(2, 4, 5, Step::Write(None)),
            op(3, 6, 7, Step::Read(None)),
        ];
        assert_eq!(check_key(&ops), KeyVerdict::Linearizable);
    }

    #[test]
    fn stale_read_is_a_violation() {
        let ops = vec![
            op(0, 0, 1, Step::Write(Some(1))),
            op(1, 2, 3, Step::Write(Some(2))),
            op(2, 4, 5, Step::Read(Some(1))),
        ];
        assert_eq!(check_key(&ops), KeyVerdict::Violation);
    }

    #[test]
    fn concurrent_writes_may_go_either_way() {
        let ops = vec![
            op(0, 0, 10, Step::Write(Some(1))),
            op(1, 0, 10, Step::Write(Some(2))),
            op(2, 11, 12, Step::Read(Some(1))),
        ];
        assert_eq!(check_key(&ops), KeyVerdict::Linearizable);
    }

    #[test]
    fn optional_write_may_or_may_not_happen() {
        let mut maybe = op(0, 0, 1, Step::Write(Some(1)));
        maybe.optional = true;
        let seen = vec![maybe.clone(), op(1, 5, 6, Step::Read(Some(1)))];
        assert_eq!(check_key(&seen), KeyVerdict::Linearizable);
        let unseen = vec![maybe.clone(), op(1, 5, 6, Step::Read(None))];
        assert_eq!(check_key(&unseen), KeyVerdict::Linearizable);
        // But not after its window closed.
        let late = vec![
            maybe,
            op(1, 2, 3, Step::Read(None)),
            op(2, 4, 5, Step::Write(Some(2))),
            op(3, 6, 7, Step::Read(Some(1))),
        ];
        assert_eq!(check_key(&late), KeyVerdict::Violation);
    }

    #[test]
    fn cas_results_must_agree_with_the_register() {
        let ok = vec![
            op(0, 0, 1, Step::Write(Some(1))),
            op(1, 2, 3, Step::Cas { expected: Some(1), new: 2, result: Some((true, Some(1))) }),
            op(2, 4, 5, Step::Read(Some(2))),
        ];
        assert_eq!(check_key(&ok), KeyVerdict::Linearizable);
        let lying = vec![
            op(0, 0, 1, Step::Write(Some(1))),
            op(1, 2, 3, Step::Cas { expected: Some(1), new: 2, result: Some((false, Some(1))) }),
        ];
        assert_eq!(check_key(&lying), KeyVerdict::Violation);
    }

    #[test]
    fn real_time_order_is_enforced_for_reads() {
        // Two sequential reads cannot see a new value and then the old one.
        let ops = vec![
            op(0, 0, 100, Step::Write(Some(1))),
            op(1, 10, 20, Step::Read(Some(1))),
            op(2, 30, 40, Step::Read(None)),
        ];
        assert_eq!(check_key(&ops), KeyVerdict::Violation);
    }

    #[test]
    fn too_many_ops_is_unknown() {
        let ops: Vec<KeyOp> =
            (0..=MAX_OPS_PER_KEY).map(|i| op(i, 0, 1, Step::Read(None))).collect();
        assert_eq!(check_key(&ops), KeyVerdict::Unknown);
    }
}
