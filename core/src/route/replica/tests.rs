//! Transcript tests of the replica selector: one scripted call per state
//! and read type, each step showing the pick and every peer's record.

use std::fmt::Write;

use super::*;
use crate::region::{RegionCache, RegionRef};
use crate::time::Instant;

/// A peer of the test region: its store, role and store labels.
struct PeerSpec {
    store: u64,
    learner: bool,
    labels: &'static [(&'static str, &'static str)],
}

fn voter(store: u64) -> PeerSpec {
    PeerSpec { store, learner: false, labels: &[] }
}

fn learner(store: u64) -> PeerSpec {
    PeerSpec { store, learner: true, labels: &[] }
}

fn tiflash(store: u64) -> PeerSpec {
    PeerSpec { store, learner: true, labels: &[("engine", "tiflash")] }
}

fn in_zone(mut p: PeerSpec, zone: &'static str) -> PeerSpec {
    p.labels = match zone {
        "z1" => &[("zone", "z1")],
        "z2" => &[("zone", "z2")],
        _ => &[("zone", "z3")],
    };
    p
}

/// A region over `peers` led by the peer on `leader_store`, and a store
/// table knowing every store (unless listed in `unknown`).
fn setup(peers: &[PeerSpec], leader_store: u64, unknown: &[u64]) -> (RegionRef, StoreTable) {
    let meta = metapb::Region {
        id: 1,
        region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
        peers: peers
            .iter()
            .map(|p| metapb::Peer {
                id: 10 + p.store,
                store_id: p.store,
                role: if p.learner {
                    metapb::PeerRole::Learner as i32
                } else {
                    metapb::PeerRole::Voter as i32
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let leader = meta.peers.iter().find(|p| p.store_id == leader_store).copied();
    let cache = RegionCache::new(Duration::from_secs(600), Duration::ZERO, 1);
    let region = cache.insert(meta, leader, Instant::ZERO).expect("valid region");
    let stores = StoreTable::new();
    for p in peers.iter().filter(|p| !unknown.contains(&p.store)) {
        stores
            .insert(metapb::Store {
                id: p.store,
                address: format!("store{}:20160", p.store),
                labels: p
                    .labels
                    .iter()
                    .map(|(k, v)| metapb::StoreLabel { key: (*k).into(), value: (*v).into() })
                    .collect(),
                ..Default::default()
            })
            .expect("valid store");
    }
    (region, stores)
}

/// What a scripted step feeds the selector.
#[derive(Clone, Copy, Debug)]
enum Step {
    Next,
    SendFailure,
    Deadline,
    NotLeader(Option<u64>),
    Busy(u32),
    RegionNotFound,
    DataIsNotReady,
    Success,
}

/// Runs `steps` and writes one line per step: the step, its outcome and
/// the selector's record afterwards.
fn script(
    region: &RegionRef,
    stores: &StoreTable,
    read: &ReplicaRead,
    seed: u64,
    steps: &[Step],
) -> String {
    let mut s = ReplicaSelector::new(region, read, Rng::new(seed));
    run(&mut s, region, stores, steps)
}

/// Runs `steps` on selector `s` (see [`script`]).
fn run(s: &mut ReplicaSelector, region: &RegionRef, stores: &StoreTable, steps: &[Step]) -> String {
    let mut out = String::new();
    let mut replica_read = false;
    for step in steps {
        let outcome = match *step {
            Step::Next => match s.next(region, stores, Instant::ZERO) {
                Pick::Send { peer, replica_read: rr, stale_read, proxy } => {
                    replica_read = rr || stale_read;
                    format!(
                        "send to store{}{}{}{}",
                        region.peers()[peer].store_id,
                        if rr { " replica_read" } else { "" },
                        if stale_read { " stale_read" } else { "" },
                        proxy.map_or(String::new(), |p| format!(
                            " via store{}",
                            region.peers()[p].store_id
                        ))
                    )
                }
                other => format!("{other:?}"),
            },
            Step::SendFailure => {
                s.on_send_failure(region, stores, Liveness::Unreachable);
                String::new()
            }
            Step::Deadline => {
                s.on_deadline_exceeded();
                String::new()
            }
            Step::NotLeader(store) => {
                let peer = store.and_then(|st| region.peer_on_store(st).copied());
                format!("{:?}", s.on_not_leader(region, peer.as_ref()))
            }
            Step::Busy(wait) => {
                format!("{:?}", s.on_server_is_busy(region, stores, wait, Instant::ZERO))
            }
            Step::RegionNotFound => format!("retry on leader: {}", s.on_region_not_found(region)),
            Step::DataIsNotReady => {
                s.on_data_is_not_ready();
                String::new()
            }
            Step::Success => format!("leader moved to {:?}", s.on_success(region, replica_read)),
        };
        let _ = writeln!(out, "{step:?} => {outcome}");
        let _ = writeln!(out, "    {}", s.describe(region));
    }
    if let Some(reason) = region.invalid_reason() {
        let _ = writeln!(out, "region invalidated: {reason}");
    }
    out
}

fn three_voters() -> Vec<PeerSpec> {
    vec![voter(1), voter(2), voter(3)]
}

#[test]
fn leader_read_moves_to_followers_with_leader_semantics_after_a_send_failure() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let out = script(
        &region,
        &stores,
        &ReplicaRead::leader(),
        1,
        &[Next, SendFailure, Next, NotLeader(Some(3)), Next, Success],
    );
    insta::assert_snapshot!(out);
}

#[test]
fn leader_read_gives_up_on_the_leader_after_ten_attempts() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 2, &[]);
    // Busy answers with a wait are retried on the leader after a backoff
    // until its ten attempts are spent; then each follower once, with
    // leader semantics (fast retries now); then nothing is left.
    let mut steps = Vec::new();
    for _ in 0..10 {
        steps.extend([Next, Busy(20)]);
    }
    steps.extend([Next, Busy(20), Next, Busy(20), Next]);
    let out = script(&region, &stores, &ReplicaRead::leader(), 1, &steps);
    insta::assert_snapshot!(out);
}

#[test]
fn two_busy_answers_from_the_leader_probe_a_follower_once() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    // tikv/client-go#2028: the second ServerIsBusy(0) makes the leader a
    // suspect; one follower is asked with a leader read; its NotLeader
    // names the same leader, which is trusted again and not probed twice.
    let out = script(
        &region,
        &stores,
        &ReplicaRead::leader(),
        1,
        &[
            Next,
            Busy(0),
            Next,
            Busy(0),
            Next,
            NotLeader(Some(1)),
            Next,
            Busy(0),
            Next,
            Busy(0),
            Next,
        ],
    );
    insta::assert_snapshot!(out);
}

