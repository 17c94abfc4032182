//! The RawKV suite: `RawClient` over loopback gRPC against the simulated
//! cluster, with ≥ 8 regions, a split, leader transfers and a store outage
//! during the run. Every result is compared with a `BTreeMap`.
//!
//! Each test is an `async fn` generic over the [`Harness`] that takes the
//! [`Bed`] to run on; [`raw_suite!`](crate::raw_suite) stamps them out as
//! `#[test]`s for one runtime and bed.

use std::collections::BTreeMap;
use std::time::Duration;

use tikv_driver::{ApiVersion, BackoffBudgets, ColumnFamily, Config, Error, Key, KvPair};
use tikv_proto::errorpb;
use tikv_sim::{ApiVersion as SimApi, ClusterConfig, Filter};

use crate::harness::{Bed, Harness, SimHandle};

/// The client type under test.
type RawClient<H> = tikv_driver::RawClient<<H as Harness>::Platform>;

/// Stamps out the RawKV suite as `#[test]` functions running on the given
/// [`Harness`](crate::Harness) and [`Bed`](crate::harness::Bed) variant
/// (`InProcess` when left out). Every test of [`raw`](crate::raw) is listed
/// here once; the one that starts no cluster is stamped out with the
/// in-process bed only.
///
/// ```text
/// tikv_tests::raw_suite!(tikv_tests::harness::TokioHarness);
/// tikv_tests::raw_suite!(tikv_tests::harness::TokioHarness, RealPd);
/// ```
#[macro_export]
macro_rules! raw_suite {
    (@each $harness:ty, $bed:ident; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on(
                    $crate::raw::$name::<$harness>($crate::harness::Bed::$bed),
                );
            }
        )*
    };
    (@without_cluster $harness:ty, InProcess; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on($crate::raw::$name::<$harness>());
            }
        )*
    };
    (@without_cluster $harness:ty, RealPd; $($name:ident),* $(,)?) => {};
    ($harness:ty) => {
        $crate::raw_suite!($harness, InProcess);
    };
    ($harness:ty, $bed:ident) => {
        $crate::raw_suite!(@each $harness, $bed;
            raw_operations_match_a_model_through_splits_leader_moves_and_an_outage,
            column_families_are_separate,
            injected_region_errors_are_retried_or_reported,
            api_v2_keyspace_with_ttl,
            requests_ride_batch_streams_and_survive_a_store_outage,
            close_stops_the_client_and_its_clones,
            interceptors_see_and_refuse_raw_rpcs,
        );
        $crate::raw_suite!(@without_cluster $harness, $bed;
            connecting_to_an_unreachable_pd_fails_with_a_pd_timeout,
        );
    };
}

/// A tiny deterministic PRNG (the test must replay exactly).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key(i: u64) -> String {
    format!("k{i:03}")
}

fn pairs_of(model: &BTreeMap<String, String>, lo: &str, hi: &str, limit: usize) -> Vec<KvPair> {
    model
        .range(lo.to_string()..hi.to_string())
        .take(limit)
        .map(|(k, v)| KvPair::new(k.clone(), v.clone()))
        .collect()
}

async fn start(bed: Bed, api: SimApi, split_keys: Vec<Vec<u8>>) -> SimHandle {
    let config = ClusterConfig { api_version: api, split_keys, ..Default::default() };
    SimHandle::start(bed, config).await
}

fn config(server: &SimHandle) -> Config {
    // Short per-attempt timeouts keep outage handling quick; budgets stay
    // client-go's.
    Config::default()
        .with_pd_endpoints(server.pd_addrs())
        .with_read_timeout_short(Duration::from_secs(2))
        .with_read_timeout_medium(Duration::from_secs(2))
}

