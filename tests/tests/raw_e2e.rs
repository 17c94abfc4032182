//! The RawKV end-to-end suite ([`tikv_tests::raw`]) on the tokio client, on
//! both beds: the in-process simulator and a real PD with simulated stores
//! joined to it (`tikv_tests::harness::Bed`).

tikv_tests::raw_suite!(tikv_tests::harness::TokioHarness);

mod real_pd {
    tikv_tests::raw_suite!(tikv_tests::harness::TokioHarness, RealPd);
}

/// The benchmark's echo cluster (`tikv_sim::echo`, the ceiling of
/// `tikv-bench --servers echo`) serves our client unchanged: it must, or
/// the benchmark's ratios to it measure nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_runs_against_the_echo_cluster() {
    use std::net::SocketAddr;
    use tikv_core::config::Config;
    use tikv_sim::echo::{CLUSTER_ID, EchoServer};

    let echo = EchoServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), 7).await.unwrap();
    let config = Config::default().with_pd_endpoints([echo.pd.to_string()]);
    let client = tikv_tokio::RawClient::connect_with_config(config).await.unwrap();
    assert_eq!(client.cluster_id(), CLUSTER_ID);
    client.put(b"k".to_vec(), b"anything".to_vec()).await.unwrap();
    assert_eq!(client.get(b"k".to_vec()).await.unwrap().as_deref(), Some(&b"vvvvvvv"[..]));
    let got = client.batch_get(vec![b"a".to_vec(), b"b".to_vec()]).await.unwrap();
    assert_eq!(got.len(), 2);
    let (streams, messages, entries) = echo.counters.snapshot();
    assert!(streams >= 1, "the client opened a BatchCommands stream");
    // The three operations rode the stream (probes come on top).
    assert!(messages >= 1 && entries >= 3, "{messages} messages, {entries} entries");
}