#[test]
fn a_suspect_leader_without_followers_to_probe_is_asked_again() {
    use Step::*;
    let (region, stores) = setup(&[voter(1)], 1, &[]);
    let out =
        script(&region, &stores, &ReplicaRead::leader(), 1, &[Next, Busy(0), Next, Busy(0), Next]);
    insta::assert_snapshot!(out);
}

#[test]
fn a_leader_deadline_sends_the_read_to_a_follower_as_a_replica_read() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    // Every replica runs out of the short timeout: the call gives up
    // without invalidating the region.
    let out = script(
        &region,
        &stores,
        &ReplicaRead::leader(),
        1,
        &[Next, Deadline, Next, Deadline, Next, Deadline, Next],
    );
    insta::assert_snapshot!(out);
}

#[test]
fn follower_read_tries_followers_first_and_the_leader_last() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 2, &[]);
    let steps = [Next, Busy(0), Next, Busy(0), Next, Busy(0), Next];
    let out = script(&region, &stores, &ReplicaRead::of(ReplicaReadType::Follower), 1, &steps);
    insta::assert_snapshot!(out);
}

#[test]
fn learner_read_tries_learners_first() {
    use Step::*;
    let (region, stores) = setup(&[voter(1), voter(2), learner(3)], 1, &[]);
    let steps = [Next, SendFailure, Next, SendFailure, Next, SendFailure, Next];
    let out = script(&region, &stores, &ReplicaRead::of(ReplicaReadType::Learner), 1, &steps);
    insta::assert_snapshot!(out);
}

#[test]
fn prefer_leader_read_goes_to_the_leader_then_followers() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 3, &[]);
    let steps = [Next, SendFailure, Next, SendFailure, Next];
    let out = script(&region, &stores, &ReplicaRead::of(ReplicaReadType::PreferLeader), 1, &steps);
    insta::assert_snapshot!(out);
}

