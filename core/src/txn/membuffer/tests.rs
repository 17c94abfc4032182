use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Bound;

use super::*;
use crate::rng::Rng;

const KINDS: [IndexKind; 2] = [IndexKind::Art, IndexKind::BTreeMap];

fn val(e: &Entry<'_>) -> String {
    match e.value {
        None => "-".into(),
        Some(BufferedValue::Delete) => "DEL".into(),
        Some(BufferedValue::Put(v)) => String::from_utf8_lossy(v).into_owned(),
    }
}

/// The buffer's content as one line: `key=value[flags]`.
fn dump(buf: &MemBuffer) -> String {
    let mut s = String::new();
    for (k, e) in buf.iter(..) {
        let _ = write!(s, "{}={}", String::from_utf8_lossy(k), val(&e));
        if !e.flags.is_empty() {
            let _ = write!(s, "[{:?}]", e.flags);
        }
        s.push(' ');
    }
    let _ = write!(s, "(len {} size {})", buf.len(), buf.size());
    s
}

#[test]
fn flags_ops_follow_client_go() {
    type F = KeyFlags;
    let all = |ops: &[FlagsOp]| FlagsOp::apply_all(ops, F::EMPTY);
    assert_eq!(all(&[FlagsOp::SetPresumeKeyNotExists]), F::PRESUME_KNE | F::NEED_CHECK_EXISTS);
    assert_eq!(
        all(&[FlagsOp::SetPresumeKeyNotExists, FlagsOp::DelNeedCheckExists]),
        F::PRESUME_KNE
    );
    assert_eq!(
        all(&[FlagsOp::SetNeedConstraintCheckInPrewrite, FlagsOp::SetKeyLockedValueExists]),
        F::KEY_LOCKED_VAL_EXIST
    );
    assert_eq!(
        all(&[
            FlagsOp::SetKeyLockedValueExists,
            FlagsOp::SetNeedConstraintCheckInPrewrite,
            FlagsOp::SetKeyLockedValueNotExists
        ]),
        F::EMPTY
    );
    let f = all(&[FlagsOp::SetAssertExist]);
    assert!(f.has_assert_exist() && !f.has_assert_not_exist() && f.has_assertion_flags());
    let f = f.apply(FlagsOp::SetAssertNotExist);
    assert!(f.has_assert_not_exist() && !f.has_assert_exist());
    let f = f.apply(FlagsOp::SetAssertUnknown);
    assert!(f.has_assert_unknown() && !f.has_assert_exist() && !f.has_assert_not_exist());
    assert!(!f.apply(FlagsOp::SetAssertNone).has_assertion_flags());
    assert!(all(&[FlagsOp::SetPreviousPresumeKNE]).has_presume_key_not_exists());
    let f = all(&[FlagsOp::SetKeyLocked, FlagsOp::SetKeyLockedInShareMode]);
    assert_eq!(f.apply(FlagsOp::SetKeyLockedInExclusiveMode), F::KEY_LOCKED);
    // client-go's bit layout and persistent set.
    assert_eq!(F::NEWLY_INSERTED.bits(), 1 << 8);
    assert_eq!(F::KEY_LOCKED_IN_SHARE_MODE.bits(), 1 << 13);
    assert_eq!(F::PERSISTENT.bits(), 0b10_1000_0000_1010);
    assert_eq!(format!("{:?}", F::KEY_LOCKED | F::from_bits(1 << 15)), "KeyLocked|0x8000");
}

