//! A client and the tokio runtime it connected on: the client's background
//! tasks (TSO, store refresh, connections) live there, so a client whose
//! runtime shut down fails at once with a typed error, and a client
//! connected on a long-lived runtime serves callers on short-lived ones.

use std::time::Duration;

use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};
use tikv_tokio::{Config, Error, RawClient, TransactionClient};

/// The simulated cluster on a runtime that lives for the whole test.
fn serve() -> (tokio::runtime::Runtime, SimServer) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt
        .block_on(SimServer::start(
            Cluster::new(ClusterConfig::default()),
            ServerOptions::default(),
        ))
        .expect("sim starts");
    (rt, server)
}

fn config(server: &SimServer) -> Config {
    Config::default()
        .with_pd_endpoints(server.pd_addrs())
        .with_read_timeout_short(Duration::from_secs(2))
        .with_read_timeout_medium(Duration::from_secs(2))
}

/// `call`'s result, which must come well within any retry budget.
async fn at_once<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(1), call).await.expect("an immediate answer")
}

fn short_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

#[test]
fn a_client_whose_runtime_shut_down_fails_at_once() {
    let (_server_rt, server) = serve();
    let first = short_runtime();
    let (raw, txn) = first.block_on(async {
        let raw = RawClient::connect_with_config(config(&server)).await.unwrap();
        raw.put("k", "v").await.unwrap();
        let txn = TransactionClient::connect_with_config(config(&server)).await.unwrap();
        txn.current_timestamp().await.unwrap();
        (raw, txn)
    });
    drop(first);
    short_runtime().block_on(async {
        let got = at_once(raw.get("k")).await;
        assert!(matches!(got, Err(Error::RuntimeShutDown)), "{got:?}");
        let got = at_once(txn.current_timestamp()).await;
        assert!(matches!(got, Err(Error::RuntimeShutDown)), "{got:?}");
        let got = at_once(txn.begin()).await;
        assert!(matches!(got, Err(Error::RuntimeShutDown)), "{:?}", got.map(|_| ()));
    });
}

#[test]
fn a_client_connected_on_a_long_lived_runtime_serves_short_lived_ones() {
    let (server_rt, server) = serve();
    // The application's long-lived runtime hosts the client's tasks.
    let cfg = config(&server);
    let (raw, txn) = server_rt.block_on(async {
        tokio::spawn(async move {
            let raw = RawClient::connect_with_config(cfg.clone()).await.unwrap();
            let txn = TransactionClient::connect_with_config(cfg).await.unwrap();
            (raw, txn)
        })
        .await
        .unwrap()
    });
    for round in 0..3 {
        let rt = short_runtime();
        rt.block_on(async {
            let value = format!("v{round}");
            raw.put("k", value.clone()).await.unwrap();
            assert_eq!(raw.get("k").await.unwrap().as_deref(), Some(value.as_bytes()));
            let mut t = txn.begin().await.unwrap();
            t.put("t", value.clone()).unwrap();
            t.commit().await.unwrap();
            let snapshot = txn.snapshot(txn.current_timestamp().await.unwrap());
            assert_eq!(snapshot.get("t").await.unwrap().as_deref(), Some(value.as_bytes()));
        });
        drop(rt);
    }
}

/// The process's threads named `tikv-client` (a dedicated runtime's).
fn client_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("procfs");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tikv-client")
        .count()
}

/// The only test here that starts dedicated runtimes, so the thread count
/// it watches is its own.
#[test]
fn a_client_with_its_own_runtime_serves_any_caller_and_stops_its_threads_when_dropped() {
    let (_server_rt, server) = serve();
    let before = client_threads();
    let first = short_runtime();
    let cfg = config(&server).with_dedicated_runtime(2);
    let (raw, txn) = first.block_on(async {
        let raw = RawClient::connect_with_config(cfg.clone()).await.unwrap();
        let txn = TransactionClient::connect_with_config(cfg).await.unwrap();
        (raw, txn)
    });
    assert_eq!(client_threads(), before + 4, "two workers per client");
    // The runtime that connected is gone; the clients' tasks were not on it.
    drop(first);
    short_runtime().block_on(async {
        raw.put("k", "v1").await.unwrap();
        let mut t = txn.begin().await.unwrap();
        // Two keys: one is a secondary, committed in the background.
        t.put("a", "1").unwrap();
        t.put("z", "2").unwrap();
        t.commit().await.unwrap();
    });
    // Awaited on no tokio runtime at all: timers and tasks are the client's.
    futures::executor::block_on(async {
        assert_eq!(raw.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
        let snapshot = txn.snapshot(txn.current_timestamp().await.unwrap());
        assert_eq!(snapshot.get("z").await.unwrap().as_deref(), Some(&b"2"[..]));
        let mut t = txn.begin().await.unwrap();
        t.put("k2", "v2").unwrap();
        t.commit().await.unwrap();
    });
    drop((raw, txn));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client_threads() > before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client_threads(), before, "the clients' runtimes shut down with them");
}