/// Ties are broken by the seeded generator: a mixed read spreads over all
/// three replicas, a follower read over the two followers, and the same
/// seed always picks the same replica.
#[test]
fn ties_are_broken_at_random_by_the_seed() {
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let mut out = String::new();
    for read_type in [ReplicaReadType::Mixed, ReplicaReadType::Follower] {
        let mut hits = [0u32; 4];
        for seed in 0..300 {
            let mut s = ReplicaSelector::new(&region, &ReplicaRead::of(read_type), Rng::new(seed));
            let Pick::Send { peer, .. } = s.next(&region, &stores, Instant::ZERO) else {
                panic!("a pick");
            };
            hits[region.peers()[peer].store_id as usize] += 1;
            let mut again =
                ReplicaSelector::new(&region, &ReplicaRead::of(read_type), Rng::new(seed));
            assert_eq!(
                again.next(&region, &stores, Instant::ZERO),
                Pick::Send { peer, replica_read: peer != 0, stale_read: false, proxy: None }
            );
        }
        let _ = writeln!(
            out,
            "{read_type:?}: store1 {} store2 {} store3 {}",
            hits[1], hits[2], hits[3]
        );
        for store in 2..=3 {
            assert!(hits[store] > 50, "{read_type:?} spreads: {hits:?}");
        }
        assert_eq!(hits[1] > 50, read_type == ReplicaReadType::Mixed, "{hits:?}");
    }
    insta::assert_snapshot!(out);
}

#[test]
fn labels_pick_the_matching_replica_and_the_leader_among_matches() {
    use Step::*;
    let peers = || vec![in_zone(voter(1), "z1"), in_zone(voter(2), "z2"), in_zone(voter(3), "z3")];
    let mut out = String::new();
    // A follower read preferring z3 goes to store 3 first.
    let (region, stores) = setup(&peers(), 1, &[]);
    let read = ReplicaRead::of(ReplicaReadType::Follower).with_label("zone", "z3");
    let _ = writeln!(out, "== follower, zone z3");
    out.push_str(&script(&region, &stores, &read, 1, &[Next, SendFailure, Next]));
    // A mixed read whose label only the leader matches goes to the leader.
    let (region, stores) = setup(&peers(), 1, &[]);
    let read = ReplicaRead::of(ReplicaReadType::Mixed).with_label("zone", "z1");
    let _ = writeln!(out, "== mixed, zone z1 (the leader's)");
    out.push_str(&script(&region, &stores, &read, 1, &[Next]));
    // No store matches: the label bit is equal for all, the plain rules decide.
    let (region, stores) = setup(&peers(), 1, &[]);
    let read = ReplicaRead::of(ReplicaReadType::Follower).with_label("zone", "z9");
    let _ = writeln!(out, "== follower, zone z9 (nobody's)");
    out.push_str(&script(&region, &stores, &read, 1, &[Next]));
    insta::assert_snapshot!(out);
}

/// client-go `WithMatchStores`: a store matches when its id is listed (and
/// it carries the labels); among several listed, the rules decide.
#[test]
fn store_ids_pick_the_listed_replica() {
    use Step::*;
    let peers = || vec![in_zone(voter(1), "z1"), in_zone(voter(2), "z2"), in_zone(voter(3), "z3")];
    for (seed, want) in [(1, "send to store3 replica_read"), (2, "send to store3 replica_read")] {
        let (region, stores) = setup(&peers(), 1, &[]);
        let read = ReplicaRead::of(ReplicaReadType::Follower).with_store(3);
        let out = script(&region, &stores, &read, seed, &[Next]);
        assert!(out.contains(want), "seed {seed}: {out}");
    }
    // Listed, but without the label: no store matches, the plain rules
    // decide (a follower, never refused).
    let (region, stores) = setup(&peers(), 1, &[]);
    let read = ReplicaRead::of(ReplicaReadType::Follower).with_store(3).with_label("zone", "z2");
    let out = script(&region, &stores, &read, 1, &[Next]);
    let to_follower =
        out.contains("send to store2 replica_read") || out.contains("send to store3 replica_read");
    assert!(to_follower, "{out}");
    // A mixed read listing only the leader's store reads from the leader.
    let (region, stores) = setup(&peers(), 1, &[]);
    let read = ReplicaRead::of(ReplicaReadType::Mixed).with_store(1);
    let out = script(&region, &stores, &read, 1, &[Next]);
    assert!(out.contains("send to store1\n") || out.contains("send to store1 "), "{out}");
    assert!(!out.contains("replica_read"), "{out}");
}