#[test]
fn get_set_delete_flags_len_size() {
    for kind in KINDS {
        let mut buf = MemBuffer::with_index(kind);
        assert!(buf.get(b"a").is_none() && buf.is_empty() && !buf.dirty());
        buf.set(b"a", "1").unwrap();
        buf.set(b"a", "22").unwrap();
        buf.delete(b"b").unwrap();
        buf.update_flags(b"c", &[FlagsOp::SetKeyLocked]).unwrap();
        // A no-op flag update on a missing key creates nothing.
        buf.update_flags(b"d", &[]).unwrap();
        buf.update_flags(b"e", &[FlagsOp::DelKeyLocked]).unwrap();
        assert_eq!(dump(&buf), "a=22 b=DEL c=-[KeyLocked] (len 3 size 5)", "{kind:?}");
        assert!(buf.get(b"b").unwrap().is_delete());
        assert_eq!(buf.get(b"a").unwrap().value_bytes(), Some(&b"22"[..]));
        assert!(buf.get(b"d").is_none() && buf.get(b"e").is_none());
        assert!(buf.dirty());
        // Writing a value clears a postponed constraint check (setValue).
        buf.update_flags(b"a", &[FlagsOp::SetNeedConstraintCheckInPrewrite]).unwrap();
        buf.update_flags(b"a", &[FlagsOp::SetNeedLocked]).unwrap();
        assert!(buf.get(b"a").unwrap().flags.contains(KeyFlags::NEED_CONSTRAINT_CHECK_IN_PREWRITE));
        buf.set_with_flags(b"a", "3", &[FlagsOp::SetNewlyInserted]).unwrap();
        assert_eq!(buf.get(b"a").unwrap().flags, KeyFlags::NEED_LOCKED | KeyFlags::NEWLY_INSERTED);
        assert!(matches!(buf.set(b"x", ""), Err(Error::InvalidArgument(_))));
    }
}

#[test]
fn limits_are_typed_errors_and_leave_the_buffer_unchanged() {
    for kind in KINDS {
        let mut buf = MemBuffer::with_index(kind);
        let max = vec![b'k'; MAX_KEY_LEN];
        buf.set(&max, "v").unwrap();
        let over = vec![b'k'; MAX_KEY_LEN + 1];
        assert_eq!(buf.set(&over, "v"), Err(Error::KeyTooLarge { size: 65536, limit: 65535 }));
        assert_eq!(
            buf.update_flags(&over, &[FlagsOp::SetKeyLocked]),
            Err(Error::KeyTooLarge { size: 65536, limit: 65535 })
        );
        let mut buf = MemBuffer::with_index(kind);
        buf.set_entry_size_limit(10, 20);
        assert_eq!(buf.entry_size_limit(), (10, 20));
        buf.set(b"k1", "12345678").unwrap();
        assert_eq!(buf.set(b"k2", "123456789"), Err(Error::EntryTooLarge { size: 11, limit: 10 }));
        // 10 + 2 + 8 = 20 fits exactly; one more byte does not.
        buf.set(b"k2", "12345678").unwrap();
        assert_eq!(buf.delete(b"k3"), Err(Error::TxnTooLarge { size: 22, limit: 20 }));
        assert_eq!(
            buf.update_flags(b"k3", &[FlagsOp::SetKeyLocked]),
            Err(Error::TxnTooLarge { size: 22, limit: 20 })
        );
        assert_eq!(dump(&buf), "k1=12345678 k2=12345678 (len 2 size 20)");
        // Shrinking a value is always allowed, and a delete shrinks.
        buf.delete(b"k2").unwrap();
        buf.set(b"k1", "1").unwrap();
        assert_eq!(dump(&buf), "k1=1 k2=DEL (len 2 size 5)");
    }
}

#[test]
fn staging_misuse_is_a_typed_error() {
    let mut buf = MemBuffer::new();
    let h1 = buf.staging();
    let h2 = buf.staging();
    assert_eq!((h1.depth(), h2.depth()), (1, 2));
    assert_eq!(buf.release(h1), Err(Error::StagingOrder { handle: 1, open: 2 }));
    assert_eq!(buf.cleanup(h1), Err(Error::StagingOrder { handle: 1, open: 2 }));
    assert_eq!(buf.staging_depth(), 2);
    buf.release(h2).unwrap();
    // Releasing twice fails; cleaning up a closed staging is a no-op
    // (TiDB defers Cleanup after Release).
    assert_eq!(buf.release(h2), Err(Error::StagingOrder { handle: 2, open: 1 }));
    buf.cleanup(h2).unwrap();
    assert_eq!(buf.staging_depth(), 1);
    // A stale handle never matches a newer staging at the same depth.
    let h2b = buf.staging();
    buf.set(b"a", "1").unwrap();
    buf.cleanup(h2).unwrap();
    assert_eq!(buf.get(b"a").unwrap().value_bytes(), Some(&b"1"[..]));
    assert!(buf.release(h2).is_err());
    buf.release(h2b).unwrap();
    buf.release(h1).unwrap();
    assert_eq!(buf.staging_depth(), 0);
    assert_eq!(buf.undo.len(), 0, "no undo kept outside stagings");
}

