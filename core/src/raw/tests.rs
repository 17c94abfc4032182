//! Scripted-event tests of the RawKV machines (and through them the region
//! sender, the fan-out, the range walk and the PD machines).

use bytes::Bytes;
use tikv_proto::errorpb;

use super::*;
use crate::backoff::ExhaustedClass;
use crate::op::Operation;
use crate::region::Liveness;
use crate::rpc::{RpcError, Target};
use crate::testing::{FakeCluster, Fault, drive, view};
use crate::time::Instant;

fn opts() -> RawOptions {
    RawOptions::default()
}

fn seed(c: &mut FakeCluster, keys: &[&str]) {
    for k in keys {
        c.data.insert(k.as_bytes().to_vec(), Bytes::from(format!("v-{k}")));
    }
}

#[test]
fn get_on_a_cold_cache_discovers_pd_locates_region_and_resolves_store() {
    let mut c = FakeCluster::new(&["m"]);
    seed(&mut c, &["b"]);
    let v = view();
    let (log, result) = drive(get(&v, Key::from("b"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-b")));
    insta::assert_snapshot!(log);
    // Warm cache: one RPC, straight to the leader.
    let (log, result) = drive(get(&v, Key::from("zz"), &opts()), &mut c);
    assert_eq!(result.unwrap(), None);
    insta::assert_snapshot!("warm", log);
}

#[test]
fn batch_get_fans_out_over_regions_and_merges_in_key_order() {
    let mut c = FakeCluster::new(&["c", "f", "m"]);
    seed(&mut c, &["a", "d", "g", "n", "z"]);
    let v = view();
    let keys = ["z", "a", "x", "g", "d", "n", "a"].iter().map(|k| Key::from(*k)).collect();
    let (log, result) = drive(batch_get(&v, keys, &opts()), &mut c);
    let got: Vec<_> = result.unwrap().into_iter().map(|p| p.key).collect();
    assert_eq!(got, ["a", "d", "g", "n", "z"].map(Key::from));
    insta::assert_snapshot!(log);
}

#[test]
fn batch_put_resplits_after_a_split_during_the_batch() {
    let mut c = FakeCluster::new(&["m"]);
    let v = view();
    // Warm the cache with the old layout, then split [ "", m ) at "e" just
    // before the batch arrives: TiKV answers EpochNotMatch with the new
    // regions, the batch is re-split and sent again.
    let _ = drive(get(&v, Key::from("a"), &opts()), &mut c);
    c.fault("raw_batch_put", Fault::SplitAt(b"e".to_vec()));
    let items = ["a", "f", "k", "q"]
        .iter()
        .map(|k| PutItem {
            pair: KvPair::new(Key::from(*k), Bytes::from(format!("v-{k}"))),
            ttl: 0,
        })
        .collect();
    let (log, result) = drive(batch_put(&v, items, &opts()), &mut c);
    result.unwrap();
    let keys: Vec<_> = c.data.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(keys, ["a", "f", "k", "q"]);
    insta::assert_snapshot!(log);
}

#[test]
fn batch_put_batches_by_count_and_bytes() {
    let mut c = FakeCluster::new(&[]);
    let v = Arc::new(ClusterView::new(
        crate::config::Config::default()
            .with_pd_endpoints(["pd1:2379"])
            .with_raw_batch_pair_count(3)
            .with_raw_batch_put_size(40),
        crate::codec::ApiCodec::v1(crate::codec::Mode::Raw),
        Arc::new(crate::pd::PdState::new(["pd1:2379"])),
    ));
    // 7 small pairs (3 bytes each) close batches at 3 by count; the 7th
    // small pair and the first 30-byte pair share a batch (33 bytes); each
    // further 30-byte pair would exceed 40 bytes, so it starts its own:
    // [a0 a1 a2] [a3 a4 a5] [a6 b0] [b1] [b2].
    let mut items: Vec<PutItem> =
        (0..7).map(|i| PutItem { pair: KvPair::new(format!("a{i}"), "v"), ttl: 0 }).collect();
    items.extend(
        (0..3).map(|i| PutItem { pair: KvPair::new(format!("b{i}"), "x".repeat(28)), ttl: 0 }),
    );
    let (log, result) = drive(batch_put(&v, items, &opts()), &mut c);
    result.unwrap();
    assert_eq!(c.data.len(), 10);
    let puts = log.lines().filter(|l| l.contains("send") && l.contains("raw_batch_put")).count();
    assert_eq!(puts, 5, "{log}");
}

/// One section per row of client-go's region-error table: the error is
/// injected once on a `RawGet` and the transcript shows what the sender does.
#[test]
fn sender_handles_every_region_error_row() {
    let rows: Vec<(&str, errorpb::Error)> = vec![
        (
            "NotLeader with leader",
            errorpb::Error {
                message: "not leader".into(),
                not_leader: Some(errorpb::NotLeader {
                    region_id: 1,
                    leader: Some(tikv_proto::metapb::Peer {
                        id: 12,
                        store_id: 2,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            },
        ),
        (
            "NotLeader without leader",
            errorpb::Error {
                message: "no leader".into(),
                not_leader: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "EpochNotMatch without regions",
            errorpb::Error {
                message: "epoch".into(),
                epoch_not_match: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "RegionNotFound",
            errorpb::Error {
                message: "region not found".into(),
                region_not_found: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "KeyNotInRegion",
            errorpb::Error {
                message: "key not in region".into(),
                key_not_in_region: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "ServerIsBusy",
            errorpb::Error {
                message: "busy".into(),
                server_is_busy: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "StaleCommand",
            errorpb::Error {
                message: "stale".into(),
                stale_command: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "StoreNotMatch",
            errorpb::Error {
                message: "store not match".into(),
                store_not_match: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "MaxTimestampNotSynced",
            errorpb::Error {
                message: "max ts".into(),
                max_timestamp_not_synced: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "ReadIndexNotReady",
            errorpb::Error {
                message: "read index".into(),
                read_index_not_ready: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "ProposalInMergingMode",
            errorpb::Error {
                message: "merging".into(),
                proposal_in_merging_mode: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "RegionNotInitialized",
            errorpb::Error {
                message: "not initialized".into(),
                region_not_initialized: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "DiskFull",
            errorpb::Error {
                message: "disk full".into(),
                disk_full: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "RecoveryInProgress",
            errorpb::Error {
                message: "recovery".into(),
                recovery_in_progress: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "FlashbackInProgress",
            errorpb::Error {
                message: "flashback".into(),
                flashback_in_progress: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "FlashbackNotPrepared",
            errorpb::Error {
                message: "flashback not prepared".into(),
                flashback_not_prepared: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "RaftEntryTooLarge",
            errorpb::Error {
                message: "entry too large".into(),
                raft_entry_too_large: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "MismatchPeerId",
            errorpb::Error {
                message: "peer id".into(),
                mismatch_peer_id: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "UndeterminedResult",
            errorpb::Error {
                message: "undetermined".into(),
                undetermined_result: Some(Default::default()),
                ..Default::default()
            },
        ),
        (
            "unknown kind",
            errorpb::Error { message: "some future error".into(), ..Default::default() },
        ),
    ];
    let mut out = String::new();
    for (name, err) in rows {
        let mut c = FakeCluster::new(&[]);
        seed(&mut c, &["k"]);
        let v = view();
        // Warm up so the transcript shows only the error handling.
        let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
        c.fault("raw_get", Fault::Region(Box::new(err)));
        let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
        out.push_str(&format!("== {name}\n{log}"));
        // Either a correct retry (the value) or a typed, non-retried error.
        match name {
            "FlashbackInProgress" | "FlashbackNotPrepared" | "RaftEntryTooLarge" => {
                assert!(matches!(result, Err(Error::Region(_))), "{name}: {result:?}")
            }
            "UndeterminedResult" => {
                assert!(matches!(result, Err(Error::Undetermined(_))), "{name}")
            }
            _ => assert_eq!(result.unwrap(), Some(Bytes::from("v-k")), "{name}"),
        }
    }
    insta::assert_snapshot!(out);
}

#[test]
fn send_failure_backs_off_and_follows_the_new_leader() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    // The leader's store stops answering, its liveness probe too;
    // meanwhile leadership moved to store 3. The sender backs off, tries
    // the next peer (store 2), which names store 3 as leader.
    c.fault("raw_get", Fault::Rpc(RpcError::Unavailable("connection refused".into())));
    c.fault("health_check", Fault::Rpc(RpcError::Unavailable("connection refused".into())));
    c.regions[0].leader_store = 3;
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    assert_eq!(v.stores.get(1).unwrap().health().liveness(), Liveness::Unreachable);
    insta::assert_snapshot!(log);
}

/// client-go `onSendFailure`: a send fails, but the store answers the
/// liveness probe that follows (one request or connection failed, the
/// store is up). It stays reachable and the leader a candidate: after the
/// `BoTiKVRPC` sleep the request goes to it again instead of moving on,
/// and no other store is taken for down.
#[test]
fn a_send_failure_on_a_store_that_answers_its_probe_keeps_the_leader() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    c.fault("raw_get", Fault::Rpc(RpcError::Unavailable("stream reset".into())));
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    assert_eq!(log.matches("raw_get -> store1").count(), 2, "{log}");
    assert_eq!(log.matches("health_check -> store1").count(), 1, "{log}");
    assert_eq!(v.stores.get(1).unwrap().health().liveness(), Liveness::Reachable);
    insta::assert_snapshot!(log);
}

/// A send fails on a store another call already found unreachable (the
/// background probes own it): no second probe, the peer is given up at
/// once.
#[test]
fn a_send_failure_on_a_store_known_unreachable_is_not_probed_again() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    let store = v.stores.get(1).unwrap();
    let epoch = store.health().epoch();
    let mut op = get(&v, Key::from("k"), &opts());
    op.start(Instant::ZERO);
    let rpc = op.poll_rpc().expect("the get is sent");
    assert!(matches!(&rpc.target, Target::Store { store_id: 1, .. }), "{rpc:?}");
    // Another call's probe of store 1 failed while this get was in flight.
    store.health().set_liveness(Liveness::Unreachable);
    let failed = Err(RpcError::Unavailable("connection refused".into()));
    op.on_response(rpc.id, failed, Instant::ZERO + Duration::from_millis(1));
    assert!(op.poll_rpc().is_none(), "no probe, no request before the BoTiKVRPC sleep");
    assert!(op.poll_timeout().is_some(), "sleeping");
    assert_ne!(store.health().epoch(), epoch, "the store's regions are marked for reload");
    assert_eq!(store.health().liveness(), Liveness::Unreachable);
}

/// With forwarding on (client-go `EnableForwarding`), a leader the client
/// cannot connect to is reached through a follower's store: the request
/// goes to store 2 with store 1's address as the forwarded host, and the
/// next call goes that way at once (store 2 remembered as the proxy).
#[test]
fn forwarding_reaches_an_unreachable_leader_through_a_follower() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = crate::testing::view_with(crate::config::Config::default().with_forwarding(true));
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    c.fault("raw_get", Fault::Rpc(RpcError::Unavailable("connection refused".into())));
    c.fault("health_check", Fault::Rpc(RpcError::Unavailable("connection refused".into())));
    let (mut log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    let (next, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    assert_eq!(next.matches("send #").count(), 1, "{next}");
    assert!(next.contains("-> store2(store2:20160) forwarding to store1:20160"), "{next}");
    log.push_str("-- next call\n");
    log.push_str(&next);
    insta::assert_snapshot!(log);
}

/// Without forwarding, a leader the client cannot reach while its
/// followers keep naming it: each round tries the followers, finds no
/// replica left and re-locates after a `BoRegionMiss` sleep (client-go's
/// callers back off on the pseudo `EpochNotMatch` its sender returns), so
/// the call ends in a typed error within the budget instead of retrying
/// forever.
#[test]
fn a_leader_cut_off_from_the_client_exhausts_the_budget_without_forwarding() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    c.cut_from_client.push(1);
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    match result {
        Err(Error::BackoffExhausted { class, .. }) => {
            assert_eq!(class, ExhaustedClass::RegionUnavailable, "{log}")
        }
        other => panic!("expected exhaustion, got {other:?}\n{log}"),
    }
    // Every round asks the followers and PD again, between sleeps.
    assert!(log.matches("get_region").count() > 10, "{log}");
    // The raw budget is 20 s × weight 2: the call ends near it, not later.
    let last = log.lines().last().unwrap_or_default();
    assert!(last.starts_with("t+4") || last.starts_with("t+3"), "{last}");
}

/// A request an interceptor refused ends the call at once: no backoff, no
/// other peer, no store marked unreachable.
#[test]
fn a_request_rejected_by_an_interceptor_ends_the_call_without_retry() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    c.fault("raw_get", Fault::Rpc(RpcError::Rejected("quota".into())));
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result, Err(Error::Rpc(RpcError::Rejected("quota".into()))), "{log}");
    assert_eq!(log.matches("send #").count(), 1, "one attempt only:\n{log}");
    assert!(!log.contains("backoff"), "no backoff:\n{log}");
    // The store is still a good target for the next call.
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    assert_eq!(log.matches("send #").count(), 1, "{log}");
}

#[test]
fn persistent_send_failures_exhaust_the_budget_with_a_typed_error() {
    let mut c = FakeCluster::new(&[]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    for _ in 0..1000 {
        c.fault("raw_get", Fault::Rpc(RpcError::DeadlineExceeded));
    }
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    match result {
        Err(Error::BackoffExhausted { class, .. }) => {
            assert_eq!(class, ExhaustedClass::TikvServerTimeout)
        }
        other => panic!("expected exhaustion, got {other:?}\n{log}"),
    }
    // The raw budget is 20 s × weight 2: the last line is at most ~40 s
    // plus one capped sleep in.
    let last = log.lines().last().unwrap_or_default();
    assert!(last.starts_with("t+4") || last.starts_with("t+3"), "{last}");
}

#[test]
fn scans_walk_regions_forward_and_in_reverse() {
    let mut c = FakeCluster::new(&["c", "f", "m"]);
    seed(&mut c, &["a", "b", "d", "e", "g", "h", "n", "o"]);
    let v = view();
    let (log, result) =
        drive(scan(&v, KeyRange::new("b", "o"), ScanSpec::forward(5), &opts()).unwrap(), &mut c);
    let keys: Vec<_> = result.unwrap().into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["b", "d", "e", "g", "h"].map(Key::from));
    insta::assert_snapshot!("forward", log);

    let (log, result) = drive(
        scan(&v, KeyRange::new("b", "o"), ScanSpec::reverse(4).keys_only(), &opts()).unwrap(),
        &mut c,
    );
    let pairs = result.unwrap();
    let keys: Vec<_> = pairs.iter().map(|p| p.key.clone()).collect();
    assert_eq!(keys, ["n", "h", "g", "e"].map(Key::from));
    assert!(pairs.iter().all(|p| p.value.is_empty()), "key-only scan returns no values");
    insta::assert_snapshot!("reverse", log);
}

#[test]
fn scan_limit_above_the_maximum_is_refused() {
    let v = view();
    let err = scan(&v, KeyRange::all(), ScanSpec::forward(10_241), &opts()).unwrap_err();
    assert_eq!(err, Error::ScanLimitExceeded { limit: 10_241, max: 10_240 });
}

#[test]
fn compare_and_swap_requires_atomic_mode() {
    let v = view();
    let err = compare_and_swap(&v, Key::from("k"), None, Bytes::from("v"), 0, &opts()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
}

#[test]
fn pd_discovery_skips_a_dead_member_and_fails_over_on_leader_loss() {
    let mut c = FakeCluster::new(&[]);
    c.pd_members = vec!["pd1:2379".into(), "pd2:2379".into(), "pd3:2379".into()];
    c.pd_down = vec![0];
    c.pd_leader = Some(2);
    seed(&mut c, &["k"]);
    let config =
        crate::config::Config::default().with_pd_endpoints(["pd1:2379", "pd2:2379", "pd3:2379"]);
    let pd = Arc::new(crate::pd::PdState::new(config.pd_endpoints.clone()));
    let v =
        Arc::new(ClusterView::new(config, crate::codec::ApiCodec::v1(crate::codec::Mode::Raw), pd));
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    assert_eq!(v.pd.leader().as_deref(), Some("pd3:2379"));
    insta::assert_snapshot!("discovery", log);

    // The leader moves to pd2; the cached leader pd3 refuses; the client
    // rediscovers after a PD backoff.
    c.pd_leader = Some(1);
    v.regions.clear();
    let (log, result) = drive(get(&v, Key::from("zz"), &opts()), &mut c);
    assert_eq!(result.unwrap(), None);
    assert_eq!(v.pd.leader().as_deref(), Some("pd2:2379"));
    insta::assert_snapshot!("failover", log);
}

#[test]
fn pd_without_a_leader_ends_in_a_typed_timeout() {
    let mut c = FakeCluster::new(&[]);
    c.pd_leader = None;
    let v = view();
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    match result {
        Err(Error::BackoffExhausted { class, .. }) => {
            assert_eq!(class, ExhaustedClass::PdServerTimeout)
        }
        other => panic!("expected a PD timeout, got {other:?}\n{log}"),
    }
}

#[test]
fn remaining_commands_route_and_merge_across_regions() {
    let mut c = FakeCluster::new(&["c", "f", "m"]);
    seed(&mut c, &["a", "b", "d", "e", "g", "h", "n", "o"]);
    let v = view();
    let mut log = String::new();

    let (t, r) = drive(put(&v, KvPair::new("p", "v-p"), 0, &opts()), &mut c);
    r.unwrap();
    log.push_str(&format!("== put p\n{t}"));
    let (t, r) = drive(delete(&v, Key::from("a"), &opts()), &mut c);
    r.unwrap();
    log.push_str(&format!("== delete a\n{t}"));
    let (t, r) = drive(batch_delete(&v, vec![Key::from("b"), Key::from("n")], &opts()), &mut c);
    r.unwrap();
    log.push_str(&format!("== batch_delete b n\n{t}"));
    let (t, r) = drive(delete_range(&v, KeyRange::new("d", "h"), &opts()), &mut c);
    r.unwrap();
    log.push_str(&format!("== delete_range [d, h)\n{t}"));
    let keys: Vec<_> = c.data.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(keys, ["h", "o", "p"]);

    let (t, r) = drive(get_key_ttl(&v, Key::from("h"), &opts()), &mut c);
    assert_eq!(r.unwrap(), Some(0));
    log.push_str(&format!("== get_key_ttl h\n{t}"));
    let (_, r) = drive(get_key_ttl(&v, Key::from("a"), &opts()), &mut c);
    assert_eq!(r.unwrap(), None);

    let atomic = RawOptions { atomic: true, ..opts() };
    let cas = compare_and_swap(
        &v,
        Key::from("h"),
        Some(Bytes::from("v-h")),
        Bytes::from("new"),
        0,
        &atomic,
    );
    let (t, r) = drive(cas.unwrap(), &mut c);
    assert_eq!(r.unwrap(), CasOutcome { previous: Some(Bytes::from("v-h")), succeeded: true });
    log.push_str(&format!("== cas h\n{t}"));
    let cas = compare_and_swap(&v, Key::from("h"), None, Bytes::from("again"), 0, &atomic);
    let (_, r) = drive(cas.unwrap(), &mut c);
    assert_eq!(r.unwrap(), CasOutcome { previous: Some(Bytes::from("new")), succeeded: false });

    let (t, r) = drive(checksum(&v, KeyRange::all()), &mut c);
    let mut want = RawChecksum::default();
    for (k, val) in &c.data {
        want.crc64_xor ^= crate::testing::fake_digest(k, val);
        want.total_kvs += 1;
        want.total_bytes += (k.len() + val.len()) as u64;
    }
    assert_eq!(r.unwrap(), want);
    log.push_str(&format!("== checksum (all regions)\n{t}"));
    insta::assert_snapshot!(log);
}

/// A region error that keeps coming back is retried with growing sleeps
/// (one backoffer carried across relocations), not at the base interval:
/// 12 consecutive `BoRegionMiss` sleeps are 2, 4, ... 256 ms (8 sleeps),
/// then 500 ms each (4 sleeps).
#[test]
fn repeated_region_errors_back_off_exponentially() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    for _ in 0..12 {
        let wrong_region = errorpb::Error {
            message: "key not in region".into(),
            key_not_in_region: Some(Default::default()),
            ..Default::default()
        };
        c.fault("raw_get", Fault::Region(Box::new(wrong_region)));
    }
    let (log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    let timers: Vec<&str> = log.lines().filter(|l| l.ends_with("timer")).collect();
    assert_eq!(timers.len(), 12, "{log}");
    let last = log.lines().last().unwrap_or_default();
    // 510 ms + 4 × 500 ms, plus 1 ms per RPC (a fresh backoffer per retry
    // would have slept 12 × 2 ms).
    assert!(last.starts_with("t+2.5"), "{last}");
}

/// A PD without `BatchScanRegions` (Unimplemented): the walk falls back to
/// locating one region at a time and does not ask again.
#[test]
fn scan_falls_back_to_single_region_locates_on_an_old_pd() {
    let mut c = FakeCluster::new(&["c", "f"]);
    c.no_batch_scan = true;
    seed(&mut c, &["a", "d", "g"]);
    let v = view();
    let (log, result) =
        drive(scan(&v, KeyRange::all(), ScanSpec::forward(10), &opts()).unwrap(), &mut c);
    let keys: Vec<_> = result.unwrap().into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["a", "d", "g"].map(Key::from));
    assert_eq!(
        log.lines().filter(|l| l.contains("send") && l.contains("batch_scan_regions")).count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("send") && l.contains("get_region")).count(),
        3,
        "{log}"
    );
}

/// Writes give TiKV client-go's `MaxWriteExecutionTime` (20 s) as their max
/// execution duration; reads keep their RPC timeout (30 s).
#[test]
fn writes_carry_the_write_execution_limit_and_reads_their_timeout() {
    let mut c = FakeCluster::new(&[]);
    let v = view();
    let put_op = put(&v, KvPair::new(Key::from("a"), Bytes::from("v")), 0, &opts());
    drive(put_op, &mut c).1.expect("put");
    drive(get(&v, Key::from("a"), &opts()), &mut c).1.expect("get");
    drive(delete(&v, Key::from("a"), &opts()), &mut c).1.expect("delete");
    let limits: Vec<(&str, u64)> = c
        .received
        .iter()
        .map(|r| (r.name(), r.context().map_or(0, |ctx| ctx.max_execution_duration_ms)))
        .collect();
    assert_eq!(limits, [("raw_put", 20_000), ("raw_get", 30_000), ("raw_delete", 20_000)]);
}

/// A client reading from followers: its reads go to a follower with
/// `replica_read` set, its writes to the leader without it.
#[test]
fn follower_reads_go_to_followers_and_writes_to_the_leader() {
    use crate::route::replica::{ReplicaRead, ReplicaReadType};
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let opts = RawOptions { replica_read: ReplicaRead::of(ReplicaReadType::Follower), ..opts() };
    let (read_log, result) = drive(get(&v, Key::from("k"), &opts), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    let (scan_log, result) =
        drive(scan(&v, KeyRange::all(), ScanSpec::forward(10), &opts).unwrap(), &mut c);
    assert_eq!(result.unwrap().len(), 1);
    let item = PutItem { pair: KvPair::new(Key::from("w"), Bytes::from("x")), ttl: 0 };
    let (write_log, result) = drive(batch_put(&v, vec![item], &opts), &mut c);
    result.unwrap();
    let sent: Vec<String> = c
        .received
        .iter()
        .map(|r| {
            let ctx = r.context().cloned().unwrap_or_default();
            let store = ctx.peer.map_or(0, |p| p.store_id);
            format!("{} store{store} replica_read={}", r.name(), ctx.replica_read)
        })
        .collect();
    assert_eq!(
        sent.iter().filter(|l| l.contains("store1 ")).count(),
        1,
        "only the write goes to the leader (store 1): {sent:?}"
    );
    let out = format!(
        "== get\n{read_log}\n== scan\n{scan_log}\n== batch put\n{write_log}\n== contexts\n{}\n",
        sent.join("\n")
    );
    insta::assert_snapshot!(out);
}

/// `ServerIsBusy` through the region call: a follower read moves to the
/// other replicas at once and sleeps `BoTiKVServerBusy` only when it has
/// none left (then re-locates); a leader read sleeps and asks the leader
/// again, and after the leader's second `ServerIsBusy(0)` probes a follower
/// with a leader read, whose `NotLeader` sends it back (client-go #2028).
#[test]
fn server_is_busy_fast_retries_replica_reads_and_backs_off_leader_reads() {
    use crate::route::replica::{ReplicaRead, ReplicaReadType};
    let busy = || {
        Fault::Region(Box::new(errorpb::Error {
            message: "server is busy".into(),
            server_is_busy: Some(Default::default()),
            ..Default::default()
        }))
    };
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    for _ in 0..3 {
        c.fault("raw_get", busy());
    }
    let follower =
        RawOptions { replica_read: ReplicaRead::of(ReplicaReadType::Follower), ..opts() };
    let (follower_log, result) = drive(get(&v, Key::from("k"), &follower), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    let sleeps = follower_log.lines().filter(|l| l.ends_with("timer")).count();
    assert_eq!(sleeps, 1, "one deferred sleep once every replica was busy:\n{follower_log}");

    for _ in 0..2 {
        c.fault("raw_get", busy());
    }
    let (leader_log, result) = drive(get(&v, Key::from("k"), &opts()), &mut c);
    assert_eq!(result.unwrap(), Some(Bytes::from("v-k")));
    let stores: Vec<&str> = leader_log
        .lines()
        .filter(|l| l.contains("send") && l.contains("raw_get"))
        .filter_map(|l| l.split("-> ").nth(1))
        .collect();
    assert_eq!(stores.len(), 4, "leader, leader, a follower probe, leader:\n{leader_log}");
    assert_eq!(stores[0], stores[1]);
    assert_ne!(stores[2], stores[0], "the probe goes to a follower");
    assert_eq!(stores[3], stores[0]);
    let out = format!("== follower read\n{follower_log}\n== leader read\n{leader_log}");
    insta::assert_snapshot!(out);
}

/// An op's result in [`drive_collapsing`]; `None` if it was dropped.
type Outcome<O> = Option<Result<<O as Operation>::Output, crate::error::Error>>;

/// One RPC in flight in [`drive_collapsing`], with every caller waiting
/// on it: (op index, the id that op gave it).
struct Shared {
    rpc: crate::rpc::Rpc,
    waiters: Vec<(usize, crate::rpc::RpcId)>,
}

/// Runs `ops` concurrently against `c` in virtual time, as the driver's
/// collapsing transport does: an RPC whose [`crate::rpc::CollapseKey`]
/// equals one still in flight is not sent, its op is handed that one's
/// answer. RPCs are answered one at a time, 1 ms each, in the order sent.
/// `drop_at_probe` names an op dropped as soon as it has sent a liveness
/// probe (the probe goes on for whoever shares it). Returns the names of
/// the RPCs sent, one per line with the ops waiting on each, and each op's
/// result (`None` for a dropped op).
fn drive_collapsing<O: Operation>(
    mut ops: Vec<O>,
    c: &mut FakeCluster,
    drop_at_probe: Option<usize>,
) -> (String, Vec<Outcome<O>>) {
    use crate::rpc::{CollapseKey, Request};
    use std::fmt::Write as _;
    let mut now = Instant::ZERO;
    let mut log = String::new();
    let mut queue: std::collections::VecDeque<Shared> = Default::default();
    let mut results: Vec<Outcome<O>> = (0..ops.len()).map(|_| None).collect();
    let mut live: Vec<bool> = vec![true; ops.len()];
    for op in &mut ops {
        op.start(now);
    }
    for _ in 0..10_000 {
        for (i, op) in ops.iter_mut().enumerate() {
            if !live[i] {
                continue;
            }
            while let Some(rpc) = op.poll_rpc() {
                let probe = matches!(rpc.request, Request::HealthCheck);
                let key = CollapseKey::of(&rpc.target, &rpc.request);
                let joined = key.is_some()
                    && queue.iter_mut().any(|s| {
                        let same = CollapseKey::of(&s.rpc.target, &s.rpc.request) == key;
                        if same {
                            s.waiters.push((i, rpc.id));
                        }
                        same
                    });
                if !joined {
                    queue.push_back(Shared { waiters: vec![(i, rpc.id)], rpc });
                }
                if probe && drop_at_probe == Some(i) {
                    live[i] = false;
                    for s in &mut queue {
                        s.waiters.retain(|w| w.0 != i);
                    }
                    break;
                }
            }
            if live[i]
                && let Some(result) = op.poll_result()
            {
                results[i] = Some(result);
                live[i] = false;
            }
        }
        if live.iter().all(|l| !l) {
            return (log, results);
        }
        if let Some(shared) = queue.pop_front() {
            now += crate::time::Duration::from_millis(1);
            let answer = c.handle(&shared.rpc);
            let waiting: Vec<usize> = shared.waiters.iter().map(|w| w.0).collect();
            let _ = writeln!(log, "{} {:?}", shared.rpc.request.name(), waiting);
            for (i, id) in shared.waiters {
                ops[i].on_response(id, answer.clone(), now);
            }
        } else {
            let next = (0..ops.len())
                .filter(|&i| live[i])
                .filter_map(|i| ops[i].poll_timeout())
                .min()
                .expect("an op waits on nothing");
            now = now.max(next);
            for (i, op) in ops.iter_mut().enumerate() {
                if live[i] && op.poll_timeout().is_some_and(|t| t <= now) {
                    op.on_timeout(now);
                }
            }
        }
    }
    panic!("ops did not finish:\n{log}");
}

/// client-go's `livenessSf`: two gets fail on the leader's store at once;
/// each asks whether the store is alive, and the two probes share one
/// health `Check` (one probe per store address). Both act on its answer
/// (`SERVING`: the leader stays a candidate) and read from it after their
/// `BoTiKVRPC` sleeps.
#[test]
fn concurrent_send_failures_on_one_store_share_one_probe() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    for _ in 0..2 {
        c.fault("raw_get", Fault::Rpc(RpcError::Unavailable("stream reset".into())));
    }
    let ops = vec![get(&v, Key::from("k"), &opts()), get(&v, Key::from("k"), &opts())];
    let (log, results) = drive_collapsing(ops, &mut c, None);
    assert_eq!(log.matches("health_check").count(), 1, "{log}");
    assert!(log.contains("health_check [0, 1]"), "one probe, both waiting: {log}");
    for result in results {
        assert_eq!(result.expect("finished").unwrap(), Some(Bytes::from("v-k")), "{log}");
    }
    assert_eq!(log.matches("raw_get").count(), 4, "each get sent twice: {log}");
    assert_eq!(v.stores.get(1).unwrap().health().liveness(), Liveness::Reachable);
}

/// The get whose probe the other shares is dropped while the probe is in
/// flight: the probe still answers the other, which acts on it (here the
/// store does not answer, so it gives up on the leader's store: it is
/// marked unreachable, its epoch bumped once) without a probe of its own.
#[test]
fn a_shared_probe_answers_the_other_call_when_its_sender_is_dropped() {
    let mut c = FakeCluster::new(&[]);
    seed(&mut c, &["k"]);
    let v = view();
    let _ = drive(get(&v, Key::from("k"), &opts()), &mut c);
    let epoch = v.stores.get(1).unwrap().health().epoch();
    for _ in 0..2 {
        c.fault("raw_get", Fault::Rpc(RpcError::Unavailable("connection refused".into())));
    }
    c.fault("health_check", Fault::Rpc(RpcError::Unavailable("connection refused".into())));
    let ops = vec![get(&v, Key::from("k"), &opts()), get(&v, Key::from("k"), &opts())];
    let (log, results) = drive_collapsing(ops, &mut c, Some(0));
    assert!(results[0].is_none(), "dropped");
    assert!(results[1].is_some(), "the other get finished: {log}");
    assert!(log.contains("health_check [1]"), "the probe answered the remaining get: {log}");
    assert_eq!(log.matches("health_check").count(), 1, "no probe of its own: {log}");
    let store = v.stores.get(1).unwrap();
    assert_eq!(store.health().liveness(), Liveness::Unreachable);
    assert_eq!(store.health().epoch(), epoch + 1, "bumped once");
}