#[test]
fn tiflash_peers_are_never_chosen() {
    use Step::*;
    let mut out = String::new();
    // Leader read whose leader and followers all fail: the TiFlash
    // learner is never tried, and the region is given up on.
    let (region, stores) = setup(&[voter(1), voter(2), tiflash(4)], 1, &[]);
    let _ = writeln!(out, "== leader read");
    out.push_str(&script(
        &region,
        &stores,
        &ReplicaRead::leader(),
        1,
        &[Next, SendFailure, Next, SendFailure, Next],
    ));
    // A learner read with a TiFlash learner and a TiKV learner: the TiKV
    // one, then voters.
    let (region, stores) = setup(&[voter(1), voter(2), tiflash(4), learner(5)], 1, &[]);
    let _ = writeln!(out, "== learner read");
    out.push_str(&script(
        &region,
        &stores,
        &ReplicaRead::of(ReplicaReadType::Learner),
        1,
        &[Next, SendFailure, Next, SendFailure, Next, SendFailure, Next],
    ));
    // The store of a TiFlash peer is not known yet: a replica read learns
    // it first, and then never picks it.
    let (region, stores) = setup(&[voter(1), tiflash(4)], 1, &[4]);
    let _ = writeln!(out, "== follower read, TiFlash store unknown");
    let read = ReplicaRead::of(ReplicaReadType::Follower);
    let mut s = ReplicaSelector::new(&region, &read, Rng::new(1));
    let _ = writeln!(out, "Next => {:?}", s.next(&region, &stores, Instant::ZERO));
    stores
        .insert(metapb::Store {
            id: 4,
            address: "store4:20160".into(),
            labels: vec![metapb::StoreLabel { key: "engine".into(), value: "tiflash".into() }],
            ..Default::default()
        })
        .expect("valid store");
    let _ = writeln!(out, "(store 4 resolved: engine=tiflash)");
    let _ = writeln!(out, "Next => {:?}", s.next(&region, &stores, Instant::ZERO));
    let _ = writeln!(out, "    {}", s.describe(&region));
    insta::assert_snapshot!(out);
}

#[test]
fn region_not_found_from_a_follower_leaves_one_try_on_the_leader() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let out = script(
        &region,
        &stores,
        &ReplicaRead::of(ReplicaReadType::Follower),
        1,
        &[Next, RegionNotFound, Next, RegionNotFound, Next],
    );
    insta::assert_snapshot!(out);
}

#[test]
fn data_not_ready_leaves_the_follower_a_second_try() {
    use Step::*;
    let (region, stores) = setup(&[voter(1), voter(2)], 1, &[]);
    let out = script(
        &region,
        &stores,
        &ReplicaRead::of(ReplicaReadType::Follower),
        1,
        &[Next, DataIsNotReady, Next, DataIsNotReady, Next],
    );
    insta::assert_snapshot!(out);
}

#[test]
fn busy_replicas_defer_their_sleeps_until_the_call_returns_to_them() {
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let mut s =
        ReplicaSelector::new(&region, &ReplicaRead::of(ReplicaReadType::Mixed), Rng::new(3));
    let mut out = String::new();
    let mut busy_stores = Vec::new();
    while let Pick::Send { peer, .. } = s.next(&region, &stores, Instant::ZERO) {
        let store = region.peers()[peer].store_id;
        let step = s.on_server_is_busy(&region, &stores, 0, Instant::ZERO);
        let _ = writeln!(out, "store{store} busy => {step:?}");
        assert_eq!(step, BusyStep::FastRetry, "replica reads never sleep on one store");
        busy_stores.push(store);
    }
    let _ = writeln!(out, "    {}", s.describe(&region));
    busy_stores.sort_unstable();
    assert_eq!(busy_stores, [1, 2, 3]);
    assert!(s.take_pending_backoff(2), "returning to store 2 sleeps first");
    assert!(!s.take_pending_backoff(2), "once");
    assert!(s.take_any_pending_backoff(), "no candidate left: the deferred sleep is taken");
    assert!(!s.take_any_pending_backoff());
    assert_eq!(region.invalid_reason(), Some(InvalidReason::Other));
    insta::assert_snapshot!(out);
}

#[test]
fn a_not_leader_hint_outside_the_region_invalidates_it() {
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let mut s = ReplicaSelector::new(&region, &ReplicaRead::leader(), Rng::new(1));
    assert!(matches!(s.next(&region, &stores, Instant::ZERO), Pick::Send { peer: 0, .. }));
    let stranger = metapb::Peer { id: 99, store_id: 9, ..Default::default() };
    assert_eq!(s.on_not_leader(&region, Some(&stranger)), NotLeaderStep::Retry(None));
    assert_eq!(region.invalid_reason(), Some(InvalidReason::StoreNotFound));
    assert_eq!(s.next(&region, &stores, Instant::ZERO), Pick::Exhausted);
}