#[test]
fn checkpoints_reject_stale_use() {
    let mut buf = MemBuffer::new();
    let h = buf.staging();
    buf.set(b"a", "1").unwrap();
    let cp_a = buf.checkpoint();
    buf.set(b"a", "2").unwrap();
    let cp_b = buf.checkpoint();
    buf.set(b"b", "3").unwrap();
    buf.revert_to_checkpoint(cp_a).unwrap();
    assert_eq!(dump(&buf), "a=1 (len 1 size 2)");
    buf.set(b"c", "4").unwrap();
    buf.set(b"d", "5").unwrap();
    // The log is as long again as at cp_b, but it is not the same log.
    assert_eq!(buf.revert_to_checkpoint(cp_b), Err(Error::StaleCheckpoint));
    // Reverting to the same checkpoint twice is fine.
    buf.revert_to_checkpoint(cp_a).unwrap();
    buf.revert_to_checkpoint(cp_a).unwrap();
    let inner = buf.staging();
    assert_eq!(buf.revert_to_checkpoint(cp_a), Err(Error::StaleCheckpoint));
    let cp_in = buf.checkpoint();
    buf.set(b"e", "6").unwrap();
    buf.cleanup(inner).unwrap();
    assert_eq!(buf.revert_to_checkpoint(cp_in), Err(Error::StaleCheckpoint));
    buf.cleanup(h).unwrap();
    assert_eq!(buf.revert_to_checkpoint(cp_a), Err(Error::StaleCheckpoint));
    assert!(buf.is_empty());

    // Outside any staging a checkpoint works too.
    buf.set(b"x", "1").unwrap();
    let cp = buf.checkpoint();
    buf.set(b"x", "2").unwrap();
    buf.delete(b"y").unwrap();
    buf.revert_to_checkpoint(cp).unwrap();
    assert_eq!(dump(&buf), "x=1 (len 1 size 2)");
}

#[test]
fn flags_on_rollback_follow_persistent_rules() {
    for kind in KINDS {
        let mut buf = MemBuffer::with_index(kind);
        buf.set_with_flags(b"old", "v", &[FlagsOp::SetPresumeKeyNotExists]).unwrap();
        buf.update_flags(b"flagonly", &[FlagsOp::SetNeedLocked]).unwrap();
        let h = buf.staging();
        // A new key with a lock: the lock is held in TiKV, the key stays.
        buf.set_with_flags(
            b"locked",
            "v",
            &[FlagsOp::SetKeyLocked, FlagsOp::SetKeyLockedValueExists],
        )
        .unwrap();
        // A new key with statement-level flags only: it goes.
        buf.set_with_flags(b"new", "v", &[FlagsOp::SetNewlyInserted]).unwrap();
        // An old key: value and statement-level flags go back, a lock stays.
        buf.set_with_flags(
            b"old",
            "w",
            &[FlagsOp::DelPresumeKeyNotExists, FlagsOp::SetKeyLocked, FlagsOp::SetAssertExist],
        )
        .unwrap();
        buf.update_flags(b"flagonly", &[FlagsOp::DelNeedLocked, FlagsOp::SetReadable]).unwrap();
        buf.cleanup(h).unwrap();
        assert_eq!(
            dump(&buf),
            "flagonly=-[NeedLocked] locked=-[KeyLocked|KeyLockedValExist] \
             old=v[PresumeKNE|KeyLocked|NeedCheckExists] (len 3 size 18)",
            "{kind:?}"
        );
        // Persistent flags cleared inside the stage stay cleared.
        let h = buf.staging();
        buf.update_flags(b"locked", &[FlagsOp::DelKeyLocked]).unwrap();
        buf.cleanup(h).unwrap();
        assert_eq!(buf.get(b"locked").unwrap().flags, KeyFlags::KEY_LOCKED_VAL_EXIST);
    }
}

