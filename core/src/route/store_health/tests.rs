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

/// Runs one round at `now` against `fake`, which answers at once.
/// Returns what was asked of whom, in order, and the round.
fn run_against(
    v: &Arc<ClusterView>,
    fake: &mut crate::testing::FakeCluster,
    now: Instant,
) -> (Vec<(u64, &'static str)>, ProbeRound) {
    let mut op = ProbeStores::new(v.clone());
    op.start(now);
    let mut rpcs = Vec::new();
    while let Some(rpc) = op.poll_rpc() {
        let Target::Store { store_id, .. } = rpc.target else { panic!("{rpc:?}") };
        let timeout = match rpc.request {
            Request::HealthCheck => LIVENESS_TIMEOUT,
            _ => HEALTH_FEEDBACK_TIMEOUT,
        };
        assert_eq!(rpc.deadline, now + timeout, "{rpc:?}");
        rpcs.push((store_id, rpc));
    }
    let asked = rpcs.iter().map(|(s, rpc)| (*s, rpc.request.name())).collect();
    for (_, rpc) in rpcs {
        assert!(op.poll_result().is_none(), "done before every store answered");
        let answer = fake.handle(&rpc);
        op.on_response(rpc.id, answer, now);
    }
    (asked, op.poll_result().expect("done").expect("a round never fails"))
}

/// client-go's active health feedback: a store whose TiKV-side score is
/// above 1 and went 15 s without a refresh is asked `GetHealthFeedback` by
/// the round that ticks. An answer is recorded as any feedback (an
/// unchanged score stays, a healthy one clears the store); a failed ask,
/// or a store that is not reachable (so not asked), lets the score decay by
/// 1/3 a second. Healthy stores and stores that never sent feedback are
/// never asked.
#[test]
fn stale_tikv_scores_are_asked_for_fresh_feedback_before_they_decay() {
    use crate::testing::{FakeCluster, Fault};
    let v = four_stores();
    let mut fake = FakeCluster::new(&[]);
    let scores = |id| v.stores.get_any(id).unwrap().health().slow_scores().1;
    let slow = |id| v.stores.get_any(id).unwrap().health().is_slow();
    let t0 = Instant::from_millis(1_000);
    let feedback = |store_id, slow_score| tikv_proto::kvrpcpb::HealthFeedback {
        store_id,
        feedback_seq_no: 1,
        slow_score,
    };
    // Stores 1 to 3 reported slow on their BatchCommands answers; store 4
    // never reported anything.
    for id in 1..=3 {
        on_health_feedback(&v, &feedback(id, 90), t0);
    }
    let (asked, round) = run_against(&v, &mut fake, t0);
    assert!(round.ticked);
    assert!(asked.is_empty(), "nothing is stale yet: {asked:?}");
    // Seconds later the scores are not stale, and the rounds do not tick.
    let (asked, _) = run_against(&v, &mut fake, t0 + Duration::from_secs(14));
    assert!(asked.is_empty(), "{asked:?}");

    // 15 s on: the tick asks the reachable stale stores (after the probe
    // of the unreachable one, whose score decays without asking). The ask
    // to store 2 fails (the fake's fault takes the first one); store 3
    // answers that it is healthy now.
    v.stores.mark_unreachable(1);
    fake.slow_scores.insert(2, 90);
    fake.fault("get_health_feedback", Fault::Rpc(RpcError::Unavailable("reset".into())));
    fake.fault("health_check", Fault::Rpc(RpcError::Unavailable("refused".into())));
    let t1 = t0 + Duration::from_secs(15);
    let (asked, round) = run_against(&v, &mut fake, t1);
    assert!(round.ticked);
    assert_eq!(
        asked,
        [(1, "health_check"), (2, "get_health_feedback"), (3, "get_health_feedback")]
    );
    assert_eq!(round.feedback, [3]);
    assert_eq!(round.feedback_failed.iter().map(|f| f.0).collect::<Vec<_>>(), [2]);
    assert_eq!(scores(1), 85, "not reachable: decays without asking");
    assert_eq!(scores(2), 85, "the ask failed: 15 s at 1/3 a second");
    assert_eq!(scores(3), 1, "fresh feedback: healthy");
    assert!(!slow(3));
    assert!(slow(2));

    // 15 s later store 2 is asked again and answers 90: refreshed, still
    // slow, no decay. Store 3 (healthy) and store 1 (decayed, but not
    // reachable) follow their own rules.
    let t2 = t1 + Duration::from_secs(15);
    let (asked, round) = run_against(&v, &mut fake, t2);
    assert_eq!(asked, [(1, "health_check"), (2, "get_health_feedback")]);
    assert_eq!(round.feedback, [2]);
    assert!(round.feedback_failed.is_empty());
    assert_eq!(scores(2), 90, "fresh feedback, not a decay");
    assert!(slow(2));
    assert_eq!(v.stores.liveness(1), Liveness::Reachable, "store 1 answered its probe");
    assert_eq!(scores(1), 80, "decayed again, without asking");

    // Store 2 recovers: the next ask clears it at once.
    fake.slow_scores.insert(2, 1);
    let (asked, round) = run_against(&v, &mut fake, t2 + Duration::from_secs(15));
    assert_eq!(asked, [(1, "get_health_feedback"), (2, "get_health_feedback")]);
    assert_eq!(round.feedback, [1, 2]);
    assert_eq!((scores(1), scores(2)), (1, 1));
    assert!(!slow(2));
    // Healthy scores are left alone from then on.
    let (asked, _) = run_against(&v, &mut fake, t2 + Duration::from_secs(60));
    assert!(asked.is_empty(), "{asked:?}");
}

/// A `GetHealthFeedback` answer with a region error, without feedback or
/// of another command counts as no feedback: the stale score decays.
#[test]
fn odd_feedback_answers_let_the_stale_score_decay() {
    let t0 = Instant::from_millis(1_000);
    let answers = [
        Ok(Response::Kv(KvResponse::from(kvrpcpb::GetHealthFeedbackResponse {
            region_error: Some(tikv_proto::errorpb::Error {
                message: "busy".into(),
                ..Default::default()
            }),
            health_feedback: Some(kvrpcpb::HealthFeedback {
                store_id: 2,
                slow_score: 90,
                ..Default::default()
            }),
        }))),
        Ok(Response::Kv(KvResponse::from(kvrpcpb::GetHealthFeedbackResponse::default()))),
        Ok(Response::HealthCheck(HealthCheckResponse { status: 1 })),
    ];
    for answer in answers {
        let v = four_stores();
        on_health_feedback(
            &v,
            &kvrpcpb::HealthFeedback { store_id: 2, feedback_seq_no: 1, slow_score: 90 },
            t0,
        );
        let mut op = ProbeStores::new(v.clone());
        op.start(t0);
        assert!(op.poll_rpc().is_none());
        assert!(op.poll_result().is_some());
        let t1 = t0 + Duration::from_secs(30);
        let mut op = ProbeStores::new(v.clone());
        op.start(t1);
        let rpc = op.poll_rpc().expect("an ask");
        assert!(op.poll_rpc().is_none());
        op.on_response(rpc.id, answer, t1);
        let round = op.poll_result().unwrap().unwrap();
        assert_eq!(round.feedback_failed.len(), 1, "{round:?}");
        assert_eq!(v.stores.get_any(2).unwrap().health().slow_scores().1, 80);
    }
}

/// Each round lists the stores that have stayed unreachable for 30 s since
/// PD was last asked about them, for the runtime to re-resolve (client-go's
/// `reResolve` in its health-check loop); a store that answers again is
/// not listed.
#[test]
fn stores_unreachable_for_30_s_are_listed_for_a_re_resolve() {
    let v = four_stores();
    let t0 = Instant::from_millis(1_000);
    v.stores.mark_unreachable(2);
    v.stores.mark_unreachable(3);
    let mut listed = Vec::new();
    for second in 0..=61 {
        let now = t0 + Duration::from_secs(second);
        let (_, round) = run(&v, now, |s| match s {
            // Store 3 answers from 40 s on.
            3 if second >= 40 => Some(ServingStatus::Serving),
            _ => None,
        });
        if !round.re_resolve.is_empty() {
            listed.push((second, round.re_resolve));
        }
    }
    assert_eq!(listed, [(30, vec![2, 3]), (60, vec![2])]);
}