#[test]
fn an_unknown_store_is_resolved_before_it_is_picked() {
    let (region, stores) = setup(&three_voters(), 2, &[2, 3]);
    // A leader read needs only the leader's store.
    let mut s = ReplicaSelector::new(&region, &ReplicaRead::leader(), Rng::new(1));
    assert_eq!(s.next(&region, &stores, Instant::ZERO), Pick::Resolve(2));
    // A replica read scores every peer, so it needs every store.
    let mut s =
        ReplicaSelector::new(&region, &ReplicaRead::of(ReplicaReadType::Mixed), Rng::new(1));
    assert_eq!(s.next(&region, &stores, Instant::ZERO), Pick::Resolve(2));
    stores
        .insert(metapb::Store { id: 2, address: "store2:20160".into(), ..Default::default() })
        .expect("valid store");
    assert_eq!(s.next(&region, &stores, Instant::ZERO), Pick::Resolve(3));
}

/// Load-based replica read: a leader read with a busy threshold goes to
/// the leader until its store reports a longer queue (`ServerIsBusy` with
/// an estimated wait), then to idle followers as replica reads; once every
/// replica is busy the threshold is dropped and the leader serves. The
/// estimate ages: after it has passed, the leader is idle again.
#[test]
fn a_busy_leader_sends_reads_with_a_threshold_to_idle_followers() {
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let read = ReplicaRead::leader().with_busy_threshold(Duration::from_millis(50));
    let t0 = Instant::ZERO;
    let mut out = String::new();
    let mut s = ReplicaSelector::new(&region, &read, Rng::new(1));
    let mut step = |s: &mut ReplicaSelector, busy: Option<u32>, now: Instant| {
        let pick = s.next(&region, &stores, now);
        let _ = writeln!(out, "Next => {pick:?} (threshold {:?})", s.busy_threshold());
        if let (Pick::Send { peer, .. }, Some(wait)) = (&pick, busy) {
            let step = s.on_server_is_busy(&region, &stores, wait, now);
            let _ = writeln!(
                out,
                "store{} busy, estimated wait {wait} ms => {step:?}",
                region.peers()[*peer].store_id
            );
        }
        let _ = writeln!(out, "    {}", s.describe(&region));
        pick
    };
    // The leader's queue is 200 ms: the read moves to a follower, busy too,
    // then the other, busy too; then the leader without the threshold.
    assert!(matches!(
        step(&mut s, Some(200), t0),
        Pick::Send { peer: 0, replica_read: false, stale_read: false, proxy: None }
    ));
    assert!(matches!(step(&mut s, Some(300), t0), Pick::Send { replica_read: true, .. }));
    assert!(matches!(step(&mut s, Some(300), t0), Pick::Send { replica_read: true, .. }));
    assert_eq!(
        step(&mut s, None, t0),
        Pick::Send { peer: 0, replica_read: false, stale_read: false, proxy: None }
    );
    assert_eq!(s.busy_threshold(), Duration::ZERO);
    // A new read 100 ms later: the leader's 200 ms estimate has 100 ms
    // left, above the threshold: straight to an idle follower (their
    // estimates, 300 ms, have 200 ms left: busy too, so the leader).
    let mut s = ReplicaSelector::new(&region, &read, Rng::new(1));
    let later = t0 + Duration::from_millis(100);
    assert_eq!(
        step(&mut s, None, later),
        Pick::Send { peer: 0, replica_read: false, stale_read: false, proxy: None }
    );
    // 400 ms later every estimate has run out: the leader, threshold kept.
    let mut s = ReplicaSelector::new(&region, &read, Rng::new(1));
    let idle = t0 + Duration::from_millis(400);
    assert_eq!(
        step(&mut s, None, idle),
        Pick::Send { peer: 0, replica_read: false, stale_read: false, proxy: None }
    );
    assert_eq!(s.busy_threshold(), Duration::from_millis(50));
    assert_eq!(region.invalid_reason(), None, "looking for idle replicas reloads nothing");
    insta::assert_snapshot!(out);
}

#[test]
fn stale_read_not_ready_goes_to_the_leader_then_to_replica_reads() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    // client-go nextForReplicaReadMixed: the first attempt is a stale read
    // on the best replica; DataIsNotReady moves the second to the leader
    // as a normal read (no stale flag). The leader is busy, so no replica
    // read may follow (canSendReplicaRead): the next attempts are stale
    // reads again, the follower that was not ready getting a second try.
    let out = script(
        &region,
        &stores,
        &ReplicaRead::stale(),
        1,
        &[Next, DataIsNotReady, Next, Busy(0), Next, DataIsNotReady, Next, DataIsNotReady, Next],
    );
    insta::assert_snapshot!(out);
}

#[test]
fn stale_read_retries_after_the_leader_are_replica_reads() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    // The leader's normal read failed, but not for lack of time or
    // capacity (a send failure): the next attempts are replica reads, the
    // follower that was not ready getting its second try last.
    let out = script(
        &region,
        &stores,
        &ReplicaRead::stale(),
        1,
        &[Next, DataIsNotReady, Next, SendFailure, Next, SendFailure, Next, Success],
    );
    insta::assert_snapshot!(out);
}