#[test]
fn undo_log_keeps_one_version_per_key_per_level() {
    let mut buf = MemBuffer::new();
    let h1 = buf.staging();
    for i in 0..10_000u32 {
        buf.set(format!("k{}", i % 10).as_bytes(), i.to_string()).unwrap();
    }
    assert_eq!(buf.undo.len(), 10);
    let h2 = buf.staging();
    for i in 0..1000u32 {
        buf.set(format!("k{}", i % 20).as_bytes(), "x").unwrap();
    }
    assert_eq!(buf.undo.len(), 30);
    buf.release(h2).unwrap();
    // k0..k9 were already recorded by h1; k10..k19 are new to it.
    assert_eq!(buf.undo.len(), 20);
    buf.set(b"k15", "again").unwrap();
    assert_eq!(buf.undo.len(), 20, "k15's merged record is reused");
    buf.cleanup(h1).unwrap();
    assert!(buf.is_empty() && buf.undo.is_empty());
}

#[test]
fn rollback_of_100k_writes() {
    for kind in KINDS {
        let mut buf = MemBuffer::with_index(kind);
        for i in 0..1000u32 {
            buf.set(&i.to_be_bytes(), "base").unwrap();
        }
        let before = dump(&buf);
        let h = buf.staging();
        for i in 0..100_000u32 {
            buf.set(&(i * 7919 % 200_000).to_be_bytes(), "staged").unwrap();
        }
        assert_eq!(buf.undo.len(), 100_000);
        buf.cleanup(h).unwrap();
        assert_eq!(dump(&buf), before);
    }
}

fn keys_of(it: Iter<'_>) -> Vec<String> {
    it.map(|(k, e)| format!("{}={}", String::from_utf8_lossy(k), val(&e))).collect()
}

#[test]
fn iteration_both_ways_with_tombstones_and_prefix_keys() {
    for kind in KINDS {
        let mut buf = MemBuffer::with_index(kind);
        for k in ["abc", "", "a", "ab", "abd", "b", "abcd", "ac", "abcc"] {
            buf.set(k.as_bytes(), "v").unwrap();
        }
        buf.delete(b"ab").unwrap();
        buf.delete(b"zz").unwrap();
        buf.update_flags(b"abca", &[FlagsOp::SetKeyLocked]).unwrap();
        // Rolled-back keys stay indexed but are not listed.
        let h = buf.staging();
        buf.set(b"abcb", "gone").unwrap();
        buf.cleanup(h).unwrap();
        let all = keys_of(buf.iter(..));
        assert_eq!(
            all,
            [
                "=v", "a=v", "ab=DEL", "abc=v", "abca=-", "abcc=v", "abcd=v", "abd=v", "ac=v",
                "b=v", "zz=DEL"
            ],
            "{kind:?}"
        );
        let mut rev = keys_of(buf.iter_rev(..));
        rev.reverse();
        assert_eq!(rev, all, "{kind:?}");
        let b = |s: &'static str| s.as_bytes();
        let r = (Bound::Included(b("ab")), Bound::Excluded(b("abcd")));
        assert_eq!(keys_of(buf.iter(r)), ["ab=DEL", "abc=v", "abca=-", "abcc=v"]);
        assert_eq!(keys_of(buf.iter_rev(r)), ["abcc=v", "abca=-", "abc=v", "ab=DEL"]);
        let r = (Bound::Excluded(b("ab")), Bound::Included(b("abcd")));
        assert_eq!(keys_of(buf.iter(r)), ["abc=v", "abca=-", "abcc=v", "abcd=v"]);
        assert_eq!(keys_of(buf.iter_rev(r)), ["abcd=v", "abcc=v", "abca=-", "abc=v"]);
        // Bounds that are not keys, past the ends, and empty or inverted.
        let r = (Bound::Included(b("abcb")), Bound::Included(b("abz")));
        assert_eq!(keys_of(buf.iter(r)), ["abcc=v", "abcd=v", "abd=v"]);
        assert_eq!(keys_of(buf.iter_rev(r)), ["abd=v", "abcd=v", "abcc=v"]);
        let r = (Bound::Excluded(b("zz")), Bound::Unbounded);
        assert!(keys_of(buf.iter(r)).is_empty());
        let r = (Bound::Unbounded, Bound::Excluded(b("")));
        assert!(keys_of(buf.iter_rev(r)).is_empty());
        let r = (Bound::Unbounded, Bound::Included(b("")));
        assert_eq!(keys_of(buf.iter_rev(r)), ["=v"]);
        for r in [
            (Bound::Included(b("b")), Bound::Excluded(b("a"))),
            (Bound::Included(b("b")), Bound::Excluded(b("b"))),
            (Bound::Excluded(b("b")), Bound::Included(b("b"))),
        ] {
            assert!(keys_of(buf.iter(r)).is_empty());
            assert!(keys_of(buf.iter_rev(r)).is_empty());
        }
    }
}

