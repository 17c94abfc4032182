//! Scripted rounds of the safe-ts updater.

use super::*;
use crate::testing::{labelled_store as store, view};

/// A view knowing stores 1 and 2 in zone z1, 3 in z2, and TiFlash store 4.
fn four_stores() -> Arc<ClusterView> {
    let v = view();
    for s in [
        store(1, &[("zone", "z1")]),
        store(2, &[("zone", "z1")]),
        store(3, &[("zone", "z2")]),
        store(4, &[("engine", "tiflash"), ("zone", "z2")]),
    ] {
        v.stores.insert(s).expect("valid store");
    }
    v
}

/// Runs one round, answering each store from `answer` (`None`: the send
/// fails). Returns the stores asked, in order, and the round's outcome.
fn run(
    v: &ClusterView,
    table: &Arc<SafeTsTable>,
    answer: impl Fn(u64) -> Option<u64>,
) -> (Vec<u64>, SafeTsRound) {
    let mut op = UpdateSafeTs::new(v, table.clone());
    op.start(Instant::ZERO);
    let mut asked = Vec::new();
    let mut rpcs = Vec::new();
    while let Some(rpc) = op.poll_rpc() {
        let Target::Store { store_id, .. } = rpc.target else { panic!("{rpc:?}") };
        assert!(matches!(rpc.request, Request::StoreSafeTs(_)), "{rpc:?}");
        asked.push(store_id);
        rpcs.push((rpc.id, store_id));
    }
    for (id, store_id) in rpcs {
        assert!(op.poll_result().is_none(), "done before every store answered");
        let response = match answer(store_id) {
            Some(safe_ts) => {
                Ok(Response::StoreSafeTs(Box::new(kvrpcpb::StoreSafeTsResponse { safe_ts })))
            }
            None => Err(RpcError::Unavailable("down".into())),
        };
        op.on_response(id, response, Instant::ZERO);
    }
    let round = op.poll_result().expect("done").expect("a round never fails");
    (asked, round)
}

#[test]
fn a_round_asks_every_tikv_store_and_takes_the_min_per_scope() {
    let v = four_stores();
    let table = Arc::new(SafeTsTable::new());
    assert_eq!(table.min_safe_ts(GLOBAL_TXN_SCOPE), Timestamp::ZERO, "nothing known yet");
    let (mut asked, round) = run(&v, &table, |s| Some(100 + s));
    asked.sort();
    assert_eq!(asked, vec![1, 2, 3], "TiFlash store 4 is not asked");
    assert_eq!(round.recorded.len(), 3);
    assert_eq!(table.store_safe_ts(2), Some(Timestamp::from_version(102)));
    assert_eq!(table.min_safe_ts(GLOBAL_TXN_SCOPE), Timestamp::from_version(101));
    assert_eq!(table.min_safe_ts("z1"), Timestamp::from_version(101));
    assert_eq!(table.min_safe_ts("z2"), Timestamp::from_version(103));
    assert_eq!(table.min_safe_ts("z9"), Timestamp::ZERO, "an unknown scope");

    // The next round: store 1 advanced, store 2 answers less than before
    // (skipped), store 3 is down (keeps its value).
    let (_, round) = run(&v, &table, |s| match s {
        1 => Some(150),
        2 => Some(90),
        _ => None,
    });
    assert_eq!(round.recorded, vec![1]);
    assert_eq!(round.skipped, vec![2]);
    assert_eq!(round.failed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3]);
    assert_eq!(table.store_safe_ts(2), Some(Timestamp::from_version(102)));
    assert_eq!(table.min_safe_ts(GLOBAL_TXN_SCOPE), Timestamp::from_version(102));
    assert_eq!(table.min_safe_ts("z2"), Timestamp::from_version(103));
}

#[test]
fn a_store_that_never_answered_holds_its_scopes_at_zero() {
    let v = four_stores();
    let table = Arc::new(SafeTsTable::new());
    let _ = run(&v, &table, |s| (s != 3).then_some(200));
    assert_eq!(table.min_safe_ts(GLOBAL_TXN_SCOPE), Timestamp::ZERO);
    assert_eq!(table.min_safe_ts("z2"), Timestamp::ZERO);
    assert_eq!(table.min_safe_ts("z1"), Timestamp::from_version(200));
    // A zero safe ts (a store without regions) is left out of the min;
    // the maximum is never recorded.
    let _ = run(&v, &table, |s| Some(if s == 3 { 0 } else { 300 }));
    assert_eq!(table.min_safe_ts(GLOBAL_TXN_SCOPE), Timestamp::from_version(300));
    assert!(!table.record_store(1, Timestamp::MAX));
}

#[test]
fn a_round_without_stores_finishes_at_once() {
    let table = Arc::new(SafeTsTable::new());
    let mut op = UpdateSafeTs::new(&view(), table.clone());
    op.start(Instant::ZERO);
    assert!(op.poll_rpc().is_none());
    assert_eq!(op.poll_result().expect("done").expect("ok"), SafeTsRound::default());
    assert_eq!(table.min_safe_ts(GLOBAL_TXN_SCOPE), Timestamp::ZERO);
}

#[test]
fn stale_timestamps_reach_back_from_a_fresh_one() {
    let fresh = Timestamp::compose(1_700_000_000_000, 42);
    let ts = stale_timestamp(fresh, Duration::from_secs(5)).expect("valid");
    assert_eq!(ts, Timestamp::compose(1_699_999_995_000, 0));
    assert_eq!(
        stale_timestamp(fresh, Duration::ZERO).unwrap(),
        Timestamp::compose(1_700_000_000_000, 0)
    );
    assert!(stale_timestamp(Timestamp::compose(1_000, 0), Duration::from_secs(1)).is_err());
}