#[test]
fn stale_read_served_by_the_leader_first_is_not_sent_there_again() {
    use Step::*;
    let (region, stores) = setup(&[in_zone(voter(1), "z1"), voter(2), voter(3)], 1, &[]);
    // Labels make the leader the best replica for the stale read; its
    // deadline answer does not send the second attempt back to it (it was
    // attempted), and a follower gets a stale read (the leader ran out of
    // time, so no replica read).
    let read = ReplicaRead::stale().with_label("zone", "z1");
    let out = script(&region, &stores, &read, 1, &[Next, Deadline, Next, Success]);
    insta::assert_snapshot!(out);
}

#[test]
fn stale_read_without_a_matching_replica_goes_to_the_leader() {
    use Step::*;
    let (region, stores) =
        setup(&[in_zone(voter(1), "z1"), in_zone(voter(2), "z2"), in_zone(voter(3), "z3")], 1, &[]);
    // No replica in zone z9: with labels to match, the leader wins among
    // equally matching replicas (client-go's PreferLeader score bit) and
    // serves the stale read itself.
    let read = ReplicaRead::stale().with_label("zone", "z9");
    let out = script(&region, &stores, &read, 3, &[Next, Success]);
    insta::assert_snapshot!(out);
}

/// The store peers are on, for a pick.
fn picked_store(region: &Region, pick: &Pick) -> Option<u64> {
    match pick {
        Pick::Send { peer, .. } => Some(region.peers()[*peer].store_id),
        _ => None,
    }
}

/// A region like [`setup`]'s, inserted into `cache` (a fresh handle on the
/// same region, as a reload from PD gives).
fn reload(cache: &RegionCache, leader_store: u64, now: Instant) -> RegionRef {
    let meta = metapb::Region {
        id: 1,
        region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
        peers: (1..=3)
            .map(|s| metapb::Peer { id: 10 + s, store_id: s, ..Default::default() })
            .collect(),
        ..Default::default()
    };
    let leader = meta.peers.iter().find(|p| p.store_id == leader_store).copied();
    cache.insert(meta, leader, now).expect("valid region")
}

/// Store down → epoch bump → replica skipped by later calls on regions
/// cached before → probe answers → region reloaded → store chosen again
/// (client-go's `invalidateReplicaStore`, `isEpochStale` and delayed
/// reload).
#[test]
fn a_failed_store_is_skipped_until_it_answers_a_probe_and_its_region_is_reloaded() {
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let cache = RegionCache::new(Duration::from_secs(600), Duration::ZERO, 1);
    let region = {
        drop(region);
        reload(&cache, 1, Instant::ZERO)
    };
    let follower = ReplicaRead::of(ReplicaReadType::Follower).with_store(2);
    let mut first = ReplicaSelector::new(&region, &follower, Rng::new(1));
    let pick = first.next(&region, &stores, Instant::ZERO);
    assert_eq!(picked_store(&region, &pick), Some(2), "the preferred follower");
    first.on_send_failure(&region, &stores, Liveness::Unreachable);
    let store2 = stores.get_any(2).expect("known");
    assert_eq!(store2.health().liveness(), Liveness::Unreachable);
    assert_eq!(store2.health().epoch(), 1, "bumped once");
    assert!(store2.health().is_slow(), "a failed store is marked slow");

    // Another call on the same cached region: store 2 is stale and down.
    let mut second = ReplicaSelector::new(&region, &follower, Rng::new(1));
    let pick = second.next(&region, &stores, Instant::ZERO);
    assert_eq!(picked_store(&region, &pick), Some(3), "{}", second.describe(&region));
    assert!(second.describe(&region).contains("store2 attempts=0 epoch-stale store-unreachable"));
    // A second failure report for the epoch the region captured bumps
    // nothing.
    assert!(!store2.health().on_send_failure(0));

    // The probe answers SERVING: reachable, but the cached region still
    // holds the stale replica, so it asks for a reload and skips store 2.
    stores.mark_reachable(2);
    let mut third = ReplicaSelector::new(&region, &follower, Rng::new(1));
    let pick = third.next(&region, &stores, Instant::from_millis(1));
    assert_eq!(picked_store(&region, &pick), Some(3), "{}", third.describe(&region));
    assert!(cache.get_by_id(1, Instant::from_millis(1)).is_none(), "expired for a reload");

    // Reloaded: store 2 is a candidate again, scored below store 3 while
    // its failure keeps it slow, and preferred after the next tick (no
    // request ever measured its latency, so the tick starts its score
    // afresh at 1, as client-go's `updateSlowScore` does).
    let fresh = reload(&cache, 1, Instant::from_millis(2));
    let mut fourth = ReplicaSelector::new(&fresh, &follower, Rng::new(1));
    let pick = fourth.next(&fresh, &stores, Instant::from_millis(2));
    assert_eq!(picked_store(&fresh, &pick), Some(3), "{}", fourth.describe(&fresh));
    assert!(fourth.describe(&fresh).contains("store2 attempts=0 slow |"));
    store2.health().tick(Instant::from_millis(3));
    assert!(!store2.health().is_slow());
    let mut fourth = ReplicaSelector::new(&fresh, &follower, Rng::new(1));
    let pick = fourth.next(&fresh, &stores, Instant::from_millis(2));
    assert_eq!(picked_store(&fresh, &pick), Some(2), "{}", fourth.describe(&fresh));
}