/// A transcript of nested stagings: the buffer after every step.
#[test]
fn nested_staging_transcript() {
    let mut buf = MemBuffer::new();
    let mut out = String::new();
    let mut step = |buf: &MemBuffer, what: &str| {
        let _ =
            writeln!(out, "{what:<34} {} dirty={} undo={}", dump(buf), buf.dirty(), buf.undo.len());
    };
    let s0 = buf.staging();
    buf.set(b"x", "x0").unwrap();
    buf.set(b"x", "x1").unwrap();
    step(&buf, "staging, set x=x0, set x=x1");
    buf.cleanup(s0).unwrap();
    step(&buf, "cleanup");
    buf.set(b"a", "a0").unwrap();
    step(&buf, "set a=a0");
    let s1 = buf.staging();
    step(&buf, "staging -> 1");
    buf.set(b"a", "a1").unwrap();
    step(&buf, "  set a=a1");
    buf.delete(b"b").unwrap();
    step(&buf, "  delete b");
    let s2 = buf.staging();
    step(&buf, "  staging -> 2");
    buf.set_with_flags(b"c", "c2", &[FlagsOp::SetPresumeKeyNotExists]).unwrap();
    step(&buf, "    set c=c2 presume-not-exist");
    buf.update_flags(b"d", &[FlagsOp::SetKeyLocked]).unwrap();
    step(&buf, "    lock d");
    buf.set(b"a", "a2").unwrap();
    step(&buf, "    set a=a2");
    buf.cleanup(s2).unwrap();
    step(&buf, "  cleanup 2");
    let s3 = buf.staging();
    step(&buf, "  staging -> 2'");
    buf.set(b"b", "b3").unwrap();
    step(&buf, "    set b=b3");
    buf.release(s3).unwrap();
    step(&buf, "  release 2'");
    buf.cleanup(s1).unwrap();
    step(&buf, "cleanup 1");
    let s4 = buf.staging();
    buf.set(b"e", "e4").unwrap();
    buf.release(s4).unwrap();
    step(&buf, "staging, set e=e4, release");
    insta::assert_snapshot!(out);
}

// ---- randomized comparison against a snapshot-based model ----

#[derive(Clone, Debug, PartialEq, Eq)]
enum MVal {
    Put(Vec<u8>),
    Del,
}

type MState = BTreeMap<Vec<u8>, (Option<MVal>, KeyFlags)>;

/// The model rolls back by restoring whole snapshots (an independent
/// formulation of the same rule): old value and statement-level flags,
/// current persistent flags.
fn model_rollback(cur: &MState, old: &MState) -> MState {
    let mut out = MState::new();
    for k in cur.keys().chain(old.keys()) {
        let (ov, of) = old.get(k).cloned().unwrap_or((None, KeyFlags::EMPTY));
        let cf = cur.get(k).map_or(KeyFlags::EMPTY, |e| e.1);
        let f = of.without(KeyFlags::PERSISTENT) | cf.persistent();
        if ov.is_some() || !f.is_empty() {
            out.insert(k.clone(), (ov, f));
        }
    }
    out
}

