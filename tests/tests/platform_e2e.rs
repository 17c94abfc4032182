//! The e2e suites on the simulated platform
//! ([`tikv_tests::harness::SimPlatformHarness`]): the same bodies as under
//! tokio and async-std, each run under `tikv_sim::platform::simulate` with
//! a fixed seed and no drawn faults, in virtual time, their clients
//! reaching the simulation's in-process cluster (the in-process bed)
//! through the simulated network instead of loopback gRPC. The pipelined
//! and observability suites are stamped out for it in their own binaries.
//!
//! Not stamped out here, each for a reason of the platform, not of the
//! client:
//! - `raw::requests_ride_batch_streams_and_survive_a_store_outage`: it
//!   checks the gRPC transport's `BatchCommands` streams (how many opened,
//!   requests packed per message, new streams after an outage); the
//!   simulated transport carries each request on its own.
//! - the TLS suite (`tls_e2e.rs`) and the transport suite (`transport.rs`):
//!   they test certificates, HTTP/2 and the gRPC transport against real
//!   sockets and scripted peers, which the simulated transport replaces.
//! - the real-PD bed: a real PD is a process behind real sockets.
//!
//! `raw::connecting_to_an_unreachable_pd_fails_with_a_pd_timeout` runs: the
//! loopback address it picks names no simulated PD, so nothing answers
//! there, as nothing listens there on the other platforms.

use tikv_tests::harness::SimPlatformHarness;

mod raw {
    use super::SimPlatformHarness;
    tikv_tests::raw_suite!(@each SimPlatformHarness, InProcess;
        raw_operations_match_a_model_through_splits_leader_moves_and_an_outage,
        column_families_are_separate,
        injected_region_errors_are_retried_or_reported,
        api_v2_keyspace_with_ttl,
        close_stops_the_client_and_its_clones,
        interceptors_see_and_refuse_raw_rpcs,
    );
    tikv_tests::raw_suite!(@without_cluster SimPlatformHarness, InProcess;
        connecting_to_an_unreachable_pd_fails_with_a_pd_timeout,
    );
}

mod txn {
    tikv_tests::txn_suite!(super::SimPlatformHarness);
}

mod gc {
    tikv_tests::gc_suite!(super::SimPlatformHarness);
}

mod snapshot {
    tikv_tests::snapshot_suite!(super::SimPlatformHarness);
}

mod tso {
    tikv_tests::tso_suite!(super::SimPlatformHarness);
}

mod replica {
    tikv_tests::replica_suite!(super::SimPlatformHarness);
}

/// The harness really runs the bodies in virtual time: a body that sleeps
/// an hour of its clock finishes at once, and its spawned task runs on the
/// simulation's executor.
#[test]
fn bodies_run_in_virtual_time() {
    use std::time::Duration;
    use tikv_tests::Harness;

    let wall = std::time::Instant::now();
    let slept = SimPlatformHarness::block_on(async {
        let sim = tikv_sim::platform::Sim::current().expect("inside a simulation");
        let start = sim.now();
        let task = SimPlatformHarness::spawn(async {
            SimPlatformHarness::sleep(Duration::from_secs(3600 - 1)).await;
            7
        });
        assert_eq!(task.await, 7);
        sim.now().saturating_duration_since(start)
    });
    assert_eq!(slept, tikv_core::time::Duration::from_secs(3600 - 1));
    assert!(wall.elapsed() < Duration::from_secs(60), "{:?}", wall.elapsed());
}

mod stale_read {
    tikv_tests::stale_read_suite!(super::SimPlatformHarness);
}
