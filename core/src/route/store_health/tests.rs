//! Scripted rounds of the store health probes.

use tikv_proto::health::HealthCheckResponse;
use tikv_proto::metapb;

use super::*;
use crate::testing::{labelled_store as store, view};

/// A view knowing TiKV stores 1 to 3 and TiFlash store 4.
fn four_stores() -> Arc<ClusterView> {
    let v = view();
    for s in [store(1, &[]), store(2, &[]), store(3, &[]), store(4, &[("engine", "tiflash")])] {
        v.stores.insert(s).expect("valid store");
    }
    v
}

/// Runs one round at `now`, answering each probe from `answer` (`None`:
/// no answer). Returns the stores asked, in order, and the round.
fn run(
    v: &Arc<ClusterView>,
    now: Instant,
    answer: impl Fn(u64) -> Option<ServingStatus>,
) -> (Vec<u64>, ProbeRound) {
    let mut op = ProbeStores::new(v.clone());
    op.start(now);
    let mut asked = Vec::new();
    while let Some(rpc) = op.poll_rpc() {
        let Target::Store { store_id, .. } = rpc.target else { panic!("{rpc:?}") };
        assert!(matches!(rpc.request, Request::HealthCheck), "{rpc:?}");
        assert_eq!(rpc.deadline, now + LIVENESS_TIMEOUT);
        asked.push((rpc.id, store_id));
    }
    for (id, store_id) in &asked {
        assert!(op.poll_result().is_none(), "done before every store answered");
        let response = match answer(*store_id) {
            Some(status) => {
                Ok(Response::HealthCheck(HealthCheckResponse { status: status as i32 }))
            }
            None => Err(RpcError::Unavailable("connection refused".into())),
        };
        op.on_response(*id, response, now);
    }
    let round = op.poll_result().expect("done").expect("a round never fails");
    (asked.into_iter().map(|(_, s)| s).collect(), round)
}

/// Nothing is probed while every store is reachable; a store marked
/// unreachable is probed every round until it answers SERVING; an UNKNOWN
/// answer leaves it unknown (and probed again); TiFlash and removed stores
/// are never probed.
#[test]
fn unreachable_stores_are_probed_until_they_answer_serving() {
    let v = four_stores();
    let t0 = Instant::from_millis(1_000);
    assert!(!ProbeStores::new(v.clone()).has_stores_to_ask());
    let (asked, round) = run(&v, t0, |_| Some(ServingStatus::Serving));
    assert!(asked.is_empty(), "{asked:?}");
    assert!(round.ticked, "the first round ticks the slow scores");

    v.stores.mark_unreachable(4);
    assert!(!ProbeStores::new(v.clone()).has_stores_to_ask(), "TiFlash is not probed");
    v.stores.mark_unreachable(2);
    v.stores.mark_unreachable(3);
    assert!(ProbeStores::new(v.clone()).has_stores_to_ask());
    let second = t0 + HEALTH_CHECK_INTERVAL;
    let (asked, round) = run(&v, second, |s| match s {
        2 => None,
        _ => Some(ServingStatus::NotServing),
    });
    assert_eq!(asked, [2, 3], "TiFlash is not probed");
    assert_eq!(round.unreachable.iter().map(|u| u.0).collect::<Vec<_>>(), [2, 3]);
    assert!(!round.ticked, "a tick is due every 15 s");
    assert_eq!(v.stores.liveness(2), Liveness::Unreachable);

    let third = second + HEALTH_CHECK_INTERVAL;
    let (asked, round) = run(&v, third, |s| match s {
        2 => Some(ServingStatus::Serving),
        _ => Some(ServingStatus::Unknown),
    });
    assert_eq!(asked, [2, 3]);
    assert_eq!(round.reachable, [2]);
    assert_eq!(round.unknown, [3]);
    assert_eq!(v.stores.liveness(2), Liveness::Reachable);
    assert_eq!(v.stores.liveness(3), Liveness::Unknown);

    // Store 3 is asked again; store 2 no more.
    let (asked, _) = run(&v, third + HEALTH_CHECK_INTERVAL, |_| Some(ServingStatus::Serving));
    assert_eq!(asked, [3]);
    assert!(v.stores.is_reachable(3));

    // A removed store is not probed.
    v.stores.mark_unreachable(1);
    v.stores
        .insert(metapb::Store { state: metapb::StoreState::Tombstone as i32, ..store(1, &[]) })
        .expect("tombstone");
    let (asked, _) = run(&v, third + HEALTH_CHECK_INTERVAL * 2, |_| None);
    assert!(asked.is_empty(), "{asked:?}");
}

