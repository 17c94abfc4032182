//! The TSO suite: timestamps from `TransactionClient::current_timestamp`
//! over loopback gRPC, unique and increasing under concurrency, across a
//! PD leader change (in-process) and across a PD restart (real PD). [`tso_suite!`](crate::tso_suite) stamps the tests out
//! as `#[test]`s for one [`Harness`] and [`Bed`].

use std::collections::BTreeSet;

use tikv_sim::ClusterConfig;

use crate::harness::{Bed, BedError, Harness, SimHandle};

/// The client type under test.
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

/// Stamps out the TSO suite as `#[test]` functions running on the
/// given [`Harness`](crate::Harness) and [`Bed`](crate::harness::Bed)
/// variant (`InProcess` when left out). Every test of
/// [`tso`](crate::tso) is listed here once.
///
/// ```text
/// tikv_tests::tso_suite!(tikv_tests::harness::TokioHarness);
/// tikv_tests::tso_suite!(tikv_tests::harness::TokioHarness, RealPd);
/// ```
#[macro_export]
macro_rules! tso_suite {
    (@each $harness:ty, $bed:ident; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on(
                    $crate::tso::$name::<$harness>($crate::harness::Bed::$bed),
                );
            }
        )*
    };
    ($harness:ty) => {
        $crate::tso_suite!($harness, InProcess);
    };
    ($harness:ty, $bed:ident) => {
        $crate::tso_suite!(@each $harness, $bed;
            timestamps_are_unique_and_increasing_across_pd_failovers,
        );
    };
}

/// Concurrent callers share rounds and each gets its own timestamp; after
/// PD leadership moves, and after PD restarts, timestamps keep increasing.
/// Each bed takes one of the two steps: the real PD is a single member (no
/// leader change), the in-process PD model has no process to restart; the
/// other step is [`BedError::NotOnThisBed`], which the test checks.
pub async fn timestamps_are_unique_and_increasing_across_pd_failovers<H: Harness>(bed: Bed) {
    let mut server =
        SimHandle::start(bed, ClusterConfig { pd_members: 3, ..Default::default() }).await;
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
    match server.topology().change_pd_leader(2).await {
        Ok(()) => assert_eq!(bed, Bed::InProcess),
        Err(BedError::NotOnThisBed(not)) => {
            assert_eq!(not.bed, Bed::RealPd, "{not}");
            eprintln!("not on this bed: {not}");
        }
        Err(e) => panic!("PD leader change: {e}"),
    }
    let after = client.current_timestamp().await.expect("ts after failover");
    assert!(after > before, "{after} after {before}");

    // PD restarts (the real one; the model has no process): the client's
    // TSO stream breaks, it reconnects, and timestamps keep increasing.
    match server.restart_pd().await {
        Ok(()) => assert_eq!(bed, Bed::RealPd),
        Err(BedError::NotOnThisBed(not)) => {
            assert_eq!(not.bed, Bed::InProcess, "{not}");
            eprintln!("not on this bed: {not}");
        }
        Err(e) => panic!("PD restart: {e}"),
    }
    let restarted = client.current_timestamp().await.expect("ts after PD's restart");
    assert!(restarted > after, "{restarted} after {after}");
    server.shutdown().await;
}