/// 400 random RawKV operations against an 8-region cluster, with splits,
/// leader transfers and a store outage mid-run, each result compared with a
/// `BTreeMap` model; whole-range scan and checksum at the end.
pub async fn raw_operations_match_a_model_through_splits_leader_moves_and_an_outage<H: Harness>(
    bed: Bed,
) {
    // 8 regions to start with.
    let splits = ["k025", "k050", "k075", "k100", "k125", "k150", "k175"];
    let server =
        start(bed, SimApi::V1, splits.iter().map(|s| s.as_bytes().to_vec()).collect()).await;
    assert!(server.cluster().regions().len() >= 8);
    let client = RawClient::<H>::connect_with_config(config(&server)).await.expect("connect");
    assert_ne!(client.cluster_id(), 0);
    let cas_client = client.with_atomic_for_cas();
    let topology = server.topology();
    let first_store = server.cluster().store_ids()[0];

    let mut model: BTreeMap<String, String> = BTreeMap::new();
    let mut rng = Lcg(2024);
    for step in 0..400u64 {
        // Faults during the run.
        match step {
            80 => {
                topology.split(b"k060").await.expect("split");
                topology.split(b"k160").await.expect("split");
            }
            140 => {
                for region in server.cluster().regions() {
                    let leader = server.cluster().leader_of(region.id).expect("leader");
                    let next = region.peers.iter().find(|p| p.store_id != leader.store_id);
                    if let Some(p) = next {
                        topology.transfer_leader(region.id, p.store_id).await.expect("transfer");
                    }
                }
            }
            200 => server.stop_store(first_store).await.expect("stop the first store"),
            280 => server.start_store(first_store).await.expect("restart the first store"),
            _ => {}
        }
        let k = key(rng.below(200));
        let v = format!("v{step}");
        match rng.below(12) {
            0 | 1 => {
                client.put(k.clone(), v.clone()).await.expect("put");
                model.insert(k, v);
            }
            2 => {
                let got = client.get(k.clone()).await.expect("get");
                assert_eq!(
                    got.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    model.get(&k).cloned(),
                    "get {k} at step {step}"
                );
            }
            3 => {
                let batch: Vec<(String, String)> = (0..rng.below(40) + 1)
                    .map(|i| (key(rng.below(200)), format!("b{step}-{i}")))
                    .collect();
                client.batch_put(batch.clone()).await.expect("batch_put");
                for (k, v) in batch {
                    model.insert(k, v);
                }
            }
            4 => {
                let keys: Vec<String> =
                    (0..rng.below(50) + 1).map(|_| key(rng.below(200))).collect();
                let got = client.batch_get(keys.clone()).await.expect("batch_get");
                let mut want: Vec<KvPair> = keys
                    .iter()
                    .filter_map(|k| model.get(k).map(|v| KvPair::new(k.clone(), v.clone())))
                    .collect();
                want.sort_by(|a, b| a.key.cmp(&b.key));
                want.dedup_by(|a, b| a.key == b.key);
                assert_eq!(got, want, "batch_get at step {step}");
                // The same keys, values in the caller's order.
                let values = client.batch_get_values(keys.clone()).await.expect("values");
                let want: Vec<Option<Vec<u8>>> =
                    keys.iter().map(|k| model.get(k).map(|v| v.clone().into_bytes())).collect();
                let values: Vec<Option<Vec<u8>>> =
                    values.into_iter().map(|v| v.map(|v| v.to_vec())).collect();
                assert_eq!(values, want, "batch_get_values at step {step}");
            }
            5 => {
                client.delete(k.clone()).await.expect("delete");
                model.remove(&k);
            }
            6 => {
                let keys: Vec<String> =
                    (0..rng.below(10) + 1).map(|_| key(rng.below(200))).collect();
                client.batch_delete(keys.clone()).await.expect("batch_delete");
                for k in keys {
                    model.remove(&k);
                }
            }
            7 => {
                let (a, b) = (rng.below(200), rng.below(200));
                let (lo, hi) = (key(a.min(b)), key(a.max(b)));
                let limit = rng.below(60) as u32 + 1;
                let got = client.scan(lo.clone()..hi.clone(), limit).await.expect("scan");
                assert_eq!(
                    got,
                    pairs_of(&model, &lo, &hi, limit as usize),
                    "scan {lo}..{hi} limit {limit} at step {step}"
                );
            }
            8 => {
                let (a, b) = (rng.below(200), rng.below(200));
                let (lo, hi) = (key(a.min(b)), key(a.max(b)));
                let limit = rng.below(60) as u32 + 1;
                let got =
                    client.scan_reverse(lo.clone()..hi.clone(), limit).await.expect("scan_reverse");
                let want: Vec<KvPair> = model
                    .range(lo.clone()..hi.clone())
                    .rev()
                    .take(limit as usize)
                    .map(|(k, v)| KvPair::new(k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "scan_reverse {lo}..{hi} at step {step}");
            }
            9 => {
                let got = cas_client
                    .compare_and_swap(k.clone(), model.get(&k).map(|v| v.clone().into()), v.clone())
                    .await
                    .expect("cas");
                assert!(got.succeeded, "cas with the right expectation succeeds at step {step}");
                model.insert(k.clone(), v);
                let wrong = cas_client
                    .compare_and_swap(k.clone(), Some("no such value".into()), "x")
                    .await
                    .expect("cas");
                assert!(!wrong.succeeded);
                assert_eq!(
                    wrong.previous.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    model.get(&k).cloned()
                );
            }
            10 => {
                let (a, b) = (rng.below(200), rng.below(200));
                let (lo, hi) = (key(a.min(b)), key(a.max(b)));
                if step % 3 == 0 {
                    client.delete_range(lo.clone()..hi.clone()).await.expect("delete_range");
                    let doomed: Vec<String> = model.range(lo..hi).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        model.remove(&k);
                    }
                } else {
                    let keys =
                        client.scan_keys(lo.clone()..hi.clone(), 10_000).await.expect("scan_keys");
                    let want: Vec<Key> =
                        model.range(lo..hi).map(|(k, _)| Key::from(k.clone())).collect();
                    assert_eq!(keys, want);
                }
            }
            _ => {
                let ranges = [(key(10), key(30)), (key(120), key(190))];
                let got = client
                    .batch_scan(ranges.iter().map(|(a, b)| a.clone()..b.clone()), 7)
                    .await
                    .expect("batch_scan");
                let mut want = pairs_of(&model, &ranges[0].0, &ranges[0].1, 7);
                want.extend(pairs_of(&model, &ranges[1].0, &ranges[1].1, 7));
                assert_eq!(got, want, "batch_scan at step {step}");
            }
        }
    }

    // Whole-range views agree with the model.
    let all = client.scan(.., 10_240).await.expect("full scan");
    assert_eq!(all, pairs_of(&model, "", "\u{10ffff}", usize::MAX));
    let sum = client.checksum(..).await.expect("checksum");
    let mut crc = 0;
    let mut bytes = 0;
    for (k, v) in &model {
        crc = tikv_sim::crc64::checksum_crc64_xor(crc, k.as_bytes(), v.as_bytes());
        bytes += (k.len() + v.len()) as u64;
    }
    assert_eq!((sum.crc64_xor, sum.total_kvs, sum.total_bytes), (crc, model.len() as u64, bytes));
    assert_eq!(server.cluster().raw_snapshot("default").len(), model.len());
    server.shutdown().await;
}