/// A probe answered with something other than a health answer, or a
/// status this client does not know, keeps the store unreachable.
#[test]
fn odd_probe_answers_keep_the_store_unreachable() {
    let v = four_stores();
    v.stores.mark_unreachable(1);
    let mut op = ProbeStores::new(v.clone());
    op.start(Instant::ZERO);
    let rpc = op.poll_rpc().expect("a probe");
    op.on_response(
        rpc.id,
        Ok(Response::HealthCheck(HealthCheckResponse { status: 9 })),
        Instant::ZERO,
    );
    let round = op.poll_result().unwrap().unwrap();
    assert_eq!(round.unreachable, [(1, "status 9".to_string())]);
    assert_eq!(v.stores.liveness(1), Liveness::Unreachable);
}

/// The slow scores tick once a quarter of the store refresh interval
/// (60 s by default) has passed: a store whose latency was measured and
/// that a failure marked slow loses 2 a tick while idle (client-go's
/// `updateSlowScore`), so it is slow for 11 ticks.
#[test]
fn rounds_tick_the_slow_scores_every_quarter_refresh_interval() {
    let v = four_stores();
    let t0 = Instant::from_millis(1_000);
    assert!(run(&v, t0, |_| None).1.ticked);
    let health = || v.stores.get_any(1).unwrap();
    // Measured traffic (prefer-leader reads), then a failure.
    for _ in 0..10 {
        health().health().record_latency(Duration::from_millis(1));
    }
    health().health().mark_slow();
    for s in 1..=14 {
        let (_, round) = run(&v, t0 + Duration::from_secs(s), |_| None);
        assert!(!round.ticked, "second {s}");
    }
    assert_eq!(health().health().slow_scores().0, 100);
    let mut at = t0;
    for tick in 1..=11 {
        at += Duration::from_secs(15);
        assert!(run(&v, at, |_| None).1.ticked);
        assert_eq!(health().health().slow_scores().0, 100 - 2 * tick);
        assert_eq!(health().health().is_slow(), tick < 11, "tick {tick}");
    }
}

/// TiKV's health feedback is recorded as it arrives, with no round run: a
/// slow score of 80 or more makes the store slow, a later healthy one makes
/// it healthy again; sequence numbers are not checked (client-go ignores
/// `feedback_seq_no`); feedback for an unknown store is dropped.
#[test]
fn health_feedback_records_tikv_slow_scores_on_arrival() {
    let v = four_stores();
    let feedback = |store_id, feedback_seq_no, slow_score| tikv_proto::kvrpcpb::HealthFeedback {
        store_id,
        feedback_seq_no,
        slow_score,
    };
    let health = |id| v.stores.get_any(id).unwrap().health().slow_scores();
    let t0 = Instant::from_millis(1_000);
    assert!(on_health_feedback(&v, &feedback(2, 5, 100), t0));
    assert!(v.stores.get_any(2).unwrap().health().is_slow());
    assert_eq!(health(2), (1, 100));
    assert!(!v.stores.get_any(1).unwrap().health().is_slow());
    assert!(!on_health_feedback(&v, &feedback(9, 1, 100), t0), "unknown store");

    // An older sequence number still counts, once the score's 100 ms update
    // interval has passed.
    assert!(on_health_feedback(&v, &feedback(2, 4, 1), t0 + Duration::from_millis(50)));
    assert_eq!(health(2).1, 100, "within 100 ms of the last change");
    assert!(on_health_feedback(&v, &feedback(2, 4, 1), t0 + Duration::from_millis(200)));
    assert_eq!(health(2).1, 1);
    assert!(!v.stores.get_any(2).unwrap().health().is_slow(), "healthy again");
    // A negative score reads as 0.
    assert!(on_health_feedback(&v, &feedback(3, 1, 50), t0));
    assert!(on_health_feedback(&v, &feedback(3, 2, -7), t0 + Duration::from_millis(200)));
    assert_eq!(health(3).1, 0);
}
