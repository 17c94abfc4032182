//! Timestamps from `TransactionClient::current_timestamp` over loopback gRPC:
//! unique and increasing under concurrency and across a PD leader change.

use std::collections::BTreeSet;

use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};
use tikv_tokio::TransactionClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_are_unique_and_increasing_across_a_pd_leader_change() {
    let cluster = Cluster::new(ClusterConfig { pd_members: 3, ..Default::default() });
    let server = SimServer::start(cluster, ServerOptions::default()).await.expect("start");
    let client = TransactionClient::connect(server.pd_addrs()).await.expect("connect");

    // Concurrent callers share rounds; every one gets its own timestamp.
    let calls: Vec<_> = (0..300)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.current_timestamp().await })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for call in calls {
        let ts = call.await.expect("task").expect("timestamp");
        assert!(seen.insert(ts.version()), "duplicate timestamp {ts}");
    }

    let before = client.current_timestamp().await.expect("ts");
    assert!(before.version() > *seen.last().expect("some"));
    // PD leadership moves; the client's cached leader refuses, it
    // rediscovers, and timestamps keep increasing.
    server.cluster().set_pd_leader(2).expect("leader change");
    let after = client.current_timestamp().await.expect("ts after failover");
    assert!(after > before, "{after} after {before}");
    server.shutdown().await;
}