struct Level {
    handle: Option<StagingHandle>,
    at_open: MState,
    cps: Vec<(Checkpoint, MState)>,
}

const OPS: [FlagsOp; 8] = [
    FlagsOp::SetPresumeKeyNotExists,
    FlagsOp::SetKeyLocked,
    FlagsOp::DelKeyLocked,
    FlagsOp::SetNeedLocked,
    FlagsOp::SetKeyLockedValueExists,
    FlagsOp::SetNeedConstraintCheckInPrewrite,
    FlagsOp::SetAssertExist,
    FlagsOp::SetNewlyInserted,
];

fn rand_key(rng: &mut Rng) -> Vec<u8> {
    // Few short keys over a small alphabet: many overwrites, many keys that
    // are prefixes of others.
    let len = rng.gen_range(0, 4) as usize;
    (0..len).map(|_| b"abc"[rng.gen_range(0, 3) as usize]).collect()
}

fn rand_bound(rng: &mut Rng) -> Bound<Vec<u8>> {
    match rng.gen_range(0, 3) {
        0 => Bound::Unbounded,
        1 => Bound::Included(rand_key(rng)),
        _ => Bound::Excluded(rand_key(rng)),
    }
}

fn model_range(m: &MState, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> Vec<Vec<u8>> {
    let ok_lo = |k: &Vec<u8>| match lo {
        Bound::Unbounded => true,
        Bound::Included(l) => k >= l,
        Bound::Excluded(l) => k > l,
    };
    let ok_hi = |k: &Vec<u8>| match hi {
        Bound::Unbounded => true,
        Bound::Included(h) => k <= h,
        Bound::Excluded(h) => k < h,
    };
    m.keys().filter(|k| ok_lo(k) && ok_hi(k)).cloned().collect()
}

fn check(buf: &MemBuffer, m: &MState, rng: &mut Rng, ctx: &str) {
    let got: MState = buf
        .iter(..)
        .map(|(k, e)| {
            let v = e.value.map(|v| match v {
                BufferedValue::Put(v) => MVal::Put(v.to_vec()),
                BufferedValue::Delete => MVal::Del,
            });
            (k.to_vec(), (v, e.flags))
        })
        .collect();
    assert_eq!(&got, m, "{ctx}");
    assert_eq!(buf.len(), m.len(), "{ctx}");
    let size: usize = m
        .iter()
        .map(|(k, (v, _))| {
            k.len()
                + match v {
                    Some(MVal::Put(v)) => v.len(),
                    _ => 0,
                }
        })
        .sum();
    assert_eq!(buf.size(), size, "{ctx}");
    for _ in 0..3 {
        let k = rand_key(rng);
        assert_eq!(buf.get(&k).map(|e| e.flags), m.get(&k).map(|e| e.1), "{ctx} get {k:?}");
    }
    let (lo, hi) = (rand_bound(rng), rand_bound(rng));
    let r = (lo.as_ref().map(Vec::as_slice), hi.as_ref().map(Vec::as_slice));
    let want = model_range(m, &lo, &hi);
    let fwd: Vec<Vec<u8>> = buf.iter(r).map(|(k, _)| k.to_vec()).collect();
    assert_eq!(fwd, want, "{ctx} range {lo:?}..{hi:?}");
    let mut rev: Vec<Vec<u8>> = buf.iter_rev(r).map(|(k, _)| k.to_vec()).collect();
    rev.reverse();
    assert_eq!(rev, want, "{ctx} rev range {lo:?}..{hi:?}");
}

fn random_run(kind: IndexKind, seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    let mut buf = MemBuffer::with_index(kind);
    let mut m = MState::new();
    let mut levels = vec![Level { handle: None, at_open: MState::new(), cps: Vec::new() }];
    for step in 0..steps {
        let ctx = format!("{kind:?} seed {seed} step {step}");
        match rng.gen_range(0, 100) {
            0..=34 => {
                let k = rand_key(&mut rng);
                let v = vec![b'v'; rng.gen_range(1, 4) as usize];
                let op = OPS[rng.gen_range(0, OPS.len() as u64) as usize];
                let ops: &[FlagsOp] = if rng.gen_ratio(1, 3) { &[op] } else { &[] };
                buf.set_with_flags(&k, v.clone(), ops).unwrap();
                let e = m.entry(k).or_insert((None, KeyFlags::EMPTY));
                e.1 = FlagsOp::apply_all(
                    ops,
                    e.1.without(KeyFlags::NEED_CONSTRAINT_CHECK_IN_PREWRITE),
                );
                e.0 = Some(MVal::Put(v));
            }
            35..=49 => {
                let k = rand_key(&mut rng);
                buf.delete(&k).unwrap();
                let e = m.entry(k).or_insert((None, KeyFlags::EMPTY));
                e.1 = e.1.without(KeyFlags::NEED_CONSTRAINT_CHECK_IN_PREWRITE);
                e.0 = Some(MVal::Del);
            }
            50..=64 => {
                let k = rand_key(&mut rng);
                let op = OPS[rng.gen_range(0, OPS.len() as u64) as usize];
                buf.update_flags(&k, &[op]).unwrap();
                let old = m.get(&k).cloned().unwrap_or((None, KeyFlags::EMPTY));
                let f = op.apply(old.1);
                if old.0.is_some() || !f.is_empty() {
                    m.insert(k, (old.0, f));
                } else {
                    m.remove(&k);
                }
            }
            65..=74 if levels.len() < 5 => {
                let h = buf.staging();
                levels.push(Level { handle: Some(h), at_open: m.clone(), cps: Vec::new() });
            }
            75..=82 if levels.len() > 1 => {
                let l = levels.pop().unwrap();
                buf.release(l.handle.unwrap()).unwrap();
            }
            83..=90 if levels.len() > 1 => {
                let l = levels.pop().unwrap();
                buf.cleanup(l.handle.unwrap()).unwrap();
                m = model_rollback(&m, &l.at_open);
            }
            91..=95 => {
                let cp = buf.checkpoint();
                levels.last_mut().unwrap().cps.push((cp, m.clone()));
            }
            _ => {
                let top = levels.last_mut().unwrap();
                if !top.cps.is_empty() {
                    let i = rng.gen_range(0, top.cps.len() as u64) as usize;
                    top.cps.truncate(i + 1);
                    let (cp, old) = top.cps[i].clone();
                    buf.revert_to_checkpoint(cp).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    m = model_rollback(&m, &old);
                }
            }
        }
        check(&buf, &m, &mut rng, &ctx);
        // The undo log never holds two records of a key between two
        // boundaries (staging starts, live checkpoints).
        let mut cuts: Vec<usize> = buf.stages.iter().map(|s| s.start).collect();
        cuts.extend(levels.iter().flat_map(|l| l.cps.iter().map(|c| c.0.pos)));
        cuts.extend([0, buf.undo.len()]);
        cuts.sort_unstable();
        for w in cuts.windows(2) {
            let mut ids: Vec<u32> = buf.undo[w[0]..w[1]].iter().map(|u| u.id).collect();
            let n = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), n, "{ctx}: duplicate undo records in {w:?}");
        }
    }
}

