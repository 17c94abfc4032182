//! Scripted runs of splitting and scattering over the fake cluster (its
//! `SplitRegion` answers are scripted; its PD records scatters and reports
//! operators).

use tikv_proto::metapb;

use super::*;
use crate::testing::{FakeCluster, Fault, drive, view};

fn split_answer(c: &mut FakeCluster, ids: &[u64]) {
    let regions = ids.iter().map(|id| metapb::Region { id: *id, ..Default::default() }).collect();
    let resp = kvrpcpb::SplitRegionResponse { regions, ..Default::default() };
    c.fault("split_region", Fault::Respond(Box::new(KvResponse::SplitRegion(Box::new(resp)))));
}

/// Keys in two regions make two `SplitRegion` requests with their own
/// keys; the new regions are all but the last of each answer, and each is
/// scattered once.
#[test]
fn split_keys_go_to_their_regions_and_new_regions_are_scattered() {
    let mut c = FakeCluster::new(&["m"]);
    split_answer(&mut c, &[201, 202, 1]);
    split_answer(&mut c, &[203, 2]);
    let keys = ["c", "f", "x"].map(Key::from).to_vec();
    let (log, result) = drive(SplitRegions::new(&view(), keys, true), &mut c);
    let outcome = result.unwrap();
    assert_eq!(outcome.region_ids, [201, 202, 203], "{log}");
    assert!(outcome.scatter_error.is_none());
    assert_eq!(c.scattered, [201, 202, 203]);
    let sent: Vec<Vec<Vec<u8>>> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::SplitRegion(s) => Some(s.split_keys.iter().map(|k| k.to_vec()).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [vec![b"c".to_vec(), b"f".to_vec()], vec![b"x".to_vec()]]);

    // Without scatter, PD hears nothing.
    let mut c = FakeCluster::new(&[]);
    split_answer(&mut c, &[301, 1]);
    let (_, result) = drive(SplitRegions::new(&view(), vec![Key::from("k")], false), &mut c);
    assert_eq!(result.unwrap().region_ids, [301]);
    assert!(c.scattered.is_empty());
}

/// The wait polls while the operator runs, backing off between polls; a
/// region without an operator (PD's "Not Found") is done at once.
#[test]
fn waiting_for_a_scatter_polls_until_the_operator_is_done() {
    let mut c = FakeCluster::new(&[]);
    c.scattered = vec![5];
    c.operator_running_polls = 2;
    let (log, result) = drive(WaitScatterFinish::new(&view(), 5, WAIT_SCATTER_BUDGET), &mut c);
    assert!(result.is_ok(), "{result:?}");
    let polls = log.lines().filter(|l| l.contains(" send ") && l.contains("get_operator")).count();
    assert_eq!(polls, 3, "{log}");
    assert_eq!(log.matches("timer").count(), 2, "a sleep between polls: {log}");

    let (log, result) = drive(WaitScatterFinish::new(&view(), 9, WAIT_SCATTER_BUDGET), &mut c);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(log.matches("get_operator").count(), 2, "one request, one answer: {log}");

    // An operator that never finishes exhausts the budget.
    c.operator_running_polls = u32::MAX;
    let budget = Duration::from_secs(2);
    let (_, result) = drive(WaitScatterFinish::new(&view(), 5, budget), &mut c);
    assert!(matches!(result, Err(Error::BackoffExhausted { .. })), "{result:?}");
}

/// A key that already starts a cached region is not sent.
#[test]
fn a_key_at_a_region_start_is_not_split_again() {
    let mut c = FakeCluster::new(&["m"]);
    let v = view();
    // The first call caches both regions.
    split_answer(&mut c, &[201, 1]);
    split_answer(&mut c, &[202, 2]);
    let keys = vec![Key::from("c"), Key::from("x")];
    let (_, result) = drive(SplitRegions::new(&v, keys, false), &mut c);
    assert_eq!(result.unwrap().region_ids, [201, 202]);
    let before = c.received.len();
    let (_, result) = drive(SplitRegions::new(&v, vec![Key::from("m")], false), &mut c);
    assert!(result.unwrap().region_ids.is_empty());
    assert_eq!(c.received.len(), before, "nothing sent for a key that starts a region");
}

/// PD's batch scatter.
#[test]
fn scatter_regions_asks_pd_once_for_all() {
    let mut c = FakeCluster::new(&[]);
    let (_, result) = drive(scatter_regions(&view(), vec![4, 5]), &mut c);
    assert!(matches!(result, Ok(PdResponse::ScatterRegion(r)) if r.finished_percentage == 100));
    assert_eq!(c.scattered, [4, 5]);
}

fn sized(keys: &[&str], size: usize) -> Vec<(Key, usize)> {
    keys.iter().map(|k| (Key::from(*k), size)).collect()
}

/// client-go's pre-split: only the region with at least the detect
/// threshold of mutations is cut, every `split_size` bytes; the cuts are
/// split with scatter, each new region's scatter is waited for, and the
/// split region leaves the cache.
#[test]
fn pre_split_cuts_only_crowded_regions_every_split_size_bytes() {
    let mut c = FakeCluster::new(&["m"]);
    let v = view();
    split_answer(&mut c, &[201, 202, 1]);
    c.operator_running_polls = 1;
    // Region [, m) gets 5 keys of 10 bytes, region [m, ) gets 2.
    let mut keys = sized(&["a", "b", "c", "d", "e"], 10);
    keys.extend(sized(&["n", "o"], 10));
    let thresholds = PreSplitThresholds::new(3, 20);
    let (log, result) = drive(PreSplit::new(&v, keys, thresholds), &mut c);
    let outcome = result.unwrap();
    assert_eq!(outcome.regions_split, 1, "{log}");
    assert_eq!(outcome.new_regions, [201, 202]);
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let sent: Vec<Vec<Vec<u8>>> = c
        .received
        .iter()
        .filter_map(|r| match r {
            KvRequest::SplitRegion(s) => Some(s.split_keys.iter().map(|k| k.to_vec()).collect()),
            _ => None,
        })
        .collect();
    // Cut after every 20 bytes: at b and d.
    assert_eq!(sent, [vec![b"b".to_vec(), b"d".to_vec()]], "{log}");
    assert_eq!(c.scattered, [201, 202]);
    assert!(log.matches("get_operator").count() >= 4, "each scatter waited for: {log}");
    let now = crate::time::Instant::from_millis(1_000);
    assert!(v.regions.locate_key(b"a", now).is_none(), "the split region left the cache");
}

/// A transaction below the detect threshold sends nothing; a failed split
/// is reported in the outcome, not raised (the commit goes on).
#[test]
fn pre_split_is_silent_for_small_transactions_and_reports_failures() {
    let mut c = FakeCluster::new(&[]);
    let (log, result) =
        drive(PreSplit::new(&view(), sized(&["a", "b"], 1), PreSplitThresholds::default()), &mut c);
    assert_eq!(result.unwrap(), PreSplitOutcome::default());
    assert!(!log.contains("send"), "{log}");

    let mut c = FakeCluster::new(&[]);
    for _ in 0..200 {
        c.fault("split_region", Fault::Rpc(crate::rpc::RpcError::Rejected("no".into())));
    }
    let (log, result) = drive(
        PreSplit::new(&view(), sized(&["a", "b"], 10), PreSplitThresholds::new(2, 10)),
        &mut c,
    );
    let outcome = result.unwrap();
    assert!(outcome.error.is_some(), "{log}");
    assert_eq!(outcome.regions_split, 1);
    assert!(outcome.new_regions.is_empty());
}
