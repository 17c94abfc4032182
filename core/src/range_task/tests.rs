//! Scripted runs of the range-task runner over the fake cluster: tasks of
//! N regions, bounded concurrency, the first error ending the run, region
//! errors re-located inside a task, progress, an old PD.

use std::sync::Mutex;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use super::*;
use crate::rng::Rng;
use crate::route::walk::{RangePlan, RangeWalk};
use crate::rpc::{KvRequest, KvResponse};
use crate::testing::{FakeCluster, Fault, drive, view};
use crate::time::Duration;

/// What the handler saw: task starts and ends, in order.
#[derive(Debug, Default)]
struct Log {
    events: Vec<String>,
    running: usize,
    max_running: usize,
}

/// Deletes its task's range region by region (`RawDeleteRange`), counting
/// the regions; a key error in a response fails the task.
struct DeletePlan {
    log: Arc<Mutex<Log>>,
    range: KeyRange,
    regions: u64,
}

impl RangePlan for DeletePlan {
    type Output = RangeTaskStat;
    fn build(&mut self, part: &KeyRange) -> KvRequest {
        KvRequest::RawDeleteRange(Box::new(kvrpcpb::RawDeleteRangeRequest {
            start_key: part.start.to_bytes(),
            end_key: part.end.to_bytes(),
            ..Default::default()
        }))
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn merge(&mut self, _part: &KeyRange, response: KvResponse) -> Result<bool, Error> {
        let KvResponse::RawDeleteRange(r) = response else {
            return Err(Error::malformed("unexpected response"));
        };
        if !r.error.is_empty() {
            return Err(Error::Server(r.error));
        }
        self.regions += 1;
        Ok(true)
    }
    fn finish(self) -> RangeTaskStat {
        let mut log = self.log.lock().unwrap();
        log.running -= 1;
        log.events.push(format!("end {:?}..{:?}", self.range.start, self.range.end));
        RangeTaskStat { completed_regions: self.regions, failed_regions: 0 }
    }
}

struct DeleteHandler {
    view: Arc<ClusterView>,
    log: Arc<Mutex<Log>>,
}

impl RangeTaskHandler for DeleteHandler {
    type Task = RangeWalk<DeletePlan>;
    fn task(&mut self, range: KeyRange) -> RangeWalk<DeletePlan> {
        {
            let mut log = self.log.lock().unwrap();
            log.running += 1;
            log.max_running = log.max_running.max(log.running);
            log.events.push(format!("start {:?}..{:?}", range.start, range.end));
        }
        let plan = DeletePlan { log: self.log.clone(), range: range.clone(), regions: 0 };
        RangeWalk::new(self.view.clone(), plan, range, false, budget())
    }
}

fn budget() -> Backoffer {
    Backoffer::new(Duration::from_secs(20), Rng::new(7))
}

fn seeded(splits: &[&str], keys: &[&str]) -> FakeCluster {
    let mut c = FakeCluster::new(splits);
    for k in keys {
        c.data.insert(k.as_bytes().to_vec(), Bytes::from_static(b"v"));
    }
    c
}

fn runner(
    range: KeyRange,
    per_task: usize,
    concurrency: usize,
) -> (RangeTaskRunner<DeleteHandler>, Arc<Mutex<Log>>) {
    let v = view();
    let log = Arc::new(Mutex::new(Log::default()));
    let handler = DeleteHandler { view: v.clone(), log: log.clone() };
    (RangeTaskRunner::new(v, handler, range, per_task, concurrency, budget()), log)
}

/// Six regions, tasks of two, two at a time: three tasks cut at every
/// second region boundary, never more than two running, every region
/// counted once, and the progress adds up.
#[test]
fn tasks_of_n_regions_run_at_most_concurrency_at_once() {
    let mut c = seeded(&["b", "d", "f", "h", "j"], &["a", "c", "e", "g", "i", "k"]);
    let (op, log) = runner(KeyRange::all(), 2, 2);
    let progress = op.progress();
    let (transcript, result) = drive(op, &mut c);
    assert_eq!(result.unwrap(), RangeTaskStat { completed_regions: 6, failed_regions: 0 });
    assert!(c.data.is_empty(), "every key deleted:\n{transcript}");
    let log = log.lock().unwrap();
    let starts: Vec<&String> = log.events.iter().filter(|e| e.starts_with("start")).collect();
    assert_eq!(
        starts,
        [r#"start "".."d""#, r#"start "d".."h""#, r##"start "h".."""##].iter().collect::<Vec<_>>()
    );
    assert_eq!(log.max_running, 2, "{:?}", log.events);
    // The split loaded every region in one PD round.
    let loads =
        transcript.lines().filter(|l| l.contains("send #") && l.contains(" batch_scan_regions "));
    assert_eq!(loads.count(), 1, "{transcript}");
    assert_eq!(
        progress.snapshot(),
        RangeTaskProgressSnapshot {
            regions_found: 6,
            regions_total: Some(6),
            regions_done: 6,
            regions_failed: 0,
            tasks_done: 3,
        }
    );
}

/// A bounded range: the first task starts at the range's start, the last
/// ends at its end, and keys outside stay.
#[test]
fn a_bounded_range_is_cut_at_its_own_ends() {
    let mut c = seeded(&["b", "d", "f"], &["a", "bb", "c", "dd", "e", "g"]);
    let (op, log) = runner(KeyRange::new("bb", "e"), 1, 1);
    let (_, result) = drive(op, &mut c);
    // [bb, e) meets the regions [b, d) and [d, f).
    assert_eq!(result.unwrap().completed_regions, 2);
    let keys: Vec<&[u8]> = c.data.keys().map(Vec::as_slice).collect();
    assert_eq!(keys, [&b"a"[..], b"e", b"g"]);
    let log = log.lock().unwrap();
    assert_eq!(log.events.first().map(String::as_str), Some(r#"start "bb".."d""#));
    assert!(log.events.contains(&r#"start "d".."e""#.to_owned()), "{:?}", log.events);
    assert_eq!(log.max_running, 1);
}

/// The first failing task ends the run with its error; the task running
/// beside it is dropped and no further task starts.
#[test]
fn the_first_error_cancels_the_run() {
    let mut c = seeded(&["b", "d", "f", "h"], &[]);
    let failed =
        kvrpcpb::RawDeleteRangeResponse { error: "disk on fire".into(), ..Default::default() };
    c.fault(
        "raw_delete_range",
        Fault::Respond(Box::new(KvResponse::RawDeleteRange(Box::new(failed)))),
    );
    let (op, log) = runner(KeyRange::all(), 1, 2);
    let progress = op.progress();
    let (_, result) = drive(op, &mut c);
    assert!(matches!(result, Err(Error::Server(ref m)) if m == "disk on fire"), "{result:?}");
    let log = log.lock().unwrap();
    let starts = log.events.iter().filter(|e| e.starts_with("start")).count();
    assert_eq!(starts, 2, "only the first two tasks ever started: {:?}", log.events);
    assert_eq!(progress.snapshot().tasks_done, 0);
    assert!(c.received.len() <= 2, "nothing sent after the failure: {:?}", c.received.len());
}

/// A region that splits under a running task answers EpochNotMatch: the
/// task re-locates the rest of its range along the new regions and
/// finishes; the run succeeds with the extra region counted.
#[test]
fn a_region_error_inside_a_task_re_splits_the_rest_of_its_range() {
    let mut c = seeded(&["m"], &["a", "c", "p", "x"]);
    c.fault("raw_delete_range", Fault::SplitAt(b"c".to_vec()));
    let (op, _) = runner(KeyRange::all(), 2, 1);
    let (transcript, result) = drive(op, &mut c);
    assert!(transcript.contains("epoch not match"), "{transcript}");
    assert_eq!(result.unwrap().completed_regions, 3);
    assert!(c.data.is_empty(), "{transcript}");
}

/// An old PD without `BatchScanRegions`: the split locates one region at a
/// time with `GetRegion`.
#[test]
fn an_old_pd_is_asked_region_by_region() {
    let mut c = seeded(&["d", "h"], &["a", "e", "i"]);
    c.no_batch_scan = true;
    let (op, _) = runner(KeyRange::all(), 1, 3);
    let (transcript, result) = drive(op, &mut c);
    assert_eq!(result.unwrap().completed_regions, 3);
    assert!(c.data.is_empty());
    let sent = |what: &str| {
        transcript.lines().filter(|l| l.contains("send #") && l.contains(what)).count()
    };
    assert_eq!(sent(" batch_scan_regions "), 1, "asked once, refused: {transcript}");
    assert_eq!(sent(" get_region "), 3, "then one region at a time: {transcript}");
}

/// An empty range finishes at once with nothing done.
#[test]
fn an_empty_range_is_done_at_once() {
    let mut c = seeded(&[], &["a"]);
    let (op, log) = runner(KeyRange::new("c", "c"), 1, 1);
    let progress = op.progress();
    let (transcript, result) = drive(op, &mut c);
    assert_eq!(result.unwrap(), RangeTaskStat::default());
    assert!(!transcript.contains("send"), "{transcript}");
    assert!(log.lock().unwrap().events.is_empty());
    assert_eq!(progress.snapshot().regions_total, Some(0));
}