#[test]
fn randomized_against_model() {
    for kind in KINDS {
        for seed in 0..40 {
            random_run(kind, seed, 400);
        }
    }
}

#[test]
fn randomized_index_agrees_on_many_keys() {
    // Larger, binary keys with long shared prefixes: exercises node splits,
    // prefix splits and full nodes of the ART against the BTreeMap.
    let mut rng = Rng::new(7);
    let mut art = MemBuffer::with_index(IndexKind::Art);
    let mut bt = MemBuffer::with_index(IndexKind::BTreeMap);
    let mut keys = Vec::new();
    for i in 0..5000u64 {
        let mut k = b"t\x80\x00\x00\x00\x00\x00\x00\x2a_r".to_vec();
        if i % 3 == 0 {
            // Past the 28 inline bytes of the key arena.
            k.extend_from_slice(&[0x07; 20]);
        }
        let len = rng.gen_range(0, 12) as usize;
        k.extend((0..len).map(|_| rng.gen_range(0, if i % 2 == 0 { 4 } else { 256 }) as u8));
        if rng.gen_ratio(1, 5) {
            art.delete(&k).unwrap();
            bt.delete(&k).unwrap();
        } else {
            art.set(&k, i.to_string()).unwrap();
            bt.set(&k, i.to_string()).unwrap();
        }
        keys.push(k);
    }
    let all = |b: &MemBuffer| -> Vec<(Vec<u8>, String)> {
        b.iter(..).map(|(k, e)| (k.to_vec(), val(&e))).collect()
    };
    assert_eq!(all(&art), all(&bt));
    assert_eq!((art.len(), art.size()), (bt.len(), bt.size()));
    for _ in 0..500 {
        let a = &keys[rng.gen_range(0, keys.len() as u64) as usize];
        let mut b2 = keys[rng.gen_range(0, keys.len() as u64) as usize].clone();
        if rng.gen_ratio(1, 2) {
            b2.truncate(rng.gen_range(0, b2.len() as u64 + 1) as usize);
        }
        let r = (Bound::Included(a.as_slice()), Bound::Excluded(b2.as_slice()));
        let f = |it: Iter<'_>| it.map(|(k, _)| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(f(art.iter(r)), f(bt.iter(r)));
        assert_eq!(f(art.iter_rev(r)), f(bt.iter_rev(r)));
        assert_eq!(art.get(a), bt.get(a));
    }
}