/// A leader read does not send to a leader whose store is unreachable (a
/// region cached after the failure captured the new epoch, so only
/// liveness excludes it): followers are asked with leader semantics.
#[test]
fn a_leader_read_skips_an_unreachable_leader() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    stores.mark_unreachable(1);
    let out = script(&region, &stores, &ReplicaRead::leader(), 1, &[Next]);
    assert!(!out.contains("send to store1"), "{out}");
    assert!(out.contains("store1(leader) attempts=0 store-unreachable"), "{out}");
    // An unknown verdict still keeps it from leading, but not from
    // replica reads.
    stores.set_liveness(1, Liveness::Unknown);
    let out = script(&region, &stores, &ReplicaRead::leader(), 1, &[Next]);
    assert!(!out.contains("send to store1"), "{out}");
    let mixed = ReplicaRead::of(ReplicaReadType::Mixed).with_store(1);
    let out = script(&region, &stores, &mixed, 1, &[Next]);
    assert!(out.contains("send to store1"), "{out}");
}

/// client-go's scoring puts *not slow* first: a mixed read leaves a slow
/// store for last even when it is the labelled one, and a prefer-leader
/// read goes to a follower when the leader is slow and never to a slow
/// follower.
#[test]
fn slow_stores_are_scored_last_and_prefer_leader_avoids_them() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    stores.get_any(2).unwrap().health().record_tikv_score(95, Instant::ZERO);
    let mixed = ReplicaRead::of(ReplicaReadType::Mixed).with_store(2);
    let out = script(&region, &stores, &mixed, 1, &[Next, Busy(5), Next, Busy(5), Next]);
    insta::assert_snapshot!("mixed_read_with_a_slow_store", out);

    // Prefer-leader with a slow leader: the followers first, the leader
    // last (as a normal peer); a slow follower never.
    let (region, stores) = setup(&three_voters(), 1, &[]);
    stores.get_any(1).unwrap().health().record_tikv_score(95, Instant::ZERO);
    let prefer = ReplicaRead::of(ReplicaReadType::PreferLeader);
    let out = script(&region, &stores, &prefer, 1, &[Next, Busy(5), Next, Busy(5), Next]);
    insta::assert_snapshot!("prefer_leader_with_a_slow_leader", out);

    let (region, stores) = setup(&three_voters(), 1, &[]);
    stores.get_any(1).unwrap().health().record_tikv_score(95, Instant::ZERO);
    stores.get_any(3).unwrap().health().record_tikv_score(95, Instant::ZERO);
    for seed in 0..20 {
        let mut s = ReplicaSelector::new(&region, &prefer, Rng::new(seed));
        let pick = s.next(&region, &stores, Instant::ZERO);
        assert_eq!(picked_store(&region, &pick), Some(2), "seed {seed}");
        s.on_server_is_busy(&region, &stores, 5, Instant::ZERO);
        let pick = s.next(&region, &stores, Instant::ZERO);
        assert_eq!(picked_store(&region, &pick), Some(1), "then the slow leader, not store 3");
    }
}

/// Prefer-leader reads record their latency into the store's slow score;
/// other read types do not (client-go records only those).
#[test]
fn prefer_leader_reads_record_latency_into_the_slow_score() {
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let mut s = ReplicaSelector::new(&region, &ReplicaRead::leader(), Rng::new(1));
    s.next(&region, &stores, Instant::ZERO);
    s.record_latency(&region, &stores, Duration::from_secs(31));
    assert!(!stores.get_any(1).unwrap().health().is_slow());
    let mut s =
        ReplicaSelector::new(&region, &ReplicaRead::of(ReplicaReadType::PreferLeader), Rng::new(1));
    s.next(&region, &stores, Instant::ZERO);
    s.record_latency(&region, &stores, Duration::from_millis(1));
    s.record_latency(&region, &stores, Duration::from_secs(31));
    assert!(stores.get_any(1).unwrap().health().is_slow(), "a 30 s answer marks it slow");
}

