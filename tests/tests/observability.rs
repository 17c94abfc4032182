//! The observability suite ([`tikv_tests::observability`]) under both
//! runtimes and on the simulated platform. A binary of its own: the suite
//! installs a process-global `tracing` subscriber and `metrics` recorder.

mod on_tokio {
    tikv_tests::observability_suite!(tikv_tests::harness::TokioHarness);
}

mod on_async_std {
    tikv_tests::observability_suite!(tikv_tests::harness::AsyncStdHarness);
}

/// On the simulated platform, in virtual time. Not here:
/// `operations_and_their_rpcs_are_traced_with_region_and_store` checks that
/// an RPC span names a loopback address (`127.0.0.1`), and it serves a
/// second cluster after its first client connected, while a simulation
/// serves one cluster from before its first client.
mod on_sim_platform {
    tikv_tests::observability_suite!(@each tikv_tests::harness::SimPlatformHarness;
        a_region_error_is_counted_by_kind_with_its_backoff,
        a_failing_secondary_commit_is_logged_as_a_warning,
        region_cache_lookups_are_counted_as_hits_and_misses,
    );
}