/// 24-byte key `i`, a record key's shape: a shared prefix, then the index.
fn record_key(i: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(b"t_membuffer_mem_");
    k[16..].copy_from_slice(&i.to_be_bytes());
    k
}

#[test]
fn mem_counts_the_content_without_spare_capacity() {
    // 65,537 entries of 24 + 64 bytes: one past a power of two, where every
    // vector has just doubled. client-go's memdb reports ~201 bytes per such
    // entry at 1M keys (`membuffer-mem`); the content itself is a 32-byte
    // key slot, a 40-byte entry, 64 value bytes and a share of index nodes.
    let mut buf = MemBuffer::new();
    let mut largest_step = 0;
    let mut before = buf.mem();
    for i in 0..65_537u64 {
        buf.set(&record_key(i), vec![7u8; 64]).unwrap();
        let now = buf.mem();
        largest_step = largest_step.max(now - before);
        before = now;
    }
    let per_key = buf.mem() / buf.len();
    assert!((136..=160).contains(&per_key), "{per_key} bytes per entry");
    // One insert adds its entry and at most a full 256-slot index node,
    // never a vector's doubling.
    assert!(largest_step < 2_048, "one insert grew mem() by {largest_step} bytes");
}

#[test]
fn mem_follows_values_through_overwrites_and_rollback() {
    let mut buf = MemBuffer::new();
    buf.set(b"k", vec![1u8; 1_000]).unwrap();
    let one = buf.mem();
    // An overwrite outside any staging replaces the value.
    buf.set(b"k", vec![2u8; 10]).unwrap();
    assert_eq!(buf.mem(), one - 990);
    // Inside a staging the old value is kept for rollback and counted.
    let h = buf.staging();
    buf.set(b"k", vec![3u8; 5_000]).unwrap();
    assert_eq!(buf.mem(), one - 1_000 + 10 + 5_000 + std::mem::size_of::<Undo>());
    buf.cleanup(h).unwrap();
    assert_eq!(buf.mem(), one - 990);
    assert_eq!(buf.get(b"k").unwrap().value_bytes(), Some(&[2u8; 10][..]));
    // Released, the undo record and its value are dropped.
    let h = buf.staging();
    buf.set(b"k", vec![4u8; 5_000]).unwrap();
    buf.release(h).unwrap();
    assert_eq!(buf.mem(), one - 1_000 + 5_000);
    // Nested stagings merge one old version per key into the parent.
    let outer = buf.staging();
    buf.set(b"k", vec![5u8; 100]).unwrap();
    let inner = buf.staging();
    buf.set(b"k", vec![6u8; 200]).unwrap();
    buf.release(inner).unwrap();
    buf.cleanup(outer).unwrap();
    assert_eq!(buf.mem(), one - 1_000 + 5_000);
}
