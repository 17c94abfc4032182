//! Scripted tests of the read-your-writes merge: each scan runs against a
//! snapshot modelled by a sorted map, and the transcript shows every batch
//! the merge asked for and every pair it yielded.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::*;
use crate::rng::Rng;
use crate::txn::membuffer::FlagsOp;

/// One write of a scripted buffer.
enum W {
    Put(&'static str, &'static str),
    Del(&'static str),
    Lock(&'static str),
}

fn buffer(writes: &[W]) -> MemBuffer {
    let mut buf = MemBuffer::new();
    for w in writes {
        match *w {
            W::Put(k, v) => buf.set(k.as_bytes(), Value::from(v)).unwrap(),
            W::Del(k) => buf.delete(k.as_bytes()).unwrap(),
            W::Lock(k) => buf.update_flags(k.as_bytes(), &[FlagsOp::SetKeyLocked]).unwrap(),
        }
    }
    buf
}

type Snapshot = BTreeMap<Vec<u8>, Vec<u8>>;

fn snapshot(pairs: &[(&str, &str)]) -> Snapshot {
    pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

/// What a snapshot scan of `batch` returns from `data`, in scan order.
fn scan_snapshot(data: &Snapshot, batch: &SnapshotBatch, reverse: bool) -> Vec<KvPair> {
    let in_range = data.iter().filter(|(k, _)| batch.range.contains(k));
    let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| KvPair {
        key: Key::from(k.clone()),
        value: Value::from(v.clone()),
    };
    let limit = batch.limit as usize;
    if reverse {
        in_range.rev().take(limit).map(pair).collect()
    } else {
        in_range.take(limit).map(pair).collect()
    }
}

fn show_key(k: &[u8]) -> String {
    if k.is_empty() { "-".into() } else { k.escape_ascii().to_string() }
}

/// Runs `scan` to its end over `buf` and `data`, returning the transcript
/// and the pairs.
fn run(mut scan: UnionScan, buf: &MemBuffer, data: &Snapshot) -> (String, Vec<(String, String)>) {
    let mut log = String::new();
    let mut pairs = Vec::new();
    for _ in 0..1000 {
        match scan.poll(buf) {
            UnionStep::Pair(p) => {
                let (k, v) = (show_key(p.key.as_bytes()), String::from_utf8_lossy(&p.value).into());
                let _ = writeln!(log, "pair {k}={v}");
                pairs.push((k, v));
            }
            UnionStep::Fetch(batch) => {
                let got = scan_snapshot(data, &batch, scan.is_reverse());
                let keys: Vec<String> = got.iter().map(|p| show_key(p.key.as_bytes())).collect();
                let _ = writeln!(
                    log,
                    "fetch [{}, {}) limit {} -> [{}]",
                    show_key(batch.range.start.as_bytes()),
                    show_key(batch.range.end.as_bytes()),
                    batch.limit,
                    keys.join(" ")
                );
                scan.on_snapshot_batch(got);
            }
            UnionStep::End => {
                log.push_str("end\n");
                return (log, pairs);
            }
        }
    }
    panic!("the merge did not end:\n{log}");
}

fn range(start: &str, end: &str) -> KeyRange {
    KeyRange::new(Key::from(start.to_string()), Key::from(end.to_string()))
}

#[test]
fn point_reads_ask_the_snapshot_only_without_a_buffered_write() {
    let buf = buffer(&[W::Put("a", "1"), W::Del("b"), W::Lock("c")]);
    assert_eq!(read_point(&buf, b"a"), PointRead::Put(Value::from("1")));
    assert_eq!(read_point(&buf, b"b"), PointRead::Deleted);
    // Locked but not written: not a write, the snapshot answers.
    assert_eq!(read_point(&buf, b"c"), PointRead::Snapshot);
    assert_eq!(read_point(&buf, b"d"), PointRead::Snapshot);
}

#[test]
fn batch_get_splits_and_merges_sorted_with_the_buffer_winning() {
    let buf = buffer(&[W::Put("a", "1"), W::Del("b"), W::Lock("c")]);
    let keys = ["d", "c", "b", "a", "e", "a"].map(|k| Key::from(k.to_string()));
    let mut get = UnionBatchGet::new(&buf, keys);
    let asked: Vec<&[u8]> = get.snapshot_keys().iter().map(Key::as_bytes).collect();
    assert_eq!(asked, [&b"d"[..], b"c", b"e"], "puts and deletes are not asked for");
    assert_eq!(get.take_snapshot_keys().len(), 3);
    assert!(get.snapshot_keys().is_empty());
    // The snapshot has c and d (e is absent).
    let from_snapshot = vec![
        KvPair { key: Key::from("d".to_string()), value: Value::from("sd") },
        KvPair { key: Key::from("c".to_string()), value: Value::from("sc") },
    ];
    let merged: Vec<(String, Value)> = get
        .merge(from_snapshot)
        .into_iter()
        .map(|p| (show_key(p.key.as_bytes()), p.value))
        .collect();
    assert_eq!(
        merged,
        [
            ("a".to_string(), Value::from("1")),
            ("c".to_string(), Value::from("sc")),
            ("d".to_string(), Value::from("sd")),
        ]
    );
    // Nothing for the snapshot: the buffer answers alone.
    let get = UnionBatchGet::new(&buf, [Key::from("a".to_string())]);
    assert!(get.snapshot_keys().is_empty());
    assert_eq!(get.merge(Vec::new()).len(), 1);
}

/// Puts override and add, deletes hide, flag-only entries defer to the
/// snapshot; buffer-only keys at both ends of the range; batches of 2 page
/// through the snapshot.
#[test]
fn forward_and_reverse_merges_page_through_the_snapshot() {
    let buf = buffer(&[
        W::Put("a", "buf-a"), // buffer only, before every snapshot key
        W::Put("c", "buf-c"), // overrides the snapshot
        W::Del("d"),          // hides the snapshot's d
        W::Lock("e"),         // flags only: the snapshot's e shows
        W::Del("f"),          // deletes a key the snapshot lacks
        W::Put("h", "buf-h"), // buffer only, between snapshot keys
        W::Put("z", "buf-z"), // buffer only, after every snapshot key
        W::Put("zz", "out"),  // past the range end
    ]);
    let data = snapshot(&[("b", "sb"), ("c", "sc"), ("d", "sd"), ("e", "se"), ("g", "sg")]);
    let mut out = String::new();
    for reverse in [false, true] {
        let (log, _) = run(UnionScan::new(range("a", "zz"), reverse, 2), &buf, &data);
        let _ = writeln!(out, "# {}\n{log}", if reverse { "reverse" } else { "forward" });
    }
    insta::assert_snapshot!(out);
}

#[test]
fn empty_snapshot_yields_the_buffers_puts() {
    let buf = buffer(&[W::Put("a", "1"), W::Del("b"), W::Lock("c"), W::Put("d", "4")]);
    let (log, _) = run(UnionScan::new(range("a", ""), false, 10), &buf, &Snapshot::new());
    assert_eq!(log, "fetch [a, -) limit 10 -> []\npair a=1\npair d=4\nend\n");
    let (log, _) = run(UnionScan::new(range("a", "e"), true, 10), &buf, &Snapshot::new());
    assert_eq!(log, "fetch [a, e) limit 10 -> []\npair d=4\npair a=1\nend\n");
}

#[test]
fn empty_buffer_passes_the_snapshot_through() {
    let data = snapshot(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let (log, _) = run(UnionScan::new(range("", ""), false, 3), &MemBuffer::new(), &data);
    // A full batch cannot tell whether more follows: one more batch says.
    assert_eq!(
        log,
        "fetch [-, -) limit 3 -> [a b c]\npair a=1\npair b=2\npair c=3\n\
         fetch [c\\x00, -) limit 3 -> []\nend\n"
    );
}

#[test]
fn range_bounds_hold_in_both_directions() {
    let buf = buffer(&[W::Put("a", "ba"), W::Put("b", "bb"), W::Put("d", "bd"), W::Put("e", "be")]);
    let data = snapshot(&[("a", "sa"), ("c", "sc"), ("e", "se")]);
    // [b, e): a and e are outside.
    let (_, pairs) = run(UnionScan::new(range("b", "e"), false, 1), &buf, &data);
    assert_eq!(
        pairs,
        [("b".into(), "bb".into()), ("c".into(), "sc".into()), ("d".into(), "bd".into())]
    );
    let (_, pairs) = run(UnionScan::new(range("b", "e"), true, 1), &buf, &data);
    assert_eq!(
        pairs,
        [("d".into(), "bd".into()), ("c".into(), "sc".into()), ("b".into(), "bb".into())]
    );
    // An unbounded end reaches the last buffered key.
    let (_, pairs) = run(UnionScan::new(range("d", ""), true, 1), &buf, &data);
    assert_eq!(pairs, [("e".into(), "be".into()), ("d".into(), "bd".into())]);
    // An empty range asks for nothing.
    let (log, _) = run(UnionScan::new(range("d", "b"), false, 1), &buf, &data);
    assert_eq!(log, "end\n");
    let (log, _) = run(UnionScan::new(range("b", "b"), true, 1), &buf, &data);
    assert_eq!(log, "end\n");
}

/// The limit stops the merge; the batch asks for the limit plus the
/// buffered deletes in range, so one batch suffices even when every delete
/// hides a snapshot pair.
#[test]
fn limits_size_the_batch_by_the_buffered_deletes() {
    let buf = buffer(&[W::Del("a"), W::Del("b"), W::Put("c", "bc"), W::Del("z")]);
    let data = snapshot(&[("a", "sa"), ("b", "sb"), ("d", "sd"), ("e", "se"), ("f", "sf")]);
    let mut out = String::new();
    for (reverse, r) in [(false, range("a", "")), (true, range("a", "y"))] {
        let (log, _) = run(UnionScan::with_limit(&buf, r, reverse, 2), &buf, &data);
        let _ = writeln!(out, "# limit 2, {}\n{log}", if reverse { "reverse" } else { "forward" });
    }
    let (log, _) = run(UnionScan::with_limit(&buf, range("a", ""), false, 0), &buf, &data);
    let _ = writeln!(out, "# limit 0\n{log}");
    insta::assert_snapshot!(out);
}

/// A failed fetch is not fed back: polling again asks for the same batch.
#[test]
fn a_fetch_is_asked_again_until_answered() {
    let buf = buffer(&[W::Put("b", "bb")]);
    let mut scan = UnionScan::new(range("a", "c"), false, 5);
    let first = scan.poll(&buf);
    assert!(matches!(first, UnionStep::Fetch(_)));
    assert_eq!(scan.poll(&buf), first);
    scan.set_batch_size(1);
    scan.on_snapshot_batch(vec![KvPair {
        key: Key::from("a".to_string()),
        value: Value::from("sa"),
    }]);
    // The batch asked for 5 and got 1: the snapshot is exhausted.
    assert!(matches!(scan.poll(&buf), UnionStep::Pair(p) if p.key.as_bytes() == b"a"));
    assert!(matches!(scan.poll(&buf), UnionStep::Pair(p) if p.key.as_bytes() == b"b"));
    assert_eq!(scan.poll(&buf), UnionStep::End);
    assert_eq!(scan.poll(&buf), UnionStep::End, "the end is sticky");
}

/// Random buffers and snapshots against the obvious model: the snapshot
/// overlaid with the buffer's writes, in order, cut at the limit.
#[test]
fn random_merges_match_the_overlay_model() {
    let mut rng = Rng::new(7);
    let key = |i: u64| format!("k{i:02}");
    for _ in 0..500 {
        let mut data = Snapshot::new();
        let mut buf = MemBuffer::new();
        for i in 0..20 {
            if rng.gen_ratio(1, 2) {
                data.insert(key(i).into_bytes(), format!("s{i}").into_bytes());
            }
            match rng.gen_range(0, 5) {
                0 => buf.set(key(i).as_bytes(), Value::from(format!("b{i}"))).unwrap(),
                1 => buf.delete(key(i).as_bytes()).unwrap(),
                2 => buf.update_flags(key(i).as_bytes(), &[FlagsOp::SetKeyLocked]).unwrap(),
                _ => {}
            }
        }
        let lo = rng.gen_range(0, 21);
        let hi = rng.gen_range(lo, 22);
        let r = KeyRange::new(
            Key::from(key(lo)),
            if hi == 21 { Key::EMPTY } else { Key::from(key(hi)) },
        );
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = data
            .iter()
            .filter(|(k, _)| r.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, e) in buf.iter(..) {
            if !r.contains(k) {
                continue;
            }
            match e.value {
                Some(BufferedValue::Put(v)) => {
                    model.insert(k.to_vec(), v.to_vec());
                }
                Some(BufferedValue::Delete) => {
                    model.remove(k);
                }
                None => {}
            }
        }
        let reverse = rng.gen_ratio(1, 2);
        let mut want: Vec<(String, String)> = model
            .into_iter()
            .map(|(k, v)| (show_key(&k), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        if reverse {
            want.reverse();
        }
        let scan = if rng.gen_ratio(1, 2) {
            UnionScan::new(r.clone(), reverse, rng.gen_range(1, 6) as u32)
        } else {
            let limit = rng.gen_range(0, 25) as u32;
            want.truncate(limit as usize);
            UnionScan::with_limit(&buf, r.clone(), reverse, limit)
        };
        let (log, got) = run(scan, &buf, &data);
        assert_eq!(got, want, "range {r:?} reverse {reverse}:\n{log}");
    }
}
