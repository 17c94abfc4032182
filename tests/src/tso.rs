//! The TSO suite: timestamps from `TransactionClient::current_timestamp`
//! over loopback gRPC, unique and increasing under concurrency and across a
//! PD leader change. [`tso_suite!`](crate::tso_suite) stamps the tests out
//! as `#[test]`s for one [`Harness`].

use std::collections::BTreeSet;

use tikv_sim::ClusterConfig;

use crate::harness::{Harness, SimHandle};

/// The client type under test.
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

/// Stamps out the TSO suite as `#[test]` functions running on the given
/// [`Harness`](crate::Harness). Every test of [`tso`](crate::tso) is listed
/// here once.
///
/// ```text
/// tikv_tests::tso_suite!(tikv_tests::harness::TokioHarness);
/// ```
#[macro_export]
macro_rules! tso_suite {
    ($harness:ty) => {
        $crate::tso_suite!(@each $harness;
            timestamps_are_unique_and_increasing_across_a_pd_leader_change,
        );
    };
    (@each $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on($crate::tso::$name::<$harness>());
            }
        )*
    };
}

/// Concurrent callers share rounds and each gets its own timestamp; after
/// PD leadership moves, timestamps keep increasing.
pub async fn timestamps_are_unique_and_increasing_across_a_pd_leader_change<H: Harness>() {
    let server = SimHandle::start(ClusterConfig { pd_members: 3, ..Default::default() }).await;
    let client = TransactionClient::<H>::connect(server.pd_addrs()).await.expect("connect");
    // Concurrent callers share rounds; every one gets its own timestamp.
    let calls: Vec<_> = (0..300)
        .map(|_| {
            let c = client.clone();
            H::spawn(async move { c.current_timestamp().await })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for call in calls {
        let ts = call.await.expect("timestamp");
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