/// The default and lock column families hold separate values for a key.
pub async fn column_families_are_separate<H: Harness>(bed: Bed) {
    let server = start(bed, SimApi::V1, vec![b"m".to_vec()]).await;
    let client = RawClient::<H>::connect_with_config(config(&server)).await.expect("connect");
    let lock = client.with_cf(ColumnFamily::Lock);
    client.put("a", "default").await.expect("put");
    lock.put("a", "lock").await.expect("put");
    assert_eq!(client.get("a").await.expect("get").as_deref(), Some(&b"default"[..]));
    assert_eq!(lock.get("a").await.expect("get").as_deref(), Some(&b"lock"[..]));
    lock.delete("a").await.expect("delete");
    assert_eq!(lock.get("a").await.expect("get"), None);
    assert_eq!(client.get("a").await.expect("get").as_deref(), Some(&b"default"[..]));
    server.shutdown().await;
}

/// A raw client's interceptor sees each of its store RPCs, and a refused
/// one fails the call at once without reaching the store; clients without
/// it are unaffected.
pub async fn interceptors_see_and_refuse_raw_rpcs<H: Harness>(bed: Bed) {
    use futures::FutureExt;
    use tikv_driver::RpcError;
    use tikv_driver::interceptor::{KvRequest, interceptor_fn};

    let server = start(bed, SimApi::V1, vec![b"m".to_vec()]).await;
    let client = RawClient::<H>::connect_with_config(config(&server)).await.expect("connect");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let intercepted = {
        let seen = seen.clone();
        client.with_interceptor(interceptor_fn("no-deletes", move |rpc, next| {
            seen.lock().unwrap().push(rpc.request.name().to_string());
            if matches!(rpc.request, KvRequest::RawDelete(_)) {
                return futures::future::ready(Err(RpcError::Rejected("read-only".into()))).boxed();
            }
            next.run(rpc)
        }))
    };
    intercepted.put("a", "1").await.expect("put");
    assert_eq!(intercepted.get("a").await.expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(intercepted.batch_get(["a", "z"]).await.expect("batch_get").len(), 1);
    match intercepted.delete("a").await {
        Err(Error::Rpc(RpcError::Rejected(reason))) => assert_eq!(reason, "read-only"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    // `a` and `z` are in different regions: one batch get per region.
    assert_eq!(
        *seen.lock().unwrap(),
        ["raw_put", "raw_get", "raw_batch_get", "raw_batch_get", "raw_delete"]
    );
    let stores = server.cluster().store_ids();
    let deletes: u64 =
        stores.iter().map(|s| server.cluster().kv_request_count(*s, "raw_delete", None)).sum();
    assert_eq!(deletes, 0, "the refused delete never reached a store");
    client.delete("a").await.expect("the plain client is not intercepted");
    assert_eq!(seen.lock().unwrap().len(), 5);
    server.shutdown().await;
}

/// Retryable region errors (server busy, stale command) are retried;
/// a non-retryable one (raft entry too large) is reported as such.
pub async fn injected_region_errors_are_retried_or_reported<H: Harness>(bed: Bed) {
    let server = start(bed, SimApi::V1, vec![b"m".to_vec()]).await;
    let client = RawClient::<H>::connect_with_config(config(&server)).await.expect("connect");
    client.put("k", "v").await.expect("put");
    let busy = errorpb::Error {
        message: "server is busy".into(),
        server_is_busy: Some(Default::default()),
        ..Default::default()
    };
    server.cluster().inject_region_error(Filter::any().command("raw_get"), busy, 1);
    let stale = errorpb::Error {
        message: "stale command".into(),
        stale_command: Some(Default::default()),
        ..Default::default()
    };
    server.cluster().inject_region_error(Filter::any().command("raw_get"), stale, 2);
    assert_eq!(client.get("k").await.expect("retried").as_deref(), Some(&b"v"[..]));

    let too_large = errorpb::Error {
        message: "raft entry too large".into(),
        raft_entry_too_large: Some(Default::default()),
        ..Default::default()
    };
    server.cluster().inject_region_error(Filter::any().command("raw_put"), too_large, 1);
    match client.put("k", "w").await {
        Err(Error::Region(e)) => assert!(e.raft_entry_too_large.is_some()),
        other => panic!("expected a region error, got {other:?}"),
    }
    server.shutdown().await;
}

/// API V2: keys live under the DEFAULT keyspace's prefix, unbounded
/// reverse scans end at the keyspace's end, TTLs expire.
pub async fn api_v2_keyspace_with_ttl<H: Harness>(bed: Bed) {
    // Regions split inside the DEFAULT keyspace's raw range (`r\0\0\0`).
    let split = |s: &str| [b"r\0\0\0".as_slice(), s.as_bytes()].concat();
    let server = start(bed, SimApi::V2, vec![split("g"), split("p")]).await;
    let client =
        RawClient::<H>::connect_with_config(config(&server).with_api_version(ApiVersion::V2))
            .await
            .expect("connect in API V2");
    client.batch_put([("a", "1"), ("h", "2"), ("q", "3")]).await.expect("batch_put");
    let all = client.scan(.., 100).await.expect("scan");
    assert_eq!(all, vec![KvPair::new("a", "1"), KvPair::new("h", "2"), KvPair::new("q", "3")]);
    // Unbounded reverse scans work in V2: the end is the keyspace's end.
    let back = client.scan_reverse_keys(.., 2).await.expect("reverse scan");
    assert_eq!(back, vec![Key::from("q"), Key::from("h")]);
    // Keys are stored with the keyspace prefix.
    let stored = server.cluster().raw_snapshot("default");
    assert!(stored.keys().all(|k| k.starts_with(b"r\0\0\0")), "{stored:?}");

    client.put_with_ttl("ttl", "soon gone", Duration::from_secs(1)).await.expect("put_with_ttl");
    let ttl = client.get_key_ttl("ttl").await.expect("ttl").expect("key exists");
    assert!(ttl <= Duration::from_secs(1));
    assert_eq!(client.get_key_ttl("a").await.expect("ttl"), Some(Duration::ZERO));
    assert_eq!(client.get_key_ttl("nope").await.expect("ttl"), None);
    // Each key of a batch keeps its own TTL (kvrpcpb `RawBatchPut.ttls`).
    let ttls = [Duration::from_secs(100), Duration::ZERO, Duration::from_secs(300)];
    client
        .batch_put_with_ttl([("t1", "x"), ("t2", "y"), ("t3", "z")], ttls)
        .await
        .expect("batch_put_with_ttl");
    for (key, ttl) in [("t1", 100), ("t2", 0), ("t3", 300)] {
        let left = client.get_key_ttl(key).await.expect("ttl").expect("key exists");
        let want = Duration::from_secs(ttl);
        assert!(left <= want && left + Duration::from_secs(5) >= want, "{key}: {left:?}");
    }
    assert!(matches!(
        client.batch_put_with_ttl([("t4", "w")], []).await,
        Err(Error::InvalidArgument(_))
    ));
    H::sleep(Duration::from_millis(2100)).await;
    assert_eq!(client.get("ttl").await.expect("get"), None, "expired");
    server.shutdown().await;
}

/// Nothing listens at the PD address: `connect` fails with a typed PD
/// timeout once the (here shortened) backoff budget is spent, no hang.
pub async fn connecting_to_an_unreachable_pd_fails_with_a_pd_timeout<H: Harness>() {
    // Bind and drop a listener so the port is very likely closed.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let mut budgets = BackoffBudgets::default();
    budgets.locate_region = Duration::from_millis(1500);
    let config = Config::default()
        .with_pd_endpoints([addr])
        .with_pd_timeout(Duration::from_millis(500))
        .with_backoff_budgets(budgets);
    let started = std::time::Instant::now();
    match RawClient::<H>::connect_with_config(config).await {
        Err(Error::BackoffExhausted { class, .. }) => {
            assert_eq!(class, tikv_core::backoff::ExhaustedClass::PdServerTimeout)
        }
        other => panic!("expected a PD timeout, got {other:?}"),
    }
    // Budget 1.5 s × weight 2 plus one capped sleep and connect attempts.
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}

/// `n` concurrent puts then gets of distinct keys, all checked.
async fn put_get_concurrently<H: Harness>(client: &RawClient<H>, n: usize, round: u32) {
    let work = (0..n).map(|i| async move {
        let (key, value) = (format!("k{i:04}"), format!("v{i}-{round}"));
        client.put(key.clone(), value.clone()).await.expect("put");
        let got = client.get(key).await.expect("get");
        assert_eq!(got.as_deref(), Some(value.as_bytes()));
    });
    futures::future::join_all(work).await;
}

/// `BatchCommands` (the default transport): concurrent requests spread over
/// the store's four streams and are packed into fewer messages than
/// requests, and after every store went down and came back, new streams (on
/// new connections) carry the traffic.
pub async fn requests_ride_batch_streams_and_survive_a_store_outage<H: Harness>(bed: Bed) {
    let server = start(bed, SimApi::V1, vec![b"k5".to_vec()]).await;
    let client = RawClient::<H>::connect_with_config(config(&server)).await.expect("connect");
    put_get_concurrently::<H>(&client, 256, 0).await;
    let before = server.batch_stats().await;
    // 512 requests plus a probe per stream; fewer messages than requests
    // means the collectors packed several into one. Requests take the four
    // connections of a store in turn, so every one of them got a stream
    // (three stores at most carry leaders).
    assert!(before.requests >= 512, "{before:?}");
    assert!(before.messages < before.requests, "{before:?}");
    assert!((4..=12).contains(&before.streams), "{before:?}");

    for id in server.cluster().store_ids() {
        server.stop_store(id).await.expect("stop");
    }
    H::sleep(Duration::from_millis(300)).await;
    for id in server.cluster().store_ids() {
        server.start_store(id).await.expect("start");
    }
    put_get_concurrently::<H>(&client, 64, 1).await;
    let after = server.batch_stats().await;
    assert!(after.streams > before.streams, "{before:?} -> {after:?}");
    assert!(after.requests >= before.requests + 128, "{before:?} -> {after:?}");
    server.shutdown().await;
}

/// `close` stops the client and every clone: later calls fail with
/// `Error::Closed` at once; a raw client leaves no background work.
pub async fn close_stops_the_client_and_its_clones<H: Harness>(bed: Bed) {
    let server = start(bed, SimApi::V1, Vec::new()).await;
    let client = RawClient::<H>::connect_with_config(config(&server)).await.expect("connect");
    client.put("k", "v").await.expect("put");
    let clone = client.clone();
    assert_eq!(client.close(Duration::from_secs(1)).await, 0);
    assert!(matches!(client.get("k").await, Err(Error::Closed)));
    assert!(matches!(clone.put("k", "w").await, Err(Error::Closed)));
    assert!(matches!(clone.scan(.., 10).await, Err(Error::Closed)));
    server.shutdown().await;
}