/// A leader read with forwarding on (client-go `EnableForwarding`).
fn forwarding_call(region: &RegionRef, stores: &StoreTable, steps: &[Step]) -> String {
    let mut s = ReplicaSelector::new(region, &ReplicaRead::leader(), Rng::new(1));
    s.set_forwarding(true);
    run(&mut s, region, stores, steps)
}

/// client-go `ReplicaSelectLeaderWithProxyStrategy`: a failed send to the
/// leader marks its store unreachable and the next attempt goes to the
/// leader through the first reachable follower; its success makes the
/// region remember that proxy, which the next call uses at once.
#[test]
fn an_unreachable_leader_is_reached_through_a_proxy() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let mut out = forwarding_call(&region, &stores, &[Next, SendFailure, Next, Success]);
    out += "-- next call\n";
    out += &forwarding_call(&region, &stores, &[Next, Success]);
    assert_eq!(region.proxy_index(), Some(1), "{out}");
    assert_eq!(region.leader_store_id(), 1, "the leader stays the leader");
    assert_eq!(region.invalid_reason(), None);
    assert!(out.contains("store1(leader) attempts=1 store-unreachable"), "not flagged: {out}");
    insta::assert_snapshot!(out);
}

/// A proxy whose send fails is given up for the call (its store marked
/// unreachable) and forgotten by the region; the next follower serves as
/// proxy. With every follower tried, the leader's store epoch is bumped and
/// the region reloaded at its next lookup (client-go: "all followers are
/// tried as proxy but fail").
#[test]
fn a_failed_proxy_passes_to_the_next_then_the_call_gives_up() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    stores.mark_unreachable(1);
    let leader_epoch = stores.get_any(1).unwrap().health().epoch();
    let out = forwarding_call(&region, &stores, &[Next, SendFailure, Next, SendFailure, Next]);
    assert!(out.contains("send to store1 via store2"), "{out}");
    assert!(out.contains("send to store1 via store3"), "{out}");
    assert!(out.contains("Next => Exhausted"), "{out}");
    assert_eq!(region.proxy_index(), None, "the failed proxy is forgotten");
    assert_ne!(stores.get_any(1).unwrap().health().epoch(), leader_epoch);
    insta::assert_snapshot!(out);
}

/// The remembered proxy is tried before the first follower in peer order;
/// a leader found reachable again is asked directly and the proxy dropped;
/// a `NotLeader` through the proxy sends the next attempt straight to the
/// new leader.
#[test]
fn the_remembered_proxy_is_kept_until_the_leader_is_reachable() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    stores.mark_unreachable(1);
    // A busy answer through store2 moves the call to store3 as proxy.
    let mut out = forwarding_call(&region, &stores, &[Next, Busy(20), Next, Success]);
    assert_eq!(region.proxy_index(), Some(2), "{out}");
    out += "-- next call: store3 first although store2 is a candidate\n";
    let next = forwarding_call(&region, &stores, &[Next, Success]);
    assert!(next.starts_with("Next => send to store1 via store3"), "{next}");
    out += &next;
    out += "-- a NotLeader through the proxy names store2, reachable\n";
    out += &forwarding_call(&region, &stores, &[Next, NotLeader(Some(2)), Next, Success]);
    assert_eq!(region.proxy_index(), None, "{out}");
    assert_eq!(region.leader_store_id(), 2);
    out += "-- the leader moves back to store1, reachable again\n";
    region.switch_leader_to_store(1);
    region.set_proxy_index(Some(2));
    stores.mark_reachable(1);
    let direct = forwarding_call(&region, &stores, &[Next, Success]);
    assert!(direct.starts_with("Next => send to store1\n"), "{direct}");
    out += &direct;
    assert_eq!(region.proxy_index(), None, "{out}");
    insta::assert_snapshot!(out);
}

/// Forwarding off (the default): the same unreachable leader makes the
/// call go to the followers with leader semantics, never through a proxy.
#[test]
fn without_forwarding_an_unreachable_leader_sends_reads_to_followers() {
    use Step::*;
    let (region, stores) = setup(&three_voters(), 1, &[]);
    let out = script(&region, &stores, &ReplicaRead::leader(), 1, &[Next, SendFailure, Next]);
    assert!(!out.contains(" via "), "{out}");
    assert!(out.contains("store1(leader) attempts=1 unreachable"), "{out}");
    assert_eq!(region.proxy_index(), None);
}
